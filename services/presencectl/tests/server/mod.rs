//! What the presencectl tests run and what they run it against.
//!
//! - [`Server`]: an all-in-one `presenced` on the in-memory backends,
//!   started in this process on free ports, on its own thread and runtime,
//!   so that a test is plain code that runs the `presencectl` binary and
//!   reads what it printed.
//! - [`ctl`] / [`Running`]: the built `presencectl` binary, run to the end
//!   or left running (`watch`). Every wait has a deadline, so a client that
//!   hangs fails its test instead of stalling the run.
//! - [`SipUa`]: a bare SIP UA over UDP (one socket, text requests, incoming
//!   requests answered 200 and kept) for what only the SIP side can show:
//!   a subscription to end, a contact to list, a device to send to.
//!
//! Not: the presenced end-to-end harness (services/presenced/tests/common),
//! which covers SIP itself; this one needs only enough SIP to make state
//! that presencectl then reads or changes.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::Read;
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long anything that should happen may take. Generous: the machine is
/// shared, and this is a deadline against hangs, not a measure of speed.
pub const WAIT: Duration = Duration::from_secs(30);

static COUNTER: AtomicU64 = AtomicU64::new(1);

/// A token unique in this test run (file names, tags, branches).
pub fn unique() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{}x{nanos:x}x{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A temporary file, removed on drop.
pub struct TempFile(pub std::path::PathBuf);

impl TempFile {
    pub fn new(contents: &str) -> TempFile {
        let p = std::env::temp_dir().join(format!("presencectl-test-{}", unique()));
        std::fs::write(&p, contents).expect("write a temporary file");
        TempFile(p)
    }

    pub fn path(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The all-in-one server, stopped (gracefully) on drop.
pub struct Server {
    /// The api role's gRPC address.
    pub api: SocketAddr,
    /// The SIP address (UDP and TCP).
    pub sip: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _files: Vec<TempFile>,
}

impl Server {
    /// A server for domain example.com on free ports with no files: the API
    /// is open (loopback) and SIP needs no credentials.
    pub fn start() -> Server {
        Server::with_files(&[])
    }

    /// A server with files: each `(flag, contents)` becomes `flag PATH` with
    /// the contents written to PATH (`--users`, `--api-tokens`,
    /// `--directory`).
    pub fn with_files(files: &[(&str, &str)]) -> Server {
        let mut args: Vec<String> = [
            "presenced",
            "--sip-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--api-listen",
            "127.0.0.1:0",
            "--domain",
            "example.com",
            "--shards",
            "8",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut kept = Vec::new();
        for (flag, contents) in files {
            let f = TempFile::new(contents);
            args.push(flag.to_string());
            args.push(f.path());
            kept.push(f);
        }
        use clap::Parser;
        let parsed = presenced::config::Args::parse_from(&args);
        let cfg = presenced::config::Config::from_args(&parsed).expect("a valid configuration");
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("a runtime for the server");
            rt.block_on(async move {
                let server = presenced::start_all(cfg).await.expect("the server starts");
                let addrs = (
                    server
                        .api_addr
                        .expect("the all-in-one server runs the api role"),
                    server.sip_addrs[0],
                );
                if ready_tx.send(addrs).is_err() {
                    return;
                }
                let _ = stop_rx.await;
                server.shutdown().await;
            });
        });
        let (api, sip) = ready_rx
            .recv()
            .expect("the server starts (see its panic above)");
        Server {
            api,
            sip,
            stop: Some(stop_tx),
            thread: Some(thread),
            _files: kept,
        }
    }

    /// The `--server` value that reaches this server.
    pub fn url(&self) -> String {
        format!("http://{}", self.api)
    }

    /// Run `presencectl --server URL ARGS...` to the end.
    pub fn ctl(&self, args: &[&str]) -> Out {
        ctl(&self.url(), args, None)
    }

    /// The same, with `token` as `--token`.
    pub fn ctl_as(&self, token: &str, args: &[&str]) -> Out {
        let mut all = vec!["--token", token];
        all.extend_from_slice(args);
        ctl(&self.url(), &all, None)
    }

    /// Start `presencectl --server URL ARGS...` and leave it running.
    pub fn spawn(&self, args: &[&str]) -> Running {
        let mut all = vec!["--server".to_string(), self.url()];
        all.extend(args.iter().map(|s| s.to_string()));
        Running::start(&all)
    }

    /// A SIP UA over UDP for `user@example.com`.
    pub fn ua(&self, user: &str) -> SipUa {
        SipUa::new(self.sip, user)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            // A panic on the server thread has been printed already; do not
            // panic again while a failing test unwinds.
            let _ = t.join();
        }
    }
}

/// What a finished `presencectl` run did.
#[derive(Debug)]
pub struct Out {
    /// The exit code (-1: killed by a signal).
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    /// Its standard output, after checking it succeeded.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, 0, "presencectl failed: {self:#?}");
        assert!(self.stderr.is_empty(), "stderr of a success: {self:#?}");
        &self.stdout
    }

    /// Its standard output parsed as one JSON value, after checking it
    /// succeeded.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        let out = self.ok();
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {out:?}"))
    }

    /// Its standard error, after checking it exited with `code`, printed
    /// something there, and did not panic.
    #[track_caller]
    pub fn failed(&self, code: i32) -> &str {
        assert_eq!(self.code, code, "exit code: {self:#?}");
        assert!(
            self.stderr.starts_with("presencectl: "),
            "a message of its own: {self:#?}"
        );
        assert!(!self.stderr.contains("panicked"), "{self:#?}");
        &self.stderr
    }
}

/// Run `presencectl --server SERVER ARGS...` with `stdin` (or none) to the
/// end. The environment's PRESENCECTL_* settings are removed, so only the
/// arguments count.
pub fn ctl(server: &str, args: &[&str], stdin: Option<&str>) -> Out {
    let mut all = vec!["--server".to_string(), server.to_string()];
    all.extend(args.iter().map(|s| s.to_string()));
    ctl_env(&all, &[], stdin)
}

/// Run `presencectl ARGS...` with environment `env` (PRESENCECTL_* from
/// the test's environment removed) and `stdin`, to the end.
pub fn ctl_env(args: &[String], env: &[(&str, &str)], stdin: Option<&str>) -> Out {
    let mut cmd = command(args);
    cmd.envs(env.iter().copied());
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd.spawn().expect("run presencectl");
    if let Some(input) = stdin {
        use std::io::Write;
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(input.as_bytes()).expect("write stdin");
    }
    let stdout = drain(child.stdout.take().expect("stdout"));
    let stderr = drain(child.stderr.take().expect("stderr"));
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for presencectl") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("presencectl {args:?} still runs after {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Out {
        code: status.code().unwrap_or(-1),
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

fn command(args: &[String]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_presencectl"));
    cmd.args(args)
        .env_remove("PRESENCECTL_SERVER")
        .env_remove("PRESENCECTL_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// A `presencectl` left running (`watch`); its output read line by line.
/// Killed on drop.
pub struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
    /// Every line read so far, for failure messages.
    pub seen: Vec<String>,
}

impl Running {
    fn start(args: &[String]) -> Running {
        let mut cmd = command(args);
        cmd.stdin(Stdio::null());
        let mut child = cmd.spawn().expect("run presencectl");
        let out = child.stdout.take().expect("stdout");
        let stderr = drain(child.stderr.take().expect("stderr"));
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Running {
            child,
            lines,
            stderr: Some(stderr),
            seen: Vec::new(),
        }
    }

    /// The next line that satisfies `pred` (lines before it are skipped);
    /// panics if the output ends or nothing comes within [`WAIT`].
    #[track_caller]
    pub fn line(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if pred(&l) {
                        return l;
                    }
                }
                Err(e) => {
                    let status = self.child.try_wait().ok().flatten();
                    panic!(
                        "no line {what} ({e:?}; exit {status:?}); lines so far: {:#?}",
                        self.seen
                    )
                }
            }
        }
    }

    /// Wait for it to end by itself (panics if it runs on past [`WAIT`]);
    /// its exit status and standard error.
    #[track_caller]
    pub fn wait(mut self) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait for presencectl") {
                break s;
            }
            if Instant::now() > deadline {
                panic!(
                    "presencectl still runs after {WAIT:?}; lines: {:#?}",
                    self.seen
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stderr = self
            .stderr
            .take()
            .map(|h| h.join().expect("stderr reader"))
            .unwrap_or_default();
        (status, stderr)
    }

    /// Stop it; its exit status and standard error.
    pub fn kill(mut self) -> (std::process::ExitStatus, String) {
        let _ = self.child.kill();
        let status = self.child.wait().expect("reap presencectl");
        let stderr = self
            .stderr
            .take()
            .map(|h| h.join().expect("stderr reader"))
            .unwrap_or_default();
        (status, stderr)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One SIP message as text: the start line, the headers (names in lower
/// case, compact forms expanded), the body.
#[derive(Debug, Clone)]
pub struct Sip {
    pub start: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Sip {
    fn parse(data: &[u8]) -> Option<Sip> {
        let text = String::from_utf8_lossy(data);
        let (head, body) = text.split_once("\r\n\r\n")?;
        let mut lines = head.split("\r\n");
        let start = lines.next()?.to_string();
        let mut headers = Vec::new();
        for l in lines {
            let (name, value) = l.split_once(':')?;
            let name = match name.trim().to_ascii_lowercase().as_str() {
                "v" => "via".to_string(),
                "f" => "from".to_string(),
                "t" => "to".to_string(),
                "i" => "call-id".to_string(),
                "m" => "contact".to_string(),
                "o" => "event".to_string(),
                "c" => "content-type".to_string(),
                "l" => "content-length".to_string(),
                other => other.to_string(),
            };
            headers.push((name, value.trim().to_string()));
        }
        Some(Sip {
            start,
            headers,
            body: body.to_string(),
        })
    }

    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The method of a request.
    pub fn method(&self) -> Option<&str> {
        if self.start.starts_with("SIP/2.0 ") {
            return None;
        }
        self.start.split(' ').next()
    }

    /// The status code of a response.
    pub fn code(&self) -> Option<u16> {
        self.start
            .strip_prefix("SIP/2.0 ")?
            .split(' ')
            .next()?
            .parse()
            .ok()
    }

    /// The branch of the top Via.
    fn branch(&self) -> Option<&str> {
        self.header("via")?
            .split(';')
            .find_map(|p| p.trim().strip_prefix("branch="))
    }

    /// 200 OK to this request.
    fn ok(&self) -> String {
        let mut s = "SIP/2.0 200 OK\r\n".to_string();
        for (n, v) in &self.headers {
            if n == "via" {
                s += &format!("Via: {v}\r\n");
            }
        }
        for (n, name) in [("from", "From"), ("call-id", "Call-ID"), ("cseq", "CSeq")] {
            if let Some(v) = self.header(n) {
                s += &format!("{name}: {v}\r\n");
            }
        }
        if let Some(to) = self.header("to") {
            if to.contains(";tag=") {
                s += &format!("To: {to}\r\n");
            } else {
                s += &format!("To: {to};tag={}\r\n", unique());
            }
        }
        s += "Content-Length: 0\r\n\r\n";
        s
    }
}

/// A SIP UA over UDP: requests sent as text, responses matched by branch,
/// incoming requests answered 200 and kept for [`SipUa::request`].
pub struct SipUa {
    sock: UdpSocket,
    server: SocketAddr,
    pub local: SocketAddr,
    pub aor: String,
    user: String,
    cseq: u32,
    pending: VecDeque<Sip>,
}

impl SipUa {
    pub fn new(server: SocketAddr, user: &str) -> SipUa {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP socket");
        let local = sock.local_addr().expect("local address");
        SipUa {
            sock,
            server,
            local,
            aor: format!("sip:{user}@example.com"),
            user: user.to_string(),
            cseq: 0,
            pending: VecDeque::new(),
        }
    }

    /// This UA's contact URI.
    pub fn contact(&self) -> String {
        format!("sip:{}@{}", self.user, self.local)
    }

    /// Send `method` to `uri` (To: `to`) with `headers`, in a new dialog;
    /// the final response (panics if none comes).
    #[track_caller]
    pub fn send(&mut self, method: &str, uri: &str, to: &str, headers: &[(&str, &str)]) -> Sip {
        self.cseq += 1;
        let branch = format!("z9hG4bK{}", unique());
        let mut s = format!("{method} {uri} SIP/2.0\r\n");
        s += &format!("Via: SIP/2.0/UDP {};branch={branch};rport\r\n", self.local);
        s += "Max-Forwards: 70\r\n";
        s += &format!("From: <{}>;tag={}\r\n", self.aor, unique());
        s += &format!("To: <{to}>\r\n");
        s += &format!("Call-ID: {}@presencectl-test\r\n", unique());
        s += &format!("CSeq: {} {method}\r\n", self.cseq);
        s += &format!("Contact: <{}>\r\n", self.contact());
        for (n, v) in headers {
            s += &format!("{n}: {v}\r\n");
        }
        s += "Content-Length: 0\r\n\r\n";
        self.sock
            .send_to(s.as_bytes(), self.server)
            .expect("send a SIP request");
        self.wait(&format!("a final response to {method}"), |m| {
            m.code().is_some_and(|c| c >= 200) && m.branch() == Some(branch.as_str())
        })
    }

    /// REGISTER this UA's contact for 600 s (asserts 200).
    #[track_caller]
    pub fn register(&mut self) {
        let aor = self.aor.clone();
        let r = self.send("REGISTER", "sip:example.com", &aor, &[("Expires", "600")]);
        assert_eq!(r.code(), Some(200), "REGISTER: {r:#?}");
    }

    /// SUBSCRIBE to the presence of `target` for 600 s (asserts 2xx).
    #[track_caller]
    pub fn subscribe(&mut self, target: &str) {
        let r = self.send(
            "SUBSCRIBE",
            target,
            target,
            &[
                ("Event", "presence"),
                ("Accept", "application/pidf+xml"),
                ("Expires", "600"),
            ],
        );
        assert!(
            r.code().is_some_and(|c| (200..300).contains(&c)),
            "SUBSCRIBE: {r:#?}"
        );
    }

    /// The next incoming request `method` that satisfies `pred` (others
    /// are skipped); panics if none comes within [`WAIT`].
    #[track_caller]
    pub fn request(&mut self, method: &str, pred: impl Fn(&Sip) -> bool) -> Sip {
        self.wait(&format!("a {method}"), |m| {
            m.method() == Some(method) && pred(m)
        })
    }

    #[track_caller]
    fn wait(&mut self, what: &str, pred: impl Fn(&Sip) -> bool) -> Sip {
        if let Some(i) = self.pending.iter().position(&pred) {
            return self.pending.remove(i).expect("pending message");
        }
        let deadline = Instant::now() + WAIT;
        let mut buf = vec![0u8; 65536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!(
                    "no {what} within {WAIT:?}; received meanwhile: {:#?}",
                    self.pending
                );
            }
            self.sock
                .set_read_timeout(Some(left))
                .expect("set a read timeout");
            let (n, from) = match self.sock.recv_from(&mut buf) {
                Ok(got) => got,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(e) => panic!("UDP receive: {e}"),
            };
            let Some(m) = Sip::parse(&buf[..n]) else {
                continue;
            };
            if m.method().is_some() {
                self.sock
                    .send_to(m.ok().as_bytes(), from)
                    .expect("answer a request");
            }
            if pred(&m) {
                return m;
            }
            self.pending.push_back(m);
        }
    }
}

//! A local cluster for tests: a real `redis-server` and `nats-server`
//! (testkit, free ports) and `presenced` roles as child processes of the
//! built binary, one role per process, as in production. Blocking (std
//! only), so it serves plain and tokio tests alike. Processes are killed and
//! the state directory removed on drop (kept, with a note, after a panic).
#![allow(dead_code)] // each test file uses its own part of it

use presence_testkit::nats::{Auth, NatsServer, Secure};
use presence_testkit::redis::RedisServer;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the harness waits for something that should happen.
pub const PATIENCE: Duration = Duration::from_secs(60);

pub struct Proc {
    pub node: String,
    pub role: String,
    pub child: Option<Child>,
    pub http: SocketAddr,
    pub sip: Option<SocketAddr>,
    pub log: PathBuf,
    /// The edge's SIP over TLS address ([`test_tls`]'s certificate).
    pub tls: Option<SocketAddr>,
    /// The edge's SIP over WebSocket address.
    pub ws: Option<SocketAddr>,
    /// The api role's address (gRPC and the web address book).
    pub api: Option<SocketAddr>,
}

pub struct Cluster {
    pub redis: RedisServer,
    pub nats: NatsServer,
    pub procs: Vec<Proc>,
    pub dir: PathBuf,
    pub shards: u32,
    extra: Vec<String>,
}

/// A certificate and key for 127.0.0.1 and localhost, made once per test
/// process (rcgen): the files a server's `--tls-cert`/`--tls-key` name,
/// and the certificate (DER) a client trusts.
pub struct TestTls {
    pub dir: std::path::PathBuf,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    pub der: Vec<u8>,
}

pub fn test_tls() -> &'static TestTls {
    static TLS: std::sync::OnceLock<TestTls> = std::sync::OnceLock::new();
    TLS.get_or_init(|| {
        let (pem, key, der) = make_cert(&["localhost", "127.0.0.1"]);
        let dir = std::env::temp_dir().join(format!("presence-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tls dir");
        let cert = dir.join("cert.pem");
        let keyf = dir.join("key.pem");
        std::fs::write(&cert, pem).expect("write cert");
        std::fs::write(&keyf, key).expect("write key");
        TestTls {
            dir,
            cert,
            key: keyf,
            der,
        }
    })
}

/// A self-signed certificate for `names` (DNS names or IP addresses):
/// (certificate PEM, key PEM, certificate DER).
pub fn make_cert(names: &[&str]) -> (String, String, Vec<u8>) {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let c = rcgen::generate_simple_self_signed(names).expect("self-signed certificate");
    (
        c.cert.pem(),
        c.key_pair.serialize_pem(),
        c.cert.der().to_vec(),
    )
}

pub fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The NATS users and permissions presence ships (one source for
/// `make cluster-up`, the chart and these tests).
pub fn nats_auth_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../helm/presence/files/nats-auth.conf")
}

/// The NATS roles of nats-auth.conf.
pub const NATS_ROLES: [&str; 5] = ["edge", "compositor", "notifier", "api", "presence"];

/// A file with the password of NATS user `role` in `dir` (see
/// [`start_nats_with_role_users`]).
pub fn nats_password_file(dir: &Path, role: &str) -> PathBuf {
    dir.join(format!("nats-{role}.password"))
}

/// nats-server with presence's per-role users and permissions, passwords
/// made up here and written to [`nats_password_file`]s in `dir`: every
/// cluster test runs its roles under the permissions an operator deploys,
/// so a subject a role uses and may not is a failing test.
pub fn start_nats_with_role_users(dir: &Path) -> NatsServer {
    let mut env = Vec::new();
    for role in NATS_ROLES {
        let password = format!("{role}-{:016x}", rand::random::<u64>());
        std::fs::write(nats_password_file(dir, role), &password).expect("password file");
        env.push((
            format!("PRESENCE_NATS_{}_PASSWORD", role.to_uppercase()),
            password,
        ));
    }
    NatsServer::start_secure(Secure {
        tls: None,
        auth: Auth::File {
            path: nats_auth_file(),
            env,
        },
    })
}

impl Cluster {
    /// Redis, NATS (with presence's per-role users), and `edges` + `compositors` + `notifiers` processes
    /// (nodes `edge<i>`, `comp<i>`, `notif<i>`) with `extra` flags each;
    /// returns when every process is ready and all shards are owned.
    pub fn start(
        name: &str,
        shards: u32,
        (edges, compositors, notifiers): (usize, usize, usize),
        extra: &[&str],
    ) -> Cluster {
        let dir = std::env::temp_dir().join(format!(
            "presenced-{name}-{}-{}",
            std::process::id(),
            presence_testkit::free_port()
        ));
        std::fs::create_dir_all(&dir).expect("state dir");
        let mut c = Cluster {
            redis: RedisServer::start(),
            nats: start_nats_with_role_users(&dir),
            procs: Vec::new(),
            dir,
            shards,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        for i in 0..compositors {
            c.spawn("compositor", &format!("comp{i}"));
        }
        for i in 0..notifiers {
            c.spawn("notifier", &format!("notif{i}"));
        }
        for i in 0..edges {
            c.spawn("edge", &format!("edge{i}"));
        }
        c.wait_ready();
        c
    }

    /// A free port no process of this cluster was given yet (a port the
    /// kernel just reported free can come back from the next probe).
    fn fresh_port(&self) -> u16 {
        loop {
            let port = presence_testkit::free_port();
            let taken = self.procs.iter().any(|p| {
                p.http.port() == port
                    || p.sip.is_some_and(|s| s.port() == port)
                    || p.tls.is_some_and(|s| s.port() == port)
                    || p.ws.is_some_and(|s| s.port() == port)
                    || p.api.is_some_and(|s| s.port() == port)
            });
            if !taken {
                return port;
            }
        }
    }

    fn spawn(&mut self, role: &str, node: &str) {
        let http = addr(self.fresh_port());
        let sip = (role == "edge").then(|| {
            let mut port = self.fresh_port();
            while port == http.port() {
                port = self.fresh_port();
            }
            addr(port)
        });
        let tls = sip.map(|sip| {
            let mut port = self.fresh_port();
            while port == http.port() || port == sip.port() {
                port = self.fresh_port();
            }
            addr(port)
        });
        let ws = sip.zip(tls).map(|(sip, tls)| {
            let mut port = self.fresh_port();
            while [http.port(), sip.port(), tls.port()].contains(&port) {
                port = self.fresh_port();
            }
            addr(port)
        });
        let api = (role == "api").then(|| {
            let mut port = self.fresh_port();
            while port == http.port() {
                port = self.fresh_port();
            }
            addr(port)
        });
        let log = self.dir.join(format!("{node}.log"));
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = self
            .command(role, node, http, sip.zip(tls).zip(ws), api, out, err)
            .spawn()
            .expect("start presenced");
        self.procs.push(Proc {
            node: node.to_string(),
            role: role.to_string(),
            child: Some(child),
            http,
            sip,
            log,
            tls,
            ws,
            api,
        });
    }

    /// Start an api process (node `node`) and wait until it is ready;
    /// returns its address.
    pub fn start_api(&mut self, node: &str) -> SocketAddr {
        self.spawn("api", node);
        self.wait_ready();
        self.proc(node).api.expect("an api process has an address")
    }

    pub fn proc(&self, node: &str) -> &Proc {
        self.procs
            .iter()
            .find(|p| p.node == node)
            .unwrap_or_else(|| panic!("no process {node}"))
    }

    fn proc_mut(&mut self, node: &str) -> &mut Proc {
        self.procs
            .iter_mut()
            .find(|p| p.node == node)
            .unwrap_or_else(|| panic!("no process {node}"))
    }

    /// The live processes of a role.
    pub fn live(&self, role: &str) -> impl Iterator<Item = &Proc> {
        let role = role.to_string();
        self.procs
            .iter()
            .filter(move |p| p.role == role && p.child.is_some())
    }

    /// SIP address of edge `i`.
    pub fn edge(&self, i: usize) -> SocketAddr {
        self.proc(&format!("edge{i}")).sip.expect("an edge")
    }

    /// The SIP over TLS address of edge `i`.
    pub fn edge_tls(&self, i: usize) -> SocketAddr {
        self.proc(&format!("edge{i}")).tls.expect("an edge")
    }

    /// The SIP over WebSocket address of edge `i`.
    pub fn edge_ws(&self, i: usize) -> SocketAddr {
        self.proc(&format!("edge{i}")).ws.expect("an edge")
    }

    /// SIP addresses of the live edges.
    pub fn edges(&self) -> Vec<SocketAddr> {
        self.live("edge").filter_map(|p| p.sip).collect()
    }

    /// The last lines of every process's log.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for p in &self.procs {
            let text = std::fs::read_to_string(&p.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            s += &format!("--- {} ---\n", p.node);
            for l in tail.into_iter().rev() {
                s += l;
                s += "\n";
            }
        }
        s
    }

    /// Lines of every log that are warnings or errors (a short summary).
    pub fn warnings(&self) -> String {
        let mut s = String::new();
        for p in &self.procs {
            let text = std::fs::read_to_string(&p.log).unwrap_or_default();
            let bad: Vec<&str> = text
                .lines()
                .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("panicked"))
                .collect();
            if bad.is_empty() {
                continue;
            }
            s += &format!("--- {}: {} warning/error lines ---\n", p.node, bad.len());
            for l in bad.iter().take(8) {
                s += l;
                s += "\n";
            }
        }
        s
    }

    /// Every live process answers /readyz, and the live compositors own all shards.
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + PATIENCE;
        for i in 0..self.procs.len() {
            while !matches!(http_get(self.procs[i].http, "/readyz"), Some((200, _))) {
                let Some(child) = self.procs[i].child.as_mut() else {
                    break;
                };
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "{} exited before it was ready ({status})\n{}",
                        self.procs[i].node,
                        self.logs()
                    );
                }
                let p = &self.procs[i];
                assert!(
                    Instant::now() < deadline,
                    "{} not ready\n{}",
                    p.node,
                    self.logs()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        while self.owned() != self.shards {
            assert!(
                Instant::now() < deadline,
                "shards not all owned: {:?}\n{}",
                self.owned_by(),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Shards owned per live compositor, from its /metrics.
    pub fn owned_by(&self) -> Vec<(String, u32)> {
        self.live("compositor")
            .map(|p| {
                let n = metric_sum(p.http, "presence_compositor_shards_owned", "").unwrap_or(0.0);
                (p.node.clone(), n as u32)
            })
            .collect()
    }

    /// Shards owned by the live compositors together.
    pub fn owned(&self) -> u32 {
        self.owned_by().iter().map(|(_, n)| n).sum()
    }

    /// Send a signal (`-STOP`, `-CONT`, …) to a live process.
    pub fn signal(&self, node: &str, sig: &str) {
        let pid = self.proc(node).child.as_ref().expect("a live process").id();
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill {sig} {node}");
    }

    pub fn kill9(&mut self, node: &str) {
        if let Some(mut c) = self.proc_mut(node).child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, and wait for the process to exit.
    pub fn terminate(&mut self, node: &str) {
        self.signal(node, "-TERM");
        let Some(mut c) = self.proc_mut(node).child.take() else {
            return;
        };
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        panic!("{node} did not exit on SIGTERM");
    }
}

impl Cluster {
    /// Start a stopped process again on the ports it had (a pod keeps its
    /// Service; a node keeps its hostPort), as node `node_id` (a restarted
    /// pod has a new name), with the cluster's flags plus `extra` (flags the
    /// cluster was not given: a flag twice is refused). Its log goes on in
    /// the same file. Does not wait: see [`Cluster::wait_ready`].
    pub fn restart(&mut self, node: &str, node_id: &str, extra: &[&str]) {
        let p = self.proc(node);
        assert!(p.child.is_none(), "{node} is still running");
        let (role, http, sip, api, log) = (
            p.role.clone(),
            p.http,
            p.sip.zip(p.tls).zip(p.ws),
            p.api,
            p.log.clone(),
        );
        let out = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&log)
            .expect("log file");
        let err = out.try_clone().expect("log file");
        let child = self
            .command(&role, node_id, http, sip, api, out, err)
            .args(extra)
            .spawn()
            .expect("start presenced");
        self.proc_mut(node).child = Some(child);
    }

    /// The command line of one process of this cluster (its role, node id,
    /// ports and log), with the cluster's flags.
    // One argument per address a process may have.
    #[allow(clippy::too_many_arguments)]
    fn command(
        &self,
        role: &str,
        node_id: &str,
        http: SocketAddr,
        // SIP, SIP over TLS and SIP over WebSocket, for an edge.
        sip: Option<((SocketAddr, SocketAddr), SocketAddr)>,
        api: Option<SocketAddr>,
        out: std::fs::File,
        err: std::fs::File,
    ) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_presenced"));
        cmd.args(["--target", role])
            .args(["--redis", &self.redis.url()])
            .args(["--nats", &self.nats.url()])
            .args(["--nats-user", role])
            .arg("--nats-password-file")
            .arg(nats_password_file(&self.dir, role))
            .args(["--node-id", node_id])
            .args(["--shards", &self.shards.to_string()])
            .args(["--http-listen", &http.to_string()])
            .args(["--domain", "example.com"])
            .args(["--nonce-secret", "cluster-test-secret"])
            .args(["--log", "info"])
            // Every simulated UA of a test comes from 127.0.0.1: one
            // "source" carrying thousands of phones, which the edge would
            // rate-limit and shed first as a heavy source (a notifier
            // killed by a failover test lets the notify queue grow).
            .args([
                "--rate-per-source",
                "1000000",
                "--burst-per-source",
                "1000000",
                "--max-notify-queue",
                "1000000",
            ])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        if let Some(((sip, tls), ws)) = sip {
            let t = test_tls();
            cmd.args(["--sip-listen", &sip.to_string()]);
            cmd.args(["--sip-tls-listen", &tls.to_string()]);
            cmd.args(["--sip-ws-listen", &ws.to_string()]);
            cmd.arg("--tls-cert").arg(&t.cert);
            cmd.arg("--tls-key").arg(&t.key);
        }
        if let Some(api) = api {
            cmd.args(["--api-listen", &api.to_string()]);
        }
        cmd
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in &mut self.procs {
            if let Some(mut c) = p.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("cluster logs kept in {}", self.dir.display());
        }
    }
}

/// A blocking HTTP GET; `None` when nothing answers.
pub fn http_get(to: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {to}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((code, body))
}

/// The sum of a metric's samples whose labels contain `labels`.
pub fn metric_sum(to: SocketAddr, name: &str, labels: &str) -> Option<f64> {
    let (_, body) = http_get(to, "/metrics")?;
    let mut sum = None;
    for l in body.lines() {
        let Some(rest) = l.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) || !rest.contains(labels) {
            continue;
        }
        if let Some(v) = l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            *sum.get_or_insert(0.0) += v;
        }
    }
    sum
}

/// The newest modification time of the files under `dir`.
fn newest(dir: &Path) -> Option<std::time::SystemTime> {
    let mut t = std::fs::metadata(dir).ok()?.modified().ok();
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let m = if e.path().is_dir() {
            newest(&e.path())
        } else {
            e.metadata().ok().and_then(|m| m.modified().ok())
        };
        t = t.max(m);
    }
    t
}

/// `target/<profile>/presence-loadtest`, built if missing or older than
/// its sources.
pub fn loadtest_binary() -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_presenced"))
        .parent()
        .expect("the binary's directory")
        .to_path_buf();
    let bin = dir.join("presence-loadtest");
    let sources = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../loadtest");
    let built_at = std::fs::metadata(&bin).and_then(|m| m.modified()).ok();
    let changed_at = newest(&sources.join("src")).max(newest(&sources.join("Cargo.toml")));
    if built_at.is_some() && built_at >= changed_at {
        return bin;
    }
    // The machine's benchmark lock: never build while a benchmark runs.
    while Path::new("/tmp/presence-bench.lock").exists() {
        std::thread::sleep(Duration::from_secs(5));
    }
    let release = dir.file_name().is_some_and(|n| n == "release");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-p", "presence-loadtest"]);
    if release {
        cmd.arg("--release");
    }
    let built = cmd.status().map(|s| s.success()).unwrap_or(false);
    assert!(
        built && bin.exists(),
        "no load generator at {}: build it with `cargo build{} -p presence-loadtest`",
        bin.display(),
        if release { " --release" } else { "" }
    );
    bin
}

/// The text of the flat JSON object found by following `path`: each key is
/// looked up after the previous one (good enough for the report's layout).
pub fn json_object<'a>(json: &'a str, path: &[&str]) -> Option<&'a str> {
    let mut rest = json;
    for key in path {
        let at = rest.find(&format!("\"{key}\""))?;
        rest = &rest[at..];
    }
    let open = rest.find('{')?;
    let close = rest[open..].find('}')?;
    Some(&rest[open..=open + close])
}

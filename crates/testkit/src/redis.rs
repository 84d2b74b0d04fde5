//! Real `redis-server` processes: standalone, and a 3-master Redis Cluster.
//!
//! Each server runs on free ports in a fresh temporary directory, without
//! persistence (`--save '' --appendonly no`), and is killed (its directory
//! removed) when its handle drops. Std only: a minimal RESP client is enough
//! to wait for readiness.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const INSTALL: &str = "redis-server is not installed: apt-get install -y redis-server";

/// How long a server may take to answer PING, or a cluster to turn `ok`.
const READY_WITHIN: Duration = Duration::from_secs(20);

fn fresh_dir(kind: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "presence-{kind}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a temporary directory");
    dir
}

fn spawn_server(dir: &Path, port: u16, extra: &[String]) -> Child {
    let mut cmd = Command::new("redis-server");
    cmd.arg("--port")
        .arg(port.to_string())
        .arg("--bind")
        .arg("127.0.0.1")
        .arg("--save")
        .arg("")
        .arg("--appendonly")
        .arg("no")
        .arg("--daemonize")
        .arg("no")
        .arg("--dir")
        .arg(dir)
        .arg("--logfile")
        .arg(dir.join("redis.log"))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    match cmd.spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!("{INSTALL}"),
        Err(e) => panic!("cannot start redis-server: {e}"),
    }
}

/// Send one command (RESP array of bulk strings) and read one reply, as text.
/// Errors come back as `Err` with the server's message. Arrays are not
/// supported (the harness does not need them).
pub fn command(port: u16, args: &[&str]) -> std::io::Result<String> {
    command_as(port, None, args)
}

/// [`command`] on a server that requires `password` (AUTH first).
pub fn command_as(port: u16, password: Option<&str>, args: &[&str]) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let encode = |args: &[&str]| {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out
    };
    let mut r = BufReader::new(s.try_clone()?);
    if let Some(pw) = password {
        s.write_all(&encode(&["AUTH", pw]))?;
        let mut ok = String::new();
        r.read_line(&mut ok)?;
        if !ok.starts_with("+OK") {
            return Err(std::io::Error::other(ok.trim_end().to_string()));
        }
    }
    s.write_all(&encode(args))?;
    let mut line = String::new();
    r.read_line(&mut line)?;
    let line = line.trim_end().to_string();
    let bad = |m: String| std::io::Error::other(m);
    match line.as_bytes().first() {
        Some(b'+') | Some(b':') => Ok(line[1..].to_string()),
        Some(b'-') => Err(bad(line[1..].to_string())),
        Some(b'$') => {
            let n: i64 = line[1..].parse().map_err(|_| bad(line.clone()))?;
            if n < 0 {
                return Ok(String::new());
            }
            let mut buf = vec![0u8; n as usize + 2];
            r.read_exact(&mut buf)?;
            buf.truncate(n as usize);
            Ok(String::from_utf8_lossy(&buf).into_owned())
        }
        _ => Err(bad(format!("unexpected reply {line:?}"))),
    }
}

fn wait_for_ping(child: &mut Child, port: u16) -> bool {
    let start = Instant::now();
    while start.elapsed() < READY_WITHIN {
        if let Ok(Some(_)) = child.try_wait() {
            return false; // exited: most likely the port was taken meanwhile
        }
        match command(port, &["PING"]) {
            Ok(r) if r == "PONG" => return true,
            // Up, and asking for the password it was started with.
            Err(e) if e.to_string().starts_with("NOAUTH") => return true,
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// One node: a child process on a port, in its own directory.
struct Node {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl Node {
    /// Start a node, retrying on fresh ports if one was taken meanwhile.
    fn start(kind: &str, extra: impl Fn() -> Vec<String>) -> Node {
        let dir = fresh_dir(kind);
        for _ in 0..5 {
            let port = crate::free_port();
            let mut child = spawn_server(&dir, port, &extra());
            if wait_for_ping(&mut child, port) {
                return Node {
                    child: Some(child),
                    port,
                    dir,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let log = std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default();
        let _ = std::fs::remove_dir_all(&dir);
        panic!("redis-server did not answer PING; its log:\n{log}");
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A standalone `redis-server` on a free port.
pub struct RedisServer {
    node: Node,
    /// The TLS port of a server started by [`RedisServer::start_secure`].
    tls_port: Option<u16>,
}

impl RedisServer {
    /// Start it and wait until it answers PING. Panics (with the install
    /// command) if `redis-server` is missing.
    pub fn start() -> RedisServer {
        RedisServer {
            node: Node::start("redis", Vec::new),
            tls_port: None,
        }
    }

    /// A server that also listens for TLS (this certificate and key, PEM)
    /// and requires `password` on every connection: what production looks
    /// like. [`RedisServer::url`] is then its `rediss://` URL.
    pub fn start_secure(cert: &Path, key: &Path, password: &str) -> RedisServer {
        let tls_port = crate::free_port();
        let extra = || {
            vec![
                "--tls-port".to_string(),
                tls_port.to_string(),
                "--tls-cert-file".into(),
                cert.display().to_string(),
                "--tls-key-file".into(),
                key.display().to_string(),
                "--tls-ca-cert-file".into(),
                cert.display().to_string(),
                "--tls-auth-clients".into(),
                "no".into(),
                "--requirepass".into(),
                password.to_string(),
            ]
        };
        RedisServer {
            node: Node::start("redis-tls", extra),
            tls_port: Some(tls_port),
        }
    }

    pub fn port(&self) -> u16 {
        self.node.port
    }

    /// `redis://127.0.0.1:PORT`, or `rediss://127.0.0.1:TLS_PORT` for a
    /// server started by [`RedisServer::start_secure`].
    pub fn url(&self) -> String {
        match self.tls_port {
            Some(p) => format!("rediss://127.0.0.1:{p}"),
            None => format!("redis://127.0.0.1:{}", self.node.port),
        }
    }

    /// Kill the server now (`kill -9`), for failure tests.
    pub fn kill(&mut self) {
        self.node.kill();
    }
}

/// A Redis Cluster of masters only, each on free ports, every slot assigned.
pub struct RedisCluster {
    nodes: Vec<Node>,
    tls_ports: Option<Vec<u16>>,
}

impl RedisCluster {
    /// Start `masters` nodes (at least 3, as Redis Cluster requires), join
    /// them with `redis-cli --cluster create`, and wait until every node
    /// reports `cluster_state:ok`.
    pub fn start(masters: usize) -> RedisCluster {
        Self::start_inner(masters, None)
    }

    /// [`RedisCluster::start`] whose nodes also listen for TLS (this
    /// certificate and key, PEM), talk to each other over TLS on the cluster
    /// bus, announce their TLS ports to TLS clients and require `password`:
    /// a production Redis Cluster. [`RedisCluster::tls_ports`] are the
    /// ports to give a client.
    pub fn start_secure(masters: usize, cert: &Path, key: &Path, password: &str) -> RedisCluster {
        Self::start_inner(masters, Some((cert, key, password)))
    }

    fn start_inner(masters: usize, secure: Option<(&Path, &Path, &str)>) -> RedisCluster {
        assert!(masters >= 3, "Redis Cluster needs at least 3 masters");
        let mut tls_ports = Vec::new();
        let nodes: Vec<Node> = (0..masters)
            .map(|_| {
                let tls_port = crate::free_port();
                let node = Node::start("redis-cluster", || {
                    // The cluster bus port must be free too; by default it is
                    // port + 10000, which nobody checked.
                    let mut args: Vec<String> = vec![
                        "--cluster-enabled".into(),
                        "yes".into(),
                        "--cluster-config-file".into(),
                        "nodes.conf".into(),
                        "--cluster-node-timeout".into(),
                        "2000".into(),
                        "--cluster-port".into(),
                        crate::free_port().to_string(),
                    ];
                    if let Some((cert, key, password)) = secure {
                        args.extend(
                            [
                                "--tls-port",
                                &tls_port.to_string(),
                                "--tls-cluster",
                                "yes",
                                "--tls-replication",
                                "yes",
                                "--tls-cert-file",
                                &cert.display().to_string(),
                                "--tls-key-file",
                                &key.display().to_string(),
                                "--tls-ca-cert-file",
                                &cert.display().to_string(),
                                "--tls-auth-clients",
                                "no",
                                "--requirepass",
                                password,
                                "--masterauth",
                                password,
                            ]
                            .map(String::from),
                        );
                    }
                    args
                });
                tls_ports.push(tls_port);
                node
            })
            .collect();
        let password = secure.map(|(_, _, p)| p);
        let mut create = Command::new("redis-cli");
        if let Some(pw) = password {
            create.env("REDISCLI_AUTH", pw);
        }
        create.arg("--cluster").arg("create");
        for n in &nodes {
            create.arg(format!("127.0.0.1:{}", n.port));
        }
        create
            .arg("--cluster-replicas")
            .arg("0")
            .arg("--cluster-yes")
            .stdin(Stdio::null());
        let out = match create.output() {
            Ok(o) => o,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!("{INSTALL}"),
            Err(e) => panic!("cannot run redis-cli: {e}"),
        };
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let start = Instant::now();
        loop {
            let ok = nodes.iter().all(|n| {
                command_as(n.port, password, &["CLUSTER", "INFO"])
                    .is_ok_and(|i| i.contains("cluster_state:ok"))
            });
            if ok {
                break;
            }
            assert!(
                start.elapsed() < READY_WITHIN,
                "Redis Cluster did not reach cluster_state:ok"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        RedisCluster {
            nodes,
            tls_ports: secure.map(|_| tls_ports),
        }
    }

    /// The TLS ports of a cluster started by [`RedisCluster::start_secure`].
    pub fn tls_ports(&self) -> Option<Vec<u16>> {
        self.tls_ports.clone()
    }

    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// `redis://127.0.0.1:PORT` of every node.
    pub fn urls(&self) -> Vec<String> {
        self.ports()
            .into_iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    /// Kill node `i` now (`kill -9`), for failure tests.
    pub fn kill(&mut self, i: usize) {
        if let Some(n) = self.nodes.get_mut(i) {
            n.kill();
        }
    }
}

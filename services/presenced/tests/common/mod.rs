//! What the end-to-end tests drive and what they drive it with.
//!
//! - [`TestServer`]: the server under test, started by [`start`] as the
//!   all-in-one server in this process ([`Mode::AllInOne`], in-memory
//!   backends) or as a cluster of `presenced` processes on a real Redis and
//!   NATS ([`Mode::Cluster`], through `tests/harness`, so a test file that
//!   has `mod common;` also has `mod harness;`). Both take the same users
//!   file, policy file and flags; [`TestServer::at`] addresses edge `i`
//!   (one address all-in-one), [`TestServer::store`] is the system of record
//!   (the in-memory store, or the cluster's Redis).
//! - [`Ua`]: a tiny SIP user agent: UDP or TCP, requests formatted as text,
//!   responses matched by branch, incoming requests answered automatically
//!   (with a configurable code) and kept for inspection, Digest (MD5 and
//!   SHA-256, qop=auth). Every wait has a timeout.
#![allow(dead_code)]

use presence_sip::{frame_stream, parse, HeaderAccess, Message, Request, Response, StreamFrame};
use presenced::Server;
use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;

pub const WAIT: Duration = Duration::from_secs(5);
pub const MAX: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tp {
    Udp,
    Tcp,
    /// SIP over TLS to the server's TLS listener, trusting [`test_tls`]'s
    /// certificate.
    Tls,
    /// SIP over WebSocket (RFC 7118) to the server's WS listener, as a
    /// browser softphone does.
    Ws,
}

impl Tp {
    pub fn via(self) -> &'static str {
        match self {
            Tp::Udp => "UDP",
            Tp::Tcp => "TCP",
            Tp::Tls => "TLS",
            Tp::Ws => "WS",
        }
    }
}

pub use crate::harness::test_tls;

/// The flags that give a server a TLS listener with [`test_tls`]'s files.
pub fn tls_args(listen: &str) -> Vec<String> {
    let t = test_tls();
    vec![
        "--sip-tls-listen".into(),
        listen.into(),
        "--tls-cert".into(),
        t.cert.display().to_string(),
        "--tls-key".into(),
        t.key.display().to_string(),
    ]
}

/// Open a TLS connection to `server`, trusting the certificate `trust`
/// (DER) and checking it names 127.0.0.1.
pub async fn tls_connect(
    server: SocketAddr,
    trust: &[u8],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(trust.to_vec()))
        .map_err(std::io::Error::other)?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(std::io::Error::other)?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(server).await?;
    tcp.set_nodelay(true).ok();
    let name = rustls::pki_types::ServerName::IpAddress(server.ip().into());
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

static COUNTER: AtomicU64 = AtomicU64::new(1);

pub fn rand_token() -> String {
    format!(
        "{:x}{:x}",
        rand::random::<u64>(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn md5_hex(s: &str) -> String {
    use md5::{Digest, Md5};
    hex(&Md5::digest(s.as_bytes()))
}

pub fn sha256_hex(s: &str) -> String {
    use sha2::{Digest, Sha256};
    hex(&Sha256::digest(s.as_bytes()))
}

/// A temporary file removed on drop.
pub struct TempFile(pub std::path::PathBuf);

impl TempFile {
    pub fn new(contents: &str) -> TempFile {
        let p = std::env::temp_dir().join(format!(
            "presenced-e2e-{}-{}",
            std::process::id(),
            rand_token()
        ));
        std::fs::write(&p, contents).expect("write temp file");
        TempFile(p)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Where a scenario runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The all-in-one server in this process, on the in-memory backends.
    AllInOne,
    /// A cluster of `presenced` processes on a real Redis and NATS
    /// (tests/harness): [`CLUSTER_EDGES`] edges, [`CLUSTER_COMPOSITORS`]
    /// compositors, one notifier.
    Cluster,
}

/// The SIP side of a scenario that talks to the presentity's edge: PUBLISH,
/// REGISTER of the presentity, MESSAGE senders. See [`TestServer::at`].
pub const PRESENTITY: usize = 0;
/// The SIP side of a scenario that talks to the watchers' edge:
/// subscribers, MESSAGE recipients. See [`TestServer::at`].
pub const WATCHER: usize = 1;

pub const CLUSTER_EDGES: usize = 2;
pub const CLUSTER_COMPOSITORS: usize = 2;
/// Shards of the test cluster (the all-in-one server gets 8).
pub const CLUSTER_SHARDS: u32 = 16;
/// How long a UA waits for what should come when the server is a cluster:
/// every request crosses NATS to a compositor and Redis, every NOTIFY
/// crosses JetStream, a notifier and NATS again, on a shared 2-core machine.
pub const CLUSTER_WAIT: Duration = Duration::from_secs(15);

/// One cluster at a time in a test binary: each starts Redis, NATS and
/// several processes, and the machine has few cores. (An async mutex, so a
/// test that fails while holding it does not poison the others.)
static CLUSTER_SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

enum Running {
    AllInOne(Server),
    Cluster(crate::harness::Cluster),
}

/// The server under test, all-in-one or a cluster, stopped by
/// [`TestServer::shutdown`] or on drop.
pub struct TestServer {
    pub mode: Mode,
    running: Option<Running>,
    /// The SIP address of each edge (one in all-in-one).
    sips: Vec<SocketAddr>,
    /// The SIP over TLS address of each edge.
    tls_sips: Vec<SocketAddr>,
    /// The SIP over WebSocket address of each edge.
    ws_sips: Vec<SocketAddr>,
    /// An operations (HTTP) address: the all-in-one server's, or the first
    /// edge process's in a cluster (any role serves `/admin`).
    pub http: SocketAddr,
    /// The api role's address (gRPC and the web address book): the
    /// all-in-one server's, or the api process's of a cluster started by
    /// [`start_api`].
    pub api: Option<SocketAddr>,
    /// The system of record: the all-in-one server's in-memory store, or the
    /// cluster's Redis.
    store: Arc<dyn presence_store::Store>,
    _files: Vec<TempFile>,
    // Last, so that the next cluster starts only after this one is gone.
    _serial: Option<tokio::sync::MutexGuard<'static, ()>>,
}

impl TestServer {
    /// The SIP address of edge `i`: scenarios put the presentity side on
    /// [`PRESENTITY`] and the watcher side on [`WATCHER`]. All-in-one has
    /// one address for every `i`.
    pub fn at(&self, i: usize) -> SocketAddr {
        Self::edge(&self.sips, self.mode, i)
    }

    /// The SIP over TLS address of edge `i`.
    pub fn tls_at(&self, i: usize) -> SocketAddr {
        Self::edge(&self.tls_sips, self.mode, i)
    }

    /// The SIP over WebSocket address of edge `i`.
    pub fn ws_at(&self, i: usize) -> SocketAddr {
        Self::edge(&self.ws_sips, self.mode, i)
    }

    fn edge(addrs: &[SocketAddr], mode: Mode, i: usize) -> SocketAddr {
        match mode {
            Mode::AllInOne => addrs[0],
            Mode::Cluster => *addrs
                .get(i)
                .unwrap_or_else(|| panic!("the test cluster has no edge {i}")),
        }
    }

    /// How long to wait for something that should come: [`WAIT`]
    /// all-in-one, [`CLUSTER_WAIT`] in a cluster.
    pub fn wait(&self) -> Duration {
        self.patience(WAIT)
    }

    /// `d` all-in-one; at least [`CLUSTER_WAIT`] in a cluster.
    pub fn patience(&self, d: Duration) -> Duration {
        match self.mode {
            Mode::AllInOne => d,
            Mode::Cluster => d.max(CLUSTER_WAIT),
        }
    }

    /// A UA for `user@example.com` over `tp` to edge `i` (see [`Self::at`]),
    /// as patient as this server needs.
    pub async fn ua(&self, tp: Tp, i: usize, user: &str) -> Ua {
        let addr = match tp {
            Tp::Tls => self.tls_at(i),
            Tp::Ws => self.ws_at(i),
            Tp::Udp | Tp::Tcp => self.at(i),
        };
        let mut ua = Ua::new(tp, addr, user).await;
        ua.patience = self.wait();
        ua
    }

    /// The cluster's processes, to start, kill or restart one (panics
    /// all-in-one).
    pub fn cluster_mut(&mut self) -> &mut crate::harness::Cluster {
        match &mut self.running {
            Some(Running::Cluster(c)) => c,
            _ => panic!("not a cluster"),
        }
    }

    /// The store the servers write to, to check what a 2xx promised.
    pub fn store(&self) -> &Arc<dyn presence_store::Store> {
        &self.store
    }

    pub async fn shutdown(mut self) {
        match self.running.take() {
            Some(Running::AllInOne(s)) => s.shutdown().await,
            Some(Running::Cluster(c)) => {
                // Killing and reaping processes blocks.
                let _ = tokio::task::spawn_blocking(move || drop(c)).await;
            }
            None => {}
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(Running::Cluster(c)) = &self.running {
            if std::thread::panicking() {
                eprintln!("cluster warnings and errors:\n{}", c.warnings());
            }
        }
    }
}

/// The users / policy files and flags of a server: a users file and a
/// policy file are written from their contents.
fn server_args(
    users: Option<&str>,
    policy: Option<&str>,
    extra: &[&str],
) -> (Vec<String>, Vec<TempFile>) {
    let mut args = Vec::new();
    let mut files = Vec::new();
    if let Some(u) = users {
        let f = TempFile::new(u);
        args.push("--users".into());
        args.push(f.0.display().to_string());
        files.push(f);
    }
    if let Some(p) = policy {
        let f = TempFile::new(p);
        args.push("--policy".into());
        args.push(f.0.display().to_string());
        files.push(f);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    (args, files)
}

/// Start a server of `mode` on free ports; `users` / `policy` are file
/// contents, `extra` more flags (given to every process of a cluster).
pub async fn start(
    mode: Mode,
    users: Option<&str>,
    policy: Option<&str>,
    extra: &[&str],
) -> TestServer {
    match mode {
        Mode::AllInOne => {
            start_with_faults(users, policy, extra, presenced::faults::Faults::default()).await
        }
        Mode::Cluster => start_cluster(users, policy, extra, false).await,
    }
}

/// [`start`] with the api role: in a cluster, one more process (`api0`).
pub async fn start_api(
    mode: Mode,
    users: Option<&str>,
    policy: Option<&str>,
    extra: &[&str],
) -> TestServer {
    match mode {
        Mode::AllInOne => start(mode, users, policy, extra).await,
        Mode::Cluster => start_cluster(users, policy, extra, true).await,
    }
}

/// The all-in-one server with test-only fault hooks switched on (they are
/// not flags, so a cluster of processes cannot have them).
pub async fn start_with_faults(
    users: Option<&str>,
    policy: Option<&str>,
    extra: &[&str],
    faults: presenced::faults::Faults,
) -> TestServer {
    let mut args = base_args("127.0.0.1:0");
    args.extend(tls_args("127.0.0.1:0"));
    args.extend(["--sip-ws-listen".to_string(), "127.0.0.1:0".to_string()]);
    let (more, files) = server_args(users, policy, extra);
    args.extend(more);
    use clap::Parser;
    let parsed = presenced::config::Args::parse_from(&args);
    let cfg = presenced::config::Config::from_args(&parsed).expect("valid config");
    let server = presenced::start_with_faults(cfg, faults)
        .await
        .expect("server starts");
    TestServer {
        mode: Mode::AllInOne,
        sips: vec![server.sip_addrs[0]],
        tls_sips: server.sip_tls_addrs.clone(),
        ws_sips: server.sip_ws_addrs.clone(),
        http: server.http_addr,
        api: server.api_addr,
        store: server.store.clone(),
        running: Some(Running::AllInOne(server)),
        _files: files,
        _serial: None,
    }
}

/// The flags of an all-in-one test server listening for SIP on
/// `sip_listen` (free ports, domain example.com, 8 shards).
pub fn base_args(sip_listen: &str) -> Vec<String> {
    [
        "presenced",
        "--sip-listen",
        sip_listen,
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
    .collect()
}

/// A cluster (tests/harness) with the same files and flags as [`start`]
/// gives the all-in-one server; returns once every process is ready and
/// every shard owned.
async fn start_cluster(
    users: Option<&str>,
    policy: Option<&str>,
    extra: &[&str],
    api: bool,
) -> TestServer {
    let serial = CLUSTER_SERIAL.lock().await;
    let (args, files) = server_args(users, policy, extra);
    let c = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut c = crate::harness::Cluster::start(
            "e2e",
            CLUSTER_SHARDS,
            (CLUSTER_EDGES, CLUSTER_COMPOSITORS, 1),
            &args,
        );
        if api {
            c.start_api("api0");
        }
        c
    })
    .await
    .expect("the cluster starts");
    let redis = presence_redis::RedisStore::connect(
        presence_redis::RedisConfig::new(&c.redis.url(), CLUSTER_SHARDS).expect("redis config"),
        &prometheus::Registry::new(),
    )
    .await
    .expect("connect to the cluster's redis");
    TestServer {
        mode: Mode::Cluster,
        sips: (0..CLUSTER_EDGES).map(|i| c.edge(i)).collect(),
        tls_sips: (0..CLUSTER_EDGES).map(|i| c.edge_tls(i)).collect(),
        ws_sips: (0..CLUSTER_EDGES).map(|i| c.edge_ws(i)).collect(),
        http: c.proc("edge0").http,
        api: c.procs.iter().find_map(|p| p.api),
        store: Arc::new(redis),
        running: Some(Running::Cluster(c)),
        _files: files,
        _serial: Some(serial),
    }
}

/// A request under construction.
#[derive(Debug, Clone)]
pub struct Req {
    pub method: String,
    pub uri: String,
    pub from: String,
    pub from_tag: String,
    pub to: String,
    pub to_tag: Option<String>,
    pub call_id: String,
    pub cseq: u32,
    pub branch: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub no_call_id: bool,
}

impl Req {
    pub fn h(mut self, name: &str, value: impl Into<String>) -> Req {
        self.headers.push((name.to_string(), value.into()));
        self
    }
    pub fn body(mut self, content_type: &str, body: impl Into<Vec<u8>>) -> Req {
        self.headers
            .push(("Content-Type".to_string(), content_type.to_string()));
        self.body = body.into();
        self
    }
    pub fn to(mut self, to: &str) -> Req {
        self.to = to.to_string();
        self
    }
    pub fn from(mut self, from: &str) -> Req {
        self.from = from.to_string();
        self
    }
    /// Put the request inside a dialog established by `d`.
    pub fn in_dialog(mut self, d: &Dialog) -> Req {
        self.call_id = d.call_id.clone();
        self.from_tag = d.local_tag.clone();
        self.to_tag = Some(d.remote_tag.clone());
        self
    }
    /// A new transaction (new branch, next CSeq), same everything else.
    pub fn next(&self) -> Req {
        let mut r = self.clone();
        r.branch = format!("z9hG4bK{}", rand_token());
        r.cseq += 1;
        r
    }
    pub fn encode(&self, tp: Tp, local: SocketAddr) -> Vec<u8> {
        let mut s = format!("{} {} SIP/2.0\r\n", self.method, self.uri);
        s += &format!(
            "Via: SIP/2.0/{} {local};branch={};rport\r\n",
            tp.via(),
            self.branch
        );
        s += "Max-Forwards: 70\r\n";
        s += &format!("From: <{}>;tag={}\r\n", self.from, self.from_tag);
        match &self.to_tag {
            Some(t) => s += &format!("To: <{}>;tag={t}\r\n", self.to),
            None => s += &format!("To: <{}>\r\n", self.to),
        }
        if !self.no_call_id {
            s += &format!("Call-ID: {}\r\n", self.call_id);
        }
        s += &format!("CSeq: {} {}\r\n", self.cseq, self.method);
        for (n, v) in &self.headers {
            s += &format!("{n}: {v}\r\n");
        }
        s += &format!("Content-Length: {}\r\n\r\n", self.body.len());
        let mut out = s.into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

/// What a UA remembers of a dialog it created (SUBSCRIBE).
#[derive(Debug, Clone)]
pub struct Dialog {
    pub call_id: String,
    pub local_tag: String,
    pub remote_tag: String,
}

type StreamWriter = Box<dyn tokio::io::AsyncWrite + Send + Unpin>;
type WsSink = futures_util::stream::SplitSink<
    tokio_tungstenite::WebSocketStream<TcpStream>,
    tokio_tungstenite::tungstenite::Message,
>;

/// Open a SIP WebSocket (subprotocol `sip`) to `server`.
pub async fn ws_connect(
    server: SocketAddr,
    origin: Option<&str>,
) -> Result<tokio_tungstenite::WebSocketStream<TcpStream>, String> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{server}/")
        .into_client_request()
        .map_err(|e| e.to_string())?;
    req.headers_mut()
        .insert("sec-websocket-protocol", "sip".parse().unwrap());
    if let Some(o) = origin {
        req.headers_mut().insert("origin", o.parse().unwrap());
    }
    let tcp = TcpStream::connect(server)
        .await
        .map_err(|e| e.to_string())?;
    let (ws, resp) = tokio_tungstenite::client_async(req, tcp)
        .await
        .map_err(|e| e.to_string())?;
    if resp
        .headers()
        .get("sec-websocket-protocol")
        .map(|v| v.as_bytes())
        != Some(b"sip")
    {
        return Err(format!("no sip subprotocol in {resp:?}"));
    }
    Ok(ws)
}

enum Wire {
    Udp(Arc<UdpSocket>),
    /// TCP or TLS: the write half of the stream.
    Tcp(Arc<tokio::sync::Mutex<StreamWriter>>),
    /// WebSocket: one SIP message per WebSocket message.
    Ws(Arc<tokio::sync::Mutex<WsSink>>),
}

pub struct Ua {
    pub aor: String,
    pub user: String,
    pub password: String,
    pub tp: Tp,
    pub server: SocketAddr,
    pub local: SocketAddr,
    wire: Wire,
    rx: mpsc::UnboundedReceiver<Message>,
    pending: VecDeque<Message>,
    /// Code answered to incoming requests (0 = do not answer).
    pub answer_code: Arc<AtomicU16>,
    /// Raw bytes of every incoming request, in order.
    pub raw_requests: Arc<Mutex<Vec<Vec<u8>>>>,
    /// Set when the TCP connection was closed by the server.
    pub closed: Arc<std::sync::atomic::AtomicBool>,
    /// How long [`Ua::send`], [`Ua::response`] and [`Ua::notify`] wait
    /// ([`WAIT`] unless the server needs more, see [`TestServer::ua`]).
    pub patience: Duration,
    cseq: u32,
}

fn answer_for(req: &Request, code: u16) -> Vec<u8> {
    let mut s = format!(
        "SIP/2.0 {code} {}\r\n",
        if code < 300 { "OK" } else { "Error" }
    );
    for v in req.header_all("Via") {
        s += &format!("Via: {v}\r\n");
    }
    for n in ["From", "Call-ID", "CSeq"] {
        if let Some(v) = req.header(n) {
            s += &format!("{n}: {v}\r\n");
        }
    }
    if let Some(to) = req.header("To") {
        if to.contains(";tag=") {
            s += &format!("To: {to}\r\n");
        } else {
            s += &format!("To: {to};tag={}\r\n", rand_token());
        }
    }
    s += "Content-Length: 0\r\n\r\n";
    s.into_bytes()
}

fn dedup_key(req: &Request) -> String {
    format!(
        "{:?}|{:?}|{:?}",
        req.top_via().and_then(|v| v.branch),
        req.call_id(),
        req.header("CSeq")
    )
}

impl Ua {
    /// A UA for `user@example.com` over `tp` to `server`.
    pub async fn new(tp: Tp, server: SocketAddr, user: &str) -> Ua {
        let (tx, rx) = mpsc::unbounded_channel();
        let answer_code = Arc::new(AtomicU16::new(200));
        let raw_requests = Arc::new(Mutex::new(Vec::new()));
        let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (wire, local) = match tp {
            Tp::Udp => {
                let sock = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind udp"));
                let local = sock.local_addr().expect("local addr");
                let s = sock.clone();
                let code = answer_code.clone();
                let raw = raw_requests.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 70000];
                    let mut seen = HashSet::new();
                    loop {
                        let Ok((n, from)) = s.recv_from(&mut buf).await else {
                            break;
                        };
                        let data = &buf[..n];
                        let Some(msg) = parse_lenient(data, presence_sip::TransportKind::Datagram)
                        else {
                            continue;
                        };
                        if let Message::Request(r) = &msg {
                            let c = code.load(Ordering::Relaxed);
                            if c != 0 {
                                let _ = s.send_to(&answer_for(r, c), from).await;
                            }
                            if !seen.insert(dedup_key(r)) {
                                continue; // a retransmission
                            }
                            raw.lock().unwrap().push(data.to_vec());
                        }
                        if tx.send(msg).is_err() {
                            break;
                        }
                    }
                });
                (Wire::Udp(sock), local)
            }
            Tp::Ws => {
                use futures_util::{SinkExt, StreamExt};
                use tokio_tungstenite::tungstenite::Message as WsMessage;
                let ws = tokio::time::timeout(WAIT, ws_connect(server, None))
                    .await
                    .expect("ws connect in time")
                    .expect("ws connect");
                let local = ws.get_ref().local_addr().expect("local addr");
                let (sink, mut stream) = ws.split();
                let sink = Arc::new(tokio::sync::Mutex::new(sink));
                let sink2 = sink.clone();
                let code = answer_code.clone();
                let raw = raw_requests.clone();
                let closed2 = closed.clone();
                tokio::spawn(async move {
                    while let Some(Ok(m)) = stream.next().await {
                        let data: Vec<u8> = match m {
                            WsMessage::Text(t) => t.as_bytes().to_vec(),
                            WsMessage::Binary(b) => b.to_vec(),
                            WsMessage::Close(_) => break,
                            _ => continue,
                        };
                        let Some(msg) = parse_lenient(&data, presence_sip::TransportKind::Datagram)
                        else {
                            continue;
                        };
                        if let Message::Request(r) = &msg {
                            let c = code.load(Ordering::Relaxed);
                            if c != 0 {
                                let answer = String::from_utf8_lossy(&answer_for(r, c)).to_string();
                                let _ = sink2.lock().await.send(WsMessage::text(answer)).await;
                            }
                            raw.lock().unwrap().push(data.clone());
                        }
                        if tx.send(msg).is_err() {
                            return;
                        }
                    }
                    closed2.store(true, Ordering::SeqCst);
                });
                (Wire::Ws(sink), local)
            }
            Tp::Tcp | Tp::Tls => {
                let (local, mut rd, wr): (
                    SocketAddr,
                    Box<dyn tokio::io::AsyncRead + Send + Unpin>,
                    StreamWriter,
                ) = if tp == Tp::Tls {
                    let tls = tokio::time::timeout(WAIT, tls_connect(server, &test_tls().der))
                        .await
                        .expect("tls connect in time")
                        .expect("tls connect");
                    let local = tls.get_ref().0.local_addr().expect("local addr");
                    let (r, w) = tokio::io::split(tls);
                    (local, Box::new(r), Box::new(w))
                } else {
                    let stream = tokio::time::timeout(WAIT, TcpStream::connect(server))
                        .await
                        .expect("tcp connect in time")
                        .expect("tcp connect");
                    stream.set_nodelay(true).ok();
                    let local = stream.local_addr().expect("local addr");
                    let (r, w) = stream.into_split();
                    (local, Box::new(r), Box::new(w))
                };
                let wr = Arc::new(tokio::sync::Mutex::new(wr));
                let wr2 = wr.clone();
                let code = answer_code.clone();
                let raw = raw_requests.clone();
                let closed2 = closed.clone();
                tokio::spawn(async move {
                    let mut buf: Vec<u8> = Vec::new();
                    let mut chunk = vec![0u8; 16384];
                    loop {
                        let n = match rd.read(&mut chunk).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        buf.extend_from_slice(&chunk[..n]);
                        loop {
                            match frame_stream(&buf, MAX) {
                                Ok(StreamFrame::NeedMore) => break,
                                Ok(StreamFrame::KeepAlive { len, .. }) => {
                                    buf.drain(..len);
                                }
                                Ok(StreamFrame::Message { skip, len }) => {
                                    let data: Vec<u8> =
                                        buf.drain(..skip + len).skip(skip).collect();
                                    let Some(msg) =
                                        parse_lenient(&data, presence_sip::TransportKind::Stream)
                                    else {
                                        continue;
                                    };
                                    if let Message::Request(r) = &msg {
                                        let c = code.load(Ordering::Relaxed);
                                        if c != 0 {
                                            let mut w = wr2.lock().await;
                                            let _ = w.write_all(&answer_for(r, c)).await;
                                            let _ = w.flush().await;
                                        }
                                        raw.lock().unwrap().push(data.clone());
                                    }
                                    if tx.send(msg).is_err() {
                                        return;
                                    }
                                }
                                Err(_) => {
                                    closed2.store(true, Ordering::SeqCst);
                                    return;
                                }
                            }
                        }
                    }
                    closed2.store(true, Ordering::SeqCst);
                });
                (Wire::Tcp(wr), local)
            }
        };
        Ua {
            aor: format!("sip:{user}@example.com"),
            user: user.to_string(),
            password: String::new(),
            tp,
            server,
            local,
            wire,
            rx,
            pending: VecDeque::new(),
            answer_code,
            raw_requests,
            closed,
            patience: WAIT,
            cseq: 0,
        }
    }

    pub fn next_cseq(&mut self) -> u32 {
        self.cseq += 1;
        self.cseq
    }

    /// A request from this UA to `uri` (To = uri), new Call-ID and tag.
    pub fn req(&mut self, method: &str, uri: &str) -> Req {
        let cseq = self.next_cseq();
        Req {
            method: method.to_string(),
            uri: uri.to_string(),
            from: self.aor.clone(),
            from_tag: rand_token(),
            to: uri.to_string(),
            to_tag: None,
            call_id: format!("{}@e2e", rand_token()),
            cseq,
            branch: format!("z9hG4bK{}", rand_token()),
            headers: Vec::new(),
            body: Vec::new(),
            no_call_id: false,
        }
    }

    /// This UA's contact URI (its own socket address).
    pub fn contact_uri(&self) -> String {
        match self.tp {
            Tp::Udp => format!("sip:{}@{}", self.user, self.local),
            Tp::Tcp => format!("sip:{}@{};transport=tcp", self.user, self.local),
            Tp::Tls => format!("sip:{}@{};transport=tls", self.user, self.local),
            Tp::Ws => format!("sip:{}@{};transport=ws", self.user, self.local),
        }
    }

    pub async fn send_raw(&self, bytes: &[u8]) {
        match &self.wire {
            Wire::Udp(s) => {
                s.send_to(bytes, self.server).await.expect("udp send");
            }
            Wire::Tcp(w) => {
                let mut w = w.lock().await;
                let _ = w.write_all(bytes).await;
                let _ = w.flush().await;
            }
            Wire::Ws(w) => {
                use futures_util::SinkExt;
                let text = String::from_utf8_lossy(bytes).to_string();
                let _ = w
                    .lock()
                    .await
                    .send(tokio_tungstenite::tungstenite::Message::text(text))
                    .await;
            }
        }
    }

    /// Next message of any kind that satisfies `pred`, others kept for later.
    pub async fn wait_for<F: Fn(&Message) -> bool>(
        &mut self,
        timeout: Duration,
        pred: F,
    ) -> Option<Message> {
        if let Some(i) = self.pending.iter().position(&pred) {
            return self.pending.remove(i);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(m)) => {
                    if pred(&m) {
                        return Some(m);
                    }
                    self.pending.push_back(m);
                }
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// The final response to the request whose branch is `branch`.
    pub async fn response(&mut self, branch: &str) -> Option<Response> {
        self.response_within(branch, self.patience).await
    }

    pub async fn response_within(&mut self, branch: &str, timeout: Duration) -> Option<Response> {
        let b = branch.to_string();
        let m = self
            .wait_for(timeout, move |m| match m {
                Message::Response(r) => {
                    r.code >= 200 && r.top_via().and_then(|v| v.branch).as_deref() == Some(&b)
                }
                _ => false,
            })
            .await?;
        match m {
            Message::Response(r) => Some(r),
            _ => None,
        }
    }

    /// Send `req` and wait for its final response (panics on timeout).
    pub async fn send(&mut self, req: &Req) -> Response {
        self.send_raw(&req.encode(self.tp, self.local)).await;
        match self.response(&req.branch).await {
            Some(r) => r,
            None => panic!(
                "no response to {} {} within {:?} over {:?}",
                req.method, req.uri, self.patience, self.tp
            ),
        }
    }

    /// Next incoming request with `method`, within `timeout`.
    pub async fn recv_request(&mut self, method: &str, timeout: Duration) -> Option<Request> {
        let m = method.to_string();
        let msg = self
            .wait_for(
                timeout,
                move |msg| matches!(msg, Message::Request(r) if r.method.as_str() == m),
            )
            .await?;
        match msg {
            Message::Request(r) => Some(r),
            _ => None,
        }
    }

    /// Next NOTIFY (panics if none within the UA's patience).
    pub async fn notify(&mut self) -> Request {
        let patience = self.patience;
        self.recv_request("NOTIFY", patience)
            .await
            .unwrap_or_else(|| panic!("no NOTIFY within {patience:?} over {:?}", self.tp))
    }

    /// NOTIFYs until one whose body contains `needle` (panics after `timeout`).
    pub async fn notify_containing(&mut self, needle: &str, timeout: Duration) -> Request {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(n) = self.recv_request("NOTIFY", left).await else {
                panic!(
                    "no NOTIFY containing {needle:?} within {timeout:?} over {:?}",
                    self.tp
                );
            };
            if body_str(&n).contains(needle) {
                return n;
            }
        }
    }

    /// SUBSCRIBE to `target` for presence; returns the 200 and the dialog.
    pub async fn subscribe(&mut self, target: &str, expires: u32) -> (Response, Dialog, Req) {
        let contact = format!("<{}>", self.contact_uri());
        let req = self
            .req("SUBSCRIBE", target)
            .h("Event", "presence")
            .h("Accept", "application/pidf+xml")
            .h("Contact", contact)
            .h("Expires", expires.to_string());
        let resp = self.send(&req).await;
        let dialog = Dialog {
            call_id: req.call_id.clone(),
            local_tag: req.from_tag.clone(),
            remote_tag: resp.to_addr().and_then(|t| t.tag).unwrap_or_default(),
        };
        (resp, dialog, req)
    }

    /// Send `req`; if challenged (401/407), answer the challenge with
    /// `algorithm` ("MD5" or "SHA-256") and this UA's password.
    pub async fn send_auth(&mut self, req: &Req, algorithm: &str) -> (Response, Req) {
        let first = self.send(req).await;
        if first.code != 401 && first.code != 407 {
            return (first, req.clone());
        }
        let second = authorize(&first, req, algorithm, &self.user, &self.password, None)
            .expect("a challenge with that algorithm");
        let resp = self.send(&second).await;
        (resp, second)
    }
}

pub fn body_str(m: &impl Body) -> String {
    String::from_utf8_lossy(m.body_bytes()).into_owned()
}

pub trait Body {
    fn body_bytes(&self) -> &[u8];
}
impl Body for Request {
    fn body_bytes(&self) -> &[u8] {
        &self.body
    }
}
impl Body for Response {
    fn body_bytes(&self) -> &[u8] {
        &self.body
    }
}

/// Parameters of a Digest challenge.
#[derive(Debug, Clone, Default)]
pub struct Challenge {
    pub realm: String,
    pub nonce: String,
    pub opaque: Option<String>,
    pub algorithm: String,
    pub qop: Option<String>,
    pub stale: bool,
}

pub fn parse_challenge(value: &str) -> Option<Challenge> {
    let v = value.trim();
    let (scheme, rest) = v.split_once(char::is_whitespace)?;
    if !scheme.eq_ignore_ascii_case("digest") {
        return None;
    }
    let mut c = Challenge {
        algorithm: "MD5".into(),
        ..Challenge::default()
    };
    for part in presence_sip::split_list(rest) {
        let Some((k, val)) = part.split_once('=') else {
            continue;
        };
        let val = val.trim().trim_matches('"').to_string();
        match k.trim().to_ascii_lowercase().as_str() {
            "realm" => c.realm = val,
            "nonce" => c.nonce = val,
            "opaque" => c.opaque = Some(val),
            "algorithm" => c.algorithm = val,
            "qop" => c.qop = Some(val),
            "stale" => c.stale = val.eq_ignore_ascii_case("true"),
            _ => {}
        }
    }
    Some(c)
}

/// Every challenge of a 401 (WWW-Authenticate) or 407 (Proxy-Authenticate).
pub fn challenges(resp: &Response) -> Vec<Challenge> {
    let name = if resp.code == 407 {
        "Proxy-Authenticate"
    } else {
        "WWW-Authenticate"
    };
    resp.header_all(name).filter_map(parse_challenge).collect()
}

/// The Authorization header value for `req` answering `ch`.
pub fn credentials(ch: &Challenge, req: &Req, user: &str, password: &str, uri: &str) -> String {
    let h = |s: &str| {
        if ch.algorithm.eq_ignore_ascii_case("SHA-256") {
            sha256_hex(s)
        } else {
            md5_hex(s)
        }
    };
    let cnonce = rand_token();
    let nc = "00000001";
    let ha1 = h(&format!("{user}:{}:{password}", ch.realm));
    let ha2 = h(&format!("{}:{uri}", req.method));
    let response = h(&format!("{ha1}:{}:{nc}:{cnonce}:auth:{ha2}", ch.nonce));
    let mut v = format!(
        "Digest username=\"{user}\", realm=\"{}\", nonce=\"{}\", uri=\"{uri}\", response=\"{response}\", algorithm={}, cnonce=\"{cnonce}\", qop=auth, nc={nc}",
        ch.realm, ch.nonce, ch.algorithm
    );
    if let Some(o) = &ch.opaque {
        v += &format!(", opaque=\"{o}\"");
    }
    v
}

/// `req` again (next CSeq, new branch) with credentials for `algorithm`;
/// `uri` overrides the digest uri (default: the Request-URI).
pub fn authorize(
    challenge_resp: &Response,
    req: &Req,
    algorithm: &str,
    user: &str,
    password: &str,
    uri: Option<&str>,
) -> Option<Req> {
    let ch = challenges(challenge_resp)
        .into_iter()
        .find(|c| c.algorithm.eq_ignore_ascii_case(algorithm))?;
    let header = if challenge_resp.code == 407 {
        "Proxy-Authorization"
    } else {
        "Authorization"
    };
    let value = credentials(&ch, req, user, password, uri.unwrap_or(&req.uri));
    Some(req.next().h(header, value))
}

/// A raw HTTP/1.1 request; returns (status code, body).
pub async fn http(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let fut = async {
        let mut s = TcpStream::connect(addr).await.expect("http connect");
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/pidf+xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await.expect("http write");
        s.write_all(body).await.expect("http write");
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.expect("http read");
        out
    };
    let out = tokio::time::timeout(WAIT, fut).await.expect("http in time");
    let text = String::from_utf8_lossy(&out).into_owned();
    let code: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("http status");
    let body = match out.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => out[i + 4..].to_vec(),
        None => Vec::new(),
    };
    (code, body)
}

/// The Call-ID the test UA files a response under when the server answered
/// without one (a 400 to a request that had none).
pub const MISSING_CALL_ID: &str = "missing-in-response";

/// Parse what the server sent. presence-sip drops responses without Call-ID
/// (a UA cannot match them to a dialog); the test UA still wants to see the
/// 400 the server sends to a request that lacked one, so such a response is
/// read with `Call-ID: MISSING_CALL_ID` put in.
fn parse_lenient(data: &[u8], kind: presence_sip::TransportKind) -> Option<Message> {
    if let Ok(m) = parse(data, kind, MAX) {
        return Some(m);
    }
    let line_end = data.windows(2).position(|w| w == b"\r\n")?;
    if !data.starts_with(b"SIP/2.0 ") {
        return None;
    }
    let mut patched = data[..line_end + 2].to_vec();
    patched.extend_from_slice(format!("Call-ID: {MISSING_CALL_ID}\r\n").as_bytes());
    patched.extend_from_slice(&data[line_end + 2..]);
    parse(&patched, kind, MAX).ok()
}

/// Presence end to end through the server at `at` over UDP: bob watches
/// alice, alice publishes `note`, bob's NOTIFY carries it. Each step may
/// take `patience` (a cluster of separate processes warming up).
pub async fn watcher_sees_a_publish(at: SocketAddr, note: &str, patience: Duration) {
    let mut bob = Ua::new(Tp::Udp, at, "bob").await;
    bob.patience = patience;
    let (r, _, _) = bob.subscribe("sip:alice@example.com", 600).await;
    assert_eq!(r.code, 200, "{}", r.reason);
    let _first = bob.notify().await;
    let mut alice = Ua::new(Tp::Udp, at, "alice").await;
    alice.patience = patience;
    assert_eq!(publish_note(&mut alice, note).await.code, 200);
    let n = bob.notify_containing(note, patience).await;
    assert!(String::from_utf8_lossy(&n.body).contains(note));
}

/// alice (the [`Ua`] of user alice) publishes one open tuple with `note`
/// for 600 s; the answer.
pub async fn publish_note(alice: &mut Ua, note: &str) -> Response {
    let publish = alice
        .req("PUBLISH", "sip:alice@example.com")
        .h("Event", "presence")
        .h("Expires", "600")
        .body(
            "application/pidf+xml",
            pidf("sip:alice@example.com", "t1", true, note),
        );
    alice.send(&publish).await
}

/// A PIDF document with one tuple.
pub fn pidf(entity: &str, tuple: &str, open: bool, note: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="{entity}"><tuple id="{tuple}"><status><basic>{}</basic></status></tuple><note>{note}</note></presence>"#,
        if open { "open" } else { "closed" }
    )
}

//! The edge role: SIP sockets (UDP and TCP on the same port), framing,
//! parsing, non-INVITE server transactions (retransmissions absorbed and
//! answered from the table), client transactions for our NOTIFY and MESSAGE
//! (Timer E/F over UDP, 32 s timeout), the flow table for TCP, Digest
//! authentication, and the mapping SIP ⇄ typed commands for the shard owner.
//! It keeps no presence state: killing it loses only in-flight transactions.

use crate::compositor::{new_tag, shard_subject};
use crate::metrics::{method_label, status_class, Metrics};
use crate::Clock;
use bytes::Bytes;
use presence_core::commands::{
    Command, ContactSpec, Origin, PublishCmd, Refusal, RegisterAction, RegisterCmd, Reply,
    SubscribeCmd,
};
use presence_core::digest::{Client, Credentials, Verdict, Verifier};
use presence_core::packages::Registry;
use presence_core::{canonical_aor, shard_of, Binding, Flow, Transport};
use presence_sip::{
    encode_request, frame_stream, parse, rsip, ContactValue, FrameError, HeaderAccess, Message,
    Method, ParseError, Request, Response, ResponseBuilder, StreamFrame, TransportKind,
};
use presence_store::{Incoming, Requests};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::guard::{EdgeLimits, SourceGuard};

const ALLOW: &str = "REGISTER, PUBLISH, SUBSCRIBE, NOTIFY, MESSAGE, OPTIONS";
const T1: Duration = Duration::from_millis(500);
const T2: Duration = Duration::from_secs(4);
const TIMER_F: Duration = Duration::from_secs(32);
const TIMER_J: Duration = Duration::from_secs(32);
/// How long one request to a shard owner may take before it is sent again.
const ASK_ATTEMPT: Duration = Duration::from_secs(4);
/// How long the edge tries a shard owner for one SIP request before it
/// answers 503: well inside the UA's 32 s transaction.
const ASK_BUDGET: Duration = Duration::from_secs(10);

pub use presence_core::commands::{OutRequest, Outcome};

/// A SUBSCRIBE being answered: removes its entry from `Edge::answering` and
/// releases the held NOTIFYs when dropped.
struct Answering<'a> {
    edge: &'a Edge,
    call_id: String,
    _done: watch::Sender<()>,
}

impl Drop for Answering<'_> {
    fn drop(&mut self) {
        self.edge
            .answering
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.call_id);
    }
}

/// The NOTIFYs of one dialog that pass through this edge: they leave one at
/// a time and in CSeq order, whichever notifier numbered them. A NOTIFY whose
/// CSeq is not above the last one sent, or below one already waiting, is
/// superseded (its CSeq was taken for an older or equal document) and not
/// sent. Kept for [`DIALOG_MEMORY`] after the last NOTIFY, so a late older
/// one is still recognised. Small on purpose (an edge may carry a million
/// dialogs): the key is a 128-bit hash, the wake-up channel exists only
/// while a NOTIFY waits.
struct DialogOut {
    /// Highest CSeq sent (or being sent).
    sent: u32,
    /// Highest CSeq waiting for the one in flight.
    waiting: u32,
    busy: bool,
    /// Bumped whenever the NOTIFY in flight completes; waiters watch it.
    turn: Option<watch::Sender<u64>>,
    last_used: Instant,
    /// The final code of the NOTIFY in flight (CSeq `sent`), for a re-send
    /// of the same NOTIFY to wait for instead of starting a second
    /// transaction; `Some(0)` when it got no answer.
    outcome: Option<watch::Sender<Option<u16>>>,
    /// CSeq and final code (0: none came) of the last NOTIFY answered.
    answered: (u32, u16),
}

/// What a NOTIFY arriving at its dialog does (see [`DialogOut`]).
enum DialogStep<'a> {
    /// Its turn: send it.
    Go(DialogTurn<'a>),
    /// The same NOTIFY (same CSeq) is in flight: a re-send of it, which
    /// waits for that transaction's code.
    Join(watch::Receiver<Option<u16>>),
    /// The same NOTIFY was answered already: its code (0: none came).
    Answered(u16),
    /// A higher CSeq was sent or waits: not sent.
    Superseded,
}

/// How long the edge remembers a dialog's last NOTIFY CSeq after it was
/// answered: longer than a NOTIFY numbered by a notifier takes to get here.
const DIALOG_MEMORY: Duration = Duration::from_secs(40);

/// What the edge reads of a NOTIFY's dialog, in one pass over its headers.
struct NotifyDialog<'a> {
    call_id: Option<&'a str>,
    /// Written the same way on every NOTIFY of a subscription (our tag is
    /// the subscription's id): no need to parse it.
    from: &'a str,
    cseq: Option<u32>,
}

fn notify_dialog(headers: &rsip::Headers) -> NotifyDialog<'_> {
    let mut d = NotifyDialog {
        call_id: None,
        from: "",
        cseq: None,
    };
    for h in headers.iter() {
        let name = h.name();
        if name.eq_ignore_ascii_case("Call-ID") {
            d.call_id = Some(h.value().trim());
        } else if name.eq_ignore_ascii_case("From") {
            d.from = h.value().trim();
        } else if name.eq_ignore_ascii_case("CSeq") {
            d.cseq = h
                .value()
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok());
        }
    }
    d
}

/// A dialog's key in the table: two independent 64-bit hashes of its
/// Call-ID and From (a collision of both is beyond any real table size).
fn dialog_key(call_id: &str, from: &str) -> u128 {
    use std::hash::{Hash, Hasher};
    let half = |salt: u8| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (salt, call_id, from).hash(&mut h);
        h.finish()
    };
    (u128::from(half(0)) << 64) | u128::from(half(1))
}

/// The turn of one NOTIFY on its dialog; ending it lets the next one go,
/// and tells re-sends of it the final code (`code`, 0 while none came).
struct DialogTurn<'a> {
    edge: &'a Edge,
    key: u128,
    code: u16,
}

impl Drop for DialogTurn<'_> {
    fn drop(&mut self) {
        let mut d = self.edge.dialogs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = d.get_mut(&self.key) {
            e.busy = false;
            e.last_used = Instant::now();
            e.answered = (e.sent, self.code);
            if let Some(o) = e.outcome.take() {
                let _ = o.send(Some(self.code));
            }
            if let Some(turn) = &e.turn {
                if turn.receiver_count() == 0 {
                    e.turn = None;
                } else {
                    turn.send_modify(|n| *n += 1);
                }
            }
        }
    }
}

/// A client transaction waiting for its final response.
struct Waiter {
    tx: oneshot::Sender<Response>,
    /// Whether the caller reads more of the response than its code (a relayed
    /// MESSAGE hands the whole answer back); a NOTIFY only needs the code.
    whole: bool,
}

pub struct EdgeConfig {
    pub id: String,
    pub domains: Vec<String>,
    pub verifier: Option<Verifier>,
    pub min_expires: u32,
    pub max_expires: u32,
    pub max_message: usize,
    pub shards: u32,
    pub packages: Registry,
    /// Test-only: see `config::Faults::delay_subscribe_answer_ms`.
    pub delay_subscribe_answer: Duration,
    /// What one source may cost (rates, connections, amplification).
    pub limits: EdgeLimits,
}

#[derive(Debug, Clone, Copy)]
struct Source {
    transport: Transport,
    remote: SocketAddr,
    local: SocketAddr,
    conn: u64,
}

struct Conn {
    tx: mpsc::Sender<Bytes>,
    /// Tells the reader to close the connection (its writer gave up).
    close: Arc<tokio::sync::Notify>,
}

/// The largest answer kept for retransmissions; a larger one is not kept,
/// and a retransmission of its request is handled again (the shard owner
/// answers a re-sent command from memory), so the table's memory stays
/// bounded by its entry count times this.
const MAX_CACHED_ANSWER: usize = 8 * 1024;

/// At most this many forks of one MESSAGE (after merging contacts that
/// share a flow: one device, one copy).
const MAX_FORKS: usize = 10;

#[derive(Default)]
struct TxnTable {
    entries: HashMap<String, Option<Bytes>>,
    /// One queue per keep time ([`Keep`]), so each stays in deadline order
    /// and the sweep can stop at its first entry not yet due.
    expiry: [VecDeque<(Instant, String)>; 3],
}

/// How long a server transaction's entry is kept.
#[derive(Clone, Copy)]
enum Keep {
    /// While its request is handled: a guard, so that an entry whose handler
    /// dies still goes away.
    Guard,
    /// After the answer over UDP: Timer J, retransmissions are answered.
    Udp,
    /// After the answer over TCP: briefly (no retransmissions on TCP).
    Tcp,
}

impl Keep {
    fn duration(self) -> Duration {
        match self {
            Keep::Guard => TIMER_F + TIMER_J,
            Keep::Udp => TIMER_J,
            Keep::Tcp => Duration::from_secs(1),
        }
    }
}

impl TxnTable {
    fn expire_in(&mut self, keep: Keep, key: String) {
        self.expiry[keep as usize].push_back((Instant::now() + keep.duration(), key));
    }

    fn sweep(&mut self, now: Instant) {
        for queue in &mut self.expiry {
            while queue.front().is_some_and(|(deadline, _)| *deadline <= now) {
                if let Some((_, key)) = queue.pop_front() {
                    self.entries.remove(&key);
                }
            }
        }
    }
}

pub struct Edge {
    cfg: EdgeConfig,
    bus: Arc<dyn Requests<Command, Reply>>,
    clock: Clock,
    metrics: Arc<Metrics>,
    udp: Vec<(SocketAddr, Arc<UdpSocket>)>,
    conns: Mutex<HashMap<u64, Conn>>,
    by_remote: Mutex<HashMap<SocketAddr, u64>>,
    next_conn: AtomicU64,
    server_txns: Mutex<TxnTable>,
    client_txns: Mutex<HashMap<String, Waiter>>,
    /// SUBSCRIBEs being answered, by Call-ID: a NOTIFY of that dialog waits
    /// until the answer is out, so the 2xx reaches the subscriber first (RFC
    /// 6665 §4.1.2.4 makes subscribers cope with the other order; few do it well).
    answering: Mutex<HashMap<String, watch::Receiver<()>>>,
    /// NOTIFY order per dialog (Call-ID and our tag), see [`DialogOut`].
    dialogs: Mutex<HashMap<u128, DialogOut>>,
    /// The bus to the other edges (set by [`Edge::run`]): a relayed MESSAGE
    /// whose target's flow is on another edge goes out through that edge.
    out_bus: std::sync::OnceLock<Arc<dyn Requests<OutRequest, Outcome>>>,
    /// Per-source rates, connections and UDP amplification budgets.
    guard: Mutex<SourceGuard>,
    /// Requests being handled: a permit each.
    inflight: Arc<tokio::sync::Semaphore>,
    /// Lame duck: still serving, but OPTIONS answers 503 so that SIP load
    /// balancers take this node out.
    draining: std::sync::atomic::AtomicBool,
}

/// Bound sockets, so that bind errors surface before anything runs.
pub struct Listeners {
    pub udp: Vec<(SocketAddr, Arc<UdpSocket>)>,
    pub tcp: Vec<(SocketAddr, TcpListener)>,
}

impl Listeners {
    pub async fn bind(addrs: &[SocketAddr]) -> std::io::Result<Listeners> {
        let mut l = Listeners {
            udp: Vec::new(),
            tcp: Vec::new(),
        };
        for addr in addrs {
            let tcp = TcpListener::bind(addr).await?;
            let actual = tcp.local_addr()?;
            let udp = bind_udp(actual)?;
            l.udp.push((actual, Arc::new(udp)));
            l.tcp.push((actual, tcp));
        }
        Ok(l)
    }
}

/// Socket buffer asked for on UDP listeners. The kernel's default (~200 KiB)
/// overflows within a few milliseconds of a scheduling hiccup at 10k+
/// datagrams/s; the kernel caps the request at `net.core.rmem_max`.
const UDP_BUFFER: usize = 4 << 20;

fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let std_sock = std::net::UdpSocket::bind(addr)?;
    let sock = socket2::Socket::from(std_sock);
    if let Err(e) = sock.set_recv_buffer_size(UDP_BUFFER) {
        tracing::warn!(error = %e, "cannot enlarge the UDP receive buffer");
    }
    if let Err(e) = sock.set_send_buffer_size(UDP_BUFFER) {
        tracing::warn!(error = %e, "cannot enlarge the UDP send buffer");
    }
    sock.set_nonblocking(true)?;
    UdpSocket::from_std(sock.into())
}

impl Edge {
    pub fn new(
        cfg: EdgeConfig,
        bus: Arc<dyn Requests<Command, Reply>>,
        clock: Clock,
        metrics: Arc<Metrics>,
        udp: Vec<(SocketAddr, Arc<UdpSocket>)>,
    ) -> Edge {
        let cfg_limits = cfg.limits;
        Edge {
            cfg,
            bus,
            clock,
            metrics,
            udp,
            conns: Mutex::new(HashMap::new()),
            by_remote: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            server_txns: Mutex::new(TxnTable::default()),
            client_txns: Mutex::new(HashMap::new()),
            answering: Mutex::new(HashMap::new()),
            dialogs: Mutex::new(HashMap::new()),
            out_bus: std::sync::OnceLock::new(),
            guard: Mutex::new(SourceGuard::new(cfg_limits)),
            inflight: Arc::new(tokio::sync::Semaphore::new(cfg_limits.max_inflight.max(1))),
            draining: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Go lame duck: OPTIONS gets 503 from now on, everything else is
    /// still served (see `Server::shutdown`).
    pub fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Wait until no request is being handled, at most `grace`.
    pub async fn finish_inflight(&self, grace: Duration) {
        let all = self.cfg.limits.max_inflight.max(1) as u32;
        let _ = tokio::time::timeout(grace, self.inflight.acquire_many(all)).await;
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, SourceGuard> {
        self.guard.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn drop_counted(&self, reason: &str) {
        self.metrics.edge_dropped.with_label_values(&[reason]).inc();
    }

    /// Run the sockets and serve `edge.<id>` until shutdown.
    pub async fn run(
        self: Arc<Self>,
        tcp: Vec<(SocketAddr, TcpListener)>,
        out_bus: Arc<dyn Requests<OutRequest, Outcome>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut tasks = Vec::new();
        for (local, sock) in self.udp.clone() {
            let me = self.clone();
            tasks.push(tokio::spawn(async move { me.udp_loop(local, sock).await }));
        }
        for (local, listener) in tcp {
            let me = self.clone();
            tasks.push(tokio::spawn(async move {
                me.accept_loop(local, listener).await
            }));
        }
        let _ = self.out_bus.set(out_bus.clone());
        let (tx, mut rx) = mpsc::channel::<Incoming<OutRequest, Outcome>>(8192);
        let subject = crate::notifier::edge_subject(&self.cfg.id);
        for s in [subject.as_str(), crate::notifier::ANY_EDGE] {
            if let Err(e) = out_bus.serve(s, tx.clone()).await {
                tracing::error!(subject = s, error = %e, "cannot serve an edge subject");
            }
        }
        drop(tx);
        let me = self.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(inc) = rx.recv().await {
                let me = me.clone();
                tokio::spawn(async move {
                    let (request, replier) = inc.into_parts();
                    replier.reply(me.send_request(request).await);
                });
            }
        }));
        let mut sweep = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = sweep.tick() => self.sweep_transactions(),
                _ = shutdown.changed() => break,
            }
        }
        let _ = out_bus.unserve(&subject).await;
        let _ = out_bus.unserve(crate::notifier::ANY_EDGE).await;
        for t in tasks {
            t.abort();
        }
    }

    fn sweep_transactions(&self) {
        let now = Instant::now();
        self.dialogs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, d| {
                d.busy
                    || d.turn.as_ref().is_some_and(|t| t.receiver_count() > 0)
                    || now.saturating_duration_since(d.last_used) < DIALOG_MEMORY
            });
        self.server_txns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .sweep(now);
        self.guard().sweep(now);
    }

    async fn udp_loop(self: Arc<Self>, local: SocketAddr, sock: Arc<UdpSocket>) {
        let mut buf = vec![0u8; 65536];
        loop {
            let (n, remote) = match sock.recv_from(&mut buf).await {
                Ok(x) => x,
                Err(e) => {
                    // ICMP errors surface here on some systems; keep serving.
                    tracing::debug!(error = %e, "udp receive error");
                    continue;
                }
            };
            if n <= 4
                && buf[..n]
                    .iter()
                    .all(|b| *b == b'\r' || *b == b'\n' || *b == 0)
            {
                continue; // keep-alive
            }
            let now = Instant::now();
            self.guard().received(remote, n, now);
            // Answers to our NOTIFYs are done with here, without a task.
            if let Some(peek) = presence_sip::peek_response(&buf[..n]) {
                if self.complete_peeked(peek, Some(remote)) {
                    continue;
                }
            } else if !self.guard().admit_request(remote.ip(), now) {
                // Over its rate: dropped (answering a forged source would
                // serve the forger); a real UA retransmits.
                self.drop_counted("rate_limited");
                continue;
            }
            let Ok(permit) = self.inflight.clone().try_acquire_owned() else {
                self.drop_counted("overload");
                continue;
            };
            let src = Source {
                transport: Transport::Udp,
                remote,
                local,
                conn: 0,
            };
            let data = Bytes::copy_from_slice(&buf[..n]);
            let me = self.clone();
            tokio::spawn(async move {
                me.on_message(&data, src, TransportKind::Datagram).await;
                drop(permit);
            });
        }
    }

    async fn accept_loop(self: Arc<Self>, local: SocketAddr, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok((stream, remote)) => {
                    if let Err(why) = self.guard().open_connection(remote.ip()) {
                        tracing::debug!(%remote, ?why, "connection refused by limits");
                        self.drop_counted("connection_limit");
                        continue; // dropped: closed at once
                    }
                    let _ = stream.set_nodelay(true);
                    self.clone().spawn_conn(stream, local, remote);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "tcp accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn spawn_conn(
        self: Arc<Self>,
        stream: TcpStream,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> u64 {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::channel::<Bytes>(self.cfg.limits.write_queue.max(1));
        let close = Arc::new(tokio::sync::Notify::new());
        self.conns.lock().unwrap_or_else(|e| e.into_inner()).insert(
            id,
            Conn {
                tx,
                close: close.clone(),
            },
        );
        self.by_remote
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(remote, id);
        self.metrics.edge_tcp_connections.inc();
        let (mut rd, mut wr) = stream.into_split();
        tokio::spawn(async move {
            while let Some(b) = rx.recv().await {
                if wr.write_all(&b).await.is_err() {
                    break;
                }
            }
        });
        let me = self.clone();
        tokio::spawn(async move {
            let src = Source {
                transport: Transport::Tcp,
                remote,
                local,
                conn: id,
            };
            let mut buf: Vec<u8> = Vec::with_capacity(8192);
            let mut chunk = vec![0u8; 16384];
            let limits = me.cfg.limits;
            // The first message, and every message once begun, must arrive
            // whole within the header timeout; between messages the
            // connection may idle for the idle timeout.
            let mut partial_since = Some(Instant::now());
            let mut last_message = Instant::now();
            'read: loop {
                let deadline = match partial_since {
                    Some(t) => t + limits.header_timeout,
                    None => last_message + limits.idle_timeout,
                };
                let n = tokio::select! {
                    r = tokio::time::timeout_at(deadline, rd.read(&mut chunk)) => match r {
                        Ok(Ok(0)) | Ok(Err(_)) => break,
                        Ok(Ok(n)) => n,
                        Err(_) => {
                            me.drop_counted(if partial_since.is_some() {
                                "header_timeout"
                            } else {
                                "idle_timeout"
                            });
                            break;
                        }
                    },
                    _ = close.notified() => break,
                };
                if buf.is_empty() && partial_since.is_none() {
                    partial_since = Some(Instant::now());
                }
                buf.extend_from_slice(&chunk[..n]);
                loop {
                    match frame_stream(&buf, me.cfg.max_message) {
                        Ok(StreamFrame::NeedMore) => break,
                        Ok(StreamFrame::KeepAlive { len, ping }) => {
                            buf.drain(..len);
                            last_message = Instant::now();
                            if buf.is_empty() {
                                partial_since = None;
                            }
                            if ping {
                                me.send_conn(id, Bytes::from_static(b"\r\n"));
                            }
                        }
                        Ok(StreamFrame::Message { skip, len }) => {
                            let msg: Vec<u8> = buf.drain(..skip + len).skip(skip).collect();
                            let now = Instant::now();
                            last_message = now;
                            partial_since = (!buf.is_empty()).then_some(now);
                            me.on_stream_frame(msg, src);
                        }
                        Err(e) => {
                            // Cannot find the next message: answer what we can and close.
                            let status = if matches!(e, FrameError::TooLarge(_)) {
                                413
                            } else {
                                400
                            };
                            me.metrics
                                .edge_dropped
                                .with_label_values(&["tcp_framing"])
                                .inc();
                            if let Some(end) = presence_sip::frame::header_end(&buf) {
                                // Only the head is here, so a body the head
                                // announces is missing: parsing fails with
                                // "Content-Length Larger Than Body" but still
                                // yields the headers to answer with. The
                                // framing error, not that, is the answer.
                                let headers =
                                    match parse(&buf[..end], TransportKind::Datagram, usize::MAX) {
                                        Ok(Message::Request(r)) => Some(r.headers),
                                        Ok(Message::Response(_)) => None,
                                        Err(pe) => pe.answer.map(|h| *h),
                                    };
                                if let Some(headers) = headers {
                                    let reason = if status == 413 {
                                        "Request Entity Too Large"
                                    } else {
                                        "Bad Content-Length"
                                    };
                                    let b = ResponseBuilder::new(
                                        &headers,
                                        status,
                                        reason,
                                        Some(&new_tag()),
                                        Some(remote),
                                    );
                                    me.send_src(src, Bytes::from(b.encode()));
                                }
                            }
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            break 'read;
                        }
                    }
                }
            }
            me.conns
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            let mut br = me.by_remote.lock().unwrap_or_else(|e| e.into_inner());
            if br.get(&remote) == Some(&id) {
                br.remove(&remote);
            }
            me.metrics.edge_tcp_connections.dec();
            me.guard().close_connection(remote.ip());
        });
        id
    }

    /// One framed message from a stream: answers to our requests at once,
    /// requests within the source's rate and the in-flight bound on a task
    /// of their own; over either bound, 503 with Retry-After (a TCP source
    /// is not forged, and has no retransmission to fall back on).
    fn on_stream_frame(self: &Arc<Self>, msg: Vec<u8>, src: Source) {
        if let Some(peek) = presence_sip::peek_response(&msg) {
            if self.complete_peeked(peek, None) {
                return;
            }
        }
        let admitted = self.guard().admit_request(src.remote.ip(), Instant::now());
        let permit = if admitted {
            self.inflight.clone().try_acquire_owned().ok()
        } else {
            None
        };
        let Some(permit) = permit else {
            self.drop_counted(if admitted { "overload" } else { "rate_limited" });
            if let Ok(Message::Request(req)) =
                parse(&msg, TransportKind::Stream, self.cfg.max_message)
            {
                let b = self
                    .reply(&req, src, 503, "Service Unavailable")
                    .header("Retry-After", crate::answers::RETRY_AFTER_SECS.to_string());
                self.send_src(src, Bytes::from(b.encode()));
            }
            return;
        };
        let me = self.clone();
        tokio::spawn(async move {
            me.on_message(&msg, src, TransportKind::Stream).await;
            drop(permit);
        });
    }

    /// Queue `bytes` on connection `id`. A connection whose writer queue is
    /// full (its reader does not read) is closed and counted.
    fn send_conn(&self, id: u64, bytes: Bytes) -> bool {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        let Some(c) = conns.get(&id) else {
            return false;
        };
        match c.tx.try_send(bytes) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                if let Some(c) = conns.remove(&id) {
                    c.close.notify_one();
                }
                drop(conns);
                self.drop_counted("write_queue_full");
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    fn udp_socket(&self, local: SocketAddr) -> Option<Arc<UdpSocket>> {
        self.udp
            .iter()
            .find(|(a, _)| *a == local)
            .or_else(|| {
                self.udp
                    .iter()
                    .find(|(a, _)| a.is_ipv4() == local.is_ipv4())
            })
            .or(self.udp.first())
            .map(|(_, s)| s.clone())
    }

    fn send_src(&self, src: Source, bytes: Bytes) {
        match src.transport {
            Transport::Udp => {
                if let Some(sock) = self.udp_socket(src.local) {
                    match sock.try_send_to(&bytes, src.remote) {
                        Ok(_) => {}
                        // Not known writable yet (a fresh socket) or its
                        // buffer is full: wait for it, briefly, off this path.
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            let metrics = self.metrics.clone();
                            tokio::spawn(async move {
                                if !udp_send(&sock, &bytes, src.remote).await {
                                    metrics
                                        .edge_dropped
                                        .with_label_values(&["send_failed"])
                                        .inc();
                                }
                            });
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "udp send failed");
                            self.drop_counted("send_failed");
                        }
                    }
                }
            }
            Transport::Tcp => {
                if !self.send_conn(src.conn, bytes) {
                    self.metrics
                        .edge_dropped
                        .with_label_values(&["send_failed"])
                        .inc();
                }
            }
        }
    }

    fn answer_parse_error(&self, e: &ParseError, src: Source) {
        match &e.answer {
            Some(headers) => {
                self.metrics
                    .edge_dropped
                    .with_label_values(&["bad_request_answered"])
                    .inc();
                let b = ResponseBuilder::new(
                    headers,
                    e.status,
                    &e.reason,
                    Some(&new_tag()),
                    Some(src.remote),
                );
                self.send_src(src, Bytes::from(b.encode()));
            }
            None => {
                self.metrics
                    .edge_dropped
                    .with_label_values(&["unparseable"])
                    .inc();
            }
        }
    }

    /// Most responses answer our NOTIFYs: a peek at the code and branch is
    /// enough for them. `true` when the response was dealt with here; `false`
    /// when its transaction wants the whole message (run the parser).
    /// `from`: the UDP address it came from, which has now shown it can
    /// receive what we send it.
    fn complete_peeked(
        &self,
        peek: presence_sip::ResponsePeek<'_>,
        from: Option<SocketAddr>,
    ) -> bool {
        if peek.code < 200 {
            return true;
        }
        let mut txns = self.client_txns.lock().unwrap_or_else(|e| e.into_inner());
        let known = txns.get(peek.branch).map(|w| w.whole);
        if known.is_some() {
            if let Some(from) = from {
                self.guard().proven(from, Instant::now());
            }
        }
        match known {
            Some(false) => {
                if let Some(w) = txns.remove(peek.branch) {
                    drop(txns);
                    let _ = w.tx.send(Response {
                        code: peek.code,
                        reason: String::new(),
                        headers: rsip::Headers::default(),
                        body: Bytes::new(),
                    });
                }
                true
            }
            Some(true) => false,
            None => {
                drop(txns);
                self.metrics
                    .edge_dropped
                    .with_label_values(&["stray_response"])
                    .inc();
                true
            }
        }
    }

    async fn on_message(self: &Arc<Self>, data: &[u8], src: Source, kind: TransportKind) {
        // Answers were peeked on the UDP loop or in `on_stream_frame`.
        let msg = match parse(data, kind, self.cfg.max_message) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(remote = %src.remote, error = %e, "refused message");
                self.answer_parse_error(&e, src);
                return;
            }
        };
        match msg {
            Message::Response(resp) => {
                if src.transport == Transport::Udp {
                    self.guard().proven(src.remote, Instant::now());
                }
                self.on_response(resp)
            }
            Message::Request(req) => self.on_request(req, src).await,
        }
    }

    fn on_response(&self, resp: Response) {
        if resp.code < 200 {
            return;
        }
        let Some(branch) = resp.top_via().and_then(|v| v.branch) else {
            self.metrics
                .edge_dropped
                .with_label_values(&["stray_response"])
                .inc();
            return;
        };
        let waiter = self
            .client_txns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&branch);
        match waiter {
            Some(w) => {
                let _ = w.tx.send(resp);
            }
            None => {
                self.metrics
                    .edge_dropped
                    .with_label_values(&["stray_response"])
                    .inc();
            }
        }
    }

    async fn on_request(self: &Arc<Self>, req: Request, src: Source) {
        let method = req.method.as_str();
        self.metrics
            .edge_requests
            .with_label_values(&[method_label(method)])
            .inc();
        if req.method.is(rsip::Method::Ack) {
            return; // no INVITE transactions here: nothing to acknowledge
        }
        let started = Instant::now();
        let key = req.transaction_key();
        if let Some(key) = &key {
            let mut t = self.server_txns.lock().unwrap_or_else(|e| e.into_inner());
            match t.entries.get(key) {
                Some(Some(resp)) => {
                    let resp = resp.clone();
                    drop(t);
                    self.metrics.edge_retransmissions.inc();
                    self.send_src(src, resp);
                    return;
                }
                Some(None) => {
                    self.metrics.edge_retransmissions.inc();
                    return; // still working on it
                }
                None => {
                    t.entries.insert(key.clone(), None);
                    t.expire_in(Keep::Guard, key.clone());
                }
            }
        }
        // Held while the SUBSCRIBE is handled; dropping it (also on an early
        // return or a panic) releases the dialog's NOTIFYs.
        let answering = match (req.method.is(rsip::Method::Subscribe), req.call_id()) {
            (true, Some(call_id)) => {
                let (tx, rx) = watch::channel(());
                self.answering
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(call_id.to_string(), rx);
                Some(Answering {
                    edge: self,
                    call_id: call_id.to_string(),
                    _done: tx,
                })
            }
            _ => None,
        };
        let resp = self.handle(&req, src).await;
        if answering.is_some() && !self.cfg.delay_subscribe_answer.is_zero() {
            tokio::time::sleep(self.cfg.delay_subscribe_answer).await;
        }
        let code = resp.code();
        let bytes = Bytes::from(resp.encode());
        if let Some(key) = key {
            let mut t = self.server_txns.lock().unwrap_or_else(|e| e.into_inner());
            let keep = match src.transport {
                Transport::Udp => Keep::Udp,
                Transport::Tcp => Keep::Tcp,
            };
            if bytes.len() <= MAX_CACHED_ANSWER {
                t.entries.insert(key.clone(), Some(bytes.clone()));
                t.expire_in(keep, key);
            } else {
                t.entries.remove(&key);
            }
        }
        self.send_src(src, bytes);
        drop(answering);
        let label = method_label(method);
        self.metrics
            .edge_responses
            .with_label_values(&[label, status_class(code)])
            .inc();
        self.metrics
            .edge_transaction_seconds
            .with_label_values(&[label])
            .observe(started.elapsed().as_secs_f64());
    }

    fn reply(&self, req: &Request, src: Source, code: u16, reason: &str) -> ResponseBuilder {
        ResponseBuilder::new(
            &req.headers,
            code,
            reason,
            Some(&new_tag()),
            Some(src.remote),
        )
    }

    fn is_local(&self, domain: &str) -> bool {
        self.cfg
            .domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(domain))
    }

    fn contact_header(&self, src: Source) -> String {
        let host = src.local;
        match src.transport {
            Transport::Udp => format!("<sip:{host}>"),
            Transport::Tcp => format!("<sip:{host};transport=tcp>"),
        }
    }

    fn flow(&self, src: Source) -> Flow {
        Flow {
            transport: src.transport,
            remote: src.remote,
            local: src.local,
            edge: self.cfg.id.clone(),
            conn: src.conn,
        }
    }

    async fn handle(self: &Arc<Self>, req: &Request, src: Source) -> ResponseBuilder {
        // Require / Proxy-Require: we support no extensions (RFC 3261 §8.2.2.3).
        let required: Vec<String> = req.list("Require");
        if !required.is_empty() && !req.method.is(rsip::Method::Cancel) {
            return self
                .reply(req, src, 420, "Bad Extension")
                .header("Unsupported", required.join(", "));
        }
        let method = match &req.method {
            Method::Known(m) => *m,
            Method::Extension(_) => {
                return self
                    .reply(req, src, 501, "Not Implemented")
                    .header("Allow", ALLOW);
            }
        };
        match method {
            rsip::Method::Options if self.draining.load(Ordering::SeqCst) => self
                .reply(req, src, 503, "Service Unavailable (Draining)")
                .header("Retry-After", crate::answers::RETRY_AFTER_SECS.to_string()),
            rsip::Method::Options => self
                .reply(req, src, 200, "OK")
                .header("Allow", ALLOW)
                .header("Allow-Events", self.cfg.packages.allow_events())
                .header(
                    "Accept",
                    "application/pidf+xml, application/cpim-pidf+xml, text/plain, message/cpim",
                )
                .header("Supported", ""),
            rsip::Method::Register
            | rsip::Method::Publish
            | rsip::Method::Subscribe
            | rsip::Method::Message => {
                let identity = match self.authenticate(req, src, method) {
                    Ok(id) => id,
                    Err(resp) => return *resp,
                };
                match method {
                    rsip::Method::Register => self.register(req, src, identity).await,
                    rsip::Method::Publish => self.publish(req, src, identity).await,
                    rsip::Method::Subscribe => self.subscribe(req, src, identity).await,
                    _ => self.message(req, src, identity).await,
                }
            }
            rsip::Method::Notify => self.reply(req, src, 481, "Subscription Does Not Exist"),
            rsip::Method::Cancel => self.reply(req, src, 481, "Call/Transaction Does Not Exist"),
            _ => self
                .reply(req, src, 405, "Method Not Allowed")
                .header("Allow", ALLOW),
        }
    }

    /// `Ok(Some(aor))` authenticated, `Ok(None)` auth disabled, `Err` the challenge or refusal.
    fn authenticate(
        &self,
        req: &Request,
        src: Source,
        method: rsip::Method,
    ) -> Result<Option<String>, Box<ResponseBuilder>> {
        let Some(verifier) = &self.cfg.verifier else {
            return Ok(None);
        };
        let proxy = method == rsip::Method::Message;
        let from_domain = req
            .from_addr()
            .map(|f| f.uri.host_with_port.host.to_string().to_ascii_lowercase())
            .unwrap_or_default();
        let realm = if self.is_local(&from_domain) {
            from_domain
        } else {
            self.cfg.domains[0].clone()
        };
        let header = if proxy {
            "Proxy-Authorization"
        } else {
            "Authorization"
        };
        let now = self.clock.now_ms();
        let from_aor = req
            .from_addr()
            .and_then(|f| canonical_aor(&f.uri))
            .map(|a| a.to_string())
            .unwrap_or_default();
        let client = Client {
            addr: src.remote.ip(),
            from: &from_aor,
        };
        let mut stale = false;
        for value in req.header_all(header) {
            let Some(creds) = Credentials::parse(value) else {
                continue;
            };
            if !creds.realm.eq_ignore_ascii_case(&realm) {
                continue;
            }
            match verifier.verify(
                &creds,
                req.method.as_str(),
                &req.uri_text,
                &realm,
                client,
                now,
            ) {
                Verdict::Ok(who) => {
                    // It answered our challenge (the nonce is bound to its
                    // address): it receives what we send it.
                    if src.transport == Transport::Udp {
                        self.guard().proven(src.remote, Instant::now());
                    }
                    self.metrics
                        .edge_authentications
                        .with_label_values(&[who.algorithm().name()])
                        .inc();
                    return Ok(Some(who.aor()));
                }
                Verdict::Challenge { stale: s } => stale |= s,
                Verdict::BadRequest(reason) => {
                    return Err(Box::new(self.reply(req, src, 400, reason)));
                }
            }
        }
        self.metrics
            .edge_challenges
            .with_label_values(&[if stale { "true" } else { "false" }])
            .inc();
        let (code, reason, hname) = if proxy {
            (407, "Proxy Authentication Required", "Proxy-Authenticate")
        } else {
            (401, "Unauthorized", "WWW-Authenticate")
        };
        let mut b = self.reply(req, src, code, reason);
        for ch in verifier.challenges(&realm, client, now, stale, rand::random()) {
            b = b.header(hname, ch);
        }
        Err(Box::new(b))
    }

    /// Where a command comes from: the request's transaction key and the
    /// time after which this edge no longer waits for its answer.
    fn origin(&self, req: &Request) -> Origin {
        Origin {
            txn: req.transaction_key().unwrap_or_default(),
            deadline_ms: self.clock.now_ms() + ASK_BUDGET.as_millis() as u64,
        }
    }

    /// Ask the shard owner of `aor`. The retry policy for edge → shard
    /// requests (ARCHITECTURE.md, "Retries"), the only one:
    /// - nobody serves the shard (a handover): the cluster's `HandoverRetry`
    ///   retries for `--handover-wait-ms`; then 503 here;
    /// - no answer in [`ASK_ATTEMPT`] (a lost request or reply): the same
    ///   command again, with the same transaction key, which the owner
    ///   answers with its first answer instead of applying it twice;
    /// - [`ASK_BUDGET`] is over: 503; the command carries that deadline, and
    ///   an owner that dequeues it later does not apply it.
    async fn ask(&self, aor: &str, cmd: Command) -> Reply {
        let subject = shard_subject(shard_of(aor, self.cfg.shards));
        let deadline = Instant::now() + ASK_BUDGET;
        let mut attempt = 0u32;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            attempt += 1;
            match self
                .bus
                .request(&subject, cmd.clone(), left.min(ASK_ATTEMPT))
                .await
            {
                Ok(r) => return r,
                Err(presence_store::BusError::NoResponders(_)) => break,
                Err(e) => {
                    tracing::warn!(error = %e, attempt, "shard request failed; sending it again");
                    if attempt > 1 {
                        // A bus that fails at once must not spin.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
        Reply::refused(Refusal::Unavailable)
    }

    fn refusal(&self, req: &Request, src: Source, reply: Reply) -> ResponseBuilder {
        match reply {
            Reply::Refused(why) => {
                let a = crate::answers::for_refusal(&why);
                let mut b = self.reply(req, src, a.code, &a.reason);
                for (n, v) in a.headers {
                    b = b.header(n, v);
                }
                b
            }
            other => {
                tracing::error!(?other, "unexpected reply from the shard");
                self.reply(req, src, 500, "Server Internal Error")
            }
        }
    }

    /// Granted expiry: `Err(response)` for malformed (400) or too brief (423).
    fn grant_expires(
        &self,
        req: &Request,
        src: Source,
        asked: Option<Result<u32, ()>>,
        default: u32,
    ) -> Result<u32, Box<ResponseBuilder>> {
        let e = match asked {
            None => default,
            Some(Ok(e)) => e,
            Some(Err(())) => return Err(Box::new(self.reply(req, src, 400, "Malformed Expires"))),
        };
        if e > 0 && e < self.cfg.min_expires {
            return Err(Box::new(
                self.reply(req, src, 423, "Interval Too Brief")
                    .header("Min-Expires", self.cfg.min_expires.to_string()),
            ));
        }
        Ok(e.min(self.cfg.max_expires))
    }

    async fn register(
        &self,
        req: &Request,
        src: Source,
        identity: Option<String>,
    ) -> ResponseBuilder {
        let Some(to) = req.to_addr() else {
            return self.reply(req, src, 400, "Malformed To");
        };
        let Some(aor) = canonical_aor(&to.uri) else {
            return self.reply(req, src, 400, "To Is Not an Address of Record");
        };
        if !self.is_local(aor.domain()) {
            return self.reply(req, src, 403, "Domain Not Served Here");
        }
        if identity.as_deref().is_some_and(|id| id != aor.as_str()) {
            return self.reply(req, src, 403, "Forbidden (Not Your AoR)");
        }
        let contacts = match req.contacts() {
            Ok(c) => c,
            Err(()) => return self.reply(req, src, 400, "Malformed Contact"),
        };
        let header_expires = match req.expires() {
            Some(Err(())) => return self.reply(req, src, 400, "Malformed Expires"),
            Some(Ok(e)) => Some(e),
            None => None,
        };
        let action = if contacts.is_empty() {
            RegisterAction::Query
        } else if contacts.iter().any(|c| matches!(c, ContactValue::Star)) {
            if contacts.len() != 1 || header_expires != Some(0) {
                return self.reply(req, src, 400, "Invalid Wildcard Contact");
            }
            RegisterAction::RemoveAll
        } else {
            let mut specs = Vec::new();
            for c in contacts {
                let ContactValue::Addr(na) = c else { continue };
                let asked = match na.param("expires") {
                    Some(Some(v)) => Some(presence_sip::headers::parse_delta(v)),
                    _ => header_expires.map(Ok),
                };
                let expires = match self.grant_expires(req, src, asked, 3600) {
                    Ok(e) => e,
                    Err(resp) => return *resp,
                };
                let params: String = na
                    .params
                    .iter()
                    .filter(|(n, _)| n != "expires")
                    .map(|(n, v)| match v {
                        Some(v) if v.contains([' ', ',', ';', '"']) || n == "methods" => {
                            format!(";{n}=\"{v}\"")
                        }
                        Some(v) => format!(";{n}={v}"),
                        None => format!(";{n}"),
                    })
                    .collect();
                let methods = na.param("methods").and_then(|m| m.clone()).map(|m| {
                    m.split(',')
                        .map(|s| s.trim().to_ascii_uppercase())
                        .filter(|s| !s.is_empty())
                        .collect()
                });
                let q = na.param("q").and_then(|q| q.clone());
                specs.push(ContactSpec {
                    uri: na.uri_text.clone(),
                    params,
                    expires,
                    methods,
                    q,
                });
            }
            RegisterAction::Update(specs)
        };
        let (cseq, _) = req.cseq().unwrap_or((0, String::new()));
        let cmd = Command::Register(RegisterCmd {
            aor: aor.to_string(),
            call_id: req.call_id().unwrap_or_default().to_string(),
            cseq,
            flow: self.flow(src),
            action,
            origin: self.origin(req),
        });
        match self.ask(aor.as_str(), cmd).await {
            Reply::Registered { bindings, now_ms } => {
                let mut b = self.reply(req, src, 200, "OK");
                for binding in &bindings {
                    b = b.header("Contact", contact_listing(binding, now_ms));
                }
                b
            }
            other => self.refusal(req, src, other),
        }
    }

    async fn publish(
        &self,
        req: &Request,
        src: Source,
        identity: Option<String>,
    ) -> ResponseBuilder {
        let aor =
            canonical_aor(&req.uri).or_else(|| req.to_addr().and_then(|t| canonical_aor(&t.uri)));
        let Some(aor) = aor else {
            return self.reply(req, src, 400, "Request-URI Is Not an Address of Record");
        };
        if !self.is_local(aor.domain()) {
            return self.reply(req, src, 404, "Not Found (Domain Not Served Here)");
        }
        let Some(event) = req.event() else {
            return self
                .reply(req, src, 489, "Bad Event")
                .header("Allow-Events", self.cfg.packages.allow_events());
        };
        let Some(package) = self
            .cfg
            .packages
            .get(&event.package)
            .filter(|p| !p.publish_types().is_empty())
        else {
            return self
                .reply(req, src, 489, "Bad Event")
                .header("Allow-Events", self.cfg.packages.allow_events());
        };
        if identity.as_deref().is_some_and(|id| id != aor.as_str()) {
            return self.reply(req, src, 403, "Forbidden (Not Your AoR)");
        }
        let expires = match self.grant_expires(req, src, req.expires(), 3600) {
            Ok(e) => e,
            Err(resp) => return *resp,
        };
        let if_match = req.sip_if_match().map(str::to_string);
        let body = if req.body.is_empty() {
            None
        } else {
            let ct = req.content_type();
            let Some(ct) = ct.filter(|ct| package.publish_types().contains(&ct.as_str())) else {
                return self
                    .reply(req, src, 415, "Unsupported Media Type")
                    .header("Accept", package.publish_types().join(", "));
            };
            if let Err(why) = package.check_body(&req.body) {
                tracing::debug!(%why, "malformed publication body");
                return self.reply(req, src, 400, "Malformed Event State Document");
            }
            Some((ct.as_str().to_string(), req.body.clone()))
        };
        if if_match.is_none() && body.is_none() {
            return self.reply(req, src, 400, "Missing Body");
        }
        if if_match.is_none() && expires == 0 {
            return self.reply(req, src, 400, "Expires 0 Without SIP-If-Match");
        }
        let cmd = Command::Publish(PublishCmd {
            aor: aor.to_string(),
            event: package.name().to_string(),
            if_match,
            expires,
            body,
            origin: self.origin(req),
        });
        match self.ask(aor.as_str(), cmd).await {
            Reply::Published { etag, expires } => self
                .reply(req, src, 200, "OK")
                .header("SIP-ETag", etag)
                .header("Expires", expires.to_string()),
            other => self.refusal(req, src, other),
        }
    }

    async fn subscribe(
        &self,
        req: &Request,
        src: Source,
        identity: Option<String>,
    ) -> ResponseBuilder {
        let found = req
            .event()
            .and_then(|e| self.cfg.packages.get(&e.package).cloned().map(|p| (e, p)));
        let Some((event, package)) = found else {
            return self
                .reply(req, src, 489, "Bad Event")
                .header("Allow-Events", self.cfg.packages.allow_events());
        };
        let (Some(from), Some(to)) = (req.from_addr(), req.to_addr()) else {
            return self.reply(req, src, 400, "Malformed From or To");
        };
        let in_dialog = to.tag.clone();
        let aor = match (&in_dialog, canonical_aor(&req.uri)) {
            (_, Some(a)) => a,
            (Some(_), None) => match canonical_aor(&to.uri) {
                Some(a) => a,
                None => return self.reply(req, src, 400, "Not an Address of Record"),
            },
            (None, None) => {
                return self.reply(req, src, 400, "Request-URI Is Not an Address of Record")
            }
        };
        if in_dialog.is_none() && !self.is_local(aor.domain()) {
            return self.reply(req, src, 404, "Not Found (Domain Not Served Here)");
        }
        let accept = req.accept();
        let content_type = match package.negotiate(accept.as_deref()) {
            Ok(ct) => ct,
            Err(()) => {
                return self
                    .reply(req, src, 406, "Not Acceptable")
                    .header("Accept", package.notify_types().join(", "));
            }
        };
        let expires = match self.grant_expires(req, src, req.expires(), 3600) {
            Ok(e) => e,
            Err(resp) => return *resp,
        };
        let contact = match req.contacts() {
            Ok(c) => c.into_iter().find_map(|c| match c {
                ContactValue::Addr(a) => Some(a.uri_text),
                ContactValue::Star => None,
            }),
            Err(()) => return self.reply(req, src, 400, "Malformed Contact"),
        };
        let Some(remote_target) = contact.or_else(|| in_dialog.as_ref().map(|_| String::new()))
        else {
            return self.reply(req, src, 400, "Missing Contact");
        };
        let watcher = match identity {
            Some(id) => id,
            None => match canonical_aor(&from.uri) {
                Some(a) => a.to_string(),
                None => return self.reply(req, src, 400, "From Is Not an Address of Record"),
            },
        };
        let Some(remote_tag) = from.tag.clone() else {
            return self.reply(req, src, 400, "Missing From Tag");
        };
        let (cseq, _) = req.cseq().unwrap_or((0, String::new()));
        let strip_tag = |v: &str| -> String {
            let na = presence_sip::NameAddr::parse(v);
            match na {
                Some(n) => {
                    let mut s = match &n.display {
                        Some(d) => format!("\"{}\" <{}>", d.replace('"', "\\\""), n.uri_text),
                        None => format!("<{}>", n.uri_text),
                    };
                    for (k, val) in n.params.iter().filter(|(k, _)| k != "tag") {
                        match val {
                            Some(val) => s.push_str(&format!(";{k}={val}")),
                            None => s.push_str(&format!(";{k}")),
                        }
                    }
                    s
                }
                None => v.to_string(),
            }
        };
        let cmd = Command::Subscribe(SubscribeCmd {
            aor: aor.to_string(),
            event: package.name().to_string(),
            event_id: event.id.clone(),
            watcher,
            dialog: in_dialog.clone(),
            call_id: req.call_id().unwrap_or_default().to_string(),
            remote_tag,
            cseq,
            local_uri: strip_tag(req.header("To").unwrap_or_default()),
            remote_uri: strip_tag(req.header("From").unwrap_or_default()),
            remote_target,
            route_set: req.list("Record-Route"),
            flow: self.flow(src),
            expires,
            content_type: content_type.to_string(),
            origin: self.origin(req),
        });
        match self.ask(aor.as_str(), cmd).await {
            Reply::Subscribed { id, expires, .. } => {
                ResponseBuilder::new(&req.headers, 200, "OK", Some(&id), Some(src.remote))
                    .header("Expires", expires.to_string())
                    .header("Contact", self.contact_header(src))
                    .header("Allow-Events", self.cfg.packages.allow_events())
            }
            other => self.refusal(req, src, other),
        }
    }

    /// Pager-mode MESSAGE (RFC 3428): relay to the target's contacts and
    /// relay the best final answer back. The body passes byte for byte.
    ///
    /// With Digest on, the sender is who authenticated: a From naming anyone
    /// else is refused (403), and the relayed request carries our
    /// `P-Asserted-Identity` for it. A P-Asserted-Identity or
    /// P-Preferred-Identity from the UA is never passed on (RFC 3325 §5:
    /// only a trusted node asserts identities, and no UA is one).
    async fn message(
        self: &Arc<Self>,
        req: &Request,
        src: Source,
        identity: Option<String>,
    ) -> ResponseBuilder {
        let Some(aor) = canonical_aor(&req.uri) else {
            return self.reply(req, src, 404, "Not Found");
        };
        if let Some(id) = &identity {
            let from = req.from_addr().and_then(|f| canonical_aor(&f.uri));
            if from.as_ref().map(|f| f.as_str()) != Some(id.as_str()) {
                return self.reply(req, src, 403, "Forbidden (From Is Not Your Identity)");
            }
        }
        if !self.is_local(aor.domain()) {
            return self.reply(req, src, 404, "Not Found (Domain Not Served Here)");
        }
        let max_forwards = match req.max_forwards() {
            Some(Ok(0)) => return self.reply(req, src, 483, "Too Many Hops"),
            Some(Ok(n)) => n - 1,
            _ => 69,
        };
        let targets = match self
            .ask(
                aor.as_str(),
                Command::Route {
                    aor: aor.to_string(),
                    method: "MESSAGE".into(),
                },
            )
            .await
        {
            Reply::Routes(t) => t,
            other => return self.refusal(req, src, other),
        };
        // Fork to every contact, one copy per flow (contacts that share a
        // flow are one device), at most MAX_FORKS; the first 2xx wins, else
        // the lowest class.
        let mut targets = targets;
        let mut seen_flows = std::collections::HashSet::new();
        targets.retain(|t| seen_flows.insert((t.flow.edge.clone(), t.flow.remote, t.flow.conn)));
        targets.truncate(MAX_FORKS);
        let mut set = tokio::task::JoinSet::new();
        for target in targets {
            let mut headers = rsip::Headers::default();
            for h in req.headers.iter() {
                let n = h.name();
                if n.eq_ignore_ascii_case("Max-Forwards")
                    || n.eq_ignore_ascii_case("Route")
                    || n.eq_ignore_ascii_case("Proxy-Authorization")
                    || n.eq_ignore_ascii_case("Content-Length")
                    || n.eq_ignore_ascii_case("P-Asserted-Identity")
                    || n.eq_ignore_ascii_case("P-Preferred-Identity")
                {
                    continue;
                }
                headers.push(h.clone());
            }
            if let Some(id) = &identity {
                headers.push(rsip::headers::make_header(
                    "P-Asserted-Identity",
                    format!("<{id}>"),
                ));
            }
            headers.push(rsip::headers::make_header(
                "Max-Forwards",
                max_forwards.to_string(),
            ));
            let out = OutRequest {
                flow: target.flow.clone(),
                method: "MESSAGE".into(),
                uri: target.uri.clone(),
                headers,
                body: req.body.clone(),
                deadline_ms: self.clock.now_ms() + TIMER_F.as_millis() as u64,
            };
            let me = self.clone();
            set.spawn(async move { me.send_via_flow_edge(out).await });
        }
        let mut best: Option<Outcome> = None;
        while let Some(res) = set.join_next().await {
            let Ok(o) = res else { continue };
            if (200..300).contains(&o.code) {
                set.abort_all();
                best = Some(o);
                break;
            }
            let better = match &best {
                None => true,
                Some(b) => rank(o.code) < rank(b.code),
            };
            if better {
                best = Some(o);
            }
        }
        let Some(o) = best else {
            return self.reply(req, src, 480, "Temporarily Unavailable");
        };
        if o.timed_out {
            return self.reply(req, src, 408, "Request Timeout");
        }
        // Relay the answer: the request's Via stack, the answer's other headers.
        let skip = ["via", "from", "to", "call-id", "cseq", "content-length"];
        let to_tag = o
            .headers
            .iter()
            .find(|h| h.name().eq_ignore_ascii_case("To"))
            .and_then(|h| presence_sip::NameAddr::parse(h.value()))
            .and_then(|n| n.tag);
        let fallback_tag = new_tag();
        let mut b = ResponseBuilder::new(
            &req.headers,
            o.code,
            &o.reason,
            to_tag.as_deref().or(Some(&fallback_tag)),
            Some(src.remote),
        );
        let mut ct = None;
        for h in o.headers.iter() {
            let n = h.name().to_ascii_lowercase();
            if n == "content-type" {
                ct = Some(h.value().to_string());
                continue;
            }
            if !skip.contains(&n.as_str()) {
                b = b.header(h.name(), h.value().to_string());
            }
        }
        if !o.body.is_empty() {
            b = b.body(
                ct.as_deref().unwrap_or("application/octet-stream"),
                o.body.to_vec(),
            );
        }
        b
    }

    /// Wait (briefly) while the SUBSCRIBE of this NOTIFY's dialog is still
    /// being answered here.
    async fn after_subscribe_answered(&self, call_id: &str) {
        let pending = self
            .answering
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(call_id)
            .cloned();
        if let Some(mut rx) = pending {
            // Returns when the sender is dropped, i.e. the answer is out.
            let _ = tokio::time::timeout(Duration::from_secs(2), rx.changed()).await;
        }
    }

    /// Wait for this NOTIFY's turn on its dialog (see [`DialogOut`]);
    /// `Err(())` when it is superseded and must not be sent.
    async fn dialog_turn(&self, call_id: &str, from: &str, cseq: u32) -> DialogStep<'_> {
        let key = dialog_key(call_id, from);
        let mut rx: Option<watch::Receiver<u64>> = None;
        loop {
            {
                let mut d = self.dialogs.lock().unwrap_or_else(|e| e.into_inner());
                let e = d.entry(key).or_insert_with(|| DialogOut {
                    sent: 0,
                    waiting: 0,
                    busy: false,
                    turn: None,
                    last_used: Instant::now(),
                    outcome: None,
                    answered: (0, 0),
                });
                if cseq == e.sent && cseq > 0 {
                    if e.busy {
                        let o = e.outcome.get_or_insert_with(|| watch::channel(None).0);
                        return DialogStep::Join(o.subscribe());
                    }
                    if e.answered.0 == cseq {
                        return DialogStep::Answered(e.answered.1);
                    }
                }
                if cseq <= e.sent || cseq < e.waiting {
                    return DialogStep::Superseded;
                }
                if !e.busy {
                    e.busy = true;
                    e.sent = cseq;
                    return DialogStep::Go(DialogTurn {
                        edge: self,
                        key,
                        code: 0,
                    });
                }
                e.waiting = e.waiting.max(cseq);
                if rx.is_none() {
                    // Subscribed under the lock: the turn's end cannot slip
                    // in between.
                    let turn = e.turn.get_or_insert_with(|| watch::channel(0).0);
                    rx = Some(turn.subscribe());
                }
            }
            // The channel closes only with its entry (swept): look again.
            if let Some(r) = rx.as_mut() {
                if r.changed().await.is_err() {
                    rx = None;
                }
            }
        }
    }

    /// Send a request through the edge that holds its flow: here, or over
    /// the bus on `edge.<id>` (a TCP flow's connection exists only there,
    /// and a UDP UA behind NAT answers only its own edge's address). When
    /// that edge is gone, any edge sends it; when the bus fails, it counts
    /// as a timeout.
    async fn send_via_flow_edge(self: &Arc<Self>, out: OutRequest) -> Outcome {
        let bus = match self.out_bus.get() {
            Some(bus) if out.flow.edge != self.cfg.id => bus.clone(),
            _ => return self.send_request(out).await,
        };
        let subject = crate::notifier::edge_subject(&out.flow.edge);
        // Timer F on the far edge, plus the bus hops.
        let wait = TIMER_F + Duration::from_secs(2);
        let gone_at = Instant::now() + crate::notifier::EDGE_GONE_AFTER;
        let result = loop {
            match bus.request(&subject, out.clone(), wait).await {
                // Nobody serves it: a NATS reconnection, or the edge is gone.
                Err(presence_store::BusError::NoResponders(_)) if Instant::now() < gone_at => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(presence_store::BusError::NoResponders(_)) => {
                    break bus.request(crate::notifier::ANY_EDGE, out, wait).await;
                }
                other => break other,
            }
        };
        result.unwrap_or_else(|e| {
            tracing::debug!(error = %e, edge = %subject, "cannot relay through the flow's edge");
            Outcome::timeout()
        })
    }

    /// Send a request through a flow as a client transaction.
    pub async fn send_request(self: &Arc<Self>, out: OutRequest) -> Outcome {
        let method = out.method.clone();
        let mut _turn = None;
        if method == "NOTIFY" {
            let dialog = notify_dialog(&out.headers);
            if let Some(call_id) = dialog.call_id {
                self.after_subscribe_answered(call_id).await;
            }
            // A NOTIFY whose dialog cannot be read goes at once.
            if let (Some(call_id), Some(cseq)) = (dialog.call_id, dialog.cseq) {
                match self.dialog_turn(call_id, dialog.from, cseq).await {
                    DialogStep::Go(t) => _turn = Some(t),
                    DialogStep::Join(mut rx) => {
                        // A re-send (the notifier lost our answer): one
                        // transaction per NOTIFY, its code for both.
                        let code = loop {
                            if let Some(code) = *rx.borrow_and_update() {
                                break code;
                            }
                            if rx.changed().await.is_err() {
                                break 0;
                            }
                        };
                        return Outcome::of_code(code);
                    }
                    DialogStep::Answered(code) => return Outcome::of_code(code),
                    DialogStep::Superseded => {
                        self.metrics
                            .edge_client_transactions
                            .with_label_values(&["NOTIFY", "superseded"])
                            .inc();
                        return Outcome::superseded();
                    }
                }
            }
        }
        let branch = format!("z9hG4bK{}", new_tag());
        let local = if out.flow.edge == self.cfg.id {
            out.flow.local
        } else {
            self.udp.first().map(|(a, _)| *a).unwrap_or(out.flow.local)
        };
        let host = local;
        let mut headers = rsip::Headers::default();
        headers.push(rsip::headers::make_header(
            "Via",
            format!(
                "SIP/2.0/{} {host};branch={branch};rport",
                out.flow.transport.as_str()
            ),
        ));
        let mut has_contact = false;
        for h in out.headers.iter() {
            has_contact |= h.name().eq_ignore_ascii_case("Contact");
            headers.push(h.clone());
        }
        if !has_contact && method == "NOTIFY" {
            let src = Source {
                transport: out.flow.transport,
                remote: out.flow.remote,
                local,
                conn: out.flow.conn,
            };
            headers.push(rsip::headers::make_header(
                "Contact",
                self.contact_header(src),
            ));
        }
        let bytes = Bytes::from(encode_request(&method, &out.uri, &headers, &out.body));
        let (tx, mut rx) = oneshot::channel();
        let whole = method != "NOTIFY";
        self.client_txns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(branch.clone(), Waiter { tx, whole });
        // Timer F, or sooner if the asker stops waiting before.
        let mut lifetime = TIMER_F;
        if out.deadline_ms > 0 {
            let left = out.deadline_ms.saturating_sub(self.clock.now_ms());
            lifetime = lifetime.min(Duration::from_millis(left));
        }
        let deadline = Instant::now() + lifetime;
        let result = match out.flow.transport {
            Transport::Udp => {
                let sock = self.udp_socket(local);
                let mut interval = T1;
                loop {
                    let allowed =
                        self.guard()
                            .may_send(out.flow.remote, bytes.len(), Instant::now());
                    if let Some(s) = &sock {
                        if !allowed {
                            self.drop_counted("amplification");
                        } else if !udp_send(s, &bytes, out.flow.remote).await {
                            self.drop_counted("send_failed");
                        }
                    }
                    let wait = interval.min(deadline.saturating_duration_since(Instant::now()));
                    match tokio::time::timeout(wait, &mut rx).await {
                        Ok(r) => break r.ok(),
                        Err(_) if Instant::now() >= deadline => break None,
                        Err(_) => interval = (interval * 2).min(T2),
                    }
                }
            }
            Transport::Tcp => {
                // A connection number means something only on the edge that
                // numbered it; another edge looks the remote up or connects.
                let mut sent =
                    out.flow.edge == self.cfg.id && self.send_conn(out.flow.conn, bytes.clone());
                if !sent {
                    let existing = self
                        .by_remote
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get(&out.flow.remote)
                        .copied();
                    if let Some(id) = existing {
                        sent = self.send_conn(id, bytes.clone());
                    }
                }
                if !sent && self.guard().open_connection(out.flow.remote.ip()).is_ok() {
                    match tokio::time::timeout(
                        Duration::from_secs(5),
                        TcpStream::connect(out.flow.remote),
                    )
                    .await
                    {
                        Ok(Ok(stream)) => {
                            let _ = stream.set_nodelay(true);
                            let local = stream.local_addr().unwrap_or(local);
                            let id = self.clone().spawn_conn(stream, local, out.flow.remote);
                            sent = self.send_conn(id, bytes.clone());
                        }
                        _ => self.guard().close_connection(out.flow.remote.ip()),
                    }
                }
                if sent {
                    tokio::time::timeout_at(deadline, &mut rx)
                        .await
                        .ok()
                        .and_then(|r| r.ok())
                } else {
                    None
                }
            }
        };
        self.client_txns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&branch);
        if let (Some(t), Some(resp)) = (_turn.as_mut(), result.as_ref()) {
            t.code = resp.code;
        }
        let label = method_label(&method);
        match result {
            Some(resp) => {
                self.metrics
                    .edge_client_transactions
                    .with_label_values(&[label, status_class(resp.code)])
                    .inc();
                let mut headers = rsip::Headers::default();
                let mut first_via = true;
                for h in resp.headers.iter() {
                    if h.name().eq_ignore_ascii_case("Via") && first_via {
                        first_via = false;
                        // our own Via: drop the first element only
                        let rest: Vec<&str> = presence_sip::split_list(h.value())
                            .into_iter()
                            .skip(1)
                            .collect();
                        if !rest.is_empty() {
                            headers.push(rsip::headers::make_header("Via", rest.join(", ")));
                        }
                        continue;
                    }
                    headers.push(h.clone());
                }
                Outcome {
                    code: resp.code,
                    reason: resp.reason,
                    headers,
                    body: resp.body,
                    timed_out: false,
                    superseded: false,
                }
            }
            None => {
                self.metrics
                    .edge_client_transactions
                    .with_label_values(&[label, "timeout"])
                    .inc();
                Outcome::timeout()
            }
        }
    }
}

/// Send one datagram: at once if the socket takes it, else waiting for it
/// to be writable (a socket never written to yet reports WouldBlock to
/// `try_send_to`; a full send buffer too) for at most [`UDP_SEND_WAIT`].
async fn udp_send(sock: &UdpSocket, bytes: &[u8], to: SocketAddr) -> bool {
    match sock.try_send_to(bytes, to) {
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            matches!(
                tokio::time::timeout(UDP_SEND_WAIT, sock.send_to(bytes, to)).await,
                Ok(Ok(_))
            )
        }
        Err(e) => {
            tracing::debug!(error = %e, %to, "udp send failed");
            false
        }
    }
}

/// How long a datagram may wait for its socket to be writable.
const UDP_SEND_WAIT: Duration = Duration::from_millis(200);

/// Response preference when forking (RFC 3261 §16.7 simplified): 6xx, then
/// 4xx other than 408/480, then 5xx, then 408/480.
fn rank(code: u16) -> u8 {
    match code {
        200..=299 => 0,
        600..=699 => 1,
        408 | 480 => 4,
        400..=499 => 2,
        500..=599 => 3,
        _ => 5,
    }
}

fn contact_listing(b: &Binding, now_ms: u64) -> String {
    let remaining = b.expires_at_ms.saturating_sub(now_ms).div_ceil(1000);
    format!("<{}>{};expires={remaining}", b.uri, b.params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use presence_store::MemoryBus;

    /// A watcher's UDP socket that answers NOTIFYs by hand.
    struct Watcher(UdpSocket);

    impl Watcher {
        /// The next NOTIFY whose CSeq is not in `seen` (retransmissions of
        /// unanswered ones are skipped); `None` if none comes within `wait`.
        async fn next_new(&self, seen: &[u32], wait: Duration) -> Option<(u32, String)> {
            let mut buf = vec![0u8; 65536];
            let deadline = Instant::now() + wait;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let (n, _) = tokio::time::timeout(left, self.0.recv_from(&mut buf))
                    .await
                    .ok()?
                    .expect("recv");
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                let cseq = text
                    .lines()
                    .find_map(|l| l.strip_prefix("CSeq: "))
                    .and_then(|v| v.split_whitespace().next())
                    .and_then(|n| n.parse().ok())
                    .expect("a CSeq");
                if !seen.contains(&cseq) {
                    return Some((cseq, text));
                }
            }
        }

        /// Answer a NOTIFY (as received) with 200.
        async fn ok(&self, notify: &str, to: SocketAddr) {
            let mut answer = String::from("SIP/2.0 200 OK\r\n");
            for l in notify.lines() {
                let name = l.split(':').next().unwrap_or("");
                if ["Via", "From", "To", "Call-ID", "CSeq"].contains(&name) {
                    answer.push_str(l);
                    answer.push_str("\r\n");
                }
            }
            answer.push_str("Content-Length: 0\r\n\r\n");
            self.0.send_to(answer.as_bytes(), to).await.expect("send");
        }
    }

    fn notify(flow: &Flow, cseq: u32) -> OutRequest {
        let mut headers = rsip::Headers::default();
        for (n, v) in [
            ("To", "<sip:w@example.com>;tag=w1".to_string()),
            ("From", "<sip:p@example.com>;tag=sub1".to_string()),
            ("Call-ID", "dialog-1".to_string()),
            ("CSeq", format!("{cseq} NOTIFY")),
            ("Event", "presence".to_string()),
            ("Subscription-State", "active;expires=60".to_string()),
        ] {
            headers.push(rsip::headers::make_header(n, v));
        }
        OutRequest {
            flow: flow.clone(),
            method: "NOTIFY".into(),
            uri: "sip:w@127.0.0.1".into(),
            headers,
            body: Bytes::new(),
            deadline_ms: 0,
        }
    }

    /// NOTIFYs of one dialog numbered by different notifiers arrive at the
    /// edge in any order: they leave one at a time, in CSeq order, and one
    /// overtaken by a higher CSeq is not sent at all.
    #[tokio::test]
    async fn notifies_of_a_dialog_leave_one_at_a_time_in_cseq_order() {
        let listeners = Listeners::bind(&["127.0.0.1:0".parse().expect("addr")])
            .await
            .expect("bind");
        let local = listeners.udp[0].0;
        let cfg = EdgeConfig {
            id: "e1".into(),
            domains: vec!["example.com".into()],
            verifier: None,
            min_expires: 2,
            max_expires: 3600,
            max_message: 65536,
            shards: 8,
            packages: Registry::default(),
            delay_subscribe_answer: Duration::ZERO,
            limits: EdgeLimits::default(),
        };
        let edge = Arc::new(Edge::new(
            cfg,
            Arc::new(MemoryBus::new()),
            Clock::new(),
            Arc::new(Metrics::new()),
            listeners.udp.clone(),
        ));
        let (_stop, stop_rx) = watch::channel(false);
        tokio::spawn(
            edge.clone()
                .run(listeners.tcp, Arc::new(MemoryBus::new()), stop_rx),
        );
        let w = Watcher(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
        let flow = Flow {
            transport: Transport::Udp,
            remote: w.0.local_addr().expect("addr"),
            local,
            edge: "e1".into(),
            conn: 0,
        };
        let send = |cseq| {
            let (edge, out) = (edge.clone(), notify(&flow, cseq));
            tokio::spawn(async move { edge.send_request(out).await })
        };
        let quiet = Duration::from_millis(700);

        let five = send(5);
        let (c, first) = w.next_new(&[], PATIENCE).await.expect("CSeq 5 is sent");
        assert_eq!(c, 5);
        // 7 and 6 arrive while 5 is unanswered: neither goes out yet.
        let seven = send(7);
        let six = send(6);
        assert_eq!(w.next_new(&[5], quiet).await, None, "one at a time");
        w.ok(&first, local).await;
        assert_eq!(five.await.expect("task").code, 200);
        // 7 goes next; 6 was overtaken and is not sent.
        let (c, second) = w.next_new(&[5], PATIENCE).await.expect("CSeq 7 is sent");
        assert_eq!(c, 7);
        let o = six.await.expect("task");
        assert!(o.superseded, "CSeq 6 superseded: {o:?}");
        w.ok(&second, local).await;
        let o = seven.await.expect("task");
        assert_eq!((o.code, o.superseded), (200, false));
        // A late lower CSeq is not sent either.
        let o = send(6).await.expect("task");
        assert!(o.superseded);
        assert_eq!(w.next_new(&[5, 7], quiet).await, None);
    }

    const PATIENCE: Duration = Duration::from_secs(5);

    /// A notifier that lost the edge's answer sends the same NOTIFY again:
    /// it joins the transaction in flight (one transaction per NOTIFY, not
    /// two), and a re-send after the answer gets that answer unsent.
    #[tokio::test]
    async fn a_resent_notify_joins_its_transaction() {
        let listeners = Listeners::bind(&["127.0.0.1:0".parse().expect("addr")])
            .await
            .expect("bind");
        let local = listeners.udp[0].0;
        let cfg = EdgeConfig {
            id: "e1".into(),
            domains: vec!["example.com".into()],
            verifier: None,
            min_expires: 2,
            max_expires: 3600,
            max_message: 65536,
            shards: 8,
            packages: Registry::default(),
            delay_subscribe_answer: Duration::ZERO,
            limits: EdgeLimits::default(),
        };
        let edge = Arc::new(Edge::new(
            cfg,
            Arc::new(MemoryBus::new()),
            Clock::new(),
            Arc::new(Metrics::new()),
            listeners.udp.clone(),
        ));
        let (_stop, stop_rx) = watch::channel(false);
        tokio::spawn(
            edge.clone()
                .run(listeners.tcp, Arc::new(MemoryBus::new()), stop_rx),
        );
        let w = Watcher(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
        let flow = Flow {
            transport: Transport::Udp,
            remote: w.0.local_addr().expect("addr"),
            local,
            edge: "e1".into(),
            conn: 0,
        };
        let send = || {
            let (edge, out) = (edge.clone(), notify(&flow, 5));
            tokio::spawn(async move { edge.send_request(out).await })
        };
        let first = send();
        let (c, text) = w.next_new(&[], PATIENCE).await.expect("sent");
        assert_eq!(c, 5);
        let again = send();
        // 800 ms unanswered: one transaction sends twice (0 and 0.5 s);
        // two would send four times.
        let mut copies = 1;
        let mut buf = vec![0u8; 65536];
        while let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_millis(800), w.0.recv_from(&mut buf)).await
        {
            copies += 1;
        }
        assert_eq!(copies, 2, "one transaction's sends");
        w.ok(&text, local).await;
        assert_eq!(first.await.expect("task").code, 200);
        let o = again.await.expect("task");
        assert_eq!((o.code, o.superseded, o.timed_out), (200, false, false));
        // Answered already: the code again, nothing sent.
        assert_eq!(send().await.expect("task").code, 200);
        assert!(
            tokio::time::timeout(Duration::from_millis(300), w.0.recv_from(&mut buf))
                .await
                .is_err()
        );
    }

    /// An answered transaction's entry goes after its own keep time, also
    /// when its (longer) guard entry is queued before it.
    #[tokio::test(start_paused = true)]
    async fn answered_transactions_are_kept_for_their_own_time() {
        let mut t = TxnTable::default();
        for (key, keep) in [("tcp", Keep::Tcp), ("udp", Keep::Udp)] {
            t.entries.insert(key.into(), None);
            t.expire_in(Keep::Guard, key.into());
            t.entries.insert(key.into(), Some(Bytes::new()));
            t.expire_in(keep, key.into());
        }
        tokio::time::advance(Duration::from_secs(2)).await;
        t.sweep(Instant::now());
        assert!(!t.entries.contains_key("tcp"), "TCP: kept about 1 s");
        assert!(t.entries.contains_key("udp"), "UDP: kept for Timer J");
        tokio::time::advance(TIMER_J).await;
        t.sweep(Instant::now());
        assert!(t.entries.is_empty());
    }
}

//! The edge role: SIP sockets (UDP and TCP on the same port), framing,
//! parsing, non-INVITE server transactions (retransmissions absorbed and
//! answered from the table), client transactions for our NOTIFY and MESSAGE
//! (Timer E/F over UDP, 32 s timeout), the flow table for TCP, Digest
//! authentication, and the mapping SIP ⇄ typed commands for the shard owner.
//! It keeps no presence state: killing it loses only in-flight transactions.
//!
//! One room per concern; this file holds the `Edge` itself, its life cycle
//! (`run`, drain) and the request dispatch:
//! - `transport`: the only socket I/O (UDP loop, TCP connections, sends);
//! - `server_txn`: the retransmission-absorbing server transaction table;
//! - `client_txn`: our NOTIFY/MESSAGE client transactions (Timer E/F);
//! - `dialog_out`: per-dialog NOTIFY order, re-sends joining their transaction;
//! - `auth`: Digest challenges and the accepted identity;
//! - `mapping`: REGISTER/PUBLISH/SUBSCRIBE → command, the retry policy
//!   towards the shard owner, refusals → SIP (via `crate::answers`);
//! - `relay`: MESSAGE forking through the flows' edges.
//!
//! Not: limits (`crate::guard`), presence state, composition.

mod advertise;
mod auth;
mod client_txn;
mod dialog_out;
mod mapping;
mod relay;
mod server_txn;
#[cfg(test)]
mod tests;
mod tls;
mod transport;
mod websocket;

pub use advertise::{Advertised, SelfNames};
use client_txn::*;
use dialog_out::*;
pub use relay::{rank, MAX_FORKS};
use server_txn::*;
pub use tls::{TlsCerts, TlsFiles};
use transport::*;
pub use transport::{Listeners, StreamKind};

use crate::answers::Rejection;
use crate::metrics::{method_label, status_class, Metrics};
use crate::names::{new_tag, shard_subject};
use crate::Clock;
use bytes::Bytes;
use presence_core::commands::{
    Command, ContactSpec, Origin, PublishCmd, Refusal, RegisterAction, RegisterCmd, Reply,
    SubscribeCmd,
};
use presence_core::digest::{Client, Credentials, Verdict, Verifier};
use presence_core::packages::Registry;
use presence_core::{canonical_aor, shard_of, Binding, Flow, FlowSealer, Transport};
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

/// How long a stopping edge keeps receiving the answers to its NOTIFYs and
/// MESSAGEs still in flight.
const CLIENT_TXN_GRACE: Duration = Duration::from_secs(5);

const ALLOW: &str = "REGISTER, PUBLISH, SUBSCRIBE, NOTIFY, MESSAGE, OPTIONS";

pub use presence_core::commands::{OutRequest, Outcome};

pub struct EdgeConfig {
    pub id: String,
    pub domains: Vec<String>,
    pub verifier: Option<Verifier>,
    pub min_expires: u32,
    pub max_expires: u32,
    pub max_message: usize,
    pub shards: u32,
    pub packages: Registry,
    /// Test-only: see `faults::Faults::delay_subscribe_answer_ms`.
    pub delay_subscribe_answer: Duration,
    /// What one source may cost (rates, connections, amplification).
    pub limits: EdgeLimits,
    /// `--sip-advertise`, one per listener in `--sip-listen` order (or none).
    pub advertise: Vec<Advertised>,
    /// Seals the flows this edge builds and checks those it is asked to
    /// send through (from `--nonce-secret`, shared by a cluster's edges).
    pub sealer: FlowSealer,
    /// `--trusted-publisher`: who may PUBLISH for any local AoR.
    pub trusted: crate::trusted::TrustedPublishers,
    /// `--lists`: resource list URIs (RFC 4662).
    pub lists: Arc<crate::reload::Reloadable<presence_core::rlmi::Lists>>,
}

#[derive(Debug, Clone, Copy)]
struct Source {
    transport: Transport,
    remote: SocketAddr,
    local: SocketAddr,
    conn: u64,
}

pub struct Edge {
    cfg: EdgeConfig,
    bus: Arc<dyn Requests<Command, Reply>>,
    clock: Clock,
    metrics: Arc<Metrics>,
    udp: Vec<(SocketAddr, Arc<UdpSocket>)>,
    /// How this edge names itself on the wire (Via sent-by, Contact).
    names: SelfNames,
    /// Other edges found gone (MESSAGE relays to their flows go elsewhere).
    gone: crate::gone_edges::GoneEdges,
    /// The live edges (cluster mode; set by [`Edge::follow_roster`]).
    roster: std::sync::OnceLock<Arc<crate::roster::Roster>>,
    /// The notify queue, whose depth sheds PUBLISHes (set by
    /// [`Edge::watch_notify_queue`]).
    notify_queue:
        std::sync::OnceLock<Arc<dyn presence_store::WorkQueue<presence_core::commands::NotifyJob>>>,
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
    /// TLS and WebSocket listeners, taken by [`Edge::run`] (set by
    /// [`Edge::serve_streams`]).
    streams: Mutex<Vec<(SocketAddr, TcpListener, StreamKind)>>,
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
        let listeners: Vec<SocketAddr> = udp.iter().map(|(a, _)| *a).collect();
        let names = SelfNames::new(&listeners, &cfg.advertise);
        Edge {
            names,
            gone: Default::default(),
            roster: Default::default(),
            notify_queue: Default::default(),
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
            streams: Mutex::new(Vec::new()),
        }
    }

    /// Reroute to the live edges of `roster` (cluster mode).
    pub fn follow_roster(&self, roster: Arc<crate::roster::Roster>) {
        let _ = self.roster.set(roster);
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

    /// Shed this PUBLISH? With more client transactions in flight than
    /// `--max-notify-backlog`, a PUBLISH from a heavy source (see
    /// `guard::LIGHT_RATE`: an aggregator, a load tool, a flood) is shed;
    /// over twice that, every PUBLISH. Phones publishing now and then keep
    /// being served while the heavy hitters wait.
    fn shed_publish(&self, from: std::net::IpAddr) -> bool {
        let in_flight = self
            .client_txns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len();
        let queued = self.notify_queue.get().map_or(0, |q| q.depth());
        let (max, max_queued) = (
            self.cfg.limits.max_notify_backlog,
            self.cfg.limits.max_notify_queue,
        );
        if in_flight > max.saturating_mul(2) || queued > max_queued.saturating_mul(2) {
            return true;
        }
        (in_flight > max || queued > max_queued) && !self.guard().is_light(from, Instant::now())
    }

    /// Shed PUBLISHes also by the depth of `queue`, the notify jobs waiting
    /// (`--max-notify-queue`): every change waits for those ahead of it, and
    /// the notifiers take no more than they can send soon.
    pub fn watch_notify_queue(
        &self,
        queue: Arc<dyn presence_store::WorkQueue<presence_core::commands::NotifyJob>>,
    ) {
        let _ = self.notify_queue.set(queue);
    }

    fn drop_counted(&self, reason: &str) {
        self.metrics.edge_dropped.with_label_values(&[reason]).inc();
    }

    /// Run the sockets and serve `edge.<id>` until shutdown.
    /// Serve SIP over TLS or WebSocket on these listeners too (call
    /// before [`Edge::run`]).
    pub fn serve_streams(&self, listeners: Vec<(SocketAddr, TcpListener, StreamKind)>) {
        self.streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(listeners);
    }

    pub async fn run(
        self: Arc<Self>,
        tcp: Vec<(SocketAddr, TcpListener)>,
        out_bus: Arc<dyn Requests<OutRequest, Outcome>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut tasks = Vec::new();
        let work = tokio::runtime::Handle::current();
        // The receive loops outlive `shutdown` (see the end of this
        // function); they stop with this sender, also when this future is
        // dropped without a shutdown.
        let (stop_receiving, receiving) = watch::channel(false);
        for (local, sock) in self.udp.clone() {
            let me = self.clone();
            let (work, stop) = (work.clone(), receiving.clone());
            tasks.push(spawn_receiver(async move {
                me.udp_loop(local, sock, work, stop).await
            }));
        }
        for (local, listener) in tcp {
            let me = self.clone();
            tasks.push(tokio::spawn(async move {
                me.accept_loop(local, listener, StreamKind::Tcp).await
            }));
        }
        let streams = std::mem::take(&mut *self.streams.lock().unwrap_or_else(|e| e.into_inner()));
        for (local, listener, kind) in streams {
            let me = self.clone();
            tasks.push(tokio::spawn(async move {
                me.accept_loop(local, listener, kind).await
            }));
        }
        let _ = self.out_bus.set(out_bus.clone());
        let (tx, mut rx) = mpsc::channel::<Incoming<OutRequest, Outcome>>(8192);
        let subject = crate::names::edge_subject(&self.cfg.id);
        for s in [subject.as_str(), crate::names::ANY_EDGE] {
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
        let _ = out_bus.unserve(crate::names::ANY_EDGE).await;
        // No new NOTIFY or MESSAGE comes now, but the answers to those in
        // flight still do: keep receiving until their transactions end (at
        // most CLIENT_TXN_GRACE), so that each reports its outcome to the
        // notifier instead of being sent again, as a new transaction,
        // through another edge.
        let until = Instant::now() + CLIENT_TXN_GRACE;
        while Instant::now() < until
            && !self
                .client_txns
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = stop_receiving.send(true);
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
            let arrival = self
                .server_txns
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .arrive(key, started);
            match arrival {
                Arrival::New => {}
                Arrival::Answered(resp) => {
                    self.metrics.edge_retransmissions.inc();
                    self.send_src(src, resp);
                    return;
                }
                Arrival::InProgress => {
                    self.metrics.edge_retransmissions.inc();
                    return; // still working on it
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
            let keep = match src.transport {
                Transport::Udp => Keep::Udp,
                Transport::Tcp | Transport::Tls | Transport::Ws | Transport::Wss => Keep::Tcp,
            };
            self.server_txns
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .answered(key, bytes.clone(), keep, Instant::now());
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

    /// The answer to OPTIONS: what we serve, or 503 while draining (SIP
    /// load balancers take the node out).
    fn options(&self, req: &Request, src: Source) -> ResponseBuilder {
        let required = self.unsupported(req);
        if !required.is_empty() {
            return self.reject(
                req,
                src,
                Rejection::BadExtension {
                    unsupported: required.join(", "),
                },
            );
        }
        if self.draining.load(Ordering::SeqCst) {
            return self.reject(req, src, Rejection::Draining);
        }
        self.reply(req, src, 200, "OK")
            .header("Allow", ALLOW)
            .header("Allow-Events", self.cfg.packages.allow_events())
            .header(
                "Accept",
                "application/pidf+xml, application/cpim-pidf+xml, text/plain, message/cpim",
            )
            .header("Supported", self.supported())
    }

    /// Option tags we support: `eventlist` when resource lists are served.
    fn supported(&self) -> &'static str {
        if self.cfg.lists.current().is_empty() {
            ""
        } else {
            "eventlist"
        }
    }

    /// The option tags of a request's Require that we do not support.
    fn unsupported(&self, req: &Request) -> Vec<String> {
        let ours = self.supported();
        req.list("Require")
            .into_iter()
            .filter(|t| ours.is_empty() || !t.eq_ignore_ascii_case(ours))
            .collect()
    }

    /// A UDP OPTIONS answered on the receive path at once, without a task,
    /// an in-flight permit or the transaction table (stateless: a
    /// retransmission is answered again): load balancers and monitoring
    /// probe with it, and must get an answer also while the edge sheds
    /// everything else.
    fn options_now(&self, data: &[u8], src: Source) {
        let started = Instant::now();
        let req = match parse(data, TransportKind::Datagram, self.cfg.max_message) {
            Ok(Message::Request(r)) => r,
            Ok(Message::Response(_)) => return,
            Err(e) => {
                self.answer_parse_error(&e, src);
                return;
            }
        };
        self.metrics
            .edge_requests
            .with_label_values(&["OPTIONS"])
            .inc();
        let resp = self.options(&req, src);
        let code = resp.code();
        self.send_src(src, Bytes::from(resp.encode()));
        self.metrics
            .edge_responses
            .with_label_values(&["OPTIONS", status_class(code)])
            .inc();
        self.metrics
            .edge_transaction_seconds
            .with_label_values(&["OPTIONS"])
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
        let host = self.names.sent_by(src.local, src.remote);
        match src.transport {
            Transport::Udp => format!("<sip:{host}>"),
            Transport::Tcp => format!("<sip:{host};transport=tcp>"),
            Transport::Tls => format!("<sip:{host};transport=tls>"),
            Transport::Ws => format!("<sip:{host};transport=ws>"),
            Transport::Wss => format!("<sip:{host};transport=wss>"),
        }
    }

    /// The flow a request arrived on, sealed: an edge sends what the bus
    /// asks for only through flows an edge of this cluster built.
    fn flow(&self, src: Source) -> Flow {
        Flow {
            transport: src.transport,
            remote: src.remote,
            local: src.local,
            edge: self.cfg.id.clone(),
            conn: src.conn,
            seal: Some(self.cfg.sealer.seal(src.transport, src.remote)),
        }
    }

    async fn handle(self: &Arc<Self>, req: &Request, src: Source) -> ResponseBuilder {
        // Require / Proxy-Require: we support only `eventlist`, when lists
        // are served (RFC 3261 §8.2.2.3).
        let required = self.unsupported(req);
        if !required.is_empty() && !req.method.is(rsip::Method::Cancel) {
            return self.reject(
                req,
                src,
                Rejection::BadExtension {
                    unsupported: required.join(", "),
                },
            );
        }
        let method = match &req.method {
            Method::Known(m) => *m,
            Method::Extension(_) => {
                return self.reject(req, src, Rejection::NotImplemented { allow: ALLOW });
            }
        };
        match method {
            rsip::Method::Options => self.options(req, src),
            // Overload at its source: a PUBLISH makes NOTIFYs for every
            // watcher; while this edge has more of its own requests (NOTIFYs,
            // MESSAGEs) in flight than it can see through, new ones wait.
            rsip::Method::Publish if self.shed_publish(src.remote.ip()) => {
                self.drop_counted("notify_backlog");
                self.reject(req, src, Rejection::Overloaded)
            }
            rsip::Method::Register
            | rsip::Method::Publish
            | rsip::Method::Subscribe
            | rsip::Method::Message => {
                // A trusted network's PUBLISH is taken unchallenged, for
                // any local AoR (`--trusted-publisher`).
                let trusted_source =
                    method == rsip::Method::Publish && self.cfg.trusted.network(src.remote.ip());
                let identity = if trusted_source {
                    None
                } else {
                    match self.authenticate(req, src, method) {
                        Ok(id) => id,
                        Err(resp) => return *resp,
                    }
                };
                match method {
                    rsip::Method::Register => self.register(req, src, identity).await,
                    rsip::Method::Publish => self.publish(req, src, identity).await,
                    rsip::Method::Subscribe => self.subscribe(req, src, identity).await,
                    _ => self.message(req, src, identity).await,
                }
            }
            rsip::Method::Notify | rsip::Method::Cancel => {
                self.reject(req, src, Rejection::NoSuchDialog)
            }
            _ => self.reject(req, src, Rejection::MethodNotAllowed { allow: ALLOW }),
        }
    }
}

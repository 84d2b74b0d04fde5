//! The engine: every user agent, subscription, transaction and timer of the
//! run, in one single-threaded state machine.
//!
//! Sockets feed it datagrams / stream messages ([`Engine::on_message`]) and a
//! 1 ms tick drives schedules and timers ([`Engine::tick`]); it answers by
//! writing to the shared sockets. Demultiplexing needs no lookup tables: our
//! Via branches are `z9hG4bKlt.<txn>.<gen>`, Call-IDs `s<sub>.<run>` /
//! `m<msg>.<run>` name the dialog or message directly. Timers live in one
//! binary heap (lazy cancellation by generation numbers).

use crate::canary::{self, Counters, Dialog, Messages, MsgNext};
use crate::config::{Settings, Transport};
use crate::digest::{self, Session};
use crate::rng::{Rng, Zipf};
use crate::scan::{self, Scanned, Start};
use crate::stats::{self, Stats, M};
use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::io::Write;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

const T1_MS: u64 = 500;
const T2_MS: u64 = 4000;
const TIMER_F_US: u64 = 32_000_000;
const BEHIND_US: u64 = 10_000;
/// Most scheduled sends per tick (the rest go out on the next ticks, late).
const MAX_BURST: u32 = 5000;
/// Our Via branches: `z9hG4bKlt.<txn>.<gen>` (see [`Engine::request_head`]).
const BRANCH_PREFIX: &str = "z9hG4bKlt.";
/// NOTIFY faults described on stderr, at most.
const FAULTS_LOGGED: u32 = 20;

/// Outgoing bytes of one TCP connection, flushed by its writer task.
#[derive(Default)]
pub struct TcpOut {
    pub buf: RefCell<Vec<u8>>,
    pub wake: tokio::sync::Notify,
    pub closed: Cell<bool>,
}

pub enum Wire {
    /// Sends go straight to the kernel (a non-blocking std socket sharing
    /// the reader's file description): no readiness bookkeeping per send.
    Udp(Rc<std::net::UdpSocket>),
    Tcp(Rc<TcpOut>),
}

pub struct Endpoint {
    pub wire: Wire,
    /// `ip:port` for Via and Contact.
    pub host: String,
    /// The target a TCP connection goes to (index into the targets; UDP
    /// sockets reach every target, their UAs say which).
    pub target: u32,
}

/// The dialog generation in a SUBSCRIBE Call-ID: `s<sub>.<run>` for the
/// first dialog, `s<sub>-<gen>.<run>` for the ones made after a move.
struct DialogGen(u32);

impl std::fmt::Display for DialogGen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0 > 0 {
            write!(f, "-{}", self.0)?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Register,
    Publish,
    Subscribe,
    Steady,
    Drain,
    Unsubscribe,
    Cleanup,
    Done,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Register => "register",
            Phase::Publish => "publish",
            Phase::Subscribe => "subscribe",
            Phase::Steady => "steady",
            Phase::Drain => "drain",
            Phase::Unsubscribe => "unsubscribe",
            Phase::Cleanup => "cleanup",
            Phase::Done => "done",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Txn {
        idx: u32,
        gen: u32,
    },
    RegRefresh {
        ua: u32,
        gen: u32,
    },
    PubRefresh {
        ua: u32,
        gen: u32,
    },
    SubRefresh {
        sub: u32,
        gen: u32,
    },
    CheckPub {
        ua: u32,
        seq: u64,
        ack_us: u64,
    },
    /// `dgen`: the dialog generation (a move makes a new dialog).
    CheckSub {
        sub: u32,
        dgen: u32,
    },
    CheckFinal {
        sub: u32,
    },
    CheckMsg {
        id: u64,
    },
}

impl Timer {
    fn is_check(&self) -> bool {
        matches!(
            self,
            Timer::CheckPub { .. }
                | Timer::CheckSub { .. }
                | Timer::CheckFinal { .. }
                | Timer::CheckMsg { .. }
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Register {
        ua: u32,
        expires: u32,
    },
    /// `seq` > 0: a new document; 0: a refresh (or removal with expires 0).
    Publish {
        ua: u32,
        seq: u64,
        expires: u32,
    },
    Subscribe {
        sub: u32,
        expires: u32,
        initial: bool,
    },
    Message {
        id: u64,
        from: u32,
        to: u32,
    },
}

impl Kind {
    fn method(self) -> M {
        match self {
            Kind::Register { .. } => M::Register,
            Kind::Publish { .. } => M::Publish,
            Kind::Subscribe { .. } => M::Subscribe,
            Kind::Message { .. } => M::Message,
        }
    }
}

struct Txn {
    live: bool,
    gen: u32,
    kind: Kind,
    ep: u32,
    attempt: u8,
    creds: bool,
    first_us: u64,
    interval_ms: u64,
    deadline_us: u64,
    /// Where the request goes (and its retransmissions).
    to: SocketAddr,
    data: Vec<u8>,
}

struct Ua {
    name: Box<str>,
    ep: u32,
    password: Option<Box<str>>,
    auth: Option<Box<Session>>,
    registered: bool,
    reg_busy: bool,
    reg_cseq: u32,
    reg_gen: u32,
    etag: Option<Box<str>>,
    pub_busy: bool,
    pub_cseq: u32,
    pub_gen: u32,
    seq_sent: u64,
    seq_acked: u64,
    /// (seq, send time µs) of the last few changes, for change→NOTIFY latency.
    sent_at: [(u64, u64); 4],
    gone: bool,
    /// Index of the target this UA talks to.
    target: u32,
    /// A Contact of a dead target's connection, removed with the next REGISTER.
    old_host: Option<Box<str>>,
    /// When the UA last moved to another target (µs, 0 = never).
    moved_us: u64,
    /// Re-PUBLISHing after a move: a 412 is expected (a PUBLISH lost with
    /// the dead target may have changed the entity-tag), not an error.
    recovering: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SubState {
    Idle,
    Pending,
    Active,
    Unsubscribing,
    Ended,
    Failed,
}

struct Sub {
    watcher: u32,
    presentity: u32,
    state: SubState,
    busy: bool,
    cseq: u32,
    gen: u32,
    remote_tag: Option<Box<str>>,
    established_us: u64,
    expect_seq: u64,
    final_wait: bool,
    dialog: Dialog,
    /// Dialog generation: 0 at first, +1 each time the watcher moves to
    /// another target and subscribes again (in the Call-ID).
    dgen: u32,
}

pub struct Engine {
    s: Settings,
    run: String,
    targets: Vec<SocketAddr>,
    /// Targets whose TCP connection closed.
    dead: Vec<bool>,
    eps: Vec<Endpoint>,
    uas: Vec<Ua>,
    subs: Vec<Sub>,
    watchers: Vec<Vec<u32>>,
    txns: Vec<Txn>,
    free: Vec<u32>,
    live_txns: u32,
    live_by: [u32; 4],
    heap: BinaryHeap<Reverse<(u64, Timer)>>,
    pending_checks: u64,
    messages: Messages,
    next_msg: u64,
    pub phase: Phase,
    phase_start_us: u64,
    phase_sent: u64,
    cursor: u32,
    steady_start_us: u64,
    steady_end_us: u64,
    pub_slots: u64,
    msg_slots: u64,
    final_pending: u64,
    pub canary: Counters,
    pub stats: Stats,
    rng: Rng,
    start: Instant,
    buf: Vec<u8>,
    next_second_us: u64,
    last_settle_us: u64,
    progress: Option<bool>,
    /// Set by Ctrl-C: 1 = end the steady state now, 2 = stop at once.
    pub stop: Rc<Cell<u8>>,
    tty: bool,
}

impl Engine {
    pub fn new(
        s: Settings,
        targets: Vec<SocketAddr>,
        eps: Vec<Endpoint>,
        progress: Option<bool>,
    ) -> Engine {
        let n_targets = targets.len().max(1) as u32;
        let mut rng = Rng::new(s.seed);
        let run = format!("{:08x}", rng.next_u64() as u32);
        let n = s.users;
        let mut uas = Vec::with_capacity(n as usize);
        for i in 0..n {
            let name = s.user(i);
            let password = s.password_of(&name).map(String::into_boxed_str);
            let target = i % n_targets;
            uas.push(Ua {
                name: name.into_boxed_str(),
                ep: Self::ep_for(&eps, s.transport, n_targets, i, target),
                password,
                auth: None,
                registered: false,
                reg_busy: false,
                reg_cseq: 0,
                reg_gen: 0,
                etag: None,
                pub_busy: false,
                pub_cseq: 0,
                pub_gen: 0,
                seq_sent: 0,
                seq_acked: 0,
                sent_at: [(0, 0); 4],
                gone: false,
                target,
                old_host: None,
                moved_us: 0,
                recovering: false,
            });
        }
        // Invariant: `subs` is sorted by watcher (made only here, watcher by
        // watcher, never reordered), so a watcher's subscriptions are one
        // range, which `resume` finds by bisection.
        let mut subs = Vec::new();
        let mut watchers: Vec<Vec<u32>> = vec![Vec::new(); n as usize];
        let zipf = (s.skew > 0.0).then(|| Zipf::new(n as usize, s.skew));
        let mut set: Vec<u32> = Vec::new();
        for w in 0..n {
            set.clear();
            set.extend((0..s.receptionists).filter(|r| *r != w));
            let mut picked = 0;
            let mut tries = 0;
            while picked < s.buddies && tries < 100 * s.buddies.max(1) {
                tries += 1;
                let p = match &zipf {
                    Some(z) => z.sample(&mut rng) as u32,
                    None => rng.below(u64::from(n)) as u32,
                };
                if p != w && !set.contains(&p) {
                    set.push(p);
                    picked += 1;
                }
            }
            for &p in &set {
                watchers[p as usize].push(subs.len() as u32);
                subs.push(Sub {
                    watcher: w,
                    presentity: p,
                    state: SubState::Idle,
                    busy: false,
                    cseq: 0,
                    gen: 0,
                    remote_tag: None,
                    established_us: u64::MAX,
                    expect_seq: 0,
                    final_wait: false,
                    dialog: Dialog::default(),
                    dgen: 0,
                });
            }
        }
        debug_assert!(subs.is_sorted_by_key(|sb: &Sub| sb.watcher));
        use std::io::IsTerminal;
        Engine {
            run,
            dead: vec![false; targets.len()],
            targets,
            eps,
            uas,
            subs,
            watchers,
            txns: Vec::new(),
            free: Vec::new(),
            live_txns: 0,
            live_by: [0; 4],
            heap: BinaryHeap::new(),
            pending_checks: 0,
            messages: Messages::default(),
            next_msg: 1,
            phase: Phase::Register,
            phase_start_us: 0,
            phase_sent: 0,
            cursor: 0,
            steady_start_us: 0,
            steady_end_us: 0,
            pub_slots: 0,
            msg_slots: 0,
            final_pending: 0,
            canary: Counters::default(),
            stats: Stats::default(),
            rng,
            start: Instant::now(),
            buf: Vec::with_capacity(2048),
            next_second_us: 1_000_000,
            last_settle_us: 0,
            progress,
            stop: Rc::new(Cell::new(0)),
            tty: std::io::stderr().is_terminal(),
            s,
        }
    }

    /// The endpoint of UA `ua` talking to `target`: over UDP the UA keeps
    /// its socket; over TCP it takes one of that target's connections (they
    /// are grouped by target).
    fn ep_for(eps: &[Endpoint], tp: Transport, n_targets: u32, ua: u32, target: u32) -> u32 {
        let n = eps.len().max(1) as u32;
        match tp {
            Transport::Udp => ua % n,
            Transport::Tcp | Transport::Tls | Transport::Ws | Transport::Wss => {
                let per = (n / n_targets).max(1);
                (target * per + (ua / n_targets) % per).min(n - 1)
            }
        }
    }

    /// The UA a transaction belongs to (a SUBSCRIBE's watcher, a MESSAGE's sender).
    fn ua_of(&self, kind: Kind) -> u32 {
        match kind {
            Kind::Register { ua, .. } | Kind::Publish { ua, .. } => ua,
            Kind::Subscribe { sub, .. } => self.subs[sub as usize].watcher,
            Kind::Message { from, .. } => from,
        }
    }

    pub fn subscriptions(&self) -> u64 {
        self.subs.len() as u64
    }

    fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    fn push(&mut self, at_us: u64, t: Timer) {
        if t.is_check() {
            self.pending_checks += 1;
        }
        self.heap.push(Reverse((at_us, t)));
    }

    fn deadline_us(&self) -> u64 {
        (self.s.notify_deadline * 1e6) as u64
    }

    /// When to refresh something that expires in `expires` s: 60–80 % of it.
    fn refresh_at(&mut self, now: u64, expires: u32) -> u64 {
        let f = 0.6 + 0.2 * self.rng.unit();
        now + (f64::from(expires) * f * 1e6) as u64
    }

    // ------------------------------------------------------------------
    // Sending
    // ------------------------------------------------------------------

    fn wire_send(eps: &[Endpoint], stats: &mut Stats, ep: u32, to: SocketAddr, data: &[u8]) {
        stats.wire_out += 1;
        let Some(e) = eps.get(ep as usize) else {
            stats.send_errors += 1;
            return;
        };
        match &e.wire {
            Wire::Udp(sock) => {
                if sock.send_to(data, to).is_err() {
                    stats.send_errors += 1;
                }
            }
            Wire::Tcp(out) => {
                if out.closed.get() {
                    stats.send_errors += 1;
                    return;
                }
                out.buf.borrow_mut().extend_from_slice(data);
                out.wake.notify_one();
            }
        }
    }

    fn alloc_txn(&mut self) -> u32 {
        if let Some(i) = self.free.pop() {
            return i;
        }
        self.txns.push(Txn {
            live: false,
            gen: 0,
            kind: Kind::Register { ua: 0, expires: 0 },
            ep: 0,
            attempt: 0,
            creds: false,
            first_us: 0,
            interval_ms: T1_MS,
            deadline_us: 0,
            to: SocketAddr::from(([0, 0, 0, 0], 0)),
            data: Vec::new(),
        });
        (self.txns.len() - 1) as u32
    }

    /// Start a client transaction for `kind` (attempt 0, or a retry after a challenge).
    fn start_txn(&mut self, kind: Kind, attempt: u8) {
        let now = self.now_us();
        let idx = self.alloc_txn();
        let gen = self.txns[idx as usize].gen.wrapping_add(1);
        let mut out = std::mem::take(&mut self.txns[idx as usize].data);
        out.clear();
        let (ep, creds) = self.build(kind, idx, gen, now, attempt, &mut out);
        let m = kind.method();
        let st = &mut self.stats.methods[m as usize];
        st.sent += 1;
        if self.phase == Phase::Steady {
            st.steady_sent += 1;
        }
        self.stats.w_requests += 1;
        if m == M::Publish {
            self.stats.w_publishes += 1;
        }
        let to = self.targets[self.uas[self.ua_of(kind) as usize].target as usize];
        Self::wire_send(&self.eps, &mut self.stats, ep, to, &out);
        let udp = self.s.transport == Transport::Udp;
        let t = &mut self.txns[idx as usize];
        *t = Txn {
            live: true,
            gen,
            kind,
            ep,
            attempt,
            creds,
            first_us: now,
            interval_ms: T1_MS,
            deadline_us: now + TIMER_F_US,
            to,
            data: out,
        };
        self.live_txns += 1;
        self.live_by[m as usize] += 1;
        let at = if udp {
            now + T1_MS * 1000
        } else {
            now + TIMER_F_US
        };
        self.push(at, Timer::Txn { idx, gen });
    }

    fn finish_txn(&mut self, idx: u32) -> Option<Txn> {
        let t = self.txns.get_mut(idx as usize)?;
        if !t.live {
            return None;
        }
        t.live = false;
        let copy = Txn {
            data: Vec::new(),
            ..*t
        };
        self.live_txns -= 1;
        self.live_by[copy.kind.method() as usize] -= 1;
        self.free.push(idx);
        Some(copy)
    }

    /// The start of every request: request line, Via with our branch for
    /// transaction `idx` generation `gen` (what responses are matched by,
    /// [`Engine::txn_of_branch`]) and Max-Forwards.
    fn request_head(
        out: &mut Vec<u8>,
        method: &str,
        ruri: &str,
        tp: Transport,
        host: &str,
        idx: u32,
        gen: u32,
    ) {
        let _ = write!(
            out,
            "{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/{} {host};branch={BRANCH_PREFIX}{idx}.{gen};rport\r\nMax-Forwards: 70\r\n",
            tp.via()
        );
    }

    /// Write the request for `kind`; returns (endpoint, carried credentials).
    fn build(
        &mut self,
        kind: Kind,
        idx: u32,
        gen: u32,
        now: u64,
        attempt: u8,
        out: &mut Vec<u8>,
    ) -> (u32, bool) {
        let d = self.s.domain.clone();
        let tp = self.s.transport;
        let tcp_param = match tp {
            Transport::Udp => "",
            Transport::Tcp => ";transport=tcp",
            Transport::Tls => ";transport=tls",
            // RFC 7118: `ws` for both (the secure one is told by sips:).
            Transport::Ws | Transport::Wss => ";transport=ws",
        };
        let run = &self.run;
        match kind {
            Kind::Register { ua, expires } => {
                let u = &mut self.uas[ua as usize];
                u.reg_cseq += 1;
                let host = &self.eps[u.ep as usize].host;
                let ruri = format!("sip:{d}");
                Self::request_head(out, "REGISTER", &ruri, tp, host, idx, gen);
                let _ = write!(
                    out,
                    "From: <sip:{n}@{d}>;tag=r{ua}\r\nTo: <sip:{n}@{d}>\r\nCall-ID: r{ua}.{run}\r\nCSeq: {} REGISTER\r\nContact: <sip:{n}@{host}{tcp_param}>;expires={expires}\r\n",
                    u.reg_cseq,
                    n = u.name,
                );
                // After a move: drop the binding through the dead target.
                if let Some(old) = u.old_host.as_deref().filter(|o| *o != host.as_str()) {
                    let _ = write!(
                        out,
                        "Contact: <sip:{n}@{old}{tcp_param}>;expires=0\r\n",
                        n = u.name
                    );
                }
                let _ = write!(out, "Expires: {expires}\r\n");
                let ep = u.ep;
                let creds = self.auth_header(ua, "REGISTER", &ruri, false, out);
                out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
                (ep, creds)
            }
            Kind::Publish { ua, seq, expires } => {
                let u = &mut self.uas[ua as usize];
                u.pub_cseq += 1;
                let host = &self.eps[u.ep as usize].host;
                let ruri = format!("sip:{}@{d}", u.name);
                Self::request_head(out, "PUBLISH", &ruri, tp, host, idx, gen);
                let _ = write!(
                    out,
                    "From: <{ruri}>;tag=p{ua}\r\nTo: <{ruri}>\r\nCall-ID: p{ua}.{run}\r\nCSeq: {} PUBLISH\r\nEvent: presence\r\nExpires: {expires}\r\n",
                    u.pub_cseq,
                );
                if let Some(etag) = &u.etag {
                    let _ = write!(out, "SIP-If-Match: {etag}\r\n");
                }
                let body = (seq > 0 || u.etag.is_none()).then(|| {
                    let seq = seq.max(u.seq_sent);
                    format!(
                        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"{ruri}\"><tuple id=\"lt\"><status><basic>{}</basic></status></tuple>{}</presence>",
                        if seq % 2 == 1 { "open" } else { "closed" },
                        canary::note(run, seq)
                    )
                });
                if seq > 0 && attempt == 0 {
                    let slot = (seq % 4) as usize;
                    u.sent_at[slot] = (seq, now);
                }
                let ep = u.ep;
                let creds = self.auth_header(ua, "PUBLISH", &ruri, false, out);
                match body {
                    Some(b) => {
                        let _ = write!(
                            out,
                            "Content-Type: application/pidf+xml\r\nContent-Length: {}\r\n\r\n{b}",
                            b.len()
                        );
                    }
                    None => out.extend_from_slice(b"Content-Length: 0\r\n\r\n"),
                }
                (ep, creds)
            }
            Kind::Subscribe { sub, expires, .. } => {
                let sb = &mut self.subs[sub as usize];
                sb.cseq += 1;
                let w = &self.uas[sb.watcher as usize];
                let p = &self.uas[sb.presentity as usize];
                let host = &self.eps[w.ep as usize].host;
                let ruri = format!("sip:{}@{d}", p.name);
                Self::request_head(out, "SUBSCRIBE", &ruri, tp, host, idx, gen);
                let _ = write!(out, "From: <sip:{}@{d}>;tag=s{sub}\r\nTo: <{ruri}>", w.name);
                if let Some(tag) = &sb.remote_tag {
                    let _ = write!(out, ";tag={tag}");
                }
                let _ = write!(
                    out,
                    "\r\nCall-ID: s{sub}{}.{run}\r\nCSeq: {} SUBSCRIBE\r\nEvent: presence\r\nAccept: application/pidf+xml\r\nContact: <sip:{}@{host}{tcp_param}>\r\nExpires: {expires}\r\n",
                    DialogGen(sb.dgen),
                    sb.cseq,
                    w.name
                );
                let (ep, watcher) = (w.ep, sb.watcher);
                let creds = self.auth_header(watcher, "SUBSCRIBE", &ruri, false, out);
                out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
                (ep, creds)
            }
            Kind::Message { id, from, to } => {
                let f = &self.uas[from as usize];
                let t = &self.uas[to as usize];
                let host = &self.eps[f.ep as usize].host;
                let ruri = format!("sip:{}@{d}", t.name);
                let body = format!("lt {run} {id}");
                Self::request_head(out, "MESSAGE", &ruri, tp, host, idx, gen);
                let _ = write!(
                    out,
                    "From: <sip:{}@{d}>;tag=m{id}\r\nTo: <{ruri}>\r\nCall-ID: m{id}.{run}\r\nCSeq: {} MESSAGE\r\nContent-Type: text/plain\r\n",
                    f.name,
                    u32::from(attempt) + 1,
                );
                let ep = f.ep;
                let creds = self.auth_header(from, "MESSAGE", &ruri, true, out);
                let _ = write!(out, "Content-Length: {}\r\n\r\n{body}", body.len());
                (ep, creds)
            }
        }
    }

    /// Add (Proxy-)Authorization if the UA holds a nonce; `true` if it did.
    fn auth_header(
        &mut self,
        ua: u32,
        method: &str,
        uri: &str,
        proxy: bool,
        out: &mut Vec<u8>,
    ) -> bool {
        let cnonce = self.rng.next_u64();
        let u = &mut self.uas[ua as usize];
        let Some(sess) = u.auth.as_mut() else {
            return false;
        };
        let v = sess.authorization(&u.name, method, uri, cnonce);
        let name = if proxy {
            "Proxy-Authorization"
        } else {
            "Authorization"
        };
        let _ = write!(out, "{name}: {v}\r\n");
        true
    }

    // ------------------------------------------------------------------
    // Receiving
    // ------------------------------------------------------------------

    /// One datagram or stream message from endpoint `ep`, sent by `from`.
    pub fn on_message(&mut self, ep: u32, from: SocketAddr, data: &[u8]) {
        self.stats.wire_in += 1;
        let Some(s) = scan::scan(data) else {
            self.stats.unparseable += 1;
            return;
        };
        match s.start {
            Start::Response { code } => self.on_response(code, &s),
            Start::Request { method, uri } => self.on_request(ep, from, method, uri, &s),
        }
    }

    pub fn on_tcp_closed(&mut self, ep: u32) {
        self.stats.tcp_closed += 1;
        let mut target = None;
        if let Some(Endpoint {
            wire: Wire::Tcp(out),
            target: t,
            ..
        }) = self.eps.get(ep as usize)
        {
            out.closed.set(true);
            target = Some(*t);
        }
        // With several targets the connection's target counts as dead and
        // its UAs move to the next one; with one, this is an error.
        let elsewhere = |t: u32| (0..self.targets.len()).any(|x| x != t as usize && !self.dead[x]);
        match target {
            Some(t) if elsewhere(t) && self.phase != Phase::Done => {
                self.dead[t as usize] = true;
                let now = self.now_us();
                for ua in 0..self.uas.len() as u32 {
                    if self.uas[ua as usize].ep == ep {
                        self.move_ua(ua, now);
                    }
                }
            }
            _ => self.stats.errors += 1,
        }
    }

    /// Can UA `ua` move to another target (several given, one not dead)?
    fn can_move(&self, ua: u32) -> bool {
        let cur = self.uas[ua as usize].target as usize;
        self.phase != Phase::Done && (0..self.targets.len()).any(|t| t != cur && !self.dead[t])
    }

    /// UA `ua`'s target is gone: abandon its transactions there, move it to
    /// the next live target and REGISTER, PUBLISH and SUBSCRIBE afresh (new
    /// dialogs; the old ones are no longer checked, their NOTIFYs get 481).
    fn move_ua(&mut self, ua: u32, now: u64) {
        if !self.can_move(ua) {
            return;
        }
        let n = self.targets.len() as u32;
        let cur = self.uas[ua as usize].target;
        let Some(next) = (1..n)
            .map(|k| (cur + k) % n)
            .find(|t| !self.dead[*t as usize])
        else {
            return;
        };
        self.stats.failover.moves += 1;
        let ep = Self::ep_for(&self.eps, self.s.transport, n, ua, next);
        let old_ep = self.uas[ua as usize].ep;
        let old_host: Box<str> = self.eps[old_ep as usize].host.as_str().into();
        let u = &mut self.uas[ua as usize];
        u.target = next;
        u.ep = ep;
        u.moved_us = now.max(1);
        if u.old_host.is_none() {
            u.old_host = Some(old_host);
        }
        for idx in 0..self.txns.len() as u32 {
            let t = &self.txns[idx as usize];
            if t.live && self.ua_of(t.kind) == ua {
                if let Some(t) = self.finish_txn(idx) {
                    self.abandon(t);
                }
            }
        }
        self.resume(ua);
    }

    /// A transaction given up on a dead target (not an error).
    fn abandon(&mut self, t: Txn) {
        self.stats.failover.abandoned_requests += 1;
        match t.kind {
            Kind::Register { ua, .. } => self.uas[ua as usize].reg_busy = false,
            Kind::Publish { ua, .. } => self.uas[ua as usize].pub_busy = false,
            Kind::Subscribe { sub, .. } => self.subs[sub as usize].busy = false,
            Kind::Message { id, .. } => {
                self.stats.failover.messages_while_moving += 1;
                self.messages.forget(id);
            }
        }
    }

    /// After a move: REGISTER, PUBLISH and SUBSCRIBE again through the new
    /// target, as far as the run had got for this UA.
    fn resume(&mut self, ua: u32) {
        let u = &self.uas[ua as usize];
        let (gone, registered, reg_tried, has_pub, pub_tried) = (
            u.gone,
            u.registered,
            u.reg_cseq > 0,
            u.etag.is_some(),
            u.pub_cseq > 0,
        );
        if gone {
            // Tearing down: finish that through the new target.
            if has_pub {
                self.uas[ua as usize].pub_busy = true;
                self.start_txn(
                    Kind::Publish {
                        ua,
                        seq: 0,
                        expires: 0,
                    },
                    0,
                );
            }
            if registered {
                self.uas[ua as usize].reg_busy = true;
                self.start_txn(Kind::Register { ua, expires: 0 }, 0);
            }
            return;
        }
        if reg_tried {
            self.uas[ua as usize].reg_busy = true;
            let expires = self.s.register_expires;
            self.start_txn(Kind::Register { ua, expires }, 0);
        }
        if pub_tried {
            // A new document: whatever the lost PUBLISH did, watchers must
            // end up at this one.
            let u = &mut self.uas[ua as usize];
            u.pub_busy = true;
            u.recovering = true;
            u.seq_sent += 1;
            let seq = u.seq_sent;
            let expires = self.s.publish_expires;
            self.start_txn(Kind::Publish { ua, seq, expires }, 0);
        }
        // Subscriptions are sorted by watcher (see `Engine::new`).
        let lo = self.subs.partition_point(|sb| sb.watcher < ua);
        let hi = lo + self.subs[lo..].partition_point(|sb| sb.watcher == ua);
        for sub in lo as u32..hi as u32 {
            let sb = &mut self.subs[sub as usize];
            match sb.state {
                SubState::Pending | SubState::Active => {
                    sb.dgen += 1;
                    sb.cseq = 0;
                    sb.remote_tag = None;
                    sb.established_us = u64::MAX;
                    sb.expect_seq = 0;
                    sb.dialog = Dialog::default();
                    sb.state = SubState::Pending;
                    sb.busy = true;
                    self.stats.failover.resubscribed += 1;
                    let expires = self.s.subscribe_expires;
                    self.start_txn(
                        Kind::Subscribe {
                            sub,
                            expires,
                            initial: true,
                        },
                        0,
                    );
                }
                SubState::Unsubscribing => {
                    // Its final NOTIFY went to the dead target.
                    if sb.final_wait {
                        sb.final_wait = false;
                        self.final_pending -= 1;
                    }
                    sb.state = SubState::Ended;
                }
                SubState::Idle | SubState::Ended | SubState::Failed => {}
            }
        }
    }

    /// A MESSAGE to `to` sent at `sent_us` failed because `to` was moving
    /// between targets (within a notify deadline of its move).
    fn to_moving(&self, to: u32, sent_us: u64) -> bool {
        let moved = self.uas[to as usize].moved_us;
        let dl = self.deadline_us();
        moved > 0 && moved + dl >= sent_us && sent_us + dl >= moved
    }

    fn txn_of_branch(branch: &[u8]) -> Option<(u32, u32)> {
        let rest = branch.strip_prefix(BRANCH_PREFIX.as_bytes())?;
        let dot = rest.iter().position(|b| *b == b'.')?;
        Some((
            scan::parse_u32(&rest[..dot])?,
            scan::parse_u32(&rest[dot + 1..])?,
        ))
    }

    fn on_response(&mut self, code: u16, s: &Scanned<'_>) {
        if code < 200 {
            return;
        }
        let Some((idx, gen)) = s.branch().and_then(Self::txn_of_branch) else {
            self.stats.unexpected_responses += 1;
            return;
        };
        let matches = self
            .txns
            .get(idx as usize)
            .is_some_and(|t| t.live && t.gen == gen);
        if !matches {
            // A late answer to a retransmission of a finished transaction.
            self.stats.unexpected_responses += 1;
            return;
        }
        let Some(t) = self.finish_txn(idx) else {
            return;
        };
        let now = self.now_us();
        let m = t.kind.method();
        self.stats.record_request(m, now.saturating_sub(t.first_us));
        *self.stats.methods[m as usize]
            .codes
            .entry(code)
            .or_insert(0) += 1;
        let ok = (200..300).contains(&code);
        if (code == 401 || code == 407) && self.challenged(&t, s) {
            return;
        }
        let dl = self.deadline_us();
        match t.kind {
            Kind::Register { ua, expires } => {
                let u = &mut self.uas[ua as usize];
                u.reg_busy = false;
                if ok {
                    u.registered = expires > 0;
                    u.old_host = None;
                    if expires > 0 && !u.gone {
                        u.reg_gen += 1;
                        let gen = u.reg_gen;
                        let at = self.refresh_at(now, expires);
                        self.push(at, Timer::RegRefresh { ua, gen });
                    }
                } else {
                    self.fail_request(code);
                    self.retry_later(Timer::RegRefresh { ua, gen: 0 }, now);
                }
            }
            Kind::Publish { ua, seq, expires } => {
                let u = &mut self.uas[ua as usize];
                u.pub_busy = false;
                let recovering = std::mem::take(&mut u.recovering);
                if ok {
                    u.etag = if expires > 0 {
                        s.etag
                            .and_then(|e| std::str::from_utf8(e).ok())
                            .map(Box::from)
                    } else {
                        None
                    };
                    if expires > 0 && !u.gone {
                        u.pub_gen += 1;
                        let gen = u.pub_gen;
                        let e = s.expires().map_or(expires, |g| g.min(expires)).max(1);
                        let at = self.refresh_at(now, e);
                        self.push(at, Timer::PubRefresh { ua, gen });
                    }
                    if seq > 0 {
                        let u = &mut self.uas[ua as usize];
                        u.seq_acked = u.seq_acked.max(seq);
                        self.push(
                            now + dl,
                            Timer::CheckPub {
                                ua,
                                seq,
                                ack_us: now,
                            },
                        );
                    }
                } else if code == 412 && expires > 0 {
                    // Our publication is gone at the server: publish afresh.
                    // (Expected after a move: a PUBLISH lost with the dead
                    // target may have changed the entity-tag.)
                    if !recovering {
                        self.fail_request(code);
                    }
                    let u = &mut self.uas[ua as usize];
                    u.etag = None;
                    u.pub_busy = true;
                    u.seq_sent += 1;
                    let seq = u.seq_sent;
                    self.start_txn(Kind::Publish { ua, seq, expires }, 0);
                } else {
                    self.fail_request(code);
                    if expires > 0 {
                        self.retry_later(Timer::PubRefresh { ua, gen: 0 }, now);
                    }
                }
            }
            Kind::Subscribe {
                sub,
                expires,
                initial,
            } => self.on_subscribe_answer(sub, expires, initial, code, s, now),
            Kind::Message { id, from, to } => {
                if !ok && (self.to_moving(to, t.first_us) || self.to_moving(from, t.first_us)) {
                    // Its target's binding led to a dead target: the sender
                    // knows it was not delivered.
                    self.stats.failover.messages_while_moving += 1;
                    self.messages.forget(id);
                } else if self.messages.final_answer(id, code, &mut self.canary)
                    == MsgNext::CheckLater
                {
                    self.push(now + dl, Timer::CheckMsg { id });
                }
            }
        }
    }

    fn fail_request(&mut self, _code: u16) {
        self.stats.errors += 1;
    }

    /// Try again in a second (a refresh that failed).
    fn retry_later(&mut self, t: Timer, now: u64) {
        let t = match t {
            Timer::RegRefresh { ua, .. } => {
                if self.uas[ua as usize].gone {
                    return;
                }
                Timer::RegRefresh {
                    ua,
                    gen: self.uas[ua as usize].reg_gen,
                }
            }
            Timer::PubRefresh { ua, .. } => {
                if self.uas[ua as usize].gone {
                    return;
                }
                Timer::PubRefresh {
                    ua,
                    gen: self.uas[ua as usize].pub_gen,
                }
            }
            Timer::SubRefresh { sub, .. } => Timer::SubRefresh {
                sub,
                gen: self.subs[sub as usize].gen,
            },
            other => other,
        };
        self.push(now + 1_000_000, t);
    }

    fn on_subscribe_answer(
        &mut self,
        sub: u32,
        expires: u32,
        initial: bool,
        code: u16,
        s: &Scanned<'_>,
        now: u64,
    ) {
        let dl = self.deadline_us();
        let acked = self.uas[self.subs[sub as usize].presentity as usize].seq_acked;
        let sb = &mut self.subs[sub as usize];
        sb.busy = false;
        let ok = (200..300).contains(&code);
        if expires == 0 {
            // un-SUBSCRIBE
            if ok {
                if sb.state == SubState::Unsubscribing {
                    sb.final_wait = true;
                    self.final_pending += 1;
                    self.push(now + dl, Timer::CheckFinal { sub });
                }
            } else {
                if code == 481 {
                    self.canary.refresh_481 += 1;
                } else {
                    self.fail_request(code);
                }
                self.subs[sub as usize].state = SubState::Ended;
            }
            return;
        }
        if ok {
            if sb.remote_tag.is_none() {
                sb.remote_tag = s
                    .to_tag()
                    .and_then(|t| std::str::from_utf8(t).ok())
                    .map(Box::from);
            }
            if initial && sb.state == SubState::Pending {
                sb.state = SubState::Active;
                sb.established_us = now;
                sb.expect_seq = acked;
                let dgen = sb.dgen;
                self.push(now + dl, Timer::CheckSub { sub, dgen });
            }
            let sb = &mut self.subs[sub as usize];
            if sb.state == SubState::Active {
                sb.gen += 1;
                let gen = sb.gen;
                let e = s.expires().map_or(expires, |g| g.min(expires)).max(1);
                let at = self.refresh_at(now, e);
                self.push(at, Timer::SubRefresh { sub, gen });
            }
        } else if code == 481 && !initial {
            self.canary.refresh_481 += 1;
            sb.state = SubState::Ended;
        } else {
            let state = sb.state;
            if initial {
                sb.state = SubState::Failed;
            }
            self.fail_request(code);
            if !initial && state == SubState::Active {
                self.retry_later(Timer::SubRefresh { sub, gen: 0 }, now);
            }
        }
    }

    /// A 401/407: answer it; `true` if the request went out again.
    fn challenged(&mut self, t: &Txn, s: &Scanned<'_>) -> bool {
        let ua = self.ua_of(t.kind);
        let Some(ch) = digest::choose(&s.challenges[..s.n_challenges], self.s.auth_algorithm)
        else {
            self.stats.auth_failures += 1;
            return false;
        };
        let u = &mut self.uas[ua as usize];
        let Some(pw) = u.password.clone() else {
            self.stats.auth_failures += 1;
            return false;
        };
        if t.attempt >= 3 {
            self.stats.auth_failures += 1;
            return false;
        }
        match u.auth.as_mut() {
            None => u.auth = Some(Box::new(Session::new(ch, &u.name, &pw))),
            Some(sess) => {
                if t.creds {
                    if !ch.stale {
                        // Our credentials were refused outright.
                        self.stats.auth_failures += 1;
                        return false;
                    }
                    sess.renew(ch, &u.name, &pw);
                }
                // Sent before we held a nonce: go again with the one we have.
            }
        }
        self.start_txn(t.kind, t.attempt + 1);
        true
    }

    fn on_request(
        &mut self,
        ep: u32,
        from: SocketAddr,
        method: &[u8],
        uri: &[u8],
        s: &Scanned<'_>,
    ) {
        match method {
            b"NOTIFY" => self.on_notify(ep, from, s),
            b"MESSAGE" => self.on_incoming_message(ep, from, uri, s),
            b"OPTIONS" => self.answer(ep, from, s, 200, "OK"),
            b"ACK" => {}
            _ => {
                self.stats.stray_requests += 1;
                self.answer(ep, from, s, 501, "Not Implemented");
            }
        }
    }

    /// `<prefix><n>.<run>` → n, if the run is ours.
    fn id_of_call(&self, call_id: &[u8], prefix: u8) -> Option<u64> {
        let rest = call_id.strip_prefix(&[prefix])?;
        let dot = rest.iter().position(|b| *b == b'.')?;
        if &rest[dot + 1..] != self.run.as_bytes() {
            return None;
        }
        scan::parse_u64(&rest[..dot])
    }

    /// `s<sub>[-<gen>].<run>` → (sub, dialog generation), if the run is ours.
    fn sub_of_call(&self, call_id: &[u8]) -> Option<(u32, u32)> {
        let rest = call_id.strip_prefix(b"s")?;
        let dot = rest.iter().position(|b| *b == b'.')?;
        if &rest[dot + 1..] != self.run.as_bytes() {
            return None;
        }
        let id = &rest[..dot];
        let (sub, gen) = match id.iter().position(|b| *b == b'-') {
            Some(i) => (&id[..i], scan::parse_u32(&id[i + 1..])?),
            None => (id, 0),
        };
        let sub = scan::parse_u32(sub)?;
        ((sub as usize) < self.subs.len()).then_some((sub, gen))
    }

    fn on_notify(&mut self, ep: u32, from: SocketAddr, s: &Scanned<'_>) {
        let sub = s.call_id().and_then(|c| self.sub_of_call(c));
        let (Some((sub, dgen)), Some((cseq, _))) = (sub, s.cseq()) else {
            self.stats.stray_requests += 1;
            self.answer(ep, from, s, 481, "Subscription Does Not Exist");
            return;
        };
        if dgen != self.subs[sub as usize].dgen {
            // A dialog given up when its watcher moved to another target.
            self.stats.failover.old_dialog_notifies += 1;
            self.answer(ep, from, s, 481, "Subscription Does Not Exist");
            return;
        }
        let branch = canary::hash(s.branch().unwrap_or_default());
        let (entity, seq) = canary::read_body(s.body, &self.run);
        let now = self.now_us();
        let sb = &mut self.subs[sub as usize];
        if matches!(
            sb.state,
            SubState::Ended | SubState::Failed | SubState::Idle
        ) {
            let v = sb.dialog.on_notify(cseq, branch, seq);
            if v == canary::Verdict::Retransmission {
                self.stats.notify_retransmissions += 1;
                self.stats.w_retrans += 1;
                self.answer(ep, from, s, 200, "OK");
            } else {
                self.canary.notify_after_termination += 1;
                self.answer(ep, from, s, 481, "Subscription Does Not Exist");
            }
            return;
        }
        let before = sb.dialog.last_seq;
        let before_cseq = sb.dialog.last_cseq();
        let v = sb.dialog.on_notify(cseq, branch, seq);
        Dialog::count(v, &mut self.canary);
        if !matches!(v, canary::Verdict::New | canary::Verdict::Retransmission)
            && self.stats.faults_logged < FAULTS_LOGGED
        {
            // The first few faults in detail, for whoever debugs the server.
            self.stats.faults_logged += 1;
            let sb = &self.subs[sub as usize];
            eprintln!(
                "canary: {v:?} at {:.3} s: dialog s{sub}{}.{} (watcher {} on target {}, presentity {}), CSeq {cseq} after {before_cseq:?}, SEQ {seq:?} after {before}, Via branch {}",
                now as f64 / 1e6,
                DialogGen(sb.dgen),
                self.run,
                self.uas[sb.watcher as usize].name,
                self.uas[sb.watcher as usize].target,
                self.uas[sb.presentity as usize].name,
                String::from_utf8_lossy(s.branch().unwrap_or_default()),
            );
        }
        if v == canary::Verdict::Retransmission {
            self.stats.notify_retransmissions += 1;
            self.stats.w_retrans += 1;
            self.answer(ep, from, s, 200, "OK");
            return;
        }
        self.stats.notifies += 1;
        self.stats.w_notifies += 1;
        if self.phase == Phase::Steady {
            self.stats.notifies_steady += 1;
        }
        let sb = &mut self.subs[sub as usize];
        let presentity = sb.presentity;
        let established = sb.established_us;
        if sb.remote_tag.is_none() {
            sb.remote_tag = s
                .from_tag()
                .and_then(|t| std::str::from_utf8(t).ok())
                .map(Box::from);
        }
        let terminated = s
            .sub_state
            .is_some_and(|v| v.len() >= 10 && v[..10].eq_ignore_ascii_case(b"terminated"));
        if terminated {
            if sb.state == SubState::Unsubscribing {
                if sb.final_wait {
                    sb.final_wait = false;
                    self.final_pending -= 1;
                }
            } else {
                self.canary.unexpected_termination += 1;
            }
            sb.state = SubState::Ended;
        }
        let p = &self.uas[presentity as usize];
        if let Some(e) = entity {
            let ok = e.strip_prefix(b"sip:").is_some_and(|rest| {
                rest.strip_prefix(p.name.as_bytes())
                    .is_some_and(|r| r.first() == Some(&b'@'))
            });
            if !ok {
                self.canary.wrong_presentity += 1;
            }
        }
        if v == canary::Verdict::New {
            if let Some(seq) = seq.filter(|q| *q > before) {
                // Only changes made while this watcher was subscribed: an
                // initial NOTIFY shows an older change, not a delivery delay.
                if let Some(&(_, t)) = p
                    .sent_at
                    .iter()
                    .find(|(q, t)| *q == seq && established <= *t)
                {
                    self.stats.record_notify(now.saturating_sub(t));
                }
            }
        }
        self.answer(ep, from, s, 200, "OK");
    }

    fn on_incoming_message(&mut self, ep: u32, from: SocketAddr, uri: &[u8], s: &Scanned<'_>) {
        let user = uri
            .strip_prefix(b"sip:")
            .and_then(|r| r.iter().position(|b| *b == b'@').map(|i| &r[..i]));
        let to = user.and_then(|u| self.s.index_of(u));
        let id = s.call_id().and_then(|c| self.id_of_call(c, b'm'));
        let branch = canary::hash(s.branch().unwrap_or_default());
        let ours = match (id, to) {
            (Some(id), Some(to)) => self.messages.received(id, to, branch, &mut self.canary),
            _ => false,
        };
        if ours {
            self.stats.messages_received += 1;
            self.stats.w_messages += 1;
        } else {
            self.stats.stray_requests += 1;
        }
        self.answer(ep, from, s, 200, "OK");
    }

    fn answer(&mut self, ep: u32, to: SocketAddr, s: &Scanned<'_>, code: u16, reason: &str) {
        let mut out = std::mem::take(&mut self.buf);
        out.clear();
        let _ = write!(out, "SIP/2.0 {code} {reason}\r\n");
        for v in &s.vias[..s.n_vias] {
            out.extend_from_slice(b"Via: ");
            out.extend_from_slice(v);
            out.extend_from_slice(b"\r\n");
        }
        for (name, v) in [
            (&b"From: "[..], s.from),
            (b"To: ", s.to),
            (b"Call-ID: ", s.call_id),
            (b"CSeq: ", s.cseq),
        ] {
            if let Some(v) = v {
                out.extend_from_slice(name);
                out.extend_from_slice(v);
                if name == b"To: " && s.to_tag().is_none() {
                    out.extend_from_slice(b";tag=lt");
                }
                out.extend_from_slice(b"\r\n");
            }
        }
        out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
        Self::wire_send(&self.eps, &mut self.stats, ep, to, &out);
        self.buf = out;
    }

    // ------------------------------------------------------------------
    // Time
    // ------------------------------------------------------------------

    /// Run timers and schedules; `true` when the run is over.
    pub fn tick(&mut self) -> bool {
        let now = self.now_us();
        match self.stop.get() {
            0 => {}
            1 => {
                if matches!(
                    self.phase,
                    Phase::Register | Phase::Publish | Phase::Subscribe | Phase::Steady
                ) {
                    self.enter(Phase::Drain, now);
                }
            }
            _ => {
                self.phase = Phase::Done;
            }
        }
        while let Some(Reverse((at, _))) = self.heap.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, t))) = self.heap.pop() else {
                break;
            };
            self.fire(t, now);
        }
        match self.phase {
            Phase::Register
            | Phase::Publish
            | Phase::Subscribe
            | Phase::Unsubscribe
            | Phase::Cleanup => self.setup_step(now),
            Phase::Steady => self.steady_step(now),
            Phase::Drain => self.drain_step(now),
            Phase::Done => {}
        }
        if now >= self.next_second_us {
            self.next_second_us += 1_000_000;
            let faults = self.canary.total();
            let sec = self.stats.roll(now as f64 / 1e6, self.phase.name(), faults);
            self.show_progress(&sec);
        }
        self.phase == Phase::Done
    }

    /// When the next [`Engine::tick`] is needed (µs since the start): the
    /// next timer, schedule slot or report second; 1 ms ahead while a setup
    /// phase or the drain paces itself.
    pub fn next_wake_us(&self) -> u64 {
        let now = self.now_us();
        let mut next = self.next_second_us;
        if let Some(Reverse((at, _))) = self.heap.peek() {
            next = next.min(*at);
        }
        match self.phase {
            Phase::Steady => {
                next = next.min(self.steady_start_us + (self.s.duration * 1e6) as u64);
                for (rate, slots) in [
                    (self.s.publish_rate, self.pub_slots),
                    (self.s.message_rate, self.msg_slots),
                ] {
                    if rate > 0.0 {
                        next = next.min(self.steady_start_us + (slots as f64 / rate * 1e6) as u64);
                    }
                }
            }
            Phase::Done => {}
            _ => next = next.min(now + 1000),
        }
        next.max(now + 1000)
    }

    /// The instant `us` after the start.
    pub fn instant_of(&self, us: u64) -> Instant {
        self.start + std::time::Duration::from_micros(us)
    }

    fn show_progress(&self, sec: &stats::Second) {
        let show = self.progress.unwrap_or(self.tty);
        if !show {
            return;
        }
        let line = format!(
            "[{:>11}] {:>6.0}s  req {:>6}/s  pub {:>5}/s  notify {:>6}/s  msg {:>5}/s  req p50/p99 {:.1}/{:.1} ms  notify p50/p99 {:.1}/{:.1} ms  err {}  faults {}",
            sec.phase,
            sec.t,
            sec.requests,
            sec.publishes,
            sec.notifies,
            sec.messages_received,
            sec.req_p50_ms,
            sec.req_p99_ms,
            sec.notify_p50_ms,
            sec.notify_p99_ms,
            sec.errors,
            sec.faults
        );
        if self.tty {
            eprint!("\r{line}\x1b[K");
        } else {
            eprintln!("{line}");
        }
    }

    /// End the live line before the report.
    pub fn end_progress(&self) {
        if self.progress.unwrap_or(self.tty) && self.tty {
            eprintln!();
        }
    }

    fn fire(&mut self, t: Timer, now: u64) {
        if t.is_check() {
            self.pending_checks -= 1;
        }
        match t {
            Timer::Txn { idx, gen } => self.txn_timer(idx, gen, now),
            Timer::RegRefresh { ua, gen } => {
                let u = &self.uas[ua as usize];
                if u.gone || gen != u.reg_gen || self.phase == Phase::Done {
                    return;
                }
                if u.reg_busy {
                    self.push(now + 100_000, t);
                    return;
                }
                self.uas[ua as usize].reg_busy = true;
                let expires = self.s.register_expires;
                self.start_txn(Kind::Register { ua, expires }, 0);
            }
            Timer::PubRefresh { ua, gen } => {
                let u = &self.uas[ua as usize];
                if u.gone || gen != u.pub_gen || self.phase == Phase::Done {
                    return;
                }
                if u.pub_busy {
                    self.push(now + 100_000, t);
                    return;
                }
                let u = &mut self.uas[ua as usize];
                u.pub_busy = true;
                let seq = if u.etag.is_none() {
                    u.seq_sent += 1;
                    u.seq_sent
                } else {
                    0
                };
                let expires = self.s.publish_expires;
                self.start_txn(Kind::Publish { ua, seq, expires }, 0);
            }
            Timer::SubRefresh { sub, gen } => {
                let sb = &self.subs[sub as usize];
                if sb.state != SubState::Active || gen != sb.gen || self.phase == Phase::Done {
                    return;
                }
                if sb.busy {
                    self.push(now + 100_000, t);
                    return;
                }
                self.subs[sub as usize].busy = true;
                let expires = self.s.subscribe_expires;
                self.start_txn(
                    Kind::Subscribe {
                        sub,
                        expires,
                        initial: false,
                    },
                    0,
                );
            }
            Timer::CheckPub { ua, seq, ack_us } => {
                for &w in &self.watchers[ua as usize] {
                    let sb = &self.subs[w as usize];
                    if sb.state == SubState::Active
                        && sb.established_us <= ack_us
                        && !sb.dialog.covers(seq)
                    {
                        self.canary.missing_notify += 1;
                    }
                }
            }
            Timer::CheckSub { sub, dgen } => {
                let sb = &self.subs[sub as usize];
                if sb.dgen == dgen
                    && sb.state == SubState::Active
                    && !sb.dialog.covers(sb.expect_seq)
                {
                    self.canary.missing_initial_notify += 1;
                }
            }
            Timer::CheckFinal { sub } => {
                let sb = &mut self.subs[sub as usize];
                if sb.final_wait {
                    sb.final_wait = false;
                    sb.state = SubState::Ended;
                    self.final_pending -= 1;
                    self.canary.missing_final_notify += 1;
                }
            }
            Timer::CheckMsg { id } => self.messages.check(id, &mut self.canary),
        }
    }

    fn txn_timer(&mut self, idx: u32, gen: u32, now: u64) {
        let Some(t) = self.txns.get_mut(idx as usize) else {
            return;
        };
        if !t.live || t.gen != gen {
            return;
        }
        if now >= t.deadline_us {
            let (m, kind) = (t.kind.method(), t.kind);
            let ua = self.ua_of(kind);
            if self.can_move(ua) {
                // Timer F with another target to go to: this one is gone.
                if let Some(t) = self.finish_txn(idx) {
                    self.stats.methods[m as usize].timeouts += 1;
                    self.abandon(t);
                }
                self.move_ua(ua, now);
                return;
            }
            let Some(t) = self.finish_txn(idx) else {
                return;
            };
            self.stats.methods[m as usize].timeouts += 1;
            self.stats.errors += 1;
            match t.kind {
                Kind::Register { ua, expires } => {
                    self.uas[ua as usize].reg_busy = false;
                    if expires > 0 {
                        self.retry_later(Timer::RegRefresh { ua, gen: 0 }, now);
                    }
                }
                Kind::Publish { ua, expires, .. } => {
                    self.uas[ua as usize].pub_busy = false;
                    if expires > 0 {
                        self.retry_later(Timer::PubRefresh { ua, gen: 0 }, now);
                    }
                }
                Kind::Subscribe {
                    sub,
                    expires,
                    initial,
                } => {
                    let sb = &mut self.subs[sub as usize];
                    sb.busy = false;
                    if expires == 0 {
                        sb.state = SubState::Ended;
                    } else if initial {
                        sb.state = SubState::Failed;
                    } else {
                        self.retry_later(Timer::SubRefresh { sub, gen: 0 }, now);
                    }
                }
                Kind::Message { id, .. } => {
                    self.messages.final_answer(id, 0, &mut self.canary);
                }
            }
            return;
        }
        // Timer E: retransmit, doubling up to T2.
        let (ep, m, to) = (t.ep, t.kind.method(), t.to);
        t.interval_ms = (t.interval_ms * 2).min(T2_MS);
        let next = (now + t.interval_ms * 1000).min(t.deadline_us);
        Self::wire_send(
            &self.eps,
            &mut self.stats,
            ep,
            to,
            &self.txns[idx as usize].data,
        );
        self.stats.methods[m as usize].retransmissions += 1;
        self.stats.w_retrans += 1;
        self.push(next, Timer::Txn { idx, gen });
    }

    fn enter(&mut self, p: Phase, now: u64) {
        if self.phase == Phase::Steady {
            self.steady_end_us = now;
        }
        self.phase = p;
        self.phase_start_us = now;
        self.phase_sent = 0;
        self.cursor = 0;
        if p == Phase::Steady {
            self.steady_start_us = now;
        }
    }

    fn setup_step(&mut self, now: u64) {
        let total = match self.phase {
            Phase::Subscribe | Phase::Unsubscribe => self.subs.len() as u32,
            _ => self.uas.len() as u32,
        };
        let allowed = ((now - self.phase_start_us) as f64 / 1e6 * self.s.setup_rate) as u64 + 1;
        let mut burst = 0;
        while self.cursor < total
            && self.phase_sent < allowed
            && self.live_txns < self.s.max_inflight
            && burst < MAX_BURST
        {
            let i = self.cursor;
            let sent = match self.phase {
                Phase::Register => {
                    self.uas[i as usize].reg_busy = true;
                    let expires = self.s.register_expires;
                    self.start_txn(Kind::Register { ua: i, expires }, 0);
                    1
                }
                Phase::Publish => {
                    let u = &mut self.uas[i as usize];
                    u.pub_busy = true;
                    u.seq_sent += 1;
                    let seq = u.seq_sent;
                    let expires = self.s.publish_expires;
                    self.start_txn(
                        Kind::Publish {
                            ua: i,
                            seq,
                            expires,
                        },
                        0,
                    );
                    1
                }
                Phase::Subscribe => {
                    let sb = &mut self.subs[i as usize];
                    sb.state = SubState::Pending;
                    sb.busy = true;
                    let expires = self.s.subscribe_expires;
                    self.start_txn(
                        Kind::Subscribe {
                            sub: i,
                            expires,
                            initial: true,
                        },
                        0,
                    );
                    1
                }
                Phase::Unsubscribe => {
                    let sb = &mut self.subs[i as usize];
                    if sb.state == SubState::Active && !sb.busy {
                        sb.state = SubState::Unsubscribing;
                        sb.busy = true;
                        self.start_txn(
                            Kind::Subscribe {
                                sub: i,
                                expires: 0,
                                initial: false,
                            },
                            0,
                        );
                        1
                    } else if sb.state == SubState::Active {
                        break; // a refresh is in flight: wait for it
                    } else {
                        0
                    }
                }
                Phase::Cleanup => {
                    let u = &mut self.uas[i as usize];
                    if u.pub_busy || u.reg_busy {
                        break;
                    }
                    u.gone = true;
                    let mut n = 0;
                    if u.etag.is_some() {
                        u.pub_busy = true;
                        self.start_txn(
                            Kind::Publish {
                                ua: i,
                                seq: 0,
                                expires: 0,
                            },
                            0,
                        );
                        n += 1;
                    }
                    if self.uas[i as usize].registered {
                        self.uas[i as usize].reg_busy = true;
                        self.start_txn(Kind::Register { ua: i, expires: 0 }, 0);
                        n += 1;
                    }
                    n
                }
                _ => 0,
            };
            self.cursor += 1;
            self.phase_sent += sent;
            burst += 1;
        }
        let done = self.cursor >= total
            && self.live_txns == 0
            && (self.phase != Phase::Unsubscribe || self.final_pending == 0);
        if done {
            let next = match self.phase {
                Phase::Register => Phase::Publish,
                Phase::Publish => Phase::Subscribe,
                Phase::Subscribe => Phase::Steady,
                Phase::Unsubscribe => Phase::Cleanup,
                _ => Phase::Done,
            };
            self.enter(next, now);
        }
    }

    fn steady_step(&mut self, now: u64) {
        let el = now - self.steady_start_us;
        if el as f64 >= self.s.duration * 1e6 {
            self.enter(Phase::Drain, now);
            return;
        }
        let n = self.uas.len() as u64;
        // Slot k is due at k / rate: slot 0 at once.
        let due = if self.s.publish_rate > 0.0 {
            (el as f64 / 1e6 * self.s.publish_rate) as u64 + 1
        } else {
            0
        };
        let mut burst = 0;
        while self.pub_slots < due && burst < MAX_BURST {
            let mut pick = None;
            for _ in 0..16 {
                let ua = self.rng.below(n) as u32;
                let u = &self.uas[ua as usize];
                if !u.pub_busy && !u.gone {
                    pick = Some(ua);
                    break;
                }
            }
            let Some(ua) = pick else { break };
            let sched =
                self.steady_start_us + (self.pub_slots as f64 / self.s.publish_rate * 1e6) as u64;
            if now.saturating_sub(sched) > BEHIND_US {
                self.stats.behind += 1;
            }
            let u = &mut self.uas[ua as usize];
            u.pub_busy = true;
            u.seq_sent += 1;
            let seq = u.seq_sent;
            let expires = self.s.publish_expires;
            self.start_txn(Kind::Publish { ua, seq, expires }, 0);
            self.pub_slots += 1;
            burst += 1;
        }
        let due = if self.s.message_rate > 0.0 {
            (el as f64 / 1e6 * self.s.message_rate) as u64 + 1
        } else {
            0
        };
        while self.msg_slots < due && burst < MAX_BURST {
            let from = self.rng.below(n) as u32;
            let mut to = None;
            for _ in 0..16 {
                let t = self.rng.below(n) as u32;
                if t != from && self.uas[t as usize].registered {
                    to = Some(t);
                    break;
                }
            }
            let Some(to) = to else { break };
            let sched =
                self.steady_start_us + (self.msg_slots as f64 / self.s.message_rate * 1e6) as u64;
            if now.saturating_sub(sched) > BEHIND_US {
                self.stats.behind += 1;
            }
            let id = self.next_msg;
            self.next_msg += 1;
            self.messages.sent(id, to);
            self.start_txn(Kind::Message { id, from, to }, 0);
            self.msg_slots += 1;
            burst += 1;
        }
    }

    /// Everything sent has been answered and every watcher shows the latest
    /// acked change of its presentity.
    fn settled(&self) -> bool {
        if self.live_by[M::Publish as usize] > 0
            || self.live_by[M::Message as usize] > 0
            || self.live_by[M::Subscribe as usize] > 0
            || self.messages.undelivered() > 0
        {
            return false;
        }
        self.subs.iter().all(|sb| {
            sb.state != SubState::Active
                || sb.dialog.covers(
                    self.uas[sb.presentity as usize]
                        .seq_acked
                        .max(sb.expect_seq),
                )
        })
    }

    fn drain_step(&mut self, now: u64) {
        let in_flight =
            self.live_by[M::Publish as usize] > 0 || self.live_by[M::Message as usize] > 0;
        let all_checked = self.pending_checks == 0 && !in_flight;
        let mut settled = false;
        if now - self.last_settle_us >= 100_000 {
            self.last_settle_us = now;
            settled = self.settled();
        }
        if !(settled || all_checked) {
            return;
        }
        // Evaluate the checks still pending now (they pass when settled).
        let mut keep = Vec::new();
        while let Some(Reverse((at, t))) = self.heap.pop() {
            if t.is_check() && !matches!(t, Timer::CheckFinal { .. }) {
                self.fire(t, now);
            } else {
                keep.push(Reverse((at, t)));
            }
        }
        self.heap.extend(keep);
        let next = if self.s.teardown {
            Phase::Unsubscribe
        } else {
            Phase::Done
        };
        self.enter(next, now);
    }

    // ------------------------------------------------------------------
    // Report
    // ------------------------------------------------------------------

    pub fn report(&self, cpu_base: (f64, f64, f64)) -> stats::Report {
        let elapsed = self.now_us() as f64 / 1e6;
        let steady_end = if self.steady_end_us > 0 {
            self.steady_end_us
        } else if self.steady_start_us > 0 {
            self.now_us()
        } else {
            0
        };
        let steady = steady_end.saturating_sub(self.steady_start_us) as f64 / 1e6;
        let rate = |n: u64, secs: f64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
        let mut requests = BTreeMap::new();
        for (i, name) in stats::METHODS.iter().enumerate() {
            let m = &self.stats.methods[i];
            requests.insert(
                *name,
                stats::MethodReport {
                    sent: m.sent,
                    retransmissions: m.retransmissions,
                    timeouts: m.timeouts,
                    rate_per_s: rate(m.sent, elapsed),
                    steady_rate_per_s: rate(m.steady_sent, steady),
                    responses: m.codes.iter().map(|(c, n)| (c.to_string(), *n)).collect(),
                    latency: stats::Percentiles::of(&m.latency),
                },
            );
        }
        let (u1, s1, t1) = stats::cpu_times();
        let (u0, s0, t0) = cpu_base;
        let messages = self.stats.wire_in + self.stats.wire_out;
        let total = (t1 - t0).max(0.0);
        let cpu = stats::CpuReport {
            user_s: (u1 - u0).max(0.0),
            system_s: (s1 - s0).max(0.0),
            total_s: total,
            messages,
            per_message_us: if messages > 0 {
                total * 1e6 / messages as f64
            } else {
                0.0
            },
            core_share: if elapsed > 0.0 { total / elapsed } else { 0.0 },
        };
        let mut failures = self.canary.failures();
        if self.stats.errors > self.s.max_errors {
            failures.push(format!(
                "{} failed requests (timeouts or unexpected non-2xx; --max-errors {})",
                self.stats.errors, self.s.max_errors
            ));
        }
        if self.stats.auth_failures > 0 {
            failures.push(format!(
                "{} authentication failures",
                self.stats.auth_failures
            ));
        }
        if self.stop.get() >= 2 {
            failures.push("interrupted".into());
        }
        let registered = self.stats.methods[M::Register as usize]
            .codes
            .iter()
            .any(|(c, _)| (200..300).contains(c));
        if !registered {
            failures.push("no REGISTER was answered 2xx".into());
        }
        if !self.subs.is_empty() && self.stats.notifies == 0 {
            failures.push("no NOTIFY arrived".into());
        }
        stats::Report {
            passed: failures.is_empty(),
            failures,
            setup: stats::Setup {
                profile: self.s.profile.clone(),
                target: self
                    .targets
                    .iter()
                    .map(|t| t.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
                transport: self.s.transport.name(),
                users: self.s.users,
                subscriptions: self.subs.len() as u64,
                buddies: self.s.buddies,
                receptionists: self.s.receptionists,
                skew: self.s.skew,
                publish_rate: self.s.publish_rate,
                message_rate: self.s.message_rate,
                duration_s: self.s.duration,
                notify_deadline_s: self.s.notify_deadline,
                auth: self.s.password.is_some(),
                seed: self.s.seed,
            },
            elapsed_s: elapsed,
            steady_s: steady,
            requests,
            notify: stats::NotifyReport {
                received: self.stats.notifies,
                retransmissions: self.stats.notify_retransmissions,
                per_s: rate(self.stats.notifies, elapsed),
                steady_per_s: rate(self.stats.notifies_steady, steady),
                latency: stats::Percentiles::of(&self.stats.notify_latency),
            },
            messages_received: self.stats.messages_received,
            canary: self.canary.clone(),
            errors: self.stats.errors,
            send_errors: self.stats.send_errors,
            behind: self.stats.behind,
            auth_failures: self.stats.auth_failures,
            unexpected_responses: self.stats.unexpected_responses,
            stray_requests: self.stats.stray_requests,
            unparseable: self.stats.unparseable,
            tcp_closed: self.stats.tcp_closed,
            failover: self.stats.failover,
            cpu,
            timeline: self.stats.timeline.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Cli;

    fn endpoints(n: usize, targets: u32) -> Vec<Endpoint> {
        (0..n)
            .map(|i| Endpoint {
                wire: Wire::Tcp(Rc::new(TcpOut::default())),
                host: format!("127.0.0.1:{}", 40000 + i),
                target: i as u32 / (n as u32 / targets),
            })
            .collect()
    }

    #[test]
    fn tcp_uas_use_their_targets_connections() {
        let eps = endpoints(8, 2);
        for ua in 0..100 {
            for target in 0..2 {
                let ep = Engine::ep_for(&eps, Transport::Tcp, 2, ua, target);
                assert_eq!(eps[ep as usize].target, target, "ua {ua}");
            }
        }
        // One target: as before the failover feature, round-robin.
        let eps = endpoints(4, 1);
        let picks: Vec<u32> = (0..6)
            .map(|ua| Engine::ep_for(&eps, Transport::Tcp, 1, ua, 0))
            .collect();
        assert_eq!(picks, [0, 1, 2, 3, 0, 1]);
        assert_eq!(Engine::ep_for(&eps, Transport::Udp, 2, 5, 1), 1);
    }

    #[test]
    fn subscribe_call_ids_carry_the_dialog_generation() {
        let cli = Cli {
            target: Some("127.0.0.1:5060,127.0.0.1:5062".into()),
            users: Some(10),
            buddies: Some(2),
            ..Cli::default()
        };
        let s = Settings::resolve(cli).expect("valid");
        let targets = s.targets.clone();
        let e = Engine::new(s, targets, endpoints(4, 2), Some(false));
        let run = e.run.clone();
        for (sub, gen) in [(0, 0), (7, 0), (3, 1), (19, 12)] {
            let call_id = format!("s{sub}{}.{run}", DialogGen(gen));
            assert_eq!(
                e.sub_of_call(call_id.as_bytes()),
                Some((sub, gen)),
                "{call_id}"
            );
        }
        assert_eq!(format!("s4{}.x", DialogGen(0)), "s4.x");
        assert_eq!(e.sub_of_call(format!("s9999.{run}").as_bytes()), None);
        assert_eq!(e.sub_of_call(b"s1.otherrun"), None);
        assert_eq!(e.sub_of_call(format!("s1-x.{run}").as_bytes()), None);
        assert_eq!(e.sub_of_call(format!("m1.{run}").as_bytes()), None);
    }
}

//! The engine: every user agent, subscription, transaction and timer of the
//! run, in one single-threaded state machine.
//!
//! Sockets feed it datagrams / stream messages ([`Engine::on_message`]) and a
//! 1 ms tick drives schedules and timers ([`Engine::tick`]); it answers by
//! writing to the shared sockets. Demultiplexing needs no lookup tables: our
//! Via branches are `z9hG4bKlt.<txn>.<gen>`, Call-IDs `s<sub>.<run>` /
//! `m<msg>.<run>` name the dialog or message directly. Timers live in one
//! binary heap (lazy cancellation by generation numbers).
//!
//! Here: the state, transactions, timers and the phases of the run;
//! `requests.rs` builds what the UAs send, `inbound.rs` handles what
//! arrives, `report.rs` the live line and the final report.

use crate::canary::{self, Counters, Dialog, Messages, MsgNext};
use crate::config::{Event, Settings, Transport};
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

mod inbound;
mod report;
mod requests;

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

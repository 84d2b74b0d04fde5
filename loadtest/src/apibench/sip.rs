//! SIP over UDP for the API bench: the publisher (a first PUBLISH per AoR,
//! then a modify with SIP-If-Match per change, open loop at a fixed rate)
//! and the SIP watchers (one SUBSCRIBE dialog each, every NOTIFY answered
//! 200 and read for its note), the baseline the Watch streams are compared
//! with.
//!
//! One owner ([`Sip`]) holds every publication, dialog and transaction; a
//! reader task per socket stamps each datagram's arrival and hands it over.
//! It is driven phase by phase (`publish_all`, `subscribe_all`, `churn`,
//! `pump_for`) and does nothing between phases (nothing arrives then).
//! Requests are retransmitted like a UAC's non-INVITE transactions (Timer
//! E from 500 ms doubling to 4 s, Timer F at 32 s).

use super::plan::{self, Clock};
use crate::rng::Rng;
use crate::scan::{self, Scanned, Start};
use crate::stats::histogram;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

const T1_NS: u64 = 500_000_000;
const T2_NS: u64 = 4_000_000_000;
const TIMER_F_NS: u64 = 32_000_000_000;
/// Our branches: `z9hG4bKapib.p<aor>.<cseq>` (PUBLISH) and
/// `z9hG4bKapib.s<watcher>.<cseq>` (SUBSCRIBE).
const BRANCH: &str = "z9hG4bKapib.";
/// A scheduled send leaving later than this after its slot is *behind*.
const BEHIND_NS: u64 = 10_000_000;
/// Datagrams queued between the readers and the owner.
const QUEUE: usize = 8192;

/// A datagram as a reader got it.
struct Datagram {
    sock: usize,
    from: SocketAddr,
    at_ns: u64,
    data: Vec<u8>,
}

/// An open client transaction.
struct Txn {
    cseq: u32,
    /// The change it carries (PUBLISH), 0 for a SUBSCRIBE.
    seq: u32,
    first_ns: u64,
    next_ns: u64,
    interval_ns: u64,
    bytes: Vec<u8>,
}

#[derive(Default)]
struct Publication {
    etag: Option<String>,
    /// Newest change sent.
    sent: u32,
    /// Newest change answered 200.
    acked: u32,
    cseq: u32,
    txn: Option<Txn>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialog {
    Idle,
    Trying,
    Active,
    Failed,
}

struct Watcher {
    aor: u32,
    cseq: u32,
    txn: Option<Txn>,
    state: Dialog,
    /// Newest change a NOTIFY showed.
    seen: u32,
    /// Highest NOTIFY CSeq processed (retransmissions are answered again).
    notify_cseq: u32,
    notifies: u64,
}

#[derive(Debug, Clone, Copy)]
enum Which {
    Pub,
    Sub,
}

/// What the publisher did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct PublishCounts {
    /// First PUBLISHes (one per AoR), before the churn.
    pub initial: u64,
    /// Changes sent in the churn (modifies with SIP-If-Match).
    pub changes_sent: u64,
    /// Changes answered 200.
    pub changes_acked: u64,
    pub retransmissions: u64,
    pub timeouts: u64,
    /// 412 answers (the publication was gone): sent again as a new one.
    pub conditional_failed: u64,
    /// Final answers by code, every PUBLISH of the run.
    pub responses: BTreeMap<u16, u64>,
    /// Scheduled changes that left more than 10 ms after their slot.
    pub behind: u64,
    /// Slots with no AoR free (each has a PUBLISH in flight): not sent.
    pub skipped_busy: u64,
    pub send_errors: u64,
}

/// What the SIP watchers saw.
#[derive(Debug, Default, Clone, Serialize)]
pub struct NotifyCounts {
    pub watchers: u64,
    pub subscribed: u64,
    pub subscribe_failed: u64,
    /// NOTIFYs received (retransmissions not included).
    pub received: u64,
    /// NOTIFYs showing a newer change during the churn (latency samples).
    pub changes: u64,
    pub retransmissions: u64,
    /// Changes a watcher never saw because a newer one came first.
    pub coalesced: u64,
    /// NOTIFYs showing the change already shown.
    pub duplicates: u64,
    /// NOTIFYs showing an older change than one already shown.
    pub out_of_order: u64,
    /// `Subscription-State: terminated` (the bench never asks for it).
    pub terminated: u64,
    /// Requests and answers that matched nothing of ours.
    pub stray: u64,
}

pub struct Sip {
    clock: Clock,
    run: String,
    domain: String,
    prefix: String,
    expires: u32,
    target: SocketAddr,
    senders: Vec<std::net::UdpSocket>,
    hosts: Vec<String>,
    rx: mpsc::Receiver<Datagram>,
    readers: Vec<tokio::task::JoinHandle<()>>,
    pubs: Vec<Publication>,
    watchers: Vec<Watcher>,
    timers: BinaryHeap<Reverse<(u64, u8, u32, u32)>>,
    inflight: usize,
    rng: Rng,
    recording: bool,
    pub publish: PublishCounts,
    pub notify: NotifyCounts,
    /// PUBLISH sent → final answer, µs.
    pub publish_latency: Histogram<u64>,
    /// Change sent → NOTIFY arrival, µs (churn only).
    pub notify_latency: Histogram<u64>,
}

pub struct SipSetup {
    pub target: SocketAddr,
    pub sockets: usize,
    pub domain: String,
    pub prefix: String,
    pub aors: u32,
    pub expires: u32,
    pub run: String,
    pub seed: u64,
}

impl Sip {
    /// Bind the sockets and start their readers.
    pub fn start(s: SipSetup, clock: Clock) -> Result<Sip, String> {
        let ip = crate::net::local_ip_for(s.target)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let mut senders = Vec::new();
        let mut hosts = Vec::new();
        let mut readers = Vec::new();
        for i in 0..s.sockets.max(1) {
            let (reader, sender) = crate::net::bind_udp(ip)?;
            let local = reader.local_addr().map_err(|e| e.to_string())?;
            hosts.push(crate::net::host_of(local));
            senders.push(sender);
            readers.push(tokio::spawn(read(i, reader, tx.clone(), clock)));
        }
        Ok(Sip {
            clock,
            run: s.run,
            domain: s.domain,
            prefix: s.prefix,
            expires: s.expires,
            target: s.target,
            senders,
            hosts,
            rx,
            readers,
            pubs: (0..s.aors).map(|_| Publication::default()).collect(),
            watchers: Vec::new(),
            timers: BinaryHeap::new(),
            inflight: 0,
            rng: Rng::new(s.seed ^ 0x5151),
            recording: false,
            publish: PublishCounts::default(),
            notify: NotifyCounts::default(),
            publish_latency: histogram(),
            notify_latency: histogram(),
        })
    }

    /// Transactions open.
    pub fn inflight(&self) -> usize {
        self.inflight
    }

    /// The newest change answered 200, per AoR.
    pub fn acked(&self) -> Vec<u32> {
        self.pubs.iter().map(|p| p.acked).collect()
    }

    /// Active SIP dialogs whose last NOTIFY shows less than their AoR's
    /// newest acknowledged change.
    pub fn watchers_behind(&self) -> u64 {
        self.watchers
            .iter()
            .filter(|w| w.state == Dialog::Active && w.seen < self.pubs[w.aor as usize].acked)
            .count() as u64
    }

    /// Start (or stop) taking latency samples and counting gaps.
    pub fn record(&mut self, on: bool) {
        self.recording = on;
    }

    /// A first PUBLISH for every AoR, `rate` per second, at most
    /// `max_inflight` open; returns once all are answered.
    pub async fn publish_all(
        &mut self,
        rate: f64,
        max_inflight: usize,
        timeout: Duration,
    ) -> Result<(), String> {
        let n = self.pubs.len() as u32;
        self.paced(n, rate, max_inflight, timeout, |s, i| s.send_publish(i))
            .await
            .map_err(|()| format!("the first PUBLISHes were not all answered within {timeout:?}"))
    }

    /// One SUBSCRIBE dialog per entry of `targets`; returns once each is
    /// answered and (if accepted) has had its first NOTIFY.
    pub async fn subscribe_all(
        &mut self,
        targets: &[u32],
        rate: f64,
        max_inflight: usize,
        timeout: Duration,
    ) -> Result<(), String> {
        let base = self.watchers.len() as u32;
        for &aor in targets {
            self.watchers.push(Watcher {
                aor,
                cseq: 0,
                txn: None,
                state: Dialog::Idle,
                seen: 0,
                notify_cseq: 0,
                notifies: 0,
            });
        }
        self.notify.watchers = self.watchers.len() as u64;
        let n = targets.len() as u32;
        let deadline = Instant::now() + timeout;
        self.paced(n, rate, max_inflight, timeout, move |s, i| {
            s.send_subscribe(base + i)
        })
        .await
        .map_err(|()| format!("the SUBSCRIBEs were not all answered within {timeout:?}"))?;
        while self
            .watchers
            .iter()
            .any(|w| w.state == Dialog::Active && w.notifies == 0)
        {
            if Instant::now() >= deadline {
                return Err("a SIP watcher got no first NOTIFY".into());
            }
            self.pump_for(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Send `send(self, 0..n)` at `rate` with at most `max_inflight` open,
    /// then wait for every answer.
    async fn paced(
        &mut self,
        n: u32,
        rate: f64,
        max_inflight: usize,
        timeout: Duration,
        mut send: impl FnMut(&mut Self, u32),
    ) -> Result<(), ()> {
        let start = Instant::now();
        let gap = Duration::from_secs_f64(1.0 / rate.max(1.0));
        let mut next = 0u32;
        loop {
            let now = Instant::now();
            while next < n && self.inflight < max_inflight && start + gap * next <= now {
                send(self, next);
                next += 1;
            }
            if next == n && self.inflight == 0 {
                return Ok(());
            }
            if now > start + timeout {
                return Err(());
            }
            let wake = if next < n && self.inflight < max_inflight {
                start + gap * next
            } else {
                now + Duration::from_millis(50)
            };
            self.turn(wake).await;
        }
    }

    /// Open loop: `rate` changes per second for `duration`, each a modify
    /// of a random AoR of `set` with no PUBLISH in flight.
    pub async fn churn(&mut self, set: &[u32], rate: f64, duration: Duration) {
        let start = Instant::now();
        let end = start + duration;
        let gap = Duration::from_secs_f64(1.0 / rate.max(0.001));
        let mut k: u32 = 0;
        loop {
            let now = Instant::now();
            loop {
                let slot = start + gap * k;
                if slot > now || slot >= end {
                    break;
                }
                if now.duration_since(slot) > Duration::from_nanos(BEHIND_NS) {
                    self.publish.behind += 1;
                }
                self.change(set);
                k += 1;
            }
            let slot = start + gap * k;
            if slot >= end {
                return;
            }
            self.turn(slot).await;
        }
    }

    /// Handle what arrives (and retransmit) for `d`.
    pub async fn pump_for(&mut self, d: Duration) {
        let until = Instant::now() + d;
        while Instant::now() < until {
            self.turn(until).await;
        }
    }

    /// Stop the readers.
    pub fn stop(&mut self) {
        for r in self.readers.drain(..) {
            r.abort();
        }
    }

    fn change(&mut self, set: &[u32]) {
        if set.is_empty() {
            return;
        }
        for _ in 0..16 {
            let aor = set[self.rng.below(set.len() as u64) as usize];
            if self.pubs[aor as usize].txn.is_none() {
                self.send_publish(aor);
                return;
            }
        }
        self.publish.skipped_busy += 1;
    }

    /// Wait for a datagram or `wake` (or the next retransmission), handle
    /// what came, fire due timers.
    async fn turn(&mut self, wake: Instant) {
        let wake = match self.timers.peek() {
            Some(Reverse((ns, ..))) => wake.min(self.clock.at(*ns)),
            None => wake,
        };
        tokio::select! {
            d = self.rx.recv() => {
                if let Some(d) = d {
                    self.handle(d);
                    while let Ok(d) = self.rx.try_recv() {
                        self.handle(d);
                    }
                }
            }
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
        self.fire_timers();
    }

    fn fire_timers(&mut self) {
        let now = self.clock.ns();
        while let Some(Reverse((at, which, idx, cseq))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            let which = if which == 0 { Which::Pub } else { Which::Sub };
            let txn = match which {
                Which::Pub => self.pubs[idx as usize].txn.as_mut(),
                Which::Sub => self.watchers[idx as usize].txn.as_mut(),
            };
            let Some(t) = txn.filter(|t| t.cseq == cseq && t.next_ns == at) else {
                continue;
            };
            if now.saturating_sub(t.first_ns) >= TIMER_F_NS {
                match which {
                    Which::Pub => {
                        let p = &mut self.pubs[idx as usize];
                        p.txn = None;
                        // Whether it was applied is unknown: start afresh.
                        p.etag = None;
                        self.publish.timeouts += 1;
                    }
                    Which::Sub => {
                        let w = &mut self.watchers[idx as usize];
                        w.txn = None;
                        w.state = Dialog::Failed;
                        self.notify.subscribe_failed += 1;
                    }
                }
                self.inflight -= 1;
                continue;
            }
            t.interval_ns = (t.interval_ns * 2).min(T2_NS);
            t.next_ns = now + t.interval_ns;
            let next = t.next_ns;
            let bytes = std::mem::take(&mut t.bytes);
            let sock = idx as usize % self.senders.len();
            self.send(sock, &bytes);
            match which {
                Which::Pub => {
                    self.publish.retransmissions += 1;
                    if let Some(t) = self.pubs[idx as usize].txn.as_mut() {
                        t.bytes = bytes;
                    }
                }
                Which::Sub => {
                    if let Some(t) = self.watchers[idx as usize].txn.as_mut() {
                        t.bytes = bytes;
                    }
                }
            }
            self.timers.push(Reverse((next, which as u8, idx, cseq)));
        }
    }

    fn send(&mut self, sock: usize, bytes: &[u8]) {
        if self.senders[sock].send_to(bytes, self.target).is_err() {
            self.publish.send_errors += 1;
        }
    }

    fn user(&self, aor: u32) -> String {
        format!("{}{aor:06}", self.prefix)
    }

    /// A PUBLISH of AoR `aor`: its next change as a modify when it has an
    /// entity-tag, else as a new publication (the first one: change 1).
    fn send_publish(&mut self, aor: u32) {
        let now = self.clock.ns();
        let sock = aor as usize % self.senders.len();
        let user = self.user(aor);
        let (d, run, expires) = (&self.domain, &self.run, self.expires);
        let host = &self.hosts[sock];
        let p = &mut self.pubs[aor as usize];
        p.cseq += 1;
        p.sent += 1;
        let seq = p.sent;
        if seq == 1 {
            self.publish.initial += 1;
        } else {
            self.publish.changes_sent += 1;
        }
        let ruri = format!("sip:{user}@{d}");
        let body = plan::pidf(&ruri, run, seq, now);
        let mut out = String::with_capacity(600 + body.len());
        let _ = write!(
            out,
            "PUBLISH {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {host};branch={BRANCH}p{aor}.{cseq};rport\r\nMax-Forwards: 70\r\nFrom: <{ruri}>;tag=p{aor}\r\nTo: <{ruri}>\r\nCall-ID: apib.p{aor}.{run}\r\nCSeq: {cseq} PUBLISH\r\nEvent: presence\r\nExpires: {expires}\r\n",
            cseq = p.cseq
        );
        if let Some(etag) = &p.etag {
            let _ = write!(out, "SIP-If-Match: {etag}\r\n");
        }
        let _ = write!(
            out,
            "Content-Type: application/pidf+xml\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let cseq = p.cseq;
        p.txn = Some(Txn {
            cseq,
            seq,
            first_ns: now,
            next_ns: now + T1_NS,
            interval_ns: T1_NS,
            bytes: out.into_bytes(),
        });
        self.inflight += 1;
        self.timers.push(Reverse((now + T1_NS, 0, aor, cseq)));
        self.send_txn(Which::Pub, aor);
    }

    fn send_subscribe(&mut self, w: u32) {
        let now = self.clock.ns();
        let sock = w as usize % self.senders.len();
        let target = self.user(self.watchers[w as usize].aor);
        let (d, run, expires) = (&self.domain, &self.run, self.expires);
        let host = &self.hosts[sock];
        let wt = &mut self.watchers[w as usize];
        wt.cseq += 1;
        wt.state = Dialog::Trying;
        let mut out = String::with_capacity(600);
        let _ = write!(
            out,
            "SUBSCRIBE sip:{target}@{d} SIP/2.0\r\nVia: SIP/2.0/UDP {host};branch={BRANCH}s{w}.{cseq};rport\r\nMax-Forwards: 70\r\nFrom: <sip:apiw{w}@{d}>;tag=w{w}\r\nTo: <sip:{target}@{d}>\r\nCall-ID: apib.w{w}.{run}\r\nCSeq: {cseq} SUBSCRIBE\r\nEvent: presence\r\nAccept: application/pidf+xml\r\nContact: <sip:apiw{w}@{host}>\r\nExpires: {expires}\r\nContent-Length: 0\r\n\r\n",
            cseq = wt.cseq
        );
        let cseq = wt.cseq;
        wt.txn = Some(Txn {
            cseq,
            seq: 0,
            first_ns: now,
            next_ns: now + T1_NS,
            interval_ns: T1_NS,
            bytes: out.into_bytes(),
        });
        self.inflight += 1;
        self.timers.push(Reverse((now + T1_NS, 1, w, cseq)));
        self.send_txn(Which::Sub, w);
    }

    fn send_txn(&mut self, which: Which, idx: u32) {
        let t = match which {
            Which::Pub => self.pubs[idx as usize].txn.as_mut(),
            Which::Sub => self.watchers[idx as usize].txn.as_mut(),
        };
        let Some(t) = t else { return };
        let bytes = std::mem::take(&mut t.bytes);
        self.send(idx as usize % self.senders.len(), &bytes);
        let t = match which {
            Which::Pub => self.pubs[idx as usize].txn.as_mut(),
            Which::Sub => self.watchers[idx as usize].txn.as_mut(),
        };
        if let Some(t) = t {
            t.bytes = bytes;
        }
    }

    fn handle(&mut self, d: Datagram) {
        let Some(s) = scan::scan(&d.data) else {
            self.notify.stray += 1;
            return;
        };
        match s.start {
            Start::Response { code } => self.response(code, &s, d.at_ns),
            Start::Request { method, .. } if method == b"NOTIFY" => {
                self.notify_in(&s, d.at_ns);
                self.answer(d.sock, d.from, &s, 200, "OK");
            }
            Start::Request { method, .. } => {
                self.notify.stray += 1;
                if method != b"ACK" {
                    self.answer(d.sock, d.from, &s, 501, "Not Implemented");
                }
            }
        }
    }

    fn response(&mut self, code: u16, s: &Scanned<'_>, at_ns: u64) {
        if code < 200 {
            return;
        }
        let Some((which, idx, cseq)) = s.branch().and_then(parse_branch) else {
            self.notify.stray += 1;
            return;
        };
        match which {
            Which::Pub => {
                let Some(p) = self.pubs.get_mut(idx as usize) else {
                    self.notify.stray += 1;
                    return;
                };
                let Some(t) = p.txn.take_if(|t| t.cseq == cseq) else {
                    // A late answer to a retransmission.
                    return;
                };
                self.inflight -= 1;
                *self.publish.responses.entry(code).or_default() += 1;
                let _ = self
                    .publish_latency
                    .record((at_ns.saturating_sub(t.first_ns) / 1000).max(1));
                match code {
                    200..=299 => {
                        p.etag = s
                            .etag
                            .map(|e| String::from_utf8_lossy(scan::trim(e)).into_owned());
                        p.acked = p.acked.max(t.seq);
                        if t.seq > 1 {
                            self.publish.changes_acked += 1;
                        }
                    }
                    412 => {
                        // The publication is gone (expired): a new one,
                        // carrying a newer change.
                        p.etag = None;
                        self.publish.conditional_failed += 1;
                        self.send_publish(idx);
                    }
                    _ => {}
                }
            }
            Which::Sub => {
                let Some(w) = self.watchers.get_mut(idx as usize) else {
                    self.notify.stray += 1;
                    return;
                };
                if w.txn.take_if(|t| t.cseq == cseq).is_none() {
                    return;
                }
                self.inflight -= 1;
                if (200..300).contains(&code) {
                    w.state = Dialog::Active;
                    self.notify.subscribed += 1;
                } else {
                    w.state = Dialog::Failed;
                    self.notify.subscribe_failed += 1;
                }
            }
        }
    }

    fn notify_in(&mut self, s: &Scanned<'_>, at_ns: u64) {
        let w = s
            .call_id()
            .and_then(|c| std::str::from_utf8(c).ok())
            .and_then(|c| c.strip_prefix("apib.w"))
            .and_then(|c| c.split('.').next())
            .and_then(|i| i.parse::<usize>().ok());
        let Some(w) = w.filter(|w| *w < self.watchers.len()) else {
            self.notify.stray += 1;
            return;
        };
        let cseq = s.cseq().map_or(0, |c| c.0);
        let wt = &mut self.watchers[w];
        if cseq <= wt.notify_cseq {
            self.notify.retransmissions += 1;
            return;
        }
        wt.notify_cseq = cseq;
        wt.notifies += 1;
        self.notify.received += 1;
        if s.sub_state
            .is_some_and(|v| scan::trim(v).starts_with(b"terminated"))
        {
            self.notify.terminated += 1;
            wt.state = Dialog::Failed;
        }
        let Some((seq, t)) = plan::parse_note(s.body, &self.run) else {
            return;
        };
        if seq > wt.seen {
            if self.recording {
                self.notify.changes += 1;
                self.notify.coalesced += u64::from(seq - wt.seen - 1);
                let _ = self
                    .notify_latency
                    .record((at_ns.saturating_sub(t) / 1000).max(1));
            }
            wt.seen = seq;
        } else if seq == wt.seen {
            self.notify.duplicates += 1;
        } else {
            self.notify.out_of_order += 1;
        }
    }

    fn answer(&mut self, sock: usize, to: SocketAddr, s: &Scanned<'_>, code: u16, reason: &str) {
        let mut out = Vec::with_capacity(400);
        let _ = write!(ByteWriter(&mut out), "SIP/2.0 {code} {reason}\r\n");
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
                out.extend_from_slice(b"\r\n");
            }
        }
        out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
        if self.senders[sock].send_to(&out, to).is_err() {
            self.publish.send_errors += 1;
        }
    }
}

impl Drop for Sip {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `fmt::Write` into bytes.
struct ByteWriter<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for ByteWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// (kind, index, CSeq) of one of our branches.
fn parse_branch(b: &[u8]) -> Option<(Which, u32, u32)> {
    let rest = std::str::from_utf8(b).ok()?.strip_prefix(BRANCH)?;
    let (which, rest) = match rest.as_bytes().first()? {
        b'p' => (Which::Pub, &rest[1..]),
        b's' => (Which::Sub, &rest[1..]),
        _ => return None,
    };
    let (idx, cseq) = rest.split_once('.')?;
    Some((which, idx.parse().ok()?, cseq.parse().ok()?))
}

/// Read datagrams from `sock` and hand them over, stamped on arrival.
async fn read(i: usize, sock: UdpSocket, tx: mpsc::Sender<Datagram>, clock: Clock) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let Ok((n, from)) = sock.recv_from(&mut buf).await else {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        };
        let d = Datagram {
            sock: i,
            from,
            at_ns: clock.ns(),
            data: buf[..n].to_vec(),
        };
        if tx.send(d).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branches_round_trip() {
        assert!(matches!(
            parse_branch(b"z9hG4bKapib.p12.3"),
            Some((Which::Pub, 12, 3))
        ));
        assert!(matches!(
            parse_branch(b"z9hG4bKapib.s0.1"),
            Some((Which::Sub, 0, 1))
        ));
        for bad in [
            &b"z9hG4bKlt.1.2"[..],
            b"z9hG4bKapib.x1.2",
            b"z9hG4bKapib.p1",
            b"",
        ] {
            assert!(parse_branch(bad).is_none());
        }
    }
}

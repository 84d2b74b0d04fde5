//! The edge's limits on what one source may cost: requests per second per
//! source address (token bucket), TCP connections in total and per source
//! address, and what may be sent over UDP to an address that has not shown
//! it can receive (the amplification budget). Sans-I/O: time is an input,
//! every table is bounded and swept.
//!
//! Not: the quotas on stored state (the compositor's `Limits`), nor the
//! bound on concurrent work (a semaphore in the edge).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::time::Instant;

/// The edge's limits, all configurable (`--max-…` flags); the defaults are
/// sized for one edge serving ~100k phones of a carrier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgeLimits {
    /// Requests being handled at once; more are dropped (UDP: the UA
    /// retransmits) or answered 503 (TCP). `--max-inflight`.
    pub max_inflight: usize,
    /// Open TCP connections in total. `--max-connections`.
    pub max_connections: usize,
    /// Open TCP connections from one address: an enterprise NAT puts a few
    /// hundred phones behind one. `--max-connections-per-source`.
    pub max_connections_per_source: usize,
    /// Requests per second one address may send on average; a whole office
    /// rebooting behind one NAT re-registers within a minute or two.
    /// `--rate-per-source`.
    pub rate_per_source: u32,
    /// Requests one address may send at once above its rate.
    /// `--burst-per-source`.
    pub burst_per_source: u32,
    /// A TCP connection on which nothing arrives for this long is closed;
    /// above `--max-expires` so that a UA that only refreshes is not cut.
    /// `--idle-timeout`.
    pub idle_timeout: Duration,
    /// A message must arrive whole within this from its first byte, and a
    /// new connection must bring its first message within it (no trickling).
    /// `--header-timeout`.
    pub header_timeout: Duration,
    /// Messages queued for one connection's writer; a reader that does not
    /// read is disconnected when it fills. `--write-queue`.
    pub write_queue: usize,
    /// Bytes sent over UDP to an unproven address, per byte it sent us.
    pub amplification: u32,
    /// Our own requests (NOTIFY, MESSAGE) in flight at this edge above
    /// which new PUBLISHes get 503: the fan-out they would cause is
    /// already more than the watchers answer. `--max-notify-backlog`.
    pub max_notify_backlog: usize,
    /// Notify jobs waiting above which new PUBLISHes from heavy sources get
    /// 503 (every PUBLISH over twice it). `--max-notify-queue`.
    pub max_notify_queue: u64,
}

impl Default for EdgeLimits {
    fn default() -> Self {
        EdgeLimits {
            max_inflight: 8192,
            max_connections: 50_000,
            max_connections_per_source: 512,
            rate_per_source: 200,
            burst_per_source: 1000,
            idle_timeout: Duration::from_secs(3900),
            header_timeout: Duration::from_secs(10),
            write_queue: 1024,
            amplification: AMPLIFICATION,
            max_notify_backlog: 20_000,
            max_notify_queue: 200,
        }
    }
}

/// An unproven UDP address is sent at most this many bytes per byte it sent
/// (RFC 9000 §8.1 allows 3× before address validation; SIP answers and the
/// first NOTIFY fit in that for ordinary requests).
pub const AMPLIFICATION: u32 = 3;

/// Each unproven address may be owed this much on top of its multiple, so
/// that a small SUBSCRIBE still gets its first NOTIFY and one retransmission.
const AMPLIFICATION_ALLOWANCE: u64 = 2048;

/// Entries idle for this long are forgotten (a proven address proves itself
/// again with its next answer).
const FORGET_AFTER: Duration = Duration::from_secs(600);

/// At most this many addresses are tracked per table; past it the sweep
/// makes room by forgetting idle ones first, and new addresses are then
/// treated as unknown (rate-limited from a full bucket, unproven).
pub const MAX_TRACKED: usize = 200_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
    /// Requests of the last second or so (each decays with e^-t, t in s).
    recent: f64,
}

/// A source that sent fewer requests than this in about the last second is
/// *light* (a phone: a few requests a minute); an aggregator, a load tool or
/// a flood is not. Under a notify backlog the heavy ones are shed first.
pub const LIGHT_RATE: f64 = 20.0;

#[derive(Debug, Clone, Copy, Default)]
struct Budget {
    received: u64,
    sent: u64,
    proven: bool,
}

#[derive(Debug, Clone, Copy)]
struct Seen<T> {
    v: T,
    last: Instant,
}

/// Per-source accounting for one edge.
pub struct SourceGuard {
    limits: EdgeLimits,
    buckets: HashMap<IpAddr, Bucket>,
    budgets: HashMap<SocketAddr, Seen<Budget>>,
    connections: HashMap<IpAddr, usize>,
    total_connections: usize,
}

/// Why a connection is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnRefusal {
    Total,
    PerSource,
}

impl SourceGuard {
    pub fn new(limits: EdgeLimits) -> SourceGuard {
        SourceGuard {
            limits,
            buckets: HashMap::new(),
            budgets: HashMap::new(),
            connections: HashMap::new(),
            total_connections: 0,
        }
    }

    pub fn limits(&self) -> &EdgeLimits {
        &self.limits
    }

    /// A datagram of `bytes` from `from` (counted for its amplification
    /// budget); for a request, also its token: `false` when over its rate.
    pub fn arrived(&mut self, from: SocketAddr, bytes: usize, request: bool, now: Instant) -> bool {
        self.received(from, bytes, now);
        !request || self.admit_request(from.ip(), now)
    }

    /// `(rate per second, burst)` of every source's bucket.
    fn bucket_shape(&self) -> (f64, f64) {
        (
            f64::from(self.limits.rate_per_source.max(1)),
            f64::from(self.limits.burst_per_source.max(1)),
        )
    }

    /// Take one request's token for `ip`; `false` when over its rate.
    pub fn admit_request(&mut self, ip: IpAddr, now: Instant) -> bool {
        let (rate, burst) = self.bucket_shape();
        if !self.buckets.contains_key(&ip) && self.buckets.len() >= MAX_TRACKED {
            // Full table: an unknown source still gets in (a flood of
            // forged sources must not lock real ones out), uncounted.
            return true;
        }
        let b = self.buckets.entry(ip).or_insert(Bucket {
            tokens: burst,
            at: now,
            recent: 0.0,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(burst);
        b.recent = b.recent * (-elapsed).exp() + 1.0;
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Did `ip` send fewer than [`LIGHT_RATE`] requests in about the last
    /// second? (An untracked source is light.)
    pub fn is_light(&self, ip: IpAddr, now: Instant) -> bool {
        self.buckets.get(&ip).is_none_or(|b| {
            let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
            b.recent * (-elapsed).exp() < LIGHT_RATE
        })
    }

    /// Bytes received from `from` (any datagram, request or answer).
    pub fn received(&mut self, from: SocketAddr, bytes: usize, now: Instant) {
        if let Some(s) = self.budget(from, now) {
            s.received = s.received.saturating_add(bytes as u64);
        }
    }

    /// `from` has shown that it receives what we send it: it answered one
    /// of our requests, or answered a Digest challenge we sent it.
    pub fn proven(&mut self, from: SocketAddr, now: Instant) {
        if let Some(s) = self.budget(from, now) {
            s.proven = true;
        }
    }

    /// May `bytes` more be sent to `to` over UDP? Counts them if so.
    pub fn may_send(&mut self, to: SocketAddr, bytes: usize, now: Instant) -> bool {
        let multiple = u64::from(self.limits.amplification);
        let Some(s) = self.budget(to, now) else {
            return false;
        };
        if s.proven {
            return true;
        }
        let allowed = s
            .received
            .saturating_mul(multiple)
            .saturating_add(AMPLIFICATION_ALLOWANCE);
        if s.sent.saturating_add(bytes as u64) > allowed {
            return false;
        }
        s.sent += bytes as u64;
        true
    }

    fn budget(&mut self, addr: SocketAddr, now: Instant) -> Option<&mut Budget> {
        let addr = canonical(addr);
        if !self.budgets.contains_key(&addr) && self.budgets.len() >= MAX_TRACKED {
            return None;
        }
        let e = self.budgets.entry(addr).or_insert(Seen {
            v: Budget::default(),
            last: now,
        });
        e.last = now;
        Some(&mut e.v)
    }

    /// A new TCP connection from `ip`: counted if admitted.
    pub fn open_connection(&mut self, ip: IpAddr) -> Result<(), ConnRefusal> {
        if self.total_connections >= self.limits.max_connections {
            return Err(ConnRefusal::Total);
        }
        let n = self.connections.entry(ip).or_insert(0);
        if *n >= self.limits.max_connections_per_source {
            return Err(ConnRefusal::PerSource);
        }
        *n += 1;
        self.total_connections += 1;
        Ok(())
    }

    pub fn close_connection(&mut self, ip: IpAddr) {
        if let Some(n) = self.connections.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.connections.remove(&ip);
            }
            self.total_connections = self.total_connections.saturating_sub(1);
        }
    }

    pub fn connections(&self) -> usize {
        self.total_connections
    }

    /// Forget full buckets and idle budgets.
    pub fn sweep(&mut self, now: Instant) {
        let (rate, burst) = self.bucket_shape();
        self.buckets.retain(|_, b| {
            let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
            b.tokens + elapsed * rate < burst
        });
        self.budgets
            .retain(|_, s| now.saturating_duration_since(s.last) < FORGET_AFTER);
    }

    pub fn tracked(&self) -> (usize, usize) {
        (self.buckets.len(), self.budgets.len())
    }
}

fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> EdgeLimits {
        EdgeLimits {
            rate_per_source: 10,
            burst_per_source: 20,
            max_connections: 3,
            max_connections_per_source: 2,
            ..EdgeLimits::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_source_gets_its_burst_then_its_rate() {
        let mut g = SourceGuard::new(limits());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let now = Instant::now();
        let admitted = (0..100).filter(|_| g.admit_request(a, now)).count();
        assert_eq!(admitted, 20, "the burst");
        assert!(g.admit_request(b, now), "another source is not affected");
        tokio::time::advance(Duration::from_secs(1)).await;
        let admitted = (0..100)
            .filter(|_| g.admit_request(a, Instant::now()))
            .count();
        assert_eq!(admitted, 10, "the rate");
        // A source that stays quiet refills, and its entry goes.
        tokio::time::advance(Duration::from_secs(10)).await;
        g.sweep(Instant::now());
        assert_eq!(g.tracked().0, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn heavy_and_light_sources_are_told_apart() {
        let mut g = SourceGuard::new(limits());
        let phone: IpAddr = "192.0.2.1".parse().unwrap();
        let tool: IpAddr = "192.0.2.2".parse().unwrap();
        let now = Instant::now();
        assert!(g.is_light(phone, now), "unknown: light");
        for i in 0..100u64 {
            let t = now + Duration::from_millis(i * 5);
            g.admit_request(tool, t);
            if i % 50 == 0 {
                g.admit_request(phone, t);
            }
        }
        let t = now + Duration::from_millis(500);
        assert!(g.is_light(phone, t));
        assert!(!g.is_light(tool, t), "100 requests in half a second");
        // Quiet for a few seconds: light again.
        assert!(g.is_light(tool, t + Duration::from_secs(5)));
    }

    #[tokio::test(start_paused = true)]
    async fn unproven_addresses_get_a_small_multiple() {
        let mut g = SourceGuard::new(EdgeLimits::default());
        let victim: SocketAddr = "198.51.100.9:5060".parse().unwrap();
        let now = Instant::now();
        // A forged 500-byte SUBSCRIBE "from" the victim.
        g.received(victim, 500, now);
        let mut sent = 0;
        while g.may_send(victim, 900, now) {
            sent += 900;
        }
        assert!(sent <= 500 * 3 + 2048, "{sent}");
        assert!(sent >= 900, "the first NOTIFY goes");
        // Once it answers, it is proven.
        g.proven(victim, now);
        assert!((0..100).all(|_| g.may_send(victim, 900, now)));
        // IPv4-mapped IPv6 is the same address.
        let mapped: SocketAddr = "[::ffff:198.51.100.9]:5060".parse().unwrap();
        assert!(g.may_send(mapped, 900, now));
        // Forgotten after a long silence.
        tokio::time::advance(FORGET_AFTER).await;
        g.sweep(Instant::now());
        assert_eq!(g.tracked().1, 0);
    }

    #[test]
    fn connections_are_bounded_in_total_and_per_source() {
        let mut g = SourceGuard::new(limits());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(g.open_connection(a).is_ok());
        assert!(g.open_connection(a).is_ok());
        assert_eq!(g.open_connection(a), Err(ConnRefusal::PerSource));
        assert!(g.open_connection(b).is_ok());
        assert_eq!(g.open_connection(b), Err(ConnRefusal::Total));
        g.close_connection(a);
        assert!(g.open_connection(b).is_ok());
        assert_eq!(g.connections(), 3);
        g.close_connection("203.0.113.1".parse().unwrap());
        assert_eq!(
            g.connections(),
            3,
            "closing an unknown source changes nothing"
        );
    }
}

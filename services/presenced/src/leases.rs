//! Shard ownership in cluster mode: which of the S virtual shards this
//! compositor owns, through the fenced leases of [`presence_store::Leases`].
//!
//! [`ShardLeases::run`] is one loop, every third of the lease TTL (at most a
//! second, with jitter):
//!
//! 1. renew every held lease; a renewal refused (someone else holds it, or it
//!    expired) or a lease not renewed within its TTL is *lost*;
//! 2. keep this process's membership slot (a lease on an id far above the
//!    shard range) and count the live members `n`;
//! 3. acquire free shards up to `ceil(S / n)`; a shard seen free in two
//!    cycles in a row is taken whatever the target (nobody else wants it);
//! 4. hand back shards above `ceil(S / n) + slack` (a member joined): the
//!    shard is unserved first, its lease released a moment later.
//!
//! Every change is an [`LeaseEvent`] for the compositor, which serves a
//! shard's subject exactly while it owns it. [`crate::fenced::FencedStore`] turns every
//! `commit` into `commit_fenced` with the shard's current token, so a stale
//! owner's writes fail; a `Fenced` answer marks the lease lost at once.
//!
//! Time: `tokio::time`, so the loop runs under paused time in tests.

use presence_store::Leases;
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// Membership slots are leases on ids from here up (far above any shard).
const MEMBER_BASE: u32 = 0x4000_0000;
/// Most compositors one cluster can count.
const MAX_MEMBERS: u32 = 64;
/// How long a shard being handed back stays fenced-writable after it was
/// unserved, so that requests already taken finish before the release.
const HANDBACK_DRAIN: Duration = Duration::from_millis(300);

/// A change of ownership, for the compositor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseEvent {
    /// Serve this shard now.
    Acquired(u32),
    /// Stop serving this shard now (lost, or being handed back).
    Lost(u32),
}

/// Metrics of shard ownership.
#[derive(Clone)]
pub struct LeaseMetrics {
    pub owned: IntGauge,
    pub members: IntGauge,
    pub handovers: IntCounterVec,
    pub renewals: IntCounterVec,
}

impl LeaseMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<LeaseMetrics> {
        let owned = IntGauge::new(
            "presence_compositor_shards_owned",
            "Shards whose lease this compositor holds",
        )?;
        let members = IntGauge::new(
            "presence_compositor_cluster_members",
            "Live compositors as last counted",
        )?;
        let handovers = IntCounterVec::new(
            Opts::new(
                "presence_compositor_shard_handovers_total",
                "Shard ownership changes of this compositor (acquire, lose, release)",
            ),
            &["kind"],
        )?;
        let renewals = IntCounterVec::new(
            Opts::new(
                "presence_compositor_lease_renewals_total",
                "Shard lease renewals by outcome (ok, failed)",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(owned.clone()))?;
        registry.register(Box::new(members.clone()))?;
        registry.register(Box::new(handovers.clone()))?;
        registry.register(Box::new(renewals.clone()))?;
        // Every series from the start, at 0 (see `Metrics::seed`).
        for kind in ["acquire", "lose", "release"] {
            handovers.with_label_values(&[kind]);
        }
        for outcome in ["ok", "failed"] {
            renewals.with_label_values(&[outcome]);
        }
        Ok(LeaseMetrics {
            owned,
            members,
            handovers,
            renewals,
        })
    }
}

#[derive(Debug, Clone, Copy)]
struct Held {
    token: u64,
    /// Our own conservative view of the lease's end: the start of the last
    /// successful acquire/renew call plus the TTL.
    valid_until: Instant,
    /// False once the shard is being handed back (unserved, not yet released).
    serving: bool,
}

#[derive(Default)]
struct State {
    held: HashMap<u32, Held>,
    member: Option<(u32, u64)>,
    seen_free: HashSet<u32>,
    /// Lame duck: no more acquisitions.
    stopping: bool,
}

/// The shard leases of one compositor.
pub struct ShardLeases {
    leases: Arc<dyn Leases>,
    owner: String,
    shards: u32,
    ttl: Duration,
    state: Mutex<State>,
    events: mpsc::UnboundedSender<LeaseEvent>,
    metrics: LeaseMetrics,
}

impl ShardLeases {
    /// A manager for `owner` (the node id) over `shards` shards; the
    /// receiver gets every [`LeaseEvent`].
    pub fn new(
        leases: Arc<dyn Leases>,
        owner: String,
        shards: u32,
        ttl: Duration,
        metrics: LeaseMetrics,
    ) -> (Arc<ShardLeases>, mpsc::UnboundedReceiver<LeaseEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Arc::new(ShardLeases {
                leases,
                owner,
                shards: shards.max(1),
                ttl,
                state: Mutex::new(State::default()),
                events: tx,
                metrics,
            }),
            rx,
        )
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// How many shards there are.
    pub fn shards(&self) -> u32 {
        self.shards
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The token to write `shard` with, if this process holds its lease.
    pub fn fence(&self, shard: u32) -> Option<u64> {
        let now = Instant::now();
        self.lock()
            .held
            .get(&shard)
            .filter(|h| h.valid_until > now)
            .map(|h| h.token)
    }

    /// Whether this process holds and serves `shard` now.
    pub fn serves(&self, shard: u32) -> bool {
        let now = Instant::now();
        self.lock()
            .held
            .get(&shard)
            .is_some_and(|h| h.serving && h.valid_until > now)
    }

    /// Shards held and served, sorted.
    pub fn owned(&self) -> Vec<u32> {
        let now = Instant::now();
        let mut v: Vec<u32> = self
            .lock()
            .held
            .iter()
            .filter(|(_, h)| h.serving && h.valid_until > now)
            .map(|(s, _)| *s)
            .collect();
        v.sort_unstable();
        v
    }

    /// A write with `token` was fenced: the lease is gone.
    pub fn fenced(&self, shard: u32, token: u64) {
        let removed = {
            let mut st = self.lock();
            match st.held.get(&shard) {
                Some(h) if h.token == token => st.held.remove(&shard),
                _ => None,
            }
        };
        if let Some(h) = removed {
            tracing::warn!(shard, "shard lease lost (fenced write)");
            self.after_loss(shard, h);
        }
    }

    fn after_loss(&self, shard: u32, h: Held) {
        self.metrics.handovers.with_label_values(&["lose"]).inc();
        if h.serving {
            let _ = self.events.send(LeaseEvent::Lost(shard));
        }
        self.publish_owned();
    }

    fn publish_owned(&self) {
        let n = self.lock().held.len();
        self.metrics.owned.set(n as i64);
    }

    /// Renew and acquire until `shutdown`; then stop acquiring but keep
    /// renewing (the compositor drains) until [`ShardLeases::release_all`].
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        // A third of the TTL, and at least every second so that released
        // shards are picked up quickly even with long leases.
        let period = (self.ttl / 3).min(Duration::from_secs(1));
        let mut first = true;
        loop {
            let stopping = *shutdown.borrow();
            if stopping {
                self.lock().stopping = true;
            }
            self.cycle(first).await;
            first = false;
            // ±10 % jitter, so that compositors started together drift apart.
            let jitter = period.mul_f64(0.9 + rand::random::<f64>() * 0.2);
            if stopping {
                tokio::time::sleep(jitter).await;
            } else {
                tokio::select! {
                    _ = tokio::time::sleep(jitter) => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
    }

    /// One round: renew, membership, acquire, hand back. Public for tests.
    pub async fn cycle(&self, first: bool) {
        self.renew_all().await;
        let members = self.membership().await;
        self.metrics.members.set(members as i64);
        if self.lock().stopping {
            return;
        }
        if first {
            // Let compositors started together see each other before they
            // take shards, so the first one does not take them all.
            return;
        }
        let target = self.shards.div_ceil(members.max(1));
        self.acquire_free(target).await;
        self.hand_back(target).await;
    }

    async fn renew_all(&self) {
        let held: Vec<(u32, u64)> = self
            .lock()
            .held
            .iter()
            .map(|(s, h)| (*s, h.token))
            .collect();
        let mut set = tokio::task::JoinSet::new();
        for (shard, token) in held {
            let leases = self.leases.clone();
            let owner = self.owner.clone();
            let ttl = self.ttl;
            set.spawn(async move {
                let start = Instant::now();
                let r = leases.renew(shard, &owner, token, ttl).await;
                (shard, token, start, r)
            });
        }
        while let Some(joined) = set.join_next().await {
            let Ok((shard, token, start, r)) = joined else {
                continue;
            };
            match r {
                Ok(true) => {
                    self.metrics.renewals.with_label_values(&["ok"]).inc();
                    if let Some(h) = self.lock().held.get_mut(&shard) {
                        if h.token == token {
                            h.valid_until = start + self.ttl;
                        }
                    }
                }
                Ok(false) => {
                    self.metrics.renewals.with_label_values(&["failed"]).inc();
                    self.fenced(shard, token);
                }
                Err(e) => {
                    self.metrics.renewals.with_label_values(&["failed"]).inc();
                    tracing::warn!(shard, error = %e, "lease renewal failed");
                    let expired = {
                        let mut st = self.lock();
                        match st.held.get(&shard) {
                            Some(h) if h.token == token && h.valid_until <= Instant::now() => {
                                st.held.remove(&shard)
                            }
                            _ => None,
                        }
                    };
                    if let Some(h) = expired {
                        tracing::warn!(shard, "shard lease expired unrenewed");
                        self.after_loss(shard, h);
                    }
                }
            }
        }
    }

    /// Keep (or take) a membership slot; returns the live member count.
    async fn membership(&self) -> u32 {
        let mine = self.lock().member;
        let kept = match mine {
            Some((slot, token)) => matches!(
                self.leases.renew(slot, &self.owner, token, self.ttl).await,
                Ok(true)
            ),
            None => false,
        };
        if !kept {
            self.lock().member = None;
            if !self.lock().stopping {
                for i in 0..MAX_MEMBERS {
                    let slot = MEMBER_BASE + i;
                    if let Ok(Some(token)) = self.leases.acquire(slot, &self.owner, self.ttl).await
                    {
                        self.lock().member = Some((slot, token));
                        break;
                    }
                }
            }
        }
        let mut set = tokio::task::JoinSet::new();
        for i in 0..MAX_MEMBERS {
            let leases = self.leases.clone();
            set.spawn(async move { leases.owner_of(MEMBER_BASE + i).await });
        }
        let mut n = 0;
        while let Some(r) = set.join_next().await {
            if matches!(r, Ok(Ok(Some(_)))) {
                n += 1;
            }
        }
        n.max(1)
    }

    async fn acquire_free(&self, target: u32) {
        let held: HashSet<u32> = self.lock().held.keys().copied().collect();
        let mut set = tokio::task::JoinSet::new();
        for shard in (0..self.shards).filter(|s| !held.contains(s)) {
            let leases = self.leases.clone();
            set.spawn(async move { (shard, leases.owner_of(shard).await) });
        }
        let mut free = Vec::new();
        while let Some(r) = set.join_next().await {
            if let Ok((shard, Ok(None))) = r {
                free.push(shard);
            }
        }
        // Random order, so that compositors racing for free shards mostly
        // try different ones.
        for i in (1..free.len()).rev() {
            let j = rand::random_range(0..=i);
            free.swap(i, j);
        }
        let previously_free = std::mem::take(&mut self.lock().seen_free);
        let mut still_free = HashSet::new();
        for shard in free {
            let count = self.lock().held.len() as u32;
            if count >= target && !previously_free.contains(&shard) {
                still_free.insert(shard);
                continue;
            }
            let start = Instant::now();
            match self.leases.acquire(shard, &self.owner, self.ttl).await {
                Ok(Some(token)) => {
                    self.lock().held.insert(
                        shard,
                        Held {
                            token,
                            valid_until: start + self.ttl,
                            serving: true,
                        },
                    );
                    self.metrics.handovers.with_label_values(&["acquire"]).inc();
                    tracing::debug!(shard, token, "shard acquired");
                    let _ = self.events.send(LeaseEvent::Acquired(shard));
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(shard, error = %e, "lease acquisition failed");
                    still_free.insert(shard);
                }
            }
        }
        self.lock().seen_free = still_free;
        self.publish_owned();
    }

    /// Hand back shards above the fair share (plus slack), one cycle at a time.
    async fn hand_back(&self, target: u32) {
        let slack = (target / 16).max(1);
        let excess: Vec<(u32, u64)> = {
            let mut st = self.lock();
            let serving: Vec<u32> = st
                .held
                .iter()
                .filter(|(_, h)| h.serving)
                .map(|(s, _)| *s)
                .collect();
            let count = serving.len() as u32;
            if count <= target + slack {
                return;
            }
            let mut picked = Vec::new();
            for shard in serving.into_iter().take((count - target) as usize) {
                if let Some(h) = st.held.get_mut(&shard) {
                    h.serving = false;
                    picked.push((shard, h.token));
                }
            }
            picked
        };
        tracing::info!(shards = excess.len(), target, "handing shards back");
        for (shard, _) in &excess {
            let _ = self.events.send(LeaseEvent::Lost(*shard));
        }
        tokio::time::sleep(HANDBACK_DRAIN).await;
        for (shard, token) in excess {
            self.release(shard, token).await;
        }
    }

    async fn release(&self, shard: u32, token: u64) {
        let removed = {
            let mut st = self.lock();
            match st.held.get(&shard) {
                Some(h) if h.token == token => st.held.remove(&shard),
                _ => None,
            }
        };
        if removed.is_some() {
            if let Err(e) = self.leases.release(shard, &self.owner, token).await {
                tracing::warn!(shard, error = %e, "lease release failed (it will expire)");
            }
            self.metrics.handovers.with_label_values(&["release"]).inc();
        }
        self.publish_owned();
    }

    /// Unserve-side of a graceful stop: every shard as an event, so the
    /// compositor stops serving them.
    pub fn unserve_all(&self) -> Vec<u32> {
        let mut st = self.lock();
        st.stopping = true;
        let mut v = Vec::new();
        for (shard, h) in st.held.iter_mut() {
            if h.serving {
                h.serving = false;
                v.push(*shard);
            }
        }
        v
    }

    /// Hand every lease back (after draining), and the membership slot.
    pub async fn release_all(&self) {
        let held: Vec<(u32, u64)> = {
            let mut st = self.lock();
            st.stopping = true;
            st.held.iter().map(|(s, h)| (*s, h.token)).collect()
        };
        for (shard, token) in held {
            self.release(shard, token).await;
        }
        let member = self.lock().member.take();
        if let Some((slot, token)) = member {
            let _ = self.leases.release(slot, &self.owner, token).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fenced::FencedStore;
    use presence_store::MemoryStore;
    use presence_store::{Lease, Op, Store, StoreError};

    fn manager(
        store: &Arc<MemoryStore>,
        owner: &str,
        shards: u32,
    ) -> (Arc<ShardLeases>, mpsc::UnboundedReceiver<LeaseEvent>) {
        ShardLeases::new(
            store.clone(),
            owner.into(),
            shards,
            Duration::from_secs(3),
            LeaseMetrics::register(&Registry::new()).expect("metrics"),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn two_members_share_the_shards_and_one_takes_over_a_dead_one() {
        let store = Arc::new(MemoryStore::new());
        let (a, _ea) = manager(&store, "a", 16);
        let (b, _eb) = manager(&store, "b", 16);
        a.cycle(true).await;
        b.cycle(true).await;
        a.cycle(false).await;
        b.cycle(false).await;
        assert_eq!(a.owned().len(), 8);
        assert_eq!(b.owned().len(), 8);
        // b dies (stops renewing): after the TTL, a takes everything.
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            a.cycle(false).await;
        }
        assert_eq!(a.owned().len(), 16);
        assert!(b.fence(0).is_none() || a.fence(0).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_stale_owner_is_fenced_and_loses_the_shard() {
        let store = Arc::new(MemoryStore::new());
        let (a, mut events) = manager(&store, "a", 4);
        a.cycle(true).await;
        a.cycle(false).await;
        assert_eq!(a.owned(), vec![0, 1, 2, 3]);
        let token = a.fence(2).expect("held");
        // Someone else takes shard 2 after a's lease ran out unrenewed.
        tokio::time::sleep(Duration::from_secs(4)).await;
        let other = store
            .acquire(2, "b", Duration::from_secs(3))
            .await
            .expect("store")
            .expect("free");
        assert!(other > token);
        // a still believes nothing (no cycle ran) but its write is fenced.
        let fenced = FencedStore::new(store.clone(), a.clone());
        let r = fenced
            .commit_fenced(
                2,
                &Lease {
                    owner: "a".into(),
                    token,
                },
                vec![Op::MarkKnown {
                    aor: "sip:x@y".into(),
                }],
            )
            .await;
        assert_eq!(r, Err(StoreError::Fenced));
        assert!(a.fence(2).is_none());
        let mut lost = Vec::new();
        while let Ok(e) = events.try_recv() {
            lost.push(e);
        }
        assert!(lost.contains(&LeaseEvent::Lost(2)), "{lost:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_member_gets_shards_handed_back() {
        let store = Arc::new(MemoryStore::new());
        let (a, _ea) = manager(&store, "a", 16);
        a.cycle(true).await;
        a.cycle(false).await;
        assert_eq!(a.owned().len(), 16);
        let (b, _eb) = manager(&store, "b", 16);
        b.cycle(true).await;
        for _ in 0..3 {
            a.cycle(false).await;
            b.cycle(false).await;
        }
        assert_eq!(a.owned().len() + b.owned().len(), 16);
        assert!(b.owned().len() >= 7, "b owns {:?}", b.owned());
    }
}

//! The notify outbox of the compositor (DESIGN.md invariants 3 to 5): a
//! notify job is committed to its shard's outbox in the same atomic batch as
//! the change it announces ([`Op::Enqueue`]), then pushed to the notify queue,
//! then removed from the outbox. A crash or a failed push between the commit
//! and the push leaves the job in the outbox, and a relay pushes it later:
//! this process when the queue is back, or the shard's next owner as soon as
//! it takes the lease. A job may thus be pushed twice; the notifier treats a
//! repeated job as a no-op or a refresh (CSeq and version checks).
//!
//! Removals are batched: pushed ids are collected per shard and removed in
//! one call per shard every relay tick.

use crate::metrics::Metrics;
use presence_core::commands::NotifyJob;
use presence_store::{Op, Store, StoreError, WorkQueue};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// How many outbox entries one relay pass reads per shard.
const RELAY_BATCH: usize = 512;

pub struct Outbox {
    jobs: Arc<dyn WorkQueue<NotifyJob>>,
    metrics: Arc<Metrics>,
    /// Per shard: ids pushed to the queue, to remove from the outbox.
    pushed: Mutex<HashMap<u32, Vec<String>>>,
    /// Shards whose outbox may hold jobs nobody is pushing: a push failed,
    /// or the shard was just acquired from another owner.
    dirty: Mutex<HashSet<u32>>,
    seq: AtomicU64,
    /// Distinguishes this process's ids from another owner's.
    nonce: u32,
}

/// The creation time an outbox id starts with (see [`Outbox::next_id`]).
fn id_time_ms(id: &str) -> Option<u64> {
    id.split('.').next()?.parse().ok()
}

impl Outbox {
    pub fn new(jobs: Arc<dyn WorkQueue<NotifyJob>>, metrics: Arc<Metrics>) -> Outbox {
        Outbox {
            jobs,
            metrics,
            pushed: Mutex::new(HashMap::new()),
            dirty: Mutex::new(HashSet::new()),
            seq: AtomicU64::new(0),
            nonce: rand::random(),
        }
    }

    /// A new outbox id: creation time (ms, zero-padded so ids sort by it),
    /// a per-process sequence, and the process nonce.
    fn next_id(&self, now_ms: u64) -> String {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        format!("{now_ms:013}.{seq:012}.{:08x}", self.nonce)
    }

    /// The `Op::Enqueue`s that put `jobs` in the outbox, with their ids.
    pub fn enqueue(&self, now_ms: u64, jobs: &[NotifyJob]) -> (Vec<Op>, Vec<String>) {
        let ids: Vec<String> = jobs.iter().map(|_| self.next_id(now_ms)).collect();
        let ops = ids
            .iter()
            .zip(jobs)
            .map(|(id, job)| Op::Enqueue {
                id: id.clone(),
                job: job.clone(),
            })
            .collect();
        (ops, ids)
    }

    /// Push committed jobs to the queue, in order. At the first failed push
    /// the rest wait too (a queue that refuses one would make each of them
    /// wait for its timeout): they stay in the outbox and the shard is
    /// relayed again later.
    pub async fn push(&self, shard: u32, entries: impl IntoIterator<Item = (String, NotifyJob)>) {
        for (id, job) in entries {
            match self.jobs.push(job).await {
                Ok(()) => self
                    .pushed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(shard)
                    .or_default()
                    .push(id),
                Err(e) => {
                    self.metrics
                        .compositor_outbox
                        .with_label_values(&["push_failed"])
                        .inc();
                    tracing::warn!(shard, error = %e, "notify job push failed; kept in the outbox");
                    self.mark(shard);
                    return;
                }
            }
        }
    }

    /// Relay `shard`'s outbox at the next tick.
    pub fn mark(&self, shard: u32) {
        self.dirty
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(shard);
    }

    /// One relay tick: remove what was pushed, then push what marked shards
    /// (and, with `sweep_older_than_ms`, every shard in `owned`: entries
    /// older than that, which nobody is pushing any more) hold.
    pub async fn tick(
        &self,
        store: &dyn Store,
        owned: &[u32],
        now_ms: u64,
        sweep_older_than_ms: Option<u64>,
    ) {
        self.flush(store).await;
        let dirty: Vec<u32> = {
            let mut d = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
            let owned: HashSet<u32> = owned.iter().copied().collect();
            // A shard that moved away is its new owner's to relay.
            d.retain(|s| owned.contains(s));
            d.drain().collect()
        };
        for shard in &dirty {
            self.relay(store, *shard, None).await;
        }
        if let Some(age) = sweep_older_than_ms {
            let cutoff = now_ms.saturating_sub(age);
            for shard in owned.iter().filter(|s| !dirty.contains(s)) {
                self.relay(store, *shard, Some(cutoff)).await;
            }
        }
        self.flush(store).await;
    }

    /// Push the jobs of one shard's outbox (created before `cutoff_ms`, if
    /// given). Marks the shard again if it could not finish.
    async fn relay(&self, store: &dyn Store, shard: u32, cutoff_ms: Option<u64>) {
        let entries = match store.outbox(shard, RELAY_BATCH).await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(shard, error = %e, "cannot read the outbox");
                self.mark(shard);
                return;
            }
        };
        let full = entries.len() == RELAY_BATCH;
        let due: Vec<(String, NotifyJob)> = entries
            .into_iter()
            .filter(|(id, _)| match cutoff_ms {
                None => true,
                Some(c) => id_time_ms(id).is_none_or(|t| t < c),
            })
            .collect();
        if due.is_empty() {
            return;
        }
        self.metrics
            .compositor_outbox
            .with_label_values(&["relayed"])
            .inc_by(due.len() as u64);
        self.push(shard, due).await;
        if full {
            self.mark(shard);
        }
    }

    /// Remove the pushed jobs from their outboxes.
    pub async fn flush(&self, store: &dyn Store) {
        let pushed = std::mem::take(&mut *self.pushed.lock().unwrap_or_else(|e| e.into_inner()));
        for (shard, ids) in pushed {
            match store.outbox_done(shard, &ids).await {
                Ok(()) => {}
                // Left there, they are pushed again by a later sweep: a
                // duplicate, never a loss.
                Err(StoreError::Fenced) => {}
                Err(e) => tracing::warn!(shard, error = %e, "cannot clear the outbox"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use presence_store::{BusError, Delivery, MemoryQueue, MemoryStore};
    use std::time::Duration;

    /// The in-memory queue, refusing pushes while `down` is set (a queue
    /// whose server is unreachable).
    struct Switchable {
        q: MemoryQueue<NotifyJob>,
        down: std::sync::atomic::AtomicBool,
    }

    #[async_trait::async_trait]
    impl WorkQueue<NotifyJob> for Switchable {
        async fn push(&self, job: NotifyJob) -> Result<(), BusError> {
            if self.down.load(Ordering::SeqCst) {
                return Err(BusError::Timeout);
            }
            self.q.push(job).await
        }
        async fn pull(&self) -> Result<Delivery<NotifyJob>, BusError> {
            self.q.pull().await
        }
        fn depth(&self) -> u64 {
            self.q.depth()
        }
    }

    fn switchable(down: bool) -> Arc<Switchable> {
        Arc::new(Switchable {
            q: MemoryQueue::new(),
            down: down.into(),
        })
    }

    fn job(id: &str) -> NotifyJob {
        NotifyJob::Refresh { id: id.into() }
    }

    async fn pull(q: &Switchable) -> NotifyJob {
        let d = tokio::time::timeout(Duration::from_secs(5), q.pull())
            .await
            .expect("a job arrives")
            .expect("pull");
        let j = d.job().clone();
        d.ack();
        j
    }

    #[tokio::test]
    async fn a_failed_push_stays_in_the_outbox_until_relayed() {
        let store = MemoryStore::new();
        let q = switchable(true);
        let o = Outbox::new(q.clone(), Arc::new(Metrics::new()));
        let jobs = vec![job("a"), job("b")];
        let (ops, ids) = o.enqueue(1_000, &jobs);
        store.commit(3, ops).await.expect("commit");
        o.push(3, ids.into_iter().zip(jobs)).await;
        assert_eq!(q.depth(), 0);
        assert_eq!(store.outbox(3, 10).await.expect("outbox").len(), 2);
        // Still down: the relay tries and keeps them.
        o.tick(&store, &[3], 2_000, None).await;
        assert_eq!(store.outbox(3, 10).await.expect("outbox").len(), 2);
        // Back: the next tick pushes both, in order, and clears the outbox.
        q.down.store(false, Ordering::SeqCst);
        o.tick(&store, &[3], 3_000, None).await;
        assert_eq!(pull(&q).await, job("a"));
        assert_eq!(pull(&q).await, job("b"));
        assert!(store.outbox(3, 10).await.expect("outbox").is_empty());
    }

    #[tokio::test]
    async fn jobs_left_by_a_dead_owner_are_pushed_by_the_next() {
        let store = MemoryStore::new();
        let q = switchable(false);
        // The previous owner committed and died before pushing.
        let dead = Outbox::new(q.clone(), Arc::new(Metrics::new()));
        let (ops, _) = dead.enqueue(1_000, &[job("left")]);
        store.commit(5, ops).await.expect("commit");
        let next = Outbox::new(q.clone(), Arc::new(Metrics::new()));
        // Not owned here (yet): not ours to push.
        next.mark(5);
        next.tick(&store, &[1], 2_000, None).await;
        assert_eq!(q.depth(), 0);
        // Acquired: pushed at the next tick.
        next.mark(5);
        next.tick(&store, &[5], 2_000, None).await;
        assert_eq!(pull(&q).await, job("left"));
        assert!(store.outbox(5, 10).await.expect("outbox").is_empty());
    }

    #[tokio::test]
    async fn the_sweep_leaves_young_jobs_to_their_pusher() {
        let store = MemoryStore::new();
        let q = switchable(false);
        let o = Outbox::new(q.clone(), Arc::new(Metrics::new()));
        let (old, _) = o.enqueue(1_000, &[job("old")]);
        let (young, _) = o.enqueue(9_000, &[job("young")]);
        store.commit(2, old).await.expect("commit");
        store.commit(2, young).await.expect("commit");
        o.tick(&store, &[2], 10_000, Some(5_000)).await;
        assert_eq!(pull(&q).await, job("old"));
        assert_eq!(q.depth(), 0);
        assert_eq!(store.outbox(2, 10).await.expect("outbox").len(), 1);
    }

    #[test]
    fn ids_sort_by_time_then_sequence() {
        let q: Arc<dyn WorkQueue<NotifyJob>> = Arc::new(presence_store::MemoryQueue::new());
        let o = Outbox::new(q, Arc::new(Metrics::new()));
        let a = o.next_id(999);
        let b = o.next_id(1_000);
        let c = o.next_id(1_000);
        assert!(a < b && b < c, "{a} {b} {c}");
        assert_eq!(id_time_ms(&b), Some(1_000));
        assert_eq!(id_time_ms("garbage"), None);
    }
}

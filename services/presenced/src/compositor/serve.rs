//! Serving: the shard workers (one per worker serialises its shards'
//! requests, expiries and re-decisions), the shards' bus subjects (every
//! shard in the all-in-one, the leased ones in a cluster, and the owner
//! subject), the expiry sweeper, the outbox relay, the reloads that make
//! work (policy, lists), and the lame-duck handover.

use super::Compositor;
use crate::leases::{LeaseEvent, ShardLeases};
use crate::names::{owner_subject, shard_of_subject, shard_subject};
use presence_core::commands::{Command, Reply};
use presence_core::rlmi::Lists;
use presence_store::{ExpiryKey, Incoming, Requests, StoreError};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Every this many ticks (of 200 ms) the relay sweeps every owned outbox
/// for jobs older than [`OUTBOX_SWEEP_AGE_MS`].
const OUTBOX_SWEEP_TICKS: u64 = 50;
/// Most expiry index entries one sweep of a shard reads.
const SWEEP_LIMIT: usize = 512;
const OUTBOX_SWEEP_AGE_MS: u64 = 5_000;

enum Work {
    Request(Incoming<Command, Reply>),
    Expire(u32, ExpiryKey),
    /// The watcher policy changed: decide the shard's pending watchers again.
    Reauthorize(u32),
    /// The lists changed: recompose the shard's watched lists, end the
    /// subscriptions of its lists that are gone.
    Lists(u32, Arc<Lists>),
}

impl Compositor {
    /// Serve every shard until `shutdown` turns true (the all-in-one: this
    /// process owns every shard).
    pub async fn run(
        self: Arc<Self>,
        bus: Arc<dyn Requests<Command, Reply>>,
        workers: usize,
        shutdown: watch::Receiver<bool>,
    ) {
        self.run_with(bus, workers, None, shutdown).await
    }

    /// Serve the shards whose lease this process holds (cluster mode): a
    /// shard's subject is served from the moment its lease is acquired until
    /// it is lost or handed back. `self.store` must be the
    /// [`FencedStore`](crate::leases::FencedStore) over the same leases.
    /// On `shutdown`, lame duck: stop serving, finish the work taken, then
    /// release every lease so that other compositors take over at once.
    pub async fn run_leased(
        self: Arc<Self>,
        bus: Arc<dyn Requests<Command, Reply>>,
        workers: usize,
        leases: Arc<ShardLeases>,
        events: mpsc::UnboundedReceiver<LeaseEvent>,
        shutdown: watch::Receiver<bool>,
    ) {
        self.run_with(bus, workers, Some((leases, events)), shutdown)
            .await
    }

    async fn run_with(
        self: Arc<Self>,
        bus: Arc<dyn Requests<Command, Reply>>,
        workers: usize,
        leased: Option<(Arc<ShardLeases>, mpsc::UnboundedReceiver<LeaseEvent>)>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let (leases, mut events) = match leased {
            Some((l, e)) => (Some(l), Some(e)),
            None => (None, None),
        };
        let workers = workers.max(1);
        let mut senders = Vec::new();
        let mut handles = Vec::new();
        for _ in 0..workers {
            let (tx, mut rx) = mpsc::channel::<Work>(4096);
            let (btx, mut brx) = mpsc::channel::<Incoming<Command, Reply>>(4096);
            senders.push((tx.clone(), btx));
            let me = self.clone();
            handles.push(tokio::spawn(async move {
                loop {
                    let work = tokio::select! {
                        Some(inc) = brx.recv() => Work::Request(inc),
                        Some(w) = rx.recv() => w,
                        else => break,
                    };
                    match work {
                        Work::Request(inc) => {
                            // No answer when the shard's lease is gone: the
                            // caller sees "no responders" and retries at the
                            // new owner.
                            let (request, replier) = inc.into_parts();
                            if let Some(reply) = me.try_apply(request).await {
                                replier.reply(reply);
                            }
                        }
                        Work::Expire(shard, key) => me.expire(shard, key).await,
                        Work::Lists(shard, before) => match me.lists_changed(shard, &before).await {
                            Ok(()) | Err(StoreError::Fenced) => {}
                            Err(e) => {
                                me.metrics.compositor_store_errors.inc();
                                tracing::warn!(shard, error = %e, "resource lists not recomposed");
                            }
                        },
                        Work::Reauthorize(shard) => match me.reauthorize(shard).await {
                            Ok(()) | Err(StoreError::Fenced) => {}
                            Err(e) => {
                                me.metrics.compositor_store_errors.inc();
                                tracing::warn!(shard, error = %e, "pending watchers not decided again");
                            }
                        },
                    }
                }
            }));
        }
        let serve = |shard: u32| {
            let bus = bus.clone();
            let btx = senders[shard as usize % workers].1.clone();
            async move {
                // A shard held but not served would answer nobody: retry
                // (the bus may be reconnecting) before giving up loudly.
                let mut pause = Duration::from_millis(100);
                for attempt in 1..=8 {
                    match bus.serve(&shard_subject(shard), btx.clone()).await {
                        Ok(()) => return,
                        Err(e) if attempt < 8 => {
                            tracing::warn!(shard, attempt, error = %e, "cannot serve shard yet");
                            tokio::time::sleep(pause).await;
                            pause = (pause * 2).min(Duration::from_secs(2));
                        }
                        Err(e) => tracing::error!(shard, error = %e, "cannot serve shard"),
                    }
                }
            }
        };
        // Every shard this process owns, also on one subject (cluster mode):
        // an edge sends the requests for several of them as one message
        // (`Requests::request_via`). A request for a shard not served here
        // (any more) is dropped: the edge then asks the shard's subject.
        let router = match &leases {
            Some(l) => {
                let subject = owner_subject(l.owner());
                let (otx, mut orx) = mpsc::channel::<Incoming<Command, Reply>>(4096);
                let routes: Vec<_> = senders.iter().map(|(_, b)| b.clone()).collect();
                let l = l.clone();
                let metrics = self.metrics.clone();
                let dispatch = tokio::spawn(async move {
                    while let Some(inc) = orx.recv().await {
                        match shard_of_subject(&inc.subject).filter(|k| l.serves(*k)) {
                            Some(k) => {
                                let _ = routes[k as usize % routes.len()].send(inc).await;
                            }
                            None => {
                                metrics.compositor_misrouted.inc();
                                drop(inc);
                            }
                        }
                    }
                });
                match bus.serve(&subject, otx).await {
                    Ok(()) => Some((subject, dispatch)),
                    Err(e) => {
                        // Edges then ask each shard's subject: slower, not wrong.
                        tracing::warn!(error = %e, %subject, "cannot serve the owner subject");
                        dispatch.abort();
                        None
                    }
                }
            }
            None => None,
        };
        // Leases run on their own task with their own stop signal: they must
        // keep being renewed while this loop drains.
        let (lease_stop_tx, lease_stop_rx) = watch::channel(false);
        let mut lease_task = None;
        match &leases {
            None => {
                for shard in 0..self.shards {
                    self.outbox.mark(shard);
                    serve(shard).await;
                }
            }
            Some(l) => {
                lease_task = Some(tokio::spawn(l.clone().run(lease_stop_rx)));
            }
        }
        let owned = || owned_shards(leases.as_deref(), self.shards);
        // The sweeper: every shard's due expiries go through its worker, so
        // they are serialised with the shard's other writes.
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        // The outbox relay on its own task: a notify queue that hangs must
        // not hold up expiries, serving or the lame-duck handover.
        let (relay_stop_tx, mut relay_stop) = watch::channel(false);
        let relay = {
            let me = self.clone();
            let leases = leases.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(200));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut ticks: u64 = 0;
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = relay_stop.changed() => break,
                    }
                    ticks += 1;
                    let owned = owned_shards(leases.as_deref(), me.shards);
                    // Now and then, every owned outbox: jobs older than a
                    // push takes, that nobody pushes (belt and braces).
                    let sweep = ticks
                        .is_multiple_of(OUTBOX_SWEEP_TICKS)
                        .then_some(OUTBOX_SWEEP_AGE_MS);
                    let now = me.clock.now_ms();
                    me.outbox.tick(&*me.store, &owned, now, sweep).await;
                }
            })
        };
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut policy_changes = self.policy.changes();
        let mut list_changes = self.lists.changes();
        let mut lists_before = self.lists.current();
        // Counting reads every shard: often in one process, seldom in a cluster.
        let mut stats = tokio::time::interval(if leases.is_some() {
            Duration::from_secs(10)
        } else {
            Duration::from_secs(1)
        });
        loop {
            let event = async {
                match events.as_mut() {
                    Some(events) => events.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some(ev) = event => match ev {
                    LeaseEvent::Acquired(shard) => {
                        tracing::debug!(shard, "serving shard");
                        // Jobs a previous owner committed but did not push.
                        self.outbox.mark(shard);
                        serve(shard).await;
                    }
                    LeaseEvent::Lost(shard) => {
                        tracing::debug!(shard, "unserving shard");
                        let _ = bus.unserve(&shard_subject(shard)).await;
                    }
                },
                _ = tick.tick() => {
                    let now = self.clock.now_ms();
                    for shard in owned() {
                        if !self.store.may_have_due(shard, now) {
                            continue;
                        }
                        match self.store.due(shard, now, SWEEP_LIMIT).await {
                            Ok(keys) => {
                                self.store.swept(shard, now, keys.len() < SWEEP_LIMIT);
                                for (_, key) in keys {
                                    let (tx, _) = &senders[shard as usize % workers];
                                    let _ = tx.send(Work::Expire(shard, key)).await;
                                }
                            }
                            Err(e) => {
                                self.metrics.compositor_store_errors.inc();
                                tracing::warn!(shard, error = %e, "expiry scan failed");
                            }
                        }
                    }
                }
                Ok(()) = list_changes.changed() => {
                    let before = std::mem::replace(&mut lists_before, self.lists.current());
                    for shard in owned() {
                        let (tx, _) = &senders[shard as usize % workers];
                        let _ = tx.send(Work::Lists(shard, before.clone())).await;
                    }
                }
                Ok(()) = policy_changes.changed() => {
                    for shard in owned() {
                        let (tx, _) = &senders[shard as usize % workers];
                        let _ = tx.send(Work::Reauthorize(shard)).await;
                    }
                }
                _ = stats.tick() => {
                    if let Ok(c) = self.store.counts().await {
                        self.metrics.compositor_publications.set(c.publications as i64);
                        self.metrics.compositor_subscriptions.set(c.subscriptions as i64);
                        self.metrics.compositor_bindings.set(c.bindings as i64);
                        self.metrics.compositor_documents.set(c.documents as i64);
                    }
                }
                _ = shutdown.changed() => break,
            }
        }
        // Lame duck: stop taking requests (unserve drains what the bus has
        // already taken into the workers' queues), finish them, then hand the
        // leases back.
        if let Some((subject, dispatch)) = router {
            let _ = bus.unserve(&subject).await;
            // The bus handed over what it took; the dispatcher passes it on.
            let _ = dispatch.await;
        }
        let served = match &leases {
            None => (0..self.shards).collect(),
            Some(l) => l.unserve_all(),
        };
        for shard in served {
            let _ = bus.unserve(&shard_subject(shard)).await;
        }
        drop(senders);
        for h in handles {
            let _ = h.await;
        }
        // What was pushed leaves the outbox now, not as duplicates later.
        // A relay pass stuck on a hung queue is left behind: what it did not
        // push stays in the outbox for the next owner.
        let _ = relay_stop_tx.send(true);
        let relay_abort = relay.abort_handle();
        if tokio::time::timeout(Duration::from_secs(2), relay)
            .await
            .is_err()
        {
            relay_abort.abort();
        }
        self.outbox.flush(&*self.store).await;
        if let Some(l) = &leases {
            l.release_all().await;
            tracing::info!("shard leases handed back");
        }
        let _ = lease_stop_tx.send(true);
        if let Some(t) = lease_task {
            t.abort();
        }
    }
}

/// The shards this process serves: its leased ones, or all of them.
fn owned_shards(leases: Option<&ShardLeases>, shards: u32) -> Vec<u32> {
    match leases {
        None => (0..shards).collect(),
        Some(l) => l.owned(),
    }
}

//! The compositor role: Event State Compositor, registrar state and
//! subscription table, sharded. It owns its shards (in the all-in-one, all of
//! them) and serialises every write of a shard on one worker; after each
//! change of a composed document it stores the new version and emits one
//! notify job. Expiry is driven by each shard's expiry index.

use crate::leases::{LeaseEvent, ShardLeases};
use crate::metrics::Metrics;
use crate::names::{new_tag, shard_subject, txn_etag};
use crate::names::{owner_subject, shard_of_subject};
use crate::outbox::Outbox;
use crate::recent::RecentReplies;
use crate::reload::Reloadable;
use crate::Clock;
use bytes::Bytes;
use presence_core::commands::{
    Command, ContactSpec, NotifyJob, Origin, PublishCmd, Quota, Refusal, RegisterAction,
    RegisterCmd, Reply, SubscribeCmd,
};
use presence_core::digest::Users;
use presence_core::packages::{Registry, State};
use presence_core::policy::{Decision, Policy};
use presence_core::rlmi::{Lists, Stored};
use presence_core::{shard_of, Binding, EndReason, Publication, Subscription, View};
use presence_store::{ExpiryKey, Incoming, Op, Requests, Store, StoreError};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

pub struct Compositor {
    pub store: Arc<dyn Store>,
    pub packages: Registry,
    /// Watcher policy; a reload decides pending watchers again.
    pub policy: Arc<Reloadable<Policy>>,
    /// Resource lists (RFC 4662); a reload recomposes the watched ones
    /// and ends the subscriptions of lists that are gone.
    pub lists: Arc<Reloadable<Lists>>,
    pub users: Option<Users>,
    pub clock: Clock,
    pub shards: u32,
    pub metrics: Arc<Metrics>,
    /// Where notify jobs wait between their commit and their push.
    pub outbox: Outbox,
    /// Answers by SIP transaction, for the edge's re-sends.
    pub recent: RecentReplies,
    pub limits: Limits,
}

/// The content type of a resource list's stored document ([`Stored`]):
/// never sent as is, the notifier renders each subscriber's NOTIFY from it.
pub const LIST_DOCUMENT: &str = "application/x-presence-list";

/// The composed document of a resource stays below this many bytes (the
/// sum of its publications' bodies): a NOTIFY carrying it, with its headers,
/// still fits one UDP datagram (65 507 bytes).
pub const MAX_DOCUMENT_BYTES: u32 = 60_000;

/// How much state one resource may hold: every table has a bound, so that
/// no user (or forger) grows the store without limit. Reductions are always
/// allowed; only growth past a limit is refused (`Refusal::TooMany`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Contacts bound to one AoR (`--max-contacts`).
    pub contacts: u32,
    /// Live publications of one AoR and event (`--max-publications`).
    pub publications: u32,
    /// Subscriptions to one AoR and event (`--max-watchers`).
    pub watchers: u32,
}

impl Default for Limits {
    /// A user has a handful of devices (Kamailio's registrar is often run
    /// with max_contacts 5-10); a receptionist's line is watched by a few
    /// hundred phones; a whole enterprise watching one person stays below
    /// ten thousand.
    fn default() -> Self {
        Limits {
            contacts: 10,
            publications: 16,
            watchers: 10_000,
        }
    }
}

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

    /// [`Compositor::apply`], except that a command whose shard lease is
    /// lost gets no answer (`None`): its writes were refused, and the caller
    /// retries at the shard's next owner.
    pub async fn try_apply(&self, cmd: Command) -> Option<Reply> {
        match self.apply_inner(cmd).await {
            Ok(r) => Some(r),
            Err(StoreError::Fenced) => None,
            Err(e) => Some(self.store_failure(e)),
        }
    }

    fn store_failure(&self, e: StoreError) -> Reply {
        self.metrics.compositor_store_errors.inc();
        tracing::error!(error = %e, "store error while applying a command");
        Reply::refused(Refusal::StoreFailed)
    }

    async fn apply_inner(&self, cmd: Command) -> Result<Reply, StoreError> {
        if let Command::Route {
            aor, origin, edge, ..
        } = &cmd
        {
            if !origin.txn.is_empty() {
                return self.route_once(aor, &origin.txn, edge, cmd.clone()).await;
            }
        }
        let origin = match &cmd {
            Command::Register(c) => Some((&c.aor, &c.origin)),
            Command::Publish(c) => Some((&c.aor, &c.origin)),
            Command::Subscribe(c) => Some((&c.aor, &c.origin)),
            _ => None,
        };
        let Some((aor, Origin { txn, deadline_ms })) = origin else {
            return self.apply_once(cmd).await;
        };
        let now = self.clock.now_ms();
        let key = (!txn.is_empty()).then(|| RecentReplies::key(aor, txn));
        if let Some(reply) = key.as_deref().and_then(|k| self.recent.get(k, now)) {
            self.metrics
                .compositor_retried_commands
                .with_label_values(&["answered_again"])
                .inc();
            return Ok(reply);
        }
        if *deadline_ms != 0 && now > *deadline_ms {
            // The edge has answered its UA already (503): applying it now
            // would change state behind an error answer.
            self.metrics
                .compositor_retried_commands
                .with_label_values(&["past_deadline"])
                .inc();
            return Ok(Reply::refused(Refusal::Unavailable));
        }
        let reply = self.apply_once(cmd).await?;
        if let Some(key) = key {
            self.recent.put(key, reply.clone(), now);
        }
        Ok(reply)
    }

    /// A MESSAGE transaction is relayed by one edge: the edge that asked
    /// first gets the routes (again, when it asks again: a lost reply); a
    /// second edge asking for the same transaction (the UA's retransmission
    /// reached it, e.g. after a load balancer moved the UA) is told
    /// `RelayedElsewhere` instead of relaying it a second time.
    async fn route_once(
        &self,
        aor: &str,
        txn: &str,
        edge: &str,
        cmd: Command,
    ) -> Result<Reply, StoreError> {
        let now = self.clock.now_ms();
        let first = format!("route\n{}", RecentReplies::key(aor, txn));
        let mine = format!("{first}\n{edge}");
        if let Some(reply) = self.recent.get(&mine, now) {
            self.metrics
                .compositor_retried_commands
                .with_label_values(&["answered_again"])
                .inc();
            return Ok(reply);
        }
        if self.recent.get(&first, now).is_some() {
            return Ok(Reply::refused(Refusal::RelayedElsewhere));
        }
        let reply = self.apply_once(cmd).await?;
        self.recent.put(first, Reply::Done, now);
        self.recent.put(mine, reply.clone(), now);
        Ok(reply)
    }

    async fn apply_once(&self, cmd: Command) -> Result<Reply, StoreError> {
        match cmd {
            Command::Register(c) => self.register(c).await,
            Command::Publish(c) => self.publish(c).await,
            Command::Subscribe(c) => self.subscribe(c).await,
            Command::Route { aor, method, .. } => self.route(&aor, &method).await,
            Command::EndSubscription { id, reason } => self.end_subscription(&id, reason).await,
            Command::SetHardState { aor, event, body } => {
                self.set_hard_state(&aor, &event, body).await
            }
            Command::RecomposeList { list } => {
                if self.lists.current().is_list(&list)
                    && self.store.is_watched(&list, "presence").await?
                {
                    self.commit_and_notify(&list, "presence", Vec::new(), Vec::new(), None)
                        .await?;
                }
                Ok(Reply::Done)
            }
        }
    }

    /// Commit `ops` plus a recomposition of (aor, event) if its document
    /// changed, with the notify jobs in the outbox (the change's job
    /// first), then push the jobs. Returns nothing: callers build replies.
    async fn commit_and_notify(
        &self,
        aor: &str,
        event: &str,
        mut ops: Vec<Op>,
        mut jobs: Vec<NotifyJob>,
        view: Option<&Overlay<'_>>,
    ) -> Result<(), StoreError> {
        let shard = shard_of(aor, self.shards);
        if let Some((op, version)) = self.recompose(aor, event, view).await? {
            ops.push(op);
            // The lists this resource is a member of are recomposed by
            // their own shards, asked through the outbox.
            if event == "presence" {
                let lists = self.lists.current();
                jobs.extend(
                    lists
                        .lists_of(aor)
                        .iter()
                        .map(|l| NotifyJob::ListMember { list: l.clone() }),
                );
            }
            // A forgotten document (nobody watches it) announces nothing.
            let Some(version) = version else {
                return self.commit_with_jobs(shard, ops, jobs).await;
            };
            // Nor does a change nobody watches: the job would cost a queue
            // round trip and a notifier's reads to find no watcher. A
            // SUBSCRIBE coming later is served by this shard after this
            // commit, and its first NOTIFY carries the new document.
            if !self.store.is_watched(aor, event).await? {
                self.metrics
                    .compositor_changes
                    .with_label_values(&["unwatched", event])
                    .inc();
                return self.commit_with_jobs(shard, ops, jobs).await;
            }
            self.metrics
                .compositor_changes
                .with_label_values(&["announced", event])
                .inc();
            jobs.insert(
                0,
                NotifyJob::Changed {
                    aor: aor.to_string(),
                    event: event.to_string(),
                    version,
                    at_ms: self.clock.now_ms(),
                },
            );
        }
        self.commit_with_jobs(shard, ops, jobs).await
    }

    /// Commit `ops` with `jobs` in the shard's outbox (one atomic batch),
    /// then push the jobs to the notify queue.
    async fn commit_with_jobs(
        &self,
        shard: u32,
        mut ops: Vec<Op>,
        jobs: Vec<NotifyJob>,
    ) -> Result<(), StoreError> {
        let (enqueue, ids) = self.outbox.enqueue(self.clock.now_ms(), &jobs);
        ops.extend(enqueue);
        if ops.is_empty() {
            return Ok(());
        }
        self.store.commit(shard, ops).await?;
        self.outbox.push(shard, ids.into_iter().zip(jobs)).await;
        Ok(())
    }

    /// A new document for (aor, event) if the state differs from the stored
    /// one, with the version it will have (the shard's writes are serialised
    /// here, so it is the stored one plus one). `overlay` is the state about
    /// to be committed (not yet in the store). When nothing backs the
    /// document any more and nobody watches it, the op forgets it (no
    /// version: there is nobody to tell).
    async fn recompose(
        &self,
        aor: &str,
        event: &str,
        overlay: Option<&Overlay<'_>>,
    ) -> Result<Option<(Op, Option<u64>)>, StoreError> {
        let Some(package) = self.packages.get(event) else {
            return Ok(None);
        };
        if event == "presence" {
            if let Some(members) = self.lists.current().members(aor) {
                return self.recompose_list(aor, members, overlay).await;
            }
        }
        let now = self.clock.now_ms();
        let mut pubs = match overlay.and_then(|o| o.publications) {
            Some(p) => p.to_vec(),
            None => self.store.publications(aor, event).await?,
        };
        pubs.retain(|p| p.expires_at_ms > now);
        pubs.sort_by_key(|p| (p.modified_ms, p.seq));
        let hard = match overlay.and_then(|o| o.hard.clone()) {
            Some(h) => h,
            None => self.store.hard_state(aor, event).await?,
        };
        // A package that does not show registrations neither reads nor
        // is kept alive by them.
        let mut bindings = match overlay.and_then(|o| o.bindings) {
            _ if !package.from_registrations() => Vec::new(),
            Some(b) => b.to_vec(),
            None => self.store.bindings(aor).await?,
        };
        bindings.retain(|b| b.expires_at_ms > now);
        let watchers = match (package.watches(), overlay.and_then(|o| o.watchers)) {
            (None, _) => Vec::new(),
            (Some(_), Some(w)) => w.to_vec(),
            (Some(watched), None) => self.live_watchers(aor, watched).await?,
        };
        let current = self.store.document(aor, event).await?;
        let new_watcher = overlay.is_some_and(|o| o.new_watcher);
        let unbacked = pubs.is_empty() && hard.is_none() && bindings.is_empty();
        if (unbacked || !package.kept_unwatched())
            && !new_watcher
            && self.store.watcher_ids(aor, event).await?.is_empty()
        {
            let forget = Op::DeleteDocument {
                aor: aor.to_string(),
                event: event.to_string(),
            };
            return Ok(current.map(|_| (forget, None)));
        }
        let composed = package.compose(&State {
            aor,
            publications: &pubs,
            hard_state: hard.as_deref(),
            bindings: &bindings,
            bindings_before: overlay.and_then(|o| o.bindings_before),
            previous: current.as_ref().map(|d| d.body.as_ref()),
            watchers: &watchers,
            ended: overlay.and_then(|o| o.ended),
            now_ms: now,
        });
        if current.as_ref().is_some_and(|d| {
            d.body.as_ref() == composed.body.as_slice() && d.content_type == composed.content_type
        }) {
            return Ok(None);
        }
        let version = current.map_or(1, |d| d.version + 1);
        let op = Op::PutDocument {
            aor: aor.to_string(),
            event: event.to_string(),
            content_type: composed.content_type,
            body: Bytes::from(composed.body),
        };
        Ok(Some((op, Some(version))))
    }

    /// The live subscriptions to (aor, event).
    async fn live_watchers(&self, aor: &str, event: &str) -> Result<Vec<Subscription>, StoreError> {
        let now = self.clock.now_ms();
        let ids = self.store.watcher_ids(aor, event).await?;
        Ok(self
            .store
            .subscriptions(&ids)
            .await?
            .into_iter()
            .flatten()
            .filter(|s| s.expires_at_ms > now)
            .collect())
    }

    /// Commit a change of the subscriptions to (aor, event) (`ops`, `jobs`),
    /// with the recomposition of the package that shows them (the
    /// presentity's watcher information) when somebody watches that:
    /// `put` is the subscription written (new, approved), `ended` the one
    /// that left and why.
    async fn commit_watchers(
        &self,
        aor: &str,
        event: &str,
        ops: Vec<Op>,
        jobs: Vec<NotifyJob>,
        put: Option<&Subscription>,
        ended: Option<(&str, EndReason)>,
    ) -> Result<(), StoreError> {
        let shard = shard_of(aor, self.shards);
        let Some(winfo) = self.packages.watching(event) else {
            return self.commit_with_jobs(shard, ops, jobs).await;
        };
        if !self.store.is_watched(aor, winfo).await? {
            return self.commit_with_jobs(shard, ops, jobs).await;
        }
        let mut watchers = self.live_watchers(aor, event).await?;
        if let Some(id) = put.map(|s| s.id.as_str()).or(ended.map(|(id, _)| id)) {
            watchers.retain(|s| s.id != id);
        }
        if let Some(s) = put {
            watchers.push(s.clone());
        }
        let overlay = Overlay {
            watchers: Some(&watchers),
            ended,
            ..Overlay::default()
        };
        self.commit_and_notify(aor, winfo, ops, jobs, Some(&overlay))
            .await
    }

    /// What the watcher policy current now says of `watcher` watching
    /// (aor, event).
    fn decide(&self, aor: &str, event: &str, watcher: &str) -> Decision {
        let policy = self.policy.current();
        if self.packages.get(event).is_some_and(|p| p.private()) {
            policy.decide_private(aor, watcher)
        } else {
            policy.decide(aor, watcher)
        }
    }

    /// Decide `shard`'s pending subscriptions again (the policy was
    /// reloaded): one a rule now accepts becomes active (a NOTIFY with the
    /// state); one a rule now blocks ends (`rejected`); the others stay
    /// pending.
    async fn reauthorize(&self, shard: u32) -> Result<(), StoreError> {
        for id in self.store.pending_subscriptions(shard).await? {
            let Some(mut sub) = self.store.subscription(&id).await? else {
                // Its record is gone (expired by TTL): drop the listing.
                let ops = vec![Op::DeleteSubscription { id }];
                self.store.commit(shard, ops).await?;
                continue;
            };
            let (aor, event) = (sub.aor.clone(), sub.event.clone());
            match self.decide(&aor, &event, &sub.watcher) {
                Decision::Accept(View::Pending) => {}
                Decision::Accept(view) => {
                    self.metrics
                        .compositor_authorizations
                        .with_label_values(&["approved"])
                        .inc();
                    sub.view = view;
                    let ops = vec![Op::PutSubscription(sub.clone())];
                    let jobs = vec![NotifyJob::Refresh { id }];
                    self.commit_watchers(&aor, &event, ops, jobs, Some(&sub), None)
                        .await?;
                }
                Decision::Reject => {
                    self.metrics
                        .compositor_authorizations
                        .with_label_values(&["rejected"])
                        .inc();
                    let mut ops = vec![Op::DeleteSubscription { id: id.clone() }];
                    ops.extend(self.forget_unwatched(&aor, &event, &id).await?);
                    let job = NotifyJob::Terminated {
                        sub: Box::new(sub),
                        reason: EndReason::Rejected,
                    };
                    let ended = Some((id.as_str(), EndReason::Rejected));
                    self.commit_watchers(&aor, &event, ops, vec![job], None, ended)
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// [`Compositor::recompose`] for resource list `list`: its document is
    /// its members' presence documents as composed now ([`Stored`]), kept
    /// only while somebody watches the list.
    async fn recompose_list(
        &self,
        list: &str,
        members: &[String],
        overlay: Option<&Overlay<'_>>,
    ) -> Result<Option<(Op, Option<u64>)>, StoreError> {
        let current = self.store.document(list, "presence").await?;
        let new_watcher = overlay.is_some_and(|o| o.new_watcher);
        if !new_watcher && self.store.watcher_ids(list, "presence").await?.is_empty() {
            let forget = Op::DeleteDocument {
                aor: list.to_string(),
                event: "presence".into(),
            };
            return Ok(current.map(|_| (forget, None)));
        }
        let mut docs = Vec::with_capacity(members.len());
        for m in members {
            let doc = self.store.document(m, "presence").await?;
            docs.push((m.clone(), doc.map(|d| d.body.to_vec())));
        }
        let previous = current.as_ref().and_then(|d| Stored::decode(&d.body));
        let version = current.as_ref().map_or(1, |d| d.version + 1);
        let stored = Stored::next(previous.as_ref(), version, docs);
        if previous
            .as_ref()
            .is_some_and(|p| p.members == stored.members && p.full_at == stored.full_at)
        {
            return Ok(None);
        }
        let op = Op::PutDocument {
            aor: list.to_string(),
            event: "presence".into(),
            content_type: LIST_DOCUMENT.into(),
            body: Bytes::from(stored.encode()),
        };
        Ok(Some((op, Some(version))))
    }

    /// The lists changed (`before` is what they were): recompose each
    /// watched list of `shard`; end the subscriptions to lists of `shard`
    /// that are gone (`noresource`).
    async fn lists_changed(&self, shard: u32, before: &Lists) -> Result<(), StoreError> {
        let now = self.lists.current();
        for list in now.uris().filter(|l| shard_of(l, self.shards) == shard) {
            if self.store.is_watched(list, "presence").await? {
                self.commit_and_notify(list, "presence", Vec::new(), Vec::new(), None)
                    .await?;
            }
        }
        let gone = before
            .uris()
            .filter(|l| shard_of(l, self.shards) == shard && !now.is_list(l));
        for list in gone {
            for id in self.store.watcher_ids(list, "presence").await? {
                self.end_subscription(&id, EndReason::Noresource).await?;
            }
        }
        Ok(())
    }

    /// The op that forgets (aor, event)'s document when the subscription
    /// `leaving` was its last watcher and nothing else backs it (no live
    /// publication, hard state or binding): its version need not go on.
    async fn forget_unwatched(
        &self,
        aor: &str,
        event: &str,
        leaving: &str,
    ) -> Result<Option<Op>, StoreError> {
        if self.store.document(aor, event).await?.is_none() {
            return Ok(None);
        }
        if self
            .store
            .watcher_ids(aor, event)
            .await?
            .iter()
            .any(|id| id != leaving)
        {
            return Ok(None);
        }
        let forget = Op::DeleteDocument {
            aor: aor.to_string(),
            event: event.to_string(),
        };
        let is_list = event == "presence" && self.lists.current().is_list(aor);
        if is_list || !self.packages.get(event).is_some_and(|p| p.kept_unwatched()) {
            return Ok(Some(forget));
        }
        let now = self.clock.now_ms();
        let backed = self
            .store
            .publications(aor, event)
            .await?
            .iter()
            .any(|p| p.expires_at_ms > now)
            || self.store.hard_state(aor, event).await?.is_some()
            || self
                .packages
                .get(event)
                .is_some_and(|p| p.from_registrations())
                && self
                    .store
                    .bindings(aor)
                    .await?
                    .iter()
                    .any(|b| b.expires_at_ms > now);
        Ok((!backed).then_some(forget))
    }

    /// Commit a change of `aor`'s bindings (`ops`, `overlay`) with the
    /// recomposition of each package that shows registrations; the first
    /// commit carries the binding ops.
    async fn commit_bindings(
        &self,
        aor: &str,
        mut ops: Vec<Op>,
        overlay: &Overlay<'_>,
    ) -> Result<(), StoreError> {
        let events = self.packages.from_registrations();
        if events.is_empty() {
            let shard = shard_of(aor, self.shards);
            return self.commit_with_jobs(shard, ops, Vec::new()).await;
        }
        for event in events {
            let ops = std::mem::take(&mut ops);
            self.commit_and_notify(aor, event, ops, Vec::new(), Some(overlay))
                .await?;
        }
        Ok(())
    }

    async fn register(&self, c: RegisterCmd) -> Result<Reply, StoreError> {
        let now = self.clock.now_ms();
        let stored: Vec<Binding> = self.store.bindings(&c.aor).await?;
        let mut bindings = stored.clone();
        bindings.retain(|b| b.expires_at_ms > now);
        let before = bindings.clone();
        let action = c.action.clone();
        match action {
            RegisterAction::Query => {
                return Ok(Reply::Registered {
                    bindings,
                    now_ms: now,
                });
            }
            RegisterAction::RemoveAll => bindings.clear(),
            RegisterAction::Update(specs) => {
                for spec in specs {
                    let existing = bindings
                        .iter()
                        .position(|b| same_contact(&b.uri, &spec.uri));
                    if let Some(i) = existing {
                        let b = &bindings[i];
                        if b.call_id == c.call_id && c.cseq < b.cseq {
                            return Ok(Reply::refused(Refusal::OutOfOrderCSeq));
                        }
                        bindings.remove(i);
                    }
                    if spec.expires > 0 {
                        bindings.push(binding_from(&c, spec, now));
                    }
                }
            }
        }
        let limit = self.limits.contacts;
        if bindings.len() > before.len() && bindings.len() > limit as usize {
            return Ok(Reply::refused(Refusal::TooMany {
                what: Quota::Contacts,
                limit,
            }));
        }
        if before == bindings {
            return Ok(Reply::Registered {
                bindings,
                now_ms: now,
            });
        }
        let ops = vec![
            Op::PutBindings {
                aor: c.aor.clone(),
                bindings: bindings.clone(),
            },
            Op::MarkKnown { aor: c.aor.clone() },
        ];
        let overlay = Overlay {
            bindings: Some(&bindings),
            // Also a binding whose time was up and not yet swept: it
            // leaves (`expired`) with this change.
            bindings_before: Some(&stored),
            ..Overlay::default()
        };
        self.commit_bindings(&c.aor, ops, &overlay).await?;
        Ok(Reply::Registered {
            bindings,
            now_ms: now,
        })
    }

    async fn publish(&self, c: PublishCmd) -> Result<Reply, StoreError> {
        let now = self.clock.now_ms();
        let mut pubs = self.store.publications(&c.aor, &c.event).await?;
        pubs.retain(|p| p.expires_at_ms > now);
        let mut ops = Vec::new();
        let etag;
        match &c.if_match {
            Some(tag) => {
                let Some(pos) = pubs.iter().position(|p| &p.etag == tag) else {
                    // This transaction may have replaced it already (its
                    // answer lost with a shard owner that died).
                    let mine = txn_etag(tag, &c.origin.txn);
                    if c.expires != 0
                        && !c.origin.txn.is_empty()
                        && pubs.iter().any(|p| p.etag == mine)
                    {
                        return Ok(self.published_again(mine, c.expires));
                    }
                    return Ok(Reply::refused(Refusal::UnknownEtag));
                };
                let old = pubs.remove(pos);
                ops.push(Op::DeletePublication {
                    aor: c.aor.clone(),
                    event: c.event.clone(),
                    etag: old.etag.clone(),
                });
                if c.expires == 0 {
                    etag = old.etag;
                } else {
                    etag = txn_etag(tag, &c.origin.txn);
                    let (content_type, body, modified_ms, seq) = match &c.body {
                        Some((ct, b)) => (ct.clone(), b.clone(), now, next_seq()),
                        None => (
                            old.content_type.clone(),
                            old.body.clone(),
                            old.modified_ms,
                            old.seq,
                        ),
                    };
                    let p = Publication {
                        etag: etag.clone(),
                        aor: c.aor.clone(),
                        event: c.event.clone(),
                        expires_at_ms: now + c.expires as u64 * 1000,
                        content_type,
                        body,
                        modified_ms,
                        seq,
                    };
                    pubs.push(p.clone());
                    ops.push(Op::PutPublication(p));
                }
            }
            None => {
                let Some((ct, body)) = &c.body else {
                    return Ok(Reply::refused(Refusal::MissingBody));
                };
                let limit = self.limits.publications;
                if pubs.len() >= limit as usize {
                    return Ok(Reply::refused(Refusal::TooMany {
                        what: Quota::Publications,
                        limit,
                    }));
                }
                etag = txn_etag(&format!("{}\0{}", c.aor, c.event), &c.origin.txn);
                if !c.origin.txn.is_empty() && pubs.iter().any(|p| p.etag == etag) {
                    // Made by this transaction already (see above).
                    return Ok(self.published_again(etag, c.expires));
                }
                let p = Publication {
                    etag: etag.clone(),
                    aor: c.aor.clone(),
                    event: c.event.clone(),
                    expires_at_ms: now + c.expires as u64 * 1000,
                    content_type: ct.clone(),
                    body: body.clone(),
                    modified_ms: now,
                    seq: next_seq(),
                };
                pubs.push(p.clone());
                ops.push(Op::PutPublication(p));
            }
        }
        // Every live publication goes into one document, and every watcher
        // gets all of it in one NOTIFY: bounded below what a datagram carries.
        let total: usize = pubs.iter().map(|p| p.body.len()).sum();
        if total > MAX_DOCUMENT_BYTES as usize && c.body.is_some() {
            return Ok(Reply::refused(Refusal::DocumentTooLarge {
                limit: MAX_DOCUMENT_BYTES,
            }));
        }
        ops.push(Op::MarkKnown { aor: c.aor.clone() });
        let overlay = Overlay {
            publications: Some(&pubs),
            ..Overlay::default()
        };
        self.commit_and_notify(&c.aor, &c.event, ops, Vec::new(), Some(&overlay))
            .await?;
        Ok(Reply::Published {
            etag,
            expires: c.expires,
        })
    }

    /// The answer to a PUBLISH whose transaction was applied already by an
    /// earlier shard owner (found by its [`txn_etag`]).
    fn published_again(&self, etag: String, expires: u32) -> Reply {
        self.metrics
            .compositor_retried_commands
            .with_label_values(&["applied_before"])
            .inc();
        Reply::Published { etag, expires }
    }

    async fn subscribe(&self, c: SubscribeCmd) -> Result<Reply, StoreError> {
        let now = self.clock.now_ms();
        let shard = shard_of(&c.aor, self.shards);
        if let Some(id) = &c.dialog {
            // The dialog's identifiers are not a secret (they travel in
            // every NOTIFY): the request must also come from the same
            // watcher (the authenticated identity with Digest on), for the
            // same resource, event and event id. Anything else is another
            // dialog, which does not exist here.
            let Some(mut sub) = self.store.subscription(id).await?.filter(|s| {
                s.call_id == c.call_id
                    && s.remote_tag == c.remote_tag
                    && s.watcher == c.watcher
                    && s.aor == c.aor
                    && s.event == c.event
                    && s.event_id == c.event_id
                    && s.expires_at_ms > now
            }) else {
                return Ok(Reply::refused(Refusal::NoSuchSubscription));
            };
            if c.cseq <= sub.remote_cseq {
                return Ok(Reply::refused(Refusal::OutOfOrderCSeq));
            }
            let view = sub.view;
            if c.expires == 0 {
                sub.remote_cseq = c.cseq;
                let mut ops = vec![Op::DeleteSubscription { id: id.clone() }];
                ops.extend(self.forget_unwatched(&sub.aor, &sub.event, id).await?);
                let job = NotifyJob::Terminated {
                    sub: Box::new(sub),
                    reason: EndReason::Unsubscribed,
                };
                let ended = Some((id.as_str(), EndReason::Unsubscribed));
                self.commit_watchers(&c.aor, &c.event, ops, vec![job], None, ended)
                    .await?;
                return Ok(Reply::Subscribed {
                    id: id.clone(),
                    expires: 0,
                    view,
                });
            }
            sub.remote_cseq = c.cseq;
            sub.expires_at_ms = now + c.expires as u64 * 1000;
            sub.remote_target = c.remote_target;
            sub.flow = c.flow;
            // A refresh says again which rate controls it wants (RFC 6446
            // §4.1: one left out is removed).
            sub.rates = c.rates.grant(c.expires);
            let job = NotifyJob::Refresh { id: id.clone() };
            self.commit_with_jobs(shard, vec![Op::PutSubscription(sub)], vec![job])
                .await?;
            return Ok(Reply::Subscribed {
                id: id.clone(),
                expires: c.expires,
                view,
            });
        }
        let view = match self.decide(&c.aor, &c.event, &c.watcher) {
            Decision::Reject => return Ok(Reply::refused(Refusal::PolicyRejected)),
            Decision::Accept(view) => view,
        };
        let limit = self.limits.watchers;
        if c.expires > 0 && self.store.watcher_ids(&c.aor, &c.event).await?.len() >= limit as usize
        {
            return Ok(Reply::refused(Refusal::TooMany {
                what: Quota::Watchers,
                limit,
            }));
        }
        let id = presence_core::subscription_id(&new_tag(), shard_of(&c.aor, self.shards));
        let sub = Subscription {
            id: id.clone(),
            aor: c.aor.clone(),
            event: c.event.clone(),
            event_id: c.event_id,
            watcher: c.watcher,
            call_id: c.call_id,
            remote_tag: c.remote_tag,
            local_uri: c.local_uri,
            remote_uri: c.remote_uri,
            remote_target: c.remote_target,
            route_set: c.route_set,
            flow: c.flow,
            remote_cseq: c.cseq,
            expires_at_ms: now + c.expires as u64 * 1000,
            content_type: c.content_type,
            view,
            rates: c.rates.grant(c.expires),
        };
        // No document is stored for a resource without state (a fetch of
        // a never-used AoR must leave nothing behind): the notifier sends
        // the package's "no state" document until something is composed.
        let mut ops = Vec::new();
        // A package whose document is not kept unwatched has none yet for
        // its first watcher: compose it with the subscription.
        let is_list = c.event == "presence" && self.lists.current().is_list(&c.aor);
        if (is_list
            || self
                .packages
                .get(&c.event)
                .is_some_and(|p| !p.kept_unwatched()))
            && self.store.document(&c.aor, &c.event).await?.is_none()
        {
            let overlay = Overlay {
                new_watcher: true,
                ..Overlay::default()
            };
            if let Some((op, _)) = self.recompose(&c.aor, &c.event, Some(&overlay)).await? {
                ops.push(op);
            }
        }
        if c.expires == 0 {
            // A fetch: one NOTIFY with the state, then terminated.
            let job = NotifyJob::Terminated {
                sub: Box::new(sub),
                reason: EndReason::Unsubscribed,
            };
            self.commit_with_jobs(shard, ops, vec![job]).await?;
            return Ok(Reply::Subscribed {
                id,
                expires: 0,
                view,
            });
        }
        let put = sub.clone();
        ops.push(Op::PutSubscription(sub));
        let job = NotifyJob::Refresh { id: id.clone() };
        self.commit_watchers(&c.aor, &c.event, ops, vec![job], Some(&put), None)
            .await?;
        Ok(Reply::Subscribed {
            id,
            expires: c.expires,
            view,
        })
    }

    async fn route(&self, aor: &str, method: &str) -> Result<Reply, StoreError> {
        let now = self.clock.now_ms();
        let mut bindings = self.store.bindings(aor).await?;
        bindings.retain(|b| b.expires_at_ms > now);
        let any = !bindings.is_empty();
        bindings.retain(|b| b.accepts(method));
        if !bindings.is_empty() {
            bindings.sort_by(|a, b| q_of(b).total_cmp(&q_of(a)));
            return Ok(Reply::Routes(bindings));
        }
        let known = any
            || self.store.is_known(aor).await?
            || self.users.as_ref().is_some_and(|u| {
                let (user, domain) = aor
                    .strip_prefix("sip:")
                    .and_then(|a| a.rsplit_once('@'))
                    .unwrap_or(("", ""));
                u.contains(user, domain)
            });
        Ok(if known {
            Reply::refused(Refusal::NotRegistered)
        } else {
            Reply::refused(Refusal::UnknownUser)
        })
    }

    async fn end_subscription(&self, id: &str, reason: EndReason) -> Result<Reply, StoreError> {
        if let Some(sub) = self.store.subscription(id).await? {
            let mut ops = vec![Op::DeleteSubscription { id: id.to_string() }];
            ops.extend(self.forget_unwatched(&sub.aor, &sub.event, id).await?);
            let (aor, event) = (sub.aor.clone(), sub.event.clone());
            let ended = Some((id, reason));
            if reason != EndReason::Gone {
                let job = NotifyJob::Terminated {
                    sub: Box::new(sub),
                    reason,
                };
                self.commit_watchers(&aor, &event, ops, vec![job], None, ended)
                    .await?;
            } else {
                self.commit_watchers(&aor, &event, ops, Vec::new(), None, ended)
                    .await?;
                self.store.drop_cseq(id).await?;
            }
        }
        Ok(Reply::Done)
    }

    async fn set_hard_state(
        &self,
        aor: &str,
        event: &str,
        body: Option<Bytes>,
    ) -> Result<Reply, StoreError> {
        let op = match &body {
            Some(b) => Op::PutHardState {
                aor: aor.into(),
                event: event.into(),
                body: b.clone(),
            },
            None => Op::DeleteHardState {
                aor: aor.into(),
                event: event.into(),
            },
        };
        let overlay = Overlay {
            hard: Some(body),
            ..Overlay::default()
        };
        self.commit_and_notify(aor, event, vec![op], Vec::new(), Some(&overlay))
            .await?;
        Ok(Reply::Done)
    }

    /// Handle one due entry of a shard's expiry index.
    async fn expire(&self, shard: u32, key: ExpiryKey) {
        match self.expire_inner(shard, key).await {
            Ok(()) => {}
            // The shard moved; its new owner handles the entry.
            Err(StoreError::Fenced) => {}
            Err(e) => {
                self.metrics.compositor_store_errors.inc();
                tracing::warn!(error = %e, "expiry handling failed; will retry");
            }
        }
    }

    async fn expire_inner(&self, shard: u32, key: ExpiryKey) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        match &key {
            ExpiryKey::Publication { aor, event, etag } => {
                let mut pubs = self.store.publications(aor, event).await?;
                match pubs.iter().position(|p| &p.etag == etag) {
                    Some(i) if pubs[i].expires_at_ms <= now => {
                        pubs.remove(i);
                        self.metrics
                            .compositor_expired
                            .with_label_values(&["publication"])
                            .inc();
                        let ops = vec![Op::DeletePublication {
                            aor: aor.clone(),
                            event: event.clone(),
                            etag: etag.clone(),
                        }];
                        let overlay = Overlay {
                            publications: Some(&pubs),
                            ..Overlay::default()
                        };
                        self.commit_and_notify(aor, event, ops, Vec::new(), Some(&overlay))
                            .await?;
                    }
                    Some(_) => {}
                    None => {
                        self.store
                            .commit(shard, vec![Op::Unindex(key.clone())])
                            .await?;
                    }
                }
            }
            ExpiryKey::Subscription { id } => match self.store.subscription(id).await? {
                Some(sub) if sub.expires_at_ms <= now => {
                    self.metrics
                        .compositor_expired
                        .with_label_values(&["subscription"])
                        .inc();
                    let mut ops = vec![Op::DeleteSubscription { id: id.clone() }];
                    ops.extend(self.forget_unwatched(&sub.aor, &sub.event, id).await?);
                    let (aor, event) = (sub.aor.clone(), sub.event.clone());
                    let job = NotifyJob::Terminated {
                        sub: Box::new(sub),
                        reason: EndReason::Timeout,
                    };
                    let ended = Some((id.as_str(), EndReason::Timeout));
                    self.commit_watchers(&aor, &event, ops, vec![job], None, ended)
                        .await?;
                }
                Some(_) => {}
                None => {
                    self.store
                        .commit(shard, vec![Op::Unindex(key.clone())])
                        .await?;
                }
            },
            ExpiryKey::Bindings { aor } => {
                let stored = self.store.bindings(aor).await?;
                let mut bindings = stored.clone();
                bindings.retain(|b| b.expires_at_ms > now);
                if bindings.len() == stored.len() && !stored.is_empty() {
                    return Ok(());
                }
                self.metrics
                    .compositor_expired
                    .with_label_values(&["binding"])
                    .inc_by((stored.len() - bindings.len()) as u64);
                let ops = vec![Op::PutBindings {
                    aor: aor.clone(),
                    bindings: bindings.clone(),
                }];
                let overlay = Overlay {
                    bindings: Some(&bindings),
                    bindings_before: Some(&stored),
                    ..Overlay::default()
                };
                self.commit_bindings(aor, ops, &overlay).await?;
            }
        }
        Ok(())
    }
}

/// The shards this process serves: its leased ones, or all of them.
fn owned_shards(leases: Option<&ShardLeases>, shards: u32) -> Vec<u32> {
    match leases {
        None => (0..shards).collect(),
        Some(l) => l.owned(),
    }
}

/// State about to be committed, used instead of what the store holds.
#[derive(Default)]
struct Overlay<'a> {
    publications: Option<&'a [Publication]>,
    bindings: Option<&'a [Binding]>,
    /// A subscription committed with this change watches the resource
    /// (its document is kept even if it is not kept unwatched).
    new_watcher: bool,
    /// With `bindings`: what they were before this change.
    bindings_before: Option<&'a [Binding]>,
    /// The live subscriptions of the package a package watches
    /// ([`presence_core::packages::EventPackage::watches`]) after this
    /// change, and the one that has just ended.
    watchers: Option<&'a [Subscription]>,
    ended: Option<(&'a str, EndReason)>,
    hard: Option<Option<Bytes>>,
}

fn binding_from(c: &RegisterCmd, spec: ContactSpec, now: u64) -> Binding {
    Binding {
        aor: c.aor.clone(),
        uri: spec.uri,
        params: spec.params,
        expires_at_ms: now + spec.expires as u64 * 1000,
        call_id: c.call_id.clone(),
        cseq: c.cseq,
        flow: c.flow.clone(),
        methods: spec.methods,
        q: spec.q,
    }
}

/// RFC 3261 §10.3: contact URIs compare by URI equality; we compare the text
/// with a case-insensitive scheme and host, which is what UAs produce.
fn same_contact(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

fn q_of(b: &Binding) -> f64 {
    b.q.as_deref().and_then(|q| q.parse().ok()).unwrap_or(1.0)
}

fn next_seq() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(1);
    SEQ.fetch_add(1, Ordering::Relaxed)
}

//! The notifier role: takes notify jobs, renders each watcher's NOTIFY, and
//! hands it to the edge that holds the watcher's flow.
//!
//! Per subscription at most one NOTIFY is in flight. A change that arrives
//! meanwhile is remembered and sent when the previous one completes, with the
//! document as it is *then*: bursts coalesce into the latest version, and a
//! watcher never sees an older version after a newer one. NOTIFY CSeq comes
//! from the store's per-subscription counter, so it only goes up. A 481, 408
//! or a transaction timeout removes the subscription.

use crate::coalesce::Coalesced;
use crate::edge::{OutRequest, Outcome};
use crate::faults::Faults;
use crate::metrics::Metrics;
mod heartbeats;
mod render;

use crate::reload::Reloadable;
use crate::Clock;
use bytes::Bytes;
use heartbeats::Heartbeats;
use presence_core::commands::{Command, NotifyJob, Reply};
use presence_core::packages::{Registry, State};
use presence_core::policy::Policy;
use presence_core::rlmi::Lists;
use presence_core::{shard_of, Document, EndReason, Subscription, View};
use presence_sip::rsip;
use presence_store::{BusError, Requests, Store, StoreResult, WorkQueue};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

pub struct Notifier {
    pub store: Arc<dyn Store>,
    pub jobs: Arc<dyn WorkQueue<NotifyJob>>,
    pub edges: Arc<dyn Requests<OutRequest, Outcome>>,
    pub shards_bus: Arc<dyn Requests<Command, Reply>>,
    pub packages: Registry,
    pub clock: Clock,
    pub shards: u32,
    pub metrics: Arc<Metrics>,
    slots: Mutex<HashMap<String, Slot>>,
    /// Edges found gone: their flows' NOTIFYs go through another edge at
    /// once (after one attempt), not after [`EDGE_GONE_AFTER`] each time.
    gone: crate::gone_edges::GoneEdges,
    /// The live edges (cluster mode): who is gone, and who takes over.
    roster: Option<Arc<crate::roster::Roster>>,
    faults: Faults,
    sent: AtomicU64,
    /// NOTIFYs in [`Notifier::send`] now.
    sending: std::sync::atomic::AtomicUsize,
    /// A change with more watchers than this is split into batches of this
    /// size, all but one queued for other notifiers.
    batch: usize,
    /// `--notify-min-interval-ms` (zero: off).
    min_interval: Duration,
    /// Resource lists, and the policy their members are shown by.
    lists: Arc<Reloadable<Lists>>,
    policy: Arc<Reloadable<Policy>>,
    heartbeats: Mutex<Heartbeats>,
    /// Subscription reads and CSeqs the NOTIFY tasks ask for together, made
    /// as one store call each ([`crate::coalesce`]); started on first use.
    subs: std::sync::OnceLock<Coalesced<String, Option<Subscription>>>,
    cseqs: std::sync::OnceLock<Coalesced<(String, u64), Option<u32>>>,
}

/// Whether `pending` may be held back by rate control: a state change,
/// not a first or refresh NOTIFY (`force`) nor a final one.
fn held(pending: &Option<Pending>) -> bool {
    matches!(pending, Some(Pending::Latest { force: false, .. }))
}

/// Default of `--notify-batch`.
pub use crate::names::DEFAULT_BATCH;

#[derive(Default)]
struct Slot {
    busy: bool,
    pending: Option<Pending>,
    last_version: u64,
    /// When the oldest unsent change happened (for the latency histogram).
    changed_at_ms: Option<u64>,
    /// Jobs waiting for the pending NOTIFY to be answered (or to become moot).
    waiters: Vec<Arc<JobDone>>,
    /// The subscription record (remote CSeq, expiry, view) whose NOTIFY
    /// was answered last: a Refresh job for the same record again (pushed
    /// twice by the outbox, redelivered by the queue) sends nothing new.
    refreshed: Option<(u32, u64, View)>,
    /// When this process last sent the subscription a NOTIFY (for
    /// `--notify-min-interval-ms`).
    last_sent: Option<tokio::time::Instant>,
    /// Wakes a drain holding back a change when something that must not
    /// wait (a refresh, the final NOTIFY) joins it; made by the first hold.
    wake: Option<Arc<tokio::sync::Notify>>,
    /// The subscription's own shortest time between state-change NOTIFYs
    /// (RFC 6446 `max-rate`; zero: none), learnt from its record.
    interval: Duration,
}

/// Counts down the NOTIFYs one notify job asked for; the job is acknowledged
/// to its queue only when all of them were answered (or became moot: the
/// subscription ended, a newer version already went out). A notifier that
/// dies before that leaves the job unacknowledged, and the queue hands it to
/// another notifier.
struct JobDone {
    left: AtomicUsize,
    notify: tokio::sync::Notify,
}

impl JobDone {
    fn new(n: usize) -> Arc<JobDone> {
        Arc::new(JobDone {
            left: AtomicUsize::new(n),
            notify: tokio::sync::Notify::new(),
        })
    }

    fn finish(&self) {
        if self.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.notify.notify_one();
        }
    }

    async fn wait(&self) {
        while self.left.load(Ordering::Acquire) > 0 {
            self.notify.notified().await;
        }
    }
}

/// How a NOTIFY went.
enum Sent {
    /// The watcher's final answer (or 408 from the edge's Timer F).
    Answered(u16),
    /// Nobody answered: the edge was unreachable for as long as a transaction lasts.
    NoAnswer,
    /// Not sent, and not owed: a NOTIFY for a newer (or the same) document
    /// took a higher CSeq first (another notifier, or a retry of ours).
    Superseded,
    /// Not sent: the store failed before (try again).
    StoreFailed,
}

/// Combine what was pending with what arrives: a final NOTIFY wins, forced
/// (refresh) NOTIFYs stay forced, and of two documents read for changes the
/// newer is kept (none if either wants the store read).
fn merge(old: Option<Pending>, new: Pending) -> Pending {
    match (old, new) {
        (Some(Pending::Final(s, r)), _) => Pending::Final(s, r),
        (_, Pending::Final(s, r)) => Pending::Final(s, r),
        (Some(Pending::Latest { force: a, doc: da }), Pending::Latest { force: b, doc: db }) => {
            Pending::Latest {
                force: a || b,
                doc: match (da, db) {
                    (Some(x), Some(y)) => Some(if y.version > x.version { y } else { x }),
                    _ => None,
                },
            }
        }
        (None, p) => p,
    }
}

/// What the drain loop does after one pending item.
enum Next {
    Continue,
    Stop,
    /// The store or the bus failed: try this item again after a pause.
    Retry(Pending),
}

enum Pending {
    /// The current document; `doc`, when given, is the document read once
    /// for the whole job of a change (after its commit, so at least that
    /// change's version) instead of once per watcher. A newer change has a
    /// job of its own, and a version already sent is not sent again.
    Latest {
        force: bool,
        doc: Option<Arc<Document>>,
    },
    Final(Box<Subscription>, EndReason),
}

/// How long a notify job waits for its NOTIFYs before it is acknowledged
/// anyway: the longest a NOTIFY takes (attempts for 32 s, the last one
/// waiting [`ATTEMPT_WAIT`], behind the dialog's previous NOTIFY at the
/// edge), plus slack.
const JOB_ACK_LIMIT: Duration = Duration::from_secs(75);
/// How often a job still waiting for its NOTIFYs tells its queue so (below
/// JetStream's `ack_wait`, so it is not handed to another notifier meanwhile).
const JOB_PROGRESS_EVERY: Duration = Duration::from_secs(3);
/// A notifier with more NOTIFYs than this on their way (being numbered,
/// built, handed to the edge, or waiting for a watcher's answer for less
/// than [`SLOW_WATCHER`]) takes no new job until it has fewer: the backlog
/// waits in the queue, whose depth the edges shed PUBLISHes by
/// (`--max-notify-queue`), not in this process's run queue. Small on
/// purpose: ~30 ms of what two cores send, which keeps the fan-out from
/// crowding out the requests a phone waits for (docs/benchmarks.md §4: at
/// 3x overload 10 000 made a canary PUBLISH wait 0.3 s for its answer and
/// its NOTIFY often over 1 s; 1 000 sends more NOTIFYs per second, not
/// fewer, and every canary NOTIFY came within 1 s).
const MAX_OWED: usize = 1_000;
/// A NOTIFY whose watcher has not answered for this long (retransmitted
/// twice: a slow or lost phone) stops counting against [`MAX_OWED`]: dead
/// watchers waiting out Timer F (32 s) must not stall the notifier. Their
/// transactions are bounded at the edge (`--max-notify-backlog` sheds
/// PUBLISHes).
const SLOW_WATCHER: Duration = Duration::from_secs(2);
/// Pause before retrying a NOTIFY whose store read or edge request failed.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

use crate::names::{edge_subject, ANY_EDGE, EDGE_GONE_AFTER};

/// How long one attempt waits for the edge's outcome. Shorter than a slow
/// transaction on purpose: a request or answer lost on the bus (a NATS
/// restart) must not hold the subscription's NOTIFYs for long. An attempt
/// that times out sends the same NOTIFY again (same CSeq, same deadline):
/// the edge joins it to the transaction it has in flight, or answers with
/// the code that transaction got, so one NOTIFY is one transaction; only
/// when the whole transaction time (32 s) passes without an answer is the
/// watcher deemed gone.
const ATTEMPT_WAIT: Duration = Duration::from_secs(8);

impl Notifier {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<dyn Store>,
        jobs: Arc<dyn WorkQueue<NotifyJob>>,
        edges: Arc<dyn Requests<OutRequest, Outcome>>,
        shards_bus: Arc<dyn Requests<Command, Reply>>,
        packages: Registry,
        clock: Clock,
        shards: u32,
        metrics: Arc<Metrics>,
    ) -> Notifier {
        Notifier {
            store,
            jobs,
            edges,
            shards_bus,
            packages,
            clock,
            shards,
            metrics,
            slots: Mutex::new(HashMap::new()),
            gone: Default::default(),
            roster: None,
            faults: Faults::default(),
            sent: AtomicU64::new(0),
            sending: Default::default(),
            batch: DEFAULT_BATCH,
            min_interval: Duration::ZERO,
            lists: Reloadable::fixed("resource lists", Lists::default()),
            policy: Reloadable::fixed("watcher policy", Policy::default()),
            heartbeats: Default::default(),
            subs: Default::default(),
            cseqs: Default::default(),
        }
    }

    /// Split fan-outs into batches of `n` watchers (at least 1).
    /// Follow the live edges (cluster mode) for rerouting.
    pub fn with_roster(mut self, roster: Option<Arc<crate::roster::Roster>>) -> Notifier {
        self.roster = roster;
        self
    }

    pub fn with_batch(mut self, n: usize) -> Notifier {
        self.batch = n.max(1);
        self
    }

    /// `--notify-min-interval-ms`: a subscription's state-change NOTIFYs go
    /// out at most this often (RFC 6446's rate control as an operator
    /// default); changes meanwhile are coalesced into the newest state.
    /// First, refresh and final NOTIFYs are never held back.
    pub fn with_min_interval(mut self, interval: Duration) -> Notifier {
        self.min_interval = interval;
        self
    }

    /// Resource lists (RFC 4662): a subscription to a list gets its
    /// members' states, each as the member's `policy` lets the subscriber
    /// see it.
    pub fn with_lists(
        mut self,
        lists: Arc<Reloadable<Lists>>,
        policy: Arc<Reloadable<Policy>>,
    ) -> Notifier {
        self.lists = lists;
        self.policy = policy;
        self
    }

    /// Install test-only fault hooks (see [`Faults`]).
    pub fn with_faults(mut self, faults: Faults) -> Notifier {
        self.faults = faults;
        self
    }

    pub async fn run(self: Arc<Self>, pullers: usize, mut shutdown: watch::Receiver<bool>) {
        let mut tasks = Vec::new();
        // NOTIFYs owed without a change (RFC 6446 min-rate).
        {
            let me = self.clone();
            let mut stop = shutdown.clone();
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = stop.changed() => return,
                    }
                    let due = me
                        .heartbeats
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .take_due(tokio::time::Instant::now());
                    for id in due {
                        // The same record again: not a refresh repeated.
                        me.with_slot(&id, |s| s.refreshed = None);
                        let p = Pending::Latest {
                            force: true,
                            doc: None,
                        };
                        me.schedule(&id, p, None, JobDone::new(1));
                    }
                }
            }));
        }
        for _ in 0..pullers.max(1) {
            let me = self.clone();
            let mut stop = shutdown.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    // Backpressure: while this notifier owes more NOTIFYs
                    // than it sends in about half a second, new jobs stay in
                    // the queue (where the edges see its depth and shed
                    // PUBLISHes) instead of piling up in memory here.
                    while me.owed() > MAX_OWED {
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(5)) => {}
                            _ = stop.changed() => return,
                        }
                    }
                    let delivery = tokio::select! {
                        d = me.jobs.pull() => d,
                        _ = stop.changed() => break,
                    };
                    let Ok(delivery) = delivery else { break };
                    me.metrics.notifier_queue_depth.set(me.jobs.depth() as i64);
                    // A puller that was already waiting for a job when the
                    // others filled the limit holds the job it got until
                    // the notifier owes fewer (telling the queue it is not
                    // lost), so the limit holds whatever the pullers do.
                    let mut told = tokio::time::Instant::now();
                    while me.owed() > MAX_OWED {
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(5)) => {}
                            _ = stop.changed() => return,
                        }
                        if told.elapsed() >= JOB_PROGRESS_EVERY {
                            delivery.progress();
                            told = tokio::time::Instant::now();
                        }
                    }
                    let Some(done) = me.handle(delivery.job().clone()).await else {
                        // Not handled (the store did not answer): dropping
                        // the delivery unacked gives it back to the queue.
                        drop(delivery);
                        continue;
                    };
                    // Acknowledge once its NOTIFYs are answered; the puller
                    // goes on meanwhile, and the queue is told the job is
                    // still being worked on. Past the longest transaction
                    // (see JOB_ACK_LIMIT) the job is acknowledged anyway:
                    // its subscriptions were ended by the timeout.
                    tokio::spawn(async move {
                        let deadline = tokio::time::Instant::now() + JOB_ACK_LIMIT;
                        loop {
                            let tick = tokio::time::Instant::now() + JOB_PROGRESS_EVERY;
                            match tokio::time::timeout_at(tick.min(deadline), done.wait()).await {
                                Ok(()) => break,
                                Err(_) if tokio::time::Instant::now() >= deadline => break,
                                Err(_) => delivery.progress(),
                            }
                        }
                        delivery.ack();
                    });
                }
            }));
        }
        let _ = shutdown.changed().await;
        for t in tasks {
            let _ = t.await;
        }
    }

    /// NOTIFYs on their way, not counting those waiting on slow watchers
    /// (see [`MAX_OWED`]).
    fn owed(&self) -> usize {
        self.sending.load(Ordering::Relaxed)
    }

    /// Schedule the job's NOTIFYs; `None` when the job cannot be handled now
    /// (the store did not answer): it is then left unacknowledged, for the
    /// queue to hand out again.
    async fn handle(self: &Arc<Self>, job: NotifyJob) -> Option<Arc<JobDone>> {
        match job {
            NotifyJob::Changed {
                aor,
                event,
                version,
                at_ms,
            } => {
                let mut ids = match self.store.watcher_ids(&aor, &event).await {
                    Ok(ids) => ids,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot load watchers");
                        return None;
                    }
                };
                let doc = self.job_document(&aor, &event).await?;
                if ids.len() > self.batch {
                    // A large fan-out: other notifiers take all batches but
                    // the first. If queueing one fails the job is not taken
                    // (it comes back; batches queued twice only coalesce).
                    let rest = ids.split_off(self.batch);
                    for chunk in rest.chunks(self.batch) {
                        let share = NotifyJob::ChangedFor {
                            aor: aor.clone(),
                            event: event.clone(),
                            version,
                            at_ms,
                            ids: chunk.to_vec(),
                        };
                        if let Err(e) = self.jobs.push(share).await {
                            tracing::warn!(error = %e, "cannot queue a fan-out batch");
                            return None;
                        }
                        self.metrics
                            .notifier_batches
                            .with_label_values(&["queued"])
                            .inc();
                    }
                }
                Some(self.schedule_changes(&ids, at_ms, doc))
            }
            NotifyJob::ChangedFor {
                aor,
                event,
                ids,
                at_ms,
                ..
            } => {
                self.metrics
                    .notifier_batches
                    .with_label_values(&["taken"])
                    .inc();
                let doc = self.job_document(&aor, &event).await?;
                Some(self.schedule_changes(&ids, at_ms, doc))
            }
            NotifyJob::Refresh { id } => {
                let done = JobDone::new(1);
                let p = Pending::Latest {
                    force: true,
                    doc: None,
                };
                self.schedule(&id, p, None, done.clone());
                Some(done)
            }
            NotifyJob::Terminated { sub, reason } => {
                let id = sub.id.clone();
                let done = JobDone::new(1);
                self.schedule(&id, Pending::Final(sub, reason), None, done.clone());
                Some(done)
            }
            NotifyJob::ListMember { list } => {
                // The list's shard recomposes it (if it is watched); its
                // change then comes back as a job of its own.
                let shard = shard_of(&list, self.shards);
                match self.ask_shard(shard, Command::RecomposeList { list }).await {
                    Ok(_) => Some(JobDone::new(0)),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot ask for a list's recomposition");
                        None
                    }
                }
            }
        }
    }

    /// The document of a change's job, read once for all its watchers;
    /// `None` (the job is left for later) when the store fails, `Some(None)`
    /// when there is no document (each watcher's NOTIFY then reads it).
    async fn job_document(&self, aor: &str, event: &str) -> Option<Option<Arc<Document>>> {
        match self.store.document(aor, event).await {
            Ok(d) => Some(d.map(Arc::new)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot load the document");
                None
            }
        }
    }

    /// Schedule the NOTIFY of a change for each of these subscriptions. The
    /// subscriptions that had nothing in flight are served by one task,
    /// so their store calls and bus requests are made in one poll and
    /// leave together (see [`crate::coalesce`]).
    fn schedule_changes(
        self: &Arc<Self>,
        ids: &[String],
        at_ms: u64,
        doc: Option<Arc<Document>>,
    ) -> Arc<JobDone> {
        let done = JobDone::new(ids.len());
        let mut idle = Vec::new();
        for id in ids {
            let p = Pending::Latest {
                force: false,
                doc: doc.clone(),
            };
            if self.enqueue(id, p, Some(at_ms), done.clone()) {
                idle.push(id.clone());
            }
        }
        if !idle.is_empty() {
            let me = self.clone();
            tokio::spawn(async move {
                futures_util::future::join_all(idle.into_iter().map(|id| me.clone().drain(id)))
                    .await;
            });
        }
        done
    }

    fn schedule(self: &Arc<Self>, id: &str, p: Pending, at_ms: Option<u64>, done: Arc<JobDone>) {
        if self.enqueue(id, p, at_ms, done) {
            let me = self.clone();
            let id = id.to_string();
            tokio::spawn(async move { me.drain(id).await });
        }
    }

    /// Put `p` in the subscription's slot; `true` when nothing was in
    /// flight for it, so the caller must start draining it.
    fn enqueue(&self, id: &str, p: Pending, at_ms: Option<u64>, done: Arc<JobDone>) -> bool {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let slot = slots.entry(id.to_string()).or_default();
        slot.waiters.push(done);
        slot.pending = Some(merge(slot.pending.take(), p));
        if slot.changed_at_ms.is_none() {
            slot.changed_at_ms = at_ms;
        }
        if let Some(wake) = slot.wake.as_ref().filter(|_| !held(&slot.pending)) {
            wake.notify_one();
        }
        let start = !slot.busy;
        slot.busy = true;
        start
    }

    /// Send what is pending for one subscription until nothing is.
    async fn drain(self: Arc<Self>, id: String) {
        loop {
            if let Some((until, wake)) = self.held_until(&id) {
                // Rate control: changes arriving meanwhile merge into the
                // pending one, which goes out (the newest) at `until`, or
                // at once with a refresh or final NOTIFY that joins it.
                self.metrics.notifier_rate_limited.inc();
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => {}
                    _ = wake.notified() => {}
                }
                // Look again: a wake-up may be stale (a permit left by an
                // earlier refresh), and what is pending may have changed.
                continue;
            }
            let (pending, last_version, changed_at, waiters) = {
                let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
                let Some(slot) = slots.get_mut(&id) else {
                    return;
                };
                match slot.pending.take() {
                    Some(p) => (
                        p,
                        slot.last_version,
                        slot.changed_at_ms.take(),
                        std::mem::take(&mut slot.waiters),
                    ),
                    None => {
                        slot.busy = false;
                        for w in std::mem::take(&mut slot.waiters) {
                            w.finish();
                        }
                        return;
                    }
                }
            };
            let next = self.deliver(&id, pending, last_version, changed_at).await;
            if let Next::Retry(p) = next {
                // Back into the slot, with its waiters (merged with anything
                // that arrived meanwhile), and again after a pause.
                {
                    let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
                    let slot = slots.entry(id.clone()).or_default();
                    slot.busy = true;
                    slot.waiters.extend(waiters);
                    slot.pending = Some(merge(slot.pending.take(), p));
                    if slot.changed_at_ms.is_none() {
                        slot.changed_at_ms = changed_at;
                    }
                }
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
            for w in waiters {
                w.finish();
            }
            if let Next::Stop = next {
                return;
            }
        }
    }

    /// When the subscription's pending state change may go out, if that
    /// is later than now (`--notify-min-interval-ms`).
    fn held_until(&self, id: &str) -> Option<(tokio::time::Instant, Arc<tokio::sync::Notify>)> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let slot = slots.get_mut(id)?;
        // The operator's interval, or the subscription's max-rate.
        let interval = self.min_interval.max(slot.interval);
        if interval.is_zero() {
            return None;
        }
        let until = slot.last_sent? + interval;
        if !held(&slot.pending) || until <= tokio::time::Instant::now() {
            return None;
        }
        Some((
            until,
            slot.wake.get_or_insert_with(Default::default).clone(),
        ))
    }

    /// Send one pending item of a subscription.
    async fn deliver(
        &self,
        id: &str,
        pending: Pending,
        last_version: u64,
        changed_at: Option<u64>,
    ) -> Next {
        match pending {
            Pending::Latest { force, doc: read } => {
                let retry = |read| Next::Retry(Pending::Latest { force, doc: read });
                let sub = match self.subscription(id).await {
                    Ok(Some(s)) => s,
                    Ok(None) => {
                        self.heartbeats
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .forget(id);
                        let _ = self.forget_if_idle(id);
                        return Next::Continue;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot load subscription");
                        return retry(read);
                    }
                };
                let doc = match read.filter(|d| d.aor == sub.aor && d.event == sub.event) {
                    Some(d) => Some(Document::clone(&d)),
                    None => match self.store.document(&sub.aor, &sub.event).await {
                        Ok(d) => d,
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot load the document");
                            return retry(None);
                        }
                    },
                };
                let version = doc.as_ref().map(|d| d.version).unwrap_or(0);
                if !force && version <= last_version {
                    return Next::Continue;
                }
                // A pending watcher learns nothing of the resource's
                // changes (not even that there was one): only its own
                // subscription's NOTIFYs (the first, refreshes, approval).
                if !force && sub.view == View::Pending {
                    return Next::Continue;
                }
                // An approval (pending to active) changes the view only.
                let record = (sub.remote_cseq, sub.expires_at_ms, sub.view);
                if force && version <= last_version {
                    let mut again = false;
                    self.with_slot(id, |slot| again = slot.refreshed == Some(record));
                    if again {
                        return Next::Continue;
                    }
                }
                let remaining = sub.expires_at_ms.saturating_sub(self.clock.now_ms()) / 1000;
                // RFC 6446: the rate controls in force, in every NOTIFY.
                let rates = sub.rates.params();
                let state = match sub.view {
                    View::Pending => format!("pending;expires={remaining}{rates}"),
                    View::Full | View::Neutral => format!("active;expires={remaining}{rates}"),
                };
                let interval = sub.rates.min_interval().unwrap_or_default();
                self.with_slot(id, |slot| slot.interval = interval);
                let body = self.body_for(&sub, doc.as_ref().map(|d| d.body.clone()));
                // A list's subscriber gets what changed since its last
                // NOTIFY; a first or refresh NOTIFY carries the full state.
                let since = (!force && last_version > 0).then_some(last_version);
                let outcome = match self.send(&sub, &state, body, version, since).await {
                    Sent::Answered(code) => Some(code),
                    Sent::NoAnswer => None,
                    Sent::Superseded => return Next::Continue,
                    Sent::StoreFailed => return retry(None),
                };
                match outcome {
                    Some(code) if (200..300).contains(&code) => {
                        if let Some(at) = changed_at {
                            let secs = self.clock.now_ms().saturating_sub(at) as f64 / 1000.0;
                            self.metrics
                                .notifier_latency_seconds
                                .with_label_values(&[&sub.event])
                                .observe(secs);
                        }
                        self.with_slot(id, |slot| {
                            slot.last_version = slot.last_version.max(version);
                            slot.last_sent = Some(tokio::time::Instant::now());
                            if force {
                                slot.refreshed = Some(record);
                            }
                        });
                        self.heartbeats
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .sent(id, sub.rates, tokio::time::Instant::now());
                    }
                    Some(481) | Some(408) | None => {
                        self.end(&sub, EndReason::Gone).await;
                        // Only a final NOTIFY could still be owed; it is not
                        // (the watcher is gone): the slot goes too.
                        let removed = self
                            .slots
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(id);
                        if let Some(mut slot) = removed {
                            for w in std::mem::take(&mut slot.waiters) {
                                w.finish();
                            }
                        }
                        return Next::Stop;
                    }
                    Some(_) => {}
                }
                Next::Continue
            }
            Pending::Final(sub, reason) => {
                let doc = match self.store.document(&sub.aor, &sub.event).await {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot load the document");
                        return Next::Retry(Pending::Final(sub, reason));
                    }
                };
                self.heartbeats
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .forget(id);
                let state = format!(
                    "terminated;reason={}{}",
                    reason.as_str(),
                    sub.rates.params()
                );
                let body = self.body_for(&sub, doc.map(|d| d.body));
                if let Sent::StoreFailed =
                    self.send(&sub, &state, body.clone(), u64::MAX, None).await
                {
                    return Next::Retry(Pending::Final(sub, reason));
                }
                let _ = self.store.drop_cseq(id).await;
                if self.forget_if_idle(id) {
                    Next::Stop
                } else {
                    Next::Continue
                }
            }
        }
    }

    /// Drop the slot if nothing is pending for it; `true` if it was dropped.
    fn forget_if_idle(&self, id: &str) -> bool {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let idle = slots.get(id).is_some_and(|s| s.pending.is_none());
        if idle {
            slots.remove(id);
        }
        idle
    }

    fn with_slot(&self, id: &str, f: impl FnOnce(&mut Slot)) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = slots.get_mut(id) {
            f(slot);
        }
    }

    fn body_for(&self, sub: &Subscription, doc: Option<Bytes>) -> Option<Bytes> {
        match sub.view {
            View::Full => doc.or_else(|| {
                // Nothing was ever composed for this resource (no state is
                // kept for an AoR nobody publishes or registers): the
                // package's document for "no state".
                self.packages
                    .get(&sub.event)
                    .map(|p| Bytes::from(p.compose(&State::empty(&sub.aor)).body))
            }),
            View::Neutral => self
                .packages
                .get(&sub.event)
                .map(|p| Bytes::from(p.neutral(&sub.aor).body)),
            View::Pending => None,
        }
    }

    /// The subscription record, read with those other NOTIFY tasks read now.
    async fn subscription(&self, id: &str) -> StoreResult<Option<Subscription>> {
        let subs = self.subs.get_or_init(|| {
            let store = self.store.clone();
            Coalesced::new(move |ids: Vec<String>| {
                let store = store.clone();
                async move { store.subscriptions(&ids).await }
            })
        });
        subs.call(id.to_string()).await
    }

    /// The body of the NOTIFY with CSeq `cseq` (the subscription's
    /// `cseq`-th): as the package wants it stamped (dialog's `version`).
    /// [`Store::next_cseq`], taken with those other NOTIFY tasks take now.
    async fn next_cseq(&self, id: &str, version: u64) -> StoreResult<Option<u32>> {
        let cseqs = self.cseqs.get_or_init(|| {
            let store = self.store.clone();
            Coalesced::new(move |asks: Vec<(String, u64)>| {
                let store = store.clone();
                async move { store.next_cseqs(&asks).await }
            })
        });
        cseqs.call((id.to_string(), version)).await
    }

    /// The CSeq for a NOTIFY carrying `version`; `Err` with how the send
    /// ends when it must not go out: superseded by a newer version (counted,
    /// and done), or the store failed (try again).
    async fn take_cseq(&self, sub: &Subscription, version: u64) -> Result<u32, Sent> {
        match self.next_cseq(&sub.id, version).await {
            Ok(Some(c)) => Ok(c),
            Ok(None) => {
                self.metrics
                    .notifier_notifies
                    .with_label_values(&["superseded"])
                    .inc();
                Err(Sent::Superseded)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot take a NOTIFY CSeq");
                Err(Sent::StoreFailed)
            }
        }
    }

    /// Send one NOTIFY carrying document `version` (`u64::MAX` for the final
    /// one); `Some(code)` of the final answer, `None` if no answer. A NOTIFY
    /// for a newer version that already took its CSeq (another notifier)
    /// makes this one moot: it is not sent, and counts as done.
    async fn send(
        &self,
        sub: &Subscription,
        state: &str,
        body: Option<Bytes>,
        version: u64,
        since: Option<u64>,
    ) -> Sent {
        self.sending.fetch_add(1, Ordering::Relaxed);
        let mut sending = Sending(Some(&self.sending));
        let mut cseq = match self.take_cseq(sub, version).await {
            Ok(c) => c,
            Err(not_sent) => return not_sent,
        };
        let mut h = rsip::Headers::default();
        let mut push = |name: &str, value: String| h.push(rsip::headers::make_header(name, value));
        for route in &sub.route_set {
            push("Route", route.clone());
        }
        push("Max-Forwards", "70".into());
        push("To", format!("{};tag={}", sub.remote_uri, sub.remote_tag));
        push("From", format!("{};tag={}", sub.local_uri, sub.id));
        push("Call-ID", sub.call_id.clone());
        push("CSeq", format!("{cseq} NOTIFY"));
        push(
            "Event",
            match &sub.event_id {
                Some(id) => format!("{};id={id}", sub.event),
                None => sub.event.clone(),
            },
        );
        push("Subscription-State", state.to_string());
        let raw = body.unwrap_or_default();
        let (content_type, body) = self.render(sub, raw.clone(), cseq, since);
        if self.list_of(sub).is_some() {
            push("Require", "eventlist".into());
        }
        if !body.is_empty() {
            push("Content-Type", content_type);
        }
        let nth = self.sent.fetch_add(1, Ordering::Relaxed) + 1;
        let every = u64::from(self.faults.skip_notify_every);
        if every > 0 && nth.is_multiple_of(every) {
            tracing::debug!(sub = %sub.id, cseq, "fault hook: NOTIFY skipped");
            return Sent::Answered(200);
        }
        // The edge that holds the watcher's flow runs the transaction (Timer
        // F: 32 s, ending by the deadline at the latest). If the bus cannot
        // reach it or loses its answer (restarting, a NATS hiccup), the same
        // NOTIFY goes again: an edge that has it in flight or answered
        // answers the re-send with that transaction's code (one transaction
        // per NOTIFY, never two), one that lost it sends it. Only when a
        // transaction's lifetime has passed is the watcher deemed gone.
        let lifetime = Duration::from_secs(32);
        let mut req = OutRequest {
            flow: sub.flow.clone(),
            method: "NOTIFY".into(),
            uri: sub.remote_target.clone(),
            headers: h,
            body,
            deadline_ms: self.clock.now_ms() + lifetime.as_millis() as u64,
        };
        let flow_edge = edge_subject(&sub.flow.edge);
        let mut subject = flow_edge.clone();
        // The edge sending it for a gone flow edge, if any.
        let mut heir: Option<String> = None;
        let give_up = tokio::time::Instant::now() + lifetime;
        let mut unserved_since: Option<tokio::time::Instant> = None;
        // An attempt that timed out may have gone out (the edge sent it and
        // died before its answer came back). The same CSeq from another
        // edge would be a second transaction with that CSeq, which the
        // watcher takes as a duplicate; so a NOTIFY that changes edges after
        // such an attempt takes a new CSeq. Only re-sends to the same edge
        // keep theirs (it joins them to the transaction it has in flight);
        // one through any edge may reach another, so it is renumbered too.
        let mut may_have_gone: Option<String> = None;
        let outcome = loop {
            if may_have_gone
                .as_deref()
                .is_some_and(|s| s != subject || s == ANY_EDGE)
            {
                cseq = match self.take_cseq(sub, version).await {
                    Ok(c) => c,
                    Err(not_sent) => return not_sent,
                };
                set_cseq(&mut req.headers, cseq);
                req.body = self.render(sub, raw.clone(), cseq, since).1;
                self.metrics.notifier_renumbered.inc();
                may_have_gone = None;
            }
            let result = {
                let request = self.edges.request(&subject, req.clone(), ATTEMPT_WAIT);
                tokio::pin!(request);
                tokio::select! {
                    r = &mut request => r,
                    _ = tokio::time::sleep(SLOW_WATCHER), if sending.counts() => {
                        sending.release();
                        request.await
                    }
                }
            };
            let unserved = matches!(result, Err(BusError::NoResponders(_)));
            if result.is_err() && !unserved {
                may_have_gone = Some(subject.clone());
            }
            // Nobody serves the watcher's edge: it is gone when the roster
            // says so or it was found gone before, else after a while (an
            // edge that restarts comes back under a new id). The dialog's
            // heir sends it (pinned: the same edge for one dialog whichever
            // notifier asks, so the dialog's NOTIFYs stay in order). If no
            // attempt may have gone out the CSeq still holds, else it is
            // renumbered (at the top of the loop).
            let rerouted = if unserved && subject == flow_edge {
                let since = *unserved_since.get_or_insert_with(tokio::time::Instant::now);
                let known_gone = self
                    .roster
                    .as_ref()
                    .is_some_and(|r| r.is_gone(&sub.flow.edge))
                    || self.gone.is_gone(&sub.flow.edge, std::time::Instant::now());
                if known_gone || since.elapsed() >= EDGE_GONE_AFTER {
                    self.gone.mark(&sub.flow.edge, std::time::Instant::now());
                    self.metrics.notifier_rerouted.inc();
                    heir = self.heir(&sub.id).await;
                    subject = heir
                        .as_deref()
                        .map_or_else(|| ANY_EDGE.to_string(), edge_subject);
                    tracing::debug!(edge = %sub.flow.edge, via = %subject, "edge gone; sending through another");
                    true
                } else {
                    false
                }
            } else if unserved && subject != ANY_EDGE {
                // The heir went too: another one (pinned again), else any
                // edge.
                if let Some(h) = heir.take() {
                    self.gone.mark(&h, std::time::Instant::now());
                }
                heir = self.heir(&sub.id).await;
                subject = heir
                    .as_deref()
                    .map_or_else(|| ANY_EDGE.to_string(), edge_subject);
                true
            } else {
                false
            };
            if rerouted {
                continue;
            }
            if result.is_ok() && subject == flow_edge {
                self.gone.back(&sub.flow.edge);
            }
            match result {
                Ok(o) => break Some(o),
                Err(e) if tokio::time::Instant::now() < give_up => {
                    tracing::debug!(error = %e, edge = %subject, "edge unreachable; sending the same NOTIFY again");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Err(_) => break None,
            }
        };
        if outcome.as_ref().is_some_and(|o| o.superseded) {
            self.metrics
                .notifier_notifies
                .with_label_values(&["superseded"])
                .inc();
            return Sent::Superseded;
        }
        let code = outcome
            .as_ref()
            .and_then(|o| (o.code > 0).then_some(o.code));
        let label = match code {
            Some(c) if (200..300).contains(&c) => "2xx",
            Some(481) => "481",
            Some(408) | None => "timeout",
            Some(_) => "other",
        };
        self.metrics
            .notifier_notifies
            .with_label_values(&[label])
            .inc();
        match code {
            Some(c) => Sent::Answered(c),
            None => Sent::NoAnswer,
        }
    }

    /// The edge that sends a dialog's NOTIFYs while its own edge is gone
    /// (see [`crate::roster::Roster::heir`]); `None`: any edge.
    async fn heir(&self, dialog: &str) -> Option<String> {
        let roster = self.roster.as_ref()?;
        let now = std::time::Instant::now();
        roster.heir(dialog, &|e| self.gone.is_gone(e, now)).await
    }

    async fn end(&self, sub: &Subscription, reason: EndReason) {
        let shard = shard_of(&sub.aor, self.shards);
        let cmd = Command::EndSubscription {
            id: sub.id.clone(),
            reason,
        };
        if let Err(e) = self.ask_shard(shard, cmd).await {
            tracing::warn!(error = %e, "cannot end a subscription");
        }
    }

    /// Ask the owner of `shard` (the compositor) to apply `cmd`.
    async fn ask_shard(&self, shard: u32, cmd: Command) -> Result<Reply, BusError> {
        self.shards_bus
            .request(
                &crate::names::shard_subject(shard),
                cmd,
                Duration::from_secs(5),
            )
            .await
    }
}

/// Counts one NOTIFY out of [`Notifier::send`] however it ends, or until
/// its watcher proves slow ([`SLOW_WATCHER`]).
struct Sending<'a>(Option<&'a std::sync::atomic::AtomicUsize>);

impl Sending<'_> {
    fn counts(&self) -> bool {
        self.0.is_some()
    }

    fn release(&mut self) {
        if let Some(n) = self.0.take() {
            n.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

/// Replace the CSeq of a NOTIFY being re-sent, in place.
fn set_cseq(headers: &mut rsip::Headers, cseq: u32) {
    for h in headers.iter_mut() {
        if h.name().eq_ignore_ascii_case("CSeq") {
            *h = rsip::headers::make_header("CSeq", format!("{cseq} NOTIFY"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(version: u64) -> Option<Arc<Document>> {
        Some(Arc::new(Document {
            aor: "sip:alice@example.com".into(),
            event: "presence".into(),
            version,
            content_type: "application/pidf+xml".into(),
            body: Bytes::from(format!("v{version}")),
        }))
    }

    fn latest(force: bool, doc: Option<Arc<Document>>) -> Pending {
        Pending::Latest { force, doc }
    }

    fn read_version(p: &Pending) -> Option<u64> {
        match p {
            Pending::Latest { doc, .. } => doc.as_ref().map(|d| d.version),
            Pending::Final(..) => None,
        }
    }

    /// Two changes pending for one watcher keep the newer document read
    /// for them, in either order; a refresh pending (which reads the store
    /// when it is sent) keeps the store read.
    #[test]
    fn merged_changes_keep_the_newer_document() {
        let m = merge(Some(latest(false, doc(3))), latest(false, doc(5)));
        assert_eq!(read_version(&m), Some(5));
        let m = merge(Some(latest(false, doc(5))), latest(false, doc(3)));
        assert_eq!(read_version(&m), Some(5));
        let m = merge(Some(latest(true, None)), latest(false, doc(4)));
        assert!(matches!(
            m,
            Pending::Latest {
                force: true,
                doc: None
            }
        ));
        let m = merge(Some(latest(false, doc(4))), latest(true, None));
        assert!(matches!(
            m,
            Pending::Latest {
                force: true,
                doc: None
            }
        ));
    }
}

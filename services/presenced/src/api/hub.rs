//! Watch streams: many AoRs per stream, many streams per process, one read
//! of the store per change however many streams watch it.
//!
//! - The compositor of shard `k` announces each committed document change
//!   on `changes.<k>` (a hint: `<event> <aor>`, see `names.rs`). The hub
//!   subscribes to a shard's subject while one of its streams watches an
//!   AoR of that shard, and only then.
//! - A hint for a watched (event, AoR) queues a *refresh*: one worker
//!   (chosen by the key, so one key's refreshes run one at a time, in
//!   order) reads the document from the store and hands the state to every
//!   stream watching it. The store's order is the order of the states, so
//!   a stream never sees an older state after a newer one. Hints for a key
//!   already queued are absorbed (coalescing).
//! - A stream keeps at most one unsent state per AoR ([`Slot`]): a newer
//!   state replaces an unsent older one, so a slow reader costs at most
//!   one state per AoR it watches, never a growing queue; a reader that
//!   takes nothing for [`STALL_LIMIT`] is cut off.
//! - Hints are at most once (a NATS publish, a full channel): every
//!   [`RESYNC`] each watched key is refreshed anyway, so a lost hint delays
//!   a change, never loses it.
//!
//! A stream starts by registering its keys and waiting until each of its
//! shards' subjects is subscribed, then refreshes its keys: any change
//! committed after that is hinted, so nothing falls between the first
//! state and the changes.

use super::state;
use crate::metrics::Metrics;
use crate::names::{changes_subject, parse_change_hint};
use crate::Clock;
use presence_api::pb;
use presence_core::shard_of;
use presence_store::{Store, Topics};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch, Notify};

/// A stream whose reader takes nothing for this long is ended.
pub const STALL_LIMIT: Duration = Duration::from_secs(60);

/// Every watched key is read again this often (lost hints).
pub const RESYNC: Duration = Duration::from_secs(30);

/// Refresh workers (each key always goes to the same one).
const WORKERS: usize = 4;

/// (event, AoR).
type Key = (String, String);

/// What a stream has not sent yet: the newest state per AoR.
#[derive(Default)]
pub struct Slot {
    pending: Mutex<HashMap<String, Arc<pb::PresenceState>>>,
    notify: Notify,
}

struct ShardSub {
    streams: usize,
    ready: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct Inner {
    watchers: HashMap<Key, Vec<(u64, Arc<Slot>)>>,
    shards: HashMap<u32, ShardSub>,
    queued: HashSet<Key>,
    next_id: u64,
}

pub struct Hub {
    inner: Mutex<Inner>,
    store: Arc<dyn Store>,
    changes: Arc<dyn Topics>,
    shards: u32,
    clock: Clock,
    metrics: Arc<Metrics>,
    workers: Vec<mpsc::UnboundedSender<(Key, tokio::time::Instant)>>,
}

/// A stream's registration; dropping it unregisters.
pub struct Registration {
    hub: Arc<Hub>,
    id: u64,
    keys: Vec<Key>,
    pub slot: Arc<Slot>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.unregister(self.id, &self.keys);
    }
}

impl Hub {
    /// The hub and its workers (they end with the shutdown signal).
    pub fn start(
        store: Arc<dyn Store>,
        changes: Arc<dyn Topics>,
        shards: u32,
        clock: Clock,
        metrics: Arc<Metrics>,
        shutdown: watch::Receiver<bool>,
    ) -> Arc<Hub> {
        let mut senders = Vec::new();
        let mut receivers = Vec::new();
        for _ in 0..WORKERS {
            let (tx, rx) = mpsc::unbounded_channel();
            senders.push(tx);
            receivers.push(rx);
        }
        let hub = Arc::new(Hub {
            inner: Mutex::default(),
            store,
            changes,
            shards,
            clock,
            metrics,
            workers: senders,
        });
        for rx in receivers {
            tokio::spawn(hub.clone().work(rx, shutdown.clone()));
        }
        tokio::spawn(hub.clone().resync(shutdown));
        hub
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Watch `aors` (canonical) of `event`: returns once every shard they
    /// live in is followed, with their refreshes queued.
    pub async fn register(self: &Arc<Self>, event: &str, aors: &[String]) -> Registration {
        let slot = Arc::new(Slot::default());
        let keys: Vec<Key> = aors
            .iter()
            .map(|a| (event.to_string(), a.clone()))
            .collect();
        let mut ready = Vec::new();
        let id = {
            let mut inner = self.lock();
            inner.next_id += 1;
            let id = inner.next_id;
            let mut shards = HashSet::new();
            for key in &keys {
                let list = inner.watchers.entry(key.clone()).or_default();
                if list.iter().any(|(i, _)| *i == id) {
                    continue;
                }
                list.push((id, slot.clone()));
                shards.insert(shard_of(&key.1, self.shards));
            }
            for shard in shards {
                let sub = inner.shards.entry(shard).or_insert_with(|| {
                    let (tx, rx) = watch::channel(false);
                    ShardSub {
                        streams: 0,
                        ready: rx,
                        task: tokio::spawn(self.clone().follow(shard, tx)),
                    }
                });
                sub.streams += 1;
                ready.push(sub.ready.clone());
            }
            self.metrics
                .api_watched_resources
                .set(inner.watchers.len() as i64);
            id
        };
        let registration = Registration {
            hub: self.clone(),
            id,
            keys,
            slot,
        };
        for mut r in ready {
            // A subject that cannot be subscribed is retried by its task;
            // the resync covers the time until then.
            let _ = tokio::time::timeout(Duration::from_secs(5), r.wait_for(|v| *v)).await;
        }
        for key in &registration.keys {
            self.queue(key.clone());
        }
        registration
    }

    fn unregister(&self, id: u64, keys: &[Key]) {
        let mut inner = self.lock();
        let mut shards = HashSet::new();
        for key in keys {
            if let Some(list) = inner.watchers.get_mut(key) {
                let before = list.len();
                list.retain(|(i, _)| *i != id);
                if list.len() < before {
                    shards.insert(shard_of(&key.1, self.shards));
                }
                if list.is_empty() {
                    inner.watchers.remove(key);
                }
            }
        }
        for shard in shards {
            if let Some(sub) = inner.shards.get_mut(&shard) {
                sub.streams -= 1;
                if sub.streams == 0 {
                    if let Some(sub) = inner.shards.remove(&shard) {
                        sub.task.abort();
                    }
                }
            }
        }
        self.metrics
            .api_watched_resources
            .set(inner.watchers.len() as i64);
    }

    /// Queue a refresh of `key` unless one is queued already.
    fn queue(&self, key: Key) {
        if !self.lock().queued.insert(key.clone()) {
            return;
        }
        let worker = (fnv(&key.1) as usize) % self.workers.len();
        if let Some(w) = self.workers.get(worker) {
            let _ = w.send((key, tokio::time::Instant::now()));
        }
    }

    /// Follow shard `shard`'s change hints (until aborted).
    async fn follow(self: Arc<Self>, shard: u32, ready: watch::Sender<bool>) {
        let subject = changes_subject(shard);
        loop {
            let mut rx = match self.changes.subscribe(&subject).await {
                Ok(rx) => rx,
                Err(e) => {
                    tracing::warn!(error = %e, subject, "cannot follow change hints; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let _ = ready.send(true);
            while let Some(hint) = rx.recv().await {
                let Some((event, aor)) = parse_change_hint(&hint) else {
                    continue;
                };
                let key = (event.to_string(), aor.to_string());
                if self.lock().watchers.contains_key(&key) {
                    self.queue(key);
                }
            }
            // The bus closed the subscription (reconnecting): again.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Read each queued key and hand its state to the streams watching it.
    async fn work(
        self: Arc<Self>,
        mut rx: mpsc::UnboundedReceiver<(Key, tokio::time::Instant)>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            let (key, queued_at) = tokio::select! {
                k = rx.recv() => match k { Some(k) => k, None => return },
                _ = shutdown.changed() => return,
            };
            self.lock().queued.remove(&key);
            if !self.lock().watchers.contains_key(&key) {
                continue;
            }
            let now = self.clock.now_ms();
            let state = match state::read(self.store.as_ref(), &key.1, &key.0, now).await {
                Ok(s) => Arc::new(s),
                Err(_) => {
                    // The store failed: try again shortly.
                    let hub = self.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        hub.queue(key);
                    });
                    continue;
                }
            };
            let slots: Vec<Arc<Slot>> = self
                .lock()
                .watchers
                .get(&key)
                .map(|l| l.iter().map(|(_, s)| s.clone()).collect())
                .unwrap_or_default();
            for slot in slots {
                let replaced = slot
                    .pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key.1.clone(), state.clone());
                if replaced.is_some() {
                    self.metrics
                        .api_watch_events
                        .with_label_values(&["coalesced"])
                        .inc();
                }
                slot.notify.notify_one();
            }
            self.metrics
                .api_watch_change_seconds
                .with_label_values(&[crate::api::hub::event_label(&key.0)])
                .observe(queued_at.elapsed().as_secs_f64());
        }
    }

    /// Every [`RESYNC`], refresh every watched key.
    async fn resync(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(RESYNC);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let keys: Vec<Key> = self.lock().watchers.keys().cloned().collect();
            for key in keys {
                self.queue(key);
            }
        }
    }
}

/// A bounded label for an event package.
pub fn event_label(event: &str) -> &'static str {
    match event {
        "presence" => "presence",
        "dialog" => "dialog",
        "message-summary" => "message-summary",
        "reg" => "reg",
        _ => "other",
    }
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

/// What a stream is asked for.
pub struct StreamSpec {
    pub event: String,
    /// Canonical AoRs, deduplicated.
    pub aors: Vec<String>,
    /// Versions the client has.
    pub resume: HashMap<String, u64>,
    pub heartbeat: Duration,
}

/// Serve one Watch stream into `tx` until the reader goes away, stalls, or
/// the server shuts down: the current state of each AoR (unless the client
/// has its version), `synced`, then each change, with heartbeats.
pub async fn serve_stream(
    hub: Arc<Hub>,
    spec: StreamSpec,
    tx: mpsc::Sender<pb::WatchResponse>,
    mut shutdown: watch::Receiver<bool>,
) {
    let metrics = hub.metrics.clone();
    metrics.api_watch_streams.inc();
    let _gauge = GaugeGuard(metrics.clone());
    let registration = hub.register(&spec.event, &spec.aors).await;
    // What this stream sent, per AoR: (version, digest of the document).
    let mut sent: HashMap<String, (u64, Option<u64>)> = spec
        .resume
        .iter()
        .map(|(a, v)| (a.clone(), (*v, None)))
        .collect();
    let mut unsynced: HashSet<String> = spec.aors.iter().cloned().collect();
    let mut synced = false;
    let mut heartbeat = tokio::time::interval(spec.heartbeat);
    heartbeat.tick().await;
    loop {
        let batch: Vec<Arc<pb::PresenceState>> = {
            let mut p = registration
                .slot
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let mut v: Vec<_> = p.drain().map(|(_, s)| s).collect();
            // A stable order within a batch: by AoR.
            v.sort_by(|a, b| a.aor.cmp(&b.aor));
            v
        };
        let mut out = Vec::new();
        for s in batch {
            let digest = fnv_bytes(&s.document);
            let first = unsynced.remove(&s.aor);
            let same = match sent.get(&s.aor) {
                Some((v, Some(d))) => *v == s.version && *d == digest,
                // From the client's resume: the version alone, and only
                // for the first state.
                Some((v, None)) => first && *v == s.version,
                None => false,
            };
            sent.insert(s.aor.clone(), (s.version, Some(digest)));
            if !same {
                out.push(pb::WatchResponse {
                    kind: Some(pb::watch_response::Kind::State((*s).clone())),
                });
            }
        }
        if !synced && unsynced.is_empty() {
            synced = true;
            out.push(pb::WatchResponse {
                kind: Some(pb::watch_response::Kind::Synced(pb::Synced {})),
            });
        }
        for m in out {
            if matches!(m.kind, Some(pb::watch_response::Kind::State(_))) {
                metrics.api_watch_events.with_label_values(&["state"]).inc();
            }
            match tokio::time::timeout(STALL_LIMIT, tx.send(m)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return,
                Err(_) => {
                    metrics.api_watch_events.with_label_values(&["cut"]).inc();
                    return;
                }
            }
        }
        tokio::select! {
            _ = registration.slot.notify.notified() => {}
            _ = heartbeat.tick() => {
                let beat = pb::WatchResponse {
                    kind: Some(pb::watch_response::Kind::Heartbeat(pb::Heartbeat {
                        time_ms: hub.clock.now_ms(),
                    })),
                };
                match tokio::time::timeout(STALL_LIMIT, tx.send(beat)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return,
                    Err(_) => {
                        metrics.api_watch_events.with_label_values(&["cut"]).inc();
                        return;
                    }
                }
            }
            _ = tx.closed() => return,
            _ = shutdown.changed() => return,
        }
    }
}

struct GaugeGuard(Arc<Metrics>);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.api_watch_streams.dec();
    }
}

fn fnv_bytes(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

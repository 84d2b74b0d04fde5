//! The notify work queue on JetStream: [`JetStreamQueue`].
//!
//! One stream with work-queue retention (a job is removed once acked) and one
//! durable pull consumer that every notifier shares: explicit acks, `ack_wait`
//! (default 30 s) before an unacked job goes to another worker, unlimited
//! deliveries. `push` returns only after the server's PubAck, so a job whose
//! push returned `Ok` is stored (on disk with [`Storage::File`]). A pulled job
//! is a [`JsDelivery`]: `ack()` removes it; dropping it unacked naks it, so it
//! is delivered again at once (or after `nak_delay`).
//!
//! `pull` waits through outages: errors are counted, the consumer is opened
//! again with a growing pause, and the stream and consumer are created again
//! if the server lost them (memory storage after a restart).

use crate::envelope::Envelope;
use crate::metrics::NatsMetrics;
use async_nats::jetstream::consumer::{pull, AckPolicy, PullConsumer};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::{AckKind, Acker};
use async_nats::jetstream::stream::{self, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, Context};
use async_nats::Client;
use futures_util::StreamExt;
use presence_store::BusError;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

/// Where JetStream keeps the jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// On disk: survives a restart of nats-server.
    File,
    /// In memory: faster, lost when nats-server stops.
    Memory,
}

/// Settings of one work queue. Every process sharing a queue must use the
/// same `stream`, `subject` and `durable`.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    pub stream: String,
    pub subject: String,
    /// The durable consumer all pullers share.
    pub durable: String,
    pub storage: Storage,
    /// How long a pulled job may stay unacked before it goes to another
    /// puller (a puller that died without a nak).
    pub ack_wait: Duration,
    /// Delay before a job released unacked is delivered again (zero: at once).
    pub nak_delay: Duration,
    /// Jobs delivered to all pullers and not yet acked, at most.
    pub max_ack_pending: i64,
    /// Jobs a process asks the server for ahead of its `pull` calls (at
    /// least 1). Prefetched jobs wait in this process (their `ack_wait`
    /// running) where other processes cannot take them, and a job released
    /// unacked may come back to the same process; dropping the queue releases
    /// what it prefetched. With 1, every job costs a pull round trip
    /// (measured on this 2-core machine under load, dev build: about 6,500
    /// pull+ack/s with 1 against 56,000/s with 64).
    pub prefetch: usize,
    /// How often `depth()` is refreshed from the consumer's num_pending when
    /// no pull updates it.
    pub depth_refresh: Duration,
    /// `queue` label of the metrics.
    pub label: String,
    /// The stream holds at most this many bytes of jobs; past it a push is
    /// refused (discard policy New), never an older job dropped: the
    /// compositor keeps a refused job in its outbox (Redis) and pushes it
    /// again later, so a long notifier outage fills Redis's outbox, which
    /// has its own TTLs, instead of growing JetStream without bound. Applied
    /// when the stream is created (an existing stream keeps its limits:
    /// `nats stream edit`).
    pub max_bytes: i64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            stream: "PRESENCE_NOTIFY".into(),
            subject: "presence.notify".into(),
            durable: "notifiers".into(),
            storage: Storage::File,
            ack_wait: Duration::from_secs(30),
            nak_delay: Duration::ZERO,
            max_ack_pending: 10_000,
            prefetch: 32,
            depth_refresh: Duration::from_secs(1),
            label: "notify".into(),
            max_bytes: 1 << 30,
        }
    }
}

/// Pending count as last seen, with a generation so a slow refresh never
/// overwrites a newer local observation.
struct Depth {
    state: Mutex<(u64, u64)>, // (value, generation)
    metrics: NatsMetrics,
}

impl Depth {
    fn update(&self, f: impl FnOnce(u64) -> u64) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.0 = f(s.0);
        s.1 += 1;
        self.metrics
            .jetstream_pending
            .set(i64::try_from(s.0).unwrap_or(i64::MAX));
    }
    fn generation(&self) -> u64 {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).1
    }
    fn refreshed(&self, generation: u64, pending: u64) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.1 == generation {
            s.0 = pending;
            self.metrics
                .jetstream_pending
                .set(i64::try_from(pending).unwrap_or(i64::MAX));
        }
    }
    fn get(&self) -> u64 {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).0
    }
}

/// A JetStream work queue of `Job`s.
pub struct JetStreamQueue<Job> {
    js: Context,
    cfg: Arc<QueueConfig>,
    metrics: NatsMetrics,
    messages: tokio::sync::Mutex<Option<pull::Stream>>,
    depth: Arc<Depth>,
    refresher: JoinHandle<()>,
    _job: PhantomData<fn() -> Job>,
}

impl<Job> Drop for JetStreamQueue<Job> {
    fn drop(&mut self) {
        self.refresher.abort();
        // Jobs prefetched but never pulled would wait `ack_wait` before going
        // to another process: release them now.
        let stream = match self.messages.try_lock() {
            Ok(mut m) => m.take(),
            Err(_) => None,
        };
        if let (Some(stream), Ok(rt)) = (stream, Handle::try_current()) {
            rt.spawn(release_prefetched(
                stream,
                self.js.client(),
                self.cfg.prefetch.max(1),
            ));
        }
    }
}

/// Nak what the consumer stream already holds (at most `limit` jobs, those
/// that arrive without waiting). The stream's subscription goes first, so
/// the server does not hand the released jobs straight back to its open pull
/// request.
async fn release_prefetched(mut stream: pull::Stream, client: Client, limit: usize) {
    let mut held = Vec::new();
    for _ in 0..limit {
        match tokio::time::timeout(Duration::from_millis(20), stream.next()).await {
            Ok(Some(Ok(m))) => held.push(m.split().1),
            _ => break,
        }
    }
    drop(stream);
    if held.is_empty() {
        return;
    }
    // The unsubscribe is sent by a task the drop spawned: let it go out, and
    // wait until the server has handled it.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let _ = crate::requests::round_trip(&client).await;
    for acker in held {
        let _ = acker.ack_with(AckKind::Nak(None)).await;
    }
}

async fn ensure(js: &Context, cfg: &QueueConfig) -> Result<PullConsumer, BusError> {
    let backend = |e: &dyn std::fmt::Display| BusError::Backend(e.to_string());
    let config = stream::Config {
        name: cfg.stream.clone(),
        subjects: vec![cfg.subject.clone()],
        retention: RetentionPolicy::WorkQueue,
        max_bytes: cfg.max_bytes,
        discard: async_nats::jetstream::stream::DiscardPolicy::New,
        storage: match cfg.storage {
            Storage::File => StorageType::File,
            Storage::Memory => StorageType::Memory,
        },
        ..Default::default()
    };
    // Processes that start together may both find no stream and both
    // create it; the server can refuse the second create for other reasons
    // than "exists" (it checks the storage reservation again:
    // "insufficient storage resources"). Whoever loses takes the stream
    // the winner made.
    let stream = match js.get_or_create_stream(config).await {
        Ok(s) => s,
        Err(e) => js.get_stream(&cfg.stream).await.map_err(|_| backend(&e))?,
    };
    let consumer = pull::Config {
        durable_name: Some(cfg.durable.clone()),
        ack_policy: AckPolicy::Explicit,
        ack_wait: cfg.ack_wait,
        max_deliver: -1,
        max_ack_pending: cfg.max_ack_pending,
        ..Default::default()
    };
    match stream.get_or_create_consumer(&cfg.durable, consumer).await {
        Ok(c) => Ok(c),
        Err(e) => stream
            .get_consumer(&cfg.durable)
            .await
            .map_err(|_| backend(&e)),
    }
}

impl<Job> JetStreamQueue<Job>
where
    Job: Envelope + Send + 'static,
{
    /// Create (or join) the stream and the durable consumer.
    pub async fn new(
        client: Client,
        cfg: QueueConfig,
        metrics: NatsMetrics,
    ) -> Result<Self, BusError> {
        let js = jetstream::new(client);
        let consumer = ensure(&js, &cfg).await?;
        let depth = Arc::new(Depth {
            state: Mutex::new((consumer.cached_info().num_pending, 0)),
            metrics: metrics.clone(),
        });
        let refresher = tokio::spawn(refresh_depth(
            consumer,
            Arc::downgrade(&depth),
            cfg.depth_refresh,
            metrics.clone(),
            cfg.label.clone(),
        ));
        Ok(JetStreamQueue {
            js,
            cfg: Arc::new(cfg),
            metrics,
            messages: tokio::sync::Mutex::new(None),
            depth,
            refresher,
            _job: PhantomData,
        })
    }

    /// Store a job; `Ok` once JetStream acknowledged it.
    pub async fn push(&self, job: &Job) -> Result<(), BusError> {
        let start = Instant::now();
        let payload: bytes::Bytes = job.encode().into();
        let mut recreated = false;
        loop {
            match self.publish(payload.clone()).await {
                Ok(()) => break,
                Err(PublishFailure::NoStream) if !recreated => {
                    // The server lost the stream (memory storage and a restart).
                    recreated = true;
                    ensure(&self.js, &self.cfg).await?;
                }
                Err(PublishFailure::NoStream) => {
                    self.metrics.error(&self.cfg.label, "push", "no_stream");
                    return Err(BusError::Backend("no stream for the queue subject".into()));
                }
                Err(PublishFailure::Timeout) => {
                    self.metrics.error(&self.cfg.label, "push", "timeout");
                    return Err(BusError::Timeout);
                }
                Err(PublishFailure::Other(e)) => {
                    self.metrics.error(&self.cfg.label, "push", "backend");
                    return Err(BusError::Backend(e));
                }
            }
        }
        self.metrics
            .publish_seconds
            .with_label_values(&[&self.cfg.label])
            .observe(start.elapsed().as_secs_f64());
        self.depth.update(|d| d.saturating_add(1));
        Ok(())
    }

    async fn publish(&self, payload: bytes::Bytes) -> Result<(), PublishFailure> {
        let classify = |kind: PublishErrorKind, text: String| match kind {
            PublishErrorKind::StreamNotFound => PublishFailure::NoStream,
            PublishErrorKind::TimedOut => PublishFailure::Timeout,
            _ => PublishFailure::Other(text),
        };
        let ack = self
            .js
            .publish(self.cfg.subject.clone(), payload)
            .await
            .map_err(|e| classify(e.kind(), e.to_string()))?;
        ack.await.map_err(|e| classify(e.kind(), e.to_string()))?;
        Ok(())
    }

    /// Wait for the next job. Cancel-safe: a job is never lost by dropping
    /// this future (at worst it waits in the prefetch buffer, or comes back
    /// after `ack_wait` if the queue itself is dropped).
    pub async fn pull(&self) -> Result<JsDelivery<Job>, BusError> {
        let mut messages = self.messages.lock().await;
        let mut pause = Duration::from_millis(50);
        loop {
            let stream = match messages.as_mut() {
                Some(s) => s,
                None => match self.open().await {
                    Ok(s) => messages.insert(s),
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot open the work queue consumer");
                        self.metrics.error(&self.cfg.label, "pull", "backend");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(2));
                        continue;
                    }
                },
            };
            match stream.next().await {
                Some(Ok(msg)) => {
                    if let Some(d) = self.delivery(msg) {
                        return Ok(d);
                    }
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "work queue consumer error");
                    self.metrics.error(&self.cfg.label, "pull", "consumer");
                    *messages = None;
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                None => *messages = None,
            }
        }
    }

    async fn open(&self) -> Result<pull::Stream, BusError> {
        let consumer = ensure(&self.js, &self.cfg).await?;
        consumer
            .stream()
            .max_messages_per_batch(self.cfg.prefetch.max(1))
            .expires(Duration::from_secs(10))
            .heartbeat(Duration::from_secs(3))
            .messages()
            .await
            .map_err(|e| BusError::Backend(e.to_string()))
    }

    fn delivery(&self, msg: jetstream::Message) -> Option<JsDelivery<Job>> {
        let (delivered, pending) = match msg.info() {
            Ok(i) => (i.delivered, Some(i.pending)),
            Err(_) => (1, None),
        };
        if let Some(p) = pending {
            self.depth.update(|_| p);
        }
        if delivered > 1 {
            self.metrics.jetstream_redeliveries.inc();
        }
        let (msg, acker) = msg.split();
        let settle = Settle {
            acker: Arc::new(acker),
            rt: Handle::current(),
            metrics: self.metrics.clone(),
            cfg: self.cfg.clone(),
        };
        match Job::decode(&msg.payload) {
            Ok(job) => Some(JsDelivery {
                job,
                redelivered: delivered > 1,
                delivery_count: u64::try_from(delivered).unwrap_or(1),
                settle: Some(settle),
            }),
            Err(e) => {
                // A job nobody can read: remove it instead of redelivering it forever.
                tracing::warn!(error = %e, "undecodable job terminated");
                self.metrics.error(&self.cfg.label, "pull", "decode");
                settle.send(AckKind::Term);
                None
            }
        }
    }

    /// Jobs waiting (not yet delivered), as last seen: updated by every push
    /// and pull of this process and refreshed from the server every
    /// `depth_refresh`. A gauge, not a count to rely on.
    pub fn depth(&self) -> u64 {
        self.depth.get()
    }
}

enum PublishFailure {
    NoStream,
    Timeout,
    Other(String),
}

async fn refresh_depth(
    consumer: PullConsumer,
    depth: Weak<Depth>,
    every: Duration,
    metrics: NatsMetrics,
    label: String,
) {
    let every = every.max(Duration::from_millis(10));
    loop {
        tokio::time::sleep(every).await;
        let Some(d) = depth.upgrade() else { return };
        let generation = d.generation();
        drop(d);
        match consumer.get_info().await {
            Ok(info) => {
                if let Some(d) = depth.upgrade() {
                    d.refreshed(generation, info.num_pending);
                }
            }
            Err(_) => metrics.error(&label, "depth", "backend"),
        }
    }
}

/// How a delivery is settled with the server: fire-and-forget on the runtime
/// that pulled it, so `ack()` and drop stay synchronous.
struct Settle {
    acker: Arc<Acker>,
    rt: Handle,
    metrics: NatsMetrics,
    cfg: Arc<QueueConfig>,
}

impl Settle {
    fn send(self, kind: AckKind) {
        let op = match kind {
            AckKind::Ack => "ack",
            AckKind::Term => "term",
            _ => "nak",
        };
        let Settle {
            acker,
            rt,
            metrics,
            cfg,
        } = self;
        rt.spawn(async move {
            if acker.ack_with(kind).await.is_err() {
                metrics.error(&cfg.label, op, "backend");
            }
        });
    }

    fn nak(self) {
        let delay = self.cfg.nak_delay;
        self.send(AckKind::Nak((!delay.is_zero()).then_some(delay)));
    }

    /// Restart the server's `ack_wait` clock (in the background).
    fn progress(&self) {
        let acker = self.acker.clone();
        let metrics = self.metrics.clone();
        let cfg = self.cfg.clone();
        self.rt.spawn(async move {
            if acker.ack_with(AckKind::Progress).await.is_err() {
                metrics.error(&cfg.label, "progress", "backend");
            }
        });
    }
}

/// A job taken from a [`JetStreamQueue`]. Ack it when the work it asked for
/// is done; dropping it unacked releases it for redelivery (a nak).
pub struct JsDelivery<Job> {
    job: Job,
    /// Delivered before (not acked in time, or released unacked).
    pub redelivered: bool,
    /// How many times JetStream delivered it, this time included.
    pub delivery_count: u64,
    settle: Option<Settle>,
}

impl<Job> JsDelivery<Job> {
    pub fn job(&self) -> &Job {
        &self.job
    }

    /// Done: the job leaves the queue. Sent in the background; if it is lost
    /// (connection down) the job comes back after `ack_wait`.
    pub fn ack(mut self) {
        if let Some(s) = self.settle.take() {
            s.send(AckKind::Ack);
        }
    }

    /// Done, and wait until the server confirmed the ack.
    pub async fn ack_confirmed(mut self) -> Result<(), BusError> {
        match self.settle.take() {
            Some(s) => s.acker.double_ack().await.map_err(|e| {
                s.metrics.error(&s.cfg.label, "ack", "backend");
                BusError::Backend(e.to_string())
            }),
            None => Ok(()),
        }
    }

    /// Not done: deliver it again (same as dropping it).
    pub fn release(self) {
        drop(self)
    }
}

impl<Job> Drop for JsDelivery<Job> {
    fn drop(&mut self) {
        if let Some(s) = self.settle.take() {
            s.nak();
        }
    }
}

impl<Job> presence_store::bus::Settle<Job> for Settle {
    fn ack(self: Box<Self>) {
        self.send(AckKind::Ack);
    }
    fn nak(self: Box<Self>, _job: Job) {
        (*self).nak();
    }
    fn progress(&self) {
        Settle::progress(self);
    }
}

impl<Job: Clone + Send + 'static> JsDelivery<Job> {
    /// As the store's `Delivery`, settled the same way.
    pub fn into_delivery(mut self) -> presence_store::Delivery<Job> {
        let settle: Box<dyn presence_store::bus::Settle<Job>> = match self.settle.take() {
            Some(s) => Box::new(s),
            None => Box::new(Settled),
        };
        presence_store::Delivery::new(self.job.clone(), self.redelivered, settle)
    }
}

/// Already settled (cannot happen for a JsDelivery that was not consumed).
struct Settled;

impl<Job> presence_store::bus::Settle<Job> for Settled {
    fn ack(self: Box<Self>) {}
    fn nak(self: Box<Self>, _job: Job) {}
}

#[async_trait::async_trait]
impl<Job> presence_store::WorkQueue<Job> for JetStreamQueue<Job>
where
    Job: Envelope + Clone + Send + Sync + 'static,
{
    async fn push(&self, job: Job) -> Result<(), BusError> {
        JetStreamQueue::push(self, &job).await
    }
    async fn pull(&self) -> Result<presence_store::Delivery<Job>, BusError> {
        Ok(JetStreamQueue::pull(self).await?.into_delivery())
    }
    fn depth(&self) -> u64 {
        JetStreamQueue::depth(self)
    }
}

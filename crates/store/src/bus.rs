//! The bus: request/reply on subjects (edge → shard owner, notifier → edge)
//! and a work queue with acknowledgements (shard owner → notifiers).
//!
//! A server registers its own channel for one or more subjects, so one worker
//! can serve many shards; a caller with no server gets `NoResponders`, one
//! whose server does not answer in time gets `Timeout`.

use async_trait::async_trait;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Notify};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    #[error("no responders on {0}")]
    NoResponders(String),
    #[error("request timed out")]
    Timeout,
    #[error("bus closed")]
    Closed,
    #[error("bus backend error: {0}")]
    Backend(String),
}

/// A request handed to a server, with the way to answer it.
pub struct Incoming<Req, Rep> {
    pub subject: String,
    pub request: Req,
    reply: oneshot::Sender<Rep>,
}

impl<Req, Rep> Incoming<Req, Rep> {
    pub fn new(subject: String, request: Req) -> (Self, oneshot::Receiver<Rep>) {
        let (tx, rx) = oneshot::channel();
        (
            Incoming {
                subject,
                request,
                reply: tx,
            },
            rx,
        )
    }
    /// Answer; a caller that gave up is not an error.
    pub fn reply(self, rep: Rep) {
        let _ = self.reply.send(rep);
    }
    /// The request itself (no copy) and the way to answer it.
    pub fn into_parts(self) -> (Req, Replier<Rep>) {
        (self.request, Replier(self.reply))
    }
}

/// The answering half of an [`Incoming`].
pub struct Replier<Rep>(oneshot::Sender<Rep>);

impl<Rep> Replier<Rep> {
    /// Answer; a caller that gave up is not an error.
    pub fn reply(self, rep: Rep) {
        let _ = self.0.send(rep);
    }
}

#[async_trait]
pub trait Requests<Req: Send + 'static, Rep: Send + 'static>: Send + Sync {
    async fn request(&self, subject: &str, req: Req, timeout: Duration) -> Result<Rep, BusError>;
    /// [`Requests::request`] for `subject`, sent through `via`: a subject
    /// whose server serves `subject` among others (a compositor's
    /// `owner.<id>` for its shards), so requests for several of them can
    /// travel together. A server that does not serve `subject` (any more)
    /// drops it: `NoResponders`, and the caller asks `subject` itself. A bus
    /// that cannot route sends to `subject` directly.
    async fn request_via(
        &self,
        via: &str,
        subject: &str,
        req: Req,
        timeout: Duration,
    ) -> Result<Rep, BusError> {
        let _ = via;
        self.request(subject, req, timeout).await
    }
    /// Route requests on `subject` into `tx` until [`Requests::unserve`].
    async fn serve(
        &self,
        subject: &str,
        tx: mpsc::Sender<Incoming<Req, Rep>>,
    ) -> Result<(), BusError>;
    async fn unserve(&self, subject: &str) -> Result<(), BusError>;
}

/// In-memory request/reply.
pub struct MemoryBus<Req, Rep> {
    servers: Mutex<HashMap<String, mpsc::Sender<Incoming<Req, Rep>>>>,
}

impl<Req, Rep> Default for MemoryBus<Req, Rep> {
    fn default() -> Self {
        MemoryBus {
            servers: Mutex::new(HashMap::new()),
        }
    }
}

impl<Req, Rep> MemoryBus<Req, Rep> {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl<Req: Send + 'static, Rep: Send + 'static> Requests<Req, Rep> for MemoryBus<Req, Rep> {
    async fn request(&self, subject: &str, req: Req, timeout: Duration) -> Result<Rep, BusError> {
        let tx = self
            .servers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(subject)
            .cloned()
            .ok_or_else(|| BusError::NoResponders(subject.to_string()))?;
        let (inc, rx) = Incoming::new(subject.to_string(), req);
        let work = async {
            tx.send(inc)
                .await
                .map_err(|_| BusError::NoResponders(subject.to_string()))?;
            rx.await
                .map_err(|_| BusError::NoResponders(subject.to_string()))
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| BusError::Timeout)?
    }

    async fn serve(
        &self,
        subject: &str,
        tx: mpsc::Sender<Incoming<Req, Rep>>,
    ) -> Result<(), BusError> {
        self.servers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(subject.to_string(), tx);
        Ok(())
    }

    async fn unserve(&self, subject: &str) -> Result<(), BusError> {
        self.servers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(subject);
        Ok(())
    }
}

/// How a queue backend settles one delivery: `ack` when the work is done,
/// `nak` (with the job handed back) when the delivery is dropped unacked.
pub trait Settle<Job>: Send {
    fn ack(self: Box<Self>);
    fn nak(self: Box<Self>, job: Job);
    /// Still working on it: a queue that redelivers unacked jobs after a
    /// while restarts that clock. Nothing to do for queues without one.
    fn progress(&self) {}
}

/// A job taken from a work queue. Ack it when the work it asked for is done;
/// dropping it unacked puts it back on the queue (redelivery).
pub struct Delivery<Job: Clone + Send + 'static> {
    job: Option<Job>,
    settle: Option<Box<dyn Settle<Job>>>,
    pub redelivered: bool,
}

impl<Job: Clone + Send + 'static> Delivery<Job> {
    /// For queue implementations: `settle` is told how the delivery ended.
    pub fn new(job: Job, redelivered: bool, settle: Box<dyn Settle<Job>>) -> Self {
        Delivery {
            job: Some(job),
            settle: Some(settle),
            redelivered,
        }
    }
    pub fn job(&self) -> &Job {
        self.job.as_ref().expect("job present until ack")
    }
    pub fn ack(mut self) {
        self.job = None;
        if let Some(s) = self.settle.take() {
            s.ack();
        }
    }
    /// Still working on it (see [`Settle::progress`]).
    pub fn progress(&self) {
        if let Some(s) = &self.settle {
            s.progress();
        }
    }
}

impl<Job: Clone + Send + 'static> Drop for Delivery<Job> {
    fn drop(&mut self) {
        if let (Some(s), Some(job)) = (self.settle.take(), self.job.take()) {
            s.nak(job);
        }
    }
}

#[async_trait]
pub trait WorkQueue<Job: Clone + Send + 'static>: Send + Sync {
    async fn push(&self, job: Job) -> Result<(), BusError>;
    /// Wait for the next job.
    async fn pull(&self) -> Result<Delivery<Job>, BusError>;
    /// Jobs waiting (not yet pulled).
    fn depth(&self) -> u64;
}

struct QueueInner<Job> {
    jobs: Mutex<VecDeque<(Job, bool)>>,
    notify: Notify,
}

impl<Job> QueueInner<Job> {
    fn push_back(&self, job: Job, redelivered: bool) {
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back((job, redelivered));
        self.notify.notify_one();
    }
}

struct MemorySettle<Job>(Arc<QueueInner<Job>>);

impl<Job: Send + Sync> Settle<Job> for MemorySettle<Job> {
    fn ack(self: Box<Self>) {}
    fn nak(self: Box<Self>, job: Job) {
        self.0.push_back(job, true);
    }
}

/// In-memory work queue shared by any number of pullers.
pub struct MemoryQueue<Job> {
    inner: Arc<QueueInner<Job>>,
}

impl<Job> Default for MemoryQueue<Job> {
    fn default() -> Self {
        MemoryQueue {
            inner: Arc::new(QueueInner {
                jobs: Mutex::new(VecDeque::new()),
                notify: Notify::new(),
            }),
        }
    }
}

impl<Job> MemoryQueue<Job> {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl<Job: Clone + Send + Sync + 'static> WorkQueue<Job> for MemoryQueue<Job> {
    async fn push(&self, job: Job) -> Result<(), BusError> {
        self.inner.push_back(job, false);
        Ok(())
    }

    async fn pull(&self) -> Result<Delivery<Job>, BusError> {
        loop {
            let notified = self.inner.notify.notified();
            let next = self
                .inner
                .jobs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop_front();
            if let Some((job, redelivered)) = next {
                // More may be waiting: wake another puller.
                self.inner.notify.notify_one();
                return Ok(Delivery::new(
                    job,
                    redelivered,
                    Box::new(MemorySettle(self.inner.clone())),
                ));
            }
            notified.await;
        }
    }

    fn depth(&self) -> u64 {
        self.inner
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn memory_bus_passes_the_contract() {
        crate::contract::requests_contract(&MemoryBus::<u32, u32>::new()).await;
    }

    #[tokio::test(start_paused = true)]
    async fn memory_queue_passes_the_contract() {
        crate::contract::queue_contract(&MemoryQueue::<u32>::new()).await;
    }
}

/// Fire-and-forget publish/subscribe on subjects: each message reaches the
/// subscribers of its subject at that moment, at most once, in publish order
/// per publisher; nothing is stored or replayed, and a subscriber that does
/// not keep up loses messages (its channel is bounded). For hints whose
/// loss a reader repairs by reading the store (the compositors' change
/// events, which the `api` role turns into Watch streams).
#[async_trait]
pub trait Topics: Send + Sync + 'static {
    async fn publish(&self, subject: &str, payload: bytes::Bytes);
    /// Messages on `subject` from now on, until the receiver is dropped.
    async fn subscribe(&self, subject: &str) -> Result<mpsc::Receiver<bytes::Bytes>, BusError>;
}

/// How many messages a [`Topics`] subscriber may have waiting.
pub const TOPIC_BACKLOG: usize = 1024;

/// In-memory [`Topics`] for one process.
#[derive(Default)]
pub struct MemoryTopics {
    subscribers: Mutex<HashMap<String, Vec<mpsc::Sender<bytes::Bytes>>>>,
}

impl MemoryTopics {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Topics for MemoryTopics {
    async fn publish(&self, subject: &str, payload: bytes::Bytes) {
        let mut subs = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(list) = subs.get_mut(subject) {
            // A full subscriber loses this one; a gone one is forgotten.
            list.retain(|tx| {
                !matches!(
                    tx.try_send(payload.clone()),
                    Err(mpsc::error::TrySendError::Closed(_))
                )
            });
            if list.is_empty() {
                subs.remove(subject);
            }
        }
    }

    async fn subscribe(&self, subject: &str) -> Result<mpsc::Receiver<bytes::Bytes>, BusError> {
        let (tx, rx) = mpsc::channel(TOPIC_BACKLOG);
        self.subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(subject.to_string())
            .or_default()
            .push(tx);
        Ok(rx)
    }
}

//! Request/reply over core NATS: [`NatsRequests`] implements
//! [`Requests`](presence_store::Requests) for any [`Envelope`] pair.
//!
//! A server subscribes to its subject in a queue group, so several servers of
//! one subject (old and new owner during a shard handover) share the requests
//! instead of both answering. A request that nobody serves fails at once with
//! `NoResponders` (NATS's no-responders status); one whose server does not
//! answer in time with `Timeout`. A request the server could not decode, or
//! dropped without answering, is answered at once with an error header
//! instead of letting the caller wait for its timeout.

use crate::batch::{Batcher, Outgoing};
use crate::envelope::Envelope;
use crate::metrics::NatsMetrics;
use async_nats::client::RequestErrorKind;
use async_nats::{Client, HeaderMap, Subscriber};
use async_trait::async_trait;
use futures_util::StreamExt;
use presence_store::{BusError, Incoming, Requests};
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Header on an error answer from a server (value: [`DROPPED`] or [`UNDECODABLE`]).
pub const ERROR_HEADER: &str = "Presence-Bus-Error";
/// The server took the request but dropped it without answering (e.g. it is
/// handing its shard over): the caller sees `NoResponders` and may retry.
pub const DROPPED: &str = "dropped";
/// The server could not decode the request.
pub const UNDECODABLE: &str = "undecodable";

/// How long [`Requests::unserve`] waits for the in-flight messages of a
/// draining subscription to be handed to the server.
const DRAIN_WITHIN: Duration = Duration::from_secs(5);

/// Settings of one request/reply bus.
#[derive(Debug, Clone)]
pub struct RequestsConfig {
    /// Queue group every server of a subject joins.
    pub queue_group: String,
    /// `bus` label of the metrics, from a fixed set (e.g. `shard`, `edge`).
    pub label: String,
    /// Send requests queued together for one subject as one message
    /// ([`crate::batch`]). Every server takes batches whatever this says.
    pub batch: bool,
}

impl Default for RequestsConfig {
    fn default() -> Self {
        RequestsConfig {
            queue_group: "presence".into(),
            label: "default".into(),
            batch: false,
        }
    }
}

struct Served {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// Request/reply on NATS subjects, with `Req`/`Rep` as protobuf envelopes.
pub struct NatsRequests<Req, Rep> {
    client: Client,
    cfg: Arc<RequestsConfig>,
    metrics: NatsMetrics,
    served: Mutex<HashMap<String, Served>>,
    /// The batching requester, started by the first request (`batch` on).
    batcher: tokio::sync::OnceCell<Batcher>,
    _types: PhantomData<fn(Req) -> Rep>,
}

impl<Req, Rep> NatsRequests<Req, Rep> {
    pub fn new(client: Client, cfg: RequestsConfig, metrics: NatsMetrics) -> Self {
        NatsRequests {
            client,
            cfg: Arc::new(cfg),
            metrics,
            served: Mutex::new(HashMap::new()),
            batcher: tokio::sync::OnceCell::new(),
            _types: PhantomData,
        }
    }

    /// The reply to a request made at `start`, decoded and timed.
    fn answered(&self, payload: &[u8], start: Instant) -> Result<Rep, BusError>
    where
        Rep: Envelope,
    {
        let label = self.cfg.label.as_str();
        match Rep::decode(payload) {
            Ok(rep) => {
                self.metrics
                    .request_seconds
                    .with_label_values(&[label])
                    .observe(start.elapsed().as_secs_f64());
                Ok(rep)
            }
            Err(e) => {
                self.metrics.error(label, "request", "decode");
                Err(BusError::Backend(format!("bad reply: {e}")))
            }
        }
    }

    /// A request through the batching requester: `None` when this bus does
    /// not batch, or `to` takes no batches (then send it alone).
    async fn batched(
        &self,
        to: &str,
        routed: Option<&str>,
        payload: bytes::Bytes,
        timeout: Duration,
    ) -> Option<Result<Rep, BusError>>
    where
        Rep: Envelope,
    {
        if !self.cfg.batch {
            return None;
        }
        let label = self.cfg.label.as_str();
        let start = Instant::now();
        let batcher = self
            .batcher
            .get_or_try_init(|| {
                Batcher::start(
                    self.client.clone(),
                    self.cfg.label.clone(),
                    self.metrics.clone(),
                )
            })
            .await;
        let b = match batcher {
            Ok(b) => b,
            Err(e) => {
                self.metrics.error(label, "request", "backend");
                return Some(Err(e));
            }
        };
        if b.unbatched(to) {
            return None;
        }
        let subject = routed.unwrap_or(to);
        Some(match b.request(to, routed, payload, timeout).await {
            Ok(payload) => self.answered(&payload, start),
            Err(BusError::NoResponders(_)) => Err(BusError::NoResponders(subject.to_string())),
            Err(e) => {
                if e == BusError::Timeout {
                    self.metrics.error(label, "request", "timeout");
                }
                Err(e)
            }
        })
    }

    fn take_served(&self, subject: &str) -> Option<Served> {
        self.served
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(subject)
    }
}

impl<Req, Rep> Drop for NatsRequests<Req, Rep> {
    fn drop(&mut self) {
        // Stop every serving task; their subscriptions end with them.
        let served = std::mem::take(&mut *self.served.lock().unwrap_or_else(|p| p.into_inner()));
        for (_, s) in served {
            s.task.abort();
        }
    }
}

fn error_headers(value: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(ERROR_HEADER, value);
    h
}

async fn stop_serving(s: Served) {
    let _ = s.stop.send(());
    let abort = s.task.abort_handle();
    if tokio::time::timeout(DRAIN_WITHIN, s.task).await.is_err() {
        abort.abort();
    }
}

#[async_trait]
impl<Req, Rep> Requests<Req, Rep> for NatsRequests<Req, Rep>
where
    Req: Envelope + Send + 'static,
    Rep: Envelope + Send + 'static,
{
    async fn request(&self, subject: &str, req: Req, timeout: Duration) -> Result<Rep, BusError> {
        let label = self.cfg.label.as_str();
        let start = Instant::now();
        if self.cfg.batch {
            let payload = req.encode().into();
            if let Some(r) = self.batched(subject, None, payload, timeout).await {
                return r;
            }
        }
        let request = async_nats::Request::new()
            .payload(req.encode().into())
            .timeout(Some(timeout));
        let fail = |op_kind: &str, e: BusError| {
            self.metrics.error(label, "request", op_kind);
            Err(e)
        };
        let msg = match self.client.send_request(subject.to_string(), request).await {
            Ok(m) => m,
            Err(e) => {
                return match e.kind() {
                    RequestErrorKind::NoResponders => {
                        fail("no_responders", BusError::NoResponders(subject.to_string()))
                    }
                    RequestErrorKind::TimedOut => fail("timeout", BusError::Timeout),
                    _ => fail("backend", BusError::Backend(e.to_string())),
                }
            }
        };
        if let Some(v) = msg.headers.as_ref().and_then(|h| h.get(ERROR_HEADER)) {
            return if v.as_str() == DROPPED {
                fail("dropped", BusError::NoResponders(subject.to_string()))
            } else {
                fail(
                    "undecodable",
                    BusError::Backend(format!("server on {subject} answered {}", v.as_str())),
                )
            };
        }
        self.answered(&msg.payload, start)
    }

    async fn request_via(
        &self,
        via: &str,
        subject: &str,
        req: Req,
        timeout: Duration,
    ) -> Result<Rep, BusError> {
        let payload = req.encode().into();
        match self.batched(via, Some(subject), payload, timeout).await {
            Some(r) => r,
            // Routing needs batches (the item names its subject).
            None => self.request(subject, req, timeout).await,
        }
    }

    async fn serve(
        &self,
        subject: &str,
        tx: mpsc::Sender<Incoming<Req, Rep>>,
    ) -> Result<(), BusError> {
        let sub = self
            .client
            .queue_subscribe(subject.to_string(), self.cfg.queue_group.clone())
            .await
            .map_err(|e| {
                self.metrics.error(&self.cfg.label, "serve", "backend");
                BusError::Backend(e.to_string())
            })?;
        // Once the server has processed the SUB, a request from any
        // connection after this returns reaches us.
        round_trip(&self.client).await.inspect_err(|_| {
            self.metrics.error(&self.cfg.label, "serve", "backend");
        })?;
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(serve_loop(
            sub,
            tx,
            stopped,
            self.client.clone(),
            self.metrics.clone(),
            self.cfg.clone(),
        ));
        let old = self
            .served
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(subject.to_string(), Served { stop, task });
        if let Some(old) = old {
            stop_serving(old).await;
        }
        Ok(())
    }

    async fn unserve(&self, subject: &str) -> Result<(), BusError> {
        if let Some(s) = self.take_served(subject) {
            stop_serving(s).await;
        }
        round_trip(&self.client).await
    }
}

/// Wait until the server has processed everything this connection sent so
/// far: publish to a fresh inbox of ours and wait for the message to come
/// back (the server handles one connection's protocol in order; the client's
/// `flush` only writes the socket).
pub(crate) async fn round_trip(client: &Client) -> Result<(), BusError> {
    let inbox = client.new_inbox();
    let mut probe = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| BusError::Backend(e.to_string()))?;
    client
        .publish(inbox, bytes::Bytes::new())
        .await
        .map_err(|e| BusError::Backend(e.to_string()))?;
    let echoed = tokio::time::timeout(DRAIN_WITHIN, probe.next()).await;
    let _ = probe.unsubscribe().await;
    match echoed {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(BusError::Closed),
        Err(_) => Err(BusError::Timeout),
    }
}

/// Hand each request to the server's channel and publish its answer. On stop,
/// drain: unsubscribe, hand over what was already delivered, then end.
async fn serve_loop<Req, Rep>(
    mut sub: Subscriber,
    tx: mpsc::Sender<Incoming<Req, Rep>>,
    mut stop: oneshot::Receiver<()>,
    client: Client,
    metrics: NatsMetrics,
    cfg: Arc<RequestsConfig>,
) where
    Req: Envelope + Send + 'static,
    Rep: Envelope + Send + 'static,
{
    let label = cfg.label.as_str();
    let mut draining = false;
    // Answers to batched requests, batched in turn (see crate::batch).
    let mut answers: Option<mpsc::UnboundedSender<Outgoing>> = None;
    loop {
        let next = if draining {
            sub.next().await
        } else {
            tokio::select! {
                m = sub.next() => m,
                _ = &mut stop => {
                    draining = true;
                    if sub.drain().await.is_err() {
                        break;
                    }
                    continue;
                }
            }
        };
        let Some(msg) = next else { break };
        let Some(reply_to) = msg.reply.clone() else {
            metrics.error(label, "serve", "no_reply_subject");
            continue;
        };
        if crate::batch::is_batch(msg.headers.as_ref()) {
            let answers = answers.get_or_insert_with(|| {
                crate::batch::answer_writer(client.clone(), cfg.label.clone(), metrics.clone())
            });
            let served = crate::batch::serve_batch(
                &msg.subject,
                reply_to.to_string(),
                &msg.payload,
                &tx,
                answers,
                label,
                &metrics,
            )
            .await;
            if !served {
                break;
            }
            continue;
        }
        let req = match Req::decode(&msg.payload) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(subject = %msg.subject, error = %e, "undecodable request");
                metrics.error(label, "serve", "decode");
                let _ = client
                    .publish_with_headers(reply_to, error_headers(UNDECODABLE), Default::default())
                    .await;
                continue;
            }
        };
        let (inc, answer) = Incoming::new(msg.subject.to_string(), req);
        if tx.send(inc).await.is_err() {
            // The server is gone: answer this one and stop serving.
            let _ = client
                .publish_with_headers(reply_to, error_headers(DROPPED), Default::default())
                .await;
            break;
        }
        let client = client.clone();
        let metrics = metrics.clone();
        let cfg = cfg.clone();
        tokio::spawn(async move {
            let sent = match answer.await {
                Ok(rep) => client.publish(reply_to, rep.encode().into()).await,
                Err(_) => {
                    client
                        .publish_with_headers(reply_to, error_headers(DROPPED), Default::default())
                        .await
                }
            };
            if sent.is_err() {
                metrics.error(&cfg.label, "reply", "backend");
            }
        });
    }
    let _ = sub.unsubscribe().await;
}

/// Send `req` on `subject`, retrying while nobody answers.
///
/// Each try waits at most `per_try`; `NoResponders` and `Timeout` are retried
/// (after a short pause that grows from 10 ms to 200 ms) until `total` has
/// passed since the call, and the last of those errors is returned then (a
/// last try shortened by the deadline that timed out does not hide an earlier
/// `NoResponders`).
/// Other errors and any reply return at once. The edge uses this to ride out
/// a shard handover, and answers 503 with Retry-After when it still fails.
///
/// A retry after `Timeout` may deliver the request twice (the first server
/// may have acted on it before it answered): retry only requests that are
/// safe to repeat, or pass a `per_try` as long as `total`.
pub async fn request_with_retry<B, Req, Rep>(
    bus: &B,
    subject: &str,
    req: Req,
    per_try: Duration,
    total: Duration,
) -> Result<Rep, BusError>
where
    B: Requests<Req, Rep> + ?Sized,
    Req: Clone + Send + 'static,
    Rep: Send + 'static,
{
    let deadline = tokio::time::Instant::now() + total;
    let mut pause = Duration::from_millis(10);
    let mut last: Option<BusError> = None;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let this_try = per_try.min(left);
        let err = match bus.request(subject, req.clone(), this_try).await {
            Err(e @ (BusError::NoResponders(_) | BusError::Timeout)) => e,
            other => return other,
        };
        // A timeout of a try cut short by the deadline says less than what
        // the earlier, full tries saw.
        let cut_short = this_try < per_try && err == BusError::Timeout;
        if !(cut_short && last.is_some()) {
            last = Some(err);
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return Err(last.unwrap_or(BusError::Timeout));
        }
        tokio::time::sleep(pause.min(left)).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

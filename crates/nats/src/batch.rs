//! Batched request/reply: many requests to one subject in one NATS message,
//! many answers to one requester in one message.
//!
//! A NATS message costs the server, the sender and the receiver about the
//! same whatever it carries (docs/benchmarks.md §3: ~100 µs across the
//! cluster per request/reply with TLS). A notifier sends each watcher's
//! NOTIFY to the edge that holds the watcher's flow; a change to a
//! presentity with ten watchers is ten requests, most of them to the same
//! one or two edges, made at the same moment. Batching sends them as one.
//!
//! How, on the requester's side ([`Batcher`]):
//! - a request is queued with a number (token) and the caller waits for its
//!   answer, for as long as its own timeout;
//! - one writer task takes what is queued, lets the tasks that are running
//!   queue theirs (a few yields, no timer: an idle requester sends at
//!   once; see [`presence_store::gather`]),
//!   and publishes one message per subject ([`BATCH_HEADER`], a
//!   [`pb::BusBatch`]) with the reply subject `<inbox>.<batch>`, capped at
//!   [`MAX_ITEMS`] requests and [`MAX_BYTES`] bytes;
//! - one reader task takes the answers from `<inbox>.*` and wakes each
//!   caller by its token. NATS's no-responders status on a batch's reply
//!   subject fails every request of the batch with `NoResponders`, at once.
//!
//! On the server's side ([`serve_batch`], called by the serve loop of
//! [`crate::NatsRequests`]) each request of a batch is handed to the server
//! like a single one, and the answers, as they come, go back through one
//! writer task that does the same: what is ready together travels together.
//!
//! A server of an older build does not know batches: it cannot decode one
//! (the payload starts with a zero byte, which no protobuf message does) and
//! answers "undecodable". The requester then fails that batch's requests
//! with a backend error (callers retry) and sends to that subject one
//! request per message for [`UNBATCHED_FOR`].

use crate::envelope::Envelope;
use crate::metrics::NatsMetrics;
use crate::pb;
use crate::requests::{DROPPED, ERROR_HEADER, UNDECODABLE};
use async_nats::{Client, HeaderMap, StatusCode};
use bytes::Bytes;
use futures_util::StreamExt;
use presence_store::{BusError, Incoming};
use prost::Message as _;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Header on a message that carries a [`pb::BusBatch`] (value `1`).
pub const BATCH_HEADER: &str = "Presence-Batch";
/// Most requests (or answers) in one message.
pub const MAX_ITEMS: usize = 64;
/// A message is closed once its payloads reach this many bytes (NATS's
/// default max_payload is 1 MiB; a NOTIFY is a few KiB).
pub const MAX_BYTES: usize = 256 * 1024;
/// How long a subject whose server answered a batch "undecodable" gets one
/// request per message.
pub const UNBATCHED_FOR: Duration = Duration::from_secs(600);
/// A batch whose answers did not all come (their callers timed out) is
/// forgotten after this long.
const FORGET_BATCH_AFTER: Duration = Duration::from_secs(120);

/// The first byte of a batch's payload: field number 0 is invalid in
/// protobuf, so a server that decodes it as a single request fails.
const MARK: u8 = 0;

/// The payload of a batch message carrying `items`.
pub fn encode(items: Vec<pb::BusItem>) -> Bytes {
    let batch = pb::BusBatch { items };
    let mut out = Vec::with_capacity(1 + batch.encoded_len());
    out.push(MARK);
    batch.encode(&mut out).expect("a Vec grows as needed");
    out.into()
}

/// The items of a batch's payload; `None` if it is not one.
pub fn decode(payload: &[u8]) -> Option<Vec<pb::BusItem>> {
    match payload.split_first() {
        Some((&MARK, rest)) => pb::BusBatch::decode(rest).ok().map(|b| b.items),
        _ => None,
    }
}

pub(crate) fn is_batch(headers: Option<&HeaderMap>) -> bool {
    headers.is_some_and(|h| h.get(BATCH_HEADER).is_some())
}

fn batch_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(BATCH_HEADER, "1");
    h
}

/// What a waiting caller gets.
enum Answer {
    Reply(Bytes),
    Failed(BusError),
}

struct Queued {
    /// Where the message goes.
    subject: String,
    /// The subject the request is for, when `subject` is a router.
    routed: Option<String>,
    token: u64,
    payload: Bytes,
}

struct Sent {
    subject: String,
    tokens: Vec<u64>,
    /// Answers still to come.
    left: usize,
    at: Instant,
}

struct Shared {
    waiting: Mutex<HashMap<u64, oneshot::Sender<Answer>>>,
    batches: Mutex<HashMap<u64, Sent>>,
    unbatched: Mutex<HashMap<String, Instant>>,
    next: AtomicU64,
    label: String,
    metrics: NatsMetrics,
}

impl Shared {
    /// Give the caller waiting for `token` its answer; `false` if nobody
    /// waits (it gave up, or was answered).
    fn wake(&self, token: u64, answer: Answer) -> bool {
        let tx = self
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&token);
        match tx {
            Some(tx) => {
                let _ = tx.send(answer);
                true
            }
            None => false,
        }
    }

    /// Fail what is still waiting of batch `id`, and forget the batch; its
    /// subject, and how many requests it failed.
    fn fail_batch(&self, id: u64, e: impl Fn() -> BusError) -> Option<(String, u64)> {
        let sent = self
            .batches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id)?;
        let mut failed = 0;
        for t in sent.tokens {
            if self.wake(t, Answer::Failed(e())) {
                failed += 1;
            }
        }
        Some((sent.subject, failed))
    }

    /// Count `n` failed requests of `kind`.
    fn failed(&self, kind: &str, n: u64) {
        self.metrics
            .errors
            .with_label_values(&[&self.label, "request", kind])
            .inc_by(n);
    }

    /// One answer of batch `id` came.
    fn answered(&self, id: u64) {
        let mut batches = self.batches.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = batches.get_mut(&id) {
            b.left = b.left.saturating_sub(1);
            if b.left == 0 {
                batches.remove(&id);
            }
        }
    }

    /// Forget batches whose callers gave up waiting long ago.
    fn forget_old(&self) {
        let now = Instant::now();
        self.batches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, b| now.duration_since(b.at) < FORGET_BATCH_AFTER);
    }
}

/// The requester's side: see the module docs.
pub(crate) struct Batcher {
    queue: mpsc::UnboundedSender<Queued>,
    shared: Arc<Shared>,
    tasks: [JoinHandle<()>; 2],
}

impl Drop for Batcher {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Takes its caller's token out of the waiting table however the wait ends.
struct Forget<'a>(&'a Shared, u64);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.1);
    }
}

impl Batcher {
    pub(crate) async fn start(
        client: Client,
        label: String,
        metrics: NatsMetrics,
    ) -> Result<Batcher, BusError> {
        let inbox = client.new_inbox();
        let answers = client
            .subscribe(format!("{inbox}.*"))
            .await
            .map_err(|e| BusError::Backend(e.to_string()))?;
        let shared = Arc::new(Shared {
            waiting: Mutex::new(HashMap::new()),
            batches: Mutex::new(HashMap::new()),
            unbatched: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            label,
            metrics,
        });
        let (queue, rx) = mpsc::unbounded_channel();
        let writer = tokio::spawn(write_requests(client, inbox, rx, shared.clone()));
        let reader = tokio::spawn(read_answers(answers, shared.clone()));
        Ok(Batcher {
            queue,
            shared,
            tasks: [writer, reader],
        })
    }

    /// Whether requests to `subject` go one per message (its server did
    /// not take a batch lately).
    pub(crate) fn unbatched(&self, subject: &str) -> bool {
        let mut map = self
            .shared
            .unbatched
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match map.get(subject) {
            Some(since) if since.elapsed() < UNBATCHED_FOR => true,
            Some(_) => {
                map.remove(subject);
                false
            }
            None => false,
        }
    }

    /// Queue one request and wait for its answer's payload. With `routed`,
    /// it goes to router subject `subject` for subject `routed`.
    pub(crate) async fn request(
        &self,
        subject: &str,
        routed: Option<&str>,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, BusError> {
        let token = self.shared.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.shared
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(token, tx);
        let _forget = Forget(&self.shared, token);
        self.queue
            .send(Queued {
                subject: subject.to_string(),
                routed: routed.map(str::to_string),
                token,
                payload,
            })
            .map_err(|_| BusError::Closed)?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Answer::Reply(b))) => Ok(b),
            Ok(Ok(Answer::Failed(e))) => Err(e),
            Ok(Err(_)) => Err(BusError::Closed),
            Err(_) => Err(BusError::Timeout),
        }
    }
}

/// Take one queued item, then what the running tasks queue meanwhile (a
/// job's other NOTIFYs, the other answers of one read): see
/// [`presence_store::gather`].
async fn take_ready<T>(
    rx: &mut mpsc::UnboundedReceiver<T>,
    size: impl Fn(&T) -> usize,
) -> Option<Vec<T>> {
    presence_store::gather::gather(rx, MAX_ITEMS, MAX_BYTES, size).await
}

/// Group items by destination, keeping their order.
fn by_destination<T>(items: Vec<T>, dest: impl Fn(&T) -> &str) -> Vec<(String, Vec<T>)> {
    let mut groups: Vec<(String, Vec<T>)> = Vec::new();
    for item in items {
        let d = dest(&item);
        match groups.iter_mut().find(|(g, _)| g == d) {
            Some((_, v)) => v.push(item),
            None => groups.push((d.to_string(), vec![item])),
        }
    }
    groups
}

async fn write_requests(
    client: Client,
    inbox: String,
    mut rx: mpsc::UnboundedReceiver<Queued>,
    shared: Arc<Shared>,
) {
    let mut next_batch: u64 = 0;
    while let Some(items) = take_ready(&mut rx, |q| q.payload.len()).await {
        for (subject, group) in by_destination(items, |q| q.subject.as_str()) {
            next_batch += 1;
            if next_batch.is_multiple_of(1024) {
                shared.forget_old();
            }
            let tokens: Vec<u64> = group.iter().map(|q| q.token).collect();
            shared
                .metrics
                .batch_items
                .with_label_values(&[&shared.label, "request"])
                .observe(tokens.len() as f64);
            shared
                .batches
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(
                    next_batch,
                    Sent {
                        subject: subject.clone(),
                        left: tokens.len(),
                        tokens,
                        at: Instant::now(),
                    },
                );
            let payload = encode(
                group
                    .into_iter()
                    .map(|q| pb::BusItem {
                        token: q.token,
                        payload: q.payload,
                        error: String::new(),
                        subject: q.routed.unwrap_or_default(),
                    })
                    .collect(),
            );
            let sent = client
                .publish_with_reply_and_headers(
                    subject,
                    format!("{inbox}.{next_batch}"),
                    batch_headers(),
                    payload,
                )
                .await;
            if let Err(e) = sent {
                let e = e.to_string();
                if let Some((_, n)) = shared.fail_batch(next_batch, || BusError::Backend(e.clone()))
                {
                    shared.failed("backend", n);
                }
            }
        }
    }
}

async fn read_answers(mut answers: async_nats::Subscriber, shared: Arc<Shared>) {
    while let Some(msg) = answers.next().await {
        let Some(id) = msg
            .subject
            .rsplit('.')
            .next()
            .and_then(|s| s.parse::<u64>().ok())
        else {
            continue;
        };
        if msg.status == Some(StatusCode::NO_RESPONDERS) {
            if let Some((_, n)) = shared.fail_batch(id, || BusError::NoResponders(String::new())) {
                shared.failed("no_responders", n);
            }
            continue;
        }
        if let Some(v) = msg.headers.as_ref().and_then(|h| h.get(ERROR_HEADER)) {
            let v = v.as_str().to_string();
            if v == UNDECODABLE {
                // A server that does not know batches: one request per
                // message to it for a while.
                let e = || BusError::Backend("the server takes no batches".into());
                if let Some((subject, n)) = shared.fail_batch(id, e) {
                    tracing::info!(%subject, "server takes no batches; sending one request per message");
                    shared
                        .unbatched
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(subject, Instant::now());
                    shared.failed("undecodable", n);
                }
            } else if let Some((_, n)) =
                shared.fail_batch(id, || BusError::NoResponders(String::new()))
            {
                shared.failed("dropped", n);
            }
            continue;
        }
        let Some(items) = decode(&msg.payload) else {
            shared.metrics.error(&shared.label, "request", "decode");
            continue;
        };
        for item in items {
            let answer = match item.error.as_str() {
                "" => Answer::Reply(item.payload),
                DROPPED => {
                    shared.failed("dropped", 1);
                    Answer::Failed(BusError::NoResponders(String::new()))
                }
                other => {
                    shared.failed("undecodable", 1);
                    Answer::Failed(BusError::Backend(format!("server answered {other}")))
                }
            };
            shared.wake(item.token, answer);
            shared.answered(id);
        }
    }
}

/// An answer on its way back to a batch's requester.
pub(crate) struct Outgoing {
    reply_to: String,
    item: pb::BusItem,
}

/// The server's side of batches: answers that are ready together go back in
/// one message per requester. The task ends when every sender is dropped.
pub(crate) fn answer_writer(
    client: Client,
    label: String,
    metrics: NatsMetrics,
) -> mpsc::UnboundedSender<Outgoing> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Outgoing>();
    tokio::spawn(async move {
        while let Some(items) = take_ready(&mut rx, |o| o.item.payload.len()).await {
            for (reply_to, group) in by_destination(items, |o| o.reply_to.as_str()) {
                metrics
                    .batch_items
                    .with_label_values(&[&label, "answer"])
                    .observe(group.len() as f64);
                let payload = encode(group.into_iter().map(|o| o.item).collect());
                if client
                    .publish_with_headers(reply_to, batch_headers(), payload)
                    .await
                    .is_err()
                {
                    metrics.error(&label, "reply", "backend");
                }
            }
        }
    });
    tx
}

/// Hand each request of a batch to the server; `false` when the server is
/// gone (every request not handed over was answered "dropped").
pub(crate) async fn serve_batch<Req, Rep>(
    subject: &str,
    reply_to: String,
    payload: &[u8],
    tx: &mpsc::Sender<Incoming<Req, Rep>>,
    answers: &mpsc::UnboundedSender<Outgoing>,
    label: &str,
    metrics: &NatsMetrics,
) -> bool
where
    Req: Envelope + Send + 'static,
    Rep: Envelope + Send + 'static,
{
    let answer = |token: u64, payload: Bytes, error: &str| {
        let _ = answers.send(Outgoing {
            reply_to: reply_to.clone(),
            item: pb::BusItem {
                token,
                payload,
                error: error.to_string(),
                subject: String::new(),
            },
        });
    };
    let Some(items) = decode(payload) else {
        tracing::warn!(%subject, "undecodable batch");
        metrics.error(label, "serve", "decode");
        // Nothing to answer by token: the requesters time out.
        return true;
    };
    let mut served = true;
    for item in items {
        if !served {
            answer(item.token, Bytes::new(), DROPPED);
            continue;
        }
        let req = match Req::decode(&item.payload) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(%subject, error = %e, "undecodable request in a batch");
                metrics.error(label, "serve", "decode");
                answer(item.token, Bytes::new(), UNDECODABLE);
                continue;
            }
        };
        // A routed request is for the subject it names (the server checks
        // that it serves it: see `serve_batch`).
        let for_subject = if item.subject.is_empty() {
            subject.to_string()
        } else {
            item.subject
        };
        let (inc, rx) = Incoming::new(for_subject, req);
        if tx.send(inc).await.is_err() {
            served = false;
            answer(item.token, Bytes::new(), DROPPED);
            continue;
        }
        let answers = answers.clone();
        let reply_to = reply_to.clone();
        let token = item.token;
        tokio::spawn(async move {
            let item = match rx.await {
                Ok(rep) => pb::BusItem {
                    token,
                    payload: rep.encode().into(),
                    error: String::new(),
                    subject: String::new(),
                },
                Err(_) => pb::BusItem {
                    token,
                    payload: Bytes::new(),
                    error: DROPPED.to_string(),
                    subject: String::new(),
                },
            };
            let _ = answers.send(Outgoing { reply_to, item });
        });
    }
    served
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_round_trips_and_a_single_request_is_not_one() {
        let items = vec![
            pb::BusItem {
                token: 7,
                payload: Bytes::from_static(b"abc"),
                error: String::new(),
                subject: String::new(),
            },
            pb::BusItem {
                token: 9,
                payload: Bytes::new(),
                error: DROPPED.into(),
                subject: String::new(),
            },
        ];
        let bytes = encode(items.clone());
        assert_eq!(decode(&bytes), Some(items));
        // A single request is a protobuf message: it never starts with 0.
        let single = pb::Outcome {
            code: 200,
            ..Default::default()
        }
        .encode_to_vec();
        assert_eq!(decode(&single), None);
        assert_eq!(decode(b""), None);
        // And an older server decoding a batch as one request fails.
        assert!(<pb::Outcome as prost::Message>::decode(&bytes[..]).is_err());
        assert!(<pb::Command as prost::Message>::decode(&bytes[..]).is_err());
    }

    #[test]
    fn groups_keep_the_order_of_their_items() {
        let g = by_destination(vec![("a", 1), ("b", 2), ("a", 3)], |x| x.0);
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].0, "a");
        assert_eq!(g[0].1, vec![("a", 1), ("a", 3)]);
        assert_eq!(g[1].1, vec![("b", 2)]);
    }
}

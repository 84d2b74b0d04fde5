//! Cluster mode: the real backends behind the traits the roles program
//! against, and the small adapters between them.
//!
//! - [`Backends::connect`] builds the store (Redis, or in memory), the shard
//!   leases (whenever the store is shared), the two request/reply buses and
//!   the notify queue (NATS and JetStream, or in memory) from the config.
//! - [`HandoverRetry`] is the edge's view of the shard bus: a request that
//!   finds nobody serving its shard (a handover: the old owner is gone or
//!   handing back, the new one not serving yet) is retried for up to
//!   `--handover-wait-ms`, then the caller gets `NoResponders` and answers
//!   503 with Retry-After.
//! - The JetStream work queue implements [`WorkQueue`] itself (an unacked
//!   delivery is nak'ed when dropped, redelivered after `ack_wait` when its
//!   process dies); [`OutBus`] carries the notifier → edge envelopes over
//!   NATS in their protobuf form.
//!
//! What it is not: no role logic; roles never see which backend they run on.

use crate::config::Config;
use crate::edge::{OutRequest, Outcome};
use async_trait::async_trait;
use presence_core::commands::{Command, NotifyJob, Reply};
use presence_nats::{pb, JetStreamQueue, NatsMetrics, NatsRequests, QueueConfig};
use presence_sip::rsip;
use presence_store::{
    BusError, Incoming, Leases, MemoryBus, MemoryQueue, MemoryStore, MemoryTopics, Requests, Store,
    Topics, WorkQueue,
};
use prometheus::{IntCounterVec, Opts, Registry};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Everything the roles need from the outside world.
pub struct Backends {
    /// The system of record (reads and unfenced writes).
    pub store: Arc<dyn Store>,
    /// Shard leases, when the store is shared by several processes (Redis);
    /// `None` for the embedded store, whose one process owns every shard.
    pub leases: Option<Arc<dyn Leases>>,
    /// edge → shard owner.
    pub shards_bus: Arc<dyn Requests<Command, Reply>>,
    /// notifier → edge.
    pub edge_bus: Arc<dyn Requests<OutRequest, Outcome>>,
    /// shard owner → notifiers.
    pub jobs: Arc<dyn WorkQueue<NotifyJob>>,
    /// shard owner → api: document change hints (`changes.<k>`).
    pub changes: Arc<dyn Topics>,
}

impl Backends {
    /// Connect to what `cfg` names; in memory for what it does not.
    pub async fn connect(cfg: &Config, registry: &Registry) -> Result<Backends, String> {
        let (store, leases): (Arc<dyn Store>, Option<Arc<dyn Leases>>) = match &cfg.redis {
            Some(spec) => {
                let mut rc = presence_redis::RedisConfig::new(spec, cfg.shards)
                    .map_err(|e| format!("--redis {spec}: {e}"))?;
                rc.tls_ca = cfg.redis_ca.clone();
                rc.tls_client = cfg.redis_client.clone();
                rc.password = cfg.redis_password.clone();
                let redis = presence_redis::RedisStore::connect(rc, registry)
                    .await
                    .map_err(|e| format!("cannot connect to Redis at {spec}: {e}"))?;
                let redis = Arc::new(redis);
                (redis.clone(), Some(redis))
            }
            None => (Arc::new(MemoryStore::new()), None),
        };
        let Some(url) = &cfg.nats else {
            return Ok(Backends {
                store,
                leases,
                shards_bus: Arc::new(MemoryBus::new()),
                edge_bus: Arc::new(MemoryBus::new()),
                jobs: Arc::new(MemoryQueue::new()),
                changes: Arc::new(MemoryTopics::new()),
            });
        };
        let client = presence_nats::connect(url, &cfg.node_id, &cfg.nats_security)
            .await
            .map_err(|e| format!("cannot connect to NATS at {url}: {e}"))?;
        let metrics = NatsMetrics::new(registry).map_err(|e| format!("metrics: {e}"))?;
        let shards_bus = NatsRequests::<Command, Reply>::new(
            client.clone(),
            presence_nats::RequestsConfig {
                queue_group: "compositors".into(),
                label: "shard".into(),
                // Requests to one compositor's shards travel together
                // through its owner subject (owner_routes.rs).
                batch: true,
            },
            metrics.clone(),
        );
        let edge_bus = NatsRequests::<pb::OutRequest, pb::Outcome>::new(
            client.clone(),
            presence_nats::RequestsConfig {
                queue_group: "edges".into(),
                label: "edge".into(),
                // A change's NOTIFYs to one edge travel as one message.
                batch: true,
            },
            metrics.clone(),
        );
        let changes = Arc::new(presence_nats::NatsTopics::new(client.clone()));
        let queue = JetStreamQueue::<NotifyJob>::new(
            client,
            QueueConfig {
                // A notifier reports progress every 3 s while a job waits
                // for its NOTIFYs, so 10 s means "its notifier died".
                ack_wait: Duration::from_secs(10),
                // A job given back because the store failed comes back after
                // a pause, not in a tight loop.
                nak_delay: Duration::from_secs(1),
                max_bytes: cfg.notify_stream_max_bytes,
                ..QueueConfig::default()
            },
            metrics,
        )
        .await
        .map_err(|e| format!("cannot open the JetStream notify queue on {url}: {e}"))?;
        Ok(Backends {
            store,
            leases,
            shards_bus: Arc::new(shards_bus),
            edge_bus: Arc::new(OutBus::new(edge_bus)),
            jobs: Arc::new(queue),
            changes,
        })
    }
}

/// The metrics of [`HandoverRetry`].
#[derive(Clone)]
pub struct RetryMetrics {
    /// `outcome`: `recovered` (answered after retrying), `gave_up`.
    pub handovers: IntCounterVec,
}

impl RetryMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<RetryMetrics> {
        let handovers = IntCounterVec::new(
            Opts::new(
                "presence_edge_shard_unavailable_total",
                "Shard requests that found no owner serving (a handover), by outcome",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(handovers.clone()))?;
        for outcome in ["recovered", "gave_up"] {
            handovers.with_label_values(&[outcome]);
        }
        Ok(RetryMetrics { handovers })
    }
}

/// Retries `NoResponders` (nobody serves the shard yet) for up to `wait`.
///
/// Only `NoResponders` is retried: nobody took the request, so repeating it
/// cannot apply it twice. After giving up on a subject, further requests on
/// it within a second try once only, so the caller's own retries do not
/// multiply the wait.
pub struct HandoverRetry<Req, Rep> {
    inner: Arc<dyn Requests<Req, Rep>>,
    wait: Duration,
    gave_up: Mutex<HashMap<String, Instant>>,
    metrics: Option<RetryMetrics>,
}

impl<Req, Rep> HandoverRetry<Req, Rep> {
    pub fn new(
        inner: Arc<dyn Requests<Req, Rep>>,
        wait: Duration,
        metrics: Option<RetryMetrics>,
    ) -> Self {
        HandoverRetry {
            inner,
            wait,
            gave_up: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    fn count(&self, outcome: &str) {
        if let Some(m) = &self.metrics {
            m.handovers.with_label_values(&[outcome]).inc();
        }
    }
}

#[async_trait]
impl<Req, Rep> Requests<Req, Rep> for HandoverRetry<Req, Rep>
where
    Req: Clone + Send + Sync + 'static,
    Rep: Send + 'static,
{
    async fn request(&self, subject: &str, req: Req, timeout: Duration) -> Result<Rep, BusError> {
        let start = Instant::now();
        let recently_failed = self
            .gave_up
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(subject)
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1));
        let deadline = start
            + if recently_failed {
                Duration::ZERO
            } else {
                self.wait
            };
        let mut pause = Duration::from_millis(20);
        let mut retried = false;
        loop {
            match self.inner.request(subject, req.clone(), timeout).await {
                Err(BusError::NoResponders(s)) => {
                    let now = Instant::now();
                    if now >= deadline {
                        if !recently_failed {
                            self.count("gave_up");
                        }
                        self.gave_up
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(subject.to_string(), now);
                        return Err(BusError::NoResponders(s));
                    }
                    retried = true;
                    tokio::time::sleep(pause.min(deadline - now)).await;
                    pause = (pause * 2).min(Duration::from_millis(250));
                }
                other => {
                    if retried && other.is_ok() {
                        self.count("recovered");
                    }
                    return other;
                }
            }
        }
    }

    async fn serve(
        &self,
        subject: &str,
        tx: mpsc::Sender<Incoming<Req, Rep>>,
    ) -> Result<(), BusError> {
        self.inner.serve(subject, tx).await
    }

    async fn unserve(&self, subject: &str) -> Result<(), BusError> {
        self.inner.unserve(subject).await
    }
}

/// notifier → edge requests over NATS, as the protobuf `OutRequest` /
/// `Outcome` envelopes of `proto/presence.proto`.
pub struct OutBus {
    inner: Arc<NatsRequests<pb::OutRequest, pb::Outcome>>,
}

impl OutBus {
    pub fn new(inner: NatsRequests<pb::OutRequest, pb::Outcome>) -> OutBus {
        OutBus {
            inner: Arc::new(inner),
        }
    }
}

fn headers_to_pb(h: &rsip::Headers) -> Vec<pb::Header> {
    h.iter()
        .map(|h| pb::Header {
            name: h.name().to_string(),
            value: h.value().to_string(),
        })
        .collect()
}

fn headers_from_pb(h: Vec<pb::Header>) -> rsip::Headers {
    let mut out = rsip::Headers::default();
    for h in h {
        out.push(rsip::headers::make_header(&h.name, h.value));
    }
    out
}

fn out_to_pb(r: &OutRequest) -> pb::OutRequest {
    pb::OutRequest {
        flow: Some((&r.flow).into()),
        method: r.method.clone(),
        uri: r.uri.clone(),
        headers: headers_to_pb(&r.headers),
        body: r.body.clone(),
        deadline_ms: r.deadline_ms,
    }
}

fn out_from_pb(r: pb::OutRequest) -> Option<OutRequest> {
    Some(OutRequest {
        flow: r.flow?.try_into().ok()?,
        method: r.method,
        uri: r.uri,
        headers: headers_from_pb(r.headers),
        body: r.body,
        deadline_ms: r.deadline_ms,
    })
}

fn outcome_to_pb(o: &Outcome) -> pb::Outcome {
    pb::Outcome {
        code: o.code.into(),
        reason: o.reason.clone(),
        headers: headers_to_pb(&o.headers),
        body: o.body.clone(),
        timed_out: o.timed_out,
        superseded: o.superseded,
    }
}

fn outcome_from_pb(o: pb::Outcome) -> Result<Outcome, BusError> {
    Ok(Outcome {
        code: u16::try_from(o.code)
            .map_err(|_| BusError::Backend(format!("bad status code {}", o.code)))?,
        reason: o.reason,
        headers: headers_from_pb(o.headers),
        body: o.body,
        timed_out: o.timed_out,
        superseded: o.superseded,
    })
}

#[async_trait]
impl Requests<OutRequest, Outcome> for OutBus {
    async fn request(
        &self,
        subject: &str,
        req: OutRequest,
        timeout: Duration,
    ) -> Result<Outcome, BusError> {
        let rep = self
            .inner
            .request(subject, out_to_pb(&req), timeout)
            .await?;
        outcome_from_pb(rep)
    }

    async fn serve(
        &self,
        subject: &str,
        tx: mpsc::Sender<Incoming<OutRequest, Outcome>>,
    ) -> Result<(), BusError> {
        let (ptx, mut prx) = mpsc::channel::<Incoming<pb::OutRequest, pb::Outcome>>(1024);
        self.inner.serve(subject, ptx).await?;
        // Translate each request; the forwarder ends when the NATS side stops
        // serving (its sender is dropped) or the edge's channel closes.
        tokio::spawn(async move {
            while let Some(inc) = prx.recv().await {
                let subject = inc.subject.clone();
                let (request, replier) = inc.into_parts();
                let Some(req) = out_from_pb(request) else {
                    tracing::warn!("undecodable request on an edge subject");
                    continue; // dropped: the caller sees no responders
                };
                let (core, answer) = Incoming::new(subject, req);
                if tx.send(core).await.is_err() {
                    break;
                }
                tokio::spawn(async move {
                    if let Ok(outcome) = answer.await {
                        replier.reply(outcome_to_pb(&outcome));
                    }
                });
            }
        });
        Ok(())
    }

    async fn unserve(&self, subject: &str) -> Result<(), BusError> {
        self.inner.unserve(subject).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn handover_retry_waits_for_a_server_then_gives_up() {
        let bus: Arc<MemoryBus<u32, u32>> = Arc::new(MemoryBus::new());
        let retry = Arc::new(HandoverRetry::new(
            bus.clone() as Arc<dyn Requests<u32, u32>>,
            Duration::from_secs(2),
            None,
        ));
        // Nobody serves: NoResponders after the wait.
        let start = Instant::now();
        let r = retry.request("s", 1, Duration::from_secs(1)).await;
        assert!(matches!(r, Err(BusError::NoResponders(_))), "{r:?}");
        assert!(start.elapsed() >= Duration::from_secs(2));
        // A server appears during the wait: answered.
        let r2 = retry.clone();
        let asked = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            r2.request("s", 2, Duration::from_secs(1)).await
        });
        tokio::time::sleep(Duration::from_millis(5500)).await;
        let (tx, mut rx) = mpsc::channel(4);
        bus.serve("s", tx).await.expect("serve");
        tokio::spawn(async move {
            while let Some(inc) = rx.recv().await {
                let v = inc.request;
                inc.reply(v * 10);
            }
        });
        assert_eq!(asked.await.expect("task"), Ok(20));
    }
}

//! Metrics of the NATS bus, named `presence_nats_<name>_<unit>[_total]` with
//! bounded labels only: `bus` (a name the caller picks from a fixed set, e.g.
//! `shard`, `edge`), `op` and `kind`. See the crate docs for the list.

use prometheus::{
    exponential_buckets, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry,
};

/// One set per process; clone it into every bus and queue.
#[derive(Clone)]
pub struct NatsMetrics {
    /// Request → reply round trip, successful requests (`bus`).
    pub request_seconds: HistogramVec,
    /// Failures (`bus` or `queue`, `op`, `kind`).
    pub errors: IntCounterVec,
    /// JetStream publish → PubAck (`queue`).
    pub publish_seconds: HistogramVec,
    /// Jobs waiting in the consumer (num_pending), last seen.
    pub jetstream_pending: IntGauge,
    /// Deliveries that were redeliveries (delivery count > 1).
    pub jetstream_redeliveries: IntCounter,
    /// Requests or answers per batched message (`bus`, `kind`: `request`
    /// or `answer`).
    pub batch_items: HistogramVec,
}

impl NatsMetrics {
    /// Create and register into `registry`.
    pub fn new(registry: &Registry) -> Result<NatsMetrics, prometheus::Error> {
        let buckets = exponential_buckets(0.0001, 2.0, 18)?;
        let m = NatsMetrics {
            request_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "presence_nats_request_seconds",
                    "NATS request/reply round trip (answered requests)",
                )
                .buckets(buckets.clone()),
                &["bus"],
            )?,
            errors: IntCounterVec::new(
                Opts::new(
                    "presence_nats_errors_total",
                    "NATS operations that failed, by operation and kind",
                ),
                &["bus", "op", "kind"],
            )?,
            publish_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "presence_nats_jetstream_publish_seconds",
                    "JetStream publish until the PubAck (job stored)",
                )
                .buckets(buckets),
                &["queue"],
            )?,
            jetstream_pending: IntGauge::new(
                "presence_nats_jetstream_pending",
                "Jobs waiting in the work-queue consumer (num_pending, last seen)",
            )?,
            jetstream_redeliveries: IntCounter::new(
                "presence_nats_jetstream_redeliveries_total",
                "Jobs delivered again (not acked in time, or released unacked)",
            )?,
            batch_items: HistogramVec::new(
                HistogramOpts::new(
                    "presence_nats_batch_items",
                    "Requests (or answers) carried by one batched NATS message",
                )
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]),
                &["bus", "kind"],
            )?,
        };
        registry.register(Box::new(m.request_seconds.clone()))?;
        registry.register(Box::new(m.batch_items.clone()))?;
        registry.register(Box::new(m.errors.clone()))?;
        registry.register(Box::new(m.publish_seconds.clone()))?;
        registry.register(Box::new(m.jetstream_pending.clone()))?;
        registry.register(Box::new(m.jetstream_redeliveries.clone()))?;
        Ok(m)
    }

    pub(crate) fn error(&self, bus: &str, op: &str, kind: &str) {
        self.errors.with_label_values(&[bus, op, kind]).inc();
    }
}

impl Default for NatsMetrics {
    /// Metrics registered nowhere (tests, or a process without /metrics).
    fn default() -> Self {
        NatsMetrics::new(&Registry::new()).expect("fresh registry takes unique metrics")
    }
}

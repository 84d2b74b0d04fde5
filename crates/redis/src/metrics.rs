//! Redis round-trip metrics, `presence_redis_<name>_<unit>[_total]`, labelled
//! only by the store operation (a fixed set: see [`OPS`]).

use prometheus::{
    exponential_buckets, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry,
};

/// Every value of the `op` label.
pub const OPS: &[&str] = &[
    "commit",
    "commit_fenced",
    "publications",
    "bindings",
    "subscription",
    "subscriptions",
    "watcher_ids",
    "document",
    "hard_state",
    "is_known",
    "due",
    "next_cseq",
    "next_cseqs",
    "drop_cseq",
    "outbox",
    "outbox_done",
    "outbox_undecodable",
    "counts",
    "acquire",
    "renew",
    "release",
    "owner_of",
];

#[derive(Clone)]
pub struct RedisMetrics {
    /// `presence_redis_request_duration_seconds{op}`: one store call, all its
    /// round trips (two for `subscription`, and a commit that creates or
    /// refreshes subscriptions).
    pub duration: HistogramVec,
    /// `presence_redis_errors_total{op}`: store calls that failed (connection,
    /// timeout, server or decoding error). Fenced commits are not errors.
    pub errors: IntCounterVec,
    /// `presence_redis_fenced_total`: commits refused because their fence was
    /// not the shard's current lease token.
    pub fenced: IntCounter,
}

impl RedisMetrics {
    /// Create the metrics and register them in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<RedisMetrics> {
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "presence_redis_request_duration_seconds",
                "Duration of one Redis store operation, all its round trips, by operation.",
            )
            .buckets(exponential_buckets(0.000_05, 2.0, 16)?),
            &["op"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "presence_redis_errors_total",
                "Redis store operations that failed, by operation.",
            ),
            &["op"],
        )?;
        let fenced = IntCounter::new(
            "presence_redis_fenced_total",
            "Commits refused because their fence was not the shard's current lease token.",
        )?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(fenced.clone()))?;
        // Export every series from the start, so dashboards see zeros.
        for op in OPS {
            errors.with_label_values(&[op]);
        }
        Ok(RedisMetrics {
            duration,
            errors,
            fenced,
        })
    }
}

//! NATS as the bus (cluster mode).
//!
//! What it is:
//! - [`NatsRequests`]: the request/reply bus ([`presence_store::Requests`])
//!   over core NATS, one subject per shard (`edge → shard owner`) or per edge
//!   (`notifier → edge`), servers in a queue group; [`request_with_retry`]
//!   rides out a handover.
//! - [`JetStreamQueue`]: the notify work queue (`shard owner → notifiers`) on a
//!   JetStream work-queue stream with one shared durable pull consumer;
//!   [`JsDelivery`] acks, or naks when dropped.
//! - [`Envelope`]: how values travel, as the protobuf messages of
//!   `proto/presence.proto` (package `presence.v1`, generated into [`pb`] by
//!   build.rs with protox + prost, no `protoc`), with checked conversions to
//!   and from the core types in [`convert`].
//! - Metrics, in [`NatsMetrics`]: `presence_nats_request_seconds{bus}`,
//!   `presence_nats_errors_total{bus,op,kind}`,
//!   `presence_nats_jetstream_publish_seconds{queue}`,
//!   `presence_nats_jetstream_pending`,
//!   `presence_nats_jetstream_redeliveries_total`.
//!
//! What it is not: no retries inside `request` (the caller decides), no
//! knowledge of shards or edges beyond the subject names it is given.
#![forbid(unsafe_code)]

/// Messages generated from `proto/presence.proto` (package `presence.v1`).
#[allow(clippy::all, missing_docs)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/presence.v1.rs"));
}

pub mod convert;
pub mod envelope;
pub mod metrics;
pub mod queue;
pub mod requests;

pub use async_nats;
pub use convert::DecodeError;
pub use envelope::Envelope;
pub use metrics::NatsMetrics;
pub use queue::{JetStreamQueue, JsDelivery, QueueConfig, Storage};
pub use requests::{request_with_retry, NatsRequests, RequestsConfig};

/// Connect to `url` (e.g. `nats://127.0.0.1:4222`) with settings fit for the
/// bus: fails if no server answers now; once connected, reconnects without
/// limit. `name` shows in the server's monitoring (`/connz`).
///
/// TLS is not built in (no crypto provider is compiled in, which keeps C
/// crypto out of the tree): a `tls://` URL is refused here.
pub async fn connect(
    url: &str,
    name: &str,
) -> Result<async_nats::Client, presence_store::BusError> {
    if url.trim_start().to_ascii_lowercase().starts_with("tls://") {
        return Err(presence_store::BusError::Backend(format!(
            "{url}: TLS connections to NATS are not supported by this build"
        )));
    }
    async_nats::ConnectOptions::new()
        .name(name)
        .connect(url)
        .await
        .map_err(|e| presence_store::BusError::Backend(e.to_string()))
}

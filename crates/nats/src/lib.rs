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
//! - [`NatsTopics`]: fire-and-forget publish/subscribe ([`presence_store::Topics`])
//!   for hints a reader repairs from the store (change events per shard).
//! - Metrics, in [`NatsMetrics`]: `presence_nats_request_seconds{bus}`,
//!   `presence_nats_errors_total{bus,op,kind}`,
//!   `presence_nats_jetstream_publish_seconds{queue}`,
//!   `presence_nats_jetstream_pending`,
//!   `presence_nats_jetstream_redeliveries_total`,
//!   `presence_nats_batch_items{bus,kind}`.
//! - Batches ([`batch`]): a bus made with [`RequestsConfig::batch`] sends
//!   the requests queued together for one subject as one message, and every
//!   server answers a batch's requests in batches.
//!
//! What it is not: no retries inside `request` (the caller decides), no
//! knowledge of shards or edges beyond the subject names it is given.
#![forbid(unsafe_code)]

/// Messages generated from `proto/presence.proto` (package `presence.v1`).
#[allow(clippy::all, missing_docs)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/presence.v1.rs"));
}

pub mod batch;
pub mod convert;
pub mod envelope;
pub mod metrics;
pub mod queue;
pub mod requests;
pub mod topics;

pub use async_nats;
pub use convert::DecodeError;
pub use envelope::Envelope;
pub use metrics::NatsMetrics;
pub use queue::{JetStreamQueue, JsDelivery, QueueConfig, Storage};
pub use requests::{request_with_retry, NatsRequests, RequestsConfig};
pub use topics::NatsTopics;

/// How a process proves itself to NATS and checks the server: TLS (the
/// CA the server's certificate must chain to, a client certificate) and
/// credentials (a `.creds` file with a JWT and nkey, or a user and a
/// password read from a file). All optional; the default is what a
/// `nats://` URL on a trusted network needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Security {
    /// CA certificates (PEM); with it, TLS is required.
    pub ca: Option<std::path::PathBuf>,
    /// Client certificate and key (PEM), for servers that verify clients.
    pub client_cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// A NATS credentials file (JWT and nkey seed).
    pub creds: Option<std::path::PathBuf>,
    /// User and password.
    pub user: Option<(String, String)>,
    /// The subject prefix of this process's reply inboxes (the client's
    /// default `_INBOX` when `None`). presenced uses `_INBOX.<role>`, so a
    /// NATS account can let each role read only its own replies
    /// (helm/presence/files/nats-auth.conf).
    pub inbox_prefix: Option<String>,
}

/// Connect to `url` (e.g. `nats://127.0.0.1:4222`, or `tls://…` for TLS)
/// with settings fit for the bus: fails if no server answers now; once
/// connected, reconnects without limit. `name` shows in the server's
/// monitoring (`/connz`). TLS is rustls on ring.
pub async fn connect(
    url: &str,
    name: &str,
    security: &Security,
) -> Result<async_nats::Client, presence_store::BusError> {
    let backend = |e: String| presence_store::BusError::Backend(e);
    let mut opts = async_nats::ConnectOptions::new().name(name);
    let tls = url.trim_start().to_ascii_lowercase().starts_with("tls://");
    if let Some(ca) = &security.ca {
        opts = opts.add_root_certificates(ca.clone());
    }
    if let Some((cert, key)) = &security.client_cert {
        opts = opts.add_client_certificate(cert.clone(), key.clone());
    }
    if tls || security.ca.is_some() || security.client_cert.is_some() {
        opts = opts.require_tls(true);
    }
    if let Some(creds) = &security.creds {
        opts = opts
            .credentials_file(creds)
            .await
            .map_err(|e| backend(format!("--nats-creds {}: {e}", creds.display())))?;
    }
    if let Some((user, password)) = &security.user {
        opts = opts.user_and_password(user.clone(), password.clone());
    }
    if let Some(prefix) = &security.inbox_prefix {
        opts = opts.custom_inbox_prefix(prefix);
    }
    opts.connect(url).await.map_err(|e| backend(e.to_string()))
}

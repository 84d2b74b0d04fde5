//! Redis as the system of record (cluster mode): [`RedisStore`] implements
//! `presence_store::Store` and `presence_store::Leases` on a standalone
//! `redis-server` or a Redis Cluster.
//!
//! Every key of virtual shard `k` carries the hash tag `{k}`, so one Lua
//! script applies a whole batch (records, watcher sets, document and version,
//! hard state, known AoRs, the shard's expiry index, the lease check of a
//! fenced commit) atomically on the node that holds the shard. Record keys get
//! a TTL of deadline + grace as the memory safety net; the expiry index, not
//! keyspace notifications, drives expiry. See `store.rs` for the key layout.
//!
//! What it is not: no composition, no SIP, no lease renewal loop (the
//! compositor decides when to acquire, renew and release).
#![forbid(unsafe_code)]

pub mod codec;
pub mod config;
pub mod metrics;
mod scripts;
pub mod store;

pub use config::{RedisConfig, DEFAULT_GRACE};
pub use metrics::RedisMetrics;
pub use store::{RedisStore, KNOWN_TTL};

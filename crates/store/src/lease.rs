//! Fenced shard leases. A compositor owns a shard while it holds the shard's
//! lease and renews it before its TTL runs out; when it stops renewing,
//! another owner may acquire the shard. Every acquisition hands out a fencing
//! token that is strictly greater than every token handed out for that shard
//! before (whoever held it), and [`Store::commit_fenced`] accepts a batch only
//! while its token is the shard's current one, so the writes of a stale owner
//! (paused, partitioned, or simply late) fail with [`StoreError::Fenced`]
//! instead of corrupting state.
//!
//! [`Store::commit_fenced`]: crate::Store::commit_fenced
//! [`StoreError::Fenced`]: crate::StoreError::Fenced

use crate::store::StoreResult;
use async_trait::async_trait;
use std::time::Duration;

/// Who holds a shard, with which token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub owner: String,
    pub token: u64,
}

#[async_trait]
pub trait Leases: Send + Sync + 'static {
    /// Take `shard` for `ttl` if nobody else holds a live lease on it.
    /// Returns the new fencing token, or `None` if another owner holds it.
    /// Acquiring a shard one already holds succeeds with a new, greater token
    /// (the old one stops being accepted).
    async fn acquire(&self, shard: u32, owner: &str, ttl: Duration) -> StoreResult<Option<u64>>;

    /// Extend a live lease held by `owner` with `token` to `ttl` from now.
    /// `false` if the lease expired, was released, or belongs to someone else.
    async fn renew(&self, shard: u32, owner: &str, token: u64, ttl: Duration) -> StoreResult<bool>;

    /// Hand the shard back (graceful stop). A no-op unless `owner` holds it
    /// with `token`. The next acquisition still gets a greater token.
    async fn release(&self, shard: u32, owner: &str, token: u64) -> StoreResult<()>;

    /// The live lease of `shard`, if any.
    async fn owner_of(&self, shard: u32) -> StoreResult<Option<Lease>>;
}

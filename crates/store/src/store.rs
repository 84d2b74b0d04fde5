//! The storage trait. Writes are batches of [`Op`]s applied atomically per
//! shard (one Lua script on Redis, one lock in memory); each batch also keeps
//! the shard's expiry index (deadline → key) in step with the records.

use crate::lease::Lease;
use async_trait::async_trait;
use bytes::Bytes;
use presence_core::commands::NotifyJob;
use presence_core::{Binding, Document, Publication, Subscription};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("storage backend error: {0}")]
    Backend(String),
    #[error("shard lease lost (fenced write)")]
    Fenced,
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A member of a shard's expiry index. One entry per record: re-indexing a
/// record moves its deadline.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ExpiryKey {
    Publication {
        aor: String,
        event: String,
        etag: String,
    },
    Subscription {
        id: String,
    },
    Bindings {
        aor: String,
    },
}

/// One write in a batch.
#[derive(Debug, Clone)]
pub enum Op {
    /// Insert or replace (by etag); indexes its expiry.
    PutPublication(Publication),
    DeletePublication {
        aor: String,
        event: String,
        etag: String,
    },
    /// Replace the AoR's bindings; empty removes them. Indexed at the earliest expiry.
    PutBindings {
        aor: String,
        bindings: Vec<Binding>,
    },
    /// Insert or replace (by id); indexes its expiry and the watcher list,
    /// and lists it as pending while its view is `Pending`.
    PutSubscription(Subscription),
    DeleteSubscription {
        id: String,
    },
    /// Store a new composed document; its version becomes previous + 1,
    /// or `first_version` (at least 1) when there is none.
    PutDocument {
        aor: String,
        event: String,
        content_type: String,
        body: Bytes,
        /// The version of a document that is not stored (never made, or
        /// forgotten): the compositor gives its clock in microseconds, so
        /// an AoR's versions grow across its documents.
        first_version: u64,
    },
    /// Forget the document (and its version): nothing backs it any more
    /// (no publication, hard state, binding or watcher). A later document
    /// of the AoR starts at that one's `first_version`.
    DeleteDocument {
        aor: String,
        event: String,
    },
    PutHardState {
        aor: String,
        event: String,
        body: Bytes,
    },
    DeleteHardState {
        aor: String,
        event: String,
    },
    /// Remember that this AoR exists (registered or published once).
    MarkKnown {
        aor: String,
    },
    /// Drop an index entry whose record is gone.
    Unindex(ExpiryKey),
    /// Put a notify job in the shard's outbox under `id` (unique; ids sort
    /// in the order the jobs should be pushed). The job is stored with the
    /// change it announces, in the same atomic batch, and stays until
    /// [`Store::outbox_done`]: a crash between the commit and the push to
    /// the notify queue leaves it there for the next owner to push.
    Enqueue {
        id: String,
        job: NotifyJob,
    },
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub publications: u64,
    pub subscriptions: u64,
    pub bindings: u64,
    pub documents: u64,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Apply `ops` atomically. Returns the new version of each `PutDocument`,
    /// in order.
    async fn commit(&self, shard: u32, ops: Vec<Op>) -> StoreResult<Vec<u64>>;

    /// [`Store::commit`] under a fence: applied only if `fence` is `shard`'s
    /// live lease, owner and token both (see [`crate::Leases`]), checked
    /// atomically with the batch. Otherwise nothing changes and the result
    /// is [`StoreError::Fenced`]. Comparing the owner too keeps a stale
    /// writer out even if a backend failover lost the fence counter and
    /// handed its token out again.
    async fn commit_fenced(&self, shard: u32, fence: &Lease, ops: Vec<Op>)
        -> StoreResult<Vec<u64>>;

    async fn publications(&self, aor: &str, event: &str) -> StoreResult<Vec<Publication>>;
    async fn bindings(&self, aor: &str) -> StoreResult<Vec<Binding>>;
    async fn subscription(&self, id: &str) -> StoreResult<Option<Subscription>>;
    /// [`Store::subscription`] of each id, in order: one round trip where
    /// the backend can (a notifier reads a change's watchers together).
    async fn subscriptions(&self, ids: &[String]) -> StoreResult<Vec<Option<Subscription>>> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.push(self.subscription(id).await?);
        }
        Ok(out)
    }
    /// Ids of the subscriptions watching (aor, event). One whose record has
    /// just gone may still be listed: loading it then finds nothing.
    async fn watcher_ids(&self, aor: &str, event: &str) -> StoreResult<Vec<String>>;
    /// Whether any subscription watches (aor, event), without loading the
    /// ids (a hot resource has thousands).
    async fn is_watched(&self, aor: &str, event: &str) -> StoreResult<bool>;
    /// Ids of `shard`'s subscriptions held pending (`View::Pending`): the
    /// ones a reload of the watcher policy decides again. Kept by
    /// [`Op::PutSubscription`] and [`Op::DeleteSubscription`]; an id whose
    /// record is gone may be listed until it is deleted.
    async fn pending_subscriptions(&self, shard: u32) -> StoreResult<Vec<String>>;
    async fn document(&self, aor: &str, event: &str) -> StoreResult<Option<Document>>;
    async fn hard_state(&self, aor: &str, event: &str) -> StoreResult<Option<Bytes>>;
    async fn is_known(&self, aor: &str) -> StoreResult<bool>;

    /// Index entries of `shard` whose deadline is at or before `now_ms`,
    /// earliest first, at most `limit`. They stay in the index until a commit
    /// deletes, re-indexes or unindexes their record, so a crash between
    /// reading and handling an expiry loses nothing.
    async fn due(
        &self,
        shard: u32,
        now_ms: u64,
        limit: usize,
    ) -> StoreResult<Vec<(u64, ExpiryKey)>>;

    /// Whether [`Store::due`] for `shard` may find anything at `now_ms`. A
    /// hint for the sweeper: `true` unless the implementation knows better
    /// (a shard owner that remembers every deadline it committed since its
    /// last sweep, see presenced's `OwnerCache`).
    fn may_have_due(&self, _shard: u32, _now_ms: u64) -> bool {
        true
    }

    /// The sweeper read [`Store::due`] for `shard` at `now_ms`; `complete`:
    /// it returned everything due (fewer than its limit).
    fn swept(&self, _shard: u32, _now_ms: u64, _complete: bool) {}

    /// Next CSeq for a NOTIFY of a subscription carrying document `version`
    /// (strictly increasing, from 1), or `None` when a NOTIFY for a newer
    /// version already took one: then this one must not be sent. Taking the
    /// CSeq and checking the version is one atomic step, so with several
    /// notifiers CSeq order is version order, and a watcher that rejects a
    /// lower CSeq (RFC 3261 §12.2.2) never applies an older document after a
    /// newer one. The same version may take several CSeqs (refreshes).
    async fn next_cseq(&self, id: &str, version: u64) -> StoreResult<Option<u32>>;
    /// [`Store::next_cseq`] for each (id, version), in order, each as if
    /// taken alone: one round trip where the backend can.
    async fn next_cseqs(&self, asks: &[(String, u64)]) -> StoreResult<Vec<Option<u32>>> {
        let mut out = Vec::with_capacity(asks.len());
        for (id, version) in asks {
            out.push(self.next_cseq(id, *version).await?);
        }
        Ok(out)
    }
    /// The subscription's NOTIFYs are over (its final NOTIFY went out):
    /// from now on [`Store::next_cseq`] answers `None` for it, whatever the
    /// version, so a redelivered job never sends another NOTIFY after the
    /// final one. The mark lives about as long as the subscription's record
    /// would have (the safety-net TTL), then is freed.
    async fn drop_cseq(&self, id: &str) -> StoreResult<()>;

    /// Jobs in `shard`'s outbox ([`Op::Enqueue`]) in id order, at most `limit`.
    async fn outbox(&self, shard: u32, limit: usize) -> StoreResult<Vec<(String, NotifyJob)>>;
    /// Remove outbox entries (their jobs are in the notify queue). Unknown
    /// ids are ignored. Not fenced: whoever pushed a job may clear it.
    async fn outbox_done(&self, shard: u32, ids: &[String]) -> StoreResult<()>;

    async fn counts(&self) -> StoreResult<Counts>;
}

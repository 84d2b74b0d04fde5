//! The store as a compositor in cluster mode sees it: every `commit` is a
//! `commit_fenced` with the shard's current lease token, and a write for a
//! shard this process does not hold fails with `Fenced` without reaching the
//! backend. Reads of owned shards' AoR state go through the
//! [`OwnerCache`] (see there why that is safe); everything else passes
//! through.

use crate::leases::ShardLeases;
use crate::owner_cache::{OwnerCache, Read, Value};
use async_trait::async_trait;
use bytes::Bytes;
use presence_core::commands::NotifyJob;
use presence_core::{shard_of, Binding, Document, Publication, Subscription};
use presence_store::{Counts, ExpiryKey, Lease, Op, Store, StoreError, StoreResult};
use std::sync::Arc;

pub struct FencedStore {
    inner: Arc<dyn Store>,
    leases: Arc<ShardLeases>,
    cache: Option<OwnerCache>,
}

impl FencedStore {
    /// Reads pass through.
    pub fn new(inner: Arc<dyn Store>, leases: Arc<ShardLeases>) -> FencedStore {
        FencedStore {
            inner,
            leases,
            cache: None,
        }
    }

    /// Reads of owned shards served by `cache` once known.
    pub fn with_cache(mut self, cache: OwnerCache) -> FencedStore {
        self.cache = Some(cache);
        self
    }

    /// `read` of `aor`'s state: from the cache when this process owns the
    /// shard and knows it, else from the store (and remembered if the lease
    /// did not change meanwhile).
    async fn cached<F>(&self, aor: &str, read: impl Fn() -> Read, load: F) -> StoreResult<Value>
    where
        F: std::future::Future<Output = StoreResult<Value>>,
    {
        let Some(cache) = &self.cache else {
            return load.await;
        };
        let shard = shard_of(aor, self.leases.shards());
        let Some(token) = self.leases.fence(shard) else {
            return load.await;
        };
        if let Some(v) = cache.get(shard, token, &read()) {
            return Ok(v);
        }
        let v = load.await?;
        if self.leases.fence(shard) == Some(token) {
            cache.fill(shard, token, read(), &v);
        }
        Ok(v)
    }
}

/// The cache answered a read with another kind of entry: cannot happen
/// (`OwnerCache::get` answers in the kind it was asked), but a command
/// gets a store error rather than a panic.
fn kind_mismatch() -> StoreError {
    StoreError::Backend("owner cache answered another kind of entry".into())
}

#[async_trait]
impl Store for FencedStore {
    async fn commit(&self, shard: u32, ops: Vec<Op>) -> StoreResult<Vec<u64>> {
        let token = self.leases.fence(shard).ok_or(StoreError::Fenced)?;
        let lease = Lease {
            owner: self.leases.owner().to_string(),
            token,
        };
        self.commit_fenced(shard, &lease, ops).await
    }

    async fn commit_fenced(
        &self,
        shard: u32,
        fence: &Lease,
        ops: Vec<Op>,
    ) -> StoreResult<Vec<u64>> {
        let applied = self.cache.is_some().then(|| ops.clone());
        let r = self.inner.commit_fenced(shard, fence, ops).await;
        if let Some(cache) = &self.cache {
            match (&r, applied) {
                (Ok(versions), Some(ops)) => cache.committed(shard, fence.token, &ops, versions),
                // Fenced, or the outcome is unknown (a timeout may have
                // been applied): what the cache knows may be wrong now.
                _ => cache.forget(shard),
            }
        }
        if matches!(r, Err(StoreError::Fenced)) {
            self.leases.fenced(shard, fence.token);
        }
        r
    }

    async fn publications(&self, aor: &str, event: &str) -> StoreResult<Vec<Publication>> {
        let read = || Read::Publications(aor.to_string(), event.to_string());
        let load = async {
            Ok(Value::Publications(
                self.inner.publications(aor, event).await?,
            ))
        };
        match self.cached(aor, read, load).await? {
            Value::Publications(v) => Ok(v),
            _ => Err(kind_mismatch()),
        }
    }
    async fn bindings(&self, aor: &str) -> StoreResult<Vec<Binding>> {
        let read = || Read::Bindings(aor.to_string());
        let load = async { Ok(Value::Bindings(self.inner.bindings(aor).await?)) };
        match self.cached(aor, read, load).await? {
            Value::Bindings(v) => Ok(v),
            _ => Err(kind_mismatch()),
        }
    }
    async fn subscription(&self, id: &str) -> StoreResult<Option<Subscription>> {
        self.inner.subscription(id).await
    }
    async fn watcher_ids(&self, aor: &str, event: &str) -> StoreResult<Vec<String>> {
        let read = || Read::Watchers(aor.to_string(), event.to_string());
        let load = async { Ok(Value::Watchers(self.inner.watcher_ids(aor, event).await?)) };
        match self.cached(aor, read, load).await? {
            Value::Watchers(v) => Ok(v),
            _ => Err(kind_mismatch()),
        }
    }
    async fn pending_subscriptions(&self, shard: u32) -> StoreResult<Vec<String>> {
        self.inner.pending_subscriptions(shard).await
    }
    async fn is_watched(&self, aor: &str, event: &str) -> StoreResult<bool> {
        if self.cache.is_none() {
            return self.inner.is_watched(aor, event).await;
        }
        // The set itself, so that the next question is answered here.
        Ok(!self.watcher_ids(aor, event).await?.is_empty())
    }
    async fn document(&self, aor: &str, event: &str) -> StoreResult<Option<Document>> {
        let read = || Read::Document(aor.to_string(), event.to_string());
        let load = async { Ok(Value::Document(self.inner.document(aor, event).await?)) };
        match self.cached(aor, read, load).await? {
            Value::Document(v) => Ok(v),
            _ => Err(kind_mismatch()),
        }
    }
    async fn hard_state(&self, aor: &str, event: &str) -> StoreResult<Option<Bytes>> {
        let read = || Read::Hard(aor.to_string(), event.to_string());
        let load = async { Ok(Value::Hard(self.inner.hard_state(aor, event).await?)) };
        match self.cached(aor, read, load).await? {
            Value::Hard(v) => Ok(v),
            _ => Err(kind_mismatch()),
        }
    }
    async fn is_known(&self, aor: &str) -> StoreResult<bool> {
        self.inner.is_known(aor).await
    }
    async fn due(
        &self,
        shard: u32,
        now_ms: u64,
        limit: usize,
    ) -> StoreResult<Vec<(u64, ExpiryKey)>> {
        self.inner.due(shard, now_ms, limit).await
    }
    fn may_have_due(&self, shard: u32, now_ms: u64) -> bool {
        match (&self.cache, self.leases.fence(shard)) {
            (Some(cache), Some(token)) => cache.may_have_due(shard, token, now_ms),
            _ => true,
        }
    }
    fn swept(&self, shard: u32, now_ms: u64, complete: bool) {
        if let (Some(cache), Some(token)) = (&self.cache, self.leases.fence(shard)) {
            cache.swept(shard, token, now_ms, complete);
        }
    }
    async fn next_cseq(&self, id: &str, version: u64) -> StoreResult<Option<u32>> {
        self.inner.next_cseq(id, version).await
    }
    async fn drop_cseq(&self, id: &str) -> StoreResult<()> {
        self.inner.drop_cseq(id).await
    }
    async fn outbox(&self, shard: u32, limit: usize) -> StoreResult<Vec<(String, NotifyJob)>> {
        self.inner.outbox(shard, limit).await
    }
    async fn outbox_done(&self, shard: u32, ids: &[String]) -> StoreResult<()> {
        self.inner.outbox_done(shard, ids).await
    }
    async fn counts(&self) -> StoreResult<Counts> {
        self.inner.counts().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leases::{LeaseMetrics, ShardLeases};
    use crate::owner_cache::CacheMetrics;
    use presence_store::{Leases, MemoryStore};
    use prometheus::{IntCounter, IntGauge, Registry};
    use std::time::Duration;

    fn cached(
        store: &Arc<MemoryStore>,
        owner: &str,
        shards: u32,
    ) -> (FencedStore, Arc<ShardLeases>, CacheMetrics) {
        let (leases, _events) = ShardLeases::new(
            store.clone(),
            owner.into(),
            shards,
            Duration::from_secs(3),
            LeaseMetrics::register(&Registry::new()).expect("metrics"),
        );
        let metrics = CacheMetrics {
            hits: IntCounter::new("h", "h").unwrap(),
            misses: IntCounter::new("m", "m").unwrap(),
            entries: IntGauge::new("e", "e").unwrap(),
        };
        let s = FencedStore::new(store.clone(), leases.clone())
            .with_cache(OwnerCache::new(1000, metrics.clone()));
        (s, leases, metrics)
    }

    fn publication(aor: &str, etag: &str, body: &str) -> Publication {
        Publication {
            etag: etag.into(),
            aor: aor.into(),
            event: "presence".into(),
            expires_at_ms: u64::MAX / 4,
            content_type: "application/pidf+xml".into(),
            body: Bytes::from(body.to_string()),
            modified_ms: 1,
            seq: 1,
        }
    }

    async fn bodies(s: &FencedStore, aor: &str) -> Vec<String> {
        s.publications(aor, "presence")
            .await
            .expect("read")
            .into_iter()
            .map(|p| String::from_utf8_lossy(&p.body).into_owned())
            .collect()
    }

    /// Every Store behaviour holds when the owner answers its reads from
    /// memory: the cache is a store to whoever reads through it.
    #[tokio::test(start_paused = true)]
    async fn the_cached_store_passes_the_store_contract() {
        let store = Arc::new(MemoryStore::new());
        let (s, leases, metrics) = cached(&store, "a", 256);
        leases.cycle(true).await;
        leases.cycle(false).await;
        assert_eq!(leases.owned().len(), 256);
        presence_store::contract::store_contract(&s, 256).await;
        assert!(
            metrics.hits.get() > 0,
            "the contract never read from the cache"
        );
    }

    /// An owner that lost a shard, while another owner wrote it, and took
    /// it back reads what the other wrote, not what it remembered.
    #[tokio::test(start_paused = true)]
    async fn a_shard_taken_back_is_read_again() {
        let store = Arc::new(MemoryStore::new());
        let aor = "sip:alice@example.com";
        let shard = shard_of(aor, 4);
        let (a, la, metrics) = cached(&store, "a", 4);
        la.cycle(true).await;
        la.cycle(false).await;
        a.commit(
            shard,
            vec![Op::PutPublication(publication(aor, "e1", "mine"))],
        )
        .await
        .expect("commit");
        assert_eq!(bodies(&a, aor).await, vec!["mine"]);
        assert_eq!(bodies(&a, aor).await, vec!["mine"]);
        assert!(metrics.hits.get() >= 1);
        // a stops renewing; b takes the shard and changes the publication.
        tokio::time::sleep(Duration::from_secs(4)).await;
        let token = store
            .acquire(shard, "b", Duration::from_secs(3))
            .await
            .expect("store")
            .expect("free");
        store
            .commit_fenced(
                shard,
                &Lease {
                    owner: "b".into(),
                    token,
                },
                vec![Op::PutPublication(publication(aor, "e1", "theirs"))],
            )
            .await
            .expect("b's commit");
        store.release(shard, "b", token).await.expect("release");
        // a comes back and takes the shard again (a new token).
        la.cycle(false).await;
        la.cycle(false).await;
        assert!(la.fence(shard).is_some(), "a did not take the shard back");
        assert_eq!(bodies(&a, aor).await, vec!["theirs"]);
    }
}

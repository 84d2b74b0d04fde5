//! In-memory store: the embedded backend of the all-in-one server and of
//! unit tests. One lock, held only for the few microseconds of a batch.

use crate::lease::{Lease, Leases};
use crate::store::{Counts, ExpiryKey, Op, Store, StoreError, StoreResult};
use async_trait::async_trait;
use bytes::Bytes;
use presence_core::commands::NotifyJob;
use presence_core::{Binding, Document, Publication, Subscription};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Default)]
struct ShardIndex {
    by_key: HashMap<ExpiryKey, u64>,
    by_deadline: BTreeSet<(u64, ExpiryKey)>,
}

impl ShardIndex {
    fn set(&mut self, key: ExpiryKey, deadline: u64) {
        if let Some(old) = self.by_key.insert(key.clone(), deadline) {
            self.by_deadline.remove(&(old, key.clone()));
        }
        self.by_deadline.insert((deadline, key));
    }
    fn remove(&mut self, key: &ExpiryKey) {
        if let Some(old) = self.by_key.remove(key) {
            self.by_deadline.remove(&(old, key.clone()));
        }
    }
}

type Pair = (String, String);

#[derive(Default)]
struct Inner {
    /// (aor, event) → etag → publication
    publications: HashMap<Pair, HashMap<String, Publication>>,
    bindings: HashMap<String, Vec<Binding>>,
    subscriptions: HashMap<String, Subscription>,
    watchers: HashMap<Pair, HashSet<String>>,
    /// shard → subscriptions held pending.
    pending: HashMap<u32, HashSet<String>>,
    documents: HashMap<Pair, Document>,
    hard: HashMap<Pair, Bytes>,
    known: HashSet<String>,
    /// Per subscription: last NOTIFY CSeq and the newest version it carried.
    cseq: HashMap<String, (u32, u64)>,
    /// Subscriptions whose NOTIFYs are over, with when that was (tokio time).
    ended: HashMap<String, Instant>,
    /// shard → outbox id → job
    outbox: HashMap<u32, BTreeMap<String, NotifyJob>>,
    index: HashMap<u32, ShardIndex>,
    /// shard → (owner, token, expires)
    leases: HashMap<u32, (String, u64, Instant)>,
    /// shard → last token handed out (never goes back)
    fences: HashMap<u32, u64>,
}

impl Inner {
    /// The live lease of `shard` (tokio time, so paused-time tests work).
    fn live_lease(&self, shard: u32) -> Option<&(String, u64, Instant)> {
        self.leases
            .get(&shard)
            .filter(|(_, _, until)| *until > Instant::now())
    }
}

/// How long an ended subscription's mark is kept (see [`Store::drop_cseq`]).
const ENDED_MEMORY: Duration = Duration::from_secs(600);

#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-applied batch:
        // ops are applied to owned values; recover the data either way.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn pair(a: &str, e: &str) -> Pair {
    (a.to_string(), e.to_string())
}

/// Apply one batch to the locked state.
fn apply(inner: &mut Inner, shard: u32, ops: Vec<Op>) -> Vec<u64> {
    let mut versions = Vec::new();
    for op in ops {
        match op {
            Op::PutPublication(p) => {
                let key = ExpiryKey::Publication {
                    aor: p.aor.clone(),
                    event: p.event.clone(),
                    etag: p.etag.clone(),
                };
                inner
                    .index
                    .entry(shard)
                    .or_default()
                    .set(key, p.expires_at_ms);
                inner
                    .publications
                    .entry(pair(&p.aor, &p.event))
                    .or_default()
                    .insert(p.etag.clone(), p);
            }
            Op::DeletePublication { aor, event, etag } => {
                let k = pair(&aor, &event);
                if let Some(m) = inner.publications.get_mut(&k) {
                    m.remove(&etag);
                    if m.is_empty() {
                        inner.publications.remove(&k);
                    }
                }
                inner
                    .index
                    .entry(shard)
                    .or_default()
                    .remove(&ExpiryKey::Publication { aor, event, etag });
            }
            Op::PutBindings { aor, bindings } => {
                let key = ExpiryKey::Bindings { aor: aor.clone() };
                let idx = inner.index.entry(shard).or_default();
                match bindings.iter().map(|b| b.expires_at_ms).min() {
                    Some(d) => idx.set(key, d),
                    None => idx.remove(&key),
                }
                if bindings.is_empty() {
                    inner.bindings.remove(&aor);
                } else {
                    inner.bindings.insert(aor, bindings);
                }
            }
            Op::PutSubscription(s) => {
                inner.index.entry(shard).or_default().set(
                    ExpiryKey::Subscription { id: s.id.clone() },
                    s.expires_at_ms,
                );
                inner
                    .watchers
                    .entry(pair(&s.aor, &s.event))
                    .or_default()
                    .insert(s.id.clone());
                let pending = inner.pending.entry(shard).or_default();
                if s.view == presence_core::View::Pending {
                    pending.insert(s.id.clone());
                } else {
                    pending.remove(&s.id);
                }
                inner.subscriptions.insert(s.id.clone(), s);
            }
            Op::DeleteSubscription { id } => {
                if let Some(p) = inner.pending.get_mut(&shard) {
                    p.remove(&id);
                }
                if let Some(s) = inner.subscriptions.remove(&id) {
                    let k = pair(&s.aor, &s.event);
                    if let Some(w) = inner.watchers.get_mut(&k) {
                        w.remove(&id);
                        if w.is_empty() {
                            inner.watchers.remove(&k);
                        }
                    }
                }
                inner
                    .index
                    .entry(shard)
                    .or_default()
                    .remove(&ExpiryKey::Subscription { id });
            }
            Op::PutDocument {
                aor,
                event,
                content_type,
                body,
                first_version,
            } => {
                let k = pair(&aor, &event);
                let version = match inner.documents.get(&k) {
                    Some(d) => d.version + 1,
                    None => first_version.max(1),
                };
                inner.documents.insert(
                    k,
                    Document {
                        aor,
                        event,
                        version,
                        content_type,
                        body,
                    },
                );
                versions.push(version);
            }
            Op::DeleteDocument { aor, event } => {
                inner.documents.remove(&pair(&aor, &event));
            }
            Op::PutHardState { aor, event, body } => {
                inner.hard.insert(pair(&aor, &event), body);
            }
            Op::DeleteHardState { aor, event } => {
                inner.hard.remove(&pair(&aor, &event));
            }
            Op::MarkKnown { aor } => {
                inner.known.insert(aor);
            }
            Op::Unindex(key) => inner.index.entry(shard).or_default().remove(&key),
            Op::Enqueue { id, job } => {
                inner.outbox.entry(shard).or_default().insert(id, job);
            }
        }
    }
    versions
}

#[async_trait]
impl Store for MemoryStore {
    async fn commit(&self, shard: u32, ops: Vec<Op>) -> StoreResult<Vec<u64>> {
        Ok(apply(&mut self.lock(), shard, ops))
    }

    async fn commit_fenced(
        &self,
        shard: u32,
        fence: &Lease,
        ops: Vec<Op>,
    ) -> StoreResult<Vec<u64>> {
        let mut g = self.lock();
        if !g
            .live_lease(shard)
            .is_some_and(|l| l.0 == fence.owner && l.1 == fence.token)
        {
            return Err(StoreError::Fenced);
        }
        Ok(apply(&mut g, shard, ops))
    }

    async fn publications(&self, aor: &str, event: &str) -> StoreResult<Vec<Publication>> {
        let g = self.lock();
        let mut v: Vec<Publication> = g
            .publications
            .get(&pair(aor, event))
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        v.sort_by_key(|p| (p.modified_ms, p.seq));
        Ok(v)
    }

    async fn bindings(&self, aor: &str) -> StoreResult<Vec<Binding>> {
        Ok(self.lock().bindings.get(aor).cloned().unwrap_or_default())
    }

    async fn subscription(&self, id: &str) -> StoreResult<Option<Subscription>> {
        Ok(self.lock().subscriptions.get(id).cloned())
    }

    async fn watcher_ids(&self, aor: &str, event: &str) -> StoreResult<Vec<String>> {
        Ok(self
            .lock()
            .watchers
            .get(&pair(aor, event))
            .map(|ids| ids.iter().cloned().collect())
            .unwrap_or_default())
    }

    async fn pending_subscriptions(&self, shard: u32) -> StoreResult<Vec<String>> {
        Ok(self
            .lock()
            .pending
            .get(&shard)
            .map(|ids| ids.iter().cloned().collect())
            .unwrap_or_default())
    }

    async fn is_watched(&self, aor: &str, event: &str) -> StoreResult<bool> {
        Ok(self
            .lock()
            .watchers
            .get(&pair(aor, event))
            .is_some_and(|ids| !ids.is_empty()))
    }

    async fn document(&self, aor: &str, event: &str) -> StoreResult<Option<Document>> {
        Ok(self.lock().documents.get(&pair(aor, event)).cloned())
    }

    async fn hard_state(&self, aor: &str, event: &str) -> StoreResult<Option<Bytes>> {
        Ok(self.lock().hard.get(&pair(aor, event)).cloned())
    }

    async fn is_known(&self, aor: &str) -> StoreResult<bool> {
        Ok(self.lock().known.contains(aor))
    }

    async fn due(
        &self,
        shard: u32,
        now_ms: u64,
        limit: usize,
    ) -> StoreResult<Vec<(u64, ExpiryKey)>> {
        let g = self.lock();
        let Some(idx) = g.index.get(&shard) else {
            return Ok(Vec::new());
        };
        Ok(idx
            .by_deadline
            .iter()
            .take_while(|(d, _)| *d <= now_ms)
            .take(limit)
            .cloned()
            .collect())
    }

    async fn next_cseq(&self, id: &str, version: u64) -> StoreResult<Option<u32>> {
        let mut g = self.lock();
        if g.ended.contains_key(id) {
            return Ok(None);
        }
        let (c, v) = g.cseq.entry(id.to_string()).or_insert((0, 0));
        if version < *v {
            return Ok(None);
        }
        *v = version;
        *c += 1;
        Ok(Some(*c))
    }

    async fn drop_cseq(&self, id: &str) -> StoreResult<()> {
        let mut g = self.lock();
        g.cseq.remove(id);
        let now = Instant::now();
        // Forget marks older than a record's safety net would keep it, a
        // batch at a time (amortised over the calls).
        if g.ended.len() >= 1024 && g.ended.len().is_power_of_two() {
            g.ended
                .retain(|_, at| now.saturating_duration_since(*at) < ENDED_MEMORY);
        }
        g.ended.insert(id.to_string(), now);
        Ok(())
    }

    async fn outbox(&self, shard: u32, limit: usize) -> StoreResult<Vec<(String, NotifyJob)>> {
        Ok(self
            .lock()
            .outbox
            .get(&shard)
            .map(|o| {
                o.iter()
                    .take(limit)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn outbox_done(&self, shard: u32, ids: &[String]) -> StoreResult<()> {
        let mut g = self.lock();
        if let Some(o) = g.outbox.get_mut(&shard) {
            for id in ids {
                o.remove(id);
            }
        }
        Ok(())
    }

    async fn counts(&self) -> StoreResult<Counts> {
        let g = self.lock();
        Ok(Counts {
            publications: g.publications.values().map(|m| m.len() as u64).sum(),
            subscriptions: g.subscriptions.len() as u64,
            bindings: g.bindings.values().map(|v| v.len() as u64).sum(),
            documents: g.documents.len() as u64,
        })
    }
}

#[async_trait]
impl Leases for MemoryStore {
    async fn acquire(&self, shard: u32, owner: &str, ttl: Duration) -> StoreResult<Option<u64>> {
        let mut g = self.lock();
        if g.live_lease(shard).is_some_and(|l| l.0 != owner) {
            return Ok(None);
        }
        let fence = g.fences.entry(shard).or_insert(0);
        *fence += 1;
        let token = *fence;
        g.leases
            .insert(shard, (owner.to_string(), token, Instant::now() + ttl));
        Ok(Some(token))
    }

    async fn renew(&self, shard: u32, owner: &str, token: u64, ttl: Duration) -> StoreResult<bool> {
        let mut g = self.lock();
        if !g
            .live_lease(shard)
            .is_some_and(|l| l.0 == owner && l.1 == token)
        {
            return Ok(false);
        }
        if let Some(l) = g.leases.get_mut(&shard) {
            l.2 = Instant::now() + ttl;
        }
        Ok(true)
    }

    async fn release(&self, shard: u32, owner: &str, token: u64) -> StoreResult<()> {
        let mut g = self.lock();
        if g.leases
            .get(&shard)
            .is_some_and(|l| l.0 == owner && l.1 == token)
        {
            g.leases.remove(&shard);
        }
        Ok(())
    }

    async fn owner_of(&self, shard: u32) -> StoreResult<Option<Lease>> {
        Ok(self.lock().live_lease(shard).map(|l| Lease {
            owner: l.0.clone(),
            token: l.1,
        }))
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn memory_store_passes_the_contract() {
        crate::contract::store_contract(&crate::MemoryStore::new(), 256).await;
    }

    #[tokio::test]
    async fn memory_topics_pass_the_contract() {
        crate::contract::topics_contract(&crate::MemoryTopics::new()).await;
    }

    #[tokio::test]
    async fn memory_store_passes_the_lease_contract() {
        let s = crate::MemoryStore::new();
        crate::contract::lease_contract(&s, &s, 256).await;
    }

    #[tokio::test(start_paused = true)]
    async fn memory_store_passes_the_lease_contract_in_paused_time() {
        let s = crate::MemoryStore::new();
        crate::contract::lease_contract(&s, &s, 256).await;
    }
}

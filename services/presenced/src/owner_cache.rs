//! What a compositor has read and written of the shards it owns, kept in
//! memory so that a command reads the store once per key, not once per
//! command.
//!
//! A shard's owner is its only writer: every write goes through
//! [`crate::fenced::FencedStore::commit`] with the shard's lease token, and a
//! write with a stale token is refused by the store. So while the token is
//! the same, what the owner committed *is* what the store holds, and the
//! owner can answer its own reads. Before this cache a PUBLISH took six
//! round trips to Redis (publications, hard state, bindings, document, "is
//! it watched", the commit); with it, one (the commit) once the AoR is warm.
//!
//! Rules that keep it true:
//! - every entry of a shard is tagged with the lease token it was read or
//!   written under; a read with another token (the lease was lost and taken
//!   again, or is gone) drops the shard's entries first;
//! - a commit that failed (outcome unknown) or was fenced drops the shard's
//!   entries;
//! - a commit that succeeded updates only entries already present (what was
//!   never read stays unknown and is read from the store), except for values
//!   a write sets whole (bindings, hard state, a document);
//! - a read fills an entry only if the token is still the one it started
//!   under.
//!
//! - a shard's entries are dropped [`MAX_AGE`] after they were first
//!   filled: what the owner committed is what Redis holds only as long as
//!   Redis keeps it, and a Redis restart without persistence or a failover
//!   to a replica that missed the last writes loses some. A lost lease
//!   covers most of that (the lease keys go too); the age bounds the rest
//!   (a shard whose data the replica lost but whose lease it kept) to
//!   minutes, within which phones refresh anyway.
//!
//! Bounded by `max_entries` (keys across all shards): past it, the largest
//! shard's entries are dropped (they are read again on demand).

use bytes::Bytes;
use presence_core::{Binding, Document, Publication};
use presence_store::Op;
use prometheus::{IntCounter, IntGauge};
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a shard's entries are trusted before they are read again.
pub const MAX_AGE: Duration = Duration::from_secs(300);
/// A shard whose expiry index was read in full is not read again for this
/// long unless this owner commits an earlier deadline: an idle shard costs
/// one index read a second instead of five (the sweeper ticks every 200
/// ms), and a deadline a previous owner set is handled at most this late.
pub const SWEEP_IDLE_MS: u64 = 1_000;

type Key = (String, String);

fn key(aor: &str, event: &str) -> Key {
    (aor.to_string(), event.to_string())
}

/// One owned shard's known state.
struct Shard {
    token: u64,
    /// When its first entry came; the entries go at [`MAX_AGE`].
    born: Instant,
    publications: HashMap<Key, Vec<Publication>>,
    documents: HashMap<Key, Option<Document>>,
    hard: HashMap<Key, Option<Bytes>>,
    watchers: HashMap<Key, HashSet<String>>,
    /// Which cached watcher set each subscription id is in.
    watcher_of: HashMap<String, Key>,
    bindings: HashMap<String, Vec<Binding>>,
    /// Nothing in the shard's expiry index is due before this (ms), as far
    /// as this owner knows: its last full sweep, lowered by every deadline
    /// it committed since.
    quiet_until: Option<u64>,
}

impl Default for Shard {
    fn default() -> Shard {
        Shard {
            token: 0,
            born: Instant::now(),
            publications: HashMap::new(),
            documents: HashMap::new(),
            hard: HashMap::new(),
            watchers: HashMap::new(),
            watcher_of: HashMap::new(),
            bindings: HashMap::new(),
            quiet_until: None,
        }
    }
}

impl Shard {
    fn entries(&self) -> usize {
        self.publications.len()
            + self.documents.len()
            + self.hard.len()
            + self.watchers.len()
            + self.bindings.len()
    }

    /// Apply a committed op. `versions` yields the versions the store gave
    /// the batch's documents, in order.
    fn apply(&mut self, op: &Op, versions: &mut impl Iterator<Item = u64>) {
        let deadline = match op {
            Op::PutPublication(p) => Some(p.expires_at_ms),
            Op::PutSubscription(s) => Some(s.expires_at_ms),
            Op::PutBindings { bindings, .. } => bindings.iter().map(|b| b.expires_at_ms).min(),
            _ => None,
        };
        if let (Some(d), Some(q)) = (deadline, self.quiet_until) {
            self.quiet_until = Some(q.min(d));
        }
        match op {
            Op::PutPublication(p) => {
                if let Some(list) = self.publications.get_mut(&key(&p.aor, &p.event)) {
                    list.retain(|q| q.etag != p.etag);
                    list.push(p.clone());
                    list.sort_by_key(|p| (p.modified_ms, p.seq));
                }
            }
            Op::DeletePublication { aor, event, etag } => {
                if let Some(list) = self.publications.get_mut(&key(aor, event)) {
                    list.retain(|q| &q.etag != etag);
                }
            }
            Op::PutBindings { aor, bindings } => {
                self.bindings.insert(aor.clone(), bindings.clone());
            }
            Op::PutSubscription(s) => {
                let k = key(&s.aor, &s.event);
                if let Some(set) = self.watchers.get_mut(&k) {
                    set.insert(s.id.clone());
                    self.watcher_of.insert(s.id.clone(), k);
                }
            }
            Op::DeleteSubscription { id } => {
                // Every id of a cached set is in `watcher_of`: an id not
                // there is in no cached set.
                if let Some(k) = self.watcher_of.remove(id) {
                    if let Some(set) = self.watchers.get_mut(&k) {
                        set.remove(id);
                    }
                }
            }
            Op::PutDocument {
                aor,
                event,
                content_type,
                body,
                ..
            } => {
                let k = key(aor, event);
                match versions.next() {
                    Some(version) => {
                        self.documents.insert(
                            k,
                            Some(Document {
                                aor: aor.clone(),
                                event: event.clone(),
                                version,
                                content_type: content_type.clone(),
                                body: body.clone(),
                            }),
                        );
                    }
                    // The store did not say: unknown.
                    None => {
                        self.documents.remove(&k);
                    }
                }
            }
            Op::DeleteDocument { aor, event } => {
                self.documents.insert(key(aor, event), None);
            }
            Op::PutHardState { aor, event, body } => {
                self.hard.insert(key(aor, event), Some(body.clone()));
            }
            Op::DeleteHardState { aor, event } => {
                self.hard.insert(key(aor, event), None);
            }
            Op::MarkKnown { .. } | Op::Unindex(_) | Op::Enqueue { .. } => {}
        }
    }
}

#[derive(Default)]
struct State {
    shards: HashMap<u32, Shard>,
}

/// Reads served from memory and from the store, for the metrics.
#[derive(Clone)]
pub struct CacheMetrics {
    pub hits: IntCounter,
    pub misses: IntCounter,
    pub entries: IntGauge,
}

pub struct OwnerCache {
    max_entries: usize,
    max_age: Duration,
    state: Mutex<State>,
    metrics: CacheMetrics,
}

/// A read of one kind of entry.
pub enum Read {
    Publications(String, String),
    Document(String, String),
    Hard(String, String),
    Watchers(String, String),
    Bindings(String),
}

/// What a read found.
pub enum Value {
    Publications(Vec<Publication>),
    Document(Option<Document>),
    Hard(Option<Bytes>),
    Watchers(Vec<String>),
    Bindings(Vec<Binding>),
}

impl OwnerCache {
    pub fn new(max_entries: usize, metrics: CacheMetrics) -> OwnerCache {
        OwnerCache {
            max_entries,
            max_age: MAX_AGE,
            state: Mutex::new(State::default()),
            metrics,
        }
    }

    /// Entries trusted for `age` instead of [`MAX_AGE`] (tests).
    pub fn with_max_age(mut self, age: Duration) -> OwnerCache {
        self.max_age = age;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// After a change: past the bound, the largest shard's entries go; the
    /// gauge says how many are kept.
    fn settle(&self, st: &mut State) {
        let mut total: usize = st.shards.values().map(Shard::entries).sum();
        if total > self.max_entries {
            let biggest = st
                .shards
                .iter()
                .max_by_key(|(_, s)| s.entries())
                .map(|(k, s)| (*k, s.entries()));
            if let Some((k, n)) = biggest {
                st.shards.remove(&k);
                total -= n;
            }
        }
        self.metrics.entries.set(total as i64);
    }

    /// The cached value of `read` for `shard` under lease `token`, if known.
    pub fn get(&self, shard: u32, token: u64, read: &Read) -> Option<Value> {
        let mut st = self.lock();
        if st
            .shards
            .get(&shard)
            .is_some_and(|s| s.token != token || s.born.elapsed() >= self.max_age)
        {
            st.shards.remove(&shard);
        }
        let found = st.shards.get(&shard).and_then(|s| match read {
            Read::Publications(a, e) => s
                .publications
                .get(&key(a, e))
                .map(|v| Value::Publications(v.clone())),
            Read::Document(a, e) => s
                .documents
                .get(&key(a, e))
                .map(|v| Value::Document(v.clone())),
            Read::Hard(a, e) => s.hard.get(&key(a, e)).map(|v| Value::Hard(v.clone())),
            Read::Watchers(a, e) => s
                .watchers
                .get(&key(a, e))
                .map(|v| Value::Watchers(v.iter().cloned().collect())),
            Read::Bindings(a) => s.bindings.get(a).map(|v| Value::Bindings(v.clone())),
        });
        match found {
            Some(_) => self.metrics.hits.inc(),
            None => self.metrics.misses.inc(),
        }
        found
    }

    /// Remember what the store answered to `read`, read under `token`
    /// (started under it, and the lease still has it now).
    pub fn fill(&self, shard: u32, token: u64, read: Read, value: &Value) {
        if self.max_entries == 0 {
            return;
        }
        let mut st = self.lock();
        // Entries of another token that a commit or sweep put there since
        // the read began: the read is older, it fills nothing.
        if st
            .shards
            .get(&shard)
            .is_some_and(|s| s.token != token && s.entries() > 0)
        {
            return;
        }
        let s = shard_mut(&mut st, shard, token);
        match (read, value) {
            (Read::Publications(a, e), Value::Publications(v)) => {
                s.publications.insert((a, e), v.clone());
            }
            (Read::Document(a, e), Value::Document(v)) => {
                s.documents.insert((a, e), v.clone());
            }
            (Read::Hard(a, e), Value::Hard(v)) => {
                s.hard.insert((a, e), v.clone());
            }
            (Read::Watchers(a, e), Value::Watchers(ids)) => {
                let k = (a, e);
                for id in ids {
                    s.watcher_of.insert(id.clone(), k.clone());
                }
                s.watchers.insert(k, ids.iter().cloned().collect());
            }
            (Read::Bindings(a), Value::Bindings(v)) => {
                s.bindings.insert(a, v.clone());
            }
            _ => {}
        }
        self.settle(&mut st);
    }

    /// `ops` were committed to `shard` under `token`; the store numbered
    /// the batch's documents `versions`.
    pub fn committed(&self, shard: u32, token: u64, ops: &[Op], versions: &[u64]) {
        if self.max_entries == 0 {
            return;
        }
        let mut st = self.lock();
        let s = shard_mut(&mut st, shard, token);
        let mut versions = versions.iter().copied();
        for op in ops {
            s.apply(op, &mut versions);
        }
        self.settle(&mut st);
    }

    /// Whether the expiry index of `shard` (owned under `token`) may hold
    /// something due at `now_ms`.
    pub fn may_have_due(&self, shard: u32, token: u64, now_ms: u64) -> bool {
        let st = self.lock();
        match st.shards.get(&shard) {
            Some(s) if s.token == token => s.quiet_until.is_none_or(|q| now_ms >= q),
            _ => true,
        }
    }

    /// The expiry index of `shard` was read at `now_ms` under `token`;
    /// `complete`: everything due was returned.
    pub fn swept(&self, shard: u32, token: u64, now_ms: u64, complete: bool) {
        if self.max_entries == 0 {
            return;
        }
        let mut st = self.lock();
        shard_mut(&mut st, shard, token).quiet_until = complete.then_some(now_ms + SWEEP_IDLE_MS);
    }

    /// Forget all of `shard` (a write whose outcome is unknown, a lost
    /// lease).
    pub fn forget(&self, shard: u32) {
        let mut st = self.lock();
        st.shards.remove(&shard);
        self.settle(&mut st);
    }
}

/// `shard`'s entries under lease `token`: a fresh, empty set if those kept
/// were read or written under another token.
fn shard_mut(st: &mut State, shard: u32, token: u64) -> &mut Shard {
    let s = st.shards.entry(shard).or_default();
    if s.token != token {
        *s = Shard {
            token,
            ..Shard::default()
        };
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use presence_core::{Flow, Subscription, Transport, View};

    fn cache(max: usize) -> OwnerCache {
        OwnerCache::new(
            max,
            CacheMetrics {
                hits: IntCounter::new("h", "h").unwrap(),
                misses: IntCounter::new("m", "m").unwrap(),
                entries: IntGauge::new("e", "e").unwrap(),
            },
        )
    }

    fn publication(etag: &str, modified: u64) -> Publication {
        Publication {
            etag: etag.into(),
            aor: "sip:a@x".into(),
            event: "presence".into(),
            expires_at_ms: 10_000,
            content_type: "application/pidf+xml".into(),
            body: Bytes::from(etag.to_string()),
            modified_ms: modified,
            seq: modified,
        }
    }

    fn subscription(id: &str) -> Subscription {
        let addr = "127.0.0.1:5060".parse().unwrap();
        Subscription {
            id: id.into(),
            aor: "sip:a@x".into(),
            event: "presence".into(),
            event_id: None,
            watcher: "sip:w@x".into(),
            call_id: "c".into(),
            remote_tag: "t".into(),
            local_uri: "<sip:a@x>".into(),
            remote_uri: "<sip:w@x>".into(),
            remote_target: "sip:w@127.0.0.1".into(),
            route_set: Vec::new(),
            flow: Flow {
                transport: Transport::Udp,
                remote: addr,
                local: addr,
                edge: "e".into(),
                conn: 0,
                seal: None,
            },
            remote_cseq: 1,
            expires_at_ms: 10_000,
            content_type: "application/pidf+xml".into(),
            view: View::Full,
            rates: Default::default(),
        }
    }

    fn pubs(c: &OwnerCache, token: u64) -> Option<Vec<String>> {
        match c.get(
            1,
            token,
            &Read::Publications("sip:a@x".into(), "presence".into()),
        ) {
            Some(Value::Publications(v)) => Some(v.into_iter().map(|p| p.etag).collect()),
            _ => None,
        }
    }

    fn watchers(c: &OwnerCache, token: u64) -> Option<Vec<String>> {
        match c.get(
            1,
            token,
            &Read::Watchers("sip:a@x".into(), "presence".into()),
        ) {
            Some(Value::Watchers(mut v)) => {
                v.sort();
                Some(v)
            }
            _ => None,
        }
    }

    #[test]
    fn commits_update_what_was_read_and_a_new_token_forgets_it() {
        let c = cache(100);
        let read = || Read::Publications("sip:a@x".into(), "presence".into());
        assert!(pubs(&c, 7).is_none(), "nothing known yet");
        // A publication never read stays unknown when one is committed.
        c.committed(1, 7, &[Op::PutPublication(publication("e1", 1))], &[]);
        assert!(pubs(&c, 7).is_none());
        c.fill(
            1,
            7,
            read(),
            &Value::Publications(vec![publication("e1", 1)]),
        );
        c.committed(1, 7, &[Op::PutPublication(publication("e2", 2))], &[]);
        assert_eq!(pubs(&c, 7), Some(vec!["e1".into(), "e2".into()]));
        // Replaced by etag, kept in (modified, seq) order.
        c.committed(1, 7, &[Op::PutPublication(publication("e1", 3))], &[]);
        assert_eq!(pubs(&c, 7), Some(vec!["e2".into(), "e1".into()]));
        let delete = Op::DeletePublication {
            aor: "sip:a@x".into(),
            event: "presence".into(),
            etag: "e2".into(),
        };
        c.committed(1, 7, &[delete], &[]);
        assert_eq!(pubs(&c, 7), Some(vec!["e1".into()]));
        // The lease was lost and taken again: another token.
        assert!(pubs(&c, 8).is_none(), "entries of an old token survived");
        // A read that started under the old token does not fill the new.
        c.committed(1, 8, &[Op::PutPublication(publication("e3", 4))], &[]);
        c.fill(
            1,
            7,
            read(),
            &Value::Publications(vec![publication("e1", 1)]),
        );
        assert!(pubs(&c, 8).is_none(), "a stale read filled the cache");
    }

    #[test]
    fn a_swept_shard_is_quiet_until_a_deadline_it_committed() {
        let c = cache(100);
        assert!(c.may_have_due(1, 1, 0), "never swept: may have");
        c.swept(1, 1, 10_000, true);
        assert!(!c.may_have_due(1, 1, 10_500));
        assert!(c.may_have_due(1, 1, 10_000 + SWEEP_IDLE_MS));
        // A deadline committed meanwhile brings the next sweep forward.
        let mut p = publication("e1", 1);
        p.expires_at_ms = 10_200;
        c.committed(1, 1, &[Op::PutPublication(p)], &[]);
        assert!(!c.may_have_due(1, 1, 10_100));
        assert!(c.may_have_due(1, 1, 10_200));
        // A sweep that hit its limit leaves more: sweep again at once.
        c.swept(1, 1, 10_300, false);
        assert!(c.may_have_due(1, 1, 10_300));
        // Another token knows nothing.
        c.swept(1, 1, 20_000, true);
        assert!(c.may_have_due(1, 2, 20_001));
        c.forget(1);
        assert!(c.may_have_due(1, 1, 20_001));
    }

    #[test]
    fn entries_are_read_again_after_their_age() {
        let c = cache(100).with_max_age(Duration::from_millis(30));
        c.fill(1, 1, Read::Bindings("a".into()), &Value::Bindings(vec![]));
        assert!(c.get(1, 1, &Read::Bindings("a".into())).is_some());
        std::thread::sleep(Duration::from_millis(40));
        assert!(c.get(1, 1, &Read::Bindings("a".into())).is_none());
    }

    #[test]
    fn documents_take_the_versions_the_store_gave() {
        let c = cache(100);
        let put = |body: &'static str| Op::PutDocument {
            aor: "sip:a@x".into(),
            event: "presence".into(),
            content_type: "application/pidf+xml".into(),
            body: Bytes::from_static(body.as_bytes()),
            first_version: 1,
        };
        let doc = || match c.get(1, 1, &Read::Document("sip:a@x".into(), "presence".into())) {
            Some(Value::Document(d)) => Some(d.map(|d| (d.version, d.body))),
            _ => None,
        };
        c.committed(1, 1, &[put("a")], &[5]);
        assert_eq!(doc(), Some(Some((5, Bytes::from_static(b"a")))));
        let forget = Op::DeleteDocument {
            aor: "sip:a@x".into(),
            event: "presence".into(),
        };
        c.committed(1, 1, &[forget], &[]);
        assert_eq!(doc(), Some(None), "a deleted document is known absent");
        // No version from the store: unknown, read again.
        c.committed(1, 1, &[put("b")], &[]);
        assert_eq!(doc(), None);
    }

    #[test]
    fn watcher_sets_follow_subscriptions() {
        let c = cache(100);
        c.fill(
            1,
            1,
            Read::Watchers("sip:a@x".into(), "presence".into()),
            &Value::Watchers(vec!["s1".into()]),
        );
        c.committed(1, 1, &[Op::PutSubscription(subscription("s2"))], &[]);
        assert_eq!(watchers(&c, 1), Some(vec!["s1".into(), "s2".into()]));
        c.committed(1, 1, &[Op::DeleteSubscription { id: "s1".into() }], &[]);
        c.committed(1, 1, &[Op::DeleteSubscription { id: "s9".into() }], &[]);
        assert_eq!(watchers(&c, 1), Some(vec!["s2".into()]));
        c.committed(1, 1, &[Op::DeleteSubscription { id: "s2".into() }], &[]);
        assert_eq!(watchers(&c, 1), Some(vec![]));
    }

    #[test]
    fn past_the_bound_the_biggest_shard_goes_and_forget_drops_one() {
        let c = cache(3);
        for (shard, aor) in [(1, "a"), (1, "b"), (2, "c")] {
            c.fill(
                shard,
                1,
                Read::Bindings(aor.into()),
                &Value::Bindings(vec![]),
            );
        }
        assert!(c.get(1, 1, &Read::Bindings("a".into())).is_some());
        c.fill(2, 1, Read::Bindings("d".into()), &Value::Bindings(vec![]));
        // Four entries: shard 2 (two) or shard 1 (two) went, not both.
        let left = ["a", "b", "c", "d"]
            .iter()
            .zip([1, 1, 2, 2])
            .filter(|(a, s)| c.get(*s, 1, &Read::Bindings(a.to_string())).is_some())
            .count();
        assert_eq!(left, 2);
        c.forget(1);
        c.forget(2);
        assert!(c.get(2, 1, &Read::Bindings("d".into())).is_none());
        // Nothing is kept at all with a bound of 0.
        let off = cache(0);
        off.fill(1, 1, Read::Bindings("a".into()), &Value::Bindings(vec![]));
        assert!(off.get(1, 1, &Read::Bindings("a".into())).is_none());
    }
}

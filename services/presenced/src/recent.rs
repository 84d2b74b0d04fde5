//! The shard owner's memory of the answers it gave, by SIP transaction: the
//! edge re-sends a command whose answer it did not get (a reply lost on the
//! bus, a timeout), and the re-sent command must get the first answer, not be
//! applied a second time (a PUBLISH modify applied twice meets its own new
//! ETag and answers 412; an initial SUBSCRIBE applied twice makes two
//! subscriptions). Bounded by count and by time; time is an input.
//!
//! Not: a cross-process memory. A command re-sent to a new shard owner after
//! a failover is applied again; that is the window the fenced lease and the
//! store's own idempotence cover: bindings by contact, and a PUBLISH's ETag
//! derived from its transaction (`names::txn_etag`), so the new owner finds
//! the publication the dead one made for it.

use presence_core::commands::Reply;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// How long an answer is remembered: a UA's non-INVITE transaction lives
/// 32 s (Timer F); the edge retries within that, so 40 s covers every retry.
pub const REMEMBER_MS: u64 = 40_000;

/// At most this many answers are remembered (~1 KB each): 100k covers
/// 2 500 requests/s for the whole [`REMEMBER_MS`] per compositor; past it the
/// oldest is forgotten (its re-send, if any, is applied again).
pub const MAX_REMEMBERED: usize = 100_000;

pub struct RecentReplies {
    inner: Mutex<Inner>,
    cap: usize,
}

#[derive(Default)]
struct Inner {
    replies: HashMap<String, Reply>,
    /// (forget at, key), in insertion order = deadline order.
    order: VecDeque<(u64, String)>,
}

impl Default for RecentReplies {
    fn default() -> Self {
        RecentReplies::new(MAX_REMEMBERED)
    }
}

impl RecentReplies {
    pub fn new(cap: usize) -> RecentReplies {
        RecentReplies {
            inner: Mutex::new(Inner::default()),
            cap: cap.max(1),
        }
    }

    /// The key of a transaction's command: the resource and the SIP
    /// transaction key, so that nobody's branch can collide with another
    /// resource's.
    pub fn key(aor: &str, txn: &str) -> String {
        format!("{aor}\n{txn}")
    }

    pub fn get(&self, key: &str, now_ms: u64) -> Option<Reply> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.sweep(now_ms);
        inner.replies.get(key).cloned()
    }

    pub fn put(&self, key: String, reply: Reply, now_ms: u64) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.sweep(now_ms);
        while inner.replies.len() >= self.cap {
            match inner.order.pop_front() {
                Some((_, k)) => {
                    inner.replies.remove(&k);
                }
                None => break,
            }
        }
        if inner.replies.insert(key.clone(), reply).is_none() {
            inner.order.push_back((now_ms + REMEMBER_MS, key));
        }
    }

    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replies
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Inner {
    fn sweep(&mut self, now_ms: u64) {
        while self.order.front().is_some_and(|(t, _)| *t <= now_ms) {
            if let Some((_, k)) = self.order.pop_front() {
                self.replies.remove(&k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done() -> Reply {
        Reply::Published {
            etag: "e1".into(),
            expires: 60,
        }
    }

    #[test]
    fn remembers_for_a_while_and_within_its_bound() {
        let r = RecentReplies::new(2);
        r.put(RecentReplies::key("sip:a@x", "t1"), done(), 0);
        assert!(r.get(&RecentReplies::key("sip:a@x", "t1"), 1).is_some());
        assert!(r.get(&RecentReplies::key("sip:b@x", "t1"), 1).is_none());
        assert!(r
            .get(&RecentReplies::key("sip:a@x", "t1"), REMEMBER_MS)
            .is_none());
        r.put("k1".into(), done(), 0);
        r.put("k2".into(), done(), 0);
        r.put("k3".into(), done(), 0);
        assert_eq!(r.len(), 2);
        assert!(r.get("k1", 1).is_none(), "the oldest went first");
        assert!(r.get("k3", 1).is_some());
    }
}

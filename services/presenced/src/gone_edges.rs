//! Edges found gone. A flow names the edge that holds it; when nobody has
//! served that edge's subject for [`EDGE_GONE_AFTER`] (it exited; a
//! restarted edge comes back under a new id), requests for its flows go
//! through another edge. Remembering that here spares every later NOTIFY or
//! MESSAGE to those flows the same wait: after a rollout every edge id has
//! changed, and without this memory each request to a phone that registered
//! or subscribed before it would wait [`EDGE_GONE_AFTER`] until the phone
//! refreshes. An edge found gone still gets one attempt (its id may come
//! back: a restart that keeps its node id); an answer from it forgets the
//! mark.
//!
//! [`EDGE_GONE_AFTER`]: crate::names::EDGE_GONE_AFTER

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a gone edge is remembered (a phone refreshes within an hour).
pub const GONE_MEMORY: Duration = Duration::from_secs(3600);
/// Edges remembered at most (oldest forgotten first).
const CAPACITY: usize = 10_000;

#[derive(Default)]
pub struct GoneEdges {
    seen: Mutex<HashMap<String, Instant>>,
}

impl GoneEdges {
    /// Was `edge` found gone (within [`GONE_MEMORY`] of `now`)?
    pub fn is_gone(&self, edge: &str, now: Instant) -> bool {
        self.lock()
            .get(edge)
            .is_some_and(|at| now.saturating_duration_since(*at) < GONE_MEMORY)
    }

    /// `edge` was found gone at `now`.
    pub fn mark(&self, edge: &str, now: Instant) {
        let mut seen = self.lock();
        if seen.len() >= CAPACITY && !seen.contains_key(edge) {
            seen.retain(|_, at| now.saturating_duration_since(*at) < GONE_MEMORY);
            if seen.len() >= CAPACITY {
                if let Some(oldest) = seen
                    .iter()
                    .min_by_key(|(_, at)| **at)
                    .map(|(e, _)| e.clone())
                {
                    seen.remove(&oldest);
                }
            }
        }
        seen.insert(edge.to_string(), now);
    }

    /// `edge` answered: it is back.
    pub fn back(&self, edge: &str) {
        let mut seen = self.lock();
        if !seen.is_empty() {
            seen.remove(edge);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_gone_edges_for_a_while_and_forgets_those_back() {
        let g = GoneEdges::default();
        let t0 = Instant::now();
        assert!(!g.is_gone("edge-a", t0));
        g.mark("edge-a", t0);
        assert!(g.is_gone("edge-a", t0 + Duration::from_secs(60)));
        assert!(!g.is_gone("edge-b", t0));
        assert!(!g.is_gone("edge-a", t0 + GONE_MEMORY));
        g.mark("edge-a", t0);
        g.back("edge-a");
        assert!(!g.is_gone("edge-a", t0));
    }

    #[test]
    fn stays_bounded() {
        let g = GoneEdges::default();
        let t0 = Instant::now();
        for i in 0..CAPACITY + 10 {
            g.mark(&format!("edge-{i}"), t0 + Duration::from_millis(i as u64));
        }
        assert_eq!(g.lock().len(), CAPACITY);
        assert!(!g.is_gone("edge-0", t0 + Duration::from_secs(20)));
        assert!(g.is_gone(
            &format!("edge-{}", CAPACITY + 9),
            t0 + Duration::from_secs(20)
        ));
    }
}

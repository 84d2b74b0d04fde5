//! Which edges are alive, in a cluster: each edge holds a membership lease
//! (ids from [`EDGE_BASE`], owner = its node id) renewed every third of the
//! lease TTL and released when it stops; notifiers and edges read the
//! owners every [`REFRESH`].
//!
//! What it is for: a flow names the edge that holds it. When that edge is
//! gone (it stopped: a rollout gives its successor a new node id; or it
//! crashed and its lease ran out), its flows' NOTIFYs and MESSAGEs go through
//! another edge — at once, instead of after waiting for the old one to come
//! back, and always through the *same* other edge for one dialog (the
//! highest rendezvous hash of the dialog over the live edges), so that the
//! per-dialog NOTIFY order that edge keeps (`edge/dialog_out.rs`) still
//! holds. A NOTIFY through a random edge (`edges.any`) would race the next
//! one through another edge.
//!
//! Not: a consensus. Two readers may see the live set a second apart (an
//! edge that restarts leaves and its replacement joins within that second),
//! so two notifiers could compute different successors for one dialog and
//! its NOTIFYs race through two edges (CSeq 9 arriving before 8: a rolling
//! restart in CI showed it). So the successor a dialog's first rerouted
//! NOTIFY finds is *pinned* ([`Roster::heir`]): a lease on a pin slot (a hash
//! of the dialog over [`PIN_SLOTS`]) owned by the heir's id; whoever comes
//! later uses the pinned heir, until it is found gone itself.

use presence_store::Leases;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Edge membership slots are leases on ids from here up (above the shards
/// and the compositors' slots).
pub const EDGE_BASE: u32 = 0x5000_0000;
/// Most edges one cluster can count.
pub const MAX_EDGES: u32 = 64;
/// How often readers list the live edges.
pub const REFRESH: Duration = Duration::from_secs(1);
/// Heir pins are leases on ids from here up (above the edge slots).
pub const PIN_BASE: u32 = 0x6000_0000;
/// Pin slots: dialogs sharing a slot share an heir, which is harmless (any
/// live edge can carry any dialog; what matters is that every notifier
/// picks the same one). Few enough that the backend's per-lease fence
/// counters stay a small fixed set.
pub const PIN_SLOTS: u32 = 4096;
/// How long a pin lasts after the last NOTIFY that used it renewed it.
pub const PIN_TTL: Duration = Duration::from_secs(120);

pub struct Roster {
    leases: Arc<dyn Leases>,
    live: Mutex<Live>,
}

#[derive(Default)]
struct Live {
    ids: Vec<String>,
    /// When `ids` was read; `None` before the first read.
    at: Option<Instant>,
}

impl Roster {
    pub fn new(leases: Arc<dyn Leases>) -> Arc<Roster> {
        Arc::new(Roster {
            leases,
            live: Mutex::new(Live::default()),
        })
    }

    /// Keep `id`'s membership lease until `shutdown`, then release it (the
    /// readers see the edge gone within [`REFRESH`]).
    pub async fn hold(
        self: Arc<Self>,
        id: String,
        ttl: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut held: Option<(u32, u64)> = None;
        let every = (ttl / 3).min(REFRESH);
        loop {
            held = match held {
                Some((slot, token)) => match self.leases.renew(slot, &id, token, ttl).await {
                    Ok(true) => Some((slot, token)),
                    _ => None,
                },
                None => None,
            };
            if held.is_none() {
                for i in 0..MAX_EDGES {
                    if let Ok(Some(token)) = self.leases.acquire(EDGE_BASE + i, &id, ttl).await {
                        held = Some((EDGE_BASE + i, token));
                        break;
                    }
                }
                if held.is_none() {
                    tracing::warn!(max = MAX_EDGES, "no free edge membership slot");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.changed() => break,
            }
        }
        if let Some((slot, token)) = held {
            let _ = self.leases.release(slot, &id, token).await;
        }
    }

    /// Read the live edges every [`REFRESH`] until `shutdown`.
    pub async fn follow(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            self.refresh().await;
            tokio::select! {
                _ = tokio::time::sleep(REFRESH) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Read the live edges once.
    pub async fn refresh(&self) {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..MAX_EDGES {
            let leases = self.leases.clone();
            set.spawn(async move { leases.owner_of(EDGE_BASE + i).await });
        }
        let mut ids = Vec::new();
        while let Some(r) = set.join_next().await {
            match r {
                Ok(Ok(Some(lease))) => ids.push(lease.owner),
                Ok(Ok(None)) => {}
                // A failed read keeps the last known set.
                _ => return,
            }
        }
        ids.sort();
        ids.dedup();
        *self.live.lock().unwrap_or_else(|e| e.into_inner()) = Live {
            ids,
            at: Some(Instant::now()),
        };
    }

    /// Is `edge` known to be gone (the roster was read recently and does not
    /// list it)? `false` when the roster knows nothing (not read yet, or
    /// stale): then the caller waits for the edge as before.
    pub fn is_gone(&self, edge: &str) -> bool {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        fresh(&live) && !live.ids.iter().any(|i| i == edge)
    }

    /// The live edge that takes over `key`'s requests (a dialog, a flow),
    /// other than `not`: the highest rendezvous hash. `None` when the roster
    /// knows no other live edge.
    pub fn successor(&self, key: &str, not: &str) -> Option<String> {
        self.successor_where(key, &|id| id == not)
    }

    fn successor_where(&self, key: &str, skip: &(dyn Fn(&str) -> bool + Sync)) -> Option<String> {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        if !fresh(&live) {
            return None;
        }
        live.ids
            .iter()
            .filter(|id| !skip(id))
            .max_by_key(|id| rendezvous(key, id))
            .cloned()
    }

    /// The edge that sends dialog `key`'s NOTIFYs while its own edge is
    /// gone, the same for every notifier: the pinned heir if there is one
    /// and `skip` (edges found unreachable, the dialog's own edge) does not
    /// name it, else this roster's successor, pinned now. A pin whose edge
    /// `skip` names is released and replaced. `None` when the roster knows
    /// no candidate. If the backend fails, the successor unpinned (best
    /// effort; the next NOTIFY pins).
    pub async fn heir(&self, key: &str, skip: &(dyn Fn(&str) -> bool + Sync)) -> Option<String> {
        let slot = PIN_BASE + (rendezvous(key, "pin") % u64::from(PIN_SLOTS)) as u32;
        for _ in 0..3 {
            let candidate = self.successor_where(key, skip)?;
            match self.leases.owner_of(slot).await {
                Ok(Some(pin)) if !skip(&pin.owner) => {
                    // Renewed by whoever uses it (a failed renewal only
                    // shortens its life).
                    let _ = self
                        .leases
                        .renew(slot, &pin.owner, pin.token, PIN_TTL)
                        .await;
                    return Some(pin.owner);
                }
                Ok(Some(stale)) => {
                    let _ = self.leases.release(slot, &stale.owner, stale.token).await;
                }
                Ok(None) => {}
                Err(_) => return Some(candidate),
            }
            match self.leases.acquire(slot, &candidate, PIN_TTL).await {
                Ok(Some(_)) => return Some(candidate),
                // Someone pinned first: read theirs.
                Ok(None) => {}
                Err(_) => return Some(candidate),
            }
        }
        self.successor_where(key, skip)
    }
}

/// The roster was read within a few refresh periods.
fn fresh(live: &Live) -> bool {
    live.at.is_some_and(|at| at.elapsed() < REFRESH * 5)
}

/// FNV-1a over `key`, a separator and `id`: the same in every process.
fn rendezvous(key: &str, id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes().chain([0xff]).chain(id.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // FNV's low bits mix poorly for short inputs: finish with a multiply-shift.
    (h ^ (h >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9)
}

#[cfg(test)]
mod tests {
    use super::*;
    use presence_store::MemoryStore;

    #[tokio::test(start_paused = true)]
    async fn edges_join_leave_and_keep_their_dialogs() {
        let leases: Arc<dyn Leases> = Arc::new(MemoryStore::new());
        let roster = Roster::new(leases.clone());
        assert!(!roster.is_gone("e1"), "nothing known yet");
        assert_eq!(roster.successor("d", "x"), None);
        let ttl = Duration::from_secs(3);
        let mut stops = Vec::new();
        for id in ["e1", "e2", "e3"] {
            let (tx, rx) = watch::channel(false);
            tokio::spawn(Roster::new(leases.clone()).hold(id.into(), ttl, rx));
            stops.push(tx);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        roster.refresh().await;
        assert!(!roster.is_gone("e1") && !roster.is_gone("e3"));
        assert!(roster.is_gone("e9"));
        // Every dialog of e1 has one successor, the same each time, and
        // they spread over the others.
        let dialogs: Vec<String> = (0..200).map(|i| format!("dialog-{i}")).collect();
        let first: Vec<String> = dialogs
            .iter()
            .map(|d| roster.successor(d, "e1").expect("a successor"))
            .collect();
        assert!(first.iter().all(|s| s != "e1"));
        assert!(first.iter().any(|s| s == "e2") && first.iter().any(|s| s == "e3"));
        let again: Vec<String> = dialogs
            .iter()
            .map(|d| roster.successor(d, "e1").expect("a successor"))
            .collect();
        assert_eq!(first, again);
        // e1 stops (releases): gone at the next read; a successor that was
        // e2 stays e2 (only e1's share moves when e1 leaves).
        let before: Vec<Option<String>> = dialogs.iter().map(|d| roster.successor(d, "")).collect();
        let _ = stops[0].send(true);
        tokio::time::sleep(Duration::from_millis(10)).await;
        roster.refresh().await;
        assert!(roster.is_gone("e1"));
        for (d, b) in dialogs.iter().zip(before) {
            let now = roster.successor(d, "");
            if b.as_deref() != Some("e1") {
                assert_eq!(now, b, "{d} moved without its edge leaving");
            }
        }
        // A stale roster knows nothing.
        tokio::time::sleep(REFRESH * 6).await;
        assert!(!roster.is_gone("e1"));
    }

    #[tokio::test(start_paused = true)]
    async fn readers_that_disagree_on_the_live_set_agree_on_heirs() {
        let leases: Arc<dyn Leases> = Arc::new(MemoryStore::new());
        let ttl = Duration::from_secs(3);
        let mut stops = Vec::new();
        let mut join = |id: &str| {
            let (tx, rx) = watch::channel(false);
            tokio::spawn(Roster::new(leases.clone()).hold(id.into(), ttl, rx));
            stops.push(tx);
        };
        for id in ["e2", "e3"] {
            join(id);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        // `early` read before e4 joined, `late` after (a rollout: e1 left,
        // its replacement e4 came up between two readers' refreshes).
        let early = Roster::new(leases.clone());
        early.refresh().await;
        join("e4");
        tokio::time::sleep(Duration::from_millis(10)).await;
        let late = Roster::new(leases.clone());
        late.refresh().await;
        let gone = |e: &str| e == "e1";
        let dialogs: Vec<String> = (0..300).map(|i| format!("dialog-{i}")).collect();
        // Without pins the two would split some dialogs over two edges.
        assert!(
            dialogs
                .iter()
                .any(|d| early.successor(d, "e1") != late.successor(d, "e1")),
            "the test needs readers that disagree"
        );
        let mut heirs = Vec::new();
        for (n, d) in dialogs.iter().enumerate() {
            // Whichever reader comes first pins; the other follows.
            let (first, second) = if n % 2 == 0 {
                (&early, &late)
            } else {
                (&late, &early)
            };
            let a = first.heir(d, &gone).await.expect("an heir");
            let b = second.heir(d, &gone).await.expect("an heir");
            assert_eq!(a, b, "{d}: two heirs");
            assert_ne!(a, "e1");
            heirs.push(a);
        }
        assert!(heirs.iter().any(|h| h == "e2") && heirs.iter().any(|h| h == "e3"));
        // An heir found unreachable is replaced, again the same for both.
        let d = &dialogs[0];
        let old = heirs[0].clone();
        let skip = |e: &str| e == "e1" || e == old;
        let a = late.heir(d, &skip).await.expect("an heir");
        let b = early.heir(d, &skip).await.expect("an heir");
        assert_ne!(a, old);
        assert_eq!(a, b);
        // No live candidate: none.
        let all = |_: &str| true;
        assert_eq!(late.heir(d, &all).await, None);
    }
}

//! Non-INVITE server transactions (RFC 3261 §17.2.2): the table that
//! absorbs retransmissions, answering them from the kept answer. Time is an
//! input: each entry leaves on its own keep time.

use super::*;

pub(super) const TIMER_J: Duration = Duration::from_secs(32);

/// The largest answer kept for retransmissions; a larger one is not kept,
/// and a retransmission of its request is handled again (the shard owner
/// answers a re-sent command from memory), so the table's memory stays
/// bounded by its entry count times this.
pub(super) const MAX_CACHED_ANSWER: usize = 8 * 1024;

#[derive(Default)]
pub(super) struct TxnTable {
    pub(super) entries: HashMap<String, Option<Bytes>>,
    /// One queue per keep time ([`Keep`]), so each stays in deadline order
    /// and the sweep can stop at its first entry not yet due.
    pub(super) expiry: [VecDeque<(Instant, String)>; 3],
}

/// How long a server transaction's entry is kept.
#[derive(Clone, Copy)]
pub(super) enum Keep {
    /// While its request is handled: a guard, so that an entry whose handler
    /// dies still goes away.
    Guard,
    /// After the answer over UDP: Timer J, retransmissions are answered.
    Udp,
    /// After the answer over TCP: briefly (no retransmissions on TCP).
    Tcp,
}

impl Keep {
    pub(super) fn duration(self) -> Duration {
        match self {
            Keep::Guard => TIMER_F + TIMER_J,
            Keep::Udp => TIMER_J,
            Keep::Tcp => Duration::from_secs(1),
        }
    }
}

impl TxnTable {
    pub(super) fn expire_in(&mut self, keep: Keep, key: String) {
        self.expiry[keep as usize].push_back((Instant::now() + keep.duration(), key));
    }

    pub(super) fn sweep(&mut self, now: Instant) {
        for queue in &mut self.expiry {
            while queue.front().is_some_and(|(deadline, _)| *deadline <= now) {
                if let Some((_, key)) = queue.pop_front() {
                    self.entries.remove(&key);
                }
            }
        }
    }
}

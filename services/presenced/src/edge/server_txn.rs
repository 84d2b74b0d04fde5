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

/// What a request's arrival means for its transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Arrival {
    /// A new transaction: handle the request.
    New,
    /// A retransmission of one being handled: absorb it.
    InProgress,
    /// A retransmission of one answered: send this answer again.
    Answered(Bytes),
}

impl TxnTable {
    /// A request with transaction `key` arrived at `now`.
    pub(super) fn arrive(&mut self, key: &str, now: Instant) -> Arrival {
        match self.entries.get(key) {
            Some(Some(answer)) => Arrival::Answered(answer.clone()),
            Some(None) => Arrival::InProgress,
            None => {
                self.entries.insert(key.to_string(), None);
                self.expire_in(Keep::Guard, key.to_string(), now);
                Arrival::New
            }
        }
    }

    /// The transaction `key` was answered with `answer` at `now`: kept for
    /// `keep` to answer retransmissions, unless larger than
    /// [`MAX_CACHED_ANSWER`] (then forgotten: a retransmission is new).
    pub(super) fn answered(&mut self, key: String, answer: Bytes, keep: Keep, now: Instant) {
        if answer.len() <= MAX_CACHED_ANSWER {
            self.entries.insert(key.clone(), Some(answer));
            self.expire_in(keep, key, now);
        } else {
            self.entries.remove(&key);
        }
    }

    pub(super) fn expire_in(&mut self, keep: Keep, key: String, now: Instant) {
        self.expiry[keep as usize].push_back((now + keep.duration(), key));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The transaction life cycle as a table of (step, expected), with time
    /// as an input.
    #[test]
    fn arrivals_answers_and_expiry() {
        let t0 = Instant::now();
        let mut t = TxnTable::default();
        assert_eq!(t.arrive("a", t0), Arrival::New);
        assert_eq!(
            t.arrive("a", t0),
            Arrival::InProgress,
            "retransmitted while handled"
        );
        t.answered(
            "a".into(),
            Bytes::from_static(b"SIP/2.0 200 OK"),
            Keep::Udp,
            t0,
        );
        assert_eq!(
            t.arrive("a", t0 + Duration::from_secs(1)),
            Arrival::Answered(Bytes::from_static(b"SIP/2.0 200 OK"))
        );
        // A large answer is not kept: its retransmission is handled again.
        assert_eq!(t.arrive("big", t0), Arrival::New);
        t.answered(
            "big".into(),
            Bytes::from(vec![b'x'; MAX_CACHED_ANSWER + 1]),
            Keep::Udp,
            t0,
        );
        assert_eq!(t.arrive("big", t0), Arrival::New);
        // TCP answers go after about a second, UDP ones after Timer J.
        assert_eq!(t.arrive("tcp", t0), Arrival::New);
        t.answered("tcp".into(), Bytes::from_static(b"x"), Keep::Tcp, t0);
        t.sweep(t0 + Duration::from_secs(2));
        assert_eq!(t.arrive("tcp", t0 + Duration::from_secs(2)), Arrival::New);
        assert!(matches!(
            t.arrive("a", t0 + Duration::from_secs(2)),
            Arrival::Answered(_)
        ));
        t.sweep(t0 + TIMER_J + Duration::from_secs(1));
        assert_eq!(
            t.arrive("a", t0 + TIMER_J + Duration::from_secs(1)),
            Arrival::New
        );
    }
}

//! Per-dialog NOTIFY order: a dialog's NOTIFYs leave one at a time and in
//! CSeq order whichever notifier numbered them; a re-sent NOTIFY joins its
//! transaction; a SUBSCRIBE's NOTIFY waits for the SUBSCRIBE's answer.

use super::*;

/// A SUBSCRIBE being answered: removes its entry from `Edge::answering` and
/// releases the held NOTIFYs when dropped.
pub(super) struct Answering<'a> {
    pub(super) edge: &'a Edge,
    pub(super) call_id: String,
    pub(super) _done: watch::Sender<()>,
}

impl Drop for Answering<'_> {
    fn drop(&mut self) {
        self.edge
            .answering
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.call_id);
    }
}

/// The NOTIFYs of one dialog that pass through this edge: they leave one at
/// a time and in CSeq order, whichever notifier numbered them. A NOTIFY whose
/// CSeq is not above the last one sent, or below one already waiting, is
/// superseded (its CSeq was taken for an older or equal document) and not
/// sent. Kept for [`DIALOG_MEMORY`] after the last NOTIFY, so a late older
/// one is still recognised. Small on purpose (an edge may carry a million
/// dialogs): the key is a 128-bit hash, the wake-up channel exists only
/// while a NOTIFY waits.
pub(super) struct DialogOut {
    /// Highest CSeq sent (or being sent).
    pub(super) sent: u32,
    /// Highest CSeq waiting for the one in flight.
    pub(super) waiting: u32,
    pub(super) busy: bool,
    /// Bumped whenever the NOTIFY in flight completes; waiters watch it.
    pub(super) turn: Option<watch::Sender<u64>>,
    pub(super) last_used: Instant,
    /// The final code of the NOTIFY in flight (CSeq `sent`), for a re-send
    /// of the same NOTIFY to wait for instead of starting a second
    /// transaction; `Some(0)` when it got no answer.
    pub(super) outcome: Option<watch::Sender<Option<u16>>>,
    /// CSeq and final code (0: none came) of the last NOTIFY answered.
    pub(super) answered: (u32, u16),
}

/// What a NOTIFY arriving at its dialog does (see [`DialogOut`]).
pub(super) enum DialogStep<'a> {
    /// Its turn: send it.
    Go(DialogTurn<'a>),
    /// The same NOTIFY (same CSeq) is in flight: a re-send of it, which
    /// waits for that transaction's code.
    Join(watch::Receiver<Option<u16>>),
    /// The same NOTIFY was answered already: its code (0: none came).
    Answered(u16),
    /// A higher CSeq was sent or waits: not sent.
    Superseded,
}

/// How long the edge remembers a dialog's last NOTIFY CSeq after it was
/// answered: longer than a NOTIFY numbered by a notifier takes to get here.
pub(super) const DIALOG_MEMORY: Duration = Duration::from_secs(40);

/// What the edge reads of a NOTIFY's dialog, in one pass over its headers.
pub(super) struct NotifyDialog<'a> {
    pub(super) call_id: Option<&'a str>,
    /// Written the same way on every NOTIFY of a subscription (our tag is
    /// the subscription's id): no need to parse it.
    pub(super) from: &'a str,
    pub(super) cseq: Option<u32>,
}

pub(super) fn notify_dialog(headers: &rsip::Headers) -> NotifyDialog<'_> {
    let mut d = NotifyDialog {
        call_id: None,
        from: "",
        cseq: None,
    };
    for h in headers.iter() {
        let name = h.name();
        if name.eq_ignore_ascii_case("Call-ID") {
            d.call_id = Some(h.value().trim());
        } else if name.eq_ignore_ascii_case("From") {
            d.from = h.value().trim();
        } else if name.eq_ignore_ascii_case("CSeq") {
            d.cseq = h
                .value()
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok());
        }
    }
    d
}

/// A dialog's key in the table: two independent 64-bit hashes of its
/// Call-ID and From (a collision of both is beyond any real table size).
pub(super) fn dialog_key(call_id: &str, from: &str) -> u128 {
    use std::hash::{Hash, Hasher};
    let half = |salt: u8| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (salt, call_id, from).hash(&mut h);
        h.finish()
    };
    (u128::from(half(0)) << 64) | u128::from(half(1))
}

/// The turn of one NOTIFY on its dialog; ending it lets the next one go,
/// and tells re-sends of it the final code (`code`, 0 while none came).
pub(super) struct DialogTurn<'a> {
    pub(super) edge: &'a Edge,
    pub(super) key: u128,
    pub(super) code: u16,
}

impl Drop for DialogTurn<'_> {
    fn drop(&mut self) {
        let mut d = self.edge.dialogs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = d.get_mut(&self.key) {
            e.busy = false;
            e.last_used = Instant::now();
            e.answered = (e.sent, self.code);
            if let Some(o) = e.outcome.take() {
                let _ = o.send(Some(self.code));
            }
            if let Some(turn) = &e.turn {
                if turn.receiver_count() == 0 {
                    e.turn = None;
                } else {
                    turn.send_modify(|n| *n += 1);
                }
            }
        }
    }
}

impl Edge {
    /// Wait (briefly) while the SUBSCRIBE of this NOTIFY's dialog is still
    /// being answered here.
    pub(super) async fn after_subscribe_answered(&self, call_id: &str) {
        let pending = self
            .answering
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(call_id)
            .cloned();
        if let Some(mut rx) = pending {
            // Returns when the sender is dropped, i.e. the answer is out:
            // at the latest when `ask` gives up (its budget, then 503). A
            // shorter hold let a NOTIFY overtake a 200 whose first ask was
            // lost and asked again (seen in CI on a loaded machine).
            let hold = super::mapping::ASK_BUDGET + Duration::from_secs(1);
            let _ = tokio::time::timeout(hold, rx.changed()).await;
        }
    }

    /// Wait for this NOTIFY's turn on its dialog (see [`DialogOut`]);
    /// `Err(())` when it is superseded and must not be sent.
    pub(super) async fn dialog_turn(&self, call_id: &str, from: &str, cseq: u32) -> DialogStep<'_> {
        let key = dialog_key(call_id, from);
        let mut rx: Option<watch::Receiver<u64>> = None;
        loop {
            {
                let mut d = self.dialogs.lock().unwrap_or_else(|e| e.into_inner());
                let e = d.entry(key).or_insert_with(|| DialogOut {
                    sent: 0,
                    waiting: 0,
                    busy: false,
                    turn: None,
                    last_used: Instant::now(),
                    outcome: None,
                    answered: (0, 0),
                });
                if cseq == e.sent && cseq > 0 {
                    if e.busy {
                        let o = e.outcome.get_or_insert_with(|| watch::channel(None).0);
                        return DialogStep::Join(o.subscribe());
                    }
                    if e.answered.0 == cseq {
                        return DialogStep::Answered(e.answered.1);
                    }
                }
                if cseq <= e.sent || cseq < e.waiting {
                    return DialogStep::Superseded;
                }
                if !e.busy {
                    e.busy = true;
                    e.sent = cseq;
                    return DialogStep::Go(DialogTurn {
                        edge: self,
                        key,
                        code: 0,
                    });
                }
                e.waiting = e.waiting.max(cseq);
                if rx.is_none() {
                    // Subscribed under the lock: the turn's end cannot slip
                    // in between.
                    let turn = e.turn.get_or_insert_with(|| watch::channel(0).0);
                    rx = Some(turn.subscribe());
                }
            }
            // The channel closes only with its entry (swept): look again.
            if let Some(r) = rx.as_mut() {
                if r.changed().await.is_err() {
                    rx = None;
                }
            }
        }
    }
}

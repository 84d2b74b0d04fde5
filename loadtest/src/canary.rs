//! The correctness canary, sans I/O: what every watcher must end up with,
//! and what counts as a fault. Counters, not samples.
//!
//! Each published PIDF carries `<note>lt RUN SEQ</note>`, SEQ counting the
//! publisher's changes from 1. A watcher's dialog remembers the newest SEQ it
//! was shown and the NOTIFY CSeqs it processed:
//!
//! - a NOTIFY whose (CSeq, branch) was already seen is a retransmission:
//!   answered 200 again, not a new delivery;
//! - the same CSeq in a new transaction is a duplicate delivery;
//! - a CSeq below the newest seen is out of order, and so is a SEQ below the
//!   newest seen (coalescing is allowed: SEQs may be skipped, never go back);
//! - a change (PUBLISH 2xx'd with SEQ s) must be covered (a NOTIFY with SEQ
//!   ≥ s) on every dialog that was established before the 2xx, within the
//!   deadline; a dialog established later must show at least the SEQ acked
//!   when its SUBSCRIBE was answered;
//! - a `terminated` the tool did not ask for, or a refresh answered 481, is an
//!   unexpected termination;
//! - a MESSAGE answered 2xx must reach its target within the deadline; a
//!   non-2xx final or a timeout loses it; a second copy is a duplicate.

use serde::Serialize;
use std::collections::HashMap;

/// Fault counters; any non-zero field fails the run.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Counters {
    /// Changes that did not reach an established watcher within the deadline.
    pub missing_notify: u64,
    /// Subscriptions answered 2xx whose first NOTIFY (with the state acked
    /// when the 2xx came) did not come within the deadline.
    pub missing_initial_notify: u64,
    /// Un-SUBSCRIBEs answered 2xx without a `terminated` NOTIFY in time.
    pub missing_final_notify: u64,
    /// NOTIFY carrying an older document than one already seen on the dialog.
    pub out_of_order_seq: u64,
    /// NOTIFY whose CSeq is below one already processed on the dialog.
    pub out_of_order_cseq: u64,
    /// The same NOTIFY CSeq delivered again in a new transaction.
    pub duplicate_notify: u64,
    /// `Subscription-State: terminated` the tool did not ask for.
    pub unexpected_termination: u64,
    /// In-dialog SUBSCRIBE (refresh or un-SUBSCRIBE) answered 481.
    pub refresh_481: u64,
    /// NOTIFY for a dialog that had already ended.
    pub notify_after_termination: u64,
    /// NOTIFY whose document belongs to another presentity.
    pub wrong_presentity: u64,
    /// MESSAGEs 2xx'd but never received, or answered non-2xx, or timed out.
    pub lost_message: u64,
    /// A MESSAGE received twice (new transaction each time).
    pub duplicate_message: u64,
}

impl Counters {
    /// Every fault counter with what it counts: the one list of them.
    pub fn fields(&self) -> [(u64, &'static str); 12] {
        [
            (self.missing_notify, "missing NOTIFY (change not delivered)"),
            (self.missing_initial_notify, "missing initial NOTIFY"),
            (self.missing_final_notify, "missing final NOTIFY"),
            (self.out_of_order_seq, "out-of-order document"),
            (self.out_of_order_cseq, "out-of-order NOTIFY CSeq"),
            (self.duplicate_notify, "duplicate NOTIFY"),
            (self.unexpected_termination, "unexpected termination"),
            (self.refresh_481, "in-dialog SUBSCRIBE answered 481"),
            (self.notify_after_termination, "NOTIFY after termination"),
            (
                self.wrong_presentity,
                "NOTIFY with another presentity's document",
            ),
            (self.lost_message, "lost MESSAGE"),
            (self.duplicate_message, "duplicate MESSAGE"),
        ]
    }

    /// All faults counted so far.
    pub fn total(&self) -> u64 {
        self.fields().iter().map(|(n, _)| n).sum()
    }

    pub fn failures(&self) -> Vec<String> {
        self.fields()
            .into_iter()
            .filter(|(n, _)| *n > 0)
            .map(|(n, what)| format!("{n} {what}"))
            .collect()
    }
}

/// What a NOTIFY is, for one dialog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A new delivery, in order.
    New,
    /// A retransmission of a NOTIFY already processed: answer, do not count.
    Retransmission,
    /// The same CSeq again in a new transaction.
    Duplicate,
    /// A CSeq below the newest processed.
    CseqOutOfOrder,
    /// In CSeq order, but the document is older than one already shown.
    SeqOutOfOrder,
}

const RECENT: usize = 4;

/// A watcher's view of one subscription dialog.
#[derive(Debug, Clone, Default)]
pub struct Dialog {
    last_cseq: Option<u32>,
    /// (CSeq, branch hash) of the last few NOTIFYs processed.
    recent: [(u32, u64); RECENT],
    n_recent: usize,
    /// Newest document SEQ shown (0: none of ours yet).
    pub last_seq: u64,
    /// NOTIFYs processed as new.
    pub delivered: u32,
}

impl Dialog {
    /// Process a NOTIFY with `cseq`, a hash of its Via branch, and the SEQ
    /// read from its body (`None`: no document of ours, counts as 0).
    pub fn on_notify(&mut self, cseq: u32, branch: u64, seq: Option<u64>) -> Verdict {
        let seen = &self.recent[..self.n_recent.min(RECENT)];
        if seen.iter().any(|&(c, b)| c == cseq && b == branch) {
            return Verdict::Retransmission;
        }
        if let Some(last) = self.last_cseq {
            if cseq == last || seen.iter().any(|&(c, _)| c == cseq) {
                return Verdict::Duplicate;
            }
            if cseq < last {
                return Verdict::CseqOutOfOrder;
            }
        }
        self.last_cseq = Some(cseq);
        self.recent[self.n_recent % RECENT] = (cseq, branch);
        self.n_recent += 1;
        self.delivered += 1;
        let seq = seq.unwrap_or(0);
        if seq < self.last_seq {
            return Verdict::SeqOutOfOrder;
        }
        self.last_seq = seq;
        Verdict::New
    }

    /// The newest NOTIFY CSeq processed.
    pub fn last_cseq(&self) -> Option<u32> {
        self.last_cseq
    }

    /// Has the watcher been shown SEQ `seq` (or newer)?
    pub fn covers(&self, seq: u64) -> bool {
        self.delivered > 0 && self.last_seq >= seq
    }

    /// Count a verdict into the counters.
    pub fn count(v: Verdict, c: &mut Counters) {
        match v {
            Verdict::New | Verdict::Retransmission => {}
            Verdict::Duplicate => c.duplicate_notify += 1,
            Verdict::CseqOutOfOrder => c.out_of_order_cseq += 1,
            Verdict::SeqOutOfOrder => c.out_of_order_seq += 1,
        }
    }
}

/// FNV-1a of a branch, to remember transactions cheaply.
pub fn hash(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for x in b {
        h ^= u64::from(*x);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The note the tool puts into each published PIDF.
pub fn note(run: &str, seq: u64) -> String {
    format!("<note>lt {run} {seq}</note>")
}

/// A dialog-info document (RFC 4235) for change `seq` of `entity`: each
/// change is one step of a call, early (1), confirmed (2), terminated (0)
/// by `seq` mod 3, one call per three changes, as a PBX PUBLISHes it. The
/// SEQ travels in the dialog's remote tag (`lt RUN SEQ`), which the server
/// relays as published.
pub fn dialog_info(entity: &str, run: &str, seq: u64) -> String {
    let state = ["terminated", "early", "confirmed"][(seq % 3) as usize];
    let call = seq.div_ceil(3);
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<dialog-info xmlns=\"urn:ietf:params:xml:ns:dialog-info\" version=\"{seq}\" state=\"full\" entity=\"{entity}\"><dialog id=\"call{call}\" call-id=\"call{call}.{run}\" local-tag=\"pbx{call}\" remote-tag=\"lt {run} {seq}\" direction=\"recipient\"><state>{state}</state></dialog></dialog-info>"
    )
}

/// Read `(entity, SEQ)` of this run back from a PIDF body. The SEQ is `None`
/// when the document carries no note of this run.
pub fn read_body<'a>(body: &'a [u8], run: &str) -> (Option<&'a [u8]>, Option<u64>) {
    use crate::scan::{find, parse_u64};
    let entity = find(body, b"entity=\"").and_then(|i| {
        let rest = &body[i + 8..];
        rest.iter().position(|b| *b == b'"').map(|e| &rest[..e])
    });
    // The newest note of this run: a presentity has one publication, but a
    // UA that moved to another edge with a PUBLISH in flight may have left
    // an older one behind (its SIP-ETag answer was lost with the edge).
    let mut seq = None;
    let mut at = 0;
    // A PIDF note, or a dialog's remote tag ([`dialog_info`]).
    let marker = |rest: &[u8]| {
        [&b"<note>lt "[..], &b"remote-tag=\"lt "[..]]
            .iter()
            .filter_map(|m| find(rest, m).map(|i| i + m.len()))
            .min()
    };
    while let Some(start) = marker(&body[at..]) {
        let start = at + start;
        at = start;
        let note = body[start..]
            .strip_prefix(run.as_bytes())
            .and_then(|r| r.strip_prefix(b" "))
            .and_then(|r| {
                let n = r.iter().take_while(|b| b.is_ascii_digit()).count();
                parse_u64(&r[..n])
            });
        if let Some(q) = note {
            seq = Some(seq.map_or(q, |s: u64| s.max(q)));
        }
    }
    (entity, seq)
}

/// One MESSAGE the tool sent.
#[derive(Debug, Clone)]
struct Msg {
    to: u32,
    acked: bool,
    received: bool,
    /// Branch hashes of the copies received (to tell retransmissions).
    branches: [u64; 2],
}

/// What the engine should do after a MESSAGE event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsgNext {
    Nothing,
    /// Check again after the deadline.
    CheckLater,
}

/// MESSAGEs in flight or awaiting delivery.
#[derive(Debug, Default)]
pub struct Messages {
    live: HashMap<u64, Msg>,
}

impl Messages {
    pub fn sent(&mut self, id: u64, to: u32) {
        self.live.insert(
            id,
            Msg {
                to,
                acked: false,
                received: false,
                branches: [0; 2],
            },
        );
    }

    /// The target received MESSAGE `id` (as user `to`) in transaction `branch`.
    /// `false` if the message is not one of ours in flight (stray).
    pub fn received(&mut self, id: u64, to: u32, branch: u64, c: &mut Counters) -> bool {
        let Some(m) = self.live.get_mut(&id) else {
            return false;
        };
        if m.to != to {
            return false;
        }
        if m.received {
            if !m.branches.contains(&branch) {
                c.duplicate_message += 1;
                m.branches[1] = branch;
            }
        } else {
            m.received = true;
            m.branches[0] = branch;
        }
        true
    }

    /// The final answer to MESSAGE `id` came (`code`; 0 = timed out).
    pub fn final_answer(&mut self, id: u64, code: u16, c: &mut Counters) -> MsgNext {
        let Some(m) = self.live.get_mut(&id) else {
            return MsgNext::Nothing;
        };
        if (200..300).contains(&code) {
            m.acked = true;
            MsgNext::CheckLater
        } else {
            c.lost_message += 1;
            self.live.remove(&id);
            MsgNext::Nothing
        }
    }

    /// Stop tracking MESSAGE `id`: it was given up (its sender or target
    /// moved to another edge) and the sender knew it was not delivered.
    pub fn forget(&mut self, id: u64) {
        self.live.remove(&id);
    }

    /// The deadline after the 2xx passed.
    pub fn check(&mut self, id: u64, c: &mut Counters) {
        if let Some(m) = self.live.remove(&id) {
            if m.acked && !m.received {
                c.lost_message += 1;
            }
        }
    }

    /// Messages 2xx'd but not yet received.
    pub fn undelivered(&self) -> usize {
        self.live.values().filter(|m| !m.received).count()
    }

    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// Ids still tracked (for the final sweep).
    pub fn ids(&self) -> Vec<u64> {
        self.live.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(d: &mut Dialog, c: &mut Counters, seq: &[(u32, u64, Option<u64>)]) -> Vec<Verdict> {
        seq.iter()
            .map(|&(cseq, br, s)| {
                let v = d.on_notify(cseq, br, s);
                Dialog::count(v, c);
                v
            })
            .collect()
    }

    #[test]
    fn in_order_delivery_is_clean() {
        let (mut d, mut c) = (Dialog::default(), Counters::default());
        let v = feed(
            &mut d,
            &mut c,
            &[
                (1, 10, None),
                (2, 11, Some(1)),
                (3, 12, Some(2)),
                (4, 13, Some(3)),
            ],
        );
        assert!(v.iter().all(|v| *v == Verdict::New));
        assert_eq!(c, Counters::default());
        assert!(d.covers(3) && !d.covers(4));
        assert_eq!(d.delivered, 4);
    }

    #[test]
    fn coalescing_is_allowed_and_gaps_in_cseq_too() {
        let (mut d, mut c) = (Dialog::default(), Counters::default());
        feed(
            &mut d,
            &mut c,
            &[(1, 1, Some(1)), (2, 2, Some(5)), (7, 3, Some(9))],
        );
        assert_eq!(c, Counters::default());
        assert!(d.covers(6), "seq 9 covers every change up to 9");
        // A refresh NOTIFY repeats the same document: fine.
        feed(&mut d, &mut c, &[(8, 4, Some(9))]);
        assert_eq!(c, Counters::default());
    }

    #[test]
    fn out_of_order_documents_and_cseqs_are_counted() {
        let (mut d, mut c) = (Dialog::default(), Counters::default());
        let v = feed(
            &mut d,
            &mut c,
            &[
                (1, 1, Some(3)),
                (2, 2, Some(2)),
                (5, 3, Some(4)),
                (4, 4, Some(9)),
            ],
        );
        assert_eq!(
            v,
            vec![
                Verdict::New,
                Verdict::SeqOutOfOrder,
                Verdict::New,
                Verdict::CseqOutOfOrder
            ]
        );
        assert_eq!(c.out_of_order_seq, 1);
        assert_eq!(c.out_of_order_cseq, 1);
        assert!(!d.covers(9), "an out-of-order NOTIFY is not a delivery");
    }

    #[test]
    fn a_document_losing_our_note_is_older() {
        let (mut d, mut c) = (Dialog::default(), Counters::default());
        feed(&mut d, &mut c, &[(1, 1, Some(2)), (2, 2, None)]);
        assert_eq!(c.out_of_order_seq, 1);
    }

    #[test]
    fn retransmissions_are_not_deliveries_but_duplicates_are_faults() {
        let (mut d, mut c) = (Dialog::default(), Counters::default());
        let v = feed(
            &mut d,
            &mut c,
            &[
                (1, 100, Some(1)),
                (1, 100, Some(1)), // retransmission
                (2, 101, Some(2)),
                (1, 100, Some(1)), // late retransmission of an earlier one
                (2, 555, Some(2)), // same CSeq, new transaction
                (1, 556, Some(1)), // an old CSeq, new transaction
            ],
        );
        assert_eq!(
            v,
            vec![
                Verdict::New,
                Verdict::Retransmission,
                Verdict::New,
                Verdict::Retransmission,
                Verdict::Duplicate,
                Verdict::Duplicate
            ]
        );
        assert_eq!(c.duplicate_notify, 2);
        assert_eq!(d.delivered, 2);
    }

    #[test]
    fn missing_is_not_covered() {
        let (mut d, mut c) = (Dialog::default(), Counters::default());
        assert!(!d.covers(0), "no NOTIFY at all covers nothing");
        feed(&mut d, &mut c, &[(1, 1, Some(1))]);
        assert!(d.covers(1));
        assert!(!d.covers(2), "change 2 never arrived");
    }

    #[test]
    fn reads_run_and_seq_from_a_composed_document() {
        let body = br#"<?xml version="1.0" encoding="UTF-8"?>
<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:u000002@example.com">
<tuple id="lt"><status><basic>open</basic></status></tuple>
<note>lt r9 42</note>
</presence>"#;
        let (entity, seq) = read_body(body, "r9");
        assert_eq!(entity, Some(&b"sip:u000002@example.com"[..]));
        assert_eq!(seq, Some(42));
        assert_eq!(read_body(body, "other").1, None);
        assert_eq!(read_body(b"<presence/>", "r9"), (None, None));
        assert_eq!(read_body(b"<note>lt r9 ", "r9").1, None);
    }

    #[test]
    fn reads_run_and_seq_from_a_dialog_info_document() {
        let body = dialog_info("sip:u000002@example.com", "r9", 40);
        assert!(body.contains("<state>early</state>"), "{body}");
        let (entity, seq) = read_body(body.as_bytes(), "r9");
        assert_eq!(entity, Some(&b"sip:u000002@example.com"[..]));
        assert_eq!(seq, Some(40));
        assert!(dialog_info("sip:a@b", "r9", 41).contains("<state>confirmed</state>"));
        assert!(dialog_info("sip:a@b", "r9", 42).contains("<state>terminated</state>"));
        assert_eq!(read_body(body.as_bytes(), "other").1, None);
    }

    #[test]
    fn a_document_with_two_publications_shows_the_newest_note() {
        // An older publication left behind by a PUBLISH lost with an edge.
        let body = br#"<presence entity="sip:u1@example.com"><tuple id="a"/><note>lt r9 7</note><note>lt other 99</note><tuple id="b"/><note>lt r9 12</note></presence>"#;
        assert_eq!(read_body(body, "r9").1, Some(12));
        let body = br#"<presence><note>lt r9 12</note><note>lt r9 7</note></presence>"#;
        assert_eq!(read_body(body, "r9").1, Some(12));
    }

    #[test]
    fn messages_lost_duplicated_or_delivered() {
        let mut m = Messages::default();
        let mut c = Counters::default();
        // delivered before its 2xx (the usual order when relayed)
        m.sent(1, 7);
        assert!(m.received(1, 7, 11, &mut c));
        assert_eq!(m.final_answer(1, 200, &mut c), MsgNext::CheckLater);
        assert!(m.received(1, 7, 11, &mut c), "a retransmission");
        m.check(1, &mut c);
        assert_eq!(c, Counters::default());
        // 2xx'd, never received
        m.sent(2, 7);
        m.final_answer(2, 200, &mut c);
        m.check(2, &mut c);
        assert_eq!(c.lost_message, 1);
        // non-2xx final
        m.sent(3, 8);
        assert_eq!(m.final_answer(3, 480, &mut c), MsgNext::Nothing);
        assert_eq!(c.lost_message, 2);
        // timed out
        m.sent(4, 8);
        m.final_answer(4, 0, &mut c);
        assert_eq!(c.lost_message, 3);
        // duplicate copy in a new transaction
        m.sent(5, 9);
        m.received(5, 9, 1, &mut c);
        m.received(5, 9, 2, &mut c);
        assert_eq!(c.duplicate_message, 1);
        // to the wrong user: not ours
        m.sent(6, 9);
        assert!(!m.received(6, 3, 1, &mut c));
        assert!(!m.received(99, 3, 1, &mut c));
        assert_eq!(c.failures().len(), 2);
    }

    /// `fields` lists every counter (a new one must join the list), and
    /// `total` adds them up.
    #[test]
    fn fields_cover_every_counter() {
        let json = serde_json::to_value(Counters::default()).unwrap();
        let fields = Counters::default().fields();
        assert_eq!(fields.len(), json.as_object().unwrap().len());
        let mut labels: Vec<&str> = fields.iter().map(|(_, what)| *what).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), fields.len());
        let c = Counters {
            missing_notify: 1,
            duplicate_message: 2,
            ..Counters::default()
        };
        assert_eq!(c.total(), 3);
        assert_eq!(c.failures().len(), 2);
    }
}

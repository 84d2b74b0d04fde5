//! Typed events the edge sends to the shard owner, and its answers. The edge
//! turns SIP into these; the compositor decides; the edge maps the decision
//! back to SIP in one place.

use crate::model::{Binding, EndReason, Flow, Subscription, View};
use bytes::Bytes;

/// Which SIP transaction a command answers and how long its edge waits.
/// The shard owner answers a command whose `txn` it has answered recently
/// with that first answer (an edge's retry after a lost reply must not
/// apply a PUBLISH or SUBSCRIBE twice), and skips one dequeued after its
/// `deadline_ms` (the edge has answered the UA already).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    /// The SIP transaction key (empty: no deduplication).
    pub txn: String,
    /// Wall-clock ms after which nobody waits for the answer (0: none).
    pub deadline_ms: u64,
}

#[derive(Debug, Clone)]
pub struct ContactSpec {
    pub uri: String,
    pub params: String,
    /// Expires from the contact param or the header (already defaulted).
    pub expires: u32,
    pub methods: Option<Vec<String>>,
    pub q: Option<String>,
}

#[derive(Debug, Clone)]
pub enum RegisterAction {
    Query,
    RemoveAll,
    Update(Vec<ContactSpec>),
}

#[derive(Debug, Clone)]
pub struct RegisterCmd {
    pub aor: String,
    pub call_id: String,
    pub cseq: u32,
    pub flow: Flow,
    pub action: RegisterAction,
    pub origin: Origin,
}

#[derive(Debug, Clone)]
pub struct PublishCmd {
    pub aor: String,
    pub event: String,
    pub if_match: Option<String>,
    pub expires: u32,
    /// (content type, body) for initial and modify; `None` for refresh/remove.
    pub body: Option<(String, Bytes)>,
    pub origin: Origin,
}

#[derive(Debug, Clone)]
pub struct SubscribeCmd {
    pub aor: String,
    pub event: String,
    pub event_id: Option<String>,
    pub watcher: String,
    /// `Some(to_tag)` for an in-dialog SUBSCRIBE.
    pub dialog: Option<String>,
    pub call_id: String,
    pub remote_tag: String,
    pub cseq: u32,
    pub local_uri: String,
    pub remote_uri: String,
    pub remote_target: String,
    pub route_set: Vec<String>,
    pub flow: Flow,
    pub expires: u32,
    pub content_type: String,
    pub origin: Origin,
    /// RFC 6446 rate control asked for (not yet adjusted).
    pub rates: crate::Rates,
}

#[derive(Debug, Clone)]
pub enum Command {
    Register(RegisterCmd),
    Publish(PublishCmd),
    Subscribe(SubscribeCmd),
    /// Where to send a request (MESSAGE) for this AoR.
    Route {
        aor: String,
        method: String,
        /// The SIP transaction and the edge relaying it: a second edge
        /// asking for the same transaction is told `RelayedElsewhere`.
        origin: Origin,
        edge: String,
    },
    /// The notifier saw a 481 or a final timeout.
    EndSubscription {
        id: String,
        reason: EndReason,
    },
    SetHardState {
        aor: String,
        event: String,
        body: Option<Bytes>,
    },
    /// A member of resource list `list` changed (RFC 4662): its shard
    /// recomposes the list's document if somebody watches the list.
    RecomposeList {
        list: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Registered {
        bindings: Vec<Binding>,
        now_ms: u64,
    },
    Published {
        etag: String,
        expires: u32,
    },
    Subscribed {
        id: String,
        expires: u32,
        view: View,
    },
    Routes(Vec<Binding>),
    Done,
    /// The shard owner said no, and why; the edge chooses the SIP answer
    /// (one function, `edge::answers`).
    Refused(Refusal),
}

impl Reply {
    pub fn refused(why: Refusal) -> Reply {
        Reply::Refused(why)
    }
}

/// Why the shard owner refused a command. It says *why* only: which SIP
/// status, reason phrase and headers that becomes is the edge's choice, made
/// in one place. Mirrored by `Refused.Why` in proto/presence.proto.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// SIP-If-Match names no live publication (RFC 3903 §6: 412).
    UnknownEtag,
    /// An in-dialog request for a subscription that does not exist, or not
    /// for this watcher, resource and event (RFC 6665: 481).
    NoSuchSubscription,
    /// A CSeq not above the last one of the same dialog or registration
    /// (RFC 3261 §12.2.2 / §10.3: 500).
    OutOfOrderCSeq,
    /// The presentity's watcher policy rejects this watcher (403).
    PolicyRejected,
    /// An initial PUBLISH without a body (RFC 3903 §6: 400).
    MissingBody,
    /// Nobody is registered under the AoR, or nobody who takes the method (480).
    NotRegistered,
    /// The AoR is unknown here (404).
    UnknownUser,
    /// A per-resource or per-watcher limit is reached (403).
    TooMany { what: Quota, limit: u32 },
    /// The resource's publications together would compose into a document
    /// larger than `limit` bytes, more than a NOTIFY can carry (413).
    DocumentTooLarge { limit: u32 },
    /// The store failed; trying later may work (500 with Retry-After).
    StoreFailed,
    /// The shard owner is unreachable or the command came too late (503
    /// with Retry-After).
    Unavailable,
    /// This MESSAGE transaction is being relayed by another edge (the UA's
    /// retransmission reached a second edge): the second one must not relay
    /// it again; it answers 100 Trying and the first edge's answer ends it.
    RelayedElsewhere,
}

/// What a [`Refusal::TooMany`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quota {
    /// Live publications of one AoR and event.
    Publications,
    /// Contacts bound to one AoR.
    Contacts,
    /// Subscriptions of one watcher.
    WatcherSubscriptions,
    /// Subscriptions to one resource and event.
    Watchers,
}

/// Work for the notifiers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifyJob {
    /// The document of (aor, event) changed to `version`: tell every watcher.
    Changed {
        aor: String,
        event: String,
        version: u64,
        at_ms: u64,
    },
    /// A share of a large fan-out: the change of (aor, event) to `version`,
    /// for these subscriptions only. A notifier that takes a `Changed` with
    /// many watchers keeps one batch and queues the others as `ChangedFor`,
    /// so that several notifiers share the fan-out.
    ChangedFor {
        aor: String,
        event: String,
        version: u64,
        at_ms: u64,
        ids: Vec<String>,
    },
    /// A subscription was created or refreshed: send it the current state.
    Refresh { id: String },
    /// A subscription ended: final NOTIFY (the record is already gone).
    Terminated {
        sub: Box<Subscription>,
        reason: EndReason,
    },
    /// A member of resource list `list` changed: the list's shard (another
    /// one, in general) is asked to recompose the list
    /// ([`Command::RecomposeList`]). Committed with the member's change, so
    /// a crash loses no list update.
    ListMember { list: String },
}

/// A request the edge should send (NOTIFY from the notifier, relayed MESSAGE).
#[derive(Debug, Clone)]
pub struct OutRequest {
    pub flow: Flow,
    pub method: String,
    pub uri: String,
    /// Everything but our Via (and Content-Length).
    pub headers: presence_sip::rsip::Headers,
    pub body: Bytes,
    /// Wall-clock ms after which nobody waits for the outcome (0: none):
    /// the edge's transaction ends then at the latest. A re-send of the
    /// same request carries the same deadline.
    pub deadline_ms: u64,
}

/// The final answer to an [`OutRequest`]: 408 with `timed_out` when none came.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub code: u16,
    pub reason: String,
    /// The response's headers without our Via.
    pub headers: presence_sip::rsip::Headers,
    pub body: Bytes,
    pub timed_out: bool,
    /// Not sent: the edge already sent (or is about to send) a NOTIFY of the
    /// same dialog with a higher CSeq, i.e. an equal or newer document.
    pub superseded: bool,
}

impl Outcome {
    /// The outcome of a transaction known only by its final code (0: no
    /// answer came): what a re-send of a NOTIFY learns.
    pub fn of_code(code: u16) -> Outcome {
        if code == 0 {
            return Outcome::timeout();
        }
        Outcome {
            code,
            reason: String::new(),
            headers: presence_sip::rsip::Headers::default(),
            body: Bytes::new(),
            timed_out: false,
            superseded: false,
        }
    }

    /// No final answer came (Timer F, or the request could not be sent).
    pub fn timeout() -> Outcome {
        Outcome {
            code: 408,
            reason: "Request Timeout".into(),
            headers: presence_sip::rsip::Headers::default(),
            body: Bytes::new(),
            timed_out: true,
            superseded: false,
        }
    }

    /// Not sent: see [`Outcome::superseded`].
    pub fn superseded() -> Outcome {
        Outcome {
            code: 0,
            reason: "Superseded".into(),
            headers: presence_sip::rsip::Headers::default(),
            body: Bytes::new(),
            timed_out: false,
            superseded: true,
        }
    }
}

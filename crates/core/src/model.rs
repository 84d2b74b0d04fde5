//! The records the compositor keeps and the notifier reads.

use bytes::Bytes;
use std::net::SocketAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    /// SIP over TLS (RFC 3261 §26): a stream, like TCP.
    Tls,
    /// SIP over WebSocket (RFC 7118): one SIP message per WebSocket
    /// message, over a connection the client opened.
    Ws,
    /// SIP over secure WebSocket (RFC 7118, WebSocket over TLS).
    Wss,
}

impl Transport {
    pub fn as_str(&self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
            Transport::Ws => "WS",
            Transport::Wss => "WSS",
        }
    }

    /// A connection-oriented transport (messages framed by
    /// Content-Length, answers over the same connection).
    pub fn is_stream(&self) -> bool {
        !matches!(self, Transport::Udp)
    }
}

/// Where a UA can be reached: the transport and source address it used, and
/// which edge (and TCP connection) holds the flow (RFC 5626 style).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    pub transport: Transport,
    pub remote: SocketAddr,
    pub local: SocketAddr,
    pub edge: String,
    /// Connection id on that edge (0 for UDP).
    pub conn: u64,
    /// The edge's seal over transport and remote address (see
    /// [`crate::seal`]): edges send bus requests only through sealed flows.
    /// `None` in records written before seals existed.
    pub seal: Option<crate::seal::Seal>,
}

/// One soft-state publication (RFC 3903).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    pub etag: String,
    pub aor: String,
    pub event: String,
    pub expires_at_ms: u64,
    pub content_type: String,
    pub body: Bytes,
    /// When its body last changed; newest wins in composition.
    pub modified_ms: u64,
    /// Tie-breaker for equal `modified_ms`, increasing per change.
    pub seq: u64,
}

/// One registered contact of an AoR (RFC 3261 §10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub aor: String,
    /// The contact URI as the UA wrote it.
    pub uri: String,
    /// Contact header parameters other than `expires` (e.g. `methods`, `q`,
    /// `+sip.instance`), as `;name=value` text, kept for the 200 listing.
    pub params: String,
    pub expires_at_ms: u64,
    pub call_id: String,
    pub cseq: u32,
    pub flow: Flow,
    /// `methods` parameter, upper-cased, if present.
    pub methods: Option<Vec<String>>,
    pub q: Option<String>,
}

impl Binding {
    pub fn accepts(&self, method: &str) -> bool {
        match &self.methods {
            Some(list) => list.iter().any(|m| m.eq_ignore_ascii_case(method)),
            None => true,
        }
    }
}

/// What a watcher is allowed to see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// The composed document.
    Full,
    /// Polite blocking: a neutral closed document, whatever the state.
    Neutral,
    /// Held until the presentity decides (a `confirm` rule): the watcher's
    /// NOTIFYs say `Subscription-State: pending` and carry no state.
    Pending,
}

/// One subscription dialog (RFC 6665), seen from the notifier side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// Our To-tag in the dialog; unique, so also the record's key.
    pub id: String,
    pub aor: String,
    pub event: String,
    pub event_id: Option<String>,
    /// Canonical AoR of the watcher (authenticated identity if Digest is on).
    pub watcher: String,
    pub call_id: String,
    pub remote_tag: String,
    /// Our URI (the SUBSCRIBE's To, without tag), as a header value.
    pub local_uri: String,
    /// The watcher's URI (the SUBSCRIBE's From, without tag), as a header value.
    pub remote_uri: String,
    /// The watcher's Contact URI: the Request-URI of our NOTIFYs.
    pub remote_target: String,
    /// Record-Route of the SUBSCRIBE, in order, for the NOTIFY's Route.
    pub route_set: Vec<String>,
    pub flow: Flow,
    pub remote_cseq: u32,
    pub expires_at_ms: u64,
    /// Content type the NOTIFY bodies use.
    pub content_type: String,
    pub view: View,
}

/// The composed state of one AoR for one event package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    pub aor: String,
    pub event: String,
    pub version: u64,
    pub content_type: String,
    pub body: Bytes,
}

/// Why a subscription ended (RFC 6665 §4.1.3 reasons).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// The watcher sent Expires: 0 (we answer `timeout`, like RFC 3265 UAs expect).
    Unsubscribed,
    Timeout,
    Deactivated,
    Rejected,
    Noresource,
    /// A 481 or a final transaction timeout from the watcher: no NOTIFY is owed.
    Gone,
}

impl EndReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            EndReason::Unsubscribed | EndReason::Timeout => "timeout",
            EndReason::Deactivated => "deactivated",
            EndReason::Rejected => "rejected",
            EndReason::Noresource => "noresource",
            EndReason::Gone => "deactivated",
        }
    }
}

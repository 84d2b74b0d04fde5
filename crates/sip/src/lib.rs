//! Sans-I/O SIP codec for the presence cluster.
//!
//! What it is: the one place where bytes become SIP messages and SIP messages
//! become bytes. It owns framing (header end, `Content-Length` / `l:`, message
//! size cap, stream vs datagram rules of RFC 3261 §18.3), parses into rsip's
//! message model (`rsip::Uri`, `rsip::Headers`, from the `sip` module of
//! `rsipstack`), normalises compact header names, unfolds continuation lines,
//! and offers typed accessors for the headers the presence services use
//! (Event, Expires, SIP-ETag, Subscription-State, Accept, Contact, Via, …).
//!
//! What it is not: it opens no socket and keeps no state. Transactions,
//! dialogs and everything presence-specific live in other crates.
//!
//! Every input either parses, or yields a [`ParseError`] that says whether the
//! message can still be answered (and with which status), or must be dropped.
//! What parses keeps to [`MAX_VIA_ELEMENTS`] and [`MAX_HEADER_FIELDS`] and
//! holds no control character (HTAB aside) in a header name or value, so an
//! answer built from it is at most its size plus a constant and cannot carry
//! an injected header line.
//! No input panics (see the property tests in `tests/`).
#![forbid(unsafe_code)]

pub mod encode;
pub mod frame;
pub mod headers;
pub mod message;
pub mod parse;
pub mod peek;

pub use encode::{encode_request, encode_response, ResponseBuilder};
pub use frame::{frame_stream, FrameError, StreamFrame};
pub use headers::{
    split_list, ContactValue, EventHeader, MediaType, NameAddr, SubscriptionState, Via,
};
pub use message::{HeaderAccess, Message, Method, Request, Response};
pub use parse::{parse, parse_uri, ParseError, TransportKind, MAX_HEADER_FIELDS, MAX_VIA_ELEMENTS};
pub use peek::{peek_response, ResponsePeek};

/// Re-export of the rsip message model we build on.
pub use rsipstack::sip as rsip;

/// Default cap on the size of one SIP message (bytes).
pub const DEFAULT_MAX_MESSAGE: usize = 64 * 1024;

//! The one place where a refusal becomes a SIP answer: the shard owner says
//! *why* ([`Refusal`]), and so does the edge for what it refuses on its own
//! ([`Rejection`]: malformed requests, foreign domains, identity, events and
//! media types, load); both ask here *what to answer* (status, reason
//! phrase, extra headers). A new refusal is one new arm here; the table
//! tests below list every refusal with its answer.

use presence_core::commands::{Quota, Refusal};
use std::borrow::Cow;

/// A SIP error answer: status, reason phrase, extra headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub code: u16,
    pub reason: Cow<'static, str>,
    pub headers: Vec<(&'static str, String)>,
}

impl Answer {
    fn new(code: u16, reason: &'static str) -> Answer {
        Answer {
            code,
            reason: Cow::Borrowed(reason),
            headers: Vec::new(),
        }
    }

    fn with(mut self, name: &'static str, value: impl Into<String>) -> Answer {
        self.headers.push((name, value.into()));
        self
    }
}

/// Seconds a UA is asked to wait before trying again after a transient
/// failure (store or shard owner unavailable).
pub const RETRY_AFTER_SECS: u32 = 5;

/// What the edge refuses without asking a shard owner.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rejection {
    /// 400: the request lacks something or has it malformed (the phrase
    /// says what: "Malformed Expires", "Missing Contact", …).
    Malformed(&'static str),
    /// The AoR's domain is not ours: 403 from the registrar (RFC 3261
    /// §10.3 step 1), 404 for the other methods.
    ForeignDomain { registrar: bool },
    /// 404: no such resource (a MESSAGE's Request-URI names no AoR).
    NotFound,
    /// 403: the authenticated user acts for another AoR.
    NotYourAor,
    /// 403: a MESSAGE whose From is not the authenticated identity.
    NotYourIdentity,
    /// 423 with Min-Expires.
    IntervalTooBrief { min: u32 },
    /// 489 with Allow-Events: no Event header, or a package not served.
    BadEvent { allow_events: String },
    /// 415 with Accept: a publication of a type the package does not take.
    UnsupportedMediaType { accept: String },
    /// 406 with Accept: no notification type the subscriber accepts.
    NotAcceptable { accept: String },
    /// 420 with Unsupported: a Require we do not support.
    BadExtension { unsupported: String },
    /// 421 with `Require: eventlist`: a SUBSCRIBE to a resource list
    /// without `Supported: eventlist` (RFC 4662 §5.2).
    EventlistRequired,
    /// 501 with Allow: an extension method.
    NotImplemented { allow: &'static str },
    /// 405 with Allow: a method we know and do not serve.
    MethodNotAllowed { allow: &'static str },
    /// 481: a NOTIFY (we are no subscriber) or a CANCEL without its request.
    NoSuchDialog,
    /// 483: Max-Forwards reached 0.
    TooManyHops,
    /// 480: nobody to deliver to (no registered flow took it).
    Unreachable,
    /// 408: nobody answered in time.
    Timeout,
    /// 503 with Retry-After: lame duck (OPTIONS while draining).
    Draining,
    /// 503 with Retry-After: more NOTIFYs/MESSAGEs in flight than the edge
    /// can see through (`--max-notify-backlog`).
    Overloaded,
}

/// The SIP answer to a refusal of the edge itself.
pub fn for_rejection(r: &Rejection) -> Answer {
    let retry = || RETRY_AFTER_SECS.to_string();
    match r {
        Rejection::Malformed(what) => Answer {
            code: 400,
            reason: Cow::Borrowed(what),
            headers: Vec::new(),
        },
        Rejection::ForeignDomain { registrar: true } => Answer::new(403, "Domain Not Served Here"),
        Rejection::ForeignDomain { registrar: false } => {
            Answer::new(404, "Not Found (Domain Not Served Here)")
        }
        Rejection::NotFound => Answer::new(404, "Not Found"),
        Rejection::NotYourAor => Answer::new(403, "Forbidden (Not Your AoR)"),
        Rejection::NotYourIdentity => Answer::new(403, "Forbidden (From Is Not Your Identity)"),
        Rejection::IntervalTooBrief { min } => {
            Answer::new(423, "Interval Too Brief").with("Min-Expires", min.to_string())
        }
        Rejection::BadEvent { allow_events } => {
            Answer::new(489, "Bad Event").with("Allow-Events", allow_events.clone())
        }
        Rejection::UnsupportedMediaType { accept } => {
            Answer::new(415, "Unsupported Media Type").with("Accept", accept.clone())
        }
        Rejection::NotAcceptable { accept } => {
            Answer::new(406, "Not Acceptable").with("Accept", accept.clone())
        }
        Rejection::BadExtension { unsupported } => {
            Answer::new(420, "Bad Extension").with("Unsupported", unsupported.clone())
        }
        Rejection::EventlistRequired => {
            Answer::new(421, "Extension Required").with("Require", "eventlist")
        }
        Rejection::NotImplemented { allow } => {
            Answer::new(501, "Not Implemented").with("Allow", *allow)
        }
        Rejection::MethodNotAllowed { allow } => {
            Answer::new(405, "Method Not Allowed").with("Allow", *allow)
        }
        Rejection::NoSuchDialog => Answer::new(481, "Call/Transaction Does Not Exist"),
        Rejection::TooManyHops => Answer::new(483, "Too Many Hops"),
        Rejection::Unreachable => Answer::new(480, "Temporarily Unavailable"),
        Rejection::Timeout => Answer::new(408, "Request Timeout"),
        Rejection::Draining => {
            Answer::new(503, "Service Unavailable (Draining)").with("Retry-After", retry())
        }
        Rejection::Overloaded => {
            Answer::new(503, "Service Unavailable (Overloaded)").with("Retry-After", retry())
        }
    }
}

/// The SIP answer to a refusal of the shard owner.
pub fn for_refusal(r: &Refusal) -> Answer {
    match r {
        Refusal::UnknownEtag => Answer::new(412, "Conditional Request Failed"),
        Refusal::NoSuchSubscription => Answer::new(481, "Subscription Does Not Exist"),
        Refusal::OutOfOrderCSeq => Answer::new(500, "Out of Order CSeq"),
        Refusal::PolicyRejected => Answer::new(403, "Forbidden"),
        Refusal::MissingBody => Answer::new(400, "Missing Body"),
        Refusal::NotRegistered => Answer::new(480, "Temporarily Unavailable"),
        Refusal::UnknownUser => Answer::new(404, "Not Found"),
        Refusal::TooMany { what, limit } => Answer {
            code: 403,
            reason: Cow::Owned(format!(
                "Forbidden (Too Many {}, Limit {limit})",
                match what {
                    Quota::Publications => "Publications",
                    Quota::Contacts => "Contacts",
                    Quota::WatcherSubscriptions => "Subscriptions",
                    Quota::Watchers => "Watchers",
                }
            )),
            headers: Vec::new(),
        },
        Refusal::DocumentTooLarge { limit } => Answer {
            code: 413,
            reason: Cow::Owned(format!(
                "Request Entity Too Large (Composed Document Over {limit} Bytes)"
            )),
            headers: Vec::new(),
        },
        Refusal::StoreFailed => Answer::new(500, "Server Internal Error")
            .with("Retry-After", RETRY_AFTER_SECS.to_string()),
        Refusal::Unavailable => Answer::new(503, "Service Unavailable")
            .with("Retry-After", RETRY_AFTER_SECS.to_string()),
        // Another edge relays it and will answer; this one only says it
        // has the request (a provisional answer: the UA keeps waiting).
        Refusal::RelayedElsewhere => Answer::new(100, "Trying"),
        // `Refusal` is non_exhaustive: one added to core before it has an
        // answer here is a server error, and is logged.
        other => {
            tracing::error!(refusal = ?other, "a refusal without a SIP answer");
            Answer::new(500, "Server Internal Error")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_has_its_answer() {
        let table: &[(Refusal, u16, &str)] = &[
            (Refusal::UnknownEtag, 412, "Conditional Request Failed"),
            (
                Refusal::NoSuchSubscription,
                481,
                "Subscription Does Not Exist",
            ),
            (Refusal::OutOfOrderCSeq, 500, "Out of Order CSeq"),
            (Refusal::PolicyRejected, 403, "Forbidden"),
            (Refusal::MissingBody, 400, "Missing Body"),
            (Refusal::NotRegistered, 480, "Temporarily Unavailable"),
            (Refusal::UnknownUser, 404, "Not Found"),
            (
                Refusal::TooMany {
                    what: Quota::Contacts,
                    limit: 10,
                },
                403,
                "Forbidden (Too Many Contacts, Limit 10)",
            ),
            (
                Refusal::DocumentTooLarge { limit: 60_000 },
                413,
                "Request Entity Too Large (Composed Document Over 60000 Bytes)",
            ),
            (Refusal::StoreFailed, 500, "Server Internal Error"),
            (Refusal::Unavailable, 503, "Service Unavailable"),
            (Refusal::RelayedElsewhere, 100, "Trying"),
        ];
        for (r, code, reason) in table {
            let a = for_refusal(r);
            assert_eq!((a.code, a.reason.as_ref()), (*code, *reason), "{r:?}");
        }
        for r in [Refusal::StoreFailed, Refusal::Unavailable] {
            assert_eq!(for_refusal(&r).headers, [("Retry-After", "5".to_string())]);
        }
    }

    #[test]
    fn every_rejection_has_its_answer() {
        type Row = (
            Rejection,
            u16,
            &'static str,
            Option<(&'static str, &'static str)>,
        );
        let s = |v: &str| v.to_string();
        let table: Vec<Row> = vec![
            (
                Rejection::Malformed("Malformed Expires"),
                400,
                "Malformed Expires",
                None,
            ),
            (
                Rejection::ForeignDomain { registrar: true },
                403,
                "Domain Not Served Here",
                None,
            ),
            (
                Rejection::ForeignDomain { registrar: false },
                404,
                "Not Found (Domain Not Served Here)",
                None,
            ),
            (Rejection::NotFound, 404, "Not Found", None),
            (Rejection::NotYourAor, 403, "Forbidden (Not Your AoR)", None),
            (
                Rejection::NotYourIdentity,
                403,
                "Forbidden (From Is Not Your Identity)",
                None,
            ),
            (
                Rejection::IntervalTooBrief { min: 60 },
                423,
                "Interval Too Brief",
                Some(("Min-Expires", "60")),
            ),
            (
                Rejection::BadEvent {
                    allow_events: s("presence"),
                },
                489,
                "Bad Event",
                Some(("Allow-Events", "presence")),
            ),
            (
                Rejection::UnsupportedMediaType {
                    accept: s("application/pidf+xml"),
                },
                415,
                "Unsupported Media Type",
                Some(("Accept", "application/pidf+xml")),
            ),
            (
                Rejection::NotAcceptable {
                    accept: s("application/pidf+xml"),
                },
                406,
                "Not Acceptable",
                Some(("Accept", "application/pidf+xml")),
            ),
            (
                Rejection::BadExtension {
                    unsupported: s("100rel"),
                },
                420,
                "Bad Extension",
                Some(("Unsupported", "100rel")),
            ),
            (
                Rejection::EventlistRequired,
                421,
                "Extension Required",
                Some(("Require", "eventlist")),
            ),
            (
                Rejection::NotImplemented { allow: "OPTIONS" },
                501,
                "Not Implemented",
                Some(("Allow", "OPTIONS")),
            ),
            (
                Rejection::MethodNotAllowed { allow: "OPTIONS" },
                405,
                "Method Not Allowed",
                Some(("Allow", "OPTIONS")),
            ),
            (
                Rejection::NoSuchDialog,
                481,
                "Call/Transaction Does Not Exist",
                None,
            ),
            (Rejection::TooManyHops, 483, "Too Many Hops", None),
            (Rejection::Unreachable, 480, "Temporarily Unavailable", None),
            (Rejection::Timeout, 408, "Request Timeout", None),
            (
                Rejection::Draining,
                503,
                "Service Unavailable (Draining)",
                Some(("Retry-After", "5")),
            ),
            (
                Rejection::Overloaded,
                503,
                "Service Unavailable (Overloaded)",
                Some(("Retry-After", "5")),
            ),
        ];
        for (r, code, reason, header) in table {
            let a = for_rejection(&r);
            assert_eq!((a.code, a.reason.as_ref()), (code, reason), "{r:?}");
            let want: Vec<(&str, String)> = header.map(|(n, v)| (n, s(v))).into_iter().collect();
            assert_eq!(a.headers, want, "{r:?}");
        }
    }
}

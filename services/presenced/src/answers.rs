//! The one place where a refusal becomes a SIP answer: the shard owner says
//! *why* ([`Refusal`]), the edge asks here *what to answer* (status, reason
//! phrase, extra headers). A new refusal is one new arm here; the table test
//! below lists every refusal with its answer.

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
        ];
        for (r, code, reason) in table {
            let a = for_refusal(r);
            assert_eq!((a.code, a.reason.as_ref()), (*code, *reason), "{r:?}");
        }
        for r in [Refusal::StoreFailed, Refusal::Unavailable] {
            assert_eq!(for_refusal(&r).headers, [("Retry-After", "5".to_string())]);
        }
    }
}

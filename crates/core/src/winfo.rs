//! watcherinfo documents (RFC 3857, RFC 3858), the `presence.winfo`
//! package: a presentity watches who watches it. The document is made from
//! the subscriptions to the presentity's presence: each watcher with its
//! status (`pending` while a `confirm` rule holds it, `active` once
//! accepted, `terminated` when it has just left) and the event that put it
//! there (`subscribe`, `approved`, `timeout`, `rejected`, ...). A watcher
//! that left is shown once, then dropped by the next change. The root's
//! `version` counts one subscription's NOTIFYs ([`stamp`]).

use crate::model::{EndReason, Subscription, View};
use crate::pidf::{self, parse_raw, Node, PidfError};
use crate::reginfo::stable_id;

pub const WINFO_NS: &str = "urn:ietf:params:xml:ns:watcherinfo";

/// One `<watcher>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watcher {
    /// Stable for one subscription (not its dialog identifiers).
    pub id: String,
    /// The watcher's AoR.
    pub uri: String,
    /// `pending`, `active`, `waiting` or `terminated`.
    pub status: String,
    /// What put it in that status (RFC 3857 §5.1).
    pub event: String,
}

/// One `<watcher-list>`: a resource, a package and its watchers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatcherList {
    pub resource: String,
    pub package: String,
    pub watchers: Vec<Watcher>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WinfoError {
    #[error("root element is not a <watcherinfo> in {WINFO_NS}")]
    NotWatcherInfo,
    #[error("a <watcher> without an id, a status or an event")]
    Watcher,
    #[error("{0}")]
    Xml(String),
}

/// The event a subscription's end shows (RFC 3857 §5.1's names).
fn ended_event(reason: EndReason) -> &'static str {
    match reason {
        EndReason::Rejected => "rejected",
        EndReason::Deactivated => "deactivated",
        EndReason::Noresource => "noresource",
        EndReason::Unsubscribed | EndReason::Timeout | EndReason::Gone => "timeout",
    }
}

/// The watchers of a resource from its live subscriptions `subs`, with
/// `previous` the watchers of the last document and `ended` the
/// subscription that has just left (its id and why). A new subscription
/// shows `subscribe`; one that went from pending to active `approved`; one
/// whose status did not change keeps its last event; one that left is
/// `terminated` (the reason's event, `timeout` if unknown); one terminated
/// in `previous` is not shown again.
pub fn watchers(
    subs: &[Subscription],
    previous: &[Watcher],
    ended: Option<(&str, EndReason)>,
) -> Vec<Watcher> {
    let mut out: Vec<Watcher> = subs
        .iter()
        .map(|s| {
            let id = stable_id("w", &s.id);
            let status = if s.view == View::Pending {
                "pending"
            } else {
                "active"
            };
            let event = match previous.iter().find(|w| w.id == id) {
                Some(w) if w.status == status => w.event.clone(),
                Some(w) if w.status == "pending" => "approved".into(),
                _ => "subscribe".into(),
            };
            Watcher {
                id,
                uri: s.watcher.clone(),
                status: status.into(),
                event,
            }
        })
        .collect();
    for w in previous.iter().filter(|w| w.status != "terminated") {
        if out.iter().any(|o| o.id == w.id) {
            continue;
        }
        let event = ended
            .filter(|(id, _)| stable_id("w", id) == w.id)
            .map_or("timeout", |(_, r)| ended_event(r));
        out.push(Watcher {
            status: "terminated".into(),
            event: event.into(),
            ..w.clone()
        });
    }
    out
}

/// One full-state document of `resource`'s watchers of `package`.
/// `version` is 0: [`stamp`] sets each NOTIFY's.
pub fn compose(resource: &str, package: &str, watchers: &[Watcher]) -> String {
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    out += &format!("<watcherinfo xmlns=\"{WINFO_NS}\" version=\"0\" state=\"full\">\n");
    out += &format!(
        " <watcher-list resource=\"{}\" package=\"{}\"",
        pidf::escape(resource),
        pidf::escape(package)
    );
    if watchers.is_empty() {
        out += "/>\n";
    } else {
        out += ">\n";
        for w in watchers {
            out += &format!(
                "  <watcher id=\"{}\" status=\"{}\" event=\"{}\">{}</watcher>\n",
                w.id,
                w.status,
                w.event,
                pidf::escape(&w.uri)
            );
        }
        out += " </watcher-list>\n";
    }
    out += "</watcherinfo>\n";
    out
}

/// `body` (a document [`compose`] made) with the root's `version` set.
pub fn stamp(body: &[u8], version: u32) -> Option<Vec<u8>> {
    pidf::stamp_version(body, b"<watcherinfo ", version)
}

/// Parse a watcherinfo document (the checks and limits of the PIDF parser).
pub fn parse(body: &[u8]) -> Result<Vec<WatcherList>, WinfoError> {
    let raw = parse_raw(body, b"watcherinfo", &|ns| ns == WINFO_NS).map_err(|e| match e {
        PidfError::NotPidf => WinfoError::NotWatcherInfo,
        other => WinfoError::Xml(other.to_string()),
    })?;
    raw.children
        .iter()
        .filter(|c| c.local == "watcher-list")
        .map(|c| watcher_list(&c.raw))
        .collect()
}

/// One `<watcher-list>` element (already checked well-formed).
fn watcher_list(raw: &str) -> Result<WatcherList, WinfoError> {
    let attribute = |e: &quick_xml::events::BytesStart<'_>, name: &[u8]| {
        pidf::attribute(e, name).map_err(WinfoError::Xml)
    };
    let mut list = WatcherList {
        resource: String::new(),
        package: String::new(),
        watchers: Vec::new(),
    };
    pidf::walk(raw, WinfoError::Xml, |node| {
        let (depth, e, empty) = match node {
            Node::Text(t) => {
                if let Some(w) = list.watchers.last_mut() {
                    w.uri += t;
                }
                return Ok(false);
            }
            Node::Start {
                depth,
                element,
                empty,
            } => (depth, element, empty),
        };
        match (depth, e.local_name().as_ref()) {
            (0, b"watcher-list") => {
                list.resource = attribute(e, b"resource")?.unwrap_or_default();
                list.package = attribute(e, b"package")?.unwrap_or_default();
            }
            (1, b"watcher") => {
                let field = |name: &[u8]| -> Result<String, WinfoError> {
                    attribute(e, name)?.ok_or(WinfoError::Watcher)
                };
                list.watchers.push(Watcher {
                    id: field(b"id")?,
                    uri: String::new(),
                    status: field(b"status")?,
                    event: field(b"event")?,
                });
                // Its text is the watcher's URI.
                return Ok(!empty);
            }
            _ => {}
        }
        Ok(false)
    })?;
    for w in &mut list.watchers {
        w.uri = w.uri.trim().to_string();
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Flow, Transport};
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    fn sub(id: &str, watcher: &str, view: View) -> Subscription {
        Subscription {
            id: id.into(),
            aor: "sip:alice@example.com".into(),
            event: "presence".into(),
            event_id: None,
            watcher: watcher.into(),
            call_id: "c".into(),
            remote_tag: "t".into(),
            local_uri: "<sip:alice@example.com>".into(),
            remote_uri: format!("<{watcher}>"),
            remote_target: watcher.into(),
            route_set: vec![],
            flow: Flow {
                transport: Transport::Udp,
                remote: "192.0.2.1:5060".parse().unwrap(),
                local: "192.0.2.2:5060".parse().unwrap(),
                edge: "e".into(),
                conn: 0,
                seal: None,
            },
            remote_cseq: 1,
            expires_at_ms: 60_000,
            content_type: "application/pidf+xml".into(),
            view,
            rates: Default::default(),
        }
    }

    fn summary(ws: &[Watcher]) -> Vec<(&str, &str, &str)> {
        ws.iter()
            .map(|w| (w.uri.as_str(), w.status.as_str(), w.event.as_str()))
            .collect()
    }

    #[test]
    fn each_change_of_the_watchers_names_its_event() {
        let bob = sub("s-bob", "sip:bob@example.com", View::Full);
        let eve = sub("s-eve", "sip:eve@example.com", View::Pending);
        let one = watchers(std::slice::from_ref(&bob), &[], None);
        assert_eq!(
            summary(&one),
            [("sip:bob@example.com", "active", "subscribe")]
        );
        let two = watchers(&[bob.clone(), eve.clone()], &one, None);
        assert_eq!(
            summary(&two),
            [
                ("sip:bob@example.com", "active", "subscribe"),
                ("sip:eve@example.com", "pending", "subscribe")
            ]
        );
        let approved = Subscription {
            view: View::Full,
            ..eve.clone()
        };
        let three = watchers(&[bob.clone(), approved.clone()], &two, None);
        assert_eq!(
            summary(&three)[1],
            ("sip:eve@example.com", "active", "approved")
        );
        // Bob unsubscribes; then nothing more happens to him.
        let four = watchers(
            std::slice::from_ref(&approved),
            &three,
            Some(("s-bob", EndReason::Unsubscribed)),
        );
        assert_eq!(
            summary(&four),
            [
                ("sip:eve@example.com", "active", "approved"),
                ("sip:bob@example.com", "terminated", "timeout")
            ]
        );
        let five = watchers(&[], &four, Some(("s-eve", EndReason::Rejected)));
        assert_eq!(
            summary(&five),
            [("sip:eve@example.com", "terminated", "rejected")]
        );
        assert!(watchers(&[], &five, None).is_empty());
    }

    #[test]
    fn a_document_parses_back_with_its_watchers() {
        let ws = watchers(
            &[sub("a", "sip:o'brien&co@example.com", View::Pending)],
            &[],
            None,
        );
        let doc = compose("sip:alice@example.com", "presence", &ws);
        let lists = parse(doc.as_bytes()).unwrap();
        assert_eq!(lists.len(), 1);
        assert_eq!(lists[0].resource, "sip:alice@example.com");
        assert_eq!(lists[0].package, "presence");
        assert_eq!(lists[0].watchers, ws);
        let empty = compose("sip:alice@example.com", "presence", &[]);
        assert!(parse(empty.as_bytes()).unwrap()[0].watchers.is_empty());
        let v = stamp(empty.as_bytes(), 9).unwrap();
        assert_eq!(
            String::from_utf8(v).unwrap(),
            empty.replace(r#"version="0""#, r#"version="9""#)
        );
        assert_eq!(
            parse(br#"<reginfo xmlns="urn:ietf:params:xml:ns:reginfo"/>"#),
            Err(WinfoError::NotWatcherInfo)
        );
    }

    #[test]
    fn property_compose_round_trips_and_nothing_panics() {
        let mut rng = StdRng::seed_from_u64(3858);
        for _ in 0..1_000 {
            let subs: Vec<Subscription> = (0..rng.random_range(0..5u32))
                .map(|i| {
                    let view = [View::Full, View::Neutral, View::Pending][rng.random_range(0..3)];
                    sub(&format!("s{i}"), &format!("sip:w{i}@example.com"), view)
                })
                .collect();
            let ws = watchers(&subs, &[], None);
            let doc = compose("sip:a@example.com", "presence", &ws);
            assert_eq!(parse(doc.as_bytes()).expect("valid")[0].watchers, ws);
            let mut mutated = doc.into_bytes();
            let at = rng.random_range(0..mutated.len());
            mutated[at] = rng.random::<u8>();
            let _ = parse(&mutated);
            let noise: Vec<u8> = (0..rng.random_range(0..64usize))
                .map(|_| rng.random::<u8>())
                .collect();
            let _ = parse(&noise);
            let _ = stamp(&noise, 1);
        }
    }
}

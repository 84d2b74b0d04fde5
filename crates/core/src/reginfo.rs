//! reginfo documents (RFC 3680), the `reg` event package: a UA (or an
//! application server) watches an AoR's registrations and learns of each
//! contact bound, refreshed, expired or removed. The document is made from
//! the registrar's bindings, not published. Each contact's `event` says
//! what last happened to it, found by comparing the bindings before and
//! after the change; a contact that left is shown `terminated` with the
//! change that removed it, then dropped by the next one (like a terminated
//! dialog). The root's `version` counts one subscription's NOTIFYs and is
//! stamped per NOTIFY ([`stamp`]).

use crate::model::Binding;
use crate::pidf::{self, parse_raw, Node, PidfError};
use quick_xml::events::BytesStart;

pub const REGINFO_NS: &str = "urn:ietf:params:xml:ns:reginfo";

/// What last happened to a contact (RFC 3680 §5.1). This server makes
/// `registered`, `refreshed`, `expired` and `unregistered` from REGISTERs
/// and expiry; the others are administrative (a registrar shortening or
/// removing a binding by policy) and are read and written as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContactEvent {
    Registered,
    Created,
    Refreshed,
    Shortened,
    Expired,
    Deactivated,
    Probation,
    Unregistered,
    Rejected,
}

impl ContactEvent {
    pub const ALL: [ContactEvent; 9] = [
        ContactEvent::Registered,
        ContactEvent::Created,
        ContactEvent::Refreshed,
        ContactEvent::Shortened,
        ContactEvent::Expired,
        ContactEvent::Deactivated,
        ContactEvent::Probation,
        ContactEvent::Unregistered,
        ContactEvent::Rejected,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            ContactEvent::Registered => "registered",
            ContactEvent::Created => "created",
            ContactEvent::Refreshed => "refreshed",
            ContactEvent::Shortened => "shortened",
            ContactEvent::Expired => "expired",
            ContactEvent::Deactivated => "deactivated",
            ContactEvent::Probation => "probation",
            ContactEvent::Unregistered => "unregistered",
            ContactEvent::Rejected => "rejected",
        }
    }

    pub fn parse(s: &str) -> Option<ContactEvent> {
        ContactEvent::ALL
            .into_iter()
            .find(|e| e.as_str().eq_ignore_ascii_case(s.trim()))
    }
}

/// One `<contact>` of a registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact {
    /// Stable for one contact URI ([`contact_id`]).
    pub id: String,
    pub uri: String,
    /// `state="active"` (else `terminated`).
    pub active: bool,
    pub event: ContactEvent,
    /// Seconds left, for an active contact.
    pub expires: Option<u64>,
    pub call_id: Option<String>,
    pub cseq: Option<u32>,
    pub q: Option<String>,
}

/// One `<registration>`: an AoR and its contacts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub aor: String,
    pub id: String,
    /// `init`, `active` or `terminated`.
    pub state: String,
    pub contacts: Vec<Contact>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegInfoError {
    #[error("root element is not a <reginfo> in {REGINFO_NS}")]
    NotRegInfo,
    #[error("a <contact> without an id, a state or a known event")]
    Contact,
    #[error("{0}")]
    Xml(String),
}

/// A short id that stays the same for the same text (FNV-1a, 64 bits),
/// case-insensitively.
pub(crate) fn stable_id(prefix: &str, text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.to_ascii_lowercase().bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{prefix}{h:016x}")
}

/// The id of a contact URI's `<contact>` (compared as the registrar
/// compares contacts: case-insensitively).
pub fn contact_id(uri: &str) -> String {
    stable_id("c", uri)
}

/// The contacts of an AoR after a change of its bindings from `before` to
/// `after` (`before` is `None` when the bindings did not change), with
/// `previous` the contacts of the last document. A contact new in `after`
/// was `registered`; one still there whose REGISTER changed its expiry or
/// CSeq was `refreshed`; one unchanged keeps its last event; one gone is
/// `terminated`: `expired` if its time was up, else `unregistered`. A
/// contact terminated in `previous` is not shown again.
pub fn contacts(
    before: Option<&[Binding]>,
    after: &[Binding],
    previous: &[Contact],
    now_ms: u64,
) -> Vec<Contact> {
    let before = before.unwrap_or(after);
    let same = |a: &Binding, b: &Binding| a.uri.eq_ignore_ascii_case(&b.uri);
    let mut out: Vec<Contact> = after
        .iter()
        .map(|b| {
            let id = contact_id(&b.uri);
            let event = match before.iter().find(|old| same(old, b)) {
                None => ContactEvent::Registered,
                Some(old) if old.expires_at_ms != b.expires_at_ms || old.cseq != b.cseq => {
                    ContactEvent::Refreshed
                }
                Some(_) => previous
                    .iter()
                    .find(|c| c.id == id && c.active)
                    .map_or(ContactEvent::Registered, |c| c.event),
            };
            Contact {
                id,
                uri: b.uri.clone(),
                active: true,
                event,
                expires: Some(b.expires_at_ms.saturating_sub(now_ms).div_ceil(1000)),
                call_id: Some(b.call_id.clone()),
                cseq: Some(b.cseq),
                q: b.q.clone(),
            }
        })
        .collect();
    for old in before.iter().filter(|o| !after.iter().any(|b| same(o, b))) {
        out.push(Contact {
            id: contact_id(&old.uri),
            uri: old.uri.clone(),
            active: false,
            event: if old.expires_at_ms <= now_ms {
                ContactEvent::Expired
            } else {
                ContactEvent::Unregistered
            },
            expires: None,
            call_id: Some(old.call_id.clone()),
            cseq: Some(old.cseq),
            q: old.q.clone(),
        });
    }
    out
}

/// One full-state document for `aor`. The registration is `active` while
/// a contact is, `terminated` when its last contact has just left, `init`
/// when it has none. `version` is 0: [`stamp`] sets each NOTIFY's.
pub fn compose(aor: &str, contacts: &[Contact]) -> String {
    let state = if contacts.iter().any(|c| c.active) {
        "active"
    } else if contacts.is_empty() {
        "init"
    } else {
        "terminated"
    };
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    out += &format!("<reginfo xmlns=\"{REGINFO_NS}\" version=\"0\" state=\"full\">\n");
    out += &format!(
        " <registration aor=\"{}\" id=\"{}\" state=\"{state}\"",
        pidf::escape(aor),
        stable_id("r", aor)
    );
    if contacts.is_empty() {
        out += "/>\n";
    } else {
        out += ">\n";
        for c in contacts {
            out += &format!(
                "  <contact id=\"{}\" state=\"{}\" event=\"{}\"",
                c.id,
                if c.active { "active" } else { "terminated" },
                c.event.as_str()
            );
            if let Some(e) = c.expires.filter(|_| c.active) {
                out += &format!(" expires=\"{e}\"");
            }
            if let Some(q) = &c.q {
                out += &format!(" q=\"{}\"", pidf::escape(q));
            }
            if let Some(id) = &c.call_id {
                out += &format!(" callid=\"{}\"", pidf::escape(id));
            }
            if let Some(n) = c.cseq {
                out += &format!(" cseq=\"{n}\"");
            }
            out += &format!(">\n   <uri>{}</uri>\n  </contact>\n", pidf::escape(&c.uri));
        }
        out += " </registration>\n";
    }
    out += "</reginfo>\n";
    out
}

/// `body` (a document [`compose`] made) with the root's `version` set.
pub fn stamp(body: &[u8], version: u32) -> Option<Vec<u8>> {
    pidf::stamp_version(body, b"<reginfo ", version)
}

/// Parse a reginfo document (the checks and limits of the PIDF parser).
pub fn parse(body: &[u8]) -> Result<Vec<Registration>, RegInfoError> {
    let raw = parse_raw(body, b"reginfo", &|ns| ns == REGINFO_NS).map_err(|e| match e {
        PidfError::NotPidf => RegInfoError::NotRegInfo,
        other => RegInfoError::Xml(other.to_string()),
    })?;
    raw.children
        .iter()
        .filter(|c| c.local == "registration")
        .map(|c| registration(&c.raw))
        .collect()
}

fn attribute(e: &BytesStart<'_>, name: &[u8]) -> Result<Option<String>, RegInfoError> {
    pidf::attribute(e, name).map_err(RegInfoError::Xml)
}

/// One `<registration>` element (already checked well-formed).
fn registration(raw: &str) -> Result<Registration, RegInfoError> {
    let mut reg = Registration {
        aor: String::new(),
        id: String::new(),
        state: String::new(),
        contacts: Vec::new(),
    };
    pidf::walk(raw, RegInfoError::Xml, |node| {
        let (depth, e, empty) = match node {
            Node::Text(t) => {
                if let Some(c) = reg.contacts.last_mut() {
                    c.uri += t;
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
            (0, b"registration") => {
                reg.aor = attribute(e, b"aor")?.unwrap_or_default();
                reg.id = attribute(e, b"id")?.unwrap_or_default();
                reg.state = attribute(e, b"state")?.unwrap_or_default();
            }
            (1, b"contact") => {
                let id = attribute(e, b"id")?.ok_or(RegInfoError::Contact)?;
                let active = match attribute(e, b"state")?.as_deref() {
                    Some("active") => true,
                    Some("terminated") => false,
                    _ => return Err(RegInfoError::Contact),
                };
                let event = attribute(e, b"event")?
                    .as_deref()
                    .and_then(ContactEvent::parse)
                    .ok_or(RegInfoError::Contact)?;
                reg.contacts.push(Contact {
                    id,
                    uri: String::new(),
                    active,
                    event,
                    expires: attribute(e, b"expires")?.and_then(|v| v.parse().ok()),
                    call_id: attribute(e, b"callid")?,
                    cseq: attribute(e, b"cseq")?.and_then(|v| v.parse().ok()),
                    q: attribute(e, b"q")?,
                });
            }
            // A contact's <uri>: its text is the contact's URI.
            (2, b"uri") => return Ok(!empty),
            _ => {}
        }
        Ok(false)
    })?;
    Ok(reg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Flow, Transport};
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    fn binding(uri: &str, expires_at_ms: u64, cseq: u32) -> Binding {
        Binding {
            aor: "sip:alice@example.com".into(),
            uri: uri.into(),
            params: String::new(),
            expires_at_ms,
            call_id: "reg-1".into(),
            cseq,
            flow: Flow {
                transport: Transport::Udp,
                remote: "192.0.2.1:5060".parse().unwrap(),
                local: "192.0.2.2:5060".parse().unwrap(),
                edge: "e".into(),
                conn: 0,
                seal: None,
            },
            methods: None,
            q: None,
        }
    }

    fn events(cs: &[Contact]) -> Vec<(&str, bool, ContactEvent)> {
        cs.iter()
            .map(|c| (c.uri.as_str(), c.active, c.event))
            .collect()
    }

    #[test]
    fn each_change_of_the_bindings_names_its_event() {
        use ContactEvent::*;
        let desk = binding("sip:alice@192.0.2.1:5060", 3_600_000, 1);
        let soft = binding("sip:alice@192.0.2.9:5070;transport=tcp", 600_000, 7);
        // The first REGISTER.
        let first = contacts(Some(&[]), std::slice::from_ref(&desk), &[], 0);
        assert_eq!(events(&first), [(desk.uri.as_str(), true, Registered)]);
        assert_eq!(first[0].expires, Some(3600));
        // A second device; the first is unchanged and keeps its event.
        let two = [desk.clone(), soft.clone()];
        let second = contacts(Some(std::slice::from_ref(&desk)), &two, &first, 1_000);
        assert_eq!(
            events(&second),
            [
                (desk.uri.as_str(), true, Registered),
                (soft.uri.as_str(), true, Registered)
            ]
        );
        // The desk phone re-registers.
        let refreshed = [binding(&desk.uri, 3_700_000, 2), soft.clone()];
        let third = contacts(Some(&two), &refreshed, &second, 100_000);
        assert_eq!(third[0].event, Refreshed);
        assert_eq!(third[1].event, Registered);
        // The soft phone's binding runs out; the desk phone unregisters
        // (its time was not up).
        let fourth = contacts(Some(&refreshed), &refreshed[..1], &third, 600_000);
        assert_eq!(fourth[1].event, Expired);
        assert!(!fourth[1].active && fourth[1].expires.is_none());
        let fifth = contacts(Some(&refreshed[..1]), &[], &fourth, 700_000);
        assert_eq!(events(&fifth), [(desk.uri.as_str(), false, Unregistered)]);
        // Nothing changed since: the terminated contact is not shown again.
        assert!(contacts(None, &[], &fifth, 800_000).is_empty());
        // A recomposition without a binding change keeps each event.
        let again = contacts(None, &refreshed, &third, 200_000);
        assert_eq!(events(&again), events(&third));
    }

    #[test]
    fn a_document_parses_back_with_its_contacts() {
        let b = [binding("sip:alice@[2001:db8::1]:5060;a=<&>", 90_500, 3)];
        let cs = contacts(Some(&[]), &b, &[], 0);
        let doc = compose("sip:alice@example.com", &cs);
        let regs = parse(doc.as_bytes()).unwrap();
        assert_eq!(regs.len(), 1);
        assert_eq!(regs[0].aor, "sip:alice@example.com");
        assert_eq!(regs[0].state, "active");
        assert_eq!(regs[0].contacts, cs);
        assert_eq!(cs[0].expires, Some(91));
        let gone = contacts(Some(&b), &[], &cs, 100_000);
        let regs = parse(compose("sip:alice@example.com", &gone).as_bytes()).unwrap();
        assert_eq!(regs[0].state, "terminated");
        assert_eq!(regs[0].contacts[0].event, ContactEvent::Expired);
        let none = compose("sip:alice@example.com", &[]);
        assert!(none.contains(r#"state="init"/>"#));
        assert!(parse(none.as_bytes()).unwrap()[0].contacts.is_empty());
        let v = stamp(none.as_bytes(), 4).unwrap();
        assert_eq!(
            String::from_utf8(v).unwrap(),
            none.replace(r#"version="0""#, r#"version="4""#)
        );
        assert_eq!(
            parse(br#"<presence xmlns="urn:ietf:params:xml:ns:pidf"/>"#),
            Err(RegInfoError::NotRegInfo)
        );
    }

    /// No input panics the parser; every composed document parses back.
    #[test]
    fn property_compose_round_trips_and_nothing_panics() {
        let mut rng = StdRng::seed_from_u64(3680);
        for _ in 0..1_000 {
            let before: Vec<Binding> = (0..rng.random_range(0..4u32))
                .map(|i| binding(&format!("sip:u@10.0.0.{i}"), rng.random_range(0..5_000), 1))
                .collect();
            let after: Vec<Binding> = (0..rng.random_range(0..4u32))
                .map(|i| binding(&format!("sip:u@10.0.0.{i}"), rng.random_range(0..5_000), 2))
                .collect();
            let cs = contacts(Some(&before), &after, &[], rng.random_range(0..5_000));
            let doc = compose("sip:u@example.com", &cs);
            assert_eq!(parse(doc.as_bytes()).expect("valid")[0].contacts, cs);
            let mut mutated = doc.into_bytes();
            let at = rng.random_range(0..mutated.len());
            mutated[at] = rng.random::<u8>();
            let _ = parse(&mutated);
            let noise: Vec<u8> = (0..rng.random_range(0..64usize))
                .map(|_| rng.random::<u8>())
                .collect();
            let _ = parse(&noise);
            let _ = stamp(&noise, 3);
        }
    }
}

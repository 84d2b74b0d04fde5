//! Event packages as a registry of trait objects (the Kamailio lesson: an
//! event package is a record of callbacks). The core asks the registry which
//! packages exist (`Allow-Events`, 489), which bodies a package takes in
//! PUBLISH (415 + `Accept`), which it can send in NOTIFY (406), and how it
//! composes publications into one document. `dialog`, `reg` and
//! `presence.winfo` plug in here without touching the core.

use crate::model::{Binding, EndReason, Publication, Subscription};
use crate::{dialog, mwi, pidf, reginfo, winfo};
use presence_sip::MediaType;
use std::sync::Arc;

/// A composed body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Composed {
    pub content_type: String,
    pub body: Vec<u8>,
}

/// What a package composes a resource's document from.
#[derive(Debug, Default, Clone, Copy)]
pub struct State<'a> {
    pub aor: &'a str,
    /// Live publications, oldest first.
    pub publications: &'a [Publication],
    pub hard_state: Option<&'a [u8]>,
    /// Live bindings (given to packages that show registrations).
    pub bindings: &'a [Binding],
    /// When this composition is for a change of the bindings: what they
    /// were before it (`reg` tells each contact's event from it).
    pub bindings_before: Option<&'a [Binding]>,
    /// The body of the document composed last, if one is stored.
    pub previous: Option<&'a [u8]>,
    /// For a package made from another's subscriptions
    /// ([`EventPackage::watches`]): those live subscriptions.
    pub watchers: &'a [Subscription],
    /// The subscription that has just left, and why.
    pub ended: Option<(&'a str, EndReason)>,
    pub now_ms: u64,
}

impl<'a> State<'a> {
    /// No state at all: what a watcher of a resource nobody uses sees.
    pub fn empty(aor: &'a str) -> Self {
        State {
            aor,
            ..State::default()
        }
    }
}

pub trait EventPackage: Send + Sync {
    fn name(&self) -> &'static str;
    /// Content types accepted in PUBLISH; empty if the package takes no PUBLISH.
    fn publish_types(&self) -> &'static [&'static str];
    /// Content types NOTIFY can carry, preferred first.
    fn notify_types(&self) -> &'static [&'static str];
    /// Check a PUBLISH body of an accepted content type.
    fn check_body(&self, body: &[u8]) -> Result<(), String>;
    /// Compose the state of a resource: publications (oldest first), else
    /// the hard state body, else what the registrations say.
    fn compose(&self, state: &State<'_>) -> Composed;
    /// What a politely blocked watcher sees.
    fn neutral(&self, aor: &str) -> Composed;
    /// Whether registrations are part of the state (presence shows a
    /// registered AoR as open): a REGISTER then recomposes the document,
    /// and bindings keep it alive.
    fn from_registrations(&self) -> bool {
        false
    }
    /// Whether the composed document is stored while nobody watches it.
    /// A package made from registrations that nobody reads unwatched
    /// (`reg`) says no: every re-REGISTER would write a document for
    /// nothing. Its document is then composed by the first subscription
    /// and forgotten with the last.
    fn kept_unwatched(&self) -> bool {
        true
    }
    /// The package whose subscriptions to the resource make this one's
    /// state (`presence.winfo` shows who watches `presence`): a change of
    /// those subscriptions recomposes it.
    fn watches(&self) -> Option<&'static str> {
        None
    }
    /// Whether only the resource itself may watch it, unless a policy rule
    /// names both the resource and the watcher (`allow`). Presence is
    /// shared by default; a voicemail lamp or a registration list is not.
    fn private(&self) -> bool {
        false
    }
    /// The body of one NOTIFY of a subscription, the `seq`-th (its CSeq,
    /// from 1): a package whose documents count their NOTIFYs (dialog's
    /// `version`, RFC 4235 §4.1) sets that here. As is by default.
    fn stamp(&self, body: bytes::Bytes, _seq: u32) -> bytes::Bytes {
        body
    }

    /// The NOTIFY content type for an Accept list (`None` = no Accept header:
    /// the package default). `Err` → 406.
    fn negotiate(&self, accept: Option<&[MediaType]>) -> Result<&'static str, ()> {
        let types = self.notify_types();
        match accept {
            // No Accept (or an empty one): the package default, if it has one.
            None | Some([]) => types.first().copied().ok_or(()),
            Some(list) => types
                .iter()
                .copied()
                .find(|t| list.iter().any(|m| m.matches(t)))
                .ok_or(()),
        }
    }
}

/// PIDF, and the pre-RFC content type some clients (and the seed paper) still use.
const PIDF_TYPES: &[&str] = &["application/pidf+xml", "application/cpim-pidf+xml"];

/// RFC 3856 presence with PIDF (RFC 3863) bodies.
#[derive(Default)]
pub struct PresencePackage {
    /// Publications parsed once, not on every composition: a change of one
    /// publication re-composes with every other one of the AoR.
    parsed: ParsedCache,
}

/// Parsed PIDF bodies by their bytes (the key is the body itself, so no
/// crafted body can stand in for another). Bounded: when full it starts
/// over, which costs only re-parsing.
#[derive(Default)]
struct ParsedCache {
    map: std::sync::Mutex<std::collections::HashMap<bytes::Bytes, Arc<pidf::Pidf>>>,
}

/// Bodies kept parsed at most (a PIDF is ~1 KB: ~10 MB at most).
const PARSED_CACHE: usize = 10_000;

impl ParsedCache {
    fn get(&self, body: &bytes::Bytes) -> Option<Arc<pidf::Pidf>> {
        let lock = || self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = lock().get(body) {
            return Some(p.clone());
        }
        // Parsed outside the lock: every shard worker composes through it.
        let parsed = Arc::new(pidf::parse(body).ok()?);
        let mut map = lock();
        if map.len() >= PARSED_CACHE {
            map.clear();
        }
        map.insert(body.clone(), parsed.clone());
        Some(parsed)
    }
}

impl EventPackage for PresencePackage {
    fn name(&self) -> &'static str {
        "presence"
    }
    fn publish_types(&self) -> &'static [&'static str] {
        PIDF_TYPES
    }
    fn notify_types(&self) -> &'static [&'static str] {
        PIDF_TYPES
    }
    fn check_body(&self, body: &[u8]) -> Result<(), String> {
        pidf::parse(body).map(|_| ()).map_err(|e| e.to_string())
    }
    fn compose(&self, state: &State<'_>) -> Composed {
        let (aor, bindings) = (state.aor, state.bindings);
        let docs: Vec<Arc<pidf::Pidf>> = state
            .publications
            .iter()
            .filter_map(|p| self.parsed.get(&p.body))
            .collect();
        let body = if !docs.is_empty() {
            pidf::compose(aor, docs.iter().map(|d| d.as_ref()))
        } else if let Some(hard) = state.hard_state.and_then(|h| pidf::parse(h).ok()) {
            pidf::compose(aor, [&hard])
        } else {
            let contact = bindings.first().map(|b| b.uri.as_str());
            pidf::basic(aor, "registrar", !bindings.is_empty(), contact)
        };
        Composed {
            content_type: "application/pidf+xml".into(),
            body: body.into_bytes(),
        }
    }
    fn neutral(&self, aor: &str) -> Composed {
        Composed {
            content_type: "application/pidf+xml".into(),
            body: pidf::basic(aor, "neutral", false, None).into_bytes(),
        }
    }
    fn from_registrations(&self) -> bool {
        true
    }
}

const MWI_TYPES: &[&str] = &["application/simple-message-summary"];

/// RFC 3842 message waiting indication: a voicemail server PUBLISHes the
/// summary, and each watcher gets the newest live publication byte for
/// byte (several publishers of one mailbox do not merge: the newest
/// wins), else the hard state, else "no messages waiting".
#[derive(Default)]
pub struct MessageSummaryPackage;

impl EventPackage for MessageSummaryPackage {
    fn name(&self) -> &'static str {
        "message-summary"
    }
    fn publish_types(&self) -> &'static [&'static str] {
        MWI_TYPES
    }
    fn notify_types(&self) -> &'static [&'static str] {
        MWI_TYPES
    }
    fn check_body(&self, body: &[u8]) -> Result<(), String> {
        mwi::check(body).map_err(|e| e.to_string())
    }
    fn compose(&self, state: &State<'_>) -> Composed {
        let body = match (state.publications.last(), state.hard_state) {
            (Some(newest), _) => newest.body.to_vec(),
            (None, Some(hard)) => hard.to_vec(),
            (None, None) => mwi::NO_MESSAGES.as_bytes().to_vec(),
        };
        Composed {
            content_type: MWI_TYPES[0].into(),
            body,
        }
    }
    fn neutral(&self, _aor: &str) -> Composed {
        Composed {
            content_type: MWI_TYPES[0].into(),
            body: mwi::NO_MESSAGES.as_bytes().to_vec(),
        }
    }
    fn private(&self) -> bool {
        true
    }
}

const DIALOG_TYPES: &[&str] = &["application/dialog-info+xml"];

/// RFC 4235 dialog state (BLF): a PBX or proxy PUBLISHes an extension's
/// dialogs; watchers get one full-state document merging every live
/// publication's dialogs, whose `version` counts that subscription's
/// NOTIFYs from 0. Nothing published: an empty document (lamp off).
#[derive(Default)]
pub struct DialogPackage;

impl DialogPackage {
    fn compose_docs(aor: &str, bodies: &[&[u8]]) -> Composed {
        let docs: Vec<dialog::DialogInfo> = bodies
            .iter()
            .filter_map(|b| dialog::parse(b).ok())
            .collect();
        Composed {
            content_type: DIALOG_TYPES[0].into(),
            body: dialog::compose(aor, docs.iter()).into_bytes(),
        }
    }
}

impl EventPackage for DialogPackage {
    fn name(&self) -> &'static str {
        "dialog"
    }
    fn publish_types(&self) -> &'static [&'static str] {
        DIALOG_TYPES
    }
    fn notify_types(&self) -> &'static [&'static str] {
        DIALOG_TYPES
    }
    fn check_body(&self, body: &[u8]) -> Result<(), String> {
        dialog::parse(body).map(|_| ()).map_err(|e| e.to_string())
    }
    fn compose(&self, state: &State<'_>) -> Composed {
        let bodies: Vec<&[u8]> = if state.publications.is_empty() {
            state.hard_state.into_iter().collect()
        } else {
            state.publications.iter().map(|p| p.body.as_ref()).collect()
        };
        DialogPackage::compose_docs(state.aor, &bodies)
    }
    fn neutral(&self, aor: &str) -> Composed {
        DialogPackage::compose_docs(aor, &[])
    }
    fn stamp(&self, body: bytes::Bytes, seq: u32) -> bytes::Bytes {
        match dialog::stamp(&body, seq.saturating_sub(1)) {
            Some(stamped) => stamped.into(),
            None => body,
        }
    }
}

const REGINFO_TYPES: &[&str] = &["application/reginfo+xml"];

/// RFC 3680 registrations: made from the registrar's bindings (no
/// PUBLISH), one full-state document per change with each contact's
/// event; its `version` counts the subscription's NOTIFYs like dialog's.
/// Private: a user watches their own registrations, others as a policy
/// rule naming both allows.
#[derive(Default)]
pub struct RegPackage;

impl EventPackage for RegPackage {
    fn name(&self) -> &'static str {
        "reg"
    }
    fn publish_types(&self) -> &'static [&'static str] {
        &[]
    }
    fn notify_types(&self) -> &'static [&'static str] {
        REGINFO_TYPES
    }
    fn check_body(&self, _body: &[u8]) -> Result<(), String> {
        Err("registrations change by REGISTER, not by a published body".into())
    }
    fn compose(&self, state: &State<'_>) -> Composed {
        let previous: Vec<reginfo::Contact> = state
            .previous
            .and_then(|p| reginfo::parse(p).ok())
            .and_then(|regs| regs.into_iter().next())
            .map(|r| r.contacts)
            .unwrap_or_default();
        let contacts = reginfo::contacts(
            state.bindings_before,
            state.bindings,
            &previous,
            state.now_ms,
        );
        Composed {
            content_type: REGINFO_TYPES[0].into(),
            body: reginfo::compose(state.aor, &contacts).into_bytes(),
        }
    }
    fn neutral(&self, aor: &str) -> Composed {
        Composed {
            content_type: REGINFO_TYPES[0].into(),
            body: reginfo::compose(aor, &[]).into_bytes(),
        }
    }
    fn from_registrations(&self) -> bool {
        true
    }
    fn kept_unwatched(&self) -> bool {
        false
    }
    fn private(&self) -> bool {
        true
    }
    fn stamp(&self, body: bytes::Bytes, seq: u32) -> bytes::Bytes {
        match reginfo::stamp(&body, seq.saturating_sub(1)) {
            Some(stamped) => stamped.into(),
            None => body,
        }
    }
}

const WINFO_TYPES: &[&str] = &["application/watcherinfo+xml"];

/// RFC 3857 watcher information for presence: the presentity watches its
/// watchers (pending ones to approve, active ones, ones that just left).
/// Private, not kept unwatched, version per subscription.
#[derive(Default)]
pub struct PresenceWinfoPackage;

impl EventPackage for PresenceWinfoPackage {
    fn name(&self) -> &'static str {
        "presence.winfo"
    }
    fn publish_types(&self) -> &'static [&'static str] {
        &[]
    }
    fn notify_types(&self) -> &'static [&'static str] {
        WINFO_TYPES
    }
    fn check_body(&self, _body: &[u8]) -> Result<(), String> {
        Err("watcher information changes by SUBSCRIBE, not by a published body".into())
    }
    fn compose(&self, state: &State<'_>) -> Composed {
        let previous: Vec<winfo::Watcher> = state
            .previous
            .and_then(|p| winfo::parse(p).ok())
            .and_then(|lists| lists.into_iter().next())
            .map(|l| l.watchers)
            .unwrap_or_default();
        let watchers = winfo::watchers(state.watchers, &previous, state.ended);
        Composed {
            content_type: WINFO_TYPES[0].into(),
            body: winfo::compose(state.aor, "presence", &watchers).into_bytes(),
        }
    }
    fn neutral(&self, aor: &str) -> Composed {
        Composed {
            content_type: WINFO_TYPES[0].into(),
            body: winfo::compose(aor, "presence", &[]).into_bytes(),
        }
    }
    fn watches(&self) -> Option<&'static str> {
        Some("presence")
    }
    fn kept_unwatched(&self) -> bool {
        false
    }
    fn private(&self) -> bool {
        true
    }
    fn stamp(&self, body: bytes::Bytes, seq: u32) -> bytes::Bytes {
        match winfo::stamp(&body, seq.saturating_sub(1)) {
            Some(stamped) => stamped.into(),
            None => body,
        }
    }
}

/// The packages this server serves.
#[derive(Clone)]
pub struct Registry {
    packages: Vec<Arc<dyn EventPackage>>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            packages: vec![
                Arc::new(PresencePackage::default()),
                Arc::new(DialogPackage),
                Arc::new(MessageSummaryPackage),
                Arc::new(RegPackage),
                Arc::new(PresenceWinfoPackage),
            ],
        }
    }
}

impl Registry {
    pub fn get(&self, name: &str) -> Option<&Arc<dyn EventPackage>> {
        self.packages
            .iter()
            .find(|p| p.name().eq_ignore_ascii_case(name))
    }
    /// Value of `Allow-Events` (and of the 489 answer).
    pub fn allow_events(&self) -> String {
        self.packages
            .iter()
            .map(|p| p.name())
            .collect::<Vec<_>>()
            .join(", ")
    }
    /// The packages that take a PUBLISH (the `Allow-Events` of a 489 to one).
    pub fn publishable_events(&self) -> String {
        self.packages
            .iter()
            .filter(|p| !p.publish_types().is_empty())
            .map(|p| p.name())
            .collect::<Vec<_>>()
            .join(", ")
    }
    /// The package made from the subscriptions of `event`, if any
    /// ([`EventPackage::watches`]).
    pub fn watching(&self, event: &str) -> Option<&'static str> {
        self.packages
            .iter()
            .find(|p| p.watches() == Some(event))
            .map(|p| p.name())
    }
    /// The served packages, by name, in registry order.
    pub fn names(&self) -> Vec<&'static str> {
        self.packages.iter().map(|p| p.name()).collect()
    }
    /// The packages whose state registrations are part of
    /// ([`EventPackage::from_registrations`]).
    pub fn from_registrations(&self) -> Vec<&'static str> {
        self.packages
            .iter()
            .filter(|p| p.from_registrations())
            .map(|p| p.name())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation() {
        let p = PresencePackage::default();
        let mt = |s: &str| MediaType::parse(s).unwrap();
        assert_eq!(p.negotiate(None), Ok("application/pidf+xml"));
        assert_eq!(p.negotiate(Some(&[mt("application/xpidf+xml")])), Err(()));
        assert_eq!(
            p.negotiate(Some(&[mt("multipart/related"), mt("application/pidf+xml")])),
            Ok("application/pidf+xml")
        );
        assert_eq!(
            p.negotiate(Some(&[mt("application/*")])),
            Ok("application/pidf+xml")
        );
        assert_eq!(
            p.negotiate(Some(&[mt("application/cpim-pidf+xml")])),
            Ok("application/cpim-pidf+xml")
        );
    }

    #[test]
    fn negotiation_without_notify_types_refuses() {
        struct Mute;
        impl EventPackage for Mute {
            fn name(&self) -> &'static str {
                "mute"
            }
            fn publish_types(&self) -> &'static [&'static str] {
                &[]
            }
            fn notify_types(&self) -> &'static [&'static str] {
                &[]
            }
            fn check_body(&self, _: &[u8]) -> Result<(), String> {
                Err("no bodies".into())
            }
            fn compose(&self, state: &State<'_>) -> Composed {
                self.neutral(state.aor)
            }
            fn neutral(&self, _: &str) -> Composed {
                Composed {
                    content_type: String::new(),
                    body: Vec::new(),
                }
            }
        }
        let mt = |s: &str| MediaType::parse(s).unwrap();
        assert_eq!(Mute.negotiate(None), Err(()));
        assert_eq!(Mute.negotiate(Some(&[])), Err(()));
        assert_eq!(Mute.negotiate(Some(&[mt("*/*")])), Err(()));
        assert_eq!(
            PresencePackage::default().negotiate(Some(&[])),
            Ok("application/pidf+xml")
        );
    }

    #[test]
    fn registry_answers() {
        let r = Registry::default();
        assert_eq!(
            r.allow_events(),
            "presence, dialog, message-summary, reg, presence.winfo"
        );
        assert_eq!(r.watching("presence"), Some("presence.winfo"));
        assert_eq!(r.watching("dialog"), None);
        assert_eq!(r.publishable_events(), "presence, dialog, message-summary");
        assert!(r.get("Presence").is_some());
        assert!(r.get("message-summary").is_some_and(|p| p.private()));
        assert!(r.get("foo").is_none());
    }

    #[test]
    fn a_message_summary_is_the_newest_publication_byte_for_byte() {
        let p = MessageSummaryPackage;
        let publication = |etag: &str, body: &str, seq: u64| Publication {
            aor: "sip:a@example.com".into(),
            event: "message-summary".into(),
            etag: etag.into(),
            content_type: "application/simple-message-summary".into(),
            body: body.to_string().into(),
            expires_at_ms: 10_000,
            modified_ms: 1,
            seq,
        };
        let none = p.compose(&State::empty("sip:a@example.com"));
        assert_eq!(none.body, b"Messages-Waiting: no\r\n");
        assert_eq!(none.content_type, "application/simple-message-summary");
        let odd = "Messages-Waiting: yes\nMessage-Account: sip:a@vm.example.com\nVoice-Message: 3/1 (1/0)\n\nX-Extra: kept as is";
        let pubs = [
            publication("e1", "Messages-Waiting: no\r\n", 1),
            publication("e2", odd, 2),
        ];
        assert_eq!(
            p.compose(&State {
                publications: &pubs,
                ..State::empty("sip:a@example.com")
            })
            .body,
            odd.as_bytes()
        );
        let hard = b"Messages-Waiting: yes\r\nVoice-Message: 9/9\r\n";
        assert_eq!(
            p.compose(&State {
                hard_state: Some(hard),
                ..State::empty("sip:a@example.com")
            })
            .body,
            hard
        );
        assert_eq!(p.neutral("sip:a@example.com").body, none.body);
        assert!(!p.from_registrations() && PresencePackage::default().from_registrations());
        assert!(p.check_body(odd.as_bytes()).is_ok());
        assert!(p.check_body(b"<presence/>").is_err());
    }

    #[test]
    fn composition_falls_back_to_hard_state_then_registrations() {
        let p = PresencePackage::default();
        let none = p.compose(&State::empty("sip:a@example.com"));
        assert!(String::from_utf8(none.body)
            .unwrap()
            .contains("<basic>closed</basic>"));
        let hard = br#"<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:a@example.com"><tuple id="hs"><status><basic>open</basic></status><note>on vacation</note></tuple></presence>"#;
        let c = p.compose(&State {
            hard_state: Some(hard),
            ..State::empty("sip:a@example.com")
        });
        assert!(String::from_utf8(c.body).unwrap().contains("on vacation"));
    }
}

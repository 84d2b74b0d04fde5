//! What a composed document says, for readers that do not speak SIP (the
//! gRPC API): whether someone is there, what they are doing, their note,
//! the calls of an extension, the voicemail lamp, and one lamp colour
//! ([`Availability`]) made of presence and calls.
//!
//! Each reader takes a body as the server stores or composes it and gives
//! `None` unless the body is one its package accepts ([`pidf::parse`],
//! [`dialog::parse`], [`mwi::check`]): a summary is never made of garbage.
//! Element names are matched by their local name, whatever the prefix
//! (`rpid:`, `rp:`, `dm:` or none).
//!
//! What it is not: no composition (the documents are made elsewhere and
//! are not changed here), no policy (whether a reader may see someone is
//! decided before), and no complete model of PIDF, RPID or RFC 4235: what
//! is not listed in these types (moods, places, timestamps, devices,
//! dialog targets and media) is left out.

use crate::pidf::{self, Kind};
use crate::{dialog, mwi};
use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

/// The lamp a client shows for someone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    Available,
    Away,
    Busy,
    OnThePhone,
    Offline,
}

impl Availability {
    pub fn as_str(&self) -> &'static str {
        match self {
            Availability::Available => "available",
            Availability::Away => "away",
            Availability::Busy => "busy",
            Availability::OnThePhone => "on-the-phone",
            Availability::Offline => "offline",
        }
    }
}

/// RPID activities that make someone [`Availability::Busy`].
pub const BUSY_ACTIVITIES: &[&str] = &["busy", "meeting", "performance", "presentation", "worship"];
/// RPID activities that make someone [`Availability::Away`].
pub const AWAY_ACTIVITIES: &[&str] = &["away", "vacation", "steppingOut", "sleeping", "travel"];
/// Dialog states of a call in progress (ringing or talking).
pub const CALL_STATES: &[&str] = &["trying", "proceeding", "early", "confirmed"];

/// One `<tuple>`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TupleSummary {
    /// Its `id` ("" without one).
    pub id: String,
    /// `<status><basic>`: `open` (any case, trimmed) is `Some(true)`,
    /// `closed` `Some(false)`, anything else or none `None`.
    pub open: Option<bool>,
    /// Its `<contact>`, trimmed ("" if none).
    pub contact: String,
    /// Its first non-empty `<note>`, trimmed.
    pub note: String,
}

/// What a PIDF document says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PresenceSummary {
    /// `Some(true)` if a tuple is open, `Some(false)` if tuples have a
    /// `<basic>` and none is open, `None` if no tuple has one.
    pub basic: Option<bool>,
    /// The children of every `<activities>` element, by local name
    /// (`away`, `on-the-phone`, ...), in document order, each once. An
    /// `<other>` activity (or the `<activity>` of pre-RFC clients) gives
    /// its text; a `<note>` inside `<activities>` is not an activity.
    pub activities: Vec<String>,
    /// The first non-empty root `<note>`, else the person's `<note>`, else
    /// the first tuple note; trimmed.
    pub note: String,
    pub tuples: Vec<TupleSummary>,
}

/// One `<dialog>` of a dialog-info document.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DialogSummary {
    pub id: String,
    /// One of [`dialog::STATES`].
    pub state: String,
    /// `initiator`, `recipient` or "" (absent or anything else).
    pub direction: String,
    /// The text of `<remote><identity>`, trimmed ("" if none).
    pub remote: String,
}

/// What a message-summary body says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MessageSummary {
    /// `Messages-Waiting: yes`.
    pub waiting: bool,
    /// The `Message-Account` ("" if none).
    pub account: String,
    /// The value of the `Voice-Message` line (`2/8 (0/2)`), "" if none.
    pub voice: String,
}

/// The summary of a PIDF document; `None` if [`pidf::parse`] refuses it.
pub fn presence(body: &[u8]) -> Option<PresenceSummary> {
    let doc = pidf::parse(body).ok()?;
    let mut summary = PresenceSummary::default();
    let mut root_note = String::new();
    let mut person_note = String::new();
    for child in &doc.children {
        let read = Element::read(&child.raw);
        match child.kind {
            Kind::Note if root_note.is_empty() => root_note = read.own_text.trim().to_string(),
            Kind::Person if person_note.is_empty() => person_note = read.note,
            Kind::Tuple => summary.tuples.push(TupleSummary {
                id: child.id.clone().unwrap_or_default(),
                open: read.basic.as_deref().and_then(|b| {
                    let b = b.trim();
                    if b.eq_ignore_ascii_case("open") {
                        Some(true)
                    } else if b.eq_ignore_ascii_case("closed") {
                        Some(false)
                    } else {
                        None
                    }
                }),
                contact: read.contact,
                note: read.note,
            }),
            _ => {}
        }
        for activity in read.activities {
            if !summary.activities.contains(&activity) {
                summary.activities.push(activity);
            }
        }
    }
    let states = summary.tuples.iter().filter_map(|t| t.open);
    summary.basic = states.reduce(|a, b| a || b);
    let tuple_note = summary
        .tuples
        .iter()
        .map(|t| &t.note)
        .find(|n| !n.is_empty());
    summary.note = [Some(&root_note), Some(&person_note), tuple_note]
        .into_iter()
        .flatten()
        .find(|n| !n.is_empty())
        .cloned()
        .unwrap_or_default();
    Some(summary)
}

/// The dialogs of a dialog-info document; `None` if [`dialog::parse`]
/// refuses it.
pub fn dialogs(body: &[u8]) -> Option<Vec<DialogSummary>> {
    let info = dialog::parse(body).ok()?;
    Some(
        info.dialogs
            .into_iter()
            .map(|d| {
                let mut direction = String::new();
                let mut remote = String::new();
                let mut identities = 0usize;
                walk(&d.raw, |step| match step {
                    Step::Open { path, element } => match path {
                        [_] => {
                            let dir = pidf::attribute(element, b"direction")
                                .ok()
                                .flatten()
                                .unwrap_or_default()
                                .trim()
                                .to_ascii_lowercase();
                            if dir == "initiator" || dir == "recipient" {
                                direction = dir;
                            }
                        }
                        [_, r, i] if r == "remote" && i == "identity" => {
                            identities += 1;
                        }
                        _ => {}
                    },
                    Step::Text { path, text } => {
                        if identities == 1
                            && matches!(path, [_, r, i] if r == "remote" && i == "identity")
                        {
                            remote.push_str(text);
                        }
                    }
                });
                DialogSummary {
                    id: d.id,
                    state: d.state,
                    direction,
                    remote: remote.trim().to_string(),
                }
            })
            .collect(),
    )
}

/// The summary of a message-summary body; `None` if [`mwi::check`]
/// refuses it.
pub fn message_summary(body: &[u8]) -> Option<MessageSummary> {
    mwi::check(body).ok()?;
    let text = std::str::from_utf8(body).ok()?;
    let mut summary = MessageSummary::default();
    for (i, line) in text.split('\n').enumerate() {
        if line.trim().is_empty() {
            // The optional message headers follow.
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        if i == 0 {
            summary.waiting = value.eq_ignore_ascii_case("yes");
        } else if name.eq_ignore_ascii_case("Message-Account") && summary.account.is_empty() {
            summary.account = value.to_string();
        } else if name.eq_ignore_ascii_case("Voice-Message") && summary.voice.is_empty() {
            summary.voice = value.to_string();
        }
    }
    Some(summary)
}

/// The lamp of someone with presence `p` and calls `dialogs` (either
/// unknown: `None`). Offline unless a tuple is open; on the phone with a
/// call in progress ([`CALL_STATES`], also when there is no presence at
/// all) or the activity `on-the-phone`; else busy ([`BUSY_ACTIVITIES`]),
/// else away ([`AWAY_ACTIVITIES`]), else available. On the phone beats
/// busy beats away. Activities are compared case-insensitively.
pub fn availability(
    p: Option<&PresenceSummary>,
    dialogs: Option<&[DialogSummary]>,
) -> Availability {
    let in_call = dialogs.unwrap_or_default().iter().any(|d| {
        CALL_STATES
            .iter()
            .any(|s| s.eq_ignore_ascii_case(d.state.trim()))
    });
    let Some(p) = p else {
        return if in_call {
            Availability::OnThePhone
        } else {
            Availability::Offline
        };
    };
    if p.basic != Some(true) {
        return Availability::Offline;
    }
    let doing = |list: &[&str]| {
        p.activities
            .iter()
            .any(|a| list.iter().any(|l| l.eq_ignore_ascii_case(a)))
    };
    if in_call || doing(&["on-the-phone"]) {
        Availability::OnThePhone
    } else if doing(BUSY_ACTIVITIES) {
        Availability::Busy
    } else if doing(AWAY_ACTIVITIES) {
        Availability::Away
    } else {
        Availability::Available
    }
}

/// What one top-level child of a PIDF document holds that a summary uses.
#[derive(Default)]
struct Element {
    /// The element's own text (a root `<note>`'s).
    own_text: String,
    /// `<status><basic>` (a tuple's).
    basic: Option<String>,
    /// The first `<contact>` child, trimmed.
    contact: String,
    /// The first non-empty `<note>` child, trimmed.
    note: String,
    /// Activities in document order (not deduplicated).
    activities: Vec<String>,
}

impl Element {
    fn read(raw: &str) -> Element {
        let mut own_text = String::new();
        let mut basics: Vec<String> = Vec::new();
        let mut contacts: Vec<String> = Vec::new();
        let mut notes: Vec<String> = Vec::new();
        // Each activity's name, and the text of an <other> (or pre-RFC
        // <activity>) one.
        let mut activities: Vec<(String, Option<String>)> = Vec::new();
        walk(raw, |step| match step {
            Step::Open { path, .. } => match path {
                [_, name] if name == "note" => notes.push(String::new()),
                [_, name] if name == "contact" => contacts.push(String::new()),
                [_, status, name] if status == "status" && name == "basic" => {
                    basics.push(String::new())
                }
                [.., parent, name] if parent == "activities" && name != "note" => {
                    let text = matches!(name.as_str(), "other" | "activity").then(String::new);
                    activities.push((name.clone(), text));
                }
                _ => {}
            },
            Step::Text { path, text } => {
                let into = match path {
                    [_] => Some(&mut own_text),
                    [_, name] if name == "note" => notes.last_mut(),
                    [_, name] if name == "contact" => contacts.last_mut(),
                    [_, status, name] if status == "status" && name == "basic" => basics.last_mut(),
                    [.., parent, _] if parent == "activities" => {
                        activities.last_mut().and_then(|(_, t)| t.as_mut())
                    }
                    _ => None,
                };
                if let Some(into) = into {
                    into.push_str(text);
                }
            }
        });
        let first = |texts: Vec<String>| {
            texts
                .iter()
                .map(|t| t.trim())
                .find(|t| !t.is_empty())
                .unwrap_or_default()
                .to_string()
        };
        Element {
            own_text,
            basic: basics.into_iter().next(),
            contact: contacts.first().map_or("", |c| c.trim()).to_string(),
            note: first(notes),
            activities: activities
                .into_iter()
                .map(|(name, text)| match text.as_deref().map(str::trim) {
                    Some(t) if !t.is_empty() => t.to_string(),
                    _ => name,
                })
                .collect(),
        }
    }
}

/// What [`walk`] shows: an element opening, with the local names from the
/// walked element down to it, or a piece of text of the innermost open
/// element.
enum Step<'a, 'b> {
    Open {
        path: &'a [String],
        element: &'a BytesStart<'b>,
    },
    Text {
        path: &'a [String],
        text: &'a str,
    },
}

/// Walk one element that [`pidf::parse_raw`] kept (already checked).
///
/// Like [`pidf::walk`], but text comes with character references
/// (`&#233;`) resolved and CDATA sections included, as a note may well
/// hold them and `pidf::walk` stops at the first character reference.
/// Anything unexpected ends the walk (`None`), keeping what was seen.
fn walk(raw: &str, mut visit: impl FnMut(Step<'_, '_>)) -> Option<()> {
    let mut reader = Reader::from_str(raw);
    let mut path: Vec<String> = Vec::new();
    loop {
        match reader.read_event().ok()? {
            Event::Start(e) => {
                path.push(String::from_utf8_lossy(e.local_name().as_ref()).into_owned());
                visit(Step::Open {
                    path: &path,
                    element: &e,
                });
            }
            Event::Empty(e) => {
                path.push(String::from_utf8_lossy(e.local_name().as_ref()).into_owned());
                visit(Step::Open {
                    path: &path,
                    element: &e,
                });
                path.pop();
            }
            Event::End(_) => {
                path.pop()?;
            }
            Event::Text(t) => {
                if let Ok(text) = t.decode() {
                    visit(Step::Text {
                        path: &path,
                        text: &text,
                    });
                }
            }
            Event::CData(c) => {
                if let Ok(text) = c.decode() {
                    visit(Step::Text {
                        path: &path,
                        text: &text,
                    });
                }
            }
            Event::GeneralRef(r) => {
                let mut buf = [0u8; 4];
                let text = match r.resolve_char_ref() {
                    Ok(Some(c)) => Some(&*c.encode_utf8(&mut buf)),
                    Ok(None) => pidf::predefined_entity(&r),
                    Err(_) => None,
                };
                if let Some(text) = text {
                    visit(Step::Text { path: &path, text });
                }
            }
            Event::Eof => return Some(()),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    /// A tuple open, an RPID activity and a note on the person (RFC 4480
    /// style, as most desk phones and softphones publish).
    const AWAY: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<presence xmlns="urn:ietf:params:xml:ns:pidf"
          xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model"
          xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid"
          entity="sip:alice@example.com">
  <tuple id="t8a7d">
    <status><basic>open</basic></status>
    <contact priority="0.8">sip:alice@192.0.2.10:5060</contact>
    <timestamp>2024-05-01T10:00:00Z</timestamp>
  </tuple>
  <dm:person id="p1">
    <rpid:activities><rpid:away/></rpid:activities>
    <dm:note xml:lang="en"> Back at 3 </dm:note>
  </dm:person>
</presence>"#;

    /// Two devices, one of them closed; notes on a tuple only.
    const TWO_TUPLES: &str = r#"<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:bob@example.com"><tuple id="desk"><status><basic>closed</basic></status><contact>sip:bob@192.0.2.20</contact></tuple><tuple id="mobile"><status><basic>open</basic></status><contact>sip:bob@198.51.100.7:5070;transport=tcp</contact><note>on the road</note></tuple></presence>"#;

    /// As baresip's presence module publishes (`<rpid:busy/>` when the
    /// user sets "busy").
    const BARESIP: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<presence xmlns="urn:ietf:params:xml:ns:pidf"
    xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model"
    xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid"
    entity="sip:carol@example.com">
  <dm:person id="p4711">
    <rpid:activities><rpid:busy/></rpid:activities>
  </dm:person>
  <tuple id="t4711">
    <status><basic>open</basic></status>
    <contact>sip:carol@example.com</contact>
  </tuple>
</presence>
"#;

    /// In the style of Linphone: the `rp:` prefix, a timestamped person with
    /// an activity and a root note with a language.
    const LINPHONE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model" xmlns:rp="urn:ietf:params:xml:ns:pidf:rpid" entity="sip:dave@sip.example.org">
 <tuple id="qmdmbd">
  <status><basic>open</basic></status>
  <contact priority="0.8">sip:dave@sip.example.org</contact>
  <timestamp>2024-05-01T10:12:31Z</timestamp>
 </tuple>
 <dm:person id="sip3a2a">
  <rp:activities><rp:on-the-phone/><rp:busy/></rp:activities>
  <dm:timestamp>2024-05-01T10:12:31Z</dm:timestamp>
 </dm:person>
 <note xml:lang="en">In a call</note>
</presence>"#;

    #[test]
    fn an_away_person_with_a_note() {
        let p = presence(AWAY.as_bytes()).unwrap();
        assert_eq!(
            p,
            PresenceSummary {
                basic: Some(true),
                activities: vec!["away".into()],
                note: "Back at 3".into(),
                tuples: vec![TupleSummary {
                    id: "t8a7d".into(),
                    open: Some(true),
                    contact: "sip:alice@192.0.2.10:5060".into(),
                    note: String::new(),
                }],
            }
        );
        assert_eq!(availability(Some(&p), None), Availability::Away);
    }

    #[test]
    fn two_tuples_one_closed() {
        let p = presence(TWO_TUPLES.as_bytes()).unwrap();
        assert_eq!(p.basic, Some(true));
        let tuples: Vec<(&str, Option<bool>, &str)> = p
            .tuples
            .iter()
            .map(|t| (t.id.as_str(), t.open, t.contact.as_str()))
            .collect();
        assert_eq!(
            tuples,
            [
                ("desk", Some(false), "sip:bob@192.0.2.20"),
                (
                    "mobile",
                    Some(true),
                    "sip:bob@198.51.100.7:5070;transport=tcp"
                ),
            ]
        );
        assert_eq!(p.note, "on the road", "the first tuple note");
        assert!(p.activities.is_empty());
        assert_eq!(availability(Some(&p), None), Availability::Available);
        // Both closed.
        let closed = TWO_TUPLES.replace(">open<", ">closed<");
        let p = presence(closed.as_bytes()).unwrap();
        assert_eq!(p.basic, Some(false));
        assert_eq!(availability(Some(&p), None), Availability::Offline);
    }

    #[test]
    fn baresip_and_linphone_documents() {
        let p = presence(BARESIP.as_bytes()).unwrap();
        assert_eq!(p.basic, Some(true));
        assert_eq!(p.activities, ["busy"]);
        assert_eq!(p.note, "");
        assert_eq!(p.tuples[0].contact, "sip:carol@example.com");
        assert_eq!(availability(Some(&p), None), Availability::Busy);

        let p = presence(LINPHONE.as_bytes()).unwrap();
        assert_eq!(p.activities, ["on-the-phone", "busy"]);
        assert_eq!(p.note, "In a call");
        assert_eq!(p.tuples[0].id, "qmdmbd");
        assert_eq!(availability(Some(&p), None), Availability::OnThePhone);
    }

    #[test]
    fn notes_come_from_the_root_then_the_person_then_a_tuple() {
        let doc = |inner: &str| {
            format!(
                r#"<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model" xmlns:r="urn:ietf:params:xml:ns:pidf:rpid" entity="sip:a@example.com">{inner}</presence>"#
            )
        };
        let tuple =
            r#"<tuple id="t"><status><basic>open</basic></status><note>tuple note</note></tuple>"#;
        let person = r#"<dm:person id="p"><r:activities><r:note>not this</r:note><r:meeting/></r:activities><dm:note>person note</dm:note></dm:person>"#;
        let root = "<note xml:lang=\"en\">  </note><note xml:lang=\"de\">\n Wurzel </note><note>later</note>";
        let note = |inner: &str| presence(doc(inner).as_bytes()).unwrap().note;
        assert_eq!(note(&format!("{tuple}{person}{root}")), "Wurzel");
        assert_eq!(note(&format!("{tuple}{person}")), "person note");
        assert_eq!(note(tuple), "tuple note");
        assert_eq!(note(""), "");
        let p = presence(doc(&format!("{tuple}{person}")).as_bytes()).unwrap();
        assert_eq!(
            p.activities,
            ["meeting"],
            "an activities note is no activity"
        );
        // References, CDATA and markup inside a note.
        assert_eq!(
            note("<note>Caf&#233; &amp; th&#xE9; &lt;3</note>"),
            "Café & thé <3"
        );
        assert_eq!(note("<note><![CDATA[<b>bold</b>]]></note>"), "<b>bold</b>");
        assert_eq!(note("<note>a<x>b</x>c</note>"), "ac");
        // Only the person's own <note>, not one deeper.
        assert_eq!(
            note(r#"<dm:person id="p"><x><dm:note>deep</dm:note></x></dm:person>"#),
            ""
        );
    }

    #[test]
    fn activities_other_deduplicated_and_pre_rfc() {
        let body = r#"<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid" xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model" xmlns:es="urn:ietf:params:xml:ns:pidf:status:rpid-status" entity="sip:e@example.com">
<tuple id="t1"><status><basic>open</basic><es:activities><es:activity>away</es:activity></es:activities></status></tuple>
<dm:person id="p"><rpid:activities><rpid:other xml:lang="en"> Out to lunch </rpid:other><rpid:away/><rpid:other/><rpid:steppingOut/></rpid:activities></dm:person>
<dm:device id="d"><rpid:activities><rpid:away/></rpid:activities></dm:device>
</presence>"#;
        let p = presence(body.as_bytes()).unwrap();
        assert_eq!(
            p.activities,
            ["away", "Out to lunch", "other", "steppingOut"]
        );
        assert_eq!(availability(Some(&p), None), Availability::Away);
    }

    #[test]
    fn basic_is_none_without_any() {
        let body = r#"<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model" entity="sip:a@example.com"><tuple id="t"><status/></tuple><tuple id="u"><status><basic>maybe</basic></status></tuple><dm:person id="p"/></presence>"#;
        let p = presence(body.as_bytes()).unwrap();
        assert_eq!(p.basic, None);
        assert_eq!(p.tuples.len(), 2);
        assert!(p.tuples.iter().all(|t| t.open.is_none()));
        assert_eq!(availability(Some(&p), None), Availability::Offline);
        // The pre-RFC namespace and the seed paper's spelling of open.
        let cpim = br#"<presence xmlns="urn:ietf:params:xml:ns:cpim-pidf" entity="pres:kmh@sip2.kumoh.ac.kr"><tuple id="irt-lab-pc"><status><basic> OPEN </basic></status></tuple></presence>"#;
        assert_eq!(presence(cpim).unwrap().basic, Some(true));
        // An empty document.
        let empty =
            presence(br#"<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:a@b"/>"#);
        assert_eq!(empty, Some(PresenceSummary::default()));
    }

    #[test]
    fn what_is_not_pidf_has_no_summary() {
        for bad in [
            &b""[..],
            b"<presence/>",
            b"\xff\xfe",
            b"Messages-Waiting: yes\r\n",
            br#"<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" version="1" state="full" entity="sip:a@b"/>"#,
            br#"<presence xmlns="urn:ietf:params:xml:ns:pidf"><note>&foo;</note></presence>"#,
        ] {
            assert_eq!(presence(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    const DIALOGS: &str = r#"<?xml version="1.0"?>
<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" version="3" state="full" entity="sip:2001@example.com">
  <dialog id="as7d900as8" call-id="a84b4c76e66710" local-tag="1928301774" remote-tag="456" direction="initiator">
    <state>confirmed</state>
    <duration>274</duration>
    <local><identity display="Alice">sip:2001@example.com</identity><target uri="sip:2001@192.0.2.10"/></local>
    <remote><identity display="Bob">
      sip:bob@example.com
    </identity><identity>tel:+15551234</identity><target uri="sip:bob@198.51.100.7"/></remote>
  </dialog>
  <dialog id="ring" call-id="c2" direction="Recipient"><state>early</state></dialog>
  <dialog id="odd" direction="sideways"><state>terminated</state><remote><identity>sip:x@example.com&#x3B;user=phone</identity></remote></dialog>
</dialog-info>"#;

    #[test]
    fn dialogs_with_direction_and_remote_identity() {
        let ds = dialogs(DIALOGS.as_bytes()).unwrap();
        assert_eq!(
            ds,
            [
                DialogSummary {
                    id: "as7d900as8".into(),
                    state: "confirmed".into(),
                    direction: "initiator".into(),
                    remote: "sip:bob@example.com".into(),
                },
                DialogSummary {
                    id: "ring".into(),
                    state: "early".into(),
                    direction: "recipient".into(),
                    remote: String::new(),
                },
                DialogSummary {
                    id: "odd".into(),
                    state: "terminated".into(),
                    direction: String::new(),
                    remote: "sip:x@example.com;user=phone".into(),
                },
            ]
        );
        let idle = br#"<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" version="0" state="full" entity="sip:2001@example.com"/>"#;
        assert_eq!(dialogs(idle), Some(vec![]));
        assert_eq!(dialogs(AWAY.as_bytes()), None);
        assert_eq!(dialogs(b"<dialog-info"), None);
    }

    #[test]
    fn message_summaries() {
        let ms = |b: &str| message_summary(b.as_bytes());
        assert_eq!(
            ms("Messages-Waiting: yes\r\nMessage-Account: sip:alice@vmail.example.com\r\nVoice-Message: 2/8 (0/2)\r\n"),
            Some(MessageSummary {
                waiting: true,
                account: "sip:alice@vmail.example.com".into(),
                voice: "2/8 (0/2)".into(),
            })
        );
        assert_eq!(ms(mwi::NO_MESSAGES), Some(MessageSummary::default()));
        assert_eq!(
            ms("messages-waiting:YES\nfax-message: 1/0\nvoice-message:4/8\n"),
            Some(MessageSummary {
                waiting: true,
                account: String::new(),
                voice: "4/8".into(),
            })
        );
        // The message headers after the blank line are not summary lines.
        assert_eq!(
            ms("Messages-Waiting: no\r\n\r\nVoice-Message: 9/9\r\nMessage-Account: x\r\n"),
            Some(MessageSummary::default())
        );
        assert_eq!(ms("Messages-Waiting: maybe\r\n"), None);
        assert_eq!(ms(AWAY), None);
        assert_eq!(message_summary(b"\xff"), None);
    }

    fn call(state: &str) -> DialogSummary {
        DialogSummary {
            id: "d".into(),
            state: state.into(),
            ..DialogSummary::default()
        }
    }

    #[test]
    fn the_lamp() {
        use Availability::*;
        let with = |basic: Option<bool>, activities: &[&str]| PresenceSummary {
            basic,
            activities: activities.iter().map(|a| a.to_string()).collect(),
            ..PresenceSummary::default()
        };
        let cases: Vec<(Option<PresenceSummary>, Vec<DialogSummary>, Availability)> = vec![
            (None, vec![], Offline),
            (None, vec![call("terminated")], Offline),
            (None, vec![call("early")], OnThePhone),
            (Some(with(Some(false), &["busy"])), vec![], Offline),
            (
                Some(with(None, &["on-the-phone"])),
                vec![call("confirmed")],
                Offline,
            ),
            (Some(with(Some(true), &[])), vec![], Available),
            (
                Some(with(Some(true), &["unknown", "lunch"])),
                vec![],
                Available,
            ),
            (Some(with(Some(true), &["vacation"])), vec![], Away),
            (Some(with(Some(true), &["SteppingOut"])), vec![], Away),
            (
                Some(with(Some(true), &["away", "presentation"])),
                vec![],
                Busy,
            ),
            (
                Some(with(Some(true), &["worship", "on-the-phone"])),
                vec![],
                OnThePhone,
            ),
            (
                Some(with(Some(true), &["away"])),
                vec![call("trying")],
                OnThePhone,
            ),
            (
                Some(with(Some(true), &[])),
                vec![call("proceeding")],
                OnThePhone,
            ),
            (
                Some(with(Some(true), &["meeting"])),
                vec![call("terminated"), call("Confirmed")],
                OnThePhone,
            ),
            (
                Some(with(Some(true), &["meeting"])),
                vec![call("terminated")],
                Busy,
            ),
        ];
        for (p, ds, want) in cases {
            assert_eq!(availability(p.as_ref(), Some(&ds)), want, "{p:?} {ds:?}");
        }
        assert_eq!(
            availability(Some(&with(Some(true), &["sleeping"])), None),
            Away
        );
        let names: Vec<&str> = [Available, Away, Busy, OnThePhone, Offline]
            .iter()
            .map(Availability::as_str)
            .collect();
        assert_eq!(
            names,
            ["available", "away", "busy", "on-the-phone", "offline"]
        );
    }

    #[test]
    fn the_lamp_from_documents() {
        let p = presence(AWAY.as_bytes()).unwrap();
        let ds = dialogs(DIALOGS.as_bytes()).unwrap();
        assert_eq!(availability(Some(&p), Some(&ds)), Availability::OnThePhone);
        assert_eq!(availability(None, Some(&ds[2..])), Availability::Offline);
    }

    const PIECES: &[&str] = &[
        "<",
        ">",
        "/>",
        "</",
        "&",
        ";",
        "&amp;",
        "&#233;",
        "&#x0;",
        "&foo;",
        "\"",
        "=",
        "<note>",
        "</note>",
        "<rpid:activities>",
        "</rpid:activities>",
        "<rpid:away/>",
        "<rpid:other>",
        "</rpid:other>",
        "<basic>",
        "</basic>",
        "open",
        "closed",
        "<![CDATA[",
        "]]>",
        "<!--",
        "-->",
        "<state>",
        "</state>",
        "confirmed",
        "<remote>",
        "<identity>",
        "</identity>",
        "direction=\"initiator\"",
        "\r\n",
        "\n",
        ":",
        "yes",
        "/",
        " ",
        "é",
    ];

    fn mutate(rng: &mut StdRng, input: &[u8]) -> Vec<u8> {
        let mut out = input.to_vec();
        for _ in 0..rng.random_range(1..=2) {
            let at = rng.random_range(0..=out.len());
            match rng.random_range(0..4) {
                0 => {
                    let piece = PIECES[rng.random_range(0..PIECES.len())];
                    out.splice(at..at, piece.bytes());
                }
                1 if at < out.len() => {
                    let end = (at + rng.random_range(1..16)).min(out.len());
                    out.drain(at..end);
                }
                2 if at < out.len() => out[at] = rng.random(),
                _ => out.insert(at, rng.random()),
            }
        }
        out
    }

    /// No bytes panic a reader, noise or a real document with a few
    /// changes; whatever is read is consistent: `basic` agrees with the
    /// tuples, activities are each shown once, texts are trimmed.
    #[test]
    fn property_nothing_panics_and_summaries_are_consistent() {
        let mut rng = StdRng::seed_from_u64(4480);
        let seeds: Vec<&[u8]> = vec![
            AWAY.as_bytes(),
            TWO_TUPLES.as_bytes(),
            BARESIP.as_bytes(),
            LINPHONE.as_bytes(),
            DIALOGS.as_bytes(),
            b"Messages-Waiting: yes\r\nMessage-Account: sip:a@vm.example.com\r\nVoice-Message: 2/8 (0/2)\r\n",
        ];
        let mut read = 0usize;
        for i in 0..15_000 {
            let input = if i % 3 == 0 {
                (0..rng.random_range(0..120usize))
                    .map(|_| rng.random::<u8>())
                    .collect()
            } else {
                let seed = seeds[rng.random_range(0..seeds.len())];
                mutate(&mut rng, seed)
            };
            let p = presence(&input);
            if let Some(p) = &p {
                read += 1;
                let any_open = p.tuples.iter().any(|t| t.open == Some(true));
                let any_basic = p.tuples.iter().any(|t| t.open.is_some());
                assert_eq!(p.basic, any_basic.then_some(any_open));
                for (j, a) in p.activities.iter().enumerate() {
                    assert!(!a.is_empty() && a.trim() == a);
                    assert!(!p.activities[..j].contains(a));
                }
                assert_eq!(p.note.trim(), p.note);
            }
            let ds = dialogs(&input);
            if let Some(ds) = &ds {
                read += 1;
                for d in ds {
                    assert!(["initiator", "recipient", ""].contains(&d.direction.as_str()));
                    assert!(dialog::STATES.contains(&d.state.as_str()));
                    assert_eq!(d.remote.trim(), d.remote);
                }
            }
            if message_summary(&input).is_some() {
                read += 1;
            }
            let _ = availability(p.as_ref(), ds.as_deref());
        }
        assert!(read > 1_000, "only {read} inputs read");
    }
}

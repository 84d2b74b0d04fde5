//! dialog-info documents (RFC 4235), the state behind BLF lamps: a PBX or
//! proxy PUBLISHes the dialogs of an extension, a phone watching it lights
//! a lamp per state and picks up a ringing call by the dialog's
//! identifiers. Each `<dialog>` is kept raw (call-id, tags, direction,
//! `<local>`/`<remote>` identities and whatever else the publisher put
//! there reach the phone unchanged); only its `id` and `<state>` are read.
//! Composition merges the dialogs of every live publication of the
//! extension into one full-state document; its `version` is the
//! subscription's own (RFC 4235 §4.1), stamped per NOTIFY by [`stamp`].

use crate::pidf::{self, parse_raw, PidfError};
use quick_xml::events::Event;
use quick_xml::Reader;

pub const DIALOG_NS: &str = "urn:ietf:params:xml:ns:dialog-info";

/// The dialog states of RFC 4235 §4.1.6.3.
pub const STATES: &[&str] = &["trying", "proceeding", "early", "confirmed", "terminated"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dialog {
    pub id: String,
    /// One of [`STATES`], lower case.
    pub state: String,
    /// The `<dialog>` element as published.
    pub raw: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DialogInfo {
    /// `xmlns:prefix` declarations of the root, kept for the dialogs that
    /// use them.
    pub namespaces: Vec<(String, String)>,
    pub dialogs: Vec<Dialog>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DialogError {
    #[error("root element is not a <dialog-info> in {DIALOG_NS}")]
    NotDialogInfo,
    #[error("a <dialog> without an id")]
    NoId,
    #[error("dialog {0:?} has no <state> or an unknown one")]
    State(String),
    #[error("{0}")]
    Xml(String),
}

/// Parse and check a dialog-info document (the checks and limits of the
/// PIDF parser: no DOCTYPE, bounded size and depth, well-formed).
pub fn parse(body: &[u8]) -> Result<DialogInfo, DialogError> {
    let raw = parse_raw(body, b"dialog-info", &|ns| ns == DIALOG_NS).map_err(|e| match e {
        PidfError::NotPidf => DialogError::NotDialogInfo,
        other => DialogError::Xml(other.to_string()),
    })?;
    let mut info = DialogInfo {
        namespaces: raw.namespaces,
        dialogs: Vec::new(),
    };
    for child in raw.children.into_iter().filter(|c| c.local == "dialog") {
        let id = child.id.ok_or(DialogError::NoId)?;
        let state = state_of(&child.raw).ok_or_else(|| DialogError::State(id.clone()))?;
        info.dialogs.push(Dialog {
            id,
            state,
            raw: child.raw,
        });
    }
    Ok(info)
}

/// The text of the dialog's own `<state>` child, if it is a known state.
fn state_of(raw: &str) -> Option<String> {
    let mut reader = Reader::from_str(raw);
    let mut depth = 0usize;
    let mut in_state = false;
    loop {
        match reader.read_event().ok()? {
            Event::Start(e) => {
                depth += 1;
                in_state = depth == 2 && e.local_name().as_ref() == b"state";
            }
            Event::End(_) => {
                depth = depth.checked_sub(1)?;
                in_state = false;
            }
            Event::Text(t) if in_state => {
                let state = String::from_utf8_lossy(&t).trim().to_ascii_lowercase();
                return STATES.contains(&state.as_str()).then_some(state);
            }
            Event::Eof => return None,
            _ => {}
        }
    }
}

/// One full-state document for `entity` from its publications, oldest
/// first. A dialog id published twice shows the newer; a terminated dialog
/// shows only while it comes from the newest publication (it is notified
/// with the change that ended it, then dropped by the next change). The
/// root's `version` is 0 here: [`stamp`] sets each NOTIFY's.
pub fn compose<'a>(entity: &str, docs: impl IntoIterator<Item = &'a DialogInfo>) -> String {
    let docs: Vec<&DialogInfo> = docs.into_iter().collect();
    let newest = docs.len().saturating_sub(1);
    let mut namespaces: Vec<(String, String)> = Vec::new();
    let mut dialogs: Vec<&Dialog> = Vec::new();
    for (i, doc) in docs.iter().enumerate() {
        for ns in &doc.namespaces {
            if !namespaces.iter().any(|(p, _)| *p == ns.0) {
                namespaces.push(ns.clone());
            }
        }
        for d in &doc.dialogs {
            dialogs.retain(|x| x.id != d.id);
            if d.state != "terminated" || i == newest {
                dialogs.push(d);
            }
        }
    }
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    out += &format!(
        "<dialog-info xmlns=\"{DIALOG_NS}\" version=\"0\" state=\"full\" entity=\"{}\"",
        pidf::escape(entity)
    );
    for (prefix, uri) in &namespaces {
        out += &format!(" xmlns:{prefix}=\"{}\"", pidf::escape(uri));
    }
    out += ">\n";
    for d in dialogs {
        out += &d.raw;
        out.push('\n');
    }
    out += "</dialog-info>\n";
    out
}

/// `body` (a document [`compose`] made) with the root's `version` set to
/// `version`; `None` if it has no such attribute where compose puts it.
pub fn stamp(body: &[u8], version: u32) -> Option<Vec<u8>> {
    pidf::stamp_version(body, b"<dialog-info ", version)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    fn dialog(id: &str, state: &str) -> String {
        format!(
            r#"<dialog id="{id}" call-id="c-{id}" local-tag="lt-{id}" remote-tag="rt-{id}" direction="recipient"><state>{state}</state><local><identity>sip:2001@example.com</identity></local><remote><identity display="Bob">sip:bob@example.com</identity></remote></dialog>"#
        )
    }

    fn info(dialogs: &[String]) -> String {
        format!(
            r#"<?xml version="1.0"?><dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" version="7" state="full" entity="sip:2001@example.com">{}</dialog-info>"#,
            dialogs.concat()
        )
    }

    #[test]
    fn dialogs_are_read_with_their_state_and_kept_raw() {
        let d = parse(info(&[dialog("a", "Confirmed"), dialog("b", "early")]).as_bytes()).unwrap();
        assert_eq!(d.dialogs.len(), 2);
        assert_eq!(d.dialogs[0].state, "confirmed");
        assert_eq!(d.dialogs[1].id, "b");
        assert!(d.dialogs[0].raw.contains(r#"call-id="c-a""#));
        assert!(d.dialogs[0]
            .raw
            .contains("<remote><identity display=\"Bob\">"));
        // No dialog at all: a valid "idle" document.
        assert!(parse(info(&[]).as_bytes()).unwrap().dialogs.is_empty());
    }

    #[test]
    fn what_is_not_dialog_info_is_refused() {
        let pidf = br#"<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:a@b"/>"#;
        assert_eq!(parse(pidf), Err(DialogError::NotDialogInfo));
        let wrong_ns =
            br#"<dialog-info xmlns="urn:example" version="0" state="full" entity="sip:a@b"/>"#;
        assert_eq!(parse(wrong_ns), Err(DialogError::NotDialogInfo));
        let no_id = info(&["<dialog><state>early</state></dialog>".into()]);
        assert_eq!(parse(no_id.as_bytes()), Err(DialogError::NoId));
        let bad_state = info(&[dialog("x", "ringing")]);
        assert_eq!(
            parse(bad_state.as_bytes()),
            Err(DialogError::State("x".into()))
        );
        let no_state = info(&[r#"<dialog id="y"/>"#.into()]);
        assert_eq!(
            parse(no_state.as_bytes()),
            Err(DialogError::State("y".into()))
        );
        assert!(matches!(parse(b"<dialog-info"), Err(DialogError::Xml(_))));
    }

    #[test]
    fn composition_merges_publications_and_drops_old_terminated_dialogs() {
        let pbx1 =
            parse(info(&[dialog("a", "confirmed"), dialog("t", "terminated")]).as_bytes()).unwrap();
        let pbx2 = parse(info(&[dialog("b", "early")]).as_bytes()).unwrap();
        // pbx1 newest: its terminated dialog is shown (the change that ended it).
        let doc = compose("sip:2001@example.com", [&pbx2, &pbx1]);
        let parsed = parse(doc.as_bytes()).expect("a valid document");
        let ids: Vec<&str> = parsed.dialogs.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["b", "a", "t"]);
        assert!(doc.contains(r#"version="0" state="full" entity="sip:2001@example.com""#));
        // pbx2 changed since: the terminated dialog of pbx1 is gone.
        let doc = compose("sip:2001@example.com", [&pbx1, &pbx2]);
        let ids: Vec<String> = parse(doc.as_bytes())
            .unwrap()
            .dialogs
            .into_iter()
            .map(|d| d.id)
            .collect();
        assert_eq!(ids, ["a", "b"]);
        // Nothing published: an empty full-state document.
        let empty = compose("sip:2001@example.com", []);
        assert!(parse(empty.as_bytes()).unwrap().dialogs.is_empty());
    }

    #[test]
    fn a_stamp_sets_the_version_and_nothing_else() {
        let doc = compose(
            "sip:2001@example.com",
            [&parse(info(&[dialog("a", "early")]).as_bytes()).unwrap()],
        );
        let v5 = stamp(doc.as_bytes(), 5).unwrap();
        let v12 = stamp(&v5, 12).unwrap();
        let text = String::from_utf8(v12).unwrap();
        assert_eq!(text, doc.replace(r#"version="0""#, r#"version="12""#));
        // The dialog's own attributes are untouched (no version there).
        assert!(text.contains(r#"<dialog id="a""#));
        assert_eq!(stamp(b"<presence/>", 1), None);
    }

    /// No input panics the parser, also a valid document with one byte
    /// changed; every document compose makes parses back with the dialogs
    /// it was given; a stamp keeps it valid.
    #[test]
    fn property_compose_round_trips_and_nothing_panics() {
        let mut rng = StdRng::seed_from_u64(4235);
        for _ in 0..2_000 {
            let n = rng.random_range(0..5usize);
            let dialogs: Vec<String> = (0..n)
                .map(|i| dialog(&format!("d{i}"), STATES[rng.random_range(0..4usize)]))
                .collect();
            let body = info(&dialogs);
            let parsed = parse(body.as_bytes()).expect("valid");
            let doc = compose("sip:x@example.com", [&parsed]);
            let again = parse(doc.as_bytes()).expect("compose makes valid documents");
            assert_eq!(again.dialogs, parsed.dialogs);
            let stamped = stamp(doc.as_bytes(), rng.random::<u32>()).expect("stampable");
            assert_eq!(
                parse(&stamped).expect("still valid").dialogs,
                parsed.dialogs
            );

            let mut mutated = body.into_bytes();
            let at = rng.random_range(0..mutated.len());
            mutated[at] = rng.random::<u8>();
            let _ = parse(&mutated);
            let noise: Vec<u8> = (0..rng.random_range(0..100usize))
                .map(|_| rng.random::<u8>())
                .collect();
            let _ = parse(&noise);
            let _ = stamp(&noise, 1);
        }
    }
}

//! PIDF (RFC 3863) checking and composition, RPID (RFC 4480) preserving.
//!
//! A document is cut into its top-level children, each kept as the exact XML
//! text the publisher sent (so RPID activities, notes with `xml:lang`,
//! timestamps and unknown extensions pass through untouched), plus the
//! namespace declarations of its root (prefixes used inside children are
//! declared there). Composition merges several publications of one AoR:
//! tuples by `id`, newest wins; one `person` (newest wins, RFC 4479 §3.3);
//! devices by `id`; root notes from the newest publication that has any.

use quick_xml::events::Event;
use quick_xml::Reader;

pub const PIDF_NS: &str = "urn:ietf:params:xml:ns:pidf";
/// The pre-RFC namespace some clients still send (the seed paper's example).
pub const CPIM_PIDF_NS: &str = "urn:ietf:params:xml:ns:cpim-pidf";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Tuple,
    Note,
    Person,
    Device,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Child {
    pub kind: Kind,
    pub id: Option<String>,
    pub raw: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Pidf {
    /// `xmlns:prefix` declarations of the root (prefix, uri); default ns excluded.
    pub namespaces: Vec<(String, String)>,
    pub children: Vec<Child>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PidfError {
    #[error("body is not UTF-8")]
    NotUtf8,
    #[error("malformed XML: {0}")]
    Xml(String),
    #[error("root element is not a PIDF <presence>")]
    NotPidf,
    /// A DOCTYPE declares entities (billion laughs) and external resources;
    /// PIDF needs none, and no watcher's parser should have to face one.
    #[error("DOCTYPE declarations are not accepted")]
    DocType,
    #[error("entity reference &{0}; is not one of XML's five")]
    Entity(String),
    #[error("processing instructions are not accepted")]
    ProcessingInstruction,
    #[error("elements nested deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("an element with more than {MAX_ATTRIBUTES} attributes")]
    TooManyAttributes,
    #[error("more than {MAX_ELEMENTS} elements")]
    TooManyElements,
}

/// Deepest nesting accepted: PIDF with RPID and a device is 5 deep; room for
/// extensions, nowhere near what exhausts a watcher's recursive parser.
pub const MAX_DEPTH: usize = 32;
/// Most attributes on one element: real ones carry a handful. quick-xml's
/// duplicate-attribute check is quadratic in the count, so the count is
/// taken first without it, and the check runs only below this bound.
pub const MAX_ATTRIBUTES: usize = 64;
/// Most elements in one document (a PIDF with dozens of tuples has a few
/// hundred).
pub const MAX_ELEMENTS: usize = 4096;

/// The predefined entities (XML 1.0 §4.6); character references are fine too.
fn allowed_reference(name: &[u8]) -> bool {
    matches!(name, b"amp" | b"lt" | b"gt" | b"apos" | b"quot")
        || (name.first() == Some(&b'#') && name.len() > 1)
}

/// What every element must satisfy: bounded attributes, each well formed
/// with no entity but XML's own.
fn check_element(e: &quick_xml::events::BytesStart<'_>) -> Result<(), PidfError> {
    if e.attributes().with_checks(false).count() > MAX_ATTRIBUTES {
        return Err(PidfError::TooManyAttributes);
    }
    for attr in e.attributes() {
        let attr = attr.map_err(|e| PidfError::Xml(e.to_string()))?;
        let raw = attr.value.as_ref();
        let mut rest = raw;
        while let Some(i) = rest.iter().position(|b| *b == b'&') {
            let after = &rest[i + 1..];
            let Some(end) = after.iter().position(|b| *b == b';') else {
                return Err(PidfError::Xml(
                    "unterminated reference in an attribute".into(),
                ));
            };
            if !allowed_reference(&after[..end]) {
                return Err(PidfError::Entity(
                    String::from_utf8_lossy(&after[..end]).into_owned(),
                ));
            }
            rest = &after[end + 1..];
        }
    }
    Ok(())
}

/// The events no PIDF document needs, refused in both passes.
fn check_event(ev: &Event<'_>) -> Result<(), PidfError> {
    match ev {
        Event::DocType(_) => Err(PidfError::DocType),
        Event::PI(_) => Err(PidfError::ProcessingInstruction),
        Event::GeneralRef(r) => {
            let name: &[u8] = r;
            if allowed_reference(name) {
                Ok(())
            } else {
                Err(PidfError::Entity(
                    String::from_utf8_lossy(name).into_owned(),
                ))
            }
        }
        Event::Start(e) | Event::Empty(e) => check_element(e),
        _ => Ok(()),
    }
}

/// Parse and check a PIDF document.
pub fn parse(body: &[u8]) -> Result<Pidf, PidfError> {
    let text = std::str::from_utf8(body).map_err(|_| PidfError::NotUtf8)?;
    let mut reader = Reader::from_str(text);
    let mut pidf = Pidf::default();
    loop {
        let ev = reader
            .read_event()
            .map_err(|e| PidfError::Xml(e.to_string()))?;
        check_event(&ev)?;
        match ev {
            Event::Start(e) | Event::Empty(e) => {
                if e.local_name().as_ref() != b"presence" {
                    return Err(PidfError::NotPidf);
                }
                let prefix = e
                    .name()
                    .prefix()
                    .map(|p| String::from_utf8_lossy(p.as_ref()).to_string());
                let mut ns_ok = false;
                for attr in e.attributes() {
                    let attr = attr.map_err(|e| PidfError::Xml(e.to_string()))?;
                    let key = String::from_utf8_lossy(attr.key.as_ref()).to_string();
                    let value = attr
                        .unescape_value()
                        .map_err(|e| PidfError::Xml(e.to_string()))?
                        .to_string();
                    let is_pidf = value == PIDF_NS || value == CPIM_PIDF_NS;
                    if key == "xmlns" {
                        ns_ok |= prefix.is_none() && is_pidf;
                    } else if let Some(p) = key.strip_prefix("xmlns:") {
                        ns_ok |= prefix.as_deref() == Some(p) && is_pidf;
                        pidf.namespaces.push((p.to_string(), value));
                    }
                }
                if !ns_ok {
                    return Err(PidfError::NotPidf);
                }
                return parse_children(text, pidf);
            }
            Event::Eof => return Err(PidfError::Xml("no root element".into())),
            Event::Text(t) if !t.iter().all(|b| b.is_ascii_whitespace()) => {
                return Err(PidfError::Xml("text outside the root element".into()));
            }
            _ => {}
        }
    }
}

/// Second pass: cut the top-level children of the root out as raw text.
fn parse_children(text: &str, mut pidf: Pidf) -> Result<Pidf, PidfError> {
    let mut reader = Reader::from_str(text);
    let mut depth = 0usize;
    let mut root_closed = false;
    let mut current: Option<(usize, Kind, Option<String>)> = None;
    let mut elements = 0usize;
    loop {
        let before = reader.buffer_position() as usize;
        let ev = reader
            .read_event()
            .map_err(|e| PidfError::Xml(e.to_string()))?;
        check_event(&ev)?;
        if matches!(ev, Event::Start(_) | Event::Empty(_)) {
            elements += 1;
            if elements > MAX_ELEMENTS {
                return Err(PidfError::TooManyElements);
            }
        }
        match ev {
            Event::Start(e) => {
                if root_closed {
                    return Err(PidfError::Xml("content after the root element".into()));
                }
                if depth >= MAX_DEPTH {
                    return Err(PidfError::TooDeep);
                }
                if depth == 1 {
                    current = Some((before, kind_of(e.local_name().as_ref()), id_of(&e)?));
                }
                depth += 1;
            }
            Event::Empty(e) => {
                if root_closed {
                    return Err(PidfError::Xml("content after the root element".into()));
                }
                if depth == 0 {
                    root_closed = true; // <presence .../>
                } else if depth == 1 {
                    let end = reader.buffer_position() as usize;
                    pidf.children.push(Child {
                        kind: kind_of(e.local_name().as_ref()),
                        id: id_of(&e)?,
                        raw: text[before..end].trim().to_string(),
                    });
                }
            }
            Event::End(_) => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| PidfError::Xml("unbalanced end tag".into()))?;
                if depth == 1 {
                    if let Some((start, kind, id)) = current.take() {
                        let end = reader.buffer_position() as usize;
                        pidf.children.push(Child {
                            kind,
                            id,
                            raw: text[start..end].trim().to_string(),
                        });
                    }
                } else if depth == 0 {
                    root_closed = true;
                }
            }
            Event::Text(t) if depth <= 1 => {
                let raw = t.as_ref();
                if depth == 0 && !raw.iter().all(|b| b.is_ascii_whitespace()) {
                    return Err(PidfError::Xml("text outside the root element".into()));
                }
            }
            Event::Eof => {
                if !root_closed {
                    return Err(PidfError::Xml("unexpected end of document".into()));
                }
                return Ok(pidf);
            }
            _ => {}
        }
    }
}

fn kind_of(local: &[u8]) -> Kind {
    match local {
        b"tuple" => Kind::Tuple,
        b"note" => Kind::Note,
        b"person" => Kind::Person,
        b"device" => Kind::Device,
        _ => Kind::Other,
    }
}

fn id_of(e: &quick_xml::events::BytesStart<'_>) -> Result<Option<String>, PidfError> {
    for attr in e.attributes() {
        let attr = attr.map_err(|e| PidfError::Xml(e.to_string()))?;
        if attr.key.as_ref() == b"id" {
            return Ok(Some(
                attr.unescape_value()
                    .map_err(|e| PidfError::Xml(e.to_string()))?
                    .to_string(),
            ));
        }
    }
    Ok(None)
}

pub fn escape(s: &str) -> String {
    quick_xml::escape::escape(s).to_string()
}

/// Compose publications, given oldest first, into one document for `entity`.
pub fn compose(entity: &str, docs: &[Pidf]) -> String {
    let mut namespaces: Vec<(String, String)> = Vec::new();
    let mut tuples: Vec<(Option<String>, String)> = Vec::new();
    let mut devices: Vec<(Option<String>, String)> = Vec::new();
    let mut person: Option<String> = None;
    let mut notes: Vec<String> = Vec::new();
    let mut others: Vec<String> = Vec::new();
    for doc in docs {
        for (p, uri) in &doc.namespaces {
            match namespaces.iter_mut().find(|(q, _)| q == p) {
                Some(slot) => slot.1 = uri.clone(),
                None => namespaces.push((p.clone(), uri.clone())),
            }
        }
        let doc_notes: Vec<String> = doc
            .children
            .iter()
            .filter(|c| c.kind == Kind::Note)
            .map(|c| c.raw.clone())
            .collect();
        if !doc_notes.is_empty() {
            notes = doc_notes;
        }
        for c in &doc.children {
            match c.kind {
                Kind::Tuple => upsert(&mut tuples, &c.id, &c.raw),
                Kind::Device => upsert(&mut devices, &c.id, &c.raw),
                Kind::Person => person = Some(c.raw.clone()),
                Kind::Note => {}
                Kind::Other => {
                    if !others.contains(&c.raw) {
                        others.push(c.raw.clone());
                    }
                }
            }
        }
    }
    let mut out = String::with_capacity(512);
    out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<presence xmlns=\"");
    out.push_str(PIDF_NS);
    out.push('"');
    for (p, uri) in &namespaces {
        out.push_str(&format!(" xmlns:{p}=\"{}\"", escape(uri)));
    }
    out.push_str(&format!(" entity=\"{}\">\n", escape(entity)));
    for (_, raw) in &tuples {
        out.push_str(raw);
        out.push('\n');
    }
    for raw in &notes {
        out.push_str(raw);
        out.push('\n');
    }
    for raw in person
        .iter()
        .chain(devices.iter().map(|(_, r)| r))
        .chain(others.iter())
    {
        out.push_str(raw);
        out.push('\n');
    }
    out.push_str("</presence>\n");
    out
}

fn upsert(list: &mut Vec<(Option<String>, String)>, id: &Option<String>, raw: &str) {
    if id.is_some() {
        if let Some(slot) = list.iter_mut().find(|(i, _)| i == id) {
            slot.1 = raw.to_string();
            return;
        }
    }
    list.push((id.clone(), raw.to_string()));
}

/// A one-tuple document: `open` or `closed`, with an optional contact.
pub fn basic(entity: &str, tuple_id: &str, open: bool, contact: Option<&str>) -> String {
    let mut out = String::with_capacity(320);
    out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<presence xmlns=\"");
    out.push_str(PIDF_NS);
    out.push_str(&format!("\" entity=\"{}\">\n", escape(entity)));
    out.push_str(&format!(
        "<tuple id=\"{}\"><status><basic>{}</basic></status>",
        escape(tuple_id),
        if open { "open" } else { "closed" }
    ));
    if let Some(c) = contact {
        out.push_str(&format!("<contact>{}</contact>", escape(c)));
    }
    out.push_str("</tuple>\n</presence>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model" xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid" entity="sip:alice@example.com">
  <tuple id="phone"><status><basic>open</basic></status><contact>sip:alice@192.0.2.1</contact></tuple>
  <note xml:lang="en">at the desk</note>
  <dm:person id="p1"><rpid:activities><rpid:on-the-phone/></rpid:activities></dm:person>
</presence>"#;

    const B: &str = r#"<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid" xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model" entity="sip:alice@example.com"><tuple id="laptop"><status><basic>closed</basic></status></tuple><tuple id="phone"><status><basic>closed</basic></status></tuple><dm:person id="p1"><rpid:activities><rpid:meeting/></rpid:activities></dm:person></presence>"#;

    fn wrap(inner: &str) -> String {
        format!(
            r#"<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:alice@example.com">{inner}</presence>"#
        )
    }

    /// The review's XML attacks, each refused with its own reason; what
    /// real documents carry still passes, byte for byte.
    #[test]
    fn hostile_documents_are_refused() {
        let laughs = format!(
            r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>{}"#,
            wrap("<note>&lol2;</note>")
        );
        let deep = wrap(&format!("{}{}", "<x>".repeat(9000), "</x>".repeat(9000)));
        let many_attrs = wrap(&format!(
            "<tuple id=\"t\" {}><status><basic>open</basic></status></tuple>",
            (0..5800)
                .map(|i| format!("a{i}=\"v\""))
                .collect::<Vec<_>>()
                .join(" ")
        ));
        let many_elems = wrap(&"<note>n</note>".repeat(MAX_ELEMENTS + 1));
        let cases: Vec<(String, PidfError)> = vec![
            (laughs, PidfError::DocType),
            (
                wrap("<note>&custom;</note>"),
                PidfError::Entity("custom".into()),
            ),
            (
                wrap(r#"<tuple id="&custom;"><status><basic>open</basic></status></tuple>"#),
                PidfError::Entity("custom".into()),
            ),
            (
                format!("<?php evil ?>{}", wrap("")),
                PidfError::ProcessingInstruction,
            ),
            (deep, PidfError::TooDeep),
            (many_attrs, PidfError::TooManyAttributes),
            (many_elems, PidfError::TooManyElements),
        ];
        for (doc, want) in cases {
            assert_eq!(
                parse(doc.as_bytes()),
                Err(want.clone()),
                "{}",
                &doc[..doc.len().min(120)]
            );
        }
        // At the bounds, and XML's own references: accepted, kept as sent.
        let at_depth = wrap(&format!(
            "<x>{}{}</x>",
            "<y>".repeat(MAX_DEPTH - 3),
            "</y>".repeat(MAX_DEPTH - 3)
        ));
        assert!(parse(at_depth.as_bytes()).is_ok());
        let refs =
            wrap(r#"<note xml:lang="fr">caf&#233; &amp; th&#xE9; &lt;ok&gt; &quot;&apos;</note>"#);
        let p = parse(refs.as_bytes()).expect("XML's own references");
        assert!(p.children[0].raw.contains("caf&#233; &amp; th&#xE9;"));
        let attrs = wrap(&format!(
            "<tuple id=\"t\" {}><status><basic>open</basic></status></tuple>",
            (0..MAX_ATTRIBUTES - 1)
                .map(|i| format!("a{i}=\"v&amp;\""))
                .collect::<Vec<_>>()
                .join(" ")
        ));
        assert!(parse(attrs.as_bytes()).is_ok());
    }

    #[test]
    fn checks_documents() {
        assert!(parse(A.as_bytes()).is_ok());
        // the seed paper's pre-RFC namespace is still PIDF
        assert!(parse(br#"<presence xmlns="urn:ietf:params:xml:ns:cpim-pidf" entity="pres:kmh@sip2.kumoh.ac.kr"><tuple id="irt-lab-pc"><status><basic> OPEN </basic></status></tuple></presence>"#).is_ok());
        for bad in [
            &b"<presence><broken"[..],
            b"",
            b"<presence xmlns=\"urn:other\"/>",
            b"<foo xmlns=\"urn:ietf:params:xml:ns:pidf\"/>",
            b"<presence xmlns=\"urn:ietf:params:xml:ns:pidf\"></presence><presence/>",
            b"<presence xmlns=\"urn:ietf:params:xml:ns:pidf\"><tuple></presence>",
            b"\xff\xfe",
            b"just text",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let empty =
            parse(b"<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"sip:a@b\"/>").unwrap();
        assert!(empty.children.is_empty());
    }

    #[test]
    fn composes_newest_wins_and_keeps_rpid() {
        let a = parse(A.as_bytes()).unwrap();
        let b = parse(B.as_bytes()).unwrap();
        let doc = compose("sip:alice@example.com", &[a, b]);
        assert_eq!(doc.matches("<tuple").count(), 2, "{doc}");
        assert!(
            doc.contains(r#"<tuple id="phone"><status><basic>closed</basic></status></tuple>"#),
            "{doc}"
        );
        assert!(doc.contains("<rpid:meeting/>"), "{doc}");
        assert!(!doc.contains("on-the-phone"), "{doc}");
        assert!(
            doc.contains(r#"<note xml:lang="en">at the desk</note>"#),
            "{doc}"
        );
        assert!(doc.contains(r#"xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid""#));
        // the composition is itself valid PIDF
        let again = parse(doc.as_bytes()).unwrap();
        assert_eq!(again.children.len(), 4);
    }

    #[test]
    fn basic_documents_escape() {
        let d = basic("sip:a&b@example.com", "t", true, Some("sip:x@y;a=<1>"));
        assert!(parse(d.as_bytes()).is_ok());
        assert!(d.contains("<basic>open</basic>"));
    }

    /// Property (deterministic seed, as crates/sip/tests/fuzz.rs): no cut
    /// and splice of a real document panics `parse`, and anything accepted
    /// composes into a document that is accepted again.
    #[test]
    fn parse_never_panics_and_what_it_accepts_recomposes() {
        use rand::rngs::StdRng;
        use rand::{RngExt, SeedableRng};
        let mut r = StdRng::seed_from_u64(0x9d1f);
        let seeds = [A.as_bytes(), B.as_bytes()];
        for i in 0..20_000 {
            let mut doc = seeds[i % 2].to_vec();
            let cut = r.random_range(0..=doc.len());
            doc.truncate(cut);
            let at = r.random_range(0..=doc.len());
            let junk: Vec<u8> = (0..r.random_range(0..16))
                .map(|_| {
                    if r.random_bool(0.5) {
                        let soup = b"<>&;/=\"'!?#x ";
                        soup[r.random_range(0..soup.len())]
                    } else {
                        r.random()
                    }
                })
                .collect();
            doc.splice(at..at, junk);
            if let Ok(p) = parse(&doc) {
                let again = compose("sip:alice@example.com", &[p]);
                assert!(parse(again.as_bytes()).is_ok(), "#{i}: {again}");
            }
        }
    }
}

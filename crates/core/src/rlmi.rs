//! Resource lists (RFC 4662): one subscription to a list URI carries the
//! presence of every member, as `multipart/related` NOTIFYs whose root is
//! an RLMI document (`application/rlmi+xml`) naming each member's instance
//! and whose other parts are the members' PIDF documents.
//!
//! - [`Lists`]: the operator's lists (`--lists FILE`: `LIST-URI MEMBER-URI
//!   [MEMBER-URI …]` per line, `#` comments).
//! - [`Stored`]: what the list's shard keeps as the list's document: each
//!   member's presence document as it was composed, and the list version
//!   at which it last changed (so that a NOTIFY can carry only what
//!   changed since the subscription's previous one).
//! - [`render`]: one NOTIFY body for one subscription: full state or the
//!   members changed since a version, each member as the member's own
//!   policy lets the subscriber see it.

use crate::reginfo::stable_id;
use crate::{pidf, Aor};
use std::collections::HashMap;

pub const RLMI_NS: &str = "urn:ietf:params:xml:ns:rlmi";
pub const RLMI_TYPE: &str = "application/rlmi+xml";

/// Most members of one list: a full-state NOTIFY carries every member's
/// document (~1 KB each), and must stay below what a datagram carries.
pub const MAX_MEMBERS: usize = 50;

/// The operator's resource lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lists {
    /// List URI → members, in file order.
    lists: HashMap<String, Vec<String>>,
    /// Member → the lists it is in.
    of_member: HashMap<String, Vec<String>>,
}

impl Lists {
    /// Parse a lists file; every error at once (`line N: ...`).
    pub fn parse(text: &str) -> Result<Lists, Vec<String>> {
        let mut lists: Vec<(String, Vec<String>)> = Vec::new();
        let mut errors = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut words = line.split_whitespace();
            let Some(uri) = words.next().and_then(Aor::parse).map(Aor::into_string) else {
                errors.push(format!(
                    "line {}: the list URI is not sip:user@domain",
                    i + 1
                ));
                continue;
            };
            let mut members: Vec<String> = Vec::new();
            for w in words {
                match Aor::parse(w).map(Aor::into_string) {
                    Some(m) if m == uri => {
                        errors.push(format!("line {}: {uri} is a member of itself", i + 1))
                    }
                    Some(m) if !members.contains(&m) => members.push(m),
                    Some(_) => {}
                    None => errors.push(format!("line {}: {w:?} is not sip:user@domain", i + 1)),
                }
            }
            if members.is_empty() {
                errors.push(format!("line {}: {uri} has no members", i + 1));
            } else if members.len() > MAX_MEMBERS {
                errors.push(format!(
                    "line {}: {uri} has {} members, at most {MAX_MEMBERS}",
                    i + 1,
                    members.len()
                ));
            }
            if lists.iter().any(|(u, _)| *u == uri) {
                errors.push(format!("line {}: {uri} is listed twice", i + 1));
            }
            lists.push((uri, members));
        }
        for (uri, members) in &lists {
            for m in members {
                if lists.iter().any(|(u, _)| u == m) {
                    errors.push(format!("{uri}: member {m} is a list (lists do not nest)"));
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut out = Lists::default();
        for (uri, members) in lists {
            for m in &members {
                out.of_member
                    .entry(m.clone())
                    .or_default()
                    .push(uri.clone());
            }
            out.lists.insert(uri, members);
        }
        Ok(out)
    }

    /// The members of list `uri`, if it is a list.
    pub fn members(&self, uri: &str) -> Option<&[String]> {
        self.lists.get(uri).map(Vec::as_slice)
    }

    pub fn is_list(&self, uri: &str) -> bool {
        self.lists.contains_key(uri)
    }

    /// The lists `member` is in.
    pub fn lists_of(&self, member: &str) -> &[String] {
        self.of_member.get(member).map_or(&[], Vec::as_slice)
    }

    /// Every list URI.
    pub fn uris(&self) -> impl Iterator<Item = &str> {
        self.lists.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.lists.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lists.is_empty()
    }
}

/// One member in a stored list document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub uri: String,
    /// The list version at which this member's document last changed.
    pub changed_at: u64,
    /// The member's composed presence document; `None`: it has none.
    pub body: Option<Vec<u8>>,
}

/// A list's stored document: its members' documents.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Stored {
    /// The list version at which the membership last changed: a
    /// subscription last notified before it gets full state.
    pub full_at: u64,
    pub members: Vec<Member>,
}

const STORED_MAGIC: &[u8] = b"rlmi-store 1 ";

impl Stored {
    /// The next stored document, for list version `version`, from the
    /// members' current documents (`docs`, in list order) and the previous
    /// stored document.
    pub fn next(
        previous: Option<&Stored>,
        version: u64,
        docs: Vec<(String, Option<Vec<u8>>)>,
    ) -> Stored {
        let empty = Stored::default();
        let prev = previous.unwrap_or(&empty);
        let same_members = prev.members.len() == docs.len()
            && prev
                .members
                .iter()
                .zip(&docs)
                .all(|(a, (b, _))| a.uri == *b);
        let members = docs
            .into_iter()
            .map(|(uri, body)| {
                let changed_at = match prev.members.iter().find(|m| m.uri == uri) {
                    Some(m) if m.body == body => m.changed_at,
                    _ => version,
                };
                Member {
                    uri,
                    changed_at,
                    body,
                }
            })
            .collect();
        Stored {
            full_at: if same_members && previous.is_some() {
                prev.full_at
            } else {
                version
            },
            members,
        }
    }

    /// `rlmi-store 1 FULL_AT\n` then per member `URI CHANGED_AT LEN\n`
    /// and LEN bytes of body (`-` for none) and `\n`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = STORED_MAGIC.to_vec();
        out.extend_from_slice(format!("{}\n", self.full_at).as_bytes());
        for m in &self.members {
            match &m.body {
                Some(b) => {
                    out.extend_from_slice(
                        format!("{} {} {}\n", m.uri, m.changed_at, b.len()).as_bytes(),
                    );
                    out.extend_from_slice(b);
                }
                None => out.extend_from_slice(format!("{} {} -\n", m.uri, m.changed_at).as_bytes()),
            }
            out.push(b'\n');
        }
        out
    }

    pub fn decode(mut b: &[u8]) -> Option<Stored> {
        b = b.strip_prefix(STORED_MAGIC)?;
        let line = |b: &mut &[u8]| -> Option<String> {
            let end = b.iter().position(|&c| c == b'\n')?;
            let l = std::str::from_utf8(&b[..end]).ok()?.to_string();
            *b = &b[end + 1..];
            Some(l)
        };
        let full_at = line(&mut b)?.parse().ok()?;
        let mut members = Vec::new();
        while !b.is_empty() {
            let head = line(&mut b)?;
            let mut f = head.split(' ');
            let (uri, changed_at, len) = (f.next()?, f.next()?.parse().ok()?, f.next()?);
            let body = match len {
                "-" => None,
                n => {
                    let n: usize = n.parse().ok()?;
                    let body = b.get(..n)?.to_vec();
                    b = &b[n..];
                    Some(body)
                }
            };
            b = b.strip_prefix(b"\n")?;
            members.push(Member {
                uri: uri.to_string(),
                changed_at,
                body,
            });
        }
        Some(Stored { full_at, members })
    }
}

/// What a list's subscriber may see of one member (the member's policy,
/// the subscriber as the watcher).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberView {
    /// The member's document.
    Full,
    /// Polite blocking: this document instead.
    Neutral(Vec<u8>),
    /// Held until the member decides: no state.
    Pending,
    /// Refused: no state, the instance is terminated.
    Rejected,
}

/// One NOTIFY body for a subscription to list `list`: full state when
/// `since` is `None` (or older than the last membership change), else only
/// the members changed after list version `since` (a member the subscriber
/// may not see in full shows in full state only: a partial NOTIFY for its
/// changes would tell when it changed). `version` is the RLMI
/// version (the subscription's NOTIFY count from 0). `no_state(member)` is
/// the document of a member that has none. Returns the Content-Type (with
/// a boundary that occurs in no part) and the body.
pub fn render(
    list: &str,
    stored: &Stored,
    since: Option<u64>,
    version: u32,
    view: &dyn Fn(&str) -> MemberView,
    no_state: &dyn Fn(&str) -> Vec<u8>,
) -> (String, Vec<u8>) {
    let since = since.filter(|s| *s >= stored.full_at);
    let full = since.is_none();
    let tag = stable_id("", list);
    let root_cid = format!("rlmi.{tag}@presence");
    let mut rlmi = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<list xmlns=\"{RLMI_NS}\" uri=\"{}\" version=\"{version}\" fullState=\"{full}\">\n",
        pidf::escape(list)
    );
    let mut parts: Vec<(String, Vec<u8>)> = Vec::new();
    for m in &stored.members {
        if since.is_some_and(|s| m.changed_at <= s) {
            continue;
        }
        let seen = view(&m.uri);
        // A member the subscriber may not watch shows in full state only:
        // a partial NOTIFY for its changes would tell when it changed.
        if !full && seen != MemberView::Full {
            continue;
        }
        let id = stable_id("i", &m.uri);
        let cid = format!("{}.{tag}@presence", stable_id("m", &m.uri));
        rlmi += &format!(" <resource uri=\"{}\">\n", pidf::escape(&m.uri));
        let body = match seen {
            MemberView::Full => Some(m.body.clone().unwrap_or_else(|| no_state(&m.uri))),
            MemberView::Neutral(b) => Some(b),
            MemberView::Pending => {
                rlmi += &format!("  <instance id=\"{id}\" state=\"pending\"/>\n");
                None
            }
            MemberView::Rejected => {
                rlmi += &format!(
                    "  <instance id=\"{id}\" state=\"terminated\" reason=\"rejected\"/>\n"
                );
                None
            }
        };
        if let Some(b) = body {
            rlmi += &format!("  <instance id=\"{id}\" state=\"active\" cid=\"{cid}\"/>\n");
            parts.push((cid, b));
        }
        rlmi += " </resource>\n";
    }
    rlmi += "</list>\n";
    // A boundary no part contains (a note could quote one).
    let mut boundary = format!("presence-rlmi-{tag}");
    let mut n = 0;
    while contains(rlmi.as_bytes(), boundary.as_bytes())
        || parts.iter().any(|(_, b)| contains(b, boundary.as_bytes()))
    {
        n += 1;
        boundary = format!("presence-rlmi-{tag}-{n}");
    }
    let mut body = Vec::new();
    let mut part = |cid: &str, ct: &str, b: &[u8]| {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Transfer-Encoding: binary\r\nContent-ID: <{cid}>\r\nContent-Type: {ct}\r\n\r\n").as_bytes(),
        );
        body.extend_from_slice(b);
        body.extend_from_slice(b"\r\n");
    };
    part(
        &root_cid,
        "application/rlmi+xml;charset=\"UTF-8\"",
        rlmi.as_bytes(),
    );
    for (cid, b) in &parts {
        part(cid, "application/pidf+xml;charset=\"UTF-8\"", b);
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    let content_type = format!(
        "multipart/related;type=\"{RLMI_TYPE}\";start=\"<{root_cid}>\";boundary=\"{boundary}\""
    );
    (content_type, body)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// One part of a multipart body, as [`parts`] reads it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub content_id: String,
    pub content_type: String,
    pub body: Vec<u8>,
}

/// Split a `multipart/related` body with `boundary` into its parts (for
/// tests and tools: what a subscriber does with our NOTIFYs).
pub fn parts(body: &[u8], boundary: &str) -> Option<Vec<Part>> {
    let delim = format!("--{boundary}");
    let text = body;
    let mut out = Vec::new();
    let mut at = find(text, delim.as_bytes())? + delim.len();
    loop {
        if text[at..].starts_with(b"--") {
            return Some(out);
        }
        at += 2; // CRLF after the delimiter
        let next = at + find(&text[at..], format!("\r\n{delim}").as_bytes())?;
        let part = &text[at..next];
        let split = find(part, b"\r\n\r\n")?;
        let headers = std::str::from_utf8(&part[..split]).ok()?;
        let mut p = Part {
            content_id: String::new(),
            content_type: String::new(),
            body: part[split + 4..].to_vec(),
        };
        for h in headers.split("\r\n") {
            let (name, value) = h.split_once(':')?;
            match name.trim().to_ascii_lowercase().as_str() {
                "content-id" => p.content_id = value.trim().trim_matches(['<', '>']).to_string(),
                "content-type" => p.content_type = value.trim().to_string(),
                _ => {}
            }
        }
        out.push(p);
        at = next + 2 + delim.len();
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The boundary parameter of a multipart Content-Type.
pub fn boundary_of(content_type: &str) -> Option<&str> {
    let i = content_type.find("boundary=")? + "boundary=".len();
    let rest = &content_type[i..];
    Some(match rest.strip_prefix('"') {
        Some(r) => &r[..r.find('"')?],
        None => rest.split(';').next()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lists_file_is_read_and_checked() {
        let l = Lists::parse(
            "# team lists\nsip:team@example.com sip:alice@example.com sip:Bob@EXAMPLE.com sip:alice@example.com\n\nsip:desk@example.com sip:bob@example.com\n",
        )
        .unwrap();
        assert_eq!(
            l.members("sip:team@example.com").unwrap(),
            ["sip:alice@example.com", "sip:Bob@example.com"]
        );
        assert_eq!(
            l.lists_of("sip:Bob@example.com").len() + l.lists_of("sip:bob@example.com").len(),
            2
        );
        assert!(l.is_list("sip:desk@example.com") && !l.is_list("sip:alice@example.com"));
        let e = Lists::parse(
            "nonsense sip:a@b\nsip:l@x\nsip:m@x sip:m@x sip:l2@x\nsip:l2@x sip:a@x\nsip:l2@x sip:b@x\n",
        )
        .unwrap_err();
        let all = e.join("\n");
        for want in [
            "line 1",
            "line 2",
            "member of itself",
            "listed twice",
            "do not nest",
        ] {
            assert!(all.contains(want), "{want} in {all}");
        }
        let many: String = (0..=MAX_MEMBERS).map(|i| format!(" sip:u{i}@x")).collect();
        assert!(Lists::parse(&format!("sip:big@x{many}")).is_err());
    }

    fn docs(bodies: &[(&str, Option<&str>)]) -> Vec<(String, Option<Vec<u8>>)> {
        bodies
            .iter()
            .map(|(u, b)| (u.to_string(), b.map(|b| b.as_bytes().to_vec())))
            .collect()
    }

    #[test]
    fn a_stored_list_knows_when_each_member_changed() {
        let one = Stored::next(None, 1, docs(&[("sip:a@x", Some("A1")), ("sip:b@x", None)]));
        assert_eq!(one.full_at, 1);
        assert_eq!(Stored::decode(&one.encode()), Some(one.clone()));
        let two = Stored::next(
            Some(&one),
            2,
            docs(&[("sip:a@x", Some("A1")), ("sip:b@x", Some("B\n2"))]),
        );
        assert_eq!(
            (
                two.full_at,
                two.members[0].changed_at,
                two.members[1].changed_at
            ),
            (1, 1, 2)
        );
        assert_eq!(Stored::decode(&two.encode()), Some(two.clone()));
        // A membership change: full state for everybody from then on.
        let three = Stored::next(Some(&two), 3, docs(&[("sip:a@x", Some("A1"))]));
        assert_eq!(three.full_at, 3);
        assert_eq!(Stored::decode(b"garbage"), None);
        assert_eq!(
            Stored::decode(b"rlmi-store 1 1\nsip:a@x 1 99\nshort\n"),
            None
        );
    }

    #[test]
    fn a_notify_body_carries_what_changed_as_each_member_allows() {
        let one = Stored::next(
            None,
            1,
            docs(&[
                ("sip:a@x", Some("<a/>")),
                ("sip:b@x", None),
                ("sip:c@x", Some("<c/>")),
            ]),
        );
        let two = Stored::next(
            Some(&one),
            2,
            docs(&[
                ("sip:a@x", Some("<a2/>")),
                ("sip:b@x", None),
                // c changes too, but is pending for this subscriber.
                ("sip:c@x", Some("<c2/>")),
            ]),
        );
        let view = |m: &str| match m {
            "sip:c@x" => MemberView::Pending,
            _ => MemberView::Full,
        };
        let no_state = |_: &str| b"<closed/>".to_vec();
        let (ct, full) = render("sip:team@x", &two, None, 0, &view, &no_state);
        assert!(
            ct.starts_with("multipart/related;type=\"application/rlmi+xml\";start=\"<"),
            "{ct}"
        );
        let ps = parts(&full, boundary_of(&ct).unwrap()).unwrap();
        assert_eq!(ps.len(), 3, "the RLMI root and two documents");
        let rlmi = String::from_utf8(ps[0].body.clone()).unwrap();
        assert!(
            rlmi.contains(r#"fullState="true""#) && rlmi.contains(r#"version="0""#),
            "{rlmi}"
        );
        assert!(ct.contains(&format!("start=\"<{}>\"", ps[0].content_id)));
        assert!(rlmi.contains(r#"state="pending""#));
        assert_eq!(ps[1].body, b"<a2/>");
        assert_eq!(ps[2].body, b"<closed/>");
        assert!(rlmi.contains(&format!("cid=\"{}\"", ps[1].content_id)));
        // Since version 1: only a changed.
        let (ct, partial) = render("sip:team@x", &two, Some(1), 1, &view, &no_state);
        let ps = parts(&partial, boundary_of(&ct).unwrap()).unwrap();
        assert_eq!(ps.len(), 2);
        let rlmi = String::from_utf8(ps[0].body.clone()).unwrap();
        assert!(
            rlmi.contains(r#"fullState="false""#)
                && rlmi.contains("sip:a@x")
                && !rlmi.contains("sip:c@x"),
            "{rlmi}"
        );
        // A part quoting the boundary gets another one.
        let tricky = Stored::next(
            None,
            1,
            docs(&[(
                "sip:a@x",
                Some(&format!("--presence-rlmi-{}", stable_id("", "sip:team@x"))),
            )]),
        );
        let (ct, body) = render(
            "sip:team@x",
            &tricky,
            None,
            0,
            &|_| MemberView::Full,
            &no_state,
        );
        let ps = parts(&body, boundary_of(&ct).unwrap()).unwrap();
        assert_eq!(ps.len(), 2);
        let rejected = render(
            "sip:team@x",
            &tricky,
            None,
            0,
            &|_| MemberView::Rejected,
            &no_state,
        );
        assert!(String::from_utf8_lossy(&rejected.1)
            .contains(r#"state="terminated" reason="rejected""#));
    }

    /// No stored document, list file or multipart body panics its reader;
    /// every stored document decodes back to itself.
    #[test]
    fn property_stored_round_trips_and_nothing_panics() {
        use rand::rngs::StdRng;
        use rand::{RngExt, SeedableRng};
        let mut rng = StdRng::seed_from_u64(4662);
        for _ in 0..2_000 {
            let n = rng.random_range(0..5usize);
            let docs: Vec<(String, Option<Vec<u8>>)> = (0..n)
                .map(|i| {
                    let body = rng.random_bool(0.7).then(|| {
                        (0..rng.random_range(0..40usize))
                            .map(|_| rng.random::<u8>())
                            .collect()
                    });
                    (format!("sip:m{i}@example.com"), body)
                })
                .collect();
            let stored = Stored::next(None, rng.random_range(1..100), docs);
            let enc = stored.encode();
            assert_eq!(Stored::decode(&enc), Some(stored.clone()));
            let mut bad = enc.clone();
            let at = rng.random_range(0..bad.len());
            bad[at] = rng.random::<u8>();
            let _ = Stored::decode(&bad);
            let noise: Vec<u8> = (0..rng.random_range(0..80usize))
                .map(|_| rng.random::<u8>())
                .collect();
            let _ = Stored::decode(&noise);
            let _ = parts(&noise, "b");
            let _ = Lists::parse(&String::from_utf8_lossy(&noise));
            let (ct, body) = render("sip:l@x", &stored, None, 0, &|_| MemberView::Full, &|_| {
                Vec::new()
            });
            let ps = parts(&body, boundary_of(&ct).unwrap()).expect("our own body parses");
            assert_eq!(ps.len(), 1 + n);
        }
    }
}

//! Bytes → [`Message`]. Our own line/header pass (unfolding, compact names,
//! size and Content-Length rules), then rsip's URI and header model.

use crate::encode::copied_into_every_response;
use crate::frame;
use crate::headers::{self, has_ctl, is_token_char, split_list};
use crate::message::{HeaderAccess, Message, Method, Request, Response};
use crate::rsip;
use bytes::Bytes;
use std::borrow::Cow;

/// Most Via elements a message may carry, counted as comma-separated
/// elements over all its Via header fields.
///
/// Every answer copies the request's whole Via stack (RFC 3261 §8.2.6.2), and
/// [`crate::ResponseBuilder`] writes each element on a line of its own, so
/// the Via list is what an answer reflects, element by element: unbounded,
/// `Via: x,x,x,…` came back four times as large. A presence server sees the
/// UA's own Via plus one per proxy on the way (outbound proxy, edge proxy,
/// a load balancer): five at most in practice. 16 leaves room for long
/// proxy chains and spirals, and bounds what Via adds to an answer to 16
/// lines. A message over it is dropped, never answered: any answer would
/// reflect the Via stack, and the elements are what says where it goes.
pub const MAX_VIA_ELEMENTS: usize = 16;

/// Most header fields (after unfolding, each Via line counting once) a
/// message may carry. Real SIP requests carry 8 to 30; 128 is generous.
///
/// A request over it is refused with 400 [`TOO_MANY_HEADERS`], answered when
/// its top Via is readable: answering is cheap, as the answer copies only
/// Via (bounded by [`MAX_VIA_ELEMENTS`]) and one each of From, To, Call-ID
/// and CSeq, never the surplus fields, and the parse work was already bounded
/// by the message size cap. A client that really sends that many learns why
/// it fails. Past the cap only the fields an answer copies are kept, so the
/// refusal's `answer` headers stay small. A response over it is dropped.
pub const MAX_HEADER_FIELDS: usize = 128;

/// Reason of the drop for more than [`MAX_VIA_ELEMENTS`] Via elements.
pub const TOO_MANY_VIAS: &str = "Too Many Via Elements";
/// Reason of the 400 (or drop) for more than [`MAX_HEADER_FIELDS`] fields.
pub const TOO_MANY_HEADERS: &str = "Too Many Header Fields";
/// Reason of the refusal for a control character in a header name or value
/// (see [`crate::headers::is_ctl`]), or for invalid UTF-8 in a header every
/// answer copies. Answered with 400 when the bad field is not one an answer
/// copies (it is left out of the `answer` headers); dropped when it is Via,
/// From, To, Call-ID or CSeq, or when the message is a response.
pub const BAD_HEADER_VALUE: &str = "Bad Header Value";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// UDP: a message is a datagram; Content-Length may be omitted.
    Datagram,
    /// TCP: the framer already cut exactly one message.
    Stream,
}

/// Why a message was refused. If `answer` is set, the message was a request
/// whose top Via was readable: answer it with `status`.
/// Otherwise it must be dropped (and counted). Some refusals are always
/// drops, whatever the Via says, because any answer would reflect the
/// request: [`TOO_MANY_VIAS`], and [`BAD_HEADER_VALUE`] in Via, From, To,
/// Call-ID or CSeq. The `reason` constants let a caller count them apart.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {reason}")]
pub struct ParseError {
    pub status: u16,
    pub reason: String,
    /// The headers we could read, when they are enough to answer.
    pub answer: Option<Box<rsip::Headers>>,
}

impl ParseError {
    fn drop(reason: impl Into<String>) -> Self {
        ParseError {
            status: 400,
            reason: reason.into(),
            answer: None,
        }
    }
}

/// Long names for the compact forms of RFC 3261 §7.3.3 and extensions.
fn canonical_name(name: &str) -> Option<&'static str> {
    if name.len() != 1 {
        return None;
    }
    Some(match name.as_bytes()[0].to_ascii_lowercase() {
        b'a' => "Accept-Contact",
        b'b' => "Referred-By",
        b'c' => "Content-Type",
        b'd' => "Request-Disposition",
        b'e' => "Content-Encoding",
        b'f' => "From",
        b'i' => "Call-ID",
        b'j' => "Reject-Contact",
        b'k' => "Supported",
        b'l' => "Content-Length",
        b'm' => "Contact",
        b'o' => "Event",
        b'r' => "Refer-To",
        b's' => "Subject",
        b't' => "To",
        b'u' => "Allow-Events",
        b'v' => "Via",
        b'x' => "Session-Expires",
        b'y' => "Identity",
        _ => return None,
    })
}

/// Parse one message. For [`TransportKind::Stream`] the input must be exactly
/// one framed message (see [`crate::frame_stream`]).
pub fn parse(input: &[u8], transport: TransportKind, max: usize) -> Result<Message, ParseError> {
    // Leading CRLFs are tolerated (RFC 3261 §7.5).
    let skip = input
        .iter()
        .take_while(|b| **b == b'\r' || **b == b'\n')
        .count();
    let input = &input[skip..];
    if input.is_empty() {
        return Err(ParseError::drop("empty message"));
    }
    let head_len = frame::header_end(input).unwrap_or(input.len());
    let head = String::from_utf8_lossy(&input[..head_len]);
    // Invalid UTF-8 became U+FFFD: three bytes for each bad one.
    let lossy = matches!(head, Cow::Owned(_));
    let mut lines = unfold(&head);
    if lines.is_empty() {
        return Err(ParseError::drop("no start line"));
    }
    let Line {
        text: start,
        ctl: start_ctl,
    } = lines.remove(0);
    let too_many_fields = lines.len() > MAX_HEADER_FIELDS;

    let mut hs = rsip::Headers::default();
    let mut bad_header: Option<&'static str> = None;
    // A control character in a field no answer copies: 400, field left out.
    let mut bad_value = false;
    // ... or in one every answer copies (or invalid UTF-8 there): drop.
    let mut bad_copied = false;
    for (i, line) in lines.iter().enumerate() {
        let (name, value) = match line.text.split_once(':') {
            Some((name, value)) => (name.trim(), Some(value)),
            None => (line.text.trim(), None),
        };
        let name = canonical_name(name).unwrap_or(name);
        let copied = value.is_some() && copied_into_every_response(name);
        // Invalid UTF-8 in what an answer copies would come back three
        // times as large (U+FFFD); the grammar of those fields (and of
        // Timestamp, which a 100 copies) wants valid UTF-8 anyway.
        let bad_utf8 = lossy
            && (copied || name.eq_ignore_ascii_case("Timestamp"))
            && line.text.contains('\u{fffd}');
        if line.ctl || bad_utf8 {
            if copied {
                bad_copied = true;
            } else {
                bad_value = true;
            }
            continue;
        }
        let Some(value) = value else {
            bad_header.get_or_insert("Header Line Without a Colon");
            continue;
        };
        // The name is not echoed: it may be long, and anything at all.
        if name.is_empty() || !name.bytes().all(is_token_char) {
            bad_header.get_or_insert("Malformed Header Name");
            continue;
        }
        if too_many_fields && i >= MAX_HEADER_FIELDS && !copied {
            continue;
        }
        hs.push(rsip::headers::make_header(name, value.trim().to_string()));
    }

    // Refusals that must never be answered come first: an answer would
    // reflect the Via stack, or a bad value in a field every answer copies.
    let vias: usize = hs
        .iter()
        .filter(|h| h.name().eq_ignore_ascii_case("Via"))
        .map(|h| split_list(h.value()).len())
        .sum();
    if vias > MAX_VIA_ELEMENTS {
        return Err(ParseError::drop(TOO_MANY_VIAS));
    }
    if bad_copied {
        return Err(ParseError::drop(BAD_HEADER_VALUE));
    }

    // Compare bytes: the start line may hold multi-byte characters (or U+FFFD
    // from invalid UTF-8), so `start[..4]` could split a character.
    let is_response = start
        .as_bytes()
        .get(..4)
        .is_some_and(|p| p.eq_ignore_ascii_case(b"SIP/"));
    if is_response {
        // We never answer a response; a bad one is dropped.
        if start_ctl {
            return Err(ParseError::drop("bad status line"));
        }
        if too_many_fields {
            return Err(ParseError::drop(TOO_MANY_HEADERS));
        }
        if bad_value {
            return Err(ParseError::drop(BAD_HEADER_VALUE));
        }
    }
    // A request is answerable when its top Via is readable: the Via says where
    // the answer goes (§18.2.2) and its branch is what the client matches the
    // answer with (§17.1.3). A 400 for a missing Call-ID, From, To or CSeq
    // copies what is there, which tells the sender far more than silence.
    // The top Via is read by the same function as `HeaderAccess::top_via`,
    // so "answerable" and "parsed" agree.
    let answerable = !is_response && headers::top_via(&hs).is_some();
    let refuse = |status: u16, reason: String, hs: &rsip::Headers| ParseError {
        status,
        reason,
        answer: if answerable {
            Some(Box::new(hs.clone()))
        } else {
            None
        },
    };
    if too_many_fields {
        return Err(refuse(400, TOO_MANY_HEADERS.into(), &hs));
    }
    if bad_value {
        return Err(refuse(400, BAD_HEADER_VALUE.into(), &hs));
    }

    // Size and body framing.
    if input.len() > max {
        return Err(refuse(413, "Request Entity Too Large".into(), &hs));
    }
    let body_avail = &input[head_len..];
    let body: Bytes = match frame::content_length(&input[..head_len]) {
        Err(_) => return Err(refuse(400, "Bad Content-Length".into(), &hs)),
        Ok(Some(n)) if n > body_avail.len() => {
            return Err(refuse(400, "Content-Length Larger Than Body".into(), &hs));
        }
        Ok(Some(n)) => Bytes::copy_from_slice(&body_avail[..n]),
        Ok(None) if transport == TransportKind::Stream => {
            return Err(refuse(400, "Missing Content-Length".into(), &hs));
        }
        Ok(None) => {
            // Datagram without Content-Length: the rest of the packet (§18.3).
            Bytes::copy_from_slice(body_avail)
        }
    };

    if is_response {
        // Status-Line: SIP-Version SP Status-Code SP Reason-Phrase, with
        // Status-Code = 3DIGIT (RFC 3261 §7.2). A response in another SIP
        // version cannot be read by 2.0 rules: drop it.
        let mut parts = start.splitn(3, ' ');
        let version = parts.next().unwrap_or("");
        if !version.eq_ignore_ascii_case("SIP/2.0") {
            return Err(ParseError::drop("unsupported SIP version in response"));
        }
        let code: u16 = parts
            .next()
            .filter(|c| c.len() == 3 && c.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|c| c.parse().ok())
            .filter(|c| (100..700).contains(c))
            .ok_or_else(|| ParseError::drop("bad status line"))?;
        let reason = parts.next().unwrap_or("").trim().to_string();
        if bad_header.is_some() {
            return Err(ParseError::drop("malformed header in response"));
        }
        let resp = Response {
            code,
            reason,
            headers: hs,
            body,
        };
        if resp.call_id().is_none() || resp.cseq().is_none() || resp.top_via().is_none() {
            return Err(ParseError::drop("response lacks Via, Call-ID or CSeq"));
        }
        return Ok(Message::Response(resp));
    }

    // Request-Line: Method SP Request-URI SP SIP-Version
    let parts: Vec<&str> = start.split(' ').filter(|p| !p.is_empty()).collect();
    if parts.len() != 3 || start_ctl {
        return Err(refuse(400, "Malformed Request-Line".into(), &hs));
    }
    let (method_tok, uri_text, version) = (parts[0], parts[1], parts[2]);
    if !method_tok.bytes().all(is_token_char) {
        return Err(refuse(400, "Malformed Method".into(), &hs));
    }
    if !version.eq_ignore_ascii_case("SIP/2.0") {
        return Err(refuse(505, "Version Not Supported".into(), &hs));
    }
    if let Some(reason) = bad_header {
        return Err(refuse(400, reason.into(), &hs));
    }
    let method = Method::from_token(method_tok);
    // absoluteURI = scheme ":" ...; something without a well-formed scheme
    // (`bob@host`, `<sip:bob@host>`) is a malformed Request-URI (400), not an
    // unsupported scheme (416).
    let scheme = match uri_text.split_once(':') {
        Some((scheme, _)) if is_uri_scheme(scheme) => scheme.to_ascii_lowercase(),
        _ => return Err(refuse(400, "Malformed Request-URI".into(), &hs)),
    };
    if !matches!(scheme.as_str(), "sip" | "sips" | "tel") {
        return Err(refuse(416, "Unsupported URI Scheme".into(), &hs));
    }
    let uri = match parse_uri(uri_text) {
        Ok(u) if u.scheme.is_some() => u,
        _ => return Err(refuse(400, "Malformed Request-URI".into(), &hs)),
    };
    let req = Request {
        method,
        uri,
        uri_text: uri_text.to_string(),
        headers: hs,
        body,
    };
    validate_request(&req).map_err(|r| refuse(400, r.into(), &req.headers))?;
    Ok(Message::Request(req))
}

/// `scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )` (RFC 3261 §25.1).
fn is_uri_scheme(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

/// `rsip::parse_uri`, but with the userinfo split off first.
///
/// rsip cuts a URI at the first `?` and `;` before it looks for `@`, so a
/// user part holding those characters (legal: RFC 3261 §25.1 `user-unreserved`,
/// e.g. `sip:alice;day=tuesday@atlanta.com` from §19.1.3, or telephone-number
/// users with `;phone-context=`) ends up as the host. An unescaped `@` can
/// only end the userinfo (it is not allowed in params, headers or hosts), so
/// split there and let rsip parse the rest.
pub fn parse_uri(text: &str) -> Result<rsip::Uri, rsip::Error> {
    let text = text.trim();
    if let Some((scheme, rest)) = text.split_once(':') {
        if let Some((userinfo, hostpart)) = rest.split_once('@') {
            if is_uri_scheme(scheme) && userinfo.contains([';', '?']) {
                let mut uri = rsip::parse_uri(&format!("{scheme}:{hostpart}"))?;
                uri.auth = Some(rsip::Auth::from(userinfo));
                return Ok(uri);
            }
        }
    }
    rsip::parse_uri(text)
}

/// The mandatory headers of RFC 3261 §8.1.1 and their basic syntax.
fn validate_request(req: &Request) -> Result<(), &'static str> {
    if req.top_via().is_none() {
        return Err("Missing or Malformed Via");
    }
    let count = |n: &str| req.header_all(n).count();
    if count("Call-ID") != 1 || req.call_id().is_some_and(|c| c.trim().is_empty()) {
        return Err("Missing or Duplicate Call-ID");
    }
    if count("From") != 1 || req.from_addr().is_none() {
        return Err("Missing or Malformed From");
    }
    if count("To") != 1 || req.to_addr().is_none() {
        return Err("Missing or Malformed To");
    }
    if count("CSeq") != 1 {
        return Err("Missing or Duplicate CSeq");
    }
    match req.cseq() {
        None => return Err("Malformed CSeq"),
        Some((_, m)) if m != req.method.as_str() => return Err("CSeq Method Does Not Match"),
        _ => {}
    }
    if let Some(Err(())) = req.max_forwards() {
        return Err("Malformed Max-Forwards");
    }
    Ok(())
}

/// One line of the head after unfolding.
struct Line {
    text: String,
    /// A control character (see [`headers::is_ctl`]) was in it, looked for
    /// before any trimming: a bare CR, a NUL, a CR before the CRLF. (A bare
    /// LF ends a line, as LF-only line ends are accepted, so no LF is ever
    /// inside a line: what follows it is a line of its own, a header line
    /// or a continuation.)
    ctl: bool,
}

/// Split the header section into lines (at LF, a CR before it dropped),
/// joining continuation lines (leading SP/HT) to the previous one with a
/// single space.
fn unfold(head: &str) -> Vec<Line> {
    let mut out: Vec<Line> = Vec::new();
    for raw in head.split('\n') {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.is_empty() {
            continue;
        }
        let ctl = has_ctl(line);
        if line.starts_with([' ', '\t']) {
            if let Some(prev) = out.last_mut() {
                prev.text.push(' ');
                prev.text.push_str(line.trim());
                prev.ctl |= ctl;
                continue;
            }
        }
        out.push(Line {
            text: line.to_string(),
            ctl,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_user_parts_with_semicolons_and_question_marks() {
        let u = parse_uri("sip:alice;day=tuesday@atlanta.com;transport=tcp").unwrap();
        assert_eq!(u.user(), Some("alice;day=tuesday"));
        assert_eq!(u.host().to_string(), "atlanta.com");
        assert_eq!(u.params.len(), 1);
        let u = parse_uri("sip:a?b:secret@example.com").unwrap();
        assert_eq!(u.user(), Some("a?b"));
        assert_eq!(u.auth.unwrap().password.as_deref(), Some("secret"));
        // Plain URIs go straight to rsip.
        assert_eq!(
            parse_uri("sip:bob@example.com;lr?Subject=hi").unwrap(),
            rsip::parse_uri("sip:bob@example.com;lr?Subject=hi").unwrap()
        );
    }

    #[test]
    fn uri_schemes() {
        assert!(is_uri_scheme("sip") && is_uri_scheme("x-a.b+c1"));
        assert!(!is_uri_scheme("") && !is_uri_scheme("<sip") && !is_uri_scheme("1sip"));
    }
}

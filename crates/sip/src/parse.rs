//! Bytes → [`Message`]. Our own line/header pass (unfolding, compact names,
//! size and Content-Length rules), then rsip's URI and header model.

use crate::frame;
use crate::headers::{self, is_token_char};
use crate::message::{HeaderAccess, Message, Method, Request, Response};
use crate::rsip;
use bytes::Bytes;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// UDP: a message is a datagram; Content-Length may be omitted.
    Datagram,
    /// TCP: the framer already cut exactly one message.
    Stream,
}

/// Why a message was refused. If `answer` is set, the message was a request
/// whose top Via was readable: answer it with `status`.
/// Otherwise it must be dropped (and counted).
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

/// Most Via elements a request may carry. A presence server sits behind a
/// few proxies (a UA, an SBC, a load balancer: ≤ 5 in practice); every Via
/// is copied into the answer, so a request with hundreds of them would make
/// us reflect its bulk at whatever address it names. Such a request is
/// dropped (and counted), not answered.
pub const MAX_VIA: usize = 16;

/// Most header fields a message may carry (after unfolding). Real requests
/// carry 10 to 30. Over it: 400 when answerable (an answer copies only Via,
/// From, To, Call-ID and CSeq, so it stays small).
pub const MAX_HEADERS: usize = 128;

/// Control characters have no place in a header (RFC 3261 §25.1: TEXT-UTF8
/// and LWS only); a bare CR or LF inside a value would let a header we copy
/// into an answer inject headers of its own.
fn has_control(s: &str) -> bool {
    s.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f)
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
    let mut lines = unfold(&head);
    if lines.is_empty() {
        return Err(ParseError::drop("no start line"));
    }
    let start = lines.remove(0);

    let mut hs = rsip::Headers::default();
    let mut bad_header: Option<String> = None;
    let mut vias = 0usize;
    for line in &lines {
        match line.split_once(':') {
            Some((name, value)) => {
                let name = name.trim();
                if name.is_empty() || !name.bytes().all(is_token_char) {
                    bad_header.get_or_insert_with(|| format!("Malformed header name {name:?}"));
                    continue;
                }
                let name = canonical_name(name).unwrap_or(name);
                // A value with a control character is left out, so that no
                // answer can copy it; the message is then refused.
                if has_control(value) {
                    bad_header.get_or_insert_with(|| "Bad Header Value".to_string());
                    continue;
                }
                if name.eq_ignore_ascii_case("Via") {
                    vias += headers::split_list(value).len();
                }
                hs.push(rsip::headers::make_header(name, value.trim().to_string()));
            }
            None => {
                bad_header.get_or_insert_with(|| "Header line without a colon".to_string());
            }
        }
    }

    // Compare bytes: the start line may hold multi-byte characters (or U+FFFD
    // from invalid UTF-8), so `start[..4]` could split a character.
    let is_response = start
        .as_bytes()
        .get(..4)
        .is_some_and(|p| p.eq_ignore_ascii_case(b"SIP/"));
    // A request is answerable when its top Via is readable: the Via says where
    // the answer goes (§18.2.2) and its branch is what the client matches the
    // answer with (§17.1.3). A 400 for a missing Call-ID, From, To or CSeq
    // copies what is there, which tells the sender far more than silence.
    // The top Via is read by the same function as `HeaderAccess::top_via`,
    // so "answerable" and "parsed" agree.
    if vias > MAX_VIA {
        return Err(ParseError::drop(format!(
            "{vias} Via elements (at most {MAX_VIA})"
        )));
    }
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

    if lines.len() > MAX_HEADERS {
        return Err(refuse(
            400,
            format!("Too Many Headers (at most {MAX_HEADERS})"),
            &hs,
        ));
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
    if parts.len() != 3 {
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
        return Err(refuse(400, reason, &hs));
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

/// Split the header section into lines, joining continuation lines
/// (leading SP/HT) to the previous one with a single space.
fn unfold(head: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for raw in head.split('\n') {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.is_empty() {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(prev) = out.last_mut() {
                prev.push(' ');
                prev.push_str(line.trim());
                continue;
            }
        }
        out.push(line.to_string());
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

//! Messages → bytes. Responses are built from the request's headers (RFC 3261
//! §8.2.6: Via, From, To, Call-ID, CSeq copied; To-tag added) and written with
//! a Content-Length that always matches the body.
//!
//! Nothing written here can hold a CR, LF or other control character outside
//! the line ends the encoder writes itself: see [`wire_text`].

use crate::headers::{has_ctl, is_ctl, split_list, split_params, Via};
use crate::rsip;
use std::borrow::Cow;
use std::fmt::Write;
use std::net::SocketAddr;

/// The headers every response copies from its request (RFC 3261 §8.2.6.2),
/// by canonical (long) name, case-insensitively. (A 100 also copies
/// Timestamp, §8.2.6.1.) The parser refuses a request with a control
/// character or invalid UTF-8 in one of these by dropping it, since any
/// answer would echo the bad value.
pub fn copied_into_every_response(name: &str) -> bool {
    ["Via", "From", "To", "Call-ID", "CSeq"]
        .iter()
        .any(|n| n.eq_ignore_ascii_case(name))
}

/// `s` as it may go on the wire inside one line (a method, URI, reason
/// phrase, header name or value): every control character but HTAB (see
/// [`crate::headers::is_ctl`]), CR and LF above all, replaced by a space.
///
/// The parser lets no such character through, so a value that has one was
/// made by our own code (or read back from a store written before the parser
/// refused them). It is a bug, and debug builds panic on it to find it; in a
/// release build the value is written with spaces instead, so it stays one
/// line and can inject no header, rather than dropping a header or the whole
/// message.
fn wire_text(s: &str) -> Cow<'_, str> {
    debug_assert!(
        !has_ctl(s),
        "control character in an outgoing SIP line: {s:?}"
    );
    without_ctl(s)
}

/// `s` with every control character but HTAB replaced by a space.
fn without_ctl(s: &str) -> Cow<'_, str> {
    if !has_ctl(s) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(
        s.chars()
            .map(|c| {
                if c.is_ascii() && is_ctl(c as u8) {
                    ' '
                } else {
                    c
                }
            })
            .collect(),
    )
}

/// Write a status line, headers (skipping any Content-Length in them) and body.
pub fn encode_response(code: u16, reason: &str, headers: &rsip::Headers, body: &[u8]) -> Vec<u8> {
    let mut out = String::with_capacity(256 + headers.len() * 48);
    let _ = write!(out, "SIP/2.0 {code} {}\r\n", wire_text(reason));
    write_headers(&mut out, headers, body.len());
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Write a request line, headers (skipping any Content-Length) and body.
pub fn encode_request(method: &str, uri: &str, headers: &rsip::Headers, body: &[u8]) -> Vec<u8> {
    let mut out = String::with_capacity(256 + headers.len() * 48);
    let _ = write!(out, "{} {} SIP/2.0\r\n", wire_text(method), wire_text(uri));
    write_headers(&mut out, headers, body.len());
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

fn write_headers(out: &mut String, headers: &rsip::Headers, body_len: usize) {
    for h in headers.iter() {
        if h.name().eq_ignore_ascii_case("Content-Length") {
            continue;
        }
        let _ = write!(out, "{}: {}\r\n", wire_text(h.name()), wire_text(h.value()));
    }
    let _ = write!(out, "Content-Length: {body_len}\r\n\r\n");
}

/// Add `received` / fill `rport` on a top Via value (RFC 3261 §18.2.1, RFC 3581).
pub fn stamp_via(via: &str, source: SocketAddr) -> String {
    let Some(parsed) = Via::parse(via) else {
        return via.to_string();
    };
    let ip = source.ip().to_string();
    let host_ip = parsed.host.trim_start_matches('[').trim_end_matches(']');
    let mut out = String::with_capacity(via.len() + 40);
    // Rebuild: sent-protocol sent-by, then the params as written (quoted
    // values stay quoted), with rport filled in and received replaced.
    let via = via.trim();
    let (proto_and_host, params) = match via.find(';') {
        Some(i) => (&via[..i], &via[i..]),
        None => (via, ""),
    };
    out.push_str(proto_and_host.trim_end());
    let mut saw_received = false;
    for raw in split_params(params) {
        let name = raw.split('=').next().unwrap_or("").trim();
        if name.eq_ignore_ascii_case("rport") {
            let _ = write!(out, ";rport={}", source.port());
        } else if name.eq_ignore_ascii_case("received") {
            saw_received = true;
            let _ = write!(out, ";received={ip}");
        } else {
            let _ = write!(out, ";{raw}");
        }
    }
    if !saw_received && (host_ip != ip || parsed.rport.is_some()) {
        let _ = write!(out, ";received={ip}");
    }
    out
}

/// Builds a response to a request from the request's headers.
pub struct ResponseBuilder {
    code: u16,
    reason: String,
    headers: rsip::Headers,
    body: Vec<u8>,
}

impl ResponseBuilder {
    /// `to_tag` is added to To when the request's To has none and code > 100.
    ///
    /// Size: every Via element of the request becomes a `Via: ` line of its
    /// own (RFC 3261 §7.3.1 allows either form; one element a line keeps the
    /// top Via easy to stamp and read). That is the one place an answer can
    /// outgrow its request element by element: `Via: x,x,x,…` costs 2 bytes
    /// an element in the request and 8 (`Via: x` CRLF) in the answer, 4×. The
    /// parser drops a request with more than
    /// [`crate::parse::MAX_VIA_ELEMENTS`] elements, so this adds at most
    /// 7 bytes × that cap. From, To, Call-ID and CSeq are copied once each
    /// (the first; a request with two is refused anyway and its 400 needs no
    /// more), a compact name grows to the long one (≤ 6 bytes), and the top
    /// Via may gain `;rport=…;received=…`. So an answer is at most its
    /// request's size plus a constant (see the property test in
    /// `tests/fuzz.rs`), given headers that came from [`crate::parse`].
    pub fn new(
        request_headers: &rsip::Headers,
        code: u16,
        reason: &str,
        to_tag: Option<&str>,
        source: Option<SocketAddr>,
    ) -> Self {
        let mut headers = rsip::Headers::default();
        let mut first_via = true;
        // To, From, Call-ID, CSeq, Timestamp: copied once each.
        let mut seen = [false; 5];
        let mut first = |i: usize| !std::mem::replace(&mut seen[i], true);
        for h in request_headers.iter() {
            let name = h.name();
            if name.eq_ignore_ascii_case("Via") {
                for v in split_list(h.value()) {
                    let value = match (first_via, source) {
                        (true, Some(src)) => stamp_via(v, src),
                        _ => v.to_string(),
                    };
                    first_via = false;
                    headers.push(rsip::Header::Via(rsip::Via::new(value)));
                }
            } else if name.eq_ignore_ascii_case("To") {
                if !first(0) {
                    continue;
                }
                let mut value = h.value().to_string();
                if code > 100 {
                    if let Some(tag) = to_tag {
                        let has_tag =
                            crate::NameAddr::parse(&value).is_some_and(|n| n.tag.is_some());
                        if !has_tag {
                            let _ = write!(value, ";tag={tag}");
                        }
                    }
                }
                headers.push(rsip::Header::To(rsip::To::new(value)));
            } else if (name.eq_ignore_ascii_case("From") && first(1))
                || (name.eq_ignore_ascii_case("Call-ID") && first(2))
                || (name.eq_ignore_ascii_case("CSeq") && first(3))
                // RFC 3261 §8.2.6.1: a 100 (Trying) copies the Timestamp.
                || (code == 100 && name.eq_ignore_ascii_case("Timestamp") && first(4))
            {
                headers.push(h.clone());
            }
        }
        ResponseBuilder {
            code,
            reason: reason.to_string(),
            headers,
            body: Vec::new(),
        }
    }

    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers
            .push(rsip::headers::make_header(name, value.into()));
        self
    }

    pub fn body(mut self, content_type: &str, body: Vec<u8>) -> Self {
        self.headers.push(rsip::headers::make_header(
            "Content-Type",
            content_type.to_string(),
        ));
        self.body = body;
        self
    }

    pub fn code(&self) -> u16 {
        self.code
    }

    pub fn to_tag(&self) -> Option<String> {
        self.headers
            .iter()
            .find(|h| h.name() == "To")
            .and_then(|h| crate::NameAddr::parse(h.value()))
            .and_then(|n| n.tag)
    }

    pub fn encode(&self) -> Vec<u8> {
        encode_response(self.code, &self.reason, &self.headers, &self.body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_never_reach_the_wire() {
        assert_eq!(without_ctl("a\tb"), Cow::Borrowed("a\tb"));
        assert_eq!(without_ctl("안녕 x"), Cow::Borrowed("안녕 x"));
        assert_eq!(
            without_ctl("x\r\nInjected: 1\0\x7f\x1b안"),
            "x  Injected: 1   안"
        );
    }

    /// A value our own code got wrong: a debug build panics (to find the
    /// bug), a release build writes it as one line.
    #[test]
    #[cfg_attr(debug_assertions, should_panic(expected = "control character"))]
    fn a_header_value_with_crlf_is_written_as_one_line() {
        let mut hs = rsip::Headers::default();
        hs.push(rsip::headers::make_header(
            "Subject",
            "hi\r\nInjected: yes".to_string(),
        ));
        let bytes = encode_response(200, "OK\r\nX: y", &hs, b"");
        assert_eq!(
            bytes,
            b"SIP/2.0 200 OK  X: y\r\nSubject: hi  Injected: yes\r\nContent-Length: 0\r\n\r\n"
        );
    }

    #[test]
    fn dialog_headers_are_copied_once() {
        let mut hs = rsip::Headers::default();
        for (n, v) in [
            ("Via", "SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b"),
            ("From", "<sip:a@x>;tag=1"),
            ("From", "<sip:mallory@x>;tag=2"),
            ("To", "<sip:b@x>"),
            ("To", "<sip:c@x>"),
            ("Call-ID", "one"),
            ("Call-ID", "two"),
            ("CSeq", "1 OPTIONS"),
            ("CSeq", "2 OPTIONS"),
            ("Timestamp", "1"),
            ("Timestamp", "2"),
        ] {
            hs.push(rsip::headers::make_header(n, v.to_string()));
        }
        let text = String::from_utf8(ResponseBuilder::new(&hs, 100, "Trying", None, None).encode())
            .unwrap();
        assert_eq!(
            text,
            "SIP/2.0 100 Trying\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\nVia: SIP/2.0/UDP b\r\n\
             From: <sip:a@x>;tag=1\r\nTo: <sip:b@x>\r\nCall-ID: one\r\nCSeq: 1 OPTIONS\r\n\
             Timestamp: 1\r\nContent-Length: 0\r\n\r\n"
        );
    }

    #[test]
    fn via_stamping() {
        let src: SocketAddr = "192.0.2.4:4000".parse().unwrap();
        assert_eq!(
            stamp_via("SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKa;rport", src),
            "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKa;rport=4000;received=192.0.2.4"
        );
        assert_eq!(
            stamp_via("SIP/2.0/UDP 192.0.2.4:4000;branch=z9hG4bKa", src),
            "SIP/2.0/UDP 192.0.2.4:4000;branch=z9hG4bKa"
        );
        assert_eq!(
            stamp_via("SIP/2.0/UDP host.example;branch=z9hG4bKa", src),
            "SIP/2.0/UDP host.example;branch=z9hG4bKa;received=192.0.2.4"
        );
        // Quoted parameter values are written back as they came.
        assert_eq!(
            stamp_via(
                r#"SIP/2.0/UDP 10.0.0.1;X-Note="a b;c";branch=z9hG4bKa;rport"#,
                src
            ),
            r#"SIP/2.0/UDP 10.0.0.1;X-Note="a b;c";branch=z9hG4bKa;rport=4000;received=192.0.2.4"#
        );
    }
}

//! Messages → bytes. Responses are built from the request's headers (RFC 3261
//! §8.2.6: Via, From, To, Call-ID, CSeq copied; To-tag added) and written with
//! a Content-Length that always matches the body.

use crate::headers::{split_list, split_params, Via};
use crate::rsip;
use std::fmt::Write;
use std::net::SocketAddr;

/// Write a status line, headers (skipping any Content-Length in them) and body.
pub fn encode_response(code: u16, reason: &str, headers: &rsip::Headers, body: &[u8]) -> Vec<u8> {
    let mut out = String::with_capacity(256 + headers.len() * 48);
    let _ = write!(out, "SIP/2.0 {code} {reason}\r\n");
    write_headers(&mut out, headers, body.len());
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Write a request line, headers (skipping any Content-Length) and body.
pub fn encode_request(method: &str, uri: &str, headers: &rsip::Headers, body: &[u8]) -> Vec<u8> {
    let mut out = String::with_capacity(256 + headers.len() * 48);
    let _ = write!(out, "{method} {uri} SIP/2.0\r\n");
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
        let (name, value) = (h.name(), h.value());
        // Never a line break inside a header on the wire, whatever a value
        // holds (the parser refuses them; this is the last line of defence
        // for values built elsewhere): CR and LF become spaces.
        if value.contains(['\r', '\n']) || name.contains(['\r', '\n']) {
            let clean = |s: &str| s.replace(['\r', '\n'], " ");
            let _ = write!(out, "{}: {}\r\n", clean(name), clean(value));
        } else {
            let _ = write!(out, "{name}: {value}\r\n");
        }
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
    pub fn new(
        request_headers: &rsip::Headers,
        code: u16,
        reason: &str,
        to_tag: Option<&str>,
        source: Option<SocketAddr>,
    ) -> Self {
        let mut headers = rsip::Headers::default();
        let mut first_via = true;
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
            } else if name.eq_ignore_ascii_case("From")
                || name.eq_ignore_ascii_case("Call-ID")
                || name.eq_ignore_ascii_case("CSeq")
                // RFC 3261 §8.2.6.1: a 100 (Trying) copies the Timestamp.
                || (code == 100 && name.eq_ignore_ascii_case("Timestamp"))
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

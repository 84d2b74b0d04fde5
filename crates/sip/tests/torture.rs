//! Data-driven torture tests in the spirit of RFC 4475: a table of raw
//! messages, each with the transport it arrives on and what the codec must do
//! with it — parse (plus a few checks through the typed accessors), refuse with
//! a status (answerable or not), or drop.
//!
//! The messages are our own; a few header snippets mirror the shapes used in
//! RFC 4475 (folded Via with whitespace around the slashes, exotic method
//! tokens, escaped quotes in display names, overlarge numbers).

use presence_sip::parse::{BAD_HEADER_VALUE, TOO_MANY_HEADERS, TOO_MANY_VIAS};
use presence_sip::rsip;
use presence_sip::{
    frame_stream, parse, ContactValue, HeaderAccess, Message, Method, Request, Response,
    ResponseBuilder, StreamFrame, TransportKind, DEFAULT_MAX_MESSAGE, MAX_HEADER_FIELDS,
    MAX_VIA_ELEMENTS,
};
use std::panic::{catch_unwind, AssertUnwindSafe};

const UDP: TransportKind = TransportKind::Datagram;
const TCP: TransportKind = TransportKind::Stream;

/// What the codec must do with a case.
enum Expect {
    /// Parses as a request with this method token and exactly this body; then
    /// `check` runs further assertions.
    Request {
        method: &'static str,
        body: &'static [u8],
        check: fn(&Request),
    },
    /// Parses as a response with this status code; then `check` runs.
    Response { code: u16, check: fn(&Response) },
    /// Refused with `status`; `answerable` says whether headers to answer
    /// with came back.
    Refused { status: u16, answerable: bool },
    /// Refused with `status` and exactly `reason`; when answerable, no line
    /// of the answer names a header in `left_out` (the bad field is not
    /// echoed).
    RefusedWith {
        status: u16,
        reason: &'static str,
        answerable: bool,
        left_out: &'static [&'static str],
    },
    /// Refused and not answerable: the caller drops it.
    Dropped,
    /// Dropped, for exactly this reason.
    DroppedWith(&'static str),
}

struct Case {
    name: &'static str,
    raw: Vec<u8>,
    transport: TransportKind,
    max: usize,
    expect: Expect,
}

fn case(name: &'static str, raw: Vec<u8>, transport: TransportKind, expect: Expect) -> Case {
    Case {
        name,
        raw,
        transport,
        max: DEFAULT_MAX_MESSAGE,
        expect,
    }
}

fn no_check<T>(_: &T) {}

fn refused(status: u16, answerable: bool) -> Expect {
    Expect::Refused { status, answerable }
}

/// Refused with 400 Bad Header Value, answered without the named headers.
fn bad_value(left_out: &'static [&'static str]) -> Expect {
    Expect::RefusedWith {
        status: 400,
        reason: BAD_HEADER_VALUE,
        answerable: true,
        left_out,
    }
}

/// `n` Via elements, the first a real top Via, the rest as short as a Via
/// element can be (the shape that reflected four times over).
fn via_elements(n: usize) -> Vec<String> {
    let mut v = vec!["SIP/2.0/UDP client.example.com:5060;branch=z9hG4bKtop".to_string()];
    v.extend((1..n).map(|i| format!("p{i}")));
    v
}

/// A valid OPTIONS whose Via header fields are `via_lines` (each already
/// `Name: value`), plus `extra`, with datagram rules.
fn req_with_vias(via_lines: &[String], extra: &[&str]) -> Vec<u8> {
    let vias: Vec<&str> = via_lines.iter().map(String::as_str).collect();
    req_without("OPTIONS", &["Via"], &[&vias[..], extra].concat())
}
/// Lines joined with CRLF. End the header section with `""` and then the
/// body (`""` for none).
fn crlf(lines: &[&str]) -> Vec<u8> {
    lines.join("\r\n").into_bytes()
}

/// Lines joined with bare LF.
fn lf(lines: &[&str]) -> Vec<u8> {
    lines.join("\n").into_bytes()
}

const VIA: &str = "Via: SIP/2.0/UDP client.example.com:5060;branch=z9hG4bK74bf9";
const FROM: &str = "From: \"Alice\" <sip:alice@example.com>;tag=9fxced76sl";
const TO: &str = "To: <sip:bob@example.com>";
const CALL_ID: &str = "Call-ID: 3848276298220188511@client.example.com";

/// A well-formed request: start line, the mandatory headers, `extra`, a
/// correct Content-Length and the body.
fn req(method: &str, uri: &str, extra: &[&str], body: &str) -> Vec<u8> {
    req_bytes(method, uri, extra, body.as_bytes())
}

fn req_bytes(method: &str, uri: &str, extra: &[&str], body: &[u8]) -> Vec<u8> {
    let mut head = format!(
        "{method} {uri} SIP/2.0\r\n{VIA}\r\nMax-Forwards: 70\r\n{FROM}\r\n{TO}\r\n{CALL_ID}\r\nCSeq: 1 {method}\r\n"
    );
    for h in extra {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

/// A request with the mandatory headers except those named in `omit`, plus
/// `extra`, and no Content-Length (datagram rules apply).
fn req_without(method: &str, omit: &[&str], extra: &[&str]) -> Vec<u8> {
    let cseq = format!("CSeq: 1 {method}");
    let all = [VIA, "Max-Forwards: 70", FROM, TO, CALL_ID, cseq.as_str()];
    let mut head = format!("{method} sip:bob@example.com SIP/2.0\r\n");
    for h in all {
        let name = h.split(':').next().unwrap();
        if !omit.contains(&name) {
            head.push_str(h);
            head.push_str("\r\n");
        }
    }
    for h in extra {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// A valid OPTIONS (datagram rules) behind another start line.
fn with_start_line(start: &[u8]) -> Vec<u8> {
    let valid = req_without("OPTIONS", &[], &[]);
    let eol = valid.iter().position(|b| *b == b'\n').unwrap();
    [start, b"\r", &valid[eol..]].concat()
}

fn ok_response(status_line: &str, extra: &[&str]) -> Vec<u8> {
    let mut lines = vec![
        status_line,
        "Via: SIP/2.0/UDP server.example.com;branch=z9hG4bKresp",
        "From: <sip:alice@example.com>;tag=a",
        "To: <sip:bob@example.com>;tag=b",
        "Call-ID: resp-1@example.com",
        "CSeq: 7 PUBLISH",
    ];
    lines.extend_from_slice(extra);
    lines.extend_from_slice(&["Content-Length: 0", "", ""]);
    crlf(&lines)
}

fn cases() -> Vec<Case> {
    let mut v = vec![
        // ---------------------------------------------------------------
        // Header name forms
        // ---------------------------------------------------------------
        case(
            "compact header names",
            crlf(&[
                "SUBSCRIBE sip:bob@example.com SIP/2.0",
                "v: SIP/2.0/UDP client.example.com;branch=z9hG4bKcompact",
                "i: compact-1@client.example.com",
                "f: <sip:alice@example.com>;tag=a1",
                "t: <sip:bob@example.com>",
                "m: <sip:alice@192.0.2.1:5060>",
                "o: presence",
                "u: presence, Message-Summary",
                "k: eventlist",
                "c: application/pidf+xml",
                "e: identity",
                "s: compact subject",
                "CSeq: 1 SUBSCRIBE",
                "l: 5",
                "",
                "hello",
            ]),
            UDP,
            Expect::Request {
                method: "SUBSCRIBE",
                body: b"hello",
                check: |r| {
                    assert_eq!(r.call_id(), Some("compact-1@client.example.com"));
                    assert_eq!(r.from_addr().unwrap().tag.as_deref(), Some("a1"));
                    assert_eq!(r.to_addr().unwrap().uri_text, "sip:bob@example.com");
                    assert_eq!(r.top_via().unwrap().host, "client.example.com");
                    assert_eq!(r.event().unwrap().package, "presence");
                    assert_eq!(r.allow_events(), vec!["presence", "message-summary"]);
                    assert_eq!(r.header("Supported"), Some("eventlist"));
                    assert_eq!(r.content_type().unwrap().as_str(), "application/pidf+xml");
                    assert_eq!(r.header("Content-Encoding"), Some("identity"));
                    assert_eq!(r.header("Subject"), Some("compact subject"));
                    assert_eq!(r.header("Content-Length"), Some("5"));
                    assert_eq!(r.contacts().unwrap().len(), 1);
                    // Compact names are normalised to the long form.
                    let names: Vec<&str> = r.headers.iter().map(|h| h.name()).collect();
                    for long in [
                        "Via",
                        "Call-ID",
                        "From",
                        "To",
                        "Contact",
                        "Event",
                        "Allow-Events",
                        "Supported",
                        "Content-Type",
                        "Content-Encoding",
                        "Subject",
                        "Content-Length",
                    ] {
                        assert!(names.contains(&long), "{long} missing from {names:?}");
                    }
                    assert!(!names.iter().any(|n| n.len() == 1), "{names:?}");
                },
            },
        ),
        case(
            "upper-case compact names",
            crlf(&[
                "OPTIONS sip:bob@example.com SIP/2.0",
                "V: SIP/2.0/UDP client.example.com;branch=z9hG4bKup",
                "I: upper@client",
                "F: <sip:alice@example.com>;tag=a1",
                "T: <sip:bob@example.com>",
                "CSeq: 2 OPTIONS",
                "L: 0",
                "",
                "",
            ]),
            TCP,
            Expect::Request {
                method: "OPTIONS",
                body: b"",
                check: |r| assert_eq!(r.call_id(), Some("upper@client")),
            },
        ),
        case(
            "header names in any case",
            crlf(&[
                "PUBLISH sip:bob@example.com SIP/2.0",
                "vIA: SIP/2.0/UDP client.example.com;branch=z9hG4bKcase",
                "MAX-FORWARDS: 70",
                "fRoM: <sip:alice@example.com>;tag=x",
                "TO: <sip:bob@example.com>",
                "call-id: case@client",
                "cseq: 9 PUBLISH",
                "EVENT: presence",
                "sip-etag: abc",
                "Sip-If-Match: etag-77",
                "EXPIRES: 60",
                "content-LENGTH: 0",
                "",
                "",
            ]),
            TCP,
            Expect::Request {
                method: "PUBLISH",
                body: b"",
                check: |r| {
                    assert_eq!(r.call_id(), Some("case@client"));
                    assert_eq!(r.cseq(), Some((9, "PUBLISH".to_string())));
                    assert_eq!(r.event().unwrap().package, "presence");
                    assert_eq!(r.sip_etag(), Some("abc"));
                    assert_eq!(r.sip_if_match(), Some("etag-77"));
                    assert_eq!(r.expires(), Some(Ok(60)));
                    assert_eq!(r.max_forwards(), Some(Ok(70)));
                },
            },
        ),
        case(
            "unknown headers are kept",
            req(
                "OPTIONS",
                "sip:bob@example.com",
                &[
                    "X-Custom-Thing: some value; with=params, and, commas",
                    "P-Whatever:   padded   ",
                    "NewFangledHeader: newfangled value",
                ],
                "",
            ),
            UDP,
            Expect::Request {
                method: "OPTIONS",
                body: b"",
                check: |r| {
                    assert_eq!(
                        r.header("x-custom-thing"),
                        Some("some value; with=params, and, commas")
                    );
                    assert_eq!(r.header("P-Whatever"), Some("padded"));
                    assert_eq!(r.header("NEWFANGLEDHEADER"), Some("newfangled value"));
                },
            },
        ),
        // ---------------------------------------------------------------
        // Line structure
        // ---------------------------------------------------------------
        case(
            "folded header lines and whitespace around separators",
            crlf(&[
                "NOTIFY sip:alice@192.0.2.1:5060 SIP/2.0",
                "Via  : SIP  /   2.0",
                "  /UDP",
                "    server.example.com;branch=z9hG4bKfold",
                "Max-Forwards:\t70",
                "From:   <sip:bob@example.com>",
                "\t;tag=n1",
                "To: <sip:alice@example.com>;tag=9fxced76sl",
                "Call-ID   :  fold-1@example.com",
                "CSeq: 3",
                "   NOTIFY",
                "Subject: I know you're there,",
                "         pick up the phone",
                "\t and talk to me!",
                "Event: presence",
                "Subscription-State: active;expires=100",
                "Content-Type: application / pidf+xml ; charset=UTF-8",
                "Content-Length: 0",
                "",
                "",
            ]),
            UDP,
            Expect::Request {
                method: "NOTIFY",
                body: b"",
                check: |r| {
                    let via = r.top_via().expect("folded Via with SWS around slashes");
                    assert_eq!(via.transport, "UDP");
                    assert_eq!(via.host, "server.example.com");
                    assert_eq!(via.branch.as_deref(), Some("z9hG4bKfold"));
                    assert_eq!(r.from_addr().unwrap().tag.as_deref(), Some("n1"));
                    assert_eq!(r.cseq(), Some((3, "NOTIFY".to_string())));
                    assert_eq!(r.call_id(), Some("fold-1@example.com"));
                    assert_eq!(r.content_type().unwrap().as_str(), "application/pidf+xml");
                    assert_eq!(
                        r.header("Subject"),
                        Some("I know you're there, pick up the phone and talk to me!")
                    );
                },
            },
        ),
        case(
            "folded Content-Length value",
            crlf(&[
                "MESSAGE sip:bob@example.com SIP/2.0",
                VIA,
                FROM,
                TO,
                CALL_ID,
                "CSeq: 1 MESSAGE",
                "Content-Length:",
                "  5",
                "",
                "hello, and more",
            ]),
            UDP,
            Expect::Request {
                method: "MESSAGE",
                body: b"hello",
                check: no_check,
            },
        ),
        case(
            "continuation line that looks like a Content-Length header",
            crlf(&[
                "MESSAGE sip:bob@example.com SIP/2.0",
                VIA,
                FROM,
                TO,
                CALL_ID,
                "CSeq: 1 MESSAGE",
                "Subject: lunch?",
                " l: 3",
                "Content-Length: 5",
                "",
                "hello",
            ]),
            TCP,
            Expect::Request {
                method: "MESSAGE",
                body: b"hello",
                check: |r| assert_eq!(r.header("Subject"), Some("lunch? l: 3")),
            },
        ),
        case(
            "LF-only line endings",
            lf(&[
                "MESSAGE sip:bob@example.com SIP/2.0",
                VIA,
                FROM,
                TO,
                CALL_ID,
                "CSeq: 1 MESSAGE",
                "Content-Type: text/plain",
                "Content-Length: 2",
                "",
                "hi",
            ]),
            TCP,
            Expect::Request {
                method: "MESSAGE",
                body: b"hi",
                check: |r| {
                    assert_eq!(r.call_id(), Some("3848276298220188511@client.example.com"));
                    assert_eq!(r.content_type().unwrap().as_str(), "text/plain");
                },
            },
        ),
        case(
            "LF-only line endings, datagram without Content-Length",
            lf(&[
                "MESSAGE sip:bob@example.com SIP/2.0",
                VIA,
                FROM,
                TO,
                CALL_ID,
                "CSeq: 1 MESSAGE",
                "",
                "line one\nline two\n",
            ]),
            UDP,
            Expect::Request {
                method: "MESSAGE",
                body: b"line one\nline two\n",
                check: no_check,
            },
        ),
        case(
            "leading CRLFs before the start line",
            [b"\r\n\r\n\r\n".as_slice(), &req("OPTIONS", "sip:bob@example.com", &[], "")].concat(),
            UDP,
            Expect::Request {
                method: "OPTIONS",
                body: b"",
                check: no_check,
            },
        ),
        // ---------------------------------------------------------------
        // IPv6, multi-value headers
        // ---------------------------------------------------------------
        case(
            "IPv6 in Request-URI, Via and Contact",
            crlf(&[
                "OPTIONS sip:bob@[2001:db8::10]:5070;transport=udp SIP/2.0",
                "Via: SIP/2.0/UDP [2001:db8::9:1]:5060;branch=z9hG4bKv6;rport;received=2001:db8::9:255",
                "Via: SIP/2.0/UDP [2001:db8::9:2];branch=z9hG4bKv6b",
                "From: \"IPv6 Alice\" <sip:alice@[2001:db8::9:1]>;tag=v6",
                "To: <sip:bob@[2001:db8::10]>",
                "Call-ID: v6@[2001:db8::9:1]",
                "CSeq: 1 OPTIONS",
                "Contact: <sip:alice@[2001:db8::9:1]:5060;transport=udp>;expires=30",
                "Content-Length: 0",
                "",
                "",
            ]),
            UDP,
            Expect::Request {
                method: "OPTIONS",
                body: b"",
                check: |r| {
                    assert_eq!(r.uri.host().to_string(), "[2001:db8::10]");
                    assert_eq!(r.uri.host_with_port.port.map(|p| p.value()), Some(5070));
                    assert_eq!(r.uri.user(), Some("bob"));
                    assert_eq!(
                        r.uri_text,
                        "sip:bob@[2001:db8::10]:5070;transport=udp"
                    );
                    let via = r.top_via().unwrap();
                    assert_eq!(via.host, "[2001:db8::9:1]");
                    assert_eq!(via.port, Some(5060));
                    assert_eq!(via.rport, Some(None));
                    assert_eq!(via.received.as_deref(), Some("2001:db8::9:255"));
                    assert_eq!(via.sent_by(), "[2001:db8::9:1]:5060");
                    assert_eq!(r.vias().len(), 2);
                    let contacts = r.contacts().unwrap();
                    let ContactValue::Addr(c) = &contacts[0] else {
                        panic!("expected an address, got {contacts:?}")
                    };
                    assert_eq!(c.uri.host().to_string(), "[2001:db8::9:1]");
                    assert_eq!(c.param("expires"), Some(&Some("30".to_string())));
                    assert_eq!(
                        r.from_addr().unwrap().uri.host().to_string(),
                        "[2001:db8::9:1]"
                    );
                },
            },
        ),
        case(
            "IPv6 Request-URI without user or port",
            req("OPTIONS", "sip:[::1]", &[], ""),
            UDP,
            Expect::Request {
                method: "OPTIONS",
                body: b"",
                check: |r| {
                    assert_eq!(r.uri.host().to_string(), "[::1]");
                    assert_eq!(r.uri.host_with_port.port, None);
                },
            },
        ),
        case(
            "multi-value Via on one line and on several lines",
            crlf(&[
                "OPTIONS sip:bob@example.com SIP/2.0",
                "Via: SIP/2.0/UDP first.example.com;branch=z9hG4bK1 , SIP/2.0/TCP second.example.com:5061;branch=z9hG4bK2",
                "v: SIP/2.0/UDP third.example.com;branch=z9hG4bK3",
                "Via: SIP/2.0/TLS [2001:db8::4]:5061;branch=z9hG4bK4,SIP/2.0/UDP 192.0.2.5;branch=z9hG4bK5",
                FROM,
                TO,
                CALL_ID,
                "CSeq: 1 OPTIONS",
                "Content-Length: 0",
                "",
                "",
            ]),
            UDP,
            Expect::Request {
                method: "OPTIONS",
                body: b"",
                check: |r| {
                    let vias = r.vias();
                    assert_eq!(vias.len(), 5, "{vias:?}");
                    let parsed: Vec<_> = vias
                        .iter()
                        .map(|v| presence_sip::Via::parse(v).unwrap())
                        .collect();
                    let hosts: Vec<&str> = parsed.iter().map(|v| v.host.as_str()).collect();
                    assert_eq!(
                        hosts,
                        [
                            "first.example.com",
                            "second.example.com",
                            "third.example.com",
                            "[2001:db8::4]",
                            "192.0.2.5"
                        ]
                    );
                    assert_eq!(parsed[1].transport, "TCP");
                    assert_eq!(parsed[1].port, Some(5061));
                    assert_eq!(parsed[3].transport, "TLS");
                    assert_eq!(r.top_via().unwrap().branch.as_deref(), Some("z9hG4bK1"));
                },
            },
        ),
        case(
            "multi-value Contact on one line and on several lines",
            req(
                "REGISTER",
                "sip:example.com",
                &[
                    "Contact: <sip:a@192.0.2.1>;expires=60, \"Bob, Jr.\" <sip:b@192.0.2.2;transport=tcp>;q=0.5",
                    "m: sip:c@192.0.2.3;expires=0",
                    "Contact: \"Quote \\\"Q\\\", Esq.\" <sip:d@192.0.2.4>;+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>\"",
                ],
                "",
            ),
            UDP,
            Expect::Request {
                method: "REGISTER",
                body: b"",
                check: |r| {
                    let contacts = r.contacts().unwrap();
                    assert_eq!(contacts.len(), 4, "{contacts:?}");
                    let addrs: Vec<_> = contacts
                        .iter()
                        .map(|c| match c {
                            ContactValue::Addr(a) => a,
                            ContactValue::Star => panic!("unexpected *"),
                        })
                        .collect();
                    assert_eq!(addrs[0].uri_text, "sip:a@192.0.2.1");
                    assert_eq!(addrs[0].param("expires"), Some(&Some("60".to_string())));
                    assert_eq!(addrs[1].display.as_deref(), Some("Bob, Jr."));
                    assert_eq!(addrs[1].uri_text, "sip:b@192.0.2.2;transport=tcp");
                    assert_eq!(addrs[1].param("q"), Some(&Some("0.5".to_string())));
                    // addr-spec form: ;expires belongs to the header, not the URI.
                    assert_eq!(addrs[2].uri_text, "sip:c@192.0.2.3");
                    assert_eq!(addrs[2].param("expires"), Some(&Some("0".to_string())));
                    assert_eq!(addrs[3].display.as_deref(), Some("Quote \"Q\", Esq."));
                    assert_eq!(
                        addrs[3].param("+sip.instance"),
                        Some(&Some("<urn:uuid:00000000-0000-1000-8000-000A95A0E128>".to_string()))
                    );
                },
            },
        ),
        case(
            "Contact star",
            req(
                "REGISTER",
                "sip:example.com",
                &["Contact: *", "Expires: 0"],
                "",
            ),
            UDP,
            Expect::Request {
                method: "REGISTER",
                body: b"",
                check: |r| {
                    assert_eq!(r.contacts(), Ok(vec![ContactValue::Star]));
                    assert_eq!(r.expires(), Some(Ok(0)));
                },
            },
        ),
        case(
            "quoted display names with commas, escaped quotes and angle brackets",
            crlf(&[
                "MESSAGE sip:bob@example.com SIP/2.0",
                VIA,
                "From: \"Smith, \\\"Bobby\\\" Jr. \\\\ Co\" <sip:bob@example.com>;tag=q1",
                "To: \"<sip:not-the-uri@example.com>\" <sip:carol@example.com>",
                CALL_ID,
                "CSeq: 1 MESSAGE",
                "Contact: \"a,b;c=d\" <sip:x@192.0.2.9>",
                "Content-Length: 0",
                "",
                "",
            ]),
            UDP,
            Expect::Request {
                method: "MESSAGE",
                body: b"",
                check: |r| {
                    let from = r.from_addr().unwrap();
                    assert_eq!(from.display.as_deref(), Some("Smith, \"Bobby\" Jr. \\ Co"));
                    assert_eq!(from.uri_text, "sip:bob@example.com");
                    assert_eq!(from.tag.as_deref(), Some("q1"));
                    let to = r.to_addr().unwrap();
                    assert_eq!(to.display.as_deref(), Some("<sip:not-the-uri@example.com>"));
                    assert_eq!(to.uri_text, "sip:carol@example.com");
                    assert_eq!(to.tag, None);
                    let contacts = r.contacts().unwrap();
                    assert_eq!(contacts.len(), 1);
                    let ContactValue::Addr(c) = &contacts[0] else {
                        panic!()
                    };
                    assert_eq!(c.display.as_deref(), Some("a,b;c=d"));
                    assert!(c.params.is_empty(), "{:?}", c.params);
                },
            },
        ),
        case(
            "unquoted display name with spaces",
            req(
                "OPTIONS",
                "sip:bob@example.com",
                &["Contact: Alice   Liddell <sip:alice@192.0.2.1>"],
                "",
            ),
            UDP,
            Expect::Request {
                method: "OPTIONS",
                body: b"",
                check: |r| {
                    let contacts = r.contacts().unwrap();
                    let ContactValue::Addr(c) = &contacts[0] else {
                        panic!()
                    };
                    assert_eq!(c.display.as_deref(), Some("Alice   Liddell"));
                },
            },
        ),
        // ---------------------------------------------------------------
        // Methods and URIs
        // ---------------------------------------------------------------
        case(
            "unknown method parses as an extension (answered 501 upstream)",
            req("FOOBAR", "sip:bob@example.com", &[], ""),
            UDP,
            Expect::Request {
                method: "FOOBAR",
                body: b"",
                check: |r| assert_eq!(r.method, Method::Extension("FOOBAR".into())),
            },
        ),
        case(
            "method made of every token character",
            req(
                "!interesting-Method0123456789_*+`.%indeed'~",
                "sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com",
                &[],
                "",
            ),
            UDP,
            Expect::Request {
                method: "!interesting-Method0123456789_*+`.%indeed'~",
                body: b"",
                check: |r| {
                    assert!(matches!(r.method, Method::Extension(_)));
                    assert_eq!(r.uri.host().to_string(), "example.com");
                },
            },
        ),
        case(
            "method names are case-sensitive",
            req("options", "sip:bob@example.com", &[], ""),
            UDP,
            Expect::Request {
                method: "options",
                body: b"",
                check: |r| assert_eq!(r.method, Method::Extension("options".into())),
            },
        ),
        case(
            "known presence methods map to rsip methods",
            req("PUBLISH", "sips:bob@example.com", &["Event: presence"], ""),
            TCP,
            Expect::Request {
                method: "PUBLISH",
                body: b"",
                check: |r| {
                    assert!(r.method.is(rsip::Method::Publish));
                    assert_eq!(r.uri.scheme, Some(rsip::Scheme::Sips));
                },
            },
        ),
        case(
            "user parts holding ; and ? (RFC 3261 user-unreserved)",
            crlf(&[
                "MESSAGE sip:+1-212-555-1212;phone-context=example.com@gw.example.com;user=phone SIP/2.0",
                VIA,
                FROM,
                "To: <sip:alice;day=tuesday@atlanta.example.com>",
                CALL_ID,
                "CSeq: 1 MESSAGE",
                "Contact: sip:who?me@192.0.2.7;expires=10",
                "",
                "",
            ]),
            UDP,
            Expect::Request {
                method: "MESSAGE",
                body: b"",
                check: |r| {
                    assert_eq!(r.uri.user(), Some("+1-212-555-1212;phone-context=example.com"));
                    assert_eq!(r.uri.host().to_string(), "gw.example.com");
                    assert_eq!(r.uri.params.len(), 1, "{:?}", r.uri.params);
                    let to = r.to_addr().unwrap();
                    assert_eq!(to.uri.user(), Some("alice;day=tuesday"));
                    assert_eq!(to.uri.host().to_string(), "atlanta.example.com");
                    let contacts = r.contacts().unwrap();
                    let ContactValue::Addr(c) = &contacts[0] else {
                        panic!()
                    };
                    assert_eq!(c.uri.user(), Some("who?me"));
                    assert_eq!(c.uri.host().to_string(), "192.0.2.7");
                    assert_eq!(c.param("expires"), Some(&Some("10".to_string())));
                },
            },
        ),
        case(
            "upper-case URI scheme",
            req("OPTIONS", "SIP:bob@Example.COM", &[], ""),
            UDP,
            Expect::Request {
                method: "OPTIONS",
                body: b"",
                check: |r| assert_eq!(r.uri.scheme, Some(rsip::Scheme::Sip)),
            },
        ),
        case(
            "tel Request-URI",
            req("MESSAGE", "tel:+1-201-555-0123", &[], "x"),
            UDP,
            Expect::Request {
                method: "MESSAGE",
                body: b"x",
                check: |r| assert_eq!(r.uri_text, "tel:+1-201-555-0123"),
            },
        ),
        case(
            "unknown scheme in To is not the Request-URI's business",
            crlf(&[
                "OPTIONS sip:bob@example.com SIP/2.0",
                VIA,
                FROM,
                "To: isbn:2983792873",
                CALL_ID,
                "CSeq: 1 OPTIONS",
                "",
                "",
            ]),
            UDP,
            Expect::Request {
                method: "OPTIONS",
                body: b"",
                check: |r| assert_eq!(r.to_addr().unwrap().uri_text, "isbn:2983792873"),
            },
        ),
        case(
            "escaped characters and a NUL escape in the Request-URI",
            req("OPTIONS", "sip:sips%3Auser%40example.com@example.net;param=%00", &[], ""),
            UDP,
            Expect::Request {
                method: "OPTIONS",
                body: b"",
                check: |r| assert_eq!(r.uri.host().to_string(), "example.net"),
            },
        ),
        case(
            "RFC 2543 style Via without branch",
            crlf(&[
                "OPTIONS sip:bob@example.com SIP/2.0",
                "Via: SIP/2.0/UDP old.example.com",
                FROM,
                TO,
                CALL_ID,
                "CSeq: 1 OPTIONS",
                "",
                "",
            ]),
            UDP,
            Expect::Request {
                method: "OPTIONS",
                body: b"",
                check: |r| {
                    let via = r.top_via().unwrap();
                    assert_eq!(via.branch, None);
                    assert_eq!(via.port, None);
                    assert!(r.transaction_key().unwrap().starts_with("2543|"));
                },
            },
        ),
        // ---------------------------------------------------------------
        // Bodies and Content-Length
        // ---------------------------------------------------------------
        case(
            "datagram without Content-Length: body is the rest of the packet",
            crlf(&[
                "MESSAGE sip:bob@example.com SIP/2.0",
                VIA,
                FROM,
                TO,
                CALL_ID,
                "CSeq: 1 MESSAGE",
                "Content-Type: text/plain",
                "",
                "Hello Bob\r\n\r\nSecond paragraph\r\n",
            ]),
            UDP,
            Expect::Request {
                method: "MESSAGE",
                body: b"Hello Bob\r\n\r\nSecond paragraph\r\n",
                check: no_check,
            },
        ),
        case(
            "datagram with a Content-Length shorter than the packet",
            crlf(&[
                "MESSAGE sip:bob@example.com SIP/2.0",
                VIA,
                FROM,
                TO,
                CALL_ID,
                "CSeq: 1 MESSAGE",
                "Content-Length: 5",
                "",
                "hello world, these bytes are dropped",
            ]),
            UDP,
            Expect::Request {
                method: "MESSAGE",
                body: b"hello",
                check: no_check,
            },
        ),
        case(
            "two requests in one datagram: the second is dropped",
            [
                req("OPTIONS", "sip:bob@example.com", &[], ""),
                req("REGISTER", "sip:example.com", &[], "surprise"),
            ]
            .concat(),
            UDP,
            Expect::Request {
                method: "OPTIONS",
                body: b"",
                check: |r| assert_eq!(r.header_all("CSeq").count(), 1),
            },
        ),
        case(
            "Content-Length and l: that agree",
            crlf(&[
                "MESSAGE sip:bob@example.com SIP/2.0",
                VIA,
                FROM,
                TO,
                CALL_ID,
                "CSeq: 1 MESSAGE",
                "Content-Length: 5",
                "l: 5",
                "",
                "hello",
            ]),
            TCP,
            Expect::Request {
                method: "MESSAGE",
                body: b"hello",
                check: no_check,
            },
        ),
        case(
            "UTF-8 body over UDP is kept byte for byte",
            req(
                "MESSAGE",
                "sip:bob@example.com",
                &["Content-Type: text/plain;charset=UTF-8"],
                "안녕하세요",
            ),
            UDP,
            Expect::Request {
                method: "MESSAGE",
                body: "안녕하세요".as_bytes(),
                check: |r| {
                    assert_eq!(r.header("Content-Length"), Some("15"));
                    assert_eq!(r.body.len(), 15);
                    assert_eq!(std::str::from_utf8(&r.body).unwrap(), "안녕하세요");
                },
            },
        ),
        case(
            "UTF-8 body over TCP is kept byte for byte",
            crlf(&[
                "MESSAGE sip:bob@example.com SIP/2.0",
                VIA,
                FROM,
                TO,
                CALL_ID,
                "CSeq: 1 MESSAGE",
                "Content-Type: text/plain;charset=UTF-8",
                "Content-Length: 15",
                "",
                "안녕하세요",
            ]),
            TCP,
            Expect::Request {
                method: "MESSAGE",
                body: "안녕하세요".as_bytes(),
                check: no_check,
            },
        ),
        case(
            "Message/CPIM body with its own header block",
            req(
                "MESSAGE",
                "sip:bob@example.com",
                &["Content-Type: Message/CPIM"],
                CPIM,
            ),
            TCP,
            Expect::Request {
                method: "MESSAGE",
                body: CPIM.as_bytes(),
                check: |r| {
                    assert_eq!(r.content_type().unwrap().as_str(), "message/cpim");
                    // The CPIM headers stay in the body.
                    assert!(r.header("DateTime").is_none());
                    assert_eq!(r.header_all("From").count(), 1);
                },
            },
        ),
        case(
            "binary body with NUL and invalid UTF-8 bytes",
            req_bytes(
                "MESSAGE",
                "sip:bob@example.com",
                &["Content-Type: application/octet-stream"],
                b"\x00\xff\xfe\r\n\r\n\x80",
            ),
            UDP,
            Expect::Request {
                method: "MESSAGE",
                body: b"\x00\xff\xfe\r\n\r\n\x80",
                check: no_check,
            },
        ),
        // ---------------------------------------------------------------
        // Typed presence headers
        // ---------------------------------------------------------------
        case(
            "Event with id and parameters",
            req(
                "SUBSCRIBE",
                "sip:bob@example.com",
                &["Event: Presence ; id=1;Foo=\"Bar\""],
                "",
            ),
            UDP,
            Expect::Request {
                method: "SUBSCRIBE",
                body: b"",
                check: |r| {
                    let e = r.event().unwrap();
                    assert_eq!(e.package, "presence");
                    assert_eq!(e.id.as_deref(), Some("1"));
                    assert!(e.params.contains(&("foo".to_string(), Some("Bar".to_string()))));
                },
            },
        ),
        case(
            "Event with a template package",
            req("SUBSCRIBE", "sip:bob@example.com", &["o: presence.winfo"], ""),
            UDP,
            Expect::Request {
                method: "SUBSCRIBE",
                body: b"",
                check: |r| {
                    let e = r.event().unwrap();
                    assert_eq!(e.package, "presence.winfo");
                    assert_eq!(e.id, None);
                },
            },
        ),
        case(
            "PUBLISH with SIP-If-Match, Expires and a PIDF body",
            req(
                "PUBLISH",
                "sip:alice@example.com",
                &[
                    "Event: presence",
                    "SIP-If-Match:   dx200xyz  ",
                    "Expires: 3600",
                    "Content-Type: application/pidf+xml",
                ],
                PIDF,
            ),
            UDP,
            Expect::Request {
                method: "PUBLISH",
                body: PIDF.as_bytes(),
                check: |r| {
                    assert_eq!(r.sip_if_match(), Some("dx200xyz"));
                    assert_eq!(r.sip_etag(), None);
                    assert_eq!(r.expires(), Some(Ok(3600)));
                    assert_eq!(r.content_type().unwrap().as_str(), "application/pidf+xml");
                },
            },
        ),
        case(
            "NOTIFY with Subscription-State and Allow-Events",
            req(
                "NOTIFY",
                "sip:alice@192.0.2.1",
                &[
                    "Event: presence;id=7",
                    "Subscription-State: Active ;expires=599",
                    "Allow-Events: presence, Presence.WINFO",
                    "u: dialog",
                ],
                "",
            ),
            UDP,
            Expect::Request {
                method: "NOTIFY",
                body: b"",
                check: |r| {
                    let s = r.subscription_state().unwrap();
                    assert_eq!(s.state, "active");
                    assert_eq!(s.expires, Some(599));
                    assert_eq!(s.reason, None);
                    assert_eq!(r.allow_events(), vec!["presence", "presence.winfo", "dialog"]);
                    assert_eq!(r.event().unwrap().id.as_deref(), Some("7"));
                },
            },
        ),
        case(
            "terminated Subscription-State with reason and retry-after",
            req(
                "NOTIFY",
                "sip:alice@192.0.2.1",
                &[
                    "Event: presence",
                    "Subscription-State: terminated;reason=probation;retry-after=30",
                ],
                "",
            ),
            UDP,
            Expect::Request {
                method: "NOTIFY",
                body: b"",
                check: |r| {
                    let s = r.subscription_state().unwrap();
                    assert_eq!(s.state, "terminated");
                    assert_eq!(s.reason.as_deref(), Some("probation"));
                    assert_eq!(s.retry_after, Some(30));
                    assert_eq!(s.expires, None);
                },
            },
        ),
        case(
            "Accept over several lines, with parameters and ranges",
            req(
                "SUBSCRIBE",
                "sip:bob@example.com",
                &[
                    "Event: presence",
                    "Accept: application/pidf+xml;q=1.0, Application/RLMI+XML",
                    "Accept: multipart/related;type=\"application/rlmi+xml\", text/*",
                ],
                "",
            ),
            UDP,
            Expect::Request {
                method: "SUBSCRIBE",
                body: b"",
                check: |r| {
                    let accept: Vec<String> = r
                        .accept()
                        .unwrap()
                        .into_iter()
                        .map(|m| m.as_str().to_string())
                        .collect();
                    assert_eq!(
                        accept,
                        [
                            "application/pidf+xml",
                            "application/rlmi+xml",
                            "multipart/related",
                            "text/*"
                        ]
                    );
                },
            },
        ),
        case(
            "empty Accept is not the same as no Accept",
            req(
                "SUBSCRIBE",
                "sip:bob@example.com",
                &["Event: presence", "Accept:"],
                "",
            ),
            UDP,
            Expect::Request {
                method: "SUBSCRIBE",
                body: b"",
                check: |r| assert_eq!(r.accept(), Some(vec![])),
            },
        ),
        case(
            "no Accept",
            req("SUBSCRIBE", "sip:bob@example.com", &["Event: presence"], ""),
            UDP,
            Expect::Request {
                method: "SUBSCRIBE",
                body: b"",
                check: |r| assert_eq!(r.accept(), None),
            },
        ),
        case(
            "huge Expires saturates",
            req(
                "SUBSCRIBE",
                "sip:bob@example.com",
                &[
                    "Event: presence",
                    "Expires: 1000000000000000000000000000000000000000000000000",
                ],
                "",
            ),
            UDP,
            Expect::Request {
                method: "SUBSCRIBE",
                body: b"",
                check: |r| assert_eq!(r.expires(), Some(Ok(u32::MAX))),
            },
        ),
        case(
            "malformed Expires is reported, not fatal",
            req(
                "SUBSCRIBE",
                "sip:bob@example.com",
                &["Event: presence", "Expires: soon"],
                "",
            ),
            UDP,
            Expect::Request {
                method: "SUBSCRIBE",
                body: b"",
                check: |r| assert_eq!(r.expires(), Some(Err(()))),
            },
        ),
        case(
            "Max-Forwards zero parses (483 is the server's call)",
            crlf(&[
                "OPTIONS sip:bob@example.com SIP/2.0",
                VIA,
                "Max-Forwards: 0",
                FROM,
                TO,
                CALL_ID,
                "CSeq: 1 OPTIONS",
                "",
                "",
            ]),
            UDP,
            Expect::Request {
                method: "OPTIONS",
                body: b"",
                check: |r| assert_eq!(r.max_forwards(), Some(Ok(0))),
            },
        ),
        case(
            "largest legal CSeq",
            crlf(&[
                "OPTIONS sip:bob@example.com SIP/2.0",
                VIA,
                FROM,
                TO,
                CALL_ID,
                "CSeq: 2147483647 OPTIONS",
                "",
                "",
            ]),
            UDP,
            Expect::Request {
                method: "OPTIONS",
                body: b"",
                check: |r| assert_eq!(r.cseq(), Some((2147483647, "OPTIONS".to_string()))),
            },
        ),
        // ---------------------------------------------------------------
        // Responses
        // ---------------------------------------------------------------
        case(
            "200 response with SIP-ETag",
            ok_response("SIP/2.0 200 OK", &["SIP-ETag: dx200xyz", "Expires: 1800"]),
            UDP,
            Expect::Response {
                code: 200,
                check: |r| {
                    assert_eq!(r.reason, "OK");
                    assert_eq!(r.sip_etag(), Some("dx200xyz"));
                    assert_eq!(r.expires(), Some(Ok(1800)));
                    assert_eq!(r.cseq(), Some((7, "PUBLISH".to_string())));
                },
            },
        ),
        case(
            "response with a UTF-8 reason phrase",
            ok_response("SIP/2.0 202 받았습니다 — accepted", &[]),
            TCP,
            Expect::Response {
                code: 202,
                check: |r| assert_eq!(r.reason, "받았습니다 — accepted"),
            },
        ),
        case(
            "response without a reason phrase",
            ok_response("SIP/2.0 100 ", &[]),
            UDP,
            Expect::Response {
                code: 100,
                check: |r| assert_eq!(r.reason, ""),
            },
        ),
        case(
            "response with a novel status code",
            ok_response("SIP/2.0 499 Something New", &["Min-Expires: 60"]),
            UDP,
            Expect::Response {
                code: 499,
                check: |r| assert_eq!(r.min_expires(), Some(60)),
            },
        ),
        case(
            "response with an overlarge status code",
            ok_response("SIP/2.0 4294967301 better not break the receiver", &[]),
            UDP,
            Expect::Dropped,
        ),
        case(
            "response with a status code below 100",
            ok_response("SIP/2.0 099 Too Small", &[]),
            UDP,
            Expect::Dropped,
        ),
        case(
            "response with a signed status code",
            ok_response("SIP/2.0 +200 OK", &[]),
            UDP,
            Expect::Dropped,
        ),
        case(
            "response with an unknown SIP version",
            ok_response("SIP/7.0 200 OK", &[]),
            UDP,
            Expect::Dropped,
        ),
        case(
            "response without CSeq",
            crlf(&[
                "SIP/2.0 200 OK",
                "Via: SIP/2.0/UDP server.example.com;branch=z9hG4bKresp",
                "From: <sip:alice@example.com>;tag=a",
                "To: <sip:bob@example.com>;tag=b",
                "Call-ID: resp-1@example.com",
                "Content-Length: 0",
                "",
                "",
            ]),
            UDP,
            Expect::Dropped,
        ),
        case(
            "response with a bad Content-Length is dropped, never answered",
            ok_response("SIP/2.0 200 OK", &["l: 10"]),
            UDP,
            Expect::Dropped,
        ),
        // ---------------------------------------------------------------
        // Refused, answerable
        // ---------------------------------------------------------------
        case(
            "Content-Length larger than the datagram",
            crlf(&[
                "MESSAGE sip:bob@example.com SIP/2.0",
                VIA,
                FROM,
                TO,
                CALL_ID,
                "CSeq: 1 MESSAGE",
                "Content-Length: 9999",
                "",
                "short",
            ]),
            UDP,
            refused(400, true),
        ),
        case(
            "non-numeric Content-Length",
            req_without("MESSAGE", &[], &["Content-Length: five"]),
            UDP,
            refused(400, true),
        ),
        case(
            "negative Content-Length",
            req_without("MESSAGE", &[], &["Content-Length: -5"]),
            UDP,
            refused(400, true),
        ),
        case(
            "empty Content-Length",
            req_without("MESSAGE", &[], &["Content-Length:"]),
            UDP,
            refused(400, true),
        ),
        case(
            "conflicting Content-Length values",
            [
                req_without("MESSAGE", &[], &["Content-Length: 5", "l: 6"]),
                b"hello!".to_vec(),
            ]
            .concat(),
            UDP,
            refused(400, true),
        ),
        case(
            "Content-Length missing on a stream",
            req_without("OPTIONS", &[], &[]),
            TCP,
            refused(400, true),
        ),
        case(
            "CSeq method does not match the request method",
            crlf(&[
                "OPTIONS sip:bob@example.com SIP/2.0",
                VIA,
                FROM,
                TO,
                CALL_ID,
                "CSeq: 1 INVITE",
                "",
                "",
            ]),
            UDP,
            refused(400, true),
        ),
        case(
            "CSeq method differs only in case",
            crlf(&[
                "OPTIONS sip:bob@example.com SIP/2.0",
                VIA,
                FROM,
                TO,
                CALL_ID,
                "CSeq: 1 options",
                "",
                "",
            ]),
            UDP,
            refused(400, true),
        ),
        case(
            "CSeq number of 2^31",
            crlf(&[
                "OPTIONS sip:bob@example.com SIP/2.0",
                VIA,
                FROM,
                TO,
                CALL_ID,
                "CSeq: 2147483648 OPTIONS",
                "",
                "",
            ]),
            UDP,
            refused(400, true),
        ),
        case(
            "CSeq number overflowing 64 bits",
            crlf(&[
                "OPTIONS sip:bob@example.com SIP/2.0",
                VIA,
                FROM,
                TO,
                CALL_ID,
                "CSeq: 36893488147419103232 OPTIONS",
                "",
                "",
            ]),
            UDP,
            refused(400, true),
        ),
        case(
            "CSeq without a number",
            crlf(&[
                "OPTIONS sip:bob@example.com SIP/2.0",
                VIA,
                FROM,
                TO,
                CALL_ID,
                "CSeq: OPTIONS",
                "",
                "",
            ]),
            UDP,
            refused(400, true),
        ),
        case(
            "two CSeq headers",
            req_without("OPTIONS", &[], &["CSeq: 2 OPTIONS"]),
            UDP,
            refused(400, true),
        ),
        case(
            "two Call-ID headers",
            req_without("OPTIONS", &[], &["i: another-call-id"]),
            UDP,
            refused(400, true),
        ),
        case(
            "two From headers",
            req_without("OPTIONS", &[], &["f: <sip:mallory@example.com>;tag=m"]),
            UDP,
            refused(400, true),
        ),
        case(
            "empty Call-ID",
            req_without("OPTIONS", &["Call-ID"], &["Call-ID:   "]),
            UDP,
            refused(400, true),
        ),
        case(
            "From that is not an address",
            req_without("OPTIONS", &["From"], &["From: just some text"]),
            UDP,
            refused(400, true),
        ),
        case(
            "unterminated quoted display name in From",
            req_without(
                "OPTIONS",
                &["From"],
                &["From: \"Mr J. User <sip:j.user@example.com>;tag=0xc0ffee"],
            ),
            UDP,
            refused(400, true),
        ),
        case(
            "To with a bare tag parameter",
            req_without("OPTIONS", &["To"], &["To: <sip:bob@example.com>;tag"]),
            UDP,
            refused(400, true),
        ),
        case(
            "From with an unterminated quoted parameter",
            req_without(
                "OPTIONS",
                &["From"],
                &["From: <sip:alice@example.com>;x=\"open;tag=1"],
            ),
            UDP,
            refused(400, true),
        ),
        case(
            "non-numeric Max-Forwards",
            req_without("OPTIONS", &["Max-Forwards"], &["Max-Forwards: seventy"]),
            UDP,
            refused(400, true),
        ),
        case(
            "negative Max-Forwards",
            req_without("OPTIONS", &["Max-Forwards"], &["Max-Forwards: -1"]),
            UDP,
            refused(400, true),
        ),
        case(
            "unsupported SIP version",
            with_start_line(b"OPTIONS sip:bob@example.com SIP/7.0"),
            UDP,
            refused(505, true),
        ),
        case(
            "unsupported Request-URI scheme",
            req("OPTIONS", "nobodyKnowsThisScheme:totallyopaquecontent", &[], ""),
            UDP,
            refused(416, true),
        ),
        case(
            "http Request-URI",
            req("OPTIONS", "http://example.com/", &[], ""),
            UDP,
            refused(416, true),
        ),
        case(
            "Request-URI in angle brackets",
            req("OPTIONS", "<sip:bob@example.com>", &[], ""),
            UDP,
            refused(400, true),
        ),
        case(
            "Request-URI without a scheme",
            req("OPTIONS", "bob@example.com", &[], ""),
            UDP,
            refused(400, true),
        ),
        case(
            "whitespace inside the Request-URI",
            req("OPTIONS", "sip:bob@example.com; lr", &[], ""),
            UDP,
            refused(400, true),
        ),
        case(
            "bad IPv6 reference in the Request-URI",
            req("OPTIONS", "sip:bob@[2001:db8:::1]", &[], ""),
            UDP,
            refused(400, true),
        ),
        case(
            "Request-Line without a version",
            with_start_line(b"OPTIONS sip:bob@example.com"),
            UDP,
            refused(400, true),
        ),
        case(
            "header line without a colon",
            req_without("OPTIONS", &[], &["ThisLineHasNoColon"]),
            UDP,
            refused(400, true),
        ),
        case(
            "header name with a space in it",
            req_without("OPTIONS", &[], &["Bad Name: value"]),
            UDP,
            refused(400, true),
        ),
        case(
            "oversized datagram",
            req(
                "MESSAGE",
                "sip:bob@example.com",
                &["Content-Type: text/plain"],
                &"x".repeat(DEFAULT_MAX_MESSAGE),
            ),
            UDP,
            refused(413, true),
        ),
        case(
            "NUL byte in the method",
            with_start_line(b"OPT\0IONS sip:bob@example.com SIP/2.0"),
            UDP,
            refused(400, true),
        ),
        case(
            "invalid UTF-8 early in the start line",
            with_start_line(b"OP\xffTIONS sip:bob@example.com SIP/2.0"),
            UDP,
            refused(400, true),
        ),
        case(
            "multi-byte characters at the start of the start line",
            with_start_line("안녕 sip:bob@example.com SIP/2.0".as_bytes()),
            UDP,
            refused(400, true),
        ),
        // ---------------------------------------------------------------
        // Dropped
        // ---------------------------------------------------------------
        case("empty input", Vec::new(), UDP, Expect::Dropped),
        case("empty input on a stream", Vec::new(), TCP, Expect::Dropped),
        case("only CRLFs", b"\r\n\r\n\r\n".to_vec(), UDP, Expect::Dropped),
        case("only NUL bytes", vec![0; 64], UDP, Expect::Dropped),
        case(
            "text garbage",
            b"Hello there, this is not SIP at all.\r\n\r\n".to_vec(),
            UDP,
            Expect::Dropped,
        ),
        case(
            "binary garbage",
            (0..=255u8).rev().cycle().take(700).collect(),
            UDP,
            Expect::Dropped,
        ),
        case(
            "HTTP request",
            b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n".to_vec(),
            TCP,
            Expect::Dropped,
        ),
        case(
            "missing Call-ID",
            req_without("OPTIONS", &["Call-ID"], &[]),
            UDP,
            refused(400, true),
        ),
        case(
            "missing From",
            req_without("OPTIONS", &["From"], &[]),
            UDP,
            refused(400, true),
        ),
        case(
            "missing To",
            req_without("OPTIONS", &["To"], &[]),
            UDP,
            refused(400, true),
        ),
        case(
            "missing CSeq",
            req_without("OPTIONS", &["CSeq"], &[]),
            UDP,
            refused(400, true),
        ),
        case(
            "missing Via",
            req_without("OPTIONS", &["Via"], &[]),
            UDP,
            Expect::Dropped,
        ),
        case(
            "unparseable Via",
            req_without("OPTIONS", &["Via"], &["Via: SIP/2.0/UDP host:notaport;branch=z9hG4bKx"]),
            UDP,
            Expect::Dropped,
        ),
        case(
            "Via without a transport",
            req_without("OPTIONS", &["Via"], &["Via: SIP/2.0 host;branch=z9hG4bK/x"]),
            UDP,
            Expect::Dropped,
        ),
        case(
            "Via with an unterminated quote",
            req_without(
                "OPTIONS",
                &["Via"],
                &["Via: SIP/2.0/UDP host;x=\"a;branch=z9hG4bKq"],
            ),
            UDP,
            Expect::Dropped,
        ),
        case(
            "missing headers and a bad version",
            b"OPTIONS sip:bob@example.com SIP/3.0\r\nCall-ID: x\r\n\r\n".to_vec(),
            UDP,
            Expect::Dropped,
        ),
    ];

    // Cases that need a non-default size cap or byte surgery.
    let mut small = case(
        "message over a small cap",
        req("OPTIONS", "sip:bob@example.com", &[], ""),
        UDP,
        refused(413, true),
    );
    small.max = 100;
    v.push(small);

    let mut bad_utf8 = req(
        "OPTIONS",
        "sip:bob@example.com",
        &["Subject: caf\u{e9} SUBJ", "X-Bytes: BYTES"],
        "",
    );
    splice(&mut bad_utf8, b"SUBJ", b"\xc3\x28 \xa0\xa1");
    splice(&mut bad_utf8, b"BYTES", b"\xf0\x28\x8c\xbc\xff");
    v.push(case(
        "invalid UTF-8 in header values",
        bad_utf8,
        UDP,
        Expect::Request {
            method: "OPTIONS",
            body: b"",
            check: |r| {
                let subject = r.header("Subject").unwrap();
                assert!(subject.starts_with("caf\u{e9} "), "{subject:?}");
                assert!(subject.contains('\u{fffd}'), "{subject:?}");
                assert!(r.header("X-Bytes").unwrap().contains('\u{fffd}'));
            },
        },
    ));

    let mut bad_utf8_name = req_without("OPTIONS", &[], &["X-NAME: v"]);
    splice(&mut bad_utf8_name, b"NAME", b"\xff\xfe");
    v.push(case(
        "invalid UTF-8 in a header name",
        bad_utf8_name,
        UDP,
        refused(400, true),
    ));

    v.extend(limit_cases());
    v
}

/// A request with the bytes `with` spliced in for `marker` (in `extra`).
fn spliced(extra: &[&str], marker: &str, with: &[u8]) -> Vec<u8> {
    let mut raw = req("OPTIONS", "sip:bob@example.com", extra, "");
    splice(&mut raw, marker.as_bytes(), with);
    raw
}

/// Like [`spliced`], on a request without the mandatory headers in `omit`.
fn spliced_without(omit: &[&str], extra: &[&str], marker: &str, with: &[u8]) -> Vec<u8> {
    let mut raw = req_without("OPTIONS", omit, extra);
    splice(&mut raw, marker.as_bytes(), with);
    raw
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The abuse review's cases: Via and header field caps (the answer must not
/// reflect more than the request carried), and control characters in header
/// names and values (the answer must not echo them).
fn limit_cases() -> Vec<Case> {
    let pad = |n: usize| -> Vec<String> { (0..n).map(|i| format!("X-Pad-{i}: {i}")).collect() };
    // req() writes 7 fields besides `extra`.
    let at_cap = pad(MAX_HEADER_FIELDS - 7);
    let over_cap = pad(MAX_HEADER_FIELDS - 6);
    let over_cap_no_via = pad(MAX_HEADER_FIELDS);

    let vias = via_elements(MAX_VIA_ELEMENTS + 1);
    let one_line_over = [format!("Via: {}", vias.join(", "))];
    // 1 + 16 over a long Via and compact `v:` lines of 2 and 3 elements.
    let several_over = [
        format!("Via: {}", vias[0]),
        format!("v: {}", vias[1..4].join(",")),
        format!("Via: {}", vias[4..6].join(" ,  ")),
        format!("v: {}", vias[6..9].join(",")),
        format!("Via: {}", vias[9..12].join(", ")),
        format!("v: {}", vias[12..15].join(",")),
        format!("Via: {}", vias[15..17].join(",")),
    ];
    let at = via_elements(MAX_VIA_ELEMENTS);
    let at_cap_vias = [
        format!("Via: {}", at[..10].join(",")),
        format!("v: {}", at[10..].join(", ")),
    ];
    // The review's reproduction: 6 KB of `x,` reflected as 24 KB.
    let reflection = [format!("Via: {}{}", vias[0], ", x".repeat(6 * 1024 / 3))];

    vec![
        // ---------------------------------------------------------------
        // Via cap: never answered
        // ---------------------------------------------------------------
        case(
            "Via elements over the cap on one line",
            req_with_vias(&one_line_over, &[]),
            UDP,
            Expect::DroppedWith(TOO_MANY_VIAS),
        ),
        case(
            "Via elements over the cap over several lines and compact names",
            req_with_vias(&several_over, &[]),
            TCP,
            Expect::DroppedWith(TOO_MANY_VIAS),
        ),
        case(
            "6 KB of one-byte Via elements (the reflection of the review)",
            req_with_vias(&reflection, &[]),
            UDP,
            Expect::DroppedWith(TOO_MANY_VIAS),
        ),
        case(
            "Via elements over the cap in an otherwise bad request are dropped",
            req_with_vias(&one_line_over, &["Expires: soon", "Bad Name: x"]),
            UDP,
            Expect::DroppedWith(TOO_MANY_VIAS),
        ),
        case(
            "Via elements at the cap are accepted",
            req_with_vias(&at_cap_vias, &[]),
            UDP,
            Expect::Request {
                method: "OPTIONS",
                body: b"",
                check: |r| {
                    assert_eq!(r.vias().len(), MAX_VIA_ELEMENTS);
                    assert_eq!(r.top_via().unwrap().branch.as_deref(), Some("z9hG4bKtop"));
                },
            },
        ),
        // ---------------------------------------------------------------
        // Header field cap
        // ---------------------------------------------------------------
        case(
            "header fields at the cap are accepted",
            req("OPTIONS", "sip:bob@example.com", &strs(&at_cap), ""),
            TCP,
            Expect::Request {
                method: "OPTIONS",
                body: b"",
                check: |r| assert_eq!(r.headers.iter().count(), MAX_HEADER_FIELDS),
            },
        ),
        case(
            "header fields over the cap",
            req("OPTIONS", "sip:bob@example.com", &strs(&over_cap), ""),
            TCP,
            Expect::RefusedWith {
                status: 400,
                reason: TOO_MANY_HEADERS,
                answerable: true,
                left_out: &["X-Pad-0"],
            },
        ),
        case(
            "header fields over the cap without a Via",
            req_without("OPTIONS", &["Via"], &strs(&over_cap_no_via)),
            UDP,
            Expect::DroppedWith(TOO_MANY_HEADERS),
        ),
        case(
            "a response with header fields over the cap",
            ok_response("SIP/2.0 200 OK", &strs(&over_cap_no_via)),
            UDP,
            Expect::DroppedWith(TOO_MANY_HEADERS),
        ),
        // ---------------------------------------------------------------
        // Control characters in names and values
        // ---------------------------------------------------------------
        case(
            "bare CR in a Subject value",
            spliced(&["Subject: hello CR Injected: yes"], " CR ", b"\r"),
            UDP,
            bad_value(&["Subject", "Injected"]),
        ),
        case(
            "bare CR in a Subject value over TCP",
            spliced(&["Subject: hello CR Injected: yes"], " CR ", b"\r"),
            TCP,
            bad_value(&["Subject", "Injected"]),
        ),
        case(
            "NUL byte in a header value",
            spliced(&["Subject: a NUL b"], "NUL", b"\0"),
            UDP,
            bad_value(&["Subject"]),
        ),
        case(
            "DEL in a header value",
            spliced(&["X-Note: a DEL b"], "DEL", b"\x7f"),
            UDP,
            bad_value(&["X-Note"]),
        ),
        case(
            "escape sequence in a header value",
            spliced(&["User-Agent: ESC[2Jphone"], "ESC", b"\x1b"),
            UDP,
            bad_value(&["User-Agent"]),
        ),
        case(
            "CR before the CRLF at a line end",
            spliced(&["Subject: trailing CR"], " CR", b"\r"),
            UDP,
            bad_value(&["Subject"]),
        ),
        case(
            "control character at the start of a continuation line",
            spliced(&["Subject: first", "\tVTsecond"], "VT", b"\x0b"),
            UDP,
            bad_value(&["Subject"]),
        ),
        case(
            "control character in a header name",
            spliced(&["X-ASOHB: v"], "SOH", b"\x01"),
            UDP,
            bad_value(&[]),
        ),
        case(
            "control character in a Timestamp (copied by a 100)",
            spliced(&["Timestamp: 54.2 NUL"], "NUL", b"\0"),
            UDP,
            bad_value(&["Timestamp"]),
        ),
        case(
            "invalid UTF-8 in a Timestamp",
            spliced(&["Timestamp: 54.2 BAD"], "BAD", b"\xff\xff"),
            UDP,
            bad_value(&["Timestamp"]),
        ),
        case(
            "bare CR in the Request-URI",
            with_start_line(b"OPTIONS sip:bob@example.com\rX: y SIP/2.0"),
            UDP,
            Expect::RefusedWith {
                status: 400,
                reason: "Malformed Request-Line",
                answerable: true,
                left_out: &["X"],
            },
        ),
        // A bad value in a field every answer copies: dropped.
        case(
            "bare CR in From",
            spliced_without(
                &["From"],
                &["From: <sip:alice@example.com>;tag=1 CR Injected: yes"],
                " CR ",
                b"\r",
            ),
            UDP,
            Expect::DroppedWith(BAD_HEADER_VALUE),
        ),
        case(
            "bare CR in a compact Via",
            spliced_without(
                &["Via"],
                &["v: SIP/2.0/UDP client.example.com;branch=z9hG4bKcr CR X: y"],
                " CR ",
                b"\r",
            ),
            UDP,
            Expect::DroppedWith(BAD_HEADER_VALUE),
        ),
        case(
            "bare CR in a second Via line",
            spliced_without(&[], &["Via: SIP/2.0/UDP p CR X: y"], " CR ", b"\r"),
            UDP,
            Expect::DroppedWith(BAD_HEADER_VALUE),
        ),
        case(
            "NUL byte in Call-ID",
            spliced_without(&["Call-ID"], &["i: abc NUL @host"], " NUL ", b"\0"),
            UDP,
            Expect::DroppedWith(BAD_HEADER_VALUE),
        ),
        case(
            "form feed in CSeq",
            spliced_without(&["CSeq"], &["CSeq: 1 FF OPTIONS"], " FF ", b"\x0c"),
            TCP,
            Expect::DroppedWith(BAD_HEADER_VALUE),
        ),
        case(
            "escape sequence in a folded To",
            spliced_without(
                &["To"],
                &["To: <sip:bob@example.com>", " ;x=ESC"],
                "ESC",
                b"\x1b",
            ),
            UDP,
            Expect::DroppedWith(BAD_HEADER_VALUE),
        ),
        case(
            "invalid UTF-8 in From",
            spliced_without(
                &["From"],
                &["From: BAD <sip:a@example.com>;tag=1"],
                "BAD",
                b"\xff\xfe",
            ),
            UDP,
            Expect::DroppedWith(BAD_HEADER_VALUE),
        ),
        case(
            "bare CR in a response header",
            {
                let mut raw = ok_response("SIP/2.0 200 OK", &["SIP-ETag: e CR X: y"]);
                splice(&mut raw, b" CR ", b"\r");
                raw
            },
            UDP,
            Expect::DroppedWith(BAD_HEADER_VALUE),
        ),
        case(
            "bare CR in a response's reason phrase",
            {
                let mut raw = ok_response("SIP/2.0 486 Busy CR X: y", &[]);
                splice(&mut raw, b" CR ", b"\r");
                raw
            },
            UDP,
            Expect::Dropped,
        ),
        // What stays fine.
        case(
            "HTAB inside header values is whitespace, not a control character",
            req(
                "OPTIONS",
                "sip:bob@example.com",
                &["Subject:\ta\tb c\t", "X-Tabs: \t\tx\ty"],
                "",
            ),
            UDP,
            Expect::Request {
                method: "OPTIONS",
                body: b"",
                check: |r| {
                    assert_eq!(r.header("Subject"), Some("a\tb c"));
                    assert_eq!(r.header("X-Tabs"), Some("x\ty"));
                },
            },
        ),
        case(
            "folded lines in copied headers are still fine",
            crlf(&[
                "OPTIONS sip:bob@example.com SIP/2.0",
                "Via: SIP/2.0/UDP client.example.com;branch=z9hG4bKf1,",
                "\tSIP/2.0/UDP proxy.example.com;branch=z9hG4bKf2",
                "From: <sip:alice@example.com>",
                " \t;tag=f1",
                "To:",
                "\t<sip:bob@example.com>",
                "Call-ID: folded@",
                " example.com",
                "CSeq: 1",
                "\tOPTIONS",
                "Subject: one",
                "\t\ttwo",
                "Content-Length: 0",
                "",
                "",
            ]),
            TCP,
            Expect::Request {
                method: "OPTIONS",
                body: b"",
                check: |r| {
                    assert_eq!(r.vias().len(), 2);
                    assert_eq!(r.from_addr().unwrap().tag.as_deref(), Some("f1"));
                    assert_eq!(r.call_id(), Some("folded@ example.com"));
                    assert_eq!(r.header("Subject"), Some("one two"));
                },
            },
        ),
    ]
}

/// Replace the first occurrence of `marker` in `buf` with `with`.
fn splice(buf: &mut Vec<u8>, marker: &[u8], with: &[u8]) {
    let at = buf
        .windows(marker.len())
        .position(|w| w == marker)
        .expect("marker present");
    buf.splice(at..at + marker.len(), with.iter().copied());
}

const CPIM: &str = "From: Alice <im:alice@example.com>\r\n\
To: Bob <im:bob@example.com>\r\n\
DateTime: 2024-05-01T12:00:00Z\r\n\
\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Length: 26\r\n\
\r\n\
Hi Bob, 안녕하세요!\r\n";

const PIDF: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\r\n\
<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"pres:alice@example.com\">\r\n\
  <tuple id=\"t1\"><status><basic>open</basic></status></tuple>\r\n\
</presence>\r\n";

fn run(case: &Case) {
    let result = parse(&case.raw, case.transport, case.max);
    match (&case.expect, result) {
        (
            Expect::Request {
                method,
                body,
                check,
            },
            Ok(Message::Request(r)),
        ) => {
            assert_eq!(r.method.as_str(), *method, "method");
            assert_eq!(&r.body[..], *body, "body");
            check(&r);
            // Whatever parses can be answered.
            let resp = ResponseBuilder::new(&r.headers, 200, "OK", Some("tt"), None).encode();
            check_answer_bytes(&resp, &case.raw, &[]);
            match parse(&resp, TransportKind::Stream, usize::MAX) {
                Ok(Message::Response(p)) => {
                    assert_eq!(p.code, 200);
                    assert_eq!(p.call_id(), r.call_id());
                    assert_eq!(p.cseq(), r.cseq());
                    assert_eq!(p.vias(), r.vias());
                }
                other => panic!("our own response does not parse: {other:?}"),
            }
        }
        (Expect::Response { code, check }, Ok(Message::Response(r))) => {
            assert_eq!(r.code, *code, "status code");
            check(&r);
        }
        (Expect::Refused { status, answerable }, Err(e)) => {
            assert_eq!(e.status, *status, "status ({})", e.reason);
            assert_eq!(e.answer.is_some(), *answerable, "answerable ({})", e.reason);
            check_refusal_answer(&e, &case.raw, &[]);
        }
        (
            Expect::RefusedWith {
                status,
                reason,
                answerable,
                left_out,
            },
            Err(e),
        ) => {
            assert_eq!((e.status, e.reason.as_str()), (*status, *reason));
            assert_eq!(e.answer.is_some(), *answerable, "answerable ({})", e.reason);
            check_refusal_answer(&e, &case.raw, left_out);
        }
        (Expect::Dropped, Err(e)) => {
            assert!(e.answer.is_none(), "expected a drop, got answerable {e:?}");
        }
        (Expect::DroppedWith(reason), Err(e)) => {
            assert!(e.answer.is_none(), "expected a drop, got answerable {e:?}");
            assert_eq!(e.reason, *reason);
        }
        (_, got) => panic!("unexpected outcome: {got:?}"),
    }
}

/// What goes on the wire for an answer: status line and header lines with
/// no control character but the CRLF line ends (and HTAB), no line naming a
/// header in `left_out`, and not much larger than the request it answers.
fn check_answer_bytes(bytes: &[u8], request: &[u8], left_out: &[&str]) {
    let text = String::from_utf8_lossy(bytes);
    let head = text.split("\r\n\r\n").next().unwrap();
    for line in head.split("\r\n") {
        assert!(
            !presence_sip::headers::has_ctl(line),
            "control character in answer line {line:?}"
        );
        for name in left_out {
            let line_name = line.split(':').next().unwrap().trim();
            assert!(
                !line_name.eq_ignore_ascii_case(name),
                "answer echoes {name}: {line:?}"
            );
        }
    }
    assert!(
        bytes.len() <= 2 * request.len() + 512,
        "answer of {} bytes to a request of {}",
        bytes.len(),
        request.len()
    );
}

fn check_refusal_answer(e: &presence_sip::ParseError, request: &[u8], left_out: &[&str]) {
    {
        {
            if let Some(headers) = &e.answer {
                // The headers handed back are enough to build a response.
                let resp = ResponseBuilder::new(headers, e.status, &e.reason, Some("x"), None);
                let bytes = resp.encode();
                check_answer_bytes(&bytes, request, left_out);
                let status_line = format!("SIP/2.0 {} ", e.status);
                assert!(bytes.starts_with(status_line.as_bytes()));
                // A malformed CSeq is copied as is (RFC 4475 §3.1.2.3), and a
                // missing Call-ID stays missing; then the answer is no valid
                // response either (only its Via branch matches it to the
                // request); otherwise it must be.
                let cseq_ok = headers
                    .iter()
                    .find(|h| h.name() == "CSeq")
                    .is_some_and(|h| presence_sip::headers::parse_cseq(h.value()).is_some());
                let call_id_ok = headers.iter().any(|h| h.name() == "Call-ID");
                if cseq_ok && call_id_ok {
                    let back = parse(&bytes, TransportKind::Datagram, usize::MAX);
                    assert!(
                        matches!(back, Ok(Message::Response(ref p)) if p.code == e.status),
                        "answer does not parse back: {back:?}\n{}",
                        String::from_utf8_lossy(&bytes)
                    );
                }
            }
        }
    }
}

#[test]
fn torture_table() {
    let cases = cases();
    let mut names = std::collections::HashSet::new();
    let mut failures = Vec::new();
    for c in &cases {
        assert!(names.insert(c.name), "duplicate case name {:?}", c.name);
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| run(c))) {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failures.push(format!("[{}] {msg}", c.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// Every case that parses over TCP also frames as exactly one message, and
/// the framer agrees with the parser on refusals it can see.
#[test]
fn torture_stream_cases_frame_like_they_parse() {
    for c in cases()
        .iter()
        .filter(|c| c.transport == TransportKind::Stream)
    {
        let framed = frame_stream(&c.raw, c.max);
        match &c.expect {
            Expect::Request { .. } | Expect::Response { .. } => {
                let skip = c
                    .raw
                    .iter()
                    .take_while(|b| **b == b'\r' || **b == b'\n')
                    .count();
                assert_eq!(
                    framed,
                    Ok(StreamFrame::Message {
                        skip,
                        len: c.raw.len() - skip
                    }),
                    "{}",
                    c.name
                );
            }
            Expect::Refused { .. }
            | Expect::RefusedWith { .. }
            | Expect::Dropped
            | Expect::DroppedWith(_) => {
                assert!(
                    !matches!(framed, Ok(StreamFrame::KeepAlive { .. })),
                    "{}: {framed:?}",
                    c.name
                );
            }
        }
    }
}

#[test]
fn utf8_body_survives_framing_and_parsing_over_tcp() {
    let msg = req("MESSAGE", "sip:bob@example.com", &[], "안녕하세요");
    let mut stream = msg.clone();
    stream.extend_from_slice(b"\r\n\r\n");
    stream.extend_from_slice(&msg);
    let Ok(StreamFrame::Message { skip: 0, len }) = frame_stream(&stream, DEFAULT_MAX_MESSAGE)
    else {
        panic!("not framed")
    };
    assert_eq!(len, msg.len());
    let Ok(Message::Request(r)) = parse(&stream[..len], TCP, DEFAULT_MAX_MESSAGE) else {
        panic!("not parsed")
    };
    assert_eq!(&r.body[..], "안녕하세요".as_bytes());
    // The ping between the two messages is reported (it wants a pong)...
    assert_eq!(
        frame_stream(&stream[len..], DEFAULT_MAX_MESSAGE),
        Ok(StreamFrame::KeepAlive { len: 4, ping: true })
    );
    // ... and then the second message.
    assert_eq!(
        frame_stream(&stream[len + 4..], DEFAULT_MAX_MESSAGE),
        Ok(StreamFrame::Message { skip: 0, len })
    );
}

#[test]
fn frame_stream_honours_folded_and_continued_content_length() {
    // A continuation line " l: 3" belongs to Subject; the real length is 5.
    let msg = crlf(&[
        "MESSAGE sip:bob@example.com SIP/2.0",
        "Subject: x",
        " l: 3",
        "Content-Length: 5",
        "",
        "hello",
    ]);
    assert_eq!(
        frame_stream(&msg, 1000),
        Ok(StreamFrame::Message {
            skip: 0,
            len: msg.len()
        })
    );
    // A folded Content-Length value.
    let msg = crlf(&[
        "MESSAGE sip:bob@example.com SIP/2.0",
        "l:",
        "\t 5",
        "",
        "hello",
    ]);
    assert_eq!(
        frame_stream(&msg, 1000),
        Ok(StreamFrame::Message {
            skip: 0,
            len: msg.len()
        })
    );
}

#[test]
fn refusal_carries_the_readable_headers() {
    let raw = req(
        "OPTIONS",
        "nobodyKnowsThisScheme:opaque",
        &["X-Extra: kept"],
        "",
    );
    let err = parse(&raw, UDP, DEFAULT_MAX_MESSAGE).unwrap_err();
    assert_eq!(err.status, 416);
    let answer = err.answer.expect("answerable");
    let value = |n: &str| {
        answer
            .iter()
            .find(|h| h.name().eq_ignore_ascii_case(n))
            .map(|h| h.value().to_string())
    };
    assert_eq!(
        value("Call-ID").as_deref(),
        Some("3848276298220188511@client.example.com")
    );
    assert_eq!(value("CSeq").as_deref(), Some("1 OPTIONS"));
    assert_eq!(value("X-Extra").as_deref(), Some("kept"));
    // The response built from them copies the dialog headers and tags To.
    let resp = ResponseBuilder::new(&answer, 416, "Unsupported URI Scheme", Some("srv"), None);
    assert_eq!(resp.to_tag().as_deref(), Some("srv"));
    let Ok(Message::Response(p)) = parse(&resp.encode(), UDP, DEFAULT_MAX_MESSAGE) else {
        panic!()
    };
    assert_eq!(p.code, 416);
    assert_eq!(p.reason, "Unsupported URI Scheme");
    assert_eq!(p.from_addr().unwrap().tag.as_deref(), Some("9fxced76sl"));
    assert_eq!(p.header("X-Extra"), None);
}

#[test]
fn response_builder_follows_rfc3261_8_2_6() {
    let raw = req(
        "SUBSCRIBE",
        "sip:bob@example.com",
        &[
            "Via: SIP/2.0/UDP proxy.example.com;branch=z9hG4bKp2, SIP/2.0/UDP 10.0.0.9;branch=z9hG4bKp3",
            "Timestamp: 54.2 0.5",
            "Event: presence",
            "Contact: <sip:alice@192.0.2.1>",
        ],
        "",
    );
    let Ok(Message::Request(r)) = parse(&raw, UDP, DEFAULT_MAX_MESSAGE) else {
        panic!()
    };
    let source = "198.51.100.7:41000".parse().unwrap();
    // 100 Trying: Timestamp copied, no To tag, top Via stamped.
    let trying = ResponseBuilder::new(&r.headers, 100, "Trying", Some("t1"), Some(source));
    assert_eq!(trying.to_tag(), None);
    let Ok(Message::Response(p)) = parse(&trying.encode(), UDP, DEFAULT_MAX_MESSAGE) else {
        panic!()
    };
    assert_eq!(p.header("Timestamp"), Some("54.2 0.5"));
    assert_eq!(p.header("Contact"), None);
    assert_eq!(p.header("Event"), None);
    assert_eq!(
        p.vias(),
        [
            "SIP/2.0/UDP client.example.com:5060;branch=z9hG4bK74bf9;received=198.51.100.7",
            "SIP/2.0/UDP proxy.example.com;branch=z9hG4bKp2",
            "SIP/2.0/UDP 10.0.0.9;branch=z9hG4bKp3",
        ]
    );
    // Each Via element on a line of its own, in order.
    assert_eq!(p.header_all("Via").count(), 3);
    // 200: To tag added, Timestamp not copied, body with its type and length.
    let ok = ResponseBuilder::new(&r.headers, 200, "OK", Some("t1"), None)
        .header("Expires", "600")
        .body("text/plain", b"ok".to_vec());
    let bytes = ok.encode();
    assert!(
        bytes.ends_with(b"Content-Length: 2\r\n\r\nok"),
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    let Ok(Message::Response(p)) = parse(&bytes, TCP, DEFAULT_MAX_MESSAGE) else {
        panic!()
    };
    assert_eq!(p.header("Timestamp"), None);
    assert_eq!(p.to_addr().unwrap().tag.as_deref(), Some("t1"));
    assert_eq!(p.expires(), Some(Ok(600)));
    assert_eq!(p.content_type().unwrap().as_str(), "text/plain");
    assert_eq!(&p.body[..], b"ok");
    // A To that already has a tag keeps it.
    let tagged = ResponseBuilder::new(&p.headers, 200, "OK", Some("other"), None);
    assert_eq!(tagged.to_tag().as_deref(), Some("t1"));
}

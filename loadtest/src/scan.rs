//! A small SIP header scanner for the hot path: no allocation, no full parse.
//!
//! It finds the start line, the handful of headers the load generator needs
//! (top Via branch, all Via values to echo, From, To, Call-ID, CSeq, Event,
//! Subscription-State, SIP-ETag, Expires, the Digest challenges,
//! Content-Length) and the body, as slices of the input. Compact header forms
//! and folded lines are understood. Every input either scans or yields `None`;
//! nothing panics (see the property test below).

/// Most Via values kept for echoing in a response (more are dropped).
pub const MAX_VIAS: usize = 8;
/// Most challenge headers kept (WWW-Authenticate / Proxy-Authenticate).
pub const MAX_CHALLENGES: usize = 4;
/// Largest message accepted on a stream before the framing gives up.
pub const MAX_MESSAGE: usize = presence_sip::DEFAULT_MAX_MESSAGE;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start<'a> {
    Request { method: &'a [u8], uri: &'a [u8] },
    Response { code: u16 },
}

#[derive(Debug, Clone)]
pub struct Scanned<'a> {
    pub start: Start<'a>,
    pub vias: [&'a [u8]; MAX_VIAS],
    pub n_vias: usize,
    pub from: Option<&'a [u8]>,
    pub to: Option<&'a [u8]>,
    pub call_id: Option<&'a [u8]>,
    pub cseq: Option<&'a [u8]>,
    pub event: Option<&'a [u8]>,
    pub sub_state: Option<&'a [u8]>,
    pub etag: Option<&'a [u8]>,
    pub expires: Option<&'a [u8]>,
    pub challenges: [&'a [u8]; MAX_CHALLENGES],
    pub n_challenges: usize,
    pub content_length: Option<&'a [u8]>,
    pub body: &'a [u8],
}

impl<'a> Scanned<'a> {
    /// The `branch` parameter of the top Via.
    pub fn branch(&self) -> Option<&'a [u8]> {
        if self.n_vias == 0 {
            return None;
        }
        let v = self.vias[0];
        let first = match v.iter().position(|b| *b == b',') {
            Some(i) => &v[..i],
            None => v,
        };
        param(first, b"branch")
    }

    /// CSeq number and method.
    pub fn cseq(&self) -> Option<(u32, &'a [u8])> {
        let v = trim(self.cseq?);
        let digits = v.iter().take_while(|b| b.is_ascii_digit()).count();
        let n = parse_u32(&v[..digits])?;
        Some((n, trim(&v[digits..])))
    }

    pub fn expires(&self) -> Option<u32> {
        parse_u32(trim(self.expires?))
    }

    pub fn from_tag(&self) -> Option<&'a [u8]> {
        tag(self.from?)
    }

    pub fn to_tag(&self) -> Option<&'a [u8]> {
        tag(self.to?)
    }

    pub fn call_id(&self) -> Option<&'a [u8]> {
        self.call_id.map(trim)
    }

    pub fn code(&self) -> Option<u16> {
        match self.start {
            Start::Response { code } => Some(code),
            Start::Request { .. } => None,
        }
    }
}

pub fn trim(v: &[u8]) -> &[u8] {
    let s = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let e = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(s, |i| i + 1);
    &v[s..e.max(s)]
}

/// At most 10 digits (as many as `u32::MAX` has, leading zeros included).
pub fn parse_u32(v: &[u8]) -> Option<u32> {
    if v.len() > 10 {
        return None;
    }
    u32::try_from(parse_u64(v)?).ok()
}

pub fn parse_u64(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 {
        return None;
    }
    let mut n: u64 = 0;
    for b in v {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u64::from(b - b'0');
    }
    Some(n)
}

/// Find `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || needle.len() > hay.len() {
        return None;
    }
    let first = needle[0];
    let last = hay.len() - needle.len();
    let mut i = 0;
    while i <= last {
        match hay[i..=last].iter().position(|b| *b == first) {
            None => return None,
            Some(off) => {
                i += off;
                if &hay[i..i + needle.len()] == needle {
                    return Some(i);
                }
                i += 1;
            }
        }
    }
    None
}

/// Value of `;name=value` in a header value (case-insensitive name), outside `<...>`.
pub fn param<'a>(v: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    // Parameters follow the closing '>' of a name-addr, or the first ';'.
    let from = v.iter().rposition(|b| *b == b'>').map_or(0, |i| i + 1);
    let mut rest = &v[from..];
    while let Some(i) = rest.iter().position(|b| *b == b';') {
        rest = &rest[i + 1..];
        let end = rest
            .iter()
            .position(|b| *b == b';' || *b == b',')
            .unwrap_or(rest.len());
        let p = &rest[..end];
        let (k, val) = match p.iter().position(|b| *b == b'=') {
            Some(e) => (trim(&p[..e]), trim(&p[e + 1..])),
            None => (trim(p), &p[p.len()..]),
        };
        if k.eq_ignore_ascii_case(name) {
            return Some(val);
        }
        rest = &rest[end..];
        if rest.first() == Some(&b',') {
            break;
        }
    }
    None
}

fn tag(v: &[u8]) -> Option<&[u8]> {
    param(v, b"tag").filter(|t| !t.is_empty())
}

/// Scan one message. `datagram`: the body is the rest of the input when
/// Content-Length is absent (RFC 3261 §18.3); on a stream the caller framed it.
pub fn scan(buf: &[u8]) -> Option<Scanned<'_>> {
    let end = presence_sip::frame::header_end(buf)?;
    let head = &buf[..end];
    let line_end = head.iter().position(|b| *b == b'\n')?;
    let start_line = trim(&head[..line_end]);
    let start = start_of(start_line)?;
    let mut s = Scanned {
        start,
        vias: [&[]; MAX_VIAS],
        n_vias: 0,
        from: None,
        to: None,
        call_id: None,
        cseq: None,
        event: None,
        sub_state: None,
        etag: None,
        expires: None,
        challenges: [&[]; MAX_CHALLENGES],
        n_challenges: 0,
        content_length: None,
        body: &[],
    };
    let mut i = line_end + 1;
    while i < head.len() {
        // One header: a line plus its continuation lines.
        let mut j = i;
        loop {
            let nl = match head[j..].iter().position(|b| *b == b'\n') {
                Some(o) => j + o,
                None => head.len(),
            };
            j = nl + 1;
            if j >= head.len() || !matches!(head[j], b' ' | b'\t') {
                break;
            }
        }
        let line = &head[i..j.min(head.len())];
        i = j;
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let name = trim(&line[..colon]);
        let value = trim(&line[colon + 1..]);
        match header_id(name) {
            H::Via => {
                if s.n_vias < MAX_VIAS {
                    s.vias[s.n_vias] = value;
                    s.n_vias += 1;
                }
            }
            H::From => s.from = Some(value),
            H::To => s.to = Some(value),
            H::CallId => s.call_id = Some(value),
            H::CSeq => s.cseq = Some(value),
            H::Event => s.event = Some(value),
            H::SubState => s.sub_state = Some(value),
            H::ETag => s.etag = Some(value),
            H::Expires => s.expires = Some(value),
            H::Challenge => {
                if s.n_challenges < MAX_CHALLENGES {
                    s.challenges[s.n_challenges] = value;
                    s.n_challenges += 1;
                }
            }
            H::ContentLength => s.content_length = Some(value),
            H::Other => {}
        }
    }
    let rest = &buf[end..];
    s.body = match s.content_length {
        Some(v) => {
            let n = parse_u32(v)? as usize;
            if n > rest.len() {
                return None;
            }
            &rest[..n]
        }
        None => rest,
    };
    Some(s)
}

fn start_of(line: &[u8]) -> Option<Start<'_>> {
    if let Some(rest) = line.strip_prefix(b"SIP/2.0 ") {
        let rest = trim(rest);
        if rest.len() < 3 {
            return None;
        }
        let code = parse_u32(&rest[..3])?;
        if !(100..700).contains(&code) {
            return None;
        }
        return Some(Start::Response { code: code as u16 });
    }
    let sp = line.iter().position(|b| *b == b' ')?;
    let method = &line[..sp];
    let rest = &line[sp + 1..];
    let sp2 = rest.iter().position(|b| *b == b' ')?;
    let uri = &rest[..sp2];
    if method.is_empty() || uri.is_empty() || trim(&rest[sp2..]) != b"SIP/2.0" {
        return None;
    }
    Some(Start::Request { method, uri })
}

enum H {
    Via,
    From,
    To,
    CallId,
    CSeq,
    Event,
    SubState,
    ETag,
    Expires,
    Challenge,
    ContentLength,
    Other,
}

fn header_id(name: &[u8]) -> H {
    let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
    if name.len() == 1 {
        return match name[0].to_ascii_lowercase() {
            b'v' => H::Via,
            b'f' => H::From,
            b't' => H::To,
            b'i' => H::CallId,
            b'o' => H::Event,
            b'l' => H::ContentLength,
            _ => H::Other,
        };
    }
    if is(b"via") {
        H::Via
    } else if is(b"from") {
        H::From
    } else if is(b"to") {
        H::To
    } else if is(b"call-id") {
        H::CallId
    } else if is(b"cseq") {
        H::CSeq
    } else if is(b"event") {
        H::Event
    } else if is(b"subscription-state") {
        H::SubState
    } else if is(b"sip-etag") {
        H::ETag
    } else if is(b"expires") {
        H::Expires
    } else if is(b"www-authenticate") || is(b"proxy-authenticate") {
        H::Challenge
    } else if is(b"content-length") {
        H::ContentLength
    } else {
        H::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    const NOTIFY: &[u8] = b"NOTIFY sip:u000001@127.0.0.1:4000 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKabc;rport\r\n\
Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKother\r\n\
Max-Forwards: 70\r\n\
To: <sip:u000001@example.com>;tag=w1\r\n\
From: <sip:u000002@example.com>;tag=srv9\r\n\
Call-ID: s7.run\r\n\
CSeq: 3 NOTIFY\r\n\
Event: presence\r\n\
Subscription-State: active;expires=3599\r\n\
Content-Type: application/pidf+xml\r\n\
Content-Length: 5\r\n\r\nhello";

    #[test]
    fn scans_a_notify() {
        let s = scan(NOTIFY).expect("scans");
        assert_eq!(
            s.start,
            Start::Request {
                method: b"NOTIFY",
                uri: b"sip:u000001@127.0.0.1:4000"
            }
        );
        assert_eq!(s.n_vias, 2);
        assert_eq!(s.branch(), Some(&b"z9hG4bKabc"[..]));
        assert_eq!(s.cseq(), Some((3, &b"NOTIFY"[..])));
        assert_eq!(s.call_id(), Some(&b"s7.run"[..]));
        assert_eq!(s.from_tag(), Some(&b"srv9"[..]));
        assert_eq!(s.to_tag(), Some(&b"w1"[..]));
        assert_eq!(s.sub_state, Some(&b"active;expires=3599"[..]));
        assert_eq!(s.body, b"hello");
    }

    #[test]
    fn scans_compact_folded_and_challenges() {
        let m = b"SIP/2.0 401 Unauthorized\r\n\
v: SIP/2.0/UDP 127.0.0.1:4000;rport=4000;branch=z9hG4bK-lt-5-1\r\n\
f: <sip:u1@example.com>;tag=a\r\n\
t: <sip:u1@example.com>\r\n ;tag=b\r\n\
i: r1.x\r\n\
CSeq: 7\r\n  REGISTER\r\n\
WWW-Authenticate: Digest realm=\"example.com\", nonce=\"n1\", algorithm=SHA-256, qop=\"auth\"\r\n\
www-authenticate: Digest realm=\"example.com\", nonce=\"n1\", algorithm=MD5, qop=\"auth\"\r\n\
SIP-ETag: e1\r\n\
Expires: 60\r\n\
l: 0\r\n\r\n";
        let s = scan(m).expect("scans");
        assert_eq!(s.code(), Some(401));
        assert_eq!(s.branch(), Some(&b"z9hG4bK-lt-5-1"[..]));
        assert_eq!(s.to_tag(), Some(&b"b"[..]));
        assert_eq!(s.cseq(), Some((7, &b"REGISTER"[..])));
        assert_eq!(s.n_challenges, 2);
        assert_eq!(s.etag, Some(&b"e1"[..]));
        assert_eq!(s.expires(), Some(60));
        assert!(s.body.is_empty());
    }

    #[test]
    fn datagram_without_content_length_takes_the_rest() {
        let m = b"MESSAGE sip:a@b SIP/2.0\r\nCall-ID: x\r\n\r\nbody text";
        assert_eq!(scan(m).expect("scans").body, b"body text");
        let short = b"MESSAGE sip:a@b SIP/2.0\r\nContent-Length: 50\r\n\r\nbody";
        assert!(scan(short).is_none());
    }

    #[test]
    fn rejects_garbage_start_lines() {
        for m in [
            &b"\r\n\r\n"[..],
            b"SIP/2.0 abc OK\r\n\r\n",
            b"SIP/2.0 99 X\r\n\r\n",
            b"NOTIFY\r\n\r\n",
            b"NOTIFY sip:x SIP/3.0\r\n\r\n",
            b"no end of headers",
        ] {
            assert!(scan(m).is_none(), "{:?}", String::from_utf8_lossy(m));
        }
    }

    #[test]
    fn params_and_find() {
        assert_eq!(param(b"<sip:a@b;tag=x>;tag=y", b"tag"), Some(&b"y"[..]));
        assert_eq!(param(b"sip:a@b;lr;TAG=z", b"tag"), Some(&b"z"[..]));
        assert_eq!(param(b"<sip:a@b;tag=x>", b"tag"), None);
        assert_eq!(find(b"abcabd", b"abd"), Some(3));
        assert_eq!(find(b"ab", b"abc"), None);
        assert_eq!(find(b"", b"a"), None);
    }

    #[test]
    fn parses_numbers() {
        assert_eq!(parse_u32(b"0"), Some(0));
        assert_eq!(parse_u32(b"4294967295"), Some(u32::MAX));
        assert_eq!(parse_u32(b"4294967296"), None);
        assert_eq!(parse_u32(b"0000000001"), Some(1));
        assert_eq!(parse_u32(b"00000000001"), None);
        assert_eq!(parse_u32(b""), None);
        assert_eq!(parse_u32(b"+1"), None);
        assert_eq!(parse_u32(b"1 "), None);
        assert_eq!(
            parse_u64(b"9999999999999999999"),
            Some(9_999_999_999_999_999_999)
        );
        assert_eq!(parse_u64(b"00000000000000000001"), None);
        assert_eq!(parse_u64(b"12a"), None);
        assert_eq!(parse_u64(b""), None);
    }

    /// Property: no input panics the scanner, and whatever it reports stays
    /// inside the input.
    #[test]
    fn no_input_panics() {
        let seed = std::env::var("LOADTEST_FUZZ_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0x5eed);
        let mut rng = Rng::new(seed);
        let tokens: [&[u8]; 24] = [
            b"NOTIFY ",
            b"SIP/2.0",
            b"SIP/2.0 200 OK",
            b"\r\n",
            b"\n",
            b" ",
            b":",
            b";",
            b",",
            b"<",
            b">",
            b"=",
            b"Via: ",
            b"v:",
            b"CSeq: ",
            b"Content-Length: ",
            b"l:",
            b"tag=",
            b";branch=",
            b"4294967296",
            b"99999999999999999999",
            b"\r\n\r\n",
            b"\t",
            b"\xff\x00",
        ];
        for iter in 0..20_000 {
            let mut input = Vec::new();
            match iter % 3 {
                0 => {
                    let n = rng.below(200) as usize;
                    input.extend((0..n).map(|_| rng.next_u64() as u8));
                }
                1 => {
                    for _ in 0..rng.below(40) {
                        input.extend_from_slice(tokens[rng.below(tokens.len() as u64) as usize]);
                    }
                }
                _ => {
                    input.extend_from_slice(NOTIFY);
                    for _ in 0..1 + rng.below(6) {
                        let at = rng.below(input.len() as u64) as usize;
                        match rng.below(3) {
                            0 => input[at] = rng.next_u64() as u8,
                            1 => {
                                input.truncate(at);
                            }
                            _ => {
                                let t = tokens[rng.below(tokens.len() as u64) as usize];
                                let at = at.min(input.len());
                                input.splice(at..at, t.iter().copied());
                            }
                        }
                        if input.is_empty() {
                            break;
                        }
                    }
                }
            }
            let r = std::panic::catch_unwind(|| {
                if let Some(s) = scan(&input) {
                    let _ = (s.branch(), s.cseq(), s.from_tag(), s.to_tag(), s.expires());
                    assert!(s.body.len() <= input.len());
                }
            });
            assert!(
                r.is_ok(),
                "seed {seed} iteration {iter}: {:?}",
                String::from_utf8_lossy(&input)
            );
        }
    }
}

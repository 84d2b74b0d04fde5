//! Header value grammar pieces: lists, parameters, name-addr, Via, Event,
//! Subscription-State, media types. Lenient where RFC 3261 §25 allows real
//! clients to be sloppy, strict where a wrong reading would change meaning.

use crate::rsip;

/// Split a header value on commas that are outside quotes and `<...>`.
pub fn split_list(value: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut in_quote, mut in_angle, mut escaped) = (false, false, false);
    let mut start = 0;
    for (i, c) in value.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if in_quote => escaped = true,
            '"' => in_quote = !in_quote,
            '<' if !in_quote => in_angle = true,
            '>' if !in_quote => in_angle = false,
            ',' if !in_quote && !in_angle => {
                let part = value[start..i].trim();
                if !part.is_empty() {
                    out.push(part);
                }
                start = i + 1;
            }
            _ => {}
        }
    }
    let part = value[start..].trim();
    if !part.is_empty() {
        out.push(part);
    }
    out
}

/// Split `;`-separated parameters (outside quotes) into (name, value) pairs.
/// Names are lower-cased; quoted values are unquoted.
pub fn parse_params(s: &str) -> Vec<(String, Option<String>)> {
    split_params(s)
        .into_iter()
        .map(|part| match part.split_once('=') {
            Some((n, v)) => (n.trim().to_ascii_lowercase(), Some(unquote(v.trim()))),
            None => (part.to_ascii_lowercase(), None),
        })
        .collect()
}

/// The raw, trimmed, non-empty `;`-separated parameters of `s` (split
/// outside quotes), exactly as written.
pub fn split_params(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut in_quote, mut escaped) = (false, false);
    let mut start = 0;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if in_quote => escaped = true,
            '"' => in_quote = !in_quote,
            ';' if !in_quote => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
        .into_iter()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect()
}

/// Every quoted-string in `s` is closed (backslash escapes honoured). A
/// header with an unterminated quote is malformed: reading on would let the
/// quote swallow the parameters after it (`;"tag=1;expires=5`).
pub fn quotes_balanced(s: &str) -> bool {
    let (mut in_quote, mut escaped) = (false, false);
    for c in s.chars() {
        if escaped {
            escaped = false;
        } else if c == '\\' && in_quote {
            escaped = true;
        } else if c == '"' {
            in_quote = !in_quote;
        }
    }
    !in_quote
}

pub fn unquote(v: &str) -> String {
    if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') {
        let inner = &v[1..v.len() - 1];
        let mut out = String::with_capacity(inner.len());
        let mut esc = false;
        for c in inner.chars() {
            if esc {
                out.push(c);
                esc = false;
            } else if c == '\\' {
                esc = true;
            } else {
                out.push(c);
            }
        }
        out
    } else {
        v.to_string()
    }
}

fn param<'a>(params: &'a [(String, Option<String>)], name: &str) -> Option<&'a Option<String>> {
    params.iter().find(|(n, _)| n == name).map(|(_, v)| v)
}

/// delta-seconds, saturated at u32::MAX as RFC 3261 §25 asks for huge values.
pub fn parse_delta(v: &str) -> Result<u32, ()> {
    let v = v.trim();
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(());
    }
    Ok(v.parse::<u64>()
        .map(|n| n.min(u32::MAX as u64) as u32)
        .unwrap_or(u32::MAX))
}

pub fn parse_cseq(v: &str) -> Option<(u32, String)> {
    let mut it = v.split_whitespace();
    let num = it.next()?;
    let method = it.next()?;
    if it.next().is_some() || num.len() > 10 || !num.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = num.parse().ok()?;
    if n >= 1 << 31 {
        return None;
    }
    Some((n as u32, method.to_string()))
}

/// A `name-addr` or `addr-spec` with header parameters (From, To, Contact).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddr {
    pub display: Option<String>,
    /// The URI text as written (without the angle brackets).
    pub uri_text: String,
    pub uri: rsip::Uri,
    pub params: Vec<(String, Option<String>)>,
    pub tag: Option<String>,
}

impl NameAddr {
    pub fn parse(value: &str) -> Option<NameAddr> {
        let value = value.trim();
        if !quotes_balanced(value) {
            return None;
        }
        let (display, uri_text, rest) = if let Some(lt) = find_unquoted(value, '<') {
            let gt = value[lt..].find('>')? + lt;
            let display = value[..lt].trim();
            let display = if display.is_empty() {
                None
            } else {
                Some(unquote(display))
            };
            (display, value[lt + 1..gt].trim(), &value[gt + 1..])
        } else {
            // addr-spec: parameters after the first ';' belong to the header.
            match value.find(';') {
                Some(semi) => (None, value[..semi].trim(), &value[semi..]),
                None => (None, value, ""),
            }
        };
        if uri_text.is_empty() || uri_text.contains(char::is_whitespace) {
            return None;
        }
        if !quotes_balanced(rest) {
            return None;
        }
        let uri = crate::parse::parse_uri(uri_text).ok()?;
        uri.scheme.as_ref()?;
        let params = parse_params(rest.trim_start_matches(|c: char| c.is_whitespace()));
        // tag-param = "tag" EQUAL token: a bare or empty `;tag` is malformed
        // (and would hide the tag a response adds after it).
        let tag = match param(&params, "tag") {
            Some(Some(t)) if !t.is_empty() => Some(t.clone()),
            Some(_) => return None,
            None => None,
        };
        Some(NameAddr {
            display,
            uri_text: uri_text.to_string(),
            uri,
            params,
            tag,
        })
    }

    pub fn param(&self, name: &str) -> Option<&Option<String>> {
        param(&self.params, name)
    }

    /// The user part of the URI (before the `@`), or `None` for a URI with no
    /// user part.
    pub fn user(&self) -> Option<String> {
        self.uri.user().map(|u| u.to_string())
    }
}

fn find_unquoted(s: &str, target: char) -> Option<usize> {
    let mut in_quote = false;
    let mut esc = false;
    for (i, c) in s.char_indices() {
        if esc {
            esc = false;
            continue;
        }
        match c {
            '\\' if in_quote => esc = true,
            '"' => in_quote = !in_quote,
            c if c == target && !in_quote => return Some(i),
            _ => {}
        }
    }
    None
}

/// One element of a Contact header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContactValue {
    Star,
    Addr(NameAddr),
}

impl ContactValue {
    pub fn parse(v: &str) -> Option<ContactValue> {
        if v.trim() == "*" {
            return Some(ContactValue::Star);
        }
        NameAddr::parse(v).map(ContactValue::Addr)
    }
}

/// The top-level parts of a Via value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    pub transport: String,
    pub host: String,
    pub port: Option<u16>,
    pub branch: Option<String>,
    /// `None`: no rport; `Some(None)`: rport without value; `Some(Some(p))`.
    pub rport: Option<Option<u16>>,
    pub received: Option<String>,
    pub params: Vec<(String, Option<String>)>,
    pub raw: String,
}

impl Via {
    pub fn parse(v: &str) -> Option<Via> {
        let v = v.trim();
        if !quotes_balanced(v) {
            return None;
        }
        // sent-protocol = protocol-name SLASH protocol-version SLASH transport,
        // where SLASH = SWS "/" SWS: whitespace may surround the slashes
        // (RFC 3261 §25.1). Then LWS and sent-by.
        let (name, rest) = v.split_once('/')?;
        let (version, rest) = rest.split_once('/')?;
        let rest = rest.trim_start();
        let transport_len = rest.bytes().take_while(|b| is_token_char(*b)).count();
        let (transport, rest) = rest.split_at(transport_len);
        let (name, version) = (name.trim(), version.trim());
        if !name.eq_ignore_ascii_case("SIP")
            || version.is_empty()
            || !version.bytes().all(is_token_char)
            || transport.is_empty()
            || !rest.starts_with(char::is_whitespace)
        {
            return None;
        }
        let rest = rest.trim();
        let (sent_by, params) = match rest.find(';') {
            Some(i) if quotes_balanced(&rest[i..]) => (rest[..i].trim(), parse_params(&rest[i..])),
            Some(_) => return None,
            None => (rest, Vec::new()),
        };
        let (host, port) = split_host_port(sent_by)?;
        let branch = param(&params, "branch").and_then(|b| b.clone());
        let rport = param(&params, "rport").map(|v| v.as_ref().and_then(|p| p.parse().ok()));
        let received = param(&params, "received").and_then(|r| r.clone());
        Some(Via {
            transport: transport.to_ascii_uppercase(),
            host,
            port,
            branch,
            rport,
            received,
            params,
            raw: v.to_string(),
        })
    }

    pub fn sent_by(&self) -> String {
        match self.port {
            Some(p) => format!("{}:{}", self.host, p),
            None => self.host.clone(),
        }
    }
}

/// The top Via of a header section: the first element of the first Via line
/// that has one, parsed. Names are compared case-insensitively; a compact `v`
/// must already be expanded (the parser does that). Only the first non-empty
/// Via line is split.
pub fn top_via(headers: &rsip::Headers) -> Option<Via> {
    headers
        .iter()
        .filter(|h| h.name().eq_ignore_ascii_case("Via"))
        .find_map(|h| split_list(h.value()).first().copied())
        .and_then(Via::parse)
}

/// `host[:port]`, IPv6 references in brackets. The host keeps its brackets.
pub fn split_host_port(s: &str) -> Option<(String, Option<u16>)> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Some(stripped) = s.strip_prefix('[') {
        let close = stripped.find(']')?;
        let host = &s[..close + 2];
        let after = &stripped[close + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.trim().parse().ok()?),
            None if after.trim().is_empty() => None,
            None => return None,
        };
        return Some((host.to_string(), port));
    }
    match s.rsplit_once(':') {
        Some((h, p)) => {
            if h.contains(':') || h.is_empty() {
                return None;
            }
            Some((h.to_string(), Some(p.trim().parse().ok()?)))
        }
        None => Some((s.to_string(), None)),
    }
}

/// `Event: package[.template];id=...;params`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventHeader {
    /// Lower-cased package name including any template (`presence.winfo`).
    pub package: String,
    pub id: Option<String>,
    pub params: Vec<(String, Option<String>)>,
}

impl EventHeader {
    pub fn parse(v: &str) -> Option<EventHeader> {
        let v = v.trim();
        let (name, rest) = match v.find(';') {
            Some(i) => (&v[..i], &v[i..]),
            None => (v, ""),
        };
        let name = name.trim();
        if name.is_empty() || !name.bytes().all(is_token_char) {
            return None;
        }
        let params = parse_params(rest);
        let id = param(&params, "id").and_then(|i| i.clone());
        Some(EventHeader {
            package: name.to_ascii_lowercase(),
            id,
            params,
        })
    }
}

pub fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

/// A control character that may not appear in a header name or value once
/// continuation lines are unfolded: any byte below 0x20 except HTAB, and DEL
/// (RFC 3261 §25.1: header values are `TEXT-UTF8`, `LWS` and separators; the
/// only control characters the grammar knows are CR and LF as line ends and
/// HTAB as whitespace). A bare CR or LF left in a value would end the header
/// line wherever the value is written again: header injection.
pub fn is_ctl(b: u8) -> bool {
    (b < 0x20 && b != b'\t') || b == 0x7f
}

/// `s` holds a control character (see [`is_ctl`]).
pub fn has_ctl(s: &str) -> bool {
    s.bytes().any(is_ctl)
}

/// `Subscription-State: active;expires=600` / `terminated;reason=timeout`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionState {
    pub state: String,
    pub expires: Option<u32>,
    pub reason: Option<String>,
    pub retry_after: Option<u32>,
}

impl SubscriptionState {
    pub fn parse(v: &str) -> Option<SubscriptionState> {
        let v = v.trim();
        let (state, rest) = match v.find(';') {
            Some(i) => (&v[..i], &v[i..]),
            None => (v, ""),
        };
        let state = state.trim().to_ascii_lowercase();
        if state.is_empty() {
            return None;
        }
        let params = parse_params(rest);
        let num = |n: &str| {
            param(&params, n)
                .and_then(|v| v.as_deref())
                .and_then(|v| parse_delta(v).ok())
        };
        Some(SubscriptionState {
            expires: num("expires"),
            retry_after: num("retry-after"),
            reason: param(&params, "reason").and_then(|r| r.clone()),
            state,
        })
    }
}

/// `type/subtype`, lower-cased, parameters dropped (`*/*` and `type/*` kept).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MediaType(pub String);

impl MediaType {
    pub fn parse(v: &str) -> Option<MediaType> {
        let base = v.split(';').next()?.trim().to_ascii_lowercase();
        // SLASH = SWS "/" SWS (RFC 3261 §25.1): `text / plain` is `text/plain`.
        let (t, s) = base.split_once('/')?;
        let (t, s) = (t.trim_end(), s.trim_start());
        if t.is_empty()
            || s.is_empty()
            || !t.bytes().all(is_token_char)
            || !s.bytes().all(is_token_char)
        {
            return None;
        }
        Some(MediaType(format!("{t}/{s}")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Does this Accept range match a concrete type?
    pub fn matches(&self, concrete: &str) -> bool {
        if self.0 == "*/*" {
            return true;
        }
        match self.0.strip_suffix("/*") {
            Some(t) => concrete.split('/').next() == Some(t),
            None => self.0 == concrete,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_split_outside_quotes_and_angles() {
        assert_eq!(
            split_list(r#""a, b" <sip:x@y;p=1,2>;q=0.1, <sip:z@w>"#),
            vec![r#""a, b" <sip:x@y;p=1,2>;q=0.1"#, "<sip:z@w>"]
        );
        assert_eq!(split_list(" , ,"), Vec::<&str>::new());
    }

    #[test]
    fn raw_params_keep_quotes() {
        assert_eq!(
            split_params(r#";a=1; b="x;y" ;;c"#),
            vec!["a=1", r#"b="x;y""#, "c"]
        );
        assert_eq!(
            parse_params(r#";A=1;b="x;y""#),
            vec![
                ("a".into(), Some("1".into())),
                ("b".into(), Some("x;y".into()))
            ]
        );
    }

    #[test]
    fn name_addr_forms() {
        let n = NameAddr::parse(r#""Alice \"A\"" <sip:alice@atlanta.com>;tag=1928301774"#).unwrap();
        assert_eq!(n.display.as_deref(), Some(r#"Alice "A""#));
        assert_eq!(n.tag.as_deref(), Some("1928301774"));
        assert_eq!(n.uri_text, "sip:alice@atlanta.com");
        // addr-spec: the ;tag belongs to the header, not to the URI
        let n = NameAddr::parse("sip:johg@sip2.kumoh.ac.kr;tag=264645608").unwrap();
        assert_eq!(n.tag.as_deref(), Some("264645608"));
        assert_eq!(n.uri_text, "sip:johg@sip2.kumoh.ac.kr");
        // IPv6 host
        let n = NameAddr::parse("<sip:bob@[2001:db8::10]:5070;transport=tcp>;expires=60").unwrap();
        assert_eq!(n.param("expires"), Some(&Some("60".to_string())));
        assert!(NameAddr::parse("<>").is_none());
        assert!(NameAddr::parse("<sip:a@b>;tag").is_none());
        assert!(NameAddr::parse("<sip:a@b>;tag=").is_none());
        // An unterminated quote in the parameters.
        assert!(NameAddr::parse(r#"<sip:a@b>;"tag=1;expires=5"#).is_none());
        assert!(NameAddr::parse(r#"<sip:a@b".c>;"tag=1"#).is_none());
        assert!(Via::parse(r#"SIP/2.0/UDP h"x;a="b;branch=z9hG4bK1"#).is_none());
        assert!(NameAddr::parse(r#""x\"" <sip:a@b>"#).is_some());
        assert!(NameAddr::parse("no uri here").is_none());
    }

    #[test]
    fn via_forms() {
        let v = Via::parse("SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bK1;rport").unwrap();
        assert_eq!(v.host, "[2001:db8::1]");
        assert_eq!(v.port, Some(5060));
        assert_eq!(v.rport, Some(None));
        let v =
            Via::parse("SIP/2.0/tcp pc33.atlanta.com;branch=z9hG4bK776asegma ;received=10.1.3.33")
                .unwrap();
        assert_eq!(v.transport, "TCP");
        assert_eq!(v.port, None);
        assert_eq!(v.received.as_deref(), Some("10.1.3.33"));
        // SLASH = SWS "/" SWS
        let v = Via::parse("SIP  /   2.0 /UDP server.example.com;branch=z9hG4bKfold").unwrap();
        assert_eq!(
            (v.transport.as_str(), v.host.as_str()),
            ("UDP", "server.example.com")
        );
        assert_eq!(v.branch.as_deref(), Some("z9hG4bKfold"));
        assert!(Via::parse("SIP/2.0/UDP/x host").is_none());
        assert!(Via::parse("SIP/2.0 host;branch=a/b").is_none());
        assert!(Via::parse("SIP/2.0/UDP").is_none());
        assert!(Via::parse("garbage").is_none());
        assert!(Via::parse("SIP/2.0/UDP host:notaport").is_none());
    }

    #[test]
    fn top_via_is_the_first_element_over_all_via_lines() {
        let mut hs = rsip::Headers::default();
        hs.push(rsip::headers::make_header("Call-ID", "x".to_string()));
        assert!(top_via(&hs).is_none());
        hs.push(rsip::headers::make_header("via", " , ".to_string()));
        hs.push(rsip::headers::make_header(
            "Via",
            "SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b;branch=z9hG4bK2".to_string(),
        ));
        hs.push(rsip::headers::make_header(
            "Via",
            "SIP/2.0/UDP c".to_string(),
        ));
        let v = top_via(&hs).unwrap();
        assert_eq!(
            (v.host.as_str(), v.branch.as_deref()),
            ("a", Some("z9hG4bK1"))
        );
    }

    #[test]
    fn event_and_state() {
        let e = EventHeader::parse("Presence;id=7").unwrap();
        assert_eq!(e.package, "presence");
        assert_eq!(e.id.as_deref(), Some("7"));
        assert!(EventHeader::parse("").is_none());
        let s = SubscriptionState::parse("terminated;reason=timeout").unwrap();
        assert_eq!(
            (s.state.as_str(), s.reason.as_deref()),
            ("terminated", Some("timeout"))
        );
        let s = SubscriptionState::parse("active;expires=600").unwrap();
        assert_eq!(s.expires, Some(600));
    }

    #[test]
    fn media_types() {
        assert_eq!(
            MediaType::parse("Application/PIDF+XML; charset=utf-8")
                .unwrap()
                .0,
            "application/pidf+xml"
        );
        assert!(MediaType::parse("application/*")
            .unwrap()
            .matches("application/pidf+xml"));
        assert!(!MediaType::parse("text/*")
            .unwrap()
            .matches("application/pidf+xml"));
        assert!(MediaType::parse("nonsense").is_none());
        assert_eq!(
            MediaType::parse("Text / Plain ;charset=utf-8").unwrap().0,
            "text/plain"
        );
        assert!(MediaType::parse("text/pl ain").is_none());
    }

    #[test]
    fn deltas() {
        assert_eq!(parse_delta("3600"), Ok(3600));
        assert_eq!(parse_delta("99999999999999999999"), Ok(u32::MAX));
        assert_eq!(parse_delta("-1"), Err(()));
        assert_eq!(parse_cseq("22756 PUBLISH"), Some((22756, "PUBLISH".into())));
        assert_eq!(parse_cseq("2147483648 PUBLISH"), None);
    }
}

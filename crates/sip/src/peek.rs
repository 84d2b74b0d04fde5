//! A cheap look at a response: its status code and the branch of its top Via,
//! without building the message.
//!
//! A server that sends many requests (NOTIFY fan-out) receives as many
//! responses, and for most of them it only needs to know which client
//! transaction they answer and with what code. [`peek_response`] finds both
//! in one pass over the header lines, allocating nothing. It answers `None`
//! whenever the message is not plainly a response it can read this way
//! (folded lines, quoted strings in the Via, no branch…); the caller then
//! falls back to [`crate::parse`], which has the final word on bad input.

use crate::headers::is_token_char;

/// What [`peek_response`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponsePeek<'a> {
    pub code: u16,
    /// The `branch` parameter of the first Via element.
    pub branch: &'a str,
}

/// Status code and top-Via branch of a response, or `None` (use the parser).
pub fn peek_response(data: &[u8]) -> Option<ResponsePeek<'_>> {
    let head_end = find(data, b"\r\n\r\n")?;
    let head = std::str::from_utf8(&data[..head_end]).ok()?;
    let mut lines = head.split("\r\n");
    let code = status_code(lines.next()?)?;
    for line in lines {
        if line.starts_with([' ', '\t']) {
            return None; // folded header: leave it to the parser
        }
        let (name, value) = line.split_once(':')?;
        let name = name.trim_end_matches([' ', '\t']);
        if name.eq_ignore_ascii_case("Via") || name.eq_ignore_ascii_case("v") {
            return Some(ResponsePeek {
                code,
                branch: top_branch(value)?,
            });
        }
    }
    None
}

fn status_code(line: &str) -> Option<u16> {
    line.get(..8)
        .filter(|v| v.eq_ignore_ascii_case("SIP/2.0 "))?;
    let digits = line.get(8..11)?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    match line.as_bytes().get(11) {
        None | Some(b' ') => {}
        Some(_) => return None,
    }
    let code: u16 = digits.parse().ok()?;
    (100..700).contains(&code).then_some(code)
}

/// The branch of the first element of a Via value.
fn top_branch(value: &str) -> Option<&str> {
    if value.contains('"') {
        return None;
    }
    let first = value.split(',').next()?;
    let mut params = first.split(';');
    let sent_by = params.next()?.trim();
    if sent_by.is_empty() {
        return None;
    }
    for p in params {
        let (k, v) = match p.split_once('=') {
            Some((k, v)) => (k.trim(), v.trim()),
            None => continue,
        };
        if k.eq_ignore_ascii_case("branch") {
            return (!v.is_empty() && v.bytes().all(is_token_char)).then_some(v);
        }
    }
    None
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(head: &str) -> Vec<u8> {
        format!("{head}\r\n\r\n").into_bytes()
    }

    #[test]
    fn reads_code_and_top_branch() {
        let m = resp(
            "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKabc;rport=5060, SIP/2.0/UDP p;branch=z9hG4bKother\r\nVia: SIP/2.0/UDP q;branch=z9hG4bKthird\r\nCall-ID: x\r\nCSeq: 1 NOTIFY",
        );
        assert_eq!(
            peek_response(&m),
            Some(ResponsePeek {
                code: 200,
                branch: "z9hG4bKabc"
            })
        );
    }

    #[test]
    fn compact_names_case_and_spacing() {
        let m = resp("sip/2.0 481 Subscription does not exist\r\nv :SIP/2.0/TCP h ; BRANCH = z9hG4bK1 ;received=1.2.3.4");
        assert_eq!(
            peek_response(&m),
            Some(ResponsePeek {
                code: 481,
                branch: "z9hG4bK1"
            })
        );
    }

    #[test]
    fn leaves_the_unusual_to_the_parser() {
        for head in [
            "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h\r\n ;branch=z9hG4bK1", // folded
            "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;x=\"a\";branch=z9hG4bK1", // quoted
            "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;rport",                // no branch
            "SIP/2.0 20 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1",       // bad code
            "SIP/2.0 2000 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1",
            "SIP/2.0 099 Low\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1",
            "SIP/3.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1",
            "NOTIFY sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1", // a request
            "SIP/2.0 200 OK\r\nCall-ID: x",                                 // no Via
            "SIP/2.0 200 OK\r\nVia: ;branch=z9hG4bK1",                      // no sent-by
            "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=",                 // empty branch
            "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=a b",              // not a token
            "SIP/2.0 200 OK\r\nno colon here\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1",
        ] {
            assert_eq!(peek_response(&resp(head)), None, "{head:?}");
        }
        assert_eq!(
            peek_response(b"SIP/2.0 200 OK\r\nVia: x;branch=y\r\n"),
            None
        ); // no header end
        assert_eq!(peek_response("SIP/2.0 200 é\r\n\r\n".as_bytes()), None);
    }
}

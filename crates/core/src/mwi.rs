//! `message-summary` bodies (RFC 3842, message waiting indication): what a
//! voicemail server PUBLISHes and a phone's voicemail lamp shows. The
//! server relays the newest body byte for byte; this module only checks
//! that a PUBLISHed body is one, so a phone is never handed garbage.
//!
//! ```text
//! Messages-Waiting: yes
//! Message-Account: sip:alice@vmail.example.com
//! Voice-Message: 2/8 (0/2)
//!
//! (optional message headers)
//! ```

/// The body a watcher gets when nothing is published (RFC 3842 §5.2: the
/// state is "no messages waiting").
pub const NO_MESSAGES: &str = "Messages-Waiting: no\r\n";

/// Why a body is not a message summary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MwiError {
    #[error("not UTF-8")]
    Encoding,
    #[error("the first line is not Messages-Waiting: yes|no")]
    Status,
    #[error("line {0}: not a Message-Account or message-context-class line")]
    Line(usize),
}

/// Check a message-summary body (RFC 3842 §5.2). Lines may end in CRLF or
/// LF; header names are case-insensitive. After the summary lines, an
/// empty line starts optional message headers, which are not checked.
pub fn check(body: &[u8]) -> Result<(), MwiError> {
    let text = std::str::from_utf8(body).map_err(|_| MwiError::Encoding)?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let status = lines.next().and_then(header).ok_or(MwiError::Status)?;
    if !status.0.eq_ignore_ascii_case("Messages-Waiting")
        || !(status.1.eq_ignore_ascii_case("yes") || status.1.eq_ignore_ascii_case("no"))
    {
        return Err(MwiError::Status);
    }
    for (i, line) in lines.enumerate() {
        if line.trim().is_empty() {
            break;
        }
        let ok = header(line).is_some_and(|(name, value)| {
            name.eq_ignore_ascii_case("Message-Account") && !value.is_empty()
                || is_token(name) && counts(value)
        });
        if !ok {
            return Err(MwiError::Line(i + 2));
        }
    }
    Ok(())
}

/// `name: value`, both trimmed; `None` without a colon or a name.
fn header(line: &str) -> Option<(&str, &str)> {
    let (name, value) = line.split_once(':')?;
    let name = name.trim();
    (!name.is_empty()).then(|| (name, value.trim()))
}

fn is_token(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b))
}

/// `new/old` with an optional `(new-urgent/old-urgent)`.
fn counts(value: &str) -> bool {
    let pair = |s: &str| {
        s.split_once('/').is_some_and(|(a, b)| {
            let digits =
                |x: &str| !x.trim().is_empty() && x.trim().bytes().all(|c| c.is_ascii_digit());
            digits(a) && digits(b)
        })
    };
    match value.split_once('(') {
        None => pair(value),
        Some((plain, urgent)) => {
            pair(plain) && urgent.trim_end().strip_suffix(')').is_some_and(pair)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    #[test]
    fn the_rfc_examples_and_their_variants_are_summaries() {
        for body in [
            "Messages-Waiting: yes\r\nMessage-Account: sip:alice@vmail.example.com\r\nVoice-Message: 2/8 (0/2)\r\n",
            "Messages-Waiting: no\r\n",
            "Messages-Waiting: no",
            "messages-waiting:YES\nvoice-message: 4/8\nfax-message: 0/0 (0/0)\n",
            "Messages-Waiting: yes\r\nVoice-Message: 1/0\r\n\r\nTo: <sip:alice@example.com>\r\nSubject: anything at all\r\n",
            NO_MESSAGES,
        ] {
            assert_eq!(check(body.as_bytes()), Ok(()), "{body:?}");
        }
    }

    #[test]
    fn what_is_not_a_summary_is_refused() {
        assert_eq!(check(b""), Err(MwiError::Status));
        assert_eq!(check(b"Messages-Waiting: maybe\r\n"), Err(MwiError::Status));
        assert_eq!(check(b"Voice-Message: 1/2\r\n"), Err(MwiError::Status));
        assert_eq!(check(b"<presence/>"), Err(MwiError::Status));
        assert_eq!(check(b"\xff\xfe"), Err(MwiError::Encoding));
        assert_eq!(
            check(b"Messages-Waiting: yes\r\nVoice-Message: two/8\r\n"),
            Err(MwiError::Line(2))
        );
        assert_eq!(
            check(b"Messages-Waiting: yes\r\nVoice-Message: 1/2 (3/4\r\n"),
            Err(MwiError::Line(2))
        );
        assert_eq!(
            check(b"Messages-Waiting: yes\r\nMessage-Account: sip:a@b\r\ngarbage\r\n"),
            Err(MwiError::Line(3))
        );
    }

    /// Whatever the bytes, `check` answers (no panic), also for a valid
    /// body with one byte changed; every body built from the grammar is
    /// accepted.
    #[test]
    fn property_no_input_panics_and_grammar_bodies_pass() {
        let mut rng = StdRng::seed_from_u64(3842);
        let classes = [
            "Voice-Message",
            "Fax-Message",
            "Pager-Message",
            "Multimedia-Message",
            "Text-Message",
            "None",
        ];
        for _ in 0..5_000 {
            let len = rng.random_range(0..200usize);
            let noise: Vec<u8> = (0..len).map(|_| rng.random::<u8>()).collect();
            let _ = check(&noise);

            let eol = if rng.random_bool(0.5) { "\r\n" } else { "\n" };
            let mut body = format!(
                "Messages-Waiting: {}{eol}",
                if rng.random_bool(0.5) { "yes" } else { "no" }
            );
            if rng.random_bool(0.5) {
                body += &format!(
                    "Message-Account: sip:u{}@vm.example.com{eol}",
                    rng.random::<u16>()
                );
            }
            for _ in 0..rng.random_range(0..4usize) {
                let class = classes[rng.random_range(0..classes.len())];
                let (n, o) = (rng.random::<u16>(), rng.random::<u16>());
                body += &format!("{class}: {n}/{o}");
                if rng.random_bool(0.5) {
                    body += &format!(" ({}/{})", rng.random::<u8>(), rng.random::<u8>());
                }
                body += eol;
            }
            assert_eq!(check(body.as_bytes()), Ok(()), "{body:?}");
            let mut mutated = body.clone().into_bytes();
            let at = rng.random_range(0..mutated.len());
            mutated[at] = rng.random::<u8>();
            let _ = check(&mutated);
        }
    }
}

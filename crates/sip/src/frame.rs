//! Stream framing (TCP): where does one message end?
//!
//! "Need more bytes" is a value ([`StreamFrame::NeedMore`]), not an error.
//! Errors are unrecoverable for the stream: the caller answers what it can
//! (413 / 400) and closes the connection, because it cannot find the start of
//! the next message.

/// Result of looking for one complete message at the front of a stream buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamFrame {
    /// `skip` bytes of keep-alive CRLFs (never a ping) precede a message of
    /// `len` bytes.
    Message { skip: usize, len: usize },
    /// `len` bytes of CRLF keep-alive (RFC 5626 §4.4.1: a double CRLF "ping"
    /// that wants a single CRLF "pong"). A ping is reported even when the
    /// next message follows it in the same buffer; that message comes on the
    /// next call.
    KeepAlive { len: usize, ping: bool },
    /// The buffer does not yet hold a complete message.
    NeedMore,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("message larger than {0} bytes")]
    TooLarge(usize),
    #[error("Content-Length missing on a stream transport")]
    MissingContentLength,
    #[error("invalid Content-Length")]
    BadContentLength,
}

/// Position just past the blank line that ends the header section, accepting
/// CRLF CRLF and (leniently) LF LF.
pub fn header_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < buf.len() {
        if buf[i] == b'\n' {
            if buf.get(i + 1) == Some(&b'\n') {
                return Some(i + 2);
            }
            if buf.get(i + 1) == Some(&b'\r') && buf.get(i + 2) == Some(&b'\n') {
                return Some(i + 3);
            }
        }
        i += 1;
    }
    None
}

/// Content-Length values found in a header section (`Content-Length` or `l`).
/// `Err` if a value is not a number or two values disagree.
///
/// Lines starting with SP/HT continue the previous header (RFC 3261 §7.3.1):
/// they are never header lines of their own, and they extend a folded
/// Content-Length value.
pub fn content_length(head: &[u8]) -> Result<Option<usize>, FrameError> {
    let is_continuation = |l: &[u8]| matches!(l.first(), Some(b' ' | b'\t'));
    let mut lines = head.split(|b| *b == b'\n').skip(1).peekable(); // skip the start line
    let mut found: Option<usize> = None;
    while let Some(line) = lines.next() {
        if is_continuation(line) {
            // Part of the start line or of a header that is not ours.
            continue;
        }
        let line = line.trim_ascii();
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let name = line[..colon].trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"l") {
            let mut value = line[colon + 1..].trim_ascii().to_vec();
            while let Some(more) = lines.next_if(|l| is_continuation(l)) {
                let more = more.trim_ascii();
                if !value.is_empty() && !more.is_empty() {
                    value.push(b' ');
                }
                value.extend_from_slice(more);
            }
            let text = std::str::from_utf8(&value).map_err(|_| FrameError::BadContentLength)?;
            if text.is_empty() || text.len() > 9 || !text.bytes().all(|b| b.is_ascii_digit()) {
                return Err(FrameError::BadContentLength);
            }
            let n: usize = text.parse().map_err(|_| FrameError::BadContentLength)?;
            match found {
                Some(prev) if prev != n => return Err(FrameError::BadContentLength),
                _ => found = Some(n),
            }
        }
    }
    Ok(found)
}

/// Find one complete message at the front of `buf` (a TCP stream buffer).
pub fn frame_stream(buf: &[u8], max: usize) -> Result<StreamFrame, FrameError> {
    let skip = buf
        .iter()
        .take_while(|b| **b == b'\r' || **b == b'\n')
        .count();
    if skip == buf.len() {
        if skip == 0 {
            return Ok(StreamFrame::NeedMore);
        }
        // Only CRLFs so far: a keep-alive. "\r\n\r\n" is a ping that wants a pong.
        let ping = buf.windows(4).any(|w| w == b"\r\n\r\n");
        return Ok(StreamFrame::KeepAlive { len: skip, ping });
    }
    if buf[..skip].windows(4).any(|w| w == b"\r\n\r\n") {
        // A ping right before the next message still gets its pong.
        return Ok(StreamFrame::KeepAlive {
            len: skip,
            ping: true,
        });
    }
    let rest = &buf[skip..];
    let Some(head_len) = header_end(rest) else {
        if rest.len() > max {
            return Err(FrameError::TooLarge(max));
        }
        return Ok(StreamFrame::NeedMore);
    };
    // An oversized header section is TooLarge whatever its Content-Length
    // says, so the verdict does not depend on how much of it had arrived.
    if head_len > max {
        return Err(FrameError::TooLarge(max));
    }
    let body_len = content_length(&rest[..head_len])?.ok_or(FrameError::MissingContentLength)?;
    let len = head_len + body_len;
    if len > max {
        return Err(FrameError::TooLarge(max));
    }
    if rest.len() < len {
        return Ok(StreamFrame::NeedMore);
    }
    Ok(StreamFrame::Message { skip, len })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = b"OPTIONS sip:a@b SIP/2.0\r\nl: 5\r\n\r\nhello";

    #[test]
    fn frames_a_whole_message_and_waits_for_partial_ones() {
        assert_eq!(
            frame_stream(MSG, 1000),
            Ok(StreamFrame::Message {
                skip: 0,
                len: MSG.len()
            })
        );
        for cut in 0..MSG.len() {
            assert_eq!(
                frame_stream(&MSG[..cut], 1000),
                Ok(StreamFrame::NeedMore),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn keepalives_are_recognised() {
        assert_eq!(
            frame_stream(b"\r\n\r\n", 100),
            Ok(StreamFrame::KeepAlive { len: 4, ping: true })
        );
        assert_eq!(
            frame_stream(b"\r\n", 100),
            Ok(StreamFrame::KeepAlive {
                len: 2,
                ping: false
            })
        );
        // A ping in the same buffer as the next message is not swallowed.
        let mut both = b"\r\n\r\n".to_vec();
        both.extend_from_slice(MSG);
        assert_eq!(
            frame_stream(&both, 1000),
            Ok(StreamFrame::KeepAlive { len: 4, ping: true })
        );
        assert_eq!(
            frame_stream(&both[4..], 1000),
            Ok(StreamFrame::Message {
                skip: 0,
                len: MSG.len()
            })
        );
        // Lone CRLFs before a message are skipped with it (RFC 3261 §7.5).
        let mut crlf = b"\r\n".to_vec();
        crlf.extend_from_slice(MSG);
        assert_eq!(
            frame_stream(&crlf, 1000),
            Ok(StreamFrame::Message {
                skip: 2,
                len: MSG.len()
            })
        );
    }

    #[test]
    fn continuation_lines_and_content_length() {
        // " l: 9" continues Subject; it is not a Content-Length.
        assert_eq!(
            content_length(b"MESSAGE sip:a@b SIP/2.0\r\nSubject: x\r\n l: 9\r\nl: 5\r\n\r\n"),
            Ok(Some(5))
        );
        // A folded value.
        assert_eq!(
            content_length(b"MESSAGE sip:a@b SIP/2.0\r\nContent-Length:\r\n\t 5\r\n\r\n"),
            Ok(Some(5))
        );
        assert_eq!(
            content_length(b"MESSAGE sip:a@b SIP/2.0\r\nContent-Length: 1\r\n 2\r\n\r\n"),
            Err(FrameError::BadContentLength)
        );
    }

    #[test]
    fn framing_errors() {
        assert_eq!(
            frame_stream(b"OPTIONS sip:a@b SIP/2.0\r\n\r\n", 100),
            Err(FrameError::MissingContentLength)
        );
        assert_eq!(
            frame_stream(b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: x\r\n\r\n", 100),
            Err(FrameError::BadContentLength)
        );
        assert_eq!(
            frame_stream(
                b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 1\r\nl: 2\r\n\r\n",
                100
            ),
            Err(FrameError::BadContentLength)
        );
        assert_eq!(
            frame_stream(
                b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 99999\r\n\r\n",
                1000
            ),
            Err(FrameError::TooLarge(1000))
        );
        assert_eq!(
            frame_stream(&[b'A'; 2000], 1000),
            Err(FrameError::TooLarge(1000))
        );
        // An oversized header section is TooLarge, not "missing length":
        // the same verdict as when only its first `max` bytes had arrived.
        let mut big = b"OPTIONS sip:a@b SIP/2.0\r\nX: ".to_vec();
        big.extend_from_slice(&[b'a'; 200]);
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(frame_stream(&big, 100), Err(FrameError::TooLarge(100)));
        assert_eq!(
            frame_stream(&big[..150], 100),
            Err(FrameError::TooLarge(100))
        );
    }
}

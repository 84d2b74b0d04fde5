//! A TCP byte stream: `frame_stream` must never panic, every framed message
//! goes to `parse`, and cutting the stream into two reads (at a position
//! taken from the input) frames exactly the same messages and stops at the
//! same error as framing it whole.
#![no_main]

use libfuzzer_sys::fuzz_target;
use presence_sip::{frame_stream, parse, FrameError, StreamFrame, TransportKind};

/// Small enough that the size limit is reached often.
const MAX: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let whole = frame_all(&[data]);
    for m in &whole.0 {
        let _ = parse(m, TransportKind::Stream, MAX);
    }
    if let Some(first) = data.first() {
        let cut = (*first as usize * data.len()) / 256;
        let split = frame_all(&[&data[..cut], &data[cut..]]);
        assert_eq!(split, whole, "cut at {cut}");
    }
});

/// Feed the reads to a connection buffer, framing after each; stop at the
/// first framing error (the connection would be closed).
fn frame_all(reads: &[&[u8]]) -> (Vec<Vec<u8>>, Option<FrameError>) {
    let mut buf = Vec::new();
    let mut messages = Vec::new();
    for read in reads {
        buf.extend_from_slice(read);
        loop {
            match frame_stream(&buf, MAX) {
                Ok(StreamFrame::Message { skip, len }) => {
                    assert!(skip + len <= buf.len());
                    messages.push(buf[skip..skip + len].to_vec());
                    buf.drain(..skip + len);
                }
                Ok(StreamFrame::KeepAlive { len, .. }) => {
                    assert!(len > 0 && len <= buf.len());
                    buf.drain(..len);
                }
                Ok(StreamFrame::NeedMore) => break,
                Err(e) => return (messages, Some(e)),
            }
        }
    }
    (messages, None)
}

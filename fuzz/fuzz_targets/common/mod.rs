//! What the two parse targets check on one message: `parse` never panics,
//! and whatever it lets through is readable by the typed accessors and
//! answerable.

use presence_sip::{parse, HeaderAccess, Message, ResponseBuilder, TransportKind};

pub fn check(data: &[u8], transport: TransportKind) {
    match parse(data, transport, presence_sip::DEFAULT_MAX_MESSAGE) {
        Ok(Message::Request(r)) => {
            touch(&r);
            let _ = r.transaction_key();
            // A request that parsed has a CSeq naming its method.
            let (_, method) = r.cseq().expect("parsed request without a valid CSeq");
            assert_eq!(method, r.method.as_str());
            let source = "192.0.2.1:5060".parse().ok();
            let answer = ResponseBuilder::new(&r.headers, 200, "OK", Some("tag"), source).encode();
            assert!(matches!(
                parse(&answer, TransportKind::Stream, usize::MAX),
                Ok(Message::Response(_))
            ));
        }
        Ok(Message::Response(r)) => touch(&r),
        Err(e) => {
            if let Some(headers) = &e.answer {
                let _ = ResponseBuilder::new(headers, e.status, &e.reason, Some("tag"), None).encode();
            }
        }
    }
}

fn touch<H: HeaderAccess>(m: &H) {
    let _ = (m.call_id(), m.cseq(), m.from_addr(), m.to_addr(), m.top_via());
    let _ = (m.expires(), m.min_expires(), m.max_forwards(), m.event());
    let _ = (m.sip_etag(), m.sip_if_match(), m.subscription_state());
    let _ = (m.allow_events(), m.accept(), m.content_type(), m.contacts());
}

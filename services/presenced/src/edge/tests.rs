//! Edge tests that need a running edge or its tables.

use super::*;
use presence_store::MemoryBus;

/// A watcher's UDP socket that answers NOTIFYs by hand.
struct Watcher(UdpSocket);

impl Watcher {
    /// The next NOTIFY whose CSeq is not in `seen` (retransmissions of
    /// unanswered ones are skipped); `None` if none comes within `wait`.
    async fn next_new(&self, seen: &[u32], wait: Duration) -> Option<(u32, String)> {
        let mut buf = vec![0u8; 65536];
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (n, _) = tokio::time::timeout(left, self.0.recv_from(&mut buf))
                .await
                .ok()?
                .expect("recv");
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            let cseq = text
                .lines()
                .find_map(|l| l.strip_prefix("CSeq: "))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .expect("a CSeq");
            if !seen.contains(&cseq) {
                return Some((cseq, text));
            }
        }
    }

    /// Answer a NOTIFY (as received) with 200.
    async fn ok(&self, notify: &str, to: SocketAddr) {
        let mut answer = String::from("SIP/2.0 200 OK\r\n");
        for l in notify.lines() {
            let name = l.split(':').next().unwrap_or("");
            if ["Via", "From", "To", "Call-ID", "CSeq"].contains(&name) {
                answer.push_str(l);
                answer.push_str("\r\n");
            }
        }
        answer.push_str("Content-Length: 0\r\n\r\n");
        self.0.send_to(answer.as_bytes(), to).await.expect("send");
    }
}

fn notify(flow: &Flow, cseq: u32) -> OutRequest {
    let mut headers = rsip::Headers::default();
    for (n, v) in [
        ("To", "<sip:w@example.com>;tag=w1".to_string()),
        ("From", "<sip:p@example.com>;tag=sub1".to_string()),
        ("Call-ID", "dialog-1".to_string()),
        ("CSeq", format!("{cseq} NOTIFY")),
        ("Event", "presence".to_string()),
        ("Subscription-State", "active;expires=60".to_string()),
    ] {
        headers.push(rsip::headers::make_header(n, v));
    }
    OutRequest {
        flow: flow.clone(),
        method: "NOTIFY".into(),
        uri: "sip:w@127.0.0.1".into(),
        headers,
        body: Bytes::new(),
        deadline_ms: 0,
    }
}

/// NOTIFYs of one dialog numbered by different notifiers arrive at the
/// edge in any order: they leave one at a time, in CSeq order, and one
/// overtaken by a higher CSeq is not sent at all.
#[tokio::test]
async fn notifies_of_a_dialog_leave_one_at_a_time_in_cseq_order() {
    let listeners = Listeners::bind(&["127.0.0.1:0".parse().expect("addr")])
        .await
        .expect("bind");
    let local = listeners.udp[0].0;
    let cfg = EdgeConfig {
        id: "e1".into(),
        domains: vec!["example.com".into()],
        verifier: None,
        min_expires: 2,
        max_expires: 3600,
        max_message: 65536,
        shards: 8,
        packages: Registry::default(),
        delay_subscribe_answer: Duration::ZERO,
        limits: EdgeLimits::default(),
    };
    let edge = Arc::new(Edge::new(
        cfg,
        Arc::new(MemoryBus::new()),
        Clock::new(),
        Arc::new(Metrics::new()),
        listeners.udp.clone(),
    ));
    let (_stop, stop_rx) = watch::channel(false);
    tokio::spawn(
        edge.clone()
            .run(listeners.tcp, Arc::new(MemoryBus::new()), stop_rx),
    );
    let w = Watcher(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
    let flow = Flow {
        transport: Transport::Udp,
        remote: w.0.local_addr().expect("addr"),
        local,
        edge: "e1".into(),
        conn: 0,
    };
    let send = |cseq| {
        let (edge, out) = (edge.clone(), notify(&flow, cseq));
        tokio::spawn(async move { edge.send_request(out).await })
    };
    let quiet = Duration::from_millis(700);

    let five = send(5);
    let (c, first) = w.next_new(&[], PATIENCE).await.expect("CSeq 5 is sent");
    assert_eq!(c, 5);
    // 7 and 6 arrive while 5 is unanswered: neither goes out yet.
    let seven = send(7);
    let six = send(6);
    assert_eq!(w.next_new(&[5], quiet).await, None, "one at a time");
    w.ok(&first, local).await;
    assert_eq!(five.await.expect("task").code, 200);
    // 7 goes next; 6 was overtaken and is not sent.
    let (c, second) = w.next_new(&[5], PATIENCE).await.expect("CSeq 7 is sent");
    assert_eq!(c, 7);
    let o = six.await.expect("task");
    assert!(o.superseded, "CSeq 6 superseded: {o:?}");
    w.ok(&second, local).await;
    let o = seven.await.expect("task");
    assert_eq!((o.code, o.superseded), (200, false));
    // A late lower CSeq is not sent either.
    let o = send(6).await.expect("task");
    assert!(o.superseded);
    assert_eq!(w.next_new(&[5, 7], quiet).await, None);
}

const PATIENCE: Duration = Duration::from_secs(5);

/// A notifier that lost the edge's answer sends the same NOTIFY again:
/// it joins the transaction in flight (one transaction per NOTIFY, not
/// two), and a re-send after the answer gets that answer unsent.
#[tokio::test]
async fn a_resent_notify_joins_its_transaction() {
    let listeners = Listeners::bind(&["127.0.0.1:0".parse().expect("addr")])
        .await
        .expect("bind");
    let local = listeners.udp[0].0;
    let cfg = EdgeConfig {
        id: "e1".into(),
        domains: vec!["example.com".into()],
        verifier: None,
        min_expires: 2,
        max_expires: 3600,
        max_message: 65536,
        shards: 8,
        packages: Registry::default(),
        delay_subscribe_answer: Duration::ZERO,
        limits: EdgeLimits::default(),
    };
    let edge = Arc::new(Edge::new(
        cfg,
        Arc::new(MemoryBus::new()),
        Clock::new(),
        Arc::new(Metrics::new()),
        listeners.udp.clone(),
    ));
    let (_stop, stop_rx) = watch::channel(false);
    tokio::spawn(
        edge.clone()
            .run(listeners.tcp, Arc::new(MemoryBus::new()), stop_rx),
    );
    let w = Watcher(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
    let flow = Flow {
        transport: Transport::Udp,
        remote: w.0.local_addr().expect("addr"),
        local,
        edge: "e1".into(),
        conn: 0,
    };
    let send = || {
        let (edge, out) = (edge.clone(), notify(&flow, 5));
        tokio::spawn(async move { edge.send_request(out).await })
    };
    let first = send();
    let (c, text) = w.next_new(&[], PATIENCE).await.expect("sent");
    assert_eq!(c, 5);
    let again = send();
    // 800 ms unanswered: one transaction sends twice (0 and 0.5 s);
    // two would send four times.
    let mut copies = 1;
    let mut buf = vec![0u8; 65536];
    while let Ok(Ok(_)) =
        tokio::time::timeout(Duration::from_millis(800), w.0.recv_from(&mut buf)).await
    {
        copies += 1;
    }
    assert_eq!(copies, 2, "one transaction's sends");
    w.ok(&text, local).await;
    assert_eq!(first.await.expect("task").code, 200);
    let o = again.await.expect("task");
    assert_eq!((o.code, o.superseded, o.timed_out), (200, false, false));
    // Answered already: the code again, nothing sent.
    assert_eq!(send().await.expect("task").code, 200);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), w.0.recv_from(&mut buf))
            .await
            .is_err()
    );
}

/// An answered transaction's entry goes after its own keep time, also
/// when its (longer) guard entry is queued before it.
#[tokio::test(start_paused = true)]
async fn answered_transactions_are_kept_for_their_own_time() {
    let mut t = TxnTable::default();
    for (key, keep) in [("tcp", Keep::Tcp), ("udp", Keep::Udp)] {
        t.entries.insert(key.into(), None);
        t.expire_in(Keep::Guard, key.into());
        t.entries.insert(key.into(), Some(Bytes::new()));
        t.expire_in(keep, key.into());
    }
    tokio::time::advance(Duration::from_secs(2)).await;
    t.sweep(Instant::now());
    assert!(!t.entries.contains_key("tcp"), "TCP: kept about 1 s");
    assert!(t.entries.contains_key("udp"), "UDP: kept for Timer J");
    tokio::time::advance(TIMER_J).await;
    t.sweep(Instant::now());
    assert!(t.entries.is_empty());
}

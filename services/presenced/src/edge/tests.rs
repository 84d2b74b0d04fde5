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

/// A relayed MESSAGE through `flow`, as the relay asks for one.
fn message(flow: &Flow) -> OutRequest {
    let mut out = notify(flow, 1);
    out.method = "MESSAGE".into();
    out.headers.retain(|h| {
        !h.name().eq_ignore_ascii_case("CSeq")
            && !h.name().eq_ignore_ascii_case("Event")
            && !h.name().eq_ignore_ascii_case("Subscription-State")
    });
    out.headers
        .push(rsip::headers::make_header("CSeq", "1 MESSAGE".to_string()));
    out.body = Bytes::from_static(b"hello");
    out
}

/// The configuration of the edges of these tests (`e1`, example.com).
fn test_config() -> EdgeConfig {
    EdgeConfig {
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
        advertise: Vec::new(),
        sealer: presence_core::FlowSealer::new(b"test secret"),
        trusted: Default::default(),
        lists: crate::reload::Reloadable::fixed("resource lists", Default::default()),
    }
}

/// A running edge on a free UDP/TCP port of 127.0.0.1; it stops when the
/// returned sender is dropped.
async fn running_edge() -> (Arc<Edge>, SocketAddr, watch::Sender<bool>) {
    let (edge, local, _, stop) = running_edge_on_bus().await;
    (edge, local, stop)
}

/// [`running_edge`], and the bus on which it serves `edge.e1` and
/// `edges.any` (where notifiers, relays — and anything else that can
/// publish there — ask it to send).
async fn running_edge_on_bus() -> (
    Arc<Edge>,
    SocketAddr,
    Arc<MemoryBus<OutRequest, Outcome>>,
    watch::Sender<bool>,
) {
    let listeners = Listeners::bind(&["127.0.0.1:0".parse().expect("addr")])
        .await
        .expect("bind");
    let local = listeners.udp[0].0;
    let edge = Arc::new(Edge::new(
        test_config(),
        Arc::new(MemoryBus::new()),
        Clock::new(),
        Arc::new(Metrics::new()),
        listeners.udp.clone(),
    ));
    let (stop, stop_rx) = watch::channel(false);
    let out_bus = Arc::new(MemoryBus::new());
    tokio::spawn(edge.clone().run(listeners.tcp, out_bus.clone(), stop_rx));
    (edge, local, out_bus, stop)
}

/// Ask the edge on `bus` to send `out`, as a notifier or relay would (or
/// anything else that can publish on `subject`); waits until the edge
/// serves its subjects.
async fn ask_edge(bus: &MemoryBus<OutRequest, Outcome>, subject: &str, out: OutRequest) -> Outcome {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match bus.request(subject, out.clone(), PATIENCE).await {
            Err(presence_store::BusError::NoResponders(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            other => return other.expect("the edge answers"),
        }
    }
}

/// The UDP flow of a UA at `remote` that reached edge `e1` at `local`,
/// sealed as the edges of these tests seal it.
fn sealed_udp(remote: SocketAddr, local: SocketAddr) -> Flow {
    Flow {
        transport: Transport::Udp,
        remote,
        local,
        edge: "e1".into(),
        conn: 0,
        seal: Some(test_config().sealer.seal(Transport::Udp, remote)),
    }
}

/// NOTIFYs of one dialog numbered by different notifiers arrive at the
/// edge in any order: they leave one at a time, in CSeq order, and one
/// overtaken by a higher CSeq is not sent at all.
#[tokio::test]
async fn notifies_of_a_dialog_leave_one_at_a_time_in_cseq_order() {
    let (edge, local, _stop) = running_edge().await;
    let w = Watcher(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
    let flow = sealed_udp(w.0.local_addr().expect("addr"), local);
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
    let (edge, local, _stop) = running_edge().await;
    let w = Watcher(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
    let flow = sealed_udp(w.0.local_addr().expect("addr"), local);
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

/// What the bus may ask an edge to send: a NOTIFY or MESSAGE that looks
/// like one; anything else is refused.
#[test]
fn only_notify_and_message_from_the_bus() {
    let flow = sealed_udp(
        "192.0.2.1:5060".parse().unwrap(),
        "127.0.0.1:5060".parse().unwrap(),
    );
    let ok = notify(&flow, 3);
    assert_eq!(admissible(&ok, 65536), Ok(()));
    assert_eq!(admissible(&message(&flow), 65536), Ok(()));
    let with = |f: &dyn Fn(&mut OutRequest)| {
        let mut o = notify(&flow, 3);
        f(&mut o);
        admissible(&o, 65536)
    };
    for (what, r) in [
        ("INVITE", with(&|o| o.method = "INVITE".into())),
        ("REGISTER", with(&|o| o.method = "REGISTER".into())),
        ("tel: URI", with(&|o| o.uri = "tel:+15551234".into())),
        (
            "http URI",
            with(&|o| o.uri = "http://victim.example/".into()),
        ),
        (
            "URI with a space",
            with(&|o| o.uri = "sip:a@b SIP/2.0".into()),
        ),
        (
            "NOTIFY with its own Via",
            with(&|o| {
                o.headers.push(rsip::headers::make_header(
                    "Via",
                    "SIP/2.0/UDP 192.0.2.9".to_string(),
                ))
            }),
        ),
        (
            "no Event",
            with(&|o| {
                o.headers
                    .retain(|h| !h.name().eq_ignore_ascii_case("Event"))
            }),
        ),
        (
            "CSeq of another method",
            with(&|o| {
                o.headers.retain(|h| !h.name().eq_ignore_ascii_case("CSeq"));
                o.headers
                    .push(rsip::headers::make_header("CSeq", "3 INVITE".to_string()));
            }),
        ),
        (
            "too big",
            with(&|o| o.body = Bytes::from(vec![b'x'; 70_000])),
        ),
    ] {
        assert!(r.is_err(), "{what} was let through");
    }
}

/// A refused request from the bus is answered 403, counted, and nothing
/// goes out.
#[tokio::test]
async fn a_refused_bus_request_sends_nothing() {
    let (edge, local, _stop) = running_edge().await;
    let w = Watcher(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
    let flow = sealed_udp(w.0.local_addr().expect("addr"), local);
    let mut invite = notify(&flow, 1);
    invite.method = "INVITE".into();
    assert_eq!(edge.send_request(invite).await.code, 403);
    assert_eq!(w.next_new(&[], Duration::from_millis(500)).await, None);
    let refused = edge
        .metrics
        .edge_dropped
        .with_label_values(&["bus_refused"])
        .get();
    assert_eq!(refused, 1);
}

/// What the edge has counted as dropped for `reason`.
fn dropped(edge: &Edge, reason: &str) -> u64 {
    edge.metrics.edge_dropped.with_label_values(&[reason]).get()
}

/// A NOTIFY or MESSAGE from the bus goes only through a flow an edge of
/// this cluster sealed. Through one without a seal, with a made-up seal,
/// or with the seal of another address, transport or secret, it is refused
/// as an inadmissible one is (403 to the asker), counted as
/// `bus_unsealed_flow`, and nothing reaches the address it names; the same
/// requests through the flow the edge sealed for that address arrive.
#[tokio::test]
async fn a_bus_request_through_an_unsealed_flow_sends_nothing() {
    let (edge, local, bus, _stop) = running_edge_on_bus().await;
    // Where the asker wants requests to go: a socket that listens.
    let target = Watcher(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
    let to = target.0.local_addr().expect("addr");
    let genuine = sealed_udp(to, local);
    // A UA that did reach the edge, from another address: a sealed flow.
    let other_ua = sealed_udp("127.0.0.1:9".parse().unwrap(), local);
    let forged = [
        (
            "no seal",
            Flow {
                seal: None,
                ..genuine.clone()
            },
        ),
        (
            "a made-up seal",
            Flow {
                seal: Some(presence_core::Seal([0x42; 16])),
                ..genuine.clone()
            },
        ),
        (
            "another address's seal",
            Flow {
                remote: to,
                ..other_ua
            },
        ),
        (
            "another transport's seal",
            Flow {
                seal: Some(test_config().sealer.seal(Transport::Tcp, to)),
                ..genuine.clone()
            },
        ),
        (
            "another secret's seal",
            Flow {
                seal: Some(FlowSealer::new(b"not the cluster's").seal(Transport::Udp, to)),
                ..genuine.clone()
            },
        ),
    ];
    let e1 = crate::names::edge_subject("e1");
    let mut refused = 0;
    for (i, (what, flow)) in forged.iter().enumerate() {
        for mut out in [notify(flow, i as u32 + 1), message(flow)] {
            let method = out.method.clone();
            // Were it sent, its transaction would end soon, unanswered.
            out.deadline_ms = Clock::new().now_ms() + 300;
            let subject = [e1.as_str(), crate::names::ANY_EDGE][i % 2];
            let o = ask_edge(&bus, subject, out).await;
            assert_eq!(
                (
                    o.code,
                    o.reason.as_str(),
                    o.timed_out,
                    o.superseded,
                    o.body.len()
                ),
                (403, "", false, false, 0),
                "{method} through a flow with {what}: {o:?}"
            );
            refused += 1;
            assert_eq!(
                dropped(&edge, "bus_unsealed_flow"),
                refused,
                "{method}, {what}"
            );
        }
    }
    assert_eq!(
        target.next_new(&[], Duration::from_millis(700)).await,
        None,
        "nothing reaches {to}"
    );
    assert_eq!(dropped(&edge, "bus_refused"), 0, "admissible requests");
    // Through the flow the edge sealed, both go out.
    let send = |out: OutRequest| {
        let bus = bus.clone();
        tokio::spawn(async move { ask_edge(&bus, crate::names::ANY_EDGE, out).await })
    };
    for (out, cseq) in [(notify(&genuine, 10), 10), (message(&genuine), 1)] {
        let method = out.method.clone();
        let pending = send(out);
        let (c, text) = target
            .next_new(&[], PATIENCE)
            .await
            .unwrap_or_else(|| panic!("the {method} through the sealed flow arrives"));
        assert_eq!(c, cseq);
        assert!(
            text.starts_with(&format!("{method} sip:w@127.0.0.1 SIP/2.0")),
            "{text}"
        );
        target.ok(&text, local).await;
        assert_eq!(pending.await.expect("task").code, 200, "{method}");
    }
    assert_eq!(dropped(&edge, "bus_unsealed_flow"), refused);
}

/// An answered transaction's entry goes after its own keep time, also
/// when its (longer) guard entry is queued before it.
#[tokio::test(start_paused = true)]
async fn answered_transactions_are_kept_for_their_own_time() {
    let mut t = TxnTable::default();
    for (key, keep) in [("tcp", Keep::Tcp), ("udp", Keep::Udp)] {
        t.entries.insert(key.into(), None);
        t.expire_in(Keep::Guard, key.into(), Instant::now());
        t.entries.insert(key.into(), Some(Bytes::new()));
        t.expire_in(keep, key.into(), Instant::now());
    }
    tokio::time::advance(Duration::from_secs(2)).await;
    t.sweep(Instant::now());
    assert!(!t.entries.contains_key("tcp"), "TCP: kept about 1 s");
    assert!(t.entries.contains_key("udp"), "UDP: kept for Timer J");
    tokio::time::advance(TIMER_J).await;
    t.sweep(Instant::now());
    assert!(t.entries.is_empty());
}

/// The flows an edge puts into REGISTER and SUBSCRIBE commands (what the
/// shard owner stores as bindings and watchers) carry the seal of their
/// transport and remote address, over every transport: another edge of
/// the cluster (same secret) can send through them, one with another
/// secret cannot.
#[test]
fn the_flows_an_edge_builds_are_sealed() {
    let edge = mapping_edge();
    let other_edge = test_config().sealer;
    let stranger = FlowSealer::new(b"another cluster");
    let contact = "Contact: <sip:alice@192.0.2.1:5060>";
    for (i, transport) in [
        Transport::Udp,
        Transport::Tcp,
        Transport::Tls,
        Transport::Ws,
        Transport::Wss,
    ]
    .into_iter()
    .enumerate()
    {
        let src = Source {
            transport,
            remote: format!("192.0.2.{}:{}", i + 1, 40_000 + i).parse().unwrap(),
            local: "192.0.2.100:5060".parse().unwrap(),
            conn: i as u64,
        };
        let register = request(
            "REGISTER",
            "sip:example.com",
            &[contact, "Expires: 600"],
            "",
        );
        let subscribe = request(
            "SUBSCRIBE",
            "sip:bob@example.com",
            &["Event: presence", contact],
            "",
        );
        let flows = [
            match edge.register_command(&register, src, None) {
                Ok((_, Command::Register(c))) => c.flow,
                other => panic!("{other:?}"),
            },
            match edge.subscribe_command(&subscribe, src, None) {
                Ok((_, Command::Subscribe(c))) => c.flow,
                other => panic!("{other:?}"),
            },
        ];
        for flow in flows {
            assert_eq!((flow.transport, flow.remote), (transport, src.remote));
            assert!(flow.seal.is_some(), "{transport:?}: no seal");
            assert!(other_edge.verify(&flow), "{transport:?}");
            assert!(!stranger.verify(&flow), "{transport:?}");
        }
    }
}

/// An edge with no sockets, for the pure request → command mapping.
fn mapping_edge() -> Edge {
    let cfg = EdgeConfig {
        min_expires: 60,
        ..test_config()
    };
    Edge::new(
        cfg,
        Arc::new(MemoryBus::new()),
        Clock::new(),
        Arc::new(Metrics::new()),
        Vec::new(),
    )
}

fn request(method: &str, uri: &str, extra: &[&str], body: &str) -> Request {
    let mut text = format!(
        "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKt1\r\nMax-Forwards: 70\r\nFrom: <sip:alice@example.com>;tag=f1\r\nTo: <sip:alice@example.com>\r\nCall-ID: c1@t\r\nCSeq: 7 {method}\r\n"
    );
    for h in extra {
        text.push_str(h);
        text.push_str("\r\n");
    }
    text.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    match presence_sip::parse(text.as_bytes(), TransportKind::Datagram, 65536) {
        Ok(Message::Request(r)) => r,
        other => panic!("test request does not parse: {other:?}"),
    }
}

const PIDF_OK: &str = r#"<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:alice@example.com"><tuple id="t"><status><basic>open</basic></status></tuple></presence>"#;

/// What a request maps to: the command's kind, or the refusal's status.
#[derive(Debug, PartialEq, Eq)]
enum Mapped {
    Register(&'static str),
    Publish { initial: bool, expires: u32 },
    Subscribe { in_dialog: bool, expires: u32 },
    Refused(u16),
}

fn mapped(r: Result<(String, Command), crate::answers::Rejection>) -> Mapped {
    match r {
        Err(why) => Mapped::Refused(crate::answers::for_rejection(&why).code),
        Ok((_, Command::Register(c))) => Mapped::Register(match c.action {
            RegisterAction::Query => "query",
            RegisterAction::RemoveAll => "remove-all",
            RegisterAction::Update(_) => "update",
        }),
        Ok((_, Command::Publish(c))) => Mapped::Publish {
            initial: c.if_match.is_none(),
            expires: c.expires,
        },
        Ok((_, Command::Subscribe(c))) => Mapped::Subscribe {
            in_dialog: c.dialog.is_some(),
            expires: c.expires,
        },
        Ok((_, other)) => panic!("unexpected command {other:?}"),
    }
}

/// The pure mapping from a parsed request to a command or a refusal, as a
/// table: no sockets, no shard owner.
#[test]
fn requests_map_to_commands_or_refusals() {
    let edge = mapping_edge();
    let src = Source {
        transport: Transport::Udp,
        remote: "192.0.2.1:5060".parse().expect("addr"),
        local: "192.0.2.100:5060".parse().expect("addr"),
        conn: 0,
    };
    let contact = "Contact: <sip:alice@192.0.2.1:5060>";
    let pidf = "Content-Type: application/pidf+xml";
    type Row<'a> = (&'a str, &'a str, Vec<&'a str>, &'a str, Mapped);
    let rows: Vec<Row> = vec![
        // REGISTER
        (
            "REGISTER",
            "sip:example.com",
            vec![contact, "Expires: 600"],
            "",
            Mapped::Register("update"),
        ),
        (
            "REGISTER",
            "sip:example.com",
            vec![],
            "",
            Mapped::Register("query"),
        ),
        (
            "REGISTER",
            "sip:example.com",
            vec!["Contact: *", "Expires: 0"],
            "",
            Mapped::Register("remove-all"),
        ),
        (
            "REGISTER",
            "sip:example.com",
            vec!["Contact: *", "Expires: 60"],
            "",
            Mapped::Refused(400),
        ),
        (
            "REGISTER",
            "sip:example.com",
            vec![contact, "Expires: 10"],
            "",
            Mapped::Refused(423),
        ),
        (
            "REGISTER",
            "sip:example.com",
            vec![contact, "Expires: soon"],
            "",
            Mapped::Refused(400),
        ),
        // PUBLISH
        (
            "PUBLISH",
            "sip:alice@example.com",
            vec!["Event: presence", pidf],
            PIDF_OK,
            Mapped::Publish {
                initial: true,
                expires: 3600,
            },
        ),
        (
            "PUBLISH",
            "sip:alice@example.com",
            vec!["Event: presence", "Expires: 99999", pidf],
            PIDF_OK,
            Mapped::Publish {
                initial: true,
                expires: 3600,
            },
        ),
        (
            "PUBLISH",
            "sip:alice@example.com",
            vec!["Event: presence", "SIP-If-Match: e1", "Expires: 0"],
            "",
            Mapped::Publish {
                initial: false,
                expires: 0,
            },
        ),
        (
            "PUBLISH",
            "sip:alice@example.com",
            vec!["Event: presence"],
            "",
            Mapped::Refused(400),
        ),
        (
            "PUBLISH",
            "sip:alice@example.com",
            vec!["Event: presence", "Expires: 0", pidf],
            PIDF_OK,
            Mapped::Refused(400),
        ),
        (
            "PUBLISH",
            "sip:alice@example.com",
            vec!["Event: x-unknown", pidf],
            PIDF_OK,
            Mapped::Refused(489),
        ),
        (
            "PUBLISH",
            "sip:alice@example.com",
            vec!["Event: presence", "Content-Type: text/plain"],
            "hi",
            Mapped::Refused(415),
        ),
        (
            "PUBLISH",
            "sip:alice@example.com",
            vec!["Event: presence", pidf],
            "<not-pidf/>",
            Mapped::Refused(400),
        ),
        (
            "PUBLISH",
            "sip:alice@elsewhere.org",
            vec!["Event: presence", pidf],
            PIDF_OK,
            Mapped::Refused(404),
        ),
        // SUBSCRIBE
        (
            "SUBSCRIBE",
            "sip:bob@example.com",
            vec!["Event: presence", contact],
            "",
            Mapped::Subscribe {
                in_dialog: false,
                expires: 3600,
            },
        ),
        (
            "SUBSCRIBE",
            "sip:bob@example.com",
            vec!["Event: presence", contact, "Expires: 0"],
            "",
            Mapped::Subscribe {
                in_dialog: false,
                expires: 0,
            },
        ),
        (
            "SUBSCRIBE",
            "sip:bob@example.com",
            vec!["Event: dialog-x", contact],
            "",
            Mapped::Refused(489),
        ),
        (
            "SUBSCRIBE",
            "sip:bob@example.com",
            vec!["Event: presence"],
            "",
            Mapped::Refused(400),
        ),
        (
            "SUBSCRIBE",
            "sip:bob@example.com",
            vec!["Event: presence", contact, "Accept: text/html"],
            "",
            Mapped::Refused(406),
        ),
        (
            "SUBSCRIBE",
            "sip:bob@elsewhere.org",
            vec!["Event: presence", contact],
            "",
            Mapped::Refused(404),
        ),
    ];
    for (method, uri, extra, body, want) in rows {
        let req = request(method, uri, &extra, body);
        let got = match method {
            "REGISTER" => mapped(edge.register_command(&req, src, None)),
            "PUBLISH" => mapped(edge.publish_command(&req, None)),
            _ => mapped(edge.subscribe_command(&req, src, None)),
        };
        assert_eq!(got, want, "{method} {uri} {extra:?}");
    }
    // The identity must own the resource it changes.
    let req = request("REGISTER", "sip:example.com", &[contact], "");
    assert_eq!(
        mapped(edge.register_command(&req, src, Some("sip:mallory@example.com".into()))),
        Mapped::Refused(403)
    );
}

//! Overload by design: every limit of the edge exceeded on purpose over
//! real sockets, and the lame-duck drain. Functional checks only (what is
//! answered, dropped or closed); how fast is for the benchmarks.

mod common;
mod harness;

use common::*;
use presence_sip::HeaderAccess;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

fn options(branch: &str, local: SocketAddr, tp: &str) -> Vec<u8> {
    format!(
        "OPTIONS sip:example.com SIP/2.0\r\nVia: SIP/2.0/{tp} {local};branch=z9hG4bK{branch};rport\r\nMax-Forwards: 70\r\nFrom: <sip:probe@example.com>;tag=p{branch}\r\nTo: <sip:example.com>\r\nCall-ID: {branch}@probe\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

async fn metric(s: &TestServer, name: &str, label: &str) -> u64 {
    let (_, body) = http(s.http, "GET", "/metrics", b"").await;
    let text = String::from_utf8_lossy(&body).into_owned();
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Answers to `n` UDP OPTIONS sent at once from one socket, counted for a while.
async fn udp_burst(s: &TestServer, n: usize) -> usize {
    let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let local = sock.local_addr().expect("addr");
    for i in 0..n {
        sock.send_to(&options(&format!("b{i}"), local, "UDP"), s.at(0))
            .await
            .expect("send");
    }
    let mut got = 0;
    let mut buf = vec![0u8; 65536];
    while let Ok(Ok(_)) =
        tokio::time::timeout(Duration::from_millis(500), sock.recv_from(&mut buf)).await
    {
        got += 1;
    }
    got
}

/// One source over its rate: over UDP the excess is dropped and counted
/// (answering would serve a forger), over TCP it is answered 503.
#[tokio::test]
async fn a_source_over_its_rate_is_held_to_it() {
    let s = start(
        Mode::AllInOne,
        None,
        None,
        &["--rate-per-source", "5", "--burst-per-source", "10"],
    )
    .await;
    let answered = udp_burst(&s, 40).await;
    assert!((10..=12).contains(&answered), "{answered} of 40 answered");
    assert!(metric(&s, "presence_edge_dropped_total", "rate_limited").await >= 28);

    tokio::time::sleep(Duration::from_secs(3)).await; // the bucket refills
    let mut tcp = TcpStream::connect(s.at(0)).await.expect("connect");
    let local = tcp.local_addr().expect("addr");
    let mut all = Vec::new();
    for i in 0..20 {
        all.extend(options(&format!("t{i}"), local, "TCP"));
    }
    tcp.write_all(&all).await.expect("write");
    let mut text = String::new();
    let mut buf = vec![0u8; 65536];
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(500), tcp.read(&mut buf)).await
    {
        if n == 0 {
            break;
        }
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let ok = text.matches("SIP/2.0 200 ").count();
    let busy = text.matches("SIP/2.0 503 ").count();
    assert_eq!(ok + busy, 20, "every TCP request is answered:\n{text}");
    assert!(busy >= 5, "{busy} answered 503");
    assert!(text.contains("Retry-After: 5"));
    s.shutdown().await;
}

/// Connections in total and per source are bounded: one over is closed at
/// once, and the ones within still work.
#[tokio::test]
async fn connections_per_source_are_bounded() {
    let s = start(
        Mode::AllInOne,
        None,
        None,
        &["--max-connections-per-source", "3"],
    )
    .await;
    let mut kept = Vec::new();
    for _ in 0..3 {
        kept.push(TcpStream::connect(s.at(0)).await.expect("connect"));
    }
    let mut extra = TcpStream::connect(s.at(0)).await.expect("connect");
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(WAIT, extra.read(&mut buf))
        .await
        .expect("closed at once");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    assert_eq!(
        metric(&s, "presence_edge_dropped_total", "connection_limit").await,
        1
    );
    let c = &mut kept[0];
    let local = c.local_addr().expect("addr");
    c.write_all(&options("k", local, "TCP"))
        .await
        .expect("write");
    let n = tokio::time::timeout(WAIT, c.read(&mut vec![0u8; 4096]))
        .await
        .expect("answer")
        .expect("read");
    assert!(n > 0);
    s.shutdown().await;
}

/// A connection that trickles its message, or says nothing, or goes
/// silent, is closed by its timeouts.
#[tokio::test]
async fn trickling_and_idle_connections_are_closed() {
    let s = start(
        Mode::AllInOne,
        None,
        None,
        &["--header-timeout", "1", "--idle-timeout", "2"],
    )
    .await;
    // One byte every 200 ms: the message cannot arrive within 1 s.
    let mut trickle = TcpStream::connect(s.at(0)).await.expect("connect");
    let local = trickle.local_addr().expect("addr");
    let msg = options("tr", local, "TCP");
    let mut closed_after = None;
    for (i, b) in msg.iter().enumerate() {
        if trickle.write_all(&[*b]).await.is_err() {
            closed_after = Some(i);
            break;
        }
        let mut probe = [0u8; 1];
        if let Ok(Ok(0)) =
            tokio::time::timeout(Duration::from_millis(200), trickle.read(&mut probe)).await
        {
            closed_after = Some(i);
            break;
        }
    }
    let i = closed_after.expect("the trickling connection is closed");
    assert!(i < msg.len() / 2, "closed after {i} of {} bytes", msg.len());

    // Silent from the start: closed by the header timeout too.
    let mut silent = TcpStream::connect(s.at(0)).await.expect("connect");
    let n = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut [0u8; 1]))
        .await
        .expect("closed");
    assert!(matches!(n, Ok(0) | Err(_)));

    // One request, then silence: closed by the idle timeout.
    let mut idle = TcpStream::connect(s.at(0)).await.expect("connect");
    let local = idle.local_addr().expect("addr");
    idle.write_all(&options("id", local, "TCP"))
        .await
        .expect("write");
    let mut buf = vec![0u8; 4096];
    let n = idle.read(&mut buf).await.expect("answer");
    assert!(n > 0);
    let n = tokio::time::timeout(Duration::from_secs(6), idle.read(&mut buf))
        .await
        .expect("closed");
    assert!(matches!(n, Ok(0) | Err(_)));
    assert!(metric(&s, "presence_edge_dropped_total", "header_timeout").await >= 2);
    assert_eq!(
        metric(&s, "presence_edge_dropped_total", "idle_timeout").await,
        1
    );
    s.shutdown().await;
}

/// A peer that sends and never reads fills its write queue: it is cut off
/// and counted, not buffered without bound.
#[tokio::test]
async fn a_reader_that_does_not_read_is_cut_off() {
    let s = start(
        Mode::AllInOne,
        None,
        None,
        &[
            "--write-queue",
            "8",
            "--rate-per-source",
            "1000000",
            "--burst-per-source",
            "1000000",
        ],
    )
    .await;
    let mut c = TcpStream::connect(s.at(0)).await.expect("connect");
    let local = c.local_addr().expect("addr");
    let mut batch = Vec::new();
    for i in 0..1000 {
        batch.extend(options(&format!("w{i}"), local, "TCP"));
    }
    // Write without reading until the server gives up on us.
    for _ in 0..200 {
        if c.write_all(&batch).await.is_err() {
            break;
        }
        if metric(&s, "presence_edge_dropped_total", "write_queue_full").await > 0 {
            break;
        }
    }
    assert!(metric(&s, "presence_edge_dropped_total", "write_queue_full").await >= 1);
    s.shutdown().await;
}

/// A UDP address that never answered is sent a small multiple of what it
/// sent: a SUBSCRIBE "from" a silent victim gets one copy of a large
/// NOTIFY, not Timer E's retransmissions.
#[tokio::test]
async fn a_silent_udp_address_gets_a_small_multiple() {
    let s = start(Mode::AllInOne, None, None, &[]).await;
    let mut alice = s.ua(Tp::Udp, 0, "alice").await;
    let aor = alice.aor.clone();
    let note = "x".repeat(1200);
    let pidf = format!(
        r#"<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="{aor}"><tuple id="t"><status><basic>open</basic></status></tuple><note>{note}</note></presence>"#
    );
    let req = alice
        .req("PUBLISH", &aor)
        .h("Event", "presence")
        .h("Expires", "600")
        .body("application/pidf+xml", pidf);
    let r = alice.send(&req).await;
    assert_eq!(r.code, 200);

    let victim = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let local = victim.local_addr().expect("addr");
    let subscribe = format!(
        "SUBSCRIBE {aor} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKamp;rport\r\nMax-Forwards: 70\r\nFrom: <sip:mallory@example.com>;tag=m1\r\nTo: <{aor}>\r\nCall-ID: amp@x\r\nCSeq: 1 SUBSCRIBE\r\nContact: <sip:mallory@{local}>\r\nEvent: presence\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n"
    );
    victim
        .send_to(subscribe.as_bytes(), s.at(0))
        .await
        .expect("send");
    let (mut notifies, mut bytes) = (0, 0);
    let mut buf = vec![0u8; 65536];
    // Timer E would resend at 0.5, 1.5 and 3.5 s.
    while let Ok(Ok((n, _))) =
        tokio::time::timeout(Duration::from_secs(5), victim.recv_from(&mut buf)).await
    {
        bytes += n;
        if buf.starts_with(b"NOTIFY") {
            notifies += 1;
        }
    }
    assert_eq!(notifies, 1, "one copy of the NOTIFY ({bytes} bytes in all)");
    assert!(
        bytes <= 3 * subscribe.len() + 2048 + 1024 + subscribe.len() * 2,
        "{bytes}"
    );
    assert!(metric(&s, "presence_edge_dropped_total", "amplification").await >= 1);
    s.shutdown().await;
}

/// Contacts that share a flow are one device: a MESSAGE goes to it once.
#[tokio::test]
async fn one_message_copy_per_flow() {
    let s = start(Mode::AllInOne, None, None, &[]).await;
    let mut bob = s.ua(Tp::Udp, 0, "bob").await;
    let aor = bob.aor.clone();
    let contacts: Vec<String> = (0..5)
        .map(|i| format!("<sip:bob-{i}@{}>", bob.local))
        .collect();
    let req = bob
        .req("REGISTER", "sip:example.com")
        .to(&aor)
        .h("Contact", contacts.join(", "))
        .h("Expires", "600");
    let r = bob.send(&req).await;
    assert_eq!(r.code, 200, "{}", r.reason);
    let mut alice = s.ua(Tp::Udp, 0, "alice").await;
    let req = alice.req("MESSAGE", &aor).body("text/plain", "once");
    let r = alice.send(&req).await;
    assert_eq!(r.code, 200, "{}", r.reason);
    assert!(bob.recv_request("MESSAGE", WAIT).await.is_some());
    assert!(
        bob.recv_request("MESSAGE", Duration::from_millis(700))
            .await
            .is_none(),
        "a second copy"
    );
    s.shutdown().await;
}

/// SIGTERM's sequence: /readyz 503 at once, OPTIONS 503 (a SIP load
/// balancer takes the node out), other requests still served for the drain
/// time; then the node stops.
#[tokio::test]
async fn draining_answers_options_503_and_keeps_serving() {
    use clap::Parser;
    let args = presenced::config::Args::parse_from([
        "presenced",
        "--sip-listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
        "--api-listen",
        "127.0.0.1:0",
        "--drain-seconds",
        "2",
    ]);
    let cfg = presenced::config::Config::from_args(&args).expect("config");
    let server = presenced::start_all(cfg).await.expect("start");
    let (sip, http_addr) = (server.sip_addrs[0], server.http_addr);
    assert_eq!(http(http_addr, "GET", "/readyz", b"").await.0, 200);
    let stopping = tokio::spawn(server.shutdown());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(http(http_addr, "GET", "/readyz", b"").await.0, 503);

    let mut ua = Ua::new(Tp::Udp, sip, "alice").await;
    let req = ua.req("OPTIONS", "sip:example.com");
    let r = ua.send(&req).await;
    assert_eq!(r.code, 503);
    assert_eq!(r.header("Retry-After"), Some("5"));
    let aor = ua.aor.clone();
    let contact = format!("<{}>", ua.contact_uri());
    let req = ua
        .req("REGISTER", "sip:example.com")
        .to(&aor)
        .h("Contact", contact)
        .h("Expires", "60");
    let r = ua.send(&req).await;
    assert_eq!(r.code, 200, "still serving while draining");
    tokio::time::timeout(Duration::from_secs(20), stopping)
        .await
        .expect("stops after the drain")
        .expect("task");
    let r = ua
        .response_within("nothing", Duration::from_millis(10))
        .await;
    assert!(r.is_none());
}

/// A NOTIFY larger than UDP can safely carry (1300 bytes) goes over the
/// watcher's TCP connection from the same address when it has one
/// (RFC 3261 §18.1.1).
#[tokio::test]
async fn a_large_notify_takes_the_watchers_tcp_connection() {
    let s = start(Mode::AllInOne, None, None, &[]).await;
    let mut alice = s.ua(Tp::Udp, 0, "alice").await;
    let aor = alice.aor.clone();
    // The watcher: a UDP socket and a TCP connection from the same port.
    let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let local = udp.local_addr().expect("addr");
    let sock =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    sock.set_reuse_address(true).expect("reuse");
    sock.bind(&local.into()).expect("bind tcp to the udp port");
    sock.connect(&s.at(0).into()).expect("connect");
    sock.set_nonblocking(true).expect("nonblocking");
    let mut tcp = TcpStream::from_std(sock.into()).expect("tokio stream");
    let subscribe = format!(
        "SUBSCRIBE {aor} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKbig;rport\r\nMax-Forwards: 70\r\nFrom: <sip:w@example.com>;tag=w1\r\nTo: <{aor}>\r\nCall-ID: big@x\r\nCSeq: 1 SUBSCRIBE\r\nContact: <sip:w@{local}>\r\nEvent: presence\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n"
    );
    udp.send_to(subscribe.as_bytes(), s.at(0))
        .await
        .expect("send");
    let mut buf = vec![0u8; 65536];
    // The 200 and the first (small) NOTIFY come over UDP: answer the NOTIFY.
    let mut small_notify = None;
    while small_notify.is_none() {
        let (n, _) = tokio::time::timeout(WAIT, udp.recv_from(&mut buf))
            .await
            .expect("udp traffic")
            .expect("recv");
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        if text.starts_with("NOTIFY") {
            small_notify = Some(text);
        }
    }
    let answer = |notify: &str| {
        let mut a = String::from("SIP/2.0 200 OK\r\n");
        for l in notify.lines() {
            let name = l.split(':').next().unwrap_or("");
            if ["Via", "From", "To", "Call-ID", "CSeq"].contains(&name) {
                a.push_str(l);
                a.push_str("\r\n");
            }
        }
        a.push_str("Content-Length: 0\r\n\r\n");
        a
    };
    let small = small_notify.expect("a NOTIFY");
    udp.send_to(answer(&small).as_bytes(), s.at(0))
        .await
        .expect("send");
    // A 3 KB document: its NOTIFY arrives on the TCP connection.
    let pidf = format!(
        r#"<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="{aor}"><tuple id="t"><status><basic>open</basic></status></tuple><note>{}</note></presence>"#,
        "b".repeat(3000)
    );
    let req = alice
        .req("PUBLISH", &aor)
        .h("Event", "presence")
        .h("Expires", "600")
        .body("application/pidf+xml", pidf);
    assert_eq!(alice.send(&req).await.code, 200);
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("bbbbbbbbbb") {
        let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
            .await
            .expect("the large NOTIFY over TCP")
            .expect("read");
        assert!(n > 0, "connection closed");
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("NOTIFY"), "{text}");
    assert!(text.contains("SIP/2.0/TCP"), "our Via says TCP: {text}");
    s.shutdown().await;
}

/// While this edge's own NOTIFYs back up (watchers not answering), a new
/// PUBLISH, which would add a NOTIFY per watcher, gets 503 with
/// Retry-After instead of growing the backlog.
#[tokio::test]
async fn publishes_are_shed_while_notifies_back_up() {
    let s = start(Mode::AllInOne, None, None, &["--max-notify-backlog", "1"]).await;
    let mut alice = s.ua(Tp::Udp, 0, "alice").await;
    let aor = alice.aor.clone();
    // Two watchers that never answer their NOTIFYs.
    let mut silent = Vec::new();
    for i in 0..2 {
        let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let local = sock.local_addr().expect("addr");
        let subscribe = format!(
            "SUBSCRIBE {aor} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKsil{i};rport\r\nMax-Forwards: 70\r\nFrom: <sip:w{i}@example.com>;tag=w{i}\r\nTo: <{aor}>\r\nCall-ID: silent{i}@x\r\nCSeq: 1 SUBSCRIBE\r\nContact: <sip:w{i}@{local}>\r\nEvent: presence\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n"
        );
        sock.send_to(subscribe.as_bytes(), s.at(0))
            .await
            .expect("send");
        let mut buf = vec![0u8; 65536];
        // Wait for its NOTIFY (left unanswered).
        loop {
            let (n, _) = tokio::time::timeout(WAIT, sock.recv_from(&mut buf))
                .await
                .expect("traffic")
                .expect("recv");
            if buf[..n].starts_with(b"NOTIFY") {
                break;
            }
        }
        silent.push(sock);
    }
    let pidf = format!(
        r#"<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="{aor}"><tuple id="t"><status><basic>open</basic></status></tuple></presence>"#
    );
    let req = alice
        .req("PUBLISH", &aor)
        .h("Event", "presence")
        .h("Expires", "600")
        .body("application/pidf+xml", pidf.clone());
    // Two NOTIFYs in flight, over the backlog of 1 but not twice it: a light
    // source (a few requests a second, like a phone) is still served ...
    let r = alice.send(&req).await;
    assert_eq!(r.code, 200, "a light source is served: {}", r.reason);
    // ... a heavy one (a burst of requests from its address) is shed.
    for _ in 0..(presenced::guard::LIGHT_RATE as usize + 10) {
        let o = alice.req("OPTIONS", "sip:example.com");
        alice.send_raw(&o.encode(Tp::Udp, alice.local)).await;
    }
    let req = alice
        .req("PUBLISH", &aor)
        .h("Event", "presence")
        .h("Expires", "600")
        .body("application/pidf+xml", pidf);
    let r = alice.send(&req).await;
    assert_eq!(r.code, 503, "{}", r.reason);
    assert_eq!(r.header("Retry-After"), Some("5"));
    assert!(metric(&s, "presence_edge_dropped_total", "notify_backlog").await >= 1);
    // Everything else is still served.
    let req = alice.req("OPTIONS", "sip:example.com");
    assert_eq!(alice.send(&req).await.code, 200);
    s.shutdown().await;
}

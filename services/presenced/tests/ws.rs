//! SIP over WebSocket beyond the scenarios (which e2e.rs runs over WS in
//! both modes): the `sip` subprotocol required, the `Origin` allow-list,
//! pings, and a browser softphone's whole session over one secure
//! WebSocket (REGISTER, SUBSCRIBE and its NOTIFYs, MESSAGE in and out).
//! Real WebSocket handshakes (tokio-tungstenite on the client side).

mod common;
mod harness;

use common::*;
use futures_util::{SinkExt, StreamExt};
use presence_sip::{parse, HeaderAccess, Message, TransportKind};
use std::net::SocketAddr;
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as WsMessage;

async fn start_ws(extra: &[&str]) -> presenced::Server {
    let mut args = base_args("127.0.0.1:0");
    args.extend(tls_args("127.0.0.1:0"));
    args.extend(
        [
            "--sip-ws-listen",
            "127.0.0.1:0",
            "--sip-wss-listen",
            "127.0.0.1:0",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    args.extend(extra.iter().map(|s| s.to_string()));
    use clap::Parser;
    let parsed = presenced::config::Args::parse_from(&args);
    let cfg = presenced::config::Config::from_args(&parsed).expect("valid config");
    presenced::start_all(cfg).await.expect("server starts")
}

/// The HTTP status of a WebSocket upgrade to `at` offering `protocol`
/// from `origin` (101 when it succeeds).
async fn upgrade_status(at: SocketAddr, protocol: Option<&str>, origin: Option<&str>) -> u16 {
    let mut req = format!("ws://{at}/").into_client_request().unwrap();
    if let Some(p) = protocol {
        req.headers_mut()
            .insert("sec-websocket-protocol", p.parse().unwrap());
    }
    if let Some(o) = origin {
        req.headers_mut().insert("origin", o.parse().unwrap());
    }
    let tcp = tokio::net::TcpStream::connect(at).await.unwrap();
    match tokio_tungstenite::client_async(req, tcp).await {
        Ok((_, resp)) => resp.status().as_u16(),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("upgrade failed otherwise: {e}"),
    }
}

#[tokio::test]
async fn the_sip_subprotocol_is_required() {
    let server = start_ws(&[]).await;
    let at = server.sip_ws_addrs[0];
    assert_eq!(upgrade_status(at, Some("sip"), None).await, 101);
    assert_eq!(upgrade_status(at, None, None).await, 400);
    assert_eq!(upgrade_status(at, Some("chat"), None).await, 400);
    let (_, m) = http(server.http_addr, "GET", "/metrics", b"").await;
    let m = String::from_utf8_lossy(&m);
    let counted = m
        .lines()
        .find(|l| l.starts_with("presence_edge_dropped_total{reason=\"ws_handshake\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(counted >= 2.0, "refused upgrades not counted: {counted}");
    server.shutdown().await;
}

#[tokio::test]
async fn only_allowed_origins_may_connect() {
    let server = start_ws(&["--ws-allowed-origin", "https://phone.example.net/"]).await;
    let at = server.sip_ws_addrs[0];
    assert_eq!(
        upgrade_status(at, Some("sip"), Some("https://phone.example.net")).await,
        101
    );
    assert_eq!(
        upgrade_status(at, Some("sip"), Some("https://evil.example.org")).await,
        403
    );
    // Not a browser: no Origin.
    assert_eq!(upgrade_status(at, Some("sip"), None).await, 101);
    server.shutdown().await;
}

#[tokio::test]
async fn pings_are_answered() {
    let server = start_ws(&[]).await;
    let mut ws = ws_connect(server.sip_ws_addrs[0], None).await.expect("ws");
    ws.send(WsMessage::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    let pong = tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(WsMessage::Pong(p))) => return p.to_vec(),
                Some(Ok(_)) => continue,
                other => panic!("no pong: {other:?}"),
            }
        }
    })
    .await
    .expect("a pong in time");
    assert_eq!(pong, b"are you there");
    server.shutdown().await;
}

/// One side of a SIP session over a WebSocket of any stream.
struct Browser<S> {
    ws: tokio_tungstenite::WebSocketStream<S>,
    cseq: u32,
    call_id: String,
    tag: String,
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> Browser<S> {
    /// Send a request as a browser softphone does (Via host `.invalid`,
    /// transport WSS) and return its final response; requests that come
    /// meanwhile are answered 200 and kept.
    async fn request(
        &mut self,
        method: &str,
        uri: &str,
        headers: &[&str],
        body: &str,
        inbox: &mut Vec<presence_sip::Request>,
    ) -> presence_sip::Response {
        self.cseq += 1;
        let branch = format!("z9hG4bK{}", rand_token());
        // A REGISTER's To is the AoR registered, not the registrar.
        let to = if method == "REGISTER" {
            "sip:alice@example.com"
        } else {
            uri
        };
        let mut text = format!(
            "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/WSS df7jal23ls0d.invalid;branch={branch}\r\nMax-Forwards: 70\r\nFrom: <sip:alice@example.com>;tag={}\r\nTo: <{to}>\r\nCall-ID: {}\r\nCSeq: {} {method}\r\n",
            self.tag, self.call_id, self.cseq
        );
        for h in headers {
            text += h;
            text += "\r\n";
        }
        text += &format!("Content-Length: {}\r\n\r\n{body}", body.len());
        self.ws.send(WsMessage::text(text)).await.unwrap();
        loop {
            let m = self.next(inbox).await;
            if let Message::Response(r) = m {
                if r.code >= 200 && r.top_via().and_then(|v| v.branch).as_deref() == Some(&branch) {
                    return r;
                }
            }
        }
    }

    /// The next SIP message; requests are answered 200 and put in `inbox`.
    async fn next(&mut self, inbox: &mut Vec<presence_sip::Request>) -> Message {
        loop {
            let m = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a message in time")
                .expect("open")
                .expect("a message");
            let data = match m {
                WsMessage::Text(t) => t.as_bytes().to_vec(),
                WsMessage::Binary(b) => b.to_vec(),
                _ => continue,
            };
            let msg = parse(&data, TransportKind::Datagram, 1 << 20).expect("SIP");
            if let Message::Request(r) = &msg {
                let mut ok = "SIP/2.0 200 OK\r\n".to_string();
                for v in r.header_all("Via") {
                    ok += &format!("Via: {v}\r\n");
                }
                for n in ["From", "To", "Call-ID", "CSeq"] {
                    if let Some(v) = r.header(n) {
                        ok += &format!("{n}: {v}\r\n");
                    }
                }
                ok += "Content-Length: 0\r\n\r\n";
                self.ws.send(WsMessage::text(ok)).await.unwrap();
                inbox.push(r.clone());
            }
            return msg;
        }
    }

    async fn request_in(
        &mut self,
        method: &str,
        inbox: &mut Vec<presence_sip::Request>,
    ) -> presence_sip::Request {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(i) = inbox.iter().position(|r| r.method.to_string() == method) {
                return inbox.remove(i);
            }
            assert!(tokio::time::Instant::now() < deadline, "no {method}");
            let _ = tokio::time::timeout(Duration::from_millis(200), self.next(inbox)).await;
        }
    }
}

/// A browser softphone's session over one secure WebSocket: it registers,
/// subscribes to bob and gets his presence, gets a MESSAGE from bob and
/// sends him one.
#[tokio::test]
async fn a_browser_session_over_one_secure_websocket() {
    let server = start_ws(&[]).await;
    let at = server.sip_wss_addrs[0];
    let tls = tls_connect(at, &test_tls().der).await.expect("TLS");
    let mut req = format!("wss://{at}/").into_client_request().unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", "sip".parse().unwrap());
    req.headers_mut()
        .insert("origin", "https://phone.example.net".parse().unwrap());
    let (ws, _) = tokio_tungstenite::client_async(req, tls)
        .await
        .expect("WebSocket over TLS");
    let mut alice = Browser {
        ws,
        cseq: 0,
        call_id: format!("{}@browser", rand_token()),
        tag: rand_token(),
    };
    let mut inbox = Vec::new();
    let r = alice
        .request(
            "REGISTER",
            "sip:example.com",
            &[
                "Contact: <sip:alice@df7jal23ls0d.invalid;transport=ws>",
                "Expires: 600",
            ],
            "",
            &mut inbox,
        )
        .await;
    assert_eq!(r.code, 200, "REGISTER: {}", r.reason);

    let r = alice
        .request(
            "SUBSCRIBE",
            "sip:bob@example.com",
            &[
                "Event: presence",
                "Accept: application/pidf+xml",
                "Contact: <sip:alice@df7jal23ls0d.invalid;transport=ws>",
                "Expires: 600",
            ],
            "",
            &mut inbox,
        )
        .await;
    assert_eq!(r.code, 200, "SUBSCRIBE: {}", r.reason);
    assert!(
        r.header("Contact")
            .is_some_and(|c| c.contains("transport=wss")),
        "{:?}",
        r.header("Contact")
    );
    let first = alice.request_in("NOTIFY", &mut inbox).await;
    assert!(first
        .header("Via")
        .is_some_and(|v| v.starts_with("SIP/2.0/WSS ")));

    // bob, a desk phone over UDP, publishes and sends a MESSAGE.
    let mut bob = Ua::new(Tp::Udp, server.sip_addrs[0], "bob").await;
    let publish = bob
        .req("PUBLISH", "sip:bob@example.com")
        .h("Event", "presence")
        .h("Expires", "600")
        .body(
            "application/pidf+xml",
            pidf("sip:bob@example.com", "t1", true, "at my desk"),
        );
    assert_eq!(bob.send(&publish).await.code, 200);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let n = alice.request_in("NOTIFY", &mut inbox).await;
        if String::from_utf8_lossy(&n.body).contains("at my desk") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no NOTIFY with bob's note"
        );
    }
    let message = bob
        .req("MESSAGE", "sip:alice@example.com")
        .body("text/plain", "lunch?");
    // The relay waits for the browser's answer: both at once.
    let (answer, m) = tokio::join!(bob.send(&message), alice.request_in("MESSAGE", &mut inbox));
    assert_eq!(answer.code, 200);
    assert_eq!(String::from_utf8_lossy(&m.body), "lunch?");

    // And back: a MESSAGE from the browser to bob's desk phone.
    let contact = format!("<{}>", bob.contact_uri());
    let reg = bob
        .req("REGISTER", "sip:example.com")
        .to("sip:bob@example.com")
        .h("Contact", contact)
        .h("Expires", "600");
    assert_eq!(bob.send(&reg).await.code, 200);
    let r = alice
        .request(
            "MESSAGE",
            "sip:bob@example.com",
            &["Content-Type: text/plain"],
            "yes, at noon",
            &mut inbox,
        )
        .await;
    assert_eq!(r.code, 200, "MESSAGE: {}", r.reason);
    let got = bob
        .recv_request("MESSAGE", WAIT)
        .await
        .expect("bob gets it");
    assert_eq!(String::from_utf8_lossy(&got.body), "yes, at noon");
    server.shutdown().await;
}

//! SIP over WebSocket (RFC 7118) for browser softphones (SIP.js, JsSIP):
//! the HTTP upgrade with the `sip` subprotocol required and the `Origin`
//! allow-list, then one SIP message per WebSocket message (text or
//! binary; Content-Length may be absent), pings answered, a close ending
//! the flow. The connection is a flow like a TCP one: same limits (per
//! source, idle timeout, bounded write queue), NOTIFYs and MESSAGEs go back
//! over it.

use super::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::handshake::server::{
    ErrorResponse, Request as WsRequest, Response as WsResponse,
};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;

/// The WebSocket subprotocol of SIP (RFC 7118 §4.1).
pub const SUBPROTOCOL: &str = "sip";

fn refuse(status: StatusCode, why: &str) -> ErrorResponse {
    let mut r = ErrorResponse::new(Some(why.to_string()));
    *r.status_mut() = status;
    r
}

/// Does the upgrade request offer the `sip` subprotocol, and may its
/// `Origin` connect? `Ok` with the response to send, else the refusal
/// (400: no `sip`; 403: an Origin not allowed). Clients that send no
/// Origin (not browsers) are let in; an empty allow-list lets every
/// Origin in.
// The error type is tungstenite's callback contract.
#[allow(clippy::result_large_err)]
pub(super) fn check_upgrade(
    req: &WsRequest,
    mut resp: WsResponse,
    origins: &[String],
) -> Result<WsResponse, ErrorResponse> {
    let offers_sip = req
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case(SUBPROTOCOL));
    if !offers_sip {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "the WebSocket subprotocol \"sip\" is required (RFC 7118)",
        ));
    }
    if let Some(origin) = req.headers().get("origin").and_then(|v| v.to_str().ok()) {
        if !origins.is_empty()
            && !origins
                .iter()
                .any(|o| o.eq_ignore_ascii_case(origin.trim()))
        {
            return Err(refuse(StatusCode::FORBIDDEN, "this Origin may not connect"));
        }
    }
    resp.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static(SUBPROTOCOL),
    );
    Ok(resp)
}

/// The server side of the WebSocket handshake over `stream`.
#[allow(clippy::result_large_err)] // the handshake callback's contract
pub(super) async fn accept<S>(
    stream: S,
    origins: &[String],
    max_message: usize,
) -> Result<WebSocketStream<S>, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    // Read a SIP message a little over the limit whole, so that it gets
    // its 413 from the SIP layer (the connection stays usable: WebSocket
    // framing is not lost); far larger ones end the connection.
    let limit = max_message.saturating_mul(4);
    let config = WebSocketConfig::default()
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit));
    tokio_tungstenite::accept_hdr_async_with_config(
        stream,
        |req: &WsRequest, resp: WsResponse| check_upgrade(req, resp, origins),
        Some(config),
    )
    .await
    .map_err(|e| e.to_string())
}

impl Edge {
    /// The reader and writer of one WebSocket flow.
    pub(super) fn spawn_ws_conn<S>(
        self: Arc<Self>,
        ws: WebSocketStream<S>,
        transport: Transport,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> u64
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (id, mut rx, close) = self.register_conn(remote);
        let (mut sink, mut stream) = ws.split();
        tokio::spawn(async move {
            while let Some(b) = rx.recv().await {
                // SIP is text; a body that is not UTF-8 goes as binary.
                let msg = match String::from_utf8(b.to_vec()) {
                    Ok(text) => WsMessage::text(text),
                    Err(e) => WsMessage::binary(e.into_bytes()),
                };
                if sink.send(msg).await.is_err() {
                    break;
                }
            }
            let _ = sink.close().await;
        });
        let me = self.clone();
        tokio::spawn(async move {
            let src = Source {
                transport,
                remote,
                local,
                conn: id,
            };
            let idle = me.cfg.limits.idle_timeout;
            loop {
                let next = tokio::select! {
                    n = tokio::time::timeout(idle, stream.next()) => n,
                    _ = close.notified() => break,
                };
                let msg = match next {
                    Err(_) => {
                        me.drop_counted("idle_timeout");
                        break;
                    }
                    Ok(None) | Ok(Some(Err(_))) => break,
                    Ok(Some(Ok(m))) => m,
                };
                let data: Vec<u8> = match msg {
                    WsMessage::Text(t) => t.as_bytes().to_vec(),
                    WsMessage::Binary(b) => b.to_vec(),
                    // Pongs go out with the next read (tungstenite queues
                    // them); a close ends the flow.
                    WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_) => continue,
                    WsMessage::Close(_) => break,
                };
                if data.iter().all(|b| b.is_ascii_whitespace()) {
                    continue; // a keep-alive of some clients
                }
                me.on_frame(data, src, TransportKind::Datagram);
            }
            me.unregister_conn(id, remote);
        });
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upgrade(protocols: Option<&str>, origin: Option<&str>) -> WsRequest {
        let mut b = tokio_tungstenite::tungstenite::http::Request::builder()
            .uri("/")
            .header("host", "sip.example.net");
        if let Some(p) = protocols {
            b = b.header("sec-websocket-protocol", p);
        }
        if let Some(o) = origin {
            b = b.header("origin", o);
        }
        b.body(()).unwrap()
    }

    fn status(r: Result<WsResponse, ErrorResponse>) -> u16 {
        match r {
            Ok(resp) => {
                assert_eq!(resp.headers().get("sec-websocket-protocol").unwrap(), "sip");
                101
            }
            Err(e) => e.status().as_u16(),
        }
    }

    #[test]
    fn the_sip_subprotocol_and_the_origin_decide() {
        let allowed = vec!["https://phone.example.net".to_string()];
        let ok = || WsResponse::new(());
        for (protocols, origin, list, want) in [
            (Some("sip"), None, &allowed, 101),
            (Some("chat, SIP"), None, &allowed, 101),
            (None, None, &allowed, 400),
            (Some("chat"), None, &allowed, 400),
            (
                Some("sip"),
                Some("https://phone.example.net"),
                &allowed,
                101,
            ),
            (Some("sip"), Some("https://evil.example.org"), &allowed, 403),
            (
                Some("sip"),
                Some("https://evil.example.org"),
                &Vec::new(),
                101,
            ),
            (None, Some("https://phone.example.net"), &allowed, 400),
        ] {
            assert_eq!(
                status(check_upgrade(&upgrade(protocols, origin), ok(), list)),
                want,
                "{protocols:?} from {origin:?}"
            );
        }
    }
}

//! Operations HTTP: `/metrics`, `/healthz`, `/readyz` (503 once shutdown
//! starts), and a small admin API for hard state (RFC 3903 §1):
//! `PUT /admin/hard-state?aor=sip:alice@example.com[&event=presence]` with a
//! PIDF body sets it, `DELETE` clears it, `GET /admin/state?aor=…` shows the
//! composed document. A minimal HTTP/1.1 server: one request per connection.

use crate::compositor::shard_subject;
use crate::metrics::Metrics;
use bytes::Bytes;
use presence_core::commands::{Command, Reply};
use presence_core::{shard_of, Aor};
use presence_store::{Requests, Store};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Ops {
    pub metrics: Arc<Metrics>,
    pub ready: watch::Receiver<bool>,
    pub shards_bus: Arc<dyn Requests<Command, Reply>>,
    pub store: Arc<dyn Store>,
    pub shards: u32,
}

pub async fn serve(ops: Arc<Ops>, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    let ops = ops.clone();
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(Duration::from_secs(10), handle(ops, stream)).await;
                    });
                }
            }
            _ = shutdown.changed() => break,
        }
    }
}

struct HttpRequest {
    method: String,
    path: String,
    query: Vec<(String, String)>,
    body: Vec<u8>,
}

async fn read_request(stream: &mut TcpStream) -> Option<HttpRequest> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.lines();
    let mut first = lines.next()?.split_whitespace();
    let method = first.next()?.to_string();
    let target = first.next()?.to_string();
    let length: usize = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    if length > 1 << 20 {
        return None;
    }
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    let (path, q) = target.split_once('?').unwrap_or((&target, ""));
    let query = q
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), percent_decode(v)))
        .collect();
    Some(HttpRequest {
        method,
        path: path.to_string(),
        query,
        body,
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        // Bytes, not a &str slice: the two digits may be anything, even
        // half of a multi-byte character.
        let digit = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(hi), Some(lo)) = (digit(b[i + 1]), digit(b[i + 2])) {
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).to_string()
}

async fn handle(ops: Arc<Ops>, mut stream: TcpStream) {
    let Some(req) = read_request(&mut stream).await else {
        return;
    };
    let (status, ctype, body): (&str, &str, Vec<u8>) =
        match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/metrics") => ("200 OK", "text/plain; version=0.0.4", ops.metrics.render()),
            ("GET", "/healthz") => ("200 OK", "text/plain", b"ok\n".to_vec()),
            ("GET", "/readyz") => {
                if *ops.ready.borrow() {
                    ("200 OK", "text/plain", b"ready\n".to_vec())
                } else {
                    (
                        "503 Service Unavailable",
                        "text/plain",
                        b"not ready\n".to_vec(),
                    )
                }
            }
            (m, "/admin/hard-state") if m == "PUT" || m == "DELETE" => hard_state(&ops, &req).await,
            ("GET", "/admin/state") => state(&ops, &req).await,
            _ => ("404 Not Found", "text/plain", b"not found\n".to_vec()),
        };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(&body).await;
    let _ = stream.shutdown().await;
}

fn param<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.query
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

async fn hard_state(ops: &Ops, req: &HttpRequest) -> (&'static str, &'static str, Vec<u8>) {
    let Some(aor) = param(req, "aor").and_then(Aor::parse) else {
        return (
            "400 Bad Request",
            "text/plain",
            b"aor=sip:user@domain required\n".to_vec(),
        );
    };
    let event = param(req, "event").unwrap_or("presence").to_string();
    let body = if req.method == "PUT" {
        if let Err(e) = presence_core::pidf::parse(&req.body) {
            return (
                "400 Bad Request",
                "text/plain",
                format!("invalid PIDF: {e}\n").into_bytes(),
            );
        }
        Some(Bytes::from(req.body.clone()))
    } else {
        None
    };
    let cmd = Command::SetHardState {
        aor: aor.to_string(),
        event,
        body,
    };
    let subject = shard_subject(shard_of(aor.as_str(), ops.shards));
    match ops
        .shards_bus
        .request(&subject, cmd, Duration::from_secs(5))
        .await
    {
        Ok(Reply::Done) => ("204 No Content", "text/plain", Vec::new()),
        _ => (
            "503 Service Unavailable",
            "text/plain",
            b"shard unavailable\n".to_vec(),
        ),
    }
}

async fn state(ops: &Ops, req: &HttpRequest) -> (&'static str, &'static str, Vec<u8>) {
    let Some(aor) = param(req, "aor").and_then(Aor::parse) else {
        return (
            "400 Bad Request",
            "text/plain",
            b"aor=sip:user@domain required\n".to_vec(),
        );
    };
    let event = param(req, "event").unwrap_or("presence");
    match ops.store.document(aor.as_str(), event).await {
        Ok(Some(d)) => ("200 OK", "application/pidf+xml", d.body.to_vec()),
        Ok(None) => ("404 Not Found", "text/plain", b"no state\n".to_vec()),
        Err(_) => (
            "503 Service Unavailable",
            "text/plain",
            b"store unavailable\n".to_vec(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn percent_decoding_never_panics_and_decodes_what_it_can() {
        assert_eq!(
            percent_decode("sip%3Aalice%40example.com"),
            "sip:alice@example.com"
        );
        assert_eq!(percent_decode("a+b%2"), "a b%2");
        // Digits cut through a multi-byte character, or not hex at all.
        assert_eq!(percent_decode("%1é"), "%1é");
        assert_eq!(percent_decode("%é1x"), "%é1x");
        assert_eq!(percent_decode("%+1x"), "% 1x");
    }
}

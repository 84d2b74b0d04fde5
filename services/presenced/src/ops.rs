//! Operations HTTP: `/metrics`, `/healthz`, `/readyz` (503 once shutdown
//! starts), and a small admin API for hard state (RFC 3903 §1):
//! `PUT /admin/hard-state?aor=sip:alice@example.com[&event=presence]` with a
//! document of the package (checked, and sent to the shard owner, by the
//! same code as the api role's `SetHardState`) sets it, `DELETE` clears it, `GET /admin/state?aor=…` shows the
//! composed document. A minimal HTTP/1.1 server: one request per connection.

use crate::api::{check_document, ApiError, Owners};
use crate::metrics::Metrics;
use presence_core::digest::constant_time_eq;
use presence_core::packages::Registry;
use presence_core::Aor;
use presence_store::Store;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Ops {
    pub metrics: Arc<Metrics>,
    pub ready: watch::Receiver<bool>,
    /// Where `/admin/hard-state` sends its change: the same path as the
    /// api role's `SetHardState`.
    pub owners: Owners,
    pub store: Arc<dyn Store>,
    /// Guards `/admin/*` (see [`Ops::admit`]).
    pub admin: AdminAccess,
}

/// Who may use `/admin/*`. `/metrics`, `/healthz` and `/readyz` are open to
/// whoever reaches the listener (Prometheus and the kubelet do).
#[derive(Clone)]
pub struct AdminAccess {
    /// `--admin-token-file`: every admin request needs `Authorization:
    /// Bearer <token>`. Required when the listener is not loopback.
    pub token: Option<String>,
    /// The served domains: an AoR elsewhere is not ours to change or show.
    pub domains: Vec<String>,
    /// The event packages served.
    pub packages: Registry,
}

/// Why an admin request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminRefusal {
    /// No or wrong bearer token (the answer does not say which).
    Unauthorized,
    /// Without a token the listener is loopback-only, and a browser tricked
    /// into calling it (DNS rebinding) names another host: refused.
    ForeignHost,
}

impl AdminAccess {
    /// May this request use `/admin/*`?
    pub fn admit(&self, headers: &[(String, String)]) -> Result<(), AdminRefusal> {
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim())
        };
        match &self.token {
            Some(token) => {
                let given = header("Authorization")
                    .and_then(|v| v.split_once(' '))
                    .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("Bearer"))
                    .map(|(_, t)| t.trim())
                    .unwrap_or("");
                if constant_time_eq(given.as_bytes(), token.as_bytes()) {
                    Ok(())
                } else {
                    Err(AdminRefusal::Unauthorized)
                }
            }
            None => {
                let host = header("Host").unwrap_or("");
                if is_loopback_host(host) {
                    Ok(())
                } else {
                    Err(AdminRefusal::ForeignHost)
                }
            }
        }
    }

    fn serves(&self, aor: &Aor) -> bool {
        self.domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(aor.domain()))
    }
}

/// `localhost`, `127.x.y.z` or `[::1]`, with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(h, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                host
            }
        })
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
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
    headers: Vec<(String, String)>,
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
    let headers: Vec<(String, String)> = lines
        .take(64)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
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
        headers,
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
    let admission = ops.admin.admit(&req.headers);
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
            (_, p) if p.starts_with("/admin/") && admission.is_err() => match admission {
                Err(AdminRefusal::ForeignHost) => (
                    "403 Forbidden",
                    "text/plain",
                    b"the admin API answers loopback hosts only (or set --admin-token-file)\n"
                        .to_vec(),
                ),
                _ => (
                    "401 Unauthorized",
                    "text/plain",
                    b"a bearer token is required\n".to_vec(),
                ),
            },
            (m, "/admin/hard-state") if m == "PUT" || m == "DELETE" => hard_state(&ops, &req).await,
            ("GET", "/admin/state") => state(&ops, &req).await,
            _ => ("404 Not Found", "text/plain", b"not found\n".to_vec()),
        };
    let challenge = if status.starts_with("401") {
        "WWW-Authenticate: Bearer realm=\"presence-admin\"\r\n"
    } else {
        ""
    };
    let head = format!(
        "HTTP/1.1 {status}\r\n{challenge}Content-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
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
    if let Some(refusal) = check_target(ops, &aor, param(req, "event")) {
        return refusal;
    }
    let event = param(req, "event").unwrap_or("presence").to_string();
    let body = if req.method == "PUT" {
        let ct = header(req, "content-type").unwrap_or("");
        // The media type without parameters (`;charset=...`).
        let ct = ct.split(';').next().unwrap_or("").trim();
        match check_document(&ops.admin.packages, &event, ct, &req.body) {
            Ok((_, body)) => Some(body),
            Err(e) => return refusal(&e),
        }
    } else {
        None
    };
    match ops.owners.hard_state(&aor, event, body).await {
        Ok(()) => ("204 No Content", "text/plain", Vec::new()),
        Err(e) => refusal(&e),
    }
}

/// An [`ApiError`] as this server's answer: the status the api role's web
/// gateway gives it too (see `ApiError::http`), and its message.
fn refusal(e: &ApiError) -> HttpAnswer {
    let (code, message) = e.http();
    let status = match code {
        400 => "400 Bad Request",
        401 => "401 Unauthorized",
        403 => "403 Forbidden",
        404 => "404 Not Found",
        429 => "429 Too Many Requests",
        503 => "503 Service Unavailable",
        _ => "500 Internal Server Error",
    };
    (status, "text/plain", format!("{message}\n").into_bytes())
}

fn header<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

type HttpAnswer = (&'static str, &'static str, Vec<u8>);

/// An AoR of a served domain, and an event package we serve.
fn check_target(ops: &Ops, aor: &Aor, event: Option<&str>) -> Option<HttpAnswer> {
    if !ops.admin.serves(aor) {
        return Some((
            "404 Not Found",
            "text/plain",
            b"domain not served here\n".to_vec(),
        ));
    }
    if let Some(e) = event {
        if ops.admin.packages.get(e).is_none() {
            return Some((
                "400 Bad Request",
                "text/plain",
                format!(
                    "unknown event package (served: {})\n",
                    ops.admin.packages.allow_events()
                )
                .into_bytes(),
            ));
        }
    }
    None
}

async fn state(ops: &Ops, req: &HttpRequest) -> (&'static str, &'static str, Vec<u8>) {
    let Some(aor) = param(req, "aor").and_then(Aor::parse) else {
        return (
            "400 Bad Request",
            "text/plain",
            b"aor=sip:user@domain required\n".to_vec(),
        );
    };
    if let Some(refusal) = check_target(ops, &aor, param(req, "event")) {
        return refusal;
    }
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
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn admin_access_table() {
        let open = AdminAccess {
            token: None,
            domains: vec!["example.com".into()],
            packages: Registry::default(),
        };
        let tokened = AdminAccess {
            token: Some("s3cret-token-0123456789".into()),
            ..open.clone()
        };
        type Row<'a> = (
            &'a AdminAccess,
            &'a [(&'a str, &'a str)],
            Result<(), AdminRefusal>,
        );
        let rows: &[Row] = &[
            (&open, &[("Host", "127.0.0.1:9090")], Ok(())),
            (&open, &[("Host", "localhost")], Ok(())),
            (&open, &[("Host", "[::1]:9090")], Ok(())),
            (
                &open,
                &[("host", "evil.example.net")],
                Err(AdminRefusal::ForeignHost),
            ),
            (
                &open,
                &[("Host", "127.0.0.1.evil.net")],
                Err(AdminRefusal::ForeignHost),
            ),
            (&open, &[], Err(AdminRefusal::ForeignHost)),
            (
                &tokened,
                &[("Host", "127.0.0.1")],
                Err(AdminRefusal::Unauthorized),
            ),
            (
                &tokened,
                &[("Authorization", "Bearer wrong")],
                Err(AdminRefusal::Unauthorized),
            ),
            (
                &tokened,
                &[("Authorization", "Basic s3cret-token-0123456789")],
                Err(AdminRefusal::Unauthorized),
            ),
            (
                &tokened,
                &[
                    ("authorization", "bearer s3cret-token-0123456789"),
                    ("Host", "presence-admin.svc"),
                ],
                Ok(()),
            ),
        ];
        for (access, headers, want) in rows {
            assert_eq!(&access.admit(&h(headers)), want, "{headers:?}");
        }
    }

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

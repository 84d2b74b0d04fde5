//! The admin API is not open to whoever reaches it: a bearer token
//! (`--admin-token-file`) is required off loopback, a loopback listener
//! without one answers loopback Host names only (DNS rebinding), and only
//! AoRs of served domains and served event packages can be touched.

mod common;
mod harness;

use clap::Parser;
use common::*;
use presenced::config::{Args, Config};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "an-admin-token-of-some-length";
const PIDF: &str = r#"<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:alice@example.com"><tuple id="t"><status><basic>open</basic></status></tuple></presence>"#;

/// One HTTP request with the given extra headers; the status code.
async fn call(addr: SocketAddr, method: &str, path: &str, headers: &[&str], body: &str) -> u16 {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    s.write_all(head.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .expect("in time")
        .expect("read");
    String::from_utf8_lossy(&out)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status")
}

fn config(extra: &[&str]) -> Result<Config, Vec<String>> {
    let mut args = vec!["presenced", "--sip-listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    Config::from_args(&Args::parse_from(args))
}

#[test]
fn a_non_loopback_admin_listener_needs_a_token() {
    let errors = config(&["--http-listen", "0.0.0.0:0"])
        .err()
        .expect("refused");
    assert!(
        errors
            .iter()
            .any(|e| e.contains("--admin-token-file is required")),
        "{errors:?}"
    );
    let short = TempFile::new("short\n");
    let path = short.0.display().to_string();
    let errors = config(&["--http-listen", "0.0.0.0:0", "--admin-token-file", &path])
        .err()
        .expect("refused");
    assert!(
        errors.iter().any(|e| e.contains("16 characters")),
        "{errors:?}"
    );
    let good = TempFile::new(&format!("{TOKEN}\n"));
    let path = good.0.display().to_string();
    let cfg = config(&["--http-listen", "0.0.0.0:0", "--admin-token-file", &path]).expect("ok");
    assert_eq!(cfg.admin_token.as_deref(), Some(TOKEN));
    assert!(config(&["--http-listen", "127.0.0.1:0"]).is_ok());
}

#[tokio::test]
async fn the_admin_api_wants_its_token_and_our_domains() {
    let file = TempFile::new(TOKEN);
    let path = file.0.display().to_string();
    let s = start(Mode::AllInOne, None, None, &["--admin-token-file", &path]).await;
    let auth = format!("Authorization: Bearer {TOKEN}");
    let put = |aor: &'static str| format!("/admin/hard-state?aor={aor}");
    let alice = put("sip:alice@example.com");
    assert_eq!(call(s.http, "PUT", &alice, &[], PIDF).await, 401);
    assert_eq!(
        call(
            s.http,
            "PUT",
            &alice,
            &["Authorization: Bearer guess"],
            PIDF
        )
        .await,
        401
    );
    assert_eq!(
        call(
            s.http,
            "GET",
            "/admin/state?aor=sip:alice@example.com",
            &[],
            ""
        )
        .await,
        401
    );
    assert_eq!(call(s.http, "PUT", &alice, &[&auth], PIDF).await, 204);
    assert_eq!(
        call(
            s.http,
            "GET",
            "/admin/state?aor=sip:alice@example.com",
            &[&auth],
            ""
        )
        .await,
        200
    );
    // Not our domain, not our event package.
    assert_eq!(
        call(
            s.http,
            "PUT",
            &put("sip:eve@elsewhere.example.org"),
            &[&auth],
            PIDF
        )
        .await,
        404
    );
    assert_eq!(
        call(
            s.http,
            "PUT",
            "/admin/hard-state?aor=sip:alice@example.com&event=x-made-up",
            &[&auth],
            PIDF
        )
        .await,
        400
    );
    // The document is checked as the api role's SetHardState checks it
    // (one code path): a malformed PIDF, a type the package does not take.
    assert_eq!(
        call(
            s.http,
            "PUT",
            &put("sip:alice@example.com"),
            &[&auth],
            "<presence"
        )
        .await,
        400
    );
    assert_eq!(
        call(
            s.http,
            "PUT",
            &put("sip:alice@example.com"),
            &[auth.as_str(), "Content-Type: text/plain"],
            PIDF
        )
        .await,
        400
    );
    // Hard state of another package, with its own document type.
    assert_eq!(
        call(
            s.http,
            "PUT",
            "/admin/hard-state?aor=sip:alice@example.com&event=dialog",
            &[auth.as_str(), "Content-Type: application/dialog-info+xml"],
            r#"<?xml version="1.0"?><dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" version="0" state="full" entity="sip:alice@example.com"/>"#
        )
        .await,
        204
    );
    // Probes and metrics stay open.
    assert_eq!(call(s.http, "GET", "/readyz", &[], "").await, 200);
    assert_eq!(call(s.http, "GET", "/metrics", &[], "").await, 200);
    s.shutdown().await;
}

#[tokio::test]
async fn without_a_token_only_loopback_hosts_are_answered() {
    let s = start(Mode::AllInOne, None, None, &[]).await;
    let path = "/admin/state?aor=sip:alice@example.com";
    assert_eq!(
        call(s.http, "GET", path, &["Host: rebind.evil.example"], "").await,
        403
    );
    assert_eq!(call(s.http, "GET", path, &[], "").await, 403);
    // 404: no state yet, but admitted.
    assert_eq!(
        call(s.http, "GET", path, &[&format!("Host: {}", s.http)], "").await,
        404
    );
    assert_eq!(
        call(s.http, "GET", path, &["Host: localhost:9090"], "").await,
        404
    );
    s.shutdown().await;
}

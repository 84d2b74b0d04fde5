//! SIP over TLS beyond the scenarios (which e2e.rs runs over TLS in both
//! modes): certificate reload on a file change and on SIGHUP without
//! dropping live connections, a reload that fails keeping the old
//! certificate, client certificates required by `--tls-client-ca`, a
//! plaintext client on the TLS port, and the start-up checks. Real TLS
//! handshakes (rustls on both sides) over real sockets.

mod common;
mod harness;

use common::*;
use harness::make_cert;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An OPTIONS over `stream`; the status code of its answer.
async fn options<S>(stream: &mut S) -> u16
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let branch = rand_token();
    let req = format!(
        "OPTIONS sip:example.com SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bK{branch}\r\nMax-Forwards: 70\r\nFrom: <sip:probe@example.com>;tag={branch}\r\nTo: <sip:example.com>\r\nCall-ID: {branch}@tls\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    );
    stream.write_all(req.as_bytes()).await.expect("write");
    stream.flush().await.expect("flush");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed before an answer");
            got.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("an answer in time");
    let text = String::from_utf8_lossy(&got);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not a response: {text}"))
}

fn write_cert(dir: &Path, names: &[&str]) -> Vec<u8> {
    let (pem, key, der) = make_cert(names);
    // Key first, then the certificate: a reader in between sees a pair
    // that does not match, which must not be taken.
    std::fs::write(dir.join("key.pem.new"), key).unwrap();
    std::fs::write(dir.join("cert.pem.new"), pem).unwrap();
    std::fs::rename(dir.join("key.pem.new"), dir.join("key.pem")).unwrap();
    std::fs::rename(dir.join("cert.pem.new"), dir.join("cert.pem")).unwrap();
    der
}

fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("presence-tls-test-{}", rand_token()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

async fn start_tls(dir: &Path, extra: &[&str]) -> presenced::Server {
    let mut args = base_args("127.0.0.1:0");
    args.extend(
        [
            "--sip-tls-listen",
            "127.0.0.1:0",
            "--tls-cert",
            &dir.join("cert.pem").display().to_string(),
            "--tls-key",
            &dir.join("key.pem").display().to_string(),
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

/// Wait until a new connection trusting `der` gets through (the server
/// took the new certificate), at most `limit`.
async fn until_trusted(at: SocketAddr, der: &[u8], limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if let Ok(Ok(mut s)) =
            tokio::time::timeout(Duration::from_secs(2), tls_connect(at, der)).await
        {
            if options(&mut s).await == 200 {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

async fn metric(http: SocketAddr, line_start: &str) -> f64 {
    let (_, body) = common::http(http, "GET", "/metrics", b"").await;
    String::from_utf8_lossy(&body)
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// A new certificate written over the files is served to new connections
/// within a few seconds; a connection made with the old one goes on
/// working. A broken file is not taken: the certificate before it stays.
#[tokio::test]
async fn a_changed_certificate_is_served_without_dropping_connections() {
    let dir = tempdir();
    let old = write_cert(&dir, &["127.0.0.1"]);
    let server = start_tls(&dir, &[]).await;
    let at = server.sip_tls_addrs[0];
    let mut live = tls_connect(at, &old)
        .await
        .expect("handshake with the first certificate");
    assert_eq!(options(&mut live).await, 200);

    // The files change (a cert-manager renewal): no signal.
    tokio::time::sleep(Duration::from_millis(1100)).await; // a new mtime
    let new = write_cert(&dir, &["127.0.0.1"]);
    assert!(
        until_trusted(at, &new, Duration::from_secs(15)).await,
        "the new certificate was not served"
    );
    assert!(
        tls_connect(at, &old).await.is_err(),
        "a new connection still got the old certificate"
    );
    assert_eq!(options(&mut live).await, 200, "the live connection goes on");
    assert!(
        metric(
            server.http_addr,
            "presence_edge_tls_reloads_total{outcome=\"ok\"}"
        )
        .await
            >= 1.0
    );

    // A broken certificate file: refused, the one before stays.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    std::fs::write(dir.join("cert.pem"), "not a certificate").unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while metric(
        server.http_addr,
        "presence_edge_tls_reloads_total{outcome=\"failed\"}",
    )
    .await
        < 1.0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the broken file was not noticed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        until_trusted(at, &new, Duration::from_secs(2)).await,
        "the certificate before the broken file is no longer served"
    );
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIGHUP reloads at once (the `presenced` binary, a process of its own).
#[tokio::test]
async fn sighup_reloads_the_certificate() {
    let dir = tempdir();
    let old = write_cert(&dir, &["127.0.0.1"]);
    let (sip, tls, http) = (
        presence_testkit::free_port(),
        presence_testkit::free_port(),
        presence_testkit::free_port(),
    );
    let log = dir.join("presenced.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_presenced"))
        .args(["--sip-listen", &format!("127.0.0.1:{sip}")])
        .args(["--sip-tls-listen", &format!("127.0.0.1:{tls}")])
        .args(["--http-listen", &format!("127.0.0.1:{http}")])
        .args(["--domain", "example.com", "--log", "info"])
        .arg("--tls-cert")
        .arg(dir.join("cert.pem"))
        .arg("--tls-key")
        .arg(dir.join("key.pem"))
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("start presenced");
    let at: SocketAddr = format!("127.0.0.1:{tls}").parse().unwrap();
    assert!(
        until_trusted(at, &old, Duration::from_secs(20)).await,
        "presenced did not serve TLS"
    );
    let mut live = tls_connect(at, &old).await.expect("handshake");
    // The files change and the process is told at once; the poll would
    // take up to 2 s, so rewrite within the same second to show the signal
    // does it.
    let new = write_cert(&dir, &["127.0.0.1"]);
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(hup.success());
    assert!(
        until_trusted(at, &new, Duration::from_secs(10)).await,
        "SIGHUP did not reload"
    );
    assert_eq!(options(&mut live).await, 200, "the live connection goes on");
    assert!(
        child.try_wait().expect("status").is_none(),
        "SIGHUP stopped the process"
    );
    // The file poll may have seen the change too; the signal's own reload
    // is in the log.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text
            .lines()
            .any(|l| l.contains("TLS certificate reloaded") && l.contains("SIGHUP"))
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no reload on SIGHUP in the log:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

/// With `--tls-client-ca`, a client without a certificate from that CA is
/// refused in the handshake; one with such a certificate is served.
#[tokio::test]
async fn client_certificates_are_required_with_a_client_ca() {
    let dir = tempdir();
    let server_der = write_cert(&dir, &["127.0.0.1"]);
    // A CA and a client certificate it signed (an SBC's).
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    let client_key = rcgen::KeyPair::generate().unwrap();
    let client = rcgen::CertificateParams::new(vec!["sbc.example.net".to_string()])
        .unwrap()
        .signed_by(&client_key, &ca, &ca_key)
        .unwrap();
    let ca_file = dir.join("ca.pem").display().to_string();
    let server = start_tls(&dir, &["--tls-client-ca", &ca_file]).await;
    let at = server.sip_tls_addrs[0];

    // No client certificate: the server refuses (rustls reports it on the
    // first read or at the handshake, depending on the TLS version).
    let refused = match tls_connect(at, &server_der).await {
        Err(_) => true,
        Ok(mut s) => {
            let _ = s.write_all(b"OPTIONS").await;
            let _ = s.flush().await;
            let mut buf = [0u8; 64];
            matches!(
                tokio::time::timeout(WAIT, s.read(&mut buf)).await,
                Ok(Ok(0)) | Ok(Err(_))
            )
        }
    };
    assert!(refused, "a client without a certificate was served");

    // With the CA's client certificate: served.
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(server_der.clone()))
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(
        vec![rustls::pki_types::CertificateDer::from(
            client.der().to_vec(),
        )],
        rustls::pki_types::PrivateKeyDer::try_from(client_key.serialize_der()).unwrap(),
    )
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(at).await.unwrap();
    let mut s = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(
            rustls::pki_types::ServerName::IpAddress(at.ip().into()),
            tcp,
        )
        .await
        .expect("handshake with a client certificate");
    assert_eq!(options(&mut s).await, 200);
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Plaintext SIP on the TLS port: no answer, the connection is closed and
/// the failed handshake counted; the listener goes on serving TLS.
#[tokio::test]
async fn plaintext_on_the_tls_port_is_dropped_and_counted() {
    let dir = tempdir();
    let der = write_cert(&dir, &["127.0.0.1"]);
    let server = start_tls(&dir, &[]).await;
    let at = server.sip_tls_addrs[0];
    let mut plain = tokio::net::TcpStream::connect(at).await.unwrap();
    plain
        .write_all(b"OPTIONS sip:example.com SIP/2.0\r\nContent-Length: 0\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = tokio::time::timeout(WAIT, async {
        let mut total = Vec::new();
        loop {
            match plain.read(&mut buf).await {
                Ok(0) | Err(_) => return total,
                Ok(n) => total.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("closed in time");
    assert!(
        !String::from_utf8_lossy(&n).contains("SIP/2.0"),
        "a SIP answer in plaintext on the TLS port"
    );
    let counted = metric(
        server.http_addr,
        "presence_edge_dropped_total{reason=\"tls_handshake\"}",
    )
    .await;
    assert!(counted >= 1.0, "not counted: {counted}");
    let mut s = tls_connect(at, &der).await.expect("TLS still served");
    assert_eq!(options(&mut s).await, 200);
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// What the start-up checks say about TLS settings.
#[test]
fn tls_settings_are_checked_at_start() {
    let dir = tempdir();
    let _ = write_cert(&dir, &["127.0.0.1"]);
    let cert = dir.join("cert.pem").display().to_string();
    let key = dir.join("key.pem").display().to_string();
    let check = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_presenced"))
            .args(["--check-config", "--domain", "example.com"])
            .args(extra)
            .output()
            .expect("run presenced");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, text) = check(&["--sip-tls-listen", "127.0.0.1:5061"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("--sip-tls-listen needs --tls-cert and --tls-key"),
        "{text}"
    );
    let (code, text) = check(&["--tls-cert", &cert]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("go together"), "{text}");
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "nothing").unwrap();
    // A TLS listener with these files.
    let listener = |cert: &str, key: &str| {
        check(&[
            "--sip-tls-listen",
            "127.0.0.1:5061",
            "--tls-cert",
            cert,
            "--tls-key",
            key,
        ])
    };
    let (code, text) = listener(&garbage.display().to_string(), &key);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("--tls-cert"), "{text}");
    // A key that is not the certificate's.
    let (_, other_key, _) = make_cert(&["127.0.0.1"]);
    let other = dir.join("other-key.pem");
    std::fs::write(&other, other_key).unwrap();
    let (code, text) = listener(&cert, &other.display().to_string());
    assert_eq!(code, Some(2), "a mismatched key was taken: {text}");
    let (code, text) = listener(&cert, &key);
    assert_eq!(code, Some(0), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

//! `make cluster-up` as a newcomer runs it (scripts/cluster-up.sh, then
//! scripts/cluster-down.sh), secured by default: Redis and NATS take only
//! TLS from the throwaway CA it makes and only the passwords it makes, each
//! role logs in to NATS as its own user under the shipped permissions, the
//! edges serve SIP over TLS with a certificate from that CA, and the
//! cluster serves a SUBSCRIBE, a PUBLISH and its NOTIFY. cluster-down
//! stops every process it started.

mod common;
mod harness;

use common::*;
use rustls::pki_types::pem::PemObject;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Run a script of the repository with the variables a test sets (and
/// none it inherits that would change the cluster); its output.
fn script(name: &str, state: &Path) -> String {
    let out = Command::new(repo().join("scripts").join(name))
        .current_dir(repo())
        .env("STATE", state)
        .env("PRESENCED", env!("CARGO_BIN_EXE_presenced"))
        .env("EDGES", "1")
        .env("COMPOSITORS", "1")
        .env("NOTIFIERS", "1")
        .env("SHARDS", "8")
        .env("DOMAIN", "example.com")
        .env("LOG", "info")
        .env_remove("USERS")
        .env_remove("POLICY")
        .env_remove("SIP_BASE")
        .env_remove("SECURE")
        .output()
        .expect("run the script");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{name} failed:\n{text}");
    text
}

/// The port after `prefix` in cluster-up's endpoints.txt.
fn port_after(endpoints: &str, prefix: &str) -> u16 {
    let at = endpoints
        .find(prefix)
        .unwrap_or_else(|| panic!("no {prefix} in endpoints.txt:\n{endpoints}"));
    endpoints[at + prefix.len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .expect("port")
}

fn pids(state: &Path) -> Vec<u32> {
    std::fs::read_dir(state)
        .expect("state dir")
        .filter_map(|e| {
            let p = e.ok()?.path();
            (p.extension()? == "pid").then(|| std::fs::read_to_string(&p).ok())?
        })
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
}

/// Stops the cluster however the test ends.
struct Down(PathBuf);

impl Drop for Down {
    fn drop(&mut self) {
        if self.0.exists() {
            let _ = Command::new(repo().join("scripts/cluster-down.sh"))
                .current_dir(repo())
                .env("STATE", &self.0)
                .output();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_up_is_secured_by_default_and_serves_presence() {
    let state = std::env::temp_dir().join(format!("presence-cluster-up-{}", rand_token()));
    let down = Down(state.clone());
    script("cluster-up.sh", &state);
    let endpoints = std::fs::read_to_string(state.join("endpoints.txt")).expect("endpoints.txt");
    assert!(endpoints.contains("rediss://"), "{endpoints}");
    assert!(endpoints.contains("tls://"), "{endpoints}");
    let sip = port_after(&endpoints, "sip:127.0.0.1:");
    let sips = port_after(&endpoints, "sips:127.0.0.1:");
    let redis = port_after(&endpoints, "rediss://127.0.0.1:");
    let nats = port_after(&endpoints, "tls://127.0.0.1:");
    let ca = state.join("tls/ca.pem");

    // Each role is its own NATS user: the server lists them on its
    // connections (monitoring endpoint).
    let monitor = port_after(&endpoints, "(monitoring http://127.0.0.1:");
    let connz = harness::http_get(
        format!("127.0.0.1:{monitor}").parse().unwrap(),
        "/connz?auth=1",
    )
    .map(|(_, body)| body)
    .unwrap_or_default();
    for user in ["edge", "compositor", "notifier"] {
        assert!(
            connz.contains(&format!("\"authorized_user\": \"{user}\"")),
            "no NATS connection of user {user}:\n{connz}"
        );
    }

    // Without the password (plain TCP, or NATS without credentials) nothing gets in.
    let mut plain = tokio::net::TcpStream::connect(("127.0.0.1", redis))
        .await
        .unwrap();
    plain.write_all(b"PING\r\n").await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), plain.read(&mut buf))
        .await
        .map_or(0, |r| r.unwrap_or(0));
    assert!(
        !String::from_utf8_lossy(&buf[..n]).contains("PONG"),
        "Redis answered plain text"
    );
    let anonymous = presence_nats::Security {
        ca: Some(ca.clone()),
        ..Default::default()
    };
    assert!(
        presence_nats::connect(&format!("tls://127.0.0.1:{nats}"), "t", &anonymous)
            .await
            .is_err(),
        "NATS let a client in without credentials"
    );

    // SIP over TLS with a certificate from the throwaway CA.
    let ca_der = rustls::pki_types::CertificateDer::from_pem_file(&ca)
        .expect("the CA")
        .to_vec();
    let sips_addr: SocketAddr = format!("127.0.0.1:{sips}").parse().unwrap();
    let mut tls = tls_connect(sips_addr, &ca_der)
        .await
        .expect("a TLS handshake trusting the throwaway CA");
    let options = "OPTIONS sip:example.com SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5999;branch=z9hG4bKcu1\r\nFrom: <sip:t@example.com>;tag=1\r\nTo: <sip:example.com>\r\nCall-ID: cu1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n";
    tls.write_all(options.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut answer))
        .await
        .expect("an answer over TLS")
        .unwrap();
    assert!(
        String::from_utf8_lossy(&answer[..n]).starts_with("SIP/2.0 200"),
        "{}",
        String::from_utf8_lossy(&answer[..n])
    );

    // Presence end to end through the secured backends.
    let at: SocketAddr = format!("127.0.0.1:{sip}").parse().unwrap();
    watcher_sees_a_publish(at, "via cluster-up", Duration::from_secs(20)).await;

    // No role met a permission it lacks.
    let nats_log = std::fs::read_to_string(state.join("nats.log")).unwrap_or_default();
    assert!(
        !nats_log.contains("Permissions Violation"),
        "a role was refused a subject:\n{nats_log}"
    );

    let started = pids(&state);
    assert_eq!(started.len(), 5, "redis, nats and three roles");
    script("cluster-down.sh", &state);
    for pid in started {
        assert!(!alive(pid), "pid {pid} still runs after cluster-down");
    }
    drop(down);
    let _ = std::fs::remove_dir_all(&state);
}

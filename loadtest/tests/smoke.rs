//! End-to-end: the real `presence-loadtest` binary against the all-in-one
//! server started in-process on free ports: the smoke profile passes over
//! UDP, passes with Digest over TCP, and fails against a server that skips
//! every tenth NOTIFY.

use clap::Parser;
use presenced::config::{Args, Config};
use presenced::faults::Faults;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_presence-loadtest");

struct Tmp(PathBuf);

impl Tmp {
    fn new(name: &str) -> Tmp {
        Tmp(std::env::temp_dir().join(format!("presence-loadtest-{}-{name}", std::process::id())))
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn start_server(users: Option<&Tmp>, faults: Faults) -> (presenced::Server, SocketAddr) {
    let mut args: Vec<String> = [
        "presenced",
        "--sip-listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
        "--api-listen",
        "127.0.0.1:0",
        "--domain",
        "example.com",
        "--shards",
        "16",
        "--log",
        "warn",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(u) = users {
        args.push("--users".into());
        args.push(u.0.display().to_string());
    }
    let parsed = Args::parse_from(&args);
    let cfg = Config::from_args(&parsed).expect("valid config");
    let server = presenced::start_with_faults(cfg, faults)
        .await
        .expect("server starts");
    let addr = server.sip_addrs[0];
    (server, addr)
}

/// Run the binary with a generous guard deadline (it stops by itself well before).
async fn run_tool(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(BIN)
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn presence-loadtest");
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            if child.try_wait().expect("wait").is_some() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        child.wait_with_output().expect("output")
    })
    .await
    .expect("join")
}

fn read_report(path: &Tmp) -> Value {
    let text = std::fs::read_to_string(&path.0).expect("the JSON report was written");
    serde_json::from_str(&text).expect("the report is JSON")
}

fn show(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn smoke_args(target: SocketAddr, report: &Tmp) -> Vec<String> {
    vec![
        "--profile".into(),
        "smoke".into(),
        "--target".into(),
        target.to_string(),
        "--report".into(),
        report.0.display().to_string(),
        "--seed".into(),
        "7".into(),
        "--no-progress".into(),
    ]
}

fn n(v: &Value, path: &[&str]) -> u64 {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_u64()
        .unwrap_or_else(|| panic!("{path:?} is a number in {v}"))
}

/// The checks every passing smoke report must satisfy.
fn assert_sane(r: &Value, users: u64) {
    assert_eq!(r["passed"], Value::Bool(true), "{r}");
    for (name, _) in r["canary"].as_object().expect("canary counters") {
        assert_eq!(n(r, &["canary", name]), 0, "canary {name}");
    }
    for m in ["REGISTER", "PUBLISH", "SUBSCRIBE", "MESSAGE"] {
        assert!(n(r, &["requests", m, "sent"]) > 0, "{m} was sent");
        assert!(
            n(r, &["requests", m, "responses", "200"]) > 0,
            "{m} got 200s"
        );
        assert!(n(r, &["requests", m, "latency", "count"]) > 0);
    }
    // Initial + refresh + un-REGISTER: more than two per user.
    assert!(n(r, &["requests", "REGISTER", "sent"]) > 2 * users);
    // Initial + refreshes + un-SUBSCRIBE per subscription.
    let subs = n(r, &["setup", "subscriptions"]);
    assert!(subs >= users * 4, "{subs} subscriptions");
    assert!(n(r, &["requests", "SUBSCRIBE", "sent"]) > 2 * subs);
    // At least the initial and the final NOTIFY of every subscription.
    assert!(n(r, &["notify", "received"]) >= 2 * subs);
    assert!(n(r, &["notify", "latency", "count"]) > 0);
    assert!(n(r, &["messages_received"]) > 0);
    assert_eq!(n(r, &["errors"]), 0);
    assert!(r["cpu"]["per_message_us"].as_f64().unwrap_or(0.0) > 0.0);
    assert!(!r["timeline"].as_array().expect("timeline").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_profile_passes_over_udp() {
    let (server, target) = start_server(None, Faults::default()).await;
    let report = Tmp::new("udp.json");
    let plot = Tmp::new("udp.svg");
    let mut args = smoke_args(target, &report);
    args.extend(["--plot".into(), plot.0.display().to_string()]);
    let out = run_tool(args).await;
    server.shutdown().await;
    assert!(out.status.success(), "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("PASSED") && stdout.contains("change→NOTIFY"),
        "{stdout}"
    );
    let r = read_report(&report);
    assert_sane(&r, 50);
    let svg = std::fs::read_to_string(&plot.0).expect("the plot was written");
    assert!(
        svg.starts_with("<svg") && svg.contains("<polyline"),
        "{svg}"
    );
}

/// BLF: the same load over Event: dialog. The canary reads each change's
/// SEQ from the dialog's remote tag, so a server that lost, reordered or
/// rewrote dialog state fails it; change→NOTIFY latencies are measured
/// only if the SEQs are read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_profile_plays_blf_over_udp() {
    let (server, target) = start_server(None, Faults::default()).await;
    let report = Tmp::new("blf.json");
    let mut args = smoke_args(target, &report);
    args.extend(["--event".into(), "dialog".into()]);
    let out = run_tool(args).await;
    server.shutdown().await;
    assert!(out.status.success(), "{}", show(&out));
    let r = read_report(&report);
    assert_sane(&r, 50);
    assert_eq!(r["setup"]["event"], Value::String("dialog".into()), "{r}");
}

/// BLF with one publication per call (`--dialog-publications call`), as
/// Kamailio's pua_dialoginfo publishes: every call starts an initial
/// PUBLISH, the previous call's publication is left to expire, and the
/// lamps still show every change in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_profile_plays_blf_with_a_publication_per_call() {
    let (server, target) = start_server(None, Faults::default()).await;
    let report = Tmp::new("blf-call.json");
    let mut args = smoke_args(target, &report);
    args.extend([
        "--event".into(),
        "dialog".into(),
        "--dialog-publications".into(),
        "call".into(),
    ]);
    let out = run_tool(args).await;
    // The teardown removed each line's current publication; the earlier
    // calls' ones are still there, waiting to expire.
    let left = server.store.counts().await.expect("counts").publications;
    server.shutdown().await;
    assert!(out.status.success(), "{}", show(&out));
    let r = read_report(&report);
    assert_sane(&r, 50);
    assert!(left > 0, "no earlier call's publication is left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_profile_passes_with_digest_over_tcp() {
    let users = Tmp::new("users.txt");
    let out = run_tool(vec![
        "--profile".into(),
        "smoke".into(),
        "--password".into(),
        "pw-{user}".into(),
        "--write-users".into(),
        users.0.display().to_string(),
    ])
    .await;
    assert!(out.status.success(), "{}", show(&out));
    let text = std::fs::read_to_string(&users.0).expect("users file");
    assert_eq!(text.lines().count(), 50);
    assert!(
        text.starts_with("u000001@example.com:pw-u000001\n"),
        "{text}"
    );

    let (server, target) = start_server(Some(&users), Faults::default()).await;
    let report = Tmp::new("tcp-auth.json");
    let mut args = smoke_args(target, &report);
    args.extend([
        "--transport".into(),
        "tcp".into(),
        "--password".into(),
        "pw-{user}".into(),
    ]);
    let out = run_tool(args).await;
    server.shutdown().await;
    assert!(out.status.success(), "{}", show(&out));
    let r = read_report(&report);
    assert_sane(&r, 50);
    assert_eq!(r["setup"]["transport"], "tcp");
    assert_eq!(r["setup"]["auth"], Value::Bool(true));
    // Challenged once per user, then the nonce is reused with nc counting up.
    let challenges = n(&r, &["requests", "REGISTER", "responses", "401"]);
    assert!((1..=50).contains(&challenges), "{challenges} challenges");
    assert_eq!(n(&r, &["auth_failures"]), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_skips_notifies_fails_the_run() {
    let (server, target) = start_server(
        None,
        Faults {
            skip_notify_every: 10,
            ..Faults::default()
        },
    )
    .await;
    let report = Tmp::new("broken.json");
    let out = run_tool(smoke_args(target, &report)).await;
    server.shutdown().await;
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let r = read_report(&report);
    assert_eq!(r["passed"], Value::Bool(false));
    let missing = n(&r, &["canary", "missing_notify"])
        + n(&r, &["canary", "missing_initial_notify"])
        + n(&r, &["canary", "missing_final_notify"]);
    assert!(missing > 0, "missing NOTIFYs are counted: {}", r["canary"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("FAILED") && stdout.contains("missing"),
        "{stdout}"
    );
}

/// The smoke profile over TLS, over WebSocket (RFC 7118) and over secure
/// WebSocket: the canary passes and the report names the transport.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_profile_passes_over_tls_and_websocket() {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).expect("cert");
    let cert_file = Tmp::new("cert.pem");
    let key_file = Tmp::new("key.pem");
    std::fs::write(&cert_file.0, cert.cert.pem()).unwrap();
    std::fs::write(&key_file.0, cert.key_pair.serialize_pem()).unwrap();
    let args: Vec<String> = [
        "presenced",
        "--sip-listen",
        "127.0.0.1:0",
        "--sip-tls-listen",
        "127.0.0.1:0",
        "--sip-ws-listen",
        "127.0.0.1:0",
        "--sip-wss-listen",
        "127.0.0.1:0",
        "--tls-cert",
        &cert_file.0.display().to_string(),
        "--tls-key",
        &key_file.0.display().to_string(),
        "--http-listen",
        "127.0.0.1:0",
        "--api-listen",
        "127.0.0.1:0",
        "--domain",
        "example.com",
        "--log",
        "warn",
        // Three runs from one address in a row: more than one source's
        // request rate.
        "--rate-per-source",
        "1000000",
        "--burst-per-source",
        "1000000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let cfg = Config::from_args(&Args::parse_from(&args)).expect("valid config");
    let server = presenced::start_all(cfg).await.expect("server starts");
    for (transport, target) in [
        ("tls", server.sip_tls_addrs[0]),
        ("ws", server.sip_ws_addrs[0]),
        ("wss", server.sip_wss_addrs[0]),
    ] {
        let report = Tmp::new(&format!("{transport}.json"));
        let mut args = smoke_args(target, &report);
        args.extend([
            "--transport".into(),
            transport.into(),
            "--tls-ca".into(),
            cert_file.0.display().to_string(),
        ]);
        let out = run_tool(args).await;
        assert!(out.status.success(), "over {transport}: {}", show(&out));
        let r = read_report(&report);
        assert_sane(&r, 50);
        assert_eq!(r["setup"]["transport"], transport);
    }
    server.shutdown().await;
}

//! End-to-end: the real `presence-apibench` binary against the all-in-one
//! server started in-process on free ports, with a tiny load: it exits 0,
//! and its report shows changes reaching the streams and the SIP watchers,
//! nothing lost, nothing going backwards, GetPresence answering. No
//! assertion on speed.

use clap::Parser;
use presenced::config::{Args, Config};
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_presence-apibench");

struct Tmp(PathBuf);

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn n(v: &Value, path: &[&str]) -> u64 {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_u64()
        .unwrap_or_else(|| panic!("{path:?} is a number in {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_bench_runs_end_to_end() {
    let args: Vec<String> = [
        "presenced",
        "--sip-listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
        "--api-listen",
        "127.0.0.1:0",
        "--domain",
        "example.com",
        "--log",
        "warn",
        // Every PUBLISH and SUBSCRIBE comes from one address.
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
    let sip = server.sip_addrs[0];
    let api = server.api_addr.expect("the api role listens");
    let report =
        Tmp(std::env::temp_dir().join(format!("presence-apibench-{}.json", std::process::id())));
    let tool_args: Vec<String> = [
        "--api",
        &api.to_string(),
        "--sip",
        &sip.to_string(),
        "--aors",
        "300",
        "--streams",
        "30",
        "--aors-per-stream",
        "20",
        "--departments",
        "random",
        "--connections",
        "2",
        "--rate",
        "150",
        "--duration",
        "2",
        "--sip-watchers",
        "20",
        "--callers",
        "2",
        "--batch",
        "50",
        "--get-duration",
        "1",
        "--idle",
        "0.2",
        "--seed",
        "7",
        "--quiet",
        "--report",
        &report.0.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out: Output = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(BIN)
            .args(&tool_args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn presence-apibench");
        let deadline = Instant::now() + Duration::from_secs(120);
        while child.try_wait().expect("wait").is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        child.wait_with_output().expect("output")
    })
    .await
    .expect("join");
    server.shutdown().await;
    let show = format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{show}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("PASSED"),
        "{show}"
    );
    let text = std::fs::read_to_string(&report.0).expect("the JSON report was written");
    let r: Value = serde_json::from_str(&text).expect("the report is JSON");
    assert_eq!(r["passed"], Value::Bool(true), "{r}");
    assert_eq!(n(&r, &["watch", "synced"]), 30, "{r}");
    assert_eq!(n(&r, &["watch", "initial_states"]), 30 * 20, "{r}");
    assert!(n(&r, &["publish", "changes_acked"]) > 0, "{r}");
    assert!(n(&r, &["watch", "changes"]) > 0, "{r}");
    assert!(n(&r, &["watch_latency", "count"]) > 0, "{r}");
    assert!(n(&r, &["notify", "changes"]) > 0, "{r}");
    assert!(n(&r, &["notify_latency", "count"]) > 0, "{r}");
    for zero in [
        &["watch_lost"][..],
        &["notify_lost"],
        &["watch", "versions_backwards"],
        &["watch", "out_of_order"],
        &["watch", "errors"],
        &["notify", "out_of_order"],
        &["get_presence", "errors"],
        &["get_presence", "stale"],
        &["get_presence", "wrong_answers"],
    ] {
        assert_eq!(n(&r, zero), 0, "{zero:?} in {r}");
    }
    assert!(n(&r, &["get_presence", "calls"]) > 0, "{r}");
    assert_eq!(
        n(&r, &["get_presence", "aors"]),
        n(&r, &["get_presence", "calls"]) * 50,
        "{r}"
    );
    assert!(r["phases"]["converged_s"].is_number(), "{r}");
}

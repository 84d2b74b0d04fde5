//! Failure tests of cluster mode under load (issue 4, "Failure tests").
//!
//! Each test starts a real `redis-server` and `nats-server` (testkit, free
//! ports), 2 edges, 3 compositors and 1–2 notifiers as child processes of
//! the built `presenced` binary (lease TTL 1.5 s), runs `presence-loadtest`
//! with its canary against both edges (`--target e0,e1`: 300 users × 5
//! buddies, 100 PUBLISH/s, 20 MESSAGE/s, 25 s steady), breaks something in
//! the middle of the steady state, and requires the load generator to pass:
//! exit 0, every canary counter zero (no lost state, no missing, duplicate or
//! out-of-order NOTIFY, no lost MESSAGE, no failed request). The measured
//! figures (takeover time, latencies, redeliveries) are printed, not asserted.
//!
//! - baseline: no fault;
//! - `kill -9` of a compositor (the takeover time is printed);
//! - `kill -9` of a notifier (stopped first, so it holds unacked jobs that
//!   JetStream must redeliver after its `ack_wait` of 10 s: the notify
//!   deadline is 20 s);
//! - a restart of nats-server (same port and store);
//! - `kill -9` of an edge: the UAs on it move to the other edge (TCP: their
//!   connection closes), re-REGISTER, re-PUBLISH, re-SUBSCRIBE;
//! - hot presentities with subscription refreshes (NOTIFY order per dialog).
//!
//! Tests marked `#[ignore]` fail because of a server bug named in the marker;
//! `--ignored` runs them.
//!
//! The load generator is a binary of another package, so cargo does not build
//! it for these tests: it is looked up next to `presenced`
//! (`target/<profile>/presence-loadtest`) and built with
//! `cargo build -p presence-loadtest` (same profile) when missing or older
//! than its sources.
//!
//! Run: `cargo test -p presenced --test failover -- --nocapture --test-threads=1`.

mod harness;

use harness::{json_object, loadtest_binary, metric_sum, Cluster, PATIENCE};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One cluster at a time: the machine has few cores.
static SERIAL: Mutex<()> = Mutex::new(());

const SHARDS: u32 = 64;
const LEASE_TTL_MS: &str = "1500";

/// The load: modest, so that every process fits on two cores.
const USERS: u32 = 300;
const PUBLISH_RATE: u32 = 100;
const STEADY_S: u32 = 25;

/// The cluster of these tests: lease TTL 1.5 s, so that takeovers are quick.
fn start(edges: usize, compositors: usize, notifiers: usize) -> Cluster {
    Cluster::start(
        "failover",
        SHARDS,
        (edges, compositors, notifiers),
        &["--lease-ttl-ms", LEASE_TTL_MS],
    )
}

impl Cluster {
    /// PUBLISH requests the live edges have received.
    fn publishes(&self) -> f64 {
        self.live("edge")
            .map(|p| {
                metric_sum(p.http, "presence_edge_requests_total", "method=\"PUBLISH\"")
                    .unwrap_or(0.0)
            })
            .sum()
    }

    /// JetStream redeliveries seen by the live notifiers (a figure: whether
    /// a killed worker held unacked jobs at that moment is luck).
    fn print_redeliveries(&self, what: &str) {
        let n: f64 = self
            .live("notifier")
            .map(|p| {
                metric_sum(p.http, "presence_nats_jetstream_redeliveries_total", "").unwrap_or(0.0)
            })
            .sum();
        println!("{what}: {n} notify jobs redelivered by JetStream to the live notifiers");
        let outbox = |outcome: &str| -> f64 {
            self.live("compositor")
                .map(|p| {
                    metric_sum(
                        p.http,
                        "presence_compositor_outbox_jobs_total",
                        &format!("outcome=\"{outcome}\""),
                    )
                    .unwrap_or(0.0)
                })
                .sum()
        };
        println!(
            "{what}: {} notify job pushes failed (kept in the outbox), {} jobs relayed from outboxes by the live compositors",
            outbox("push_failed"),
            outbox("relayed")
        );
    }

    /// Wait until the steady state of the load runs (the edges have seen the
    /// setup's PUBLISHes and some seconds of changes), or the load ended.
    fn wait_for_steady(&self, load: &mut Load, seconds: u32) {
        let want = f64::from(USERS + PUBLISH_RATE * seconds);
        let deadline = Instant::now() + PATIENCE;
        while self.publishes() < want {
            if load.exited() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the load never reached its steady state ({} PUBLISHes)\n{}",
                self.publishes(),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A running `presence-loadtest`.
struct Load {
    child: Option<Child>,
    report: PathBuf,
    out: PathBuf,
}

impl Load {
    /// The standard load against every live edge.
    fn start(c: &Cluster, transport: &str, notify_deadline_s: u32) -> Load {
        let deadline = notify_deadline_s.to_string();
        Self::start_with(
            c,
            &[("--transport", transport), ("--notify-deadline", &deadline)],
        )
    }

    /// The standard load with some flags changed.
    fn start_with(c: &Cluster, changes: &[(&str, &str)]) -> Load {
        let targets: Vec<String> = c.edges().iter().map(|a| a.to_string()).collect();
        let targets = targets.join(",");
        let (users, rate, steady) = (
            USERS.to_string(),
            PUBLISH_RATE.to_string(),
            STEADY_S.to_string(),
        );
        let mut flags: Vec<(&str, &str)> = vec![
            ("--target", &targets),
            ("--transport", "udp"),
            ("--users", &users),
            ("--buddies", "5"),
            ("--publish-rate", &rate),
            ("--message-rate", "20"),
            ("--duration", &steady),
            ("--notify-deadline", "10"),
            ("--setup-rate", "500"),
            ("--seed", "4"),
        ];
        for (k, v) in changes {
            match flags.iter_mut().find(|(f, _)| f == k) {
                Some(f) => f.1 = v,
                None => flags.push((k, v)),
            }
        }
        let report = c.dir.join("report.json");
        let out = c.dir.join("loadtest.out");
        let stdout = std::fs::File::create(&out).expect("loadtest output");
        let stderr = stdout.try_clone().expect("loadtest output");
        let mut cmd = Command::new(loadtest_binary());
        for (k, v) in flags {
            cmd.args([k, v]);
        }
        let child = cmd
            .arg("--no-progress")
            .arg("--report")
            .arg(&report)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("start presence-loadtest");
        Load {
            child: Some(child),
            report,
            out,
        }
    }

    fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| matches!(c.try_wait(), Ok(Some(_))))
    }

    /// Wait for the run's end; its exit code, stdout and JSON report.
    fn finish(mut self) -> (Option<i32>, String, String) {
        let deadline = Instant::now() + Duration::from_secs(300);
        let mut child = self.child.take().expect("a running load");
        let status = loop {
            if let Ok(Some(s)) = child.try_wait() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                break child.wait().expect("wait for the load generator");
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let out = std::fs::read_to_string(&self.out).unwrap_or_default();
        let report = std::fs::read_to_string(&self.report).unwrap_or_default();
        (status.code(), out, report)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A number in the report: the first `"key": N` after following `path`.
fn json_number(json: &str, path: &[&str], key: &str) -> Option<f64> {
    let obj = json_object(json, path)?;
    let at = obj.find(&format!("\"{key}\""))?;
    let rest = obj[at + key.len() + 2..].trim_start().strip_prefix(':')?;
    let end = rest.find([',', '}', '\n']).unwrap_or(rest.len());
    rest[..end].trim().parse().ok()
}

/// UAs the load generator moved to another edge.
fn moves(report: &str) -> f64 {
    json_number(report, &["failover"], "moves").unwrap_or(-1.0)
}

/// The load passed: exit 0 and every canary counter zero. Prints the report.
fn assert_passed(c: &Cluster, what: &str, result: &(Option<i32>, String, String)) {
    let (code, out, report) = result;
    println!("=== {what}: presence-loadtest output ===\n{out}");
    let canary = json_object(report, &["canary"]).unwrap_or("<no report>");
    let flat = |s: &str| s.split_whitespace().collect::<String>();
    println!("{what}: canary {}", flat(canary));
    if let Some(f) = json_object(report, &["failover"]) {
        println!("{what}: failover {}", flat(f));
    }
    for method in ["PUBLISH", "SUBSCRIBE", "MESSAGE"] {
        if let Some(l) = json_object(report, &["requests", method, "latency"]) {
            println!("{what}: {method} latency {}", flat(l));
        }
    }
    if let Some(l) = json_object(report, &["notify", "latency"]) {
        println!("{what}: change -> NOTIFY latency {}", flat(l));
    }
    let faults: Vec<&str> = canary
        .trim_matches(|ch| ch == '{' || ch == '}')
        .split(',')
        .filter(|kv| kv.rsplit(':').next().is_some_and(|v| v.trim() != "0"))
        .collect();
    let w = c.warnings();
    if !w.is_empty() {
        println!("{what}: warnings in the cluster's logs:\n{w}");
    }
    assert!(
        *code == Some(0) && faults.is_empty() && !report.is_empty(),
        "{what}: the load failed (exit {code:?}, canary faults {faults:?})\n{}",
        c.logs()
    );
}

#[test]
fn baseline_under_load_passes_the_canary() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = start(2, 3, 2);
    let load = Load::start(&c, "udp", 10);
    let result = load.finish();
    assert_passed(&c, "baseline", &result);
    assert_eq!(moves(&result.2), 0.0, "no UA had to change edges");
}

#[test]
fn kill_9_of_a_compositor_under_load() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = start(2, 3, 2);
    let mut load = Load::start(&c, "udp", 10);
    c.wait_for_steady(&mut load, 8);
    assert!(!load.exited(), "the load ended before the kill");
    let killed_at = Instant::now();
    c.kill9("comp1");
    // The survivors own every shard again.
    let takeover = loop {
        if c.owned() == SHARDS {
            break killed_at.elapsed();
        }
        assert!(killed_at.elapsed() < PATIENCE, "no takeover\n{}", c.logs());
        std::thread::sleep(Duration::from_millis(20));
    };
    println!(
        "compositor kill -9: all {SHARDS} shards owned again {:.2} s after the kill (lease TTL {LEASE_TTL_MS} ms)",
        takeover.as_secs_f64()
    );
    let result = load.finish();
    assert_passed(&c, "compositor kill -9", &result);
    assert_eq!(moves(&result.2), 0.0, "no UA had to change edges");
}

#[test]
fn kill_9_of_a_notifier_under_load() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = start(2, 3, 2);
    // The killed worker's unacked jobs come back after JetStream's ack_wait
    // (10 s in cluster.rs): the deadline must leave room for that.
    let mut load = Load::start(&c, "udp", 20);
    c.wait_for_steady(&mut load, 8);
    assert!(!load.exited(), "the load ended before the kill");
    // Freeze it first so that it surely holds unacked jobs (a worker that
    // hangs, then dies): those must come back to the other one.
    c.signal("notif1", "-STOP");
    std::thread::sleep(Duration::from_secs(2));
    c.kill9("notif1");
    let result = load.finish();
    c.print_redeliveries("notifier kill -9");
    assert_passed(&c, "notifier kill -9", &result);
    assert_eq!(moves(&result.2), 0.0, "no UA had to change edges");
}

#[test]
fn restart_of_nats_server_under_load() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    nats_restart(2000);
}

/// `NatsServer::restart()` alone: down for about 0.1 s. The bug above needs
/// a NOTIFY in flight at that moment, so this passes more often.
#[test]
fn quick_restart_of_nats_server_under_load() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    nats_restart(0);
}

fn nats_restart(outage_ms: u64) {
    let mut c = start(2, 3, 2);
    let mut load = Load::start(&c, "udp", 20);
    c.wait_for_steady(&mut load, 8);
    assert!(!load.exited(), "the load ended before the restart");
    // Down for a moment, as a real restart is (the store is kept).
    let at = Instant::now();
    c.nats.kill();
    std::thread::sleep(Duration::from_millis(outage_ms));
    c.nats.restart();
    println!(
        "nats-server killed and started again (same port and store) after {:.2} s",
        at.elapsed().as_secs_f64()
    );
    let result = load.finish();
    c.print_redeliveries("nats-server restart");
    assert_passed(&c, "nats-server restart", &result);
    assert_eq!(moves(&result.2), 0.0, "no UA had to change edges");
}

#[test]
fn kill_9_of_an_edge_under_load() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    edge_kill(2, "tcp");
}

/// The same with one notifier process: the edge failover itself (UAs move,
/// re-register, re-publish, re-subscribe; nothing lost) with every NOTIFY
/// numbered by one process.
#[test]
fn kill_9_of_an_edge_under_load_with_one_notifier() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    edge_kill(1, "tcp");
}

/// Over UDP nothing tells a UA its edge is gone: its next request times out
/// (Timer F, 32 s) and then it moves. Until then the notifiers reach its
/// dialogs through the other edge (any edge can send to a UDP address).
#[test]
fn kill_9_of_an_edge_under_udp_load_with_one_notifier() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    edge_kill(1, "udp");
}

fn edge_kill(notifiers: usize, transport: &str) {
    let mut c = start(2, 3, notifiers);
    // Over TCP the UAs on the killed edge see their connection close and
    // move to the other edge at once; over UDP they wait for Timer F.
    let mut load = Load::start(&c, transport, 20);
    c.wait_for_steady(&mut load, 8);
    assert!(!load.exited(), "the load ended before the kill");
    c.kill9("edge1");
    let result = load.finish();
    assert_passed(&c, "edge kill -9", &result);
    assert!(moves(&result.2) > 0.0, "the UAs of the killed edge moved");
}

/// No kill: presentities watched by everybody change several times a second
/// while every subscription is refreshed every ~3 s, with two notifier
/// processes, so that a refresh's NOTIFY job and a change's job for the same
/// subscription are taken by both. Each subscription's NOTIFYs must still
/// come in CSeq and version order.
#[test]
fn two_notifiers_keep_each_dialogs_notifies_in_order() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    hot_presentities(2);
}

/// The same with one notifier process (every CSeq numbered by one process).
#[test]
fn one_notifier_keeps_each_dialogs_notifies_in_order() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    hot_presentities(1);
}

fn hot_presentities(notifiers: usize) {
    let c = start(2, 3, notifiers);
    let load = Load::start_with(
        &c,
        &[
            ("--users", "60"),
            ("--buddies", "3"),
            ("--receptionists", "3"),
            ("--publish-rate", "150"),
            ("--message-rate", "0"),
            ("--subscribe-expires", "4"),
            ("--duration", "15"),
        ],
    );
    let result = load.finish();
    let what = format!("hot presentities, {notifiers} notifier(s)");
    assert_passed(&c, &what, &result);
}

//! presence-apibench: the presence API under load (issue 14).
//!
//! What it is: N `Watch` streams (gRPC, over a few HTTP/2 connections),
//! each following a department of D AoRs out of M, while real SIP PUBLISHes
//! over UDP change those AoRs at R per second; each document carries a note
//! with its send time, so every state a stream shows gives a change → event
//! latency. In the same run K SIP watchers (SUBSCRIBE, Event: presence) on
//! some of the same AoRs give change → NOTIFY on the same churn, the
//! baseline. Then C callers time `GetPresence` batches of B AoRs.
//!
//! It checks as it measures: at the end every stream and every SIP watcher
//! must show each of its AoRs' newest acknowledged change (coalescing may
//! skip changes, never the last one), no version or change may go
//! backwards, and GetPresence must answer every AoR asked, in order, with
//! its newest change. Any of these fails the run (exit 1).
//!
//! What it is not: a SIP load generator (that is `presence-loadtest`):
//! the SIP side here is the least that makes changes and a baseline.
//!
//! Phases: first PUBLISH of every AoR → streams opened, all `synced` →
//! idle (the server's memory is read here with `--server-pid`) → SIP
//! SUBSCRIBEs → churn for `--duration` → grace until everything shows the
//! newest changes → streams closed → GetPresence for `--get-duration`.

pub mod getpresence;
pub mod plan;
pub mod sip;
pub mod watch;

use crate::stats::{self, Percentiles};
use clap::Parser;
use plan::{Clock, Departments};
use serde::Serialize;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};

#[derive(Debug, Clone, Parser)]
#[command(
    name = "presence-apibench",
    about = "Watch streams, GetPresence batches and SIP NOTIFY side by side under PUBLISH churn"
)]
pub struct Cli {
    /// The api role's gRPC address.
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub api: SocketAddr,
    /// The server's SIP address (UDP), for PUBLISH and SUBSCRIBE.
    #[arg(long, default_value = "127.0.0.1:5060")]
    pub sip: SocketAddr,
    #[arg(long, default_value = "example.com")]
    pub domain: String,
    /// AoRs are sip:<prefix>000000@domain, …
    #[arg(long, default_value = "api")]
    pub user_prefix: String,
    /// M: AoRs in the directory (each PUBLISHed once before the streams open).
    #[arg(long, default_value_t = 10_000)]
    pub aors: u32,
    /// N: Watch streams.
    #[arg(long, default_value_t = 100)]
    pub streams: usize,
    /// D: AoRs per stream (its department).
    #[arg(long, default_value_t = 20)]
    pub aors_per_stream: usize,
    #[arg(long, value_enum, default_value = "contiguous")]
    pub departments: Departments,
    /// HTTP/2 connections the streams (and the GetPresence callers) share.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// R: changes (PUBLISH modifies) per second during the churn.
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
    /// T: seconds of churn.
    #[arg(long, default_value_t = 20.0)]
    pub duration: f64,
    /// Change every AoR of the directory, not only those a stream follows.
    #[arg(long)]
    pub churn_all: bool,
    /// K: SIP watchers (one SUBSCRIBE dialog each), spread over the AoRs
    /// that change.
    #[arg(long, default_value_t = 100)]
    pub sip_watchers: usize,
    /// UDP sockets the PUBLISHes and SIP watchers share.
    #[arg(long, default_value_t = 4)]
    pub sockets: usize,
    /// First PUBLISHes and SUBSCRIBEs per second.
    #[arg(long, default_value_t = 2000.0)]
    pub setup_rate: f64,
    /// Open SIP transactions at most during the setup.
    #[arg(long, default_value_t = 500)]
    pub max_inflight: usize,
    /// PUBLISH and SUBSCRIBE Expires (seconds; nothing is refreshed, so
    /// keep it above the run's length).
    #[arg(long, default_value_t = 900)]
    pub expires: u32,
    /// Seconds after the churn for every stream and watcher to show its
    /// AoRs' newest changes (the run ends as soon as they do). Above the
    /// hub's 30 s resync, so a missing change is lost, not late.
    #[arg(long, default_value_t = 35.0)]
    pub grace: f64,
    /// Seconds all streams may take to be synced.
    #[arg(long, default_value_t = 120.0)]
    pub sync_timeout: f64,
    /// Seconds the synced streams sit idle before the server's memory is read.
    #[arg(long, default_value_t = 2.0)]
    pub idle: f64,
    /// Heartbeat seconds asked of the server (0: its default).
    #[arg(long, default_value_t = 0)]
    pub heartbeat: u32,
    /// C: concurrent GetPresence callers.
    #[arg(long, default_value_t = 4)]
    pub callers: usize,
    /// B: AoRs per GetPresence call.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// T2: seconds of GetPresence calls (0: skip).
    #[arg(long, default_value_t = 10.0)]
    pub get_duration: f64,
    /// The server's process id: its resident memory and CPU time are read
    /// from /proc at the phase boundaries (same host only).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Runtime worker threads of the bench.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Write the JSON report here (it also goes to stdout after the table
    /// unless --quiet).
    #[arg(long)]
    pub report: Option<std::path::PathBuf>,
    /// No phase lines on stderr, no JSON on stdout.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Setup {
    pub api: String,
    pub sip: String,
    pub aors: u32,
    pub streams: usize,
    pub aors_per_stream: usize,
    pub departments: Departments,
    pub watched_pairs: u64,
    pub connections: usize,
    pub rate: f64,
    pub duration_s: f64,
    pub churn_aors: usize,
    pub sip_watchers: usize,
    pub callers: usize,
    pub batch: usize,
    pub get_duration_s: f64,
    pub run: String,
    pub seed: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Phases {
    pub initial_publish_s: f64,
    pub streams_synced_s: f64,
    pub subscribe_s: f64,
    pub churn_s: f64,
    /// From the end of the churn until everything showed the newest
    /// changes (`None`: not within the grace).
    pub converged_s: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Server {
    pub pid: u32,
    pub rss_kb_before_streams: u64,
    pub rss_kb_streams_synced: u64,
    pub rss_kb_after_churn: u64,
    /// After the streams were closed (and `--idle`): what they gave back.
    pub rss_kb_streams_closed: u64,
    /// (synced − before) / N.
    pub kb_per_stream: f64,
    /// (synced − before) / (N·D).
    pub kb_per_watched_aor: f64,
    /// CPU from the churn's start until converged (user + system).
    pub churn_cpu_s: f64,
    pub churn_wall_s: f64,
    /// Stream states + NOTIFYs delivered in that time.
    pub delivered: u64,
    pub us_per_delivered: f64,
    pub us_per_change: f64,
    pub get_cpu_s: f64,
    pub us_per_get_aor: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    /// Watch p50 / NOTIFY p50 (below 1: streams are faster).
    pub p50: Option<f64>,
    pub p99: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub passed: bool,
    pub failures: Vec<String>,
    pub setup: Setup,
    pub phases: Phases,
    pub publish: sip::PublishCounts,
    pub publish_latency: Percentiles,
    pub watch: watch::WatchCounts,
    /// Change sent → stream state received, µs histogram as percentiles.
    pub watch_latency: Percentiles,
    pub watch_changes_per_s: f64,
    /// (stream, AoR) pairs never showing the AoR's newest acknowledged change.
    pub watch_lost: u64,
    pub notify: sip::NotifyCounts,
    pub notify_latency: Percentiles,
    pub notify_lost: u64,
    pub ratio: Ratio,
    pub get_presence: Option<getpresence::GetReport>,
    pub server: Option<Server>,
    /// The bench's own CPU seconds (it shares the machine).
    pub bench_cpu_s: f64,
    pub bench_churn_cpu_s: f64,
    pub bench_get_cpu_s: f64,
}

/// Run the bench on a runtime of its own.
pub fn run(cli: Cli) -> Result<Report, String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.threads.max(1))
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    rt.block_on(run_async(cli))
}

fn check(cli: &Cli) -> Result<(), String> {
    let mut errors = Vec::new();
    if cli.aors == 0 || cli.aors > 999_999 {
        errors.push("--aors must be between 1 and 999999".to_string());
    }
    if cli.aors_per_stream == 0 || cli.aors_per_stream > cli.aors as usize {
        errors.push("--aors-per-stream must be between 1 and --aors".into());
    }
    if cli.streams == 0 {
        errors.push("--streams must be at least 1".into());
    }
    if cli.connections == 0 || cli.sockets == 0 {
        errors.push("--connections and --sockets must be at least 1".into());
    }
    let positive = |v: f64| v.is_finite() && v > 0.0;
    if !positive(cli.rate) || !positive(cli.setup_rate) {
        errors.push("--rate and --setup-rate must be positive".into());
    }
    let seconds = [
        ("--duration", cli.duration),
        ("--grace", cli.grace),
        ("--sync-timeout", cli.sync_timeout),
        ("--idle", cli.idle),
        ("--get-duration", cli.get_duration),
    ];
    for (name, v) in seconds {
        if !(0.0..=86_400.0).contains(&v) {
            errors.push(format!("{name} must be between 0 and 86400 seconds"));
        }
    }
    if cli.batch == 0 {
        errors.push("--batch must be at least 1".into());
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

fn say(cli: &Cli, what: std::fmt::Arguments<'_>) {
    if !cli.quiet {
        eprintln!("apibench: {what}");
    }
}

async fn connect(api: SocketAddr) -> Result<Channel, String> {
    Endpoint::from_shared(format!("http://{api}"))
        .map_err(|e| e.to_string())?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("cannot connect to {api}: {e}"))
}

async fn run_async(cli: Cli) -> Result<Report, String> {
    check(&cli)?;
    let bench_cpu0 = stats::cpu_times().2;
    let clock = Clock::start();
    let seed = cli.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    // The run id tells this run's notes from an earlier run's on the same
    // server: from the clock, so a repeated seed still gets a new one.
    let run = format!(
        "{:08x}",
        crate::rng::Rng::new(
            seed ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        )
        .next_u64() as u32
    );
    let mut rng = crate::rng::Rng::new(seed);
    let departments = plan::departments(
        cli.aors,
        cli.streams,
        cli.aors_per_stream,
        cli.departments,
        &mut rng,
    );
    let churn = plan::churn_set(cli.aors, &departments, cli.churn_all);
    let targets = plan::sip_targets(&churn, cli.sip_watchers);
    let pairs: u64 = departments.iter().map(|d| d.len() as u64).sum();
    let setup = Setup {
        api: cli.api.to_string(),
        sip: cli.sip.to_string(),
        aors: cli.aors,
        streams: cli.streams,
        aors_per_stream: cli.aors_per_stream,
        departments: cli.departments,
        watched_pairs: pairs,
        connections: cli.connections,
        rate: cli.rate,
        duration_s: cli.duration,
        churn_aors: churn.len(),
        sip_watchers: targets.len(),
        callers: cli.callers,
        batch: cli.batch,
        get_duration_s: cli.get_duration,
        run: run.clone(),
        seed,
    };
    let mut channels = Vec::new();
    for _ in 0..cli.connections {
        channels.push(connect(cli.api).await?);
    }
    let proc_ = cli.server_pid;
    let rss = || proc_.and_then(server_rss_kb).unwrap_or(0);
    let cpu = || proc_.and_then(server_cpu_s).unwrap_or(0.0);
    let mut phases = Phases::default();

    // 1. The directory: a first PUBLISH per AoR.
    let mut sip = sip::Sip::start(
        sip::SipSetup {
            target: cli.sip,
            sockets: cli.sockets,
            domain: cli.domain.clone(),
            prefix: cli.user_prefix.clone(),
            aors: cli.aors,
            expires: cli.expires,
            run: run.clone(),
            seed,
        },
        clock,
    )?;
    let t = Instant::now();
    let setup_timeout = Duration::from_secs_f64(f64::from(cli.aors) / cli.setup_rate * 3.0 + 60.0);
    sip.publish_all(cli.setup_rate, cli.max_inflight, setup_timeout)
        .await?;
    phases.initial_publish_s = t.elapsed().as_secs_f64();
    let not_200: u64 = sip
        .publish
        .responses
        .iter()
        .filter(|(c, _)| !(200..300).contains(*c))
        .map(|(_, n)| n)
        .sum();
    if not_200 > 0 || sip.publish.timeouts > 0 {
        return Err(format!(
            "the first PUBLISHes were not all accepted: {:?}, {} timeouts",
            sip.publish.responses, sip.publish.timeouts
        ));
    }
    say(
        &cli,
        format_args!(
            "{} first PUBLISHes in {:.1} s",
            cli.aors, phases.initial_publish_s
        ),
    );
    tokio::time::sleep(Duration::from_secs_f64(cli.idle)).await;
    let rss_before = rss();

    // 2. The streams, until all are synced.
    let t = Instant::now();
    let mut streams = watch::Streams::open(
        &channels,
        departments,
        watch::WatchSetup {
            clock,
            run: run.clone(),
            prefix: cli.user_prefix.clone(),
            domain: cli.domain.clone(),
            heartbeat_s: cli.heartbeat,
        },
    );
    let sync_deadline = t + Duration::from_secs_f64(cli.sync_timeout);
    while streams.synced() < cli.streams {
        if streams.errors() > 0 {
            return Err(format!(
                "a stream failed before it was synced: {}",
                streams.counts().first_error.unwrap_or_default()
            ));
        }
        if Instant::now() > sync_deadline {
            return Err(format!(
                "{} of {} streams synced within {} s",
                streams.synced(),
                cli.streams,
                cli.sync_timeout
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    phases.streams_synced_s = t.elapsed().as_secs_f64();
    say(
        &cli,
        format_args!(
            "{} streams ({} AoR pairs) synced in {:.2} s",
            cli.streams, pairs, phases.streams_synced_s
        ),
    );
    tokio::time::sleep(Duration::from_secs_f64(cli.idle)).await;
    let rss_synced = rss();

    // 3. The SIP watchers.
    let t = Instant::now();
    sip.subscribe_all(
        &targets,
        cli.setup_rate,
        cli.max_inflight,
        Duration::from_secs(60),
    )
    .await?;
    phases.subscribe_s = t.elapsed().as_secs_f64();
    say(
        &cli,
        format_args!(
            "{} SIP watchers subscribed in {:.2} s",
            sip.notify.subscribed, phases.subscribe_s
        ),
    );

    // 4. The churn, then the grace until everything shows the newest.
    let before = streams.counts();
    let notifies_before = sip.notify.received;
    streams.reset_latency();
    sip.record(true);
    let cpu0 = cpu();
    let bench_churn0 = stats::cpu_times().2;
    let t = Instant::now();
    sip.churn(&churn, cli.rate, Duration::from_secs_f64(cli.duration))
        .await;
    phases.churn_s = t.elapsed().as_secs_f64();
    say(
        &cli,
        format_args!(
            "churn: {} changes sent in {:.1} s",
            sip.publish.changes_sent, phases.churn_s
        ),
    );
    let t_end = Instant::now();
    let grace_end = t_end + Duration::from_secs_f64(cli.grace);
    loop {
        sip.pump_for(Duration::from_millis(100)).await;
        if sip.inflight() == 0 {
            let acked = sip.acked();
            if streams.behind(&acked) == 0 && sip.watchers_behind() == 0 {
                phases.converged_s = Some(t_end.elapsed().as_secs_f64());
                break;
            }
        }
        if Instant::now() >= grace_end {
            break;
        }
    }
    let churn_wall = t.elapsed().as_secs_f64();
    let cpu1 = cpu();
    let bench_churn_cpu = stats::cpu_times().2 - bench_churn0;
    sip.record(false);
    let acked = sip.acked();
    let watch_lost = streams.behind(&acked);
    let notify_lost = sip.watchers_behind();
    let counts = streams.counts();
    let watch_latency = streams.latency();
    let notify_latency = sip.notify_latency.clone();
    say(
        &cli,
        format_args!(
            "converged {}; {} stream states, {} NOTIFYs",
            phases
                .converged_s
                .map_or("never".to_string(), |s| format!("after {s:.2} s")),
            counts.events - before.events,
            sip.notify.received - notifies_before
        ),
    );
    let rss_after = rss();
    streams.close().await;
    sip.pump_for(Duration::from_secs_f64(cli.idle)).await;
    let rss_closed = rss();

    // 5. GetPresence.
    let mut get = None;
    let mut get_cpu = 0.0;
    let mut bench_get_cpu = 0.0;
    if cli.callers > 0 && cli.get_duration > 0.0 {
        let c0 = cpu();
        let b0 = stats::cpu_times().2;
        let r = getpresence::run(
            &channels,
            getpresence::GetSetup {
                callers: cli.callers,
                batch: cli.batch,
                duration: Duration::from_secs_f64(cli.get_duration),
                prefix: cli.user_prefix.clone(),
                domain: cli.domain.clone(),
                run: run.clone(),
                seed,
            },
            Arc::new(acked),
        )
        .await;
        get_cpu = cpu() - c0;
        bench_get_cpu = stats::cpu_times().2 - b0;
        say(
            &cli,
            format_args!(
                "GetPresence: {:.0} calls/s, {:.0} AoRs/s",
                r.calls_per_s, r.aors_per_s
            ),
        );
        get = Some(r);
    }
    sip.stop();

    let delivered = (counts.events - before.events) + (sip.notify.received - notifies_before);
    let server = proc_.map(|pid| {
        let grown = rss_synced.saturating_sub(rss_before) as f64;
        let churn_cpu = cpu1 - cpu0;
        Server {
            pid,
            rss_kb_before_streams: rss_before,
            rss_kb_streams_synced: rss_synced,
            rss_kb_after_churn: rss_after,
            rss_kb_streams_closed: rss_closed,
            kb_per_stream: grown / cli.streams as f64,
            kb_per_watched_aor: grown / pairs.max(1) as f64,
            churn_cpu_s: churn_cpu,
            churn_wall_s: churn_wall,
            delivered,
            us_per_delivered: churn_cpu * 1e6 / delivered.max(1) as f64,
            us_per_change: churn_cpu * 1e6 / sip.publish.changes_sent.max(1) as f64,
            get_cpu_s: get_cpu,
            us_per_get_aor: get
                .as_ref()
                .map_or(0.0, |g| get_cpu * 1e6 / g.aors.max(1) as f64),
        }
    });
    let wl = Percentiles::of(&watch_latency);
    let nl = Percentiles::of(&notify_latency);
    let ratio = Ratio {
        p50: (nl.count > 0 && wl.count > 0).then(|| wl.p50_ms / nl.p50_ms.max(1e-3)),
        p99: (nl.count > 0 && wl.count > 0).then(|| wl.p99_ms / nl.p99_ms.max(1e-3)),
    };
    let mut report = Report {
        passed: false,
        failures: Vec::new(),
        setup,
        phases,
        publish: sip.publish.clone(),
        publish_latency: Percentiles::of(&sip.publish_latency),
        watch_changes_per_s: counts.changes as f64 / churn_wall.max(1e-9),
        watch: counts,
        watch_latency: wl,
        watch_lost,
        notify: sip.notify.clone(),
        notify_latency: nl,
        notify_lost,
        ratio,
        get_presence: get,
        server,
        bench_cpu_s: stats::cpu_times().2 - bench_cpu0,
        bench_churn_cpu_s: bench_churn_cpu,
        bench_get_cpu_s: bench_get_cpu,
    };
    report.failures = failures(&report, &cli);
    report.passed = report.failures.is_empty();
    Ok(report)
}

/// Why the run failed (empty: it passed).
fn failures(r: &Report, cli: &Cli) -> Vec<String> {
    let mut f = Vec::new();
    let mut fail = |bad: bool, what: String| {
        if bad {
            f.push(what);
        }
    };
    let w = &r.watch;
    fail(
        r.watch_lost > 0,
        format!(
            "{} (stream, AoR) pairs never showed the AoR's newest change",
            r.watch_lost
        ),
    );
    fail(
        w.versions_backwards > 0,
        format!("{} stream states went back a version", w.versions_backwards),
    );
    fail(
        w.out_of_order > 0,
        format!(
            "{} stream states showed an older change after a newer one",
            w.out_of_order
        ),
    );
    fail(
        w.errors > 0,
        format!(
            "{} streams failed or ended: {}",
            w.errors,
            w.first_error.clone().unwrap_or_default()
        ),
    );
    fail(
        w.unknown_aor > 0,
        format!("{} states for AoRs not asked for", w.unknown_aor),
    );
    fail(
        cli.duration > 0.0 && w.changes == 0,
        "no stream showed a change".into(),
    );
    fail(
        cli.duration > 0.0 && r.publish.changes_acked == 0,
        "no change was acknowledged".into(),
    );
    let n = &r.notify;
    fail(
        r.notify_lost > 0,
        format!(
            "{} SIP watchers never got their AoR's newest change",
            r.notify_lost
        ),
    );
    fail(
        n.out_of_order > 0,
        format!("{} NOTIFYs showed an older change", n.out_of_order),
    );
    fail(
        n.subscribe_failed > 0 || n.terminated > 0,
        format!(
            "{} SUBSCRIBEs failed, {} dialogs terminated",
            n.subscribe_failed, n.terminated
        ),
    );
    fail(
        cli.duration > 0.0 && n.watchers > 0 && n.changes == 0,
        "no NOTIFY showed a change".into(),
    );
    if let Some(g) = &r.get_presence {
        fail(
            g.errors > 0,
            format!(
                "{} GetPresence calls failed: {}",
                g.errors,
                g.first_error.clone().unwrap_or_default()
            ),
        );
        fail(
            g.wrong_answers > 0,
            format!(
                "{} GetPresence answers did not match the AoRs asked",
                g.wrong_answers
            ),
        );
        fail(
            g.stale > 0,
            format!(
                "{} GetPresence states older than the newest change",
                g.stale
            ),
        );
        fail(g.calls == 0, "no GetPresence call completed".into());
    }
    f
}

impl Report {
    /// A short table for people.
    pub fn table(&self) -> String {
        let mut o = String::new();
        let s = &self.setup;
        let _ = writeln!(
            o,
            "{} streams x {} AoRs ({}) over {} AoRs on {} connections; {} changes/s for {} s over {} AoRs; {} SIP watchers",
            s.streams, s.aors_per_stream, match s.departments { Departments::Contiguous => "contiguous", Departments::Random => "random" },
            s.aors, s.connections, s.rate, s.duration_s, s.churn_aors, s.sip_watchers
        );
        let p = &self.publish;
        let _ = writeln!(
            o,
            "PUBLISH   changes {} sent, {} acked; responses {:?}; retrans {}; timeouts {}; behind {}; busy {}; p50 {:.2} ms p99 {:.2} ms",
            p.changes_sent, p.changes_acked, p.responses, p.retransmissions, p.timeouts, p.behind,
            p.skipped_busy, self.publish_latency.p50_ms, self.publish_latency.p99_ms
        );
        let w = &self.watch;
        let _ = writeln!(
            o,
            "Watch     {} changes shown ({:.0}/s), {} coalesced, {} duplicates; change->event p50 {:.2} p90 {:.2} p99 {:.2} max {:.2} ms; lost {}, backwards {}",
            w.changes, self.watch_changes_per_s, w.coalesced, w.duplicates,
            self.watch_latency.p50_ms, self.watch_latency.p90_ms, self.watch_latency.p99_ms,
            self.watch_latency.max_ms, self.watch_lost, w.versions_backwards
        );
        let n = &self.notify;
        let _ = writeln!(
            o,
            "NOTIFY    {} changes shown, {} coalesced; change->NOTIFY p50 {:.2} p90 {:.2} p99 {:.2} max {:.2} ms; lost {}",
            n.changes, n.coalesced, self.notify_latency.p50_ms, self.notify_latency.p90_ms,
            self.notify_latency.p99_ms, self.notify_latency.max_ms, self.notify_lost
        );
        if let (Some(a), Some(b)) = (self.ratio.p50, self.ratio.p99) {
            let _ = writeln!(o, "Watch/NOTIFY latency ratio: p50 {a:.2}, p99 {b:.2}");
        }
        if let Some(g) = &self.get_presence {
            let _ = writeln!(
                o,
                "GetPresence {} callers x {} AoRs: {:.0} calls/s, {:.0} AoRs/s; p50 {:.2} p99 {:.2} ms; errors {}",
                g.callers, g.batch, g.calls_per_s, g.aors_per_s, g.latency.p50_ms, g.latency.p99_ms, g.errors
            );
        }
        if let Some(sv) = &self.server {
            let _ = writeln!(
                o,
                "server    RSS {} -> {} kB with the streams ({:.2} kB/stream, {:.3} kB/AoR watched); churn CPU {:.2} s ({:.1} us per delivered event); GetPresence {:.2} us/AoR",
                sv.rss_kb_before_streams, sv.rss_kb_streams_synced, sv.kb_per_stream,
                sv.kb_per_watched_aor, sv.churn_cpu_s, sv.us_per_delivered, sv.us_per_get_aor
            );
        }
        let _ = writeln!(
            o,
            "bench CPU {:.2} s (churn {:.2} s)",
            self.bench_cpu_s, self.bench_churn_cpu_s
        );
        if self.passed {
            let _ = writeln!(o, "PASSED");
        } else {
            let _ = writeln!(o, "FAILED: {}", self.failures.join("; "));
        }
        o
    }
}

/// Resident memory of `pid`, kB.
pub fn server_rss_kb(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// User + system CPU seconds of `pid` (clock ticks of 10 ms).
pub fn server_cpu_s(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = s.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
    Some((t(11)? + t(12)?) / 100.0)
}

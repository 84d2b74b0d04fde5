//! Counters, HDR histograms, the per-second timeline and the final report
//! (a table for people, JSON for machines).

use crate::canary::Counters;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Requests the tool sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum M {
    Register = 0,
    Publish = 1,
    Subscribe = 2,
    Message = 3,
}

pub const METHODS: [&str; 4] = ["REGISTER", "PUBLISH", "SUBSCRIBE", "MESSAGE"];

impl M {
    pub fn name(self) -> &'static str {
        METHODS[self as usize]
    }
}

/// Microseconds, 1 µs .. 10 min, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    // Constant, valid bounds: this cannot fail.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

#[derive(Debug)]
pub struct MethodStats {
    /// New transactions (retransmissions not included).
    pub sent: u64,
    pub steady_sent: u64,
    pub retransmissions: u64,
    pub timeouts: u64,
    pub codes: BTreeMap<u16, u64>,
    /// send → final response, µs.
    pub latency: Histogram<u64>,
}

impl Default for MethodStats {
    fn default() -> Self {
        MethodStats {
            sent: 0,
            steady_sent: 0,
            retransmissions: 0,
            timeouts: 0,
            codes: BTreeMap::new(),
            latency: histogram(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Second {
    /// Seconds since the start of the run.
    pub t: f64,
    pub phase: &'static str,
    /// New requests sent in this second.
    pub requests: u64,
    pub publishes: u64,
    pub notifies: u64,
    pub messages_received: u64,
    pub retransmissions: u64,
    pub req_p50_ms: f64,
    pub req_p99_ms: f64,
    pub notify_p50_ms: f64,
    pub notify_p99_ms: f64,
    /// Cumulative request failures and canary faults.
    pub errors: u64,
    pub faults: u64,
}

#[derive(Debug)]
pub struct Stats {
    pub methods: [MethodStats; 4],
    /// NOTIFYs processed as new deliveries.
    pub notifies: u64,
    pub notify_retransmissions: u64,
    pub notifies_steady: u64,
    pub messages_received: u64,
    /// PUBLISH send → NOTIFY arrival, per watcher, µs.
    pub notify_latency: Histogram<u64>,
    /// Datagrams / stream messages out and in (for CPU per message).
    pub wire_out: u64,
    pub wire_in: u64,
    pub send_errors: u64,
    /// Scheduled sends (PUBLISH / MESSAGE) that went out late (> 10 ms).
    pub behind: u64,
    pub auth_failures: u64,
    pub unexpected_responses: u64,
    pub stray_requests: u64,
    pub unparseable: u64,
    pub tcp_closed: u64,
    pub failover: FailoverReport,
    /// NOTIFY faults described on stderr so far.
    pub faults_logged: u32,
    /// Failed requests: timeouts and unexpected non-2xx finals.
    pub errors: u64,
    pub timeline: Vec<Second>,
    // the current second
    pub w_requests: u64,
    pub w_publishes: u64,
    pub w_notifies: u64,
    pub w_messages: u64,
    pub w_retrans: u64,
    pub w_req: Histogram<u64>,
    pub w_notify: Histogram<u64>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            methods: Default::default(),
            notifies: 0,
            notify_retransmissions: 0,
            notifies_steady: 0,
            messages_received: 0,
            notify_latency: histogram(),
            wire_out: 0,
            wire_in: 0,
            send_errors: 0,
            behind: 0,
            auth_failures: 0,
            unexpected_responses: 0,
            stray_requests: 0,
            unparseable: 0,
            tcp_closed: 0,
            failover: FailoverReport::default(),
            faults_logged: 0,
            errors: 0,
            timeline: Vec::new(),
            w_requests: 0,
            w_publishes: 0,
            w_notifies: 0,
            w_messages: 0,
            w_retrans: 0,
            w_req: histogram(),
            w_notify: histogram(),
        }
    }
}

pub fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

impl Stats {
    pub fn record_request(&mut self, m: M, us: u64) {
        self.methods[m as usize]
            .latency
            .saturating_record(us.max(1));
        self.w_req.saturating_record(us.max(1));
    }

    pub fn record_notify(&mut self, us: u64) {
        self.notify_latency.saturating_record(us.max(1));
        self.w_notify.saturating_record(us.max(1));
    }

    /// Close the current second into the timeline.
    pub fn roll(&mut self, t: f64, phase: &'static str, faults: u64) -> Second {
        let q = |h: &Histogram<u64>, p: f64| {
            if h.is_empty() {
                0.0
            } else {
                ms(h.value_at_quantile(p))
            }
        };
        let s = Second {
            t,
            phase,
            requests: self.w_requests,
            publishes: self.w_publishes,
            notifies: self.w_notifies,
            messages_received: self.w_messages,
            retransmissions: self.w_retrans,
            req_p50_ms: q(&self.w_req, 0.5),
            req_p99_ms: q(&self.w_req, 0.99),
            notify_p50_ms: q(&self.w_notify, 0.5),
            notify_p99_ms: q(&self.w_notify, 0.99),
            errors: self.errors,
            faults,
        };
        self.w_requests = 0;
        self.w_publishes = 0;
        self.w_notifies = 0;
        self.w_messages = 0;
        self.w_retrans = 0;
        self.w_req.reset();
        self.w_notify.reset();
        self.timeline.push(s.clone());
        s
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles {
                count: 0,
                p50_ms: 0.0,
                p90_ms: 0.0,
                p99_ms: 0.0,
                p999_ms: 0.0,
                max_ms: 0.0,
            };
        }
        Percentiles {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct MethodReport {
    pub sent: u64,
    pub retransmissions: u64,
    pub timeouts: u64,
    /// New requests per second over the whole run.
    pub rate_per_s: f64,
    /// New requests per second over the steady state.
    pub steady_rate_per_s: f64,
    pub responses: BTreeMap<String, u64>,
    pub latency: Percentiles,
}

#[derive(Debug, Clone, Serialize)]
pub struct NotifyReport {
    pub received: u64,
    pub retransmissions: u64,
    pub per_s: f64,
    pub steady_per_s: f64,
    /// PUBLISH send → NOTIFY arrival at each watcher.
    pub latency: Percentiles,
}

#[derive(Debug, Clone, Serialize)]
pub struct CpuReport {
    pub user_s: f64,
    pub system_s: f64,
    pub total_s: f64,
    /// Messages sent and received (datagrams or stream messages, including
    /// retransmissions and the tool's own responses).
    pub messages: u64,
    pub per_message_us: f64,
    /// Average share of one core over the run.
    pub core_share: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Setup {
    pub profile: Option<String>,
    pub target: String,
    pub transport: &'static str,
    /// The event package played (presence, dialog).
    pub event: &'static str,
    pub users: u32,
    pub subscriptions: u64,
    pub buddies: u32,
    pub receptionists: u32,
    pub skew: f64,
    pub publish_rate: f64,
    pub message_rate: f64,
    pub duration_s: f64,
    pub notify_deadline_s: f64,
    pub auth: bool,
    pub seed: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub passed: bool,
    pub failures: Vec<String>,
    pub setup: Setup,
    pub elapsed_s: f64,
    pub steady_s: f64,
    pub requests: BTreeMap<&'static str, MethodReport>,
    pub notify: NotifyReport,
    pub messages_received: u64,
    pub canary: Counters,
    pub errors: u64,
    pub send_errors: u64,
    pub behind: u64,
    pub auth_failures: u64,
    pub unexpected_responses: u64,
    pub stray_requests: u64,
    pub unparseable: u64,
    pub tcp_closed: u64,
    pub failover: FailoverReport,
    pub cpu: CpuReport,
    pub timeline: Vec<Second>,
}

/// Moves of UAs from a dead target to the next (several `--target`s only).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct FailoverReport {
    /// UAs that moved (a TCP connection closed, or Timer F fired).
    pub moves: u64,
    /// Transactions abandoned on the dead target (re-sent through the next).
    pub abandoned_requests: u64,
    /// NOTIFYs on a dialog given up by a move, answered 481.
    pub old_dialog_notifies: u64,
    /// MESSAGEs to or from a UA while it moved, answered non-2xx or
    /// abandoned: not delivered, and the sender knew (not `lost_message`).
    pub messages_while_moving: u64,
    /// SUBSCRIBE dialogs made again through the next target.
    pub resubscribed: u64,
}

impl Report {
    /// The table for stdout.
    pub fn table(&self) -> String {
        let mut o = String::new();
        let s = &self.setup;
        let _ = writeln!(
            o,
            "presence-loadtest {} → {} over {}: {} users, {} subscriptions, publish {}/s, message {}/s, steady {:.1} s of {:.1} s",
            s.profile.as_deref().unwrap_or("(flags)"),
            s.target,
            s.transport,
            s.users,
            s.subscriptions,
            s.publish_rate,
            s.message_rate,
            self.steady_s,
            self.elapsed_s
        );
        let _ = writeln!(
            o,
            "\n{:<10} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8}  responses",
            "method",
            "sent",
            "rate/s",
            "steady/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "p99.9",
            "retrans"
        );
        for (name, m) in &self.requests {
            let codes: Vec<String> = m
                .responses
                .iter()
                .map(|(c, n)| format!("{c}:{n}"))
                .collect();
            let mut codes = codes.join(" ");
            if m.timeouts > 0 {
                codes.push_str(&format!(" timeout:{}", m.timeouts));
            }
            let _ = writeln!(
                o,
                "{:<10} {:>9} {:>9.1} {:>9.1} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8}  {}",
                name,
                m.sent,
                m.rate_per_s,
                m.steady_rate_per_s,
                m.latency.p50_ms,
                m.latency.p90_ms,
                m.latency.p99_ms,
                m.latency.p999_ms,
                m.retransmissions,
                codes
            );
        }
        let n = &self.notify;
        let _ = writeln!(
            o,
            "{:<10} {:>9} {:>9.1} {:>9.1} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8}  change→NOTIFY latency",
            "NOTIFY in",
            n.received,
            n.per_s,
            n.steady_per_s,
            n.latency.p50_ms,
            n.latency.p90_ms,
            n.latency.p99_ms,
            n.latency.p999_ms,
            n.retransmissions
        );
        let _ = writeln!(o, "{:<10} {:>9}", "MESSAGE in", self.messages_received);
        let _ = writeln!(
            o,
            "\ncanary: {}",
            serde_json::to_string(&self.canary).unwrap_or_default()
        );
        let _ = writeln!(
            o,
            "errors: {} failed requests, {} auth failures, {} unexpected responses, {} stray requests, {} unparseable, {} send errors, {} tcp closed, {} late sends (behind)",
            self.errors,
            self.auth_failures,
            self.unexpected_responses,
            self.stray_requests,
            self.unparseable,
            self.send_errors,
            self.tcp_closed,
            self.behind
        );
        let f = &self.failover;
        if f.moves > 0 {
            let _ = writeln!(
                o,
                "failover: {} UAs moved to the next target, {} requests abandoned there, {} dialogs made again, {} NOTIFYs on given-up dialogs (481), {} MESSAGEs not delivered while a UA moved",
                f.moves,
                f.abandoned_requests,
                f.resubscribed,
                f.old_dialog_notifies,
                f.messages_while_moving
            );
        }
        let c = &self.cpu;
        let _ = writeln!(
            o,
            "tool cpu: {:.2} s user + {:.2} s sys for {} messages = {:.2} µs/message ({:.1}% of a core)",
            c.user_s,
            c.system_s,
            c.messages,
            c.per_message_us,
            c.core_share * 100.0
        );
        if self.passed {
            let _ = writeln!(o, "PASSED");
        } else {
            let _ = writeln!(o, "FAILED: {}", self.failures.join("; "));
        }
        o
    }
}

/// CPU time of this process: (user, system, total) seconds. Total is the
/// sum of the threads' run time in nanoseconds where the kernel offers it
/// (/proc/self/task/*/schedstat), else user + system.
pub fn cpu_times() -> (f64, f64, f64) {
    let (mut user, mut sys) = (0.0, 0.0);
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the ")" that ends the command name; utime and stime
        // are fields 14 and 15 (1-based), in clock ticks (USER_HZ = 100).
        if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let tick =
                |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) / 100.0;
            user = tick(11);
            sys = tick(12);
        }
    }
    let mut total_ns: u64 = 0;
    let mut any = false;
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for e in dir.flatten() {
            if let Ok(s) = std::fs::read_to_string(e.path().join("schedstat")) {
                if let Some(ns) = s
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                {
                    total_ns += ns;
                    any = true;
                }
            }
        }
    }
    let total = if any {
        total_ns as f64 / 1e9
    } else {
        user + sys
    };
    (user, sys, total)
}

//! What the run shows: the live progress line and the final report.

use super::*;

impl Engine {
    pub(super) fn show_progress(&self, sec: &stats::Second) {
        let show = self.progress.unwrap_or(self.tty);
        if !show {
            return;
        }
        let line = format!(
            "[{:>11}] {:>6.0}s  req {:>6}/s  pub {:>5}/s  notify {:>6}/s  msg {:>5}/s  req p50/p99 {:.1}/{:.1} ms  notify p50/p99 {:.1}/{:.1} ms  err {}  faults {}",
            sec.phase,
            sec.t,
            sec.requests,
            sec.publishes,
            sec.notifies,
            sec.messages_received,
            sec.req_p50_ms,
            sec.req_p99_ms,
            sec.notify_p50_ms,
            sec.notify_p99_ms,
            sec.errors,
            sec.faults
        );
        if self.tty {
            eprint!("\r{line}\x1b[K");
        } else {
            eprintln!("{line}");
        }
    }

    /// End the live line before the report.
    pub fn end_progress(&self) {
        if self.progress.unwrap_or(self.tty) && self.tty {
            eprintln!();
        }
    }

    // ------------------------------------------------------------------
    // Report
    // ------------------------------------------------------------------

    pub fn report(&self, cpu_base: (f64, f64, f64)) -> stats::Report {
        let elapsed = self.now_us() as f64 / 1e6;
        let steady_end = if self.steady_end_us > 0 {
            self.steady_end_us
        } else if self.steady_start_us > 0 {
            self.now_us()
        } else {
            0
        };
        let steady = steady_end.saturating_sub(self.steady_start_us) as f64 / 1e6;
        let rate = |n: u64, secs: f64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
        let mut requests = BTreeMap::new();
        for (i, name) in stats::METHODS.iter().enumerate() {
            let m = &self.stats.methods[i];
            requests.insert(
                *name,
                stats::MethodReport {
                    sent: m.sent,
                    retransmissions: m.retransmissions,
                    timeouts: m.timeouts,
                    rate_per_s: rate(m.sent, elapsed),
                    steady_rate_per_s: rate(m.steady_sent, steady),
                    responses: m.codes.iter().map(|(c, n)| (c.to_string(), *n)).collect(),
                    latency: stats::Percentiles::of(&m.latency),
                },
            );
        }
        let (u1, s1, t1) = stats::cpu_times();
        let (u0, s0, t0) = cpu_base;
        let messages = self.stats.wire_in + self.stats.wire_out;
        let total = (t1 - t0).max(0.0);
        let cpu = stats::CpuReport {
            user_s: (u1 - u0).max(0.0),
            system_s: (s1 - s0).max(0.0),
            total_s: total,
            messages,
            per_message_us: if messages > 0 {
                total * 1e6 / messages as f64
            } else {
                0.0
            },
            core_share: if elapsed > 0.0 { total / elapsed } else { 0.0 },
        };
        let mut failures = self.canary.failures();
        if self.stats.errors > self.s.max_errors {
            failures.push(format!(
                "{} failed requests (timeouts or unexpected non-2xx; --max-errors {})",
                self.stats.errors, self.s.max_errors
            ));
        }
        if self.stats.auth_failures > 0 {
            failures.push(format!(
                "{} authentication failures",
                self.stats.auth_failures
            ));
        }
        if self.stop.get() >= 2 {
            failures.push("interrupted".into());
        }
        let registered = self.stats.methods[M::Register as usize]
            .codes
            .iter()
            .any(|(c, _)| (200..300).contains(c));
        if !registered {
            failures.push("no REGISTER was answered 2xx".into());
        }
        if !self.subs.is_empty() && self.stats.notifies == 0 {
            failures.push("no NOTIFY arrived".into());
        }
        stats::Report {
            passed: failures.is_empty(),
            failures,
            setup: stats::Setup {
                profile: self.s.profile.clone(),
                target: self
                    .targets
                    .iter()
                    .map(|t| t.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
                transport: self.s.transport.name(),
                event: self.s.event.name(),
                users: self.s.users,
                subscriptions: self.subs.len() as u64,
                buddies: self.s.buddies,
                receptionists: self.s.receptionists,
                skew: self.s.skew,
                publish_rate: self.s.publish_rate,
                message_rate: self.s.message_rate,
                duration_s: self.s.duration,
                notify_deadline_s: self.s.notify_deadline,
                auth: self.s.password.is_some(),
                seed: self.s.seed,
            },
            elapsed_s: elapsed,
            steady_s: steady,
            requests,
            notify: stats::NotifyReport {
                received: self.stats.notifies,
                retransmissions: self.stats.notify_retransmissions,
                per_s: rate(self.stats.notifies, elapsed),
                steady_per_s: rate(self.stats.notifies_steady, steady),
                latency: stats::Percentiles::of(&self.stats.notify_latency),
            },
            messages_received: self.stats.messages_received,
            canary: self.canary.clone(),
            errors: self.stats.errors,
            send_errors: self.stats.send_errors,
            behind: self.stats.behind,
            auth_failures: self.stats.auth_failures,
            unexpected_responses: self.stats.unexpected_responses,
            stray_requests: self.stats.stray_requests,
            unparseable: self.stats.unparseable,
            tcp_closed: self.stats.tcp_closed,
            failover: self.stats.failover,
            cpu,
            timeline: self.stats.timeline.clone(),
        }
    }
}

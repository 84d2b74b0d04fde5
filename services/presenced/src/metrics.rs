//! Metrics, named `presence_<role>_<name>_<unit>[_total]` with bounded labels
//! only (method, status class, outcome, reason): see docs/metrics.md.

use prometheus::{
    exponential_buckets, Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    Opts, Registry, TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    pub edge_requests: IntCounterVec,
    pub edge_responses: IntCounterVec,
    pub edge_transaction_seconds: HistogramVec,
    pub edge_dropped: IntCounterVec,
    pub edge_retransmissions: IntCounter,
    pub edge_challenges: IntCounterVec,
    pub edge_authentications: IntCounterVec,
    pub edge_tcp_connections: IntGauge,
    pub edge_client_transactions: IntCounterVec,
    pub edge_tls_reloads: IntCounterVec,
    pub compositor_publications: IntGauge,
    pub compositor_subscriptions: IntGauge,
    pub compositor_bindings: IntGauge,
    pub compositor_documents: IntGauge,
    pub compositor_expired: IntCounterVec,
    pub compositor_store_errors: IntCounter,
    pub compositor_misrouted: IntCounter,
    pub compositor_retried_commands: IntCounterVec,
    pub compositor_authorizations: IntCounterVec,
    pub file_reloads: IntCounterVec,
    pub compositor_outbox: IntCounterVec,
    pub compositor_changes: IntCounterVec,
    pub notifier_notifies: IntCounterVec,
    pub notifier_latency_seconds: HistogramVec,
    pub notifier_rerouted: IntCounter,
    pub notifier_renumbered: IntCounter,
    pub notifier_rate_limited: IntCounter,
    pub owner_cache: crate::owner_cache::CacheMetrics,
    pub notifier_batches: IntCounterVec,
    pub notifier_queue_depth: IntGauge,
    pub api_requests: IntCounterVec,
    pub api_watch_streams: IntGauge,
    pub api_watched_resources: IntGauge,
    pub api_watch_events: IntCounterVec,
    pub api_watch_change_seconds: HistogramVec,
    pub api_messages: IntCounterVec,
    pub api_logins: IntCounterVec,
}

fn counter(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    reg.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge(reg: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    reg.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn histogram(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help)
            .buckets(exponential_buckets(0.0001, 2.0, 18).expect("buckets")),
        labels,
    )
    .expect("valid metric");
    reg.register(Box::new(h.clone())).expect("unique metric");
    h
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        let retrans = IntCounter::new(
            "presence_edge_retransmissions_absorbed_total",
            "Request retransmissions answered from the transaction table",
        )
        .expect("valid metric");
        r.register(Box::new(retrans.clone()))
            .expect("unique metric");
        let store_errors = IntCounter::new(
            "presence_compositor_store_errors_total",
            "Store operations that failed",
        )
        .expect("valid metric");
        r.register(Box::new(store_errors.clone()))
            .expect("unique metric");
        let misrouted = IntCounter::new(
            "presence_compositor_misrouted_total",
            "Requests sent through this compositor's owner subject for a shard it does not serve (dropped; the edge asks the shard itself)",
        )
        .expect("valid metric");
        r.register(Box::new(misrouted.clone()))
            .expect("unique metric");
        let rerouted = IntCounter::new(
            "presence_notifier_rerouted_total",
            "NOTIFYs sent through another edge because the watcher's edge was gone",
        )
        .expect("valid metric");
        r.register(Box::new(rerouted.clone()))
            .expect("unique metric");
        let renumbered = IntCounter::new(
            "presence_notifier_renumbered_total",
            "NOTIFYs given a new CSeq because an attempt that may have gone out was re-sent through another edge",
        )
        .expect("valid metric");
        r.register(Box::new(renumbered.clone()))
            .expect("unique metric");
        let rate_limited = IntCounter::new(
            "presence_notifier_rate_limited_total",
            "State-change NOTIFYs held back by --notify-min-interval-ms (changes meanwhile coalesced into the newest)",
        )
        .expect("valid metric");
        r.register(Box::new(rate_limited.clone()))
            .expect("unique metric");
        let cache_reads = IntCounterVec::new(
            prometheus::Opts::new(
                "presence_compositor_cache_reads_total",
                "Reads of owned shards' state answered from the compositor's memory (hit) or the store (miss)",
            ),
            &["result"],
        )
        .expect("valid metric");
        r.register(Box::new(cache_reads.clone()))
            .expect("unique metric");
        let cache_entries = IntGauge::new(
            "presence_compositor_cache_entries",
            "Keys of owned shards' state the compositor keeps in memory",
        )
        .expect("valid metric");
        r.register(Box::new(cache_entries.clone()))
            .expect("unique metric");
        let owner_cache = crate::owner_cache::CacheMetrics {
            hits: cache_reads.with_label_values(&["hit"]),
            misses: cache_reads.with_label_values(&["miss"]),
            entries: cache_entries,
        };
        let m = Metrics {
            edge_requests: counter(
                &r,
                "presence_edge_requests_total",
                "SIP requests received",
                &["method"],
            ),
            edge_responses: counter(
                &r,
                "presence_edge_responses_total",
                "SIP responses sent",
                &["method", "class"],
            ),
            edge_transaction_seconds: histogram(
                &r,
                "presence_edge_transaction_seconds",
                "Request received to final response sent",
                &["method"],
            ),
            edge_dropped: counter(
                &r,
                "presence_edge_dropped_total",
                "Messages dropped without an answer",
                &["reason"],
            ),
            edge_retransmissions: retrans,
            edge_challenges: counter(
                &r,
                "presence_edge_auth_challenges_total",
                "Digest challenges sent",
                &["stale"],
            ),
            edge_authentications: counter(
                &r,
                "presence_edge_authentications_total",
                "Requests whose Digest credentials were accepted, by algorithm",
                &["algorithm"],
            ),
            edge_tcp_connections: gauge(
                &r,
                "presence_edge_tcp_connections",
                "Open TCP and TLS connections",
            ),
            edge_tls_reloads: counter(
                &r,
                "presence_edge_tls_reloads_total",
                "TLS certificate reloads (SIGHUP or a file change), by outcome (ok: in use for new handshakes; failed: the previous one stays)",
                &["outcome"],
            ),
            edge_client_transactions: counter(
                &r,
                "presence_edge_client_transactions_total",
                "Requests we sent, by outcome",
                &["method", "outcome"],
            ),
            compositor_publications: gauge(
                &r,
                "presence_compositor_publications",
                "Live publications",
            ),
            compositor_subscriptions: gauge(
                &r,
                "presence_compositor_subscriptions",
                "Live subscriptions",
            ),
            compositor_bindings: gauge(
                &r,
                "presence_compositor_bindings",
                "Live registered contacts",
            ),
            compositor_documents: gauge(&r, "presence_compositor_documents", "Composed documents"),
            compositor_expired: counter(
                &r,
                "presence_compositor_expired_total",
                "Records ended by expiry",
                &["kind"],
            ),
            compositor_store_errors: store_errors,
            compositor_misrouted: misrouted,
            compositor_retried_commands: counter(
                &r,
                "presence_compositor_retried_commands_total",
                "Commands an edge sent again: answered with the first answer, or past their deadline and not applied",
                &["outcome"],
            ),
            compositor_authorizations: counter(
                &r,
                "presence_compositor_authorizations_total",
                "Pending watchers decided again after a policy reload: approved (now active) or rejected (ended)",
                &["outcome"],
            ),
            file_reloads: counter(
                &r,
                "presence_file_reloads_total",
                "Reloads of a configuration file (SIGHUP or a file change), by file and outcome (failed: the previous content stays)",
                &["file", "outcome"],
            ),
            compositor_outbox: counter(
                &r,
                "presence_compositor_outbox_jobs_total",
                "Notify jobs of the outbox: relayed = pushed by the relay (after a failed push, or left by a previous owner), push_failed = a push to the notify queue failed (the job stays in the outbox)",
                &["outcome"],
            ),
            compositor_changes: {
                let c = counter(
                    &r,
                    "presence_compositor_changes_total",
                    "Changes of a composed document, by event package: announced = with a notify job for its watchers, unwatched = nobody watches it, so no job",
                    &["outcome", "package"],
                );
                for outcome in ["announced", "unwatched"] {
                    for package in presence_core::packages::Registry::default().names() {
                        c.with_label_values(&[outcome, package]);
                    }
                }
                c
            },
            notifier_notifies: counter(
                &r,
                "presence_notifier_notifies_total",
                "NOTIFYs sent, by outcome",
                &["outcome"],
            ),
            notifier_latency_seconds: histogram(
                &r,
                "presence_notifier_change_to_notify_seconds",
                "State change to NOTIFY answered",
                &["event"],
            ),
            notifier_rerouted: rerouted,
            notifier_renumbered: renumbered,
            notifier_rate_limited: rate_limited,
            owner_cache,
            notifier_batches: counter(
                &r,
                "presence_notifier_fanout_batches_total",
                "Batches of large fan-outs: queued = split off a change with more watchers than --notify-batch and queued for any notifier, taken = such a batch handled here",
                &["outcome"],
            ),
            notifier_queue_depth: gauge(&r, "presence_notifier_queue_depth", "Notify jobs waiting"),
            api_requests: counter(
                &r,
                "presence_api_requests_total",
                "API calls (gRPC and the web gateway), by method and gRPC status code name",
                &["method", "code"],
            ),
            api_watch_streams: gauge(&r, "presence_api_watch_streams", "Watch streams open (gRPC and web)"),
            api_watched_resources: gauge(
                &r,
                "presence_api_watched_resources",
                "Distinct (event, AoR) pairs that this api process's streams watch",
            ),
            api_watch_events: counter(
                &r,
                "presence_api_watch_events_total",
                "Watch stream events: state (sent), coalesced (a newer state replaced one not yet sent), cut (a stream ended because its client stopped reading)",
                &["kind"],
            ),
            api_watch_change_seconds: histogram(
                &r,
                "presence_api_watch_change_seconds",
                "Change hint received to state read and handed to the streams",
                &["event"],
            ),
            api_messages: counter(
                &r,
                "presence_api_messages_total",
                "MESSAGEs sent by SendMessage, by the class of the best answer (2, 4, 5, 6; 4 includes 408 and 480)",
                &["class"],
            ),
            api_logins: counter(
                &r,
                "presence_api_logins_total",
                "Logins with SIP credentials, by outcome",
                &["outcome"],
            ),
            registry: r,
        };
        m.seed();
        m
    }

    /// Every series of a bounded label set exists from the start, at 0:
    /// `rate()` and `increase()` see the first event after a restart, and
    /// an alert on a ratio has its denominator.
    fn seed(&self) {
        let one = |c: &IntCounterVec, values: &[&str]| {
            for v in values {
                c.with_label_values(&[v]);
            }
        };
        one(
            &self.edge_dropped,
            &[
                "bad_request_answered",
                "unparseable",
                "too_many_vias",
                "too_many_headers",
                "bad_header_value",
                "tcp_framing",
                "stray_response",
                "send_failed",
                "rate_limited",
                "overload",
                "connection_limit",
                "header_timeout",
                "idle_timeout",
                "write_queue_full",
                "amplification",
                "too_big",
                "notify_backlog",
                "tls_handshake",
                "ws_handshake",
                "handshake_timeout",
                "bus_refused",
                "bus_unsealed_flow",
            ],
        );
        one(&self.edge_tls_reloads, &["ok", "failed"]);
        one(&self.compositor_authorizations, &["approved", "rejected"]);
        for outcome in ["ok", "failed"] {
            for file in ["policy", "lists", "directory", "api-tokens"] {
                self.file_reloads.with_label_values(&[file, outcome]);
            }
        }
        one(&self.edge_challenges, &["true", "false"]);
        one(&self.edge_authentications, &["MD5", "SHA-256"]);
        for method in ["NOTIFY", "MESSAGE"] {
            for outcome in ["2xx", "3xx", "4xx", "5xx", "6xx", "timeout", "superseded"] {
                self.edge_client_transactions
                    .with_label_values(&[method, outcome]);
            }
        }
        one(
            &self.compositor_expired,
            &["publication", "subscription", "binding"],
        );
        one(
            &self.compositor_retried_commands,
            &["answered_again", "past_deadline", "applied_before"],
        );
        one(&self.compositor_outbox, &["relayed", "push_failed"]);
        one(
            &self.notifier_notifies,
            &["2xx", "481", "timeout", "other", "superseded"],
        );
        one(&self.notifier_batches, &["queued", "taken"]);
        one(&self.api_watch_events, &["state", "coalesced", "cut"]);
        one(&self.api_messages, &["2", "4", "5", "6"]);
        one(&self.api_logins, &["ok", "refused"]);
    }

    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

pub fn status_class(code: u16) -> &'static str {
    match code / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        5 => "5xx",
        _ => "6xx",
    }
}

/// Bounded method label.
pub fn method_label(m: &str) -> &'static str {
    match m {
        "REGISTER" => "REGISTER",
        "PUBLISH" => "PUBLISH",
        "SUBSCRIBE" => "SUBSCRIBE",
        "NOTIFY" => "NOTIFY",
        "MESSAGE" => "MESSAGE",
        "OPTIONS" => "OPTIONS",
        "INVITE" => "INVITE",
        "ACK" => "ACK",
        "BYE" => "BYE",
        "CANCEL" => "CANCEL",
        _ => "other",
    }
}

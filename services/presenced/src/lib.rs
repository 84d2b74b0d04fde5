//! The presence server: roles as libraries, wired into one process.
//!
//! `start_all` starts the roles of `--target` (edge, compositor, notifier, and
//! always the ops HTTP server) in one process: by default all of them on the
//! in-memory store and bus, the all-in-one server; with `--redis` / `--nats`
//! any subset of them on Redis and NATS, one process of a cluster
//! (`cluster.rs` builds the backends, `leases.rs` decides which shards this
//! process's compositor owns). Each role is its own module with its own
//! `run`, programmed against the store and bus traits only.
#![forbid(unsafe_code)]

pub mod answers;
pub mod api;
pub mod cluster;
pub mod coalesce;
pub mod compositor;
pub mod config;
pub mod edge;
pub mod faults;
pub mod fenced;
pub mod gone_edges;
use faults::Faults;
pub mod guard;
pub mod leases;
pub mod metrics;
pub mod names;
pub mod notifier;
pub mod ops;
pub mod outbox;
pub mod owner_cache;
pub mod owner_routes;
pub mod recent;
pub mod reload;
pub mod roster;
pub mod trusted;

use crate::cluster::{Backends, HandoverRetry, RetryMetrics};
use crate::compositor::Compositor;
use crate::config::{Config, Roles};
use crate::edge::{Edge, EdgeConfig, Listeners};
use crate::fenced::FencedStore;
use crate::leases::{LeaseMetrics, ShardLeases};
use crate::metrics::Metrics;
use crate::notifier::Notifier;
use crate::outbox::Outbox;
use crate::owner_cache::OwnerCache;
use crate::owner_routes::OwnerRoutes;
use presence_core::commands::{Command, Reply};
use presence_core::digest::Verifier;
use presence_core::packages::Registry;
use presence_store::{Requests, Store};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::watch;

/// Wall-clock milliseconds, advanced by tokio's clock (so tests can pause and
/// advance time).
#[derive(Clone, Copy)]
pub struct Clock {
    base_unix_ms: u64,
    start: tokio::time::Instant,
}

impl Clock {
    pub fn new() -> Clock {
        let base = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Clock {
            base_unix_ms: base,
            start: tokio::time::Instant::now(),
        }
    }
    pub fn now_ms(&self) -> u64 {
        self.base_unix_ms + self.start.elapsed().as_millis() as u64
    }
    /// Microseconds since the Unix epoch, on the same clock.
    pub fn now_us(&self) -> u64 {
        self.base_unix_ms * 1000 + self.start.elapsed().as_micros() as u64
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// A running server: every role of `--target` in this process.
pub struct Server {
    /// The edge's SIP addresses (empty when this process runs no edge).
    pub sip_addrs: Vec<SocketAddr>,
    /// The edge's SIP over TLS addresses.
    pub sip_tls_addrs: Vec<SocketAddr>,
    /// The edge's SIP over WebSocket and secure WebSocket addresses.
    pub sip_ws_addrs: Vec<SocketAddr>,
    pub sip_wss_addrs: Vec<SocketAddr>,
    pub http_addr: SocketAddr,
    /// The api role's address (gRPC and the web address book).
    pub api_addr: Option<SocketAddr>,
    pub store: Arc<dyn Store>,
    pub node_id: String,
    pub roles: Roles,
    shutdown: watch::Sender<bool>,
    ready: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The edge of this process, told to go lame duck first.
    edge: Option<Arc<Edge>>,
    drain: std::time::Duration,
    /// The ops HTTP server stops last: /readyz answers 503 all along.
    ops_shutdown: watch::Sender<bool>,
    ops_task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Graceful shutdown, a sequence: `/readyz` answers 503 at once and the
    /// edge goes lame duck (OPTIONS 503, everything else served) for the
    /// drain time, so load balancers take the node out; then the roles stop
    /// taking work (a compositor hands its shard leases back after draining
    /// its queues), the edge finishes the requests in flight, every task is
    /// joined, and the ops server stops last.
    pub async fn shutdown(self) {
        let grace = std::time::Duration::from_secs(10);
        let _ = self.ready.send(false);
        if let Some(edge) = &self.edge {
            edge.drain();
        }
        if !self.drain.is_zero() {
            tracing::info!(seconds = self.drain.as_secs(), "draining");
            tokio::time::sleep(self.drain).await;
        }
        let _ = self.shutdown.send(true);
        if let Some(edge) = &self.edge {
            edge.finish_inflight(grace).await;
        }
        for t in self.tasks {
            let _ = tokio::time::timeout(grace, t).await;
        }
        let _ = self.ops_shutdown.send(true);
        let _ = tokio::time::timeout(grace, self.ops_task).await;
    }
}

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen: {0}")]
    Listen(#[from] std::io::Error),
    #[error("{0}")]
    Backend(String),
}

/// Bind every socket and start the roles of `cfg.roles`: on the in-memory
/// backends by default (the all-in-one server), on Redis and NATS when the
/// config names them.
pub async fn start_all(cfg: Config) -> Result<Server, StartError> {
    start_with_faults(cfg, Faults::default()).await
}

/// [`start_all`] with deliberate misbehaviour switched on: for tests only
/// (see `faults.rs`); no flag reaches it.
pub async fn start_with_faults(cfg: Config, faults: Faults) -> Result<Server, StartError> {
    let roles = cfg.roles;
    let listeners = if roles.edge {
        Some(Listeners::bind(&cfg.sip_listen).await?)
    } else {
        None
    };
    // TLS, WS and WSS listeners, bound now so that errors surface at start.
    let mut streams = Vec::new();
    let (mut sip_tls_addrs, mut sip_ws_addrs, mut sip_wss_addrs) =
        (Vec::new(), Vec::new(), Vec::new());
    if roles.edge {
        let origins = Arc::new(cfg.ws_origins.clone());
        for addr in &cfg.sip_ws_listen {
            let l = tokio::net::TcpListener::bind(addr).await?;
            sip_ws_addrs.push(l.local_addr()?);
            streams.push((l.local_addr()?, l, edge::StreamKind::Ws(origins.clone())));
        }
        if let Some(certs) = &cfg.tls {
            for addr in &cfg.sip_tls_listen {
                let l = tokio::net::TcpListener::bind(addr).await?;
                sip_tls_addrs.push(l.local_addr()?);
                streams.push((l.local_addr()?, l, edge::StreamKind::Tls(certs.clone())));
            }
            for addr in &cfg.sip_wss_listen {
                let l = tokio::net::TcpListener::bind(addr).await?;
                sip_wss_addrs.push(l.local_addr()?);
                streams.push((
                    l.local_addr()?,
                    l,
                    edge::StreamKind::Wss(certs.clone(), origins.clone()),
                ));
            }
        }
    }
    let api_listener = if roles.api {
        Some(tokio::net::TcpListener::bind(cfg.api_listen).await?)
    } else {
        None
    };
    let api_addr = match &api_listener {
        Some(l) => Some(l.local_addr()?),
        None => None,
    };
    let http = tokio::net::TcpListener::bind(cfg.http_listen).await?;
    let http_addr = http.local_addr()?;
    let sip_addrs: Vec<SocketAddr> = listeners
        .as_ref()
        .map(|l| l.udp.iter().map(|(a, _)| *a).collect())
        .unwrap_or_default();

    let metrics = Arc::new(Metrics::new());
    let clock = Clock::new();
    let backends = Backends::connect(&cfg, &metrics.registry)
        .await
        .map_err(StartError::Backend)?;
    let store = backends.store.clone();
    let jobs = backends.jobs.clone();
    let edge_bus = backends.edge_bus.clone();
    // Every caller of a shard rides out handovers the same way.
    let retry_metrics = RetryMetrics::register(&metrics.registry)
        .map_err(|e| StartError::Backend(e.to_string()))?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (ready_tx, ready_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    // In a cluster an edge sends a shard's requests through its owner's
    // subject, so requests for one compositor travel together
    // (owner_routes.rs).
    let routed: Arc<dyn Requests<Command, Reply>> = match &backends.leases {
        Some(leases) if roles.edge => {
            let r = OwnerRoutes::new(backends.shards_bus.clone(), leases.clone(), cfg.shards);
            tasks.push(tokio::spawn(r.clone().follow(shutdown_rx.clone())));
            r
        }
        _ => backends.shards_bus.clone(),
    };
    let shards_bus: Arc<dyn Requests<Command, Reply>> = Arc::new(HandoverRetry::new(
        routed,
        cfg.handover_wait,
        Some(retry_metrics),
    ));
    let packages = Registry::default();

    // The files every role reads (the compositor decides by the policy,
    // the notifier shows list members by it, the edge knows the lists).
    let mut files = vec![
        ("policy", cfg.policy.clone().watch_boxed()),
        ("lists", cfg.lists.clone().watch_boxed()),
    ];
    if roles.api {
        files.push(("directory", cfg.directory.clone().watch_boxed()));
        if let Some(t) = &cfg.api_tokens {
            files.push(("api-tokens", t.clone().watch_boxed()));
        }
    }
    for (file, watch) in files {
        let m = metrics.clone();
        tasks.push(tokio::spawn(watch(
            shutdown_rx.clone(),
            Box::new(move |ok| {
                m.file_reloads
                    .with_label_values(&[file, if ok { "ok" } else { "failed" }])
                    .inc();
            }),
        )));
    }
    if roles.compositor {
        let (compositor_store, leased) = match &backends.leases {
            Some(leases) => {
                let lm = LeaseMetrics::register(&metrics.registry)
                    .map_err(|e| StartError::Backend(e.to_string()))?;
                let (shard_leases, events) = ShardLeases::new(
                    leases.clone(),
                    cfg.node_id.clone(),
                    cfg.shards,
                    cfg.lease_ttl,
                    lm,
                );
                let cache = OwnerCache::new(cfg.owner_cache_entries, metrics.owner_cache.clone());
                let fenced: Arc<dyn Store> = Arc::new(
                    FencedStore::new(store.clone(), shard_leases.clone()).with_cache(cache),
                );
                (fenced, Some((shard_leases, events)))
            }
            None => (store.clone(), None),
        };
        let compositor = Arc::new(Compositor {
            store: compositor_store,
            packages: packages.clone(),
            policy: cfg.policy.clone(),
            lists: cfg.lists.clone(),
            users: cfg.users.clone(),
            clock,
            shards: cfg.shards,
            metrics: metrics.clone(),
            outbox: Outbox::new(jobs.clone(), metrics.clone()),
            recent: Default::default(),
            limits: cfg.limits,
            changes: backends.changes.clone(),
        });
        let bus = backends.shards_bus.clone();
        tasks.push(match leased {
            Some((l, events)) => {
                tokio::spawn(compositor.run_leased(bus, 4, l, events, shutdown_rx.clone()))
            }
            None => tokio::spawn(compositor.run(bus, 4, shutdown_rx.clone())),
        });
    }
    // The live edges, in a cluster: edges hold a membership lease; edges
    // and notifiers read who holds one (see roster.rs).
    let roster = match &backends.leases {
        Some(leases) if roles.edge || roles.notifier => {
            let r = crate::roster::Roster::new(leases.clone());
            tasks.push(tokio::spawn(r.clone().follow(shutdown_rx.clone())));
            if roles.edge {
                // The edge's id as it serves `edge.<id>` (below).
                tasks.push(tokio::spawn(r.clone().hold(
                    format!("edge-{}", cfg.node_id),
                    cfg.lease_ttl,
                    shutdown_rx.clone(),
                )));
            }
            Some(r)
        }
        _ => None,
    };
    if roles.notifier {
        let notifier = Arc::new(
            Notifier::new(
                store.clone(),
                jobs.clone(),
                edge_bus.clone(),
                shards_bus.clone(),
                packages.clone(),
                clock,
                cfg.shards,
                metrics.clone(),
            )
            .with_faults(faults)
            .with_batch(cfg.notify_batch)
            .with_min_interval(cfg.notify_min_interval)
            .with_roster(roster.clone())
            .with_lists(cfg.lists.clone(), cfg.policy.clone()),
        );
        tasks.push(tokio::spawn(notifier.run(4, shutdown_rx.clone())));
    }
    let mut edge_handle = None;
    if let Some(listeners) = listeners {
        let verifier = cfg.users.clone().map(|u| {
            Verifier::new(
                &cfg.nonce_secret,
                cfg.nonce_lifetime,
                u,
                cfg.digest_algorithms.clone(),
            )
        });
        // In a cluster the edge's subject must outlive a restart of the same
        // node (UDP watchers' NOTIFYs are addressed to it); alone, any name.
        let id = if cfg.nats.is_some() {
            format!("edge-{}", cfg.node_id)
        } else {
            format!("edge-{}", names::new_tag())
        };
        let edge = Arc::new(Edge::new(
            EdgeConfig {
                id,
                domains: cfg.domains.clone(),
                verifier,
                min_expires: cfg.min_expires,
                max_expires: cfg.max_expires,
                max_message: cfg.max_message_size,
                shards: cfg.shards,
                packages,
                delay_subscribe_answer: std::time::Duration::from_millis(
                    faults.delay_subscribe_answer_ms,
                ),
                limits: cfg.edge_limits,
                advertise: cfg.sip_advertise.clone(),
                // Every edge of a cluster has the same secret (Config
                // requires it), so any of them can send through a flow
                // another one sealed.
                sealer: presence_core::FlowSealer::new(&cfg.nonce_secret),
                trusted: cfg.trusted_publishers.clone(),
                lists: cfg.lists.clone(),
            },
            shards_bus.clone(),
            clock,
            metrics.clone(),
            listeners.udp,
        ));
        if let Some(r) = &roster {
            edge.follow_roster(r.clone());
        }
        edge.watch_notify_queue(jobs.clone());
        edge.serve_streams(std::mem::take(&mut streams));
        if let Some(certs) = &cfg.tls {
            let m = metrics.clone();
            tasks.push(tokio::spawn(certs.clone().watch(
                shutdown_rx.clone(),
                move |ok| {
                    m.edge_tls_reloads
                        .with_label_values(&[if ok { "ok" } else { "failed" }])
                        .inc();
                },
            )));
        }
        edge_handle = Some(edge.clone());
        tasks.push(tokio::spawn(edge.run(
            listeners.tcp,
            edge_bus,
            shutdown_rx.clone(),
        )));
    }
    if let Some(listener) = api_listener {
        let hub = api::hub::Hub::start(
            store.clone(),
            backends.changes.clone(),
            cfg.shards,
            clock,
            metrics.clone(),
            shutdown_rx.clone(),
        );
        let api = Arc::new(api::Api {
            store: store.clone(),
            owners: api::Owners {
                bus: shards_bus.clone(),
                shards: cfg.shards,
            },
            edge_bus: backends.edge_bus.clone(),
            changes: backends.changes.clone(),
            packages: Registry::default(),
            domains: cfg.domains.clone(),
            users: cfg.users.clone(),
            tokens: cfg.api_tokens.clone(),
            sessions: presence_core::apiauth::Sessions::new(&cfg.nonce_secret),
            directory: cfg.directory.clone(),
            clock,
            batch: cfg.api_batch,
            min_expires: cfg.min_expires,
            max_expires: cfg.max_expires,
            heartbeat: std::time::Duration::from_secs(30),
            node_id: cfg.node_id.clone(),
            metrics: metrics.clone(),
        });
        let service = api::grpc::Service {
            api,
            hub,
            shutdown: shutdown_rx.clone(),
        };
        tasks.push(tokio::spawn(api::grpc::serve(
            service,
            listener,
            shutdown_rx.clone(),
        )));
    }
    let ops = ops::Ops {
        metrics,
        ready: ready_rx,
        owners: api::Owners {
            bus: shards_bus,
            shards: cfg.shards,
        },
        store: store.clone(),
        admin: ops::AdminAccess {
            token: cfg.admin_token.clone(),
            domains: cfg.domains.clone(),
            packages: Registry::default(),
        },
    };
    let (ops_shutdown, ops_shutdown_rx) = watch::channel(false);
    drop(shutdown_rx);
    let ops_task = tokio::spawn(ops::serve(Arc::new(ops), http, ops_shutdown_rx));
    let _ = ready_tx.send(true);
    Ok(Server {
        sip_addrs,
        sip_tls_addrs,
        sip_ws_addrs,
        sip_wss_addrs,
        http_addr,
        api_addr,
        store,
        node_id: cfg.node_id.clone(),
        roles,
        shutdown: shutdown_tx,
        ready: ready_tx,
        tasks,
        edge: edge_handle,
        drain: cfg.drain,
        ops_shutdown,
        ops_task,
    })
}

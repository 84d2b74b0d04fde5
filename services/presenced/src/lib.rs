//! The presence server: roles as libraries, wired into one process.
//!
//! `run_all` starts every role (edge, compositor, notifier, ops HTTP) in one
//! process on the in-memory store and bus: the all-in-one server. Each role is
//! its own module with its own `run`, programmed against the store and bus
//! traits, so the cluster mode starts the same roles against Redis and NATS.
#![forbid(unsafe_code)]

pub mod compositor;
pub mod config;
pub mod edge;
pub mod metrics;
pub mod notifier;
pub mod ops;

use crate::compositor::Compositor;
use crate::config::Config;
use crate::edge::{Edge, EdgeConfig, Listeners, OutRequest, Outcome};
use crate::metrics::Metrics;
use crate::notifier::Notifier;
use presence_core::commands::{Command, NotifyJob, Reply};
use presence_core::digest::Verifier;
use presence_core::packages::Registry;
use presence_store::{MemoryBus, MemoryQueue, MemoryStore, Requests, Store, WorkQueue};
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
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// A running all-in-one server.
pub struct Server {
    pub sip_addrs: Vec<SocketAddr>,
    pub http_addr: SocketAddr,
    pub store: Arc<dyn Store>,
    shutdown: watch::Sender<bool>,
    ready: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Server {
    /// Graceful shutdown: readiness goes 503, roles stop, tasks are joined.
    pub async fn shutdown(self) {
        let _ = self.ready.send(false);
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), t).await;
        }
    }
}

/// Bind every socket and start every role on in-memory backends.
pub async fn start_all(cfg: Config) -> std::io::Result<Server> {
    let listeners = Listeners::bind(&cfg.sip_listen).await?;
    let http = tokio::net::TcpListener::bind(cfg.http_listen).await?;
    let http_addr = http.local_addr()?;
    let sip_addrs: Vec<SocketAddr> = listeners.udp.iter().map(|(a, _)| *a).collect();

    let metrics = Arc::new(Metrics::new());
    let clock = Clock::new();
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let shards_bus: Arc<dyn Requests<Command, Reply>> = Arc::new(MemoryBus::new());
    let edge_bus: Arc<dyn Requests<OutRequest, Outcome>> = Arc::new(MemoryBus::new());
    let jobs: Arc<dyn WorkQueue<NotifyJob>> = Arc::new(MemoryQueue::new());
    let packages = Registry::default();
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (ready_tx, ready_rx) = watch::channel(false);

    let compositor = Arc::new(Compositor {
        store: store.clone(),
        jobs: jobs.clone(),
        packages: packages.clone(),
        policy: cfg.policy.clone(),
        users: cfg.users.clone(),
        clock,
        shards: cfg.shards,
        metrics: metrics.clone(),
    });
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
        .with_faults(cfg.faults),
    );
    let verifier = cfg
        .users
        .clone()
        .map(|u| Verifier::new(&cfg.nonce_secret, cfg.nonce_lifetime, u));
    let edge = Arc::new(Edge::new(
        EdgeConfig {
            id: format!("edge-{}", compositor::new_tag()),
            domains: cfg.domains.clone(),
            verifier,
            min_expires: cfg.min_expires,
            max_expires: cfg.max_expires,
            max_message: cfg.max_message_size,
            shards: cfg.shards,
            packages,
            delay_subscribe_answer: std::time::Duration::from_millis(
                cfg.faults.delay_subscribe_answer_ms,
            ),
        },
        shards_bus.clone(),
        clock,
        metrics.clone(),
        listeners.udp,
    ));

    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(compositor.run(
        shards_bus.clone(),
        4,
        shutdown_rx.clone(),
    )));
    tasks.push(tokio::spawn(notifier.run(4, shutdown_rx.clone())));
    tasks.push(tokio::spawn(edge.run(
        listeners.tcp,
        edge_bus,
        shutdown_rx.clone(),
    )));
    let ops = ops::Ops {
        metrics,
        ready: ready_rx,
        shards_bus,
        store: store.clone(),
        shards: cfg.shards,
    };
    tasks.push(tokio::spawn(ops::serve(Arc::new(ops), http, shutdown_rx)));
    let _ = ready_tx.send(true);
    Ok(Server {
        sip_addrs,
        http_addr,
        store,
        shutdown: shutdown_tx,
        ready: ready_tx,
        tasks,
    })
}

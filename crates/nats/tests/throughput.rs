//! Rough throughput figures on a real `nats-server` (not a test of speed:
//! nothing is asserted about time). Run by hand:
//!
//! `cargo test -p presence-nats --release --test throughput -- --ignored --nocapture`

use presence_core::commands::{Command, NotifyJob, Reply};
use presence_nats::{
    connect, JetStreamQueue, NatsMetrics, NatsRequests, QueueConfig, RequestsConfig, Storage,
};
use presence_store::Requests;
use presence_testkit::nats::NatsServer;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

fn route() -> Command {
    Command::Route {
        aor: "sip:alice@example.com".into(),
        method: "MESSAGE".into(),
        origin: Default::default(),
        edge: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, run by hand"]
async fn request_reply_rates() {
    let server = NatsServer::start();
    let shard: NatsRequests<Command, Reply> = NatsRequests::new(
        connect(&server.url(), "shard", &Default::default())
            .await
            .expect("connect"),
        RequestsConfig::default(),
        NatsMetrics::default(),
    );
    let (tx, mut rx) = mpsc::channel(1024);
    shard.serve("shard.1", tx).await.expect("serve");
    tokio::spawn(async move {
        while let Some(inc) = rx.recv().await {
            inc.reply(Reply::Done);
        }
    });
    let edge: Arc<NatsRequests<Command, Reply>> = Arc::new(NatsRequests::new(
        connect(&server.url(), "edge", &Default::default())
            .await
            .expect("connect"),
        RequestsConfig::default(),
        NatsMetrics::default(),
    ));
    let t = Duration::from_secs(10);
    let n = 5_000;
    let start = Instant::now();
    for _ in 0..n {
        edge.request("shard.1", route(), t).await.expect("reply");
    }
    let e = start.elapsed();
    println!(
        "sequential request/reply: {n} in {e:?}: {:.0}/s, mean {:?}",
        n as f64 / e.as_secs_f64(),
        e / n
    );
    let (tasks, per) = (64, 500);
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..tasks {
        let edge = edge.clone();
        set.spawn(async move {
            for _ in 0..per {
                edge.request("shard.1", route(), t).await.expect("reply");
            }
        });
    }
    while set.join_next().await.is_some() {}
    let e = start.elapsed();
    println!(
        "{tasks} concurrent callers: {} in {e:?}: {:.0}/s",
        tasks * per,
        f64::from(tasks * per) / e.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, run by hand"]
async fn work_queue_rates() {
    let server = NatsServer::start();
    for (storage, prefetch) in [
        (Storage::File, 1),
        (Storage::File, 64),
        (Storage::Memory, 1),
        (Storage::Memory, 64),
    ] {
        let cfg = QueueConfig {
            stream: format!("BENCH_{storage:?}_{prefetch}"),
            subject: format!("bench.{storage:?}.{prefetch}"),
            storage,
            prefetch,
            ..Default::default()
        };
        let q: Arc<JetStreamQueue<NotifyJob>> = Arc::new(
            JetStreamQueue::new(
                connect(&server.url(), "bench", &Default::default())
                    .await
                    .expect("connect"),
                cfg,
                NatsMetrics::default(),
            )
            .await
            .expect("queue"),
        );
        let job = NotifyJob::Changed {
            aor: "sip:alice@example.com".into(),
            event: "presence".into(),
            version: 1,
            at_ms: 0,
        };
        let (tasks, per) = (32u32, 200u32);
        let start = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..tasks {
            let (q, job) = (q.clone(), job.clone());
            set.spawn(async move {
                for _ in 0..per {
                    q.push(&job).await.expect("push");
                }
            });
        }
        while set.join_next().await.is_some() {}
        let e = start.elapsed();
        let n = tasks * per;
        println!(
            "{storage:?} prefetch {prefetch}: push (32 concurrent, PubAck awaited) {n} in {e:?}: {:.0}/s",
            f64::from(n) / e.as_secs_f64()
        );
        let start = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        let left = Arc::new(std::sync::atomic::AtomicU32::new(n));
        for _ in 0..8 {
            let (q, left) = (q.clone(), left.clone());
            set.spawn(async move {
                while left
                    .fetch_update(
                        std::sync::atomic::Ordering::SeqCst,
                        std::sync::atomic::Ordering::SeqCst,
                        |l| l.checked_sub(1),
                    )
                    .is_ok()
                {
                    q.pull().await.expect("pull").ack();
                }
            });
        }
        while set.join_next().await.is_some() {}
        let e = start.elapsed();
        println!(
            "{storage:?} prefetch {prefetch}: pull+ack (8 workers) {n} in {e:?}: {:.0}/s",
            f64::from(n) / e.as_secs_f64()
        );
    }
}

/// CPU seconds this process has used (user + system).
fn own_cpu_seconds() -> f64 {
    presence_testkit::process_tree_cpu_seconds(std::process::id()).unwrap_or(0.0)
}

/// What handing one notify job from a shard owner to a notifier costs, by
/// mechanism, at a paced rate (issue 12: is JetStream's per-message
/// acknowledgement worth its cost on top of the Redis outbox?). For each:
/// nats-server's CPU and this process's (both sides of the hand-over run
/// here) per job, over the same number of jobs at the same rate.
///
/// - `jetstream`: push (PubAck awaited), pull, ack: today's notify queue;
/// - `request`: a core NATS request to a queue group, answered when the
///   job is taken: what a core-NATS hand-over with the outbox as the only
///   durable copy would cost (the owner clears the outbox entry on the
///   answer);
/// - `request, batched`: the same with `RequestsConfig::batch`.
///
/// `cargo test -p presence-nats --release --test throughput -- --ignored --nocapture hand_over`
/// (`HANDOVER_RATE`, default 2000 jobs/s, for 5 s each).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, run by hand"]
async fn hand_over_costs_per_job() {
    let rate: u32 = std::env::var("HANDOVER_RATE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let n = rate * 5;
    let job = NotifyJob::Changed {
        aor: "sip:alice@example.com".into(),
        event: "presence".into(),
        version: 1,
        at_ms: 0,
    };
    let server = NatsServer::start();
    let url = server.url();
    let security = presence_nats::Security::default();
    let client = |name: &'static str| connect(&url, name, &security);

    // Paced sends: one task per job, started at `rate`.
    async fn paced<F, Fut>(rate: u32, n: u32, f: F)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..n {
            tick.tick().await;
            set.spawn(f());
        }
        while set.join_next().await.is_some() {}
    }

    let report = |what: &str, nats0: f64, own0: f64| {
        let nats = server.cpu_seconds().unwrap_or(0.0) - nats0;
        let own = own_cpu_seconds() - own0;
        println!(
            "{what:>18}: {n} jobs at {rate}/s: nats-server {:.1} µs/job, clients {:.1} µs/job",
            nats * 1e6 / f64::from(n),
            own * 1e6 / f64::from(n)
        );
    };

    // JetStream, file storage (what a cluster runs).
    {
        let q: Arc<JetStreamQueue<NotifyJob>> = Arc::new(
            JetStreamQueue::new(
                client("owner").await.expect("connect"),
                QueueConfig {
                    stream: "HANDOVER".into(),
                    subject: "handover.jobs".into(),
                    ..Default::default()
                },
                NatsMetrics::default(),
            )
            .await
            .expect("queue"),
        );
        let taken = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let puller = {
            let (q, taken) = (q.clone(), taken.clone());
            tokio::spawn(async move {
                while taken.load(std::sync::atomic::Ordering::SeqCst) < n {
                    q.pull().await.expect("pull").ack();
                    taken.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (nats0, own0) = (server.cpu_seconds().unwrap_or(0.0), own_cpu_seconds());
        paced(rate, n, || {
            let (q, job) = (q.clone(), job.clone());
            async move { q.push(&job).await.expect("push") }
        })
        .await;
        puller.await.expect("puller");
        // Acks are published without waiting: let the server take them.
        tokio::time::sleep(Duration::from_millis(200)).await;
        report("jetstream", nats0, own0);
    }

    // Core request/reply, one message per job, then batched.
    for batch in [false, true] {
        let notifier: NatsRequests<NotifyJob, u32> = NatsRequests::new(
            client("notifier").await.expect("connect"),
            RequestsConfig {
                queue_group: "notifiers".into(),
                ..Default::default()
            },
            NatsMetrics::default(),
        );
        let (tx, mut rx) = mpsc::channel::<presence_store::Incoming<NotifyJob, u32>>(1024);
        let subject = format!("handover.{batch}");
        notifier.serve(&subject, tx).await.expect("serve");
        tokio::spawn(async move {
            while let Some(inc) = rx.recv().await {
                inc.reply(1);
            }
        });
        let owner: Arc<NatsRequests<NotifyJob, u32>> = Arc::new(NatsRequests::new(
            client("owner").await.expect("connect"),
            RequestsConfig {
                batch,
                ..Default::default()
            },
            NatsMetrics::default(),
        ));
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (nats0, own0) = (server.cpu_seconds().unwrap_or(0.0), own_cpu_seconds());
        paced(rate, n, || {
            let (owner, job, subject) = (owner.clone(), job.clone(), subject.clone());
            async move {
                owner
                    .request(&subject, job, Duration::from_secs(10))
                    .await
                    .expect("answer");
            }
        })
        .await;
        report(
            if batch { "request, batched" } else { "request" },
            nats0,
            own0,
        );
    }
}

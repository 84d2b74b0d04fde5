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

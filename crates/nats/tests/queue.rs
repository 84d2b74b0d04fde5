//! The JetStream work queue against a real `nats-server` (started by the
//! testkit on free ports).
//!
//! `presence_store::contract::queue_contract` takes a `&dyn WorkQueue`, which
//! JetStreamQueue cannot implement until `Delivery` can carry a backend's ack
//! handle (see the crate report); `same_steps_as_the_queue_contract` runs the
//! contract's steps on the inherent API meanwhile, with one difference that
//! JetStream imposes: a job released unacked may come back before or after
//! the next new job.

use presence_core::commands::NotifyJob;
use presence_nats::{connect, JetStreamQueue, NatsMetrics, QueueConfig, Storage};
use presence_testkit::nats::NatsServer;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Generous: a test waits this long for something that should happen.
const PATIENCE: Duration = Duration::from_secs(30);

fn config(storage: Storage) -> QueueConfig {
    QueueConfig {
        stream: "TEST_JOBS".into(),
        subject: "test.jobs".into(),
        durable: "workers".into(),
        storage,
        ..Default::default()
    }
}

async fn queue<J: presence_nats::Envelope + Send + 'static>(
    server: &NatsServer,
    cfg: QueueConfig,
) -> JetStreamQueue<J> {
    let client = connect(&server.url(), "queue-test", &Default::default())
        .await
        .expect("connect");
    JetStreamQueue::new(client, cfg, NatsMetrics::default())
        .await
        .expect("queue")
}

async fn pull_within<J: presence_nats::Envelope + Send + 'static>(
    q: &JetStreamQueue<J>,
) -> presence_nats::JsDelivery<J> {
    tokio::time::timeout(PATIENCE, q.pull())
        .await
        .expect("a job within the deadline")
        .expect("pull")
}

#[tokio::test]
async fn same_steps_as_the_queue_contract() {
    let server = NatsServer::start();
    let q: JetStreamQueue<u32> = queue(&server, config(Storage::Memory)).await;
    for i in 1..=3 {
        q.push(&i).await.expect("push");
    }
    assert_eq!(q.depth(), 3);
    let d1 = pull_within(&q).await;
    assert_eq!((*d1.job(), d1.redelivered), (1, false));
    d1.ack();
    let d2 = pull_within(&q).await;
    assert_eq!((*d2.job(), d2.redelivered), (2, false));
    drop(d2); // not acked: redelivered
    let a = pull_within(&q).await;
    let b = pull_within(&q).await;
    let mut got = vec![(*a.job(), a.redelivered), (*b.job(), b.redelivered)];
    got.sort();
    assert_eq!(got, vec![(2, true), (3, false)]);
    a.ack();
    b.ack();
    assert_eq!(q.depth(), 0);
    // A puller waiting on an empty queue wakes on push.
    let waiter = async {
        let d = pull_within(&q).await;
        let j = *d.job();
        d.ack();
        j
    };
    let pusher = async {
        tokio::time::sleep(Duration::from_millis(10)).await;
        q.push(&42).await.expect("push");
    };
    let (got, ()) = tokio::join!(waiter, pusher);
    assert_eq!(got, 42);
    // Everything acked: the work-queue stream holds nothing any more.
    let acked_everything = async {
        loop {
            let jsz = server
                .monitor_get("/jsz?streams=true")
                .map(|(_, b)| b)
                .unwrap_or_default();
            if jsz.contains("\"messages\": 0") || jsz.contains("\"messages\":0") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(PATIENCE, acked_everything)
        .await
        .expect("stream empty after acks");
}

#[tokio::test]
async fn notify_jobs_travel_as_protobuf() {
    let server = NatsServer::start();
    let q: JetStreamQueue<NotifyJob> = queue(&server, config(Storage::File)).await;
    let job = NotifyJob::Changed {
        aor: "sip:alice@example.com".into(),
        event: "presence".into(),
        version: 17,
        at_ms: 1_700_000_000_000,
    };
    q.push(&job).await.expect("push");
    let d = pull_within(&q).await;
    assert_eq!(format!("{:?}", d.job()), format!("{job:?}"));
    d.ack_confirmed().await.expect("ack");
}

#[tokio::test]
async fn pushed_jobs_survive_a_nats_server_restart() {
    let mut server = NatsServer::start();
    let q: JetStreamQueue<u32> = queue(&server, config(Storage::File)).await;
    for i in 0..20u32 {
        q.push(&i).await.expect("push");
    }
    server.restart(); // kill -9, then start again on the same port and store
                      // The same client reconnects by itself; every job is still there.
    let mut got = HashSet::new();
    while got.len() < 20 {
        let d = pull_within(&q).await;
        got.insert(*d.job());
        d.ack();
    }
    assert_eq!(got, (0..20).collect::<HashSet<u32>>());
    // And pushing works again after the restart.
    let pushed = async {
        loop {
            if q.push(&99).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(PATIENCE, pushed)
        .await
        .expect("push after restart");
    let d = pull_within(&q).await;
    assert_eq!(*d.job(), 99);
    d.ack();
}

#[tokio::test]
async fn a_job_dropped_unacked_is_redelivered() {
    let server = NatsServer::start();
    let q: JetStreamQueue<u32> = queue(&server, config(Storage::File)).await;
    q.push(&7).await.expect("push");
    let first = pull_within(&q).await;
    assert_eq!(
        (*first.job(), first.redelivered, first.delivery_count),
        (7, false, 1)
    );
    drop(first);
    let again = pull_within(&q).await;
    assert_eq!(
        (*again.job(), again.redelivered, again.delivery_count),
        (7, true, 2)
    );
    again.ack();
}

#[tokio::test]
async fn a_released_job_goes_to_another_puller() {
    let server = NatsServer::start();
    // Without prefetch, the releasing process holds no pull request open, so
    // the job goes to whoever asks next (with prefetch it may come back to
    // the same process).
    let cfg = QueueConfig {
        prefetch: 1,
        ..config(Storage::File)
    };
    let a: JetStreamQueue<u32> = queue(&server, cfg.clone()).await;
    let b: JetStreamQueue<u32> = queue(&server, cfg).await;
    a.push(&7).await.expect("push");
    let first = pull_within(&a).await;
    assert_eq!((*first.job(), first.redelivered), (7, false));
    first.release();
    let again = pull_within(&b).await;
    assert_eq!(
        (*again.job(), again.redelivered, again.delivery_count),
        (7, true, 2)
    );
    again.ack();
}

#[tokio::test]
async fn jobs_prefetched_by_a_stopped_queue_go_to_another_at_once() {
    let server = NatsServer::start();
    // ack_wait far beyond the test's patience: only the release on drop can
    // hand the prefetched jobs over in time.
    let cfg = QueueConfig {
        ack_wait: Duration::from_secs(3600),
        ..config(Storage::File)
    };
    let a: JetStreamQueue<u32> = queue(&server, cfg.clone()).await;
    for i in 0..10u32 {
        a.push(&i).await.expect("push");
    }
    let first = pull_within(&a).await; // asks for a batch: the rest waits in `a`
    first.ack();
    drop(a);
    let b: JetStreamQueue<u32> = queue(&server, cfg).await;
    let mut got = HashSet::new();
    while got.len() < 9 {
        let d = pull_within(&b).await;
        got.insert(*d.job());
        d.ack();
    }
    assert_eq!(got.len(), 9);
}

#[tokio::test]
async fn a_job_held_by_a_dead_puller_comes_back_after_ack_wait() {
    let server = NatsServer::start();
    let cfg = QueueConfig {
        ack_wait: Duration::from_secs(1),
        ..config(Storage::File)
    };
    let pusher: JetStreamQueue<u32> = queue(&server, cfg.clone()).await;
    pusher.push(&5).await.expect("push");
    {
        // A puller whose process dies holding the job: no nak ever comes.
        let client = connect(&server.url(), "doomed", &Default::default())
            .await
            .expect("connect");
        let doomed: JetStreamQueue<u32> =
            JetStreamQueue::new(client.clone(), cfg.clone(), NatsMetrics::default())
                .await
                .expect("queue");
        let held = pull_within(&doomed).await;
        assert_eq!(*held.job(), 5);
        std::mem::forget(held); // never settled
        client.drain().await.expect("close the connection");
    }
    let survivor: JetStreamQueue<u32> = queue(&server, cfg).await;
    let d = pull_within(&survivor).await;
    assert_eq!((*d.job(), d.redelivered), (5, true));
    d.ack();
}

#[tokio::test]
async fn two_pullers_never_hold_the_same_job_at_once() {
    let server = NatsServer::start();
    let cfg = config(Storage::Memory);
    let pushers: JetStreamQueue<u32> = queue(&server, cfg.clone()).await;
    const JOBS: u32 = 300;
    for i in 0..JOBS {
        pushers.push(&i).await.expect("push");
    }
    let held: Arc<Mutex<HashSet<u32>>> = Arc::default();
    let done: Arc<Mutex<Vec<u32>>> = Arc::default();
    let mut workers = vec![];
    for w in 0..2 {
        let q: JetStreamQueue<u32> = queue(&server, cfg.clone()).await;
        let (held, done) = (held.clone(), done.clone());
        workers.push(tokio::spawn(async move {
            loop {
                if done.lock().expect("lock").len() >= JOBS as usize {
                    return;
                }
                let Ok(Ok(d)) = tokio::time::timeout(Duration::from_millis(500), q.pull()).await
                else {
                    continue;
                };
                let j = *d.job();
                assert!(
                    held.lock().expect("lock").insert(j),
                    "worker {w} got job {j} while another worker held it"
                );
                tokio::task::yield_now().await;
                held.lock().expect("lock").remove(&j);
                done.lock().expect("lock").push(j);
                d.ack();
            }
        }));
    }
    for w in workers {
        tokio::time::timeout(PATIENCE * 2, w)
            .await
            .expect("workers finish")
            .expect("worker did not panic");
    }
    let mut done = done.lock().expect("lock").clone();
    done.sort();
    assert_eq!(done, (0..JOBS).collect::<Vec<_>>(), "each job exactly once");
}

#[tokio::test]
async fn an_undecodable_job_is_dropped_and_the_next_one_served() {
    let server = NatsServer::start();
    let cfg = config(Storage::Memory);
    let raw: JetStreamQueue<u32> = queue(&server, cfg.clone()).await;
    let jobs: JetStreamQueue<NotifyJob> = queue(&server, cfg).await;
    raw.push(&0xdead_beef).await.expect("push garbage");
    jobs.push(&NotifyJob::Refresh { id: "s1".into() })
        .await
        .expect("push");
    let d = pull_within(&jobs).await;
    assert!(matches!(d.job(), NotifyJob::Refresh { id } if id == "s1"));
    d.ack();
}

#[tokio::test]
async fn metrics_show_pending_and_redeliveries() {
    let server = NatsServer::start();
    let registry = prometheus::Registry::new();
    let metrics = NatsMetrics::new(&registry).expect("register");
    let client = connect(&server.url(), "metrics", &Default::default())
        .await
        .expect("connect");
    let q: JetStreamQueue<u32> =
        JetStreamQueue::new(client, config(Storage::Memory), metrics.clone())
            .await
            .expect("queue");
    q.push(&1).await.expect("push");
    q.push(&2).await.expect("push");
    assert_eq!(metrics.jetstream_pending.get(), 2);
    drop(pull_within(&q).await);
    let mut redelivered = false;
    for _ in 0..2 {
        let d = pull_within(&q).await;
        redelivered |= d.redelivered;
        d.ack();
    }
    assert!(redelivered);
    assert_eq!(metrics.jetstream_redeliveries.get(), 1);
    assert_eq!(metrics.jetstream_pending.get(), 0);
    assert_eq!(
        metrics
            .publish_seconds
            .with_label_values(&["notify"])
            .get_sample_count(),
        2
    );
}

#[tokio::test]
async fn a_memory_queue_is_created_again_after_a_restart() {
    let mut server = NatsServer::start();
    let q: JetStreamQueue<u32> = queue(&server, config(Storage::Memory)).await;
    q.push(&1).await.expect("push");
    server.restart(); // memory storage: the stream and the consumer are gone
    let pushed = async {
        loop {
            if q.push(&2).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(PATIENCE, pushed)
        .await
        .expect("push recreates the stream");
    let d = pull_within(&q).await;
    assert_eq!(
        (*d.job(), d.redelivered),
        (2, false),
        "job 1 was lost with the memory stream"
    );
    d.ack();
}

/// The shared queue contract, through the store's `WorkQueue` trait.
#[tokio::test]
async fn queue_contract_on_nats() {
    let server = NatsServer::start();
    let q: JetStreamQueue<u32> = queue(&server, config(Storage::Memory)).await;
    presence_store::contract::queue_contract(&q).await;
}

/// A full stream refuses new jobs (the pusher keeps them: the compositor's
/// outbox) and drops none it holds; once jobs are acked, pushes go through
/// again.
#[tokio::test]
async fn a_full_stream_refuses_new_jobs_and_keeps_the_old() {
    let server = NatsServer::start();
    let cfg = QueueConfig {
        max_bytes: 4096,
        prefetch: 1,
        ..config(Storage::File)
    };
    let q: JetStreamQueue<u32> = queue(&server, cfg).await;
    let mut pushed = 0u32;
    let refused = loop {
        match q.push(&pushed).await {
            Ok(()) => pushed += 1,
            Err(e) => break e,
        }
        assert!(pushed < 10_000, "a 4 KB stream took {pushed} jobs");
    };
    assert!(pushed > 0, "nothing fit");
    assert!(
        refused
            .to_string()
            .to_ascii_lowercase()
            .contains("maximum bytes"),
        "{refused}"
    );
    // The oldest job is still there, first.
    let d = pull_within(&q).await;
    assert_eq!(*d.job(), 0);
    d.ack();
    // Room again.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while q.push(&pushed).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no room after an ack"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Processes that start together all create the stream and the consumer.
/// A server whose file store has room for the stream once (not twice)
/// refuses a second create with "insufficient storage resources" rather
/// than "exists": every process must still get the queue (a notifier used
/// to exit at start there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_starting_together_all_get_the_queue() {
    let server = NatsServer::start_with_file_store("1536MB");
    let cfg = QueueConfig {
        max_bytes: 1 << 30,
        ..config(Storage::File)
    };
    let mut starts = Vec::new();
    for i in 0..8 {
        let url = server.url();
        let cfg = cfg.clone();
        starts.push(tokio::spawn(async move {
            let client = connect(&url, &format!("starter-{i}"), &Default::default())
                .await
                .expect("connect");
            JetStreamQueue::<NotifyJob>::new(client, cfg, NatsMetrics::default())
                .await
                .map(|_| ())
        }));
    }
    for s in starts {
        s.await.unwrap().expect("every process gets the queue");
    }
}

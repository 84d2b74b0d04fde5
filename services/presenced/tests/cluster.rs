//! Cluster mode against real parts: a `redis-server` and a `nats-server`
//! (started by the testkit on free ports) and `presenced` roles as child
//! processes of the built binary, one role per process, as in production.
//!
//! - a watcher subscribed through one edge gets the NOTIFYs of a presentity
//!   that publishes through another;
//! - `kill -9` of a compositor: the other takes its shards over and a
//!   PUBLISH refreshing a publication made before the kill succeeds (no state
//!   lost); the takeover time is printed;
//! - a graceful stop (SIGTERM) hands the shards back at once;
//! - a stale owner's write is fenced (library level, on real Redis);
//! - a notify job whose push fails (nats-server down) stays in the Redis
//!   outbox and is relayed when NATS is back (library level, real parts);
//! - a change with more watchers than `--notify-batch` is shared in batches;
//! - the core end-to-end scenarios (REGISTER, PUBLISH, SUBSCRIBE, MESSAGE,
//!   Digest) with the parties on different edges.
//!
//! The tests share the machine's few cores, so they run one at a time.

mod common;
mod harness;

use common::{body_str, pidf, Tp, Ua, WAIT};
use harness::{metric_sum, Cluster, PATIENCE};
use presence_core::shard_of;
use presence_redis::{RedisConfig, RedisStore};
use presence_sip::HeaderAccess;
use presence_store::{Lease, Leases, Op, Store, StoreError};
use presence_testkit::redis::RedisServer;
use presenced::fenced::FencedStore;
use presenced::leases::{LeaseMetrics, ShardLeases};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One cluster test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const SHARDS: u32 = 16;

/// The cluster of these tests (the harness is shared with tests/failover.rs).
fn start(edges: usize, compositors: usize, notifiers: usize, extra: &[&str]) -> Cluster {
    Cluster::start("cluster", SHARDS, (edges, compositors, notifiers), extra)
}

/// The cluster's Redis, as a lease table to read.
async fn leases(c: &Cluster) -> RedisStore {
    RedisStore::connect(
        RedisConfig::new(&c.redis.url(), SHARDS).expect("redis config"),
        &prometheus::Registry::new(),
    )
    .await
    .expect("connect to redis")
}

/// A user whose AoR lands in a shard `pred` accepts.
fn user_in(pred: impl Fn(u32) -> bool) -> String {
    (0..10_000)
        .map(|i| format!("user{i}"))
        .find(|u| pred(shard_of(&format!("sip:{u}@example.com"), SHARDS)))
        .expect("some user lands there")
}

async fn publish(ua: &mut Ua, etag: Option<&str>, note: &str) -> presence_sip::Response {
    let aor = ua.aor.clone();
    let mut req = ua
        .req("PUBLISH", &aor)
        .h("Event", "presence")
        .h("Expires", "600");
    if let Some(e) = etag {
        req = req.h("SIP-If-Match", e);
    }
    let req = req.body("application/pidf+xml", pidf(&aor, "t1", true, note));
    ua.send(&req).await
}

async fn register(ua: &mut Ua, expires: u32) -> presence_sip::Response {
    let aor = ua.aor.clone();
    let contact = format!("<{}>", ua.contact_uri());
    let req = ua
        .req("REGISTER", "sip:example.com")
        .to(&aor)
        .h("Contact", contact)
        .h("Expires", expires.to_string());
    ua.send(&req).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_on_one_edge_sees_a_publish_through_another() {
    let _serial = SERIAL.lock().await;
    let c = start(2, 2, 1, &[]);
    let mut alice = Ua::new(Tp::Udp, c.edge(0), "alice").await;
    let mut bob = Ua::new(Tp::Tcp, c.edge(1), "bob").await;
    let aor = alice.aor.clone();
    let r = publish(&mut alice, None, "first-note").await;
    assert_eq!(r.code, 200, "{}\n{}", r.reason, c.logs());
    let etag = r.sip_etag().expect("SIP-ETag").to_string();

    let (r, _dialog, _sub) = bob.subscribe(&aor, 600).await;
    assert_eq!(r.code, 200, "{}", r.reason);
    let n = bob.notify_containing("first-note", PATIENCE).await;
    assert!(body_str(&n).contains("<basic>open</basic>"));

    let r = publish(&mut alice, Some(&etag), "second-note").await;
    assert_eq!(r.code, 200, "{}", r.reason);
    let n2 = bob.notify_containing("second-note", PATIENCE).await;
    assert!(n2.cseq().expect("CSeq").0 > n.cseq().expect("CSeq").0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_compositors_shards_are_taken_over_without_loss() {
    let _serial = SERIAL.lock().await;
    let mut c = start(1, 2, 1, &[]);
    let owned = c.owned_by();
    assert!(
        owned.iter().all(|(_, n)| *n > 0),
        "both own shards: {owned:?}"
    );
    let redis = leases(&c).await;
    let mut victim_shards = Vec::new();
    for s in 0..SHARDS {
        if redis.owner_of(s).await.expect("owner").map(|l| l.owner) == Some("comp1".into()) {
            victim_shards.push(s);
        }
    }
    assert!(!victim_shards.is_empty());
    let user = user_in(|s| victim_shards.contains(&s));
    let shard = shard_of(&format!("sip:{user}@example.com"), SHARDS);
    let mut alice = Ua::new(Tp::Tcp, c.edge(0), &user).await;
    let mut bob = Ua::new(Tp::Udp, c.edge(0), "bob").await;
    let aor = alice.aor.clone();
    let r = publish(&mut alice, None, "before-kill").await;
    assert_eq!(r.code, 200, "{}", r.reason);
    let etag = r.sip_etag().expect("SIP-ETag").to_string();
    let (r, _, _) = bob.subscribe(&aor, 600).await;
    assert_eq!(r.code, 200);
    bob.notify_containing("before-kill", PATIENCE).await;

    let killed_at = Instant::now();
    c.kill9("comp1");
    // The survivor holds the shard again.
    let takeover = loop {
        let owner = redis.owner_of(shard).await.expect("owner").map(|l| l.owner);
        if owner.as_deref() == Some("comp0") {
            break killed_at.elapsed();
        }
        assert!(killed_at.elapsed() < PATIENCE, "no takeover\n{}", c.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // A refresh of the publication made before the kill: the state is there
    // (an unknown entity-tag would get 412). The edge rides out the handover.
    let served = loop {
        let mut req = alice
            .req("PUBLISH", &aor)
            .h("Event", "presence")
            .h("Expires", "600")
            .h("SIP-If-Match", etag.clone());
        req = req.body("application/pidf+xml", pidf(&aor, "t1", true, "after-kill"));
        alice.send_raw(&req.encode(Tp::Tcp, alice.local)).await;
        match alice
            .response_within(&req.branch, Duration::from_secs(15))
            .await
        {
            Some(r) if r.code == 200 => break killed_at.elapsed(),
            Some(r) if r.code == 503 => {}
            Some(r) => panic!("PUBLISH after the kill: {} {}", r.code, r.reason),
            None => {}
        }
        assert!(killed_at.elapsed() < PATIENCE, "no answer\n{}", c.logs());
    };
    bob.notify_containing("after-kill", PATIENCE).await;
    println!(
        "takeover: shard {shard} owned again {:.2} s after kill -9, first PUBLISH answered 200 at {:.2} s",
        takeover.as_secs_f64(),
        served.as_secs_f64()
    );
    c.wait_ready();
    assert_eq!(c.owned_by(), vec![("comp0".to_string(), SHARDS)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gracefully_stopped_compositor_hands_its_shards_back_at_once() {
    let _serial = SERIAL.lock().await;
    // Long leases: a takeover within the test's wait can only come from the
    // released leases, not from their expiry.
    let mut c = start(1, 2, 1, &["--lease-ttl-ms", "60000"]);
    let stopped_at = Instant::now();
    c.terminate("comp1");
    let exit = stopped_at.elapsed();
    loop {
        if c.owned_by() == vec![("comp0".to_string(), SHARDS)] {
            break;
        }
        assert!(
            stopped_at.elapsed() < Duration::from_secs(50),
            "shards not taken over after a graceful stop: {:?}\n{}",
            c.owned_by(),
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "graceful handover: exit {:.2} s, all shards owned by the survivor {:.2} s after SIGTERM",
        exit.as_secs_f64(),
        stopped_at.elapsed().as_secs_f64()
    );
    let mut alice = Ua::new(Tp::Udp, c.edge(0), "alice").await;
    let r = publish(&mut alice, None, "after-stop").await;
    assert_eq!(r.code, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_owners_write_is_fenced() {
    let _serial = SERIAL.lock().await;
    let server = RedisServer::start();
    let connect = || async {
        Arc::new(
            RedisStore::connect(
                RedisConfig::new(&server.url(), SHARDS).expect("config"),
                &prometheus::Registry::new(),
            )
            .await
            .expect("connect"),
        )
    };
    let redis_a = connect().await;
    let redis_b = connect().await;
    let ttl = Duration::from_millis(600);
    let manager = |redis: Arc<RedisStore>, owner: &str| {
        ShardLeases::new(
            redis,
            owner.into(),
            SHARDS,
            ttl,
            LeaseMetrics::register(&prometheus::Registry::new()).expect("metrics"),
        )
    };
    let (a, _ea) = manager(redis_a.clone(), "a");
    a.cycle(true).await;
    a.cycle(false).await;
    assert_eq!(a.owned().len(), SHARDS as usize);
    let store_a = FencedStore::new(redis_a.clone(), a.clone());
    let aor = "sip:alice@example.com";
    let shard = shard_of(aor, SHARDS);
    let mark = || vec![Op::MarkKnown { aor: aor.into() }];
    store_a.commit(shard, mark()).await.expect("owner writes");
    let stale = a.fence(shard).expect("a holds it");

    // a stalls (no renewals) past its TTL; b takes the shard.
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    let (b, _eb) = manager(redis_b.clone(), "b");
    b.cycle(true).await;
    b.cycle(false).await;
    let fresh = b.fence(shard).expect("b took it");
    assert!(fresh > stale);
    // a wakes up and writes with its old token: refused, nothing changes,
    // and a stops considering itself the owner.
    let stale = Lease {
        owner: "a".into(),
        token: stale,
    };
    let r = store_a.commit_fenced(shard, &stale, mark()).await;
    assert_eq!(r, Err(StoreError::Fenced));
    assert!(a.fence(shard).is_none());
    assert_eq!(
        store_a.commit(shard, mark()).await,
        Err(StoreError::Fenced),
        "no write without the lease"
    );
    let store_b = FencedStore::new(redis_b.clone(), b.clone());
    store_b
        .commit(shard, mark())
        .await
        .expect("new owner writes");
    assert_eq!(
        redis_b
            .owner_of(shard)
            .await
            .expect("owner")
            .map(|l| l.owner),
        Some("b".to_string())
    );
}

const USERS: &str = "alice@example.com:secret\nbob@example.com:hunter2\n";

/// The e2e suite's core scenarios with the parties on different edges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_scenarios_across_edges() {
    let _serial = SERIAL.lock().await;
    let c = start(2, 2, 1, &[]);
    let (a, b) = (c.edge(0), c.edge(1));

    // REGISTER through one edge, query through the other.
    let mut bob = Ua::new(Tp::Udp, b, "bob").await;
    let r = register(&mut bob, 600).await;
    assert_eq!(r.code, 200, "{}", r.reason);
    let mut bob_elsewhere = Ua::new(Tp::Tcp, a, "bob").await;
    let aor = bob_elsewhere.aor.clone();
    let q = bob_elsewhere.req("REGISTER", "sip:example.com").to(&aor);
    let r = bob_elsewhere.send(&q).await;
    assert_eq!(r.code, 200);
    assert!(
        r.header("Contact")
            .is_some_and(|c| c.contains(&bob.contact_uri())),
        "binding visible from the other edge: {:?}",
        r.header("Contact")
    );

    // PUBLISH: create, modify, unknown tag, remove.
    let mut alice = Ua::new(Tp::Tcp, a, "alice").await;
    let r = publish(&mut alice, None, "one").await;
    assert_eq!(r.code, 200);
    let e1 = r.sip_etag().expect("etag").to_string();
    let r = publish(&mut alice, Some("nope"), "x").await;
    assert_eq!(r.code, 412);

    // SUBSCRIBE through the other edge: NOTIFYs in order, refresh, end.
    let (r, dialog, sub) = bob.subscribe(&alice.aor.clone(), 600).await;
    assert_eq!(r.code, 200);
    let mut cseqs = vec![
        bob.notify_containing("one", PATIENCE)
            .await
            .cseq()
            .expect("cseq")
            .0,
    ];
    let r = publish(&mut alice, Some(&e1), "two").await;
    assert_eq!(r.code, 200);
    let e2 = r.sip_etag().expect("etag").to_string();
    cseqs.push(
        bob.notify_containing("two", PATIENCE)
            .await
            .cseq()
            .expect("cseq")
            .0,
    );
    let mut unsub = sub.next().in_dialog(&dialog);
    unsub.headers.retain(|(n, _)| n != "Expires");
    let unsub = unsub.h("Expires", "0");
    let r = bob.send(&unsub).await;
    assert_eq!(r.code, 200, "{}", r.reason);
    let n = bob.notify().await;
    assert_eq!(
        n.header("Subscription-State").map(|s| s.replace(' ', "")),
        Some("terminated;reason=timeout".to_string())
    );
    cseqs.push(n.cseq().expect("cseq").0);
    assert!(cseqs.windows(2).all(|w| w[0] < w[1]), "CSeqs {cseqs:?}");
    let mut remove = alice
        .req("PUBLISH", &alice.aor.clone())
        .h("Event", "presence")
        .h("Expires", "0");
    remove = remove.h("SIP-If-Match", e2);
    assert_eq!(alice.send(&remove).await.code, 200);

    // MESSAGE from an edge to a UA registered through the other.
    let req = alice
        .req("MESSAGE", "sip:bob@example.com")
        .body("text/plain;charset=UTF-8", "hej från a");
    let r = alice.send(&req).await;
    assert_eq!(r.code, 200, "{}", r.reason);
    let m = bob.recv_request("MESSAGE", WAIT).await.expect("MESSAGE");
    assert_eq!(&m.body[..], "hej från a".as_bytes());
    drop(c);
}

/// Digest with a nonce from one edge verified by another (shared secret).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_nonces_work_on_every_edge() {
    let _serial = SERIAL.lock().await;
    let users = common::TempFile::new(USERS);
    let path = users.0.display().to_string();
    let c = start(2, 1, 1, &["--users", &path]);
    let mut alice_a = Ua::new(Tp::Udp, c.edge(0), "alice").await;
    let aor = alice_a.aor.clone();
    let req = alice_a
        .req("PUBLISH", &aor)
        .h("Event", "presence")
        .h("Expires", "600")
        .body("application/pidf+xml", pidf(&aor, "t1", true, "auth"));
    let r = alice_a.send(&req).await;
    assert_eq!(r.code, 401);
    // Answer the challenge of edge 0 through edge 1.
    let mut alice_b = Ua::new(Tp::Udp, c.edge(1), "alice").await;
    let retry =
        common::authorize(&r, &req, "MD5", "alice", "secret", None).expect("an MD5 challenge");
    let r = alice_b.send(&retry).await;
    assert_eq!(r.code, 200, "{} {}", r.code, r.reason);
}

/// A change with more watchers than `--notify-batch` is split into batches
/// that go back on the notify queue for any notifier: every watcher still
/// gets the new document, and every queued batch is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_fan_out_is_shared_in_batches() {
    let _serial = SERIAL.lock().await;
    const WATCHERS: usize = 23;
    const BATCH: usize = 5;
    let c = start(2, 1, 2, &["--notify-batch", "5"]);
    let mut alice = Ua::new(Tp::Udp, c.edge(0), "alice").await;
    let aor = alice.aor.clone();
    let r = publish(&mut alice, None, "before").await;
    assert_eq!(r.code, 200, "{}", r.reason);
    let etag = r.sip_etag().expect("SIP-ETag").to_string();
    let mut watchers = Vec::new();
    for i in 0..WATCHERS {
        let mut w = Ua::new(Tp::Udp, c.edge(i % 2), &format!("watcher{i}")).await;
        let (r, _, _) = w.subscribe(&aor, 600).await;
        assert_eq!(r.code, 200, "{}", r.reason);
        w.notify_containing("before", PATIENCE).await;
        watchers.push(w);
    }
    let r = publish(&mut alice, Some(&etag), "after").await;
    assert_eq!(r.code, 200, "{}", r.reason);
    for w in &mut watchers {
        w.notify_containing("after", PATIENCE).await;
    }
    let batches = |outcome: &str| -> (f64, Vec<f64>) {
        let per: Vec<f64> = c
            .live("notifier")
            .map(|p| {
                metric_sum(
                    p.http,
                    "presence_notifier_fanout_batches_total",
                    &format!("outcome=\"{outcome}\""),
                )
                .unwrap_or(0.0)
            })
            .collect();
        (per.iter().sum(), per)
    };
    let want = WATCHERS.div_ceil(BATCH) as f64 - 1.0;
    let (queued, _) = batches("queued");
    let (taken, per) = batches("taken");
    assert!(queued >= want, "{queued} batches queued, want {want}");
    assert!(
        taken >= queued,
        "every queued batch is taken: {taken} of {queued}"
    );
    println!(
        "fan-out of {WATCHERS} in batches of {BATCH}: {queued} queued, taken per notifier {per:?}"
    );
}

/// The outbox on real parts: a notify job whose JetStream push fails (the
/// nats-server is down) stays in the shard's outbox in Redis, and the relay
/// pushes it once NATS is back; then the outbox is empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_push_fails_is_relayed_when_nats_is_back() {
    use presence_core::commands::NotifyJob;
    use presence_nats::{JetStreamQueue, NatsMetrics, QueueConfig};
    use presence_testkit::nats::NatsServer;
    use presenced::outbox::Outbox;

    let _serial = SERIAL.lock().await;
    let redis = RedisServer::start();
    let mut nats = NatsServer::start();
    let store = RedisStore::connect(
        RedisConfig::new(&redis.url(), SHARDS).expect("redis config"),
        &prometheus::Registry::new(),
    )
    .await
    .expect("connect to redis");
    let client = presence_nats::connect(&nats.url(), "outbox-test", &Default::default())
        .await
        .expect("connect to nats");
    let queue: Arc<JetStreamQueue<NotifyJob>> = Arc::new(
        JetStreamQueue::new(client, QueueConfig::default(), NatsMetrics::default())
            .await
            .expect("queue"),
    );
    let metrics = Arc::new(presenced::metrics::Metrics::new());
    let outbox = Outbox::new(queue.clone(), metrics.clone());
    let counted = |outcome: &str| {
        metrics
            .compositor_outbox
            .with_label_values(&[outcome])
            .get()
    };
    let job = NotifyJob::Refresh { id: "sub-1".into() };
    let shard = 5;
    let (ops, ids) = outbox.enqueue(1_000, std::slice::from_ref(&job));
    store.commit(shard, ops).await.expect("commit");

    nats.kill();
    outbox.push(shard, ids.into_iter().zip([job.clone()])).await;
    let kept = store.outbox(shard, 10).await.expect("outbox");
    assert_eq!(
        kept.len(),
        1,
        "the job stays in the outbox while NATS is down"
    );

    nats.restart();
    let deadline = Instant::now() + PATIENCE;
    while !store.outbox(shard, 10).await.expect("outbox").is_empty() {
        assert!(
            Instant::now() < deadline,
            "the relay never emptied the outbox"
        );
        outbox.tick(&store, &[shard], 2_000, None).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let d = tokio::time::timeout(PATIENCE, queue.pull())
        .await
        .expect("the job reaches the queue")
        .expect("pull");
    assert_eq!(d.job(), &job);
    d.ack();
    assert!(counted("relayed") >= 1, "pushed by the relay");
}

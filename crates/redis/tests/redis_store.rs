//! The storage and lease contracts against a real `redis-server` and a real
//! 3-master Redis Cluster (started on free ports by the testkit), plus what
//! only Redis has: key TTLs, hash-tag slots, reconnect after a crash.

use bytes::Bytes;
use presence_core::{shard_of, Binding, Flow, Publication, Subscription, Transport, View};
use presence_redis::{RedisConfig, RedisStore};
use presence_store::contract::{lease_contract, store_contract};
use presence_store::{ExpiryKey, Lease, Leases, Op, Store, StoreError};
use presence_testkit::redis::{RedisCluster, RedisServer};
use redis::AsyncCommands;
use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const SHARDS: u32 = 256;

async fn standalone(server: &RedisServer) -> RedisStore {
    let config = RedisConfig::new(&server.url(), SHARDS).expect("config");
    RedisStore::connect(config, &prometheus::Registry::new())
        .await
        .expect("connect")
}

async fn clustered(cluster: &RedisCluster) -> RedisStore {
    // The documented spelling: redis+cluster://seed1,seed2,...
    let seeds: Vec<String> = cluster
        .ports()
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    let config =
        RedisConfig::new(&format!("redis+cluster://{}", seeds.join(",")), SHARDS).expect("config");
    assert!(config.cluster);
    RedisStore::connect(config, &prometheus::Registry::new())
        .await
        .expect("connect")
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

fn flow() -> Flow {
    Flow {
        transport: Transport::Tcp,
        remote: "192.0.2.1:5060".parse().expect("addr"),
        local: "127.0.0.1:5060".parse().expect("addr"),
        edge: "edge-1".into(),
        conn: 7,
        seal: Some(presence_core::Seal([7; 16])),
    }
}

fn publication(aor: &str, etag: &str, expires: u64) -> Publication {
    Publication {
        etag: etag.into(),
        aor: aor.into(),
        event: "presence".into(),
        expires_at_ms: expires,
        content_type: "application/pidf+xml".into(),
        body: Bytes::from_static(b"<presence/>"),
        modified_ms: 1,
        seq: 1,
    }
}

fn subscription(id: &str, aor: &str, expires: u64) -> Subscription {
    Subscription {
        id: id.into(),
        aor: aor.into(),
        event: "presence".into(),
        event_id: None,
        watcher: "sip:w@example.com".into(),
        call_id: format!("call-{id}"),
        remote_tag: "rt".into(),
        local_uri: format!("<{aor}>"),
        remote_uri: "<sip:w@example.com>".into(),
        remote_target: "sip:w@192.0.2.9".into(),
        route_set: vec!["<sip:proxy.example.com;lr>".into()],
        flow: flow(),
        remote_cseq: 1,
        expires_at_ms: expires,
        content_type: "application/pidf+xml".into(),
        view: View::Full,
        rates: Default::default(),
    }
}

fn binding(aor: &str, expires: u64) -> Binding {
    Binding {
        aor: aor.into(),
        uri: "sip:a@192.0.2.1:5060;transport=tcp".into(),
        params: String::new(),
        expires_at_ms: expires,
        call_id: "c".into(),
        cseq: 1,
        flow: flow(),
        methods: None,
        q: None,
    }
}

/// One batch with every kind of op for `aor`.
fn full_batch(aor: &str, deadline: u64) -> Vec<Op> {
    vec![
        Op::PutPublication(publication(aor, "etag-1", deadline)),
        Op::PutSubscription(subscription("sub-1", aor, deadline)),
        Op::PutBindings {
            aor: aor.into(),
            bindings: vec![binding(aor, deadline)],
        },
        Op::PutDocument {
            aor: aor.into(),
            event: "presence".into(),
            content_type: "application/pidf+xml".into(),
            body: Bytes::from_static(b"<presence/>"),
            first_version: 1,
        },
        Op::PutHardState {
            aor: aor.into(),
            event: "presence".into(),
            body: Bytes::from_static(b"<hard/>"),
        },
        Op::MarkKnown { aor: aor.into() },
    ]
}

#[tokio::test]
async fn standalone_passes_the_store_contract() {
    let server = RedisServer::start();
    store_contract(&standalone(&server).await, SHARDS).await;
}

#[tokio::test]
async fn standalone_passes_the_lease_contract() {
    let server = RedisServer::start();
    let s = standalone(&server).await;
    lease_contract(&s, &s, SHARDS).await;
}

#[tokio::test]
async fn cluster_passes_the_store_contract() {
    let cluster = RedisCluster::start(3);
    store_contract(&clustered(&cluster).await, SHARDS).await;
}

/// A Redis Cluster as production runs it: TLS between clients and nodes
/// and on the cluster bus, a password, MOVED/ASK to the nodes' TLS ports;
/// reached with `rediss+cluster://`, the CA and the password off the URL.
#[tokio::test]
async fn cluster_with_tls_and_a_password_passes_both_contracts() {
    let dir = std::env::temp_dir().join(format!(
        "presence-redis-tls-{}-{}",
        std::process::id(),
        presence_testkit::free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let c = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, c.cert.pem()).unwrap();
    std::fs::write(&key, c.key_pair.serialize_pem()).unwrap();
    let cluster = RedisCluster::start_secure(3, &cert, &key, "cluster-pw");
    let seeds: Vec<String> = cluster
        .tls_ports()
        .expect("TLS ports")
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    let url = format!("rediss+cluster://{}", seeds.join(","));
    let (r1, r2) = (prometheus::Registry::new(), prometheus::Registry::new());
    let connect = |password: Option<&str>, registry| {
        let mut config = RedisConfig::new(&url, SHARDS).expect("config");
        assert!(config.cluster && config.tls());
        config.tls_ca = Some(c.cert.pem().into_bytes());
        config.password = password.map(str::to_string);
        RedisStore::connect(config, registry)
    };
    assert!(
        connect(None, &r1).await.is_err(),
        "a Redis Cluster that requires a password let us in without one"
    );
    let s = connect(Some("cluster-pw"), &r2)
        .await
        .expect("connect over TLS");
    store_contract(&s, SHARDS).await;
    lease_contract(&s, &s, SHARDS).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn cluster_passes_the_lease_contract() {
    let cluster = RedisCluster::start(3);
    let s = clustered(&cluster).await;
    lease_contract(&s, &s, SHARDS).await;
}

#[tokio::test]
async fn every_record_key_carries_the_ttl_safety_net() {
    let server = RedisServer::start();
    let s = standalone(&server).await;
    let aor = "sip:ttl@example.com";
    let k = shard_of(aor, SHARDS);
    let deadline = now_ms() + 30_000;
    s.commit(k, full_batch(aor, deadline))
        .await
        .expect("commit");
    // A record already past its deadline still lives for the grace.
    let old = "sip:late@example.com";
    s.commit(
        shard_of(old, SHARDS),
        vec![Op::PutPublication(publication(old, "e", 1_000))],
    )
    .await
    .expect("commit");

    let client = redis::Client::open(server.url()).expect("client");
    let mut c = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let tag = s.shard_prefix(k);
    let record_keys = [
        format!("{tag}p:presence:{aor}"),
        format!("{tag}s:sub-1"),
        format!("{tag}w:presence:{aor}"),
        format!("{tag}b:{aor}"),
        "presence:sid:sub-1".to_string(),
    ];
    for key in &record_keys {
        let pttl: i64 = c.pttl(key).await.expect("pttl");
        // deadline (30 s away) + grace (60 s), minus the time the test took.
        assert!(
            (80_000..=90_000).contains(&pttl),
            "{key}: PTTL {pttl} ms, want about 90 000"
        );
    }
    let late_key = format!("{}p:presence:{old}", s.shard_prefix(shard_of(old, SHARDS)));
    let pttl: i64 = c.pttl(&late_key).await.expect("pttl");
    assert!((50_000..=60_000).contains(&pttl), "{late_key}: {pttl}");
    // Hard state (operator data), the document it backs and the shard's
    // index keep no TTL; a known AoR is remembered for KNOWN_TTL.
    for key in [
        format!("{tag}d:presence:{aor}"),
        format!("{tag}h:presence:{aor}"),
        format!("{tag}x"),
    ] {
        let pttl: i64 = c.pttl(&key).await.expect("pttl");
        assert_eq!(pttl, -1, "{key}");
    }
    let pttl: i64 = c.pttl(format!("{tag}k:{aor}")).await.expect("pttl");
    let known = presence_redis::KNOWN_TTL.as_millis() as i64;
    assert!((known - 10_000..=known).contains(&pttl), "known: {pttl}");
    // Without hard state a document lives as long as what backs it: its
    // publications, then its watchers, each with the grace.
    s.commit(
        k,
        vec![Op::DeleteHardState {
            aor: aor.into(),
            event: "presence".into(),
        }],
    )
    .await
    .expect("commit");
    let pttl: i64 = c
        .pttl(format!("{tag}d:presence:{aor}"))
        .await
        .expect("pttl");
    assert!((80_000..=90_000).contains(&pttl), "document: {pttl}");
    // A refresh moves the TTL with the deadline.
    let later = now_ms() + 300_000;
    s.commit(
        k,
        vec![Op::PutSubscription(subscription("sub-1", aor, later))],
    )
    .await
    .expect("commit");
    let pttl: i64 = c.pttl(format!("{tag}s:sub-1")).await.expect("pttl");
    assert!((350_000..=360_000).contains(&pttl), "refreshed: {pttl}");
    // ... and so does the document that subscription watches.
    let pttl: i64 = c
        .pttl(format!("{tag}d:presence:{aor}"))
        .await
        .expect("pttl");
    assert!((350_000..=360_000).contains(&pttl), "document: {pttl}");
    // A new document of an AoR with a publication only.
    let bob = "sip:ttl-bob@example.com";
    let kb = shard_of(bob, SHARDS);
    s.commit(
        kb,
        vec![
            Op::PutPublication(publication(bob, "e", now_ms() + 30_000)),
            Op::PutDocument {
                aor: bob.into(),
                event: "presence".into(),
                content_type: "application/pidf+xml".into(),
                body: Bytes::from_static(b"<presence/>"),
                first_version: 1,
            },
        ],
    )
    .await
    .expect("commit");
    let bob_doc = format!("{}d:presence:{bob}", s.shard_prefix(kb));
    let pttl: i64 = c.pttl(&bob_doc).await.expect("pttl");
    assert!((80_000..=90_000).contains(&pttl), "{bob_doc}: {pttl}");

    // Every key but the shards' bookkeeping and hard state (with the
    // document it backs) has a TTL.
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("presence:*")
        .query_async(&mut c)
        .await
        .expect("keys");
    assert!(keys.len() > 10, "{keys:?}");
    for key in keys {
        let pttl: i64 = c.pttl(&key).await.expect("pttl");
        let rest = key.split_once("}:").map_or("", |(_, r)| r);
        let bookkeeping = ["x", "n", "f", "l", "oq", "o"].contains(&rest);
        let hard = rest.starts_with("h:");
        let backed_by_hard = rest.strip_prefix("d:").is_some_and(|r| {
            c_exists_sync(
                &server,
                &key.replace(&format!("}}:d:{r}"), &format!("}}:h:{r}")),
            )
        });
        assert!(
            pttl >= 0 || bookkeeping || hard || backed_by_hard,
            "{key} has no TTL"
        );
    }
}

/// EXISTS over a connection of its own (for a check inside a loop that
/// holds the async one).
fn c_exists_sync(server: &RedisServer, key: &str) -> bool {
    let client = redis::Client::open(server.url()).expect("client");
    let mut c = client.get_connection().expect("connect");
    redis::cmd("EXISTS")
        .arg(key)
        .query::<i64>(&mut c)
        .expect("exists")
        > 0
}

#[tokio::test]
async fn a_batch_lands_in_one_slot_of_the_cluster() {
    let cluster = RedisCluster::start(3);
    let s = clustered(&cluster).await;
    let aor = "sip:slots@example.com";
    let k = shard_of(aor, SHARDS);
    let mut ops = full_batch(aor, now_ms() + 60_000);
    ops.push(Op::DeletePublication {
        aor: aor.into(),
        event: "presence".into(),
        etag: "none".into(),
    });
    s.commit(k, ops).await.expect("commit");
    let token = s
        .acquire(k, "me", Duration::from_secs(30))
        .await
        .expect("acquire")
        .expect("free");
    s.commit_fenced(
        k,
        &Lease {
            owner: "me".into(),
            token,
        },
        vec![Op::DeleteSubscription { id: "sub-1".into() }],
    )
    .await
    .expect("fenced commit");

    let prefix = s.shard_prefix(k);
    let mut shard_keys = Vec::new();
    let mut slots = HashSet::new();
    let mut nodes_with_keys = 0;
    for url in cluster.urls() {
        let client = redis::Client::open(url).expect("client");
        let mut c = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
        let keys: Vec<String> = c.keys("presence:*").await.expect("keys");
        let ours: Vec<String> = keys
            .into_iter()
            .filter(|k| k.starts_with(&prefix))
            .collect();
        if !ours.is_empty() {
            nodes_with_keys += 1;
        }
        for key in ours {
            let slot: i64 = redis::cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(&key)
                .query_async(&mut c)
                .await
                .expect("keyslot");
            slots.insert(slot);
            shard_keys.push(key);
        }
    }
    shard_keys.sort();
    // Records, index, counters, lease and fence counter (the subscription
    // and its watcher set were deleted again).
    for kind in [
        "p:presence:",
        "b:",
        "d:presence:",
        "h:presence:",
        "k",
        "x",
        "n",
        "l",
        "f",
    ] {
        assert!(
            shard_keys
                .iter()
                .any(|key| key[prefix.len()..].starts_with(kind)),
            "no {kind} key in {shard_keys:?}"
        );
    }
    assert_eq!(
        slots.len(),
        1,
        "one slot for the whole shard: {shard_keys:?}"
    );
    assert_eq!(nodes_with_keys, 1);
    assert!(s.subscription("sub-1").await.expect("read").is_none());
    assert!(s
        .watcher_ids(aor, "presence")
        .await
        .expect("read")
        .is_empty());
}

#[tokio::test]
async fn a_crash_between_due_and_handling_loses_nothing() {
    let server = RedisServer::start();
    let aor = "sip:crash@example.com";
    let k = shard_of(aor, SHARDS);
    let key = ExpiryKey::Publication {
        aor: aor.into(),
        event: "presence".into(),
        etag: "e".into(),
    };
    {
        let first = standalone(&server).await;
        first
            .commit(k, vec![Op::PutPublication(publication(aor, "e", 1_000))])
            .await
            .expect("commit");
        assert_eq!(
            first.due(k, 2_000, 10).await.expect("due"),
            vec![(1_000, key.clone())]
        );
        // The owner dies here, before handling the expiry.
    }
    let second = standalone(&server).await;
    assert_eq!(
        second.due(k, 2_000, 10).await.expect("due"),
        vec![(1_000, key.clone())],
        "the entry is still due for the next owner"
    );
    assert_eq!(
        second
            .publications(aor, "presence")
            .await
            .expect("read")
            .len(),
        1
    );
    second
        .commit(
            k,
            vec![Op::DeletePublication {
                aor: aor.into(),
                event: "presence".into(),
                etag: "e".into(),
            }],
        )
        .await
        .expect("commit");
    assert!(second.due(k, u64::MAX, 10).await.expect("due").is_empty());
    assert!(second
        .publications(aor, "presence")
        .await
        .expect("read")
        .is_empty());
}

#[tokio::test]
async fn counts_follow_the_records() {
    let server = RedisServer::start();
    let s = standalone(&server).await;
    let deadline = now_ms() + 60_000;
    for i in 0..5 {
        let aor = format!("sip:user{i}@example.com");
        let mut ops = full_batch(&aor, deadline);
        // Ids must be unique across AoRs.
        ops[1] = Op::PutSubscription(subscription(&format!("sub-{i}"), &aor, deadline));
        s.commit(shard_of(&aor, SHARDS), ops).await.expect("commit");
    }
    let c = s.counts().await.expect("counts");
    assert_eq!(
        (c.publications, c.subscriptions, c.bindings, c.documents),
        (5, 5, 5, 5)
    );
    let aor = "sip:user0@example.com";
    s.commit(
        shard_of(aor, SHARDS),
        vec![
            Op::DeleteSubscription { id: "sub-0".into() },
            Op::PutBindings {
                aor: aor.into(),
                bindings: vec![],
            },
            // Replacing a publication does not count it twice.
            Op::PutPublication(publication(aor, "etag-1", deadline + 1)),
        ],
    )
    .await
    .expect("commit");
    let c = s.counts().await.expect("counts");
    assert_eq!(
        (c.publications, c.subscriptions, c.bindings, c.documents),
        (5, 4, 4, 5)
    );
}

#[tokio::test]
async fn a_batch_for_another_shard_is_refused() {
    let server = RedisServer::start();
    let s = standalone(&server).await;
    let aor = "sip:misplaced@example.com";
    let wrong = (shard_of(aor, SHARDS) + 1) % SHARDS;
    let r = s
        .commit(wrong, vec![Op::MarkKnown { aor: aor.into() }])
        .await;
    assert!(matches!(r, Err(StoreError::Backend(_))), "{r:?}");
    assert!(!s.is_known(aor).await.expect("read"));
    let r = s
        .commit(SHARDS, vec![Op::DeleteSubscription { id: "x".into() }])
        .await;
    assert!(matches!(r, Err(StoreError::Backend(_))), "{r:?}");
}

/// A job in an outbox that does not decode (a bug, or a format this build
/// does not know) is removed and counted, and the jobs behind it still come.
#[tokio::test]
async fn an_undecodable_outbox_job_does_not_block_the_others() {
    let server = RedisServer::start();
    let s = standalone(&server).await;
    let k = 3;
    let job = presence_core::commands::NotifyJob::Refresh { id: "s1".into() };
    s.commit(
        k,
        vec![Op::Enqueue {
            id: "0002".into(),
            job: job.clone(),
        }],
    )
    .await
    .expect("commit");
    let (order, jobs) = (
        format!("{}oq", s.shard_prefix(k)),
        format!("{}o", s.shard_prefix(k)),
    );
    let raw = |args: &[&str]| presence_testkit::redis::command(server.port(), args).expect("raw");
    raw(&["ZADD", &order, "0", "0001"]);
    raw(&["HSET", &jobs, "0001", "\u{1}garbage"]);
    assert_eq!(
        s.outbox(k, 10).await.expect("outbox"),
        vec![("0002".to_string(), job)]
    );
    assert_eq!(raw(&["ZCARD", &order]), "1", "the bad entry is gone");
    assert_eq!(raw(&["HEXISTS", &jobs, "0001"]), "0", "the bad job is gone");
}

#[tokio::test]
async fn a_dead_server_is_an_error_and_is_counted() {
    let mut server = RedisServer::start();
    let registry = prometheus::Registry::new();
    let mut config = RedisConfig::new(&server.url(), SHARDS).expect("config");
    config.timeout = Duration::from_millis(500);
    let s = RedisStore::connect(config, &registry)
        .await
        .expect("connect");
    let aor = "sip:dead@example.com";
    s.commit(
        shard_of(aor, SHARDS),
        vec![Op::MarkKnown { aor: aor.into() }],
    )
    .await
    .expect("commit");
    server.kill();
    let r = s.is_known(aor).await;
    assert!(matches!(r, Err(StoreError::Backend(_))), "{r:?}");
    assert!(s.metrics().errors.with_label_values(&["is_known"]).get() >= 1);
    assert!(
        s.metrics()
            .duration
            .with_label_values(&["commit"])
            .get_sample_count()
            >= 1
    );
    let names: Vec<String> = registry
        .gather()
        .iter()
        .map(|m| m.name().to_string())
        .collect();
    for n in [
        "presence_redis_request_duration_seconds",
        "presence_redis_errors_total",
        "presence_redis_fenced_total",
    ] {
        assert!(names.iter().any(|x| x == n), "{n} not in {names:?}");
    }
}

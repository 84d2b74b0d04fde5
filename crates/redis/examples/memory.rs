//! Memory per record in Redis: starts a private `redis-server` (testkit),
//! writes N records of each kind with realistic sizes through `RedisStore`,
//! and reports the growth of `INFO memory` `used_memory` per record.
//!
//! `cargo run -p presence-redis --example memory [N]` (N defaults to 10 000).

use bytes::Bytes;
use presence_core::{shard_of, Binding, Flow, Publication, Subscription, Transport, View};
use presence_redis::{RedisConfig, RedisStore};
use presence_store::{Op, Store};
use presence_testkit::redis::{command, RedisServer};
use std::time::{SystemTime, UNIX_EPOCH};

const SHARDS: u32 = 256;

fn used_memory(port: u16) -> i64 {
    let info = command(port, &["INFO", "memory"]).expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory")
}

/// A 265-byte PIDF document, as a SIP phone publishes it.
fn pidf(user: &str) -> Bytes {
    let mut s = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"sip:{user}@example.com\"><tuple id=\"t1\"><status><basic>open</basic></status><note>Available</note></tuple></presence>"
    );
    while s.len() < 265 {
        s.push(' ');
    }
    s.truncate(265);
    Bytes::from(s)
}

fn flow(i: u32) -> Flow {
    Flow {
        transport: Transport::Tcp,
        remote: format!(
            "198.51.{}.{}:{}",
            (i >> 8) & 255,
            i & 255,
            40_000 + i % 20_000
        )
        .parse()
        .expect("addr"),
        local: "203.0.113.10:5060".parse().expect("addr"),
        edge: "edge-1".into(),
        conn: i as u64,
        // What an edge seals every flow with (16 bytes).
        seal: Some(presence_core::Seal([0x5e; 16])),
    }
}

#[tokio::main]
async fn main() {
    let n: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000);
    let server = RedisServer::start();
    let store = RedisStore::connect(
        RedisConfig::new(&server.url(), SHARDS).expect("config"),
        &prometheus::Registry::new(),
    )
    .await
    .expect("connect");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let deadline = now + 3_600_000;
    // Warm up: load the scripts, create the shards' index and counter keys.
    for shard in 0..SHARDS {
        store
            .commit(
                shard,
                vec![Op::Unindex(presence_store::ExpiryKey::Subscription {
                    id: "warm".into(),
                })],
            )
            .await
            .expect("commit");
    }
    let aor = |i: u32| format!("sip:user{i:06}@example.com");
    let mut report = Vec::new();

    let before = used_memory(server.port());
    for i in 0..n {
        let a = aor(i);
        let p = Publication {
            etag: format!("{:032x}", u128::from(i) * 0x9e37_79b9_7f4a_7c15),
            aor: a.clone(),
            event: "presence".into(),
            expires_at_ms: deadline,
            content_type: "application/pidf+xml".into(),
            body: pidf(&a[4..14]),
            modified_ms: now,
            seq: i as u64,
        };
        store
            .commit(
                shard_of(&a, SHARDS),
                vec![Op::PutPublication(p), Op::MarkKnown { aor: a }],
            )
            .await
            .expect("commit");
    }
    let after = used_memory(server.port());
    report.push((
        "publication (265-byte PIDF) + known AoR",
        (after - before) as f64 / n as f64,
    ));

    let before = after;
    for i in 0..n {
        let a = aor(i);
        store
            .commit(
                shard_of(&a, SHARDS),
                vec![Op::PutDocument {
                    aor: a.clone(),
                    event: "presence".into(),
                    content_type: "application/pidf+xml".into(),
                    body: pidf(&a[4..14]),
                    first_version: 1,
                }],
            )
            .await
            .expect("commit");
    }
    let after = used_memory(server.port());
    report.push((
        "composed document (265 bytes) + version",
        (after - before) as f64 / n as f64,
    ));

    let before = after;
    for i in 0..n {
        let a = aor(i);
        let b = Binding {
            aor: a.clone(),
            uri: format!(
                "sip:user{i:06}@198.51.{}.{}:5060;transport=tcp;ob",
                (i >> 8) & 255,
                i & 255
            ),
            params: ";+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-00a0c91e6bf6>\";reg-id=1"
                .into(),
            expires_at_ms: deadline,
            call_id: format!("{:032x}@198.51.100.1", u128::from(i) * 31),
            cseq: 42,
            flow: flow(i),
            methods: Some(vec!["INVITE".into(), "MESSAGE".into(), "NOTIFY".into()]),
            q: None,
        };
        store
            .commit(
                shard_of(&a, SHARDS),
                vec![Op::PutBindings {
                    aor: a,
                    bindings: vec![b],
                }],
            )
            .await
            .expect("commit");
    }
    let after = used_memory(server.port());
    report.push((
        "binding list of one contact",
        (after - before) as f64 / n as f64,
    ));

    // Subscriptions: 10 watchers per presentity.
    let before = after;
    for i in 0..n {
        let a = aor(i / 10);
        let watcher = format!("sip:user{:06}@example.com", (i * 7919) % n);
        let s = Subscription {
            id: format!("{:016x}", u64::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            aor: a.clone(),
            event: "presence".into(),
            event_id: None,
            watcher: watcher.clone(),
            call_id: format!("{:032x}@198.51.100.1", u128::from(i) * 17),
            remote_tag: format!("{:010x}", i),
            local_uri: format!("<{a}>"),
            remote_uri: format!("<{watcher}>"),
            remote_target: format!(
                "sip:{}@198.51.{}.{}:5060;transport=tcp;ob",
                &watcher[4..14],
                (i >> 8) & 255,
                i & 255
            ),
            route_set: vec![
                "<sip:proxy1.example.com;transport=tcp;lr>".into(),
                "<sip:sbc.example.com:5060;transport=tcp;lr>".into(),
            ],
            flow: flow(i),
            remote_cseq: 1,
            expires_at_ms: deadline,
            content_type: "application/pidf+xml".into(),
            view: View::Full,
            rates: Default::default(),
        };
        store
            .commit(shard_of(&a, SHARDS), vec![Op::PutSubscription(s)])
            .await
            .expect("commit");
    }
    let after = used_memory(server.port());
    report.push((
        "subscription (+ id map, watcher set, index)",
        (after - before) as f64 / n as f64,
    ));

    println!(
        "redis-server {} used_memory growth per record, N = {n}:",
        command(server.port(), &["INFO", "server"])
            .ok()
            .and_then(|i| i.lines().find_map(|l| l
                .strip_prefix("redis_version:")
                .map(|v| v.trim().to_string())))
            .unwrap_or_default()
    );
    for (what, bytes) in report {
        println!("  {what:<48} {bytes:>7.0} bytes");
    }
    let h = store.metrics().duration.with_label_values(&["commit"]);
    println!(
        "mean commit round trip (one client, sequential): {:.0} µs over {} commits",
        h.get_sample_sum() / h.get_sample_count().max(1) as f64 * 1e6,
        h.get_sample_count()
    );
}

//! Expiry is driven by the shard expiry index and tested with paused tokio
//! time: publications and subscriptions end exactly by their Expires, with
//! the re-composition and terminated NOTIFY jobs RFC 3903 / RFC 6665 require.

use bytes::Bytes;
use presence_core::commands::{Command, NotifyJob, PublishCmd, Reply, SubscribeCmd};
use presence_core::packages::Registry;
use presence_core::policy::Policy;
use presence_core::{shard_of, EndReason, Flow, Transport};
use presence_store::{ExpiryKey, MemoryBus, MemoryQueue, MemoryStore, Requests, Store, WorkQueue};
use presenced::compositor::Compositor;
use presenced::metrics::Metrics;
use presenced::names::shard_subject;
use presenced::outbox::Outbox;
use presenced::Clock;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

const SHARDS: u32 = 16;
const PIDF: &str = r#"<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:alice@example.com"><tuple id="t"><status><basic>open</basic></status></tuple></presence>"#;

struct Rig {
    store: Arc<dyn Store>,
    jobs: Arc<MemoryQueue<NotifyJob>>,
    bus: Arc<dyn Requests<Command, Reply>>,
    _stop: watch::Sender<bool>,
}

async fn rig() -> Rig {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let jobs = Arc::new(MemoryQueue::new());
    let bus: Arc<dyn Requests<Command, Reply>> = Arc::new(MemoryBus::new());
    let metrics = Arc::new(Metrics::new());
    let c = Arc::new(Compositor {
        store: store.clone(),
        packages: Registry::default(),
        policy: presenced::reload::Reloadable::fixed(
            "watcher policy",
            Policy::new(&["example.com".to_string()]),
        ),
        lists: presenced::reload::Reloadable::fixed("resource lists", Default::default()),
        users: None,
        clock: Clock::new(),
        shards: SHARDS,
        metrics: metrics.clone(),
        outbox: Outbox::new(jobs.clone(), metrics),
        recent: Default::default(),
        limits: Default::default(),
        changes: Arc::new(presence_store::MemoryTopics::new()),
    });
    let (tx, rx) = watch::channel(false);
    tokio::spawn(c.run(bus.clone(), 2, rx));
    tokio::time::sleep(Duration::from_millis(1)).await; // let it serve its shards
    Rig {
        store,
        jobs,
        bus,
        _stop: tx,
    }
}

async fn ask(r: &Rig, aor: &str, cmd: Command) -> Reply {
    r.bus
        .request(
            &shard_subject(shard_of(aor, SHARDS)),
            cmd,
            Duration::from_secs(5),
        )
        .await
        .expect("shard answers")
}

/// Jobs currently queued, acked.
async fn drain(r: &Rig) -> Vec<NotifyJob> {
    let mut out = Vec::new();
    while r.jobs.depth() > 0 {
        let d = r.jobs.pull().await.expect("job");
        out.push(d.job().clone());
        d.ack();
    }
    out
}

fn flow() -> Flow {
    Flow {
        transport: Transport::Udp,
        remote: "127.0.0.1:5999".parse().unwrap(),
        local: "127.0.0.1:5060".parse().unwrap(),
        edge: "edge-test".into(),
        conn: 0,
        seal: None,
    }
}

/// An initial PUBLISH of [`PIDF`] for `aor`.
fn initial_publish(aor: &str, expires: u32) -> Command {
    Command::Publish(PublishCmd {
        aor: aor.into(),
        event: "presence".into(),
        if_match: None,
        expires,
        body: Some((
            "application/pidf+xml".into(),
            Bytes::from_static(PIDF.as_bytes()),
        )),
        origin: Default::default(),
    })
}

/// A watcher of `aor` for `expires` seconds (its jobs drained).
async fn watch(r: &Rig, aor: &str, expires: u32) -> String {
    let reply = ask(
        r,
        aor,
        Command::Subscribe(SubscribeCmd {
            aor: aor.into(),
            event: "presence".into(),
            event_id: None,
            watcher: "sip:dave@example.com".into(),
            dialog: None,
            call_id: format!("c-{aor}"),
            remote_tag: "ft".into(),
            cseq: 1,
            local_uri: format!("<{aor}>"),
            remote_uri: "<sip:dave@example.com>".into(),
            remote_target: "sip:dave@127.0.0.1:5999".into(),
            route_set: vec![],
            flow: flow(),
            expires,
            content_type: "application/pidf+xml".into(),
            origin: Default::default(),
            rates: Default::default(),
        }),
    )
    .await;
    let Reply::Subscribed { id, .. } = reply else {
        panic!("{reply:?}")
    };
    drain(r).await;
    id
}

#[tokio::test(start_paused = true)]
async fn a_publication_ends_by_its_expires_and_recomposes() {
    let r = rig().await;
    let aor = "sip:alice@example.com";
    watch(&r, aor, 3600).await;
    let reply = ask(&r, aor, initial_publish(aor, 10)).await;
    assert!(
        matches!(reply, Reply::Published { expires: 10, .. }),
        "{reply:?}"
    );
    let jobs = drain(&r).await;
    // A new document's version is the compositor's clock in microseconds.
    let first = match &jobs[..] {
        [NotifyJob::Changed { version, .. }] => *version,
        _ => panic!("{jobs:?}"),
    };

    tokio::time::sleep(Duration::from_millis(9_500)).await;
    assert!(drain(&r).await.is_empty(), "nothing before the deadline");
    assert_eq!(
        r.store.publications(aor, "presence").await.unwrap().len(),
        1
    );

    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let jobs = drain(&r).await;
    assert!(
        matches!(&jobs[..], [NotifyJob::Changed { version, .. }] if *version == first + 1),
        "{jobs:?}"
    );
    assert!(r
        .store
        .publications(aor, "presence")
        .await
        .unwrap()
        .is_empty());
    let doc = r.store.document(aor, "presence").await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&doc.body).contains("<basic>closed</basic>"));
    // The index entry went with the record (the watcher's stays).
    assert!(r
        .store
        .due(shard_of(aor, SHARDS), u64::MAX, 10)
        .await
        .unwrap()
        .iter()
        .all(|(_, k)| !matches!(k, ExpiryKey::Publication { .. })));
}

#[tokio::test(start_paused = true)]
async fn a_refresh_moves_the_deadline() {
    let r = rig().await;
    let aor = "sip:bob@example.com";
    let publish = |if_match: Option<String>, body: bool| {
        Command::Publish(PublishCmd {
            aor: aor.into(),
            event: "presence".into(),
            if_match,
            expires: 10,
            body: body.then(|| {
                (
                    "application/pidf+xml".into(),
                    Bytes::from_static(PIDF.as_bytes()),
                )
            }),
            origin: Default::default(),
        })
    };
    watch(&r, aor, 3600).await;
    let Reply::Published { etag, .. } = ask(&r, aor, publish(None, true)).await else {
        panic!()
    };
    tokio::time::sleep(Duration::from_secs(8)).await;
    let Reply::Published { .. } = ask(&r, aor, publish(Some(etag), false)).await else {
        panic!()
    };
    drain(&r).await;
    tokio::time::sleep(Duration::from_secs(8)).await; // 16 s after the first PUBLISH
    assert_eq!(
        r.store.publications(aor, "presence").await.unwrap().len(),
        1
    );
    assert!(drain(&r).await.is_empty());
    tokio::time::sleep(Duration::from_millis(2_500)).await; // past 8 + 10
    assert!(r
        .store
        .publications(aor, "presence")
        .await
        .unwrap()
        .is_empty());
    assert!(matches!(&drain(&r).await[..], [NotifyJob::Changed { .. }]));
}

#[tokio::test(start_paused = true)]
async fn a_subscription_ends_with_a_timeout_notify() {
    let r = rig().await;
    let aor = "sip:carol@example.com";
    let reply = ask(
        &r,
        aor,
        Command::Subscribe(SubscribeCmd {
            aor: aor.into(),
            event: "presence".into(),
            event_id: None,
            watcher: "sip:dave@example.com".into(),
            dialog: None,
            call_id: "c1".into(),
            remote_tag: "ft".into(),
            cseq: 1,
            local_uri: format!("<{aor}>"),
            remote_uri: "<sip:dave@example.com>".into(),
            remote_target: "sip:dave@127.0.0.1:5999".into(),
            route_set: vec![],
            flow: flow(),
            expires: 5,
            content_type: "application/pidf+xml".into(),
            origin: Default::default(),
            rates: Default::default(),
        }),
    )
    .await;
    let Reply::Subscribed { id, expires: 5, .. } = reply else {
        panic!("{reply:?}")
    };
    let jobs = drain(&r).await;
    assert!(
        matches!(&jobs[..], [NotifyJob::Refresh { id: i }] if *i == id),
        "{jobs:?}"
    );
    tokio::time::sleep(Duration::from_millis(4_800)).await;
    assert!(drain(&r).await.is_empty());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let jobs = drain(&r).await;
    assert!(
        matches!(&jobs[..], [NotifyJob::Terminated { sub, reason: EndReason::Timeout }] if sub.id == id),
        "{jobs:?}"
    );
    assert!(r.store.subscription(&id).await.unwrap().is_none());
}

/// Nobody watches: the publication's end forgets the document and
/// announces nothing (no state, no job, no index entry is left).
#[tokio::test(start_paused = true)]
async fn an_unwatched_publication_ends_without_a_trace() {
    let r = rig().await;
    let aor = "sip:erin@example.com";
    let reply = ask(&r, aor, initial_publish(aor, 10)).await;
    assert!(matches!(reply, Reply::Published { .. }), "{reply:?}");
    drain(&r).await;
    assert!(r.store.document(aor, "presence").await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(10_500)).await;
    assert!(drain(&r).await.is_empty());
    assert!(r.store.document(aor, "presence").await.unwrap().is_none());
    assert_eq!(r.store.counts().await.unwrap().documents, 0);
    assert!(r
        .store
        .due(shard_of(aor, SHARDS), u64::MAX, 10)
        .await
        .unwrap()
        .is_empty());
}

/// A change nobody watches makes no notify job (it would cost a queue
/// round trip and a notifier's reads to find no watcher); the same change
/// with a watcher does, and the watcher's first NOTIFY had the document.
#[tokio::test(start_paused = true)]
async fn a_change_nobody_watches_makes_no_notify_job() {
    let r = rig().await;
    let aor = "sip:alice@example.com";
    let Reply::Published { .. } = ask(&r, aor, initial_publish(aor, 600)).await else {
        panic!("not published")
    };
    assert_eq!(drain(&r).await, vec![], "a job for a change nobody watches");
    assert!(r.store.document(aor, "presence").await.unwrap().is_some());

    watch(&r, aor, 600).await;
    let closed = Command::Publish(PublishCmd {
        aor: aor.into(),
        event: "presence".into(),
        if_match: None,
        expires: 600,
        body: Some((
            "application/pidf+xml".into(),
            Bytes::from(PIDF.replace("open", "closed").replace("\"t\"", "\"t2\"")),
        )),
        origin: Default::default(),
    });
    let Reply::Published { .. } = ask(&r, aor, closed).await else {
        panic!("not published")
    };
    let jobs = drain(&r).await;
    assert!(
        jobs.iter()
            .any(|j| matches!(j, NotifyJob::Changed { aor: a, .. } if a == aor)),
        "no job for a watched change: {jobs:?}"
    );
}

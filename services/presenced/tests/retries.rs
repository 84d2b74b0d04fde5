//! The retry policy across the edge → shard owner hop: a reply lost on the
//! bus makes the edge send the command again, and the owner answers the
//! re-send with its first answer instead of applying it twice (the failure
//! CI saw as a 412 during a nats-server restart: a PUBLISH modify applied,
//! its reply lost, the re-send meeting its own new ETag). A real edge and
//! compositor, a bus that loses replies, a UA over a real UDP socket.

mod common;
mod harness;

use async_trait::async_trait;
use common::*;
use presence_core::commands::{Command, NotifyJob, Reply};
use presence_core::packages::Registry;
use presence_core::policy::Policy;
use presence_sip::HeaderAccess;
use presence_store::{
    BusError, Incoming, MemoryBus, MemoryQueue, MemoryStore, Requests, Store, WorkQueue,
};
use presenced::compositor::Compositor;
use presenced::edge::{Edge, EdgeConfig, Listeners, OutRequest, Outcome};
use presenced::metrics::Metrics;
use presenced::outbox::Outbox;
use presenced::Clock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// The shard bus, except that the reply to every command whose number is
/// in `lose` is thrown away after the owner applied it: the edge sees a
/// timeout, as when NATS loses a reply.
struct LosesReplies {
    inner: Arc<dyn Requests<Command, Reply>>,
    n: AtomicUsize,
    lose: Vec<usize>,
}

#[async_trait]
impl Requests<Command, Reply> for LosesReplies {
    async fn request(
        &self,
        subject: &str,
        req: Command,
        timeout: Duration,
    ) -> Result<Reply, BusError> {
        let n = self.n.fetch_add(1, Ordering::SeqCst);
        let reply = self.inner.request(subject, req, timeout).await?;
        if self.lose.contains(&n) {
            return Err(BusError::Timeout);
        }
        Ok(reply)
    }
    async fn serve(
        &self,
        subject: &str,
        tx: mpsc::Sender<Incoming<Command, Reply>>,
    ) -> Result<(), BusError> {
        self.inner.serve(subject, tx).await
    }
    async fn unserve(&self, subject: &str) -> Result<(), BusError> {
        self.inner.unserve(subject).await
    }
}

struct Rig {
    store: Arc<dyn Store>,
    /// The shard bus without the loss.
    shards: Arc<dyn Requests<Command, Reply>>,
    metrics: Arc<Metrics>,
    sip: std::net::SocketAddr,
    _stop: watch::Sender<bool>,
}

async fn rig(lose: Vec<usize>) -> Rig {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let jobs: Arc<dyn WorkQueue<NotifyJob>> = Arc::new(MemoryQueue::new());
    let shards: Arc<dyn Requests<Command, Reply>> = Arc::new(MemoryBus::new());
    let metrics = Arc::new(Metrics::new());
    let domains = vec!["example.com".to_string()];
    let compositor = Arc::new(Compositor {
        store: store.clone(),
        packages: Registry::default(),
        policy: presenced::reload::Reloadable::fixed("watcher policy", Policy::new(&domains)),
        lists: presenced::reload::Reloadable::fixed("resource lists", Default::default()),
        users: None,
        clock: Clock::new(),
        shards: 8,
        metrics: metrics.clone(),
        outbox: Outbox::new(jobs, metrics.clone()),
        recent: Default::default(),
        limits: Default::default(),
        changes: Arc::new(presence_store::MemoryTopics::new()),
    });
    let (stop, stop_rx) = watch::channel(false);
    tokio::spawn(compositor.run(shards.clone(), 2, stop_rx.clone()));
    let listeners = Listeners::bind(&["127.0.0.1:0".parse().expect("addr")])
        .await
        .expect("bind");
    let sip = listeners.udp[0].0;
    let edge = Arc::new(Edge::new(
        EdgeConfig {
            id: "e1".into(),
            domains,
            verifier: None,
            min_expires: 2,
            max_expires: 3600,
            max_message: 65536,
            shards: 8,
            packages: Registry::default(),
            delay_subscribe_answer: Duration::ZERO,
            limits: Default::default(),
            advertise: Vec::new(),
            sealer: presence_core::FlowSealer::new(b"test secret"),
            trusted: Default::default(),
            lists: presenced::reload::Reloadable::fixed("resource lists", Default::default()),
        },
        Arc::new(LosesReplies {
            inner: shards.clone(),
            n: AtomicUsize::new(0),
            lose,
        }),
        Clock::new(),
        metrics.clone(),
        listeners.udp.clone(),
    ));
    let out: Arc<dyn Requests<OutRequest, Outcome>> = Arc::new(MemoryBus::new());
    tokio::spawn(edge.run(listeners.tcp, out, stop_rx));
    tokio::time::sleep(Duration::from_millis(20)).await;
    Rig {
        store,
        shards,
        metrics,
        sip,
        _stop: stop,
    }
}

fn answered_again(m: &Metrics) -> u64 {
    retried(m, "answered_again")
}

/// `presence_compositor_retried_commands_total{outcome}`.
fn retried(m: &Metrics, outcome: &str) -> u64 {
    m.registry
        .gather()
        .iter()
        .filter(|f| f.name() == "presence_compositor_retried_commands_total")
        .flat_map(|f| f.get_metric().to_vec())
        .filter(|m| m.get_label().iter().any(|l| l.value() == outcome))
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

const PIDF: &str = r#"<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:alice@example.com"><tuple id="t"><status><basic>open</basic></status></tuple></presence>"#;

/// Initial PUBLISH, PUBLISH modify and initial SUBSCRIBE, each with its
/// first reply lost: each is applied once, and the UA gets the answer of
/// that one application.
#[tokio::test]
async fn a_lost_reply_is_answered_again_not_applied_twice() {
    // Commands 0 (initial PUBLISH), 1 = its re-send; 2 (modify), 3 = re-send;
    // 4 (SUBSCRIBE), 5 = re-send.
    let r = rig(vec![0, 2, 4]).await;
    let mut alice = Ua::new(Tp::Udp, r.sip, "alice").await;
    alice.patience = Duration::from_secs(20);
    let aor = alice.aor.clone();
    let publish = alice
        .req("PUBLISH", &aor)
        .h("Event", "presence")
        .h("Expires", "600")
        .body("application/pidf+xml", PIDF);
    let resp = alice.send(&publish).await;
    assert_eq!(resp.code, 200, "{}", resp.reason);
    let etag = resp.header("SIP-ETag").expect("an ETag").to_string();
    let pubs = r.store.publications(&aor, "presence").await.expect("store");
    assert_eq!(pubs.len(), 1, "one publication, not two: {pubs:?}");
    assert_eq!(
        pubs[0].etag, etag,
        "the UA has the ETag of the one that exists"
    );

    let modify = alice
        .req("PUBLISH", &aor)
        .h("Event", "presence")
        .h("Expires", "600")
        .h("SIP-If-Match", etag.clone())
        .body("application/pidf+xml", PIDF.replace("open", "closed"));
    let resp = alice.send(&modify).await;
    assert_eq!(resp.code, 200, "not 412: {}", resp.reason);
    let new_etag = resp.header("SIP-ETag").expect("an ETag").to_string();
    let pubs = r.store.publications(&aor, "presence").await.expect("store");
    assert_eq!(pubs.len(), 1);
    assert_eq!(pubs[0].etag, new_etag);

    let mut bob = Ua::new(Tp::Udp, r.sip, "bob").await;
    bob.patience = Duration::from_secs(20);
    let (resp, _, _) = bob.subscribe(&aor, 600).await;
    assert_eq!(resp.code, 200, "{}", resp.reason);
    let watchers = r.store.watcher_ids(&aor, "presence").await.expect("store");
    assert_eq!(watchers.len(), 1, "one subscription, not two: {watchers:?}");
    assert_eq!(
        Some(watchers[0].as_str()),
        resp.to_addr().and_then(|t| t.tag).as_deref(),
        "the UA's dialog is the subscription that exists"
    );
    assert_eq!(answered_again(&r.metrics), 3);
}

/// A command dequeued after its edge gave up (and answered 503) is not
/// applied: the UA was told it failed.
#[tokio::test]
async fn a_command_past_its_deadline_is_not_applied() {
    let r = rig(vec![]).await;
    let aor = "sip:carol@example.com";
    let cmd = |deadline_ms| {
        Command::Publish(presence_core::commands::PublishCmd {
            aor: aor.into(),
            event: "presence".into(),
            if_match: None,
            expires: 600,
            body: Some(("application/pidf+xml".into(), PIDF.into())),
            origin: presence_core::commands::Origin {
                txn: format!("t{deadline_ms}"),
                deadline_ms,
            },
        })
    };
    let subject = presenced::names::shard_subject(presence_core::shard_of(aor, 8));
    let now = Clock::new().now_ms();
    let late = r
        .shards
        .request(&subject, cmd(now - 1_000), Duration::from_secs(5))
        .await
        .expect("reply");
    assert!(
        matches!(
            late,
            Reply::Refused(presence_core::commands::Refusal::Unavailable)
        ),
        "{late:?}"
    );
    assert!(r
        .store
        .publications(aor, "presence")
        .await
        .expect("store")
        .is_empty());
    let timely = r
        .shards
        .request(&subject, cmd(now + 10_000), Duration::from_secs(5))
        .await
        .expect("reply");
    assert!(matches!(timely, Reply::Published { .. }), "{timely:?}");
}

/// The shard's next owner: the same store, its own (empty) memory of
/// answers, its own bus. Runs until the returned sender is dropped.
async fn next_owner(
    store: &Arc<dyn Store>,
) -> (
    Arc<dyn Requests<Command, Reply>>,
    Arc<Metrics>,
    watch::Sender<bool>,
) {
    let bus: Arc<dyn Requests<Command, Reply>> = Arc::new(MemoryBus::new());
    let metrics = Arc::new(Metrics::new());
    let next = Arc::new(Compositor {
        store: store.clone(),
        packages: Registry::default(),
        policy: presenced::reload::Reloadable::fixed(
            "watcher policy",
            Policy::new(&["example.com".to_string()]),
        ),
        lists: presenced::reload::Reloadable::fixed("resource lists", Default::default()),
        users: None,
        clock: Clock::new(),
        shards: 8,
        metrics: metrics.clone(),
        outbox: Outbox::new(Arc::new(MemoryQueue::new()), metrics.clone()),
        recent: Default::default(),
        limits: Default::default(),
        changes: Arc::new(presence_store::MemoryTopics::new()),
    });
    let (stop, stop_rx) = watch::channel(false);
    tokio::spawn(next.run(bus.clone(), 2, stop_rx));
    tokio::time::sleep(Duration::from_millis(20)).await;
    (bus, metrics, stop)
}

fn publish_cmd(aor: &str, txn: &str, if_match: Option<&str>, body: &str) -> Command {
    Command::Publish(presence_core::commands::PublishCmd {
        aor: aor.into(),
        event: "presence".into(),
        if_match: if_match.map(str::to_string),
        expires: 600,
        body: Some(("application/pidf+xml".into(), body.to_string().into())),
        origin: presence_core::commands::Origin {
            txn: txn.into(),
            deadline_ms: 0,
        },
    })
}

/// The owner that applied a PUBLISH died before its answer got out; the
/// edge sends the command again to the next owner, which has no memory of
/// the answer (the failure CI saw as a 412 after a compositor kill -9). It
/// finds the publication that transaction made and answers with it: the
/// modify is not refused for its If-Match ETag being gone, the initial
/// PUBLISH does not make a second publication.
#[tokio::test]
async fn a_new_owner_answers_a_publish_its_predecessor_applied() {
    let r = rig(vec![]).await;
    let aor = "sip:dave@example.com";
    let publish =
        |txn: &str, if_match: Option<&str>, body: &str| publish_cmd(aor, txn, if_match, body);
    let subject = presenced::names::shard_subject(presence_core::shard_of(aor, 8));
    let (next_bus, metrics, _stop) = next_owner(&r.store).await;
    let ask = |bus: Arc<dyn Requests<Command, Reply>>, cmd: Command| {
        let subject = subject.clone();
        async move {
            match bus.request(&subject, cmd, Duration::from_secs(5)).await {
                Ok(Reply::Published { etag, .. }) => etag,
                other => panic!("{other:?}"),
            }
        }
    };
    let first = ask(r.shards.clone(), publish("t-initial", None, PIDF)).await;
    let again = ask(next_bus.clone(), publish("t-initial", None, PIDF)).await;
    assert_eq!(again, first, "the same publication's ETag");
    let pubs = r.store.publications(aor, "presence").await.expect("store");
    assert_eq!(pubs.len(), 1, "one publication, not two: {pubs:?}");

    let closed = PIDF.replace("open", "closed");
    let modified = ask(r.shards.clone(), publish("t-modify", Some(&first), &closed)).await;
    let again = ask(next_bus.clone(), publish("t-modify", Some(&first), &closed)).await;
    assert_eq!(again, modified, "not 412: the modify's own ETag");
    let pubs = r.store.publications(aor, "presence").await.expect("store");
    assert_eq!(pubs.len(), 1);
    assert_eq!(pubs[0].etag, modified);
    assert!(pubs[0].body.as_ref().windows(6).any(|w| w == b"closed"));
    let applied_before = retried(&metrics, "applied_before");
    assert_eq!(applied_before, 2);
    // Another transaction with the gone ETag is still refused.
    let stale = next_bus
        .request(
            &subject,
            publish("t-other", Some(&first), PIDF),
            Duration::from_secs(5),
        )
        .await
        .expect("reply");
    assert!(
        matches!(
            stale,
            Reply::Refused(presence_core::commands::Refusal::UnknownEtag)
        ),
        "{stale:?}"
    );
}

/// A batch of commands (what one bus message carries: initial PUBLISHes
/// and modifies for several resources of several shards, made at once)
/// was applied by an owner that died before any of its answers got out.
/// Every command sent again to the next owner gets the answer of that
/// first application: the same ETags, one publication per resource, the
/// modified bodies, nothing refused.
#[tokio::test]
async fn a_batch_applied_by_a_dead_owner_is_answered_by_the_next_one() {
    let r = rig(vec![]).await;
    let aors: Vec<String> = (0..12).map(|i| format!("sip:u{i}@example.com")).collect();
    let subject = |aor: &str| presenced::names::shard_subject(presence_core::shard_of(aor, 8));
    let batch = |bus: Arc<dyn Requests<Command, Reply>>, cmds: Vec<(String, Command)>| async move {
        let calls = cmds.into_iter().map(|(aor, cmd)| {
            let bus = bus.clone();
            async move {
                match bus
                    .request(&subject(&aor), cmd, Duration::from_secs(5))
                    .await
                {
                    Ok(Reply::Published { etag, .. }) => etag,
                    other => panic!("{aor}: {other:?}"),
                }
            }
        });
        futures_util::future::join_all(calls).await
    };
    let initial = |a: &String| (a.clone(), publish_cmd(a, &format!("i-{a}"), None, PIDF));
    // The dead owner applied the batch; its answers are lost (never read).
    let first = batch(r.shards.clone(), aors.iter().map(initial).collect()).await;
    let (next_bus, metrics, _stop) = next_owner(&r.store).await;
    let again = batch(next_bus.clone(), aors.iter().map(initial).collect()).await;
    assert_eq!(again, first, "the same ETags from the next owner");

    let closed = PIDF.replace("open", "closed");
    let modify = |(a, etag): (&String, &String)| {
        (
            a.clone(),
            publish_cmd(a, &format!("m-{a}"), Some(etag), &closed),
        )
    };
    let modified = batch(
        r.shards.clone(),
        aors.iter().zip(&first).map(modify).collect(),
    )
    .await;
    let again = batch(next_bus, aors.iter().zip(&first).map(modify).collect()).await;
    assert_eq!(again, modified, "not 412: each modify's own ETag");
    for (aor, etag) in aors.iter().zip(&modified) {
        let pubs = r.store.publications(aor, "presence").await.expect("store");
        assert_eq!(pubs.len(), 1, "{aor}: one publication, not two: {pubs:?}");
        assert_eq!(&pubs[0].etag, etag);
        assert!(pubs[0].body.as_ref().windows(6).any(|w| w == b"closed"));
    }
    let applied_before = retried(&metrics, "applied_before");
    assert_eq!(applied_before, 24, "every command was found applied");
}

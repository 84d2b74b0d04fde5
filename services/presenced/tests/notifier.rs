//! The notifier against a real store and a stand-in for the edges.
//!
//! Backpressure (`MAX_OWED`) must not let dead watchers stall it: a NOTIFY whose watcher has not answered for a while
//! (`SLOW_WATCHER`, 2 s) stops counting, so a change for a live watcher
//! goes out behind a fan-out to more dead phones than the limit while
//! those wait out their transactions (32 s). Virtual time (the clock is
//! paused and jumps when every task waits), real notifier and store; the
//! edges are a bus whose "dead" edge never answers.

use async_trait::async_trait;
use bytes::Bytes;
use presence_core::commands::{Command, NotifyJob, Outcome, Reply};
use presence_core::model::{Flow, Subscription, Transport, View};
use presence_core::packages::Registry;
use presence_store::{
    BusError, Incoming, MemoryBus, MemoryQueue, MemoryStore, Op, Requests, Store, WorkQueue,
};
use presenced::edge::OutRequest;
use presenced::metrics::Metrics;
use presenced::notifier::Notifier;
use presenced::Clock;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

const DEAD: &str = "edge-dead";
/// Three popular presentities with 500 dead watchers each (one notify
/// batch each): more than the notifier's `MAX_OWED` (1 000).
const POPULAR: usize = 3;
const DEAD_WATCHERS: usize = 500;

/// A Refresh job delivered twice (the outbox may push a job twice, the
/// queue redeliver one) sends one NOTIFY, not two: CI saw the second as an
/// extra `active` NOTIFY where the watcher expected the final one. A new
/// refresh of the subscription (a new expiry) sends again.
#[tokio::test(start_paused = true)]
async fn a_refresh_job_twice_sends_one_notify() {
    let shards = 8;
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let aor = "sip:alice@example.com";
    let mut sub = subscription(1, aor, "edge-live");
    let commit = |sub: Subscription| {
        let store = store.clone();
        async move {
            store
                .commit(
                    presence_core::shard_of(aor, shards),
                    vec![Op::PutSubscription(sub)],
                )
                .await
                .expect("commit")
        }
    };
    commit(sub.clone()).await;
    let jobs: Arc<dyn WorkQueue<NotifyJob>> = Arc::new(MemoryQueue::new());
    let edges = Arc::new(Edges::default());
    let _stop = start(
        &store,
        &jobs,
        edges.clone(),
        shards,
        Arc::new(Metrics::new()),
        1,
    );
    let states = || edges.states.lock().unwrap().clone();
    let until = |n: usize| {
        let edges = edges.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            while edges.states.lock().unwrap().len() < n {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "fewer than {n} NOTIFYs"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let refresh = || NotifyJob::Refresh { id: sub.id.clone() };
    jobs.push(refresh()).await.expect("push");
    until(1).await;
    // Virtual time: a sleep returns once every task waits, i.e. once the
    // notifier has done all it will do with the job.
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The same job again: nothing new.
    jobs.push(refresh()).await.expect("push");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        states().len(),
        1,
        "the same Refresh again sent another NOTIFY: {:?}",
        states()
    );
    // A real refresh (a longer expiry): its NOTIFY.
    sub.expires_at_ms += 600_000;
    sub.remote_cseq += 1;
    commit(sub.clone()).await;
    jobs.push(refresh()).await.expect("push");
    until(2).await;
    let got = states();
    let expires = |s: &str| -> u64 {
        s.rsplit("expires=")
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    assert!(
        expires(&got[1]) > expires(&got[0]) + 500,
        "the second NOTIFY is not the refresh's: {got:?}"
    );
}

/// A notifier with `pullers` job pullers on `store` and `jobs`, sending
/// through `edges`; it runs until the returned sender is dropped.
fn start(
    store: &Arc<dyn Store>,
    jobs: &Arc<dyn WorkQueue<NotifyJob>>,
    edges: Arc<dyn Requests<OutRequest, Outcome>>,
    shards: u32,
    metrics: Arc<Metrics>,
    pullers: usize,
) -> watch::Sender<bool> {
    let shards_bus: Arc<dyn Requests<Command, Reply>> = Arc::new(MemoryBus::new());
    let notifier = Arc::new(Notifier::new(
        store.clone(),
        jobs.clone(),
        edges,
        shards_bus,
        Registry::default(),
        Clock::new(),
        shards,
        metrics,
    ));
    let (stop, stop_rx) = watch::channel(false);
    tokio::spawn(notifier.run(pullers, stop_rx));
    stop
}

/// Edges: `edge.edge-dead` never answers (each attempt runs out its
/// timeout); `edge.edge-dying` takes its first attempt and never answers
/// (it sent the NOTIFY and was killed before the watcher's 200 came back),
/// after which nobody serves it; every other edge answers 200 at once and
/// records when. Every attempt is recorded with its subject and CSeq.
#[derive(Default)]
struct Edges {
    answered: Mutex<Vec<(String, Instant)>>,
    /// The Subscription-State of each NOTIFY answered.
    states: Mutex<Vec<String>>,
    attempts: Mutex<Vec<(String, u32)>>,
}

fn header<'a>(req: &'a OutRequest, name: &str) -> Option<&'a str> {
    req.headers
        .iter()
        .find(|h| h.name().eq_ignore_ascii_case(name))
        .map(|h| h.value())
}

#[async_trait]
impl Requests<OutRequest, Outcome> for Edges {
    async fn request(
        &self,
        subject: &str,
        req: OutRequest,
        timeout: Duration,
    ) -> Result<Outcome, BusError> {
        let cseq = header(&req, "CSeq")
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("a NOTIFY with a CSeq");
        let tried_dying = {
            let mut a = self.attempts.lock().unwrap();
            let before = a
                .iter()
                .any(|(s, _)| *s == presenced::names::edge_subject(DYING));
            a.push((subject.to_string(), cseq));
            before
        };
        if subject == presenced::names::edge_subject(DEAD)
            || (subject == presenced::names::edge_subject(DYING) && !tried_dying)
        {
            tokio::time::sleep(timeout).await;
            return Err(BusError::Timeout);
        }
        if subject == presenced::names::edge_subject(DYING) {
            return Err(BusError::NoResponders(subject.to_string()));
        }
        self.answered
            .lock()
            .unwrap()
            .push((req.uri.clone(), Instant::now()));
        let state = header(&req, "Subscription-State").unwrap_or_default();
        self.states.lock().unwrap().push(state.to_string());
        Ok(Outcome::of_code(200))
    }
    async fn serve(
        &self,
        _: &str,
        _: mpsc::Sender<Incoming<OutRequest, Outcome>>,
    ) -> Result<(), BusError> {
        Ok(())
    }
    async fn unserve(&self, _: &str) -> Result<(), BusError> {
        Ok(())
    }
}

fn subscription(n: usize, aor: &str, edge: &str) -> Subscription {
    let addr = "127.0.0.1:5060".parse().unwrap();
    Subscription {
        id: format!("sub{n}"),
        aor: aor.into(),
        event: "presence".into(),
        event_id: None,
        watcher: format!("sip:w{n}@example.com"),
        call_id: format!("call{n}"),
        remote_tag: format!("tag{n}"),
        local_uri: format!("<{aor}>"),
        remote_uri: format!("<sip:w{n}@example.com>"),
        remote_target: format!("sip:w{n}@127.0.0.1"),
        route_set: Vec::new(),
        flow: Flow {
            transport: Transport::Udp,
            remote: addr,
            local: addr,
            edge: edge.into(),
            conn: 0,
            seal: None,
        },
        remote_cseq: 1,
        expires_at_ms: Clock::new().now_ms() + 3_600_000,
        content_type: "application/pidf+xml".into(),
        view: View::Full,
        rates: Default::default(),
    }
}

#[tokio::test(start_paused = true)]
async fn dead_watchers_do_not_stall_a_live_ones_notify() {
    let shards = 8;
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let live_aor = "sip:quiet@example.com";
    let mut changes = Vec::new();
    let commit = async |aor: &str, subs: Vec<Subscription>| {
        let mut ops: Vec<Op> = subs.into_iter().map(Op::PutSubscription).collect();
        ops.push(Op::PutDocument {
            aor: aor.into(),
            event: "presence".into(),
            content_type: "application/pidf+xml".into(),
            body: Bytes::from_static(b"<presence/>"),
            first_version: 1,
        });
        let v = store
            .commit(presence_core::shard_of(aor, shards), ops)
            .await
            .expect("commit");
        NotifyJob::Changed {
            aor: aor.into(),
            event: "presence".into(),
            version: v[0],
            at_ms: Clock::new().now_ms(),
        }
    };
    for p in 0..POPULAR {
        let aor = format!("sip:popular{p}@example.com");
        let subs = (0..DEAD_WATCHERS)
            .map(|n| subscription(p * DEAD_WATCHERS + n, &aor, DEAD))
            .collect();
        changes.push(commit(&aor, subs).await);
    }
    let live_change = commit(live_aor, vec![subscription(999_999, live_aor, "edge-live")]).await;
    let jobs: Arc<dyn WorkQueue<NotifyJob>> = Arc::new(MemoryQueue::new());
    let edges = Arc::new(Edges::default());
    let _stop = start(
        &store,
        &jobs,
        edges.clone(),
        shards,
        Arc::new(Metrics::new()),
        4,
    );
    for job in changes {
        jobs.push(job).await.expect("push");
    }
    // The dead watchers' NOTIFYs are all on their way before the live
    // change comes.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(edges.answered.lock().unwrap().is_empty());
    let start = Instant::now();
    jobs.push(live_change).await.expect("push");
    // Virtual time: waiting costs nothing real. The dead watchers'
    // transactions last 32 s.
    let mut waited = Duration::ZERO;
    let live_at = loop {
        if let Some((_, at)) = edges.answered.lock().unwrap().first().cloned() {
            break at;
        }
        assert!(
            waited < Duration::from_secs(60),
            "the live watcher never got its NOTIFY"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += Duration::from_millis(100);
    };
    let after = live_at - start;
    eprintln!("live NOTIFY after {after:?}");
    assert!(
        after >= Duration::from_secs(1),
        "the live change went out at once ({after:?}): the notifier took it past its limit"
    );
    assert!(
        after < Duration::from_secs(8),
        "the live watcher's NOTIFY waited {after:?} behind {} dead watchers (virtual time)",
        POPULAR * DEAD_WATCHERS
    );
}

const DYING: &str = "edge-dying";

/// CI saw a watcher get CSeq 7 twice in two transactions: its edge sent
/// the NOTIFY and was killed before the answer came back, and the notifier
/// sent the same NOTIFY through another edge. A re-send through another
/// edge after an attempt that may have gone out takes a new CSeq; a re-send
/// after an attempt that surely did not (nobody served the edge) keeps it.
#[tokio::test(start_paused = true)]
async fn a_notify_resent_through_another_edge_gets_a_new_cseq() {
    let shards = 8;
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let aor = "sip:alice@example.com";
    store
        .commit(
            presence_core::shard_of(aor, shards),
            vec![Op::PutSubscription(subscription(1, aor, DYING))],
        )
        .await
        .expect("commit");
    let jobs: Arc<dyn WorkQueue<NotifyJob>> = Arc::new(MemoryQueue::new());
    let edges = Arc::new(Edges::default());
    let metrics = Arc::new(Metrics::new());
    let _stop = start(&store, &jobs, edges.clone(), shards, metrics.clone(), 1);
    jobs.push(NotifyJob::Refresh { id: "sub1".into() })
        .await
        .expect("push");
    let dying = presenced::names::edge_subject(DYING);
    let mut waited = Duration::ZERO;
    let attempts = loop {
        let a = edges.attempts.lock().unwrap().clone();
        if a.last().is_some_and(|(s, _)| *s != dying) {
            break a;
        }
        assert!(
            waited < Duration::from_secs(120),
            "the NOTIFY never went through another edge: {a:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += Duration::from_millis(100);
    };
    // Timed out at the dying edge (may have gone out), then unserved there
    // (surely not sent: same CSeq), then through another edge: renumbered.
    let (first, second, last) = (&attempts[0], &attempts[1], attempts.last().unwrap());
    assert_eq!(first.0, dying, "{attempts:?}");
    assert_eq!(
        second, first,
        "a re-send to the same edge keeps its CSeq: {attempts:?}"
    );
    assert!(
        last.1 > first.1,
        "the re-send through {} kept CSeq {} of an attempt that may have reached the watcher: {attempts:?}",
        last.0,
        first.1
    );
    assert_eq!(metrics.notifier_renumbered.get(), 1, "{attempts:?}");
}

//! The request/reply bus against a real `nats-server` (started by the testkit
//! on free ports): the shared contract suite, and what NATS adds to it.

use presence_core::commands::{Command, Quota, Refusal, Reply};
use presence_nats::{
    connect, request_with_retry, Envelope, NatsMetrics, NatsRequests, RequestsConfig,
};
use presence_store::{BusError, MemoryBus, Requests};
use presence_testkit::nats::NatsServer;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

async fn bus<Req, Rep>(server: &NatsServer, name: &str) -> NatsRequests<Req, Rep> {
    let client = connect(&server.url(), name, &Default::default())
        .await
        .expect("connect");
    NatsRequests::new(
        client,
        RequestsConfig {
            label: "test".into(),
            ..Default::default()
        },
        NatsMetrics::default(),
    )
}

/// Answer every request with `f(request)` on `subject` until unserved.
async fn serve_with<Req, Rep>(
    bus: &NatsRequests<Req, Rep>,
    subject: &str,
    f: impl Fn(Req) -> Rep + Send + 'static,
) where
    Req: Envelope + Clone + Send + 'static,
    Rep: Envelope + Send + 'static,
{
    let (tx, mut rx) = mpsc::channel(64);
    bus.serve(subject, tx).await.expect("serve");
    tokio::spawn(async move {
        while let Some(inc) = rx.recv().await {
            let rep = f(inc.request.clone());
            inc.reply(rep);
        }
    });
}

#[tokio::test]
async fn nats_bus_passes_the_contract() {
    let server = NatsServer::start();
    let b: NatsRequests<u32, u32> = bus(&server, "contract").await;
    presence_store::contract::requests_contract(&b).await;
}

#[tokio::test]
async fn contract_with_requester_and_server_on_separate_connections() {
    // The contract on one bus object uses one connection; a real edge and
    // compositor use two. A split bus: requests on one client, serving on another.
    struct Split(NatsRequests<u32, u32>, NatsRequests<u32, u32>);
    #[async_trait::async_trait]
    impl Requests<u32, u32> for Split {
        async fn request(&self, s: &str, r: u32, t: Duration) -> Result<u32, BusError> {
            self.0.request(s, r, t).await
        }
        async fn serve(
            &self,
            s: &str,
            tx: mpsc::Sender<presence_store::Incoming<u32, u32>>,
        ) -> Result<(), BusError> {
            self.1.serve(s, tx).await
        }
        async fn unserve(&self, s: &str) -> Result<(), BusError> {
            self.1.unserve(s).await
        }
    }
    let server = NatsServer::start();
    let split = Split(bus(&server, "edge").await, bus(&server, "shard").await);
    presence_store::contract::requests_contract(&split).await;
}

#[tokio::test]
async fn commands_and_replies_travel_as_protobuf() {
    let server = NatsServer::start();
    let shard: NatsRequests<Command, Reply> = bus(&server, "shard").await;
    let edge: NatsRequests<Command, Reply> = bus(&server, "edge").await;
    serve_with(&shard, "shard.7", |c| match c {
        Command::Route { .. } => Reply::Refused(Refusal::TooMany {
            what: Quota::Contacts,
            limit: 10,
        }),
        _ => Reply::Done,
    })
    .await;
    let rep = edge
        .request(
            "shard.7",
            Command::Route {
                aor: "sip:a@example.com".into(),
                method: "MESSAGE".into(),
                origin: Default::default(),
                edge: String::new(),
            },
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(
        rep,
        Ok(Reply::Refused(Refusal::TooMany {
            what: Quota::Contacts,
            limit: 10,
        }))
    );
}

#[tokio::test]
async fn no_server_gives_no_responders_without_waiting_for_the_timeout() {
    let server = NatsServer::start();
    let b: NatsRequests<u32, u32> = bus(&server, "lonely").await;
    // With a timeout this long, only NATS's no-responders status can make the
    // request end with NoResponders rather than Timeout.
    let res = b.request("shard.404", 1, Duration::from_secs(60)).await;
    assert_eq!(res, Err(BusError::NoResponders("shard.404".into())));
}

#[tokio::test]
async fn a_server_that_drops_the_request_gives_no_responders() {
    let server = NatsServer::start();
    let b: NatsRequests<u32, u32> = bus(&server, "dropper").await;
    let (tx, mut rx) = mpsc::channel::<presence_store::Incoming<u32, u32>>(8);
    b.serve("shard.1", tx).await.expect("serve");
    tokio::spawn(async move {
        while let Some(inc) = rx.recv().await {
            drop(inc); // e.g. a compositor handing its shard over
        }
    });
    let res = b.request("shard.1", 1, Duration::from_secs(60)).await;
    assert_eq!(res, Err(BusError::NoResponders("shard.1".into())));
}

#[tokio::test]
async fn an_undecodable_request_is_answered_with_an_error() {
    let server = NatsServer::start();
    let shard: NatsRequests<Command, Reply> = bus(&server, "shard").await;
    serve_with(&shard, "shard.3", |_| Reply::Done).await;
    // A u32 bus on the same subject sends 4 bytes that are not a Command.
    let wrong: NatsRequests<u32, u32> = bus(&server, "wrong").await;
    let res = wrong
        .request("shard.3", 0xffff_ffff, Duration::from_secs(60))
        .await;
    assert!(matches!(res, Err(BusError::Backend(_))), "{res:?}");
    // The server still serves good requests.
    let edge: NatsRequests<Command, Reply> = bus(&server, "edge").await;
    let ok = edge
        .request(
            "shard.3",
            Command::Route {
                aor: "a".into(),
                method: "MESSAGE".into(),
                origin: Default::default(),
                edge: String::new(),
            },
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(ok, Ok(Reply::Done));
}

#[tokio::test]
async fn servers_of_one_subject_share_requests_each_answered_once() {
    let server = NatsServer::start();
    let old: NatsRequests<u32, u32> = bus(&server, "old-owner").await;
    let new: NatsRequests<u32, u32> = bus(&server, "new-owner").await;
    let edge: NatsRequests<u32, u32> = bus(&server, "edge").await;
    serve_with(&old, "shard.9", |x| x + 1_000_000).await;
    serve_with(&new, "shard.9", |x| x + 2_000_000).await;
    let (mut by_old, mut by_new) = (0, 0);
    for i in 0..200u32 {
        let rep = edge
            .request("shard.9", i, Duration::from_secs(10))
            .await
            .expect("answer");
        match rep - i {
            1_000_000 => by_old += 1,
            2_000_000 => by_new += 1,
            other => panic!("unexpected answer offset {other}"),
        }
    }
    assert_eq!(by_old + by_new, 200);
    assert!(
        by_old > 0 && by_new > 0,
        "queue group shares: {by_old}/{by_new}"
    );
    // Handover: the old owner leaves, every request still gets an answer.
    old.unserve("shard.9").await.expect("unserve");
    for i in 0..50u32 {
        assert_eq!(
            edge.request("shard.9", i, Duration::from_secs(10)).await,
            Ok(i + 2_000_000)
        );
    }
}

#[tokio::test]
async fn retry_helper_succeeds_when_a_server_appears_in_the_window() {
    let server = NatsServer::start();
    let edge: Arc<NatsRequests<u32, u32>> = Arc::new(bus(&server, "edge").await);
    let shard: NatsRequests<u32, u32> = bus(&server, "shard").await;
    let caller = {
        let edge = edge.clone();
        tokio::spawn(async move {
            request_with_retry(
                edge.as_ref(),
                "shard.5",
                21,
                Duration::from_millis(500),
                Duration::from_secs(30),
            )
            .await
        })
    };
    // Nobody serves shard.5 yet: the caller sees NoResponders and retries.
    assert_eq!(
        edge.request("shard.5", 0, Duration::from_secs(5)).await,
        Err(BusError::NoResponders("shard.5".into()))
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    serve_with(&shard, "shard.5", |x| x * 2).await;
    assert_eq!(caller.await.expect("join"), Ok(42));
}

#[tokio::test]
async fn retry_helper_gives_up_after_total() {
    let server = NatsServer::start();
    let edge: NatsRequests<u32, u32> = bus(&server, "edge").await;
    let res = request_with_retry(
        &edge,
        "shard.6",
        1,
        Duration::from_secs(2),
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(res, Err(BusError::NoResponders("shard.6".into())));
}

/// The helper works on any bus; under paused time its schedule is exact.
#[tokio::test(start_paused = true)]
async fn retry_helper_on_the_memory_bus_retries_then_stops() {
    let bus = Arc::new(MemoryBus::<u32, u32>::new());
    let start = tokio::time::Instant::now();
    let res = request_with_retry(
        bus.as_ref(),
        "s",
        1,
        Duration::from_secs(1),
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(res, Err(BusError::NoResponders("s".into())));
    assert_eq!(start.elapsed(), Duration::from_secs(3));

    // A server that holds requests: each try times out, then it answers.
    let (tx, mut rx) = mpsc::channel(8);
    bus.serve("s", tx).await.expect("serve");
    tokio::spawn(async move {
        let mut n = 0;
        let mut held = vec![];
        while let Some(inc) = rx.recv().await {
            n += 1;
            if n < 3 {
                held.push(inc);
            } else {
                inc.reply(7);
            }
        }
    });
    let res = request_with_retry(
        bus.as_ref(),
        "s",
        1,
        Duration::from_secs(1),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(res, Ok(7));
}

#[tokio::test]
async fn metrics_count_round_trips_and_errors() {
    let server = NatsServer::start();
    let registry = prometheus::Registry::new();
    let metrics = NatsMetrics::new(&registry).expect("register");
    let client = connect(&server.url(), "metrics", &Default::default())
        .await
        .expect("connect");
    let b: NatsRequests<u32, u32> = NatsRequests::new(
        client,
        RequestsConfig {
            label: "shard".into(),
            ..Default::default()
        },
        metrics.clone(),
    );
    let _ = b.request("shard.0", 1, Duration::from_secs(5)).await;
    serve_with(&b, "shard.0", |x| x).await;
    assert_eq!(b.request("shard.0", 1, Duration::from_secs(5)).await, Ok(1));
    assert_eq!(
        metrics
            .errors
            .with_label_values(&["shard", "request", "no_responders"])
            .get(),
        1
    );
    assert_eq!(
        metrics
            .request_seconds
            .with_label_values(&["shard"])
            .get_sample_count(),
        1
    );
    let names: Vec<String> = registry
        .gather()
        .iter()
        .map(|f| f.name().to_string())
        .collect();
    assert!(names.contains(&"presence_nats_request_seconds".to_string()));
    assert!(names.contains(&"presence_nats_errors_total".to_string()));
}

#[tokio::test]
async fn nats_topics_pass_the_contract() {
    let server = NatsServer::start();
    let client = connect(&server.url(), "topics", &Default::default())
        .await
        .expect("connect");
    presence_store::contract::topics_contract(&presence_nats::NatsTopics::new(client)).await;
}

#[tokio::test]
async fn nats_topics_cross_connections() {
    // The api role subscribes on its own connection; compositors publish on theirs.
    let server = NatsServer::start();
    let publisher = presence_nats::NatsTopics::new(
        connect(&server.url(), "pub", &Default::default())
            .await
            .expect("connect"),
    );
    let subscriber = presence_nats::NatsTopics::new(
        connect(&server.url(), "sub", &Default::default())
            .await
            .expect("connect"),
    );
    use presence_store::Topics;
    let mut rx = subscriber.subscribe("changes.7").await.expect("subscribe");
    publisher
        .publish("changes.7", bytes::Bytes::from_static(b"presence sip:a@x"))
        .await;
    let m = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("in time")
        .expect("open");
    assert_eq!(m.as_ref(), b"presence sip:a@x");
}

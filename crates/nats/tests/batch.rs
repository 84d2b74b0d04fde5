//! Batched request/reply (`RequestsConfig::batch`) against a real
//! `nats-server`: the shared contract, requests queued together travelling
//! as one message, answers not waiting for each other, the failure answers,
//! and an older server that takes no batches.

use futures_util::StreamExt;
use presence_nats::batch::{BATCH_HEADER, MAX_ITEMS};
use presence_nats::{connect, pb, NatsMetrics, NatsRequests, RequestsConfig};
use presence_store::{BusError, Incoming, Requests};
use presence_testkit::nats::NatsServer;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

async fn batching(server: &NatsServer, name: &str, metrics: NatsMetrics) -> NatsRequests<u32, u32> {
    let client = connect(&server.url(), name, &Default::default())
        .await
        .expect("connect");
    NatsRequests::new(
        client,
        RequestsConfig {
            label: "edge".into(),
            batch: true,
            ..Default::default()
        },
        metrics,
    )
}

/// Serve `subject` on `bus`, answering each request with `f(request)`.
async fn serve_with(
    bus: &NatsRequests<u32, u32>,
    subject: &str,
    f: impl Fn(u32) -> u32 + Send + 'static,
) {
    let (tx, mut rx) = mpsc::channel::<Incoming<u32, u32>>(256);
    bus.serve(subject, tx).await.expect("serve");
    tokio::spawn(async move {
        while let Some(inc) = rx.recv().await {
            let rep = f(inc.request);
            inc.reply(rep);
        }
    });
}

#[tokio::test]
async fn a_batching_bus_passes_the_contract() {
    let server = NatsServer::start();
    let b = batching(&server, "contract", NatsMetrics::default()).await;
    presence_store::contract::requests_contract(&b).await;
}

/// Requests made together to one subject travel in fewer messages than
/// there are requests, each caller gets its own answer, and the answers
/// come back batched too.
#[tokio::test]
async fn requests_made_together_travel_together() {
    let server = NatsServer::start();
    let metrics = NatsMetrics::default();
    let notifier = batching(&server, "notifier", metrics.clone()).await;
    let edge = batching(&server, "edge", metrics.clone()).await;
    serve_with(&edge, "edge.a", |x| x * 10).await;
    serve_with(&edge, "edge.b", |x| x * 100).await;
    // More than one message's worth, to two subjects, all at once.
    let n = (MAX_ITEMS + 10) as u32;
    let calls = (0..n).map(|i| {
        let subject = if i % 3 == 0 { "edge.b" } else { "edge.a" };
        let notifier = &notifier;
        async move {
            (
                i,
                subject,
                notifier.request(subject, i, Duration::from_secs(10)).await,
            )
        }
    });
    for (i, subject, res) in futures_util::future::join_all(calls).await {
        let want = if subject == "edge.b" { i * 100 } else { i * 10 };
        assert_eq!(res, Ok(want), "request {i} to {subject}");
    }
    let sent = metrics.batch_items.with_label_values(&["edge", "request"]);
    assert_eq!(sent.get_sample_sum() as u32, n);
    assert!(
        sent.get_sample_count() < u64::from(n) / 4,
        "{n} requests took {} messages",
        sent.get_sample_count()
    );
    let answers = metrics.batch_items.with_label_values(&["edge", "answer"]);
    assert_eq!(answers.get_sample_sum() as u32, n);
}

/// An answer that takes long (a NOTIFY to a slow phone) does not hold back
/// the others of its batch: here the slow one is answered only after the
/// others arrived, which would never happen if they waited for it.
#[tokio::test]
async fn one_slow_answer_does_not_hold_back_its_batch() {
    let server = NatsServer::start();
    let notifier = batching(&server, "notifier", NatsMetrics::default()).await;
    let edge = batching(&server, "edge", NatsMetrics::default()).await;
    let (tx, mut rx) = mpsc::channel::<Incoming<u32, u32>>(64);
    edge.serve("edge.a", tx).await.expect("serve");
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut release = Some(released);
        while let Some(inc) = rx.recv().await {
            if inc.request == 0 {
                let gate = release.take().expect("one slow request");
                tokio::spawn(async move {
                    let _ = gate.await;
                    inc.reply(0);
                });
            } else {
                let x = inc.request;
                inc.reply(x + 1);
            }
        }
    });
    let notifier = Arc::new(notifier);
    let slow = {
        let n = notifier.clone();
        tokio::spawn(async move { n.request("edge.a", 0, Duration::from_secs(30)).await })
    };
    let fast = (1..8u32).map(|i| {
        let n = notifier.clone();
        async move { n.request("edge.a", i, Duration::from_secs(30)).await }
    });
    let fast = futures_util::future::join_all(fast).await;
    assert_eq!(fast, (2..9u32).map(Ok).collect::<Vec<_>>());
    assert!(!slow.is_finished());
    release.send(()).expect("slow request waiting");
    assert_eq!(slow.await.expect("task"), Ok(0));
}

#[tokio::test]
async fn a_batch_nobody_serves_fails_at_once_with_no_responders() {
    let server = NatsServer::start();
    let metrics = NatsMetrics::default();
    let b = batching(&server, "lonely", metrics.clone()).await;
    let calls = (0..5u32).map(|i| b.request("edge.gone", i, Duration::from_secs(60)));
    let res = tokio::time::timeout(
        Duration::from_secs(20),
        futures_util::future::join_all(calls),
    )
    .await
    .expect("no-responders comes before the timeout");
    for r in res {
        assert_eq!(r, Err(BusError::NoResponders("edge.gone".into())));
    }
    // Counted per request, not per message.
    let failed = metrics
        .errors
        .with_label_values(&["edge", "request", "no_responders"])
        .get();
    assert_eq!(failed, 5);
}

#[tokio::test]
async fn requests_a_server_drops_fail_with_no_responders() {
    let server = NatsServer::start();
    let b = batching(&server, "dropper", NatsMetrics::default()).await;
    let (tx, mut rx) = mpsc::channel::<Incoming<u32, u32>>(8);
    b.serve("edge.d", tx).await.expect("serve");
    tokio::spawn(async move {
        while let Some(inc) = rx.recv().await {
            drop(inc);
        }
    });
    let calls = (0..3u32).map(|i| b.request("edge.d", i, Duration::from_secs(60)));
    for r in futures_util::future::join_all(calls).await {
        assert_eq!(r, Err(BusError::NoResponders("edge.d".into())));
    }
}

/// One undecodable request in a batch is answered "undecodable" by itself;
/// the others are served.
#[tokio::test]
async fn an_undecodable_request_in_a_batch_is_refused_alone() {
    let server = NatsServer::start();
    let edge = batching(&server, "edge", NatsMetrics::default()).await;
    serve_with(&edge, "edge.a", |x| x + 1).await;
    let raw = connect(&server.url(), "raw", &Default::default())
        .await
        .expect("connect");
    let inbox = raw.new_inbox();
    let mut answers = raw.subscribe(inbox.clone()).await.expect("subscribe");
    let good = 41u32.to_be_bytes().to_vec();
    let items = vec![
        pb::BusItem {
            token: 1,
            payload: b"no".to_vec().into(),
            error: String::new(),
            subject: String::new(),
        },
        pb::BusItem {
            token: 2,
            payload: good.into(),
            error: String::new(),
            subject: String::new(),
        },
    ];
    let mut h = async_nats::HeaderMap::new();
    h.insert(BATCH_HEADER, "1");
    raw.publish_with_reply_and_headers("edge.a", inbox, h, presence_nats::batch::encode(items))
        .await
        .expect("publish");
    let mut got = Vec::new();
    while got.len() < 2 {
        let msg = tokio::time::timeout(Duration::from_secs(10), answers.next())
            .await
            .expect("answers")
            .expect("subscription open");
        got.extend(presence_nats::batch::decode(&msg.payload).expect("a batch of answers"));
    }
    got.sort_by_key(|i| i.token);
    assert_eq!(got[0].error, "undecodable");
    assert_eq!(got[1].error, "");
    assert_eq!(&got[1].payload[..], &42u32.to_be_bytes());
}

/// A server of an older build answers a batch "undecodable" (its first
/// byte is no protobuf): that batch fails with a backend error, and the
/// requester then sends to that subject one request per message.
#[tokio::test]
async fn an_older_server_gets_one_request_per_message() {
    let server = NatsServer::start();
    let raw = connect(&server.url(), "old-edge", &Default::default())
        .await
        .expect("connect");
    let mut requests = raw
        .queue_subscribe("edge.old", "edges".to_string())
        .await
        .expect("subscribe");
    let answering = raw.clone();
    tokio::spawn(async move {
        while let Some(msg) = requests.next().await {
            let Some(reply) = msg.reply.clone() else {
                continue;
            };
            match <[u8; 4]>::try_from(&msg.payload[..]) {
                Ok(b) => {
                    let x = u32::from_be_bytes(b) + 1;
                    let _ = answering
                        .publish(reply, x.to_be_bytes().to_vec().into())
                        .await;
                }
                Err(_) => {
                    let mut h = async_nats::HeaderMap::new();
                    h.insert(presence_nats::requests::ERROR_HEADER, "undecodable");
                    let _ = answering
                        .publish_with_headers(reply, h, Default::default())
                        .await;
                }
            }
        }
    });
    raw.flush().await.expect("flush");
    let b = batching(&server, "notifier", NatsMetrics::default()).await;
    let first = b.request("edge.old", 1, Duration::from_secs(10)).await;
    assert!(matches!(first, Err(BusError::Backend(_))), "{first:?}");
    assert_eq!(
        b.request("edge.old", 1, Duration::from_secs(10)).await,
        Ok(2)
    );
    assert_eq!(
        b.request("edge.old", 5, Duration::from_secs(10)).await,
        Ok(6)
    );
}

/// A request sent through a router subject reaches its server with the
/// subject it is for; one nobody serves there fails with `NoResponders`
/// for that subject.
#[tokio::test]
async fn a_routed_request_names_its_subject() {
    let server = NatsServer::start();
    let owner = batching(&server, "owner", NatsMetrics::default()).await;
    let (tx, mut rx) = mpsc::channel::<Incoming<u32, u32>>(16);
    owner.serve("owner.c1", tx).await.expect("serve");
    tokio::spawn(async move {
        while let Some(inc) = rx.recv().await {
            let shard: u32 = inc
                .subject
                .strip_prefix("shard.")
                .and_then(|k| k.parse().ok())
                .unwrap_or(999);
            let x = inc.request;
            inc.reply(shard * 100 + x);
        }
    });
    let edge = batching(&server, "edge", NatsMetrics::default()).await;
    let t = Duration::from_secs(10);
    let calls = [3u32, 7, 3].map(|k| {
        let subject = format!("shard.{k}");
        let edge = &edge;
        async move { edge.request_via("owner.c1", &subject, 1, t).await }
    });
    assert_eq!(
        futures_util::future::join_all(calls).await,
        vec![Ok(301), Ok(701), Ok(301)]
    );
    assert_eq!(
        edge.request_via("owner.gone", "shard.3", 1, t).await,
        Err(BusError::NoResponders("shard.3".into()))
    );
}

/// A server that dies in the middle of a batch (here: answers the first
/// requests it took, then never answers the rest, as a process killed
/// between a commit and its replies): the answered requests get their
/// answers at once, each of the others fails with `Timeout` at its own
/// deadline. Not `NoResponders`, which would tell the caller that nothing
/// was applied: the rest may have been (the shard owner's re-send policy,
/// ARCHITECTURE.md "Retries", then relies on idempotence).
#[tokio::test]
async fn a_server_dying_mid_batch_answers_what_it_answered_and_the_rest_time_out() {
    let server = NatsServer::start();
    let metrics = NatsMetrics::default();
    let owner = batching(&server, "owner", NatsMetrics::default()).await;
    let (tx, mut rx) = mpsc::channel::<Incoming<u32, u32>>(64);
    owner.serve("shard.1", tx).await.expect("serve");
    let (held_tx, mut held_rx) = mpsc::unbounded_channel::<Incoming<u32, u32>>();
    tokio::spawn(async move {
        while let Some(inc) = rx.recv().await {
            if inc.request < 3 {
                let x = inc.request;
                inc.reply(x + 1);
            } else {
                // Taken, never answered, never dropped (a drop would answer).
                let _ = held_tx.send(inc);
            }
        }
    });
    let edge = Arc::new(batching(&server, "edge", metrics.clone()).await);
    let started = std::time::Instant::now();
    let calls = (0..8u32).map(|i| {
        let edge = edge.clone();
        async move {
            let res = edge.request("shard.1", i, Duration::from_secs(3)).await;
            (i, res, started.elapsed())
        }
    });
    let results = futures_util::future::join_all(calls).await;
    let sent = metrics.batch_items.with_label_values(&["edge", "request"]);
    assert!(
        sent.get_sample_count() < 8,
        "the requests did not travel together ({} messages)",
        sent.get_sample_count()
    );
    for (i, res, at) in results {
        if i < 3 {
            assert_eq!(res, Ok(i + 1), "request {i}");
        } else {
            assert_eq!(res, Err(BusError::Timeout), "request {i}");
            assert!(
                at >= Duration::from_secs(3),
                "request {i} failed early: {at:?}"
            );
        }
    }
    let mut held = Vec::new();
    while let Ok(inc) = held_rx.try_recv() {
        held.push(inc);
    }
    assert_eq!(held.len(), 5, "the server took every request");
    std::mem::forget(held);
}

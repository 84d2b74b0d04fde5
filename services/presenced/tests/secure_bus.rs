//! The backends secured: a real `nats-server` and a real `redis-server`
//! that require TLS and a password, and `presenced` with every role on
//! them serving a watcher's NOTIFY. A NATS client without the CA, or with
//! a wrong password, does not get in; neither does presenced without the
//! Redis password.

mod common;
mod harness;

use common::*;
use presence_testkit::nats::{Auth, NatsServer, Secure};
use presence_testkit::redis::RedisServer;
use std::net::SocketAddr;
use std::time::Duration;

fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("presence-secure-bus-{}", rand_token()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_runs_over_redis_and_nats_with_tls_and_passwords() {
    let dir = tempdir();
    let (pem, key, _) = harness::make_cert(&["127.0.0.1", "localhost"]);
    let (cert_file, key_file) = (dir.join("nats-cert.pem"), dir.join("nats-key.pem"));
    std::fs::write(&cert_file, &pem).unwrap();
    std::fs::write(&key_file, &key).unwrap();
    let password = format!("pw-{}", rand_token());
    let pw_file = dir.join("nats-password");
    std::fs::write(&pw_file, format!("{password}\n")).unwrap();
    let nats = NatsServer::start_secure(Secure {
        tls: Some((cert_file.clone(), key_file.clone())),
        auth: Auth::User {
            user: "presence".into(),
            password: password.clone(),
        },
    });
    let redis_pw_file = dir.join("redis-password");
    let redis_password = format!("rpw-{}", rand_token());
    std::fs::write(&redis_pw_file, &redis_password).unwrap();
    let redis = RedisServer::start_secure(&cert_file, &key_file, &redis_password);
    assert!(redis.url().starts_with("rediss://"), "{}", redis.url());
    let url = nats.url();
    assert!(url.starts_with("tls://"), "{url}");

    // Without the CA the server's certificate is not trusted.
    let no_ca = presence_nats::Security {
        user: Some(("presence".into(), password.clone())),
        ..Default::default()
    };
    assert!(presence_nats::connect(&url, "t", &no_ca).await.is_err());
    // With it but a wrong password: refused by the server.
    let wrong = presence_nats::Security {
        ca: Some(cert_file.clone()),
        user: Some(("presence".into(), "guess".into())),
        ..Default::default()
    };
    assert!(presence_nats::connect(&url, "t", &wrong).await.is_err());
    let right = presence_nats::Security {
        ca: Some(cert_file.clone()),
        user: Some(("presence".into(), password.clone())),
        ..Default::default()
    };
    let client = presence_nats::connect(&url, "t", &right)
        .await
        .expect("connects with the CA and the password");
    drop(client);

    // presenced, every role, on that bus.
    let (sip, http_port) = (presence_testkit::free_port(), presence_testkit::free_port());
    let log = dir.join("presenced.log");
    let out = std::fs::File::create(&log).unwrap();
    // presenced on both secured backends, with or without the Redis password.
    let presenced = |sip: &str, http: &str, redis_password: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_presenced"));
        cmd.args(["--sip-listen", sip, "--http-listen", http])
            .args(["--domain", "example.com", "--shards", "8", "--log", "info"])
            .args(["--nonce-secret", "secure-bus-test-secret"])
            .args(["--redis", &redis.url()])
            .arg("--redis-ca")
            .arg(&cert_file)
            .args(["--nats", &url])
            .arg("--nats-ca")
            .arg(&cert_file)
            .args(["--nats-user", "presence"])
            .arg("--nats-password-file")
            .arg(&pw_file);
        if redis_password {
            cmd.arg("--redis-password-file").arg(&redis_pw_file);
        }
        cmd
    };
    let mut child = presenced(
        &format!("127.0.0.1:{sip}"),
        &format!("127.0.0.1:{http_port}"),
        true,
    )
    .stdout(out.try_clone().unwrap())
    .stderr(out)
    .spawn()
    .expect("start presenced");
    let http_addr: SocketAddr = format!("127.0.0.1:{http_port}").parse().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ready = tokio::time::timeout(
            Duration::from_secs(1),
            tokio::spawn(async move { http(http_addr, "GET", "/readyz", b"").await }),
        )
        .await;
        if let Ok(Ok((200, _))) = ready {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "presenced exited ({status}):\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "presenced not ready:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let at: SocketAddr = format!("127.0.0.1:{sip}").parse().unwrap();
    watcher_sees_a_publish(at, "over a secured bus", Duration::from_secs(15)).await;
    let _ = child.kill();
    let _ = child.wait();

    // Without the Redis password presenced does not start.
    let mut refused = presenced("127.0.0.1:0", "127.0.0.1:0", false)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run presenced");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = refused.try_wait().expect("status") {
            break Some(status);
        }
        if tokio::time::Instant::now() > deadline {
            let _ = refused.kill();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let out = refused.wait_with_output().expect("output");
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        status.is_some_and(|s| !s.success()),
        "presenced did not refuse to start without the Redis password: {text}"
    );
    assert!(text.contains("NOAUTH") || text.contains("Redis"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A client of NATS user `role` (password from the harness's file), with
/// the inbox prefix presenced gives that role.
async fn as_role(
    url: &str,
    dir: &std::path::Path,
    role: &str,
) -> presence_nats::async_nats::Client {
    let password = std::fs::read_to_string(harness::nats_password_file(dir, role)).unwrap();
    let security = presence_nats::Security {
        user: Some((role.into(), password)),
        inbox_prefix: Some(format!("_INBOX.{role}")),
        ..Default::default()
    };
    presence_nats::connect(url, &format!("test-{role}"), &security)
        .await
        .unwrap_or_else(|e| panic!("{role} cannot log in: {e}"))
}

/// Returns once the server has handled everything `client` sent before
/// (it handles one connection in order): an echo through the client's own
/// inbox, which every role may use.
async fn round_trip(client: &presence_nats::async_nats::Client) {
    use futures_util::StreamExt;
    let inbox = client.new_inbox();
    let mut echo = client.subscribe(inbox.clone()).await.unwrap();
    client.publish(inbox, "".into()).await.unwrap();
    let back = tokio::time::timeout(Duration::from_secs(10), echo.next()).await;
    assert!(
        back.is_ok_and(|m| m.is_some()),
        "no echo through {client:?}'s inbox"
    );
}

/// Does a message `publisher` sends on `subject` reach `subscriber`'s
/// subscription to `filter`? A subscription or publication the server
/// refuses delivers nothing (it answers the client with a permissions
/// violation); an allowed one arrives within milliseconds.
async fn delivered(
    subscriber: &presence_nats::async_nats::Client,
    filter: &str,
    publisher: &presence_nats::async_nats::Client,
    subject: &str,
) -> bool {
    use futures_util::StreamExt;
    let mut sub = subscriber.subscribe(filter.to_string()).await.unwrap();
    subscriber.flush().await.unwrap();
    round_trip(subscriber).await;
    publisher
        .publish(subject.to_string(), "probe".into())
        .await
        .unwrap();
    round_trip(publisher).await;
    let got = tokio::time::timeout(Duration::from_millis(500), sub.next())
        .await
        .is_ok_and(|m| m.is_some());
    let _ = sub.unsubscribe().await;
    got
}

/// The per-role users of helm/presence/files/nats-auth.conf (what every
/// harness cluster runs under): each role reaches the subjects it needs
/// and no others; nobody logs in without a password; no role may delete
/// the notify stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_may_use_only_its_own_nats_subjects() {
    let dir = tempdir();
    let nats = harness::start_nats_with_role_users(&dir);
    let url = nats.url();
    assert!(
        presence_nats::connect(&url, "anonymous", &Default::default())
            .await
            .is_err()
    );
    let edge = as_role(&url, &dir, "edge").await;
    let compositor = as_role(&url, &dir, "compositor").await;
    let notifier = as_role(&url, &dir, "notifier").await;

    // Allowed: requests to shard owners, NOTIFYs to edges.
    assert!(delivered(&compositor, "shard.*", &edge, "shard.5").await);
    assert!(delivered(&compositor, "shard.*", &notifier, "shard.5").await);
    // An edge's requests for several shards of one compositor.
    assert!(delivered(&compositor, "owner.*", &edge, "owner.c1").await);
    assert!(!delivered(&compositor, "owner.*", &notifier, "owner.c1").await);
    assert!(!delivered(&edge, "owner.*", &edge, "owner.c1").await);
    assert!(delivered(&edge, "edge.e1", &notifier, "edge.e1").await);
    assert!(delivered(&edge, "edges.any", &edge, "edges.any").await);
    // Refused publications: a compositor cannot send SIP through an edge.
    assert!(!delivered(&edge, "edge.e1", &compositor, "edge.e1").await);
    assert!(!delivered(&edge, "edges.any", &compositor, "edges.any").await);
    // Refused subscriptions: only compositors serve shards; nobody reads
    // another role's replies.
    assert!(!delivered(&edge, "shard.*", &notifier, "shard.5").await);
    assert!(!delivered(&notifier, "shard.*", &edge, "shard.5").await);
    assert!(!delivered(&notifier, "edge.*", &edge, "edge.e1").await);
    assert!(!delivered(&notifier, "_INBOX.edge.>", &notifier, "_INBOX.edge.x").await);
    assert!(!delivered(&compositor, "_INBOX.notifier.>", &edge, "_INBOX.notifier.x").await);

    // JetStream: any role sets up the stream; none may delete it; an edge
    // may not push jobs.
    let queue = presence_nats::JetStreamQueue::<presence_core::commands::NotifyJob>::new(
        compositor.clone(),
        presence_nats::QueueConfig::default(),
        presence_nats::NatsMetrics::new(&prometheus::Registry::new()).unwrap(),
    )
    .await
    .expect("a compositor sets up the notify stream");
    drop(queue);
    // The server does not answer a refused request: 2 s tells.
    async fn refused<T, E>(op: impl std::future::IntoFuture<Output = Result<T, E>>) -> bool {
        matches!(
            tokio::time::timeout(Duration::from_secs(2), op).await,
            Err(_) | Ok(Err(_))
        )
    }
    for client in [&edge, &compositor, &notifier] {
        let js = presence_nats::async_nats::jetstream::new(client.clone());
        let stream = js.get_stream("PRESENCE_NOTIFY").await.expect("stream info");
        assert!(refused(stream.purge()).await);
        assert!(refused(js.delete_stream("PRESENCE_NOTIFY")).await);
    }
    let js = presence_nats::async_nats::jetstream::new(edge.clone());
    assert!(
        refused(async { js.publish("presence.notify", "x".into()).await?.await }).await,
        "an edge pushed a notify job"
    );
    let js = presence_nats::async_nats::jetstream::new(compositor.clone());
    let ack = js.publish("presence.notify", "x".into()).await.unwrap();
    assert!(ack.await.is_ok(), "a compositor pushes jobs");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Under the per-role users, an edge answers a notifier's batch of NOTIFYs
/// (crates/nats/src/batch.rs) in as many messages as their transactions
/// take: here the first request is answered only after the others came
/// back in earlier messages. NATS's `allow_responses = true` lets a
/// responder answer once; nats-auth.conf allows 64 answers per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_answers_a_batch_in_several_messages_under_its_permissions() {
    use presence_nats::{NatsMetrics, NatsRequests, RequestsConfig};
    use presence_store::{Incoming, Requests};
    let dir = tempdir();
    let nats = harness::start_nats_with_role_users(&dir);
    let url = nats.url();
    let bus = |client| {
        NatsRequests::<u32, u32>::new(
            client,
            RequestsConfig {
                label: "edge".into(),
                batch: true,
                ..Default::default()
            },
            NatsMetrics::default(),
        )
    };
    let edge = bus(as_role(&url, &dir, "edge").await);
    let notifier = std::sync::Arc::new(bus(as_role(&url, &dir, "notifier").await));
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Incoming<u32, u32>>(64);
    edge.serve("edge.e1", tx).await.expect("serve");
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut gate = Some(released);
        while let Some(inc) = rx.recv().await {
            if inc.request == 0 {
                let gate = gate.take().expect("one slow request");
                tokio::spawn(async move {
                    let _ = gate.await;
                    inc.reply(1000);
                });
            } else {
                let x = inc.request;
                inc.reply(x * 2);
            }
        }
    });
    let calls: Vec<_> = (0..6u32)
        .map(|i| {
            let n = notifier.clone();
            tokio::spawn(async move { n.request("edge.e1", i, Duration::from_secs(20)).await })
        })
        .collect();
    let mut calls = calls.into_iter();
    let slow = calls.next().expect("six calls");
    for (i, call) in (1..6u32).zip(calls) {
        assert_eq!(call.await.expect("task"), Ok(i * 2));
    }
    release.send(()).expect("the slow request waits");
    assert_eq!(slow.await.expect("task"), Ok(1000));
}

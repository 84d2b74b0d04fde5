//! The backends secured: a real `nats-server` and a real `redis-server`
//! that require TLS and a password, and `presenced` with every role on
//! them serving a watcher's NOTIFY. A NATS client without the CA, or with
//! a wrong password, does not get in; neither does presenced without the
//! Redis password.

mod common;
mod harness;

use common::*;
use presence_testkit::nats::{NatsServer, Secure};
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
        cert: cert_file.clone(),
        key: key_file.clone(),
        user: "presence".into(),
        password: password.clone(),
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
    let mut bob = Ua::new(Tp::Udp, at, "bob").await;
    bob.patience = Duration::from_secs(15);
    let (r, _, _) = bob.subscribe("sip:alice@example.com", 600).await;
    assert_eq!(r.code, 200, "{}", r.reason);
    let _first = bob.notify().await;
    let mut alice = Ua::new(Tp::Udp, at, "alice").await;
    alice.patience = Duration::from_secs(15);
    let publish = alice
        .req("PUBLISH", "sip:alice@example.com")
        .h("Event", "presence")
        .h("Expires", "600")
        .body(
            "application/pidf+xml",
            pidf("sip:alice@example.com", "t1", true, "over a secured bus"),
        );
    assert_eq!(alice.send(&publish).await.code, 200);
    let n = bob
        .notify_containing("over a secured bus", Duration::from_secs(15))
        .await;
    assert!(String::from_utf8_lossy(&n.body).contains("over a secured bus"));
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

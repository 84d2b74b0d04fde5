//! Event packages other than presence, end to end over real sockets, and
//! the publishers that feed them (`--trusted-publisher`). Every scenario
//! runs against the all-in-one server and against a cluster of processes
//! (tests/harness: real redis-server and nats-server, the publisher on one
//! edge and the watchers on the other), over UDP and TCP; the transports
//! themselves are e2e.rs's concern.
//!
//! - message_summary: RFC 3842 MWI. A voicemail server PUBLISHes a
//!   mailbox's summary; the phone's subscription gets it byte for byte,
//!   "Messages-Waiting: no" before and after; bad bodies and types are
//!   refused; only the mailbox's owner may watch it; a REGISTER does not
//!   touch it.
//! - message_summary_expiry: a summary whose publication expires turns
//!   back into "Messages-Waiting: no" for its watcher.
//! - trusted_identity: with Digest on, a user may publish only their own
//!   AoR, a `--trusted-publisher` identity any local one.
//! - trusted_network: a PUBLISH from a `--trusted-publisher` network is
//!   taken without a challenge; its other requests are still challenged.

mod common;
mod harness;

use common::*;
use presence_sip::{HeaderAccess, Response};
use std::time::Duration;

macro_rules! scenarios {
    ($($name:ident;)*) => {$(
        mod $name {
            use super::{Mode, Tp};
            #[tokio::test]
            async fn udp() {
                super::$name(Tp::Udp, Mode::AllInOne).await
            }
            #[tokio::test]
            async fn tcp() {
                super::$name(Tp::Tcp, Mode::AllInOne).await
            }
            #[tokio::test]
            async fn cluster_udp() {
                super::$name(Tp::Udp, Mode::Cluster).await
            }
            #[tokio::test]
            async fn cluster_tcp() {
                super::$name(Tp::Tcp, Mode::Cluster).await
            }
        }
    )*};
}

scenarios! {
    message_summary;
    message_summary_expiry;
    trusted_identity;
    trusted_network;
}

const MWI: &str = "application/simple-message-summary";
const NO_MESSAGES: &str = "Messages-Waiting: no\r\n";
/// The RFC 3842 example, with LF line ends and an optional message header
/// part, so that "byte for byte" is tested on something a rewrite would
/// change.
const SUMMARY: &str = "Messages-Waiting: yes\nMessage-Account: sip:alice@vmail.example.com\nVoice-Message: 2/8 (0/2)\n\nTo: <sip:alice@example.com>\nSubject: call me\n";

/// How long a "nothing more comes" check listens.
const SHORT: Duration = Duration::from_millis(1000);

fn subscribe_req(ua: &mut Ua, target: &str, expires: u32) -> Req {
    let contact = format!("<{}>", ua.contact_uri());
    ua.req("SUBSCRIBE", target)
        .h("Event", "message-summary")
        .h("Accept", MWI)
        .h("Contact", contact)
        .h("Expires", expires.to_string())
}

fn publish_req(
    ua: &mut Ua,
    target: &str,
    etag: Option<&str>,
    expires: u32,
    body: Option<&str>,
) -> Req {
    let mut req = ua
        .req("PUBLISH", target)
        .h("Event", "message-summary")
        .h("Expires", expires.to_string());
    if let Some(e) = etag {
        req = req.h("SIP-If-Match", e);
    }
    if let Some(b) = body {
        req = req.body(MWI, b.as_bytes().to_vec());
    }
    req
}

fn etag(r: &Response) -> String {
    r.sip_etag().expect("SIP-ETag").to_string()
}

async fn message_summary(tp: Tp, mode: Mode) {
    let s = start(mode, None, None, &[]).await;
    let mut vm = s.ua(tp, PRESENTITY, "voicemail").await;
    let mut alice = s.ua(tp, WATCHER, "alice").await;
    let mut bob = s.ua(tp, WATCHER, "bob").await;
    let mailbox = alice.aor.clone();

    // Served, and said so.
    let req = alice.req("OPTIONS", "sip:example.com");
    let r = alice.send(&req).await;
    assert!(
        r.allow_events().iter().any(|e| e == "message-summary"),
        "{:?}",
        r.allow_events()
    );

    // The phone subscribes to its own mailbox: nothing published yet.
    let req = subscribe_req(&mut alice, &mailbox, 600);
    let r = alice.send(&req).await;
    assert_eq!(r.code, 200, "{}", r.reason);
    let n = alice.notify().await;
    assert_eq!(n.header("Event").map(str::trim), Some("message-summary"));
    assert_eq!(
        n.content_type().map(|c| c.as_str().to_string()).as_deref(),
        Some(MWI)
    );
    assert_eq!(body_str(&n), NO_MESSAGES);

    // Someone else's voicemail lamp is private.
    let req = subscribe_req(&mut bob, &mailbox, 600);
    assert_eq!(bob.send(&req).await.code, 403);

    // The voicemail server publishes for the mailbox: byte for byte.
    let req = publish_req(&mut vm, &mailbox, None, 600, Some(SUMMARY));
    let r = vm.send(&req).await;
    assert_eq!(r.code, 200, "{}", r.reason);
    let tag = etag(&r);
    let n = alice.notify_containing("Voice-Message", s.wait()).await;
    assert_eq!(&n.body[..], SUMMARY.as_bytes());
    assert_eq!(
        n.content_type().map(|c| c.as_str().to_string()).as_deref(),
        Some(MWI)
    );

    // What is not a summary is refused, and changes nothing.
    let req = publish_req(
        &mut vm,
        &mailbox,
        None,
        600,
        Some("Messages-Waiting: perhaps\r\n"),
    );
    assert_eq!(vm.send(&req).await.code, 400);
    let req = vm
        .req("PUBLISH", &mailbox)
        .h("Event", "message-summary")
        .body(
            "application/pidf+xml",
            pidf(&mailbox, "t", true, "x").into_bytes(),
        );
    let r = vm.send(&req).await;
    assert_eq!(r.code, 415);
    assert_eq!(r.header("Accept").map(str::trim), Some(MWI));

    // A REGISTER of the mailbox's owner makes no message-summary NOTIFY.
    let contact = format!("<{}>", alice.contact_uri());
    let req = alice
        .req("REGISTER", "sip:example.com")
        .to(&mailbox)
        .h("Contact", contact)
        .h("Expires", "600");
    assert_eq!(alice.send(&req).await.code, 200);
    assert!(
        alice.recv_request("NOTIFY", SHORT).await.is_none(),
        "a binding changed the voicemail lamp"
    );

    // The messages are heard: the server removes its publication.
    let req = publish_req(&mut vm, &mailbox, Some(&tag), 0, None);
    assert_eq!(vm.send(&req).await.code, 200);
    let n = alice
        .notify_containing("Messages-Waiting: no", s.wait())
        .await;
    assert_eq!(body_str(&n), NO_MESSAGES);

    // An unknown package is still 489 with the served ones.
    let contact = format!("<{}>", bob.contact_uri());
    let req = bob
        .req("SUBSCRIBE", &mailbox)
        .h("Event", "no-such-package")
        .h("Contact", contact)
        .h("Expires", "600");
    let r = bob.send(&req).await;
    assert_eq!(r.code, 489);
    for e in ["presence", "message-summary"] {
        assert!(
            r.allow_events().iter().any(|a| a == e),
            "{:?}",
            r.allow_events()
        );
    }
    s.shutdown().await;
}

async fn message_summary_expiry(tp: Tp, mode: Mode) {
    let s = start(mode, None, None, &[]).await;
    let mut vm = s.ua(tp, PRESENTITY, "voicemail").await;
    let mut alice = s.ua(tp, WATCHER, "alice").await;
    let mailbox = alice.aor.clone();
    let req = subscribe_req(&mut alice, &mailbox, 600);
    assert_eq!(alice.send(&req).await.code, 200);
    assert_eq!(body_str(&alice.notify().await), NO_MESSAGES);
    let req = publish_req(&mut vm, &mailbox, None, 2, Some(SUMMARY));
    let r = vm.send(&req).await;
    assert_eq!(r.code, 200, "{}", r.reason);
    assert_eq!(r.expires(), Some(Ok(2)));
    let n = alice.notify_containing("Voice-Message", s.wait()).await;
    assert_eq!(&n.body[..], SUMMARY.as_bytes());
    // Not refreshed: it expires, and the lamp goes out.
    let n = alice
        .notify_containing("Messages-Waiting: no", s.patience(Duration::from_secs(5)))
        .await;
    assert_eq!(body_str(&n), NO_MESSAGES);
    assert!(s
        .store()
        .publications(&mailbox, "message-summary")
        .await
        .unwrap()
        .is_empty());
    s.shutdown().await;
}

const USERS: &str =
    "alice@example.com:secret\nbob@example.com:hunter2\nvoicemail@example.com:vm-pass\n";

async fn trusted_identity(tp: Tp, mode: Mode) {
    let s = start(
        mode,
        Some(USERS),
        None,
        &["--trusted-publisher", "voicemail@example.com"],
    )
    .await;
    let mut vm = s.ua(tp, PRESENTITY, "voicemail").await;
    vm.password = "vm-pass".into();
    let mut bob = s.ua(tp, PRESENTITY, "bob").await;
    bob.password = "hunter2".into();
    let mailbox = "sip:alice@example.com".to_string();

    // An ordinary user, authenticated, may not publish for another.
    let req = publish_req(&mut bob, &mailbox, None, 600, Some(SUMMARY));
    let (r, _) = bob.send_auth(&req, "MD5").await;
    assert_eq!(r.code, 403, "{}", r.reason);
    // Not without authenticating either: the challenge comes first.
    let req = publish_req(&mut vm, &mailbox, None, 600, Some(SUMMARY));
    assert_eq!(vm.send(&req).await.code, 401);
    // The trusted identity, authenticated, may.
    let req = publish_req(&mut vm, &mailbox, None, 600, Some(SUMMARY));
    let (r, _) = vm.send_auth(&req, "MD5").await;
    assert_eq!(r.code, 200, "{}", r.reason);
    // And its own AoR as anyone may.
    let own = vm.aor.clone();
    let req = publish_req(&mut vm, &own, None, 600, Some(NO_MESSAGES));
    let (r, _) = vm.send_auth(&req, "MD5").await;
    assert_eq!(r.code, 200, "{}", r.reason);

    owner_sees_the_summary(&s, tp).await;
    s.shutdown().await;
}

async fn trusted_network(tp: Tp, mode: Mode) {
    // Every UA of the test sends from 127.0.0.1.
    let s = start(
        mode,
        Some(USERS),
        None,
        &["--trusted-publisher", "127.0.0.0/8"],
    )
    .await;
    let mut pbx = s.ua(tp, PRESENTITY, "pbx").await;
    let mailbox = "sip:alice@example.com".to_string();
    // No credentials at all (pbx is no user): taken unchallenged.
    let req = publish_req(&mut pbx, &mailbox, None, 600, Some(SUMMARY));
    let r = pbx.send(&req).await;
    assert_eq!(r.code, 200, "{}", r.reason);
    let tag = etag(&r);
    let req = publish_req(&mut pbx, &mailbox, Some(&tag), 600, None);
    assert_eq!(pbx.send(&req).await.code, 200, "a refresh too");
    // Its other requests are challenged as anyone's.
    let req = subscribe_req(&mut pbx, &mailbox, 600);
    assert_eq!(pbx.send(&req).await.code, 401);
    let contact = format!("<{}>", pbx.contact_uri());
    let req = pbx
        .req("REGISTER", "sip:example.com")
        .to("sip:pbx@example.com")
        .h("Contact", contact)
        .h("Expires", "600");
    assert_eq!(pbx.send(&req).await.code, 401);
    owner_sees_the_summary(&s, tp).await;
    s.shutdown().await;
}

/// alice, authenticated, subscribes to her mailbox and gets [`SUMMARY`].
async fn owner_sees_the_summary(s: &TestServer, tp: Tp) {
    let mut alice = s.ua(tp, WATCHER, "alice").await;
    alice.password = "secret".into();
    let mailbox = alice.aor.clone();
    let req = subscribe_req(&mut alice, &mailbox, 600);
    let (r, _) = alice.send_auth(&req, "MD5").await;
    assert_eq!(r.code, 200, "{}", r.reason);
    let n = alice.notify_containing("Voice-Message", s.wait()).await;
    assert_eq!(&n.body[..], SUMMARY.as_bytes());
}

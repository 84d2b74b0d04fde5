//! The abuse review's findings, each as the attack that reproduced it on
//! the server, now failing. The all-in-one server over real UDP and TCP
//! sockets (tests/common); what is decided in the compositor is the same
//! code in a cluster.

mod common;
mod harness;

use common::*;
use presence_sip::HeaderAccess;
use std::time::Duration;

const USERS: &str = "alice@example.com:secret\nbob@example.com:hunter2\n";

macro_rules! both {
    ($($name:ident;)*) => {$(
        mod $name {
            use super::Tp;
            #[tokio::test]
            async fn udp() {
                super::$name(Tp::Udp).await
            }
            #[tokio::test]
            async fn tcp() {
                super::$name(Tp::Tcp).await
            }
        }
    )*};
}

both! {
    message_from_is_the_authenticated_user;
    in_dialog_requests_must_match_the_subscription;
    captured_authorization_is_not_replayable;
    state_per_resource_is_bounded;
    subscribing_to_nobody_leaves_nothing;
    hostile_xml_is_refused;
    documents_stay_within_a_datagram;
}

async fn authed(s: &TestServer, tp: Tp, i: usize, user: &str, password: &str) -> Ua {
    let mut ua = s.ua(tp, i, user).await;
    ua.password = password.into();
    ua
}

async fn register(ua: &mut Ua) -> Req {
    let contact = format!("<{}>", ua.contact_uri());
    let aor = ua.aor.clone();
    let req = ua
        .req("REGISTER", "sip:example.com")
        .to(&aor)
        .h("Contact", contact)
        .h("Expires", "600");
    let (r, sent) = ua.send_auth(&req, "MD5").await;
    assert_eq!(r.code, 200, "REGISTER {}: {}", ua.aor, r.reason);
    sent
}

/// An authenticated user may not send a MESSAGE as somebody else, nor slip
/// a P-Asserted-Identity past us: the relayed MESSAGE asserts who
/// authenticated, and nothing the UA claimed.
async fn message_from_is_the_authenticated_user(tp: Tp) {
    let s = start(Mode::AllInOne, Some(USERS), None, &[]).await;
    let mut alice = authed(&s, tp, PRESENTITY, "alice", "secret").await;
    let mut bob = authed(&s, tp, WATCHER, "bob", "hunter2").await;
    register(&mut bob).await;

    // alice, authenticated as herself, claims to be bob.
    let forged = alice
        .req("MESSAGE", "sip:bob@example.com")
        .from("sip:bob@example.com")
        .body("text/plain", "it is me, bob");
    let (r, _) = alice.send_auth(&forged, "MD5").await;
    assert_eq!(r.code, 403, "{}", r.reason);
    assert!(
        bob.recv_request("MESSAGE", Duration::from_millis(500))
            .await
            .is_none(),
        "the forged MESSAGE must not be delivered"
    );

    // Her own From, with identities of her choosing: delivered, but with
    // only the identity we assert.
    let req = alice
        .req("MESSAGE", "sip:bob@example.com")
        .h("P-Asserted-Identity", "<sip:boss@example.com>")
        .h("P-Preferred-Identity", "<sip:boss@example.com>")
        .body("text/plain", "hello");
    let (r, _) = alice.send_auth(&req, "MD5").await;
    assert_eq!(r.code, 200, "{}", r.reason);
    let m = bob
        .recv_request("MESSAGE", s.wait())
        .await
        .expect("MESSAGE");
    let asserted: Vec<&str> = m.header_all("P-Asserted-Identity").collect();
    assert_eq!(asserted, ["<sip:alice@example.com>"]);
    assert!(m.header("P-Preferred-Identity").is_none());
    s.shutdown().await;
}

/// Dialog identifiers travel in every NOTIFY; knowing bob's must not let
/// alice refresh, move or end bob's subscription, and a refresh may not
/// name another resource (or another shard's).
async fn in_dialog_requests_must_match_the_subscription(tp: Tp) {
    let s = start(Mode::AllInOne, Some(USERS), None, &[]).await;
    let mut alice = authed(&s, tp, PRESENTITY, "alice", "secret").await;
    let mut bob = authed(&s, tp, WATCHER, "bob", "hunter2").await;
    let contact = format!("<{}>", bob.contact_uri());
    let sub = bob
        .req("SUBSCRIBE", "sip:alice@example.com")
        .h("Event", "presence")
        .h("Accept", "application/pidf+xml")
        .h("Contact", contact.clone())
        .h("Expires", "600");
    let (r, sent) = bob.send_auth(&sub, "MD5").await;
    assert_eq!(r.code, 200, "{}", r.reason);
    let dialog = Dialog {
        call_id: sent.call_id.clone(),
        local_tag: sent.from_tag.clone(),
        remote_tag: r.to_addr().and_then(|t| t.tag).expect("a to-tag"),
    };
    bob.notify().await;

    // alice ends bob's subscription with bob's dialog identifiers, her
    // own (valid) credentials, and bob's From (the dialog's remote URI).
    let alice_contact = format!("<{}>", alice.contact_uri());
    for from in ["sip:alice@example.com", "sip:bob@example.com"] {
        let mut end = alice
            .req("SUBSCRIBE", "sip:alice@example.com")
            .from(from)
            .in_dialog(&dialog)
            .h("Event", "presence")
            .h("Contact", alice_contact.clone())
            .h("Expires", "0");
        end.cseq = 1000;
        let (r, _) = alice.send_auth(&end, "MD5").await;
        assert_eq!(r.code, 481, "From {from}: {}", r.reason);
    }
    // bob's own refresh naming a foreign resource (another domain, another shard).
    let mut moved = bob
        .req("SUBSCRIBE", "sip:carol@elsewhere.example.org")
        .in_dialog(&dialog)
        .h("Event", "presence")
        .h("Contact", contact.clone())
        .h("Expires", "600");
    moved.cseq = 2000;
    let (r, _) = bob.send_auth(&moved, "MD5").await;
    assert_eq!(r.code, 481, "{}", r.reason);
    // ... or another event package's.
    let mut other_event = bob
        .req("SUBSCRIBE", "sip:alice@example.com")
        .in_dialog(&dialog)
        .h("Event", "presence;id=7")
        .h("Contact", contact.clone())
        .h("Expires", "600");
    other_event.cseq = 2001;
    let (r, _) = bob.send_auth(&other_event, "MD5").await;
    assert_eq!(r.code, 481, "{}", r.reason);
    assert!(
        bob.recv_request("NOTIFY", Duration::from_millis(300))
            .await
            .is_none(),
        "nothing of bob's subscription changed"
    );

    // bob's subscription is intact: his own refresh works.
    let mut refresh = bob
        .req("SUBSCRIBE", "sip:alice@example.com")
        .in_dialog(&dialog)
        .h("Event", "presence")
        .h("Contact", contact)
        .h("Expires", "600");
    refresh.cseq = 3000;
    let (r, _) = bob.send_auth(&refresh, "MD5").await;
    assert_eq!(r.code, 200, "{}", r.reason);
    let n = bob.notify().await;
    assert!(n
        .header("Subscription-State")
        .is_some_and(|v| v.starts_with("active")));
    s.shutdown().await;
}

/// A captured Authorization, replayed on a new transaction from another
/// socket, must not bind the replayer's contact; neither may credentials
/// without qop (no nonce count to check) nor a nonce handed to another
/// address.
async fn captured_authorization_is_not_replayable(tp: Tp) {
    let s = start(Mode::AllInOne, Some(USERS), None, &[]).await;
    let mut alice = authed(&s, tp, PRESENTITY, "alice", "secret").await;
    let sent = register(&mut alice).await;
    let auth = sent
        .headers
        .iter()
        .find(|(n, _)| n == "Authorization")
        .map(|(_, v)| v.clone())
        .expect("the REGISTER that got in carried credentials");

    // The attacker: another socket on the same host, same credentials.
    let mut mallory = s.ua(tp, PRESENTITY, "alice").await;
    let contact = format!("<{}>", mallory.contact_uri());
    let mut replay = mallory
        .req("REGISTER", "sip:example.com")
        .to("sip:alice@example.com")
        .h("Contact", contact.clone())
        .h("Expires", "600")
        .h("Authorization", auth.clone());
    replay.call_id = sent.call_id.clone();
    replay.from_tag = sent.from_tag.clone();
    replay.cseq = sent.cseq + 1;
    let r = mallory.send(&replay).await;
    assert_eq!(r.code, 401, "a replayed (nonce, nc) is challenged");
    assert!(challenges(&r).iter().all(|c| c.stale));

    // The same from another address: not a nonce of that address at all.
    if tp == Tp::Udp {
        let other = tokio::net::UdpSocket::bind("127.0.0.2:0")
            .await
            .expect("bind 127.0.0.2");
        let local = other.local_addr().expect("addr");
        let mut again = replay.next();
        again.headers.retain(|(n, _)| n != "Contact");
        let again = again.h("Contact", format!("<sip:alice@{local}>"));
        other
            .send_to(&again.encode(Tp::Udp, local), s.at(PRESENTITY))
            .await
            .expect("send");
        let mut buf = vec![0u8; 65536];
        let (n, _) = tokio::time::timeout(s.wait(), other.recv_from(&mut buf))
            .await
            .expect("an answer")
            .expect("recv");
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(text.starts_with("SIP/2.0 401"), "{text}");
        assert!(!text.contains("stale=true"), "{text}");
    }

    // RFC 2069 credentials (no qop, nc, cnonce) for a fresh nonce: refused.
    let fresh = mallory
        .req("REGISTER", "sip:example.com")
        .to("sip:alice@example.com")
        .h("Contact", contact)
        .h("Expires", "600");
    let r = mallory.send(&fresh).await;
    assert_eq!(r.code, 401);
    let ch = challenges(&r)
        .into_iter()
        .find(|c| c.algorithm == "MD5")
        .expect("an MD5 challenge");
    let ha1 = md5_hex(&format!("alice:{}:secret", ch.realm));
    let ha2 = md5_hex("REGISTER:sip:example.com");
    let response = md5_hex(&format!("{ha1}:{}:{ha2}", ch.nonce));
    let bare = fresh.next().h(
        "Authorization",
        format!(
            "Digest username=\"alice\", realm=\"{}\", nonce=\"{}\", uri=\"sip:example.com\", response=\"{response}\", algorithm=MD5",
            ch.realm, ch.nonce
        ),
    );
    assert_eq!(mallory.send(&bare).await.code, 401, "qop=auth is required");

    // Only alice's own contact is bound.
    let bindings = s
        .store()
        .bindings("sip:alice@example.com")
        .await
        .expect("store");
    assert_eq!(bindings.len(), 1, "{bindings:?}");
    assert!(bindings[0].uri.contains(&alice.local.to_string()));
    s.shutdown().await;
}

/// No user grows the store without bound: contacts, publications and
/// watchers per resource have limits with a clear answer, and going back
/// below a limit is always allowed.
async fn state_per_resource_is_bounded(tp: Tp) {
    let s = start(
        Mode::AllInOne,
        None,
        None,
        &[
            "--max-contacts",
            "3",
            "--max-publications",
            "2",
            "--max-watchers",
            "2",
        ],
    )
    .await;
    let mut alice = s.ua(tp, PRESENTITY, "alice").await;
    let aor = alice.aor.clone();
    let contacts = |n: std::ops::Range<u32>| -> String {
        n.map(|i| format!("<sip:alice-{i}@192.0.2.1:5060>"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    // 20 contacts in one REGISTER (the review's amplifier): refused whole.
    let req = alice
        .req("REGISTER", "sip:example.com")
        .to(&aor)
        .h("Contact", contacts(0..20))
        .h("Expires", "600");
    let r = alice.send(&req).await;
    assert_eq!(r.code, 403, "{}", r.reason);
    assert!(r.reason.contains("Contacts"), "{}", r.reason);
    let bound = s.store().bindings(&aor).await.expect("store");
    assert!(bound.is_empty(), "{bound:?}");
    // Up to the limit, fine; one more, refused; replacing one, fine.
    let req = alice
        .req("REGISTER", "sip:example.com")
        .to(&aor)
        .h("Contact", contacts(0..3))
        .h("Expires", "600");
    let r = alice.send(&req).await;
    assert_eq!(r.code, 200, "{}", r.reason);
    let req = alice
        .req("REGISTER", "sip:example.com")
        .to(&aor)
        .h("Contact", contacts(3..4))
        .h("Expires", "600");
    let r = alice.send(&req).await;
    assert_eq!(r.code, 403, "{}", r.reason);
    let req = alice
        .req("REGISTER", "sip:example.com")
        .to(&aor)
        .h(
            "Contact",
            format!("{};expires=0, {}", contacts(0..1), contacts(3..4)),
        )
        .h("Expires", "600");
    let r = alice.send(&req).await;
    assert_eq!(r.code, 200, "a swap stays within the limit: {}", r.reason);

    // Publications.
    let pidf = |basic: &str| {
        format!(
            r#"<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="{aor}"><tuple id="t"><status><basic>{basic}</basic></status></tuple></presence>"#
        )
    };
    for expect in [200, 200, 403] {
        let req = alice
            .req("PUBLISH", &aor)
            .h("Event", "presence")
            .h("Expires", "600")
            .body("application/pidf+xml", pidf("open"));
        let r = alice.send(&req).await;
        assert_eq!(r.code, expect, "{}", r.reason);
    }
    assert_eq!(
        s.store()
            .publications(&aor, "presence")
            .await
            .expect("store")
            .len(),
        2
    );

    // Watchers.
    for (i, expect) in [200, 200, 403].into_iter().enumerate() {
        let mut w = s.ua(tp, WATCHER, &format!("w{i}")).await;
        let (r, _, _) = w.subscribe(&aor, 600).await;
        assert_eq!(r.code, expect, "watcher {i}: {}", r.reason);
    }
    s.shutdown().await;
}

/// A fetch, or a subscription that ends, for an AoR that never published
/// or registered gets the "no state" document and leaves no record behind.
async fn subscribing_to_nobody_leaves_nothing(tp: Tp) {
    let s = start(Mode::AllInOne, None, None, &[]).await;
    let mut w = s.ua(tp, WATCHER, "watcher").await;
    for (i, expires) in [0u32, 60].into_iter().enumerate() {
        let nobody = format!("sip:nobody{i}@example.com");
        let (r, dialog, sent) = w.subscribe(&nobody, expires).await;
        assert_eq!(r.code, 200, "{}", r.reason);
        let n = w.notify().await;
        assert!(
            body_str(&n).contains("<basic>closed</basic>"),
            "{}",
            body_str(&n)
        );
        if expires > 0 {
            let mut end = sent.next().in_dialog(&dialog);
            end.headers.retain(|(n, _)| n != "Expires");
            let end = end.h("Expires", "0");
            assert_eq!(w.send(&end).await.code, 200);
            let last = w.notify().await;
            assert!(last
                .header("Subscription-State")
                .is_some_and(|v| v.starts_with("terminated")));
        }
        let doc = s
            .store()
            .document(&nobody, "presence")
            .await
            .expect("store");
        assert!(doc.is_none(), "{doc:?}");
        assert!(!s.store().is_known(&nobody).await.expect("store"));
    }
    let counts = s.store().counts().await.expect("store");
    assert_eq!((counts.documents, counts.subscriptions), (0, 0));
    s.shutdown().await;
}

/// A MESSAGE whose retransmission reaches a second edge (a load balancer
/// moved the UA while the first edge still relays it) is relayed once: the
/// second edge answers 100 Trying, the first one's answer ends it.
#[tokio::test]
async fn cluster_message_retransmitted_to_another_edge_is_relayed_once() {
    let s = start(Mode::Cluster, None, None, &[]).await;
    let mut bob = s.ua(Tp::Udp, WATCHER, "bob").await;
    let contact = format!("<{}>", bob.contact_uri());
    let aor = bob.aor.clone();
    let reg = bob
        .req("REGISTER", "sip:example.com")
        .to(&aor)
        .h("Contact", contact)
        .h("Expires", "600");
    assert_eq!(bob.send(&reg).await.code, 200);
    // Bob is slow: the MESSAGE stays open at the first edge.
    bob.answer_code
        .store(0, std::sync::atomic::Ordering::SeqCst);

    let mut alice = s.ua(Tp::Udp, PRESENTITY, "alice").await;
    let req = alice
        .req("MESSAGE", &aor)
        .body("text/plain", "once, please");
    alice.send_raw(&req.encode(Tp::Udp, alice.local)).await;
    let first = bob
        .recv_request("MESSAGE", s.wait())
        .await
        .expect("the MESSAGE reaches bob");
    // The UA's retransmission, same transaction, now to the other edge.
    alice.server = s.at(WATCHER);
    alice.send_raw(&req.encode(Tp::Udp, alice.local)).await;
    let trying = alice
        .wait_for(
            s.wait(),
            |m| matches!(m, presence_sip::Message::Response(r) if r.code == 100),
        )
        .await;
    assert!(trying.is_some(), "the second edge answers 100 Trying");
    // Bob answers now; nothing else reaches him but retransmissions of the
    // one relayed MESSAGE (same branch).
    bob.answer_code
        .store(200, std::sync::atomic::Ordering::SeqCst);
    let branch = |r: &presence_sip::Request| r.top_via().and_then(|v| v.branch);
    while let Some(again) = bob.recv_request("MESSAGE", Duration::from_secs(3)).await {
        assert_eq!(branch(&again), branch(&first), "MESSAGE relayed twice");
    }
    s.shutdown().await;
}

mod documents_nothing_backs_are_forgotten {
    use super::{Mode, Tp};
    #[tokio::test]
    async fn udp() {
        super::documents_nothing_backs_are_forgotten(Tp::Udp, Mode::AllInOne).await
    }
    #[tokio::test]
    async fn tcp() {
        super::documents_nothing_backs_are_forgotten(Tp::Tcp, Mode::AllInOne).await
    }
    #[tokio::test]
    async fn cluster_udp() {
        super::documents_nothing_backs_are_forgotten(Tp::Udp, Mode::Cluster).await
    }
}

/// A document stays while a watcher may still need its version to go on,
/// and is forgotten once nothing backs it: no publication, no watcher (in
/// Redis, where it also carries a TTL, no key is left behind).
async fn documents_nothing_backs_are_forgotten(tp: Tp, mode: Mode) {
    let s = start(mode, None, None, &[]).await;
    let mut alice = s.ua(tp, PRESENTITY, "alice").await;
    let aor = alice.aor.clone();
    let req = alice
        .req("PUBLISH", &aor)
        .h("Event", "presence")
        .h("Expires", "600")
        .body(
            "application/pidf+xml",
            pidf(&aor, "t1", true, "in the office"),
        );
    let r = alice.send(&req).await;
    assert_eq!(r.code, 200, "{}", r.reason);
    let etag = r.sip_etag().expect("SIP-ETag").to_string();
    let mut bob = s.ua(tp, WATCHER, "bob").await;
    let (r, dialog, sent) = bob.subscribe(&aor, 600).await;
    assert_eq!(r.code, 200, "{}", r.reason);
    bob.notify_containing("in the office", s.wait()).await;

    // The publication ends: bob still watches, so the document (closed
    // now) stays and its version goes on.
    let end = alice
        .req("PUBLISH", &aor)
        .h("Event", "presence")
        .h("Expires", "0")
        .h("SIP-If-Match", etag);
    assert_eq!(alice.send(&end).await.code, 200);
    bob.notify_containing("<basic>closed</basic>", s.wait())
        .await;
    let doc = s.store().document(&aor, "presence").await.expect("store");
    let before = doc.expect("the document stays").version;

    // Bob leaves: nothing backs the document any more.
    let mut leave = sent.next().in_dialog(&dialog);
    leave.headers.retain(|(n, _)| n != "Expires");
    let leave = leave.h("Expires", "0");
    assert_eq!(bob.send(&leave).await.code, 200);
    bob.notify().await;
    let doc = s.store().document(&aor, "presence").await.expect("store");
    assert!(doc.is_none(), "{doc:?}");
    assert_eq!(s.store().counts().await.expect("store").documents, 0);

    // A new publication starts a new document, whose versions go on from
    // where the forgotten one's ended (a Watch client resumes by version).
    let r = alice.send(&req.next()).await;
    assert_eq!(r.code, 200, "{}", r.reason);
    let doc = s.store().document(&aor, "presence").await.expect("store");
    let after = doc.expect("a new document").version;
    assert!(after > before, "version {after} after {before}");
    s.shutdown().await;
}

/// Billion laughs, deep nesting and attribute floods are refused (400)
/// before they reach a composition or a watcher.
async fn hostile_xml_is_refused(tp: Tp) {
    let s = start(Mode::AllInOne, None, None, &[]).await;
    let mut alice = s.ua(tp, PRESENTITY, "alice").await;
    let aor = alice.aor.clone();
    let wrap = |inner: &str| {
        format!(
            r#"<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="{aor}">{inner}</presence>"#
        )
    };
    let bodies = [
        format!(
            r#"<?xml version="1.0"?><!DOCTYPE p [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>{}"#,
            wrap("<note>&b;</note>")
        ),
        wrap(&format!("{}{}", "<x>".repeat(9000), "</x>".repeat(9000))),
        wrap(&format!(
            "<tuple id=\"t\" {}><status><basic>open</basic></status></tuple>",
            (0..5800)
                .map(|i| format!("a{i}=\"v\""))
                .collect::<Vec<_>>()
                .join(" ")
        )),
    ];
    for body in bodies {
        let req = alice
            .req("PUBLISH", &aor)
            .h("Event", "presence")
            .h("Expires", "600")
            .body("application/pidf+xml", body);
        let r = alice.send(&req).await;
        assert_eq!(r.code, 400, "{}", r.reason);
    }
    assert!(s
        .store()
        .publications(&aor, "presence")
        .await
        .expect("store")
        .is_empty());
    s.shutdown().await;
}

/// Publications that together would compose a document no NOTIFY can carry
/// over UDP are refused (413), not silently lost at every watcher.
async fn documents_stay_within_a_datagram(tp: Tp) {
    let s = start(Mode::AllInOne, None, None, &[]).await;
    let mut alice = s.ua(tp, PRESENTITY, "alice").await;
    let aor = alice.aor.clone();
    let body = |n: usize| {
        format!(
            r#"<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="{aor}"><tuple id="t{n}"><status><basic>open</basic></status></tuple><note>{}</note></presence>"#,
            "n".repeat(25_000)
        )
    };
    for (n, expect) in [(1, 200), (2, 200), (3, 413)] {
        let req = alice
            .req("PUBLISH", &aor)
            .h("Event", "presence")
            .h("Expires", "600")
            .body("application/pidf+xml", body(n));
        let r = alice.send(&req).await;
        assert_eq!(r.code, expect, "publication {n}: {}", r.reason);
    }
    s.shutdown().await;
}

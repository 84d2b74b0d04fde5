//! Event packages other than presence, end to end over real sockets, and
//! the publishers that feed them (`--trusted-publisher`). Every scenario
//! runs against the all-in-one server and against a cluster of processes
//! (tests/harness: real redis-server and nats-server, the publisher on one
//! edge and the watchers on the other), over UDP and TCP; the transports
//! themselves are e2e.rs's concern.
//!
//! - blf: RFC 4235 dialog state. PBXs PUBLISH an extension's dialogs; a
//!   phone watching it gets one full-state document merging them, with a
//!   `version` counting its NOTIFYs from 0, the dialogs' identifiers as
//!   published, a terminated dialog once, an empty document without state.
//! - blf_expiry: a PBX that stops refreshing its publication (it died
//!   mid-call): the lamp goes out when the publication expires.
//! - message_summary: RFC 3842 MWI. A voicemail server PUBLISHes a
//!   mailbox's summary; the phone's subscription gets it byte for byte,
//!   "Messages-Waiting: no" before and after; bad bodies and types are
//!   refused; only the mailbox's owner may watch it; a REGISTER does not
//!   touch it.
//! - message_summary_expiry: a summary whose publication expires turns
//!   back into "Messages-Waiting: no" for its watcher.
//! - reg: RFC 3680 registrations. A user watches their own AoR; each
//!   REGISTER, refresh, expiry and removal of a contact is one NOTIFY of a
//!   full reginfo document naming what happened, `version` counting the
//!   NOTIFYs; others may not watch; nothing may PUBLISH it; a short
//!   subscription times out.
//! - winfo: RFC 3857 watcher information and `confirm` policy. A watcher
//!   whom a `confirm` rule holds gets `Subscription-State: pending` and no
//!   state (nor any NOTIFY for changes) until the policy file is rewritten:
//!   an `allow` rule makes it active with the state, a `block` rule ends it
//!   with `reason=rejected`. The presentity watches all of it through
//!   `presence.winfo` (pending, approved, rejected, left); others may not.
//! - lists: RFC 4662 resource lists from `--lists`. A SUBSCRIBE to a list
//!   URI without `Supported: eventlist` gets 421; with it, one
//!   subscription: multipart/related NOTIFYs with an RLMI root, full state
//!   first (each member as its own policy shows it to the subscriber:
//!   active with its PIDF, pending, or terminated/rejected), then partial
//!   updates with the member that changed and increasing versions; a
//!   membership change on reload sends full state, a list removed on
//!   reload ends the subscription (`noresource`).
//! - rate_control: `--notify-min-interval-ms` (RFC 6446 rate control as an
//!   operator default) coalesces a burst of changes into at most one
//!   NOTIFY per interval, the newest state last, in order; the final
//!   NOTIFY still comes.
//! - rate_params: RFC 6446 Event parameters per subscription. `max-rate`
//!   bounds a burst's NOTIFYs like the operator default does, newest state
//!   last and in order; `min-rate` brings NOTIFYs of the unchanged state;
//!   `adaptive-min-rate` too; the values in force are echoed in every
//!   NOTIFY's Subscription-State (a min-rate above max-rate is lowered to
//!   it); a malformed rate gets 400; a refresh without them removes them.
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
    blf;
    blf_expiry;
    lists;
    message_summary;
    message_summary_expiry;
    rate_control;
    rate_params;
    reg;
    trusted_identity;
    winfo;
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

/// An event package as a request names it: `Event` and its body type.
struct Package {
    event: &'static str,
    content_type: &'static str,
}

const MWI_PKG: Package = Package {
    event: "message-summary",
    content_type: MWI,
};
const BLF: Package = Package {
    event: "dialog",
    content_type: DIALOG_INFO,
};

const REG: Package = Package {
    event: "reg",
    content_type: "application/reginfo+xml",
};

fn subscribe_req(ua: &mut Ua, pkg: &Package, target: &str, expires: u32) -> Req {
    let contact = format!("<{}>", ua.contact_uri());
    ua.req("SUBSCRIBE", target)
        .h("Event", pkg.event)
        .h("Accept", pkg.content_type)
        .h("Contact", contact)
        .h("Expires", expires.to_string())
}

fn publish_req(
    ua: &mut Ua,
    pkg: &Package,
    target: &str,
    etag: Option<&str>,
    expires: u32,
    body: Option<&str>,
) -> Req {
    let mut req = ua
        .req("PUBLISH", target)
        .h("Event", pkg.event)
        .h("Expires", expires.to_string());
    if let Some(e) = etag {
        req = req.h("SIP-If-Match", e);
    }
    if let Some(b) = body {
        req = req.body(pkg.content_type, b.as_bytes().to_vec());
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
    let req = subscribe_req(&mut alice, &MWI_PKG, &mailbox, 600);
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
    let req = subscribe_req(&mut bob, &MWI_PKG, &mailbox, 600);
    assert_eq!(bob.send(&req).await.code, 403);

    // The voicemail server publishes for the mailbox: byte for byte.
    let req = publish_req(&mut vm, &MWI_PKG, &mailbox, None, 600, Some(SUMMARY));
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
        &MWI_PKG,
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
    let req = publish_req(&mut vm, &MWI_PKG, &mailbox, Some(&tag), 0, None);
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
    let req = subscribe_req(&mut alice, &MWI_PKG, &mailbox, 600);
    assert_eq!(alice.send(&req).await.code, 200);
    assert_eq!(body_str(&alice.notify().await), NO_MESSAGES);
    let req = publish_req(&mut vm, &MWI_PKG, &mailbox, None, 2, Some(SUMMARY));
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
    let req = publish_req(&mut bob, &MWI_PKG, &mailbox, None, 600, Some(SUMMARY));
    let (r, _) = bob.send_auth(&req, "MD5").await;
    assert_eq!(r.code, 403, "{}", r.reason);
    // Not without authenticating either: the challenge comes first.
    let req = publish_req(&mut vm, &MWI_PKG, &mailbox, None, 600, Some(SUMMARY));
    assert_eq!(vm.send(&req).await.code, 401);
    // The trusted identity, authenticated, may.
    let req = publish_req(&mut vm, &MWI_PKG, &mailbox, None, 600, Some(SUMMARY));
    let (r, _) = vm.send_auth(&req, "MD5").await;
    assert_eq!(r.code, 200, "{}", r.reason);
    // And its own AoR as anyone may.
    let own = vm.aor.clone();
    let req = publish_req(&mut vm, &MWI_PKG, &own, None, 600, Some(NO_MESSAGES));
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
    let req = publish_req(&mut pbx, &MWI_PKG, &mailbox, None, 600, Some(SUMMARY));
    let r = pbx.send(&req).await;
    assert_eq!(r.code, 200, "{}", r.reason);
    let tag = etag(&r);
    let req = publish_req(&mut pbx, &MWI_PKG, &mailbox, Some(&tag), 600, None);
    assert_eq!(pbx.send(&req).await.code, 200, "a refresh too");
    // Its other requests are challenged as anyone's.
    let req = subscribe_req(&mut pbx, &MWI_PKG, &mailbox, 600);
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
    let req = subscribe_req(&mut alice, &MWI_PKG, &mailbox, 600);
    let (r, _) = alice.send_auth(&req, "MD5").await;
    assert_eq!(r.code, 200, "{}", r.reason);
    let n = alice.notify_containing("Voice-Message", s.wait()).await;
    assert_eq!(&n.body[..], SUMMARY.as_bytes());
}

const DIALOG_INFO: &str = "application/dialog-info+xml";

/// A dialog-info document from a PBX for `entity` with `dialogs`.
fn dialog_info(entity: &str, dialogs: &[(&str, &str)]) -> String {
    let mut body = format!(
        r#"<?xml version="1.0"?><dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" version="3" state="full" entity="{entity}">"#
    );
    for (id, state) in dialogs {
        body += &format!(
            r#"<dialog id="{id}" call-id="call-{id}@pbx" local-tag="lt-{id}" remote-tag="rt-{id}" direction="recipient"><state>{state}</state><local><identity>{entity}</identity></local><remote><identity display="Caller {id}">sip:caller-{id}@example.com</identity></remote></dialog>"#
        );
    }
    body + "</dialog-info>"
}

/// PUBLISH `dialogs` for `ext` (initial, or a modify of `etag`); the new
/// entity tag.
async fn publish_dialogs(
    ua: &mut Ua,
    ext: &str,
    etag_of: Option<&str>,
    dialogs: &[(&str, &str)],
) -> String {
    let req = publish_req(
        ua,
        &BLF,
        ext,
        etag_of,
        600,
        Some(&dialog_info(ext, dialogs)),
    );
    let r = ua.send(&req).await;
    assert_eq!(r.code, 200, "{}", r.reason);
    etag(&r)
}

/// The document's `version` and its dialogs as (id, state), in order.
fn blf_state(n: &presence_sip::Request) -> (u64, Vec<(String, String)>) {
    let body = body_str(n);
    let root = body.find("<dialog-info").expect("a dialog-info document");
    let v = &body[root..];
    let v = &v[v.find(" version=\"").expect("version") + 10..];
    let version = v[..v.find('"').expect("quote")].parse().expect("a number");
    let parsed = presence_core::dialog::parse(body.as_bytes()).expect("valid dialog-info");
    let dialogs = parsed
        .dialogs
        .into_iter()
        .map(|d| (d.id, d.state))
        .collect();
    (version, dialogs)
}

async fn blf(tp: Tp, mode: Mode) {
    let s = start(mode, None, None, &[]).await;
    let mut pbx = s.ua(tp, PRESENTITY, "pbx").await;
    let mut pbx2 = s.ua(tp, PRESENTITY, "pbx2").await;
    let mut phone = s.ua(tp, WATCHER, "phone").await;
    let ext = "sip:2001@example.com";
    let pair = |id: &str, st: &str| (id.to_string(), st.to_string());

    let req = subscribe_req(&mut phone, &BLF, ext, 600);
    let r = phone.send(&req).await;
    assert_eq!(r.code, 200, "{}", r.reason);
    // Nothing published: an empty full-state document, version 0.
    let n = phone.notify().await;
    assert_eq!(n.header("Event").map(str::trim), Some("dialog"));
    assert_eq!(
        n.content_type().map(|c| c.as_str().to_string()).as_deref(),
        Some(DIALOG_INFO)
    );
    assert!(body_str(&n).contains(r#"state="full""#), "{}", body_str(&n));
    assert_eq!(blf_state(&n), (0, vec![]));

    // The extension rings, then answers: versions count NOTIFYs.
    let tag = publish_dialogs(&mut pbx, ext, None, &[("a", "early")]).await;
    let n = phone.notify_containing("call-a@pbx", s.wait()).await;
    assert_eq!(blf_state(&n), (1, vec![pair("a", "early")]));
    // What a phone needs for directed pickup arrives as published.
    for part in [
        r#"call-id="call-a@pbx""#,
        r#"local-tag="lt-a""#,
        r#"remote-tag="rt-a""#,
        r#"direction="recipient""#,
        "sip:caller-a@example.com",
    ] {
        assert!(body_str(&n).contains(part), "{part} in {}", body_str(&n));
    }
    let tag = publish_dialogs(&mut pbx, ext, Some(&tag), &[("a", "confirmed")]).await;
    let n = phone.notify_containing("confirmed", s.wait()).await;
    assert_eq!(blf_state(&n), (2, vec![pair("a", "confirmed")]));

    // A second publisher's dialogs merge in.
    let tag2 = publish_dialogs(&mut pbx2, ext, None, &[("b", "trying")]).await;
    let n = phone.notify_containing("call-b@pbx", s.wait()).await;
    assert_eq!(
        blf_state(&n),
        (3, vec![pair("a", "confirmed"), pair("b", "trying")])
    );

    // A terminated dialog is notified once, then dropped.
    let tag = publish_dialogs(&mut pbx, ext, Some(&tag), &[("a", "terminated")]).await;
    let n = phone.notify_containing("terminated", s.wait()).await;
    assert_eq!(
        blf_state(&n),
        (4, vec![pair("b", "trying"), pair("a", "terminated")])
    );
    let tag2 = publish_dialogs(&mut pbx2, ext, Some(&tag2), &[("b", "confirmed")]).await;
    let n = phone.notify_containing("confirmed", s.wait()).await;
    assert_eq!(blf_state(&n), (5, vec![pair("b", "confirmed")]));

    // Bad bodies and types are refused and change nothing.
    let req = publish_req(
        &mut pbx,
        &BLF,
        ext,
        None,
        600,
        Some(
            r#"<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" version="0" state="full" entity="sip:2001@example.com"><dialog id="x"><state>ringing</state></dialog></dialog-info>"#,
        ),
    );
    assert_eq!(pbx.send(&req).await.code, 400);
    let req = pbx.req("PUBLISH", ext).h("Event", "dialog").body(
        "application/pidf+xml",
        pidf(ext, "t", true, "x").into_bytes(),
    );
    let r = pbx.send(&req).await;
    assert_eq!(r.code, 415);
    assert_eq!(r.header("Accept").map(str::trim), Some(DIALOG_INFO));
    assert!(phone.recv_request("NOTIFY", SHORT).await.is_none());

    // Both publications removed: the lamp goes out (an empty document).
    for (ua, t) in [(&mut pbx, tag), (&mut pbx2, tag2)] {
        let req = publish_req(ua, &BLF, ext, Some(&t), 0, None);
        assert_eq!(ua.send(&req).await.code, 200);
    }
    let deadline = tokio::time::Instant::now() + s.wait();
    let mut last = (5, vec![pair("b", "confirmed")]);
    while !last.1.is_empty() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let n = phone
            .recv_request("NOTIFY", left)
            .await
            .expect("the lamp goes out");
        let next = blf_state(&n);
        assert_eq!(next.0, last.0 + 1, "one version per NOTIFY");
        last = next;
    }
    s.shutdown().await;
}

async fn rate_control(tp: Tp, mode: Mode) {
    const INTERVAL: Duration = Duration::from_millis(1000);
    let s = start(mode, None, None, &["--notify-min-interval-ms", "1000"]).await;
    let mut alice = s.ua(tp, PRESENTITY, "alice").await;
    let mut bob = s.ua(tp, WATCHER, "bob").await;
    let aor = alice.aor.clone();
    let mut tag = publish_note(&mut alice, None, "n0").await;
    let (r, dialog, sub) = bob.subscribe(&aor, 600).await;
    assert_eq!(r.code, 200);
    assert!(
        body_str(&bob.notify().await).contains("n0"),
        "the first NOTIFY at once"
    );

    // A burst of ten changes.
    let started = tokio::time::Instant::now();
    for i in 1..=10 {
        tag = publish_note(&mut alice, Some(&tag), &format!("n{i}")).await;
    }
    let mut seen = Vec::new();
    loop {
        let n = bob
            .recv_request("NOTIFY", s.wait() + INTERVAL)
            .await
            .expect("the newest state arrives");
        assert_eq!(n.call_id(), Some(dialog.call_id.as_str()));
        let text = body_str(&n);
        let note: u32 = (1..=10)
            .rev()
            .find(|i| text.contains(&format!("<note>n{i}</note>")))
            .expect("one of the burst's notes");
        seen.push(note);
        if note == 10 {
            break;
        }
    }
    let elapsed = started.elapsed();
    // At most one NOTIFY per interval: the first change may go at once
    // (the initial NOTIFY does not count), then one per second.
    let allowed = 1 + elapsed.as_millis().div_ceil(INTERVAL.as_millis()) as usize;
    assert!(
        seen.len() <= allowed,
        "{} NOTIFYs in {elapsed:?} (at most {allowed}): {seen:?}",
        seen.len()
    );
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "in order: {seen:?}");

    // A change, then the end: the final NOTIFY is not held back.
    publish_note(&mut alice, Some(&tag), "last").await;
    let mut unsub = sub.next().in_dialog(&dialog);
    unsub.headers.retain(|(n, _)| n != "Expires");
    let unsub = unsub.h("Expires", "0");
    assert_eq!(bob.send(&unsub).await.code, 200);
    let deadline = tokio::time::Instant::now() + s.wait();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let n = bob
            .recv_request("NOTIFY", left)
            .await
            .expect("the final NOTIFY");
        if sub_state(&n).starts_with("terminated") {
            break;
        }
    }
    s.shutdown().await;
}

/// PUBLISH the UA's presence (one open tuple with `note`), initial or a
/// modify of `etag`; its new entity tag.
async fn publish_note(ua: &mut Ua, etag_of: Option<&str>, note: &str) -> String {
    let aor = ua.aor.clone();
    let mut req = ua
        .req("PUBLISH", &aor)
        .h("Event", "presence")
        .h("Expires", "600")
        .body(
            "application/pidf+xml",
            pidf(&aor, "t1", true, note).into_bytes(),
        );
    if let Some(e) = etag_of {
        req = req.h("SIP-If-Match", e);
    }
    let r = ua.send(&req).await;
    assert_eq!(r.code, 200, "PUBLISH {note}: {}", r.reason);
    etag(&r)
}

fn sub_state(n: &presence_sip::Request) -> String {
    n.header("Subscription-State")
        .unwrap_or_default()
        .replace(' ', "")
}

/// The version of a reginfo NOTIFY, its registration's state, and each
/// contact's (uri, state, event).
fn reg_state(n: &presence_sip::Request) -> (u64, String, Vec<(String, &'static str, String)>) {
    let body = body_str(n);
    let root = body.find("<reginfo").expect("a reginfo document");
    let v = &body[root..];
    let v = &v[v.find(" version=\"").expect("version") + 10..];
    let version = v[..v.find('"').expect("quote")].parse().expect("a number");
    let regs = presence_core::reginfo::parse(body.as_bytes()).expect("valid reginfo");
    assert_eq!(regs.len(), 1, "{body}");
    let reg = regs.into_iter().next().unwrap();
    let contacts = reg
        .contacts
        .into_iter()
        .map(|c| {
            let state = if c.active { "active" } else { "terminated" };
            (c.uri, state, c.event.as_str().to_string())
        })
        .collect();
    (version, reg.state, contacts)
}

async fn register(ua: &mut Ua, aor: &str, expires: u32) {
    let contact = format!("<{}>", ua.contact_uri());
    let req = ua
        .req("REGISTER", "sip:example.com")
        .to(aor)
        .h("Contact", contact)
        .h("Expires", expires.to_string());
    let r = ua.send(&req).await;
    assert_eq!(r.code, 200, "{}", r.reason);
}

async fn reg(tp: Tp, mode: Mode) {
    let s = start(mode, None, None, &[]).await;
    let mut alice = s.ua(tp, WATCHER, "alice").await;
    let mut desk = s.ua(tp, PRESENTITY, "alice").await;
    let mut bob = s.ua(tp, WATCHER, "bob").await;
    let aor = alice.aor.clone();
    let c =
        |ua: &Ua, state: &'static str, event: &str| (ua.contact_uri(), state, event.to_string());

    let req = alice.req("OPTIONS", "sip:example.com");
    let r = alice.send(&req).await;
    assert!(
        r.allow_events().iter().any(|e| e == "reg"),
        "{:?}",
        r.allow_events()
    );

    // Nothing registered yet: an "init" registration, version 0.
    let req = subscribe_req(&mut alice, &REG, &aor, 600);
    let r = alice.send(&req).await;
    assert_eq!(r.code, 200, "{}", r.reason);
    let n = alice.notify().await;
    assert_eq!(n.header("Event").map(str::trim), Some("reg"));
    assert_eq!(
        n.content_type().map(|c| c.as_str().to_string()).as_deref(),
        Some(REG.content_type)
    );
    assert!(body_str(&n).contains(r#"state="full""#), "{}", body_str(&n));
    assert_eq!(reg_state(&n), (0, "init".into(), vec![]));

    // Someone else's registrations are private.
    let req = subscribe_req(&mut bob, &REG, &aor, 600);
    let r = bob.send(&req).await;
    assert_eq!(r.code, 403);
    // And registrations are not published.
    let req = bob
        .req("PUBLISH", &aor)
        .h("Event", "reg")
        .body(REG.content_type, b"<reginfo/>".to_vec());
    let r = bob.send(&req).await;
    assert_eq!(r.code, 489);
    assert!(
        !r.allow_events().iter().any(|e| e == "reg"),
        "{:?}",
        r.allow_events()
    );

    // The desk phone registers, then refreshes.
    register(&mut desk, &aor, 600).await;
    let n = alice.notify().await;
    let (v, state, contacts) = reg_state(&n);
    assert_eq!((v, state.as_str()), (1, "active"));
    assert_eq!(contacts, [c(&desk, "active", "registered")]);
    assert!(body_str(&n).contains(r#"expires=""#));
    register(&mut desk, &aor, 600).await;
    let n = alice.notify().await;
    assert_eq!(reg_state(&n).2, [c(&desk, "active", "refreshed")]);
    assert_eq!(reg_state(&n).0, 2);

    // A second device with a short registration; it runs out.
    register(&mut alice, &aor, 2).await;
    let n = alice.notify().await;
    assert_eq!(
        reg_state(&n).2,
        [
            c(&desk, "active", "refreshed"),
            c(&alice, "active", "registered")
        ]
    );
    let n = alice
        .notify_containing("expired", s.patience(Duration::from_secs(6)))
        .await;
    assert_eq!(
        reg_state(&n),
        (
            4,
            "active".into(),
            vec![
                c(&desk, "active", "refreshed"),
                c(&alice, "terminated", "expired")
            ]
        )
    );

    // The desk phone unregisters: the registration is terminated.
    register(&mut desk, &aor, 0).await;
    let n = alice.notify().await;
    assert_eq!(
        reg_state(&n),
        (
            5,
            "terminated".into(),
            vec![c(&desk, "terminated", "unregistered")]
        )
    );

    // Nobody watches bob's registrations: no document is kept for them
    // (a re-REGISTER writes none); his first subscription composes it.
    let bob_aor = bob.aor.clone();
    register(&mut bob, &bob_aor, 600).await;
    register(&mut bob, &bob_aor, 600).await;
    let kept = s.store().document(&bob_aor, "reg").await.unwrap();
    assert!(kept.is_none(), "{kept:?}");
    assert!(s
        .store()
        .document(&bob_aor, "presence")
        .await
        .unwrap()
        .is_some());
    let req = subscribe_req(&mut bob, &REG, &bob_aor, 600);
    assert_eq!(bob.send(&req).await.code, 200);
    let n = bob.notify().await;
    assert_eq!(
        reg_state(&n),
        (0, "active".into(), vec![c(&bob, "active", "registered")])
    );

    // A short subscription times out with a final NOTIFY.
    let req = subscribe_req(&mut desk, &REG, &aor, 2);
    let r = desk.send(&req).await;
    assert_eq!(r.code, 200, "{}", r.reason);
    let n = desk.notify().await;
    assert_eq!(reg_state(&n).0, 0, "a new subscription counts from 0");
    let n = desk
        .recv_request("NOTIFY", s.patience(Duration::from_secs(6)))
        .await
        .expect("the subscription ends");
    assert!(sub_state(&n).starts_with("terminated"), "{}", sub_state(&n));
    s.shutdown().await;
}

const WINFO: Package = Package {
    event: "presence.winfo",
    content_type: "application/watcherinfo+xml",
};

/// The version of a watcherinfo NOTIFY and each watcher's (uri, status, event).
fn winfo_state(n: &presence_sip::Request) -> (u64, Vec<(String, String, String)>) {
    let body = body_str(n);
    let root = body.find("<watcherinfo").expect("a watcherinfo document");
    let v = &body[root..];
    let v = &v[v.find(" version=\"").expect("version") + 10..];
    let version = v[..v.find('"').expect("quote")].parse().expect("a number");
    let lists = presence_core::winfo::parse(body.as_bytes()).expect("valid watcherinfo");
    assert_eq!(lists.len(), 1, "{body}");
    assert_eq!(lists[0].package, "presence");
    let watchers = lists[0]
        .watchers
        .iter()
        .map(|w| (w.uri.clone(), w.status.clone(), w.event.clone()))
        .collect();
    (version, watchers)
}

/// Replace the policy file's contents at once (the server reloads it when
/// it changes).
fn rewrite(path: &std::path::Path, rules: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, rules).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn winfo(tp: Tp, mode: Mode) {
    const HOLD: &str = "sip:alice@example.com confirm *\n";
    let policy = TempFile::new(HOLD);
    let path = policy.0.display().to_string();
    let s = start(mode, None, None, &["--policy", &path]).await;
    let mut alice = s.ua(tp, PRESENTITY, "alice").await;
    let mut bob = s.ua(tp, WATCHER, "bob").await;
    let mut carol = s.ua(tp, WATCHER, "carol").await;
    let aor = alice.aor.clone();
    let w = |who: &str, status: &str, event: &str| {
        (
            format!("sip:{who}@example.com"),
            status.to_string(),
            event.to_string(),
        )
    };
    let reload_wait = s.patience(Duration::from_secs(10));
    let tag = publish_note(&mut alice, None, "in the lab").await;

    // The presentity watches its watchers; nobody else may.
    let req = subscribe_req(&mut alice, &WINFO, &aor, 600);
    let r = alice.send(&req).await;
    assert_eq!(r.code, 200, "{}", r.reason);
    let n = alice.notify().await;
    assert_eq!(n.header("Event").map(str::trim), Some("presence.winfo"));
    assert_eq!(
        n.content_type().map(|c| c.as_str().to_string()).as_deref(),
        Some(WINFO.content_type)
    );
    assert_eq!(winfo_state(&n), (0, vec![]));
    let req = subscribe_req(&mut bob, &WINFO, &aor, 600);
    assert_eq!(bob.send(&req).await.code, 403);

    // Bob is held pending: no state, and nothing when it changes.
    let (r, bob_dialog, bob_sub) = bob.subscribe(&aor, 600).await;
    assert_eq!(r.code, 200, "{}", r.reason);
    let n = bob.notify().await;
    assert!(
        sub_state(&n).starts_with("pending;expires="),
        "{}",
        sub_state(&n)
    );
    assert!(
        n.body.is_empty(),
        "a pending watcher got state: {}",
        body_str(&n)
    );
    let n = alice.notify().await;
    assert_eq!(winfo_state(&n), (1, vec![w("bob", "pending", "subscribe")]));
    let tag = publish_note(&mut alice, Some(&tag), "at lunch").await;
    assert!(
        bob.recv_request("NOTIFY", SHORT).await.is_none(),
        "a pending watcher heard of a change"
    );

    // Carol too.
    let (r, _, _) = carol.subscribe(&aor, 600).await;
    assert_eq!(r.code, 200, "{}", r.reason);
    assert!(sub_state(&carol.notify().await).starts_with("pending"));
    let n = alice.notify().await;
    assert_eq!(
        winfo_state(&n),
        (
            2,
            vec![
                w("bob", "pending", "subscribe"),
                w("carol", "pending", "subscribe")
            ]
        )
    );

    // Alice refuses Carol (the file is rewritten, and reloaded).
    let refuse = format!("{HOLD}sip:alice@example.com block sip:carol@example.com\n");
    rewrite(&policy.0, &refuse);
    let n = carol
        .recv_request("NOTIFY", reload_wait)
        .await
        .expect("carol's subscription ends");
    assert_eq!(sub_state(&n), "terminated;reason=rejected");
    let n = alice.notify_containing("rejected", s.wait()).await;
    assert_eq!(
        winfo_state(&n).1,
        [
            w("bob", "pending", "subscribe"),
            w("carol", "terminated", "rejected")
        ]
    );
    assert!(bob.recv_request("NOTIFY", SHORT).await.is_none());

    // Then approves Bob: he gets the state at once.
    rewrite(
        &policy.0,
        &format!("{refuse}sip:alice@example.com allow sip:bob@example.com\n"),
    );
    let n = bob.notify_containing("at lunch", reload_wait).await;
    assert!(
        sub_state(&n).starts_with("active;expires="),
        "{}",
        sub_state(&n)
    );
    let n = alice.notify_containing("approved", s.wait()).await;
    assert_eq!(winfo_state(&n).1, [w("bob", "active", "approved")]);

    // Bob, active now, hears of the next change.
    publish_note(&mut alice, Some(&tag), "back").await;
    bob.notify_containing("back", s.wait()).await;

    // Bob leaves: shown once as terminated, then gone.
    let mut bye = bob_sub.next().in_dialog(&bob_dialog);
    bye.headers.retain(|(n, _)| n != "Expires");
    let bye = bye.h("Expires", "0");
    assert_eq!(bob.send(&bye).await.code, 200);
    let n = alice.notify_containing("timeout", s.wait()).await;
    assert_eq!(winfo_state(&n).1, [w("bob", "terminated", "timeout")]);
    s.shutdown().await;
}

/// The RLMI root of a list NOTIFY (version, fullState, each resource's uri
/// and instance state), and the PIDF parts by member.
struct ListNotify {
    version: u64,
    full: bool,
    resources: Vec<(String, String)>,
    parts: std::collections::BTreeMap<String, String>,
}

fn list_notify(n: &presence_sip::Request) -> ListNotify {
    use presence_core::rlmi;
    let ct = n
        .header("Content-Type")
        .expect("a Content-Type")
        .to_string();
    assert!(
        ct.starts_with("multipart/related;type=\"application/rlmi+xml\""),
        "{ct}"
    );
    assert_eq!(n.header("Require").map(str::trim), Some("eventlist"));
    let parts = rlmi::parts(&n.body, rlmi::boundary_of(&ct).expect("a boundary")).expect("parts");
    let root = String::from_utf8(parts[0].body.clone()).unwrap();
    assert!(
        ct.contains(&format!("start=\"<{}>\"", parts[0].content_id)),
        "{ct}"
    );
    let attr = |text: &str, name: &str| -> String {
        let i = text
            .find(&format!("{name}=\""))
            .unwrap_or_else(|| panic!("{name} in {text}"));
        let rest = &text[i + name.len() + 2..];
        rest[..rest.find('"').unwrap()].to_string()
    };
    let mut resources = Vec::new();
    let mut by_cid = std::collections::BTreeMap::new();
    for r in root.split("<resource ").skip(1) {
        let uri = attr(r, "uri");
        let state = attr(r, "state");
        let shown = if state == "terminated" {
            format!("terminated/{}", attr(r, "reason"))
        } else {
            state.clone()
        };
        if state == "active" {
            by_cid.insert(attr(r, "cid"), uri.clone());
        }
        resources.push((uri, shown));
    }
    let mut bodies = std::collections::BTreeMap::new();
    for p in &parts[1..] {
        let member = by_cid
            .get(&p.content_id)
            .expect("each part is named by the RLMI");
        bodies.insert(member.clone(), String::from_utf8(p.body.clone()).unwrap());
    }
    assert_eq!(bodies.len(), by_cid.len(), "one part per active instance");
    ListNotify {
        version: attr(&root[root.find("<list ").unwrap()..], "version")
            .parse()
            .unwrap(),
        full: attr(&root, "fullState") == "true",
        resources,
        parts: bodies,
    }
}

fn list_subscribe(ua: &mut Ua, list: &str, eventlist: bool) -> Req {
    let mut req = subscribe_req(
        ua,
        &Package {
            event: "presence",
            content_type: "multipart/related, application/rlmi+xml, application/pidf+xml",
        },
        list,
        600,
    );
    if eventlist {
        req = req.h("Supported", "eventlist");
    }
    req
}

async fn lists(tp: Tp, mode: Mode) {
    const TEAM: &str = "sip:team@example.com";
    const MEMBERS: &str =
        "sip:team@example.com sip:alice@example.com sip:bob@example.com sip:carol@example.com\n";
    let lists_file = TempFile::new(MEMBERS);
    let lists_path = lists_file.0.display().to_string();
    let policy = TempFile::new(
        "sip:bob@example.com confirm *\nsip:carol@example.com block sip:dave@example.com\n",
    );
    let policy_path = policy.0.display().to_string();
    let s = start(
        mode,
        None,
        None,
        &["--lists", &lists_path, "--policy", &policy_path],
    )
    .await;
    let mut alice = s.ua(tp, PRESENTITY, "alice").await;
    let mut carol = s.ua(tp, PRESENTITY, "carol").await;
    let mut dave = s.ua(tp, WATCHER, "dave").await;
    let r = |uri: &str, state: &str| (format!("sip:{uri}@example.com"), state.to_string());

    let req = dave.req("OPTIONS", "sip:example.com");
    let o = dave.send(&req).await;
    assert_eq!(o.header("Supported").map(str::trim), Some("eventlist"));

    // Without Supported: eventlist, a list is not subscribed to.
    let req = list_subscribe(&mut dave, TEAM, false);
    let resp = dave.send(&req).await;
    assert_eq!(resp.code, 421, "{}", resp.reason);
    assert_eq!(resp.header("Require").map(str::trim), Some("eventlist"));

    // With it: full state first, each member as its policy shows it.
    let req = list_subscribe(&mut dave, TEAM, true);
    let resp = dave.send(&req).await;
    assert_eq!(resp.code, 200, "{}", resp.reason);
    assert_eq!(resp.header("Require").map(str::trim), Some("eventlist"));
    let n = list_notify(&dave.notify().await);
    assert_eq!((n.version, n.full), (0, true));
    assert_eq!(
        n.resources,
        [
            r("alice", "active"),
            r("bob", "pending"),
            r("carol", "terminated/rejected")
        ]
    );
    assert!(n.parts["sip:alice@example.com"].contains("<basic>closed</basic>"));

    // A member's change: a partial update with that member only.
    publish_note(&mut alice, None, "in a meeting").await;
    let n = list_notify(&dave.notify_containing("in a meeting", s.wait()).await);
    assert_eq!((n.version, n.full), (1, false));
    assert_eq!(n.resources, [r("alice", "active")]);
    assert!(n.parts["sip:alice@example.com"].contains("in a meeting"));

    // A member the subscriber may not see changes: nothing is said.
    publish_note(&mut carol, None, "secret").await;
    if let Some(n) = dave.recv_request("NOTIFY", SHORT).await {
        let n = list_notify(&n);
        assert!(
            n.resources.is_empty() && n.parts.is_empty(),
            "{:?}",
            n.resources
        );
    }

    // The list gains a member on reload: full state again.
    rewrite(
        &lists_file.0,
        &MEMBERS.replace('\n', " sip:erin@example.com\n"),
    );
    let reload_wait = s.patience(Duration::from_secs(10));
    let n = list_notify(&dave.notify_containing("erin", reload_wait).await);
    assert!(n.full);
    assert_eq!(n.resources.len(), 4);
    assert_eq!(n.resources[3], r("erin", "active"));
    assert!(n.parts["sip:alice@example.com"].contains("in a meeting"));

    // The list is gone on reload: its subscription ends.
    rewrite(
        &lists_file.0,
        "sip:other@example.com sip:alice@example.com\n",
    );
    let n = dave
        .recv_request("NOTIFY", reload_wait)
        .await
        .expect("the subscription ends");
    assert!(
        sub_state(&n).starts_with("terminated;reason=noresource"),
        "{}",
        sub_state(&n)
    );
    s.shutdown().await;
}

/// A presence SUBSCRIBE whose Event header carries `params`.
fn subscribe_with(ua: &mut Ua, target: &str, params: &str, expires: u32) -> Req {
    let contact = format!("<{}>", ua.contact_uri());
    ua.req("SUBSCRIBE", target)
        .h("Event", format!("presence{params}"))
        .h("Accept", "application/pidf+xml")
        .h("Contact", contact)
        .h("Expires", expires.to_string())
}

async fn rate_params(tp: Tp, mode: Mode) {
    let s = start(mode, None, None, &[]).await;
    let mut alice = s.ua(tp, PRESENTITY, "alice").await;
    let mut bob = s.ua(tp, WATCHER, "bob").await;
    let mut carol = s.ua(tp, WATCHER, "carol").await;
    let aor = alice.aor.clone();
    let mut tag = publish_note(&mut alice, None, "n0").await;

    // Malformed rates are refused.
    for bad in [
        ";max-rate=0",
        ";min-rate=100",
        ";adaptive-min-rate=.5",
        ";max-rate",
    ] {
        let req = subscribe_with(&mut carol, &aor, bad, 600);
        assert_eq!(carol.send(&req).await.code, 400, "{bad}");
    }

    // max-rate 1/s; a min-rate of 5/s is lowered to it, and echoed so.
    let req = subscribe_with(&mut bob, &aor, ";max-rate=1;min-rate=5", 600);
    let r = bob.send(&req).await;
    assert_eq!(r.code, 200, "{}", r.reason);
    let dialog = Dialog {
        call_id: req.call_id.clone(),
        local_tag: req.from_tag.clone(),
        remote_tag: r.to_addr().and_then(|t| t.tag).unwrap_or_default(),
    };
    let n = bob.notify().await;
    assert!(body_str(&n).contains("n0"));
    let state = sub_state(&n);
    assert!(state.contains(";max-rate=1;min-rate=1"), "{state}");

    // A burst: at most one NOTIFY a second, in order, the newest last.
    let started = tokio::time::Instant::now();
    for i in 1..=8 {
        tag = publish_note(&mut alice, Some(&tag), &format!("n{i}")).await;
    }
    let mut seen = Vec::new();
    loop {
        let n = bob
            .recv_request("NOTIFY", s.wait() + Duration::from_secs(1))
            .await
            .expect("the newest state arrives");
        let text = body_str(&n);
        assert!(sub_state(&n).contains("max-rate=1"), "{}", sub_state(&n));
        // min-rate NOTIFYs may repeat a state already sent.
        let note: u32 = (0..=8)
            .rev()
            .find(|i| text.contains(&format!("<note>n{i}</note>")))
            .expect("one of the notes");
        seen.push(note);
        if note == 8 {
            break;
        }
    }
    let elapsed = started.elapsed();
    let allowed = 1 + elapsed.as_millis().div_ceil(1000) as usize;
    assert!(seen.len() <= allowed, "{seen:?} in {elapsed:?}");
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "in order: {seen:?}");

    // Nothing changes: min-rate still brings the state, again and again.
    for _ in 0..2 {
        let n = bob
            .recv_request("NOTIFY", s.patience(Duration::from_secs(5)))
            .await
            .expect("a NOTIFY without a change");
        assert!(body_str(&n).contains("<note>n8</note>"));
        assert!(sub_state(&n).starts_with("active;"), "{}", sub_state(&n));
    }

    // A refresh without the parameters removes them: no more NOTIFYs
    // without a change (one for the refresh itself).
    let refresh = subscribe_with(&mut bob, &aor, "", 600).in_dialog(&dialog);
    let refresh = Req {
        cseq: req.cseq + 1,
        ..refresh
    };
    assert_eq!(bob.send(&refresh).await.code, 200);
    let deadline = tokio::time::Instant::now() + s.wait();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let n = bob
            .recv_request("NOTIFY", left)
            .await
            .expect("the refresh's NOTIFY");
        if !sub_state(&n).contains("rate") {
            break;
        }
    }
    assert!(
        bob.recv_request("NOTIFY", Duration::from_millis(2500))
            .await
            .is_none(),
        "a NOTIFY without a change after min-rate was removed"
    );

    // adaptive-min-rate brings unchanged state too.
    let req = subscribe_with(&mut carol, &aor, ";adaptive-min-rate=1", 600);
    assert_eq!(carol.send(&req).await.code, 200);
    let n = carol.notify().await;
    assert!(
        sub_state(&n).contains(";adaptive-min-rate=1"),
        "{}",
        sub_state(&n)
    );
    let n = carol
        .recv_request("NOTIFY", s.patience(Duration::from_secs(5)))
        .await
        .expect("an adaptive NOTIFY without a change");
    assert!(body_str(&n).contains("<note>n8</note>"));
    s.shutdown().await;
}

async fn blf_expiry(tp: Tp, mode: Mode) {
    let s = start(mode, None, None, &[]).await;
    let mut pbx = s.ua(tp, PRESENTITY, "pbx").await;
    let mut phone = s.ua(tp, WATCHER, "phone").await;
    let ext = "sip:2002@example.com";
    let req = subscribe_req(&mut phone, &BLF, ext, 600);
    assert_eq!(phone.send(&req).await.code, 200);
    assert_eq!(blf_state(&phone.notify().await).1, vec![]);
    let req = publish_req(
        &mut pbx,
        &BLF,
        ext,
        None,
        2,
        Some(&dialog_info(ext, &[("x", "confirmed")])),
    );
    let r = pbx.send(&req).await;
    assert_eq!(r.code, 200, "{}", r.reason);
    let n = phone.notify_containing("confirmed", s.wait()).await;
    assert_eq!(
        blf_state(&n).1,
        vec![("x".to_string(), "confirmed".to_string())]
    );
    // Not refreshed: it expires, and the lamp goes out.
    let deadline = tokio::time::Instant::now() + s.patience(Duration::from_secs(6));
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let n = phone
            .recv_request("NOTIFY", left)
            .await
            .expect("the lamp goes out when the publication expires");
        if blf_state(&n).1.is_empty() {
            break;
        }
    }
    assert!(s
        .store()
        .publications(ext, "dialog")
        .await
        .unwrap()
        .is_empty());
    s.shutdown().await;
}

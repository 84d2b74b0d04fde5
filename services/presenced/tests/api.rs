//! The api role end to end: `presence.v1.PresenceApi` over a real gRPC
//! connection, against the all-in-one server and a cluster (tests/harness:
//! real redis-server and nats-server, an api process beside the edges,
//! compositors and notifier), with SIP UAs over UDP and TCP on the other
//! side.
//!
//! - get: GetPresence shows what a SIP PUBLISH made (basic, RPID activity,
//!   note, lamp, version, last change); bad AoRs, foreign domains, unknown
//!   events and oversize batches get INVALID_ARGUMENT.
//! - watch: a stream over several AoRs gets their current state, `synced`,
//!   then each SIP change in version order; a stream resumed with the
//!   versions it has gets only `synced`, then changes.
//! - publish: a status set through the API reaches a SIP watcher as a
//!   NOTIFY, composed with the user's SIP device; Unpublish takes it away;
//!   a malformed PIDF and an unknown ETag are refused.
//! - admin: hard state set and cleared, the watchers listed and one ended
//!   (its watcher gets `terminated;reason=deactivated`), registrations
//!   listed.
//! - message: SendMessage rings the target's SIP UA with the text (200);
//!   a target with no device gets 480.
//! - failover: killing an api process ends its streams; the client resumes
//!   on another with the versions it has and gets only what changed.
//! - auth: tokens with scopes, SIP logins, sessions that act only as their
//!   user; health and reflection answer.
//! - directory: a search shows entries with their current presence.

mod common;
mod harness;

use common::*;
use presence_api::pb;
use presence_api::pb::presence_api_client::PresenceApiClient;
use presence_sip::HeaderAccess;
use std::time::Duration;
use tonic::transport::Channel;

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
        }
    )*};
}

scenarios! {
    get;
    watch;
    publish;
    admin;
    message;
}

async fn client(s: &TestServer) -> PresenceApiClient<Channel> {
    client_of(s.api.expect("the server runs the api role")).await
}

async fn client_of(addr: std::net::SocketAddr) -> PresenceApiClient<Channel> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect to the api");
    PresenceApiClient::new(channel)
}

fn rpid_pidf(entity: &str, activity: &str, note: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model" xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid" entity="{entity}"><tuple id="phone"><status><basic>open</basic></status></tuple><dm:person id="p1"><rpid:activities><rpid:{activity}/></rpid:activities><dm:note>{note}</dm:note></dm:person></presence>"#
    )
}

async fn sip_publish(ua: &mut Ua, etag: Option<&str>, body: String) -> String {
    let aor = ua.aor.clone();
    let mut req = ua
        .req("PUBLISH", &aor)
        .h("Event", "presence")
        .h("Expires", "600")
        .body("application/pidf+xml", body);
    if let Some(e) = etag {
        req = req.h("SIP-If-Match", e);
    }
    let r = ua.send(&req).await;
    assert_eq!(r.code, 200, "PUBLISH: {} {}", r.code, r.reason);
    r.sip_etag().expect("SIP-ETag").to_string()
}

async fn register(ua: &mut Ua) {
    let aor = ua.aor.clone();
    let contact = format!("<{}>", ua.contact_uri());
    let req = ua
        .req("REGISTER", "sip:example.com")
        .to(&aor)
        .h("Contact", contact)
        .h("Expires", "600");
    let r = ua.send(&req).await;
    assert_eq!(r.code, 200, "{}", r.reason);
}

fn code<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> tonic::Code {
    match r {
        Ok(v) => panic!("accepted: {v:?}"),
        Err(s) => s.code(),
    }
}

async fn get(tp: Tp, mode: Mode) {
    let s = start_api(mode, None, None, &[]).await;
    let mut api = client(&s).await;
    let mut alice = s.ua(tp, PRESENTITY, "alice").await;
    sip_publish(
        &mut alice,
        None,
        rpid_pidf("sip:alice@example.com", "away", "lunch"),
    )
    .await;
    let r = api
        .get_presence(pb::GetPresenceRequest {
            aors: vec!["sip:alice@example.com".into(), "bob@example.com".into()],
            event: String::new(),
        })
        .await
        .expect("GetPresence")
        .into_inner();
    assert_eq!(r.states.len(), 2);
    let a = &r.states[0];
    assert_eq!(a.aor, "sip:alice@example.com");
    assert_eq!(a.event, "presence");
    assert!(a.version >= 1, "{a:?}");
    assert_eq!(a.basic, pb::Basic::Open as i32);
    assert_eq!(a.activities, vec!["away".to_string()]);
    assert_eq!(a.note, "lunch");
    assert_eq!(a.availability, pb::Availability::Away as i32);
    assert_eq!(a.tuples.len(), 1);
    assert!(a.changed_at_ms > 0);
    assert!(String::from_utf8_lossy(&a.document).contains("rpid:away"));
    let b = &r.states[1];
    assert_eq!(b.aor, "sip:bob@example.com");
    assert_eq!(b.version, 0);
    assert_eq!(b.availability, pb::Availability::Offline as i32);

    for (aors, event) in [
        (vec!["not an aor".to_string()], ""),
        (vec!["sip:alice@elsewhere.net".to_string()], ""),
        (vec!["sip:alice@example.com".to_string()], "no-such-package"),
        (vec!["sip:alice@example.com".to_string()], "presence.winfo"),
        (
            (0..1001).map(|i| format!("sip:u{i}@example.com")).collect(),
            "",
        ),
    ] {
        let r = api
            .get_presence(pb::GetPresenceRequest {
                aors,
                event: event.into(),
            })
            .await;
        assert_eq!(code(r), tonic::Code::InvalidArgument, "event {event:?}");
    }
    s.shutdown().await;
}

/// The next state event of a Watch stream (heartbeats skipped).
async fn next_state(
    stream: &mut tonic::Streaming<pb::WatchResponse>,
    patience: Duration,
) -> pb::WatchResponse {
    loop {
        let m = tokio::time::timeout(patience, stream.message())
            .await
            .expect("a stream event in time")
            .expect("the stream is healthy")
            .expect("the stream goes on");
        if !matches!(m.kind, Some(pb::watch_response::Kind::Heartbeat(_))) {
            return m;
        }
    }
}

fn state_of(m: pb::WatchResponse) -> pb::PresenceState {
    match m.kind {
        Some(pb::watch_response::Kind::State(s)) => s,
        other => panic!("expected a state, got {other:?}"),
    }
}

fn is_synced(m: &pb::WatchResponse) -> bool {
    matches!(m.kind, Some(pb::watch_response::Kind::Synced(_)))
}

async fn watch(tp: Tp, mode: Mode) {
    let s = start_api(mode, None, None, &[]).await;
    let mut api = client(&s).await;
    let mut alice = s.ua(tp, PRESENTITY, "alice").await;
    let etag = sip_publish(
        &mut alice,
        None,
        pidf("sip:alice@example.com", "t1", true, "first"),
    )
    .await;
    let mut stream = api
        .watch(pb::WatchRequest {
            aors: vec![
                "sip:alice@example.com".into(),
                "sip:carol@example.com".into(),
                "sip:alice@example.com".into(),
            ],
            event: String::new(),
            resume: Default::default(),
            heartbeat_seconds: 1,
        })
        .await
        .expect("Watch")
        .into_inner();
    let wait = s.wait();
    let mut first = std::collections::HashMap::new();
    for _ in 0..2 {
        let st = state_of(next_state(&mut stream, wait).await);
        first.insert(st.aor.clone(), st);
    }
    assert!(is_synced(&next_state(&mut stream, wait).await));
    let a = &first["sip:alice@example.com"];
    assert_eq!(a.note, "first");
    assert_eq!(first["sip:carol@example.com"].version, 0);
    let mut last = a.version;

    // Each change, in order; coalescing may skip one, never go back.
    let mut etag = etag;
    for n in 0..5 {
        etag = sip_publish(
            &mut alice,
            Some(&etag),
            pidf(
                "sip:alice@example.com",
                "t1",
                n % 2 == 0,
                &format!("change {n}"),
            ),
        )
        .await;
    }
    loop {
        let st = state_of(next_state(&mut stream, wait).await);
        assert_eq!(st.aor, "sip:alice@example.com");
        assert!(st.version > last, "version {} after {last}", st.version);
        last = st.version;
        if st.note == "change 4" {
            assert_eq!(st.basic, pb::Basic::Open as i32);
            break;
        }
    }
    // A heartbeat comes while nothing changes.
    let beat = tokio::time::timeout(wait, stream.message())
        .await
        .expect("in time")
        .expect("healthy")
        .expect("open");
    assert!(
        matches!(beat.kind, Some(pb::watch_response::Kind::Heartbeat(_))),
        "{beat:?}"
    );
    drop(stream);

    // Resumed with the versions it has: nothing again, `synced`, then changes.
    let mut resumed = api
        .watch(pb::WatchRequest {
            aors: vec![
                "sip:alice@example.com".into(),
                "sip:carol@example.com".into(),
            ],
            event: "presence".into(),
            resume: [
                ("sip:alice@example.com".to_string(), last),
                ("sip:carol@example.com".to_string(), 0),
            ]
            .into_iter()
            .collect(),
            heartbeat_seconds: 0,
        })
        .await
        .expect("Watch")
        .into_inner();
    let m = next_state(&mut resumed, wait).await;
    assert!(is_synced(&m), "resumed stream sent {m:?}");
    sip_publish(
        &mut alice,
        Some(&etag),
        pidf("sip:alice@example.com", "t1", false, "gone home"),
    )
    .await;
    let st = state_of(next_state(&mut resumed, wait).await);
    assert_eq!(st.note, "gone home");
    assert_eq!(st.availability, pb::Availability::Offline as i32);
    assert!(st.version > last);
    s.shutdown().await;
}

/// Killing an api process ends its streams (an error or the end, not
/// silence); the client resumes on another api process with the versions
/// it has: it gets what changed while it was away, not what it has, then
/// `synced`, then each change.
#[tokio::test]
async fn streams_resume_on_another_api_process() {
    const ALICE: &str = "sip:alice@example.com";
    const CAROL: &str = "sip:carol@example.com";
    let mut s = start_api(Mode::Cluster, None, None, &[]).await;
    let other = s.cluster_mut().start_api("api1");
    let wait = s.wait();
    let mut alice = s.ua(Tp::Udp, PRESENTITY, "alice").await;
    let etag = sip_publish(&mut alice, None, pidf(ALICE, "t1", true, "before")).await;
    let request = |resume: std::collections::HashMap<String, u64>| pb::WatchRequest {
        aors: vec![ALICE.into(), CAROL.into()],
        event: String::new(),
        resume,
        heartbeat_seconds: 1,
    };
    let mut stream = client(&s)
        .await
        .watch(request(Default::default()))
        .await
        .expect("Watch")
        .into_inner();
    let mut have = std::collections::HashMap::new();
    for _ in 0..2 {
        let st = state_of(next_state(&mut stream, wait).await);
        have.insert(st.aor.clone(), st.version);
    }
    assert!(is_synced(&next_state(&mut stream, wait).await));

    let killed = s.api.expect("api0");
    assert_ne!(killed, other);
    s.cluster_mut().kill9("api0");
    loop {
        match tokio::time::timeout(wait, stream.message())
            .await
            .expect("the stream ends, in time")
        {
            Ok(Some(m)) if matches!(m.kind, Some(pb::watch_response::Kind::Heartbeat(_))) => {}
            Ok(Some(m)) => panic!("after the kill: {m:?}"),
            Ok(None) | Err(_) => break,
        }
    }

    // A change while the client is away.
    let etag = sip_publish(
        &mut alice,
        Some(&etag),
        pidf(ALICE, "t1", false, "while away"),
    )
    .await;
    let mut resumed = client_of(other)
        .await
        .watch(request(have.clone()))
        .await
        .expect("Watch on the other api process")
        .into_inner();
    let st = state_of(next_state(&mut resumed, wait).await);
    assert_eq!((st.aor.as_str(), st.note.as_str()), (ALICE, "while away"));
    assert!(
        st.version > have[ALICE],
        "{} after {}",
        st.version,
        have[ALICE]
    );
    let m = next_state(&mut resumed, wait).await;
    assert!(is_synced(&m), "Carol did not change: {m:?}");
    sip_publish(&mut alice, Some(&etag), pidf(ALICE, "t1", true, "back")).await;
    let st = state_of(next_state(&mut resumed, wait).await);
    assert_eq!(st.note, "back");
    s.shutdown().await;
}

/// Watch streams open, from the server's /metrics.
async fn open_streams(s: &TestServer) -> f64 {
    let (code, body) = http(s.http, "GET", "/metrics", b"").await;
    assert_eq!(code, 200);
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix("presence_api_watch_streams "))
        .and_then(|v| v.trim().parse().ok())
        .expect("presence_api_watch_streams")
}

/// A client that goes away lets go of its stream at once, not at the
/// stream's next heartbeat (an hour here) or change.
#[tokio::test]
async fn a_stream_its_client_left_is_let_go() {
    let s = start_api(Mode::AllInOne, None, None, &[]).await;
    let mut api = client(&s).await;
    let mut stream = api
        .watch(pb::WatchRequest {
            aors: vec!["sip:alice@example.com".into()],
            event: String::new(),
            resume: Default::default(),
            heartbeat_seconds: 3600,
        })
        .await
        .expect("Watch")
        .into_inner();
    state_of(next_state(&mut stream, s.wait()).await);
    assert!(is_synced(&next_state(&mut stream, s.wait()).await));
    assert_eq!(open_streams(&s).await, 1.0);
    drop(stream);
    drop(api);
    let deadline = tokio::time::Instant::now() + s.wait();
    while open_streams(&s).await != 0.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stream is still open {:?} after its client left",
            s.wait()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.shutdown().await;
}

async fn publish(tp: Tp, mode: Mode) {
    let s = start_api(mode, None, None, &[]).await;
    let mut api = client(&s).await;
    let mut carol_phone = s.ua(tp, PRESENTITY, "carol").await;
    sip_publish(
        &mut carol_phone,
        None,
        pidf("sip:carol@example.com", "deskphone", true, ""),
    )
    .await;
    let mut dave = s.ua(tp, WATCHER, "dave").await;
    let (r, _dialog, _) = dave.subscribe("sip:carol@example.com", 600).await;
    assert_eq!(r.code, 200);
    let first = dave.notify().await;
    assert!(body_str(&first).contains("deskphone"));

    let p = api
        .publish(pb::PublishRequest {
            aor: "sip:carol@example.com".into(),
            basic: pb::Basic::Open as i32,
            activity: "meeting".into(),
            note: "budget review".into(),
            expires: 600,
            ..Default::default()
        })
        .await
        .expect("Publish")
        .into_inner();
    assert!(!p.etag.is_empty());
    assert_eq!(p.expires, 600);
    let n = dave.notify_containing("budget review", s.wait()).await;
    let body = body_str(&n);
    assert!(body.contains("meeting"), "{body}");
    assert!(
        body.contains("deskphone"),
        "the SIP device's tuple is composed in: {body}"
    );

    let st = api
        .get_presence(pb::GetPresenceRequest {
            aors: vec!["sip:carol@example.com".into()],
            event: String::new(),
        })
        .await
        .expect("GetPresence")
        .into_inner()
        .states
        .remove(0);
    assert_eq!(st.availability, pb::Availability::Busy as i32);
    assert_eq!(st.tuples.len(), 2, "{st:?}");

    // Modify through the ETag, then remove.
    let p2 = api
        .publish(pb::PublishRequest {
            aor: "sip:carol@example.com".into(),
            basic: pb::Basic::Open as i32,
            note: "back".into(),
            etag: p.etag.clone(),
            ..Default::default()
        })
        .await
        .expect("modify")
        .into_inner();
    dave.notify_containing("back", s.wait()).await;
    api.unpublish(pb::UnpublishRequest {
        aor: "sip:carol@example.com".into(),
        event: String::new(),
        etag: p2.etag.clone(),
    })
    .await
    .expect("Unpublish");
    let n = dave.notify().await;
    assert!(!body_str(&n).contains("back"), "{}", body_str(&n));

    // Refusals.
    let r = api
        .publish(pb::PublishRequest {
            aor: "sip:carol@example.com".into(),
            document: b"<presence><tuple".to_vec(),
            ..Default::default()
        })
        .await;
    assert_eq!(code(r), tonic::Code::InvalidArgument);
    let r = api
        .publish(pb::PublishRequest {
            aor: "sip:carol@example.com".into(),
            basic: pb::Basic::Open as i32,
            etag: "no-such-etag".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(code(r), tonic::Code::NotFound);
    let r = api
        .publish(pb::PublishRequest {
            aor: "sip:carol@example.com".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(code(r), tonic::Code::InvalidArgument);
    let r = api
        .publish(pb::PublishRequest {
            aor: "sip:carol@example.com".into(),
            activity: "<script>".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(code(r), tonic::Code::InvalidArgument);
    s.shutdown().await;
}

async fn admin(tp: Tp, mode: Mode) {
    let s = start_api(mode, None, None, &[]).await;
    let mut api = client(&s).await;
    api.set_hard_state(pb::SetHardStateRequest {
        aor: "sip:erin@example.com".into(),
        basic: pb::Basic::Open as i32,
        note: "reception desk".into(),
        ..Default::default()
    })
    .await
    .expect("SetHardState");
    let mut frank = s.ua(tp, WATCHER, "frank").await;
    register(&mut frank).await;
    let (r, _dialog, _) = frank.subscribe("sip:erin@example.com", 600).await;
    assert_eq!(r.code, 200);
    let n = frank.notify().await;
    assert!(body_str(&n).contains("reception desk"), "{}", body_str(&n));

    let subs = api
        .list_subscriptions(pb::ListSubscriptionsRequest {
            aor: "sip:erin@example.com".into(),
            ..Default::default()
        })
        .await
        .expect("ListSubscriptions")
        .into_inner()
        .subscriptions;
    assert_eq!(subs.len(), 1, "{subs:?}");
    let sub = &subs[0];
    assert_eq!(sub.watcher, "sip:frank@example.com");
    assert_eq!(sub.event, "presence");
    assert_eq!(sub.state, "active");
    assert_eq!(sub.transport, tp.via().to_ascii_lowercase());
    assert!(!sub.edge.is_empty());

    let regs = api
        .list_registrations(pb::ListRegistrationsRequest {
            aor: "sip:frank@example.com".into(),
        })
        .await
        .expect("ListRegistrations")
        .into_inner()
        .registrations;
    assert_eq!(regs.len(), 1);
    assert_eq!(regs[0].contact, frank.contact_uri());

    api.clear_hard_state(pb::ClearHardStateRequest {
        aor: "sip:erin@example.com".into(),
        event: String::new(),
    })
    .await
    .expect("ClearHardState");
    let n = frank.notify().await;
    assert!(!body_str(&n).contains("reception desk"));

    api.end_subscription(pb::EndSubscriptionRequest { id: sub.id.clone() })
        .await
        .expect("EndSubscription");
    let n = frank.notify().await;
    let state = n
        .header("Subscription-State")
        .unwrap_or_default()
        .replace(' ', "");
    assert!(
        state.starts_with("terminated") && state.contains("reason=deactivated"),
        "{state}"
    );
    let r = api
        .end_subscription(pb::EndSubscriptionRequest { id: sub.id.clone() })
        .await;
    assert_eq!(code(r), tonic::Code::NotFound);
    s.shutdown().await;
}

async fn message(tp: Tp, mode: Mode) {
    let s = start_api(mode, None, None, &[]).await;
    let mut api = client(&s).await;
    let mut bob = s.ua(tp, WATCHER, "bob").await;
    register(&mut bob).await;
    let sent = api.send_message(pb::SendMessageRequest {
        from: "sip:alice@example.com".into(),
        to: "sip:bob@example.com".into(),
        content_type: String::new(),
        text: "Lunch at noon? 점심".into(),
    });
    let (r, m) = tokio::join!(sent, bob.recv_request("MESSAGE", s.wait()));
    let r = r.expect("SendMessage").into_inner();
    assert_eq!(r.sip_status, 200, "{r:?}");
    assert_eq!(r.devices, 1);
    let m = m.expect("the MESSAGE reached bob's UA");
    assert_eq!(&m.body[..], "Lunch at noon? 점심".as_bytes());
    assert!(m
        .header("From")
        .is_some_and(|f| f.contains("sip:alice@example.com")));
    assert_eq!(m.header("Content-Type"), Some("text/plain;charset=UTF-8"));

    let r = api
        .send_message(pb::SendMessageRequest {
            from: "sip:alice@example.com".into(),
            to: "sip:nobody@example.com".into(),
            content_type: String::new(),
            text: "hello?".into(),
        })
        .await
        .expect("SendMessage")
        .into_inner();
    assert_eq!(r.sip_status, 480);
    assert_eq!(r.devices, 0);
    let r = api
        .send_message(pb::SendMessageRequest {
            from: "sip:alice@example.com".into(),
            to: "sip:bob@example.com".into(),
            content_type: "application/octet-stream".into(),
            text: "x".into(),
        })
        .await;
    assert_eq!(code(r), tonic::Code::InvalidArgument);
    s.shutdown().await;
}

fn with_token<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii"),
    );
    r
}

const READER: &str = "reader-token-0123456789";
const WRITER: &str = "writer-token-0123456789";
const ADMIN: &str = "admin-token-01234567890";

#[tokio::test]
async fn tokens_scopes_and_logins() {
    let tokens = TempFile::new(&format!(
        "# name token scopes\ndash {READER} read\ncrm {WRITER} write\nops {ADMIN} admin\n"
    ));
    let tokens_path = tokens.0.display().to_string();
    let s = start_api(
        Mode::AllInOne,
        Some("alice@example.com:alicepw\nbob@example.com:bobpw\n"),
        None,
        &["--api-tokens", &tokens_path],
    )
    .await;
    let mut api = client(&s).await;
    let get = || pb::GetPresenceRequest {
        aors: vec!["sip:alice@example.com".into()],
        event: String::new(),
    };
    assert_eq!(
        code(api.get_presence(get()).await),
        tonic::Code::Unauthenticated
    );
    assert_eq!(
        code(
            api.get_presence(with_token(get(), "wrong-token-0123456789"))
                .await
        ),
        tonic::Code::Unauthenticated
    );
    api.get_presence(with_token(get(), READER))
        .await
        .expect("read scope reads");
    let publish = |aor: &str| pb::PublishRequest {
        aor: aor.into(),
        basic: pb::Basic::Open as i32,
        ..Default::default()
    };
    assert_eq!(
        code(
            api.publish(with_token(publish("sip:alice@example.com"), READER))
                .await
        ),
        tonic::Code::PermissionDenied
    );
    api.publish(with_token(publish("sip:alice@example.com"), WRITER))
        .await
        .expect("write scope publishes");
    let hard = || pb::SetHardStateRequest {
        aor: "sip:alice@example.com".into(),
        basic: pb::Basic::Closed as i32,
        ..Default::default()
    };
    assert_eq!(
        code(api.set_hard_state(with_token(hard(), WRITER)).await),
        tonic::Code::PermissionDenied
    );
    api.set_hard_state(with_token(hard(), ADMIN))
        .await
        .expect("admin scope sets hard state");
    // An AoR nobody knows.
    assert_eq!(
        code(
            api.get_presence(with_token(
                pb::GetPresenceRequest {
                    aors: vec!["sip:mallory@example.com".into()],
                    event: String::new(),
                },
                READER
            ))
            .await
        ),
        tonic::Code::NotFound
    );

    // SIP credentials: a session that acts as its user only.
    assert_eq!(
        code(
            api.login(pb::LoginRequest {
                aor: "sip:alice@example.com".into(),
                password: "bobpw".into(),
            })
            .await
        ),
        tonic::Code::Unauthenticated
    );
    let session = api
        .login(pb::LoginRequest {
            aor: "alice@example.com".into(),
            password: "alicepw".into(),
        })
        .await
        .expect("login")
        .into_inner();
    assert_eq!(session.aor, "sip:alice@example.com");
    api.publish(with_token(publish("sip:alice@example.com"), &session.token))
        .await
        .expect("a session publishes as its user");
    assert_eq!(
        code(
            api.publish(with_token(publish("sip:bob@example.com"), &session.token))
                .await
        ),
        tonic::Code::PermissionDenied
    );
    assert_eq!(
        code(
            api.send_message(with_token(
                pb::SendMessageRequest {
                    from: "sip:bob@example.com".into(),
                    to: "sip:alice@example.com".into(),
                    content_type: String::new(),
                    text: "spoofed".into(),
                },
                &session.token
            ))
            .await
        ),
        tonic::Code::PermissionDenied
    );
    assert_eq!(
        code(api.set_hard_state(with_token(hard(), &session.token)).await),
        tonic::Code::PermissionDenied
    );
    let mut forged = session.token.clone();
    forged.push('x');
    assert_eq!(
        code(api.get_presence(with_token(get(), &forged)).await),
        tonic::Code::Unauthenticated
    );
    s.shutdown().await;
}

#[tokio::test]
async fn directory_search_shows_presence() {
    let dir = TempFile::new(
        "aor,display_name,department,title,phone,location\n\
         sip:alice@example.com,Alice Kim,Sales,Account manager,+82 2 555 0101,Seoul\n\
         sip:bob@example.com,Bob Lee,Engineering,SRE,+82 2 555 0102,Busan\n\
         sip:carol@example.com,Carol Park,Sales,Director,,Seoul\n",
    );
    let path = dir.0.display().to_string();
    let s = start_api(Mode::AllInOne, None, None, &["--directory", &path]).await;
    let mut api = client(&s).await;
    let mut alice = s.ua(Tp::Udp, PRESENTITY, "alice").await;
    sip_publish(
        &mut alice,
        None,
        pidf("sip:alice@example.com", "t1", true, "in"),
    )
    .await;
    let r = api
        .search_directory(pb::SearchDirectoryRequest {
            query: "sales".into(),
            ..Default::default()
        })
        .await
        .expect("SearchDirectory")
        .into_inner();
    assert_eq!(r.total_size, 2);
    let names: Vec<&str> = r.entries.iter().map(|e| e.display_name.as_str()).collect();
    assert_eq!(names, ["Alice Kim", "Carol Park"]);
    let alice = &r.entries[0];
    assert_eq!(
        alice.attributes.get("location").map(String::as_str),
        Some("Seoul")
    );
    assert_eq!(
        alice.presence.as_ref().map(|p| p.availability),
        Some(pb::Availability::Available as i32)
    );
    assert_eq!(
        r.entries[1].presence.as_ref().map(|p| p.availability),
        Some(pb::Availability::Offline as i32)
    );
    // Paging.
    let page = api
        .search_directory(pb::SearchDirectoryRequest {
            query: String::new(),
            page_size: 2,
            page_token: String::new(),
        })
        .await
        .expect("page 1")
        .into_inner();
    assert_eq!(page.entries.len(), 2);
    assert_eq!(page.total_size, 3);
    let rest = api
        .search_directory(pb::SearchDirectoryRequest {
            query: String::new(),
            page_size: 2,
            page_token: page.next_page_token.clone(),
        })
        .await
        .expect("page 2")
        .into_inner();
    assert_eq!(rest.entries.len(), 1);
    assert!(rest.next_page_token.is_empty());
    s.shutdown().await;
}

#[tokio::test]
async fn health_and_reflection_answer() {
    let s = start_api(Mode::AllInOne, None, None, &[]).await;
    let addr = s.api.expect("api");
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let r = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "presence.v1.PresenceApi".into(),
        })
        .await
        .expect("Check")
        .into_inner();
    assert_eq!(
        r.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::{
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let mut reflection = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .expect("reflection")
        .into_inner();
    let answer = answers
        .message()
        .await
        .expect("healthy")
        .expect("an answer");
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("{answer:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.iter().any(|n| n == "presence.v1.PresenceApi"),
        "{names:?}"
    );
    assert!(
        names.iter().any(|n| n == "grpc.health.v1.Health"),
        "{names:?}"
    );
    s.shutdown().await;
}

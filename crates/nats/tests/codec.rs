//! Envelope properties with deterministic seeds (rand's `StdRng`):
//!
//! (a) every core type survives encode → decode unchanged (random values of
//!     Command, Reply, NotifyJob and the model types they carry, u32);
//! (b) no byte string — random, a truncated or bit-flipped valid envelope —
//!     panics a decoder; it decodes or gives an error;
//! (c) decoders refuse what the core types cannot hold (missing sub-messages,
//!     unknown enum values, ports and status codes out of range, bad IPs).
//!
//! Set `NATS_CODEC_SEED=<n>` to run on other random streams.

use bytes::Bytes;
use presence_core::commands::{
    Command, ContactSpec, NotifyJob, Origin, PublishCmd, Quota, Refusal, RegisterAction,
    RegisterCmd, Reply, SubscribeCmd,
};
use presence_core::{Binding, EndReason, Flow, Rates, Seal, Subscription, Transport, View};
use presence_nats::{pb, DecodeError, Envelope};
use prost::Message;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

const ROUNDS: usize = 3_000;

fn rng() -> StdRng {
    let seed = std::env::var("NATS_CODEC_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_0004);
    StdRng::seed_from_u64(seed)
}

// ---------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------

fn text(r: &mut StdRng) -> String {
    const PIECES: &[&str] = &[
        "",
        "sip:alice@example.com",
        "presence",
        "é",
        "🙂",
        ";q=0.5",
        "\u{0}",
        "<sip:b@192.0.2.1>",
        "x",
    ];
    let n = r.random_range(0..4);
    (0..n)
        .map(|_| PIECES[r.random_range(0..PIECES.len())])
        .collect()
}

fn opt<T>(r: &mut StdRng, f: impl FnOnce(&mut StdRng) -> T) -> Option<T> {
    if r.random_bool(0.5) {
        Some(f(r))
    } else {
        None
    }
}

fn list(r: &mut StdRng) -> Vec<String> {
    (0..r.random_range(0..4)).map(|_| text(r)).collect()
}

fn body(r: &mut StdRng) -> Bytes {
    let n = r.random_range(0..64);
    (0..n).map(|_| r.random::<u8>()).collect::<Vec<u8>>().into()
}

fn addr(r: &mut StdRng) -> SocketAddr {
    if r.random_bool(0.5) {
        SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::from(r.random::<u32>()),
            r.random(),
        ))
    } else {
        SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(r.random::<u128>()),
            r.random(),
            r.random(),
            r.random(),
        ))
    }
}

fn flow(r: &mut StdRng) -> Flow {
    Flow {
        transport: [
            Transport::Udp,
            Transport::Tcp,
            Transport::Tls,
            Transport::Ws,
            Transport::Wss,
        ][r.random_range(0..5)],
        remote: addr(r),
        local: addr(r),
        edge: text(r),
        conn: r.random(),
        seal: opt(r, |r| Seal(r.random())),
    }
}

fn binding(r: &mut StdRng) -> Binding {
    Binding {
        aor: text(r),
        uri: text(r),
        params: text(r),
        expires_at_ms: r.random(),
        call_id: text(r),
        cseq: r.random(),
        flow: flow(r),
        methods: opt(r, list),
        q: opt(r, text),
    }
}

fn view(r: &mut StdRng) -> View {
    if r.random_bool(0.5) {
        View::Full
    } else {
        View::Neutral
    }
}

fn reason(r: &mut StdRng) -> EndReason {
    [
        EndReason::Unsubscribed,
        EndReason::Timeout,
        EndReason::Deactivated,
        EndReason::Rejected,
        EndReason::Noresource,
        EndReason::Gone,
    ][r.random_range(0..6)]
}

fn subscription(r: &mut StdRng) -> Subscription {
    Subscription {
        id: text(r),
        aor: text(r),
        event: text(r),
        event_id: opt(r, text),
        watcher: text(r),
        call_id: text(r),
        remote_tag: text(r),
        local_uri: text(r),
        remote_uri: text(r),
        remote_target: text(r),
        route_set: list(r),
        flow: flow(r),
        remote_cseq: r.random(),
        expires_at_ms: r.random(),
        content_type: text(r),
        view: view(r),
        rates: rates(r),
    }
}

fn origin(r: &mut StdRng) -> Origin {
    Origin {
        txn: text(r),
        deadline_ms: r.random(),
    }
}

fn command(r: &mut StdRng) -> Command {
    match r.random_range(0..7) {
        0 => Command::Register(RegisterCmd {
            aor: text(r),
            call_id: text(r),
            cseq: r.random(),
            flow: flow(r),
            action: match r.random_range(0..3) {
                0 => RegisterAction::Query,
                1 => RegisterAction::RemoveAll,
                _ => RegisterAction::Update(
                    (0..r.random_range(0..3))
                        .map(|_| ContactSpec {
                            uri: text(r),
                            params: text(r),
                            expires: r.random(),
                            methods: opt(r, list),
                            q: opt(r, text),
                        })
                        .collect(),
                ),
            },
            origin: origin(r),
        }),
        1 => Command::Publish(PublishCmd {
            aor: text(r),
            event: text(r),
            if_match: opt(r, text),
            expires: r.random(),
            body: opt(r, |r| (text(r), body(r))),
            origin: origin(r),
        }),
        2 => Command::Subscribe(SubscribeCmd {
            aor: text(r),
            event: text(r),
            event_id: opt(r, text),
            watcher: text(r),
            dialog: opt(r, text),
            call_id: text(r),
            remote_tag: text(r),
            cseq: r.random(),
            local_uri: text(r),
            remote_uri: text(r),
            remote_target: text(r),
            route_set: list(r),
            flow: flow(r),
            expires: r.random(),
            content_type: text(r),
            origin: origin(r),
            rates: rates(r),
        }),
        3 => Command::Route {
            aor: text(r),
            method: text(r),
            origin: origin(r),
            edge: text(r),
        },
        4 => Command::EndSubscription {
            id: text(r),
            reason: reason(r),
        },
        5 => Command::SetHardState {
            aor: text(r),
            event: text(r),
            body: opt(r, body),
        },
        _ => Command::RecomposeList { list: text(r) },
    }
}

fn reply(r: &mut StdRng) -> Reply {
    match r.random_range(0..6) {
        0 => Reply::Registered {
            bindings: (0..r.random_range(0..3)).map(|_| binding(r)).collect(),
            now_ms: r.random(),
        },
        1 => Reply::Published {
            etag: text(r),
            expires: r.random(),
        },
        2 => Reply::Subscribed {
            id: text(r),
            expires: r.random(),
            view: view(r),
        },
        3 => Reply::Routes((0..r.random_range(0..3)).map(|_| binding(r)).collect()),
        4 => Reply::Done,
        _ => Reply::Refused(match r.random_range(0..13) {
            10 => Refusal::DocumentTooLarge { limit: r.random() },
            11 => Refusal::RelayedElsewhere,
            0 => Refusal::UnknownEtag,
            1 => Refusal::NoSuchSubscription,
            2 => Refusal::OutOfOrderCSeq,
            3 => Refusal::PolicyRejected,
            4 => Refusal::MissingBody,
            5 => Refusal::NotRegistered,
            6 => Refusal::UnknownUser,
            7 => Refusal::StoreFailed,
            8 => Refusal::Unavailable,
            _ => Refusal::TooMany {
                what: [
                    Quota::Publications,
                    Quota::Contacts,
                    Quota::WatcherSubscriptions,
                    Quota::Watchers,
                ][r.random_range(0..4)],
                limit: r.random(),
            },
        }),
    }
}

fn job(r: &mut StdRng) -> NotifyJob {
    match r.random_range(0..5) {
        0 => NotifyJob::Changed {
            aor: text(r),
            event: text(r),
            version: r.random(),
            at_ms: r.random(),
        },
        1 => NotifyJob::Refresh { id: text(r) },
        2 => NotifyJob::ChangedFor {
            aor: text(r),
            event: text(r),
            version: r.random(),
            at_ms: r.random(),
            ids: (0..r.random_range(0..5)).map(|_| text(r)).collect(),
        },
        3 => NotifyJob::Terminated {
            sub: Box::new(subscription(r)),
            reason: reason(r),
        },
        _ => NotifyJob::ListMember { list: text(r) },
    }
}

// ---------------------------------------------------------------------------
// (a) round trips
// ---------------------------------------------------------------------------

/// Command and NotifyJob have no PartialEq: compare their Debug forms.
fn same<T: std::fmt::Debug>(a: &T, b: &T) -> bool {
    format!("{a:?}") == format!("{b:?}")
}

#[test]
fn commands_round_trip() {
    let mut r = rng();
    for i in 0..ROUNDS {
        let c = command(&mut r);
        let back = Command::decode(&c.encode()).unwrap_or_else(|e| panic!("#{i} {c:?}: {e}"));
        assert!(same(&c, &back), "#{i}: {c:?} came back as {back:?}");
    }
}

#[test]
fn replies_round_trip() {
    let mut r = rng();
    for i in 0..ROUNDS {
        let rep = reply(&mut r);
        let back = Reply::decode(&rep.encode()).unwrap_or_else(|e| panic!("#{i} {rep:?}: {e}"));
        assert_eq!(rep, back, "#{i}");
    }
}

#[test]
fn notify_jobs_round_trip() {
    let mut r = rng();
    for i in 0..ROUNDS {
        let j = job(&mut r);
        let back = NotifyJob::decode(&j.encode()).unwrap_or_else(|e| panic!("#{i} {j:?}: {e}"));
        assert!(same(&j, &back), "#{i}: {j:?} came back as {back:?}");
    }
}

#[test]
fn model_types_round_trip() {
    let mut r = rng();
    for _ in 0..ROUNDS {
        let f = flow(&mut r);
        assert_eq!(Flow::try_from(pb::Flow::from(&f)), Ok(f));
        let b = binding(&mut r);
        assert_eq!(Binding::try_from(pb::Binding::from(&b)), Ok(b));
        let s = subscription(&mut r);
        assert_eq!(Subscription::try_from(pb::Subscription::from(&s)), Ok(s));
        let a = addr(&mut r);
        assert_eq!(SocketAddr::try_from(pb::SocketAddr::from(&a)), Ok(a));
    }
}

#[test]
fn optional_empty_lists_stay_distinct_from_absent() {
    let mut r = rng();
    let mut b = binding(&mut r);
    b.methods = Some(vec![]);
    assert_eq!(
        Binding::try_from(pb::Binding::from(&b)).map(|b| b.methods),
        Ok(Some(vec![]))
    );
    b.methods = None;
    assert_eq!(
        Binding::try_from(pb::Binding::from(&b)).map(|b| b.methods),
        Ok(None)
    );
}

#[test]
fn u32_round_trips_and_refuses_other_lengths() {
    let mut r = rng();
    for _ in 0..ROUNDS {
        let v: u32 = r.random();
        assert_eq!(<u32 as Envelope>::decode(&Envelope::encode(&v)), Ok(v));
    }
    for bad in [&b""[..], b"\x01\x02\x03", b"\x01\x02\x03\x04\x05"] {
        assert!(<u32 as Envelope>::decode(bad).is_err());
    }
}

#[test]
fn edge_messages_round_trip() {
    let mut r = rng();
    for _ in 0..ROUNDS {
        let req = pb::OutRequest {
            flow: Some(pb::Flow::from(&flow(&mut r))),
            method: text(&mut r),
            uri: text(&mut r),
            headers: presence_nats::convert::headers_to_pb(&[(text(&mut r), text(&mut r))]),
            body: body(&mut r),
            deadline_ms: r.random(),
        };
        assert_eq!(
            <pb::OutRequest as Envelope>::decode(&Envelope::encode(&req)),
            Ok(req)
        );
        let out = pb::Outcome {
            code: r.random_range(100..700),
            reason: text(&mut r),
            headers: vec![],
            body: body(&mut r),
            timed_out: r.random_bool(0.5),
            superseded: r.random_bool(0.5),
        };
        assert_eq!(
            <pb::Outcome as Envelope>::decode(&Envelope::encode(&out)),
            Ok(out)
        );
    }
}

// ---------------------------------------------------------------------------
// (b) hostile bytes
// ---------------------------------------------------------------------------

fn decode_all(bytes: &[u8]) {
    let _ = Command::decode(bytes);
    let _ = Reply::decode(bytes);
    let _ = NotifyJob::decode(bytes);
    let _ = <pb::OutRequest as Envelope>::decode(bytes);
    let _ = <pb::Outcome as Envelope>::decode(bytes);
    let _ = <u32 as Envelope>::decode(bytes);
}

#[test]
fn random_bytes_never_panic() {
    let mut r = rng();
    for _ in 0..ROUNDS * 5 {
        let n = r.random_range(0..200);
        let bytes: Vec<u8> = (0..n).map(|_| r.random()).collect();
        decode_all(&bytes);
    }
}

#[test]
fn mutated_envelopes_never_panic() {
    let mut r = rng();
    for _ in 0..ROUNDS {
        let valid = match r.random_range(0..3) {
            0 => command(&mut r).encode(),
            1 => reply(&mut r).encode(),
            _ => job(&mut r).encode(),
        };
        // Every truncation.
        for cut in 0..valid.len() {
            decode_all(&valid[..cut]);
        }
        // Some bit flips and byte overwrites.
        for _ in 0..8 {
            let mut m = valid.clone();
            if m.is_empty() {
                break;
            }
            let at = r.random_range(0..m.len());
            if r.random_bool(0.5) {
                m[at] ^= 1 << r.random_range(0..8);
            } else {
                m[at] = r.random();
            }
            decode_all(&m);
        }
    }
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    // Field 1 (length-delimited) nested 10,000 times: an unknown-field bomb.
    let mut bytes: Vec<u8> = vec![];
    for _ in 0..10_000 {
        let mut outer = vec![0x0a];
        prost::encoding::encode_varint(bytes.len() as u64, &mut outer);
        outer.extend_from_slice(&bytes);
        bytes = outer;
        if bytes.len() > 200_000 {
            break;
        }
    }
    decode_all(&bytes);
}

// ---------------------------------------------------------------------------
// (c) what the core types cannot hold is refused
// ---------------------------------------------------------------------------

fn valid_flow() -> pb::Flow {
    pb::Flow::from(&flow(&mut rng()))
}

#[test]
fn empty_envelopes_are_refused() {
    assert_eq!(
        Command::decode(&[]).err(),
        Some(DecodeError::Missing("command"))
    );
    assert_eq!(Reply::decode(&[]), Err(DecodeError::Missing("reply")));
    assert_eq!(
        NotifyJob::decode(&[]).err(),
        Some(DecodeError::Missing("job"))
    );
}

#[test]
fn missing_flow_is_refused() {
    let c = pb::Command {
        command: Some(pb::command::Command::Register(pb::RegisterCmd {
            flow: None,
            action: Some(pb::register_cmd::Action::Query(pb::RegisterQuery {})),
            ..Default::default()
        })),
    };
    assert_eq!(
        Command::decode(&c.encode_to_vec()).err(),
        Some(DecodeError::Missing("flow"))
    );
    let c = pb::Command {
        command: Some(pb::command::Command::Register(pb::RegisterCmd {
            flow: Some(valid_flow()),
            action: None,
            ..Default::default()
        })),
    };
    assert_eq!(
        Command::decode(&c.encode_to_vec()).err(),
        Some(DecodeError::Missing("register.action"))
    );
}

#[test]
fn unknown_and_unspecified_enums_are_refused() {
    for v in [0, 7, -1, i32::MAX] {
        let c = pb::Command {
            command: Some(pb::command::Command::EndSubscription(
                pb::EndSubscriptionCmd {
                    id: "s".into(),
                    reason: v,
                },
            )),
        };
        assert!(matches!(
            Command::decode(&c.encode_to_vec()),
            Err(DecodeError::Invalid {
                field: "reason",
                ..
            })
        ));
    }
    let mut f = valid_flow();
    f.transport = 0;
    assert!(Flow::try_from(f).is_err());
    let r = pb::Reply {
        reply: Some(pb::reply::Reply::Subscribed(pb::Subscribed {
            id: "s".into(),
            expires: 1,
            // VIEW_PENDING (3) is the last one.
            view: 4,
        })),
    };
    assert!(Reply::decode(&r.encode_to_vec()).is_err());
}

#[test]
fn out_of_range_numbers_and_bad_addresses_are_refused() {
    // A refusal without a reason we know, or a quota we do not, is refused.
    for (why, quota) in [(0, 0), (13, 0), (-1, 0), (i32::MAX, 0), (8, 0), (8, 5)] {
        let r = pb::Reply {
            reply: Some(pb::reply::Reply::Refused(pb::Refused {
                why,
                quota,
                limit: 3,
            })),
        };
        assert!(
            matches!(
                Reply::decode(&r.encode_to_vec()),
                Err(DecodeError::Invalid { .. })
            ),
            "{why} {quota}"
        );
    }
    let bad = |ip: &[u8], port: u32, flowinfo: u32| pb::SocketAddr {
        ip: Bytes::copy_from_slice(ip),
        port,
        flowinfo,
        scope_id: 0,
    };
    assert!(SocketAddr::try_from(bad(&[127, 0, 0, 1], 70_000, 0)).is_err());
    assert!(SocketAddr::try_from(bad(&[127, 0, 0], 5060, 0)).is_err());
    assert!(SocketAddr::try_from(bad(&[0; 17], 5060, 0)).is_err());
    assert!(SocketAddr::try_from(bad(&[127, 0, 0, 1], 5060, 9)).is_err());
    assert_eq!(
        SocketAddr::try_from(bad(&[127, 0, 0, 1], 5060, 0)),
        Ok("127.0.0.1:5060".parse().expect("addr"))
    );
}

/// A flow's seal: absent (empty, as from a sender that predates seals) is
/// no seal, 16 bytes are one, any other length is refused.
#[test]
fn a_flow_seal_is_16_bytes_or_none() {
    let with = |seal: &[u8]| {
        Flow::try_from(pb::Flow {
            seal: Bytes::copy_from_slice(seal),
            ..valid_flow()
        })
    };
    assert_eq!(with(&[]).map(|f| f.seal), Ok(None));
    assert_eq!(with(&[7; 16]).map(|f| f.seal), Ok(Some(Seal([7; 16]))));
    for n in [1, 15, 17, 32] {
        assert!(
            matches!(
                with(&vec![7; n]),
                Err(DecodeError::Invalid {
                    field: "flow.seal",
                    ..
                })
            ),
            "{n} bytes"
        );
    }
    // A sealed flow keeps its seal through an OutRequest, as an edge gets it.
    let mut r = rng();
    let mut f = flow(&mut r);
    f.seal = Some(Seal([9; 16]));
    let req = pb::OutRequest {
        flow: Some(pb::Flow::from(&f)),
        ..Default::default()
    };
    let back = <pb::OutRequest as Envelope>::decode(&Envelope::encode(&req)).expect("decodes");
    assert_eq!(Flow::try_from(back.flow.expect("flow")), Ok(f));
}

// ---------------------------------------------------------------------------
// Batches (crate::batch)
// ---------------------------------------------------------------------------

fn bus_item(r: &mut StdRng) -> pb::BusItem {
    pb::BusItem {
        token: r.random(),
        payload: body(r),
        error: text(r),
        subject: text(r),
    }
}

/// A batch of any items decodes to those items; bytes that are not a batch
/// (random, truncated, bit-flipped) never panic the decoder.
#[test]
fn batches_round_trip_and_bad_bytes_never_panic() {
    let mut r = rng();
    for _ in 0..ROUNDS {
        let items: Vec<pb::BusItem> = (0..r.random_range(0..6))
            .map(|_| bus_item(&mut r))
            .collect();
        let bytes = presence_nats::batch::encode(items.clone());
        assert_eq!(presence_nats::batch::decode(&bytes), Some(items));
        let mut bad = bytes.to_vec();
        match r.random_range(0..3) {
            0 => bad.truncate(r.random_range(0..=bad.len())),
            1 if !bad.is_empty() => {
                let i = r.random_range(0..bad.len());
                bad[i] ^= 1 << r.random_range(0..8);
            }
            _ => bad = body(&mut r).to_vec(),
        }
        let _ = presence_nats::batch::decode(&bad);
    }
}

fn rates(r: &mut StdRng) -> Rates {
    Rates {
        min: r.random(),
        max: r.random(),
        adaptive_min: r.random(),
    }
}

//! How the server names itself on the wire (Via sent-by, Contact) when it
//! listens on a wildcard address, and with `--sip-advertise`: a phone must be
//! able to reach every address it is given, so `0.0.0.0` / `::` must never
//! appear. Over real UDP and TCP sockets.

mod common;
mod harness;

use common::*;
use presence_sip::HeaderAccess;
use std::net::SocketAddr;

async fn start(sip_listen: &str, extra: &[&str]) -> presenced::Server {
    let mut args = base_args(sip_listen);
    args.extend(extra.iter().map(|s| s.to_string()));
    use clap::Parser;
    let parsed = presenced::config::Args::parse_from(&args);
    let cfg = presenced::config::Config::from_args(&parsed).expect("valid config");
    presenced::start_all(cfg).await.expect("server starts")
}

/// SUBSCRIBE, its NOTIFY, a PUBLISH's NOTIFY, the in-dialog un-SUBSCRIBE
/// and its final NOTIFY; every Contact and Via the server wrote must name
/// `want` (host:port).
async fn names_itself(tp: Tp, server: SocketAddr, want: &str) {
    let mut watcher = Ua::new(tp, server, "bob").await;
    let (resp, dialog, sent) = watcher.subscribe("sip:alice@example.com", 600).await;
    assert_eq!(resp.code, 200, "SUBSCRIBE over {tp:?}");
    let contact = resp.header("Contact").expect("a Contact in the 2xx");
    assert!(
        contact.contains(&format!("sip:{want}")),
        "the 2xx Contact over {tp:?} is {contact:?}, wanted {want}"
    );
    let mut notifies = vec![watcher.notify().await];
    // A note of its own: every call publishes a change.
    let note = format!("here-{}", rand_token());

    let mut alice = Ua::new(tp, server, "alice").await;
    assert_eq!(publish_note(&mut alice, &note).await.code, 200);
    notifies.push(watcher.notify_containing(&note, watcher.patience).await);

    let mut end = sent.next().in_dialog(&dialog);
    end.headers.retain(|(n, _)| n != "Expires");
    let end = end.h("Expires", "0");
    assert_eq!(watcher.send(&end).await.code, 200, "un-SUBSCRIBE");
    notifies.push(watcher.notify().await);

    for n in &notifies {
        let via = n.header("Via").expect("a Via");
        assert!(
            via.starts_with(&format!("SIP/2.0/{} {want};", tp.via())),
            "NOTIFY Via over {tp:?} is {via:?}, wanted sent-by {want}"
        );
        let contact = n.header("Contact").expect("a Contact in the NOTIFY");
        assert!(
            contact.contains(&format!("sip:{want}")),
            "NOTIFY Contact over {tp:?} is {contact:?}, wanted {want}"
        );
        let raw: String = n.headers().iter().map(|h| format!("{h}\r\n")).collect();
        assert!(!raw.contains("0.0.0.0"), "a wildcard on the wire: {raw}");
    }
}

#[tokio::test]
async fn wildcard_listener_names_the_address_a_request_arrived_on() {
    let server = start("0.0.0.0:0", &[]).await;
    let port = server.sip_addrs[0].port();
    assert!(server.sip_addrs[0].ip().is_unspecified());
    let at: SocketAddr = ([127, 0, 0, 1], port).into();
    for tp in [Tp::Udp, Tp::Tcp] {
        names_itself(tp, at, &format!("127.0.0.1:{port}")).await;
    }
    // Another address of this host: the name follows the arrival address.
    let other: std::net::Ipv4Addr = [127, 0, 0, 2].into();
    if std::net::UdpSocket::bind((other, 0)).is_ok() {
        let at: SocketAddr = (other, port).into();
        for tp in [Tp::Udp, Tp::Tcp] {
            names_itself(tp, at, &format!("127.0.0.2:{port}")).await;
        }
    }
    server.shutdown().await;
}

#[tokio::test]
async fn advertised_dns_name_is_what_the_server_calls_itself() {
    // With a port: that port. Without one (second listener): the listener's.
    let server = start(
        "0.0.0.0:0,127.0.0.1:0",
        &[
            "--sip-advertise",
            "sip.example.net:5099,edge-2.sip.example.net",
        ],
    )
    .await;
    let first: SocketAddr = ([127, 0, 0, 1], server.sip_addrs[0].port()).into();
    let second = server.sip_addrs[1];
    for tp in [Tp::Udp, Tp::Tcp] {
        names_itself(tp, first, "sip.example.net:5099").await;
        names_itself(
            tp,
            second,
            &format!("edge-2.sip.example.net:{}", second.port()),
        )
        .await;
    }
    server.shutdown().await;
}

#[test]
fn bad_advertise_values_are_refused_at_start() {
    use clap::Parser;
    for (listen, advertise, needle) in [
        ("0.0.0.0:5060", "0.0.0.0", "wildcard"),
        (
            "0.0.0.0:5060",
            "bad_host",
            "not an IP address or a host name",
        ),
        ("0.0.0.0:5060", "sip.example.net:0", "not a port"),
        (
            "0.0.0.0:5060,0.0.0.0:5080",
            "sip.example.net",
            "one per listener",
        ),
    ] {
        let args = presenced::config::Args::parse_from([
            "presenced",
            "--sip-listen",
            listen,
            "--sip-advertise",
            advertise,
        ]);
        let errors = match presenced::config::Config::from_args(&args) {
            Ok(_) => panic!("--sip-advertise {advertise:?} accepted"),
            Err(e) => e,
        };
        assert!(
            errors.iter().any(|e| e.contains(needle)),
            "{advertise:?}: {errors:?}"
        );
    }
}

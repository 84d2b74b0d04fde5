//! The built `presencectl` binary against a real all-in-one `presenced`
//! (started in this process, tests/server): what each command prints, in
//! table and JSON form, what it changes (read back through presencectl or
//! seen by a SIP UA), and how it fails: the server's refusal with its gRPC
//! code and exit 1, a server it cannot reach or bad usage with exit 2,
//! never a panic.

mod server;

use presence_api::pb;
use serde_json::Value;
use server::{ctl, ctl_env, Server, TempFile};

const ALICE: &str = "sip:alice@example.com";
const BOB: &str = "sip:bob@example.com";

const READER: &str = "reader-token-0123456789";
const ADMIN: &str = "admin-token-01234567890";
const TOKENS: &str = "# name token scopes\n\
                      dash reader-token-0123456789 read\n\
                      ops admin-token-01234567890 admin\n";

/// `states[i]` of a GetPresence answer printed as JSON.
fn state(v: &Value, i: usize) -> &Value {
    &v["states"][i]
}

fn get_json(s: &Server, aor: &str) -> Value {
    s.ctl(&["--output", "json", "get", aor]).json()
}

#[test]
fn get_prints_the_composed_state_as_a_table_and_as_json() {
    let s = Server::start();
    let out = s.ctl(&["publish", ALICE, "--status", "away", "--note", "at lunch"]);
    let printed = out.ok();
    assert!(printed.starts_with("etag "), "{printed:?}");
    assert!(printed.contains("expires 3600"), "{printed:?}");

    let v = s
        .ctl(&["--output", "json", "get", ALICE, "bob@example.com"])
        .json();
    let states = v["states"].as_array().expect("states");
    assert_eq!(states.len(), 2, "{v}");
    let a = state(&v, 0);
    assert_eq!(a["aor"], ALICE);
    assert_eq!(a["event"], "presence");
    assert_eq!(a["basic"], pb::Basic::Open as i64);
    assert_eq!(a["availability"], pb::Availability::Away as i64);
    assert_eq!(a["activities"], serde_json::json!(["away"]));
    assert_eq!(a["note"], "at lunch");
    assert!(a["version"].as_u64().is_some_and(|v| v > 0), "{a}");
    assert!(a["changed_at_ms"].as_u64().is_some_and(|t| t > 0), "{a}");
    // The document is printed as text, not as an array of bytes.
    let doc = a["document"].as_str().expect("the document as text");
    assert!(doc.contains("at lunch"), "{doc}");
    // Bob, in bare form, is named as the API normalised him; nothing published.
    let b = state(&v, 1);
    assert_eq!(b["aor"], BOB);
    assert_eq!(b["version"], 0);
    assert_eq!(b["availability"], pb::Availability::Offline as i64);

    let version = a["version"].as_u64().expect("version");
    let table = s.ctl(&["get", ALICE, BOB]).ok().to_string();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines,
        [
            format!("{ALICE} presence v{version} away open [away] \"at lunch\""),
            format!("{BOB} presence v0 offline -"),
        ],
        "{table}"
    );
}

#[test]
fn publish_then_unpublish() {
    let s = Server::start();
    let p = s
        .ctl(&[
            "--output",
            "json",
            "publish",
            ALICE,
            "--status",
            "busy",
            "--note",
            "budget review",
            "--expires",
            "600",
        ])
        .json();
    let etag = p["etag"].as_str().expect("etag").to_string();
    assert!(!etag.is_empty());
    assert_eq!(p["expires"], 600);
    let a = get_json(&s, ALICE);
    assert_eq!(state(&a, 0)["note"], "budget review");
    assert_eq!(state(&a, 0)["availability"], pb::Availability::Busy as i64);
    let before = state(&a, 0)["version"].as_u64().expect("version");

    // Modify through the ETag: the same publication, a new note.
    let table = s
        .ctl(&[
            "publish", ALICE, "--status", "offline", "--note", "gone", "--etag", &etag,
        ])
        .ok()
        .to_string();
    let etag2 = table
        .strip_prefix("etag ")
        .and_then(|r| r.split_whitespace().next())
        .expect("an etag in the table output")
        .to_string();
    let a = get_json(&s, ALICE);
    assert_eq!(state(&a, 0)["note"], "gone");
    assert_eq!(state(&a, 0)["basic"], pb::Basic::Closed as i64);
    assert_eq!(state(&a, 0)["tuples"].as_array().map(Vec::len), Some(1));
    let modified = &state(&a, 0)["version"];
    assert!(modified.as_u64().is_some_and(|v| v > before), "{a}");

    // It was the only publication: once removed, alice has no state at all.
    assert_eq!(s.ctl(&["unpublish", ALICE, &etag2]).ok(), "ok\n");
    let a = get_json(&s, ALICE);
    let after = state(&a, 0);
    assert_eq!(after["note"], "", "{after}");
    assert_eq!(after["tuples"], serde_json::json!([]), "{after}");
    assert_eq!(after["availability"], pb::Availability::Offline as i64);
    assert_eq!(after["version"], 0, "{after}");

    // The publication is gone: its ETag is unknown now.
    let err = s
        .ctl(&["--output", "json", "unpublish", ALICE, &etag2])
        .failed(1)
        .to_string();
    assert!(err.contains("NotFound"), "{err}");
    assert!(err.contains("ETag"), "{err}");
}

#[test]
fn publish_reads_a_document_file() {
    let s = Server::start();
    let doc = TempFile::new(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:alice@example.com"><tuple id="desk"><status><basic>open</basic></status></tuple><note>from a file</note></presence>"#,
    );
    s.ctl(&["publish", ALICE, "--document", &doc.path()]).ok();
    let a = get_json(&s, ALICE);
    assert_eq!(state(&a, 0)["note"], "from a file");
    assert_eq!(state(&a, 0)["basic"], pb::Basic::Open as i64);

    // A file that is not there: bad usage, said before anything is sent.
    let missing = format!("{}.missing", doc.path());
    let err = s
        .ctl(&["publish", ALICE, "--document", &missing])
        .failed(2)
        .to_string();
    assert!(err.contains(&missing), "{err}");
    // A document the server cannot read.
    let bad = TempFile::new("<presence><tuple");
    let err = s
        .ctl(&["publish", ALICE, "--document", &bad.path()])
        .failed(1)
        .to_string();
    assert!(err.contains("InvalidArgument"), "{err}");
}

#[test]
fn hard_state_needs_an_admin_token() {
    let s = Server::with_files(&[("--api-tokens", TOKENS)]);
    let erin = "sip:erin@example.com";
    let set = [
        "hard-state",
        "set",
        erin,
        "--status",
        "available",
        "--note",
        "reception desk",
    ];

    // Refused: no token, a wrong token, a read token.
    let err = s.ctl(&set).failed(1).to_string();
    assert!(err.contains("Unauthenticated"), "{err}");
    let err = s
        .ctl_as("wrong-token-0123456789", &set)
        .failed(1)
        .to_string();
    assert!(err.contains("Unauthenticated"), "{err}");
    assert!(err.contains("bearer token"), "{err}");
    let err = s.ctl_as(READER, &set).failed(1).to_string();
    assert!(err.contains("PermissionDenied"), "{err}");
    assert!(err.contains("admin"), "{err}");
    let v = s.ctl_as(READER, &["--output", "json", "get", erin]).json();
    assert_eq!(state(&v, 0)["version"], 0, "nothing was set: {v}");

    // Set with the admin token; a reader sees it.
    assert_eq!(s.ctl_as(ADMIN, &set).ok(), "ok\n");
    let v = s.ctl_as(READER, &["--output", "json", "get", erin]).json();
    assert_eq!(state(&v, 0)["note"], "reception desk");
    assert_eq!(
        state(&v, 0)["availability"],
        pb::Availability::Available as i64
    );

    // Clear, with the token from the environment this time; JSON says {}.
    let clear: Vec<String> = [
        "--server",
        &s.url(),
        "--output",
        "json",
        "hard-state",
        "clear",
        erin,
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let err = s
        .ctl_as(READER, &["hard-state", "clear", erin])
        .failed(1)
        .to_string();
    assert!(err.contains("PermissionDenied"), "{err}");
    let out = ctl_env(&clear, &[("PRESENCECTL_TOKEN", ADMIN)], None);
    assert_eq!(out.json(), serde_json::json!({}));
    let v = s.ctl_as(READER, &["--output", "json", "get", erin]).json();
    assert_eq!(state(&v, 0)["note"], "", "{v}");
    assert_eq!(
        state(&v, 0)["availability"],
        pb::Availability::Offline as i64
    );
}

#[test]
fn watch_prints_the_state_then_each_change() {
    let s = Server::start();
    let etag = s
        .ctl(&["--output", "json", "publish", ALICE, "--note", "first"])
        .json()["etag"]
        .as_str()
        .expect("etag")
        .to_string();
    let mut w = s.spawn(&["watch", ALICE, "sip:carol@example.com"]);
    let first = w.line("with alice's state", |l| l.starts_with(ALICE));
    assert!(first.contains("available open"), "{first}");
    assert!(first.ends_with("\"first\""), "{first}");
    w.line("about carol", |l| {
        l.starts_with("sip:carol@example.com presence v0")
    });
    w.line("# synced", |l| l == "# synced");

    s.ctl(&[
        "publish",
        ALICE,
        "--etag",
        &etag,
        "--status",
        "on-the-phone",
        "--note",
        "second",
    ])
    .ok();
    let change = w.line("with the change", |l| l.contains("\"second\""));
    assert!(change.starts_with(ALICE), "{change}");
    assert!(
        change.contains("on-the-phone open [on-the-phone]"),
        "{change}"
    );
    let (status, stderr) = w.kill();
    assert!(!status.success());
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn watch_prints_json_lines() {
    let s = Server::start();
    let mut w = s.spawn(&["--output", "json", "watch", ALICE, "--heartbeat", "1"]);
    let parse = |l: &str| -> Value {
        serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))
    };
    let first = parse(&w.line("a first object", |_| true));
    let kinds = |v: &Value| -> Vec<String> {
        v["kind"]
            .as_object()
            .map(|o| o.keys().map(|k| k.to_ascii_lowercase()).collect())
            .unwrap_or_default()
    };
    assert_eq!(kinds(&first), ["state"], "{first}");
    let synced = parse(&w.line("synced", |l| l.to_ascii_lowercase().contains("synced")));
    assert_eq!(kinds(&synced), ["synced"], "{synced}");

    s.ctl(&[
        "publish",
        ALICE,
        "--status",
        "away",
        "--note",
        "json change",
    ])
    .ok();
    let change = parse(&w.line("the change", |l| l.contains("json change")));
    let st = change["kind"]
        .as_object()
        .and_then(|o| o.values().next())
        .expect("a state");
    assert_eq!(st["aor"], ALICE);
    assert_eq!(st["note"], "json change");
    assert_eq!(st["availability"], pb::Availability::Away as i64);
    // Heartbeats come while nothing changes, as objects too.
    let beat = parse(&w.line("a heartbeat", |l| {
        l.to_ascii_lowercase().contains("heartbeat")
    }));
    assert_eq!(kinds(&beat), ["heartbeat"], "{beat}");
    w.kill();
}

#[test]
fn subscriptions_are_listed_and_ended() {
    let s = Server::start();
    let erin = "sip:erin@example.com";
    let mut frank = s.ua("frank");
    frank.subscribe(erin);
    frank.request("NOTIFY", |_| true);

    let v = s.ctl(&["--output", "json", "subscriptions", erin]).json();
    let subs = v["subscriptions"].as_array().expect("subscriptions");
    assert_eq!(subs.len(), 1, "{v}");
    let sub = &subs[0];
    assert_eq!(sub["watcher"], "sip:frank@example.com");
    assert_eq!(sub["event"], "presence");
    assert_eq!(sub["state"], "active");
    assert_eq!(sub["transport"], "udp");
    let id = sub["id"].as_str().expect("id").to_string();
    assert!(!id.is_empty());

    let table = s.ctl(&["subscriptions", erin]).ok().to_string();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table}");
    assert!(lines[0].starts_with("ID "), "{table}");
    assert!(lines[0].contains("WATCHER"), "{table}");
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        &row[..4],
        [id.as_str(), "presence", "sip:frank@example.com", "active"]
    );

    assert_eq!(s.ctl(&["end-subscription", &id]).ok(), "ok\n");
    let n = frank.request("NOTIFY", |n| {
        n.header("Subscription-State")
            .is_some_and(|v| v.starts_with("terminated"))
    });
    let state = n
        .header("Subscription-State")
        .unwrap_or_default()
        .replace(' ', "");
    assert!(state.contains("reason=deactivated"), "{state}");

    let v = s.ctl(&["--output", "json", "subscriptions", erin]).json();
    assert_eq!(v["subscriptions"], serde_json::json!([]), "{v}");
    let err = s.ctl(&["end-subscription", &id]).failed(1).to_string();
    assert!(err.contains("NotFound"), "{err}");
}

#[test]
fn registrations_list_the_contacts() {
    let s = Server::start();
    let mut frank = s.ua("frank");
    frank.register();
    let contact = frank.contact();

    let v = s
        .ctl(&["--output", "json", "registrations", "sip:frank@example.com"])
        .json();
    let regs = v["registrations"].as_array().expect("registrations");
    assert_eq!(regs.len(), 1, "{v}");
    assert_eq!(regs[0]["contact"], contact.as_str());
    assert_eq!(regs[0]["transport"], "udp");
    assert!(regs[0]["expires_at_ms"].as_u64().is_some_and(|t| t > 0));

    let table = s
        .ctl(&["registrations", "sip:frank@example.com"])
        .ok()
        .to_string();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table}");
    assert!(lines[0].starts_with("CONTACT "), "{table}");
    assert!(lines[1].starts_with(&format!("{contact} ")), "{table}");

    // Nobody registered: a header and no rows.
    let table = s
        .ctl(&["registrations", "sip:gina@example.com"])
        .ok()
        .to_string();
    assert_eq!(table.lines().count(), 1, "{table}");
}

#[test]
fn send_reports_the_outcome() {
    let s = Server::start();
    let mut bob = s.ua("bob");
    bob.register();
    let url = s.url();
    let sending =
        std::thread::spawn(move || ctl(&url, &["send", ALICE, BOB, "Lunch at noon? 점심"], None));
    let m = bob.request("MESSAGE", |_| true);
    assert_eq!(m.body, "Lunch at noon? 점심");
    assert!(
        m.header("From").is_some_and(|f| f.contains(ALICE)),
        "{m:#?}"
    );
    let out = sending.join().expect("presencectl send");
    assert_eq!(out.ok(), "200 OK (1 device)\n");

    // Nobody there: the SIP status is shown, and the exit says it failed.
    let out = s.ctl(&["send", ALICE, "sip:nobody@example.com", "hello?"]);
    assert!(out.stdout.starts_with("480 "), "{out:#?}");
    assert!(out.stdout.contains("(0 devices)"), "{out:#?}");
    let err = out.failed(1);
    assert!(err.contains("not delivered: 480"), "{err}");
    let out = s.ctl(&[
        "--output",
        "json",
        "send",
        ALICE,
        "sip:nobody@example.com",
        "hi",
    ]);
    let v: Value = serde_json::from_str(out.stdout.trim()).expect("JSON");
    assert_eq!(v["sip_status"], 480, "{v}");
    assert_eq!(v["devices"], 0, "{v}");
    out.failed(1);

    // A content type the API does not send.
    let err = s
        .ctl(&[
            "send",
            ALICE,
            BOB,
            "x",
            "--content-type",
            "application/octet-stream",
        ])
        .failed(1)
        .to_string();
    assert!(err.contains("InvalidArgument"), "{err}");
}

const DIRECTORY: &str = "aor,display_name,department,title,phone,location\n\
    sip:alice@example.com,Alice Kim,Sales,Account manager,+82 2 555 0101,Seoul\n\
    sip:bob@example.com,Bob Lee,Engineering,SRE,+82 2 555 0102,Busan\n\
    sip:carol@example.com,Carol Park,Sales,Director,,Seoul\n";

#[test]
fn directory_search_shows_presence() {
    let s = Server::with_files(&[("--directory", DIRECTORY)]);
    s.ctl(&["publish", ALICE, "--status", "available"]).ok();

    let table = s.ctl(&["directory", "sales"]).ok().to_string();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    let cells = |l: &str| -> Vec<String> {
        l.split("  ")
            .map(|c| c.trim().to_string())
            .filter(|c| !c.is_empty())
            .collect()
    };
    assert_eq!(
        cells(lines[0]),
        [
            "AVAILABILITY",
            "NAME",
            "AOR",
            "DEPARTMENT",
            "TITLE",
            "PHONE"
        ]
    );
    assert_eq!(
        cells(lines[1]),
        [
            "available",
            "Alice Kim",
            ALICE,
            "Sales",
            "Account manager",
            "+82 2 555 0101"
        ]
    );
    assert_eq!(
        cells(lines[2]),
        [
            "offline",
            "Carol Park",
            "sip:carol@example.com",
            "Sales",
            "Director"
        ]
    );

    let v = s.ctl(&["--output", "json", "directory", "sales"]).json();
    assert_eq!(v["total_size"], 2, "{v}");
    let e = &v["entries"][0];
    assert_eq!(e["display_name"], "Alice Kim");
    assert_eq!(e["attributes"]["location"], "Seoul");
    assert_eq!(
        e["presence"]["availability"],
        pb::Availability::Available as i64
    );

    // Pages: the first, a hint how to get the next, then the rest.
    let first = s.ctl(&["directory", "--page-size", "2"]);
    assert_eq!(first.code, 0, "{first:#?}");
    assert_eq!(first.stdout.lines().count(), 3, "{first:#?}");
    let token = first
        .stderr
        .split("--page-token ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("a next page named on stderr: {first:#?}"))
        .to_string();
    assert!(first.stderr.contains("2 of 3"), "{first:#?}");
    let rest = s
        .ctl(&["directory", "--page-size", "2", "--page-token", &token])
        .ok()
        .to_string();
    let lines: Vec<&str> = rest.lines().collect();
    assert_eq!(lines.len(), 2, "{rest}");
    assert!(lines[1].contains("Carol Park"), "{rest}");
}

#[test]
fn login_prints_a_session_token() {
    let s = Server::with_files(&[(
        "--users",
        "alice@example.com:alicepw\nbob@example.com:bobpw\n",
    )]);
    let out = ctl(&s.url(), &["login", ALICE], Some("alicepw\n"));
    let token = out.ok().trim().to_string();
    assert!(!token.is_empty());
    assert_eq!(out.stdout.lines().count(), 1, "{out:#?}");

    // The session acts as alice, and only as alice.
    s.ctl_as(&token, &["publish", ALICE, "--note", "logged in"])
        .ok();
    let v = s.ctl_as(&token, &["--output", "json", "get", ALICE]).json();
    assert_eq!(state(&v, 0)["note"], "logged in");
    let err = s
        .ctl_as(&token, &["publish", BOB, "--note", "spoofed"])
        .failed(1)
        .to_string();
    assert!(err.contains("PermissionDenied"), "{err}");

    // JSON names the AoR and the expiry.
    let v = ctl(
        &s.url(),
        &["--output", "json", "login", "bob@example.com"],
        Some("bobpw"),
    )
    .json();
    assert_eq!(v["aor"], BOB);
    assert!(v["expires_at_ms"].as_u64().is_some_and(|t| t > 0), "{v}");
    assert!(v["token"].as_str().is_some_and(|t| !t.is_empty()), "{v}");

    // A wrong password.
    let err = ctl(&s.url(), &["login", ALICE], Some("bobpw\n"))
        .failed(1)
        .to_string();
    assert!(err.contains("Unauthenticated"), "{err}");
}

#[test]
fn an_unknown_or_malformed_aor_is_refused() {
    let s = Server::with_files(&[
        ("--users", "alice@example.com:alicepw\n"),
        ("--api-tokens", TOKENS),
    ]);
    s.ctl_as(READER, &["get", ALICE]).ok();
    let out = s.ctl_as(READER, &["get", "sip:mallory@example.com"]);
    assert!(out.stdout.is_empty(), "{out:#?}");
    let err = out.failed(1);
    assert!(err.contains("NotFound"), "{err}");
    assert!(err.contains("sip:mallory@example.com"), "{err}");

    let err = s
        .ctl_as(READER, &["get", "not an aor"])
        .failed(1)
        .to_string();
    assert!(err.contains("InvalidArgument"), "{err}");
    let err = s
        .ctl_as(READER, &["get", ALICE, "--event", "no-such-package"])
        .failed(1)
        .to_string();
    assert!(err.contains("InvalidArgument"), "{err}");
}

#[test]
fn a_server_it_cannot_reach_is_a_clear_error() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let out = ctl(&url, &["get", ALICE], None);
    assert!(out.stdout.is_empty(), "{out:#?}");
    let err = out.failed(2);
    assert!(err.contains(&format!("cannot reach {url}")), "{err}");
    // And why: not only tonic's bare "transport error".
    assert!(err.to_ascii_lowercase().contains("refused"), "{err}");

    let err = ctl("not a uri", &["get", ALICE], None)
        .failed(2)
        .to_string();
    assert!(err.contains("--server not a uri"), "{err}");
}

#[test]
fn bad_usage_exits_2() {
    // Missing arguments, unknown commands, values out of range, flags that
    // exclude each other: clap's error, before any connection is tried
    // (nothing listens on the discard port).
    for (args, says) in [
        (&["get"][..], "required"),
        (&["frobnicate"], "unrecognized subcommand"),
        (
            &["publish", ALICE, "--status", "asleep"],
            "invalid value 'asleep'",
        ),
        (
            &["publish", ALICE, "--note", "x", "--document", "/dev/null"],
            "cannot be used with",
        ),
    ] {
        let out = ctl("http://127.0.0.1:9", args, None);
        assert_eq!(out.code, 2, "{args:?}: {out:#?}");
        assert!(out.stderr.starts_with("error: "), "{args:?}: {out:#?}");
        assert!(out.stderr.contains(says), "{args:?}: {out:#?}");
        assert!(!out.stderr.contains("cannot reach"), "{out:#?}");
        assert!(!out.stderr.contains("panicked"), "{out:#?}");
    }
}

#[test]
fn the_server_may_be_given_as_host_and_port() {
    let s = Server::start();
    s.ctl(&["publish", ALICE, "--note", "here"]).ok();
    // As --api-listen is written: plaintext HTTP/2 is meant.
    let out = ctl(&s.api.to_string(), &["get", ALICE], None);
    assert!(out.ok().contains("\"here\""), "{out:#?}");
    // From the environment, as the help says.
    let args: Vec<String> = vec!["get".into(), ALICE.into()];
    let out = ctl_env(&args, &[("PRESENCECTL_SERVER", &s.url())], None);
    assert!(out.ok().contains("\"here\""), "{out:#?}");

    // https:// is refused before anything is sent: this client has no TLS,
    // and the server would get the token in clear text.
    let https = format!("https://{}", s.api);
    let out = ctl(&https, &["--token", ADMIN, "get", ALICE], None);
    assert!(out.stdout.is_empty(), "{out:#?}");
    let err = out.failed(2);
    assert!(err.contains("no TLS"), "{err}");
}

#[test]
fn watch_ends_when_the_server_goes_away() {
    let s = Server::start();
    let mut w = s.spawn(&["watch", ALICE]);
    w.line("# synced", |l| l == "# synced");
    drop(s);
    // Not a quiet success: a script that restarts it must be able to tell.
    let (status, stderr) = w.wait();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.starts_with("presencectl: "), "{stderr}");
    assert!(stderr.contains("Unavailable"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

//! The web address book in a real browser: Debian's Chromium, driven by
//! Playwright (tests/browser/address_book.py, one step per line), against
//! the all-in-one server and a cluster with an api process, while SIP UAs
//! of this test speak real UDP on the other side.
//!
//! Alice logs in with her SIP credentials (keyboard only), searches the
//! directory and finds Bob, offline. Bob's phone PUBLISHes open: his lamp
//! turns to available; his PBX reports a call: on the phone; the call ends:
//! available again. Bob's phone watches Alice: she sets "busy" with a note
//! on the page and the phone gets the NOTIFY. She messages Bob from the
//! page: his registered phone gets the MESSAGE and the page says delivered.
//!
//! Needs `python3` with `playwright` and `/usr/bin/chromium` (or
//! `$CHROMIUM`): scripts/test-deps.sh installs them; without them the test
//! fails and says so.

mod common;
mod harness;

use common::*;
use presence_sip::HeaderAccess;
use serde_json::{json, Value};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

#[tokio::test]
async fn address_book_all_in_one() {
    address_book(Mode::AllInOne).await
}

#[tokio::test]
async fn address_book_cluster() {
    address_book(Mode::Cluster).await
}

const USERS: &str = "alice@example.com:secret\nbob@example.com:hunter2\n";
const DIRECTORY: &str = "aor,display_name,department,title,phone\n\
     sip:alice@example.com,Alice Kim,Sales,Account manager,+82 2 555 0101\n\
     sip:bob@example.com,Bob Lee,Engineering,SRE,+82 2 555 0102\n\
     sip:carol@example.com,Carol Park,Sales,Director,\n";
const BOB: &str = "sip:bob@example.com";
/// How long the browser waits for one thing to show (Playwright, per wait).
const BROWSER_WAIT_MS: u64 = 15_000;
/// How long this test waits for the browser's answer to one step.
const STEP_WAIT: Duration = Duration::from_secs(60);

async fn address_book(mode: Mode) {
    let dir = TempFile::new(DIRECTORY);
    let path = dir.0.display().to_string();
    let s = start_api(mode, Some(USERS), None, &["--directory", &path]).await;
    let api = s.api.expect("the api role listens");
    let mut browser = Browser::start().await;

    browser
        .step(json!({"op": "open", "url": format!("http://{api}/")}))
        .await;
    let r = browser
        .step(json!({"op": "login", "aor": "alice@example.com", "password": "secret"}))
        .await;
    assert_eq!(r["whoami"], "Logged in as sip:alice@example.com", "{r}");
    let r = browser
        .step(json!({"op": "search", "query": "bob", "expect": BOB}))
        .await;
    assert_eq!(r["rows"], 1, "{r}");
    assert_eq!(r["summary"], "1 colleague.", "{r}");
    browser.lamp(BOB, "Offline", "offline").await;

    // Bob's phone comes online.
    let mut phone = s.ua(Tp::Udp, PRESENTITY, "bob").await;
    phone.password = "hunter2".into();
    let aor = phone.aor.clone();
    let publish = phone
        .req("PUBLISH", &aor)
        .h("Event", "presence")
        .h("Expires", "600")
        .body(
            "application/pidf+xml",
            pidf(&aor, "bob-phone", true, "at my desk"),
        );
    let (r, _) = phone.send_auth(&publish, "MD5").await;
    assert_eq!(r.code, 200, "PUBLISH: {}", r.reason);
    let r = browser.lamp(BOB, "Available", "available").await;
    assert_eq!(r["live"], "Bob Lee is now available.", "{r}");

    // A call on Bob's line (his PBX publishes the dialog), then its end.
    let mut pbx_etag = None;
    for (state, text, class) in [
        ("confirmed", "On the phone", "on-the-phone"),
        ("terminated", "Available", "available"),
    ] {
        let mut req = phone
            .req("PUBLISH", &aor)
            .h("Event", "dialog")
            .h("Expires", "600")
            .body("application/dialog-info+xml", dialog_info(&aor, state));
        if let Some(e) = &pbx_etag {
            req = req.h("SIP-If-Match", e);
        }
        let (r, _) = phone.send_auth(&req, "MD5").await;
        assert_eq!(r.code, 200, "PUBLISH dialog {state}: {}", r.reason);
        pbx_etag = r.sip_etag().map(str::to_string);
        browser.lamp(BOB, text, class).await;
    }

    // Bob's phone watches Alice; she sets her status on the page.
    let contact = format!("<{}>", phone.contact_uri());
    let subscribe = phone
        .req("SUBSCRIBE", "sip:alice@example.com")
        .h("Event", "presence")
        .h("Accept", "application/pidf+xml")
        .h("Contact", contact.clone())
        .h("Expires", "600");
    let (r, _) = phone.send_auth(&subscribe, "MD5").await;
    assert!(r.code == 200 || r.code == 202, "SUBSCRIBE: {}", r.code);
    phone.notify().await;
    let r = browser
        .step(json!({"op": "status", "status": "busy", "note": "In a meeting until 3"}))
        .await;
    assert_eq!(r["result"], "Status set: Busy", "{r}");
    let n = phone
        .notify_containing("In a meeting until 3", s.wait())
        .await;
    let body = body_str(&n);
    assert!(body.contains("<basic>open</basic>"), "{body}");
    assert!(body.contains("busy"), "the RPID activity: {body}");

    // Bob's phone registers; Alice messages him from the page.
    let register = phone
        .req("REGISTER", "sip:example.com")
        .to(&aor)
        .h("Contact", contact)
        .h("Expires", "600");
    let (r, _) = phone.send_auth(&register, "MD5").await;
    assert_eq!(r.code, 200, "REGISTER: {}", r.reason);
    let r = browser
        .step(json!({"op": "message", "aor": BOB, "text": "Lunch at noon? 점심"}))
        .await;
    assert_eq!(r["result"], "Delivered (200 OK).", "{r}");
    let m = phone
        .recv_request("MESSAGE", s.wait())
        .await
        .expect("the MESSAGE reached Bob's phone");
    assert_eq!(&m.body[..], "Lunch at noon? 점심".as_bytes());
    assert!(m
        .header("From")
        .is_some_and(|f| f.contains("sip:alice@example.com")));

    browser.quit().await;
    s.shutdown().await;
}

/// A dialog-info document for `entity` with one dialog in `state`.
fn dialog_info(entity: &str, state: &str) -> String {
    format!(
        r#"<?xml version="1.0"?><dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" version="1" state="full" entity="{entity}"><dialog id="d1" call-id="c1@pbx" local-tag="l1" remote-tag="r1" direction="recipient"><state>{state}</state></dialog></dialog-info>"#
    )
}

/// The browser driver process: one JSON step out, one JSON answer back.
struct Browser {
    child: Child,
    stdin: ChildStdin,
    answers: Lines<BufReader<ChildStdout>>,
}

impl Browser {
    async fn start() -> Browser {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/address_book.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg("--timeout")
            .arg(BROWSER_WAIT_MS.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs (scripts/test-deps.sh installs the browser test's needs)");
        let stdin = child.stdin.take().expect("piped stdin");
        let answers = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let mut b = Browser {
            child,
            stdin,
            answers,
        };
        let hello = b.answer("start").await;
        eprintln!("browser: {}", hello["browser"]);
        b
    }

    /// Do `step`; its answer (panics with the driver's error, console and
    /// screenshot path if the step failed).
    async fn step(&mut self, step: Value) -> Value {
        let mut line = step.to_string();
        line.push('\n');
        self.stdin
            .write_all(line.as_bytes())
            .await
            .expect("write a step to the browser driver");
        self.answer(&step.to_string()).await
    }

    async fn answer(&mut self, what: &str) -> Value {
        let line = match tokio::time::timeout(STEP_WAIT, self.answers.next_line()).await {
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None)) => panic!("the browser driver ended during {what}"),
            Ok(Err(e)) => panic!("reading the browser driver: {e}"),
            Err(_) => panic!("no answer from the browser within {STEP_WAIT:?} for {what}"),
        };
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("the browser driver said {line:?}: {e}"));
        if v["ok"] != true {
            panic!("browser step {what} failed: {v:#}");
        }
        v
    }

    async fn lamp(&mut self, aor: &str, text: &str, class: &str) -> Value {
        self.step(json!({"op": "lamp", "aor": aor, "text": text, "class": class}))
            .await
    }

    async fn quit(mut self) {
        let _ = self.stdin.write_all(b"{\"op\": \"quit\"}\n").await;
        let _ = tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await;
    }
}

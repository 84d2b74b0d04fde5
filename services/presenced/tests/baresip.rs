//! baresip (Debian's SIP softphone, 1.0) as a real client, speaking SIP
//! over TLS (RFC 3261 §26) to the server's TLS listener, with and without
//! Digest. baresip is alice: it registers over TLS through an outbound
//! proxy (our TLS listener), publishes its presence with its `presence`
//! module (PUBLISH after the REGISTER succeeds, and again on the
//! `/presence_offline` and `/presence_online` commands, modifying its
//! publication by SIP-If-Match), watches a buddy from its contacts file
//! (`<sip:bob@localhost>;presence=p2p`, a SUBSCRIBE whose NOTIFYs it prints
//! as "changed status"), sends a MESSAGE (`/message`) and prints the ones
//! it receives. The test UA (tests/common) is bob, over TLS too: alice's
//! watcher, the buddy she watches and her IM peer. Every message baresip
//! sends or receives goes over TLS; under Digest it answers the 401/407 of
//! REGISTER, PUBLISH, SUBSCRIBE and MESSAGE (its SIP trace shows both).
//!
//! What baresip 1.0 cannot do:
//! - Digest against the server's default `--digest-algorithms MD5,SHA-256`.
//!   Its SIP stack (libre 1.1.0, `sip_auth_authenticate`) refuses the whole
//!   401/407 as soon as one of its challenges is not MD5 ("Function not
//!   implemented") instead of answering the MD5 one (RFC 8760 §2.4), so it
//!   never registers, publishes, subscribes or sends a MESSAGE there. The
//!   Digest tests run the server with `--digest-algorithms MD5`;
//!   [`default_digest_locks_baresip_out`] keeps the limitation in view.
//! - Checking the server's certificate: `sip_cafile` adds the test CA, but
//!   libre 1.1.0 verifies neither the chain nor the name of a SIP/TLS
//!   server (with an unrelated CA it connects just as well). The TLS is
//!   real (handshake, encryption); only baresip's side of the
//!   authentication is missing.
//! - Sending a MESSAGE to an arbitrary URI: 1.0's `/message` writes to the
//!   current contact (here bob, its only contact).
//! - Publishing one state at a time: its first PUBLISH goes out as it
//!   starts, before the REGISTER is answered, and says
//!   `<basic>unknown</basic>` (no PIDF value; the server takes it, as it
//!   passes tuples through); the "open" PUBLISH sent on registration has
//!   no SIP-If-Match unless the first one's 200 is back already. Then there
//!   are two publications of tuple `t4109`, and the newest is the one the
//!   server commits last (it serves one connection's requests
//!   concurrently): watchers may see "unknown" until baresip publishes
//!   again. The test takes either; offline and online after that are
//!   deterministic. Likewise a second `/presence_*` before the first one's
//!   200 carries a stale SIP-If-Match (412, then a new publication), so
//!   the test waits for each answer.
//!
//! baresip is driven through its stdio module (commands written to its
//! stdin, its SIP trace (`-s`) and UI output read from its stdout), with
//! its own config directory per test, `sip_listen 127.0.0.1:0` (UDP, TCP
//! and TLS on ports the kernel picks, so no port is guessed), no audio or
//! video module, and killed when the test ends. `scripts/test-deps.sh`
//! installs it (`apt-get install baresip-core`); a missing baresip fails
//! the test. As in real_clients.rs the served domain is `localhost`.

mod common;
mod harness;

use common::*;
use presence_sip::HeaderAccess;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

const USERS: &str = "alice@localhost:secret\nbob@localhost:hunter2\n";
const DOMAIN: &str = "localhost";
const ALICE: &str = "sip:alice@localhost";
const BOB: &str = "sip:bob@localhost";
/// The tuple id of baresip's PIDF (its publisher's template).
const TUPLE: &str = "t4109";
/// How long to wait for something baresip should print or send (a shared
/// 2-core machine that may be building).
const PATIENCE: Duration = Duration::from_secs(20);
/// baresip quits by itself after this many seconds (`-t`), should the test
/// process die without killing it.
const LIFETIME_S: u32 = 300;

/// A running baresip with its own config directory; killed on drop.
struct Baresip {
    child: Child,
    stdin: ChildStdin,
    dir: PathBuf,
    out: PathBuf,
    /// The server's TLS address: what baresip sends to, and hears from.
    server: SocketAddr,
}

impl Baresip {
    /// alice on baresip, registering (and sending everything) over TLS to
    /// the server's TLS listener at `server`; `password` is her Digest
    /// password (`auth_pass`), if any.
    fn start(server: SocketAddr, password: Option<&str>) -> Baresip {
        let found = Command::new("sh")
            .args(["-c", "command -v baresip"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(
            found,
            "baresip is not installed: run scripts/test-deps.sh (apt-get install -y baresip-core)"
        );
        let dir = std::env::temp_dir().join(format!("presence-baresip-{}", rand_token()));
        std::fs::create_dir_all(&dir).expect("baresip dir");
        let config = format!(
            "poll_method\tepoll\n\
             sip_listen\t127.0.0.1:0\n\
             sip_cafile\t{ca}\n\
             module_path\t/usr/lib/baresip/modules\n\
             module\tstdio.so\n\
             module_tmp\taccount.so\n\
             module_app\tcontact.so\n\
             module_app\tmenu.so\n\
             module_app\tpresence.so\n",
            ca = test_tls().cert.display()
        );
        let auth = password
            .map(|p| format!(";auth_pass={p}"))
            .unwrap_or_default();
        let accounts = format!(
            "<{ALICE};transport=tls>{auth};regint=600;pubint=600;outbound=\"sip:{server};transport=tls\"\n"
        );
        let contacts = format!("\"Bob\" <{BOB}>;presence=p2p\n");
        std::fs::write(dir.join("config"), config).expect("write config");
        std::fs::write(dir.join("accounts"), accounts).expect("write accounts");
        std::fs::write(dir.join("contacts"), contacts).expect("write contacts");
        let out = dir.join("out.txt");
        let file = std::fs::File::create(&out).expect("out file");
        let mut child = Command::new("baresip")
            .arg("-f")
            .arg(&dir)
            .args(["-s", "-t", &LIFETIME_S.to_string()])
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(file.try_clone().expect("out file"))
            .stderr(file)
            .spawn()
            .expect("start baresip");
        let stdin = child.stdin.take().expect("baresip's stdin");
        Baresip {
            child,
            stdin,
            dir,
            out,
            server,
        }
    }

    /// Type a long command (`/name params` and Enter) into the stdio UI.
    fn command(&mut self, cmd: &str) {
        self.stdin
            .write_all(format!("/{cmd}\n").as_bytes())
            .and_then(|_| self.stdin.flush())
            .unwrap_or_else(|e| panic!("baresip's stdin ({cmd}): {e}"));
    }

    /// Everything baresip printed so far, colour codes removed.
    fn output(&self) -> String {
        strip_ansi(&String::from_utf8_lossy(
            &std::fs::read(&self.out).unwrap_or_default(),
        ))
    }

    /// Where the output ends now: waits from here on see only what comes next.
    fn mark(&self) -> usize {
        self.output().len()
    }

    /// What baresip printed after `since`, once it contains `needle`
    /// (panics after [`PATIENCE`], or if baresip exits).
    async fn wait_for(&mut self, since: usize, needle: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let out = self.output();
            let new = out.get(since..).unwrap_or_default();
            if new.contains(needle) {
                return new.to_string();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("baresip exited ({status}) before printing {needle:?}");
            }
            assert!(
                Instant::now() < deadline,
                "baresip did not print {needle:?} within {PATIENCE:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Ask for the contact list until bob is listed with `status`
    /// ("Online", "Offline", as baresip names them).
    async fn wait_contact_status(&mut self, uri: &str, status: &str) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let since = self.mark();
            self.command("contacts");
            let listing = self.wait_for(since, &format!("<{uri}>")).await;
            let line = listing
                .lines()
                .find(|l| l.contains(&format!("<{uri}>")))
                .unwrap_or_default()
                .to_string();
            if line.split_whitespace().any(|w| w == status) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "baresip never listed {uri} as {status}; last: {line:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The SIP messages of baresip's trace (`-s`) after `since`, in order.
    fn trace(&self, since: usize) -> Vec<Traced> {
        let server = self.server.to_string();
        let out = self.output();
        out.get(since..)
            .unwrap_or_default()
            .split("#\n")
            .filter_map(|chunk| {
                let (head, text) = chunk.split_once('\n')?;
                let (transport, rest) = head.split_once(' ')?;
                let (src, dst) = rest.split_once(" -> ")?;
                if !["UDP", "TCP", "TLS"].contains(&transport) {
                    return None;
                }
                Some(Traced {
                    transport: transport.to_string(),
                    to_server: dst.trim() == server,
                    from_server: src.trim() == server,
                    text: text.to_string(),
                })
            })
            .collect()
    }

    /// Wait until `done` holds for the trace after `since` (panics after
    /// [`PATIENCE`], or if baresip exits).
    async fn wait_trace(&mut self, since: usize, what: &str, done: impl Fn(&[Traced]) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !done(&self.trace(since)) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("baresip exited ({status}) before {what}");
            }
            assert!(Instant::now() < deadline, "not within {PATIENCE:?}: {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until baresip has `n` 2xx to `method` after `since` and no
    /// `method` of its own unanswered (a challenged or refused one is
    /// answered; the request it sends next is a new one).
    async fn wait_answered(&mut self, since: usize, method: &str, n: usize) {
        let what = format!("{n} 2xx to baresip's {method}, none pending");
        self.wait_trace(since, &what, |t| {
            let pending = t.iter().any(|r| {
                r.to_server
                    && r.code().is_none()
                    && r.cseq().1 == method
                    && !t.iter().any(|a| {
                        a.from_server && a.code().is_some_and(|c| c >= 200) && a.cseq() == r.cseq()
                    })
            });
            let ok = t
                .iter()
                .filter(|a| {
                    a.from_server
                        && a.code().is_some_and(|c| (200..300).contains(&c))
                        && a.cseq().1 == method
                })
                .count();
            ok >= n && !pending
        })
        .await
    }

    /// Requests baresip sent to the server: (method, whether it carried
    /// Digest credentials).
    fn requests(&self) -> Vec<(String, bool)> {
        self.trace(0)
            .into_iter()
            .filter(|t| t.to_server && t.code().is_none())
            .map(|t| {
                let creds = t.text.contains("Authorization: Digest username=\"alice\"");
                (t.cseq().1, creds)
            })
            .collect()
    }

    /// The server's responses to baresip's requests: (code, CSeq method).
    fn responses(&self) -> Vec<(u16, String)> {
        self.trace(0)
            .into_iter()
            .filter(|t| t.from_server)
            .filter_map(|t| Some((t.code()?, t.cseq().1)))
            .collect()
    }
}

impl Drop for Baresip {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- baresip's output (kept in {}) ---\n{}",
                self.dir.display(),
                self.output()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// One message of baresip's SIP trace.
struct Traced {
    transport: String,
    to_server: bool,
    from_server: bool,
    text: String,
}

impl Traced {
    /// The status code of a response; `None` for a request.
    fn code(&self) -> Option<u16> {
        let rest = self.text.strip_prefix("SIP/2.0 ")?;
        rest.get(..3)?.parse().ok()
    }

    /// (CSeq number, CSeq method).
    fn cseq(&self) -> (u32, String) {
        let mut v = self
            .text
            .lines()
            .find_map(|l| l.strip_prefix("CSeq:"))
            .unwrap_or_default()
            .split_whitespace();
        let n = v.next().and_then(|n| n.parse().ok()).unwrap_or(0);
        (n, v.next().unwrap_or_default().to_string())
    }
}

/// `s` without terminal escape sequences (ESC [ digits/semicolons letter);
/// one cut short at the end is dropped whole, so the result only grows as
/// `s` does.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        if chars.peek() == Some(&'[') {
            chars.next();
            while chars
                .peek()
                .is_some_and(|c| c.is_ascii_digit() || *c == ';')
            {
                chars.next();
            }
            if chars.peek().is_some_and(|c| c.is_ascii_alphabetic()) {
                chars.next();
            }
        }
    }
    out
}

/// The `<basic>` of the tuple `id` in a PIDF document.
fn tuple_basic(doc: &str, id: &str) -> Option<String> {
    let start = doc.find(&format!("<tuple id=\"{id}\""))?;
    let tuple = &doc[start..];
    let tuple = &tuple[..tuple.find("</tuple>")?];
    let b = tuple.find("<basic>")? + "<basic>".len();
    let e = tuple[b..].find("</basic>")?;
    Some(tuple[b..b + e].trim().to_string())
}

/// NOTIFYs to `ua` until one whose body has baresip's tuple with one of
/// `basics`; its body.
async fn notify_with_tuple(ua: &mut Ua, basics: &[&str]) -> String {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(n) = ua.recv_request("NOTIFY", left).await else {
            panic!("no NOTIFY with tuple {TUPLE} {basics:?} within {PATIENCE:?}; got:\n{seen:#?}");
        };
        let body = body_str(&n);
        if tuple_basic(&body, TUPLE).is_some_and(|b| basics.contains(&b.as_str())) {
            return body;
        }
        seen.push(body);
    }
}

/// bob, our test UA over TLS, registered (answering the challenge if the
/// server has Digest) so that MESSAGEs reach him.
async fn bob(s: &TestServer) -> Ua {
    let mut bob = s.ua(Tp::Tls, 0, "bob").await;
    bob.aor = BOB.into();
    bob.password = "hunter2".into();
    let contact = format!("<{}>", bob.contact_uri());
    let req = bob
        .req("REGISTER", &format!("sip:{DOMAIN}"))
        .to(BOB)
        .h("Contact", contact)
        .h("Expires", "600");
    let (r, _) = bob.send_auth(&req, "MD5").await;
    assert_eq!(r.code, 200, "bob registers: {}", r.reason);
    bob
}

/// bob's PUBLISH of his presence (`etag`: the publication to modify);
/// returns the new SIP-ETag.
async fn bob_publishes(bob: &mut Ua, open: bool, etag: Option<&str>) -> String {
    let note = if open { "back" } else { "away" };
    let mut req = bob
        .req("PUBLISH", BOB)
        .h("Event", "presence")
        .h("Expires", "600");
    if let Some(e) = etag {
        req = req.h("SIP-If-Match", e);
    }
    let req = req.body("application/pidf+xml", pidf(BOB, "bob-phone", open, note));
    let (r, _) = bob.send_auth(&req, "MD5").await;
    assert_eq!(r.code, 200, "bob's PUBLISH: {}", r.reason);
    r.header("SIP-ETag").expect("a SIP-ETag").to_string()
}

async fn server(users: Option<&str>, extra: &[&str]) -> TestServer {
    let mut args = vec!["--domain", DOMAIN];
    args.extend_from_slice(extra);
    start(Mode::AllInOne, users, None, &args).await
}

/// Everything over TLS: registration, alice's presence to her watcher,
/// bob's presence to baresip, MESSAGE both ways. With `digest`, the server
/// has a users file and offers MD5 only (see the module notes).
async fn presence_and_im_over_tls(digest: bool) {
    let s = if digest {
        server(Some(USERS), &["--digest-algorithms", "MD5"]).await
    } else {
        server(None, &[]).await
    };
    let tls = s.tls_at(0);

    // bob registers, and watches alice before she comes.
    let mut bob = bob(&s).await;
    let contact = format!("<{}>", bob.contact_uri());
    let sub = bob
        .req("SUBSCRIBE", ALICE)
        .h("Event", "presence")
        .h("Accept", "application/pidf+xml")
        .h("Contact", contact)
        .h("Expires", "600");
    let (r, _) = bob.send_auth(&sub, "MD5").await;
    assert!(
        r.code == 200 || r.code == 202,
        "bob's SUBSCRIBE to alice: {} {}",
        r.code,
        r.reason
    );
    let first = bob.notify().await;
    assert_eq!(tuple_basic(&body_str(&first), TUPLE), None);

    // alice starts: REGISTER over TLS, its contact a TLS one.
    let mut b = Baresip::start(tls, digest.then_some("secret"));
    b.wait_for(0, "All 1 useragent registered successfully")
        .await;
    let bound = s.store().bindings(ALICE).await.expect("store");
    assert_eq!(bound.len(), 1, "alice's bindings: {bound:?}");
    assert!(
        bound[0].uri.ends_with(";transport=tls"),
        "alice's contact: {}",
        bound[0].uri
    );

    // Her presence module publishes twice: "unknown" as it starts, before
    // the REGISTER is answered, then "open" once registered, without the
    // first one's SIP-ETag if its 200 has not come back yet. Two
    // publications then, which the server may commit in either order (it
    // serves the requests of one connection concurrently), so the newest,
    // what bob sees, is baresip's tuple open or "unknown".
    b.wait_answered(0, "PUBLISH", 2).await;
    notify_with_tuple(&mut bob, &["open", "unknown"]).await;
    // Offline and online again: PUBLISHes modifying the publication whose
    // ETag baresip holds (each sent once the previous one is answered, or
    // baresip would send a stale SIP-If-Match and get a 412).
    let since = b.mark();
    b.command("presence_offline");
    b.wait_answered(since, "PUBLISH", 1).await;
    b.wait_for(
        since,
        "presence: update status of 'sip:alice@localhost' from 'Online' to 'Offline'",
    )
    .await;
    notify_with_tuple(&mut bob, &["closed"]).await;
    let offline = since;
    let since = b.mark();
    b.command("presence_online");
    b.wait_answered(since, "PUBLISH", 1).await;
    notify_with_tuple(&mut bob, &["open"]).await;
    let modified = b
        .trace(offline)
        .iter()
        .filter(|t| {
            t.to_server && t.text.starts_with("PUBLISH ") && t.text.contains("SIP-If-Match: ")
        })
        .count();
    assert!(
        modified >= 2,
        "baresip's PUBLISHes did not modify by SIP-If-Match"
    );

    // baresip watches bob (its contacts file): registered bob is online
    // (the registrar's view), then bob's PUBLISHes change that.
    b.wait_contact_status(BOB, "Online").await;
    let since = b.mark();
    let etag = bob_publishes(&mut bob, false, None).await;
    b.wait_for(
        since,
        "<sip:bob@localhost> changed status from Online to Offline",
    )
    .await;
    let since = b.mark();
    bob_publishes(&mut bob, true, Some(&etag)).await;
    b.wait_for(
        since,
        "<sip:bob@localhost> changed status from Offline to Online",
    )
    .await;
    b.wait_contact_status(BOB, "Online").await;

    // bob to alice: the server relays the MESSAGE down her TLS flow and
    // baresip prints it.
    let since = b.mark();
    let text = format!("hello alice, bob here {}", rand_token());
    let msg = bob.req("MESSAGE", ALICE).body("text/plain", text.clone());
    let (r, _) = bob.send_auth(&msg, "MD5").await;
    assert!(
        (200..300).contains(&r.code),
        "bob's MESSAGE to alice: {} {}",
        r.code,
        r.reason
    );
    b.wait_for(since, &format!("{BOB}: \"{text}\"")).await;

    // alice to bob (`/message` writes to the current contact, bob).
    let text = format!("hello bob, baresip here {}", rand_token());
    b.command(&format!("message {text}"));
    let m = bob
        .recv_request("MESSAGE", PATIENCE)
        .await
        .expect("bob gets alice's MESSAGE");
    assert_eq!(body_str(&m), text);
    assert!(
        m.header("From").is_some_and(|f| f.contains(ALICE)),
        "From: {:?}",
        m.header("From")
    );
    if digest {
        assert_eq!(
            m.header("P-Asserted-Identity"),
            Some("<sip:alice@localhost>")
        );
    }

    // Over TLS only, and Digest answered (or never asked for).
    b.wait_answered(0, "MESSAGE", 1).await;
    let trace = b.trace(0);
    assert!(!trace.is_empty(), "no SIP trace");
    assert!(
        trace.iter().all(|t| t.transport == "TLS"),
        "baresip used another transport than TLS"
    );
    let requests = b.requests();
    let responses = b.responses();
    for method in ["REGISTER", "PUBLISH", "SUBSCRIBE", "MESSAGE"] {
        assert!(
            responses.iter().any(|(c, m)| *c == 200 && m == method),
            "no 200 to baresip's {method}: {responses:?}"
        );
        let challenged = responses
            .iter()
            .any(|(c, m)| (*c == 401 || *c == 407) && m == method);
        let answered = requests.iter().any(|(m, creds)| m == method && *creds);
        assert_eq!(
            (challenged, answered),
            (digest, digest),
            "{method}: challenged, answered with credentials"
        );
    }
    drop(b);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_im_over_tls_without_digest() {
    presence_and_im_over_tls(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_im_over_tls_with_digest() {
    presence_and_im_over_tls(true).await
}

/// A wrong password: baresip answers the challenge, the server refuses it
/// again, and nothing of alice's is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_refused() {
    let s = server(Some(USERS), &["--digest-algorithms", "MD5"]).await;
    let mut b = Baresip::start(s.tls_at(0), Some("not-her-password"));
    b.wait_for(0, "reg: sip:alice@localhost: 401 Unauthorized")
        .await;
    assert!(
        b.requests()
            .iter()
            .any(|(m, creds)| m == "REGISTER" && *creds),
        "baresip did not try its credentials"
    );
    assert!(s.store().bindings(ALICE).await.expect("store").is_empty());
    assert!(s
        .store()
        .publications(ALICE, "presence")
        .await
        .expect("store")
        .is_empty());
    drop(b);
    s.shutdown().await;
}

/// The limitation: with the default `--digest-algorithms MD5,SHA-256`
/// baresip 1.0 (libre 1.1.0) gives up on the 401 because of the SHA-256
/// challenge next to the MD5 one, so it cannot register at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_digest_locks_baresip_out() {
    let s = server(Some(USERS), &[]).await;
    let mut b = Baresip::start(s.tls_at(0), Some("secret"));
    b.wait_for(
        0,
        "reg: sip:alice@localhost: Register: Function not implemented",
    )
    .await;
    let out = b.output();
    assert!(out.contains("algorithm=MD5") && out.contains("algorithm=SHA-256"));
    assert!(
        !b.requests().iter().any(|(_, creds)| *creds),
        "baresip answered a challenge after all"
    );
    assert!(s.store().bindings(ALICE).await.expect("store").is_empty());
    drop(b);
    s.shutdown().await;
}

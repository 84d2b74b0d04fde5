//! Real SIP clients from Debian against the server under Digest, over UDP
//! and TCP: SIPp (sip-tester) runs the scenarios in tests/sipp/ (REGISTER,
//! PUBLISH with refresh-by-ETag and removal, SUBSCRIBE with its NOTIFYs and
//! the in-dialog un-SUBSCRIBE, MESSAGE through the 407, a phone's voicemail
//! lamp fed by a voicemail server's PUBLISH, a BLF phone watching 20
//! extensions while a PBX publishes their calls), sipsak registers
//! and sends PUBLISH and MESSAGE. Both answer only the first Digest
//! challenge and know only MD5: with the default `--digest-algorithms
//! MD5,SHA-256` they get in, with SHA-256 first they cannot, which is the
//! defect these tests keep from coming back.
//!
//! `scripts/test-deps.sh` installs both (`apt-get install sip-tester
//! sipsak`); a missing tool fails the test. sipsak resolves the host of the
//! URI it is given, so the served domain here is `localhost`.

mod common;
mod harness;

use common::*;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const USERS: &str = "alice@localhost:secret\nbob@localhost:hunter2\n";
const DOMAIN: &str = "localhost";
/// A client that has not finished by then is killed and fails the test.
const CLIENT_LIMIT: Duration = Duration::from_secs(40);

fn scenario(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sipp")
        .join(format!("{name}.xml"))
}

fn free_port() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let t = std::net::TcpListener::bind(s.local_addr().expect("addr"));
    match t {
        Ok(_) => s.local_addr().expect("addr").port(),
        Err(_) => free_port(),
    }
}

/// Run a client to completion (killed after [`CLIENT_LIMIT`]); its exit
/// status and what it printed.
async fn run(tool: &str, args: Vec<String>) -> (bool, String) {
    let tool = tool.to_string();
    tokio::task::spawn_blocking(move || {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(
            found,
            "{tool} is not installed: run scripts/test-deps.sh (apt-get install -y sip-tester sipsak)"
        );
        let dir = tempdir();
        let out_path = dir.join("out.txt");
        let out = std::fs::File::create(&out_path).expect("out file");
        let mut child = Command::new(&tool)
            .args(&args)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("out"))
            .stderr(out)
            .spawn()
            .expect("start the client");
        let started = Instant::now();
        let status = loop {
            if let Some(st) = child.try_wait().expect("wait") {
                break Some(st);
            }
            if started.elapsed() > CLIENT_LIMIT {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut text = std::fs::read_to_string(&out_path).unwrap_or_default();
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.extension().is_some_and(|e| e == "log") {
                text.push_str(&format!("\n--- {} ---\n", p.display()));
                text.push_str(&std::fs::read_to_string(&p).unwrap_or_default());
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        let ok = status.is_some_and(|s| s.success());
        if status.is_none() {
            text.push_str("\n(killed: did not finish in time)");
        }
        (ok, format!("{tool} {}\n{text}", args.join(" ")))
    })
    .await
    .expect("client task")
}

fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("presence-rc-{}", rand_token()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// SIPp playing `name` as `user` once, over `tp`; `target` is the user the
/// scenario addresses (`-key target`), whose AoR is the Digest uri.
async fn sipp(
    server: SocketAddr,
    tp: Tp,
    name: &str,
    user: &str,
    password: &str,
    target: &str,
) -> (bool, String) {
    let mut args = sipp_args(server, tp, name, user, password, target);
    args.extend(["-m".into(), "1".into()]);
    if name != "register" {
        // SIPp's Digest uri is sip:<this> (else the server's address).
        args.push("-auth_uri".into());
        args.push(format!("{target}@{DOMAIN}"));
    }
    run("sipp", args).await
}

/// What every SIPp run here is given (all but how many calls).
fn sipp_args(
    server: SocketAddr,
    tp: Tp,
    name: &str,
    user: &str,
    password: &str,
    target: &str,
) -> Vec<String> {
    vec![
        server.to_string(),
        "-sf".into(),
        scenario(name).display().to_string(),
        "-s".into(),
        user.into(),
        "-au".into(),
        user.into(),
        "-ap".into(),
        password.into(),
        "-key".into(),
        "domain".into(),
        DOMAIN.into(),
        "-key".into(),
        "target".into(),
        target.into(),
        "-i".into(),
        "127.0.0.1".into(),
        "-p".into(),
        free_port().to_string(),
        "-t".into(),
        match tp {
            Tp::Udp => "u1".into(),
            Tp::Tcp => "t1".into(),
            Tp::Tls | Tp::Ws => panic!("Debian's SIPp has neither TLS nor WebSocket"),
        },
        "-timeout".into(),
        "30s".into(),
        "-timeout_error".into(),
        "-nostdin".into(),
        "-trace_err".into(),
    ]
}

/// sipsak sending the request in `text` (shoot mode) as `user`, answering
/// the challenge; success means a 2xx.
async fn sipsak_shoot(
    server: SocketAddr,
    tp: Tp,
    uri: &str,
    user: &str,
    password: &str,
    text: &str,
) -> (bool, String) {
    let dir = tempdir();
    let file = dir.join("request.sip");
    std::fs::write(&file, text).expect("write request");
    let mut args = vec![
        "-f".to_string(),
        file.display().to_string(),
        "-s".into(),
        format!("{uri}:{}", server.port()),
        "-a".into(),
        password.into(),
        "-u".into(),
        user.into(),
        "-l".into(),
        free_port().to_string(),
        "-H".into(),
        "127.0.0.1".into(),
        "-vv".into(),
    ];
    args.extend(sipsak_transport(tp));
    let r = run("sipsak", args).await;
    let _ = std::fs::remove_dir_all(&dir);
    r
}

/// sipsak's registration test (usrloc mode: REGISTER, check, remove).
async fn sipsak_register(server: SocketAddr, tp: Tp, user: &str, password: &str) -> (bool, String) {
    let port = free_port();
    let mut args = vec![
        "-U".to_string(),
        "-C".into(),
        format!("sip:{user}@127.0.0.1:{port}"),
        "-s".into(),
        format!("sip:{user}@{DOMAIN}:{}", server.port()),
        "-a".into(),
        password.into(),
        "-u".into(),
        user.into(),
        "-l".into(),
        port.to_string(),
        "-x".into(),
        "60".into(),
        "-i".into(),
        "-vv".into(),
    ];
    args.extend(sipsak_transport(tp));
    run("sipsak", args).await
}

/// sipsak's flags for `tp`. Over TLS it is given the test certificate
/// but told to ignore its verification: sipsak 0.9.8 matches the
/// certificate's names against "host:port" (cut to the name's length, so
/// "localhost:2506" for port 25061) and fails on any port but 5061, which a
/// test cannot bind. The handshake and everything after it are real.
fn sipsak_transport(tp: Tp) -> Vec<String> {
    match tp {
        Tp::Udp => Vec::new(),
        Tp::Tcp => vec!["-E".into(), "tcp".into()],
        Tp::Tls => vec![
            "-E".into(),
            "tls".into(),
            format!("--tls-ca-cert={}", test_tls().cert.display()),
            "--tls-ignore-cert-failure".into(),
        ],
        Tp::Ws => panic!("sipsak has no WebSocket"),
    }
}

fn request(
    method: &str,
    target: &str,
    from: &str,
    extra: &[&str],
    ctype: &str,
    body: &str,
) -> String {
    let mut s = format!(
        "{method} sip:{target}@{DOMAIN} SIP/2.0\r\nFrom: <sip:{from}@{DOMAIN}>;tag=sk{}\r\nTo: <sip:{target}@{DOMAIN}>\r\nCall-ID: {}@sipsak\r\nCSeq: 1 {method}\r\nMax-Forwards: 70\r\n",
        rand_token(),
        rand_token()
    );
    for h in extra {
        s.push_str(h);
        s.push_str("\r\n");
    }
    if !body.is_empty() {
        s.push_str(&format!("Content-Type: {ctype}\r\n"));
    }
    s.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s
}

/// bob, registered (authenticated) with our own UA, to receive MESSAGEs.
async fn bob(s: &TestServer, tp: Tp) -> Ua {
    let mut bob = s.ua(tp, WATCHER, "bob").await;
    bob.aor = format!("sip:bob@{DOMAIN}");
    bob.password = "hunter2".into();
    let contact = format!("<{}>", bob.contact_uri());
    let aor = bob.aor.clone();
    let req = bob
        .req("REGISTER", &format!("sip:{DOMAIN}"))
        .to(&aor)
        .h("Contact", contact)
        .h("Expires", "600");
    let (r, _) = bob.send_auth(&req, "MD5").await;
    assert_eq!(r.code, 200, "bob registers: {}", r.reason);
    bob
}

macro_rules! both {
    ($($name:ident;)*) => {$(
        mod $name {
            use super::Tp;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn udp() {
                super::$name(Tp::Udp).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn tcp() {
                super::$name(Tp::Tcp).await
            }
        }
    )*};
}

both! {
    sipp_under_default_digest;
    sipp_voicemail_lamp;
    sipp_blf_phone_watching_20_extensions;
    sipsak_under_default_digest;
    sha256_first_locks_them_out;
}

/// BLF between two SIPp instances (RFC 4235): a phone watches 20
/// extensions at once (tests/sipp/blf_phone.xml, one SIPp call per
/// extension), then a PBX publishes a confirmed call on each
/// (blf_pbx.xml); every subscription sees its lamp go from an empty
/// version-0 document to the call at version 1, then ends. No Digest (see
/// the scenario).
async fn sipp_blf_phone_watching_20_extensions(tp: Tp) {
    const EXTENSIONS: u32 = 20;
    let s = start(Mode::AllInOne, None, None, &["--domain", DOMAIN]).await;
    let at = s.at(0);
    let dir = tempdir();
    let inf = dir.join("extensions.csv");
    let lines: String = (0..EXTENSIONS)
        .map(|i| format!("{};\n", 2001 + i))
        .collect();
    std::fs::write(&inf, format!("SEQUENTIAL\n{lines}")).expect("injection file");
    let calls = |name: &str, user: &str| {
        let mut args = sipp_args(at, tp, name, user, "", "");
        let n = EXTENSIONS.to_string();
        for a in [
            "-inf",
            &inf.display().to_string(),
            "-m",
            &n,
            "-l",
            &n,
            "-r",
            &n,
        ] {
            args.push(a.to_string());
        }
        args
    };
    let phone = tokio::spawn(run("sipp", calls("blf_phone", "phone")));
    // The PBX publishes once every extension is watched.
    let deadline = Instant::now() + s.wait();
    for i in 0..EXTENSIONS {
        until_watched(
            &s,
            &format!("sip:{}@{DOMAIN}", 2001 + i),
            "dialog",
            deadline,
        )
        .await;
    }
    let (ok, log) = run("sipp", calls("blf_pbx", "pbx")).await;
    assert!(ok, "SIPp blf_pbx over {tp:?} failed:\n{log}");
    let (ok, log) = phone.await.expect("phone task");
    assert!(ok, "SIPp blf_phone over {tp:?} failed:\n{log}");
    let _ = std::fs::remove_dir_all(&dir);
    s.shutdown().await;
}

/// Wait until somebody watches (`aor`, `event`); panics past `deadline`.
async fn until_watched(s: &TestServer, aor: &str, event: &str, deadline: Instant) {
    while s
        .store()
        .watcher_ids(aor, event)
        .await
        .expect("store")
        .is_empty()
    {
        assert!(Instant::now() < deadline, "{aor} never watched for {event}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// MWI between two SIPp instances (RFC 3842): a phone subscribes to its own
/// mailbox (tests/sipp/mwi_phone.xml) and sees "no messages", then the
/// voicemail server, a `--trusted-publisher` identity, PUBLISHes the
/// mailbox's summary (mwi_publish.xml) and the phone's next NOTIFY carries
/// it; both under Digest.
async fn sipp_voicemail_lamp(tp: Tp) {
    let users = format!("{USERS}voicemail@{DOMAIN}:vm-pass\n");
    let trusted = format!("voicemail@{DOMAIN}");
    let s = start(
        Mode::AllInOne,
        Some(&users),
        None,
        &["--domain", DOMAIN, "--trusted-publisher", &trusted],
    )
    .await;
    let at = s.at(0);
    let phone =
        tokio::spawn(async move { sipp(at, tp, "mwi_phone", "alice", "secret", "alice").await });
    // The publication must come after the phone's subscription.
    let mailbox = format!("sip:alice@{DOMAIN}");
    until_watched(&s, &mailbox, "message-summary", Instant::now() + s.wait()).await;
    let (ok, log) = sipp(at, tp, "mwi_publish", "voicemail", "vm-pass", "alice").await;
    assert!(ok, "SIPp mwi_publish over {tp:?} failed:\n{log}");
    let (ok, log) = phone.await.expect("phone task");
    assert!(ok, "SIPp mwi_phone over {tp:?} failed:\n{log}");
    s.shutdown().await;
}

async fn sipp_under_default_digest(tp: Tp) {
    let s = start(Mode::AllInOne, Some(USERS), None, &["--domain", DOMAIN]).await;
    let at = s.at(0);
    for name in ["register", "publish", "subscribe"] {
        let (ok, log) = sipp(at, tp, name, "alice", "secret", "alice").await;
        assert!(ok, "SIPp {name} over {tp:?} failed:\n{log}");
    }
    let mut bob = bob(&s, tp).await;
    let (ok, log) = sipp(at, tp, "message", "alice", "secret", "bob").await;
    assert!(ok, "SIPp message over {tp:?} failed:\n{log}");
    let m = bob
        .recv_request("MESSAGE", s.wait())
        .await
        .expect("bob gets it");
    assert_eq!(body_str(&m).trim(), "hello from SIPp");
    s.shutdown().await;
}

/// sipsak over TLS too (SIP over TLS, RFC 3261 §26): REGISTER, PUBLISH
/// and MESSAGE under Digest, to the TLS listener.
mod sipsak_over_tls {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tls() {
        super::sipsak_under_default_digest(super::Tp::Tls).await
    }
}

async fn sipsak_under_default_digest(tp: Tp) {
    let s = start(Mode::AllInOne, Some(USERS), None, &["--domain", DOMAIN]).await;
    let at = if tp == Tp::Tls { s.tls_at(0) } else { s.at(0) };
    let (ok, log) = sipsak_register(at, tp, "alice", "secret").await;
    assert!(ok, "sipsak REGISTER over {tp:?} failed:\n{log}");

    let pidf = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:alice@{DOMAIN}"><tuple id="sipsak"><status><basic>open</basic></status></tuple></presence>"#
    );
    let publish = request(
        "PUBLISH",
        "alice",
        "alice",
        &["Event: presence", "Expires: 60"],
        "application/pidf+xml",
        &pidf,
    );
    let (ok, log) = sipsak_shoot(
        at,
        tp,
        &format!("sip:alice@{DOMAIN}"),
        "alice",
        "secret",
        &publish,
    )
    .await;
    assert!(ok, "sipsak PUBLISH over {tp:?} failed:\n{log}");
    let pubs = s
        .store()
        .publications(&format!("sip:alice@{DOMAIN}"), "presence")
        .await
        .expect("store");
    assert_eq!(pubs.len(), 1);

    let mut bob = bob(&s, tp).await;
    let message = request(
        "MESSAGE",
        "bob",
        "alice",
        &[],
        "text/plain",
        "hello from sipsak",
    );
    let (ok, log) = sipsak_shoot(
        at,
        tp,
        &format!("sip:bob@{DOMAIN}"),
        "alice",
        "secret",
        &message,
    )
    .await;
    assert!(ok, "sipsak MESSAGE over {tp:?} failed:\n{log}");
    let m = bob
        .recv_request("MESSAGE", s.wait())
        .await
        .expect("bob gets it");
    assert_eq!(body_str(&m), "hello from sipsak");
    assert_eq!(
        m.header_value("P-Asserted-Identity"),
        Some(format!("<sip:alice@{DOMAIN}>"))
    );
    s.shutdown().await;
}

/// The defect: with SHA-256 challenged first, both give up.
async fn sha256_first_locks_them_out(tp: Tp) {
    let s = start(
        Mode::AllInOne,
        Some(USERS),
        None,
        &["--domain", DOMAIN, "--digest-algorithms", "SHA-256,MD5"],
    )
    .await;
    let at = s.at(0);
    let (ok, log) = sipsak_register(at, tp, "alice", "secret").await;
    assert!(
        !ok,
        "sipsak registered with SHA-256 challenged first?\n{log}"
    );
    let (ok, log) = sipp(at, tp, "register", "alice", "secret", "alice").await;
    assert!(!ok, "SIPp registered with SHA-256 challenged first?\n{log}");
    let bound = s
        .store()
        .bindings(&format!("sip:alice@{DOMAIN}"))
        .await
        .expect("store");
    assert!(bound.is_empty());
    s.shutdown().await;
}

trait HeaderValue {
    fn header_value(&self, name: &str) -> Option<String>;
}

impl HeaderValue for presence_sip::Request {
    fn header_value(&self, name: &str) -> Option<String> {
        use presence_sip::HeaderAccess;
        self.header(name).map(str::to_string)
    }
}

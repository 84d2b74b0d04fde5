//! The edges of a cluster share `--nonce-secret`: it keys their Digest
//! nonces and the seals of the flows they send through (an edge refuses a
//! NOTIFY or MESSAGE through a flow whose seal it cannot check). An edge
//! with `--nats` and no secret refuses to start, also under
//! `--check-config`; the all-in-one server keeps its random secret.

use clap::Parser;
use presenced::config::{Args, Config};

const REQUIRED: &str = "--nonce-secret (PRESENCE_NONCE_SECRET) is required for the edge role";

fn errors(extra: &[&str]) -> Vec<String> {
    let mut args = vec!["presenced", "--domain", "example.com"];
    args.extend_from_slice(extra);
    match Config::from_args(&Args::parse_from(args)) {
        Ok(_) => Vec::new(),
        Err(e) => e,
    }
}

fn asks_for_the_secret(errors: &[String]) -> bool {
    errors.iter().any(|e| e.contains(REQUIRED))
}

#[test]
fn a_cluster_edge_needs_the_shared_secret() {
    let backends = [
        "--redis",
        "redis://127.0.0.1:6379",
        "--nats",
        "nats://127.0.0.1:4222",
    ];
    for target in ["edge", "all", "edge,notifier"] {
        let mut args = vec!["--target", target];
        args.extend_from_slice(&backends);
        assert!(asks_for_the_secret(&errors(&args)), "--target {target}");
        args.extend_from_slice(&["--nonce-secret", "  "]);
        assert!(
            asks_for_the_secret(&errors(&args)),
            "--target {target}, blank"
        );
        let n = args.len();
        args[n - 1] = "a shared secret";
        assert_eq!(errors(&args), Vec::<String>::new(), "--target {target}");
    }
    // Roles that seal and check nothing do not need it.
    for target in ["compositor", "notifier", "compositor,notifier"] {
        let mut args = vec!["--target", target];
        args.extend_from_slice(&backends);
        assert_eq!(errors(&args), Vec::<String>::new(), "--target {target}");
    }
    // The all-in-one server: its flows never leave the process.
    assert_eq!(errors(&[]), Vec::<String>::new());
}

#[test]
fn check_config_says_so() {
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_presenced"))
            .args([
                "--check-config",
                "--domain",
                "example.com",
                "--target",
                "edge",
            ])
            .args(["--redis", "redis://127.0.0.1:6379"])
            .args(["--nats", "nats://127.0.0.1:4222"])
            .args(extra)
            .env_remove("PRESENCE_NONCE_SECRET")
            .output()
            .expect("run presenced");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, text) = run(&[]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains(REQUIRED), "{text}");
    let (code, text) = run(&["--nonce-secret", "a shared secret"]);
    assert_eq!(code, Some(0), "{text}");
}

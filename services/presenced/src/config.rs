//! Configuration: one typed struct, from flags or environment, every error
//! reported at once, before any port is bound.

use clap::Parser;
use presence_core::digest::Users;
use presence_core::policy::Policy;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "presenced",
    version,
    about = "SIP presence and instant-messaging server"
)]
pub struct Args {
    /// Roles to run: all (default). Cluster roles (edge, compositor, notifier) need --redis and --nats.
    #[arg(long, env = "PRESENCE_TARGET", default_value = "all")]
    pub target: String,
    /// SIP listen address, UDP and TCP (repeatable).
    #[arg(
        long = "sip-listen",
        env = "PRESENCE_SIP_LISTEN",
        value_delimiter = ',',
        default_value = "127.0.0.1:5060"
    )]
    pub sip_listen: Vec<SocketAddr>,
    /// Local presence domain (repeatable).
    #[arg(
        long = "domain",
        env = "PRESENCE_DOMAIN",
        value_delimiter = ',',
        default_value = "example.com"
    )]
    pub domains: Vec<String>,
    /// Users file (user@domain:password lines); enables Digest authentication.
    #[arg(long, env = "PRESENCE_USERS")]
    pub users: Option<PathBuf>,
    /// Lifetime of a Digest nonce in seconds.
    #[arg(
        long = "nonce-lifetime",
        env = "PRESENCE_NONCE_LIFETIME",
        default_value_t = 300
    )]
    pub nonce_lifetime: u64,
    /// Secret for stateless nonces (all edges of a cluster share it). Random if unset.
    #[arg(long = "nonce-secret", env = "PRESENCE_NONCE_SECRET")]
    pub nonce_secret: Option<String>,
    /// HTTP address for /metrics, /healthz, /readyz and the admin API.
    #[arg(
        long = "http-listen",
        env = "PRESENCE_HTTP_LISTEN",
        default_value = "127.0.0.1:9090"
    )]
    pub http_listen: SocketAddr,
    /// Watcher policy rules file (presentity action watcher).
    #[arg(long, env = "PRESENCE_POLICY")]
    pub policy: Option<PathBuf>,
    /// Smallest non-zero Expires accepted (REGISTER, PUBLISH, SUBSCRIBE); smaller gets 423.
    #[arg(
        long = "min-expires",
        env = "PRESENCE_MIN_EXPIRES",
        default_value_t = 2
    )]
    pub min_expires: u32,
    /// Largest Expires granted; larger requests are lowered to it.
    #[arg(
        long = "max-expires",
        env = "PRESENCE_MAX_EXPIRES",
        default_value_t = 3600
    )]
    pub max_expires: u32,
    /// Largest SIP message accepted, in bytes (413 or drop above).
    #[arg(
        long = "max-message-size",
        env = "PRESENCE_MAX_MESSAGE_SIZE",
        default_value_t = 65536
    )]
    pub max_message_size: usize,
    /// Number of virtual shards (fixed per deployment).
    #[arg(long, env = "PRESENCE_SHARDS", default_value_t = 256)]
    pub shards: u32,
    /// Validate the configuration and exit.
    #[arg(long = "check-config")]
    pub check_config: bool,
    /// Log filter (tracing EnvFilter syntax).
    #[arg(long = "log", env = "PRESENCE_LOG", default_value = "info")]
    pub log: String,
}

/// The validated configuration.
#[derive(Clone)]
pub struct Config {
    pub sip_listen: Vec<SocketAddr>,
    pub domains: Vec<String>,
    pub users: Option<Users>,
    pub nonce_lifetime: u64,
    pub nonce_secret: Vec<u8>,
    pub http_listen: SocketAddr,
    pub policy: Policy,
    pub min_expires: u32,
    pub max_expires: u32,
    pub max_message_size: usize,
    pub shards: u32,
    /// Deliberate misbehaviour for tests of the tools that watch us (the load
    /// generator's canary). Only settable through this library API, never
    /// from the command line or the environment.
    pub faults: Faults,
}

/// Test-only fault hooks; the default is a correct server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// When N > 0, the notifier silently skips every Nth NOTIFY it would send
    /// and behaves as if the watcher had answered 200.
    pub skip_notify_every: u32,
    /// Hold every answer to a SUBSCRIBE this long before sending it, so that
    /// the dialog's first NOTIFY is ready first.
    pub delay_subscribe_answer_ms: u64,
}

impl Config {
    /// Validate `args`; every problem is reported, not only the first.
    pub fn from_args(args: &Args) -> Result<Config, Vec<String>> {
        let mut errors = Vec::new();
        if args.target != "all" {
            for role in args.target.split(',') {
                match role.trim() {
                    "edge" | "compositor" | "notifier" | "api" => errors.push(format!(
                        "--target {role}: this role runs as a separate process only in cluster mode, which needs --redis and --nats (not available in this build); use --target all"
                    )),
                    "all" => {}
                    other => errors.push(format!("--target: unknown role {other:?} (all, edge, compositor, notifier, api)")),
                }
            }
        }
        if args.sip_listen.is_empty() {
            errors.push("--sip-listen: at least one address is needed".into());
        }
        let domains: Vec<String> = args
            .domains
            .iter()
            .map(|d| d.trim().to_ascii_lowercase())
            .filter(|d| !d.is_empty())
            .collect();
        if domains.is_empty() {
            errors.push("--domain: at least one local domain is needed".into());
        }
        for d in &domains {
            if d.contains(['@', ':', '/', ' ']) {
                errors.push(format!(
                    "--domain {d:?}: a domain is a host name, not a URI"
                ));
            }
        }
        let users = args
            .users
            .as_ref()
            .and_then(|path| load_file("--users", path, &mut errors, Users::parse));
        let mut policy = Policy::new(&domains);
        if let Some(path) = &args.policy {
            load_file("--policy", path, &mut errors, |text| {
                policy.load_rules(text)
            });
        }
        if args.nonce_lifetime == 0 {
            errors.push("--nonce-lifetime must be at least 1 second".into());
        }
        if args.min_expires == 0 || args.min_expires > args.max_expires {
            errors.push(format!(
                "--min-expires {} must be between 1 and --max-expires {}",
                args.min_expires, args.max_expires
            ));
        }
        if args.max_message_size < 1024 || args.max_message_size > 1 << 20 {
            errors.push("--max-message-size must be between 1024 and 1048576".into());
        }
        if args.shards == 0 || args.shards > 65536 {
            errors.push("--shards must be between 1 and 65536".into());
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let nonce_secret = match &args.nonce_secret {
            Some(s) => s.as_bytes().to_vec(),
            None => rand::random::<[u8; 32]>().to_vec(),
        };
        Ok(Config {
            sip_listen: args.sip_listen.clone(),
            domains,
            users,
            nonce_lifetime: args.nonce_lifetime,
            nonce_secret,
            http_listen: args.http_listen,
            policy,
            min_expires: args.min_expires,
            max_expires: args.max_expires,
            max_message_size: args.max_message_size,
            shards: args.shards,
            faults: Faults::default(),
        })
    }
}

/// Read and parse a configuration file, adding every problem to `errors`.
fn load_file<T, E: std::fmt::Display>(
    flag: &str,
    path: &std::path::Path,
    errors: &mut Vec<String>,
    parse: impl FnOnce(&str) -> Result<T, Vec<E>>,
) -> Option<T> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            errors.push(format!("{flag} {}: {e}", path.display()));
            return None;
        }
    };
    match parse(&text) {
        Ok(v) => Some(v),
        Err(errs) => {
            errors.extend(
                errs.iter()
                    .map(|e| format!("{flag} {}: {e}", path.display())),
            );
            None
        }
    }
}

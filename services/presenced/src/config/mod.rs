//! Configuration: one typed struct, from flags or environment, every error
//! reported at once, before any port is bound.
//!
//! - `args.rs`: the flags ([`Args`]).
//! - `mod.rs`: the validated [`Config`] and [`Roles`], made by
//!   [`Config::from_args`].
//! - `checks.rs`: what `from_args` checks and loads with (roles and
//!   backends, URLs, node ids, files), and [`redact_url`].

mod args;
mod checks;

pub use args::Args;
pub use checks::redact_url;
use checks::*;

use crate::reload::Reloadable;
use presence_core::apiauth::Tokens;
use presence_core::digest::{Algorithm, Users};
use presence_core::directory::Directory;
use presence_core::policy::Policy;
use presence_core::rlmi::Lists;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
/// The validated configuration.
#[derive(Clone)]
pub struct Config {
    pub sip_listen: Vec<SocketAddr>,
    /// What each listener advertises (empty, or one per listener).
    pub sip_advertise: Vec<crate::edge::Advertised>,
    /// SIP over TLS listeners and their certificates (loaded and checked).
    pub sip_tls_listen: Vec<SocketAddr>,
    pub tls: Option<Arc<crate::edge::TlsCerts>>,
    /// SIP over WebSocket and secure WebSocket listeners.
    pub sip_ws_listen: Vec<SocketAddr>,
    pub sip_wss_listen: Vec<SocketAddr>,
    /// Origins allowed to open WebSockets (empty: any).
    pub ws_origins: Vec<String>,
    pub trusted_publishers: crate::trusted::TrustedPublishers,
    pub domains: Vec<String>,
    pub users: Option<Users>,
    pub nonce_lifetime: u64,
    pub nonce_secret: Vec<u8>,
    /// Digest algorithms in preference order.
    pub digest_algorithms: Vec<Algorithm>,
    pub http_listen: SocketAddr,
    /// Bearer token for /admin/*.
    pub admin_token: Option<String>,
    /// Watcher policy, reloaded on SIGHUP and when its file changes.
    pub policy: Arc<Reloadable<Policy>>,
    /// Resource lists, reloaded likewise.
    pub lists: Arc<Reloadable<Lists>>,
    pub api_listen: SocketAddr,
    /// API tokens, reloaded likewise (`None`: no token file).
    pub api_tokens: Option<Arc<Reloadable<presence_core::apiauth::Tokens>>>,
    /// The company directory, reloaded likewise.
    pub directory: Arc<Reloadable<presence_core::directory::Directory>>,
    pub api_batch: usize,
    pub min_expires: u32,
    pub max_expires: u32,
    pub max_message_size: usize,
    /// State bounds per resource.
    pub limits: crate::compositor::Limits,
    /// What one source may cost an edge.
    pub edge_limits: crate::guard::EdgeLimits,
    /// Lame-duck time on shutdown.
    pub drain: Duration,
    pub shards: u32,
    /// The roles this process runs.
    pub roles: Roles,
    /// Redis URL(s), when the store is Redis.
    pub redis: Option<String>,
    /// TLS material and password for Redis (read at start).
    pub redis_ca: Option<Vec<u8>>,
    pub redis_client: Option<(Vec<u8>, Vec<u8>)>,
    pub redis_password: Option<String>,
    /// NATS URL, when the bus is NATS.
    pub nats: Option<String>,
    /// TLS and credentials for NATS.
    pub nats_security: presence_nats::Security,
    pub node_id: String,
    pub lease_ttl: Duration,
    pub handover_wait: Duration,
    pub owner_cache_entries: usize,
    pub notify_batch: usize,
    pub notify_min_interval: Duration,
    pub notify_stream_max_bytes: i64,
}

/// Which roles run in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    pub edge: bool,
    pub compositor: bool,
    pub notifier: bool,
    pub api: bool,
}

impl Roles {
    pub const ALL: Roles = Roles {
        edge: true,
        compositor: true,
        notifier: true,
        api: true,
    };

    /// The role's name, or `presence` for several: the NATS user and inbox
    /// prefix a process of these roles has (helm/presence/files/nats-auth.conf).
    pub fn name(self) -> &'static str {
        match (self.edge, self.compositor, self.notifier, self.api) {
            (true, false, false, false) => "edge",
            (false, true, false, false) => "compositor",
            (false, false, true, false) => "notifier",
            (false, false, false, true) => "api",
            _ => "presence",
        }
    }

    /// `edge,compositor`, for logs and `--check-config`.
    pub fn names(&self) -> String {
        let mut v = Vec::new();
        if self.edge {
            v.push("edge");
        }
        if self.compositor {
            v.push("compositor");
        }
        if self.notifier {
            v.push("notifier");
        }
        if self.api {
            v.push("api");
        }
        v.join(",")
    }
}

impl Config {
    /// Validate `args`; every problem is reported, not only the first.
    pub fn from_args(args: &Args) -> Result<Config, Vec<String>> {
        let mut errors = Vec::new();
        let roles = parse_roles(&args.target, &mut errors);
        let redis = args
            .redis
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty());
        let nats = args
            .nats
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty());
        if let Some(r) = roles {
            check_backends(
                &args.target,
                r,
                redis.is_some(),
                nats.is_some(),
                &mut errors,
            );
            check_api_backends(
                &args.target,
                r,
                redis.is_some(),
                nats.is_some(),
                &mut errors,
            );
        }
        if let Some(spec) = redis {
            if let Err(e) = presence_redis::RedisConfig::new(spec, args.shards.max(1)) {
                errors.push(format!("--redis {:?}: {e}", redact_url(spec)));
            }
        }
        if let Some(url) = nats {
            if let Err(e) = check_nats_url(url) {
                errors.push(format!("--nats {:?}: {e}", redact_url(url)));
            }
        }
        let mut read = |flag: &str, path: &Option<PathBuf>| -> Option<Vec<u8>> {
            let p = path.as_ref()?;
            match std::fs::read(p) {
                Ok(b) => Some(b),
                Err(e) => {
                    errors.push(format!("{flag} {}: {e}", p.display()));
                    None
                }
            }
        };
        let redis_ca = read("--redis-ca", &args.redis_ca);
        let redis_cert = read("--redis-cert", &args.redis_cert);
        let redis_key = read("--redis-key", &args.redis_key);
        let redis_password = read("--redis-password-file", &args.redis_password_file)
            .map(|b| String::from_utf8_lossy(&b).trim().to_string());
        if redis_password.as_deref() == Some("") {
            errors.push("--redis-password-file: empty".into());
        }
        if args.redis_cert.is_some() != args.redis_key.is_some() {
            errors.push("--redis-cert and --redis-key go together".into());
        }
        let mut nats_security = presence_nats::Security {
            ca: args.nats_ca.clone(),
            creds: args.nats_creds.clone(),
            inbox_prefix: roles.map(|r| format!("_INBOX.{}", r.name())),
            ..Default::default()
        };
        for (flag, path) in [
            ("--nats-ca", &args.nats_ca),
            ("--nats-cert", &args.nats_cert),
            ("--nats-key", &args.nats_key),
            ("--nats-creds", &args.nats_creds),
        ] {
            if let Some(p) = path {
                if let Err(e) = std::fs::metadata(p) {
                    errors.push(format!("{flag} {}: {e}", p.display()));
                }
            }
        }
        match (&args.nats_cert, &args.nats_key) {
            (Some(c), Some(k)) => nats_security.client_cert = Some((c.clone(), k.clone())),
            (None, None) => {}
            _ => errors.push("--nats-cert and --nats-key go together".into()),
        }
        match (&args.nats_user, &args.nats_password_file) {
            (Some(user), Some(file)) => match std::fs::read_to_string(file) {
                Ok(p) if !p.trim().is_empty() => {
                    nats_security.user = Some((user.clone(), p.trim().to_string()));
                }
                Ok(_) => errors.push(format!("--nats-password-file {}: empty", file.display())),
                Err(e) => errors.push(format!("--nats-password-file {}: {e}", file.display())),
            },
            (None, None) => {}
            _ => errors.push("--nats-user and --nats-password-file go together".into()),
        }
        let node_id = match &args.node_id {
            Some(id) => {
                if let Err(e) = check_node_id(id) {
                    errors.push(format!("--node-id {id:?}: {e}"));
                }
                id.clone()
            }
            None => default_node_id(),
        };
        if !(300..=600_000).contains(&args.lease_ttl_ms) {
            errors.push("--lease-ttl-ms must be between 300 and 600000".into());
        }
        // 10 000 ids of ~18 bytes stay well inside NATS's 1 MB payload.
        if !(1..=10_000).contains(&args.notify_batch) {
            errors.push("--notify-batch must be between 1 and 10000".into());
        }
        // A held-back change delays its job's acknowledgement: well inside
        // the notify queue's ack wait (30 s).
        if args.notify_min_interval_ms > 10_000 {
            errors.push("--notify-min-interval-ms must be at most 10000".into());
        }
        if args.notify_stream_max_bytes < 1 << 20 {
            errors.push("--notify-stream-max-bytes must be at least 1048576 (1 MiB)".into());
        }
        if args.handover_wait_ms > 30_000 {
            errors.push("--handover-wait-ms must be at most 30000 (SIP Timer F is 32 s)".into());
        }
        if args.sip_listen.is_empty() {
            errors.push("--sip-listen: at least one address is needed".into());
        }
        let mut sip_advertise = Vec::new();
        for text in args.sip_advertise.iter().filter(|t| !t.trim().is_empty()) {
            match crate::edge::Advertised::parse(text) {
                Ok(a) => sip_advertise.push(a),
                Err(e) => errors.push(format!("--sip-advertise {text:?}: {e}")),
            }
        }
        if !sip_advertise.is_empty() && sip_advertise.len() != args.sip_listen.len() {
            errors.push(format!(
                "--sip-advertise: {} given for {} --sip-listen addresses; give one per listener, in the same order",
                sip_advertise.len(),
                args.sip_listen.len()
            ));
        }
        let tls = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => match crate::edge::TlsCerts::load(crate::edge::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: args.tls_client_ca.clone(),
            }) {
                Ok(c) => Some(c),
                Err(e) => {
                    errors.push(e);
                    None
                }
            },
            (None, None) => {
                if !args.sip_tls_listen.is_empty() {
                    errors.push("--sip-tls-listen needs --tls-cert and --tls-key".into());
                }
                if !args.sip_wss_listen.is_empty() {
                    errors.push("--sip-wss-listen needs --tls-cert and --tls-key".into());
                }
                if args.tls_client_ca.is_some() {
                    errors.push("--tls-client-ca needs --tls-cert and --tls-key".into());
                }
                None
            }
            _ => {
                errors.push("--tls-cert and --tls-key go together".into());
                None
            }
        };
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
        let trusted_publishers = crate::trusted::TrustedPublishers::parse(&args.trusted_publisher)
            .unwrap_or_else(|e| {
                errors.extend(e);
                Default::default()
            });
        let users = args
            .users
            .as_ref()
            .and_then(|path| load_file("--users", path, &mut errors, Users::parse));
        let lists = match &args.lists {
            Some(path) => {
                let file = path.clone();
                Reloadable::new("resource lists", vec![path.clone()], move || {
                    let mut errors = Vec::new();
                    let lists = load_file("--lists", &file, &mut errors, Lists::parse);
                    match lists {
                        Some(l) if errors.is_empty() => Ok(l),
                        _ => Err(errors.join("; ")),
                    }
                })
                .unwrap_or_else(|e| {
                    errors.push(e);
                    Reloadable::fixed("resource lists", Lists::default())
                })
            }
            None => Reloadable::fixed("resource lists", Lists::default()),
        };
        let policy = match &args.policy {
            Some(path) => {
                let (file, local) = (path.clone(), domains.clone());
                Reloadable::new("watcher policy", vec![path.clone()], move || {
                    let mut errors = Vec::new();
                    let mut policy = Policy::new(&local);
                    load_file("--policy", &file, &mut errors, |text| {
                        policy.load_rules(text)
                    });
                    match errors.is_empty() {
                        true => Ok(policy),
                        false => Err(errors.join("; ")),
                    }
                })
                .unwrap_or_else(|e| {
                    errors.push(e);
                    Reloadable::fixed("watcher policy", Policy::new(&domains))
                })
            }
            None => Reloadable::fixed("watcher policy", Policy::new(&domains)),
        };
        let directory = match &args.directory {
            Some(path) => {
                let file = path.clone();
                Reloadable::new("directory", vec![path.clone()], move || {
                    let mut errors = Vec::new();
                    match load_file("--directory", &file, &mut errors, Directory::parse) {
                        Some(d) if errors.is_empty() => Ok(d),
                        _ => Err(errors.join("; ")),
                    }
                })
                .unwrap_or_else(|e| {
                    errors.push(e);
                    Reloadable::fixed("directory", Directory::default())
                })
            }
            None => Reloadable::fixed("directory", Directory::default()),
        };
        let api_tokens = args.api_tokens.as_ref().map(|path| {
            let file = path.clone();
            Reloadable::new("api tokens", vec![path.clone()], move || {
                let mut errors = Vec::new();
                match load_file("--api-tokens", &file, &mut errors, Tokens::parse) {
                    Some(t) if errors.is_empty() => Ok(t),
                    _ => Err(errors.join("; ")),
                }
            })
            .unwrap_or_else(|e| {
                errors.push(e);
                Reloadable::fixed("api tokens", Tokens::default())
            })
        });
        let api_role = roles.is_some_and(|r| r.api);
        if api_role
            && args.api_tokens.is_none()
            && args.users.is_none()
            && !args.api_listen.ip().is_loopback()
        {
            errors.push(format!(
                "--api-listen {} is not loopback: --api-tokens or --users is required (without them the API is open: anyone could read and change presence)",
                args.api_listen
            ));
        }
        if args.api_batch == 0 || args.api_batch > 100_000 {
            errors.push(format!(
                "--api-batch {} must be between 1 and 100000",
                args.api_batch
            ));
        }
        let digest_algorithms =
            Algorithm::parse_list(&args.digest_algorithms).unwrap_or_else(|e| {
                errors.push(format!(
                    "--digest-algorithms {:?}: {e}",
                    args.digest_algorithms
                ));
                Vec::new()
            });
        let admin_token = args.admin_token_file.as_ref().and_then(|path| {
            load_file("--admin-token-file", path, &mut errors, |text| {
                let token = text.trim();
                if token.len() < 16 || token.contains(char::is_whitespace) {
                    Err(vec!["the token must be one word of at least 16 characters"])
                } else {
                    Ok(token.to_string())
                }
            })
        });
        if args.admin_token_file.is_none() && !args.http_listen.ip().is_loopback() {
            errors.push(format!(
                "--http-listen {} is not loopback: --admin-token-file is required (the admin API changes anyone's presence)",
                args.http_listen
            ));
        }
        if args.nonce_lifetime == 0 {
            errors.push("--nonce-lifetime must be at least 1 second".into());
        }
        // Edges of a cluster check each other's nonces and flow seals
        // (presence_core::seal): a random secret per process would refuse
        // every NOTIFY and MESSAGE through a flow another edge sealed.
        let no_secret = args
            .nonce_secret
            .as_deref()
            .is_none_or(|s| s.trim().is_empty());
        if api_role && nats.is_some() && args.users.is_some() && no_secret {
            errors.push(
                "--nonce-secret (PRESENCE_NONCE_SECRET) is required for the api role with --nats and --users: every api process of a cluster must accept the session tokens the others gave".into(),
            );
        }
        if roles.is_some_and(|r| r.edge) && nats.is_some() && no_secret {
            errors.push(
                "--nonce-secret (PRESENCE_NONCE_SECRET) is required for the edge role with --nats: every edge of a cluster must share it, to check each other's Digest nonces and the seals of the flows they send NOTIFYs and MESSAGEs through".into(),
            );
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
        for (flag, v, max) in [
            ("--max-contacts", args.max_contacts, 1_000),
            ("--max-publications", args.max_publications, 1_000),
            ("--max-watchers", args.max_watchers, 1_000_000),
        ] {
            if v == 0 || v > max {
                errors.push(format!("{flag} must be between 1 and {max}"));
            }
        }
        for (flag, v, min, max) in [
            ("--max-inflight", args.max_inflight, 1, 1_000_000),
            ("--max-connections", args.max_connections, 1, 10_000_000),
            (
                "--max-connections-per-source",
                args.max_connections_per_source,
                1,
                10_000_000,
            ),
            (
                "--rate-per-source",
                args.rate_per_source as usize,
                1,
                1_000_000,
            ),
            (
                "--burst-per-source",
                args.burst_per_source as usize,
                1,
                10_000_000,
            ),
            ("--idle-timeout", args.idle_timeout as usize, 1, 86_400),
            ("--header-timeout", args.header_timeout as usize, 1, 600),
            ("--write-queue", args.write_queue, 1, 1_000_000),
            (
                "--max-notify-backlog",
                args.max_notify_backlog,
                1,
                10_000_000,
            ),
            ("--drain-seconds", args.drain_seconds as usize, 0, 3_600),
            (
                "--max-notify-queue",
                args.max_notify_queue as usize,
                1,
                10_000_000,
            ),
        ] {
            if v < min || v > max {
                errors.push(format!("{flag} must be between {min} and {max}"));
            }
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
            sip_advertise,
            sip_tls_listen: args.sip_tls_listen.clone(),
            tls,
            sip_ws_listen: args.sip_ws_listen.clone(),
            sip_wss_listen: args.sip_wss_listen.clone(),
            ws_origins: args
                .ws_allowed_origin
                .iter()
                .map(|o| o.trim().trim_end_matches('/').to_string())
                .filter(|o| !o.is_empty())
                .collect(),
            trusted_publishers,
            domains,
            users,
            nonce_lifetime: args.nonce_lifetime,
            nonce_secret,
            digest_algorithms,
            http_listen: args.http_listen,
            admin_token,
            policy,
            lists,
            api_listen: args.api_listen,
            api_tokens,
            directory,
            api_batch: args.api_batch,
            min_expires: args.min_expires,
            max_expires: args.max_expires,
            max_message_size: args.max_message_size,
            limits: crate::compositor::Limits {
                contacts: args.max_contacts,
                publications: args.max_publications,
                watchers: args.max_watchers,
            },
            edge_limits: crate::guard::EdgeLimits {
                max_inflight: args.max_inflight,
                max_connections: args.max_connections,
                max_connections_per_source: args.max_connections_per_source,
                rate_per_source: args.rate_per_source,
                burst_per_source: args.burst_per_source,
                idle_timeout: Duration::from_secs(args.idle_timeout),
                header_timeout: Duration::from_secs(args.header_timeout),
                write_queue: args.write_queue,
                amplification: crate::guard::AMPLIFICATION,
                max_notify_backlog: args.max_notify_backlog,
                max_notify_queue: args.max_notify_queue,
            },
            drain: Duration::from_secs(args.drain_seconds),
            shards: args.shards,
            roles: roles.unwrap_or(Roles::ALL),
            redis: redis.map(str::to_string),
            nats: nats.map(str::to_string),
            nats_security,
            redis_ca,
            redis_client: redis_cert.zip(redis_key),
            redis_password,
            node_id,
            lease_ttl: Duration::from_millis(args.lease_ttl_ms),
            handover_wait: Duration::from_millis(args.handover_wait_ms),
            owner_cache_entries: args.owner_cache_entries,
            notify_batch: args.notify_batch,
            notify_min_interval: Duration::from_millis(args.notify_min_interval_ms),
            notify_stream_max_bytes: args.notify_stream_max_bytes,
        })
    }
}

//! Configuration: one typed struct, from flags or environment, every error
//! reported at once, before any port is bound.

use crate::reload::Reloadable;
use clap::Parser;
use presence_core::apiauth::Tokens;
use presence_core::digest::{Algorithm, Users};
use presence_core::directory::Directory;
use presence_core::policy::Policy;
use presence_core::rlmi::Lists;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "presenced",
    version,
    about = "SIP presence and instant-messaging server"
)]
pub struct Args {
    /// Roles to run: all (default), or a comma list of edge, compositor,
    /// notifier, api. Separate roles need --redis and --nats; `all` runs on
    /// the in-memory backends unless they are given.
    #[arg(long, env = "PRESENCE_TARGET", default_value = "all")]
    pub target: String,
    /// Redis, the system of record: redis://host:port (standalone), or
    /// redis+cluster://h1:p1,h2:p2 / a comma list of URLs (Redis Cluster).
    #[arg(long, env = "PRESENCE_REDIS")]
    pub redis: Option<String>,
    /// CA certificates (PEM) a TLS Redis server's certificate (rediss://
    /// URLs) must chain to. Without it, the system's roots.
    #[arg(long = "redis-ca", env = "PRESENCE_REDIS_CA")]
    pub redis_ca: Option<PathBuf>,
    /// Client certificate (PEM) for Redis servers that verify clients.
    #[arg(long = "redis-cert", env = "PRESENCE_REDIS_CERT")]
    pub redis_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long = "redis-key", env = "PRESENCE_REDIS_KEY")]
    pub redis_key: Option<PathBuf>,
    /// A file holding the Redis password (instead of one in the URL, which
    /// every process listing shows); the URL's user name, if any, stays.
    #[arg(long = "redis-password-file", env = "PRESENCE_REDIS_PASSWORD_FILE")]
    pub redis_password_file: Option<PathBuf>,
    /// NATS, the bus: nats://host:port, or tls://host:port for TLS.
    #[arg(long, env = "PRESENCE_NATS")]
    pub nats: Option<String>,
    /// CA certificates (PEM) the NATS server's certificate must chain to;
    /// TLS to NATS is required with it.
    #[arg(long = "nats-ca", env = "PRESENCE_NATS_CA")]
    pub nats_ca: Option<PathBuf>,
    /// Client certificate (PEM) for NATS servers that verify clients.
    #[arg(long = "nats-cert", env = "PRESENCE_NATS_CERT")]
    pub nats_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long = "nats-key", env = "PRESENCE_NATS_KEY")]
    pub nats_key: Option<PathBuf>,
    /// A NATS credentials file (JWT and nkey seed, as `nsc` makes).
    #[arg(long = "nats-creds", env = "PRESENCE_NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,
    /// NATS user name (with --nats-password-file).
    #[arg(long = "nats-user", env = "PRESENCE_NATS_USER")]
    pub nats_user: Option<String>,
    /// A file holding the NATS password (not on the command line, where
    /// every process listing shows it).
    #[arg(long = "nats-password-file", env = "PRESENCE_NATS_PASSWORD_FILE")]
    pub nats_password_file: Option<PathBuf>,
    /// This process's name in the cluster (lease owner, edge subject
    /// `edge.<id>`): letters, digits, `-` and `_`. Default: hostname-pid.
    #[arg(long = "node-id", env = "PRESENCE_NODE_ID")]
    pub node_id: Option<String>,
    /// Shard lease lifetime in milliseconds; leases are renewed every third of
    /// it, and a dead owner's shards are taken over after at most about 1.5x it.
    #[arg(
        long = "lease-ttl-ms",
        env = "PRESENCE_LEASE_TTL_MS",
        default_value_t = 3000
    )]
    pub lease_ttl_ms: u64,
    /// How long an edge keeps retrying a shard that has no owner (handover)
    /// before it answers 503 with Retry-After, in milliseconds.
    #[arg(
        long = "handover-wait-ms",
        env = "PRESENCE_HANDOVER_WAIT_MS",
        default_value_t = 6000
    )]
    pub handover_wait_ms: u64,
    /// A compositor keeps what it read and wrote of the shards it owns in
    /// memory (it is their only writer) for up to this many keys (an AoR's
    /// publications, document, hard state, watcher set or bindings each
    /// count one); 0 reads the store for every command.
    #[arg(
        long = "owner-cache-entries",
        env = "PRESENCE_OWNER_CACHE_ENTRIES",
        default_value_t = 200_000
    )]
    pub owner_cache_entries: usize,
    /// A notifier splits the NOTIFYs of one change with more watchers than
    /// this into batches of this size, shared with the other notifiers.
    #[arg(
        long = "notify-batch",
        env = "PRESENCE_NOTIFY_BATCH",
        default_value_t = crate::names::DEFAULT_BATCH
    )]
    pub notify_batch: usize,
    /// A subscription's state-change NOTIFYs go out at most once per this
    /// many milliseconds; changes meanwhile are coalesced into the newest
    /// state (RFC 6446 rate control as an operator default: the answer to
    /// NOTIFY storms on hot presentities). First, refresh and final
    /// NOTIFYs are never held back. 0: off.
    #[arg(
        long = "notify-min-interval-ms",
        env = "PRESENCE_NOTIFY_MIN_INTERVAL_MS",
        default_value_t = 0
    )]
    pub notify_min_interval_ms: u64,
    /// The most bytes of notify jobs the JetStream stream holds, set when
    /// presenced creates the stream (an existing stream keeps its limits:
    /// `nats stream edit`). A full stream refuses pushes: the jobs wait in
    /// the compositors' outboxes in Redis, nothing is dropped.
    #[arg(
        long = "notify-stream-max-bytes",
        env = "PRESENCE_NOTIFY_STREAM_MAX_BYTES",
        default_value_t = 1 << 30
    )]
    pub notify_stream_max_bytes: i64,
    /// SIP listen address, UDP and TCP (repeatable).
    #[arg(
        long = "sip-listen",
        env = "PRESENCE_SIP_LISTEN",
        value_delimiter = ',',
        default_value = "127.0.0.1:5060"
    )]
    pub sip_listen: Vec<SocketAddr>,
    /// The address this server names itself by in Via and Contact, one per
    /// --sip-listen in the same order: HOST[:PORT], HOST an IP address or a
    /// DNS name (a load balancer's, a node's). Without it a listener's own
    /// address, or for a wildcard listener the address a request arrived on.
    #[arg(
        long = "sip-advertise",
        env = "PRESENCE_SIP_ADVERTISE",
        value_delimiter = ','
    )]
    pub sip_advertise: Vec<String>,
    /// SIP over TLS listen address (repeatable; 5061 is the usual port).
    /// Needs --tls-cert and --tls-key.
    #[arg(
        long = "sip-tls-listen",
        env = "PRESENCE_SIP_TLS_LISTEN",
        value_delimiter = ','
    )]
    pub sip_tls_listen: Vec<SocketAddr>,
    /// SIP over WebSocket listen address (RFC 7118; repeatable), for
    /// browser softphones behind a TLS-terminating proxy or on a trusted
    /// network.
    #[arg(
        long = "sip-ws-listen",
        env = "PRESENCE_SIP_WS_LISTEN",
        value_delimiter = ','
    )]
    pub sip_ws_listen: Vec<SocketAddr>,
    /// SIP over secure WebSocket listen address (repeatable; 443 or 8443
    /// are usual). Needs --tls-cert and --tls-key.
    #[arg(
        long = "sip-wss-listen",
        env = "PRESENCE_SIP_WSS_LISTEN",
        value_delimiter = ','
    )]
    pub sip_wss_listen: Vec<SocketAddr>,
    /// Web origins whose pages may open SIP WebSockets
    /// (`https://phone.example.net`; repeatable). Without any, every
    /// Origin may; clients that send none (not browsers) always may.
    #[arg(
        long = "ws-allowed-origin",
        env = "PRESENCE_WS_ALLOWED_ORIGIN",
        value_delimiter = ','
    )]
    pub ws_allowed_origin: Vec<String>,
    /// Who may PUBLISH for any local AoR (repeatable): an identity
    /// (`pbx@example.com`, authenticated by Digest) or a source network
    /// (`10.1.2.0/24`, `192.0.2.7`), whose PUBLISHes are taken without a
    /// challenge. For a PBX publishing dialog state or a voicemail server
    /// publishing message summaries; with Digest on, everyone else may
    /// publish only their own AoR.
    #[arg(
        long = "trusted-publisher",
        env = "PRESENCE_TRUSTED_PUBLISHER",
        value_delimiter = ','
    )]
    pub trusted_publisher: Vec<String>,
    /// TLS certificate chain, leaf first (PEM). Reloaded on SIGHUP and when
    /// the file changes; live connections keep theirs.
    #[arg(long = "tls-cert", env = "PRESENCE_TLS_CERT")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// TLS private key (PEM: PKCS#8, PKCS#1 or SEC1), reloaded with the
    /// certificate.
    #[arg(long = "tls-key", env = "PRESENCE_TLS_KEY")]
    pub tls_key: Option<std::path::PathBuf>,
    /// CA certificates (PEM): TLS clients must present a certificate that
    /// chains to one of them (trunks, SBCs). Without it, none is asked for.
    #[arg(long = "tls-client-ca", env = "PRESENCE_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<std::path::PathBuf>,
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
    /// Digest algorithms offered, in preference order (MD5, SHA-256). Many
    /// phones answer only the first challenge, and most know only MD5: keep
    /// MD5 first unless every client of the fleet speaks SHA-256. Clients
    /// that give up on any unknown challenge (libre before 3.12, baresip
    /// 1.x) need MD5 alone.
    #[arg(
        long = "digest-algorithms",
        env = "PRESENCE_DIGEST_ALGORITHMS",
        default_value = "MD5,SHA-256"
    )]
    pub digest_algorithms: String,
    /// Secret for stateless nonces and flow seals (all edges of a cluster
    /// share it; required for an edge with --nats). Random if unset.
    #[arg(long = "nonce-secret", env = "PRESENCE_NONCE_SECRET")]
    pub nonce_secret: Option<String>,
    /// HTTP address for /metrics, /healthz, /readyz and the admin API.
    #[arg(
        long = "http-listen",
        env = "PRESENCE_HTTP_LISTEN",
        default_value = "127.0.0.1:9090"
    )]
    pub http_listen: SocketAddr,
    /// File holding the bearer token for /admin/* (at least 16 characters).
    /// Required when --http-listen is not a loopback address.
    #[arg(long = "admin-token-file", env = "PRESENCE_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Address of the api role: gRPC `presence.v1.PresenceApi` (with health
    /// and reflection) and the web address book at `/`.
    #[arg(
        long = "api-listen",
        env = "PRESENCE_API_LISTEN",
        default_value = "127.0.0.1:50051"
    )]
    pub api_listen: SocketAddr,
    /// API bearer tokens file: `NAME TOKEN SCOPE[,SCOPE]` lines (scopes
    /// read, write, admin); reloaded on SIGHUP and when it changes. Without
    /// it and without --users the API is open (loopback only).
    #[arg(long = "api-tokens", env = "PRESENCE_API_TOKENS")]
    pub api_tokens: Option<PathBuf>,
    /// Company directory (CSV: aor,display_name,department,title,phone,
    /// more columns become attributes), searched by the API and the web
    /// address book; reloaded on SIGHUP and when it changes.
    #[arg(long, env = "PRESENCE_DIRECTORY")]
    pub directory: Option<PathBuf>,
    /// Most AoRs in one GetPresence call, one Watch stream, or one directory page.
    #[arg(long = "api-batch", env = "PRESENCE_API_BATCH", default_value_t = 1000)]
    pub api_batch: usize,
    /// Watcher policy rules file (presentity allow|block|polite-block|confirm
    /// watcher); reloaded on SIGHUP and when it changes.
    #[arg(long, env = "PRESENCE_POLICY")]
    pub policy: Option<PathBuf>,
    /// Resource lists file (RFC 4662): one list per line, `LIST-URI
    /// MEMBER-URI [MEMBER-URI …]`, `#` comments. A SUBSCRIBE with
    /// `Supported: eventlist` to a list URI gets every member's presence in
    /// one subscription. Reloaded on SIGHUP and when it changes.
    #[arg(long, env = "PRESENCE_LISTS")]
    pub lists: Option<PathBuf>,
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
    /// Contacts one AoR may have bound; a REGISTER adding more gets 403.
    #[arg(
        long = "max-contacts",
        env = "PRESENCE_MAX_CONTACTS",
        default_value_t = 10
    )]
    pub max_contacts: u32,
    /// Live publications one AoR may have per event package; more get 403.
    #[arg(
        long = "max-publications",
        env = "PRESENCE_MAX_PUBLICATIONS",
        default_value_t = 16
    )]
    pub max_publications: u32,
    /// Subscriptions one resource may have per event package; more get 403.
    #[arg(
        long = "max-watchers",
        env = "PRESENCE_MAX_WATCHERS",
        default_value_t = 10_000
    )]
    pub max_watchers: u32,
    /// Requests an edge handles at once; more are dropped (UDP) or get 503 (TCP).
    #[arg(
        long = "max-inflight",
        env = "PRESENCE_MAX_INFLIGHT",
        default_value_t = 8192
    )]
    pub max_inflight: usize,
    /// TCP connections an edge keeps open at most.
    #[arg(
        long = "max-connections",
        env = "PRESENCE_MAX_CONNECTIONS",
        default_value_t = 50_000
    )]
    pub max_connections: usize,
    /// TCP connections one source address may keep open.
    #[arg(
        long = "max-connections-per-source",
        env = "PRESENCE_MAX_CONNECTIONS_PER_SOURCE",
        default_value_t = 512
    )]
    pub max_connections_per_source: usize,
    /// Requests per second one source address may send on average.
    #[arg(
        long = "rate-per-source",
        env = "PRESENCE_RATE_PER_SOURCE",
        default_value_t = 200
    )]
    pub rate_per_source: u32,
    /// Requests one source address may send at once above its rate.
    #[arg(
        long = "burst-per-source",
        env = "PRESENCE_BURST_PER_SOURCE",
        default_value_t = 1000
    )]
    pub burst_per_source: u32,
    /// Seconds a TCP connection may stay silent between messages.
    #[arg(
        long = "idle-timeout",
        env = "PRESENCE_IDLE_TIMEOUT",
        default_value_t = 3900
    )]
    pub idle_timeout: u64,
    /// Seconds a message (and a new connection's first one) has to arrive whole.
    #[arg(
        long = "header-timeout",
        env = "PRESENCE_HEADER_TIMEOUT",
        default_value_t = 10
    )]
    pub header_timeout: u64,
    /// Messages queued for one TCP connection; a peer that does not read is cut off.
    #[arg(
        long = "write-queue",
        env = "PRESENCE_WRITE_QUEUE",
        default_value_t = 1024
    )]
    pub write_queue: usize,
    /// NOTIFYs and MESSAGEs in flight at an edge above which it answers new
    /// PUBLISHes 503 (shedding fan-out at its source).
    #[arg(
        long = "max-notify-backlog",
        env = "PRESENCE_MAX_NOTIFY_BACKLOG",
        default_value_t = 20_000
    )]
    pub max_notify_backlog: usize,
    /// Notify jobs waiting (the in-memory queue, or the JetStream consumer's
    /// pending count) above which new PUBLISHes from heavy sources get 503,
    /// and above twice which every new PUBLISH does: each queued change waits
    /// for those ahead of it.
    #[arg(
        long = "max-notify-queue",
        env = "PRESENCE_MAX_NOTIFY_QUEUE",
        default_value_t = 200
    )]
    pub max_notify_queue: u64,
    /// On SIGTERM, seconds to keep serving SIP while /readyz answers 503 and
    /// OPTIONS 503 (load balancers take the node out), before stopping.
    #[arg(
        long = "drain-seconds",
        env = "PRESENCE_DRAIN_SECONDS",
        default_value_t = 0
    )]
    pub drain_seconds: u64,
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

/// A backend URL (or comma list of URLs) as it may be shown: passwords and
/// tokens in the user part replaced by `***`.
pub fn redact_url(spec: &str) -> String {
    spec.split(',')
        .map(|part| {
            let Some((scheme, rest)) = part.split_once("://") else {
                return part.to_string();
            };
            let authority_end = rest.find('/').unwrap_or(rest.len());
            let (authority, path) = rest.split_at(authority_end);
            let Some(at) = authority.rfind('@') else {
                return part.to_string();
            };
            let (userinfo, host) = (&authority[..at], &authority[at + 1..]);
            let user = match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:***"),
                None => "***".to_string(),
            };
            format!("{scheme}://{user}@{host}{path}")
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `--target`: `all`, or a comma list of roles.
fn parse_roles(target: &str, errors: &mut Vec<String>) -> Option<Roles> {
    let mut roles = Roles {
        edge: false,
        compositor: false,
        notifier: false,
        api: false,
    };
    let mut ok = true;
    for role in target.split(',').map(str::trim) {
        match role {
            "all" => roles = Roles::ALL,
            "edge" => roles.edge = true,
            "compositor" => roles.compositor = true,
            "notifier" => roles.notifier = true,
            "api" => roles.api = true,
            other => {
                ok = false;
                errors.push(format!(
                    "--target: unknown role {other:?} (all, edge, compositor, notifier, api)"
                ));
            }
        }
    }
    ok.then_some(roles)
}

/// A role that needs a backend it lacks refuses to start. `all` without any
/// backend is the embedded, in-memory server; with a backend, the roles it
/// runs need what they need in a cluster.
fn check_backends(target: &str, roles: Roles, redis: bool, nats: bool, errors: &mut Vec<String>) {
    let embedded = roles == Roles::ALL && !redis && !nats;
    if embedded {
        return;
    }
    let mut need = |role: &str, what: &str, why: &str| {
        errors.push(format!(
            "--target {target}: the {role} role needs {what} ({why}); set it or use --target all without backends for the in-memory server"
        ));
    };
    if roles.edge {
        if !nats {
            need(
                "edge",
                "--nats",
                "it sends requests to the shard owners on shard.<k> and takes NOTIFYs on edge.<id>",
            );
        }
        if !redis {
            need("edge", "--redis", "its admin API reads composed documents");
        }
    }
    if roles.compositor {
        if !redis {
            need(
                "compositor",
                "--redis",
                "it keeps all state and its shard leases there",
            );
        }
        if !nats {
            need(
                "compositor",
                "--nats",
                "it serves shard.<k> requests and pushes notify jobs to JetStream",
            );
        }
    }
    if roles.notifier {
        if !redis {
            need(
                "notifier",
                "--redis",
                "it reads documents, watchers and CSeq counters there",
            );
        }
        if !nats {
            need(
                "notifier",
                "--nats",
                "it pulls notify jobs from JetStream and sends through edge.<id>",
            );
        }
    }
}

/// The api role in a cluster.
fn check_api_backends(
    target: &str,
    roles: Roles,
    redis: bool,
    nats: bool,
    errors: &mut Vec<String>,
) {
    if !roles.api || roles == Roles::ALL && !redis && !nats {
        return;
    }
    if !redis {
        errors.push(format!("--target {target}: the api role needs --redis (it reads presence state there); set it or use --target all without backends for the in-memory server"));
    }
    if !nats {
        errors.push(format!("--target {target}: the api role needs --nats (it sends changes to the shard owners and follows their change hints); set it or use --target all without backends for the in-memory server"));
    }
}

fn check_nats_url(url: &str) -> Result<(), String> {
    for part in url.split(',') {
        let part = part.trim();
        let rest = part
            .strip_prefix("nats://")
            .or_else(|| part.strip_prefix("tls://"))
            .unwrap_or(part);
        let host_port = rest.rsplit('@').next().unwrap_or(rest);
        if host_port.is_empty() || host_port.contains('/') && !host_port.ends_with('/') {
            return Err("expected nats://host:port or tls://host:port".into());
        }
    }
    Ok(())
}

fn check_node_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 64 {
        return Err("must be 1 to 64 characters".into());
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err("only letters, digits, '-' and '_' (it is a NATS subject token)".into());
    }
    Ok(())
}

/// `hostname-pid`, made a valid subject token; random if there is no hostname.
fn default_node_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("node{:x}", rand::random::<u32>()));
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(48)
        .collect();
    format!("{host}-{}", std::process::id())
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

#[cfg(test)]
mod redact_tests {
    use super::redact_url;

    #[test]
    fn secrets_in_backend_urls_are_never_shown() {
        for (url, shown) in [
            ("redis://h:6379", "redis://h:6379"),
            ("redis://:s3cret@h:6379/0", "redis://:***@h:6379/0"),
            ("rediss://app:s3cret@h:6380", "rediss://app:***@h:6380"),
            ("nats://tok3n@h:4222", "nats://***@h:4222"),
            (
                "redis://:a@h1:1,redis://:b@h2:2",
                "redis://:***@h1:1,redis://:***@h2:2",
            ),
            ("redis+cluster://h1:1,h2:2", "redis+cluster://h1:1,h2:2"),
            ("nats://u:p@ss@h:4222", "nats://u:***@h:4222"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }
}

//! The flags (and their environment variables) as clap reads them:
//! [`Args`]. [`super::Config::from_args`] validates them.

use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;

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

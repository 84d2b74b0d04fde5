//! [`RedisStore`]: the `Store` and `Leases` traits on Redis (standalone or
//! Redis Cluster).
//!
//! Key layout, `P` the prefix (default `presence`), `k` the shard of the AoR
//! (`presence_core::shard_of(aor, S)`); every key of shard `k` carries the
//! hash tag `{k}`, so each commit is one Lua script on one node:
//!
//! | key | type | holds | TTL |
//! | --- | --- | --- | --- |
//! | `P:{k}:p:<event>:<aor>` | HASH etag → publication | soft state | latest deadline + grace |
//! | `P:{k}:b:<aor>` | HASH n, v | binding list | latest binding deadline + grace |
//! | `P:{k}:s:<id>` | STRING | subscription | its deadline + grace |
//! | `P:{k}:w:<event>:<aor>` | SET of ids | watchers | latest deadline + grace |
//! | `P:{k}:d:<event>:<aor>` | HASH v, c, b | document, version | the latest deadline of its publications and watchers + grace (so its version never goes back while a watcher lives); none while hard state exists. Deleted by the compositor when nothing backs it |
//! | `P:{k}:h:<event>:<aor>` | STRING | hard state | none (operator data, removed by the admin API) |
//! | `P:{k}:k:<aor>` | STRING | a known AoR (registered or published) | `KNOWN_TTL` (30 days) from its last REGISTER / PUBLISH |
//! | `P:{k}:x` | ZSET deadline → ExpiryKey | expiry index | none |
//! | `P:{k}:q` | SET of subscription ids | subscriptions held pending (a `confirm` rule) | none (kept by the subscription ops) |
//! | `P:{k}:n` | HASH p, s, b, d | record counters for `counts()` | none |
//! | `P:{k}:l` | HASH o, t | shard lease (owner, token) | the lease TTL |
//! | `P:{k}:f` | counter | last fencing token | none |
//! | `P:{k}:oq` | ZSET (scores 0) of outbox ids | outbox order | none |
//! | `P:{k}:o` | HASH outbox id → notify job | outbox | none (emptied by the relay) |
//! | `P:sid:<id>` | HASH k, c, v, e | shard of a subscription id, NOTIFY CSeq, the version it carried, ended mark | deadline + grace (at least grace once ended) |
//!
//! Subscription ids (the compositor's random To-tags) do not say their shard,
//! so `P:sid:<id>` maps them. It is written before the batch that stores the
//! subscription (so a stored subscription can always be found) and outlives
//! it by its TTL (the terminating NOTIFY still needs the CSeq counter).

use crate::codec;
use crate::config::RedisConfig;
use crate::metrics::RedisMetrics;
use crate::scripts;
use async_trait::async_trait;
use bytes::Bytes;
use presence_core::commands::NotifyJob;
use presence_core::{shard_of, Binding, Document, Publication, Subscription, View};
use presence_store::{Counts, ExpiryKey, Lease, Leases, Op, Store, StoreError, StoreResult};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, RedisError, RedisFuture, Script, Value};
use std::future::Future;
use std::time::{Duration, Instant};

/// One connection handle (cheap to clone, multiplexed) to either kind of
/// deployment.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

struct Scripts {
    commit: Script,
    locate: Script,
    next_cseq: Script,
    end_cseq: Script,
    outbox: Script,
    acquire: Script,
    renew: Script,
    release: Script,
}

pub struct RedisStore {
    conn: Conn,
    shards: u32,
    grace_ms: u64,
    prefix: String,
    scripts: Scripts,
    metrics: RedisMetrics,
}

fn backend(e: RedisError) -> StoreError {
    if e.code() == Some("FENCED") {
        StoreError::Fenced
    } else {
        StoreError::Backend(e.to_string())
    }
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Backend(format!("undecodable {what} record in Redis"))
}

fn ms(d: Duration) -> u64 {
    (d.as_millis() as u64).max(1)
}

/// `<len>:<event>:<aor>`, the head of a stored subscription.
/// How long an AoR stays known (a SUBSCRIBE to it gets a NOTIFY of no
/// state rather than 404) after its last REGISTER or PUBLISH.
pub const KNOWN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

fn watcher_suffix(event: &str, aor: &str) -> String {
    format!("{event}:{aor}")
}

/// Split a stored subscription into (event, aor, encoded record).
fn split_subscription(v: &[u8]) -> Option<(&str, &str, &[u8])> {
    let colon = v.iter().position(|b| *b == b':')?;
    let n: usize = std::str::from_utf8(&v[..colon]).ok()?.parse().ok()?;
    let rest = &v[colon + 1..];
    if rest.len() < n {
        return None;
    }
    let (suffix, record) = rest.split_at(n);
    let (event, aor) = std::str::from_utf8(suffix).ok()?.split_once(':')?;
    Some((event, aor, record))
}

fn decode_stored_subscription(v: &[u8]) -> Option<Subscription> {
    let (event, aor, record) = split_subscription(v)?;
    codec::decode_subscription(aor, event, record)
}

/// The AoR an op belongs to, if it names one.
fn op_aor(op: &Op) -> Option<&str> {
    match op {
        Op::PutPublication(p) => Some(&p.aor),
        Op::PutSubscription(s) => Some(&s.aor),
        Op::DeletePublication { aor, .. }
        | Op::PutBindings { aor, .. }
        | Op::PutDocument { aor, .. }
        | Op::DeleteDocument { aor, .. }
        | Op::PutHardState { aor, .. }
        | Op::DeleteHardState { aor, .. }
        | Op::MarkKnown { aor } => Some(aor),
        Op::Unindex(ExpiryKey::Publication { aor, .. } | ExpiryKey::Bindings { aor }) => Some(aor),
        // A job may announce another shard's AoR (a terminated watcher's
        // subscription belongs to its presentity's shard, as its batch does).
        Op::DeleteSubscription { .. }
        | Op::Unindex(ExpiryKey::Subscription { .. })
        | Op::Enqueue { .. } => None,
    }
}

impl RedisStore {
    /// Connect (standalone through a reconnecting `ConnectionManager`, or
    /// Redis Cluster) and register the metrics in `registry`.
    pub async fn connect(
        config: RedisConfig,
        registry: &prometheus::Registry,
    ) -> StoreResult<RedisStore> {
        let metrics = RedisMetrics::register(registry)
            .map_err(|e| StoreError::Backend(format!("metrics: {e}")))?;
        // The redis crate's TLS takes the process's default provider: ring,
        // as everywhere in this server (no C crypto toolchain needed).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let certs = || redis::TlsCertificates {
            client_tls: config
                .tls_client
                .as_ref()
                .map(|(cert, key)| redis::ClientTlsConfig {
                    client_cert: cert.clone(),
                    client_key: key.clone(),
                }),
            root_cert: config.tls_ca.clone(),
        };
        let conn = if config.cluster {
            let mut builder = ClusterClient::builder(config.urls.clone())
                .connection_timeout(config.timeout)
                .response_timeout(config.timeout);
            if config.tls() {
                builder = builder.certs(certs());
            }
            if let Some(p) = &config.password {
                builder = builder.password(p);
            }
            let client = builder.build().map_err(backend)?;
            Conn::Cluster(client.get_async_connection().await.map_err(backend)?)
        } else {
            let url = config
                .urls
                .first()
                .ok_or_else(|| StoreError::Backend("no Redis URL".into()))?;
            use redis::IntoConnectionInfo;
            let mut info = url.as_str().into_connection_info().map_err(backend)?;
            if let Some(p) = &config.password {
                let settings = info.redis_settings().clone().set_password(p);
                info = info.set_redis_settings(settings);
            }
            let client = if config.tls() {
                redis::Client::build_with_tls(info, certs()).map_err(backend)?
            } else {
                redis::Client::open(info).map_err(backend)?
            };
            let cfg = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(config.timeout))
                .set_response_timeout(Some(config.timeout))
                .set_number_of_retries(3);
            Conn::Single(
                client
                    .get_connection_manager_with_config(cfg)
                    .await
                    .map_err(backend)?,
            )
        };
        let store = RedisStore {
            conn,
            shards: config.shards.max(1),
            grace_ms: ms(config.grace),
            prefix: config.prefix,
            scripts: Scripts {
                commit: Script::new(scripts::COMMIT),
                locate: Script::new(scripts::LOCATE),
                next_cseq: Script::new(scripts::NEXT_CSEQ),
                end_cseq: Script::new(scripts::END_CSEQ),
                outbox: Script::new(scripts::OUTBOX),
                acquire: Script::new(scripts::ACQUIRE),
                renew: Script::new(scripts::RENEW),
                release: Script::new(scripts::RELEASE),
            },
            metrics,
        };
        // Fail now, not at the first request, when the server refuses us
        // (a wrong or missing password: NOAUTH, WRONGPASS).
        let _: String = store.query(&redis::cmd("PING")).await?;
        Ok(store)
    }

    pub fn metrics(&self) -> &RedisMetrics {
        &self.metrics
    }

    /// `<prefix>:{<shard>}:`, the start of every key of `shard`.
    pub fn shard_prefix(&self, shard: u32) -> String {
        format!("{}:{{{}}}:", self.prefix, shard)
    }

    fn shard_key(&self, shard: u32, rest: &str) -> String {
        format!("{}:{{{}}}:{}", self.prefix, shard, rest)
    }

    fn aor_key(&self, kind: &str, aor: &str, event: Option<&str>) -> String {
        let shard = shard_of(aor, self.shards);
        match event {
            Some(e) => self.shard_key(shard, &format!("{kind}:{e}:{aor}")),
            None => self.shard_key(shard, &format!("{kind}:{aor}")),
        }
    }

    fn sid_key(&self, id: &str) -> String {
        format!("{}:sid:{}", self.prefix, id)
    }

    async fn timed<T>(
        &self,
        op: &'static str,
        f: impl Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        let start = Instant::now();
        let r = f.await;
        self.metrics
            .duration
            .with_label_values(&[op])
            .observe(start.elapsed().as_secs_f64());
        match &r {
            Err(StoreError::Fenced) => self.metrics.fenced.inc(),
            Err(e) => {
                self.metrics.errors.with_label_values(&[op]).inc();
                tracing::debug!(op, error = %e, "redis store operation failed");
            }
            Ok(_) => {}
        }
        r
    }

    fn is_cluster(&self) -> bool {
        matches!(self.conn, Conn::Cluster(_))
    }

    /// One call of the CSeq script for these counters (all in one slot).
    async fn take_cseqs(&self, asks: &[(String, u64)]) -> StoreResult<Vec<Option<u32>>> {
        let mut c = self.conn.clone();
        let mut call = self.scripts.next_cseq.prepare_invoke();
        for (id, _) in asks {
            call.key(self.sid_key(id));
        }
        call.arg(self.grace_ms);
        for (_, version) in asks {
            call.arg(version.to_string());
        }
        let got: Vec<i64> = call.invoke_async(&mut c).await.map_err(backend)?;
        if got.len() != asks.len() {
            return Err(corrupt("CSeq counters"));
        }
        got.into_iter()
            .map(|n| match n {
                0 => Ok(None),
                n => u32::try_from(n)
                    .map(Some)
                    .map_err(|_| StoreError::Backend(format!("CSeq counter out of range: {n}"))),
            })
            .collect()
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &Cmd) -> StoreResult<T> {
        let mut c = self.conn.clone();
        cmd.query_async(&mut c).await.map_err(backend)
    }

    async fn commit_inner(
        &self,
        shard: u32,
        fence: Option<&Lease>,
        ops: Vec<Op>,
    ) -> StoreResult<Vec<u64>> {
        if shard >= self.shards {
            return Err(StoreError::Backend(format!(
                "shard {shard} out of range (S = {})",
                self.shards
            )));
        }
        if let Some(aor) = ops
            .iter()
            .filter_map(op_aor)
            .find(|a| shard_of(a, self.shards) != shard)
        {
            return Err(StoreError::Backend(format!(
                "{aor} belongs to shard {}, not {shard}",
                shard_of(aor, self.shards)
            )));
        }
        let tag = self.shard_prefix(shard);
        let mut keys: Vec<Vec<u8>> = vec![
            format!("{tag}x").into_bytes(),
            format!("{tag}l").into_bytes(),
            format!("{tag}n").into_bytes(),
        ];
        let mut args: Vec<Vec<u8>> = vec![
            fence
                .map(|f| f.token.to_string())
                .unwrap_or_default()
                .into_bytes(),
            fence
                .map(|f| f.owner.clone())
                .unwrap_or_default()
                .into_bytes(),
            self.grace_ms.to_string().into_bytes(),
            tag.clone().into_bytes(),
        ];
        let mut located: Vec<(String, u64)> = Vec::new();
        for op in ops {
            match op {
                Op::PutPublication(p) => {
                    let member = codec::encode_expiry_key(&ExpiryKey::Publication {
                        aor: p.aor.clone(),
                        event: p.event.clone(),
                        etag: p.etag.clone(),
                    });
                    keys.push(format!("{tag}p:{}:{}", p.event, p.aor).into_bytes());
                    keys.push(format!("{tag}d:{}", watcher_suffix(&p.event, &p.aor)).into_bytes());
                    args.push(b"P".to_vec());
                    args.push(p.etag.clone().into_bytes());
                    args.push(member);
                    args.push(p.expires_at_ms.to_string().into_bytes());
                    args.push(codec::encode_publication(&p));
                }
                Op::DeletePublication { aor, event, etag } => {
                    keys.push(format!("{tag}p:{event}:{aor}").into_bytes());
                    let member = codec::encode_expiry_key(&ExpiryKey::Publication {
                        aor,
                        event,
                        etag: etag.clone(),
                    });
                    args.push(b"p".to_vec());
                    args.push(etag.into_bytes());
                    args.push(member);
                }
                Op::PutBindings { aor, bindings } => {
                    keys.push(format!("{tag}b:{aor}").into_bytes());
                    let min = bindings.iter().map(|b| b.expires_at_ms).min().unwrap_or(0);
                    let max = bindings.iter().map(|b| b.expires_at_ms).max().unwrap_or(0);
                    args.push(b"B".to_vec());
                    args.push(codec::encode_expiry_key(&ExpiryKey::Bindings { aor }));
                    args.push(bindings.len().to_string().into_bytes());
                    args.push(min.to_string().into_bytes());
                    args.push(max.to_string().into_bytes());
                    args.push(codec::encode_bindings(&bindings));
                }
                Op::PutSubscription(s) => {
                    let suffix = watcher_suffix(&s.event, &s.aor);
                    keys.push(format!("{tag}s:{}", s.id).into_bytes());
                    keys.push(format!("{tag}w:{suffix}").into_bytes());
                    keys.push(format!("{tag}d:{suffix}").into_bytes());
                    keys.push(format!("{tag}q").into_bytes());
                    let mut value = format!("{}:{suffix}", suffix.len()).into_bytes();
                    value.extend_from_slice(&codec::encode_subscription(&s));
                    args.push(b"S".to_vec());
                    args.push(s.id.clone().into_bytes());
                    args.push(codec::encode_expiry_key(&ExpiryKey::Subscription {
                        id: s.id.clone(),
                    }));
                    args.push(s.expires_at_ms.to_string().into_bytes());
                    args.push(value);
                    args.push(if s.view == View::Pending { b"1" } else { b"0" }.to_vec());
                    located.push((s.id, s.expires_at_ms));
                }
                Op::DeleteSubscription { id } => {
                    keys.push(format!("{tag}s:{id}").into_bytes());
                    keys.push(format!("{tag}q").into_bytes());
                    args.push(b"s".to_vec());
                    args.push(id.clone().into_bytes());
                    args.push(codec::encode_expiry_key(&ExpiryKey::Subscription { id }));
                }
                Op::PutDocument {
                    aor,
                    event,
                    content_type,
                    body,
                    first_version,
                } => {
                    // The document lives as long as what backs it: its
                    // publications, its watchers, for ever with hard state.
                    let suffix = watcher_suffix(&event, &aor);
                    for kind in ["d", "p", "w", "h"] {
                        keys.push(format!("{tag}{kind}:{suffix}").into_bytes());
                    }
                    args.push(b"D".to_vec());
                    args.push(content_type.into_bytes());
                    args.push(body.to_vec());
                    args.push(first_version.max(1).to_string().into_bytes());
                }
                Op::DeleteDocument { aor, event } => {
                    keys.push(format!("{tag}d:{}", watcher_suffix(&event, &aor)).into_bytes());
                    args.push(b"X".to_vec());
                }
                Op::PutHardState { aor, event, body } => {
                    let suffix = watcher_suffix(&event, &aor);
                    for kind in ["h", "d", "p", "w"] {
                        keys.push(format!("{tag}{kind}:{suffix}").into_bytes());
                    }
                    args.push(b"H".to_vec());
                    args.push(body.to_vec());
                }
                Op::DeleteHardState { aor, event } => {
                    let suffix = watcher_suffix(&event, &aor);
                    for kind in ["h", "d", "p", "w"] {
                        keys.push(format!("{tag}{kind}:{suffix}").into_bytes());
                    }
                    args.push(b"h".to_vec());
                }
                Op::MarkKnown { aor } => {
                    keys.push(format!("{tag}k:{aor}").into_bytes());
                    args.push(b"K".to_vec());
                    args.push(KNOWN_TTL.as_millis().to_string().into_bytes());
                }
                Op::Unindex(key) => {
                    args.push(b"U".to_vec());
                    args.push(codec::encode_expiry_key(&key));
                }
                Op::Enqueue { id, job } => {
                    keys.push(format!("{tag}oq").into_bytes());
                    keys.push(format!("{tag}o").into_bytes());
                    args.push(b"Q".to_vec());
                    args.push(id.into_bytes());
                    args.push(codec::encode_job(&job));
                }
            }
        }
        // Map new subscription ids to their shard first: once the batch is
        // in, `subscription(id)` must find it.
        for (id, deadline) in located {
            let mut c = self.conn.clone();
            self.scripts
                .locate
                .key(self.sid_key(&id))
                .arg(shard)
                .arg(deadline)
                .arg(self.grace_ms)
                .invoke_async::<i64>(&mut c)
                .await
                .map_err(backend)?;
        }
        let mut inv = self.scripts.commit.prepare_invoke();
        for k in keys {
            inv.key(k);
        }
        for a in args {
            inv.arg(a);
        }
        let mut c = self.conn.clone();
        inv.invoke_async(&mut c).await.map_err(backend)
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn commit(&self, shard: u32, ops: Vec<Op>) -> StoreResult<Vec<u64>> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        self.timed("commit", self.commit_inner(shard, None, ops))
            .await
    }

    async fn commit_fenced(
        &self,
        shard: u32,
        fence: &Lease,
        ops: Vec<Op>,
    ) -> StoreResult<Vec<u64>> {
        self.timed("commit_fenced", self.commit_inner(shard, Some(fence), ops))
            .await
    }

    async fn publications(&self, aor: &str, event: &str) -> StoreResult<Vec<Publication>> {
        self.timed("publications", async {
            let raw: Vec<Vec<u8>> = self
                .query(redis::cmd("HVALS").arg(self.aor_key("p", aor, Some(event))))
                .await?;
            let mut v = raw
                .iter()
                .map(|b| {
                    codec::decode_publication(aor, event, b).ok_or_else(|| corrupt("publication"))
                })
                .collect::<StoreResult<Vec<_>>>()?;
            v.sort_by_key(|p| (p.modified_ms, p.seq));
            Ok(v)
        })
        .await
    }

    async fn bindings(&self, aor: &str) -> StoreResult<Vec<Binding>> {
        self.timed("bindings", async {
            let raw: Option<Vec<u8>> = self
                .query(
                    redis::cmd("HGET")
                        .arg(self.aor_key("b", aor, None))
                        .arg("v"),
                )
                .await?;
            match raw {
                None => Ok(Vec::new()),
                Some(b) => codec::decode_bindings(aor, &b).ok_or_else(|| corrupt("binding")),
            }
        })
        .await
    }

    async fn subscription(&self, id: &str) -> StoreResult<Option<Subscription>> {
        self.timed("subscription", async {
            // An id that names its shard is read in one round trip; an id
            // of the old form is looked up first.
            let shard = match presence_core::shard_in_id(id).filter(|s| *s < self.shards) {
                Some(s) => Some(s),
                None => {
                    let k: Option<String> = self
                        .query(redis::cmd("HGET").arg(self.sid_key(id)).arg("k"))
                        .await?;
                    k.and_then(|s| s.parse::<u32>().ok())
                }
            };
            let Some(shard) = shard else {
                return Ok(None);
            };
            if shard >= self.shards {
                return Ok(None);
            }
            let raw: Option<Vec<u8>> = self
                .query(redis::cmd("GET").arg(self.shard_key(shard, &format!("s:{id}"))))
                .await?;
            match raw {
                None => Ok(None),
                Some(v) => {
                    let s =
                        decode_stored_subscription(&v).ok_or_else(|| corrupt("subscription"))?;
                    Ok((s.id == id).then_some(s))
                }
            }
        })
        .await
    }

    async fn subscriptions(&self, ids: &[String]) -> StoreResult<Vec<Option<Subscription>>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.timed("subscriptions", async {
            // Ids that name their shard are read with one MGET (one
            // round trip; on a Redis Cluster, where their shards' slots
            // differ, one GET each, all at once); any other id alone.
            let mut out: Vec<Option<Subscription>> = vec![None; ids.len()];
            let mut named = Vec::new();
            let mut other = Vec::new();
            for (i, id) in ids.iter().enumerate() {
                match presence_core::shard_in_id(id).filter(|s| *s < self.shards) {
                    Some(shard) => named.push((i, self.shard_key(shard, &format!("s:{id}")))),
                    None => other.push(i),
                }
            }
            let raws: Vec<Option<Vec<u8>>> = if named.is_empty() {
                Vec::new()
            } else if self.is_cluster() {
                let reads =
                    futures_util::future::join_all(named.iter().map(|(_, key)| async move {
                        self.query::<Option<Vec<u8>>>(redis::cmd("GET").arg(key))
                            .await
                    }))
                    .await;
                reads.into_iter().collect::<StoreResult<_>>()?
            } else {
                let mut mget = redis::cmd("MGET");
                for (_, key) in &named {
                    mget.arg(key);
                }
                self.query(&mget).await?
            };
            if raws.len() != named.len() {
                return Err(corrupt("subscriptions"));
            }
            for ((i, _), raw) in named.iter().zip(raws) {
                if let Some(v) = raw {
                    let s =
                        decode_stored_subscription(&v).ok_or_else(|| corrupt("subscription"))?;
                    out[*i] = (s.id == ids[*i]).then_some(s);
                }
            }
            for i in other {
                out[i] = self.subscription(&ids[i]).await?;
            }
            Ok(out)
        })
        .await
    }

    async fn watcher_ids(&self, aor: &str, event: &str) -> StoreResult<Vec<String>> {
        self.timed("watcher_ids", async {
            self.query(redis::cmd("SMEMBERS").arg(self.aor_key("w", aor, Some(event))))
                .await
        })
        .await
    }

    async fn pending_subscriptions(&self, shard: u32) -> StoreResult<Vec<String>> {
        self.timed("pending_subscriptions", async {
            self.query(redis::cmd("SMEMBERS").arg(self.shard_key(shard, "q")))
                .await
        })
        .await
    }

    async fn is_watched(&self, aor: &str, event: &str) -> StoreResult<bool> {
        // Redis removes a set when its last member goes.
        self.timed("is_watched", async {
            self.query(redis::cmd("EXISTS").arg(self.aor_key("w", aor, Some(event))))
                .await
        })
        .await
    }

    async fn document(&self, aor: &str, event: &str) -> StoreResult<Option<Document>> {
        self.timed("document", async {
            let (v, ct, body): (Option<u64>, Option<String>, Option<Vec<u8>>) = self
                .query(
                    redis::cmd("HMGET")
                        .arg(self.aor_key("d", aor, Some(event)))
                        .arg("v")
                        .arg("c")
                        .arg("b"),
                )
                .await?;
            match (v, ct, body) {
                (Some(version), Some(content_type), Some(body)) => Ok(Some(Document {
                    aor: aor.to_string(),
                    event: event.to_string(),
                    version,
                    content_type,
                    body: Bytes::from(body),
                })),
                _ => Ok(None),
            }
        })
        .await
    }

    async fn hard_state(&self, aor: &str, event: &str) -> StoreResult<Option<Bytes>> {
        self.timed("hard_state", async {
            let raw: Option<Vec<u8>> = self
                .query(redis::cmd("GET").arg(self.aor_key("h", aor, Some(event))))
                .await?;
            Ok(raw.map(Bytes::from))
        })
        .await
    }

    async fn is_known(&self, aor: &str) -> StoreResult<bool> {
        self.timed("is_known", async {
            let n: i64 = self
                .query(redis::cmd("EXISTS").arg(self.aor_key("k", aor, None)))
                .await?;
            Ok(n > 0)
        })
        .await
    }

    async fn due(
        &self,
        shard: u32,
        now_ms: u64,
        limit: usize,
    ) -> StoreResult<Vec<(u64, ExpiryKey)>> {
        if limit == 0 || shard >= self.shards {
            return Ok(Vec::new());
        }
        self.timed("due", async {
            let raw: Vec<Vec<u8>> = self
                .query(
                    redis::cmd("ZRANGEBYSCORE")
                        .arg(self.shard_key(shard, "x"))
                        .arg("-inf")
                        .arg(now_ms)
                        .arg("WITHSCORES")
                        .arg("LIMIT")
                        .arg(0)
                        .arg(limit),
                )
                .await?;
            let mut out = Vec::with_capacity(raw.len() / 2);
            for pair in raw.chunks(2) {
                let [member, score] = pair else {
                    return Err(corrupt("expiry index"));
                };
                let score = std::str::from_utf8(score)
                    .ok()
                    .and_then(|s| {
                        s.parse::<u64>()
                            .ok()
                            .or_else(|| s.parse::<f64>().ok().map(|f| f as u64))
                    })
                    .ok_or_else(|| corrupt("expiry index score"))?;
                match codec::decode_expiry_key(member) {
                    Some(k) => out.push((score, k)),
                    // Not ours to drop (due() only reads): say so and go on.
                    None => tracing::warn!(shard, "undecodable expiry index member skipped"),
                }
            }
            Ok(out)
        })
        .await
    }

    async fn next_cseq(&self, id: &str, version: u64) -> StoreResult<Option<u32>> {
        self.timed("next_cseq", async {
            let ask = [(id.to_string(), version)];
            let mut got = self.take_cseqs(&ask).await?;
            Ok(got.pop().flatten())
        })
        .await
    }

    async fn next_cseqs(&self, asks: &[(String, u64)]) -> StoreResult<Vec<Option<u32>>> {
        if asks.is_empty() {
            return Ok(Vec::new());
        }
        self.timed("next_cseqs", async {
            if !self.is_cluster() {
                return self.take_cseqs(asks).await;
            }
            // Across a Redis Cluster the counters live in different slots:
            // one script call each, all at once (the cluster connection
            // sends each to its node), in order for the same id twice.
            let mut out = Vec::with_capacity(asks.len());
            let mut calls = Vec::new();
            let mut seen = std::collections::HashSet::new();
            let mut rest = Vec::new();
            for (i, ask) in asks.iter().enumerate() {
                if seen.insert(ask.0.as_str()) {
                    calls.push((i, ask.clone()));
                } else {
                    rest.push((i, ask.clone()));
                }
            }
            out.resize(asks.len(), None);
            let results = futures_util::future::join_all(calls.iter().map(|(_, a)| {
                let ask = [a.clone()];
                async move { self.take_cseqs(&ask).await }
            }))
            .await;
            for ((i, _), r) in calls.iter().zip(results) {
                out[*i] = r?.pop().flatten();
            }
            for (i, ask) in rest {
                out[i] = self.take_cseqs(&[ask]).await?.pop().flatten();
            }
            Ok(out)
        })
        .await
    }

    async fn drop_cseq(&self, id: &str) -> StoreResult<()> {
        self.timed("drop_cseq", async {
            let mut c = self.conn.clone();
            let _: i64 = self
                .scripts
                .end_cseq
                .key(self.sid_key(id))
                .arg(self.grace_ms)
                .invoke_async(&mut c)
                .await
                .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn outbox(&self, shard: u32, limit: usize) -> StoreResult<Vec<(String, NotifyJob)>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.timed("outbox", async {
            let mut c = self.conn.clone();
            let flat: Vec<Vec<u8>> = self
                .scripts
                .outbox
                .key(self.shard_key(shard, "oq"))
                .key(self.shard_key(shard, "o"))
                .arg(limit)
                .invoke_async(&mut c)
                .await
                .map_err(backend)?;
            let mut jobs = Vec::new();
            let mut bad: Vec<&[u8]> = Vec::new();
            for pair in flat.chunks(2) {
                let [id, job] = pair else { continue };
                match (std::str::from_utf8(id), codec::decode_job(job)) {
                    (Ok(id), Some(job)) => jobs.push((id.to_string(), job)),
                    _ => bad.push(id),
                }
            }
            // An entry that does not decode (a bug, or a format this build
            // does not know) must not stop the jobs behind it: it is
            // removed, counted and logged.
            if !bad.is_empty() {
                self.metrics
                    .errors
                    .with_label_values(&["outbox_undecodable"])
                    .inc_by(bad.len() as u64);
                tracing::error!(
                    shard,
                    n = bad.len(),
                    "undecodable notify jobs removed from the outbox"
                );
                let mut pipe = redis::pipe();
                pipe.cmd("HDEL")
                    .arg(self.shard_key(shard, "o"))
                    .arg(&bad)
                    .ignore()
                    .cmd("ZREM")
                    .arg(self.shard_key(shard, "oq"))
                    .arg(&bad)
                    .ignore();
                let mut c = self.conn.clone();
                pipe.query_async::<()>(&mut c).await.map_err(backend)?;
            }
            Ok(jobs)
        })
        .await
    }

    async fn outbox_done(&self, shard: u32, ids: &[String]) -> StoreResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        self.timed("outbox_done", async {
            // The job first: an id left without its job (a failure between
            // the two) is skipped and cleaned up by the OUTBOX script.
            let mut pipe = redis::pipe();
            pipe.cmd("HDEL")
                .arg(self.shard_key(shard, "o"))
                .arg(ids)
                .ignore()
                .cmd("ZREM")
                .arg(self.shard_key(shard, "oq"))
                .arg(ids)
                .ignore();
            let mut c = self.conn.clone();
            pipe.query_async::<()>(&mut c).await.map_err(backend)
        })
        .await
    }

    async fn counts(&self) -> StoreResult<Counts> {
        self.timed("counts", async {
            let mut set = tokio::task::JoinSet::new();
            for shard in 0..self.shards {
                let mut c = self.conn.clone();
                let key = self.shard_key(shard, "n");
                set.spawn(async move {
                    redis::cmd("HMGET")
                        .arg(key)
                        .arg("p")
                        .arg("s")
                        .arg("b")
                        .arg("d")
                        .query_async::<[Option<i64>; 4]>(&mut c)
                        .await
                });
            }
            let mut sum = [0i64; 4];
            while let Some(r) = set.join_next().await {
                let v = r
                    .map_err(|e| StoreError::Backend(e.to_string()))?
                    .map_err(backend)?;
                for (s, x) in sum.iter_mut().zip(v) {
                    *s += x.unwrap_or(0);
                }
            }
            let n = |i: usize| sum[i].max(0) as u64;
            Ok(Counts {
                publications: n(0),
                subscriptions: n(1),
                bindings: n(2),
                documents: n(3),
            })
        })
        .await
    }
}

#[async_trait]
impl Leases for RedisStore {
    async fn acquire(&self, shard: u32, owner: &str, ttl: Duration) -> StoreResult<Option<u64>> {
        self.timed("acquire", async {
            let mut c = self.conn.clone();
            self.scripts
                .acquire
                .key(self.shard_key(shard, "l"))
                .key(self.shard_key(shard, "f"))
                .arg(owner)
                .arg(ms(ttl))
                .invoke_async(&mut c)
                .await
                .map_err(backend)
        })
        .await
    }

    async fn renew(&self, shard: u32, owner: &str, token: u64, ttl: Duration) -> StoreResult<bool> {
        self.timed("renew", async {
            let mut c = self.conn.clone();
            let r: i64 = self
                .scripts
                .renew
                .key(self.shard_key(shard, "l"))
                .arg(owner)
                .arg(token)
                .arg(ms(ttl))
                .invoke_async(&mut c)
                .await
                .map_err(backend)?;
            Ok(r == 1)
        })
        .await
    }

    async fn release(&self, shard: u32, owner: &str, token: u64) -> StoreResult<()> {
        self.timed("release", async {
            let mut c = self.conn.clone();
            let _: i64 = self
                .scripts
                .release
                .key(self.shard_key(shard, "l"))
                .arg(owner)
                .arg(token)
                .invoke_async(&mut c)
                .await
                .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn owner_of(&self, shard: u32) -> StoreResult<Option<Lease>> {
        self.timed("owner_of", async {
            let (owner, token): (Option<String>, Option<u64>) = self
                .query(
                    redis::cmd("HMGET")
                        .arg(self.shard_key(shard, "l"))
                        .arg("o")
                        .arg("t"),
                )
                .await?;
            Ok(owner
                .zip(token)
                .map(|(owner, token)| Lease { owner, token }))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_subscriptions_split() {
        let suffix = watcher_suffix("presence", "sip:a@example.com");
        let mut v = format!("{}:{suffix}", suffix.len()).into_bytes();
        v.extend_from_slice(b"\x01rest:with:colons");
        let (e, a, r) = split_subscription(&v).unwrap();
        assert_eq!(
            (e, a, r),
            (
                "presence",
                "sip:a@example.com",
                &b"\x01rest:with:colons"[..]
            )
        );
        for bad in [&b""[..], b"x:presence:a", b"99:short", b"3:abc"] {
            assert!(split_subscription(bad).is_none(), "{bad:?}");
        }
    }
}

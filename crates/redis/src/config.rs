//! How to reach Redis, and the store's settings.

use std::time::Duration;

/// Settings of a [`crate::RedisStore`].
///
/// Standalone or Redis Cluster is chosen from the URLs:
/// - `redis://host:port[/db]`: one standalone server (through a
///   `ConnectionManager` that reconnects);
/// - `redis+cluster://host1:port1,host2:port2,...`: Redis Cluster, with these
///   nodes as seeds;
/// - several `redis://` URLs, comma separated (`redis://a:1,redis://b:2`):
///   Redis Cluster too;
/// - [`RedisConfig::cluster`] forces either mode (e.g. a cluster reached
///   through one seed URL).
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://` URLs of the seed nodes (at least one).
    pub urls: Vec<String>,
    pub cluster: bool,
    /// Number of virtual shards S, the same as the compositors' `--shards`.
    pub shards: u32,
    /// Added to each record's deadline to make its key TTL (the memory safety
    /// net if no compositor sweeps the shard).
    pub grace: Duration,
    /// Prefix of every key (`<prefix>:{<shard>}:...`).
    pub prefix: String,
    /// Connect and response timeout of one round trip.
    pub timeout: Duration,
    /// TLS (`rediss://` URLs): the CA certificates the server's must chain
    /// to (PEM; `None`: the system's roots) and a client certificate and
    /// key (PEM) for servers that verify clients.
    pub tls_ca: Option<Vec<u8>>,
    pub tls_client: Option<(Vec<u8>, Vec<u8>)>,
    /// A password to use instead of (or for lack of) one in the URLs.
    pub password: Option<String>,
}

impl RedisConfig {
    /// Do the URLs ask for TLS?
    pub fn tls(&self) -> bool {
        self.urls.iter().any(|u| u.starts_with("rediss://"))
    }
}

pub const DEFAULT_GRACE: Duration = Duration::from_secs(60);

impl RedisConfig {
    /// Parse a URL spec as described on [`RedisConfig`]; defaults elsewhere
    /// (grace 60 s, prefix `presence`, timeout 2 s).
    pub fn new(spec: &str, shards: u32) -> Result<RedisConfig, String> {
        let parts: Vec<&str> = spec
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if parts.is_empty() {
            return Err("no Redis URL given".into());
        }
        let mut cluster = parts.len() > 1;
        let mut urls = Vec::new();
        for (i, p) in parts.iter().enumerate() {
            let url = if let Some(rest) = p.strip_prefix("redis+cluster://") {
                cluster = true;
                format!("redis://{rest}")
            } else if let Some(rest) = p.strip_prefix("rediss+cluster://") {
                cluster = true;
                format!("rediss://{rest}")
            } else if p.starts_with("redis://") || p.starts_with("rediss://") {
                p.to_string()
            } else if i > 0 && !p.contains("://") {
                // `redis+cluster://a:1,b:2`: later seeds without a scheme.
                let scheme = if urls
                    .first()
                    .is_some_and(|u: &String| u.starts_with("rediss://"))
                {
                    "rediss"
                } else {
                    "redis"
                };
                format!("{scheme}://{p}")
            } else {
                return Err(format!(
                    "unsupported Redis URL {p:?} (use redis://, rediss:// (TLS), redis+cluster:// or rediss+cluster://)"
                ));
            };
            urls.push(url);
        }
        if shards == 0 {
            return Err("the shard count must be at least 1".into());
        }
        Ok(RedisConfig {
            urls,
            cluster,
            shards,
            grace: DEFAULT_GRACE,
            prefix: "presence".into(),
            timeout: Duration::from_secs(2),
            tls_ca: None,
            tls_client: None,
            password: None,
        })
    }

    /// Redis Cluster on these seed nodes.
    pub fn cluster(urls: &[String], shards: u32) -> Result<RedisConfig, String> {
        let mut c = RedisConfig::new(&urls.join(","), shards)?;
        c.cluster = true;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_choose_the_mode() {
        let c = RedisConfig::new("redis://127.0.0.1:6379", 256).unwrap();
        assert_eq!((c.cluster, c.urls.len()), (false, 1));
        let c = RedisConfig::new("redis+cluster://10.0.0.1:7000,10.0.0.2:7000", 16).unwrap();
        assert!(c.cluster);
        assert_eq!(
            c.urls,
            vec!["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"]
        );
        let c = RedisConfig::new("redis://a:1, redis://b:2", 16).unwrap();
        assert!(c.cluster);
        let c = RedisConfig::new("redis+cluster://a:1", 16).unwrap();
        assert_eq!((c.cluster, c.urls[0].as_str()), (true, "redis://a:1"));
        assert!(RedisConfig::new("", 16).is_err());
        assert!(RedisConfig::new("rediss://a:1", 16).unwrap().tls());
        let c = RedisConfig::new("rediss+cluster://a:1,b:2", 16).unwrap();
        assert!(c.cluster && c.tls());
        assert_eq!(c.urls, vec!["rediss://a:1", "rediss://b:2"]);
        assert!(!RedisConfig::new("redis://a:1", 16).unwrap().tls());
        assert!(RedisConfig::new("http://a:1", 16).is_err());
        assert!(RedisConfig::new("redis://a:1", 0).is_err());
    }
}

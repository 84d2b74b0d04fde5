//! The checks and helpers of [`super::Config::from_args`]: roles and the
//! backends they need, URLs, node ids, and the files it loads.

use super::Roles;

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
pub(super) fn parse_roles(target: &str, errors: &mut Vec<String>) -> Option<Roles> {
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
pub(super) fn check_backends(
    target: &str,
    roles: Roles,
    redis: bool,
    nats: bool,
    errors: &mut Vec<String>,
) {
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
pub(super) fn check_api_backends(
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

pub(super) fn check_nats_url(url: &str) -> Result<(), String> {
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

pub(super) fn check_node_id(id: &str) -> Result<(), String> {
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
pub(super) fn default_node_id() -> String {
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
pub(super) fn load_file<T, E: std::fmt::Display>(
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

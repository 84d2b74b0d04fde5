//! Command line, profiles and the resolved settings.
//!
//! Every tunable is an `Option` on the command line and in a profile; the
//! settings take the flag if given, else the profile's value, else the
//! default. All problems are reported at once.

use clap::Parser;
use serde::Deserialize;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

#[derive(Parser, Debug, Default)]
#[command(
    name = "presence-loadtest",
    version,
    about = "Plays many SIP user agents against a presence server and checks that nothing is lost"
)]
pub struct Cli {
    /// Profile: a name in loadtest/profiles (smoke, blf, enterprise-blf, mobile-buddies, carrier) or a path to a .toml file.
    #[arg(long)]
    pub profile: Option<String>,
    /// Server address HOST:PORT, or a comma-separated list of edges: the UAs
    /// are spread over them and fail over to the next one when theirs dies.
    #[arg(long)]
    pub target: Option<String>,
    /// udp, tcp, tls, ws (SIP over WebSocket, RFC 7118) or wss (over TLS).
    #[arg(long)]
    pub transport: Option<String>,
    /// CA certificate (PEM) the server's TLS certificate must chain to
    /// (needed for --transport tls and wss).
    #[arg(long = "tls-ca")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Number of user agents (each with its own AoR).
    #[arg(long)]
    pub users: Option<u32>,
    /// Domain of the AoRs.
    #[arg(long)]
    pub domain: Option<String>,
    /// User name prefix: users are PREFIX000001, PREFIX000002, ...
    #[arg(long = "user-prefix")]
    pub user_prefix: Option<String>,
    /// Number of the first user (to run several generators on disjoint users).
    #[arg(long = "first-user")]
    pub first_user: Option<u32>,
    /// Digest password; `{user}` in it is replaced by the user name (per-user passwords).
    #[arg(long)]
    pub password: Option<String>,
    /// Digest algorithm to answer with: sha-256 or md5.
    #[arg(long = "auth-algorithm")]
    pub auth_algorithm: Option<String>,
    /// Write the server's users file (user@domain:password lines) and run (or exit without --target).
    #[arg(long = "write-users")]
    pub write_users: Option<PathBuf>,
    /// Buddies per user: each UA subscribes to K others.
    #[arg(long)]
    pub buddies: Option<u32>,
    /// Zipf exponent for picking buddies (0 uniform; ~1 gives a few very popular presentities).
    #[arg(long)]
    pub skew: Option<f64>,
    /// The first M users are receptionists: every UA also subscribes to them.
    #[arg(long)]
    pub receptionists: Option<u32>,
    /// Event package played: presence (PIDF) or dialog (BLF: each change
    /// is one step of a call, early → confirmed → terminated, as a PBX
    /// PUBLISHes it; phones SUBSCRIBE to Event: dialog).
    #[arg(long)]
    pub event: Option<String>,
    /// With --event dialog: `line` keeps one publication per line, modified
    /// through its calls; `call` makes one publication per call (initial
    /// PUBLISH when it rings, modified when answered and ended, then left
    /// to expire), as Kamailio's pua_dialoginfo publishes.
    #[arg(long = "dialog-publications")]
    pub dialog_publications: Option<String>,
    /// PUBLISH changes per second in total during the steady state (open loop).
    #[arg(long = "publish-rate")]
    pub publish_rate: Option<f64>,
    /// MESSAGEs per second in total during the steady state (open loop).
    #[arg(long = "message-rate")]
    pub message_rate: Option<f64>,
    /// Steady-state duration in seconds (setup, drain and teardown come on top).
    #[arg(long)]
    pub duration: Option<f64>,
    /// REGISTER Expires (s); refreshed before expiry.
    #[arg(long = "register-expires")]
    pub register_expires: Option<u32>,
    /// PUBLISH Expires (s); refreshed before expiry.
    #[arg(long = "publish-expires")]
    pub publish_expires: Option<u32>,
    /// SUBSCRIBE Expires (s); refreshed before expiry.
    #[arg(long = "subscribe-expires")]
    pub subscribe_expires: Option<u32>,
    /// Seconds a change has to reach every watcher (and a MESSAGE its target).
    #[arg(long = "notify-deadline")]
    pub notify_deadline: Option<f64>,
    /// Requests per second while registering, publishing, subscribing and tearing down.
    #[arg(long = "setup-rate")]
    pub setup_rate: Option<f64>,
    /// Most setup/teardown transactions in flight at once.
    #[arg(long = "max-inflight")]
    pub max_inflight: Option<u32>,
    /// UDP sockets shared by the UAs.
    #[arg(long)]
    pub sockets: Option<u32>,
    /// TCP connections shared by the UAs.
    #[arg(long)]
    pub connections: Option<u32>,
    /// Skip the teardown (un-SUBSCRIBE, remove publications, unregister).
    #[arg(long = "no-teardown")]
    pub no_teardown: bool,
    /// Request failures (timeouts, unexpected non-2xx) tolerated before the run fails.
    #[arg(long = "max-errors")]
    pub max_errors: Option<u64>,
    /// Random seed (default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Write the report as JSON to FILE.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Draw latency and rate over time as SVG to FILE.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Show live progress on stderr even when it is not a terminal.
    #[arg(long)]
    pub progress: bool,
    /// Never show live progress.
    #[arg(long = "no-progress")]
    pub no_progress: bool,
}

/// A profile file: the same names as the flags, with `_` for `-`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub description: Option<String>,
    pub target: Option<String>,
    pub transport: Option<String>,
    pub users: Option<u32>,
    pub domain: Option<String>,
    pub user_prefix: Option<String>,
    pub first_user: Option<u32>,
    pub password: Option<String>,
    pub auth_algorithm: Option<String>,
    pub buddies: Option<u32>,
    pub skew: Option<f64>,
    pub receptionists: Option<u32>,
    pub event: Option<String>,
    pub dialog_publications: Option<String>,
    pub publish_rate: Option<f64>,
    pub message_rate: Option<f64>,
    pub duration: Option<f64>,
    pub register_expires: Option<u32>,
    pub publish_expires: Option<u32>,
    pub subscribe_expires: Option<u32>,
    pub notify_deadline: Option<f64>,
    pub setup_rate: Option<f64>,
    pub max_inflight: Option<u32>,
    pub sockets: Option<u32>,
    pub connections: Option<u32>,
    pub teardown: Option<bool>,
    pub max_errors: Option<u64>,
    pub seed: Option<u64>,
}

const BUILTIN: [(&str, &str); 5] = [
    ("smoke", include_str!("../profiles/smoke.toml")),
    ("blf", include_str!("../profiles/blf.toml")),
    (
        "enterprise-blf",
        include_str!("../profiles/enterprise-blf.toml"),
    ),
    (
        "mobile-buddies",
        include_str!("../profiles/mobile-buddies.toml"),
    ),
    ("carrier", include_str!("../profiles/carrier.toml")),
];

/// Load a profile: a path, else `loadtest/profiles/NAME.toml` under the
/// working directory, else the copy built into the binary.
pub fn load_profile(name: &str) -> Result<(String, Profile), String> {
    let mut candidates = vec![PathBuf::from(name)];
    if !name.ends_with(".toml") {
        candidates.push(PathBuf::from(format!("loadtest/profiles/{name}.toml")));
        candidates.push(PathBuf::from(format!("profiles/{name}.toml")));
    }
    let (origin, text) = match candidates.iter().find(|p| p.is_file()) {
        Some(p) => (
            p.display().to_string(),
            std::fs::read_to_string(p).map_err(|e| format!("--profile {}: {e}", p.display()))?,
        ),
        None => match BUILTIN.iter().find(|(n, _)| *n == name) {
            Some((n, t)) => (format!("built-in {n}"), t.to_string()),
            None => {
                return Err(format!(
                "--profile {name}: no such file, and not a built-in profile (smoke, blf, enterprise-blf, mobile-buddies, carrier)"
            ))
            }
        },
    };
    let p: Profile = toml::from_str(&text).map_err(|e| format!("--profile {origin}: {e}"))?;
    Ok((origin, p))
}

/// The event package a run plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// RFC 3856 presence, PIDF bodies.
    Presence,
    /// RFC 4235 dialog state (BLF), dialog-info bodies.
    Dialog,
}

impl Event {
    pub fn name(&self) -> &'static str {
        match self {
            Event::Presence => "presence",
            Event::Dialog => "dialog",
        }
    }
    pub fn content_type(&self) -> &'static str {
        match self {
            Event::Presence => "application/pidf+xml",
            Event::Dialog => "application/dialog-info+xml",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
    /// SIP over WebSocket (RFC 7118): one SIP message per WebSocket message.
    Ws,
    /// SIP over secure WebSocket (WebSocket over TLS).
    Wss,
}

impl Transport {
    pub fn via(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
            Transport::Ws => "WS",
            Transport::Wss => "WSS",
        }
    }

    /// Lower case, as in `transport=` and the report.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Ws => "ws",
            Transport::Wss => "wss",
        }
    }

    /// Over connections (not datagrams).
    pub fn is_stream(self) -> bool {
        self != Transport::Udp
    }

    /// Over TLS (needs `--tls-ca`).
    pub fn is_tls(self) -> bool {
        matches!(self, Transport::Tls | Transport::Wss)
    }
}

/// Everything a run needs, resolved and checked.
#[derive(Debug, Clone)]
pub struct Settings {
    pub profile: Option<String>,
    /// The first of `targets`.
    pub target: Option<SocketAddr>,
    /// Every target given (one unless a comma list).
    pub targets: Vec<SocketAddr>,
    pub transport: Transport,
    /// The CA a TLS server's certificate must chain to.
    pub tls_ca: Option<std::path::PathBuf>,
    pub users: u32,
    pub domain: String,
    pub user_prefix: String,
    pub first_user: u32,
    pub password: Option<String>,
    pub auth_algorithm: crate::digest::Alg,
    pub write_users: Option<PathBuf>,
    pub buddies: u32,
    pub skew: f64,
    pub receptionists: u32,
    pub event: Event,
    /// `--dialog-publications call`: one publication per call.
    pub publication_per_call: bool,
    pub publish_rate: f64,
    pub message_rate: f64,
    pub duration: f64,
    pub register_expires: u32,
    pub publish_expires: u32,
    pub subscribe_expires: u32,
    pub notify_deadline: f64,
    pub setup_rate: f64,
    pub max_inflight: u32,
    pub sockets: u32,
    pub connections: u32,
    pub teardown: bool,
    pub max_errors: u64,
    pub seed: u64,
    pub report: Option<PathBuf>,
    pub plot: Option<PathBuf>,
    pub progress: Option<bool>,
}

impl Settings {
    pub fn resolve(cli: Cli) -> Result<Settings, Vec<String>> {
        let mut errors = Vec::new();
        let (profile_name, p) = match &cli.profile {
            Some(name) => match load_profile(name) {
                Ok((origin, p)) => (Some(origin), p),
                Err(e) => {
                    errors.push(e);
                    (None, Profile::default())
                }
            },
            None => (None, Profile::default()),
        };
        macro_rules! pick {
            ($f:ident, $default:expr) => {
                cli.$f.clone().or(p.$f.clone()).unwrap_or($default)
            };
        }
        let target_text = cli.target.clone().or(p.target.clone());
        let mut targets = Vec::new();
        for t in target_text.iter().flat_map(|t| t.split(',')) {
            let t = t.trim();
            match t.to_socket_addrs().map(|mut a| a.next()) {
                Ok(Some(a)) => targets.push(a),
                Ok(None) | Err(_) => {
                    errors.push(format!("--target {t:?}: not a HOST:PORT that resolves"));
                }
            }
        }
        let target = targets.first().copied();
        let transport = match pick!(transport, "udp".to_string())
            .to_ascii_lowercase()
            .as_str()
        {
            "udp" => Transport::Udp,
            "tcp" => Transport::Tcp,
            "tls" => Transport::Tls,
            "ws" => Transport::Ws,
            "wss" => Transport::Wss,
            other => {
                errors.push(format!("--transport {other:?}: udp, tcp, tls, ws or wss"));
                Transport::Udp
            }
        };
        if transport.is_tls() && cli.tls_ca.is_none() {
            errors.push(format!(
                "--transport {} needs --tls-ca (the server certificate's CA)",
                transport.name()
            ));
        }
        let event = match pick!(event, "presence".to_string())
            .to_ascii_lowercase()
            .as_str()
        {
            "presence" => Event::Presence,
            "dialog" => Event::Dialog,
            other => {
                errors.push(format!("--event {other:?}: presence or dialog"));
                Event::Presence
            }
        };
        let publication_per_call = match pick!(dialog_publications, "line".to_string())
            .to_ascii_lowercase()
            .as_str()
        {
            "line" => false,
            "call" => true,
            other => {
                errors.push(format!("--dialog-publications {other:?}: line or call"));
                false
            }
        };
        let alg_text = pick!(auth_algorithm, "sha-256".to_string());
        let auth_algorithm = crate::digest::parse_alg(&alg_text).unwrap_or_else(|| {
            errors.push(format!("--auth-algorithm {alg_text:?}: sha-256 or md5"));
            crate::digest::Alg::Sha256
        });
        let s = Settings {
            profile: profile_name,
            target,
            targets,
            transport,
            tls_ca: cli.tls_ca.clone(),
            users: pick!(users, 100),
            domain: pick!(domain, "example.com".to_string()),
            user_prefix: pick!(user_prefix, "u".to_string()),
            first_user: pick!(first_user, 1),
            password: cli.password.clone().or(p.password.clone()),
            auth_algorithm,
            write_users: cli.write_users.clone(),
            buddies: pick!(buddies, 5),
            skew: pick!(skew, 0.0),
            receptionists: pick!(receptionists, 0),
            event,
            publication_per_call,
            publish_rate: pick!(publish_rate, 10.0),
            message_rate: pick!(message_rate, 0.0),
            duration: pick!(duration, 10.0),
            register_expires: pick!(register_expires, 3600),
            publish_expires: pick!(publish_expires, 3600),
            subscribe_expires: pick!(subscribe_expires, 3600),
            notify_deadline: pick!(notify_deadline, 5.0),
            setup_rate: pick!(setup_rate, 2000.0),
            max_inflight: pick!(max_inflight, 2000),
            sockets: pick!(sockets, 4),
            connections: pick!(connections, 4),
            teardown: !cli.no_teardown && p.teardown.unwrap_or(true),
            max_errors: pick!(max_errors, 0),
            seed: cli.seed.or(p.seed).unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            }),
            report: cli.report.clone(),
            plot: cli.plot.clone(),
            progress: if cli.progress {
                Some(true)
            } else if cli.no_progress {
                Some(false)
            } else {
                None
            },
        };
        if s.users == 0 || s.users > 10_000_000 {
            errors.push("--users must be between 1 and 10000000".into());
        }
        if s.domain.is_empty() || s.domain.contains(['@', ':', '/', ' ', ';']) {
            errors.push(format!("--domain {:?}: a host name", s.domain));
        }
        if s.user_prefix.is_empty()
            || !s
                .user_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            errors.push("--user-prefix: letters, digits, '-', '_' or '.'".into());
        }
        if s.first_user.checked_add(s.users).is_none() || s.first_user + s.users > 1_000_000_000 {
            errors.push("--first-user + --users must stay below 1000000000".into());
        }
        if let Some(pw) = &s.password {
            if pw.is_empty() || pw.contains(['\n', '\r', '"']) {
                errors.push("--password: non-empty, no quotes or line breaks".into());
            }
        }
        if s.write_users.is_some() && s.password.is_none() {
            errors.push("--write-users needs --password".into());
        }
        if s.target.is_none() && s.write_users.is_none() {
            errors.push("--target HOST:PORT is needed (in a profile or as a flag)".into());
        }
        if s.users > 0 && s.buddies >= s.users {
            errors.push(format!(
                "--buddies {} must be below --users {}",
                s.buddies, s.users
            ));
        }
        if s.receptionists > s.users {
            errors.push("--receptionists must not exceed --users".into());
        }
        for (name, v) in [
            ("--publish-rate", s.publish_rate),
            ("--message-rate", s.message_rate),
            ("--skew", s.skew),
        ] {
            if !v.is_finite() || v < 0.0 {
                errors.push(format!("{name} must be a number >= 0"));
            }
        }
        for (name, v) in [
            ("--duration", s.duration),
            ("--notify-deadline", s.notify_deadline),
            ("--setup-rate", s.setup_rate),
        ] {
            if !v.is_finite() || v <= 0.0 {
                errors.push(format!("{name} must be a number > 0"));
            }
        }
        for (name, v) in [
            ("--register-expires", s.register_expires),
            ("--publish-expires", s.publish_expires),
            ("--subscribe-expires", s.subscribe_expires),
        ] {
            if v < 2 {
                errors.push(format!(
                    "{name} must be at least 2 s (refreshes happen before expiry)"
                ));
            }
        }
        if s.max_inflight == 0 {
            errors.push("--max-inflight must be at least 1".into());
        }
        if s.sockets == 0 || s.sockets > 1024 {
            errors.push("--sockets must be between 1 and 1024".into());
        }
        if s.connections == 0 || s.connections > 1024 {
            errors.push("--connections must be between 1 and 1024".into());
        }
        if errors.is_empty() {
            Ok(s)
        } else {
            Err(errors)
        }
    }

    /// User name of UA `i`.
    pub fn user(&self, i: u32) -> String {
        format!("{}{:06}", self.user_prefix, self.first_user + i)
    }

    /// UA index of a user name, if it is one of ours.
    pub fn index_of(&self, user: &[u8]) -> Option<u32> {
        let digits = user.strip_prefix(self.user_prefix.as_bytes())?;
        let n = crate::scan::parse_u32(digits)?;
        let i = n.checked_sub(self.first_user)?;
        (i < self.users).then_some(i)
    }

    pub fn password_of(&self, user: &str) -> Option<String> {
        self.password.as_ref().map(|p| p.replace("{user}", user))
    }

    /// The users file for the server.
    pub fn users_file(&self) -> String {
        let mut out = String::with_capacity(self.users as usize * 40);
        for i in 0..self.users {
            let u = self.user(i);
            let pw = self.password_of(&u).unwrap_or_default();
            out.push_str(&format!("{u}@{}:{pw}\n", self.domain));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_profiles_parse_and_resolve() {
        for (name, _) in BUILTIN {
            let cli = Cli {
                profile: Some(name.to_string()),
                target: Some("127.0.0.1:5060".into()),
                ..Cli::default()
            };
            let s = Settings::resolve(cli).unwrap_or_else(|e| panic!("{name}: {e:?}"));
            assert!(s.users > 0, "{name}");
        }
    }

    #[test]
    fn flags_override_profiles_and_errors_come_together() {
        let cli = Cli {
            profile: Some("smoke".into()),
            target: Some("127.0.0.1:5060".into()),
            users: Some(7),
            buddies: Some(2),
            ..Cli::default()
        };
        let s = Settings::resolve(cli).expect("valid");
        assert_eq!(s.users, 7);
        assert_eq!(s.buddies, 2);
        let bad = Cli {
            transport: Some("sctp".into()),
            users: Some(0),
            publish_rate: Some(-1.0),
            ..Cli::default()
        };
        let errs = Settings::resolve(bad).expect_err("invalid");
        assert!(errs.len() >= 4, "{errs:?}");
    }

    #[test]
    fn a_target_list_gives_every_target() {
        let cli = Cli {
            target: Some("127.0.0.1:5060, 127.0.0.1:5062".into()),
            ..Cli::default()
        };
        let s = Settings::resolve(cli).expect("valid");
        let want: Vec<SocketAddr> = vec![
            "127.0.0.1:5060".parse().expect("addr"),
            "127.0.0.1:5062".parse().expect("addr"),
        ];
        assert_eq!(s.targets, want);
        assert_eq!(s.target, Some(want[0]));
        let bad = Cli {
            target: Some("127.0.0.1:5060,nowhere".into()),
            ..Cli::default()
        };
        let errs = Settings::resolve(bad).expect_err("invalid");
        assert!(errs.iter().any(|e| e.contains("nowhere")), "{errs:?}");
    }

    #[test]
    fn user_names_round_trip_and_users_file() {
        let cli = Cli {
            target: Some("127.0.0.1:5060".into()),
            users: Some(3),
            buddies: Some(1),
            password: Some("pw-{user}".into()),
            ..Cli::default()
        };
        let s = Settings::resolve(cli).expect("valid");
        assert_eq!(s.user(0), "u000001");
        assert_eq!(s.index_of(b"u000003"), Some(2));
        assert_eq!(s.index_of(b"u000004"), None);
        assert_eq!(s.index_of(b"x000001"), None);
        assert_eq!(
            s.users_file(),
            "u000001@example.com:pw-u000001\nu000002@example.com:pw-u000002\nu000003@example.com:pw-u000003\n"
        );
    }
}

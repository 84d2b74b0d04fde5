//! `presenced`: the thin binary. Parses configuration, reports every error at
//! once, then runs the roles until SIGTERM / SIGINT.

use clap::Parser;
use presenced::config::{Args, Config};

/// The server allocates many small, short-lived buffers on several threads
/// (one set per message); glibc's allocator spent about 40% of the CPU on them
/// in the fan-out profile (docs/benchmarks.md), mimalloc a fraction of that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let cfg = match Config::from_args(&args) {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors {
                eprintln!("presenced: config error: {e}");
            }
            return std::process::ExitCode::from(2);
        }
    };
    if args.check_config {
        println!(
            "configuration ok: roles {}, node {}, store {}, bus {}, sip {:?}, sip over tls {}, advertised {}, domains {:?}, digest {}, trusted publishers {}, resource lists {}, notify min interval {} ms, http {}, api {}",
            cfg.roles.names(),
            cfg.node_id,
            cfg.redis
                .as_deref()
                .map_or("in-memory".into(), presenced::config::redact_url),
            cfg.nats
                .as_deref()
                .map_or("in-memory".into(), presenced::config::redact_url),
            cfg.sip_listen,
            if cfg.tls.is_some() {
                format!("{:?}", cfg.sip_tls_listen)
            } else {
                "off".to_string()
            },
            if cfg.sip_advertise.is_empty() {
                "(listener or arrival address)".to_string()
            } else {
                cfg.sip_advertise
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            },
            cfg.domains,
            if cfg.users.is_some() {
                cfg.digest_algorithms
                    .iter()
                    .map(|a| a.name())
                    .collect::<Vec<_>>()
                    .join(",")
            } else {
                "off".to_string()
            },
            cfg.trusted_publishers,
            cfg.lists.current().len(),
            cfg.notify_min_interval.as_millis(),
            cfg.http_listen,
            if cfg.roles.api {
                format!(
                    "{} ({}, directory of {} entries, batch {})",
                    cfg.api_listen,
                    match &cfg.api_tokens {
                        Some(t) => match t.current().len() {
                            1 => "1 token".to_string(),
                            n => format!("{n} tokens"),
                        },
                        None if cfg.users.is_some() => "SIP logins only".to_string(),
                        None => "open".to_string(),
                    },
                    cfg.directory.current().len(),
                    cfg.api_batch
                )
            } else {
                "off".to_string()
            }
        );
        return std::process::ExitCode::SUCCESS;
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&args.log).unwrap_or_else(|_| "info".into()),
        )
        // Colour only for a person at a terminal, never in collected logs.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("presenced: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let backends = match (&cfg.redis, &cfg.nats) {
            (None, None) => "in-memory".to_string(),
            (r, n) => format!(
                "redis {}, nats {}",
                r.as_deref()
                    .map_or("-".into(), presenced::config::redact_url),
                n.as_deref()
                    .map_or("-".into(), presenced::config::redact_url)
            ),
        };
        let server = match presenced::start_all(cfg).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("presenced: {e}");
                return std::process::ExitCode::FAILURE;
            }
        };
        tracing::info!(
            roles = %server.roles.names(),
            node = %server.node_id,
            sip = ?server.sip_addrs,
            sip_tls = ?server.sip_tls_addrs,
            sip_ws = ?server.sip_ws_addrs,
            sip_wss = ?server.sip_wss_addrs,
            http = %server.http_addr,
            "presenced ready ({backends})"
        );
        wait_for_signal().await;
        tracing::info!("shutting down");
        server.shutdown().await;
        std::process::ExitCode::SUCCESS
    })
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

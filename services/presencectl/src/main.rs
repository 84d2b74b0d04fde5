//! `presencectl`: the presence API (`presence.v1.PresenceApi`) from a shell,
//! for operators and scripts. Every command is one call (`watch` is one
//! stream); `--output json` prints the API's messages as JSON (one object
//! per line for `watch`), `table` (the default) as aligned text.
//!
//! Exit codes: 0 done, 1 the server refused (its gRPC status is printed;
//! also a `watch` stream the server ended), 2 bad usage or the server
//! cannot be reached.

use clap::{Parser, Subcommand, ValueEnum};
use presence_api::pb;
use presence_api::pb::presence_api_client::PresenceApiClient;
use std::process::ExitCode;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

#[derive(Parser)]
#[command(
    name = "presencectl",
    version,
    about = "Command-line client of the presence API"
)]
struct Cli {
    /// The api role's address: http://HOST:PORT, or HOST:PORT (plaintext;
    /// this client has no TLS).
    #[arg(
        long,
        env = "PRESENCECTL_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    server: String,
    /// A bearer token (--api-tokens, or from `presencectl login`).
    #[arg(long, env = "PRESENCECTL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// How to print answers.
    #[arg(long, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Output {
    Table,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum Status {
    Available,
    Away,
    Busy,
    OnThePhone,
    Offline,
}

#[derive(clap::Args)]
struct StateArgs {
    /// A status to show (needs no document).
    #[arg(long, value_enum, conflicts_with = "document")]
    status: Option<Status>,
    /// A note shown with the status.
    #[arg(long, default_value = "", conflicts_with = "document")]
    note: String,
    /// A document file instead (PIDF for presence).
    #[arg(long)]
    document: Option<std::path::PathBuf>,
    /// The document's content type (default: the package's first).
    #[arg(long, default_value = "")]
    content_type: String,
}

#[derive(Subcommand)]
enum HardState {
    /// Set the hard state shown while nothing is published.
    Set {
        aor: String,
        #[arg(long, default_value = "")]
        event: String,
        #[command(flatten)]
        state: StateArgs,
    },
    /// Clear it.
    Clear {
        aor: String,
        #[arg(long, default_value = "")]
        event: String,
    },
}

#[derive(Subcommand)]
enum Cmd {
    /// The composed state of one or more AoRs.
    Get {
        #[arg(required = true)]
        aors: Vec<String>,
        /// presence (default), dialog, message-summary or reg.
        #[arg(long, default_value = "")]
        event: String,
    },
    /// The current state of AoRs, then every change, until interrupted.
    Watch {
        #[arg(required = true)]
        aors: Vec<String>,
        #[arg(long, default_value = "")]
        event: String,
        /// Seconds between heartbeats (0: the server's default).
        #[arg(long, default_value_t = 0)]
        heartbeat: u32,
    },
    /// Publish a status or a document for an AoR (prints the ETag).
    Publish {
        aor: String,
        #[arg(long, default_value = "")]
        event: String,
        #[command(flatten)]
        state: StateArgs,
        /// Seconds (0: one hour).
        #[arg(long, default_value_t = 0)]
        expires: u32,
        /// Modify or refresh this publication.
        #[arg(long, default_value = "")]
        etag: String,
    },
    /// Remove a publication.
    Unpublish {
        aor: String,
        etag: String,
        #[arg(long, default_value = "")]
        event: String,
    },
    /// Hard state (admin).
    #[command(subcommand, name = "hard-state")]
    HardState(HardState),
    /// The watchers of an AoR (admin).
    Subscriptions {
        aor: String,
        #[arg(long, default_value = "")]
        event: String,
    },
    /// End a subscription: its watcher gets reason=deactivated (admin).
    #[command(name = "end-subscription")]
    EndSubscription { id: String },
    /// The registered contacts of an AoR (admin).
    Registrations { aor: String },
    /// Send a pager-mode MESSAGE.
    Send {
        from: String,
        to: String,
        text: String,
        #[arg(long, default_value = "")]
        content_type: String,
    },
    /// Search the company directory.
    Directory {
        #[arg(default_value = "")]
        query: String,
        /// Entries per page (0: the server's default).
        #[arg(long, default_value_t = 0)]
        page_size: i32,
        /// The page after the one that named this token.
        #[arg(long, default_value = "")]
        page_token: String,
    },
    /// Log in with SIP credentials; prints a session token. The password is
    /// read from the first line of standard input.
    Login { aor: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("presencectl: {e}");
            return ExitCode::from(2);
        }
    };
    rt.block_on(run(cli))
}

type Client = PresenceApiClient<tonic::service::interceptor::InterceptedService<Channel, Auth>>;

#[derive(Clone)]
struct Auth(Option<MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

async fn run(cli: Cli) -> ExitCode {
    let auth = match &cli.token {
        Some(t) => match format!("Bearer {}", t.trim()).parse() {
            Ok(v) => Auth(Some(v)),
            Err(_) => {
                eprintln!("presencectl: the token has characters a header cannot carry");
                return ExitCode::from(2);
            }
        },
        None => Auth(None),
    };
    let endpoint = match endpoint(&cli.server) {
        Ok(e) => e,
        Err(m) => {
            eprintln!("presencectl: --server {}: {m}", cli.server);
            return ExitCode::from(2);
        }
    };
    let channel = match endpoint.connect().await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("presencectl: cannot reach {}: {}", cli.server, causes(&e));
            return ExitCode::from(2);
        }
    };
    let mut client = PresenceApiClient::with_interceptor(channel, auth);
    match command(&mut client, cli.output, cli.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Status(s)) => {
            eprintln!("presencectl: {:?}: {}", s.code(), s.message());
            ExitCode::from(1)
        }
        Err(Failure::Usage(m)) => {
            eprintln!("presencectl: {m}");
            ExitCode::from(2)
        }
    }
}

/// The endpoint `--server` names: `http://HOST:PORT`, or `HOST:PORT` as
/// `--api-listen` is written. Any other scheme is refused: this client has
/// no TLS, and an `https://` server given to it would get the bearer token
/// in clear text.
fn endpoint(server: &str) -> Result<tonic::transport::Endpoint, String> {
    let url = match server.split_once("://") {
        None => format!("http://{server}"),
        Some((scheme, _)) if scheme.eq_ignore_ascii_case("http") => server.to_string(),
        Some((scheme, _)) => {
            return Err(format!(
                "{scheme}:// is not spoken here: presencectl has no TLS and talks plaintext \
                 HTTP/2 (http://HOST:PORT or HOST:PORT)"
            ))
        }
    };
    Channel::from_shared(url).map_err(|e| e.to_string())
}

/// An error and its causes, `a: b: c` (tonic's transport error says only
/// "transport error"; the cause says what went wrong).
fn causes(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let c = cause.to_string();
        if !s.ends_with(&c) {
            s += ": ";
            s += &c;
        }
        next = cause.source();
    }
    s
}

enum Failure {
    Status(tonic::Status),
    Usage(String),
}

impl From<tonic::Status> for Failure {
    fn from(s: tonic::Status) -> Failure {
        Failure::Status(s)
    }
}

/// (basic, activity) of a status.
fn status_fields(s: Status) -> (pb::Basic, &'static str) {
    match s {
        Status::Available => (pb::Basic::Open, ""),
        Status::Away => (pb::Basic::Open, "away"),
        Status::Busy => (pb::Basic::Open, "busy"),
        Status::OnThePhone => (pb::Basic::Open, "on-the-phone"),
        Status::Offline => (pb::Basic::Closed, ""),
    }
}

/// (basic, activity, note, content type, document) of the state arguments.
fn state_fields(a: &StateArgs) -> Result<(i32, String, String, String, Vec<u8>), Failure> {
    if let Some(path) = &a.document {
        let doc =
            std::fs::read(path).map_err(|e| Failure::Usage(format!("{}: {e}", path.display())))?;
        return Ok((0, String::new(), String::new(), a.content_type.clone(), doc));
    }
    let (basic, activity) = match a.status {
        Some(s) => status_fields(s),
        None if a.note.is_empty() => {
            return Ok((0, String::new(), String::new(), String::new(), Vec::new()))
        }
        None => (pb::Basic::Open, ""),
    };
    Ok((
        basic as i32,
        activity.to_string(),
        a.note.clone(),
        String::new(),
        Vec::new(),
    ))
}

async fn command(client: &mut Client, out: Output, cmd: Cmd) -> Result<(), Failure> {
    match cmd {
        Cmd::Get { aors, event } => {
            let r = client
                .get_presence(pb::GetPresenceRequest { aors, event })
                .await?
                .into_inner();
            match out {
                Output::Json => print_json(&r),
                Output::Table => print_states(&r.states),
            }
        }
        Cmd::Watch {
            aors,
            event,
            heartbeat,
        } => {
            let mut stream = client
                .watch(pb::WatchRequest {
                    aors,
                    event,
                    resume: Default::default(),
                    heartbeat_seconds: heartbeat,
                })
                .await?
                .into_inner();
            while let Some(m) = stream.message().await? {
                match out {
                    Output::Json => print_json(&m),
                    Output::Table => match m.kind {
                        Some(pb::watch_response::Kind::State(s)) => {
                            println!("{}", state_line(&s))
                        }
                        Some(pb::watch_response::Kind::Synced(_)) => println!("# synced"),
                        Some(pb::watch_response::Kind::Heartbeat(h)) => {
                            println!("# heartbeat {}", h.time_ms)
                        }
                        None => {}
                    },
                }
            }
            // A watch runs until interrupted: a stream the server ends (it
            // shut down, or dropped this client) is not a success, or a
            // script restarting it could not tell.
            return Err(Failure::Status(tonic::Status::unavailable(
                "the server ended the stream",
            )));
        }
        Cmd::Publish {
            aor,
            event,
            state,
            expires,
            etag,
        } => {
            let (basic, activity, note, content_type, document) = state_fields(&state)?;
            let r = client
                .publish(pb::PublishRequest {
                    aor,
                    event,
                    basic,
                    activity,
                    note,
                    content_type,
                    document,
                    expires,
                    etag,
                })
                .await?
                .into_inner();
            match out {
                Output::Json => print_json(&r),
                Output::Table => println!("etag {}  expires {}", r.etag, r.expires),
            }
        }
        Cmd::Unpublish { aor, etag, event } => {
            client
                .unpublish(pb::UnpublishRequest { aor, event, etag })
                .await?;
            done(out);
        }
        Cmd::HardState(HardState::Set { aor, event, state }) => {
            let (basic, activity, note, content_type, document) = state_fields(&state)?;
            client
                .set_hard_state(pb::SetHardStateRequest {
                    aor,
                    event,
                    basic,
                    activity,
                    note,
                    content_type,
                    document,
                })
                .await?;
            done(out);
        }
        Cmd::HardState(HardState::Clear { aor, event }) => {
            client
                .clear_hard_state(pb::ClearHardStateRequest { aor, event })
                .await?;
            done(out);
        }
        Cmd::Subscriptions { aor, event } => {
            let mut token = String::new();
            let mut all = Vec::new();
            loop {
                let r = client
                    .list_subscriptions(pb::ListSubscriptionsRequest {
                        aor: aor.clone(),
                        event: event.clone(),
                        page_size: 0,
                        page_token: token,
                    })
                    .await?
                    .into_inner();
                all.extend(r.subscriptions);
                if r.next_page_token.is_empty() {
                    break;
                }
                token = r.next_page_token;
            }
            match out {
                Output::Json => print_json(&pb::ListSubscriptionsResponse {
                    subscriptions: all,
                    next_page_token: String::new(),
                }),
                Output::Table => table(
                    &[
                        "ID",
                        "EVENT",
                        "WATCHER",
                        "STATE",
                        "EXPIRES",
                        "TRANSPORT",
                        "REMOTE",
                        "EDGE",
                    ],
                    all.iter()
                        .map(|s| {
                            vec![
                                s.id.clone(),
                                s.event.clone(),
                                s.watcher.clone(),
                                s.state.clone(),
                                s.expires_at_ms.to_string(),
                                s.transport.clone(),
                                s.remote.clone(),
                                s.edge.clone(),
                            ]
                        })
                        .collect(),
                ),
            }
        }
        Cmd::EndSubscription { id } => {
            client
                .end_subscription(pb::EndSubscriptionRequest { id })
                .await?;
            done(out);
        }
        Cmd::Registrations { aor } => {
            let r = client
                .list_registrations(pb::ListRegistrationsRequest { aor })
                .await?
                .into_inner();
            match out {
                Output::Json => print_json(&r),
                Output::Table => table(
                    &["CONTACT", "EXPIRES", "TRANSPORT", "REMOTE", "EDGE"],
                    r.registrations
                        .iter()
                        .map(|b| {
                            vec![
                                b.contact.clone(),
                                b.expires_at_ms.to_string(),
                                b.transport.clone(),
                                b.remote.clone(),
                                b.edge.clone(),
                            ]
                        })
                        .collect(),
                ),
            }
        }
        Cmd::Send {
            from,
            to,
            text,
            content_type,
        } => {
            let r = client
                .send_message(pb::SendMessageRequest {
                    from,
                    to,
                    content_type,
                    text,
                })
                .await?
                .into_inner();
            match out {
                Output::Json => print_json(&r),
                Output::Table => println!(
                    "{} {} ({} device{})",
                    r.sip_status,
                    r.reason,
                    r.devices,
                    if r.devices == 1 { "" } else { "s" }
                ),
            }
            if !(200..300).contains(&r.sip_status) {
                return Err(Failure::Status(tonic::Status::unavailable(format!(
                    "not delivered: {} {}",
                    r.sip_status, r.reason
                ))));
            }
        }
        Cmd::Directory {
            query,
            page_size,
            page_token,
        } => {
            let r = client
                .search_directory(pb::SearchDirectoryRequest {
                    query,
                    page_size,
                    page_token,
                })
                .await?
                .into_inner();
            match out {
                Output::Json => print_json(&r),
                Output::Table => table(
                    &[
                        "AVAILABILITY",
                        "NAME",
                        "AOR",
                        "DEPARTMENT",
                        "TITLE",
                        "PHONE",
                    ],
                    r.entries
                        .iter()
                        .map(|e| {
                            vec![
                                e.presence
                                    .as_ref()
                                    .map_or("offline", |p| availability(p.availability))
                                    .to_string(),
                                e.display_name.clone(),
                                e.aor.clone(),
                                e.department.clone(),
                                e.title.clone(),
                                e.phone.clone(),
                            ]
                        })
                        .collect(),
                ),
            }
            // A table has no room for the next page's token (JSON has it):
            // say on stderr that there is more, rather than cut the list
            // short in silence.
            if out == Output::Table && !r.next_page_token.is_empty() {
                eprintln!(
                    "presencectl: this page has {} of {} entries; the next: --page-token {}",
                    r.entries.len(),
                    r.total_size,
                    r.next_page_token
                );
            }
        }
        Cmd::Login { aor } => {
            let mut password = String::new();
            std::io::stdin()
                .read_line(&mut password)
                .map_err(|e| Failure::Usage(format!("cannot read the password: {e}")))?;
            let r = client
                .login(pb::LoginRequest {
                    aor,
                    password: password.trim_end_matches(['\r', '\n']).to_string(),
                })
                .await?
                .into_inner();
            match out {
                Output::Json => print_json(&r),
                Output::Table => println!("{}", r.token),
            }
        }
    }
    Ok(())
}

fn done(out: Output) {
    match out {
        Output::Json => println!("{{}}"),
        Output::Table => println!("ok"),
    }
}

fn availability(a: i32) -> &'static str {
    match pb::Availability::try_from(a) {
        Ok(pb::Availability::Available) => "available",
        Ok(pb::Availability::Away) => "away",
        Ok(pb::Availability::Busy) => "busy",
        Ok(pb::Availability::OnThePhone) => "on-the-phone",
        Ok(pb::Availability::Offline) => "offline",
        _ => "-",
    }
}

fn basic(b: i32) -> &'static str {
    match pb::Basic::try_from(b) {
        Ok(pb::Basic::Open) => "open",
        Ok(pb::Basic::Closed) => "closed",
        _ => "-",
    }
}

fn state_line(s: &pb::PresenceState) -> String {
    let mut line = format!(
        "{} {} v{} {} {}",
        s.aor,
        s.event,
        s.version,
        availability(s.availability),
        basic(s.basic)
    );
    if !s.activities.is_empty() {
        line += &format!(" [{}]", s.activities.join(","));
    }
    if !s.note.is_empty() {
        line += &format!(" {:?}", s.note);
    }
    for d in &s.dialogs {
        line += &format!(" dialog {}={}", d.id, d.state);
    }
    if let Some(m) = &s.message_summary {
        line += &format!(
            " waiting={} {}",
            if m.messages_waiting { "yes" } else { "no" },
            m.voice_message
        );
    }
    line
}

fn print_states(states: &[pb::PresenceState]) {
    for s in states {
        println!("{}", state_line(s));
    }
}

/// Print as JSON; a document's bytes as text (they are XML or text).
fn print_json<T: serde::Serialize>(v: &T) {
    let mut value = match serde_json::to_value(v) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("presencectl: {e}");
            return;
        }
    };
    documents_as_text(&mut value);
    println!("{value}");
}

fn documents_as_text(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, val) in map.iter_mut() {
                if k == "document" {
                    if let serde_json::Value::Array(bytes) = val {
                        let b: Vec<u8> = bytes
                            .iter()
                            .filter_map(|x| x.as_u64().and_then(|n| u8::try_from(n).ok()))
                            .collect();
                        *val = serde_json::Value::String(String::from_utf8_lossy(&b).into_owned());
                        continue;
                    }
                }
                documents_as_text(val);
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(documents_as_text),
        _ => {}
    }
}

fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            let w = widths.get(i).copied().unwrap_or(0);
            if i + 1 == cells.len() {
                s += c;
            } else {
                s += &format!("{c:<w$}  ");
            }
        }
        println!("{}", s.trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
}

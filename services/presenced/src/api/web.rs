//! The web address book: static files embedded in the binary, and a small
//! JSON + Server-Sent Events gateway over the same operations as gRPC.
//!
//! Why not gRPC-Web: a browser's `EventSource` reconnects by itself, needs
//! no generated client and no build step, and JSON is what a page's plain
//! JavaScript reads; the gateway is a thin layer over [`Api`]'s methods, so
//! both doors answer alike (the same checks, the same refusals).
//!
//! Routes (all JSON; messages are the protobuf messages' fields by name,
//! enums as numbers; a document's bytes are left out):
//! - `GET /` `GET /app.js` `GET /style.css`: the page.
//! - `POST /v1/login {aor, password}`: a session cookie (HttpOnly,
//!   SameSite=Strict) with the `LoginResponse`; `POST /v1/logout`.
//! - `GET /v1/me`: `{aor, open}` (who the session is; `open` when the
//!   server needs no login).
//! - `GET /v1/directory?query=&page_token=&page_size=`: `SearchDirectory`.
//! - `POST /v1/presence`: `GetPresence`; `POST /v1/publish`: `Publish`
//!   (the AoR defaults to the session's); `POST /v1/messages`:
//!   `SendMessage` (from defaults to the session's).
//! - `GET /v1/watch?aors=a,b&event=`: `Watch` as Server-Sent Events
//!   `state`, `synced`, `heartbeat`; on reconnection the stream starts
//!   again with the current states.
//!
//! Requests that change something must be `application/json` (a browser
//! sends that cross-site only after a CORS preflight, which this server
//! never grants) and, when they carry an `Origin`, come from this host.

use super::grpc::Service;
use super::hub::serve_stream;
use super::{ApiError, Principal};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use presence_api::pb;
use std::collections::HashMap;
use tokio::sync::mpsc;

const INDEX: &str = include_str!("../../web/index.html");
const APP_JS: &str = include_str!("../../web/app.js");
const STYLE: &str = include_str!("../../web/style.css");

/// The session cookie's name.
pub const COOKIE: &str = "presence_session";

pub fn router(service: Service) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { page("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/app.js",
            get(|| async { page("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/style.css",
            get(|| async { page("text/css; charset=utf-8", STYLE) }),
        )
        .route("/v1/login", post(login))
        .route("/v1/logout", post(logout))
        .route("/v1/me", get(me))
        .route("/v1/directory", get(directory))
        .route("/v1/presence", post(presence))
        .route("/v1/publish", post(publish))
        .route("/v1/messages", post(message))
        .route("/v1/watch", get(watch))
        .with_state(service)
}

fn page(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; frame-ancestors 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

fn error(s: &Service, method: &'static str, e: ApiError) -> Response {
    let (code, message) = e.http();
    let _ = s.count::<()>(method, Err(e));
    let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, Json(serde_json::json!({ "error": message }))).into_response()
}

fn ok<T: serde::Serialize>(s: &Service, method: &'static str, v: T) -> Response {
    let _ = s.count::<()>(method, Ok(()));
    Json(v).into_response()
}

/// The session token: the cookie, or an `Authorization: Bearer` header.
fn token(headers: &HeaderMap) -> Option<String> {
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        if let Some((scheme, t)) = v.trim().split_once(' ') {
            if scheme.eq_ignore_ascii_case("bearer") {
                return Some(t.trim().to_string());
            }
        }
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

fn who(s: &Service, headers: &HeaderMap) -> Result<Principal, ApiError> {
    s.api.principal(token(headers).as_deref())
}

/// A change must be JSON and, if the browser says where it comes from,
/// from this host.
fn same_origin_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim()
                .to_ascii_lowercase()
                .starts_with("application/json")
        });
    if !json {
        return Err(ApiError::Invalid(
            "Content-Type must be application/json".into(),
        ));
    }
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let origin_host = origin.split_once("://").map(|(_, h)| h).unwrap_or(origin);
        if !origin_host.eq_ignore_ascii_case(host) {
            return Err(ApiError::Denied("cross-origin request".into()));
        }
    }
    Ok(())
}

/// A change's JSON body, checked by [`same_origin_json`].
fn json<T: serde::de::DeserializeOwned>(headers: &HeaderMap, body: &[u8]) -> Result<T, ApiError> {
    same_origin_json(headers)?;
    serde_json::from_slice(body).map_err(|e| ApiError::Invalid(format!("bad JSON: {e}")))
}

/// The state without the document's bytes (the page does not show them).
fn light(mut s: pb::PresenceState) -> pb::PresenceState {
    s.document.clear();
    s
}

async fn login(State(s): State<Service>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let req: pb::LoginRequest = match json(&headers, &body) {
        Ok(r) => r,
        Err(e) => return error(&s, "Login", e),
    };
    match s.api.login(req).await {
        Ok(r) => {
            let cookie = format!(
                "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
                r.token,
                super::SESSION_LIFETIME.as_secs()
            );
            let mut resp = ok(&s, "Login", &r);
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                resp.headers_mut().insert(header::SET_COOKIE, v);
            }
            resp
        }
        Err(e) => error(&s, "Login", e),
    }
}

async fn logout() -> Response {
    (
        [(
            header::SET_COOKIE,
            format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
        )],
        Json(serde_json::json!({})),
    )
        .into_response()
}

async fn me(State(s): State<Service>, headers: HeaderMap) -> Response {
    match who(&s, &headers) {
        Ok(Principal::User { aor }) => Json(serde_json::json!({ "aor": aor, "open": false })),
        Ok(Principal::Open) => Json(serde_json::json!({ "aor": "", "open": true })),
        Ok(Principal::Token { name, .. }) => {
            Json(serde_json::json!({ "aor": "", "open": false, "token": name }))
        }
        Err(e) => return error(&s, "Me", e),
    }
    .into_response()
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct DirectoryQuery {
    query: String,
    page_token: String,
    page_size: i32,
}

async fn directory(
    State(s): State<Service>,
    headers: HeaderMap,
    Query(q): Query<DirectoryQuery>,
) -> Response {
    let r = match who(&s, &headers) {
        Ok(p) => {
            s.api
                .search_directory(
                    &p,
                    pb::SearchDirectoryRequest {
                        query: q.query,
                        page_size: q.page_size,
                        page_token: q.page_token,
                    },
                )
                .await
        }
        Err(e) => Err(e),
    };
    match r {
        Ok(mut r) => {
            for e in &mut r.entries {
                e.presence = e.presence.take().map(light);
            }
            ok(&s, "SearchDirectory", r)
        }
        Err(e) => error(&s, "SearchDirectory", e),
    }
}

async fn presence(
    State(s): State<Service>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let r = async {
        let req: pb::GetPresenceRequest = json(&headers, &body)?;
        let p = who(&s, &headers)?;
        s.api.get_presence(&p, req).await
    }
    .await;
    match r {
        Ok(mut r) => {
            r.states = r.states.into_iter().map(light).collect();
            ok(&s, "GetPresence", r)
        }
        Err(e) => error(&s, "GetPresence", e),
    }
}

async fn publish(
    State(s): State<Service>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let r = async {
        let mut req: pb::PublishRequest = json(&headers, &body)?;
        let p = who(&s, &headers)?;
        if let (true, Principal::User { aor }) = (req.aor.is_empty(), &p) {
            req.aor = aor.clone();
        }
        s.api.publish(&p, req).await
    }
    .await;
    match r {
        Ok(r) => ok(&s, "Publish", r),
        Err(e) => error(&s, "Publish", e),
    }
}

async fn message(
    State(s): State<Service>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let r = async {
        let mut req: pb::SendMessageRequest = json(&headers, &body)?;
        let p = who(&s, &headers)?;
        if let (true, Principal::User { aor }) = (req.from.is_empty(), &p) {
            req.from = aor.clone();
        }
        s.api.send_message(&p, req).await
    }
    .await;
    match r {
        Ok(r) => ok(&s, "SendMessage", r),
        Err(e) => error(&s, "SendMessage", e),
    }
}

async fn watch(
    State(s): State<Service>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let spec = who(&s, &headers).and_then(|p| p.read()).and_then(|()| {
        s.spec(pb::WatchRequest {
            aors: q
                .get("aors")
                .map(|a| {
                    a.split(',')
                        .map(str::trim)
                        .filter(|a| !a.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
            event: q.get("event").cloned().unwrap_or_default(),
            resume: HashMap::new(),
            heartbeat_seconds: 0,
        })
    });
    let spec = match spec {
        Ok(spec) => spec,
        Err(e) => return error(&s, "Watch", e),
    };
    let _ = s.count::<()>("Watch", Ok(()));
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(serve_stream(s.hub.clone(), spec, tx, s.shutdown.clone()));
    let events = tokio_stream::wrappers::ReceiverStream::new(rx);
    let events = futures_util::StreamExt::map(events, |m: pb::WatchResponse| {
        let event = match m.kind {
            Some(pb::watch_response::Kind::State(st)) => {
                Event::default().event("state").json_data(light(st))
            }
            Some(pb::watch_response::Kind::Synced(_)) => {
                Ok(Event::default().event("synced").data("{}"))
            }
            Some(pb::watch_response::Kind::Heartbeat(h)) => {
                Event::default().event("heartbeat").json_data(h)
            }
            None => Ok(Event::default().comment("")),
        };
        Ok::<Event, std::convert::Infallible>(
            event.unwrap_or_else(|_| Event::default().comment("unencodable")),
        )
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

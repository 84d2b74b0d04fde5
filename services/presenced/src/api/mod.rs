//! The `api` role: `presence.v1.PresenceApi` (proto/presence_api.proto)
//! for applications that do not speak SIP, and the web address book.
//!
//! Stateless like an edge: state is read from the store, changes are the
//! commands an edge sends to the shard owner (`shard.<k>`), a MESSAGE goes
//! out through the edge that holds the target's flow (`edge.<id>`), and
//! Watch streams follow the change hints the compositors announce on
//! `changes.<k>` (`hub.rs`).
//!
//! - `mod.rs`: [`Api`], the operations every front end shares (gRPC in
//!   `grpc.rs`, the browser's JSON and Server-Sent Events in `web.rs`).
//! - `access.rs`: who may call what ([`Principal`]).
//! - `error.rs`: the one mapping of refusals to answers ([`ApiError`]).
//! - `owners.rs`: changes go to the shard owners ([`Owners`]), documents
//!   checked first ([`check_document`]); the admin route uses it too.
//! - `state.rs`: a stored document as a `PresenceState`.
//! - `hub.rs`: Watch streams.
//!
//! What it is not: no SIP parsing, no composition, no state of its own
//! beyond the streams it serves.

mod access;
mod error;
pub mod grpc;
pub mod hub;
mod owners;
pub mod state;
pub mod web;

pub use access::Principal;
pub use error::ApiError;
pub use owners::{check_document, Owners};

use crate::edge::{OutRequest, Outcome};
use crate::metrics::Metrics;
use crate::names::{edge_subject, new_tag};
use crate::reload::Reloadable;
use crate::Clock;
use bytes::Bytes;
use presence_api::pb;
use presence_core::apiauth::{Sessions, Tokens};
use presence_core::commands::{Command, Origin, PublishCmd, Reply};
use presence_core::digest::{constant_time_eq, Users};
use presence_core::directory::Directory;
use presence_core::packages::Registry;
use presence_core::{Aor, EndReason};
use presence_sip::rsip;
use presence_store::{BusError, Requests, Store, Topics};
use std::sync::Arc;
use std::time::Duration;

/// How long the API waits for a shard owner (it rides out a handover like
/// an edge does: the bus it is given retries).
const SHARD_WAIT: Duration = Duration::from_secs(5);

/// How long a MESSAGE may take on one device (RFC 3261 Timer F) plus the
/// hops to the edge.
const MESSAGE_WAIT: Duration = Duration::from_secs(34);

/// A session from `Login` lasts this long.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// The API's shared state and operations.
pub struct Api {
    pub store: Arc<dyn Store>,
    pub owners: Owners,
    pub edge_bus: Arc<dyn Requests<OutRequest, Outcome>>,
    pub changes: Arc<dyn Topics>,
    pub packages: Registry,
    pub domains: Vec<String>,
    /// SIP credentials: `Login`, and which AoRs exist.
    pub users: Option<Users>,
    /// Bearer tokens with scopes; `None` with no users either: open.
    pub tokens: Option<Arc<Reloadable<Tokens>>>,
    pub sessions: Sessions,
    pub directory: Arc<Reloadable<Directory>>,
    pub clock: Clock,
    /// Most AoRs in one GetPresence or Watch.
    pub batch: usize,
    pub min_expires: u32,
    pub max_expires: u32,
    /// A Watch stream's default heartbeat.
    pub heartbeat: Duration,
    /// This process, as the edge of the MESSAGEs it sends.
    pub node_id: String,
    pub metrics: Arc<Metrics>,
}

impl Api {
    /// An AoR of a served domain, canonical.
    pub fn aor(&self, s: &str) -> Result<Aor, ApiError> {
        let s = s.trim();
        let aor = Aor::parse(s)
            .or_else(|| {
                (!s.contains(':'))
                    .then(|| Aor::parse(&format!("sip:{s}")))
                    .flatten()
            })
            .ok_or_else(|| {
                ApiError::Invalid(format!(
                    "{s:?} is not an address of record (sip:user@domain)"
                ))
            })?;
        if !self
            .domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(aor.domain()))
        {
            return Err(ApiError::Invalid(format!(
                "{} is not a domain served here",
                aor.domain()
            )));
        }
        Ok(aor)
    }

    /// An AoR that exists: with `--users`, one of them (or a directory
    /// entry or a resource the store knows).
    async fn known(&self, s: &str) -> Result<Aor, ApiError> {
        let aor = self.aor(s)?;
        if let Some(users) = &self.users {
            if !users.contains(aor.user(), aor.domain())
                && self.directory.current().get(aor.as_str()).is_none()
                && !self
                    .store
                    .is_known(aor.as_str())
                    .await
                    .map_err(|_| ApiError::Internal)?
            {
                return Err(ApiError::NotFound(format!("unknown user {aor}")));
            }
        }
        Ok(aor)
    }

    /// An event package served here ("" is presence).
    pub fn event(&self, e: &str) -> Result<String, ApiError> {
        let e = if e.is_empty() { "presence" } else { e };
        match self.packages.get(e) {
            Some(p) if p.watches().is_none() => Ok(p.name().to_string()),
            _ => Err(ApiError::Invalid(format!(
                "event {e:?} is not served (presence, dialog, message-summary, reg)"
            ))),
        }
    }

    async fn ask(&self, aor: &str, cmd: Command) -> Result<Reply, ApiError> {
        self.owners.ask(aor, cmd).await
    }

    fn origin(&self) -> Origin {
        Origin {
            // Each call is its own transaction: a retry by the client is a
            // new call (a publication's ETag keeps it idempotent).
            txn: format!("api-{}", new_tag()),
            deadline_ms: self.clock.now_ms() + SHARD_WAIT.as_millis() as u64,
        }
    }

    pub async fn get_presence(
        &self,
        who: &Principal,
        req: pb::GetPresenceRequest,
    ) -> Result<pb::GetPresenceResponse, ApiError> {
        who.read()?;
        if req.aors.len() > self.batch {
            return Err(ApiError::Invalid(format!(
                "at most {} AoRs per call, {} asked",
                self.batch,
                req.aors.len()
            )));
        }
        let event = self.event(&req.event)?;
        let mut aors = Vec::with_capacity(req.aors.len());
        for a in &req.aors {
            aors.push(self.known(a).await?);
        }
        let mut states = Vec::with_capacity(aors.len());
        for aor in &aors {
            states.push(
                state::read(
                    self.store.as_ref(),
                    aor.as_str(),
                    &event,
                    self.clock.now_ms(),
                )
                .await?,
            );
        }
        Ok(pb::GetPresenceResponse { states })
    }

    /// The document a PublishRequest or SetHardStateRequest gives: its own,
    /// checked like a SIP PUBLISH's, or one made from a status.
    fn document(
        &self,
        aor: &Aor,
        event: &str,
        given: Given<'_>,
    ) -> Result<Option<(String, Bytes)>, ApiError> {
        let Given {
            basic,
            activity,
            note,
            content_type,
            document,
        } = given;
        if self.packages.get(event).is_none() {
            return Err(ApiError::Invalid(format!("event {event:?} is not served")));
        }
        if !document.is_empty() {
            return check_document(&self.packages, event, content_type, document).map(Some);
        }
        let open = match pb::Basic::try_from(basic) {
            Ok(pb::Basic::Open) => true,
            Ok(pb::Basic::Closed) => false,
            _ if activity.is_empty() && note.is_empty() => return Ok(None),
            // An activity or a note without a basic: reachable.
            _ => true,
        };
        if event != "presence" {
            return Err(ApiError::Invalid(format!(
                "a status (basic, activity, note) is for presence; {event} needs a document"
            )));
        }
        Ok(Some((
            "application/pidf+xml".into(),
            Bytes::from(state::status_pidf(aor.as_str(), open, activity, note)?),
        )))
    }

    pub async fn publish(
        &self,
        who: &Principal,
        req: pb::PublishRequest,
    ) -> Result<pb::PublishResponse, ApiError> {
        let aor = self.known(&req.aor).await?;
        who.act_as(aor.as_str())?;
        let event = self.event(&req.event)?;
        let body = self.document(
            &aor,
            &event,
            Given {
                basic: req.basic,
                activity: &req.activity,
                note: &req.note,
                content_type: &req.content_type,
                document: &req.document,
            },
        )?;
        let if_match = (!req.etag.is_empty()).then(|| req.etag.clone());
        if body.is_none() && if_match.is_none() {
            return Err(ApiError::Invalid(
                "a new publication needs a status or a document".into(),
            ));
        }
        let expires = match req.expires {
            0 => 3600.min(self.max_expires),
            e if e < self.min_expires => {
                return Err(ApiError::Invalid(format!(
                    "expires must be at least {} seconds",
                    self.min_expires
                )))
            }
            e => e.min(self.max_expires),
        };
        let cmd = Command::Publish(PublishCmd {
            aor: aor.to_string(),
            event,
            if_match,
            expires,
            body,
            origin: self.origin(),
        });
        match self.ask(aor.as_str(), cmd).await? {
            Reply::Published { etag, expires } => Ok(pb::PublishResponse { etag, expires }),
            _ => Err(ApiError::Internal),
        }
    }

    pub async fn unpublish(
        &self,
        who: &Principal,
        req: pb::UnpublishRequest,
    ) -> Result<pb::UnpublishResponse, ApiError> {
        let aor = self.known(&req.aor).await?;
        who.act_as(aor.as_str())?;
        let event = self.event(&req.event)?;
        if req.etag.is_empty() {
            return Err(ApiError::Invalid("etag is required".into()));
        }
        let cmd = Command::Publish(PublishCmd {
            aor: aor.to_string(),
            event,
            if_match: Some(req.etag),
            expires: 0,
            body: None,
            origin: self.origin(),
        });
        self.ask(aor.as_str(), cmd).await?;
        Ok(pb::UnpublishResponse {})
    }

    pub async fn set_hard_state(
        &self,
        who: &Principal,
        req: pb::SetHardStateRequest,
    ) -> Result<pb::SetHardStateResponse, ApiError> {
        who.admin()?;
        let aor = self.known(&req.aor).await?;
        let event = self.event(&req.event)?;
        let body = self
            .document(
                &aor,
                &event,
                Given {
                    basic: req.basic,
                    activity: &req.activity,
                    note: &req.note,
                    content_type: &req.content_type,
                    document: &req.document,
                },
            )?
            .ok_or_else(|| ApiError::Invalid("hard state needs a status or a document".into()))?;
        self.hard_state(&aor, event, Some(body.1)).await?;
        Ok(pb::SetHardStateResponse {})
    }

    pub async fn clear_hard_state(
        &self,
        who: &Principal,
        req: pb::ClearHardStateRequest,
    ) -> Result<pb::ClearHardStateResponse, ApiError> {
        who.admin()?;
        let aor = self.known(&req.aor).await?;
        let event = self.event(&req.event)?;
        self.hard_state(&aor, event, None).await?;
        Ok(pb::ClearHardStateResponse {})
    }

    async fn hard_state(
        &self,
        aor: &Aor,
        event: String,
        body: Option<Bytes>,
    ) -> Result<(), ApiError> {
        self.owners.hard_state(aor, event, body).await
    }

    pub async fn list_subscriptions(
        &self,
        who: &Principal,
        req: pb::ListSubscriptionsRequest,
    ) -> Result<pb::ListSubscriptionsResponse, ApiError> {
        who.admin()?;
        let aor = self.aor(&req.aor)?;
        let events: Vec<String> = if req.event.is_empty() {
            self.packages
                .names()
                .into_iter()
                .map(str::to_string)
                .collect()
        } else {
            vec![self.event(&req.event)?]
        };
        let mut ids = Vec::new();
        for e in &events {
            let mut of = self
                .store
                .watcher_ids(aor.as_str(), e)
                .await
                .map_err(|_| ApiError::Internal)?;
            of.sort();
            ids.extend(of);
        }
        let (start, size) = page(&req.page_token, req.page_size, 100, 1000)?;
        let end = (start + size).min(ids.len());
        let slice = ids.get(start..end).unwrap_or(&[]);
        let now = self.clock.now_ms();
        let records = self
            .store
            .subscriptions(slice)
            .await
            .map_err(|_| ApiError::Internal)?;
        let subscriptions = records
            .into_iter()
            .flatten()
            .filter(|s| s.expires_at_ms > now)
            .map(|s| pb::SubscriptionInfo {
                state: state::view_name(s.view).to_string(),
                transport: s.flow.transport.as_str().to_ascii_lowercase(),
                remote: s.flow.remote.to_string(),
                edge: s.flow.edge.clone(),
                id: s.id,
                aor: s.aor,
                event: s.event,
                watcher: s.watcher,
                expires_at_ms: s.expires_at_ms,
            })
            .collect();
        Ok(pb::ListSubscriptionsResponse {
            subscriptions,
            next_page_token: if end < ids.len() {
                end.to_string()
            } else {
                String::new()
            },
        })
    }

    pub async fn end_subscription(
        &self,
        who: &Principal,
        req: pb::EndSubscriptionRequest,
    ) -> Result<pb::EndSubscriptionResponse, ApiError> {
        who.admin()?;
        let sub = self
            .store
            .subscription(&req.id)
            .await
            .map_err(|_| ApiError::Internal)?
            .filter(|s| s.expires_at_ms > self.clock.now_ms())
            .ok_or_else(|| ApiError::NotFound(format!("no subscription {:?}", req.id)))?;
        let cmd = Command::EndSubscription {
            id: sub.id.clone(),
            reason: EndReason::Deactivated,
        };
        self.ask(&sub.aor, cmd).await?;
        Ok(pb::EndSubscriptionResponse {})
    }

    pub async fn list_registrations(
        &self,
        who: &Principal,
        req: pb::ListRegistrationsRequest,
    ) -> Result<pb::ListRegistrationsResponse, ApiError> {
        who.admin()?;
        let aor = self.aor(&req.aor)?;
        let now = self.clock.now_ms();
        let registrations = self
            .store
            .bindings(aor.as_str())
            .await
            .map_err(|_| ApiError::Internal)?
            .into_iter()
            .filter(|b| b.expires_at_ms > now)
            .map(|b| pb::Registration {
                transport: b.flow.transport.as_str().to_ascii_lowercase(),
                remote: b.flow.remote.to_string(),
                edge: b.flow.edge.clone(),
                aor: b.aor,
                contact: b.uri,
                expires_at_ms: b.expires_at_ms,
                params: b.params,
                call_id: b.call_id,
            })
            .collect();
        Ok(pb::ListRegistrationsResponse { registrations })
    }

    /// A pager-mode MESSAGE to every device of `to` (one per flow, at most
    /// ten), through the edge holding each flow; the best answer wins
    /// (the edge's MESSAGE relay ranks the same way).
    pub async fn send_message(
        &self,
        who: &Principal,
        req: pb::SendMessageRequest,
    ) -> Result<pb::SendMessageResponse, ApiError> {
        let from = self.known(&req.from).await?;
        who.act_as(from.as_str())?;
        let to = self.known(&req.to).await?;
        let content_type = if req.content_type.is_empty() {
            "text/plain;charset=UTF-8".to_string()
        } else {
            req.content_type.clone()
        };
        let bare = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if bare != "text/plain" && bare != "message/cpim" {
            return Err(ApiError::Invalid(
                "content_type is text/plain or message/cpim".into(),
            ));
        }
        if req.text.is_empty() {
            return Err(ApiError::Invalid("text is empty".into()));
        }
        if req.text.len() > 8192 || content_type.len() > 200 {
            return Err(ApiError::Invalid(
                "text is at most 8192 bytes (pager mode, RFC 3428 §7)".into(),
            ));
        }
        let targets = match self
            .ask(
                to.as_str(),
                Command::Route {
                    aor: to.to_string(),
                    method: "MESSAGE".into(),
                    origin: self.origin(),
                    edge: format!("api-{}", self.node_id),
                },
            )
            .await
        {
            Ok(Reply::Routes(t)) => t,
            Err(ApiError::NotFound(_)) => {
                return Ok(pb::SendMessageResponse {
                    sip_status: 480,
                    reason: "Temporarily Unavailable".into(),
                    devices: 0,
                })
            }
            Err(e) => return Err(e),
            Ok(_) => return Err(ApiError::Internal),
        };
        let mut seen = std::collections::HashSet::new();
        let mut targets = targets;
        targets.retain(|t| seen.insert((t.flow.edge.clone(), t.flow.remote, t.flow.conn)));
        targets.truncate(crate::edge::MAX_FORKS);
        let devices = targets.len() as u32;
        let call_id = format!("{}@api.{}", new_tag(), self.node_id);
        let from_tag = new_tag();
        let mut set = tokio::task::JoinSet::new();
        for t in targets {
            let mut headers = rsip::Headers::default();
            let mut h = |name: &str, value: String| {
                headers.push(rsip::headers::make_header(name, value));
            };
            h("From", format!("<{from}>;tag={from_tag}"));
            h("To", format!("<{to}>"));
            h("Call-ID", call_id.clone());
            h("CSeq", "1 MESSAGE".into());
            h("Max-Forwards", "70".into());
            h("P-Asserted-Identity", format!("<{from}>"));
            h("Content-Type", content_type.clone());
            let out = OutRequest {
                flow: t.flow.clone(),
                method: "MESSAGE".into(),
                uri: t.uri.clone(),
                headers,
                body: Bytes::from(req.text.clone().into_bytes()),
                deadline_ms: self.clock.now_ms() + 32_000,
            };
            let bus = self.edge_bus.clone();
            set.spawn(async move {
                let subject = edge_subject(&out.flow.edge);
                match bus.request(&subject, out.clone(), MESSAGE_WAIT).await {
                    // The flow's edge is gone: any edge can try its address.
                    Err(BusError::NoResponders(_)) => bus
                        .request(crate::names::ANY_EDGE, out, MESSAGE_WAIT)
                        .await
                        .unwrap_or_else(|_| Outcome::timeout()),
                    r => r.unwrap_or_else(|_| Outcome::timeout()),
                }
            });
        }
        let mut best: Option<Outcome> = None;
        while let Some(res) = set.join_next().await {
            let Ok(o) = res else { continue };
            if (200..300).contains(&o.code) {
                set.abort_all();
                best = Some(o);
                break;
            }
            if best
                .as_ref()
                .is_none_or(|b| crate::edge::rank(o.code) < crate::edge::rank(b.code))
            {
                best = Some(o);
            }
        }
        let (sip_status, reason) = match best {
            None => (480, "Temporarily Unavailable".to_string()),
            Some(o) if o.timed_out => (408, "Request Timeout".to_string()),
            Some(o) => (u32::from(o.code), o.reason),
        };
        self.metrics
            .api_messages
            .with_label_values(&[&(sip_status / 100).to_string()])
            .inc();
        Ok(pb::SendMessageResponse {
            sip_status,
            reason,
            devices,
        })
    }

    pub async fn search_directory(
        &self,
        who: &Principal,
        req: pb::SearchDirectoryRequest,
    ) -> Result<pb::SearchDirectoryResponse, ApiError> {
        who.read()?;
        if req.query.len() > 256 {
            return Err(ApiError::Invalid("query is at most 256 bytes".into()));
        }
        let directory = self.directory.current();
        let hits = directory.search(&req.query);
        let (start, size) = page(&req.page_token, req.page_size, 50, self.batch)?;
        let end = (start + size).min(hits.len());
        let now = self.clock.now_ms();
        let mut entries = Vec::new();
        for &i in hits.get(start..end).unwrap_or(&[]) {
            let Some(e) = directory.entries().get(i) else {
                continue;
            };
            let presence = state::read(self.store.as_ref(), &e.aor, "presence", now).await?;
            entries.push(pb::DirectoryEntry {
                aor: e.aor.clone(),
                display_name: e.display_name.clone(),
                department: e.department.clone(),
                title: e.title.clone(),
                phone: e.phone.clone(),
                attributes: e.attributes.iter().cloned().collect(),
                presence: Some(presence),
            });
        }
        Ok(pb::SearchDirectoryResponse {
            entries,
            next_page_token: if end < hits.len() {
                end.to_string()
            } else {
                String::new()
            },
            total_size: hits.len() as u32,
        })
    }

    pub async fn login(&self, req: pb::LoginRequest) -> Result<pb::LoginResponse, ApiError> {
        let Some(users) = &self.users else {
            return Err(ApiError::Invalid(
                "no --users file: there is nothing to log in with".into(),
            ));
        };
        let aor = self.aor(&req.aor).map_err(|_| ApiError::Unauthenticated)?;
        let ok = users
            .password(aor.user(), aor.domain())
            .is_some_and(|p| constant_time_eq(p.as_bytes(), req.password.as_bytes()));
        self.metrics
            .api_logins
            .with_label_values(&[if ok { "ok" } else { "refused" }])
            .inc();
        if !ok {
            return Err(ApiError::Unauthenticated);
        }
        let expires_at_ms = self.clock.now_ms() + SESSION_LIFETIME.as_millis() as u64;
        Ok(pb::LoginResponse {
            token: self.sessions.mint(aor.as_str(), expires_at_ms),
            expires_at_ms,
            aor: aor.to_string(),
        })
    }
}

/// The state a PublishRequest or SetHardStateRequest gives: a status
/// (basic, activity, note) or a document (content type, bytes).
struct Given<'a> {
    basic: i32,
    activity: &'a str,
    note: &'a str,
    content_type: &'a str,
    document: &'a [u8],
}

/// (offset, size) of a page: `token` is the offset the previous page gave
/// (empty: 0); `size` 0 means `default`, more than `max` is `max`.
fn page(token: &str, size: i32, default: usize, max: usize) -> Result<(usize, usize), ApiError> {
    let start = if token.is_empty() {
        0
    } else {
        token
            .parse::<usize>()
            .map_err(|_| ApiError::Invalid("page_token is not one this server gave".into()))?
    };
    if size < 0 {
        return Err(ApiError::Invalid("page_size is negative".into()));
    }
    let size = match size as usize {
        0 => default,
        n => n.min(max),
    };
    Ok((start, size.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use presence_core::apiauth::Scope;
    use presence_core::commands::{Quota, Refusal};

    #[test]
    fn pages() {
        assert_eq!(page("", 0, 50, 100), Ok((0, 50)));
        assert_eq!(page("120", 500, 50, 100), Ok((120, 100)));
        assert!(page("x", 0, 50, 100).is_err());
        assert!(page("", -1, 50, 100).is_err());
    }

    #[test]
    fn principals() {
        let user = Principal::User {
            aor: "sip:alice@example.com".into(),
        };
        assert!(user.read().is_ok());
        assert!(user.act_as("sip:alice@example.com").is_ok());
        assert!(matches!(
            user.act_as("sip:bob@example.com"),
            Err(ApiError::Denied(_))
        ));
        assert!(user.admin().is_err());
        let reader = Principal::Token {
            name: "dash".into(),
            scope: Scope::Read,
        };
        assert!(reader.read().is_ok());
        assert!(reader.act_as("sip:bob@example.com").is_err());
        assert!(reader.admin().is_err());
        let writer = Principal::Token {
            name: "crm".into(),
            scope: Scope::Write,
        };
        assert!(writer.act_as("sip:bob@example.com").is_ok());
        assert!(writer.admin().is_err());
        let admin = Principal::Token {
            name: "ops".into(),
            scope: Scope::Admin,
        };
        assert!(admin.admin().is_ok() && admin.read().is_ok());
        assert!(Principal::Open.admin().is_ok());
    }

    #[test]
    fn every_refusal_has_an_answer() {
        for (why, code) in [
            (Refusal::UnknownEtag, tonic::Code::NotFound),
            (Refusal::UnknownUser, tonic::Code::NotFound),
            (Refusal::PolicyRejected, tonic::Code::PermissionDenied),
            (Refusal::MissingBody, tonic::Code::InvalidArgument),
            (
                Refusal::TooMany {
                    what: Quota::Publications,
                    limit: 16,
                },
                tonic::Code::ResourceExhausted,
            ),
            (Refusal::StoreFailed, tonic::Code::Internal),
            (Refusal::Unavailable, tonic::Code::Unavailable),
        ] {
            assert_eq!(ApiError::refused(why).status().code(), code, "{why:?}");
        }
    }
}

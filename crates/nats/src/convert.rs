//! Core types ⇄ protobuf messages.
//!
//! Encoding is infallible (`From<&T>`); decoding is `TryFrom<pb::T>` and
//! checks everything the core types promise: required sub-messages present,
//! enums known (the zero `UNSPECIFIED` value is refused), integers in range,
//! addresses well formed. Hostile input gives a [`DecodeError`], never a panic.

use crate::pb;
use presence_core::commands::{
    Command, ContactSpec, NotifyJob, Origin, PublishCmd, Quota, Refusal, RegisterAction,
    RegisterCmd, Reply, SubscribeCmd,
};
use presence_core::{Binding, EndReason, Flow, Rates, Seal, Subscription, Transport, View};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// Why bytes or a message could not become a core value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed protobuf: {0}")]
    Protobuf(String),
    #[error("missing field {0}")]
    Missing(&'static str),
    #[error("invalid field {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

impl From<prost::DecodeError> for DecodeError {
    fn from(e: prost::DecodeError) -> Self {
        DecodeError::Protobuf(e.to_string())
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> DecodeError {
    DecodeError::Invalid {
        field,
        reason: reason.into(),
    }
}

fn required<T>(v: Option<T>, field: &'static str) -> Result<T, DecodeError> {
    v.ok_or(DecodeError::Missing(field))
}

// ---------------------------------------------------------------------------
// Model types
// ---------------------------------------------------------------------------

impl From<Transport> for pb::Transport {
    fn from(t: Transport) -> Self {
        match t {
            Transport::Udp => pb::Transport::Udp,
            Transport::Tcp => pb::Transport::Tcp,
            Transport::Tls => pb::Transport::Tls,
            Transport::Ws => pb::Transport::Ws,
            Transport::Wss => pb::Transport::Wss,
        }
    }
}

fn transport(v: i32) -> Result<Transport, DecodeError> {
    match pb::Transport::try_from(v) {
        Ok(pb::Transport::Udp) => Ok(Transport::Udp),
        Ok(pb::Transport::Tcp) => Ok(Transport::Tcp),
        Ok(pb::Transport::Tls) => Ok(Transport::Tls),
        Ok(pb::Transport::Ws) => Ok(Transport::Ws),
        Ok(pb::Transport::Wss) => Ok(Transport::Wss),
        _ => Err(invalid("transport", format!("unknown value {v}"))),
    }
}

impl From<View> for pb::View {
    fn from(v: View) -> Self {
        match v {
            View::Full => pb::View::Full,
            View::Neutral => pb::View::Neutral,
            View::Pending => pb::View::Pending,
        }
    }
}

fn view(v: i32) -> Result<View, DecodeError> {
    match pb::View::try_from(v) {
        Ok(pb::View::Full) => Ok(View::Full),
        Ok(pb::View::Neutral) => Ok(View::Neutral),
        Ok(pb::View::Pending) => Ok(View::Pending),
        _ => Err(invalid("view", format!("unknown value {v}"))),
    }
}

impl From<EndReason> for pb::EndReason {
    fn from(r: EndReason) -> Self {
        match r {
            EndReason::Unsubscribed => pb::EndReason::Unsubscribed,
            EndReason::Timeout => pb::EndReason::Timeout,
            EndReason::Deactivated => pb::EndReason::Deactivated,
            EndReason::Rejected => pb::EndReason::Rejected,
            EndReason::Noresource => pb::EndReason::Noresource,
            EndReason::Gone => pb::EndReason::Gone,
        }
    }
}

fn end_reason(v: i32) -> Result<EndReason, DecodeError> {
    match pb::EndReason::try_from(v) {
        Ok(pb::EndReason::Unsubscribed) => Ok(EndReason::Unsubscribed),
        Ok(pb::EndReason::Timeout) => Ok(EndReason::Timeout),
        Ok(pb::EndReason::Deactivated) => Ok(EndReason::Deactivated),
        Ok(pb::EndReason::Rejected) => Ok(EndReason::Rejected),
        Ok(pb::EndReason::Noresource) => Ok(EndReason::Noresource),
        Ok(pb::EndReason::Gone) => Ok(EndReason::Gone),
        _ => Err(invalid("reason", format!("unknown value {v}"))),
    }
}

impl From<&SocketAddr> for pb::SocketAddr {
    fn from(a: &SocketAddr) -> Self {
        match a {
            SocketAddr::V4(v4) => pb::SocketAddr {
                ip: v4.ip().octets().to_vec().into(),
                port: u32::from(v4.port()),
                flowinfo: 0,
                scope_id: 0,
            },
            SocketAddr::V6(v6) => pb::SocketAddr {
                ip: v6.ip().octets().to_vec().into(),
                port: u32::from(v6.port()),
                flowinfo: v6.flowinfo(),
                scope_id: v6.scope_id(),
            },
        }
    }
}

impl TryFrom<pb::SocketAddr> for SocketAddr {
    type Error = DecodeError;
    fn try_from(a: pb::SocketAddr) -> Result<Self, DecodeError> {
        let port = u16::try_from(a.port).map_err(|_| invalid("port", "above 65535"))?;
        let ip = a.ip.as_ref();
        if let Ok(b) = <[u8; 4]>::try_from(ip) {
            if a.flowinfo != 0 || a.scope_id != 0 {
                return Err(invalid("ip", "flowinfo/scope_id on an IPv4 address"));
            }
            return Ok(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(b), port)));
        }
        if let Ok(b) = <[u8; 16]>::try_from(ip) {
            return Ok(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(b),
                port,
                a.flowinfo,
                a.scope_id,
            )));
        }
        Err(invalid("ip", format!("{} bytes, want 4 or 16", ip.len())))
    }
}

impl From<&Flow> for pb::Flow {
    fn from(f: &Flow) -> Self {
        pb::Flow {
            transport: pb::Transport::from(f.transport) as i32,
            remote: Some((&f.remote).into()),
            local: Some((&f.local).into()),
            edge: f.edge.clone(),
            conn: f.conn,
            seal: f
                .seal
                .map(|s| s.as_bytes().to_vec().into())
                .unwrap_or_default(),
        }
    }
}

impl TryFrom<pb::Flow> for Flow {
    type Error = DecodeError;
    fn try_from(f: pb::Flow) -> Result<Self, DecodeError> {
        Ok(Flow {
            transport: transport(f.transport)?,
            remote: required(f.remote, "flow.remote")?.try_into()?,
            local: required(f.local, "flow.local")?.try_into()?,
            edge: f.edge,
            conn: f.conn,
            seal: match f.seal.len() {
                0 => None,
                _ => Some(Seal::from_slice(&f.seal).ok_or_else(|| {
                    invalid("flow.seal", format!("{} bytes, want 16", f.seal.len()))
                })?),
            },
        })
    }
}

fn flow(f: Option<pb::Flow>) -> Result<Flow, DecodeError> {
    required(f, "flow")?.try_into()
}

fn methods_to_pb(m: &Option<Vec<String>>) -> Option<pb::MethodList> {
    m.as_ref().map(|m| pb::MethodList { methods: m.clone() })
}

impl From<&Binding> for pb::Binding {
    fn from(b: &Binding) -> Self {
        pb::Binding {
            aor: b.aor.clone(),
            uri: b.uri.clone(),
            params: b.params.clone(),
            expires_at_ms: b.expires_at_ms,
            call_id: b.call_id.clone(),
            cseq: b.cseq,
            flow: Some((&b.flow).into()),
            methods: methods_to_pb(&b.methods),
            q: b.q.clone(),
        }
    }
}

impl TryFrom<pb::Binding> for Binding {
    type Error = DecodeError;
    fn try_from(b: pb::Binding) -> Result<Self, DecodeError> {
        Ok(Binding {
            aor: b.aor,
            uri: b.uri,
            params: b.params,
            expires_at_ms: b.expires_at_ms,
            call_id: b.call_id,
            cseq: b.cseq,
            flow: flow(b.flow)?,
            methods: b.methods.map(|m| m.methods),
            q: b.q,
        })
    }
}

fn bindings(v: Vec<pb::Binding>) -> Result<Vec<Binding>, DecodeError> {
    v.into_iter().map(Binding::try_from).collect()
}

impl From<Rates> for pb::Rates {
    fn from(r: Rates) -> Self {
        pb::Rates {
            min: r.min,
            max: r.max,
            adaptive_min: r.adaptive_min,
        }
    }
}

fn rates(r: Option<pb::Rates>) -> Rates {
    r.map(|r| Rates {
        min: r.min,
        max: r.max,
        adaptive_min: r.adaptive_min,
    })
    .unwrap_or_default()
}

impl From<&Subscription> for pb::Subscription {
    fn from(s: &Subscription) -> Self {
        pb::Subscription {
            id: s.id.clone(),
            aor: s.aor.clone(),
            event: s.event.clone(),
            event_id: s.event_id.clone(),
            watcher: s.watcher.clone(),
            call_id: s.call_id.clone(),
            remote_tag: s.remote_tag.clone(),
            local_uri: s.local_uri.clone(),
            remote_uri: s.remote_uri.clone(),
            remote_target: s.remote_target.clone(),
            route_set: s.route_set.clone(),
            flow: Some((&s.flow).into()),
            remote_cseq: s.remote_cseq,
            expires_at_ms: s.expires_at_ms,
            content_type: s.content_type.clone(),
            view: pb::View::from(s.view) as i32,
            rates: Some(s.rates.into()),
        }
    }
}

impl TryFrom<pb::Subscription> for Subscription {
    type Error = DecodeError;
    fn try_from(s: pb::Subscription) -> Result<Self, DecodeError> {
        Ok(Subscription {
            id: s.id,
            aor: s.aor,
            event: s.event,
            event_id: s.event_id,
            watcher: s.watcher,
            call_id: s.call_id,
            remote_tag: s.remote_tag,
            local_uri: s.local_uri,
            remote_uri: s.remote_uri,
            remote_target: s.remote_target,
            route_set: s.route_set,
            flow: flow(s.flow)?,
            remote_cseq: s.remote_cseq,
            expires_at_ms: s.expires_at_ms,
            content_type: s.content_type,
            view: view(s.view)?,
            rates: rates(s.rates),
        })
    }
}

/// Headers as (name, value) pairs, for the messages that carry them.
pub fn headers_to_pb(h: &[(String, String)]) -> Vec<pb::Header> {
    h.iter()
        .map(|(name, value)| pb::Header {
            name: name.clone(),
            value: value.clone(),
        })
        .collect()
}

pub fn headers_from_pb(h: Vec<pb::Header>) -> Vec<(String, String)> {
    h.into_iter().map(|h| (h.name, h.value)).collect()
}

// ---------------------------------------------------------------------------
// Command
// ---------------------------------------------------------------------------

impl From<&ContactSpec> for pb::ContactSpec {
    fn from(c: &ContactSpec) -> Self {
        pb::ContactSpec {
            uri: c.uri.clone(),
            params: c.params.clone(),
            expires: c.expires,
            methods: methods_to_pb(&c.methods),
            q: c.q.clone(),
        }
    }
}

impl From<pb::ContactSpec> for ContactSpec {
    fn from(c: pb::ContactSpec) -> Self {
        ContactSpec {
            uri: c.uri,
            params: c.params,
            expires: c.expires,
            methods: c.methods.map(|m| m.methods),
            q: c.q,
        }
    }
}

impl From<&Origin> for pb::Origin {
    fn from(o: &Origin) -> Self {
        pb::Origin {
            txn: o.txn.clone(),
            deadline_ms: o.deadline_ms,
        }
    }
}

impl From<pb::Origin> for Origin {
    fn from(o: pb::Origin) -> Self {
        Origin {
            txn: o.txn,
            deadline_ms: o.deadline_ms,
        }
    }
}

impl From<&RegisterCmd> for pb::RegisterCmd {
    fn from(c: &RegisterCmd) -> Self {
        use pb::register_cmd::Action;
        pb::RegisterCmd {
            aor: c.aor.clone(),
            call_id: c.call_id.clone(),
            cseq: c.cseq,
            flow: Some((&c.flow).into()),
            action: Some(match &c.action {
                RegisterAction::Query => Action::Query(pb::RegisterQuery {}),
                RegisterAction::RemoveAll => Action::RemoveAll(pb::RegisterRemoveAll {}),
                RegisterAction::Update(v) => Action::Update(pb::RegisterUpdate {
                    contacts: v.iter().map(Into::into).collect(),
                }),
            }),
            origin: Some((&c.origin).into()),
        }
    }
}

impl TryFrom<pb::RegisterCmd> for RegisterCmd {
    type Error = DecodeError;
    fn try_from(c: pb::RegisterCmd) -> Result<Self, DecodeError> {
        use pb::register_cmd::Action;
        Ok(RegisterCmd {
            aor: c.aor,
            call_id: c.call_id,
            cseq: c.cseq,
            flow: flow(c.flow)?,
            action: match required(c.action, "register.action")? {
                Action::Query(_) => RegisterAction::Query,
                Action::RemoveAll(_) => RegisterAction::RemoveAll,
                Action::Update(u) => {
                    RegisterAction::Update(u.contacts.into_iter().map(Into::into).collect())
                }
            },
            origin: c.origin.map(Into::into).unwrap_or_default(),
        })
    }
}

impl From<&PublishCmd> for pb::PublishCmd {
    fn from(c: &PublishCmd) -> Self {
        pb::PublishCmd {
            aor: c.aor.clone(),
            event: c.event.clone(),
            if_match: c.if_match.clone(),
            expires: c.expires,
            body: c.body.as_ref().map(|(ct, b)| pb::Body {
                content_type: ct.clone(),
                body: b.clone(),
            }),
            origin: Some((&c.origin).into()),
        }
    }
}

impl From<pb::PublishCmd> for PublishCmd {
    fn from(c: pb::PublishCmd) -> Self {
        PublishCmd {
            aor: c.aor,
            event: c.event,
            if_match: c.if_match,
            expires: c.expires,
            body: c.body.map(|b| (b.content_type, b.body)),
            origin: c.origin.map(Into::into).unwrap_or_default(),
        }
    }
}

impl From<&SubscribeCmd> for pb::SubscribeCmd {
    fn from(c: &SubscribeCmd) -> Self {
        pb::SubscribeCmd {
            aor: c.aor.clone(),
            event: c.event.clone(),
            event_id: c.event_id.clone(),
            watcher: c.watcher.clone(),
            dialog: c.dialog.clone(),
            call_id: c.call_id.clone(),
            remote_tag: c.remote_tag.clone(),
            cseq: c.cseq,
            local_uri: c.local_uri.clone(),
            remote_uri: c.remote_uri.clone(),
            remote_target: c.remote_target.clone(),
            route_set: c.route_set.clone(),
            flow: Some((&c.flow).into()),
            expires: c.expires,
            content_type: c.content_type.clone(),
            origin: Some((&c.origin).into()),
            rates: Some(c.rates.into()),
        }
    }
}

impl TryFrom<pb::SubscribeCmd> for SubscribeCmd {
    type Error = DecodeError;
    fn try_from(c: pb::SubscribeCmd) -> Result<Self, DecodeError> {
        Ok(SubscribeCmd {
            aor: c.aor,
            event: c.event,
            event_id: c.event_id,
            watcher: c.watcher,
            dialog: c.dialog,
            call_id: c.call_id,
            remote_tag: c.remote_tag,
            cseq: c.cseq,
            local_uri: c.local_uri,
            remote_uri: c.remote_uri,
            remote_target: c.remote_target,
            route_set: c.route_set,
            flow: flow(c.flow)?,
            expires: c.expires,
            rates: rates(c.rates),
            content_type: c.content_type,
            origin: c.origin.map(Into::into).unwrap_or_default(),
        })
    }
}

impl From<&Command> for pb::Command {
    fn from(c: &Command) -> Self {
        use pb::command::Command as C;
        let command = match c {
            Command::Register(r) => C::Register(r.into()),
            Command::Publish(p) => C::Publish(p.into()),
            Command::Subscribe(s) => C::Subscribe(s.into()),
            Command::Route {
                aor,
                method,
                origin,
                edge,
            } => C::Route(pb::RouteCmd {
                aor: aor.clone(),
                method: method.clone(),
                origin: Some(origin.into()),
                edge: edge.clone(),
            }),
            Command::EndSubscription { id, reason } => C::EndSubscription(pb::EndSubscriptionCmd {
                id: id.clone(),
                reason: pb::EndReason::from(*reason) as i32,
            }),
            Command::SetHardState { aor, event, body } => C::SetHardState(pb::SetHardStateCmd {
                aor: aor.clone(),
                event: event.clone(),
                body: body.clone(),
            }),
            Command::RecomposeList { list } => {
                C::RecomposeList(pb::RecomposeListCmd { list: list.clone() })
            }
        };
        pb::Command {
            command: Some(command),
        }
    }
}

impl TryFrom<pb::Command> for Command {
    type Error = DecodeError;
    fn try_from(c: pb::Command) -> Result<Self, DecodeError> {
        use pb::command::Command as C;
        Ok(match required(c.command, "command")? {
            C::Register(r) => Command::Register(r.try_into()?),
            C::Publish(p) => Command::Publish(p.into()),
            C::Subscribe(s) => Command::Subscribe(s.try_into()?),
            C::Route(r) => Command::Route {
                aor: r.aor,
                method: r.method,
                origin: r.origin.map(Into::into).unwrap_or_default(),
                edge: r.edge,
            },
            C::EndSubscription(e) => Command::EndSubscription {
                id: e.id,
                reason: end_reason(e.reason)?,
            },
            C::SetHardState(h) => Command::SetHardState {
                aor: h.aor,
                event: h.event,
                body: h.body,
            },
            C::RecomposeList(l) => Command::RecomposeList { list: l.list },
        })
    }
}

// ---------------------------------------------------------------------------
// Reply
// ---------------------------------------------------------------------------

impl From<&Reply> for pb::Reply {
    fn from(r: &Reply) -> Self {
        use pb::reply::Reply as R;
        let reply = match r {
            Reply::Registered { bindings, now_ms } => R::Registered(pb::Registered {
                bindings: bindings.iter().map(Into::into).collect(),
                now_ms: *now_ms,
            }),
            Reply::Published { etag, expires } => R::Published(pb::Published {
                etag: etag.clone(),
                expires: *expires,
            }),
            Reply::Subscribed { id, expires, view } => R::Subscribed(pb::Subscribed {
                id: id.clone(),
                expires: *expires,
                view: pb::View::from(*view) as i32,
            }),
            Reply::Routes(b) => R::Routes(pb::Routes {
                bindings: b.iter().map(Into::into).collect(),
            }),
            Reply::Done => R::Done(pb::Done {}),
            Reply::Refused(why) => R::Refused(refused_to_pb(*why)),
        };
        pb::Reply { reply: Some(reply) }
    }
}

/// A SIP status code as the wire may carry it: 100..=699.
pub fn status_code(v: u32) -> Result<u16, DecodeError> {
    match u16::try_from(v) {
        Ok(c) if (100..=699).contains(&c) => Ok(c),
        _ => Err(invalid("code", format!("{v} is not a SIP status code"))),
    }
}

fn refused_to_pb(r: Refusal) -> pb::Refused {
    use pb::refused::{Quota as Q, Why as W};
    let (why, quota, limit) = match r {
        Refusal::UnknownEtag => (W::UnknownEtag, Q::Unspecified, 0),
        Refusal::NoSuchSubscription => (W::NoSuchSubscription, Q::Unspecified, 0),
        Refusal::OutOfOrderCSeq => (W::OutOfOrderCseq, Q::Unspecified, 0),
        Refusal::PolicyRejected => (W::PolicyRejected, Q::Unspecified, 0),
        Refusal::MissingBody => (W::MissingBody, Q::Unspecified, 0),
        Refusal::NotRegistered => (W::NotRegistered, Q::Unspecified, 0),
        Refusal::UnknownUser => (W::UnknownUser, Q::Unspecified, 0),
        Refusal::TooMany { what, limit } => (
            W::TooMany,
            match what {
                Quota::Publications => Q::Publications,
                Quota::Contacts => Q::Contacts,
                Quota::WatcherSubscriptions => Q::WatcherSubscriptions,
                Quota::Watchers => Q::Watchers,
            },
            limit,
        ),
        Refusal::DocumentTooLarge { limit } => (W::DocumentTooLarge, Q::Unspecified, limit),
        Refusal::StoreFailed => (W::StoreFailed, Q::Unspecified, 0),
        Refusal::Unavailable => (W::Unavailable, Q::Unspecified, 0),
        Refusal::RelayedElsewhere => (W::RelayedElsewhere, Q::Unspecified, 0),
        // A refusal added to core without a wire form: the receiver fails
        // to decode it, and its caller answers as for any bus failure.
        _ => (W::Unspecified, Q::Unspecified, 0),
    };
    pb::Refused {
        why: why as i32,
        quota: quota as i32,
        limit,
    }
}

fn refused_from_pb(f: &pb::Refused) -> Result<Refusal, DecodeError> {
    use pb::refused::{Quota as Q, Why as W};
    let why =
        W::try_from(f.why).map_err(|_| invalid("why", format!("unknown refusal {}", f.why)))?;
    Ok(match why {
        W::Unspecified => return Err(invalid("why", "unspecified refusal".to_string())),
        W::UnknownEtag => Refusal::UnknownEtag,
        W::NoSuchSubscription => Refusal::NoSuchSubscription,
        W::OutOfOrderCseq => Refusal::OutOfOrderCSeq,
        W::PolicyRejected => Refusal::PolicyRejected,
        W::MissingBody => Refusal::MissingBody,
        W::NotRegistered => Refusal::NotRegistered,
        W::UnknownUser => Refusal::UnknownUser,
        W::TooMany => Refusal::TooMany {
            what: match Q::try_from(f.quota) {
                Ok(Q::Publications) => Quota::Publications,
                Ok(Q::Contacts) => Quota::Contacts,
                Ok(Q::WatcherSubscriptions) => Quota::WatcherSubscriptions,
                Ok(Q::Watchers) => Quota::Watchers,
                _ => return Err(invalid("quota", format!("unknown quota {}", f.quota))),
            },
            limit: f.limit,
        },
        W::DocumentTooLarge => Refusal::DocumentTooLarge { limit: f.limit },
        W::StoreFailed => Refusal::StoreFailed,
        W::Unavailable => Refusal::Unavailable,
        W::RelayedElsewhere => Refusal::RelayedElsewhere,
    })
}

impl TryFrom<pb::Reply> for Reply {
    type Error = DecodeError;
    fn try_from(r: pb::Reply) -> Result<Self, DecodeError> {
        use pb::reply::Reply as R;
        Ok(match required(r.reply, "reply")? {
            R::Registered(r) => Reply::Registered {
                bindings: bindings(r.bindings)?,
                now_ms: r.now_ms,
            },
            R::Published(p) => Reply::Published {
                etag: p.etag,
                expires: p.expires,
            },
            R::Subscribed(s) => Reply::Subscribed {
                id: s.id,
                expires: s.expires,
                view: view(s.view)?,
            },
            R::Routes(r) => Reply::Routes(bindings(r.bindings)?),
            R::Done(_) => Reply::Done,
            R::Refused(f) => Reply::Refused(refused_from_pb(&f)?),
        })
    }
}

// ---------------------------------------------------------------------------
// NotifyJob
// ---------------------------------------------------------------------------

impl From<&NotifyJob> for pb::NotifyJob {
    fn from(j: &NotifyJob) -> Self {
        use pb::notify_job::Job;
        let job = match j {
            NotifyJob::Changed {
                aor,
                event,
                version,
                at_ms,
            } => Job::Changed(pb::Changed {
                aor: aor.clone(),
                event: event.clone(),
                version: *version,
                at_ms: *at_ms,
            }),
            NotifyJob::ChangedFor {
                aor,
                event,
                version,
                at_ms,
                ids,
            } => Job::ChangedFor(pb::ChangedFor {
                change: Some(pb::Changed {
                    aor: aor.clone(),
                    event: event.clone(),
                    version: *version,
                    at_ms: *at_ms,
                }),
                ids: ids.clone(),
            }),
            NotifyJob::Refresh { id } => Job::Refresh(pb::Refresh { id: id.clone() }),
            NotifyJob::Terminated { sub, reason } => Job::Terminated(pb::Terminated {
                sub: Some(sub.as_ref().into()),
                reason: pb::EndReason::from(*reason) as i32,
            }),
            NotifyJob::ListMember { list } => {
                Job::ListMember(pb::ListMember { list: list.clone() })
            }
        };
        pb::NotifyJob { job: Some(job) }
    }
}

impl TryFrom<pb::NotifyJob> for NotifyJob {
    type Error = DecodeError;
    fn try_from(j: pb::NotifyJob) -> Result<Self, DecodeError> {
        use pb::notify_job::Job;
        Ok(match required(j.job, "job")? {
            Job::Changed(c) => NotifyJob::Changed {
                aor: c.aor,
                event: c.event,
                version: c.version,
                at_ms: c.at_ms,
            },
            Job::ChangedFor(f) => {
                let c = required(f.change, "changed_for.change")?;
                NotifyJob::ChangedFor {
                    aor: c.aor,
                    event: c.event,
                    version: c.version,
                    at_ms: c.at_ms,
                    ids: f.ids,
                }
            }
            Job::Refresh(r) => NotifyJob::Refresh { id: r.id },
            Job::Terminated(t) => NotifyJob::Terminated {
                sub: Box::new(required(t.sub, "terminated.sub")?.try_into()?),
                reason: end_reason(t.reason)?,
            },
            Job::ListMember(l) => NotifyJob::ListMember { list: l.list },
        })
    }
}

//! SIP request → command for the shard owner, and its answer → SIP:
//! REGISTER, PUBLISH and SUBSCRIBE, the written retry policy towards the
//! shard owner (`ask`), and the mapping of its refusals.

use super::*;
use presence_core::Rates;

/// How long one request to a shard owner may take before it is sent again.
pub(super) const ASK_ATTEMPT: Duration = Duration::from_secs(4);

/// How long the edge tries a shard owner for one SIP request before it
/// answers 503: well inside the UA's 32 s transaction.
pub(super) const ASK_BUDGET: Duration = Duration::from_secs(10);

pub(super) fn contact_listing(b: &Binding, now_ms: u64) -> String {
    let remaining = b.expires_at_ms.saturating_sub(now_ms).div_ceil(1000);
    format!("<{}>{};expires={remaining}", b.uri, b.params)
}

impl Edge {
    /// Where a command comes from: the request's transaction key and the
    /// time after which this edge no longer waits for its answer.
    pub(super) fn origin(&self, req: &Request) -> Origin {
        Origin {
            txn: req.transaction_key().unwrap_or_default(),
            deadline_ms: self.clock.now_ms() + ASK_BUDGET.as_millis() as u64,
        }
    }

    /// Ask the shard owner of `aor`. The retry policy for edge → shard
    /// requests (ARCHITECTURE.md, "Retries"), the only one:
    /// - nobody serves the shard (a handover): the cluster's `HandoverRetry`
    ///   retries for `--handover-wait-ms`; then 503 here;
    /// - no answer in [`ASK_ATTEMPT`] (a lost request or reply): the same
    ///   command again, with the same transaction key, which the owner
    ///   answers with its first answer instead of applying it twice;
    /// - [`ASK_BUDGET`] is over: 503; the command carries that deadline, and
    ///   an owner that dequeues it later does not apply it.
    pub(super) async fn ask(&self, aor: &str, cmd: Command) -> Reply {
        let subject = shard_subject(shard_of(aor, self.cfg.shards));
        let deadline = Instant::now() + ASK_BUDGET;
        let mut attempt = 0u32;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            attempt += 1;
            match self
                .bus
                .request(&subject, cmd.clone(), left.min(ASK_ATTEMPT))
                .await
            {
                Ok(r) => return r,
                Err(presence_store::BusError::NoResponders(_)) => break,
                Err(e) => {
                    tracing::warn!(error = %e, attempt, "shard request failed; sending it again");
                    if attempt > 1 {
                        // A bus that fails at once must not spin.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
        Reply::refused(Refusal::Unavailable)
    }

    /// The answer to what the shard owner refused (through `answers.rs`).
    pub(super) fn refusal(&self, req: &Request, src: Source, reply: Reply) -> ResponseBuilder {
        match reply {
            Reply::Refused(why) => self.answer(req, src, crate::answers::for_refusal(&why)),
            other => {
                tracing::error!(?other, "unexpected reply from the shard");
                self.reply(req, src, 500, "Server Internal Error")
            }
        }
    }

    /// The answer to what the edge refuses on its own (through `answers.rs`).
    pub(super) fn reject(&self, req: &Request, src: Source, why: Rejection) -> ResponseBuilder {
        self.answer(req, src, crate::answers::for_rejection(&why))
    }

    fn answer(&self, req: &Request, src: Source, a: crate::answers::Answer) -> ResponseBuilder {
        let mut b = self.reply(req, src, a.code, &a.reason);
        for (n, v) in a.headers {
            b = b.header(n, v);
        }
        b
    }

    /// Granted expiry, or the refusal: malformed (400), too brief (423).
    pub(super) fn grant_expires(
        &self,
        asked: Option<Result<u32, ()>>,
        default: u32,
    ) -> Result<u32, Rejection> {
        let e = match asked {
            None => default,
            Some(Ok(e)) => e,
            Some(Err(())) => return Err(Rejection::Malformed("Malformed Expires")),
        };
        if e > 0 && e < self.cfg.min_expires {
            return Err(Rejection::IntervalTooBrief {
                min: self.cfg.min_expires,
            });
        }
        Ok(e.min(self.cfg.max_expires))
    }

    /// REGISTER → the command for the AoR's shard owner (RFC 3261 §10.3:
    /// the AoR is the To URI, a local domain, the authenticated user's own;
    /// a wildcard only with Expires 0), or the refusal to answer at once.
    /// Pure: no I/O (the clock only for the command's deadline).
    pub(super) fn register_command(
        &self,
        req: &Request,
        src: Source,
        identity: Option<String>,
    ) -> Result<(String, Command), Rejection> {
        let Some(to) = req.to_addr() else {
            return Err(Rejection::Malformed("Malformed To"));
        };
        let Some(aor) = canonical_aor(&to.uri) else {
            return Err(Rejection::Malformed("To Is Not an Address of Record"));
        };
        if !self.is_local(aor.domain()) {
            return Err(Rejection::ForeignDomain { registrar: true });
        }
        if identity.as_deref().is_some_and(|id| id != aor.as_str()) {
            return Err(Rejection::NotYourAor);
        }
        let contacts = match req.contacts() {
            Ok(c) => c,
            Err(()) => return Err(Rejection::Malformed("Malformed Contact")),
        };
        let header_expires = match req.expires() {
            Some(Err(())) => return Err(Rejection::Malformed("Malformed Expires")),
            Some(Ok(e)) => Some(e),
            None => None,
        };
        let action = if contacts.is_empty() {
            RegisterAction::Query
        } else if contacts.iter().any(|c| matches!(c, ContactValue::Star)) {
            if contacts.len() != 1 || header_expires != Some(0) {
                return Err(Rejection::Malformed("Invalid Wildcard Contact"));
            }
            RegisterAction::RemoveAll
        } else {
            let mut specs = Vec::new();
            for c in contacts {
                let ContactValue::Addr(na) = c else { continue };
                let asked = match na.param("expires") {
                    Some(Some(v)) => Some(presence_sip::headers::parse_delta(v)),
                    _ => header_expires.map(Ok),
                };
                let expires = self.grant_expires(asked, 3600)?;
                let params: String = na
                    .params
                    .iter()
                    .filter(|(n, _)| n != "expires")
                    .map(|(n, v)| match v {
                        Some(v) if v.contains([' ', ',', ';', '"']) || n == "methods" => {
                            format!(";{n}=\"{v}\"")
                        }
                        Some(v) => format!(";{n}={v}"),
                        None => format!(";{n}"),
                    })
                    .collect();
                let methods = na.param("methods").and_then(|m| m.clone()).map(|m| {
                    m.split(',')
                        .map(|s| s.trim().to_ascii_uppercase())
                        .filter(|s| !s.is_empty())
                        .collect()
                });
                let q = na.param("q").and_then(|q| q.clone());
                specs.push(ContactSpec {
                    uri: na.uri_text.clone(),
                    params,
                    expires,
                    methods,
                    q,
                });
            }
            RegisterAction::Update(specs)
        };
        let (cseq, _) = req.cseq().unwrap_or((0, String::new()));
        let cmd = Command::Register(RegisterCmd {
            aor: aor.to_string(),
            call_id: req.call_id().unwrap_or_default().to_string(),
            cseq,
            flow: self.flow(src),
            action,
            origin: self.origin(req),
        });
        Ok((aor.to_string(), cmd))
    }

    /// REGISTER: map, ask the shard owner (`ask`), answer.
    pub(super) async fn register(
        &self,
        req: &Request,
        src: Source,
        identity: Option<String>,
    ) -> ResponseBuilder {
        let (aor, cmd) = match self.register_command(req, src, identity) {
            Ok(c) => c,
            Err(why) => return self.reject(req, src, why),
        };
        match self.ask(&aor, cmd).await {
            Reply::Registered { bindings, now_ms } => {
                let mut b = self.reply(req, src, 200, "OK");
                for binding in &bindings {
                    b = b.header("Contact", contact_listing(binding, now_ms));
                }
                b
            }
            other => self.refusal(req, src, other),
        }
    }

    /// PUBLISH → the command (RFC 3903 §6: the resource is the Request-URI,
    /// the package must take publications of this media type, an initial
    /// one needs a body and Expires > 0), or the refusal to answer at once.
    /// Pure: no I/O.
    pub(super) fn publish_command(
        &self,
        req: &Request,
        identity: Option<String>,
    ) -> Result<(String, Command), Rejection> {
        let aor =
            canonical_aor(&req.uri).or_else(|| req.to_addr().and_then(|t| canonical_aor(&t.uri)));
        let Some(aor) = aor else {
            return Err(Rejection::Malformed(
                "Request-URI Is Not an Address of Record",
            ));
        };
        if !self.is_local(aor.domain()) {
            return Err(Rejection::ForeignDomain { registrar: false });
        }
        // 489 to a PUBLISH names the packages that take one.
        let Some(event) = req.event() else {
            return Err(Rejection::BadEvent {
                allow_events: self.cfg.packages.publishable_events(),
            });
        };
        let Some(package) = self
            .cfg
            .packages
            .get(&event.package)
            .filter(|p| !p.publish_types().is_empty())
        else {
            return Err(Rejection::BadEvent {
                allow_events: self.cfg.packages.publishable_events(),
            });
        };
        if identity
            .as_deref()
            .is_some_and(|id| id != aor.as_str() && !self.cfg.trusted.user(id))
        {
            return Err(Rejection::NotYourAor);
        }
        let expires = self.grant_expires(req.expires(), 3600)?;
        let if_match = req.sip_if_match().map(str::to_string);
        let body = if req.body.is_empty() {
            None
        } else {
            let ct = req.content_type();
            let Some(ct) = ct.filter(|ct| package.publish_types().contains(&ct.as_str())) else {
                return Err(Rejection::UnsupportedMediaType {
                    accept: package.publish_types().join(", "),
                });
            };
            if let Err(why) = package.check_body(&req.body) {
                tracing::debug!(%why, "malformed publication body");
                return Err(Rejection::Malformed("Malformed Event State Document"));
            }
            Some((ct.as_str().to_string(), req.body.clone()))
        };
        if if_match.is_none() && body.is_none() {
            return Err(Rejection::Malformed("Missing Body"));
        }
        if if_match.is_none() && expires == 0 {
            return Err(Rejection::Malformed("Expires 0 Without SIP-If-Match"));
        }
        let cmd = Command::Publish(PublishCmd {
            aor: aor.to_string(),
            event: package.name().to_string(),
            if_match,
            expires,
            body,
            origin: self.origin(req),
        });
        Ok((aor.to_string(), cmd))
    }

    /// PUBLISH: map, ask the shard owner (`ask`), answer.
    pub(super) async fn publish(
        &self,
        req: &Request,
        src: Source,
        identity: Option<String>,
    ) -> ResponseBuilder {
        let (aor, cmd) = match self.publish_command(req, identity) {
            Ok(c) => c,
            Err(why) => return self.reject(req, src, why),
        };
        match self.ask(&aor, cmd).await {
            Reply::Published { etag, expires } => self
                .reply(req, src, 200, "OK")
                .header("SIP-ETag", etag)
                .header("Expires", expires.to_string()),
            other => self.refusal(req, src, other),
        }
    }

    /// SUBSCRIBE → the command (RFC 6665: a served package, an acceptable
    /// type, a Contact for an initial one; in-dialog ones are matched by the
    /// shard owner), or the refusal to answer at once. Pure: no I/O.
    pub(super) fn subscribe_command(
        &self,
        req: &Request,
        src: Source,
        identity: Option<String>,
    ) -> Result<(String, Command), Rejection> {
        let found = req
            .event()
            .and_then(|e| self.cfg.packages.get(&e.package).cloned().map(|p| (e, p)));
        let Some((event, package)) = found else {
            return Err(Rejection::BadEvent {
                allow_events: self.cfg.packages.allow_events(),
            });
        };
        let (Some(from), Some(to)) = (req.from_addr(), req.to_addr()) else {
            return Err(Rejection::Malformed("Malformed From or To"));
        };
        let in_dialog = to.tag.clone();
        let aor = match (&in_dialog, canonical_aor(&req.uri)) {
            (_, Some(a)) => a,
            (Some(_), None) => match canonical_aor(&to.uri) {
                Some(a) => a,
                None => return Err(Rejection::Malformed("Not an Address of Record")),
            },
            (None, None) => {
                return Err(Rejection::Malformed(
                    "Request-URI Is Not an Address of Record",
                ))
            }
        };
        if in_dialog.is_none() && !self.is_local(aor.domain()) {
            return Err(Rejection::ForeignDomain { registrar: false });
        }
        let accept = req.accept();
        let is_list = event.package == "presence" && self.cfg.lists.current().is_list(aor.as_str());
        let content_type = if is_list {
            // RFC 4662: one subscription for the whole list, for a
            // subscriber that says it understands one.
            let eventlist = req
                .list("Supported")
                .iter()
                .any(|t| t.eq_ignore_ascii_case("eventlist"));
            if in_dialog.is_none() && !eventlist {
                return Err(Rejection::EventlistRequired);
            }
            match accept.as_deref() {
                Some(list)
                    if !list.is_empty() && !list.iter().any(|m| m.matches("multipart/related")) =>
                {
                    return Err(Rejection::NotAcceptable {
                        accept: "multipart/related, application/rlmi+xml, application/pidf+xml"
                            .into(),
                    });
                }
                _ => "multipart/related",
            }
        } else {
            match package.negotiate(accept.as_deref()) {
                Ok(ct) => ct,
                Err(()) => {
                    return Err(Rejection::NotAcceptable {
                        accept: package.notify_types().join(", "),
                    });
                }
            }
        };
        let expires = self.grant_expires(req.expires(), 3600)?;
        let contact = match req.contacts() {
            Ok(c) => c.into_iter().find_map(|c| match c {
                ContactValue::Addr(a) => Some(a.uri_text),
                ContactValue::Star => None,
            }),
            Err(()) => return Err(Rejection::Malformed("Malformed Contact")),
        };
        let Some(remote_target) = contact.or_else(|| in_dialog.as_ref().map(|_| String::new()))
        else {
            return Err(Rejection::Malformed("Missing Contact"));
        };
        let watcher = match identity {
            Some(id) => id,
            None => match canonical_aor(&from.uri) {
                Some(a) => a.to_string(),
                None => return Err(Rejection::Malformed("From Is Not an Address of Record")),
            },
        };
        let Some(remote_tag) = from.tag.clone() else {
            return Err(Rejection::Malformed("Missing From Tag"));
        };
        let (cseq, _) = req.cseq().unwrap_or((0, String::new()));
        let strip_tag = |v: &str| -> String {
            let na = presence_sip::NameAddr::parse(v);
            match na {
                Some(n) => {
                    let mut s = match &n.display {
                        Some(d) => format!("\"{}\" <{}>", d.replace('"', "\\\""), n.uri_text),
                        None => format!("<{}>", n.uri_text),
                    };
                    for (k, val) in n.params.iter().filter(|(k, _)| k != "tag") {
                        match val {
                            Some(val) => s.push_str(&format!(";{k}={val}")),
                            None => s.push_str(&format!(";{k}")),
                        }
                    }
                    s
                }
                None => v.to_string(),
            }
        };
        // RFC 6446 rate control: Event header parameters.
        let rates = Rates::parse(event.params.iter().map(|(n, v)| (n.as_str(), v.as_deref())))
            .map_err(Rejection::Malformed)?;
        let cmd = Command::Subscribe(SubscribeCmd {
            aor: aor.to_string(),
            event: package.name().to_string(),
            event_id: event.id.clone(),
            watcher,
            dialog: in_dialog.clone(),
            call_id: req.call_id().unwrap_or_default().to_string(),
            remote_tag,
            cseq,
            local_uri: strip_tag(req.header("To").unwrap_or_default()),
            remote_uri: strip_tag(req.header("From").unwrap_or_default()),
            remote_target,
            route_set: req.list("Record-Route"),
            flow: self.flow(src),
            expires,
            content_type: content_type.to_string(),
            origin: self.origin(req),
            rates,
        });
        Ok((aor.to_string(), cmd))
    }

    /// SUBSCRIBE: map, ask the shard owner (`ask`), answer.
    pub(super) async fn subscribe(
        &self,
        req: &Request,
        src: Source,
        identity: Option<String>,
    ) -> ResponseBuilder {
        let (aor, cmd) = match self.subscribe_command(req, src, identity) {
            Ok(c) => c,
            Err(why) => return self.reject(req, src, why),
        };
        // RFC 4662 §4.1: the answer to a list subscription requires eventlist.
        let list = matches!(&cmd, Command::Subscribe(c) if c.content_type == "multipart/related");
        match self.ask(&aor, cmd).await {
            Reply::Subscribed { id, expires, .. } => {
                let ok = ResponseBuilder::new(&req.headers, 200, "OK", Some(&id), Some(src.remote))
                    .header("Expires", expires.to_string())
                    .header("Contact", self.contact_header(src))
                    .header("Allow-Events", self.cfg.packages.allow_events());
                if list {
                    ok.header("Require", "eventlist")
                } else {
                    ok
                }
            }
            other => self.refusal(req, src, other),
        }
    }
}

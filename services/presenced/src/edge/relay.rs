//! Pager-mode MESSAGE relay (RFC 3428): fork to the target's flows (once
//! per flow), each through the edge that holds it; the best answer back.

use super::*;

/// At most this many forks of one MESSAGE (after merging contacts that
/// share a flow: one device, one copy).
pub const MAX_FORKS: usize = 10;

/// Response preference when forking (RFC 3261 §16.7 simplified): 6xx, then
/// 4xx other than 408/480, then 5xx, then 408/480.
pub fn rank(code: u16) -> u8 {
    match code {
        200..=299 => 0,
        600..=699 => 1,
        408 | 480 => 4,
        400..=499 => 2,
        500..=599 => 3,
        _ => 5,
    }
}

impl Edge {
    /// Pager-mode MESSAGE (RFC 3428): relay to the target's contacts and
    /// relay the best final answer back. The body passes byte for byte.
    ///
    /// With Digest on, the sender is who authenticated: a From naming anyone
    /// else is refused (403), and the relayed request carries our
    /// `P-Asserted-Identity` for it. A P-Asserted-Identity or
    /// P-Preferred-Identity from the UA is never passed on (RFC 3325 §5:
    /// only a trusted node asserts identities, and no UA is one).
    pub(super) async fn message(
        self: &Arc<Self>,
        req: &Request,
        src: Source,
        identity: Option<String>,
    ) -> ResponseBuilder {
        let Some(aor) = canonical_aor(&req.uri) else {
            return self.reject(req, src, Rejection::NotFound);
        };
        if let Some(id) = &identity {
            let from = req.from_addr().and_then(|f| canonical_aor(&f.uri));
            if from.as_ref().map(|f| f.as_str()) != Some(id.as_str()) {
                return self.reject(req, src, Rejection::NotYourIdentity);
            }
        }
        if !self.is_local(aor.domain()) {
            return self.reject(req, src, Rejection::ForeignDomain { registrar: false });
        }
        let max_forwards = match req.max_forwards() {
            Some(Ok(0)) => return self.reject(req, src, Rejection::TooManyHops),
            Some(Ok(n)) => n - 1,
            _ => 69,
        };
        let targets = match self
            .ask(
                aor.as_str(),
                Command::Route {
                    aor: aor.to_string(),
                    method: "MESSAGE".into(),
                    origin: self.origin(req),
                    edge: self.cfg.id.clone(),
                },
            )
            .await
        {
            Reply::Routes(t) => t,
            other => return self.refusal(req, src, other),
        };
        // Fork to every contact, one copy per flow (contacts that share a
        // flow are one device), at most MAX_FORKS; the first 2xx wins, else
        // the lowest class.
        let mut targets = targets;
        let mut seen_flows = std::collections::HashSet::new();
        targets.retain(|t| seen_flows.insert((t.flow.edge.clone(), t.flow.remote, t.flow.conn)));
        targets.truncate(MAX_FORKS);
        let mut set = tokio::task::JoinSet::new();
        for target in targets {
            let mut headers = rsip::Headers::default();
            for h in req.headers.iter() {
                let n = h.name();
                if n.eq_ignore_ascii_case("Max-Forwards")
                    || n.eq_ignore_ascii_case("Route")
                    || n.eq_ignore_ascii_case("Proxy-Authorization")
                    || n.eq_ignore_ascii_case("Content-Length")
                    || n.eq_ignore_ascii_case("P-Asserted-Identity")
                    || n.eq_ignore_ascii_case("P-Preferred-Identity")
                {
                    continue;
                }
                headers.push(h.clone());
            }
            if let Some(id) = &identity {
                headers.push(rsip::headers::make_header(
                    "P-Asserted-Identity",
                    format!("<{id}>"),
                ));
            }
            headers.push(rsip::headers::make_header(
                "Max-Forwards",
                max_forwards.to_string(),
            ));
            let out = OutRequest {
                flow: target.flow.clone(),
                method: "MESSAGE".into(),
                uri: target.uri.clone(),
                headers,
                body: req.body.clone(),
                deadline_ms: self.clock.now_ms() + TIMER_F.as_millis() as u64,
            };
            let me = self.clone();
            set.spawn(async move { me.send_via_flow_edge(out).await });
        }
        let mut best: Option<Outcome> = None;
        while let Some(res) = set.join_next().await {
            let Ok(o) = res else { continue };
            if (200..300).contains(&o.code) {
                set.abort_all();
                best = Some(o);
                break;
            }
            let better = match &best {
                None => true,
                Some(b) => rank(o.code) < rank(b.code),
            };
            if better {
                best = Some(o);
            }
        }
        let Some(o) = best else {
            return self.reject(req, src, Rejection::Unreachable);
        };
        if o.timed_out {
            return self.reject(req, src, Rejection::Timeout);
        }
        // Relay the answer: the request's Via stack, the answer's other headers.
        let skip = ["via", "from", "to", "call-id", "cseq", "content-length"];
        let to_tag = o
            .headers
            .iter()
            .find(|h| h.name().eq_ignore_ascii_case("To"))
            .and_then(|h| presence_sip::NameAddr::parse(h.value()))
            .and_then(|n| n.tag);
        let fallback_tag = new_tag();
        let mut b = ResponseBuilder::new(
            &req.headers,
            o.code,
            &o.reason,
            to_tag.as_deref().or(Some(&fallback_tag)),
            Some(src.remote),
        );
        let mut ct = None;
        for h in o.headers.iter() {
            let n = h.name().to_ascii_lowercase();
            if n == "content-type" {
                ct = Some(h.value().to_string());
                continue;
            }
            if !skip.contains(&n.as_str()) {
                b = b.header(h.name(), h.value().to_string());
            }
        }
        if !o.body.is_empty() {
            b = b.body(
                ct.as_deref().unwrap_or("application/octet-stream"),
                o.body.to_vec(),
            );
        }
        b
    }

    /// Send a request through the edge that holds its flow: here, or over
    /// the bus on `edge.<id>` (a TCP flow's connection exists only there,
    /// and a UDP UA behind NAT answers only its own edge's address). When
    /// that edge is gone, any edge sends it; when the bus fails, it counts
    /// as a timeout.
    pub(super) async fn send_via_flow_edge(self: &Arc<Self>, out: OutRequest) -> Outcome {
        let bus = match self.out_bus.get() {
            Some(bus) if out.flow.edge != self.cfg.id => bus.clone(),
            _ => return self.send_request(out).await,
        };
        let subject = crate::names::edge_subject(&out.flow.edge);
        // Timer F on the far edge, plus the bus hops.
        let wait = TIMER_F + Duration::from_secs(2);
        // An edge the roster does not list, or found gone before, gets one
        // attempt (its id may be back), not the whole wait again (see
        // `gone_edges.rs`, `roster.rs`).
        let roster = self.roster.get().cloned();
        let known_gone = roster.as_ref().is_some_and(|r| r.is_gone(&out.flow.edge))
            || self.gone.is_gone(&out.flow.edge, std::time::Instant::now());
        let gone_at = if known_gone {
            Instant::now()
        } else {
            Instant::now() + crate::names::EDGE_GONE_AFTER
        };
        let result = loop {
            match bus.request(&subject, out.clone(), wait).await {
                // Nobody serves it: a NATS reconnection, or the edge is gone.
                Err(presence_store::BusError::NoResponders(_))
                    if Instant::now() < gone_at
                        && !roster.as_ref().is_some_and(|r| r.is_gone(&out.flow.edge)) =>
                {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(presence_store::BusError::NoResponders(_)) => {
                    self.gone.mark(&out.flow.edge, std::time::Instant::now());
                    // The flow's successor (one edge per flow), else any.
                    let key = out.flow.remote.to_string();
                    if let Some(next) = roster
                        .as_ref()
                        .and_then(|r| r.successor(&key, &out.flow.edge))
                        .filter(|next| *next != self.cfg.id)
                    {
                        let via = crate::names::edge_subject(&next);
                        match bus.request(&via, out.clone(), wait).await {
                            Err(presence_store::BusError::NoResponders(_)) => {}
                            other => break other,
                        }
                    } else if roster.is_some() {
                        // This edge is the successor: it sends it.
                        let mut out = out;
                        out.flow.edge = self.cfg.id.clone();
                        return self.send_request(out).await;
                    }
                    break bus.request(crate::names::ANY_EDGE, out, wait).await;
                }
                other => {
                    if other.is_ok() {
                        self.gone.back(&out.flow.edge);
                    }
                    break other;
                }
            }
        };
        result.unwrap_or_else(|e| {
            tracing::debug!(error = %e, edge = %subject, "cannot relay through the flow's edge");
            Outcome::timeout()
        })
    }
}

//! Client transactions for our NOTIFY and MESSAGE (RFC 3261 §17.1.2):
//! Timer E/F over UDP within the amplification budget, one send over TCP,
//! matching answers by branch (peeked when only the code is needed).

use super::*;

pub(super) const T1: Duration = Duration::from_millis(500);

pub(super) const T2: Duration = Duration::from_secs(4);

pub(super) const TIMER_F: Duration = Duration::from_secs(32);

/// Requests larger than this go over TCP when the UA has a connection
/// (RFC 3261 §18.1.1: 200 bytes below the common 1500-byte path MTU).
pub(super) const UDP_MTU_SAFE: usize = 1300;

/// The largest UDP payload over IPv4.
pub(super) const MAX_UDP_DATAGRAM: usize = 65_507;

/// The encoded size of `out`, within our Via and Contact (~200 bytes).
pub(super) fn approx_size(out: &OutRequest) -> usize {
    let headers: usize = out
        .headers
        .iter()
        .map(|h| h.name().len() + h.value().len() + 4)
        .sum();
    out.method.len() + out.uri.len() + headers + out.body.len() + 256
}

/// A client transaction waiting for its final response.
pub(super) struct Waiter {
    pub(super) tx: oneshot::Sender<Response>,
    /// Whether the caller reads more of the response than its code (a relayed
    /// MESSAGE hands the whole answer back); a NOTIFY only needs the code.
    pub(super) whole: bool,
}

impl Edge {
    /// Most responses answer our NOTIFYs: a peek at the code and branch is
    /// enough for them. `true` when the response was dealt with here; `false`
    /// when its transaction wants the whole message (run the parser).
    /// `from`: the UDP address it came from, which has now shown it can
    /// receive what we send it.
    pub(super) fn complete_peeked(
        &self,
        peek: presence_sip::ResponsePeek<'_>,
        from: Option<SocketAddr>,
    ) -> bool {
        if peek.code < 200 {
            return true;
        }
        let mut txns = self.client_txns.lock().unwrap_or_else(|e| e.into_inner());
        let known = txns.get(peek.branch).map(|w| w.whole);
        if known.is_some() {
            if let Some(from) = from {
                self.guard().proven(from, Instant::now());
            }
        }
        match known {
            Some(false) => {
                if let Some(w) = txns.remove(peek.branch) {
                    drop(txns);
                    let _ = w.tx.send(Response {
                        code: peek.code,
                        reason: String::new(),
                        headers: rsip::Headers::default(),
                        body: Bytes::new(),
                    });
                }
                true
            }
            Some(true) => false,
            None => {
                drop(txns);
                self.metrics
                    .edge_dropped
                    .with_label_values(&["stray_response"])
                    .inc();
                true
            }
        }
    }

    pub(super) fn on_response(&self, resp: Response) {
        if resp.code < 200 {
            return;
        }
        let Some(branch) = resp.top_via().and_then(|v| v.branch) else {
            self.metrics
                .edge_dropped
                .with_label_values(&["stray_response"])
                .inc();
            return;
        };
        let waiter = self
            .client_txns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&branch);
        match waiter {
            Some(w) => {
                let _ = w.tx.send(resp);
            }
            None => {
                self.metrics
                    .edge_dropped
                    .with_label_values(&["stray_response"])
                    .inc();
            }
        }
    }

    /// Send a request through a flow as a client transaction. What the
    /// bus asks for is checked first: anything but a well-formed NOTIFY or
    /// MESSAGE ([`admissible`]) is refused (403) and counted as
    /// `bus_refused`; so is one whose flow has no seal, or not the seal of
    /// its transport and remote address (`bus_unsealed_flow`: a flow no
    /// edge of this cluster built, see `presence_core::seal`).
    pub async fn send_request(self: &Arc<Self>, out: OutRequest) -> Outcome {
        if let Err(why) = admissible(&out, self.cfg.max_message) {
            tracing::warn!(method = %out.method, remote = %out.flow.remote, why, "request from the bus refused");
            self.drop_counted("bus_refused");
            return Outcome::of_code(403);
        }
        if !self.cfg.sealer.verify(&out.flow) {
            let why = if out.flow.seal.is_some() {
                "the flow's seal is not that of its transport and address"
            } else {
                "the flow has no seal (written by an older version, or forged)"
            };
            tracing::warn!(method = %out.method, transport = out.flow.transport.as_str(), remote = %out.flow.remote, why, "request from the bus refused");
            self.drop_counted("bus_unsealed_flow");
            return Outcome::of_code(403);
        }
        let method = out.method.clone();
        let mut _turn = None;
        if method == "NOTIFY" {
            let dialog = notify_dialog(&out.headers);
            if let Some(call_id) = dialog.call_id {
                self.after_subscribe_answered(call_id).await;
            }
            // A NOTIFY whose dialog cannot be read goes at once.
            if let (Some(call_id), Some(cseq)) = (dialog.call_id, dialog.cseq) {
                match self.dialog_turn(call_id, dialog.from, cseq).await {
                    DialogStep::Go(t) => _turn = Some(t),
                    DialogStep::Join(mut rx) => {
                        // A re-send (the notifier lost our answer): one
                        // transaction per NOTIFY, its code for both.
                        let code = loop {
                            if let Some(code) = *rx.borrow_and_update() {
                                break code;
                            }
                            if rx.changed().await.is_err() {
                                break 0;
                            }
                        };
                        return Outcome::of_code(code);
                    }
                    DialogStep::Answered(code) => return Outcome::of_code(code),
                    DialogStep::Superseded => {
                        self.metrics
                            .edge_client_transactions
                            .with_label_values(&["NOTIFY", "superseded"])
                            .inc();
                        return Outcome::superseded();
                    }
                }
            }
        }
        let mut out = out;
        let size = approx_size(&out);
        if out.flow.transport == Transport::Udp && size > UDP_MTU_SAFE {
            // RFC 3261 §18.1.1: larger than the path MTU may carry (unknown:
            // 1300 bytes), so it goes over the UA's TCP connection from the
            // same address when it has one; else over UDP, fragmented.
            if let Some(conn) = self.conn_from(out.flow.remote) {
                out.flow.transport = Transport::Tcp;
                out.flow.conn = conn;
                out.flow.edge = self.cfg.id.clone();
            }
        }
        if out.flow.transport == Transport::Udp && size > MAX_UDP_DATAGRAM {
            // Cannot be sent over UDP at all, and no TCP connection: counted,
            // and answered 513 (the compositor keeps documents below this).
            self.drop_counted("too_big");
            return Outcome::of_code(513);
        }
        let branch = format!("z9hG4bK{}", new_tag());
        let local = if out.flow.edge == self.cfg.id {
            out.flow.local
        } else {
            self.udp.first().map(|(a, _)| *a).unwrap_or(out.flow.local)
        };
        let host = self.names.sent_by(local, out.flow.remote);
        let mut headers = rsip::Headers::default();
        headers.push(rsip::headers::make_header(
            "Via",
            format!(
                "SIP/2.0/{} {host};branch={branch};rport",
                out.flow.transport.as_str()
            ),
        ));
        let mut has_contact = false;
        for h in out.headers.iter() {
            has_contact |= h.name().eq_ignore_ascii_case("Contact");
            headers.push(h.clone());
        }
        if !has_contact && method == "NOTIFY" {
            let src = Source {
                transport: out.flow.transport,
                remote: out.flow.remote,
                local,
                conn: out.flow.conn,
            };
            headers.push(rsip::headers::make_header(
                "Contact",
                self.contact_header(src),
            ));
        }
        let bytes = Bytes::from(encode_request(&method, &out.uri, &headers, &out.body));
        let (tx, mut rx) = oneshot::channel();
        let whole = method != "NOTIFY";
        self.client_txns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(branch.clone(), Waiter { tx, whole });
        // Timer F, or sooner if the asker stops waiting before.
        let mut lifetime = TIMER_F;
        if out.deadline_ms > 0 {
            let left = out.deadline_ms.saturating_sub(self.clock.now_ms());
            lifetime = lifetime.min(Duration::from_millis(left));
        }
        let deadline = Instant::now() + lifetime;
        let result = match out.flow.transport {
            Transport::Udp => {
                let sock = self.udp_socket(local);
                let mut interval = T1;
                loop {
                    let allowed =
                        self.guard()
                            .may_send(out.flow.remote, bytes.len(), Instant::now());
                    if let Some(s) = &sock {
                        if !allowed {
                            self.drop_counted("amplification");
                        } else if !udp_send(s, &bytes, out.flow.remote).await {
                            self.drop_counted("send_failed");
                        }
                    }
                    let wait = interval.min(deadline.saturating_duration_since(Instant::now()));
                    match tokio::time::timeout(wait, &mut rx).await {
                        Ok(r) => break r.ok(),
                        Err(_) if Instant::now() >= deadline => break None,
                        Err(_) => interval = (interval * 2).min(T2),
                    }
                }
            }
            Transport::Tcp | Transport::Tls | Transport::Ws | Transport::Wss => {
                // A connection number means something only on the edge that
                // numbered it; another edge looks the remote up or connects
                // (TCP only: a phone runs no TLS server, RFC 5626 flows go
                // back over the connection it opened).
                let mut sent =
                    out.flow.edge == self.cfg.id && self.send_conn(out.flow.conn, bytes.clone());
                if !sent {
                    if let Some(id) = self.conn_from(out.flow.remote) {
                        sent = self.send_conn(id, bytes.clone());
                    }
                }
                if !sent
                    && out.flow.transport == Transport::Tcp
                    && self.guard().open_connection(out.flow.remote.ip()).is_ok()
                {
                    match tokio::time::timeout(
                        Duration::from_secs(5),
                        TcpStream::connect(out.flow.remote),
                    )
                    .await
                    {
                        Ok(Ok(stream)) => {
                            let _ = stream.set_nodelay(true);
                            let local = stream.local_addr().unwrap_or(local);
                            let id = self.clone().spawn_conn(
                                stream,
                                Transport::Tcp,
                                local,
                                out.flow.remote,
                            );
                            sent = self.send_conn(id, bytes.clone());
                        }
                        _ => self.guard().close_connection(out.flow.remote.ip()),
                    }
                }
                if sent {
                    tokio::time::timeout_at(deadline, &mut rx)
                        .await
                        .ok()
                        .and_then(|r| r.ok())
                } else {
                    None
                }
            }
        };
        self.client_txns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&branch);
        if let (Some(t), Some(resp)) = (_turn.as_mut(), result.as_ref()) {
            t.code = resp.code;
        }
        let label = method_label(&method);
        match result {
            Some(resp) => {
                self.metrics
                    .edge_client_transactions
                    .with_label_values(&[label, status_class(resp.code)])
                    .inc();
                let mut headers = rsip::Headers::default();
                let mut first_via = true;
                for h in resp.headers.iter() {
                    if h.name().eq_ignore_ascii_case("Via") && first_via {
                        first_via = false;
                        // our own Via: drop the first element only
                        let rest: Vec<&str> = presence_sip::split_list(h.value())
                            .into_iter()
                            .skip(1)
                            .collect();
                        if !rest.is_empty() {
                            headers.push(rsip::headers::make_header("Via", rest.join(", ")));
                        }
                        continue;
                    }
                    headers.push(h.clone());
                }
                Outcome {
                    code: resp.code,
                    reason: resp.reason,
                    headers,
                    body: resp.body,
                    timed_out: false,
                    superseded: false,
                }
            }
            None => {
                self.metrics
                    .edge_client_transactions
                    .with_label_values(&[label, "timeout"])
                    .inc();
                Outcome::timeout()
            }
        }
    }
}

/// What an edge sends for the bus: only what a notifier or a MESSAGE relay
/// asks for — a NOTIFY of a subscription dialog or a MESSAGE, to a SIP URI,
/// with the headers that make it one (a NOTIFY with no Via: the edge adds
/// it) and a body within `--max-message-size`. Defence in depth: a client
/// that can publish on the bus must not turn edges into a SIP cannon
/// (INVITEs, REGISTERs towards third parties, forged Vias). Where the
/// request goes is checked apart from this, by the flow's seal (only to a
/// transport and address a UA reached an edge of this cluster from), and
/// bounded: over UDP by the amplification budget of an address that never
/// sent us anything, over streams by the connections the edge holds.
pub(super) fn admissible(out: &OutRequest, max_message: usize) -> Result<(), &'static str> {
    let method = out.method.as_str();
    if method != "NOTIFY" && method != "MESSAGE" {
        return Err("method other than NOTIFY or MESSAGE");
    }
    let uri = out.uri.as_str();
    let scheme_ok = uri.len() > 4
        && (uri[..4].eq_ignore_ascii_case("sip:")
            || uri
                .get(..5)
                .is_some_and(|p| p.eq_ignore_ascii_case("sips:")));
    if !scheme_ok
        || uri
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err("Request-URI is not a SIP URI");
    }
    if out.body.len() > max_message {
        return Err("body over --max-message-size");
    }
    let has = |name: &str| {
        out.headers
            .iter()
            .any(|h| h.name().eq_ignore_ascii_case(name))
    };
    // A relayed MESSAGE keeps the sender's Vias under ours (they route
    // nothing: the edge answers the sender itself); a notifier's NOTIFY
    // has none.
    if method == "NOTIFY" && has("Via") {
        return Err("a NOTIFY with a Via of its own");
    }
    for name in ["From", "To", "Call-ID", "CSeq"] {
        if !has(name) {
            return Err("From, To, Call-ID and CSeq are required");
        }
    }
    if method == "NOTIFY" && !(has("Event") && has("Subscription-State")) {
        return Err("a NOTIFY without Event and Subscription-State");
    }
    let cseq_method = out
        .headers
        .iter()
        .find(|h| h.name().eq_ignore_ascii_case("CSeq"))
        .and_then(|h| h.value().split_whitespace().nth(1).map(str::to_string));
    if cseq_method.as_deref() != Some(method) {
        return Err("CSeq method differs");
    }
    if out
        .headers
        .iter()
        .any(|h| h.value().bytes().any(|b| b == b'\r' || b == b'\n'))
    {
        return Err("a header value with a line break");
    }
    Ok(())
}

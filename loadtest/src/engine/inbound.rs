//! What arrives: responses matched to their transactions by branch,
//! NOTIFYs and MESSAGEs matched to their dialogs by Call-ID (answered,
//! and checked by the canary), and lost connections (their UAs move).

use super::*;

impl Engine {
    // ------------------------------------------------------------------
    // Receiving
    // ------------------------------------------------------------------

    /// One datagram or stream message from endpoint `ep`, sent by `from`.
    pub fn on_message(&mut self, ep: u32, from: SocketAddr, data: &[u8]) {
        self.stats.wire_in += 1;
        let Some(s) = scan::scan(data) else {
            self.stats.unparseable += 1;
            return;
        };
        match s.start {
            Start::Response { code } => self.on_response(code, &s),
            Start::Request { method, uri } => self.on_request(ep, from, method, uri, &s),
        }
    }

    pub fn on_tcp_closed(&mut self, ep: u32) {
        self.stats.tcp_closed += 1;
        let mut target = None;
        if let Some(Endpoint {
            wire: Wire::Tcp(out),
            target: t,
            ..
        }) = self.eps.get(ep as usize)
        {
            out.closed.set(true);
            target = Some(*t);
        }
        // With several targets the connection's target counts as dead and
        // its UAs move to the next one; with one, this is an error.
        let elsewhere = |t: u32| (0..self.targets.len()).any(|x| x != t as usize && !self.dead[x]);
        match target {
            Some(t) if elsewhere(t) && self.phase != Phase::Done => {
                self.dead[t as usize] = true;
                let now = self.now_us();
                for ua in 0..self.uas.len() as u32 {
                    if self.uas[ua as usize].ep == ep {
                        self.move_ua(ua, now);
                    }
                }
            }
            _ => self.stats.errors += 1,
        }
    }

    /// Can UA `ua` move to another target (several given, one not dead)?
    pub(super) fn can_move(&self, ua: u32) -> bool {
        let cur = self.uas[ua as usize].target as usize;
        self.phase != Phase::Done && (0..self.targets.len()).any(|t| t != cur && !self.dead[t])
    }

    /// UA `ua`'s target is gone: abandon its transactions there, move it to
    /// the next live target and REGISTER, PUBLISH and SUBSCRIBE afresh (new
    /// dialogs; the old ones are no longer checked, their NOTIFYs get 481).
    pub(super) fn move_ua(&mut self, ua: u32, now: u64) {
        if !self.can_move(ua) {
            return;
        }
        let n = self.targets.len() as u32;
        let cur = self.uas[ua as usize].target;
        let Some(next) = (1..n)
            .map(|k| (cur + k) % n)
            .find(|t| !self.dead[*t as usize])
        else {
            return;
        };
        self.stats.failover.moves += 1;
        let ep = Self::ep_for(&self.eps, self.s.transport, n, ua, next);
        let old_ep = self.uas[ua as usize].ep;
        let old_host: Box<str> = self.eps[old_ep as usize].host.as_str().into();
        let u = &mut self.uas[ua as usize];
        u.target = next;
        u.ep = ep;
        u.moved_us = now.max(1);
        if u.old_host.is_none() {
            u.old_host = Some(old_host);
        }
        for idx in 0..self.txns.len() as u32 {
            let t = &self.txns[idx as usize];
            if t.live && self.ua_of(t.kind) == ua {
                if let Some(t) = self.finish_txn(idx) {
                    self.abandon(t);
                }
            }
        }
        self.resume(ua);
    }

    /// A transaction given up on a dead target (not an error).
    pub(super) fn abandon(&mut self, t: Txn) {
        self.stats.failover.abandoned_requests += 1;
        match t.kind {
            Kind::Register { ua, .. } => self.uas[ua as usize].reg_busy = false,
            Kind::Publish { ua, .. } => self.uas[ua as usize].pub_busy = false,
            Kind::Subscribe { sub, .. } => self.subs[sub as usize].busy = false,
            Kind::Message { id, .. } => {
                self.stats.failover.messages_while_moving += 1;
                self.messages.forget(id);
            }
        }
    }

    /// After a move: REGISTER, PUBLISH and SUBSCRIBE again through the new
    /// target, as far as the run had got for this UA.
    pub(super) fn resume(&mut self, ua: u32) {
        let u = &self.uas[ua as usize];
        let (gone, registered, reg_tried, has_pub, pub_tried) = (
            u.gone,
            u.registered,
            u.reg_cseq > 0,
            u.etag.is_some(),
            u.pub_cseq > 0,
        );
        if gone {
            // Tearing down: finish that through the new target.
            if has_pub {
                self.uas[ua as usize].pub_busy = true;
                self.start_txn(
                    Kind::Publish {
                        ua,
                        seq: 0,
                        expires: 0,
                    },
                    0,
                );
            }
            if registered {
                self.uas[ua as usize].reg_busy = true;
                self.start_txn(Kind::Register { ua, expires: 0 }, 0);
            }
            return;
        }
        if reg_tried {
            self.uas[ua as usize].reg_busy = true;
            let expires = self.s.register_expires;
            self.start_txn(Kind::Register { ua, expires }, 0);
        }
        if pub_tried {
            // A new document: whatever the lost PUBLISH did, watchers must
            // end up at this one.
            let u = &mut self.uas[ua as usize];
            u.pub_busy = true;
            u.recovering = true;
            u.seq_sent += 1;
            let seq = u.seq_sent;
            let expires = self.s.publish_expires;
            self.start_txn(Kind::Publish { ua, seq, expires }, 0);
        }
        // Subscriptions are sorted by watcher (see `Engine::new`).
        let lo = self.subs.partition_point(|sb| sb.watcher < ua);
        let hi = lo + self.subs[lo..].partition_point(|sb| sb.watcher == ua);
        for sub in lo as u32..hi as u32 {
            let sb = &mut self.subs[sub as usize];
            match sb.state {
                SubState::Pending | SubState::Active => {
                    sb.dgen += 1;
                    sb.cseq = 0;
                    sb.remote_tag = None;
                    sb.established_us = u64::MAX;
                    sb.expect_seq = 0;
                    sb.dialog = Dialog::default();
                    sb.state = SubState::Pending;
                    sb.busy = true;
                    self.stats.failover.resubscribed += 1;
                    let expires = self.s.subscribe_expires;
                    self.start_txn(
                        Kind::Subscribe {
                            sub,
                            expires,
                            initial: true,
                        },
                        0,
                    );
                }
                SubState::Unsubscribing => {
                    // Its final NOTIFY went to the dead target.
                    if sb.final_wait {
                        sb.final_wait = false;
                        self.final_pending -= 1;
                    }
                    sb.state = SubState::Ended;
                }
                SubState::Idle | SubState::Ended | SubState::Failed => {}
            }
        }
    }

    /// A MESSAGE to `to` sent at `sent_us` failed because `to` was moving
    /// between targets (within a notify deadline of its move).
    pub(super) fn to_moving(&self, to: u32, sent_us: u64) -> bool {
        let moved = self.uas[to as usize].moved_us;
        let dl = self.deadline_us();
        moved > 0 && moved + dl >= sent_us && sent_us + dl >= moved
    }

    pub(super) fn txn_of_branch(branch: &[u8]) -> Option<(u32, u32)> {
        let rest = branch.strip_prefix(BRANCH_PREFIX.as_bytes())?;
        let dot = rest.iter().position(|b| *b == b'.')?;
        Some((
            scan::parse_u32(&rest[..dot])?,
            scan::parse_u32(&rest[dot + 1..])?,
        ))
    }

    pub(super) fn on_response(&mut self, code: u16, s: &Scanned<'_>) {
        if code < 200 {
            return;
        }
        let Some((idx, gen)) = s.branch().and_then(Self::txn_of_branch) else {
            self.stats.unexpected_responses += 1;
            return;
        };
        let matches = self
            .txns
            .get(idx as usize)
            .is_some_and(|t| t.live && t.gen == gen);
        if !matches {
            // A late answer to a retransmission of a finished transaction.
            self.stats.unexpected_responses += 1;
            return;
        }
        let Some(t) = self.finish_txn(idx) else {
            return;
        };
        let now = self.now_us();
        let m = t.kind.method();
        self.stats.record_request(m, now.saturating_sub(t.first_us));
        *self.stats.methods[m as usize]
            .codes
            .entry(code)
            .or_insert(0) += 1;
        let ok = (200..300).contains(&code);
        if (code == 401 || code == 407) && self.challenged(&t, s) {
            return;
        }
        let dl = self.deadline_us();
        match t.kind {
            Kind::Register { ua, expires } => {
                let u = &mut self.uas[ua as usize];
                u.reg_busy = false;
                if ok {
                    u.registered = expires > 0;
                    u.old_host = None;
                    if expires > 0 && !u.gone {
                        u.reg_gen += 1;
                        let gen = u.reg_gen;
                        let at = self.refresh_at(now, expires);
                        self.push(at, Timer::RegRefresh { ua, gen });
                    }
                } else {
                    self.fail_request(code);
                    self.retry_later(Timer::RegRefresh { ua, gen: 0 }, now);
                }
            }
            Kind::Publish { ua, seq, expires } => {
                let u = &mut self.uas[ua as usize];
                u.pub_busy = false;
                let recovering = std::mem::take(&mut u.recovering);
                if ok {
                    u.etag = if expires > 0 {
                        s.etag
                            .and_then(|e| std::str::from_utf8(e).ok())
                            .map(Box::from)
                    } else {
                        None
                    };
                    if expires > 0 && !u.gone {
                        u.pub_gen += 1;
                        let gen = u.pub_gen;
                        let e = s.expires().map_or(expires, |g| g.min(expires)).max(1);
                        let at = self.refresh_at(now, e);
                        self.push(at, Timer::PubRefresh { ua, gen });
                    }
                    if seq > 0 {
                        let u = &mut self.uas[ua as usize];
                        u.seq_acked = u.seq_acked.max(seq);
                        self.push(
                            now + dl,
                            Timer::CheckPub {
                                ua,
                                seq,
                                ack_us: now,
                            },
                        );
                    }
                } else if code == 412 && expires > 0 {
                    // Our publication is gone at the server: publish afresh.
                    // (Expected after a move: a PUBLISH lost with the dead
                    // target may have changed the entity-tag.)
                    if !recovering {
                        self.fail_request(code);
                    }
                    let u = &mut self.uas[ua as usize];
                    u.etag = None;
                    u.pub_busy = true;
                    u.seq_sent += 1;
                    let seq = u.seq_sent;
                    self.start_txn(Kind::Publish { ua, seq, expires }, 0);
                } else {
                    self.fail_request(code);
                    if expires > 0 {
                        self.retry_later(Timer::PubRefresh { ua, gen: 0 }, now);
                    }
                }
            }
            Kind::Subscribe {
                sub,
                expires,
                initial,
            } => self.on_subscribe_answer(sub, expires, initial, code, s, now),
            Kind::Message { id, from, to } => {
                if !ok && (self.to_moving(to, t.first_us) || self.to_moving(from, t.first_us)) {
                    // Its target's binding led to a dead target: the sender
                    // knows it was not delivered.
                    self.stats.failover.messages_while_moving += 1;
                    self.messages.forget(id);
                } else if self.messages.final_answer(id, code, &mut self.canary)
                    == MsgNext::CheckLater
                {
                    self.push(now + dl, Timer::CheckMsg { id });
                }
            }
        }
    }

    pub(super) fn fail_request(&mut self, _code: u16) {
        self.stats.errors += 1;
    }

    /// Try again in a second (a refresh that failed).
    pub(super) fn retry_later(&mut self, t: Timer, now: u64) {
        let t = match t {
            Timer::RegRefresh { ua, .. } => {
                if self.uas[ua as usize].gone {
                    return;
                }
                Timer::RegRefresh {
                    ua,
                    gen: self.uas[ua as usize].reg_gen,
                }
            }
            Timer::PubRefresh { ua, .. } => {
                if self.uas[ua as usize].gone {
                    return;
                }
                Timer::PubRefresh {
                    ua,
                    gen: self.uas[ua as usize].pub_gen,
                }
            }
            Timer::SubRefresh { sub, .. } => Timer::SubRefresh {
                sub,
                gen: self.subs[sub as usize].gen,
            },
            other => other,
        };
        self.push(now + 1_000_000, t);
    }

    pub(super) fn on_subscribe_answer(
        &mut self,
        sub: u32,
        expires: u32,
        initial: bool,
        code: u16,
        s: &Scanned<'_>,
        now: u64,
    ) {
        let dl = self.deadline_us();
        let acked = self.uas[self.subs[sub as usize].presentity as usize].seq_acked;
        let sb = &mut self.subs[sub as usize];
        sb.busy = false;
        let ok = (200..300).contains(&code);
        if expires == 0 {
            // un-SUBSCRIBE
            if ok {
                if sb.state == SubState::Unsubscribing {
                    sb.final_wait = true;
                    self.final_pending += 1;
                    self.push(now + dl, Timer::CheckFinal { sub });
                }
            } else {
                if code == 481 {
                    self.canary.refresh_481 += 1;
                } else {
                    self.fail_request(code);
                }
                self.subs[sub as usize].state = SubState::Ended;
            }
            return;
        }
        if ok {
            if sb.remote_tag.is_none() {
                sb.remote_tag = s
                    .to_tag()
                    .and_then(|t| std::str::from_utf8(t).ok())
                    .map(Box::from);
            }
            if initial && sb.state == SubState::Pending {
                sb.state = SubState::Active;
                sb.established_us = now;
                sb.expect_seq = acked;
                let dgen = sb.dgen;
                self.push(now + dl, Timer::CheckSub { sub, dgen });
            }
            let sb = &mut self.subs[sub as usize];
            if sb.state == SubState::Active {
                sb.gen += 1;
                let gen = sb.gen;
                let e = s.expires().map_or(expires, |g| g.min(expires)).max(1);
                let at = self.refresh_at(now, e);
                self.push(at, Timer::SubRefresh { sub, gen });
            }
        } else if code == 481 && !initial {
            self.canary.refresh_481 += 1;
            sb.state = SubState::Ended;
        } else {
            let state = sb.state;
            if initial {
                sb.state = SubState::Failed;
            }
            self.fail_request(code);
            if !initial && state == SubState::Active {
                self.retry_later(Timer::SubRefresh { sub, gen: 0 }, now);
            }
        }
    }

    /// A 401/407: answer it; `true` if the request went out again.
    pub(super) fn challenged(&mut self, t: &Txn, s: &Scanned<'_>) -> bool {
        let ua = self.ua_of(t.kind);
        let Some(ch) = digest::choose(&s.challenges[..s.n_challenges], self.s.auth_algorithm)
        else {
            self.stats.auth_failures += 1;
            return false;
        };
        let u = &mut self.uas[ua as usize];
        let Some(pw) = u.password.clone() else {
            self.stats.auth_failures += 1;
            return false;
        };
        if t.attempt >= 3 {
            self.stats.auth_failures += 1;
            return false;
        }
        match u.auth.as_mut() {
            None => u.auth = Some(Box::new(Session::new(ch, &u.name, &pw))),
            Some(sess) => {
                if t.creds {
                    if !ch.stale {
                        // Our credentials were refused outright.
                        self.stats.auth_failures += 1;
                        return false;
                    }
                    sess.renew(ch, &u.name, &pw);
                }
                // Sent before we held a nonce: go again with the one we have.
            }
        }
        self.start_txn(t.kind, t.attempt + 1);
        true
    }

    pub(super) fn on_request(
        &mut self,
        ep: u32,
        from: SocketAddr,
        method: &[u8],
        uri: &[u8],
        s: &Scanned<'_>,
    ) {
        match method {
            b"NOTIFY" => self.on_notify(ep, from, s),
            b"MESSAGE" => self.on_incoming_message(ep, from, uri, s),
            b"OPTIONS" => self.answer(ep, from, s, 200, "OK"),
            b"ACK" => {}
            _ => {
                self.stats.stray_requests += 1;
                self.answer(ep, from, s, 501, "Not Implemented");
            }
        }
    }

    /// `<prefix><n>.<run>` → n, if the run is ours.
    pub(super) fn id_of_call(&self, call_id: &[u8], prefix: u8) -> Option<u64> {
        let rest = call_id.strip_prefix(&[prefix])?;
        let dot = rest.iter().position(|b| *b == b'.')?;
        if &rest[dot + 1..] != self.run.as_bytes() {
            return None;
        }
        scan::parse_u64(&rest[..dot])
    }

    /// `s<sub>[-<gen>].<run>` → (sub, dialog generation), if the run is ours.
    pub(super) fn sub_of_call(&self, call_id: &[u8]) -> Option<(u32, u32)> {
        let rest = call_id.strip_prefix(b"s")?;
        let dot = rest.iter().position(|b| *b == b'.')?;
        if &rest[dot + 1..] != self.run.as_bytes() {
            return None;
        }
        let id = &rest[..dot];
        let (sub, gen) = match id.iter().position(|b| *b == b'-') {
            Some(i) => (&id[..i], scan::parse_u32(&id[i + 1..])?),
            None => (id, 0),
        };
        let sub = scan::parse_u32(sub)?;
        ((sub as usize) < self.subs.len()).then_some((sub, gen))
    }

    pub(super) fn on_notify(&mut self, ep: u32, from: SocketAddr, s: &Scanned<'_>) {
        let sub = s.call_id().and_then(|c| self.sub_of_call(c));
        let (Some((sub, dgen)), Some((cseq, _))) = (sub, s.cseq()) else {
            self.stats.stray_requests += 1;
            self.answer(ep, from, s, 481, "Subscription Does Not Exist");
            return;
        };
        if dgen != self.subs[sub as usize].dgen {
            // A dialog given up when its watcher moved to another target.
            self.stats.failover.old_dialog_notifies += 1;
            self.answer(ep, from, s, 481, "Subscription Does Not Exist");
            return;
        }
        let branch = canary::hash(s.branch().unwrap_or_default());
        let (entity, seq) = canary::read_body(s.body, &self.run);
        let now = self.now_us();
        let sb = &mut self.subs[sub as usize];
        if matches!(
            sb.state,
            SubState::Ended | SubState::Failed | SubState::Idle
        ) {
            let v = sb.dialog.on_notify(cseq, branch, seq);
            if v == canary::Verdict::Retransmission {
                self.stats.notify_retransmissions += 1;
                self.stats.w_retrans += 1;
                self.answer(ep, from, s, 200, "OK");
            } else {
                self.canary.notify_after_termination += 1;
                self.answer(ep, from, s, 481, "Subscription Does Not Exist");
            }
            return;
        }
        let before = sb.dialog.last_seq;
        let before_cseq = sb.dialog.last_cseq();
        let v = sb.dialog.on_notify(cseq, branch, seq);
        Dialog::count(v, &mut self.canary);
        if !matches!(v, canary::Verdict::New | canary::Verdict::Retransmission)
            && self.stats.faults_logged < FAULTS_LOGGED
        {
            // The first few faults in detail, for whoever debugs the server.
            self.stats.faults_logged += 1;
            let sb = &self.subs[sub as usize];
            eprintln!(
                "canary: {v:?} at {:.3} s: dialog s{sub}{}.{} (watcher {} on target {}, presentity {}), CSeq {cseq} after {before_cseq:?}, SEQ {seq:?} after {before}, Via branch {}",
                now as f64 / 1e6,
                DialogGen(sb.dgen),
                self.run,
                self.uas[sb.watcher as usize].name,
                self.uas[sb.watcher as usize].target,
                self.uas[sb.presentity as usize].name,
                String::from_utf8_lossy(s.branch().unwrap_or_default()),
            );
        }
        if v == canary::Verdict::Retransmission {
            self.stats.notify_retransmissions += 1;
            self.stats.w_retrans += 1;
            self.answer(ep, from, s, 200, "OK");
            return;
        }
        self.stats.notifies += 1;
        self.stats.w_notifies += 1;
        if self.phase == Phase::Steady {
            self.stats.notifies_steady += 1;
        }
        let sb = &mut self.subs[sub as usize];
        let presentity = sb.presentity;
        let established = sb.established_us;
        if sb.remote_tag.is_none() {
            sb.remote_tag = s
                .from_tag()
                .and_then(|t| std::str::from_utf8(t).ok())
                .map(Box::from);
        }
        let terminated = s
            .sub_state
            .is_some_and(|v| v.len() >= 10 && v[..10].eq_ignore_ascii_case(b"terminated"));
        if terminated {
            if sb.state == SubState::Unsubscribing {
                if sb.final_wait {
                    sb.final_wait = false;
                    self.final_pending -= 1;
                }
            } else {
                self.canary.unexpected_termination += 1;
            }
            sb.state = SubState::Ended;
        }
        let p = &self.uas[presentity as usize];
        if let Some(e) = entity {
            let ok = e.strip_prefix(b"sip:").is_some_and(|rest| {
                rest.strip_prefix(p.name.as_bytes())
                    .is_some_and(|r| r.first() == Some(&b'@'))
            });
            if !ok {
                self.canary.wrong_presentity += 1;
            }
        }
        if v == canary::Verdict::New {
            if let Some(seq) = seq.filter(|q| *q > before) {
                // Only changes made while this watcher was subscribed: an
                // initial NOTIFY shows an older change, not a delivery delay.
                if let Some(&(_, t)) = p
                    .sent_at
                    .iter()
                    .find(|(q, t)| *q == seq && established <= *t)
                {
                    self.stats.record_notify(now.saturating_sub(t));
                }
            }
        }
        self.answer(ep, from, s, 200, "OK");
    }

    pub(super) fn on_incoming_message(
        &mut self,
        ep: u32,
        from: SocketAddr,
        uri: &[u8],
        s: &Scanned<'_>,
    ) {
        let user = uri
            .strip_prefix(b"sip:")
            .and_then(|r| r.iter().position(|b| *b == b'@').map(|i| &r[..i]));
        let to = user.and_then(|u| self.s.index_of(u));
        let id = s.call_id().and_then(|c| self.id_of_call(c, b'm'));
        let branch = canary::hash(s.branch().unwrap_or_default());
        let ours = match (id, to) {
            (Some(id), Some(to)) => self.messages.received(id, to, branch, &mut self.canary),
            _ => false,
        };
        if ours {
            self.stats.messages_received += 1;
            self.stats.w_messages += 1;
        } else {
            self.stats.stray_requests += 1;
        }
        self.answer(ep, from, s, 200, "OK");
    }

    pub(super) fn answer(
        &mut self,
        ep: u32,
        to: SocketAddr,
        s: &Scanned<'_>,
        code: u16,
        reason: &str,
    ) {
        let mut out = std::mem::take(&mut self.buf);
        out.clear();
        let _ = write!(out, "SIP/2.0 {code} {reason}\r\n");
        for v in &s.vias[..s.n_vias] {
            out.extend_from_slice(b"Via: ");
            out.extend_from_slice(v);
            out.extend_from_slice(b"\r\n");
        }
        for (name, v) in [
            (&b"From: "[..], s.from),
            (b"To: ", s.to),
            (b"Call-ID: ", s.call_id),
            (b"CSeq: ", s.cseq),
        ] {
            if let Some(v) = v {
                out.extend_from_slice(name);
                out.extend_from_slice(v);
                if name == b"To: " && s.to_tag().is_none() {
                    out.extend_from_slice(b";tag=lt");
                }
                out.extend_from_slice(b"\r\n");
            }
        }
        out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
        Self::wire_send(&self.eps, &mut self.stats, ep, to, &out);
        self.buf = out;
    }
}

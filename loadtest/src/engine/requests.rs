//! Building the requests the user agents send: the request line and Via
//! every request starts with, each kind of request, and Digest answers.

use super::*;

impl Engine {
    /// The start of every request: request line, Via with our branch for
    /// transaction `idx` generation `gen` (what responses are matched by,
    /// [`Engine::txn_of_branch`]) and Max-Forwards.
    pub(super) fn request_head(
        out: &mut Vec<u8>,
        method: &str,
        ruri: &str,
        tp: Transport,
        host: &str,
        idx: u32,
        gen: u32,
    ) {
        let _ = write!(
            out,
            "{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/{} {host};branch={BRANCH_PREFIX}{idx}.{gen};rport\r\nMax-Forwards: 70\r\n",
            tp.via()
        );
    }

    /// Write the request for `kind`; returns (endpoint, carried credentials).
    pub(super) fn build(
        &mut self,
        kind: Kind,
        idx: u32,
        gen: u32,
        now: u64,
        attempt: u8,
        out: &mut Vec<u8>,
    ) -> (u32, bool) {
        let d = self.s.domain.clone();
        let tp = self.s.transport;
        let event = self.s.event;
        let tcp_param = match tp {
            Transport::Udp => "",
            Transport::Tcp => ";transport=tcp",
            Transport::Tls => ";transport=tls",
            // RFC 7118: `ws` for both (the secure one is told by sips:).
            Transport::Ws | Transport::Wss => ";transport=ws",
        };
        let run = &self.run;
        match kind {
            Kind::Register { ua, expires } => {
                let u = &mut self.uas[ua as usize];
                u.reg_cseq += 1;
                let host = &self.eps[u.ep as usize].host;
                let ruri = format!("sip:{d}");
                Self::request_head(out, "REGISTER", &ruri, tp, host, idx, gen);
                let _ = write!(
                    out,
                    "From: <sip:{n}@{d}>;tag=r{ua}\r\nTo: <sip:{n}@{d}>\r\nCall-ID: r{ua}.{run}\r\nCSeq: {} REGISTER\r\nContact: <sip:{n}@{host}{tcp_param}>;expires={expires}\r\n",
                    u.reg_cseq,
                    n = u.name,
                );
                // After a move: drop the binding through the dead target.
                if let Some(old) = u.old_host.as_deref().filter(|o| *o != host.as_str()) {
                    let _ = write!(
                        out,
                        "Contact: <sip:{n}@{old}{tcp_param}>;expires=0\r\n",
                        n = u.name
                    );
                }
                let _ = write!(out, "Expires: {expires}\r\n");
                let ep = u.ep;
                let creds = self.auth_header(ua, "REGISTER", &ruri, false, out);
                out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
                (ep, creds)
            }
            Kind::Publish { ua, seq, expires } => {
                let u = &mut self.uas[ua as usize];
                u.pub_cseq += 1;
                let host = &self.eps[u.ep as usize].host;
                let ruri = format!("sip:{}@{d}", u.name);
                Self::request_head(out, "PUBLISH", &ruri, tp, host, idx, gen);
                let _ = write!(
                    out,
                    "From: <{ruri}>;tag=p{ua}\r\nTo: <{ruri}>\r\nCall-ID: p{ua}.{run}\r\nCSeq: {} PUBLISH\r\nEvent: {}\r\nExpires: {expires}\r\n",
                    u.pub_cseq,
                    event.name(),
                );
                // A call's first state starts a publication of its own
                // (`--dialog-publications call`); the previous call's is
                // left to expire.
                let new_call = event == Event::Dialog
                    && self.s.publication_per_call
                    && seq > 0
                    && seq % 3 == 1;
                if let Some(etag) = u.etag.as_ref().filter(|_| !new_call) {
                    let _ = write!(out, "SIP-If-Match: {etag}\r\n");
                }
                let body = (seq > 0 || u.etag.is_none()).then(|| {
                    let seq = seq.max(u.seq_sent);
                    match event {
                        Event::Presence => format!(
                            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"{ruri}\"><tuple id=\"lt\"><status><basic>{}</basic></status></tuple>{}</presence>",
                            if seq % 2 == 1 { "open" } else { "closed" },
                            canary::note(run, seq)
                        ),
                        Event::Dialog => canary::dialog_info(&ruri, run, seq),
                    }
                });
                if seq > 0 && attempt == 0 {
                    let slot = (seq % 4) as usize;
                    u.sent_at[slot] = (seq, now);
                }
                let ep = u.ep;
                let creds = self.auth_header(ua, "PUBLISH", &ruri, false, out);
                match body {
                    Some(b) => {
                        let _ = write!(
                            out,
                            "Content-Type: {}\r\nContent-Length: {}\r\n\r\n{b}",
                            event.content_type(),
                            b.len()
                        );
                    }
                    None => out.extend_from_slice(b"Content-Length: 0\r\n\r\n"),
                }
                (ep, creds)
            }
            Kind::Subscribe { sub, expires, .. } => {
                let sb = &mut self.subs[sub as usize];
                sb.cseq += 1;
                let w = &self.uas[sb.watcher as usize];
                let p = &self.uas[sb.presentity as usize];
                let host = &self.eps[w.ep as usize].host;
                let ruri = format!("sip:{}@{d}", p.name);
                Self::request_head(out, "SUBSCRIBE", &ruri, tp, host, idx, gen);
                let _ = write!(out, "From: <sip:{}@{d}>;tag=s{sub}\r\nTo: <{ruri}>", w.name);
                if let Some(tag) = &sb.remote_tag {
                    let _ = write!(out, ";tag={tag}");
                }
                let _ = write!(
                    out,
                    "\r\nCall-ID: s{sub}{}.{run}\r\nCSeq: {} SUBSCRIBE\r\nEvent: {}\r\nAccept: {}\r\nContact: <sip:{}@{host}{tcp_param}>\r\nExpires: {expires}\r\n",
                    DialogGen(sb.dgen),
                    sb.cseq,
                    event.name(),
                    event.content_type(),
                    w.name
                );
                let (ep, watcher) = (w.ep, sb.watcher);
                let creds = self.auth_header(watcher, "SUBSCRIBE", &ruri, false, out);
                out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
                (ep, creds)
            }
            Kind::Message { id, from, to } => {
                let f = &self.uas[from as usize];
                let t = &self.uas[to as usize];
                let host = &self.eps[f.ep as usize].host;
                let ruri = format!("sip:{}@{d}", t.name);
                let body = format!("lt {run} {id}");
                Self::request_head(out, "MESSAGE", &ruri, tp, host, idx, gen);
                let _ = write!(
                    out,
                    "From: <sip:{}@{d}>;tag=m{id}\r\nTo: <{ruri}>\r\nCall-ID: m{id}.{run}\r\nCSeq: {} MESSAGE\r\nContent-Type: text/plain\r\n",
                    f.name,
                    u32::from(attempt) + 1,
                );
                let ep = f.ep;
                let creds = self.auth_header(from, "MESSAGE", &ruri, true, out);
                let _ = write!(out, "Content-Length: {}\r\n\r\n{body}", body.len());
                (ep, creds)
            }
        }
    }

    /// Add (Proxy-)Authorization if the UA holds a nonce; `true` if it did.
    pub(super) fn auth_header(
        &mut self,
        ua: u32,
        method: &str,
        uri: &str,
        proxy: bool,
        out: &mut Vec<u8>,
    ) -> bool {
        let cnonce = self.rng.next_u64();
        let u = &mut self.uas[ua as usize];
        let Some(sess) = u.auth.as_mut() else {
            return false;
        };
        let v = sess.authorization(&u.name, method, uri, cnonce);
        let name = if proxy {
            "Proxy-Authorization"
        } else {
            "Authorization"
        };
        let _ = write!(out, "{name}: {v}\r\n");
        true
    }
}

//! Digest authentication of requests (the verifier is
//! `presence_core::digest`): the challenge, the accepted identity.

use super::*;

impl Edge {
    /// `Ok(Some(aor))` authenticated, `Ok(None)` auth disabled, `Err` the challenge or refusal.
    pub(super) fn authenticate(
        &self,
        req: &Request,
        src: Source,
        method: rsip::Method,
    ) -> Result<Option<String>, Box<ResponseBuilder>> {
        let Some(verifier) = &self.cfg.verifier else {
            return Ok(None);
        };
        let proxy = method == rsip::Method::Message;
        let from_domain = req
            .from_addr()
            .map(|f| f.uri.host_with_port.host.to_string().to_ascii_lowercase())
            .unwrap_or_default();
        let realm = if self.is_local(&from_domain) {
            from_domain
        } else {
            self.cfg.domains[0].clone()
        };
        let header = if proxy {
            "Proxy-Authorization"
        } else {
            "Authorization"
        };
        let now = self.clock.now_ms();
        let from_aor = req
            .from_addr()
            .and_then(|f| canonical_aor(&f.uri))
            .map(|a| a.to_string())
            .unwrap_or_default();
        let client = Client {
            addr: src.remote.ip(),
            from: &from_aor,
        };
        let mut stale = false;
        for value in req.header_all(header) {
            let Some(creds) = Credentials::parse(value) else {
                continue;
            };
            if !creds.realm.eq_ignore_ascii_case(&realm) {
                continue;
            }
            match verifier.verify(
                &creds,
                req.method.as_str(),
                &req.uri_text,
                &realm,
                client,
                now,
            ) {
                Verdict::Ok(who) => {
                    // It answered our challenge (the nonce is bound to its
                    // address): it receives what we send it.
                    if src.transport == Transport::Udp {
                        self.guard().proven(src.remote, Instant::now());
                    }
                    self.metrics
                        .edge_authentications
                        .with_label_values(&[who.algorithm().name()])
                        .inc();
                    return Ok(Some(who.aor()));
                }
                Verdict::Challenge { stale: s } => stale |= s,
                Verdict::BadRequest(reason) => {
                    return Err(Box::new(self.reject(
                        req,
                        src,
                        Rejection::Malformed(reason),
                    )));
                }
            }
        }
        self.metrics
            .edge_challenges
            .with_label_values(&[if stale { "true" } else { "false" }])
            .inc();
        let (code, reason, hname) = if proxy {
            (407, "Proxy Authentication Required", "Proxy-Authenticate")
        } else {
            (401, "Unauthorized", "WWW-Authenticate")
        };
        let mut b = self.reply(req, src, code, reason);
        for ch in verifier.challenges(&realm, client, now, stale, rand::random()) {
            b = b.header(hname, ch);
        }
        Err(Box::new(b))
    }
}

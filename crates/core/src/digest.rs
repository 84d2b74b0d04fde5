//! Digest authentication (RFC 2617, RFC 7616 / RFC 8760 for SHA-256).
//!
//! Nonces are stateless: `base64url(ts_ms || salt || HMAC-SHA256(secret, ts_ms
//! || salt || realm || client address || From AoR)[..16])`, so any edge holding
//! the secret can verify any nonce, a nonce expires `lifetime` after it was
//! minted, and it is good only for the client address and From AoR it was
//! handed to (a captured Authorization replayed from another address is
//! challenged again). A correct digest on an expired nonce is answered with a
//! fresh challenge carrying `stale=true`; a wrong digest never gets in.
//!
//! Replay: `qop=auth` is required, and each verifier remembers the nonce
//! counts it has accepted per nonce for the nonce's lifetime ([`NonceCounts`]),
//! so the same (nonce, nc) is accepted once *per edge*. That is the one piece
//! of state; together with the address binding, a replay on another edge
//! would have to come from the victim's own address. The only way to obtain
//! an [`Authenticated`] is [`Verifier::verify`].

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use md5::Md5;
use sha2::{Digest as _, Sha256};
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Md5,
    Sha256,
}

impl Algorithm {
    pub fn name(&self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA-256",
        }
    }
    /// The `algorithm` parameter's value (RFC 8760: `MD5`, `SHA-256`).
    pub fn parse(s: &str) -> Option<Algorithm> {
        if s.eq_ignore_ascii_case("MD5") {
            Some(Algorithm::Md5)
        } else if s.eq_ignore_ascii_case("SHA-256") {
            Some(Algorithm::Sha256)
        } else {
            None
        }
    }
    /// A comma list in preference order (`MD5,SHA-256`): `Err` names the
    /// first unknown entry, or says the list is empty or repeats itself.
    pub fn parse_list(s: &str) -> Result<Vec<Algorithm>, String> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let alg = Algorithm::parse(part)
                .ok_or_else(|| format!("unknown Digest algorithm {part:?} (MD5, SHA-256)"))?;
            if out.contains(&alg) {
                return Err(format!("Digest algorithm {part} listed twice"));
            }
            out.push(alg);
        }
        if out.is_empty() {
            return Err("no Digest algorithm given".into());
        }
        Ok(out)
    }
    pub fn hash(&self, data: &str) -> String {
        self.hash_parts(&[data.as_bytes()])
    }
    /// The lowercase hex digest of the concatenation of `parts`.
    pub fn hash_parts(&self, parts: &[&[u8]]) -> String {
        match self {
            Algorithm::Md5 => {
                let mut h = Md5::new();
                parts.iter().for_each(|p| h.update(p));
                hex(&h.finalize())
            }
            Algorithm::Sha256 => {
                let mut h = Sha256::new();
                parts.iter().for_each(|p| h.update(p));
                hex(&h.finalize())
            }
        }
    }
}

fn hex(b: &[u8]) -> String {
    const H: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(H[(x >> 4) as usize] as char);
        s.push(H[(x & 15) as usize] as char);
    }
    s
}

/// Users and passwords: `user@domain:password` lines, `#` comments.
#[derive(Debug, Clone, Default)]
pub struct Users {
    /// (user, domain lower-cased) → password
    map: HashMap<(String, String), String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("line {line}: {msg}")]
pub struct UsersError {
    pub line: usize,
    pub msg: String,
}

impl Users {
    pub fn parse(text: &str) -> Result<Users, Vec<UsersError>> {
        let mut map = HashMap::new();
        let mut errors = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |msg: &str| UsersError {
                line: i + 1,
                msg: msg.to_string(),
            };
            let Some((id, password)) = line.split_once(':') else {
                errors.push(err("expected user@domain:password"));
                continue;
            };
            let id = id.trim().trim_start_matches("sip:");
            let Some((user, domain)) = id.rsplit_once('@') else {
                errors.push(err("expected user@domain before ':'"));
                continue;
            };
            if user.is_empty() || domain.is_empty() {
                errors.push(err("empty user or domain"));
                continue;
            }
            map.insert(
                (user.to_string(), domain.to_ascii_lowercase()),
                password.to_string(),
            );
        }
        if errors.is_empty() {
            Ok(Users { map })
        } else {
            Err(errors)
        }
    }

    pub fn password(&self, user: &str, domain: &str) -> Option<&str> {
        self.map
            .get(&(user.to_string(), domain.to_ascii_lowercase()))
            .map(String::as_str)
    }

    pub fn contains(&self, user: &str, domain: &str) -> bool {
        self.password(user, domain).is_some()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Proof that a request carried valid credentials for this identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    user: String,
    domain: String,
    algorithm: Algorithm,
}

impl Authenticated {
    pub fn user(&self) -> &str {
        &self.user
    }
    pub fn domain(&self) -> &str {
        &self.domain
    }
    /// The algorithm the client answered with.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
    /// `sip:user@domain`
    pub fn aor(&self) -> String {
        format!("sip:{}@{}", self.user, self.domain)
    }
}

/// What to do with a request after looking at its credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Ok(Authenticated),
    /// No usable credentials, wrong digest or unknown user: challenge again.
    /// `stale` when the digest was right but its nonce is too old, or its
    /// nonce count was used before (a replay, or a client that lost count):
    /// a client that knows the password answers the fresh nonce.
    Challenge {
        stale: bool,
    },
    /// Malformed credentials, or `uri` not designating the Request-URI.
    BadRequest(&'static str),
}

/// The parameters of one Authorization / Proxy-Authorization header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub realm: String,
    pub nonce: String,
    pub uri: String,
    pub response: String,
    pub algorithm: Option<String>,
    pub cnonce: Option<String>,
    pub nc: Option<String>,
    pub qop: Option<String>,
    pub opaque: Option<String>,
}

impl Credentials {
    /// Parse `Digest k=v, k="v", ...`. `None` if not a Digest header.
    pub fn parse(value: &str) -> Option<Credentials> {
        let v = value.trim();
        let (scheme, rest) = v.split_once(char::is_whitespace)?;
        if !scheme.eq_ignore_ascii_case("digest") {
            return None;
        }
        let mut c = Credentials::default();
        for part in presence_sip::split_list(rest) {
            let Some((k, val)) = part.split_once('=') else {
                continue;
            };
            let val = presence_sip::headers::unquote(val.trim());
            match k.trim().to_ascii_lowercase().as_str() {
                "username" => c.username = val,
                "realm" => c.realm = val,
                "nonce" => c.nonce = val,
                "uri" => c.uri = val,
                "response" => c.response = val.to_ascii_lowercase(),
                "algorithm" => c.algorithm = Some(val),
                "cnonce" => c.cnonce = Some(val),
                "nc" => c.nc = Some(val),
                "qop" => c.qop = Some(val),
                "opaque" => c.opaque = Some(val),
                _ => {}
            }
        }
        if c.username.is_empty() || c.nonce.is_empty() || c.response.is_empty() {
            return None;
        }
        Some(c)
    }
}

/// Who a nonce is handed to: the source address the request came from and
/// the AoR in its From header (canonical, lower-case; empty if unreadable).
/// Binding the nonce to both means a captured Authorization is worth nothing
/// from another address or for another identity's requests.
#[derive(Debug, Clone, Copy)]
pub struct Client<'a> {
    pub addr: IpAddr,
    pub from: &'a str,
}

/// Mints and checks nonces and digests.
#[derive(Clone)]
pub struct Verifier {
    secret: Vec<u8>,
    lifetime_ms: u64,
    users: Users,
    /// Offered in this order (RFC 8760 §2.4: a client takes the first it
    /// supports; many phones only ever look at the first).
    algorithms: Vec<Algorithm>,
    counts: Arc<Mutex<NonceCounts>>,
}

const OPAQUE: &str = "presence";
/// ts (8) + salt (8) + MAC (16).
const NONCE_RAW: usize = 32;
/// A nonce minted this far in the future (another edge's clock) is still good.
const CLOCK_SKEW_MS: u64 = 5_000;

impl Verifier {
    /// `algorithms` in preference order; empty means `MD5, SHA-256`.
    pub fn new(
        secret: &[u8],
        lifetime_secs: u64,
        users: Users,
        algorithms: Vec<Algorithm>,
    ) -> Verifier {
        let algorithms = if algorithms.is_empty() {
            vec![Algorithm::Md5, Algorithm::Sha256]
        } else {
            algorithms
        };
        Verifier {
            secret: secret.to_vec(),
            lifetime_ms: lifetime_secs * 1000,
            users,
            algorithms,
            counts: Arc::new(Mutex::new(NonceCounts::new(MAX_TRACKED_NONCES))),
        }
    }

    pub fn algorithms(&self) -> &[Algorithm] {
        &self.algorithms
    }

    fn mac(&self, ts: u64, salt: &[u8], realm: &str, client: Client<'_>) -> [u8; 16] {
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.secret)
            .expect("HMAC accepts any key length");
        m.update(&ts.to_be_bytes());
        m.update(salt);
        // Lengths first, so that no two (realm, address, from) run together.
        for part in [
            realm.as_bytes(),
            client_addr(client.addr).as_slice(),
            client.from.as_bytes(),
        ] {
            m.update(&(part.len() as u32).to_be_bytes());
            m.update(part);
        }
        let full = m.finalize().into_bytes();
        let mut out = [0u8; 16];
        out.copy_from_slice(&full[..16]);
        out
    }

    /// A nonce for `client` in `realm`; `salt` makes two nonces minted in
    /// the same millisecond differ (the caller passes random bytes).
    pub fn nonce(&self, realm: &str, client: Client<'_>, now_ms: u64, salt: [u8; 8]) -> String {
        let mut raw = Vec::with_capacity(NONCE_RAW);
        raw.extend_from_slice(&now_ms.to_be_bytes());
        raw.extend_from_slice(&salt);
        raw.extend_from_slice(&self.mac(now_ms, &salt, realm, client));
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// `Some((fresh, minted_at))` if the nonce was minted by us for this
    /// realm and client.
    fn check_nonce(
        &self,
        nonce: &str,
        realm: &str,
        client: Client<'_>,
        now_ms: u64,
    ) -> Option<(bool, u64)> {
        let raw = URL_SAFE_NO_PAD.decode(nonce).ok()?;
        if raw.len() != NONCE_RAW {
            return None;
        }
        let ts = u64::from_be_bytes(raw[..8].try_into().ok()?);
        let mac = self.mac(ts, &raw[8..16], realm, client);
        if !constant_time_eq(&mac, &raw[16..]) {
            return None;
        }
        let fresh = now_ms >= ts && now_ms - ts <= self.lifetime_ms
            || ts > now_ms && ts - now_ms < CLOCK_SKEW_MS;
        Some((fresh, ts))
    }

    /// The challenge header values to send, one per configured algorithm in
    /// preference order, all with the same nonce.
    pub fn challenges(
        &self,
        realm: &str,
        client: Client<'_>,
        now_ms: u64,
        stale: bool,
        salt: [u8; 8],
    ) -> Vec<String> {
        let nonce = self.nonce(realm, client, now_ms, salt);
        self.algorithms
            .iter()
            .map(|alg| {
                format!(
                    "Digest realm=\"{realm}\", nonce=\"{nonce}\", opaque=\"{OPAQUE}\", algorithm={}, qop=\"auth\"{}",
                    alg.name(),
                    if stale { ", stale=true" } else { "" }
                )
            })
            .collect()
    }

    /// Check credentials for `method` on `request_uri` in `realm`, sent by
    /// `client`. A success also spends the (nonce, nc) pair.
    pub fn verify(
        &self,
        creds: &Credentials,
        method: &str,
        request_uri: &str,
        realm: &str,
        client: Client<'_>,
        now_ms: u64,
    ) -> Verdict {
        if !creds.realm.eq_ignore_ascii_case(realm) {
            return Verdict::Challenge { stale: false };
        }
        if !uri_designates(&creds.uri, request_uri) {
            return Verdict::BadRequest("Authorization uri does not match Request-URI");
        }
        let alg = match creds.algorithm.as_deref() {
            None => Algorithm::Md5,
            Some(a) => match Algorithm::parse(a) {
                Some(a) => a,
                None => return Verdict::Challenge { stale: false },
            },
        };
        if !self.algorithms.contains(&alg) {
            return Verdict::Challenge { stale: false };
        }
        // qop=auth is required: without it there is no nonce count, and a
        // captured answer could be replayed for the nonce's whole life.
        if !creds
            .qop
            .as_deref()
            .is_some_and(|q| q.eq_ignore_ascii_case("auth"))
        {
            return Verdict::Challenge { stale: false };
        }
        let (Some(nc_text), Some(cnonce)) = (&creds.nc, &creds.cnonce) else {
            return Verdict::BadRequest("qop=auth without nc or cnonce");
        };
        let Some(nc) = parse_nc(nc_text) else {
            return Verdict::BadRequest("Malformed nonce count");
        };
        // username may be "alice" or "alice@example.com".
        let (user, domain) = match creds.username.rsplit_once('@') {
            Some((u, d)) => (u.to_string(), d.to_ascii_lowercase()),
            None => (creds.username.clone(), realm.to_ascii_lowercase()),
        };
        let Some(password) = self.users.password(&user, &domain) else {
            return Verdict::Challenge { stale: false };
        };
        let ha1 = alg.hash(&format!("{}:{}:{}", creds.username, creds.realm, password));
        let ha2 = alg.hash(&format!("{}:{}", method, creds.uri));
        let expected = alg.hash(&format!(
            "{ha1}:{}:{nc_text}:{cnonce}:auth:{ha2}",
            creds.nonce
        ));
        if !constant_time_eq(expected.as_bytes(), creds.response.as_bytes()) {
            return Verdict::Challenge { stale: false };
        }
        match self.check_nonce(&creds.nonce, realm, client, now_ms) {
            None => Verdict::Challenge { stale: false },
            Some((false, _)) => Verdict::Challenge { stale: true },
            Some((true, minted)) => {
                let until = minted + self.lifetime_ms + CLOCK_SKEW_MS;
                let fresh = self.counts.lock().unwrap_or_else(|e| e.into_inner()).spend(
                    &creds.nonce,
                    nc,
                    minted,
                    until,
                    now_ms,
                );
                if fresh {
                    Verdict::Ok(Authenticated {
                        user,
                        domain,
                        algorithm: alg,
                    })
                } else {
                    Verdict::Challenge { stale: true }
                }
            }
        }
    }
}

/// The address as bound into a nonce: IPv4-mapped IPv6 as IPv4.
fn client_addr(addr: IpAddr) -> Vec<u8> {
    match addr.to_canonical() {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// `nc` is 8 hex digits (RFC 7616 §3.4); we take 1 to 8.
fn parse_nc(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 8 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(s, 16).ok()
}

/// How many live nonces one verifier tracks at most. A nonce lives
/// `--nonce-lifetime` (300 s): 500k phones re-registering hourly spend about
/// 42k nonces in that time, so a million leaves room for bursts at ~100 bytes
/// each. Past it the oldest is forgotten and every nonce minted up to it is
/// treated as stale (its client re-authenticates; nothing is accepted twice).
pub const MAX_TRACKED_NONCES: usize = 1_000_000;

/// A window of nonce counts one nonce may still use: counts may arrive out
/// of order (a phone's PUBLISH and SUBSCRIBE race), up to 64 below the
/// highest seen.
#[derive(Debug, Clone, Copy)]
struct Window {
    highest: u32,
    /// Bit i set: count `highest - i` was used.
    seen: u64,
}

impl Window {
    /// Mark `nc` used; `false` if it was used before or fell out of the window.
    fn spend(&mut self, nc: u32) -> bool {
        if nc > self.highest {
            let shift = nc - self.highest;
            self.seen = if shift >= 64 { 0 } else { self.seen << shift };
            self.seen |= 1;
            self.highest = nc;
            return true;
        }
        let back = self.highest - nc;
        if back >= 64 || self.seen & (1 << back) != 0 {
            return false;
        }
        self.seen |= 1 << back;
        true
    }
}

/// The nonce counts accepted per nonce, each remembered until its nonce
/// expires: bounded by `cap`, swept by deadline. Time is an input.
#[derive(Debug)]
pub struct NonceCounts {
    windows: HashMap<String, Window>,
    /// (forget at, nonce, minted at) in insertion order. Deadlines follow
    /// mint times, which insertion follows only roughly: the sweep stops at
    /// the first entry not yet due, so an entry may outlive its nonce by up
    /// to a lifetime (memory only; the nonce is stale by then anyway).
    order: VecDeque<(u64, String, u64)>,
    /// Nonces minted at or before this were forgotten early: stale.
    floor_ms: u64,
    cap: usize,
}

impl NonceCounts {
    pub fn new(cap: usize) -> NonceCounts {
        NonceCounts {
            windows: HashMap::new(),
            order: VecDeque::new(),
            floor_ms: 0,
            cap: cap.max(1),
        }
    }

    /// Spend `nc` of `nonce` (minted at `minted`, good until `until`):
    /// `true` the first time, `false` for a replayed or forgotten count.
    pub fn spend(&mut self, nonce: &str, nc: u32, minted: u64, until: u64, now: u64) -> bool {
        while self.order.front().is_some_and(|(t, _, _)| *t <= now) {
            if let Some((_, n, _)) = self.order.pop_front() {
                self.windows.remove(&n);
            }
        }
        if let Some(w) = self.windows.get_mut(nonce) {
            return w.spend(nc);
        }
        if minted <= self.floor_ms && self.floor_ms > 0 {
            return false;
        }
        while self.windows.len() >= self.cap {
            match self.order.pop_front() {
                Some((_, n, m)) => {
                    self.windows.remove(&n);
                    self.floor_ms = self.floor_ms.max(m);
                }
                None => break,
            }
        }
        if minted <= self.floor_ms && self.floor_ms > 0 {
            return false;
        }
        let mut w = Window {
            highest: 0,
            seen: 0,
        };
        let ok = w.spend(nc);
        self.windows.insert(nonce.to_string(), w);
        self.order.push_back((until, nonce.to_string(), minted));
        ok
    }

    pub fn len(&self) -> usize {
        self.windows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }
}

/// Equality whose time does not depend on where the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// RFC 2617 §3.2.2.5: the digest `uri` must designate the Request-URI. We
/// accept the identical string, or the same URI up to host case.
pub fn uri_designates(digest_uri: &str, request_uri: &str) -> bool {
    let a = digest_uri.trim();
    let b = request_uri.trim();
    if a == b {
        return true;
    }
    match (
        presence_sip::rsip::parse_uri(a),
        presence_sip::rsip::parse_uri(b),
    ) {
        (Ok(x), Ok(y)) => {
            x.scheme == y.scheme
                && x.user() == y.user()
                && x.host_with_port
                    .host
                    .to_string()
                    .eq_ignore_ascii_case(&y.host_with_port.host.to_string())
                && x.host_with_port.port == y.host_with_port.port
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SALT: [u8; 8] = [1, 2, 3, 4, 5, 6, 7, 8];

    fn verifier() -> Verifier {
        let users = Users::parse("# test\nalice@example.com:secret\nbob@example.com:pw\n").unwrap();
        Verifier::new(b"k", 300, users, vec![])
    }

    fn client() -> Client<'static> {
        Client {
            addr: "192.0.2.1".parse().unwrap(),
            from: "sip:alice@example.com",
        }
    }

    fn answer_nc(alg: Algorithm, pw: &str, nonce: &str, uri: &str, nc: u32) -> Credentials {
        let ha1 = alg.hash(&format!("alice:example.com:{pw}"));
        let ha2 = alg.hash(&format!("REGISTER:{uri}"));
        let nc = format!("{nc:08x}");
        Credentials {
            username: "alice".into(),
            realm: "example.com".into(),
            nonce: nonce.into(),
            uri: uri.into(),
            response: alg.hash(&format!("{ha1}:{nonce}:{nc}:c0ffee:auth:{ha2}")),
            algorithm: Some(alg.name().into()),
            cnonce: Some("c0ffee".into()),
            nc: Some(nc),
            qop: Some("auth".into()),
            opaque: Some(OPAQUE.into()),
        }
    }

    fn answer(alg: Algorithm, pw: &str, nonce: &str, uri: &str) -> Credentials {
        answer_nc(alg, pw, nonce, uri, 1)
    }

    #[test]
    fn rfc2617_known_answer() {
        // The worked example of RFC 2617 §3.5 (MD5, qop=auth).
        let ha1 = Algorithm::Md5.hash("Mufasa:testrealm@host.com:Circle Of Life");
        let ha2 = Algorithm::Md5.hash("GET:/dir/index.html");
        let r = Algorithm::Md5.hash(&format!(
            "{ha1}:dcd98b7102dd2f0e8b11d0f600bfb0c093:00000001:0a4f113b:auth:{ha2}"
        ));
        assert_eq!(r, "6629fae49393a05397450978507c4ef1");
    }

    #[test]
    fn good_wrong_stale_and_foreign_nonces() {
        let v = verifier();
        let uri = "sip:example.com";
        for alg in [Algorithm::Md5, Algorithm::Sha256] {
            let nonce = v.nonce("example.com", client(), 1_000_000, [alg as u8 + 10; 8]);
            let ok = answer(alg, "secret", &nonce, uri);
            assert!(
                matches!(v.verify(&ok, "REGISTER", uri, "example.com", client(), 1_000_500), Verdict::Ok(a) if a.aor() == "sip:alice@example.com" && a.algorithm() == alg)
            );
            let nonce = v.nonce("example.com", client(), 1_000_000, [alg as u8; 8]);
            let ok = answer(alg, "secret", &nonce, uri);
            let wrong = answer(alg, "guess", &nonce, uri);
            assert_eq!(
                v.verify(&wrong, "REGISTER", uri, "example.com", client(), 1_000_500),
                Verdict::Challenge { stale: false }
            );
            // correct digest, nonce older than 300 s
            assert_eq!(
                v.verify(
                    &ok,
                    "REGISTER",
                    uri,
                    "example.com",
                    client(),
                    1_000_000 + 301_000
                ),
                Verdict::Challenge { stale: true }
            );
            // wrong password on an expired nonce is not "stale": it is wrong
            assert_eq!(
                v.verify(
                    &wrong,
                    "REGISTER",
                    uri,
                    "example.com",
                    client(),
                    1_000_000 + 301_000
                ),
                Verdict::Challenge { stale: false }
            );
            // a nonce minted under another secret
            let other = Verifier::new(b"other", 300, Users::default(), vec![]);
            let forged = answer(
                alg,
                "secret",
                &other.nonce("example.com", client(), 1_000_000, SALT),
                uri,
            );
            assert_eq!(
                v.verify(&forged, "REGISTER", uri, "example.com", client(), 1_000_500),
                Verdict::Challenge { stale: false }
            );
            // uri not designating the Request-URI
            assert!(matches!(
                v.verify(
                    &ok,
                    "REGISTER",
                    "sip:other.com",
                    "example.com",
                    client(),
                    1_000_500
                ),
                Verdict::BadRequest(_)
            ));
        }
    }

    #[test]
    fn challenges_follow_the_configured_order() {
        let users = Users::default();
        let names = |v: &Verifier| -> Vec<String> {
            v.challenges("example.com", client(), 1, false, SALT)
                .iter()
                .map(|c| {
                    c.split("algorithm=")
                        .nth(1)
                        .unwrap()
                        .split(',')
                        .next()
                        .unwrap()
                        .to_string()
                })
                .collect()
        };
        let default = Verifier::new(b"k", 300, users.clone(), vec![]);
        assert_eq!(names(&default), ["MD5", "SHA-256"]);
        let sha_first = Verifier::new(
            b"k",
            300,
            users.clone(),
            Algorithm::parse_list("SHA-256, md5").unwrap(),
        );
        assert_eq!(names(&sha_first), ["SHA-256", "MD5"]);
        let only = Verifier::new(b"k", 300, users, Algorithm::parse_list("SHA-256").unwrap());
        assert_eq!(names(&only), ["SHA-256"]);
        assert!(Algorithm::parse_list("MD5,SHA-512").is_err());
        assert!(Algorithm::parse_list("MD5,md5").is_err());
        assert!(Algorithm::parse_list(" , ").is_err());
    }

    /// An algorithm left out of the configuration is not accepted either.
    #[test]
    fn unconfigured_algorithm_is_refused() {
        let users = Users::parse("alice@example.com:secret\n").unwrap();
        let v = Verifier::new(b"k", 300, users, vec![Algorithm::Sha256]);
        let nonce = v.nonce("example.com", client(), 1_000, SALT);
        let md5 = answer(Algorithm::Md5, "secret", &nonce, "sip:example.com");
        assert_eq!(
            v.verify(
                &md5,
                "REGISTER",
                "sip:example.com",
                "example.com",
                client(),
                1_001
            ),
            Verdict::Challenge { stale: false }
        );
    }

    /// The abuse review's replay: a captured Authorization sent again, from
    /// the same or another address, or without qop.
    #[test]
    fn replays_are_refused() {
        let v = verifier();
        let uri = "sip:example.com";
        let nonce = v.nonce("example.com", client(), 1_000_000, SALT);
        let first = answer(Algorithm::Md5, "secret", &nonce, uri);
        let at = |c| v.verify(&first, "REGISTER", uri, "example.com", c, 1_000_100);
        assert!(matches!(at(client()), Verdict::Ok(_)));
        // The same (nonce, nc) again, from the same address: spent.
        assert_eq!(at(client()), Verdict::Challenge { stale: true });
        // From another address or for another From: not our nonce at all.
        let elsewhere = Client {
            addr: "198.51.100.7".parse().unwrap(),
            ..client()
        };
        assert_eq!(at(elsewhere), Verdict::Challenge { stale: false });
        let other_from = Client {
            from: "sip:bob@example.com",
            ..client()
        };
        assert_eq!(at(other_from), Verdict::Challenge { stale: false });
        // The next count is fine, so is one that comes late (a race), once.
        for nc in [3, 2] {
            let c = answer_nc(Algorithm::Md5, "secret", &nonce, uri, nc);
            assert!(matches!(
                v.verify(&c, "REGISTER", uri, "example.com", client(), 1_000_200),
                Verdict::Ok(_)
            ));
            assert_eq!(
                v.verify(&c, "REGISTER", uri, "example.com", client(), 1_000_200),
                Verdict::Challenge { stale: true }
            );
        }
        // No qop (RFC 2069 style): no nonce count to check, so no entry.
        let mut bare = answer_nc(Algorithm::Md5, "secret", &nonce, uri, 9);
        bare.qop = None;
        bare.nc = None;
        bare.cnonce = None;
        let ha1 = Algorithm::Md5.hash("alice:example.com:secret");
        let ha2 = Algorithm::Md5.hash(&format!("REGISTER:{uri}"));
        bare.response = Algorithm::Md5.hash(&format!("{ha1}:{nonce}:{ha2}"));
        assert_eq!(
            v.verify(&bare, "REGISTER", uri, "example.com", client(), 1_000_300),
            Verdict::Challenge { stale: false }
        );
        // IPv4-mapped IPv6 is the same client.
        let mapped = Client {
            addr: "::ffff:192.0.2.1".parse().unwrap(),
            ..client()
        };
        let c = answer_nc(Algorithm::Md5, "secret", &nonce, uri, 10);
        assert!(matches!(
            v.verify(&c, "REGISTER", uri, "example.com", mapped, 1_000_300),
            Verdict::Ok(_)
        ));
    }

    #[test]
    fn nonce_counts_window_and_bounds() {
        let mut w = Window {
            highest: 0,
            seen: 0,
        };
        assert!(w.spend(1));
        assert!(!w.spend(1));
        assert!(w.spend(100));
        assert!(w.spend(37), "within 64 below the highest");
        assert!(!w.spend(36), "too far below the highest");
        assert!(!w.spend(37));

        let mut t = NonceCounts::new(2);
        assert!(t.spend("a", 1, 10, 1_000, 10));
        assert!(t.spend("b", 1, 20, 1_000, 20));
        // A third nonce pushes out "a": it and anything minted before it is stale.
        assert!(t.spend("c", 1, 30, 1_000, 30));
        assert_eq!(t.len(), 2);
        assert!(!t.spend("a", 2, 10, 1_000, 40), "forgotten early = stale");
        assert!(!t.spend("old", 1, 5, 1_000, 40));
        // Expired entries go by their deadline.
        let mut t = NonceCounts::new(10);
        assert!(t.spend("a", 1, 0, 100, 0));
        assert!(!t.spend("a", 1, 0, 100, 50));
        assert!(t.spend("b", 1, 60, 160, 101));
        assert_eq!(t.len(), 1, "a's entry is gone after its deadline");
    }

    #[test]
    fn parses_authorization_headers() {
        let c = Credentials::parse(r#"Digest username="alice", realm="example.com", nonce="abc", uri="sip:example.com", response="DEADBEEF", algorithm=SHA-256, qop=auth, nc=00000001, cnonce="x,y""#).unwrap();
        assert_eq!(c.response, "deadbeef");
        assert_eq!(c.cnonce.as_deref(), Some("x,y"));
        assert_eq!(c.algorithm.as_deref(), Some("SHA-256"));
        assert!(Credentials::parse("Basic abc").is_none());
        assert!(Credentials::parse("Digest realm=\"x\"").is_none());
        assert_eq!(parse_nc("0000000a"), Some(10));
        assert_eq!(parse_nc("1"), Some(1));
        assert_eq!(parse_nc("000000001"), None);
        assert_eq!(parse_nc("xyz"), None);
        assert_eq!(parse_nc(""), None);
    }

    #[test]
    fn users_file_errors_are_all_reported() {
        let e = Users::parse("ok@example.com:pw\nnocolon\n:x\nalice:pw\n").unwrap_err();
        assert_eq!(e.iter().map(|e| e.line).collect::<Vec<_>>(), vec![2, 3, 4]);
    }
}

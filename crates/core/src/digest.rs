//! Digest authentication (RFC 2617, RFC 7616 / RFC 8760 for SHA-256).
//!
//! Nonces are stateless: `base64url(ts_ms || HMAC-SHA256(secret, ts_ms || realm)[..16])`,
//! so any edge holding the secret can verify any nonce, and a nonce expires
//! `lifetime` after it was minted. A correct digest on an expired nonce is
//! answered with a fresh challenge carrying `stale=true`; a wrong digest never
//! gets in. The only way to obtain an [`Authenticated`] is [`Verifier::verify`].

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use md5::Md5;
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;

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
}

impl Authenticated {
    pub fn user(&self) -> &str {
        &self.user
    }
    pub fn domain(&self) -> &str {
        &self.domain
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

/// Mints and checks nonces and digests.
#[derive(Clone)]
pub struct Verifier {
    secret: Vec<u8>,
    lifetime_ms: u64,
    users: Users,
}

const OPAQUE: &str = "presence";

impl Verifier {
    pub fn new(secret: &[u8], lifetime_secs: u64, users: Users) -> Verifier {
        Verifier {
            secret: secret.to_vec(),
            lifetime_ms: lifetime_secs * 1000,
            users,
        }
    }

    fn mac(&self, ts: u64, realm: &str) -> [u8; 16] {
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.secret)
            .expect("HMAC accepts any key length");
        m.update(&ts.to_be_bytes());
        m.update(realm.as_bytes());
        let full = m.finalize().into_bytes();
        let mut out = [0u8; 16];
        out.copy_from_slice(&full[..16]);
        out
    }

    pub fn nonce(&self, realm: &str, now_ms: u64) -> String {
        let mut raw = Vec::with_capacity(24);
        raw.extend_from_slice(&now_ms.to_be_bytes());
        raw.extend_from_slice(&self.mac(now_ms, realm));
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// `Some(fresh)` if the nonce was minted by us for this realm.
    fn check_nonce(&self, nonce: &str, realm: &str, now_ms: u64) -> Option<bool> {
        let raw = URL_SAFE_NO_PAD.decode(nonce).ok()?;
        if raw.len() != 24 {
            return None;
        }
        let ts = u64::from_be_bytes(raw[..8].try_into().ok()?);
        let mac = self.mac(ts, realm);
        if !constant_time_eq(&mac, &raw[8..]) {
            return None;
        }
        Some(now_ms >= ts && now_ms - ts <= self.lifetime_ms || ts > now_ms && ts - now_ms < 5_000)
    }

    /// The challenge header values to send (SHA-256 first, then MD5, RFC 8760 §2.4).
    pub fn challenges(&self, realm: &str, now_ms: u64, stale: bool) -> Vec<String> {
        let nonce = self.nonce(realm, now_ms);
        [Algorithm::Sha256, Algorithm::Md5]
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

    /// Check credentials for `method` on `request_uri` in `realm`.
    pub fn verify(
        &self,
        creds: &Credentials,
        method: &str,
        request_uri: &str,
        realm: &str,
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
        let expected = match creds.qop.as_deref() {
            Some(q) if q.eq_ignore_ascii_case("auth") => {
                let (Some(nc), Some(cnonce)) = (&creds.nc, &creds.cnonce) else {
                    return Verdict::BadRequest("qop=auth without nc or cnonce");
                };
                alg.hash(&format!("{ha1}:{}:{nc}:{cnonce}:auth:{ha2}", creds.nonce))
            }
            Some(_) => return Verdict::Challenge { stale: false },
            None => alg.hash(&format!("{ha1}:{}:{ha2}", creds.nonce)),
        };
        if !constant_time_eq(expected.as_bytes(), creds.response.as_bytes()) {
            return Verdict::Challenge { stale: false };
        }
        match self.check_nonce(&creds.nonce, realm, now_ms) {
            None => Verdict::Challenge { stale: false },
            Some(false) => Verdict::Challenge { stale: true },
            Some(true) => Verdict::Ok(Authenticated { user, domain }),
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
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

    fn verifier() -> Verifier {
        let users = Users::parse("# test\nalice@example.com:secret\nbob@example.com:pw\n").unwrap();
        Verifier::new(b"k", 300, users)
    }

    fn answer(v: &Verifier, alg: Algorithm, pw: &str, nonce: &str, uri: &str) -> Credentials {
        let ha1 = alg.hash(&format!("alice:example.com:{pw}"));
        let ha2 = alg.hash(&format!("REGISTER:{uri}"));
        let _ = v;
        Credentials {
            username: "alice".into(),
            realm: "example.com".into(),
            nonce: nonce.into(),
            uri: uri.into(),
            response: alg.hash(&format!("{ha1}:{nonce}:00000001:c0ffee:auth:{ha2}")),
            algorithm: Some(alg.name().into()),
            cnonce: Some("c0ffee".into()),
            nc: Some("00000001".into()),
            qop: Some("auth".into()),
            opaque: Some(OPAQUE.into()),
        }
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
            let nonce = v.nonce("example.com", 1_000_000);
            let ok = answer(&v, alg, "secret", &nonce, uri);
            assert!(
                matches!(v.verify(&ok, "REGISTER", uri, "example.com", 1_000_500), Verdict::Ok(a) if a.aor() == "sip:alice@example.com")
            );
            let wrong = answer(&v, alg, "guess", &nonce, uri);
            assert_eq!(
                v.verify(&wrong, "REGISTER", uri, "example.com", 1_000_500),
                Verdict::Challenge { stale: false }
            );
            // correct digest, nonce older than 300 s
            assert_eq!(
                v.verify(&ok, "REGISTER", uri, "example.com", 1_000_000 + 301_000),
                Verdict::Challenge { stale: true }
            );
            // wrong password on an expired nonce is not "stale": it is wrong
            assert_eq!(
                v.verify(&wrong, "REGISTER", uri, "example.com", 1_000_000 + 301_000),
                Verdict::Challenge { stale: false }
            );
            // a nonce minted under another secret
            let other = Verifier::new(b"other", 300, Users::default());
            let forged = answer(
                &v,
                alg,
                "secret",
                &other.nonce("example.com", 1_000_000),
                uri,
            );
            assert_eq!(
                v.verify(&forged, "REGISTER", uri, "example.com", 1_000_500),
                Verdict::Challenge { stale: false }
            );
            // uri not designating the Request-URI
            assert!(matches!(
                v.verify(&ok, "REGISTER", "sip:other.com", "example.com", 1_000_500),
                Verdict::BadRequest(_)
            ));
        }
    }

    #[test]
    fn parses_authorization_headers() {
        let c = Credentials::parse(r#"Digest username="alice", realm="example.com", nonce="abc", uri="sip:example.com", response="DEADBEEF", algorithm=SHA-256, qop=auth, nc=00000001, cnonce="x,y""#).unwrap();
        assert_eq!(c.response, "deadbeef");
        assert_eq!(c.cnonce.as_deref(), Some("x,y"));
        assert_eq!(c.algorithm.as_deref(), Some("SHA-256"));
        assert!(Credentials::parse("Basic abc").is_none());
        assert!(Credentials::parse("Digest realm=\"x\"").is_none());
    }

    #[test]
    fn users_file_errors_are_all_reported() {
        let e = Users::parse("ok@example.com:pw\nnocolon\n:x\nalice:pw\n").unwrap_err();
        assert_eq!(e.iter().map(|e| e.line).collect::<Vec<_>>(), vec![2, 3, 4]);
    }
}

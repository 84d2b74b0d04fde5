//! Who may use the API: bearer tokens of services and operators, and
//! session tokens of users who logged in with their SIP credentials.
//!
//! [`Tokens`] is the `--api-tokens FILE` format, one token per line:
//!
//! ```text
//! # NAME     TOKEN                          SCOPE[,SCOPE...]
//! dashboard  3hS9v0Yq~c2b.Lk4-PzX8wE1       read
//! provision  Zr6tQp1Xc8Vb2Nm4Lk7Jh0Gf       write,read
//! ```
//!
//! Fields are separated by whitespace; blank lines and `#` comments are
//! skipped. A token is at least [`MIN_TOKEN_LEN`] characters of
//! `[A-Za-z0-9._~+/=-]`; names and tokens are each used once. Scopes are
//! `read`, `write` and `admin`, each allowing what the ones below it allow;
//! a line's highest scope is the token's. Every error of a file is
//! reported with its line, and no message shows a token.
//!
//! [`Sessions`] mints and checks stateless session tokens:
//! `s1.<base64url(payload)>.<base64url(HMAC-SHA256(key, payload))>` with
//! payload `<expires_at_ms>|<aor>` and key `HMAC-SHA256(secret, "presence
//! api session v1")`, so any API pod sharing the secret accepts the tokens
//! of any other, and the key is never the secret itself (nor a Digest
//! nonce key or a flow seal key made from the same secret).
//!
//! What it is not: no login (checking the SIP credentials is the Digest
//! verifier's work), no revocation (a session token is good until it
//! expires; a shorter lifetime is the only lever), no file reading and no
//! clock reads (text and now are passed in).

use crate::digest::constant_time_eq;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Fewest characters in an API token.
pub const MIN_TOKEN_LEN: usize = 16;

/// What a token may do. Each scope allows what the ones before it allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    Read,
    Write,
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Read, Scope::Write, Scope::Admin];

    /// Whether a token of this scope may do what `needed` is asked for.
    pub fn allows(self, needed: Scope) -> bool {
        self >= needed
    }

    /// `read`, `write` or `admin` (any case, trimmed).
    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL
            .into_iter()
            .find(|scope| scope.as_str().eq_ignore_ascii_case(s.trim()))
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }
}

/// What is wrong with a tokens file, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct TokensError {
    /// 1-based.
    pub line: usize,
    pub message: String,
}

/// One line of a tokens file.
#[derive(Clone)]
struct Token {
    name: String,
    token: String,
    scope: Scope,
}

/// The API tokens of a `--api-tokens` file. Its `Debug` shows names and
/// scopes, never a token.
#[derive(Clone, Default)]
pub struct Tokens {
    tokens: Vec<Token>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.tokens.iter().map(|t| (&t.name, t.scope)))
            .finish()
    }
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "._~+/=-".contains(c)
}

impl Tokens {
    /// Parse a tokens file; all its errors, in line order, if it has any.
    pub fn parse(text: &str) -> Result<Tokens, Vec<TokensError>> {
        let mut tokens: Vec<Token> = Vec::new();
        // The line each name and token was first seen on.
        let mut lines: Vec<usize> = Vec::new();
        let mut errors = Vec::new();
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        for (i, line) in text.split('\n').enumerate() {
            let n = i + 1;
            let fields: Vec<&str> = line
                .split_whitespace()
                .take_while(|f| !f.starts_with('#'))
                .collect();
            if fields.is_empty() {
                continue;
            }
            let mut fail = |message: String| errors.push(TokensError { line: n, message });
            let [name, token, scopes] = fields[..] else {
                fail(format!(
                    "{} fields, expected NAME TOKEN SCOPE[,SCOPE...]",
                    fields.len()
                ));
                continue;
            };
            let mut ok = true;
            if name.chars().any(char::is_control) {
                fail("the name has a control character".into());
                ok = false;
            }
            if token.chars().count() < MIN_TOKEN_LEN {
                fail(format!(
                    "the token of {name:?} is shorter than {MIN_TOKEN_LEN} characters"
                ));
                ok = false;
            } else if !token.chars().all(is_token_char) {
                fail(format!(
                    "the token of {name:?} has a character not in [A-Za-z0-9._~+/=-]"
                ));
                ok = false;
            }
            let mut scope = None;
            for s in scopes.split(',') {
                match Scope::parse(s) {
                    Some(s) => scope = scope.max(Some(s)),
                    None => {
                        fail(format!(
                            "{:?} is not a scope (read, write or admin)",
                            s.chars().take(32).collect::<String>()
                        ));
                        ok = false;
                    }
                }
            }
            if let Some(first) = tokens.iter().position(|t| t.name == name) {
                fail(format!(
                    "{name:?} is already the name of the token on line {}",
                    lines[first]
                ));
                ok = false;
            }
            if let Some(first) = tokens.iter().position(|t| t.token == token) {
                fail(format!(
                    "the token of {name:?} is also the token of {:?} (line {})",
                    tokens[first].name, lines[first]
                ));
                ok = false;
            }
            if let (true, Some(scope)) = (ok, scope) {
                tokens.push(Token {
                    name: name.to_string(),
                    token: token.to_string(),
                    scope,
                });
                lines.push(n);
            }
        }
        if errors.is_empty() {
            Ok(Tokens { tokens })
        } else {
            Err(errors)
        }
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The name and scope of `token`, if it is one of the file's. Every
    /// token is compared, each in constant time (a comparison's time tells
    /// the length of a token at most, not how much of it matched).
    pub fn check(&self, token: &str) -> Option<(&str, Scope)> {
        let mut found = None;
        for t in &self.tokens {
            if constant_time_eq(t.token.as_bytes(), token.as_bytes()) {
                found = Some((t.name.as_str(), t.scope));
            }
        }
        found
    }
}

/// The scheme and version of a session token.
const SESSION_PREFIX: &str = "s1.";
/// Longest session token looked at: an AoR is far shorter, and a longer
/// string is not decoded at all.
const MAX_SESSION_TOKEN: usize = 4096;

/// Mints and checks the session tokens of users logged in with SIP
/// credentials; every API pod sharing the secret makes and accepts the
/// same tokens. Its `Debug` does not show the key.
#[derive(Clone)]
pub struct Sessions {
    /// The HMAC keyed once; each token starts from a copy of it.
    keyed: Hmac<Sha256>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sessions(..)")
    }
}

impl Sessions {
    /// The sessions of every pod sharing `secret`; the key is
    /// `HMAC-SHA256(secret, "presence api session v1")`.
    pub fn new(secret: &[u8]) -> Sessions {
        let mut derive = <Hmac<Sha256> as KeyInit>::new_from_slice(secret)
            .expect("HMAC takes a key of any length");
        derive.update(b"presence api session v1");
        let key = derive.finalize().into_bytes();
        Sessions {
            keyed: <Hmac<Sha256> as KeyInit>::new_from_slice(&key)
                .expect("HMAC takes a key of any length"),
        }
    }

    fn mac(&self, payload: &[u8]) -> [u8; 32] {
        let mut m = self.keyed.clone();
        m.update(payload);
        m.finalize().into_bytes().into()
    }

    /// A token for `aor`, good until `expires_at_ms` (unix milliseconds,
    /// excluded).
    pub fn mint(&self, aor: &str, expires_at_ms: u64) -> String {
        let payload = format!("{expires_at_ms}|{aor}");
        format!(
            "{SESSION_PREFIX}{}.{}",
            URL_SAFE_NO_PAD.encode(payload.as_bytes()),
            URL_SAFE_NO_PAD.encode(self.mac(payload.as_bytes()))
        )
    }

    /// The AoR of `token` if this secret minted it, it is unaltered and
    /// `now_ms` is before its expiry. The MAC is compared in constant time
    /// and checked before anything in the payload is believed.
    pub fn verify(&self, token: &str, now_ms: u64) -> Option<String> {
        if token.len() > MAX_SESSION_TOKEN {
            return None;
        }
        let (payload, mac) = token.strip_prefix(SESSION_PREFIX)?.split_once('.')?;
        let payload = URL_SAFE_NO_PAD.decode(payload).ok()?;
        let mac = URL_SAFE_NO_PAD.decode(mac).ok()?;
        if !constant_time_eq(&self.mac(&payload), &mac) {
            return None;
        }
        let payload = String::from_utf8(payload).ok()?;
        let (expires, aor) = payload.split_once('|')?;
        let expires: u64 = expires.parse().ok()?;
        (now_ms < expires).then(|| aor.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    const FILE: &str = "# API tokens\n\
        \n\
        dashboard  3hS9v0Yq~c2b.Lk4-PzX8wE1   read\n\
        provision\tZr6tQp1Xc8Vb2Nm4Lk7Jh0Gf\twrite,read   # the provisioning job\r\n\
        \x20  ops  aaaaaaaaaaaaaaaa+/==  READ,admin\n\
        # retired  bbbbbbbbbbbbbbbbbbbb  admin\n";

    #[test]
    fn a_tokens_file_is_read() {
        let t = Tokens::parse(FILE).unwrap();
        assert_eq!(t.len(), 3);
        assert!(!t.is_empty());
        assert_eq!(
            t.check("3hS9v0Yq~c2b.Lk4-PzX8wE1"),
            Some(("dashboard", Scope::Read))
        );
        assert_eq!(
            t.check("Zr6tQp1Xc8Vb2Nm4Lk7Jh0Gf"),
            Some(("provision", Scope::Write))
        );
        assert_eq!(t.check("aaaaaaaaaaaaaaaa+/=="), Some(("ops", Scope::Admin)));
        for wrong in [
            "",
            "3hS9v0Yq~c2b.Lk4-PzX8wE",
            "3hS9v0Yq~c2b.Lk4-PzX8wE1 ",
            "3HS9v0Yq~c2b.Lk4-PzX8wE1",
            "bbbbbbbbbbbbbbbbbbbb",
            "dashboard",
        ] {
            assert_eq!(t.check(wrong), None, "{wrong:?}");
        }
        // No token in its Debug.
        let shown = format!("{t:?}");
        assert!(
            shown.contains("dashboard") && !shown.contains("3hS9"),
            "{shown}"
        );
        // An empty file: no token at all.
        let empty = Tokens::parse("# nobody yet\n").unwrap();
        assert!(empty.is_empty() && empty.check("aaaaaaaaaaaaaaaa").is_none());
        assert_eq!(Tokens::default().len(), 0);
        assert!(Tokens::parse("").unwrap().is_empty());
    }

    #[test]
    fn every_error_is_reported_with_its_line() {
        let text = "ok aaaaaaaaaaaaaaaa read\n\
            short abc read\n\
            bad aaaaaaaaaaaaaaa! read\n\
            two aaaaaaaaaaaaaaab read write\n\
            noscope aaaaaaaaaaaaaaac\n\
            wrongscope aaaaaaaaaaaaaaad read,root\n\
            empty aaaaaaaaaaaaaaae read,,write\n\
            ok bbbbbbbbbbbbbbbb read\n\
            copy aaaaaaaaaaaaaaaa admin\n\
            fine cccccccccccccccc admin\n";
        let e = Tokens::parse(text).unwrap_err();
        let got: Vec<(usize, &str)> = e.iter().map(|e| (e.line, e.message.as_str())).collect();
        assert_eq!(
            got,
            [
                (2, "the token of \"short\" is shorter than 16 characters"),
                (
                    3,
                    "the token of \"bad\" has a character not in [A-Za-z0-9._~+/=-]"
                ),
                (4, "4 fields, expected NAME TOKEN SCOPE[,SCOPE...]"),
                (5, "2 fields, expected NAME TOKEN SCOPE[,SCOPE...]"),
                (6, "\"root\" is not a scope (read, write or admin)"),
                (7, "\"\" is not a scope (read, write or admin)"),
                (8, "\"ok\" is already the name of the token on line 1"),
                (
                    9,
                    "the token of \"copy\" is also the token of \"ok\" (line 1)"
                ),
            ]
        );
        assert_eq!(
            e[0].to_string(),
            "line 2: the token of \"short\" is shorter than 16 characters"
        );
        // No message shows a token.
        for e in &e {
            assert!(!e.message.contains("aaaa"), "{e}");
        }
        assert_eq!(
            Tokens::parse("x\u{1}y aaaaaaaaaaaaaaaa read")
                .unwrap_err()
                .len(),
            1
        );
    }

    #[test]
    fn scopes() {
        use Scope::*;
        for (have, needed, allowed) in [
            (Admin, Admin, true),
            (Admin, Write, true),
            (Admin, Read, true),
            (Write, Admin, false),
            (Write, Write, true),
            (Write, Read, true),
            (Read, Admin, false),
            (Read, Write, false),
            (Read, Read, true),
        ] {
            assert_eq!(have.allows(needed), allowed, "{have:?} {needed:?}");
        }
        for s in Scope::ALL {
            assert_eq!(Scope::parse(s.as_str()), Some(s));
        }
        assert_eq!(Scope::parse(" Admin "), Some(Admin));
        assert_eq!(Scope::parse("root"), None);
        assert_eq!(Scope::parse(""), None);
    }

    const NOW: u64 = 1_714_557_600_000;

    #[test]
    fn a_session_round_trips_until_it_expires() {
        let s = Sessions::new(b"cluster secret");
        let token = s.mint("sip:alice@example.com", NOW + 3_600_000);
        assert!(token.starts_with("s1."), "{token}");
        assert!(token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)));
        assert_eq!(
            s.verify(&token, NOW),
            Some("sip:alice@example.com".to_string())
        );
        // Another pod with the same secret.
        assert_eq!(
            Sessions::new(b"cluster secret").verify(&token, NOW + 3_599_999),
            Some("sip:alice@example.com".to_string())
        );
        assert_eq!(s.verify(&token, NOW + 3_600_000), None, "expired");
        assert_eq!(s.verify(&token, u64::MAX), None);
        // Whatever the AoR holds.
        for aor in ["", "sip:a|b@example.com", "sip:é@example.com", "x.y.z"] {
            assert_eq!(s.verify(&s.mint(aor, 10), 9).as_deref(), Some(aor));
        }
        assert_eq!(s.verify(&s.mint("sip:a@b", 0), 0), None);
        assert_eq!(format!("{s:?}"), "Sessions(..)");
    }

    #[test]
    fn the_payload_is_what_the_docs_say() {
        let s = Sessions::new(b"k");
        let token = s.mint("sip:bob@example.com", 42);
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(
            URL_SAFE_NO_PAD.decode(parts[1]).unwrap(),
            b"42|sip:bob@example.com"
        );
        let mut key = <Hmac<Sha256> as KeyInit>::new_from_slice(b"k").unwrap();
        key.update(b"presence api session v1");
        let key = key.finalize().into_bytes();
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key).unwrap();
        mac.update(b"42|sip:bob@example.com");
        assert_eq!(
            URL_SAFE_NO_PAD.decode(parts[2]).unwrap(),
            mac.finalize().into_bytes().to_vec()
        );
    }

    #[test]
    fn altered_or_foreign_sessions_do_not_verify() {
        let s = Sessions::new(b"cluster secret");
        let token = s.mint("sip:alice@example.com", NOW + 60_000);
        let (head, mac) = token.rsplit_once('.').unwrap();
        let forged_payload = URL_SAFE_NO_PAD.encode(format!("{}|sip:alice@example.com", u64::MAX));
        let admin_payload =
            URL_SAFE_NO_PAD.encode(format!("{}|sip:admin@example.com", NOW + 60_000));
        let mut flipped = URL_SAFE_NO_PAD.decode(mac).unwrap();
        flipped[31] ^= 1;
        for bad in [
            format!("s1.{forged_payload}.{mac}"),
            format!("s1.{admin_payload}.{mac}"),
            format!("{head}.{}", URL_SAFE_NO_PAD.encode(&flipped)),
            format!("{head}.{}", &mac[..mac.len() - 2]),
            format!("{head}."),
            format!("{head}.{mac}.{mac}"),
            format!("{head}.{mac}="),
            token.replacen("s1.", "s2.", 1),
            token.replacen("s1.", "", 1),
            token.to_uppercase(),
            format!(" {token}"),
        ] {
            assert_eq!(s.verify(&bad, NOW), None, "{bad}");
        }
        assert_eq!(Sessions::new(b"another secret").verify(&token, NOW), None);
        assert_eq!(Sessions::new(b"").verify(&token, NOW), None);
        // A valid MAC over a payload that is not ours cannot be made
        // without the key; one over a payload without `|` is refused.
        let no_bar = b"12345";
        let odd = format!(
            "s1.{}.{}",
            URL_SAFE_NO_PAD.encode(no_bar),
            URL_SAFE_NO_PAD.encode(s.mac(no_bar))
        );
        assert_eq!(s.verify(&odd, 0), None);
        let not_a_number = b"soon|sip:a@b";
        let odd = format!(
            "s1.{}.{}",
            URL_SAFE_NO_PAD.encode(not_a_number),
            URL_SAFE_NO_PAD.encode(s.mac(not_a_number))
        );
        assert_eq!(s.verify(&odd, 0), None);
        let long = s.mint(&"x".repeat(MAX_SESSION_TOKEN), u64::MAX);
        assert_eq!(s.verify(&long, 0), None, "too long to look at");
    }

    /// Random strings, token-shaped garbage and single-character changes of
    /// a good token never panic and never verify; random tokens files never
    /// panic the parser.
    #[test]
    fn property_garbage_never_panics_and_never_verifies() {
        let mut rng = StdRng::seed_from_u64(6749);
        const TOKEN_CHARS: &[u8] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._~+/=-";
        let s = Sessions::new(b"cluster secret");
        const ALPHABET: &[u8] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.|=s1 #,\n\r\t";
        // Up to `max` characters of the alphabet.
        let pick = |rng: &mut StdRng, max: usize| -> String {
            (0..rng.random_range(0..max))
                .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
                .collect()
        };
        for _ in 0..5_000 {
            let noise: String = (0..rng.random_range(0..80usize))
                .map(|_| rng.random::<char>())
                .collect();
            assert_eq!(s.verify(&noise, 0), None);
            let shaped = format!("s1.{}.{}", pick(&mut rng, 40), pick(&mut rng, 50));
            assert_eq!(s.verify(&shaped, 0), None, "{shaped}");

            let aor = format!("sip:u{}@example.com", rng.random::<u32>());
            let good = s.mint(&aor, NOW + 1);
            assert_eq!(s.verify(&good, NOW).as_deref(), Some(aor.as_str()));
            let mut chars: Vec<char> = good.chars().collect();
            let at = rng.random_range(0..chars.len());
            chars[at] = ALPHABET[rng.random_range(0..ALPHABET.len())] as char;
            let changed: String = chars.into_iter().collect();
            if changed != good {
                assert_eq!(s.verify(&changed, NOW), None, "{changed}");
            }

            // A file written from generated tokens reads back.
            let mut text = String::new();
            let mut want = Vec::new();
            for i in 0..rng.random_range(0..6usize) {
                let token: String = (0..rng.random_range(MIN_TOKEN_LEN..40))
                    .map(|_| TOKEN_CHARS[rng.random_range(0..TOKEN_CHARS.len())] as char)
                    .collect();
                let scopes: Vec<Scope> = (0..rng.random_range(1..4usize))
                    .map(|_| Scope::ALL[rng.random_range(0..3usize)])
                    .collect();
                let listed: Vec<&str> = scopes.iter().map(Scope::as_str).collect();
                let gap = [" ", "\t", "  \t "][rng.random_range(0..3usize)];
                if rng.random_bool(0.2) {
                    text += "# a comment\n\n";
                }
                text += &format!("n{i}{gap}{token}{gap}{}", listed.join(","));
                text += ["\n", "\r\n", " # trailing\n"][rng.random_range(0..3usize)];
                if !want.iter().any(|(_, t, _)| *t == token) {
                    want.push((format!("n{i}"), token, scopes.into_iter().max()));
                }
            }
            if let Ok(tokens) = Tokens::parse(&text) {
                assert_eq!(tokens.len(), want.len());
                for (name, token, scope) in &want {
                    assert_eq!(tokens.check(token), scope.map(|s| (name.as_str(), s)));
                }
            } else {
                panic!("{text:?}");
            }

            let file = pick(&mut rng, 200);
            if let Ok(tokens) = Tokens::parse(&file) {
                let _ = tokens.check(&pick(&mut rng, 40));
            }
            let _ = Tokens::parse(&noise);
        }
    }
}

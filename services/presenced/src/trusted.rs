//! `--trusted-publisher`: who may PUBLISH for any local AoR. A PBX feeding
//! dialog state or a voicemail server feeding message summaries publishes
//! for many users; everyone else may publish only their own AoR when Digest
//! is on. An entry is an identity (`pbx@example.com`, authenticated by
//! Digest like any user) or a source network (`10.1.2.0/24`, `192.0.2.7`,
//! `2001:db8::/32`) whose PUBLISHes are taken without a challenge, the way
//! a carrier trusts its own application servers by address.

use presence_core::Aor;
use std::fmt;
use std::net::IpAddr;

/// An address block: every address whose first `prefix` bits are those of
/// `addr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// `ADDR` or `ADDR/PREFIX`, IPv4 or IPv6. Host bits must be zero, so a
    /// typo (`10.1.2.3/16`) does not silently trust more than meant.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an address or ADDR/PREFIX"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => match p.trim().parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("{s:?}: the prefix length must be 0..={max}")),
            },
        };
        let cidr = Cidr { addr, prefix };
        if cidr.network_bits(addr) != bits(addr) {
            return Err(format!("{s:?}: address bits set past the prefix length"));
        }
        Ok(cidr)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        ip.is_ipv4() == self.addr.is_ipv4() && self.network_bits(ip) == bits(self.addr)
    }

    fn network_bits(&self, ip: IpAddr) -> u128 {
        let width = if ip.is_ipv4() { 32 } else { 128 };
        let host = u32::from(width - self.prefix);
        let mask = if host >= 128 { 0 } else { u128::MAX << host };
        bits(ip) & mask
    }
}

fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The parsed `--trusted-publisher` entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedPublishers {
    users: Vec<String>,
    networks: Vec<Cidr>,
}

impl TrustedPublishers {
    /// Each entry `USER@DOMAIN` (or `sip:USER@DOMAIN`) or a network; all
    /// errors at once.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<TrustedPublishers, Vec<String>> {
        let mut t = TrustedPublishers::default();
        let mut errors = Vec::new();
        for entry in entries
            .iter()
            .map(|e| e.as_ref().trim())
            .filter(|e| !e.is_empty())
        {
            if entry.contains('@') {
                let uri = if entry.contains(':') {
                    entry.to_string()
                } else {
                    format!("sip:{entry}")
                };
                match Aor::parse(&uri) {
                    Some(aor) => t.users.push(aor.into_string()),
                    None => {
                        errors.push(format!("--trusted-publisher {entry:?}: not a USER@DOMAIN"))
                    }
                }
            } else {
                match Cidr::parse(entry) {
                    Ok(c) => t.networks.push(c),
                    Err(e) => errors.push(format!("--trusted-publisher {e}")),
                }
            }
        }
        if errors.is_empty() {
            Ok(t)
        } else {
            Err(errors)
        }
    }

    /// A PUBLISH from `ip` is taken without a challenge, for any local AoR.
    pub fn network(&self, ip: IpAddr) -> bool {
        self.networks.iter().any(|c| c.contains(ip))
    }

    /// `aor` (an authenticated identity) may publish for any local AoR.
    pub fn user(&self, aor: &str) -> bool {
        self.users.iter().any(|u| u == aor)
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty() && self.networks.is_empty()
    }
}

impl fmt::Display for TrustedPublishers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("none");
        }
        let all: Vec<String> = self
            .users
            .iter()
            .cloned()
            .chain(self.networks.iter().map(|c| c.to_string()))
            .collect();
        f.write_str(&all.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn networks_and_identities() {
        let t = TrustedPublishers::parse(&[
            "10.1.2.0/24",
            "192.0.2.7",
            "2001:db8::/32",
            "pbx@Example.COM",
            "sip:vm@example.com",
        ])
        .unwrap();
        assert!(t.network(ip("10.1.2.200")));
        assert!(!t.network(ip("10.1.3.1")));
        assert!(t.network(ip("192.0.2.7")));
        assert!(!t.network(ip("192.0.2.8")));
        assert!(t.network(ip("2001:db8:1::5")));
        assert!(!t.network(ip("2001:db9::1")));
        assert!(t.network(ip("::ffff:10.1.2.3")), "an IPv4-mapped source");
        assert!(t.user("sip:pbx@example.com"));
        assert!(t.user("sip:vm@example.com"));
        assert!(!t.user("sip:alice@example.com"));
        assert_eq!(
            t.to_string(),
            "sip:pbx@example.com,sip:vm@example.com,10.1.2.0/24,192.0.2.7/32,2001:db8::/32"
        );
        assert!(TrustedPublishers::parse::<&str>(&[]).unwrap().is_empty());
        let all = TrustedPublishers::parse(&["0.0.0.0/0"]).unwrap();
        assert!(all.network(ip("203.0.113.9")) && !all.network(ip("::1")));
    }

    #[test]
    fn mistakes_are_refused_all_at_once() {
        let errors =
            TrustedPublishers::parse(&["10.1.2.3/16", "10.0.0.0/33", "nonsense", "@example.com"])
                .unwrap_err();
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert!(errors[0].contains("past the prefix"), "{errors:?}");
    }

    /// Against a plain model (compare the leading bits one by one): random
    /// networks and addresses agree, and random text never panics.
    #[test]
    fn property_contains_agrees_with_a_bitwise_model() {
        let mut rng = StdRng::seed_from_u64(6446);
        for _ in 0..20_000 {
            let v4 = rng.random_bool(0.5);
            let (width, a, b) = if v4 {
                let a = rng.random::<u32>();
                // Often close to `a`, so both answers occur.
                let b = if rng.random_bool(0.5) {
                    a ^ (1 << rng.random_range(0..32u32))
                } else {
                    rng.random()
                };
                (
                    32u8,
                    IpAddr::V4(Ipv4Addr::from(a)),
                    IpAddr::V4(Ipv4Addr::from(b)),
                )
            } else {
                let a = rng.random::<u128>();
                let b = if rng.random_bool(0.5) {
                    a ^ (1 << rng.random_range(0..128u32))
                } else {
                    rng.random()
                };
                (
                    128u8,
                    IpAddr::V6(Ipv6Addr::from(a)),
                    IpAddr::V6(Ipv6Addr::from(b)),
                )
            };
            let prefix = rng.random_range(0..=width);
            let net = bits(a)
                & if prefix == 0 {
                    0
                } else {
                    u128::MAX << (u32::from(width - prefix))
                }
                & if v4 { u128::from(u32::MAX) } else { u128::MAX };
            let net_ip = if v4 {
                IpAddr::V4(Ipv4Addr::from(net as u32))
            } else {
                IpAddr::V6(Ipv6Addr::from(net))
            };
            let c = Cidr::parse(&format!("{net_ip}/{prefix}")).expect("a network");
            let model = (0..u32::from(prefix)).all(|i| {
                let bit = u32::from(width) - 1 - i;
                (bits(net_ip) >> bit) & 1 == (bits(b) >> bit) & 1
            });
            assert_eq!(c.contains(b), model, "{c} {b}");
            assert!(c.contains(net_ip));

            let len = rng.random_range(0..24usize);
            let text: String = (0..len)
                .map(|_| char::from(b"0123456789abcdef.:/ x"[rng.random_range(0..21usize)]))
                .collect();
            let _ = Cidr::parse(&text);
        }
    }
}

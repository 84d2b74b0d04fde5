//! How the edge names itself on the wire: the `sent-by` of its Via and the
//! host of its Contact. A listener bound to a wildcard (`0.0.0.0`, `::`) must
//! never put that address on the wire: a phone would send its in-dialog
//! requests nowhere. The name is, in order: the listener's `--sip-advertise`
//! (a load balancer's address or a DNS name, behind Kubernetes networking);
//! the address the request arrived on (IP_PKTINFO for UDP, the accepted
//! socket's local address for TCP); for a request this edge starts on its
//! own, the address the kernel routes toward the peer from.

use std::net::{IpAddr, SocketAddr};

/// One `--sip-advertise` value: a host (an IP address or a DNS name) and an
/// optional port (the listener's port when absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advertised {
    /// As written in a SIP URI: an IPv6 address in brackets.
    host: String,
    port: Option<u16>,
}

impl Advertised {
    /// Parse `HOST[:PORT]`; HOST is an IPv4 address, an IPv6 address in
    /// brackets (`[2001:db8::1]:5060`; bare without a port), or a DNS name.
    pub fn parse(text: &str) -> Result<Advertised, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("empty".into());
        }
        if let Some(rest) = text.strip_prefix('[') {
            let (addr, after) = rest
                .split_once(']')
                .ok_or("an IPv6 address in brackets lacks its ']'")?;
            let ip: std::net::Ipv6Addr = addr
                .parse()
                .map_err(|_| format!("{addr:?} is not an IPv6 address"))?;
            if ip.is_unspecified() {
                return Err(UNSPECIFIED.into());
            }
            let port = match after {
                "" => None,
                p => Some(parse_port(
                    p.strip_prefix(':').ok_or("expected :PORT after ']'")?,
                )?),
            };
            return Ok(Advertised {
                host: format!("[{ip}]"),
                port,
            });
        }
        if let Ok(ip) = text.parse::<std::net::Ipv6Addr>() {
            if ip.is_unspecified() {
                return Err(UNSPECIFIED.into());
            }
            return Ok(Advertised {
                host: format!("[{ip}]"),
                port: None,
            });
        }
        let (host, port) = match text.rsplit_once(':') {
            Some((h, p)) => (h, Some(parse_port(p)?)),
            None => (text, None),
        };
        if host.parse::<std::net::Ipv4Addr>().is_err() {
            check_dns_name(host)?;
        }
        if let Ok(ip) = host.parse::<IpAddr>() {
            if ip.is_unspecified() {
                return Err(UNSPECIFIED.into());
            }
        }
        Ok(Advertised {
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    fn sent_by(&self, listener_port: u16) -> String {
        format!("{}:{}", self.host, self.port.unwrap_or(listener_port))
    }
}

const UNSPECIFIED: &str = "a wildcard address cannot be reached; advertise a routable one";

impl std::fmt::Display for Advertised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.port {
            Some(p) => write!(f, "{}:{p}", self.host),
            None => f.write_str(&self.host),
        }
    }
}

fn parse_port(p: &str) -> Result<u16, String> {
    match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("{p:?} is not a port (1-65535)")),
        Ok(port) => Ok(port),
    }
}

/// RFC 1123 host name: dot-separated labels of letters, digits and `-`,
/// 1-63 characters each, not starting or ending with `-`; 253 in all.
fn check_dns_name(name: &str) -> Result<(), String> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > 253 {
        return Err(format!("{name:?} is not a host name"));
    }
    for label in name.split('.') {
        let ok = (1..=63).contains(&label.len())
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !ok {
            return Err(format!(
                "{name:?} is not an IP address or a host name (label {label:?})"
            ));
        }
    }
    // All-numeric names would be read as (bad) IPv4 addresses by peers.
    if name
        .split('.')
        .all(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!("{name:?} is not an IPv4 address"));
    }
    Ok(())
}

/// The listeners of one edge with what each advertises.
#[derive(Debug, Clone, Default)]
pub struct SelfNames {
    listeners: Vec<(SocketAddr, Option<Advertised>)>,
}

impl SelfNames {
    /// `advertised` is empty, or holds one entry per listener, in order.
    pub fn new(listeners: &[SocketAddr], advertised: &[Advertised]) -> SelfNames {
        SelfNames {
            listeners: listeners
                .iter()
                .enumerate()
                .map(|(i, l)| (*l, advertised.get(i).cloned()))
                .collect(),
        }
    }

    /// The listener that `local` (an address a flow has on this host) belongs
    /// to: the same address, or a wildcard listener on the same port.
    fn listener(&self, local: SocketAddr) -> Option<&(SocketAddr, Option<Advertised>)> {
        let local = canonical(local);
        self.listeners
            .iter()
            .find(|(l, _)| *l == local)
            .or_else(|| {
                self.listeners.iter().find(|(l, _)| {
                    l.ip().is_unspecified()
                        && l.port() == local.port()
                        && (l.is_ipv6() || local.is_ipv4())
                })
            })
    }

    /// `host:port` for the Via sent-by and the Contact of a message on a
    /// flow whose local address is `local`, toward `remote`.
    pub fn sent_by(&self, local: SocketAddr, remote: SocketAddr) -> String {
        let local = canonical(local);
        if let Some((l, Some(adv))) = self.listener(local) {
            return adv.sent_by(l.port());
        }
        if !local.ip().is_unspecified() {
            return local.to_string();
        }
        match route_source(remote) {
            Some(ip) => SocketAddr::new(ip, local.port()).to_string(),
            None => {
                tracing::warn!(%local, %remote, "no routable local address toward the peer; set --sip-advertise");
                local.to_string()
            }
        }
    }
}

/// An IPv4-mapped IPv6 address (a dual-stack socket's view of IPv4) as IPv4.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// The local address the kernel would send from toward `remote` (a
/// connected UDP socket sends nothing; it only asks the routing table).
fn route_source(remote: SocketAddr) -> Option<IpAddr> {
    let any: SocketAddr = if remote.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = std::net::UdpSocket::bind(any).ok()?;
    sock.connect(remote).ok()?;
    let ip = sock.local_addr().ok()?.ip().to_canonical();
    (!ip.is_unspecified()).then_some(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_operators_write() {
        for (text, want) in [
            ("sip.example.net", Ok(("sip.example.net", None))),
            ("SIP.Example.NET:5080", Ok(("sip.example.net", Some(5080)))),
            ("203.0.113.7", Ok(("203.0.113.7", None))),
            ("203.0.113.7:5060", Ok(("203.0.113.7", Some(5060)))),
            ("[2001:db8::1]:5060", Ok(("[2001:db8::1]", Some(5060)))),
            ("[2001:db8::1]", Ok(("[2001:db8::1]", None))),
            ("2001:db8::1", Ok(("[2001:db8::1]", None))),
            ("lb-1.sip.example.net.", Ok(("lb-1.sip.example.net.", None))),
            ("", Err(())),
            ("0.0.0.0:5060", Err(())),
            ("[::]:5060", Err(())),
            ("::", Err(())),
            ("sip.example.net:0", Err(())),
            ("sip.example.net:70000", Err(())),
            ("sip.example.net:", Err(())),
            ("-bad.example.net", Err(())),
            ("bad_name.example.net", Err(())),
            ("sip:alice@example.net", Err(())),
            ("256.1.1.1", Err(())),
            ("[2001:db8::1", Err(())),
            ("[2001:db8::1]5060", Err(())),
            ("a b", Err(())),
        ] {
            let got = Advertised::parse(text)
                .map(|a| (a.host.clone(), a.port))
                .map_err(|_| ());
            let want = want.map(|(h, p): (&str, Option<u16>)| (h.to_string(), p));
            assert_eq!(got, want, "{text:?}");
        }
    }

    #[test]
    fn names_a_flow_by_advertised_then_arrival_address() {
        let wild: SocketAddr = "0.0.0.0:5680".parse().unwrap();
        let fixed: SocketAddr = "127.0.0.1:5690".parse().unwrap();
        let remote: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let names = SelfNames::new(&[wild, fixed], &[]);
        // Arrival address on a wildcard listener: as is.
        assert_eq!(
            names.sent_by("10.1.2.3:5680".parse().unwrap(), remote),
            "10.1.2.3:5680"
        );
        assert_eq!(names.sent_by(fixed, remote), "127.0.0.1:5690");
        // Nothing better known than the wildcard: the route toward the peer.
        assert_eq!(names.sent_by(wild, remote), "127.0.0.1:5680");
        // Mapped IPv4 from a dual-stack socket.
        assert_eq!(
            names.sent_by("[::ffff:10.1.2.3]:5680".parse().unwrap(), remote),
            "10.1.2.3:5680"
        );
        let adv = [
            Advertised::parse("sip.example.net").unwrap(),
            Advertised::parse("198.51.100.9:5060").unwrap(),
        ];
        let names = SelfNames::new(&[wild, fixed], &adv);
        assert_eq!(
            names.sent_by("10.1.2.3:5680".parse().unwrap(), remote),
            "sip.example.net:5680"
        );
        assert_eq!(names.sent_by(wild, remote), "sip.example.net:5680");
        assert_eq!(names.sent_by(fixed, remote), "198.51.100.9:5060");
    }
}

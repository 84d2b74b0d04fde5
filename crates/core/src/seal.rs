//! Sealed flows: an edge signs the flows it builds from requests it
//! received, and sends a request from the bus only through a flow whose
//! seal it can check.
//!
//! Anything that can publish on `edge.<id>` or `edges.any` can ask an edge
//! to send a NOTIFY or MESSAGE through a [`Flow`]. Without a seal it could
//! name any host and port; with one, only a (transport, remote address) a
//! UA once reached an edge of this cluster from. The seal is
//! `HMAC-SHA256(key, transport ‖ remote address)[..16]`, keyed by
//! `SHA-256("presence flow seal\0" ‖ --nonce-secret)` (a key of its own, so
//! that no Digest nonce is ever a seal or the other way round). It covers
//! neither the edge id, the connection id nor the local address: another
//! edge takes over a gone edge's flows and must accept them, and the local
//! address is the edge's own. The remote address counts as its IP and port
//! only (the Redis records keep no IPv6 flow info or scope id).

use crate::digest::constant_time_eq;
use crate::model::{Flow, Transport};
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest as _, Sha256};
use std::net::{IpAddr, SocketAddr};

/// Bytes in a [`Seal`].
pub const SEAL_LEN: usize = 16;

/// Proof that an edge holding the cluster's secret built this flow from a
/// request it received. Its `Debug` does not show the bytes (it is a
/// capability for one destination).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Seal(pub [u8; SEAL_LEN]);

impl Seal {
    /// A seal read from the wire or a store: `None` unless exactly
    /// [`SEAL_LEN`] bytes.
    pub fn from_slice(b: &[u8]) -> Option<Seal> {
        <[u8; SEAL_LEN]>::try_from(b).ok().map(Seal)
    }

    pub fn as_bytes(&self) -> &[u8; SEAL_LEN] {
        &self.0
    }
}

impl std::fmt::Debug for Seal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Seal(..)")
    }
}

/// Makes and checks [`Seal`]s with the key derived from a cluster secret.
#[derive(Clone)]
pub struct FlowSealer {
    /// The HMAC keyed once; each seal starts from a copy of it (every
    /// NOTIFY an edge sends checks one).
    keyed: Hmac<Sha256>,
}

impl std::fmt::Debug for FlowSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FlowSealer(..)")
    }
}

impl FlowSealer {
    /// The sealer of every edge sharing `secret` (`--nonce-secret`).
    pub fn new(secret: &[u8]) -> FlowSealer {
        let mut h = Sha256::new();
        h.update(b"presence flow seal\0");
        h.update(secret);
        let key: [u8; 32] = h.finalize().into();
        FlowSealer {
            keyed: <Hmac<Sha256> as KeyInit>::new_from_slice(&key)
                .expect("HMAC takes a key of any length"),
        }
    }

    /// The seal of a flow over `transport` from `remote`.
    pub fn seal(&self, transport: Transport, remote: SocketAddr) -> Seal {
        let mut m = self.keyed.clone();
        let t = transport.as_str().as_bytes();
        m.update(&[t.len() as u8]);
        m.update(t);
        match remote.ip() {
            IpAddr::V4(ip) => {
                m.update(&[4]);
                m.update(&ip.octets());
            }
            IpAddr::V6(ip) => {
                m.update(&[6]);
                m.update(&ip.octets());
            }
        }
        m.update(&remote.port().to_be_bytes());
        let full = m.finalize().into_bytes();
        let mut out = [0u8; SEAL_LEN];
        out.copy_from_slice(&full[..SEAL_LEN]);
        Seal(out)
    }

    /// Whether `flow` carries the seal of its transport and remote address
    /// (in constant time); a flow without a seal never passes.
    pub fn verify(&self, flow: &Flow) -> bool {
        match &flow.seal {
            Some(seal) => constant_time_eq(
                self.seal(flow.transport, flow.remote).as_bytes(),
                seal.as_bytes(),
            ),
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(sealer: &FlowSealer, transport: Transport, remote: &str) -> Flow {
        let remote: SocketAddr = remote.parse().unwrap();
        Flow {
            transport,
            remote,
            local: "127.0.0.1:5060".parse().unwrap(),
            edge: "edge-a".into(),
            conn: 7,
            seal: Some(sealer.seal(transport, remote)),
        }
    }

    #[test]
    fn a_sealed_flow_verifies_on_any_edge_with_the_secret() {
        let sealer = FlowSealer::new(b"cluster secret");
        for (t, remote) in [
            (Transport::Udp, "192.0.2.1:5060"),
            (Transport::Tcp, "192.0.2.1:40000"),
            (Transport::Tls, "[2001:db8::1]:5061"),
            (Transport::Ws, "198.51.100.7:443"),
            (Transport::Wss, "[2001:db8::2]:8443"),
        ] {
            let f = flow(&sealer, t, remote);
            assert!(sealer.verify(&f), "{t:?} {remote}");
            // Another edge (same secret) takes the flow over: edge id,
            // connection and local address are not sealed.
            let other = FlowSealer::new(b"cluster secret");
            let moved = Flow {
                edge: "edge-b".into(),
                conn: 99,
                local: "10.0.0.2:5060".parse().unwrap(),
                ..f
            };
            assert!(other.verify(&moved), "{t:?} {remote} moved");
        }
    }

    #[test]
    fn another_destination_or_transport_does_not_verify() {
        let sealer = FlowSealer::new(b"cluster secret");
        let f = flow(&sealer, Transport::Udp, "192.0.2.1:5060");
        for (what, other) in [
            (
                "port",
                Flow {
                    remote: "192.0.2.1:5061".parse().unwrap(),
                    ..f.clone()
                },
            ),
            (
                "address",
                Flow {
                    remote: "192.0.2.2:5060".parse().unwrap(),
                    ..f.clone()
                },
            ),
            (
                "IPv4-mapped IPv6",
                Flow {
                    remote: "[::ffff:192.0.2.1]:5060".parse().unwrap(),
                    ..f.clone()
                },
            ),
            (
                "transport",
                Flow {
                    transport: Transport::Tcp,
                    ..f.clone()
                },
            ),
        ] {
            assert!(!sealer.verify(&other), "{what} changed, seal kept");
        }
    }

    #[test]
    fn another_secret_or_no_seal_does_not_verify() {
        let sealer = FlowSealer::new(b"cluster secret");
        let f = flow(&sealer, Transport::Udp, "192.0.2.1:5060");
        assert!(!FlowSealer::new(b"another secret").verify(&f));
        assert!(!FlowSealer::new(b"").verify(&f));
        assert!(!sealer.verify(&Flow {
            seal: None,
            ..f.clone()
        }));
        let mut flipped = f.seal.unwrap();
        flipped.0[15] ^= 1;
        assert!(!sealer.verify(&Flow {
            seal: Some(flipped),
            ..f
        }));
    }

    #[test]
    fn a_seal_hides_its_bytes_and_reads_back_from_exactly_16() {
        let sealer = FlowSealer::new(b"s");
        let s = sealer.seal(Transport::Udp, "192.0.2.1:5060".parse().unwrap());
        assert_eq!(format!("{s:?}"), "Seal(..)");
        assert_eq!(Seal::from_slice(s.as_bytes()), Some(s));
        assert_eq!(Seal::from_slice(&[0; 15]), None);
        assert_eq!(Seal::from_slice(&[0; 17]), None);
    }
}

//! Compact binary encoding of the records kept in Redis: a format byte, then
//! fields in a fixed order, integers as LEB128 varints, strings and bodies as
//! varint length + bytes. Fields that the key already names (the AoR and
//! event of a publication, the AoR of a binding list) are not repeated.
//! Decoding never panics: bad input is `None`.
//!
//! Two formats: 1, and 2 for the records that hold a sealed flow (bindings,
//! subscriptions), whose flows end with their seal (0, or 1 and 16 bytes).
//! Records of format 1 (written before seals) still decode, their flows
//! without a seal. A record whose flows have no seal is still written as
//! format 1, which the previous version reads: a cluster can upgrade its
//! compositors and notifiers while edges of the previous version (which
//! seal nothing) still run (docs/operations.md, upgrade notes).

use bytes::Bytes;
use presence_core::commands::NotifyJob;
use presence_core::seal::SEAL_LEN;
use presence_core::{
    Binding, EndReason, Flow, Publication, Rates, Seal, Subscription, Transport, View,
};
use presence_store::ExpiryKey;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

const FORMAT: u8 = 1;

/// Like [`FORMAT`], flows with their seal.
const FORMAT_SEALED: u8 = 2;

#[derive(Default)]
struct W(Vec<u8>);

impl W {
    fn new() -> W {
        W(vec![FORMAT])
    }
    /// A record holding flows: format 2 if one of them is sealed.
    fn with_flows<'a>(mut flows: impl Iterator<Item = &'a Flow>) -> W {
        if flows.any(|f| f.seal.is_some()) {
            W(vec![FORMAT_SEALED])
        } else {
            W::new()
        }
    }
    fn u64(&mut self, mut v: u64) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.0.push(b);
                return;
            }
            self.0.push(b | 0x80);
        }
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        self.0.extend_from_slice(b);
    }
    fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }
    fn opt_str(&mut self, s: Option<&str>) {
        match s {
            Some(s) => {
                self.0.push(1);
                self.str(s);
            }
            None => self.0.push(0),
        }
    }
    fn strs(&mut self, v: &[String]) {
        self.u64(v.len() as u64);
        for s in v {
            self.str(s);
        }
    }
    fn addr(&mut self, a: &SocketAddr) {
        match a.ip() {
            IpAddr::V4(ip) => {
                self.0.push(4);
                self.0.extend_from_slice(&ip.octets());
            }
            IpAddr::V6(ip) => {
                self.0.push(6);
                self.0.extend_from_slice(&ip.octets());
            }
        }
        self.0.extend_from_slice(&a.port().to_be_bytes());
    }
    fn flow(&mut self, f: &Flow) {
        self.0.push(match f.transport {
            Transport::Udp => 0,
            Transport::Tcp => 1,
            Transport::Tls => 2,
            Transport::Ws => 3,
            Transport::Wss => 4,
        });
        self.addr(&f.remote);
        self.addr(&f.local);
        self.str(&f.edge);
        self.u64(f.conn);
        if self.0[0] != FORMAT_SEALED {
            debug_assert!(f.seal.is_none(), "a sealed flow in a record of format 1");
            return;
        }
        match &f.seal {
            Some(seal) => {
                self.0.push(1);
                self.0.extend_from_slice(seal.as_bytes());
            }
            None => self.0.push(0),
        }
    }
}

struct R<'a> {
    b: &'a [u8],
    /// Format 2: flows end with their seal.
    sealed: bool,
}

impl<'a> R<'a> {
    fn new(b: &'a [u8]) -> Option<R<'a>> {
        match b.split_first() {
            Some((&FORMAT, rest)) => Some(R {
                b: rest,
                sealed: false,
            }),
            Some((&FORMAT_SEALED, rest)) => Some(R {
                b: rest,
                sealed: true,
            }),
            _ => None,
        }
    }
    fn u8(&mut self) -> Option<u8> {
        let (b, rest) = self.b.split_first()?;
        self.b = rest;
        Some(*b)
    }
    fn u64(&mut self) -> Option<u64> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= ((b & 0x7f) as u64).checked_shl(shift)?;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    fn u32(&mut self) -> Option<u32> {
        u32::try_from(self.u64()?).ok()
    }
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.b.len() < n {
            return None;
        }
        let (a, rest) = self.b.split_at(n);
        self.b = rest;
        Some(a)
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.u64()?).ok()?;
        self.take(n)
    }
    fn str(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
    fn opt_str(&mut self) -> Option<Option<String>> {
        match self.u8()? {
            0 => Some(None),
            1 => Some(Some(self.str()?)),
            _ => None,
        }
    }
    fn strs(&mut self) -> Option<Vec<String>> {
        let n = self.u64()?;
        // Each string takes at least one byte: bound the allocation.
        if n > self.b.len() as u64 {
            return None;
        }
        (0..n).map(|_| self.str()).collect()
    }
    fn addr(&mut self) -> Option<SocketAddr> {
        let ip = match self.u8()? {
            4 => {
                let o: [u8; 4] = self.take(4)?.try_into().ok()?;
                IpAddr::V4(Ipv4Addr::from(o))
            }
            6 => {
                let o: [u8; 16] = self.take(16)?.try_into().ok()?;
                IpAddr::V6(Ipv6Addr::from(o))
            }
            _ => return None,
        };
        let p: [u8; 2] = self.take(2)?.try_into().ok()?;
        Some(SocketAddr::new(ip, u16::from_be_bytes(p)))
    }
    fn flow(&mut self) -> Option<Flow> {
        let transport = match self.u8()? {
            0 => Transport::Udp,
            1 => Transport::Tcp,
            2 => Transport::Tls,
            3 => Transport::Ws,
            4 => Transport::Wss,
            _ => return None,
        };
        Some(Flow {
            transport,
            remote: self.addr()?,
            local: self.addr()?,
            edge: self.str()?,
            conn: self.u64()?,
            seal: match self.sealed {
                false => None,
                true => match self.u8()? {
                    0 => None,
                    1 => Some(Seal::from_slice(self.take(SEAL_LEN)?)?),
                    _ => return None,
                },
            },
        })
    }
    fn end(self) -> Option<()> {
        self.b.is_empty().then_some(())
    }
}

/// A publication without its AoR and event (the key names them).
pub fn encode_publication(p: &Publication) -> Vec<u8> {
    let mut w = W::new();
    w.str(&p.etag);
    w.u64(p.expires_at_ms);
    w.str(&p.content_type);
    w.bytes(&p.body);
    w.u64(p.modified_ms);
    w.u64(p.seq);
    w.0
}

pub fn decode_publication(aor: &str, event: &str, b: &[u8]) -> Option<Publication> {
    let mut r = R::new(b)?;
    let p = Publication {
        etag: r.str()?,
        aor: aor.to_string(),
        event: event.to_string(),
        expires_at_ms: r.u64()?,
        content_type: r.str()?,
        body: Bytes::copy_from_slice(r.bytes()?),
        modified_ms: r.u64()?,
        seq: r.u64()?,
    };
    r.end()?;
    Some(p)
}

/// An AoR's binding list without the AoR (the key names it).
pub fn encode_bindings(list: &[Binding]) -> Vec<u8> {
    let mut w = W::with_flows(list.iter().map(|b| &b.flow));
    w.u64(list.len() as u64);
    for b in list {
        w.str(&b.uri);
        w.str(&b.params);
        w.u64(b.expires_at_ms);
        w.str(&b.call_id);
        w.u64(b.cseq as u64);
        w.flow(&b.flow);
        match &b.methods {
            Some(m) => {
                w.0.push(1);
                w.strs(m);
            }
            None => w.0.push(0),
        }
        w.opt_str(b.q.as_deref());
    }
    w.0
}

pub fn decode_bindings(aor: &str, b: &[u8]) -> Option<Vec<Binding>> {
    let mut r = R::new(b)?;
    let n = r.u64()?;
    if n > b.len() as u64 {
        return None;
    }
    let mut out = Vec::with_capacity(n as usize);
    for _ in 0..n {
        out.push(Binding {
            aor: aor.to_string(),
            uri: r.str()?,
            params: r.str()?,
            expires_at_ms: r.u64()?,
            call_id: r.str()?,
            cseq: r.u32()?,
            flow: r.flow()?,
            methods: match r.u8()? {
                0 => None,
                1 => Some(r.strs()?),
                _ => return None,
            },
            q: r.opt_str()?,
        });
    }
    r.end()?;
    Some(out)
}

/// A subscription without its AoR and event: the stored value starts with
/// the watcher-set key suffix (`<event>:<aor>`), which names them, so the
/// commit script can find the watcher set of a subscription it deletes.
pub fn encode_subscription(s: &Subscription) -> Vec<u8> {
    let mut w = W::with_flows(std::iter::once(&s.flow));
    w.str(&s.id);
    w.opt_str(s.event_id.as_deref());
    w.str(&s.watcher);
    w.str(&s.call_id);
    w.str(&s.remote_tag);
    w.str(&s.local_uri);
    w.str(&s.remote_uri);
    w.str(&s.remote_target);
    w.strs(&s.route_set);
    w.flow(&s.flow);
    w.u64(s.remote_cseq as u64);
    w.u64(s.expires_at_ms);
    w.str(&s.content_type);
    w.0.push(match s.view {
        View::Full => 0,
        View::Neutral => 1,
        View::Pending => 2,
    });
    // Rate control (RFC 6446) last: records written before it have none.
    if s.rates.any() {
        w.u64(s.rates.min as u64);
        w.u64(s.rates.max as u64);
        w.u64(s.rates.adaptive_min as u64);
    }
    w.0
}

pub fn decode_subscription(aor: &str, event: &str, b: &[u8]) -> Option<Subscription> {
    let mut r = R::new(b)?;
    let s = Subscription {
        id: r.str()?,
        aor: aor.to_string(),
        event: event.to_string(),
        event_id: r.opt_str()?,
        watcher: r.str()?,
        call_id: r.str()?,
        remote_tag: r.str()?,
        local_uri: r.str()?,
        remote_uri: r.str()?,
        remote_target: r.str()?,
        route_set: r.strs()?,
        flow: r.flow()?,
        remote_cseq: r.u32()?,
        expires_at_ms: r.u64()?,
        content_type: r.str()?,
        view: match r.u8()? {
            0 => View::Full,
            1 => View::Neutral,
            2 => View::Pending,
            _ => return None,
        },
        rates: Default::default(),
    };
    let mut s = s;
    if !r.b.is_empty() {
        s.rates = Rates {
            min: r.u32()?,
            max: r.u32()?,
            adaptive_min: r.u32()?,
        };
    }
    r.end()?;
    Some(s)
}

/// A member of the expiry index ZSET.
pub fn encode_expiry_key(k: &ExpiryKey) -> Vec<u8> {
    let mut w = W::new();
    match k {
        ExpiryKey::Publication { aor, event, etag } => {
            w.0.push(b'p');
            w.str(aor);
            w.str(event);
            w.str(etag);
        }
        ExpiryKey::Subscription { id } => {
            w.0.push(b's');
            w.str(id);
        }
        ExpiryKey::Bindings { aor } => {
            w.0.push(b'b');
            w.str(aor);
        }
    }
    w.0
}

pub fn decode_expiry_key(b: &[u8]) -> Option<ExpiryKey> {
    let mut r = R::new(b)?;
    let k = match r.u8()? {
        b'p' => ExpiryKey::Publication {
            aor: r.str()?,
            event: r.str()?,
            etag: r.str()?,
        },
        b's' => ExpiryKey::Subscription { id: r.str()? },
        b'b' => ExpiryKey::Bindings { aor: r.str()? },
        _ => return None,
    };
    r.end()?;
    Some(k)
}

/// Decoding table of the reason codes written by [`encode_job`].
const END_REASONS: [EndReason; 6] = [
    EndReason::Unsubscribed,
    EndReason::Timeout,
    EndReason::Deactivated,
    EndReason::Rejected,
    EndReason::Noresource,
    EndReason::Gone,
];

/// A notify job in a shard's outbox.
pub fn encode_job(j: &NotifyJob) -> Vec<u8> {
    let mut w = W::new();
    match j {
        NotifyJob::Changed {
            aor,
            event,
            version,
            at_ms,
        } => {
            w.0.push(b'c');
            w.str(aor);
            w.str(event);
            w.u64(*version);
            w.u64(*at_ms);
        }
        NotifyJob::ChangedFor {
            aor,
            event,
            version,
            at_ms,
            ids,
        } => {
            w.0.push(b'f');
            w.str(aor);
            w.str(event);
            w.u64(*version);
            w.u64(*at_ms);
            w.strs(ids);
        }
        NotifyJob::Refresh { id } => {
            w.0.push(b'r');
            w.str(id);
        }
        NotifyJob::Terminated { sub, reason } => {
            w.0.push(b't');
            // Exhaustive, so a new reason cannot be stored as another.
            let code: u64 = match reason {
                EndReason::Unsubscribed => 0,
                EndReason::Timeout => 1,
                EndReason::Deactivated => 2,
                EndReason::Rejected => 3,
                EndReason::Noresource => 4,
                EndReason::Gone => 5,
            };
            w.u64(code);
            w.str(&sub.aor);
            w.str(&sub.event);
            w.bytes(&encode_subscription(sub));
        }
        NotifyJob::ListMember { list } => {
            w.0.push(b'l');
            w.str(list);
        }
    }
    w.0
}

pub fn decode_job(b: &[u8]) -> Option<NotifyJob> {
    let mut r = R::new(b)?;
    let j = match r.u8()? {
        b'c' => NotifyJob::Changed {
            aor: r.str()?,
            event: r.str()?,
            version: r.u64()?,
            at_ms: r.u64()?,
        },
        b'f' => NotifyJob::ChangedFor {
            aor: r.str()?,
            event: r.str()?,
            version: r.u64()?,
            at_ms: r.u64()?,
            ids: r.strs()?,
        },
        b'r' => NotifyJob::Refresh { id: r.str()? },
        b'l' => NotifyJob::ListMember { list: r.str()? },
        b't' => {
            let reason = *END_REASONS.get(usize::try_from(r.u64()?).ok()?)?;
            let (aor, event) = (r.str()?, r.str()?);
            let sub = decode_subscription(&aor, &event, r.bytes()?)?;
            NotifyJob::Terminated {
                sub: Box::new(sub),
                reason,
            }
        }
        _ => return None,
    };
    r.end()?;
    Some(j)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv6 TCP flow with a seal, or an IPv4 UDP one without.
    fn flow(v6: bool) -> Flow {
        Flow {
            transport: if v6 { Transport::Tcp } else { Transport::Udp },
            remote: if v6 {
                "[2001:db8::1]:5070".parse().unwrap()
            } else {
                "192.0.2.1:5060".parse().unwrap()
            },
            local: "127.0.0.1:5060".parse().unwrap(),
            edge: "edge-1".into(),
            conn: 300,
            seal: v6.then_some(Seal(*b"0123456789abcdef")),
        }
    }

    #[test]
    fn records_round_trip() {
        let p = Publication {
            etag: "e1".into(),
            aor: "sip:a@x".into(),
            event: "presence".into(),
            expires_at_ms: 1_700_000_000_000,
            content_type: "application/pidf+xml".into(),
            body: Bytes::from_static(b"<presence/>\x00\xff"),
            modified_ms: 5,
            seq: u64::MAX,
        };
        assert_eq!(
            decode_publication("sip:a@x", "presence", &encode_publication(&p)),
            Some(p)
        );
        let b = |v6, methods: Option<Vec<String>>, q: Option<String>| Binding {
            aor: "sip:a@x".into(),
            uri: "sip:a@192.0.2.1:5060;transport=tcp".into(),
            params: ";+sip.instance=\"<urn:uuid:1>\"".into(),
            expires_at_ms: 9,
            call_id: "c".into(),
            cseq: u32::MAX,
            flow: flow(v6),
            methods,
            q,
        };
        let list = vec![
            b(false, None, None),
            b(
                true,
                Some(vec!["INVITE".into(), "MESSAGE".into()]),
                Some("0.5".into()),
            ),
        ];
        assert_eq!(
            decode_bindings("sip:a@x", &encode_bindings(&list)),
            Some(list)
        );
        assert_eq!(
            decode_bindings("sip:a@x", &encode_bindings(&[])),
            Some(vec![])
        );
        let s = Subscription {
            id: "abc".into(),
            aor: "sip:a@x".into(),
            event: "dialog".into(),
            event_id: Some("7".into()),
            watcher: "sip:w@x".into(),
            call_id: "call".into(),
            remote_tag: "rt".into(),
            local_uri: "<sip:a@x>".into(),
            remote_uri: "<sip:w@x>".into(),
            remote_target: "sip:w@192.0.2.9".into(),
            route_set: vec!["<sip:p1;lr>".into(), "<sip:p2;lr>".into()],
            flow: flow(true),
            remote_cseq: 3,
            expires_at_ms: 77,
            content_type: "application/dialog-info+xml".into(),
            view: View::Neutral,
            rates: Default::default(),
        };
        assert_eq!(
            decode_subscription("sip:a@x", "dialog", &encode_subscription(&s)),
            Some(s.clone())
        );
        // With rate control (RFC 6446) too; a record without it (written
        // before it existed) reads as none.
        let limited = Subscription {
            rates: Rates {
                min: 50,
                max: 2_000,
                adaptive_min: 0,
            },
            view: View::Pending,
            ..s.clone()
        };
        let bytes = encode_subscription(&limited);
        assert!(bytes.len() > encode_subscription(&s).len());
        assert_eq!(
            decode_subscription("sip:a@x", "dialog", &bytes),
            Some(limited)
        );
        let mut jobs = vec![
            NotifyJob::Changed {
                aor: "sip:a@x".into(),
                event: "presence".into(),
                version: u64::MAX,
                at_ms: 1_700_000_000_000,
            },
            NotifyJob::ChangedFor {
                aor: "sip:a@x".into(),
                event: "dialog".into(),
                version: 3,
                at_ms: 4,
                ids: vec!["s1".into(), String::new(), "s3".into()],
            },
            NotifyJob::Refresh { id: "abc".into() },
            NotifyJob::ListMember {
                list: "sip:team@example.com".into(),
            },
        ];
        jobs.extend(END_REASONS.iter().map(|r| NotifyJob::Terminated {
            sub: Box::new(s.clone()),
            reason: *r,
        }));
        for j in jobs {
            assert_eq!(decode_job(&encode_job(&j)), Some(j));
        }
        for k in [
            ExpiryKey::Publication {
                aor: "sip:a@x".into(),
                event: "presence".into(),
                etag: "e".into(),
            },
            ExpiryKey::Subscription { id: "s".into() },
            ExpiryKey::Bindings {
                aor: "sip:a@x".into(),
            },
        ] {
            assert_eq!(decode_expiry_key(&encode_expiry_key(&k)), Some(k));
        }
    }

    /// Records written before flows had seals (format 1) decode, their
    /// flows without a seal, and are written again byte for byte as long as
    /// no flow has a seal; with one, they are format 2.
    #[test]
    fn records_written_before_seals_decode_without_one() {
        fn s(b: &mut Vec<u8>, text: &str) {
            b.push(text.len() as u8);
            b.extend_from_slice(text.as_bytes());
        }
        // A binding list of one binding, as format 1 wrote it.
        let mut old = vec![1, 1];
        s(&mut old, "sip:a@192.0.2.1");
        s(&mut old, "");
        old.push(9); // expires at
        s(&mut old, "c");
        old.push(2); // CSeq
        old.push(0); // UDP
        old.extend_from_slice(&[4, 192, 0, 2, 1, 0x13, 0xc4]);
        old.extend_from_slice(&[4, 127, 0, 0, 1, 0x13, 0xc4]);
        s(&mut old, "e1");
        old.push(0); // connection
        old.extend_from_slice(&[0, 0]); // no methods, no q
        let want_flow = Flow {
            transport: Transport::Udp,
            remote: "192.0.2.1:5060".parse().unwrap(),
            local: "127.0.0.1:5060".parse().unwrap(),
            edge: "e1".into(),
            conn: 0,
            seal: None,
        };
        let list = decode_bindings("sip:a@x", &old).expect("a format 1 binding list decodes");
        assert_eq!(
            list,
            vec![Binding {
                aor: "sip:a@x".into(),
                uri: "sip:a@192.0.2.1".into(),
                params: String::new(),
                expires_at_ms: 9,
                call_id: "c".into(),
                cseq: 2,
                flow: want_flow.clone(),
                methods: None,
                q: None,
            }]
        );
        // Without a seal, written as before (what the previous version reads).
        assert_eq!(encode_bindings(&list), old);
        let mut sealed = list.clone();
        sealed[0].flow.seal = Some(Seal([3; 16]));
        let again = encode_bindings(&sealed);
        assert_eq!(again[0], FORMAT_SEALED);
        assert_eq!(decode_bindings("sip:a@x", &again), Some(sealed));

        // A subscription, as format 1 wrote it (IPv6 TCP flow).
        let mut old = vec![1];
        s(&mut old, "sid");
        old.push(0); // no event id
        for text in ["w", "c", "t", "l", "r", "sip:w@192.0.2.9"] {
            s(&mut old, text);
        }
        old.push(0); // no route set
        old.push(1); // TCP
        old.push(6);
        old.extend_from_slice(
            &"2001:db8::1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        old.extend_from_slice(&5070u16.to_be_bytes());
        old.extend_from_slice(&[4, 127, 0, 0, 1, 0x13, 0xc4]);
        s(&mut old, "e1");
        old.extend_from_slice(&[0xac, 0x02]); // connection 300
        old.extend_from_slice(&[3, 77]); // remote CSeq, expires at
        s(&mut old, "ct");
        old.push(1); // neutral view
        let sub = decode_subscription("sip:a@x", "presence", &old)
            .expect("a format 1 subscription decodes");
        assert_eq!(
            sub.flow,
            Flow {
                transport: Transport::Tcp,
                remote: "[2001:db8::1]:5070".parse().unwrap(),
                conn: 300,
                ..want_flow
            }
        );
        assert_eq!(
            (sub.id.as_str(), sub.remote_cseq, sub.view),
            ("sid", 3, View::Neutral)
        );
        assert_eq!(encode_subscription(&sub), old);
        // Inside a notify job of the previous version too.
        let mut job = vec![1, b't', 5];
        s(&mut job, "sip:a@x");
        s(&mut job, "presence");
        job.push(old.len() as u8);
        job.extend_from_slice(&old);
        match decode_job(&job) {
            Some(NotifyJob::Terminated { sub: back, .. }) => assert_eq!(*back, sub),
            other => panic!("{other:?}"),
        }
        // Format 1 with a seal byte appended is one byte too many.
        let mut longer = old.clone();
        longer.push(0);
        assert_eq!(decode_subscription("sip:a@x", "presence", &longer), None);
    }

    /// A seal is 0 (none) or 1 and 16 bytes; anything else is refused.
    #[test]
    fn a_bad_seal_marker_is_refused() {
        let list = vec![Binding {
            aor: "a".into(),
            uri: "u".into(),
            params: String::new(),
            expires_at_ms: 1,
            call_id: "c".into(),
            cseq: 1,
            flow: flow(true),
            methods: None,
            q: None,
        }];
        let good = encode_bindings(&list);
        // The seal marker sits 17 bytes before the last two (methods, q).
        let at = good.len() - 2 - 17;
        assert_eq!(good[at], 1);
        let mut bad = good.clone();
        bad[at] = 2;
        assert_eq!(decode_bindings("a", &bad), None);
        let mut cut = good[..at + 1 + 15].to_vec();
        cut.extend_from_slice(&[0, 0]);
        assert_eq!(decode_bindings("a", &cut), None);
    }

    #[test]
    fn bad_input_is_none_not_a_panic() {
        let p = encode_subscription(&Subscription {
            id: "abc".into(),
            aor: String::new(),
            event: String::new(),
            event_id: None,
            watcher: "w".into(),
            call_id: "c".into(),
            remote_tag: "t".into(),
            local_uri: "l".into(),
            remote_uri: "r".into(),
            remote_target: "rt".into(),
            route_set: vec![],
            flow: flow(false),
            remote_cseq: 1,
            expires_at_ms: 1,
            content_type: "ct".into(),
            view: View::Full,
            rates: Default::default(),
        });
        // Every truncation and a trailing byte are refused.
        for n in 0..p.len() {
            assert_eq!(decode_subscription("a", "e", &p[..n]), None, "{n}");
        }
        let mut long = p.clone();
        long.push(0);
        assert_eq!(decode_subscription("a", "e", &long), None);
        assert_eq!(decode_expiry_key(b""), None);
        let job = encode_job(&NotifyJob::Terminated {
            sub: Box::new(decode_subscription("a", "e", &p).expect("valid")),
            reason: EndReason::Gone,
        });
        for n in 0..job.len() {
            assert_eq!(decode_job(&job[..n]), None, "{n}");
        }
        assert_eq!(decode_job(&[FORMAT, b't', 6]), None);
        assert_eq!(decode_expiry_key(&[FORMAT, b'x']), None);
        assert_eq!(
            decode_bindings("a", &[FORMAT, 0xff, 0xff, 0xff, 0xff, 0x0f]),
            None
        );
        // A varint longer than 64 bits.
        assert_eq!(
            decode_bindings(
                "a",
                &[FORMAT, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]
            ),
            None
        );
    }
}

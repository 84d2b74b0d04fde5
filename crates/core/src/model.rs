//! The records the compositor keeps and the notifier reads.

use bytes::Bytes;
use std::net::SocketAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    /// SIP over TLS (RFC 3261 §26): a stream, like TCP.
    Tls,
    /// SIP over WebSocket (RFC 7118): one SIP message per WebSocket
    /// message, over a connection the client opened.
    Ws,
    /// SIP over secure WebSocket (RFC 7118, WebSocket over TLS).
    Wss,
}

impl Transport {
    pub fn as_str(&self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
            Transport::Ws => "WS",
            Transport::Wss => "WSS",
        }
    }

    /// A connection-oriented transport (messages framed by
    /// Content-Length, answers over the same connection).
    pub fn is_stream(&self) -> bool {
        !matches!(self, Transport::Udp)
    }
}

/// Where a UA can be reached: the transport and source address it used, and
/// which edge (and TCP connection) holds the flow (RFC 5626 style).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    pub transport: Transport,
    pub remote: SocketAddr,
    pub local: SocketAddr,
    pub edge: String,
    /// Connection id on that edge (0 for UDP).
    pub conn: u64,
    /// The edge's seal over transport and remote address (see
    /// [`crate::seal`]): edges send bus requests only through sealed flows.
    /// `None` in records written before seals existed.
    pub seal: Option<crate::seal::Seal>,
}

/// One soft-state publication (RFC 3903).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    pub etag: String,
    pub aor: String,
    pub event: String,
    pub expires_at_ms: u64,
    pub content_type: String,
    pub body: Bytes,
    /// When its body last changed; newest wins in composition.
    pub modified_ms: u64,
    /// Tie-breaker for equal `modified_ms`, increasing per change.
    pub seq: u64,
}

/// One registered contact of an AoR (RFC 3261 §10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub aor: String,
    /// The contact URI as the UA wrote it.
    pub uri: String,
    /// Contact header parameters other than `expires` (e.g. `methods`, `q`,
    /// `+sip.instance`), as `;name=value` text, kept for the 200 listing.
    pub params: String,
    pub expires_at_ms: u64,
    pub call_id: String,
    pub cseq: u32,
    pub flow: Flow,
    /// `methods` parameter, upper-cased, if present.
    pub methods: Option<Vec<String>>,
    pub q: Option<String>,
}

impl Binding {
    pub fn accepts(&self, method: &str) -> bool {
        match &self.methods {
            Some(list) => list.iter().any(|m| m.eq_ignore_ascii_case(method)),
            None => true,
        }
    }
}

/// What a watcher is allowed to see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// The composed document.
    Full,
    /// Polite blocking: a neutral closed document, whatever the state.
    Neutral,
    /// Held until the presentity decides (a `confirm` rule): the watcher's
    /// NOTIFYs say `Subscription-State: pending` and carry no state.
    Pending,
}

/// RFC 6446 rate control of one subscription, as granted: rates in
/// notifications per 1000 seconds (0: not in force). Asked for by the
/// SUBSCRIBE's Event header (`max-rate`, `min-rate`, `adaptive-min-rate`,
/// notifications per second), adjusted by [`Rates::grant`], echoed in
/// every NOTIFY's Subscription-State ([`Rates::params`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rates {
    /// `min-rate`: a NOTIFY at least this often, changed state or not.
    pub min: u32,
    /// `max-rate`: state-change NOTIFYs at most this often.
    pub max: u32,
    /// `adaptive-min-rate` (RFC 6446 §7).
    pub adaptive_min: u32,
}

/// The most often a NOTIFY is sent without a change: once a second.
pub const MAX_HEARTBEAT_MILLIRATE: u32 = 1_000;

impl Rates {
    /// The rate parameters of an Event header; `Err` names a malformed one
    /// (RFC 6446 §9.2: `1*2DIGIT ["." 1*10DIGIT]`, not zero).
    pub fn parse<'a>(
        params: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
    ) -> Result<Rates, &'static str> {
        let mut r = Rates::default();
        for (name, value) in params {
            let slot = match name.to_ascii_lowercase().as_str() {
                "max-rate" => &mut r.max,
                "min-rate" => &mut r.min,
                "adaptive-min-rate" => &mut r.adaptive_min,
                _ => continue,
            };
            *slot = value.and_then(millirate).ok_or(name_of(name))?;
        }
        Ok(r)
    }

    /// Whether any rate control is asked for.
    pub fn any(&self) -> bool {
        self.min > 0 || self.max > 0 || self.adaptive_min > 0
    }

    /// The rates granted for a subscription of `expires_s` seconds (RFC
    /// 6446 §5.3, §8): a max-rate that would allow no NOTIFY before the
    /// subscription ends is raised to 1/expires; min-rate and
    /// adaptive-min-rate are lowered to max-rate; min-rate is not
    /// considered when adaptive-min-rate is lower; a NOTIFY without a
    /// change goes at most once a second (local policy); every rate is at
    /// least one per 1000 s.
    pub fn grant(self, expires_s: u32) -> Rates {
        let mut r = self;
        if r.max > 0 && expires_s > 0 {
            // 1/expires notifications per second, in per-1000 s, rounded up.
            r.max = r.max.max(1_000u32.div_ceil(expires_s));
        }
        r.min = r.min.min(MAX_HEARTBEAT_MILLIRATE);
        r.adaptive_min = r.adaptive_min.min(MAX_HEARTBEAT_MILLIRATE);
        if r.max > 0 {
            r.min = r.min.min(r.max);
            r.adaptive_min = r.adaptive_min.min(r.max);
        }
        if r.adaptive_min > 0 && r.min >= r.adaptive_min {
            r.min = 0;
        }
        r
    }

    /// The shortest time between two state-change NOTIFYs (`max-rate`).
    pub fn min_interval(&self) -> Option<std::time::Duration> {
        (self.max > 0).then(|| std::time::Duration::from_micros(1_000_000_000 / self.max as u64))
    }

    /// The longest time without a NOTIFY (`min-rate`).
    pub fn max_interval(&self) -> Option<std::time::Duration> {
        (self.min > 0).then(|| std::time::Duration::from_micros(1_000_000_000 / self.min as u64))
    }

    /// Whether NOTIFYs are owed without changes (`min-rate` or
    /// `adaptive-min-rate`).
    pub fn has_heartbeat(&self) -> bool {
        self.min > 0 || self.adaptive_min > 0
    }

    /// The window over which `adaptive-min-rate` counts NOTIFYs (RFC 6446
    /// §7.4: longer than 1/adaptive-min-rate, several times is
    /// recommended): ten periods, between 10 s and an hour.
    pub fn adaptive_period(&self) -> std::time::Duration {
        let ms = 10_000_000u64 / self.adaptive_min.max(1) as u64;
        std::time::Duration::from_millis(ms.clamp(10_000, 3_600_000))
    }

    /// How long after the last NOTIFY the next one is owed if nothing
    /// changes: `1/min-rate`, and with `adaptive-min-rate` RFC 6446 §7.4's
    /// `count / (adaptive-min-rate² × period)`, at least `1/max-rate`,
    /// where `count` is the NOTIFYs sent in the last `period`. `None`: no
    /// NOTIFY is owed without a change.
    pub fn heartbeat_after(&self, count: f64) -> Option<std::time::Duration> {
        let mut after = self.max_interval();
        if self.adaptive_min > 0 {
            let rate = self.adaptive_min as f64 / 1000.0;
            let period = self.adaptive_period().as_secs_f64();
            let mut secs = count.max(1.0) / (rate * rate * period);
            if let Some(floor) = self.min_interval() {
                secs = secs.max(floor.as_secs_f64());
            }
            let adaptive = std::time::Duration::from_secs_f64(secs.min(86_400.0));
            after = Some(after.map_or(adaptive, |a| a.min(adaptive)));
        }
        after
    }

    /// `;max-rate=…;min-rate=…;adaptive-min-rate=…` for Subscription-State
    /// (each control in force, in notifications per second).
    pub fn params(&self) -> String {
        let mut out = String::new();
        for (name, v) in [
            ("max-rate", self.max),
            ("min-rate", self.min),
            ("adaptive-min-rate", self.adaptive_min),
        ] {
            if v > 0 {
                let text = format!("{}.{:03}", v / 1000, v % 1000);
                let text = text.trim_end_matches('0').trim_end_matches('.');
                out += &format!(";{name}={text}");
            }
        }
        out
    }
}

fn name_of(name: &str) -> &'static str {
    match name.to_ascii_lowercase().as_str() {
        "max-rate" => "Malformed max-rate",
        "min-rate" => "Malformed min-rate",
        _ => "Malformed adaptive-min-rate",
    }
}

/// A rate (`1*2DIGIT ["." 1*10DIGIT]`, above zero) in notifications per
/// 1000 s, rounded up to at least 1.
fn millirate(v: &str) -> Option<u32> {
    let (int, frac) = match v.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (v, None),
    };
    let digits =
        |s: &str, max: usize| (1..=max).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(int, 2) || frac.is_some_and(|f| !digits(f, 10)) {
        return None;
    }
    let frac = frac.unwrap_or("");
    let mut milli: u64 = int.parse::<u64>().ok()? * 1000;
    let first3 = format!("{:0<3}", &frac[..frac.len().min(3)]);
    milli += first3.parse::<u64>().ok()?;
    let rest_nonzero = frac.len() > 3 && frac[3..].bytes().any(|b| b != b'0');
    if milli == 0 && !rest_nonzero {
        return None; // zero is not a rate
    }
    Some((milli as u32).max(1))
}

/// One subscription dialog (RFC 6665), seen from the notifier side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// Our To-tag in the dialog; unique, so also the record's key.
    pub id: String,
    pub aor: String,
    pub event: String,
    pub event_id: Option<String>,
    /// Canonical AoR of the watcher (authenticated identity if Digest is on).
    pub watcher: String,
    pub call_id: String,
    pub remote_tag: String,
    /// Our URI (the SUBSCRIBE's To, without tag), as a header value.
    pub local_uri: String,
    /// The watcher's URI (the SUBSCRIBE's From, without tag), as a header value.
    pub remote_uri: String,
    /// The watcher's Contact URI: the Request-URI of our NOTIFYs.
    pub remote_target: String,
    /// Record-Route of the SUBSCRIBE, in order, for the NOTIFY's Route.
    pub route_set: Vec<String>,
    pub flow: Flow,
    pub remote_cseq: u32,
    pub expires_at_ms: u64,
    /// Content type the NOTIFY bodies use.
    pub content_type: String,
    pub view: View,
    /// RFC 6446 rate control, as granted.
    pub rates: Rates,
}

/// The composed state of one AoR for one event package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    pub aor: String,
    pub event: String,
    pub version: u64,
    pub content_type: String,
    pub body: Bytes,
}

/// Why a subscription ended (RFC 6665 §4.1.3 reasons).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// The watcher sent Expires: 0 (we answer `timeout`, like RFC 3265 UAs expect).
    Unsubscribed,
    Timeout,
    Deactivated,
    Rejected,
    Noresource,
    /// A 481 or a final transaction timeout from the watcher: no NOTIFY is owed.
    Gone,
}

impl EndReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            EndReason::Unsubscribed | EndReason::Timeout => "timeout",
            EndReason::Deactivated => "deactivated",
            EndReason::Rejected => "rejected",
            EndReason::Noresource => "noresource",
            EndReason::Gone => "deactivated",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(params: &[(&str, &str)]) -> Result<Rates, &'static str> {
        Rates::parse(params.iter().map(|(n, v)| (*n, Some(*v))))
    }

    #[test]
    fn rates_are_read_by_the_rfc_6446_grammar() {
        let r = parse(&[("max-rate", "2"), ("min-rate", "0.05"), ("id", "x")]).unwrap();
        assert_eq!((r.max, r.min, r.adaptive_min), (2_000, 50, 0));
        assert_eq!(
            parse(&[("Adaptive-Min-Rate", "99.9999999999")])
                .unwrap()
                .adaptive_min,
            99_999
        );
        // Tiny rates round up to one per 1000 s.
        assert_eq!(parse(&[("max-rate", "0.0000000001")]).unwrap().max, 1);
        for bad in [
            "0",
            "0.0",
            "100",
            ".5",
            "1.",
            "1.12345678901",
            "-1",
            "x",
            "",
        ] {
            assert!(parse(&[("max-rate", bad)]).is_err(), "{bad:?}");
        }
        assert_eq!(
            Rates::parse([("min-rate", None)]),
            Err("Malformed min-rate")
        );
        assert!(!Rates::parse([("id", Some("7"))]).unwrap().any());
    }

    #[test]
    fn rates_are_adjusted_as_rfc_6446_says() {
        let r = |max, min, adaptive_min| Rates {
            max,
            min,
            adaptive_min,
        };
        // A max-rate allowing no NOTIFY before the end is raised to 1/expires.
        assert_eq!(r(1, 0, 0).grant(600).max, 2);
        assert_eq!(r(500, 0, 0).grant(600).max, 500);
        // min-rate at most max-rate, and at most one a second.
        assert_eq!(r(200, 5_000, 0).grant(3600), r(200, 200, 0));
        assert_eq!(r(0, 5_000, 0).grant(3600), r(0, 1_000, 0));
        // min-rate not considered above adaptive-min-rate.
        assert_eq!(r(0, 300, 100).grant(3600), r(0, 0, 100));
        assert_eq!(r(0, 50, 100).grant(3600), r(0, 50, 100));
        assert_eq!(r(0, 0, 0).grant(3600), Rates::default());
    }

    #[test]
    fn the_adaptive_minimum_rate_follows_rfc_6446() {
        let a = Rates {
            adaptive_min: 100, // 0.1 per second
            ..Rates::default()
        };
        assert_eq!(a.adaptive_period(), std::time::Duration::from_secs(100));
        // As many NOTIFYs as the rate asks for in the period: 1/rate.
        let t = a.heartbeat_after(10.0).unwrap().as_secs_f64();
        assert!((t - 10.0).abs() < 1e-6, "{t}");
        // Twice as many (changes were notified): twice as long.
        let t = a.heartbeat_after(20.0).unwrap().as_secs_f64();
        assert!((t - 20.0).abs() < 1e-6, "{t}");
        // Never sooner than 1/max-rate.
        let capped = Rates { max: 50, ..a };
        assert_eq!(
            capped.heartbeat_after(1.0),
            Some(std::time::Duration::from_secs(20))
        );
        // A min-rate below it still holds.
        let both = Rates { min: 20, ..a };
        assert_eq!(
            both.heartbeat_after(100.0),
            Some(std::time::Duration::from_secs(50))
        );
        assert_eq!(Rates::default().heartbeat_after(3.0), None);
        assert!(!Rates::default().has_heartbeat() && a.has_heartbeat());
    }

    #[test]
    fn rates_are_echoed_and_timed() {
        let r = Rates {
            max: 2_000,
            min: 50,
            adaptive_min: 0,
        };
        assert_eq!(r.params(), ";max-rate=2;min-rate=0.05");
        assert_eq!(
            r.min_interval(),
            Some(std::time::Duration::from_millis(500))
        );
        assert_eq!(r.max_interval(), Some(std::time::Duration::from_secs(20)));
        assert_eq!(Rates::default().params(), "");
        assert_eq!(Rates::default().min_interval(), None);
    }
}

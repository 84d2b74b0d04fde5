//! What the bench plays, sans I/O: the AoRs' names, the departments the
//! Watch streams follow, which AoRs change, which ones the SIP watchers
//! follow, and the note each published document carries.

use crate::rng::Rng;
use std::time::{Duration, Instant};

/// The word that starts every note of the bench (`apib RUN SEQ T_NS`).
pub const NOTE_TAG: &str = "apib";

/// Time since the bench started, in nanoseconds: what a note carries and
/// what a receiver subtracts it from (one process, one clock).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    t0: Instant,
}

impl Clock {
    pub fn start() -> Clock {
        Clock { t0: Instant::now() }
    }

    pub fn ns(&self) -> u64 {
        u64::try_from(self.t0.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The instant `ns` after the start.
    pub fn at(&self, ns: u64) -> Instant {
        self.t0 + Duration::from_nanos(ns)
    }
}

/// `sip:<prefix><i, 6 digits>@<domain>`.
pub fn aor(prefix: &str, domain: &str, i: u32) -> String {
    format!("sip:{prefix}{i:06}@{domain}")
}

/// The index `i` of an AoR named by [`aor`], whatever its domain.
pub fn aor_index(aor: &str, prefix: &str) -> Option<u32> {
    let user = aor.strip_prefix("sip:")?.split('@').next()?;
    let digits = user.strip_prefix(prefix)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// How a stream's AoRs are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Departments {
    /// Stream i follows AoRs i·D … i·D+D−1 (mod M): disjoint departments
    /// while N·D ≤ M, then each AoR in ⌈N·D/M⌉ streams.
    Contiguous,
    /// D distinct AoRs drawn uniformly (seeded) per stream.
    Random,
}

/// The sorted AoR indexes of each of `n` streams, `d` each out of `m`.
pub fn departments(m: u32, n: usize, d: usize, how: Departments, rng: &mut Rng) -> Vec<Vec<u32>> {
    let d = d.min(m as usize);
    (0..n)
        .map(|i| {
            let mut v: Vec<u32> = match how {
                Departments::Contiguous => {
                    let start = (i as u64 * d as u64) % u64::from(m);
                    (0..d as u64)
                        .map(|k| ((start + k) % u64::from(m)) as u32)
                        .collect()
                }
                Departments::Random => {
                    let mut set = std::collections::HashSet::with_capacity(d);
                    while set.len() < d {
                        set.insert(rng.below(u64::from(m)) as u32);
                    }
                    set.into_iter().collect()
                }
            };
            v.sort_unstable();
            v.dedup();
            v
        })
        .collect()
}

/// The AoRs that change: every one some stream follows (sorted), or all
/// `m` of them.
pub fn churn_set(m: u32, streams: &[Vec<u32>], all: bool) -> Vec<u32> {
    if all {
        return (0..m).collect();
    }
    let mut watched = vec![false; m as usize];
    for s in streams {
        for &a in s {
            watched[a as usize] = true;
        }
    }
    (0..m).filter(|a| watched[*a as usize]).collect()
}

/// `k` AoRs for the SIP watchers, spread evenly over the churn set (one
/// dialog each; several per AoR when `k` exceeds the set).
pub fn sip_targets(churn: &[u32], k: usize) -> Vec<u32> {
    if churn.is_empty() {
        return Vec::new();
    }
    (0..k)
        .map(|i| churn[(i as u64 * churn.len() as u64 / k.max(1) as u64) as usize % churn.len()])
        .collect()
}

/// The note of change `seq` sent at `t_ns`.
pub fn note(run: &str, seq: u32, t_ns: u64) -> String {
    format!("{NOTE_TAG} {run} {seq} {t_ns}")
}

/// The PIDF of change `seq` of `entity`: one tuple, open on odd changes,
/// and the note at the root (what `PresenceState.note` shows).
pub fn pidf(entity: &str, run: &str, seq: u32, t_ns: u64) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"{entity}\"><tuple id=\"apib\"><status><basic>{}</basic></status></tuple><note>{}</note></presence>",
        if seq % 2 == 1 { "open" } else { "closed" },
        note(run, seq, t_ns)
    )
}

/// (SEQ, T_NS) of this run's note anywhere in `text` (a note's text or a
/// whole document); `None` when there is none.
pub fn parse_note(text: &[u8], run: &str) -> Option<(u32, u64)> {
    let mut needle = Vec::with_capacity(NOTE_TAG.len() + run.len() + 2);
    needle.extend_from_slice(NOTE_TAG.as_bytes());
    needle.push(b' ');
    needle.extend_from_slice(run.as_bytes());
    needle.push(b' ');
    let at = crate::scan::find(text, &needle)? + needle.len();
    let rest = &text[at..];
    let mut words = rest
        .split(|b| !b.is_ascii_digit())
        .filter(|w| !w.is_empty());
    let seq = crate::scan::parse_u32(words.next()?)?;
    let t = crate::scan::parse_u64(words.next()?)?;
    Some((seq, t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aor_names_round_trip() {
        let a = aor("api", "example.com", 42);
        assert_eq!(a, "sip:api000042@example.com");
        assert_eq!(aor_index(&a, "api"), Some(42));
        assert_eq!(aor_index("sip:api1234567@x", "api"), Some(1_234_567));
        for bad in [
            "api000042@example.com",
            "sip:bob@example.com",
            "sip:api@x",
            "sip:api12a@x",
        ] {
            assert_eq!(aor_index(bad, "api"), None, "{bad}");
        }
    }

    #[test]
    fn notes_round_trip_in_a_document() {
        let doc = pidf("sip:api000001@example.com", "r1", 17, 123_456_789);
        assert_eq!(parse_note(doc.as_bytes(), "r1"), Some((17, 123_456_789)));
        assert_eq!(parse_note(doc.as_bytes(), "r2"), None);
        assert_eq!(parse_note(note("r1", 3, 9).as_bytes(), "r1"), Some((3, 9)));
        assert_eq!(parse_note(b"apib r1 3", "r1"), None);
        assert_eq!(parse_note(b"", "r1"), None);
    }

    #[test]
    fn contiguous_departments_wrap_and_cover() {
        let mut rng = Rng::new(1);
        let d = departments(10, 4, 3, Departments::Contiguous, &mut rng);
        assert_eq!(
            d,
            vec![vec![0, 1, 2], vec![3, 4, 5], vec![6, 7, 8], vec![0, 1, 9]]
        );
        assert_eq!(churn_set(10, &d, false), (0..10).collect::<Vec<_>>());
        let d = departments(100, 2, 5, Departments::Contiguous, &mut rng);
        assert_eq!(churn_set(100, &d, false), (0..10).collect::<Vec<_>>());
        assert_eq!(churn_set(100, &d, true).len(), 100);
    }

    #[test]
    fn random_departments_are_distinct_and_seeded() {
        let a = departments(50, 20, 10, Departments::Random, &mut Rng::new(7));
        let b = departments(50, 20, 10, Departments::Random, &mut Rng::new(7));
        assert_eq!(a, b);
        for s in &a {
            assert_eq!(s.len(), 10);
            assert!(s.windows(2).all(|w| w[0] < w[1]) && s.iter().all(|x| *x < 50));
        }
        // More than there are: every AoR once.
        let c = departments(5, 1, 9, Departments::Random, &mut Rng::new(7));
        assert_eq!(c, vec![vec![0, 1, 2, 3, 4]]);
    }

    #[test]
    fn sip_targets_spread_over_the_churn_set() {
        let churn: Vec<u32> = (100..200).collect();
        assert_eq!(sip_targets(&churn, 4), vec![100, 125, 150, 175]);
        assert_eq!(sip_targets(&churn[..2], 4), vec![100, 100, 101, 101]);
        assert!(sip_targets(&[], 3).is_empty());
    }
}

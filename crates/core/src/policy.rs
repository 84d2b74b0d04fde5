//! Watcher authorisation (RFC 3856 §6.6 leaves the policy to the presence
//! agent). Default: watchers from a local presence domain are accepted,
//! others rejected. Per-presentity rules override: `allow`, `block`,
//! `polite-block` (accepted, but shown a neutral closed document) and
//! `confirm` (RFC 5025's sub-handling: the subscription is held `pending`,
//! without state, until a rule that decides replaces it: the presentity
//! approves by an `allow` rule for the watcher, then a reload).
//!
//! Rules file, one rule per line, `#` comments:
//! ```text
//! # presentity             action        watcher
//! sip:alice@example.com    allow         sip:carol@partner.org
//! sip:alice@example.com    polite-block  sip:mallory@example.com
//! *@example.com            block         *@spam.example
//! *@corp.example.com       confirm       *
//! *                        allow         *@partner.org
//! ```
//! The most specific matching rule wins (exact AoR over `*@domain` over `*`,
//! presentity before watcher); among equally specific rules the first wins.

use crate::model::View;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Block,
    PoliteBlock,
    Confirm,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Any,
    Domain(String),
    Exact(String),
}

impl Pattern {
    fn parse(s: &str) -> Option<Pattern> {
        if s == "*" {
            return Some(Pattern::Any);
        }
        if let Some(d) = s.strip_prefix("*@") {
            return (!d.is_empty()).then(|| Pattern::Domain(d.to_ascii_lowercase()));
        }
        crate::Aor::parse(s).map(|a| Pattern::Exact(a.into_string()))
    }
    fn matches(&self, aor: &str) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Domain(d) => aor
                .rsplit('@')
                .next()
                .is_some_and(|x| x.eq_ignore_ascii_case(d)),
            Pattern::Exact(a) => a == aor,
        }
    }
    fn rank(&self) -> u8 {
        match self {
            Pattern::Any => 0,
            Pattern::Domain(_) => 1,
            Pattern::Exact(_) => 2,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    presentity: Pattern,
    watcher: Pattern,
    action: Action,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Accept(View),
    Reject,
}

#[derive(Debug, Clone, Default)]
pub struct Policy {
    local_domains: Vec<String>,
    rules: Vec<Rule>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("line {line}: {msg}")]
pub struct PolicyError {
    pub line: usize,
    pub msg: String,
}

impl Policy {
    pub fn new(local_domains: &[String]) -> Policy {
        Policy {
            local_domains: local_domains
                .iter()
                .map(|d| d.to_ascii_lowercase())
                .collect(),
            rules: Vec::new(),
        }
    }

    /// Add the rules of a rules file; all errors are reported at once.
    pub fn load_rules(&mut self, text: &str) -> Result<(), Vec<PolicyError>> {
        let mut errors = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let err = |msg: String| PolicyError { line: i + 1, msg };
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() != 3 {
                errors.push(err("expected: presentity action watcher".into()));
                continue;
            }
            let action = match f[1].to_ascii_lowercase().as_str() {
                "allow" => Action::Allow,
                "block" => Action::Block,
                "polite-block" => Action::PoliteBlock,
                "confirm" => Action::Confirm,
                other => {
                    errors.push(err(format!(
                        "unknown action {other:?} (allow, block, polite-block, confirm)"
                    )));
                    continue;
                }
            };
            match (Pattern::parse(f[0]), Pattern::parse(f[2])) {
                (Some(presentity), Some(watcher)) => self.rules.push(Rule {
                    presentity,
                    watcher,
                    action,
                }),
                _ => errors.push(err(
                    "presentity and watcher must be sip:user@domain, *@domain or *".into(),
                )),
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    pub fn is_local(&self, domain: &str) -> bool {
        self.local_domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(domain))
    }

    /// [`Policy::decide`] for a private package (a voicemail lamp): the
    /// resource itself may watch, and whoever a rule names exactly on both
    /// sides (`sip:boss@example.com allow sip:assistant@example.com`)
    /// gets what that rule says; nobody else, whatever the wildcard rules
    /// and local domains say.
    pub fn decide_private(&self, presentity: &str, watcher: &str) -> Decision {
        if presentity == watcher {
            return Decision::Accept(View::Full);
        }
        let exact = self.rules.iter().find(|r| {
            matches!(&r.presentity, Pattern::Exact(p) if p == presentity)
                && matches!(&r.watcher, Pattern::Exact(w) if w == watcher)
        });
        match exact.map(|r| r.action) {
            Some(Action::Allow) => Decision::Accept(View::Full),
            Some(Action::PoliteBlock) => Decision::Accept(View::Neutral),
            Some(Action::Confirm) => Decision::Accept(View::Pending),
            Some(Action::Block) | None => Decision::Reject,
        }
    }

    /// May `watcher` see `presentity` (both canonical AoRs)?
    pub fn decide(&self, presentity: &str, watcher: &str) -> Decision {
        if presentity == watcher {
            return Decision::Accept(View::Full);
        }
        let best = self
            .rules
            .iter()
            .filter(|r| r.presentity.matches(presentity) && r.watcher.matches(watcher))
            .fold(None::<&Rule>, |best, r| match best {
                Some(b)
                    if (b.presentity.rank(), b.watcher.rank())
                        >= (r.presentity.rank(), r.watcher.rank()) =>
                {
                    Some(b)
                }
                _ => Some(r),
            });
        match best.map(|r| r.action) {
            Some(Action::Allow) => Decision::Accept(View::Full),
            Some(Action::PoliteBlock) => Decision::Accept(View::Neutral),
            Some(Action::Confirm) => Decision::Accept(View::Pending),
            Some(Action::Block) => Decision::Reject,
            None => {
                let domain = watcher.rsplit('@').next().unwrap_or("");
                if self.is_local(domain) {
                    Decision::Accept(View::Full)
                } else {
                    Decision::Reject
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        let mut p = Policy::new(&["example.com".to_string()]);
        p.load_rules(
            "sip:alice@example.com allow sip:carol@partner.org\n\
             sip:alice@example.com polite-block sip:mallory@example.com\n\
             sip:alice@example.com block *@example.com # nobody local but...\n\
             sip:alice@example.com allow sip:bob@example.com\n\
             * allow *@friends.org\n\
             *@corp.example.com confirm *\n\
             sip:ceo@corp.example.com allow sip:cfo@example.com\n",
        )
        .unwrap();
        p
    }

    #[test]
    fn private_packages_are_for_the_resource_and_exact_rules_only() {
        let p = policy();
        let d = |a: &str, w: &str| p.decide_private(a, w);
        assert_eq!(
            d("sip:alice@example.com", "sip:alice@example.com"),
            Decision::Accept(View::Full)
        );
        // Exact on both sides: the rule's action.
        assert_eq!(
            d("sip:alice@example.com", "sip:bob@example.com"),
            Decision::Accept(View::Full)
        );
        assert_eq!(
            d("sip:alice@example.com", "sip:carol@partner.org"),
            Decision::Accept(View::Full)
        );
        assert_eq!(
            d("sip:alice@example.com", "sip:mallory@example.com"),
            Decision::Accept(View::Neutral)
        );
        // Local watchers, wildcard rules: not for a private package.
        assert_eq!(
            d("sip:alice@example.com", "sip:dave@example.com"),
            Decision::Reject
        );
        assert_eq!(
            d("sip:bob@example.com", "sip:x@friends.org"),
            Decision::Reject
        );
        assert_eq!(
            d("sip:bob@example.com", "sip:carol@example.com"),
            Decision::Reject
        );
        assert_eq!(
            p.decide("sip:bob@example.com", "sip:carol@example.com"),
            Decision::Accept(View::Full)
        );
    }

    #[test]
    fn decisions() {
        let p = policy();
        let full = Decision::Accept(View::Full);
        for (presentity, watcher, want) in [
            ("sip:bob@example.com", "sip:dave@example.com", full.clone()),
            (
                "sip:bob@example.com",
                "sip:eve@elsewhere.net",
                Decision::Reject,
            ),
            (
                "sip:alice@example.com",
                "sip:carol@partner.org",
                full.clone(),
            ),
            (
                "sip:alice@example.com",
                "sip:mallory@example.com",
                Decision::Accept(View::Neutral),
            ),
            (
                "sip:alice@example.com",
                "sip:dave@example.com",
                Decision::Reject,
            ),
            ("sip:alice@example.com", "sip:bob@example.com", full.clone()),
            (
                "sip:alice@example.com",
                "sip:alice@example.com",
                full.clone(),
            ),
            ("sip:zed@example.com", "sip:x@friends.org", full.clone()),
            // Held for the presentity, unless a rule decides.
            (
                "sip:ceo@corp.example.com",
                "sip:dave@example.com",
                Decision::Accept(View::Pending),
            ),
            (
                "sip:ceo@corp.example.com",
                "sip:cfo@example.com",
                full.clone(),
            ),
            (
                "sip:ceo@corp.example.com",
                "sip:ceo@corp.example.com",
                full.clone(),
            ),
        ] {
            assert_eq!(
                p.decide(presentity, watcher),
                want,
                "{presentity} <- {watcher}"
            );
        }
    }

    #[test]
    fn rule_errors_are_all_reported() {
        let mut p = Policy::new(&[]);
        let e = p
            .load_rules("a b\nsip:a@b frob sip:c@d\nnot-an-aor allow *\n")
            .unwrap_err();
        assert_eq!(e.iter().map(|e| e.line).collect::<Vec<_>>(), vec![1, 2, 3]);
    }
}

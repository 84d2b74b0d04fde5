//! The body of one NOTIFY: a package's document stamped for this NOTIFY,
//! or a resource list's (RFC 4662) multipart/related RLMI body rendered
//! for this subscriber.

use super::Notifier;
use bytes::Bytes;
use presence_core::packages::State;
use presence_core::policy::Decision;
use presence_core::rlmi::{self, MemberView, Stored};
use presence_core::{Subscription, View};

impl Notifier {
    /// The members of the resource list `sub` watches, if it watches one.
    pub(super) fn list_of(&self, sub: &Subscription) -> Option<Vec<String>> {
        if sub.event != "presence" {
            return None;
        }
        self.lists
            .current()
            .members(&sub.aor)
            .map(<[String]>::to_vec)
    }

    /// The Content-Type and body of the `cseq`-th NOTIFY of `sub` carrying
    /// `body`: stamped by its package, or, for a resource list, rendered
    /// from the list's stored document (what changed since list version
    /// `since`, each member as its policy shows it to this watcher).
    pub(super) fn render(
        &self,
        sub: &Subscription,
        body: Bytes,
        cseq: u32,
        since: Option<u64>,
    ) -> (String, Bytes) {
        if body.is_empty() {
            return (sub.content_type.clone(), body);
        }
        let Some(members) = self.list_of(sub) else {
            let body = match self.packages.get(&sub.event) {
                Some(p) => p.stamp(body, cseq),
                None => body,
            };
            return (sub.content_type.clone(), body);
        };
        let stored = Stored::decode(&body).unwrap_or_else(|| Stored {
            full_at: 0,
            members: members
                .into_iter()
                .map(|uri| rlmi::Member {
                    uri,
                    changed_at: 0,
                    body: None,
                })
                .collect(),
        });
        let policy = self.policy.current();
        let presence = self.packages.get("presence");
        let view = |member: &str| match policy.decide(member, &sub.watcher) {
            Decision::Accept(View::Full) => MemberView::Full,
            Decision::Accept(View::Neutral) => {
                MemberView::Neutral(presence.map(|p| p.neutral(member).body).unwrap_or_default())
            }
            Decision::Accept(View::Pending) => MemberView::Pending,
            Decision::Reject => MemberView::Rejected,
        };
        let no_state = |member: &str| {
            presence
                .map(|p| p.compose(&State::empty(member)).body)
                .unwrap_or_default()
        };
        let version = cseq.saturating_sub(1);
        let (ct, body) = rlmi::render(&sub.aor, &stored, since, version, &view, &no_state);
        (ct, Bytes::from(body))
    }
}

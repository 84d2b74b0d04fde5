//! What a resource's watchers and lists make: the watcher information
//! package's recomposition on a change of the subscriptions (RFC 3857),
//! the watcher policy's decisions and their re-decision on a reload
//! (pending watchers), and resource lists' documents (RFC 4662).

use super::{Compositor, Overlay, LIST_DOCUMENT};
use bytes::Bytes;
use presence_core::commands::NotifyJob;
use presence_core::policy::Decision;
use presence_core::rlmi::{Lists, Stored};
use presence_core::{shard_of, EndReason, Subscription, View};
use presence_store::{Op, StoreError};

impl Compositor {
    /// The live subscriptions to (aor, event).
    pub(super) async fn live_watchers(
        &self,
        aor: &str,
        event: &str,
    ) -> Result<Vec<Subscription>, StoreError> {
        let now = self.clock.now_ms();
        let ids = self.store.watcher_ids(aor, event).await?;
        Ok(self
            .store
            .subscriptions(&ids)
            .await?
            .into_iter()
            .flatten()
            .filter(|s| s.expires_at_ms > now)
            .collect())
    }

    /// Commit a change of the subscriptions to (aor, event) (`ops`, `jobs`),
    /// with the recomposition of the package that shows them (the
    /// presentity's watcher information) when somebody watches that:
    /// `put` is the subscription written (new, approved), `ended` the one
    /// that left and why.
    pub(super) async fn commit_watchers(
        &self,
        aor: &str,
        event: &str,
        ops: Vec<Op>,
        jobs: Vec<NotifyJob>,
        put: Option<&Subscription>,
        ended: Option<(&str, EndReason)>,
    ) -> Result<(), StoreError> {
        let shard = shard_of(aor, self.shards);
        let Some(winfo) = self.packages.watching(event) else {
            return self.commit_with_jobs(shard, ops, jobs).await;
        };
        if !self.store.is_watched(aor, winfo).await? {
            return self.commit_with_jobs(shard, ops, jobs).await;
        }
        let mut watchers = self.live_watchers(aor, event).await?;
        if let Some(id) = put.map(|s| s.id.as_str()).or(ended.map(|(id, _)| id)) {
            watchers.retain(|s| s.id != id);
        }
        if let Some(s) = put {
            watchers.push(s.clone());
        }
        let overlay = Overlay {
            watchers: Some(&watchers),
            ended,
            ..Overlay::default()
        };
        self.commit_and_notify(aor, winfo, ops, jobs, Some(&overlay))
            .await
    }

    /// What the watcher policy current now says of `watcher` watching
    /// (aor, event).
    pub(super) fn decide(&self, aor: &str, event: &str, watcher: &str) -> Decision {
        let policy = self.policy.current();
        if self.packages.get(event).is_some_and(|p| p.private()) {
            policy.decide_private(aor, watcher)
        } else {
            policy.decide(aor, watcher)
        }
    }

    /// Decide `shard`'s pending subscriptions again (the policy was
    /// reloaded): one a rule now accepts becomes active (a NOTIFY with the
    /// state); one a rule now blocks ends (`rejected`); the others stay
    /// pending.
    pub(super) async fn reauthorize(&self, shard: u32) -> Result<(), StoreError> {
        for id in self.store.pending_subscriptions(shard).await? {
            let Some(mut sub) = self.store.subscription(&id).await? else {
                // Its record is gone (expired by TTL): drop the listing.
                let ops = vec![Op::DeleteSubscription { id }];
                self.store.commit(shard, ops).await?;
                continue;
            };
            let (aor, event) = (sub.aor.clone(), sub.event.clone());
            match self.decide(&aor, &event, &sub.watcher) {
                Decision::Accept(View::Pending) => {}
                Decision::Accept(view) => {
                    self.metrics
                        .compositor_authorizations
                        .with_label_values(&["approved"])
                        .inc();
                    sub.view = view;
                    let ops = vec![Op::PutSubscription(sub.clone())];
                    let jobs = vec![NotifyJob::Refresh { id }];
                    self.commit_watchers(&aor, &event, ops, jobs, Some(&sub), None)
                        .await?;
                }
                Decision::Reject => {
                    self.metrics
                        .compositor_authorizations
                        .with_label_values(&["rejected"])
                        .inc();
                    let mut ops = vec![Op::DeleteSubscription { id: id.clone() }];
                    ops.extend(self.forget_unwatched(&aor, &event, &id).await?);
                    let job = NotifyJob::Terminated {
                        sub: Box::new(sub),
                        reason: EndReason::Rejected,
                    };
                    let ended = Some((id.as_str(), EndReason::Rejected));
                    self.commit_watchers(&aor, &event, ops, vec![job], None, ended)
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// [`Compositor::recompose`] for resource list `list`: its document is
    /// its members' presence documents as composed now ([`Stored`]), kept
    /// only while somebody watches the list.
    pub(super) async fn recompose_list(
        &self,
        list: &str,
        members: &[String],
        overlay: Option<&Overlay<'_>>,
    ) -> Result<Option<(Op, Option<u64>)>, StoreError> {
        let current = self.store.document(list, "presence").await?;
        let new_watcher = overlay.is_some_and(|o| o.new_watcher);
        if !new_watcher && self.store.watcher_ids(list, "presence").await?.is_empty() {
            let forget = Op::DeleteDocument {
                aor: list.to_string(),
                event: "presence".into(),
            };
            return Ok(current.map(|_| (forget, None)));
        }
        let mut docs = Vec::with_capacity(members.len());
        for m in members {
            let doc = self.store.document(m, "presence").await?;
            docs.push((m.clone(), doc.map(|d| d.body.to_vec())));
        }
        let previous = current.as_ref().and_then(|d| Stored::decode(&d.body));
        let version = current.as_ref().map_or(1, |d| d.version + 1);
        let stored = Stored::next(previous.as_ref(), version, docs);
        if previous
            .as_ref()
            .is_some_and(|p| p.members == stored.members && p.full_at == stored.full_at)
        {
            return Ok(None);
        }
        let op = Op::PutDocument {
            aor: list.to_string(),
            event: "presence".into(),
            content_type: LIST_DOCUMENT.into(),
            body: Bytes::from(stored.encode()),
            // A list's document carries its own RLMI state (its version
            // counts from 1 as Stored::next was told).
            first_version: 1,
        };
        Ok(Some((op, Some(version))))
    }

    /// The lists changed (`before` is what they were): recompose each
    /// watched list of `shard`; end the subscriptions to lists of `shard`
    /// that are gone (`noresource`).
    pub(super) async fn lists_changed(&self, shard: u32, before: &Lists) -> Result<(), StoreError> {
        let now = self.lists.current();
        for list in now.uris().filter(|l| shard_of(l, self.shards) == shard) {
            if self.store.is_watched(list, "presence").await? {
                self.commit_and_notify(list, "presence", Vec::new(), Vec::new(), None)
                    .await?;
            }
        }
        let gone = before
            .uris()
            .filter(|l| shard_of(l, self.shards) == shard && !now.is_list(l));
        for list in gone {
            for id in self.store.watcher_ids(list, "presence").await? {
                self.end_subscription(&id, EndReason::Noresource).await?;
            }
        }
        Ok(())
    }
}

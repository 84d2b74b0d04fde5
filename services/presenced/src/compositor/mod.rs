//! The compositor role: Event State Compositor, registrar state and
//! subscription table, sharded. It owns its shards (in the all-in-one, all of
//! them) and serialises every write of a shard on one worker; after each
//! change of a composed document it stores the new version and emits one
//! notify job. Expiry is driven by each shard's expiry index.

mod serve;
mod watchers;

use crate::metrics::Metrics;
use crate::names::{new_tag, txn_etag};
use crate::outbox::Outbox;
use crate::recent::RecentReplies;
use crate::reload::Reloadable;
use crate::Clock;
use bytes::Bytes;
use presence_core::commands::{
    Command, ContactSpec, NotifyJob, Origin, PublishCmd, Quota, Refusal, RegisterAction,
    RegisterCmd, Reply, SubscribeCmd,
};
use presence_core::digest::Users;
use presence_core::packages::{Registry, State};
use presence_core::policy::{Decision, Policy};
use presence_core::rlmi::Lists;
use presence_core::{shard_of, Binding, EndReason, Publication, Subscription};
use presence_store::{ExpiryKey, Op, Store, StoreError, Topics};
use std::sync::Arc;

pub struct Compositor {
    pub store: Arc<dyn Store>,
    pub packages: Registry,
    /// Watcher policy; a reload decides pending watchers again.
    pub policy: Arc<Reloadable<Policy>>,
    /// Resource lists (RFC 4662); a reload recomposes the watched ones
    /// and ends the subscriptions of lists that are gone.
    pub lists: Arc<Reloadable<Lists>>,
    pub users: Option<Users>,
    pub clock: Clock,
    pub shards: u32,
    pub metrics: Arc<Metrics>,
    /// Where notify jobs wait between their commit and their push.
    pub outbox: Outbox,
    /// Answers by SIP transaction, for the edge's re-sends.
    pub recent: RecentReplies,
    pub limits: Limits,
    /// Where a committed document change is announced (`changes.<k>`, the
    /// `api` role's Watch streams): a hint, the store has the state.
    pub changes: Arc<dyn Topics>,
}

/// The content type of a resource list's stored document ([`Stored`]):
/// never sent as is, the notifier renders each subscriber's NOTIFY from it.
pub const LIST_DOCUMENT: &str = "application/x-presence-list";

/// The composed document of a resource stays below this many bytes (the
/// sum of its publications' bodies): a NOTIFY carrying it, with its headers,
/// still fits one UDP datagram (65 507 bytes).
pub const MAX_DOCUMENT_BYTES: u32 = 60_000;

/// How much state one resource may hold: every table has a bound, so that
/// no user (or forger) grows the store without limit. Reductions are always
/// allowed; only growth past a limit is refused (`Refusal::TooMany`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Contacts bound to one AoR (`--max-contacts`).
    pub contacts: u32,
    /// Live publications of one AoR and event (`--max-publications`).
    pub publications: u32,
    /// Subscriptions to one AoR and event (`--max-watchers`).
    pub watchers: u32,
}

impl Default for Limits {
    /// A user has a handful of devices (Kamailio's registrar is often run
    /// with max_contacts 5-10); a receptionist's line is watched by a few
    /// hundred phones; a whole enterprise watching one person stays below
    /// ten thousand.
    fn default() -> Self {
        Limits {
            contacts: 10,
            publications: 16,
            watchers: 10_000,
        }
    }
}

impl Compositor {
    /// [`Compositor::apply`], except that a command whose shard lease is
    /// lost gets no answer (`None`): its writes were refused, and the caller
    /// retries at the shard's next owner.
    pub async fn try_apply(&self, cmd: Command) -> Option<Reply> {
        match self.apply_inner(cmd).await {
            Ok(r) => Some(r),
            Err(StoreError::Fenced) => None,
            Err(e) => Some(self.store_failure(e)),
        }
    }

    fn store_failure(&self, e: StoreError) -> Reply {
        self.metrics.compositor_store_errors.inc();
        tracing::error!(error = %e, "store error while applying a command");
        Reply::refused(Refusal::StoreFailed)
    }

    async fn apply_inner(&self, cmd: Command) -> Result<Reply, StoreError> {
        if let Command::Route {
            aor, origin, edge, ..
        } = &cmd
        {
            if !origin.txn.is_empty() {
                return self.route_once(aor, &origin.txn, edge, cmd.clone()).await;
            }
        }
        let origin = match &cmd {
            Command::Register(c) => Some((&c.aor, &c.origin)),
            Command::Publish(c) => Some((&c.aor, &c.origin)),
            Command::Subscribe(c) => Some((&c.aor, &c.origin)),
            _ => None,
        };
        let Some((aor, Origin { txn, deadline_ms })) = origin else {
            return self.apply_once(cmd).await;
        };
        let now = self.clock.now_ms();
        let key = (!txn.is_empty()).then(|| RecentReplies::key(aor, txn));
        if let Some(reply) = key.as_deref().and_then(|k| self.recent.get(k, now)) {
            self.metrics
                .compositor_retried_commands
                .with_label_values(&["answered_again"])
                .inc();
            return Ok(reply);
        }
        if *deadline_ms != 0 && now > *deadline_ms {
            // The edge has answered its UA already (503): applying it now
            // would change state behind an error answer.
            self.metrics
                .compositor_retried_commands
                .with_label_values(&["past_deadline"])
                .inc();
            return Ok(Reply::refused(Refusal::Unavailable));
        }
        let reply = self.apply_once(cmd).await?;
        if let Some(key) = key {
            self.recent.put(key, reply.clone(), now);
        }
        Ok(reply)
    }

    /// A MESSAGE transaction is relayed by one edge: the edge that asked
    /// first gets the routes (again, when it asks again: a lost reply); a
    /// second edge asking for the same transaction (the UA's retransmission
    /// reached it, e.g. after a load balancer moved the UA) is told
    /// `RelayedElsewhere` instead of relaying it a second time.
    async fn route_once(
        &self,
        aor: &str,
        txn: &str,
        edge: &str,
        cmd: Command,
    ) -> Result<Reply, StoreError> {
        let now = self.clock.now_ms();
        let first = format!("route\n{}", RecentReplies::key(aor, txn));
        let mine = format!("{first}\n{edge}");
        if let Some(reply) = self.recent.get(&mine, now) {
            self.metrics
                .compositor_retried_commands
                .with_label_values(&["answered_again"])
                .inc();
            return Ok(reply);
        }
        if self.recent.get(&first, now).is_some() {
            return Ok(Reply::refused(Refusal::RelayedElsewhere));
        }
        let reply = self.apply_once(cmd).await?;
        self.recent.put(first, Reply::Done, now);
        self.recent.put(mine, reply.clone(), now);
        Ok(reply)
    }

    async fn apply_once(&self, cmd: Command) -> Result<Reply, StoreError> {
        match cmd {
            Command::Register(c) => self.register(c).await,
            Command::Publish(c) => self.publish(c).await,
            Command::Subscribe(c) => self.subscribe(c).await,
            Command::Route { aor, method, .. } => self.route(&aor, &method).await,
            Command::EndSubscription { id, reason } => self.end_subscription(&id, reason).await,
            Command::SetHardState { aor, event, body } => {
                self.set_hard_state(&aor, &event, body).await
            }
            Command::RecomposeList { list } => {
                if self.lists.current().is_list(&list)
                    && self.store.is_watched(&list, "presence").await?
                {
                    self.commit_and_notify(&list, "presence", Vec::new(), Vec::new(), None)
                        .await?;
                }
                Ok(Reply::Done)
            }
        }
    }

    /// Commit `ops` plus a recomposition of (aor, event) if its document
    /// changed, with the notify jobs in the outbox (the change's job
    /// first), then push the jobs. Returns nothing: callers build replies.
    async fn commit_and_notify(
        &self,
        aor: &str,
        event: &str,
        mut ops: Vec<Op>,
        mut jobs: Vec<NotifyJob>,
        view: Option<&Overlay<'_>>,
    ) -> Result<(), StoreError> {
        let shard = shard_of(aor, self.shards);
        if let Some((op, version)) = self.recompose(aor, event, view).await? {
            ops.push(op);
            // The lists this resource is a member of are recomposed by
            // their own shards, asked through the outbox.
            if event == "presence" {
                let lists = self.lists.current();
                jobs.extend(
                    lists
                        .lists_of(aor)
                        .iter()
                        .map(|l| NotifyJob::ListMember { list: l.clone() }),
                );
            }
            // A forgotten document (nobody watches it) announces nothing.
            let Some(version) = version else {
                return self.commit_with_jobs(shard, ops, jobs).await;
            };
            // Nor does a change nobody watches: the job would cost a queue
            // round trip and a notifier's reads to find no watcher. A
            // SUBSCRIBE coming later is served by this shard after this
            // commit, and its first NOTIFY carries the new document.
            if !self.store.is_watched(aor, event).await? {
                self.metrics
                    .compositor_changes
                    .with_label_values(&["unwatched", event])
                    .inc();
                return self.commit_with_jobs(shard, ops, jobs).await;
            }
            self.metrics
                .compositor_changes
                .with_label_values(&["announced", event])
                .inc();
            jobs.insert(
                0,
                NotifyJob::Changed {
                    aor: aor.to_string(),
                    event: event.to_string(),
                    version,
                    at_ms: self.clock.now_ms(),
                },
            );
        }
        self.commit_with_jobs(shard, ops, jobs).await
    }

    /// Commit `ops` with `jobs` in the shard's outbox (one atomic batch),
    /// then push the jobs to the notify queue.
    async fn commit_with_jobs(
        &self,
        shard: u32,
        mut ops: Vec<Op>,
        jobs: Vec<NotifyJob>,
    ) -> Result<(), StoreError> {
        let (enqueue, ids) = self.outbox.enqueue(self.clock.now_ms(), &jobs);
        ops.extend(enqueue);
        if ops.is_empty() {
            return Ok(());
        }
        let changed: Vec<String> = ops
            .iter()
            .filter_map(|op| match op {
                Op::PutDocument { aor, event, .. } | Op::DeleteDocument { aor, event } => {
                    Some(crate::names::change_hint(event, aor))
                }
                _ => None,
            })
            .collect();
        self.store.commit(shard, ops).await?;
        if !changed.is_empty() {
            let subject = crate::names::changes_subject(shard);
            for hint in changed {
                self.changes.publish(&subject, Bytes::from(hint)).await;
            }
        }
        self.outbox.push(shard, ids.into_iter().zip(jobs)).await;
        Ok(())
    }

    /// A new document for (aor, event) if the state differs from the stored
    /// one, with the version it will have (the shard's writes are serialised
    /// here, so it is the stored one plus one). `overlay` is the state about
    /// to be committed (not yet in the store). When nothing backs the
    /// document any more and nobody watches it, the op forgets it (no
    /// version: there is nobody to tell).
    async fn recompose(
        &self,
        aor: &str,
        event: &str,
        overlay: Option<&Overlay<'_>>,
    ) -> Result<Option<(Op, Option<u64>)>, StoreError> {
        let Some(package) = self.packages.get(event) else {
            return Ok(None);
        };
        if event == "presence" {
            if let Some(members) = self.lists.current().members(aor) {
                return self.recompose_list(aor, members, overlay).await;
            }
        }
        let now = self.clock.now_ms();
        let mut pubs = match overlay.and_then(|o| o.publications) {
            Some(p) => p.to_vec(),
            None => self.store.publications(aor, event).await?,
        };
        pubs.retain(|p| p.expires_at_ms > now);
        pubs.sort_by_key(|p| (p.modified_ms, p.seq));
        let hard = match overlay.and_then(|o| o.hard.clone()) {
            Some(h) => h,
            None => self.store.hard_state(aor, event).await?,
        };
        // A package that does not show registrations neither reads nor
        // is kept alive by them.
        let mut bindings = match overlay.and_then(|o| o.bindings) {
            _ if !package.from_registrations() => Vec::new(),
            Some(b) => b.to_vec(),
            None => self.store.bindings(aor).await?,
        };
        bindings.retain(|b| b.expires_at_ms > now);
        let watchers = match (package.watches(), overlay.and_then(|o| o.watchers)) {
            (None, _) => Vec::new(),
            (Some(_), Some(w)) => w.to_vec(),
            (Some(watched), None) => self.live_watchers(aor, watched).await?,
        };
        let current = self.store.document(aor, event).await?;
        let new_watcher = overlay.is_some_and(|o| o.new_watcher);
        let unbacked = pubs.is_empty() && hard.is_none() && bindings.is_empty();
        if (unbacked || !package.kept_unwatched())
            && !new_watcher
            && self.store.watcher_ids(aor, event).await?.is_empty()
        {
            let forget = Op::DeleteDocument {
                aor: aor.to_string(),
                event: event.to_string(),
            };
            return Ok(current.map(|_| (forget, None)));
        }
        let composed = package.compose(&State {
            aor,
            publications: &pubs,
            hard_state: hard.as_deref(),
            bindings: &bindings,
            bindings_before: overlay.and_then(|o| o.bindings_before),
            previous: current.as_ref().map(|d| d.body.as_ref()),
            watchers: &watchers,
            ended: overlay.and_then(|o| o.ended),
            now_ms: now,
        });
        if current.as_ref().is_some_and(|d| {
            d.body.as_ref() == composed.body.as_slice() && d.content_type == composed.content_type
        }) {
            return Ok(None);
        }
        // A new document starts at the clock in microseconds: an AoR's
        // versions grow across its documents (a document forgotten when
        // nothing backed it and nobody watched it, then made again), so a
        // Watch client that resumes with the version it has is never told
        // "nothing new" about a newer document. That holds while a document
        // changes less than once a microsecond on average and the clocks
        // of the compositors that own it in turn agree to better than the
        // time between its forgetting and its making again.
        let first_version = self.clock.now_us().max(1);
        let version = current.map_or(first_version, |d| d.version + 1);
        let op = Op::PutDocument {
            aor: aor.to_string(),
            event: event.to_string(),
            content_type: composed.content_type,
            body: Bytes::from(composed.body),
            first_version,
        };
        Ok(Some((op, Some(version))))
    }

    /// The op that forgets (aor, event)'s document when the subscription
    /// `leaving` was its last watcher and nothing else backs it (no live
    /// publication, hard state or binding): its version need not go on.
    async fn forget_unwatched(
        &self,
        aor: &str,
        event: &str,
        leaving: &str,
    ) -> Result<Option<Op>, StoreError> {
        if self.store.document(aor, event).await?.is_none() {
            return Ok(None);
        }
        if self
            .store
            .watcher_ids(aor, event)
            .await?
            .iter()
            .any(|id| id != leaving)
        {
            return Ok(None);
        }
        let forget = Op::DeleteDocument {
            aor: aor.to_string(),
            event: event.to_string(),
        };
        let is_list = event == "presence" && self.lists.current().is_list(aor);
        if is_list || !self.packages.get(event).is_some_and(|p| p.kept_unwatched()) {
            return Ok(Some(forget));
        }
        let now = self.clock.now_ms();
        let backed = self
            .store
            .publications(aor, event)
            .await?
            .iter()
            .any(|p| p.expires_at_ms > now)
            || self.store.hard_state(aor, event).await?.is_some()
            || self
                .packages
                .get(event)
                .is_some_and(|p| p.from_registrations())
                && self
                    .store
                    .bindings(aor)
                    .await?
                    .iter()
                    .any(|b| b.expires_at_ms > now);
        Ok((!backed).then_some(forget))
    }

    /// Commit a change of `aor`'s bindings (`ops`, `overlay`) with the
    /// recomposition of each package that shows registrations; the first
    /// commit carries the binding ops.
    async fn commit_bindings(
        &self,
        aor: &str,
        mut ops: Vec<Op>,
        overlay: &Overlay<'_>,
    ) -> Result<(), StoreError> {
        let events = self.packages.from_registrations();
        if events.is_empty() {
            let shard = shard_of(aor, self.shards);
            return self.commit_with_jobs(shard, ops, Vec::new()).await;
        }
        for event in events {
            let ops = std::mem::take(&mut ops);
            self.commit_and_notify(aor, event, ops, Vec::new(), Some(overlay))
                .await?;
        }
        Ok(())
    }

    async fn register(&self, c: RegisterCmd) -> Result<Reply, StoreError> {
        let now = self.clock.now_ms();
        let stored: Vec<Binding> = self.store.bindings(&c.aor).await?;
        let mut bindings = stored.clone();
        bindings.retain(|b| b.expires_at_ms > now);
        let before = bindings.clone();
        let action = c.action.clone();
        match action {
            RegisterAction::Query => {
                return Ok(Reply::Registered {
                    bindings,
                    now_ms: now,
                });
            }
            RegisterAction::RemoveAll => bindings.clear(),
            RegisterAction::Update(specs) => {
                for spec in specs {
                    let existing = bindings
                        .iter()
                        .position(|b| same_contact(&b.uri, &spec.uri));
                    if let Some(i) = existing {
                        let b = &bindings[i];
                        if b.call_id == c.call_id && c.cseq < b.cseq {
                            return Ok(Reply::refused(Refusal::OutOfOrderCSeq));
                        }
                        bindings.remove(i);
                    }
                    if spec.expires > 0 {
                        bindings.push(binding_from(&c, spec, now));
                    }
                }
            }
        }
        let limit = self.limits.contacts;
        if bindings.len() > before.len() && bindings.len() > limit as usize {
            return Ok(Reply::refused(Refusal::TooMany {
                what: Quota::Contacts,
                limit,
            }));
        }
        if before == bindings {
            return Ok(Reply::Registered {
                bindings,
                now_ms: now,
            });
        }
        let ops = vec![
            Op::PutBindings {
                aor: c.aor.clone(),
                bindings: bindings.clone(),
            },
            Op::MarkKnown { aor: c.aor.clone() },
        ];
        let overlay = Overlay {
            bindings: Some(&bindings),
            // Also a binding whose time was up and not yet swept: it
            // leaves (`expired`) with this change.
            bindings_before: Some(&stored),
            ..Overlay::default()
        };
        self.commit_bindings(&c.aor, ops, &overlay).await?;
        Ok(Reply::Registered {
            bindings,
            now_ms: now,
        })
    }

    async fn publish(&self, c: PublishCmd) -> Result<Reply, StoreError> {
        let now = self.clock.now_ms();
        let mut pubs = self.store.publications(&c.aor, &c.event).await?;
        pubs.retain(|p| p.expires_at_ms > now);
        let mut ops = Vec::new();
        let etag;
        match &c.if_match {
            Some(tag) => {
                let Some(pos) = pubs.iter().position(|p| &p.etag == tag) else {
                    // This transaction may have replaced it already (its
                    // answer lost with a shard owner that died).
                    let mine = txn_etag(tag, &c.origin.txn);
                    if c.expires != 0
                        && !c.origin.txn.is_empty()
                        && pubs.iter().any(|p| p.etag == mine)
                    {
                        return Ok(self.published_again(mine, c.expires));
                    }
                    return Ok(Reply::refused(Refusal::UnknownEtag));
                };
                let old = pubs.remove(pos);
                ops.push(Op::DeletePublication {
                    aor: c.aor.clone(),
                    event: c.event.clone(),
                    etag: old.etag.clone(),
                });
                if c.expires == 0 {
                    etag = old.etag;
                } else {
                    etag = txn_etag(tag, &c.origin.txn);
                    let (content_type, body, modified_ms, seq) = match &c.body {
                        Some((ct, b)) => (ct.clone(), b.clone(), now, next_seq()),
                        None => (
                            old.content_type.clone(),
                            old.body.clone(),
                            old.modified_ms,
                            old.seq,
                        ),
                    };
                    let p = Publication {
                        etag: etag.clone(),
                        aor: c.aor.clone(),
                        event: c.event.clone(),
                        expires_at_ms: now + c.expires as u64 * 1000,
                        content_type,
                        body,
                        modified_ms,
                        seq,
                    };
                    pubs.push(p.clone());
                    ops.push(Op::PutPublication(p));
                }
            }
            None => {
                let Some((ct, body)) = &c.body else {
                    return Ok(Reply::refused(Refusal::MissingBody));
                };
                let limit = self.limits.publications;
                if pubs.len() >= limit as usize {
                    return Ok(Reply::refused(Refusal::TooMany {
                        what: Quota::Publications,
                        limit,
                    }));
                }
                etag = txn_etag(&format!("{}\0{}", c.aor, c.event), &c.origin.txn);
                if !c.origin.txn.is_empty() && pubs.iter().any(|p| p.etag == etag) {
                    // Made by this transaction already (see above).
                    return Ok(self.published_again(etag, c.expires));
                }
                let p = Publication {
                    etag: etag.clone(),
                    aor: c.aor.clone(),
                    event: c.event.clone(),
                    expires_at_ms: now + c.expires as u64 * 1000,
                    content_type: ct.clone(),
                    body: body.clone(),
                    modified_ms: now,
                    seq: next_seq(),
                };
                pubs.push(p.clone());
                ops.push(Op::PutPublication(p));
            }
        }
        // Every live publication goes into one document, and every watcher
        // gets all of it in one NOTIFY: bounded below what a datagram carries.
        let total: usize = pubs.iter().map(|p| p.body.len()).sum();
        if total > MAX_DOCUMENT_BYTES as usize && c.body.is_some() {
            return Ok(Reply::refused(Refusal::DocumentTooLarge {
                limit: MAX_DOCUMENT_BYTES,
            }));
        }
        ops.push(Op::MarkKnown { aor: c.aor.clone() });
        let overlay = Overlay {
            publications: Some(&pubs),
            ..Overlay::default()
        };
        self.commit_and_notify(&c.aor, &c.event, ops, Vec::new(), Some(&overlay))
            .await?;
        Ok(Reply::Published {
            etag,
            expires: c.expires,
        })
    }

    /// The answer to a PUBLISH whose transaction was applied already by an
    /// earlier shard owner (found by its [`txn_etag`]).
    fn published_again(&self, etag: String, expires: u32) -> Reply {
        self.metrics
            .compositor_retried_commands
            .with_label_values(&["applied_before"])
            .inc();
        Reply::Published { etag, expires }
    }

    async fn subscribe(&self, c: SubscribeCmd) -> Result<Reply, StoreError> {
        let now = self.clock.now_ms();
        let shard = shard_of(&c.aor, self.shards);
        if let Some(id) = &c.dialog {
            // The dialog's identifiers are not a secret (they travel in
            // every NOTIFY): the request must also come from the same
            // watcher (the authenticated identity with Digest on), for the
            // same resource, event and event id. Anything else is another
            // dialog, which does not exist here.
            let Some(mut sub) = self.store.subscription(id).await?.filter(|s| {
                s.call_id == c.call_id
                    && s.remote_tag == c.remote_tag
                    && s.watcher == c.watcher
                    && s.aor == c.aor
                    && s.event == c.event
                    && s.event_id == c.event_id
                    && s.expires_at_ms > now
            }) else {
                return Ok(Reply::refused(Refusal::NoSuchSubscription));
            };
            if c.cseq <= sub.remote_cseq {
                return Ok(Reply::refused(Refusal::OutOfOrderCSeq));
            }
            let view = sub.view;
            if c.expires == 0 {
                sub.remote_cseq = c.cseq;
                let mut ops = vec![Op::DeleteSubscription { id: id.clone() }];
                ops.extend(self.forget_unwatched(&sub.aor, &sub.event, id).await?);
                let job = NotifyJob::Terminated {
                    sub: Box::new(sub),
                    reason: EndReason::Unsubscribed,
                };
                let ended = Some((id.as_str(), EndReason::Unsubscribed));
                self.commit_watchers(&c.aor, &c.event, ops, vec![job], None, ended)
                    .await?;
                return Ok(Reply::Subscribed {
                    id: id.clone(),
                    expires: 0,
                    view,
                });
            }
            sub.remote_cseq = c.cseq;
            sub.expires_at_ms = now + c.expires as u64 * 1000;
            sub.remote_target = c.remote_target;
            sub.flow = c.flow;
            // A refresh says again which rate controls it wants (RFC 6446
            // §4.1: one left out is removed).
            sub.rates = c.rates.grant(c.expires);
            let job = NotifyJob::Refresh { id: id.clone() };
            self.commit_with_jobs(shard, vec![Op::PutSubscription(sub)], vec![job])
                .await?;
            return Ok(Reply::Subscribed {
                id: id.clone(),
                expires: c.expires,
                view,
            });
        }
        let view = match self.decide(&c.aor, &c.event, &c.watcher) {
            Decision::Reject => return Ok(Reply::refused(Refusal::PolicyRejected)),
            Decision::Accept(view) => view,
        };
        let limit = self.limits.watchers;
        if c.expires > 0 && self.store.watcher_ids(&c.aor, &c.event).await?.len() >= limit as usize
        {
            return Ok(Reply::refused(Refusal::TooMany {
                what: Quota::Watchers,
                limit,
            }));
        }
        let id = presence_core::subscription_id(&new_tag(), shard_of(&c.aor, self.shards));
        let sub = Subscription {
            id: id.clone(),
            aor: c.aor.clone(),
            event: c.event.clone(),
            event_id: c.event_id,
            watcher: c.watcher,
            call_id: c.call_id,
            remote_tag: c.remote_tag,
            local_uri: c.local_uri,
            remote_uri: c.remote_uri,
            remote_target: c.remote_target,
            route_set: c.route_set,
            flow: c.flow,
            remote_cseq: c.cseq,
            expires_at_ms: now + c.expires as u64 * 1000,
            content_type: c.content_type,
            view,
            rates: c.rates.grant(c.expires),
        };
        // No document is stored for a resource without state (a fetch of
        // a never-used AoR must leave nothing behind): the notifier sends
        // the package's "no state" document until something is composed.
        let mut ops = Vec::new();
        // A package whose document is not kept unwatched has none yet for
        // its first watcher: compose it with the subscription.
        let is_list = c.event == "presence" && self.lists.current().is_list(&c.aor);
        if (is_list
            || self
                .packages
                .get(&c.event)
                .is_some_and(|p| !p.kept_unwatched()))
            && self.store.document(&c.aor, &c.event).await?.is_none()
        {
            let overlay = Overlay {
                new_watcher: true,
                ..Overlay::default()
            };
            if let Some((op, _)) = self.recompose(&c.aor, &c.event, Some(&overlay)).await? {
                ops.push(op);
            }
        }
        if c.expires == 0 {
            // A fetch: one NOTIFY with the state, then terminated.
            let job = NotifyJob::Terminated {
                sub: Box::new(sub),
                reason: EndReason::Unsubscribed,
            };
            self.commit_with_jobs(shard, ops, vec![job]).await?;
            return Ok(Reply::Subscribed {
                id,
                expires: 0,
                view,
            });
        }
        let put = sub.clone();
        ops.push(Op::PutSubscription(sub));
        let job = NotifyJob::Refresh { id: id.clone() };
        self.commit_watchers(&c.aor, &c.event, ops, vec![job], Some(&put), None)
            .await?;
        Ok(Reply::Subscribed {
            id,
            expires: c.expires,
            view,
        })
    }

    async fn route(&self, aor: &str, method: &str) -> Result<Reply, StoreError> {
        let now = self.clock.now_ms();
        let mut bindings = self.store.bindings(aor).await?;
        bindings.retain(|b| b.expires_at_ms > now);
        let any = !bindings.is_empty();
        bindings.retain(|b| b.accepts(method));
        if !bindings.is_empty() {
            bindings.sort_by(|a, b| q_of(b).total_cmp(&q_of(a)));
            return Ok(Reply::Routes(bindings));
        }
        let known = any
            || self.store.is_known(aor).await?
            || self.users.as_ref().is_some_and(|u| {
                let (user, domain) = aor
                    .strip_prefix("sip:")
                    .and_then(|a| a.rsplit_once('@'))
                    .unwrap_or(("", ""));
                u.contains(user, domain)
            });
        Ok(if known {
            Reply::refused(Refusal::NotRegistered)
        } else {
            Reply::refused(Refusal::UnknownUser)
        })
    }

    async fn end_subscription(&self, id: &str, reason: EndReason) -> Result<Reply, StoreError> {
        if let Some(sub) = self.store.subscription(id).await? {
            let mut ops = vec![Op::DeleteSubscription { id: id.to_string() }];
            ops.extend(self.forget_unwatched(&sub.aor, &sub.event, id).await?);
            let (aor, event) = (sub.aor.clone(), sub.event.clone());
            let ended = Some((id, reason));
            if reason != EndReason::Gone {
                let job = NotifyJob::Terminated {
                    sub: Box::new(sub),
                    reason,
                };
                self.commit_watchers(&aor, &event, ops, vec![job], None, ended)
                    .await?;
            } else {
                self.commit_watchers(&aor, &event, ops, Vec::new(), None, ended)
                    .await?;
                self.store.drop_cseq(id).await?;
            }
        }
        Ok(Reply::Done)
    }

    async fn set_hard_state(
        &self,
        aor: &str,
        event: &str,
        body: Option<Bytes>,
    ) -> Result<Reply, StoreError> {
        let op = match &body {
            Some(b) => Op::PutHardState {
                aor: aor.into(),
                event: event.into(),
                body: b.clone(),
            },
            None => Op::DeleteHardState {
                aor: aor.into(),
                event: event.into(),
            },
        };
        let overlay = Overlay {
            hard: Some(body),
            ..Overlay::default()
        };
        self.commit_and_notify(aor, event, vec![op], Vec::new(), Some(&overlay))
            .await?;
        Ok(Reply::Done)
    }

    /// Handle one due entry of a shard's expiry index.
    async fn expire(&self, shard: u32, key: ExpiryKey) {
        match self.expire_inner(shard, key).await {
            Ok(()) => {}
            // The shard moved; its new owner handles the entry.
            Err(StoreError::Fenced) => {}
            Err(e) => {
                self.metrics.compositor_store_errors.inc();
                tracing::warn!(error = %e, "expiry handling failed; will retry");
            }
        }
    }

    async fn expire_inner(&self, shard: u32, key: ExpiryKey) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        match &key {
            ExpiryKey::Publication { aor, event, etag } => {
                let mut pubs = self.store.publications(aor, event).await?;
                match pubs.iter().position(|p| &p.etag == etag) {
                    Some(i) if pubs[i].expires_at_ms <= now => {
                        pubs.remove(i);
                        self.metrics
                            .compositor_expired
                            .with_label_values(&["publication"])
                            .inc();
                        let ops = vec![Op::DeletePublication {
                            aor: aor.clone(),
                            event: event.clone(),
                            etag: etag.clone(),
                        }];
                        let overlay = Overlay {
                            publications: Some(&pubs),
                            ..Overlay::default()
                        };
                        self.commit_and_notify(aor, event, ops, Vec::new(), Some(&overlay))
                            .await?;
                    }
                    Some(_) => {}
                    None => {
                        self.store
                            .commit(shard, vec![Op::Unindex(key.clone())])
                            .await?;
                    }
                }
            }
            ExpiryKey::Subscription { id } => match self.store.subscription(id).await? {
                Some(sub) if sub.expires_at_ms <= now => {
                    self.metrics
                        .compositor_expired
                        .with_label_values(&["subscription"])
                        .inc();
                    let mut ops = vec![Op::DeleteSubscription { id: id.clone() }];
                    ops.extend(self.forget_unwatched(&sub.aor, &sub.event, id).await?);
                    let (aor, event) = (sub.aor.clone(), sub.event.clone());
                    let job = NotifyJob::Terminated {
                        sub: Box::new(sub),
                        reason: EndReason::Timeout,
                    };
                    let ended = Some((id.as_str(), EndReason::Timeout));
                    self.commit_watchers(&aor, &event, ops, vec![job], None, ended)
                        .await?;
                }
                Some(_) => {}
                None => {
                    self.store
                        .commit(shard, vec![Op::Unindex(key.clone())])
                        .await?;
                }
            },
            ExpiryKey::Bindings { aor } => {
                let stored = self.store.bindings(aor).await?;
                let mut bindings = stored.clone();
                bindings.retain(|b| b.expires_at_ms > now);
                if bindings.len() == stored.len() && !stored.is_empty() {
                    return Ok(());
                }
                self.metrics
                    .compositor_expired
                    .with_label_values(&["binding"])
                    .inc_by((stored.len() - bindings.len()) as u64);
                let ops = vec![Op::PutBindings {
                    aor: aor.clone(),
                    bindings: bindings.clone(),
                }];
                let overlay = Overlay {
                    bindings: Some(&bindings),
                    bindings_before: Some(&stored),
                    ..Overlay::default()
                };
                self.commit_bindings(aor, ops, &overlay).await?;
            }
        }
        Ok(())
    }
}

/// State about to be committed, used instead of what the store holds.
#[derive(Default)]
struct Overlay<'a> {
    publications: Option<&'a [Publication]>,
    bindings: Option<&'a [Binding]>,
    /// A subscription committed with this change watches the resource
    /// (its document is kept even if it is not kept unwatched).
    new_watcher: bool,
    /// With `bindings`: what they were before this change.
    bindings_before: Option<&'a [Binding]>,
    /// The live subscriptions of the package a package watches
    /// ([`presence_core::packages::EventPackage::watches`]) after this
    /// change, and the one that has just ended.
    watchers: Option<&'a [Subscription]>,
    ended: Option<(&'a str, EndReason)>,
    hard: Option<Option<Bytes>>,
}

fn binding_from(c: &RegisterCmd, spec: ContactSpec, now: u64) -> Binding {
    Binding {
        aor: c.aor.clone(),
        uri: spec.uri,
        params: spec.params,
        expires_at_ms: now + spec.expires as u64 * 1000,
        call_id: c.call_id.clone(),
        cseq: c.cseq,
        flow: c.flow.clone(),
        methods: spec.methods,
        q: spec.q,
    }
}

/// RFC 3261 §10.3: contact URIs compare by URI equality; we compare the text
/// with a case-insensitive scheme and host, which is what UAs produce.
fn same_contact(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

fn q_of(b: &Binding) -> f64 {
    b.q.as_deref().and_then(|q| q.parse().ok()).unwrap_or(1.0)
}

fn next_seq() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(1);
    SEQ.fetch_add(1, Ordering::Relaxed)
}

//! The edge's shard requests, sent through their owner's subject.
//!
//! A compositor serves `shard.<k>` for each shard it owns, and also
//! `owner.<id>` for all of them ([`crate::names::owner_subject`]). An edge
//! that knows who owns which shard sends each request through the owner's
//! subject ([`Requests::request_via`]), so the requests for different
//! shards of one compositor made at the same moment travel as one NATS
//! message (the bus batches per subject; per shard they would rarely meet).
//!
//! Who owns what comes from the shard leases, read every
//! [`REFRESH_EVERY`]. The table may be stale for that long: a request that
//! reaches a compositor that no longer serves its shard is dropped there
//! (`presence_compositor_misrouted_total`), the edge sees `NoResponders`,
//! forgets that route and asks the shard's own subject, which is what it
//! does for a shard whose owner it does not know. So a stale table costs
//! one extra round trip, never a wrong answer: only the owner of a shard
//! applies its requests, whichever subject they came by.

use crate::names::{owner_subject, shard_of_subject};
use async_trait::async_trait;
use presence_store::{BusError, Incoming, Leases, Requests};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// How often the owners are read again.
pub const REFRESH_EVERY: Duration = Duration::from_secs(1);

pub struct OwnerRoutes<Req, Rep> {
    inner: Arc<dyn Requests<Req, Rep>>,
    leases: Arc<dyn Leases>,
    /// shard → its owner's subject, when known.
    owners: RwLock<Vec<Option<String>>>,
}

impl<Req, Rep> OwnerRoutes<Req, Rep> {
    pub fn new(
        inner: Arc<dyn Requests<Req, Rep>>,
        leases: Arc<dyn Leases>,
        shards: u32,
    ) -> Arc<OwnerRoutes<Req, Rep>> {
        Arc::new(OwnerRoutes {
            inner,
            leases,
            owners: RwLock::new(vec![None; shards.max(1) as usize]),
        })
    }

    /// Read the owners now and every [`REFRESH_EVERY`] until `shutdown`.
    pub async fn follow(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(REFRESH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.refresh().await,
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Read every shard's owner. A shard whose read fails keeps its route
    /// (a wrong one only costs a retry).
    pub async fn refresh(&self) {
        let n = self.owners.read().unwrap_or_else(|p| p.into_inner()).len();
        let reads = futures_util::future::join_all(
            (0..n as u32).map(|k| async move { (k, self.leases.owner_of(k).await) }),
        )
        .await;
        let mut owners = self.owners.write().unwrap_or_else(|p| p.into_inner());
        for (k, read) in reads {
            if let Ok(lease) = read {
                owners[k as usize] = lease.map(|l| owner_subject(&l.owner));
            }
        }
    }

    /// The owner subject to send `subject`'s requests through, if known.
    fn route(&self, subject: &str) -> Option<(usize, String)> {
        let k = shard_of_subject(subject)? as usize;
        let owners = self.owners.read().unwrap_or_else(|p| p.into_inner());
        owners.get(k)?.clone().map(|via| (k, via))
    }

    fn forget(&self, k: usize, via: &str) {
        let mut owners = self.owners.write().unwrap_or_else(|p| p.into_inner());
        if owners.get(k).and_then(|o| o.as_deref()) == Some(via) {
            owners[k] = None;
        }
    }
}

#[async_trait]
impl<Req, Rep> Requests<Req, Rep> for OwnerRoutes<Req, Rep>
where
    Req: Clone + Send + Sync + 'static,
    Rep: Send + 'static,
{
    async fn request(&self, subject: &str, req: Req, timeout: Duration) -> Result<Rep, BusError> {
        if let Some((k, via)) = self.route(subject) {
            match self
                .inner
                .request_via(&via, subject, req.clone(), timeout)
                .await
            {
                // Nobody took it: that owner is gone or no longer serves
                // the shard. Ask the shard itself (until the next refresh).
                Err(BusError::NoResponders(_)) => self.forget(k, &via),
                other => return other,
            }
        }
        self.inner.request(subject, req, timeout).await
    }

    async fn serve(
        &self,
        subject: &str,
        tx: mpsc::Sender<Incoming<Req, Rep>>,
    ) -> Result<(), BusError> {
        self.inner.serve(subject, tx).await
    }

    async fn unserve(&self, subject: &str) -> Result<(), BusError> {
        self.inner.unserve(subject).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use presence_store::MemoryStore;
    use std::sync::Mutex;

    /// Records which way each request went; a request through `owner.gone`
    /// finds nobody.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    #[async_trait]
    impl Requests<u32, u32> for Recorder {
        async fn request(&self, subject: &str, req: u32, _: Duration) -> Result<u32, BusError> {
            self.0.lock().unwrap().push(format!("direct {subject}"));
            Ok(req)
        }
        async fn request_via(
            &self,
            via: &str,
            subject: &str,
            req: u32,
            _: Duration,
        ) -> Result<u32, BusError> {
            self.0.lock().unwrap().push(format!("{via} {subject}"));
            if via == "owner.gone" {
                return Err(BusError::NoResponders(subject.into()));
            }
            Ok(req + 1)
        }
        async fn serve(
            &self,
            _: &str,
            _: mpsc::Sender<Incoming<u32, u32>>,
        ) -> Result<(), BusError> {
            Ok(())
        }
        async fn unserve(&self, _: &str) -> Result<(), BusError> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn requests_go_through_the_owner_and_a_stale_route_falls_back() {
        let store = Arc::new(MemoryStore::new());
        let ttl = Duration::from_secs(60);
        store.acquire(3, "c-1", ttl).await.unwrap().unwrap();
        store.acquire(4, "gone", ttl).await.unwrap().unwrap();
        let rec = Arc::new(Recorder::default());
        let routes = OwnerRoutes::new(rec.clone(), store.clone(), 8);
        let t = Duration::from_secs(1);
        // Before the first read of the owners: straight to the shard.
        assert_eq!(routes.request("shard.3", 10, t).await, Ok(10));
        routes.refresh().await;
        // Known owner: through its subject.
        assert_eq!(routes.request("shard.3", 10, t).await, Ok(11));
        // An owner that no longer serves it: the shard's own subject, and
        // that route is forgotten until the next read.
        assert_eq!(routes.request("shard.4", 20, t).await, Ok(20));
        assert_eq!(routes.request("shard.4", 20, t).await, Ok(20));
        // No owner, or not a shard subject: direct.
        assert_eq!(routes.request("shard.5", 30, t).await, Ok(30));
        assert_eq!(routes.request("edge.x", 40, t).await, Ok(40));
        assert_eq!(
            *rec.0.lock().unwrap(),
            vec![
                "direct shard.3",
                "owner.c-1 shard.3",
                "owner.gone shard.4",
                "direct shard.4",
                "direct shard.4",
                "direct shard.5",
                "direct edge.x",
            ]
        );
        routes.refresh().await;
        assert_eq!(
            routes.route("shard.4").map(|r| r.1).as_deref(),
            Some("owner.gone")
        );
    }

    #[test]
    fn owner_subjects_are_single_tokens() {
        assert_eq!(owner_subject("compositor-1"), "owner.compositor-1");
        assert_eq!(owner_subject("pod.ns svc>*"), "owner.pod_ns_svc__");
    }
}

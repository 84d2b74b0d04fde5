//! Store calls that many tasks make at the same moment, made as one.
//!
//! A change to a presentity with ten watchers wakes ten NOTIFY tasks in the
//! notifier, and each reads its subscription record, then takes a CSeq. One
//! at a time that is twenty Redis round trips, finishing at twenty moments,
//! so the NOTIFYs reach the bus one by one too. [`Coalesced`] gathers the
//! calls made together into one batch call ([`Store::subscriptions`],
//! [`Store::next_cseqs`]): one round trip, one wake-up, and the tasks go on
//! together, so their NOTIFYs to one edge leave as one bus message
//! (`presence_nats::batch`).
//!
//! What travels together: the first call, plus what the running tasks
//! queue meanwhile ([`presence_store::gather`]: a few yields, no timer, so
//! an idle notifier pays no wait). At most [`IN_FLIGHT`] batches are out at
//! once; the next is gathered when one comes back. At most [`MAX_BATCH`]
//! calls in one. Each caller gets its own result, or the batch's error.
//!
//! [`Store::subscriptions`]: presence_store::Store::subscriptions
//! [`Store::next_cseqs`]: presence_store::Store::next_cseqs

use presence_store::{StoreError, StoreResult};
use std::future::Future;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Most calls in one batch.
pub const MAX_BATCH: usize = 64;
/// Batches out at once; what comes meanwhile waits for the next.
pub const IN_FLIGHT: usize = 2;

type Call<K, V> = (K, oneshot::Sender<StoreResult<V>>);

pub struct Coalesced<K, V> {
    tx: mpsc::UnboundedSender<Call<K, V>>,
}

impl<K: Send + 'static, V: Send + 'static> Coalesced<K, V> {
    /// Gather calls into `batch(keys)`, which answers one value per key, in
    /// order. Needs a Tokio runtime; the gatherer ends with the last handle.
    pub fn new<F, Fut>(batch: F) -> Coalesced<K, V>
    where
        F: Fn(Vec<K>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = StoreResult<Vec<V>>> + Send + 'static,
    {
        let (tx, mut rx) = mpsc::unbounded_channel::<Call<K, V>>();
        let batch = Arc::new(batch);
        let slots = Arc::new(Semaphore::new(IN_FLIGHT));
        tokio::spawn(async move {
            loop {
                // A free slot first: what queues while both are out joins
                // the next batch.
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let Some(calls) =
                    presence_store::gather::gather(&mut rx, MAX_BATCH, usize::MAX, |_| 1).await
                else {
                    return;
                };
                let batch = batch.clone();
                tokio::spawn(async move {
                    let (keys, answers): (Vec<K>, Vec<_>) = calls.into_iter().unzip();
                    let n = keys.len();
                    // One value per call, or one error for all of them.
                    let result = batch(keys).await.and_then(|values| {
                        if values.len() == n {
                            Ok(values)
                        } else {
                            Err(StoreError::Backend(format!(
                                "a batch of {n} calls got {} answers",
                                values.len()
                            )))
                        }
                    });
                    drop(slot);
                    match result {
                        Ok(values) => {
                            for (tx, v) in answers.into_iter().zip(values) {
                                let _ = tx.send(Ok(v));
                            }
                        }
                        Err(e) => {
                            for tx in answers {
                                let _ = tx.send(Err(e.clone()));
                            }
                        }
                    }
                });
            }
        });
        Coalesced { tx }
    }

    /// One call, made with whatever else is called at the same moment.
    pub async fn call(&self, key: K) -> StoreResult<V> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send((key, tx))
            .map_err(|_| StoreError::Backend("the batching task is gone".into()))?;
        rx.await
            .map_err(|_| StoreError::Backend("a batch call was dropped".into()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Calls made together are one batch call (at most MAX_BATCH each),
    /// every caller gets its own answer, and an error reaches everyone of
    /// its batch.
    #[tokio::test]
    async fn calls_made_together_are_one_batch() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let c = Coalesced::new(move |keys: Vec<u32>| {
            seen.lock().unwrap().push(keys.len());
            async move {
                if keys.contains(&999) {
                    return Err(StoreError::Backend("boom".into()));
                }
                Ok(keys.into_iter().map(|k| k * 2).collect())
            }
        });
        let n = MAX_BATCH as u32 + 6;
        let got = futures_util::future::join_all((0..n).map(|k| c.call(k))).await;
        assert_eq!(got, (0..n).map(|k| Ok(k * 2)).collect::<Vec<_>>());
        assert_eq!(*sizes.lock().unwrap(), vec![MAX_BATCH, 6]);
        let got = futures_util::future::join_all([c.call(1), c.call(999)]).await;
        assert_eq!(got, vec![Err(StoreError::Backend("boom".into())); 2]);
        // Alone, a call goes at once, by itself.
        assert_eq!(c.call(4).await, Ok(8));
        assert_eq!(sizes.lock().unwrap().last(), Some(&1));
    }

    #[tokio::test]
    async fn a_batch_answering_too_few_values_fails_its_calls() {
        let c = Coalesced::new(|_keys: Vec<u32>| async { Ok(vec![1u32]) });
        let got = futures_util::future::join_all([c.call(1), c.call(2)]).await;
        assert!(got.iter().all(|r| r.is_err()), "{got:?}");
    }
}

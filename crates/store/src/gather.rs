//! Gathering what many tasks queue at the same moment into one batch (the
//! batched bus requests of presence-nats, the notifier's store calls).
//!
//! The gatherer takes the first item queued, then lets the running tasks
//! queue theirs: it yields to them and takes what came, again while each
//! round brings more (at most [`ROUNDS`]). No timer: an idle gatherer sends
//! the first item after a few yields, microseconds, and a burst (a change's
//! ten NOTIFY tasks, woken together) leaves as one batch even when the
//! tasks run on another worker thread.

use tokio::sync::mpsc::UnboundedReceiver;

/// Most yields before a batch closes.
pub const ROUNDS: usize = 8;

/// The next batch from `rx`: at least one item (`None` once the channel is
/// closed and empty), at most `max_items`, closed early once the items'
/// `size` reaches `max_size`.
pub async fn gather<T>(
    rx: &mut UnboundedReceiver<T>,
    max_items: usize,
    max_size: usize,
    size: impl Fn(&T) -> usize,
) -> Option<Vec<T>> {
    let first = rx.recv().await?;
    let mut total = size(&first);
    let mut items = vec![first];
    for _ in 0..ROUNDS {
        tokio::task::yield_now().await;
        let before = items.len();
        while items.len() < max_items && total < max_size {
            match rx.try_recv() {
                Ok(x) => {
                    total += size(&x);
                    items.push(x);
                }
                Err(_) => break,
            }
        }
        if items.len() == before || items.len() >= max_items || total >= max_size {
            break;
        }
    }
    Some(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_batch_takes_what_is_queued_up_to_its_bounds() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
        for i in 0..10 {
            tx.send(i).unwrap();
        }
        assert_eq!(
            gather(&mut rx, 4, usize::MAX, |_| 1).await,
            Some(vec![0, 1, 2, 3])
        );
        // Closed by size: 4 + 5 reaches 9.
        assert_eq!(gather(&mut rx, 64, 9, |x| *x).await, Some(vec![4, 5]));
        assert_eq!(
            gather(&mut rx, 64, usize::MAX, |_| 1).await,
            Some(vec![6, 7, 8, 9])
        );
        drop(tx);
        assert_eq!(gather(&mut rx, 64, usize::MAX, |_| 1).await, None);
    }

    /// Items queued by tasks that run while the gatherer yields join the
    /// batch of the first one.
    #[tokio::test]
    async fn tasks_running_meanwhile_join_the_batch() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
        tx.send(0).unwrap();
        for i in 1..6 {
            let tx = tx.clone();
            tokio::spawn(async move {
                tx.send(i).unwrap();
            });
        }
        let mut got = gather(&mut rx, 64, usize::MAX, |_| 1).await.unwrap();
        got.sort();
        assert_eq!(got, vec![0, 1, 2, 3, 4, 5]);
    }
}

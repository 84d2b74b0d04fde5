//! [`NatsTopics`]: [`Topics`] over core NATS publish/subscribe (at most
//! once, no JetStream): the compositors' change events to the `api` role.

use async_nats::Client;
use bytes::Bytes;
use futures_util::StreamExt;
use presence_store::{BusError, Topics, TOPIC_BACKLOG};
use tokio::sync::mpsc;

pub struct NatsTopics {
    client: Client,
}

impl NatsTopics {
    pub fn new(client: Client) -> NatsTopics {
        NatsTopics { client }
    }
}

#[async_trait::async_trait]
impl Topics for NatsTopics {
    async fn publish(&self, subject: &str, payload: Bytes) {
        // At most once: a message that cannot be handed to the client's
        // buffer is lost, as a subscriber that is not connected loses it.
        if let Err(e) = self.client.publish(subject.to_string(), payload).await {
            tracing::debug!(error = %e, subject, "topic message not published");
        }
    }

    async fn subscribe(&self, subject: &str) -> Result<mpsc::Receiver<Bytes>, BusError> {
        let mut sub = self
            .client
            .subscribe(subject.to_string())
            .await
            .map_err(|e| BusError::Backend(e.to_string()))?;
        // Make sure the server has the interest before returning, so a
        // publish after `subscribe` returns reaches this subscriber.
        self.client
            .flush()
            .await
            .map_err(|e| BusError::Backend(e.to_string()))?;
        let (tx, rx) = mpsc::channel(TOPIC_BACKLOG);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    m = sub.next() => match m {
                        Some(m) => {
                            if let Err(mpsc::error::TrySendError::Closed(_)) =
                                tx.try_send(m.payload)
                            {
                                break;
                            }
                        }
                        None => break,
                    },
                    () = tx.closed() => break,
                }
            }
            let _ = sub.unsubscribe().await;
        });
        Ok(rx)
    }
}

//! A message's attempt and the changes the worker writes: `sending` before the attempt,
//! the outcome after it, each written against the version read, and looked up again
//! when the store's answer was lost.

use std::sync::Arc;
use std::time::Duration;

use super::{LEASE_MARGIN, Worker, log_change};
use crate::delivery::{AfterFailure, DeliveryState};
use crate::queue::message::now_ms;
use crate::queue::{Message, MessageError, Placement, Status};

impl Worker {
    /// Marks the message `sending`, makes its attempt and records the outcome.
    pub(super) async fn send(
        &self,
        mut message: Message,
        entry: String,
        request: Arc<crate::jelou::FlowRequest>,
    ) {
        let Some(_permit) = self.paced.permit().await else {
            return;
        };
        message.set(Status::Sending);
        message.attempts += 1;
        if let Some(slot) = message.slot_ms.take() {
            tracing::debug!(id = %message.id, late_ms = now_ms().saturating_sub(slot), "sending on its reserved cell");
        }
        message.not_before_ms = 0;
        let lease = now_ms() + (self.paced.request_timeout() + LEASE_MARGIN).as_millis() as u64;
        let Some(version) = self
            .commit(&message, Placement::Leased(lease), Some(&entry))
            .await
        else {
            // Canceled, or another replica holding it came first.
            return;
        };
        message.version = version;
        let outcome = self.paced.attempt(request).await;
        let placement = match outcome {
            Ok(delivered) => {
                message.upstream = Some(delivered.body);
                message.error = None;
                message.set(Status::Sent);
                self.closed()
            }
            Err(failure) => {
                let error = MessageError::from_failure(&failure);
                match self
                    .paced
                    .after_failure(&failure, message.attempts, self.config.backoff_cap)
                {
                    AfterFailure::RetryIn(wait) => {
                        let at = (now_ms() + wait.as_millis() as u64).min(message.expires_ms);
                        message.not_before_ms = at;
                        message.error = Some(error);
                        message.set(Status::Queued);
                        Placement::Due(at)
                    }
                    AfterFailure::Final => {
                        message.error = Some(error);
                        message.set(match failure.delivery {
                            DeliveryState::NotSent => Status::Failed,
                            DeliveryState::Unknown => Status::Unknown,
                        });
                        self.closed()
                    }
                }
            }
        };
        // The outcome is written even through a short store outage, within the lease.
        let mut unanswered = false;
        for _ in 0..8 {
            let notice = message.notice(&self.subscribers);
            match self
                .queue
                .change(&message, placement, None, notice.as_ref())
                .await
            {
                Ok(Some(_)) => {
                    log_change(&message);
                    return;
                }
                // An earlier try whose answer was lost may have written it.
                Ok(None) if unanswered && self.written(&message).await.is_some() => {
                    log_change(&message);
                    return;
                }
                Ok(None) => {
                    tracing::warn!(
                        id = %message.id,
                        status = message.status.as_str(),
                        "queue: the message changed while its attempt was out (its lease passed, or it is gone); its outcome is not recorded"
                    );
                    return;
                }
                Err(error) => {
                    unanswered = true;
                    tracing::warn!(%error, id = %message.id, "queue: cannot record an attempt's outcome yet");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    }

    /// After a change whose answer was lost (the store timed out): its new version if
    /// the store holds it, `None` if it does not (or cannot be read now).
    async fn written(&self, message: &Message) -> Option<u64> {
        for _ in 0..8 {
            match self.queue.get(&message.id).await {
                Ok(Some(stored))
                    if stored.version == message.version + 1 && stored.status == message.status =>
                {
                    return Some(stored.version);
                }
                Ok(_) => return None,
                Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
        None
    }

    pub(super) fn closed(&self) -> Placement {
        Placement::Final(self.config.retention)
    }

    /// Writes a change; logs it when it was this worker's to make. `None`: another
    /// writer came first, or the store failed (the message keeps its last state).
    pub(super) async fn commit(
        &self,
        message: &Message,
        placement: Placement,
        entry: Option<&str>,
    ) -> Option<u64> {
        let notice = message.notice(&self.subscribers);
        match self
            .queue
            .change(message, placement, entry, notice.as_ref())
            .await
        {
            Ok(Some(version)) => {
                if !matches!(placement, Placement::Due(_)) || message.status != Status::Queued {
                    log_change(message);
                }
                Some(version)
            }
            Ok(None) => None,
            Err(error) => {
                // The answer may be lost while the change was made: look. (Not made, the
                // entry stays this replica's, and is taken over after the claim time.)
                let written = self.written(message).await;
                match written {
                    Some(_)
                        if !matches!(placement, Placement::Due(_))
                            || message.status != Status::Queued =>
                    {
                        log_change(message);
                    }
                    Some(_) => {}
                    None => {
                        tracing::warn!(%error, id = %message.id, "queue: cannot record a change")
                    }
                }
                written
            }
        }
    }
}

//! Each replica's callback sender: takes the notices that are due (holding each while it
//! tries), signs and POSTs them, and forgets, retries or gives up on each.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

use super::CallbacksConfig;
use crate::delivery::retry::backoff;
use crate::queue::message::now_ms;
use crate::queue::{Notice, QueueStore};

/// How often the sender looks for notices due.
const POLL: Duration = Duration::from_millis(200);
/// Notices tried at once by one replica.
const AT_ONCE: usize = 32;

/// What a try came to, as `jelou_relay_callbacks_total{result}` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// A 2xx: delivered.
    Delivered,
    /// Anything else, or no answer in time: tried again later.
    Failed,
    /// The last try failed, or the notice is too old: given up.
    GaveUp,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Failed => "failed",
            Outcome::GaveUp => "gave_up",
        }
    }
}

#[derive(Clone)]
pub struct Sender {
    queue: Arc<dyn QueueStore>,
    config: Arc<CallbacksConfig>,
    client: reqwest::Client,
}

impl Sender {
    /// `None` when no caller has a callback.
    pub fn new(
        queue: Arc<dyn QueueStore>,
        config: CallbacksConfig,
    ) -> Result<Option<Sender>, String> {
        if config.endpoints.is_empty() {
            return Ok(None);
        }
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.timeout)
            .user_agent(crate::jelou::request::USER_AGENT)
            .build()
            .map_err(|e| format!("cannot build the callback client: {e}"))?;
        Ok(Some(Sender {
            queue,
            config: Arc::new(config),
            client,
        }))
    }

    /// Runs until `draining` turns true; the tries out then end within their timeout.
    pub async fn run(self, mut draining: watch::Receiver<bool>) {
        let mut tries = JoinSet::new();
        loop {
            if *draining.borrow() {
                break;
            }
            while tries.try_join_next().is_some() {}
            let now = now_ms();
            // Held past one try's timeout, so no other replica takes it meanwhile.
            let hold = now + (self.config.timeout + Duration::from_secs(5)).as_millis() as u64;
            let room = AT_ONCE.saturating_sub(tries.len());
            let due = match self.queue.notices_due(now, room, hold).await {
                Ok(due) => due,
                Err(error) => {
                    tracing::debug!(%error, "callbacks: cannot read the notices due");
                    Vec::new()
                }
            };
            if let Ok(pending) = self.queue.notices_pending().await {
                metrics::gauge!(crate::metrics::CALLBACKS_PENDING).set(pending as f64);
            }
            for notice in due {
                let sender = self.clone();
                tries.spawn(async move { sender.deliver(notice).await });
            }
            tokio::select! {
                () = tokio::time::sleep(POLL) => {}
                _ = draining.changed() => {}
            }
        }
        while tries.join_next().await.is_some() {}
    }

    /// One try of `notice`, and what follows from it.
    async fn deliver(&self, mut notice: Notice) {
        let Some(endpoint) = self.config.endpoints.get(&notice.caller) else {
            // The caller no longer has a callback.
            let _ = self.queue.notice_done(&notice.id).await;
            return;
        };
        let timestamp = now_ms() / 1000;
        let signature = endpoint
            .secret
            .sign(&notice.id, timestamp, notice.body.as_bytes());
        let answer = self
            .client
            .post(endpoint.url.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", &notice.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(notice.body.clone())
            .send()
            .await;
        let host = endpoint.url.host_str().unwrap_or("").to_string();
        let failure = match answer {
            Ok(answer) if answer.status().is_success() => None,
            Ok(answer) => Some(format!("answered {}", answer.status())),
            Err(error) if error.is_timeout() => Some("no answer in time".to_string()),
            Err(_) => Some("could not connect, or the connection failed".to_string()),
        };
        notice.attempts += 1;
        let outcome = match failure {
            None => {
                tracing::info!(id = %notice.id, host, attempts = notice.attempts, "callback delivered");
                self.settle(&notice.id).await;
                Outcome::Delivered
            }
            Some(why) => {
                let age = Duration::from_millis(now_ms().saturating_sub(notice.created_ms));
                let wait = backoff(
                    notice.attempts,
                    self.config.backoff_base,
                    self.config.backoff_cap,
                );
                let last =
                    notice.attempts >= self.config.max_attempts || age + wait > self.config.max_age;
                if last {
                    tracing::warn!(id = %notice.id, host, attempts = notice.attempts, why, "callback given up");
                    self.settle(&notice.id).await;
                    Outcome::GaveUp
                } else {
                    tracing::info!(id = %notice.id, host, attempts = notice.attempts, why, wait_ms = wait.as_millis() as u64, "callback failed; trying again");
                    let at = now_ms() + wait.as_millis() as u64;
                    if let Err(error) = self.queue.notice_retry(&notice, at).await {
                        // Still held: it is tried again once the hold ends.
                        tracing::warn!(%error, id = %notice.id, "callbacks: cannot schedule a retry");
                    }
                    Outcome::Failed
                }
            }
        };
        metrics::counter!(crate::metrics::CALLBACKS, "result" => outcome.as_str()).increment(1);
    }

    async fn settle(&self, id: &str) {
        if let Err(error) = self.queue.notice_done(id).await {
            tracing::warn!(%error, id, "callbacks: cannot forget a settled notice; it may be sent again");
        }
    }
}

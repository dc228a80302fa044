//! Outbound rate limits (GCRA): per bot (its WhatsApp number's throughput) and per bot
//! and recipient (WhatsApp's pair limit), in this process (`gcra`) or shared by every
//! replica (Redis). A request waits for capacity up to a bound within its deadline; past
//! that it is refused with a time to come back.

use std::borrow::Cow;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

use super::gcra::Table;
use super::shared_limits::{Limit, SharedLimiter};
use super::{
    Delivered, DeliveryFailure, DeliveryFuture, DeliveryInner, FailureKind, Outbound, WaitQueue,
};
use crate::domain::RateSettings;
use crate::jelou::FlowRequest;
use crate::store::{FailureMode, RedisStore};

/// The limits in this process: every limit with the memory backend; with Redis, the
/// fallback while Redis is unreachable (`fail_open`), each limit divided by the
/// expected replica count.
#[derive(Debug)]
struct LocalLimits {
    per_bot: Table<String>,
    /// Keyed by bot and recipient, joined by a unit separator.
    per_recipient: Table<String>,
    share: u32,
}

impl LocalLimits {
    fn new(share: u32) -> Self {
        LocalLimits {
            per_bot: Table::new(),
            per_recipient: Table::new(),
            share,
        }
    }

    fn wait_for(&self, limit: Limit<'_>, rate: &RateSettings) -> Option<Duration> {
        let rate = divided(rate, self.share);
        match limit {
            Limit::Bot(alias) => self.per_bot.check(alias, &rate),
            Limit::Recipient { bot, to } => {
                self.per_recipient.check(&recipient_key(bot, to), &rate)
            }
        }
    }

    /// A cell of every limit, each at its next free time, when all of them come by
    /// `latest`: when the last is. `None`: one would come later (nothing spent, as in
    /// the shared limiter's one script).
    fn reserve_all(
        &self,
        limits: &[(Limit<'_>, RateSettings)],
        latest: Instant,
    ) -> Option<Instant> {
        let keyed: Vec<_> = limits
            .iter()
            .map(|(limit, rate)| {
                let rate = divided(rate, self.share);
                match *limit {
                    Limit::Bot(alias) => (&self.per_bot, Cow::Borrowed(alias), rate),
                    Limit::Recipient { bot, to } => (
                        &self.per_recipient,
                        Cow::Owned(recipient_key(bot, to)),
                        rate,
                    ),
                }
            })
            .collect();
        if keyed
            .iter()
            .any(|(table, key, rate)| table.next_free(key.as_ref(), rate) > latest)
        {
            return None;
        }
        keyed
            .iter()
            .try_fold(Instant::now(), |last, (table, key, rate)| {
                Some(last.max(table.reserve(key.as_ref(), rate, latest)?))
            })
    }
}

/// A recipient's key in this process's table: the bot and the recipient joined by a unit
/// separator. Pushed, not `format!`ed: this runs on every send, and the formatting
/// machinery cost 1,000 instructions a request (`bash benches/callgrind.sh relay`).
fn recipient_key(bot: &str, to: &str) -> String {
    let mut key = String::with_capacity(bot.len() + 1 + to.len());
    key.push_str(bot);
    key.push('\u{1f}');
    key.push_str(to);
    key
}

/// `rate` split across `share` replicas (burst rounded up, at least 1).
fn divided(rate: &RateSettings, share: u32) -> RateSettings {
    let share = share.max(1);
    RateSettings {
        rate_per_second: rate.rate_per_second / f64::from(share),
        burst: rate.burst.div_ceil(share).max(1),
    }
}

/// The limiters, shared by every request.
#[derive(Debug)]
pub struct Limits {
    local: LocalLimits,
    /// The budget every replica shares, in Redis.
    shared: Option<SharedLimiter>,
    recipients: RateSettings,
    max_wait: Duration,
    queue: WaitQueue,
}

impl Limits {
    pub fn new(recipients: &RateSettings, max_wait: Duration, queue: WaitQueue) -> Self {
        Limits {
            local: LocalLimits::new(1),
            shared: None,
            recipients: *recipients,
            max_wait,
            queue,
        }
    }

    /// Limits kept in Redis, with local ones (each divided by the expected replicas)
    /// for when Redis cannot be reached and the failure mode is `fail_open`.
    pub fn shared(
        recipients: &RateSettings,
        max_wait: Duration,
        queue: WaitQueue,
        store: Arc<RedisStore>,
    ) -> Self {
        Limits {
            local: LocalLimits::new(store.expected_replicas),
            shared: Some(SharedLimiter::new(store)),
            recipients: *recipients,
            max_wait,
            queue,
        }
    }

    /// `Ok(None)`: a cell of `limit` (at `rate`) was taken. `Ok(Some(wait))`: none is
    /// free for `wait`.
    async fn wait_for(
        &self,
        limit: Limit<'_>,
        rate: &RateSettings,
    ) -> Result<Option<Duration>, DeliveryFailure> {
        let Some(shared) = &self.shared else {
            return Ok(self.local.wait_for(limit, rate));
        };
        // Boxed: the Redis call's state is large, and inline it would make every
        // request's future (memory backend included) that large.
        match Box::pin(shared.check(limit, rate)).await {
            Ok(wait) => Ok(wait),
            Err(error) => {
                let mode = shared.store().failure_mode;
                crate::store::count_unavailable("rate_limit", mode);
                match mode {
                    FailureMode::FailOpen => {
                        tracing::debug!(%error, "rate limit checked locally: the shared store is unreachable");
                        Ok(self.local.wait_for(limit, rate))
                    }
                    FailureMode::FailClosed => {
                        tracing::warn!(%error, "send refused: the shared rate-limit store is unreachable (fail_closed)");
                        Err(DeliveryFailure::overloaded(
                            "the shared rate-limit store is unreachable; nothing was sent, retry shortly",
                        ))
                    }
                }
            }
        }
    }

    /// When `request` may go under both its recipient's and its bot's limits, with a
    /// cell of each reserved for then; `None` when that would be after `latest` (and
    /// nothing is spent).
    pub async fn pace(
        &self,
        request: &FlowRequest,
        latest: Instant,
    ) -> Result<Option<Instant>, DeliveryFailure> {
        let bot = request.bot.alias.as_str();
        let to = request.recipient.as_str();
        let limits = [
            (Limit::Recipient { bot, to }, self.recipients),
            (Limit::Bot(bot), request.bot.rate),
        ];
        let Some(shared) = &self.shared else {
            return Ok(self.local.reserve_all(&limits, latest));
        };
        match Box::pin(shared.reserve(&limits, latest)).await {
            Ok(at) => Ok(at),
            Err(error) => {
                let mode = shared.store().failure_mode;
                crate::store::count_unavailable("rate_limit", mode);
                match mode {
                    FailureMode::FailOpen => Ok(self.local.reserve_all(&limits, latest)),
                    FailureMode::FailClosed => {
                        tracing::warn!(%error, "queued send waits: the shared rate-limit store is unreachable (fail_closed)");
                        Err(DeliveryFailure::overloaded(
                            "the shared rate-limit store is unreachable",
                        ))
                    }
                }
            }
        }
    }

    /// Takes one cell of `limit`, waiting while the wait fits in the budget.
    async fn acquire(
        &self,
        what: &str,
        deadline: Instant,
        limit: Limit<'_>,
        rate: &RateSettings,
    ) -> Result<(), DeliveryFailure> {
        loop {
            let Some(wait) = self.wait_for(limit, rate).await? else {
                return Ok(());
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            if wait > self.max_wait.min(remaining) {
                metrics::counter!(crate::metrics::RATE_LIMIT_REJECTIONS, "limit" => what.to_string())
                    .increment(1);
                return Err(DeliveryFailure::refused(
                    FailureKind::RateLimited,
                    format!("the {what} rate limit is reached; retry after the given time"),
                    Some(wait),
                ));
            }
            let _slot = self.queue.enter().ok_or_else(|| {
                metrics::counter!(crate::metrics::SHED, "where" => "rate_limit_queue").increment(1);
                DeliveryFailure::overloaded(
                    "too many requests are waiting for capacity; retry shortly",
                )
            })?;
            tracing::debug!(
                what,
                wait_ms = wait.as_millis() as u64,
                "waiting for rate-limit capacity"
            );
            tokio::time::sleep(wait).await;
        }
    }
}

#[derive(Clone, Debug)]
pub struct RateLimitLayer {
    limits: Arc<Limits>,
}

impl RateLimitLayer {
    pub fn new(limits: Arc<Limits>) -> Self {
        RateLimitLayer { limits }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;
    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit {
            inner,
            limits: self.limits.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct RateLimit<S> {
    inner: S,
    limits: Arc<Limits>,
}

impl<S: DeliveryInner> Service<Outbound> for RateLimit<S> {
    type Response = Delivered;
    type Error = DeliveryFailure;
    type Future = DeliveryFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, outbound: Outbound) -> Self::Future {
        let inner = self.inner.clone();
        let limits = self.limits.clone();
        Box::pin(async move {
            // The pair limit first: it is the stricter one, and a refusal there must not
            // spend the bot's capacity.
            let request = outbound.request.clone();
            let bot = request.bot.alias.as_str();
            let to = request.recipient.as_str();
            limits
                .acquire(
                    "recipient",
                    outbound.deadline,
                    Limit::Recipient { bot, to },
                    &limits.recipients,
                )
                .await?;
            limits
                .acquire("bot", outbound.deadline, Limit::Bot(bot), &request.bot.rate)
                .await?;
            inner.oneshot(outbound).await
        })
    }
}

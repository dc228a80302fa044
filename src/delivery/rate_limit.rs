//! Outbound rate limits (GCRA, governor): per bot (its WhatsApp number's throughput) and
//! per bot and recipient (WhatsApp's pair limit). A request waits for capacity up to a
//! bound within its deadline; past that it is refused with a time to come back.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

use super::{
    Delivered, DeliveryFailure, DeliveryFuture, DeliveryInner, DeliveryState, FailureKind,
    Outbound, WaitQueue,
};
use crate::config::{BotRegistry, RateSettings};

/// A GCRA quota for `rate`; settings are validated positive at start-up.
pub fn quota(rate: &RateSettings) -> Quota {
    let period = Duration::from_secs_f64(1.0 / rate.rate_per_second.max(1e-9));
    let burst = NonZeroU32::new(rate.burst.max(1)).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(period.max(Duration::from_nanos(1)))
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(burst)
}

/// The limiters, shared by every request.
#[derive(Debug)]
pub struct Limits {
    per_bot: HashMap<String, DefaultDirectRateLimiter>,
    per_recipient: DefaultKeyedRateLimiter<(String, String)>,
    clock: DefaultClock,
    max_wait: Duration,
    queue: WaitQueue,
    checks: AtomicU64,
}

impl Limits {
    pub fn new(
        bots: &BotRegistry,
        recipients: &RateSettings,
        max_wait: Duration,
        queue: WaitQueue,
    ) -> Self {
        let per_bot = bots
            .aliases()
            .filter_map(|alias| bots.resolve(Some(alias)).ok())
            .map(|bot| (bot.alias.clone(), RateLimiter::direct(quota(&bot.rate))))
            .collect();
        Limits {
            per_bot,
            per_recipient: RateLimiter::keyed(quota(recipients)),
            clock: DefaultClock::default(),
            max_wait,
            queue,
            checks: AtomicU64::new(0),
        }
    }

    fn wait_for_recipient(&self, key: &(String, String)) -> Option<Duration> {
        // Forget recipients idle long enough to be back at full burst, now and then.
        if self.checks.fetch_add(1, Ordering::Relaxed) % 4096 == 4095 {
            self.per_recipient.retain_recent();
            self.per_recipient.shrink_to_fit();
        }
        self.per_recipient
            .check_key(key)
            .err()
            .map(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    fn wait_for_bot(&self, alias: &str) -> Option<Duration> {
        let limiter = self.per_bot.get(alias)?;
        limiter
            .check()
            .err()
            .map(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Takes one cell from `check`, waiting while the wait fits in the budget.
    async fn acquire(
        &self,
        what: &str,
        deadline: Instant,
        check: impl Fn() -> Option<Duration>,
    ) -> Result<(), DeliveryFailure> {
        loop {
            let Some(wait) = check() else { return Ok(()) };
            let remaining = deadline.saturating_duration_since(Instant::now());
            if wait > self.max_wait.min(remaining) {
                metrics::counter!(crate::metrics::RATE_LIMIT_REJECTIONS, "limit" => what.to_string())
                    .increment(1);
                return Err(refused(
                    FailureKind::RateLimited,
                    format!("the {what} rate limit is reached; retry after the given time"),
                    Some(wait),
                ));
            }
            let _slot = self.queue.enter().ok_or_else(|| {
                metrics::counter!(crate::metrics::SHED, "where" => "rate_limit_queue").increment(1);
                refused(
                    FailureKind::Overloaded,
                    "too many requests are waiting for capacity; retry shortly".into(),
                    Some(Duration::from_secs(1)),
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

/// A refusal before anything was sent.
pub fn refused(
    kind: FailureKind,
    detail: String,
    retry_after: Option<Duration>,
) -> DeliveryFailure {
    DeliveryFailure {
        kind,
        delivery: DeliveryState::NotSent,
        attempts: 0,
        detail,
        upstream: None,
        retry_after,
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
            let pair = (
                outbound.bot.alias.clone(),
                outbound.recipient.as_str().to_string(),
            );
            limits
                .acquire("recipient", outbound.deadline, || {
                    limits.wait_for_recipient(&pair)
                })
                .await?;
            let alias = outbound.bot.alias.clone();
            limits
                .acquire("bot", outbound.deadline, || limits.wait_for_bot(&alias))
                .await?;
            inner.oneshot(outbound).await
        })
    }
}

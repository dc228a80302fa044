//! Which failures are retried, how long to wait, and the budget shared by all requests.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tower::retry::budget::{Budget, TpsBudget};

use super::{Delivered, DeliveryFailure, DeliveryState, FailureKind, Outbound};
use super::{DeliveryConfig, UnsafeRetry};

/// The retry policy, for `tower::retry::Retry`.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    settings: Arc<RetrySettings>,
    budget: Arc<TpsBudget>,
}

#[derive(Debug)]
struct RetrySettings {
    max_attempts: u32,
    base: Duration,
    cap: Duration,
    retry_after_cap: Duration,
    unsafe_classes: Vec<UnsafeRetry>,
}

impl RetryPolicy {
    pub fn new(config: &DeliveryConfig) -> Self {
        RetryPolicy {
            settings: Arc::new(RetrySettings {
                max_attempts: config.max_attempts,
                base: config.backoff_base,
                cap: config.backoff_cap,
                retry_after_cap: config.retry_after_cap,
                unsafe_classes: config.retry_unsafe.clone(),
            }),
            budget: Arc::new(TpsBudget::new(
                Duration::from_secs(10),
                config.retry_budget_min_per_second,
                config.retry_budget_percent / 100.0,
            )),
        }
    }
}

/// Whether `failure` may be retried: by default only what provably did not reach Jelou
/// or that Jelou explicitly refused for now; unknown outcomes only when opted in.
pub fn is_retryable(failure: &DeliveryFailure, unsafe_classes: &[UnsafeRetry]) -> bool {
    let status = failure.upstream.as_ref().map(|u| u.status);
    match (failure.delivery, failure.kind) {
        (DeliveryState::NotSent, FailureKind::Unavailable | FailureKind::RateLimited) => true,
        (DeliveryState::NotSent, _) => false,
        (DeliveryState::Unknown, kind) => {
            let class = match (kind, status) {
                (FailureKind::Unavailable, Some(500)) => UnsafeRetry::InternalServerError,
                (FailureKind::Unavailable, Some(502)) => UnsafeRetry::BadGateway,
                (FailureKind::Unavailable, Some(504)) => UnsafeRetry::GatewayTimeout,
                (FailureKind::DeadlineExceeded, _) => UnsafeRetry::Timeout,
                (FailureKind::Unavailable, None) => UnsafeRetry::ConnectionLost,
                _ => return false,
            };
            unsafe_classes.contains(&class)
        }
    }
}

/// Exponential backoff with full jitter: uniform in `[0, min(cap, base * 2^(retry-1))]`.
pub fn backoff(retry: u32, base: Duration, cap: Duration) -> Duration {
    let exponent = retry.saturating_sub(1).min(30);
    let ceiling = base.saturating_mul(1u32 << exponent).min(cap);
    ceiling.mul_f64(fastrand::f64())
}

impl RetryPolicy {
    /// How long a queued message waits before its next attempt after `failure` (its
    /// `attempts`-th), or `None` when the failure is final. The classification, the
    /// backoff and the budget are the synchronous path's; `max_attempts` is not (a
    /// queued message is bounded by its expiry), and the backoff is capped at `cap`.
    pub fn queued_retry(
        &self,
        failure: &DeliveryFailure,
        attempts: u32,
        cap: Duration,
    ) -> Option<Duration> {
        let settings = &self.settings;
        if attempts == 1 {
            self.budget.deposit();
        }
        if !is_retryable(failure, &settings.unsafe_classes) {
            return None;
        }
        let hint = failure.retry_after.unwrap_or_default();
        let mut wait = backoff(attempts, settings.base, cap).max(hint);
        if !self.budget.withdraw() {
            // Out of budget: the message waits the longest backoff instead of giving up.
            metrics::counter!(crate::metrics::RETRY_BUDGET_EXHAUSTED).increment(1);
            wait = wait.max(cap);
        }
        let kind = match failure.kind {
            FailureKind::RateLimited => "rate_limited",
            _ => "unavailable",
        };
        metrics::counter!(crate::metrics::RETRIES, "kind" => kind).increment(1);
        Some(wait)
    }
}

impl tower::retry::Policy<Outbound, Delivered, DeliveryFailure> for RetryPolicy {
    type Future = Pin<Box<dyn Future<Output = ()> + Send>>;

    fn retry(
        &mut self,
        outbound: &mut Outbound,
        result: &mut Result<Delivered, DeliveryFailure>,
    ) -> Option<Self::Future> {
        let attempts = outbound.journal.attempts();
        if attempts == 1 {
            // Every request earns the budget its share of retries.
            self.budget.deposit();
        }
        let failure = result.as_mut().err()?;
        let settings = &self.settings;
        if !is_retryable(failure, &settings.unsafe_classes) || attempts >= settings.max_attempts {
            return None;
        }
        let hint = failure.retry_after;
        if hint.is_some_and(|hint| hint > settings.retry_after_cap) {
            tracing::debug!(
                ?hint,
                "Retry-After is longer than retry_after_cap: answering now"
            );
            return None;
        }
        let wait = backoff(attempts, settings.base, settings.cap).max(hint.unwrap_or_default());
        let remaining = outbound.deadline.saturating_duration_since(Instant::now());
        if wait >= remaining {
            // Sleeping would pass the deadline: tell the caller when to come back instead.
            failure.retry_after = Some(failure.retry_after.unwrap_or(wait).max(wait));
            return None;
        }
        if !self.budget.withdraw() {
            metrics::counter!(crate::metrics::RETRY_BUDGET_EXHAUSTED).increment(1);
            tracing::warn!("retry budget exhausted: not retrying");
            failure
                .detail
                .push_str(" (the relay's retry budget is exhausted)");
            return None;
        }
        let kind = match failure.kind {
            FailureKind::RateLimited => "rate_limited",
            _ => "unavailable",
        };
        metrics::counter!(crate::metrics::RETRIES, "kind" => kind).increment(1);
        tracing::info!(
            attempt = attempts,
            wait_ms = wait.as_millis() as u64,
            kind = ?failure.kind,
            "retrying: the failed attempt provably did not send"
        );
        Some(Box::pin(tokio::time::sleep(wait)))
    }

    fn clone_request(&mut self, outbound: &Outbound) -> Option<Outbound> {
        Some(outbound.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jelou::UpstreamError;

    fn failure(kind: FailureKind, delivery: DeliveryState, status: Option<u16>) -> DeliveryFailure {
        DeliveryFailure {
            kind,
            delivery,
            attempts: 1,
            detail: String::new(),
            upstream: status.map(|status| UpstreamError {
                status,
                code: None,
                description: None,
            }),
            retry_after: None,
        }
    }

    #[test]
    fn only_provably_unsent_failures_are_retried_by_default() {
        use DeliveryState::*;
        use FailureKind::*;
        let none: &[UnsafeRetry] = &[];
        assert!(
            is_retryable(&failure(Unavailable, NotSent, None), none),
            "connect"
        );
        assert!(is_retryable(
            &failure(Unavailable, NotSent, Some(503)),
            none
        ));
        assert!(is_retryable(
            &failure(RateLimited, NotSent, Some(429)),
            none
        ));
        assert!(!is_retryable(&failure(Rejected, NotSent, Some(400)), none));
        assert!(!is_retryable(
            &failure(AuthFailed, NotSent, Some(401)),
            none
        ));
        for status in [500, 502, 504] {
            assert!(!is_retryable(
                &failure(Unavailable, Unknown, Some(status)),
                none
            ));
        }
        assert!(!is_retryable(
            &failure(DeadlineExceeded, Unknown, None),
            none
        ));
        assert!(!is_retryable(&failure(Unavailable, Unknown, None), none));
    }

    #[test]
    fn unsafe_classes_are_opt_in_one_by_one() {
        use DeliveryState::*;
        use FailureKind::*;
        let opted = [UnsafeRetry::BadGateway, UnsafeRetry::Timeout];
        assert!(is_retryable(
            &failure(Unavailable, Unknown, Some(502)),
            &opted
        ));
        assert!(is_retryable(
            &failure(DeadlineExceeded, Unknown, None),
            &opted
        ));
        assert!(!is_retryable(
            &failure(Unavailable, Unknown, Some(500)),
            &opted
        ));
        assert!(!is_retryable(&failure(Unavailable, Unknown, None), &opted));
        // A 2xx that could not be read is never retried.
        assert!(!is_retryable(
            &failure(Unavailable, Unknown, Some(200)),
            &opted
        ));
    }

    #[test]
    fn backoff_is_bounded_by_base_growth_and_cap() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(2);
        for _ in 0..1000 {
            assert!(backoff(1, base, cap) <= base);
            assert!(backoff(2, base, cap) <= base * 2);
            assert!(backoff(3, base, cap) <= base * 4);
            assert!(backoff(40, base, cap) <= cap);
        }
    }
}

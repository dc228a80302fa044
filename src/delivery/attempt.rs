//! The innermost layer: one upstream attempt, recorded in the journal, bounded by the
//! per-attempt timeout and by what is left of the deadline.

use std::task::{Context, Poll};
use std::time::Duration;

use metrics::{Counter, Histogram};
use tower::{Layer, Service, ServiceExt};
use tracing::Instrument;

use super::{
    Delivered, DeliveryFailure, DeliveryFuture, DeliveryInner, DeliveryState, FailureKind, Outbound,
};

/// The attempt metrics' handles, kept per thread (a lookup by name and labels builds
/// and hashes a key and takes the registry's lock).
struct AttemptMetrics {
    sent: Counter,
    not_sent: Counter,
    unknown: Counter,
    duration: Histogram,
}

impl AttemptMetrics {
    fn new() -> Self {
        let count = |outcome: &'static str| metrics::counter!(crate::metrics::UPSTREAM_ATTEMPTS, "outcome" => outcome);
        AttemptMetrics {
            sent: count("sent"),
            not_sent: count(DeliveryState::NotSent.as_str()),
            unknown: count(DeliveryState::Unknown.as_str()),
            duration: metrics::histogram!(crate::metrics::UPSTREAM_DURATION),
        }
    }

    /// The counter of an attempt that failed with `failure` (`None`: it was sent).
    fn count(&self, failure: Option<DeliveryState>) -> &Counter {
        match failure {
            None => &self.sent,
            Some(DeliveryState::NotSent) => &self.not_sent,
            Some(DeliveryState::Unknown) => &self.unknown,
        }
    }
}

thread_local! {
    static ATTEMPT_METRICS: AttemptMetrics = AttemptMetrics::new();
}

#[derive(Clone, Debug)]
pub struct AttemptLayer {
    timeout: Duration,
}

impl AttemptLayer {
    pub fn new(timeout: Duration) -> Self {
        AttemptLayer { timeout }
    }
}

impl<S> Layer<S> for AttemptLayer {
    type Service = Attempt<S>;
    fn layer(&self, inner: S) -> Attempt<S> {
        Attempt {
            inner,
            timeout: self.timeout,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Attempt<S> {
    inner: S,
    timeout: Duration,
}

impl<S: DeliveryInner> Service<Outbound> for Attempt<S> {
    type Response = Delivered;
    type Error = DeliveryFailure;
    type Future = DeliveryFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, outbound: Outbound) -> Self::Future {
        let inner = self.inner.clone();
        let timeout = self.timeout;
        let journal = outbound.journal.clone();
        let number = journal.attempt_started();
        let span = tracing::info_span!(
            "attempt",
            number,
            outcome = tracing::field::Empty,
            upstream_status = tracing::field::Empty
        );
        Box::pin(
            async move {
                let started = std::time::Instant::now();
                let until = outbound.deadline.min(tokio::time::Instant::now() + timeout);
                let result = match tokio::time::timeout_at(until, inner.oneshot(outbound)).await {
                    Ok(result) => result,
                    Err(_elapsed) => Err(DeliveryFailure {
                        kind: FailureKind::DeadlineExceeded,
                        delivery: DeliveryState::Unknown,
                        attempts: number,
                        detail: "Jelou did not answer in time after the request was sent".into(),
                        upstream: None,
                        retry_after: None,
                    }),
                };
                let (failure, upstream_status) = match &result {
                    Ok(delivered) => (None, Some(delivered.status)),
                    Err(failure) => (
                        Some(failure.delivery),
                        failure.upstream.as_ref().map(|u| u.status),
                    ),
                };
                journal.attempt_finished(failure);
                let outcome = failure.map_or("sent", DeliveryState::as_str);
                // One write to the span (each write re-serializes its fields).
                tracing::record_all!(tracing::Span::current(), outcome, upstream_status);
                ATTEMPT_METRICS.with(|handles| {
                    handles.count(failure).increment(1);
                    handles.duration.record(started.elapsed().as_secs_f64());
                });
                tracing::debug!("attempt finished");
                result
            }
            .instrument(span),
        )
    }
}

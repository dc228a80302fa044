//! The innermost layer: one call to the upstream, recorded in the journal, bounded by
//! the per-attempt timeout and by what is left of the deadline, its verdict turned into
//! the message's outcome by [`failure::from_verdict`].

use std::sync::LazyLock;
use std::task::{Context, Poll};
use std::time::Duration;

use metrics::{Counter, Histogram};
use tower::{Layer, Service, ServiceExt};
use tracing::Instrument;

use super::failure::{self, DeliveryFailure, DeliveryState};
use super::{Delivered, DeliveryFuture, Outbound, Upstream};

/// The attempt metrics, registered once.
struct AttemptMetrics {
    sent: Counter,
    not_sent: Counter,
    unknown: Counter,
    duration: Histogram,
}

static ATTEMPT_METRICS: LazyLock<AttemptMetrics> = LazyLock::new(|| {
    let count = |outcome: &'static str| metrics::counter!(crate::metrics::UPSTREAM_ATTEMPTS, "outcome" => outcome);
    AttemptMetrics {
        sent: count("sent"),
        not_sent: count(DeliveryState::NotSent.as_str()),
        unknown: count(DeliveryState::Unknown.as_str()),
        duration: metrics::histogram!(crate::metrics::UPSTREAM_DURATION),
    }
});

impl AttemptMetrics {
    /// The counter of an attempt that failed with `failure` (`None`: it was sent).
    fn count(&self, failure: Option<DeliveryState>) -> &Counter {
        match failure {
            None => &self.sent,
            Some(DeliveryState::NotSent) => &self.not_sent,
            Some(DeliveryState::Unknown) => &self.unknown,
        }
    }
}

/// Jelou's call as OpenTelemetry's `url.template` names it.
const URL_TEMPLATE: &str = "/v1/bots/{botId}/users/{userId}/flow_message";
const CLIENT_SPAN_NAME: &str = "POST /v1/bots/{botId}/users/{userId}/flow_message";

/// An attempt's span. With an exporter it follows OpenTelemetry's HTTP conventions: a
/// CLIENT span whose attributes never carry the recipient's digits (the path's template,
/// not the path). Without one, only lines written inside an attempt read it, and at the
/// `info` level none is (the sandbox's line then carries the request's span), so it is
/// a `debug` span: at `info` it is never made. Made, entered and closed for nothing it
/// cost 2,100 instructions a request (153,517 → 151,446, `bash benches/callgrind.sh
/// relay` on profiling builds, 2026-12-02).
fn attempt_span(number: u32, url: &url::Url, exported: bool) -> tracing::Span {
    if !exported {
        return tracing::debug_span!(
            "attempt",
            number,
            outcome = tracing::field::Empty,
            upstream_status = tracing::field::Empty,
        );
    }
    tracing::info_span!(
        "attempt",
        number,
        outcome = tracing::field::Empty,
        upstream_status = tracing::field::Empty,
        otel.name = CLIENT_SPAN_NAME,
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        http.request.method = "POST",
        server.address = url.host_str().unwrap_or_default(),
        server.port = url.port_or_known_default(),
        url.template = URL_TEMPLATE,
        http.response.status_code = tracing::field::Empty,
    )
}

#[derive(Clone, Debug)]
pub struct AttemptLayer {
    timeout: Duration,
    exported: bool,
}

impl AttemptLayer {
    /// `exported`: whether spans go to a trace exporter, which alone reads their
    /// OpenTelemetry attributes.
    pub fn new(timeout: Duration, exported: bool) -> Self {
        AttemptLayer { timeout, exported }
    }
}

impl<S> Layer<S> for AttemptLayer {
    type Service = Attempt<S>;
    fn layer(&self, upstream: S) -> Attempt<S> {
        Attempt {
            upstream,
            timeout: self.timeout,
            exported: self.exported,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Attempt<S> {
    upstream: S,
    timeout: Duration,
    exported: bool,
}

impl<S: Upstream> Service<Outbound> for Attempt<S> {
    type Response = Delivered;
    type Error = DeliveryFailure;
    type Future = DeliveryFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, outbound: Outbound) -> Self::Future {
        let upstream = self.upstream.clone();
        let timeout = self.timeout;
        let exported = self.exported;
        let journal = outbound.journal.clone();
        let number = journal.attempt_started();
        let span = attempt_span(number, &outbound.request.url, exported);
        Box::pin(
            async move {
                let started = std::time::Instant::now();
                let until = outbound.deadline.min(tokio::time::Instant::now() + timeout);
                let call = upstream.oneshot(outbound.request);
                let result = match tokio::time::timeout_at(until, call).await {
                    Ok(Ok(verdict)) => failure::from_verdict(verdict),
                    Err(_elapsed) => Err(DeliveryFailure::attempt_timed_out()),
                };
                let (failed, upstream_status) = match &result {
                    Ok(delivered) => (None, Some(delivered.status)),
                    Err(failure) => (
                        Some(failure.delivery),
                        failure.upstream.as_ref().map(|u| u.status),
                    ),
                };
                journal.attempt_finished(failed);
                let outcome = failed.map_or("sent", DeliveryState::as_str);
                let span = tracing::Span::current();
                tracing::record_all!(span, outcome, upstream_status);
                if exported {
                    tracing::record_all!(
                        span,
                        http.response.status_code = upstream_status,
                        otel.status_code = failed.is_some().then_some("error"),
                    );
                }
                let metrics = &*ATTEMPT_METRICS;
                metrics.count(failed).increment(1);
                metrics.duration.record(started.elapsed().as_secs_f64());
                tracing::debug!("attempt finished");
                result
            }
            .instrument(span),
        )
    }
}

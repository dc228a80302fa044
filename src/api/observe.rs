//! One middleware for what every request leaves behind: its span (with the W3C trace it
//! belongs to), the request metrics, and one `request finished` log line.
//!
//! The span is written to as few times as possible: a JSON log layer serializes a span's
//! fields again on every `record`, so the handler hands what it learnt (the outcome,
//! Jelou's status, the attempts) back in the response's extensions, and everything is
//! recorded at once when the answer is ready.

use std::cell::RefCell;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use http::StatusCode;
use metrics::{Counter, Gauge, Histogram, SharedString};
use tower::{Layer, Service};
use tracing::Span;
use tracing::instrument::{Instrument, Instrumented};

use super::auth::Authenticated;
use super::request_id;
use super::trace_context::TraceContext;

/// How a request ended, as far as the handler knows; read by [`Observe`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestOutcome {
    /// `sent`, `validated`, `replayed`, `refused`, `not_sent` or `unknown`.
    pub outcome: &'static str,
    pub upstream_status: Option<u16>,
    pub attempts: Option<u32>,
}

impl RequestOutcome {
    pub fn new(outcome: &'static str) -> Self {
        RequestOutcome {
            outcome,
            ..RequestOutcome::default()
        }
    }
}

/// The [`Layer`] of [`Observe`].
#[derive(Clone, Copy, Default)]
pub struct ObserveLayer;

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe { inner }
    }
}

/// Opens the request span, continues the caller's trace, counts and times the request,
/// and writes the `request finished` line. A plain service, so its future is the inner
/// service's, unboxed (axum's `from_fn` would box it and the service it hands on).
#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
}

impl<S, B> Service<Request> for Observe<S>
where
    S: Service<Request, Response = http::Response<B>, Error = Infallible>,
{
    type Response = http::Response<B>;
    type Error = Infallible;
    type Future = ObserveFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let observing = Observing::start(&mut request);
        let span = observing.span.clone();
        let inner = span.in_scope(|| self.inner.call(request));
        ObserveFuture {
            inner: inner.instrument(span),
            observing: Some(observing),
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner service's future, in the request span.
    pub struct ObserveFuture<F> {
        #[pin]
        inner: Instrumented<F>,
        observing: Option<Observing>,
    }
}

impl<F, B> Future for ObserveFuture<F>
where
    F: Future<Output = Result<http::Response<B>, Infallible>>,
{
    type Output = Result<http::Response<B>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(response) = ready!(this.inner.poll(cx));
        if let Some(observing) = this.observing.take() {
            observing.finish(&response);
        }
        Poll::Ready(Ok(response))
    }
}

/// A request being observed: its span, start, route and in-flight count.
struct Observing {
    started: Instant,
    span: Span,
    route: SharedString,
    in_flight: InFlight,
}

impl Observing {
    fn start(request: &mut Request) -> Observing {
        let started = Instant::now();
        let incoming = request
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(TraceContext::parse);
        // Without an exporter the relay's own context is the caller's trace under a new
        // span id (or a new trace); with one, it is the exported span's.
        let mut context = incoming
            .as_ref()
            .map_or_else(TraceContext::start, TraceContext::child);
        let span = tracing::info_span!(
            "request",
            request_id = request_id::of(request),
            method = request.method().as_str(),
            path = request.uri().path(),
            trace_id = context.trace_id.as_str(),
            caller = tracing::field::Empty,
            bot = tracing::field::Empty,
            to = tracing::field::Empty,
            outcome = tracing::field::Empty,
            upstream_status = tracing::field::Empty,
            attempts = tracing::field::Empty,
            status = tracing::field::Empty,
            latency_ms = tracing::field::Empty,
        );
        if let Some(parent) = incoming.as_ref() {
            parent.adopt(&span);
        }
        if let Some(exported) = TraceContext::of_span(&span) {
            span.record("trace_id", exported.trace_id.as_str());
            context = exported;
        }
        request.extensions_mut().insert(context);
        let route = request
            .extensions()
            .get::<MatchedPath>()
            .map_or(SharedString::const_str("unmatched"), |p| {
                route_label(p.as_str())
            });
        Observing {
            started,
            span,
            route,
            in_flight: InFlight::enter(),
        }
    }

    fn finish<B>(self, response: &http::Response<B>) {
        drop(self.in_flight);
        let elapsed = self.started.elapsed();
        let caller = response.extensions().get::<Authenticated>();
        let outcome = response.extensions().get::<RequestOutcome>();
        tracing::record_all!(
            self.span,
            caller = caller.map(Authenticated::name),
            outcome = outcome.map(|o| o.outcome),
            upstream_status = outcome.and_then(|o| o.upstream_status),
            attempts = outcome.and_then(|o| o.attempts),
            status = response.status().as_u16(),
            latency_ms = elapsed.as_secs_f64() * 1000.0,
        );
        self.span.in_scope(|| tracing::info!("request finished"));

        record_request(
            self.route,
            response.status(),
            caller.map_or("none", Authenticated::name),
            elapsed.as_secs_f64(),
        );
    }
}

/// The handles of one label set of the request metrics.
struct RequestHandles {
    route: SharedString,
    status: StatusCode,
    caller: Box<str>,
    count: Counter,
    duration: Histogram,
}

/// Label sets kept per thread; past this many (never, with the relay's routes, codes
/// and callers) metrics are looked up on each request.
const CACHED_LABEL_SETS: usize = 512;

thread_local! {
    // Looking a metric up by name and labels builds and hashes a key and takes the
    // registry's lock on every request; the handles are kept per worker thread instead.
    static REQUEST_HANDLES: RefCell<Vec<RequestHandles>> = const { RefCell::new(Vec::new()) };
    static IN_FLIGHT: Gauge = metrics::gauge!(crate::metrics::IN_FLIGHT);
}

fn record_request(route: SharedString, status: StatusCode, caller: &str, seconds: f64) {
    REQUEST_HANDLES.with_borrow_mut(|known| {
        let cached = known.iter().find(|handles| {
            handles.status == status && *handles.route == *route && *handles.caller == *caller
        });
        if let Some(handles) = cached {
            handles.count.increment(1);
            handles.duration.record(seconds);
            return;
        }
        let labels = [
            ("route", route.clone()),
            ("status", status_label(status)),
            ("caller", SharedString::from(caller.to_owned())),
        ];
        let handles = RequestHandles {
            route,
            status,
            caller: caller.into(),
            count: metrics::counter!(crate::metrics::REQUESTS, &labels),
            duration: metrics::histogram!(crate::metrics::REQUEST_DURATION, &labels),
        };
        handles.count.increment(1);
        handles.duration.record(seconds);
        if known.len() < CACHED_LABEL_SETS {
            known.push(handles);
        }
    });
}

/// Counts a request in `jelou_relay_in_flight_requests` while it lives.
struct InFlight;

impl InFlight {
    fn enter() -> InFlight {
        IN_FLIGHT.with(|gauge| gauge.increment(1.0));
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.with(|gauge| gauge.decrement(1.0));
    }
}

/// The route pattern as a label, without an allocation for the relay's own routes.
fn route_label(pattern: &str) -> SharedString {
    const ROUTES: [&str; 4] = ["/v1/flow-messages", "/healthz", "/readyz", "/openapi.json"];
    match ROUTES.iter().find(|route| **route == pattern) {
        Some(route) => SharedString::const_str(route),
        None => SharedString::from(pattern.to_owned()),
    }
}

/// The status code as a label, without an allocation for the codes the relay answers.
fn status_label(status: StatusCode) -> SharedString {
    const CODES: [&str; 18] = [
        "200", "400", "401", "403", "404", "405", "408", "409", "413", "415", "422", "429", "431",
        "500", "502", "503", "504", "304",
    ];
    match CODES.iter().find(|code| **code == status.as_str()) {
        Some(code) => SharedString::const_str(code),
        None => SharedString::from(status.as_str().to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_the_route_and_code() {
        assert_eq!(
            route_label("/v1/flow-messages").as_ref(),
            "/v1/flow-messages"
        );
        assert_eq!(route_label("/docs/{*rest}").as_ref(), "/docs/{*rest}");
        assert_eq!(status_label(StatusCode::OK).as_ref(), "200");
        assert_eq!(status_label(StatusCode::IM_A_TEAPOT).as_ref(), "418");
    }
}

//! One middleware for what every request leaves behind: its span (with the W3C trace it
//! belongs to), the request metrics, and one `request finished` log line.
//!
//! The span is written to as few times as possible: a JSON log layer serializes a span's
//! fields again on every `record`, so the handler hands what it learnt (the outcome,
//! Jelou's status, the attempts) back in the response's extensions, and everything is
//! recorded at once when the answer is ready.

use std::sync::{LazyLock, PoisonError, RwLock};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use http::{HeaderName, StatusCode};
use metrics::{Counter, Gauge, Histogram, SharedString};
use tracing::{Instrument, Span};

use super::auth::Authenticated;
use super::request_id;
use super::trace_context::TraceContext;

/// How a request ended, as far as the handler knows; read by [`observe`].
#[derive(Debug, Clone, Default)]
pub struct RequestOutcome {
    /// `sent`, `validated`, `replayed`, `refused`, `not_sent` or `unknown`.
    pub outcome: &'static str,
    pub upstream_status: Option<u16>,
    pub attempts: Option<u32>,
    /// The problem's code, when the answer is one.
    pub code: Option<&'static str>,
    /// The field paths of a refusal's errors, comma-separated (never their values).
    pub fields: Option<String>,
}

impl RequestOutcome {
    pub fn new(outcome: &'static str) -> Self {
        RequestOutcome {
            outcome,
            ..RequestOutcome::default()
        }
    }
}

/// The W3C trace context header, as a `HeaderName` (a string is parsed on every lookup).
static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// Opens the request span, continues the caller's trace, counts and times the request,
/// and writes the `request finished` line.
pub async fn observe(mut request: Request, next: Next) -> Response {
    let observing = Observing::start(&mut request);
    let span = observing.span.clone();
    let response = next.run(request).instrument(span).await;
    observing.finish(&response);
    response
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
            .get(&TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(TraceContext::parse);
        // Without an exporter the relay's own context is the caller's trace under a new
        // span id (or a new trace); with one, it is the exported span's.
        let mut context = incoming
            .as_ref()
            .map_or_else(TraceContext::start, TraceContext::child);
        let matched = request.extensions().get::<MatchedPath>().cloned();
        let matched = matched.as_ref().map(MatchedPath::as_str);
        let span = request_span(request, &context, matched);
        if let Some(parent) = incoming.as_ref() {
            parent.adopt(&span);
        }
        if let Some(exported) = TraceContext::of_span(&span) {
            span.record("trace_id", exported.trace_id.as_str());
            context = exported;
        }
        request.extensions_mut().insert(context);
        let route = matched.map_or(SharedString::const_str("unmatched"), route_label);
        Observing {
            started,
            span,
            route,
            in_flight: InFlight::enter(),
        }
    }

    fn finish(self, response: &Response) {
        drop(self.in_flight);
        let elapsed = self.started.elapsed();
        // The caller was recorded when it was admitted (`auth`): each field once.
        let caller = response.extensions().get::<Authenticated>();
        let outcome = response.extensions().get::<RequestOutcome>();
        let status = response.status().as_u16();
        // A request fails when the relay fails (5xx) or the message was not delivered.
        let failed =
            status >= 500 || outcome.is_some_and(|o| matches!(o.outcome, "not_sent" | "unknown"));
        tracing::record_all!(
            self.span,
            outcome = outcome.map(|o| o.outcome),
            upstream_status = outcome.and_then(|o| o.upstream_status),
            attempts = outcome.and_then(|o| o.attempts),
            code = outcome.and_then(|o| o.code),
            fields = outcome.and_then(|o| o.fields.as_deref()),
            status,
            // Whole microseconds: 0.295, not 0.29541799999999996.
            latency_ms = elapsed.as_micros() as f64 / 1000.0,
        );
        if crate::telemetry::exporting() {
            tracing::record_all!(
                self.span,
                http.response.status_code = status,
                otel.status_code = failed.then_some("error"),
            );
        }
        self.span.in_scope(|| tracing::info!("request finished"));

        record_request(
            self.route,
            response.status(),
            caller.map_or("none", Authenticated::name),
            elapsed.as_secs_f64(),
        );
    }
}

/// The request's span. Its OpenTelemetry attributes (a SERVER span named
/// "{method} {route}", HTTP's conventions) are there only when spans are exported: log
/// lines leave them out.
fn request_span(request: &Request, context: &TraceContext, route: Option<&str>) -> Span {
    let method = request.method().as_str();
    let path = request.uri().path();
    macro_rules! span {
        ($($otel:tt)*) => {
            tracing::info_span!(
                "request",
                request_id = request_id::of(request),
                method,
                path,
                trace_id = context.trace_id.as_str(),
                caller = tracing::field::Empty,
                bot = tracing::field::Empty,
                to = tracing::field::Empty,
                code = tracing::field::Empty,
                fields = tracing::field::Empty,
                outcome = tracing::field::Empty,
                upstream_status = tracing::field::Empty,
                attempts = tracing::field::Empty,
                status = tracing::field::Empty,
                latency_ms = tracing::field::Empty,
                $($otel)*
            )
        };
    }
    if !crate::telemetry::exporting() {
        return span!();
    }
    let otel_name = match route {
        Some(route) => format!("{method} {route}"),
        None => method.to_owned(),
    };
    span!(
        otel.name = otel_name,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = method,
        http.route = route,
        url.path = path,
        http.response.status_code = tracing::field::Empty,
    )
}

fn record_request(route: SharedString, status: StatusCode, caller: &str, seconds: f64) {
    REQUEST_METRICS.record(route, status, caller, seconds);
}

/// The request counter and histogram of each label set, registered on first use. Through
/// `counter!` and `histogram!` every request built both keys (allocating the caller's
/// label) and looked each up in the recorder's registry: 3,200 instructions a request
/// (`bash benches/callgrind.sh relay`). Here it is one lookup by caller, then a scan of
/// that caller's few routes and statuses. The label sets are the metrics' own, so the
/// map holds no more entries than the exporter does.
static REQUEST_METRICS: LazyLock<RequestMetrics> = LazyLock::new(RequestMetrics::default);

#[derive(Default)]
struct RequestMetrics {
    /// Callers are named by the configuration (or `none`), so a fast hasher.
    by_caller: RwLock<foldhash::HashMap<String, Vec<RequestHandles>>>,
}

struct RequestHandles {
    route: SharedString,
    status: StatusCode,
    requests: Counter,
    duration: Histogram,
}

impl RequestMetrics {
    fn record(&self, route: SharedString, status: StatusCode, caller: &str, seconds: f64) {
        let record = |handles: &[RequestHandles]| {
            let found = handles
                .iter()
                .find(|h| h.status == status && h.route == route);
            if let Some(h) = found {
                h.requests.increment(1);
                h.duration.record(seconds);
            }
            found.is_some()
        };
        let known = self
            .by_caller
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        if known.get(caller).is_some_and(|handles| record(handles)) {
            return;
        }
        drop(known);
        let mut known = self
            .by_caller
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let handles = known.entry(caller.to_owned()).or_default();
        if record(handles) {
            return;
        }
        let labels = [
            ("route", route.clone()),
            ("status", status_label(status)),
            ("caller", SharedString::from(caller.to_owned())),
        ];
        handles.push(RequestHandles {
            route: labels[0].1.clone(),
            status,
            requests: metrics::counter!(crate::metrics::REQUESTS, &labels),
            duration: metrics::histogram!(crate::metrics::REQUEST_DURATION, &labels),
        });
        record(handles);
    }
}

/// The in-flight gauge, registered once: `gauge!` looked its key up in the recorder's
/// registry twice a request.
static IN_FLIGHT: LazyLock<Gauge> = LazyLock::new(|| metrics::gauge!(crate::metrics::IN_FLIGHT));

/// Counts a request in `jelou_relay_in_flight_requests` while it lives.
struct InFlight;

impl InFlight {
    fn enter() -> InFlight {
        IN_FLIGHT.increment(1.0);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.decrement(1.0);
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

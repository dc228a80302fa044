//! Prometheus metrics: every name in one place, the recorder installed once per process,
//! served on the admin listener.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const REQUESTS: &str = "jelou_relay_requests_total";
pub const REQUEST_DURATION: &str = "jelou_relay_request_duration_seconds";
pub const IN_FLIGHT: &str = "jelou_relay_in_flight_requests";
pub const UPSTREAM_ATTEMPTS: &str = "jelou_relay_upstream_attempts_total";
pub const UPSTREAM_DURATION: &str = "jelou_relay_upstream_duration_seconds";
pub const RETRIES: &str = "jelou_relay_retries_total";
pub const RETRY_BUDGET_EXHAUSTED: &str = "jelou_relay_retry_budget_exhausted_total";
pub const RATE_LIMIT_WAITS: &str = "jelou_relay_rate_limit_waits_total";
pub const RATE_LIMIT_REJECTIONS: &str = "jelou_relay_rate_limit_rejections_total";
pub const IDEMPOTENCY: &str = "jelou_relay_idempotency_total";
pub const SHED: &str = "jelou_relay_shed_total";
pub const BUILD_INFO: &str = "jelou_relay_build_info";
pub const STORE_DURATION: &str = "jelou_relay_store_duration_seconds";
pub const STORE_ERRORS: &str = "jelou_relay_store_errors_total";
pub const STORE_UP: &str = "jelou_relay_store_up";
pub const STORE_UNAVAILABLE: &str = "jelou_relay_store_unavailable_total";
pub const QUEUE_DEPTH: &str = "jelou_relay_queue_depth";
pub const QUEUE_OLDEST: &str = "jelou_relay_queue_oldest_seconds";
pub const ASYNC_MESSAGES: &str = "jelou_relay_async_messages_total";
pub const CALLBACKS: &str = "jelou_relay_callbacks_total";
pub const CALLBACKS_PENDING: &str = "jelou_relay_callbacks_pending";

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the global recorder on first use and returns its handle. Later calls (several
/// applications in one test process) share it.
pub fn handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("duration_seconds".into()), LATENCY_BUCKETS)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (an embedding program): then
            // this handle simply renders nothing, and the relay still works.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics stays empty");
            }
            describe();
            metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            start_upkeep(handle.clone());
            handle
        })
        .clone()
}

/// How often histogram samples are folded into their buckets.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The recorder keeps every histogram sample until it is folded into the buckets, which
/// a scrape does; this thread does it every few seconds, so memory stays flat when
/// nothing scrapes `/metrics` (or scrapes rarely).
fn start_upkeep(handle: PrometheusHandle) {
    let started = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_EVERY);
                handle.run_upkeep();
            }
        });
    if let Err(error) = started {
        tracing::warn!(%error, "cannot start the metrics upkeep thread; histograms are folded at each scrape only");
    }
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(REQUESTS, "Requests answered, by route, status and caller");
    describe_histogram!(
        REQUEST_DURATION,
        Unit::Seconds,
        "Time to answer, by route, status and caller"
    );
    describe_gauge!(IN_FLIGHT, "Requests being handled");
    describe_counter!(
        UPSTREAM_ATTEMPTS,
        "Attempts at Jelou, by outcome (sent, not_sent, unknown)"
    );
    describe_histogram!(
        UPSTREAM_DURATION,
        Unit::Seconds,
        "Duration of one attempt at Jelou"
    );
    describe_counter!(
        RETRIES,
        "Retries of provably unsent attempts, by failure kind"
    );
    describe_counter!(
        RETRY_BUDGET_EXHAUSTED,
        "Retries refused by the shared retry budget"
    );
    describe_counter!(
        RATE_LIMIT_WAITS,
        "Requests that waited for rate-limit capacity, by limit"
    );
    describe_counter!(
        RATE_LIMIT_REJECTIONS,
        "Requests refused by a rate limit, by limit (bot, recipient, caller)"
    );
    describe_counter!(
        IDEMPOTENCY,
        "Idempotency-Key outcomes: replayed, in_flight, reused"
    );
    describe_counter!(
        SHED,
        "Requests shed at once because a bound was full, by where"
    );
    describe_gauge!(BUILD_INFO, "Always 1; the version is a label");
    describe_histogram!(
        STORE_DURATION,
        Unit::Seconds,
        "Duration of one call to the shared store (Redis), by op and result"
    );
    describe_counter!(
        STORE_ERRORS,
        "Failed calls to the shared store, by op and kind (error, timeout, down)"
    );
    describe_gauge!(
        STORE_UP,
        "1 while the shared store answers, 0 while it does not"
    );
    describe_counter!(
        STORE_UNAVAILABLE,
        "Requests that met an unreachable store, by what (rate_limit, idempotency) and action (fallback, refused)"
    );
    describe_gauge!(
        QUEUE_DEPTH,
        "Asynchronous messages not yet final (queued or sending), in the whole queue"
    );
    describe_gauge!(
        QUEUE_OLDEST,
        Unit::Seconds,
        "Age of the oldest asynchronous message not yet final"
    );
    describe_counter!(
        CALLBACKS,
        "Callback tries, by result (delivered, failed: tried again later, gave_up)"
    );
    describe_gauge!(
        CALLBACKS_PENDING,
        "Callbacks not yet delivered or given up, in the whole store"
    );
    describe_counter!(
        ASYNC_MESSAGES,
        "Asynchronous message status changes made by this replica, by status"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installing_the_recorder_starts_the_upkeep_thread() {
        let _handle = handle();
        let threads = || -> Vec<String> {
            std::fs::read_dir("/proc/self/task")
                .unwrap()
                .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
                .map(|name| name.trim().to_string())
                .collect()
        };
        // A new thread names itself once it runs.
        let started = std::time::Instant::now();
        while !threads().iter().any(|name| name == "metrics-upkeep") {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(5),
                "{:?}",
                threads()
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

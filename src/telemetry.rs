//! The tracing subscriber: JSON lines in production, readable text locally, and spans
//! exported over OTLP when an endpoint is configured.

use std::io::IsTerminal;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogFormat, LogSettings, OtlpSettings};

/// The filter: `RUST_LOG` when set, else the configured level.
pub fn filter(settings: &LogSettings) -> Result<EnvFilter, String> {
    match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.is_empty() => EnvFilter::try_new(&directives)
            .map_err(|e| format!("RUST_LOG '{directives}' is not a valid filter: {e}")),
        _ => EnvFilter::try_new(&settings.level)
            .map_err(|e| format!("log.level '{}' is not a valid filter: {e}", settings.level)),
    }
}

/// Flushes and stops span export when dropped (at the end of `main`).
#[must_use = "dropping the guard stops trace export"]
pub struct TelemetryGuard(Option<SdkTracerProvider>);

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.0.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("trace export did not shut down cleanly: {error}");
        }
    }
}

/// Installs the global subscriber. Logs go to stdout, as containers expect.
pub fn init(settings: &LogSettings, otlp: &OtlpSettings) -> Result<TelemetryGuard, String> {
    let filter = filter(settings)?;
    let logs = match settings.format {
        // json-subscriber writes the same lines as tracing-subscriber's JSON format, but
        // keeps span fields as they are recorded instead of re-parsing them on each record
        // and each event (most of the relay's logging cost under load).
        LogFormat::Json => json_subscriber::fmt::layer()
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stdout().is_terminal())
            .boxed(),
    };
    let provider = match otlp.endpoint.trim() {
        "" => None,
        endpoint => {
            let exporter = SpanExporter::builder()
                .with_http()
                .with_endpoint(endpoint)
                .build()
                .map_err(|e| {
                    format!("otlp.endpoint '{endpoint}': cannot build the exporter: {e}")
                })?;
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(
                        Resource::builder()
                            .with_service_name(otlp.service_name.clone())
                            .build(),
                    )
                    .build(),
            )
        }
    };
    let traces = provider
        .as_ref()
        .map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer("jelou-relay")));
    tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(traces)
        .try_init()
        .map_err(|e| format!("cannot install the log subscriber: {e}"))?;
    Ok(TelemetryGuard(provider))
}

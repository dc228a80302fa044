//! The tracing subscriber: JSON lines in production, readable text locally, and spans
//! exported over OTLP when an endpoint is configured.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::fmt::MakeWriter;
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

/// Writes the pending log lines, and flushes and stops span export, when dropped (at the
/// end of `main`).
#[must_use = "dropping the guard stops trace export and may lose the last log lines"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
    lines: Option<BlockWriter>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(lines) = self.lines.take() {
            lines.write_out();
        }
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("trace export did not shut down cleanly: {error}");
        }
    }
}

/// How many bytes of JSON log lines wait before they are written.
const BLOCK_BYTES: usize = 64 * 1024;
/// The longest a JSON log line waits to be written.
const BLOCK_INTERVAL: Duration = Duration::from_millis(100);

/// JSON log lines go to stdout in blocks, like nginx's buffered access log: one `write`
/// per 64 KiB of lines instead of one per line, and no line waits more than 100 ms. Lines
/// are never split or reordered; a line still in memory when the process is killed with
/// SIGKILL is lost (a graceful stop writes everything out).
#[derive(Clone, Debug, Default)]
pub struct BlockWriter {
    pending: Arc<Mutex<Vec<u8>>>,
}

impl BlockWriter {
    /// A writer, and a thread that writes its lines out every [`BLOCK_INTERVAL`] for as
    /// long as the writer lives.
    pub fn start() -> BlockWriter {
        let writer = BlockWriter::default();
        let weak: Weak<Mutex<Vec<u8>>> = Arc::downgrade(&writer.pending);
        let _ = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(BLOCK_INTERVAL);
                    match weak.upgrade() {
                        Some(pending) => BlockWriter { pending }.write_out(),
                        None => break,
                    }
                }
            });
        writer
    }

    /// Writes every pending line to stdout.
    pub fn write_out(&self) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        Self::write_locked(&mut pending);
    }

    fn write_locked(pending: &mut Vec<u8>) {
        if pending.is_empty() {
            return;
        }
        let mut stdout = std::io::stdout().lock();
        // Nowhere to report a failed log write; the lines are dropped rather than kept
        // growing in memory.
        let _ = stdout.write_all(pending);
        let _ = stdout.flush();
        pending.clear();
    }
}

/// One event's line, added to the pending block.
pub struct Line<'a>(&'a BlockWriter);

impl Write for Line<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let mut pending = self
            .0
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        pending.extend_from_slice(bytes);
        if pending.len() >= BLOCK_BYTES {
            BlockWriter::write_locked(&mut pending);
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BlockWriter {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Line<'a> {
        Line(self)
    }
}

/// Installs the global subscriber. Logs go to stdout, as containers expect.
pub fn init(settings: &LogSettings, otlp: &OtlpSettings) -> Result<TelemetryGuard, String> {
    let filter = filter(settings)?;
    let lines = (settings.format == LogFormat::Json).then(BlockWriter::start);
    let logs = match settings.format {
        // json-subscriber writes the same lines as tracing-subscriber's JSON format, but
        // keeps span fields as they are recorded instead of re-parsing them on each record
        // and each event (most of the relay's logging cost under load).
        LogFormat::Json => json_subscriber::fmt::layer()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(lines.clone().unwrap_or_default())
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
    Ok(TelemetryGuard { provider, lines })
}

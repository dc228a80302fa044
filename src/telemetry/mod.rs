//! The tracing subscriber: JSON lines in production, readable text locally, and spans
//! exported over OTLP when an endpoint is configured.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogFormat, LogSettings, OtlpSettings};

mod json;

/// The filter: `RUST_LOG` when set, else the configured level. A bare level (`info`)
/// is a plain level filter; anything else (per-target levels, span and field
/// directives) an `EnvFilter`, which costs more on every span.
pub enum LogFilter {
    Level(LevelFilter),
    Directives(Box<EnvFilter>),
}

pub fn filter(settings: &LogSettings) -> Result<LogFilter, String> {
    let (directives, origin) = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.is_empty() => (directives, "RUST_LOG"),
        _ => (settings.level.clone(), "log.level"),
    };
    parse_filter(&directives)
        .map_err(|e| format!("{origin} '{directives}' is not a valid filter: {e}"))
}

fn parse_filter(directives: &str) -> Result<LogFilter, String> {
    if let Ok(level) = directives.trim().parse::<LevelFilter>() {
        return Ok(LogFilter::Level(level));
    }
    EnvFilter::try_new(directives)
        .map(|filter| LogFilter::Directives(Box::new(filter)))
        .map_err(|e| e.to_string())
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
#[derive(Clone)]
pub struct BlockWriter {
    block: Arc<Mutex<Block>>,
}

struct Block {
    pending: Vec<u8>,
    out: Box<dyn Write + Send>,
}

impl Block {
    fn write_out(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        // Nowhere to report a failed log write; the lines are dropped rather than kept
        // growing in memory.
        let _ = self.out.write_all(&self.pending);
        let _ = self.out.flush();
        self.pending.clear();
    }
}

impl BlockWriter {
    /// A writer to `out`, and a thread that writes its lines out every
    /// [`BLOCK_INTERVAL`] for as long as the writer lives.
    pub fn start(out: impl Write + Send + 'static) -> BlockWriter {
        let writer = BlockWriter {
            block: Arc::new(Mutex::new(Block {
                pending: Vec::with_capacity(BLOCK_BYTES),
                out: Box::new(out),
            })),
        };
        let weak: Weak<Mutex<Block>> = Arc::downgrade(&writer.block);
        let _ = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(BLOCK_INTERVAL);
                    match weak.upgrade() {
                        Some(block) => BlockWriter { block }.write_out(),
                        None => break,
                    }
                }
            });
        writer
    }

    /// Writes every pending line out.
    pub fn write_out(&self) {
        self.lock().write_out();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Block> {
        self.block.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One event's line, added to the pending block.
pub struct Line<'a>(&'a BlockWriter);

impl Write for Line<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let mut block = self.0.lock();
        block.pending.extend_from_slice(bytes);
        if block.pending.len() >= BLOCK_BYTES {
            block.write_out();
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

/// Whether spans go to an OTLP exporter (set once, by [`init`]).
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported over OTLP. Only then do spans carry OpenTelemetry's
/// attributes (`otel.*`, `http.*`, `url.*`, `server.*`): log lines leave them out, so
/// without an exporter nobody reads them, and a span with fewer fields costs less to
/// open and record.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Installs the global subscriber. Logs go to stdout, as containers expect.
pub fn init(settings: &LogSettings, otlp: &OtlpSettings) -> Result<TelemetryGuard, String> {
    let filter = filter(settings)?;
    let mut lines = None;
    let logs = match settings.format {
        LogFormat::Json => {
            let writer = BlockWriter::start(std::io::stdout());
            lines = Some(writer.clone());
            json::JsonLines::new(writer).boxed()
        }
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
    let (level, directives) = match filter {
        LogFilter::Level(level) => (Some(level), None),
        LogFilter::Directives(directives) => (None, Some(*directives)),
    };
    tracing_subscriber::registry()
        .with(level)
        .with(directives)
        .with(logs)
        .with(traces)
        .try_init()
        .map_err(|e| format!("cannot install the log subscriber: {e}"))?;
    EXPORTING.store(provider.is_some(), Ordering::Relaxed);
    Ok(TelemetryGuard { provider, lines })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A sink the test can read while the writer holds it.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Sink {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().push(bytes.to_vec());
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_bare_level_is_a_level_filter_and_directives_an_env_filter() {
        for level in ["info", "WARN", " debug ", "off"] {
            assert!(
                matches!(parse_filter(level), Ok(LogFilter::Level(_))),
                "{level}"
            );
        }
        for directives in ["jelou_relay=debug", "info,hyper=warn", "[request]=trace"] {
            assert!(
                matches!(parse_filter(directives), Ok(LogFilter::Directives(_))),
                "{directives}"
            );
        }
        assert!(parse_filter("[[[").is_err());
    }

    #[test]
    fn lines_are_written_in_blocks_in_order_and_never_wait_long() {
        let sink = Sink::default();
        let writer = BlockWriter::start(sink.clone());
        let line = |n: usize| format!("{{\"line\":{n:04}}}\n").into_bytes();
        let lines = BLOCK_BYTES / line(0).len() + 10;
        for n in 0..lines {
            writer.make_writer().write_all(&line(n)).unwrap();
        }
        // A block went out when 64 KiB were pending (the timer may have taken one more);
        // the rest waits for the timer.
        let writes = sink.0.lock().unwrap().len();
        assert!(
            (1..=3).contains(&writes),
            "{writes} writes for {lines} lines"
        );

        let started = Instant::now();
        while sink.0.lock().unwrap().concat().len() < lines * line(0).len() {
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "lines left pending"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let expected: Vec<u8> = (0..lines).flat_map(line).collect();
        assert_eq!(sink.0.lock().unwrap().concat(), expected);
    }

    #[test]
    fn write_out_leaves_nothing_pending() {
        let sink = Sink::default();
        let writer = BlockWriter::start(sink.clone());
        writer.make_writer().write_all(b"{\"a\":1}\n").unwrap();
        writer.write_out();
        assert_eq!(sink.0.lock().unwrap().concat(), b"{\"a\":1}\n");
    }
}

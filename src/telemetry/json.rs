//! The JSON log layer: one object per line,
//! `{"fields":{..},"level":..,"span":{..},"target":..,"timestamp":..}`, where `span`
//! holds the fields of the event's span (its name included, keys in order) and is absent
//! outside spans.
//!
//! This is the line json-subscriber and tracing-subscriber's JSON format write; the
//! difference is when the work is done. They serialize a span's fields when the span is
//! created and again on every `record`; this layer keeps the values as they are recorded
//! and serializes them only when a line is written. A request span is created once,
//! recorded twice and written once (its `request finished` line), so that is one
//! serialization instead of three.
//!
//! Kept by hand, with the block writer in `telemetry/mod.rs`, because the crates cost more
//! than 10 %: json-subscriber with tracing-appender's non-blocking writer, everything
//! else the same, gave 0.95 of the throughput and 1.16 times the CPU per request (medians
//! of 4 alternating 5 s rounds at 32 connections, info-level JSON lines; with a 64 KiB
//! buffer under the appender, 0.91 and 1.19), 2026-12-01, 2 cores:
//! `LOG_LEVEL=info LOAD=wrk CONNECTIONS=32 DURATION=5 bash benches/side_by_side.sh A B`
//! with A and B built from this tree with and without the swap. Over 400 lines: the
//! layer and its byte-for-byte comparison with json-subscriber.

use std::cell::RefCell;
use std::fmt;
use std::io::Write;

use serde::Serialize;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// Writes each event as one JSON line to `W`.
pub struct JsonLines<W> {
    writer: W,
}

impl<W> JsonLines<W> {
    pub fn new(writer: W) -> JsonLines<W> {
        JsonLines { writer }
    }
}

/// A recorded value, kept as it came (strings owned) until a line is written.
#[derive(Debug, PartialEq)]
enum Value {
    Str(String),
    Static(&'static str),
    F64(f64),
    I64(i64),
    U64(u64),
    Bool(bool),
}

/// A span's fields, ordered by name (as a JSON object with sorted keys), `name` included.
#[derive(Debug, Default)]
struct SpanFields(Vec<(&'static str, Value)>);

/// Span fields named after OpenTelemetry's conventions are for the trace exporter: they
/// repeat the line's own fields (`method`, `path`, `status`, ...) and stay out of log lines.
fn for_traces_only(name: &str) -> bool {
    ["otel.", "http.", "url.", "server."]
        .iter()
        .any(|prefix| name.starts_with(prefix))
}

impl SpanFields {
    fn set(&mut self, name: &'static str, value: Value) {
        match self.0.binary_search_by(|(key, _)| key.cmp(&name)) {
            Ok(at) => self.0[at].1 = value,
            Err(at) => self.0.insert(at, (name, value)),
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        for (n, (name, value)) in self.0.iter().enumerate() {
            if n > 0 {
                out.push(b',');
            }
            json(out, name);
            out.push(b':');
            match value {
                Value::Str(value) => json(out, value.as_str()),
                Value::Static(value) => json(out, value),
                Value::F64(value) => json(out, value),
                Value::I64(value) => json(out, value),
                Value::U64(value) => json(out, value),
                Value::Bool(value) => json(out, value),
            }
        }
        out.push(b'}');
    }
}

/// A raw identifier's field (`r#type`) is named without its prefix.
fn field_name(field: &Field) -> &'static str {
    let name = field.name();
    name.strip_prefix("r#").unwrap_or(name)
}

impl Visit for SpanFields {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.keep(field, || Value::F64(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.keep(field, || Value::I64(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.keep(field, || Value::U64(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.keep(field, || Value::Bool(value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.keep(field, || Value::Str(value.to_owned()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.keep(field, || Value::Str(format!("{value:?}")));
    }
}

impl SpanFields {
    /// Keeps `field`'s value, made only for a field that goes into log lines.
    fn keep(&mut self, field: &Field, value: impl FnOnce() -> Value) {
        let name = field_name(field);
        if !for_traces_only(name) {
            self.set(name, value());
        }
    }
}

/// Writes an event's fields, in the order they were given, as a JSON object's entries.
struct EventFields<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl EventFields<'_> {
    fn entry(&mut self, field: &Field, value: &(impl Serialize + ?Sized)) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        json(self.out, field_name(field));
        self.out.push(b':');
        json(self.out, value);
    }
}

impl Visit for EventFields<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.entry(field, &value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.entry(field, &value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.entry(field, &value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.entry(field, &value);
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.entry(field, value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.entry(field, &format_args!("{value:?}"));
    }
}

/// Appends `value` as JSON (serde_json's escaping; a non-finite float is `null`). Writing
/// to a `Vec` cannot fail, nor can serializing these types.
fn json(out: &mut Vec<u8>, value: &(impl Serialize + ?Sized)) {
    let _ = value.serialize(&mut serde_json::Serializer::new(out));
}

/// Appends the current time as RFC 3339 in UTC with microseconds,
/// `2026-11-26T23:19:53.163580Z` (tracing-subscriber's format). The text up to the
/// second is kept per thread and reused within the second.
fn timestamp(out: &mut Vec<u8>) {
    thread_local! {
        static SECOND: RefCell<(u64, [u8; 20])> = const { RefCell::new((u64::MAX, [0; 20])) };
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let (seconds, micros) = (now.as_secs(), now.subsec_micros());
    SECOND.with_borrow_mut(|(cached, text)| {
        if *cached != seconds {
            *text = until_second(seconds);
            *cached = seconds;
        }
        out.extend_from_slice(text);
    });
    let mut digits = [b'0'; 6];
    let mut rest = micros;
    for digit in digits.iter_mut().rev() {
        *digit = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    out.extend_from_slice(&digits);
    out.push(b'Z');
}

/// `YYYY-MM-DDTHH:MM:SS.` for `seconds` since the Unix epoch (years up to 9999), by the
/// civil-from-days algorithm (H. Hinnant).
fn until_second(seconds: u64) -> [u8; 20] {
    let (days, of_day) = (seconds / 86_400, seconds % 86_400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    let mut text = *b"0000-00-00T00:00:00.";
    let mut put = |at: usize, width: usize, mut value: u64| {
        for slot in text[at..at + width].iter_mut().rev() {
            *slot = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, 4, year as u64);
    put(5, 2, month as u64);
    put(8, 2, day as u64);
    put(11, 2, of_day / 3_600);
    put(14, 2, of_day % 3_600 / 60);
    put(17, 2, of_day % 60);
    text
}

impl<W> JsonLines<W> {
    fn format<S>(&self, event: &Event<'_>, ctx: &Context<'_, S>, out: &mut Vec<u8>)
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        let metadata = event.metadata();
        out.extend_from_slice(b"{\"fields\":{");
        event.record(&mut EventFields {
            out: &mut *out,
            first: true,
        });
        out.extend_from_slice(b"},\"level\":\"");
        out.extend_from_slice(metadata.level().as_str().as_bytes());
        out.push(b'"');
        if let Some(span) = ctx.event_span(event)
            && let Some(fields) = span.extensions().get::<SpanFields>()
        {
            out.extend_from_slice(b",\"span\":");
            fields.write(out);
        }
        out.extend_from_slice(b",\"target\":");
        json(out, metadata.target());
        out.extend_from_slice(b",\"timestamp\":\"");
        timestamp(out);
        out.extend_from_slice(b"\"}\n");
    }
}

impl<S, W> Layer<S> for JsonLines<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + 'static,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut fields = SpanFields(Vec::with_capacity(attrs.fields().len() + 1));
        attrs.record(&mut fields);
        fields.set("name", Value::Static(attrs.metadata().name()));
        span.extensions_mut().insert(fields);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        if let Some(fields) = span.extensions_mut().get_mut::<SpanFields>() {
            values.record(fields);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        thread_local! {
            static LINE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
        }
        LINE.with(|line| {
            // An event written while this thread formats another (from a `Debug` impl)
            // gets a buffer of its own.
            let mut own = Vec::new();
            let mut borrowed = line.try_borrow_mut();
            let out = match borrowed.as_deref_mut() {
                Ok(line) => line,
                Err(_) => &mut own,
            };
            out.clear();
            self.format(event, &ctx, out);
            // Nowhere to report a failed log write.
            let _ = self.writer.make_writer().write_all(out);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing::field::Empty;
    use tracing::{debug, error, info, info_span, warn};
    use tracing_subscriber::layer::SubscriberExt;

    /// Collects what a layer writes.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Capture {
        type Writer = Capture;
        fn make_writer(&'a self) -> Capture {
            self.clone()
        }
    }

    impl Capture {
        fn lines(&self) -> Vec<String> {
            String::from_utf8(self.0.lock().unwrap().clone())
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect()
        }
    }

    #[derive(Debug)]
    struct Id7 {
        #[allow(dead_code)]
        n: u8,
    }

    /// Spans and events of every kind the relay writes, and the awkward cases.
    fn scenario() {
        info!(
            delay_ms = 0u64,
            "shutdown requested; /readyz now answers 503"
        );
        let request = info_span!(
            "request",
            request_id = "a3434013",
            method = "POST",
            path = "/v1/flow-messages",
            caller = Empty,
            bot = Empty,
            to = Empty,
            outcome = Empty,
            status = Empty,
            latency_ms = Empty,
            attempts = Empty,
            r#type = "flow",
        );
        let _entered = request.enter();
        debug!("parsed");
        request.record("caller", "orders");
        tracing::record_all!(request, bot = "ventas", to = "593******321");
        {
            let attempt = info_span!("attempt", number = 1u32, outcome = Empty);
            let _attempt = attempt.enter();
            warn!(
                status = 503u16,
                retry = true,
                wait_ms = 12.5f64,
                "Jelou answered 503"
            );
            attempt.record("outcome", "not_sent");
            info!(detail = ?Id7 { n: 7 }, "attempt done");
        }
        request.record("outcome", "sent");
        request.record("status", 200u16);
        request.record("latency_ms", 1.981437f64);
        request.record("attempts", 2i64);
        request.record("bot", "ventas-2");
        info!("request finished");
        error!(
            quote = "a \"quoted\" \\ line\nnext\ttab \u{1} é 😀",
            nan = f64::NAN,
            negative = -3i64,
            "odd values"
        );
        info!(parent: None, "no span");
        info!(parent: &request, "explicit parent");
        info!(message = "no fields but the message");
    }

    fn run(layer: impl Layer<tracing_subscriber::Registry> + Send + Sync + 'static) {
        run_with(layer, scenario);
    }

    fn run_with(
        layer: impl Layer<tracing_subscriber::Registry> + Send + Sync + 'static,
        what: impl FnOnce(),
    ) {
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, what);
    }

    /// A line without its timestamp, which is its last entry.
    fn untimed(line: &str) -> &str {
        let at = line.rfind(",\"timestamp\":\"").expect("a timestamp");
        assert!(line.ends_with("Z\"}"), "{line}");
        &line[..at]
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        for (seconds, text) in [
            (0, "1970-01-01T00:00:00."),
            (951_782_400, "2000-02-29T00:00:00."),
            (1_709_251_199, "2024-02-29T23:59:59."),
            (1_798_761_599, "2026-12-31T23:59:59."),
            (1_798_761_600, "2027-01-01T00:00:00."),
            (253_402_300_799, "9999-12-31T23:59:59."),
        ] {
            assert_eq!(std::str::from_utf8(&until_second(seconds)).unwrap(), text);
        }
        // The same text as tracing-subscriber's clock, taken around it.
        let mut reference = String::new();
        let mut ours = Vec::new();
        use tracing_subscriber::fmt::time::FormatTime;
        tracing_subscriber::fmt::time::SystemTime
            .format_time(&mut tracing_subscriber::fmt::format::Writer::new(
                &mut reference,
            ))
            .unwrap();
        timestamp(&mut ours);
        let ours = String::from_utf8(ours).unwrap();
        assert_eq!(ours.len(), reference.len(), "{ours} vs {reference}");
        assert!(ours.ends_with('Z') && ours.as_bytes()[19] == b'.', "{ours}");
        // Taken microseconds apart: the same up to the second, bar a second boundary.
        assert!(ours[..17] == reference[..17], "{ours} vs {reference}");
    }

    #[test]
    fn trace_only_fields_stay_out_of_log_lines() {
        let capture = Capture::default();
        run_with(JsonLines::new(capture.clone()), || {
            let span = info_span!(
                "request",
                method = "POST",
                otel.kind = "server",
                http.route = "/v1/flow-messages",
                url.path = "/v1/flow-messages",
                server.port = 80u16,
            );
            span.in_scope(|| info!("request finished"));
        });
        let line: serde_json::Value = serde_json::from_str(&capture.lines()[0]).unwrap();
        assert_eq!(
            line["span"],
            serde_json::json!({"method": "POST", "name": "request"})
        );
    }

    #[test]
    fn lines_are_json_subscribers_lines_byte_for_byte() {
        let ours = Capture::default();
        run(JsonLines::new(ours.clone()));
        let reference = Capture::default();
        run(json_subscriber::fmt::layer()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(reference.clone()));

        let (ours, reference) = (ours.lines(), reference.lines());
        assert_eq!(ours.len(), 9, "{ours:#?}");
        assert_eq!(ours.len(), reference.len());
        for (ours, reference) in ours.iter().zip(&reference) {
            assert_eq!(untimed(ours), untimed(reference));
        }
    }

    #[test]
    fn a_line_holds_the_events_span_with_its_latest_values() {
        let capture = Capture::default();
        run(JsonLines::new(capture.clone()));
        let lines: Vec<serde_json::Value> = capture
            .lines()
            .iter()
            .map(|line| serde_json::from_str(line).expect("each line is JSON"))
            .collect();
        let finished = lines
            .iter()
            .find(|line| line["fields"]["message"] == "request finished")
            .unwrap();
        assert_eq!(
            finished["span"],
            serde_json::json!({
                "attempts": 2, "bot": "ventas-2", "caller": "orders", "latency_ms": 1.981437,
                "method": "POST", "name": "request", "outcome": "sent",
                "path": "/v1/flow-messages", "request_id": "a3434013", "status": 200,
                "to": "593******321", "type": "flow",
            })
        );
        assert_eq!(finished["level"], "INFO");
        assert_eq!(finished["target"], module_path!());
        let warned = lines
            .iter()
            .find(|line| line["fields"]["message"] == "Jelou answered 503")
            .unwrap();
        assert_eq!(warned["fields"]["wait_ms"], 12.5);
        assert_eq!(
            warned["span"],
            serde_json::json!({"name": "attempt", "number": 1})
        );
        let odd = lines
            .iter()
            .find(|l| l["fields"]["message"] == "odd values")
            .unwrap();
        assert_eq!(
            odd["fields"]["quote"],
            "a \"quoted\" \\ line\nnext\ttab \u{1} é 😀"
        );
        assert_eq!(odd["fields"]["nan"], serde_json::Value::Null);
        assert!(
            lines
                .iter()
                .any(|l| l["fields"]["message"] == "no span" && l.get("span").is_none())
        );
        // Timestamps are RFC 3339 in UTC with microseconds: 2026-11-26T23:19:53.163580Z.
        let timestamp = finished["timestamp"].as_str().unwrap();
        assert_eq!(timestamp.len(), 27, "{timestamp}");
        assert!(
            timestamp.ends_with('Z') && timestamp.as_bytes()[10] == b'T',
            "{timestamp}"
        );
    }
}

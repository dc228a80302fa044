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
//! with A and B built from this tree with and without the swap.

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

/// A recorded value, kept as it came until a line is written. A string is a range of its
/// span's text.
#[derive(Debug, PartialEq)]
enum Value {
    Str(std::ops::Range<usize>),
    Static(&'static str),
    F64(f64),
    I64(i64),
    U64(u64),
    Bool(bool),
}

/// A span's fields, ordered by name (as a JSON object with sorted keys), `name` included.
/// Their strings share one buffer, `text`: a request span's ten are one allocation, not
/// ten. A string field recorded again leaves its old text behind (`dead` bytes); once
/// that is over half the buffer, the live strings are copied into a new one, so a span
/// recorded in a loop does not grow without bound.
#[derive(Debug, Default)]
struct SpanFields {
    entries: Vec<(&'static str, Value)>,
    text: String,
    dead: usize,
}

/// Span fields named after OpenTelemetry's conventions are for the trace exporter: they
/// repeat the line's own fields (`method`, `path`, `status`, ...) and stay out of log lines.
fn for_traces_only(name: &str) -> bool {
    ["otel.", "http.", "url.", "server."]
        .iter()
        .any(|prefix| name.starts_with(prefix))
}

impl SpanFields {
    fn with_capacity(fields: usize) -> Self {
        SpanFields {
            entries: Vec::with_capacity(fields),
            text: String::new(),
            dead: 0,
        }
    }

    fn set(&mut self, name: &'static str, value: Value) {
        // Byte by byte rather than `str::cmp`: names are short and mostly differ in their
        // first bytes, where a call to `memcmp` for each step costs more than the step.
        let order = |key: &&str| key.bytes().cmp(name.bytes());
        match self.entries.binary_search_by(|(key, _)| order(key)) {
            Ok(at) => {
                if let Value::Str(old) = std::mem::replace(&mut self.entries[at].1, value) {
                    self.dead += old.len();
                    if self.dead > self.text.len() / 2 {
                        self.compact();
                    }
                }
            }
            Err(at) => self.entries.insert(at, (name, value)),
        }
    }

    /// Copies the strings still in use into a new buffer, leaving the dead text behind.
    fn compact(&mut self) {
        let mut text = String::with_capacity(self.text.len() - self.dead);
        for (_, value) in &mut self.entries {
            if let Value::Str(range) = value {
                let start = text.len();
                text.push_str(&self.text[range.clone()]);
                *range = start..text.len();
            }
        }
        self.text = text;
        self.dead = 0;
    }

    /// Keeps `value` in the span's text (room for a request span's strings made at once).
    fn text(&mut self, value: &str) -> Value {
        if self.text.capacity() == 0 {
            self.text.reserve(256);
        }
        let start = self.text.len();
        self.text.push_str(value);
        Value::Str(start..self.text.len())
    }

    /// Keeps `value`'s `Debug` text in the span's text.
    fn debug_text(&mut self, value: &dyn fmt::Debug) -> Value {
        let start = self.text.len();
        let _ = fmt::Write::write_fmt(&mut self.text, format_args!("{value:?}"));
        Value::Str(start..self.text.len())
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        for (n, (name, value)) in self.entries.iter().enumerate() {
            if n > 0 {
                out.push(b',');
            }
            json(out, name);
            out.push(b':');
            match value {
                Value::Str(range) => json(out, &self.text[range.clone()]),
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
        self.keep(field, |_| Value::F64(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.keep(field, |_| Value::I64(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.keep(field, |_| Value::U64(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.keep(field, |_| Value::Bool(value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.keep(field, |fields| fields.text(value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.keep(field, |fields| fields.debug_text(value));
    }
}

impl SpanFields {
    /// Keeps `field`'s value, made only for a field that goes into log lines.
    fn keep(&mut self, field: &Field, value: impl FnOnce(&mut Self) -> Value) {
        let name = field_name(field);
        if !for_traces_only(name) {
            let value = value(self);
            self.set(name, value);
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
        let mut fields = SpanFields::with_capacity(attrs.fields().len() + 1);
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
#[path = "json_tests.rs"]
mod tests;

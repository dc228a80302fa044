//! The JSON layer's lines, checked byte for byte against json-subscriber's.

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

#[test]
fn a_string_field_recorded_again_and_again_keeps_the_span_text_bounded() {
    let mut fields = SpanFields::with_capacity(2);
    let fixed = fields.text("fixed");
    fields.set("a", fixed);
    for n in 0..10_000 {
        let value = fields.text(&format!("value {n}"));
        fields.set("b", value);
    }
    assert!(fields.text.len() < 64, "{} bytes kept", fields.text.len());
    let mut out = Vec::new();
    fields.write(&mut out);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        r#"{"a":"fixed","b":"value 9999"}"#
    );
}

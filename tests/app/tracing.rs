//! OTLP export: the relay's spans reach a collector, under the caller's trace, as
//! OpenTelemetry's HTTP conventions describe a server and its client calls.

use std::time::Duration;

use crate::common::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::{Span, span::SpanKind, status::StatusCode};
use prost::Message;
use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

#[test]
fn spans_are_exported_under_the_callers_trace() {
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let export = export_one_send(200, &format!("00-{trace_id}-00f067aa0ba902b7-01"));
    assert_eq!(export.status, 200);
    assert_eq!(export.content_type, "application/x-protobuf");
    // Jelou is told the caller's trace under the relay's request span.
    let traceparent = export.jelou_traceparent;
    assert!(
        traceparent.starts_with(&format!("00-{trace_id}-")),
        "{traceparent}"
    );
    let relay_span = traceparent.split('-').nth(2).unwrap();
    let request = export
        .spans
        .iter()
        .find(|span| span.kind == SpanKind::Server as i32)
        .expect("the request span");
    assert_eq!(
        hex(&request.span_id),
        relay_span,
        "the span Jelou was told about"
    );
    assert_eq!(hex(&request.trace_id), trace_id);
    assert_eq!(hex(&request.parent_span_id), "00f067aa0ba902b7");
    assert_eq!(export.service_names, ["jelou-relay"]);
}

/// What one send through a relay exporting to a stand-in collector left behind.
struct Export {
    status: u16,
    spans: Vec<Span>,
    service_names: Vec<String>,
    content_type: String,
    jelou_traceparent: String,
    upstream: String,
}

/// The attribute `key` of `span`, as text.
fn attribute(span: &Span, key: &str) -> Option<String> {
    let value = span
        .attributes
        .iter()
        .find(|kv| kv.key == key)?
        .value
        .as_ref()?;
    match value.value.as_ref()? {
        AnyValue::StringValue(text) => Some(text.clone()),
        AnyValue::IntValue(number) => Some(number.to_string()),
        AnyValue::BoolValue(flag) => Some(flag.to_string()),
        AnyValue::DoubleValue(number) => Some(number.to_string()),
        other => Some(format!("{other:?}")),
    }
}

/// Sends one message through a relay exporting to a stand-in collector, with Jelou
/// answering `jelou_status`.
fn export_one_send(jelou_status: u16, caller_trace: &str) -> Export {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (jelou, collector) = runtime.block_on(async {
        let jelou = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(jelou_status).set_body_json(json!({})))
            .mount(&jelou)
            .await;
        let collector = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/v1/traces"))
            .respond_with(ResponseTemplate::new(200))
            .mount(&collector)
            .await;
        (jelou, collector)
    });
    let upstream = jelou.uri();
    let endpoint = format!("{}/v1/traces", collector.uri());
    let mut relay = RelayProcess::start(&[
        ("JELOU_RELAY__UPSTREAM__MODE", "jelou"),
        ("JELOU_RELAY__UPSTREAM__BASE_URL", &upstream),
        ("JELOU_RELAY__BOTS__VENTAS__CLIENT_ID", CLIENT_ID),
        ("JELOU_RELAY__BOTS__VENTAS__CLIENT_SECRET", CLIENT_SECRET),
        ("JELOU_RELAY__OTLP__ENDPOINT", &endpoint),
    ]);
    let url = relay.url("/v1/flow-messages");
    let status = runtime.block_on(async {
        reqwest::Client::new()
            .post(url)
            .header("traceparent", caller_trace)
            .json(&seed_message())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    });
    // Stopping flushes the spans still buffered.
    assert!(relay.terminate(Duration::from_secs(15)).success());
    let exports = runtime.block_on(collector.received_requests()).unwrap();
    assert!(
        !exports.is_empty(),
        "spans were exported:\n{}",
        relay.output()
    );
    let requests: Vec<ExportTraceServiceRequest> = exports
        .iter()
        .map(|export| ExportTraceServiceRequest::decode(export.body.as_slice()).expect("OTLP"))
        .collect();
    let resources: Vec<_> = requests.iter().flat_map(|r| &r.resource_spans).collect();
    let service_names = resources
        .iter()
        .filter_map(|r| r.resource.as_ref())
        .flat_map(|resource| &resource.attributes)
        .filter(|kv| kv.key == "service.name")
        .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
            AnyValue::StringValue(name) => Some(name.clone()),
            _ => None,
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let spans = resources
        .iter()
        .flat_map(|r| &r.scope_spans)
        .flat_map(|scope| scope.spans.clone())
        .collect();
    let received = runtime.block_on(jelou.received_requests()).unwrap();
    Export {
        status,
        spans,
        service_names,
        content_type: exports[0].headers["content-type"]
            .to_str()
            .unwrap()
            .to_string(),
        jelou_traceparent: received[0].headers["traceparent"]
            .to_str()
            .unwrap()
            .to_string(),
        upstream,
    }
}

#[test]
fn the_request_is_a_server_span_and_each_attempt_a_client_span_with_http_attributes() {
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let Export {
        status,
        spans,
        upstream,
        ..
    } = export_one_send(200, &format!("00-{trace_id}-{caller_span}-01"));
    assert_eq!(status, 200);
    let request = spans
        .iter()
        .find(|span| span.kind == SpanKind::Server as i32)
        .unwrap_or_else(|| panic!("a SERVER span in {spans:#?}"));
    assert_eq!(request.name, "POST /v1/flow-messages");
    assert_eq!(hex(&request.trace_id), trace_id);
    assert_eq!(
        hex(&request.parent_span_id),
        caller_span,
        "the caller's span is the parent"
    );
    for (key, value) in [
        ("http.request.method", "POST"),
        ("http.route", "/v1/flow-messages"),
        ("url.path", "/v1/flow-messages"),
        ("http.response.status_code", "200"),
        ("bot", "ventas"),
        ("to", "593******321"),
        ("outcome", "sent"),
        ("attempts", "1"),
    ] {
        assert_eq!(attribute(request, key).as_deref(), Some(value), "{key}");
    }
    assert!(attribute(request, "request_id").is_some());
    assert_ne!(
        request.status.as_ref().map(|s| s.code),
        Some(StatusCode::Error as i32)
    );

    let attempt = spans
        .iter()
        .find(|span| span.kind == SpanKind::Client as i32)
        .unwrap_or_else(|| panic!("a CLIENT span in {spans:#?}"));
    assert_eq!(
        attempt.parent_span_id, request.span_id,
        "the attempt is the request's child"
    );
    assert_eq!(attempt.trace_id, request.trace_id);
    let jelou = url::Url::parse(&upstream).unwrap();
    for (key, value) in [
        ("http.request.method", "POST".to_string()),
        ("server.address", jelou.host_str().unwrap().to_string()),
        ("server.port", jelou.port().unwrap().to_string()),
        (
            "url.template",
            "/v1/bots/{botId}/users/{userId}/flow_message".to_string(),
        ),
        ("http.response.status_code", "200".to_string()),
    ] {
        assert_eq!(attribute(attempt, key), Some(value), "{key}");
    }
    let exported = format!("{spans:?}");
    assert!(
        !exported.contains("593987654321"),
        "never the recipient's digits"
    );
}

#[test]
fn a_failed_send_marks_the_request_and_its_attempt_as_errors() {
    let Export { status, spans, .. } = export_one_send(
        500,
        "00-5bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    );
    assert_eq!(status, 502);
    for kind in [SpanKind::Server, SpanKind::Client] {
        let span = spans
            .iter()
            .find(|span| span.kind == kind as i32)
            .unwrap_or_else(|| panic!("a {kind:?} span in {spans:#?}"));
        assert_eq!(
            span.status.as_ref().map(|s| s.code),
            Some(StatusCode::Error as i32),
            "{kind:?}"
        );
    }
    let attempt = spans
        .iter()
        .find(|s| s.kind == SpanKind::Client as i32)
        .unwrap();
    assert_eq!(
        attribute(attempt, "http.response.status_code").as_deref(),
        Some("500")
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

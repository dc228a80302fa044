//! OTLP export: the relay's spans reach a collector, under the caller's trace.

use std::time::Duration;

use crate::common::*;
use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

#[test]
fn spans_are_exported_under_the_callers_trace() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (jelou, collector) = runtime.block_on(async {
        let jelou = accepting_jelou(Duration::ZERO).await;
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
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let url = relay.url("/v1/flow-messages");
    let status = runtime.block_on(async {
        reqwest::Client::new()
            .post(url)
            .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
            .json(&json!(seed_message()))
            .send()
            .await
            .unwrap()
            .status()
    });
    assert_eq!(status, 200);
    // Stopping flushes the spans still buffered.
    assert!(relay.terminate(Duration::from_secs(15)).success());

    let received = runtime.block_on(jelou.received_requests()).unwrap();
    let traceparent = received[0].headers["traceparent"]
        .to_str()
        .unwrap()
        .to_string();
    let relay_span = traceparent.split('-').nth(2).unwrap().to_string();
    assert!(
        traceparent.starts_with(&format!("00-{trace_id}-")),
        "{traceparent}"
    );

    let exports = runtime.block_on(collector.received_requests()).unwrap();
    assert!(
        !exports.is_empty(),
        "spans were exported:\n{}",
        relay.output()
    );
    assert_eq!(exports[0].headers["content-type"], "application/x-protobuf");
    let body: Vec<u8> = exports.iter().flat_map(|e| e.body.clone()).collect();
    assert!(
        contains(&body, &hex_bytes(trace_id)),
        "the caller's trace id is exported"
    );
    assert!(
        contains(&body, &hex_bytes(&relay_span)),
        "the span Jelou was told about is exported"
    );
    assert!(
        contains(&body, &hex_bytes("00f067aa0ba902b7")),
        "the caller's span is the parent"
    );
    assert!(contains(&body, b"jelou-relay"), "service name");
}

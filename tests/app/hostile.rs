//! Hostile input at the HTTP level: oversize and malformed headers, slow clients, deep
//! JSON, floods. Each gets a precise 4xx (or a closed connection) and nothing reaches Jelou.
//! Field-level hostility (paths in `bot`/`to`, non-ASCII digits, emoji, duplicate keys,
//! invalid UTF-8, 10 MB bodies, 1,000 nested arrays) is in `validation.rs`.

use std::time::Duration;

use crate::common::*;
use jelou_relay::config::Settings;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wiremock::MockServer;

async fn app_with(jelou: &MockServer, tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let mut settings = settings_for(&jelou.uri());
    tweak(&mut settings);
    spawn_with(settings).await
}

/// Writes raw bytes and reads the answer until the server closes or 2 s pass.
async fn raw_exchange(app: &TestApp, request: &[u8]) -> String {
    exchange_within(app, request, Duration::from_secs(2))
        .await
        .1
}

/// Writes raw bytes (possibly none) and reads until the server closes or `within`
/// passes: whether it closed, and what it answered.
async fn exchange_within(app: &TestApp, request: &[u8], within: Duration) -> (bool, String) {
    let address = app.address.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let closed = tokio::time::timeout(within, stream.read_to_end(&mut answer))
        .await
        .is_ok();
    (closed, String::from_utf8_lossy(&answer).into_owned())
}

fn raw_post(extra_headers: &str, body: &str) -> Vec<u8> {
    format!(
        "POST /v1/flow-messages HTTP/1.1\r\nhost: relay\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n{extra_headers}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[tokio::test]
async fn header_injection_in_request_ids_never_reaches_an_answer_or_jelou() {
    let jelou = accepting_jelou(Duration::ZERO).await;
    let app = app_with(&jelou, |_| {}).await;
    let body = seed_message().to_string();
    for hostile in [
        "x-request-id: evil\u{1}id\r\n",
        "x-request-id: evil%0d%0aset-cookie: pwned\r\n",
        "x-request-id: evil\r\n\tset-cookie: pwned\r\n",
        "x-request-id: evil-ok\r\nx-request-id: evil-twice\r\n",
    ] {
        let answer = raw_exchange(&app, &raw_post(hostile, &body)).await;
        let head = answer
            .split("\r\n\r\n")
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        assert!(!head.contains("set-cookie"), "{hostile:?}: {answer}");
        // "evil" has letters no generated id (hex and dashes) can hold, so a fresh id
        // never matches it by chance.
        assert!(!head.contains("evil"), "{hostile:?}: {answer}");
        let status: u16 = head.split(' ').nth(1).unwrap_or("0").parse().unwrap_or(0);
        assert!(
            status == 200 || (400..500).contains(&status),
            "{hostile:?}: {answer}"
        );
    }
    for request in jelou.received_requests().await.unwrap() {
        let id = request.headers["x-request-id"].to_str().unwrap();
        assert_eq!(id.len(), 36, "a fresh id replaced the hostile one: {id}");
    }
}

#[tokio::test]
async fn idempotency_keys_with_control_characters_are_refused() {
    let jelou = accepting_jelou(Duration::ZERO).await;
    let app = app_with(&jelou, |_| {}).await;
    let body = seed_message().to_string();
    let answer = raw_exchange(&app, &raw_post("idempotency-key: a\u{7}b\r\n", &body)).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(jelou.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn oversize_headers_are_431() {
    let jelou = accepting_jelou(Duration::ZERO).await;
    let app = app_with(&jelou, |_| {}).await;
    let big = "x".repeat(20 * 1024);
    let response = app.send_with(&seed_message(), &[("x-padding", &big)]).await;
    assert_problem(response, 431, "headers_too_large").await;
    assert!(jelou.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn json_deeper_than_the_limit_is_400() {
    let jelou = accepting_jelou(Duration::ZERO).await;
    let app = app_with(&jelou, |s| s.server.max_json_depth = 8).await;
    let mut message = seed_message();
    let mut deep = json!(1);
    for _ in 0..8 {
        deep = json!({ "a": deep });
    }
    message["context"] = deep;
    let problem = assert_problem(app.send(&message).await, 400, "malformed_json").await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("nesting deeper than 8"),
        "{problem}"
    );
    assert!(jelou.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_slow_loris_is_cut_off() {
    let jelou = accepting_jelou(Duration::ZERO).await;
    let app = app_with(&jelou, |s| s.server.header_read_timeout_ms = 300).await;
    // Never finish the headers: the relay must close the connection on its own.
    let (closed, answer) = exchange_within(
        &app,
        b"POST /v1/flow-messages HTTP/1.1\r\nhost: relay\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(closed, "the connection was closed by the relay");
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed() {
    let jelou = accepting_jelou(Duration::ZERO).await;
    let app = app_with(&jelou, |s| s.server.header_read_timeout_ms = 300).await;
    let (closed, answer) = exchange_within(&app, b"", Duration::from_secs(5)).await;
    assert!(closed, "the silent connection was closed by the relay");
    assert!(answer.is_empty(), "{answer}");
}

#[tokio::test]
async fn a_caller_that_closes_its_sending_side_still_gets_the_answer() {
    // Half-close: the request is complete, the caller shuts down writing and waits.
    let jelou = accepting_jelou(Duration::from_millis(100)).await;
    let app = app_with(&jelou, |_| {}).await;
    let address = app.address.trim_start_matches("http://").to_string();
    let mut stream = TcpStream::connect(&address).await.unwrap();
    let body = seed_message().to_string();
    stream.write_all(&raw_post("", &body)).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"status\":\"sent\""), "{answer}");
    assert_eq!(jelou.received_requests().await.unwrap().len(), 1);
}

#[tokio::test]
async fn http2_with_prior_knowledge_is_served() {
    let jelou = accepting_jelou(Duration::ZERO).await;
    let app = app_with(&jelou, |_| {}).await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let answer = client
        .post(app.url("/v1/flow-messages"))
        .json(&seed_message())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.version(), reqwest::Version::HTTP_2);
    assert_eq!(answer.status(), 200);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["status"], "sent");
    assert_eq!(jelou.received_requests().await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_body_that_never_arrives_is_408() {
    let jelou = accepting_jelou(Duration::ZERO).await;
    let app = app_with(&jelou, |s| s.server.body_read_timeout_ms = 300).await;
    let request = "POST /v1/flow-messages HTTP/1.1\r\nhost: relay\r\ncontent-type: application/json\r\ncontent-length: 500\r\n\r\n{\"to\":";
    let answer = raw_exchange(&app, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"code\":\"request_timeout\""), "{answer}");
    assert!(jelou.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn past_the_in_flight_limit_requests_are_shed_and_probes_still_answer() {
    let jelou = accepting_jelou(Duration::from_millis(800)).await;
    let app = app_with(&jelou, |s| s.server.max_in_flight = 1).await;
    let first = {
        let request = app
            .client
            .post(app.url("/v1/flow-messages"))
            .json(&seed_message());
        tokio::spawn(async move { request.send().await.unwrap() })
    };
    while jelou.received_requests().await.unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut other = seed_message();
    other["to"] = json!("+593 98 765 0000");
    let shed = app.send(&other).await;
    assert_eq!(shed.headers()["retry-after"], "1");
    let problem = assert_problem(shed, 503, "overloaded").await;
    assert_eq!(problem["delivery"], "not_sent");
    assert_eq!(app.get_status("/healthz").await, 200);
    assert_eq!(first.await.unwrap().status(), 200);
    assert_eq!(jelou.received_requests().await.unwrap().len(), 1);
}

#[tokio::test]
async fn hostile_paths_are_404_problems() {
    let jelou = accepting_jelou(Duration::ZERO).await;
    let app = app_with(&jelou, |_| {}).await;
    for path in [
        "/v1/flow-messages/../admin",
        "/v1/flow-messages%2F..",
        "/v1//flow-messages",
        "/%00",
    ] {
        let response = app
            .client
            .post(app.url(path))
            .json(&seed_message())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        assert!((400..500).contains(&status), "{path}: {status}");
        if status == 404 {
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["code"], "not_found");
        }
    }
    assert!(jelou.received_requests().await.unwrap().is_empty());
}

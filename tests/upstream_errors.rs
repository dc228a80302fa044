//! Every upstream failure in the error table: the caller's status, code and delivery
//! state, and how many requests Jelou received.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wiremock::matchers::any;
use wiremock::{Mock, MockServer, ResponseTemplate};

struct Row {
    upstream: ResponseTemplate,
    status: u16,
    code: &'static str,
    delivery: &'static str,
    retryable: bool,
}

fn jelou_error(status: u16, code: &str, description: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(json!({"code": code, "description": description}))
}

async fn run(row: Row) -> (Value, reqwest::header::HeaderMap) {
    let (app, jelou) = spawn_app().await;
    Mock::given(any())
        .respond_with(row.upstream)
        .mount(&jelou)
        .await;
    let response = app.send(&seed_message()).await;
    let headers = response.headers().clone();
    let problem = assert_problem(response, row.status, row.code).await;
    assert_eq!(problem["delivery"], row.delivery, "{problem}");
    assert_eq!(problem["retryable"], row.retryable, "{problem}");
    assert_eq!(problem["attempts"], 1, "{problem}");
    assert_eq!(jelou.received_requests().await.unwrap().len(), 1);
    (problem, headers)
}

#[tokio::test]
async fn jelou_refusing_the_message_is_422_upstream_rejected() {
    for (status, code) in [
        (400, "message_could_not_be_send"),
        (400, "notification_could_not_be_send"),
        (422, "unprocessable_entity"),
        (404, "flow_not_found"),
    ] {
        let (problem, _) = run(Row {
            upstream: jelou_error(status, code, "outside the 24h window"),
            status: 422,
            code: "upstream_rejected",
            delivery: "not_sent",
            retryable: false,
        })
        .await;
        assert_eq!(
            problem["upstream"],
            json!({"status": status, "code": code, "description": "outside the 24h window"})
        );
    }
}

#[tokio::test]
async fn description_is_also_read_from_message() {
    let (problem, _) = run(Row {
        upstream: ResponseTemplate::new(400).set_body_json(
            json!({"code": "message_could_not_be_send", "message": "window closed"}),
        ),
        status: 422,
        code: "upstream_rejected",
        delivery: "not_sent",
        retryable: false,
    })
    .await;
    assert_eq!(problem["upstream"]["description"], "window closed");
}

#[tokio::test]
async fn jelou_refusing_the_relay_is_502_upstream_auth_failed_without_details() {
    for (status, code) in [
        (401, "unauthorized"),
        (403, "forbidden_bot"),
        (404, "bot_not_found"),
    ] {
        let (problem, _) = run(Row {
            upstream: jelou_error(status, code, "clientId relay-client is not valid"),
            status: 502,
            code: "upstream_auth_failed",
            delivery: "not_sent",
            retryable: false,
        })
        .await;
        assert_eq!(problem["upstream"], json!({"status": status, "code": code}));
        assert!(!problem.to_string().contains("relay-client"));
    }
}

#[tokio::test]
async fn jelou_failing_after_receiving_is_502_with_delivery_unknown() {
    for status in [500, 502, 504] {
        run(Row {
            upstream: jelou_error(status, "internal_server_error", "boom"),
            status: 502,
            code: "upstream_unavailable",
            delivery: "unknown",
            retryable: false,
        })
        .await;
    }
}

#[tokio::test]
async fn jelou_503_proves_nothing_was_sent() {
    run(Row {
        upstream: ResponseTemplate::new(503),
        status: 502,
        code: "upstream_unavailable",
        delivery: "not_sent",
        retryable: true,
    })
    .await;
}

#[tokio::test]
async fn jelou_429_is_passed_on_with_retry_after() {
    let (problem, headers) = run(Row {
        upstream: ResponseTemplate::new(429).insert_header("retry-after", "7"),
        status: 429,
        code: "rate_limited",
        delivery: "not_sent",
        retryable: true,
    })
    .await;
    assert_eq!(headers["retry-after"], "7");
    assert_eq!(problem["retry_after"], 7);
}

#[tokio::test]
async fn an_unreadable_success_leaves_delivery_unknown() {
    for upstream in [
        ResponseTemplate::new(200).set_body_string("<html>ok</html>"),
        ResponseTemplate::new(200),
    ] {
        run(Row {
            upstream,
            status: 502,
            code: "upstream_unavailable",
            delivery: "unknown",
            retryable: false,
        })
        .await;
    }
}

#[tokio::test]
async fn a_redirect_is_not_followed() {
    let (app, jelou) = spawn_app().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(307).insert_header("location", "/elsewhere"))
        .mount(&jelou)
        .await;
    let problem =
        assert_problem(app.send(&seed_message()).await, 502, "upstream_unavailable").await;
    assert_eq!(problem["delivery"], "unknown");
    assert_eq!(jelou.received_requests().await.unwrap().len(), 1);
}

#[tokio::test]
async fn connection_refused_is_not_sent() {
    // Bind then drop a listener: nothing listens on that port any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let app = spawn_with(settings_for(&format!("http://127.0.0.1:{port}"))).await;
    let problem =
        assert_problem(app.send(&seed_message()).await, 502, "upstream_unavailable").await;
    assert_eq!(problem["delivery"], "not_sent");
    assert_eq!(problem["retryable"], true);
}

#[tokio::test]
async fn a_slow_jelou_is_504_with_delivery_unknown() {
    let jelou = MockServer::start().await;
    Mock::given(any())
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({}))
                .set_delay(Duration::from_secs(3)),
        )
        .mount(&jelou)
        .await;
    let mut settings = settings_for(&jelou.uri());
    settings.upstream.request_timeout_ms = 300;
    let app = spawn_with(settings).await;
    let problem = assert_problem(app.send(&seed_message()).await, 504, "deadline_exceeded").await;
    assert_eq!(problem["delivery"], "unknown");
    assert_eq!(problem["retryable"], false);
    assert_eq!(jelou.received_requests().await.unwrap().len(), 1);
}

/// A stand-in that reads the request, then closes the connection without answering.
async fn resetting_upstream() -> (String, tokio::task::JoinHandle<usize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let handle = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut buffer = vec![0u8; 64 * 1024];
        let read = socket.read(&mut buffer).await.unwrap();
        socket
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-le")
            .await
            .ok();
        drop(socket);
        read
    });
    (address, handle)
}

#[tokio::test]
async fn a_connection_dropped_mid_response_leaves_delivery_unknown() {
    let (address, upstream) = resetting_upstream().await;
    let app = spawn_with(settings_for(&address)).await;
    let problem =
        assert_problem(app.send(&seed_message()).await, 502, "upstream_unavailable").await;
    assert_eq!(problem["delivery"], "unknown");
    assert_eq!(problem["retryable"], false);
    assert!(
        upstream.await.unwrap() > 0,
        "the request reached the stand-in"
    );
}

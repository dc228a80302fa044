//! The fault suite: one row per upstream behaviour, each asserting the caller's status,
//! `code`, `delivery`, the attempts reported and the requests Jelou received.

use std::time::{Duration, SystemTime};

use crate::common::*;
use jelou_relay::config::{Settings, UnsafeRetry};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wiremock::matchers::any;
use wiremock::{Mock, MockServer, ResponseTemplate};

fn jelou_error(status: u16, code: &str, description: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(json!({"code": code, "description": description}))
}

fn ok() -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({}))
}

/// Jelou answers the templates in order, then repeats the last one.
async fn mount_sequence(jelou: &MockServer, answers: Vec<ResponseTemplate>) {
    let last = answers.len() - 1;
    for (index, answer) in answers.into_iter().enumerate() {
        let mock = Mock::given(any()).respond_with(answer);
        let mock = if index < last {
            mock.up_to_n_times(1).with_priority(index as u8 + 1)
        } else {
            mock.with_priority(100)
        };
        mock.mount(jelou).await;
    }
}

struct Row {
    name: &'static str,
    answers: Vec<ResponseTemplate>,
    status: u16,
    /// `None` for a success.
    code: Option<&'static str>,
    delivery: &'static str,
    attempts: u64,
    retry_after: Option<&'static str>,
}

async fn run_row(row: Row, tweak: impl FnOnce(&mut Settings)) -> Value {
    let jelou = MockServer::start().await;
    mount_sequence(&jelou, row.answers).await;
    let mut settings = settings_for(&jelou.uri());
    tweak(&mut settings);
    let app = spawn_with(settings).await;
    let response = app.send(&seed_message()).await;
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let body = match row.code {
        Some(code) => {
            let problem = assert_problem(response, row.status, code).await;
            assert_eq!(problem["delivery"], row.delivery, "{}: {problem}", row.name);
            problem
        }
        None => {
            assert_eq!(response.status().as_u16(), row.status, "{}", row.name);
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["status"], "sent", "{}", row.name);
            body
        }
    };
    assert_eq!(body["attempts"], row.attempts, "{}: {body}", row.name);
    assert_eq!(
        retry_after.as_deref(),
        row.retry_after,
        "{}: Retry-After",
        row.name
    );
    let calls = jelou.received_requests().await.unwrap().len() as u64;
    assert_eq!(calls, row.attempts, "{}: requests Jelou received", row.name);
    body
}

async fn run(row: Row) -> Value {
    run_row(row, |_| {}).await
}

#[tokio::test]
async fn jelou_refusing_the_message_is_422_upstream_rejected_and_not_retried() {
    for (status, code) in [
        (400, "message_could_not_be_send"),
        (400, "notification_could_not_be_send"),
        (422, "unprocessable_entity"),
        (404, "flow_not_found"),
    ] {
        let problem = run(Row {
            name: code,
            answers: vec![jelou_error(status, code, "outside the 24h window")],
            status: 422,
            code: Some("upstream_rejected"),
            delivery: "not_sent",
            attempts: 1,
            retry_after: None,
        })
        .await;
        assert_eq!(
            problem["upstream"],
            json!({"status": status, "code": code, "description": "outside the 24h window"})
        );
        assert_eq!(problem["retryable"], false);
    }
}

#[tokio::test]
async fn meta_pair_limit_as_400_is_rejected_not_retried() {
    run(Row {
        name: "400 with 131056",
        answers: vec![jelou_error(400, "131056", "pair rate limit hit")],
        status: 422,
        code: Some("upstream_rejected"),
        delivery: "not_sent",
        attempts: 1,
        retry_after: None,
    })
    .await;
}

#[tokio::test]
async fn description_is_also_read_from_message() {
    let problem = run(Row {
        name: "message field",
        answers: vec![ResponseTemplate::new(400).set_body_json(
            json!({"code": "message_could_not_be_send", "message": "window closed"}),
        )],
        status: 422,
        code: Some("upstream_rejected"),
        delivery: "not_sent",
        attempts: 1,
        retry_after: None,
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
        let problem = run(Row {
            name: code,
            answers: vec![jelou_error(
                status,
                code,
                "clientId relay-client is not valid",
            )],
            status: 502,
            code: Some("upstream_auth_failed"),
            delivery: "not_sent",
            attempts: 1,
            retry_after: None,
        })
        .await;
        assert_eq!(problem["upstream"], json!({"status": status, "code": code}));
        assert!(!problem.to_string().contains("relay-client"));
    }
}

#[tokio::test]
async fn server_errors_after_receiving_are_unknown_and_never_retried_by_default() {
    for status in [500, 502, 504] {
        let problem = run(Row {
            name: "5xx",
            answers: vec![jelou_error(status, "internal_server_error", "boom"), ok()],
            status: 502,
            code: Some("upstream_unavailable"),
            delivery: "unknown",
            attempts: 1,
            retry_after: None,
        })
        .await;
        assert_eq!(problem["retryable"], false);
    }
}

#[tokio::test]
async fn a_503_then_200_is_retried_and_sent() {
    run(Row {
        name: "503 then 200",
        answers: vec![ResponseTemplate::new(503), ok()],
        status: 200,
        code: None,
        delivery: "sent",
        attempts: 2,
        retry_after: None,
    })
    .await;
}

#[tokio::test]
async fn a_503_forever_stops_after_max_attempts_and_is_not_sent() {
    let problem = run(Row {
        name: "503 forever",
        answers: vec![ResponseTemplate::new(503)],
        status: 502,
        code: Some("upstream_unavailable"),
        delivery: "not_sent",
        attempts: 3,
        retry_after: None,
    })
    .await;
    assert_eq!(problem["retryable"], true);
}

#[tokio::test]
async fn a_429_with_retry_after_seconds_is_waited_out() {
    run(Row {
        name: "429 Retry-After: 1",
        answers: vec![
            ResponseTemplate::new(429).insert_header("retry-after", "1"),
            ok(),
        ],
        status: 200,
        code: None,
        delivery: "sent",
        attempts: 2,
        retry_after: None,
    })
    .await;
}

#[tokio::test]
async fn a_429_with_an_http_date_is_waited_out() {
    let date = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(1));
    run(Row {
        name: "429 Retry-After: date",
        answers: vec![
            ResponseTemplate::new(429).insert_header("retry-after", date.as_str()),
            ok(),
        ],
        status: 200,
        code: None,
        delivery: "sent",
        attempts: 2,
        retry_after: None,
    })
    .await;
}

#[tokio::test]
async fn x_ratelimit_reset_as_a_unix_time_is_the_wait_until_then() {
    let reset = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 30;
    let jelou = MockServer::start().await;
    mount_sequence(
        &jelou,
        vec![ResponseTemplate::new(429).insert_header("x-ratelimit-reset", reset.to_string())],
    )
    .await;
    let mut settings = settings_for(&jelou.uri());
    settings.delivery.retry_after_cap_ms = 1_000;
    let app = spawn_with(settings).await;
    let response = app.send(&seed_message()).await;
    let header: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let problem = assert_problem(response, 429, "rate_limited").await;
    assert_eq!(problem["delivery"], "not_sent");
    // About 30 s (the clock moved on a little), never 1.8 billion seconds.
    assert!((25..=31).contains(&header), "Retry-After: {header}");
    assert_eq!(problem["retry_after"], header);
    assert_eq!(jelou.received_requests().await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_429_whose_retry_after_passes_the_deadline_is_answered_at_once() {
    let problem = run_row(
        Row {
            name: "429 Retry-After: 30",
            answers: vec![
                ResponseTemplate::new(429).insert_header("retry-after", "30"),
                ok(),
            ],
            status: 429,
            code: Some("rate_limited"),
            delivery: "not_sent",
            attempts: 1,
            retry_after: Some("30"),
        },
        |s| s.delivery.retry_after_cap_ms = 60_000,
    )
    .await;
    assert_eq!(problem["retryable"], true);
    assert_eq!(problem["retry_after"], 30);
}

#[tokio::test]
async fn a_503_whose_retry_after_passes_the_deadline_is_503_with_retry_after() {
    run_row(
        Row {
            name: "503 Retry-After: 1 with a 1.5 s deadline",
            answers: vec![ResponseTemplate::new(503).insert_header("retry-after", "1")],
            status: 503,
            code: Some("upstream_unavailable"),
            delivery: "not_sent",
            attempts: 2,
            retry_after: Some("1"),
        },
        |s| s.delivery.deadline_ms = 1500,
    )
    .await;
}

#[tokio::test]
async fn an_unreadable_success_leaves_delivery_unknown() {
    for answer in [
        ResponseTemplate::new(200).set_body_string("<html>ok</html>"),
        ResponseTemplate::new(200),
    ] {
        run(Row {
            name: "200 not JSON",
            answers: vec![answer, ok()],
            status: 502,
            code: Some("upstream_unavailable"),
            delivery: "unknown",
            attempts: 1,
            retry_after: None,
        })
        .await;
    }
}

#[tokio::test]
async fn a_redirect_is_not_followed() {
    run(Row {
        name: "307",
        answers: vec![ResponseTemplate::new(307).insert_header("location", "/elsewhere")],
        status: 502,
        code: Some("upstream_unavailable"),
        delivery: "unknown",
        attempts: 1,
        retry_after: None,
    })
    .await;
}

#[tokio::test]
async fn a_response_slower_than_the_attempt_timeout_is_504_unknown_and_not_retried() {
    let problem = run_row(
        Row {
            name: "slow",
            answers: vec![ok().set_delay(Duration::from_secs(3))],
            status: 504,
            code: Some("deadline_exceeded"),
            delivery: "unknown",
            attempts: 1,
            retry_after: None,
        },
        |s| s.upstream.request_timeout_ms = 300,
    )
    .await;
    assert_eq!(problem["retryable"], false);
}

#[tokio::test]
async fn a_caller_may_ask_for_a_shorter_deadline() {
    let jelou = MockServer::start().await;
    mount_sequence(&jelou, vec![ok().set_delay(Duration::from_secs(20))]).await;
    let app = spawn_with(settings_for(&jelou.uri())).await;
    let started = std::time::Instant::now();
    let response = app
        .send_with(&seed_message(), &[("x-request-timeout-ms", "300")])
        .await;
    let problem = assert_problem(response, 504, "deadline_exceeded").await;
    assert_eq!(problem["delivery"], "unknown");
    assert!(
        // Far from Jelou's 20 s, with room for a loaded machine.
        started.elapsed() < Duration::from_secs(8),
        "the 300 ms deadline held"
    );

    for bad in ["0", "soon", "-5"] {
        let response = app
            .send_with(&seed_message(), &[("x-request-timeout-ms", bad)])
            .await;
        let problem = assert_problem(response, 422, "validation_failed").await;
        assert_eq!(error_fields(&problem), vec!["headers.x-request-timeout-ms"]);
    }
}

#[tokio::test]
async fn opted_in_unsafe_retries_are_retried_and_stay_unknown_when_they_fail() {
    run_row(
        Row {
            name: "500 then 200, 500 opted in",
            answers: vec![ResponseTemplate::new(500), ok()],
            status: 200,
            code: None,
            delivery: "sent",
            attempts: 2,
            retry_after: None,
        },
        |s| s.delivery.retry_unsafe = vec![UnsafeRetry::InternalServerError],
    )
    .await;
    // One unknown attempt makes the whole unknown, even when the last one was refused.
    run_row(
        Row {
            name: "502 then 503 forever, 502 opted in",
            answers: vec![ResponseTemplate::new(502), ResponseTemplate::new(503)],
            status: 502,
            code: Some("upstream_unavailable"),
            delivery: "unknown",
            attempts: 3,
            retry_after: None,
        },
        |s| s.delivery.retry_unsafe = vec![UnsafeRetry::BadGateway],
    )
    .await;
}

#[tokio::test]
async fn connection_refused_is_retried_then_not_sent() {
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
    assert_eq!(problem["attempts"], 3);
}

/// A stand-in that reads each request, then closes the connection without a complete
/// answer. Returns its address and a counter of requests read.
async fn resetting_upstream(
    partial_answer: &'static [u8],
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = count.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 64 * 1024];
                if socket.read(&mut buffer).await.unwrap_or(0) > 0 {
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                socket.write_all(partial_answer).await.ok();
                drop(socket);
            });
        }
    });
    (address, count)
}

#[tokio::test]
async fn a_reset_before_any_response_leaves_delivery_unknown_and_is_not_retried() {
    let (address, reads) = resetting_upstream(b"").await;
    let app = spawn_with(settings_for(&address)).await;
    let problem =
        assert_problem(app.send(&seed_message()).await, 502, "upstream_unavailable").await;
    assert_eq!(problem["delivery"], "unknown");
    assert_eq!(problem["retryable"], false);
    assert_eq!(problem["attempts"], 1);
    assert_eq!(reads.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_connection_dropped_mid_response_leaves_delivery_unknown() {
    let (address, reads) = resetting_upstream(b"HTTP/1.1 200 OK\r\ncontent-le").await;
    let app = spawn_with(settings_for(&address)).await;
    let problem =
        assert_problem(app.send(&seed_message()).await, 502, "upstream_unavailable").await;
    assert_eq!(problem["delivery"], "unknown");
    assert_eq!(reads.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn the_retry_budget_bounds_upstream_load_during_an_outage() {
    let jelou = MockServer::start().await;
    mount_sequence(&jelou, vec![ResponseTemplate::new(503)]).await;
    let mut settings = settings_for(&jelou.uri());
    settings.delivery.retry_budget_percent = 20.0;
    settings.delivery.retry_budget_min_per_second = 1;
    let app = spawn_with(settings).await;
    let requests = 100;
    for i in 0..requests {
        // A new recipient each time, so WhatsApp's pair limit stays out of the way.
        let mut message = seed_message();
        message["to"] = json!(format!("+5939876{i:05}"));
        let response = app.send(&message).await;
        let problem = assert_problem(response, 502, "upstream_unavailable").await;
        assert_eq!(problem["delivery"], "not_sent");
    }
    let calls = jelou.received_requests().await.unwrap().len();
    // Without a budget: 300 calls. With it: every request once, plus 20% of them, plus
    // the floor of 1 retry/s over the budget's 10 s window.
    assert!(calls >= requests, "{calls}");
    assert!(
        calls <= requests + requests / 5 + 10 + 2,
        "{calls} calls for {requests} requests"
    );
}

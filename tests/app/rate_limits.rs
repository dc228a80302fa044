//! Outbound rate limits per bot and per recipient, waiting within bounds, and load
//! shedding when the relay's queues are full.

use std::time::{Duration, Instant};

use crate::common::*;
use jelou_relay::config::Settings;
use serde_json::{Value, json};
use wiremock::matchers::any;
use wiremock::{Mock, MockServer, ResponseTemplate};

fn message_to(i: usize) -> Value {
    let mut message = seed_message();
    message["to"] = json!(format!("+5939876{i:05}"));
    message
}

/// Sends `messages` all at once; returns the responses' statuses and Retry-After values.
async fn burst(app: &TestApp, messages: Vec<Value>) -> Vec<(u16, Option<String>, Value)> {
    let handles: Vec<_> = messages
        .into_iter()
        .map(|message| {
            let request = app.client.post(app.url("/v1/flow-messages")).json(&message);
            tokio::spawn(async move {
                let response = request.send().await.unwrap();
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().to_string());
                (status, retry_after, response.json::<Value>().await.unwrap())
            })
        })
        .collect();
    let mut results = Vec::new();
    for handle in handles {
        results.push(handle.await.unwrap());
    }
    results
}

fn with_bot_rate(settings: &mut Settings, rate: f64, burst: u32) {
    let bot = settings.bots.get_mut("ventas").unwrap();
    bot.rate_per_second = Some(rate);
    bot.burst = Some(burst);
}

async fn a_burst_over_the_bot_limit_gets_429_with_retry_after(backend: Backend) {
    let jelou = accepting_jelou(Duration::ZERO).await;
    let mut settings = settings_for(&jelou.uri());
    with_bot_rate(&mut settings, 1.0, 3);
    settings.delivery.rate_limit_max_wait_ms = 0;
    let app = spawn_on(backend, settings).await;

    let started = Instant::now();
    let results = burst(&app, (0..20).map(message_to).collect()).await;
    let elapsed = started.elapsed();
    let sent = results.iter().filter(|(status, ..)| *status == 200).count();
    for (status, retry_after, body) in &results {
        if *status == 429 {
            assert_eq!(body["code"], "rate_limited");
            assert_eq!(body["delivery"], "not_sent");
            assert_eq!(body["attempts"], 0);
            let seconds: u64 = retry_after
                .as_deref()
                .expect("Retry-After")
                .parse()
                .unwrap();
            assert!((1..=2).contains(&seconds), "{seconds}");
        } else {
            assert_eq!(*status, 200, "{body}");
        }
    }
    // The burst of 3, plus at most one more cell per second that passed.
    let allowed = 3 + elapsed.as_secs() as usize;
    let calls = jelou.received_requests().await.unwrap().len();
    assert_eq!(calls, sent);
    assert!(
        (3..=allowed).contains(&calls),
        "{calls} sent in {elapsed:?}"
    );
}

async fn requests_wait_for_capacity_within_the_bound(backend: Backend) {
    let jelou = accepting_jelou(Duration::ZERO).await;
    let mut settings = settings_for(&jelou.uri());
    with_bot_rate(&mut settings, 10.0, 1);
    settings.delivery.rate_limit_max_wait_ms = 2000;
    let app = spawn_on(backend, settings).await;

    let started = Instant::now();
    let results = burst(&app, (0..5).map(message_to).collect()).await;
    assert!(
        results.iter().all(|(status, ..)| *status == 200),
        "{results:?}"
    );
    assert_eq!(jelou.received_requests().await.unwrap().len(), 5);
    // Never more than the rate: 5 calls at 10/s with a burst of 1 take at least 400 ms.
    assert!(started.elapsed() >= Duration::from_millis(400));
}

async fn the_pair_limit_applies_per_recipient(backend: Backend) {
    let jelou = accepting_jelou(Duration::ZERO).await;
    let mut settings = settings_for(&jelou.uri());
    settings.recipients.rate_per_second = 0.1667;
    settings.recipients.burst = 2;
    settings.delivery.rate_limit_max_wait_ms = 0;
    let app = spawn_on(backend, settings).await;

    for _ in 0..2 {
        assert_eq!(app.send(&seed_message()).await.status(), 200);
    }
    let response = app.send(&seed_message()).await;
    let seconds: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=7).contains(&seconds), "about 6 s: {seconds}");
    let problem = assert_problem(response, 429, "rate_limited").await;
    assert!(problem["detail"].as_str().unwrap().contains("recipient"));
    // Another recipient of the same bot is not held back.
    assert_eq!(app.send(&message_to(7)).await.status(), 200);
    assert_eq!(jelou.received_requests().await.unwrap().len(), 3);
}

async fn a_full_queue_sheds_at_once_with_503_overloaded(backend: Backend) {
    let jelou = accepting_jelou(Duration::from_millis(800)).await;
    let mut settings = settings_for(&jelou.uri());
    settings.delivery.max_in_flight = 2;
    settings.delivery.max_waiting = 1;
    let app = spawn_on(backend, settings).await;

    let started = Instant::now();
    let results = burst(&app, (0..6).map(message_to).collect()).await;
    let mut statuses: Vec<u16> = results.iter().map(|(status, ..)| *status).collect();
    statuses.sort();
    assert_eq!(statuses, vec![200, 200, 200, 503, 503, 503], "{results:?}");
    for (status, retry_after, body) in &results {
        if *status == 503 {
            assert_eq!(body["code"], "overloaded");
            assert_eq!(body["delivery"], "not_sent");
            assert_eq!(retry_after.as_deref(), Some("1"));
        }
    }
    assert_eq!(jelou.received_requests().await.unwrap().len(), 3);
    assert!(
        started.elapsed() >= Duration::from_millis(1600),
        "the third waited its turn"
    );
}

async fn a_request_keeps_its_permit_through_its_retries(backend: Backend) {
    // Jelou says "503, come back in 1 s" once, then accepts.
    let jelou = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(503).insert_header("retry-after", "1"))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&jelou)
        .await;
    accept_all(&jelou).await;
    let mut settings = settings_for(&jelou.uri());
    settings.delivery.max_in_flight = 1;
    settings.delivery.max_waiting = 0;
    let app = spawn_on(backend, settings).await;

    let first = {
        let request = app
            .client
            .post(app.url("/v1/flow-messages"))
            .json(&message_to(1));
        tokio::spawn(async move { request.send().await.unwrap() })
    };
    while jelou.received_requests().await.unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The first request is between its attempts: its permit is still held.
    let second = app.send(&message_to(2)).await;
    assert_problem(second, 503, "overloaded").await;
    let first: Value = first.await.unwrap().json().await.unwrap();
    assert_eq!(first["status"], "sent");
    assert_eq!(first["attempts"], 2);
}

on_both_backends!(
    a_burst_over_the_bot_limit_gets_429_with_retry_after,
    requests_wait_for_capacity_within_the_bound,
    the_pair_limit_applies_per_recipient,
    a_full_queue_sheds_at_once_with_503_overloaded,
    a_request_keeps_its_permit_through_its_retries,
);

//! `POST /v1/flow-messages/batch` on both stores: each message judged on its own, the
//! valid ones queued, the answer's items in request order, and the whole batch paced.

use std::time::Duration;

use crate::common::*;
use jelou_relay::config::{CallerSettings, Settings};
use serde_json::{Value, json};
use wiremock::MockServer;

const BATCH: &str = "/v1/flow-messages/batch";

fn settings(jelou: &MockServer) -> Settings {
    let mut settings = settings_for(&jelou.uri());
    let mut soporte = settings.bots["ventas"].clone();
    soporte.id = Some("BOT_2".into());
    settings.bots.insert("soporte".into(), soporte);
    settings.callers.insert(
        "orders".into(),
        CallerSettings {
            key_sha256: Some(caller_key_sha256()),
            bots: Some(vec!["ventas".into()]),
            rate_per_second: None,
            burst: None,
            ..Default::default()
        },
    );
    settings
}

async fn post_batch(app: &TestApp, body: &Value, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = app
        .client
        .post(app.url(BATCH))
        .header("authorization", format!("Bearer {CALLER_KEY}"))
        .json(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

async fn get_status(app: &TestApp, id: &str) -> Value {
    app.client
        .get(app.url(&format!("/v1/flow-messages/{id}")))
        .header("authorization", format!("Bearer {CALLER_KEY}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn until_sent(app: &TestApp, id: &str) -> Value {
    let until = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = get_status(app, id).await;
        if status["status"] != "queued" && status["status"] != "sending" {
            assert_eq!(status["status"], "sent", "{status}");
            return status;
        }
        assert!(std::time::Instant::now() < until, "{status}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn to(i: usize) -> Value {
    let mut message = seed_message();
    message["to"] = json!(format!("+5939900{i:05}"));
    message
}

async fn a_mixed_batch_gives_exactly_the_documented_items(backend: Backend) {
    let jelou = MockServer::start().await;
    accept_all(&jelou).await;
    let app = spawn_on(backend, settings(&jelou)).await;
    let mut invalid = seed_message();
    invalid["flow"].as_object_mut().unwrap().remove("cta");
    let mut forbidden = seed_message();
    forbidden["bot"] = json!("soporte");
    let mut unknown = seed_message();
    unknown["bot"] = json!("nope");
    let body = json!({"messages": [seed_message(), invalid, forbidden, unknown]});
    let response = post_batch(&app, &body, &[("x-request-id", "batch-1")]).await;
    assert_eq!(response.status().as_u16(), 202);
    let answer: Value = response.json().await.unwrap();
    let id = answer["items"][0]["id"]
        .as_str()
        .expect("an id")
        .to_string();
    let message = |answer: &Value, i: usize| answer["items"][i]["errors"][0]["message"].clone();
    assert_eq!(
        answer,
        json!({
            "accepted": 1,
            "rejected": 3,
            "items": [
                {"index": 0, "status": "queued", "id": id, "to": "593987654321"},
                {"index": 1, "status": "rejected", "code": "validation_failed",
                 "errors": [{"field": "messages[1].flow.cta", "message": message(&answer, 1)}]},
                {"index": 2, "status": "rejected", "code": "forbidden_bot",
                 "errors": [{"field": "messages[2].bot", "message": message(&answer, 2)}]},
                {"index": 3, "status": "rejected", "code": "unknown_bot",
                 "errors": [{"field": "messages[3].bot", "message": message(&answer, 3)}]},
            ]
        })
    );
    for i in 1..=3 {
        assert!(message(&answer, i).as_str().is_some_and(|m| !m.is_empty()));
    }
    let sent = until_sent(&app, &id).await;
    assert_eq!(sent["request_id"], "batch-1");
    let requests = jelou.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].url.path(),
        format!("/v1/bots/{BOT_ID}/users/593987654321/flow_message")
    );
    let body: Value = serde_json::from_slice(&requests[0].body).unwrap();
    assert_eq!(body, seed_upstream_body());
}

async fn a_batch_with_no_valid_message_is_422_with_its_items(backend: Backend) {
    let jelou = MockServer::start().await;
    let app = spawn_on(backend, settings(&jelou)).await;
    let mut invalid = seed_message();
    invalid["title"] = json!("");
    let body = json!({"messages": [invalid, 7]});
    let problem =
        assert_problem(post_batch(&app, &body, &[]).await, 422, "validation_failed").await;
    assert_eq!(problem["delivery"], "not_sent");
    let items = problem["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["status"], "rejected");
    assert_eq!(items[0]["errors"][0]["field"], "messages[0].title");
    assert_eq!(items[1]["errors"][0]["field"], "messages[1]");
    assert!(jelou.received_requests().await.unwrap().is_empty());
}

async fn an_empty_or_oversized_batch_is_a_field_error_on_messages(backend: Backend) {
    let jelou = MockServer::start().await;
    let mut settings = settings(&jelou);
    settings.asynchronous.max_batch = 3;
    let app = spawn_on(backend, settings).await;
    for body in [
        json!({"messages": []}),
        json!({"messages": [to(1), to(2), to(3), to(4)]}),
        json!({"messages": "all"}),
        json!({}),
    ] {
        let problem =
            assert_problem(post_batch(&app, &body, &[]).await, 422, "validation_failed").await;
        assert_eq!(error_fields(&problem), ["messages"], "{body}");
    }
}

async fn a_batch_past_its_body_limit_is_413(backend: Backend) {
    let jelou = MockServer::start().await;
    let mut settings = settings(&jelou);
    settings.server.batch_body_limit_bytes = 100_000;
    let app = spawn_on(backend, settings).await;
    let messages: Vec<Value> = (0..600).map(to).collect();
    let response = post_batch(&app, &json!({ "messages": messages }), &[]).await;
    assert_problem(response, 413, "payload_too_large").await;
    // The single send's own limit (64 KiB) does not bound a batch.
    let messages: Vec<Value> = (0..300).map(to).collect();
    let response = post_batch(&app, &json!({ "messages": messages }), &[]).await;
    assert_eq!(response.status().as_u16(), 202);
}

async fn with_the_queue_off_a_batch_is_501(backend: Backend) {
    let jelou = MockServer::start().await;
    let mut settings = settings(&jelou);
    settings.asynchronous.enabled = false;
    let app = spawn_on(backend, settings).await;
    let response = post_batch(&app, &json!({"messages": [seed_message()]}), &[]).await;
    let problem = assert_problem(response, 501, "async_disabled").await;
    assert_eq!(problem["delivery"], "not_sent");
}

async fn an_idempotency_key_covers_the_whole_batch(backend: Backend) {
    let jelou = MockServer::start().await;
    accept_all(&jelou).await;
    let app = spawn_on(backend, settings(&jelou)).await;
    let key = ("idempotency-key", "wave-1");
    let body = json!({"messages": [to(1), to(2)]});
    let first: Value = post_batch(&app, &body, &[key]).await.json().await.unwrap();
    assert_eq!(first["accepted"], 2);
    let again = post_batch(&app, &body, &[key]).await;
    assert_eq!(again.status().as_u16(), 202);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap(), first);
    for item in first["items"].as_array().unwrap() {
        until_sent(&app, item["id"].as_str().unwrap()).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(jelou.received_requests().await.unwrap().len(), 2);
    let other = json!({"messages": [to(1), to(3)]});
    assert_problem(
        post_batch(&app, &other, &[key]).await,
        422,
        "idempotency_key_reused",
    )
    .await;
}

async fn a_batch_past_max_queued_is_refused_whole(backend: Backend) {
    let jelou = MockServer::start().await;
    accept_all(&jelou).await;
    let mut settings = settings(&jelou);
    settings.asynchronous.max_queued = 3;
    // Nothing leaves: the bot sends one message a day.
    let bot = settings.bots.get_mut("ventas").unwrap();
    bot.rate_per_second = Some(0.00001);
    bot.burst = Some(1);
    let app = spawn_on(backend, settings).await;
    let body = json!({"messages": [to(1), to(2), to(3), to(4)]});
    let response = post_batch(&app, &body, &[]).await;
    assert_eq!(response.headers()["retry-after"], "1");
    let problem = assert_problem(response, 503, "overloaded").await;
    assert_eq!(problem["delivery"], "not_sent");
    let fits = json!({"messages": [to(1), to(2), to(3)]});
    assert_eq!(post_batch(&app, &fits, &[]).await.status().as_u16(), 202);
}

async fn a_batch_of_1000_at_200_per_second_sends_each_once_in_about_5_s(backend: Backend) {
    let jelou = MockServer::start().await;
    accept_all(&jelou).await;
    let mut settings = settings(&jelou);
    let bot = settings.bots.get_mut("ventas").unwrap();
    bot.rate_per_second = Some(200.0);
    bot.burst = Some(1);
    let app = spawn_on(backend, settings).await;
    let messages: Vec<Value> = (0..1000).map(to).collect();
    let posted = jelou_relay::queue::message::now_ms() as i128;
    let response = post_batch(&app, &json!({ "messages": messages }), &[]).await;
    assert_eq!(response.status().as_u16(), 202);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["accepted"], 1000);
    // The 202 came back before the paced sends could be over.
    let answered = jelou_relay::queue::message::now_ms() as i128;
    let mut sent_at = Vec::new();
    for item in answer["items"].as_array().unwrap() {
        let status = until_sent(&app, item["id"].as_str().unwrap()).await;
        assert_eq!(status["attempts"], 1);
        let updated = time::OffsetDateTime::parse(
            status["updated_at"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        sent_at.push(updated.unix_timestamp_nanos() / 1_000_000);
    }
    let requests = jelou.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1000);
    let mut paths: Vec<&str> = requests.iter().map(|r| r.url.path()).collect();
    paths.sort_unstable();
    paths.dedup();
    assert_eq!(paths.len(), 1000, "each message once");
    sent_at.sort_unstable();
    assert!(answered < sent_at[999], "the 202 waited for the sends");
    let span = (sent_at[999] - posted) as f64 / 1000.0;
    eprintln!("1,000 messages at 200/s: the last sent {span:.2} s after the batch was posted");
    // 999 intervals of 5 ms after the first: about 5 s, never sooner than the limit allows.
    assert!(span >= 4.99, "the last sent after {span:.2} s");
    assert!(span <= 15.0, "the last sent after {span:.2} s");
}

on_both_backends!(
    a_mixed_batch_gives_exactly_the_documented_items,
    a_batch_with_no_valid_message_is_422_with_its_items,
    an_empty_or_oversized_batch_is_a_field_error_on_messages,
    a_batch_past_its_body_limit_is_413,
    with_the_queue_off_a_batch_is_501,
    an_idempotency_key_covers_the_whole_batch,
    a_batch_past_max_queued_is_refused_whole,
    a_batch_of_1000_at_200_per_second_sends_each_once_in_about_5_s,
);

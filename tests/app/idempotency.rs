//! Idempotency keys: replay, conflict, reuse, and what is (not) stored.

use std::time::Duration;

use crate::common::*;
use serde_json::{Value, json};
use wiremock::matchers::any;
use wiremock::{Mock, MockServer, ResponseTemplate};

async fn jelou_answering(template: ResponseTemplate) -> MockServer {
    let jelou = MockServer::start().await;
    Mock::given(any())
        .respond_with(template)
        .mount(&jelou)
        .await;
    jelou
}

async fn calls(jelou: &MockServer) -> usize {
    jelou.received_requests().await.unwrap().len()
}

async fn the_same_key_and_message_replay_the_stored_answer(backend: Backend) {
    let jelou = jelou_answering(ResponseTemplate::new(200).set_body_json(json!({"id": 1}))).await;
    let app = spawn_on(backend, settings_for(&jelou.uri())).await;
    let key = [("idempotency-key", "order-42")];

    let first = app.send_with(&seed_message(), &key).await;
    assert_eq!(first.status(), 200);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first_body = first.text().await.unwrap();

    // The same message with keys in another order and other spacing is the same message.
    let mut reordered = serde_json::Map::new();
    for field in ["flow", "caption", "text", "title", "to", "bot"] {
        reordered.insert(field.into(), seed_message()[field].clone());
    }
    let second = app.send_with(&Value::Object(reordered), &key).await;
    assert_eq!(second.status(), 200);
    assert_eq!(second.headers()["idempotent-replayed"], "true");
    assert_eq!(second.headers()["content-type"], "application/json");
    assert_eq!(
        second.text().await.unwrap(),
        first_body,
        "the very same body"
    );
    assert_eq!(calls(&jelou).await, 1, "Jelou was not called again");
}

async fn the_same_key_for_another_message_is_422(backend: Backend) {
    let jelou = jelou_answering(ResponseTemplate::new(200).set_body_json(json!({}))).await;
    let app = spawn_on(backend, settings_for(&jelou.uri())).await;
    let key = [("idempotency-key", "k-1")];
    assert_eq!(app.send_with(&seed_message(), &key).await.status(), 200);
    let mut other = seed_message();
    other["title"] = json!("Adiós");
    let problem = assert_problem(
        app.send_with(&other, &key).await,
        422,
        "idempotency_key_reused",
    )
    .await;
    assert_eq!(problem["delivery"], "not_sent");
    assert_eq!(calls(&jelou).await, 1);
}

async fn a_hundred_concurrent_requests_with_one_key_send_once(backend: Backend) {
    let jelou = jelou_answering(
        ResponseTemplate::new(200)
            .set_body_json(json!({}))
            .set_delay(Duration::from_millis(300)),
    )
    .await;
    let app = spawn_on(backend, settings_for(&jelou.uri())).await;
    let handles: Vec<_> = (0..100)
        .map(|_| {
            let request = app
                .client
                .post(app.url("/v1/flow-messages"))
                .header("idempotency-key", "burst-1")
                .json(&seed_message());
            tokio::spawn(async move { request.send().await.unwrap() })
        })
        .collect();
    let mut responses = Vec::new();
    for handle in handles {
        responses.push(handle.await.unwrap());
    }
    let mut sent = 0;
    let mut replayed = 0;
    let mut in_flight = 0;
    for response in responses {
        match response.status().as_u16() {
            200 if response.headers().contains_key("idempotent-replayed") => replayed += 1,
            200 => sent += 1,
            409 => {
                assert_eq!(response.headers()["retry-after"], "1");
                let problem = assert_problem(response, 409, "idempotency_key_in_flight").await;
                assert_eq!(problem["retryable"], true);
                in_flight += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(sent, 1);
    assert_eq!(sent + replayed + in_flight, 100);
    assert_eq!(calls(&jelou).await, 1, "exactly one upstream call");
}

async fn validation_failures_are_not_stored(backend: Backend) {
    let jelou = jelou_answering(ResponseTemplate::new(200).set_body_json(json!({}))).await;
    let app = spawn_on(backend, settings_for(&jelou.uri())).await;
    let key = [("idempotency-key", "k-2")];
    let mut invalid = seed_message();
    invalid["title"] = json!("");
    assert_problem(
        app.send_with(&invalid, &key).await,
        422,
        "validation_failed",
    )
    .await;
    let response = app.send_with(&seed_message(), &key).await;
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("idempotent-replayed").is_none());
    assert_eq!(calls(&jelou).await, 1);
}

async fn a_provably_unsent_failure_frees_the_key(backend: Backend) {
    let jelou = jelou_answering(ResponseTemplate::new(503)).await;
    let app = spawn_on(backend, settings_for(&jelou.uri())).await;
    let key = [("idempotency-key", "k-3")];
    let problem = assert_problem(
        app.send_with(&seed_message(), &key).await,
        502,
        "upstream_unavailable",
    )
    .await;
    assert_eq!(problem["delivery"], "not_sent");
    let again = app.send_with(&seed_message(), &key).await;
    assert!(
        again.headers().get("idempotent-replayed").is_none(),
        "tried again, not replayed"
    );
    assert_eq!(
        calls(&jelou).await,
        6,
        "two requests of three attempts each"
    );
}

async fn an_unknown_outcome_is_stored_so_a_retry_cannot_duplicate(backend: Backend) {
    let jelou = jelou_answering(ResponseTemplate::new(500)).await;
    let app = spawn_on(backend, settings_for(&jelou.uri())).await;
    let key = [("idempotency-key", "k-4")];
    let first = app.send_with(&seed_message(), &key).await;
    let problem = assert_problem(first, 502, "upstream_unavailable").await;
    assert_eq!(problem["delivery"], "unknown");
    let replay = app.send_with(&seed_message(), &key).await;
    assert_eq!(replay.status(), 502);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(replay.headers()["content-type"], "application/problem+json");
    let replayed: Value = replay.json().await.unwrap();
    assert_eq!(replayed, problem);
    assert_eq!(calls(&jelou).await, 1);
}

async fn dry_runs_neither_use_nor_store_keys(backend: Backend) {
    let jelou = jelou_answering(ResponseTemplate::new(200).set_body_json(json!({}))).await;
    let app = spawn_on(backend, settings_for(&jelou.uri())).await;
    let response = app
        .client
        .post(app.url("/v1/flow-messages?dry_run=true"))
        .header("idempotency-key", "k-5")
        .json(&seed_message())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let sent = app
        .send_with(&seed_message(), &[("idempotency-key", "k-5")])
        .await;
    assert!(sent.headers().get("idempotent-replayed").is_none());
    assert_eq!(calls(&jelou).await, 1);
}

async fn keys_are_checked_and_may_be_required(backend: Backend) {
    let jelou = jelou_answering(ResponseTemplate::new(200).set_body_json(json!({}))).await;
    let mut settings = settings_for(&jelou.uri());
    settings.idempotency.required = true;
    let app = spawn_on(backend, settings).await;
    assert_problem(
        app.send(&seed_message()).await,
        400,
        "idempotency_key_required",
    )
    .await;
    let long = "k".repeat(256);
    for bad in [long.as_str(), "", "tab\there"] {
        let response = app
            .send_with(&seed_message(), &[("idempotency-key", bad)])
            .await;
        assert_problem(response, 400, "invalid_idempotency_key").await;
    }
    let max = "k".repeat(255);
    assert_eq!(
        app.send_with(&seed_message(), &[("idempotency-key", &max)])
            .await
            .status(),
        200
    );
    assert_eq!(calls(&jelou).await, 1);
}

on_both_backends!(
    the_same_key_and_message_replay_the_stored_answer,
    the_same_key_for_another_message_is_422,
    a_hundred_concurrent_requests_with_one_key_send_once,
    validation_failures_are_not_stored,
    a_provably_unsent_failure_frees_the_key,
    an_unknown_outcome_is_stored_so_a_retry_cannot_duplicate,
    dry_runs_neither_use_nor_store_keys,
    keys_are_checked_and_may_be_required,
);

/// The in-memory store never evicts a key being sent: with `max_keys = 2`, A still being
/// sent, then B and C, resending A waits for A's answer instead of sending again.
#[tokio::test]
async fn a_full_memory_store_never_evicts_a_key_being_sent() {
    let jelou = jelou_answering(
        ResponseTemplate::new(200)
            .set_body_json(json!({}))
            .set_delay(Duration::from_secs(3)),
    )
    .await;
    let mut settings = settings_for(&jelou.uri());
    settings.idempotency.max_keys = 2;
    let app = std::sync::Arc::new(spawn_with(settings).await);
    let message_to = |i: u32| {
        let mut message = seed_message();
        message["to"] = json!(format!("+5939876{i:05}"));
        message
    };
    let sending = {
        let app = app.clone();
        let message = message_to(1);
        tokio::spawn(async move { app.send_with(&message, &[("idempotency-key", "A")]).await })
    };
    while calls(&jelou).await == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let b = {
        let app = app.clone();
        let message = message_to(2);
        tokio::spawn(async move { app.send_with(&message, &[("idempotency-key", "B")]).await })
    };
    while calls(&jelou).await < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A and B are being sent: the store is full of claims it may not drop.
    let c = app
        .send_with(&message_to(3), &[("idempotency-key", "C")])
        .await;
    assert_eq!(c.headers()["retry-after"], "1");
    let problem = assert_problem(c, 503, "overloaded").await;
    assert_eq!(problem["delivery"], "not_sent");
    let again = app
        .send_with(&message_to(1), &[("idempotency-key", "A")])
        .await;
    assert_problem(again, 409, "idempotency_key_in_flight").await;
    assert_eq!(sending.await.unwrap().status(), 200);
    assert_eq!(b.await.unwrap().status(), 200);
    assert_eq!(calls(&jelou).await, 2, "A and B, once each");
}

//! Asynchronous sends (`Prefer: respond-async`) on both stores: the 202, the status
//! object through every state, cancellation, expiry, pacing without head-of-line
//! blocking, and the rule that a message whose fate is unknown is never sent again.

use std::time::Duration;

use crate::common::*;
use jelou_relay::config::{CallerSettings, Settings};
use serde_json::{Value, json};
use wiremock::matchers::{any, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

pub(crate) const ASYNC: (&str, &str) = ("prefer", "respond-async");
const OTHER_KEY: &str = "marketing-key-fedcba9876543210";

pub(crate) fn settings(jelou: &MockServer) -> Settings {
    let mut settings = settings_for(&jelou.uri());
    settings.asynchronous.backoff_cap_ms = 40;
    settings
}

pub(crate) fn message_to(digits: &str) -> Value {
    let mut message = seed_message();
    message["to"] = json!(digits);
    message
}

/// Queues `body`; asserts the 202 and its headers; returns the answer.
pub(crate) async fn queue(app: &TestApp, body: &Value, headers: &[(&str, &str)]) -> Value {
    let mut all = vec![ASYNC];
    all.extend_from_slice(headers);
    let response = app.send_with(body, &all).await;
    assert_eq!(response.status().as_u16(), 202);
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (location, applied) = (header("location"), header("preference-applied"));
    let answer: Value = response.json().await.unwrap();
    let id = answer["id"].as_str().expect("an id").to_string();
    assert!(
        id.len() <= 64
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "{id}"
    );
    assert_eq!(location, Some(format!("/v1/flow-messages/{id}")));
    assert_eq!(applied.as_deref(), Some("respond-async"));
    answer
}

pub(crate) use crate::common::{settled, status};

pub(crate) async fn calls(jelou: &MockServer) -> usize {
    jelou.received_requests().await.unwrap_or_default().len()
}

async fn a_queued_message_is_answered_202_then_sent_once(backend: Backend) {
    let jelou = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(format!(
            "/v1/bots/{BOT_ID}/users/593987654321/flow_message"
        )))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": "wamid.1"})))
        .mount(&jelou)
        .await;
    let app = spawn_on(backend, settings(&jelou)).await;
    let before = jelou_relay::queue::message::now_ms();
    let answer = queue(&app, &seed_message(), &[("x-request-id", "req-async-1")]).await;
    let id = answer["id"].as_str().unwrap();
    let keys: Vec<&str> = answer
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        ["status", "id", "request_id", "bot", "to", "expires_at"]
    );
    assert_eq!(answer["status"], "queued");
    assert_eq!(answer["request_id"], "req-async-1");
    assert_eq!(
        (answer["bot"].as_str(), answer["to"].as_str()),
        (Some("ventas"), Some("593987654321"))
    );

    let sent = settled(&app, id, "sent").await;
    assert_eq!(sent["id"], id);
    assert_eq!(sent["delivery"], "sent");
    assert_eq!(sent["attempts"], 1);
    assert_eq!(sent["request_id"], "req-async-1");
    assert_eq!(sent["upstream"], json!({"id": "wamid.1"}));
    assert!(sent.get("error").is_none(), "{sent}");
    for field in ["created_at", "updated_at", "expires_at"] {
        assert!(
            sent[field]
                .as_str()
                .is_some_and(|t| t.ends_with('Z') && t.contains('T')),
            "{sent}"
        );
    }
    assert_eq!(sent["expires_at"], answer["expires_at"]);
    // The default expiry: async.ttl_seconds (3600) after acceptance.
    let expires = time_ms(sent["expires_at"].as_str().unwrap());
    assert!(
        expires >= before + 3_600_000 && expires <= before + 3_610_000,
        "{sent}"
    );

    let requests = jelou.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(
        request
            .headers
            .get("authorization")
            .unwrap()
            .to_str()
            .unwrap(),
        expected_authorization()
    );
    assert_eq!(request.headers.get("x-request-id").unwrap(), "req-async-1");
    let body: Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(body, seed_upstream_body());
}

/// Milliseconds since the epoch of an RFC 3339 UTC time as the relay writes it.
fn time_ms(text: &str) -> u64 {
    let parsed = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .expect("RFC 3339");
    (parsed.unix_timestamp_nanos() / 1_000_000) as u64
}

async fn without_the_preference_a_send_stays_synchronous(backend: Backend) {
    let jelou = MockServer::start().await;
    accept_all(&jelou).await;
    let app = spawn_on(backend, settings(&jelou)).await;
    let response = app
        .send_with(&seed_message(), &[("prefer", "return=minimal")])
        .await;
    assert_eq!(response.status().as_u16(), 200);
    assert!(response.headers().get("preference-applied").is_none());
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "sent");
    assert_eq!(calls(&jelou).await, 1);
}

async fn a_message_jelou_refuses_is_failed_with_its_answer(backend: Backend) {
    let jelou = MockServer::start().await;
    Mock::given(any())
        .respond_with(
            ResponseTemplate::new(422)
                .set_body_json(json!({"code": "invalid_flow", "message": "no such flow"})),
        )
        .mount(&jelou)
        .await;
    let app = spawn_on(backend, settings(&jelou)).await;
    let id = queue(&app, &seed_message(), &[]).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let failed = settled(&app, &id, "failed").await;
    assert_eq!(failed["delivery"], "not_sent");
    assert_eq!(failed["attempts"], 1);
    assert_eq!(failed["error"]["code"], "upstream_rejected");
    assert!(failed["error"]["title"].is_string() && failed["error"]["detail"].is_string());
    assert_eq!(
        failed["error"]["upstream"],
        json!({"status": 422, "code": "invalid_flow", "description": "no such flow"})
    );
    assert!(failed.get("upstream").is_none(), "{failed}");
    assert_eq!(calls(&jelou).await, 1);
}

async fn a_500_makes_the_message_unknown_and_it_is_never_sent_again(backend: Backend) {
    let jelou = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(500).set_body_json(json!({"message": "boom"})))
        .mount(&jelou)
        .await;
    let app = spawn_on(backend, settings(&jelou)).await;
    let id = queue(&app, &seed_message(), &[]).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let unknown = settled(&app, &id, "unknown").await;
    assert_eq!(unknown["delivery"], "unknown");
    assert_eq!(unknown["error"]["code"], "upstream_unavailable");
    assert_eq!(unknown["error"]["upstream"]["status"], 500);
    // Well past several backoffs: still one call.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(calls(&jelou).await, 1);
    assert_eq!(status(&app, &id).await.1["status"], "unknown");
}

async fn a_timeout_after_the_request_was_written_is_unknown_deadline_exceeded(backend: Backend) {
    let jelou = accepting_jelou(Duration::from_secs(3)).await;
    let mut settings = settings(&jelou);
    settings.upstream.request_timeout_ms = 300;
    let app = spawn_on(backend, settings).await;
    let id = queue(&app, &seed_message(), &[]).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let unknown = settled(&app, &id, "unknown").await;
    assert_eq!(unknown["error"]["code"], "deadline_exceeded");
    assert_eq!(unknown["delivery"], "unknown");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(calls(&jelou).await, 1);
}

async fn a_503_is_retried_until_jelou_comes_back(backend: Backend) {
    let jelou = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(3)
        .mount(&jelou)
        .await;
    accept_all(&jelou).await;
    let mut settings = settings(&jelou);
    // More than the synchronous attempts: a queued message is bounded by its expiry.
    settings.delivery.max_attempts = 2;
    let app = spawn_on(backend, settings).await;
    let id = queue(&app, &seed_message(), &[]).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let sent = settled(&app, &id, "sent").await;
    assert_eq!(sent["attempts"], 4);
    assert_eq!(calls(&jelou).await, 4);
}

async fn a_message_not_sent_before_its_expiry_is_expired(backend: Backend) {
    let jelou = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(503))
        .mount(&jelou)
        .await;
    let app = spawn_on(backend, settings(&jelou)).await;
    let answer = queue(&app, &seed_message(), &[("x-message-ttl-seconds", "1")]).await;
    let id = answer["id"].as_str().unwrap();
    let expired = settled(&app, id, "expired").await;
    assert_eq!(expired["delivery"], "not_sent");
    assert_eq!(expired["error"]["code"], "expired");
    assert!(expired["attempts"].as_u64().unwrap() >= 2, "{expired}");
    let (created, expires) = (
        time_ms(expired["created_at"].as_str().unwrap()),
        time_ms(expired["expires_at"].as_str().unwrap()),
    );
    assert_eq!(expires - created, 1000);
    assert!(time_ms(expired["updated_at"].as_str().unwrap()) >= expires);
}

async fn an_expiry_out_of_range_is_a_field_error(backend: Backend) {
    let jelou = MockServer::start().await;
    let app = spawn_on(backend, settings(&jelou)).await;
    for ttl in ["0", "86401", "soon", "-5"] {
        let response = app
            .send_with(&seed_message(), &[ASYNC, ("x-message-ttl-seconds", ttl)])
            .await;
        let problem = assert_problem(response, 422, "validation_failed").await;
        assert_eq!(
            error_fields(&problem),
            ["headers.x-message-ttl-seconds"],
            "{ttl}"
        );
    }
    // With the body's own errors, all at once.
    let mut bad = seed_message();
    bad["title"] = json!("");
    let response = app
        .send_with(&bad, &[ASYNC, ("x-message-ttl-seconds", "0")])
        .await;
    let problem = assert_problem(response, 422, "validation_failed").await;
    assert_eq!(
        error_fields(&problem),
        ["title", "headers.x-message-ttl-seconds"]
    );
    assert_eq!(calls(&jelou).await, 0);
}

async fn an_idempotent_replay_returns_the_same_202_and_id(backend: Backend) {
    let jelou = MockServer::start().await;
    accept_all(&jelou).await;
    let app = spawn_on(backend, settings(&jelou)).await;
    let key = ("idempotency-key", "order-77");
    let first = queue(&app, &seed_message(), &[key]).await;
    let response = app.send_with(&seed_message(), &[ASYNC, key]).await;
    assert_eq!(response.status().as_u16(), 202);
    assert_eq!(
        response.headers().get("idempotent-replayed").unwrap(),
        "true"
    );
    let id = first["id"].as_str().unwrap();
    assert_eq!(
        response
            .headers()
            .get("location")
            .unwrap()
            .to_str()
            .unwrap(),
        format!("/v1/flow-messages/{id}")
    );
    assert_eq!(
        response.headers().get("preference-applied").unwrap(),
        "respond-async"
    );
    let replayed: Value = response.json().await.unwrap();
    assert_eq!(replayed, first);
    settled(&app, id, "sent").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(calls(&jelou).await, 1);

    let mut other = seed_message();
    other["title"] = json!("Otro");
    let response = app.send_with(&other, &[ASYNC, key]).await;
    assert_problem(response, 422, "idempotency_key_reused").await;
}

async fn another_callers_message_or_an_unknown_id_is_not_found(backend: Backend) {
    let jelou = MockServer::start().await;
    accept_all(&jelou).await;
    let mut settings = settings(&jelou);
    for (name, key) in [("orders", CALLER_KEY), ("marketing", OTHER_KEY)] {
        settings.callers.insert(
            name.into(),
            CallerSettings {
                key_sha256: Some(jelou_relay::api::auth::hash_key(key.as_bytes())),
                bots: None,
                rate_per_second: None,
                burst: None,
                ..Default::default()
            },
        );
    }
    let app = spawn_on(backend, settings).await;
    let orders = format!("Bearer {CALLER_KEY}");
    let answer = queue(&app, &seed_message(), &[("authorization", &orders)]).await;
    let id = answer["id"].as_str().unwrap();
    let read = |key: String, id: String| {
        let request = app
            .client
            .get(app.url(&format!("/v1/flow-messages/{id}")))
            .header("authorization", key);
        async move { request.send().await.unwrap() }
    };
    let mine = read(orders.clone(), id.to_string()).await;
    assert_eq!(mine.status().as_u16(), 200);
    let theirs = read(format!("Bearer {OTHER_KEY}"), id.to_string()).await;
    assert_problem(theirs, 404, "not_found").await;
    let cancel = app
        .client
        .delete(app.url(&format!("/v1/flow-messages/{id}")))
        .header("authorization", format!("Bearer {OTHER_KEY}"))
        .send()
        .await
        .unwrap();
    assert_problem(cancel, 404, "not_found").await;
    let unknown = read(orders.clone(), "msg_0000".into()).await;
    assert_problem(unknown, 404, "not_found").await;
    let anonymous = app
        .client
        .get(app.url(&format!("/v1/flow-messages/{id}")))
        .send()
        .await
        .unwrap();
    assert_problem(anonymous, 401, "unauthorized").await;
}

async fn with_the_queue_off_the_preference_is_ignored(backend: Backend) {
    let jelou = MockServer::start().await;
    accept_all(&jelou).await;
    let mut settings = settings(&jelou);
    settings.asynchronous.enabled = false;
    let app = spawn_on(backend, settings).await;
    let response = app
        .send_with(&seed_message(), &[ASYNC, ("x-message-ttl-seconds", "0")])
        .await;
    assert_eq!(response.status().as_u16(), 200);
    assert!(response.headers().get("preference-applied").is_none());
    assert_eq!(response.json::<Value>().await.unwrap()["status"], "sent");
    assert_problem(
        app.client
            .get(app.url("/v1/flow-messages/msg_1"))
            .send()
            .await
            .unwrap(),
        404,
        "not_found",
    )
    .await;
}

on_both_backends!(
    a_queued_message_is_answered_202_then_sent_once,
    without_the_preference_a_send_stays_synchronous,
    a_message_jelou_refuses_is_failed_with_its_answer,
    a_500_makes_the_message_unknown_and_it_is_never_sent_again,
    a_timeout_after_the_request_was_written_is_unknown_deadline_exceeded,
    a_503_is_retried_until_jelou_comes_back,
    a_message_not_sent_before_its_expiry_is_expired,
    an_expiry_out_of_range_is_a_field_error,
    an_idempotent_replay_returns_the_same_202_and_id,
    another_callers_message_or_an_unknown_id_is_not_found,
    with_the_queue_off_the_preference_is_ignored,
);

//! Signed callbacks on both stores: every final status POSTed to the caller's URL with
//! Standard Webhooks headers (verified here with HMAC-SHA256 computed independently),
//! retried with the same `webhook-id` until a 2xx, never redirected, given up at the
//! try limit, and never changing the message's status.

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use jelou_relay::config::{CallerSettings, Settings};
use secrecy::SecretString;
use serde_json::{Value, json};
use sha2::Sha256;
use wiremock::matchers::{any, method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use crate::common::*;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn settings(jelou: &MockServer, receiver: &MockServer) -> Settings {
    let mut settings = settings_for(&jelou.uri());
    settings.callers.insert(
        "orders".into(),
        CallerSettings {
            key_sha256: Some(caller_key_sha256()),
            callback_url: Some(format!("{}/hook", receiver.uri())),
            callback_secret: Some(SecretString::from(SECRET)),
            ..Default::default()
        },
    );
    settings.callbacks.backoff_base_ms = 50;
    settings.callbacks.backoff_cap_ms = 200;
    settings
}

fn auth() -> (&'static str, String) {
    ("authorization", format!("Bearer {CALLER_KEY}"))
}

async fn queue(app: &TestApp) -> String {
    let (name, value) = auth();
    let response = app
        .send_with(
            &seed_message(),
            &[("prefer", "respond-async"), (name, &value)],
        )
        .await;
    assert_eq!(response.status().as_u16(), 202);
    response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn status(app: &TestApp, id: &str) -> Value {
    let (name, value) = auth();
    app.client
        .get(app.url(&format!("/v1/flow-messages/{id}")))
        .header(name, value)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The callbacks the receiver got, once there are `count` (generous for loaded machines).
async fn callbacks(receiver: &MockServer, count: usize) -> Vec<Request> {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let got: Vec<Request> = receiver
            .received_requests()
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.url.path() == "/hook")
            .collect();
        if got.len() >= count {
            return got;
        }
        assert!(Instant::now() < until, "{} of {count} callbacks", got.len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn header<'a>(request: &'a Request, name: &str) -> &'a str {
    request
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("no {name} header"))
}

/// Checks the Standard Webhooks signature of `request`, computed here on its own.
fn assert_signed(request: &Request) {
    let key = STANDARD
        .decode(SECRET.trim_start_matches("whsec_"))
        .unwrap();
    let signed = format!(
        "{}.{}.{}",
        header(request, "webhook-id"),
        header(request, "webhook-timestamp"),
        String::from_utf8(request.body.clone()).unwrap()
    );
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key).unwrap();
    mac.update(signed.as_bytes());
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    assert_eq!(header(request, "webhook-signature"), expected);
    let timestamp: u64 = header(request, "webhook-timestamp").parse().unwrap();
    let now = jelou_relay::queue::message::now_ms() / 1000;
    assert!(
        timestamp <= now && now - timestamp < 60,
        "{timestamp} vs {now}"
    );
    assert_eq!(header(request, "content-type"), "application/json");
}

async fn a_final_status_is_posted_signed_as_the_status_object(backend: Backend) {
    let jelou = accepting_jelou(Duration::ZERO).await;
    let receiver = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/hook"))
        .respond_with(ResponseTemplate::new(204))
        .mount(&receiver)
        .await;
    let app = spawn_on(backend, settings(&jelou, &receiver)).await;
    let id = queue(&app).await;
    let got = callbacks(&receiver, 1).await;
    assert_eq!(got.len(), 1);
    let callback = &got[0];
    assert_signed(callback);
    assert_eq!(header(callback, "webhook-id"), id);
    let body: Value = serde_json::from_slice(&callback.body).unwrap();
    assert_eq!(body["status"], "sent");
    assert_eq!(body, status(&app, &id).await);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        callbacks(&receiver, 1).await.len(),
        1,
        "a 2xx ends delivery"
    );
}

async fn a_receiver_failing_twice_gets_the_third_try_with_the_same_id(backend: Backend) {
    let jelou = accepting_jelou(Duration::ZERO).await;
    let receiver = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(2)
        .with_priority(1)
        .mount(&receiver)
        .await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200))
        .mount(&receiver)
        .await;
    let app = spawn_on(backend, settings(&jelou, &receiver)).await;
    let id = queue(&app).await;
    let got = callbacks(&receiver, 3).await;
    for callback in &got {
        assert_signed(callback);
        assert_eq!(header(callback, "webhook-id"), id);
        assert_eq!(callback.body, got[0].body);
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(callbacks(&receiver, 3).await.len(), 3);
}

async fn every_final_status_is_posted(backend: Backend) {
    let jelou = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(422).set_body_json(json!({"message": "no"})))
        .mount(&jelou)
        .await;
    let receiver = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200))
        .mount(&receiver)
        .await;
    let mut settings = settings(&jelou, &receiver);
    // One message per recipient at a time: the second waits, and is canceled.
    settings.recipients.rate_per_second = 0.01;
    settings.recipients.burst = 1;
    let app = spawn_on(backend, settings).await;
    let failed = queue(&app).await;
    let waiting = queue(&app).await;
    let (name, value) = auth();
    let canceled = app
        .client
        .delete(app.url(&format!("/v1/flow-messages/{waiting}")))
        .header(name, value)
        .send()
        .await
        .unwrap();
    assert_eq!(canceled.status().as_u16(), 200);
    let got = callbacks(&receiver, 2).await;
    let mut seen: Vec<(String, String)> = got
        .iter()
        .map(|r| {
            let body: Value = serde_json::from_slice(&r.body).unwrap();
            (
                body["id"].as_str().unwrap().to_string(),
                body["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    seen.sort();
    let mut expected = vec![
        (failed, "failed".to_string()),
        (waiting, "canceled".to_string()),
    ];
    expected.sort();
    assert_eq!(seen, expected);
}

async fn delivery_gives_up_at_the_try_limit_and_never_changes_the_status(backend: Backend) {
    let jelou = accepting_jelou(Duration::ZERO).await;
    let receiver = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(500))
        .mount(&receiver)
        .await;
    let mut settings = settings(&jelou, &receiver);
    settings.callbacks.max_attempts = 3;
    let app = spawn_on(backend, settings).await;
    let id = queue(&app).await;
    callbacks(&receiver, 3).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(callbacks(&receiver, 3).await.len(), 3);
    assert_eq!(status(&app, &id).await["status"], "sent");
}

async fn redirects_are_not_followed(backend: Backend) {
    let jelou = accepting_jelou(Duration::ZERO).await;
    let receiver = MockServer::start().await;
    Mock::given(path("/hook"))
        .respond_with(ResponseTemplate::new(307).insert_header("location", "/elsewhere"))
        .mount(&receiver)
        .await;
    Mock::given(path("/elsewhere"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&receiver)
        .await;
    let mut settings = settings(&jelou, &receiver);
    settings.callbacks.max_attempts = 2;
    let app = spawn_on(backend, settings).await;
    queue(&app).await;
    callbacks(&receiver, 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let requests = receiver.received_requests().await.unwrap();
    assert!(
        requests.iter().all(|r| r.url.path() == "/hook"),
        "followed a redirect"
    );
    assert_eq!(requests.len(), 2, "a redirect is a failed try");
}

on_both_backends!(
    a_final_status_is_posted_signed_as_the_status_object,
    a_receiver_failing_twice_gets_the_third_try_with_the_same_id,
    every_final_status_is_posted,
    delivery_gives_up_at_the_try_limit_and_never_changes_the_status,
    redirects_are_not_followed,
);

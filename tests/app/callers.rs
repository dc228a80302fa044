//! Caller authentication, per-caller bots and rates, and per-caller idempotency namespaces.

use std::time::Duration;

use crate::common::*;
use jelou_relay::config::{CallerSettings, Settings};
use serde_json::{Value, json};
use wiremock::MockServer;

const MARKETING_KEY: &str = "marketing-key-fedcba9876543210";

async fn jelou() -> MockServer {
    let jelou = MockServer::start().await;
    accept_all(&jelou).await;
    jelou
}

/// Two bots; `orders` may use only `ventas`; `marketing` may use both, at 1/s, burst 2.
fn settings_with_callers(jelou: &MockServer) -> Settings {
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
    settings.callers.insert(
        "marketing".into(),
        CallerSettings {
            key_sha256: Some(jelou_relay::api::auth::hash_key(MARKETING_KEY.as_bytes())),
            bots: None,
            rate_per_second: Some(1.0),
            burst: Some(2),
            ..Default::default()
        },
    );
    settings
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

#[tokio::test]
async fn a_missing_or_wrong_key_is_401_with_a_bearer_challenge() {
    let jelou = jelou().await;
    let app = spawn_with(settings_with_callers(&jelou)).await;
    let cases: [(Option<String>, &str); 5] = [
        (None, "Bearer realm=\"jelou-relay\""),
        (
            Some(bearer("not-the-key")),
            "Bearer realm=\"jelou-relay\", error=\"invalid_token\"",
        ),
        (
            Some(format!("Basic {CALLER_KEY}")),
            "Bearer realm=\"jelou-relay\"",
        ),
        (Some("Bearer".into()), "Bearer realm=\"jelou-relay\""),
        (
            Some(bearer(&caller_key_sha256())),
            "Bearer realm=\"jelou-relay\", error=\"invalid_token\"",
        ),
    ];
    for (authorization, challenge) in cases {
        let mut request = app
            .client
            .post(app.url("/v1/flow-messages"))
            .json(&seed_message());
        if let Some(value) = &authorization {
            request = request.header("authorization", value);
        }
        let response = request.send().await.unwrap();
        assert_eq!(
            response.headers()["www-authenticate"],
            challenge,
            "{authorization:?}"
        );
        let problem = assert_problem(response, 401, "unauthorized").await;
        assert_eq!(problem["delivery"], "not_sent");
    }
    assert!(jelou.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_valid_key_sends_and_probes_stay_open() {
    let jelou = jelou().await;
    let app = spawn_with(settings_with_callers(&jelou)).await;
    let response = app
        .send_with(&seed_message(), &[("authorization", &bearer(CALLER_KEY))])
        .await;
    assert_eq!(response.status(), 200);
    for path in ["/healthz", "/readyz", "/openapi.json"] {
        assert_eq!(
            app.client.get(app.url(path)).send().await.unwrap().status(),
            200,
            "{path}"
        );
    }
    assert_eq!(jelou.received_requests().await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_bot_outside_the_callers_list_is_403() {
    let jelou = jelou().await;
    let app = spawn_with(settings_with_callers(&jelou)).await;
    let mut message = seed_message();
    message["bot"] = json!("soporte");
    let response = app
        .send_with(&message, &[("authorization", &bearer(CALLER_KEY))])
        .await;
    let problem = assert_problem(response, 403, "forbidden_bot").await;
    assert_eq!(problem["delivery"], "not_sent");
    let response = app
        .send_with(&message, &[("authorization", &bearer(MARKETING_KEY))])
        .await;
    assert_eq!(response.status(), 200, "marketing may use every bot");
    let sent = jelou.received_requests().await.unwrap();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        sent[0].url.path(),
        "/v1/bots/BOT_2/users/593987654321/flow_message"
    );
}

#[tokio::test]
async fn each_caller_has_its_own_rate_with_ratelimit_headers() {
    let jelou = jelou().await;
    let app = spawn_with(settings_with_callers(&jelou)).await;
    let marketing = [("authorization", bearer(MARKETING_KEY))];
    let marketing: Vec<(&str, &str)> = marketing.iter().map(|(k, v)| (*k, v.as_str())).collect();

    let first = app.send_with(&seed_message(), &marketing).await;
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["ratelimit-policy"], "\"caller\";q=2;w=2");
    assert_eq!(first.headers()["ratelimit"], "\"caller\";r=1;t=1");
    let mut other = seed_message();
    other["to"] = json!("+593 98 765 0000");
    assert_eq!(app.send_with(&other, &marketing).await.status(), 200);

    let limited = app.send_with(&seed_message(), &marketing).await;
    assert_eq!(limited.headers()["retry-after"], "1");
    assert_eq!(limited.headers()["ratelimit"], "\"caller\";r=0;t=1");
    assert_eq!(limited.headers()["ratelimit-policy"], "\"caller\";q=2;w=2");
    let problem = assert_problem(limited, 429, "rate_limited").await;
    assert_eq!(problem["delivery"], "not_sent");

    // Another caller is not held back by marketing's rate.
    let orders = app
        .send_with(
            &message_to_third(),
            &[("authorization", &bearer(CALLER_KEY))],
        )
        .await;
    assert_eq!(orders.status(), 200);
    assert!(
        orders.headers().get("ratelimit").is_none(),
        "orders has no rate of its own"
    );
    assert_eq!(jelou.received_requests().await.unwrap().len(), 3);
}

fn message_to_third() -> Value {
    let mut message = seed_message();
    message["to"] = json!("+593 98 765 1111");
    message
}

#[tokio::test]
async fn idempotency_keys_are_namespaced_per_caller() {
    let jelou = jelou().await;
    let app = spawn_with(settings_with_callers(&jelou)).await;
    for key in [CALLER_KEY, MARKETING_KEY] {
        let response = app
            .send_with(
                &seed_message(),
                &[
                    ("authorization", &bearer(key)),
                    ("idempotency-key", "same-key"),
                ],
            )
            .await;
        assert_eq!(response.status(), 200);
        assert!(
            response.headers().get("idempotent-replayed").is_none(),
            "no cross-caller replay"
        );
    }
    let replay = app
        .send_with(
            &seed_message(),
            &[
                ("authorization", &bearer(CALLER_KEY)),
                ("idempotency-key", "same-key"),
            ],
        )
        .await;
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(jelou.received_requests().await.unwrap().len(), 2);
}

#[test]
fn the_caller_is_logged_by_name_and_its_key_never() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let jelou = runtime.block_on(jelou());
    let uri = jelou.uri();
    let hash = caller_key_sha256();
    let mut relay = RelayProcess::start(&[
        ("JELOU_RELAY__UPSTREAM__MODE", "jelou"),
        ("JELOU_RELAY__UPSTREAM__BASE_URL", &uri),
        ("JELOU_RELAY__BOTS__VENTAS__CLIENT_ID", CLIENT_ID),
        ("JELOU_RELAY__BOTS__VENTAS__CLIENT_SECRET", CLIENT_SECRET),
        ("JELOU_RELAY__CALLERS__ORDERS__KEY_SHA256", &hash),
        ("JELOU_RELAY__CALLERS__ORDERS__BOTS", "ventas"),
        ("RUST_LOG", "debug"),
    ]);
    let url = relay.url("/v1/flow-messages");
    let status = runtime.block_on(async {
        reqwest::Client::new()
            .post(url)
            .header("authorization", bearer(CALLER_KEY))
            .json(&seed_message())
            .send()
            .await
            .unwrap()
            .status()
    });
    assert_eq!(status, 200);
    assert!(relay.terminate(Duration::from_secs(10)).success());
    let logs = relay.output();
    let finished = log_line(&logs, "request finished");
    assert_eq!(finished["span"]["caller"], "orders", "{finished}");
    assert_eq!(
        finished["span"]["trace_id"].as_str().map(str::len),
        Some(32),
        "{finished}"
    );
    assert!(!logs.contains(CALLER_KEY));
}

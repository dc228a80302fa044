//! `/metrics` on the admin listener moves with traffic. A binary of its own: the metrics
//! recorder is global to the process, so exact counts need a process without other tests.

#[macro_use]
mod common;

use common::*;
use jelou_relay::config::CallerSettings;
use serde_json::json;
use wiremock::matchers::any;
use wiremock::{Mock, MockServer, ResponseTemplate};

const QUEUE_KEY: &str = "campaigns-key-0123456789abcdef";

/// The value of the first sample of `name` carrying every `label="value"` pair.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| line.split(['{', ' ']).next() == Some(name))
        .find(|line| {
            labels
                .iter()
                .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

#[tokio::test]
async fn metrics_count_requests_attempts_retries_limits_and_replays() {
    let jelou = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&jelou)
        .await;
    accept_all(&jelou).await;
    let mut settings = settings_for(&jelou.uri());
    settings.callers.insert(
        "orders".into(),
        CallerSettings {
            key_sha256: Some(caller_key_sha256()),
            bots: None,
            rate_per_second: Some(0.01),
            burst: Some(3),
            ..Default::default()
        },
    );
    settings.callers.insert(
        "campaigns".into(),
        CallerSettings {
            key_sha256: Some(jelou_relay::api::auth::hash_key(QUEUE_KEY.as_bytes())),
            bots: None,
            rate_per_second: None,
            burst: None,
            ..Default::default()
        },
    );
    let app = spawn_with(settings).await;
    let auth = format!("Bearer {CALLER_KEY}");
    let with_key = [("authorization", auth.as_str()), ("idempotency-key", "m-1")];

    assert_eq!(
        app.send_with(&seed_message(), &with_key).await.status(),
        200
    );
    let replay = app.send_with(&seed_message(), &with_key).await;
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    let mut invalid = seed_message();
    invalid["title"] = json!("");
    assert_eq!(
        app.send_with(&invalid, &[("authorization", &auth)])
            .await
            .status(),
        422
    );
    assert_eq!(
        app.send_with(&seed_message(), &[("authorization", &auth)])
            .await
            .status(),
        429
    );

    let metrics = app
        .client
        .get(format!("{}/metrics", app.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.unwrap();
    let route = ("route", "/v1/flow-messages");
    let orders = ("caller", "orders");
    assert_eq!(
        sample(
            &text,
            "jelou_relay_requests_total",
            &[route, orders, ("status", "200")]
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "jelou_relay_requests_total",
            &[route, orders, ("status", "422")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "jelou_relay_requests_total",
            &[route, orders, ("status", "429")]
        ),
        Some(1.0)
    );
    assert!(
        sample(
            &text,
            "jelou_relay_request_duration_seconds_count",
            &[route, orders, ("status", "200")]
        )
        .is_some()
    );
    assert_eq!(
        sample(
            &text,
            "jelou_relay_upstream_attempts_total",
            &[("outcome", "not_sent")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "jelou_relay_upstream_attempts_total",
            &[("outcome", "sent")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "jelou_relay_retries_total",
            &[("kind", "unavailable")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "jelou_relay_idempotency_total",
            &[("result", "replayed")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "jelou_relay_rate_limit_rejections_total",
            &[("limit", "caller")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "jelou_relay_in_flight_requests", &[]),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &text,
            "jelou_relay_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );

    // An asynchronous send: its status changes are counted, and the queue reported.
    let queue_auth = format!("Bearer {QUEUE_KEY}");
    let queued = app
        .send_with(
            &seed_message(),
            &[("authorization", &queue_auth), ("prefer", "respond-async")],
        )
        .await;
    assert_eq!(queued.status(), 202);
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let text = app
            .client
            .get(format!("{}/metrics", app.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let count = |status| {
            sample(
                &text,
                "jelou_relay_async_messages_total",
                &[("status", status)],
            )
        };
        let depth = sample(&text, "jelou_relay_queue_depth", &[]);
        if count("sent") == Some(1.0) && depth == Some(0.0) {
            assert_eq!(count("queued"), Some(1.0), "{text}");
            assert_eq!(count("sending"), Some(1.0), "{text}");
            assert_eq!(
                sample(&text, "jelou_relay_queue_oldest_seconds", &[]),
                Some(0.0)
            );
            break;
        }
        assert!(std::time::Instant::now() < until, "{text}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    let on_main_port = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(
        on_main_port.status(),
        404,
        "metrics stay off the caller-facing port"
    );
}

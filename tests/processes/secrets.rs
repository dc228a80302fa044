//! The client secret never appears in a log line (at any level), a response, `Debug`
//! output or a configuration error.

use std::time::Duration;

use crate::common::*;
use base64::Engine;
use jelou_relay::config::Environment;
use serde_json::json;
use wiremock::matchers::query_param;
use wiremock::{Mock, MockServer, ResponseTemplate};

fn forbidden_strings() -> Vec<String> {
    let encoded =
        base64::engine::general_purpose::STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"));
    vec![CLIENT_SECRET.to_string(), encoded]
}

fn assert_clean(what: &str, text: &str) {
    for secret in forbidden_strings() {
        assert!(!text.contains(&secret), "{what} leaks the secret:\n{text}");
    }
}

#[tokio::test]
async fn no_log_line_or_answer_carries_the_secret_on_any_path() {
    let jelou = MockServer::start().await;
    Mock::given(query_param("type", "auth"))
        .respond_with(ResponseTemplate::new(401).set_body_json(
            json!({"code": "unauthorized", "description": format!("bad credentials {CLIENT_SECRET}")}),
        ))
        .mount(&jelou)
        .await;
    Mock::given(query_param("type", "down"))
        .respond_with(ResponseTemplate::new(500))
        .mount(&jelou)
        .await;
    accept_all(&jelou).await;

    let uri = jelou.uri();
    let caller_hash = caller_key_sha256();
    let mut relay = RelayProcess::start(&[
        ("APP_ENVIRONMENT", "production"),
        ("JELOU_RELAY__CALLERS__ORDERS__KEY_SHA256", &caller_hash),
        ("RUST_LOG", "trace"),
        ("JELOU_RELAY__UPSTREAM__BASE_URL", &uri),
        ("JELOU_RELAY__BOTS__VENTAS__ID", BOT_ID),
        ("JELOU_RELAY__BOTS__VENTAS__CLIENT_ID", CLIENT_ID),
        ("JELOU_RELAY__BOTS__VENTAS__CLIENT_SECRET", CLIENT_SECRET),
    ]);

    let client = reqwest::Client::new();
    let send = |query: &'static str, body: serde_json::Value| {
        let request = client
            .post(relay.url(&format!("/v1/flow-messages{query}")))
            .header("authorization", format!("Bearer {CALLER_KEY}"))
            .json(&body);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let headers = format!("{:?}", response.headers());
            let text = response.text().await.unwrap();
            (status, format!("{headers}\n{text}"))
        }
    };
    let mut answers = Vec::new();
    answers.push(send("", seed_message()).await);
    answers.push(send("?dry_run=true", seed_message()).await);
    let mut invalid = seed_message();
    invalid["title"] = json!("");
    answers.push(send("", invalid).await);
    let mut auth = seed_message();
    auth["type"] = json!("auth");
    answers.push(send("", auth).await);
    let mut down = seed_message();
    down["type"] = json!("down");
    answers.push(send("", down).await);

    let statuses: Vec<u16> = answers.iter().map(|(status, _)| *status).collect();
    assert_eq!(statuses, vec![200, 200, 422, 502, 502]);
    for (status, answer) in &answers {
        assert_clean(&format!("the {status} answer"), answer);
    }
    // The upstream did receive the credentials: the test would be vacuous otherwise.
    let received = jelou.received_requests().await.unwrap();
    assert_eq!(received.len(), 3);
    assert!(
        received[0].headers["authorization"]
            .to_str()
            .unwrap()
            .contains(&forbidden_strings()[1])
    );

    assert!(relay.terminate(Duration::from_secs(10)).success());
    let logs = relay.output();
    assert!(
        logs.contains("Jelou refused the relay's credentials"),
        "the error path was logged"
    );
    assert!(logs.lines().count() > 20, "trace logging was on:\n{logs}");
    assert_clean("the logs", &logs);
}

#[test]
fn configuration_errors_and_summaries_never_print_the_secret() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret");
    std::fs::write(&file, CLIENT_SECRET).unwrap();
    let file = file.to_str().unwrap().to_string();
    let bad = [
        ("APP_ENVIRONMENT", "production"),
        ("JELOU_RELAY__UPSTREAM__MODE", "sandbox"),
        ("JELOU_RELAY__BOTS__VENTAS__ID", "a/b"),
        ("JELOU_RELAY__BOTS__VENTAS__CLIENT_ID", CLIENT_ID),
        ("JELOU_RELAY__BOTS__VENTAS__CLIENT_SECRET", CLIENT_SECRET),
        (
            "JELOU_RELAY__BOTS__VENTAS__CLIENT_SECRET_FILE",
            file.as_str(),
        ),
    ];
    let good = [
        ("APP_ENVIRONMENT", "production"),
        ("JELOU_RELAY__BOTS__VENTAS__ID", BOT_ID),
        ("JELOU_RELAY__BOTS__VENTAS__CLIENT_ID", CLIENT_ID),
        (
            "JELOU_RELAY__BOTS__VENTAS__CLIENT_SECRET_FILE",
            file.as_str(),
        ),
    ];
    for env in [&bad[..], &good[..]] {
        for command in ["check-config", "serve"] {
            if command == "serve" && env == &good[..] {
                continue;
            }
            let output = relay_command(&[command], env).output().unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            assert!(!text.is_empty());
            assert_clean(command, &text);
        }
    }
}

#[test]
fn debug_output_of_settings_and_config_is_redacted() {
    let settings = settings_for("http://127.0.0.1:1");
    let config = settings.validate(Environment::Local).unwrap();
    assert_clean("Settings' Debug", &format!("{settings:?}"));
    assert_clean("RelayConfig's Debug", &format!("{config:?}"));
    assert_clean(
        "Bot's Debug",
        &format!("{:?}", config.bots.resolve(None).unwrap()),
    );
}

//! Shared test harness: the real application on port 0, wiremock standing in for Jelou.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Once;

use jelou_relay::app::Application;
use jelou_relay::config::{BotSettings, Environment, Settings, UpstreamMode};
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use wiremock::MockServer;

pub const CLIENT_ID: &str = "relay-client";
pub const CLIENT_SECRET: &str = "s3cr3t-Zq9-never-log-me";
pub const BOT_ID: &str = "BOT_ID";

/// `Basic base64("relay-client:s3cr3t-Zq9-never-log-me")`.
pub fn expected_authorization() -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"))
    )
}

static LOGS: Once = Once::new();

/// Logs stay silent unless `TEST_LOG` is set.
fn init_logs() {
    LOGS.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter("debug")
                .with_test_writer()
                .try_init();
        }
    });
}

/// The local settings, pointed at `upstream` in Jelou mode with one bot, port 0.
pub fn settings_for(upstream: &str) -> Settings {
    let mut settings =
        Settings::load(Path::new("config"), Environment::Local).expect("config/ loads");
    settings.server.port = 0;
    settings.server.host = "127.0.0.1".into();
    settings.upstream.mode = UpstreamMode::Jelou;
    settings.upstream.base_url = upstream.to_string();
    settings.bots.clear();
    settings.bots.insert(
        "ventas".into(),
        BotSettings {
            id: Some(BOT_ID.into()),
            client_id: Some(CLIENT_ID.into()),
            client_secret: Some(SecretString::from(CLIENT_SECRET)),
            client_secret_file: None,
            default: false,
        },
    );
    settings
}

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    pub finished: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request reaches the relay")
    }

    pub async fn send(&self, body: &Value) -> reqwest::Response {
        self.post_json("/v1/flow-messages", body).await
    }

    /// Triggers the same shutdown path as SIGTERM.
    pub fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown();
    }
}

pub async fn spawn_with(settings: Settings) -> TestApp {
    init_logs();
    let config = settings
        .validate(Environment::Local)
        .expect("test settings are valid");
    let application = Application::build(&config).await.expect("app builds");
    let address = format!("http://127.0.0.1:{}", application.port());
    let (stop, stopped) = oneshot::channel::<()>();
    let finished = tokio::spawn(application.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    TestApp {
        address,
        client: reqwest::Client::new(),
        stop: Some(stop),
        finished: Some(finished),
    }
}

/// The app in Jelou mode against a fresh wiremock server.
pub async fn spawn_app() -> (TestApp, MockServer) {
    let jelou = MockServer::start().await;
    let app = spawn_with(settings_for(&jelou.uri())).await;
    (app, jelou)
}

/// The seed example of Jelou's reference page, in the relay's words.
pub fn seed_message() -> Value {
    json!({
        "bot": "ventas",
        "to": "+593 98 765 4321",
        "title": "Hola",
        "text": "Completa este flujo para comenzar",
        "caption": "Jelou",
        "flow": {
            "name": "flujo_de_bienvenida",
            "cta": "Iniciar Flujo",
            "screen": "RECOMMEND"
        }
    })
}

/// The body Jelou's reference page sends for the seed example.
pub fn seed_upstream_body() -> Value {
    json!({
        "title": "Hola",
        "text": "Completa este flujo para comenzar",
        "caption": "Jelou",
        "parameters": {
            "flow_name": "flujo_de_bienvenida",
            "flow_cta": "Iniciar Flujo",
            "flow_action_payload": {"screen": "RECOMMEND"}
        }
    })
}

/// Asserts a problem+json answer and returns its body.
pub async fn assert_problem(response: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(response.status().as_u16(), status, "status");
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let request_id = response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body: Value = response.json().await.expect("problem body is JSON");
    assert_eq!(content_type, "application/problem+json", "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status, "{body}");
    assert_eq!(body["type"], format!("urn:jelou-relay:problem:{code}"));
    assert!(body["title"].is_string() && body["detail"].is_string(), "{body}");
    assert_eq!(body["request_id"].as_str(), request_id.as_deref(), "{body}");
    assert!(body["delivery"].is_string() && body["retryable"].is_boolean(), "{body}");
    body
}

/// Fields named in a problem's `errors`, in order.
pub fn error_fields(problem: &Value) -> Vec<String> {
    problem["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .map(|e| e["field"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

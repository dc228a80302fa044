//! Shared test harness: the real application on port 0, wiremock standing in for Jelou.
#![allow(dead_code)]

pub mod messages;
pub mod redis_server;

use std::path::Path;
use std::sync::Once;

use jelou_relay::app::Application;
use jelou_relay::config::{BotSettings, Environment, Settings, StoreBackend, UpstreamMode};
#[allow(unused_imports)]
pub use messages::{settled, status};
#[allow(unused_imports)]
pub use redis_server::{RedisServer, redis_available};
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use wiremock::MockServer;

pub const CLIENT_ID: &str = "relay-client";
pub const CLIENT_SECRET: &str = "s3cr3t-Zq9-never-log-me";
pub const BOT_ID: &str = "BOT_ID";
/// A caller key and its SHA-256, as `callers.<name>.key_sha256` holds it.
pub const CALLER_KEY: &str = "orders-key-0123456789abcdef";
pub fn caller_key_sha256() -> String {
    jelou_relay::api::auth::hash_key(CALLER_KEY.as_bytes())
}

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
    settings.admin.port = 0;
    settings.admin.host = "127.0.0.1".into();
    settings.upstream.mode = UpstreamMode::Jelou;
    settings.upstream.base_url = upstream.to_string();
    // Short backoffs keep the suite fast; the bounds are still exercised.
    settings.delivery.backoff_base_ms = 5;
    settings.delivery.backoff_cap_ms = 20;
    settings.bots.clear();
    settings.bots.insert(
        "ventas".into(),
        BotSettings {
            id: Some(BOT_ID.into()),
            client_id: Some(CLIENT_ID.into()),
            client_secret: Some(SecretString::from(CLIENT_SECRET)),
            client_secret_file: None,
            default: false,
            rate_per_second: None,
            burst: None,
        },
    );
    settings
}

pub struct TestApp {
    pub address: String,
    /// `http://127.0.0.1:<admin port>`.
    pub admin: String,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    pub finished: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    /// The Redis server this app uses, when it runs on the Redis backend.
    pub redis: Option<RedisServer>,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// The status `GET path` is answered with.
    pub async fn get_status(&self, path: &str) -> u16 {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request reaches the relay")
            .status()
            .as_u16()
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

    /// Sends `body` with extra headers.
    pub async fn send_with(&self, body: &Value, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut request = self.client.post(self.url("/v1/flow-messages")).json(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.expect("request reaches the relay")
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
    let admin = format!("http://127.0.0.1:{}", application.admin_port().unwrap_or(0));
    let (stop, stopped) = oneshot::channel::<()>();
    let finished = tokio::spawn(application.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    TestApp {
        address,
        admin,
        client: reqwest::Client::new(),
        stop: Some(stop),
        finished: Some(finished),
        redis: None,
    }
}

/// Where a test's app keeps rate limits and idempotency keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Memory,
    Redis,
}

/// Points `settings` at `redis` (backend, URL, a short timeout).
pub fn use_redis(settings: &mut Settings, redis: &RedisServer) {
    settings.store.backend = StoreBackend::Redis;
    settings.store.redis_url = Some(SecretString::from(redis.url()));
    settings.store.timeout_ms = 200;
}

/// The app on `backend`; with Redis, on a fresh redis-server of its own.
pub async fn spawn_on(backend: Backend, mut settings: Settings) -> TestApp {
    let redis = match backend {
        Backend::Memory => None,
        Backend::Redis => {
            let redis = RedisServer::start();
            use_redis(&mut settings, &redis);
            Some(redis)
        }
    };
    let mut app = spawn_with(settings).await;
    app.redis = redis;
    app
}

/// Runs each named `async fn(Backend)` as two tests, `memory::<name>` and
/// `redis::<name>`: the same behaviour suite on both stores.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::common::Backend::Memory).await
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test]
                async fn $name() {
                    if $crate::common::redis_available() {
                        super::$name($crate::common::Backend::Redis).await
                    }
                }
            )*
        }
    };
}

/// The app in Jelou mode against a fresh wiremock server.
pub async fn spawn_app() -> (TestApp, MockServer) {
    let jelou = MockServer::start().await;
    let app = spawn_with(settings_for(&jelou.uri())).await;
    (app, jelou)
}

/// A Jelou stand-in that accepts every message with `{}` after `delay`.
pub async fn accepting_jelou(delay: std::time::Duration) -> MockServer {
    let jelou = MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::any())
        .respond_with(
            wiremock::ResponseTemplate::new(200)
                .set_body_json(json!({}))
                .set_delay(delay),
        )
        .mount(&jelou)
        .await;
    jelou
}

/// Makes `jelou` accept every message with `{}`.
pub async fn accept_all(jelou: &MockServer) {
    wiremock::Mock::given(wiremock::matchers::any())
        .respond_with(wiremock::ResponseTemplate::new(200).set_body_json(json!({})))
        .mount(jelou)
        .await;
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
    assert!(
        body["title"].is_string() && body["detail"].is_string(),
        "{body}"
    );
    assert_eq!(body["request_id"].as_str(), request_id.as_deref(), "{body}");
    assert!(
        body["delivery"].is_string() && body["retryable"].is_boolean(),
        "{body}"
    );
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

/// The relay binary, run with only the environment given (plus PATH), from the repo root.
pub fn relay_command(args: &[&str], env: &[(&str, &str)]) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_jelou-relay"));
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null());
    command
}

/// A relay process whose output is collected line by line.
pub struct RelayProcess {
    pub child: std::process::Child,
    pub port: u16,
    pub lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl RelayProcess {
    /// Starts `serve` on port 0 with JSON logs and waits until it says where it listens.
    pub fn start(env: &[(&str, &str)]) -> RelayProcess {
        use std::io::BufRead;
        let mut env = env.to_vec();
        env.push(("JELOU_RELAY__SERVER__PORT", "0"));
        env.push(("JELOU_RELAY__SERVER__HOST", "127.0.0.1"));
        env.push(("JELOU_RELAY__ADMIN__PORT", "0"));
        env.push(("JELOU_RELAY__LOG__FORMAT", "json"));
        let mut child = relay_command(&["serve"], &env)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("relay binary starts");
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        for (reader, port_tx) in [
            (
                Box::new(stdout) as Box<dyn std::io::Read + Send>,
                Some(port_tx),
            ),
            (Box::new(stderr), None),
        ] {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(reader)
                    .lines()
                    .map_while(Result::ok)
                {
                    let port = port_tx
                        .as_ref()
                        .and_then(|_| serde_json::from_str::<Value>(&line).ok())
                        .and_then(|event| event["fields"]["port"].as_u64());
                    // Kept before the port is told, so the start-up line is in the output
                    // by the time `start` returns.
                    lines.lock().unwrap().push(line);
                    if let (Some(tx), Some(port)) = (&port_tx, port) {
                        let _ = tx.send(port as u16);
                    }
                }
            });
        }
        let port = port_rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("relay did not start: {:?}", lines.lock().unwrap()));
        RelayProcess { child, port, lines }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Sends SIGTERM and waits for the exit status, at most `limit`.
    pub fn terminate(&mut self, limit: std::time::Duration) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let killed = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status();
        assert!(killed.is_ok_and(|s| s.success()), "kill -TERM works");
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("relay did not exit within {limit:?} of SIGTERM");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    pub fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
}

/// The first JSON log line whose message is `message`.
pub fn log_line(logs: &str, message: &str) -> Value {
    logs.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|event| event["fields"]["message"] == message)
        .unwrap_or_else(|| panic!("no \"{message}\" line in:\n{logs}"))
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

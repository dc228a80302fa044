//! The settings exactly as read: one struct per section of `config/default.toml`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use secrecy::SecretString;
use serde::Deserialize;

use super::{FailureMode, RateSettings, UnsafeRetry};

/// Settings exactly as read from the layered sources; see `config/default.toml` for each key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub upstream: UpstreamSettings,
    #[serde(default)]
    pub bots: BTreeMap<String, BotSettings>,
    pub delivery: DeliverySettings,
    pub recipients: RateSettings,
    pub idempotency: IdempotencySettings,
    #[serde(rename = "async")]
    pub asynchronous: AsyncSettings,
    pub callbacks: CallbackSettings,
    pub store: StoreSettings,
    pub auth: AuthSettings,
    pub admin: AdminSettings,
    #[serde(default)]
    pub callers: BTreeMap<String, CallerSettings>,
    pub log: LogSettings,
    pub otlp: OtlpSettings,
}

/// Optional trace export over OTLP/HTTP (protobuf).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpSettings {
    /// e.g. `http://otel-collector:4318/v1/traces`; empty turns export off.
    pub endpoint: String,
    pub service_name: String,
}

/// Retries, deadline and load bounds of the outbound path.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliverySettings {
    pub deadline_ms: u64,
    pub max_attempts: u32,
    pub backoff_base_ms: u64,
    pub backoff_cap_ms: u64,
    pub retry_after_cap_ms: u64,
    pub retry_budget_percent: f32,
    pub retry_budget_min_per_second: u32,
    #[serde(default)]
    pub retry_unsafe: Vec<UnsafeRetry>,
    pub max_in_flight: usize,
    pub max_waiting: usize,
    pub rate_limit_max_wait_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdempotencySettings {
    pub required: bool,
    pub retention_seconds: u64,
    pub max_keys: usize,
}

/// Asynchronous sends (`Prefer: respond-async`) and their queue.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AsyncSettings {
    pub enabled: bool,
    pub ttl_seconds: u64,
    pub max_ttl_seconds: u64,
    pub retention_seconds: u64,
    pub max_queued: usize,
    pub backoff_cap_ms: u64,
    pub claim_idle_ms: u64,
    pub max_batch: usize,
}

/// Signed callbacks of final statuses, to `callers.<name>.callback_url`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallbackSettings {
    pub timeout_ms: u64,
    pub backoff_base_ms: u64,
    pub backoff_cap_ms: u64,
    pub max_attempts: u32,
    pub max_age_seconds: u64,
}

/// Where rate-limit state and idempotency keys live.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {
    pub backend: StoreBackend,
    /// `redis://[user:password@]host:port[/db]` or `rediss://...` (TLS); a secret, since
    /// it may carry a password.
    pub redis_url: Option<SecretString>,
    pub redis_url_file: Option<PathBuf>,
    pub key_prefix: String,
    pub timeout_ms: u64,
    pub failure_mode: FailureMode,
    pub expected_replicas: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    /// In this process: right for one replica.
    Memory,
    /// Shared by every replica.
    Redis,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub host: String,
    pub port: u16,
    pub body_limit_bytes: usize,
    pub batch_body_limit_bytes: usize,
    pub shutdown_delay_ms: u64,
    pub drain_timeout_ms: u64,
    pub max_in_flight: usize,
    pub max_header_bytes: usize,
    pub max_json_depth: usize,
    pub header_read_timeout_ms: u64,
    pub body_read_timeout_ms: u64,
    /// Threads serving connections; 0: one per available CPU.
    #[serde(default)]
    pub workers: usize,
}

/// The admin listener: `/metrics`, kept off the caller-facing port.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSettings {
    pub enabled: bool,
    pub host: String,
    pub port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Callers present `Authorization: Bearer <key>`; see `[callers]`.
    Bearer,
    /// Anyone who can reach the relay may send.
    None,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    pub mode: AuthMode,
}

/// A service allowed to send. Its key is never stored, only the key's SHA-256.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallerSettings {
    pub key_sha256: Option<String>,
    /// Bot aliases this caller may use; absent means all. A list, or a comma-separated
    /// string (as environment variables give it).
    #[serde(default, deserialize_with = "list_or_csv")]
    pub bots: Option<Vec<String>>,
    pub rate_per_second: Option<f64>,
    pub burst: Option<u32>,
    /// Where the final statuses of this caller's asynchronous messages are POSTed.
    pub callback_url: Option<String>,
    /// Standard Webhooks secret (`whsec_...`) that signs them, inline or as a file.
    pub callback_secret: Option<SecretString>,
    pub callback_secret_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamMode {
    Jelou,
    Sandbox,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSettings {
    pub mode: UpstreamMode,
    pub base_url: String,
    pub connect_timeout_ms: u64,
    pub request_timeout_ms: u64,
    /// Shared default credentials, used by every bot that sets none of its own.
    pub client_id: Option<String>,
    pub client_secret: Option<SecretString>,
    pub client_secret_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BotSettings {
    pub id: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<SecretString>,
    pub client_secret_file: Option<PathBuf>,
    #[serde(default)]
    pub default: bool,
    /// Messages per second this bot's WhatsApp number may send (WhatsApp's default: 80).
    pub rate_per_second: Option<f64>,
    pub burst: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// A `tracing` filter directive; `RUST_LOG` wins when set.
    pub level: String,
    pub format: LogFormat,
}

fn list_or_csv<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrCsv {
        List(Vec<String>),
        Csv(String),
    }
    Ok(Some(match ListOrCsv::deserialize(deserializer)? {
        ListOrCsv::List(list) => list,
        ListOrCsv::Csv(csv) => csv
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    }))
}

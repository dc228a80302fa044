//! Settings: layered loading (file, environment file, env vars) and validation into a runtime config.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

pub use crate::api::auth::{Caller, Callers};
pub use crate::delivery::{DeliveryConfig, UnsafeRetry};
pub use crate::domain::bots::{Bot, BotLookupError, BotRegistry, DEFAULT_BOT_RATE, RateSettings};
use crate::domain::flow_message::is_valid_alias;
pub use crate::jelou::credentials::{CredentialBook, Credentials};
pub use crate::store::{FailureMode, RedisConfig, StoreConfig};

/// Environment variables override files as `JELOU_RELAY__SECTION__KEY`.
pub const ENV_PREFIX: &str = "JELOU_RELAY";

/// Which environment file is layered over `default.toml`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    Local,
    Production,
}

impl Environment {
    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Local => "local",
            Environment::Production => "production",
        }
    }

    /// Reads `APP_ENVIRONMENT`; unset means `local`.
    pub fn from_env() -> Result<Self, ConfigErrors> {
        match std::env::var("APP_ENVIRONMENT") {
            Err(_) => Ok(Environment::Local),
            Ok(value) => Self::parse(&value),
        }
    }

    pub fn parse(value: &str) -> Result<Self, ConfigErrors> {
        match value.trim().to_ascii_lowercase().as_str() {
            "" | "local" => Ok(Environment::Local),
            "production" => Ok(Environment::Production),
            other => Err(ConfigErrors::one(
                "APP_ENVIRONMENT",
                format!("unknown environment '{other}'; use 'local' or 'production'"),
            )),
        }
    }
}

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
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallerSettings {
    pub key_sha256: Option<String>,
    /// Bot aliases this caller may use; absent means all. A list, or a comma-separated
    /// string (as environment variables give it).
    #[serde(default, deserialize_with = "list_or_csv")]
    pub bots: Option<Vec<String>>,
    pub rate_per_second: Option<f64>,
    pub burst: Option<u32>,
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

/// One configuration problem: which key, what is wrong and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "config error: {}: {}", self.key, self.message)
    }
}

/// Every problem found, printed one per line.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigProblem>);

impl ConfigErrors {
    fn one(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigErrors(vec![ConfigProblem {
            key: key.into(),
            message: message.into(),
        }])
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, problem) in self.0.iter().enumerate() {
            if index > 0 {
                writeln!(f)?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Where the configuration files live: `JELOU_RELAY_CONFIG_DIR`, else `./config`.
pub fn default_config_dir() -> PathBuf {
    std::env::var_os("JELOU_RELAY_CONFIG_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("config"))
}

impl Settings {
    /// `default.toml`, then `{environment}.toml` (optional), then `JELOU_RELAY__*` variables.
    pub fn load(dir: &Path, environment: Environment) -> Result<Settings, ConfigErrors> {
        let default_file = dir.join("default.toml");
        if !default_file.is_file() {
            return Err(ConfigErrors::one(
                default_file.display().to_string(),
                "file not found; run from the repository root or set JELOU_RELAY_CONFIG_DIR to the folder holding default.toml",
            ));
        }
        let built = config::Config::builder()
            .add_source(config::File::from(default_file))
            .add_source(
                config::File::from(dir.join(format!("{}.toml", environment.as_str())))
                    .required(false),
            )
            .add_source(
                config::Environment::with_prefix(ENV_PREFIX)
                    .prefix_separator("__")
                    .separator("__")
                    .list_separator(",")
                    .with_list_parse_key("delivery.retry_unsafe"),
            )
            .build()
            .and_then(|c| c.try_deserialize::<Settings>());
        built.map_err(|error| {
            ConfigErrors::one(
                "configuration",
                format!("{error}; check the key's spelling and type against config/default.toml"),
            )
        })
    }

    /// Checks every rule and resolves secrets; returns all problems at once.
    pub fn validate(&self, environment: Environment) -> Result<RelayConfig, ConfigErrors> {
        let mut problems = Vec::new();
        let mut problem = |key: &str, message: String| {
            problems.push(ConfigProblem {
                key: key.to_string(),
                message,
            })
        };
        let production = environment == Environment::Production;

        if self.server.body_limit_bytes < 1024 {
            problem(
                "server.body_limit_bytes",
                "must be at least 1024 bytes".into(),
            );
        }
        for (key, value) in [
            (
                "upstream.connect_timeout_ms",
                self.upstream.connect_timeout_ms,
            ),
            (
                "upstream.request_timeout_ms",
                self.upstream.request_timeout_ms,
            ),
        ] {
            if value == 0 {
                problem(key, "must be greater than 0 (milliseconds)".into());
            }
        }

        if production && self.upstream.mode == UpstreamMode::Sandbox {
            problem(
                "upstream.mode",
                "is 'sandbox' in production; set upstream.mode = \"jelou\" (JELOU_RELAY__UPSTREAM__MODE=jelou)".into(),
            );
        }

        let base_url = match Url::parse(&self.upstream.base_url) {
            Ok(url) if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() => {
                problem(
                    "upstream.base_url",
                    format!(
                        "'{}' is not an http(s) URL with a host",
                        self.upstream.base_url
                    ),
                );
                None
            }
            Ok(url) if url.query().is_some() || url.fragment().is_some() => {
                problem(
                    "upstream.base_url",
                    "must not carry a query or fragment".into(),
                );
                None
            }
            Ok(url) => {
                if production && url.scheme() != "https" && !is_loopback(&url) {
                    problem(
                        "upstream.base_url",
                        format!(
                            "'{}' is not https; production only allows plain http to a loopback host",
                            self.upstream.base_url
                        ),
                    );
                }
                Some(url)
            }
            Err(error) => {
                problem(
                    "upstream.base_url",
                    format!("'{}' is not a valid URL ({error})", self.upstream.base_url),
                );
                None
            }
        };

        let d = &self.delivery;
        for (key, value) in [
            ("delivery.deadline_ms", d.deadline_ms),
            ("delivery.backoff_base_ms", d.backoff_base_ms),
            ("delivery.max_in_flight", d.max_in_flight as u64),
            (
                "idempotency.retention_seconds",
                self.idempotency.retention_seconds,
            ),
            ("idempotency.max_keys", self.idempotency.max_keys as u64),
        ] {
            if value == 0 {
                problem(key, "must be greater than 0".into());
            }
        }
        if !(1..=10).contains(&d.max_attempts) {
            problem(
                "delivery.max_attempts",
                format!("must be 1 to 10 attempts in all (got {})", d.max_attempts),
            );
        }
        if d.backoff_cap_ms < d.backoff_base_ms {
            problem(
                "delivery.backoff_cap_ms",
                format!(
                    "must be at least delivery.backoff_base_ms ({} ms)",
                    d.backoff_base_ms
                ),
            );
        }
        if !(0.0..=100.0).contains(&d.retry_budget_percent) {
            problem(
                "delivery.retry_budget_percent",
                "must be between 0 and 100".into(),
            );
        }
        check_rate("recipients", &self.recipients, &mut problem);
        let store = self.store_config(&mut problem);

        let needs_credentials = self.upstream.mode == UpstreamMode::Jelou;
        let shared_id = self.upstream.client_id.clone().filter(|s| !s.is_empty());
        let shared_secret = resolve_secret(
            "upstream",
            "client_secret",
            self.upstream.client_secret.as_ref(),
            self.upstream.client_secret_file.as_deref(),
            &mut problem,
        );

        if self.bots.is_empty() {
            problem(
                "bots",
                "no bot configured; add a [bots.<alias>] table with an id (e.g. JELOU_RELAY__BOTS__VENTAS__ID=<jelou bot id>)".into(),
            );
        }

        let mut bots = BTreeMap::new();
        let mut credential_book = HashMap::new();
        let mut default_alias = None;
        for (alias, bot) in &self.bots {
            let key = format!("bots.{alias}");
            if !is_valid_alias(alias) {
                problem(
                    &key,
                    "alias must be 1 to 64 characters of a-z, 0-9, '_' or '-'".into(),
                );
            }
            let id = match bot.id.as_deref().map(str::trim) {
                None | Some("") => {
                    problem(
                        &format!("{key}.id"),
                        format!(
                            "missing; set the Jelou bot id (JELOU_RELAY__BOTS__{}__ID)",
                            alias.to_ascii_uppercase()
                        ),
                    );
                    continue;
                }
                Some(id) if !is_valid_bot_id(id) => {
                    problem(
                        &format!("{key}.id"),
                        "must be 1 to 128 characters of letters, digits, '_' or '-'".into(),
                    );
                    continue;
                }
                Some(id) => id.to_string(),
            };
            if bot.default
                && let Some(previous) = default_alias.replace(alias.clone())
            {
                problem(
                    &format!("{key}.default"),
                    format!(
                        "bot '{previous}' is already the default; only one bot may set default = true"
                    ),
                );
            }
            let own_secret = resolve_secret(
                &key,
                "client_secret",
                bot.client_secret.as_ref(),
                bot.client_secret_file.as_deref(),
                &mut problem,
            );
            let client_id = bot
                .client_id
                .clone()
                .filter(|s| !s.is_empty())
                .or_else(|| shared_id.clone());
            let client_secret = own_secret.or_else(|| shared_secret.clone());
            let credentials = match (client_id, client_secret) {
                (Some(client_id), Some(client_secret)) => {
                    Some(Credentials::new(client_id, client_secret))
                }
                (client_id, client_secret) => {
                    if needs_credentials {
                        let missing = match (client_id.is_none(), client_secret.is_none()) {
                            (true, true) => "client_id and client_secret",
                            (true, false) => "client_id",
                            _ => "client_secret",
                        };
                        problem(
                            &key,
                            format!(
                                "no {missing} for upstream.mode = \"jelou\"; set {key}.client_id and {key}.client_secret (or client_secret_file), or the shared upstream.client_id / upstream.client_secret"
                            ),
                        );
                    }
                    None
                }
            };
            let rate = RateSettings {
                rate_per_second: bot.rate_per_second.unwrap_or(DEFAULT_BOT_RATE),
                burst: bot.burst.unwrap_or_else(|| {
                    bot.rate_per_second.unwrap_or(DEFAULT_BOT_RATE).ceil() as u32
                }),
            };
            check_rate(&key, &rate, &mut problem);
            if let Some(credentials) = credentials {
                credential_book.insert(alias.clone(), credentials);
            }
            bots.insert(
                alias.clone(),
                Arc::new(Bot {
                    alias: alias.clone(),
                    id,
                    rate,
                }),
            );
        }

        for (key, value) in [
            ("server.max_in_flight", self.server.max_in_flight as u64),
            (
                "server.max_header_bytes",
                self.server.max_header_bytes as u64,
            ),
            ("server.max_json_depth", self.server.max_json_depth as u64),
            (
                "server.header_read_timeout_ms",
                self.server.header_read_timeout_ms,
            ),
            (
                "server.body_read_timeout_ms",
                self.server.body_read_timeout_ms,
            ),
        ] {
            if value == 0 {
                problem(key, "must be greater than 0".into());
            }
        }
        if self.server.workers > 256 {
            problem("server.workers", "must be 0 (one per CPU) to 256".into());
        }
        let callers = self.callers(&bots, production, &mut problem);

        if !problems.is_empty() {
            return Err(ConfigErrors(problems));
        }
        let Some(base_url) = base_url else {
            // Unreachable: an unparsable URL always records a problem above.
            return Err(ConfigErrors::one("upstream.base_url", "invalid"));
        };
        Ok(RelayConfig {
            environment,
            listen: (self.server.host.clone(), self.server.port),
            body_limit_bytes: self.server.body_limit_bytes,
            shutdown_delay: Duration::from_millis(self.server.shutdown_delay_ms),
            drain_timeout: Duration::from_millis(self.server.drain_timeout_ms),
            mode: self.upstream.mode,
            base_url,
            connect_timeout: Duration::from_millis(self.upstream.connect_timeout_ms),
            request_timeout: Duration::from_millis(self.upstream.request_timeout_ms),
            bots: BotRegistry::new(bots, default_alias),
            credentials: CredentialBook::new(credential_book),
            delivery: DeliveryConfig {
                deadline: Duration::from_millis(d.deadline_ms),
                max_attempts: d.max_attempts,
                backoff_base: Duration::from_millis(d.backoff_base_ms),
                backoff_cap: Duration::from_millis(d.backoff_cap_ms),
                retry_after_cap: Duration::from_millis(d.retry_after_cap_ms),
                retry_budget_percent: d.retry_budget_percent,
                retry_budget_min_per_second: d.retry_budget_min_per_second,
                retry_unsafe: d.retry_unsafe.clone(),
                max_in_flight: d.max_in_flight,
                max_waiting: d.max_waiting,
                rate_limit_max_wait: Duration::from_millis(d.rate_limit_max_wait_ms),
                request_timeout: Duration::from_millis(self.upstream.request_timeout_ms),
                recipients: self.recipients,
            },
            recipients: self.recipients,
            callers,
            admin: self
                .admin
                .enabled
                .then(|| (self.admin.host.clone(), self.admin.port)),
            max_in_flight: self.server.max_in_flight,
            workers: match self.server.workers {
                0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
                n => n,
            },
            max_header_bytes: self.server.max_header_bytes,
            max_json_depth: self.server.max_json_depth,
            header_read_timeout: Duration::from_millis(self.server.header_read_timeout_ms),
            body_read_timeout: Duration::from_millis(self.server.body_read_timeout_ms),
            idempotency: IdempotencyConfig {
                required: self.idempotency.required,
                retention: Duration::from_secs(self.idempotency.retention_seconds),
                max_keys: self.idempotency.max_keys,
            },
            store,
        })
    }

    /// The store section, checked; a Redis URL is parsed but never echoed back.
    fn store_config(&self, problem: &mut impl FnMut(&str, String)) -> StoreConfig {
        let s = &self.store;
        let url = resolve_secret(
            "store",
            "redis_url",
            s.redis_url.as_ref(),
            s.redis_url_file.as_deref(),
            problem,
        );
        if s.backend == StoreBackend::Memory {
            return StoreConfig::Memory;
        }
        if s.timeout_ms == 0 || s.timeout_ms > 10_000 {
            problem("store.timeout_ms", "must be 1 to 10000 milliseconds".into());
        }
        if s.expected_replicas == 0 {
            problem("store.expected_replicas", "must be at least 1".into());
        }
        if s.key_prefix.len() > 64
            || s.key_prefix
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            problem(
                "store.key_prefix",
                "must be at most 64 characters, without spaces or control characters".into(),
            );
        }
        let Some(url) = url else {
            problem(
                "store.redis_url",
                "missing for store.backend = \"redis\"; set it (e.g. JELOU_RELAY__STORE__REDIS_URL=redis://redis:6379/0) or store.redis_url_file".into(),
            );
            return StoreConfig::Memory;
        };
        let parsed = Url::parse(url.expose_secret()).ok();
        match parsed.as_ref() {
            Some(u) if matches!(u.scheme(), "redis" | "rediss") && u.host_str().is_some() => {}
            _ => {
                problem(
                    "store.redis_url",
                    "is not a redis://host:port[/db] or rediss:// URL (the value is not shown: it may hold a password)".into(),
                );
                return StoreConfig::Memory;
            }
        }
        StoreConfig::Redis(RedisConfig {
            target: parsed.as_ref().map(redis_target).unwrap_or_default(),
            url,
            key_prefix: s.key_prefix.clone(),
            timeout: Duration::from_millis(s.timeout_ms.max(1)),
            failure_mode: s.failure_mode,
            expected_replicas: s.expected_replicas.max(1),
        })
    }
}

/// `redis://host:port/db` without user or password: what logs and `/readyz` may show.
fn redis_target(url: &Url) -> String {
    format!(
        "{}://{}:{}{}",
        url.scheme(),
        url.host_str().unwrap_or(""),
        url.port().unwrap_or(6379),
        url.path()
    )
}

impl Settings {
    /// The callers allowed to send, or open access where the configuration allows it.
    fn callers(
        &self,
        bots: &BTreeMap<String, Arc<Bot>>,
        production: bool,
        problem: &mut impl FnMut(&str, String),
    ) -> Callers {
        if self.auth.mode == AuthMode::None {
            return Callers::Open { explicit: true };
        }
        if self.callers.is_empty() {
            if production {
                problem(
                    "callers",
                    "none configured in production; add [callers.<name>] with key_sha256 (see `jelou-relay hash-key`), or set auth.mode = \"none\" to let anyone who can reach the relay send".into(),
                );
            }
            return Callers::Open { explicit: false };
        }
        let mut callers = Vec::new();
        for (name, caller) in &self.callers {
            let key = format!("callers.{name}");
            if !is_valid_alias(name) {
                problem(
                    &key,
                    "name must be 1 to 64 characters of a-z, 0-9, '_' or '-'".into(),
                );
            }
            let hash = match caller
                .key_sha256
                .as_deref()
                .map(str::trim)
                .map(decode_sha256)
            {
                Some(Some(hash)) => hash,
                Some(None) => {
                    problem(
                        &format!("{key}.key_sha256"),
                        "must be 64 hexadecimal characters: the SHA-256 of the key (`jelou-relay hash-key`)".into(),
                    );
                    continue;
                }
                None => {
                    problem(
                        &format!("{key}.key_sha256"),
                        "missing; set the SHA-256 of the caller's key (`jelou-relay hash-key < key`)".into(),
                    );
                    continue;
                }
            };
            if let Some(allowed) = &caller.bots {
                for alias in allowed.iter().filter(|alias| !bots.contains_key(*alias)) {
                    problem(
                        &format!("{key}.bots"),
                        format!("'{alias}' is not a configured bot alias"),
                    );
                }
            }
            let rate = match (caller.rate_per_second, caller.burst) {
                (None, None) => None,
                (rate, burst) => {
                    let rate = RateSettings {
                        rate_per_second: rate.unwrap_or(f64::from(burst.unwrap_or(1))),
                        burst: burst.unwrap_or_else(|| rate.unwrap_or(1.0).ceil().max(1.0) as u32),
                    };
                    check_rate(&key, &rate, problem);
                    Some(rate)
                }
            };
            callers.push(Arc::new(Caller {
                name: name.clone(),
                key_sha256: hash,
                bots: caller.bots.clone(),
                rate,
            }));
        }
        Callers::Keys(callers)
    }
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

fn decode_sha256(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

/// A secret given inline or as a file path (for mounted secrets), under `{key}.{field}`
/// and `{key}.{field}_file`; both at once is an error.
fn resolve_secret(
    key: &str,
    field: &str,
    inline: Option<&SecretString>,
    file: Option<&Path>,
    problem: &mut impl FnMut(&str, String),
) -> Option<SecretString> {
    let inline = inline.filter(|s| !s.expose_secret().is_empty());
    let file_key = format!("{key}.{field}_file");
    match (inline, file) {
        (Some(_), Some(_)) => {
            problem(
                &file_key,
                format!("set either {key}.{field} or {file_key}, not both"),
            );
            None
        }
        (Some(secret), None) => Some(secret.clone()),
        (None, Some(path)) => match std::fs::read_to_string(path) {
            Ok(contents) => {
                let trimmed = contents.trim_end_matches(['\n', '\r']);
                if trimmed.is_empty() {
                    problem(&file_key, format!("'{}' is empty", path.display()));
                    None
                } else {
                    Some(SecretString::from(trimmed.to_string()))
                }
            }
            Err(error) => {
                problem(
                    &file_key,
                    format!("cannot read '{}': {error}", path.display()),
                );
                None
            }
        },
        (None, None) => None,
    }
}

fn check_rate(key: &str, rate: &RateSettings, problem: &mut impl FnMut(&str, String)) {
    if !(rate.rate_per_second.is_finite() && rate.rate_per_second > 0.0) {
        problem(
            &format!("{key}.rate_per_second"),
            "must be a positive number of messages per second (e.g. 80, or 0.1667 for one every 6 s)".into(),
        );
    }
    if rate.burst == 0 {
        problem(&format!("{key}.burst"), "must be at least 1".into());
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

fn is_valid_bot_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The validated configuration the application runs with.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub environment: Environment,
    pub listen: (String, u16),
    /// Threads serving connections (resolved: at least 1).
    pub workers: usize,
    pub body_limit_bytes: usize,
    pub shutdown_delay: Duration,
    pub drain_timeout: Duration,
    pub mode: UpstreamMode,
    pub base_url: Url,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub bots: BotRegistry,
    /// Jelou's credentials, by bot alias.
    pub credentials: CredentialBook,
    pub delivery: DeliveryConfig,
    /// WhatsApp's pair limit: messages to one recipient from one bot.
    pub recipients: RateSettings,
    pub idempotency: IdempotencyConfig,
    pub store: StoreConfig,
    pub callers: Callers,
    /// Where the admin listener binds, when enabled.
    pub admin: Option<(String, u16)>,
    /// Requests being handled at once, past which the relay sheds with 503.
    pub max_in_flight: usize,
    pub max_header_bytes: usize,
    pub max_json_depth: usize,
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct IdempotencyConfig {
    pub required: bool,
    pub retention: Duration,
    pub max_keys: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_removes_the_secret_and_the_basic_pair_that_carries_it() {
        use base64::Engine;
        let credentials = Credentials::new("relay-client".into(), "s3cr3t".into());
        let pair = base64::engine::general_purpose::STANDARD.encode("relay-client:s3cr3t");
        assert_eq!(
            credentials.authorization().to_str().unwrap(),
            format!("Basic {pair}")
        );
        assert_eq!(
            credentials.scrub(&format!("bad s3cr3t in Basic {pair}.")),
            "bad [REDACTED] in Basic [REDACTED]."
        );
        assert!(!format!("{credentials:?}").contains(&pair));
    }

    fn settings() -> Settings {
        Settings::load(Path::new("config"), Environment::Local).expect("default config loads")
    }

    fn keys(errors: ConfigErrors) -> Vec<String> {
        errors.0.into_iter().map(|p| p.key).collect()
    }

    #[test]
    fn local_defaults_are_valid_sandbox() {
        let config = settings().validate(Environment::Local).unwrap();
        assert_eq!(config.mode, UpstreamMode::Sandbox);
        assert!(config.bots.resolve(None).is_ok());
    }

    #[test]
    fn production_rejects_sandbox_missing_credentials_and_plain_http() {
        let mut s = settings();
        s.upstream.base_url = "http://jelou.example".into();
        let problems = keys(s.validate(Environment::Production).unwrap_err());
        assert!(problems.contains(&"upstream.mode".to_string()));
        assert!(problems.contains(&"upstream.base_url".to_string()));
        s.upstream.mode = UpstreamMode::Jelou;
        let problems = keys(s.validate(Environment::Production).unwrap_err());
        assert!(problems.iter().any(|k| k.starts_with("bots.")));
    }

    #[test]
    fn loopback_http_is_allowed_in_production() {
        let mut s = settings();
        s.upstream.mode = UpstreamMode::Jelou;
        s.upstream.base_url = "http://127.0.0.1:9999".into();
        s.upstream.client_id = Some("id".into());
        s.upstream.client_secret = Some(SecretString::from("secret"));
        s.auth.mode = AuthMode::None;
        assert!(s.validate(Environment::Production).is_ok());
    }

    #[test]
    fn alias_resolution_rules() {
        let mut s = settings();
        s.bots.insert(
            "soporte".into(),
            BotSettings {
                id: Some("B2".into()),
                client_id: None,
                client_secret: None,
                client_secret_file: None,
                default: false,
                rate_per_second: None,
                burst: None,
            },
        );
        let registry = s.validate(Environment::Local).unwrap().bots;
        assert!(matches!(
            registry.resolve(None),
            Err(BotLookupError::Missing { .. })
        ));
        assert!(matches!(
            registry.resolve(Some("nope")),
            Err(BotLookupError::Unknown { .. })
        ));
        assert_eq!(registry.resolve(Some("soporte")).unwrap().id, "B2");
    }

    #[test]
    fn hostile_bot_ids_are_refused() {
        let mut s = settings();
        for id in ["a/b", "..", "a?b", "a#b", "a b"] {
            s.bots.get_mut("ventas").unwrap().id = Some(id.into());
            assert_eq!(
                keys(s.validate(Environment::Local).unwrap_err()),
                vec!["bots.ventas.id".to_string()],
                "{id}"
            );
        }
    }
}

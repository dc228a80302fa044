//! Settings: layered loading (file, environment file, env vars) and validation into a
//! runtime configuration built of the types the modules that use them own.

mod callbacks;
mod callers;
mod queue;
mod secrets;
mod settings;
mod store;
mod summary;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use url::Url;

pub use crate::callbacks::CallbacksConfig;
pub use crate::delivery::{DeliveryConfig, UnsafeRetry};
pub use crate::domain::bots::{Bot, BotLookupError, BotRegistry, DEFAULT_BOT_RATE, RateSettings};
pub use crate::jelou::credentials::{CredentialBook, Credentials};
pub use crate::queue::AsyncConfig;
pub use crate::store::{FailureMode, RedisConfig, StoreConfig};
pub use callers::{Caller, Callers};
pub use settings::*;

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
}

/// The validated configuration the application runs with.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub environment: Environment,
    pub listen: (String, u16),
    /// Threads serving connections (resolved: at least 1).
    pub workers: usize,
    pub body_limit_bytes: usize,
    pub batch_body_limit_bytes: usize,
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
    pub asynchronous: AsyncConfig,
    pub callbacks: CallbacksConfig,
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
mod tests;

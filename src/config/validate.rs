//! Every rule the settings must meet, checked at once, and the runtime configuration
//! built from them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use url::Url;

use super::secrets::resolve_secret;
use super::*;
use crate::domain::flow_message::is_valid_alias;

impl Settings {
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
        let asynchronous = self.async_config(environment, &mut problem);
        let callbacks = self.callbacks_config(production, &mut problem);

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
        let mut credential_book = foldhash::HashMap::default();
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
            batch_body_limit_bytes: self.server.batch_body_limit_bytes,
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
            asynchronous,
            callbacks,
            store,
        })
    }
}

pub(super) fn check_rate(key: &str, rate: &RateSettings, problem: &mut impl FnMut(&str, String)) {
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

pub(super) fn is_loopback(url: &Url) -> bool {
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

//! `check-config`'s summary of a configuration: what an operator checks, no secret.

use super::{Callers, RelayConfig, StoreConfig, UpstreamMode};

impl RelayConfig {
    /// What `check-config` prints: every setting that matters to an operator, and no
    /// secret (no key hash, password or client secret).
    pub fn summary(&self) -> String {
        let config = self;
        let mut lines = vec![
            "configuration OK".to_string(),
            format!("environment: {}", config.environment.as_str()),
            format!("listen: {}:{}", config.listen.0, config.listen.1),
            format!("workers: {}", config.workers),
            format!(
                "upstream: {} {}",
                match config.mode {
                    UpstreamMode::Jelou => "jelou",
                    UpstreamMode::Sandbox => "sandbox",
                },
                config.base_url
            ),
        ];
        lines.push(match &config.store {
            StoreConfig::Memory => "store: memory (this process only; one replica)".to_string(),
            StoreConfig::Redis(redis) => format!(
                "store: redis {} ({}, expected replicas {}, timeout {} ms, key prefix {:?})",
                redis.target,
                redis.failure_mode.as_str(),
                redis.expected_replicas,
                redis.timeout.as_millis(),
                redis.key_prefix
            ),
        });
        let queue = &config.asynchronous;
        lines.push(if queue.enabled {
            format!(
                "async: on (Prefer: respond-async; in {}; expiry {} s by default, at most {} s; statuses kept {} s; at most {} queued)",
                match config.store {
                    StoreConfig::Memory => "this process",
                    StoreConfig::Redis(_) => "Redis, shared by every replica",
                },
                queue.ttl.as_secs(),
                queue.max_ttl.as_secs(),
                queue.retention.as_secs(),
                queue.max_queued
            )
        } else {
            "async: off (Prefer: respond-async is ignored)".to_string()
        });
        for alias in config.bots.aliases() {
            if let Ok(bot) = config.bots.resolve(Some(alias)) {
                lines.push(format!(
                    "bot {alias}: id {}, credentials {}",
                    bot.id,
                    match config.credentials.get(alias) {
                        Some(c) => format!("client_id {} (secret set)", c.client_id()),
                        None => "none".to_string(),
                    }
                ));
            }
        }
        lines.push(match &config.callers {
            Callers::Keys(callers) => format!("auth: bearer ({} caller(s))", callers.len()),
            Callers::Open { explicit: true } => {
                "auth: none (auth.mode = \"none\": anyone who can reach the relay may send)".into()
            }
            Callers::Open { explicit: false } => {
                "auth: open (no callers configured; refused in production)".into()
            }
        });
        if let Callers::Keys(callers) = &config.callers {
            for caller in callers {
                let bots = caller
                    .bots
                    .as_ref()
                    .map_or("all".to_string(), |bots| bots.join(", "));
                let rate = caller
                    .rate
                    .map_or("no rate of its own".to_string(), |rate| {
                        format!("rate {}/s, burst {}", rate.rate_per_second, rate.burst)
                    });
                // Where its callbacks go: scheme and host only (a path or query may
                // carry a token); never the secret.
                let callback = config.callbacks.endpoints.get(&caller.name).map_or(
                    String::new(),
                    |endpoint| {
                        format!(
                            "; callbacks to {}://{} (signed)",
                            endpoint.url.scheme(),
                            endpoint.url.host_str().unwrap_or("")
                        )
                    },
                );
                lines.push(format!(
                    "caller {}: bots {bots}; {rate}{callback}",
                    caller.name
                ));
            }
        }
        lines.push(match &config.admin {
            Some((host, port)) => format!("admin: http://{host}:{port}/metrics"),
            None => "admin: off (admin.enabled = false)".into(),
        });
        lines.join("\n")
    }
}

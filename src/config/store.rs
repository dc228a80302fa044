//! The store section: memory, or Redis with its URL (a secret), timeout and failure mode.

use std::time::Duration;

use secrecy::ExposeSecret;
use url::Url;

use super::secrets::resolve_secret;
use super::*;

impl Settings {
    /// The store section, checked; a Redis URL is parsed but never echoed back.
    pub(super) fn store_config(&self, problem: &mut impl FnMut(&str, String)) -> StoreConfig {
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

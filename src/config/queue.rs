//! The `async` section: asynchronous sends and the queue that holds them.

use std::time::Duration;

use super::*;

impl Settings {
    /// The `async` section, checked against the store it needs.
    pub(super) fn async_config(
        &self,
        environment: Environment,
        problem: &mut impl FnMut(&str, String),
    ) -> AsyncConfig {
        let a = &self.asynchronous;
        if a.max_ttl_seconds == 0 {
            problem("async.max_ttl_seconds", "must be at least 1".into());
        }
        if a.ttl_seconds == 0 || a.ttl_seconds > a.max_ttl_seconds {
            problem(
                "async.ttl_seconds",
                format!("must be 1 to async.max_ttl_seconds ({})", a.max_ttl_seconds),
            );
        }
        for (key, value) in [
            ("async.retention_seconds", a.retention_seconds),
            ("async.max_queued", a.max_queued as u64),
            ("async.backoff_cap_ms", a.backoff_cap_ms),
            ("async.max_batch", a.max_batch as u64),
        ] {
            if value == 0 {
                problem(key, "must be at least 1".into());
            }
        }
        if self.server.batch_body_limit_bytes < self.server.body_limit_bytes {
            problem(
                "server.batch_body_limit_bytes",
                format!(
                    "must be at least server.body_limit_bytes ({}): a batch holds at least one message",
                    self.server.body_limit_bytes
                ),
            );
        }
        if a.claim_idle_ms < 100 {
            problem(
                "async.claim_idle_ms",
                "must be at least 100 milliseconds".into(),
            );
        }
        if a.enabled
            && environment == Environment::Production
            && self.store.backend == StoreBackend::Memory
        {
            problem(
                "async.enabled",
                "queued messages would live in this process and be lost at a restart: set store.backend = \"redis\" (with store.redis_url) to keep them, or async.enabled = false".into(),
            );
        }
        AsyncConfig {
            enabled: a.enabled,
            ttl: Duration::from_secs(a.ttl_seconds),
            max_ttl: Duration::from_secs(a.max_ttl_seconds),
            retention: Duration::from_secs(a.retention_seconds),
            max_queued: a.max_queued,
            backoff_cap: Duration::from_millis(a.backoff_cap_ms),
            claim_idle: Duration::from_millis(a.claim_idle_ms),
            max_batch: a.max_batch,
        }
    }
}

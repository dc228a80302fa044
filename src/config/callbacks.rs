//! The `callbacks` section, and each caller's callback URL and secret.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret;
use url::Url;

use super::secrets::resolve_secret;
use super::validate::is_loopback;
use super::*;
use crate::callbacks::{Endpoint, Secret};

impl Settings {
    /// Where each caller's callbacks go and how they are retried; the secrets checked
    /// but never echoed.
    pub(super) fn callbacks_config(
        &self,
        production: bool,
        problem: &mut impl FnMut(&str, String),
    ) -> CallbacksConfig {
        let c = &self.callbacks;
        if c.timeout_ms == 0 || c.timeout_ms > 60_000 {
            problem(
                "callbacks.timeout_ms",
                "must be 1 to 60000 milliseconds".into(),
            );
        }
        if c.backoff_base_ms == 0 || c.backoff_cap_ms < c.backoff_base_ms {
            problem(
                "callbacks.backoff_cap_ms",
                "must be at least callbacks.backoff_base_ms, which must be at least 1".into(),
            );
        }
        if c.max_attempts == 0 {
            problem("callbacks.max_attempts", "must be at least 1".into());
        }
        if c.max_age_seconds == 0 {
            problem("callbacks.max_age_seconds", "must be at least 1".into());
        }
        let mut endpoints = BTreeMap::new();
        for (name, caller) in &self.callers {
            let key = format!("callers.{name}");
            let secret = resolve_secret(
                &key,
                "callback_secret",
                caller.callback_secret.as_ref(),
                caller.callback_secret_file.as_deref(),
                problem,
            );
            let Some(url) = caller.callback_url.as_deref().map(str::trim) else {
                if secret.is_some() {
                    problem(
                        &format!("{key}.callback_url"),
                        "missing: a callback secret is set without a URL to send to".into(),
                    );
                }
                continue;
            };
            let url = match Url::parse(url) {
                Ok(url) if url.scheme() == "https" || url.scheme() == "http" => url,
                _ => {
                    problem(
                        &format!("{key}.callback_url"),
                        "must be an http(s) URL, e.g. https://orders.internal/jelou-callbacks"
                            .into(),
                    );
                    continue;
                }
            };
            if production && url.scheme() != "https" && !is_loopback(&url) {
                problem(
                    &format!("{key}.callback_url"),
                    format!(
                        "'{}' is not https; production only allows plain http to a loopback host",
                        url.host_str().unwrap_or("")
                    ),
                );
            }
            let Some(secret) = secret else {
                problem(
                    &format!("{key}.callback_secret"),
                    "missing: callbacks are signed; mint a secret with `jelou-relay new-callback-secret`".into(),
                );
                continue;
            };
            match Secret::parse(secret.expose_secret()) {
                Ok(secret) => {
                    endpoints.insert(name.clone(), Arc::new(Endpoint { url, secret }));
                }
                Err(why) => problem(&format!("{key}.callback_secret"), why),
            }
        }
        if !endpoints.is_empty() && !self.asynchronous.enabled {
            problem(
                "async.enabled",
                "callers have callback URLs, but callbacks tell of asynchronous messages: set async.enabled = true, or remove the callback URLs".into(),
            );
        }
        CallbacksConfig {
            endpoints,
            timeout: Duration::from_millis(c.timeout_ms),
            backoff_base: Duration::from_millis(c.backoff_base_ms),
            backoff_cap: Duration::from_millis(c.backoff_cap_ms),
            max_attempts: c.max_attempts,
            max_age: Duration::from_secs(c.max_age_seconds),
        }
    }
}

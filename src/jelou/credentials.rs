//! Jelou's credentials: held as secrets, turned into the `Authorization` header once,
//! and exposed only to the client that sends (and to the scrubbing of Jelou's words).

use std::fmt;
use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};

/// Jelou credentials for one bot. `Debug` is redacted by `SecretString` and
/// [`BasicAuthorization`].
#[derive(Debug, Clone)]
pub struct Credentials {
    client_id: String,
    client_secret: SecretString,
    authorization: BasicAuthorization,
}

/// `Authorization: Basic base64(client_id:client_secret)`, built once for every request
/// Jelou receives. Marked sensitive, so hyper never logs it; `Debug` shows nothing of it.
#[derive(Clone)]
pub struct BasicAuthorization(http::HeaderValue);

impl BasicAuthorization {
    fn new(client_id: &str, client_secret: &SecretString) -> Self {
        use base64::Engine;
        use secrecy::zeroize::Zeroizing;
        let pair = Zeroizing::new(format!("{client_id}:{}", client_secret.expose_secret()));
        let encoded = Zeroizing::new(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair.as_bytes())
        ));
        // Base64 output and the "Basic " prefix are visible ASCII: always a valid value.
        let mut value = http::HeaderValue::from_str(&encoded)
            .unwrap_or(http::HeaderValue::from_static("Basic"));
        value.set_sensitive(true);
        BasicAuthorization(value)
    }

    pub fn header(&self) -> &http::HeaderValue {
        &self.0
    }

    /// `base64(client_id:client_secret)`: the header without its scheme.
    fn encoded_pair(&self) -> &str {
        let value = self.0.to_str().unwrap_or_default();
        value.strip_prefix("Basic ").unwrap_or(value)
    }
}

impl fmt::Debug for BasicAuthorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BasicAuthorization([REDACTED])")
    }
}

impl Credentials {
    pub fn new(client_id: String, client_secret: SecretString) -> Self {
        Credentials {
            authorization: BasicAuthorization::new(&client_id, &client_secret),
            client_id,
            client_secret,
        }
    }

    /// The `Authorization` header for Jelou.
    pub fn authorization(&self) -> &http::HeaderValue {
        self.authorization.header()
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// `text` with the secret, and the Basic pair that carries it, replaced: for text
    /// that comes back from Jelou and is logged or shown.
    pub fn scrub(&self, text: &str) -> String {
        text.replace(self.authorization.encoded_pair(), "[REDACTED]")
            .replace(self.client_secret.expose_secret(), "[REDACTED]")
    }

    /// Every string in `value`, object keys included, scrubbed as by [`Self::scrub`].
    pub fn scrub_json(&self, value: &mut serde_json::Value) {
        use serde_json::Value;
        match value {
            Value::String(text) if self.reveals(text) => *text = self.scrub(text),
            Value::Array(items) => items.iter_mut().for_each(|item| self.scrub_json(item)),
            Value::Object(map) => {
                if map.keys().any(|key| self.reveals(key)) {
                    let scrubbed = std::mem::take(map)
                        .into_iter()
                        .map(|(key, value)| (self.scrub(&key), value))
                        .collect();
                    *map = scrubbed;
                }
                map.values_mut().for_each(|item| self.scrub_json(item));
            }
            _ => {}
        }
    }

    fn reveals(&self, text: &str) -> bool {
        text.contains(self.authorization.encoded_pair())
            || text.contains(self.client_secret.expose_secret())
    }
}

/// The credentials of every bot that has them, by bot alias (aliases come from the
/// configuration, so a fast hasher: no caller chooses the keys).
#[derive(Debug, Clone, Default)]
pub struct CredentialBook(Arc<foldhash::HashMap<String, Credentials>>);

impl CredentialBook {
    pub fn new(by_alias: foldhash::HashMap<String, Credentials>) -> Self {
        CredentialBook(Arc::new(by_alias))
    }

    /// The credentials of the bot with `alias`, if it has any.
    pub fn get(&self, alias: &str) -> Option<&Credentials> {
        self.0.get(alias)
    }
}

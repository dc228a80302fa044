//! A digest of the message a key stands for, so a key is never replayed for another.

use std::fmt;

use serde_json::Value;
use sha2::{Digest, Sha256};

/// A digest of the message a key stands for: bot, path, query and body, with JSON
/// object keys sorted, so the same message in another key order is the same message.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint(pub [u8; 32]);

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(&self.0[..8]))
    }
}

/// The fingerprint of a message for `bot`, sent to `url` with `body`.
pub fn fingerprint(bot: &str, url: &str, body: &[u8]) -> Fingerprint {
    let mut hasher = Sha256::new();
    hasher.update(bot.as_bytes());
    hasher.update([0]);
    hasher.update(url.as_bytes());
    hasher.update([0]);
    match serde_json::from_slice::<Value>(body) {
        Ok(value) => canonical(&value, &mut hasher),
        Err(_) => hasher.update(body),
    }
    Fingerprint(hasher.finalize().into())
}

fn canonical(value: &Value, hasher: &mut Sha256) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            hasher.update(b"{");
            for key in keys {
                hasher.update(serde_json::to_string(key).unwrap_or_default().as_bytes());
                hasher.update(b":");
                canonical(&map[key], hasher);
                hasher.update(b",");
            }
            hasher.update(b"}");
        }
        Value::Array(items) => {
            hasher.update(b"[");
            for item in items {
                canonical(item, hasher);
                hasher.update(b",");
            }
            hasher.update(b"]");
        }
        scalar => hasher.update(scalar.to_string().as_bytes()),
    }
}

//! The callers section: who may send, with which key (its SHA-256), bots and rate.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::validate::check_rate;
use super::*;
use crate::domain::flow_message::is_valid_alias;

/// A service allowed to call the relay.
#[derive(Debug)]
pub struct Caller {
    pub name: String,
    pub key_sha256: [u8; 32],
    /// Bot aliases it may use; `None` means all.
    pub bots: Option<Vec<String>>,
    pub rate: Option<RateSettings>,
}

impl Caller {
    pub fn may_use(&self, alias: &str) -> bool {
        self.bots
            .as_ref()
            .is_none_or(|bots| bots.iter().any(|b| b == alias))
    }
}

/// Who may call: named callers with keys, or anyone.
#[derive(Debug, Clone)]
pub enum Callers {
    Keys(Vec<Arc<Caller>>),
    /// `explicit` when `auth.mode = "none"`; otherwise no caller is configured (local only).
    Open {
        explicit: bool,
    },
}

impl Settings {
    /// The callers allowed to send, or open access where the configuration allows it.
    pub(super) fn callers(
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

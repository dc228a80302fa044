//! The bots this relay sends through: the alias callers use, Jelou's id, and the
//! bot's WhatsApp throughput. Credentials are Jelou's business (`jelou::credentials`).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::Deserialize;

/// A GCRA rate: `rate_per_second` sustained, `burst` at once.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateSettings {
    pub rate_per_second: f64,
    pub burst: u32,
}

/// WhatsApp's default throughput for a business number.
pub const DEFAULT_BOT_RATE: f64 = 80.0;

/// A configured bot: the alias callers use, Jelou's id, and its throughput.
#[derive(Debug)]
pub struct Bot {
    pub alias: String,
    pub id: String,
    pub rate: RateSettings,
}

/// Maps caller-facing aliases to bots.
#[derive(Debug, Clone)]
pub struct BotRegistry {
    bots: BTreeMap<String, Arc<Bot>>,
    default_alias: Option<String>,
}

/// Why a bot alias did not resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BotLookupError {
    /// No alias given and no single or default bot to fall back on.
    Missing {
        configured: Vec<String>,
    },
    Unknown {
        configured: Vec<String>,
    },
}

impl fmt::Display for BotLookupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BotLookupError::Missing { configured } => write!(
                f,
                "is required: this relay has several bots and no default (configured: {})",
                configured.join(", ")
            ),
            BotLookupError::Unknown { configured } => write!(
                f,
                "is not a bot alias configured on this relay (configured: {})",
                configured.join(", ")
            ),
        }
    }
}

impl BotRegistry {
    /// The registry of `bots` by alias; `default_alias` names the bot used when a
    /// message names none (with a single bot, that one).
    pub fn new(bots: BTreeMap<String, Arc<Bot>>, default_alias: Option<String>) -> Self {
        BotRegistry {
            bots,
            default_alias,
        }
    }

    pub fn resolve(&self, alias: Option<&str>) -> Result<Arc<Bot>, BotLookupError> {
        let configured = || self.bots.keys().cloned().collect::<Vec<_>>();
        match alias {
            Some(alias) => self
                .bots
                .get(alias)
                .cloned()
                .ok_or_else(|| BotLookupError::Unknown {
                    configured: configured(),
                }),
            None => {
                let fallback = match &self.default_alias {
                    Some(alias) => self.bots.get(alias),
                    None if self.bots.len() == 1 => self.bots.values().next(),
                    None => None,
                };
                fallback.cloned().ok_or_else(|| BotLookupError::Missing {
                    configured: configured(),
                })
            }
        }
    }

    pub fn bots(&self) -> impl Iterator<Item = &Bot> {
        self.bots.values().map(|bot| &**bot)
    }

    pub fn aliases(&self) -> impl Iterator<Item = &str> {
        self.bots.keys().map(String::as_str)
    }
}

//! Signed callbacks: each final status of a subscribed caller's asynchronous message is
//! POSTed to the caller's URL, signed per Standard Webhooks, retried with backoff until a
//! 2xx, the try limit or the age limit. The notices wait in the queue's store (recorded
//! in the same step as the final status), so they survive restarts and every replica
//! shares them; [`sender`] delivers them.

pub mod sender;
pub mod signature;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use url::Url;

pub use signature::{Secret, new_secret};

/// Where one caller's callbacks go.
#[derive(Debug)]
pub struct Endpoint {
    pub url: Url,
    pub secret: Secret,
}

/// The `callbacks` section and every caller's endpoint, validated.
#[derive(Debug, Clone, Default)]
pub struct CallbacksConfig {
    /// By caller name.
    pub endpoints: BTreeMap<String, Arc<Endpoint>>,
    /// One try: from sending to a complete answer.
    pub timeout: Duration,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// Tries in all, the first included.
    pub max_attempts: u32,
    /// No try after this long from the final status.
    pub max_age: Duration,
}

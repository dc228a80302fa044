//! Callers: bearer-key authentication (keys compared by SHA-256 in constant time) and
//! each caller's own inbound rate, with the IETF `RateLimit` headers.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use governor::RateLimiter;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use http::{HeaderValue, header};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

mod accepted;

use super::check::Check;
use super::problem::ApiError;
use super::request_id;
use crate::config::{Caller, Callers};
use crate::domain::RateSettings;

type CallerLimiter = RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

/// Who is calling, as established by [`Authenticate`].
#[derive(Debug, Clone)]
pub struct Authenticated(pub Option<Arc<Caller>>);

impl Authenticated {
    /// The caller's name, `anonymous` when the relay is open.
    pub fn name(&self) -> &str {
        self.0.as_ref().map_or("anonymous", |c| c.name.as_str())
    }

    pub fn may_use(&self, alias: &str) -> bool {
        self.0.as_ref().is_none_or(|c| c.may_use(alias))
    }
}

struct Limited {
    limiter: CallerLimiter,
    rate: RateSettings,
}

/// The callers and their limiters, shared by every request.
pub struct Gate {
    /// Tells this gate's entries in the per-thread memo of accepted keys from another's.
    id: u64,
    callers: Callers,
    /// By caller name: names come from the configuration, so a fast hasher.
    limits: foldhash::HashMap<String, Limited>,
    clock: DefaultClock,
}

impl Gate {
    pub fn new(callers: Callers) -> Self {
        let limits = match &callers {
            Callers::Keys(list) => list
                .iter()
                .filter_map(|c| {
                    let rate = c.rate?;
                    let limiter = RateLimiter::direct(quota(&rate))
                        .with_middleware::<StateInformationMiddleware>();
                    Some((c.name.clone(), Limited { limiter, rate }))
                })
                .collect(),
            Callers::Open { .. } => foldhash::HashMap::default(),
        };
        static GATES: AtomicU64 = AtomicU64::new(0);
        Gate {
            id: GATES.fetch_add(1, Ordering::Relaxed),
            callers,
            limits,
            clock: DefaultClock::default(),
        }
    }

    /// The caller whose key hashes to the presented key's hash, comparing every
    /// configured hash in constant time. A key accepted on this thread before is known
    /// without hashing it again: SHA-256 was 3,500 of the relay's instructions per request
    /// (`benches/callgrind.sh`); the memo is compared in constant time too.
    fn identify(&self, presented: &[u8]) -> Option<Arc<Caller>> {
        let Callers::Keys(callers) = &self.callers else {
            return None;
        };
        if let Some(caller) = accepted::recall(self.id, presented) {
            return Some(caller);
        }
        let digest: [u8; 32] = Sha256::digest(presented).into();
        let mut found = None;
        for caller in callers {
            if bool::from(caller.key_sha256.ct_eq(&digest)) {
                found = Some(caller.clone());
            }
        }
        if let Some(caller) = &found {
            accepted::remember(self.id, presented, caller);
        }
        found
    }
}

/// `Bearer <token>` from the Authorization header (scheme case-insensitive).
fn bearer(request: &Request) -> Option<&[u8]> {
    let value = request.headers().get(header::AUTHORIZATION)?.as_bytes();
    let (scheme, token) = value.split_at(value.iter().position(|b| *b == b' ')?);
    let token = token.trim_ascii();
    (scheme.eq_ignore_ascii_case(b"bearer") && !token.is_empty()).then_some(token)
}

fn unauthorized(request_id: &str, detail: &str, invalid_token: bool) -> Response {
    let mut response = ApiError::Unauthorized(detail.into())
        .into_problem(request_id)
        .into_response();
    let challenge = if invalid_token {
        "Bearer realm=\"jelou-relay\", error=\"invalid_token\""
    } else {
        "Bearer realm=\"jelou-relay\""
    };
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    response
}

/// Authenticates the caller, applies its rate, and hands its identity to the handler
/// (in the request's extensions) and to the request metrics (in the answer's).
#[derive(Clone)]
pub struct Authenticate {
    pub gate: Arc<Gate>,
}

/// A caller let through, and the rate headers its answer carries.
pub struct Admitted {
    caller: Authenticated,
    headers: Option<[(http::HeaderName, HeaderValue); 2]>,
}

impl Check for Authenticate {
    type Pass = Admitted;

    fn check(&self, request: &mut Request) -> Result<Admitted, Response> {
        let gate = &self.gate;
        let caller = match &gate.callers {
            Callers::Open { .. } => Authenticated(None),
            Callers::Keys(_) => match bearer(request) {
                None => {
                    return Err(unauthorized(
                        request_id::of(request),
                        "send `Authorization: Bearer <key>` with this service's relay key",
                        false,
                    ));
                }
                Some(token) => match gate.identify(token) {
                    Some(caller) => Authenticated(Some(caller)),
                    None => {
                        return Err(unauthorized(
                            request_id::of(request),
                            "the bearer key is not valid",
                            true,
                        ));
                    }
                },
            },
        };
        // Every line of the request names its caller from here on (never its key).
        tracing::Span::current().record("caller", caller.name());

        let headers = match gate.limits.get(caller.name()) {
            None => None,
            Some(limited) => match limited.limiter.check() {
                Ok(snapshot) => {
                    let remaining = snapshot.remaining_burst_capacity();
                    let used = limited.rate.burst.saturating_sub(remaining);
                    let reset = f64::from(used) / limited.rate.rate_per_second;
                    Some(rate_headers(&limited.rate, remaining, reset.ceil() as u64))
                }
                Err(not_until) => {
                    metrics::counter!(crate::metrics::RATE_LIMIT_REJECTIONS, "limit" => "caller")
                        .increment(1);
                    let wait = not_until.wait_time_from(gate.clock.now());
                    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                    let mut response = ApiError::CallerRateLimited {
                        retry_after: seconds.max(1),
                    }
                    .into_problem(request_id::of(request))
                    .into_response();
                    for (name, value) in rate_headers(&limited.rate, 0, seconds.max(1)) {
                        response.headers_mut().insert(name, value);
                    }
                    response.extensions_mut().insert(caller);
                    return Err(response);
                }
            },
        };
        request.extensions_mut().insert(caller.clone());
        Ok(Admitted { caller, headers })
    }

    fn finish(admitted: Admitted, response: &mut Response) {
        for (name, value) in admitted.headers.into_iter().flatten() {
            response.headers_mut().insert(name, value);
        }
        // For the request metrics, recorded further out.
        response.extensions_mut().insert(admitted.caller);
    }
}

/// `RateLimit-Policy: "caller";q=<burst>;w=<seconds>` and `RateLimit: "caller";r=<left>;t=<seconds>`
/// (IETF draft-ietf-httpapi-ratelimit-headers).
fn rate_headers(
    rate: &RateSettings,
    remaining: u32,
    reset: u64,
) -> [(http::HeaderName, HeaderValue); 2] {
    let window = (f64::from(rate.burst) / rate.rate_per_second)
        .ceil()
        .max(1.0) as u64;
    let quota = NonZeroU32::new(rate.burst).map_or(1, NonZeroU32::get);
    [
        (
            http::HeaderName::from_static("ratelimit-policy"),
            HeaderValue::from_str(&format!("\"caller\";q={quota};w={window}"))
                .unwrap_or(HeaderValue::from_static("\"caller\"")),
        ),
        (
            http::HeaderName::from_static("ratelimit"),
            HeaderValue::from_str(&format!("\"caller\";r={remaining};t={reset}"))
                .unwrap_or(HeaderValue::from_static("\"caller\"")),
        ),
    ]
}

/// The prefix of keys minted by `jelou-relay new-key`: a key is recognisable as one, and
/// never mistaken for a SHA-256 (which is hex only).
pub const KEY_PREFIX: &str = "jrk_";

/// A fresh caller key: [`KEY_PREFIX`] and 32 random bytes from the operating system, in
/// URL-safe base64 without padding (47 characters in all).
pub fn new_key() -> Result<String, String> {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness from the system: {e}"))?;
    Ok(format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// The SHA-256 of a key, in lower-case hex, as `callers.<name>.key_sha256` wants it.
pub fn hash_key(key: &[u8]) -> String {
    hex::encode(Sha256::digest(key))
}

/// A governor quota for a caller's `rate`; settings are validated positive at start-up.
fn quota(rate: &crate::domain::RateSettings) -> governor::Quota {
    let period = std::time::Duration::from_secs_f64(1.0 / rate.rate_per_second.max(1e-9));
    let burst = NonZeroU32::new(rate.burst.max(1)).unwrap_or(NonZeroU32::MIN);
    governor::Quota::with_period(period.max(std::time::Duration::from_nanos(1)))
        .unwrap_or_else(|| governor::Quota::per_second(NonZeroU32::MIN))
        .allow_burst(burst)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(name: &str, key: &str) -> Gate {
        Gate::new(Callers::Keys(vec![Arc::new(Caller {
            name: name.into(),
            key_sha256: Sha256::digest(key.as_bytes()).into(),
            bots: None,
            rate: None,
        })]))
    }

    #[test]
    fn a_remembered_key_names_its_caller_for_its_own_gate_only() {
        let (first, second) = (gate("first", "key-aaaa"), gate("second", "key-bbbb"));
        for _ in 0..2 {
            assert_eq!(
                first
                    .identify(b"key-aaaa")
                    .map(|c| c.name.clone())
                    .as_deref(),
                Some("first")
            );
            assert!(first.identify(b"key-aaab").is_none());
            assert!(second.identify(b"key-aaaa").is_none());
            assert_eq!(
                second
                    .identify(b"key-bbbb")
                    .map(|c| c.name.clone())
                    .as_deref(),
                Some("second")
            );
        }
        // Past the memo's size the oldest keys are hashed again, and still known.
        let gates: Vec<Gate> = (0..12).map(|n| gate("many", &format!("key-{n}"))).collect();
        for _ in 0..2 {
            for (n, gate) in gates.iter().enumerate() {
                assert!(gate.identify(format!("key-{n}").as_bytes()).is_some());
            }
        }
        assert_eq!(
            first
                .identify(b"key-aaaa")
                .map(|c| c.name.clone())
                .as_deref(),
            Some("first")
        );
    }

    #[test]
    fn new_keys_are_prefixed_url_safe_and_never_hex_only() {
        let (a, b) = (new_key().unwrap(), new_key().unwrap());
        assert_ne!(a, b);
        assert_eq!(a.len(), 47, "{a}");
        assert!(a.starts_with(KEY_PREFIX));
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-'),
            "{a}"
        );
        assert!(!a.bytes().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn hash_key_is_hex_sha256() {
        assert_eq!(
            hash_key(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}

//! The send's Idempotency-Key: claim it before sending, or answer from what it holds.

use std::time::Duration;

use axum::response::Response;
use tokio::time::Instant;

use super::answer::answer_response;
use crate::api::auth::Authenticated;
use crate::api::observe::RequestOutcome;
use crate::api::problem::ApiError;
use crate::api::state::AppState;
use crate::delivery::{DeliveryFailure, FailureKind};
use crate::idempotency::{Begin, Fingerprint, Reservation, fingerprint, scoped_key};
use crate::jelou::FlowRequest;

/// How long a claim on an Idempotency-Key outlives the request's deadline in a shared
/// store before it is taken as abandoned (the sending replica died).
const LEASE_MARGIN: Duration = Duration::from_secs(2);

/// What a keyed send does next.
pub enum Claim {
    /// The key is this request's: send, then complete or release it.
    Proceed(Reservation),
    /// The key already has an answer: replayed as it was.
    Answered(Response),
}

/// The fingerprint a key holds for a single send: the request Jelou receives.
pub fn of_request(request: &FlowRequest) -> Fingerprint {
    fingerprint(&request.bot.alias, request.url.as_str(), &request.body)
}

/// Claims `key` for the request of `fingerprint`, or answers from what the key already
/// holds.
pub async fn claim(
    state: &AppState,
    caller: &Authenticated,
    key: &str,
    fingerprint: Fingerprint,
    deadline: Instant,
) -> Result<Claim, ApiError> {
    let scoped = scoped_key(caller.name(), key);
    // A shared store keeps the claim this long; past it without an answer, the send
    // counts as interrupted (outcome unknown).
    let lease = deadline.saturating_duration_since(Instant::now()) + LEASE_MARGIN;
    // The store has its own timeout; the request's deadline still holds over it.
    let begin = tokio::time::timeout_at(
        deadline,
        state.idempotency.begin(&scoped, fingerprint, lease),
    )
    .await
    .map_err(|_elapsed| {
        ApiError::Delivery(DeliveryFailure::refused(
            FailureKind::DeadlineExceeded,
            "the deadline passed while the Idempotency-Key was being checked; nothing was sent",
            None,
        ))
    })?
    .map_err(|error| {
        // The store's address and error stay in the log.
        tracing::warn!(%error, "send refused: the Idempotency-Key could not be checked");
        ApiError::StoreUnavailable(
            "the shared idempotency store is unreachable; nothing was sent, retry shortly".into(),
        )
    })?;
    let count = |result: &'static str| {
        metrics::counter!(crate::metrics::IDEMPOTENCY, "result" => result).increment(1);
    };
    match begin {
        Begin::Proceed(reservation) => Ok(Claim::Proceed(reservation)),
        Begin::Replay(answer) => {
            count("replayed");
            tracing::info!("idempotent replay: Jelou not called");
            let mut response = answer_response(answer, true);
            response
                .extensions_mut()
                .insert(RequestOutcome::new("replayed"));
            Ok(Claim::Answered(response))
        }
        Begin::InFlight => {
            count("in_flight");
            Err(ApiError::IdempotencyKeyInFlight)
        }
        Begin::Abandoned => {
            count("interrupted");
            Err(ApiError::SendInterrupted)
        }
        Begin::Mismatch => {
            count("reused");
            Err(ApiError::IdempotencyKeyReused)
        }
        Begin::Full => {
            count("full");
            Err(ApiError::Overloaded)
        }
    }
}

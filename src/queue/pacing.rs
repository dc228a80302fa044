//! A queued message's send time: a cell of its recipient's and its bot's limits
//! reserved for the first moment both are free before it expires. A message sent alone
//! is paced when it is accepted, so that one that must wait goes straight to the
//! waiting set instead of through the ready stream, a worker and back; the worker paces
//! what has no slot yet (a batch's messages, or one whose limits could not be read).

use std::time::Duration;

use tokio::time::Instant;

use super::Message;
use super::message::now_ms;
use crate::delivery::{DeliveryFailure, Paced};
use crate::jelou::FlowRequest;

/// When `message` may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Its cells are reserved for this time (ms since the epoch).
    At(u64),
    /// No cell is free before it expires (nothing was spent): it waits to expire.
    Never,
}

/// Reserves `message`'s cells and records the time as its slot.
pub async fn reserve(
    paced: &Paced,
    request: &FlowRequest,
    message: &mut Message,
) -> Result<Slot, DeliveryFailure> {
    let now = now_ms();
    let latest = Instant::now() + Duration::from_millis(message.expires_ms.saturating_sub(now));
    Ok(match paced.pace(request, latest).await? {
        Some(at) => {
            let at_ms = now + at.saturating_duration_since(Instant::now()).as_millis() as u64;
            message.slot_ms = Some(at_ms);
            Slot::At(at_ms)
        }
        None => Slot::Never,
    })
}

/// Paces `message` as it is accepted: it is queued to wait for its slot (or its expiry)
/// when that is later than now. When its limits cannot be read it is queued as it is,
/// for the worker to pace.
pub async fn on_acceptance(paced: &Paced, request: &FlowRequest, message: &mut Message) {
    match reserve(paced, request, message).await {
        Ok(Slot::At(at)) => message.not_before_ms = at,
        Ok(Slot::Never) => message.not_before_ms = message.expires_ms,
        Err(_) => {}
    }
}

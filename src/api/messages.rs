//! `GET` and `DELETE /v1/flow-messages/{id}`: a queued message's status, and its
//! cancellation while it is still queued.

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};

use super::auth::Authenticated;
use super::observe::RequestOutcome;
use super::problem::{ApiError, Problem};
use super::request_id::RequestId;
use super::state::AppState;
use crate::queue::worker::log_change;
use crate::queue::{Message, MessageStatus, Placement, QueueError, QueueStore, Status};

/// How often a cancel reads again after the worker changed the message under it.
const CANCEL_TRIES: usize = 5;

/// The status of a message sent with `Prefer: respond-async`.
#[utoipa::path(
    get,
    path = "/v1/flow-messages/{id}",
    tag = "flow-messages",
    security(("bearer" = []), ()),
    params(("id" = String, Path, description = "The id from the 202 answer (and its `Location`).")),
    responses(
        (status = 200, description = "The message's status", body = MessageStatus),
        (status = 401, description = "`unauthorized`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not_found`: no such message for this caller, or past its retention", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`overloaded`: the queue's store is unreachable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_message(
    State(state): State<AppState>,
    Path(id): Path<String>,
    RequestId(request_id): RequestId,
    caller: Option<axum::Extension<Authenticated>>,
) -> Response {
    let result = async {
        let (queue, caller) = scope(&state, caller.as_deref())?;
        let message = find(queue, caller, &id).await?;
        Ok(message.view())
    }
    .await;
    respond(result, &request_id)
}

/// Cancels a message that is still `queued`.
#[utoipa::path(
    delete,
    path = "/v1/flow-messages/{id}",
    tag = "flow-messages",
    security(("bearer" = []), ()),
    params(("id" = String, Path, description = "The id from the 202 answer.")),
    responses(
        (status = 200, description = "Canceled: the status object, `canceled`, delivery `not_sent`", body = MessageStatus),
        (status = 401, description = "`unauthorized`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`not_cancelable`: the message is `sending` or final", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`overloaded`: the queue's store is unreachable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn cancel_message(
    State(state): State<AppState>,
    Path(id): Path<String>,
    RequestId(request_id): RequestId,
    caller: Option<axum::Extension<Authenticated>>,
) -> Response {
    let result = async {
        let (queue, caller) = scope(&state, caller.as_deref())?;
        for _ in 0..CANCEL_TRIES {
            let mut message = find(queue, caller, &id).await?;
            if message.status != Status::Queued {
                return Err(ApiError::NotCancelable(message.status.as_str()));
            }
            message.set(Status::Canceled);
            let placement = Placement::Final(state.asynchronous.retention);
            let notice = message.notice(&state.subscribers);
            match queue
                .change(&message, placement, None, notice.as_ref())
                .await
            {
                Ok(Some(_)) => {
                    log_change(&message);
                    return Ok(message.view());
                }
                // The worker moved it meanwhile: look again.
                Ok(None) => continue,
                Err(error) => return Err(store_failed(error)),
            }
        }
        Err(ApiError::NotCancelable(Status::Sending.as_str()))
    }
    .await;
    respond(result, &request_id)
}

/// A store failure while reading or canceling a message: 503 `overloaded`, and whether
/// a cancellation the store took may have been made.
fn store_failed(error: QueueError) -> ApiError {
    tracing::warn!(%error, "the queue's store failed");
    ApiError::StoreUnavailable(if error.may_have_run() {
        "the queue's store took the change and did not answer in time: it may have been made; GET the message to see its status".into()
    } else {
        "the queue's store is unreachable; retry shortly".into()
    })
}

fn scope<'a>(
    state: &'a AppState,
    caller: Option<&'a Authenticated>,
) -> Result<(&'a dyn QueueStore, &'a Authenticated), ApiError> {
    let queue = state.queue.as_deref().ok_or(ApiError::MessageNotFound)?;
    let caller = caller.ok_or(ApiError::Internal)?;
    Ok((queue, caller))
}

/// The message, when it is this caller's.
async fn find(
    queue: &dyn QueueStore,
    caller: &Authenticated,
    id: &str,
) -> Result<Message, ApiError> {
    let message = queue
        .get(id)
        .await
        .map_err(store_failed)?
        .ok_or(ApiError::MessageNotFound)?;
    if message.caller != caller.name() {
        return Err(ApiError::MessageNotFound);
    }
    Ok(message)
}

fn respond(result: Result<MessageStatus, ApiError>, request_id: &str) -> Response {
    match result {
        Ok(status) => {
            let outcome = RequestOutcome::new(status.status.as_str());
            let mut response = Json(status).into_response();
            response.extensions_mut().insert(outcome);
            response
        }
        Err(error) => {
            let outcome = RequestOutcome {
                code: Some(error.code()),
                ..RequestOutcome::new("refused")
            };
            let mut response = error.into_problem(request_id).into_response();
            response.extensions_mut().insert(outcome);
            response
        }
    }
}

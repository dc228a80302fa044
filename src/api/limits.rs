//! Inbound bounds: total header size, and requests handled at once (shed past it).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

use super::problem::ApiError;
use super::request_id::RequestId;

/// Refuses requests whose headers, names and values together, exceed `limit` bytes.
pub async fn header_size(
    State(limit): State<usize>,
    RequestId(request_id): RequestId,
    request: Request,
    next: Next,
) -> Response {
    let size: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if size > limit {
        return ApiError::HeadersTooLarge { limit }
            .into_problem(&request_id)
            .into_response();
    }
    next.run(request).await
}

/// Holds one permit per request being handled; none left means 503 at once, not a queue.
pub async fn shed_overload(
    State(permits): State<Arc<Semaphore>>,
    RequestId(request_id): RequestId,
    request: Request,
    next: Next,
) -> Response {
    let Ok(_permit) = permits.try_acquire_owned() else {
        metrics::counter!(crate::metrics::SHED, "where" => "in_flight").increment(1);
        tracing::warn!("in-flight limit reached: shedding");
        return ApiError::Overloaded
            .into_problem(&request_id)
            .into_response();
    };
    next.run(request).await
}

//! Inbound bounds: total header size, and requests handled at once (shed past it).

use std::sync::Arc;

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::check::Check;
use super::problem::ApiError;
use super::request_id;

/// Refuses requests whose headers, names and values together, exceed `limit` bytes.
#[derive(Clone, Copy)]
pub struct HeaderSize {
    pub limit: usize,
}

impl Check for HeaderSize {
    type Pass = ();

    fn check(&self, request: &mut Request) -> Result<(), Response> {
        let size: usize = request
            .headers()
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum();
        if size > self.limit {
            return Err(ApiError::HeadersTooLarge { limit: self.limit }
                .into_problem(request_id::of(request))
                .into_response());
        }
        Ok(())
    }
}

/// Holds one permit per request being handled; none left means 503 at once, not a queue.
#[derive(Clone)]
pub struct ShedOverload {
    pub permits: Arc<Semaphore>,
}

impl Check for ShedOverload {
    type Pass = OwnedSemaphorePermit;

    fn check(&self, request: &mut Request) -> Result<OwnedSemaphorePermit, Response> {
        self.permits.clone().try_acquire_owned().map_err(|_| {
            metrics::counter!(crate::metrics::SHED, "where" => "in_flight").increment(1);
            tracing::warn!("in-flight limit reached: shedding");
            ApiError::Overloaded
                .into_problem(request_id::of(request))
                .into_response()
        })
    }
}

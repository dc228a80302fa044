//! The queue's way out to Jelou: the synchronous path's parts, used one step at a time.
//! A queued message reserves its rate-limit cells instead of waiting for them, takes one
//! of the same permits to Jelou, makes one attempt (the same attempt layer, timeout and
//! credentials), and learns from the same retry policy and budget whether and when to
//! try again.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tower::ServiceExt;

use super::rate_limit::Limits;
use super::retry::RetryPolicy;
use super::{Delivered, DeliveryFailure, DeliveryService, Outbound};
use crate::jelou::FlowRequest;

/// What the queue does after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Provably not sent and worth another try: wait this long.
    RetryIn(Duration),
    /// Final: refused by Jelou, or its fate is unknown.
    Final,
}

#[derive(Clone)]
pub struct Paced {
    limits: Arc<Limits>,
    permits: Arc<Semaphore>,
    attempt: DeliveryService,
    retry: RetryPolicy,
    request_timeout: Duration,
}

impl Paced {
    pub(super) fn new(
        limits: Arc<Limits>,
        permits: Arc<Semaphore>,
        attempt: DeliveryService,
        retry: RetryPolicy,
        request_timeout: Duration,
    ) -> Self {
        Paced {
            limits,
            permits,
            attempt,
            retry,
            request_timeout,
        }
    }

    /// The most one attempt takes.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// When `request` may go, a cell of its recipient's and its bot's limits reserved
    /// for then; `None` when no cell is free before `latest`.
    pub async fn pace(
        &self,
        request: &FlowRequest,
        latest: Instant,
    ) -> Result<Option<Instant>, DeliveryFailure> {
        self.limits.pace(request, latest).await
    }

    /// One of the permits to Jelou that synchronous sends use too.
    pub async fn permit(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().acquire_owned().await.ok()
    }

    /// One attempt, bounded by the per-attempt timeout.
    pub async fn attempt(&self, request: Arc<FlowRequest>) -> Result<Delivered, DeliveryFailure> {
        let outbound = Outbound {
            request,
            deadline: Instant::now() + self.request_timeout,
            journal: Arc::default(),
        };
        self.attempt.clone().oneshot(outbound).await
    }

    /// After the `attempts`-th attempt failed: try again (when), or stop.
    pub fn after_failure(
        &self,
        failure: &DeliveryFailure,
        attempts: u32,
        backoff_cap: Duration,
    ) -> AfterFailure {
        match self.retry.queued_retry(failure, attempts, backoff_cap) {
            Some(wait) => AfterFailure::RetryIn(wait),
            None => AfterFailure::Final,
        }
    }
}

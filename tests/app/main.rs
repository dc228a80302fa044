//! The relay in process, on port 0, against wiremock standing in for Jelou: the exact
//! request Jelou receives and the exact answer the caller gets.

#[macro_use]
#[path = "../common/mod.rs"]
mod common;

mod batch;
mod callbacks;
mod callers;
mod faults;
mod hostile;
mod idempotency;
mod openapi;
mod properties;
mod queued;
mod queued_pacing;
mod rate_limits;
mod send;
mod tracing;
mod validation;

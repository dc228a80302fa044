//! Inbound HTTP: the routes, their request and response types, and problem+json errors.

pub mod auth;
pub mod check;
pub mod flow_messages;
pub mod health;
pub mod limits;
pub mod observe;
pub mod openapi;
pub mod problem;
pub mod request_id;
pub mod trace_context;

pub use problem::{ApiError, Problem};
pub use request_id::RequestId;

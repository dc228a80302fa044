//! Inbound HTTP: the router and its layers (request id, trace, limits, auth), the
//! handlers, and problem+json errors.

pub mod auth;
pub mod check;
pub mod health;
pub mod limits;
pub mod messages;
pub mod observe;
pub mod openapi;
pub mod problem;
pub mod request_id;
pub mod router;
pub mod send;
pub mod state;
pub mod trace_context;

pub use problem::{ApiError, Problem};
pub use request_id::RequestId;
pub use state::AppState;

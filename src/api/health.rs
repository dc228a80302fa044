//! Liveness and readiness probes.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use super::state::AppState;
pub use super::state::Readiness;
use crate::store::StoreStatus;

#[derive(Serialize, ToSchema)]
pub struct HealthStatus {
    /// `ok`.
    pub status: &'static str,
}

#[derive(Serialize, ToSchema)]
pub struct ReadinessStatus {
    /// `ready` or `draining`.
    pub status: &'static str,
    /// Where rate limits and idempotency keys live, and whether it answers. A `down`
    /// store does not make the relay unready: each replica then answers per
    /// `store.failure_mode` (see the README), which a caller can act on, rather than
    /// every replica leaving the load balancer at once.
    pub store: StoreStatus,
}

/// The process is alive.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Alive", body = HealthStatus)))]
pub async fn healthz() -> Json<HealthStatus> {
    Json(HealthStatus { status: "ok" })
}

/// The relay accepts traffic; 503 once shutdown has begun.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = ReadinessStatus),
        (status = 503, description = "Draining: send traffic elsewhere", body = ReadinessStatus),
    ))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let store = state.store.status();
    if state.readiness.is_ready() {
        Json(ReadinessStatus {
            status: "ready",
            store,
        })
        .into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(ReadinessStatus {
                status: "draining",
                store,
            }),
        )
            .into_response()
    }
}

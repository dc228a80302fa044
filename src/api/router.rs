//! The routes and the inbound stack, kept apart from `main` so tests can drive them.

use axum::Router;
use axum::middleware::{from_fn, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::header;
use metrics_exporter_prometheus::PrometheusHandle;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use super::auth::Authenticate;
use super::check::check;
use super::health::{healthz, readyz};
use super::limits::{HeaderSize, ShedOverload};
use super::messages::{cancel_message, get_message};
use super::observe::observe;
use super::openapi::ApiDoc;
use super::problem::ApiError;
use super::request_id::{MakeRequestUuid, RequestId, X_REQUEST_ID, drop_unacceptable};
use super::send::{send_batch, send_flow_message};
use super::state::AppState;

/// The routes and the inbound stack, kept apart from `main` so tests can drive it.
pub fn router(state: AppState) -> Router {
    let header_limit = state.max_header_bytes;
    let api = Router::new()
        .route("/v1/flow-messages", post(send_flow_message))
        .route("/v1/flow-messages/batch", post(send_batch))
        .route(
            "/v1/flow-messages/{id}",
            get(get_message).delete(cancel_message),
        )
        // Outer to inner: shedding first, so an overloaded relay spends nothing on a
        // request; then the caller's key and rate.
        .route_layer(
            ServiceBuilder::new()
                .layer(from_fn_with_state(
                    ShedOverload {
                        permits: state.permits.clone(),
                    },
                    check::<ShedOverload>,
                ))
                .layer(from_fn_with_state(
                    Authenticate {
                        gate: state.gate.clone(),
                    },
                    check::<Authenticate>,
                )),
        );
    let routes = api
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(SwaggerUi::new("/docs").url("/openapi.json", ApiDoc::openapi()))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state);

    // Inbound stack, outer to inner.
    let inbound = ServiceBuilder::new()
        // A hostile or malformed caller id is dropped before one is assigned.
        .map_request(drop_unacceptable)
        .layer(SetRequestIdLayer::new(
            X_REQUEST_ID.clone(),
            MakeRequestUuid,
        ))
        .layer(PropagateRequestIdLayer::new(X_REQUEST_ID.clone()))
        // Callers' Authorization headers never reach a log line.
        .layer(SetSensitiveRequestHeadersLayer::new([
            header::AUTHORIZATION,
        ]))
        // The span, the trace context, the request metrics and the final log line.
        .layer(from_fn(observe))
        // Last line of defence: a panic becomes a problem+json 500, never a dropped connection.
        .layer(CatchPanicLayer::custom(|_panic| {
            tracing::error!("handler panicked");
            ApiError::Internal.into_problem("unknown").into_response()
        }))
        .layer(from_fn_with_state(
            HeaderSize {
                limit: header_limit,
            },
            check::<HeaderSize>,
        ));
    routes.layer(inbound)
}

/// The admin listener's routes.
pub fn admin_router(handle: PrometheusHandle) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    handle.render(),
                )
            }
        }),
    )
}

async fn not_found(RequestId(id): RequestId) -> Response {
    ApiError::NotFound.into_problem(&id).into_response()
}

async fn method_not_allowed(RequestId(id): RequestId) -> Response {
    ApiError::MethodNotAllowed.into_problem(&id).into_response()
}

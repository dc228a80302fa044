//! Builds the router and both middleware stacks, binds the listener, serves, and drains
//! on shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::header;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use url::Url;
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use crate::api::auth::{Authenticate, Gate};
use crate::api::check::CheckLayer;
use crate::api::flow_messages::send_flow_message;
use crate::api::health::{Readiness, healthz, readyz};
use crate::api::limits::{HeaderSize, ShedOverload};
use crate::api::observe::{MakeRequestUuid, ObserveLayer};
use crate::api::openapi::ApiDoc;
use crate::api::request_id::{X_REQUEST_ID, drop_unacceptable};
use crate::api::{ApiError, RequestId};
use crate::config::{BotRegistry, RelayConfig, UpstreamMode};
use crate::delivery::idempotency::{IdempotencyStore, MemoryStore};
use crate::delivery::{self, DeliveryService};
use crate::jelou::{JelouClient, Sandbox};
use crate::store::Store;
use crate::store::idempotency::SharedIdempotency;
use crate::workers::Workers;

/// What every handler shares: one allocation, so a clone per request is one count.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The state behind [`AppState`].
pub struct Shared {
    pub bots: Arc<BotRegistry>,
    pub base_url: Arc<Url>,
    pub body_limit: usize,
    pub sandbox: bool,
    pub delivery: DeliveryService,
    pub readiness: Readiness,
    /// The default (and longest) deadline of a send.
    pub deadline: Duration,
    pub idempotency: Arc<dyn IdempotencyStore>,
    pub idempotency_required: bool,
    /// Where rate-limit state and idempotency keys live; `/readyz` reports its state.
    pub store: Store,
    pub gate: Arc<Gate>,
    /// One permit per request being handled.
    pub permits: Arc<Semaphore>,
    pub max_header_bytes: usize,
    pub max_json_depth: usize,
    pub body_read_timeout: Duration,
}

impl AppState {
    /// The state for `config`, with the delivery stack over Jelou or the sandbox.
    pub fn from_config(config: &RelayConfig) -> Result<AppState, String> {
        // The recorder is installed before any metric is touched.
        crate::metrics::handle();
        let store = Store::open(&config.store)?;
        let delivery = match config.mode {
            UpstreamMode::Sandbox => delivery::stack(config, Sandbox, &store),
            UpstreamMode::Jelou => delivery::stack(
                config,
                JelouClient::new(config.connect_timeout, config.workers)?,
                &store,
            ),
        };
        let retention = config.idempotency.retention;
        let idempotency: Arc<dyn IdempotencyStore> = match &store {
            Store::Memory => Arc::new(MemoryStore::new(retention, config.idempotency.max_keys)),
            Store::Redis(redis) => Arc::new(SharedIdempotency::new(
                redis.clone(),
                retention,
                config.idempotency.max_keys,
            )),
        };
        Ok(AppState(Arc::new(Shared {
            bots: Arc::new(config.bots.clone()),
            base_url: Arc::new(config.base_url.clone()),
            body_limit: config.body_limit_bytes,
            sandbox: config.mode == UpstreamMode::Sandbox,
            delivery,
            readiness: Readiness::new(),
            deadline: config.delivery.deadline,
            idempotency,
            idempotency_required: config.idempotency.required,
            store,
            gate: Arc::new(Gate::new(config.callers.clone())),
            permits: Arc::new(Semaphore::new(config.max_in_flight)),
            max_header_bytes: config.max_header_bytes,
            max_json_depth: config.max_json_depth,
            body_read_timeout: config.body_read_timeout,
        })))
    }
}

/// The routes and the inbound stack, kept apart from `main` so tests can drive it.
///
/// The inbound stack is one `layer` call of concrete services: axum boxes a route once
/// per `layer`/`route_layer` call and clones every box below a layer on each request,
/// so nesting them costs allocations on the hot path.
pub fn router(state: AppState) -> Router {
    let header_limit = state.max_header_bytes;
    let api = Router::new()
        .route("/v1/flow-messages", post(send_flow_message))
        // Outer to inner: shedding first, so an overloaded relay spends nothing on a
        // request; then the caller's key and rate.
        .route_layer(
            ServiceBuilder::new()
                .layer(CheckLayer(ShedOverload {
                    permits: state.permits.clone(),
                }))
                .layer(CheckLayer(Authenticate {
                    gate: state.gate.clone(),
                })),
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
        .layer(ObserveLayer)
        // Last line of defence: a panic becomes a problem+json 500, never a dropped connection.
        .layer(CatchPanicLayer::custom(|_panic| {
            tracing::error!("handler panicked");
            ApiError::Internal.into_problem("unknown").into_response()
        }))
        .layer(CheckLayer(HeaderSize {
            limit: header_limit,
        }));
    routes.layer(inbound)
}

/// The admin listener's routes.
fn admin_router(handle: PrometheusHandle) -> Router {
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

/// Why the application could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Client(String),
}

/// A bound, ready-to-serve relay. Binding happens in `build`, so port 0 works in tests.
pub struct Application {
    listener: TcpListener,
    admin: Option<(TcpListener, u16)>,
    router: Router,
    readiness: Readiness,
    shutdown_delay: Duration,
    drain_timeout: Duration,
    header_read_timeout: Duration,
    workers: usize,
    port: u16,
}

impl Application {
    pub async fn build(config: &RelayConfig) -> Result<Application, StartError> {
        let state = AppState::from_config(config).map_err(StartError::Client)?;
        let (host, port) = &config.listen;
        let address = format!("{host}:{port}");
        let listener = TcpListener::bind((host.as_str(), *port))
            .await
            .map_err(|source| StartError::Bind {
                address: address.clone(),
                source,
            })?;
        let port = listener
            .local_addr()
            .map_err(|source| StartError::Bind { address, source })?
            .port();
        let admin = match &config.admin {
            None => None,
            Some((host, admin_port)) => {
                let address = format!("{host}:{admin_port}");
                let bind_error = |source| StartError::Bind {
                    address: address.clone(),
                    source,
                };
                let listener = TcpListener::bind((host.as_str(), *admin_port))
                    .await
                    .map_err(bind_error)?;
                let port = listener.local_addr().map_err(bind_error)?.port();
                Some((listener, port))
            }
        };
        Ok(Application {
            listener,
            admin,
            readiness: state.readiness.clone(),
            router: router(state),
            shutdown_delay: config.shutdown_delay,
            drain_timeout: config.drain_timeout,
            header_read_timeout: config.header_read_timeout,
            workers: config.workers,
            port,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The admin listener's port, when it is enabled.
    pub fn admin_port(&self) -> Option<u16> {
        self.admin.as_ref().map(|(_, port)| *port)
    }

    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    /// Serves until `shutdown` resolves; then readiness flips to 503, the listener keeps
    /// serving for the shutdown delay, stops accepting, and in-flight requests get the
    /// drain period to finish.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let readiness = self.readiness.clone();
        let delay = self.shutdown_delay;
        let stop_accepting = async move {
            shutdown.await;
            readiness.set_draining();
            tracing::info!(
                delay_ms = delay.as_millis() as u64,
                "shutdown requested; /readyz now answers 503"
            );
            tokio::time::sleep(delay).await;
        };
        tokio::pin!(stop_accepting);

        // HTTP/1 connections are served by hyper's HTTP/1 connection directly; anything
        // that opens like HTTP/2 (h2c with prior knowledge) by the auto-detecting one.
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            // A client that dribbles its headers is cut off (slow-loris).
            .header_read_timeout(self.header_read_timeout)
            .half_close(true)
            .max_headers(100);
        let mut auto = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        auto.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout)
            .max_headers(100);
        let (draining, _) = tokio::sync::watch::channel(false);
        let admin = self.admin.map(|(listener, _)| {
            tokio::spawn(async move {
                axum::serve(listener, admin_router(crate::metrics::handle())).await
            })
        });
        let mut workers = Workers::start(self.workers)?;
        let graceful = GracefulShutdown::new();
        loop {
            tokio::select! {
                accepted = self.listener.accept() => {
                    let stream = match accepted.and_then(|(stream, _peer)| {
                        let _ = stream.set_nodelay(true);
                        stream.into_std()
                    }) {
                        Ok(stream) => stream,
                        Err(error) => {
                            // Out of file descriptors and the like: back off, keep serving.
                            tracing::warn!(%error, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    // The connection is served, start to end, by the next worker in turn.
                    let service = TowerToHyperService::new(self.router.clone());
                    let (http1, auto) = (http1.clone(), auto.clone());
                    let watcher = graceful.watcher();
                    let mut draining = draining.subscribe();
                    let first_bytes_within = self.header_read_timeout;
                    workers.next_in_turn().spawn(async move {
                        let stream = match TcpStream::from_std(stream) {
                            Ok(stream) => stream,
                            Err(error) => {
                                tracing::debug!(%error, "cannot take over an accepted connection");
                                return;
                            }
                        };
                        let opening = tokio::select! {
                            opening = tokio::time::timeout(first_bytes_within, opening(&stream)) => opening,
                            _ = draining.wait_for(|draining| *draining) => return,
                        };
                        let result = match opening {
                            Ok(Ok(Opening::Http1)) => watcher
                                .watch(http1.serve_connection(TokioIo::new(stream), service))
                                .await
                                .map_err(|error| error.to_string()),
                            Ok(Ok(Opening::Other)) => watcher
                                .watch(auto.serve_connection(TokioIo::new(stream), service).into_owned())
                                .await
                                .map_err(|error| error.to_string()),
                            Ok(Ok(Opening::Closed)) => Ok(()),
                            Ok(Err(error)) => Err(error.to_string()),
                            Err(_elapsed) => Err("nothing received within header_read_timeout_ms".into()),
                        };
                        if let Err(error) = result {
                            tracing::debug!(%error, "connection ended with an error");
                        }
                    });
                }
                () = &mut stop_accepting => break,
            }
        }
        drop(self.listener);
        // Connections that have not sent a byte yet are closed.
        draining.send_replace(true);
        tracing::info!("listener closed; draining in-flight requests");
        tokio::select! {
            () = graceful.shutdown() => tracing::info!("drained; exiting"),
            () = tokio::time::sleep(self.drain_timeout) => tracing::warn!(
                drain_ms = self.drain_timeout.as_millis() as u64,
                "drain period over; exiting with requests still in flight"
            ),
        }
        workers.stop().await;
        if let Some(admin) = admin {
            admin.abort();
        }
        Ok(())
    }
}

/// What a connection speaks, from its first bytes.
enum Opening {
    Http1,
    /// The HTTP/2 preface, or a prefix of it: left to the auto-detecting connection.
    Other,
    /// Closed before sending anything.
    Closed,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Waits for a connection's first bytes and reads them without consuming them, so
/// hyper's HTTP/1 connection gets the whole stream (one read buffer, no replay layer).
async fn opening(stream: &TcpStream) -> std::io::Result<Opening> {
    let mut first = [0u8; H2_PREFACE.len()];
    let n = stream.peek(&mut first).await?;
    Ok(if n == 0 {
        Opening::Closed
    } else if first[..n] == H2_PREFACE[..n] {
        Opening::Other
    } else {
        Opening::Http1
    })
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

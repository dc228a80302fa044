//! The application: binds the listeners, serves the router until told to stop, and
//! drains on shutdown.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use crate::api::router::{admin_router, router};
use crate::api::state::AppState;
use crate::api::state::Readiness;
use crate::config::RelayConfig;

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

        // One builder for HTTP/1 and h2c (prior knowledge); each connection is a task of
        // the multi-threaded runtime, and so is each HTTP/2 stream, so one connection's
        // requests can use every core.
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            // A client that dribbles its headers, or sends nothing, is cut off (slow-loris).
            .header_read_timeout(self.header_read_timeout)
            // A caller that half-closes after its request still gets its answer.
            .half_close(true)
            .max_headers(100);
        builder.http2().timer(TokioTimer::new());
        let admin = self.admin.map(|(listener, _)| {
            tokio::spawn(async move {
                axum::serve(listener, admin_router(crate::metrics::handle())).await
            })
        });
        let graceful = GracefulShutdown::new();
        let (draining, _) = tokio::sync::watch::channel(false);
        loop {
            tokio::select! {
                accepted = self.listener.accept() => {
                    let stream = match accepted {
                        Ok((stream, _peer)) => stream,
                        Err(error) => {
                            // Out of file descriptors and the like: back off, keep serving.
                            tracing::warn!(%error, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let service = TowerToHyperService::new(self.router.clone());
                    let builder = builder.clone();
                    let watcher = graceful.watcher();
                    let mut draining = draining.subscribe();
                    let first_bytes_within = self.header_read_timeout;
                    tokio::spawn(async move {
                        // hyper's header timeout starts once the protocol is detected: a
                        // connection that sends nothing at all is closed here, and at
                        // shutdown without holding the drain.
                        let mut first = [0u8; 1];
                        let first_bytes = tokio::time::timeout(first_bytes_within, stream.peek(&mut first));
                        tokio::select! {
                            arrived = first_bytes => match arrived {
                                Ok(Ok(n)) if n > 0 => {}
                                _ => return,
                            },
                            _ = draining.wait_for(|draining| *draining) => return,
                        }
                        let connection = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .into_owned();
                        if let Err(error) = watcher.watch(connection).await {
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
        if let Some(admin) = admin {
            admin.abort();
        }
        Ok(())
    }
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

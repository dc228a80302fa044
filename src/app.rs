//! The application: binds the listeners, serves the router until told to stop, and
//! drains on shutdown.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};

use crate::api::router::{admin_router, router};
use crate::api::state::AppState;
use crate::api::state::Readiness;
use crate::callbacks::sender::Sender;
use crate::config::RelayConfig;
use crate::domain::Recipient;
use crate::queue::QueueStore;
use crate::queue::worker::Worker;
use crate::workers::Workers;

/// Why the application could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "cannot listen on {address}: {source}; set server.port (JELOU_RELAY__SERVER__PORT) to a free port"
    )]
    Bind {
        address: String,
        source: std::io::Error,
    },
    #[error(
        "the admin listener (/metrics) cannot listen on {address}: {source}; set admin.port (JELOU_RELAY__ADMIN__PORT) to a free port, or admin.enabled = false (JELOU_RELAY__ADMIN__ENABLED=false) to run without it"
    )]
    AdminBind {
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
    /// The queue's worker, when asynchronous sending is on.
    worker: Option<Worker>,
    /// The callback sender, when a caller has a callback URL.
    callbacks: Option<Sender>,
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
                let bind_error = |source| StartError::AdminBind {
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
        let callbacks = match &state.queue {
            Some(queue) => {
                Sender::new(queue.clone(), config.callbacks.clone()).map_err(StartError::Client)?
            }
            None => None,
        };
        Ok(Application {
            listener,
            admin,
            worker: state.worker(),
            callbacks,
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
        let (stop_worker, worker_draining) = tokio::sync::watch::channel(false);
        let callbacks = self
            .callbacks
            .map(|sender| tokio::spawn(sender.run(worker_draining.clone())));
        let queue_worker = self.worker.map(|worker| {
            let queue = worker.queue.clone();
            (queue, tokio::spawn(worker.run(worker_draining)))
        });
        let stop_accepting = async move {
            shutdown.await;
            readiness.set_draining();
            // Queued work is left for the other replicas (or this one's successor).
            stop_worker.send_replace(true);
            tracing::info!(
                delay_ms = delay.as_millis() as u64,
                "shutdown requested; /readyz now answers 503"
            );
            tokio::time::sleep(delay).await;
        };
        tokio::pin!(stop_accepting);

        // HTTP/1 connections are served start to end by one of the per-core workers (see
        // `workers` for why); h2c connections (prior knowledge) by the shared runtime, whose
        // threads take their streams, so one HTTP/2 connection's requests use every core.
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            // A client that dribbles its headers is cut off (slow-loris).
            .header_read_timeout(self.header_read_timeout)
            // A caller that half-closes after its request still gets its answer.
            .half_close(true)
            .max_headers(100);
        let mut h2c = auto::Builder::new(TokioExecutor::new());
        h2c.http2().timer(TokioTimer::new());
        let admin = self.admin.map(|(listener, _)| {
            tokio::spawn(async move {
                axum::serve(listener, admin_router(crate::metrics::handle())).await
            })
        });
        let workers = Arc::new(Workers::start(self.workers)?);
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
                    let (http1, h2c, workers) = (http1.clone(), h2c.clone(), workers.clone());
                    let watcher = graceful.watcher();
                    let mut draining = draining.subscribe();
                    let first_bytes_within = self.header_read_timeout;
                    tokio::spawn(async move {
                        // A connection that sends nothing is closed after the header read
                        // timeout, and at shutdown without holding the drain.
                        let opening = tokio::time::timeout(first_bytes_within, opening(&stream));
                        let opening = tokio::select! {
                            opening = opening => opening,
                            _ = draining.wait_for(|draining| *draining) => return,
                        };
                        let served = match opening {
                            Ok(Ok(Opening::Http2)) => watcher
                                .watch(h2c.serve_connection(TokioIo::new(stream), service).into_owned())
                                .await
                                .map_err(|error| error.to_string()),
                            Ok(Ok(Opening::Http1)) => {
                                let Ok(stream) = stream.into_std() else { return };
                                let connection = async move {
                                    let stream = TcpStream::from_std(stream)?;
                                    watcher
                                        .watch(http1.serve_connection(TokioIo::new(stream), service))
                                        .await
                                        .map_err(std::io::Error::other)
                                };
                                workers.next_in_turn().spawn(async move {
                                    if let Err(error) = connection.await {
                                        tracing::debug!(%error, "connection ended with an error");
                                    }
                                });
                                Ok(())
                            }
                            Ok(Ok(Opening::Closed)) => Ok(()),
                            Ok(Err(error)) => Err(error.to_string()),
                            Err(_elapsed) => Err("nothing received within header_read_timeout_ms".into()),
                        };
                        if let Err(error) = served {
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
        if let Some((queue, worker)) = queue_worker {
            // The attempts it has out end within their timeout.
            if let Err(error) = worker.await {
                tracing::error!(%error, "the queue worker failed");
            }
            log_abandoned(queue.as_ref()).await;
        }
        if let Some(callbacks) = callbacks {
            // Its tries out end within callbacks.timeout_ms; the rest wait in the store.
            let _ = callbacks.await;
        }
        if let Ok(workers) = Arc::try_unwrap(workers) {
            workers.stop().await;
        }
        if let Some(admin) = admin {
            admin.abort();
        }
        Ok(())
    }
}

/// Messages still queued in this process at exit are lost: each is logged, so none
/// vanishes silently.
async fn log_abandoned(queue: &dyn QueueStore) {
    if queue.durable() {
        return;
    }
    for message in queue.remaining().await {
        let to = Recipient::parse(&message.to)
            .map(|r| r.masked())
            .unwrap_or_default();
        tracing::warn!(
            id = %message.id,
            bot = %message.bot,
            to = %to,
            "queued message not sent: the queue lives in this process, which is exiting"
        );
    }
}

/// What a connection speaks, from its first bytes.
enum Opening {
    Http1,
    /// The HTTP/2 preface, or a prefix of it.
    Http2,
    /// Closed before sending anything.
    Closed,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Waits for a connection's first bytes and reads them without consuming them, so the
/// connection that serves it gets the whole stream.
async fn opening(stream: &TcpStream) -> std::io::Result<Opening> {
    let mut first = [0u8; H2_PREFACE.len()];
    let n = stream.peek(&mut first).await?;
    Ok(if n == 0 {
        Opening::Closed
    } else if first[..n] == H2_PREFACE[..n] {
        Opening::Http2
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
    // A second Ctrl-C during the drain means "now": exit at once, as shells expect (130).
    tokio::spawn(async {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("second interrupt: exiting now, without waiting for in-flight requests");
            std::process::exit(130);
        }
    });
}

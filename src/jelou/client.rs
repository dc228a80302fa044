//! The HTTP client for Jelou: the only place the credentials are exposed, at send time.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header;

use crate::delivery::outcome::{classify_response, classify_transport, hint_headers};
use crate::delivery::{
    Delivered, DeliveryFailure, DeliveryFuture, DeliveryState, FailureKind, Outbound,
};

/// Jelou's answers are tiny (`{}`); anything larger than this is not read in full.
const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// Pooled reqwest clients, one per worker thread: a request uses its own worker's pool, so
/// the connection to Jelou it takes is driven on the thread that serves it.
#[derive(Clone, Debug)]
pub struct JelouClient {
    clients: Arc<[reqwest::Client]>,
}

impl JelouClient {
    /// The per-attempt timeout is the delivery stack's; only connection set-up is bounded here.
    pub fn new(connect_timeout: Duration, workers: usize) -> Result<Self, String> {
        let clients = (0..workers.max(1))
            .map(|_| Self::client(connect_timeout))
            .collect::<Result<_, _>>()?;
        Ok(JelouClient { clients })
    }

    fn client(connect_timeout: Duration) -> Result<reqwest::Client, String> {
        reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            // A redirected POST could be replayed or turned into a GET: never follow one.
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .user_agent(concat!("jelou-relay/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client for Jelou: {e}"))
    }

    /// The client of the worker running this thread.
    fn current(&self) -> reqwest::Client {
        self.clients[crate::workers::current() % self.clients.len()].clone()
    }

    async fn send(http: reqwest::Client, outbound: Outbound) -> Result<Delivered, DeliveryFailure> {
        let Some(credentials) = outbound.bot.credentials.as_ref() else {
            return Err(DeliveryFailure {
                kind: FailureKind::AuthFailed,
                delivery: DeliveryState::NotSent,
                attempts: 0,
                detail: "the relay has no Jelou credentials for this bot".into(),
                upstream: None,
                retry_after: None,
            });
        };
        let mut request = http.post(outbound.url.clone());
        if let Some(traceparent) = &outbound.traceparent {
            request = request.header("traceparent", traceparent.as_str());
        }
        let response = request
            .header(header::AUTHORIZATION, credentials.authorization().clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json")
            .header("x-request-id", outbound.request_id.as_str())
            .body(outbound.body.clone())
            .send()
            .await
            .map_err(|e| {
                tracing::debug!(error = %e, "upstream transport error");
                classify_transport(&e)
            })?;
        let status = response.status();
        let headers = hint_headers(response.headers());
        let body = read_capped(response).await;
        classify_response(status, &headers, body.as_deref()).map_err(|mut failure| {
            // Whatever Jelou says goes to logs and callers: never let it echo the secret.
            if let Some(upstream) = failure.upstream.as_mut() {
                upstream.description = upstream.description.take().map(|d| credentials.scrub(&d));
                upstream.code = upstream.code.take().map(|c| credentials.scrub(&c));
            }
            failure
        })
    }
}

/// Reads at most `MAX_RESPONSE_BYTES`; `None` when the body cannot be read in full.
async fn read_capped(mut response: reqwest::Response) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                    return None;
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Some(body),
            Err(error) => {
                tracing::debug!(%error, "reading Jelou's answer failed");
                return None;
            }
        }
    }
}

impl tower::Service<Outbound> for JelouClient {
    type Response = Delivered;
    type Error = DeliveryFailure;
    type Future = DeliveryFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, outbound: Outbound) -> Self::Future {
        // The attempt's span (one layer out) covers this call and records its status.
        Box::pin(Self::send(self.current(), outbound))
    }
}

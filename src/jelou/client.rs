//! The HTTP client for Jelou: the only place the credentials are exposed, at send time.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use super::classify::{Verdict, classify_response, classify_transport, hint_headers};
use super::credentials::CredentialBook;
use super::request::FlowRequest;

/// Jelou's answers are tiny (`{}`); anything larger than this is not read in full.
const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// One pooled reqwest client and the credentials it injects.
#[derive(Clone, Debug)]
pub struct JelouClient {
    http: reqwest::Client,
    connect_timeout: Duration,
    credentials: CredentialBook,
}

impl JelouClient {
    /// The per-attempt timeout is the delivery stack's; only connection set-up is bounded here.
    pub fn new(connect_timeout: Duration, credentials: CredentialBook) -> Result<Self, String> {
        Ok(JelouClient {
            http: Self::build(connect_timeout)?,
            connect_timeout,
            credentials,
        })
    }

    fn build(connect_timeout: Duration) -> Result<reqwest::Client, String> {
        reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            // A redirected POST could be replayed or turned into a GET: never follow one.
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| format!("cannot build the HTTP client for Jelou: {e}"))
    }

    /// This thread's client (one per worker, see `workers`): connections made by it are
    /// driven on this thread, so a request and its connection to Jelou wake each other
    /// without crossing threads.
    fn local(&self) -> reqwest::Client {
        thread_local! {
            static LOCAL: std::cell::OnceCell<reqwest::Client> = const { std::cell::OnceCell::new() };
        }
        LOCAL.with(|local| {
            local
                .get_or_init(|| {
                    Self::build(self.connect_timeout).unwrap_or_else(|_| self.http.clone())
                })
                .clone()
        })
    }

    async fn send(self, request: Arc<FlowRequest>) -> Verdict {
        let Some(credentials) = self.credentials.get(&request.bot.alias) else {
            return Verdict::NoCredentials;
        };
        // The request is built whole: a `RequestBuilder` would copy the headers into a
        // map of its own, one insert each.
        let mut outgoing = reqwest::Request::new(reqwest::Method::POST, request.url.clone());
        *outgoing.headers_mut() = request.headers(Some(credentials.authorization()));
        *outgoing.body_mut() = Some(request.body.clone().into());
        let sent = self.local().execute(outgoing).await;
        let response = match sent {
            Ok(response) => response,
            Err(error) => {
                tracing::debug!(%error, "upstream transport error");
                return classify_transport(&error);
            }
        };
        let status = response.status();
        let headers = hint_headers(response.headers());
        let body = read_capped(response).await;
        let mut verdict = classify_response(status, &headers, body.as_deref());
        // Whatever Jelou says goes to logs and callers: never let it echo the secret.
        match &mut verdict {
            Verdict::Refused { upstream, .. } => {
                upstream.description = upstream.description.take().map(|d| credentials.scrub(&d));
                upstream.code = upstream.code.take().map(|c| credentials.scrub(&c));
            }
            Verdict::Accepted { body, .. } => credentials.scrub_json(body),
            _ => {}
        }
        verdict
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

impl tower::Service<Arc<FlowRequest>> for JelouClient {
    type Response = Verdict;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Verdict, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Arc<FlowRequest>) -> Self::Future {
        // The attempt's span (one layer out) covers this call and records its status.
        let client = self.clone();
        Box::pin(async move { Ok(client.send(request).await) })
    }
}

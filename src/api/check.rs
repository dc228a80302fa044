//! Checks a request meets before the inner service sees it, as plain tower services.
//!
//! axum's `from_fn` middleware boxes each request's future and the inner service it hands
//! on (`Next`), and clones that service on every call; a check is a small synchronous
//! decision, so here it is a concrete service whose future is the inner one's, unboxed.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::extract::Request;
use axum::response::Response;
use tower::{Layer, Service};

/// A decision on a request: answer it at once (`Err`), or let it through with what the
/// check keeps until the answer is ready (a permit held for the request's life, headers
/// to add to the answer).
pub trait Check: Clone + Send + Sync + 'static {
    type Pass: Send + 'static;

    // The refusal is the answer the caller gets, returned once per refused request;
    // boxing it would add an allocation to every refusal for nothing.
    #[allow(clippy::result_large_err)]
    fn check(&self, request: &mut Request) -> Result<Self::Pass, Response>;

    /// Called with the inner service's answer; `pass` is dropped after it.
    fn finish(pass: Self::Pass, response: &mut Response) {
        let _ = (pass, response);
    }
}

/// The [`Layer`] applying a [`Check`].
#[derive(Clone)]
pub struct CheckLayer<C>(pub C);

impl<C: Clone, S> Layer<S> for CheckLayer<C> {
    type Service = Checked<C, S>;

    fn layer(&self, inner: S) -> Self::Service {
        Checked {
            check: self.0.clone(),
            inner,
        }
    }
}

/// `inner` behind a [`Check`].
#[derive(Clone)]
pub struct Checked<C, S> {
    check: C,
    inner: S,
}

impl<C, S> Service<Request> for Checked<C, S>
where
    C: Check,
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = CheckFuture<S::Future, C::Pass>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        // A refused request leaves the inner service's readiness unused: axum's routes
        // are always ready and reserve nothing.
        match self.check.check(&mut request) {
            Ok(pass) => CheckFuture::Passed {
                inner: self.inner.call(request),
                pass: Some((pass, C::finish)),
            },
            Err(response) => CheckFuture::Answered {
                response: Some(response),
            },
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner service's future and what the check keeps, or the check's own answer.
    #[project = CheckFutureProj]
    pub enum CheckFuture<F, P> {
        Passed {
            #[pin]
            inner: F,
            pass: Option<(P, fn(P, &mut Response))>,
        },
        Answered {
            response: Option<Response>,
        },
    }
}

impl<F, P> Future for CheckFuture<F, P>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            CheckFutureProj::Passed { inner, pass } => {
                let Ok(mut response) = ready!(inner.poll(cx));
                if let Some((pass, finish)) = pass.take() {
                    finish(pass, &mut response);
                }
                Poll::Ready(Ok(response))
            }
            // Polled once: a future is not polled again after it is ready.
            CheckFutureProj::Answered { response } => {
                Poll::Ready(Ok(response.take().unwrap_or_default()))
            }
        }
    }
}

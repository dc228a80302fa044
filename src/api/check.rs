//! Checks a request meets before the handler sees it: a small synchronous decision (the
//! [`Check`]) run as axum middleware by [`check`].

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

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

/// Runs `C` before the rest of the stack: `from_fn_with_state(check_value, check::<C>)`.
pub async fn check<C: Check>(State(check): State<C>, mut request: Request, next: Next) -> Response {
    match check.check(&mut request) {
        Err(refusal) => refusal,
        Ok(pass) => {
            let mut response = next.run(request).await;
            C::finish(pass, &mut response);
            response
        }
    }
}

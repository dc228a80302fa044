//! Request ids: a caller's `X-Request-Id` is kept when it is a sane token, replaced
//! otherwise (so nothing hostile reaches logs or Jelou), and returned on every answer.

use std::convert::Infallible;

use axum::extract::{FromRequestParts, Request};
use axum::middleware::Next;
use axum::response::Response;
use http::HeaderName;
use http::request::Parts;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// 1 to 128 characters of letters, digits and `-_.:`.
pub fn is_acceptable(value: &[u8]) -> bool {
    (1..=128).contains(&value.len())
        && value
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// Drops an unacceptable caller-supplied id so `SetRequestId` generates a fresh one.
pub async fn drop_unacceptable(mut request: Request, next: Next) -> Response {
    let headers = request.headers_mut();
    let all: Vec<_> = headers.get_all(&X_REQUEST_ID).iter().collect();
    if all.len() > 1 || all.iter().any(|v| !is_acceptable(v.as_bytes())) {
        headers.remove(&X_REQUEST_ID);
    }
    next.run(request).await
}

/// The request's id, as set by the inbound stack.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let id = parts
            .headers
            .get(&X_REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("unknown")
            .to_string();
        Ok(RequestId(id))
    }
}

#[cfg(test)]
mod tests {
    use super::is_acceptable;

    #[test]
    fn accepts_tokens_refuses_the_rest() {
        assert!(is_acceptable(b"0f8fad5b-d9cb-469f-a165-70867728950e"));
        assert!(is_acceptable(b"svc.orders:42_a"));
        for bad in [
            &b""[..],
            b"a b",
            b"a\r\nb",
            b"<script>",
            b"a/b",
            &[b'a'; 129],
        ] {
            assert!(!is_acceptable(bad), "{bad:?}");
        }
    }
}

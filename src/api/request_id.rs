//! Request ids: a caller's `X-Request-Id` is kept when it is a sane token, replaced
//! otherwise (so nothing hostile reaches logs or Jelou), and returned on every answer.

use std::convert::Infallible;

use axum::extract::FromRequestParts;
use http::request::Parts;
use http::{HeaderName, Request};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// 1 to 128 characters of letters, digits and `-_.:`.
pub fn is_acceptable(value: &[u8]) -> bool {
    (1..=128).contains(&value.len())
        && value
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// Drops an unacceptable caller-supplied id (or several) so `SetRequestId` generates a
/// fresh one.
pub fn drop_unacceptable<B>(mut request: Request<B>) -> Request<B> {
    let headers = request.headers_mut();
    let mut ids = headers.get_all(&X_REQUEST_ID).iter();
    let keep = match (ids.next(), ids.next()) {
        (None, _) => true,
        (Some(id), None) => is_acceptable(id.as_bytes()),
        (Some(_), Some(_)) => false,
    };
    if !keep {
        headers.remove(&X_REQUEST_ID);
    }
    request
}

/// The id the inbound stack set on `request` (`unknown` if none: never, past the stack).
pub fn of<B>(request: &Request<B>) -> &str {
    request
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("unknown")
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

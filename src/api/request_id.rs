//! Request ids: a caller's `X-Request-Id` is kept when it is a sane token, replaced
//! otherwise (so nothing hostile reaches logs or Jelou), and returned on every answer.

use std::convert::Infallible;

use axum::extract::FromRequestParts;
use http::request::Parts;
use http::{HeaderMap, HeaderName, Request};
use tower_http::request_id::MakeRequestId;

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

/// The id the inbound stack set in `headers` (`unknown` if none: never, past the stack).
pub fn in_headers(headers: &HeaderMap) -> &str {
    headers
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("unknown")
}

/// The id the inbound stack set on `request`.
pub fn of<B>(request: &Request<B>) -> &str {
    in_headers(request.headers())
}

/// Request ids: random UUID v4 strings from a fast thread-local generator (no system
/// call per request). They identify requests; they are not secrets.
#[derive(Clone, Copy, Debug, Default)]
pub struct MakeRequestUuid;

impl MakeRequestId for MakeRequestUuid {
    fn make_request_id<B>(
        &mut self,
        _request: &http::Request<B>,
    ) -> Option<tower_http::request_id::RequestId> {
        let id = uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes()).into_uuid();
        let mut buffer = uuid::Uuid::encode_buffer();
        let text = id.hyphenated().encode_lower(&mut buffer);
        http::HeaderValue::from_str(text)
            .ok()
            .map(tower_http::request_id::RequestId::new)
    }
}

/// The request's id, as set by the inbound stack.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(RequestId(in_headers(&parts.headers).to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_uuid_v4() {
        let request = http::Request::new(());
        let mut make = MakeRequestUuid;
        let a = make.make_request_id(&request).unwrap();
        let b = make.make_request_id(&request).unwrap();
        let a = uuid::Uuid::parse_str(a.header_value().to_str().unwrap()).unwrap();
        let b = uuid::Uuid::parse_str(b.header_value().to_str().unwrap()).unwrap();
        assert_eq!(a.get_version_num(), 4);
        assert_eq!(a.get_variant(), uuid::Variant::RFC4122);
        assert_ne!(a, b);
    }

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

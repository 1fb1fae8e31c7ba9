//! Request handlers, one module per part of the distribution API. Each
//! turns a parsed route into calls on berth-storage and shapes the answer;
//! none holds SQL or touches files directly.

pub mod admin;
pub mod blobs;
pub mod builds;
pub mod discovery;
pub mod gc;
pub mod manifests;
pub mod notifications;
pub mod quota;
pub mod token;
pub mod tokens;
pub mod triggers;
pub mod uploads;

use crate::body::Body;
use crate::error::{ApiError, ApiResult, Code};
use http::{header, HeaderValue, Response, StatusCode};

pub const DIGEST_HEADER: &str = "docker-content-digest";

pub fn location(value: &str) -> ApiResult<HeaderValue> {
    header_value(value)
}

/// A header value from parts berth validated (names, digests, numbers)
/// or stored; a value that still cannot be a header is the registry's
/// error, answered as one, never a panic.
pub fn header_value(value: impl std::fmt::Display) -> ApiResult<HeaderValue> {
    let text = value.to_string();
    HeaderValue::from_str(&text).map_err(|_| {
        tracing::error!(value = %text.escape_debug(), "value cannot be sent as a header");
        ApiError::internal("a stored value cannot be sent as a header; the registry logged it")
    })
}

pub fn method_not_allowed(method: &http::Method) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        Code::Unsupported,
        format!("method {method} is not supported on this path"),
    )
}

/// Parses `Content-Length`, if present.
pub fn content_length(headers: &http::HeaderMap) -> ApiResult<Option<u64>> {
    match headers.get(header::CONTENT_LENGTH) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.parse().ok())
            .map(Some)
            .ok_or_else(|| {
                ApiError::bad_request(Code::SizeInvalid, "Content-Length is not a number")
            }),
    }
}

pub fn set(resp: &mut Response<Body>, name: &'static str, value: HeaderValue) {
    resp.headers_mut().insert(name, value);
}

/// Most bytes of a refused body berth reads and discards so that the client,
/// still sending, receives the error instead of a broken connection.
const DRAIN_LIMIT: u64 = 16 * 1024 * 1024;

/// Reads and discards what is left of a refused request body (bounded by
/// `DRAIN_LIMIT`), so that the client can read the error response.
pub async fn drain<B: hyper::body::Body + Unpin>(mut body: B) {
    use http_body_util::BodyExt;
    let mut seen = 0u64;
    while let Some(Ok(frame)) = body.frame().await {
        if let Some(data) = frame.data_ref() {
            seen += bytes::Buf::remaining(data) as u64;
        }
        if seen > DRAIN_LIMIT {
            break;
        }
    }
}

//! Response bodies: empty, whole (JSON, manifests) or streamed (blobs).

use berth_storage::blobs::ByteStream;
use bytes::Bytes;
use futures_util::StreamExt;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full, StreamBody};
use hyper::body::Frame;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

pub fn empty() -> Body {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn stream(s: ByteStream) -> Body {
    BodyExt::boxed_unsync(StreamBody::new(
        s.map(|r| r.map(Frame::data).map_err(|e| Box::new(e) as BoxError)),
    ))
}

/// A JSON answer. Serializing berth's own types cannot fail (string keys
/// only); if it ever did, the answer is a plain 500, never a panic.
/// A streamed body from a stream of byte chunks that may fail.
pub fn stream_io<S>(s: S) -> Body
where
    S: futures_util::Stream<Item = std::io::Result<Bytes>> + Send + 'static,
{
    BodyExt::boxed_unsync(StreamBody::new(
        s.map(|r| r.map(Frame::data).map_err(|e| Box::new(e) as BoxError)),
    ))
}

pub fn json_response<T: serde::Serialize + ?Sized>(
    status: StatusCode,
    value: &T,
) -> Response<Body> {
    let (status, bytes) = match serde_json::to_vec(value) {
        Ok(bytes) => (status, bytes),
        Err(e) => {
            tracing::error!(error = %e, "a response did not serialize");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                br#"{"errors":[{"code":"UNKNOWN","message":"the response could not be encoded"}]}"#
                    .to_vec(),
            )
        }
    };
    let mut resp = Response::new(full(bytes));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// A bodiless response with Content-Length 0 (what clients expect on 201/202).
pub fn status_only(status: StatusCode) -> Response<Body> {
    let mut resp = Response::new(empty());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    resp
}

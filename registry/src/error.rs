//! The OCI error shape. Every error response berth sends, on every surface,
//! is `{"errors":[{"code","message","detail"}]}` with a spec error code.

use crate::body::{self, Body};
use berth_storage::StorageError;
use http::{header, HeaderValue, Response, StatusCode};

/// Error codes from the distribution spec (plus UNKNOWN and UNAVAILABLE,
/// which clients such as go-containerregistry also understand).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    SizeInvalid,
    Unauthorized,
    Denied,
    Unsupported,
    TooManyRequests,
    RangeInvalid,
    Unknown,
    Unavailable,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::BlobUnknown => "BLOB_UNKNOWN",
            Code::BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            Code::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            Code::DigestInvalid => "DIGEST_INVALID",
            Code::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            Code::ManifestInvalid => "MANIFEST_INVALID",
            Code::ManifestUnknown => "MANIFEST_UNKNOWN",
            Code::NameInvalid => "NAME_INVALID",
            Code::NameUnknown => "NAME_UNKNOWN",
            Code::SizeInvalid => "SIZE_INVALID",
            Code::Unauthorized => "UNAUTHORIZED",
            Code::Denied => "DENIED",
            Code::Unsupported => "UNSUPPORTED",
            Code::TooManyRequests => "TOOMANYREQUESTS",
            Code::RangeInvalid => "RANGE_INVALID",
            Code::Unknown => "UNKNOWN",
            Code::Unavailable => "UNAVAILABLE",
        }
    }
}

/// An error answer: status, code, a message for people, optional detail.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: Code,
    pub message: String,
    pub detail: Option<serde_json::Value>,
    /// Extra headers (e.g. `Range` and `Location` on a 416 during upload).
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
    /// The config key of the limit that refused the request (429s), for
    /// the `limit_refusals_total` metric.
    pub limit: Option<&'static str>,
    /// Also carry Toolforge's error keys (`/v1/tool/...` answers).
    pub toolforge: bool,
}

impl ApiError {
    pub fn new(status: StatusCode, code: Code, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            detail: None,
            headers: Vec::new(),
            limit: None,
            toolforge: false,
        }
    }

    /// The same error, its body also in Toolforge's shape: `error` (the
    /// list its CLI prints) and `messages`, beside the OCI `errors`.
    pub fn in_toolforge_shape(mut self) -> ApiError {
        self.toolforge = true;
        self
    }

    /// 429 TOOMANYREQUESTS: the caller reached `limit` (a config key);
    /// `message` says which limit, its value, and what to do.
    pub fn too_many(limit: &'static str, message: impl Into<String>) -> ApiError {
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            Code::TooManyRequests,
            message,
        )
        .with_header(header::RETRY_AFTER, HeaderValue::from_static("1"));
        e.limit = Some(limit);
        e
    }

    /// 503: the registry itself is short of something; retry.
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, Code::Unavailable, message)
            .with_header(header::RETRY_AFTER, HeaderValue::from_static("1"))
    }

    pub fn with_detail(mut self, detail: serde_json::Value) -> ApiError {
        self.detail = Some(detail);
        self
    }

    pub fn with_header(mut self, name: header::HeaderName, value: HeaderValue) -> ApiError {
        self.headers.push((name, value));
        self
    }

    /// Adds a header built from text; on an error answer a value that
    /// cannot be a header is left out rather than failing the answer.
    pub fn with_header_text(
        self,
        name: header::HeaderName,
        value: impl std::fmt::Display,
    ) -> ApiError {
        match HeaderValue::from_str(&value.to_string()) {
            Ok(v) => self.with_header(name, v),
            Err(_) => self,
        }
    }

    pub fn bad_request(code: Code, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(code: Code, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, Code::Unknown, message)
    }

    pub fn into_response(self) -> Response<Body> {
        let mut entry = serde_json::json!({ "code": self.code.as_str(), "message": self.message });
        if let Some(detail) = self.detail {
            entry["detail"] = detail;
        }
        let mut json = serde_json::json!({ "errors": [entry] });
        if self.toolforge {
            json["error"] = serde_json::json!([self.message]);
            json["messages"] =
                serde_json::json!({"info": [], "warning": [], "error": [self.message]});
        }
        let mut resp = body::json_response(self.status, &json);
        for (name, value) in self.headers {
            resp.headers_mut().append(name, value);
        }
        resp
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> ApiError {
        match e {
            StorageError::Closed => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                Code::Unavailable,
                "the registry is shutting down; retry shortly",
            ),
            StorageError::Body(msg) => ApiError::bad_request(
                Code::BlobUploadInvalid,
                format!("could not read the request body: {msg}"),
            ),
            StorageError::LimitReached { limit, message } => ApiError::too_many(limit, message),
            StorageError::Io(e) if is_exhaustion(&e) => {
                tracing::error!(error = %e, "out of a host resource");
                ApiError::unavailable(format!(
                    "the registry is short of resources ({e}); retry shortly"
                ))
            }
            // The backend's own message may name the endpoint, bucket
            // and object (an S3 error body may echo the access key id),
            // the database host, a file or a table: the log has it, under
            // an incident id the client is given to quote; the client
            // gets only which store failed.
            StorageError::ObjectStore(e) => logged_internal("the blob store", &e),
            other => logged_internal("the metadata store", &other),
        }
    }
}

/// A 500 whose cause stays in the log: the answer names only `store` and
/// an incident id that finds the log line.
fn logged_internal(store: &str, error: &dyn std::fmt::Display) -> ApiError {
    let incident = uuid::Uuid::new_v4().simple().to_string();
    tracing::error!(%error, %incident, store, "storage failure");
    ApiError::internal(format!(
        "internal storage error: {store} failed (incident {incident}; the registry's log has why)"
    ))
}

/// Running out of a host resource is the registry's condition, not a bug
/// nor the caller's fault: it is answered 503 with Retry-After, never 500.
fn is_exhaustion(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), OutOfMemory | StorageFull | QuotaExceeded)
        || matches!(
            e.raw_os_error(),
            Some(libc::EMFILE | libc::ENFILE | libc::ENOSPC | libc::ENOMEM)
        )
}

impl From<berth_storage::NameError> for ApiError {
    fn from(e: berth_storage::NameError) -> ApiError {
        ApiError::bad_request(Code::NameInvalid, e.to_string())
    }
}

impl From<berth_storage::DigestError> for ApiError {
    fn from(e: berth_storage::DigestError) -> ApiError {
        ApiError::bad_request(Code::DigestInvalid, e.to_string())
    }
}

impl From<berth_storage::meta::QuotaExceeded> for ApiError {
    fn from(q: berth_storage::meta::QuotaExceeded) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, Code::Denied, quota_message(&q)).with_detail(
            serde_json::json!({
                "namespace": q.namespace,
                "used_bytes": q.used,
                "limit_bytes": q.limit,
                "needed_bytes": q.needed,
                "staged_bytes": q.staged,
            }),
        )
    }
}

/// `quota exceeded for tool-foo: 980.0 MiB used of 1.0 GiB, this push needs 120.0 MiB more`
/// With unfinished uploads: `quota exceeded for tool-foo: 980.0 MiB used
/// and 10.0 MiB in unfinished uploads of 1.0 GiB, ...`.
pub fn quota_message(q: &berth_storage::meta::QuotaExceeded) -> String {
    let staged = if q.staged > 0 {
        format!(
            " and {} in unfinished uploads (cancel them or let them expire)",
            human_bytes(q.staged)
        )
    } else {
        String::new()
    };
    format!(
        "quota exceeded for {}: {} used{staged} of {}, this push needs {} more",
        q.namespace,
        human_bytes(q.used),
        human_bytes(q.limit),
        human_bytes(q.needed)
    )
}

/// Sizes for people: `980.0 MiB`.
pub fn human_bytes(n: u64) -> String {
    bytesize::ByteSize::b(n).display().iec().to_string()
}

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    /// A storage failure's own text (here a database host) stays in the
    /// log; the client gets which store failed and an incident id.
    #[test]
    fn storage_failures_do_not_tell_clients_their_cause() {
        let cause = "could not connect to db-7.internal:5432 as berth_rw";
        let e = ApiError::from(StorageError::Internal(cause.into()));
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!e.message.contains("db-7.internal"), "{}", e.message);
        assert!(
            e.message.contains("the metadata store failed"),
            "{}",
            e.message
        );
        assert!(e.message.contains("incident "), "{}", e.message);
    }
}

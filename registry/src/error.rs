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
}

impl ApiError {
    pub fn new(status: StatusCode, code: Code, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            detail: None,
            headers: Vec::new(),
        }
    }

    pub fn with_detail(mut self, detail: serde_json::Value) -> ApiError {
        self.detail = Some(detail);
        self
    }

    pub fn with_header(mut self, name: header::HeaderName, value: HeaderValue) -> ApiError {
        self.headers.push((name, value));
        self
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
        let json = serde_json::json!({ "errors": [entry] });
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
            other => {
                tracing::error!(error = %other, "storage failure");
                ApiError::internal(format!("internal storage error: {other}"))
            }
        }
    }
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
            }),
        )
    }
}

/// `quota exceeded for tool-foo: 980.0 MiB used of 1.0 GiB, this push needs 120.0 MiB more`
pub fn quota_message(q: &berth_storage::meta::QuotaExceeded) -> String {
    format!(
        "quota exceeded for {}: {} used of {}, this push needs {} more",
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

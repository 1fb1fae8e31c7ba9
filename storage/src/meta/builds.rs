//! Build records: the build queue's state, as the metadata store keeps it.

pub const PENDING: &str = "BUILD_PENDING";

pub const RUNNING: &str = "BUILD_RUNNING";

pub const SUCCESS: &str = "BUILD_SUCCESS";

pub const FAILURE: &str = "BUILD_FAILURE";

pub const CANCELLED: &str = "BUILD_CANCELLED";

pub const TIMEOUT: &str = "BUILD_TIMEOUT";

#[derive(Debug, Clone, serde::Serialize)]
pub struct BuildRecord {
    pub id: String,
    pub tool: String,
    pub image_name: String,
    pub status: String,
    pub message: String,
    pub params: serde_json::Value,
    pub resolved_ref: String,
    pub destination_image: String,
    pub log_path: String,
    pub created_ms: i64,
    pub start_ms: Option<i64>,
    pub end_ms: Option<i64>,
}

/// Whether a status is final.
pub fn is_finished(status: &str) -> bool {
    !matches!(status, PENDING | RUNNING)
}

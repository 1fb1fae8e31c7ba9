//! Upload sessions kept in the database (`upload_sessions`, migration 12),
//! for replicas that share one: what a row holds and what the writes on
//! it answer. `crate::uploads::shared` is their only user.

/// One upload session's row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadRow {
    /// The session's uuid, simple form (32 hex digits).
    pub id: String,
    pub repo: String,
    pub namespace: String,
    /// Bytes received and saved (in `parts` and `pending`).
    pub received: u64,
    /// Quota the claiming request has reserved beyond `received`.
    pub reserved: u64,
    /// The running hash after `received` bytes (`Hasher::save`).
    pub hash_state: Vec<u8>,
    /// The S3 multipart upload, created with the first part.
    pub multipart_id: Option<String>,
    /// ETags of the uploaded parts, in order (part n is `parts[n]`).
    pub parts: Vec<String>,
    /// Received bytes not yet in a part (fewer than a part's minimum).
    pub pending: Vec<u8>,
    /// The request writing the session, if one is.
    pub claim: Option<String>,
    pub started_ms: i64,
    pub updated_ms: i64,
}

/// What a request saves of its progress, under its claim.
#[derive(Debug, Clone)]
pub struct UploadProgress {
    pub received: u64,
    pub reserved: u64,
    pub hash_state: Vec<u8>,
    pub multipart_id: Option<String>,
    pub parts: Vec<String>,
    pub pending: Vec<u8>,
    /// Whether the request is done with the session (the claim goes).
    pub release: bool,
}

/// Why a session could not be created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartRefused {
    /// The namespace has this many sessions, its cap.
    Namespace(usize),
    /// The registry has this many sessions, its cap.
    Total(usize),
}

/// The answer to a request asking to write a session.
#[derive(Debug, Clone)]
pub enum Claim {
    /// The request may write; the row as it was claimed.
    Claimed(UploadRow),
    /// No such session (finished, cancelled or expired).
    Gone,
    /// Another request is writing it, or it no longer holds the bytes the
    /// request expected (a chunk raced another); the row as it is.
    Busy(UploadRow),
    /// The namespace's staged bytes would pass `room`.
    Full { staged: u64, room: u64 },
}

/// The answer to a claimant asking to reserve more of the quota.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reserve {
    Reserved,
    /// The claim is gone (the session was cancelled or expired).
    Lost,
    Full {
        staged: u64,
        room: u64,
    },
}

pub(crate) fn parts_to_json(parts: &[String]) -> String {
    serde_json::to_string(parts).unwrap_or_else(|_| "[]".into())
}

pub(crate) fn parts_from_json(s: &str) -> Result<Vec<String>, crate::StorageError> {
    serde_json::from_str(s)
        .map_err(|e| crate::StorageError::Internal(format!("upload session's part list: {e}")))
}

//! Where every request is authorized. Today berth runs open (anyone may pull
//! and push); the token flow, namespace accounts and the policy land here,
//! and no handler decides access on its own.

use crate::error::ApiResult;
use berth_storage::RepoName;

/// What a request wants to do to a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pull,
    Push,
    Delete,
}

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Anonymous,
}

/// Decides whether the request described by `headers` may do `action` on
/// `repo` (`None` for registry-wide calls such as the catalog).
pub fn authorize(
    _headers: &http::HeaderMap,
    _repo: Option<&RepoName>,
    _action: Action,
) -> ApiResult<Principal> {
    Ok(Principal::Anonymous)
}

//! Tags list, catalog and the referrers API, with `n`/`last` pagination
//! and `Link: <...>; rel="next"` as the distribution spec describes.

use super::{header_value, set};
use crate::body::{self, Body};
use crate::error::{ApiError, ApiResult, Code};
use crate::routes::{query_get, query_pairs};
use crate::State;
use berth_storage::{Digest, RepoName};
use http::{Response, StatusCode};
use oci_spec::image::{DescriptorBuilder, ImageIndexBuilder, MediaType};
use std::collections::HashMap;
use std::str::FromStr;

/// Page size when the client gives no `n`, and the most berth returns.
const DEFAULT_PAGE: u32 = 1000;
const MAX_PAGE: u32 = 10_000;

struct Page {
    n: u32,
    last: Option<String>,
}

fn page(query: &[(String, String)]) -> ApiResult<Page> {
    let n = match query_get(query, "n") {
        None => DEFAULT_PAGE,
        Some(v) => v
            .parse::<u32>()
            .map_err(|_| {
                ApiError::bad_request(
                    Code::Unsupported,
                    format!("n={v:?} is not a non-negative integer"),
                )
            })?
            .min(MAX_PAGE),
    };
    Ok(Page {
        n,
        last: query_get(query, "last").map(str::to_owned),
    })
}

/// Fetches one more than asked to learn whether a next page exists.
fn paginate(mut items: Vec<String>, n: u32, base: &str) -> (Vec<String>, Option<String>) {
    if items.len() as u64 > n as u64 {
        items.truncate(n as usize);
        let last = items.last().cloned().unwrap_or_default();
        let next: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("n", &n.to_string())
            .append_pair("last", &last)
            .finish();
        return (items, Some(format!("<{base}?{next}>; rel=\"next\"")));
    }
    (items, None)
}

pub async fn tags(
    state: &State,
    repo: &RepoName,
    query: Option<&str>,
) -> ApiResult<Response<Body>> {
    let p = page(&query_pairs(query))?;
    let tags = if p.n == 0 {
        // n=0 asks for an empty page; the repository must still exist.
        state
            .storage
            .meta
            .repository_exists(repo)
            .await?
            .then(Vec::new)
    } else {
        state.storage.meta.list_tags(repo, p.last, p.n + 1).await?
    };
    let tags = tags.ok_or_else(|| {
        ApiError::not_found(
            Code::NameUnknown,
            format!("repository {repo} is not known to this registry"),
        )
    })?;
    let (tags, link) = paginate(tags, p.n, &format!("/v2/{repo}/tags/list"));
    let mut resp = body::json_response(
        StatusCode::OK,
        &serde_json::json!({ "name": repo.as_str(), "tags": tags }),
    );
    if let Some(link) = link {
        set(&mut resp, "link", header_value(link)?);
    }
    Ok(resp)
}

/// Lists the repositories whose namespace `visible` accepts (the caller
/// may pull from), paging over the filtered list.
pub async fn catalog(
    state: &State,
    query: Option<&str>,
    visible: impl Fn(&str) -> bool,
) -> ApiResult<Response<Body>> {
    let p = page(&query_pairs(query))?;
    let mut repos = Vec::new();
    let mut cursor = p.last.clone();
    // Fetch in batches until the page (plus one, to know if there is more)
    // is full or the table is exhausted.
    while p.n > 0 && repos.len() <= p.n as usize {
        let batch = state.storage.meta.catalog(cursor.clone(), p.n + 1).await?;
        let exhausted = batch.len() <= p.n as usize;
        cursor = batch.last().cloned();
        repos.extend(
            batch
                .into_iter()
                .filter(|name| visible(name.split('/').next().unwrap_or(name))),
        );
        if exhausted {
            break;
        }
    }
    let (repos, link) = paginate(repos, p.n, "/v2/_catalog");
    let mut resp = body::json_response(
        StatusCode::OK,
        &serde_json::json!({ "repositories": repos }),
    );
    if let Some(link) = link {
        set(&mut resp, "link", header_value(link)?);
    }
    Ok(resp)
}

/// An image index listing the manifests whose `subject` is `subject`.
/// An unknown subject (or repository) gives an empty index, never a 404.
pub async fn referrers(
    state: &State,
    repo: &RepoName,
    subject: &Digest,
    query: Option<&str>,
) -> ApiResult<Response<Body>> {
    let query = query_pairs(query);
    let filter = query_get(&query, "artifactType").map(str::to_owned);
    let rows = state
        .storage
        .meta
        .referrers(repo, subject, filter.clone())
        .await?;
    let mut descriptors = Vec::with_capacity(rows.len());
    for r in rows {
        let mut d = DescriptorBuilder::default()
            .media_type(MediaType::from(r.media_type.as_str()))
            .digest(
                oci_spec::image::Digest::from_str(&r.digest)
                    .map_err(|e| ApiError::internal(e.to_string()))?,
            )
            .size(r.size);
        if let Some(t) = &r.artifact_type {
            d = d.artifact_type(MediaType::from(t.as_str()));
        }
        if let Some(a) = &r.annotations {
            let map: HashMap<String, String> =
                serde_json::from_str(a).map_err(|e| ApiError::internal(e.to_string()))?;
            d = d.annotations(map);
        }
        descriptors.push(d.build().map_err(|e| ApiError::internal(e.to_string()))?);
    }
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(descriptors)
        .build()
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let json = serde_json::to_value(&index).map_err(|e| ApiError::internal(e.to_string()))?;
    let mut resp = body::json_response(StatusCode::OK, &json);
    set(
        &mut resp,
        "content-type",
        header_value("application/vnd.oci.image.index.v1+json")?,
    );
    if filter.is_some() {
        set(
            &mut resp,
            "oci-filters-applied",
            header_value("artifactType")?,
        );
    }
    Ok(resp)
}

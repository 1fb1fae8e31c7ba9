//! Target `route`: path → `Route` (berth_registry::routes::parse) and
//! query decoding. A route berth accepts must name validated parts that
//! print back to exactly the path it came from (paths are never decoded).

use berth_registry::routes::{self, parse_reference, query_get, query_pairs, Reference, Route};
use berth_storage::{Digest, RepoName};

pub fn route(data: &[u8]) {
    let text = crate::text(data);
    let (path, query) = match text.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (text.as_ref(), None),
    };
    match routes::parse(path) {
        Ok(Some(route)) => check(path, &route),
        Ok(None) => {}
        Err(e) => {
            assert!(e.status.is_client_error(), "{path:?}: {}", e.status);
            assert!(e.message.len() < 4096, "error message is bounded");
        }
    }
    let pairs = query_pairs(query);
    for (k, _) in &pairs {
        assert!(query_get(&pairs, k).is_some());
    }
    // What berth decodes survives its own encoding (Link headers are built
    // this way from decoded values).
    let encoded = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs.iter())
        .finish();
    assert_eq!(query_pairs(Some(&encoded)), pairs, "{query:?}");
    if let Ok(r) = parse_reference(path.rsplit('/').next().unwrap_or("")) {
        match r {
            Reference::Tag(t) => assert!(berth_storage::names::validate_tag(&t).is_ok()),
            Reference::Digest(d) => assert!(d.to_string().parse::<Digest>().is_ok()),
        }
    }
}

fn check(path: &str, route: &Route) {
    let name_ok = |r: &RepoName| assert_eq!(RepoName::parse(r.as_str()).as_ref(), Ok(r));
    let printed = match route {
        Route::Base => {
            assert!(path == "/v2" || path == "/v2/", "{path:?}");
            return;
        }
        Route::Catalog => "/v2/_catalog".to_owned(),
        Route::Tags(r) => {
            name_ok(r);
            format!("/v2/{r}/tags/list")
        }
        Route::Manifest(r, reference) => {
            name_ok(r);
            format!("/v2/{r}/manifests/{}", reference.as_string())
        }
        Route::Blob(r, d) => {
            name_ok(r);
            format!("/v2/{r}/blobs/{d}")
        }
        Route::UploadStart(r) => {
            name_ok(r);
            assert!(
                path == format!("/v2/{r}/blobs/uploads/")
                    || path == format!("/v2/{r}/blobs/uploads"),
                "{path:?}"
            );
            return;
        }
        Route::Upload(r, id) => {
            name_ok(r);
            assert!(!id.is_empty() && !id.contains('/'), "{id:?}");
            format!("/v2/{r}/blobs/uploads/{id}")
        }
        Route::Referrers(r, d) => {
            name_ok(r);
            format!("/v2/{r}/referrers/{d}")
        }
        Route::ToolQuota(t) => format!("/v1/tool/{t}/quotas"),
        Route::Builds(t) => format!("/v1/tool/{t}/builds"),
        Route::Build(t, id) => format!("/v1/tool/{t}/builds/{id}"),
        Route::BuildLogs(t, id) => format!("/v1/tool/{t}/builds/{id}/logs"),
        Route::BuildCancel(t, id) => format!("/v1/tool/{t}/builds/{id}/cancel"),
        Route::Clean(t) => format!("/v1/tool/{t}/clean"),
        Route::Healthz => "/healthz".to_owned(),
        Route::Token => "/token".to_owned(),
        Route::Metrics => "/metrics".to_owned(),
        Route::NamespaceCredentials(_)
        | Route::Quotas
        | Route::QuotaReconcile
        | Route::Quota(_)
        | Route::GcRuns
        | Route::GcRun(_)
        | Route::Pins
        | Route::Pin(_)
        | Route::Retention
        | Route::RetentionNamespace(_)
        | Route::AdminUnknown => {
            // Validated by their handlers, after the admin check.
            assert!(path.starts_with("/admin/"), "{path:?}");
            return;
        }
    };
    if let Route::ToolQuota(t)
    | Route::Builds(t)
    | Route::Build(t, _)
    | Route::BuildLogs(t, _)
    | Route::BuildCancel(t, _)
    | Route::Clean(t) = route
    {
        assert!(routes::validate_tool(t).is_ok(), "{t:?}");
    }
    assert_eq!(
        printed, path,
        "route {route:?} does not print back to its path"
    );
}

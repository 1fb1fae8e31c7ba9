//! Target `route`: (method, path) → `Route` (berth_registry::routes::parse)
//! and query decoding. A route berth accepts must name validated parts that
//! print back to exactly the path it came from (paths are never decoded),
//! and the operation must be one the method asks for.

use berth_registry::routes::{
    self, parse_reference, query_get, query_pairs, AdminOp, HookOp, NamespaceOp, OciOp, OpsOp,
    Reference, Route, ToolOp, UiOp,
};
use berth_storage::{Digest, RepoName};
use http::Method;

/// Input starting with `/` is a GET of that path (the corpus's paths);
/// otherwise the first byte picks the method (standard ones and an
/// invented one) and the rest is the path.
fn method_and_path(data: &[u8]) -> (Method, &[u8]) {
    match data.first() {
        None | Some(b'/') => (Method::GET, data),
        Some(b) => (method(*b), &data[1..]),
    }
}

fn method(b: u8) -> Method {
    match b % 8 {
        0 => Method::GET,
        1 => Method::HEAD,
        2 => Method::POST,
        3 => Method::PUT,
        4 => Method::PATCH,
        5 => Method::DELETE,
        6 => Method::OPTIONS,
        _ => Method::from_bytes(b"FUZZ").unwrap_or(Method::TRACE),
    }
}

pub fn route(data: &[u8]) {
    let (method, rest) = method_and_path(data);
    let text = crate::text(rest);
    let (path, query) = match text.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (text.as_ref(), None),
    };
    match routes::parse(&method, path) {
        Ok(Some(route)) => check(&method, path, &route),
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

fn check(method: &Method, path: &str, route: &Route) {
    let name_ok = |r: &RepoName| assert_eq!(RepoName::parse(r.as_str()).as_ref(), Ok(r));
    let is = |m: &Method| method == m;
    let printed = match route {
        Route::Oci(op) => match op {
            OciOp::Base => {
                assert!(path == "/v2" || path == "/v2/", "{path:?}");
                return;
            }
            OciOp::Catalog => "/v2/_catalog".to_owned(),
            OciOp::Tags(r) => {
                name_ok(r);
                format!("/v2/{r}/tags/list")
            }
            OciOp::GetManifest {
                repo,
                reference,
                head,
            } => {
                assert!(is(&Method::GET) || is(&Method::HEAD));
                assert_eq!(*head, is(&Method::HEAD));
                name_ok(repo);
                format!("/v2/{repo}/manifests/{}", reference.as_string())
            }
            OciOp::PutManifest { repo, reference } | OciOp::DeleteManifest { repo, reference } => {
                name_ok(repo);
                format!("/v2/{repo}/manifests/{}", reference.as_string())
            }
            OciOp::ImpossibleManifest { repo, reference } => {
                assert!(!is(&Method::PUT));
                assert!(parse_reference(reference).is_err(), "{reference:?}");
                name_ok(repo);
                format!("/v2/{repo}/manifests/{reference}")
            }
            OciOp::GetBlob { repo, digest, .. } | OciOp::DeleteBlob { repo, digest } => {
                name_ok(repo);
                format!("/v2/{repo}/blobs/{digest}")
            }
            OciOp::StartUpload(r) => {
                assert!(is(&Method::POST));
                name_ok(r);
                assert!(
                    path == format!("/v2/{r}/blobs/uploads/")
                        || path == format!("/v2/{r}/blobs/uploads"),
                    "{path:?}"
                );
                return;
            }
            OciOp::PatchUpload(r, id)
            | OciOp::FinishUpload(r, id)
            | OciOp::UploadStatus(r, id)
            | OciOp::CancelUpload(r, id) => {
                name_ok(r);
                assert!(!id.is_empty() && !id.contains('/'), "{id:?}");
                format!("/v2/{r}/blobs/uploads/{id}")
            }
            OciOp::Referrers(r, d) => {
                name_ok(r);
                format!("/v2/{r}/referrers/{d}")
            }
            OciOp::MethodNotAllowed(m) => {
                assert_eq!(m, method);
                assert!(path.starts_with("/v2/"), "{path:?}");
                return;
            }
        },
        Route::Tool(t, op) => {
            assert!(routes::validate_tool(t).is_ok(), "{t:?}");
            match op {
                ToolOp::Quota => format!("/v1/tool/{t}/quotas"),
                ToolOp::ListBuilds | ToolOp::StartBuild => format!("/v1/tool/{t}/builds"),
                ToolOp::ShowBuild(id) | ToolOp::DeleteBuild(id) => {
                    format!("/v1/tool/{t}/builds/{id}")
                }
                ToolOp::BuildLogs(id) => format!("/v1/tool/{t}/builds/{id}/logs"),
                ToolOp::CancelBuild(id) => format!("/v1/tool/{t}/builds/{id}/cancel"),
                ToolOp::Clean => format!("/v1/tool/{t}/clean"),
                ToolOp::ShowTrigger | ToolOp::PutTrigger | ToolOp::DeleteTrigger => {
                    format!("/v1/tool/{t}/trigger")
                }
                ToolOp::RotateTrigger => format!("/v1/tool/{t}/trigger/rotate"),
                ToolOp::MethodNotAllowed(m) => {
                    assert_eq!(m, method);
                    return;
                }
            }
        }
        Route::Namespace(ns, op) => {
            // The name is validated by the handlers, after the owner check.
            assert!(!ns.contains('/'), "{ns:?}");
            match op {
                NamespaceOp::ListTokens | NamespaceOp::CreateToken => {
                    format!("/v1/namespaces/{ns}/tokens")
                }
                NamespaceOp::RevokeToken(id) => format!("/v1/namespaces/{ns}/tokens/{id}"),
                NamespaceOp::MethodNotAllowed(m) => {
                    assert_eq!(m, method);
                    return;
                }
            }
        }
        Route::Ops(op) => match op {
            OpsOp::Healthz => "/healthz".to_owned(),
            OpsOp::Token => "/token".to_owned(),
            OpsOp::Metrics => "/metrics".to_owned(),
            OpsOp::MethodNotAllowed(_) => "/token".to_owned(),
        },
        Route::Ui(op) => {
            // Names are validated by the console's surface, after it
            // knows who is asking.
            assert!(
                path == "/" || path == "/ui" || path.starts_with("/ui/"),
                "{path:?}"
            );
            if let UiOp::MethodNotAllowed(m) = op {
                assert_eq!(m, method);
            }
            return;
        }
        Route::Hook(op) => match op {
            HookOp::Deliver(id) => {
                assert!(is(&Method::POST));
                assert!(!id.is_empty() && !id.contains('/'), "{id:?}");
                format!("/v1/hooks/{id}")
            }
            HookOp::MethodNotAllowed(m) => {
                assert_eq!(m, method);
                assert!(path.starts_with("/v1/hooks/"), "{path:?}");
                return;
            }
        },
        Route::Admin(op) => {
            // Validated by their handlers, after the admin check.
            assert!(path.starts_with("/admin/"), "{path:?}");
            if let AdminOp::MethodNotAllowed(m) = op {
                assert_eq!(m, method);
            }
            return;
        }
    };
    assert_eq!(
        printed, path,
        "route {route:?} does not print back to its path"
    );
}

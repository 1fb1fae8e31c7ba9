//! API tokens end to end: create, list and revoke through the admin API
//! and the CLI; tokens as bearer tokens on `/v1/...` and `/admin/v1/...`
//! and as the password of Basic, `/token`, `docker login` and skopeo;
//! confinement to their namespace and scope; immediate revocation (also
//! of JWTs issued for them and of the 60 s login cache); expiry; a
//! namespace account managing its own tokens; the per-namespace cap; and
//! malformed or unknown tokens answered 401 in the OCI error shape.

mod common;

use base64::Engine as _;
use berth_conformance::client::Client;
use berth_conformance::fixtures::Ctx;
use common::*;
use std::process::Command;
use std::time::Duration;

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

fn code(body: &[u8]) -> String {
    json(body)["errors"][0]["code"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn admin_auth() -> String {
    basic("admin", ADMIN_PASSWORD)
}

/// Any request with an optional JSON body: (status, headers, body).
fn send(
    method: &str,
    url: &str,
    authorization: Option<&str>,
    body: Option<serde_json::Value>,
) -> (u16, ureq::http::HeaderMap, Vec<u8>) {
    let mut b = ureq::http::Request::builder().method(method).uri(url);
    if let Some(a) = authorization {
        b = b.header("authorization", a);
    }
    let body = body
        .map(|v| serde_json::to_vec(&v).unwrap())
        .unwrap_or_default();
    let req = b
        .header("content-type", "application/json")
        .body(body)
        .unwrap();
    let mut r = http_agent()
        .run(req)
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.body_mut().read_to_vec().unwrap();
    (status, headers, body)
}

/// Creates a token through the admin API; returns the whole answer.
fn create(berth: &Berth, body: serde_json::Value) -> serde_json::Value {
    let (status, _, resp) = send(
        "POST",
        &format!("{}/admin/v1/tokens", berth.url()),
        Some(&admin_auth()),
        Some(body),
    );
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&resp));
    json(&resp)
}

fn token_of(created: &serde_json::Value) -> String {
    created["token"].as_str().unwrap().to_owned()
}

/// `berth token ...` against this berth, as the admin.
fn cli(berth: &Berth, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_berth"));
    c.arg("token")
        .args(args)
        .args(["--url", &berth.url()])
        .env("BERTH_ADMIN_PASSWORD", ADMIN_PASSWORD);
    c
}

/// Asks `/token` for `scopes` with Basic `user`:`password`.
fn exchange(berth: &Berth, user: &str, password: &str, scopes: &[&str]) -> (u16, Vec<u8>) {
    let mut url = format!("{}/token?service=berth", berth.url());
    for s in scopes {
        url.push_str(&format!("&scope={s}"));
    }
    let (status, _, body) = send("GET", &url, Some(&basic(user, password)), None);
    (status, body)
}

/// A JWT's claims, unverified (the test only reads what was issued).
fn claims(jwt: &str) -> serde_json::Value {
    json(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(jwt.split('.').nth(1).unwrap())
            .unwrap(),
    )
}

fn assert_invalid(status: u16, headers: &ureq::http::HeaderMap, body: &[u8], what: &str) {
    assert_eq!(
        (status, code(body).as_str()),
        (401, "UNAUTHORIZED"),
        "{what}: {}",
        String::from_utf8_lossy(body)
    );
    assert!(
        json(body)["errors"][0]["message"].is_string(),
        "{what}: the OCI error shape"
    );
    assert!(
        headers.contains_key("www-authenticate"),
        "{what}: a 401 says how to authenticate"
    );
}

#[test]
fn admin_api_and_cli_create_list_and_revoke() {
    let dir = tempfile::tempdir().unwrap();
    let berth = Berth::start(&dir.path().join("data"));
    let quotas = format!("{}/v1/tool/foo/quotas", berth.url());

    // The CLI prints the token alone on stdout, once; what it is on stderr.
    let out = cli(
        &berth,
        &["create", "tool-foo", "--name", "ci", "--expires", "90d"],
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    let ci = stdout.trim().to_owned();
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(ci.starts_with("berth_") && ci.len() == 66, "{ci}");
    let ci_id = ci[6..22].to_owned();
    assert!(stderr.contains("shown only this once"), "{stderr}");
    assert!(
        stderr.contains(&ci_id) && stderr.contains("push"),
        "{stderr}"
    );
    let (status, _, _) = send("GET", &quotas, Some(&bearer(&ci)), None);
    assert_eq!(status, 200, "the new token works at once");

    // The admin API: a pull token of the same namespace, an admin token.
    let pull = create(
        &berth,
        serde_json::json!({"namespace": "tool-foo", "name": "reader", "expires_in": "1h", "scope": "pull"}),
    );
    assert_eq!(pull["namespace"], "tool-foo");
    assert_eq!(pull["scope"], "pull");
    assert_eq!(pull["expired"], false);
    assert_eq!(pull["created_by"], "admin");
    let expires = pull["expires_ms"].as_i64().unwrap() - pull["created_ms"].as_i64().unwrap();
    assert_eq!(expires, 3_600_000);
    let ops = create(&berth, serde_json::json!({"admin": true, "name": "ops"}));
    assert_eq!(ops["namespace"], serde_json::Value::Null);
    assert_eq!(ops["scope"], "admin");
    let lifetime = ops["expires_ms"].as_i64().unwrap() - ops["created_ms"].as_i64().unwrap();
    assert_eq!(lifetime, 90 * 86_400_000, "the default lifetime is 90 days");

    // Listings never show a secret.
    let secrets = [ci.clone(), token_of(&pull), token_of(&ops)];
    let list = |query: &str| {
        let (status, _, body) = send(
            "GET",
            &format!("{}/admin/v1/tokens{query}", berth.url()),
            Some(&admin_auth()),
            None,
        );
        assert_eq!(status, 200);
        let text = String::from_utf8(body.clone()).unwrap();
        for s in &secrets {
            assert!(!text.contains(&s[23..]), "a listing shows a secret: {text}");
        }
        assert!(!text.contains("\"token\""), "{text}");
        json(&body)
    };
    let names = |v: &serde_json::Value| {
        let mut n: Vec<String> = v["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_owned())
            .collect();
        n.sort();
        n
    };
    assert_eq!(names(&list("")), ["ci", "ops", "reader"]);
    assert_eq!(names(&list("?namespace=tool-foo")), ["ci", "reader"]);
    assert_eq!(names(&list("?admin=true")), ["ops"]);
    assert_eq!(names(&list("?namespace=tool-other")), Vec::<String>::new());
    let page = list("?n=2");
    assert_eq!(page["tokens"].as_array().unwrap().len(), 2);
    let next = page["next"].as_str().unwrap();
    assert_eq!(
        list(&format!("?n=2&last={next}"))["tokens"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let ci_listed = list("?namespace=tool-foo")["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "ci")
        .cloned()
        .unwrap();
    assert!(
        ci_listed["last_used_ms"].as_i64().is_some(),
        "use is recorded: {ci_listed}"
    );
    for args in [
        &["list"][..],
        &["list", "tool-foo"],
        &["list", "--json"],
        &["list", "--admin"],
    ] {
        let out = run(&mut cli(&berth, args));
        for s in &secrets {
            assert!(
                !out.contains(&s[23..]),
                "berth token {args:?} shows a secret"
            );
        }
        if args.len() == 1 {
            assert!(
                out.contains(&ci_id) && out.contains("reader") && out.contains("(admin)"),
                "{out}"
            );
        }
    }

    // Refusals: a live name again, bad names, durations, scopes, owners.
    let refuse = |body: serde_json::Value, want: u16| {
        let (status, _, resp) = send(
            "POST",
            &format!("{}/admin/v1/tokens", berth.url()),
            Some(&admin_auth()),
            Some(body.clone()),
        );
        assert_eq!(status, want, "{body}: {}", String::from_utf8_lossy(&resp));
        assert!(json(&resp)["errors"][0]["message"].is_string());
    };
    refuse(
        serde_json::json!({"namespace": "tool-foo", "name": "ci"}),
        409,
    );
    refuse(
        serde_json::json!({"namespace": "tool-foo", "name": "a b"}),
        400,
    );
    refuse(
        serde_json::json!({"namespace": "tool-foo", "name": ""}),
        400,
    );
    refuse(
        serde_json::json!({"namespace": "tool-foo", "name": "x", "expires_in": "soon"}),
        400,
    );
    refuse(
        serde_json::json!({"namespace": "tool-foo", "name": "x", "expires_in": "400d"}),
        400,
    );
    refuse(
        serde_json::json!({"namespace": "tool-foo", "name": "x", "expires_in": "0s"}),
        400,
    );
    refuse(
        serde_json::json!({"namespace": "tool-foo", "name": "x", "scope": "admin"}),
        400,
    );
    refuse(
        serde_json::json!({"admin": true, "name": "x", "scope": "pull"}),
        400,
    );
    refuse(
        serde_json::json!({"admin": true, "namespace": "tool-foo", "name": "x"}),
        400,
    );
    refuse(serde_json::json!({"name": "x"}), 400);
    refuse(serde_json::json!({"namespace": "Bad", "name": "x"}), 400);
    refuse(serde_json::json!({"namespace": "admin", "name": "x"}), 400);
    refuse(
        serde_json::json!({"namespace": "tool-foo", "name": "x", "secret": "mine"}),
        400,
    );
    // The CLI says what the server said.
    let err = run_failing(&mut cli(&berth, &["create", "tool-foo", "--name", "ci"]));
    assert!(err.contains("409") && err.contains("ci"), "{err}");

    // Revoke through the CLI: the token stops at once; twice is 404.
    let out = run(&mut cli(&berth, &["revoke", &ci_id]));
    assert!(out.contains("revoked"), "{out}");
    let (status, headers, body) = send("GET", &quotas, Some(&bearer(&ci)), None);
    assert_invalid(status, &headers, &body, "a revoked token");
    let err = run_failing(&mut cli(&berth, &["revoke", &ci_id]));
    assert!(err.contains("404"), "{err}");
    // Through the API; an id that cannot be one is simply unknown.
    let (status, _, _) = send(
        "DELETE",
        &format!(
            "{}/admin/v1/tokens/{}",
            berth.url(),
            pull["id"].as_str().unwrap()
        ),
        Some(&admin_auth()),
        None,
    );
    assert_eq!(status, 204);
    let (status, _, body) = send(
        "DELETE",
        &format!("{}/admin/v1/tokens/..%2Fx", berth.url()),
        Some(&admin_auth()),
        None,
    );
    assert_eq!((status, code(&body).as_str()), (404, "NAME_UNKNOWN"));
    // The name is free again once its token is revoked.
    create(
        &berth,
        serde_json::json!({"namespace": "tool-foo", "name": "ci"}),
    );

    let log = berth.log_text();
    for s in &secrets {
        assert!(!log.contains(&s[23..]), "a secret reached the log");
    }
    assert!(log.contains("API token created") && log.contains("API token revoked"));
}

#[test]
fn tokens_as_bearer_and_basic_stay_in_their_namespace_and_scope() {
    let dir = tempfile::tempdir().unwrap();
    let berth = Berth::start_with(
        &dir.path().join("data"),
        free_port(),
        "[auth]\nprivate_namespaces = [\"tool-foo\"]\n",
    );
    let url = berth.url();
    let foo = token_of(&create(
        &berth,
        serde_json::json!({"namespace": "tool-foo", "name": "ci", "expires_in": "1h"}),
    ));
    let reader = token_of(&create(
        &berth,
        serde_json::json!({"namespace": "tool-foo", "name": "reader", "scope": "pull"}),
    ));
    let ops = token_of(&create(
        &berth,
        serde_json::json!({"admin": true, "name": "ops"}),
    ));
    let status = |method: &str, path: &str, auth: &str| {
        send(method, &format!("{url}{path}"), Some(auth), None).0
    };

    // A namespace's token: its own tool API, not another's, not the admin's.
    assert_eq!(status("GET", "/v1/tool/foo/quotas", &bearer(&foo)), 200);
    assert_eq!(status("GET", "/v1/tool/bar/quotas", &bearer(&foo)), 403);
    assert_eq!(status("GET", "/admin/v1/quotas", &bearer(&foo)), 403);
    assert_eq!(status("GET", "/admin/v1/tokens", &bearer(&foo)), 403);
    assert_eq!(
        status("POST", "/v2/tool-foo/app/blobs/uploads/", &bearer(&foo)),
        202
    );
    assert_eq!(
        status("POST", "/v2/tool-bar/app/blobs/uploads/", &bearer(&foo)),
        403
    );
    assert_eq!(status("GET", "/v2/", &bearer(&foo)), 200);
    // The same as the password of Basic, whatever the user name.
    for user in ["tool-foo", "ci", "anything"] {
        assert_eq!(
            status("GET", "/v1/tool/foo/quotas", &basic(user, &foo)),
            200,
            "{user}"
        );
    }
    assert_eq!(
        status(
            "POST",
            "/v2/tool-bar/app/blobs/uploads/",
            &basic("tool-bar", &foo)
        ),
        403
    );
    // An admin token: the admin API, every namespace.
    assert_eq!(status("GET", "/admin/v1/quotas", &bearer(&ops)), 200);
    assert_eq!(
        status("GET", "/admin/v1/quotas", &basic("admin", &ops)),
        200
    );
    assert_eq!(status("GET", "/v1/tool/foo/quotas", &bearer(&ops)), 200);
    assert_eq!(
        status("POST", "/v2/tool-bar/app/blobs/uploads/", &bearer(&ops)),
        202
    );

    // No token creates credentials (one would outlive the other's
    // revocation); an admin token may still list and revoke.
    let (s, _, body) = send(
        "POST",
        &format!("{url}/admin/v1/tokens"),
        Some(&bearer(&ops)),
        Some(serde_json::json!({"admin": true, "name": "more"})),
    );
    assert_eq!((s, code(&body).as_str()), (403, "DENIED"));
    assert_eq!(
        status(
            "POST",
            "/admin/v1/namespaces/tool-x/credentials",
            &bearer(&ops)
        ),
        403
    );
    assert_eq!(status("GET", "/admin/v1/tokens", &bearer(&ops)), 200);

    // A pull token: pulls its private namespace; no push, delete, builds.
    let pusher = Ctx::new(
        Client::new(&url, Some(("ci".into(), foo.clone()))),
        "tool-foo",
    );
    let (_, digest) = pusher.push_image("tool-foo/app", "v1").unwrap();
    assert_eq!(
        status("GET", "/v2/tool-foo/app/manifests/v1", &bearer(&reader)),
        200
    );
    assert_eq!(
        status("GET", "/v2/tool-foo/app/manifests/v1", &basic("x", &reader)),
        200
    );
    let (s, _, body) = send(
        "POST",
        &format!("{url}/v2/tool-foo/app/blobs/uploads/"),
        Some(&basic("x", &reader)),
        None,
    );
    assert_eq!((s, code(&body).as_str()), (403, "DENIED"));
    assert!(
        String::from_utf8_lossy(&body).contains("may only pull"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(
        status(
            "DELETE",
            &format!("/v2/tool-foo/app/manifests/{digest}"),
            &bearer(&reader)
        ),
        403
    );
    assert_eq!(status("GET", "/v1/tool/foo/quotas", &bearer(&reader)), 200);
    assert_eq!(status("GET", "/v1/tool/foo/builds", &bearer(&reader)), 200);
    assert_eq!(status("POST", "/v1/tool/foo/clean", &bearer(&reader)), 403);
    // Through /token, a pull token is granted pull only, whatever it asks.
    let (s, body) = exchange(
        &berth,
        "x",
        &reader,
        &["repository:tool-foo/app:pull,push,delete"],
    );
    assert_eq!(s, 200);
    let c = claims(json(&body)["token"].as_str().unwrap());
    assert_eq!(c["access"][0]["actions"], serde_json::json!(["pull"]));
    let (s, body) = exchange(&berth, "x", &foo, &["repository:tool-foo/app:pull,push"]);
    assert_eq!(s, 200);
    let issued = json(&body);
    let c = claims(issued["token"].as_str().unwrap());
    assert_eq!(c["sub"], "tool-foo");
    assert_eq!(
        c["access"][0]["actions"],
        serde_json::json!(["pull", "push"])
    );
    assert_eq!(
        c["tid"].as_str(),
        Some(&foo[6..22]),
        "the JWT names its API token"
    );

    // A token pushes with the token flow of a registry client (Client
    // logs in at /token with Basic), and the JWT works on /v2.
    let jwt = issued["token"].as_str().unwrap();
    assert_eq!(
        status("POST", "/v2/tool-foo/app/blobs/uploads/", &bearer(jwt)),
        202
    );

    // Malformed and unknown tokens: 401 in the OCI error shape.
    let (id, secret) = (&foo[6..22], &foo[23..]);
    let unknown = format!("berth_{}_{secret}", "0".repeat(16));
    let wrong_secret = format!("berth_{id}_{}", "A".repeat(43));
    for (what, t) in [
        ("prefix only", "berth_".to_owned()),
        ("truncated", foo[..40].to_owned()),
        ("extra", format!("{foo}x")),
        ("unknown id", unknown.clone()),
        ("wrong secret", wrong_secret.clone()),
    ] {
        let (s, h, body) = send(
            "GET",
            &format!("{url}/v1/tool/foo/quotas"),
            Some(&bearer(&t)),
            None,
        );
        assert_invalid(s, &h, &body, what);
        assert!(
            h["www-authenticate"]
                .to_str()
                .unwrap()
                .contains("invalid_token"),
            "{what}"
        );
        let (s, h, body) = send("GET", &format!("{url}/v2/"), Some(&bearer(&t)), None);
        assert_invalid(s, &h, &body, what);
    }
    for t in [&unknown, &wrong_secret] {
        let (s, h, body) = send(
            "POST",
            &format!("{url}/v2/tool-foo/app/blobs/uploads/"),
            Some(&basic("tool-foo", t)),
            None,
        );
        assert_invalid(s, &h, &body, "as a password");
        assert_eq!(exchange(&berth, "tool-foo", t, &[]).0, 401);
    }
}

#[test]
fn revocation_is_immediate_and_expiry_is_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let berth = Berth::start(&dir.path().join("data"));
    let url = berth.url();
    let quotas = format!("{url}/v1/tool/foo/quotas");
    let created = create(
        &berth,
        serde_json::json!({"namespace": "tool-foo", "name": "ci"}),
    );
    let t = token_of(&created);
    let id = created["id"].as_str().unwrap();

    // Used as a Basic password (remembered for 60 s), directly as a bearer
    // token, and through a JWT from /token (valid 5 minutes).
    assert_eq!(send("GET", &quotas, Some(&basic("ci", &t)), None).0, 200);
    assert_eq!(send("GET", &quotas, Some(&bearer(&t)), None).0, 200);
    let (_, body) = exchange(&berth, "ci", &t, &["repository:tool-foo/app:pull"]);
    let jwt = json(&body)["token"].as_str().unwrap().to_owned();
    assert_eq!(send("GET", &quotas, Some(&bearer(&jwt)), None).0, 200);

    let (s, _, _) = send(
        "DELETE",
        &format!("{url}/admin/v1/tokens/{id}"),
        Some(&admin_auth()),
        None,
    );
    assert_eq!(s, 204);
    for (what, auth) in [
        ("Basic within the login cache", basic("ci", &t)),
        ("bearer", bearer(&t)),
        ("a JWT issued for it", bearer(&jwt)),
    ] {
        let (s, h, body) = send("GET", &quotas, Some(&auth), None);
        assert_invalid(s, &h, &body, what);
    }
    assert_eq!(exchange(&berth, "ci", &t, &[]).0, 401);

    // Expiry: a JWT issued for a token ends with it, and the token and
    // its cached login stop when it expires.
    let short = token_of(&create(
        &berth,
        serde_json::json!({"namespace": "tool-foo", "name": "short", "expires_in": "3s"}),
    ));
    assert_eq!(
        send("GET", &quotas, Some(&basic("ci", &short)), None).0,
        200
    );
    let (s, body) = exchange(&berth, "ci", &short, &["repository:tool-foo/app:pull"]);
    assert_eq!(s, 200);
    let issued = json(&body);
    assert!(
        issued["expires_in"].as_u64().unwrap() <= 3,
        "the JWT ends with its API token: {issued}"
    );
    let short_jwt = issued["token"].as_str().unwrap().to_owned();
    std::thread::sleep(Duration::from_millis(3500));
    for (what, auth) in [
        ("Basic", basic("ci", &short)),
        ("bearer", bearer(&short)),
        ("its JWT", bearer(&short_jwt)),
    ] {
        let (s, h, body) = send("GET", &quotas, Some(&auth), None);
        assert_invalid(s, &h, &body, what);
        if what != "its JWT" {
            let message = json(&body)["errors"][0]["message"]
                .as_str()
                .unwrap()
                .to_owned();
            assert!(message.contains("expired"), "{what}: {message}");
        }
    }
    let (s, body) = exchange(&berth, "ci", &short, &[]);
    assert_eq!(s, 401);
    assert!(String::from_utf8_lossy(&body).contains("expired"));
    // Still listed, marked expired.
    let (_, _, body) = send(
        "GET",
        &format!("{url}/admin/v1/tokens?namespace=tool-foo"),
        Some(&admin_auth()),
        None,
    );
    let listed = json(&body);
    let short_listed = listed["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "short")
        .unwrap();
    assert_eq!(short_listed["expired"], true);
}

#[test]
fn a_namespace_account_manages_its_own_tokens_only() {
    let dir = tempfile::tempdir().unwrap();
    let berth = Berth::start(&dir.path().join("data"));
    let url = berth.url();
    let a = berth.namespace_credentials("tool-a");
    let b = berth.namespace_credentials("tool-b");
    // A namespace that is no tool works the same way.
    let platform = berth.namespace_credentials("toolforge");
    let own = |ns: &str| format!("{url}/v1/namespaces/{ns}/tokens");

    let (s, _, body) = send(
        "POST",
        &own("tool-a"),
        Some(&basic("tool-a", &a)),
        Some(serde_json::json!({"name": "deploy", "expires_in": "7d"})),
    );
    assert_eq!(s, 201, "{}", String::from_utf8_lossy(&body));
    let mine = json(&body);
    assert_eq!(mine["namespace"], "tool-a");
    assert_eq!(mine["scope"], "push");
    assert_eq!(mine["created_by"], "tool-a");
    let mine_token = token_of(&mine);
    let mine_id = mine["id"].as_str().unwrap().to_owned();
    let (s, _, body) = send(
        "POST",
        &own("toolforge"),
        Some(&basic("toolforge", &platform)),
        Some(serde_json::json!({"name": "images", "scope": "pull"})),
    );
    assert_eq!(s, 201, "{}", String::from_utf8_lossy(&body));
    // A password's JWT from /token may create too.
    let (_, body) = exchange(&berth, "tool-a", &a, &[]);
    let a_jwt = json(&body)["token"].as_str().unwrap().to_owned();
    let (s, _, body) = send(
        "POST",
        &own("tool-a"),
        Some(&bearer(&a_jwt)),
        Some(serde_json::json!({"name": "second", "scope": "pull"})),
    );
    assert_eq!(s, 201, "{}", String::from_utf8_lossy(&body));
    let second = json(&body);

    let (s, _, body) = send("GET", &own("tool-a"), Some(&basic("tool-a", &a)), None);
    assert_eq!(s, 200);
    let listed = String::from_utf8(body).unwrap();
    assert!(listed.contains("deploy") && listed.contains("second"));
    assert!(!listed.contains(&mine_token[23..]), "no secrets listed");
    assert!(!listed.contains("images"), "only its own: {listed}");

    // Not another's: list, create, revoke; nor a token of its own through
    // the admin API; nor an admin token or another namespace in the body.
    let b_token = create(
        &berth,
        serde_json::json!({"namespace": "tool-b", "name": "ci"}),
    );
    let b_id = b_token["id"].as_str().unwrap();
    for (method, path, body) in [
        ("GET", own("tool-b"), None),
        (
            "POST",
            own("tool-b"),
            Some(serde_json::json!({"name": "x"})),
        ),
        ("DELETE", format!("{}/{b_id}", own("tool-b")), None),
        ("GET", format!("{url}/admin/v1/tokens"), None),
        (
            "POST",
            format!("{url}/admin/v1/tokens"),
            Some(serde_json::json!({"namespace": "tool-a", "name": "x"})),
        ),
    ] {
        let (s, _, resp) = send(method, &path, Some(&basic("tool-a", &a)), body);
        assert_eq!(
            (s, code(&resp).as_str()),
            (403, "DENIED"),
            "{method} {path}"
        );
    }
    for body in [
        serde_json::json!({"name": "x", "admin": true}),
        serde_json::json!({"name": "x", "namespace": "tool-b"}),
        serde_json::json!({"name": "x", "scope": "admin"}),
    ] {
        let (s, _, _) = send(
            "POST",
            &own("tool-a"),
            Some(&basic("tool-a", &a)),
            Some(body.clone()),
        );
        assert_eq!(s, 400, "{body}");
    }
    // tool-b's token id through tool-a's path: not found, and it survives.
    let (s, _, resp) = send(
        "DELETE",
        &format!("{}/{b_id}", own("tool-a")),
        Some(&basic("tool-a", &a)),
        None,
    );
    assert_eq!((s, code(&resp).as_str()), (404, "NAME_UNKNOWN"));
    assert_eq!(
        send(
            "GET",
            &format!("{url}/v1/tool/b/quotas"),
            Some(&bearer(token_of(&b_token).as_str())),
            None
        )
        .0,
        200
    );
    // Anonymous: 401 with a challenge.
    let (s, h, resp) = send("GET", &own("tool-a"), None, None);
    assert_invalid(s, &h, &resp, "anonymous");

    // A token may list its namespace's tokens; a push token may revoke
    // them; no token creates one; a pull token revokes nothing.
    let second_token = token_of(&second);
    assert_eq!(
        send("GET", &own("tool-a"), Some(&bearer(&mine_token)), None).0,
        200
    );
    assert_eq!(
        send("GET", &own("tool-a"), Some(&bearer(&second_token)), None).0,
        200
    );
    let (s, _, resp) = send(
        "POST",
        &own("tool-a"),
        Some(&bearer(&mine_token)),
        Some(serde_json::json!({"name": "child"})),
    );
    assert_eq!((s, code(&resp).as_str()), (403, "DENIED"));
    let (s, _, _) = send(
        "DELETE",
        &format!("{}/{mine_id}", own("tool-a")),
        Some(&bearer(&second_token)),
        None,
    );
    assert_eq!(s, 403, "a pull token revokes nothing");
    let (s, _, _) = send(
        "DELETE",
        &format!("{}/{}", own("tool-a"), second["id"].as_str().unwrap()),
        Some(&bearer(&mine_token)),
        None,
    );
    assert_eq!(s, 204);
    assert_eq!(
        send("GET", &own("tool-a"), Some(&bearer(&second_token)), None).0,
        401
    );
    // The account revokes its own.
    let (s, _, _) = send(
        "DELETE",
        &format!("{}/{mine_id}", own("tool-a")),
        Some(&basic("tool-a", &a)),
        None,
    );
    assert_eq!(s, 204);
    assert_eq!(
        send("GET", &own("tool-a"), Some(&bearer(&mine_token)), None).0,
        401
    );
    // tool-b's password is untouched by any of it.
    assert_eq!(
        send("GET", &own("tool-b"), Some(&basic("tool-b", &b)), None).0,
        200
    );
}

#[test]
fn the_per_namespace_cap_is_a_429_naming_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let berth = Berth::start_with(
        &dir.path().join("data"),
        free_port(),
        "[limits]\napi_tokens_per_namespace = 3\n",
    );
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            create(
                &berth,
                serde_json::json!({"namespace": "tool-cap", "name": format!("t{i}")}),
            )["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let (s, h, body) = send(
        "POST",
        &format!("{}/admin/v1/tokens", berth.url()),
        Some(&admin_auth()),
        Some(serde_json::json!({"namespace": "tool-cap", "name": "t3"})),
    );
    assert_eq!((s, code(&body).as_str()), (429, "TOOMANYREQUESTS"));
    let message = json(&body)["errors"][0]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains("api_tokens_per_namespace") && message.contains('3'),
        "{message}"
    );
    assert!(h.contains_key("retry-after"));
    // Through the namespace's own path too.
    let pw = berth.namespace_credentials("tool-cap");
    let (s, _, _) = send(
        "POST",
        &format!("{}/v1/namespaces/tool-cap/tokens", berth.url()),
        Some(&basic("tool-cap", &pw)),
        Some(serde_json::json!({"name": "t3"})),
    );
    assert_eq!(s, 429);
    // Other namespaces are not affected; revoking one makes room.
    create(
        &berth,
        serde_json::json!({"namespace": "tool-other", "name": "t0"}),
    );
    let (s, _, _) = send(
        "DELETE",
        &format!("{}/admin/v1/tokens/{}", berth.url(), ids[0]),
        Some(&admin_auth()),
        None,
    );
    assert_eq!(s, 204);
    create(
        &berth,
        serde_json::json!({"namespace": "tool-cap", "name": "t3"}),
    );
    let (_, _, metrics) = send("GET", &format!("{}/metrics", berth.url()), None, None);
    assert!(
        String::from_utf8_lossy(&metrics)
            .contains("berth_limit_refusals_total{limit=\"api_tokens_per_namespace\"} 2"),
        "refusals are counted"
    );
}

#[test]
fn docker_login_push_and_pull_and_skopeo_with_tokens() {
    let dir = tempfile::tempdir().unwrap();
    // Private, so that a refused pull cannot fall back to anonymous.
    let berth = Berth::start_with(
        &dir.path().join("data"),
        free_port(),
        "[auth]\nprivate_namespaces = [\"tool-dock\"]\n",
    );
    let dockerd = Dockerd::start(&dir.path().join("dockerd"));
    let host = berth.host();
    let ci = create(
        &berth,
        serde_json::json!({"namespace": "tool-dock", "name": "ci", "expires_in": "1h"}),
    );
    let ci_token = token_of(&ci);
    let reader = token_of(&create(
        &berth,
        serde_json::json!({"namespace": "tool-dock", "name": "reader", "scope": "pull"}),
    ));

    // skopeo pushes with the token as the password of --dest-creds.
    let layout = dir.path().join("layout");
    write_oci_layout(&layout, "v1", "tokens", 2);
    skopeo_push_layout(
        &layout,
        "v1",
        &format!("{host}/tool-dock/base:v1"),
        &format!("ci:{ci_token}"),
    );
    let inspect = run(Command::new(tool("skopeo"))
        .args(["inspect", "--tls-verify=false", "--creds"])
        .arg(format!("anything:{reader}"))
        .arg(format!("docker://{host}/tool-dock/base:v1")));
    assert!(inspect.contains("\"Digest\""), "{inspect}");
    let err = run_failing(
        Command::new(tool("skopeo"))
            .args(["copy", "--dest-tls-verify=false", "--dest-creds"])
            .arg(format!("anything:{reader}"))
            .arg(format!("oci:{}:v1", layout.display()))
            .arg(format!("docker://{host}/tool-dock/other:v1")),
    );
    assert!(
        err.contains("denied") || err.contains("unauthorized"),
        "a pull token cannot push: {err}"
    );

    // docker login with the token as the password, any user name.
    dockerd
        .login(&host, "ci", &ci_token)
        .expect("docker login with a token");
    let base = format!("{host}/tool-dock/base:v1");
    let app = format!("{host}/tool-dock/app:v1");
    run(dockerd.cmd().args(["pull", &base]));
    run(dockerd.cmd().args(["tag", &base, &app]));
    let out = run(dockerd.cmd().args(["push", &app]));
    assert!(out.contains("digest: sha256:"), "{out}");
    run(dockerd.cmd().args(["rmi", &app]));
    run(dockerd.cmd().args(["pull", &app]));

    // A pull token logs in and pulls, and cannot push.
    run(dockerd.cmd().args(["logout", &host]));
    dockerd
        .login(&host, "reader", &reader)
        .expect("docker login with a pull token");
    run(dockerd.cmd().args(["rmi", &app]));
    run(dockerd.cmd().args(["pull", &app]));
    let err = run_failing(dockerd.cmd().args(["push", &app]));
    assert!(
        err.contains("denied") || err.contains("unauthorized"),
        "a pull token cannot push: {err}"
    );

    // Revoked: docker's next pull fails at once (docker may still hold a
    // JWT issued for the token; berth refuses it too), and login fails.
    run(dockerd.cmd().args(["rmi", &app]));
    let (status, _, _) = send(
        "DELETE",
        &format!(
            "{}/v1/namespaces/tool-dock/tokens/{}",
            berth.url(),
            &reader[6..22]
        ),
        Some(&bearer(&ci_token)),
        None,
    );
    assert_eq!(status, 204);
    let err = run_failing(dockerd.cmd().args(["pull", &app]));
    assert!(
        err.contains("unauthorized") || err.contains("denied") || err.contains("revoked"),
        "{err}"
    );
    run(dockerd.cmd().args(["logout", &host]));
    assert!(
        dockerd.login(&host, "reader", &reader).is_err(),
        "a revoked token must not log in"
    );
    assert!(!berth.log_text().contains(&ci_token[23..]));
}

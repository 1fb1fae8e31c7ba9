//! Auth end to end: the token flow, namespace confinement, anonymous and
//! private pulls, every kind of bad credential, revocation and rotation,
//! the admin guard, login throttling, the CLI, and docker login/push/pull.

mod common;

use base64::Engine as _;
use berth_conformance::client::Client;
use berth_conformance::fixtures::Ctx;
use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

fn error_code(body: &[u8]) -> String {
    json(body)["errors"][0]["code"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

/// Asks `/token` for `scopes`, optionally with Basic credentials.
fn token(berth: &Berth, creds: Option<(&str, &str)>, scopes: &[&str]) -> (u16, serde_json::Value) {
    let mut url = format!("{}/token?service=berth", berth.url());
    for s in scopes {
        url.push_str(&format!("&scope={s}"));
    }
    let auth = creds.map(|(u, p)| basic(u, p));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    let (status, _, body) = request("GET", &url, &headers);
    (
        status,
        if body.is_empty() {
            serde_json::Value::Null
        } else {
            json(&body)
        },
    )
}

/// The access claim of a token (read without verifying: the test only
/// inspects what the registry granted).
fn granted(token: &str) -> Vec<(String, Vec<String>)> {
    let payload = token.split('.').nth(1).unwrap();
    let claims = json(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    );
    claims["access"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["name"].as_str().unwrap().to_owned(),
                g["actions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a.as_str().unwrap().to_owned())
                    .collect(),
            )
        })
        .collect()
}

fn start_with_private(dir: &std::path::Path) -> Berth {
    Berth::start_with(
        &dir.join("data"),
        free_port(),
        "[auth]\nprivate_namespaces = [\"tool-secret\"]\ntoken_ttl = \"2m\"\n",
    )
}

#[test]
fn token_endpoint_grants_the_intersection_of_request_and_policy() {
    let dir = tempfile::tempdir().unwrap();
    let berth = start_with_private(dir.path());
    let a = berth.namespace_credentials("tool-a");

    // /v2/ tells clients where to get tokens.
    let (status, headers, body) = get(&format!("{}/v2/", berth.url()), None);
    assert_eq!(status, 401);
    assert_eq!(error_code(&body), "UNAUTHORIZED");
    let challenge = headers["www-authenticate"].to_str().unwrap();
    assert_eq!(
        challenge,
        format!(
            "Bearer realm=\"http://{}/token\",service=\"berth\"",
            berth.host()
        )
    );

    let (status, t) = token(
        &berth,
        Some(("tool-a", &a)),
        &[
            "repository:tool-a/app:pull,push",
            "repository:tool-b/app:pull,push",
            "repository:tool-secret/x:pull",
        ],
    );
    assert_eq!(status, 200, "{t}");
    assert_eq!(t["token"], t["access_token"]);
    assert_eq!(t["expires_in"], 120);
    assert!(t["issued_at"].as_str().unwrap().ends_with('Z'));
    let grants = granted(t["token"].as_str().unwrap());
    assert_eq!(
        grants,
        vec![
            (
                "tool-a/app".to_owned(),
                vec!["pull".to_owned(), "push".to_owned()]
            ),
            ("tool-b/app".to_owned(), vec!["pull".to_owned()]),
            ("tool-secret/x".to_owned(), vec![]),
        ]
    );

    // Anonymous: pull of public namespaces only.
    let (status, t) = token(
        &berth,
        None,
        &[
            "repository:tool-a/app:pull,push,delete",
            "repository:tool-secret/x:pull",
        ],
    );
    assert_eq!(status, 200);
    assert_eq!(
        granted(t["token"].as_str().unwrap()),
        vec![
            ("tool-a/app".to_owned(), vec!["pull".to_owned()]),
            ("tool-secret/x".to_owned(), vec![])
        ]
    );

    // The admin gets what it asks for.
    let (_, t) = token(
        &berth,
        Some(("admin", ADMIN_PASSWORD)),
        &["repository:tool-secret/x:*"],
    );
    assert_eq!(
        granted(t["token"].as_str().unwrap()),
        vec![(
            "tool-secret/x".to_owned(),
            vec!["pull".to_owned(), "push".to_owned(), "delete".to_owned()]
        )]
    );

    // Garbage scopes are refused with the OCI error shape.
    for garbage in ["nonsense", "repository:UPPER/x:pull", "repository::pull"] {
        let (status, body) = token(&berth, Some(("tool-a", &a)), &[garbage]);
        assert_eq!(status, 403, "{garbage}");
        assert_eq!(body["errors"][0]["code"], "DENIED");
    }
}

#[test]
fn namespaces_confine_pushes_and_private_namespaces_confine_pulls() {
    let dir = tempfile::tempdir().unwrap();
    let berth = start_with_private(dir.path());
    let a = berth.namespace_credentials("tool-a");
    let b = berth.namespace_credentials("tool-b");
    let as_a = Ctx::new(
        Client::new(&berth.url(), Some(("tool-a".into(), a.clone()))),
        "tool-a",
    );
    let as_admin = Ctx::new(Client::new(&berth.url(), admin()), "tool-secret");
    let anonymous = Ctx::new(Client::new(&berth.url(), None), "tool-a");

    let (_, digest) = as_a.push_image("tool-a/app", "v1").unwrap();
    as_admin.push_image("tool-secret/x", "v1").unwrap();

    // Into another namespace: the token lacks push, so the answer is the
    // token spec's insufficient_scope.
    let r = as_a
        .client
        .send("POST", "/v2/tool-b/app/blobs/uploads/", &[], Vec::new())
        .unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(r.error_code().as_deref(), Some("DENIED"));
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("error=\"insufficient_scope\""));
    // With Basic directly: known, not allowed.
    let (status, _, body) = request(
        "POST",
        &format!("{}/v2/tool-b/app/blobs/uploads/", berth.url()),
        &[("authorization", &basic("tool-a", &a))],
    );
    assert_eq!((status, error_code(&body).as_str()), (403, "DENIED"));
    // Basic directly works for the account's own namespace.
    let (status, _, _) = request(
        "POST",
        &format!("{}/v2/tool-a/other/blobs/uploads/", berth.url()),
        &[("authorization", &basic("tool-a", &a))],
    );
    assert_eq!(status, 202);
    // Nor may B delete A's image.
    let (status, _, _) = request(
        "DELETE",
        &format!("{}/v2/tool-a/app/manifests/{digest}", berth.url()),
        &[("authorization", &basic("tool-b", &b))],
    );
    assert_eq!(status, 403);

    // Anonymous: pull of public images works, push does not.
    let r = anonymous.client.get("/v2/tool-a/app/manifests/v1").unwrap();
    assert_eq!(r.status, 200);
    let r = anonymous
        .client
        .send("POST", "/v2/tool-a/app/blobs/uploads/", &[], Vec::new())
        .unwrap();
    assert_eq!((r.status, r.error_code().as_deref()), (401, Some("DENIED")));
    let (status, headers, body) = request(
        "POST",
        &format!("{}/v2/tool-a/app/blobs/uploads/", berth.url()),
        &[],
    );
    assert_eq!((status, error_code(&body).as_str()), (401, "UNAUTHORIZED"));
    assert!(headers["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("scope=\"repository:tool-a/app:pull,push\""));

    // A private namespace: its own account and the admin only.
    assert_eq!(
        anonymous
            .client
            .get("/v2/tool-secret/x/manifests/v1")
            .unwrap()
            .status,
        401
    );
    assert_eq!(
        as_a.client
            .get("/v2/tool-secret/x/manifests/v1")
            .unwrap()
            .status,
        401
    );
    assert_eq!(
        as_admin
            .client
            .get("/v2/tool-secret/x/manifests/v1")
            .unwrap()
            .status,
        200
    );

    // The catalog shows only what the caller may pull.
    let (_, _, body) = get(&format!("{}/v2/_catalog", berth.url()), None);
    let listed = json(&body)["repositories"].clone();
    assert!(
        listed.as_array().unwrap().iter().any(|r| r == "tool-a/app"),
        "{listed}"
    );
    assert!(
        !listed
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "tool-secret/x"),
        "{listed}"
    );
    let r = as_admin.client.get("/v2/_catalog").unwrap();
    assert!(r.text().contains("tool-secret/x"));

    // A mount from a repository the caller may not pull falls back to a
    // plain upload and leaks nothing.
    let secret_layer = {
        let r = as_admin
            .client
            .get("/v2/tool-secret/x/manifests/v1")
            .unwrap();
        json(&r.body)["layers"][0]["digest"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let r = as_a
        .client
        .send(
            "POST",
            &format!("/v2/tool-a/app/blobs/uploads/?mount={secret_layer}&from=tool-secret/x"),
            &[],
            Vec::new(),
        )
        .unwrap();
    assert_eq!(
        r.status, 202,
        "mount from an unreadable repository must fall back"
    );
    assert_eq!(
        as_a.client
            .head(&format!("/v2/tool-a/app/blobs/{secret_layer}"))
            .unwrap()
            .status,
        404
    );
}

#[test]
fn bad_credentials_and_tokens_are_refused_and_revocation_is_immediate() {
    let dir = tempfile::tempdir().unwrap();
    let berth = start_with_private(dir.path());
    let a = berth.namespace_credentials("tool-a");
    let manifest_url = format!("{}/v2/tool-a/app/manifests/v1", berth.url());
    let upload_url = format!("{}/v2/tool-a/app/blobs/uploads/", berth.url());

    for (user, password) in [("tool-a", "wrong"), ("nobody", "x"), ("admin", "wrong")] {
        let (status, body) = token(&berth, Some((user, password)), &[]);
        assert_eq!(status, 401, "{user}");
        assert_eq!(body["errors"][0]["code"], "UNAUTHORIZED");
        let (status, _, body) = request(
            "POST",
            &upload_url,
            &[("authorization", &basic(user, password))],
        );
        assert_eq!((status, error_code(&body).as_str()), (401, "UNAUTHORIZED"));
    }
    for malformed in [
        "Bearer",
        "Basic !!!notbase64",
        "Digest abc",
        "Bearer not.a.jwt",
        "Basic dXNlcg==",
    ] {
        let (status, _, body) = request("GET", &manifest_url, &[("authorization", malformed)]);
        assert_eq!(
            (status, error_code(&body).as_str()),
            (401, "UNAUTHORIZED"),
            "{malformed}"
        );
    }

    // Expired, and signed by another key: both refused as invalid tokens.
    let key = std::fs::read_to_string(dir.path().join("data/token-key")).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = |exp: u64| {
        serde_json::json!({
            "iss": "berth", "sub": "tool-a", "aud": "berth", "exp": exp, "nbf": now - 7200, "iat": now - 7200, "jti": "x",
            "access": [{"type": "repository", "name": "tool-a/app", "actions": ["pull", "push"]}]
        })
    };
    let sign = |secret: &[u8], exp: u64| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims(exp),
            &jsonwebtoken::EncodingKey::from_secret(secret),
        )
        .unwrap()
    };
    let good = sign(key.trim().as_bytes(), now + 600);
    let (status, _, _) = request(
        "POST",
        &upload_url,
        &[("authorization", &format!("Bearer {good}"))],
    );
    assert_eq!(
        status, 202,
        "a token signed with the registry's key is accepted"
    );
    for (what, t) in [
        ("expired", sign(key.trim().as_bytes(), now - 3600)),
        ("forged", sign(b"another key", now + 600)),
    ] {
        let (status, headers, body) = request(
            "POST",
            &upload_url,
            &[("authorization", &format!("Bearer {t}"))],
        );
        assert_eq!(
            (status, error_code(&body).as_str()),
            (401, "UNAUTHORIZED"),
            "{what}"
        );
        assert!(
            headers["www-authenticate"]
                .to_str()
                .unwrap()
                .contains("error=\"invalid_token\""),
            "{what}"
        );
    }
    // A valid token for another namespace does not open this one.
    let b = berth.namespace_credentials("tool-b");
    let (_, t) = token(
        &berth,
        Some(("tool-b", &b)),
        &["repository:tool-a/app:pull,push"],
    );
    let (status, headers, _) = request(
        "POST",
        &upload_url,
        &[(
            "authorization",
            &format!("Bearer {}", t["token"].as_str().unwrap()),
        )],
    );
    assert_eq!(status, 401);
    assert!(headers["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("insufficient_scope"));

    // Rotation: the old secret stops working, the new one works.
    let rotated = berth.namespace_credentials("tool-a");
    assert_ne!(rotated, a);
    assert_eq!(token(&berth, Some(("tool-a", &a)), &[]).0, 401);
    assert_eq!(token(&berth, Some(("tool-a", &rotated)), &[]).0, 200);
    // Revocation: immediately, for tokens and Basic alike.
    let (status, _, _) = request(
        "DELETE",
        &format!("{}/admin/v1/namespaces/tool-a/credentials", berth.url()),
        &[("authorization", &basic("admin", ADMIN_PASSWORD))],
    );
    assert_eq!(status, 204);
    assert_eq!(token(&berth, Some(("tool-a", &rotated)), &[]).0, 401);
    let (status, _, _) = request(
        "POST",
        &upload_url,
        &[("authorization", &basic("tool-a", &rotated))],
    );
    assert_eq!(status, 401);

    // The admin API is the admin's.
    let creds_url = format!("{}/admin/v1/namespaces/tool-c/credentials", berth.url());
    let (status, _, body) = request("POST", &creds_url, &[]);
    assert_eq!((status, error_code(&body).as_str()), (401, "UNAUTHORIZED"));
    let (status, _, body) = request(
        "POST",
        &creds_url,
        &[("authorization", &basic("tool-b", &b))],
    );
    assert_eq!((status, error_code(&body).as_str()), (403, "DENIED"));
    for bad in ["Bad", "admin", "a..b"] {
        let (status, _, body) = request(
            "POST",
            &format!("{}/admin/v1/namespaces/{bad}/credentials", berth.url()),
            &[("authorization", &basic("admin", ADMIN_PASSWORD))],
        );
        assert_eq!(
            (status, error_code(&body).as_str()),
            (400, "NAME_INVALID"),
            "{bad}"
        );
    }
    assert!(
        !berth.log_text().contains(&rotated),
        "secrets never reach the log"
    );
}

#[test]
fn repeated_failed_logins_are_slowed_down() {
    let dir = tempfile::tempdir().unwrap();
    let berth = Berth::start(&dir.path().join("data"));
    for _ in 0..6 {
        assert_eq!(token(&berth, Some(("admin", "guess")), &[]).0, 401);
    }
    let started = Instant::now();
    assert_eq!(token(&berth, Some(("admin", "guess")), &[]).0, 401);
    // A lower bound only: the throttle adds at least its base delay here.
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "the 7th failure from one address is delayed"
    );
    assert!(berth.log_text().contains("login failed"));
}

#[test]
fn auth_can_be_switched_off_for_a_private_registry() {
    let dir = tempfile::tempdir().unwrap();
    let berth = Berth::start_with(
        &dir.path().join("data"),
        free_port(),
        "[auth]\nenabled = false\n",
    );
    let anonymous = Ctx::new(Client::new(&berth.url(), None), "anything");
    anonymous.push_image("anything/app", "v1").unwrap();
    assert_eq!(get(&format!("{}/v2/", berth.url()), None).0, 200);
}

#[test]
fn cli_creates_and_revokes_namespace_credentials_on_a_live_server() {
    let dir = tempfile::tempdir().unwrap();
    let berth = Berth::start(&dir.path().join("data"));
    let cli = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_berth"));
        c.args([
            "namespace",
            "credentials",
            "tool-cli",
            "--url",
            &berth.url(),
        ])
        .env("BERTH_ADMIN_PASSWORD", ADMIN_PASSWORD);
        c
    };
    let out = json(run(&mut cli()).as_bytes());
    assert_eq!(out["username"], "tool-cli");
    let password = out["password"].as_str().unwrap().to_owned();
    assert_eq!(token(&berth, Some(("tool-cli", &password)), &[]).0, 200);
    let out = run(cli().arg("--revoke"));
    assert!(out.contains("revoked"));
    assert_eq!(token(&berth, Some(("tool-cli", &password)), &[]).0, 401);
    let err = run_failing(cli().env("BERTH_ADMIN_PASSWORD", "wrong"));
    assert!(err.contains("401"), "{err}");
}

#[test]
fn docker_login_push_pull_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let berth = Berth::start(&dir.path().join("data"));
    let dockerd = Dockerd::start(&dir.path().join("dockerd"));
    let host = berth.host();
    let a = berth.namespace_credentials("tool-dock");

    // Seed an image with skopeo as tool-dock.
    let layout = dir.path().join("layout");
    write_oci_layout(&layout, "v1", "docker-auth", 2);
    skopeo_push_layout(
        &layout,
        "v1",
        &format!("{host}/tool-dock/base:v1"),
        &format!("tool-dock:{a}"),
    );

    // Anonymous docker pull of a public image.
    run(dockerd
        .cmd()
        .args(["pull", &format!("{host}/tool-dock/base:v1")]));

    // Anonymous push is refused.
    run(dockerd.cmd().args([
        "tag",
        &format!("{host}/tool-dock/base:v1"),
        &format!("{host}/tool-dock/app:v1"),
    ]));
    let err = run_failing(
        dockerd
            .cmd()
            .args(["push", &format!("{host}/tool-dock/app:v1")]),
    );
    assert!(
        err.contains("denied")
            || err.contains("unauthorized")
            || err.contains("authentication required"),
        "{err}"
    );

    // Wrong password: docker login fails.
    let err = dockerd.login(&host, "tool-dock", "wrong");
    assert!(err.is_err(), "docker login with a wrong password must fail");

    // Logged in: push into its own namespace, pull it back.
    dockerd.login(&host, "tool-dock", &a).unwrap();
    let out = run(dockerd
        .cmd()
        .args(["push", &format!("{host}/tool-dock/app:v1")]));
    assert!(out.contains("digest: sha256:"), "{out}");
    run(dockerd
        .cmd()
        .args(["rmi", &format!("{host}/tool-dock/app:v1")]));
    run(dockerd
        .cmd()
        .args(["pull", &format!("{host}/tool-dock/app:v1")]));

    // Into another tool's namespace: refused.
    run(dockerd.cmd().args([
        "tag",
        &format!("{host}/tool-dock/base:v1"),
        &format!("{host}/tool-other/app:v1"),
    ]));
    let err = run_failing(
        dockerd
            .cmd()
            .args(["push", &format!("{host}/tool-other/app:v1")]),
    );
    assert!(
        err.contains("denied"),
        "pushing into another namespace: {err}"
    );

    // Revoked credentials stop working for docker too.
    let (status, _, _) = request(
        "DELETE",
        &format!("{}/admin/v1/namespaces/tool-dock/credentials", berth.url()),
        &[("authorization", &basic("admin", ADMIN_PASSWORD))],
    );
    assert_eq!(status, 204);
    run(dockerd.cmd().args(["logout", &host]));
    assert!(
        dockerd.login(&host, "tool-dock", &a).is_err(),
        "revoked credentials must not log in"
    );
}

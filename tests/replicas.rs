//! Two real berth processes (replicas), each with a data dir of its own,
//! sharing one PostgreSQL database: every single-node guarantee holds
//! across them. Secrets imported once and shared (admin password, token
//! key: a JWT minted on one verifies on the other), credentials and API
//! tokens made on one working on the other and their revocation refused
//! there within the invalidation bound, console sessions usable on the
//! other and ended there by a sign-out, scheduled GC running each slot
//! once, and a replica killed in the middle of a GC run taken over by the
//! survivor, the dead run marked interrupted (and not by a replica merely
//! starting); builds claimed once by the two dispatchers, their logs read
//! and followed from the other replica, cancelled from the replica not
//! running them, and failed by the survivor when the replica running them
//! dies. Nothing here shares blobs between the replicas: what a
//! replica pushes is small (kept in the database) or pulled from it.
//!
//! Where a change on one replica must be seen on the other, the test polls
//! the other for a bounded time: a cache invalidation travels as a NOTIFY
//! delivered after the change commits (ARCHITECTURE.md states the bound),
//! so "at once" means "within the delivery latency", not "before the
//! revoking request answered".

mod common;
#[path = "common/builds.rs"]
mod harness;
#[path = "../storage/tests/support/postgres.rs"]
mod pg;

use berth_conformance::client::Client;
use berth_conformance::fixtures::Ctx;
use common::*;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long a change on one replica may take to reach the other (the
/// NOTIFY's delivery, milliseconds on one host; generous for loaded CI).
const PROPAGATION: Duration = Duration::from_secs(20);

fn config(url: &str, extra: &str) -> String {
    format!("[storage]\ndatabase_url = \"{url}\"\ndatabase_max_connections = 8\n{extra}")
}

/// A replica's data dir. The replicas here keep blobs as files, so their
/// data dirs stand for one shared mount: each carries the same blob store
/// identity (without it the second replica is refused, as it should be;
/// tests/scale_out.rs runs replicas on S3 instead).
fn replica_dir(dir: &tempfile::TempDir, name: &str) -> std::path::PathBuf {
    let data = dir.path().join(name);
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("berth-store-id"),
        "5f0c2a8e-3b1d-4e6f-9a7c-1d2e3f4a5b6c\n",
    )
    .unwrap();
    data
}

/// Polls `f` until it holds, for at most `PROPAGATION`.
fn eventually(what: &str, f: impl FnMut() -> bool) {
    eventually_or_say(what, f, String::new)
}

/// `eventually`, whose failure also says `why()` (what happened instead).
fn eventually_or_say(what: &str, mut f: impl FnMut() -> bool, why: impl FnOnce() -> String) {
    let deadline = Instant::now() + PROPAGATION;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(f(), "{what}: not seen within {PROPAGATION:?}{}", why());
}

fn status(method: &str, url: &str, auth: &str) -> u16 {
    request(method, url, &[("authorization", auth)]).0
}

fn json_request(
    method: &str,
    url: &str,
    auth: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let req = ureq::http::Request::builder()
        .method(method)
        .uri(url)
        .header("authorization", auth)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&body).unwrap())
        .unwrap();
    let mut r = http_agent().run(req).unwrap();
    let code = r.status().as_u16();
    let bytes = r.body_mut().read_to_vec().unwrap();
    (code, serde_json::from_slice(&bytes).unwrap_or_default())
}

/// A bearer token from `/token` on `berth` for a pull of `repo`.
fn jwt(berth: &Berth, auth: &str, repo: &str) -> String {
    let (code, _, body) = request(
        "GET",
        &format!(
            "{}/token?service=berth&scope=repository:{repo}:pull",
            berth.url()
        ),
        &[("authorization", auth)],
    );
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    v["token"].as_str().unwrap().to_owned()
}

#[test]
fn secrets_credentials_and_tokens_hold_on_every_replica() {
    let dir = tempfile::tempdir().unwrap();
    let url = pg::fresh_database();
    let db = pg::database_of(&url).to_owned();
    // A was a single-node installation: its files are imported, so its
    // password, tokens and hook secrets stay valid.
    let a_data = replica_dir(&dir, "a");
    std::fs::create_dir_all(&a_data).unwrap();
    std::fs::write(a_data.join("admin-password"), "imported-admin-password\n").unwrap();
    std::fs::write(a_data.join("token-key"), "imported-token-key\n").unwrap();
    std::fs::write(a_data.join("hook-key"), "imported-hook-key\n").unwrap();
    let a = Berth::start_generated(&a_data, free_port(), &config(&url, ""));
    let b = Berth::start_generated(&replica_dir(&dir, "b"), free_port(), &config(&url, ""));
    assert_eq!(
        pg::psql(&db, "SELECT name || '=' || value FROM shared_secrets ORDER BY name"),
        "admin-password=imported-admin-password\nhook-key=imported-hook-key\ntoken-key=imported-token-key"
    );
    let admin = basic("admin", "imported-admin-password");
    for r in [&a, &b] {
        assert_eq!(
            status("GET", &format!("{}/admin/v1/quotas", r.url()), &admin),
            200
        );
    }
    // B's operator can read the shared password where a single node keeps it.
    assert_eq!(
        std::fs::read_to_string(dir.path().join("b/admin-password"))
            .unwrap()
            .trim(),
        "imported-admin-password"
    );

    // A JWT minted on A verifies on B (one key).
    let token = jwt(&a, &admin, "tool-r/app");
    assert_eq!(
        status(
            "GET",
            &format!("{}/v2/", b.url()),
            &format!("Bearer {token}")
        ),
        200
    );

    // A namespace password made on A works on B; rotated on A, the old
    // one is refused on B (which had it cached).
    let created = json_request(
        "POST",
        &format!("{}/admin/v1/namespaces/tool-r/credentials", a.url()),
        &admin,
        serde_json::json!({}),
    );
    assert_eq!(created.0, 201, "{}", created.1);
    let old = basic("tool-r", created.1["password"].as_str().unwrap());
    assert_eq!(status("GET", &format!("{}/v2/", b.url()), &old), 200);
    assert_eq!(status("GET", &format!("{}/v2/", b.url()), &old), 200);
    let rotated = json_request(
        "POST",
        &format!("{}/admin/v1/namespaces/tool-r/credentials", a.url()),
        &admin,
        serde_json::json!({}),
    );
    assert_eq!(rotated.0, 200);
    let new = basic("tool-r", rotated.1["password"].as_str().unwrap());
    eventually("the rotated password refused on B", || {
        status("GET", &format!("{}/v2/", b.url()), &old) == 401
    });
    assert_eq!(status("GET", &format!("{}/v2/", b.url()), &new), 200);

    // An API token made on A works on B, directly and through a JWT from
    // B's /token; revoked on A, both are refused on B.
    let (code, made) = json_request(
        "POST",
        &format!("{}/admin/v1/tokens", a.url()),
        &admin,
        serde_json::json!({"namespace": "tool-r", "name": "ci"}),
    );
    assert_eq!(code, 201, "{made}");
    let api_token = made["token"].as_str().unwrap().to_owned();
    let id = made["id"].as_str().unwrap().to_owned();
    let as_bearer = format!("Bearer {api_token}");
    assert_eq!(status("GET", &format!("{}/v2/", b.url()), &as_bearer), 200);
    let issued = format!("Bearer {}", jwt(&b, &basic("ci", &api_token), "tool-r/app"));
    assert_eq!(
        status(
            "GET",
            &format!("{}/v2/tool-r/app/tags/list", b.url()),
            &issued
        ),
        404
    );
    assert_eq!(
        status(
            "DELETE",
            &format!("{}/admin/v1/tokens/{id}", a.url()),
            &admin
        ),
        204
    );
    eventually("the revoked API token refused on B", || {
        status("GET", &format!("{}/v2/", b.url()), &as_bearer) == 401
    });
    eventually("the revoked API token's JWT refused on B", || {
        status(
            "GET",
            &format!("{}/v2/tool-r/app/tags/list", b.url()),
            &issued,
        ) == 401
    });

    // The namespace account revoked on A: refused on B.
    assert_eq!(status("GET", &format!("{}/v2/", b.url()), &new), 200);
    assert_eq!(
        status(
            "DELETE",
            &format!("{}/admin/v1/namespaces/tool-r/credentials", a.url()),
            &admin
        ),
        204
    );
    eventually("the revoked account refused on B", || {
        status("GET", &format!("{}/v2/", b.url()), &new) == 401
    });
}

/// Signs in to the console of `berth`; the session cookie's value.
fn console_sign_in(berth: &Berth, user: &str, password: &str) -> String {
    let form_token = "t".repeat(43);
    let body = format!("login_csrf={form_token}&username={user}&password={password}&next=%2Fui%2F");
    let req = ureq::http::Request::builder()
        .method("POST")
        .uri(format!("{}/ui/login", berth.url()))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("cookie", format!("berth_login={form_token}"))
        .body(body.into_bytes())
        .unwrap();
    let r = http_agent().run(req).unwrap();
    assert_eq!(r.status().as_u16(), 303, "sign-in on {}", berth.url());
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| c.strip_prefix("berth_session="))
        .and_then(|c| c.split(';').next())
        .filter(|v| !v.is_empty())
        .expect("a session cookie")
        .to_owned()
}

/// GET of a console page with a session: (status, body).
fn console_get(berth: &Berth, path: &str, session: &str) -> (u16, String) {
    let (code, _, body) = request(
        "GET",
        &format!("{}{path}", berth.url()),
        &[("cookie", &format!("berth_session={session}"))],
    );
    (code, String::from_utf8_lossy(&body).into_owned())
}

#[test]
fn a_console_session_from_one_replica_works_and_ends_on_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let url = pg::fresh_database();
    let a = Berth::start_with(&replica_dir(&dir, "a"), free_port(), &config(&url, ""));
    let b = Berth::start_with(&replica_dir(&dir, "b"), free_port(), &config(&url, ""));
    let session = console_sign_in(&a, "admin", ADMIN_PASSWORD);
    let (code, page) = console_get(&b, "/ui/quotas", &session);
    assert_eq!(code, 200, "{page}");
    // Sign-out on A (a POST with the session's CSRF token, read from a page
    // B served: one session).
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("a form with the session's CSRF token")
        .to_owned();
    let req = ureq::http::Request::builder()
        .method("POST")
        .uri(format!("{}/ui/logout", a.url()))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("cookie", format!("berth_session={session}"))
        .body(format!("csrf={csrf}").into_bytes())
        .unwrap();
    assert_eq!(http_agent().run(req).unwrap().status().as_u16(), 303);
    // Rows, not caches: gone on B as soon as A answered.
    let (code, _) = console_get(&b, "/ui/quotas", &session);
    assert_eq!(code, 303, "the session ended on B too");
}

/// The job's scheduled runs' slots as each replica logged them.
fn slots_run(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("running the schedule slot") && l.contains("tag-cleanup"))
        .filter_map(|l| l.split("slot=").nth(1))
        .map(|s| s.split_whitespace().next().unwrap_or("").to_owned())
        .collect()
}

#[test]
fn both_schedulers_run_each_slot_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = pg::fresh_database();
    let db = pg::database_of(&url).to_owned();
    let fast =
        "[gc]\ntag_cleanup_schedule = \"* * * * * *\"\nuntagged_schedule = \"0 0 0 1 1 *\"\n";
    let a = Berth::start_with(&replica_dir(&dir, "a"), free_port(), &config(&url, fast));
    let b = Berth::start_with(&replica_dir(&dir, "b"), free_port(), &config(&url, fast));
    // Both schedulers tick every second; wait for a dozen runs.
    let runs = || -> usize {
        pg::psql(
            &db,
            "SELECT COUNT(*) FROM gc_runs WHERE job = 'tag-cleanup' AND trigger = 'schedule' AND finished_ms > 0",
        )
        .parse()
        .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while runs() < 12 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(a);
    drop(b);
    let logs: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect();
    assert_eq!(logs.len(), 2);
    let per_replica: Vec<Vec<String>> = logs.iter().map(|l| slots_run(l)).collect();
    println!(
        "slots run: {} by one replica, {} by the other",
        per_replica[0].len(),
        per_replica[1].len()
    );
    let mut all: Vec<String> = per_replica.into_iter().flatten().collect();
    let total = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), total, "a slot ran twice");
    assert!(total >= 12, "runs: {total}");
    let rows: usize = pg::psql(
        &db,
        "SELECT COUNT(*) FROM gc_runs WHERE job = 'tag-cleanup' AND trigger = 'schedule'",
    )
    .parse()
    .unwrap();
    assert_eq!(
        total, rows,
        "every slot run is one run row (and no other run happened)"
    );
}

/// A psql session holding the row lock of namespace `ns` until `release`.
struct RowLock(std::process::Child);

impl RowLock {
    fn hold(db: &str, ns: &str) -> RowLock {
        let server = pg::server();
        let mut child = Command::new(server.psql_binary())
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&server.dir)
            .args(["-p", &server.tls_port.to_string()])
            .args(["-U", pg::USER, "-d", db])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        writeln!(
            child.stdin.as_mut().unwrap(),
            "BEGIN; SELECT name FROM namespaces WHERE name = '{ns}' FOR UPDATE;"
        )
        .unwrap();
        RowLock(child)
    }

    fn release(mut self) {
        let mut stdin = self.0.stdin.take().unwrap();
        writeln!(stdin, "COMMIT;").unwrap();
        drop(stdin);
        assert!(self.0.wait().unwrap().success());
    }
}

fn the_replica_id(berth: &Berth) -> String {
    let log = berth.log_text();
    log.lines()
        .find(|l| l.contains("metadata opened"))
        .and_then(|l| l.split("replica=").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .map(|s| s.trim_matches('"').to_owned())
        .unwrap_or_else(|| panic!("no replica id in the log:\n{log}"))
}

#[test]
fn a_replica_killed_mid_gc_is_taken_over_and_its_run_marked_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    let url = pg::fresh_database();
    let db = pg::database_of(&url).to_owned();
    // A never runs untagged GC on its own; B every second, once it may.
    let a_cfg = "[gc]\nuntagged_schedule = \"0 0 0 1 1 *\"\nuntagged_grace = \"0s\"\nblob_grace = \"0s\"\nlease_ttl = \"3s\"\n";
    let b_cfg = "[gc]\nuntagged_schedule = \"* * * * * *\"\nuntagged_grace = \"0s\"\nblob_grace = \"0s\"\nlease_ttl = \"3s\"\n";
    let mut a = Berth::start_with(&replica_dir(&dir, "a"), free_port(), &config(&url, a_cfg));
    let a_id = the_replica_id(&a);
    // Garbage: an image pushed to A (small: kept in the database), untagged.
    let ctx = Ctx::new(Client::new(&a.url(), admin()), "tool-g");
    let (_, digest) = ctx.push_image("tool-g/app", "v1").unwrap();
    assert_eq!(
        ctx.client
            .send("DELETE", "/v2/tool-g/app/manifests/v1", &[], Vec::new())
            .unwrap()
            .status,
        202
    );
    // The namespace's row lock, held here, stops every GC deletion in it:
    // A's run is then in progress, deterministically, until released.
    let lock = RowLock::hold(&db, "tool-g");
    let trigger = {
        let url = a.url();
        std::thread::spawn(move || {
            Client::new(&url, admin()).send("POST", "/admin/v1/gc/untagged", &[], Vec::new())
        })
    };
    eventually_or_say(
        "a GC run waiting for the namespace lock",
        || {
            pg::psql(
                &db,
                &format!("SELECT COUNT(*) FROM pg_stat_activity WHERE datname = '{db}' AND wait_event_type = 'Lock'"),
            ) != "0"
        },
        || {
            format!(
                "; trigger finished: {}; runs: {}; A's log:\n{}",
                trigger.is_finished(),
                pg::psql(
                    &db,
                    "SELECT id, job, replica, finished_ms, report FROM gc_runs"
                ),
                a.log_text()
            )
        },
    );
    let running = || {
        pg::psql(
            &db,
            "SELECT id || ':' || COALESCE(replica, '') FROM gc_runs WHERE job = 'untagged' AND finished_ms = 0 ORDER BY id",
        )
    };
    let a_run = running();
    assert!(a_run.ends_with(&format!(":{a_id}")), "{a_run}");
    let a_run_id = a_run.split(':').next().unwrap().to_owned();

    // B starts while A runs: A's run stays running (its lease is live),
    // and B's ticks find the job held.
    let b = Berth::start_with(&replica_dir(&dir, "b"), free_port(), &config(&url, b_cfg));
    eventually("B's scheduler ticking and finding the job held", || {
        b.log_text().contains("running on another replica")
    });
    assert_eq!(running(), a_run, "a starting replica left A's run alone");
    // A manual run on B waits for A's (20 s), then is refused, saying so.
    let busy = Client::new(&b.url(), admin())
        .send("POST", "/admin/v1/gc/untagged", &[], Vec::new())
        .unwrap();
    assert_eq!(busy.status, 409, "{}", busy.describe());
    let body: serde_json::Value = busy.json().unwrap();
    assert_eq!(body["errors"][0]["code"], "DENIED", "{body}");
    let message = body["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("already running") && message.contains(&a_id),
        "{message}"
    );
    assert_eq!(running(), a_run, "the refused run started nothing");

    // A dies mid-run. Its lease runs out; B's next tick takes over, marks
    // A's run interrupted and runs the job itself (waiting on the lock too).
    a.kill9();
    let _ = trigger.join();
    eventually("A's run marked interrupted", || {
        pg::psql(
            &db,
            &format!("SELECT report::jsonb->>'status' FROM gc_runs WHERE id = {a_run_id}"),
        ) == "interrupted"
    });
    let b_id = the_replica_id(&b);
    eventually("B running the job", || {
        running().ends_with(&format!(":{b_id}"))
    });
    lock.release();
    eventually("B's run finished and the garbage gone", || {
        pg::psql(
            &db,
            &format!("SELECT COUNT(*) FROM gc_runs WHERE replica = '{b_id}' AND job = 'untagged' AND report::jsonb->>'status' = 'ok' AND (report::jsonb->>'manifests_removed')::int >= 1"),
        ) != "0"
    });
    assert_eq!(
        pg::psql(
            &db,
            &format!("SELECT COUNT(*) FROM manifests WHERE digest = '{digest}'"),
        ),
        "0"
    );
    assert!(
        b.log_text()
            .contains("marked runs of a replica that stopped mid-run as interrupted"),
        "{}",
        b.log_text()
    );
}

#[test]
fn builds_are_claimed_once_cancelled_from_elsewhere_and_failed_when_their_replica_dies() {
    use harness::*;
    let dir = tempfile::tempdir().unwrap();
    let url = pg::fresh_database();
    let db = pg::database_of(&url).to_owned();
    let cfg = config(
        &url,
        &builds_config(
            dir.path(),
            "source_schemes = [\"file\"]\n",
            "timeout = \"10m\"\n",
        ),
    );
    let mut a = Berth::start_with(&replica_dir(&dir, "a"), free_port(), &cfg);
    let b = Berth::start_with(&replica_dir(&dir, "b"), free_port(), &cfg);
    let (a_id, b_id) = (the_replica_id(&a), the_replica_id(&b));
    let source = git_repo(dir.path());
    let on_a = Tool::new(&a, "bx");
    let on_b = on_a.again(&b);
    // Four sleeping builds, two runners per replica: both dispatchers
    // claim from the one queue.
    let sleep = serde_json::json!({ "envvars": { "MODE": "sleep" } });
    let ids: Vec<String> = (0..4)
        .map(|_| started_id(&on_a.start(&source, sleep.clone())))
        .collect();
    for id in &ids {
        on_a.wait_status(id, "BUILD_RUNNING");
    }
    let placed = pg::psql(
        &db,
        "SELECT replica, COUNT(*) FROM builds WHERE status = 'BUILD_RUNNING' GROUP BY replica ORDER BY replica",
    );
    let mut expected = [format!("{a_id}|2"), format!("{b_id}|2")];
    expected.sort();
    assert_eq!(
        placed,
        expected.join("\n"),
        "two on each replica; the builds: {}",
        pg::psql(
            &db,
            "SELECT id, replica, status, message FROM builds ORDER BY created_ms"
        )
    );
    // Claimed once: one sleeping lifecycle per build on the host (its
    // `sleep` carries the output image, naming its replica's host).
    let sleeping = |host: &str| {
        processes_with(&format!("{host}/tool-bx/"))
            .into_iter()
            .filter(|(_, cmd)| cmd.starts_with("sh -c sleep"))
            .count()
    };
    eventually("every build's lifecycle sleeping", || {
        sleeping(&a.host()) + sleeping(&b.host()) >= 4
    });
    assert_eq!(sleeping(&a.host()), 2);
    assert_eq!(sleeping(&b.host()), 2);

    // Cancelled on B, running on A: A stops it.
    let running_on = |replica: &str| -> Vec<String> {
        pg::psql(
            &db,
            &format!("SELECT id FROM builds WHERE status = 'BUILD_RUNNING' AND replica = '{replica}' ORDER BY id"),
        )
        .lines()
        .map(str::to_owned)
        .collect()
    };
    let victim = running_on(&a_id)[0].clone();
    // Its log, written on A, read on B; followed on B until it ends.
    on_b.wait_log(&victim, "sleeping");
    let follower = {
        let t = on_b.again(&b);
        let id = victim.clone();
        std::thread::spawn(move || t.logs(&id, true))
    };
    let (code, body) = on_b.cancel(&victim);
    assert_eq!(code, 200, "{body}");
    on_b.wait_status(&victim, "BUILD_CANCELLED");
    eventually("A's cancelled lifecycle gone", || sleeping(&a.host()) == 1);
    // (From the database's copy: the file is A's, in A's data dir.)
    assert_eq!(
        pg::psql(
            &db,
            &format!("SELECT COUNT(*) > 0 FROM build_log_chunks WHERE build_id = '{victim}'")
        ),
        "t"
    );
    let followed = follower.join().unwrap();
    assert!(followed.contains("sleeping"), "{followed}");
    assert!(
        followed.contains("BUILD_CANCELLED"),
        "the follow on B saw the end: {followed}"
    );

    // A dies with a build running: B fails it once A's heartbeat is stale,
    // and leaves its own builds running.
    let orphan = running_on(&a_id)[0].clone();
    on_b.wait_log(&orphan, "sleeping");
    a.kill9();
    let deadline = Instant::now() + Duration::from_secs(90);
    while on_b.build(&orphan)["status"] == "BUILD_RUNNING" {
        assert!(Instant::now() < deadline, "A's build was never failed");
        std::thread::sleep(Duration::from_millis(250));
    }
    let failed = on_b.build(&orphan);
    assert_eq!(failed["status"], "BUILD_FAILURE", "{failed}");
    assert!(
        failed["message"]
            .as_str()
            .unwrap_or_default()
            .contains("the replica running it stopped"),
        "{failed}"
    );
    assert_eq!(running_on(&b_id).len(), 2, "B's builds run on");
    // The dead replica's log is still there for everyone.
    assert!(on_b.logs(&orphan, false).contains("queued"));
    for id in running_on(&b_id) {
        on_b.cancel(&id);
    }
}

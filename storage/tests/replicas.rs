//! What several replicas share through one PostgreSQL database (issue 15),
//! each replica a `Metadata` handle of its own (its own replica id, its
//! own listening connection): secrets created once, leases held by one at
//! a time and schedule slots run once, a lost holder's GC runs marked
//! interrupted by the taker and never by a replica merely starting,
//! builds claimed once under caps counted across replicas, a dead
//! replica's builds failed and a live one's left alone, console sessions
//! and their bounds, cache invalidations heard by the other replica.

use berth_storage::meta::builds::{BuildParams, BuildRecord, BuildStatus, BuildTrigger};
use berth_storage::meta::{LeaseOutcome, UiSessionBounds, UiSessionRow};
use berth_storage::{now_ms, Metadata};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use support::{postgres as pg, Backend, Place};

#[allow(unused_macros)]
#[macro_use]
mod support;

/// Two replicas on one fresh database.
async fn two() -> (Metadata, Metadata, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let place = Place::new(Backend::Postgres);
    let a = place.metadata(dir.path()).await;
    let b = place.metadata(dir.path()).await;
    let db = pg::database_of(place.url.as_deref().unwrap()).to_owned();
    assert_ne!(a.replica_id(), b.replica_id());
    (a, b, db, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_is_created_once_and_read_back_everywhere() {
    let (a, b, _db, _dir) = two().await;
    let (x, y) = tokio::join!(
        a.shared_secret("token-key", "from-a".into()),
        b.shared_secret("token-key", "from-b".into())
    );
    let (x, y) = (x.unwrap(), y.unwrap());
    assert_eq!(x, y, "two replicas starting together agree");
    assert!(x == "from-a" || x == "from-b");
    assert_eq!(
        a.shared_secret("token-key", "later".into()).await.unwrap(),
        x
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_has_one_holder_and_a_slot_runs_once() {
    let (a, b, _db, _dir) = two().await;
    let ttl = 60_000;
    let a_id = a.replica_id().unwrap().to_owned();
    assert_eq!(
        a.acquire_lease("tag-cleanup", ttl, Some(1)).await.unwrap(),
        LeaseOutcome::Acquired { interrupted: 0 }
    );
    assert_eq!(
        b.acquire_lease("tag-cleanup", ttl, Some(2)).await.unwrap(),
        LeaseOutcome::Held { holder: a_id }
    );
    assert!(a.renew_lease("tag-cleanup", ttl).await.unwrap());
    assert!(!b.renew_lease("tag-cleanup", ttl).await.unwrap());
    a.release_lease("tag-cleanup").await.unwrap();
    assert_eq!(
        b.acquire_lease("tag-cleanup", ttl, Some(1)).await.unwrap(),
        LeaseOutcome::SlotDone,
        "slot 1 ran on A"
    );
    // Both replicas' ticks for slot 2, many times over: one run.
    let mut ticks = Vec::new();
    for i in 0..16 {
        let m = if i % 2 == 0 { a.clone() } else { b.clone() };
        ticks.push(tokio::spawn(async move {
            let got = m.acquire_lease("tag-cleanup", ttl, Some(2)).await.unwrap();
            if matches!(got, LeaseOutcome::Acquired { .. }) {
                m.release_lease("tag-cleanup").await.unwrap();
            }
            got
        }));
    }
    let mut runs = 0;
    for t in ticks {
        if matches!(t.await.unwrap(), LeaseOutcome::Acquired { .. }) {
            runs += 1;
        }
    }
    assert_eq!(runs, 1, "slot 2 ran once across both replicas");
    // A manual run (no slot) takes a free lease whatever the slots.
    assert!(matches!(
        b.acquire_lease("tag-cleanup", ttl, None).await.unwrap(),
        LeaseOutcome::Acquired { .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_taker_of_a_lost_lease_marks_its_run_interrupted() {
    let (a, b, db, _dir) = two().await;
    assert!(matches!(
        a.acquire_lease("untagged", 60_000, None).await.unwrap(),
        LeaseOutcome::Acquired { .. }
    ));
    let run = a
        .start_gc_run(
            "untagged",
            false,
            "schedule",
            now_ms(),
            serde_json::json!({"status": "running"}),
        )
        .await
        .unwrap();
    // B starting up while A runs leaves A's run alone.
    assert_eq!(b.interrupt_unfinished_gc_runs().await.unwrap(), 0);
    assert_eq!(b.gc_run(run).await.unwrap().unwrap().finished_ms, 0);
    // A dies: it stops renewing and its lease runs out.
    pg::psql(
        &db,
        "UPDATE job_leases SET expires_ms = 1 WHERE job = 'untagged'",
    );
    assert_eq!(
        b.acquire_lease("untagged", 60_000, None).await.unwrap(),
        LeaseOutcome::Acquired { interrupted: 1 }
    );
    let dead = b.gc_run(run).await.unwrap().unwrap();
    assert!(dead.finished_ms > 0);
    assert_eq!(dead.report["status"], "interrupted", "{:?}", dead.report);
    // B's own run in progress is not A's to end when A comes back.
    let mine = b
        .start_gc_run(
            "untagged",
            false,
            "schedule",
            now_ms(),
            serde_json::json!({}),
        )
        .await
        .unwrap();
    assert_eq!(a.interrupt_unfinished_gc_runs().await.unwrap(), 0);
    assert_eq!(a.gc_run(mine).await.unwrap().unwrap().finished_ms, 0);
}

fn build(id: &str, tool: &str, created_ms: i64) -> BuildRecord {
    BuildRecord {
        id: id.into(),
        tool: tool.into(),
        image_name: "img".into(),
        status: BuildStatus::Pending,
        message: "waiting".into(),
        params: BuildParams {
            source_url: "https://git.example.org/t.git".into(),
            reference: "main".into(),
            ..BuildParams::default()
        },
        resolved_ref: "0".repeat(40),
        destination_image: String::new(),
        log_path: format!("/logs/{id}.log"),
        created_ms,
        start_ms: None,
        end_ms: None,
        trigger: BuildTrigger::Manual,
        trigger_id: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_are_claimed_once_and_a_dead_replicas_builds_fail() {
    let (a, b, db, _dir) = two().await;
    let t0 = now_ms();
    for tool in ["t1", "t2", "t3"] {
        for i in 0..4 {
            a.insert_build(build(&format!("{tool}-{i}"), tool, t0 + i))
                .await
                .unwrap();
        }
    }
    // Both dispatchers claim at once, per-tool cap 2 across replicas.
    let mut claimers = Vec::new();
    for m in [a.clone(), b.clone(), a.clone(), b.clone()] {
        claimers.push(tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(r) = m.claim_build(100, 2).await.unwrap() {
                assert_eq!(r.status, BuildStatus::Running);
                got.push(r.id);
            }
            got
        }));
    }
    let mut claimed = Vec::new();
    for c in claimers {
        claimed.extend(c.await.unwrap());
    }
    let distinct: BTreeSet<_> = claimed.iter().cloned().collect();
    assert_eq!(
        distinct.len(),
        claimed.len(),
        "each build claimed once: {claimed:?}"
    );
    assert_eq!(claimed.len(), 6, "two per tool: {claimed:?}");
    for tool in ["t1", "t2", "t3"] {
        assert_eq!(claimed.iter().filter(|id| id.starts_with(tool)).count(), 2);
    }
    // Oldest first.
    assert!(distinct.contains("t1-0") && distinct.contains("t1-1"));
    // max_parallel counts this replica's running builds only.
    a.insert_build(build("t4-0", "t4", t0 + 10)).await.unwrap();
    let on_b = pg::psql(
        &db,
        &format!(
            "SELECT COUNT(*) FROM builds WHERE status = 'BUILD_RUNNING' AND replica = '{}'",
            b.replica_id().unwrap()
        ),
    );
    let on_b: usize = on_b.parse().unwrap();
    assert!(b.claim_build(on_b, 2).await.unwrap().is_none(), "B is full");
    let t4 = a.claim_build(100, 2).await.unwrap().expect("A has room");
    assert_eq!(t4.id, "t4-0");

    // Both alive: recovery on either fails nothing.
    assert_eq!(b.fail_orphaned_builds("stopped").await.unwrap(), 0);
    assert_eq!(a.fail_orphaned_builds("stopped").await.unwrap(), 0);
    // A stops: its heartbeat goes stale.
    let a_id = a.replica_id().unwrap().to_owned();
    let a_running: usize = pg::psql(
        &db,
        &format!(
            "SELECT COUNT(*) FROM builds WHERE status = 'BUILD_RUNNING' AND replica = '{a_id}'"
        ),
    )
    .parse()
    .unwrap();
    assert!(a_running > 0);
    a.close().await;
    drop(a);
    pg::psql(
        &db,
        &format!("UPDATE replicas SET heartbeat_ms = 0 WHERE id = '{a_id}'"),
    );
    assert_eq!(
        b.fail_orphaned_builds("the replica running it stopped")
            .await
            .unwrap(),
        a_running
    );
    let failed = pg::psql(
        &db,
        &format!("SELECT DISTINCT status || ':' || message FROM builds WHERE replica = '{a_id}'"),
    );
    assert_eq!(failed, "BUILD_FAILURE:the replica running it stopped");
    let b_running: usize = pg::psql(
        &db,
        &format!(
            "SELECT COUNT(*) FROM builds WHERE status = 'BUILD_RUNNING' AND replica = '{}'",
            b.replica_id().unwrap()
        ),
    )
    .parse()
    .unwrap();
    assert_eq!(b_running, on_b, "B's own builds run on");

    // A cancel asked on one replica is seen by the one running the build.
    b.insert_build(build("t5-0", "t5", t0 + 20)).await.unwrap();
    let running_on_b = b
        .claim_build(100, 2)
        .await
        .unwrap()
        .expect("B claims it")
        .id;
    assert!(b.cancel_requested_builds().await.unwrap().is_empty());
    assert!(b.request_build_cancel(&running_on_b).await.unwrap());
    assert_eq!(
        b.cancel_requested_builds().await.unwrap(),
        vec![running_on_b]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_sessions_are_shared_and_bounded() {
    let (a, b, _db, _dir) = two().await;
    let bounds = UiSessionBounds {
        max: 4,
        per_account: 2,
        ttl_ms: 3_600_000,
        idle_ms: 600_000,
    };
    let row = |principal: &str| UiSessionRow {
        principal: principal.into(),
        token_id: None,
        token_scope: None,
        token_expires_ms: None,
        csrf: format!("csrf-{principal}"),
        created_ms: 0,
        last_seen_ms: 0,
        flash: None,
    };
    let key = |n: u8| vec![n; 32];
    assert!(a
        .create_ui_session(key(1), row("tool-a"), bounds)
        .await
        .unwrap());
    let seen = b
        .ui_session(key(1), bounds)
        .await
        .unwrap()
        .expect("B sees A's sign-in");
    assert_eq!(seen.principal, "tool-a");
    assert_eq!(seen.csrf, "csrf-tool-a");
    a.set_ui_session_flash(key(1), "done".into()).await.unwrap();
    assert_eq!(
        b.ui_session(key(1), bounds)
            .await
            .unwrap()
            .unwrap()
            .flash
            .as_deref(),
        Some("done")
    );
    assert_eq!(
        a.ui_session(key(1), bounds).await.unwrap().unwrap().flash,
        None,
        "shown once"
    );
    // Per account: the oldest makes room.
    assert!(b
        .create_ui_session(key(2), row("tool-a"), bounds)
        .await
        .unwrap());
    assert!(a
        .create_ui_session(key(3), row("tool-a"), bounds)
        .await
        .unwrap());
    assert!(a.ui_session(key(1), bounds).await.unwrap().is_none());
    // Overall: refused, nobody evicted.
    assert!(a
        .create_ui_session(key(4), row("tool-b"), bounds)
        .await
        .unwrap());
    assert!(b
        .create_ui_session(key(5), row("tool-c"), bounds)
        .await
        .unwrap());
    assert!(!a
        .create_ui_session(key(6), row("tool-d"), bounds)
        .await
        .unwrap());
    assert_eq!(b.ui_session_count().await.unwrap(), 4);
    // Sign-out on A ends it on B; a revocation ends all of an account's.
    a.end_ui_session(key(4)).await.unwrap();
    assert!(b.ui_session(key(4), bounds).await.unwrap().is_none());
    b.end_ui_sessions_of("tool-a").await.unwrap();
    assert!(a.ui_session(key(2), bounds).await.unwrap().is_none());
    assert!(a.ui_session(key(3), bounds).await.unwrap().is_none());
    assert!(a.ui_session(key(5), bounds).await.unwrap().is_some());
    // Concurrent sign-ins on both replicas keep the overall bound.
    let mut tasks = Vec::new();
    for n in 10..30u8 {
        let m = if n % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            m.create_ui_session(vec![n; 32], row(&format!("tool-{n}")), bounds)
                .await
                .unwrap()
        }));
    }
    let mut created = 0;
    for t in tasks {
        created += usize::from(t.await.unwrap());
    }
    assert_eq!(created, 3, "one session was open, room for three more");
    assert_eq!(a.ui_session_count().await.unwrap(), 4);
}

/// Waits for `f` to hold, polling; false if it did not within `limit`.
async fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_on_one_replica_moves_the_others_cache_epoch() {
    let (a, b, db, _dir) = two().await;
    assert!(
        eventually(Duration::from_secs(10), || b.cache_epoch().is_some()).await,
        "B's listening connection comes up"
    );
    let before = b.cache_epoch().unwrap();
    assert!(a
        .set_namespace_secret("tool-x", "hash".into())
        .await
        .unwrap());
    assert!(
        eventually(Duration::from_secs(10), || b.cache_epoch() > Some(before)).await,
        "the credential change reached B"
    );
    // The listening connection lost: no epoch (caches bypassed) until it
    // is back, and then a new one (nothing cached before the gap counts).
    let before = b.cache_epoch().unwrap();
    pg::psql(
        &db,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()
           AND (query LIKE 'LISTEN%' OR query = 'SELECT 1')",
    );
    assert!(
        eventually(Duration::from_secs(10), || b.cache_epoch().is_none()).await,
        "B noticed its listening connection went"
    );
    assert!(
        eventually(Duration::from_secs(10), || b.cache_epoch() > Some(before)).await,
        "B listens again, under a new epoch"
    );
    for change in ["token revocation", "quota limit", "retention"] {
        let before = b.cache_epoch().unwrap();
        match change {
            "token revocation" => {
                let t = berth_storage::meta::ApiToken {
                    id: "tok1".into(),
                    name: "n".into(),
                    namespace: Some("tool-x".into()),
                    scope: berth_storage::meta::TokenScope::Push,
                    secret_hash: vec![1; 32],
                    created_ms: now_ms(),
                    expires_ms: now_ms() + 60_000,
                    last_used_ms: None,
                    created_by: "admin".into(),
                };
                a.create_api_token(t, 10, 0).await.unwrap();
                assert!(a.delete_api_token("tok1", None).await.unwrap());
            }
            "quota limit" => {
                a.set_quota_limit("tool-x", berth_storage::meta::LimitSetting::Bytes(1))
                    .await
                    .unwrap();
            }
            _ => a.set_retention_override("tool-x", None).await.unwrap(),
        }
        assert!(
            eventually(Duration::from_secs(10), || b.cache_epoch() > Some(before)).await,
            "{change} reached B"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_log_written_on_one_replica_reads_on_the_other() {
    let (a, b, db, _dir) = two().await;
    a.append_build_log("bl-1", b"line one\n".to_vec())
        .await
        .unwrap();
    a.append_build_log("bl-1", b"line two\n".to_vec())
        .await
        .unwrap();
    a.append_build_log("other", b"not mine\n".to_vec())
        .await
        .unwrap();
    let got = b.build_log_after("bl-1", 0, 64).await.unwrap();
    let text: Vec<u8> = got.iter().flat_map(|(_, d)| d.clone()).collect();
    assert_eq!(text, b"line one\nline two\n");
    // Read on from where it stopped.
    let last = got.last().unwrap().0;
    assert!(b
        .build_log_after("bl-1", last, 64)
        .await
        .unwrap()
        .is_empty());
    a.append_build_log("bl-1", b"line three\n".to_vec())
        .await
        .unwrap();
    let more = b.build_log_after("bl-1", last, 64).await.unwrap();
    assert_eq!(more.len(), 1);
    assert_eq!(more[0].1, b"line three\n");
    // Retention: pieces older than the cutoff go.
    pg::psql(
        &db,
        "UPDATE build_log_chunks SET at_ms = 1 WHERE build_id = 'other'",
    );
    assert_eq!(b.expire_build_logs(1000).await.unwrap(), 1);
    assert!(a.build_log_after("other", 0, 64).await.unwrap().is_empty());
    assert_eq!(a.build_log_after("bl-1", 0, 64).await.unwrap().len(), 3);
}

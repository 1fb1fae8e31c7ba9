//! Build triggers and the builds pushes queue, on each metadata backend:
//! a trigger's life (create, update keeping its id, rotate, delete),
//! coalescing, replays and the per-tool limit, and the same rules under
//! concurrent deliveries through two handles on one database (two
//! replicas, for PostgreSQL) racing each other and the dispatcher.

use berth_storage::meta::builds::*;
use berth_storage::{now_ms, Metadata, StorageError};
use std::collections::{BTreeMap, BTreeSet};
use support::{Backend, Place};

#[macro_use]
mod support;

for_each_backend!(
    pushes_coalesce_replays_start_nothing_and_the_limit_holds,
    a_trigger_is_created_updated_rotated_and_deleted,
    manual_and_push_builds_read_back_what_started_them,
    concurrent_pushes_to_one_ref_queue_one_build,
    a_replayed_delivery_queues_once_whichever_replica_takes_it,
    concurrent_pushes_keep_queued_per_tool,
    coalescing_never_changes_a_build_the_dispatcher_took,
);

fn push_build(id: &str, trigger: &str, reference: &str, commit: &str) -> BuildRecord {
    BuildRecord {
        id: id.into(),
        tool: "t".into(),
        image_name: "tool-t".into(),
        status: BuildStatus::Pending,
        message: "waiting".into(),
        params: BuildParams {
            source_url: "https://git.example.org/t.git".into(),
            reference: reference.into(),
            commit: Some(commit.into()),
            ..BuildParams::default()
        },
        resolved_ref: commit.into(),
        destination_image: String::new(),
        log_path: format!("/logs/{id}.log"),
        created_ms: now_ms(),
        start_ms: None,
        end_ms: None,
        trigger: BuildTrigger::Push {
            commit: commit.into(),
            reference: reference.into(),
            pusher: "someone".into(),
        },
        trigger_id: Some(trigger.into()),
    }
}

fn sha(c: char) -> String {
    c.to_string().repeat(40)
}

/// A distinct 40-hex commit id for `n`.
fn commit(n: usize) -> String {
    format!("{n:040x}")
}

/// Two handles on one place: the same handle twice with SQLite (one
/// process owns its file), two connections pools with PostgreSQL.
async fn two(place: &Place, dir: &std::path::Path) -> (Metadata, Metadata) {
    let a = place.metadata(dir).await;
    let b = match place.backend {
        Backend::Sqlite => a.clone(),
        Backend::Postgres | Backend::S3 => place.metadata(dir).await,
    };
    (a, b)
}

async fn pending_of(meta: &Metadata, tool: &str) -> Vec<BuildRecord> {
    meta.builds_of(tool)
        .await
        .unwrap()
        .into_iter()
        .filter(|b| b.status == BuildStatus::Pending)
        .collect()
}

async fn pushes_coalesce_replays_start_nothing_and_the_limit_holds(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let meta = Place::new(backend).metadata(dir.path()).await;
    let main = "refs/heads/main";
    let q = meta
        .queue_push_build(push_build("b1", "h1", main, &sha('a')), 10)
        .await
        .unwrap();
    assert!(matches!(q, PushQueued::Queued(_)));
    // A newer push to the same ref while b1 waits: b1 builds it.
    match meta
        .queue_push_build(push_build("b2", "h1", main, &sha('b')), 10)
        .await
        .unwrap()
    {
        PushQueued::Coalesced { build, replaced } => {
            assert_eq!((build.id.as_str(), replaced), ("b1", sha('a')));
            assert_eq!(build.params.commit, Some(sha('b')));
        }
        other => panic!("{other:?}"),
    }
    let stored = meta.build("b1").await.unwrap().unwrap();
    assert_eq!(stored.resolved_ref, sha('b'));
    assert_eq!(stored.params.commit, Some(sha('b')));
    assert!(matches!(stored.trigger, BuildTrigger::Push { ref commit, .. } if *commit == sha('b')));
    assert!(meta.build("b2").await.unwrap().is_none());
    // Both commits are seen: replays of either start nothing.
    for c in ['a', 'b'] {
        assert!(matches!(
            meta.queue_push_build(push_build("b3", "h1", main, &sha(c)), 10)
                .await
                .unwrap(),
            PushQueued::Replay
        ));
    }
    // Another ref queues its own build; once b1 runs, main does too.
    assert!(matches!(
        meta.queue_push_build(push_build("b4", "h1", "refs/heads/dev", &sha('c')), 10)
            .await
            .unwrap(),
        PushQueued::Queued(_)
    ));
    assert!(meta
        .transition_build(
            "b1",
            BuildStatus::Pending,
            BuildStatus::Running,
            "running".into(),
            None
        )
        .await
        .unwrap());
    assert!(matches!(
        meta.queue_push_build(push_build("b5", "h1", main, &sha('d')), 10)
            .await
            .unwrap(),
        PushQueued::Queued(_)
    ));
    // Over the per-tool limit: refused, and the commit is not seen.
    let e = meta
        .queue_push_build(push_build("b6", "h1", "refs/heads/x", &sha('e')), 3)
        .await
        .unwrap_err();
    assert!(matches!(
        e,
        StorageError::LimitReached {
            limit: "queued_per_tool",
            ..
        }
    ));
    assert!(matches!(
        meta.queue_push_build(push_build("b6", "h1", "refs/heads/x", &sha('e')), 10)
            .await
            .unwrap(),
        PushQueued::Queued(_)
    ));
    // A build that is not a push's is refused, not queued.
    let mut manual = push_build("b7", "h1", "refs/heads/y", &sha('f'));
    manual.trigger = BuildTrigger::Manual;
    assert!(matches!(
        meta.queue_push_build(manual, 10).await,
        Err(StorageError::Internal(_))
    ));
    // Only the newest SEEN_COMMITS_KEPT commits are remembered: the
    // oldest fall out (a..e, strictly older than what follows), and a
    // replay of one is queued again.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    for n in 0..SEEN_COMMITS_KEPT as usize {
        meta.queue_push_build(push_build(&format!("k{n}"), "h1", main, &commit(n)), 10)
            .await
            .unwrap();
    }
    assert!(matches!(
        meta.queue_push_build(push_build("b8", "h1", main, &sha('a')), 10)
            .await
            .unwrap(),
        PushQueued::Coalesced { .. }
    ));
    meta.close().await;
}

async fn a_trigger_is_created_updated_rotated_and_deleted(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let meta = Place::new(backend).metadata(dir.path()).await;
    let t = TriggerRecord {
        id: "a".repeat(32),
        tool: "t".into(),
        source_url: "https://git.example.org/t.git".into(),
        ref_pattern: None,
        image_name: None,
        envvars: BTreeMap::from([("K".to_string(), "v".to_string())]),
        generation: 1,
        created_ms: 1,
        updated_ms: 1,
    };
    let (stored, created) = meta.put_trigger(t.clone()).await.unwrap();
    assert!(created);
    assert_eq!(stored, t);
    assert_eq!(meta.trigger_of_tool("t").await.unwrap(), Some(t.clone()));
    let again = TriggerRecord {
        id: "b".repeat(32),
        ref_pattern: Some("release/*".into()),
        image_name: Some("web".into()),
        envvars: BTreeMap::new(),
        created_ms: 2,
        updated_ms: 2,
        ..t.clone()
    };
    let (stored, created) = meta.put_trigger(again).await.unwrap();
    assert!(!created);
    assert_eq!(stored.id, t.id, "the hook id stays");
    assert_eq!(stored.ref_pattern.as_deref(), Some("release/*"));
    assert_eq!(stored.image_name.as_deref(), Some("web"));
    assert!(stored.envvars.is_empty());
    assert_eq!((stored.created_ms, stored.updated_ms), (1, 2));
    assert_eq!(meta.trigger_by_hook(&"b".repeat(32)).await.unwrap(), None);
    let rotated = meta.rotate_trigger("t").await.unwrap().unwrap();
    assert_eq!(rotated.generation, 2);
    assert_eq!(meta.trigger_by_hook(&t.id).await.unwrap(), Some(rotated));
    // Deleting forgets the commits it saw, and keeps the builds.
    meta.queue_push_build(push_build("p1", &t.id, "refs/heads/main", &sha('a')), 10)
        .await
        .unwrap();
    assert!(meta.delete_trigger("t").await.unwrap());
    assert!(!meta.delete_trigger("t").await.unwrap());
    assert_eq!(meta.trigger_of_tool("t").await.unwrap(), None);
    assert_eq!(meta.rotate_trigger("t").await.unwrap(), None);
    assert!(meta.build("p1").await.unwrap().is_some());
    assert!(meta
        .transition_build(
            "p1",
            BuildStatus::Pending,
            BuildStatus::Running,
            "running".into(),
            None
        )
        .await
        .unwrap());
    assert!(matches!(
        meta.queue_push_build(push_build("p2", &t.id, "refs/heads/main", &sha('a')), 10)
            .await
            .unwrap(),
        PushQueued::Queued(_)
    ));
    meta.close().await;
}

/// What started a build survives the round trip through every listing.
async fn manual_and_push_builds_read_back_what_started_them(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let meta = Place::new(backend).metadata(dir.path()).await;
    let mut manual = push_build("m1", "h1", "main", &sha('a'));
    manual.trigger = BuildTrigger::Manual;
    manual.trigger_id = None;
    manual.params.commit = None;
    meta.insert_build(manual).await.unwrap();
    meta.queue_push_build(push_build("p1", "h1", "refs/heads/main", &sha('b')), 10)
        .await
        .unwrap();
    let all = meta.builds_of("t").await.unwrap();
    assert_eq!(all.len(), 2);
    for b in all
        .iter()
        .chain(meta.pending_builds().await.unwrap().iter())
        .chain(meta.active_builds().await.unwrap().iter())
        .chain(meta.recent_builds(10).await.unwrap().iter())
    {
        match b.id.as_str() {
            "m1" => {
                assert_eq!(b.trigger, BuildTrigger::Manual);
                assert_eq!(b.trigger_id, None);
                assert_eq!(b.params.commit, None);
            }
            "p1" => {
                assert_eq!(
                    b.trigger,
                    BuildTrigger::Push {
                        commit: sha('b'),
                        reference: "refs/heads/main".into(),
                        pusher: "someone".into()
                    }
                );
                assert_eq!(b.trigger_id.as_deref(), Some("h1"));
                assert_eq!(b.params.commit, Some(sha('b')));
            }
            other => panic!("unexpected build {other}"),
        }
    }
    meta.close().await;
}

/// Twenty pushes of distinct commits to one ref at once, half through
/// each handle: one build is queued and every other push coalesces onto
/// it (never two waiting builds of one ref); the build ends up with one
/// of the pushed commits, and every commit was either queued or replaced
/// exactly once.
async fn concurrent_pushes_to_one_ref_queue_one_build(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let place = Place::new(backend);
    let (a, b) = two(&place, dir.path()).await;
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let meta = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move {
                meta.queue_push_build(
                    push_build(&format!("b{i}"), "h1", "refs/heads/main", &commit(i)),
                    100,
                )
                .await
                .unwrap()
            })
        })
        .collect();
    let (mut queued, mut replaced) = (0, BTreeSet::new());
    for t in tasks {
        match t.await.unwrap() {
            PushQueued::Queued(_) => queued += 1,
            PushQueued::Coalesced { replaced: r, .. } => assert!(replaced.insert(r)),
            PushQueued::Replay => panic!("no commit was pushed twice"),
        }
    }
    assert_eq!(queued, 1, "one build for the ref");
    let pending = pending_of(&a, "t").await;
    assert_eq!(pending.len(), 1, "{pending:?}");
    let last = pending[0].resolved_ref.clone();
    assert!(!replaced.contains(&last));
    replaced.insert(last);
    assert_eq!(replaced, (0..20).map(commit).collect());
    a.close().await;
    b.close().await;
}

/// One delivery handed to both replicas several times at once (a forge
/// retrying): it queues once; every other attempt is a replay.
async fn a_replayed_delivery_queues_once_whichever_replica_takes_it(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let place = Place::new(backend);
    let (a, b) = two(&place, dir.path()).await;
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let meta = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move {
                meta.queue_push_build(
                    push_build(&format!("r{i}"), "h1", "refs/heads/main", &sha('a')),
                    100,
                )
                .await
                .unwrap()
            })
        })
        .collect();
    let mut outcomes = BTreeMap::new();
    for t in tasks {
        let kind = match t.await.unwrap() {
            PushQueued::Queued(_) => "queued",
            PushQueued::Coalesced { .. } => "coalesced",
            PushQueued::Replay => "replay",
        };
        *outcomes.entry(kind).or_insert(0) += 1;
    }
    assert_eq!(outcomes, BTreeMap::from([("queued", 1), ("replay", 11)]));
    assert_eq!(a.builds_of("t").await.unwrap().len(), 1);
    a.close().await;
    b.close().await;
}

/// Pushes to twelve refs at once against `queued_per_tool = 4`: exactly
/// four builds are queued; the others are refused and leave no build and
/// no seen commit (they queue once there is room).
async fn concurrent_pushes_keep_queued_per_tool(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let place = Place::new(backend);
    let (a, b) = two(&place, dir.path()).await;
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let meta = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move {
                let r = meta
                    .queue_push_build(
                        push_build(
                            &format!("q{i}"),
                            "h1",
                            &format!("refs/heads/r{i}"),
                            &commit(i),
                        ),
                        4,
                    )
                    .await;
                (i, r)
            })
        })
        .collect();
    let mut refused = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            (_, Ok(PushQueued::Queued(_))) => {}
            (
                i,
                Err(StorageError::LimitReached {
                    limit: "queued_per_tool",
                    ..
                }),
            ) => refused.push(i),
            (_, other) => panic!("{other:?}"),
        }
    }
    assert_eq!(refused.len(), 8);
    assert_eq!(a.unfinished_builds("t").await.unwrap(), 4);
    let i = refused[0];
    assert!(matches!(
        b.queue_push_build(
            push_build(
                &format!("q{i}"),
                "h1",
                &format!("refs/heads/r{i}"),
                &commit(i)
            ),
            5
        )
        .await
        .unwrap(),
        PushQueued::Queued(_)
    ));
    a.close().await;
    b.close().await;
}

/// Pushes to one ref race a dispatcher that takes whatever build of the
/// tool is waiting (pending to running, then reads the build again, as
/// `berth-builds` does). A build the dispatcher took never changes
/// afterwards: what it read after taking it is what it keeps. Every
/// pushed commit is accounted for once: taken to run, still waiting, or
/// replaced while it waited.
async fn coalescing_never_changes_a_build_the_dispatcher_took(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let place = Place::new(backend);
    let (a, b) = two(&place, dir.path()).await;
    let pushes: Vec<_> = (0..40)
        .map(|i| {
            let meta = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move {
                meta.queue_push_build(
                    push_build(&format!("c{i}"), "h1", "refs/heads/main", &commit(i)),
                    1000,
                )
                .await
                .unwrap()
            })
        })
        .collect();
    let dispatcher = {
        let meta = b.clone();
        tokio::spawn(async move {
            let mut taken: Vec<BuildRecord> = Vec::new();
            for _ in 0..200 {
                for w in meta.pending_builds().await.unwrap() {
                    if meta
                        .transition_build(
                            &w.id,
                            BuildStatus::Pending,
                            BuildStatus::Running,
                            "running".into(),
                            None,
                        )
                        .await
                        .unwrap()
                    {
                        taken.push(meta.build(&w.id).await.unwrap().unwrap());
                    }
                }
                tokio::task::yield_now().await;
            }
            taken
        })
    };
    let mut replaced = Vec::new();
    for p in pushes {
        match p.await.unwrap() {
            PushQueued::Queued(_) => {}
            PushQueued::Coalesced { replaced: r, .. } => replaced.push(r),
            PushQueued::Replay => panic!("no commit was pushed twice"),
        }
    }
    let taken = dispatcher.await.unwrap();
    let mut accounted = replaced.clone();
    for t in &taken {
        let now = a.build(&t.id).await.unwrap().unwrap();
        assert_eq!(
            (&now.resolved_ref, &now.params.commit, &now.trigger),
            (&t.resolved_ref, &t.params.commit, &t.trigger),
            "build {} changed after the dispatcher took it",
            t.id
        );
        accounted.push(t.resolved_ref.clone());
    }
    let pending = pending_of(&a, "t").await;
    assert!(pending.len() <= 1, "one waiting build per ref: {pending:?}");
    accounted.extend(pending.iter().map(|p| p.resolved_ref.clone()));
    accounted.sort();
    let mut all: Vec<String> = (0..40).map(commit).collect();
    all.sort();
    assert_eq!(
        accounted, all,
        "every commit once: taken, waiting or replaced"
    );
    a.close().await;
    b.close().await;
}

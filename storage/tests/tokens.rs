//! API tokens on each metadata backend: the per-owner cap, live-name
//! uniqueness, purging of long-expired tokens, listings by id, the
//! rate-limited record of use, and revocation confined to an owner.

use berth_storage::meta::{ApiToken, CreateTokenOutcome, TokenOwner, TokenScope};
use berth_storage::now_ms;
use support::{Backend, Place};

#[macro_use]
mod support;

for_each_backend!(
    cap_names_purge_listing_and_revocation,
    concurrent_creations_keep_the_cap
);

fn new(id: &str, name: &str, namespace: Option<&str>, expires_ms: i64) -> ApiToken {
    ApiToken {
        id: id.into(),
        name: name.into(),
        namespace: namespace.map(str::to_owned),
        scope: if namespace.is_some() {
            TokenScope::Push
        } else {
            TokenScope::Admin
        },
        secret_hash: vec![7; 32],
        created_ms: now_ms(),
        expires_ms,
        last_used_ms: None,
        created_by: "admin".into(),
    }
}

async fn cap_names_purge_listing_and_revocation(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let meta = Place::new(backend).metadata(dir.path()).await;
    let later = now_ms() + 3_600_000;
    let create = |t: ApiToken| meta.create_api_token(t, 3, now_ms() - 1000);
    assert_eq!(
        create(new("a1", "ci", Some("tool-a"), later))
            .await
            .unwrap(),
        CreateTokenOutcome::Created
    );
    assert_eq!(
        create(new("a1", "other", Some("tool-a"), later))
            .await
            .unwrap(),
        CreateTokenOutcome::IdTaken
    );
    assert_eq!(
        create(new("a2", "ci", Some("tool-a"), later))
            .await
            .unwrap(),
        CreateTokenOutcome::NameTaken("a1".into())
    );
    // The same name elsewhere (another namespace, the admin) is fine.
    for t in [
        new("b1", "ci", Some("tool-b"), later),
        new("x1", "ci", None, later),
    ] {
        assert_eq!(create(t).await.unwrap(), CreateTokenOutcome::Created);
    }
    // An expired token's name is free again; it still counts until purged.
    let just_expired = now_ms() - 10;
    assert_eq!(
        create(new("a2", "old", Some("tool-a"), just_expired))
            .await
            .unwrap(),
        CreateTokenOutcome::Created
    );
    assert_eq!(
        create(new("a3", "old", Some("tool-a"), later))
            .await
            .unwrap(),
        CreateTokenOutcome::Created
    );
    assert_eq!(
        create(new("a4", "more", Some("tool-a"), later))
            .await
            .unwrap(),
        CreateTokenOutcome::LimitReached(3)
    );
    // Once long expired, it is purged by the next creation.
    assert_eq!(
        meta.create_api_token(new("a4", "more", Some("tool-a"), later), 3, now_ms())
            .await
            .unwrap(),
        CreateTokenOutcome::Created
    );
    assert!(meta.api_token("a2").await.unwrap().is_none());

    let ids = |v: Vec<ApiToken>| v.into_iter().map(|t| t.id).collect::<Vec<_>>();
    assert_eq!(
        ids(meta
            .api_tokens(TokenOwner::Namespace("tool-a".into()), None, 10)
            .await
            .unwrap()),
        ["a1", "a3", "a4"]
    );
    assert_eq!(
        ids(meta.api_tokens(TokenOwner::Admin, None, 10).await.unwrap()),
        ["x1"]
    );
    assert_eq!(
        ids(meta
            .api_tokens(TokenOwner::All, Some("a3".into()), 2)
            .await
            .unwrap()),
        ["a4", "b1"]
    );

    let t = meta.api_token("a1").await.unwrap().unwrap();
    assert_eq!(t.namespace.as_deref(), Some("tool-a"));
    assert_eq!(t.scope, TokenScope::Push);
    assert_eq!(t.last_used_ms, None);
    meta.api_token_used("a1", None).await.unwrap();
    let used = meta.api_token("a1").await.unwrap().unwrap().last_used_ms;
    assert!(used.is_some());
    // Within the interval nothing is written.
    meta.api_token_used("a1", Some(now_ms() - 10))
        .await
        .unwrap();
    assert_eq!(
        meta.api_token("a1").await.unwrap().unwrap().last_used_ms,
        used
    );

    // Revocation within a namespace cannot reach another's token.
    assert!(!meta
        .delete_api_token("b1", Some(Some("tool-a".into())))
        .await
        .unwrap());
    assert!(!meta
        .delete_api_token("x1", Some(Some("tool-a".into())))
        .await
        .unwrap());
    assert!(!meta.delete_api_token("b1", Some(None)).await.unwrap());
    assert!(meta.delete_api_token("x1", Some(None)).await.unwrap());
    assert!(meta.api_token("x1").await.unwrap().is_none());
    assert!(meta
        .delete_api_token("a1", Some(Some("tool-a".into())))
        .await
        .unwrap());
    assert!(!meta.delete_api_token("a1", None).await.unwrap());
    meta.close().await;
}

/// Two handles on one database (two replicas, for PostgreSQL) creating
/// tokens for one namespace at once: the cap holds.
async fn concurrent_creations_keep_the_cap(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let place = Place::new(backend);
    let a = place.metadata(dir.path()).await;
    let b = place.metadata(dir.path()).await;
    let later = now_ms() + 3_600_000;
    let mut tasks = Vec::new();
    for i in 0..12 {
        let meta = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            meta.create_api_token(
                new(&format!("c{i:02}"), &format!("n{i}"), Some("tool-c"), later),
                5,
                0,
            )
            .await
            .unwrap()
        }));
    }
    let mut created = 0;
    for t in tasks {
        match t.await.unwrap() {
            CreateTokenOutcome::Created => created += 1,
            CreateTokenOutcome::LimitReached(n) => assert_eq!(n, 5),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(created, 5);
    assert_eq!(
        a.api_tokens(TokenOwner::Namespace("tool-c".into()), None, 100)
            .await
            .unwrap()
            .len(),
        5
    );
    a.close().await;
    b.close().await;
}

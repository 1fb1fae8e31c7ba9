//! The web console's storage questions on each metadata backend: the
//! quota list paged and sorted in SQL agrees with `quota_list`, tags carry
//! their image sizes, and usage sampling records changes only and keeps
//! its history bounded.

use berth_storage::meta::console::{QuotaQuery, QuotaSort, SampleRetention};
use berth_storage::meta::{FixtureBlob, FixtureManifest, FixtureRepo, LimitSetting, QuotaPolicy};
use berth_storage::Metadata;
use support::{Backend, Place};

#[macro_use]
mod support;

for_each_backend!(
    quota_pages_agree_with_the_full_list,
    tags_carry_image_sizes,
    sampling_records_changes_and_stays_bounded,
);

const DAY: i64 = 24 * 3600 * 1000;

fn repo(ns: &str, n: u64, manifests: u64) -> FixtureRepo {
    let now = 1_700_000_000_000i64;
    let mut links = Vec::new();
    let mut ms = Vec::new();
    for m in 0..manifests {
        let layer = format!("sha256:{:064x}", n * 1000 + m);
        links.push(FixtureBlob {
            digest: layer.clone(),
            size: 1000 * (n + 1) + m,
            at_ms: now,
        });
        ms.push(FixtureManifest {
            digest: format!("sha256:{:064x}", 1_000_000 + n * 1000 + m),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            bytes: b"{}".to_vec(),
            size: 100,
            pushed_ms: now + m as i64,
            blobs: vec![layer],
            tags: vec![format!("v{m}")],
        });
    }
    FixtureRepo {
        name: format!("{ns}/app"),
        created_ms: now,
        links,
        manifests: ms,
    }
}

async fn world(backend: Backend, dir: &std::path::Path, namespaces: u64) -> Metadata {
    let meta = Place::new(backend).metadata(dir).await;
    meta.set_quota_policy(QuotaPolicy {
        default_limit: Some(20_000),
        unlimited: ["ns-003".to_owned()].into_iter().collect(),
        alert_percent: None,
    });
    meta.bulk_load((0..namespaces).map(|n| repo(&format!("ns-{n:03}"), n, 1 + n % 3)))
        .await
        .unwrap();
    meta.reconcile_quota().await.unwrap();
    meta
}

async fn quota_pages_agree_with_the_full_list(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let meta = world(backend, dir.path(), 40).await;
    meta.set_quota_limit("ns-005", LimitSetting::Bytes(1))
        .await
        .unwrap();
    meta.set_quota_limit("ns-006", LimitSetting::Unlimited)
        .await
        .unwrap();
    let all = meta.quota_list().await.unwrap();
    assert_eq!(all.len(), 40);

    // Largest first, paged: the pages put together are the full list.
    let mut paged = Vec::new();
    for page in 0..4 {
        let p = meta
            .quota_page(QuotaQuery {
                sort: QuotaSort::Used,
                descending: true,
                offset: page * 12,
                limit: 12,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!((p.total, p.matching), (40, 40));
        paged.extend(p.rows);
    }
    assert_eq!(paged.len(), 40);
    for (a, b) in paged.iter().zip(&all) {
        assert_eq!(a.namespace, b.namespace);
        assert_eq!(
            (a.used_bytes, a.limit_bytes, a.percent, a.repositories),
            (b.used_bytes, b.limit_bytes, b.percent, b.repositories)
        );
    }

    // "over 90%" is the admin API's filter.
    let over = meta
        .quota_page(QuotaQuery {
            min_percent: Some(90.0),
            sort: QuotaSort::Percent,
            descending: true,
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut want: Vec<_> = all
        .iter()
        .filter(|q| q.limit_bytes.is_some() && q.percent >= 90.0)
        .map(|q| q.namespace.clone())
        .collect();
    let mut got: Vec<_> = over.rows.iter().map(|q| q.namespace.clone()).collect();
    assert_eq!(over.matching as usize, want.len());
    assert_eq!(got[0], "ns-005", "1 byte of limit: the fullest");
    want.sort();
    got.sort();
    assert_eq!(got, want);
    assert!(!got.contains(&"ns-003".to_owned()) && !got.contains(&"ns-006".to_owned()));

    // Unlimited sorts above every limit; names filter by substring.
    let by_limit = meta
        .quota_page(QuotaQuery {
            sort: QuotaSort::Limit,
            descending: true,
            limit: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    let top: Vec<_> = by_limit.rows.iter().map(|q| q.namespace.as_str()).collect();
    assert_eq!(top, ["ns-003", "ns-006"]);
    let named = meta
        .quota_page(QuotaQuery {
            sort: QuotaSort::Name,
            name_contains: Some("-01".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(named.matching, 10);
    assert_eq!(named.rows[0].namespace, "ns-010");
    assert_eq!(named.rows[9].namespace, "ns-019");
    let by_repos = meta
        .quota_page(QuotaQuery {
            sort: QuotaSort::Repositories,
            limit: 5,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_repos.rows.len(), 5);
    assert!(by_repos.rows.iter().all(|q| q.repositories == 1));
    meta.close().await;
}

async fn tags_carry_image_sizes(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let meta = world(backend, dir.path(), 3).await;
    let (total, tags) = meta.namespace_tags("ns-002", 0, 10).await.unwrap();
    assert_eq!(total, 3);
    // Newest first; each image is its manifest plus its one layer.
    let names: Vec<_> = tags.iter().map(|t| t.tag.as_str()).collect();
    assert_eq!(names, ["v2", "v1", "v0"]);
    assert_eq!(tags[0].bytes, 100 + 3002);
    assert_eq!(tags[0].repository, "ns-002/app");
    let (_, page) = meta.namespace_tags("ns-002", 2, 10).await.unwrap();
    assert_eq!(page.len(), 1);
    meta.close().await;
}

async fn sampling_records_changes_and_stays_bounded(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let meta = world(backend, dir.path(), 20).await;
    let keep = SampleRetention {
        keep_ms: 30 * DAY,
        max_rows: 1000,
    };
    let t0 = 1_800_000_000_000i64;
    let first = meta.sample_usage(t0, keep).await.unwrap();
    assert_eq!(first.recorded, 20);
    assert!(first.totals.linked_bytes >= first.totals.stored_bytes);
    assert_eq!(first.totals.namespaces, 20);
    // Nothing changed: nothing recorded but the totals.
    let second = meta.sample_usage(t0 + 3_600_000, keep).await.unwrap();
    assert_eq!(second.recorded, 0);
    assert_eq!(meta.usage_sample_rows().await.unwrap(), 20);
    meta.set_quota_limit("ns-001", LimitSetting::Bytes(5))
        .await
        .unwrap();
    let mut more = repo("ns-001", 77, 2);
    more.name = "ns-001/other".into();
    meta.bulk_load([more]).await.unwrap();
    meta.reconcile_quota().await.unwrap();
    let third = meta.sample_usage(t0 + 7_200_000, keep).await.unwrap();
    assert_eq!(third.recorded, 1);
    let series = meta.usage_series("ns-001", t0 - DAY).await.unwrap();
    assert_eq!(series.len(), 2);
    assert!(series[1].bytes > series[0].bytes);
    // Starting later, the series begins with the value it had then.
    let later = meta.usage_series("ns-001", t0 + 1000).await.unwrap();
    assert_eq!(later[0].at_ms, t0 + 1000);
    assert_eq!(later[0].bytes, series[0].bytes);
    assert_eq!(meta.usage_totals(0).await.unwrap().len(), 3);

    // 40 days on: old samples go, each namespace keeps its newest.
    let much_later = t0 + 40 * DAY;
    let pruned = meta.sample_usage(much_later, keep).await.unwrap();
    assert_eq!(pruned.pruned, 1, "ns-001's first sample");
    assert_eq!(meta.usage_sample_rows().await.unwrap(), 20);
    assert_eq!(meta.usage_totals(0).await.unwrap().len(), 1);
    assert_eq!(
        meta.latest_usage_totals().await.unwrap().unwrap().at_ms,
        much_later
    );

    // The row cap holds whatever the retention says.
    let tight = SampleRetention {
        keep_ms: 30 * DAY,
        max_rows: 5,
    };
    meta.sample_usage(much_later + 1, tight).await.unwrap();
    assert_eq!(meta.usage_sample_rows().await.unwrap(), 5);
    meta.close().await;
}

//! GC's liveness rule as a table (distribution's garbagecollect_test.go is
//! the model), on each metadata backend: each case builds a small world
//! in a real SQLite file or PostgreSQL database through
//! the storage API, plans an untagged GC, runs the checked deletions the
//! way berth-gc does, and checks that the plan names exactly the expected
//! manifests, links and blobs, and that the checked deletions remove
//! exactly what the plan named. No sleeps: grace periods are cutoffs.

use berth_storage::manifest::{self, OCI_INDEX, OCI_MANIFEST};
use berth_storage::meta::{DoomedManifest, GcPlan, PutManifestOutcome};
use berth_storage::{now_ms, Digest, RepoName, Storage};
use std::collections::{BTreeMap, BTreeSet};
use support::{Backend, Place};

#[macro_use]
mod support;

for_each_backend!(
    tagged_images_live_untagged_ones_go_with_what_only_they_used,
    nothing_goes_within_the_grace_period,
    a_blob_stays_while_another_repository_links_it,
    a_tagged_index_keeps_its_children_an_untagged_one_takes_them_along,
    a_child_of_a_tagged_index_and_of_an_untagged_one_lives,
    referrers_live_and_die_with_their_subject_chains_included,
    a_pinned_untagged_image_lives_with_its_blobs,
    uploaded_blobs_no_manifest_names_go_once_past_grace,
    a_manifest_that_just_lost_its_tag_keeps_its_grace,
    a_push_after_the_plan_wins_over_the_checked_deletion,
);

/// A little world: labelled blobs and manifests in real storage.
struct World {
    s: Storage,
    names: BTreeMap<String, String>,
    _dir: tempfile::TempDir,
}

fn repo(name: &str) -> RepoName {
    RepoName::parse(name).unwrap()
}

impl World {
    async fn new(backend: Backend) -> World {
        let dir = tempfile::tempdir().unwrap();
        let s = Place::new(backend).storage(dir.path()).await;
        World {
            s,
            names: BTreeMap::new(),
            _dir: dir,
        }
    }

    fn label(&mut self, digest: &Digest, label: &str) {
        self.names.insert(digest.to_string(), label.to_owned());
    }

    fn name(&self, digest: &str) -> String {
        self.names
            .get(digest)
            .cloned()
            .unwrap_or_else(|| digest.to_owned())
    }

    /// Links blob `label` into `repo` (the rows an upload leaves).
    async fn blob(&mut self, r: &str, label: &str) -> Digest {
        let d = Digest::sha256_of(format!("blob {label}").as_bytes());
        self.label(&d, label);
        self.s
            .meta
            .link_blob(&repo(r), &d, 10, ())
            .await
            .unwrap()
            .unwrap();
        d
    }

    async fn put(
        &mut self,
        r: &str,
        label: &str,
        body: serde_json::Value,
        tag: Option<&str>,
    ) -> Digest {
        let bytes = serde_json::to_vec(&body).unwrap();
        let d = Digest::sha256_of(&bytes);
        self.label(&d, label);
        let parsed = manifest::parse(&bytes, None).unwrap();
        let out = self
            .s
            .meta
            .put_manifest(
                &repo(r),
                &d,
                parsed,
                bytes,
                tag.map(|t| vec![t.to_owned()]).unwrap_or_default(),
                "test",
            )
            .await
            .unwrap();
        assert!(
            matches!(out, PutManifestOutcome::Stored),
            "{label}: {out:?}"
        );
        d
    }

    /// An image `label` in `r`: its own config, the given layers, an
    /// optional subject, optionally tagged.
    async fn image(
        &mut self,
        r: &str,
        label: &str,
        layers: &[&str],
        subject: Option<&Digest>,
        tag: Option<&str>,
    ) -> Digest {
        let config = self.blob(r, &format!("{label}.config")).await;
        let mut descs = Vec::new();
        for l in layers {
            let d = self.blob(r, l).await;
            descs.push(serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d.to_string(), "size": 10}));
        }
        let mut body = serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.to_string(), "size": 10},
            "layers": descs,
        });
        if let Some(s) = subject {
            body["subject"] =
                serde_json::json!({"mediaType": OCI_MANIFEST, "digest": s.to_string(), "size": 1});
        }
        self.put(r, label, body, tag).await
    }

    async fn index(
        &mut self,
        r: &str,
        label: &str,
        children: &[&Digest],
        tag: Option<&str>,
    ) -> Digest {
        let body = serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_INDEX,
            "manifests": children.iter().map(|c| serde_json::json!({"mediaType": OCI_MANIFEST, "digest": c.to_string(), "size": 1})).collect::<Vec<_>>(),
            "annotations": {"label": label},
        });
        self.put(r, label, body, tag).await
    }

    async fn untag(&self, r: &str, tag: &str) {
        assert!(self.s.meta.delete_tag(&repo(r), tag, "test").await.unwrap());
    }

    async fn pin(&self, r: &str, d: &Digest) {
        self.s
            .meta
            .add_pin(r, &d.to_string(), "running")
            .await
            .unwrap();
    }

    fn describe(&self, plan: &GcPlan) -> Outcome {
        Outcome {
            manifests: plan
                .manifests
                .iter()
                .map(|m| format!("{}@{}", m.repository, self.name(&m.digest)))
                .collect(),
            links: plan
                .links
                .iter()
                .map(|l| format!("{}@{}", l.repository, self.name(&l.digest)))
                .collect(),
            blobs: plan.blobs.iter().map(|b| self.name(&b.digest)).collect(),
        }
    }

    /// Plans with everything past its grace, runs the checked deletions
    /// as berth-gc does, and returns (planned, deleted).
    async fn collect(&self, cutoff: i64) -> (Outcome, Outcome) {
        let plan = self.s.meta.gc_plan(cutoff, cutoff).await.unwrap();
        let planned = self.describe(&plan);
        // Manifests: repeat over what was skipped until nothing more goes
        // (holders before what they hold), in small batches.
        let mut deleted = GcPlan::default();
        let mut pending: Vec<DoomedManifest> = plan.manifests.clone();
        loop {
            let before = pending.len();
            let mut skipped = Vec::new();
            for batch in pending.chunks(2) {
                let gone = self
                    .s
                    .meta
                    .delete_manifests_checked(batch.to_vec(), cutoff)
                    .await
                    .unwrap();
                skipped.extend(batch.iter().filter(|m| !gone.contains(m)).cloned());
                deleted.manifests.extend(gone);
            }
            pending = skipped;
            if pending.is_empty() || pending.len() == before {
                break;
            }
        }
        let (links, _) = self
            .s
            .meta
            .delete_links_checked(plan.links.clone(), cutoff)
            .await
            .unwrap();
        deleted.links = links;
        deleted.blobs = self
            .s
            .meta
            .delete_blob_rows_checked(plan.blobs.clone(), cutoff)
            .await
            .unwrap();
        (planned, self.describe(&deleted))
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    manifests: BTreeSet<String>,
    links: BTreeSet<String>,
    blobs: BTreeSet<String>,
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn expect(manifests: &[&str], links: &[&str], blobs: &[&str]) -> Outcome {
    Outcome {
        manifests: set(manifests),
        links: set(links),
        blobs: set(blobs),
    }
}

/// Everything pushed so far is past its grace period.
fn past_grace() -> i64 {
    now_ms() + 3_600_000
}

async fn check(w: &World, cutoff: i64, want: Outcome) {
    let (planned, deleted) = w.collect(cutoff).await;
    assert_eq!(planned, want, "the plan");
    assert_eq!(deleted, want, "the checked deletions differ from the plan");
    // A second run finds nothing more: what is left all lives.
    let (again, _) = w.collect(cutoff).await;
    assert_eq!(again, expect(&[], &[], &[]), "a second run");
}

async fn tagged_images_live_untagged_ones_go_with_what_only_they_used(backend: Backend) {
    let mut w = World::new(backend).await;
    w.image("a/app", "kept", &["shared", "kept.layer"], None, Some("v1"))
        .await;
    w.image("a/app", "gone", &["shared", "gone.layer"], None, Some("v0"))
        .await;
    w.untag("a/app", "v0").await;
    check(
        &w,
        past_grace(),
        expect(
            &["a/app@gone"],
            &["a/app@gone.config", "a/app@gone.layer"],
            &["gone.config", "gone.layer"],
        ),
    )
    .await;
}

async fn nothing_goes_within_the_grace_period(backend: Backend) {
    let mut w = World::new(backend).await;
    w.image("a/app", "fresh", &["l1"], None, Some("v0")).await;
    w.untag("a/app", "v0").await;
    w.blob("a/app", "uploaded.only").await;
    // Cutoffs before everything happened: all of it is within grace.
    check(&w, 0, expect(&[], &[], &[])).await;
}

async fn a_blob_stays_while_another_repository_links_it(backend: Backend) {
    let mut w = World::new(backend).await;
    w.image("a/one", "old", &["common"], None, None).await;
    w.image("b/two", "kept", &["common"], None, Some("latest"))
        .await;
    check(
        &w,
        past_grace(),
        expect(
            &["a/one@old"],
            &["a/one@old.config", "a/one@common"],
            &["old.config"],
        ),
    )
    .await;
}

async fn a_tagged_index_keeps_its_children_an_untagged_one_takes_them_along(backend: Backend) {
    let mut w = World::new(backend).await;
    let amd = w
        .image("a/multi", "amd64", &["amd.layer"], None, None)
        .await;
    let arm = w
        .image("a/multi", "arm64", &["arm.layer"], None, None)
        .await;
    w.index("a/multi", "index", &[&amd, &arm], Some("v1")).await;
    let old_amd = w
        .image("a/old", "old-amd64", &["old.layer"], None, None)
        .await;
    w.index("a/old", "old-index", &[&old_amd], None).await;
    check(
        &w,
        past_grace(),
        expect(
            &["a/old@old-index", "a/old@old-amd64"],
            &["a/old@old-amd64.config", "a/old@old.layer"],
            &["old-amd64.config", "old.layer"],
        ),
    )
    .await;
}

async fn a_child_of_a_tagged_index_and_of_an_untagged_one_lives(backend: Backend) {
    let mut w = World::new(backend).await;
    let child = w.image("a/x", "child", &[], None, None).await;
    w.index("a/x", "tagged-index", &[&child], Some("v1")).await;
    w.index("a/x", "untagged-index", &[&child], None).await;
    check(&w, past_grace(), expect(&["a/x@untagged-index"], &[], &[])).await;
}

async fn referrers_live_and_die_with_their_subject_chains_included(backend: Backend) {
    let mut w = World::new(backend).await;
    let subject = w.image("a/s", "subject", &[], None, Some("v1")).await;
    let sig = w.image("a/s", "signature", &[], Some(&subject), None).await;
    w.image("a/s", "sig-of-sig", &[], Some(&sig), None).await;
    let dead = w.image("a/s", "dead-subject", &[], None, None).await;
    let sbom = w.image("a/s", "dead-sbom", &[], Some(&dead), None).await;
    w.image("a/s", "dead-sbom-sig", &[], Some(&sbom), None)
        .await;
    check(
        &w,
        past_grace(),
        expect(
            &["a/s@dead-subject", "a/s@dead-sbom", "a/s@dead-sbom-sig"],
            &[
                "a/s@dead-subject.config",
                "a/s@dead-sbom.config",
                "a/s@dead-sbom-sig.config",
            ],
            &[
                "dead-subject.config",
                "dead-sbom.config",
                "dead-sbom-sig.config",
            ],
        ),
    )
    .await;
}

async fn a_pinned_untagged_image_lives_with_its_blobs(backend: Backend) {
    let mut w = World::new(backend).await;
    let running = w
        .image("tool-a/web", "running", &["run.layer"], None, Some("old"))
        .await;
    w.untag("tool-a/web", "old").await;
    w.pin("tool-a/web", &running).await;
    w.image("tool-a/web", "not-running", &[], None, None).await;
    check(
        &w,
        past_grace(),
        expect(
            &["tool-a/web@not-running"],
            &["tool-a/web@not-running.config"],
            &["not-running.config"],
        ),
    )
    .await;
}

async fn uploaded_blobs_no_manifest_names_go_once_past_grace(backend: Backend) {
    let mut w = World::new(backend).await;
    w.blob("a/up", "orphan").await;
    w.image("a/up", "img", &["used"], None, Some("v1")).await;
    check(&w, past_grace(), expect(&[], &["a/up@orphan"], &["orphan"])).await;
}

async fn a_manifest_that_just_lost_its_tag_keeps_its_grace(backend: Backend) {
    let mut w = World::new(backend).await;
    w.image("a/m", "moved-from", &[], None, Some("latest"))
        .await;
    let before_untag = now_ms();
    w.untag("a/m", "latest").await;
    // Pushed before the cutoff but released after it: within grace.
    check(&w, before_untag, expect(&[], &[], &[])).await;
    check(
        &w,
        past_grace(),
        expect(
            &["a/m@moved-from"],
            &["a/m@moved-from.config"],
            &["moved-from.config"],
        ),
    )
    .await;
}

async fn a_push_after_the_plan_wins_over_the_checked_deletion(backend: Backend) {
    let mut w = World::new(backend).await;
    let img = w
        .image("a/race", "raced", &["race.layer"], None, None)
        .await;
    let cutoff = past_grace();
    let plan = w.s.meta.gc_plan(cutoff, cutoff).await.unwrap();
    assert_eq!(plan.manifests.len(), 1);
    // A client tags the manifest between the plan and the deletion.
    let bytes =
        w.s.meta
            .get_manifest(&repo("a/race"), &img.to_string(), true, true)
            .await
            .unwrap()
            .unwrap()
            .bytes
            .clone();
    let parsed = manifest::parse(&bytes, None).unwrap();
    w.s.meta
        .put_manifest(
            &repo("a/race"),
            &img,
            parsed,
            bytes,
            vec!["v1".into()],
            "test",
        )
        .await
        .unwrap();
    let gone =
        w.s.meta
            .delete_manifests_checked(plan.manifests.clone(), cutoff)
            .await
            .unwrap();
    assert!(gone.is_empty(), "a re-tagged manifest was deleted");
    let (links, _) =
        w.s.meta
            .delete_links_checked(plan.links.clone(), cutoff)
            .await
            .unwrap();
    assert!(links.is_empty(), "links of a live manifest were removed");
    let blobs =
        w.s.meta
            .delete_blob_rows_checked(plan.blobs.clone(), cutoff)
            .await
            .unwrap();
    assert!(blobs.is_empty());
    let _ = w.name(""); // labels are only for messages
}

//! Pushes and pulls on PostgreSQL (`sqlite/queries.rs` is the reference).
//! Every write that checks something and then changes it holds its
//! namespace's row lock (`quota::lock_namespace`) from before the check to
//! the commit, so checks cannot be overtaken by another replica's write.
//! No manifest cache: with several processes writing, a cache here would
//! need invalidation across them (a later phase); a manifest read is one
//! indexed query.

use super::quota;
use super::{col, exec, exists, opt, rows, transaction, unsigned, Postgres};
use crate::digest::Digest;
use crate::manifest::ParsedManifest;
use crate::meta::types::*;
use crate::names::RepoName;
use crate::{now_ms, StorageError};
use deadpool_postgres::GenericClient;

async fn repo_id(c: &impl GenericClient, repo: &str) -> Result<Option<i64>, StorageError> {
    match opt(c, "SELECT id FROM repositories WHERE name = $1", &[&repo]).await? {
        Some(r) => Ok(Some(col(&r, 0)?)),
        None => Ok(None),
    }
}

/// The repository's id, creating it (and its namespace row) when new. A
/// concurrent creation of the same name is waited for, not duplicated.
async fn ensure_repo(
    c: &impl GenericClient,
    repo: &RepoName,
    now: i64,
) -> Result<i64, StorageError> {
    if let Some(id) = repo_id(c, repo.as_str()).await? {
        return Ok(id);
    }
    quota::ensure_namespace(c, repo.namespace(), now).await?;
    if let Some(r) = opt(
        c,
        "INSERT INTO repositories (name, namespace, created_ms) VALUES ($1, $2, $3)
         ON CONFLICT (name) DO NOTHING RETURNING id",
        &[&repo.as_str(), &repo.namespace(), &now],
    )
    .await?
    {
        return col(&r, 0);
    }
    repo_id(c, repo.as_str())
        .await?
        .ok_or_else(|| StorageError::Internal(format!("repository {repo} vanished while created")))
}

/// Links `digest` into repository `repo_id` of namespace `ns`, charging
/// the namespace if this is its first link of the blob. The caller holds
/// `ns`'s lock. Nothing changes when the charge is refused.
async fn link(
    c: &impl GenericClient,
    policy: &QuotaPolicy,
    repo_id: i64,
    ns: &str,
    digest: &str,
    size: u64,
    now: i64,
) -> Result<Result<(), QuotaExceeded>, StorageError> {
    let already_linked = exists(
        c,
        "SELECT 1 FROM repo_blobs WHERE repo_id = $1 AND digest = $2",
        &[&repo_id, &digest],
    )
    .await?;
    if !already_linked {
        let cost = if quota::namespace_has_blob(c, ns, digest).await? {
            0
        } else {
            size
        };
        if let Err(refused) = quota::charge(c, policy, ns, cost).await? {
            return Ok(Err(refused));
        }
        quota::count_link(c, ns, digest).await?;
    }
    // The upsert locks the blob row: a GC deletion of it waits for this
    // commit and then finds it used (or, if it went first, this inserts it
    // anew; the object is protected by the digest's lock).
    exec(
        c,
        "INSERT INTO blobs (digest, size, created_ms, touched_ms) VALUES ($1, $2, $3, $3)
         ON CONFLICT (digest) DO UPDATE SET touched_ms = excluded.touched_ms",
        &[&digest, &super::big(size), &now],
    )
    .await?;
    exec(
        c,
        "INSERT INTO repo_blobs (repo_id, digest, linked_ms) VALUES ($1, $2, $3)
         ON CONFLICT (repo_id, digest) DO UPDATE SET linked_ms = excluded.linked_ms",
        &[&repo_id, &digest, &now],
    )
    .await?;
    Ok(Ok(()))
}

/// Removes a blob link; `None` when there was none, else the bytes the
/// namespace gets back (the caller releases them). The caller holds the
/// namespace's lock.
pub(super) async fn remove_link(
    c: &impl GenericClient,
    repo_id: i64,
    ns: &str,
    digest: &str,
) -> Result<Option<u64>, StorageError> {
    let n = exec(
        c,
        "DELETE FROM repo_blobs WHERE repo_id = $1 AND digest = $2",
        &[&repo_id, &digest],
    )
    .await?;
    if n == 0 {
        return Ok(None);
    }
    if !quota::count_unlink(c, ns, digest).await? {
        return Ok(Some(0));
    }
    Ok(Some(
        match opt(c, "SELECT size FROM blobs WHERE digest = $1", &[&digest]).await? {
            Some(r) => unsigned(&r, 0)?,
            None => 0,
        },
    ))
}

/// Marks that a manifest lost a tag (or its pin) now: its untagged grace
/// restarts. In `manifest_releases`, not the manifest's row (migration 14).
pub(super) async fn released(
    c: &impl GenericClient,
    repo_id: i64,
    digest: &str,
    now: i64,
) -> Result<(), StorageError> {
    exec(
        c,
        "INSERT INTO manifest_releases (repo_id, digest, released_ms) VALUES ($1, $2, $3)
         ON CONFLICT (repo_id, digest) DO UPDATE SET released_ms = excluded.released_ms",
        &[&repo_id, &digest, &now],
    )
    .await?;
    Ok(())
}

/// Removes what goes with a deleted manifest row: its references and its
/// release time.
pub(super) async fn delete_manifest_dependents(
    c: &impl GenericClient,
    repo_id: i64,
    digest: &str,
) -> Result<(), StorageError> {
    for sql in [
        "DELETE FROM manifest_refs WHERE repo_id = $1 AND manifest_digest = $2",
        "DELETE FROM manifest_releases WHERE repo_id = $1 AND digest = $2",
    ] {
        exec(c, sql, &[&repo_id, &digest]).await?;
    }
    Ok(())
}

async fn repo_namespace(
    c: &impl GenericClient,
    repo: &str,
) -> Result<Option<(i64, String)>, StorageError> {
    match opt(
        c,
        "SELECT id, namespace FROM repositories WHERE name = $1",
        &[&repo],
    )
    .await?
    {
        Some(r) => Ok(Some((col(&r, 0)?, col(&r, 1)?))),
        None => Ok(None),
    }
}

impl Postgres {
    pub async fn ping(&self) -> Result<(), StorageError> {
        let c = self.client().await?;
        super::one(&c, "SELECT 1", &[]).await?;
        Ok(())
    }

    pub async fn repository_exists(&self, repo: &RepoName) -> Result<bool, StorageError> {
        let c = self.client().await?;
        Ok(repo_id(&c, repo.as_str()).await?.is_some())
    }

    pub async fn linked_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<LinkedBlob>, StorageError> {
        let c = self.client().await?;
        match opt(
            &c,
            "SELECT b.size, b.touched_ms,
                    EXISTS (SELECT 1 FROM blob_data d WHERE d.digest = rb.digest)
             FROM repo_blobs rb
             JOIN repositories r ON r.id = rb.repo_id
             JOIN blobs b ON b.digest = rb.digest
             WHERE r.name = $1 AND rb.digest = $2",
            &[&repo.as_str(), &digest.to_string()],
        )
        .await?
        {
            Some(r) => Ok(Some(LinkedBlob {
                size: unsigned(&r, 0)?,
                touched_ms: col(&r, 1)?,
                inline: col(&r, 2)?,
            })),
            None => Ok(None),
        }
    }

    pub async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>, StorageError> {
        let c = self.client().await?;
        match opt(
            &c,
            "SELECT size FROM blobs WHERE digest = $1",
            &[&digest.to_string()],
        )
        .await?
        {
            Some(r) => Ok(Some(unsigned(&r, 0)?)),
            None => Ok(None),
        }
    }

    /// `held` is dropped inside the transaction, its last step before the
    /// commit (as on SQLite: what it reserves is given back as the charge
    /// becomes visible); an attempt retried after a deadlock ran its
    /// statements again still holding it.
    pub async fn link_blob<H: Send + 'static>(
        &self,
        repo: &RepoName,
        digest: &Digest,
        size: u64,
        held: H,
    ) -> Result<Result<(), QuotaExceeded>, StorageError> {
        let digest = digest.to_string();
        let policy = self.quota_policy();
        let mut held = Some(held);
        transaction!(
            self,
            keep = |r: &Result<(), QuotaExceeded>| r.is_ok(),
            |tx| {
                let now = now_ms();
                quota::lock_namespace(&tx, repo.namespace()).await?;
                let id = ensure_repo(&tx, repo, now).await?;
                let linked = link(&tx, &policy, id, repo.namespace(), &digest, size, now).await?;
                drop(held.take());
                Ok(linked)
            }
        )
    }

    /// The blob row, its bytes and the link (with the charge) in one
    /// transaction under the namespace's lock: nothing to place first and
    /// nothing left behind when the charge is refused. No digest lock: there
    /// is no object. A GC deleting the blob row meanwhile is ordered by the
    /// row (the upsert waits for its commit, then inserts the row and the
    /// bytes anew; a GC that comes second waits and finds the link).
    pub async fn link_inline_blob<H: Send + 'static>(
        &self,
        repo: &RepoName,
        digest: &Digest,
        data: bytes::Bytes,
        held: H,
    ) -> Result<Result<(), QuotaExceeded>, StorageError> {
        let digest = digest.to_string();
        let policy = self.quota_policy();
        let mut held = Some(held);
        let bytes: &[u8] = &data;
        transaction!(
            self,
            keep = |r: &Result<(), QuotaExceeded>| r.is_ok(),
            |tx| {
                let now = now_ms();
                quota::lock_namespace(&tx, repo.namespace()).await?;
                let id = ensure_repo(&tx, repo, now).await?;
                let size = bytes.len() as u64;
                let linked = link(&tx, &policy, id, repo.namespace(), &digest, size, now).await?;
                if linked.is_ok() {
                    exec(
                        &tx,
                        "INSERT INTO blob_data (digest, data) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                        &[&digest, &bytes],
                    )
                    .await?;
                }
                drop(held.take());
                Ok(linked)
            }
        )
    }

    /// As SQLite's: `link_blob` or `link_inline_blob`, deleting the
    /// finished upload's session row (its staged bytes) in the charging
    /// transaction, under the namespace's lock like every charge.
    pub async fn link_uploaded_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        size: u64,
        data: Option<bytes::Bytes>,
        session: &str,
    ) -> Result<Result<(), QuotaExceeded>, StorageError> {
        let digest = digest.to_string();
        let policy = self.quota_policy();
        let bytes: Option<&[u8]> = data.as_deref();
        transaction!(
            self,
            keep = |r: &Result<(), QuotaExceeded>| r.is_ok(),
            |tx| {
                let now = now_ms();
                quota::lock_namespace(&tx, repo.namespace()).await?;
                let id = ensure_repo(&tx, repo, now).await?;
                let linked = link(&tx, &policy, id, repo.namespace(), &digest, size, now).await?;
                if linked.is_ok() {
                    if let Some(bytes) = bytes {
                        exec(
                            &tx,
                            "INSERT INTO blob_data (digest, data) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                            &[&digest, &bytes],
                        )
                        .await?;
                    }
                    exec(
                        &tx,
                        "DELETE FROM upload_sessions WHERE id = $1",
                        &[&session],
                    )
                    .await?;
                }
                Ok(linked)
            }
        )
    }

    pub async fn inline_blob(&self, digest: &Digest) -> Result<Option<bytes::Bytes>, StorageError> {
        let c = self.client().await?;
        match opt(
            &c,
            "SELECT data FROM blob_data WHERE digest = $1",
            &[&digest.to_string()],
        )
        .await?
        {
            Some(r) => Ok(Some(bytes::Bytes::from(col::<Vec<u8>>(&r, 0)?))),
            None => Ok(None),
        }
    }

    /// The source link's blob row is read `FOR SHARE`: GC cannot delete
    /// it between this read and the new link (it waits, then sees the
    /// use); if GC deleted it first, the mount finds nothing (202).
    pub async fn mount_blob(
        &self,
        from: &RepoName,
        to: &RepoName,
        digest: &Digest,
    ) -> Result<Option<Result<u64, QuotaExceeded>>, StorageError> {
        let digest = digest.to_string();
        let policy = self.quota_policy();
        transaction!(
            self,
            keep = |m: &Option<Result<u64, QuotaExceeded>>| !matches!(m, Some(Err(_))),
            |tx| {
                quota::lock_namespace(&tx, to.namespace()).await?;
                let size = match opt(
                    &tx,
                    "SELECT b.size FROM repo_blobs rb
                     JOIN repositories r ON r.id = rb.repo_id
                     JOIN blobs b ON b.digest = rb.digest
                     WHERE r.name = $1 AND rb.digest = $2
                     FOR SHARE OF b",
                    &[&from.as_str(), &digest],
                )
                .await?
                {
                    Some(r) => unsigned(&r, 0)?,
                    None => return Ok(None),
                };
                let now = now_ms();
                let id = ensure_repo(&tx, to, now).await?;
                Ok(Some(
                    link(&tx, &policy, id, to.namespace(), &digest, size, now)
                        .await?
                        .map(|()| size),
                ))
            }
        )
    }

    pub async fn unlink_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<UnlinkBlobOutcome, StorageError> {
        let digest = digest.to_string();
        transaction!(self, |tx| {
            quota::lock_namespace(&tx, repo.namespace()).await?;
            let Some((id, ns)) = repo_namespace(&tx, repo.as_str()).await? else {
                return Ok(UnlinkBlobOutcome::NotFound);
            };
            if let Some(r) = opt(
                &tx,
                "SELECT manifest_digest FROM manifest_refs
                 WHERE repo_id = $1 AND child_digest = $2 AND kind = 'blob' LIMIT 1",
                &[&id, &digest],
            )
            .await?
            {
                return Ok(UnlinkBlobOutcome::ReferencedByManifest(col(&r, 0)?));
            }
            Ok(match remove_link(&tx, id, &ns, &digest).await? {
                Some(freed) => {
                    quota::release(&tx, &ns, freed).await?;
                    UnlinkBlobOutcome::Unlinked
                }
                None => UnlinkBlobOutcome::NotFound,
            })
        })
    }

    pub async fn get_manifest(
        &self,
        repo: &RepoName,
        reference: &str,
        by_digest: bool,
        with_bytes: bool,
    ) -> Result<Option<StoredManifest>, StorageError> {
        let c = self.client().await?;
        let body = if with_bytes { "m.bytes" } else { "''::bytea" };
        let sql = if by_digest {
            format!(
                "SELECT m.digest, m.media_type, m.size, {body} FROM manifests m
                 JOIN repositories r ON r.id = m.repo_id
                 WHERE r.name = $1 AND m.digest = $2"
            )
        } else {
            format!(
                "SELECT m.digest, m.media_type, m.size, {body} FROM tags t
                 JOIN repositories r ON r.id = t.repo_id
                 JOIN manifests m ON m.repo_id = t.repo_id AND m.digest = t.digest
                 WHERE r.name = $1 AND t.name = $2"
            )
        };
        match opt(&c, &sql, &[&repo.as_str(), &reference]).await? {
            Some(r) => Ok(Some(StoredManifest {
                digest: col(&r, 0)?,
                media_type: col(&r, 1)?,
                size: unsigned(&r, 2)?,
                bytes: col(&r, 3)?,
            })),
            None => Ok(None),
        }
    }

    /// Checks and insert under the namespace's lock: GC's deletion of a
    /// link or a manifest this one names takes the same lock, so either
    /// it committed first (and the check fails: MissingBlob) or it waits
    /// and then finds the new references.
    pub async fn put_manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
        parsed: ParsedManifest,
        bytes: Vec<u8>,
        tags: Vec<String>,
        actor: &str,
    ) -> Result<PutManifestOutcome, StorageError> {
        let digest = digest.to_string();
        let policy = self.quota_policy();
        let feed = self.events_on();
        let subject = parsed.subject.as_ref().map(|s| s.to_string());
        let size = bytes.len() as i64;
        // Blob rows are touched in digest order, as GC deletes them.
        let mut blobs: Vec<String> = parsed.blobs.iter().map(|b| b.to_string()).collect();
        blobs.sort();
        blobs.dedup();
        transaction!(
            self,
            keep = |o: &PutManifestOutcome| matches!(o, PutManifestOutcome::Stored),
            |tx| {
                let now = now_ms();
                quota::lock_namespace(&tx, repo.namespace()).await?;
                let id = ensure_repo(&tx, repo, now).await?;
                for b in &parsed.blobs {
                    if !exists(
                        &tx,
                        "SELECT 1 FROM repo_blobs WHERE repo_id = $1 AND digest = $2",
                        &[&id, &b.to_string()],
                    )
                    .await?
                    {
                        return Ok(PutManifestOutcome::MissingBlob(b.clone()));
                    }
                }
                for m in &parsed.children {
                    if !exists(
                        &tx,
                        "SELECT 1 FROM manifests WHERE repo_id = $1 AND digest = $2",
                        &[&id, &m.to_string()],
                    )
                    .await?
                    {
                        return Ok(PutManifestOutcome::MissingManifest(m.clone()));
                    }
                }
                let existed = exists(
                    &tx,
                    "SELECT 1 FROM manifests WHERE repo_id = $1 AND digest = $2",
                    &[&id, &digest],
                )
                .await?;
                if !existed {
                    if let Err(refused) =
                        quota::charge(&tx, &policy, repo.namespace(), bytes.len() as u64).await?
                    {
                        return Ok(PutManifestOutcome::QuotaExceeded(refused));
                    }
                }
                let inserted = exec(
                    &tx,
                    "INSERT INTO manifests (repo_id, digest, media_type, artifact_type, subject,
                                        size, bytes, annotations, pushed_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                 ON CONFLICT (repo_id, digest) DO NOTHING",
                    &[
                        &id,
                        &digest,
                        &parsed.media_type,
                        &parsed.artifact_type,
                        &subject,
                        &size,
                        &bytes,
                        &parsed.annotations,
                        &now,
                    ],
                )
                .await?;
                if existed {
                    // A re-push is a fresh use: restart the grace period.
                    exec(
                        &tx,
                        "UPDATE manifests SET pushed_ms = $3 WHERE repo_id = $1 AND digest = $2",
                        &[&id, &digest, &now],
                    )
                    .await?;
                }
                if inserted == 1 {
                    for b in &parsed.blobs {
                        exec(
                        &tx,
                        "INSERT INTO manifest_refs (repo_id, manifest_digest, child_digest, kind)
                         VALUES ($1, $2, $3, 'blob') ON CONFLICT DO NOTHING",
                        &[&id, &digest, &b.to_string()],
                    )
                    .await?;
                    }
                    for m in &parsed.children {
                        exec(
                        &tx,
                        "INSERT INTO manifest_refs (repo_id, manifest_digest, child_digest, kind)
                         VALUES ($1, $2, $3, 'manifest') ON CONFLICT DO NOTHING",
                        &[&id, &digest, &m.to_string()],
                    )
                    .await?;
                    }
                    for b in &blobs {
                        super::liveness::record_blob_use(&tx, b, now).await?;
                    }
                }
                for t in &tags {
                    if let Some(r) = opt(
                        &tx,
                        "SELECT digest FROM tags WHERE repo_id = $1 AND name = $2",
                        &[&id, t],
                    )
                    .await?
                    {
                        let old: String = col(&r, 0)?;
                        if old != digest {
                            released(&tx, id, &old, now).await?;
                        }
                    }
                    exec(
                    &tx,
                    "INSERT INTO tags (repo_id, name, digest, updated_ms) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (repo_id, name) DO UPDATE
                     SET digest = excluded.digest, updated_ms = excluded.updated_ms",
                    &[&id, t, &digest, &now],
                )
                .await?;
                }
                let pushed = |tag: Option<&String>| NewEvent {
                    action: "push".into(),
                    repository: Some(repo.as_str().to_owned()),
                    digest: Some(digest.clone()),
                    tag: tag.cloned(),
                    media_type: Some(parsed.media_type.clone()),
                    size: Some(bytes.len() as u64),
                    actor: Some(actor.to_owned()),
                    detail: None,
                };
                if tags.is_empty() {
                    super::events::record(&tx, feed, &pushed(None)).await?;
                }
                for t in &tags {
                    super::events::record(&tx, feed, &pushed(Some(t))).await?;
                }
                Ok(PutManifestOutcome::Stored)
            }
        )
    }

    pub async fn delete_manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
        actor: &str,
    ) -> Result<DeleteManifestOutcome, StorageError> {
        let digest = digest.to_string();
        let feed = self.events_on();
        transaction!(self, |tx| {
            quota::lock_namespace(&tx, repo.namespace()).await?;
            let Some((id, ns)) = repo_namespace(&tx, repo.as_str()).await? else {
                return Ok(DeleteManifestOutcome::NotFound);
            };
            if let Some(r) = opt(
                &tx,
                "SELECT manifest_digest FROM manifest_refs
                 WHERE repo_id = $1 AND child_digest = $2 AND kind = 'manifest' LIMIT 1",
                &[&id, &digest],
            )
            .await?
            {
                return Ok(DeleteManifestOutcome::ReferencedByIndex(col(&r, 0)?));
            }
            let Some(r) = opt(
                &tx,
                "DELETE FROM manifests WHERE repo_id = $1 AND digest = $2 RETURNING size",
                &[&id, &digest],
            )
            .await?
            else {
                return Ok(DeleteManifestOutcome::NotFound);
            };
            let size = unsigned(&r, 0)?;
            quota::release(&tx, &ns, size).await?;
            delete_manifest_dependents(&tx, id, &digest).await?;
            exec(
                &tx,
                "DELETE FROM tags WHERE repo_id = $1 AND digest = $2",
                &[&id, &digest],
            )
            .await?;
            super::events::record(
                &tx,
                feed,
                &NewEvent {
                    action: "delete".into(),
                    repository: Some(repo.as_str().to_owned()),
                    digest: Some(digest.clone()),
                    size: Some(size),
                    actor: Some(actor.to_owned()),
                    ..Default::default()
                },
            )
            .await?;
            Ok(DeleteManifestOutcome::Deleted)
        })
    }

    /// The tag's row is deleted with `RETURNING`: a concurrent move of the
    /// same tag is waited for, and the digest released is the one deleted.
    pub async fn delete_tag(
        &self,
        repo: &RepoName,
        tag: &str,
        actor: &str,
    ) -> Result<bool, StorageError> {
        let feed = self.events_on();
        transaction!(self, |tx| {
            let Some(id) = repo_id(&tx, repo.as_str()).await? else {
                return Ok(false);
            };
            let Some(r) = opt(
                &tx,
                "DELETE FROM tags WHERE repo_id = $1 AND name = $2 RETURNING digest",
                &[&id, &tag],
            )
            .await?
            else {
                return Ok(false);
            };
            let old: String = col(&r, 0)?;
            released(&tx, id, &old, now_ms()).await?;
            super::events::record(
                &tx,
                feed,
                &NewEvent {
                    action: "delete".into(),
                    repository: Some(repo.as_str().to_owned()),
                    digest: Some(old),
                    tag: Some(tag.to_owned()),
                    actor: Some(actor.to_owned()),
                    ..Default::default()
                },
            )
            .await?;
            Ok(true)
        })
    }

    pub async fn list_tags(
        &self,
        repo: &RepoName,
        last: Option<String>,
        limit: u32,
    ) -> Result<Option<Vec<String>>, StorageError> {
        let c = self.client().await?;
        let Some(id) = repo_id(&c, repo.as_str()).await? else {
            return Ok(None);
        };
        let tags = rows(
            &c,
            "SELECT name FROM tags WHERE repo_id = $1 AND name COLLATE \"C\" > $2 ORDER BY name COLLATE \"C\" LIMIT $3",
            &[&id, &last.unwrap_or_default(), &i64::from(limit)],
        )
        .await?
        .iter()
        .map(|r| col(r, 0))
        .collect::<Result<Vec<String>, _>>()?;
        Ok(Some(tags))
    }

    pub async fn catalog(
        &self,
        last: Option<String>,
        limit: u32,
    ) -> Result<Vec<String>, StorageError> {
        let c = self.client().await?;
        rows(
            &c,
            "SELECT name FROM repositories WHERE name COLLATE \"C\" > $1 ORDER BY name COLLATE \"C\" LIMIT $2",
            &[&last.unwrap_or_default(), &i64::from(limit)],
        )
        .await?
        .iter()
        .map(|r| col(r, 0))
        .collect()
    }

    pub async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<String>,
    ) -> Result<Vec<Referrer>, StorageError> {
        let c = self.client().await?;
        let mut out = Vec::new();
        for r in rows(
            &c,
            "SELECT m.digest, m.media_type, m.size, m.artifact_type, m.annotations
             FROM manifests m JOIN repositories r ON r.id = m.repo_id
             WHERE r.name = $1 AND m.subject = $2
               AND ($3::text IS NULL OR m.artifact_type = $3)
             ORDER BY m.digest",
            &[&repo.as_str(), &subject.to_string(), &artifact_type],
        )
        .await?
        {
            out.push(Referrer {
                digest: col(&r, 0)?,
                media_type: col(&r, 1)?,
                size: unsigned(&r, 2)?,
                artifact_type: col(&r, 3)?,
                annotations: col(&r, 4)?,
            });
        }
        Ok(out)
    }

    // ------------------------------------------------------ accounts ----

    pub async fn set_namespace_secret(
        &self,
        namespace: &str,
        secret_hash: String,
    ) -> Result<bool, StorageError> {
        transaction!(self, |tx| {
            let r = super::one(
                &tx,
                "INSERT INTO principals (name, kind, namespace, secret_hash, created_ms, rotated_ms)
                 VALUES ($1, 'namespace', $1, $2, $3, $3)
                 ON CONFLICT (name) DO UPDATE SET secret_hash = excluded.secret_hash,
                                                  rotated_ms = excluded.rotated_ms
                 RETURNING xmax = 0",
                &[&namespace, &secret_hash, &now_ms()],
            )
            .await?;
            super::shared::notify(&tx, "credentials").await?;
            // `xmax = 0`: the row was inserted, not updated (PostgreSQL's
            // documented way for an upsert to tell which it did).
            col::<bool>(&r, 0)
        })
    }

    pub async fn delete_namespace_account(&self, namespace: &str) -> Result<bool, StorageError> {
        transaction!(self, |tx| {
            let n = exec(
                &tx,
                "DELETE FROM principals WHERE name = $1 AND kind = 'namespace'",
                &[&namespace],
            )
            .await?;
            if n > 0 {
                super::shared::notify(&tx, "credentials").await?;
                // Its console sessions end with it, on every replica.
                exec(
                    &tx,
                    "DELETE FROM ui_sessions WHERE principal = $1",
                    &[&namespace],
                )
                .await?;
            }
            Ok(n > 0)
        })
    }

    pub async fn namespace_account(
        &self,
        name: &str,
    ) -> Result<Option<NamespaceAccount>, StorageError> {
        let c = self.client().await?;
        match opt(
            &c,
            "SELECT name, namespace, secret_hash, created_ms, rotated_ms FROM principals
             WHERE name = $1 AND kind = 'namespace'",
            &[&name],
        )
        .await?
        {
            Some(r) => Ok(Some(NamespaceAccount {
                name: col(&r, 0)?,
                namespace: col(&r, 1)?,
                secret_hash: col(&r, 2)?,
                created_ms: col(&r, 3)?,
                rotated_ms: col(&r, 4)?,
            })),
            None => Ok(None),
        }
    }
}

//! The registry's SQL, one method per question or change. Writes re-check
//! their preconditions inside their own transaction; the write thread
//! serialises them, so a check and the change it guards cannot interleave
//! with another write.

use super::quota;
use super::Sqlite;
use crate::digest::Digest;
use crate::manifest::ParsedManifest;
use crate::meta::types::*;
use crate::names::RepoName;
use crate::{now_ms, StorageError};
use rusqlite::{params, Connection, OptionalExtension};

fn repo_id(conn: &Connection, repo: &str) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached("SELECT id FROM repositories WHERE name = ?1")?
        .query_row([repo], |r| r.get(0))
        .optional()
}

fn ensure_repo(conn: &Connection, repo: &RepoName, now: i64) -> rusqlite::Result<i64> {
    if let Some(id) = repo_id(conn, repo.as_str())? {
        return Ok(id);
    }
    conn.prepare_cached(
        "INSERT INTO repositories (name, namespace, created_ms) VALUES (?1, ?2, ?3)",
    )?
    .execute(params![repo.as_str(), repo.namespace(), now])?;
    let id = conn.last_insert_rowid();
    quota::ensure_namespace(conn, repo.namespace(), now)?;
    Ok(id)
}

/// Links `digest` into repository `repo_id` of namespace `ns`, charging the
/// namespace if this is its first link of the blob. Nothing changes when
/// the charge is refused.
fn link(
    conn: &Connection,
    policy: &QuotaPolicy,
    repo_id: i64,
    ns: &str,
    digest: &str,
    size: u64,
    now: i64,
) -> rusqlite::Result<Result<(), QuotaExceeded>> {
    let already_linked = conn
        .prepare_cached("SELECT 1 FROM repo_blobs WHERE repo_id = ?1 AND digest = ?2")?
        .exists(params![repo_id, digest])?;
    if !already_linked {
        let cost = if quota::namespace_has_blob(conn, ns, digest)? {
            0
        } else {
            size
        };
        if let Err(refused) = quota::charge(conn, policy, ns, cost)? {
            return Ok(Err(refused));
        }
        quota::count_link(conn, ns, digest)?;
    }
    conn.prepare_cached(
        "INSERT INTO blobs (digest, size, created_ms, touched_ms) VALUES (?1, ?2, ?3, ?3)
         ON CONFLICT (digest) DO UPDATE SET touched_ms = excluded.touched_ms",
    )?
    .execute(params![digest, size as i64, now])?;
    conn.prepare_cached(
        "INSERT INTO repo_blobs (repo_id, digest, linked_ms) VALUES (?1, ?2, ?3)
         ON CONFLICT DO UPDATE SET linked_ms = excluded.linked_ms",
    )?
    .execute(params![repo_id, digest, now])?;
    Ok(Ok(()))
}

/// Removes a blob link. `None` when there was none; otherwise the bytes the
/// namespace gets back (the blob's size if this was its last link of the
/// blob, else 0), which the caller releases from the ledger in the same
/// transaction (GC releases once per namespace per batch).
pub(super) fn remove_link(
    conn: &Connection,
    repo_id: i64,
    ns: &str,
    digest: &str,
) -> rusqlite::Result<Option<u64>> {
    let n = conn
        .prepare_cached("DELETE FROM repo_blobs WHERE repo_id = ?1 AND digest = ?2")?
        .execute(params![repo_id, digest])?;
    if n == 0 {
        return Ok(None);
    }
    if !quota::count_unlink(conn, ns, digest)? {
        return Ok(Some(0));
    }
    let size: i64 = conn
        .prepare_cached("SELECT size FROM blobs WHERE digest = ?1")?
        .query_row([digest], |r| r.get(0))
        .optional()?
        .unwrap_or(0);
    Ok(Some(size.max(0) as u64))
}

/// Marks that a manifest lost a tag (or its pin) now: its untagged grace
/// period restarts, so a pull that resolved the old tag moments ago can
/// finish. In `manifest_releases`, not the manifest's row (migration 14).
pub(super) fn released(
    conn: &Connection,
    repo_id: i64,
    digest: &str,
    now: i64,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO manifest_releases (repo_id, digest, released_ms) VALUES (?1, ?2, ?3)
         ON CONFLICT (repo_id, digest) DO UPDATE SET released_ms = excluded.released_ms",
    )?
    .execute(params![repo_id, digest, now])?;
    Ok(())
}

/// Removes a manifest's rows (the manifest, its references, its release
/// time); the caller has decided it goes and settles quota and tags.
pub(super) fn delete_manifest_rows(
    conn: &Connection,
    repo_id: i64,
    digest: &str,
) -> rusqlite::Result<()> {
    for sql in [
        "DELETE FROM manifests WHERE repo_id = ?1 AND digest = ?2",
        "DELETE FROM manifest_refs WHERE repo_id = ?1 AND manifest_digest = ?2",
        "DELETE FROM manifest_releases WHERE repo_id = ?1 AND digest = ?2",
    ] {
        conn.prepare_cached(sql)?
            .execute(params![repo_id, digest])?;
    }
    Ok(())
}

fn repo_namespace(conn: &Connection, repo: &str) -> rusqlite::Result<Option<(i64, String)>> {
    conn.prepare_cached("SELECT id, namespace FROM repositories WHERE name = ?1")?
        .query_row([repo], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
}

impl Sqlite {
    /// Answers when the database does (for `/healthz`).
    pub async fn ping(&self) -> Result<(), StorageError> {
        self.read(|c| Ok(c.query_row("SELECT 1", [], |_| Ok(()))?))
            .await
    }

    pub async fn repository_exists(&self, repo: &RepoName) -> Result<bool, StorageError> {
        let repo = repo.as_str().to_owned();
        self.read_point(move |c| Ok(repo_id(c, &repo)?.is_some()))
            .await
    }

    /// The blob if it is linked into `repo`.
    pub async fn linked_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<LinkedBlob>, StorageError> {
        let (repo, digest) = (repo.as_str().to_owned(), digest.to_string());
        self.read_point(move |c| {
            Ok(c.prepare_cached(
                "SELECT b.size, b.touched_ms,
                        EXISTS (SELECT 1 FROM blob_data d WHERE d.digest = rb.digest)
                 FROM repo_blobs rb
                 JOIN repositories r ON r.id = rb.repo_id
                 JOIN blobs b ON b.digest = rb.digest
                 WHERE r.name = ?1 AND rb.digest = ?2",
            )?
            .query_row(params![repo, digest], |r| {
                Ok(LinkedBlob {
                    size: r.get::<_, i64>(0)? as u64,
                    touched_ms: r.get(1)?,
                    inline: r.get(2)?,
                })
            })
            .optional()?)
        })
        .await
    }

    /// Size of a blob known to the registry in any repository.
    pub async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>, StorageError> {
        let digest = digest.to_string();
        self.read_point(move |c| {
            Ok(
                c.prepare_cached("SELECT size FROM blobs WHERE digest = ?1")?
                    .query_row([digest], |r| r.get::<_, i64>(0))
                    .optional()?
                    .map(|s| s as u64),
            )
        })
        .await
    }

    /// Links a blob whose object is already in the blob store into `repo`
    /// (object first, row second), creating the repository on first use.
    /// `held` is dropped inside the transaction, before it commits: what it
    /// reserves elsewhere (an upload's staged bytes, counted against the
    /// same quota) is given back before the charge is visible, so no
    /// reader ever counts the bytes twice.
    pub async fn link_blob<H: Send + 'static>(
        &self,
        repo: &RepoName,
        digest: &Digest,
        size: u64,
        held: H,
    ) -> Result<Result<(), QuotaExceeded>, StorageError> {
        let (repo, digest) = (repo.clone(), digest.to_string());
        let policy = self.quota_policy();
        self.write_if(Result::is_ok, move |tx| {
            let now = now_ms();
            let id = ensure_repo(tx, &repo, now)?;
            let linked = link(tx, &policy, id, repo.namespace(), &digest, size, now)?;
            drop(held);
            Ok(linked)
        })
        .await
    }

    /// Links a small blob whose bytes are kept in the database: the blob
    /// row, its bytes and the link (with the quota charge) in one
    /// transaction, so there is no object to write first and none to
    /// leave behind when the charge is refused. `held` as in `link_blob`.
    pub async fn link_inline_blob<H: Send + 'static>(
        &self,
        repo: &RepoName,
        digest: &Digest,
        data: bytes::Bytes,
        held: H,
    ) -> Result<Result<(), QuotaExceeded>, StorageError> {
        let (repo, digest) = (repo.clone(), digest.to_string());
        let policy = self.quota_policy();
        self.write_if(Result::is_ok, move |tx| {
            let now = now_ms();
            let id = ensure_repo(tx, &repo, now)?;
            let linked = link(
                tx,
                &policy,
                id,
                repo.namespace(),
                &digest,
                data.len() as u64,
                now,
            )?;
            if linked.is_ok() {
                tx.prepare_cached(
                    "INSERT INTO blob_data (digest, data) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                )?
                .execute(params![digest, &data[..]])?;
            }
            drop(held);
            Ok(linked)
        })
        .await
    }

    /// Links a finished upload of a shared session (`upload_sessions`):
    /// as `link_blob` (or `link_inline_blob` with `data`), and the session's
    /// row, whose bytes count as staged until then, is deleted in the same
    /// transaction when the charge is accepted: the staged bytes become
    /// stored bytes in one commit, as a `held` reservation does.
    pub async fn link_uploaded_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        size: u64,
        data: Option<bytes::Bytes>,
        session: &str,
    ) -> Result<Result<(), QuotaExceeded>, StorageError> {
        let (repo, digest, session) = (repo.clone(), digest.to_string(), session.to_owned());
        let policy = self.quota_policy();
        self.write_if(Result::is_ok, move |tx| {
            let now = now_ms();
            let id = ensure_repo(tx, &repo, now)?;
            let linked = link(tx, &policy, id, repo.namespace(), &digest, size, now)?;
            if linked.is_ok() {
                if let Some(data) = &data {
                    tx.prepare_cached(
                        "INSERT INTO blob_data (digest, data) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                    )?
                    .execute(params![digest, &data[..]])?;
                }
                tx.prepare_cached("DELETE FROM upload_sessions WHERE id = ?1")?
                    .execute([&session])?;
            }
            Ok(linked)
        })
        .await
    }

    /// The bytes of a blob kept in the database, if it is one.
    pub async fn inline_blob(&self, digest: &Digest) -> Result<Option<bytes::Bytes>, StorageError> {
        let digest = digest.to_string();
        self.read_point(move |c| {
            Ok(
                c.prepare_cached("SELECT data FROM blob_data WHERE digest = ?1")?
                    .query_row([digest], |r| r.get::<_, Vec<u8>>(0))
                    .optional()?
                    .map(bytes::Bytes::from),
            )
        })
        .await
    }

    /// Cross-repository mount: links `digest` into `to` if it is linked into
    /// `from`. Returns the blob's size when mounted; the inner error when
    /// `to`'s namespace has no room for it.
    pub async fn mount_blob(
        &self,
        from: &RepoName,
        to: &RepoName,
        digest: &Digest,
    ) -> Result<Option<Result<u64, QuotaExceeded>>, StorageError> {
        let (from, to, digest) = (from.as_str().to_owned(), to.clone(), digest.to_string());
        let policy = self.quota_policy();
        self.write_if(
            |mounted| !matches!(mounted, Some(Err(_))),
            move |tx| {
                let size: Option<i64> = tx
                    .prepare_cached(
                        "SELECT b.size FROM repo_blobs rb
                     JOIN repositories r ON r.id = rb.repo_id
                     JOIN blobs b ON b.digest = rb.digest
                     WHERE r.name = ?1 AND rb.digest = ?2",
                    )?
                    .query_row(params![from, digest], |r| r.get(0))
                    .optional()?;
                let Some(size) = size else { return Ok(None) };
                let now = now_ms();
                let id = ensure_repo(tx, &to, now)?;
                Ok(Some(
                    link(tx, &policy, id, to.namespace(), &digest, size as u64, now)?
                        .map(|()| size as u64),
                ))
            },
        )
        .await
    }

    /// Removes the link of `digest` from `repo` unless a manifest there needs
    /// it. The blob row and object stay for the blob sweep, which deletes
    /// them only once no repository links them.
    pub async fn unlink_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<UnlinkBlobOutcome, StorageError> {
        let (repo, digest) = (repo.as_str().to_owned(), digest.to_string());
        self.write(move |tx| {
            let Some((id, ns)) = repo_namespace(tx, &repo)? else {
                return Ok(UnlinkBlobOutcome::NotFound);
            };
            let user: Option<String> = tx
                .prepare_cached(
                    "SELECT manifest_digest FROM manifest_refs
                     WHERE repo_id = ?1 AND child_digest = ?2 AND kind = 'blob' LIMIT 1",
                )?
                .query_row(params![id, digest], |r| r.get(0))
                .optional()?;
            if let Some(m) = user {
                return Ok(UnlinkBlobOutcome::ReferencedByManifest(m));
            }
            Ok(match remove_link(tx, id, &ns, &digest)? {
                Some(freed) => {
                    quota::release(tx, &ns, freed)?;
                    UnlinkBlobOutcome::Unlinked
                }
                None => UnlinkBlobOutcome::NotFound,
            })
        })
        .await
    }

    /// Looks a manifest up by tag or digest. With `with_bytes == false` the
    /// body is not read (HEAD).
    pub async fn get_manifest(
        &self,
        repo: &RepoName,
        reference: &str,
        by_digest: bool,
        with_bytes: bool,
    ) -> Result<Option<StoredManifest>, StorageError> {
        if let Some(hit) = self.cached_manifest(repo.as_str(), reference) {
            let mut m = (*hit).clone();
            if !with_bytes {
                m.bytes = Vec::new();
            }
            return Ok(Some(m));
        }
        let read_generation = self.generation();
        let (repo, reference) = (repo.as_str().to_owned(), reference.to_owned());
        let (repo_key, reference_key) = (repo.clone(), reference.clone());
        // Always read the body: it is small, and caching it lets the HEADs
        // that clients send before every pull hit the cache too.
        let found = self
            .read_point(move |c| {
                let sql = if by_digest {
                    "SELECT m.digest, m.media_type, m.size, m.bytes FROM manifests m
                     JOIN repositories r ON r.id = m.repo_id
                     WHERE r.name = ?1 AND m.digest = ?2"
                } else {
                    "SELECT m.digest, m.media_type, m.size, m.bytes FROM tags t
                     JOIN repositories r ON r.id = t.repo_id
                     JOIN manifests m ON m.repo_id = t.repo_id AND m.digest = t.digest
                     WHERE r.name = ?1 AND t.name = ?2"
                };
                Ok(c.prepare_cached(sql)?
                    .query_row(params![repo, reference], |r| {
                        Ok(StoredManifest {
                            digest: r.get(0)?,
                            media_type: r.get(1)?,
                            size: r.get::<_, i64>(2)? as u64,
                            bytes: r.get(3)?,
                        })
                    })
                    .optional()?)
            })
            .await?;
        if let Some(m) = &found {
            self.cache_manifest(read_generation, &repo_key, &reference_key, m);
        }
        Ok(found.map(|mut m| {
            if !with_bytes {
                m.bytes = Vec::new();
            }
            m
        }))
    }

    /// Stores a manifest and points `tags` at it, after checking inside the
    /// same transaction that everything it references is present.
    /// `actor` (who pushed) goes into the change feed with the push.
    pub async fn put_manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
        parsed: ParsedManifest,
        bytes: Vec<u8>,
        tags: Vec<String>,
        actor: &str,
    ) -> Result<PutManifestOutcome, StorageError> {
        let (repo, digest, actor) = (repo.clone(), digest.to_string(), actor.to_owned());
        let policy = self.quota_policy();
        let feed = self.events_on();
        self.write_if(|o| matches!(o, PutManifestOutcome::Stored), move |tx| {
            let now = now_ms();
            let id = ensure_repo(tx, &repo, now)?;
            {
                let mut blob_linked = tx.prepare_cached(
                    "SELECT 1 FROM repo_blobs WHERE repo_id = ?1 AND digest = ?2",
                )?;
                for b in &parsed.blobs {
                    if !blob_linked.exists(params![id, b.to_string()])? {
                        return Ok(PutManifestOutcome::MissingBlob(b.clone()));
                    }
                }
                let mut manifest_exists = tx.prepare_cached(
                    "SELECT 1 FROM manifests WHERE repo_id = ?1 AND digest = ?2",
                )?;
                for m in &parsed.children {
                    if !manifest_exists.exists(params![id, m.to_string()])? {
                        return Ok(PutManifestOutcome::MissingManifest(m.clone()));
                    }
                }
            }
            let exists = tx
                .prepare_cached("SELECT 1 FROM manifests WHERE repo_id = ?1 AND digest = ?2")?
                .exists(params![id, digest])?;
            if !exists {
                if let Err(refused) = quota::charge(tx, &policy, repo.namespace(), bytes.len() as u64)? {
                    return Ok(PutManifestOutcome::QuotaExceeded(refused));
                }
            }
            let inserted = tx
                .prepare_cached(
                    "INSERT INTO manifests (repo_id, digest, media_type, artifact_type, subject,
                                            size, bytes, annotations, pushed_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                     ON CONFLICT (repo_id, digest) DO NOTHING",
                )?
                .execute(params![
                    id,
                    digest,
                    parsed.media_type,
                    parsed.artifact_type,
                    parsed.subject.as_ref().map(|s| s.to_string()),
                    bytes.len() as i64,
                    bytes,
                    parsed.annotations,
                    now
                ])?;
            if exists {
                // A re-push is a fresh use: restart the grace period.
                tx.prepare_cached("UPDATE manifests SET pushed_ms = ?3 WHERE repo_id = ?1 AND digest = ?2")?
                    .execute(params![id, digest, now])?;
            }
            if inserted == 1 {
                let mut add_ref = tx.prepare_cached(
                    "INSERT OR IGNORE INTO manifest_refs (repo_id, manifest_digest, child_digest, kind)
                     VALUES (?1, ?2, ?3, ?4)",
                )?;
                for b in &parsed.blobs {
                    add_ref.execute(params![id, digest, b.to_string(), "blob"])?;
                }
                for m in &parsed.children {
                    add_ref.execute(params![id, digest, m.to_string(), "manifest"])?;
                }
                // Referenced blobs were just used: restart their grace period.
                for b in &parsed.blobs {
                    super::liveness::record_blob_use(tx, &b.to_string(), now)?;
                }
            }
            let mut set_tag = tx.prepare_cached(
                "INSERT INTO tags (repo_id, name, digest, updated_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (repo_id, name) DO UPDATE
                 SET digest = excluded.digest, updated_ms = excluded.updated_ms",
            )?;
            let mut old_target = tx.prepare_cached("SELECT digest FROM tags WHERE repo_id = ?1 AND name = ?2")?;
            for t in &tags {
                let old: Option<String> = old_target.query_row(params![id, t], |r| r.get(0)).optional()?;
                if let Some(old) = old.filter(|o| *o != digest) {
                    released(tx, id, &old, now)?;
                }
                set_tag.execute(params![id, t, digest, now])?;
            }
            // One push event per tag it was pushed with (registry:2's way),
            // or one without a tag when pushed by digest.
            let pushed = |tag: Option<&String>| NewEvent {
                action: "push".into(),
                repository: Some(repo.as_str().to_owned()),
                digest: Some(digest.clone()),
                tag: tag.cloned(),
                media_type: Some(parsed.media_type.clone()),
                size: Some(bytes.len() as u64),
                actor: Some(actor.clone()),
                detail: None,
            };
            if tags.is_empty() {
                super::events::record(tx, feed, &pushed(None))?;
            }
            for t in &tags {
                super::events::record(tx, feed, &pushed(Some(t)))?;
            }
            Ok(PutManifestOutcome::Stored)
        })
        .await
    }

    /// Deletes a manifest and every tag pointing at it. Its blobs stay linked
    /// until the blob sweep finds that nothing needs them.
    pub async fn delete_manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
        actor: &str,
    ) -> Result<DeleteManifestOutcome, StorageError> {
        let (repo, digest, actor) = (
            repo.as_str().to_owned(),
            digest.to_string(),
            actor.to_owned(),
        );
        let feed = self.events_on();
        self.write(move |tx| {
            let Some((id, ns)) = repo_namespace(tx, &repo)? else {
                return Ok(DeleteManifestOutcome::NotFound);
            };
            let parent: Option<String> = tx
                .prepare_cached(
                    "SELECT manifest_digest FROM manifest_refs
                     WHERE repo_id = ?1 AND child_digest = ?2 AND kind = 'manifest' LIMIT 1",
                )?
                .query_row(params![id, digest], |r| r.get(0))
                .optional()?;
            if let Some(p) = parent {
                return Ok(DeleteManifestOutcome::ReferencedByIndex(p));
            }
            let size: Option<i64> = tx
                .prepare_cached("SELECT size FROM manifests WHERE repo_id = ?1 AND digest = ?2")?
                .query_row(params![id, digest], |r| r.get(0))
                .optional()?;
            let Some(size) = size else {
                return Ok(DeleteManifestOutcome::NotFound);
            };
            delete_manifest_rows(tx, id, &digest)?;
            quota::release(tx, &ns, size.max(0) as u64)?;
            tx.prepare_cached("DELETE FROM tags WHERE repo_id = ?1 AND digest = ?2")?
                .execute(params![id, digest])?;
            super::events::record(
                tx,
                feed,
                &NewEvent {
                    action: "delete".into(),
                    repository: Some(repo.clone()),
                    digest: Some(digest.clone()),
                    size: Some(size.max(0) as u64),
                    actor: Some(actor.clone()),
                    ..Default::default()
                },
            )?;
            Ok(DeleteManifestOutcome::Deleted)
        })
        .await
    }

    /// Removes one tag; the manifest stays. Returns false if there was none.
    pub async fn delete_tag(
        &self,
        repo: &RepoName,
        tag: &str,
        actor: &str,
    ) -> Result<bool, StorageError> {
        let (repo, tag, actor) = (repo.as_str().to_owned(), tag.to_owned(), actor.to_owned());
        let feed = self.events_on();
        self.write(move |tx| {
            let Some(id) = repo_id(tx, &repo)? else {
                return Ok(false);
            };
            let old: Option<String> = tx
                .prepare_cached("SELECT digest FROM tags WHERE repo_id = ?1 AND name = ?2")?
                .query_row(params![id, tag], |r| r.get(0))
                .optional()?;
            let Some(old) = old else { return Ok(false) };
            tx.prepare_cached("DELETE FROM tags WHERE repo_id = ?1 AND name = ?2")?
                .execute(params![id, tag])?;
            released(tx, id, &old, now_ms())?;
            super::events::record(
                tx,
                feed,
                &NewEvent {
                    action: "delete".into(),
                    repository: Some(repo.clone()),
                    digest: Some(old),
                    tag: Some(tag.clone()),
                    actor: Some(actor.clone()),
                    ..Default::default()
                },
            )?;
            Ok(true)
        })
        .await
    }

    /// Tags of `repo` in lexical order after `last`, at most `limit`;
    /// `None` when the repository does not exist.
    pub async fn list_tags(
        &self,
        repo: &RepoName,
        last: Option<String>,
        limit: u32,
    ) -> Result<Option<Vec<String>>, StorageError> {
        let repo = repo.as_str().to_owned();
        self.read(move |c| {
            let Some(id) = repo_id(c, &repo)? else {
                return Ok(None);
            };
            let mut stmt = c.prepare_cached(
                "SELECT name FROM tags WHERE repo_id = ?1 AND name > ?2 ORDER BY name LIMIT ?3",
            )?;
            let tags = stmt
                .query_map(params![id, last.unwrap_or_default(), limit as i64], |r| {
                    r.get(0)
                })?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            Ok(Some(tags))
        })
        .await
    }

    /// Repository names in lexical order after `last`, at most `limit`.
    pub async fn catalog(
        &self,
        last: Option<String>,
        limit: u32,
    ) -> Result<Vec<String>, StorageError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT name FROM repositories WHERE name > ?1 ORDER BY name LIMIT ?2",
            )?;
            let names = stmt
                .query_map(params![last.unwrap_or_default(), limit as i64], |r| {
                    r.get(0)
                })?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            Ok(names)
        })
        .await
    }

    /// Manifests of `repo` whose subject is `subject`, optionally only those
    /// of one artifact type, ordered by digest.
    pub async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<String>,
    ) -> Result<Vec<Referrer>, StorageError> {
        let (repo, subject) = (repo.as_str().to_owned(), subject.to_string());
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT m.digest, m.media_type, m.size, m.artifact_type, m.annotations
                 FROM manifests m JOIN repositories r ON r.id = m.repo_id
                 WHERE r.name = ?1 AND m.subject = ?2
                   AND (?3 IS NULL OR m.artifact_type = ?3)
                 ORDER BY m.digest",
            )?;
            let rows = stmt
                .query_map(params![repo, subject, artifact_type], |r| {
                    Ok(Referrer {
                        digest: r.get(0)?,
                        media_type: r.get(1)?,
                        size: r.get::<_, i64>(2)? as u64,
                        artifact_type: r.get(3)?,
                        annotations: r.get(4)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }
}

impl Sqlite {
    /// Creates the account of `namespace`, or replaces its secret (rotation).
    /// Returns true when the account is new.
    pub async fn set_namespace_secret(
        &self,
        namespace: &str,
        secret_hash: String,
    ) -> Result<bool, StorageError> {
        let namespace = namespace.to_owned();
        self.write(move |tx| {
            let now = now_ms();
            let existed = tx
                .prepare_cached("SELECT 1 FROM principals WHERE name = ?1")?
                .exists([&namespace])?;
            tx.prepare_cached(
                "INSERT INTO principals (name, kind, namespace, secret_hash, created_ms, rotated_ms)
                 VALUES (?1, 'namespace', ?1, ?2, ?3, ?3)
                 ON CONFLICT (name) DO UPDATE SET secret_hash = excluded.secret_hash,
                                                  rotated_ms = excluded.rotated_ms",
            )?
            .execute(params![namespace, secret_hash, now])?;
            Ok(!existed)
        })
        .await
    }

    /// Revokes the account of `namespace`; false when there was none.
    pub async fn delete_namespace_account(&self, namespace: &str) -> Result<bool, StorageError> {
        let namespace = namespace.to_owned();
        self.write(move |tx| {
            Ok(tx
                .prepare_cached("DELETE FROM principals WHERE name = ?1 AND kind = 'namespace'")?
                .execute([namespace])?
                > 0)
        })
        .await
    }

    pub async fn namespace_account(
        &self,
        name: &str,
    ) -> Result<Option<NamespaceAccount>, StorageError> {
        let name = name.to_owned();
        self.read_point(move |c| {
            Ok(c.prepare_cached(
                "SELECT name, namespace, secret_hash, created_ms, rotated_ms FROM principals
                 WHERE name = ?1 AND kind = 'namespace'",
            )?
            .query_row([name], |r| {
                Ok(NamespaceAccount {
                    name: r.get(0)?,
                    namespace: r.get(1)?,
                    secret_hash: r.get(2)?,
                    created_ms: r.get(3)?,
                    rotated_ms: r.get(4)?,
                })
            })
            .optional()?)
        })
        .await
    }
}

//! Versioned schema migrations, tracked in SQLite's `user_version`.
//! Append a new entry to `MIGRATIONS` to change the schema; never edit one
//! that has shipped.

use crate::StorageError;
use rusqlite::Connection;

/// Each entry upgrades the schema from version `index` to `index + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: the registry's core tables. All timestamps are unix milliseconds.
    r#"
    CREATE TABLE blobs (
        digest      TEXT PRIMARY KEY,
        size        INTEGER NOT NULL,
        created_ms  INTEGER NOT NULL,
        touched_ms  INTEGER NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE repositories (
        id          INTEGER PRIMARY KEY,
        name        TEXT NOT NULL UNIQUE,
        namespace   TEXT NOT NULL,
        created_ms  INTEGER NOT NULL
    );
    CREATE INDEX repositories_namespace ON repositories(namespace);

    CREATE TABLE repo_blobs (
        repo_id     INTEGER NOT NULL REFERENCES repositories(id),
        digest      TEXT NOT NULL REFERENCES blobs(digest),
        linked_ms   INTEGER NOT NULL,
        PRIMARY KEY (repo_id, digest)
    ) WITHOUT ROWID;
    CREATE INDEX repo_blobs_digest ON repo_blobs(digest);

    CREATE TABLE manifests (
        repo_id       INTEGER NOT NULL REFERENCES repositories(id),
        digest        TEXT NOT NULL,
        media_type    TEXT NOT NULL,
        artifact_type TEXT,
        subject       TEXT,
        size          INTEGER NOT NULL,
        bytes         BLOB NOT NULL,
        annotations   TEXT,
        pushed_ms     INTEGER NOT NULL,
        pulled_ms     INTEGER,
        PRIMARY KEY (repo_id, digest)
    );
    CREATE INDEX manifests_subject ON manifests(repo_id, subject) WHERE subject IS NOT NULL;

    -- kind: 'blob' (config/layer) or 'manifest' (child of an index).
    CREATE TABLE manifest_refs (
        repo_id         INTEGER NOT NULL,
        manifest_digest TEXT NOT NULL,
        child_digest    TEXT NOT NULL,
        kind            TEXT NOT NULL CHECK (kind IN ('blob', 'manifest')),
        PRIMARY KEY (repo_id, manifest_digest, kind, child_digest)
    ) WITHOUT ROWID;
    CREATE INDEX manifest_refs_child ON manifest_refs(repo_id, child_digest, kind);

    CREATE TABLE tags (
        repo_id     INTEGER NOT NULL REFERENCES repositories(id),
        name        TEXT NOT NULL,
        digest      TEXT NOT NULL,
        updated_ms  INTEGER NOT NULL,
        PRIMARY KEY (repo_id, name)
    ) WITHOUT ROWID;
    CREATE INDEX tags_digest ON tags(repo_id, digest);
    "#,
    // 2: namespace accounts. The secret is stored only as an argon2 hash.
    r#"
    CREATE TABLE principals (
        name          TEXT PRIMARY KEY,
        kind          TEXT NOT NULL CHECK (kind IN ('namespace')),
        namespace     TEXT NOT NULL,
        secret_hash   TEXT NOT NULL,
        created_ms    INTEGER NOT NULL,
        rotated_ms    INTEGER NOT NULL
    ) WITHOUT ROWID;
    "#,
    // 3: quota. `namespaces.used_bytes` is the ledger (distinct blobs linked
    // into any repository of the namespace plus its manifests);
    // `namespace_blobs.repos` counts the repositories of a namespace linking
    // a blob, so a blob is charged once per namespace. Backfilled from the
    // tables as they stand.
    r#"
    CREATE TABLE namespaces (
        name          TEXT PRIMARY KEY,
        limit_bytes   INTEGER,
        unlimited     INTEGER NOT NULL DEFAULT 0,
        used_bytes    INTEGER NOT NULL DEFAULT 0,
        updated_ms    INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX namespaces_used ON namespaces(used_bytes DESC);

    CREATE TABLE namespace_blobs (
        namespace   TEXT NOT NULL,
        digest      TEXT NOT NULL,
        repos       INTEGER NOT NULL,
        PRIMARY KEY (namespace, digest)
    ) WITHOUT ROWID;

    INSERT INTO namespace_blobs (namespace, digest, repos)
        SELECT r.namespace, rb.digest, COUNT(*) FROM repo_blobs rb
        JOIN repositories r ON r.id = rb.repo_id GROUP BY r.namespace, rb.digest;
    INSERT INTO namespaces (name, updated_ms)
        SELECT DISTINCT namespace, CAST(strftime('%s','now') AS INTEGER) * 1000 FROM repositories;
    UPDATE namespaces SET used_bytes =
        COALESCE((SELECT SUM(b.size) FROM namespace_blobs nb JOIN blobs b ON b.digest = nb.digest
                  WHERE nb.namespace = namespaces.name), 0)
      + COALESCE((SELECT SUM(m.size) FROM manifests m JOIN repositories r ON r.id = m.repo_id
                  WHERE r.namespace = namespaces.name), 0);
    "#,
    // 4: garbage collection. `released_ms` is when a manifest last lost a
    // tag, so the untagged grace period runs from then, not from its push.
    r#"
    ALTER TABLE manifests ADD COLUMN released_ms INTEGER NOT NULL DEFAULT 0;

    CREATE TABLE pins (
        id          INTEGER PRIMARY KEY,
        repository  TEXT NOT NULL,
        digest      TEXT NOT NULL,
        reason      TEXT NOT NULL DEFAULT '',
        created_ms  INTEGER NOT NULL,
        UNIQUE (repository, digest)
    );

    -- Per-namespace retention overrides; NULL columns inherit the default.
    CREATE TABLE retention (
        namespace       TEXT PRIMARY KEY,
        keep_last       INTEGER,
        protected_tags  TEXT,
        max_age_ms      INTEGER,
        keep_pattern    TEXT,
        updated_ms      INTEGER NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE gc_runs (
        id           INTEGER PRIMARY KEY,
        job          TEXT NOT NULL,
        dry_run      INTEGER NOT NULL,
        trigger      TEXT NOT NULL,
        started_ms   INTEGER NOT NULL,
        finished_ms  INTEGER NOT NULL,
        report       TEXT NOT NULL
    );
    CREATE INDEX gc_runs_started ON gc_runs(started_ms DESC);
    "#,
    // 5: builds (Toolforge-compatible build API). `params` is the request
    // as JSON; `log_path` outlives the record (logs have their own retention).
    r#"
    CREATE TABLE builds (
        id                 TEXT PRIMARY KEY,
        tool               TEXT NOT NULL,
        image_name         TEXT NOT NULL,
        status             TEXT NOT NULL,
        message            TEXT NOT NULL DEFAULT '',
        params             TEXT NOT NULL,
        resolved_ref       TEXT NOT NULL,
        destination_image  TEXT NOT NULL DEFAULT '',
        log_path           TEXT NOT NULL,
        created_ms         INTEGER NOT NULL,
        start_ms           INTEGER,
        end_ms             INTEGER
    ) WITHOUT ROWID;
    CREATE INDEX builds_tool ON builds(tool, created_ms DESC);
    CREATE INDEX builds_status ON builds(status, created_ms);
    "#,
    // 6: each tool's builds run as their own host uid/gid (`[builds]
    // uid_base` + `n`), allocated on the tool's first build and never
    // reused, so files a tool's builds left behind never pass to another.
    r#"
    CREATE TABLE build_users (
        tool        TEXT PRIMARY KEY,
        n           INTEGER NOT NULL UNIQUE,
        created_ms  INTEGER NOT NULL
    ) WITHOUT ROWID;
    "#,
    // 7: API tokens (`berth_<id>_<secret>`): named, expiring, revocable
    // credentials of a namespace (`scope` pull or push) or of the admin
    // (`namespace` NULL, `scope` admin). `id` is the token's public part,
    // so a check is one primary-key read; `secret_hash` is SHA-256 of the
    // secret (high-entropy random: no slow hash needed). Revoking deletes
    // the row.
    r#"
    CREATE TABLE api_tokens (
        id            TEXT PRIMARY KEY,
        name          TEXT NOT NULL,
        namespace     TEXT,
        scope         TEXT NOT NULL CHECK (scope IN ('pull', 'push', 'admin')),
        secret_hash   BLOB NOT NULL,
        created_ms    INTEGER NOT NULL,
        expires_ms    INTEGER NOT NULL,
        last_used_ms  INTEGER,
        created_by    TEXT NOT NULL,
        CHECK ((namespace IS NULL) = (scope = 'admin'))
    ) WITHOUT ROWID;
    CREATE INDEX api_tokens_namespace ON api_tokens(namespace, expires_ms);
    "#,
    // 8: storage over time, for the web console. `usage_samples` keeps a
    // namespace's usage each time the sampler finds it changed (so an idle
    // namespace costs one row); `usage_totals` the registry's totals at
    // every sample. Both are pruned to `[ui] usage_retention` and capped
    // at `[ui] usage_max_rows`.
    r#"
    CREATE TABLE usage_samples (
        namespace   TEXT NOT NULL,
        at_ms       INTEGER NOT NULL,
        used_bytes  INTEGER NOT NULL,
        PRIMARY KEY (namespace, at_ms)
    ) WITHOUT ROWID;
    CREATE INDEX usage_samples_at ON usage_samples(at_ms);

    CREATE TABLE usage_totals (
        at_ms         INTEGER PRIMARY KEY,
        -- what namespaces are charged (the quota ledger, summed)
        used_bytes    INTEGER NOT NULL,
        -- every blob and manifest once: what the store holds
        stored_bytes  INTEGER NOT NULL,
        -- every repository's blobs and manifests counted in each: what
        -- the registry would hold without deduplication
        linked_bytes  INTEGER NOT NULL,
        blobs         INTEGER NOT NULL,
        manifests     INTEGER NOT NULL,
        namespaces    INTEGER NOT NULL
    );
    "#,
    // 9: the change feed notifications are delivered from (recorded in the
    // same transaction as the change, so no committed push goes unsaid),
    // each endpoint's place in it, and the log of delivery attempts.
    r#"
    CREATE TABLE events (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        at_ms       INTEGER NOT NULL,
        action      TEXT NOT NULL,
        repository  TEXT,
        digest      TEXT,
        tag         TEXT,
        media_type  TEXT,
        size        INTEGER,
        actor       TEXT,
        detail      TEXT
    );
    CREATE TABLE webhook_endpoints (
        name             TEXT PRIMARY KEY,
        cursor           INTEGER NOT NULL,
        failures         INTEGER NOT NULL DEFAULT 0,
        next_attempt_ms  INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID;
    CREATE TABLE webhook_attempts (
        id           INTEGER PRIMARY KEY,
        endpoint     TEXT NOT NULL,
        at_ms        INTEGER NOT NULL,
        first_event  INTEGER NOT NULL,
        last_event   INTEGER NOT NULL,
        events       INTEGER NOT NULL,
        status       INTEGER,
        error        TEXT,
        duration_ms  INTEGER NOT NULL
    );
    CREATE INDEX webhook_attempts_endpoint ON webhook_attempts(endpoint, id DESC);
    "#,
    // 10: small blobs kept in the database instead of one file each
    // (`[storage] inline_blob_max`): a config or a small layer is then one
    // row written in the transaction that links it, with no inode, no
    // fsync of its own and no rename. A rowid table (large values do not
    // belong in a WITHOUT ROWID b-tree); the row goes with its blob row.
    r#"
    CREATE TABLE blob_data (
        digest  TEXT PRIMARY KEY REFERENCES blobs(digest) ON DELETE CASCADE,
        data    BLOB NOT NULL
    );
    "#,
    // 11: build triggers (git push webhooks). `build_triggers`: one per tool, its hook
    // id (the URL's secret-less part) and the generation its secret is
    // derived at (no secret is stored). `build_trigger_commits`: the
    // commits each trigger has seen, so a replayed delivery starts
    // nothing. On `builds`: what started each build (`trigger`, JSON:
    // manual or push with commit, ref and pusher), and for push builds the
    // trigger and ref, which a newer push to the same ref coalesces on.
    r#"
    CREATE TABLE build_triggers (
        id           TEXT PRIMARY KEY,
        tool         TEXT NOT NULL UNIQUE,
        source_url   TEXT NOT NULL,
        ref_pattern  TEXT,
        image_name   TEXT,
        envvars      TEXT NOT NULL,
        generation   INTEGER NOT NULL,
        created_ms   INTEGER NOT NULL,
        updated_ms   INTEGER NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE build_trigger_commits (
        trigger_id  TEXT NOT NULL,
        commit_id   TEXT NOT NULL,
        ref         TEXT NOT NULL,
        seen_ms     INTEGER NOT NULL,
        PRIMARY KEY (trigger_id, commit_id)
    ) WITHOUT ROWID;
    CREATE INDEX build_trigger_commits_seen ON build_trigger_commits(trigger_id, seen_ms);

    ALTER TABLE builds ADD COLUMN trigger TEXT;
    ALTER TABLE builds ADD COLUMN trigger_id TEXT;
    ALTER TABLE builds ADD COLUMN trigger_ref TEXT;
    CREATE INDEX builds_trigger ON builds(trigger_id, trigger_ref, status)
        WHERE trigger_id IS NOT NULL;
    "#,
    // 12: upload sessions shared by replicas (`[storage.s3]`): one row per
    // session, written by whichever replica serves a request for it.
    // `received` bytes are in S3 (`parts`, the multipart upload's ETags in
    // order, JSON) or in `pending` (fewer than a part's 5 MiB, waiting for
    // more); `hash_state` is the running hash after `received` bytes.
    // `claim` is the request writing the session (one at a time; a
    // conditional UPDATE takes it), `reserved` what that request has
    // reserved of the quota beyond `received`. `storage_identity`: what
    // the blob store is, recorded by the first process, so a replica with
    // another one (its own data dir, another bucket) refuses to start.
    r#"
    CREATE TABLE upload_sessions (
        id            TEXT PRIMARY KEY,
        repo          TEXT NOT NULL,
        namespace     TEXT NOT NULL,
        received      INTEGER NOT NULL,
        reserved      INTEGER NOT NULL,
        hash_state    BLOB NOT NULL,
        multipart_id  TEXT,
        parts         TEXT NOT NULL,
        pending       BLOB NOT NULL,
        claim         TEXT,
        started_ms    INTEGER NOT NULL,
        updated_ms    INTEGER NOT NULL
    );
    CREATE INDEX upload_sessions_namespace ON upload_sessions(namespace);
    CREATE INDEX upload_sessions_updated ON upload_sessions(updated_ms);

    CREATE TABLE storage_identity (
        name   TEXT PRIMARY KEY,
        value  TEXT NOT NULL
    ) WITHOUT ROWID;
    "#,
    // 13: the tables of several replicas sharing a PostgreSQL database
    // (issue 15), made here too so both backends keep one schema; SQLite
    // (one process per data dir) keeps its secrets in files, its console
    // sessions in memory and its job locks in the process, and uses only
    // the `replica` columns. Numbered 13 on its own: 12 is the
    // object-store migration of the same issue.
    // `shared_secrets`: the token key, the generated admin password and
    // the hook key, created once by whichever replica starts first (insert
    // if absent, then read back), so replicas with data dirs of their own
    // agree. `job_leases`: which replica runs a scheduled job (or delivers
    // to a notification endpoint) until `expires_ms`, and the last
    // schedule slot run. `replicas`: one row per process start and its
    // heartbeat, so a build or a GC run left by a replica that stopped
    // can be told from one still in progress. `ui_sessions`: console
    // sessions (found by the SHA-256 of the cookie). On `gc_runs` and
    // `builds`: the replica running them; a cancel asked for on another
    // replica than the one running the build. `build_log_chunks`: build
    // logs as every replica reads them (each replica also keeps its file).
    r#"
    CREATE TABLE shared_secrets (
        name        TEXT PRIMARY KEY,
        value       TEXT NOT NULL,
        created_ms  INTEGER NOT NULL
    );

    CREATE TABLE job_leases (
        job           TEXT PRIMARY KEY,
        holder        TEXT NOT NULL,
        expires_ms    INTEGER NOT NULL,
        last_slot_ms  INTEGER
    );

    CREATE TABLE replicas (
        id            TEXT PRIMARY KEY,
        host          TEXT NOT NULL,
        started_ms    INTEGER NOT NULL,
        heartbeat_ms  INTEGER NOT NULL
    );

    CREATE TABLE ui_sessions (
        key               BLOB PRIMARY KEY,
        principal         TEXT NOT NULL,
        token_id          TEXT,
        token_scope       TEXT,
        token_expires_ms  INTEGER,
        csrf              TEXT NOT NULL,
        created_ms        INTEGER NOT NULL,
        last_seen_ms      INTEGER NOT NULL,
        flash             TEXT
    );
    CREATE INDEX ui_sessions_principal ON ui_sessions(principal, last_seen_ms);

    ALTER TABLE gc_runs ADD COLUMN replica TEXT;
    ALTER TABLE builds ADD COLUMN replica TEXT;
    ALTER TABLE builds ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX builds_status_replica ON builds(status, replica);

    CREATE TABLE build_log_chunks (
        seq       INTEGER PRIMARY KEY,
        build_id  TEXT NOT NULL,
        at_ms     INTEGER NOT NULL,
        data      BLOB NOT NULL
    );
    CREATE INDEX build_log_chunks_build ON build_log_chunks(build_id, seq);
    CREATE INDEX build_log_chunks_at ON build_log_chunks(at_ms);
    "#,
    // 14: when a manifest last lost a tag (or its pin), in a table of its
    // own. Updating `manifests.released_ms` rewrote the page that holds the
    // manifest's body: a 4 KiB WAL frame per released tag, gigabytes for a
    // cleanup of 850,000 tags. `manifests.released_ms` is no longer read
    // or written (dropping it would rewrite the whole table). A row goes
    // with its manifest.
    r#"
    CREATE TABLE manifest_releases (
        repo_id      INTEGER NOT NULL,
        digest       TEXT NOT NULL,
        released_ms  INTEGER NOT NULL,
        PRIMARY KEY (repo_id, digest)
    ) WITHOUT ROWID;
    INSERT INTO manifest_releases (repo_id, digest, released_ms)
        SELECT repo_id, digest, released_ms FROM manifests WHERE released_ms > 0;
    "#,
];

/// Brings the database up to the newest schema, one transaction per step.
pub fn migrate(conn: &mut Connection) -> Result<(), StorageError> {
    let current: usize =
        conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))? as usize;
    if current > MIGRATIONS.len() {
        return Err(StorageError::Internal(format!(
            "database schema version {current} is newer than this berth knows ({}); upgrade berth",
            MIGRATIONS.len()
        )));
    }
    for (version, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (version + 1) as i64)?;
        tx.commit()?;
        tracing::info!(version = version + 1, "applied schema migration");
    }
    Ok(())
}

pub fn latest_version() -> usize {
    MIGRATIONS.len()
}

//! Build triggers (one per tool) and the builds pushes queue. Queueing a
//! push's build is one write transaction: the replay check, coalescing
//! onto a waiting build of the same trigger and ref, the per-tool limit
//! and the insert cannot interleave with another push or with the
//! dispatcher taking the waiting build.

use super::builds::{insert, record, trigger_json, COLUMNS};
use super::Sqlite;
use crate::meta::builds::*;
use crate::{now_ms, StorageError};
use rusqlite::{params, OptionalExtension};

const TRIGGER_COLUMNS: &str =
    "id, tool, source_url, ref_pattern, image_name, envvars, generation, created_ms, updated_ms";

fn trigger(r: &rusqlite::Row<'_>) -> rusqlite::Result<TriggerRecord> {
    let envvars: String = r.get(5)?;
    Ok(TriggerRecord {
        id: r.get(0)?,
        tool: r.get(1)?,
        source_url: r.get(2)?,
        ref_pattern: r.get(3)?,
        image_name: r.get(4)?,
        envvars: serde_json::from_str(&envvars).unwrap_or_default(),
        generation: r.get(6)?,
        created_ms: r.get(7)?,
        updated_ms: r.get(8)?,
    })
}

fn json<T: serde::Serialize>(v: &T) -> Result<String, StorageError> {
    serde_json::to_string(v).map_err(|e| StorageError::Internal(e.to_string()))
}

impl Sqlite {
    /// Creates `t.tool`'s trigger as `t`, or, when the tool has one,
    /// changes its settings (source, ref pattern, image, envvars) and
    /// keeps its id, generation and creation time. Returns the stored
    /// trigger and whether it was created.
    pub async fn put_trigger(
        &self,
        t: TriggerRecord,
    ) -> Result<(TriggerRecord, bool), StorageError> {
        self.write(move |tx| {
            tx.prepare_cached(
                "INSERT INTO build_triggers (id, tool, source_url, ref_pattern, image_name, envvars, generation, created_ms, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)
                 ON CONFLICT (tool) DO UPDATE SET source_url = excluded.source_url,
                     ref_pattern = excluded.ref_pattern, image_name = excluded.image_name,
                     envvars = excluded.envvars, updated_ms = excluded.updated_ms",
            )?
            .execute(params![
                t.id,
                t.tool,
                t.source_url,
                t.ref_pattern,
                t.image_name,
                json(&t.envvars)?,
                t.generation,
                t.created_ms
            ])?;
            let stored = tx
                .prepare_cached(&format!(
                    "SELECT {TRIGGER_COLUMNS} FROM build_triggers WHERE tool = ?1"
                ))?
                .query_row([&t.tool], trigger)?;
            let created = stored.id == t.id;
            Ok((stored, created))
        })
        .await
    }

    /// The tool's trigger, if it has one.
    pub async fn trigger_of_tool(&self, tool: &str) -> Result<Option<TriggerRecord>, StorageError> {
        let tool = tool.to_owned();
        self.read(move |c| {
            Ok(c.prepare_cached(&format!(
                "SELECT {TRIGGER_COLUMNS} FROM build_triggers WHERE tool = ?1"
            ))?
            .query_row([tool], trigger)
            .optional()?)
        })
        .await
    }

    /// The trigger whose hook id is `id`.
    pub async fn trigger_by_hook(&self, id: &str) -> Result<Option<TriggerRecord>, StorageError> {
        let id = id.to_owned();
        self.read(move |c| {
            Ok(c.prepare_cached(&format!(
                "SELECT {TRIGGER_COLUMNS} FROM build_triggers WHERE id = ?1"
            ))?
            .query_row([id], trigger)
            .optional()?)
        })
        .await
    }

    /// A new secret generation for the tool's trigger (the old secret
    /// stops working at once); None when the tool has no trigger.
    pub async fn rotate_trigger(&self, tool: &str) -> Result<Option<TriggerRecord>, StorageError> {
        let tool = tool.to_owned();
        self.write(move |tx| {
            tx.prepare_cached(
                "UPDATE build_triggers SET generation = generation + 1, updated_ms = ?2 WHERE tool = ?1",
            )?
            .execute(params![tool, now_ms()])?;
            Ok(tx
                .prepare_cached(&format!(
                    "SELECT {TRIGGER_COLUMNS} FROM build_triggers WHERE tool = ?1"
                ))?
                .query_row([&tool], trigger)
                .optional()?)
        })
        .await
    }

    /// Removes the tool's trigger and the commits it saw; builds it queued
    /// stay (they were asked for). False when there was none.
    pub async fn delete_trigger(&self, tool: &str) -> Result<bool, StorageError> {
        let tool = tool.to_owned();
        self.write(move |tx| {
            let id: Option<String> = tx
                .prepare_cached("SELECT id FROM build_triggers WHERE tool = ?1")?
                .query_row([&tool], |r| r.get(0))
                .optional()?;
            let Some(id) = id else { return Ok(false) };
            tx.execute(
                "DELETE FROM build_trigger_commits WHERE trigger_id = ?1",
                [&id],
            )?;
            tx.execute("DELETE FROM build_triggers WHERE id = ?1", [&id])?;
            Ok(true)
        })
        .await
    }

    /// Queues the build of a push (`b`: pending, with `trigger_id` and a
    /// `Push` trigger), in one transaction:
    /// 1. a commit this trigger has seen is a replay: nothing changes;
    /// 2. a build of the same trigger and ref still waiting (pending)
    ///    takes the pushed commit, parameters and pusher instead (so a
    ///    burst of pushes builds once, the newest commit);
    /// 3. otherwise, unless the tool already has `max_unfinished` builds
    ///    waiting or running (`LimitReached`, nothing recorded), `b` is
    ///    inserted.
    ///
    /// The commit is then remembered (the newest `SEEN_COMMITS_KEPT`).
    pub async fn queue_push_build(
        &self,
        b: BuildRecord,
        max_unfinished: usize,
    ) -> Result<PushQueued, StorageError> {
        self.write(move |tx| {
            let (Some(trigger_id), BuildTrigger::Push { commit, reference, .. }) =
                (b.trigger_id.clone(), b.trigger.clone())
            else {
                return Err(StorageError::Internal(
                    "queue_push_build takes a push build with its trigger".into(),
                ));
            };
            let seen = tx
                .prepare_cached(
                    "SELECT 1 FROM build_trigger_commits WHERE trigger_id = ?1 AND commit_id = ?2",
                )?
                .query_row(params![trigger_id, commit], |_| Ok(()))
                .optional()?
                .is_some();
            if seen {
                return Ok(PushQueued::Replay);
            }
            let waiting = tx
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM builds
                     WHERE trigger_id = ?1 AND trigger_ref = ?2 AND status = ?3
                     ORDER BY created_ms DESC, id DESC LIMIT 1"
                ))?
                .query_row(
                    params![trigger_id, reference, BuildStatus::Pending.as_str()],
                    record,
                )
                .optional()?;
            let outcome = match waiting {
                Some(mut w) => {
                    let replaced = w.resolved_ref.clone();
                    w.params = b.params.clone();
                    w.image_name = b.image_name.clone();
                    w.resolved_ref = b.resolved_ref.clone();
                    w.trigger = b.trigger.clone();
                    tx.prepare_cached(
                        "UPDATE builds SET params = ?2, image_name = ?3, resolved_ref = ?4, trigger = ?5
                         WHERE id = ?1 AND status = ?6",
                    )?
                    .execute(params![
                        w.id,
                        json(&w.params)?,
                        w.image_name,
                        w.resolved_ref,
                        trigger_json(&w.trigger)?,
                        BuildStatus::Pending.as_str()
                    ])?;
                    PushQueued::Coalesced { build: w, replaced }
                }
                None => {
                    let unfinished: i64 = tx
                        .prepare_cached(
                            "SELECT COUNT(*) FROM builds WHERE tool = ?1 AND status IN (?2, ?3)",
                        )?
                        .query_row(
                            params![
                                b.tool,
                                BuildStatus::Pending.as_str(),
                                BuildStatus::Running.as_str()
                            ],
                            |r| r.get(0),
                        )?;
                    if unfinished as usize >= max_unfinished {
                        return Err(StorageError::LimitReached {
                            limit: "queued_per_tool",
                            message: format!(
                                "tool {} has {unfinished} builds waiting or running, its limit ([builds] queued_per_tool = {max_unfinished}); the push was not queued",
                                b.tool
                            ),
                        });
                    }
                    insert(tx, &b)?;
                    PushQueued::Queued(b.clone())
                }
            };
            tx.prepare_cached(
                "INSERT INTO build_trigger_commits (trigger_id, commit_id, ref, seen_ms) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![trigger_id, commit, reference, now_ms()])?;
            tx.prepare_cached(
                "DELETE FROM build_trigger_commits WHERE trigger_id = ?1 AND commit_id NOT IN
                     (SELECT commit_id FROM build_trigger_commits WHERE trigger_id = ?1
                      ORDER BY seen_ms DESC LIMIT ?2)",
            )?
            .execute(params![trigger_id, SEEN_COMMITS_KEPT])?;
            Ok(outcome)
        })
        .await
    }
}

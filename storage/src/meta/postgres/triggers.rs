//! Build triggers on PostgreSQL (`sqlite/triggers.rs` is the reference).
//!
//! Queueing a push's build reads (the commits the trigger has seen, the
//! waiting build of the same trigger and ref, the tool's unfinished builds)
//! and then writes, and replicas may take deliveries of one tool at the
//! same time (a forge retrying, two pushes in a row). So the transaction
//! first takes a transaction-level advisory lock on the tool
//! (`keys::TOOL_PUSHES`): every push of the tool's trigger waits for the one
//! before to commit and then sees it, so a replayed delivery is a replay on
//! whichever replica it lands, and two pushes to one ref never both insert
//! a build. An advisory lock rather than the trigger's row, which a
//! concurrent `delete_trigger` may have removed: the lock holds either way.
//!
//! The waiting build itself is read `FOR UPDATE`: the dispatcher's claim
//! (`transition_build`, pending to running) waits for the coalescing update
//! and then runs the build with the new commit (it reads the build again
//! after taking it); a claim that committed first leaves nothing pending to
//! coalesce onto (the row no longer matches when the lock is granted), and
//! the push queues a build of its own.

use super::builds::{insert, record, trigger_json, COLUMNS};
use super::{col, exec, exists, keys, opt, transaction, Postgres};
use crate::meta::builds::*;
use crate::{now_ms, StorageError};

const TRIGGER_COLUMNS: &str =
    "id, tool, source_url, ref_pattern, image_name, envvars, generation, created_ms, updated_ms";

fn trigger(r: &tokio_postgres::Row) -> Result<TriggerRecord, StorageError> {
    let envvars: String = col(r, 5)?;
    Ok(TriggerRecord {
        id: col(r, 0)?,
        tool: col(r, 1)?,
        source_url: col(r, 2)?,
        ref_pattern: col(r, 3)?,
        image_name: col(r, 4)?,
        envvars: serde_json::from_str(&envvars).unwrap_or_default(),
        generation: col(r, 6)?,
        created_ms: col(r, 7)?,
        updated_ms: col(r, 8)?,
    })
}

fn json<T: serde::Serialize>(v: &T) -> Result<String, StorageError> {
    serde_json::to_string(v).map_err(|e| StorageError::Internal(e.to_string()))
}

impl Postgres {
    /// One statement: the upsert returns the stored row whether it inserted
    /// or updated (two concurrent first puts of a tool make one trigger).
    pub async fn put_trigger(
        &self,
        t: TriggerRecord,
    ) -> Result<(TriggerRecord, bool), StorageError> {
        let envvars = json(&t.envvars)?;
        let c = self.client().await?;
        let r = super::one(
            &c,
            &format!(
                "INSERT INTO build_triggers (id, tool, source_url, ref_pattern, image_name, envvars, generation, created_ms, updated_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)
                 ON CONFLICT (tool) DO UPDATE SET source_url = excluded.source_url,
                     ref_pattern = excluded.ref_pattern, image_name = excluded.image_name,
                     envvars = excluded.envvars, updated_ms = excluded.updated_ms
                 RETURNING {TRIGGER_COLUMNS}"
            ),
            &[
                &t.id,
                &t.tool,
                &t.source_url,
                &t.ref_pattern,
                &t.image_name,
                &envvars,
                &t.generation,
                &t.created_ms,
            ],
        )
        .await?;
        let stored = trigger(&r)?;
        let created = stored.id == t.id;
        Ok((stored, created))
    }

    pub async fn trigger_of_tool(&self, tool: &str) -> Result<Option<TriggerRecord>, StorageError> {
        let c = self.client().await?;
        opt(
            &c,
            &format!("SELECT {TRIGGER_COLUMNS} FROM build_triggers WHERE tool = $1"),
            &[&tool],
        )
        .await?
        .as_ref()
        .map(trigger)
        .transpose()
    }

    pub async fn trigger_by_hook(&self, id: &str) -> Result<Option<TriggerRecord>, StorageError> {
        let c = self.client().await?;
        opt(
            &c,
            &format!("SELECT {TRIGGER_COLUMNS} FROM build_triggers WHERE id = $1"),
            &[&id],
        )
        .await?
        .as_ref()
        .map(trigger)
        .transpose()
    }

    /// One statement: concurrent rotations each bump the generation once
    /// (the second waits for the first's row lock, then increments its
    /// result).
    pub async fn rotate_trigger(&self, tool: &str) -> Result<Option<TriggerRecord>, StorageError> {
        let c = self.client().await?;
        opt(
            &c,
            &format!(
                "UPDATE build_triggers SET generation = generation + 1, updated_ms = $2
                 WHERE tool = $1 RETURNING {TRIGGER_COLUMNS}"
            ),
            &[&tool, &now_ms()],
        )
        .await?
        .as_ref()
        .map(trigger)
        .transpose()
    }

    pub async fn delete_trigger(&self, tool: &str) -> Result<bool, StorageError> {
        transaction!(self, |tx| {
            let Some(r) = opt(
                &tx,
                "DELETE FROM build_triggers WHERE tool = $1 RETURNING id",
                &[&tool],
            )
            .await?
            else {
                return Ok(false);
            };
            let id: String = col(&r, 0)?;
            exec(
                &tx,
                "DELETE FROM build_trigger_commits WHERE trigger_id = $1",
                &[&id],
            )
            .await?;
            Ok(true)
        })
    }

    /// See the module's doc for how this holds across replicas; the steps
    /// are `sqlite/triggers.rs`'s.
    pub async fn queue_push_build(
        &self,
        b: BuildRecord,
        max_unfinished: usize,
    ) -> Result<PushQueued, StorageError> {
        let (
            Some(trigger_id),
            BuildTrigger::Push {
                commit, reference, ..
            },
        ) = (b.trigger_id.clone(), b.trigger.clone())
        else {
            return Err(StorageError::Internal(
                "queue_push_build takes a push build with its trigger".into(),
            ));
        };
        let pending = BuildStatus::Pending.as_str();
        transaction!(self, |tx| {
            exec(
                &tx,
                "SELECT pg_advisory_xact_lock($1, hashtext($2))",
                &[&keys::TOOL_PUSHES, &b.tool],
            )
            .await?;
            if exists(
                &tx,
                "SELECT 1 FROM build_trigger_commits WHERE trigger_id = $1 AND commit_id = $2",
                &[&trigger_id, &commit],
            )
            .await?
            {
                return Ok(PushQueued::Replay);
            }
            let waiting = match opt(
                &tx,
                &format!(
                    "SELECT {COLUMNS} FROM builds
                     WHERE trigger_id = $1 AND trigger_ref = $2 AND status = $3
                     ORDER BY created_ms DESC, id COLLATE \"C\" DESC LIMIT 1
                     FOR UPDATE"
                ),
                &[&trigger_id, &reference, &pending],
            )
            .await?
            {
                Some(r) => Some(record(&r)?),
                None => None,
            };
            let mut coalesced = None;
            if let Some(mut w) = waiting {
                let replaced = w.resolved_ref.clone();
                w.params = b.params.clone();
                w.image_name = b.image_name.clone();
                w.resolved_ref = b.resolved_ref.clone();
                w.trigger = b.trigger.clone();
                // The row is locked and pending, so this updates it; were
                // it not, the push queues a build of its own rather than
                // report a coalescing that did not happen.
                let n = exec(
                    &tx,
                    "UPDATE builds SET params = $2, image_name = $3, resolved_ref = $4, trigger = $5
                     WHERE id = $1 AND status = $6",
                    &[
                        &w.id,
                        &json(&w.params)?,
                        &w.image_name,
                        &w.resolved_ref,
                        &trigger_json(&w.trigger)?,
                        &pending,
                    ],
                )
                .await?;
                if n == 1 {
                    coalesced = Some(PushQueued::Coalesced { build: w, replaced });
                }
            }
            let outcome = match coalesced {
                Some(c) => c,
                None => {
                    let unfinished: i64 = col(
                        &super::one(
                            &tx,
                            "SELECT COUNT(*) FROM builds WHERE tool = $1 AND status IN ($2, $3)",
                            &[&b.tool, &pending, &BuildStatus::Running.as_str()],
                        )
                        .await?,
                        0,
                    )?;
                    if unfinished.max(0) as usize >= max_unfinished {
                        return Err(StorageError::LimitReached {
                            limit: "queued_per_tool",
                            message: format!(
                                "tool {} has {unfinished} builds waiting or running, its limit ([builds] queued_per_tool = {max_unfinished}); the push was not queued",
                                b.tool
                            ),
                        });
                    }
                    insert(&tx, &b).await?;
                    PushQueued::Queued(b.clone())
                }
            };
            exec(
                &tx,
                "INSERT INTO build_trigger_commits (trigger_id, commit_id, ref, seen_ms)
                 VALUES ($1, $2, $3, $4)",
                &[&trigger_id, &commit, &reference, &now_ms()],
            )
            .await?;
            exec(
                &tx,
                "DELETE FROM build_trigger_commits WHERE trigger_id = $1 AND commit_id NOT IN
                     (SELECT commit_id FROM build_trigger_commits WHERE trigger_id = $1
                      ORDER BY seen_ms DESC LIMIT $2)",
                &[&trigger_id, &SEEN_COMMITS_KEPT],
            )
            .await?;
            Ok(outcome)
        })
    }
}

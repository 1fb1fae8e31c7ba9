//! `berth gc run tag-cleanup|untagged [--dry-run]` and `berth gc runs`.

use crate::admin_client::{AdminClient, Connection};
use berth_registry::api;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum GcCommand {
    /// Run a job now and print its report.
    Run {
        /// `tag-cleanup` or `untagged`.
        #[arg(value_parser = ["tag-cleanup", "untagged"])]
        job: String,
        /// Report what would be removed; change nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// Past runs, newest first.
    Runs {
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connection: Connection,
    },
}

fn human(n: u64) -> String {
    bytesize::ByteSize::b(n).display().iec().to_string()
}

fn summary(r: &api::RunReport) -> String {
    format!(
        "{} {}by {} [{}]: {} tags, {} manifests, {} blob links, {} blobs, {} orphan objects, {} uploads; {} freed in {} ms{}",
        r.job.as_str(),
        if r.dry_run { "(dry run) " } else { "" },
        r.trigger,
        r.status,
        r.tags_removed,
        r.manifests_removed,
        r.blob_links_removed,
        r.blobs_removed,
        r.orphan_objects_removed,
        r.uploads_expired,
        human(r.bytes_freed),
        r.finished_ms.saturating_sub(r.started_ms),
        if r.errors.is_empty() {
            String::new()
        } else {
            format!("; errors: {}", r.errors.join("; "))
        }
    )
}

fn pretty(v: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|e| format!("(cannot print: {e})"))
}

pub fn run(command: GcCommand) -> Result<String, String> {
    match command {
        GcCommand::Run {
            job,
            dry_run,
            json,
            connection,
        } => {
            let client = AdminClient::connect(&connection)?;
            let r: api::RunReport = client.call(
                "POST",
                &format!("/admin/v1/gc/{job}?dry_run={dry_run}"),
                None::<&()>,
            )?;
            Ok(if json { pretty(&r) } else { summary(&r) })
        }
        GcCommand::Runs {
            limit,
            json,
            connection,
        } => {
            let client = AdminClient::connect(&connection)?;
            let v: api::GcRuns = client.call(
                "GET",
                &format!("/admin/v1/gc/runs?limit={limit}"),
                None::<&()>,
            )?;
            if json {
                return Ok(pretty(&v));
            }
            let lines: Vec<String> = v
                .runs
                .iter()
                .map(|run| format!("#{} {}", run.id, summary(&run.report)))
                .collect();
            Ok(if lines.is_empty() {
                "no GC runs yet".into()
            } else {
                lines.join("\n")
            })
        }
    }
}

//! `berth gc run tag-cleanup|untagged [--dry-run]` and `berth gc runs`.

use crate::admin_client::{AdminClient, Connection};
use clap::Subcommand;
use serde_json::Value;

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

fn summary(r: &Value) -> String {
    let n = |k: &str| r[k].as_u64().unwrap_or(0);
    format!(
        "{} {}{} [{}]: {} tags, {} manifests, {} blob links, {} blobs, {} orphan objects, {} uploads; {} freed in {} ms{}",
        r["job"].as_str().unwrap_or("?"),
        if r["dry_run"].as_bool() == Some(true) { "(dry run) " } else { "" },
        r["trigger"].as_str().map(|t| format!("by {t}")).unwrap_or_default(),
        r["status"].as_str().unwrap_or("?"),
        n("tags_removed"),
        n("manifests_removed"),
        n("blob_links_removed"),
        n("blobs_removed"),
        n("orphan_objects_removed"),
        n("uploads_expired"),
        human(n("bytes_freed")),
        n("finished_ms").saturating_sub(n("started_ms")),
        match r["errors"].as_array() {
            Some(e) if !e.is_empty() => format!("; errors: {}", Value::Array(e.clone())),
            _ => String::new(),
        }
    )
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
            let (_, r) = client.call(
                "POST",
                &format!("/admin/v1/gc/{job}?dry_run={dry_run}"),
                None,
            )?;
            Ok(if json {
                serde_json::to_string_pretty(&r).expect("JSON prints")
            } else {
                summary(&r)
            })
        }
        GcCommand::Runs {
            limit,
            json,
            connection,
        } => {
            let client = AdminClient::connect(&connection)?;
            let (_, v) = client.call("GET", &format!("/admin/v1/gc/runs?limit={limit}"), None)?;
            if json {
                return Ok(serde_json::to_string_pretty(&v).expect("JSON prints"));
            }
            let lines: Vec<String> = v["runs"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|run| format!("#{} {}", run["id"], summary(&run["report"])))
                .collect();
            Ok(if lines.is_empty() {
                "no GC runs yet".into()
            } else {
                lines.join("\n")
            })
        }
    }
}

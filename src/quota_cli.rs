//! `berth quota ...`: the admin's view of quotas on a running berth, with
//! human-readable sizes or `--json`.

use crate::admin_client::{AdminClient, Connection};
use clap::Subcommand;
use serde_json::Value;

#[derive(Subcommand)]
pub enum QuotaCommand {
    /// Every namespace with its limit and usage, largest first.
    List {
        /// Only namespaces using at least this percentage of their limit.
        #[arg(long)]
        over_percent: Option<f64>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// One namespace: usage per repository and its largest images.
    Show {
        namespace: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// Set a namespace's limit: a size ("2GiB"), "default" or "unlimited".
    Set {
        namespace: String,
        limit: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// Recompute usage from the stored data, fix and report any drift.
    Reconcile {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connection: Connection,
    },
}

fn human(v: &Value) -> String {
    match v.as_u64() {
        Some(n) => bytesize::ByteSize::b(n).display().iec().to_string(),
        None => "unlimited".into(),
    }
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).expect("JSON prints")
}

pub fn run(command: QuotaCommand) -> Result<String, String> {
    match command {
        QuotaCommand::List {
            over_percent,
            json,
            connection,
        } => {
            let client = AdminClient::connect(&connection)?;
            let path = match over_percent {
                Some(p) => format!("/admin/v1/quotas?over_percent={p}"),
                None => "/admin/v1/quotas".into(),
            };
            let (_, v) = client.call("GET", &path, None)?;
            if json {
                return Ok(pretty(&v));
            }
            let mut out = format!(
                "{:<32} {:>12} {:>12} {:>12} {:>7} {:>6}\n",
                "NAMESPACE", "USED", "LIMIT", "AVAILABLE", "USE%", "REPOS"
            );
            for n in v["namespaces"].as_array().into_iter().flatten() {
                out.push_str(&format!(
                    "{:<32} {:>12} {:>12} {:>12} {:>6.1}% {:>6}\n",
                    n["namespace"].as_str().unwrap_or(""),
                    human(&n["used_bytes"]),
                    human(&n["limit_bytes"]),
                    human(&n["available_bytes"]),
                    n["percent"].as_f64().unwrap_or(0.0),
                    n["repositories"].as_u64().unwrap_or(0),
                ));
            }
            Ok(out.trim_end().to_owned())
        }
        QuotaCommand::Show {
            namespace,
            json,
            connection,
        } => {
            let client = AdminClient::connect(&connection)?;
            let (_, v) = client.call("GET", &format!("/admin/v1/quotas/{namespace}"), None)?;
            if json {
                return Ok(pretty(&v));
            }
            let mut out = format!(
                "{}: {} used of {} ({:.1}%, limit from {}), {} available\n\nREPOSITORY                                 UNIQUE       SHARED  MANIFESTS  TAGS\n",
                namespace,
                human(&v["used_bytes"]),
                human(&v["limit_bytes"]),
                v["percent"].as_f64().unwrap_or(0.0),
                v["limit_source"].as_str().unwrap_or("?"),
                human(&v["available_bytes"]),
            );
            for r in v["repositories_usage"].as_array().into_iter().flatten() {
                out.push_str(&format!(
                    "{:<40} {:>10} {:>12} {:>10} {:>5}\n",
                    r["repository"].as_str().unwrap_or(""),
                    human(&r["unique_bytes"]),
                    human(&r["shared_bytes"]),
                    r["manifests"].as_u64().unwrap_or(0),
                    r["tags"].as_u64().unwrap_or(0),
                ));
            }
            out.push_str("\nLARGEST IMAGES\n");
            for i in v["largest_images"].as_array().into_iter().flatten() {
                let tags: Vec<&str> = i["tags"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|t| t.as_str())
                    .collect();
                out.push_str(&format!(
                    "{:>10}  {}@{} {}\n",
                    human(&i["bytes"]),
                    i["repository"].as_str().unwrap_or(""),
                    i["digest"].as_str().unwrap_or(""),
                    if tags.is_empty() {
                        "(untagged)".to_owned()
                    } else {
                        format!("[{}]", tags.join(", "))
                    },
                ));
            }
            Ok(out.trim_end().to_owned())
        }
        QuotaCommand::Set {
            namespace,
            limit,
            json,
            connection,
        } => {
            let body = match limit.trim().to_ascii_lowercase().as_str() {
                "default" => serde_json::json!({ "limit_bytes": null }),
                "unlimited" => serde_json::json!({ "unlimited": true }),
                _ => match crate::config::parse_size_or_unlimited(&limit)? {
                    Some(b) => serde_json::json!({ "limit_bytes": b }),
                    None => serde_json::json!({ "unlimited": true }),
                },
            };
            let client = AdminClient::connect(&connection)?;
            let (_, v) =
                client.call("PUT", &format!("/admin/v1/quotas/{namespace}"), Some(body))?;
            if json {
                return Ok(pretty(&v));
            }
            Ok(format!(
                "{namespace}: limit {} ({}), {} used",
                human(&v["limit_bytes"]),
                v["limit_source"].as_str().unwrap_or("?"),
                human(&v["used_bytes"])
            ))
        }
        QuotaCommand::Reconcile { json, connection } => {
            let client = AdminClient::connect(&connection)?;
            let (_, v) = client.call("POST", "/admin/v1/quotas/_reconcile", None)?;
            if json {
                return Ok(pretty(&v));
            }
            let drift = v["drift"].as_array().cloned().unwrap_or_default();
            if drift.is_empty() {
                return Ok("no drift: every namespace's usage matches its data".into());
            }
            let mut out = format!("fixed drift in {} namespace(s):\n", drift.len());
            for d in drift {
                out.push_str(&format!(
                    "  {}: recorded {}, actual {}\n",
                    d["namespace"].as_str().unwrap_or(""),
                    human(&d["recorded_bytes"]),
                    human(&d["actual_bytes"])
                ));
            }
            Ok(out.trim_end().to_owned())
        }
    }
}

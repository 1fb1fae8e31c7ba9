//! `berth quota ...`: the admin's view of quotas on a running berth, with
//! human-readable sizes or `--json`.

use crate::admin_client::{AdminClient, Connection};
use berth_registry::api;
use clap::Subcommand;

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

fn human(n: Option<u64>) -> String {
    match n {
        Some(n) => bytesize::ByteSize::b(n).display().iec().to_string(),
        None => "unlimited".into(),
    }
}

fn pretty(v: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|e| format!("(cannot print: {e})"))
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
            let list: api::QuotaList = client.call("GET", &path, None::<&()>)?;
            if json {
                return Ok(pretty(&list));
            }
            let mut out = format!(
                "{:<32} {:>12} {:>12} {:>12} {:>7} {:>6}\n",
                "NAMESPACE", "USED", "LIMIT", "AVAILABLE", "USE%", "REPOS"
            );
            for n in &list.namespaces {
                out.push_str(&format!(
                    "{:<32} {:>12} {:>12} {:>12} {:>6.1}% {:>6}\n",
                    n.namespace,
                    human(Some(n.used_bytes)),
                    human(n.limit_bytes),
                    human(n.available_bytes),
                    n.percent,
                    n.repositories,
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
            let v: api::NamespaceDetail =
                client.call("GET", &format!("/admin/v1/quotas/{namespace}"), None::<&()>)?;
            if json {
                return Ok(pretty(&v));
            }
            let q = &v.quota;
            let mut out = format!(
                "{}: {} used of {} ({:.1}%, limit from {}), {} available\n\nREPOSITORY                                 UNIQUE       SHARED  MANIFESTS  TAGS\n",
                namespace,
                human(Some(q.used_bytes)),
                human(q.limit_bytes),
                q.percent,
                q.limit_source,
                human(q.available_bytes),
            );
            for r in &v.repositories_usage {
                out.push_str(&format!(
                    "{:<40} {:>10} {:>12} {:>10} {:>5}\n",
                    r.repository,
                    human(Some(r.unique_bytes)),
                    human(Some(r.shared_bytes)),
                    r.manifests,
                    r.tags,
                ));
            }
            out.push_str("\nLARGEST IMAGES\n");
            for i in &v.largest_images {
                out.push_str(&format!(
                    "{:>10}  {}@{} {}\n",
                    human(Some(i.bytes)),
                    i.repository,
                    i.digest,
                    if i.tags.is_empty() {
                        "(untagged)".to_owned()
                    } else {
                        format!("[{}]", i.tags.join(", "))
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
                "default" => api::SetQuota::default_limit(),
                "unlimited" => api::SetQuota::unlimited(),
                _ => match crate::config::parse_size_or_unlimited(&limit)? {
                    Some(b) => api::SetQuota::bytes(b),
                    None => api::SetQuota::unlimited(),
                },
            };
            let client = AdminClient::connect(&connection)?;
            let q: api::NamespaceQuota =
                client.call("PUT", &format!("/admin/v1/quotas/{namespace}"), Some(&body))?;
            if json {
                return Ok(pretty(&q));
            }
            Ok(format!(
                "{namespace}: limit {} ({}), {} used",
                human(q.limit_bytes),
                q.limit_source,
                human(Some(q.used_bytes))
            ))
        }
        QuotaCommand::Reconcile { json, connection } => {
            let client = AdminClient::connect(&connection)?;
            let v: api::Reconciled =
                client.call("POST", "/admin/v1/quotas/_reconcile", None::<&()>)?;
            if json {
                return Ok(pretty(&v));
            }
            if v.drift.is_empty() {
                return Ok("no drift: every namespace's usage matches its data".into());
            }
            let mut out = format!("fixed drift in {} namespace(s):\n", v.drift.len());
            for d in &v.drift {
                out.push_str(&format!(
                    "  {}: recorded {}, actual {}\n",
                    d.namespace,
                    human(Some(d.recorded_bytes)),
                    human(Some(d.actual_bytes))
                ));
            }
            Ok(out.trim_end().to_owned())
        }
    }
}

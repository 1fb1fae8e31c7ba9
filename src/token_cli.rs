//! `berth token ...`: API tokens on a running berth, through the admin API.
//! `create` prints the token alone on stdout (so `TOKEN=$(berth token
//! create ...)` works) and what it is on stderr; it is never shown again.

use crate::admin_client::{AdminClient, Connection};
use berth_registry::api;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create an API token acting for NAMESPACE (or an admin token with
    /// --admin) and print it: it is shown only this once.
    Create {
        /// The namespace the token acts for.
        #[arg(required_unless_present = "admin", conflicts_with = "admin")]
        namespace: Option<String>,
        /// An admin token instead of a namespace's.
        #[arg(long)]
        admin: bool,
        /// Its name, unique among the owner's live tokens (e.g. "ci").
        #[arg(long)]
        name: String,
        /// Its lifetime, e.g. "90d" or "12h" [default: [auth] api_token_default_lifetime].
        #[arg(long)]
        expires: Option<String>,
        /// "push" (everything the namespace's account may do; the default)
        /// or "pull" (pull only).
        #[arg(long, value_parser = ["pull", "push"])]
        scope: Option<String>,
        /// Print the whole answer as JSON (the token included).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// List API tokens (never their secrets): a namespace's, the admin's
    /// (--admin), or all.
    List {
        namespace: Option<String>,
        #[arg(long, conflicts_with = "namespace")]
        admin: bool,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// Revoke an API token by id; it stops working at once.
    Revoke {
        id: String,
        #[command(flatten)]
        connection: Connection,
    },
}

fn pretty(v: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|e| format!("(cannot print: {e})"))
}

fn date(ms: i64) -> String {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64),
    )
    .to_string()
}

fn owner(t: &api::TokenInfo) -> &str {
    t.namespace.as_deref().unwrap_or("(admin)")
}

pub fn run(command: TokenCommand) -> Result<String, String> {
    match command {
        TokenCommand::Create {
            namespace,
            admin,
            name,
            expires,
            scope,
            json,
            connection,
        } => {
            let scope = match scope.as_deref() {
                None => None,
                Some(s) => {
                    Some(api::TokenScope::parse(s).ok_or_else(|| format!("unknown scope {s:?}"))?)
                }
            };
            let body = api::CreateToken {
                namespace,
                admin,
                name,
                expires_in: expires,
                scope,
            };
            let client = AdminClient::connect(&connection)?;
            let created: api::TokenCreated =
                client.call("POST", "/admin/v1/tokens", Some(&body))?;
            if json {
                return Ok(pretty(&created));
            }
            let t = &created.info;
            eprintln!(
                "API token {} ({:?} of {}, scope {}, expires {}). It is shown only this once: store it now.",
                t.id,
                t.name,
                owner(t),
                t.scope.as_str(),
                t.expires_at
            );
            Ok(created.token)
        }
        TokenCommand::List {
            namespace,
            admin,
            json,
            connection,
        } => {
            let client = AdminClient::connect(&connection)?;
            let filter = match (&namespace, admin) {
                (Some(ns), _) => format!("namespace={ns}&"),
                (None, true) => "admin=true&".into(),
                (None, false) => String::new(),
            };
            let mut tokens = Vec::new();
            let mut last: Option<String> = None;
            loop {
                let page = match &last {
                    Some(l) => format!("/admin/v1/tokens?{filter}last={l}"),
                    None => format!("/admin/v1/tokens?{filter}"),
                };
                let list: api::TokenList = client.call("GET", &page, None::<&()>)?;
                tokens.extend(list.tokens);
                match list.next {
                    Some(next) => last = Some(next),
                    None => break,
                }
            }
            if json {
                return Ok(pretty(&api::TokenList { tokens, next: None }));
            }
            tokens.sort_by(|a, b| {
                (owner(a), &a.name, a.created_ms).cmp(&(owner(b), &b.name, b.created_ms))
            });
            let mut out = format!(
                "{:<16}  {:<24} {:<24} {:<5}  {:<20}  {}\n",
                "ID", "NAMESPACE", "NAME", "SCOPE", "EXPIRES", "LAST USED"
            );
            for t in &tokens {
                out.push_str(&format!(
                    "{:<16}  {:<24} {:<24} {:<5}  {:<20}  {}{}\n",
                    t.id,
                    owner(t),
                    t.name,
                    t.scope.as_str(),
                    t.expires_at,
                    t.last_used_ms.map(date).unwrap_or_else(|| "never".into()),
                    if t.expired { "  (expired)" } else { "" },
                ));
            }
            Ok(out.trim_end().to_owned())
        }
        TokenCommand::Revoke { id, connection } => {
            let client = AdminClient::connect(&connection)?;
            client.call_empty("DELETE", &format!("/admin/v1/tokens/{id}"))?;
            Ok(format!("API token {id} revoked"))
        }
    }
}

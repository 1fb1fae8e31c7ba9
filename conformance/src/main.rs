//! `berth-conformance --url URL`: runs the suite against any registry and
//! prints one line per check. Exits non-zero when a required check fails
//! (or any check, with --strict).

use berth_conformance::{report, run, Level, Target};
use clap::Parser;
use std::process::ExitCode;

#[derive(Parser)]
#[command(about = "OCI distribution-spec conformance checks against a live registry")]
struct Args {
    /// Base URL of the registry, e.g. http://127.0.0.1:5000
    #[arg(long)]
    url: String,
    /// Namespace (first path segment) to create test repositories under.
    #[arg(long, default_value = "conformance")]
    namespace: String,
    #[arg(long, env = "CONFORMANCE_USERNAME")]
    username: Option<String>,
    #[arg(long, env = "CONFORMANCE_PASSWORD")]
    password: Option<String>,
    /// Only run checks whose name contains this.
    #[arg(long, default_value = "")]
    filter: String,
    /// Fail on optional checks too.
    #[arg(long)]
    strict: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let credentials = match (args.username, args.password) {
        (Some(u), Some(p)) => Some((u, p)),
        _ => None,
    };
    let target = Target {
        url: args.url,
        namespace: args.namespace,
        credentials,
    };
    let outcomes = run(&target, &args.filter);
    print!("{}", report(&outcomes));
    let failed = outcomes
        .iter()
        .any(|o| o.result.is_err() && (args.strict || o.level == Level::Required));
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

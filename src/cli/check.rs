//! `check`: validate the policy file; no network, no credentials needed.

use std::process::ExitCode;

use clap::Args;

use super::{ConfigArg, read};

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    config: ConfigArg,
}

pub fn run(args: CheckArgs) -> Result<ExitCode, ExitCode> {
    let config = read(&args.config)?;
    // Valid, but said the way problems are, so that CI logs show it too.
    for endpoint in &config.insecure_endpoints {
        eprintln!("{}", endpoint.warning());
    }
    for warning in &config.file_warnings {
        eprintln!("{warning}");
    }
    let plural = |n: usize, one: &str| format!("{n} {one}{}", if n == 1 { "" } else { "s" });
    println!(
        "ok: {}, {}",
        plural(config.keys.len(), "key"),
        plural(config.stores.len(), "store")
    );
    Ok(ExitCode::SUCCESS)
}

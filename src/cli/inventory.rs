//! `inventory`: every service account and key on the server; read-only.

use std::process::ExitCode;
use std::time::Duration;

use chrono::Utc;
use clap::Args;

use super::{ConfigArg, Output, engine, load, runtime};
use crate::audit::inventory;
use crate::engine::Mode;
use crate::output;

#[derive(Debug, Args)]
pub struct InventoryArgs {
    #[command(flatten)]
    config: ConfigArg,
    #[arg(long, value_enum, default_value_t = Output::Table)]
    output: Output,
    /// Only keys whose last workload login is older than this, or that none ever used (e.g. "90d").
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(super) stale: Option<Duration>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e}; write e.g. \"90d\", \"12h\""))
}

pub fn run(args: InventoryArgs) -> Result<ExitCode, ExitCode> {
    let config = load(&args.config)?;
    let rt = runtime()?;
    let engine = engine(&config, Mode::ReadOnly)?;
    match rt.block_on(inventory::collect(engine.zenml(), config.concurrency)) {
        Ok(accounts) => {
            let rows = inventory::rows(&accounts, &config.keys, Utc::now(), args.stale);
            print!("{}", output::inventory::render(&rows, args.output.into()));
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("zenml-rotator inventory: ZenML: {e}");
            Err(ExitCode::FAILURE)
        }
    }
}

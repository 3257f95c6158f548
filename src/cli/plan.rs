//! `plan`: read-only; per key the state, age, next due time and the action a pass would take now,
//! then `[hygiene]`'s findings. Exit 1 when a key could not be read.

use std::process::ExitCode;

use chrono::Utc;
use clap::Args;

use super::{ConfigArg, Output, engine, exit, load, runtime};
use crate::audit::hygiene;
use crate::engine::{Mode, reconcile};
use crate::output;

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    config: ConfigArg,
    #[arg(long, value_enum, default_value_t = Output::Table)]
    output: Output,
}

pub fn run(args: PlanArgs) -> Result<ExitCode, ExitCode> {
    let config = load(&args.config)?;
    let rt = runtime()?;
    let engine = engine(&config, Mode::ReadOnly)?;
    let now = Utc::now();
    let rows = rt.block_on(reconcile::plan(&engine, &config.keys, now));
    let mut all_readable = rows.iter().all(|(_, ok)| *ok);
    let plans: Vec<_> = rows.into_iter().map(|(p, _)| p).collect();
    let hygiene = match rt.block_on(hygiene::findings(&engine, &config, now)) {
        Ok(findings) => findings.iter().map(|f| f.plan_row(now)).collect(),
        Err(e) => {
            eprintln!("zenml-rotator: hygiene: cannot list the server's keys: {e}");
            all_readable = false;
            Vec::new()
        }
    };
    print!(
        "{}",
        output::plan::render(&plans, &hygiene, args.output.into())
    );
    Ok(exit(all_readable))
}

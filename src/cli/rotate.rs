//! `rotate NAME [--force]`: one policy now, whatever its age (invariant 1 still holds without
//! `--force`); a journaled rotation of it is replayed first.

use std::process::ExitCode;
use std::sync::atomic::AtomicBool;

use clap::Args;

use super::{ConfigArg, Output, engine, exit, load, policy_named, runtime};
use crate::engine::Mode;
use crate::engine::failure::Force;
use crate::pass::{self, Scope};
use crate::{metrics, notify, output};

#[derive(Debug, Args)]
pub struct RotateArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The `name` of a `[[key]]`.
    pub(super) name: String,
    /// Rotate even inside the previous value's retain window (cuts off consumers still on it).
    #[arg(long)]
    force: bool,
    #[arg(long, value_enum, default_value_t = Output::Table)]
    output: Output,
}

pub fn run(args: RotateArgs) -> Result<ExitCode, ExitCode> {
    let config = load(&args.config)?;
    let policy = policy_named(&config, &args.name)?;
    let rt = runtime()?;
    let engine = engine(&config, Mode::Live)?;
    notify::install(&config);
    let scope = Scope {
        keys: std::slice::from_ref(&policy),
        force: Some(if args.force { Force::Yes } else { Force::No }),
        hygiene: false,
    };
    let report = rt.block_on(pass::run(&engine, &config, scope, &AtomicBool::new(false)));
    print!(
        "{}",
        output::pass::render(&report.keys, &[], args.output.into())
    );
    rt.block_on(notify::drain(notify::EXIT_WAIT));
    rt.block_on(metrics::export_one_shot(&config.metrics));
    // The key asked for decides; journal entries of other policies are reported, not failed on.
    Ok(exit(report.failed() == 0))
}

//! `once`: one pass over every key (and `[hygiene]`), then the metrics to the textfile and/or the
//! Pushgateway. `--dry-run` reads everything and changes nothing.

use std::process::ExitCode;
use std::sync::atomic::AtomicBool;

use clap::Args;

use super::{ConfigArg, Output, engine, exit, load, runtime};
use crate::engine::Mode;
use crate::pass::{self, Scope};
use crate::{metrics, notify, output};

#[derive(Debug, Args)]
pub struct OnceArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Read everything, change nothing: report what a pass would do.
    #[arg(long)]
    dry_run: bool,
    #[arg(long, value_enum, default_value_t = Output::Table)]
    output: Output,
}

pub fn run(args: OnceArgs) -> Result<ExitCode, ExitCode> {
    let config = load(&args.config)?;
    let rt = runtime()?;
    // The one place a dry run is chosen. It changes nothing (it takes no claim either), and
    // what it would export is no measurement.
    let mode = if args.dry_run {
        Mode::DryRun
    } else {
        Mode::Live
    };
    let engine = engine(&config, mode)?;
    if mode == Mode::Live {
        notify::install(&config);
    }
    let stop = AtomicBool::new(false);
    let report = rt.block_on(pass::run(&engine, &config, Scope::all(&config), &stop));
    print!(
        "{}",
        output::pass::render(&report.keys, &report.hygiene, args.output.into())
    );
    if mode == Mode::Live {
        // Failed deliveries are counted before the metrics leave.
        rt.block_on(notify::drain(notify::EXIT_WAIT));
        rt.block_on(metrics::export_one_shot(&config.metrics));
    }
    Ok(exit(report.success()))
}

//! `run`: the daemon (`crate::daemon`).

use std::process::ExitCode;

use clap::Args;

use super::{ConfigArg, EX_CONFIG, runtime};
use crate::daemon;

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    config: ConfigArg,
}

pub fn run(args: RunArgs) -> Result<ExitCode, ExitCode> {
    let rt = runtime()?;
    match rt.block_on(daemon::run(args.config.path)) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(daemon::DaemonError::Config(e)) => {
            eprintln!("{e}");
            Err(ExitCode::from(EX_CONFIG))
        }
        Err(e) => {
            eprintln!("zenml-rotator: {e}");
            Err(ExitCode::FAILURE)
        }
    }
}

//! The binary: parses the command line and hands it to `zenml_rotator::cli`.

use std::process::ExitCode;

use clap::Parser;
use zenml_rotator::cli::Cli;

fn main() -> ExitCode {
    Cli::parse().run()
}

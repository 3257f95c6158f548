//! `completions SHELL`: the shell's completion script on stdout, generated from the same clap
//! definitions as the parser, so it offers exactly the commands and flags that exist.

use std::process::ExitCode;

use clap::{Args, CommandFactory};
use clap_complete::Shell;

use super::{BIN, Cli};

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: Shell,
}

pub fn run(args: CompletionsArgs) -> Result<ExitCode, ExitCode> {
    print!("{}", script(args.shell));
    Ok(ExitCode::SUCCESS)
}

/// The completion script for `shell`.
pub(super) fn script(shell: Shell) -> String {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, BIN, &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

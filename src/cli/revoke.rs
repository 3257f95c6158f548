//! `revoke NAME [--yes]`: a leaked key. A new value is stored, then the leaked one and every token
//! minted from it are cut off now. Asks on a terminal; anywhere else it needs `--yes`.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use clap::Args;

use super::{ConfigArg, Output, engine, load, policy_named, runtime};
use crate::config::Config;
use crate::engine::Mode;
use crate::{metrics, notify, output};

#[derive(Debug, Args)]
pub struct RevokeArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The `name` of a `[[key]]` whose current value leaked.
    pub(super) name: String,
    /// Do not ask: cut the key off now (needed when standard input is not a terminal).
    #[arg(long)]
    yes: bool,
    #[arg(long, value_enum, default_value_t = Output::Table)]
    output: Output,
}

/// Asks on the terminal; `true` when the operator typed yes.
fn confirmed(config: &Config, name: &str) -> bool {
    let Some(policy) = config.key(name) else {
        return false;
    };
    eprint!(
        "Revoke policy {name:?} (service account {:?}, key {:?})? A new value is stored in {:?} {:?}, \
         then the current value and every session logged in with it stop working at once, \
         until each consumer reloads. [y/N] ",
        policy.service_account, policy.api_key, policy.store, policy.path
    );
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    if std::io::stdin().lock().read_line(&mut answer).is_err() {
        return false;
    }
    matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes")
}

pub fn run(args: RevokeArgs) -> Result<ExitCode, ExitCode> {
    let config = load(&args.config)?;
    let policy = policy_named(&config, &args.name)?;
    if !args.yes {
        if !std::io::stdin().is_terminal() {
            eprintln!(
                "zenml-rotator: revoke cuts off every consumer of the key until it reloads; \
                 standard input is not a terminal to ask on, so pass --yes to confirm"
            );
            return Err(ExitCode::FAILURE);
        }
        if !confirmed(&config, &args.name) {
            eprintln!("zenml-rotator: not revoked");
            return Err(ExitCode::FAILURE);
        }
    }
    let rt = runtime()?;
    let engine = engine(&config, Mode::Live)?;
    notify::install(&config);
    let store_kind = config
        .stores
        .get(&policy.store)
        .map(|s| s.kind())
        .unwrap_or("the");
    let result = rt.block_on(crate::engine::revoke::revoke(&engine, &policy));
    let code = match &result {
        Ok(r) => {
            print!(
                "{}",
                output::revoke::render(&policy, r, store_kind, args.output.into())
            );
            let hook_failed = r
                .hooks
                .iter()
                .any(|o| matches!(o, crate::engine::failure::Outcome::HookFailed { .. }));
            if hook_failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(f) => {
            eprintln!("zenml-rotator: revoke {}: {f}", policy.name);
            ExitCode::FAILURE
        }
    };
    rt.block_on(notify::drain(notify::EXIT_WAIT));
    rt.block_on(metrics::export_one_shot(&config.metrics));
    Ok(code)
}

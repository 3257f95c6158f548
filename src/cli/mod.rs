//! The command line: arguments, logging, exit codes. One file per command, each taking its parsed
//! arguments and returning its exit code; everything a command does lives below it.
//! Exit codes (README, "Using it"): 0 done, 1 failed, 78 (EX_CONFIG) the policy file is invalid or unreadable.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

use crate::config::Config;
use crate::engine::{Engine, Mode};
use crate::output::OutputFormat;

mod check;
mod completions;
mod inventory;
mod man;
mod once;
mod plan;
mod revoke;
mod rotate;
mod run;
mod schema;
#[cfg(test)]
mod tests;

/// The binary's name, as the completions and manual pages call it.
const BIN: &str = "zenml-rotator";

/// sysexits.h EX_CONFIG: the configuration is wrong; retrying will not help.
const EX_CONFIG: u8 = 78;

/// Rotates ZenML service-account API keys into Vault KV v2, AWS Secrets Manager or a local file.
///
/// zenml-rotator reads a policy file (TOML) and, for each managed key, rotates it when it is due
/// with ZenML's retain semantics, writes the new value where workloads read it, confirms the old
/// value is rejected once its retain window has passed, and exports Prometheus metrics. It never
/// rotates a key whose previous value is still inside its retain window (unless --force), never
/// rotates into a store it cannot write right now, and never writes key material to its output.
///
/// Run it as a daemon (run; systemd: zenml-rotator.service) or one pass at a time (once;
/// systemd: zenml-rotator.timer, or a Kubernetes CronJob). `check` validates a policy file
/// without the network; `plan` shows what a pass would do and why.
#[derive(Debug, Parser)]
#[command(name = "zenml-rotator", version, propagate_version = true)]
pub struct Cli {
    /// Log line format on stderr; the level comes from RUST_LOG (default info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Output {
    /// For people.
    Table,
    /// The same facts for scripts.
    Json,
}

impl From<Output> for OutputFormat {
    fn from(o: Output) -> OutputFormat {
        match o {
            Output::Table => OutputFormat::Table,
            Output::Json => OutputFormat::Json,
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate the policy file; no network, no credentials needed.
    Check(check::CheckArgs),
    /// Read-only: per key the state, age, next due time and the action a pass would take now.
    Plan(plan::PlanArgs),
    /// One pass: rotate what is due, finalize expired windows, replay the journal, exit.
    Once(once::OnceArgs),
    /// Rotate one policy now, whatever its age.
    Rotate(rotate::RotateArgs),
    /// The daemon: passes on schedule, HTTP endpoints, SIGHUP reload, SIGTERM drains.
    Run(run::RunArgs),
    /// Every service account and key on the server: managed or not, active, age, last login.
    Inventory(inventory::InventoryArgs),
    /// A leaked key: store a new value, then cut the old value and its tokens off now.
    Revoke(revoke::RevokeArgs),
    /// Print the shell completion script for bash, zsh, fish, elvish or powershell.
    Completions(completions::CompletionsArgs),
    /// Print the policy file's JSON Schema (for editors and CI).
    Schema(schema::SchemaArgs),
    /// Write the manual pages (zenml-rotator.1 and one per command) into a directory.
    Man(man::ManArgs),
}

#[derive(Debug, Args)]
struct ConfigArg {
    /// The policy file.
    #[arg(
        short = 'c',
        long = "config",
        env = "ZENML_ROTATOR_CONFIG",
        value_name = "FILE",
        value_hint = clap::ValueHint::FilePath
    )]
    path: PathBuf,
}

impl Cli {
    /// Runs the command the arguments name.
    pub fn run(self) -> ExitCode {
        init_logging(self.log_format);
        if let Err(e) = crate::host::forbid_core_dumps() {
            tracing::warn!(
                "cannot turn core dumps off ({e}): a crash dump could hold key values; set the \
                 core size limit to 0 (`ulimit -c 0`, systemd `LimitCORE=0`)"
            );
        }
        let result = match self.command {
            Command::Check(args) => check::run(args),
            Command::Plan(args) => plan::run(args),
            Command::Once(args) => once::run(args),
            Command::Rotate(args) => rotate::run(args),
            Command::Run(args) => run::run(args),
            Command::Inventory(args) => inventory::run(args),
            Command::Revoke(args) => revoke::run(args),
            Command::Completions(args) => completions::run(args),
            Command::Schema(args) => schema::run(args),
            Command::Man(args) => man::run(args),
        };
        // Err carries the exit code of a command that stopped early (and already said why).
        result.unwrap_or_else(|code| code)
    }
}

fn init_logging(format: LogFormat) {
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // vaultrs and rustify log their errors, whose text can hold a response body (a secret):
    // they stay silent whatever RUST_LOG asks. Our own store module reports their errors.
    for quiet in ["vaultrs=off", "rustify=off"] {
        if let Ok(d) = quiet.parse() {
            filter = filter.add_directive(d);
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Loads the policy file, or prints every problem with it; invariant 5: nothing runs on a bad file.
/// A cleartext endpoint the file allows is logged and counted (`insecure_endpoints`) at every load.
fn load(config: &ConfigArg) -> Result<Config, ExitCode> {
    let config = read(config)?;
    config.log_warnings();
    crate::metrics::get().set_insecure_endpoints(config.insecure_endpoints.len());
    Ok(config)
}

/// The policy file, validated; every problem printed when it is not valid.
fn read(config: &ConfigArg) -> Result<Config, ExitCode> {
    Config::load(&config.path).map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(EX_CONFIG)
    })
}

/// The `[[key]]` a command names (`rotate NAME`, `revoke NAME`), or a message listing the names.
fn policy_named(config: &Config, name: &str) -> Result<crate::config::KeyPolicy, ExitCode> {
    if let Some(policy) = config.key(name) {
        return Ok(policy.clone());
    }
    let names: Vec<&str> = config.keys.iter().map(|k| k.name.as_str()).collect();
    eprintln!(
        "zenml-rotator: no [[key]] named {name:?} in {} (known: {})",
        config.source.display(),
        names.join(", ")
    );
    Err(ExitCode::FAILURE)
}

/// 0 when everything succeeded, else 1.
fn exit(success: bool) -> ExitCode {
    if success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// One runtime per process: current-thread, since the work is waiting on the network, and one
/// thread keeps the daemon's idle footprint small.
fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("zenml-rotator: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        })
}

fn engine(config: &Config, mode: Mode) -> Result<Engine, ExitCode> {
    Engine::new(config, mode).map_err(|e| {
        eprintln!("zenml-rotator: {e}");
        ExitCode::FAILURE
    })
}

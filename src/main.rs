//! The command line: arguments, logging, exit codes. Everything a command does lives in the library;
//! each command is one function here taking its parsed arguments and returning its exit code.
//! Exit codes (DESIGN.md): 0 done, 1 failed, 78 (EX_CONFIG) the policy file is invalid or unreadable.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;
use zenml_rotator::config::Config;

/// sysexits.h EX_CONFIG: the configuration is wrong; retrying will not help.
const EX_CONFIG: u8 = 78;

/// Rotates ZenML service-account API keys into Vault KV v2, AWS Secrets Manager or a local file.
#[derive(Debug, Parser)]
#[command(name = "zenml-rotator", version)]
struct Cli {
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

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate the policy file; no network, no credentials needed.
    Check(CheckArgs),
    /// Read-only: per key the state, age, next due time and the action a pass would take now.
    Plan(PlanArgs),
    /// One pass: rotate what is due, finalize expired windows, replay the journal, exit.
    Once(OnceArgs),
    /// Rotate one policy now, whatever its age.
    Rotate(RotateArgs),
    /// The daemon: passes on schedule, HTTP endpoints, SIGHUP reload, SIGTERM drains.
    Run(RunArgs),
    /// Every service account and key on the server: managed or not, active, age, last login.
    Inventory(InventoryArgs),
}

#[derive(Debug, Args)]
struct ConfigArg {
    /// The policy file.
    #[arg(
        short = 'c',
        long = "config",
        env = "ZENML_ROTATOR_CONFIG",
        value_name = "FILE"
    )]
    path: PathBuf,
}

#[derive(Debug, Args)]
struct CheckArgs {
    #[command(flatten)]
    config: ConfigArg,
}

#[derive(Debug, Args)]
struct PlanArgs {
    #[command(flatten)]
    config: ConfigArg,
    #[arg(long, value_enum, default_value_t = Output::Table)]
    output: Output,
}

#[derive(Debug, Args)]
struct OnceArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Read everything, change nothing: report what a pass would do.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Debug, Args)]
struct RotateArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The `name` of a `[[key]]`.
    name: String,
    /// Rotate even inside the previous value's retain window (cuts off consumers still on it).
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    config: ConfigArg,
}

#[derive(Debug, Args)]
struct InventoryArgs {
    #[command(flatten)]
    config: ConfigArg,
    #[arg(long, value_enum, default_value_t = Output::Table)]
    output: Output,
    /// Flag keys whose last login is older than this (e.g. "90d").
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    stale: Option<Duration>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e}; write e.g. \"90d\", \"12h\""))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Check(args) => check(args),
        Command::Plan(args) => plan(args),
        Command::Once(args) => once(args),
        Command::Rotate(args) => rotate(args),
        Command::Run(args) => run(args),
        Command::Inventory(args) => inventory(args),
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Loads the policy file, or prints every problem with it; invariant 5: nothing runs on a bad file.
fn load(config: &ConfigArg) -> Result<Config, ExitCode> {
    Config::load(&config.path).map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(EX_CONFIG)
    })
}

fn check(args: CheckArgs) -> ExitCode {
    let config = match load(&args.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let plural = |n: usize, one: &str| format!("{n} {one}{}", if n == 1 { "" } else { "s" });
    println!(
        "ok: {}, {}",
        plural(config.keys.len(), "key"),
        plural(config.stores.len(), "store")
    );
    ExitCode::SUCCESS
}

fn not_implemented(command: &str, config: &ConfigArg, args: &dyn std::fmt::Debug) -> ExitCode {
    tracing::debug!(?args, "{command}");
    if let Err(code) = load(config) {
        return code;
    }
    eprintln!("zenml-rotator {command}: not implemented yet");
    ExitCode::FAILURE
}

fn plan(args: PlanArgs) -> ExitCode {
    not_implemented("plan", &args.config, &args)
}

fn once(args: OnceArgs) -> ExitCode {
    not_implemented("once", &args.config, &args)
}

fn rotate(args: RotateArgs) -> ExitCode {
    not_implemented("rotate", &args.config, &args)
}

fn run(args: RunArgs) -> ExitCode {
    not_implemented("run", &args.config, &args)
}

fn inventory(args: InventoryArgs) -> ExitCode {
    not_implemented("inventory", &args.config, &args)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_command_takes_the_documented_arguments() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("zenml-rotator").chain(args.iter().copied()))
        };
        assert!(parse(&["check", "-c", "f.toml"]).is_ok());
        assert!(parse(&["plan", "-c", "f.toml", "--output", "json"]).is_ok());
        assert!(parse(&["plan", "-c", "f.toml", "--output", "yaml"]).is_err());
        assert!(parse(&["once", "--config", "f.toml", "--dry-run"]).is_ok());
        assert!(parse(&["rotate", "-c", "f.toml", "training", "--force"]).is_ok());
        assert!(parse(&["rotate", "-c", "f.toml"]).is_err());
        assert!(parse(&["run", "-c", "f.toml", "--log-format", "json"]).is_ok());
        assert!(
            parse(&[
                "--log-format",
                "json",
                "inventory",
                "-c",
                "f.toml",
                "--stale",
                "90d"
            ])
            .is_ok()
        );
        assert!(parse(&["inventory", "-c", "f.toml", "--stale", "soon"]).is_err());
        match parse(&["inventory", "-c", "f.toml", "--stale", "90d"]).map(|c| c.command) {
            Ok(Command::Inventory(a)) => {
                assert_eq!(a.stale, Some(Duration::from_secs(90 * 86_400)))
            }
            other => panic!("{other:?}"),
        }
    }
}

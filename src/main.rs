//! The command line: arguments, logging, exit codes. Everything a command does lives in the library;
//! each command is one function here taking its parsed arguments and returning its exit code.
//! Exit codes (DESIGN.md): 0 done, 1 failed, 78 (EX_CONFIG) the policy file is invalid or unreadable.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use chrono::Utc;
use clap::{Args, Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;
use zenml_rotator::config::Config;
use zenml_rotator::inventory;
use zenml_rotator::journal::StateLock;
use zenml_rotator::report::{self, OutputFormat};
use zenml_rotator::rotation::{Engine, EngineOptions, Force};
use zenml_rotator::{daemon, metrics};

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
    #[arg(long, value_enum, default_value_t = Output::Table)]
    output: Output,
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
    #[arg(long, value_enum, default_value_t = Output::Table)]
    output: Output,
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
    /// Only keys whose last workload login is older than this, or that none ever used (e.g. "90d").
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    stale: Option<Duration>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e}; write e.g. \"90d\", \"12h\""))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Check(args) => check(args),
        Command::Plan(args) => plan(args),
        Command::Once(args) => once(args),
        Command::Rotate(args) => rotate(args),
        Command::Run(args) => run(args),
        Command::Inventory(args) => inventory(args),
    };
    // Err carries the exit code of a command that stopped early (and already said why).
    result.unwrap_or_else(|code| code)
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
fn load(config: &ConfigArg) -> Result<Config, ExitCode> {
    Config::load(&config.path).map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(EX_CONFIG)
    })
}

/// `plan` and `inventory` only read: they never create the state directory.
const READ_ONLY: EngineOptions = EngineOptions {
    read_only: true,
    dry_run: false,
};

/// 0 when everything succeeded, else 1 (DESIGN.md's exit codes).
fn exit(success: bool) -> ExitCode {
    if success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn check(args: CheckArgs) -> Result<ExitCode, ExitCode> {
    let config = load(&args.config)?;
    let plural = |n: usize, one: &str| format!("{n} {one}{}", if n == 1 { "" } else { "s" });
    println!(
        "ok: {}, {}",
        plural(config.keys.len(), "key"),
        plural(config.stores.len(), "store")
    );
    Ok(ExitCode::SUCCESS)
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

fn engine(config: &Config, opts: EngineOptions) -> Result<Engine, ExitCode> {
    Engine::new(config, opts).map_err(|e| {
        eprintln!("zenml-rotator: {e}");
        ExitCode::FAILURE
    })
}

fn format(o: Output) -> OutputFormat {
    match o {
        Output::Table => OutputFormat::Table,
        Output::Json => OutputFormat::Json,
    }
}

/// Holds the state directory for the life of the command, or explains who does.
fn lock(config: &Config) -> Result<StateLock, ExitCode> {
    StateLock::acquire(&config.state.dir).map_err(|e| {
        eprintln!("zenml-rotator: {e}");
        ExitCode::FAILURE
    })
}

fn plan(args: PlanArgs) -> Result<ExitCode, ExitCode> {
    let config = load(&args.config)?;
    let rt = runtime()?;
    let engine = engine(&config, READ_ONLY)?;
    let now = Utc::now();
    let rows = rt.block_on(engine.plan(&config.keys, now));
    let mut all_readable = rows.iter().all(|(_, ok)| *ok);
    let plans: Vec<_> = rows.into_iter().map(|(p, _)| p).collect();
    let hygiene = match rt.block_on(engine.hygiene_findings(&config, now)) {
        Ok(findings) => findings.iter().map(|f| f.plan_row(now)).collect(),
        Err(e) => {
            eprintln!("zenml-rotator: hygiene: cannot list the server's keys: {e}");
            all_readable = false;
            Vec::new()
        }
    };
    print!(
        "{}",
        report::plan_with_hygiene(&plans, &hygiene, format(args.output))
    );
    Ok(exit(all_readable))
}

fn once(args: OnceArgs) -> Result<ExitCode, ExitCode> {
    let config = load(&args.config)?;
    let rt = runtime()?;
    // A dry run changes nothing, so it may run beside a daemon.
    let _lock = if args.dry_run {
        None
    } else {
        Some(lock(&config)?)
    };
    let engine = engine(
        &config,
        EngineOptions {
            dry_run: args.dry_run,
            ..Default::default()
        },
    )?;
    let orphans = engine.orphaned_journal_entries(&config);
    for o in &orphans {
        tracing::error!("{o}");
    }
    let reports = rt.block_on(engine.pass(&config.keys));
    let hygiene = if config.hygiene.is_some() {
        rt.block_on(engine.hygiene(&config, args.dry_run))
    } else {
        Vec::new()
    };
    print!(
        "{}",
        report::pass_with_hygiene(&reports, &hygiene, format(args.output))
    );
    if !args.dry_run {
        rt.block_on(metrics::export_one_shot(&config.metrics));
    }
    let failed = reports.iter().filter(|r| r.result.is_err()).count()
        + hygiene.iter().filter(|h| h.failed).count();
    if failed > 0 || !orphans.is_empty() {
        tracing::error!(failed, keys = reports.len(), "pass finished with failures");
    }
    Ok(exit(failed == 0 && orphans.is_empty()))
}

fn rotate(args: RotateArgs) -> Result<ExitCode, ExitCode> {
    let config = load(&args.config)?;
    let Some(policy) = config.key(&args.name).cloned() else {
        let names: Vec<&str> = config.keys.iter().map(|k| k.name.as_str()).collect();
        eprintln!(
            "zenml-rotator: no [[key]] named {:?} in {} (known: {})",
            args.name,
            config.source.display(),
            names.join(", ")
        );
        return Err(ExitCode::FAILURE);
    };
    let rt = runtime()?;
    let _lock = lock(&config)?;
    let engine = engine(&config, EngineOptions::default())?;
    let force = if args.force { Force::Yes } else { Force::No };
    let report = rt.block_on(engine.rotate_now(&policy, force));
    let ok = report.result.is_ok();
    print!(
        "{}",
        report::pass(std::slice::from_ref(&report), format(args.output))
    );
    rt.block_on(metrics::export_one_shot(&config.metrics));
    Ok(exit(ok))
}

fn run(args: RunArgs) -> Result<ExitCode, ExitCode> {
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

fn inventory(args: InventoryArgs) -> Result<ExitCode, ExitCode> {
    let config = load(&args.config)?;
    let rt = runtime()?;
    let engine = engine(&config, READ_ONLY)?;
    match rt.block_on(inventory::collect(engine.zenml(), config.concurrency)) {
        Ok(accounts) => {
            let rows = inventory::rows(&accounts, &config.keys, Utc::now(), args.stale);
            print!("{}", inventory::render(&rows, format(args.output)));
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("zenml-rotator inventory: ZenML: {e}");
            Err(ExitCode::FAILURE)
        }
    }
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

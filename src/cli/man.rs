//! `man DIR` (for packagers): the manual pages, `zenml-rotator.1` and one page per command,
//! rendered by clap_mangen from the same clap definitions as `--help`, so they never drift from
//! the real flags. The main page adds what clap has no words for: exit status, environment, files.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, ValueHint};
use clap_mangen::Man;
use clap_mangen::roff::{Roff, bold, roman};

use super::{BIN, Cli};

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Where to write the pages (created if missing; existing pages are replaced).
    #[arg(value_name = "DIR", value_hint = ValueHint::DirPath)]
    dir: PathBuf,
}

pub fn run(args: ManArgs) -> Result<ExitCode, ExitCode> {
    let written = std::fs::create_dir_all(&args.dir).and_then(|()| {
        pages()?
            .into_iter()
            .try_for_each(|(name, text)| std::fs::write(args.dir.join(name), text))
    });
    match written {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!(
                "zenml-rotator: cannot write the manual pages to {}: {e}",
                args.dir.display()
            );
            Err(ExitCode::FAILURE)
        }
    }
}

/// Every page as (file name, roff source): the main page first, then one per visible command.
pub(super) fn pages() -> std::io::Result<Vec<(String, String)>> {
    let mut root = Cli::command().disable_help_subcommand(true);
    // Building gives each command its display name (`zenml-rotator-check`) and its globals.
    root.build();
    let date = page_date();
    let mut pages = vec![(format!("{BIN}.1"), main_page(&root, &date)?)];
    for sub in root.get_subcommands().filter(|s| !s.is_hide_set()) {
        let man = Man::new(sub.clone())
            .manual(MANUAL)
            .date(&date)
            .source(source(&root));
        let mut text = render(&man, Part::HEAD)?;
        text.push_str(&see_also(&[(BIN, "1")]).to_roff());
        text.push_str(&render(&man, &[Part::Version])?);
        pages.push((man.get_filename(), text));
    }
    Ok(pages)
}

const MANUAL: &str = "User Commands";

/// The footer's "zenml-rotator VERSION", on every page.
fn source(root: &clap::Command) -> String {
    format!("{BIN} {}", root.get_version().unwrap_or_default())
}

/// The pages' date: `SOURCE_DATE_EPOCH` when set (reproducible builds: the package sets it to
/// the last commit's time), else today.
fn page_date() -> String {
    let at = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .and_then(|secs| chrono::DateTime::from_timestamp(secs, 0))
        .unwrap_or_else(chrono::Utc::now);
    at.format("%Y-%m-%d").to_string()
}

fn main_page(root: &clap::Command, date: &str) -> std::io::Result<String> {
    let man = Man::new(root.clone())
        .manual(MANUAL)
        .date(date)
        .source(source(root));
    let mut text = render(&man, Part::HEAD)?;
    text.push_str(&render(&man, &[Part::Commands])?);
    // Our own sections, rendered without roff's preamble (the page has it already).
    let mut roff = Roff::new();
    exit_status(&mut roff);
    environment(&mut roff);
    files(&mut roff);
    let mut pages: Vec<(String, &str)> = root
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .map(|s| (format!("{BIN}-{}", s.get_name()), "1"))
        .collect();
    pages.extend([
        ("systemd.exec".to_owned(), "5"),
        ("systemd.timer".to_owned(), "5"),
    ]);
    let refs: Vec<(&str, &str)> = pages.iter().map(|(n, s)| (n.as_str(), *s)).collect();
    roff.extend([see_also(&refs)]);
    text.push_str(&roff.to_roff());
    text.push_str(&render(&man, &[Part::Version])?);
    Ok(text)
}

/// The sections clap_mangen renders, in page order.
#[derive(Clone, Copy)]
enum Part {
    Title,
    Name,
    Synopsis,
    Description,
    Options,
    Commands,
    Version,
}

impl Part {
    /// What every page starts with.
    const HEAD: &[Part] = &[
        Part::Title,
        Part::Name,
        Part::Synopsis,
        Part::Description,
        Part::Options,
    ];
}

/// Renders `parts` of a page, without roff's preamble (clap_mangen writes it before each part;
/// a page needs it once, and `Part::Title` puts it first).
fn render(man: &Man, parts: &[Part]) -> std::io::Result<String> {
    let preamble = Roff::new().render();
    let mut text = String::new();
    for part in parts {
        let mut buf = Vec::new();
        match part {
            Part::Title => man.render_title(&mut buf)?,
            Part::Name => man.render_name_section(&mut buf)?,
            Part::Synopsis => man.render_synopsis_section(&mut buf)?,
            Part::Description => man.render_description_section(&mut buf)?,
            Part::Options => man.render_options_section(&mut buf)?,
            Part::Commands => man.render_subcommands_section(&mut buf)?,
            Part::Version => man.render_version_section(&mut buf)?,
        }
        let rendered = String::from_utf8_lossy(&buf);
        match part {
            Part::Title => text.push_str(&rendered),
            _ => text.push_str(rendered.strip_prefix(&preamble).unwrap_or(&rendered)),
        }
    }
    Ok(text)
}

fn section(roff: &mut Roff, heading: &str, items: &[(&str, &str)]) {
    roff.control("SH", [heading]);
    for (term, text) in items {
        roff.control("TP", []);
        roff.text([bold(*term)]);
        roff.text([roman(*text)]);
    }
}

fn exit_status(roff: &mut Roff) {
    section(
        roff,
        "EXIT STATUS",
        &[
            (
                "0",
                "Done: the policy is valid (check); every key was done (once, rotate); every key could be read (plan).",
            ),
            (
                "1",
                "A key failed (once, rotate) or could not be read (plan), or the command could not start (runtime, state lock, a store).",
            ),
            ("2", "The command line is wrong."),
            (
                "78",
                "EX_CONFIG: the policy file is invalid or unreadable; every problem is printed as FILE:LINE:COL: FIELD: MESSAGE.",
            ),
        ],
    );
}

fn environment(roff: &mut Roff) {
    section(
        roff,
        "ENVIRONMENT",
        &[
            (
                "ZENML_ROTATOR_CONFIG",
                "The policy file, when -c is not given.",
            ),
            (
                "RUST_LOG",
                "Log level and filters for the lines on stderr (default info).",
            ),
            (
                "CREDENTIALS_DIRECTORY",
                "A *_file setting that is a bare name is read from this directory (systemd LoadCredential=).",
            ),
            (
                "STATE_DIRECTORY",
                "The default of [state] dir (systemd StateDirectory=); otherwise /var/lib/zenml-rotator.",
            ),
            (
                "NOTIFY_SOCKET",
                "run speaks the systemd notify protocol (Type=notify): READY=1, RELOADING=1, STOPPING=1.",
            ),
            (
                "AWS_*",
                "AWS credentials and region, read by the AWS SDK's default chain for stores of kind aws-secrets-manager.",
            ),
        ],
    );
    roff.control("PP", []);
    roff.text([roman(
        "Secrets are never written in the policy file: each *_env setting names an environment variable to read them from.",
    )]);
}

fn files(roff: &mut Roff) {
    section(
        roff,
        "FILES",
        &[
            (
                "/etc/zenml-rotator/config.toml",
                "The policy file the systemd units read.",
            ),
            (
                "/etc/zenml-rotator/credentials/",
                "Root-only files the units hand to the rotator with LoadCredential=, such as zenml-password.",
            ),
            (
                "/var/lib/zenml-rotator/",
                "The state directory: the journal of rotations in flight (never delete an entry by hand: it may hold the only copy of a key), the lock, and keys/ of the file store.",
            ),
            (
                "/usr/share/zenml-rotator/zenml-rotator.schema.json",
                "The policy file's JSON Schema, as printed by zenml-rotator schema; point an editor at it with a #:schema line.",
            ),
            (
                "/lib/systemd/system/zenml-rotator.service",
                "The daemon (run); or zenml-rotator.timer with zenml-rotator-once.service for a pass every 15 minutes (once). Enable one of the two, never both.",
            ),
        ],
    );
}

/// SEE ALSO with `name(section)` references, comma-separated as man-pages(7) asks.
fn see_also(pages: &[(&str, &str)]) -> Roff {
    let mut roff = Roff::new();
    roff.control("SH", ["SEE ALSO"]);
    let mut line = Vec::new();
    for (i, (name, sec)) in pages.iter().enumerate() {
        if i > 0 {
            line.push(roman(", "));
        }
        line.push(bold(*name));
        line.push(roman(format!("({sec})")));
    }
    roff.text(line);
    roff
}

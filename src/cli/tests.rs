use std::time::Duration;

use clap::{CommandFactory, Parser};

use super::*;

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

/// Every visible command, with the flags it takes (its own and the global ones), as the
/// command line defines them.
fn commands_and_flags() -> Vec<(String, Vec<String>)> {
    let mut root = Cli::command();
    root.build();
    root.get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
        .map(|sub| {
            let flags = sub
                .get_arguments()
                .filter(|a| !a.is_hide_set() && !a.is_positional())
                .filter_map(|a| a.get_long().map(str::to_owned))
                .collect();
            (sub.get_name().to_owned(), flags)
        })
        .collect()
}

#[test]
fn completions_offer_every_command_and_flag() {
    let commands = commands_and_flags();
    assert!(commands.len() >= 9, "{commands:?}");
    for shell in [
        clap_complete::Shell::Bash,
        clap_complete::Shell::Zsh,
        clap_complete::Shell::Fish,
    ] {
        let script = completions::script(shell);
        // fish names a long flag `-l NAME`; bash and zsh write `--NAME`.
        let flag = |f: &str| match shell {
            clap_complete::Shell::Fish => format!("-l {f}"),
            _ => format!("--{f}"),
        };
        for (command, flags) in &commands {
            assert!(
                script.contains(&format!("\"{command}\""))
                    || script.contains(&format!(" {command} "))
                    || script.contains(&format!("'{command}:")),
                "{shell}: command {command} is not offered"
            );
            for f in flags {
                assert!(
                    script.contains(&flag(f)),
                    "{shell}: {command} --{f} is not offered"
                );
            }
        }
    }
}

#[test]
fn the_manual_has_a_page_per_command_with_every_flag() {
    let pages = man::pages().unwrap();
    let text = |name: &str| {
        pages
            .iter()
            .find(|(file, _)| file == name)
            .map(|(_, roff)| roff.replace("\\-", "-"))
            .unwrap_or_else(|| panic!("no page {name}"))
    };
    let main = text("zenml-rotator.1");
    for section in ["EXIT STATUS", "ENVIRONMENT", "FILES", "SEE ALSO"] {
        assert!(
            main.contains(&format!(".SH \"{section}\""))
                || main.contains(&format!(".SH {section}")),
            "{section}"
        );
    }
    let commands = commands_and_flags();
    assert_eq!(pages.len(), commands.len() + 1);
    for (command, flags) in &commands {
        assert!(
            main.contains(&format!("zenml-rotator-{command}(1)")),
            "{command}"
        );
        let page = text(&format!("zenml-rotator-{command}.1"));
        for f in flags {
            assert!(page.contains(&format!("--{f}")), "{command}: --{f}");
        }
    }
}

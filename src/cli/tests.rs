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

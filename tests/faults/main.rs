//! The fault suite (issue 10): the built binary against the real ZenML, OpenBao and moto, broken
//! on purpose. `chaos`: random SIGKILLs during `once`, `rotate --force` and `run` over 20 keys in
//! Vault and in AWS, then undisturbed passes. `zenml`, `vault`, `aws`: one fault at a time at each
//! boundary, through a loopback proxy in front of the real server (`common::fault_proxy`), or
//! done to a private server (sealed, token revoked, stopped). `malformed`: answers no server
//! should give. Each ends with nothing lost, bounded retries, typed errors and the right
//! `errors_total{stage}`.
//!
//! Every test prints its figures as `figure: ...` lines (and appends them to `$ZR_FIGURES`, which
//! `scripts/test.sh` shows at the end): the README's Reliability section quotes them.

#[path = "../common/mod.rs"]
mod common;

mod aws;
mod chaos;
mod malformed;
mod vault;
mod world;
mod zenml;

use std::io::Write;

/// Prints one figure of the suite and appends it to `$ZR_FIGURES` when set.
pub fn figure(line: &str) {
    println!("figure: {line}");
    if let Some(path) = std::env::var_os("ZR_FIGURES").filter(|p| !p.is_empty()) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("{path:?}: {e}"));
        writeln!(f, "{line}").unwrap();
    }
}

/// The value of `name{labels...}` in a Prometheus textfile (0 when the series is absent).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .find(|(series, _)| {
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .map_or(0.0, |(_, v)| v.parse().unwrap_or(f64::NAN))
}

/// No process may panic, whatever it was fed: a panic message on stderr fails the test.
pub fn no_panic(what: &str, stderr: &str) {
    assert!(
        !stderr.contains("panicked at"),
        "{what} panicked:\n{stderr}"
    );
}

//! What the binary generates for installers and editors, checked with the tools that consume it:
//! the policy file's JSON Schema against every policy the repository ships (python-jsonschema,
//! reading the TOML with Python's own parser), and the bash completion script (bash itself).
//! The Debian package that installs them is checked by scripts/check-package.sh.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::policies::{deploy, kubernetes_policy};
use common::{describe, rotator, run, run_expect};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

const SCHEMA: &str = "schema/zenml-rotator.schema.json";

/// The validator's Python, installed by scripts/install-jsonschema.sh (part of scripts/test.sh).
fn jsonschema_python() -> PathBuf {
    let python = match std::env::var_os("ZR_JSONSCHEMA_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => std::env::var_os("ZR_PEERS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo().join(".peers"))
            .join("jsonschema/bin/python"),
    };
    assert!(
        python.is_file(),
        "{} is missing: run scripts/install-jsonschema.sh (scripts/test.sh does)",
        python.display()
    );
    python
}

/// Each file's schema errors (empty: valid), from the real validator.
fn validate(files: &[PathBuf]) -> Vec<(PathBuf, Vec<String>)> {
    let mut cmd = Command::new(jsonschema_python());
    cmd.arg(repo().join("tests/tools/validate_policies.py"))
        .arg(repo().join(SCHEMA))
        .args(files);
    let out = run(&mut cmd);
    assert!(out.status.success(), "{}", describe(&cmd, &out));
    let verdicts: Vec<(PathBuf, Vec<String>)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{e}: {line}\n{}", describe(&cmd, &out)));
            let errors = v["errors"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|e| e.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            (
                PathBuf::from(v["file"].as_str().unwrap_or_default()),
                errors,
            )
        })
        .collect();
    assert_eq!(verdicts.len(), files.len(), "{}", describe(&cmd, &out));
    verdicts
}

fn toml_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn the_schema_command_prints_the_shipped_schema() {
    let mut cmd = rotator(repo());
    cmd.arg("schema");
    let out = run_expect(&mut cmd, 0);
    let shipped = std::fs::read_to_string(repo().join(SCHEMA)).unwrap_or_default();
    assert!(
        out.stdout == shipped.as_bytes(),
        "{SCHEMA} differs from `zenml-rotator schema`: regenerate it with\n    \
         cargo run --quiet -- schema > {SCHEMA}"
    );
}

#[test]
fn every_shipped_policy_follows_the_schema() {
    let scratch = tempfile::tempdir().unwrap();
    let (_, kubernetes) = kubernetes_policy();
    let configmap = scratch.path().join("kubernetes-configmap.toml");
    std::fs::write(&configmap, kubernetes).unwrap();
    let mut files = vec![
        repo().join("config.example.toml"),
        deploy("systemd/config.toml").0,
        configmap,
    ];
    let fixtures = toml_files("tests/fixtures/config/valid");
    assert!(fixtures.len() >= 4, "{fixtures:?}");
    files.extend(fixtures);
    let invalid: Vec<String> = validate(&files)
        .into_iter()
        .filter(|(_, errors)| !errors.is_empty())
        .map(|(file, errors)| format!("{}:\n  {}", file.display(), errors.join("\n  ")))
        .collect();
    assert!(invalid.is_empty(), "{}", invalid.join("\n"));
}

/// Invalid fixtures whose mistake is a key or a type (the schema's part of the rules), with what
/// the validator must say about each.
const REJECTED: &[(&str, &str)] = &[
    ("unknown_key", "'evry' was unexpected"),
    ("unknown_key_inline_table", "'tokn_env' was unexpected"),
    ("inline_password", "'password' was unexpected"),
    ("vault_inline_token", "'token' was unexpected"),
    ("aws_inline_credentials", "'secret_access_key'"),
    ("store_field_of_other_kind", "'region' is not one of"),
    ("store_kind", "'kind' is a required property"),
    (
        "bad_strategy",
        "'recreate' is not one of ['rotate', 'replace']",
    ),
    ("wrong_type", "is not of type 'integer'"),
    ("hygiene_wrong_type", "is not of type 'array'"),
];

#[test]
fn the_schema_rejects_wrong_keys_and_types() {
    let dir = repo().join("tests/fixtures/config/invalid");
    let files: Vec<PathBuf> = REJECTED
        .iter()
        .map(|(name, _)| dir.join(format!("{name}.toml")))
        .collect();
    for ((name, expected), (_, errors)) in REJECTED.iter().zip(validate(&files)) {
        assert!(
            errors.iter().any(|e| e.contains(expected)),
            "{name}: expected an error containing {expected:?}, got {errors:?}"
        );
    }
}

#[test]
fn the_bash_completion_script_loads_in_bash() {
    let mut cmd = rotator(repo());
    cmd.args(["completions", "bash"]);
    let out = run_expect(&mut cmd, 0);
    let script = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(script.path(), &out.stdout).unwrap();
    let mut bash = Command::new("bash");
    bash.arg("-c")
        .arg("source \"$1\" && complete -p zenml-rotator")
        .arg("bash")
        .arg(script.path());
    let loaded = run(&mut bash);
    assert!(
        loaded.status.success()
            && String::from_utf8_lossy(&loaded.stdout).contains("zenml-rotator"),
        "{}",
        describe(&bash, &loaded)
    );
}

//! The policy parser fuzzed (invariant 5): documents built from the policy file's own tables and
//! fields with values both valid and not, the same with their text damaged (characters deleted,
//! inserted, lines doubled), and text of a TOML-ish alphabet with no structure at all. Over the
//! three tests, 100,000 cases per run. For every one: no panic, no case slower than a bound (no
//! hang), and a rejection is one `FILE:LINE:COL: FIELD: MESSAGE` line per problem, pointing
//! inside the file, never echoing a value typed into a secret field. No network, no servers.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, FileFailurePersistence};
use zenml_rotator::config::{Config, ConfigError};

/// A case slower than this is a hang (debug build, on a busy 2-core machine).
const SLOW: Duration = Duration::from_secs(5);
/// Never to be echoed: the value of every inline secret field a document carries.
const SECRET: &str = "do-not-print-me-7f3a";

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // Found failures are replayed first on the next run, from this file.
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/policy_fuzz.regressions",
        ))),
        ..ProptestConfig::default()
    }
}

/// What the runs saw, for the figures.
struct Tally {
    valid: AtomicU64,
    invalid: AtomicU64,
    diagnostics: AtomicU64,
    slowest_us: AtomicU64,
}

impl Tally {
    const fn new() -> Tally {
        Tally {
            valid: AtomicU64::new(0),
            invalid: AtomicU64::new(0),
            diagnostics: AtomicU64::new(0),
            slowest_us: AtomicU64::new(0),
        }
    }

    fn print(&self, what: &str) {
        let (v, i) = (
            self.valid.load(Ordering::Relaxed),
            self.invalid.load(Ordering::Relaxed),
        );
        let line = format!(
            "fuzz {what}: {} cases ({v} valid, {i} rejected with {} diagnostics), slowest {} ms",
            v + i,
            self.diagnostics.load(Ordering::Relaxed),
            self.slowest_us.load(Ordering::Relaxed) / 1000
        );
        println!("figure: {line}");
        if let Some(path) = std::env::var_os("ZR_FIGURES").filter(|p| !p.is_empty()) {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap();
            writeln!(f, "{line}").unwrap();
        }
    }
}

/// Parses `source` and checks what the parser owes any input. The secret marker must never be
/// echoed while it is the value of an inline secret field ([`secret_fields_intact`]); damage
/// can also leave it as bare text, which is no value typed into a field.
fn judge(source: &str, tally: &Tally) -> Result<(), TestCaseError> {
    let file = Path::new("fuzz/policy.toml");
    let started = Instant::now();
    let result = Config::parse(source, file);
    let took = started.elapsed();
    tally
        .slowest_us
        .fetch_max(took.as_micros() as u64, Ordering::Relaxed);
    prop_assert!(took < SLOW, "took {took:?}");
    let diagnostics = match result {
        Ok(_) => {
            tally.valid.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        Err(ConfigError::Invalid(d)) => d,
        Err(e) => return Err(TestCaseError::fail(format!("not a diagnostic: {e}"))),
    };
    tally.invalid.fetch_add(1, Ordering::Relaxed);
    tally
        .diagnostics
        .fetch_add(diagnostics.len() as u64, Ordering::Relaxed);
    prop_assert!(!diagnostics.is_empty());
    let lines = source.split('\n').count();
    let text = ConfigError::Invalid(diagnostics.clone()).to_string();
    prop_assert_eq!(
        text.lines().count(),
        diagnostics.len(),
        "one line each: {}",
        text
    );
    for (d, line) in diagnostics.iter().zip(text.lines()) {
        let prefix = format!("fuzz/policy.toml:{}:{}: ", d.line, d.column);
        prop_assert!(line.starts_with(&prefix), "{}", line);
        prop_assert!(
            d.line >= 1 && d.line <= lines,
            "line {} of {}: {}",
            d.line,
            lines,
            line
        );
        let width = source
            .split('\n')
            .nth(d.line - 1)
            .map_or(0, |l| l.chars().count());
        prop_assert!(
            d.column >= 1 && d.column <= width + 1,
            "column {} of {}: {}",
            d.column,
            width,
            line
        );
        prop_assert!(!d.field.trim().is_empty(), "no field: {}", line);
        prop_assert!(
            line[prefix.len()..].starts_with(&format!("{}: ", d.field)),
            "{}",
            line
        );
        prop_assert!(!d.message.trim().is_empty(), "no message: {}", line);
        prop_assert!(
            !line.contains(SECRET) || !secret_fields_intact(source),
            "a secret echoed: {}",
            line
        );
    }
    Ok(())
}

/// Whether every line holding the secret marker is still `field = "<marker>"` as generated, with
/// no multi-line string opened anywhere (which would make it part of something else).
fn secret_fields_intact(source: &str) -> bool {
    !source.contains("'''")
        && !source.contains("\"\"\"")
        && source.lines().filter(|l| l.contains(SECRET)).all(|l| {
            ["password", "token", "aws_secret_access_key"]
                .iter()
                .any(|f| l == format!("{f} = {SECRET:?}"))
        })
}

/// TOML values: durations, numbers, booleans, URLs, cron lines, names, arrays and inline tables,
/// valid somewhere and invalid elsewhere.
fn value() -> impl Strategy<Value = String> {
    let fixed = prop::sample::select(vec![
        "\"30d\"",
        "\"7d\"",
        "\"60m\"",
        "\"1m\"",
        "\"90s\"",
        "\"2h\"",
        "\"0s\"",
        "\"-5m\"",
        "\"1.5h\"",
        "\"forever\"",
        "\"\"",
        "\"1m 30s\"",
        "\"365d\"",
        "\"100000000000d\"",
        "0",
        "-1",
        "4",
        "1",
        "64",
        "99999999999999999999",
        "1e400",
        "nan",
        "inf",
        "true",
        "false",
        "3.5",
        "1979-05-27T07:32:00Z",
        "\"rotate\"",
        "\"replace\"",
        "\"vault\"",
        "\"aws-secrets-manager\"",
        "\"file\"",
        "\"token\"",
        "\"approle\"",
        "\"kubernetes\"",
        "\"http://127.0.0.1:8237\"",
        "\"https://zenml.example.com\"",
        "\"http://example.com\"",
        "\"http://localhost.example.com\"",
        "\"ftp://x\"",
        "\"http://user:pw@127.0.0.1\"",
        "\"https://[::1]:8200\"",
        "\"http://0.0.0.0\"",
        "\"127.0.0.1:9464\"",
        "\"[::1]:0\"",
        "\"0 3 * * SUN\"",
        "\"* * * * *\"",
        "\"*/5 * * * *\"",
        "\"61 * * * *\"",
        "\"0 2 * * *\"",
        "\"0 0 29 2 *\"",
        "\"0 0 31 4 *\"",
        "\"@daily\"",
        "\"Europe/Berlin\"",
        "\"Mars/Olympus\"",
        "\"UTC\"",
        "\"ZENML_ROTATOR_PASSWORD\"",
        "\"1BAD-NAME\"",
        "\"zenml/training\"",
        "\"../etc/passwd\"",
        "\"a/b.env\"",
        "\"batch.env\"",
        "\"data/x\"",
        "\"/var/lib/zr\"",
        "\"relative/dir\"",
        "\"secret\"",
        "\"eu-west-1\"",
        "[]",
        "[1, \"a\", {}]",
        "[\"ops\", \"ci\"]",
        "{}",
        "{ method = \"token\", token_env = \"VAULT_TOKEN\" }",
        "{ method = \"approle\", role_id_env = \"R\", secret_id_file = \"s\" }",
        "{ method = \"kubernetes\", role = \"zr\" }",
        "{ method = \"ldap\" }",
        "{ schedule = \"0 2 * * *\", duration = \"2h\" }",
        "{ schedule = \"0 2 * * *\", duration = \"30h\" }",
        "{ duration = \"1h\" }",
    ])
    .prop_map(str::to_owned);
    prop_oneof![
        8 => fixed,
        1 => "[ -~]{0,16}".prop_map(|s| format!("{s:?}")),
        1 => any::<i64>().prop_map(|n| n.to_string()),
    ]
}

/// The fields each table knows, and a few it does not.
const TABLES: &[(&str, &[&str])] = &[
    (
        "[zenml]",
        &[
            "url",
            "username",
            "password_env",
            "password_file",
            "api_key_env",
            "api_key_file",
            "ca_file",
            "timeout",
            "allow_insecure_http",
            "password",
            "api_key",
            "token",
            "urll",
        ],
    ),
    (
        "[defaults]",
        &[
            "every",
            "retain",
            "strategy",
            "store",
            "jitter",
            "schedule",
            "window",
            "timezone",
            "retire_previous",
            "delete_after",
            "concurrency",
            "name",
            "retian",
        ],
    ),
    (
        "[metrics]",
        &[
            "listen",
            "textfile",
            "pushgateway",
            "allow_insecure_http",
            "port",
        ],
    ),
    ("[state]", &["dir", "journal"]),
    (
        "[daemon]",
        &[
            "safety_pass",
            "shutdown_timeout",
            "backoff_initial",
            "backoff_max",
            "every",
        ],
    ),
    ("[coordination]", &["claim_ttl", "max_clock_skew", "ttl"]),
    (
        "[hygiene]",
        &[
            "deactivate_unused_after",
            "report_unmanaged",
            "report_service_accounts_without_keys",
            "exclude_service_accounts",
            "delete",
        ],
    ),
    (
        "[stores.vault]",
        &[
            "kind",
            "address",
            "mount",
            "namespace",
            "ca_file",
            "auth",
            "timeout",
            "claims",
            "allow_insecure_http",
            "token",
            "region",
        ],
    ),
    (
        "[stores.aws]",
        &[
            "kind",
            "region",
            "endpoint_url",
            "kms_key_id",
            "timeout",
            "claims",
            "allow_insecure_http",
            "aws_secret_access_key",
            "dir",
        ],
    ),
    (
        "[stores.local]",
        &["kind", "dir", "allow_insecure_http", "mount"],
    ),
    (
        "[[key]]",
        &[
            "name",
            "service_account",
            "api_key",
            "store",
            "path",
            "every",
            "retain",
            "strategy",
            "jitter",
            "schedule",
            "window",
            "timezone",
            "retire_previous",
            "delete_after",
            "concurrency",
            "password",
        ],
    ),
];

/// A document: some of the tables (`[[key]]` up to three times), each with some of its fields.
fn document() -> impl Strategy<Value = String> {
    let section = (0..TABLES.len()).prop_flat_map(|t| {
        let (header, fields) = TABLES[t];
        prop::collection::vec((prop::sample::select(fields.to_vec()), value()), 0..7).prop_map(
            move |entries| {
                let mut text = format!("{header}\n");
                for (field, value) in entries {
                    // Inline secret fields carry the marker that must never be echoed.
                    let value = if matches!(field, "password" | "token" | "aws_secret_access_key") {
                        format!("{SECRET:?}")
                    } else {
                        value
                    };
                    text.push_str(&format!("{field} = {value}\n"));
                }
                text
            },
        )
    });
    (prop::collection::vec(section, 0..9), prop::bool::ANY).prop_map(|(sections, skeleton)| {
        // Half the documents start from a valid skeleton, so the rules behind the syntax
        // (inheritance, store references, cadence against retain) are reached too.
        let mut text = if skeleton {
            "[zenml]\nurl = \"https://zenml.example.com\"\nusername = \"rotator\"\n\
                 password_env = \"ZENML_ROTATOR_PASSWORD\"\n\n"
                .to_owned()
        } else {
            String::new()
        };
        for s in sections {
            text.push_str(&s);
            text.push('\n');
        }
        text
    })
}

/// What damage to the text does.
#[derive(Debug, Clone)]
enum Damage {
    Delete(usize, usize),
    Insert(usize, &'static str),
    DoubleLine(usize),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (any::<usize>(), 1usize..12).prop_map(|(at, n)| Damage::Delete(at, n)),
        (
            any::<usize>(),
            prop::sample::select(vec![
                "[",
                "]",
                "]]",
                "[[",
                "\"",
                "'",
                "'''",
                "\"\"\"",
                "=",
                "\n",
                "#",
                "{",
                "}",
                ",",
                ".",
                "\\",
                "\\u00",
                "\u{0}",
                "\t",
                "\r",
                "é",
                "\u{feff}",
                "\u{202e}",
                "𝓤",
                " = ",
                "key",
                "[stores.x.y]",
                "[[key]]\n",
                "[key]\n",
                "\nname = \"dup\"\n",
            ])
        )
            .prop_map(|(at, s)| Damage::Insert(at, s)),
        any::<usize>().prop_map(Damage::DoubleLine),
    ]
}

fn apply(mut text: String, damage: &[Damage]) -> String {
    for d in damage {
        let at = |i: usize, text: &str| {
            let mut i = if text.is_empty() {
                0
            } else {
                i % (text.len() + 1)
            };
            while !text.is_char_boundary(i) {
                i -= 1;
            }
            i
        };
        match d {
            Damage::Delete(start, n) => {
                let s = at(*start, &text);
                let e = at(s + n, &text).max(s);
                text.replace_range(s..e, "");
            }
            Damage::Insert(where_, s) => {
                let i = at(*where_, &text);
                text.insert_str(i, s);
            }
            Damage::DoubleLine(n) => {
                let lines: Vec<&str> = text.split('\n').collect();
                let i = n % lines.len();
                let mut out: Vec<&str> = lines[..=i].to_vec();
                out.extend(&lines[i..]);
                text = out.join("\n");
            }
        }
    }
    text
}

static STRUCTURED: Tally = Tally::new();
static DAMAGED: Tally = Tally::new();
static RAW: Tally = Tally::new();

#[test]
fn policy_documents_of_known_tables_are_parsed_or_rejected_line_by_line() {
    let mut runner = proptest::test_runner::TestRunner::new(config(40_000));
    runner
        .run(&document(), |doc| judge(&doc, &STRUCTURED))
        .unwrap();
    STRUCTURED.print("policy documents");
}

#[test]
fn damaged_policy_documents_are_rejected_line_by_line() {
    let mut runner = proptest::test_runner::TestRunner::new(config(40_000));
    let strategy = (document(), prop::collection::vec(damage(), 1..4));
    runner
        .run(&strategy, |(doc, damage)| {
            judge(&apply(doc, &damage), &DAMAGED)
        })
        .unwrap();
    DAMAGED.print("damaged policy documents");
}

#[test]
fn text_without_structure_is_rejected_line_by_line() {
    let mut runner = proptest::test_runner::TestRunner::new(config(20_000));
    let strategy = "([\\[\\]{}=\"'#.,a-z_0-9 \\n\\t-]|\\\\u0000|\u{e9}){0,160}";
    runner.run(&strategy, |text| judge(&text, &RAW)).unwrap();
    RAW.print("unstructured text");
}

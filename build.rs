//! Link settings of the release binary that Cargo's profiles cannot express (the rest is in
//! Cargo.toml's `[profile.release]`).

use std::path::Path;
use std::process::Command;

/// The functions a pass runs, one symbol a line (`bench/hot-functions.sh` writes it).
const HOT_FUNCTIONS: &str = "link/hot-functions.txt";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={HOT_FUNCTIONS}");
    let env = |name: &str| std::env::var(name).unwrap_or_default();
    let gnu_linux = env("CARGO_CFG_TARGET_OS") == "linux" && env("CARGO_CFG_TARGET_ENV") == "gnu";
    if !gnu_linux || env("PROFILE") != "release" {
        return;
    }
    // RELR: the ~60,000 relative relocations of the position-independent binary packed into
    // a few KB, instead of 1.5 MB the loader reads (and keeps resident) at every start.
    // Needs glibc >= 2.36 (Debian 12); the package's Depends says so.
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    // The functions a pass runs (1.6 of the 5.3 MB of code) go first in .text, together. The
    // kernel maps an executable's pages 64 KB around each one touched ("fault-around"):
    // scattered among the code nobody runs (the AWS SDK for a Vault user, clap's help, error
    // paths), they kept nearly all of .text resident. Grouped, about 1.8 MB is.
    // A symbol the list names that this build lacks (renamed, a dependency updated) is skipped:
    // the order degrades, the build does not break. GNU ld does not know the option, so it is
    // passed only to rust-lld, Rust's default linker on x86_64 Linux since 1.90.
    let manifest = env("CARGO_MANIFEST_DIR");
    let list = Path::new(&manifest).join(HOT_FUNCTIONS);
    if env("ZR_NO_SYMBOL_ORDER").is_empty() && list.is_file() && default_lld(&env) {
        println!(
            "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
            list.display()
        );
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
    println!("cargo:rerun-if-env-changed=ZR_NO_SYMBOL_ORDER");
}

/// Whether the binary is linked by rust-lld: x86_64 Linux, rustc 1.90 or later, and no linker
/// chosen by the builder (a `-C linker...` flag or Cargo's `linker` setting for the target).
fn default_lld(env: &dyn Fn(&str) -> String) -> bool {
    if env("TARGET") != "x86_64-unknown-linux-gnu"
        || env("CARGO_ENCODED_RUSTFLAGS").contains("link")
        || !env("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER").is_empty()
    {
        return false;
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let Ok(out) = Command::new(rustc).arg("-vV").output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let minor = text
        .lines()
        .find_map(|l| l.strip_prefix("release: 1."))
        .and_then(|rest| rest.split('.').next())
        .and_then(|m| m.parse::<u32>().ok());
    minor.is_some_and(|m| m >= 90)
}

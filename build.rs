//! Link settings of the release binary that Cargo's profiles cannot express (the rest is in
//! Cargo.toml's `[profile.release]`).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let env = |name: &str| std::env::var(name).unwrap_or_default();
    let gnu_linux = env("CARGO_CFG_TARGET_OS") == "linux" && env("CARGO_CFG_TARGET_ENV") == "gnu";
    if gnu_linux && env("PROFILE") == "release" {
        // RELR: the ~60,000 relative relocations of the position-independent binary packed into
        // a few KB, instead of 1.5 MB the loader reads (and keeps resident) at every start.
        // Needs glibc >= 2.36 (Debian 12); the package's Depends says so.
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

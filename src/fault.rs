//! Test-only fault points for crash tests (invariant 3). Compiled in only with the cargo feature
//! `fault-injection`; in every other build `point` is an empty inline function.
//! `ZR_FAULT=<point>` makes the process die at that point as a crash would (no destructors, no
//! flush); `ZR_FAULT_EXEC=<point>:<shell command>` runs a command there first (e.g. seal Vault).
//! The points, in the order a rotation meets them: `before_claim` (a pass has looked at the key
//! and decided to act, and takes its claim next), `before_rotate` and `after_rotate` (strategy
//! rotate, around ZenML's rotate call), `after_create` (strategy replace: the new key exists,
//! nothing is stored yet), then for both strategies `before_store`, `after_stage` (written, not
//! yet promoted: AWS `AWSPENDING`) and `after_store`.

/// Marks a step of a rotation where a crash test may stop the process.
#[cfg(feature = "fault-injection")]
pub fn point(name: &str) {
    if let Ok(spec) = std::env::var("ZR_FAULT_EXEC")
        && let Some((at, cmd)) = spec.split_once(':')
        && at == name
    {
        eprintln!("fault-injection: running the command for {name}");
        let _ = std::process::Command::new("sh").arg("-c").arg(cmd).status();
    }
    if std::env::var("ZR_FAULT").as_deref() == Ok(name) {
        eprintln!("fault-injection: crashing at {name}");
        // SAFETY: _exit ends the process at once, like a kill -9 would; nothing runs after it.
        unsafe { libc::_exit(86) };
    }
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn point(_name: &str) {}

/// Test-only: the host name claims carry (`ZR_FAULT_HOST`), so one machine can play rotators on
/// several hosts. `None` outside fault-injection builds.
#[cfg(feature = "fault-injection")]
pub fn host() -> Option<String> {
    std::env::var("ZR_FAULT_HOST")
        .ok()
        .filter(|h| !h.is_empty())
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn host() -> Option<String> {
    None
}

//! This machine's name, as claims and notifications give it: `gethostname`, or (fault-injection
//! builds only) `ZR_FAULT_HOST`, so one machine can play rotators on several hosts; and the
//! process's core dump limit.

pub fn name() -> String {
    if let Some(host) = crate::fault::host() {
        return host;
    }
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into the buffer we own.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..end]) {
        Ok(name) if rc == 0 && !name.is_empty() => name.to_owned(),
        _ => "unknown-host".to_owned(),
    }
}

/// Turns core dumps off for this process and whatever it starts (hooks inherit the limit): a dump
/// would hold the key values in memory. Both limits go to 0, so nothing later in the process can
/// raise them again (already 0, as the shipped units set it: no call, so a seccomp filter that
/// refuses `setrlimit` never sees one). The process is also
/// made non-dumpable, which stops a crash handler that ignores the limit and keeps other
/// processes of the same user out of its memory and environment (`/proc/PID/mem`, `environ`,
/// ptrace); a hook, a new program, starts dumpable again but keeps the limit.
pub fn forbid_core_dumps() -> std::io::Result<()> {
    const NONE: libc::rlimit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: PR_SET_DUMPABLE takes an integer flag and touches nothing of ours.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut now = NONE;
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    let read = unsafe { libc::getrlimit(libc::RLIMIT_CORE, &mut now) };
    if read == 0 && (now.rlim_cur, now.rlim_max) == (0, 0) {
        return Ok(());
    }
    // SAFETY: setrlimit only reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_CORE, &NONE) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    /// The limit and the flag as the kernel reports them after the call (this test process keeps
    /// them: no other test dumps core or needs to be traced).
    #[test]
    fn core_dumps_end_up_off() {
        super::forbid_core_dumps().unwrap();
        let mut limit = libc::rlimit {
            rlim_cur: 1,
            rlim_max: 1,
        };
        // SAFETY: getrlimit writes one rlimit into the struct we own.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_CORE, &mut limit) }, 0);
        assert_eq!((limit.rlim_cur, limit.rlim_max), (0, 0));
        // SAFETY: PR_GET_DUMPABLE only returns the flag.
        assert_eq!(unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) }, 0);
        // Calling it again (limits already 0) is fine.
        super::forbid_core_dumps().unwrap();
    }
}

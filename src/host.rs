//! This machine's name, as claims and notifications give it: `gethostname`, or (fault-injection
//! builds only) `ZR_FAULT_HOST`, so one machine can play rotators on several hosts.

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

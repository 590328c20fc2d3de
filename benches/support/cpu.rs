//! CPU time of this process, for benchmarks that report client CPU per
//! record.

/// CPU time (user and system) used so far by this process's threads; the
/// broker, a child process, is not counted. On a small machine the client's
/// CPU is taken from the broker, so it matters as much as the rate.
pub fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes into the zeroed struct we pass.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

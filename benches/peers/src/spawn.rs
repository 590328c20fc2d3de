//! Runs one phase in a child process and measures its peak resident set.
//!
//! The peak is the child's `VmHWM`: reported by the child itself at the end
//! of the phase and sampled by the parent from `/proc/<pid>/status` while it
//! waits, whichever is larger. `ru_maxrss` (from `wait4`) is not used: a
//! child started with `posix_spawn` carries the parent's high-water mark into
//! it.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::child::{peak_rss_kib, PhaseArgs, PhaseReport, ERROR_TAG};

/// What the parent learns about one phase.
#[derive(Debug, Clone)]
pub struct PhaseOutcome {
    pub result: Result<PhaseReport, String>,
    /// Peak resident set of the child, in KiB (`VmHWM`).
    pub max_rss_kib: Option<u64>,
}

impl PhaseOutcome {
    pub fn failed(message: impl Into<String>) -> PhaseOutcome {
        PhaseOutcome {
            result: Err(message.into()),
            max_rss_kib: None,
        }
    }
}

fn command_for(args: &PhaseArgs) -> std::io::Result<Command> {
    let mut command = Command::new(std::env::current_exe()?);
    command
        .arg("run")
        .args(["--client", args.client.id()])
        .args(["--phase", args.phase.id()])
        .args(["--bootstrap", &args.bootstrap])
        .args(["--topic", &args.topic])
        .args(["--partitions", &args.partitions.to_string()])
        .args(["--records", &args.records.to_string()])
        .args(["--size", &args.size.to_string()]);
    if args.keyed {
        command.arg("--keyed");
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    Ok(command)
}

fn drain(mut source: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = source.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

struct Reaped {
    status: i32,
    killed: bool,
    /// Largest `VmHWM` sampled while the child ran, in KiB.
    sampled_hwm_kib: Option<u64>,
}

/// Waits for `child` with `waitpid`, sampling its `VmHWM` meanwhile and killing
/// it once `timeout` has passed.
fn reap(child: &mut Child, timeout: Duration) -> std::io::Result<Reaped> {
    let pid = child.id();
    let deadline = Instant::now() + timeout;
    let mut killed = false;
    let mut sampled_hwm_kib = None;
    loop {
        if let Some(kib) = peak_rss_kib(pid).filter(|&kib| kib > 0) {
            sampled_hwm_kib = sampled_hwm_kib.max(Some(kib));
        }
        let mut status: libc::c_int = 0;
        // SAFETY: `pid` is our own unreaped child; `status` is a local.
        let reaped = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG) };
        if reaped == pid as libc::pid_t {
            return Ok(Reaped {
                status,
                killed,
                sampled_hwm_kib,
            });
        }
        if reaped < 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        if !killed && Instant::now() > deadline {
            child.kill()?;
            killed = true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn describe_status(status: i32) -> String {
    if libc::WIFEXITED(status) {
        format!("exit code {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!("signal {}", libc::WTERMSIG(status))
    } else {
        format!("wait status {status}")
    }
}

fn last_lines(text: &str, count: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(count);
    lines[start..].join(" / ")
}

/// Runs `args` in a child process of this same binary.
pub fn run_phase(args: &PhaseArgs, timeout: Duration) -> PhaseOutcome {
    let mut child = match command_for(args).and_then(|mut c| c.spawn()) {
        Ok(child) => child,
        Err(error) => return PhaseOutcome::failed(format!("spawning the child: {error}")),
    };
    let stdout = child.stdout.take().map(drain);
    let stderr = child.stderr.take().map(drain);
    let reaped = reap(&mut child, timeout);
    let stdout = stdout.and_then(|h| h.join().ok()).unwrap_or_default();
    let stderr = stderr.and_then(|h| h.join().ok()).unwrap_or_default();

    let reaped = match reaped {
        Ok(reaped) => reaped,
        Err(error) => return PhaseOutcome::failed(format!("waiting for the child: {error}")),
    };
    let report = stdout.lines().find_map(PhaseReport::parse);
    let reported_hwm_kib = report.map(|r| r.hwm_kib).filter(|&kib| kib > 0);
    let max_rss_kib = reported_hwm_kib.max(reaped.sampled_hwm_kib);
    let result = if reaped.killed {
        Err(format!("timed out after {timeout:?}"))
    } else if let Some(report) = report {
        Ok(report)
    } else if let Some(message) = stdout
        .lines()
        .find_map(|l| l.strip_prefix(ERROR_TAG))
        .map(str::trim)
    {
        Err(message.to_string())
    } else {
        Err(format!(
            "child ended with {} and no result; stderr: {}",
            describe_status(reaped.status),
            last_lines(&stderr, 5)
        ))
    };
    PhaseOutcome {
        result,
        max_rss_kib,
    }
}

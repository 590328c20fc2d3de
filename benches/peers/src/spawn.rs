//! Runs one phase in a child process and measures its peak resident set.
//!
//! The peak is the child's `VmHWM`: reported by the child itself at the end
//! of the phase and sampled by the parent from `/proc/<pid>/status` while it
//! waits, whichever is larger. `ru_maxrss` (from `wait4`) is not used: a
//! child started with `posix_spawn` carries the parent's high-water mark into
//! it (its CPU times are fine, and [`PhaseOutcome::process_cpu_ns`] comes
//! from them).

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::child::{peak_rss_kib, PhaseArgs, PhaseReport, ERROR_TAG};
use crate::clients::Client;
use crate::java_tools;

/// What the parent learns about one phase.
#[derive(Debug, Clone)]
pub struct PhaseOutcome {
    pub result: Result<PhaseReport, String>,
    /// Peak resident set of the child, in KiB (`VmHWM`).
    pub max_rss_kib: Option<u64>,
    /// CPU time of the whole child process (user + system, from `wait4`),
    /// start-up included.
    pub process_cpu_ns: Option<u64>,
}

impl PhaseOutcome {
    pub fn failed(message: impl Into<String>) -> PhaseOutcome {
        PhaseOutcome {
            result: Err(message.into()),
            max_rss_kib: None,
            process_cpu_ns: None,
        }
    }

    /// CPU time of the timed work as the child measured it, else (the Java
    /// tools, which cannot) the whole process's; the flag says which.
    pub fn cpu_ns(&self) -> Option<(u64, bool)> {
        let report = self.result.as_ref().ok()?;
        match report.cpu_ns {
            Some(cpu) => Some((cpu, false)),
            None => self.process_cpu_ns.map(|cpu| (cpu, true)),
        }
    }
}

/// The franz-go program: `$PEERS_FRANZ_BIN`, else `peers-franz` next to this
/// binary (where `run.sh` builds it).
pub fn franz_program() -> anyhow::Result<std::path::PathBuf> {
    let path = match std::env::var_os("PEERS_FRANZ_BIN").filter(|p| !p.is_empty()) {
        Some(path) => std::path::PathBuf::from(path),
        None => std::env::current_exe()?.with_file_name("peers-franz"),
    };
    if !path.is_file() {
        anyhow::bail!(
            "franz-go program not found at {} (run.sh builds it; or `go build -o {} ./franz` in benches/peers, or set PEERS_FRANZ_BIN)",
            path.display(),
            path.display()
        );
    }
    Ok(path)
}

fn command_for(args: &PhaseArgs) -> anyhow::Result<Command> {
    let program = match args.client {
        Client::Java => return java_tools::command(args),
        Client::Franz => franz_program()?,
        _ => std::env::current_exe().context("locating this binary")?,
    };
    let mut command = Command::new(program);
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
    /// User + system CPU time of the child, from `wait4`.
    cpu_ns: u64,
}

/// Waits for `child` with `wait4`, sampling its `VmHWM` meanwhile and killing
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
        let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: `pid` is our own unreaped child; `status` and `usage` are
        // locals that wait4 may write.
        let reaped = unsafe {
            libc::wait4(
                pid as libc::pid_t,
                &mut status,
                libc::WNOHANG,
                usage.as_mut_ptr(),
            )
        };
        if reaped == pid as libc::pid_t {
            // SAFETY: zero-initialised and, after a successful wait4, filled.
            let usage = unsafe { usage.assume_init() };
            return Ok(Reaped {
                status,
                killed,
                sampled_hwm_kib,
                cpu_ns: crate::workload::timeval_ns(usage.ru_utime)
                    + crate::workload::timeval_ns(usage.ru_stime),
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

/// Runs `args` in a child process: this same binary, the franz-go program
/// or a Java tool.
pub fn run_phase(args: &PhaseArgs, timeout: Duration) -> PhaseOutcome {
    let command = match command_for(args) {
        Ok(command) => command,
        Err(error) => return PhaseOutcome::failed(format!("{error:#}")),
    };
    if args.client == Client::Java {
        let java = args.clone();
        return run_command(command, timeout, move |stdout, call_ns| {
            java_tools::parse(&java, stdout, call_ns)
        });
    }
    run_command(command, timeout, |stdout, _| {
        stdout.lines().find_map(PhaseReport::parse).map(Ok)
    })
}

/// Runs `command` to its end (or `timeout`) and reads its outcome with
/// `parse`, which gets its stdout and its wall-clock time in nanoseconds and
/// returns `None` when the output holds no result.
pub fn run_command(
    mut command: Command,
    timeout: Duration,
    parse: impl FnOnce(&str, u128) -> Option<Result<PhaseReport, String>>,
) -> PhaseOutcome {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => {
            return PhaseOutcome::failed(format!(
                "spawning {}: {error}",
                command.get_program().to_string_lossy()
            ))
        }
    };
    let stdout = child.stdout.take().map(drain);
    let stderr = child.stderr.take().map(drain);
    let reaped = reap(&mut child, timeout);
    let call_ns = started.elapsed().as_nanos();
    let stdout = stdout.and_then(|h| h.join().ok()).unwrap_or_default();
    let stderr = stderr.and_then(|h| h.join().ok()).unwrap_or_default();

    let reaped = match reaped {
        Ok(reaped) => reaped,
        Err(error) => return PhaseOutcome::failed(format!("waiting for the child: {error}")),
    };
    let report = parse(&stdout, call_ns);
    let reported_hwm_kib = report
        .as_ref()
        .and_then(|r| r.as_ref().ok())
        .map(|r| r.hwm_kib)
        .filter(|&kib| kib > 0);
    let max_rss_kib = reported_hwm_kib.max(reaped.sampled_hwm_kib);
    let result = if reaped.killed {
        Err(format!("timed out after {timeout:?}"))
    } else if let Some(report) = report {
        report.map_err(|error| {
            format!(
                "{error} (child ended with {}; stderr: {})",
                describe_status(reaped.status),
                last_lines(&stderr, 3)
            )
        })
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
        process_cpu_ns: Some(reaped.cpu_ns),
    }
}

//! A child's peak memory and CPU time (Linux; the bench measures Linux builds).

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long a measured server may take to answer.
const TIMEOUT: Duration = Duration::from_secs(600);

/// What the bench reads of a finished child.
pub struct Usage {
    /// `VmHWM`: the high-water mark of the child's own address space. (`ru_maxrss` would
    /// not do: Linux folds the parent's RSS at exec time into it.)
    pub peak_kib: u64,
    /// User + system CPU seconds.
    pub cpu_secs: f64,
}

/// `struct rusage` on 64-bit Linux: two `timeval`s, then fourteen `long`s.
#[repr(C)]
#[derive(Default)]
struct RUsage {
    utime: [i64; 2],
    stime: [i64; 2],
    longs: [i64; 14],
}

const WNOHANG: i32 = 1;

extern "C" {
    fn wait4(pid: i32, status: *mut i32, options: i32, rusage: *mut RUsage) -> i32;
}

fn vm_hwm_kib(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs `cmd` to completion: its stdout, peak memory and CPU time.
pub fn run_measured(cmd: Command) -> Result<(String, Usage), String> {
    measure(cmd, None)
}

/// Runs `cmd` until `answer` delivers its result (a server that never exits, such as the
/// Lambda), then kills it: that result, peak memory and CPU time.
pub fn run_measured_until(
    cmd: Command,
    answer: &mpsc::Receiver<Result<String, String>>,
) -> Result<(String, Usage), String> {
    measure(cmd, Some(answer))
}

fn measure(
    mut cmd: Command,
    answer: Option<&mpsc::Receiver<Result<String, String>>>,
) -> Result<(String, Usage), String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    let pid = child.id() as i32;
    // The report is small and comes at the end; read it on the side so polling goes on.
    let stdout = child.stdout.take();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        if let Some(mut s) = stdout {
            let _ = s.read_to_string(&mut out);
        }
        out
    });
    let mut usage = RUsage::default();
    let mut status = 0i32;
    let mut peak = 0u64;
    let mut answered: Option<Result<String, String>> = None;
    let started = std::time::Instant::now();
    loop {
        // VmHWM only grows, so the last reading before the exit is the peak.
        if let Some(kib) = vm_hwm_kib(pid) {
            peak = peak.max(kib);
        }
        if let Some(rx) = answer.filter(|_| answered.is_none()) {
            let got = match rx.try_recv() {
                Ok(r) => Some(r),
                Err(mpsc::TryRecvError::Empty) if started.elapsed() > TIMEOUT => {
                    Some(Err(format!("no answer within {TIMEOUT:?}")))
                }
                Err(mpsc::TryRecvError::Empty) => None,
                Err(mpsc::TryRecvError::Disconnected) => {
                    Some(Err("the runtime API stand-in stopped".to_owned()))
                }
            };
            if got.is_some() {
                answered = got;
                let _ = child.kill();
            }
        }
        // SAFETY: `status` and `usage` are valid for writes and laid out as wait4 expects
        // on 64-bit Linux; `pid` is our own child, which std never reaps because
        // `child.wait()` is not called.
        let r = unsafe { wait4(pid, &mut status, WNOHANG, &mut usage) };
        if r == pid {
            break;
        }
        if r < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(format!("wait4: {err}"));
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut out = reader.join().unwrap_or_default();
    if let Some(a) = answered {
        out = a?;
    } else if status & 0x7f != 0 || (status >> 8) & 0xff != 0 {
        // WIFEXITED && WEXITSTATUS == 0
        return Err(format!(
            "{cmd:?} failed (wait status {status:#x}); report: {out}"
        ));
    }
    let secs = |tv: [i64; 2]| tv[0] as f64 + tv[1] as f64 / 1e6;
    let _ = usage.longs;
    Ok((
        out,
        Usage {
            peak_kib: peak,
            cpu_secs: secs(usage.utime) + secs(usage.stime),
        },
    ))
}

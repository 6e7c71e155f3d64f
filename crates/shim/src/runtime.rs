//! The OCI runtime (crun, runc, youki), driven through its command line.
//!
//! Each call runs to completion before the shim's loop goes on; a call that
//! hangs is killed after a timeout. The shim, not std, reaps everything
//! else: while a call runs, only that child is waited for, so the
//! container's init and exec processes stay zombies until the loop reaps them
//! and cannot be mistaken for one another.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};

use crate::sys::{self, SignalFd};

/// How long one runtime call may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(120);

pub struct Runtime {
    pub bin: PathBuf,
    pub root: Option<PathBuf>,
    pub id: String,
}

/// A runtime child's stdio, and where its error text can be read from.
pub struct CallIo {
    pub stdin: Stdio,
    pub stdout: Stdio,
    pub stderr: Stdio,
    /// Non-blocking read end of the pipe the runtime writes its errors to.
    pub errors: OwnedFd,
}

impl CallIo {
    /// /dev/null in and out, errors to a fresh pipe.
    pub fn quiet() -> std::io::Result<Self> {
        let (r, w) = sys::pipe()?;
        sys::set_nonblocking(&r)?;
        Ok(CallIo { stdin: Stdio::null(), stdout: Stdio::null(), stderr: Stdio::from(w), errors: r })
    }
}

impl Runtime {
    /// Runs `runtime [--root R] args...`. On failure the error is the
    /// runtime's error output on one line.
    pub fn call(&self, args: &[&OsStr], io: CallIo, sig: &SignalFd) -> Result<(), String> {
        let what = args.first().map(|a| a.to_string_lossy().into_owned()).unwrap_or_default();
        let mut cmd = Command::new(&self.bin);
        if let Some(root) = &self.root {
            cmd.arg("--root").arg(root);
        }
        cmd.args(args).stdin(io.stdin).stdout(io.stdout).stderr(io.stderr);
        let spawned = cmd.spawn();
        // Our copies of the child's ends close here: the child holds them now.
        drop(cmd);
        let mut child = spawned.map_err(|e| format!("run {} {what}: {e}", self.bin.display()))?;
        let status = match wait_child(&mut child, sig, CALL_TIMEOUT) {
            Ok(Some(status)) => status,
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{} {what} did not finish in {}s", self.bin.display(), CALL_TIMEOUT.as_secs()));
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("wait for {} {what}: {e}", self.bin.display()));
            }
        };
        if status.success() {
            return Ok(());
        }
        let text = one_line(&sys::read_available(&io.errors, 64 * 1024));
        Err(if text.is_empty() { format!("{} {what} failed: {status}", self.bin.display()) } else { text })
    }

    /// A call with no stdio of interest.
    pub fn simple(&self, args: &[&OsStr], sig: &SignalFd) -> Result<(), String> {
        let io = CallIo::quiet().map_err(|e| format!("pipe: {e}"))?;
        self.call(args, io, sig)
    }
}

/// Waits for `child` only, up to `timeout`. Signals seen meanwhile are
/// consumed; the caller reaps everything else afterwards.
fn wait_child(child: &mut Child, sig: &SignalFd, timeout: Duration) -> std::io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        let ts = timespec(deadline - now);
        let mut fds = [PollFd::new(sig, PollFlags::IN)];
        match poll(&mut fds, Some(&ts)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        sig.drain();
    }
}

pub fn timespec(d: Duration) -> Timespec {
    Timespec { tv_sec: d.as_secs() as i64, tv_nsec: d.subsec_nanos() as i64 }
}

/// Error output made fit for one line: trimmed, lines joined with "; ".
pub fn one_line(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_output_becomes_one_line() {
        assert_eq!(one_line(b"  first\n\nsecond  \n"), "first; second");
        assert_eq!(one_line(b""), "");
    }
}

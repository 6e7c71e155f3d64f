//! What the supervisor records about the VM, and how another process reads it.
//!
//! Owns `vm/state.json` ([`VmState`], written atomically by the supervisor,
//! its only writer) and the supervisor lock (`vm/supervisor.lock`, an flock
//! held for the supervisor's whole life). Liveness is decided by the lock,
//! not by a pid, so a recycled pid never passes for a running VM. It does not
//! start or stop anything.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::backend::StopReport;
use crate::config::Accel;
use crate::forward::PortForward;
use crate::paths::BerthHome;

/// Failure to read or write the VM's recorded state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading or writing a state file failed.
    #[error("access vm state {path:?}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `state.json` is not what this version writes.
    #[error("decode vm state {path:?}")]
    Decode {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// Where the VM is in its life, as the supervisor last recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// QEMU started, the engine does not answer yet.
    Starting,
    /// The engine answers.
    Running,
    /// A stop was requested and is in progress.
    Stopping,
    /// Stopped on request.
    Stopped,
    /// QEMU or the supervisor died without being asked to.
    Crashed,
}

/// `vm/state.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmState {
    /// Recorded phase; see [`observe`] for what is actually true.
    pub phase: Phase,
    /// The supervisor process.
    pub supervisor_pid: u32,
    /// The QEMU process, once spawned.
    pub qemu_pid: Option<u32>,
    /// The accelerator in use.
    pub accel: Accel,
    /// vCPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Data disk size in GiB.
    pub disk_gib: u64,
    /// The guest image directory booted.
    pub image_dir: PathBuf,
    /// Host loopback port forwarded to the guest engine.
    pub api_port: u16,
    /// The relayed engine socket.
    pub socket: PathBuf,
    /// When QEMU was started (seconds since the epoch).
    pub started_at: u64,
    /// Milliseconds from QEMU start to the engine answering.
    pub boot_ms: Option<u64>,
    /// Published ports currently forwarded.
    pub forwards: Vec<PortForward>,
    /// Published ports that could not be forwarded, with the reason.
    pub warnings: Vec<String>,
    /// Why the VM crashed, with the console tail.
    pub crash: Option<String>,
    /// How the last stop went.
    pub stop: Option<StopReport>,
}

/// Seconds since the epoch, now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl VmState {
    /// Reads `vm/state.json`; `None` when there is none (never started).
    pub fn load(home: &BerthHome) -> Result<Option<Self>, StateError> {
        let path = home.state_file();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| StateError::Decode { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Replaces `vm/state.json` atomically.
    pub fn save(&self, home: &BerthHome) -> Result<(), StateError> {
        let path = home.state_file();
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(self).expect("vm state serializes");
        std::fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_err(&path))
    }
}

/// The supervisor's exclusive lock; released when dropped (or the process
/// dies, which is the point).
#[derive(Debug)]
pub struct SupervisorLock {
    _file: File,
}

fn open_lock(home: &BerthHome) -> Result<File, StateError> {
    let path = home.supervisor_lock();
    std::fs::create_dir_all(home.vm_dir()).map_err(io_err(&home.vm_dir()))?;
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err(&path))
}

#[cfg(unix)]
fn flock(file: &File, op: libc::c_int) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a valid, owned descriptor; no memory is shared.
    unsafe { libc::flock(file.as_raw_fd(), op) == 0 }
}

impl SupervisorLock {
    /// Takes the lock; `None` when another supervisor holds it.
    pub fn try_acquire(home: &BerthHome) -> Result<Option<Self>, StateError> {
        let file = open_lock(home)?;
        if flock(&file, libc::LOCK_EX | libc::LOCK_NB) {
            Ok(Some(Self { _file: file }))
        } else {
            Ok(None)
        }
    }

    /// Whether a supervisor holds the lock now.
    pub fn is_held(home: &BerthHome) -> Result<bool, StateError> {
        if !home.supervisor_lock().exists() {
            return Ok(false);
        }
        let file = open_lock(home)?;
        let free = flock(&file, libc::LOCK_SH | libc::LOCK_NB);
        Ok(!free)
    }

    /// Blocks (on a blocking-pool thread) until no supervisor holds the lock,
    /// which is how a stopping client learns the supervisor has exited.
    pub async fn wait_released(home: &BerthHome) -> Result<(), StateError> {
        let file = open_lock(home)?;
        tokio::task::spawn_blocking(move || {
            flock(&file, libc::LOCK_SH);
        })
        .await
        .ok();
        Ok(())
    }
}

/// The VM's state as it is, not just as recorded: a recorded running VM
/// whose supervisor no longer holds the lock has crashed.
pub fn observe(home: &BerthHome) -> Result<Option<VmState>, StateError> {
    let Some(mut state) = VmState::load(home)? else {
        return Ok(None);
    };
    let alive = SupervisorLock::is_held(home)?;
    if !alive
        && matches!(
            state.phase,
            Phase::Starting | Phase::Running | Phase::Stopping
        )
    {
        state.phase = Phase::Crashed;
        state.crash.get_or_insert_with(|| {
            format!(
                "the vm supervisor (pid {}) exited without stopping the vm",
                state.supervisor_pid
            )
        });
    }
    Ok(Some(state))
}

/// The last `lines` lines of `path` (empty when it cannot be read), for
/// error messages; reads at most the last 64 KiB.
pub fn tail(path: &Path, lines: usize) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(64 * 1024);
    if f.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    if f.read_to_end(&mut buf).is_err() {
        return String::new();
    }
    let text = strip_terminal_escapes(&String::from_utf8_lossy(&buf));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Drops terminal control sequences (the firmware clears the screen on the
/// serial console) and stray control characters, keeping newlines and tabs.
pub fn strip_terminal_escapes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    // CSI: parameters, then one final byte in @..~.
                    for f in chars.by_ref() {
                        if ('@'..='~').contains(&f) {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            '\n' | '\t' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(phase: Phase) -> VmState {
        VmState {
            phase,
            supervisor_pid: 4242,
            qemu_pid: Some(4243),
            accel: Accel::Tcg,
            cpus: 2,
            memory_mib: 1024,
            disk_gib: 8,
            image_dir: "/img".into(),
            api_port: 40000,
            socket: "/b/run/docker.sock".into(),
            started_at: 1,
            boot_ms: Some(9000),
            forwards: vec![],
            warnings: vec![],
            crash: None,
            stop: None,
        }
    }

    #[test]
    fn never_started_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert!(observe(&BerthHome::new(dir.path())).unwrap().is_none());
    }

    #[test]
    fn running_without_supervisor_is_crashed() {
        let dir = tempfile::tempdir().unwrap();
        let home = BerthHome::new(dir.path());
        std::fs::create_dir_all(home.vm_dir()).unwrap();
        state(Phase::Running).save(&home).unwrap();
        let seen = observe(&home).unwrap().unwrap();
        assert_eq!(seen.phase, Phase::Crashed);
        assert!(seen.crash.unwrap().contains("pid 4242"));
    }

    #[test]
    fn running_with_lock_held_is_running_and_second_lock_fails() {
        let dir = tempfile::tempdir().unwrap();
        let home = BerthHome::new(dir.path());
        let lock = SupervisorLock::try_acquire(&home).unwrap().unwrap();
        state(Phase::Running).save(&home).unwrap();
        assert_eq!(observe(&home).unwrap().unwrap().phase, Phase::Running);
        assert!(SupervisorLock::try_acquire(&home).unwrap().is_none());
        drop(lock);
        assert!(!SupervisorLock::is_held(&home).unwrap());
    }

    #[test]
    fn terminal_escapes_are_stripped() {
        assert_eq!(
            strip_terminal_escapes("\u{1b}c\u{1b}[?7l\u{1b}[2JSeaBIOS\r\nok"),
            "SeaBIOS\nok"
        );
    }

    #[test]
    fn tail_returns_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("console.log");
        std::fs::write(&p, "a\nb\nc\n").unwrap();
        assert_eq!(tail(&p, 2), "b\nc");
        assert_eq!(tail(&dir.path().join("nope"), 2), "");
    }
}

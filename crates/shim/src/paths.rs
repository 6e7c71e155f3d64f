//! Every file the shim reads or writes in its state directory. berthd relies
//! on these names: `shim.pid`, `shim.sock`, `exit.json`, `exec-<pid>.exit`.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Longest path a `sockaddr_un` holds, without the terminating NUL.
const SUN_PATH_MAX: usize = 107;

pub struct StateDir {
    dir: PathBuf,
    /// Kept open so sockets can be named through `/proc/<pid>/fd/<fd>/` when
    /// the plain path is too long for `sockaddr_un`.
    dir_fd: OwnedFd,
}

impl StateDir {
    pub fn new(dir: PathBuf, dir_fd: OwnedFd) -> Self {
        StateDir { dir, dir_fd }
    }

    /// The shim's own diagnostics.
    pub fn shim_log(&self) -> PathBuf {
        self.dir.join("shim.log")
    }
    /// The shim's PID, for berthd to find a shim after its own restart.
    pub fn shim_pid(&self) -> PathBuf {
        self.dir.join("shim.pid")
    }
    /// The control socket.
    pub fn shim_sock(&self) -> PathBuf {
        self.dir.join("shim.sock")
    }
    /// Written by the runtime's `create --pid-file`.
    pub fn init_pid(&self) -> PathBuf {
        self.dir.join("init.pid")
    }
    /// Where the runtime sends the container's pty master.
    pub fn console_sock(&self) -> PathBuf {
        self.dir.join("console.sock")
    }
    /// The container's exit, written once, atomically.
    pub fn exit_json(&self) -> PathBuf {
        self.dir.join("exit.json")
    }
    /// The OCI process of the `seq`th exec, handed to `runtime exec --process`.
    pub fn exec_process(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("exec-{seq}.json"))
    }
    pub fn exec_pid(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("exec-{seq}.pid"))
    }
    pub fn exec_console(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("exec-{seq}.sock"))
    }
    /// An exec process's exit code, `{"exit_code":N}`.
    pub fn exec_exit(&self, pid: i32) -> PathBuf {
        self.dir.join(format!("exec-{pid}.exit"))
    }

    /// A name for `path` (a file in this directory) that fits in
    /// `sockaddr_un`, for binding here and for the runtime to connect to.
    pub fn socket_name(&self, path: &Path) -> PathBuf {
        if path.as_os_str().len() <= SUN_PATH_MAX {
            return path.to_path_buf();
        }
        let name = path.file_name().map(PathBuf::from).unwrap_or_default();
        PathBuf::from(format!("/proc/{}/fd/{}", std::process::id(), self.dir_fd.as_raw_fd())).join(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::{UnixListener, UnixStream};

    #[test]
    fn long_socket_paths_go_through_the_directory_fd() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("d".repeat(100));
        std::fs::create_dir(&dir).expect("mkdir");
        let fd = std::fs::File::open(&dir).expect("open dir");
        let state = StateDir::new(dir.clone(), fd.into());
        let path = state.shim_sock();
        let name = state.socket_name(&path);
        assert_ne!(name, path);
        assert!(name.as_os_str().len() <= SUN_PATH_MAX);
        let _listener = UnixListener::bind(&name).expect("bind through /proc");
        assert!(path.exists(), "the socket is in the state directory");
        UnixStream::connect(&name).expect("connect through /proc");

        let short = StateDir::new(tmp.path().to_path_buf(), std::fs::File::open(tmp.path()).expect("open").into());
        assert_eq!(short.socket_name(&short.shim_sock()), tmp.path().join("shim.sock"));
    }
}

//! Every path under `$BERTH_HOME` (default `~/.berth`).
//!
//! This module is the only place that knows the on-disk layout of the host
//! side; other modules ask a [`BerthHome`] for a path instead of joining
//! strings. It does not create, lock or clean up anything.
//!
//! Unix socket paths are limited to about 104 (macOS) or 108 (Linux) bytes, so
//! keep `$BERTH_HOME` short; this module does not shorten paths for you.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Environment variable that overrides the default `~/.berth`.
pub const BERTH_HOME_ENV: &str = "BERTH_HOME";

/// Failure to locate `$BERTH_HOME`.
#[derive(Debug, thiserror::Error)]
pub enum PathsError {
    /// Neither `BERTH_HOME` nor a home directory (`HOME`, `USERPROFILE`) is set.
    #[error("locate berth home: neither BERTH_HOME nor HOME/USERPROFILE is set")]
    LocateHome,
    /// `BERTH_HOME` is set to a relative path, which would change meaning with
    /// the current directory.
    #[error("locate berth home: BERTH_HOME must be absolute, got {0:?}")]
    RelativeHome(PathBuf),
}

/// The root of Berth's host-side state and the names of everything in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BerthHome {
    root: PathBuf,
}

impl BerthHome {
    /// Uses `root` as `$BERTH_HOME` as given.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Reads `BERTH_HOME`, falling back to `~/.berth`.
    pub fn from_env() -> Result<Self, PathsError> {
        let home = std::env::var_os("HOME").or_else(|| std::env::var_os("USERPROFILE"));
        Self::from_vars(std::env::var_os(BERTH_HOME_ENV), home)
    }

    /// The decision behind [`BerthHome::from_env`], without touching the
    /// process environment (so tests need not mutate it).
    pub fn from_vars(
        berth_home: Option<OsString>,
        user_home: Option<OsString>,
    ) -> Result<Self, PathsError> {
        match berth_home.filter(|v| !v.is_empty()) {
            Some(v) => {
                let root = PathBuf::from(v);
                if root.is_relative() {
                    return Err(PathsError::RelativeHome(root));
                }
                Ok(Self::new(root))
            }
            None => user_home
                .filter(|v| !v.is_empty())
                .map(|h| Self::new(PathBuf::from(h).join(".berth")))
                .ok_or(PathsError::LocateHome),
        }
    }

    /// `$BERTH_HOME` itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `vm/`: per-VM runtime state.
    pub fn vm_dir(&self) -> PathBuf {
        self.root.join("vm")
    }

    /// `vm/disk.img`: the persistent data disk (`/var/lib/berth` in the guest).
    pub fn data_disk(&self) -> PathBuf {
        self.vm_dir().join("disk.img")
    }

    /// `vm/qmp.sock`: QEMU's QMP control socket.
    pub fn qmp_socket(&self) -> PathBuf {
        self.vm_dir().join("qmp.sock")
    }

    /// `vm/console.log`: the guest serial console, written by the hypervisor.
    pub fn console_log(&self) -> PathBuf {
        self.vm_dir().join("console.log")
    }

    /// `vm/serial.sock`: the guest serial console as an interactive socket.
    pub fn serial_socket(&self) -> PathBuf {
        self.vm_dir().join("serial.sock")
    }

    /// `vm/pid`: pid of the hypervisor process.
    pub fn pid_file(&self) -> PathBuf {
        self.vm_dir().join("pid")
    }

    /// `vm/state.json`: what the manager last recorded about the VM.
    pub fn state_file(&self) -> PathBuf {
        self.vm_dir().join("state.json")
    }

    /// `vm/vfkit-rest.sock`: vfkit's RESTful control socket.
    pub fn vfkit_rest_socket(&self) -> PathBuf {
        self.vm_dir().join("vfkit-rest.sock")
    }

    /// `vm/virtiofs-<n>.sock`: the vhost-user socket of the `n`th virtiofsd.
    pub fn virtiofs_socket(&self, n: usize) -> PathBuf {
        self.vm_dir().join(format!("virtiofs-{n}.sock"))
    }

    /// `vm/guest/`: the directory shared read-write with the guest as the
    /// `berthcfg` 9p tag (guest.json, daemon.json, the engine log).
    pub fn guest_dir(&self) -> PathBuf {
        self.vm_dir().join("guest")
    }

    /// `vm/guest/guest.json`: shares, engine arguments and the host gateway,
    /// written by the host before each boot.
    pub fn guest_config(&self) -> PathBuf {
        self.guest_dir().join("guest.json")
    }

    /// `vm/guest/daemon.json`: the copy of [`BerthHome::daemon_config`] the
    /// guest engine reads.
    pub fn guest_daemon_config(&self) -> PathBuf {
        self.guest_dir().join("daemon.json")
    }

    /// `vm/guest/berthd.log`: the engine's log, appended by the guest.
    pub fn engine_log(&self) -> PathBuf {
        self.guest_dir().join("berthd.log")
    }

    /// `vm/shell.sock`: a root shell on the guest's virtconsole.
    pub fn shell_socket(&self) -> PathBuf {
        self.vm_dir().join("shell.sock")
    }

    /// `vm/supervisor.log`: the host-side supervisor's own log.
    pub fn supervisor_log(&self) -> PathBuf {
        self.vm_dir().join("supervisor.log")
    }

    /// `vm/supervisor.lock`: flock held by the supervisor while it lives, so
    /// a second start cannot race the first.
    pub fn supervisor_lock(&self) -> PathBuf {
        self.vm_dir().join("supervisor.lock")
    }

    /// `vm/stop-request.json`: the grace period a stopping client asks for,
    /// read by the supervisor when it receives SIGTERM.
    pub fn stop_request(&self) -> PathBuf {
        self.vm_dir().join("stop-request.json")
    }

    /// `vm/qemu.log`: QEMU's own stdout and stderr.
    pub fn qemu_log(&self) -> PathBuf {
        self.vm_dir().join("qemu.log")
    }

    /// `vm/accel.json`: the cached verdict of the accelerator probe.
    pub fn accel_cache(&self) -> PathBuf {
        self.vm_dir().join("accel.json")
    }

    /// `run/`: sockets clients connect to.
    pub fn run_dir(&self) -> PathBuf {
        self.root.join("run")
    }

    /// `run/docker.sock`: the forwarded engine API socket.
    pub fn docker_socket(&self) -> PathBuf {
        self.run_dir().join("docker.sock")
    }

    /// `daemon.json`: engine configuration, copied into the guest.
    pub fn daemon_config(&self) -> PathBuf {
        self.root.join("daemon.json")
    }

    /// `vm-image/`: the guest image built by `vm-image/`.
    pub fn image_dir(&self) -> PathBuf {
        self.root.join("vm-image")
    }

    /// `vm-image/vmlinuz`: the guest kernel.
    pub fn kernel(&self) -> PathBuf {
        self.image_dir().join("vmlinuz")
    }

    /// `vm-image/initrd.img`: the guest initrd.
    pub fn initrd(&self) -> PathBuf {
        self.image_dir().join("initrd.img")
    }

    /// `vm-image/rootfs.img`: the read-only guest root filesystem.
    pub fn rootfs(&self) -> PathBuf {
        self.image_dir().join("rootfs.img")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn berth_home_env_wins_over_user_home() {
        let home = BerthHome::from_vars(Some("/opt/berth".into()), Some("/home/u".into())).unwrap();
        assert_eq!(home.root(), Path::new("/opt/berth"));
    }

    #[test]
    fn default_is_dot_berth_in_user_home() {
        let home = BerthHome::from_vars(None, Some("/home/u".into())).unwrap();
        assert_eq!(home.root(), Path::new("/home/u/.berth"));
    }

    #[test]
    fn empty_berth_home_falls_back_to_user_home() {
        let home = BerthHome::from_vars(Some("".into()), Some("/home/u".into())).unwrap();
        assert_eq!(home.root(), Path::new("/home/u/.berth"));
    }

    #[test]
    fn relative_berth_home_is_rejected() {
        let err = BerthHome::from_vars(Some("rel/dir".into()), None).unwrap_err();
        assert!(matches!(err, PathsError::RelativeHome(_)));
    }

    #[test]
    fn no_home_at_all_is_an_error() {
        assert!(matches!(
            BerthHome::from_vars(None, None),
            Err(PathsError::LocateHome)
        ));
    }

    #[test]
    fn layout_matches_design() {
        let h = BerthHome::new("/b");
        assert_eq!(h.data_disk(), Path::new("/b/vm/disk.img"));
        assert_eq!(h.qmp_socket(), Path::new("/b/vm/qmp.sock"));
        assert_eq!(h.console_log(), Path::new("/b/vm/console.log"));
        assert_eq!(h.serial_socket(), Path::new("/b/vm/serial.sock"));
        assert_eq!(h.pid_file(), Path::new("/b/vm/pid"));
        assert_eq!(h.state_file(), Path::new("/b/vm/state.json"));
        assert_eq!(h.vfkit_rest_socket(), Path::new("/b/vm/vfkit-rest.sock"));
        assert_eq!(h.docker_socket(), Path::new("/b/run/docker.sock"));
        assert_eq!(h.daemon_config(), Path::new("/b/daemon.json"));
        assert_eq!(h.guest_config(), Path::new("/b/vm/guest/guest.json"));
        assert_eq!(
            h.guest_daemon_config(),
            Path::new("/b/vm/guest/daemon.json")
        );
        assert_eq!(h.engine_log(), Path::new("/b/vm/guest/berthd.log"));
        assert_eq!(h.shell_socket(), Path::new("/b/vm/shell.sock"));
        assert_eq!(h.supervisor_lock(), Path::new("/b/vm/supervisor.lock"));
        assert_eq!(h.accel_cache(), Path::new("/b/vm/accel.json"));
        assert_eq!(h.kernel(), Path::new("/b/vm-image/vmlinuz"));
        assert_eq!(h.initrd(), Path::new("/b/vm-image/initrd.img"));
        assert_eq!(h.rootfs(), Path::new("/b/vm-image/rootfs.img"));
    }
}

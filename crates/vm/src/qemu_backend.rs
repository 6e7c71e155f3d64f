//! The QEMU backend: spawning QEMU, stopping it gracefully, and choosing an
//! accelerator that is proven to boot.
//!
//! Owns the QEMU process (a child of the calling process, killed by the
//! kernel if that process dies, so a crashed supervisor never leaves an
//! orphan VM holding the data disk), the accelerator probe and its cache
//! (`vm/accel.json`), and the [`Backend`] implementation. It does not own the
//! command line ([`crate::qemu`]), the QMP wire protocol ([`crate::qmp`]) or
//! the engine socket and port forwarding ([`crate::supervisor`]).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::backend::{
    escalate_stop, Backend, BackendError, BoxError, RunningVm, StopControl, StopReport, VmStatus,
};
use crate::config::{host_cpus, Accel, VmConfig};
use crate::guest::{ensure_data_disk, prepare_guest_dir, GuestConfig};
use crate::image::GuestImage;
use crate::paths::BerthHome;
use crate::qemu::{
    accel_candidates, probe_accel, probe_command_line, qemu_command_line_with, EngineForward,
    HostArch, HostOs, QemuOptions, ShareMode, GUEST_ENGINE_PORT, PROBE_MARKERS,
};
use crate::qmp::QmpClient;
use crate::state::tail;

/// Environment variable naming the QEMU binary to run instead of
/// `qemu-system-<arch>` from `PATH`.
pub const QEMU_ENV: &str = "BERTH_QEMU";

/// How long the probe waits for a candidate accelerator to reach userspace.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// How long QEMU may take to open its QMP socket after being spawned.
const QMP_READY_TIMEOUT: Duration = Duration::from_secs(15);

/// Failure of a QEMU backend step, naming the step.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    /// This host's CPU architecture has no QEMU target here.
    #[error("start qemu: unsupported host architecture {0}")]
    UnsupportedArch(&'static str),
    /// The command line could not be built.
    #[error("start qemu")]
    CommandLine(#[from] crate::qemu::CommandLineError),
    /// The guest image failed its checks.
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
    /// The guest's inputs (guest.json, data disk) could not be prepared.
    #[error("prepare guest")]
    Guest(#[from] crate::guest::GuestError),
    /// QEMU could not be executed.
    #[error("run {program}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    /// QEMU exited before its control socket answered.
    #[error("qemu exited during start-up ({status}); its output:\n{output}")]
    EarlyExit { status: String, output: String },
    /// QEMU did not open its control socket in time.
    #[error("qemu did not open its qmp socket {path:?} within {secs} s")]
    QmpTimeout { path: PathBuf, secs: u64 },
    /// A file under `$BERTH_HOME` could not be prepared.
    #[error("prepare {path:?}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl From<QemuError> for BackendError {
    fn from(e: QemuError) -> Self {
        BackendError::Start(Box::new(e))
    }
}

/// The QEMU binary to run for `arch`: `$BERTH_QEMU` or the PATH name.
pub fn qemu_binary(arch: HostArch) -> String {
    std::env::var(QEMU_ENV)
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| crate::qemu::qemu_program(arch).to_string())
}

/// Makes `cmd`'s child receive SIGKILL when the calling thread's process
/// dies (Linux); elsewhere a no-op.
fn die_with_parent(cmd: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: prctl is async-signal-safe and touches no memory of the
        // parent; it runs in the forked child before exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cmd;
}

/// Removes `path` if it exists.
fn remove_if_exists(path: &Path) -> Result<(), QemuError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(QemuError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// What [`spawn_vm`] needs beyond the user's config.
#[derive(Debug, Clone)]
pub struct SpawnPlan {
    /// The checked guest image.
    pub image: GuestImage,
    /// Resolved accelerator.
    pub accel: Accel,
    /// Host loopback port forwarded to the guest engine.
    pub api_port: u16,
    /// Extra `berthd` arguments for `guest.json`.
    pub engine_args: Vec<String>,
}

/// Prepares the guest's inputs, spawns QEMU and waits for its QMP socket.
/// The config must be validated and the image checked by the caller. On
/// error QEMU is not left running.
pub async fn spawn_vm(
    config: &VmConfig,
    home: &BerthHome,
    plan: &SpawnPlan,
) -> Result<Child, QemuError> {
    let arch = HostArch::current().ok_or(QemuError::UnsupportedArch(std::env::consts::ARCH))?;
    ensure_data_disk(home, config.disk_gib)?;
    let mut guest = GuestConfig::for_vm(config);
    guest.engine_args = plan.engine_args.clone();
    prepare_guest_dir(home, &guest)?;
    for stale in [home.qmp_socket(), home.shell_socket(), home.console_log()] {
        remove_if_exists(&stale)?;
    }
    let opts = QemuOptions {
        share_mode: ShareMode::NineP,
        engine: Some(EngineForward {
            host_port: plan.api_port,
            guest_port: GUEST_ENGINE_PORT,
        }),
    };
    let mut argv = qemu_command_line_with(config, home, &plan.image, plan.accel, arch, &opts)?;
    argv[0] = qemu_binary(arch);
    let log_path = home.qemu_log();
    let log = std::fs::File::create(&log_path).map_err(|source| QemuError::Io {
        path: log_path.clone(),
        source,
    })?;
    let log2 = log.try_clone().map_err(|source| QemuError::Io {
        path: log_path.clone(),
        source,
    })?;
    tracing::info!(vm = "berth", accel = ?plan.accel, argv = %argv.join(" "), "starting qemu");
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .kill_on_drop(true);
    die_with_parent(&mut cmd);
    let mut child = cmd.spawn().map_err(|source| QemuError::Spawn {
        program: argv[0].clone(),
        source,
    })?;
    wait_qmp_ready(&mut child, home).await?;
    Ok(child)
}

/// Polls the QMP socket (there is no event for "QEMU is listening") until it
/// answers, QEMU exits, or the deadline passes; kills QEMU on failure.
async fn wait_qmp_ready(child: &mut Child, home: &BerthHome) -> Result<(), QemuError> {
    let deadline = Instant::now() + QMP_READY_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(QemuError::EarlyExit {
                status: status.to_string(),
                output: tail(&home.qemu_log(), 20),
            });
        }
        if QmpClient::connect(&home.qmp_socket()).await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            let _ = child.kill().await;
            return Err(QemuError::QmpTimeout {
                path: home.qmp_socket(),
                secs: QMP_READY_TIMEOUT.as_secs(),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Serialises QMP use within one process: QEMU's QMP socket serves one
/// client at a time.
static QMP_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs one HMP command through QMP `human-monitor-command` and returns its
/// text output (HMP reports most failures as text, not as QMP errors).
pub async fn human_monitor_command(qmp: &Path, line: &str) -> Result<String, BoxError> {
    let _guard = QMP_LOCK.lock().await;
    let mut client = QmpClient::connect(qmp).await?;
    Ok(client.human_monitor_command(line).await?)
}

/// Powerdown → grace → kill for a QEMU that is our child.
pub struct ChildStop<'a> {
    /// The QEMU process.
    pub child: &'a mut Child,
    /// Its QMP socket.
    pub qmp: PathBuf,
}

impl StopControl for ChildStop<'_> {
    async fn request_powerdown(&mut self) -> Result<(), BoxError> {
        let _guard = QMP_LOCK.lock().await;
        let mut client = QmpClient::connect(&self.qmp).await?;
        client.system_powerdown().await?;
        Ok(())
    }

    async fn wait_exit(&mut self) {
        let _ = self.child.wait().await;
    }

    async fn kill(&mut self) -> Result<(), BoxError> {
        self.child.kill().await?;
        Ok(())
    }
}

/// Stops a QEMU child: see [`escalate_stop`].
pub async fn stop_child(
    child: &mut Child,
    home: &BerthHome,
    grace: Duration,
) -> Result<StopReport, BackendError> {
    if let Ok(Some(_)) = child.try_wait() {
        return Ok(StopReport {
            steps: Vec::new(),
            forced: false,
            elapsed: Duration::ZERO,
        });
    }
    let mut ctl = ChildStop {
        child,
        qmp: home.qmp_socket(),
    };
    escalate_stop(&mut ctl, grace).await
}

/// The cached probe verdict in `vm/accel.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccelVerdict {
    /// What the verdict depends on: host kernel, QEMU version, guest kernel.
    pub key: String,
    /// The accelerator that booted (or tcg).
    pub accel: Accel,
}

/// The cache key: the host kernel release, the QEMU version line and the
/// guest kernel's size and mtime. Any of them changing can change whether
/// hardware acceleration works, so the probe runs again.
pub async fn accel_cache_key(image: &GuestImage, arch: HostArch) -> String {
    let host_kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let qemu_version = Command::new(qemu_binary(arch))
        .arg("--version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .await
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .unwrap_or_default();
    let guest_kernel = std::fs::metadata(&image.kernel)
        .map(|m| {
            let mtime = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map(|d| d.as_secs())
                .unwrap_or(0);
            format!("{}@{}", m.len(), mtime)
        })
        .unwrap_or_default();
    format!("{host_kernel}|{qemu_version}|{guest_kernel}")
}

/// Boots the guest kernel alone under `accel` and resolves `Ok` once the
/// console shows it reached userspace. The QEMU it starts is killed when the
/// returned future completes or is dropped (the probe's timeout).
pub async fn boot_check(image: GuestImage, accel: Accel, arch: HostArch) -> Result<(), String> {
    if accel == Accel::Kvm {
        // Cheap rejection first; opening is necessary, not sufficient.
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .map_err(|e| format!("open /dev/kvm: {e}"))?;
    }
    let mut argv = probe_command_line(&image, accel, arch).map_err(|e| e.to_string())?;
    argv[0] = qemu_binary(arch);
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    die_with_parent(&mut cmd);
    let mut child = cmd.spawn().map_err(|e| format!("run {}: {e}", argv[0]))?;
    let mut stderr = child.stderr.take();
    let stdout = child.stdout.take().ok_or("qemu stdout not captured")?;
    let mut lines = BufReader::new(stdout).lines();
    let result = loop {
        match lines.next_line().await {
            Ok(Some(line)) if PROBE_MARKERS.iter().any(|m| line.contains(m)) => break Ok(()),
            Ok(Some(_)) => continue,
            Ok(None) => {
                let mut err = String::new();
                if let Some(e) = stderr.as_mut() {
                    use tokio::io::AsyncReadExt;
                    let _ = e.read_to_string(&mut err).await;
                }
                let first = err.lines().next().unwrap_or("no output").trim().to_string();
                break Err(format!(
                    "qemu exited before the guest reached userspace: {first}"
                ));
            }
            Err(e) => break Err(format!("read qemu console: {e}")),
        }
    };
    let _ = child.kill().await;
    result
}

/// Resolves `requested` to an accelerator: an explicit one is used as
/// given; `auto` uses the cached verdict when its key still matches, else
/// probes the host's native accelerator by booting the guest kernel with
/// [`PROBE_TIMEOUT`], falling back to TCG, and caches the verdict.
pub async fn resolve_accel(requested: Accel, home: &BerthHome, image: &GuestImage) -> Accel {
    if requested != Accel::Auto {
        return requested;
    }
    let (Some(arch), Some(os)) = (HostArch::current(), HostOs::current()) else {
        return Accel::Tcg;
    };
    let key = accel_cache_key(image, arch).await;
    if let Ok(bytes) = std::fs::read(home.accel_cache()) {
        if let Ok(v) = serde_json::from_slice::<AccelVerdict>(&bytes) {
            if v.key == key {
                tracing::info!(vm = "berth", accel = ?v.accel, "using cached accelerator verdict");
                return v.accel;
            }
        }
    }
    let candidates = accel_candidates(Accel::Auto, os);
    let accel = probe_accel(&candidates, PROBE_TIMEOUT, |a| {
        boot_check(image.clone(), a, arch)
    })
    .await;
    let verdict = AccelVerdict { key, accel };
    let _ = std::fs::create_dir_all(home.vm_dir());
    if let Err(e) = std::fs::write(
        home.accel_cache(),
        serde_json::to_vec(&verdict).expect("verdict serializes"),
    ) {
        tracing::warn!(vm = "berth", error = %e, "could not cache accelerator verdict");
    }
    accel
}

/// Picks a free TCP port on host loopback for the engine forward. The port
/// is free when chosen; QEMU binding it moments later could race another
/// program, in which case QEMU fails to start and says so.
pub fn pick_loopback_port() -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// The QEMU backend for one `$BERTH_HOME`, owning the QEMU child it started.
///
/// [`Backend::start`] runs QEMU as a child of this process; the `berth` CLI
/// runs it inside a detached supervisor, which also serves the engine socket.
pub struct QemuBackend {
    home: BerthHome,
    image: GuestImage,
    child: Mutex<Option<Child>>,
    since: Mutex<Option<SystemTime>>,
}

impl QemuBackend {
    /// A backend booting `image` for `home`.
    pub fn new(home: BerthHome, image: GuestImage) -> Self {
        Self {
            home,
            image,
            child: Mutex::new(None),
            since: Mutex::new(None),
        }
    }

    /// Takes the QEMU child out (to await its exit); [`Backend::stop`] and
    /// [`Backend::status`] then see no VM.
    pub fn take_child(&self) -> Option<Child> {
        self.child.lock().expect("child lock not poisoned").take()
    }
}

impl Backend for QemuBackend {
    async fn start(&self, config: &VmConfig, home: &BerthHome) -> Result<RunningVm, BackendError> {
        config.validate(host_cpus())?;
        let running = {
            let mut guard = self.child.lock().expect("child lock not poisoned");
            match guard.as_mut() {
                Some(c) => match c.try_wait() {
                    Ok(None) => c.id(),
                    _ => None,
                },
                None => None,
            }
        };
        if let Some(pid) = running {
            return Err(BackendError::AlreadyRunning { pid });
        }
        self.image.check().map_err(QemuError::from)?;
        let accel = resolve_accel(config.accel, home, &self.image).await;
        let api_port = pick_loopback_port().map_err(|source| QemuError::Io {
            path: PathBuf::from("127.0.0.1:0"),
            source,
        })?;
        let plan = SpawnPlan {
            image: self.image.clone(),
            accel,
            api_port,
            engine_args: Vec::new(),
        };
        let child = spawn_vm(config, home, &plan).await?;
        let pid = child.id().unwrap_or(0);
        let since = SystemTime::now();
        *self.child.lock().expect("child lock not poisoned") = Some(child);
        *self.since.lock().expect("since lock not poisoned") = Some(since);
        Ok(RunningVm {
            pid,
            since,
            console_log: home.console_log(),
            control_socket: home.qmp_socket(),
        })
    }

    async fn stop(&self, grace: Duration) -> Result<StopReport, BackendError> {
        let child = self.take_child();
        match child {
            Some(mut child) => stop_child(&mut child, &self.home, grace).await,
            None => Ok(StopReport {
                steps: Vec::new(),
                forced: false,
                elapsed: Duration::ZERO,
            }),
        }
    }

    async fn status(&self) -> Result<VmStatus, BackendError> {
        let mut guard = self.child.lock().expect("child lock not poisoned");
        let Some(child) = guard.as_mut() else {
            return Ok(VmStatus::Stopped);
        };
        match child.try_wait() {
            Ok(None) => Ok(VmStatus::Running {
                pid: child.id().unwrap_or(0),
                since: self
                    .since
                    .lock()
                    .expect("since lock not poisoned")
                    .unwrap_or(SystemTime::UNIX_EPOCH),
            }),
            Ok(Some(status)) => Ok(VmStatus::Crashed {
                reason: format!(
                    "qemu exited unexpectedly ({status}); console tail:\n{}",
                    tail(&self.home.console_log(), 20)
                ),
            }),
            Err(e) => Err(BackendError::Status(Box::new(e))),
        }
    }
}

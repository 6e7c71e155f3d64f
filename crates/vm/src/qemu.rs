//! The QEMU backend's pure parts: the command line and the accelerator probe.
//!
//! Owns how a [`VmConfig`] becomes `qemu-system-*` arguments, and the decision
//! of which accelerator to use. It does not spawn QEMU, talk QMP ([`crate::qmp`])
//! or start `virtiofsd`; everything here is a pure function (or takes the
//! effectful "boot check" as an argument) so it is unit-tested without QEMU.
//!
//! Why the probe boots a guest: `/dev/kvm` opening is not proof that KVM
//! works; on some hosts (nested virtualisation, this CI machine) it opens and
//! then hangs every guest. So `Auto` only picks a hardware accelerator after a
//! caller-supplied check has seen a guest boot under it within a timeout.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use crate::config::{Accel, VmConfig};
use crate::paths::BerthHome;

/// Guest architecture, which is the host's (we never emulate across ISAs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostArch {
    /// x86-64: `qemu-system-x86_64 -machine q35`.
    X86_64,
    /// ARM64: `qemu-system-aarch64 -machine virt`.
    Aarch64,
}

impl HostArch {
    /// This build's architecture, if supported.
    pub fn current() -> Option<Self> {
        match std::env::consts::ARCH {
            "x86_64" => Some(Self::X86_64),
            "aarch64" => Some(Self::Aarch64),
            _ => None,
        }
    }
}

/// Host operating system, which decides the native accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostOs {
    /// KVM.
    Linux,
    /// Hypervisor.framework.
    MacOs,
    /// Windows Hypervisor Platform.
    Windows,
}

impl HostOs {
    /// This build's OS, if supported.
    pub fn current() -> Option<Self> {
        match std::env::consts::OS {
            "linux" => Some(Self::Linux),
            "macos" => Some(Self::MacOs),
            "windows" => Some(Self::Windows),
            _ => None,
        }
    }
}

/// How host folders reach the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShareMode {
    /// 9p via `-virtfs`: built into QEMU on Linux and macOS, no helper
    /// process; the portable default.
    NineP,
    /// virtiofs via one `virtiofsd` per share on
    /// [`BerthHome::virtiofs_socket`]; faster, but Linux-only and needs guest
    /// memory in a shared memfd backend.
    Virtiofs,
}

/// Where the guest serial console goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SerialMode {
    /// Appended to [`BerthHome::console_log`] (for `berth vm logs`).
    File,
    /// A listening unix socket at [`BerthHome::serial_socket`] (for an
    /// interactive console).
    Socket,
}

/// TCP port forward from host localhost to the engine in the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineForward {
    /// Port on host 127.0.0.1; the caller picks a free one.
    pub host_port: u16,
    /// Port `berthd` listens on in the guest.
    pub guest_port: u16,
}

/// Command-line choices that are not part of the user's [`VmConfig`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuOptions {
    /// 9p or virtiofs.
    pub share_mode: ShareMode,
    /// Console to file or socket.
    pub serial: SerialMode,
    /// Engine port forward; `None` forwards nothing.
    pub engine: Option<EngineForward>,
    /// Pass `-daemonize` (QEMU forks and the parent exits once it is set up).
    pub daemonize: bool,
}

impl Default for QemuOptions {
    fn default() -> Self {
        Self {
            share_mode: ShareMode::NineP,
            serial: SerialMode::File,
            engine: Some(EngineForward {
                host_port: 2375,
                guest_port: 2375,
            }),
            daemonize: false,
        }
    }
}

/// Failure to build a QEMU command line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CommandLineError {
    /// [`Accel::Auto`] must be resolved with [`probe_accel`] first.
    #[error("build qemu command line: accelerator must be resolved, not auto")]
    UnresolvedAccel,
}

/// Mount tag of the `n`th share; the guest maps tags back to host paths.
pub fn share_tag(n: usize) -> String {
    format!("berth{n}")
}

/// Escapes a value for QEMU's `key=value,...` option syntax, where a literal
/// comma is written `,,`.
fn opt_escape(value: &str) -> String {
    value.replace(',', ",,")
}

fn opt_path(path: &Path) -> String {
    opt_escape(&path.to_string_lossy())
}

/// [`qemu_command_line_with`] with [`QemuOptions::default`].
pub fn qemu_command_line(
    config: &VmConfig,
    home: &BerthHome,
    accel: Accel,
    arch: HostArch,
) -> Result<Vec<String>, CommandLineError> {
    qemu_command_line_with(config, home, accel, arch, &QemuOptions::default())
}

/// The full argv (program first) that boots the Berth VM under QEMU.
///
/// `accel` is the resolved accelerator (not [`Accel::Auto`]). The config is
/// assumed validated. Disks are raw images attached as virtio-blk: the root
/// read-only (`/dev/vda`), the data disk read-write (`/dev/vdb`).
pub fn qemu_command_line_with(
    config: &VmConfig,
    home: &BerthHome,
    accel: Accel,
    arch: HostArch,
    opts: &QemuOptions,
) -> Result<Vec<String>, CommandLineError> {
    let accel_name = accel.qemu_name().ok_or(CommandLineError::UnresolvedAccel)?;
    let (program, machine, console) = match arch {
        HostArch::X86_64 => ("qemu-system-x86_64", "q35", "ttyS0"),
        HostArch::Aarch64 => ("qemu-system-aarch64", "virt", "ttyAMA0"),
    };
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));

    push(&[
        program,
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
    ]);
    if accel.is_hardware() {
        push(&[
            "-machine",
            &format!("{machine},accel={accel_name}"),
            "-cpu",
            "host",
        ]);
    } else {
        push(&["-machine", machine, "-accel", accel_name, "-cpu", "max"]);
    }
    push(&["-smp", &config.cpus.to_string()]);
    let mem = format!("{}M", config.memory_mib);
    push(&["-m", &mem]);
    if opts.share_mode == ShareMode::Virtiofs && !config.shares.is_empty() {
        // vhost-user devices map guest RAM into virtiofsd, so RAM must be a
        // shareable memfd, attached to the (single) NUMA node.
        push(&[
            "-object",
            &format!("memory-backend-memfd,id=mem,size={mem},share=on"),
            "-numa",
            "node,memdev=mem",
        ]);
    }

    let mut append = format!("console={console} root=/dev/vda ro");
    if !config.kernel_cmdline_extra.trim().is_empty() {
        append.push(' ');
        append.push_str(config.kernel_cmdline_extra.trim());
    }
    push(&[
        "-kernel",
        &home.kernel().to_string_lossy(),
        "-initrd",
        &home.initrd().to_string_lossy(),
        "-append",
        &append,
    ]);

    push(&[
        "-drive",
        &format!(
            "if=none,id=root,format=raw,readonly=on,file={}",
            opt_path(&home.rootfs())
        ),
        "-device",
        "virtio-blk-pci,drive=root",
        "-drive",
        &format!(
            "if=none,id=data,format=raw,file={}",
            opt_path(&home.data_disk())
        ),
        "-device",
        "virtio-blk-pci,drive=data",
    ]);

    let mut netdev = String::from("user,id=net0");
    if let Some(fwd) = opts.engine {
        netdev.push_str(&format!(
            ",hostfwd=tcp:127.0.0.1:{}-:{}",
            fwd.host_port, fwd.guest_port
        ));
    }
    push(&["-netdev", &netdev, "-device", "virtio-net-pci,netdev=net0"]);
    push(&["-device", "virtio-rng-pci"]);

    for (n, share) in config.shares.iter().enumerate() {
        let tag = share_tag(n);
        match opts.share_mode {
            ShareMode::NineP => push(&[
                "-virtfs",
                &format!(
                    "local,path={},mount_tag={tag},security_model=mapped-xattr",
                    opt_path(share)
                ),
            ]),
            ShareMode::Virtiofs => push(&[
                "-chardev",
                &format!(
                    "socket,id=fs{n},path={}",
                    opt_path(&home.virtiofs_socket(n))
                ),
                "-device",
                &format!("vhost-user-fs-pci,chardev=fs{n},tag={tag}"),
            ]),
        }
    }

    // `server=on,wait=off` rather than the older `server,nowait`: QEMU
    // deprecated the bare-flag boolean form.
    push(&[
        "-qmp",
        &format!("unix:{},server=on,wait=off", opt_path(&home.qmp_socket())),
    ]);
    match opts.serial {
        SerialMode::File => push(&[
            "-serial",
            &format!("file:{}", home.console_log().to_string_lossy()),
        ]),
        SerialMode::Socket => push(&[
            "-chardev",
            &format!(
                "socket,id=serial0,path={},server=on,wait=off",
                opt_path(&home.serial_socket())
            ),
            "-serial",
            "chardev:serial0",
        ]),
    }
    push(&["-pidfile", &home.pid_file().to_string_lossy()]);
    if opts.daemonize {
        push(&["-daemonize"]);
    }
    Ok(a)
}

/// The native accelerators to try for `requested` on `os`, best first.
/// [`Accel::Tcg`] is never listed: it is the fallback, not a candidate.
pub fn accel_candidates(requested: Accel, os: HostOs) -> Vec<Accel> {
    match requested {
        Accel::Auto => vec![match os {
            HostOs::Linux => Accel::Kvm,
            HostOs::MacOs => Accel::Hvf,
            HostOs::Windows => Accel::Whpx,
        }],
        Accel::Tcg => Vec::new(),
        hw => vec![hw],
    }
}

/// Picks the first of `candidates` under which `boot_check` proves a guest
/// boots within `timeout`, else [`Accel::Tcg`].
///
/// `boot_check(accel)` must boot a real guest (for example the Berth kernel
/// with a marker on the serial console, or QMP `query-status` reporting
/// `running` plus console output) and resolve `Ok` only once it has seen the
/// guest run; "the device opens" is not enough. A check that errors or
/// outlives `timeout` rejects that candidate; each rejection is logged.
/// The check owns cleanup of what it started, including on cancellation.
pub async fn probe_accel<F, Fut>(
    candidates: &[Accel],
    timeout: Duration,
    mut boot_check: F,
) -> Accel
where
    F: FnMut(Accel) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    for &accel in candidates {
        if !accel.is_hardware() {
            continue;
        }
        match tokio::time::timeout(timeout, boot_check(accel)).await {
            Ok(Ok(())) => {
                tracing::info!(vm = "berth", accel = ?accel, "accelerator boots a guest");
                return accel;
            }
            Ok(Err(reason)) => {
                tracing::warn!(vm = "berth", accel = ?accel, %reason, "accelerator rejected");
            }
            Err(_) => {
                tracing::warn!(
                    vm = "berth",
                    accel = ?accel,
                    timeout_ms = timeout.as_millis() as u64,
                    "accelerator rejected: guest did not boot in time"
                );
            }
        }
    }
    tracing::info!(vm = "berth", "falling back to tcg");
    Accel::Tcg
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn cfg() -> VmConfig {
        VmConfig {
            cpus: 2,
            memory_mib: 2048,
            disk_gib: 64,
            accel: Accel::Auto,
            shares: vec![PathBuf::from("/home/u"), PathBuf::from("/tmp")],
            kernel_cmdline_extra: String::new(),
        }
    }

    fn home() -> BerthHome {
        BerthHome::new("/b")
    }

    /// The value following `flag`, for every occurrence.
    fn values<'a>(argv: &'a [String], flag: &str) -> Vec<&'a str> {
        argv.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    fn has(argv: &[String], flag: &str) -> bool {
        argv.iter().any(|a| a == flag)
    }

    #[test]
    fn x86_kvm_uses_q35_with_accel_and_host_cpu() {
        let argv = qemu_command_line(&cfg(), &home(), Accel::Kvm, HostArch::X86_64).unwrap();
        assert_eq!(argv[0], "qemu-system-x86_64");
        assert_eq!(values(&argv, "-machine"), ["q35,accel=kvm"]);
        assert_eq!(values(&argv, "-cpu"), ["host"]);
        assert!(!has(&argv, "-accel"));
    }

    #[test]
    fn tcg_uses_accel_flag_and_max_cpu() {
        let argv = qemu_command_line(&cfg(), &home(), Accel::Tcg, HostArch::X86_64).unwrap();
        assert_eq!(values(&argv, "-machine"), ["q35"]);
        assert_eq!(values(&argv, "-accel"), ["tcg"]);
        assert_eq!(values(&argv, "-cpu"), ["max"]);
    }

    #[test]
    fn whpx_and_hvf_get_host_cpu() {
        for accel in [Accel::Whpx, Accel::Hvf] {
            let argv = qemu_command_line(&cfg(), &home(), accel, HostArch::X86_64).unwrap();
            assert_eq!(values(&argv, "-cpu"), ["host"], "{accel:?}");
        }
    }

    #[test]
    fn aarch64_uses_virt_machine_and_ama_console() {
        let argv = qemu_command_line(&cfg(), &home(), Accel::Hvf, HostArch::Aarch64).unwrap();
        assert_eq!(argv[0], "qemu-system-aarch64");
        assert_eq!(values(&argv, "-machine"), ["virt,accel=hvf"]);
        assert!(values(&argv, "-append")[0].starts_with("console=ttyAMA0 "));
    }

    #[test]
    fn auto_accel_is_refused() {
        let err = qemu_command_line(&cfg(), &home(), Accel::Auto, HostArch::X86_64).unwrap_err();
        assert_eq!(err, CommandLineError::UnresolvedAccel);
    }

    #[test]
    fn resources_kernel_and_append_follow_config() {
        let mut c = cfg();
        c.kernel_cmdline_extra = " quiet berth.debug=1 ".into();
        let argv = qemu_command_line(&c, &home(), Accel::Kvm, HostArch::X86_64).unwrap();
        assert_eq!(values(&argv, "-smp"), ["2"]);
        assert_eq!(values(&argv, "-m"), ["2048M"]);
        assert_eq!(values(&argv, "-kernel"), ["/b/vm-image/vmlinuz"]);
        assert_eq!(values(&argv, "-initrd"), ["/b/vm-image/initrd.img"]);
        assert_eq!(
            values(&argv, "-append"),
            ["console=ttyS0 root=/dev/vda ro quiet berth.debug=1"]
        );
    }

    #[test]
    fn root_is_read_only_and_data_disk_is_writable() {
        let argv = qemu_command_line(&cfg(), &home(), Accel::Kvm, HostArch::X86_64).unwrap();
        let drives = values(&argv, "-drive");
        assert_eq!(
            drives[0],
            "if=none,id=root,format=raw,readonly=on,file=/b/vm-image/rootfs.img"
        );
        assert_eq!(drives[1], "if=none,id=data,format=raw,file=/b/vm/disk.img");
        assert!(values(&argv, "-device").contains(&"virtio-blk-pci,drive=root"));
        assert!(values(&argv, "-device").contains(&"virtio-blk-pci,drive=data"));
    }

    #[test]
    fn user_network_forwards_engine_port_on_localhost() {
        let argv = qemu_command_line(&cfg(), &home(), Accel::Kvm, HostArch::X86_64).unwrap();
        assert_eq!(
            values(&argv, "-netdev"),
            ["user,id=net0,hostfwd=tcp:127.0.0.1:2375-:2375"]
        );
        assert!(values(&argv, "-device").contains(&"virtio-net-pci,netdev=net0"));
    }

    #[test]
    fn shares_default_to_9p_with_mapped_xattr() {
        let argv = qemu_command_line(&cfg(), &home(), Accel::Kvm, HostArch::X86_64).unwrap();
        assert_eq!(
            values(&argv, "-virtfs"),
            [
                "local,path=/home/u,mount_tag=berth0,security_model=mapped-xattr",
                "local,path=/tmp,mount_tag=berth1,security_model=mapped-xattr"
            ]
        );
        assert!(!has(&argv, "-numa"));
    }

    #[test]
    fn virtiofs_uses_vhost_user_and_memfd_memory() {
        let opts = QemuOptions {
            share_mode: ShareMode::Virtiofs,
            ..QemuOptions::default()
        };
        let argv =
            qemu_command_line_with(&cfg(), &home(), Accel::Kvm, HostArch::X86_64, &opts).unwrap();
        assert!(!has(&argv, "-virtfs"));
        assert_eq!(
            values(&argv, "-object"),
            ["memory-backend-memfd,id=mem,size=2048M,share=on"]
        );
        assert_eq!(values(&argv, "-numa"), ["node,memdev=mem"]);
        assert_eq!(
            values(&argv, "-chardev"),
            [
                "socket,id=fs0,path=/b/vm/virtiofs-0.sock",
                "socket,id=fs1,path=/b/vm/virtiofs-1.sock"
            ]
        );
        assert!(values(&argv, "-device").contains(&"vhost-user-fs-pci,chardev=fs1,tag=berth1"));
    }

    #[test]
    fn commas_in_paths_are_escaped() {
        let mut c = cfg();
        c.shares = vec![PathBuf::from("/home/a,b")];
        let argv = qemu_command_line(&c, &home(), Accel::Kvm, HostArch::X86_64).unwrap();
        assert_eq!(
            values(&argv, "-virtfs"),
            ["local,path=/home/a,,b,mount_tag=berth0,security_model=mapped-xattr"]
        );
    }

    #[test]
    fn control_console_and_headless_flags() {
        let argv = qemu_command_line(&cfg(), &home(), Accel::Kvm, HostArch::X86_64).unwrap();
        assert_eq!(
            values(&argv, "-qmp"),
            ["unix:/b/vm/qmp.sock,server=on,wait=off"]
        );
        assert_eq!(values(&argv, "-serial"), ["file:/b/vm/console.log"]);
        assert_eq!(values(&argv, "-display"), ["none"]);
        assert_eq!(values(&argv, "-pidfile"), ["/b/vm/pid"]);
        assert!(has(&argv, "-nodefaults"));
        assert!(has(&argv, "-no-user-config"));
        assert!(!has(&argv, "-daemonize"));
    }

    #[test]
    fn serial_socket_and_daemonize_when_asked() {
        let opts = QemuOptions {
            serial: SerialMode::Socket,
            daemonize: true,
            ..QemuOptions::default()
        };
        let argv =
            qemu_command_line_with(&cfg(), &home(), Accel::Kvm, HostArch::X86_64, &opts).unwrap();
        assert_eq!(values(&argv, "-serial"), ["chardev:serial0"]);
        assert!(values(&argv, "-chardev")
            .contains(&"socket,id=serial0,path=/b/vm/serial.sock,server=on,wait=off"));
        assert!(has(&argv, "-daemonize"));
    }

    #[test]
    fn candidates_follow_host_os() {
        assert_eq!(accel_candidates(Accel::Auto, HostOs::Linux), [Accel::Kvm]);
        assert_eq!(accel_candidates(Accel::Auto, HostOs::MacOs), [Accel::Hvf]);
        assert_eq!(
            accel_candidates(Accel::Auto, HostOs::Windows),
            [Accel::Whpx]
        );
        assert!(accel_candidates(Accel::Tcg, HostOs::Linux).is_empty());
        assert_eq!(accel_candidates(Accel::Kvm, HostOs::Linux), [Accel::Kvm]);
    }

    #[tokio::test(start_paused = true)]
    async fn kvm_that_opens_but_never_boots_falls_back_to_tcg() {
        // /dev/kvm opens, but the guest hangs: the check never completes.
        let chosen = probe_accel(&[Accel::Kvm], Duration::from_secs(30), |_| async {
            std::future::pending::<Result<(), String>>().await
        })
        .await;
        assert_eq!(chosen, Accel::Tcg);
    }

    #[tokio::test]
    async fn kvm_that_boots_is_chosen() {
        let chosen =
            probe_accel(&[Accel::Kvm], Duration::from_secs(30), |_| async { Ok(()) }).await;
        assert_eq!(chosen, Accel::Kvm);
    }

    #[tokio::test]
    async fn failing_check_falls_back_to_tcg() {
        let chosen = probe_accel(&[Accel::Whpx], Duration::from_secs(30), |_| async {
            Err("whpx: not enabled".to_string())
        })
        .await;
        assert_eq!(chosen, Accel::Tcg);
    }

    #[tokio::test]
    async fn no_candidates_means_tcg_without_checking() {
        let mut checked = false;
        let chosen = probe_accel(&[], Duration::from_secs(1), |_| {
            checked = true;
            async { Ok(()) }
        })
        .await;
        assert_eq!(chosen, Accel::Tcg);
        assert!(!checked);
    }
}

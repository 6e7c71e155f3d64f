//! The QEMU backend's pure parts: the command line and the accelerator probe.
//!
//! Owns how a [`VmConfig`] becomes `qemu-system-*` arguments, and the decision
//! of which accelerator to use. It does not spawn QEMU (see
//! [`crate::qemu_backend`]), talk QMP ([`crate::qmp`]) or start `virtiofsd`;
//! everything here is a pure function (or takes the effectful "boot check" as
//! an argument) so it is unit-tested without QEMU.
//!
//! Windows (WHPX) and macOS (HVF) get the same command line with their
//! accelerator; those variants are unit-tested only, not run. QEMU for
//! Windows has no 9p `local` fsdev, so shares there need another transport
//! (the WSL2 backend is the planned answer).
//!
//! Why the probe boots a guest: `/dev/kvm` opening is not proof that KVM
//! works; on some hosts (nested virtualisation, this CI machine) it opens and
//! then hangs every guest. So `Auto` only picks a hardware accelerator after a
//! caller-supplied check has seen a guest boot under it within a timeout.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use crate::config::{Accel, VmConfig};
use crate::image::GuestImage;
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
    /// 9p (`-fsdev local` + `virtio-9p-pci`): built into QEMU on Linux and
    /// macOS, no helper process; the portable default.
    NineP,
    /// virtiofs via one `virtiofsd` per share on
    /// [`BerthHome::virtiofs_socket`]; faster, but Linux-only and needs guest
    /// memory in a shared memfd backend.
    Virtiofs,
}

/// TCP port forward from host localhost to the engine in the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineForward {
    /// Port on host 127.0.0.1; the caller picks a free one.
    pub host_port: u16,
    /// Port the engine API answers on in the guest (berth-init's relay).
    pub guest_port: u16,
}

/// Port the guest's berth-init relays to the engine's unix socket.
pub const GUEST_ENGINE_PORT: u16 = 2375;

/// QEMU `-netdev` id of the guest's only NIC; `hostfwd_add` names it.
pub const NETDEV_ID: &str = "n0";

/// The memory balloon, used only for free page reporting (QEMU 5.1+,
/// guest kernel 5.8+ with `CONFIG_PAGE_REPORTING`).
pub const BALLOON_DEVICE: &str = "virtio-balloon-pci,free-page-reporting=on";

/// 9p mount tag of [`BerthHome::guest_dir`] in the guest.
pub const GUEST_CONFIG_TAG: &str = "berthcfg";

/// The guest kernel command line (besides the console), as agreed with
/// `berth-init`: it finds the read-only root and the data disk by these.
pub const GUEST_CMDLINE: &str = "quiet panic=1 berth.root=/dev/vda berth.data=/dev/vdb";

/// Command-line choices that are not part of the user's [`VmConfig`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuOptions {
    /// 9p or virtiofs.
    pub share_mode: ShareMode,
    /// Engine port forward; `None` forwards nothing.
    pub engine: Option<EngineForward>,
}

impl Default for QemuOptions {
    fn default() -> Self {
        Self {
            share_mode: ShareMode::NineP,
            engine: Some(EngineForward {
                host_port: GUEST_ENGINE_PORT,
                guest_port: GUEST_ENGINE_PORT,
            }),
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

/// Mount tag of the `n`th share; `guest.json` maps tags back to host paths.
pub fn share_tag(n: usize) -> String {
    format!("share{n}")
}

/// Escapes a value for QEMU's `key=value,...` option syntax, where a literal
/// comma is written `,,`.
fn opt_escape(value: &str) -> String {
    value.replace(',', ",,")
}

fn opt_path(path: &Path) -> String {
    opt_escape(&path.to_string_lossy())
}

/// The QEMU program for `arch`.
pub fn qemu_program(arch: HostArch) -> &'static str {
    match arch {
        HostArch::X86_64 => "qemu-system-x86_64",
        HostArch::Aarch64 => "qemu-system-aarch64",
    }
}

/// [`qemu_command_line_with`] with the image in [`BerthHome::image_dir`] and
/// [`QemuOptions::default`].
pub fn qemu_command_line(
    config: &VmConfig,
    home: &BerthHome,
    accel: Accel,
    arch: HostArch,
) -> Result<Vec<String>, CommandLineError> {
    let image = GuestImage::in_dir(&home.image_dir());
    qemu_command_line_with(config, home, &image, accel, arch, &QemuOptions::default())
}

/// `-machine`/`-accel`/`-cpu` for `accel` on `arch`: a hardware accelerator
/// runs the host CPU model, TCG emulates the richest model it has.
fn machine_args(accel_name: &str, hardware: bool, arch: HostArch) -> [String; 6] {
    let machine = match arch {
        HostArch::X86_64 => "q35",
        HostArch::Aarch64 => "virt",
    };
    let cpu = if hardware { "host" } else { "max" };
    [
        "-machine".into(),
        machine.into(),
        "-accel".into(),
        accel_name.into(),
        "-cpu".into(),
        cpu.into(),
    ]
}

/// The guest's serial console device name on `arch`.
fn serial_console(arch: HostArch) -> &'static str {
    match arch {
        HostArch::X86_64 => "ttyS0",
        HostArch::Aarch64 => "ttyAMA0",
    }
}

/// The full argv (program first) that boots the Berth VM under QEMU, in the
/// shape agreed with the guest (`berth-init`):
///
/// - `/dev/vda` the read-only root, `/dev/vdb` the data disk (raw, virtio);
/// - one user-mode NIC (`n0`, guest 10.0.2.15, host 10.0.2.2) forwarding
///   host `127.0.0.1:<engine.host_port>` to the guest engine;
/// - 9p tag `berthcfg` = [`BerthHome::guest_dir`], and `share<n>` = the
///   `n`th share (mounted at the same path in the guest);
/// - a root shell on a virtconsole bound to [`BerthHome::shell_socket`];
/// - the serial console appended to [`BerthHome::console_log`], QMP on
///   [`BerthHome::qmp_socket`].
///
/// `accel` is the resolved accelerator (not [`Accel::Auto`]). The config is
/// assumed validated. `-no-reboot` turns a guest reboot or panic into a QEMU
/// exit, which the supervisor reports as a crash instead of looping.
pub fn qemu_command_line_with(
    config: &VmConfig,
    home: &BerthHome,
    image: &GuestImage,
    accel: Accel,
    arch: HostArch,
    opts: &QemuOptions,
) -> Result<Vec<String>, CommandLineError> {
    let accel_name = accel.qemu_name().ok_or(CommandLineError::UnresolvedAccel)?;
    let console = serial_console(arch);
    let mut a: Vec<String> = vec![qemu_program(arch).to_string()];
    a.extend(machine_args(accel_name, accel.is_hardware(), arch));
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));

    let mem = config.memory_mib.to_string();
    push(&[
        "-smp",
        &config.cpus.to_string(),
        "-m",
        &mem,
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-no-reboot",
    ]);
    if opts.share_mode == ShareMode::Virtiofs && !config.shares.is_empty() {
        // vhost-user devices map guest RAM into virtiofsd, so RAM must be a
        // shareable memfd, attached to the (single) NUMA node.
        push(&[
            "-object",
            &format!("memory-backend-memfd,id=mem,size={mem}M,share=on"),
            "-numa",
            "node,memdev=mem",
        ]);
    }

    let mut append = format!("console={console} {GUEST_CMDLINE}");
    if !config.kernel_cmdline_extra.trim().is_empty() {
        append.push(' ');
        append.push_str(config.kernel_cmdline_extra.trim());
    }
    push(&[
        "-kernel",
        &image.kernel.to_string_lossy(),
        "-initrd",
        &image.initrd.to_string_lossy(),
        "-append",
        &append,
    ]);

    push(&[
        "-drive",
        &format!(
            "file={},if=virtio,format=raw,readonly=on",
            opt_path(&image.rootfs)
        ),
        "-drive",
        &format!("file={},if=virtio,format=raw", opt_path(&home.data_disk())),
    ]);

    let mut netdev = format!("user,id={NETDEV_ID}");
    if let Some(fwd) = opts.engine {
        netdev.push_str(&format!(
            ",hostfwd=tcp:127.0.0.1:{}-:{}",
            fwd.host_port, fwd.guest_port
        ));
    }
    push(&[
        "-netdev",
        &netdev,
        "-device",
        // `romfile=`: no iPXE option ROM; the guest never netboots, and
        // loading it costs a visible part of a TCG boot.
        &format!("virtio-net-pci,netdev={NETDEV_ID},romfile="),
        "-device",
        "virtio-rng-pci",
        // Free page reporting: the guest's `virtio_balloon` hands pages it
        // has freed back to QEMU, which discards them, so an idle guest's
        // RSS on the host shrinks instead of staying at its high-water mark.
        // The balloon is never inflated.
        "-device",
        BALLOON_DEVICE,
    ]);

    push(&[
        "-fsdev",
        &format!(
            "local,id=cfg,path={},security_model=none",
            opt_path(&home.guest_dir())
        ),
        "-device",
        &format!("virtio-9p-pci,fsdev=cfg,mount_tag={GUEST_CONFIG_TAG}"),
    ]);
    for (n, share) in config.shares.iter().enumerate() {
        let tag = share_tag(n);
        match opts.share_mode {
            ShareMode::NineP => push(&[
                "-fsdev",
                &format!("local,id=s{n},path={},security_model=none", opt_path(share)),
                "-device",
                &format!("virtio-9p-pci,fsdev=s{n},mount_tag={tag}"),
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
        "-device",
        "virtio-serial-pci",
        "-chardev",
        &format!(
            "socket,id=sh,path={},server=on,wait=off",
            opt_path(&home.shell_socket())
        ),
        "-device",
        "virtconsole,chardev=sh",
        "-serial",
        &format!("file:{}", home.console_log().to_string_lossy()),
        "-qmp",
        &format!("unix:{},server=on,wait=off", opt_path(&home.qmp_socket())),
    ]);
    Ok(a)
}

/// The argv of the accelerator probe: the guest kernel and initrd alone
/// (no disks, no network) under `accel`, console on stdout, so the caller
/// can watch for [`PROBE_MARKERS`]. The guest is expected to fail to find
/// its root; the probe only needs the kernel to reach userspace.
pub fn probe_command_line(
    image: &GuestImage,
    accel: Accel,
    arch: HostArch,
) -> Result<Vec<String>, CommandLineError> {
    let accel_name = accel.qemu_name().ok_or(CommandLineError::UnresolvedAccel)?;
    let console = serial_console(arch);
    let mut a: Vec<String> = vec![qemu_program(arch).to_string()];
    a.extend(machine_args(accel_name, accel.is_hardware(), arch));
    a.extend(
        [
            "-smp",
            "1",
            "-m",
            "512",
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-no-reboot",
            "-kernel",
            &image.kernel.to_string_lossy(),
            "-initrd",
            &image.initrd.to_string_lossy(),
            "-append",
            &format!("console={console} panic=-1 berth.probe=1"),
            "-serial",
            "stdio",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    Ok(a)
}

/// Console lines that prove the kernel reached userspace: the kernel's own
/// "Run /init" (printed without `quiet`) or berth-init's banner.
pub const PROBE_MARKERS: [&str; 2] = ["Run /init as init process", "berth-init"];

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

    fn image() -> GuestImage {
        GuestImage::in_dir(Path::new("/img"))
    }

    fn argv_for(accel: Accel, arch: HostArch) -> Vec<String> {
        qemu_command_line_with(
            &cfg(),
            &home(),
            &image(),
            accel,
            arch,
            &QemuOptions {
                engine: Some(EngineForward {
                    host_port: 41234,
                    guest_port: GUEST_ENGINE_PORT,
                }),
                ..QemuOptions::default()
            },
        )
        .unwrap()
    }

    #[test]
    fn x86_kvm_uses_q35_with_accel_and_host_cpu() {
        let argv = argv_for(Accel::Kvm, HostArch::X86_64);
        assert_eq!(argv[0], "qemu-system-x86_64");
        assert_eq!(values(&argv, "-machine"), ["q35"]);
        assert_eq!(values(&argv, "-accel"), ["kvm"]);
        assert_eq!(values(&argv, "-cpu"), ["host"]);
    }

    #[test]
    fn tcg_uses_accel_flag_and_max_cpu() {
        let argv = argv_for(Accel::Tcg, HostArch::X86_64);
        assert_eq!(values(&argv, "-machine"), ["q35"]);
        assert_eq!(values(&argv, "-accel"), ["tcg"]);
        assert_eq!(values(&argv, "-cpu"), ["max"]);
    }

    #[test]
    fn windows_whpx_and_macos_hvf_get_their_accel_and_host_cpu() {
        for accel in [Accel::Whpx, Accel::Hvf] {
            let argv = argv_for(accel, HostArch::X86_64);
            assert_eq!(values(&argv, "-accel"), [accel.qemu_name().unwrap()]);
            assert_eq!(values(&argv, "-cpu"), ["host"], "{accel:?}");
        }
    }

    #[test]
    fn aarch64_hvf_uses_virt_machine_and_ama_console() {
        let argv = argv_for(Accel::Hvf, HostArch::Aarch64);
        assert_eq!(argv[0], "qemu-system-aarch64");
        assert_eq!(values(&argv, "-machine"), ["virt"]);
        assert_eq!(values(&argv, "-accel"), ["hvf"]);
        assert!(values(&argv, "-append")[0].starts_with("console=ttyAMA0 "));
    }

    #[test]
    fn free_page_reporting_balloon_on_every_accel_and_arch() {
        for (accel, arch) in [
            (Accel::Tcg, HostArch::X86_64),
            (Accel::Kvm, HostArch::X86_64),
            (Accel::Whpx, HostArch::X86_64),
            (Accel::Hvf, HostArch::X86_64),
            (Accel::Hvf, HostArch::Aarch64),
            (Accel::Tcg, HostArch::Aarch64),
        ] {
            let argv = argv_for(accel, arch);
            let balloons: Vec<_> = values(&argv, "-device")
                .into_iter()
                .filter(|d| d.starts_with("virtio-balloon-pci"))
                .collect();
            assert_eq!(
                balloons,
                ["virtio-balloon-pci,free-page-reporting=on"],
                "{accel:?} {arch:?}"
            );
        }
        // The accelerator probe boots the kernel alone: no balloon.
        let probe = probe_command_line(&image(), Accel::Kvm, HostArch::X86_64).unwrap();
        assert!(!values(&probe, "-device")
            .iter()
            .any(|d| d.contains("balloon")));
    }

    #[test]
    fn auto_accel_is_refused() {
        let err = qemu_command_line(&cfg(), &home(), Accel::Auto, HostArch::X86_64).unwrap_err();
        assert_eq!(err, CommandLineError::UnresolvedAccel);
        let err = probe_command_line(&image(), Accel::Auto, HostArch::X86_64).unwrap_err();
        assert_eq!(err, CommandLineError::UnresolvedAccel);
    }

    #[test]
    fn default_image_is_under_berth_home() {
        let argv = qemu_command_line(&cfg(), &home(), Accel::Tcg, HostArch::X86_64).unwrap();
        assert_eq!(values(&argv, "-kernel"), ["/b/vm-image/vmlinuz"]);
        assert_eq!(values(&argv, "-initrd"), ["/b/vm-image/initrd.img"]);
    }

    #[test]
    fn resources_kernel_and_append_follow_config() {
        let mut c = cfg();
        c.kernel_cmdline_extra = " berth.debug=1 ".into();
        let argv = qemu_command_line_with(
            &c,
            &home(),
            &image(),
            Accel::Tcg,
            HostArch::X86_64,
            &QemuOptions::default(),
        )
        .unwrap();
        assert_eq!(values(&argv, "-smp"), ["2"]);
        assert_eq!(values(&argv, "-m"), ["2048"]);
        assert_eq!(values(&argv, "-kernel"), ["/img/vmlinuz"]);
        assert_eq!(values(&argv, "-initrd"), ["/img/initrd.img"]);
        assert_eq!(
            values(&argv, "-append"),
            ["console=ttyS0 quiet panic=1 berth.root=/dev/vda berth.data=/dev/vdb berth.debug=1"]
        );
    }

    #[test]
    fn root_is_read_only_vda_and_data_disk_is_writable_vdb() {
        let argv = argv_for(Accel::Tcg, HostArch::X86_64);
        assert_eq!(
            values(&argv, "-drive"),
            [
                "file=/img/rootfs.img,if=virtio,format=raw,readonly=on",
                "file=/b/vm/disk.img,if=virtio,format=raw"
            ]
        );
    }

    #[test]
    fn user_network_forwards_engine_port_on_localhost() {
        let argv = argv_for(Accel::Tcg, HostArch::X86_64);
        assert_eq!(
            values(&argv, "-netdev"),
            ["user,id=n0,hostfwd=tcp:127.0.0.1:41234-:2375"]
        );
        assert!(values(&argv, "-device").contains(&"virtio-net-pci,netdev=n0,romfile="));
    }

    #[test]
    fn guest_dir_and_shares_are_9p_with_agreed_tags() {
        let argv = argv_for(Accel::Tcg, HostArch::X86_64);
        assert_eq!(
            values(&argv, "-fsdev"),
            [
                "local,id=cfg,path=/b/vm/guest,security_model=none",
                "local,id=s0,path=/home/u,security_model=none",
                "local,id=s1,path=/tmp,security_model=none"
            ]
        );
        let devices = values(&argv, "-device");
        assert!(devices.contains(&"virtio-9p-pci,fsdev=cfg,mount_tag=berthcfg"));
        assert!(devices.contains(&"virtio-9p-pci,fsdev=s0,mount_tag=share0"));
        assert!(devices.contains(&"virtio-9p-pci,fsdev=s1,mount_tag=share1"));
        assert!(!has(&argv, "-numa"));
    }

    #[test]
    fn virtiofs_uses_vhost_user_and_memfd_memory() {
        let opts = QemuOptions {
            share_mode: ShareMode::Virtiofs,
            ..QemuOptions::default()
        };
        let argv = qemu_command_line_with(
            &cfg(),
            &home(),
            &image(),
            Accel::Kvm,
            HostArch::X86_64,
            &opts,
        )
        .unwrap();
        assert_eq!(
            values(&argv, "-object"),
            ["memory-backend-memfd,id=mem,size=2048M,share=on"]
        );
        assert_eq!(values(&argv, "-numa"), ["node,memdev=mem"]);
        assert!(values(&argv, "-chardev").contains(&"socket,id=fs0,path=/b/vm/virtiofs-0.sock"));
        assert!(values(&argv, "-device").contains(&"vhost-user-fs-pci,chardev=fs1,tag=share1"));
    }

    #[test]
    fn commas_in_paths_are_escaped() {
        let mut c = cfg();
        c.shares = vec![PathBuf::from("/home/a,b")];
        let argv = qemu_command_line(&c, &home(), Accel::Kvm, HostArch::X86_64).unwrap();
        assert!(
            values(&argv, "-fsdev").contains(&"local,id=s0,path=/home/a,,b,security_model=none")
        );
    }

    #[test]
    fn shell_console_qmp_and_headless_flags() {
        let argv = argv_for(Accel::Tcg, HostArch::X86_64);
        assert_eq!(
            values(&argv, "-qmp"),
            ["unix:/b/vm/qmp.sock,server=on,wait=off"]
        );
        assert_eq!(values(&argv, "-serial"), ["file:/b/vm/console.log"]);
        assert_eq!(
            values(&argv, "-chardev"),
            ["socket,id=sh,path=/b/vm/shell.sock,server=on,wait=off"]
        );
        let devices = values(&argv, "-device");
        assert!(devices.contains(&"virtio-serial-pci"));
        assert!(devices.contains(&"virtconsole,chardev=sh"));
        for flag in ["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"] {
            assert!(has(&argv, flag), "{flag}");
        }
    }

    #[test]
    fn probe_boots_kernel_alone_with_console_on_stdout() {
        let argv = probe_command_line(&image(), Accel::Kvm, HostArch::X86_64).unwrap();
        assert_eq!(values(&argv, "-accel"), ["kvm"]);
        assert_eq!(values(&argv, "-serial"), ["stdio"]);
        assert!(!has(&argv, "-drive"));
        assert!(!has(&argv, "-netdev"));
        assert!(!values(&argv, "-append")[0].contains("quiet"));
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

//! The OCI runtime spec (`config.json`) of a container: a Docker
//! container-create request plus its image's config turned into what crun
//! runs, with dockerd's defaults and security behaviour — the 14 default
//! capabilities, moby's seccomp profile, masked and read-only /proc and
//! /sys paths, the device cgroup allow-list, the default mounts, and the
//! process's command, environment and user merged the way dockerd merges
//! them.
//!
//! Owns the spec and the create-time validation of the request
//! ([`validate`]). Does not own the rootfs (the engine mounts it), the
//! files bound into the container (/etc/hosts and friends come in as
//! [`SpecInput::extra_mounts`]), networking, volumes, or running anything.
//!
//! Where the behaviour comes from: moby `daemon/oci_linux.go`,
//! `daemon/pkg/oci/defaults.go`, `daemon/pkg/oci/caps`,
//! `daemon/seccomp_linux.go` and github.com/moby/profiles/seccomp, read for
//! the facts; no code was copied. The seccomp profile itself is moby's
//! (see SECCOMP-NOTICE.md).
//!
//! What dockerd does and this does not: AppArmor (`docker-default`) and
//! SELinux labels are not applied; the time namespace that dockerd 29.5+
//! adds is not (Berth follows API 1.53); user-namespace remapping and
//! `DeviceRequests` (GPUs) are not supported; no rlimits are set unless
//! asked for, as with dockerd, so the container inherits the engine's.

mod caps;
mod error;
mod host;
mod inroot;
mod json;
mod mounts;

pub(crate) use mounts::check_destination as check_mount_destination;
mod process;
mod resources;
mod seccomp;
mod security;
mod user;
mod validate;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

pub use caps::{bitmap as capability_bitmap, DEFAULT_CAPS};
pub use error::SpecError;
pub use host::HostInfo;
pub use mounts::INIT_PATH;
pub use process::{clean_path, DEFAULT_PATH_ENV};
pub use user::{resolve_additional_groups, resolve_exec_user, resolve_user, ExecUser};
pub use validate::{parse_signal, validate, validate_with, MIN_MEMORY};

use json::{field_bool, field_str, int, obj_list, str_list, str_map};
use security::SeccompChoice;
use validate::container_mode;

/// The OCI runtime-spec version we write.
pub const OCI_VERSION: &str = "1.0.2";

/// dockerd's default `/dev/shm` size (64 MiB).
pub const DEFAULT_SHM_SIZE: i64 = 64 * 1024 * 1024;

/// Namespaces to join instead of creating, for `container:<id>` modes (the
/// engine resolves the other container to `/proc/<pid>/ns/<kind>`).
///
/// A path is used whenever the matching mode is not `host`, so the engine
/// may also hand in a network namespace it prepared itself. A
/// `container:<id>` mode without a path is an error.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamespacePaths {
    pub network: Option<PathBuf>,
    pub ipc: Option<PathBuf>,
    pub pid: Option<PathBuf>,
}

/// Everything [`build`] needs to know about one container.
pub struct SpecInput<'a> {
    /// The full container ID.
    pub id: &'a str,
    /// The container's root filesystem, already mounted.
    pub rootfs: &'a Path,
    /// The image config's `config` object (`Env`, `Cmd`, `Entrypoint`,
    /// `WorkingDir`, `User`...); `null` for none.
    pub image_config: &'a Value,
    /// The create body's container config (top level: `Cmd`, `Env`, `Tty`,
    /// ...). Merging it with the image config again is harmless.
    pub config: &'a Value,
    /// The create body's `HostConfig`.
    pub host_config: &'a Value,
    /// The container's hostname (dockerd: the request's, or the first 12
    /// characters of the ID).
    pub hostname: &'a str,
    /// The cgroup parent when `HostConfig.CgroupParent` is empty, e.g.
    /// "/berth"; the container's cgroup is `<parent>/<id>`.
    pub cgroup_parent: &'a str,
    /// Whether the host runs the unified cgroup hierarchy; decides the
    /// default cgroup namespace mode (private on v2, host on v1).
    pub cgroup_v2: bool,
    /// OCI mounts the engine adds (/etc/hosts, /etc/resolv.conf,
    /// /etc/hostname binds, volumes), used as given.
    pub extra_mounts: Vec<Value>,
    /// Namespaces to join.
    pub namespace_paths: NamespacePaths,
    /// `--init`: a static init binary, bound read-only at
    /// [`INIT_PATH`] and run as `INIT_PATH -- <args>` (only in a private
    /// PID namespace, as dockerd does).
    pub init_path: Option<&'a Path>,
}

/// Every capability a privileged container gets on this host: the ones
/// the engine holds, as dockerd does (for `exec --privileged`).
pub fn all_capabilities() -> Vec<String> {
    caps::all_caps(HostInfo::detect())
}

/// Builds the OCI `config.json` for `input` on this host.
///
/// Reads the rootfs's /etc/passwd and /etc/group (for the user) and, as
/// its only side effect, creates the working directory in the rootfs when
/// it is missing, as dockerd does.
pub fn build(input: &SpecInput) -> Result<Value, SpecError> {
    build_with(input, HostInfo::detect())
}

/// [`build`] against given host facts.
pub fn build_with(input: &SpecInput, host: &HostInfo) -> Result<Value, SpecError> {
    let empty = Value::Object(Map::new());
    let hc = or_empty(input.host_config, &empty);
    let config = or_empty(input.config, &empty);
    let image = or_empty(input.image_config, &empty);

    let sec = security::parse(&str_list(hc, "SecurityOpt")?)?;
    let privileged = field_bool(hc, "Privileged")?.unwrap_or(false);
    let caps = caps::tweak(&str_list(hc, "CapAdd")?, &str_list(hc, "CapDrop")?, privileged, host)?;

    let net_mode = field_str(hc, "NetworkMode")?.unwrap_or_default();
    let ipc_mode = field_str(hc, "IpcMode")?.unwrap_or_default();
    let pid_mode = field_str(hc, "PidMode")?.unwrap_or_default();
    let uts_host = field_str(hc, "UTSMode")? == Some("host");
    let pid_private = pid_mode != "host" && container_mode(pid_mode).is_none();
    let net_private = net_mode != "host" && container_mode(net_mode).is_none();

    // process
    let mut args = process::args(image, config)?;
    let init = input.init_path.filter(|_| pid_private);
    if init.is_some() {
        args.splice(0..0, [INIT_PATH.to_owned(), "--".to_owned()]);
    }
    let tty = field_bool(config, "Tty")?.unwrap_or(false);
    let exec_user = user::resolve_exec_user(input.rootfs, &process::user_spec(image, config)?)?;
    let mut gids = exec_user.additional_gids.clone();
    for g in user::resolve_additional_groups(input.rootfs, &str_list(hc, "GroupAdd")?)? {
        if !gids.contains(&g) {
            gids.push(g);
        }
    }
    let cwd = process::cwd(image, config)?;
    let mut proc = json!({
        "terminal": tty,
        "user": {"uid": exec_user.uid, "gid": exec_user.gid, "additionalGids": gids},
        "args": args,
        "env": process::env(image, config, input.hostname, tty)?,
        "cwd": &cwd,
        "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
        "oomScoreAdj": int(hc, "OomScoreAdj")?,
    });
    if tty {
        if let Some([h, w]) = hc.get("ConsoleSize").and_then(|v| serde_json::from_value::<[u64; 2]>(v.clone()).ok()) {
            if h > 0 || w > 0 {
                proc["consoleSize"] = json!({"height": h, "width": w});
            }
        }
    }
    let rlimits = rlimits(hc)?;
    if !rlimits.is_empty() {
        proc["rlimits"] = rlimits.into();
    }
    if sec.no_new_privileges {
        proc["noNewPrivileges"] = true.into();
    }

    // linux
    let mut linux = Map::new();
    let (devices, device_rules) = resources::devices(hc, privileged)?;
    let mut res = Map::new();
    res.insert("devices".into(), device_rules.into());
    for (key, value) in [
        ("memory", resources::memory(hc)?),
        ("cpu", resources::cpu(hc)?),
        ("pids", resources::pids(hc)?),
        ("blockIO", resources::block_io(hc)?),
    ] {
        if let Some(v) = value {
            res.insert(key.into(), v);
        }
    }
    linux.insert("resources".into(), res.into());
    let parent = field_str(hc, "CgroupParent")?.filter(|p| !p.is_empty()).unwrap_or(input.cgroup_parent);
    linux.insert("cgroupsPath".into(), cgroups_path(parent, input.id).into());
    linux.insert("namespaces".into(), namespaces(input, hc, net_mode, ipc_mode, pid_mode, uts_host)?.into());
    if !devices.is_empty() {
        linux.insert("devices".into(), devices.into());
    }
    let sysctl = sysctls(config, hc, host, net_private, uts_host)?;
    if !sysctl.is_empty() {
        linux.insert("sysctl".into(), json!(sysctl));
    }
    if let Some(s) = seccomp(&sec.seccomp, privileged, &caps, host)? {
        linux.insert("seccomp".into(), s);
    }
    let (mut masked, mut readonly) = if privileged { (Vec::new(), Vec::new()) } else { (masked_paths(host), readonly_paths()) };
    if hc.get("MaskedPaths").is_some_and(|v| !v.is_null()) {
        masked = str_list(hc, "MaskedPaths")?;
    }
    if hc.get("ReadonlyPaths").is_some_and(|v| !v.is_null()) {
        readonly = str_list(hc, "ReadonlyPaths")?;
    }
    if !masked.is_empty() {
        linux.insert("maskedPaths".into(), masked.into());
    }
    if !readonly.is_empty() {
        linux.insert("readonlyPaths".into(), readonly.into());
    }

    // mounts
    let shm_size = match int(hc, "ShmSize")? {
        0 => DEFAULT_SHM_SIZE,
        s => s,
    };
    let tmpfs: BTreeMap<String, String> = str_map(hc, "Tmpfs")?;
    let readonly_rootfs = field_bool(hc, "ReadonlyRootfs")?.unwrap_or(false);
    let mounts = mounts::build(&mounts::MountOptions {
        shm_size,
        ipc_none: ipc_mode == "none",
        privileged,
        readonly_rootfs,
        writable_cgroups: sec.writable_cgroups.unwrap_or(privileged),
        init_path: init,
        extra: &input.extra_mounts,
        tmpfs: &tmpfs,
    })?;

    let rootfs = input.rootfs.to_str().ok_or_else(|| SpecError::invalid("the rootfs path is not UTF-8"))?;
    // Last, the one side effect: like dockerd, make sure the working
    // directory exists (crun refuses to start otherwise), created inside
    // the rootfs, never through a symlink out of it.
    if cwd != "/" {
        inroot::mkdir_all_in_root(input.rootfs, &cwd).map_err(|e| SpecError::WorkingDir { path: cwd.clone(), source: e })?;
    }
    let mut spec = json!({
        "ociVersion": OCI_VERSION,
        "process": proc,
        "root": {"path": rootfs, "readonly": readonly_rootfs},
        "mounts": mounts,
        "linux": linux,
    });
    if !uts_host {
        spec["hostname"] = input.hostname.into();
    }
    Ok(spec)
}

fn or_empty<'v>(v: &'v Value, empty: &'v Value) -> &'v Value {
    if v.is_null() {
        empty
    } else {
        v
    }
}

/// `filepath.Join(parent, id)`.
fn cgroups_path(parent: &str, id: &str) -> String {
    let joined = format!("{parent}/{id}");
    if parent.starts_with('/') {
        process::clean_path(&joined)
    } else {
        // A relative parent stays relative (the runtime puts it under its
        // own cgroup); only tidy the slashes.
        joined.split('/').filter(|c| !c.is_empty() && *c != ".").collect::<Vec<_>>().join("/")
    }
}

/// `HostConfig.Ulimits` as OCI rlimits; -1 is "unlimited".
fn rlimits(hc: &Value) -> Result<Vec<Value>, SpecError> {
    let mut out = Vec::new();
    for u in obj_list(hc, "Ulimits")? {
        let name = field_str(u, "Name")?.unwrap_or_default();
        out.push(json!({
            "type": format!("RLIMIT_{}", name.to_uppercase()),
            "soft": int(u, "Soft")? as u64,
            "hard": int(u, "Hard")? as u64,
        }));
    }
    Ok(out)
}

fn namespaces(
    input: &SpecInput,
    hc: &Value,
    net_mode: &str,
    ipc_mode: &str,
    pid_mode: &str,
    uts_host: bool,
) -> Result<Vec<Value>, SpecError> {
    // For one kind: `None` shares the host's, else create or join.
    let ns = |kind: &'static str, mode: &str, path: &Option<PathBuf>| -> Result<Option<Value>, SpecError> {
        if mode == "host" {
            return Ok(None);
        }
        match (container_mode(mode), path) {
            (_, Some(p)) => {
                let p = p.to_str().ok_or_else(|| SpecError::invalid("namespace path is not UTF-8"))?;
                Ok(Some(json!({"type": kind, "path": p})))
            }
            (Some(container), None) => Err(SpecError::NamespacePath { ns: kind, container: container.to_owned() }),
            (None, None) => Ok(Some(json!({"type": kind}))),
        }
    };
    let paths = &input.namespace_paths;
    let mut out = vec![json!({"type": "mount"})];
    out.extend(ns("network", net_mode, &paths.network)?);
    if !uts_host {
        out.push(json!({"type": "uts"}));
    }
    out.extend(ns("pid", pid_mode, &paths.pid)?);
    out.extend(ns("ipc", ipc_mode, &paths.ipc)?);
    // dockerd's default: private on cgroup v2, the host's on v1.
    let cgroupns_private = match field_str(hc, "CgroupnsMode")?.unwrap_or_default() {
        "private" => true,
        "host" => false,
        _ => input.cgroup_v2,
    };
    if cgroupns_private {
        out.push(json!({"type": "cgroup"}));
    }
    Ok(out)
}

fn sysctls(config: &Value, hc: &Value, host: &HostInfo, net_private: bool, uts_host: bool) -> Result<BTreeMap<String, String>, SpecError> {
    let mut out = BTreeMap::new();
    if net_private {
        // dockerd's defaults for a container with its own network
        // namespace: ping without CAP_NET_RAW, low ports without
        // CAP_NET_BIND_SERVICE.
        if host.has_ping_group_range {
            out.insert("net.ipv4.ping_group_range".into(), "0 2147483647".into());
        }
        if host.has_unprivileged_port_start {
            out.insert("net.ipv4.ip_unprivileged_port_start".into(), "0".into());
        }
    }
    if let Some(d) = field_str(config, "Domainname")?.filter(|d| !d.is_empty() && !uts_host) {
        out.insert("kernel.domainname".into(), d.into());
    }
    out.extend(str_map(hc, "Sysctls")?);
    Ok(out)
}

fn seccomp(choice: &SeccompChoice, privileged: bool, caps: &[String], host: &HostInfo) -> Result<Option<Value>, SpecError> {
    let profile = match choice {
        SeccompChoice::Unconfined => return Ok(None),
        SeccompChoice::Default if privileged => return Ok(None),
        SeccompChoice::Custom(_) if !host.seccomp => {
            return Err(SpecError::Seccomp("seccomp is not enabled in your kernel, cannot run a custom seccomp profile".into()))
        }
        _ if !host.seccomp => return Ok(None),
        SeccompChoice::Custom(body) => &seccomp::Profile::parse(body)?,
        SeccompChoice::Default | SeccompChoice::Builtin => seccomp::Profile::default_profile(),
    };
    profile.to_oci(caps, host)
}

fn masked_paths(host: &HostInfo) -> Vec<String> {
    let mut paths: Vec<String> = [
        "/proc/acpi",
        "/proc/asound",
        "/proc/interrupts",
        "/proc/kcore",
        "/proc/keys",
        "/proc/latency_stats",
        "/proc/sched_debug",
        "/proc/scsi",
        "/proc/timer_list",
        "/proc/timer_stats",
        "/sys/devices/virtual/powercap",
        "/sys/firmware",
    ]
    .map(String::from)
    .to_vec();
    paths.extend(host.thermal_throttle_paths.iter().cloned());
    paths
}

fn readonly_paths() -> Vec<String> {
    ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"].map(String::from).to_vec()
}

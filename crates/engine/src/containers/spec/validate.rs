//! Create-time checks of a container-create request, with dockerd's 400
//! messages (moby `daemon/container.go` `verifyContainerSettings`,
//! `daemon_unix.go` `verifyPlatformContainerResources` and
//! `verifyPlatformContainerSettings`, `runconfig` `validateNetMode` and
//! `validateResources`, the restart-policy and mount validators).
//!
//! A few checks dockerd leaves to the CLI or to start time are made here
//! too, so a bad request fails at create: ulimits, `--device` mappings,
//! device cgroup rules, security options and custom seccomp profiles.

use std::path::Path;

use serde_json::Value;

use super::caps;
use super::error::SpecError;
use super::host::{parse_cpu_list, HostInfo};
use super::json::{field_bool, field_i64, field_str, int, obj_list, str_list, str_map};
use super::mounts::check_destination;
use super::seccomp::Profile;
use super::security::{self, SeccompChoice};

/// dockerd's smallest memory limit (6 MiB).
pub const MIN_MEMORY: i64 = 6 * 1024 * 1024;
/// Longest hostname Linux accepts.
const MAX_HOSTNAME_LEN: usize = 64;
/// Healthcheck durations must be 0 or at least this (1ms), in ns.
const MIN_DURATION_NS: i64 = 1_000_000;

const ULIMIT_NAMES: [&str; 15] = [
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
];

const SIGNAL_NAMES: [&str; 34] = [
    "ABRT", "ALRM", "BUS", "CHLD", "CLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "IOT", "KILL", "PIPE", "POLL", "PROF", "PWR", "QUIT",
    "SEGV", "STKFLT", "STOP", "SYS", "TERM", "TRAP", "TSTP", "TTIN", "TTOU", "URG", "USR1", "USR2", "VTALRM", "WINCH", "XCPU", "XFSZ",
];

fn err(msg: impl Into<String>) -> SpecError {
    SpecError::invalid(msg)
}

/// Checks a create request: `config` is the body's top-level container
/// config, `host_config` its `HostConfig` (either may be `null`).
pub fn validate(config: &Value, host_config: &Value) -> Result<(), SpecError> {
    validate_with(config, host_config, HostInfo::detect())
}

/// [`validate`] against given host facts.
pub fn validate_with(config: &Value, host_config: &Value, host: &HostInfo) -> Result<(), SpecError> {
    let empty = Value::Object(Default::default());
    let config = if config.is_null() { &empty } else { config };
    let hc = if host_config.is_null() { &empty } else { host_config };
    validate_config(config)?;
    validate_net_mode(config, hc)?;
    validate_host_config(hc, host)?;
    validate_resources(hc, host)?;
    validate_platform(config, hc)?;
    validate_extras(hc, host)
}

fn validate_config(c: &Value) -> Result<(), SpecError> {
    if let Some(wd) = field_str(c, "WorkingDir")?.filter(|s| !s.is_empty()) {
        if !wd.starts_with('/') {
            return Err(err(format!("the working directory '{wd}' is invalid, it needs to be an absolute path")));
        }
    }
    if let Some(sig) = field_str(c, "StopSignal")?.filter(|s| !s.is_empty()) {
        parse_signal(sig)?;
    }
    for e in str_list(c, "Env")? {
        if e.split_once('=').map_or(e.as_str(), |(k, _)| k).is_empty() {
            return Err(err(format!("invalid environment variable: {e}")));
        }
    }
    if let Some(hc) = c.get("Healthcheck").filter(|v| v.is_object()) {
        for (key, label) in
            [("Interval", "Interval"), ("Timeout", "Timeout"), ("StartPeriod", "StartPeriod"), ("StartInterval", "StartInterval")]
        {
            let d = int(hc, key)?;
            if d != 0 && d < MIN_DURATION_NS {
                return Err(err(format!("{label} in Healthcheck cannot be less than 1ms")));
            }
        }
        if int(hc, "Retries")? < 0 {
            return Err(err("Retries in Healthcheck cannot be negative"));
        }
    }
    Ok(())
}

/// moby/sys/signal `ParseSignal`.
pub fn parse_signal(raw: &str) -> Result<i32, SpecError> {
    let invalid = || err(format!("invalid signal: {raw}"));
    if let Ok(n) = raw.parse::<i64>() {
        return if n == 0 { Err(invalid()) } else { i32::try_from(n).map_err(|_| invalid()) };
    }
    let upper = raw.to_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    let rtmin = libc::SIGRTMIN();
    let rtmax = libc::SIGRTMAX();
    let offset = |s: &str, max: i32| s.parse::<i32>().ok().filter(|n| (1..=max).contains(n));
    let sig = if let Some(i) = SIGNAL_NAMES.iter().position(|n| *n == name) {
        signal_number(SIGNAL_NAMES[i])
    } else if name == "RTMIN" {
        Some(rtmin)
    } else if name == "RTMAX" {
        Some(rtmax)
    } else if let Some(n) = name.strip_prefix("RTMIN+").and_then(|s| offset(s, 15)) {
        Some(rtmin + n)
    } else {
        name.strip_prefix("RTMAX-").and_then(|s| offset(s, 14)).map(|n| rtmax - n)
    };
    sig.ok_or_else(invalid)
}

fn signal_number(name: &str) -> Option<i32> {
    Some(match name {
        "ABRT" | "IOT" => libc::SIGABRT,
        "ALRM" => libc::SIGALRM,
        "BUS" => libc::SIGBUS,
        "CHLD" | "CLD" => libc::SIGCHLD,
        "CONT" => libc::SIGCONT,
        "FPE" => libc::SIGFPE,
        "HUP" => libc::SIGHUP,
        "ILL" => libc::SIGILL,
        "INT" => libc::SIGINT,
        "IO" | "POLL" => libc::SIGIO,
        "KILL" => libc::SIGKILL,
        "PIPE" => libc::SIGPIPE,
        "PROF" => libc::SIGPROF,
        "PWR" => libc::SIGPWR,
        "QUIT" => libc::SIGQUIT,
        "SEGV" => libc::SIGSEGV,
        "STKFLT" => libc::SIGSTKFLT,
        "STOP" => libc::SIGSTOP,
        "SYS" => libc::SIGSYS,
        "TERM" => libc::SIGTERM,
        "TRAP" => libc::SIGTRAP,
        "TSTP" => libc::SIGTSTP,
        "TTIN" => libc::SIGTTIN,
        "TTOU" => libc::SIGTTOU,
        "URG" => libc::SIGURG,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "VTALRM" => libc::SIGVTALRM,
        "WINCH" => libc::SIGWINCH,
        "XCPU" => libc::SIGXCPU,
        "XFSZ" => libc::SIGXFSZ,
        _ => return None,
    })
}

/// `container:<id>` → `Some(id)` (possibly empty).
pub(crate) fn container_mode(mode: &str) -> Option<&str> {
    mode.strip_prefix("container:")
}

fn validate_net_mode(c: &Value, hc: &Value) -> Result<(), SpecError> {
    let net = field_str(hc, "NetworkMode")?.unwrap_or_default();
    let hostname = field_str(c, "Hostname")?.unwrap_or_default();
    if net == "container" || container_mode(net).is_some() {
        if container_mode(net).unwrap_or_default().is_empty() {
            return Err(err("invalid network mode: invalid container format container:<name|id>"));
        }
        if !hostname.is_empty() {
            return Err(err("conflicting options: hostname and the network mode"));
        }
        if !str_list(hc, "Links")?.is_empty() {
            return Err(err(
                "conflicting options: container type network can't be used with links. This would result in undefined behavior",
            ));
        }
        if !str_list(hc, "Dns")?.is_empty() {
            return Err(err("conflicting options: dns and the network mode"));
        }
        if !str_list(hc, "ExtraHosts")?.is_empty() {
            return Err(err("conflicting options: custom host-to-IP mapping and the network mode"));
        }
        let published = hc.get("PortBindings").and_then(Value::as_object).is_some_and(|m| !m.is_empty());
        if published || field_bool(hc, "PublishAllPorts")?.unwrap_or(false) {
            return Err(err("conflicting options: port publishing and the container type network mode"));
        }
        if c.get("ExposedPorts").and_then(Value::as_object).is_some_and(|m| !m.is_empty()) {
            return Err(err("conflicting options: port exposing and the container type network mode"));
        }
    }
    if field_str(hc, "UTSMode")? == Some("host") && !hostname.is_empty() {
        return Err(err("conflicting options: hostname and the UTS mode"));
    }
    if net == "host" && !str_list(hc, "Links")?.is_empty() {
        return Err(err("conflicting options: host type networking can't be used with links. This would result in undefined behavior"));
    }
    Ok(())
}

fn validate_host_config(hc: &Value, host: &HostInfo) -> Result<(), SpecError> {
    let restart = hc.get("RestartPolicy").filter(|v| v.is_object());
    let policy = restart.map(|r| field_str(r, "Name")).transpose()?.flatten().unwrap_or_default();
    let retries = restart.map(|r| int(r, "MaximumRetryCount")).transpose()?.unwrap_or(0);
    if field_bool(hc, "AutoRemove")?.unwrap_or(false) && !matches!(policy, "" | "no") {
        return Err(err("can't create 'AutoRemove' container with restart policy"));
    }
    for m in obj_list(hc, "Mounts")? {
        validate_mount(m)?;
    }
    match policy {
        "always" | "unless-stopped" | "no" => {
            if retries != 0 {
                let mut msg = "invalid restart policy: maximum retry count can only be used with 'on-failure'".to_owned();
                if retries < 0 {
                    msg += " and cannot be negative";
                }
                return Err(err(msg));
            }
        }
        "on-failure" => {
            if retries < 0 {
                return Err(err("invalid restart policy: maximum retry count cannot be negative"));
            }
        }
        "" => {}
        other => {
            return Err(err(format!(
                "invalid restart policy: unknown policy '{other}'; use one of 'no', 'always', 'on-failure', or 'unless-stopped'"
            )))
        }
    }
    caps::normalize(&str_list(hc, "CapAdd")?, host).map_err(|e| err(format!("invalid CapAdd: {e}")))?;
    caps::normalize(&str_list(hc, "CapDrop")?, host).map_err(|e| err(format!("invalid CapDrop: {e}")))?;
    if let Some(iso) = field_str(hc, "Isolation")? {
        if !matches!(iso.to_lowercase().as_str(), "" | "default") {
            return Err(err(format!("invalid isolation '{iso}' on linux")));
        }
    }
    if str_map(hc, "Annotations")?.contains_key("") {
        return Err(err("invalid Annotations: the empty string is not permitted as an annotation key"));
    }
    Ok(())
}

/// moby `linuxParser.ValidateMountConfig`.
fn validate_mount(m: &Value) -> Result<(), SpecError> {
    let typ = field_str(m, "Type")?.unwrap_or_default();
    let fail = |e: String| err(format!("invalid mount config for type {typ:?}: {e}"));
    for (opts, owner) in [
        ("BindOptions", "bind"),
        ("VolumeOptions", "volume"),
        ("ImageOptions", "image"),
        ("TmpfsOptions", "tmpfs"),
        ("ClusterOptions", "cluster"),
    ] {
        if typ != owner && m.get(opts).is_some_and(|v| !v.is_null()) {
            return Err(fail(format!("field {opts} must not be specified")));
        }
    }
    let target = field_str(m, "Target")?.unwrap_or_default();
    if target.is_empty() {
        return Err(fail("field Target must not be empty".into()));
    }
    check_destination(target).map_err(|e| fail(e.to_string()))?;
    let source = field_str(m, "Source")?.unwrap_or_default();
    match typ {
        "bind" => {
            if source.is_empty() {
                return Err(fail("field Source must not be empty".into()));
            }
            let bind = m.get("BindOptions").filter(|v| v.is_object());
            if let Some(p) = bind.map(|b| field_str(b, "Propagation")).transpose()?.flatten().filter(|p| !p.is_empty()) {
                if !matches!(p, "private" | "rprivate" | "slave" | "rslave" | "shared" | "rshared") {
                    return Err(fail(format!("invalid propagation mode: {p}")));
                }
            }
            if !source.replace('\\', "/").starts_with('/') {
                return Err(fail(format!("invalid mount path: '{source}' mount path must be absolute")));
            }
            let create = bind.map(|b| field_bool(b, "CreateMountpoint")).transpose()?.flatten().unwrap_or(false);
            if !create && std::fs::symlink_metadata(source).is_err() && std::fs::metadata(source).is_err() {
                return Err(fail(format!("bind source path does not exist: {source}")));
            }
        }
        "volume" => {
            let sub = m
                .get("VolumeOptions")
                .filter(|v| v.is_object())
                .map(|v| field_str(v, "Subpath"))
                .transpose()?
                .flatten()
                .unwrap_or_default();
            if !sub.is_empty() {
                if source.is_empty() {
                    return Err(fail("must not set Subpath when using anonymous volumes".into()));
                }
                if !is_local_path(sub) {
                    return Err(fail("subpath must be a relative path within the volume".into()));
                }
            }
        }
        "tmpfs" => {
            if !source.is_empty() {
                return Err(fail("field Source must not be specified".into()));
            }
        }
        "image" => {
            if source.is_empty() {
                return Err(fail("field Source must not be empty".into()));
            }
            let sub =
                m.get("ImageOptions").filter(|v| v.is_object()).map(|v| field_str(v, "Subpath")).transpose()?.flatten().unwrap_or_default();
            if !sub.is_empty() && !is_local_path(sub) {
                return Err(fail("subpath must be a relative path within the volume".into()));
            }
        }
        _ => return Err(fail("mount type unknown".into())),
    }
    Ok(())
}

/// Go's `filepath.IsLocal`: relative, not empty, never climbing out.
fn is_local_path(p: &str) -> bool {
    if p.is_empty() || p.starts_with('/') {
        return false;
    }
    let mut depth = 0i32;
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            _ => depth += 1,
        }
    }
    true
}

fn validate_resources(hc: &Value, host: &HostInfo) -> Result<(), SpecError> {
    let memory = int(hc, "Memory")?;
    let swap = int(hc, "MemorySwap")?;
    let reservation = int(hc, "MemoryReservation")?;
    if memory != 0 && memory < MIN_MEMORY {
        return Err(err("Minimum memory limit allowed is 6MB"));
    }
    if memory > 0 && swap > 0 && swap < memory {
        return Err(err("Minimum memoryswap limit should be larger than memory limit, see usage"));
    }
    if memory == 0 && swap > 0 {
        return Err(err("You should always set the Memory limit when using Memoryswap limit, see usage"));
    }
    if let Some(sw) = field_i64(hc, "MemorySwappiness")?.filter(|s| *s != -1) {
        if !(0..=100).contains(&sw) {
            return Err(err(format!("Invalid value: {sw}, valid memory swappiness range is 0-100")));
        }
    }
    if reservation > 0 && reservation < MIN_MEMORY {
        return Err(err("Minimum memory reservation allowed is 6MB"));
    }
    if memory > 0 && reservation > 0 && memory < reservation {
        return Err(err("Minimum memory limit can not be less than memory reservation limit, see usage"));
    }
    let nano = int(hc, "NanoCpus")?;
    let period = int(hc, "CpuPeriod")?;
    let quota = int(hc, "CpuQuota")?;
    if nano > 0 && period > 0 {
        return Err(err("Conflicting options: Nano CPUs and CPU Period cannot both be set"));
    }
    if nano > 0 && quota > 0 {
        return Err(err("Conflicting options: Nano CPUs and CPU Quota cannot both be set"));
    }
    if nano != 0 {
        let nc = host.num_cpus as i64;
        if nano < 0 || nano > nc * 1_000_000_000 {
            return Err(err(format!("range of CPUs is from 0.01 to {nc}.00, as there are only {nc} CPUs available")));
        }
    }
    if period != 0 && !(1000..=1_000_000).contains(&period) {
        return Err(err("CPU cfs period can not be less than 1ms (i.e. 1000) or larger than 1s (i.e. 1000000)"));
    }
    if quota > 0 && quota < 1000 {
        return Err(err("CPU cfs quota can not be less than 1ms (i.e. 1000)"));
    }
    let shares = int(hc, "CpuShares")?;
    if shares < 0 {
        return Err(err(format!("invalid CPU shares ({shares}): value must be a positive integer")));
    }
    let (rt_period, rt_runtime) = (int(hc, "CpuRealtimePeriod")?, int(hc, "CpuRealtimeRuntime")?);
    if rt_period != 0 && rt_runtime != 0 && rt_runtime > rt_period {
        return Err(err("cpu real-time runtime cannot be higher than cpu real-time period"));
    }
    if let Some(cpus) = field_str(hc, "CpusetCpus")?.filter(|s| !s.is_empty()) {
        let requested = parse_cpu_list(cpus).ok_or_else(|| err(format!("Invalid value {cpus} for cpuset cpus: invalid format: {cpus}")))?;
        let online = parse_cpu_list(&host.online_cpus).unwrap_or_default();
        if !online.is_empty() && requested.iter().any(|c| !online.contains(c)) {
            return Err(err(format!("Requested CPUs are not available - requested {cpus}, available: {}", host.online_cpus)));
        }
    }
    if let Some(mems) = field_str(hc, "CpusetMems")?.filter(|s| !s.is_empty()) {
        parse_cpu_list(mems).ok_or_else(|| err(format!("Invalid value {mems} for cpuset mems: invalid format: {mems}")))?;
    }
    let weight = int(hc, "BlkioWeight")?;
    if weight > 0 && !(10..=1000).contains(&weight) {
        return Err(err("Range of blkio weight is from 10 to 1000"));
    }
    if int(hc, "IOMaximumBandwidth")? != 0 || int(hc, "IOMaximumIOps")? != 0 {
        return Err(err("Invalid QoS settings: linux does not support Maximum IO Bandwidth or Maximum IO IOps"));
    }
    Ok(())
}

fn validate_platform(c: &Value, hc: &Value) -> Result<(), SpecError> {
    let hostname = field_str(c, "Hostname")?.unwrap_or_default();
    if hostname.len() > MAX_HOSTNAME_LEN {
        return Err(err(format!("hostname {hostname:?} is too long (maximum {MAX_HOSTNAME_LEN} bytes)")));
    }
    let ipc = field_str(hc, "IpcMode")?.unwrap_or_default();
    if !(matches!(ipc, "" | "none" | "private" | "host" | "shareable") || container_mode(ipc).is_some()) {
        return Err(err(format!("invalid IPC mode: {ipc}")));
    }
    let pid = field_str(hc, "PidMode")?.unwrap_or_default();
    if !(matches!(pid, "" | "host") || container_mode(pid).is_some_and(|id| !id.is_empty())) {
        return Err(err(format!("invalid PID mode: {pid}")));
    }
    if int(hc, "ShmSize")? < 0 {
        return Err(err("SHM size can not be less than 0"));
    }
    let uts = field_str(hc, "UTSMode")?.unwrap_or_default();
    if !matches!(uts, "" | "host") {
        return Err(err(format!("invalid UTS mode: {uts}")));
    }
    let oom = int(hc, "OomScoreAdj")?;
    if !(-1000..=1000).contains(&oom) {
        return Err(err(format!("Invalid value {oom}, range for oom score adj is [-1000, 1000]")));
    }
    for dest in str_map(hc, "Tmpfs")?.keys() {
        check_destination(dest)?;
    }
    let cgroupns = field_str(hc, "CgroupnsMode")?.unwrap_or_default();
    if !matches!(cgroupns, "" | "private" | "host") {
        return Err(err(format!("invalid cgroup namespace mode: {cgroupns}")));
    }
    Ok(())
}

fn validate_extras(hc: &Value, host: &HostInfo) -> Result<(), SpecError> {
    for u in obj_list(hc, "Ulimits")? {
        let name = field_str(u, "Name")?.unwrap_or_default();
        if !ULIMIT_NAMES.contains(&name) {
            return Err(err(format!("invalid ulimit type: {name}")));
        }
        let (soft, hard) = (int(u, "Soft")?, int(u, "Hard")?);
        if hard != -1 {
            if soft == -1 {
                return Err(err(format!("ulimit soft limit must be less than or equal to hard limit: soft: -1 (unlimited), hard: {hard}")));
            }
            if soft > hard {
                return Err(err(format!("ulimit soft limit must be less than or equal to hard limit: {soft} > {hard}")));
            }
        }
    }
    for d in obj_list(hc, "Devices")? {
        let on_host = field_str(d, "PathOnHost")?.unwrap_or_default();
        let in_container = field_str(d, "PathInContainer")?.unwrap_or_default();
        if !on_host.starts_with('/') {
            return Err(err(format!("{on_host} is not an absolute path")));
        }
        if !in_container.is_empty() && !in_container.starts_with('/') {
            return Err(err(format!("{in_container} is not an absolute path")));
        }
        let mode = field_str(d, "CgroupPermissions")?.unwrap_or_default();
        if mode.len() > 3 || !mode.chars().all(|c| "rwm".contains(c)) {
            return Err(err(format!("invalid device mode: {mode}")));
        }
    }
    for rule in str_list(hc, "DeviceCgroupRules")? {
        super::resources::parse_cgroup_rule(&rule)?;
    }
    let sec = security::parse(&str_list(hc, "SecurityOpt")?)?;
    if let SeccompChoice::Custom(body) = &sec.seccomp {
        if !host.seccomp {
            return Err(err("seccomp is not enabled in your kernel, cannot run a custom seccomp profile"));
        }
        Profile::parse(body)?;
    }
    for (k, _) in str_map(hc, "Sysctls")? {
        if k.is_empty() || k.contains('/') || Path::new(&k).is_absolute() {
            return Err(err(format!("invalid sysctl: {k:?}")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(config: Value, hc: Value) -> Result<(), SpecError> {
        validate_with(&config, &hc, &HostInfo::fixture())
    }

    fn msg(config: Value, hc: Value) -> String {
        check(config, hc).unwrap_err().to_string()
    }

    #[test]
    fn a_plain_request_passes() {
        check(
            json!({"Image": "busybox", "Cmd": ["true"], "Env": ["A=1", "B"]}),
            json!({"Memory": 64 << 20, "RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": 3}}),
        )
        .unwrap();
        check(Value::Null, Value::Null).unwrap();
    }

    #[test]
    fn memory_below_6mb_is_refused() {
        assert_eq!(msg(json!({}), json!({"Memory": 4 << 20})), "Minimum memory limit allowed is 6MB");
        assert_eq!(msg(json!({}), json!({"Memory": -5})), "Minimum memory limit allowed is 6MB");
        assert_eq!(
            msg(json!({}), json!({"Memory": 64 << 20, "MemorySwap": 32 << 20})),
            "Minimum memoryswap limit should be larger than memory limit, see usage"
        );
    }

    #[test]
    fn restart_policies() {
        assert_eq!(
            msg(json!({}), json!({"RestartPolicy": {"Name": "sometimes"}})),
            "invalid restart policy: unknown policy 'sometimes'; use one of 'no', 'always', 'on-failure', or 'unless-stopped'"
        );
        assert_eq!(
            msg(json!({}), json!({"RestartPolicy": {"Name": "always", "MaximumRetryCount": 2}})),
            "invalid restart policy: maximum retry count can only be used with 'on-failure'"
        );
        assert_eq!(
            msg(json!({}), json!({"RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": -1}})),
            "invalid restart policy: maximum retry count cannot be negative"
        );
        assert_eq!(
            msg(json!({}), json!({"AutoRemove": true, "RestartPolicy": {"Name": "always"}})),
            "can't create 'AutoRemove' container with restart policy"
        );
    }

    #[test]
    fn env_with_empty_name_is_refused() {
        assert_eq!(msg(json!({"Env": ["=x"]}), json!({})), "invalid environment variable: =x");
        assert_eq!(msg(json!({"Env": [""]}), json!({})), "invalid environment variable: ");
    }

    #[test]
    fn relative_mount_paths_are_refused() {
        assert_eq!(
            msg(json!({}), json!({"Mounts": [{"Type": "tmpfs", "Target": "data"}]})),
            "invalid mount config for type \"tmpfs\": invalid mount path: 'data' mount path must be absolute"
        );
        assert_eq!(
            msg(json!({}), json!({"Mounts": [{"Type": "bind", "Source": "rel", "Target": "/data"}]})),
            "invalid mount config for type \"bind\": invalid mount path: 'rel' mount path must be absolute"
        );
        assert_eq!(
            msg(json!({}), json!({"Mounts": [{"Type": "bind", "Source": "/nonexistent-berth", "Target": "/data"}]})),
            "invalid mount config for type \"bind\": bind source path does not exist: /nonexistent-berth"
        );
        assert_eq!(
            msg(json!({}), json!({"Mounts": [{"Type": "volume", "Target": "/"}]})),
            "invalid mount config for type \"volume\": invalid specification: destination can't be '/'"
        );
        assert_eq!(msg(json!({}), json!({"Tmpfs": {"run": ""}})), "invalid mount path: 'run' mount path must be absolute");
    }

    #[test]
    fn cpu_checks() {
        assert_eq!(
            msg(json!({}), json!({"NanoCpus": 5_000_000_000i64})),
            "range of CPUs is from 0.01 to 4.00, as there are only 4 CPUs available"
        );
        assert_eq!(msg(json!({}), json!({"NanoCpus": -1})), "range of CPUs is from 0.01 to 4.00, as there are only 4 CPUs available");
        assert_eq!(
            msg(json!({}), json!({"NanoCpus": 1, "CpuPeriod": 1000})),
            "Conflicting options: Nano CPUs and CPU Period cannot both be set"
        );
        assert_eq!(msg(json!({}), json!({"CpuShares": -2})), "invalid CPU shares (-2): value must be a positive integer");
        assert_eq!(msg(json!({}), json!({"CpusetCpus": "0-7"})), "Requested CPUs are not available - requested 0-7, available: 0-3");
    }

    #[test]
    fn namespace_modes() {
        assert_eq!(msg(json!({}), json!({"IpcMode": "weird"})), "invalid IPC mode: weird");
        assert_eq!(msg(json!({}), json!({"PidMode": "container:"})), "invalid PID mode: container:");
        assert_eq!(
            msg(json!({}), json!({"NetworkMode": "container:"})),
            "invalid network mode: invalid container format container:<name|id>"
        );
        assert_eq!(
            msg(json!({"Hostname": "h"}), json!({"NetworkMode": "container:abc"})),
            "conflicting options: hostname and the network mode"
        );
        assert_eq!(msg(json!({}), json!({"OomScoreAdj": 1001})), "Invalid value 1001, range for oom score adj is [-1000, 1000]");
    }

    #[test]
    fn capabilities_are_checked() {
        assert_eq!(msg(json!({}), json!({"CapAdd": ["FOO"]})), "invalid CapAdd: unknown capability: \"CAP_FOO\"");
    }

    #[test]
    fn ulimits_and_signals() {
        assert_eq!(msg(json!({}), json!({"Ulimits": [{"Name": "bogus", "Soft": 1, "Hard": 1}]})), "invalid ulimit type: bogus");
        assert_eq!(
            msg(json!({}), json!({"Ulimits": [{"Name": "nofile", "Soft": 10, "Hard": 5}]})),
            "ulimit soft limit must be less than or equal to hard limit: 10 > 5"
        );
        check(json!({"StopSignal": "SIGRTMIN+3"}), json!({})).unwrap();
        check(json!({"StopSignal": "quit"}), json!({})).unwrap();
        assert_eq!(msg(json!({"StopSignal": "SIGNOPE"}), json!({})), "invalid signal: SIGNOPE");
    }

    #[test]
    fn bad_seccomp_profile_fails_at_create() {
        let m = msg(json!({}), json!({"SecurityOpt": ["seccomp={nope"]}));
        assert!(m.starts_with("Decoding seccomp profile failed"), "{m}");
        assert_eq!(parse_signal("9").unwrap(), 9);
    }

    #[test]
    fn working_dir_must_be_absolute() {
        assert_eq!(msg(json!({"WorkingDir": "app"}), json!({})), "the working directory 'app' is invalid, it needs to be an absolute path");
    }
}

//! `linux.resources` and `linux.devices`: cgroup limits and the device
//! list, as dockerd writes them (moby `daemon_unix.go` `getMemoryResources`,
//! `getCPUResources`, `getPidsLimit`, `oci_linux.go` `WithDevices`,
//! `oci.DefaultLinuxSpec`'s device rules).

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use super::error::SpecError;
use super::json::{field_bool, field_i64, field_str, int, obj_list, str_list};

/// dockerd's device cgroup rules: deny everything, then allow the basic
/// character devices, and deny /dev/fuse. The runtime appends its own
/// defaults (/dev/pts/*, /dev/ptmx, /dev/net/tun, mknod for all) the same
/// way for runc and crun.
pub fn default_device_rules() -> Vec<Value> {
    let allow = |major: i64, minor: i64| json!({"allow": true, "type": "c", "major": major, "minor": minor, "access": "rwm"});
    vec![
        json!({"allow": false, "access": "rwm"}),
        allow(1, 5),
        allow(1, 3),
        allow(1, 9),
        allow(1, 8),
        allow(5, 0),
        allow(5, 1),
        json!({"allow": false, "type": "c", "major": 10, "minor": 229, "access": "rwm"}),
    ]
}

/// `linux.resources.memory`, or `None` when nothing is limited.
pub fn memory(hc: &Value) -> Result<Option<Value>, SpecError> {
    let mut m = Map::new();
    let limit = int(hc, "Memory")?;
    if limit > 0 {
        m.insert("limit".into(), limit.into());
    }
    let reservation = int(hc, "MemoryReservation")?;
    if reservation > 0 {
        m.insert("reservation".into(), reservation.into());
    }
    // dockerd makes swap twice the memory limit when only Memory is set;
    // -1 means unlimited and is left out.
    let swap = match int(hc, "MemorySwap")? {
        0 if limit > 0 => limit.saturating_mul(2),
        s => s,
    };
    if swap > 0 {
        m.insert("swap".into(), swap.into());
    }
    if let Some(sw) = field_i64(hc, "MemorySwappiness")?.filter(|s| *s != -1) {
        m.insert("swappiness".into(), sw.into());
    }
    if let Some(d) = field_bool(hc, "OomKillDisable")? {
        m.insert("disableOOMKiller".into(), d.into());
    }
    Ok((!m.is_empty()).then_some(Value::Object(m)))
}

/// `linux.resources.cpu`, or `None`.
pub fn cpu(hc: &Value) -> Result<Option<Value>, SpecError> {
    let mut c = Map::new();
    let shares = int(hc, "CpuShares")?;
    if shares < 0 {
        return Err(SpecError::invalid(format!("invalid CPU shares ({shares}): value must be a positive integer")));
    }
    if shares > 0 {
        c.insert("shares".into(), shares.into());
    }
    if let Some(cpus) = field_str(hc, "CpusetCpus")?.filter(|s| !s.is_empty()) {
        c.insert("cpus".into(), cpus.into());
    }
    if let Some(mems) = field_str(hc, "CpusetMems")?.filter(|s| !s.is_empty()) {
        c.insert("mems".into(), mems.into());
    }
    let nano = int(hc, "NanoCpus")?;
    if nano > 0 {
        const PERIOD: i64 = 100_000;
        c.insert("period".into(), PERIOD.into());
        c.insert("quota".into(), (nano.saturating_mul(PERIOD) / 1_000_000_000).into());
    }
    let period = int(hc, "CpuPeriod")?;
    if period != 0 {
        c.insert("period".into(), period.into());
    }
    let quota = int(hc, "CpuQuota")?;
    if quota != 0 {
        c.insert("quota".into(), quota.into());
    }
    let rt_period = int(hc, "CpuRealtimePeriod")?;
    if rt_period != 0 {
        c.insert("realtimePeriod".into(), rt_period.into());
    }
    let rt_runtime = int(hc, "CpuRealtimeRuntime")?;
    if rt_runtime != 0 {
        c.insert("realtimeRuntime".into(), rt_runtime.into());
    }
    Ok((!c.is_empty()).then_some(Value::Object(c)))
}

/// `linux.resources.pids`: 0 and negative mean unlimited. dockerd writes
/// -1 for them, which runc maps to "max" but crun 1.8 writes verbatim to
/// cgroup v1's pids.max (EINVAL); a new container has no limit to unset,
/// so unlimited is simply no limit.
pub fn pids(hc: &Value) -> Result<Option<Value>, SpecError> {
    Ok(field_i64(hc, "PidsLimit")?.filter(|l| *l > 0).map(|l| json!({"limit": l})))
}

/// `linux.resources.blockIO`, or `None`. Device paths are stat'ed on the
/// host for their numbers.
pub fn block_io(hc: &Value) -> Result<Option<Value>, SpecError> {
    let mut b = Map::new();
    let weight = int(hc, "BlkioWeight")?;
    if weight != 0 {
        b.insert("weight".into(), weight.into());
    }
    let mut weights = Vec::new();
    for d in obj_list(hc, "BlkioWeightDevice")? {
        let (major, minor) = device_numbers(d)?;
        weights.push(json!({"major": major, "minor": minor, "weight": int(d, "Weight")?}));
    }
    if !weights.is_empty() {
        b.insert("weightDevice".into(), weights.into());
    }
    for (key, oci) in [
        ("BlkioDeviceReadBps", "throttleReadBpsDevice"),
        ("BlkioDeviceWriteBps", "throttleWriteBpsDevice"),
        ("BlkioDeviceReadIOps", "throttleReadIOPSDevice"),
        ("BlkioDeviceWriteIOps", "throttleWriteIOPSDevice"),
    ] {
        let mut list = Vec::new();
        for d in obj_list(hc, key)? {
            let (major, minor) = device_numbers(d)?;
            list.push(json!({"major": major, "minor": minor, "rate": int(d, "Rate")?}));
        }
        if !list.is_empty() {
            b.insert(oci.into(), list.into());
        }
    }
    Ok((!b.is_empty()).then_some(Value::Object(b)))
}

fn device_numbers(d: &Value) -> Result<(u64, u64), SpecError> {
    let path = field_str(d, "Path")?.unwrap_or_default();
    let meta = std::fs::metadata(path).map_err(|e| SpecError::invalid(format!("stat {path}: {e}")))?;
    let rdev = meta.rdev();
    Ok((rustix::fs::major(rdev).into(), rustix::fs::minor(rdev).into()))
}

/// A device node on the host, for `linux.devices`.
fn device_at(path: &Path) -> std::io::Result<Option<(String, Value)>> {
    let meta = std::fs::symlink_metadata(path)?;
    let ft = meta.file_type();
    let typ = if ft.is_block_device() {
        "b"
    } else if ft.is_char_device() {
        "c"
    } else if ft.is_fifo() {
        "p"
    } else {
        return Ok(None);
    };
    let rdev = meta.rdev();
    let dev = json!({
        "path": path.to_string_lossy(),
        "type": typ,
        "major": rustix::fs::major(rdev),
        "minor": rustix::fs::minor(rdev),
        "fileMode": meta.mode() & 0o7777,
        "uid": meta.uid(),
        "gid": meta.gid(),
    });
    Ok(Some((typ.to_owned(), dev)))
}

fn allow_rule(dev: &Value, access: &str) -> Value {
    json!({"allow": true, "type": dev["type"], "major": dev["major"], "minor": dev["minor"], "access": access})
}

/// The devices of one `--device` mapping (a node, or every node below a
/// directory) and their cgroup rules; moby `oci.DevicesFromPath`.
fn devices_from_path(on_host: &str, in_container: &str, access: &str) -> Result<(Vec<Value>, Vec<Value>), SpecError> {
    let err = |source| SpecError::Device { path: on_host.into(), source };
    let resolved: PathBuf = match std::fs::symlink_metadata(on_host) {
        Ok(m) if m.file_type().is_symlink() => std::fs::canonicalize(on_host).unwrap_or_else(|_| on_host.into()),
        _ => on_host.into(),
    };
    let (mut devs, mut rules) = (Vec::new(), Vec::new());
    match device_at(&resolved).map_err(err)? {
        Some((_, mut dev)) => {
            dev["path"] = in_container.into();
            rules.push(allow_rule(&dev, access));
            devs.push(dev);
        }
        None if resolved.is_dir() => {
            walk_devices(&resolved, &mut |path, mut dev| {
                let rel = path.strip_prefix(&resolved).unwrap_or(path);
                dev["path"] = Path::new(in_container).join(rel).to_string_lossy().into_owned().into();
                rules.push(allow_rule(&dev, access));
                devs.push(dev);
            });
            if devs.is_empty() {
                return Err(err(std::io::Error::other("not a device node")));
            }
        }
        None => return Err(err(std::io::Error::other("not a device node"))),
    }
    Ok((devs, rules))
}

/// Calls `f` for every device node below `dir`, skipping what cannot be
/// read.
fn walk_devices(dir: &Path, f: &mut dyn FnMut(&Path, Value)) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let path = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => walk_devices(&path, f),
            Ok(_) => {
                if let Ok(Some((_, dev))) = device_at(&path) {
                    f(&path, dev);
                }
            }
            Err(_) => {}
        }
    }
}

/// All device nodes under the host's /dev, for a privileged container
/// (containerd `HostDevices`: no pts, shm, fd, mqueue, console or FIFOs).
fn host_devices(dir: &Path, out: &mut Vec<Value>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let Ok(t) = e.file_type() else { continue };
        if t.is_dir() {
            if !matches!(name.as_ref(), "pts" | "shm" | "fd" | "mqueue" | ".lxc" | ".lxd-mounts" | ".udev") {
                host_devices(&e.path(), out);
            }
            continue;
        }
        if name == "console" {
            continue;
        }
        if let Ok(Some((typ, dev))) = device_at(&e.path()) {
            if typ != "p" {
                out.push(dev);
            }
        }
    }
}

/// `(linux.devices, linux.resources.devices)`.
pub fn devices(hc: &Value, privileged: bool) -> Result<(Vec<Value>, Vec<Value>), SpecError> {
    let mut devs = Vec::new();
    let mut rules;
    let mappings = obj_list(hc, "Devices")?;
    if privileged {
        host_devices(Path::new("/dev"), &mut devs);
        for m in mappings {
            let on_host = field_str(m, "PathOnHost")?.unwrap_or_default();
            let in_container = field_str(m, "PathInContainer")?.filter(|p| !p.is_empty()).unwrap_or(on_host);
            if on_host == in_container {
                // Already there with the rest of /dev.
                continue;
            }
            devs.extend(devices_from_path(on_host, in_container, "rwm")?.0);
        }
        rules = vec![json!({"allow": true, "access": "rwm"})];
    } else {
        rules = default_device_rules();
        for m in mappings {
            let on_host = field_str(m, "PathOnHost")?.unwrap_or_default();
            let in_container = field_str(m, "PathInContainer")?.filter(|p| !p.is_empty()).unwrap_or(on_host);
            let access = field_str(m, "CgroupPermissions")?.filter(|p| !p.is_empty()).unwrap_or("rwm");
            let (d, r) = devices_from_path(on_host, in_container, access)?;
            devs.extend(d);
            rules.extend(r);
        }
        for rule in str_list(hc, "DeviceCgroupRules")? {
            rules.push(parse_cgroup_rule(&rule)?);
        }
    }
    Ok((devs, rules))
}

/// `--device-cgroup-rule` ("c 1:3 rwm", "a *:* m"); wildcards are left
/// out of the rule, which the runtime spec reads as "any".
pub fn parse_cgroup_rule(rule: &str) -> Result<Value, SpecError> {
    let bad = || SpecError::invalid(format!("invalid device cgroup rule format: '{rule}'"));
    let parts: Vec<&str> = rule.split(' ').collect();
    let [typ, numbers, access] = parts[..] else { return Err(bad()) };
    if !matches!(typ, "a" | "b" | "c") || access.is_empty() || access.len() > 3 || !access.chars().all(|c| "rwm".contains(c)) {
        return Err(bad());
    }
    let (major, minor) = numbers.split_once(':').ok_or_else(bad)?;
    let mut out = json!({"allow": true, "type": typ, "access": access});
    for (key, v) in [("major", major), ("minor", minor)] {
        if v == "*" {
            continue;
        }
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let n: i64 = v.parse().map_err(|_| SpecError::invalid(format!("invalid {key} value in device cgroup rule format: '{rule}'")))?;
        out[key] = n.into();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_alone_gets_twice_the_swap() {
        let m = memory(&json!({"Memory": 64 << 20})).unwrap().unwrap();
        assert_eq!(m, json!({"limit": 64 << 20, "swap": 128 << 20}));
    }

    #[test]
    fn explicit_and_unlimited_swap() {
        assert_eq!(memory(&json!({"Memory": 10 << 20, "MemorySwap": 30 << 20})).unwrap().unwrap()["swap"], 30 << 20);
        assert_eq!(memory(&json!({"Memory": 10 << 20, "MemorySwap": -1})).unwrap().unwrap(), json!({"limit": 10 << 20}));
        assert_eq!(memory(&json!({})).unwrap(), None);
    }

    #[test]
    fn nano_cpus_become_quota_over_a_100ms_period() {
        assert_eq!(cpu(&json!({"NanoCpus": 1_500_000_000})).unwrap().unwrap(), json!({"period": 100000, "quota": 150000}));
        assert_eq!(cpu(&json!({"CpuShares": 512, "CpusetCpus": "0-1"})).unwrap().unwrap(), json!({"shares": 512, "cpus": "0-1"}));
        assert!(cpu(&json!({"CpuShares": -1})).is_err());
    }

    #[test]
    fn pids_limit_zero_or_negative_is_unlimited() {
        assert_eq!(pids(&json!({"PidsLimit": 0})).unwrap(), None);
        assert_eq!(pids(&json!({"PidsLimit": -1})).unwrap(), None);
        assert_eq!(pids(&json!({"PidsLimit": 100})).unwrap(), Some(json!({"limit": 100})));
        assert_eq!(pids(&json!({"PidsLimit": null})).unwrap(), None);
    }

    #[test]
    fn device_mapping_stats_the_host_node() {
        let hc = json!({"Devices": [{"PathOnHost": "/dev/null", "PathInContainer": "/dev/mynull", "CgroupPermissions": "rw"}]});
        let (devs, rules) = devices(&hc, false).unwrap();
        assert_eq!(devs.len(), 1);
        assert_eq!(devs[0]["path"], "/dev/mynull");
        assert_eq!((devs[0]["type"].as_str(), devs[0]["major"].as_u64(), devs[0]["minor"].as_u64()), (Some("c"), Some(1), Some(3)));
        assert_eq!(rules[0], json!({"allow": false, "access": "rwm"}));
        assert_eq!(rules.last().unwrap(), &json!({"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rw"}));
    }

    #[test]
    fn missing_device_is_an_error() {
        let hc = json!({"Devices": [{"PathOnHost": "/dev/does-not-exist", "PathInContainer": "/dev/x", "CgroupPermissions": "rwm"}]});
        let err = devices(&hc, false).unwrap_err();
        assert!(
            err.to_string().starts_with("error gathering device information while adding custom device \"/dev/does-not-exist\""),
            "{err}"
        );
    }

    #[test]
    fn privileged_allows_every_device() {
        let (devs, rules) = devices(&json!({}), true).unwrap();
        assert_eq!(rules, [json!({"allow": true, "access": "rwm"})]);
        assert!(devs.iter().any(|d| d["path"] == "/dev/null"));
        assert!(!devs.iter().any(|d| d["path"].as_str().unwrap().starts_with("/dev/pts/")));
    }

    #[test]
    fn cgroup_rules_parse() {
        assert_eq!(parse_cgroup_rule("c 1:3 rwm").unwrap(), json!({"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"}));
        assert_eq!(parse_cgroup_rule("a *:* m").unwrap(), json!({"allow": true, "type": "a", "access": "m"}));
        assert_eq!(parse_cgroup_rule("x 1:3 rwm").unwrap_err().to_string(), "invalid device cgroup rule format: 'x 1:3 rwm'");
    }
}

//! The container's mount table, as dockerd builds it (moby
//! `oci.DefaultLinuxSpec` mounts, then `withMounts`): the default kernel
//! filesystems, then the engine's and the user's mounts sorted by depth,
//! each overriding a default at the same destination.

use std::collections::{BTreeMap, HashSet};

use serde_json::{json, Value};

use super::error::SpecError;

/// Where `--init` puts the init binary.
pub const INIT_PATH: &str = "/sbin/docker-init";

/// What changes the default mounts.
pub struct MountOptions<'a> {
    /// `/dev/shm` size in bytes (dockerd's default is 64 MiB).
    pub shm_size: i64,
    pub ipc_none: bool,
    pub privileged: bool,
    pub readonly_rootfs: bool,
    /// Leave /sys/fs/cgroup writable (privileged, or `writable-cgroups`).
    pub writable_cgroups: bool,
    pub init_path: Option<&'a std::path::Path>,
    /// OCI mounts from the engine (/etc/hosts, volumes ...), used as given.
    pub extra: &'a [Value],
    /// `HostConfig.Tmpfs`: destination → comma-separated options.
    pub tmpfs: &'a BTreeMap<String, String>,
}

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Value {
    json!({"destination": dest, "type": typ, "source": source, "options": options})
}

/// moby's default mounts, in its order.
fn defaults() -> Vec<Value> {
    vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount("/dev", "tmpfs", "tmpfs", &["nosuid", "strictatime", "mode=755", "size=65536k"]),
        mount("/dev/pts", "devpts", "devpts", &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]),
        mount("/sys", "sysfs", "sysfs", &["nosuid", "noexec", "nodev", "ro"]),
        mount("/sys/fs/cgroup", "cgroup", "cgroup", &["ro", "nosuid", "noexec", "nodev"]),
        mount("/dev/mqueue", "mqueue", "mqueue", &["nosuid", "noexec", "nodev"]),
        mount("/dev/shm", "tmpfs", "shm", &["nosuid", "noexec", "nodev", "mode=1777"]),
    ]
}

fn destination(m: &Value) -> &str {
    m.get("destination").and_then(Value::as_str).unwrap_or_default()
}

fn options_mut(m: &mut Value) -> &mut Vec<Value> {
    let obj = m.as_object_mut().expect("mounts are objects");
    let opts = obj.entry("options").or_insert_with(|| Value::Array(Vec::new()));
    if !opts.is_array() {
        *opts = Value::Array(Vec::new());
    }
    opts.as_array_mut().expect("just made an array")
}

/// Refuses a mount destination that is relative or `/`, with dockerd's
/// messages.
pub fn check_destination(dest: &str) -> Result<(), SpecError> {
    let normalized = dest.replace('\\', "/");
    if super::process::clean_path(&normalized) == "/" && normalized.starts_with('/') {
        return Err(SpecError::invalid("invalid specification: destination can't be '/'"));
    }
    if !normalized.starts_with('/') {
        return Err(SpecError::invalid(format!("invalid mount path: '{normalized}' mount path must be absolute")));
    }
    Ok(())
}

/// The full mount list.
pub fn build(o: &MountOptions) -> Result<Vec<Value>, SpecError> {
    // The engine's and the user's mounts, sorted by path depth so a parent
    // is mounted before what goes inside it (moby `sortMounts`).
    let mut user: Vec<Value> = Vec::new();
    for m in o.extra {
        if !m.is_object() {
            return Err(SpecError::invalid("invalid mount: expected an object"));
        }
        check_destination(destination(m))?;
        user.push(m.clone());
    }
    for (dest, data) in o.tmpfs {
        check_destination(dest)?;
        let mut opts: Vec<String> = ["noexec", "nosuid", "nodev", "rprivate"].map(String::from).to_vec();
        if !data.is_empty() {
            opts.extend(data.split(',').map(str::to_owned));
        }
        let merged = merge_tmpfs_options(&opts)?;
        user.push(json!({"destination": dest, "type": "tmpfs", "source": "tmpfs", "options": merged}));
    }
    user.sort_by_key(|m| depth(destination(m)));
    let user_dests: HashSet<String> = user.iter().map(|m| destination(m).to_owned()).collect();

    let mut mounts = Vec::new();
    for mut m in defaults() {
        let dest = destination(&m).to_owned();
        if user_dests.contains(&dest) || (user_dests.contains("/dev") && dest.starts_with("/dev/")) {
            continue;
        }
        if dest == "/dev/shm" {
            if o.ipc_none {
                continue;
            }
            options_mut(&mut m).push(format!("size={}", o.shm_size).into());
        }
        mounts.push(m);
    }
    if let Some(init) = o.init_path {
        let source = init.to_str().ok_or_else(|| SpecError::invalid("the init binary's path is not UTF-8"))?;
        mounts.push(mount(INIT_PATH, "bind", source, &["bind", "ro"]));
    }
    mounts.extend(user);

    for m in &mut mounts {
        let dest = destination(m).to_owned();
        let is_user = user_dests.contains(&dest);
        if o.readonly_rootfs && !is_user && !matches!(dest.as_str(), "/proc" | "/dev/pts" | "/dev/shm" | "/dev/mqueue" | "/dev") {
            let opts = options_mut(m);
            if !opts.iter().any(|x| x == "ro") {
                opts.push("ro".into());
            }
        }
        let is_cgroup = m.get("type").and_then(Value::as_str) == Some("cgroup");
        if (o.privileged && dest == "/sys") || (o.writable_cgroups && is_cgroup) {
            options_mut(m).retain(|x| x != "ro");
        }
    }
    Ok(mounts)
}

/// Path depth as moby's `mountSort` counts it.
fn depth(dest: &str) -> usize {
    super::process::clean_path(dest).split('/').filter(|c| !c.is_empty()).count()
}

/// Groups of mutually exclusive mount flags (moby/sys/mount `flags`): a
/// later option of a group wins over an earlier one.
fn flag_group(opt: &str) -> Option<&'static str> {
    Some(match opt {
        "ro" | "rw" => "rdonly",
        "suid" | "nosuid" => "nosuid",
        "dev" | "nodev" => "nodev",
        "exec" | "noexec" => "noexec",
        "sync" | "async" => "sync",
        "dirsync" => "dirsync",
        "remount" => "remount",
        "mand" | "nomand" => "mand",
        "atime" | "noatime" => "noatime",
        "diratime" | "nodiratime" => "nodiratime",
        "relatime" | "norelatime" => "relatime",
        "strictatime" | "nostrictatime" => "strictatime",
        "bind" | "rbind" | "unbindable" | "runbindable" | "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" => {
            "propagation"
        }
        _ => return None,
    })
}

/// moby/sys/mount `MergeTmpfsOptions`: drops duplicates, the last of each
/// flag group or data key winning, and refuses unknown options.
pub fn merge_tmpfs_options(options: &[String]) -> Result<Vec<String>, SpecError> {
    const DATA_KEYS: [&str; 8] = ["", "size", "mode", "uid", "gid", "nr_inodes", "nr_blocks", "mpol"];
    let mut seen_flags = HashSet::new();
    let mut seen_data = HashSet::new();
    let mut out = Vec::new();
    for opt in options.iter().rev() {
        if opt == "defaults" {
            continue;
        }
        if let Some(group) = flag_group(opt) {
            if seen_flags.insert(group) {
                out.push(opt.clone());
            }
            continue;
        }
        match opt.split_once('=') {
            Some((key, _)) if DATA_KEYS.contains(&key) => {
                if seen_data.insert(key.to_owned()) {
                    out.push(opt.clone());
                }
            }
            Some((key, _)) => return Err(SpecError::invalid(format!("invalid tmpfs option {key:?}"))),
            None => return Err(SpecError::invalid(format!("invalid tmpfs option {opt:?}"))),
        }
    }
    out.reverse();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts<'a>(extra: &'a [Value], tmpfs: &'a BTreeMap<String, String>) -> MountOptions<'a> {
        MountOptions {
            shm_size: 64 << 20,
            ipc_none: false,
            privileged: false,
            readonly_rootfs: false,
            writable_cgroups: false,
            init_path: None,
            extra,
            tmpfs,
        }
    }

    fn dests(m: &[Value]) -> Vec<&str> {
        m.iter().map(destination).collect()
    }

    fn find<'a>(m: &'a [Value], dest: &str) -> &'a Value {
        m.iter().find(|x| destination(x) == dest).unwrap()
    }

    #[test]
    fn defaults_come_in_dockerds_order_with_shm_size() {
        let tmpfs = BTreeMap::new();
        let m = build(&opts(&[], &tmpfs)).unwrap();
        assert_eq!(dests(&m), ["/proc", "/dev", "/dev/pts", "/sys", "/sys/fs/cgroup", "/dev/mqueue", "/dev/shm"]);
        assert_eq!(find(&m, "/dev/shm")["options"], json!(["nosuid", "noexec", "nodev", "mode=1777", "size=67108864"]));
        assert_eq!(find(&m, "/sys")["options"], json!(["nosuid", "noexec", "nodev", "ro"]));
    }

    #[test]
    fn extra_and_tmpfs_mounts_follow_sorted_by_depth() {
        let extra = [json!({"destination": "/etc/hosts", "type": "bind", "source": "/x/hosts", "options": ["rbind", "rprivate"]})];
        let tmpfs = BTreeMap::from([("/run".to_owned(), "size=1m,exec".to_owned())]);
        let m = build(&opts(&extra, &tmpfs)).unwrap();
        assert_eq!(&dests(&m)[7..], ["/run", "/etc/hosts"]);
        assert_eq!(find(&m, "/run")["options"], json!(["nosuid", "nodev", "rprivate", "size=1m", "exec"]));
    }

    #[test]
    fn user_mount_replaces_the_default_at_its_destination() {
        let tmpfs = BTreeMap::from([("/dev/shm".to_owned(), String::new())]);
        let m = build(&opts(&[], &tmpfs)).unwrap();
        assert_eq!(dests(&m).iter().filter(|d| **d == "/dev/shm").count(), 1);
        assert_eq!(find(&m, "/dev/shm")["source"], "tmpfs");
    }

    #[test]
    fn ipc_none_has_no_shm() {
        let tmpfs = BTreeMap::new();
        let m = build(&MountOptions { ipc_none: true, ..opts(&[], &tmpfs) }).unwrap();
        assert!(!dests(&m).contains(&"/dev/shm"));
    }

    #[test]
    fn privileged_has_writable_sys_and_cgroup() {
        let tmpfs = BTreeMap::new();
        let m = build(&MountOptions { privileged: true, writable_cgroups: true, ..opts(&[], &tmpfs) }).unwrap();
        assert_eq!(find(&m, "/sys")["options"], json!(["nosuid", "noexec", "nodev"]));
        assert_eq!(find(&m, "/sys/fs/cgroup")["options"], json!(["nosuid", "noexec", "nodev"]));
    }

    #[test]
    fn readonly_rootfs_marks_default_mounts_but_not_user_ones() {
        let extra = [json!({"destination": "/data", "type": "bind", "source": "/v", "options": ["rbind"]})];
        let tmpfs = BTreeMap::new();
        let m = build(&MountOptions { readonly_rootfs: true, ..opts(&extra, &tmpfs) }).unwrap();
        assert_eq!(find(&m, "/data")["options"], json!(["rbind"]));
        assert_eq!(find(&m, "/proc")["options"], json!(["nosuid", "noexec", "nodev"]));
        assert_eq!(find(&m, "/sys/fs/cgroup")["options"], json!(["ro", "nosuid", "noexec", "nodev"]));
    }

    #[test]
    fn init_is_bound_read_only_after_the_defaults() {
        let tmpfs = BTreeMap::new();
        let m = build(&MountOptions { init_path: Some(std::path::Path::new("/usr/bin/tini")), ..opts(&[], &tmpfs) }).unwrap();
        assert_eq!(m[7], json!({"destination": INIT_PATH, "type": "bind", "source": "/usr/bin/tini", "options": ["bind", "ro"]}));
    }

    #[test]
    fn relative_or_root_destinations_are_refused() {
        let tmpfs = BTreeMap::from([("run".to_owned(), String::new())]);
        let err = build(&opts(&[], &tmpfs)).unwrap_err();
        assert_eq!(err.to_string(), "invalid mount path: 'run' mount path must be absolute");
        let extra = [json!({"destination": "/", "type": "bind", "source": "/x"})];
        let empty = BTreeMap::new();
        let err = build(&opts(&extra, &empty)).unwrap_err();
        assert_eq!(err.to_string(), "invalid specification: destination can't be '/'");
    }

    #[test]
    fn tmpfs_options_merge_like_moby() {
        let o = |v: &[&str]| merge_tmpfs_options(&v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
        assert_eq!(o(&["noexec", "size=1", "exec", "size=2", "defaults"]).unwrap(), ["exec", "size=2"]);
        assert_eq!(o(&["bogus"]).unwrap_err().to_string(), "invalid tmpfs option \"bogus\"");
        assert_eq!(o(&["foo=1"]).unwrap_err().to_string(), "invalid tmpfs option \"foo\"");
    }
}

//! Volumes with dockerd's `local` driver: each volume is a directory
//! `<data-root>/volumes/<name>/_data` plus a small JSON record (labels,
//! options, creation time, whether it is anonymous).
//!
//! A volume created with options (`--opt type=tmpfs --opt device=tmpfs
//! --opt o=size=64m`, `--opt type=none --opt o=bind --opt device=/dir`) is
//! mounted on its `_data` directory when the first container using it
//! starts and unmounted when the last one stops, as dockerd's local driver
//! refcounts it.
//!
//! Owns volume records, names, those mounts, and filling a new volume from
//! image content. Does not own which containers use a volume: the container
//! service tells it through the usage callback (`set_usage`), as it does for
//! images, and claims and releases mounts (`mount`, `release`, `adopt`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::CString;
use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::content::write_atomic;
use crate::error::{Error, Result};
use crate::events::EventBus;
use crate::filters::Filters;
use crate::paths::Paths;

/// The label dockerd (API 1.42+) puts on anonymous volumes; prune without
/// `all` removes only those.
pub const ANONYMOUS_LABEL: &str = "com.docker.volume.anonymous";

/// Characters dockerd allows in a local volume name.
const NAME_CHARS: &str = "[a-zA-Z0-9][a-zA-Z0-9_.-]";

/// One volume's record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub name: String,
    pub driver: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    pub created: String,
    #[serde(default)]
    pub anonymous: bool,
    /// Set once image content was copied in (or a container wrote to it
    /// first), so an emptied volume is not filled again.
    #[serde(default)]
    pub populated: bool,
}

/// Volume name to the IDs of the containers that reference it.
pub type UsageFn = Arc<dyn Fn() -> HashMap<String, Vec<String>> + Send + Sync>;

/// The volume service.
pub struct Volumes {
    paths: Paths,
    events: Arc<EventBus>,
    /// Serializes create/remove so a name is created or removed once.
    lock: Mutex<()>,
    usage: RwLock<Option<UsageFn>>,
    /// Volume name to the containers that hold its mount (dockerd's
    /// refcount, keyed so a release is idempotent). Lock order: `lock`
    /// before `active`.
    active: Mutex<HashMap<String, HashSet<String>>>,
    sys: Box<dyn MountSys>,
}

/// The OS calls behind volumes with options; a trait so unit tests can
/// record them without root.
pub(crate) trait MountSys: Send + Sync {
    /// moby's `mount.Mount(device, target, type, options)`.
    fn mount(&self, device: &str, target: &Path, fstype: &str, options: &str) -> std::result::Result<(), MountError>;
    /// Detaches the mount at `target`.
    fn unmount(&self, target: &Path) -> std::io::Result<()>;
    /// Whether something is mounted at `target`.
    fn is_mounted(&self, target: &Path) -> bool;
}

/// A failed mount(2), worded as moby's `mountError` (the text dockerd
/// users see): `mount <device>:<target>, flags: 0x1000, data: <data>: <errno>`.
#[derive(Debug, Clone, PartialEq)]
pub struct MountError {
    op: &'static str,
    source: String,
    target: String,
    flags: libc::c_ulong,
    data: String,
    errno: i32,
}

impl fmt::Display for MountError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.op)?;
        if self.source.is_empty() {
            write!(f, " {}", self.target)?;
        } else {
            write!(f, " {}:{}", self.source, self.target)?;
        }
        if self.flags != 0 {
            write!(f, ", flags: {:#x}", self.flags)?;
        }
        if !self.data.is_empty() {
            write!(f, ", data: {}", self.data)?;
        }
        write!(f, ": {}", errno_text(self.errno))
    }
}

/// Go's wording of an errno (`no such device`), which is the C library's
/// with a lowercase first letter.
fn errno_text(errno: i32) -> String {
    let text = std::io::Error::from_raw_os_error(errno).to_string();
    let text = text.split(" (os error").next().unwrap_or_default();
    let mut chars = text.chars();
    chars.next().map(|c| c.to_lowercase().chain(chars).collect()).unwrap_or_default()
}

/// moby's mount flag table: `(name, clears, flag)`. Any other option is
/// part of the data string handed to the filesystem.
const MOUNT_FLAGS: &[(&str, bool, libc::c_ulong)] = &[
    ("ro", false, libc::MS_RDONLY),
    ("rw", true, libc::MS_RDONLY),
    ("suid", true, libc::MS_NOSUID),
    ("nosuid", false, libc::MS_NOSUID),
    ("dev", true, libc::MS_NODEV),
    ("nodev", false, libc::MS_NODEV),
    ("exec", true, libc::MS_NOEXEC),
    ("noexec", false, libc::MS_NOEXEC),
    ("sync", false, libc::MS_SYNCHRONOUS),
    ("async", true, libc::MS_SYNCHRONOUS),
    ("dirsync", false, libc::MS_DIRSYNC),
    ("remount", false, libc::MS_REMOUNT),
    ("mand", false, libc::MS_MANDLOCK),
    ("nomand", true, libc::MS_MANDLOCK),
    ("atime", true, libc::MS_NOATIME),
    ("noatime", false, libc::MS_NOATIME),
    ("diratime", true, libc::MS_NODIRATIME),
    ("nodiratime", false, libc::MS_NODIRATIME),
    ("bind", false, libc::MS_BIND),
    ("rbind", false, libc::MS_BIND | libc::MS_REC),
    ("unbindable", false, libc::MS_UNBINDABLE),
    ("runbindable", false, libc::MS_UNBINDABLE | libc::MS_REC),
    ("private", false, libc::MS_PRIVATE),
    ("rprivate", false, libc::MS_PRIVATE | libc::MS_REC),
    ("shared", false, libc::MS_SHARED),
    ("rshared", false, libc::MS_SHARED | libc::MS_REC),
    ("slave", false, libc::MS_SLAVE),
    ("rslave", false, libc::MS_SLAVE | libc::MS_REC),
    ("relatime", false, libc::MS_RELATIME),
    ("norelatime", true, libc::MS_RELATIME),
    ("strictatime", false, libc::MS_STRICTATIME),
    ("nostrictatime", true, libc::MS_STRICTATIME),
];

/// Splits an `o=` value into mount flags and the data string, as moby's
/// `parseOptions` does.
fn parse_mount_options(options: &str) -> (libc::c_ulong, String) {
    let mut flags: libc::c_ulong = 0;
    let mut data: Vec<&str> = Vec::new();
    for o in options.split(',') {
        match MOUNT_FLAGS.iter().find(|(name, _, _)| *name == o) {
            Some((_, true, f)) => flags &= !f,
            Some((_, false, f)) => flags |= f,
            None => data.push(o),
        }
    }
    (flags, data.join(","))
}

/// mount(2) on the host.
struct HostMounts;

fn sys_mount(source: &str, target: &str, fstype: &str, flags: libc::c_ulong, data: &str) -> std::result::Result<(), i32> {
    let c = |s: &str| CString::new(s).map_err(|_| libc::EINVAL);
    let (source, target, fstype, data) = (c(source)?, c(target)?, c(fstype)?, c(data)?);
    // SAFETY: every pointer is a NUL-terminated string that outlives the
    // call; mount(2) does not keep them.
    let rc = unsafe { libc::mount(source.as_ptr(), target.as_ptr(), fstype.as_ptr(), flags, data.as_ptr().cast()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO))
    }
}

impl MountSys for HostMounts {
    /// moby/sys/mount's sequence: the mount with every non-propagation
    /// flag, then the propagation change, then the read-only remount a
    /// bind needs.
    fn mount(&self, device: &str, target: &Path, fstype: &str, options: &str) -> std::result::Result<(), MountError> {
        const PTYPES: libc::c_ulong = libc::MS_SHARED | libc::MS_PRIVATE | libc::MS_SLAVE | libc::MS_UNBINDABLE;
        const PFLAGS: libc::c_ulong = PTYPES | libc::MS_REC | libc::MS_SILENT;
        const BROFLAGS: libc::c_ulong = libc::MS_BIND | libc::MS_RDONLY;
        let (flags, data) = parse_mount_options(options);
        let t = target.to_string_lossy().into_owned();
        let err = |op, source: &str, flags, data: &str, errno| MountError { op, source: source.to_owned(), target: t.clone(), flags, data: data.to_owned(), errno };
        let oflags = flags & !PTYPES;
        if flags & libc::MS_REMOUNT == 0 || !data.is_empty() {
            sys_mount(device, &t, fstype, oflags, &data).map_err(|e| err("mount", device, oflags, &data, e))?;
        }
        if flags & PTYPES != 0 {
            sys_mount("", &t, "", flags & PFLAGS, "").map_err(|e| err("remount", "", flags & PFLAGS, "", e))?;
        }
        if oflags & BROFLAGS == BROFLAGS {
            sys_mount("", &t, "", oflags | libc::MS_REMOUNT, "").map_err(|e| err("remount-ro", "", oflags | libc::MS_REMOUNT, "", e))?;
        }
        Ok(())
    }

    fn unmount(&self, target: &Path) -> std::io::Result<()> {
        rustix::mount::unmount(target, rustix::mount::UnmountFlags::DETACH).map_err(std::io::Error::from)
    }

    fn is_mounted(&self, target: &Path) -> bool {
        let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return false };
        let want = target.to_string_lossy();
        info.lines().any(|l| {
            l.split(' ').nth(4).is_some_and(|mp| mp.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\") == want)
        })
    }
}

/// Whether options make the volume a mount (dockerd's `needsMount`: a
/// `type` or a `device`; `size` alone does not).
fn needs_mount(options: &BTreeMap<String, String>) -> bool {
    ["type", "device"].iter().any(|k| options.get(*k).is_some_and(|v| !v.is_empty()))
}

/// go-units `RAMInBytes`: `64m`, `1.5GiB`, `512` (binary multiples).
fn ram_in_bytes(s: &str) -> Option<i64> {
    let lower = s.to_ascii_lowercase();
    let t = lower.strip_suffix('b').unwrap_or(&lower);
    let t = t.strip_suffix('i').unwrap_or(t);
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if "kmgtp".contains(c) => (&t[..i], 1024f64.powi("kmgtp".find(c).expect("checked") as i32 + 1)),
        _ => (t, 1.0),
    };
    let num = num.strip_suffix(' ').unwrap_or(num);
    if num.is_empty() || !num.chars().all(|c| c.is_ascii_digit() || c == '.') || num.starts_with('.') {
        return None;
    }
    num.parse::<f64>().ok().map(|n| (n * mult) as i64)
}

/// dockerd's checks of the local driver's options: known keys, a valid
/// `size` (quotas are not supported here), and the keys that need others.
fn validate_options(options: &BTreeMap<String, String>) -> std::result::Result<(), String> {
    for key in options.keys() {
        if !matches!(key.as_str(), "type" | "device" | "o" | "size") {
            return Err(format!("invalid option: {key:?}"));
        }
    }
    if let Some(size) = options.get("size") {
        match ram_in_bytes(size) {
            None => return Err(format!("invalid size: '{size}'")),
            Some(n) if n > 0 => return Err("quota size requested but no quota support".into()),
            Some(_) => {}
        }
    }
    let required: [(&str, &[&str]); 3] = [("device", &["type"]), ("type", &["device"]), ("o", &["device", "type"])];
    for (key, needs) in required {
        if options.contains_key(key) {
            if let Some(missing) = needs.iter().find(|n| !options.contains_key(**n)) {
                return Err(format!("missing required option: {missing:?}"));
            }
        }
    }
    Ok(())
}

/// dockerd's local driver name rule (`^[a-zA-Z0-9][a-zA-Z0-9_.-]+$`).
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() >= 2 && b[0].is_ascii_alphanumeric() && b[1..].iter().all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c))
}

fn name_error(name: &str) -> Error {
    Error::invalid(format!(
        "{name:?} includes invalid characters for a local volume name, only {NAME_CHARS:?} are allowed. If you intended to pass a host directory, use absolute path"
    ))
}

fn no_such(name: &str) -> Error {
    Error::not_found(format!("get {name}: no such volume"))
}

/// A random anonymous volume name (64 hex digits, as dockerd's).
pub fn random_name() -> String {
    crate::digest::random_id()
}

impl Volumes {
    pub fn open(paths: &Paths, events: Arc<EventBus>) -> std::io::Result<Arc<Self>> {
        Self::open_with(paths, events, Box::new(HostMounts))
    }

    pub(crate) fn open_with(paths: &Paths, events: Arc<EventBus>, sys: Box<dyn MountSys>) -> std::io::Result<Arc<Self>> {
        std::fs::create_dir_all(paths.volumes_dir())?;
        Ok(Arc::new(Volumes {
            paths: paths.clone(),
            events,
            lock: Mutex::new(()),
            usage: RwLock::new(None),
            active: Mutex::new(HashMap::new()),
            sys,
        }))
    }

    /// Tells the service which containers reference which volumes.
    pub fn set_usage(&self, f: UsageFn) {
        *self.usage.write().expect("usage lock poisoned") = Some(f);
    }

    fn usage(&self) -> HashMap<String, Vec<String>> {
        self.usage.read().expect("usage lock poisoned").as_ref().map(|f| f()).unwrap_or_default()
    }

    fn read(&self, name: &str) -> Option<VolumeRecord> {
        if !valid_name(name) {
            return None;
        }
        let data = std::fs::read(self.paths.volume_record(name)).ok()?;
        serde_json::from_slice(&data).ok()
    }

    fn write(&self, rec: &VolumeRecord) -> Result<()> {
        let data = serde_json::to_vec(rec).map_err(|e| Error::internal(e.to_string()))?;
        write_atomic(&self.paths.volume_record(&rec.name), &data).map_err(|e| Error::io("write volume record", e))
    }

    fn all(&self) -> Vec<VolumeRecord> {
        let Ok(dir) = std::fs::read_dir(self.paths.volumes_dir()) else { return Vec::new() };
        let mut out: Vec<VolumeRecord> =
            dir.flatten().filter_map(|e| self.read(&e.file_name().to_string_lossy())).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Creates a volume, or returns the existing one of that name (dockerd
    /// makes create idempotent). `name` None makes an anonymous volume.
    pub fn create(&self, name: Option<&str>, driver: Option<&str>, labels: BTreeMap<String, String>, options: BTreeMap<String, String>) -> Result<VolumeRecord> {
        let driver = driver.filter(|d| !d.is_empty()).unwrap_or("local");
        let anonymous = name.is_none_or(str::is_empty);
        let name = match name.filter(|n| !n.is_empty()) {
            Some(n) => n.to_owned(),
            None => random_name(),
        };
        if driver != "local" {
            return Err(Error::not_found(format!("create {name}: error looking up volume plugin {driver}: plugin \"{driver}\" not found")));
        }
        if !valid_name(&name) {
            return Err(Error::invalid(format!("create {name}: {}", name_error(&name))));
        }
        validate_options(&options).map_err(|e| Error::invalid(format!("create {name}: {e}")))?;
        let _guard = self.lock.lock().expect("volume lock poisoned");
        if let Some(existing) = self.read(&name) {
            return Ok(existing);
        }
        let mut labels = labels;
        if anonymous {
            labels.insert(ANONYMOUS_LABEL.to_owned(), String::new());
        }
        let rec = VolumeRecord {
            name: name.clone(),
            driver: driver.to_owned(),
            labels,
            options,
            created: crate::timefmt::now_rfc3339(),
            anonymous,
            populated: false,
        };
        std::fs::create_dir_all(self.paths.volume_data(&name)).map_err(|e| Error::io("create volume", e))?;
        if let Err(e) = self.write(&rec) {
            let _ = std::fs::remove_dir_all(self.paths.volume_dir(&name));
            return Err(e);
        }
        self.events.publish("volume", "create", &name, BTreeMap::from([("driver".to_owned(), rec.driver.clone())]));
        Ok(rec)
    }

    /// Refuses a name the local driver cannot hold, with dockerd's message.
    pub fn check_name(name: &str) -> Result<()> {
        if valid_name(name) {
            Ok(())
        } else {
            Err(name_error(name))
        }
    }

    pub fn get(&self, name: &str) -> Result<VolumeRecord> {
        self.read(name).ok_or_else(|| no_such(name))
    }

    /// The host directory a container mounts for this volume.
    pub fn data_path(&self, name: &str) -> Result<PathBuf> {
        self.get(name).map(|_| self.paths.volume_data(name))
    }

    /// dockerd's volume JSON. `usage` adds `UsageData` (as `/system/df`).
    fn to_json(&self, rec: &VolumeRecord, refs: Option<usize>) -> Value {
        let mut v = json!({
            "CreatedAt": rec.created,
            "Driver": rec.driver,
            "Labels": if rec.labels.is_empty() { Value::Null } else { json!(rec.labels) },
            "Mountpoint": self.paths.volume_data(&rec.name),
            "Name": rec.name,
            "Options": if rec.options.is_empty() { Value::Null } else { json!(rec.options) },
            "Scope": "local",
        });
        if let Some(refs) = refs {
            let size = crate::snapshots::dir_size(&self.paths.volume_data(&rec.name)).unwrap_or(0);
            v["UsageData"] = json!({"Size": size, "RefCount": refs});
        }
        v
    }

    /// `GET /volumes/{name}`.
    pub fn inspect(&self, name: &str) -> Result<Value> {
        Ok(self.to_json(&self.get(name)?, None))
    }

    /// `GET /volumes`.
    pub fn list(&self, filters: &Filters) -> Result<Value> {
        let dangling = filters.bool("dangling")?;
        let usage = self.usage();
        let vols: Vec<Value> = self
            .all()
            .into_iter()
            .filter(|r| {
                let used = usage.get(&r.name).is_some_and(|u| !u.is_empty());
                dangling.is_none_or(|d| d != used)
                    && (filters.get("driver").is_empty() || filters.get("driver").iter().any(|d| *d == r.driver))
                    && (filters.get("name").is_empty() || filters.get("name").iter().any(|n| r.name.contains(n.as_str())))
                    && filters.labels_match("label", &r.labels)
                    && !filters.labels_excluded("label!", &r.labels)
            })
            .map(|r| self.to_json(&r, None))
            .collect();
        Ok(json!({"Volumes": vols, "Warnings": null}))
    }

    /// `DELETE /volumes/{name}`. `force` ignores a missing volume; a volume
    /// in use is never removed.
    pub fn remove(&self, name: &str, force: bool) -> Result<()> {
        let _guard = self.lock.lock().expect("volume lock poisoned");
        if self.read(name).is_none() {
            return if force { Ok(()) } else { Err(no_such(name)) };
        }
        if let Some(users) = self.usage().get(name).filter(|u| !u.is_empty()) {
            return Err(Error::conflict(format!("remove {name}: volume is in use - [{}]", users.join(" "))));
        }
        self.destroy(name)
    }

    fn destroy(&self, name: &str) -> Result<()> {
        let dir = self.paths.volume_dir(name);
        // Never delete through a mount: that would empty a bound host
        // directory. dockerd unmounts a volume with options here too.
        let data = self.paths.volume_data(name);
        {
            let mut active = self.active.lock().expect("active lock poisoned");
            if self.sys.is_mounted(&data) {
                let unmounted = self.sys.unmount(&data);
                if self.sys.is_mounted(&data) {
                    let e = unmounted.err().map(|e| e.to_string()).unwrap_or_else(|| "still mounted".into());
                    return Err(Error::internal(format!("remove {name}: error while unmounting volume path '{}': {e}", data.display())));
                }
            }
            active.remove(name);
        }
        // The record goes first: a crash halfway leaves no half volume.
        std::fs::remove_file(self.paths.volume_record(name)).map_err(|e| Error::io("remove volume", e))?;
        std::fs::remove_dir_all(&dir).map_err(|e| Error::io("remove volume", e))?;
        self.events.publish("volume", "destroy", name, BTreeMap::from([("driver".to_owned(), "local".to_owned())]));
        Ok(())
    }

    /// Removes the anonymous ones of `names` that no container uses any
    /// more (`docker rm -v`).
    pub fn remove_anonymous(&self, names: &[String]) {
        for name in names {
            if self.read(name).is_some_and(|r| r.anonymous) {
                if let Err(e) = self.remove(name, false) {
                    tracing::warn!(volume = %name, error = %e, "remove anonymous volume");
                }
            }
        }
    }

    /// `POST /volumes/prune`: unused anonymous volumes, or every unused
    /// volume with `all=true`.
    pub fn prune(&self, filters: &Filters) -> Result<Value> {
        let all = filters.bool("all")?.unwrap_or(false);
        let usage = self.usage();
        let mut deleted = Vec::new();
        let mut reclaimed = 0u64;
        for r in self.all() {
            // As dockerd, volumes with mount options are never pruned: their
            // data is not local, so nothing would be reclaimed.
            if usage.get(&r.name).is_some_and(|u| !u.is_empty())
                || (!all && !r.anonymous)
                || !r.options.is_empty()
                || !filters.labels_match("label", &r.labels)
                || filters.labels_excluded("label!", &r.labels)
            {
                continue;
            }
            let size = crate::snapshots::dir_size(&self.paths.volume_data(&r.name)).unwrap_or(0);
            if self.remove(&r.name, false).is_ok() {
                reclaimed += size;
                deleted.push(r.name);
            }
        }
        self.events.publish("volume", "prune", "", BTreeMap::from([("reclaimed".to_owned(), reclaimed.to_string())]));
        Ok(json!({"VolumesDeleted": deleted, "SpaceReclaimed": reclaimed}))
    }

    /// Volumes for `/system/df`, with size and reference count. As
    /// dockerd, volumes with options are left out (their data is not local;
    /// sizing an NFS mount could take long).
    pub fn disk_usage(&self) -> Vec<Value> {
        let usage = self.usage();
        self.all().iter().filter(|r| r.options.is_empty()).map(|r| self.to_json(r, Some(usage.get(&r.name).map(Vec::len).unwrap_or(0)))).collect()
    }

    /// Claims the volume for container `user` and returns the directory to
    /// bind into it. A volume with mount options is mounted by its first
    /// user (dockerd's error text on failure); a claim already held is not
    /// counted twice.
    pub fn mount(&self, name: &str, user: &str) -> Result<PathBuf> {
        let rec = self.get(name)?;
        let data = self.paths.volume_data(name);
        let mut active = self.active.lock().expect("active lock poisoned");
        if needs_mount(&rec.options) && !self.sys.is_mounted(&data) {
            let get = |k: &str| rec.options.get(k).map(String::as_str).unwrap_or_default();
            std::fs::create_dir_all(&data).map_err(|e| Error::io("create volume", e))?;
            self.sys.mount(get("device"), &data, get("type"), get("o")).map_err(|e| {
                Error::internal(format!("error while mounting volume '{}': failed to mount local volume: {e}", data.display()))
            })?;
            tracing::debug!(volume = %name, "mounted volume");
        }
        active.entry(name.to_owned()).or_default().insert(user.to_owned());
        Ok(data)
    }

    /// Drops every claim of container `user`; volumes left with no user are
    /// unmounted (their tmpfs content is gone, as with dockerd).
    pub fn release(&self, user: &str) {
        let mut active = self.active.lock().expect("active lock poisoned");
        let freed: Vec<String> = active
            .iter_mut()
            .filter_map(|(name, users)| (users.remove(user) && users.is_empty()).then(|| name.clone()))
            .collect();
        for name in freed {
            active.remove(&name);
            self.unmount_unused(&name);
        }
    }

    /// At start-up, after containers are reconciled: `claims` (volume,
    /// container) are the volumes of running containers, whose mounts stay;
    /// every other volume with options left mounted by an earlier engine is
    /// unmounted.
    pub fn adopt(&self, claims: impl IntoIterator<Item = (String, String)>) {
        let mut active = self.active.lock().expect("active lock poisoned");
        for (name, user) in claims {
            active.entry(name).or_default().insert(user);
        }
        for rec in self.all().into_iter().filter(|r| needs_mount(&r.options)) {
            if active.get(&rec.name).is_none_or(HashSet::is_empty) {
                self.unmount_unused(&rec.name);
            }
        }
    }

    /// Unmounts a volume no container holds. The caller holds `active`.
    fn unmount_unused(&self, name: &str) {
        let data = self.paths.volume_data(name);
        if self.read(name).is_some_and(|r| needs_mount(&r.options)) && self.sys.is_mounted(&data) {
            match self.sys.unmount(&data) {
                Ok(()) => tracing::debug!(volume = %name, "unmounted volume"),
                Err(e) => tracing::warn!(volume = %name, error = %e, "unmount volume"),
            }
        }
    }

    /// Publishes a `mount` or `unmount` event for a container's volume.
    pub fn event(&self, action: &str, name: &str, attrs: &[(&str, String)]) {
        let mut a: BTreeMap<String, String> = attrs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
        a.insert("driver".into(), "local".into());
        self.events.publish("volume", action, name, a);
    }

    /// Fills a volume that was never populated and is empty with the
    /// directory `src` (a descriptor inside a container's rootfs, resolved
    /// safely by the caller), keeping ownership and modes. Walks with
    /// `O_NOFOLLOW` only, so symlinks are copied, never followed.
    ///
    /// A tmpfs (or ramfs) volume is never filled: dockerd copies into a
    /// mount of its own that it drops before the container's, so its users
    /// never see image content there.
    pub fn populate(&self, name: &str, src: Option<BorrowedFd<'_>>) -> Result<()> {
        let _guard = self.lock.lock().expect("volume lock poisoned");
        let mut rec = self.get(name)?;
        if matches!(rec.options.get("type").map(String::as_str), Some("tmpfs" | "ramfs")) {
            return Ok(());
        }
        let Some(src) = src.filter(|_| !rec.populated) else { return Ok(()) };
        let data = self.paths.volume_data(name);
        let empty = std::fs::read_dir(&data).map(|mut d| d.next().is_none()).unwrap_or(false);
        if empty {
            let dst = rfs::open(&data, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
                .map_err(|e| Error::io("open volume", e.into()))?;
            let st = rfs::fstat(src).map_err(|e| Error::io("stat volume source", e.into()))?;
            if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                let src_dir = rfs::openat(src, ".", OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
                    .map_err(|e| Error::io("open volume source", e.into()))?;
                copy_dir(src_dir.as_fd(), dst.as_fd()).map_err(|e| Error::io("copy image content into volume", e.into()))?;
                // The volume's root takes the image directory's owner and mode.
                let _ = rfs::fchown(&dst, Some(rfs::Uid::from_raw(st.st_uid)), Some(rfs::Gid::from_raw(st.st_gid)));
                let _ = rfs::fchmod(&dst, Mode::from_raw_mode(st.st_mode & 0o7777));
            }
        }
        rec.populated = true;
        self.write(&rec)
    }
}

/// Copies the entries of `src` into `dst`, recursively, without following
/// symlinks.
fn copy_dir(src: BorrowedFd<'_>, dst: BorrowedFd<'_>) -> rustix::io::Result<()> {
    let names = crate::archive::sys::sorted_names(src).map_err(|_| rustix::io::Errno::IO)?;
    for name in names {
        let name = std::ffi::OsStr::from_bytes(&name);
        let st = rfs::statat(src, name, AtFlags::SYMLINK_NOFOLLOW)?;
        let mode = Mode::from_raw_mode(st.st_mode & 0o7777);
        let (uid, gid) = (Some(rfs::Uid::from_raw(st.st_uid)), Some(rfs::Gid::from_raw(st.st_gid)));
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => {
                rfs::mkdirat(dst, name, Mode::from_raw_mode(0o700))?;
                let s: OwnedFd = rfs::openat(src, name, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())?;
                let d: OwnedFd = rfs::openat(dst, name, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())?;
                copy_dir(s.as_fd(), d.as_fd())?;
                rfs::fchown(&d, uid, gid)?;
                rfs::fchmod(&d, mode)?;
            }
            FileType::RegularFile => {
                let s = rfs::openat(src, name, OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())?;
                let d = rfs::openat(dst, name, OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::from_raw_mode(0o600))?;
                let mut sf = std::fs::File::from(s);
                let mut df = std::fs::File::from(d);
                std::io::copy(&mut sf, &mut df).map_err(|e| rustix::io::Errno::from_io_error(&e).unwrap_or(rustix::io::Errno::IO))?;
                rfs::fchown(&df, uid, gid)?;
                rfs::fchmod(&df, mode)?;
            }
            FileType::Symlink => {
                let target = rfs::readlinkat(src, name, Vec::new())?;
                rfs::symlinkat(target.as_c_str(), dst, name)?;
                rfs::chownat(dst, name, uid, gid, AtFlags::SYMLINK_NOFOLLOW)?;
            }
            FileType::Fifo | FileType::CharacterDevice | FileType::BlockDevice | FileType::Socket => {
                let ft = FileType::from_raw_mode(st.st_mode);
                rfs::mknodat(dst, name, ft, mode, st.st_rdev)?;
                rfs::chownat(dst, name, uid, gid, AtFlags::SYMLINK_NOFOLLOW)?;
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service() -> (tempfile::TempDir, Arc<Volumes>) {
        let (dir, v, _) = recorded();
        (dir, v)
    }

    /// Records mount calls; what is mounted is a set of paths.
    #[derive(Default, Clone)]
    struct FakeMounts {
        calls: Arc<Mutex<Vec<String>>>,
        mounted: Arc<Mutex<HashSet<PathBuf>>>,
        fail_with: Option<i32>,
    }

    impl MountSys for FakeMounts {
        fn mount(&self, device: &str, target: &Path, fstype: &str, options: &str) -> std::result::Result<(), MountError> {
            let name = target.parent().unwrap().file_name().unwrap().to_string_lossy().into_owned();
            self.calls.lock().unwrap().push(format!("mount {name} {fstype} {device} {options}"));
            if let Some(errno) = self.fail_with {
                let (flags, data) = parse_mount_options(options);
                return Err(MountError { op: "mount", source: device.into(), target: target.display().to_string(), flags, data, errno });
            }
            self.mounted.lock().unwrap().insert(target.to_owned());
            Ok(())
        }
        fn unmount(&self, target: &Path) -> std::io::Result<()> {
            let name = target.parent().unwrap().file_name().unwrap().to_string_lossy().into_owned();
            self.calls.lock().unwrap().push(format!("unmount {name}"));
            self.mounted.lock().unwrap().remove(target);
            Ok(())
        }
        fn is_mounted(&self, target: &Path) -> bool {
            self.mounted.lock().unwrap().contains(target)
        }
    }

    impl FakeMounts {
        fn take(&self) -> Vec<String> {
            std::mem::take(&mut *self.calls.lock().unwrap())
        }
    }

    fn recorded() -> (tempfile::TempDir, Arc<Volumes>, FakeMounts) {
        recorded_with(FakeMounts::default())
    }

    fn recorded_with(fake: FakeMounts) -> (tempfile::TempDir, Arc<Volumes>, FakeMounts) {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path().join("data"), dir.path().join("exec"));
        let v = Volumes::open_with(&paths, Arc::new(EventBus::new()), Box::new(fake.clone())).unwrap();
        (dir, v, fake)
    }

    fn opts(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn tmpfs_opts() -> BTreeMap<String, String> {
        opts(&[("type", "tmpfs"), ("device", "tmpfs"), ("o", "size=64m,uid=1000")])
    }

    #[test]
    fn names_follow_dockerds_rule() {
        assert!(valid_name("data"));
        assert!(valid_name("a.b-c_d"));
        assert!(!valid_name("a"));
        assert!(!valid_name("../x"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name(".x"));
        assert!(!valid_name(""));
    }

    #[test]
    fn bad_names_are_refused_with_dockerds_message() {
        let (_d, v) = service();
        let e = v.create(Some("a/b"), None, BTreeMap::new(), BTreeMap::new()).unwrap_err();
        assert_eq!(e.kind, crate::error::Kind::InvalidArgument);
        assert!(e.message.contains("\"a/b\" includes invalid characters for a local volume name, only \"[a-zA-Z0-9][a-zA-Z0-9_.-]\" are allowed. If you intended to pass a host directory, use absolute path"), "{}", e.message);
    }

    #[test]
    fn create_is_idempotent_and_remove_refuses_volumes_in_use() {
        let (_d, v) = service();
        let a = v.create(Some("data"), None, BTreeMap::from([("k".into(), "v".into())]), BTreeMap::new()).unwrap();
        let b = v.create(Some("data"), Some("local"), BTreeMap::new(), BTreeMap::new()).unwrap();
        assert_eq!(a.created, b.created);
        assert_eq!(b.labels.get("k").map(String::as_str), Some("v"));
        v.set_usage(Arc::new(|| HashMap::from([("data".to_owned(), vec!["c1".to_owned()])])));
        let e = v.remove("data", true).unwrap_err();
        assert_eq!(e.message, "remove data: volume is in use - [c1]");
        v.set_usage(Arc::new(HashMap::new));
        v.remove("data", false).unwrap();
        assert_eq!(v.get("data").unwrap_err().message, "get data: no such volume");
        v.remove("data", true).unwrap();
    }

    #[test]
    fn unknown_drivers_are_not_found() {
        let (_d, v) = service();
        let e = v.create(Some("x1"), Some("nfs"), BTreeMap::new(), BTreeMap::new()).unwrap_err();
        assert_eq!(e.kind, crate::error::Kind::NotFound);
    }

    #[test]
    fn prune_removes_anonymous_unless_all() {
        let (_d, v) = service();
        v.create(Some("named"), None, BTreeMap::new(), BTreeMap::new()).unwrap();
        let anon = v.create(None, None, BTreeMap::new(), BTreeMap::new()).unwrap();
        assert_eq!(anon.name.len(), 64);
        let out = v.prune(&Filters::default()).unwrap();
        assert_eq!(out["VolumesDeleted"], json!([anon.name]));
        let all = Filters::parse(Some(r#"{"all":["true"]}"#), &["all"]).unwrap();
        let out = v.prune(&all).unwrap();
        assert_eq!(out["VolumesDeleted"], json!(["named"]));
    }

    #[test]
    fn list_filters_dangling_and_labels() {
        let (_d, v) = service();
        v.create(Some("used"), None, BTreeMap::new(), BTreeMap::new()).unwrap();
        v.create(Some("free"), None, BTreeMap::from([("tier".into(), "db".into())]), BTreeMap::new()).unwrap();
        v.set_usage(Arc::new(|| HashMap::from([("used".to_owned(), vec!["c1".to_owned()])])));
        let names = |f: &str| -> Vec<String> {
            let f = Filters::parse(Some(f), &["dangling", "label", "name", "driver"]).unwrap();
            v.list(&f).unwrap()["Volumes"].as_array().unwrap().iter().map(|x| x["Name"].as_str().unwrap().to_owned()).collect()
        };
        assert_eq!(names(r#"{"dangling":["true"]}"#), ["free"]);
        assert_eq!(names(r#"{"dangling":["false"]}"#), ["used"]);
        assert_eq!(names(r#"{"label":["tier=db"]}"#), ["free"]);
        assert_eq!(names(r#"{"name":["us"]}"#), ["used"]);
    }

    #[test]
    fn populate_copies_once_without_following_symlinks() {
        let (d, v) = service();
        v.create(Some("etc"), None, BTreeMap::new(), BTreeMap::new()).unwrap();
        let src = d.path().join("src");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("sub/f"), "hi").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", src.join("link")).unwrap();
        let fd = rfs::open(&src, OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).unwrap();
        v.populate("etc", Some(fd.as_fd())).unwrap();
        let data = v.data_path("etc").unwrap();
        assert_eq!(std::fs::read_to_string(data.join("sub/f")).unwrap(), "hi");
        assert_eq!(std::fs::read_link(data.join("link")).unwrap(), PathBuf::from("/etc/passwd"));
        std::fs::remove_dir_all(data.join("sub")).unwrap();
        v.populate("etc", Some(fd.as_fd())).unwrap();
        assert!(!data.join("sub").exists());
    }

    #[test]
    fn options_are_checked_with_dockerds_words() {
        let (_d, v) = service();
        let err = |o: &[(&str, &str)]| v.create(Some("o1"), None, BTreeMap::new(), opts(o)).unwrap_err();
        let e = err(&[("foo", "bar")]);
        assert_eq!((e.kind, e.message.as_str()), (crate::error::Kind::InvalidArgument, r#"create o1: invalid option: "foo""#));
        assert_eq!(err(&[("type", "tmpfs")]).message, r#"create o1: missing required option: "device""#);
        assert_eq!(err(&[("device", "tmpfs")]).message, r#"create o1: missing required option: "type""#);
        assert_eq!(err(&[("o", "size=1m")]).message, r#"create o1: missing required option: "device""#);
        assert_eq!(err(&[("size", "10m")]).message, "create o1: quota size requested but no quota support");
        assert_eq!(err(&[("size", "lots")]).message, "create o1: invalid size: 'lots'");
        assert!(v.get("o1").is_err(), "a refused volume is not created");
        let rec = v.create(Some("o2"), None, BTreeMap::new(), tmpfs_opts()).unwrap();
        assert_eq!(rec.options, tmpfs_opts());
        assert_eq!(v.inspect("o2").unwrap()["Options"], json!({"device": "tmpfs", "o": "size=64m,uid=1000", "type": "tmpfs"}));
    }

    #[test]
    fn mount_options_split_into_flags_and_data_like_moby() {
        assert_eq!(parse_mount_options("bind"), (libc::MS_BIND, String::new()));
        assert_eq!(parse_mount_options("rbind,ro"), (libc::MS_BIND | libc::MS_REC | libc::MS_RDONLY, String::new()));
        assert_eq!(parse_mount_options("size=64m,uid=1000,noexec"), (libc::MS_NOEXEC, "size=64m,uid=1000".to_owned()));
        assert_eq!(parse_mount_options("ro,rw"), (0, String::new()));
        assert_eq!(parse_mount_options(""), (0, String::new()));
    }

    #[test]
    fn mount_errors_read_like_dockerds() {
        let e = MountError { op: "mount", source: "/nonexistent".into(), target: "/v/_data".into(), flags: libc::MS_BIND, data: String::new(), errno: libc::ENOENT };
        assert_eq!(e.to_string(), "mount /nonexistent:/v/_data, flags: 0x1000: no such file or directory");
        let e = MountError { op: "mount", source: "tmpfs".into(), target: "/v/_data".into(), flags: 0, data: "size=1m,bogus=1".into(), errno: libc::EINVAL };
        assert_eq!(e.to_string(), "mount tmpfs:/v/_data, data: size=1m,bogus=1: invalid argument");
    }

    #[test]
    fn sizes_parse_like_go_units() {
        assert_eq!(ram_in_bytes("64m"), Some(64 << 20));
        assert_eq!(ram_in_bytes("1.5GiB"), Some(3 << 29));
        assert_eq!(ram_in_bytes("512"), Some(512));
        assert_eq!(ram_in_bytes("0"), Some(0));
        assert_eq!(ram_in_bytes("10 kb"), Some(10240));
        assert_eq!(ram_in_bytes("m"), None);
        assert_eq!(ram_in_bytes("-1"), None);
    }

    #[test]
    fn first_user_mounts_and_last_user_unmounts() {
        let (_d, v, fake) = recorded();
        v.create(Some("tv"), None, BTreeMap::new(), tmpfs_opts()).unwrap();
        v.create(Some("plain"), None, BTreeMap::new(), BTreeMap::new()).unwrap();
        let data = v.mount("tv", "c1").unwrap();
        assert!(data.ends_with("volumes/tv/_data"));
        v.mount("tv", "c2").unwrap();
        v.mount("tv", "c2").unwrap();
        v.mount("plain", "c1").unwrap();
        assert_eq!(fake.take(), ["mount tv tmpfs tmpfs size=64m,uid=1000"]);
        v.release("c1");
        assert!(fake.take().is_empty(), "c2 still uses it");
        v.release("c2");
        assert_eq!(fake.take(), ["unmount tv"]);
        v.release("c2");
        assert!(fake.take().is_empty());
        v.mount("tv", "c3").unwrap();
        assert_eq!(fake.take(), ["mount tv tmpfs tmpfs size=64m,uid=1000"]);
    }

    #[test]
    fn failed_mount_reports_the_volume_path_and_claims_nothing() {
        let (_d, v, fake) = recorded_with(FakeMounts { fail_with: Some(libc::ENODEV), ..FakeMounts::default() });
        v.create(Some("bad"), None, BTreeMap::new(), opts(&[("type", "bogusfs"), ("device", "nodev")])).unwrap();
        let e = v.mount("bad", "c1").unwrap_err();
        let data = v.paths.volume_data("bad");
        assert_eq!(e.message, format!("error while mounting volume '{0}': failed to mount local volume: mount nodev:{0}: no such device", data.display()));
        assert!(v.active.lock().unwrap().get("bad").is_none());
        fake.take();
    }

    #[test]
    fn remove_unmounts_a_mounted_volume_first() {
        let (_d, v, fake) = recorded();
        v.create(Some("tv"), None, BTreeMap::new(), tmpfs_opts()).unwrap();
        v.mount("tv", "c1").unwrap();
        fake.take();
        v.remove("tv", false).unwrap();
        assert_eq!(fake.take(), ["unmount tv"]);
        assert!(v.get("tv").is_err());
    }

    #[test]
    fn adopt_keeps_mounts_of_running_containers_and_drops_the_rest() {
        let fake = FakeMounts::default();
        let (_d, v, _) = recorded_with(fake.clone());
        v.create(Some("kept"), None, BTreeMap::new(), tmpfs_opts()).unwrap();
        v.create(Some("stale"), None, BTreeMap::new(), tmpfs_opts()).unwrap();
        // Mounted by an engine that went away.
        v.mount("kept", "old").unwrap();
        v.mount("stale", "old").unwrap();
        fake.take();
        let restarted = Volumes::open_with(&v.paths, Arc::new(EventBus::new()), Box::new(fake.clone())).unwrap();
        restarted.adopt([("kept".to_owned(), "running".to_owned())]);
        assert_eq!(fake.take(), ["unmount stale"]);
        restarted.mount("kept", "other").unwrap();
        assert!(fake.take().is_empty(), "the adopted mount is reused");
        restarted.release("running");
        restarted.release("other");
        assert_eq!(fake.take(), ["unmount kept"]);
    }

    #[test]
    fn prune_skips_volumes_with_options_and_honours_label_not() {
        let (_d, v, _) = recorded();
        v.create(Some("lk1"), None, BTreeMap::from([("keep".into(), "yes".into())]), BTreeMap::new()).unwrap();
        v.create(Some("lk2"), None, BTreeMap::from([("keep".into(), "no".into())]), BTreeMap::new()).unwrap();
        v.create(Some("lk3"), None, BTreeMap::new(), BTreeMap::new()).unwrap();
        v.create(Some("tv"), None, BTreeMap::new(), tmpfs_opts()).unwrap();
        let f = |raw: &str| Filters::parse(Some(raw), &["label", "label!", "all"]).unwrap();
        let out = v.prune(&f(r#"{"all":["true"],"label!":["keep"]}"#)).unwrap();
        assert_eq!(out["VolumesDeleted"], json!(["lk3"]));
        let out = v.prune(&f(r#"{"all":["true"],"label!":["keep=yes"]}"#)).unwrap();
        assert_eq!(out["VolumesDeleted"], json!(["lk2"]));
        let out = v.prune(&f(r#"{"all":["true"]}"#)).unwrap();
        assert_eq!(out["VolumesDeleted"], json!(["lk1"]));
        assert!(v.get("tv").is_ok());
    }

    #[test]
    fn list_excludes_label_not() {
        let (_d, v) = service();
        v.create(Some("lk1"), None, BTreeMap::from([("keep".into(), "yes".into())]), BTreeMap::new()).unwrap();
        v.create(Some("lk2"), None, BTreeMap::from([("keep".into(), "no".into())]), BTreeMap::new()).unwrap();
        v.create(Some("lk3"), None, BTreeMap::new(), BTreeMap::new()).unwrap();
        let names = |raw: &str| -> Vec<String> {
            let f = Filters::parse(Some(raw), &["label", "label!"]).unwrap();
            v.list(&f).unwrap()["Volumes"].as_array().unwrap().iter().map(|x| x["Name"].as_str().unwrap().to_owned()).collect()
        };
        assert_eq!(names(r#"{"label!":["keep"]}"#), ["lk3"]);
        assert_eq!(names(r#"{"label!":["keep=yes"]}"#), ["lk2", "lk3"]);
    }
}

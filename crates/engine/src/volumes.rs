//! Volumes with dockerd's `local` driver: each volume is a directory
//! `<data-root>/volumes/<name>/_data` plus a small JSON record (labels,
//! options, creation time, whether it is anonymous).
//!
//! Owns volume records, names, and filling a new volume from image content.
//! Does not own which containers use a volume: the container service tells
//! it through the usage callback (`set_usage`), as it does for images.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
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
        std::fs::create_dir_all(paths.volumes_dir())?;
        Ok(Arc::new(Volumes { paths: paths.clone(), events, lock: Mutex::new(()), usage: RwLock::new(None) }))
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
        for key in options.keys() {
            if !matches!(key.as_str(), "type" | "device" | "o" | "size") {
                return Err(Error::invalid(format!("create {name}: invalid option key: {key:?}")));
            }
        }
        if !options.is_empty() {
            return Err(Error::invalid(format!("create {name}: mount options (type, device, o, size) are not supported by this local driver")));
        }
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
            "Labels": rec.labels,
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
            if usage.get(&r.name).is_some_and(|u| !u.is_empty()) || (!all && !r.anonymous) || !filters.labels_match("label", &r.labels) {
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

    /// Volumes for `/system/df`, with size and reference count.
    pub fn disk_usage(&self) -> Vec<Value> {
        let usage = self.usage();
        self.all().iter().map(|r| self.to_json(r, Some(usage.get(&r.name).map(Vec::len).unwrap_or(0)))).collect()
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
    pub fn populate(&self, name: &str, src: Option<BorrowedFd<'_>>) -> Result<()> {
        let _guard = self.lock.lock().expect("volume lock poisoned");
        let mut rec = self.get(name)?;
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
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path().join("data"), dir.path().join("exec"));
        let v = Volumes::open(&paths, Arc::new(EventBus::new())).unwrap();
        (dir, v)
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
}

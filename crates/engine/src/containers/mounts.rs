//! A container's bind, volume and tmpfs mounts, as dockerd's
//! `registerMountPoints` and its Linux mount parser make them: parsed from
//! `HostConfig.Binds`, `HostConfig.Mounts`, `HostConfig.VolumesFrom` and
//! the image's `Volumes` at create, recorded, and turned into OCI mounts at
//! start.
//!
//! Owns the mount points of a container. Does not own volumes (`volumes`)
//! or the rest of the mount table (`spec`).

use std::collections::{BTreeMap, HashSet};
use std::os::fd::AsFd;
use std::path::Path;

use rustix::fs::{self as rfs, Mode, OFlags};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{spec, Containers, Record};
use crate::error::{Error, Result};

/// One mount point of a container.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MountPoint {
    /// `bind`, `volume` or `tmpfs`.
    #[serde(rename = "type")]
    pub typ: String,
    /// The volume's name (volumes only).
    #[serde(default)]
    pub name: String,
    /// The host path (binds only).
    #[serde(default)]
    pub source: String,
    pub destination: String,
    pub rw: bool,
    #[serde(default)]
    pub mode: String,
    #[serde(default)]
    pub propagation: String,
    /// Fill a new, empty volume with the image's content at `destination`.
    #[serde(default)]
    pub copy_data: bool,
    /// `-v` creates a missing host directory; `--mount` refuses it.
    #[serde(default)]
    pub create_source: bool,
    /// tmpfs mount options (`size=`, `mode=`).
    #[serde(default)]
    pub tmpfs_options: Vec<String>,
    /// Volume labels asked for with `--mount volume-label=` (used when the
    /// volume is created).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub volume_labels: BTreeMap<String, String>,
    /// Local driver options asked for with `--mount volume-opt=` (used
    /// when the volume is created).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub volume_options: BTreeMap<String, String>,
}

/// Lexical clean of a container path (Go's `path.Clean`), keeping a
/// relative path relative so validation can refuse it.
pub(crate) fn clean(p: &str) -> String {
    let out = super::spec::clean_path(p);
    if p.starts_with('/') {
        out
    } else {
        out[1..].to_owned()
    }
}

/// moby `ValidMountMode`: comma-separated, at most one of each kind.
fn valid_mode(mode: &str) -> bool {
    if mode.is_empty() {
        return true;
    }
    let (mut rw, mut label, mut prop, mut copy) = (0, 0, 0, 0);
    for o in mode.split(',') {
        match o {
            "rw" | "ro" => rw += 1,
            "z" | "Z" => label += 1,
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" => prop += 1,
            "nocopy" => copy += 1,
            _ => return false,
        }
    }
    rw <= 1 && label <= 1 && prop <= 1 && copy <= 1
}

fn mode_has<'a>(mode: &'a str, set: &[&str]) -> Option<&'a str> {
    mode.split(',').find(|o| set.contains(o))
}

const PROPAGATIONS: [&str; 6] = ["private", "rprivate", "shared", "rshared", "slave", "rslave"];

/// Parses one `HostConfig.Binds` entry (`src:dst[:mode]`).
pub(crate) fn parse_bind(raw: &str) -> Result<MountPoint> {
    let spec_err = || Error::invalid(format!("invalid volume specification: '{raw}'"));
    let arr: Vec<&str> = raw.splitn(4, ':').collect();
    if arr[0].is_empty() {
        return Err(spec_err());
    }
    let (source, target, mode) = match arr.as_slice() {
        [t] => ("", *t, ""),
        [s, t] if !valid_mode(t) => (*s, *t, ""),
        [s, t, m] => (*s, *t, *m),
        _ => return Err(spec_err()),
    };
    if !valid_mode(mode) {
        return Err(Error::invalid(format!("invalid mode: {mode}")));
    }
    let typ = if source.starts_with('/') { "bind" } else { "volume" };
    let fail = |e: String| Error::invalid(format!("invalid volume specification: '{raw}': invalid mount config for type {typ:?}: {e}"));
    if target.is_empty() {
        return Err(fail("field Target must not be empty".into()));
    }
    spec::check_mount_destination(target).map_err(|e| fail(e.to_string()))?;
    let propagation = mode_has(mode, &PROPAGATIONS);
    let nocopy = mode_has(mode, &["nocopy"]).is_some();
    if typ == "bind" && nocopy {
        return Err(fail("field VolumeOptions must not be specified".into()));
    }
    if typ == "volume" && propagation.is_some() {
        return Err(fail("field BindOptions must not be specified".into()));
    }
    Ok(MountPoint {
        typ: typ.into(),
        name: if typ == "volume" { source.to_owned() } else { String::new() },
        source: if typ == "bind" { clean(source) } else { String::new() },
        destination: clean(target),
        rw: mode_has(mode, &["ro"]).is_none(),
        mode: mode.to_owned(),
        propagation: if typ == "bind" { propagation.unwrap_or("rprivate").to_owned() } else { String::new() },
        copy_data: typ == "volume" && !nocopy,
        create_source: true,
        tmpfs_options: Vec::new(),
        volume_labels: BTreeMap::new(),
        volume_options: BTreeMap::new(),
    })
}

/// Parses one `HostConfig.Mounts` entry (already checked by
/// `spec::validate`).
pub(crate) fn parse_mount(m: &Value) -> Result<MountPoint> {
    let s = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_owned();
    let typ = s(m.get("Type"));
    let target = clean(&s(m.get("Target")));
    let source = s(m.get("Source"));
    let ro = m.get("ReadOnly").and_then(Value::as_bool).unwrap_or(false);
    let mut mp = MountPoint {
        typ: typ.clone(),
        name: String::new(),
        source: String::new(),
        destination: target,
        rw: !ro,
        mode: String::new(),
        propagation: String::new(),
        copy_data: false,
        create_source: false,
        tmpfs_options: Vec::new(),
        volume_labels: BTreeMap::new(),
        volume_options: BTreeMap::new(),
    };
    match typ.as_str() {
        "bind" => {
            mp.source = clean(&source);
            mp.propagation = m.pointer("/BindOptions/Propagation").and_then(Value::as_str).filter(|p| !p.is_empty()).unwrap_or("rprivate").to_owned();
        }
        "volume" => {
            mp.name = source;
            mp.copy_data = !m.pointer("/VolumeOptions/NoCopy").and_then(Value::as_bool).unwrap_or(false);
            if let Some(d) = m.pointer("/VolumeOptions/DriverConfig/Name").and_then(Value::as_str).filter(|d| !d.is_empty() && *d != "local") {
                return Err(Error::not_found(format!("error looking up volume plugin {d}: plugin \"{d}\" not found")));
            }
            mp.volume_labels = m.pointer("/VolumeOptions/Labels").and_then(|l| serde_json::from_value(l.clone()).ok()).unwrap_or_default();
            mp.volume_options = m.pointer("/VolumeOptions/DriverConfig/Options").and_then(|o| serde_json::from_value(o.clone()).ok()).unwrap_or_default();
        }
        "tmpfs" => {
            if let Some(size) = m.pointer("/TmpfsOptions/SizeBytes").and_then(Value::as_i64).filter(|s| *s > 0) {
                mp.tmpfs_options.push(format!("size={size}"));
            }
            if let Some(mode) = m.pointer("/TmpfsOptions/Mode").and_then(Value::as_u64).filter(|m| *m > 0) {
                mp.tmpfs_options.push(format!("mode={mode:o}"));
            }
        }
        other => return Err(Error::invalid(format!("mount type {other:?} is not supported"))),
    }
    Ok(mp)
}

/// The mount points of a new container, in dockerd's order: volumes from
/// other containers, then binds (replacing those), then `Mounts`, then
/// anonymous volumes for the image's `Volumes` no mount covers. Volumes
/// without a name are anonymous and get one when created.
pub(crate) fn plan(host_config: &Value, config: &Value, volumes_from: impl Fn(&str) -> Result<Vec<MountPoint>>) -> Result<Vec<MountPoint>> {
    let strings = |k: &str| -> Vec<String> { host_config.get(k).and_then(|v| serde_json::from_value(v.clone()).ok()).unwrap_or_default() };
    let tmpfs: BTreeMap<String, String> = host_config.get("Tmpfs").and_then(|v| serde_json::from_value(v.clone()).ok()).unwrap_or_default();
    let tmpfs_dests: HashSet<String> = tmpfs.keys().map(|d| clean(d)).collect();
    let mut out: Vec<MountPoint> = Vec::new();
    for spec in strings("VolumesFrom") {
        let (id, mode) = spec.split_once(':').unwrap_or((spec.as_str(), ""));
        if !valid_mode(mode) {
            return Err(Error::invalid(format!("invalid mode: {mode}")));
        }
        let read_write = mode_has(mode, &["ro"]).is_none();
        for mut m in volumes_from(id)? {
            m.rw = m.rw && read_write;
            m.copy_data = false;
            out.retain(|x| x.destination != m.destination);
            out.push(m);
        }
    }
    let mut seen: HashSet<String> = HashSet::new();
    for raw in strings("Binds") {
        let m = parse_bind(&raw)?;
        if !seen.insert(m.destination.clone()) || tmpfs_dests.contains(&m.destination) {
            return Err(Error::invalid(format!("Duplicate mount point: {}", m.destination)));
        }
        out.retain(|x| x.destination != m.destination);
        out.push(m);
    }
    let mounts: Vec<Value> = host_config.get("Mounts").and_then(|v| v.as_array().cloned()).unwrap_or_default();
    for raw in &mounts {
        let m = parse_mount(raw)?;
        if !seen.insert(m.destination.clone()) || tmpfs_dests.contains(&m.destination) {
            return Err(Error::invalid(format!("Duplicate mount point: {}", m.destination)));
        }
        out.retain(|x| x.destination != m.destination);
        out.push(m);
    }
    let image_volumes: BTreeMap<String, Value> = config.get("Volumes").and_then(|v| serde_json::from_value(v.clone()).ok()).unwrap_or_default();
    for dest in image_volumes.keys() {
        let dest = clean(dest);
        if dest == "/" || !dest.starts_with('/') || out.iter().any(|m| m.destination == dest) || tmpfs_dests.contains(&dest) {
            continue;
        }
        out.push(MountPoint {
            typ: "volume".into(),
            name: String::new(),
            source: String::new(),
            destination: dest,
            rw: true,
            mode: String::new(),
            propagation: String::new(),
            copy_data: true,
            create_source: false,
            tmpfs_options: Vec::new(),
            volume_labels: BTreeMap::new(),
            volume_options: BTreeMap::new(),
        });
    }
    Ok(out)
}

impl Containers {
    /// Parses the request's mounts and creates the volumes they name.
    /// On failure, anonymous volumes made here are removed again.
    pub(crate) fn prepare_mounts(&self, host_config: &Value, config: &Value) -> Result<Vec<MountPoint>> {
        let mut mounts = plan(host_config, config, |id| Ok(self.find(id)?.record().mounts))?;
        let mut made: Vec<String> = Vec::new();
        for m in mounts.iter_mut().filter(|m| m.typ == "volume") {
            let name = (!m.name.is_empty()).then(|| m.name.clone());
            match self.volumes.create(name.as_deref(), None, m.volume_labels.clone(), m.volume_options.clone()) {
                Ok(v) => {
                    if name.is_none() {
                        made.push(v.name.clone());
                    }
                    m.name = v.name;
                }
                Err(e) => {
                    self.volumes.remove_anonymous(&made);
                    return Err(e);
                }
            }
        }
        Ok(mounts)
    }

    /// OCI mounts for a container's mount points, for a rootfs mounted at
    /// `rootfs`. Destinations are resolved inside the rootfs (a symlink in
    /// the image cannot send a mount out of it); volumes are claimed for
    /// the container (those with options are mounted: `release_volumes`
    /// undoes it) and new ones filled with the image's content at their
    /// destination.
    pub(crate) fn oci_mounts(&self, rec: &Record, rootfs: &Path) -> Result<Vec<Value>> {
        if rec.mounts.is_empty() {
            return Ok(Vec::new());
        }
        let out = self.oci_mounts_claiming(rec, rootfs);
        if out.is_err() {
            self.volumes.release(&rec.id);
        }
        out
    }

    /// Releases the volumes a container claimed at start (at its exit, or
    /// when its start fails); the last user of a volume with options
    /// unmounts it.
    pub(crate) fn release_volumes(&self, id: &str) {
        self.volumes.release(id);
    }

    /// After reconcile: the volumes of running containers stay mounted and
    /// claimed by them; other volumes left mounted are unmounted.
    pub(crate) fn readopt_volumes(&self) {
        let mut claims = Vec::new();
        for h in self.all() {
            let r = h.record();
            if r.state.running {
                claims.extend(r.mounts.iter().filter(|m| m.typ == "volume").map(|m| (m.name.clone(), r.id.clone())));
            }
        }
        self.volumes.adopt(claims);
    }

    fn oci_mounts_claiming(&self, rec: &Record, rootfs: &Path) -> Result<Vec<Value>> {
        let root = rfs::open(rootfs, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()).map_err(|e| Error::io("open rootfs", e.into()))?;
        let mut out = Vec::new();
        for m in &rec.mounts {
            let dest = super::fs::resolve_in_root(root.as_fd(), &m.destination).map_err(|e| Error::io(format!("resolve mount destination {}", m.destination), e))?;
            if dest == "/" {
                return Err(Error::invalid("invalid specification: destination can't be '/'"));
            }
            let mut options: Vec<String> = Vec::new();
            let source = match m.typ.as_str() {
                "bind" => {
                    if std::fs::symlink_metadata(&m.source).is_err() {
                        if !m.create_source {
                            return Err(Error::invalid(format!("invalid mount config for type \"bind\": bind source path does not exist: {}", m.source)));
                        }
                        std::fs::create_dir_all(&m.source).map_err(|e| Error::io(format!("create bind source {}", m.source), e))?;
                    }
                    options.extend(["rbind".to_owned(), m.propagation.clone()]);
                    m.source.clone()
                }
                "volume" => {
                    let data = self.volumes.mount(&m.name, &rec.id)?;
                    if m.copy_data {
                        let src = super::fs::open_path_in_root(root.as_fd(), &dest).ok();
                        self.volumes.populate(&m.name, src.as_ref().map(|f| f.as_fd()))?;
                    }
                    options.extend(["rbind".to_owned(), "rprivate".to_owned()]);
                    data.display().to_string()
                }
                "tmpfs" => {
                    let mut o: Vec<String> = ["noexec", "nosuid", "nodev", "rprivate"].map(String::from).to_vec();
                    o.extend(m.tmpfs_options.iter().cloned());
                    if !m.rw {
                        o.push("ro".into());
                    }
                    out.push(json!({"destination": dest, "type": "tmpfs", "source": "tmpfs", "options": o}));
                    continue;
                }
                other => return Err(Error::invalid(format!("mount type {other:?} is not supported"))),
            };
            // What is read-only at the source (a volume made with
            // `o=bind,ro`, a read-only host path) stays so: crun remounts a
            // bind with the flags asked for, which would clear it (runc,
            // under dockerd, keeps it). As dockerd, no explicit `rw`.
            let read_only_source = rfs::statvfs(&source).is_ok_and(|s| s.f_flag.contains(rfs::StatVfsMountFlags::RDONLY));
            if !m.rw || read_only_source {
                options.push("ro".to_owned());
            }
            out.push(json!({"destination": dest, "type": "bind", "source": source, "options": options}));
        }
        Ok(out)
    }

    /// Publishes `mount` (at start) or `unmount` (at exit) for each volume.
    pub(crate) fn volume_events(&self, rec: &Record, action: &str) {
        for m in rec.mounts.iter().filter(|m| m.typ == "volume") {
            let mut attrs = vec![("container", rec.id.clone())];
            if action == "mount" {
                attrs.push(("destination", m.destination.clone()));
                attrs.push(("propagation", m.propagation.clone()));
                attrs.push(("read/write", m.rw.to_string()));
            }
            self.volumes.event(action, &m.name, &attrs);
        }
    }

    /// A mount point as inspect and `ps` show it.
    pub(crate) fn mount_json(&self, m: &MountPoint) -> Value {
        match m.typ.as_str() {
            "volume" => json!({
                "Type": "volume", "Name": m.name, "Source": self.paths.volume_data(&m.name),
                "Destination": m.destination, "Driver": "local", "Mode": if m.mode.is_empty() { "z" } else { m.mode.as_str() },
                "RW": m.rw, "Propagation": m.propagation,
            }),
            _ => json!({
                "Type": m.typ, "Source": m.source, "Destination": m.destination,
                "Mode": m.mode, "RW": m.rw, "Propagation": m.propagation,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none(_: &str) -> Result<Vec<MountPoint>> {
        Err(Error::not_found("No such container"))
    }

    #[test]
    fn binds_parse_like_dockerd() {
        let b = parse_bind("/srv/x:/data:ro,rshared").unwrap();
        assert_eq!((b.typ.as_str(), b.source.as_str(), b.destination.as_str(), b.rw, b.propagation.as_str()), ("bind", "/srv/x", "/data", false, "rshared"));
        let v = parse_bind("vol:/data:nocopy").unwrap();
        assert_eq!((v.typ.as_str(), v.name.as_str(), v.copy_data, v.rw), ("volume", "vol", false, true));
        assert_eq!(parse_bind("/tmp:rel").unwrap_err().message, "invalid volume specification: '/tmp:rel': invalid mount config for type \"bind\": invalid mount path: 'rel' mount path must be absolute");
        assert_eq!(parse_bind("/tmp:/").unwrap_err().message, "invalid volume specification: '/tmp:/': invalid mount config for type \"bind\": invalid specification: destination can't be '/'");
        assert_eq!(parse_bind("/a:/b:bogus").unwrap_err().message, "invalid mode: bogus");
        assert_eq!(parse_bind(":/b").unwrap_err().message, "invalid volume specification: ':/b'");
    }

    #[test]
    fn duplicates_are_refused_and_image_volumes_fill_gaps() {
        let hc = json!({"Binds": ["/a:/x", "/b:/x/"]});
        assert_eq!(plan(&hc, &json!({}), none).unwrap_err().message, "Duplicate mount point: /x");
        let hc = json!({"Binds": ["/a:/x"], "Mounts": [{"Type": "tmpfs", "Target": "/x"}]});
        assert_eq!(plan(&hc, &json!({}), none).unwrap_err().message, "Duplicate mount point: /x");
        let hc = json!({"Binds": ["/a:/data"], "Tmpfs": {"/run": ""}});
        let m = plan(&hc, &json!({"Volumes": {"/data": {}, "/run": {}, "/cache": {}}}), none).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!((m[1].destination.as_str(), m[1].name.as_str(), m[1].copy_data), ("/cache", "", true));
    }

    #[test]
    fn volumes_from_copies_mounts_with_the_mode() {
        let from = |_: &str| Ok(vec![parse_bind("shared:/s").unwrap()]);
        let m = plan(&json!({"VolumesFrom": ["other:ro"]}), &json!({}), from).unwrap();
        assert_eq!((m[0].name.as_str(), m[0].rw), ("shared", false));
        assert!(plan(&json!({"VolumesFrom": ["gone"]}), &json!({}), none).is_err());
    }
}

//! Containers: records, names, and the lifecycle (create, start, stop, kill,
//! wait, restart, pause, remove) driven through one `berth-shim` per
//! container and an OCI runtime.
//!
//! Owns container state and its durability (one record file per
//! container, written atomically). Does not own image content (`images`),
//! the OCI spec (`spec`), or the wire (`api`). Each container has an
//! operation lock, so concurrent start/stop/remove calls on one container
//! run one at a time and always leave a consistent state.

pub mod fs;
pub mod logs;
pub mod rootfs;
pub mod shim;
pub mod spec;
pub mod stats;

mod exec;
mod health;
mod lifecycle;
pub mod mounts;
mod names;
mod net;
mod update;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::{oneshot, watch};

use crate::content::write_atomic;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::events::EventBus;
use crate::filters::Filters;
use crate::images::Images;
use crate::paths::Paths;
use crate::volumes::Volumes;

/// Which OCI runtimes exist and which one runs containers by default.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub default: String,
    pub runtimes: BTreeMap<String, PathBuf>,
    /// The `berth-shim` binary.
    pub shim: PathBuf,
    /// A static init for `--init` (tini), if installed.
    pub init: Option<PathBuf>,
}

impl RuntimeConfig {
    /// crun by default; runc and youki when installed.
    pub fn detect(shim: PathBuf) -> Self {
        let mut runtimes = BTreeMap::new();
        for (name, candidates) in [
            ("crun", &["/usr/bin/crun", "/usr/local/bin/crun"][..]),
            ("runc", &["/usr/sbin/runc", "/usr/bin/runc", "/usr/local/bin/runc"][..]),
            ("youki", &["/usr/bin/youki", "/usr/local/bin/youki"][..]),
        ] {
            if let Some(p) = candidates.iter().map(PathBuf::from).find(|p| p.exists()) {
                runtimes.insert(name.to_owned(), p);
            }
        }
        let init = ["/usr/bin/tini-static", "/usr/bin/docker-init", "/usr/bin/tini"].iter().map(PathBuf::from).find(|p| p.exists());
        RuntimeConfig { default: "crun".to_owned(), runtimes, shim, init }
    }
}

/// The state dockerd reports under `State`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct State {
    pub status: String,
    pub running: bool,
    pub paused: bool,
    pub restarting: bool,
    #[serde(rename = "OOMKilled")]
    pub oom_killed: bool,
    pub dead: bool,
    pub pid: i64,
    pub exit_code: i64,
    pub error: String,
    pub started_at: String,
    pub finished_at: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub health: Option<Value>,
}

pub const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

impl Default for State {
    fn default() -> Self {
        State {
            status: "created".into(),
            running: false,
            paused: false,
            restarting: false,
            oom_killed: false,
            dead: false,
            pid: 0,
            exit_code: 0,
            error: String::new(),
            started_at: ZERO_TIME.into(),
            finished_at: ZERO_TIME.into(),
            health: None,
        }
    }
}

/// Everything recorded about one container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    /// Without the leading `/`.
    pub name: String,
    pub created: String,
    /// The image as the user named it.
    pub image: String,
    pub image_id: Digest,
    /// The effective config (image defaults merged with the request), as
    /// inspect shows it.
    pub config: Value,
    pub host_config: Value,
    pub state: State,
    pub restart_count: u64,
    pub has_been_started: bool,
    /// True while the user asked for the container to be stopped (restart
    /// policies must not bring it back).
    #[serde(default)]
    pub manually_stopped: bool,
    /// The runtime that runs it.
    pub runtime: String,
    /// Bind, volume and tmpfs mounts (none in records from before volumes).
    #[serde(default)]
    pub mounts: Vec<mounts::MountPoint>,
    /// Network name to endpoint (addresses set while running).
    #[serde(default)]
    pub networks: BTreeMap<String, crate::network::Endpoint>,
    /// Published ports while running.
    #[serde(default)]
    pub ports: Vec<crate::network::PortBinding>,
}

impl Record {
    pub fn short_id(&self) -> &str {
        &self.id[..12]
    }
    pub fn tty(&self) -> bool {
        self.config.get("Tty").and_then(Value::as_bool).unwrap_or(false)
    }
    pub fn labels(&self) -> BTreeMap<String, String> {
        self.config.get("Labels").and_then(|l| serde_json::from_value(l.clone()).ok()).unwrap_or_default()
    }
}

/// An attach waiting for the container to start.
pub(crate) struct PendingAttach {
    pub request: Value,
    pub reply: oneshot::Sender<Result<tokio::net::UnixStream>>,
}

/// One live container.
pub struct Handle {
    pub id: String,
    record: Mutex<Record>,
    /// Serializes lifecycle operations on this container.
    op: tokio::sync::Mutex<()>,
    /// Counts exits, for `wait` with `next-exit`.
    exits: watch::Sender<u64>,
    /// Becomes true when the container is removed.
    removed: watch::Sender<bool>,
    pending_attach: Mutex<Vec<PendingAttach>>,
}

impl Handle {
    pub fn record(&self) -> Record {
        self.record.lock().expect("record lock poisoned").clone()
    }
    fn update<T>(&self, f: impl FnOnce(&mut Record) -> T) -> T {
        f(&mut self.record.lock().expect("record lock poisoned"))
    }
}

/// The container service.
pub struct Containers {
    pub(crate) paths: Paths,
    pub(crate) images: Arc<Images>,
    pub(crate) volumes: Arc<Volumes>,
    pub(crate) networks: Arc<crate::network::Networks>,
    pub(crate) events: Arc<EventBus>,
    pub(crate) runtime: RuntimeConfig,
    map: RwLock<HashMap<String, Arc<Handle>>>,
    /// Name (without `/`) to ID; reserved before a container exists.
    names: Mutex<HashMap<String, String>>,
    pub(crate) execs: Mutex<HashMap<String, Arc<lifecycle::Exec>>>,
}

impl Containers {
    /// Loads every container record and re-adopts running ones.
    pub fn open(
        paths: &Paths,
        images: Arc<Images>,
        volumes: Arc<Volumes>,
        networks: Arc<crate::network::Networks>,
        events: Arc<EventBus>,
        runtime: RuntimeConfig,
    ) -> std::io::Result<Arc<Self>> {
        std::fs::create_dir_all(paths.containers_dir())?;
        std::fs::create_dir_all(paths.runtime_root())?;
        let me = Arc::new(Containers {
            paths: paths.clone(),
            images,
            volumes,
            networks,
            events,
            runtime,
            map: RwLock::new(HashMap::new()),
            names: Mutex::new(HashMap::new()),
            execs: Mutex::new(HashMap::new()),
        });
        for entry in std::fs::read_dir(paths.containers_dir())? {
            let id = entry?.file_name().to_string_lossy().into_owned();
            let Ok(data) = std::fs::read(paths.container_record(&id)) else {
                tracing::warn!(container_id = %id, "container directory without a record; removing it");
                let _ = rootfs::unmount(&paths.container_rootfs(&id));
                let _ = std::fs::remove_dir_all(paths.container_dir(&id));
                continue;
            };
            let record: Record = match serde_json::from_slice(&data) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(container_id = %id, error = %e, "unreadable container record; skipping");
                    continue;
                }
            };
            me.names.lock().expect("names lock poisoned").insert(record.name.clone(), record.id.clone());
            let handle = Arc::new(Handle::new(record));
            me.map.write().expect("map lock poisoned").insert(id, handle);
        }
        // Containers used by images: `docker rmi` must refuse those.
        let weak = Arc::downgrade(&me);
        me.images.set_usage(Arc::new(move || {
            let mut out: HashMap<Digest, Vec<(String, bool)>> = HashMap::new();
            if let Some(c) = weak.upgrade() {
                for h in c.all() {
                    let r = h.record();
                    out.entry(r.image_id).or_default().push((r.id, r.state.running));
                }
            }
            out
        }));
        me.networks.set_usage(me.network_usage());
        // Containers using volumes: `docker volume rm` must refuse those.
        let weak = Arc::downgrade(&me);
        me.volumes.set_usage(Arc::new(move || {
            let mut out: HashMap<String, Vec<String>> = HashMap::new();
            if let Some(c) = weak.upgrade() {
                for h in c.all() {
                    let r = h.record();
                    for m in r.mounts.iter().filter(|m| m.typ == "volume") {
                        let users = out.entry(m.name.clone()).or_default();
                        if !users.contains(&r.id) {
                            users.push(r.id.clone());
                        }
                    }
                }
            }
            out
        }));
        Ok(me)
    }

    /// After start-up: re-adopt containers whose shim survived, mark the
    /// others exited, then do what dockerd does at daemon start: start
    /// again the containers its restart manager would restart (`always`,
    /// even after a manual stop; `unless-stopped` unless stopped by hand;
    /// `on-failure` after a failure with retries left), and remove
    /// `--rm` containers that exited while the engine was away. Needs the
    /// runtime.
    pub fn reconcile(self: &Arc<Self>) {
        for h in self.all() {
            let rec = h.record();
            let mut exited_meanwhile = false;
            if rec.state.running {
                let state_dir = self.paths.container_state_dir(&rec.id);
                if shim::alive(&state_dir) && shim::socket(&state_dir).exists() {
                    tracing::info!(container_id = %rec.id, pid = rec.state.pid, "re-adopting running container");
                    let (me, h2) = (self.clone(), h.clone());
                    tokio::spawn(async move { me.net_readopt(&h2).await });
                    self.health_start(&h);
                    let _ = self.persist(&h);
                    self.spawn_monitor(h.clone());
                    continue;
                }
                tracing::warn!(container_id = %rec.id, "container's shim is gone; marking it exited");
                let exit = shim::read_exit(&state_dir);
                self.finish_exit(&h, exit);
                exited_meanwhile = true;
            } else {
                let _ = rootfs::unmount(&self.paths.container_rootfs(&rec.id));
                if rec.state.restarting {
                    // The engine went away between two restarts.
                    h.update(|r| {
                        r.state.restarting = false;
                        r.state.status = "exited".into();
                    });
                    let _ = self.persist(&h);
                }
            }
            let rec = h.record();
            let start = rec.has_been_started && lifecycle::policy_restarts(&rec);
            let auto_remove = exited_meanwhile && rec.host_config.get("AutoRemove").and_then(Value::as_bool).unwrap_or(false);
            if !start && !auto_remove {
                continue;
            }
            let me = self.clone();
            tokio::spawn(async move {
                if !start {
                    if let Err(e) = me.remove(&h.id, true, true).await {
                        tracing::warn!(container_id = %h.id, error = %e, "auto-remove at start-up failed");
                    }
                    return;
                }
                let _op = h.op.lock().await;
                let rec = h.record();
                if rec.state.running || rec.state.status == "removing" {
                    return;
                }
                tracing::info!(container_id = %h.id, "starting container for its restart policy");
                // A start at daemon start-up is a fresh start for dockerd:
                // the count and the manual stop are reset.
                h.update(|r| {
                    r.manually_stopped = false;
                    r.restart_count = 0;
                });
                if let Err(e) = me.start_locked(&h).await {
                    tracing::warn!(container_id = %h.id, error = %e, "start for restart policy failed");
                }
            });
        }
        // Volumes of the containers re-adopted above stay mounted.
        self.readopt_volumes();
    }

    /// Drops what the OCI runtime still records about a container whose
    /// shim died without deleting it, so it can be created again (and no
    /// process of it outlives a container recorded as exited).
    pub(crate) fn forget_runtime_state(&self, rec: &Record) {
        let Some(runtime) = self.runtime.runtimes.get(&rec.runtime) else { return };
        let deleted = std::process::Command::new(runtime)
            .arg("--root")
            .arg(self.paths.runtime_root())
            .args(["delete", "--force", &rec.id])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        if let Err(e) = deleted {
            tracing::warn!(container_id = %rec.id, error = %e, "runtime delete of a dead container");
        }
    }

    pub(crate) fn all(&self) -> Vec<Arc<Handle>> {
        self.map.read().expect("map lock poisoned").values().cloned().collect()
    }

    /// Finds a container by full ID, name, or unique ID prefix.
    pub fn find(&self, name_or_id: &str) -> Result<Arc<Handle>> {
        let key = name_or_id.strip_prefix('/').unwrap_or(name_or_id);
        let not_found = || Error::not_found(format!("No such container: {name_or_id}"));
        if key.is_empty() {
            return Err(not_found());
        }
        let map = self.map.read().expect("map lock poisoned");
        if let Some(h) = map.get(key) {
            return Ok(h.clone());
        }
        if let Some(id) = self.names.lock().expect("names lock poisoned").get(key) {
            if let Some(h) = map.get(id) {
                return Ok(h.clone());
            }
        }
        let mut matches = map.values().filter(|h| h.id.starts_with(key));
        match (matches.next(), matches.next()) {
            (Some(h), None) => Ok(h.clone()),
            (Some(_), Some(_)) => Err(Error::invalid(format!("multiple IDs found with provided prefix: {key}"))),
            _ => Err(not_found()),
        }
    }

    pub(crate) fn persist(&self, h: &Handle) -> Result<()> {
        let rec = h.record();
        let data = serde_json::to_vec(&rec).map_err(|e| Error::internal(e.to_string()))?;
        write_atomic(&self.paths.container_record(&rec.id), &data).map_err(|e| Error::io("write container record", e))
    }

    /// Publishes a container event with dockerd's attributes (name, image,
    /// labels, plus `extra`).
    pub(crate) fn event(&self, h: &Handle, action: &str, extra: &[(&str, String)]) {
        let rec = h.record();
        let mut attrs: BTreeMap<String, String> = rec.labels();
        attrs.insert("name".into(), rec.name.clone());
        attrs.insert("image".into(), rec.image.clone());
        for (k, v) in extra {
            attrs.insert((*k).to_owned(), v.clone());
        }
        self.events.publish("container", action, &rec.id, attrs);
    }

    /// `POST /containers/create`.
    pub fn create(&self, name: Option<&str>, body: &Value) -> Result<(String, Vec<String>)> {
        let body = body.as_object().ok_or_else(|| Error::invalid("invalid JSON: expected an object"))?;
        let image_name = body.get("Image").and_then(Value::as_str).unwrap_or_default();
        if image_name.is_empty() {
            return Err(Error::invalid("No image was specified"));
        }
        let found = self.images.store.find(image_name)?;
        let image = found.image;
        let host_config = body.get("HostConfig").cloned().unwrap_or_else(|| json!({}));
        let host_config = if host_config.is_null() { json!({}) } else { host_config };
        let endpoints = net::endpoints_for_create(&self.networks, &host_config, body.get("NetworkingConfig"))?;
        let mut request_config = Value::Object(body.clone());
        if let Value::Object(m) = &mut request_config {
            m.remove("HostConfig");
            m.remove("NetworkingConfig");
        }
        spec::validate(&request_config, &host_config).map_err(|e| Error::invalid(e.to_string()))?;
        let runtime = host_config.get("Runtime").and_then(Value::as_str).filter(|r| !r.is_empty()).unwrap_or(&self.runtime.default).to_owned();
        if !self.runtime.runtimes.contains_key(&runtime) {
            return Err(Error::invalid(format!("unknown or invalid runtime name: {runtime}")));
        }
        let id = crate::digest::random_id();
        let name = self.reserve_name(name, &id)?;
        let config = merge_config(image.config.get("config"), &request_config, image_name, &id);
        let mounts = match self.prepare_mounts(&host_config, &config) {
            Ok(m) => m,
            Err(e) => {
                self.names.lock().expect("names lock poisoned").remove(&name);
                return Err(e);
            }
        };
        let anonymous: Vec<String> = mounts.iter().filter(|m| m.typ == "volume").map(|m| m.name.clone()).collect();
        let record = Record {
            id: id.clone(),
            name: name.clone(),
            created: crate::timefmt::now_rfc3339(),
            image: image_name.to_owned(),
            image_id: image.id().clone(),
            config,
            host_config,
            state: State::default(),
            restart_count: 0,
            has_been_started: false,
            manually_stopped: false,
            runtime,
            mounts,
            networks: endpoints,
            ports: Vec::new(),
        };
        let result = (|| {
            std::fs::create_dir_all(self.paths.container_upper(&id)).map_err(|e| Error::io("create container dir", e))?;
            std::fs::create_dir_all(self.paths.container_work(&id)).map_err(|e| Error::io("create container dir", e))?;
            let handle = Arc::new(Handle::new(record));
            self.persist(&handle)?;
            self.map.write().expect("map lock poisoned").insert(id.clone(), handle.clone());
            self.event(&handle, "create", &[]);
            Ok(())
        })();
        if let Err(e) = result {
            self.names.lock().expect("names lock poisoned").remove(&name);
            let _ = std::fs::remove_dir_all(self.paths.container_dir(&id));
            self.volumes.remove_anonymous(&anonymous);
            return Err(e);
        }
        Ok((id, Vec::new()))
    }

    fn reserve_name(&self, name: Option<&str>, id: &str) -> Result<String> {
        let mut names = self.names.lock().expect("names lock poisoned");
        let name = match name.filter(|n| !n.is_empty()) {
            Some(n) => {
                let n = n.strip_prefix('/').unwrap_or(n);
                if !names::valid(n) {
                    return Err(Error::invalid(format!(
                        "Invalid container name ({n}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
                    )));
                }
                if let Some(owner) = names.get(n) {
                    return Err(Error::conflict(format!(
                        "Conflict. The container name \"/{n}\" is already in use by container \"{owner}\". You have to remove (or rename) that container to be able to reuse that name."
                    )));
                }
                n.to_owned()
            }
            None => loop {
                let candidate = names::random();
                if !names.contains_key(&candidate) {
                    break candidate;
                }
            },
        };
        names.insert(name.clone(), id.to_owned());
        Ok(name)
    }

    /// `POST /containers/{id}/rename`.
    pub fn rename(&self, name_or_id: &str, new: &str) -> Result<()> {
        let h = self.find(name_or_id)?;
        let new = new.strip_prefix('/').unwrap_or(new);
        if !names::valid(new) {
            return Err(Error::invalid(format!("Invalid container name ({new}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")));
        }
        let old = h.record().name;
        if old == new {
            return Err(Error::invalid("Renaming a container with the same name as its current name"));
        }
        {
            let mut names = self.names.lock().expect("names lock poisoned");
            if let Some(owner) = names.get(new) {
                return Err(Error::conflict(format!(
                    "Conflict. The container name \"/{new}\" is already in use by container \"{owner}\". You have to remove (or rename) that container to be able to reuse that name."
                )));
            }
            names.remove(&old);
            names.insert(new.to_owned(), h.id.clone());
        }
        h.update(|r| r.name = new.to_owned());
        self.persist(&h)?;
        self.event(&h, "rename", &[("oldName", format!("/{old}"))]);
        Ok(())
    }

    pub(crate) fn forget(&self, h: &Handle) {
        let name = h.record().name;
        self.names.lock().expect("names lock poisoned").remove(&name);
        self.map.write().expect("map lock poisoned").remove(&h.id);
    }

    /// `GET /containers/json`.
    pub fn list(&self, all: bool, limit: Option<usize>, size: bool, filters: &Filters) -> Result<Vec<Value>> {
        let mut recs: Vec<Record> = self.all().iter().map(|h| h.record()).collect();
        recs.sort_by(|a, b| b.created.cmp(&a.created));
        let mut out = Vec::new();
        for r in recs {
            let show = all || r.state.running || r.state.paused || r.state.restarting || !filters.0.is_empty() && filters.contains("status");
            if !show || !self.matches(&r, filters)? {
                continue;
            }
            out.push(self.summary(&r, size));
            if limit.is_some_and(|l| out.len() >= l) {
                break;
            }
        }
        Ok(out)
    }

    fn matches(&self, r: &Record, f: &Filters) -> Result<bool> {
        let any = |key: &str, pred: &dyn Fn(&str) -> bool| f.get(key).is_empty() || f.get(key).iter().any(|v| pred(v));
        for s in f.get("status") {
            if !["created", "restarting", "running", "removing", "paused", "exited", "dead"].contains(&s.as_str()) {
                return Err(Error::invalid(format!("invalid filter 'status={s}'")));
            }
        }
        let exit_ok = any("exited", &|v| v.parse::<i64>().is_ok_and(|c| !r.state.running && r.has_been_started && r.state.exit_code == c));
        let ancestor_ok = any("ancestor", &|v| {
            self.images.store.find(v).map(|f| f.image.id() == &r.image_id).unwrap_or(false) || r.image == v
        });
        let health = r.state.health.as_ref().and_then(|h| h.get("Status")).and_then(Value::as_str).unwrap_or("none").to_owned();
        Ok(any("status", &|v| v == r.state.status)
            && any("name", &|v| r.name.contains(v.trim_start_matches('/')))
            && any("id", &|v| r.id.starts_with(v))
            && f.labels_match("label", &r.labels())
            && exit_ok
            && ancestor_ok
            && any("health", &|v| v == health)
            && any("network", &|v| v == network_mode(r) || r.networks.contains_key(v) || r.networks.values().any(|e| e.network_id.starts_with(v)))
            && any("volume", &|v| r.mounts.iter().any(|m| m.name == v || m.destination == v || (!m.source.is_empty() && m.source == v)))
            && any("before", &|v| self.find(v).map(|o| r.created < o.record().created).unwrap_or(false))
            && any("since", &|v| self.find(v).map(|o| r.created > o.record().created).unwrap_or(false))
            && any("is-task", &|v| v == "false"))
    }

    fn summary(&self, r: &Record, size: bool) -> Value {
        let cmd: Vec<String> = lifecycle::process_args(r);
        let created = crate::timefmt::parse_rfc3339(&r.created).map(|t| t.0).unwrap_or(0);
        let mut v = json!({
            "Id": r.id,
            "Names": [format!("/{}", r.name)],
            "Image": r.image,
            "ImageID": r.image_id.to_string(),
            "Command": cmd.iter().map(|a| shell_quote(a)).collect::<Vec<_>>().join(" "),
            "Created": created,
            "Ports": self.ports_summary(r),
            "Labels": r.labels(),
            "State": r.state.status,
            "Status": status_text(&r.state, r.has_been_started),
            "HostConfig": {"NetworkMode": network_mode(r)},
            "NetworkSettings": {"Networks": self.networks_summary(r)},
            "Mounts": r.mounts.iter().map(|m| self.mount_json(m)).collect::<Vec<_>>(),
        });
        if size {
            let rw = crate::snapshots::dir_size(&self.paths.container_upper(&r.id)).unwrap_or(0);
            let image = self.images.store.get(&r.image_id).map(|i| i.record.size()).unwrap_or(0);
            v["SizeRw"] = json!(rw);
            v["SizeRootFs"] = json!(rw + image);
        }
        v
    }

    /// `GET /containers/{id}/json`.
    pub fn inspect(&self, name_or_id: &str, size: bool) -> Result<Value> {
        let h = self.find(name_or_id)?;
        let r = h.record();
        let args = lifecycle::process_args(&r);
        let (path, rest) = args.split_first().map(|(p, a)| (p.clone(), a.to_vec())).unwrap_or_default();
        let lowers = self.images.store.get(&r.image_id).map(|i| self.images.snapshots.lower_dirs(&i.record.chain())).unwrap_or_default();
        let mut v = json!({
            "Id": r.id,
            "Created": r.created,
            "Path": path,
            "Args": rest,
            "State": r.state,
            "Image": r.image_id.to_string(),
            "ResolvConfPath": self.paths.container_etc_file(&r.id, "resolv.conf"),
            "HostnamePath": self.paths.container_etc_file(&r.id, "hostname"),
            "HostsPath": self.paths.container_etc_file(&r.id, "hosts"),
            "LogPath": if log_driver(&r) == "json-file" { self.paths.container_log(&r.id).display().to_string() } else { String::new() },
            "Name": format!("/{}", r.name),
            "RestartCount": r.restart_count,
            "Driver": "overlay2",
            "Platform": "linux",
            "MountLabel": "",
            "ProcessLabel": "",
            "AppArmorProfile": "",
            "ExecIDs": self.exec_ids(&r.id),
            "HostConfig": inspect_host_config(&r),
            "GraphDriver": {"Name": "overlay2", "Data": {
                "LowerDir": lowers.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(":"),
                "UpperDir": self.paths.container_upper(&r.id),
                "WorkDir": self.paths.container_work(&r.id),
                "MergedDir": self.paths.container_rootfs(&r.id),
            }},
            "Mounts": r.mounts.iter().map(|m| self.mount_json(m)).collect::<Vec<_>>(),
            "Config": r.config,
            "NetworkSettings": self.network_settings(&r),
        });
        if size {
            let rw = crate::snapshots::dir_size(&self.paths.container_upper(&r.id)).unwrap_or(0);
            let image = self.images.store.get(&r.image_id).map(|i| i.record.size()).unwrap_or(0);
            v["SizeRw"] = json!(rw);
            v["SizeRootFs"] = json!(rw + image);
        }
        Ok(v)
    }

    fn exec_ids(&self, container: &str) -> Value {
        let ids: Vec<String> = self.execs.lock().expect("exec lock poisoned").values().filter(|e| e.container == container).map(|e| e.id.clone()).collect();
        if ids.is_empty() {
            Value::Null
        } else {
            json!(ids)
        }
    }

    /// `POST /containers/prune`.
    pub async fn prune(self: &Arc<Self>, filters: &Filters) -> Result<Value> {
        let mut deleted = Vec::new();
        let mut reclaimed = 0u64;
        let until = filters.until()?;
        for h in self.all() {
            let r = h.record();
            if r.state.running || r.state.paused || !filters.labels_match("label", &r.labels()) {
                continue;
            }
            if until.is_some_and(|u| crate::timefmt::parse_rfc3339(&r.created).map(|t| t.0).unwrap_or(0) >= u) {
                continue;
            }
            reclaimed += crate::snapshots::dir_size(&self.paths.container_upper(&r.id)).unwrap_or(0);
            if self.remove(&r.id, false, false).await.is_ok() {
                deleted.push(r.id.clone());
            }
        }
        if !deleted.is_empty() {
            self.events.publish("container", "prune", "", BTreeMap::from([("reclaimed".to_owned(), reclaimed.to_string())]));
        }
        Ok(json!({"ContainersDeleted": deleted, "SpaceReclaimed": reclaimed}))
    }

    /// Containers for `/system/df`.
    pub fn disk_usage(&self) -> Vec<Value> {
        let mut recs: Vec<Record> = self.all().iter().map(|h| h.record()).collect();
        recs.sort_by(|a, b| b.created.cmp(&a.created));
        recs.iter().map(|r| self.summary(r, true)).collect()
    }

    /// (total, running, paused, stopped) for `/info`.
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        let recs: Vec<Record> = self.all().iter().map(|h| h.record()).collect();
        let running = recs.iter().filter(|r| r.state.running && !r.state.paused).count();
        let paused = recs.iter().filter(|r| r.state.paused).count();
        (recs.len(), running, paused, recs.len() - running - paused)
    }
}

impl Handle {
    fn new(record: Record) -> Self {
        Handle {
            id: record.id.clone(),
            record: Mutex::new(record),
            op: tokio::sync::Mutex::new(()),
            exits: watch::channel(0).0,
            removed: watch::channel(false).0,
            pending_attach: Mutex::new(Vec::new()),
        }
    }
}

pub(crate) fn network_mode(r: &Record) -> String {
    r.host_config.get("NetworkMode").and_then(Value::as_str).filter(|m| !m.is_empty()).unwrap_or("default").to_owned()
}

pub(crate) fn log_driver(r: &Record) -> String {
    r.host_config.pointer("/LogConfig/Type").and_then(Value::as_str).filter(|t| !t.is_empty()).unwrap_or("json-file").to_owned()
}

/// The HostConfig inspect shows: the request's, with dockerd's defaults for
/// what it left out.
fn inspect_host_config(r: &Record) -> Value {
    let mut hc = json!({
        "Binds": null, "ContainerIDFile": "", "LogConfig": {"Type": "json-file", "Config": {}},
        "NetworkMode": "default", "PortBindings": {}, "RestartPolicy": {"Name": "no", "MaximumRetryCount": 0},
        "AutoRemove": false, "VolumeDriver": "", "VolumesFrom": null, "CapAdd": null, "CapDrop": null,
        "CgroupnsMode": "host", "Dns": [], "DnsOptions": [], "DnsSearch": [], "ExtraHosts": null,
        "GroupAdd": null, "IpcMode": "private", "Cgroup": "", "Links": null, "OomScoreAdj": 0,
        "PidMode": "", "Privileged": false, "PublishAllPorts": false, "ReadonlyRootfs": false,
        "SecurityOpt": null, "UTSMode": "", "UsernsMode": "", "ShmSize": 67108864, "Runtime": r.runtime,
        "Isolation": "", "CpuShares": 0, "Memory": 0, "NanoCpus": 0, "CgroupParent": "", "BlkioWeight": 0,
        "BlkioWeightDevice": [], "BlkioDeviceReadBps": [], "BlkioDeviceWriteBps": [],
        "BlkioDeviceReadIOps": [], "BlkioDeviceWriteIOps": [], "CpuPeriod": 0, "CpuQuota": 0,
        "CpuRealtimePeriod": 0, "CpuRealtimeRuntime": 0, "CpusetCpus": "", "CpusetMems": "",
        "Devices": [], "DeviceCgroupRules": null, "DeviceRequests": null, "MemoryReservation": 0,
        "MemorySwap": 0, "MemorySwappiness": null, "OomKillDisable": false, "PidsLimit": null,
        "Ulimits": null, "CpuCount": 0, "CpuPercent": 0, "IOMaximumIOps": 0, "IOMaximumBandwidth": 0,
        "MaskedPaths": null, "ReadonlyPaths": null, "Init": null,
    });
    if let (Value::Object(dst), Value::Object(src)) = (&mut hc, &r.host_config) {
        for (k, v) in src {
            if !v.is_null() {
                dst.insert(k.clone(), v.clone());
            }
        }
    }
    if hc["NetworkMode"] == "" {
        hc["NetworkMode"] = json!("default");
    }
    hc
}

/// The effective container config: the image's config, overridden by the
/// request, in dockerd's field set.
fn merge_config(image: Option<&Value>, req: &Value, image_name: &str, id: &str) -> Value {
    let empty = json!({});
    let image = image.unwrap_or(&empty);
    let pick = |k: &str| -> Value {
        match req.get(k) {
            Some(v) if !v.is_null() && v != &json!("") && v != &json!([]) => v.clone(),
            _ => image.get(k).cloned().unwrap_or(Value::Null),
        }
    };
    // An explicit Entrypoint in the request drops the image's Cmd.
    let entrypoint_set = req.get("Entrypoint").is_some_and(|v| !v.is_null());
    let cmd = match req.get("Cmd") {
        Some(v) if !v.is_null() && v != &json!([]) => v.clone(),
        _ if entrypoint_set => Value::Null,
        _ => image.get("Cmd").cloned().unwrap_or(Value::Null),
    };
    let entrypoint = if entrypoint_set {
        let e = req.get("Entrypoint").cloned().unwrap_or(Value::Null);
        if e == json!([]) || e == json!([""]) { Value::Null } else { e }
    } else {
        image.get("Entrypoint").cloned().unwrap_or(Value::Null)
    };
    let mut env: Vec<String> = image.get("Env").and_then(|e| serde_json::from_value(e.clone()).ok()).unwrap_or_default();
    for e in req.get("Env").and_then(|e| serde_json::from_value::<Vec<String>>(e.clone()).ok()).unwrap_or_default() {
        let key = e.split('=').next().unwrap_or_default().to_owned();
        env.retain(|x| x.split('=').next() != Some(key.as_str()));
        env.push(e);
    }
    let mut labels: BTreeMap<String, String> = image.get("Labels").and_then(|l| serde_json::from_value(l.clone()).ok()).unwrap_or_default();
    labels.extend(req.get("Labels").and_then(|l| serde_json::from_value::<BTreeMap<String, String>>(l.clone()).ok()).unwrap_or_default());
    let mut exposed = image.get("ExposedPorts").cloned().filter(|v| !v.is_null()).unwrap_or(json!({}));
    if let (Value::Object(dst), Some(Value::Object(src))) = (&mut exposed, req.get("ExposedPorts")) {
        for (k, v) in src {
            dst.insert(k.clone(), v.clone());
        }
    }
    // dockerd merges the request's volumes with the image's.
    let mut volumes = image.get("Volumes").cloned().filter(Value::is_object).unwrap_or(Value::Null);
    if let Some(Value::Object(src)) = req.get("Volumes") {
        if !volumes.is_object() {
            volumes = json!({});
        }
        for (k, v) in src {
            volumes[k] = v.clone();
        }
    }
    let hostname = req.get("Hostname").and_then(Value::as_str).filter(|h| !h.is_empty()).map(str::to_owned).unwrap_or_else(|| id[..12].to_owned());
    let b = |k: &str| req.get(k).and_then(Value::as_bool).unwrap_or(false);
    let mut out = json!({
        "Hostname": hostname,
        "Domainname": req.get("Domainname").and_then(Value::as_str).unwrap_or_default(),
        "User": pick("User").as_str().unwrap_or_default(),
        "AttachStdin": b("AttachStdin"),
        "AttachStdout": b("AttachStdout"),
        "AttachStderr": b("AttachStderr"),
        "Tty": b("Tty"),
        "OpenStdin": b("OpenStdin"),
        "StdinOnce": b("StdinOnce"),
        "Env": if env.is_empty() { Value::Null } else { json!(env) },
        "Cmd": cmd,
        "Image": image_name,
        "Volumes": volumes,
        "WorkingDir": pick("WorkingDir").as_str().unwrap_or_default(),
        "Entrypoint": entrypoint,
        "OnBuild": image.get("OnBuild").cloned().unwrap_or(Value::Null),
        "Labels": labels,
    });
    if exposed.as_object().is_some_and(|m| !m.is_empty()) {
        out["ExposedPorts"] = exposed;
    }
    for k in ["StopSignal", "Healthcheck", "StopTimeout", "Shell", "ArgsEscaped"] {
        let v = pick(k);
        if !v.is_null() {
            out[k] = v;
        }
    }
    out
}

/// `Up 3 seconds`, `Exited (0) 2 minutes ago`, `Created`, as docker ps
/// shows them.
fn status_text(s: &State, started: bool) -> String {
    let now = crate::timefmt::now().0;
    let ago = |t: &str| crate::timefmt::parse_rfc3339(t).map(|(secs, _)| human_duration(now - secs)).unwrap_or_default();
    if s.running {
        let paused = if s.paused { " (Paused)" } else { "" };
        let health = match s.health.as_ref().and_then(|h| h.get("Status")).and_then(Value::as_str) {
            Some("starting") => " (health: starting)".to_owned(),
            Some(h) if !h.is_empty() && h != "none" => format!(" ({h})"),
            _ => String::new(),
        };
        return format!("Up {}{paused}{health}", ago(&s.started_at));
    }
    if s.restarting {
        return format!("Restarting ({}) {} ago", s.exit_code, ago(&s.finished_at));
    }
    if s.status == "removing" {
        return "Removal In Progress".into();
    }
    if s.dead {
        return "Dead".into();
    }
    if !started {
        return "Created".into();
    }
    format!("Exited ({}) {} ago", s.exit_code, ago(&s.finished_at))
}

/// Go's `units.HumanDuration`.
fn human_duration(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0 => "Less than a second".into(),
        1 => "1 second".into(),
        s if s < 60 => format!("{s} seconds"),
        s if s < 120 => "About a minute".into(),
        s if s < 3600 => format!("{} minutes", s / 60),
        s if s < 2 * 3600 => "About an hour".into(),
        s if s < 48 * 3600 => format!("{} hours", s / 3600),
        s if s < 7 * 24 * 3600 * 2 => format!("{} days", s / 86400),
        s if s < 30 * 24 * 3600 * 3 => format!("{} weeks", s / (7 * 86400)),
        s if s < 365 * 24 * 3600 * 2 => format!("{} months", s / (30 * 86400)),
        s => format!("{} years", s / (365 * 86400)),
    }
}

fn shell_quote(a: &str) -> String {
    if !a.is_empty() && a.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@%+".contains(&b)) {
        a.to_owned()
    } else {
        format!("'{}'", a.replace('\'', "'\\''"))
    }
}

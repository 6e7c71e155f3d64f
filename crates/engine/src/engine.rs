//! The engine: opens the data root (refusing a second engine on it),
//! assembles the services and answers system-wide questions.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;

use crate::config::EngineConfig;
use crate::containers::{Containers, RuntimeConfig};
use crate::content::{write_atomic, ContentStore};
use crate::error::{Error, Result};
use crate::events::EventBus;
use crate::images::store::ImageStore;
use crate::images::Images;
use crate::network::{NetConfig, Networks};
use crate::paths::Paths;
use crate::registry::{RegistryClient, RegistryConfig};
use crate::snapshots::Snapshots;
use crate::volumes::Volumes;

/// Why an engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("create {path}: {source}")]
    CreateDir { path: String, source: std::io::Error },
    #[error("another berthd is already running with data root {0} (its lock file {1} is held)")]
    AlreadyRunning(String, String),
    #[error("lock {path}: {source}")]
    Lock { path: String, source: std::io::Error },
    #[error("settings: {0}")]
    Registry(String),
    #[error("open {what}: {source}")]
    Store { what: &'static str, source: std::io::Error },
}

/// One running engine.
pub struct Engine {
    pub config: EngineConfig,
    pub paths: Paths,
    pub images: Arc<Images>,
    pub containers: Arc<Containers>,
    pub volumes: Arc<Volumes>,
    pub networks: Arc<Networks>,
    pub events: Arc<EventBus>,
    id: String,
    /// Held for the engine's life: the flock on the data root.
    _lock: File,
}

impl Engine {
    /// Opens the data root, taking its lock, and reconciles what a crash may
    /// have left (half-unpacked layers, unreferenced blobs).
    pub fn open(config: EngineConfig) -> std::result::Result<Arc<Self>, OpenError> {
        let paths = Paths::new(&config.data_root, &config.exec_root);
        for dir in [paths.data_root(), paths.exec_root(), &paths.tmp_dir()] {
            std::fs::create_dir_all(dir)
                .map_err(|source| OpenError::CreateDir { path: dir.display().to_string(), source })?;
        }
        let lock = take_lock(&paths)?;
        // Uploads from a previous run are garbage.
        let _ = std::fs::remove_dir_all(paths.tmp_dir());
        let _ = std::fs::create_dir_all(paths.tmp_dir());
        let content = ContentStore::open(&paths).map_err(|source| OpenError::Store { what: "content store", source })?;
        let snapshots = Snapshots::open(&paths).map_err(|source| OpenError::Store { what: "snapshots", source })?;
        let store = ImageStore::open(&paths, |id| content.read(id).ok(), |c| snapshots.exists(c))
            .map_err(|source| OpenError::Store { what: "image store", source })?;
        let events = Arc::new(EventBus::new());
        let registry = RegistryClient::new(RegistryConfig {
            mirrors: config.registry_mirrors.clone(),
            insecure_registries: config.insecure_registries.clone(),
            ..RegistryConfig::default()
        })
        .map_err(|e| OpenError::Registry(e.to_string()))?;
        let images = Arc::new(Images::new(store, content, snapshots, registry, events.clone()));
        if let Err(e) = images.gc() {
            tracing::warn!(error = %e, "garbage collection at start-up failed");
        }
        let shim = std::env::var_os("BERTH_SHIM").map(std::path::PathBuf::from).unwrap_or_else(|| {
            std::env::current_exe().map(|p| p.with_file_name("berth-shim")).unwrap_or_else(|_| "berth-shim".into())
        });
        let mut runtime = RuntimeConfig::detect(shim);
        runtime.runtimes.extend(config.runtimes.clone());
        if let Some(d) = &config.default_runtime {
            if !runtime.runtimes.contains_key(d) {
                return Err(OpenError::Registry(format!("default runtime {d:?} is not a known runtime")));
            }
            runtime.default = d.clone();
        }
        let volumes = Volumes::open(&paths, events.clone()).map_err(|source| OpenError::Store { what: "volumes", source })?;
        let networks = Networks::open(&paths, net_config(&config)?, events.clone()).map_err(|source| OpenError::Store { what: "networks", source })?;
        let containers = Containers::open(&paths, images.clone(), volumes.clone(), networks.clone(), events.clone(), runtime)
            .map_err(|source| OpenError::Store { what: "containers", source })?;
        let id = engine_id(&paths);
        Ok(Arc::new(Engine { config, paths, images, containers, volumes, networks, events, id, _lock: lock }))
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The host architecture in Go's naming (`amd64`, `arm64`).
    pub fn arch(&self) -> &'static str {
        go_arch()
    }

    pub fn kernel_version() -> String {
        rustix::system::uname().release().to_string_lossy().into_owned()
    }

    /// Writes a request body to a private temporary file (load, import):
    /// the archive is then read twice, and never held in memory.
    pub async fn spool_body(&self, body: axum::body::Body) -> Result<tempfile::NamedTempFile> {
        let tmp = tempfile::NamedTempFile::new_in(self.paths.tmp_dir()).map_err(|e| Error::io("create upload file", e))?;
        let file = tmp.reopen().map_err(|e| Error::io("open upload file", e))?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<Bytes>(16);
        let writer = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let mut f = std::io::BufWriter::new(file);
            for chunk in rx {
                f.write_all(&chunk)?;
            }
            f.flush()
        });
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| Error::invalid(format!("read request body: {e}")))?;
            let tx = tx.clone();
            if tokio::task::spawn_blocking(move || tx.send(chunk)).await.map(|r| r.is_err()).unwrap_or(true) {
                break;
            }
        }
        drop(tx);
        writer.await.map_err(|e| Error::internal(e.to_string()))?.map_err(|e| Error::io("write upload", e))?;
        Ok(tmp)
    }

    /// `/info`.
    pub fn info(&self) -> serde_json::Value {
        let images = self.images.store.list().len();
        let (containers, running, paused, stopped) = self.containers.counts();
        let (mem_total, ncpu) = host_resources();
        let name = rustix::system::uname().nodename().to_string_lossy().into_owned();
        let mirrors: Vec<String> = self.config.registry_mirrors.iter().map(|m| format!("{m}/")).collect();
        serde_json::json!({
            "ID": self.id,
            "Containers": containers, "ContainersRunning": running, "ContainersPaused": paused, "ContainersStopped": stopped,
            "Images": images,
            "Driver": "overlay2",
            "DriverStatus": [["Backing Filesystem", "extfs"], ["Supports d_type", "true"], ["Native Overlay Diff", "true"]],
            "Plugins": {"Volume": ["local"], "Network": ["bridge", "host", "none"], "Authorization": null,
                        "Log": ["json-file"]},
            "MemoryLimit": true, "SwapLimit": true, "CpuCfsPeriod": true, "CpuCfsQuota": true,
            "CPUShares": true, "CPUSet": true, "PidsLimit": true, "IPv4Forwarding": true,
            "BridgeNfIptables": true, "BridgeNfIp6tables": true,
            "Debug": false, "NFd": 0, "OomKillDisable": false, "NGoroutines": 0,
            "SystemTime": crate::timefmt::now_rfc3339(),
            "LoggingDriver": "json-file",
            "CgroupDriver": "cgroupfs",
            "CgroupVersion": if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() { "2" } else { "1" },
            "NEventsListener": 0,
            "KernelVersion": Self::kernel_version(),
            "OperatingSystem": os_name(),
            "OSVersion": "",
            "OSType": "linux",
            "Architecture": std::env::consts::ARCH,
            "IndexServerAddress": "https://index.docker.io/v1/",
            "RegistryConfig": {
                "AllowNondistributableArtifactsCIDRs": [],
                "AllowNondistributableArtifactsHostnames": [],
                "InsecureRegistryCIDRs": ["127.0.0.0/8"],
                "IndexConfigs": {"docker.io": {"Name": "docker.io", "Mirrors": mirrors, "Secure": true, "Official": true}},
                "Mirrors": mirrors,
            },
            "NCPU": ncpu,
            "MemTotal": mem_total,
            "GenericResources": null,
            "DockerRootDir": self.paths.data_root(),
            "HttpProxy": "", "HttpsProxy": "", "NoProxy": "",
            "Name": name,
            "Labels": [],
            "ExperimentalBuild": false,
            "ServerVersion": env!("CARGO_PKG_VERSION"),
            "Runtimes": self.containers.runtime.runtimes.iter().map(|(k, v)| (k.clone(), serde_json::json!({"path": v}))).collect::<serde_json::Map<String, serde_json::Value>>(),
            "DefaultRuntime": self.containers.runtime.default,
            "Swarm": {"NodeID": "", "NodeAddr": "", "LocalNodeState": "inactive", "ControlAvailable": false,
                      "Error": "", "RemoteManagers": null},
            "LiveRestoreEnabled": self.config.live_restore,
            "Isolation": "",
            "InitBinary": "",
            "ContainerdCommit": {"ID": "", "Expected": ""},
            "RuncCommit": {"ID": "", "Expected": ""},
            "InitCommit": {"ID": "", "Expected": ""},
            "SecurityOptions": ["name=seccomp,profile=builtin"],
            "Warnings": null,
        })
    }
}

fn take_lock(paths: &Paths) -> std::result::Result<File, OpenError> {
    let path = paths.lock_file();
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| OpenError::Lock { path: path.display().to_string(), source })?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(OpenError::AlreadyRunning(
            paths.data_root().display().to_string(),
            path.display().to_string(),
        )),
        Err(e) => Err(OpenError::Lock { path: path.display().to_string(), source: e.into() }),
    }
}

/// A stable ID for this engine, created once per data root.
fn engine_id(paths: &Paths) -> String {
    let path = paths.data_root().join("engine-id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        if !id.trim().is_empty() {
            return id.trim().to_owned();
        }
    }
    let id = format!("{:032x}", rand::random::<u128>());
    let _ = write_atomic(&path, id.as_bytes());
    id
}

/// The network settings from the engine's flags.
fn net_config(config: &EngineConfig) -> std::result::Result<NetConfig, OpenError> {
    let mut cfg = NetConfig::for_exec_root(&config.exec_root);
    if config.bridge.as_deref() == Some("none") {
        cfg.default_bridge = None;
    } else if let Some(b) = &config.bridge {
        return Err(OpenError::Registry(format!("--bridge {b:?}: only \"none\" is supported (the default bridge is created by the engine)")));
    }
    if let Some(bip) = &config.bip {
        let (ip, prefix) = bip.split_once('/').ok_or_else(|| OpenError::Registry(format!("invalid --bip {bip:?}: want an address with a prefix, 172.20.0.1/16")))?;
        let ip: std::net::Ipv4Addr = ip.parse().map_err(|_| OpenError::Registry(format!("invalid --bip {bip:?}")))?;
        let prefix: u8 = prefix.parse().ok().filter(|p| (8..=30).contains(p)).ok_or_else(|| OpenError::Registry(format!("invalid --bip {bip:?}")))?;
        cfg.bip = Some((ip, prefix));
    }
    cfg.firewall = config.iptables;
    cfg.ip_forward = config.ip_forward;
    cfg.host_gateway_ip = config.host_gateway_ip;
    cfg.vm_guest = config.vm_guest;
    Ok(cfg)
}

pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
}

fn host_resources() -> (u64, usize) {
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0);
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    (mem, cpus)
}

fn os_name() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_owned()))
        })
        .unwrap_or_else(|| "Linux".to_owned())
}

//! Names every path under the engine's data root and exec root. No other
//! module builds a path from these roots by hand.

use std::path::{Path, PathBuf};

use crate::digest::Digest;

/// The on-disk layout of one engine instance.
#[derive(Debug, Clone)]
pub struct Paths {
    data_root: PathBuf,
    exec_root: PathBuf,
}

impl Paths {
    pub fn new(data_root: impl Into<PathBuf>, exec_root: impl Into<PathBuf>) -> Self {
        Paths { data_root: data_root.into(), exec_root: exec_root.into() }
    }
    pub fn data_root(&self) -> &Path {
        &self.data_root
    }
    pub fn exec_root(&self) -> &Path {
        &self.exec_root
    }
    /// Held with an exclusive flock while an engine owns this data root.
    pub fn lock_file(&self) -> PathBuf {
        self.data_root.join("berthd.lock")
    }
    /// The OCI image layout holding every blob (configs, manifests, layers).
    pub fn content_dir(&self) -> PathBuf {
        self.data_root.join("content")
    }
    pub fn blob(&self, d: &Digest) -> PathBuf {
        self.content_dir().join("blobs/sha256").join(d.hex())
    }
    pub fn blobs_dir(&self) -> PathBuf {
        self.content_dir().join("blobs/sha256")
    }
    /// Partial downloads, kept across restarts so a pull can resume them.
    pub fn ingest_dir(&self) -> PathBuf {
        self.content_dir().join("ingest")
    }
    pub fn ingest(&self, d: &Digest) -> PathBuf {
        self.ingest_dir().join(d.hex())
    }
    /// Unpacked layers, one directory per chain ID.
    pub fn snapshots_dir(&self) -> PathBuf {
        self.data_root.join("snapshots")
    }
    pub fn snapshot(&self, chain_id: &Digest) -> PathBuf {
        self.snapshots_dir().join(chain_id.hex())
    }
    /// Where layers are unpacked before they are committed under their chain ID.
    pub fn snapshots_tmp_dir(&self) -> PathBuf {
        self.data_root.join("snapshots-tmp")
    }
    /// Image records and the tag store.
    pub fn metadata_dir(&self) -> PathBuf {
        self.data_root.join("metadata")
    }
    pub fn images_dir(&self) -> PathBuf {
        self.metadata_dir().join("images")
    }
    pub fn image_record(&self, id: &Digest) -> PathBuf {
        self.images_dir().join(format!("{}.json", id.hex()))
    }
    pub fn references_file(&self) -> PathBuf {
        self.metadata_dir().join("references.json")
    }
    /// Containers' persistent state: records, rootfs layers, logs.
    pub fn containers_dir(&self) -> PathBuf {
        self.data_root.join("containers")
    }
    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.containers_dir().join(id)
    }
    pub fn container_record(&self, id: &str) -> PathBuf {
        self.container_dir(id).join("config.json")
    }
    /// The container's writable layer, overlay work dir and mount point.
    pub fn container_upper(&self, id: &str) -> PathBuf {
        self.container_dir(id).join("diff")
    }
    pub fn container_work(&self, id: &str) -> PathBuf {
        self.container_dir(id).join("work")
    }
    pub fn container_rootfs(&self, id: &str) -> PathBuf {
        self.container_dir(id).join("merged")
    }
    pub fn container_log(&self, id: &str) -> PathBuf {
        self.container_dir(id).join(format!("{id}-json.log"))
    }
    /// `/etc/hosts`, `/etc/hostname`, `/etc/resolv.conf` given to the container.
    pub fn container_etc_file(&self, id: &str, name: &str) -> PathBuf {
        self.container_dir(id).join(name)
    }
    /// Runtime state of a running container: the OCI bundle and the shim's
    /// socket. Keyed by the short ID so socket paths stay under 108 bytes.
    pub fn container_state_dir(&self, id: &str) -> PathBuf {
        self.exec_root.join("c").join(&id[..id.len().min(12)])
    }
    /// The OCI runtime's own state (`crun --root`).
    pub fn runtime_root(&self) -> PathBuf {
        self.exec_root.join("runtime")
    }

    /// Local-driver volumes: `<name>/_data` and the volume's record.
    /// Network records and what the engine owns on the host.
    pub fn network_dir(&self) -> PathBuf {
        self.data_root.join("network")
    }
    pub fn networks_file(&self) -> PathBuf {
        self.network_dir().join("networks.json")
    }
    pub fn volumes_dir(&self) -> PathBuf {
        self.data_root.join("volumes")
    }
    pub fn volume_dir(&self, name: &str) -> PathBuf {
        self.volumes_dir().join(name)
    }
    pub fn volume_data(&self, name: &str) -> PathBuf {
        self.volume_dir(name).join("_data")
    }
    pub fn volume_record(&self, name: &str) -> PathBuf {
        self.volume_dir(name).join("volume.json")
    }

    /// Scratch space for uploads (load, import) that are not yet content.
    pub fn tmp_dir(&self) -> PathBuf {
        self.data_root.join("tmp")
    }
}

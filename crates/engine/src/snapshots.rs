//! Overlay snapshots: one directory per unpacked layer, keyed by chain ID.
//!
//! Owns the snapshot directories and their metadata. A snapshot is unpacked
//! into a temporary directory and becomes visible by one atomic rename, so a
//! crash never leaves a half-unpacked layer under a chain ID. Like
//! containerd's snapshotter, this module returns overlay mount options and
//! never mounts anything itself.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::content::{sync_dir, write_atomic};
use crate::digest::Digest;
use crate::paths::Paths;

/// Chain IDs per the OCI image spec: the first is the first diff ID, each
/// next one hashes the previous chain ID and the next diff ID.
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => Digest::of(format!("{prev} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

/// What is recorded beside each snapshot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SnapshotMeta {
    pub chain_id: Digest,
    pub diff_id: Digest,
    pub parent: Option<Digest>,
    /// Unpacked size as dockerd counts it (see `dir_size`).
    pub size: u64,
}

/// The snapshot directories of one engine.
#[derive(Debug, Clone)]
pub struct Snapshots {
    paths: Paths,
}

/// A layer directory being filled, not yet visible.
#[derive(Debug)]
pub struct PendingSnapshot {
    root: PathBuf,
}

impl PendingSnapshot {
    /// The directory to unpack the layer into.
    pub fn fs_dir(&self) -> PathBuf {
        self.root.join("fs")
    }
}

impl Drop for PendingSnapshot {
    fn drop(&mut self) {
        if self.root.exists() {
            let _ = fs::remove_dir_all(&self.root);
        }
    }
}

impl Snapshots {
    /// Opens the snapshot area, discarding unpacks a crash interrupted.
    pub fn open(paths: &Paths) -> io::Result<Self> {
        fs::create_dir_all(paths.snapshots_dir())?;
        let tmp = paths.snapshots_tmp_dir();
        if tmp.exists() {
            fs::remove_dir_all(&tmp)?;
        }
        fs::create_dir_all(&tmp)?;
        Ok(Snapshots { paths: paths.clone() })
    }

    pub fn exists(&self, chain_id: &Digest) -> bool {
        self.paths.snapshot(chain_id).join("meta.json").is_file()
    }

    pub fn meta(&self, chain_id: &Digest) -> Option<SnapshotMeta> {
        let data = fs::read(self.paths.snapshot(chain_id).join("meta.json")).ok()?;
        serde_json::from_slice(&data).ok()
    }

    /// The unpacked content of a committed snapshot.
    pub fn fs_dir(&self, chain_id: &Digest) -> PathBuf {
        self.paths.snapshot(chain_id).join("fs")
    }

    /// A fresh, empty directory to unpack a layer into.
    pub fn prepare(&self) -> io::Result<PendingSnapshot> {
        let root = self.paths.snapshots_tmp_dir().join(format!("{:016x}", rand::random::<u64>()));
        fs::create_dir_all(root.join("fs"))?;
        Ok(PendingSnapshot { root })
    }

    /// Makes a pending snapshot visible under its chain ID. If another pull
    /// committed the same chain ID meanwhile, the existing one is kept.
    pub fn commit(&self, pending: PendingSnapshot, meta: &SnapshotMeta) -> io::Result<()> {
        let data = serde_json::to_vec(meta).map_err(io::Error::other)?;
        write_atomic(&pending.root.join("meta.json"), &data)?;
        let target = self.paths.snapshot(&meta.chain_id);
        if self.exists(&meta.chain_id) {
            return Ok(());
        }
        if target.exists() {
            // A directory without meta.json is debris from an old crash.
            fs::remove_dir_all(&target)?;
        }
        fs::rename(&pending.root, &target)?;
        sync_dir(&self.paths.snapshots_dir())
    }

    pub fn remove(&self, chain_id: &Digest) -> io::Result<()> {
        let dir = self.paths.snapshot(chain_id);
        // Rename first so a crash mid-delete never leaves a snapshot that
        // looks committed but lacks files.
        let doomed = self.paths.snapshots_tmp_dir().join(format!("rm-{}", chain_id.hex()));
        match fs::rename(&dir, &doomed) {
            Ok(()) => fs::remove_dir_all(&doomed),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Every committed snapshot's chain ID.
    pub fn list(&self) -> io::Result<Vec<Digest>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(self.paths.snapshots_dir())? {
            let entry = entry?;
            if let Some(d) = entry.file_name().to_str().and_then(|n| Digest::from_hex(n).ok()) {
                out.push(d);
            }
        }
        Ok(out)
    }

    /// The overlay lowerdir list for an image whose top layer is `chain_id`,
    /// top first, as overlayfs wants it.
    pub fn lower_dirs(&self, chain: &[Digest]) -> Vec<PathBuf> {
        chain.iter().rev().map(|c| self.fs_dir(c)).collect()
    }
}

/// Size of a directory tree as dockerd reports layer sizes: the sum of
/// sizes of every non-directory entry (symlinks count their target length),
/// each inode once.
pub fn dir_size(root: &Path) -> io::Result<u64> {
    let mut seen = HashSet::new();
    let mut total = 0u64;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let md = entry.metadata()?;
            if md.is_dir() {
                stack.push(entry.path());
            } else if md.len() > 0 && seen.insert((md.dev(), md.ino())) {
                total += md.len();
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_id_of_second_layer_hashes_parent_and_diff() {
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        let chain = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(chain[0], a);
        assert_eq!(chain[1], Digest::of(format!("{a} {b}").as_bytes()));
    }

    #[test]
    fn dir_size_counts_hardlinks_once_and_ignores_dirs() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("sub")).unwrap();
        fs::write(d.path().join("sub/f"), b"12345").unwrap();
        fs::hard_link(d.path().join("sub/f"), d.path().join("g")).unwrap();
        std::os::unix::fs::symlink("sub/f", d.path().join("l")).unwrap();
        assert_eq!(dir_size(d.path()).unwrap(), 5 + 5);
    }

    #[test]
    fn uncommitted_snapshot_vanishes_when_dropped() {
        let d = tempfile::tempdir().unwrap();
        let paths = Paths::new(d.path(), d.path().join("exec"));
        let s = Snapshots::open(&paths).unwrap();
        let p = s.prepare().unwrap();
        let dir = p.fs_dir();
        fs::write(dir.join("x"), b"x").unwrap();
        drop(p);
        assert!(!dir.exists());
        assert!(s.list().unwrap().is_empty());
    }
}

//! A container's file system seen from the engine: `docker cp` (stat,
//! archive, extract), `docker diff`, `docker export` and `docker commit`.
//!
//! Owns resolving paths inside a container's root file system and keeping
//! that rootfs mounted while it is read or written. Does not own the tar
//! format (`archive`), image records and layers (`images`) or the wire
//! (`api`).
//!
//! # Safety model
//!
//! Everything below the rootfs belongs to the container, which may be
//! running and hostile. A path the user names inside the container is
//! resolved with `openat2(RESOLVE_IN_ROOT)` from a descriptor of the rootfs,
//! so symlinks mean what they mean inside the container (`/etc/x ->
//! /etc/shadow` reaches the container's shadow file, never the host's) and
//! `..` stops at the container's root. Everything after that goes through
//! descriptors: the packer and the unpacker of `archive` walk from the
//! resolved descriptor one component at a time and never follow a symlink,
//! so a container that swaps a directory for a symlink while a copy runs
//! can make the copy fail, never escape. No host path below the rootfs is
//! ever resolved by string. Only the rootfs itself, the writable layer and
//! the image's snapshots, all under the engine's data root, are named by
//! path.
//!
//! # Mounting
//!
//! The rootfs is an overlay mounted at start and unmounted at exit. An
//! operation on a stopped container mounts it and unmounts it afterwards.
//! The container's operation lock is held throughout (as dockerd holds its
//! container lock until an archive has been read), so the container cannot
//! start, stop or go away halfway; a running container that exits on its
//! own meanwhile unmounts lazily, which leaves the descriptors in use valid.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, ResolveFlags, Stat};
use rustix::io::Errno;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use super::{rootfs, Containers, Handle, Record};
use crate::archive::{self, sys, ApplyOptions, ArchiveError, PackOptions, Rejection};
use crate::digest::{Digest, HashingWriter};
use crate::error::{Error, Kind, Result};
use crate::images::archive::changes::{self, HealthConfig, RunConfig};
use crate::images::store::{Image, ImageRecord};
use crate::reference::Reference;
use crate::snapshots::chain_ids;

/// Go's `os.FileMode` bits, which the stat header carries.
const GO_MODE_DIR: u32 = 1 << 31;
const GO_MODE_SYMLINK: u32 = 1 << 27;
const GO_MODE_DEVICE: u32 = 1 << 26;
const GO_MODE_NAMED_PIPE: u32 = 1 << 25;
const GO_MODE_SOCKET: u32 = 1 << 24;
const GO_MODE_SETUID: u32 = 1 << 23;
const GO_MODE_SETGID: u32 = 1 << 22;
const GO_MODE_CHAR_DEVICE: u32 = 1 << 21;
const GO_MODE_STICKY: u32 = 1 << 20;

/// Symlinks followed while resolving one path, as Linux's limit.
const MAX_SYMLINKS: usize = 40;

/// Bytes sent to the response per chunk of a tar stream.
const CHUNK: usize = 64 * 1024;

/// The diff ID of an empty layer (a tar with only its end marker): dockerd
/// records such a commit as an `empty_layer` history entry, adding no layer.
const EMPTY_LAYER: &str = "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef";

/// Entries of a container's writable layer that are mount points the
/// runtime made, not changes (dockerd keeps these in its init layer, so
/// `docker diff` and `docker commit` never see them): `/dev`, `/proc`,
/// `/sys`, and the generated `/etc` files, which are bind-mounted, so a
/// container's writes to them never reach the writable layer.
const MOUNT_STUBS: [&str; 6] = ["dev", "proc", "sys", "etc/hosts", "etc/hostname", "etc/resolv.conf"];

/// What `HEAD`/`GET /containers/{id}/archive` report in
/// `X-Docker-Container-Path-Stat` (dockerd's `container.PathStat`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PathStat {
    pub name: String,
    pub size: i64,
    /// Go's `os.FileMode`: permission bits plus type bits (a directory is
    /// `1<<31 | perm`, a symlink `1<<27 | perm`).
    pub mode: u32,
    pub mtime: String,
    /// For a symlink, its target fully resolved inside the container.
    #[serde(rename = "linkTarget")]
    pub link_target: String,
}

/// One line of `docker diff`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    #[serde(rename = "Path")]
    pub path: String,
    /// 0 modified, 1 added, 2 deleted.
    #[serde(rename = "Kind")]
    pub kind: u8,
}

const CHANGE_MODIFY: u8 = 0;
const CHANGE_ADD: u8 = 1;
const CHANGE_DELETE: u8 = 2;

/// A tar produced on a blocking thread, in chunks; an `Err` item means it
/// broke off (the response must be aborted, not ended).
pub type TarStream = mpsc::Receiver<io::Result<Vec<u8>>>;

/// How `PUT /containers/{id}/archive` extracts.
#[derive(Debug, Clone, Default)]
pub struct ExtractOptions {
    /// Give every entry the container user's uid and gid (`docker cp -a`).
    pub copy_uid_gid: bool,
    /// Refuse to replace a directory with a non-directory or the reverse.
    pub no_overwrite_dir_non_dir: bool,
}

/// `POST /commit`.
#[derive(Debug, Clone, Default)]
pub struct CommitOptions {
    /// `repo` and `tag` query parameters (the new image's name).
    pub repo: String,
    pub tag: String,
    pub comment: String,
    pub author: String,
    /// Pause a running container while its layer is read.
    pub pause: bool,
    /// Dockerfile instructions applied to the config (`--change`).
    pub changes: Vec<String>,
    /// A config from the request body replacing the container's, if any.
    pub config: Option<Value>,
}

/// The container's rootfs while an operation uses it.
struct Rootfs {
    /// The mount point (under the data root).
    dir: PathBuf,
    /// An `O_PATH` descriptor of it: every path inside is resolved from here.
    root: OwnedFd,
    /// This operation mounted it, and unmounts it when done.
    mounted_here: bool,
}

impl Containers {
    /// Mounts the container's rootfs unless it is mounted already. The
    /// caller holds the container's op lock.
    fn open_rootfs(&self, rec: &Record) -> Result<Rootfs> {
        let dir = self.paths.container_rootfs(&rec.id);
        let mounted_here = !rootfs::is_mountpoint(&dir);
        if mounted_here {
            let image = self
                .images
                .store
                .get(&rec.image_id)
                .ok_or_else(|| Error::not_found(format!("No such image: {}", rec.image)))?;
            let lowers = self.images.snapshots.lower_dirs(&image.record.chain());
            rootfs::mount_overlay(&lowers, &self.paths.container_upper(&rec.id), &self.paths.container_work(&rec.id), &dir)?;
        }
        match rfs::open(&dir, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()) {
            Ok(root) => Ok(Rootfs { dir, root, mounted_here }),
            Err(e) => {
                if mounted_here {
                    self.unmount_unless_running(&rec.id, &dir);
                }
                Err(Error::io(format!("open {}", dir.display()), e.into()))
            }
        }
    }

    /// Unmounts what [`Containers::open_rootfs`] mounted.
    fn close_rootfs(&self, id: &str, fs: Rootfs) {
        drop(fs.root);
        if fs.mounted_here {
            self.unmount_unless_running(id, &fs.dir);
        }
    }

    /// Unmounts the rootfs at `dir` unless the container runs now (the op
    /// lock makes that impossible, but a mount pulled from under a running
    /// container would be far worse than one left behind).
    fn unmount_unless_running(&self, id: &str, dir: &Path) {
        if self.find(id).is_ok_and(|h| h.record().state.running) {
            return;
        }
        if let Err(e) = rootfs::unmount(dir) {
            tracing::warn!(container_id = %id, error = %e, "unmount rootfs after a file operation");
        }
    }

    /// Runs `f` on a blocking thread with the container's op lock held and
    /// its rootfs mounted (by this call, if it was not), then unmounts what
    /// it mounted.
    async fn with_rootfs<T: Send + 'static>(
        self: &Arc<Self>,
        h: &Arc<Handle>,
        f: impl FnOnce(&Record, &Rootfs) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let _op = h.op.lock().await;
        ensure_not_removed(h)?;
        let me = self.clone();
        let h = h.clone();
        tokio::task::spawn_blocking(move || {
            let rec = h.record();
            let fs = me.open_rootfs(&rec)?;
            let out = f(&rec, &fs);
            me.close_rootfs(&rec.id, fs);
            out
        })
        .await
        .map_err(|e| Error::internal(format!("file operation task: {e}")))?
    }

    /// Runs `f` on a blocking thread with the container's op lock held,
    /// without mounting anything (diff and commit read the layers
    /// themselves). A pub(crate) door for other parts of the engine that
    /// must not race a start, stop or removal.
    pub(crate) async fn with_op_lock<T: Send + 'static>(
        self: &Arc<Self>,
        h: &Arc<Handle>,
        f: impl FnOnce(&Record) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let _op = h.op.lock().await;
        ensure_not_removed(h)?;
        let h = h.clone();
        tokio::task::spawn_blocking(move || f(&h.record()))
            .await
            .map_err(|e| Error::internal(format!("file operation task: {e}")))?
    }

    /// [`Containers::with_rootfs`] for an operation that streams: `f` runs on
    /// a spawned task and calls `ready` once with what the caller needs
    /// before the stream starts (or the error that stops it); this returns
    /// that. A failure before `ready` (mounting, say) is returned too; one
    /// after it is logged (`f` has cut the stream off). `on_success` runs
    /// when `f` finished without error.
    async fn stream_with_rootfs<T: Send + 'static>(
        self: &Arc<Self>,
        h: &Arc<Handle>,
        what: &'static str,
        f: impl FnOnce(&Record, &Rootfs, &dyn Fn(Result<T>) -> bool) -> Result<()> + Send + 'static,
        on_success: impl FnOnce() + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = oneshot::channel::<Result<T>>();
        let tx = Arc::new(Mutex::new(Some(tx)));
        let ready = {
            let tx = tx.clone();
            move |r: Result<T>| match tx.lock().expect("ready sender lock").take() {
                Some(s) => s.send(r).is_ok(),
                None => false,
            }
        };
        let (me, h) = (self.clone(), h.clone());
        tokio::spawn(async move {
            match me.with_rootfs(&h, move |rec, fs| f(rec, fs, &ready)).await {
                Ok(()) => on_success(),
                Err(e) => match tx.lock().expect("ready sender lock").take() {
                    Some(s) => {
                        let _ = s.send(Err(e));
                    }
                    None => tracing::warn!(container_id = %h.id, error = %e, "{what} broke off"),
                },
            }
        });
        rx.await.map_err(|_| Error::internal(format!("{what} ended early")))?
    }

    /// `HEAD /containers/{id}/archive?path=`: what `path` is inside the
    /// container.
    pub async fn stat_path(self: &Arc<Self>, name_or_id: &str, path: &str) -> Result<PathStat> {
        let h = self.find(name_or_id)?;
        let (name, path) = (name_or_id.to_owned(), path.to_owned());
        self.with_rootfs(&h, move |_, fs| {
            let abs = container_abs_path(&path);
            let target = Target::resolve(fs.root.as_fd(), &abs).map_err(|e| path_error(e, &path, &name))?;
            Ok(target.stat)
        })
        .await
    }

    /// `GET /containers/{id}/archive?path=`: what `path` is, and a tar of it
    /// (a file as one entry named by its base name, a directory as its base
    /// name and everything below it). Errors come before the stream; the
    /// container stays locked until the stream ends.
    pub async fn archive_path(self: &Arc<Self>, name_or_id: &str, path: &str) -> Result<(PathStat, TarStream)> {
        let h = self.find(name_or_id)?;
        let (name, path) = (name_or_id.to_owned(), path.to_owned());
        let (tx, rx) = mpsc::channel(8);
        let pack = move |_: &Record, fs: &Rootfs, ready: &dyn Fn(Result<PathStat>) -> bool| {
            let abs = container_abs_path(&path);
            let target = match Target::resolve(fs.root.as_fd(), &abs) {
                Ok(t) => t,
                Err(e) => {
                    ready(Err(path_error(e, &path, &name)));
                    return Ok(());
                }
            };
            if !ready(Ok(target.stat.clone())) {
                return Ok(());
            }
            let mut out = ChunkWriter::new(tx);
            let shown = Path::new(&abs);
            let opts = PackOptions::default();
            let packed = archive::write_tar_of_entry(target.parent.as_fd(), &target.name, target.stat_name().as_bytes(), shown, &mut out, &opts);
            out.end(packed).map_err(|e| Error::internal(format!("archive {abs}: {}", error_chain(&e))))
        };
        let stat = self.stream_with_rootfs(&h, "archive", pack, || {}).await?;
        self.event(&h, "archive-path", &[]);
        Ok((stat, rx))
    }

    /// `PUT /containers/{id}/archive?path=`: extracts the tar (possibly
    /// compressed) in `archive` into the directory `path` of the container,
    /// resolved with every symlink followed inside the container. Whiteout
    /// names are ordinary files here.
    pub async fn extract_to_dir(self: &Arc<Self>, name_or_id: &str, path: &str, opts: ExtractOptions, archive: File) -> Result<()> {
        let h = self.find(name_or_id)?;
        let (name, path) = (name_or_id.to_owned(), path.to_owned());
        self.with_rootfs(&h, move |rec, fs| {
            let root = fs.root.as_fd();
            let abs = container_abs_path(&path);
            let dest = open_in_root(root, &abs, true).map_err(|e| path_error(e, &path, &name))?;
            let st = rfs::fstat(&dest).map_err(|e| path_error(e, &path, &name))?;
            if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
                return Err(Error::invalid("extraction point is not a directory"));
            }
            if rec.host_config.get("ReadonlyRootfs").and_then(Value::as_bool).unwrap_or(false) {
                return Err(Error::invalid("container rootfs is marked read-only"));
            }
            let owner = match rec.config.get("User").and_then(Value::as_str).filter(|u| opts.copy_uid_gid && !u.is_empty()) {
                Some(user) => Some(lookup_user(root, user)?),
                None => None,
            };
            let shown_dest = resolve_lexically(root, &abs).unwrap_or_else(|_| abs.clone());
            let reader = archive::decompressed(BufReader::new(archive)).map_err(|e| Error::invalid(format!("invalid archive: {e}")))?;
            let apply = ApplyOptions { whiteouts: false, no_replace_dir_non_dir: opts.no_overwrite_dir_non_dir, owner, ..ApplyOptions::default() };
            let dest_path = format!("/proc/self/fd/{}", dest.as_raw_fd());
            archive::apply_layer(reader, Path::new(&dest_path), &apply).map_err(|e| extract_error(&e, &shown_dest))?;
            Ok(())
        })
        .await?;
        self.event(&h, "extract-to-dir", &[]);
        Ok(())
    }

    /// `GET /containers/{id}/changes`: what differs between the container's
    /// file system and its image, as `docker diff` lists it.
    pub async fn changes(self: &Arc<Self>, name_or_id: &str) -> Result<Vec<Change>> {
        let h = self.find(name_or_id)?;
        let me = self.clone();
        self.with_op_lock(&h, move |rec| me.layer_changes(rec)).await
    }

    fn layer_changes(&self, rec: &Record) -> Result<Vec<Change>> {
        let image = self.images.store.get(&rec.image_id).ok_or_else(|| Error::not_found(format!("No such image: {}", rec.image)))?;
        let lowers = self.images.snapshots.lower_dirs(&image.record.chain());
        let upper = self.paths.container_upper(&rec.id);
        diff_layers(&upper, &lowers).map_err(|e| Error::io(format!("compare {} with its image", rec.id), e))
    }

    /// `GET /containers/{id}/export`: a tar of the container's whole file
    /// system, streamed.
    pub async fn export(self: &Arc<Self>, name_or_id: &str) -> Result<TarStream> {
        let h = self.find(name_or_id)?;
        let (tx, rx) = mpsc::channel(8);
        let pack = move |_: &Record, fs: &Rootfs, ready: &dyn Fn(Result<()>) -> bool| {
            if !ready(Ok(())) {
                return Ok(());
            }
            let mut out = ChunkWriter::new(tx);
            let packed = archive::write_tar_of_dir(&fs.dir, &mut out, &PackOptions::default());
            out.end(packed).map_err(|e| Error::internal(format!("export: {}", error_chain(&e))))
        };
        let (me, done) = (self.clone(), h.clone());
        self.stream_with_rootfs(&h, "export", pack, move || me.event(&done, "export", &[])).await?;
        Ok(rx)
    }

    /// `POST /commit`: makes an image of the container: its image plus one
    /// layer with the container's changes, and a config from the
    /// container's (with `changes` applied), as dockerd does.
    pub async fn commit(self: &Arc<Self>, name_or_id: &str, opts: CommitOptions) -> Result<Digest> {
        let h = self.find(name_or_id)?;
        let rec = h.record();
        if rec.state.dead {
            return Err(Error::conflict(format!("You cannot commit container {} which is Dead", rec.id)));
        }
        if rec.state.status == "removing" {
            return Err(Error::conflict(format!("You cannot commit container {} which is being removed", rec.id)));
        }
        let reference = commit_reference(&opts.repo, &opts.tag)?;
        let config = commit_config(&rec.config, opts.config.as_ref(), &opts.changes)?;
        let pause = opts.pause && rec.state.running && !rec.state.paused;
        if pause {
            if let Err(e) = self.pause(&rec.id, true).await {
                tracing::debug!(container_id = %rec.id, error = %e, "pause before commit");
            }
        }
        let me = self.clone();
        let (comment, author) = (opts.comment.clone(), opts.author.clone());
        let committed = self.with_op_lock(&h, move |rec| me.commit_locked(rec, config, &comment, &author)).await;
        let tagged = committed.and_then(|id| {
            let idstr = id.to_string();
            let mut image_ref = String::new();
            if let Some(r) = reference {
                self.images.store.tag(&id, &r)?;
                image_ref = r.familiar();
                self.images.event("tag", &idstr, Some(&image_ref));
            }
            self.event(&h, "commit", &[("comment", opts.comment.clone()), ("imageID", idstr), ("imageRef", image_ref)]);
            Ok(id)
        });
        // Last, as dockerd's deferred unpause: after the commit's events.
        if pause {
            if let Err(e) = self.pause(&rec.id, false).await {
                tracing::debug!(container_id = %rec.id, error = %e, "unpause after commit");
            }
        }
        tagged
    }

    /// The blocking part of commit, with the op lock held: the layer, its
    /// snapshot, the config and the image record.
    fn commit_locked(&self, rec: &Record, config: Value, comment: &str, author: &str) -> Result<Digest> {
        let images = &self.images;
        let parent = images.store.get(&rec.image_id).ok_or_else(|| Error::not_found(format!("No such image: {}", rec.image)))?;
        let changes = self.layer_changes(rec)?;
        let keep: BTreeSet<Vec<u8>> = changes.iter().map(|c| c.path.trim_start_matches('/').as_bytes().to_vec()).collect();

        // The layer: the writable layer's changes, whiteouts as a layer tar
        // writes them, hashed on the way to a spool file.
        let spool = tempfile::NamedTempFile::new_in(self.paths.tmp_dir()).map_err(|e| Error::io("create layer file", e))?;
        let file = spool.reopen().map_err(|e| Error::io("open layer file", e))?;
        let mut hashing = HashingWriter::new(io::BufWriter::new(file));
        let upper = self.paths.container_upper(&rec.id);
        archive::write_tar_of_dir_filtered(&upper, &mut hashing, &PackOptions { overlay_whiteouts: true }, &|p| keep.contains(p))
            .map_err(|e| Error::internal(format!("pack the container's changes: {}", error_chain(&e))))?;
        let (writer, diff_id, _) = hashing.finish();
        writer.into_inner().map_err(|e| Error::io("write layer file", e.into_error()))?;

        let mut diff_ids: Vec<Digest> = parent.record.layers.iter().map(|l| l.diff_id.clone()).collect();
        let empty_layer = diff_id.to_string() == EMPTY_LAYER;
        let mut leased = vec![diff_id.clone()];
        if !empty_layer {
            diff_ids.push(diff_id.clone());
        }
        let chains = chain_ids(&diff_ids);
        leased.extend(chains.iter().cloned());
        let _lease = images.lease(leased);
        if !empty_layer {
            if !images.content.exists(&diff_id) {
                images.content.commit_file(spool.path(), Some(&diff_id)).map_err(|e| Error::internal(format!("store layer {diff_id}: {e}")))?;
            }
            let chain = chains.last().expect("at least the new layer");
            if !images.snapshots.exists(chain) {
                let parent_chain = chains.len().checked_sub(2).map(|i| chains[i].clone());
                images.unpack_blob(&diff_id, chain, parent_chain)?;
            }
        }

        let created = crate::timefmt::now_rfc3339();
        let image_config = child_image_config(&parent.config, rec, config, &diff_ids, &created, comment, author, empty_layer);
        let bytes = serde_json::to_vec(&image_config).map_err(|e| Error::internal(e.to_string()))?;
        let _config_lease = images.lease([Digest::of(&bytes)]);
        let id = images.content.write_blob(None, &bytes).map_err(|e| Error::internal(format!("store image config: {e}")))?;
        let layers = images.layer_records(&diff_ids, Some(&parent))?;
        let record = ImageRecord { id: id.clone(), layers, parent: Some(rec.image_id.clone()), last_tag_time: None, manifests: Vec::new() };
        images.store.put(Image { record, config: image_config }, &[])?;
        Ok(id)
    }
}

/// A resolved path: the entry, its parent directory and its name there.
struct Target {
    parent: OwnedFd,
    /// The entry's name in `parent`; `.` when `parent` is the entry.
    name: Vec<u8>,
    stat: PathStat,
}

impl Target {
    /// Resolves `abs` (from [`container_abs_path`]) as dockerd does: every
    /// directory on the way is followed inside the container; the last
    /// component is not, unless the path ends in `/` or `/.`.
    fn resolve(root: BorrowedFd<'_>, abs: &str) -> io::Result<Target> {
        let (parent, name, st) = if abs.ends_with('/') || abs.ends_with("/.") {
            let dir = open_in_root(root, abs, true)?;
            let st = rfs::fstat(&dir)?;
            (dir, b".".to_vec(), st)
        } else {
            let (dir, base) = abs.rsplit_once('/').expect("absolute path");
            let dir = open_in_root(root, if dir.is_empty() { "/" } else { dir }, true)?;
            let st = rfs::statat(&dir, base, AtFlags::SYMLINK_NOFOLLOW)?;
            (dir, base.as_bytes().to_vec(), st)
        };
        let link_target = if FileType::from_raw_mode(st.st_mode) == FileType::Symlink { resolve_lexically(root, abs)? } else { String::new() };
        let stat = PathStat {
            name: go_base(abs).to_owned(),
            size: st.st_size,
            mode: go_mode(&st),
            mtime: crate::timefmt::format_rfc3339(st.st_mtime, st.st_mtime_nsec as u32),
            link_target,
        };
        Ok(Target { parent, name, stat })
    }

    /// The name the tar's first entry gets: the path's base name, or
    /// nothing for the root (whose entries dockerd writes as `/bin/...`).
    fn stat_name(&self) -> &str {
        if self.stat.name == "/" {
            ""
        } else {
            &self.stat.name
        }
    }
}

/// `path` as dockerd reads it: absolute inside the container, cleaned
/// lexically (`..` stops at `/`), with a trailing `/` or `/.` kept.
fn container_abs_path(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    let mut abs = format!("/{}", parts.join("/"));
    let names_current_dir = path == "." || path.ends_with("/.");
    if names_current_dir && go_base(&abs) != "." {
        if !abs.ends_with('/') {
            abs.push('/');
        }
        abs.push('.');
    } else if path.ends_with('/') && !abs.ends_with('/') {
        abs.push('/');
    }
    abs
}

/// Go's `filepath.Base`.
fn go_base(path: &str) -> &str {
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        return "/";
    }
    trimmed.rsplit('/').next().unwrap_or(trimmed)
}

/// A stat's mode as Go's `os.FileMode`.
fn go_mode(st: &Stat) -> u32 {
    let raw = st.st_mode;
    let mut mode = raw & 0o777;
    mode |= match FileType::from_raw_mode(raw) {
        FileType::Directory => GO_MODE_DIR,
        FileType::Symlink => GO_MODE_SYMLINK,
        FileType::Fifo => GO_MODE_NAMED_PIPE,
        FileType::Socket => GO_MODE_SOCKET,
        FileType::CharacterDevice => GO_MODE_DEVICE | GO_MODE_CHAR_DEVICE,
        FileType::BlockDevice => GO_MODE_DEVICE,
        _ => 0,
    };
    if raw & 0o4000 != 0 {
        mode |= GO_MODE_SETUID;
    }
    if raw & 0o2000 != 0 {
        mode |= GO_MODE_SETGID;
    }
    if raw & 0o1000 != 0 {
        mode |= GO_MODE_STICKY;
    }
    mode
}

/// Opens `path` (absolute inside the container) as an `O_PATH` descriptor,
/// resolved inside the container's root: absolute symlinks start at the
/// container's `/`, `..` stops there, `/proc` magic links are refused.
/// Follows the last component only when `follow`.
fn open_in_root(root: BorrowedFd<'_>, path: &str, follow: bool) -> io::Result<OwnedFd> {
    let mut flags = OFlags::PATH | OFlags::CLOEXEC;
    if !follow {
        flags |= OFlags::NOFOLLOW;
    }
    let rel = path.trim_start_matches('/');
    let rel = if rel.is_empty() { "." } else { rel };
    let how = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
    let mut attempts = 0;
    loop {
        match rfs::openat2(root, rel, flags, Mode::empty(), how) {
            // The kernel asks for a retry when a rename raced the lookup.
            Err(Errno::AGAIN) if attempts < 16 => attempts += 1,
            other => return other.map_err(io::Error::from),
        }
    }
}

/// Resolves every symlink of `path` inside the container, lexically where
/// components are missing (dockerd's `FollowSymlinkInScope`): the
/// container path a symlink leads to, even a dangling one. Only reads link
/// targets; each component is looked up on its own with `O_NOFOLLOW` from
/// the container's root.
fn resolve_lexically(root: BorrowedFd<'_>, path: &str) -> io::Result<String> {
    let mut pending: Vec<String> = path.split('/').rev().filter(|c| !c.is_empty()).map(str::to_owned).collect();
    // The resolved components, each with its directory descriptor while
    // the path exists on disk.
    let mut done: Vec<(String, Option<OwnedFd>)> = Vec::new();
    let mut links = 0;
    while let Some(comp) = pending.pop() {
        match comp.as_str() {
            "." => continue,
            ".." => {
                done.pop();
                continue;
            }
            _ => {}
        }
        let here: Option<BorrowedFd<'_>> = match done.last() {
            None => Some(root),
            Some((_, fd)) => fd.as_ref().map(|f| f.as_fd()),
        };
        let Some(dir) = here else {
            done.push((comp, None));
            continue;
        };
        let st = match rfs::statat(dir, comp.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT | Errno::NOTDIR) => {
                done.push((comp, None));
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Symlink => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(Errno::LOOP.into());
                }
                let target = rfs::readlinkat(dir, comp.as_str(), Vec::new())?;
                let target = String::from_utf8_lossy(target.as_bytes()).into_owned();
                if target.starts_with('/') {
                    done.clear();
                }
                pending.extend(target.split('/').rev().filter(|c| !c.is_empty()).map(str::to_owned));
            }
            FileType::Directory => {
                let fd = sys::open_dir_path(dir, comp.as_bytes()).ok();
                done.push((comp, fd));
            }
            _ => done.push((comp, None)),
        }
    }
    Ok(format!("/{}", done.into_iter().map(|(c, _)| c).collect::<Vec<_>>().join("/")))
}

/// The container path `path` names once its symlinks are followed inside
/// the root at `root` (missing components kept lexically).
pub(crate) fn resolve_in_root(root: BorrowedFd<'_>, path: &str) -> io::Result<String> {
    resolve_lexically(root, path)
}

/// An `O_PATH` descriptor of `path`, resolved inside the root at `root`.
pub(crate) fn open_path_in_root(root: BorrowedFd<'_>, path: &str) -> io::Result<OwnedFd> {
    open_in_root(root, path, true)
}

/// A container removed while the caller waited for its op lock is gone.
fn ensure_not_removed(h: &Handle) -> Result<()> {
    if *h.removed.borrow() {
        return Err(Error::not_found(format!("No such container: {}", h.id)));
    }
    Ok(())
}

/// Maps a failure to reach `path` to dockerd's errors.
fn path_error(e: impl Into<io::Error>, path: &str, container: &str) -> Error {
    let e: io::Error = e.into();
    match e.raw_os_error() {
        Some(libc::ENOENT) => Error::not_found(format!("Could not find the file {path} in container {container}")),
        Some(libc::ENOTDIR) => Error::invalid(format!("lstat {path}: not a directory")),
        Some(libc::ELOOP) => Error::invalid(format!("lstat {path}: too many levels of symbolic links")),
        Some(libc::EXDEV) => Error::invalid(format!("{path}: resolves outside the container")),
        _ => Error::io(format!("lstat {path}"), e),
    }
}

/// Maps an extraction failure to dockerd's errors.
fn extract_error(e: &ArchiveError, dest: &str) -> Error {
    if let ArchiveError::ValidateEntry { path, reason } = e {
        let entry = format!("{}/{}", dest.trim_end_matches('/'), path.trim_start_matches("./").trim_start_matches('/').trim_end_matches('/'));
        match reason {
            Rejection::ReplaceDirectory => {
                return Error::invalid(format!("cannot overwrite directory {entry:?} with non-directory {dest:?}"))
            }
            Rejection::ReplaceNonDirectory => {
                return Error::invalid(format!("cannot overwrite non-directory {entry:?} with directory {dest:?}"))
            }
            _ => {}
        }
    }
    let kind = if e.is_invalid_layer() || matches!(e, ArchiveError::ResolveParent { .. }) { Kind::InvalidArgument } else { Kind::Internal };
    Error::new(kind, format!("Error processing tar file: {}", error_chain(e)))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// The uid and gid of `user` (`name`, `uid`, `name:group`, `uid:gid`...)
/// from the container's `/etc/passwd` and `/etc/group`, read inside the
/// container's root, as dockerd's `getUIDGID` does.
fn lookup_user(root: BorrowedFd<'_>, user: &str) -> Result<(u32, u32)> {
    let read = |path: &str| -> String {
        open_in_root(root, path, true)
            .and_then(|fd| {
                // Only a regular file is opened for reading: opening a
                // device node the container made could touch the host's
                // device. The O_PATH descriptor pins the inode checked.
                if FileType::from_raw_mode(rfs::fstat(&fd)?.st_mode) != FileType::RegularFile {
                    return Err(io::Error::from(Errno::INVAL));
                }
                let proc_path = format!("/proc/self/fd/{}", fd.as_raw_fd());
                let file = rfs::open(proc_path, OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY, Mode::empty())?;
                let mut text = String::new();
                io::Read::read_to_string(&mut io::Read::take(File::from(file), 16 << 20), &mut text)?;
                Ok(text)
            })
            .unwrap_or_default()
    };
    let (user_part, group_part) = user.split_once(':').unwrap_or((user, ""));
    let (mut uid, mut gid) = (0u32, 0u32);
    if !user_part.is_empty() {
        let passwd = read("/etc/passwd");
        let entry = passwd.lines().map(|l| l.split(':').collect::<Vec<_>>()).find(|f| {
            f.len() >= 4 && match user_part.parse::<u32>() {
                Ok(id) => f[2].parse::<u32>() == Ok(id),
                Err(_) => f[0] == user_part,
            }
        });
        match (entry, user_part.parse::<u32>()) {
            (Some(f), _) => {
                uid = f[2].parse().unwrap_or(0);
                gid = f[3].parse().unwrap_or(0);
            }
            (None, Ok(id)) => uid = id,
            (None, Err(_)) => {
                return Err(Error::invalid(format!("failed to look up user {user_part:?} in container: no matching entries in passwd file")))
            }
        }
    }
    if !group_part.is_empty() {
        gid = match group_part.parse::<u32>() {
            Ok(id) => id,
            Err(_) => {
                let group = read("/etc/group");
                group
                    .lines()
                    .map(|l| l.split(':').collect::<Vec<_>>())
                    .find(|f| f.len() >= 3 && f[0] == group_part)
                    .and_then(|f| f[2].parse().ok())
                    .ok_or_else(|| Error::invalid(format!("failed to look up group {group_part:?} in container: no matching entries in group file")))?
            }
        };
    }
    Ok((uid, gid))
}

// ---------------------------------------------------------------------------
// Tar streams

/// Sends what is written to a [`TarStream`] in [`CHUNK`]-sized pieces.
/// Blocks (it runs on a blocking thread); fails with `BrokenPipe` once the
/// client went away.
struct ChunkWriter {
    tx: mpsc::Sender<io::Result<Vec<u8>>>,
    buf: Vec<u8>,
}

impl ChunkWriter {
    fn new(tx: mpsc::Sender<io::Result<Vec<u8>>>) -> Self {
        ChunkWriter { tx, buf: Vec::with_capacity(CHUNK) }
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx.blocking_send(Ok(chunk)).map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "client went away"))
    }

    /// Ends the stream after the packer's `result`: sends what is buffered
    /// if it succeeded; otherwise sends an error, so the response is cut
    /// off rather than ending as if the tar were complete.
    fn end(&mut self, result: std::result::Result<(), ArchiveError>) -> io::Result<()> {
        match result.map_err(|e| io::Error::other(error_chain(&e))).and_then(|()| self.send()) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.buf.clear();
                let _ = self.tx.blocking_send(Err(io::Error::new(e.kind(), e.to_string())));
                Err(e)
            }
        }
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// docker diff

/// The changes of the writable layer `upper` against the image layers
/// `lowers` (top first), as dockerd's `docker diff` reports them: an entry
/// not in the image is added (and so is everything below it), one whose
/// type, mode, owner, device, or (not for directories) size or mtime
/// differs is modified, an overlay whiteout of something the image has is
/// deleted; a directory with changes below it is modified; mount points
/// the runtime made ([`MOUNT_STUBS`]) are not changes. Sorted by path.
///
/// Reads `upper` and `lowers` through descriptors, never following
/// symlinks: the container may change `upper` meanwhile.
pub fn diff_layers(upper: &Path, lowers: &[PathBuf]) -> io::Result<Vec<Change>> {
    let upper_fd = rfs::open(upper, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
    let mut lower_fds = Vec::with_capacity(lowers.len());
    for l in lowers {
        lower_fds.push(rfs::open(l, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?);
    }
    let mut out = Vec::new();
    diff_dir(upper_fd.as_fd(), &lower_fds, "", false, &mut out)?;
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// What a lower layer has at a name.
enum Lower {
    Missing,
    /// Deleted in a layer above those that have it.
    WhitedOut,
    Entry(Stat),
}

/// The image's entry `name` in the directories `lowers` (top first): the
/// topmost layer that has it decides.
fn lower_entry(lowers: &[OwnedFd], name: &[u8]) -> io::Result<Lower> {
    for dir in lowers {
        match rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if is_whiteout(&st) => return Ok(Lower::WhitedOut),
            Ok(st) => return Ok(Lower::Entry(st)),
            Err(Errno::NOENT) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Lower::Missing)
}

/// The directories `name` opens in each of `lowers` that has it as a
/// directory, top first, stopping below an opaque one or a non-directory.
fn lower_children(lowers: &[OwnedFd], name: &[u8]) -> Vec<OwnedFd> {
    let mut out = Vec::new();
    for dir in lowers {
        match sys::file_type_at(dir.as_fd(), name) {
            Ok(Some(FileType::Directory)) => {}
            Ok(None) => continue,
            _ => break,
        }
        let Ok(child) = sys::open_dir(dir.as_fd(), name) else { break };
        let opaque = is_opaque(child.as_fd());
        out.push(child);
        if opaque {
            break;
        }
    }
    out
}

fn is_whiteout(st: &Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::CharacterDevice && st.st_rdev == 0
}

fn is_opaque(dir: BorrowedFd<'_>) -> bool {
    let mut value = [0u8; 1];
    matches!(rfs::fgetxattr(dir, archive::OVERLAY_OPAQUE_XATTR, &mut value), Ok(1) if value[0] == b'y')
}

/// dockerd's `statDifferent`: times and sizes of directories do not count.
fn stat_different(old: &Stat, new: &Stat) -> bool {
    let old_dir = FileType::from_raw_mode(old.st_mode) == FileType::Directory;
    let same_time = old.st_mtime == new.st_mtime
        && (old.st_mtime_nsec == new.st_mtime_nsec || old.st_mtime_nsec == 0 || new.st_mtime_nsec == 0);
    old.st_mode != new.st_mode
        || old.st_uid != new.st_uid
        || old.st_gid != new.st_gid
        || old.st_rdev != new.st_rdev
        || (!old_dir && (!same_time || old.st_size != new.st_size))
}

/// Compares the upper directory `dir` (named `path`, `""` for the root)
/// with the same directory in `lowers`; `opaque` when it hides what the
/// lower layers have in it.
fn diff_dir(dir: BorrowedFd<'_>, lowers: &[OwnedFd], path: &str, opaque: bool, out: &mut Vec<Change>) -> io::Result<()> {
    let names = sys::sorted_names(dir)?;
    if opaque {
        // Everything the image had here and the upper layer does not.
        let present: BTreeSet<&[u8]> = names.iter().map(Vec::as_slice).collect();
        let mut seen = BTreeSet::new();
        for lower in lowers {
            for name in sys::sorted_names(lower.as_fd())? {
                if present.contains(name.as_slice()) || !seen.insert(name.clone()) {
                    continue;
                }
                let whiteout = rfs::statat(lower, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW).is_ok_and(|st| is_whiteout(&st));
                if !whiteout {
                    out.push(Change { path: child_path(path, &name), kind: CHANGE_DELETE });
                }
            }
        }
    }
    for name in names {
        let child = child_path(path, &name);
        if MOUNT_STUBS.contains(&child.trim_start_matches('/')) {
            continue;
        }
        let st = match rfs::statat(dir, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => continue,
            Err(e) => return Err(e.into()),
        };
        let lower = lower_entry(lowers, &name)?;
        if is_whiteout(&st) {
            if let Lower::Entry(_) = lower {
                out.push(Change { path: child, kind: CHANGE_DELETE });
            }
            continue;
        }
        let at = out.len();
        let reported = match &lower {
            Lower::Entry(old) if !stat_different(old, &st) => false,
            Lower::Entry(_) => {
                out.push(Change { path: child.clone(), kind: CHANGE_MODIFY });
                true
            }
            Lower::Missing | Lower::WhitedOut => {
                out.push(Change { path: child.clone(), kind: CHANGE_ADD });
                true
            }
        };
        if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
            continue;
        }
        let upper_child = match sys::open_dir(dir, &name) {
            Ok(fd) => fd,
            // Replaced by a non-directory since it was listed.
            Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => continue,
            Err(e) => return Err(e.into()),
        };
        let child_lowers = match &lower {
            Lower::Entry(old) if FileType::from_raw_mode(old.st_mode) == FileType::Directory => lower_children(lowers, &name),
            _ => Vec::new(),
        };
        let child_opaque = !child_lowers.is_empty() && is_opaque(upper_child.as_fd());
        diff_dir(upper_child.as_fd(), &child_lowers, &child, child_opaque, out)?;
        if out.len() > at && !reported {
            // Changes below an otherwise unchanged directory.
            out.insert(at, Change { path: child, kind: CHANGE_MODIFY });
        }
    }
    Ok(())
}

fn child_path(parent: &str, name: &[u8]) -> String {
    format!("{parent}/{}", String::from_utf8_lossy(name))
}

// ---------------------------------------------------------------------------
// docker commit

/// The name a commit tags: `repo` with `tag` (or `latest`); none without a
/// repo, as dockerd's `RepoTagReference`.
fn commit_reference(repo: &str, tag: &str) -> Result<Option<Reference>> {
    if repo.is_empty() {
        return Ok(None);
    }
    let r = Reference::parse(repo).map_err(|e| Error::invalid(e.to_string()))?;
    if r.digest().is_some() {
        return Err(Error::invalid("cannot import digest reference"));
    }
    let r = if tag.is_empty() { r.with_default_tag() } else { r.with_tag(tag).map_err(|e| Error::invalid(e.to_string()))? };
    Ok(Some(r))
}

/// The committed image's `config`: the request's config, or else the
/// container's, with `changes` applied, then completed from the
/// container's as dockerd's `merge` does.
fn commit_config(container: &Value, requested: Option<&Value>, changes: &[String]) -> Result<Value> {
    let base = requested.filter(|v| v.as_object().is_some_and(|m| !m.is_empty())).unwrap_or(container);
    let applied = changes::apply_to(run_config_of(base), changes).map_err(Error::invalid)?;
    let merged = merge_config(applied, &run_config_of(container));
    let mut out = serde_json::to_value(&merged).map_err(|e| Error::internal(e.to_string()))?;
    // Fields the change parser does not model (StopTimeout, Shell, ...)
    // come from the config as is.
    if let (Value::Object(dst), Value::Object(src)) = (&mut out, base) {
        for (k, v) in src {
            if !dst.contains_key(k) && !v.is_null() {
                dst.insert(k.clone(), v.clone());
            }
        }
    }
    Ok(out)
}

/// dockerd's `merge(userConf, imageConf)`: what the user's config leaves
/// empty comes from the container's.
fn merge_config(mut user: RunConfig, base: &RunConfig) -> RunConfig {
    if user.user.is_empty() {
        user.user = base.user.clone();
    }
    match (&mut user.exposed_ports, &base.exposed_ports) {
        (None, b) => user.exposed_ports = b.clone(),
        (Some(u), Some(b)) if u.is_empty() => *u = b.clone(),
        (Some(u), Some(b)) => u.extend(b.iter().map(|(k, v)| (k.clone(), *v))),
        _ => {}
    }
    match &mut user.env {
        None => user.env = base.env.clone(),
        Some(u) if u.is_empty() => user.env = base.env.clone(),
        Some(u) => {
            for e in base.env.iter().flatten() {
                let key = e.split('=').next().unwrap_or_default();
                if !u.iter().any(|x| x.split('=').next() == Some(key)) {
                    u.push(e.clone());
                }
            }
        }
    }
    let labels = user.labels.get_or_insert_with(BTreeMap::new);
    for (k, v) in base.labels.iter().flatten() {
        labels.entry(k.clone()).or_insert_with(|| v.clone());
    }
    if user.entrypoint.as_ref().is_none_or(Vec::is_empty) {
        if user.cmd.as_ref().is_none_or(Vec::is_empty) {
            user.cmd = base.cmd.clone();
        }
        if user.entrypoint.is_none() {
            user.entrypoint = base.entrypoint.clone();
        }
    }
    if let Some(b) = &base.healthcheck {
        let u = user.healthcheck.get_or_insert_with(HealthConfig::default);
        if u.test.is_empty() {
            u.test = b.test.clone();
        }
        for (dst, src) in [(&mut u.interval, b.interval), (&mut u.timeout, b.timeout), (&mut u.start_period, b.start_period), (&mut u.retries, b.retries)] {
            if *dst == 0 {
                *dst = src;
            }
        }
    }
    if user.working_dir.is_empty() {
        user.working_dir = base.working_dir.clone();
    }
    match (&mut user.volumes, &base.volumes) {
        (None, b) => user.volumes = b.clone(),
        (Some(u), Some(b)) if u.is_empty() => *u = b.clone(),
        (Some(u), Some(b)) => u.extend(b.iter().map(|(k, v)| (k.clone(), *v))),
        _ => {}
    }
    if user.stop_signal.is_empty() {
        user.stop_signal = base.stop_signal.clone();
    }
    user
}

/// A container config (dockerd's JSON) as the change parser's type.
fn run_config_of(v: &Value) -> RunConfig {
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
    let b = |k: &str| v.get(k).and_then(Value::as_bool).unwrap_or(false);
    let list = |k: &str| -> Option<Vec<String>> { v.get(k).and_then(|x| serde_json::from_value(x.clone()).ok()) };
    let set = |k: &str| -> Option<BTreeMap<String, changes::Empty>> {
        v.get(k).and_then(Value::as_object).map(|m| m.keys().map(|k| (k.clone(), changes::Empty {})).collect())
    };
    let healthcheck = v.get("Healthcheck").filter(|h| h.is_object()).map(|h| {
        let n = |k: &str| h.get(k).and_then(Value::as_i64).unwrap_or(0);
        HealthConfig {
            test: h.get("Test").and_then(|t| serde_json::from_value(t.clone()).ok()).unwrap_or_default(),
            interval: n("Interval"),
            timeout: n("Timeout"),
            start_period: n("StartPeriod"),
            retries: n("Retries"),
        }
    });
    RunConfig {
        hostname: s("Hostname"),
        domainname: s("Domainname"),
        user: s("User"),
        attach_stdin: b("AttachStdin"),
        attach_stdout: b("AttachStdout"),
        attach_stderr: b("AttachStderr"),
        exposed_ports: set("ExposedPorts"),
        tty: b("Tty"),
        open_stdin: b("OpenStdin"),
        stdin_once: b("StdinOnce"),
        env: list("Env"),
        cmd: list("Cmd"),
        healthcheck,
        args_escaped: b("ArgsEscaped"),
        image: s("Image"),
        volumes: set("Volumes"),
        working_dir: s("WorkingDir"),
        entrypoint: list("Entrypoint"),
        on_build: list("OnBuild"),
        labels: v.get("Labels").and_then(|l| serde_json::from_value(l.clone()).ok()),
        stop_signal: s("StopSignal"),
    }
}

/// The committed image's config, as dockerd's `NewChildImage` writes it:
/// the parent's platform and history plus one entry (an empty layer when
/// the container changed nothing), the container and its config.
#[allow(clippy::too_many_arguments)]
fn child_image_config(
    parent: &Value,
    rec: &Record,
    config: Value,
    diff_ids: &[Digest],
    created: &str,
    comment: &str,
    author: &str,
    empty_layer: bool,
) -> Value {
    let cmd: Vec<String> = rec.config.get("Cmd").and_then(|c| serde_json::from_value(c.clone()).ok()).unwrap_or_default();
    let mut history: Vec<Value> = parent.get("history").and_then(Value::as_array).cloned().unwrap_or_default();
    let mut entry = json!({"created": created});
    if !author.is_empty() {
        entry["author"] = json!(author);
    }
    if !cmd.is_empty() {
        entry["created_by"] = json!(cmd.join(" "));
    }
    if !comment.is_empty() {
        entry["comment"] = json!(comment);
    }
    if empty_layer {
        entry["empty_layer"] = json!(true);
    }
    history.push(entry);
    let arch = parent.get("architecture").and_then(Value::as_str).filter(|a| !a.is_empty()).unwrap_or(crate::engine::go_arch());
    let mut out = json!({
        "architecture": arch,
        "config": config,
        "container": rec.id,
        "container_config": rec.config,
        "created": created,
        "docker_version": env!("CARGO_PKG_VERSION"),
        "history": history,
        "os": parent.get("os").and_then(Value::as_str).unwrap_or("linux"),
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    if !author.is_empty() {
        out["author"] = json!(author);
    }
    if !comment.is_empty() {
        out["comment"] = json!(comment);
    }
    for k in ["variant", "os.version", "os.features"] {
        if let Some(v) = parent.get(k).filter(|v| !v.is_null()) {
            out[k] = v.clone();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_cleaned_like_dockerd_keeping_trailing_markers() {
        assert_eq!(container_abs_path("etc/passwd"), "/etc/passwd");
        assert_eq!(container_abs_path("/d/"), "/d/");
        assert_eq!(container_abs_path("/d/."), "/d/.");
        assert_eq!(container_abs_path("."), "/.");
        assert_eq!(container_abs_path("/"), "/");
        assert_eq!(container_abs_path("/../../etc//x/../passwd"), "/etc/passwd");
        assert_eq!(go_base("/d/"), "d");
        assert_eq!(go_base("/d/."), ".");
        assert_eq!(go_base("/"), "/");
    }

    #[test]
    fn modes_are_go_file_modes() {
        let dir = tempfile::tempdir().unwrap();
        let st = rfs::stat(dir.path()).unwrap();
        assert_eq!(go_mode(&st), GO_MODE_DIR | (st.st_mode & 0o777));
        let link = dir.path().join("l");
        std::os::unix::fs::symlink("/nowhere", &link).unwrap();
        let st = rfs::lstat(&link).unwrap();
        assert_eq!(go_mode(&st), GO_MODE_SYMLINK | 0o777);
    }

    #[test]
    fn symlinks_resolve_inside_the_root_even_dangling() {
        let dir = tempfile::tempdir().unwrap();
        let root_path = dir.path();
        std::fs::create_dir_all(root_path.join("etc")).unwrap();
        std::fs::write(root_path.join("etc/shadow"), "container").unwrap();
        std::os::unix::fs::symlink("/etc/shadow", root_path.join("leak")).unwrap();
        std::os::unix::fs::symlink("../../../../etc/shadow", root_path.join("etc/up")).unwrap();
        std::os::unix::fs::symlink("/nonexist/secret", root_path.join("dang")).unwrap();
        let root = rfs::open(root_path, OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).unwrap();
        assert_eq!(resolve_lexically(root.as_fd(), "/leak").unwrap(), "/etc/shadow");
        assert_eq!(resolve_lexically(root.as_fd(), "/etc/up").unwrap(), "/etc/shadow");
        assert_eq!(resolve_lexically(root.as_fd(), "/dang").unwrap(), "/nonexist/secret");
        // Opening through the symlink reaches the container's file.
        let fd = open_in_root(root.as_fd(), "/etc/up", true).unwrap();
        let st = rfs::fstat(&fd).unwrap();
        assert_eq!(st.st_size, "container".len() as i64);
        assert!(open_in_root(root.as_fd(), "/dang", true).is_err());
        let t = Target::resolve(root.as_fd(), "/leak").unwrap();
        assert_eq!(t.stat.name, "leak");
        assert_eq!(t.stat.link_target, "/etc/shadow");
        assert_eq!(t.stat.mode & GO_MODE_SYMLINK, GO_MODE_SYMLINK);
    }

    #[test]
    fn diff_reports_added_modified_and_parent_directories() {
        let lower = tempfile::tempdir().unwrap();
        let upper = tempfile::tempdir().unwrap();
        for d in ["etc", "bin", "usr/lib"] {
            std::fs::create_dir_all(lower.path().join(d)).unwrap();
        }
        std::fs::write(lower.path().join("etc/passwd"), "root").unwrap();
        std::fs::write(lower.path().join("bin/sh"), "sh").unwrap();
        // Upper: /etc copied up with passwd changed, /new added with a
        // file, /bin copied up with a new file, stubs the runtime made.
        std::fs::create_dir_all(upper.path().join("etc")).unwrap();
        std::fs::write(upper.path().join("etc/passwd"), "root\nx").unwrap();
        std::fs::write(upper.path().join("etc/hostname"), "").unwrap();
        std::fs::create_dir_all(upper.path().join("new/sub")).unwrap();
        std::fs::write(upper.path().join("new/sub/f"), "f").unwrap();
        std::fs::create_dir_all(upper.path().join("bin")).unwrap();
        std::fs::write(upper.path().join("bin/newfile"), "").unwrap();
        std::fs::create_dir_all(upper.path().join("proc")).unwrap();
        let mtime = std::fs::metadata(lower.path().join("bin")).unwrap().modified().unwrap();
        let mode = std::fs::metadata(lower.path().join("bin")).unwrap().permissions();
        std::fs::set_permissions(upper.path().join("bin"), mode).unwrap();
        File::open(upper.path().join("bin")).unwrap().set_modified(mtime).unwrap();
        let changes = diff_layers(upper.path(), &[lower.path().to_path_buf()]).unwrap();
        let shown: Vec<(String, u8)> = changes.into_iter().map(|c| (c.path, c.kind)).collect();
        let want = |p: &str, k| (p.to_owned(), k);
        assert_eq!(
            shown,
            vec![
                want("/bin", CHANGE_MODIFY),
                want("/bin/newfile", CHANGE_ADD),
                want("/etc", CHANGE_MODIFY),
                want("/etc/passwd", CHANGE_MODIFY),
                want("/new", CHANGE_ADD),
                want("/new/sub", CHANGE_ADD),
                want("/new/sub/f", CHANGE_ADD),
            ]
        );
    }

    #[test]
    fn commit_config_applies_changes_over_the_container_config() {
        let container = json!({
            "Hostname": "abc", "User": "", "Env": ["PATH=/bin", "A=1"], "Cmd": ["sh", "-c", "x"],
            "Image": "busybox", "Entrypoint": null, "Labels": {"l": "1"}, "WorkingDir": "", "StopTimeout": 3,
        });
        let cfg = commit_config(&container, None, &["CMD [\"echo\",\"hi\"]".to_owned(), "ENV B=$A".to_owned()]).unwrap();
        assert_eq!(cfg["Cmd"], json!(["echo", "hi"]));
        assert_eq!(cfg["Env"], json!(["PATH=/bin", "A=1", "B=1"]));
        assert_eq!(cfg["Hostname"], json!("abc"));
        assert_eq!(cfg["Image"], json!("busybox"));
        assert_eq!(cfg["Labels"], json!({"l": "1"}));
        assert_eq!(cfg["StopTimeout"], json!(3));
        let err = commit_config(&container, None, &["RUN x".to_owned()]).unwrap_err();
        assert!(err.message.contains("run is not a valid change command"), "{}", err.message);
    }

    /// A tar of `(name, contents)`; a name ending in `/` is a directory.
    fn tar_of(entries: &[(&str, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut h = tar::Header::new_ustar();
            h.set_path(name).unwrap();
            h.set_mode(0o755);
            if name.ends_with('/') {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
            } else {
                h.set_size(data.len() as u64);
            }
            h.set_cksum();
            b.append(&h, data.as_bytes()).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn names(tar: &[u8]) -> Vec<String> {
        tar::Archive::new(tar).entries().unwrap().map(|e| e.unwrap().path().unwrap().display().to_string()).collect()
    }

    fn cp_options() -> ApplyOptions {
        ApplyOptions { whiteouts: false, no_replace_dir_non_dir: true, ..ApplyOptions::default() }
    }

    #[test]
    fn copied_archives_keep_whiteout_names_as_plain_files() {
        let dest = tempfile::tempdir().unwrap();
        let tar = tar_of(&[("d/", ""), ("d/.wh.gone", "w"), ("d/.wh..wh..opq", "o"), (".wh.x", "x")]);
        archive::apply_layer(&tar[..], dest.path(), &cp_options()).unwrap();
        for f in ["d/.wh.gone", "d/.wh..wh..opq", ".wh.x"] {
            assert!(dest.path().join(f).is_file(), "{f} should be a plain file");
        }
    }

    #[test]
    fn copies_refuse_to_swap_directories_and_files() {
        let dest = tempfile::tempdir().unwrap();
        std::fs::create_dir(dest.path().join("dir")).unwrap();
        std::fs::write(dest.path().join("file"), "f").unwrap();
        let err = archive::apply_layer(&tar_of(&[("dir", "x")])[..], dest.path(), &cp_options()).unwrap_err();
        assert!(matches!(err, ArchiveError::ValidateEntry { reason: Rejection::ReplaceDirectory, .. }), "{err:?}");
        assert_eq!(extract_error(&err, "/d").message, r#"cannot overwrite directory "/d/dir" with non-directory "/d""#);
        let err = archive::apply_layer(&tar_of(&[("file/", "")])[..], dest.path(), &cp_options()).unwrap_err();
        assert!(matches!(err, ArchiveError::ValidateEntry { reason: Rejection::ReplaceNonDirectory, .. }), "{err:?}");
        assert!(dest.path().join("dir").is_dir() && dest.path().join("file").is_file());
    }

    #[test]
    fn extraction_through_a_container_symlink_is_refused() {
        let outside = tempfile::tempdir().unwrap();
        let dest = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dest.path().join("link")).unwrap();
        let root = rfs::open(dest.path(), OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).unwrap();
        let dir = open_in_root(root.as_fd(), "/", true).unwrap();
        let via_fd = format!("/proc/self/fd/{}", dir.as_raw_fd());
        let err = archive::apply_layer(&tar_of(&[("link/x", "x")])[..], Path::new(&via_fd), &cp_options()).unwrap_err();
        assert!(matches!(err, ArchiveError::ValidateEntry { reason: Rejection::SymlinkInPath { .. }, .. }), "{err:?}");
        assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none(), "wrote outside");
    }

    #[test]
    fn entries_are_archived_under_their_base_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("d/sub")).unwrap();
        std::fs::write(dir.path().join("d/sub/f"), "f").unwrap();
        let root = rfs::open(dir.path(), OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).unwrap();
        let pack = |parent: &str, name: &str, as_name: &str| {
            let parent = open_in_root(root.as_fd(), parent, true).unwrap();
            let mut out = Vec::new();
            archive::write_tar_of_entry(parent.as_fd(), name.as_bytes(), as_name.as_bytes(), Path::new("/"), &mut out, &PackOptions::default()).unwrap();
            names(&out)
        };
        assert_eq!(pack("/", "d", "d"), ["d/", "d/sub/", "d/sub/f"]);
        assert_eq!(pack("/d/sub", "f", "f"), ["f"]);
        assert_eq!(pack("/d", ".", "."), ["./", "./sub/", "./sub/f"]);
        assert_eq!(pack("/d/sub", ".", ""), ["/", "/f"]);
        let missing = open_in_root(root.as_fd(), "/", true).unwrap();
        assert!(archive::write_tar_of_entry(missing.as_fd(), b"nope", b"nope", Path::new("/"), Vec::new(), &PackOptions::default()).is_err());
    }

    #[test]
    fn commit_references_default_to_latest() {
        assert_eq!(commit_reference("", "x").unwrap(), None);
        assert_eq!(commit_reference("img", "").unwrap().unwrap().familiar(), "img:latest");
        assert_eq!(commit_reference("img", "v1").unwrap().unwrap().familiar(), "img:v1");
        assert!(commit_reference("Bad Name", "").is_err());
    }
}

//! Unpacking one layer tar into its own overlay directory.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::rc::Rc;

use rustix::fs::{self, AtFlags, FileType, Gid, Mode, OFlags, Timespec, Timestamps, Uid};
use rustix::io::Errno;
use tar::EntryType;

use super::sys::{self, XattrTarget, Xattrs};
use super::{
    ApplyOptions, ApplyStats, ArchiveError, Rejection, OVERLAY_OPAQUE_XATTR, WHITEOUT_META_PREFIX, WHITEOUT_OPAQUE,
    WHITEOUT_PREFIX,
};

/// Longest path (in bytes, after cleaning) accepted, as the kernel's
/// `PATH_MAX`: a container could not use a longer one, and it bounds the
/// depth of directories the unpacker opens.
const PATH_MAX: usize = 4095;

/// Contents are copied in chunks this big; an all-zero chunk becomes a hole.
const COPY_CHUNK: usize = 64 * 1024;

/// Xattrs overlayfs keeps for itself. A layer expresses opaque directories
/// with `.wh..wh..opq`; letting it set redirects, metacopy or origin
/// pointers directly would let it steer overlayfs, so these are dropped.
const OVERLAY_XATTR_PREFIXES: [&[u8]; 2] = [b"trusted.overlay.", b"user.overlay."];

/// Unpacks one uncompressed layer tar into `dest`, an existing empty
/// directory that becomes this layer's overlayfs lower (or upper) directory
/// on its own; parent layers are separate directories.
///
/// Follows the OCI image-spec layer format as dockerd and containerd apply
/// it to overlayfs:
/// - `.wh.<name>` becomes a 0:0 character device `<name>` (an overlay
///   whiteout); `.wh..wh..opq` sets `trusted.overlay.opaque=y` on its
///   directory; other `.wh..wh.*` entries (AUFS metadata) are skipped.
/// - Regular files, directories, symlinks, hardlinks, character and block
///   devices and fifos are created with the tar's numeric owner (when
///   `opts.same_owner`), mode (setuid/setgid/sticky included, applied after
///   the owner), PAX `SCHILY.xattr.*` xattrs and mtime. Directory mtimes are
///   set once the whole layer is in place.
/// - An entry replaces whatever non-directory is at its path (and a
///   non-directory entry replaces a directory); a directory entry over a
///   directory only updates its metadata. Missing parents are created 0755.
/// - Xattrs the destination file system refuses (`ENOTSUP`, `EPERM`, e.g.
///   `security.selinux` without SELinux, `user.*` on a symlink) are skipped
///   with one warning per layer, as dockerd does; `trusted.overlay.*` and
///   `user.overlay.*` from the tar are always dropped.
///
/// With `opts.whiteouts` false, whiteout names are ordinary files; with
/// `opts.no_replace_dir_non_dir`, replacing a directory with a non-directory
/// (or the reverse) is refused; `opts.owner` overrides the tar's owners.
/// These are what `docker cp` needs to extract a plain archive into a
/// container, whose contents may change while it runs: nothing here relies
/// on the destination staying still (every call is relative to a
/// descriptor and refuses to follow symlinks).
///
/// Reads `layer` to its end, past the tar's end-of-archive marker, so a
/// digest computed over the stream covers all of it.
///
/// Nothing outside `dest` is created or changed; see the module docs. A
/// leading `/` is dropped; an entry that climbs out with `..`, goes through
/// a symlink, or hardlinks to something outside is refused with
/// [`ArchiveError::ValidateEntry`] naming its path. On any error `dest` may
/// hold part of the layer and should be discarded.
pub fn apply_layer(layer: impl Read, dest: &Path, opts: &ApplyOptions) -> Result<ApplyStats, ArchiveError> {
    let root = fs::open(dest, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| ArchiveError::OpenDestination { path: dest.to_path_buf(), source: e.into() })?;
    let mut unpacker = Unpacker {
        root: Rc::new(root),
        cache: None,
        same_owner: opts.same_owner,
        whiteouts: opts.whiteouts,
        no_replace_dir_non_dir: opts.no_replace_dir_non_dir,
        owner: opts.owner,
        stats: ApplyStats::default(),
        dir_times: Vec::new(),
        chunk: vec![0; COPY_CHUNK],
        skipped_xattrs: 0,
        first_skipped_xattr: None,
    };
    let mut archive = tar::Archive::new(layer);
    for entry in archive.entries().map_err(ArchiveError::ReadLayer)? {
        let mut entry = entry.map_err(ArchiveError::ReadLayer)?;
        unpacker.apply_entry(&mut entry)?;
    }
    // Tar writers pad past the end-of-archive marker; read it all so a digest
    // computed over the stream covers every byte.
    io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(ArchiveError::ReadLayer)?;
    unpacker.finish()
}

/// The metadata of one entry, from its header and PAX records.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: Timespec,
    xattrs: Xattrs,
}

/// What is at an entry's path before the entry is applied.
enum Existing {
    Nothing,
    Directory,
}

struct Unpacker {
    /// The destination, open for reading.
    root: Rc<OwnedFd>,
    /// The last parent directory resolved: consecutive entries usually share
    /// one. Dropped whenever anything is removed.
    cache: Option<(Vec<Vec<u8>>, Rc<OwnedFd>)>,
    same_owner: bool,
    whiteouts: bool,
    no_replace_dir_non_dir: bool,
    owner: Option<(u32, u32)>,
    stats: ApplyStats,
    /// Directory entries whose mtime is set at the end, when nothing else
    /// will be created in them.
    dir_times: Vec<(Vec<Vec<u8>>, Timespec)>,
    chunk: Vec<u8>,
    skipped_xattrs: u64,
    first_skipped_xattr: Option<String>,
}

impl Unpacker {
    fn apply_entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), ArchiveError> {
        let raw_path = entry.path_bytes().into_owned();
        let shown = lossy(&raw_path);
        let reject = |reason| ArchiveError::ValidateEntry { path: shown.clone(), reason };
        let header = entry.header();
        let flag = header.as_bytes()[156];
        let mut kind = header.entry_type();
        if kind == EntryType::XGlobalHeader {
            tracing::debug!("ignoring pax global header");
            return Ok(());
        }
        // Pre-POSIX tars mark a directory with a trailing slash on a regular
        // entry.
        if flag == 0 && raw_path.ends_with(b"/") {
            kind = EntryType::Directory;
        }
        let comps = clean_path(&raw_path).map_err(reject)?;
        let mut meta = read_meta(entry).map_err(|e| match e {
            MetaError::Read(e) => ArchiveError::ReadLayer(e),
            MetaError::Invalid(field) => reject(Rejection::InvalidHeaderField(field)),
        })?;
        if let Some((uid, gid)) = self.owner {
            meta.uid = uid;
            meta.gid = gid;
        }

        let Some((&name, parents)) = comps.split_last() else {
            // The layer root: only a directory means something here.
            if kind == EntryType::Directory {
                let root = Rc::clone(&self.root);
                self.set_meta(&XattrTarget::Fd(root.as_fd()), &meta, &shown)?;
                self.dir_times.push((Vec::new(), meta.mtime));
                self.stats.entries += 1;
            } else {
                tracing::debug!(path = %shown, "ignoring non-directory entry for the layer root");
            }
            return Ok(());
        };
        for (i, comp) in parents.iter().enumerate().filter(|_| self.whiteouts) {
            if comp.starts_with(WHITEOUT_META_PREFIX.as_bytes()) {
                tracing::debug!(path = %shown, "ignoring entry under whiteout metadata directory");
                return Ok(());
            }
            if comp.starts_with(WHITEOUT_PREFIX.as_bytes()) {
                return Err(reject(Rejection::WhiteoutAsDirectory { component: join(&comps[..=i]) }));
            }
        }

        if self.whiteouts && name == WHITEOUT_OPAQUE.as_bytes() {
            let parent = self.parent(parents, true, &shown)?;
            sys::reopen_dir(parent.as_fd())
                .and_then(|dir| fs::fsetxattr(&dir, OVERLAY_OPAQUE_XATTR, b"y", fs::XattrFlags::empty()))
                .map_err(|e| ArchiveError::MarkOpaque { path: shown.clone(), source: e.into() })?;
            self.stats.entries += 1;
            return Ok(());
        }
        if self.whiteouts && name.starts_with(WHITEOUT_META_PREFIX.as_bytes()) {
            tracing::debug!(path = %shown, "ignoring whiteout metadata entry");
            return Ok(());
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX.as_bytes()).filter(|_| self.whiteouts) {
            if hidden.is_empty() || hidden == b"." || hidden == b".." {
                return Err(reject(Rejection::InvalidWhiteout));
            }
            let parent = self.parent(parents, true, &shown)?;
            self.remove_existing(parent.as_fd(), hidden, false, &shown)?;
            let whiteout_err = |e: Errno| ArchiveError::CreateWhiteout { path: shown.clone(), source: e.into() };
            fs::mknodat(parent.as_fd(), hidden, FileType::CharacterDevice, Mode::empty(), 0).map_err(whiteout_err)?;
            if self.same_owner {
                fs::chownat(
                    parent.as_fd(),
                    hidden,
                    Some(uid(meta.uid)),
                    Some(gid(meta.gid)),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(whiteout_err)?;
            }
            fs::utimensat(parent.as_fd(), hidden, &times(meta.mtime), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(whiteout_err)?;
            self.stats.entries += 1;
            return Ok(());
        }

        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let parent = self.parent(parents, true, &shown)?;
                self.remove_existing(parent.as_fd(), name, false, &shown)?;
                let create_err = |e: io::Error| ArchiveError::CreateEntry { path: shown.clone(), source: e };
                let fd = fs::openat(
                    parent.as_fd(),
                    name,
                    OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|e| create_err(e.into()))?;
                let mut file = File::from(fd);
                let expected = entry.size();
                let written = copy_with_holes(entry, &mut file, &mut self.chunk).map_err(|e| match e {
                    CopyError::Read(e) => ArchiveError::ReadLayer(e),
                    CopyError::Write(e) => create_err(e),
                })?;
                if written != expected {
                    return Err(ArchiveError::ReadLayer(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("{shown:?} ends after {written} of {expected} bytes"),
                    )));
                }
                self.set_meta(&XattrTarget::Fd(file.as_fd()), &meta, &shown)?;
                fs::futimens(&file, &times(meta.mtime)).map_err(|e| set_err(&shown, "mtime", e))?;
                self.stats.bytes += written;
            }
            EntryType::Directory => {
                let parent = self.parent(parents, true, &shown)?;
                if let Existing::Nothing = self.remove_existing(parent.as_fd(), name, true, &shown)? {
                    fs::mkdirat(parent.as_fd(), name, Mode::from_raw_mode(0o700))
                        .map_err(|e| ArchiveError::CreateEntry { path: shown.clone(), source: e.into() })?;
                }
                let dir = sys::open_dir(parent.as_fd(), name)
                    .map_err(|e| ArchiveError::CreateEntry { path: shown.clone(), source: e.into() })?;
                self.set_meta(&XattrTarget::Fd(dir.as_fd()), &meta, &shown)?;
                self.dir_times.push((comps.iter().map(|c| c.to_vec()).collect(), meta.mtime));
            }
            EntryType::Symlink => {
                let target = entry.link_name_bytes().map(|t| t.into_owned()).unwrap_or_default();
                if target.is_empty() || target.contains(&0) {
                    return Err(reject(Rejection::InvalidHeaderField("symlink target")));
                }
                let parent = self.parent(parents, true, &shown)?;
                self.remove_existing(parent.as_fd(), name, false, &shown)?;
                fs::symlinkat(target.as_slice(), parent.as_fd(), name)
                    .map_err(|e| ArchiveError::CreateEntry { path: shown.clone(), source: e.into() })?;
                self.set_meta_at(parent.as_fd(), name, &meta, false, &shown)?;
            }
            EntryType::Link => {
                let target_raw = entry.link_name_bytes().map(|t| t.into_owned()).unwrap_or_default();
                let target_shown = lossy(&target_raw);
                let target = clean_path(&target_raw).map_err(|reason| {
                    reject(match reason {
                        Rejection::Breakout => Rejection::LinkTargetBreakout { target: target_shown.clone() },
                        other => other,
                    })
                })?;
                let Some((&target_name, target_parents)) = target.split_last() else {
                    return Err(reject(Rejection::LinkTargetIsRoot));
                };
                if target == comps {
                    tracing::debug!(path = %shown, "ignoring hardlink to itself");
                    return Ok(());
                }
                let link_err =
                    |source| ArchiveError::LinkEntry { path: shown.clone(), target: target_shown.clone(), source };
                let target_parent = match self.parent(target_parents, false, &shown) {
                    Err(ArchiveError::ResolveParent { source, .. }) => return Err(link_err(source)),
                    other => other?,
                };
                let parent = self.parent(parents, true, &shown)?;
                self.remove_existing(parent.as_fd(), name, false, &shown)?;
                // Without AT_SYMLINK_FOLLOW, linkat links a symlink itself,
                // never what it points to.
                fs::linkat(target_parent.as_fd(), target_name, parent.as_fd(), name, AtFlags::empty())
                    .map_err(|e| link_err(e.into()))?;
                // The inode, and so its metadata, is the target's.
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let (file_type, dev) = match kind {
                    EntryType::Fifo => (FileType::Fifo, 0),
                    _ => {
                        let header = entry.header();
                        let invalid = |_| reject(Rejection::InvalidHeaderField("device number"));
                        let major = header.device_major().map_err(invalid)?.unwrap_or(0);
                        let minor = header.device_minor().map_err(invalid)?.unwrap_or(0);
                        let file_type =
                            if kind == EntryType::Char { FileType::CharacterDevice } else { FileType::BlockDevice };
                        (file_type, fs::makedev(major, minor))
                    }
                };
                let parent = self.parent(parents, true, &shown)?;
                self.remove_existing(parent.as_fd(), name, false, &shown)?;
                fs::mknodat(parent.as_fd(), name, file_type, Mode::from_raw_mode(0o600), dev)
                    .map_err(|e| ArchiveError::CreateEntry { path: shown.clone(), source: e.into() })?;
                self.set_meta_at(parent.as_fd(), name, &meta, true, &shown)?;
            }
            _ => return Err(reject(Rejection::UnsupportedType(flag))),
        }
        self.stats.entries += 1;
        Ok(())
    }

    /// Opens the directory `comps` (relative to the destination) one
    /// component at a time without following symlinks, creating missing
    /// ones (0755, as dockerd does) when `create`. `shown` names the entry
    /// in errors.
    fn parent(&mut self, comps: &[&[u8]], create: bool, shown: &str) -> Result<Rc<OwnedFd>, ArchiveError> {
        let (mut dir, start) = match &self.cache {
            Some((cached, fd))
                if cached.len() <= comps.len() && cached.iter().zip(comps).all(|(a, b)| a.as_slice() == *b) =>
            {
                (Rc::clone(fd), cached.len())
            }
            _ => (Rc::clone(&self.root), 0),
        };
        if start == comps.len() {
            return Ok(dir);
        }
        for (i, comp) in comps.iter().enumerate().skip(start) {
            let resolve_err = |e: Errno| ArchiveError::ResolveParent { path: shown.to_owned(), source: e.into() };
            let next = match sys::open_dir_path(dir.as_fd(), comp) {
                Ok(fd) => fd,
                Err(Errno::NOENT) if create => {
                    fs::mkdirat(dir.as_fd(), *comp, Mode::from_raw_mode(0o755)).map_err(resolve_err)?;
                    // mkdir is subject to the umask; implicit parents are 0755
                    // whatever the daemon's umask.
                    fs::chmodat(dir.as_fd(), *comp, Mode::from_raw_mode(0o755), AtFlags::empty())
                        .map_err(resolve_err)?;
                    sys::open_dir_path(dir.as_fd(), comp).map_err(resolve_err)?
                }
                Err(Errno::NOTDIR | Errno::LOOP) => {
                    let component = join(&comps[..=i]);
                    let reason = match sys::file_type_at(dir.as_fd(), comp) {
                        Ok(Some(FileType::Symlink)) => Rejection::SymlinkInPath { component },
                        _ => Rejection::NotADirectoryInPath { component },
                    };
                    return Err(ArchiveError::ValidateEntry { path: shown.to_owned(), reason });
                }
                Err(e) => return Err(resolve_err(e)),
            };
            dir = Rc::new(next);
        }
        self.cache = Some((comps.iter().map(|c| c.to_vec()).collect(), Rc::clone(&dir)));
        Ok(dir)
    }

    /// Clears the way for a new entry `name` in `parent`: removes what is
    /// there, except a directory when `keep_dir`.
    fn remove_existing(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &[u8],
        keep_dir: bool,
        shown: &str,
    ) -> Result<Existing, ArchiveError> {
        let remove_err = |e: Errno| ArchiveError::RemoveExisting { path: shown.to_owned(), source: e.into() };
        let existing = sys::file_type_at(parent, name).map_err(remove_err)?;
        if self.no_replace_dir_non_dir {
            let refuse = |reason| Err(ArchiveError::ValidateEntry { path: shown.to_owned(), reason });
            match existing {
                Some(FileType::Directory) if !keep_dir => return refuse(Rejection::ReplaceDirectory),
                Some(t) if t != FileType::Directory && keep_dir => return refuse(Rejection::ReplaceNonDirectory),
                _ => {}
            }
        }
        match existing {
            None => Ok(Existing::Nothing),
            Some(FileType::Directory) if keep_dir => Ok(Existing::Directory),
            Some(_) => {
                // The cached parent may be below what goes away.
                self.cache = None;
                sys::remove_all_at(parent, name).map_err(remove_err)?;
                Ok(Existing::Nothing)
            }
        }
    }

    /// Owner, mode and xattrs of an open file or directory.
    fn set_meta(&mut self, target: &XattrTarget<'_>, meta: &Meta, shown: &str) -> Result<(), ArchiveError> {
        if let XattrTarget::Fd(fd) = target {
            if self.same_owner {
                fs::fchown(fd, Some(uid(meta.uid)), Some(gid(meta.gid))).map_err(|e| set_err(shown, "owner", e))?;
            }
            // After chown, which clears setuid and setgid.
            fs::fchmod(fd, Mode::from_raw_mode(meta.mode)).map_err(|e| set_err(shown, "mode", e))?;
        }
        self.set_xattrs(target, meta, shown)
    }

    /// Owner, mode (unless a symlink: Linux has none), xattrs and mtime of
    /// `name` in `parent`, which must not be opened (symlink, device, fifo).
    fn set_meta_at(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &[u8],
        meta: &Meta,
        has_mode: bool,
        shown: &str,
    ) -> Result<(), ArchiveError> {
        if self.same_owner {
            fs::chownat(parent, name, Some(uid(meta.uid)), Some(gid(meta.gid)), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| set_err(shown, "owner", e))?;
        }
        if has_mode {
            // chmodat follows symlinks, and a running container may have
            // swapped the node we just made for one: change the mode
            // through a descriptor of the node itself instead (an O_PATH
            // descriptor of a symlink would name the link, whose mode
            // Linux refuses to change).
            let set_mode = || -> rustix::io::Result<()> {
                let node = fs::openat(parent, name, OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())?;
                let st = fs::fstat(&node)?;
                if matches!(FileType::from_raw_mode(st.st_mode as _), FileType::Symlink | FileType::Directory) {
                    return Err(Errno::PERM);
                }
                fs::chmod(sys::proc_fd_path(node.as_fd()), Mode::from_raw_mode(meta.mode))
            };
            set_mode().map_err(|e| set_err(shown, "mode", e))?;
        }
        self.set_xattrs(&XattrTarget::At { parent, name }, meta, shown)?;
        fs::utimensat(parent, name, &times(meta.mtime), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| set_err(shown, "mtime", e))
    }

    fn set_xattrs(&mut self, target: &XattrTarget<'_>, meta: &Meta, shown: &str) -> Result<(), ArchiveError> {
        for (key, value) in &meta.xattrs {
            if OVERLAY_XATTR_PREFIXES.iter().any(|p| key.starts_with(p)) {
                tracing::debug!(path = %shown, xattr = %lossy(key), "dropping overlayfs xattr from layer");
                continue;
            }
            match target.set(key, value) {
                Ok(()) => {}
                Err(Errno::NOTSUP | Errno::PERM) => {
                    self.skipped_xattrs += 1;
                    self.first_skipped_xattr.get_or_insert_with(|| format!("{} on {shown}", lossy(key)));
                }
                Err(e) => return Err(set_err(shown, "xattr", e)),
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Result<ApplyStats, ArchiveError> {
        for (comps, mtime) in std::mem::take(&mut self.dir_times) {
            let refs: Vec<&[u8]> = comps.iter().map(Vec::as_slice).collect();
            let shown = join(&refs);
            let Some((&name, parents)) = refs.split_last() else {
                fs::futimens(&*self.root, &times(mtime)).map_err(|e| set_err(&shown, "mtime", e))?;
                continue;
            };
            // A directory replaced or removed later in the layer keeps the
            // times of what replaced it.
            let Ok(parent) = self.parent(parents, false, &shown) else { continue };
            if let Ok(Some(FileType::Directory)) = sys::file_type_at(parent.as_fd(), name) {
                fs::utimensat(parent.as_fd(), name, &times(mtime), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| set_err(&shown, "mtime", e))?;
            }
        }
        if self.skipped_xattrs > 0 {
            tracing::warn!(
                count = self.skipped_xattrs,
                first = self.first_skipped_xattr.as_deref().unwrap_or_default(),
                "destination file system refused some xattrs; skipped them"
            );
        }
        Ok(self.stats)
    }
}

/// Splits a tar path into components below the destination: drops a
/// leading `/`, empty and `.` components, and resolves `..` lexically (as
/// dockerd's `filepath.Clean` does); climbing above the root is a breakout.
fn clean_path(raw: &[u8]) -> Result<Vec<&[u8]>, Rejection> {
    if raw.contains(&0) {
        return Err(Rejection::NulInPath);
    }
    let mut comps: Vec<&[u8]> = Vec::new();
    for comp in raw.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => {
                if comps.pop().is_none() {
                    return Err(Rejection::Breakout);
                }
            }
            _ => comps.push(comp),
        }
    }
    let len = comps.iter().map(|c| c.len() + 1).sum::<usize>();
    if len > PATH_MAX + 1 {
        return Err(Rejection::PathTooLong);
    }
    Ok(comps)
}

enum MetaError {
    Read(io::Error),
    Invalid(&'static str),
}

fn read_meta<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Meta, MetaError> {
    let header = entry.header();
    let fields = header.as_old();
    let mode = numeric(header.mode().map(u64::from), &fields.mode, "mode")? as u32 & 0o7777;
    let mut uid_raw = numeric(header.uid(), &fields.uid, "uid")?;
    let mut gid_raw = numeric(header.gid(), &fields.gid, "gid")?;
    let secs = numeric(header.mtime(), &fields.mtime, "mtime")?;
    let mut mtime = Timespec { tv_sec: i64::try_from(secs).map_err(|_| MetaError::Invalid("mtime"))?, tv_nsec: 0 };
    let mut xattrs = Vec::new();
    if let Some(records) = entry.pax_extensions().map_err(MetaError::Read)? {
        for record in records {
            let record = record.map_err(|e| MetaError::Read(io::Error::new(io::ErrorKind::InvalidData, e)))?;
            let key = record.key_bytes();
            let value = record.value_bytes();
            if key == b"uid" {
                uid_raw = parse_decimal(value).ok_or(MetaError::Invalid("uid"))?;
            } else if key == b"gid" {
                gid_raw = parse_decimal(value).ok_or(MetaError::Invalid("gid"))?;
            } else if key == b"mtime" {
                mtime = parse_pax_time(value).ok_or(MetaError::Invalid("mtime"))?;
            } else if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                if name.is_empty() || name.contains(&0) {
                    return Err(MetaError::Invalid("xattr name"));
                }
                xattrs.push((name.to_vec(), value.to_vec()));
            }
        }
    }
    // u32::MAX is -1, which chown reads as "leave unchanged".
    let uid = u32::try_from(uid_raw).ok().filter(|u| *u != u32::MAX).ok_or(MetaError::Invalid("uid"))?;
    let gid = u32::try_from(gid_raw).ok().filter(|g| *g != u32::MAX).ok_or(MetaError::Invalid("gid"))?;
    Ok(Meta { mode, uid, gid, mtime, xattrs })
}

/// A numeric header field. Like Go's archive/tar (and so dockerd), an
/// empty field (all NULs or spaces, as some tar writers leave unused ones)
/// reads as 0; the tar crate refuses it.
fn numeric(parsed: io::Result<u64>, raw: &[u8], field: &'static str) -> Result<u64, MetaError> {
    match parsed {
        Ok(value) => Ok(value),
        Err(_) if raw.iter().all(|b| *b == 0 || *b == b' ') => Ok(0),
        Err(_) => Err(MetaError::Invalid(field)),
    }
}

fn parse_decimal(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// A PAX time: decimal seconds with an optional fraction, possibly negative.
fn parse_pax_time(value: &[u8]) -> Option<Timespec> {
    let text = std::str::from_utf8(value).ok()?;
    let (negative, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = whole.parse().ok()?;
    let mut nanos: i64 = 0;
    for (i, digit) in frac.bytes().take(9).enumerate() {
        nanos += i64::from(digit - b'0') * 10i64.pow(8 - i as u32);
    }
    Some(if !negative {
        Timespec { tv_sec: secs, tv_nsec: nanos as _ }
    } else if nanos == 0 {
        Timespec { tv_sec: -secs, tv_nsec: 0 }
    } else {
        Timespec { tv_sec: -secs - 1, tv_nsec: (1_000_000_000 - nanos) as _ }
    })
}

enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

/// Copies `src` to the start of `file`, seeking over all-zero chunks so
/// sparse files (and long zero runs) stay sparse. Returns the bytes copied.
fn copy_with_holes(src: &mut impl Read, file: &mut File, chunk: &mut [u8]) -> Result<u64, CopyError> {
    let mut total: u64 = 0;
    let mut ends_in_hole = false;
    loop {
        let mut filled = 0;
        while filled < chunk.len() {
            match src.read(&mut chunk[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(CopyError::Read(e)),
            }
        }
        if filled == 0 {
            break;
        }
        let data = &chunk[..filled];
        if data.iter().all(|b| *b == 0) {
            file.seek(SeekFrom::Current(filled as i64)).map_err(CopyError::Write)?;
            ends_in_hole = true;
        } else {
            file.write_all(data).map_err(CopyError::Write)?;
            ends_in_hole = false;
        }
        total += filled as u64;
        if filled < chunk.len() {
            break;
        }
    }
    if ends_in_hole {
        file.set_len(total).map_err(CopyError::Write)?;
    }
    Ok(total)
}

fn times(mtime: Timespec) -> Timestamps {
    Timestamps { last_access: mtime, last_modification: mtime }
}

fn uid(raw: u32) -> Uid {
    Uid::from_raw(raw)
}

fn gid(raw: u32) -> Gid {
    Gid::from_raw(raw)
}

fn set_err(shown: &str, what: &'static str, e: Errno) -> ArchiveError {
    ArchiveError::SetMetadata { path: shown.to_owned(), what, source: e.into() }
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn join(comps: &[&[u8]]) -> String {
    lossy(&comps.join(&b'/'))
}

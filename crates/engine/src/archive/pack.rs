//! Packing a directory tree into a tar.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{self, AtFlags, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;
use tar::{EntryType, Header};

use super::sys::{self, XattrTarget, Xattrs};
use super::{ArchiveError, PackOptions, OVERLAY_OPAQUE_XATTR, WHITEOUT_OPAQUE, WHITEOUT_PREFIX};

/// Longest name or link target stored in the ustar header itself; longer
/// ones go into PAX `path` / `linkpath` records.
const USTAR_NAME_MAX: usize = 100;

/// Largest uid/gid an ustar header holds in octal; larger ones also get PAX
/// `uid` / `gid` records.
const USTAR_ID_MAX: u32 = 0o7_777_777;

/// Xattrs never written: overlayfs' own, which mean nothing in a tar, and
/// the host's SELinux label, which dockerd does not carry into images either.
const HOST_XATTR_PREFIXES: [&[u8]; 3] = [b"trusted.overlay.", b"user.overlay.", b"security.selinux"];

/// Writes the tree under `dir` (not `dir` itself) to `out` as a tar, with
/// names relative to `dir` (`etc/`, `etc/passwd`).
///
/// The output is deterministic for a given tree: directories are walked
/// depth-first with names sorted bytewise. Entries keep their numeric owner,
/// mode, mtime (whole seconds) and xattrs (as PAX `SCHILY.xattr.*`);
/// symlinks are stored, never followed; a file whose inode was already
/// written becomes a hardlink entry; devices and fifos keep their numbers;
/// sockets are skipped. With `opts.overlay_whiteouts`, 0:0 character
/// devices become `.wh.<name>` and opaque directories gain a
/// `.wh..wh..opq` entry, as in a layer tar. Overlayfs' own xattrs and
/// `security.selinux` are never written.
///
/// Every entry is reached through its parent's descriptor without following
/// symlinks, so a tree that changes while it is packed (a running
/// container) cannot redirect the packer outside `dir`.
pub fn write_tar_of_dir(dir: &Path, out: impl Write, opts: &PackOptions) -> Result<(), ArchiveError> {
    write_tar_of_dir_filtered(dir, out, opts, &|_| true)
}

/// [`write_tar_of_dir`], leaving out every entry for which `keep` is false
/// (and, for a directory, everything below it). `keep` sees paths as the
/// tar names them, without a trailing `/` (`etc`, `etc/passwd`); a whiteout
/// is offered under the name it hides.
pub fn write_tar_of_dir_filtered(
    dir: &Path,
    out: impl Write,
    opts: &PackOptions,
    keep: &dyn Fn(&[u8]) -> bool,
) -> Result<(), ArchiveError> {
    let read_err = |path: &Path, e: Errno| ArchiveError::ReadTree { path: path.to_path_buf(), source: e.into() };
    let root = fs::open(dir, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| read_err(dir, e))?;
    let mut packer = Packer { builder: tar::Builder::new(out), opts, dir, inodes: HashMap::new(), keep };
    if opts.overlay_whiteouts {
        let st = fs::fstat(&root).map_err(|e| read_err(dir, e))?;
        let xattrs = XattrTarget::Fd(root.as_fd()).read_all().map_err(|e| read_err(dir, e))?;
        if is_opaque(&xattrs) {
            packer.append_opaque_marker(b"", &st)?;
        }
    }
    packer.pack_dir(root.as_fd(), &[])?;
    packer.builder.into_inner().map_err(ArchiveError::WriteTar)?;
    Ok(())
}

/// Writes the entry `name` of the directory `parent` to `out` as a tar whose
/// first entry is named `as_name` (`as_name/` if a directory, followed by
/// everything below it as `as_name/...`). `name` may be `.`, for `parent`
/// itself. An empty `as_name` writes a directory as `/` and its contents as
/// `/etc/...`, as dockerd archives a container's root.
///
/// The entry and everything below it are reached without following
/// symlinks (a symlink `name` is stored as a symlink), exactly as
/// [`write_tar_of_dir`] walks; `shown` is the path errors name the entry by.
pub fn write_tar_of_entry(
    parent: BorrowedFd<'_>,
    name: &[u8],
    as_name: &[u8],
    shown: &Path,
    out: impl Write,
    opts: &PackOptions,
) -> Result<(), ArchiveError> {
    let mut packer = Packer { builder: tar::Builder::new(out), opts, dir: shown, inodes: HashMap::new(), keep: &|_| true };
    if let Err(e) = fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        return Err(packer.read_err(b"", e));
    }
    packer.pack_entry(parent, name, b"", as_name, true)?;
    packer.builder.into_inner().map_err(ArchiveError::WriteTar)?;
    Ok(())
}

struct Packer<'a, W: Write> {
    builder: tar::Builder<W>,
    opts: &'a PackOptions,
    dir: &'a Path,
    /// First name written for each multiply-linked inode, by (dev, ino).
    inodes: HashMap<(u64, u64), Vec<u8>>,
    /// Entries (and subtrees) to write.
    keep: &'a dyn Fn(&[u8]) -> bool,
}

/// The parts of a `stat` a tar header records.
struct Attrs {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: u64,
    size: u64,
    rdev: u64,
}

impl Attrs {
    #[allow(clippy::unnecessary_cast)] // stat field types differ between architectures
    fn of(st: &Stat) -> Self {
        Attrs {
            mode: st.st_mode as u32 & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            mtime: u64::try_from(st.st_mtime).unwrap_or(0),
            size: u64::try_from(st.st_size).unwrap_or(0),
            rdev: st.st_rdev as u64,
        }
    }
}

impl<W: Write> Packer<'_, W> {
    /// Appends every entry below the open directory `dir`, whose name in the
    /// tar is `prefix` (empty or ending in `/`).
    fn pack_dir(&mut self, dir: BorrowedFd<'_>, prefix: &[u8]) -> Result<(), ArchiveError> {
        let names = sys::sorted_names(dir).map_err(|e| self.read_err(prefix, e))?;
        for name in names {
            self.pack_entry(dir, &name, prefix, &name, false)?;
        }
        Ok(())
    }

    /// Appends the entry `name` of `dir` under the tar name `prefix` +
    /// `entry_name` (`prefix` empty or ending in `/`) and, for a directory,
    /// everything below it, unless `keep` refuses it. One that vanished since
    /// `dir` was listed is skipped, unless `top` (the entry asked for by
    /// name).
    fn pack_entry(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &[u8],
        prefix: &[u8],
        entry_name: &[u8],
        top: bool,
    ) -> Result<(), ArchiveError> {
        let mut path = prefix.to_vec();
        path.extend_from_slice(entry_name);
        if !(self.keep)(&path) {
            return Ok(());
        }
        let st = match fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            // Removed since the directory was listed.
            Err(Errno::NOENT) if !top => return Ok(()),
            Err(e) => return Err(self.read_err(&path, e)),
        };
        match FileType::from_raw_mode(st.st_mode as _) {
            FileType::Directory => {
                let child = sys::open_dir(dir, name).map_err(|e| self.read_err(&path, e))?;
                let st = fs::fstat(&child).map_err(|e| self.read_err(&path, e))?;
                let xattrs = XattrTarget::Fd(child.as_fd()).read_all().map_err(|e| self.read_err(&path, e))?;
                path.push(b'/');
                self.append(EntryType::Directory, &path, None, &Attrs::of(&st), &xattrs, io::empty())?;
                if self.opts.overlay_whiteouts && is_opaque(&xattrs) {
                    self.append_opaque_marker(&path, &st)?;
                }
                self.pack_dir(child.as_fd(), &path)?;
            }
            FileType::RegularFile => {
                // The tree may change while it is packed (a running
                // container): a device or fifo swapped in since the stat
                // must not even be opened (opening a device node can act on
                // the host's device, a fifo can hang). So pin the inode
                // with an O_PATH descriptor, check it, and only then open
                // that very inode for reading.
                let node = fs::openat(dir, name, OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
                    .map_err(|e| self.read_err(&path, e))?;
                let st = fs::fstat(&node).map_err(|e| self.read_err(&path, e))?;
                if FileType::from_raw_mode(st.st_mode as _) != FileType::RegularFile {
                    return Err(self.read_err(&path, Errno::AGAIN));
                }
                let fd = fs::open(
                    sys::proc_fd_path(node.as_fd()),
                    OFlags::RDONLY | OFlags::NOCTTY | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| self.read_err(&path, e))?;
                if self.append_if_hardlink(&path, &st)? {
                    return Ok(());
                }
                let xattrs = XattrTarget::Fd(fd.as_fd()).read_all().map_err(|e| self.read_err(&path, e))?;
                let attrs = Attrs::of(&st);
                let contents = ExactReader { inner: File::from(fd), remaining: attrs.size };
                self.append(EntryType::Regular, &path, None, &attrs, &xattrs, contents)?;
            }
            FileType::Symlink => {
                if self.append_if_hardlink(&path, &st)? {
                    return Ok(());
                }
                let target = fs::readlinkat(dir, name, Vec::new()).map_err(|e| self.read_err(&path, e))?;
                let xattrs = self.xattrs_at(dir, name, &path)?;
                let mut attrs = Attrs::of(&st);
                attrs.size = 0;
                self.append(EntryType::Symlink, &path, Some(target.as_bytes()), &attrs, &xattrs, io::empty())?;
            }
            kind @ (FileType::CharacterDevice | FileType::BlockDevice | FileType::Fifo) => {
                let mut attrs = Attrs::of(&st);
                attrs.size = 0;
                if kind == FileType::CharacterDevice && attrs.rdev == 0 && self.opts.overlay_whiteouts {
                    let mut whiteout = prefix.to_vec();
                    whiteout.extend_from_slice(WHITEOUT_PREFIX.as_bytes());
                    whiteout.extend_from_slice(entry_name);
                    attrs.mode = 0o600;
                    self.append(EntryType::Regular, &whiteout, None, &attrs, &[], io::empty())?;
                    return Ok(());
                }
                if self.append_if_hardlink(&path, &st)? {
                    return Ok(());
                }
                let xattrs = self.xattrs_at(dir, name, &path)?;
                let entry_type = match kind {
                    FileType::CharacterDevice => EntryType::Char,
                    FileType::BlockDevice => EntryType::Block,
                    _ => EntryType::Fifo,
                };
                self.append(entry_type, &path, None, &attrs, &xattrs, io::empty())?;
            }
            _ => tracing::debug!(path = %String::from_utf8_lossy(&path), "skipping socket"),
        }
        Ok(())
    }

    /// Writes a hardlink entry if `st`'s inode was written before under
    /// another name; otherwise remembers this name for later links.
    fn append_if_hardlink(&mut self, path: &[u8], st: &Stat) -> Result<bool, ArchiveError> {
        #[allow(clippy::unnecessary_cast)] // stat field types differ between architectures
        let (nlink, key) = (st.st_nlink as u64, (st.st_dev as u64, st.st_ino as u64));
        if nlink < 2 {
            return Ok(false);
        }
        if let Some(first) = self.inodes.get(&key).cloned() {
            let mut attrs = Attrs::of(st);
            attrs.size = 0;
            self.append(EntryType::Link, path, Some(&first), &attrs, &[], io::empty())?;
            return Ok(true);
        }
        self.inodes.insert(key, path.to_vec());
        Ok(false)
    }

    /// The `.wh..wh..opq` entry for the opaque directory named `dir_path`
    /// (empty or ending in `/`).
    fn append_opaque_marker(&mut self, dir_path: &[u8], dir_stat: &Stat) -> Result<(), ArchiveError> {
        let mut path = dir_path.to_vec();
        path.extend_from_slice(WHITEOUT_OPAQUE.as_bytes());
        let mut attrs = Attrs::of(dir_stat);
        attrs.mode &= 0o777;
        attrs.size = 0;
        self.append(EntryType::Regular, &path, None, &attrs, &[], io::empty())
    }

    fn xattrs_at(&self, dir: BorrowedFd<'_>, name: &[u8], path: &[u8]) -> Result<Xattrs, ArchiveError> {
        XattrTarget::At { parent: dir, name }.read_all().map_err(|e| self.read_err(path, e))
    }

    fn append(
        &mut self,
        entry_type: EntryType,
        path: &[u8],
        link: Option<&[u8]>,
        attrs: &Attrs,
        xattrs: &[(Vec<u8>, Vec<u8>)],
        contents: impl Read,
    ) -> Result<(), ArchiveError> {
        let mut header = Header::new_ustar();
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        let name_field = &mut header.as_old_mut().name;
        let stored = path.len().min(USTAR_NAME_MAX);
        name_field[..stored].copy_from_slice(&path[..stored]);
        if path.len() > USTAR_NAME_MAX {
            pax.push(("path".to_owned(), path.to_vec()));
        }
        if let Some(link) = link {
            let link_field = &mut header.as_old_mut().linkname;
            let stored = link.len().min(USTAR_NAME_MAX);
            link_field[..stored].copy_from_slice(&link[..stored]);
            if link.len() > USTAR_NAME_MAX {
                pax.push(("linkpath".to_owned(), link.to_vec()));
            }
        }
        header.set_entry_type(entry_type);
        header.set_mode(attrs.mode);
        header.set_uid(u64::from(attrs.uid));
        header.set_gid(u64::from(attrs.gid));
        if attrs.uid > USTAR_ID_MAX {
            pax.push(("uid".to_owned(), attrs.uid.to_string().into_bytes()));
        }
        if attrs.gid > USTAR_ID_MAX {
            pax.push(("gid".to_owned(), attrs.gid.to_string().into_bytes()));
        }
        header.set_mtime(attrs.mtime);
        header.set_size(if entry_type == EntryType::Regular { attrs.size } else { 0 });
        if matches!(entry_type, EntryType::Char | EntryType::Block) {
            let rdev = attrs.rdev as fs::Dev;
            header.set_device_major(fs::major(rdev)).map_err(ArchiveError::WriteTar)?;
            header.set_device_minor(fs::minor(rdev)).map_err(ArchiveError::WriteTar)?;
        }
        for (key, value) in xattrs {
            if HOST_XATTR_PREFIXES.iter().any(|p| key.starts_with(p)) {
                continue;
            }
            match std::str::from_utf8(key) {
                Ok(key) => pax.push((format!("SCHILY.xattr.{key}"), value.clone())),
                Err(_) => tracing::warn!(
                    path = %String::from_utf8_lossy(path),
                    xattr = %String::from_utf8_lossy(key),
                    "skipping xattr whose name is not UTF-8"
                ),
            }
        }
        if !pax.is_empty() {
            self.builder
                .append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .map_err(ArchiveError::WriteTar)?;
        }
        header.set_cksum();
        self.builder.append(&header, contents).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => ArchiveError::ReadTree { path: self.full_path(path), source: e },
            _ => ArchiveError::WriteTar(e),
        })
    }

    fn full_path(&self, rel: &[u8]) -> PathBuf {
        use std::os::unix::ffi::OsStrExt;
        self.dir.join(std::ffi::OsStr::from_bytes(rel))
    }

    fn read_err(&self, rel: &[u8], e: Errno) -> ArchiveError {
        ArchiveError::ReadTree { path: self.full_path(rel), source: e.into() }
    }
}

fn is_opaque(xattrs: &[(Vec<u8>, Vec<u8>)]) -> bool {
    xattrs.iter().any(|(k, v)| k == OVERLAY_OPAQUE_XATTR.as_bytes() && v == b"y")
}

/// A file's contents, exactly as long as the size recorded in its header:
/// a file that shrinks while it is packed is an error (a tar with a short
/// entry would be corrupt), one that grows is cut at the recorded size.
struct ExactReader {
    inner: File,
    remaining: u64,
}

impl Read for ExactReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank while being packed"));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

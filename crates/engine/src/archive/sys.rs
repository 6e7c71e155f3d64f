//! Descriptor-relative file system calls shared by the unpacker and the
//! packer (and, within the crate, by `containers::fs`, which walks container
//! file systems the same way). Everything here works on a directory
//! descriptor plus one name and never follows a symlink in that name.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use rustix::fs::{self, AtFlags, FileType, Mode, OFlags};
use rustix::io::{Errno, Result};

/// Opens directory `name` in `parent` for reading, refusing symlinks.
pub(crate) fn open_dir(parent: BorrowedFd<'_>, name: &[u8]) -> Result<OwnedFd> {
    fs::openat(parent, name, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
}

/// Opens directory `name` in `parent` only as an anchor for `*at()` calls,
/// refusing symlinks (`ENOTDIR`). Needs no read permission on the directory.
pub(crate) fn open_dir_path(parent: BorrowedFd<'_>, name: &[u8]) -> Result<OwnedFd> {
    fs::openat(parent, name, OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
}

/// Reopens the directory behind an `O_PATH` descriptor for reading, which
/// `fsetxattr` and `getdents` need.
pub(super) fn reopen_dir(dir: BorrowedFd<'_>) -> Result<OwnedFd> {
    fs::openat(dir, ".", OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
}

/// The file type of `name` in `parent`, not following symlinks; `None` when
/// it does not exist.
pub(crate) fn file_type_at(parent: BorrowedFd<'_>, name: &[u8]) -> Result<Option<FileType>> {
    match fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(FileType::from_raw_mode(st.st_mode as _))),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A path naming `name` inside the directory `parent` through procfs, for
/// the calls that have no `*at()` form (`lsetxattr`, `llistxattr`,
/// `lgetxattr`). The kernel resolves `/proc/self/fd/N` to exactly that
/// directory, and the `l*` calls do not follow `name` itself, so this reaches
/// the entry without following any symlink. Opening symlinks, devices and
/// fifos to use the `f*` calls instead is impossible or has side effects.
pub(super) fn proc_path(parent: BorrowedFd<'_>, name: &[u8]) -> Vec<u8> {
    let mut path = format!("/proc/self/fd/{}/", parent.as_raw_fd()).into_bytes();
    path.extend_from_slice(name);
    path
}

/// `/proc/self/fd/N` for `fd`: a path the kernel resolves to exactly the
/// open file, for calls that take only paths (`chmod` of a device node).
pub(super) fn proc_fd_path(fd: BorrowedFd<'_>) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// The names in a directory (without `.` and `..`), sorted bytewise.
pub(crate) fn sorted_names(dir: BorrowedFd<'_>) -> Result<Vec<Vec<u8>>> {
    let mut stream = fs::Dir::read_from(dir)?;
    let mut names = Vec::new();
    while let Some(entry) = stream.read() {
        let name = entry?.file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            names.push(name);
        }
    }
    names.sort_unstable();
    Ok(names)
}

/// Removes `name` from `parent` and, if it is a directory, everything below
/// it, never following symlinks. A missing `name` is not an error.
pub(super) fn remove_all_at(parent: BorrowedFd<'_>, name: &[u8]) -> Result<()> {
    match file_type_at(parent, name)? {
        None => Ok(()),
        Some(FileType::Directory) => {
            let dir = open_dir(parent, name)?;
            for child in sorted_names(dir.as_fd())? {
                remove_all_at(dir.as_fd(), &child)?;
            }
            fs::unlinkat(parent, name, AtFlags::REMOVEDIR)
        }
        Some(_) => fs::unlinkat(parent, name, AtFlags::empty()),
    }
}

/// Xattrs as (name, value) pairs.
pub(super) type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// Where an xattr is read or written.
pub(super) enum XattrTarget<'a> {
    /// An open regular file or directory.
    Fd(BorrowedFd<'a>),
    /// `name` in the directory `parent`, not followed if it is a symlink.
    At { parent: BorrowedFd<'a>, name: &'a [u8] },
}

impl XattrTarget<'_> {
    pub(super) fn set(&self, key: &[u8], value: &[u8]) -> Result<()> {
        match self {
            XattrTarget::Fd(fd) => fs::fsetxattr(fd, key, value, fs::XattrFlags::empty()),
            XattrTarget::At { parent, name } => {
                fs::lsetxattr(proc_path(*parent, name), key, value, fs::XattrFlags::empty())
            }
        }
    }

    fn list_size(&self) -> Result<usize> {
        match self {
            XattrTarget::Fd(fd) => fs::flistxattr_query(fd),
            XattrTarget::At { parent, name } => fs::llistxattr_query(proc_path(*parent, name)),
        }
    }

    fn list_into(&self, buf: &mut [u8]) -> Result<usize> {
        match self {
            XattrTarget::Fd(fd) => fs::flistxattr(fd, buf),
            XattrTarget::At { parent, name } => fs::llistxattr(proc_path(*parent, name), buf),
        }
    }

    fn get_size(&self, key: &[u8]) -> Result<usize> {
        match self {
            XattrTarget::Fd(fd) => fs::fgetxattr_query(fd, key),
            XattrTarget::At { parent, name } => fs::lgetxattr_query(proc_path(*parent, name), key),
        }
    }

    fn get_into(&self, key: &[u8], buf: &mut [u8]) -> Result<usize> {
        match self {
            XattrTarget::Fd(fd) => fs::fgetxattr(fd, key, buf),
            XattrTarget::At { parent, name } => fs::lgetxattr(proc_path(*parent, name), key, buf),
        }
    }

    /// Every xattr as (name, value), sorted by name. A file system without
    /// xattr support has none.
    pub(super) fn read_all(&self) -> Result<Xattrs> {
        let list = match read_sized(|| self.list_size(), |buf| self.list_into(buf)) {
            Err(Errno::NOTSUP) => return Ok(Vec::new()),
            other => other?,
        };
        let mut out = Vec::new();
        for key in list.split(|b| *b == 0).filter(|k| !k.is_empty()) {
            match read_sized(|| self.get_size(key), |buf| self.get_into(key, buf)) {
                Ok(value) => out.push((key.to_vec(), value)),
                // Removed between listing and reading.
                Err(Errno::NODATA) => {}
                Err(e) => return Err(e),
            }
        }
        out.sort();
        Ok(out)
    }
}

/// Reads a variable-sized xattr list or value: asks for the size, then
/// reads, and retries if it grew in between (`ERANGE`).
fn read_sized(size: impl Fn() -> Result<usize>, read: impl Fn(&mut [u8]) -> Result<usize>) -> Result<Vec<u8>> {
    loop {
        let len = size()?;
        if len == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; len];
        match read(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(Errno::RANGE) => continue,
            Err(e) => return Err(e),
        }
    }
}

//! Paths inside a container's root filesystem, resolved as if it were `/`.
//!
//! The rootfs comes from an image, so its symlinks are hostile until
//! proven otherwise: `/etc/passwd -> /etc/shadow` or `-> ../../../x` must
//! name a file inside the rootfs, never one on the host. `openat2` with
//! `RESOLVE_IN_ROOT` does exactly that; before Linux 5.6 we walk the path
//! one component at a time with `O_NOFOLLOW` and resolve each symlink by
//! hand against the root (absolute targets restart at the root, `..` stops
//! there). Directories are held open while walking, so renaming things
//! meanwhile cannot move us out.

use std::ffi::OsStr;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// Bigger passwd/group files than this are not real ones.
const MAX_READ: u64 = 16 << 20;
/// As the kernel's MAXSYMLINKS.
const MAX_LINKS: usize = 40;

fn open_root(root: &Path) -> rustix::io::Result<OwnedFd> {
    rustix::fs::open(root, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
}

/// Reads the regular file `rel` (e.g. "etc/passwd") inside `root`.
/// `Ok(None)` when it does not exist; an error when it is not a regular
/// file (a FIFO or a device would hang or flood us) or is too big.
pub fn read_in_root(root: &Path, rel: &str) -> std::io::Result<Option<String>> {
    let root_fd = open_root(root)?;
    // O_NONBLOCK: opening a FIFO must not block; it is refused below.
    let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK;
    let opened = match rustix::fs::openat2(&root_fd, rel, flags, Mode::empty(), ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS) {
        Err(Errno::NOSYS) | Err(Errno::PERM) => walk(&root_fd, rel, Walk::Open(flags)),
        other => other,
    };
    let fd = match opened {
        Ok(fd) => fd,
        Err(Errno::NOENT) | Err(Errno::NOTDIR) | Err(Errno::LOOP) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let st = rustix::fs::fstat(&fd)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "not a regular file"));
    }
    if st.st_size as u64 > MAX_READ {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "file too large"));
    }
    let mut buf = Vec::new();
    std::fs::File::from(fd).take(MAX_READ).read_to_end(&mut buf)?;
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

/// Creates the directory `rel` and its parents inside `root` (mode 0755,
/// owned by the caller), like dockerd does for the working directory.
pub fn mkdir_all_in_root(root: &Path, rel: &str) -> std::io::Result<()> {
    let root_fd = open_root(root)?;
    walk(&root_fd, rel, Walk::MkdirAll)?;
    Ok(())
}

#[derive(Clone, Copy)]
enum Walk {
    /// Open the final component, a non-directory, with these flags.
    Open(OFlags),
    /// Create missing directories; return the final one (O_PATH).
    MkdirAll,
}

fn walk(root: &OwnedFd, rel: &str, mode: Walk) -> rustix::io::Result<OwnedFd> {
    let path_flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    // Directories from the root to where we are; never empty.
    let mut stack: Vec<OwnedFd> = vec![rustix::io::fcntl_dupfd_cloexec(root, 0)?];
    let mut pending: Vec<Vec<u8>> = split_rev(rel.as_bytes());
    let mut links = 0;
    while let Some(name) = pending.pop() {
        match name.as_slice() {
            b"" | b"." => continue,
            b".." => {
                if stack.len() > 1 {
                    stack.pop();
                }
                continue;
            }
            _ => {}
        }
        let name = OsStr::from_bytes(&name);
        let cur = stack.last().expect("the stack holds at least the root");
        let fd = match (rustix::fs::openat(cur, name, path_flags, Mode::empty()), mode) {
            (Err(Errno::NOENT), Walk::MkdirAll) => {
                match rustix::fs::mkdirat(cur, name, Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(e),
                }
                rustix::fs::openat(cur, name, path_flags, Mode::empty())?
            }
            (r, _) => r?,
        };
        let st = rustix::fs::fstat(&fd)?;
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Symlink => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(Errno::LOOP);
                }
                let target = rustix::fs::readlinkat(cur, name, Vec::new())?;
                let target = target.as_bytes();
                if target.starts_with(b"/") {
                    stack.truncate(1);
                }
                pending.extend(split_rev(target));
            }
            FileType::Directory => stack.push(fd),
            _ => match mode {
                Walk::Open(flags) if pending.iter().all(|p| p.is_empty() || p == b".") => {
                    return rustix::fs::openat(cur, name, flags | OFlags::NOFOLLOW, Mode::empty());
                }
                _ => return Err(Errno::NOTDIR),
            },
        }
    }
    match mode {
        Walk::Open(_) => Err(Errno::ISDIR),
        Walk::MkdirAll => Ok(stack.pop().expect("the stack holds at least the root")),
    }
}

/// Path components in reverse order, so `pop` yields them in order.
fn split_rev(path: &[u8]) -> Vec<Vec<u8>> {
    path.split(|b| *b == b'/').rev().map(<[u8]>::to_vec).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn walk_open(root: &Path, rel: &str) -> rustix::io::Result<OwnedFd> {
        walk(&open_root(root).unwrap(), rel, Walk::Open(OFlags::RDONLY))
    }

    #[test]
    fn symlinks_out_of_the_root_land_inside_it() {
        let outside = tempfile::tempdir().unwrap();
        let secret = outside.path().join("secret");
        std::fs::write(&secret, "host data").unwrap();
        for target in [secret.to_str().unwrap().to_owned(), format!("../../../../../../..{}", secret.display())] {
            let root = tempfile::tempdir().unwrap();
            std::fs::create_dir(root.path().join("etc")).unwrap();
            symlink(&target, root.path().join("etc/passwd")).unwrap();
            assert!(read_in_root(root.path(), "etc/passwd").unwrap().is_none(), "{target}");
            assert!(matches!(walk_open(root.path(), "etc/passwd"), Err(Errno::NOENT)), "{target}");
            // Once the same path exists inside the root, that is what we get.
            let inside = root.path().join(target.trim_start_matches("../").trim_start_matches('/'));
            std::fs::create_dir_all(inside.parent().unwrap()).unwrap();
            std::fs::write(&inside, "container data").unwrap();
            assert_eq!(read_in_root(root.path(), "etc/passwd").unwrap().as_deref(), Some("container data"));
            let mut s = String::new();
            std::fs::File::from(walk_open(root.path(), "etc/passwd").unwrap()).read_to_string(&mut s).unwrap();
            assert_eq!(s, "container data");
        }
    }

    #[test]
    fn relative_symlinks_inside_the_root_are_followed() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("usr/lib")).unwrap();
        std::fs::write(root.path().join("usr/lib/passwd"), "x").unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        symlink("../usr/lib/passwd", root.path().join("etc/passwd")).unwrap();
        assert!(walk_open(root.path(), "etc/passwd").is_ok());
        assert_eq!(read_in_root(root.path(), "etc/passwd").unwrap().as_deref(), Some("x"));
    }

    #[test]
    fn symlink_loops_end() {
        let root = tempfile::tempdir().unwrap();
        symlink("a", root.path().join("b")).unwrap();
        symlink("b", root.path().join("a")).unwrap();
        assert!(matches!(walk_open(root.path(), "a"), Err(Errno::LOOP)));
        assert!(read_in_root(root.path(), "a").unwrap().is_none());
    }

    #[test]
    fn mkdir_all_stays_in_the_root() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        symlink(outside.path(), root.path().join("escape")).unwrap();
        mkdir_all_in_root(root.path(), "/escape/work/dir").unwrap();
        assert!(root.path().join(outside.path().strip_prefix("/").unwrap()).join("work/dir").is_dir());
        assert!(!outside.path().join("work").exists());
        mkdir_all_in_root(root.path(), "srv/app").unwrap();
        assert!(root.path().join("srv/app").is_dir());
        std::fs::write(root.path().join("file"), "").unwrap();
        assert!(mkdir_all_in_root(root.path(), "file/sub").is_err());
    }
}

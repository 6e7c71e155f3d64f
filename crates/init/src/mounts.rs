//! Mounts: the early API filesystems, the plan for host shares on a read-only
//! root, and the unmount order at power-off.
//!
//! Shares on a read-only root: a share's path must exist. `/tmp` is a tmpfs
//! (a `/tmp` share is mounted over it). For other paths, the first component
//! (`/home`, `/Users`, `/Volumes`, `/mnt`, `/media`, `/opt`, `/srv`,
//! `/private`) is an empty directory in the image; berth-init mounts a tmpfs
//! on it and creates the rest of the path there. A path under another share
//! is created inside that share. Other places (`/usr`, `/etc`, ...) are
//! refused.

use std::collections::BTreeSet;
use std::io;
use std::path::Path;

use crate::guest::{Share, ShareType};
use crate::sys;

/// Top-level directories that may receive a tmpfs to hold share mountpoints.
pub const SHARE_ROOTS: [&str; 8] = ["home", "Users", "Volumes", "mnt", "media", "opt", "srv", "private"];

/// Guest paths a share must never cover.
const FORBIDDEN: [&str; 14] = [
    "/", "/bin", "/boot", "/dev", "/etc", "/lib", "/lib64", "/proc", "/run", "/sbin", "/sys", "/usr", "/var", "/root",
];

/// One step of the share plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Mount a tmpfs on this top-level directory.
    Tmpfs(String),
    /// Create this directory (and its parents).
    Mkdir(String),
    /// Mount the share.
    Mount { tag: String, path: String, kind: ShareType, readonly: bool },
}

/// Normalises an absolute path: no `.`/`..`/empty components, no trailing `/`.
fn normalize(p: &str) -> Option<String> {
    if !p.starts_with('/') {
        return None;
    }
    let mut parts = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => return None,
            c => parts.push(c),
        }
    }
    Some(format!("/{}", parts.join("/")))
}

fn is_under(path: &str, dir: &str) -> bool {
    dir == "/" || path == dir || path.starts_with(&format!("{dir}/"))
}

/// Plans the share mounts: parents before children. Returns the steps and one
/// message per refused share.
pub fn plan(shares: &[Share]) -> (Vec<Step>, Vec<String>) {
    let mut steps = Vec::new();
    let mut errors = Vec::new();
    let mut ok: Vec<(String, &Share)> = Vec::new();
    let mut seen = BTreeSet::new();
    for s in shares {
        let Some(p) = normalize(&s.path) else {
            errors.push(format!("share {}: path {:?} is not a clean absolute path", s.tag, s.path));
            continue;
        };
        if FORBIDDEN.contains(&p.as_str()) || is_under(&p, "/var/lib/berth") || is_under(&p, "/proc") || is_under(&p, "/sys") || is_under(&p, "/dev") || is_under(&p, "/run") {
            errors.push(format!("share {}: path {p} would cover a system directory", s.tag));
            continue;
        }
        if !seen.insert(p.clone()) {
            errors.push(format!("share {}: path {p} is already shared", s.tag));
            continue;
        }
        ok.push((p, s));
    }
    ok.sort_by_key(|(p, _)| p.matches('/').count());
    let mut tmpfs_done = BTreeSet::new();
    let mut mounted: Vec<String> = Vec::new();
    for (p, s) in ok {
        let under_share = mounted.iter().any(|m| is_under(&p, m) && *m != p);
        let top = p.trim_start_matches('/').split('/').next().unwrap_or("").to_string();
        if under_share || top == "tmp" {
            steps.push(Step::Mkdir(p.clone()));
        } else if SHARE_ROOTS.contains(&top.as_str()) {
            let top_path = format!("/{top}");
            if p != top_path {
                if tmpfs_done.insert(top_path.clone()) {
                    steps.push(Step::Tmpfs(top_path));
                }
                steps.push(Step::Mkdir(p.clone()));
            }
        } else {
            errors.push(format!(
                "share {}: cannot create {p} on the read-only root (shares go under /tmp, /{}, or an existing share)",
                s.tag,
                SHARE_ROOTS.join(", /")
            ));
            continue;
        }
        steps.push(Step::Mount { tag: s.tag.clone(), path: p.clone(), kind: s.kind, readonly: s.readonly });
        mounted.push(p);
    }
    (steps, errors)
}

/// 9p options: a large msize for throughput; cache=mmap so programs that mmap
/// files (sqlite, compilers) work on shares.
pub const NINEP_SHARE_OPTS: &str = "trans=virtio,version=9p2000.L,msize=524288,cache=mmap";
/// The config share: no caching, the host reads the engine log as it grows.
pub const NINEP_CFG_OPTS: &str = "trans=virtio,version=9p2000.L,msize=262144";

/// Mounts a host share (9p or virtiofs) at `path`.
pub fn mount_share(tag: &str, path: &Path, kind: ShareType, readonly: bool, opts: &str) -> io::Result<()> {
    let flags = if readonly { libc::MS_RDONLY } else { 0 } | libc::MS_NOSUID | libc::MS_NODEV;
    match kind {
        ShareType::NineP => sys::mount(tag, path, "9p", flags, opts),
        ShareType::Virtiofs => sys::mount(tag, path, "virtiofs", flags, ""),
    }
}

/// Executes a plan, logging each step; failures are logged and skipped.
pub fn apply(steps: &[Step]) {
    for s in steps {
        let r = match s {
            Step::Tmpfs(p) => sys::mount("tmpfs", Path::new(p), "tmpfs", libc::MS_NOSUID | libc::MS_NODEV, "mode=755")
                .map_err(|e| format!("tmpfs on {p}: {e}")),
            Step::Mkdir(p) => std::fs::create_dir_all(p).map_err(|e| format!("create {p}: {e}")),
            Step::Mount { tag, path, kind, readonly } => {
                match mount_share(tag, Path::new(path), *kind, *readonly, NINEP_SHARE_OPTS) {
                    Ok(()) => {
                        crate::log!("share {tag} mounted at {path}");
                        Ok(())
                    }
                    Err(e) => Err(format!("mount share {tag} at {path}: {e}")),
                }
            }
        };
        if let Err(e) = r {
            crate::log!("{e}");
        }
    }
}

/// One line of /proc/self/mountinfo: mount point and filesystem type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub target: String,
    pub fstype: String,
    pub source: String,
}

fn unescape(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let Some(sep) = f.iter().position(|x| *x == "-") else { continue };
        if f.len() < 5 || f.len() < sep + 3 {
            continue;
        }
        out.push(MountEntry { target: unescape(f[4]), fstype: f[sep + 1].to_string(), source: unescape(f[sep + 2]) });
    }
    out
}

/// What to unmount at power-off, in order: everything under the data disk,
/// the shares and the config share, then the data disk itself; newest first.
pub fn unmount_order(mounts: &[MountEntry], data_dir: &str) -> Vec<String> {
    let mut out = Vec::new();
    for m in mounts.iter().rev() {
        let t = m.target.as_str();
        let shared = matches!(m.fstype.as_str(), "9p" | "virtiofs");
        if (is_under(t, data_dir) || shared) && !out.contains(&m.target) {
            out.push(m.target.clone());
        }
    }
    // The data disk last, even if something was mounted over it later.
    if let Some(i) = out.iter().position(|t| t == data_dir) {
        let d = out.remove(i);
        out.push(d);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(tag: &str, path: &str) -> Share {
        Share { tag: tag.into(), path: path.into(), kind: ShareType::NineP, readonly: false }
    }

    fn mount(tag: &str, path: &str) -> Step {
        Step::Mount { tag: tag.into(), path: path.into(), kind: ShareType::NineP, readonly: false }
    }

    #[test]
    fn tmp_share_mounts_over_tmp() {
        let (steps, errs) = plan(&[share("share0", "/tmp")]);
        assert!(errs.is_empty());
        assert_eq!(steps, vec![Step::Mkdir("/tmp".into()), mount("share0", "/tmp")]);
    }

    #[test]
    fn home_share_gets_one_tmpfs_on_its_top_directory() {
        let (steps, errs) = plan(&[share("share0", "/home/u"), share("share1", "/home/v/")]);
        assert!(errs.is_empty());
        assert_eq!(
            steps,
            vec![
                Step::Tmpfs("/home".into()),
                Step::Mkdir("/home/u".into()),
                mount("share0", "/home/u"),
                Step::Mkdir("/home/v".into()),
                mount("share1", "/home/v"),
            ]
        );
    }

    #[test]
    fn nested_share_is_created_inside_its_parent_share_after_it() {
        let (steps, errs) = plan(&[share("inner", "/Users/a/src"), share("outer", "/Users/a")]);
        assert!(errs.is_empty());
        assert_eq!(
            steps,
            vec![
                Step::Tmpfs("/Users".into()),
                Step::Mkdir("/Users/a".into()),
                mount("outer", "/Users/a"),
                Step::Mkdir("/Users/a/src".into()),
                mount("inner", "/Users/a/src"),
            ]
        );
    }

    #[test]
    fn share_of_a_whole_top_directory_needs_no_tmpfs() {
        let (steps, _) = plan(&[share("s", "/mnt")]);
        assert_eq!(steps, vec![mount("s", "/mnt")]);
    }

    #[test]
    fn system_and_unplaceable_paths_are_refused() {
        let (steps, errs) = plan(&[
            share("a", "/etc"),
            share("b", "/var/lib/berth/x"),
            share("c", "relative"),
            share("d", "/nowhere/x"),
            share("e", "/home/../etc"),
            share("f", "/run/x"),
        ]);
        assert!(steps.is_empty());
        assert_eq!(errs.len(), 6, "{errs:?}");
    }

    #[test]
    fn duplicate_paths_are_refused() {
        let (steps, errs) = plan(&[share("a", "/tmp"), share("b", "/tmp/")]);
        assert_eq!(steps.len(), 2);
        assert_eq!(errs.len(), 1);
    }

    #[test]
    fn mountinfo_parses_targets_and_types() {
        let text = "22 1 254:0 / / ro,relatime shared:1 - ext4 /dev/vda ro\n\
                    30 22 254:16 / /var/lib/berth rw,noatime shared:9 - ext4 /dev/vdb rw\n\
                    31 22 0:40 / /home/with\\040space rw - 9p share1 rw,trans=virtio\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 3);
        assert_eq!(m[1], MountEntry { target: "/var/lib/berth".into(), fstype: "ext4".into(), source: "/dev/vdb".into() });
        assert_eq!(m[2].target, "/home/with space");
    }

    #[test]
    fn unmount_order_is_newest_first_with_the_data_disk_last() {
        let m = vec![
            MountEntry { target: "/".into(), fstype: "ext4".into(), source: "/dev/vda".into() },
            MountEntry { target: "/var/lib/berth".into(), fstype: "ext4".into(), source: "/dev/vdb".into() },
            MountEntry { target: "/run/berth/host".into(), fstype: "9p".into(), source: "berthcfg".into() },
            MountEntry { target: "/tmp".into(), fstype: "9p".into(), source: "share0".into() },
            MountEntry { target: "/var/lib/berth/engine/containers/x/merged".into(), fstype: "overlay".into(), source: "overlay".into() },
            MountEntry { target: "/tmp".into(), fstype: "tmpfs".into(), source: "tmpfs".into() },
        ];
        assert_eq!(
            unmount_order(&m, "/var/lib/berth"),
            vec!["/var/lib/berth/engine/containers/x/merged", "/tmp", "/run/berth/host", "/var/lib/berth"]
        );
    }
}

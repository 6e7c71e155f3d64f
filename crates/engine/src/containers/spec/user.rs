//! `--user` and `--group-add`: names and numbers resolved against the
//! container's own /etc/passwd and /etc/group, with the rules of
//! moby/sys/user `GetExecUser` and `GetAdditionalGroups`.
//!
//! The files are read from the image's root filesystem, which the image
//! author controls, through [`super::inroot`]: symlinks resolve as if the
//! rootfs were `/`, and only regular files of sane size are read, so a
//! hostile image can make us read neither a host file nor a device.
//!
//! IDs must lie in 0..=2^31-1 (moby's range, for 32-bit safety). Anything
//! else is refused rather than truncated, so `--user 4294967296` can never
//! become root.

use std::path::Path;

use super::error::SpecError;
use super::inroot::read_in_root;

const MAX_ID: i64 = (1 << 31) - 1;
const RANGE_ERR: &str = "uids and gids must be in range 0-2147483647";
const NO_PASSWD: &str = "no matching entries in passwd file";
const NO_GROUP: &str = "no matching entries in group file";

/// The process identity for the OCI spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecUser {
    pub uid: u32,
    pub gid: u32,
    /// The primary gid first, then the user's supplementary groups from
    /// /etc/group (only when the group was not given explicitly), as
    /// dockerd lists them in `process.user.additionalGids`.
    pub additional_gids: Vec<u32>,
}

struct PasswdEntry {
    name: String,
    uid: Option<i64>,
    gid: Option<i64>,
}

struct GroupEntry {
    name: String,
    gid: Option<i64>,
    members: Vec<String>,
}

/// Resolves a `User` value (`""`, `name`, `uid`, `name:group`, `uid:gid`,
/// `name:gid`, `uid:group`) inside `rootfs`, to `(uid, gid,
/// additional_gids)` as they go into `process.user` (see
/// [`ExecUser::additional_gids`]).
pub fn resolve_user(rootfs: &Path, user: &str) -> Result<(u32, u32, Vec<u32>), SpecError> {
    let u = resolve_exec_user(rootfs, user)?;
    Ok((u.uid, u.gid, u.additional_gids))
}

/// [`resolve_user`], as a struct.
pub fn resolve_exec_user(rootfs: &Path, user: &str) -> Result<ExecUser, SpecError> {
    let passwd = read_in_root(rootfs, "etc/passwd").map_err(|source| SpecError::ReadUserDb { path: "/etc/passwd", source })?;
    let group = read_in_root(rootfs, "etc/group").map_err(|source| SpecError::ReadUserDb { path: "/etc/group", source })?;
    resolve_user_from(user, passwd.as_deref(), group.as_deref())
}

/// Resolves `--group-add` entries (names or gids) inside `rootfs`; names
/// must exist in /etc/group, gids need not. Duplicates are dropped.
pub fn resolve_additional_groups(rootfs: &Path, groups: &[String]) -> Result<Vec<u32>, SpecError> {
    if groups.is_empty() {
        return Ok(Vec::new());
    }
    let group = read_in_root(rootfs, "etc/group").map_err(|source| SpecError::ReadUserDb { path: "/etc/group", source })?;
    additional_groups_from(groups, group.as_deref())
}

/// moby's `parseNumeric`: `(Some(id), _)` for a number in range, an error
/// for a number out of range, `None` for a name.
fn parse_numeric(val: &str) -> Result<Option<u32>, SpecError> {
    if val.is_empty() {
        return Ok(None);
    }
    match val.parse::<i64>() {
        Ok(id) if (0..=MAX_ID).contains(&id) => Ok(Some(id as u32)),
        Ok(_) => Err(SpecError::User(RANGE_ERR.into())),
        Err(e) => match e.kind() {
            std::num::IntErrorKind::PosOverflow | std::num::IntErrorKind::NegOverflow => Err(SpecError::User(RANGE_ERR.into())),
            _ => Ok(None),
        },
    }
}

/// An ID read from a database entry that matched: must be in range.
fn checked_id(id: Option<i64>) -> Result<u32, SpecError> {
    match id {
        Some(id) if (0..=MAX_ID).contains(&id) => Ok(id as u32),
        _ => Err(SpecError::User(RANGE_ERR.into())),
    }
}

fn parse_field_id(s: Option<&str>) -> Option<i64> {
    s.and_then(|s| s.parse().ok())
}

fn parse_passwd(data: &str) -> Vec<PasswdEntry> {
    data.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            let mut f = l.split(':');
            let name = f.next().unwrap_or_default().to_owned();
            let _pass = f.next();
            PasswdEntry { name, uid: parse_field_id(f.next()), gid: parse_field_id(f.next()) }
        })
        .collect()
}

fn parse_group(data: &str) -> Vec<GroupEntry> {
    data.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            let mut f = l.split(':');
            let name = f.next().unwrap_or_default().to_owned();
            let _pass = f.next();
            let gid = parse_field_id(f.next());
            let members = f.next().filter(|m| !m.is_empty()).map(|m| m.split(',').map(str::to_owned).collect()).unwrap_or_default();
            GroupEntry { name, gid, members }
        })
        .collect()
}

pub(crate) fn resolve_user_from(spec: &str, passwd: Option<&str>, group: Option<&str>) -> Result<ExecUser, SpecError> {
    let mut parts = spec.split(':');
    let user_arg = parts.next().unwrap_or_default();
    let group_arg = parts.next().unwrap_or_default();
    let uid_arg = parse_numeric(user_arg)?;
    let gid_arg = parse_numeric(group_arg)?;

    let users = passwd.map(parse_passwd).unwrap_or_default();
    let matched = users.iter().find(|u| match (user_arg.is_empty(), uid_arg) {
        (true, _) => u.uid == Some(0),
        (false, Some(uid)) => u.uid == Some(uid.into()),
        (false, None) => u.name == user_arg,
    });

    let (mut uid, mut gid) = (0u32, 0u32);
    let mut matched_name = None;
    if let Some(u) = matched {
        uid = checked_id(u.uid)?;
        gid = checked_id(u.gid)?;
        matched_name = Some(u.name.as_str());
    } else if !user_arg.is_empty() {
        match uid_arg {
            Some(id) => uid = id,
            None => return Err(SpecError::User(format!("unable to find user {user_arg}: {NO_PASSWD}"))),
        }
    }

    let mut sgids = Vec::new();
    if !group_arg.is_empty() || matched_name.is_some() {
        let groups = group.map(parse_group).unwrap_or_default();
        if !group_arg.is_empty() {
            let found = groups.iter().find(|g| match gid_arg {
                Some(id) => g.gid == Some(id.into()),
                None => g.name == group_arg,
            });
            gid = match (found, gid_arg) {
                (Some(g), _) => checked_id(g.gid)?,
                (None, Some(id)) => id,
                (None, None) => return Err(SpecError::User(format!("unable to find group {group_arg}: {NO_GROUP}"))),
            };
        } else if let Some(name) = matched_name {
            for g in groups.iter().filter(|g| g.members.iter().any(|m| m == name)) {
                sgids.push(checked_id(g.gid)?);
            }
        }
    }

    let mut additional_gids = vec![gid];
    additional_gids.extend(sgids);
    Ok(ExecUser { uid, gid, additional_gids })
}

pub(crate) fn additional_groups_from(requested: &[String], group: Option<&str>) -> Result<Vec<u32>, SpecError> {
    let groups = group.map(parse_group).unwrap_or_default();
    let mut out: Vec<u32> = Vec::new();
    for ag in requested {
        let numeric = parse_numeric(ag)?;
        let found = groups.iter().find(|g| match numeric {
            Some(id) => g.gid == Some(id.into()),
            None => g.name == *ag,
        });
        let gid = match (found, numeric) {
            (Some(g), _) => checked_id(g.gid)?,
            (None, Some(id)) => id,
            (None, None) => return Err(SpecError::User(format!("unable to find group {ag}: {NO_GROUP}"))),
        };
        if !out.contains(&gid) {
            out.push(gid);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fs::{FileType, Mode};
    use std::os::unix::fs::symlink;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                          daemon:x:1:1::/:/sbin/nologin\n\
                          alice:x:1000:1000:Alice:/home/alice:/bin/sh\n\
                          nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n\
                          huge:x:4294967296:0::/:/bin/sh\n";
    const GROUP: &str = "root:x:0:\n\
                         wheel:x:10:alice,bob\n\
                         audio:x:29:alice\n\
                         alice:x:1000:\n\
                         nogroup:x:65534:\n";

    fn rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/passwd"), PASSWD).unwrap();
        std::fs::write(dir.path().join("etc/group"), GROUP).unwrap();
        dir
    }

    fn user(uid: u32, gid: u32, extra: &[u32]) -> ExecUser {
        ExecUser { uid, gid, additional_gids: extra.to_vec() }
    }

    #[test]
    fn empty_user_is_root() {
        assert_eq!(resolve_exec_user(rootfs().path(), "").unwrap(), user(0, 0, &[0]));
    }

    #[test]
    fn name_resolves_with_supplementary_groups() {
        assert_eq!(resolve_exec_user(rootfs().path(), "alice").unwrap(), user(1000, 1000, &[1000, 10, 29]));
    }

    #[test]
    fn nobody_resolves() {
        assert_eq!(resolve_exec_user(rootfs().path(), "nobody").unwrap(), user(65534, 65534, &[65534]));
    }

    #[test]
    fn numeric_pair_needs_no_entries() {
        assert_eq!(resolve_exec_user(rootfs().path(), "1000:1000").unwrap(), user(1000, 1000, &[1000]));
        assert_eq!(resolve_exec_user(rootfs().path(), "4242:4343").unwrap(), user(4242, 4343, &[4343]));
        assert_eq!(resolve_user(rootfs().path(), "1000:1000").unwrap(), (1000, 1000, vec![1000]));
    }

    #[test]
    fn name_with_group_name_takes_no_supplementary_groups() {
        assert_eq!(resolve_exec_user(rootfs().path(), "alice:wheel").unwrap(), user(1000, 10, &[10]));
    }

    #[test]
    fn unknown_user_is_reported_like_dockerd() {
        let err = resolve_exec_user(rootfs().path(), "x").unwrap_err();
        assert_eq!(err.to_string(), "unable to find user x: no matching entries in passwd file");
        let err = resolve_exec_user(rootfs().path(), "alice:nosuch").unwrap_err();
        assert_eq!(err.to_string(), "unable to find group nosuch: no matching entries in group file");
    }

    #[test]
    fn missing_passwd_allows_numbers_only() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(resolve_exec_user(dir.path(), "123").unwrap(), user(123, 0, &[0]));
        assert!(resolve_exec_user(dir.path(), "alice").is_err());
    }

    #[test]
    fn uids_beyond_int32_never_become_root() {
        let root = rootfs();
        for spec in ["4294967296", "2147483648", "-1", "0:4294967296", "99999999999999999999999"] {
            let err = resolve_exec_user(root.path(), spec).unwrap_err();
            assert_eq!(err.to_string(), "uids and gids must be in range 0-2147483647", "{spec}");
        }
        // A passwd entry with an out-of-range uid is refused, not truncated.
        assert!(resolve_exec_user(root.path(), "huge").is_err());
        assert_eq!(resolve_exec_user(root.path(), "2147483647").unwrap().uid, 2147483647);
    }

    #[test]
    fn group_add_by_name_and_number() {
        let root = rootfs();
        let gids = resolve_additional_groups(root.path(), &["audio".into(), "4000".into(), "29".into()]).unwrap();
        assert_eq!(gids, vec![29, 4000]);
        let err = resolve_additional_groups(root.path(), &["video".into()]).unwrap_err();
        assert_eq!(err.to_string(), "unable to find group video: no matching entries in group file");
    }

    /// A rootfs whose /etc/passwd points at a file outside it, absolutely
    /// and relatively: the outside file must never be read.
    #[test]
    fn passwd_symlink_out_of_rootfs_is_not_followed_to_the_host() {
        let outside = tempfile::tempdir().unwrap();
        let secret = outside.path().join("shadow");
        std::fs::write(&secret, "evil:x:0:0::/:/bin/sh\n").unwrap();
        for target in [secret.to_str().unwrap().to_owned(), format!("../../../../../../..{}", secret.display())] {
            let root = tempfile::tempdir().unwrap();
            std::fs::create_dir(root.path().join("etc")).unwrap();
            symlink(&target, root.path().join("etc/passwd")).unwrap();
            let err = resolve_user(root.path(), "evil").unwrap_err();
            assert_eq!(err.to_string(), "unable to find user evil: no matching entries in passwd file", "{target}");
        }
    }

    #[test]
    fn passwd_symlink_inside_the_rootfs_is_followed() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("usr/share/base")).unwrap();
        std::fs::write(root.path().join("usr/share/base/passwd"), PASSWD).unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        symlink("/usr/share/base/passwd", root.path().join("etc/passwd")).unwrap();
        assert_eq!(resolve_exec_user(root.path(), "alice").unwrap().uid, 1000);
    }

    #[test]
    fn passwd_that_is_a_fifo_is_refused_without_hanging() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        rustix::fs::mknodat(rustix::fs::CWD, root.path().join("etc/passwd"), FileType::Fifo, Mode::from_raw_mode(0o644), 0).unwrap();
        assert!(matches!(resolve_exec_user(root.path(), "alice"), Err(SpecError::ReadUserDb { .. })));
    }
}

//! Volumes, bind mounts and tmpfs mounts through the real docker CLI,
//! compared with dockerd's error texts.

mod common;

use common::{require, Berthd, Need};

fn ready() -> Berthd {
    let d = Berthd::start();
    d.docker_ok(&["pull", "-q", "busybox"]);
    d
}

#[test]
fn named_volume_keeps_data_and_is_listed_inspected_and_removed() {
    require!(Need::Root, Need::Registry);
    let d = ready();
    d.docker_ok(&["volume", "create", "--label", "tier=db", "data"]);
    d.docker_ok(&["run", "--rm", "-v", "data:/data", "busybox", "sh", "-c", "echo kept > /data/f"]);
    let out = d.docker_ok(&["run", "--rm", "-v", "data:/data", "busybox", "cat", "/data/f"]);
    assert_eq!(out, "kept\n");
    assert_eq!(d.docker_ok(&["volume", "ls", "-q", "--filter", "label=tier=db"]).trim(), "data");
    let mp = d.docker_ok(&["volume", "inspect", "-f", "{{.Mountpoint}} {{.Scope}} {{.Driver}}", "data"]);
    assert!(mp.trim().ends_with("/volumes/data/_data local local"), "{mp}");
    d.docker_ok(&["create", "--name", "user", "-v", "data:/data", "busybox"]);
    let err = d.docker_err(&["volume", "rm", "data"]);
    assert!(err.contains("volume is in use - ["), "{err}");
    d.docker_ok(&["rm", "user"]);
    d.docker_ok(&["volume", "rm", "data"]);
    assert!(d.docker_ok(&["volume", "ls", "-q"]).trim().is_empty());
}

#[test]
fn prune_removes_anonymous_volumes_unless_all() {
    require!(Need::Root, Need::Registry);
    let d = ready();
    d.docker_ok(&["volume", "create", "named"]);
    d.docker_ok(&["create", "--name", "anonuser", "-v", "/anon", "busybox"]);
    let anon = d.docker_ok(&["inspect", "-f", "{{range .Mounts}}{{.Name}}{{end}}", "anonuser"]).trim().to_owned();
    assert_eq!(anon.len(), 64);
    d.docker_ok(&["rm", "anonuser"]);
    d.docker_ok(&["volume", "prune", "-f"]);
    assert_eq!(d.docker_ok(&["volume", "ls", "-q"]).trim(), "named");
    d.docker_ok(&["volume", "prune", "-a", "-f"]);
    assert!(d.docker_ok(&["volume", "ls", "-q"]).trim().is_empty());
    let df = d.docker_ok(&["system", "df", "--format", "{{.Type}} {{.TotalCount}}"]);
    assert!(df.contains("Local Volumes 0"), "{df}");
}

#[test]
fn bind_mounts_write_through_and_ro_refuses_writes() {
    require!(Need::Root, Need::Registry);
    let d = ready();
    let host = tempfile::tempdir().unwrap();
    let spec = format!("{}:/h", host.path().display());
    d.docker_ok(&["run", "--rm", "-v", &spec, "busybox", "sh", "-c", "echo hi > /h/out"]);
    assert_eq!(std::fs::read_to_string(host.path().join("out")).unwrap(), "hi\n");
    let ro = format!("{spec}:ro");
    let out = d.docker(&["run", "--rm", "-v", &ro, "busybox", "sh", "-c", "echo no > /h/out2"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Read-only file system"), "{out:?}");
    let out = d.docker_ok(&["run", "--rm", "--mount", "type=tmpfs,target=/t", "busybox", "sh", "-c", "grep ' /t ' /proc/mounts"]);
    assert!(out.contains("tmpfs"), "{out}");
}

#[test]
fn image_volume_is_anonymous_and_removed_with_rm_v() {
    require!(Need::Root, Need::Registry);
    let d = ready();
    d.docker_ok(&["run", "--name", "mk", "busybox", "true"]);
    d.docker_ok(&["commit", "-c", "VOLUME /vol", "mk", "volimg"]);
    d.docker_ok(&["create", "--name", "withvol", "volimg"]);
    let name = d.docker_ok(&["inspect", "-f", "{{range .Mounts}}{{.Type}} {{.Name}} {{.Destination}}{{end}}", "withvol"]);
    let parts: Vec<&str> = name.split_whitespace().collect();
    assert_eq!((parts[0], parts[1].len(), parts[2]), ("volume", 64, "/vol"), "{name}");
    d.docker_ok(&["rm", "-v", "withvol"]);
    assert!(!d.docker_ok(&["volume", "ls", "-q"]).contains(parts[1]));
}

#[test]
fn new_volume_is_filled_from_the_image_and_shared_with_volumes_from() {
    require!(Need::Root, Need::Registry);
    let d = ready();
    let out = d.docker_ok(&["run", "--name", "first", "-v", "etcvol:/etc", "busybox", "sh", "-c", "test -f /etc/passwd && echo shared > /etc/mark && echo ok"]);
    assert_eq!(out, "ok\n");
    let mp = d.docker_ok(&["volume", "inspect", "-f", "{{.Mountpoint}}", "etcvol"]);
    assert!(std::path::Path::new(mp.trim()).join("passwd").exists());
    let out = d.docker_ok(&["run", "--rm", "--volumes-from", "first", "busybox", "cat", "/etc/mark"]);
    assert_eq!(out, "shared\n");
}

#[test]
fn hostile_names_and_destinations_are_refused_like_dockerd() {
    require!(Need::Root, Need::Registry);
    let d = ready();
    let cases: Vec<Vec<&str>> = vec![
        vec!["volume", "create", "a/b"],
        vec!["volume", "create", "../x"],
        vec!["run", "--rm", "--network", "none", "-v", "/tmp:/", "busybox", "true"],
        vec!["run", "--rm", "--network", "none", "-v", "/tmp:rel", "busybox", "true"],
        vec!["run", "--rm", "--network", "none", "--mount", "type=bind,source=/nonexistent-berth,target=/x", "busybox", "true"],
        vec!["run", "--rm", "--network", "none", "-v", "/tmp:/x", "-v", "/var:/x", "busybox", "true"],
    ];
    let wants = [
        "includes invalid characters for a local volume name, only \"[a-zA-Z0-9][a-zA-Z0-9_.-]\" are allowed. If you intended to pass a host directory, use absolute path",
        "\"../x\" includes invalid characters for a local volume name",
        "invalid specification: destination can't be '/'",
        "invalid mount path: 'rel' mount path must be absolute",
        "invalid mount config for type \"bind\": bind source path does not exist: /nonexistent-berth",
        "Duplicate mount point: /x",
    ];
    let reference = common::reference();
    if let Some(r) = &reference {
        r.docker_ok(&["pull", "-q", "busybox"]);
    }
    for (args, want) in cases.iter().zip(wants) {
        let err = d.docker_err(args);
        assert!(err.contains(want), "{args:?}: {err}");
        if let Some(r) = &reference {
            let theirs = r.docker_err(args);
            assert!(theirs.contains(want), "dockerd {args:?}: {theirs}");
        }
    }
}

#[test]
fn mount_through_a_symlink_out_of_the_root_stays_inside() {
    require!(Need::Root, Need::Registry);
    let d = ready();
    d.docker_ok(&["run", "--name", "mk", "busybox", "ln", "-s", "/etc", "/outlink"]);
    d.docker_ok(&["commit", "mk", "linkimg"]);
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("marker"), "m").unwrap();
    let name = format!("berth-escape-{}", std::process::id());
    let spec = format!("{}:/outlink/{name}", host.path().display());
    let out = d.docker(&["run", "--rm", "-v", &spec, "linkimg", "cat", &format!("/etc/{name}/marker")]);
    assert!(!std::path::Path::new("/etc").join(&name).exists(), "mount escaped to the host's /etc");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "m");
}

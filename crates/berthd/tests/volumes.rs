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

/// Whether something is mounted at `path`, from this process's mountinfo.
fn mounted(path: &str) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo").unwrap().lines().any(|l| l.split(' ').nth(4) == Some(path))
}

#[test]
fn tmpfs_volume_has_its_size_and_loses_data_when_the_last_user_stops() {
    require!(Need::Root, Need::Registry);
    let d = ready();
    d.docker_ok(&["volume", "create", "--opt", "type=tmpfs", "--opt", "device=tmpfs", "--opt", "o=size=64m,uid=1000", "tv"]);
    let opts = d.docker_ok(&["volume", "inspect", "-f", "{{json .Options}}", "tv"]);
    assert_eq!(opts.trim(), r#"{"device":"tmpfs","o":"size=64m,uid=1000","type":"tmpfs"}"#);
    let mp = d.docker_ok(&["volume", "inspect", "-f", "{{.Mountpoint}}", "tv"]).trim().to_owned();
    let out = d.docker_ok(&["run", "--rm", "-v", "tv:/t", "busybox", "sh", "-c", "df -k /t | tail -1; stat -c %u /t; echo gone > /t/f; cat /t/f"]);
    let fields: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
    assert_eq!((fields[0], fields[1]), ("tmpfs", "65536"), "{out}");
    assert_eq!(out.lines().skip(1).collect::<Vec<_>>(), ["1000", "gone"], "{out}");
    assert!(!mounted(&mp), "the volume stays mounted after its last user exited");
    let out = d.docker_ok(&["run", "--rm", "-v", "tv:/t", "busybox", "ls", "-A", "/t"]);
    assert_eq!(out, "", "tmpfs content survived an unmount");
}

#[test]
fn tmpfs_volume_is_shared_while_used_and_unmounted_by_volume_rm() {
    require!(Need::Root, Need::Registry);
    let d = ready();
    d.docker_ok(&["volume", "create", "--opt", "type=tmpfs", "--opt", "device=tmpfs", "shared"]);
    let mp = d.docker_ok(&["volume", "inspect", "-f", "{{.Mountpoint}}", "shared"]).trim().to_owned();
    d.docker_ok(&["run", "-d", "--name", "holder", "-v", "shared:/t", "busybox", "sh", "-c", "echo held > /t/f; exec sleep 600"]);
    let out = d.docker_ok(&["run", "--rm", "-v", "shared:/t", "busybox", "sh", "-c", "for i in 1 2 3 4 5 6 7 8 9 10; do test -f /t/f && break; sleep 0.2; done; cat /t/f"]);
    assert_eq!(out, "held\n");
    assert!(mounted(&mp), "a second user's exit unmounted a volume still in use");
    d.docker_ok(&["rm", "-f", "holder"]);
    assert!(!mounted(&mp));
    d.docker_ok(&["volume", "rm", "shared"]);
    assert!(!std::path::Path::new(&mp).exists());
}

#[test]
fn bind_volume_writes_through_to_the_host_directory_and_rm_keeps_it() {
    require!(Need::Root, Need::Registry);
    let d = ready();
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("from-host"), "h").unwrap();
    let device = format!("device={}", host.path().display());
    d.docker_ok(&["volume", "create", "--opt", "type=none", "--opt", "o=bind", "--opt", &device, "bv"]);
    let out = d.docker_ok(&["run", "--rm", "-v", "bv:/b", "busybox", "sh", "-c", "cat /b/from-host; echo c > /b/from-container"]);
    assert_eq!(out, "h");
    assert_eq!(std::fs::read_to_string(host.path().join("from-container")).unwrap(), "c\n");
    d.docker_ok(&["volume", "rm", "bv"]);
    assert!(host.path().join("from-host").exists(), "volume rm deleted the bound host directory's content");
    assert!(host.path().join("from-container").exists());
}

#[test]
fn read_only_bind_volume_refuses_writes() {
    require!(Need::Root, Need::Registry);
    let d = ready();
    let host = tempfile::tempdir().unwrap();
    let device = format!("device={}", host.path().display());
    d.docker_ok(&["volume", "create", "--opt", "type=none", "--opt", "o=bind,ro", "--opt", &device, "robv"]);
    let out = d.docker(&["run", "--rm", "-v", "robv:/b", "busybox", "touch", "/b/x"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Read-only file system"), "{out:?}");
    assert!(!host.path().join("x").exists());
}

#[test]
fn bad_volume_options_are_refused_like_dockerd() {
    require!(Need::Root, Need::Registry);
    let d = ready();
    let reference = common::reference();
    if let Some(r) = &reference {
        r.docker_ok(&["pull", "-q", "busybox"]);
    }
    let create_cases: [(&[&str], &str); 3] = [
        (&["volume", "create", "--opt", "foo=bar", "badopt"], r#"create badopt: invalid option: "foo""#),
        (&["volume", "create", "--opt", "type=tmpfs", "badopt"], r#"create badopt: missing required option: "device""#),
        (&["volume", "create", "--opt", "size=10m", "badopt"], "create badopt: quota size requested but no quota support"),
    ];
    for (args, want) in create_cases {
        let err = d.docker_err(args);
        assert!(err.contains(want), "{args:?}: {err}");
        if let Some(r) = &reference {
            let theirs = r.docker_err(args);
            assert!(theirs.contains(want), "dockerd {args:?}: {theirs}");
        }
    }
    // Bad type, missing bind source, bad tmpfs option: refused at start.
    let start_cases: [(&str, &[&str], &str); 3] = [
        ("badtype", &["--opt", "type=bogusfs", "--opt", "device=nodev"], "failed to mount local volume: mount nodev:{mp}: no such device"),
        ("badsrc", &["--opt", "type=none", "--opt", "o=bind", "--opt", "device=/nonexistent-berth"], "failed to mount local volume: mount /nonexistent-berth:{mp}, flags: 0x1000: no such file or directory"),
        ("baddata", &["--opt", "type=tmpfs", "--opt", "device=tmpfs", "--opt", "o=size=1m,bogus=1"], "failed to mount local volume: mount tmpfs:{mp}, data: size=1m,bogus=1: invalid argument"),
    ];
    for (name, opts, want) in start_cases {
        let check = |c: &common::Client| {
            let mut create = vec!["volume", "create"];
            create.extend_from_slice(opts);
            create.push(name);
            c.docker_ok(&create);
            let mp = c.docker_ok(&["volume", "inspect", "-f", "{{.Mountpoint}}", name]).trim().to_owned();
            let spec = format!("{name}:/v");
            let err = c.docker_err(&["run", "--rm", "--network", "none", "-v", &spec, "busybox", "true"]);
            let want = format!("error while mounting volume '{mp}': {}", want.replace("{mp}", &mp));
            c.docker_ok(&["volume", "rm", name]);
            (err, want)
        };
        let (err, want) = check(&d);
        assert!(err.contains(&want), "{name}: {err}\nwant: {want}");
        if let Some(r) = &reference {
            let (theirs, want) = check(r);
            assert!(theirs.contains(&want), "dockerd {name}: {theirs}\nwant: {want}");
        }
    }
}

#[test]
fn label_not_filter_keeps_the_labelled_volumes_in_prune_and_ls() {
    require!(Need::Root, Need::Registry);
    let d = ready();
    d.docker_ok(&["volume", "create", "--label", "keep=yes", "lk1"]);
    d.docker_ok(&["volume", "create", "--label", "keep=no", "lk2"]);
    d.docker_ok(&["volume", "create", "lk3"]);
    let ls = |f: &str| d.docker_ok(&["volume", "ls", "-q", "--filter", f]).split_whitespace().map(String::from).collect::<Vec<_>>();
    assert_eq!(ls("label!=keep"), ["lk3"]);
    assert_eq!(ls("label!=keep=yes"), ["lk2", "lk3"]);
    d.docker_ok(&["volume", "prune", "-a", "-f", "--filter", "label!=keep=yes"]);
    assert_eq!(ls("dangling=true"), ["lk1"]);
    d.docker_ok(&["volume", "prune", "-a", "-f", "--filter", "label!=keep"]);
    assert_eq!(ls("dangling=true"), ["lk1"]);
    d.docker_ok(&["volume", "prune", "-a", "-f", "--filter", "label=keep"]);
    assert!(ls("dangling=true").is_empty());
}

#[test]
fn engine_restart_keeps_mounts_of_running_containers_and_drops_stale_ones() {
    require!(Need::Root, Need::Registry);
    let mut d = ready();
    for v in ["live", "stale"] {
        d.docker_ok(&["volume", "create", "--opt", "type=tmpfs", "--opt", "device=tmpfs", v]);
    }
    let mp = |v: &str| d.docker_ok(&["volume", "inspect", "-f", "{{.Mountpoint}}", v]).trim().to_owned();
    let (live, stale) = (mp("live"), mp("stale"));
    d.docker_ok(&["run", "-d", "--name", "holder", "-v", "live:/t", "busybox", "sh", "-c", "echo kept > /t/f; exec sleep 600"]);
    // What a crash can leave: a volume mounted with no container using it.
    let status = std::process::Command::new("mount").args(["-t", "tmpfs", "tmpfs", &stale]).status().unwrap();
    assert!(status.success());
    d.restart();
    assert!(mounted(&live), "the running container's volume was unmounted");
    assert!(!mounted(&stale), "a stale volume mount was left at start-up");
    let out = d.docker_ok(&["run", "--rm", "-v", "live:/t", "busybox", "cat", "/t/f"]);
    assert_eq!(out, "kept\n");
    d.docker_ok(&["rm", "-f", "holder"]);
    assert!(!mounted(&live), "the re-adopted mount outlived its last user");
}

#[test]
fn mount_flag_volume_opts_create_a_volume_with_options() {
    require!(Need::Root, Need::Registry);
    let d = ready();
    let spec = "type=volume,src=mv,dst=/m,volume-opt=type=tmpfs,volume-opt=device=tmpfs,volume-opt=o=size=8m";
    let out = d.docker_ok(&["run", "--rm", "--mount", spec, "busybox", "sh", "-c", "df -k /m | tail -1"]);
    assert_eq!(out.split_whitespace().nth(1), Some("8192"), "{out}");
    let opts = d.docker_ok(&["volume", "inspect", "-f", "{{json .Options}}", "mv"]);
    assert_eq!(opts.trim(), r#"{"device":"tmpfs","o":"size=8m","type":"tmpfs"}"#);
}

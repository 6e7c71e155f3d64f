//! Tests of the whole spec: what `build` writes for typical requests, and
//! (as root, with crun) that crun runs it with dockerd's security settings.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::*;

struct Fixture {
    rootfs: tempfile::TempDir,
    image: Value,
    config: Value,
    host_config: Value,
    extra: Vec<Value>,
    ns: NamespacePaths,
    init: Option<PathBuf>,
    cgroup_v2: bool,
}

impl Fixture {
    fn new() -> Self {
        let rootfs = tempfile::tempdir().unwrap();
        std::fs::create_dir(rootfs.path().join("etc")).unwrap();
        std::fs::write(rootfs.path().join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n").unwrap();
        std::fs::write(rootfs.path().join("etc/group"), "root:x:0:\nstaff:x:50:\nnogroup:x:65534:\n").unwrap();
        Fixture {
            rootfs,
            image: json!({"Cmd": ["sh"], "Env": ["PATH=/usr/bin:/bin"]}),
            config: json!({}),
            host_config: json!({}),
            extra: Vec::new(),
            ns: NamespacePaths::default(),
            init: None,
            cgroup_v2: true,
        }
    }

    fn build(&self) -> Result<Value, SpecError> {
        build_with(
            &SpecInput {
                id: "0123456789abcdef",
                rootfs: self.rootfs.path(),
                image_config: &self.image,
                config: &self.config,
                host_config: &self.host_config,
                hostname: "0123456789ab",
                cgroup_parent: "/berth",
                cgroup_v2: self.cgroup_v2,
                extra_mounts: self.extra.clone(),
                namespace_paths: self.ns.clone(),
                init_path: self.init.as_deref(),
            },
            &HostInfo::fixture(),
        )
    }
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array().unwrap().iter().map(|x| x.as_str().unwrap()).collect()
}

fn ns_types(spec: &Value) -> Vec<&str> {
    spec["linux"]["namespaces"].as_array().unwrap().iter().map(|n| n["type"].as_str().unwrap()).collect()
}

#[test]
fn default_container_has_dockerds_fourteen_caps_and_nothing_inheritable() {
    let spec = Fixture::new().build().unwrap();
    let caps = &spec["process"]["capabilities"];
    assert_eq!(strings(&caps["bounding"]), DEFAULT_CAPS);
    assert_eq!(caps["effective"], caps["bounding"]);
    assert_eq!(caps["permitted"], caps["bounding"]);
    assert!(caps.get("inheritable").is_none() && caps.get("ambient").is_none());
    assert!(spec["process"].get("noNewPrivileges").is_none());
}

#[test]
fn default_container_has_seccomp_masked_paths_and_device_rules() {
    let spec = Fixture::new().build().unwrap();
    let linux = &spec["linux"];
    assert_eq!(linux["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
    assert!(strings(&linux["maskedPaths"]).contains(&"/proc/kcore"));
    assert_eq!(strings(&linux["readonlyPaths"]), ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]);
    assert_eq!(linux["resources"]["devices"][0], json!({"allow": false, "access": "rwm"}));
    assert_eq!(linux["cgroupsPath"], "/berth/0123456789abcdef");
    assert_eq!(ns_types(&spec), ["mount", "network", "uts", "pid", "ipc", "cgroup"]);
    assert_eq!(linux["sysctl"]["net.ipv4.ip_unprivileged_port_start"], "0");
    assert_eq!(spec["hostname"], "0123456789ab");
    assert_eq!(spec["root"]["readonly"], false);
}

#[test]
fn process_defaults() {
    let spec = Fixture::new().build().unwrap();
    let p = &spec["process"];
    assert_eq!(p["args"], json!(["sh"]));
    assert_eq!(p["cwd"], "/");
    assert_eq!(p["terminal"], false);
    assert_eq!(p["user"], json!({"uid": 0, "gid": 0, "additionalGids": [0]}));
    assert_eq!(p["env"], json!(["PATH=/usr/bin:/bin", "HOSTNAME=0123456789ab"]));
    assert_eq!(p["oomScoreAdj"], 0);
    assert!(p.get("rlimits").is_none());
}

#[test]
fn working_dir_is_created_in_the_rootfs() {
    let mut f = Fixture::new();
    f.config = json!({"WorkingDir": "/srv/app"});
    let spec = f.build().unwrap();
    assert_eq!(spec["process"]["cwd"], "/srv/app");
    assert!(f.rootfs.path().join("srv/app").is_dir());
}

#[test]
fn cap_drop_all_and_add_net_admin() {
    let mut f = Fixture::new();
    f.host_config = json!({"CapDrop": ["ALL"], "CapAdd": ["NET_ADMIN"]});
    let spec = f.build().unwrap();
    assert_eq!(spec["process"]["capabilities"]["bounding"], json!(["CAP_NET_ADMIN"]));
    // Without CAP_SYS_CHROOT the chroot rule of the profile goes too.
    let names: Vec<&Value> =
        spec["linux"]["seccomp"]["syscalls"].as_array().unwrap().iter().flat_map(|r| r["names"].as_array().unwrap()).collect();
    assert!(!names.iter().any(|n| *n == "chroot"));
}

#[test]
fn unknown_capability_fails_the_build() {
    let mut f = Fixture::new();
    f.host_config = json!({"CapAdd": ["CAP_FOO"]});
    assert_eq!(f.build().unwrap_err().to_string(), "unknown capability: \"CAP_FOO\"");
}

#[test]
fn privileged_has_all_caps_no_seccomp_no_masks_and_all_devices() {
    let mut f = Fixture::new();
    f.host_config = json!({"Privileged": true});
    let spec = f.build().unwrap();
    assert_eq!(spec["process"]["capabilities"]["bounding"].as_array().unwrap().len(), 41);
    let linux = &spec["linux"];
    assert!(linux.get("seccomp").is_none());
    assert!(linux.get("maskedPaths").is_none() && linux.get("readonlyPaths").is_none());
    assert_eq!(linux["resources"]["devices"], json!([{"allow": true, "access": "rwm"}]));
    let sys = spec["mounts"].as_array().unwrap().iter().find(|m| m["destination"] == "/sys").unwrap();
    assert!(!strings(&sys["options"]).contains(&"ro"));
}

#[test]
fn privileged_with_explicit_profile_keeps_it() {
    let mut f = Fixture::new();
    f.host_config = json!({"Privileged": true, "SecurityOpt": ["seccomp=builtin"]});
    assert!(f.build().unwrap()["linux"].get("seccomp").is_some());
}

#[test]
fn seccomp_unconfined_and_custom() {
    let mut f = Fixture::new();
    f.host_config = json!({"SecurityOpt": ["seccomp=unconfined", "no-new-privileges:true"]});
    let spec = f.build().unwrap();
    assert!(spec["linux"].get("seccomp").is_none());
    assert_eq!(spec["process"]["noNewPrivileges"], true);
    f.host_config = json!({"SecurityOpt": [r#"seccomp={"defaultAction":"SCMP_ACT_LOG"}"#]});
    assert_eq!(f.build().unwrap()["linux"]["seccomp"], json!({"defaultAction": "SCMP_ACT_LOG"}));
}

#[test]
fn user_and_group_add_resolve_in_the_rootfs() {
    let mut f = Fixture::new();
    f.config = json!({"User": "nobody"});
    f.host_config = json!({"GroupAdd": ["staff", "777"]});
    let spec = f.build().unwrap();
    assert_eq!(spec["process"]["user"], json!({"uid": 65534, "gid": 65534, "additionalGids": [65534, 50, 777]}));
    f.config = json!({"User": "2147483648"});
    assert!(f.build().is_err());
}

#[test]
fn resources_from_host_config() {
    let mut f = Fixture::new();
    f.host_config = json!({
        "Memory": 64 << 20, "NanoCpus": 500_000_000, "PidsLimit": 0, "CpuShares": 256,
        "Ulimits": [{"Name": "nofile", "Soft": 1024, "Hard": 2048}, {"Name": "core", "Soft": -1, "Hard": -1}],
        "OomScoreAdj": 500,
    });
    let spec = f.build().unwrap();
    let r = &spec["linux"]["resources"];
    assert_eq!(r["memory"], json!({"limit": 64 << 20, "swap": 128 << 20}));
    assert_eq!(r["cpu"], json!({"shares": 256, "period": 100000, "quota": 50000}));
    assert_eq!(r["pids"], serde_json::Value::Null, "PidsLimit 0 means no limit at all");
    assert_eq!(
        spec["process"]["rlimits"],
        json!([{"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 2048}, {"type": "RLIMIT_CORE", "soft": u64::MAX, "hard": u64::MAX}])
    );
    assert_eq!(spec["process"]["oomScoreAdj"], 500);
}

#[test]
fn host_and_container_namespace_modes() {
    let mut f = Fixture::new();
    f.cgroup_v2 = false;
    f.host_config = json!({"NetworkMode": "host", "PidMode": "host", "IpcMode": "container:abc", "UTSMode": "host"});
    f.ns.ipc = Some("/proc/42/ns/ipc".into());
    let spec = f.build().unwrap();
    assert_eq!(spec["linux"]["namespaces"], json!([{"type": "mount"}, {"type": "ipc", "path": "/proc/42/ns/ipc"}]));
    assert!(spec.get("hostname").is_none());
    assert!(spec["linux"].get("sysctl").is_none(), "no network sysctls in the host's network namespace");
    f.ns.ipc = None;
    assert!(matches!(f.build(), Err(SpecError::NamespacePath { ns: "ipc", .. })));
}

#[test]
fn ipc_none_drops_dev_shm_and_shm_size_is_applied() {
    let mut f = Fixture::new();
    f.host_config = json!({"IpcMode": "none"});
    let dests =
        |s: &Value| s["mounts"].as_array().unwrap().iter().map(|m| m["destination"].as_str().unwrap().to_owned()).collect::<Vec<_>>();
    assert!(!dests(&f.build().unwrap()).contains(&"/dev/shm".to_owned()));
    f.host_config = json!({"ShmSize": 1 << 20});
    let spec = f.build().unwrap();
    let shm = spec["mounts"].as_array().unwrap().iter().find(|m| m["destination"] == "/dev/shm").unwrap();
    assert!(strings(&shm["options"]).contains(&"size=1048576"));
}

#[test]
fn init_wraps_the_command_in_a_private_pid_namespace_only() {
    let mut f = Fixture::new();
    f.init = Some("/usr/bin/tini".into());
    let spec = f.build().unwrap();
    assert_eq!(spec["process"]["args"], json!(["/sbin/docker-init", "--", "sh"]));
    assert!(spec["mounts"].as_array().unwrap().iter().any(|m| m["destination"] == "/sbin/docker-init" && m["source"] == "/usr/bin/tini"));
    f.host_config = json!({"PidMode": "host"});
    assert_eq!(f.build().unwrap()["process"]["args"], json!(["sh"]));
}

#[test]
fn readonly_rootfs_tty_and_extra_mounts() {
    let mut f = Fixture::new();
    f.config = json!({"Tty": true, "Domainname": "example.org"});
    f.host_config = json!({"ReadonlyRootfs": true, "ConsoleSize": [24, 80], "Sysctls": {"net.core.somaxconn": "1024"}});
    f.extra = vec![json!({"destination": "/etc/hosts", "type": "bind", "source": "/tmp/hosts", "options": ["rbind", "rprivate"]})];
    let spec = f.build().unwrap();
    assert_eq!(spec["root"]["readonly"], true);
    assert_eq!(spec["process"]["terminal"], true);
    assert_eq!(spec["process"]["consoleSize"], json!({"height": 24, "width": 80}));
    assert!(strings(&spec["process"]["env"]).contains(&"TERM=xterm"));
    assert_eq!(spec["linux"]["sysctl"]["kernel.domainname"], "example.org");
    assert_eq!(spec["linux"]["sysctl"]["net.core.somaxconn"], "1024");
    assert_eq!(spec["mounts"].as_array().unwrap().last().unwrap()["destination"], "/etc/hosts");
}

#[test]
fn relative_extra_mount_is_refused() {
    let mut f = Fixture::new();
    f.extra = vec![json!({"destination": "etc/hosts", "type": "bind", "source": "/tmp/hosts"})];
    assert_eq!(f.build().unwrap_err().to_string(), "invalid mount path: 'etc/hosts' mount path must be absolute");
}

#[test]
fn no_command_is_an_error() {
    let mut f = Fixture::new();
    f.image = json!({});
    assert!(matches!(f.build(), Err(SpecError::NoCommand)));
}

// --- crun -----------------------------------------------------------------

fn crun() -> Option<PathBuf> {
    ["/usr/bin/crun", "/usr/local/bin/crun"].iter().map(PathBuf::from).find(|p| p.exists())
}

/// Why the crun tests cannot run here, if they cannot.
fn crun_unavailable() -> Option<&'static str> {
    if !rustix::process::geteuid().is_root() {
        return Some("needs root");
    }
    if crun().is_none() {
        return Some("needs crun (Debian package crun)");
    }
    if !Path::new("/bin/busybox").exists() {
        return Some("needs a static /bin/busybox (Debian package busybox-static)");
    }
    None
}

/// Runs a busybox rootfs under crun with the spec `build` makes from
/// `config`/`host_config`, and returns stdout. One at a time: the tests
/// share the parent cgroup, which each removes when done.
fn run_in_crun(config: Value, host_config: Value) -> String {
    static CRUN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _serial = CRUN.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    let rootfs = bundle.join("rootfs");
    for d in ["bin", "etc", "proc", "sys", "dev", "tmp"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    for applet in ["sh", "grep", "id", "cat"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n").unwrap();
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();

    let id = format!("berth-spec-test-{}-{:x}", std::process::id(), rand::random::<u64>());
    let cgroup_v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let image = json!({"Env": ["PATH=/bin"]});
    let spec = build(&SpecInput {
        id: &id,
        rootfs: &rootfs,
        image_config: &image,
        config: &config,
        host_config: &host_config,
        hostname: "berthtest",
        cgroup_parent: "/berth-spec-test",
        cgroup_v2,
        extra_mounts: Vec::new(),
        namespace_paths: NamespacePaths::default(),
        init_path: None,
    })
    .unwrap();
    std::fs::write(bundle.join("config.json"), serde_json::to_vec_pretty(&spec).unwrap()).unwrap();

    let state = dir.path().join("state");
    let crun = crun().unwrap();
    let mut cmd = Command::new(&crun);
    cmd.arg("--root").arg(&state).args(["run", "--bundle"]).arg(&bundle).arg(&id);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    hide_v2_controllers_in_hybrid_mode(&mut cmd, dir.path());
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let _ = Command::new(&crun).arg("--root").arg(&state).args(["delete", "-f", &id]).stderr(Stdio::null()).status();
    cleanup_cgroups(&id);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "crun failed ({}):\nstdout: {stdout}\nstderr: {}", out.status, String::from_utf8_lossy(&out.stderr));
    stdout
}

/// crun 1.8 refuses to run at all on a hybrid cgroup host whose v2
/// hierarchy has controllers ("cgroups in hybrid mode not supported, drop
/// all controllers from cgroupv2"), as on hosts where hugetlb is not bound
/// to v1. The test does not change the host: it runs crun in a private
/// mount namespace where /sys/fs/cgroup/unified/cgroup.controllers reads
/// empty. Containers still get their v1 cgroups under the test's parent.
fn hide_v2_controllers_in_hybrid_mode(cmd: &mut Command, scratch: &Path) {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::process::CommandExt;
    const CONTROLLERS: &str = "/sys/fs/cgroup/unified/cgroup.controllers";
    if std::fs::read_to_string(CONTROLLERS).map_or(true, |c| c.trim().is_empty()) {
        return;
    }
    eprintln!("hybrid cgroup host with v2 controllers: hiding them from crun in a private mount namespace");
    let empty = scratch.join("no-controllers");
    std::fs::write(&empty, "").unwrap();
    let empty = CString::new(empty.as_os_str().as_bytes()).unwrap();
    let target = CString::new(CONTROLLERS).unwrap();
    let root = CString::new("/").unwrap();
    // SAFETY: the closure runs in the forked child before exec and only
    // makes raw syscalls on strings prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::unshare(libc::CLONE_NEWNS) != 0
                || libc::mount(std::ptr::null(), root.as_ptr(), std::ptr::null(), libc::MS_REC | libc::MS_PRIVATE, std::ptr::null()) != 0
                || libc::mount(empty.as_ptr(), target.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null()) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Removes the test's cgroups (crun removes the container's own on
/// delete; the parent stays behind).
fn cleanup_cgroups(id: &str) {
    let root = Path::new("/sys/fs/cgroup");
    let mut dirs = vec![root.join("berth-spec-test")];
    if let Ok(entries) = std::fs::read_dir(root) {
        dirs.extend(entries.flatten().map(|e| e.path().join("berth-spec-test")));
    }
    for d in dirs {
        let _ = std::fs::remove_dir(d.join(id));
        let _ = std::fs::remove_dir(&d);
    }
}

fn status_field<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(name).map(|v| v.trim_start_matches(':').trim()))
        .unwrap_or_else(|| panic!("{name} missing in {out:?}"))
}

#[test]
fn crun_runs_the_default_spec_with_dockers_caps_and_seccomp() {
    if let Some(why) = crun_unavailable() {
        eprintln!("skipping crun_runs_the_default_spec_with_dockers_caps_and_seccomp: {why}");
        return;
    }
    let out = run_in_crun(json!({"Cmd": ["sh", "-c", "grep -E '^(CapEff|Seccomp|NoNewPrivs)' /proc/self/status"]}), json!({}));
    assert_eq!(status_field(&out, "CapEff"), "00000000a80425fb");
    assert_eq!(status_field(&out, "Seccomp"), "2");
    assert_eq!(status_field(&out, "NoNewPrivs"), "0");
}

#[test]
fn crun_accepts_user_limits_tmpfs_and_no_new_privileges() {
    if let Some(why) = crun_unavailable() {
        eprintln!("skipping crun_accepts_user_limits_tmpfs_and_no_new_privileges: {why}");
        return;
    }
    let script = "echo uid=$(id -u); grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status; grep ' /scratch ' /proc/mounts; \
                  echo nofile=$(ulimit -n); echo mem=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/memory.max 2>/dev/null); \
                  echo pids=$(cat /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/pids.max 2>/dev/null); touch /rootfs-is-writable 2>/dev/null; echo touch=$?";
    let out = run_in_crun(
        json!({"User": "nobody", "Cmd": ["sh", "-c", script]}),
        json!({
            "CapDrop": ["ALL"], "CapAdd": ["NET_ADMIN"], "SecurityOpt": ["no-new-privileges"],
            "Memory": 64 << 20, "PidsLimit": 64, "Tmpfs": {"/scratch": "size=1m"}, "ReadonlyRootfs": true,
            "Ulimits": [{"Name": "nofile", "Soft": 512, "Hard": 512}],
        }),
    );
    assert_eq!(status_field(&out, "uid="), "65534");
    assert_eq!(status_field(&out, "CapBnd"), "0000000000001000");
    // A non-root user keeps no effective capabilities.
    assert_eq!(status_field(&out, "CapEff"), "0000000000000000");
    assert_eq!(status_field(&out, "NoNewPrivs"), "1");
    assert!(out.contains(" /scratch tmpfs "), "{out}");
    assert_eq!(status_field(&out, "nofile="), "512");
    assert_eq!(status_field(&out, "mem="), "67108864");
    assert_eq!(status_field(&out, "pids="), "64");
    assert_eq!(status_field(&out, "touch="), "1", "the rootfs must be read-only");
}

#[test]
fn crun_runs_privileged_with_the_engines_caps_and_no_seccomp() {
    if let Some(why) = crun_unavailable() {
        eprintln!("skipping crun_runs_privileged_with_the_engines_caps_and_no_seccomp: {why}");
        return;
    }
    let out = run_in_crun(
        json!({"Cmd": ["sh", "-c", "grep -E '^(CapEff|Seccomp)' /proc/self/status; echo null=$(cat /dev/null && echo ok)"]}),
        json!({"Privileged": true}),
    );
    assert_eq!(status_field(&out, "CapEff"), format!("{:016x}", HostInfo::detect().effective_caps));
    assert_eq!(status_field(&out, "Seccomp"), "0");
    assert_eq!(status_field(&out, "null="), "ok");
}

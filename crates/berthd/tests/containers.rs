//! The container lifecycle through the real docker CLI, real crun and a
//! real berth-shim, compared with dockerd where a user would notice.

mod common;

use std::time::{Duration, Instant};

use common::{require, Berthd, Need};

fn ready() -> Option<Berthd> {
    let d = Berthd::start();
    d.docker_ok(&["pull", "-q", "busybox"]);
    Some(d)
}

#[test]
fn run_prints_output_and_returns_the_exit_code() {
    require!(Need::Root, Need::Registry);
    let d = ready().expect("engine");
    let out = d.docker(&["run", "--rm", "busybox", "sh", "-c", "echo out; echo err >&2; exit 3"]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    // --rm removed it.
    assert!(d.docker_ok(&["ps", "-aq"]).trim().is_empty());
}

#[test]
fn stdin_is_forwarded_with_dash_i() {
    require!(Need::Root, Need::Registry);
    let d = ready().expect("engine");
    let out = d.docker_stdin(&["run", "--rm", "-i", "busybox", "tr", "a-z", "A-Z"], b"hello\n");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "HELLO\n");
}

#[test]
fn detached_container_logs_stop_and_remove() {
    require!(Need::Root, Need::Registry);
    let d = ready().expect("engine");
    let id = d.docker_ok(&["run", "-d", "--name", "ticker", "busybox", "sh", "-c", "echo started; trap 'echo bye; exit 0' TERM; while true; do sleep 0.1; done"]);
    let id = id.trim();
    assert_eq!(id.len(), 64);
    // Logs arrive (wait on them, bounded).
    let deadline = Instant::now() + Duration::from_secs(20);
    while !d.docker_ok(&["logs", "ticker"]).contains("started") {
        assert!(Instant::now() < deadline, "no log output");
        std::thread::sleep(Duration::from_millis(50));
    }
    let ps = d.docker_ok(&["ps", "--format", "{{.Names}} {{.Status}}"]);
    assert!(ps.starts_with("ticker Up"), "{ps}");
    assert_eq!(d.docker_ok(&["inspect", "-f", "{{.State.Status}} {{.State.Running}}", "ticker"]).trim(), "running true");
    let t0 = Instant::now();
    d.docker_ok(&["stop", "ticker"]);
    assert!(t0.elapsed() < Duration::from_secs(8), "SIGTERM should have stopped it at once");
    assert_eq!(d.docker_ok(&["inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", "ticker"]).trim(), "exited 0");
    assert!(d.docker_ok(&["logs", "ticker"]).contains("bye"));
    let err = d.docker_err(&["kill", "ticker"]);
    assert!(err.contains("is not running"), "{err}");
    d.docker_ok(&["rm", "ticker"]);
    let err = d.docker_err(&["inspect", "ticker"]);
    assert!(err.contains("No such object") || err.contains("No such container"), "{err}");
}

#[test]
fn stop_escalates_to_sigkill_after_the_timeout() {
    require!(Need::Root, Need::Registry);
    let d = ready().expect("engine");
    d.docker_ok(&["run", "-d", "--name", "stubborn", "busybox", "sh", "-c", "trap '' TERM; while true; do sleep 0.1; done"]);
    let t0 = Instant::now();
    d.docker_ok(&["stop", "-t", "1", "stubborn"]);
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(10), "{took:?}");
    assert_eq!(d.docker_ok(&["inspect", "-f", "{{.State.ExitCode}}", "stubborn"]).trim(), "137");
}

#[test]
fn removing_a_running_container_needs_force() {
    require!(Need::Root, Need::Registry);
    let d = ready().expect("engine");
    d.docker_ok(&["run", "-d", "--name", "busy", "busybox", "sleep", "1000"]);
    let err = d.docker_err(&["rm", "busy"]);
    assert!(err.contains("stop the container before removing or force remove"), "{err}");
    d.docker_ok(&["rm", "-f", "busy"]);
    assert!(d.docker_ok(&["ps", "-aq"]).trim().is_empty());
    // Nothing stays mounted.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(!mounts.contains(d.data_root().to_str().expect("utf8")), "leaked mount");
}

#[test]
fn duplicate_names_conflict_like_dockerd() {
    require!(Need::Root, Need::Registry);
    let d = ready().expect("engine");
    d.docker_ok(&["create", "--name", "twin", "busybox", "true"]);
    let err = d.docker_err(&["create", "--name", "twin", "busybox", "true"]);
    assert!(err.contains("Conflict. The container name \"/twin\" is already in use by container"), "{err}");
    let err = d.docker_err(&["create", "--name", "bad name", "busybox", "true"]);
    assert!(err.contains("Invalid container name"), "{err}");
}

#[test]
fn wait_returns_the_exit_code_and_ps_filters_by_status() {
    require!(Need::Root, Need::Registry);
    let d = ready().expect("engine");
    assert_eq!(d.docker(&["run", "--name", "seven", "busybox", "sh", "-c", "exit 7"]).status.code(), Some(7));
    assert_eq!(d.docker_ok(&["wait", "seven"]).trim(), "7");
    d.docker_ok(&["create", "--name", "fresh", "--label", "role=test", "busybox", "true"]);
    let names = |f: &str| d.docker_ok(&["ps", "-a", "--filter", f, "--format", "{{.Names}}"]).trim().to_owned();
    assert_eq!(names("status=exited"), "seven");
    assert_eq!(names("status=created"), "fresh");
    assert_eq!(names("exited=7"), "seven");
    assert_eq!(names("label=role=test"), "fresh");
    assert_eq!(names("name=fre"), "fresh");
    assert_eq!(names("ancestor=busybox"), "fresh\nseven");
}

#[test]
fn removing_an_image_in_use_is_a_conflict() {
    require!(Need::Root, Need::Registry);
    let d = ready().expect("engine");
    let id = d.docker_ok(&["create", "--name", "user", "busybox", "true"]);
    let err = d.docker_err(&["rmi", "busybox"]);
    assert!(err.contains(&format!("conflict: unable to remove repository reference \"busybox\" (must force) - container {} is using its referenced image", &id[..12])), "{err}");
    let image = d.docker_ok(&["image", "inspect", "-f", "{{.Id}}", "busybox"]);
    let err = d.docker_err(&["rmi", &image.trim()[7..19]]);
    assert!(err.contains("image is being used by stopped container"), "{err}");
}

#[test]
fn containers_survive_an_engine_kill_and_are_readopted() {
    require!(Need::Root, Need::Registry);
    let mut d = ready().expect("engine");
    d.docker_ok(&["run", "-d", "--name", "survivor", "busybox", "sh", "-c", "echo before; trap 'echo after; exit 5' TERM; while true; do sleep 0.1; done"]);
    let pid = d.docker_ok(&["inspect", "-f", "{{.State.Pid}}", "survivor"]).trim().to_owned();
    d.kill9();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists(), "container died with the engine");
    d.restart();
    assert_eq!(d.docker_ok(&["inspect", "-f", "{{.State.Running}} {{.State.Pid}}", "survivor"]).trim(), format!("true {pid}"));
    d.docker_ok(&["stop", "survivor"]);
    assert_eq!(d.docker_ok(&["inspect", "-f", "{{.State.ExitCode}}", "survivor"]).trim(), "5");
    let logs = d.docker_ok(&["logs", "survivor"]);
    assert!(logs.contains("before") && logs.contains("after"), "{logs}");
}

/// Runs `args` on an engine and returns (exit code, stdout) — the
/// reference dockerd has no bridge, so both use `--network none`.
fn run_out(c: &common::Client, args: &[&str]) -> (Option<i32>, String) {
    let mut a = vec!["run", "--rm", "--network", "none"];
    a.extend_from_slice(args);
    let out = c.docker(&a);
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn security_defaults_match_dockerd() {
    require!(Need::Root, Need::Registry, Need::Reference);
    let d = ready().expect("engine");
    let r = common::reference().expect("required");
    r.docker_ok(&["pull", "-q", "busybox"]);
    let status = ["busybox", "grep", "-E", "^(CapEff|CapBnd|CapPrm|Seccomp|NoNewPrivs):", "/proc/self/status"];
    assert_eq!(run_out(&d, &status), run_out(&r, &status));
    let mut cap_add = vec!["--cap-add", "NET_ADMIN", "--cap-drop", "CHOWN", "--security-opt", "no-new-privileges"];
    cap_add.extend_from_slice(&status);
    assert_eq!(run_out(&d, &cap_add), run_out(&r, &cap_add));
    let mut privileged = vec!["--privileged"];
    privileged.extend_from_slice(&status);
    let (_, ours) = run_out(&d, &privileged);
    assert!(ours.contains("Seccomp:\t0"), "{ours}");
    // Which /proc and /sys writes fail, and how the shell exits.
    for path in ["/proc/sysrq-trigger", "/proc/sys/kernel/hostname", "/sys/kernel/profiling", "/proc/kcore", "/proc/timer_list"] {
        let script = format!("echo 1 > {path} 2>/dev/null; echo $?");
        let args = ["busybox", "sh", "-c", script.as_str()];
        let (ours, theirs) = (run_out(&d, &args), run_out(&r, &args));
        assert_eq!(ours.1.trim() == "0", theirs.1.trim() == "0", "write to {path}: berth {ours:?}, dockerd {theirs:?}");
    }
}

#[test]
fn no_descriptor_leaks_into_the_container() {
    require!(Need::Root, Need::Registry);
    let d = ready().expect("engine");
    // Only stdio: a WorkingDir through an inherited descriptor cannot work.
    let out = d.docker(&["run", "--rm", "-w", "/proc/self/fd/5", "busybox", "pwd"]);
    assert_ne!(out.status.code(), Some(0));
    let fds = d.docker_ok(&["run", "--rm", "busybox", "ls", "/proc/self/fd"]);
    let fds: Vec<&str> = fds.split_whitespace().collect();
    assert_eq!(fds, ["0", "1", "2", "3"], "ls itself holds fd 3 for the directory");
}

#[test]
fn huge_uids_never_become_root() {
    require!(Need::Root, Need::Registry);
    let d = ready().expect("engine");
    for uid in ["4294967296", "2147483648", "-1"] {
        let out = d.docker(&["run", "--rm", "-u", uid, "busybox", "id", "-u"]);
        let printed = String::from_utf8_lossy(&out.stdout);
        assert_ne!(printed.trim(), "0", "uid {uid} ran as root");
    }
    assert_eq!(d.docker_ok(&["run", "--rm", "-u", "1000:1000", "busybox", "id", "-u"]).trim(), "1000");
    assert_eq!(d.docker_ok(&["run", "--rm", "-u", "nobody", "busybox", "id", "-un"]).trim(), "nobody");
}

#[test]
fn missing_executable_exits_127_like_dockerd() {
    require!(Need::Root, Need::Registry);
    let d = ready().expect("engine");
    let out = d.docker(&["run", "--rm", "busybox", "no-such-binary"]);
    assert_eq!(out.status.code(), Some(127));
    assert!(String::from_utf8_lossy(&out.stderr).contains("executable file not found in $PATH"));
    // --rm cleaned up after the failed start.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !d.docker_ok(&["ps", "-aq"]).trim().is_empty() {
        assert!(Instant::now() < deadline, "container left behind");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn tty_exec_logs_top_stats_pause_rename_restart() {
    require!(Need::Root, Need::Registry);
    let d = ready().expect("engine");
    assert_eq!(d.docker_ok(&["run", "--rm", "-t", "busybox", "tty"]).trim(), "/dev/pts/0");
    d.docker_ok(&["run", "-d", "--name", "box", "-e", "FOO=bar", "busybox", "sh", "-c", "echo one; echo two; echo three; exec sleep 1000"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !d.docker_ok(&["logs", "box"]).contains("three") {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(d.docker_ok(&["logs", "--tail", "1", "box"]), "three\n");
    let stamped = d.docker_ok(&["logs", "-t", "--tail", "1", "box"]);
    assert!(stamped.ends_with("Z three\n") && stamped.starts_with("20"), "{stamped}");
    // exec: env, workdir, user, exit code.
    assert_eq!(d.docker_ok(&["exec", "box", "sh", "-c", "echo $FOO"]).trim(), "bar");
    assert_eq!(d.docker_ok(&["exec", "-w", "/tmp", "box", "pwd"]).trim(), "/tmp");
    assert_eq!(d.docker_ok(&["exec", "-u", "nobody", "box", "id", "-un"]).trim(), "nobody");
    assert_eq!(d.docker_ok(&["exec", "-e", "X=y", "box", "sh", "-c", "echo $X"]).trim(), "y");
    assert_eq!(d.docker(&["exec", "box", "sh", "-c", "exit 9"]).status.code(), Some(9));
    let top = d.docker_ok(&["top", "box"]);
    assert!(top.contains("sleep 1000"), "{top}");
    let stats = d.docker_ok(&["stats", "--no-stream", "--format", "{{.Name}} {{.PIDs}}", "box"]);
    assert_eq!(stats.trim(), "box 1");
    d.docker_ok(&["pause", "box"]);
    assert!(d.docker_ok(&["ps", "--format", "{{.Status}}"]).contains("(Paused)"));
    let err = d.docker_err(&["exec", "box", "true"]);
    assert!(err.contains("paused"), "{err}");
    d.docker_ok(&["unpause", "box"]);
    d.docker_ok(&["rename", "box", "crate"]);
    let pid = d.docker_ok(&["inspect", "-f", "{{.State.Pid}}", "crate"]);
    d.docker_ok(&["restart", "-t", "0", "crate"]);
    let pid2 = d.docker_ok(&["inspect", "-f", "{{.State.Pid}} {{.State.Running}}", "crate"]);
    assert!(pid2.trim().ends_with("true") && !pid2.starts_with(pid.trim()), "{pid} -> {pid2}");
    d.docker_ok(&["rm", "-f", "crate"]);
}

#[test]
fn many_concurrent_lifecycle_calls_leave_a_consistent_state() {
    require!(Need::Root, Need::Registry);
    let d = ready().expect("engine");
    d.docker_ok(&["create", "--name", "target", "busybox", "sleep", "1000"]);
    let sock = d.socket().to_path_buf();
    let handles: Vec<_> = (0..100)
        .map(|i| {
            let sock = sock.clone();
            std::thread::spawn(move || {
                let (method, path) = match i % 3 {
                    0 => ("POST", "/containers/target/start"),
                    1 => ("POST", "/containers/target/stop?t=0"),
                    _ => ("DELETE", "/containers/target?force=1"),
                };
                let mut s = std::os::unix::net::UnixStream::connect(&sock).expect("connect");
                use std::io::{Read, Write};
                let _ = write!(s, "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                let mut out = String::new();
                let _ = s.read_to_string(&mut out);
                out.split_whitespace().nth(1).and_then(|c| c.parse::<u16>().ok()).unwrap_or(0)
            })
        })
        .collect();
    for h in handles {
        let status = h.join().expect("thread");
        assert!([204, 304, 404, 409].contains(&status), "unexpected status {status}");
    }
    // Whatever happened, the end state is coherent: the container is gone
    // (some DELETE ran last or early), or it exists and inspect agrees with ps.
    let listed = d.docker_ok(&["ps", "-aq"]);
    if listed.trim().is_empty() {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        assert!(!mounts.contains(d.data_root().to_str().expect("utf8")), "leaked mount");
    } else {
        d.docker_ok(&["rm", "-f", "target"]);
    }
    assert!(d.docker_ok(&["ps", "-aq"]).trim().is_empty());
    let shims = std::fs::read_dir(d.exec_root().join("c")).map(|r| r.count()).unwrap_or(0);
    assert_eq!(shims, 0, "shim state left behind");
}

#[test]
fn init_read_only_shared_namespaces_and_oom() {
    require!(Need::Root, Need::Registry);
    let d = ready().expect("engine");
    let ps = d.docker_ok(&["run", "--rm", "--init", "busybox", "ps", "-o", "pid,args"]);
    assert!(ps.lines().any(|l| l.trim_start().starts_with("1 ") && l.contains("docker-init")), "{ps}");
    let ro = d.docker(&["run", "--rm", "--read-only", "busybox", "touch", "/x"]);
    assert_ne!(ro.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&ro.stderr).contains("Read-only file system"));
    d.docker_ok(&["run", "-d", "--name", "host-ns", "busybox", "sleep", "1000"]);
    let ps = d.docker_ok(&["run", "--rm", "--pid", "container:host-ns", "busybox", "ps", "-o", "args"]);
    assert!(ps.contains("sleep 1000"), "{ps}");
    d.docker_ok(&["rm", "-f", "host-ns"]);
    let oom = d.docker(&["run", "--name", "hungry", "--memory", "8m", "busybox", "sh", "-c", "x=$(head -c 50000000 /dev/zero | tr '\\0' a)"]);
    assert_eq!(oom.status.code(), Some(137));
    assert_eq!(d.docker_ok(&["inspect", "-f", "{{.State.OOMKilled}} {{.State.ExitCode}}", "hungry"]).trim(), "true 137");
    let err = d.docker_err(&["run", "--rm", "--memory", "1m", "busybox", "true"]);
    assert!(err.contains("Minimum memory limit allowed is 6MB"), "{err}");
}

#[test]
fn a_dead_shim_marks_its_container_exited_and_releases_it() {
    require!(Need::Root, Need::Registry);
    let d = ready().expect("engine");
    let id = d.docker_ok(&["run", "-d", "--name", "orphan", "busybox", "sleep", "1000"]);
    let short = &id.trim()[..12];
    let shim_pid = std::fs::read_to_string(d.exec_root().join("c").join(short).join("shim.pid")).expect("shim.pid");
    let pid = d.docker_ok(&["inspect", "-f", "{{.State.Pid}}", "orphan"]).trim().to_owned();
    let status = std::process::Command::new("kill").args(["-9", shim_pid.trim()]).status().expect("kill");
    assert!(status.success());
    assert_eq!(d.docker_ok(&["wait", "orphan"]).trim(), "255");
    let state = d.docker_ok(&["inspect", "-f", "{{.State.Status}} {{.State.Running}}", "orphan"]);
    assert_eq!(state.trim(), "exited false");
    // The container's process went with it and nothing stays mounted.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < deadline, "container process survived its shim");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(!mounts.contains(&format!("{}/merged", id.trim())), "rootfs still mounted");
    d.docker_ok(&["start", "orphan"]);
    assert_eq!(d.docker_ok(&["inspect", "-f", "{{.State.Running}}", "orphan"]).trim(), "true");
    d.docker_ok(&["rm", "-f", "orphan"]);
}

#[test]
fn runc_is_selectable_per_container() {
    require!(Need::Root, Need::Registry);
    let d = ready().expect("engine");
    if !std::path::Path::new("/usr/sbin/runc").exists() {
        return common::require!(Need::Root);
    }
    assert_eq!(d.docker_ok(&["run", "--rm", "--runtime", "runc", "busybox", "echo", "via runc"]).trim(), "via runc");
    let err = d.docker_err(&["run", "--rm", "--runtime", "nope", "busybox", "true"]);
    assert!(err.contains("unknown or invalid runtime name: nope"), "{err}");
}

#[test]
fn detach_keys_leave_an_interactive_container_running() {
    require!(Need::Root, Need::Registry);
    let d = ready().expect("engine");
    d.docker_ok(&["create", "-it", "--name", "session", "busybox", "sh"]);
    // `docker start -ai` through a pipe: a command, its answer, then
    // ctrl-p ctrl-q.
    use std::io::{BufRead, Write};
    let mut child = d
        .docker_command(&["start", "-ai", "session"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("docker start -ai");
    let mut stdin = child.stdin.take().expect("piped");
    stdin.write_all(b"echo hello-from-$((20+3))\n").expect("write command");
    let mut lines = std::io::BufReader::new(child.stdout.take().expect("piped")).lines();
    // The tty echoes the command; the answer has the computed number.
    assert!(lines.by_ref().map_while(Result::ok).any(|l| l.contains("hello-from-23")), "no answer from the shell");
    stdin.write_all(b"\x10\x11").expect("write detach keys");
    let status = child.wait().expect("wait");
    assert!(status.success() || status.code() == Some(1), "{status:?}");
    assert_eq!(d.docker_ok(&["inspect", "-f", "{{.State.Running}}", "session"]).trim(), "true");
    d.docker_ok(&["rm", "-f", "session"]);
}

#[test]
fn run_options_reach_the_process_as_with_dockerd() {
    require!(Need::Root, Need::Registry, Need::Reference);
    let d = ready().expect("engine");
    let r = common::reference().expect("required");
    r.docker_ok(&["pull", "-q", "busybox"]);
    let env_file = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(env_file.path(), "FROM_FILE=1\n# comment\n").expect("write");
    let script = "echo $FOO $FROM_FILE; hostname; pwd; id -u; ulimit -n; df -k /dev/shm | tail -1 | awk '{print $2}'; cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max; ls -l /dev/fuse-test 2>/dev/null | cut -c1";
    let args = [
        "-e", "FOO=bar", "--env-file", env_file.path().to_str().expect("utf8"), "--hostname", "myhost", "-w", "/tmp",
        "-u", "0", "--ulimit", "nofile=1024:2048", "--shm-size", "16m", "--pids-limit", "50",
        "--device", "/dev/null:/dev/fuse-test", "--entrypoint", "sh", "busybox", "-c", script,
    ];
    let (ours, theirs) = (run_out(&d, &args), run_out(&r, &args));
    assert_eq!(ours, theirs);
    assert!(ours.1.starts_with("bar 1\nmyhost\n/tmp\n0\n1024\n16384\n50\nc"), "{}", ours.1);
}

#[test]
fn logs_follow_rotation_and_container_events() {
    require!(Need::Root, Need::Registry);
    let d = ready().expect("engine");
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() - 1;
    // Rotation: 1 KiB files, at most 2 of them.
    d.docker_ok(&["run", "--name", "chatty", "--log-opt", "max-size=1k", "--log-opt", "max-file=2", "busybox", "sh", "-c", "for i in $(seq 1 200); do echo line-$i; done"]);
    let logs = d.docker_ok(&["logs", "chatty"]);
    assert!(logs.ends_with("line-200\n"), "{logs}");
    assert!(!logs.contains("line-1\n"), "old lines should have rotated away");
    let inspect = d.docker_ok(&["inspect", "-f", "{{.LogPath}}", "chatty"]);
    assert!(std::path::Path::new(&format!("{}.1", inspect.trim())).exists());
    assert!(!std::path::Path::new(&format!("{}.2", inspect.trim())).exists());
    // Follow ends when the container does.
    d.docker_ok(&["run", "-d", "--name", "brief", "busybox", "sh", "-c", "echo a; sleep 1; echo b"]);
    let followed = d.docker_ok(&["logs", "-f", "brief"]);
    assert_eq!(followed, "a\nb\n");
    // attach to a running container sees its later output.
    d.docker_ok(&["run", "-di", "--name", "talker", "busybox", "sh", "-c", "read x; echo got-$x"]);
    let out = d.docker_stdin(&["attach", "talker"], b"ping\n");
    assert!(String::from_utf8_lossy(&out.stdout).contains("got-ping"), "{out:?}");
    d.docker_ok(&["rm", "-f", "chatty", "brief", "talker"]);
    let until = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() + 1;
    let events = d.docker_ok(&["events", "--since", &since.to_string(), "--until", &until.to_string(), "--filter", "container=brief", "--format", "{{.Action}}"]);
    let actions: Vec<&str> = events.lines().collect();
    assert_eq!(actions, ["create", "start", "die", "kill", "destroy"].iter().filter(|a| events.contains(*a)).copied().collect::<Vec<_>>());
    for a in ["create", "start", "die", "destroy"] {
        assert!(actions.contains(&a), "{a} missing: {actions:?}");
    }
}

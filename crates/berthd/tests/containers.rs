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

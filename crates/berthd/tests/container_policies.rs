//! Health checks, `docker update` and restart policies through the real
//! docker CLI, a real berth-shim and crun, compared with the reference
//! dockerd where one runs (it has no bridge, so its containers get
//! `--network none`).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{require, Berthd, Client, Need};
use serde_json::Value;

fn ready() -> Berthd {
    let d = Berthd::start();
    d.docker_ok(&["pull", "-q", "busybox"]);
    d
}

/// The reference dockerd, with busybox pulled, when the test env runs one.
fn reference() -> Option<common::Reference> {
    let r = common::reference()?;
    r.docker_ok(&["pull", "-q", "busybox"]);
    Some(r)
}

/// A container name no other test (or engineer) on the shared reference
/// daemon uses.
fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{:x}", std::process::id(), SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").subsec_nanos())
}

/// Removes a container when dropped, so a failing test leaves nothing on the
/// shared reference daemon.
struct Cleanup<'a>(&'a Client, String);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let _ = self.0.docker(&["rm", "-f", &self.1]);
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs()
}

/// `GET /containers/{name}/json`: the raw API, so tight polls stay cheap.
fn inspect(c: &Client, name: &str) -> Value {
    let (status, v) = c.api_json("GET", &format!("/containers/{name}/json"), None);
    assert_eq!(status, 200, "inspect {name}: {v}");
    v
}

/// Polls `inspect` until `done` holds, for at most `limit`.
fn wait_until(c: &Client, name: &str, what: &str, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let v = inspect(c, name);
        if done(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{name}: not {what} within {limit:?}; state: {}", v["State"]);
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn health_status(v: &Value) -> &str {
    v["State"]["Health"]["Status"].as_str().unwrap_or("none")
}

/// Container events of `name` since `since`, waiting until a second after
/// now so the last ones are in.
fn events(c: &Client, name: &str, since: u64, filter: &str) -> Vec<String> {
    let since = since.to_string();
    let until = (unix_now() + 1).to_string();
    let name_filter = format!("container={name}");
    let mut args = vec!["events", "--since", &since, "--until", &until, "--filter", &name_filter, "--format", "{{.Action}}"];
    let event_filter = format!("event={filter}");
    if !filter.is_empty() {
        args.extend(["--filter", &event_filter]);
    }
    c.docker_ok(&args).lines().map(str::to_owned).collect()
}

/// `run -d` with the reference's network mode where needed.
fn run_d(c: &Client, is_reference: bool, name: &str, args: &[&str]) -> String {
    let mut all = vec!["run", "-d", "--name", name];
    if is_reference {
        all.extend(["--network", "none"]);
    }
    all.extend(args);
    c.docker_ok(&all).trim().to_owned()
}

/// The health scenario: `starting`, then `unhealthy` (the file is missing),
/// then `healthy` once it exists. Returns the health_status events.
fn health_scenario(c: &Client, is_reference: bool) -> Vec<String> {
    let name = unique("hc");
    let _cleanup = Cleanup(c, name.clone());
    let since = unix_now() - 1;
    run_d(c, is_reference, &name, &["--health-cmd", "test -f /tmp/ok", "--health-interval", "200ms", "--health-retries", "1", "busybox", "sleep", "1000"]);
    // The first probe ends 200ms after the start at the earliest.
    let first = inspect(c, &name);
    assert_eq!(health_status(&first), "starting", "{}", first["State"]);
    assert_eq!(first["State"]["Health"]["FailingStreak"], 0);

    wait_until(c, &name, "unhealthy", Duration::from_secs(30), |v| health_status(v) == "unhealthy");
    let ps = c.docker_ok(&["ps", "--filter", &format!("name={name}"), "--format", "{{.Status}}"]);
    assert!(ps.trim().ends_with("(unhealthy)"), "{ps}");

    c.docker_ok(&["exec", &name, "touch", "/tmp/ok"]);
    let v = wait_until(c, &name, "healthy", Duration::from_secs(30), |v| health_status(v) == "healthy");
    let health = &v["State"]["Health"];
    assert_eq!(health["FailingStreak"], 0);
    let log = health["Log"].as_array().expect("Health.Log is a list");
    assert!(!log.is_empty() && log.len() <= 5, "{log:?}");
    let last = log.last().expect("not empty");
    assert_eq!(last["ExitCode"], 0, "{last}");
    assert!(last["Start"].as_str().is_some_and(|s| s.ends_with('Z')) && last["End"].is_string(), "{last}");
    let ps = c.docker_ok(&["ps", "--filter", "health=healthy", "--format", "{{.Names}} {{.Status}}"]);
    assert!(ps.lines().any(|l| l.starts_with(&name) && l.ends_with("(healthy)")), "{ps}");

    // A container that is not running is reported unhealthy.
    c.docker_ok(&["kill", &name]);
    let v = wait_until(c, &name, "exited", Duration::from_secs(30), |v| v["State"]["Status"] == "exited");
    assert_eq!(health_status(&v), "unhealthy");
    events(c, &name, since, "health_status")
}

#[test]
fn health_check_goes_starting_unhealthy_healthy() {
    require!(Need::Root, Need::Registry);
    let d = ready();
    let ours = health_scenario(&d, false);
    assert_eq!(ours, ["health_status: unhealthy", "health_status: healthy"]);
    if let Some(r) = reference() {
        assert_eq!(health_scenario(&r, true), ours, "dockerd reports other health events");
    }
}

#[test]
fn health_check_output_exit_code_and_timeout() {
    require!(Need::Root, Need::Registry);
    let d = ready();
    run_d(&d, false, "loud", &["--health-cmd", "echo out; echo err >&2; exit 3", "--health-interval", "200ms", "busybox", "sleep", "1000"]);
    run_d(&d, false, "slow", &["--health-cmd", "sleep 30", "--health-timeout", "300ms", "--health-interval", "200ms", "--health-retries", "1", "busybox", "sleep", "1000"]);
    // Three failures (the default retries) make it unhealthy.
    let v = wait_until(&d, "loud", "unhealthy", Duration::from_secs(30), |v| health_status(v) == "unhealthy");
    assert_eq!(v["State"]["Health"]["FailingStreak"], 3);
    let entry = &v["State"]["Health"]["Log"][0];
    assert_eq!((entry["ExitCode"].as_i64(), entry["Output"].as_str()), (Some(3), Some("out\nerr\n")), "{entry}");

    let v = wait_until(&d, "slow", "unhealthy", Duration::from_secs(30), |v| health_status(v) == "unhealthy");
    let entry = &v["State"]["Health"]["Log"][0];
    assert_eq!((entry["ExitCode"].as_i64(), entry["Output"].as_str()), (Some(-1), Some("Health check exceeded timeout (300ms)")), "{entry}");
    // The probe was killed, not left to run its 30 seconds.
    let top = d.docker_ok(&["top", "slow"]);
    assert!(top.matches("sleep 30").count() <= 1, "killed probes pile up: {top}");
}

/// The file holding a cgroup v1 controller's value for a berth container
/// (or the v2 equivalent on a unified host).
fn cgroup_file(id: &str, v1_controller: &str, v1_file: &str, v2_file: &str) -> PathBuf {
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        Path::new("/sys/fs/cgroup/berth").join(id).join(v2_file)
    } else {
        Path::new("/sys/fs/cgroup").join(v1_controller).join("berth").join(id).join(v1_file)
    }
}

fn read_trimmed(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display())).trim().to_owned()
}

#[test]
fn update_changes_the_limits_of_a_running_container() {
    require!(Need::Root, Need::Registry);
    let d = ready();
    let since = unix_now() - 1;
    let id = run_d(&d, false, "limited", &["busybox", "sleep", "1000"]);
    let out = d.docker_ok(&["update", "--memory", "64m", "--memory-swap", "128m", "limited"]);
    assert_eq!(out.trim(), "limited");
    assert_eq!(d.docker_ok(&["inspect", "-f", "{{.HostConfig.Memory}} {{.HostConfig.MemorySwap}}", "limited"]).trim(), "67108864 134217728");
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    assert_eq!(read_trimmed(&cgroup_file(&id, "memory", "memory.limit_in_bytes", "memory.max")), "67108864");
    if !v2 {
        assert_eq!(read_trimmed(&cgroup_file(&id, "memory", "memory.memsw.limit_in_bytes", "")), "134217728");
    }

    d.docker_ok(&["update", "--cpus", "0.5", "--cpu-shares", "512", "--pids-limit", "30", "limited"]);
    assert_eq!(d.docker_ok(&["inspect", "-f", "{{.HostConfig.NanoCpus}} {{.HostConfig.CpuShares}} {{.HostConfig.PidsLimit}}", "limited"]).trim(), "500000000 512 30");
    assert_eq!(read_trimmed(&cgroup_file(&id, "pids", "pids.max", "pids.max")), "30");
    if !v2 {
        assert_eq!(read_trimmed(&cgroup_file(&id, "cpu", "cpu.cfs_quota_us", "")), "50000");
        assert_eq!(read_trimmed(&cgroup_file(&id, "cpu", "cpu.shares", "")), "512");
    }
    // Unlimited again: dockerd records 0 and the cgroup says "max".
    d.docker_ok(&["update", "--pids-limit", "-1", "limited"]);
    assert_eq!(d.docker_ok(&["inspect", "-f", "{{.HostConfig.PidsLimit}}", "limited"]).trim(), "0");
    assert_eq!(read_trimmed(&cgroup_file(&id, "pids", "pids.max", "pids.max")), "max");

    d.docker_ok(&["update", "--restart", "on-failure:3", "limited"]);
    assert_eq!(d.docker_ok(&["inspect", "-f", "{{.HostConfig.RestartPolicy.Name}}:{{.HostConfig.RestartPolicy.MaximumRetryCount}}", "limited"]).trim(), "on-failure:3");
    // Still running, and the limits hold after a restart (the record has them).
    d.docker_ok(&["restart", "-t", "0", "limited"]);
    assert_eq!(read_trimmed(&cgroup_file(&id, "memory", "memory.limit_in_bytes", "memory.max")), "67108864");
    assert_eq!(events(&d, "limited", since, "update"), ["update"; 4]);
}

/// The errors of `docker update` dockerd gives, on `c`.
fn update_refusals(c: &Client, is_reference: bool) -> Vec<String> {
    let plain = unique("plain");
    let _c1 = Cleanup(c, plain.clone());
    let auto = unique("auto");
    let _c2 = Cleanup(c, auto.clone());
    run_d(c, is_reference, &plain, &["busybox", "sleep", "1000"]);
    run_d(c, is_reference, &auto, &["--rm", "busybox", "sleep", "1000"]);
    let strip = |e: String, id: &str| e.trim().replace(id, "<id>");
    let plain_id = c.docker_ok(&["inspect", "-f", "{{.Id}}", &plain]).trim().to_owned();
    let auto_id = c.docker_ok(&["inspect", "-f", "{{.Id}}", &auto]).trim().to_owned();
    let out = vec![
        // Memory above the (unset) swap limit needs the swap limit too.
        strip(c.docker_err(&["update", "--memory", "64m", &plain]), &plain_id),
        strip(c.docker_err(&["update", "--memory", "1k", "--memory-swap", "-1", &plain]), &plain_id),
        strip(c.docker_err(&["update", "--restart", "always", &auto]), &auto_id),
    ];
    // Nothing changed.
    assert_eq!(c.docker_ok(&["inspect", "-f", "{{.HostConfig.Memory}} {{.HostConfig.RestartPolicy.Name}}", &auto]).trim(), "0 no");
    out
}

#[test]
fn update_refuses_what_dockerd_refuses() {
    require!(Need::Root, Need::Registry);
    let d = ready();
    let ours = update_refusals(&d, false);
    assert_eq!(
        ours,
        [
            "Error response from daemon: Cannot update container <id>: Memory limit should be smaller than already set memoryswap limit, update the memoryswap at the same time",
            "Error response from daemon: Minimum memory limit allowed is 6MB",
            "Error response from daemon: Cannot update container <id>: Restart policy cannot be updated because AutoRemove is enabled for the container",
        ]
    );
    if let Some(r) = reference() {
        assert_eq!(update_refusals(&r, true), ours, "dockerd refuses differently");
    }
}

/// `--restart on-failure:2` with a failing command: (RestartCount, exit
/// code, die events, start events) once it has given up.
fn on_failure_scenario(c: &Client, is_reference: bool) -> (u64, i64, usize, usize) {
    let name = unique("flaky");
    let _cleanup = Cleanup(c, name.clone());
    let since = unix_now() - 1;
    run_d(c, is_reference, &name, &["--restart", "on-failure:2", "busybox", "sh", "-c", "exit 1"]);
    let v = wait_until(c, &name, "exited after 2 restarts", Duration::from_secs(60), |v| {
        v["State"]["Status"] == "exited" && v["RestartCount"] == 2
    });
    let evs = events(c, &name, since, "");
    // Given up for good: nothing restarted it since.
    let after = inspect(c, &name);
    assert_eq!((after["State"]["Status"].as_str(), after["RestartCount"].as_u64()), (Some("exited"), Some(2)));
    (
        v["RestartCount"].as_u64().unwrap_or(0),
        v["State"]["ExitCode"].as_i64().unwrap_or(0),
        evs.iter().filter(|e| *e == "die").count(),
        evs.iter().filter(|e| *e == "start").count(),
    )
}

#[test]
fn on_failure_restarts_up_to_its_limit() {
    require!(Need::Root, Need::Registry);
    let d = ready();
    let ours = on_failure_scenario(&d, false);
    assert_eq!(ours, (2, 1, 3, 3));
    if let Some(r) = reference() {
        assert_eq!(on_failure_scenario(&r, true), ours, "dockerd restarts differently");
    }
}

/// `--restart always` with a command that exits at once: it is restarting
/// between runs and its count goes up until `docker stop`, after which it
/// stays exited. Returns the events after the stop.
fn always_scenario(c: &Client, is_reference: bool) -> Vec<String> {
    let name = unique("bouncer");
    let _cleanup = Cleanup(c, name.clone());
    run_d(c, is_reference, &name, &["--restart", "always", "busybox", "sh", "-c", "exit 0"]);
    // Between runs it waits out its backoff as `restarting`.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ps = c.docker_ok(&["ps", "--filter", &format!("name={name}"), "--format", "{{.Status}}"]);
        if ps.starts_with("Restarting (0)") {
            break;
        }
        assert!(Instant::now() < deadline, "{name} never shown as restarting: {ps}");
        std::thread::sleep(Duration::from_millis(20));
    }
    wait_until(c, &name, "restarted twice", Duration::from_secs(30), |v| v["RestartCount"].as_u64() >= Some(2));
    c.docker_ok(&["stop", &name]);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock");
    let stopped_at = format!("{}.{:09}", now.as_secs(), now.subsec_nanos());
    let v = wait_until(c, &name, "stopped", Duration::from_secs(30), |v| v["State"]["Status"] == "exited" && v["State"]["Restarting"] == false);
    let count = v["RestartCount"].clone();
    // No start in the next two seconds or more, which covers the next
    // backoff (at most 400ms after two restarts).
    let until = (now.as_secs() + 3).to_string();
    let evs: Vec<String> = c
        .docker_ok(&["events", "--since", &stopped_at, "--until", &until, "--filter", &format!("container={name}"), "--format", "{{.Action}}"])
        .lines()
        .map(str::to_owned)
        .collect();
    let v = inspect(c, &name);
    assert_eq!((v["State"]["Status"].as_str(), &v["RestartCount"]), (Some("exited"), &count));
    evs.into_iter().filter(|e| e == "start" || e == "restart").collect()
}

#[test]
fn always_restarts_until_docker_stop() {
    require!(Need::Root, Need::Registry);
    let d = ready();
    let ours = always_scenario(&d, false);
    assert!(ours.is_empty(), "started again after docker stop: {ours:?}");
    if let Some(r) = reference() {
        assert_eq!(always_scenario(&r, true), ours);
    }
}

fn wait_gone(pid: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    // Reaped, not only dead: a zombie shim still looks alive.
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < deadline, "process {pid} survived SIGKILL");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn restart_policies_apply_when_the_engine_starts() {
    require!(Need::Root, Need::Registry);
    let mut d = ready();
    let always = run_d(&d, false, "always", &["--restart", "always", "busybox", "sleep", "1000"]);
    run_d(&d, false, "stopped-unless", &["--restart", "unless-stopped", "busybox", "sleep", "1000"]);
    d.docker_ok(&["stop", "-t", "0", "stopped-unless"]);
    let plain = run_d(&d, false, "plain", &["busybox", "sleep", "1000"]);
    // The engine dies, then the containers' shims and processes (a
    // reboot, as far as the engine can tell).
    let pids: Vec<String> = [&always, &plain]
        .iter()
        .flat_map(|id| {
            let shim = std::fs::read_to_string(d.exec_root().join("c").join(&id[..12]).join("shim.pid")).expect("shim.pid");
            let init = d.docker_ok(&["inspect", "-f", "{{.State.Pid}}", id]);
            [shim.trim().to_owned(), init.trim().to_owned()]
        })
        .collect();
    d.kill9();
    for pid in &pids {
        let status = std::process::Command::new("kill").args(["-9", pid]).status().expect("run kill");
        assert!(status.success(), "kill -9 {pid}");
    }
    for pid in &pids {
        wait_gone(pid);
    }
    d.restart();
    let v = wait_until(&d, "always", "running again", Duration::from_secs(30), |v| v["State"]["Running"] == true);
    assert_eq!(v["RestartCount"], 0, "dockerd's start at daemon start resets the count");
    assert_ne!(v["State"]["Pid"].to_string(), pids[1], "a new process");
    assert_eq!(d.docker_ok(&["inspect", "-f", "{{.State.Status}}", "plain"]).trim(), "exited");
    assert_eq!(d.docker_ok(&["inspect", "-f", "{{.State.Status}}", "stopped-unless"]).trim(), "exited");
    // The dead container can be started again: the runtime forgot it.
    d.docker_ok(&["start", "plain"]);
    assert_eq!(d.docker_ok(&["inspect", "-f", "{{.State.Status}}", "plain"]).trim(), "running");
}

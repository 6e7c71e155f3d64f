//! `berth-shim` against a real OCI runtime: create, start, attach, stdin,
//! tty, kill, exec, logs, exit records, memory.
//!
//! Needs root (the runtime makes namespaces and mounts); skips with a
//! message otherwise. The rootfs is `/bin/busybox` (static) copied into a
//! temporary directory. The runtime is `$BERTH_SHIM_TEST_RUNTIME`, else
//! /usr/bin/crun. crun 1.8.1 refuses hosts whose cgroup v2 hierarchy (at
//! /sys/fs/cgroup/unified) has controllers enabled next to v1 ("cgroups in
//! hybrid mode not supported"); there the shim is started in a private mount
//! namespace without that mount, which leaves the shim's behaviour as is.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const BUSYBOX: &str = "/bin/busybox";
const APPLETS: &[&str] = &["sh", "cat", "echo", "stty", "sleep", "true", "head", "seq", "ls", "dd", "yes", "tr"];
const IO_TIMEOUT: Duration = Duration::from_secs(30);

fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("skipping {test}: needs root (the OCI runtime creates namespaces and mounts)");
    } else if !Path::new(BUSYBOX).exists() {
        eprintln!("skipping {test}: needs a static busybox at {BUSYBOX} for the rootfs");
        return false;
    }
    root
}

fn runtime() -> PathBuf {
    std::env::var_os("BERTH_SHIM_TEST_RUNTIME").map(PathBuf::from).unwrap_or_else(|| "/usr/bin/crun".into())
}

/// crun 1.8.1 cannot run on a hybrid host with v2 controllers: see the top.
fn hide_hybrid_cgroup2(runtime: &Path) -> bool {
    let is_crun = runtime.file_name().is_some_and(|n| n == "crun");
    let controllers = std::fs::read_to_string("/sys/fs/cgroup/unified/cgroup.controllers").unwrap_or_default();
    is_crun && !controllers.trim().is_empty()
}

#[derive(Clone)]
struct Spec {
    args: Vec<String>,
    tty: bool,
    stdin: bool,
    pid_ns: bool,
    log: bool,
    log_max_size: Option<u64>,
    log_max_file: Option<u32>,
    missing_rootfs: bool,
    /// Memory limit in bytes, in a cgroup of the container's own.
    memory_limit: Option<u64>,
    runtime: PathBuf,
}

impl Spec {
    fn new(args: &[&str]) -> Self {
        Spec {
            args: args.iter().map(|s| s.to_string()).collect(),
            tty: false,
            stdin: false,
            pid_ns: true,
            log: true,
            log_max_size: None,
            log_max_file: None,
            missing_rootfs: false,
            memory_limit: None,
            runtime: runtime(),
        }
    }
}

/// One container under a shim, in its own temporary directory.
struct Container {
    dir: tempfile::TempDir,
    state: PathBuf,
    log: PathBuf,
    handshake: String,
    shim_pid: i32,
    id: String,
}

fn start_shim(name: &str, spec: &Spec) -> Container {
    let dir = tempfile::tempdir().expect("tempdir");
    let rootfs = dir.path().join("rootfs");
    for d in ["bin", "proc", "dev", "tmp", "sys"] {
        std::fs::create_dir_all(rootfs.join(d)).expect("rootfs dir");
    }
    std::fs::copy(BUSYBOX, rootfs.join("bin/busybox")).expect("copy busybox");
    for a in APPLETS {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(a)).expect("applet link");
    }
    let bundle = dir.path().join("bundle");
    std::fs::create_dir(&bundle).expect("bundle dir");
    let root_path = if spec.missing_rootfs { dir.path().join("no-such-rootfs") } else { rootfs };
    let mut namespaces =
        vec![json!({"type": "mount"}), json!({"type": "ipc"}), json!({"type": "uts"}), json!({"type": "network"})];
    if spec.pid_ns {
        namespaces.push(json!({"type": "pid"}));
    }
    let id = format!("shimtest-{name}-{}", std::process::id());
    let mut linux = json!({"namespaces": namespaces});
    if let Some(limit) = spec.memory_limit {
        linux["resources"] = json!({"memory": {"limit": limit}});
        linux["cgroupsPath"] = json!(format!("/{id}"));
    }
    let config = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": spec.tty,
            "user": {"uid": 0, "gid": 0},
            "args": spec.args,
            "env": ["PATH=/bin", "TERM=xterm"],
            "cwd": "/",
        },
        "root": {"path": root_path},
        "hostname": "shimtest",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
        ],
        "linux": linux,
    });
    std::fs::write(bundle.join("config.json"), config.to_string()).expect("write config.json");
    let state = dir.path().join("state");
    std::fs::create_dir(&state).expect("state dir");
    let log = dir.path().join("container-json.log");

    let shim = PathBuf::from(env!("CARGO_BIN_EXE_berth-shim"));
    let mut args: Vec<String> = vec![
        "--id".into(),
        id.clone(),
        "--bundle".into(),
        bundle.display().to_string(),
        "--state".into(),
        state.display().to_string(),
        "--runtime".into(),
        spec.runtime.display().to_string(),
        "--runtime-root".into(),
        dir.path().join("runtime").display().to_string(),
    ];
    if spec.log {
        args.extend(["--log-path".into(), log.display().to_string()]);
    } else {
        args.push("--no-log".into());
    }
    if let Some(n) = spec.log_max_size {
        args.extend(["--log-max-size".into(), n.to_string()]);
    }
    if let Some(n) = spec.log_max_file {
        args.extend(["--log-max-file".into(), n.to_string()]);
    }
    if spec.tty {
        args.push("--tty".into());
    }
    if spec.stdin {
        args.push("--stdin".into());
    }
    let mut cmd = if hide_hybrid_cgroup2(&spec.runtime) {
        let mut c = Command::new("unshare");
        c.args(["-m", "--propagation", "private", "sh", "-c", "umount /sys/fs/cgroup/unified && exec \"$0\" \"$@\""]);
        c.arg(&shim);
        c
    } else {
        Command::new(&shim)
    };
    cmd.args(&args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit());
    let mut child = cmd.spawn().expect("spawn shim");
    let mut handshake = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut handshake).expect("read handshake");
    // The process we spawned only forks the daemon and exits.
    let status = child.wait().expect("wait for the spawned shim");
    assert!(status.success(), "spawned shim exited with {status}");
    let shim_pid =
        std::fs::read_to_string(state.join("shim.pid")).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
    Container { dir, state, log, handshake, shim_pid, id }
}

impl Container {
    fn sock(&self) -> PathBuf {
        self.state.join("shim.sock")
    }

    fn init_pid(&self) -> i32 {
        let pid =
            self.handshake.trim().strip_prefix("created ").unwrap_or_else(|| panic!("handshake {:?}", self.handshake));
        pid.parse().expect("pid in handshake")
    }

    /// Sends one request; returns the answer line and the connection.
    fn open(&self, req: Value) -> (Value, UnixStream) {
        let mut s = UnixStream::connect(self.sock()).expect("connect shim.sock");
        s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        s.write_all(format!("{req}\n").as_bytes()).expect("send request");
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        loop {
            assert_eq!(s.read(&mut b).expect("read answer"), 1, "connection closed before the answer");
            if b[0] == b'\n' {
                break;
            }
            line.push(b[0]);
        }
        (serde_json::from_slice(&line).expect("answer is JSON"), s)
    }

    fn request(&self, req: Value) -> Value {
        let (v, mut s) = self.open(req);
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).expect("read to end");
        assert!(rest.is_empty(), "bytes after the answer: {rest:?}");
        v
    }

    fn wait_exit(&self) -> Value {
        let path = self.state.join("exit.json");
        let deadline = Instant::now() + IO_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(data) = std::fs::read(&path) {
                return serde_json::from_slice(&data).expect("exit.json is JSON");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("no exit.json after {IO_TIMEOUT:?}");
    }

    /// Waits until the shim process is gone (it exits right after exit.json
    /// and the runtime's delete).
    fn wait_shim_gone(&self) {
        let deadline = Instant::now() + IO_TIMEOUT;
        while Instant::now() < deadline {
            if !alive(self.shim_pid) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("shim {} still alive", self.shim_pid);
    }

    fn log_lines(&self, path: &Path) -> Vec<Value> {
        std::fs::read_to_string(path)
            .expect("read log")
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("log line {l:?}: {e}")))
            .collect()
    }
}

impl Drop for Container {
    /// A failed test must not leave its container running.
    fn drop(&mut self) {
        if self.shim_pid > 0 && alive(self.shim_pid) {
            if let Ok(mut s) = UnixStream::connect(self.sock()) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let _ = s.write_all(b"{\"op\":\"kill\",\"signal\":9,\"all\":true}\n");
                let _ = s.read_to_end(&mut Vec::new());
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while alive(self.shim_pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn alive(pid: i32) -> bool {
    // A zombie (exited, not yet reaped by its new parent) counts as gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with(|c| c != 'Z' && c != 'X')))
        .unwrap_or(false)
}

/// One multiplexed frame: stream byte and payload.
type Frame = (u8, Vec<u8>);

/// Reads Docker multiplexed frames to the end: (stdout, stderr, frames).
fn read_frames(s: &mut UnixStream) -> (Vec<u8>, Vec<u8>, Vec<Frame>) {
    let (mut out, mut err, mut frames) = (Vec::new(), Vec::new(), Vec::new());
    loop {
        let mut h = [0u8; 8];
        match s.read_exact(&mut h) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => panic!("read frame header: {e}"),
        }
        assert_eq!(&h[1..4], &[0, 0, 0], "frame header {h:?}");
        let len = u32::from_be_bytes([h[4], h[5], h[6], h[7]]) as usize;
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).expect("frame payload");
        match h[0] {
            1 => out.extend_from_slice(&payload),
            2 => err.extend_from_slice(&payload),
            other => panic!("frame for stream {other}"),
        }
        frames.push((h[0], payload));
    }
    (out, err, frames)
}

fn read_all(s: &mut UnixStream) -> Vec<u8> {
    let mut v = Vec::new();
    s.read_to_end(&mut v).expect("read stream");
    v
}

fn vm_rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

fn stat_fields(pid: i32) -> Vec<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    let (_, rest) = stat.rsplit_once(')').expect("stat format");
    rest.split_whitespace().map(str::to_owned).collect()
}

#[test]
fn attach_before_start_gets_multiplexed_output_log_and_exit_code() {
    if !root_or_skip("attach_before_start_gets_multiplexed_output_log_and_exit_code") {
        return;
    }
    let c = start_shim("out", &Spec::new(&["sh", "-c", "echo out; echo err >&2; exit 3"]));
    let init = c.init_pid();
    assert_eq!(c.request(json!({"op": "state"})), json!({"pid": init, "status": "created", "exit_code": null}));

    let (answer, mut stream) = c.open(json!({"op": "attach", "stdin": false, "stdout": true, "stderr": true}));
    assert_eq!(answer, json!({"ok": true}));
    assert_eq!(c.request(json!({"op": "start"})), json!({"ok": true}));
    let (out, err, frames) = read_frames(&mut stream);

    assert_eq!(String::from_utf8_lossy(&out), "out\n");
    assert_eq!(String::from_utf8_lossy(&err), "err\n");
    assert!(frames.contains(&(1, b"out\n".to_vec())) && frames.contains(&(2, b"err\n".to_vec())), "{frames:?}");
    let exit = c.wait_exit();
    assert_eq!(exit["exit_code"], 3);
    assert_eq!(exit["signal"], Value::Null);
    assert_eq!(exit["oom_killed"], false);
    let at = exit["exited_at"].as_str().expect("exited_at");
    assert!(at.ends_with('Z') && at.len() >= 20 && at.as_bytes()[10] == b'T', "{at}");
    let mut logs: Vec<(String, String)> = c
        .log_lines(&c.log)
        .iter()
        .map(|l| {
            assert!(l["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{l}");
            (l["log"].as_str().unwrap_or_default().to_owned(), l["stream"].as_str().unwrap_or_default().to_owned())
        })
        .collect();
    logs.sort();
    assert_eq!(logs, [("err\n".to_owned(), "stderr".to_owned()), ("out\n".to_owned(), "stdout".to_owned())]);
    c.wait_shim_gone();
    assert!(!c.sock().exists(), "shim.sock left behind");
}

#[test]
fn stdin_from_attach_reaches_the_container_and_eof_closes_it() {
    if !root_or_skip("stdin_from_attach_reaches_the_container_and_eof_closes_it") {
        return;
    }
    let mut spec = Spec::new(&["cat"]);
    spec.stdin = true;
    let c = start_shim("stdin", &spec);
    let (answer, mut stream) = c.open(json!({"op": "attach", "stdin": true, "stdout": true, "stderr": true}));
    assert_eq!(answer, json!({"ok": true}));
    assert_eq!(c.request(json!({"op": "start"})), json!({"ok": true}));
    stream.write_all(b"hello shim\n").expect("send stdin");
    stream.write_all(b"second line\n").expect("send stdin");
    stream.shutdown(Shutdown::Write).expect("half-close");
    let (out, err, _) = read_frames(&mut stream);
    assert_eq!(String::from_utf8_lossy(&out), "hello shim\nsecond line\n");
    assert!(err.is_empty());
    assert_eq!(c.wait_exit()["exit_code"], 0);
}

#[test]
fn tty_output_is_raw_and_resize_sets_the_window_size() {
    if !root_or_skip("tty_output_is_raw_and_resize_sets_the_window_size") {
        return;
    }
    let mut spec = Spec::new(&["stty", "size"]);
    spec.tty = true;
    let c = start_shim("tty", &spec);
    assert_eq!(c.request(json!({"op": "resize", "width": 100, "height": 40})), json!({"ok": true}));
    let (_, mut stream) = c.open(json!({"op": "attach", "stdin": false, "stdout": true, "stderr": true}));
    assert_eq!(c.request(json!({"op": "start"})), json!({"ok": true}));
    let out = read_all(&mut stream);
    assert_eq!(String::from_utf8_lossy(&out), "40 100\r\n");
    assert_eq!(c.wait_exit()["exit_code"], 0);
    let logs = c.log_lines(&c.log);
    assert_eq!(logs.len(), 1, "{logs:?}");
    assert_eq!(logs[0]["stream"], "stdout");
    assert_eq!(logs[0]["log"], "40 100\r\n");
}

#[test]
fn tty_stdin_is_echoed_and_eof_ends_input() {
    if !root_or_skip("tty_stdin_is_echoed_and_eof_ends_input") {
        return;
    }
    let mut spec = Spec::new(&["sh", "-c", "read x; echo got $x; cat; echo done"]);
    spec.tty = true;
    spec.stdin = true;
    let c = start_shim("ttyin", &spec);
    let (_, mut stream) = c.open(json!({"op": "attach", "stdin": true, "stdout": true, "stderr": true}));
    assert_eq!(c.request(json!({"op": "start"})), json!({"ok": true}));
    stream.write_all(b"abc\n").expect("send stdin");
    stream.shutdown(Shutdown::Write).expect("half-close");
    let out = String::from_utf8_lossy(&read_all(&mut stream)).into_owned();
    assert!(out.contains("got abc\r\n"), "{out:?}");
    assert!(out.ends_with("done\r\n"), "{out:?}");
    assert_eq!(c.wait_exit()["exit_code"], 0);
}

#[test]
fn kill_with_sigterm_records_143() {
    if !root_or_skip("kill_with_sigterm_records_143") {
        return;
    }
    // Without a pid namespace: a namespace's init ignores SIGTERM it has no
    // handler for, and the point here is the signal's exit code.
    let mut spec = Spec::new(&["sleep", "1000"]);
    spec.pid_ns = false;
    let c = start_shim("kill", &spec);
    assert_eq!(c.request(json!({"op": "start"})), json!({"ok": true}));
    assert_eq!(c.request(json!({"op": "state"}))["status"], "running");
    assert_eq!(c.request(json!({"op": "kill", "signal": 15, "all": false})), json!({"ok": true}));
    let exit = c.wait_exit();
    assert_eq!(exit["exit_code"], 143);
    assert_eq!(exit["signal"], 15);
    c.wait_shim_gone();
}

#[test]
fn shim_is_detached_from_the_process_that_started_it() {
    if !root_or_skip("shim_is_detached_from_the_process_that_started_it") {
        return;
    }
    let c = start_shim("detach", &Spec::new(&["sleep", "1000"]));
    assert!(c.handshake.starts_with("created "), "{:?}", c.handshake);
    // The spawned process has exited (start_shim waited for it); the daemon
    // lives on, reparented, in its own session, cwd /.
    assert!(alive(c.shim_pid));
    let f = stat_fields(c.shim_pid);
    let (ppid, sid): (i32, i32) = (f[1].parse().expect("ppid"), f[3].parse().expect("sid"));
    assert_ne!(ppid, std::process::id() as i32);
    assert_eq!(sid, c.shim_pid);
    assert_eq!(std::fs::read_link(format!("/proc/{}/cwd", c.shim_pid)).expect("cwd"), PathBuf::from("/"));
    let children =
        std::fs::read_to_string(format!("/proc/{}/task/{}/children", c.shim_pid, c.shim_pid)).unwrap_or_default();
    assert!(
        children.split_whitespace().any(|p| p == c.init_pid().to_string()),
        "init is the shim's child: {children:?}"
    );
    // Its fds: stdio on /dev/null and shim.log, nothing leaked from us.
    for fd in 0..2 {
        assert_eq!(
            std::fs::read_link(format!("/proc/{}/fd/{fd}", c.shim_pid)).expect("fd"),
            PathBuf::from("/dev/null")
        );
    }
    assert_eq!(c.request(json!({"op": "start"})), json!({"ok": true}));
    // Once it runs its program, the container has only its stdio open.
    let deadline = Instant::now() + IO_TIMEOUT;
    while !std::fs::read(format!("/proc/{}/cmdline", c.init_pid())).expect("cmdline").starts_with(b"sleep")
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    let fds: Vec<_> = std::fs::read_dir(format!("/proc/{}/fd", c.init_pid())).expect("init fds").collect();
    assert_eq!(fds.len(), 3, "container init fds: {fds:?}");
    // ...and the signals the shim blocks or ignores for itself are not
    // blocked or ignored in the container.
    let status = std::fs::read_to_string(format!("/proc/{}/status", c.init_pid())).expect("init status");
    for field in ["SigBlk:", "SigIgn:"] {
        let mask = status.lines().find_map(|l| l.strip_prefix(field)).expect("mask").trim();
        let mask = u64::from_str_radix(mask, 16).expect("hex mask");
        for sig in [libc::SIGHUP, libc::SIGINT, libc::SIGPIPE, libc::SIGCHLD] {
            assert_eq!(mask & (1 << (sig - 1)), 0, "container {field} {mask:x} has signal {sig}");
        }
    }
    assert_eq!(c.request(json!({"op": "state"}))["status"], "running");
    assert_eq!(c.request(json!({"op": "kill", "signal": 9})), json!({"ok": true}));
    assert_eq!(c.wait_exit()["exit_code"], 137);
}

#[test]
fn log_rotation_keeps_max_file_files() {
    if !root_or_skip("log_rotation_keeps_max_file_files") {
        return;
    }
    let mut spec = Spec::new(&["sh", "-c", "for i in $(seq 1 300); do echo line $i; done"]);
    spec.log_max_size = Some(2048);
    spec.log_max_file = Some(3);
    let c = start_shim("rotate", &spec);
    assert_eq!(c.request(json!({"op": "start"})), json!({"ok": true}));
    assert_eq!(c.wait_exit()["exit_code"], 0);
    let one = PathBuf::from(format!("{}.1", c.log.display()));
    let two = PathBuf::from(format!("{}.2", c.log.display()));
    let three = PathBuf::from(format!("{}.3", c.log.display()));
    for p in [&c.log, &one, &two] {
        let size = std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).len();
        assert!(size > 0 && size <= 2048, "{} has {size} bytes", p.display());
    }
    assert!(!three.exists());
    let last = c.log_lines(&c.log);
    assert_eq!(last.last().expect("lines")["log"], "line 300\n");
    let older = c.log_lines(&one);
    let first_of_live = last[0]["log"].as_str().expect("log").to_owned();
    let n: u32 = first_of_live.trim().trim_start_matches("line ").parse().expect("line number");
    assert_eq!(older.last().expect("lines")["log"], format!("line {}\n", n - 1));
}

#[test]
fn exec_streams_its_output_and_records_its_exit_code() {
    if !root_or_skip("exec_streams_its_output_and_records_its_exit_code") {
        return;
    }
    let c = start_shim("exec", &Spec::new(&["sleep", "1000"]));
    assert_eq!(c.request(json!({"op": "start"})), json!({"ok": true}));
    let process = json!({"args": ["sh", "-c", "echo hi; echo oops >&2; exit 7"], "env": ["PATH=/bin"], "cwd": "/", "user": {"uid": 0, "gid": 0}});
    let (answer, mut stream) =
        c.open(json!({"op": "exec", "process": process, "tty": false, "stdin": false, "detach": false}));
    let pid = answer["exec_pid"].as_i64().unwrap_or_else(|| panic!("answer {answer}"));
    assert_eq!(answer["ok"], true);
    assert_ne!(pid, c.init_pid() as i64);
    let (out, err, _) = read_frames(&mut stream);
    assert_eq!(String::from_utf8_lossy(&out), "hi\n");
    assert_eq!(String::from_utf8_lossy(&err), "oops\n");
    let record: Value =
        serde_json::from_slice(&std::fs::read(c.state.join(format!("exec-{pid}.exit"))).expect("exec exit file"))
            .expect("exit file is JSON");
    assert_eq!(record, json!({"exit_code": 7}));
    // Exec output is not the container's log, and the container runs on.
    assert!(c.log_lines(&c.log).is_empty());
    assert_eq!(c.request(json!({"op": "state"}))["status"], "running");

    // A tty exec with stdin and its own window size, and a detached one.
    let process = json!({"args": ["sh", "-c", "read x; echo tty $x; stty size"], "env": ["PATH=/bin"], "cwd": "/", "user": {"uid": 0, "gid": 0}});
    let (answer, mut stream) =
        c.open(json!({"op": "exec", "process": process, "tty": true, "stdin": true, "detach": false}));
    assert_eq!(answer["ok"], true, "{answer}");
    let pid = answer["exec_pid"].as_i64().expect("exec_pid");
    assert_eq!(c.request(json!({"op": "resize", "width": 90, "height": 30, "exec_pid": pid})), json!({"ok": true}));
    stream.write_all(b"yes\n").expect("exec stdin");
    let out = String::from_utf8_lossy(&read_all(&mut stream)).into_owned();
    assert!(out.contains("tty yes\r\n30 90\r\n"), "{out:?}");
    assert!(c.request(json!({"op": "resize", "width": 90, "height": 30}))["error"].is_string(), "container has no tty");
    let process =
        json!({"args": ["sh", "-c", "exit 4"], "env": ["PATH=/bin"], "cwd": "/", "user": {"uid": 0, "gid": 0}});
    let answer = c.request(json!({"op": "exec", "process": process, "tty": false, "stdin": false, "detach": true}));
    let pid = answer["exec_pid"].as_i64().unwrap_or_else(|| panic!("answer {answer}"));
    let exit_file = c.state.join(format!("exec-{pid}.exit"));
    let deadline = Instant::now() + IO_TIMEOUT;
    while !exit_file.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        serde_json::from_slice::<Value>(&std::fs::read(&exit_file).expect("detached exit")).expect("json"),
        json!({"exit_code": 4})
    );

    let missing = json!({"args": ["no-such-binary"], "env": ["PATH=/bin"], "cwd": "/", "user": {"uid": 0, "gid": 0}});
    let answer = c.request(json!({"op": "exec", "process": missing, "tty": false, "stdin": false, "detach": false}));
    assert!(answer["error"].as_str().is_some_and(|e| e.contains("no-such-binary")), "{answer}");

    assert_eq!(c.request(json!({"op": "kill", "signal": 9, "all": true})), json!({"ok": true}));
    assert_eq!(c.wait_exit()["exit_code"], 137);
}

#[test]
fn oom_kill_is_recorded() {
    if !root_or_skip("oom_kill_is_recorded") {
        return;
    }
    let mut spec = Spec::new(&["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"]);
    spec.memory_limit = Some(16 << 20);
    let c = start_shim("oom", &spec);
    assert_eq!(c.request(json!({"op": "start"})), json!({"ok": true}), "handshake {:?}", c.handshake);
    let exit = c.wait_exit();
    assert_eq!(exit["exit_code"], 137, "{exit}");
    assert_eq!(exit["signal"], 9);
    assert_eq!(exit["oom_killed"], true);
}

#[test]
fn shim_stays_under_two_mib_resident() {
    if !root_or_skip("shim_stays_under_two_mib_resident") {
        return;
    }
    let c = start_shim("rss", &Spec::new(&["sh", "-c", "while true; do echo tick; sleep 0.05; done"]));
    let (_, mut stream) = c.open(json!({"op": "attach", "stdin": false, "stdout": true, "stderr": true}));
    assert_eq!(c.request(json!({"op": "start"})), json!({"ok": true}));
    let mut h = [0u8; 13];
    stream.read_exact(&mut h).expect("first frame");
    assert_eq!(&h[8..], b"tick\n");
    let rss = vm_rss_kib(c.shim_pid);
    eprintln!("berth-shim VmRSS with a running, attached, logging container: {rss} kB");
    assert!(rss <= 2048, "shim VmRSS {rss} kB");
    assert_eq!(c.request(json!({"op": "kill", "signal": 9, "all": true})), json!({"ok": true}));
    assert_eq!(c.wait_exit()["exit_code"], 137);
}

#[test]
fn create_failure_answers_an_error_line_and_leaves_nothing_running() {
    if !root_or_skip("create_failure_answers_an_error_line_and_leaves_nothing_running") {
        return;
    }
    let mut spec = Spec::new(&["true"]);
    spec.missing_rootfs = true;
    let c = start_shim("fail", &spec);
    eprintln!("handshake for a missing rootfs: {:?}", c.handshake);
    assert!(c.handshake.starts_with("error "), "{:?}", c.handshake);
    assert!(c.handshake.ends_with('\n') && c.handshake.lines().count() == 1, "{:?}", c.handshake);
    assert!(c.handshake.len() > "error \n".len(), "{:?}", c.handshake);
    assert!(!c.sock().exists());
    assert!(!c.state.join("shim.pid").exists());
    let listed = Command::new(runtime())
        .arg("--root")
        .arg(c.dir.path().join("runtime"))
        .arg("list")
        .arg("-q")
        .output()
        .expect("runtime list");
    assert!(!String::from_utf8_lossy(&listed.stdout).contains(&c.id), "container left behind");
}

#[test]
fn slow_attacher_is_dropped_while_others_get_everything() {
    if !root_or_skip("slow_attacher_is_dropped_while_others_get_everything") {
        return;
    }
    const TOTAL: usize = 6 * 1024 * 1024;
    let mut spec = Spec::new(&["sh", "-c", &format!("head -c {TOTAL} /dev/zero; echo end >&2")]);
    spec.log = false;
    let c = start_shim("slow", &spec);
    let (_, mut fast_a) = c.open(json!({"op": "attach", "stdin": false, "stdout": true, "stderr": true}));
    let (_, mut fast_b) = c.open(json!({"op": "attach", "stdin": false, "stdout": true, "stderr": true}));
    let (_, mut slow) = c.open(json!({"op": "attach", "stdin": false, "stdout": true, "stderr": true}));
    assert_eq!(c.request(json!({"op": "start"})), json!({"ok": true}));
    let reader = std::thread::spawn(move || read_frames(&mut fast_b));
    let (out_a, err_a, _) = read_frames(&mut fast_a);
    let (out_b, err_b, _) = reader.join().expect("reader thread");
    assert_eq!(out_a.len(), TOTAL);
    assert_eq!(out_b.len(), TOTAL);
    assert_eq!(err_a, b"end\n");
    assert_eq!(err_b, b"end\n");
    assert_eq!(c.wait_exit()["exit_code"], 0);
    // The one that never read was cut off: it got less than everything.
    let got = read_all(&mut slow).len();
    assert!(got < TOTAL, "slow attacher got {got} bytes");
}

#[test]
fn pause_and_resume_change_the_state() {
    if !root_or_skip("pause_and_resume_change_the_state") {
        return;
    }
    let c = start_shim("pause", &Spec::new(&["sleep", "1000"]));
    assert_eq!(c.request(json!({"op": "start"})), json!({"ok": true}));
    let paused = c.request(json!({"op": "pause"}));
    if paused.get("error").is_some() {
        eprintln!("pause unsupported by the runtime here (no freezer?): {paused}");
    } else {
        assert_eq!(paused, json!({"ok": true}));
        assert_eq!(c.request(json!({"op": "state"}))["status"], "paused");
        assert_eq!(c.request(json!({"op": "resume"})), json!({"ok": true}));
        assert_eq!(c.request(json!({"op": "state"}))["status"], "running");
    }
    assert!(c.request(json!({"op": "bogus"}))["error"].is_string());
    assert_eq!(c.request(json!({"op": "kill", "signal": 9})), json!({"ok": true}));
    assert_eq!(c.wait_exit()["exit_code"], 137);
}

#[test]
fn runc_runs_under_the_shim_too() {
    if !root_or_skip("runc_runs_under_the_shim_too") {
        return;
    }
    let runc = PathBuf::from("/usr/sbin/runc");
    if !runc.exists() {
        eprintln!("skipping runc_runs_under_the_shim_too: no {}", runc.display());
        return;
    }
    let mut spec = Spec::new(&["sh", "-c", "echo from runc; exit 5"]);
    spec.runtime = runc;
    let c = start_shim("runc", &spec);
    let (_, mut stream) = c.open(json!({"op": "attach", "stdin": false, "stdout": true, "stderr": true}));
    assert_eq!(c.request(json!({"op": "start"})), json!({"ok": true}));
    let (out, _, _) = read_frames(&mut stream);
    assert_eq!(String::from_utf8_lossy(&out), "from runc\n");
    assert_eq!(c.wait_exit()["exit_code"], 5);
}

//! Harness for berthd's integration tests (`mod common;` in `tests/*.rs`).
//!
//! What it owns: starting a `berthd` on a private data root and socket
//! ([`Berthd`]), talking to it or to the reference dockerd ([`Reference`])
//! through the real `docker` CLI and through raw HTTP ([`Client`]), and
//! skipping with a clear message when the machine lacks what a test needs
//! ([`require!`]). What it does not: start the registry or the reference
//! dockerd; `scripts/test-env` does, and exports
//!
//! - `BERTH_TEST_REGISTRY` (host:port of the registry holding the fixtures),
//! - `BERTH_TEST_REFERENCE_HOST` (`unix://` address of the reference dockerd),
//! - `BERTH_TEST_FIXTURES` (the fixtures' OCI layout, with `fixtures.json`).
//!
//! Other knobs: `BERTH_TEST_DAEMON` runs another daemon binary in place of
//! berthd (say `/usr/sbin/dockerd`, to check a test against Docker itself),
//! `BERTH_TEST_DAEMON_ARGS` adds whitespace-separated arguments,
//! `BERTH_TEST_KEEP=1` keeps each daemon's directories, `BERTH_TEST_TIMEOUT`
//! bounds each docker command (seconds, default 300). Under `CI`, a missing
//! prerequisite fails the test instead of skipping it.
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::ffi::CString;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::ops::Deref;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// The docker CLI the tests drive, the acceptance client: the machine's
/// docker CLI 28.x (/usr/local/bin), else Debian's 20.10 client that comes
/// with docker.io (/usr/bin); `BERTH_TEST_DOCKER` overrides.
pub fn docker_cli() -> &'static str {
    static CLI: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CLI.get_or_init(|| {
        non_empty_env("BERTH_TEST_DOCKER").unwrap_or_else(|| {
            ["/usr/local/bin/docker", "/usr/bin/docker"]
                .iter()
                .find(|p| Path::new(p).exists())
                .unwrap_or(&"/usr/bin/docker")
                .to_string()
        })
    })
}

/// Debian's docker.io client (20.10), for checking older clients negotiate.
pub const DOCKER_20_10: &str = "/usr/bin/docker";

/// How long a daemon gets to answer `/_ping` after it is spawned.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a daemon gets to exit after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// How much of the daemon log a failing test prints.
const LOG_TAIL: usize = 64 * 1024;

// ---------------------------------------------------------------------------
// Environment and skipping

/// The registry holding the fixture images (`host:port`), if the test env runs.
pub fn registry() -> Option<String> {
    non_empty_env("BERTH_TEST_REGISTRY")
}

/// The reference dockerd, if the test env runs.
pub fn reference() -> Option<Reference> {
    non_empty_env("BERTH_TEST_REFERENCE_HOST").map(Reference::new)
}

/// The fixtures' OCI layout directory (see tests/fixtures/README.md).
pub fn fixtures() -> Option<PathBuf> {
    non_empty_env("BERTH_TEST_FIXTURES").map(PathBuf::from)
}

/// `fixtures.json`: per image name (`library/busybox:latest`), its manifest
/// digest, config digest, layers and platforms.
pub fn fixtures_json() -> Option<serde_json::Value> {
    let path = fixtures()?.join("fixtures.json");
    let text = fs::read_to_string(&path).ok()?;
    Some(serde_json::from_str(&text).expect("fixtures.json is JSON"))
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { geteuid() == 0 }
}

fn non_empty_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Something a test needs from the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Running as root (berthd mounts overlays and runs containers).
    Root,
    /// `BERTH_TEST_REGISTRY`: the registry with the fixtures.
    Registry,
    /// `BERTH_TEST_REFERENCE_HOST`: the reference dockerd.
    Reference,
    /// The docker CLI at [`docker_cli`].
    DockerCli,
}

impl Need {
    fn missing(self) -> Option<&'static str> {
        let ok = match self {
            Need::Root => is_root(),
            Need::Registry => registry().is_some(),
            Need::Reference => non_empty_env("BERTH_TEST_REFERENCE_HOST").is_some(),
            Need::DockerCli => Path::new(docker_cli()).exists(),
        };
        if ok {
            return None;
        }
        Some(match self {
            Need::Root => "needs root",
            Need::Registry => "needs BERTH_TEST_REGISTRY (run: eval \"$(scripts/test-env start)\")",
            Need::Reference => {
                "needs BERTH_TEST_REFERENCE_HOST (run: eval \"$(scripts/test-env start)\")"
            }
            Need::DockerCli => "needs the docker CLI (/usr/local/bin/docker, or /usr/bin/docker from scripts/install-deps)",
        })
    }
}

/// True when every need is met. Otherwise prints `skipping <test>: <why>` and
/// returns false, or panics under `CI`, where nothing may skip.
/// [`Need::DockerCli`] is always checked.
pub fn satisfied(needs: &[Need]) -> bool {
    let mut missing: Vec<&str> = Vec::new();
    for need in needs.iter().copied().chain([Need::DockerCli]) {
        if let Some(why) = need.missing() {
            if !missing.contains(&why) {
                missing.push(why);
            }
        }
    }
    if missing.is_empty() {
        return true;
    }
    let test = thread::current().name().unwrap_or("test").to_string();
    let why = missing.join("; ");
    if non_empty_env("CI").is_some_and(|v| v != "false" && v != "0") {
        panic!("{test}: {why} (CI must provide it: see scripts/test)");
    }
    eprintln!("skipping {test}: {why}");
    false
}

/// Returns from the test, with a "skipping" message, unless every need is met:
/// `common::require!(Need::Root, Need::Registry);`
macro_rules! require {
    ($($need:expr),* $(,)?) => {
        if !$crate::common::satisfied(&[$($need),*]) {
            return;
        }
    };
}
pub(crate) use require;

// ---------------------------------------------------------------------------
// Client: the docker CLI and raw HTTP against one daemon

/// Talks to one daemon: `docker -H <host>` with a private, empty
/// DOCKER_CONFIG (no user credentials or contexts leak in), and raw HTTP.
pub struct Client {
    host: String,
    socket: PathBuf,
    config_dir: PathBuf,
}

/// An HTTP response: status, headers (names lowercased), decoded body.
pub type Response = (u16, Vec<(String, String)>, Vec<u8>);

impl Client {
    fn new(host: String, config_dir: PathBuf) -> Client {
        let socket = PathBuf::from(
            host.strip_prefix("unix://")
                .unwrap_or_else(|| panic!("{host}: only unix:// hosts are supported")),
        );
        fs::create_dir_all(&config_dir).expect("create DOCKER_CONFIG dir");
        fs::write(config_dir.join("config.json"), "{}\n").expect("write DOCKER_CONFIG");
        Client {
            host,
            socket,
            config_dir,
        }
    }

    /// The daemon address: `unix:///...`.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The daemon's socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The DOCKER_CONFIG directory the CLI runs with.
    pub fn docker_config(&self) -> &Path {
        &self.config_dir
    }

    /// A `docker` command aimed at this daemon, for cases the helpers below
    /// do not cover (a custom stdin, a spawned `docker events`).
    pub fn docker_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(docker_cli());
        cmd.arg("-H").arg(&self.host).args(args);
        cmd.env("DOCKER_CONFIG", &self.config_dir)
            .env("DOCKER_CLI_HINTS", "false")
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_TLS_VERIFY")
            .env_remove("DOCKER_CERT_PATH")
            .env_remove("DOCKER_API_VERSION");
        cmd
    }

    /// Runs `docker -H <host> ARGS...`, bounded by `BERTH_TEST_TIMEOUT`.
    pub fn docker(&self, args: &[&str]) -> Output {
        run_bounded(self.docker_command(args), None, args)
    }

    /// Like [`Client::docker`], with `input` on stdin (`load`, `exec -i`).
    pub fn docker_stdin(&self, args: &[&str], input: &[u8]) -> Output {
        run_bounded(self.docker_command(args), Some(input), args)
    }

    /// Runs docker, asserts it succeeded, returns its stdout.
    pub fn docker_ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {} failed ({}):\n{}",
            args.join(" "),
            out.status,
            describe(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs docker, asserts it failed, returns its stderr.
    pub fn docker_err(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            !out.status.success(),
            "docker {} succeeded but should have failed:\n{}",
            args.join(" "),
            describe(&out)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// One HTTP/1.1 request over the daemon socket (`Connection: close`).
    /// `path` includes the query and any `/v1.xx` prefix. A body gets
    /// `Content-Type: application/json` unless `headers` sets one.
    pub fn api(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        headers: &[(&str, &str)],
    ) -> Response {
        let stream = self.connect();
        stream
            .set_read_timeout(Some(command_timeout()))
            .expect("set read timeout");
        http(stream, method, path, body, headers)
    }

    /// [`Client::api`] with a JSON body and a JSON (or null, if empty or not
    /// JSON) response.
    pub fn api_json(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let body = body.map(|v| serde_json::to_vec(v).expect("serialise JSON body"));
        let (status, _, out) = self.api(method, path, body.as_deref(), &[]);
        (
            status,
            serde_json::from_slice(&out).unwrap_or(serde_json::Value::Null),
        )
    }

    /// A connected socket, for hijacked or streaming endpoints (attach,
    /// events) that [`Client::api`] cannot read to the end.
    pub fn connect(&self) -> UnixStream {
        UnixStream::connect(&self.socket)
            .unwrap_or_else(|e| panic!("connect {}: {e}", self.socket.display()))
    }

    fn ping(&self) -> bool {
        let Ok(stream) = UnixStream::connect(&self.socket) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        matches!(
            try_http(stream, "GET", "/_ping", None, &[]),
            Ok((200, _, _))
        )
    }
}

fn command_timeout() -> Duration {
    let secs = non_empty_env("BERTH_TEST_TIMEOUT")
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    Duration::from_secs(secs)
}

/// Runs `cmd` to completion with captured output; kills it and panics after
/// the timeout, so a hung command fails its test instead of the whole run.
fn run_bounded(mut cmd: Command, input: Option<&[u8]>, args: &[&str]) -> Output {
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", docker_cli()));
    let feeder = input.map(|data| {
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let data = data.to_vec();
        thread::spawn(move || {
            let _ = stdin.write_all(&data);
        })
    });
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let out_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + command_timeout();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for docker") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let out = Output {
                status: ExitStatus::default(),
                stdout: out_reader.join().unwrap_or_default(),
                stderr: err_reader.join().unwrap_or_default(),
            };
            panic!(
                "docker {} did not finish within {:?}:\n{}",
                args.join(" "),
                command_timeout(),
                describe(&out)
            );
        }
        thread::sleep(Duration::from_millis(5));
    };
    if let Some(f) = feeder {
        let _ = f.join();
    }
    Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    }
}

fn describe(out: &Output) -> String {
    format!(
        "--- stdout\n{}--- stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

// ---------------------------------------------------------------------------
// Minimal HTTP/1.1 client

/// One request over TCP, e.g. to the registry: `http_tcp(&registry, "GET",
/// "/v2/library/busybox/tags/list", None, &[])`.
pub fn http_tcp(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    headers: &[(&str, &str)],
) -> Response {
    let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream
        .set_read_timeout(Some(command_timeout()))
        .expect("set read timeout");
    http(stream, method, path, body, headers)
}

fn http<S: Read + Write>(
    stream: S,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    headers: &[(&str, &str)],
) -> Response {
    try_http(stream, method, path, body, headers).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

fn try_http<S: Read + Write>(
    mut stream: S,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    headers: &[(&str, &str)],
) -> Result<Response, String> {
    let has = |name: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
    let mut req = format!("{method} {path} HTTP/1.1\r\n");
    if !has("host") {
        req.push_str("Host: localhost\r\n");
    }
    req.push_str("Connection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(body) = body {
        if !has("content-type") {
            req.push_str("Content-Type: application/json\r\n");
        }
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut raw = req.into_bytes();
    raw.extend_from_slice(body.unwrap_or_default());
    stream.write_all(&raw).map_err(|e| format!("write: {e}"))?;

    let mut resp = Vec::new();
    stream
        .read_to_end(&mut resp)
        .map_err(|e| format!("read: {e}"))?;
    let head_end = find(&resp, b"\r\n\r\n").ok_or("response without a header end")?;
    let head = String::from_utf8_lossy(&resp[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let rest = &resp[head_end + 4..];
    let body = if method == "HEAD" || status == 204 || status == 304 {
        Vec::new()
    } else if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        dechunk(rest)?
    } else if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        rest.get(..len)
            .ok_or("body shorter than Content-Length")?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok((status, headers, body))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = find(data, b"\r\n").ok_or("chunk size line without CRLF")?;
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out); // trailers, if any, are ignored
        }
        let chunk = data.get(..size).ok_or("truncated chunk")?;
        out.extend_from_slice(chunk);
        data = data.get(size + 2..).ok_or("chunk without CRLF")?;
    }
}

// ---------------------------------------------------------------------------
// Berthd: a daemon under test

/// A berthd on a fresh data root, exec root and socket, killed and cleaned
/// up (mounts included) on drop. Derefs to its [`Client`].
pub struct Berthd {
    client: Client,
    child: Option<Child>,
    binary: PathBuf,
    args: Vec<String>,
    /// /tmp/bt-XXXXXX: exec root, socket, pidfile, log, DOCKER_CONFIG. Short,
    /// so the socket path stays well under the 108-byte sun_path limit.
    run_dir: Option<tempfile::TempDir>,
    data_root: Option<tempfile::TempDir>,
    log_path: PathBuf,
}

impl Berthd {
    /// Starts berthd (with the registry as its mirror when there is one) and
    /// waits until it answers `/_ping`. Panics with the log if it does not.
    pub fn start() -> Berthd {
        Berthd::start_with(&[])
    }

    /// [`Berthd::start`] with extra daemon arguments (`--live-restore`, ...).
    pub fn start_with(extra: &[&str]) -> Berthd {
        let run_dir = tempfile::Builder::new()
            .prefix("bt-")
            .tempdir_in("/tmp")
            .expect("create run dir in /tmp");
        let data_root = tempfile::Builder::new()
            .prefix("berth-data-")
            .tempdir()
            .expect("create data root");
        let run = run_dir.path();
        let exec_root = run.join("exec");
        let socket = run.join("docker.sock");
        let host = format!("unix://{}", socket.display());
        assert!(host.len() < 100, "socket path too long: {host}");

        let mut args: Vec<String> = vec![
            "--data-root".into(),
            data_root.path().display().to_string(),
            "--exec-root".into(),
            exec_root.display().to_string(),
            "-H".into(),
            host.clone(),
            "--pidfile".into(),
            run.join("berthd.pid").display().to_string(),
            "--log-level".into(),
            "debug".into(),
        ];
        if let Some(reg) = registry() {
            args.extend([
                "--registry-mirror".into(),
                format!("http://{reg}"),
                "--insecure-registry".into(),
                reg,
            ]);
        }
        if let Some(more) = non_empty_env("BERTH_TEST_DAEMON_ARGS") {
            args.extend(more.split_whitespace().map(String::from));
        }
        args.extend(extra.iter().map(|s| s.to_string()));

        let binary = non_empty_env("BERTH_TEST_DAEMON")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_berthd")));
        let mut daemon = Berthd {
            client: Client::new(host, run.join("docker-config")),
            child: None,
            binary,
            args,
            log_path: run.join("berthd.log"),
            run_dir: Some(run_dir),
            data_root: Some(data_root),
        };
        daemon.spawn();
        daemon
    }

    /// The data root (`--data-root`).
    pub fn data_root(&self) -> &Path {
        self.data_root
            .as_ref()
            .expect("data root lives until drop")
            .path()
    }

    /// The exec root (`--exec-root`).
    pub fn exec_root(&self) -> PathBuf {
        self.run_dir().join("exec")
    }

    fn run_dir(&self) -> &Path {
        self.run_dir
            .as_ref()
            .expect("run dir lives until drop")
            .path()
    }

    /// The daemon's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything the daemon wrote to stdout and stderr, over all its runs.
    pub fn log(&self) -> String {
        fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Stops the daemon (SIGTERM, then SIGKILL after a grace period) if it
    /// runs, and starts it again on the same directories.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// SIGTERM, then SIGKILL if it has not exited within the grace period.
    /// Returns its exit status, or None if it was not running.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: kill(2) on the pid of our own child, which we have not reaped.
        unsafe { kill(child.id() as i32, SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("wait for daemon") {
                return Some(status);
            }
            if Instant::now() > deadline {
                eprintln!("daemon did not exit within {STOP_TIMEOUT:?} of SIGTERM: SIGKILL");
                let _ = child.kill();
                return Some(child.wait().expect("wait for daemon"));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL, as a crash would: no cleanup by the daemon. Start it again
    /// with [`Berthd::restart`].
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "daemon already running");
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open daemon log");
        let socket = self.client.socket.clone();
        let _ = fs::remove_file(&socket); // a stale socket from a killed run
        let mut cmd = Command::new(&self.binary);
        cmd.args(&self.args)
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log fd"))
            .stderr(log);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.binary.display()));
        self.child = Some(child);

        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if socket.exists() && self.client.ping() {
                return;
            }
            let child = self.child.as_mut().expect("spawned above");
            if let Some(status) = child.try_wait().expect("wait for daemon") {
                self.child = None;
                panic!(
                    "{} exited while starting ({status}); log:\n{}",
                    self.binary.display(),
                    tail(&self.log(), LOG_TAIL)
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "{} did not answer /_ping within {START_TIMEOUT:?}; log:\n{}",
                    self.binary.display(),
                    tail(&self.log(), LOG_TAIL)
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Deref for Berthd {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl Drop for Berthd {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "===== daemon log ({}) =====\n{}\n===== end of daemon log =====",
                self.log_path.display(),
                tail(&self.log(), LOG_TAIL)
            );
        }
        self.stop();
        remove_host_network(self.data_root());
        let roots: Vec<PathBuf> = [self.run_dir.as_ref(), self.data_root.as_ref()]
            .into_iter()
            .flatten()
            .map(|d| d.path().to_path_buf())
            .collect();
        kill_leftovers(&roots);
        unmount_under(&roots);
        if non_empty_env("BERTH_TEST_KEEP").is_some() {
            for dir in [self.run_dir.take(), self.data_root.take()]
                .into_iter()
                .flatten()
            {
                eprintln!("keeping {}", dir.keep().display());
            }
        }
        // The TempDirs delete themselves (ignoring errors) as fields drop.
    }
}

fn tail(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// Deletes the bridges and the nftables table a daemon named in
/// `network/owned.json` (a daemon stopped with containers running, or
/// killed, leaves them for live restore).
fn remove_host_network(data_root: &Path) {
    let Ok(text) = fs::read_to_string(data_root.join("network/owned.json")) else {
        return;
    };
    let Ok(owned) = serde_json::from_str::<serde_json::Value>(&text) else {
        return;
    };
    for link in owned["links"].as_array().into_iter().flatten().filter_map(|l| l.as_str()) {
        let _ = Command::new("ip").args(["link", "del", link]).stderr(Stdio::null()).status();
    }
    if let Some(table) = owned["table"].as_str() {
        let _ = Command::new("nft").args(["delete", "table", "ip", table]).stderr(Stdio::null()).status();
    }
}

/// The nftables table a daemon keeps its rules in (`nft list` text).
pub fn nft_table(d: &Berthd) -> String {
    let owned: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(d.data_root().join("network/owned.json")).expect("owned.json")).expect("owned.json is JSON");
    let table = owned["table"].as_str().expect("table name");
    let out = Command::new("nft").args(["list", "table", "ip", table]).output().expect("run nft");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// SIGKILLs what a killed daemon left behind, so the directories can go:
/// processes whose command line names one of `roots` (shims, runtimes), and
/// processes in another mount namespace whose root filesystem is mounted from
/// under `roots` (containers: their overlay options name the data root).
fn kill_leftovers(roots: &[PathBuf]) {
    let Ok(procs) = fs::read_dir("/proc") else {
        return;
    };
    let me = std::process::id();
    let my_mnt_ns = fs::read_link("/proc/self/ns/mnt").ok();
    let mentions_root = |text: &[u8]| {
        roots
            .iter()
            .any(|r| mentions(text, r.as_os_str().as_bytes()))
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let mut names_root = cmdline.split(|b| *b == 0).any(mentions_root);
        if !names_root && fs::read_link(entry.path().join("ns/mnt")).ok() != my_mnt_ns {
            // The process's "/" mount: field 5 of its mountinfo line is "/".
            let info = fs::read_to_string(entry.path().join("mountinfo")).unwrap_or_default();
            names_root = info
                .lines()
                .find(|l| l.split(' ').nth(4) == Some("/"))
                .is_some_and(|l| mentions_root(l.as_bytes()));
        }
        if names_root {
            // SAFETY: kill(2) has no memory effects; a pid that went away
            // meanwhile just makes it fail.
            unsafe { kill(pid as i32, SIGKILL) };
        }
    }
}

/// Whether `arg` contains the path `root` as a whole path (followed by the
/// end, a `/`, or a non-path character such as `,` or `=`), so /tmp/bt-ab
/// does not match /tmp/bt-abc.
fn mentions(arg: &[u8], root: &[u8]) -> bool {
    let mut from = 0;
    while let Some(at) = find(&arg[from..], root) {
        let end = from + at + root.len();
        match arg.get(end) {
            None => return true,
            Some(c) if !(c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_' || *c == b'.') => {
                return true
            }
            _ => from = from + at + 1,
        }
    }
    false
}

/// Detaches every mount at or below `roots` in our mount namespace, deepest
/// first (overlays, shm, volume binds a killed daemon left mounted).
fn unmount_under(roots: &[PathBuf]) {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut targets: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| roots.iter().any(|r| p.starts_with(r)))
        .collect();
    targets.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    targets.dedup();
    for target in targets {
        let Ok(c) = CString::new(target.as_os_str().as_bytes()) else {
            continue;
        };
        // SAFETY: c is a valid NUL-terminated path that outlives the call.
        unsafe { umount2(c.as_ptr(), MNT_DETACH) };
    }
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
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

// ---------------------------------------------------------------------------
// Reference: the dockerd started by scripts/test-env

/// The reference dockerd (`BERTH_TEST_REFERENCE_HOST`), with its own private
/// DOCKER_CONFIG. Derefs to its [`Client`].
///
/// The reference engine is shared by every test of a test binary, and tests
/// run in parallel threads: one test's `rmi` must not pull the rug from
/// under another's `inspect`. So a `Reference` holds a process-wide lock for
/// its life: tests that compare with dockerd take turns.
pub struct Reference {
    client: Client,
    _config: tempfile::TempDir,
    _turn: std::sync::MutexGuard<'static, ()>,
}

static REFERENCE_TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Reference {
    fn new(host: String) -> Reference {
        let turn = REFERENCE_TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let config = tempfile::Builder::new()
            .prefix("berth-ref-cli-")
            .tempdir()
            .expect("create DOCKER_CONFIG dir");
        Reference {
            client: Client::new(host, config.path().to_path_buf()),
            _config: config,
            _turn: turn,
        }
    }
}

impl Deref for Reference {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

// ---------------------------------------------------------------------------
// libc, without the libc crate (std links it anyway)

const SIGKILL: i32 = 9;
const SIGTERM: i32 = 15;
const MNT_DETACH: i32 = 2;

unsafe extern "C" {
    fn geteuid() -> u32;
    fn kill(pid: i32, sig: i32) -> i32;
    fn umount2(target: *const std::ffi::c_char, flags: i32) -> i32;
}

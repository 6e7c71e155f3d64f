//! Talking to a container's `berth-shim`: spawning it (and reading its
//! one-line handshake) and the JSON-line requests of its control socket.
//!
//! The shim outlives the engine; everything here works the same for a shim
//! this engine started and one it re-adopts after a restart.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::error::{Error, Result};

/// How to start one shim.
#[derive(Debug, Clone)]
pub struct ShimSpawn {
    pub binary: PathBuf,
    pub id: String,
    pub bundle: PathBuf,
    pub state_dir: PathBuf,
    pub runtime: PathBuf,
    pub runtime_root: PathBuf,
    pub log_path: Option<PathBuf>,
    pub log_max_size: Option<u64>,
    pub log_max_file: Option<u32>,
    pub tty: bool,
    pub stdin: bool,
}

/// Starts the shim, which creates the container (not yet running). Returns
/// the container's init PID.
pub async fn spawn(s: &ShimSpawn) -> Result<u32> {
    let mut cmd = tokio::process::Command::new(&s.binary);
    cmd.arg("--id").arg(&s.id);
    cmd.arg("--bundle").arg(&s.bundle);
    cmd.arg("--state").arg(&s.state_dir);
    cmd.arg("--runtime").arg(&s.runtime);
    cmd.arg("--runtime-root").arg(&s.runtime_root);
    match &s.log_path {
        Some(p) => {
            cmd.arg("--log-path").arg(p);
        }
        None => {
            cmd.arg("--no-log");
        }
    }
    if let Some(n) = s.log_max_size {
        cmd.arg("--log-max-size").arg(n.to_string());
    }
    if let Some(n) = s.log_max_file {
        cmd.arg("--log-max-file").arg(n.to_string());
    }
    if s.tty {
        cmd.arg("--tty");
    }
    if s.stdin {
        cmd.arg("--stdin");
    }
    cmd.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::null());
    if hybrid_cgroups_with_v2_controllers() {
        // crun refuses a hybrid cgroup host whose v2 hierarchy has
        // controllers ("cgroups in hybrid mode not supported"). The shim and
        // its runtime get a mount namespace without that hierarchy; the v1
        // controllers they use are the host's. Slave propagation keeps the
        // engine's later mounts and unmounts visible to them.
        // SAFETY: the closure runs in the forked child before exec and only
        // makes async-signal-safe system calls.
        unsafe {
            cmd.pre_exec(|| {
                use rustix::mount::{mount_change, unmount, MountPropagationFlags, UnmountFlags};
                rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS)?;
                mount_change("/", MountPropagationFlags::DOWNSTREAM | MountPropagationFlags::REC)?;
                unmount(UNIFIED, UnmountFlags::DETACH)?;
                Ok(())
            });
        }
    }
    let mut child = cmd.spawn().map_err(|e| Error::internal(format!("start shim {}: {e}", s.binary.display())))?;
    let stdout = child.stdout.take().ok_or_else(|| Error::internal("shim stdout missing"))?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).await.map_err(|e| Error::io("read shim handshake", e))?;
    // The process we spawned only forks the real shim and exits.
    let _ = child.wait().await;
    let line = line.trim();
    if let Some(pid) = line.strip_prefix("created ") {
        return pid.trim().parse().map_err(|_| Error::internal(format!("shim handshake: {line:?}")));
    }
    let msg = line.strip_prefix("error ").unwrap_or(if line.is_empty() { "shim exited without a handshake" } else { line });
    Err(Error::internal(format!("OCI runtime create failed: {}", docker_wording(msg))))
}

const UNIFIED: &str = "/sys/fs/cgroup/unified";

/// A cgroup v1 host that also mounts a v2 hierarchy with controllers.
fn hybrid_cgroups_with_v2_controllers() -> bool {
    std::fs::read_to_string(format!("{UNIFIED}/cgroup.controllers")).is_ok_and(|c| !c.trim().is_empty())
}

/// The control socket of the shim whose state is in `state_dir`.
pub fn socket(state_dir: &Path) -> PathBuf {
    state_dir.join("shim.sock")
}

async fn send(state_dir: &Path, req: &Value) -> Result<(UnixStream, Value)> {
    use tokio::io::AsyncReadExt;
    let path = socket(state_dir);
    let mut stream = UnixStream::connect(&path)
        .await
        .map_err(|e| Error::conflict(format!("container shim is not reachable ({}): {e}", path.display())))?;
    let mut line = serde_json::to_vec(req).map_err(|e| Error::internal(e.to_string()))?;
    line.push(b'\n');
    stream.write_all(&line).await.map_err(|e| Error::io("write to shim", e))?;
    // Byte by byte: after the answer line the connection may carry a
    // stream, and none of it may be swallowed by a read-ahead buffer.
    let mut answer = Vec::new();
    loop {
        let b = stream.read_u8().await.map_err(|e| Error::io("read from shim", e))?;
        if b == b'\n' {
            break;
        }
        answer.push(b);
        if answer.len() > 64 * 1024 {
            return Err(Error::internal("shim answer too long"));
        }
    }
    let v: Value = serde_json::from_slice(&answer)
        .map_err(|e| Error::internal(format!("shim answered {:?}: {e}", String::from_utf8_lossy(&answer))))?;
    if let Some(err) = v.get("error").and_then(Value::as_str) {
        return Err(Error::internal(err.to_owned()));
    }
    Ok((stream, v))
}

/// One request, one answer.
pub async fn request(state_dir: &Path, req: Value) -> Result<Value> {
    send(state_dir, &req).await.map(|(_, v)| v)
}

/// A request after whose answer the connection carries a stream (attach,
/// exec). Returns the answer and the stream.
pub async fn open_stream(state_dir: &Path, req: Value) -> Result<(Value, UnixStream)> {
    let (stream, v) = send(state_dir, &req).await?;
    Ok((v, stream))
}

/// The exit the shim recorded.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ExitRecord {
    pub exit_code: i64,
    #[serde(default)]
    pub exited_at: Option<String>,
    #[serde(default)]
    pub oom_killed: bool,
}

pub fn read_exit(state_dir: &Path) -> Option<ExitRecord> {
    let data = std::fs::read(state_dir.join("exit.json")).ok()?;
    serde_json::from_slice(&data).ok()
}

/// Whether the shim process recorded in `state_dir` is alive.
pub fn alive(state_dir: &Path) -> bool {
    let Some(pid) = std::fs::read_to_string(state_dir.join("shim.pid")).ok().and_then(|s| s.trim().parse::<i32>().ok()) else {
        return false;
    };
    rustix::process::Pid::from_raw(pid).is_some_and(|p| rustix::process::test_kill_process(p).is_ok())
}

/// Rewrites crun's messages in the words runc and Go use, which is what the
/// docker CLI matches to choose `docker run`'s exit code (127 for a missing
/// executable or path, 126 for permission denied).
fn docker_wording(msg: &str) -> String {
    // crun: "executable file `x` not found in $PATH: No such file or directory"
    if let Some(rest) = msg.strip_prefix("executable file `") {
        if let Some((exe, _)) = rest.split_once("` not found in $PATH") {
            return format!("exec: \"{exe}\": executable file not found in $PATH: unknown");
        }
    }
    msg.replace("No such file or directory", "no such file or directory").replace("Permission denied", "permission denied")
}

#[cfg(test)]
mod tests {
    #[test]
    fn crun_errors_get_the_words_the_cli_maps_to_exit_codes() {
        assert_eq!(
            super::docker_wording("executable file `nope` not found in $PATH: No such file or directory"),
            "exec: \"nope\": executable file not found in $PATH: unknown"
        );
        assert_eq!(super::docker_wording("chdir `/x`: No such file or directory"), "chdir `/x`: no such file or directory");
    }
}

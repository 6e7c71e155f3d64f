//! The vfkit backend's pure parts: the command line and the REST exchange.
//!
//! vfkit runs the VM on macOS through Apple's Virtualization.framework. This
//! module owns how a [`VmConfig`] becomes `vfkit` arguments and how the VM is
//! queried and stopped through vfkit's RESTful API (`--restful-uri
//! unix://...`): `GET /vm/state` answers `{"state", "canStart", "canPause",
//! "canResume", "canStop", "canHardStop"}`, and `POST /vm/state` with
//! `{"state": "Stop"|"HardStop"|"Pause"|"Resume"}` changes it (HTTP 200).
//! Facts are from vfkit's `doc/usage.md`.
//!
//! vfkit cannot run on this (Linux) machine, so nothing here has been tried
//! against a real vfkit: the command line and the JSON/HTTP handling are
//! unit-tested against the documented shapes and a FAKE REST server only.
//! It does not spawn vfkit or decide when to escalate
//! ([`crate::backend::escalate_stop`]).
//!
//! The guest kernel must be uncompressed on arm64 (vfkit has no decompressor).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::config::VmConfig;
use crate::paths::BerthHome;
use crate::qemu::share_tag;

/// Network attachment for the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VfkitNet {
    /// Virtualization.framework's built-in NAT.
    Nat,
    /// A user-space network stack (gvproxy-style) listening on this unixgram
    /// socket.
    UnixSocket(PathBuf),
}

/// Command-line choices that are not part of the user's [`VmConfig`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VfkitOptions {
    /// Network attachment.
    pub net: VfkitNet,
    /// Guest vsock port `berthd` listens on; vfkit listens on
    /// [`BerthHome::docker_socket`] and forwards each connection there.
    pub engine_vsock_port: u32,
}

impl Default for VfkitOptions {
    fn default() -> Self {
        Self {
            net: VfkitNet::Nat,
            engine_vsock_port: 2375,
        }
    }
}

/// A vfkit REST operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum VfkitRestError {
    /// The REST socket could not be reached or the exchange broke off.
    #[error("talk to vfkit rest socket {path:?}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The bytes back were not an HTTP/1.x response we can read.
    #[error("parse vfkit http response: {0}")]
    Http(String),
    /// vfkit answered with a non-2xx status.
    #[error("vfkit rest request failed with status {status}: {body}")]
    Status { status: u16, body: String },
    /// The `/vm/state` body was not the documented JSON.
    #[error("decode vfkit vm state")]
    DecodeState(#[source] serde_json::Error),
}

/// `--restful-uri` value for a unix socket path.
pub fn restful_uri(socket: &Path) -> String {
    format!("unix://{}", socket.to_string_lossy())
}

/// The full argv (program first) that boots the Berth VM under vfkit.
/// The config is assumed validated. The root disk is `/dev/vda`, the data
/// disk `/dev/vdb`; the guest mounts the root read-only.
pub fn vfkit_command_line(config: &VmConfig, home: &BerthHome, opts: &VfkitOptions) -> Vec<String> {
    let mut cmdline = String::from("console=hvc0 root=/dev/vda ro");
    if !config.kernel_cmdline_extra.trim().is_empty() {
        cmdline.push(' ');
        cmdline.push_str(config.kernel_cmdline_extra.trim());
    }
    let p = |path: PathBuf| path.to_string_lossy().into_owned();
    let mut a: Vec<String> = vec![
        "vfkit".into(),
        "--cpus".into(),
        config.cpus.to_string(),
        "--memory".into(),
        config.memory_mib.to_string(),
        "--bootloader".into(),
        // vfkit's option parser honours double quotes, which the kernel
        // command line needs because it contains spaces.
        format!(
            "linux,kernel={},initrd={},cmdline=\"{cmdline}\"",
            p(home.kernel()),
            p(home.initrd())
        ),
    ];
    let mut device = |spec: String| {
        a.push("--device".into());
        a.push(spec);
    };
    device(format!("virtio-blk,path={}", p(home.rootfs())));
    device(format!("virtio-blk,path={}", p(home.data_disk())));
    device(match &opts.net {
        VfkitNet::Nat => "virtio-net,nat".into(),
        VfkitNet::UnixSocket(sock) => {
            format!("virtio-net,unixSocketPath={}", sock.to_string_lossy())
        }
    });
    device(format!(
        "virtio-vsock,port={},socketURL={},listen",
        opts.engine_vsock_port,
        p(home.docker_socket())
    ));
    for (n, share) in config.shares.iter().enumerate() {
        device(format!(
            "virtio-fs,sharedDir={},mountTag={}",
            share.to_string_lossy(),
            share_tag(n)
        ));
    }
    device("virtio-rng".into());
    device(format!(
        "virtio-serial,logFilePath={}",
        p(home.console_log())
    ));
    a.push("--restful-uri".into());
    a.push(restful_uri(&home.vfkit_rest_socket()));
    a
}

/// The VM lifecycle states vfkit reports (Virtualization.framework's names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VfkitPhase {
    /// `VirtualMachineStateRunning`.
    Running,
    /// `VirtualMachineStateStopped`.
    Stopped,
    /// `VirtualMachineStateStopping`.
    Stopping,
    /// `VirtualMachineStateStarting`.
    Starting,
    /// `VirtualMachineStatePaused`.
    Paused,
    /// `VirtualMachineStateError`.
    Error,
    /// Anything else (pausing, resuming, or a name added later).
    Other(String),
}

/// Body of `GET /vm/state`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VfkitVmState {
    /// Raw state name, e.g. `VirtualMachineStateRunning`.
    pub state: String,
    #[serde(default)]
    pub can_start: bool,
    #[serde(default)]
    pub can_pause: bool,
    #[serde(default)]
    pub can_resume: bool,
    #[serde(default)]
    pub can_stop: bool,
    /// Always false before macOS 12.
    #[serde(default)]
    pub can_hard_stop: bool,
}

impl VfkitVmState {
    /// The state as a [`VfkitPhase`].
    pub fn phase(&self) -> VfkitPhase {
        match self.state.as_str() {
            "VirtualMachineStateRunning" => VfkitPhase::Running,
            "VirtualMachineStateStopped" => VfkitPhase::Stopped,
            "VirtualMachineStateStopping" => VfkitPhase::Stopping,
            "VirtualMachineStateStarting" => VfkitPhase::Starting,
            "VirtualMachineStatePaused" => VfkitPhase::Paused,
            "VirtualMachineStateError" => VfkitPhase::Error,
            other => VfkitPhase::Other(other.to_string()),
        }
    }
}

/// The state changes Berth requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum VfkitStateChange {
    /// Ask the guest to shut down.
    Stop,
    /// Pull the plug (macOS 12+).
    HardStop,
}

#[derive(Serialize)]
struct StateChangeBody {
    state: VfkitStateChange,
}

/// Raw HTTP/1.1 request for `GET /vm/state`.
pub fn get_state_request() -> String {
    "GET /vm/state HTTP/1.1\r\nHost: vfkit\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
        .to_string()
}

/// Raw HTTP/1.1 request for `POST /vm/state {"state": ...}`.
pub fn change_state_request(change: VfkitStateChange) -> String {
    let body = serde_json::to_string(&StateChangeBody { state: change })
        .expect("serializing a unit enum in a struct cannot fail");
    format!(
        "POST /vm/state HTTP/1.1\r\nHost: vfkit\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Splits a complete HTTP/1.x response (read to EOF) into status and body,
/// failing on non-2xx. Honours `Content-Length` when present; chunked
/// encoding is not expected from vfkit's small JSON replies and is rejected.
pub fn parse_http_response(raw: &str) -> Result<(u16, String), VfkitRestError> {
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| VfkitRestError::Http("no end of headers".into()))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(VfkitRestError::Http(format!(
            "bad status line {status_line:?}"
        )));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| VfkitRestError::Http(format!("bad status line {status_line:?}")))?;
    let mut body = body.to_string();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked") {
            return Err(VfkitRestError::Http(
                "chunked responses are not supported".into(),
            ));
        }
        if name.eq_ignore_ascii_case("content-length") {
            let len: usize = value
                .parse()
                .map_err(|_| VfkitRestError::Http(format!("bad content-length {value:?}")))?;
            if body.len() < len {
                return Err(VfkitRestError::Http(
                    "body shorter than content-length".into(),
                ));
            }
            body.truncate(len);
        }
    }
    if !(200..300).contains(&status) {
        return Err(VfkitRestError::Status { status, body });
    }
    Ok((status, body))
}

/// Parses the body of `GET /vm/state`.
pub fn parse_state(body: &str) -> Result<VfkitVmState, VfkitRestError> {
    serde_json::from_str(body).map_err(VfkitRestError::DecodeState)
}

/// Sends one raw request on the REST unix socket and returns the 2xx body.
pub async fn rest_exchange(socket: &Path, request: &str) -> Result<String, VfkitRestError> {
    let io = |source| VfkitRestError::Io {
        path: socket.to_path_buf(),
        source,
    };
    let mut stream = UnixStream::connect(socket).await.map_err(io)?;
    stream.write_all(request.as_bytes()).await.map_err(io)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.map_err(io)?;
    let raw =
        String::from_utf8(raw).map_err(|_| VfkitRestError::Http("response is not utf-8".into()))?;
    parse_http_response(&raw).map(|(_, body)| body)
}

/// `GET /vm/state` on `socket`.
pub async fn get_state(socket: &Path) -> Result<VfkitVmState, VfkitRestError> {
    parse_state(&rest_exchange(socket, &get_state_request()).await?)
}

/// `POST /vm/state` on `socket`.
pub async fn change_state(socket: &Path, change: VfkitStateChange) -> Result<(), VfkitRestError> {
    rest_exchange(socket, &change_state_request(change))
        .await
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Accel;
    use tokio::io::AsyncBufReadExt;
    use tokio::net::UnixListener;

    fn cfg() -> VmConfig {
        VmConfig {
            cpus: 4,
            memory_mib: 4096,
            disk_gib: 64,
            accel: Accel::Auto,
            shares: vec![PathBuf::from("/Users/u"), PathBuf::from("/tmp")],
            kernel_cmdline_extra: "quiet".into(),
        }
    }

    fn devices(argv: &[String]) -> Vec<&str> {
        argv.windows(2)
            .filter(|w| w[0] == "--device")
            .map(|w| w[1].as_str())
            .collect()
    }

    fn value<'a>(argv: &'a [String], flag: &str) -> &'a str {
        argv.windows(2)
            .find(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .unwrap()
    }

    #[test]
    fn resources_and_linux_bootloader() {
        let argv = vfkit_command_line(&cfg(), &BerthHome::new("/b"), &VfkitOptions::default());
        assert_eq!(argv[0], "vfkit");
        assert_eq!(value(&argv, "--cpus"), "4");
        assert_eq!(value(&argv, "--memory"), "4096");
        assert_eq!(
            value(&argv, "--bootloader"),
            "linux,kernel=/b/vm-image/vmlinuz,initrd=/b/vm-image/initrd.img,cmdline=\"console=hvc0 root=/dev/vda ro quiet\""
        );
    }

    #[test]
    fn devices_cover_disks_net_vsock_shares_and_console() {
        let argv = vfkit_command_line(&cfg(), &BerthHome::new("/b"), &VfkitOptions::default());
        assert_eq!(
            devices(&argv),
            [
                "virtio-blk,path=/b/vm-image/rootfs.img",
                "virtio-blk,path=/b/vm/disk.img",
                "virtio-net,nat",
                "virtio-vsock,port=2375,socketURL=/b/run/docker.sock,listen",
                "virtio-fs,sharedDir=/Users/u,mountTag=share0",
                "virtio-fs,sharedDir=/tmp,mountTag=share1",
                "virtio-rng",
                "virtio-serial,logFilePath=/b/vm/console.log",
            ]
        );
        assert_eq!(
            value(&argv, "--restful-uri"),
            "unix:///b/vm/vfkit-rest.sock"
        );
    }

    #[test]
    fn unix_socket_network_when_asked() {
        let opts = VfkitOptions {
            net: VfkitNet::UnixSocket("/b/vm/net.sock".into()),
            ..VfkitOptions::default()
        };
        let argv = vfkit_command_line(&cfg(), &BerthHome::new("/b"), &opts);
        assert!(devices(&argv).contains(&"virtio-net,unixSocketPath=/b/vm/net.sock"));
    }

    #[test]
    fn state_change_requests_carry_documented_json() {
        let stop = change_state_request(VfkitStateChange::Stop);
        assert!(stop.starts_with("POST /vm/state HTTP/1.1\r\n"));
        assert!(stop.ends_with("\r\n\r\n{\"state\":\"Stop\"}"));
        assert!(stop.contains("Content-Length: 16\r\n"));
        let hard = change_state_request(VfkitStateChange::HardStop);
        assert!(hard.ends_with("{\"state\":\"HardStop\"}"));
        assert!(get_state_request().starts_with("GET /vm/state HTTP/1.1\r\n"));
    }

    #[test]
    fn running_state_parses() {
        let body = r#"{"state":"VirtualMachineStateRunning","canStart":false,"canPause":true,"canResume":false,"canStop":true,"canHardStop":true}"#;
        let st = parse_state(body).unwrap();
        assert_eq!(st.phase(), VfkitPhase::Running);
        assert!(st.can_stop && st.can_hard_stop && !st.can_start);
    }

    #[test]
    fn unknown_state_name_is_kept() {
        let st = parse_state(r#"{"state":"VirtualMachineStateSaving"}"#).unwrap();
        assert_eq!(
            st.phase(),
            VfkitPhase::Other("VirtualMachineStateSaving".into())
        );
        assert!(!st.can_hard_stop);
    }

    #[test]
    fn malformed_state_body_is_a_decode_error() {
        assert!(matches!(
            parse_state("{\"nope\":1}"),
            Err(VfkitRestError::DecodeState(_))
        ));
    }

    #[test]
    fn http_response_honours_content_length() {
        let raw =
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}junk";
        assert_eq!(parse_http_response(raw).unwrap(), (200, "{}".to_string()));
    }

    #[test]
    fn http_error_status_is_reported_with_body() {
        let raw = "HTTP/1.1 400 Bad Request\r\nContent-Length: 13\r\n\r\ninvalid state";
        match parse_http_response(raw) {
            Err(VfkitRestError::Status { status, body }) => {
                assert_eq!(status, 400);
                assert_eq!(body, "invalid state");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn garbage_is_not_an_http_response() {
        assert!(matches!(
            parse_http_response("hello"),
            Err(VfkitRestError::Http(_))
        ));
    }

    /// A FAKE vfkit REST server (not vfkit): records the request line and
    /// body, answers with `response`, closes.
    async fn fake_vfkit_rest(listener: UnixListener, response: &'static str) -> String {
        let (stream, _) = listener.accept().await.unwrap();
        let (r, mut w) = stream.into_split();
        let mut r = tokio::io::BufReader::new(r);
        let mut request = String::new();
        let mut content_length = 0usize;
        loop {
            let mut line = String::new();
            r.read_line(&mut line).await.unwrap();
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                content_length = v.trim().parse().unwrap();
            }
            request.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0u8; content_length];
        r.read_exact(&mut body).await.unwrap();
        request.push_str(std::str::from_utf8(&body).unwrap());
        w.write_all(response.as_bytes()).await.unwrap();
        request
    }

    #[tokio::test]
    async fn get_state_against_fake_server() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("rest.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let server = tokio::spawn(fake_vfkit_rest(
            listener,
            "HTTP/1.1 200 OK\r\nContent-Length: 41\r\n\r\n{\"state\":\"VirtualMachineStateStopped\"}   ",
        ));
        let st = get_state(&sock).await.unwrap();
        assert_eq!(st.phase(), VfkitPhase::Stopped);
        assert!(server
            .await
            .unwrap()
            .starts_with("GET /vm/state HTTP/1.1\r\n"));
    }

    #[tokio::test]
    async fn hard_stop_against_fake_server() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("rest.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let server = tokio::spawn(fake_vfkit_rest(
            listener,
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        ));
        change_state(&sock, VfkitStateChange::HardStop)
            .await
            .unwrap();
        let request = server.await.unwrap();
        assert!(request.starts_with("POST /vm/state HTTP/1.1\r\n"));
        assert!(request.ends_with("{\"state\":\"HardStop\"}"));
    }
}

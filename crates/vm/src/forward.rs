//! Host-side forwarding: the engine socket relay and published ports.
//!
//! Owns two things:
//!
//! - [`serve_relay`]: the unix socket clients use (`$BERTH_HOME/run/docker.sock`)
//!   relaying each connection, byte for byte with half-close, to the engine's
//!   TCP forward on host loopback. Being a plain byte relay, it carries
//!   streaming responses and hijacked (attach/exec) connections unchanged.
//! - Published ports: [`desired_forwards`] turns the engine's container list
//!   into the set of QEMU user-net forwards that make each published port
//!   answer on the same host address and port, [`diff_forwards`] says what to
//!   add and remove, and [`hostfwd_add`]/[`hostfwd_remove`] are the HMP lines
//!   to do it.
//!
//! QEMU user networking delivers a forwarded connection (or UDP datagram) to
//! the guest's NIC address (10.0.2.15), never to the guest's loopback. A port
//! published on a specific address (`-p 127.0.0.1:8080:80`) is forwarded
//! from that host address; berthd in the guest runs with `--vm-guest`, which
//! opens loopback-published ports on every guest address, so they answer.
//! TCP and UDP both work (the VM end-to-end test checks one of each).
//!
//! It does not talk QMP itself or watch events (the supervisor does), and it
//! does not own the engine API client ([`crate::engine_client`]).

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::net::{TcpStream, UnixListener, UnixStream};

use crate::qemu::NETDEV_ID;

/// Failure to set up the relay socket.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The socket could not be bound, or its permissions set.
    #[error("serve engine socket {path:?}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Binds `path` (replacing a stale socket file), restricts it to mode 0600
/// and hands it to `owner` (uid, gid) when given.
pub fn bind_relay_socket(
    path: &Path,
    owner: Option<(u32, u32)>,
) -> Result<UnixListener, RelayError> {
    let err = |source| RelayError::Bind {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(err)?;
        }
    }
    Ok(listener)
}

/// Accepts connections on `listener` forever, relaying each to `target`.
/// A connection whose target cannot be reached is closed and logged; the
/// listener keeps serving.
pub async fn serve_relay(listener: UnixListener, target: std::net::SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((client, _)) => {
                tokio::spawn(async move {
                    if let Err(e) = relay_one(client, target).await {
                        tracing::debug!(vm = "berth", error = %e, "relay connection ended");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(vm = "berth", error = %e, "accept on engine socket failed");
                // EMFILE and the like: back off instead of spinning.
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// Relays one client connection to `target` until both directions have
/// closed; each direction's EOF is passed on as a write shutdown, so a
/// client that half-closes (as `docker exec` does after stdin) still gets
/// the rest of the response.
pub async fn relay_one(
    mut client: UnixStream,
    target: std::net::SocketAddr,
) -> std::io::Result<(u64, u64)> {
    let mut upstream = TcpStream::connect(target).await?;
    upstream.set_nodelay(true)?;
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await
}

/// Transport of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Proto {
    fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// One QEMU user-net forward: host `host_ip:host_port` → guest `guest_port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortForward {
    /// TCP or UDP.
    pub proto: Proto,
    /// Host address to listen on (0.0.0.0 for all).
    pub host_ip: Ipv4Addr,
    /// Host port, equal to the port published in the VM.
    pub host_port: u16,
    /// Port in the guest the engine publishes on.
    pub guest_port: u16,
}

impl fmt::Display for PortForward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}->{}/{}",
            self.host_ip,
            self.host_port,
            self.guest_port,
            self.proto.as_str()
        )
    }
}

/// The HMP line that adds `fwd` to the guest NIC.
pub fn hostfwd_add(fwd: &PortForward) -> String {
    format!(
        "hostfwd_add {NETDEV_ID} {}:{}:{}-:{}",
        fwd.proto.as_str(),
        fwd.host_ip,
        fwd.host_port,
        fwd.guest_port
    )
}

/// The HMP line that removes `fwd`.
pub fn hostfwd_remove(fwd: &PortForward) -> String {
    format!(
        "hostfwd_remove {NETDEV_ID} {}:{}:{}",
        fwd.proto.as_str(),
        fwd.host_ip,
        fwd.host_port
    )
}

/// The forwards that make every port published by a running container (as
/// `GET /containers/json` lists them) answer on the host at the same address
/// and port. IPv6 wildcard bindings (`::`) map to the IPv4 wildcard, which is
/// all QEMU user networking forwards; other IPv6 addresses and entries without
/// a public port are skipped.
pub fn desired_forwards(containers: &[Value]) -> BTreeSet<PortForward> {
    let mut out = BTreeSet::new();
    for c in containers {
        let Some(ports) = c.get("Ports").and_then(Value::as_array) else {
            continue;
        };
        for p in ports {
            let Some(public) = p
                .get("PublicPort")
                .and_then(Value::as_u64)
                .and_then(|v| u16::try_from(v).ok())
                .filter(|v| *v != 0)
            else {
                continue;
            };
            let proto = match p.get("Type").and_then(Value::as_str) {
                Some("udp") => Proto::Udp,
                Some("tcp") | None => Proto::Tcp,
                Some(_) => continue, // sctp: QEMU cannot forward it
            };
            let ip = p.get("IP").and_then(Value::as_str).unwrap_or("");
            let host_ip = match ip {
                "" | "::" => Ipv4Addr::UNSPECIFIED,
                other => match other.parse::<Ipv4Addr>() {
                    Ok(v4) => v4,
                    Err(_) => continue,
                },
            };
            out.insert(PortForward {
                proto,
                host_ip,
                host_port: public,
                guest_port: public,
            });
        }
    }
    out
}

/// What to add and remove to turn `current` into `desired`; removals first
/// in the result's use, so a port that moved between addresses is freed
/// before it is taken again.
pub fn diff_forwards(
    current: &BTreeSet<PortForward>,
    desired: &BTreeSet<PortForward>,
) -> (Vec<PortForward>, Vec<PortForward>) {
    let add = desired.difference(current).copied().collect();
    let remove = current.difference(desired).copied().collect();
    (add, remove)
}

/// Whether the host could listen on `fwd`'s address and port right now.
/// Returns the OS error when it cannot (typically "address in use"), so the
/// caller can say why a published port is not forwarded.
pub fn host_port_available(fwd: &PortForward) -> Result<(), std::io::Error> {
    let addr = (fwd.host_ip, fwd.host_port);
    match fwd.proto {
        Proto::Tcp => std::net::TcpListener::bind(addr).map(drop),
        Proto::Udp => std::net::UdpSocket::bind(addr).map(drop),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn fwd(proto: Proto, ip: [u8; 4], port: u16) -> PortForward {
        PortForward {
            proto,
            host_ip: Ipv4Addr::from(ip),
            host_port: port,
            guest_port: port,
        }
    }

    #[test]
    fn published_ports_become_same_port_forwards() {
        let containers = vec![
            json!({"Id": "a", "Ports": [
                {"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": 8080, "Type": "tcp"},
                {"IP": "::", "PrivatePort": 80, "PublicPort": 8080, "Type": "tcp"},
                {"PrivatePort": 443, "Type": "tcp"}
            ]}),
            json!({"Id": "b", "Ports": [
                {"IP": "127.0.0.1", "PrivatePort": 53, "PublicPort": 5353, "Type": "udp"},
                {"IP": "fe80::1", "PrivatePort": 1, "PublicPort": 9999, "Type": "tcp"},
                {"IP": "0.0.0.0", "PrivatePort": 1, "PublicPort": 7777, "Type": "sctp"}
            ]}),
            json!({"Id": "c"}),
        ];
        let want: BTreeSet<_> = [
            fwd(Proto::Tcp, [0, 0, 0, 0], 8080),
            fwd(Proto::Udp, [127, 0, 0, 1], 5353),
        ]
        .into();
        assert_eq!(desired_forwards(&containers), want);
    }

    #[test]
    fn diff_adds_new_and_removes_gone() {
        let current: BTreeSet<_> = [
            fwd(Proto::Tcp, [0, 0, 0, 0], 8080),
            fwd(Proto::Tcp, [0, 0, 0, 0], 9090),
        ]
        .into();
        let desired: BTreeSet<_> = [
            fwd(Proto::Tcp, [0, 0, 0, 0], 8080),
            fwd(Proto::Udp, [0, 0, 0, 0], 9090),
        ]
        .into();
        let (add, remove) = diff_forwards(&current, &desired);
        assert_eq!(add, [fwd(Proto::Udp, [0, 0, 0, 0], 9090)]);
        assert_eq!(remove, [fwd(Proto::Tcp, [0, 0, 0, 0], 9090)]);
        let (add, remove) = diff_forwards(&desired, &desired);
        assert!(add.is_empty() && remove.is_empty());
    }

    #[test]
    fn hmp_lines_name_the_netdev() {
        let f = fwd(Proto::Udp, [127, 0, 0, 1], 5353);
        assert_eq!(hostfwd_add(&f), "hostfwd_add n0 udp:127.0.0.1:5353-:5353");
        assert_eq!(hostfwd_remove(&f), "hostfwd_remove n0 udp:127.0.0.1:5353");
        assert_eq!(f.to_string(), "127.0.0.1:5353->5353/udp");
    }

    #[test]
    fn taken_host_port_is_detected() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let f = fwd(Proto::Tcp, [127, 0, 0, 1], port);
        assert_eq!(
            host_port_available(&f).unwrap_err().kind(),
            std::io::ErrorKind::AddrInUse
        );
        drop(l);
        assert!(host_port_available(&f).is_ok());
    }

    /// A local TCP echo server (stands in for the engine's forward).
    async fn echo_server() -> std::net::SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    tokio::io::copy(&mut r, &mut w).await.unwrap();
                    w.shutdown().await.unwrap();
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn relay_carries_bytes_both_ways_and_half_close() {
        let target = echo_server().await;
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("run/docker.sock");
        let listener = bind_relay_socket(&sock, None).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        tokio::spawn(serve_relay(listener, target));

        let mut c = UnixStream::connect(&sock).await.unwrap();
        let payload = vec![7u8; 1 << 20];
        c.write_all(&payload).await.unwrap();
        // Half-close: the echo server only finishes once it sees our EOF,
        // and its reply must still reach us afterwards.
        c.shutdown().await.unwrap();
        let mut back = Vec::new();
        c.read_to_end(&mut back).await.unwrap();
        assert_eq!(back.len(), payload.len());
        assert!(back == payload);
    }

    #[tokio::test]
    async fn relay_to_dead_target_closes_client_and_keeps_serving() {
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("docker.sock");
        std::fs::write(&sock, b"stale").unwrap();
        let listener = bind_relay_socket(&sock, None).unwrap();
        tokio::spawn(serve_relay(listener, dead));
        for _ in 0..2 {
            let mut c = UnixStream::connect(&sock).await.unwrap();
            let mut buf = Vec::new();
            c.read_to_end(&mut buf).await.unwrap();
            assert!(buf.is_empty());
        }
    }
}

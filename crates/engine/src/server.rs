//! Listening: the `-H` addresses dockerd accepts, served with the API.
//!
//! A unix socket is created owner/group-only (0660, group `docker` when it
//! exists); TCP is refused unless it is a loopback address, since the API is
//! root-equivalent.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::engine::Engine;

/// One `-H` address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

/// Why an address could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("invalid host {0:?}: expected unix:///path or tcp://addr:port")]
    InvalidHost(String),
    #[error("refusing to listen on {0} without TLS: the API gives root on this machine; use a loopback address")]
    InsecureTcp(String),
    #[error("another process is already serving on {0}")]
    SocketInUse(String),
    #[error("listen on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
}

impl Host {
    /// Parses dockerd's `-H` syntax.
    pub fn parse(s: &str) -> Result<Self, ServeError> {
        let invalid = || ServeError::InvalidHost(s.to_owned());
        if let Some(path) = s.strip_prefix("unix://") {
            if path.is_empty() {
                return Ok(Host::Unix(PathBuf::from("/var/run/docker.sock")));
            }
            return Ok(Host::Unix(PathBuf::from(path)));
        }
        if let Some(addr) = s.strip_prefix("tcp://") {
            let addr = addr.trim_end_matches('/');
            let addr = if addr.starts_with(':') { format!("127.0.0.1{addr}") } else { addr.to_owned() };
            let addr = if addr.contains(':') { addr } else { format!("{addr}:2375") };
            let addr = addr.replace("localhost:", "127.0.0.1:");
            return addr.parse().map(Host::Tcp).map_err(|_| invalid());
        }
        if s.starts_with('/') {
            return Ok(Host::Unix(PathBuf::from(s)));
        }
        Err(invalid())
    }
}

impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Host::Unix(p) => write!(f, "unix://{}", p.display()),
            Host::Tcp(a) => write!(f, "tcp://{a}"),
        }
    }
}

enum Bound {
    Unix(tokio::net::UnixListener),
    Tcp(tokio::net::TcpListener),
}

/// Binds every host first (so a bad one fails start-up before anything is
/// served), then serves them all until `shutdown` resolves.
pub async fn serve(
    engine: Arc<Engine>,
    hosts: &[Host],
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let mut bound = Vec::new();
    for h in hosts {
        bound.push(bind(h).await?);
    }
    let app = crate::api::service(engine);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let mut tasks = Vec::new();
    for b in bound {
        let app = app.clone();
        let mut rx = stop_rx.clone();
        let stop = async move {
            let _ = rx.wait_for(|v| *v).await;
        };
        tasks.push(tokio::spawn(async move {
            match b {
                Bound::Unix(l) => axum::serve(l, app).with_graceful_shutdown(stop).await,
                Bound::Tcp(l) => axum::serve(l, app).with_graceful_shutdown(stop).await,
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

async fn bind(h: &Host) -> Result<Bound, ServeError> {
    let listen_err = |source| ServeError::Listen { addr: h.to_string(), source };
    match h {
        Host::Tcp(addr) => {
            if !addr.ip().is_loopback() {
                return Err(ServeError::InsecureTcp(h.to_string()));
            }
            Ok(Bound::Tcp(tokio::net::TcpListener::bind(addr).await.map_err(listen_err)?))
        }
        Host::Unix(path) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(listen_err)?;
            }
            if path.exists() {
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    return Err(ServeError::SocketInUse(h.to_string()));
                }
                std::fs::remove_file(path).map_err(listen_err)?;
            }
            // Create the socket with no access for others from the first
            // instant, then open it to the group.
            let old = rustix::process::umask(rustix::fs::Mode::from_bits_truncate(0o177));
            let listener = tokio::net::UnixListener::bind(path);
            rustix::process::umask(old);
            let listener = listener.map_err(listen_err)?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(listen_err)?;
            if let Some(gid) = docker_group() {
                let _ = rustix::fs::chown(path, None, Some(rustix::fs::Gid::from_raw(gid)));
            }
            Ok(Bound::Unix(listener))
        }
    }
}

fn docker_group() -> Option<u32> {
    let groups = std::fs::read_to_string(Path::new("/etc/group")).ok()?;
    groups.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == "docker").then(|| f.nth(1)?.parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_parse_like_dockerd() {
        assert_eq!(Host::parse("unix:///tmp/x.sock").unwrap(), Host::Unix("/tmp/x.sock".into()));
        assert_eq!(Host::parse("tcp://127.0.0.1:2375").unwrap(), Host::Tcp("127.0.0.1:2375".parse().unwrap()));
        assert_eq!(Host::parse("tcp://:2376").unwrap(), Host::Tcp("127.0.0.1:2376".parse().unwrap()));
        assert!(Host::parse("http://x").is_err());
    }
}

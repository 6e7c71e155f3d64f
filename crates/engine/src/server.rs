//! Listening: the `-H` addresses dockerd accepts, served with the API.
//!
//! A unix socket is created owner/group-only (0660, group `docker` when it
//! exists). TCP is refused unless it is a loopback address or clients must
//! present a certificate signed by the configured CA (`--tlsverify`), since
//! the API is root-equivalent.

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
    #[error("refusing to listen on {0} without TLS: the API gives root on this machine; use a loopback address or --tlsverify")]
    InsecureTcp(String),
    #[error("another process is already serving on {0}")]
    SocketInUse(String),
    #[error("tls: {0}")]
    Tls(String),
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

/// `--tls*` settings, as dockerd's flags.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    pub ca: Option<PathBuf>,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Require and verify client certificates against `ca`.
    pub verify: bool,
}

fn tls_acceptor(t: &TlsFiles) -> Result<tokio_rustls::TlsAcceptor, ServeError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls;
    let fail = |what: &str, p: &Path, e: &dyn std::fmt::Display| ServeError::Tls(format!("{what} {}: {e}", p.display()));
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&t.cert)
        .map_err(|e| fail("read certificate", &t.cert, &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| fail("parse certificate", &t.cert, &e))?;
    let key = PrivateKeyDer::from_pem_file(&t.key).map_err(|e| fail("read key", &t.key, &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ServeError::Tls(e.to_string()))?;
    let builder = if t.verify {
        let ca = t.ca.as_ref().ok_or_else(|| ServeError::Tls("--tlsverify needs --tlscacert".into()))?;
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca).map_err(|e| fail("read CA", ca, &e))? {
            roots.add(c.map_err(|e| fail("parse CA", ca, &e))?).map_err(|e| fail("use CA", ca, &e))?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| ServeError::Tls(e.to_string()))?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let config = builder.with_single_cert(certs, key).map_err(|e| ServeError::Tls(e.to_string()))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// A TCP listener whose connections are TLS, for axum. A failed handshake
/// drops that connection only.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, addr) = match self.tcp.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            match tokio::time::timeout(std::time::Duration::from_secs(10), self.acceptor.accept(stream)).await {
                Ok(Ok(tls)) => return (tls, addr),
                Ok(Err(e)) => tracing::info!(peer = %addr, error = %e, "TLS handshake refused"),
                Err(_) => tracing::info!(peer = %addr, "TLS handshake timed out"),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

enum Bound {
    Unix(tokio::net::UnixListener),
    Tcp(tokio::net::TcpListener),
    Tls(TlsListener),
}

/// Binds every host first (so a bad one fails start-up before anything is
/// served), then serves them all until `shutdown` resolves.
pub async fn serve(
    engine: Arc<Engine>,
    hosts: &[Host],
    tls: Option<&TlsFiles>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let acceptor = tls.map(tls_acceptor).transpose()?;
    let verified = tls.is_some_and(|t| t.verify);
    let mut bound = Vec::new();
    for h in hosts {
        bound.push(bind(h, acceptor.as_ref(), verified).await?);
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
                Bound::Tls(l) => axum::serve(l, app).with_graceful_shutdown(stop).await,
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

async fn bind(h: &Host, tls: Option<&tokio_rustls::TlsAcceptor>, verified: bool) -> Result<Bound, ServeError> {
    let listen_err = |source| ServeError::Listen { addr: h.to_string(), source };
    match h {
        Host::Tcp(addr) => {
            if !addr.ip().is_loopback() && !verified {
                return Err(ServeError::InsecureTcp(h.to_string()));
            }
            let tcp = tokio::net::TcpListener::bind(addr).await.map_err(listen_err)?;
            Ok(match tls {
                Some(acceptor) => Bound::Tls(TlsListener { tcp, acceptor: acceptor.clone() }),
                None => Bound::Tcp(tcp),
            })
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

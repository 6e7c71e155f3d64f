//! TCP 0.0.0.0:2375 → the engine's unix socket. berthd serves TCP only on
//! loopback or with TLS; QEMU's port forward arrives on the guest's address,
//! so berth-init relays. Only the host (QEMU's gateway address, from which
//! forwarded connections come) and loopback may connect: containers can reach
//! the guest's address too and must not get the engine socket.
//!
//! One thread per direction; EOF on one side is passed on as a half-close
//! (shutdown of the write side), so hijacked streams (`docker attach`,
//! `exec`, `logs -f`) behave as on the unix socket.

use std::io;
use std::net::{IpAddr, Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

pub const PORT: u16 = 2375;

/// Whether a peer may use the relay.
pub fn peer_allowed(peer: IpAddr, host_gateway: IpAddr) -> bool {
    peer.is_loopback() || peer == host_gateway
}

/// Binds the listener (before the engine is up: early clients get a closed
/// connection, not a refused one, and the host's forward exists from boot).
pub fn bind() -> io::Result<TcpListener> {
    TcpListener::bind(("0.0.0.0", PORT))
}

/// Serves forever in the calling thread.
pub fn serve(listener: TcpListener, socket: PathBuf, host_gateway: IpAddr) {
    let mut refused_logged = 0u32;
    for conn in listener.incoming() {
        let tcp = match conn {
            Ok(c) => c,
            Err(e) => {
                crate::log!("relay: accept: {e}");
                std::thread::sleep(std::time::Duration::from_millis(100));
                continue;
            }
        };
        let peer = match tcp.peer_addr() {
            Ok(p) => p.ip(),
            Err(_) => continue,
        };
        if !peer_allowed(peer, host_gateway) {
            if refused_logged < 10 {
                crate::log!("relay: refused connection from {peer} (only the host at {host_gateway} may use the engine port)");
                refused_logged += 1;
            }
            continue;
        }
        let socket = socket.clone();
        let spawned = std::thread::Builder::new().name("relay".into()).spawn(move || {
            if let Err(e) = relay_one(tcp, &socket) {
                if e.kind() != io::ErrorKind::NotFound && e.kind() != io::ErrorKind::ConnectionRefused {
                    crate::log!("relay: {e}");
                }
            }
        });
        if let Err(e) = spawned {
            crate::log!("relay: spawn thread: {e}");
        }
    }
}

fn relay_one(tcp: TcpStream, socket: &Path) -> io::Result<()> {
    let unix = UnixStream::connect(socket)?;
    let _ = tcp.set_nodelay(true);
    let (tcp_r, unix_w) = (tcp.try_clone()?, unix.try_clone()?);
    let upstream = std::thread::Builder::new().name("relay-up".into()).spawn(move || {
        pump(tcp_r, unix_w, |w| w.shutdown(Shutdown::Write));
    })?;
    pump(unix, tcp, |w| w.shutdown(Shutdown::Write));
    let _ = upstream.join();
    Ok(())
}

/// Copies until EOF or error, then half-closes the destination.
fn pump<R: io::Read, W: io::Write>(mut from: R, mut to: W, half_close: impl FnOnce(&W) -> io::Result<()>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    let _ = to.flush();
    let _ = half_close(&to);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixListener;

    #[test]
    fn only_host_and_loopback_may_connect() {
        let gw: IpAddr = "10.0.2.2".parse().unwrap();
        assert!(peer_allowed("10.0.2.2".parse().unwrap(), gw));
        assert!(peer_allowed("127.0.0.1".parse().unwrap(), gw));
        assert!(!peer_allowed("172.17.0.2".parse().unwrap(), gw));
        assert!(!peer_allowed("10.0.2.15".parse().unwrap(), gw));
    }

    #[test]
    fn relay_passes_bytes_both_ways_and_half_closes() {
        let dir = std::env::temp_dir().join(format!("berth-init-relay-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let sock = dir.join("s.sock");
        let _ = std::fs::remove_file(&sock);
        let ul = UnixListener::bind(&sock).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = ul.accept().unwrap();
            let mut req = Vec::new();
            s.read_to_end(&mut req).unwrap(); // ends only on the client's half-close
            s.write_all(b"echo:").unwrap();
            s.write_all(&req).unwrap();
        });
        let tl = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = tl.local_addr().unwrap();
        let sock2 = sock.clone();
        std::thread::spawn(move || serve(tl, sock2, "10.0.2.2".parse().unwrap()));
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(b"hello").unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut resp = Vec::new();
        c.read_to_end(&mut resp).unwrap();
        assert_eq!(resp, b"echo:hello");
        server.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}

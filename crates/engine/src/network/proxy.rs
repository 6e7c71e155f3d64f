//! The userland proxy for published ports, like `docker-proxy`.
//!
//! This module owns listening on a host address and relaying each TCP
//! connection or UDP flow to a container address ([`publish`]), and dockerd's
//! wording when the host port cannot be taken ([`port_in_use_message`]).
//!
//! It does not own NAT rules (the engine's nftables code does the fast path;
//! the proxy covers what NAT misses, such as connections from the host's own
//! loopback), nor which ports are published.
//!
//! IPv6 host addresses are bound with `IPV6_V6ONLY`, as Go's `tcp6`/`udp6`
//! listeners are, so `0.0.0.0:p` and `[::]:p` can be published side by side.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tracing::{debug, warn, Instrument};

/// A UDP flow with no datagram in either direction for this long is dropped
/// (docker-proxy's conntrack timeout).
pub const UDP_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Largest UDP datagram relayed.
const UDP_BUFFER: usize = 65_535;
/// Pending connections the kernel queues on a published TCP port.
const TCP_BACKLOG: u32 = 1024;

/// Transport protocol of a published port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    /// TCP: each accepted connection is relayed on its own connection.
    Tcp,
    /// UDP: each client address gets its own flow to the target.
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// A published port being served. Dropping it (or [`close`](Self::close))
/// stops listening and aborts every task, live connections and UDP flows
/// included.
#[derive(Debug)]
pub struct Published {
    local: SocketAddr,
    proto: Proto,
    target: SocketAddr,
    /// Accept loop (TCP) or receive loop (UDP); owns the listening socket.
    main: JoinHandle<()>,
    /// Per-connection (TCP) and per-flow (UDP) tasks, shared with `main` so
    /// they can be aborted and awaited from here.
    children: Arc<Mutex<JoinSet<()>>>,
}

impl Published {
    /// The bound host address (the actual port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The protocol served.
    pub fn proto(&self) -> Proto {
        self.proto
    }

    /// Where connections and datagrams are relayed to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Stops listening, aborts every connection and flow, and returns once
    /// all their sockets are closed (so the host port can be bound again).
    pub async fn close(mut self) {
        self.main.abort();
        // Resolves only after the task's future (and its socket) is dropped.
        let _ = (&mut self.main).await;
        let mut children = std::mem::take(&mut *lock(&self.children));
        children.shutdown().await;
    }
}

impl Drop for Published {
    fn drop(&mut self) {
        self.main.abort();
        lock(&self.children).abort_all();
    }
}

fn lock(children: &Mutex<JoinSet<()>>) -> std::sync::MutexGuard<'_, JoinSet<()>> {
    // A poisoned set is still a valid set of handles to abort.
    children
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Publishes `host` (`proto`) and relays it to `target`.
///
/// Binds first, so a port in use fails here with the OS error (see
/// [`port_in_use_message`]) and nothing is left running. Port 0 picks a free
/// port; see [`Published::local_addr`]. Must be called inside a tokio runtime.
pub async fn publish(host: SocketAddr, proto: Proto, target: SocketAddr) -> io::Result<Published> {
    let children = Arc::new(Mutex::new(JoinSet::new()));
    let span = tracing::debug_span!("port_proxy", %proto, %host, %target);
    let (local, main) = match proto {
        Proto::Tcp => {
            let listener = bind_tcp(host)?;
            let local = listener.local_addr()?;
            let task = tokio::spawn(serve_tcp(listener, target, children.clone()).instrument(span));
            (local, task)
        }
        Proto::Udp => {
            let socket = bind_udp(host)?;
            let local = socket.local_addr()?;
            let task = tokio::spawn(serve_udp(socket, target, children.clone()).instrument(span));
            (local, task)
        }
    };
    Ok(Published {
        local,
        proto,
        target,
        main,
        children,
    })
}

/// dockerd's message for a failure to publish `host`/`proto`.
///
/// `EADDRINUSE` gives `Bind for 0.0.0.0:6379 failed: port is already
/// allocated`; anything else gives the userland-proxy form, e.g.
/// `Error starting userland proxy: listen tcp4 0.0.0.0:6379: bind: permission denied`,
/// with the OS text lower-cased as Go prints it.
pub fn port_in_use_message(host: SocketAddr, proto: Proto, err: &io::Error) -> String {
    if err.raw_os_error() == Some(libc::EADDRINUSE) {
        return format!("Bind for {host} failed: port is already allocated");
    }
    let family = if host.is_ipv4() { "4" } else { "6" };
    let text = match err.raw_os_error() {
        Some(code) => {
            // std prints "Permission denied (os error 13)"; Go prints "permission denied".
            let full = io::Error::from_raw_os_error(code).to_string();
            match full.rfind(" (os error ") {
                Some(at) => full[..at].to_string(),
                None => full,
            }
        }
        None => err.to_string(),
    };
    format!(
        "Error starting userland proxy: listen {proto}{family} {host}: bind: {}",
        text.to_lowercase()
    )
}

fn bind_tcp(host: SocketAddr) -> io::Result<TcpListener> {
    let socket = match host {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => {
            let socket = TcpSocket::new_v6()?;
            set_v6only(socket.as_raw_fd())?;
            socket
        }
    };
    // As Go and docker-proxy do, so a port in TIME_WAIT can be reused.
    socket.set_reuseaddr(true)?;
    socket.bind(host)?;
    socket.listen(TCP_BACKLOG)
}

fn bind_udp(host: SocketAddr) -> io::Result<UdpSocket> {
    let socket = match host {
        SocketAddr::V4(_) => std::net::UdpSocket::bind(host)?,
        SocketAddr::V6(v6) => {
            // std has no way to set IPV6_V6ONLY before bind.
            // SAFETY: plain socket(2) call; the result is checked below.
            let fd = unsafe {
                libc::socket(
                    libc::AF_INET6,
                    libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                    0,
                )
            };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `fd` was just created and is owned by nothing else.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            set_v6only(fd.as_raw_fd())?;
            // SAFETY: sockaddr_in6 is plain old data; all-zero is a valid value.
            let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sa.sin6_port = v6.port().to_be();
            sa.sin6_flowinfo = v6.flowinfo();
            sa.sin6_addr.s6_addr = v6.ip().octets();
            sa.sin6_scope_id = v6.scope_id();
            // SAFETY: `sa` is a valid sockaddr_in6 and the length matches it.
            let rc = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&sa as *const libc::sockaddr_in6).cast(),
                    std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                )
            };
            if rc < 0 {
                return Err(io::Error::last_os_error());
            }
            std::net::UdpSocket::from(fd)
        }
    };
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket)
}

fn set_v6only(fd: std::os::fd::RawFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: `fd` is an open socket; `on` is a c_int and the length matches it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Accept loop: one child task per connection.
async fn serve_tcp(listener: TcpListener, target: SocketAddr, children: Arc<Mutex<JoinSet<()>>>) {
    loop {
        let (client, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Typically EMFILE: back off instead of spinning.
                warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let span = tracing::debug_span!("connection", %peer);
        let mut set = lock(&children);
        while set.try_join_next().is_some() {}
        set.spawn(relay_tcp(client, target).instrument(span));
    }
}

async fn relay_tcp(mut client: TcpStream, target: SocketAddr) {
    let mut upstream = match TcpStream::connect(target).await {
        Ok(stream) => stream,
        Err(error) => {
            // The client sees its connection closed, as with docker-proxy.
            debug!(%error, "connect to container failed");
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    // Shuts down each write side when the other side's read ends, so a
    // half-close travels through the proxy.
    if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        debug!(%error, "connection ended with an error");
    }
}

/// One UDP flow: a socket connected to the target, used for one client.
struct Flow {
    upstream: Arc<UdpSocket>,
    last_active: Instant,
}

type Flows = Arc<Mutex<HashMap<SocketAddr, Flow>>>;

/// Receive loop: datagrams from each client go out on that client's own
/// upstream socket; a child task per flow relays the replies back.
async fn serve_udp(socket: UdpSocket, target: SocketAddr, children: Arc<Mutex<JoinSet<()>>>) {
    let socket = Arc::new(socket);
    let flows: Flows = Arc::new(Mutex::new(HashMap::new()));
    let mut buf = vec![0u8; UDP_BUFFER];
    loop {
        let (n, client) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(error) => {
                debug!(%error, "udp receive failed");
                continue;
            }
        };
        let existing = {
            let mut flows = flows.lock().unwrap_or_else(|p| p.into_inner());
            flows.get_mut(&client).map(|flow| {
                flow.last_active = Instant::now();
                flow.upstream.clone()
            })
        };
        let upstream = match existing {
            Some(upstream) => upstream,
            None => match new_flow(&socket, target, client, &flows, &children).await {
                Ok(upstream) => upstream,
                Err(error) => {
                    debug!(%client, %error, "cannot open udp flow to container");
                    continue;
                }
            },
        };
        if let Err(error) = upstream.send(&buf[..n]).await {
            debug!(%client, %error, "udp send to container failed");
        }
    }
}

async fn new_flow(
    socket: &Arc<UdpSocket>,
    target: SocketAddr,
    client: SocketAddr,
    flows: &Flows,
    children: &Arc<Mutex<JoinSet<()>>>,
) -> io::Result<Arc<UdpSocket>> {
    let local: SocketAddr = if target.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let upstream = UdpSocket::bind(local).await?;
    upstream.connect(target).await?;
    let upstream = Arc::new(upstream);
    flows.lock().unwrap_or_else(|p| p.into_inner()).insert(
        client,
        Flow {
            upstream: upstream.clone(),
            last_active: Instant::now(),
        },
    );
    let span = tracing::debug_span!("udp_flow", %client);
    let mut set = lock(children);
    while set.try_join_next().is_some() {}
    set.spawn(
        relay_udp_replies(socket.clone(), upstream.clone(), client, flows.clone()).instrument(span),
    );
    Ok(upstream)
}

/// Relays replies from the container to `client` until the flow has been
/// idle for [`UDP_IDLE_TIMEOUT`], then forgets it.
async fn relay_udp_replies(
    socket: Arc<UdpSocket>,
    upstream: Arc<UdpSocket>,
    client: SocketAddr,
    flows: Flows,
) {
    let mut buf = vec![0u8; UDP_BUFFER];
    loop {
        let deadline = {
            let flows = flows.lock().unwrap_or_else(|p| p.into_inner());
            match flows.get(&client) {
                Some(flow) if Arc::ptr_eq(&flow.upstream, &upstream) => {
                    flow.last_active + UDP_IDLE_TIMEOUT
                }
                _ => return,
            }
        };
        match tokio::time::timeout_at(deadline, upstream.recv(&mut buf)).await {
            Ok(Ok(n)) => {
                if let Some(flow) = flows
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_mut(&client)
                {
                    flow.last_active = Instant::now();
                }
                if let Err(error) = socket.send_to(&buf[..n], client).await {
                    debug!(%error, "udp send to client failed");
                }
            }
            // ECONNREFUSED from an ICMP error: the container is not listening
            // (yet); keep the flow, as docker-proxy does.
            Ok(Err(error)) if error.kind() == io::ErrorKind::ConnectionRefused => {
                debug!(%error, "udp receive from container failed");
            }
            Ok(Err(error)) => {
                debug!(%error, "udp flow ended with an error");
                let mut flows = flows.lock().unwrap_or_else(|p| p.into_inner());
                if flows
                    .get(&client)
                    .is_some_and(|flow| Arc::ptr_eq(&flow.upstream, &upstream))
                {
                    flows.remove(&client);
                }
                return;
            }
            Err(_) => {
                let mut flows = flows.lock().unwrap_or_else(|p| p.into_inner());
                let idle = flows
                    .get(&client)
                    .is_some_and(|flow| flow.last_active + UDP_IDLE_TIMEOUT <= Instant::now());
                if idle {
                    flows.remove(&client);
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const WAIT: Duration = Duration::from_secs(10);

    fn any_port() -> SocketAddr {
        "127.0.0.1:0".parse().unwrap()
    }

    /// A TCP server that echoes each connection until EOF, then closes its
    /// write side.
    async fn tcp_echo() -> SocketAddr {
        let listener = TcpListener::bind(any_port()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let (mut r, mut w) = stream.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
        });
        addr
    }

    async fn udp_echo() -> SocketAddr {
        let sock = UdpSocket::bind(any_port()).await.unwrap();
        let addr = sock.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65535];
            while let Ok((n, peer)) = sock.recv_from(&mut buf).await {
                let _ = sock.send_to(&buf[..n], peer).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn tcp_relays_a_large_payload_and_half_close() {
        let target = tcp_echo().await;
        let published = publish(any_port(), Proto::Tcp, target).await.unwrap();
        let payload: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();

        let mut stream = TcpStream::connect(published.local_addr()).await.unwrap();
        let (mut r, mut w) = stream.split();
        let write = async {
            w.write_all(&payload).await.unwrap();
            // Half-close: the echo server sees EOF only if the proxy passes it on.
            w.shutdown().await.unwrap();
        };
        let mut echoed = Vec::new();
        let read = tokio::time::timeout(WAIT, r.read_to_end(&mut echoed));
        let ((), read) = tokio::join!(write, read);

        read.expect("echo ends with EOF").unwrap();
        assert_eq!(echoed.len(), payload.len());
        assert!(echoed == payload);
    }

    #[tokio::test]
    async fn udp_relays_both_ways_per_client() {
        let target = udp_echo().await;
        let published = publish(any_port(), Proto::Udp, target).await.unwrap();
        let a = UdpSocket::bind(any_port()).await.unwrap();
        let b = UdpSocket::bind(any_port()).await.unwrap();
        let mut buf = vec![0u8; 65535];

        for (client, msg) in [
            (&a, &b"ping from a"[..]),
            (&b, &b"ping from b"[..]),
            (&a, &b"again"[..]),
        ] {
            client.send_to(msg, published.local_addr()).await.unwrap();
            let (n, from) = tokio::time::timeout(WAIT, client.recv_from(&mut buf))
                .await
                .expect("reply")
                .unwrap();
            assert_eq!(&buf[..n], msg);
            assert_eq!(
                from,
                published.local_addr(),
                "replies come from the published address"
            );
        }
    }

    #[tokio::test]
    async fn port_in_use_fails_and_leaves_nothing_listening() {
        let target = tcp_echo().await;
        let holder = std::net::TcpListener::bind(any_port()).unwrap();
        let host = holder.local_addr().unwrap();

        let err = publish(host, Proto::Tcp, target)
            .await
            .expect_err("port is taken");
        drop(holder);

        assert_eq!(err.raw_os_error(), Some(libc::EADDRINUSE));
        assert_eq!(
            port_in_use_message(host, Proto::Tcp, &err),
            format!("Bind for {host} failed: port is already allocated")
        );
        std::net::TcpListener::bind(host).expect("no proxy left holding the port");
    }

    #[tokio::test]
    async fn udp_port_in_use_fails() {
        let holder = std::net::UdpSocket::bind(any_port()).unwrap();
        let host = holder.local_addr().unwrap();

        let err = publish(host, Proto::Udp, any_port())
            .await
            .expect_err("port is taken");

        assert_eq!(err.raw_os_error(), Some(libc::EADDRINUSE));
    }

    #[tokio::test]
    async fn close_stops_accepting_and_ends_live_connections() {
        let target = tcp_echo().await;
        let published = publish(any_port(), Proto::Tcp, target).await.unwrap();
        let addr = published.local_addr();
        let mut live = TcpStream::connect(addr).await.unwrap();
        live.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        live.read_exact(&mut one).await.unwrap();

        published.close().await;

        let mut rest = Vec::new();
        let ended = tokio::time::timeout(WAIT, live.read_to_end(&mut rest))
            .await
            .expect("connection ends");
        assert!(ended.is_err() || rest.is_empty());
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "nothing accepts any more"
        );
        std::net::TcpListener::bind(addr).expect("port released");
    }

    #[tokio::test]
    async fn drop_stops_listening() {
        let target = tcp_echo().await;
        let published = publish(any_port(), Proto::Udp, target).await.unwrap();
        let addr = published.local_addr();
        let tcp = publish(any_port(), Proto::Tcp, target).await.unwrap();
        let tcp_addr = tcp.local_addr();

        drop(published);
        drop(tcp);

        // The runtime drops the aborted tasks (and their sockets) once it
        // gets to them; yield until it has, bounded.
        let released = tokio::time::timeout(WAIT, async {
            loop {
                if std::net::UdpSocket::bind(addr).is_ok()
                    && std::net::TcpListener::bind(tcp_addr).is_ok()
                {
                    return;
                }
                tokio::task::yield_now().await;
            }
        });
        released.await.expect("ports released after drop");
    }

    #[tokio::test]
    async fn port_zero_picks_a_free_port() {
        let target = tcp_echo().await;

        let published = publish(any_port(), Proto::Tcp, target).await.unwrap();

        assert_ne!(published.local_addr().port(), 0);
        assert_eq!(published.proto(), Proto::Tcp);
        assert_eq!(published.target(), target);
        TcpStream::connect(published.local_addr())
            .await
            .expect("listening on the picked port");
    }

    #[tokio::test]
    async fn ipv6_publish_does_not_take_the_ipv4_port() {
        let Ok(probe) = std::net::TcpListener::bind("[::1]:0") else {
            eprintln!("skipping ipv6_publish_does_not_take_the_ipv4_port: no IPv6 loopback");
            return;
        };
        drop(probe);
        let target = tcp_echo().await;
        let v6 = publish("[::]:0".parse().unwrap(), Proto::Tcp, target)
            .await
            .unwrap();
        let port = v6.local_addr().port();
        let v4 = publish(
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
            Proto::Tcp,
            target,
        )
        .await;
        let v6_udp = publish("[::]:0".parse().unwrap(), Proto::Udp, target)
            .await
            .unwrap();
        let udp_port = v6_udp.local_addr().port();
        let v4_udp = publish(
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, udp_port)),
            Proto::Udp,
            target,
        )
        .await;

        assert!(v4.is_ok(), "tcp: {:?}", v4.err());
        assert!(v4_udp.is_ok(), "udp: {:?}", v4_udp.err());
    }

    #[test]
    fn messages_follow_dockerd() {
        let v4: SocketAddr = "0.0.0.0:6379".parse().unwrap();
        let v6: SocketAddr = "[::]:53".parse().unwrap();
        let in_use = io::Error::from_raw_os_error(libc::EADDRINUSE);
        let denied = io::Error::from_raw_os_error(libc::EACCES);

        assert_eq!(
            port_in_use_message(v4, Proto::Tcp, &in_use),
            "Bind for 0.0.0.0:6379 failed: port is already allocated"
        );
        assert_eq!(
            port_in_use_message(v4, Proto::Tcp, &denied),
            "Error starting userland proxy: listen tcp4 0.0.0.0:6379: bind: permission denied"
        );
        assert_eq!(
            port_in_use_message(v6, Proto::Udp, &io::Error::from_raw_os_error(libc::EADDRNOTAVAIL)),
            "Error starting userland proxy: listen udp6 [::]:53: bind: cannot assign requested address"
        );
        assert_eq!(Proto::Udp.to_string(), "udp");
    }
}

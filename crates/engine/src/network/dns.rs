//! The embedded DNS server each container on a user-defined network gets,
//! like dockerd's `127.0.0.11`.
//!
//! This module owns: binding `127.0.0.11:53` (UDP and TCP) inside a
//! container's network namespace ([`bind_in_netns`]), answering the names the
//! engine knows ([`Resolver`]) and forwarding everything else to the host's
//! resolvers ([`DnsServer`], [`host_upstreams`]).
//!
//! It does not own which names exist (the engine implements [`Resolver`] per
//! container), nor the container's `resolv.conf`.
//!
//! Namespaces: only the listening sockets live in the container's namespace.
//! [`bind_in_netns`] creates them on a short-lived thread that enters the
//! namespace and exits, so no engine thread ever changes namespace. Queries
//! that are forwarded go out on sockets created by the server task, i.e. in
//! the engine's (host) namespace, so host loopback resolvers such as
//! systemd-resolved's `127.0.0.53` work as upstreams.
//!
//! Behaviour, following dockerd:
//! - `A` for a known name: authoritative answer, TTL 600, RA set.
//! - `AAAA` for a known name: `NOERROR` with no answers.
//! - `PTR` (`in-addr.arpa`) for a known IPv4 address: authoritative answer.
//! - Anything else is forwarded unchanged (same query ID) over UDP to each
//!   upstream in order, 2 s each; the first answer that is not `SERVFAIL` or
//!   `REFUSED` is relayed byte for byte. When no upstream answers, or there
//!   are no upstreams, the client gets `SERVFAIL`.
//! - Over TCP the same logic runs per length-prefixed message; forwarding is
//!   over UDP, retried over TCP to the same upstream when its answer is
//!   truncated.
//! - UDP responses never exceed 512 bytes (EDNS buffer sizes are not
//!   honoured): larger ones are cut to the question with `TC` set, so the
//!   client retries over TCP.
//! - Malformed packets and packets that are not queries are dropped.

use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use hickory_proto::op::{Edns, Header, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, PTR};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::BinDecodable;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;
use tracing::{debug, warn, Instrument};

/// The address the server listens on inside every container namespace.
pub const DNS_ADDR: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 11);
/// The port the server listens on (UDP and TCP).
pub const DNS_PORT: u16 = 53;
/// TTL of the records the server answers itself (dockerd uses 600).
pub const TTL: u32 = 600;

/// How long one upstream gets to answer before the next one is tried.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest UDP response sent to a client (no EDNS buffer negotiation).
const MAX_UDP_RESPONSE: usize = 512;
/// Largest query read from UDP; anything bigger is cut and fails to parse.
const MAX_UDP_QUERY: usize = 4096;
/// Queries in flight per server (forwarding can take seconds); more are dropped,
/// as dockerd does, so a flood cannot grow memory without bound.
const MAX_IN_FLIGHT: usize = 256;
/// Open TCP connections per server; more are closed at once.
const MAX_TCP_CONNECTIONS: usize = 64;
/// A TCP connection with no complete message for this long is closed.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// The names the DNS server answers itself; the engine implements it per
/// container (container names and aliases on that container's networks).
///
/// Methods are called from the server's task and must not block for long.
pub trait Resolver: Send + Sync + 'static {
    /// IPv4 addresses for `name`, which is lower-cased and has no trailing
    /// dot. `None` means "not ours": the query is forwarded upstream.
    /// The addresses are answered in the order given.
    fn lookup_a(&self, name: &str) -> Option<Vec<Ipv4Addr>>;

    /// The name for `ip` (without trailing dot), for reverse lookups.
    /// `None` means "not ours": the query is forwarded upstream.
    fn lookup_ptr(&self, ip: Ipv4Addr) -> Option<String>;
}

/// Binds `127.0.0.11:53` on UDP and TCP inside the network namespace at
/// `netns` (for example `/proc/<pid>/ns/net`).
///
/// The namespace is entered by a freshly spawned thread that exits after
/// binding, so the caller's threads never change namespace; sockets keep the
/// namespace they were created in. Both sockets are nonblocking, ready for
/// [`DnsServer::spawn`]. The namespace's loopback must be up.
pub fn bind_in_netns(netns: &Path) -> io::Result<(std::net::UdpSocket, std::net::TcpListener)> {
    let ns = std::fs::File::open(netns).map_err(|e| with_context(e, "open", netns))?;
    let netns_owned = netns.to_path_buf();
    let thread = std::thread::Builder::new().name("dns-bind".into()).spawn(
        move || -> io::Result<(std::net::UdpSocket, std::net::TcpListener)> {
            use std::os::fd::AsFd;
            rustix::thread::move_into_link_name_space(
                ns.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .map_err(|e| with_context(e.into(), "setns into", &netns_owned))?;
            drop(ns);
            let addr = SocketAddr::from((DNS_ADDR, DNS_PORT));
            let udp = std::net::UdpSocket::bind(addr)?;
            udp.set_nonblocking(true)?;
            let tcp = std::net::TcpListener::bind(addr)?;
            tcp.set_nonblocking(true)?;
            Ok((udp, tcp))
        },
    )?;
    thread
        .join()
        .map_err(|_| io::Error::other("dns bind thread panicked"))?
}

fn with_context(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

/// Parses the `nameserver` lines of a `resolv.conf` into upstreams (port 53).
///
/// These are used from the host namespace (forwarding happens on sockets the
/// engine creates, not in the container), so loopback resolvers such as
/// `127.0.0.53` are kept. IPv6 addresses may carry a `%zone`. Duplicates and
/// unparsable lines are skipped.
pub fn host_upstreams(resolv_conf: &str) -> Vec<SocketAddr> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for line in resolv_conf.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(addr) = words.next().and_then(parse_nameserver) else {
            continue;
        };
        if seen.insert(addr) {
            out.push(addr);
        }
    }
    out
}

fn parse_nameserver(s: &str) -> Option<SocketAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, DNS_PORT));
    }
    let (ip, zone) = s.split_once('%')?;
    let ip: Ipv6Addr = ip.parse().ok()?;
    let scope = match zone.parse::<u32>() {
        Ok(n) => n,
        Err(_) => {
            let zone = std::ffi::CString::new(zone).ok()?;
            // SAFETY: `zone` is a valid NUL-terminated string that outlives the call.
            let index = unsafe { libc::if_nametoindex(zone.as_ptr()) };
            if index == 0 {
                return None;
            }
            index
        }
    };
    Some(SocketAddr::V6(SocketAddrV6::new(ip, DNS_PORT, 0, scope)))
}

/// A running DNS server: one task owning the UDP socket, the TCP listener,
/// its TCP connections and the queries in flight.
///
/// Dropping it (or [`stop`](Self::stop)) aborts the task, which closes the
/// sockets as soon as the runtime drops it; [`shutdown`](Self::shutdown)
/// waits for that. Closing matters: an open socket keeps a dead container's
/// network namespace alive.
#[derive(Debug)]
pub struct DnsServer {
    task: JoinHandle<()>,
}

impl DnsServer {
    /// Starts serving `udp` and `tcp` (usually from [`bind_in_netns`]),
    /// answering from `resolver` and forwarding the rest to `upstreams` in
    /// order.
    ///
    /// Must be called inside a tokio runtime. Registering the sockets with
    /// the runtime happens in the task; if that fails (only on resource
    /// exhaustion) the error is logged and the sockets are closed.
    pub fn spawn(
        udp: std::net::UdpSocket,
        tcp: std::net::TcpListener,
        resolver: Arc<dyn Resolver>,
        upstreams: Vec<SocketAddr>,
    ) -> DnsServer {
        Self::spawn_with_timeout(udp, tcp, resolver, upstreams, UPSTREAM_TIMEOUT)
    }

    fn spawn_with_timeout(
        udp: std::net::UdpSocket,
        tcp: std::net::TcpListener,
        resolver: Arc<dyn Resolver>,
        upstreams: Vec<SocketAddr>,
        upstream_timeout: Duration,
    ) -> DnsServer {
        let core = Arc::new(Core {
            resolver,
            upstreams,
            upstream_timeout,
        });
        let span = match udp.local_addr() {
            Ok(addr) => tracing::debug_span!("dns_server", %addr),
            Err(_) => tracing::debug_span!("dns_server"),
        };
        let task = tokio::spawn(
            async move {
                let sockets = (|| {
                    udp.set_nonblocking(true)?;
                    tcp.set_nonblocking(true)?;
                    io::Result::Ok((UdpSocket::from_std(udp)?, TcpListener::from_std(tcp)?))
                })();
                match sockets {
                    Ok((udp, tcp)) => serve(udp, tcp, core).await,
                    Err(error) => warn!(%error, "dns server cannot register its sockets"),
                }
            }
            .instrument(span),
        );
        DnsServer { task }
    }

    /// Stops serving: aborts the task; its sockets are closed when the
    /// runtime drops it, which is immediate unless the runtime is blocked.
    pub fn stop(self) {
        // Drop does the work.
    }

    /// Stops serving and returns once the sockets are closed.
    pub async fn shutdown(mut self) {
        self.task.abort();
        // The handle resolves (as cancelled) only after the task's future,
        // and with it every socket, has been dropped.
        let _ = (&mut self.task).await;
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the server does with one query.
struct Core {
    resolver: Arc<dyn Resolver>,
    upstreams: Vec<SocketAddr>,
    upstream_timeout: Duration,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    fn limit(self) -> usize {
        match self {
            Transport::Udp => MAX_UDP_RESPONSE,
            Transport::Tcp => usize::from(u16::MAX),
        }
    }
}

/// What to do with a query after looking at it.
enum Local {
    /// Not a query we answer (malformed, or a response): send nothing.
    Drop,
    /// Answered here.
    Reply(Message),
    /// Not ours: forward the raw bytes; the parsed query is kept to build
    /// SERVFAIL or a truncated reply.
    Forward(Message),
}

impl Core {
    /// The response bytes for `query`, or `None` to send nothing.
    async fn handle(&self, query: &[u8], transport: Transport) -> Option<Vec<u8>> {
        match self.local(query) {
            Local::Drop => None,
            Local::Reply(msg) => encode(&msg, transport.limit()),
            Local::Forward(msg) => match self.forward(query, msg.metadata.id, transport).await {
                Some(resp) if resp.len() <= transport.limit() => Some(resp),
                Some(resp) => match Message::from_vec(&resp) {
                    Ok(parsed) => encode(&parsed.truncate(), transport.limit()),
                    Err(_) => encode(&reply_to(&msg, ResponseCode::ServFail), transport.limit()),
                },
                None => encode(&reply_to(&msg, ResponseCode::ServFail), transport.limit()),
            },
        }
    }

    fn local(&self, query: &[u8]) -> Local {
        let Ok(msg) = Message::from_vec(query) else {
            return Local::Drop;
        };
        if msg.metadata.message_type != MessageType::Query {
            return Local::Drop;
        }
        if msg.metadata.op_code != OpCode::Query {
            return Local::Reply(reply_to(&msg, ResponseCode::NotImp));
        }
        let [q] = msg.queries.as_slice() else {
            return Local::Reply(reply_to(&msg, ResponseCode::FormErr));
        };
        if q.query_class() != DNSClass::IN {
            return Local::Forward(msg);
        }
        let qname = q.name().clone();
        let lower = qname.to_lowercase().to_ascii();
        let lower = lower.strip_suffix('.').unwrap_or(&lower);
        if lower.is_empty() {
            return Local::Forward(msg);
        }
        match q.query_type() {
            RecordType::A => match self.resolver.lookup_a(lower) {
                Some(ips) if !ips.is_empty() => {
                    let mut resp = reply_to(&msg, ResponseCode::NoError);
                    resp.metadata.authoritative = true;
                    for ip in ips {
                        resp.add_answer(Record::from_rdata(qname.clone(), TTL, RData::A(A(ip))));
                    }
                    Local::Reply(resp)
                }
                _ => Local::Forward(msg),
            },
            RecordType::AAAA => match self.resolver.lookup_a(lower) {
                Some(_) => {
                    let mut resp = reply_to(&msg, ResponseCode::NoError);
                    resp.metadata.authoritative = true;
                    Local::Reply(resp)
                }
                None => Local::Forward(msg),
            },
            RecordType::PTR => {
                let Some(target) = ptr_ipv4(&qname)
                    .and_then(|ip| self.resolver.lookup_ptr(ip))
                    .and_then(|name| {
                        Name::from_ascii(format!("{}.", name.trim_end_matches('.'))).ok()
                    })
                else {
                    return Local::Forward(msg);
                };
                let mut resp = reply_to(&msg, ResponseCode::NoError);
                resp.metadata.authoritative = true;
                resp.add_answer(Record::from_rdata(qname, TTL, RData::PTR(PTR(target))));
                Local::Reply(resp)
            }
            _ => Local::Forward(msg),
        }
    }

    /// Sends `query` to each upstream in turn; the first answer that is not
    /// SERVFAIL/REFUSED wins, else the last such answer, else `None`.
    async fn forward(&self, query: &[u8], id: u16, transport: Transport) -> Option<Vec<u8>> {
        let mut fallback = None;
        for &upstream in &self.upstreams {
            let mut resp = match forward_udp(query, id, upstream, self.upstream_timeout).await {
                Ok(resp) => resp,
                Err(error) => {
                    debug!(%upstream, %error, "dns forward failed");
                    continue;
                }
            };
            let Ok(mut header) = Header::from_bytes(&resp) else {
                continue;
            };
            if header.metadata.truncation && transport == Transport::Tcp {
                match forward_tcp(query, id, upstream, self.upstream_timeout).await {
                    Ok(full) => match Header::from_bytes(&full) {
                        Ok(h) => {
                            header = h;
                            resp = full;
                        }
                        Err(_) => continue,
                    },
                    Err(error) => debug!(%upstream, %error, "dns forward over tcp failed"),
                }
            }
            match header.metadata.response_code {
                ResponseCode::ServFail | ResponseCode::Refused => fallback = Some(resp),
                _ => return Some(resp),
            }
        }
        fallback
    }
}

/// What the server sends back for `query` without asking an upstream:
/// `None` for packets it drops or forwards. The pure half of the server,
/// for fuzzing.
pub fn answer_locally(query: &[u8], resolver: Arc<dyn Resolver>, udp: bool) -> Option<Vec<u8>> {
    let core = Core { resolver, upstreams: Vec::new(), upstream_timeout: Duration::ZERO };
    let transport = if udp { Transport::Udp } else { Transport::Tcp };
    match core.local(query) {
        Local::Reply(msg) => encode(&msg, transport.limit()),
        Local::Drop | Local::Forward(_) => None,
    }
}

/// The IPv4 address of an `a.b.c.d.in-addr.arpa.` name.
fn ptr_ipv4(name: &Name) -> Option<Ipv4Addr> {
    let mut name = name.clone();
    name.set_fqdn(true);
    let net = name.parse_arpa_name().ok()?;
    match net.addr() {
        IpAddr::V4(ip) if net.prefix_len() == 32 => Some(ip),
        _ => None,
    }
}

/// An empty response to `query` with `rcode`, echoing ID, opcode, RD, CD and
/// the question, RA set (as dockerd), with an OPT record if the query had one.
fn reply_to(query: &Message, rcode: ResponseCode) -> Message {
    let mut resp = Message::response(query.metadata.id, query.metadata.op_code);
    resp.metadata.recursion_desired = query.metadata.recursion_desired;
    resp.metadata.checking_disabled = query.metadata.checking_disabled;
    resp.metadata.recursion_available = true;
    resp.metadata.response_code = rcode;
    resp.add_queries(query.queries.iter().cloned());
    if query.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(MAX_UDP_RESPONSE as u16);
        resp.set_edns(edns);
    }
    resp
}

/// Encodes `msg`; if it exceeds `limit`, sends the question with TC instead.
fn encode(msg: &Message, limit: usize) -> Option<Vec<u8>> {
    let bytes = match msg.to_vec() {
        Ok(bytes) => bytes,
        Err(error) => {
            debug!(%error, "dns response does not encode");
            return None;
        }
    };
    if bytes.len() <= limit {
        return Some(bytes);
    }
    let truncated = msg.truncate().to_vec().ok()?;
    (truncated.len() <= limit).then_some(truncated)
}

/// Whether `resp` is a response with ID `id`.
fn is_answer_to(resp: &[u8], id: u16) -> bool {
    Header::from_bytes(resp)
        .is_ok_and(|h| h.metadata.id == id && h.metadata.message_type == MessageType::Response)
}

async fn forward_udp(
    query: &[u8],
    id: u16,
    upstream: SocketAddr,
    limit: Duration,
) -> io::Result<Vec<u8>> {
    let local: SocketAddr = if upstream.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(local).await?;
    // Connected, so only datagrams from the upstream are received and an
    // ICMP "port unreachable" fails fast instead of waiting out the timeout.
    sock.connect(upstream).await?;
    sock.send(query).await?;
    let mut buf = vec![0u8; usize::from(u16::MAX)];
    tokio::time::timeout(limit, async {
        loop {
            let n = sock.recv(&mut buf).await?;
            if is_answer_to(&buf[..n], id) {
                buf.truncate(n);
                return Ok(buf);
            }
        }
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "upstream did not answer"))?
}

async fn forward_tcp(
    query: &[u8],
    id: u16,
    upstream: SocketAddr,
    limit: Duration,
) -> io::Result<Vec<u8>> {
    let len = u16::try_from(query.len()).map_err(|_| io::Error::other("query too long"))?;
    tokio::time::timeout(limit, async {
        let mut stream = TcpStream::connect(upstream).await?;
        let mut out = Vec::with_capacity(query.len() + 2);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(query);
        stream.write_all(&out).await?;
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).await?;
        let mut resp = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut resp).await?;
        if is_answer_to(&resp, id) {
            Ok(resp)
        } else {
            Err(io::Error::other("upstream answered another query"))
        }
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "upstream did not answer"))?
}

/// The server loop. Everything (sockets, connections, queries in flight) is
/// owned by this one future, so aborting the task closes every socket.
async fn serve(udp: UdpSocket, tcp: TcpListener, core: Arc<Core>) {
    let mut buf = vec![0u8; MAX_UDP_QUERY];
    let mut in_flight = FuturesUnordered::new();
    let mut connections = FuturesUnordered::new();
    loop {
        tokio::select! {
            received = udp.recv_from(&mut buf) => match received {
                Ok((n, peer)) if in_flight.len() < MAX_IN_FLIGHT => {
                    in_flight.push(udp_query(core.clone(), buf[..n].to_vec(), peer));
                }
                Ok((_, peer)) => debug!(%peer, "dns query dropped: too many in flight"),
                Err(error) => debug!(%error, "dns udp receive failed"),
            },
            Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                if let Some((resp, peer)) = done {
                    if let Err(error) = udp.send_to(&resp, peer).await {
                        debug!(%peer, %error, "dns udp send failed");
                    }
                }
            },
            accepted = tcp.accept() => match accepted {
                Ok((stream, _)) if connections.len() < MAX_TCP_CONNECTIONS => {
                    connections.push(tcp_connection(core.clone(), stream));
                }
                Ok((_, peer)) => debug!(%peer, "dns tcp connection refused: too many open"),
                Err(error) => {
                    // Typically EMFILE: back off instead of spinning.
                    warn!(%error, "dns tcp accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(()) = connections.next(), if !connections.is_empty() => {},
        }
    }
}

async fn udp_query(
    core: Arc<Core>,
    query: Vec<u8>,
    peer: SocketAddr,
) -> Option<(Vec<u8>, SocketAddr)> {
    core.handle(&query, Transport::Udp)
        .await
        .map(|resp| (resp, peer))
}

/// Serves length-prefixed queries on one connection, one at a time, until
/// the client closes, goes idle or sends something malformed.
async fn tcp_connection(core: Arc<Core>, mut stream: TcpStream) {
    loop {
        let mut len = [0u8; 2];
        if !matches!(
            tokio::time::timeout(TCP_IDLE_TIMEOUT, stream.read_exact(&mut len)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if !matches!(
            tokio::time::timeout(TCP_IDLE_TIMEOUT, stream.read_exact(&mut query)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        let Some(resp) = core.handle(&query, Transport::Tcp).await else {
            return;
        };
        let Ok(len) = u16::try_from(resp.len()) else {
            return;
        };
        let mut out = Vec::with_capacity(resp.len() + 2);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&resp);
        if !matches!(
            tokio::time::timeout(TCP_IDLE_TIMEOUT, stream.write_all(&out)).await,
            Ok(Ok(()))
        ) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use std::collections::HashMap;

    const WAIT: Duration = Duration::from_secs(5);

    struct Names(HashMap<&'static str, Vec<Ipv4Addr>>);

    impl Resolver for Names {
        fn lookup_a(&self, name: &str) -> Option<Vec<Ipv4Addr>> {
            self.0.get(name).cloned()
        }
        fn lookup_ptr(&self, ip: Ipv4Addr) -> Option<String> {
            self.0
                .iter()
                .find(|(_, ips)| ips.contains(&ip))
                .map(|(name, _)| name.to_string())
        }
    }

    fn names() -> Arc<dyn Resolver> {
        let mut map = HashMap::new();
        map.insert("web", vec![Ipv4Addr::new(172, 18, 0, 2)]);
        map.insert("db.example", vec![Ipv4Addr::new(172, 18, 0, 3)]);
        map.insert(
            "many",
            (1..=60).map(|i| Ipv4Addr::new(10, 0, 0, i)).collect(),
        );
        Arc::new(Names(map))
    }

    fn loopback_sockets() -> (std::net::UdpSocket, std::net::TcpListener) {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("bind tcp");
        (udp, tcp)
    }

    /// A server on 127.0.0.1 (no namespaces), with its UDP and TCP addresses.
    fn start(upstreams: Vec<SocketAddr>, timeout: Duration) -> (DnsServer, SocketAddr, SocketAddr) {
        let (udp, tcp) = loopback_sockets();
        let (u, t) = (udp.local_addr().unwrap(), tcp.local_addr().unwrap());
        let server = DnsServer::spawn_with_timeout(udp, tcp, names(), upstreams, timeout);
        (server, u, t)
    }

    fn query(id: u16, name: &str, rtype: RecordType) -> Vec<u8> {
        let mut msg = Message::new(id, MessageType::Query, OpCode::Query);
        msg.metadata.recursion_desired = true;
        msg.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
        msg.to_vec().unwrap()
    }

    async fn ask_udp_raw(server: SocketAddr, packet: &[u8]) -> Vec<u8> {
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.send_to(packet, server).await.unwrap();
        let mut buf = vec![0u8; 65535];
        let (n, _) = tokio::time::timeout(WAIT, client.recv_from(&mut buf))
            .await
            .expect("answer")
            .unwrap();
        assert!(n <= 512, "udp answer of {n} bytes");
        buf.truncate(n);
        buf
    }

    async fn ask_udp(server: SocketAddr, packet: &[u8]) -> Message {
        Message::from_vec(&ask_udp_raw(server, packet).await).expect("answer parses")
    }

    /// What the fake upstream answers to `query`: `ip` with TTL 42, not
    /// authoritative, same ID.
    fn upstream_answer(query: &[u8], ip: Ipv4Addr) -> Vec<u8> {
        let q = Message::from_vec(query).unwrap();
        let mut resp = Message::response(q.metadata.id, OpCode::Query);
        resp.metadata.recursion_available = true;
        resp.add_queries(q.queries.clone());
        resp.add_answer(Record::from_rdata(
            q.queries[0].name().clone(),
            42,
            RData::A(A(ip)),
        ));
        resp.to_vec().unwrap()
    }

    async fn ask_tcp(stream: &mut TcpStream, packet: &[u8]) -> Message {
        let mut out = (packet.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(packet);
        stream.write_all(&out).await.unwrap();
        let mut len = [0u8; 2];
        tokio::time::timeout(WAIT, stream.read_exact(&mut len))
            .await
            .expect("answer")
            .unwrap();
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut buf).await.unwrap();
        Message::from_vec(&buf).expect("answer parses")
    }

    /// A fake upstream on 127.0.0.1: answers every query with
    /// [`upstream_answer`], or never answers when `answer` is None.
    async fn fake_upstream(answer: Option<Ipv4Addr>) -> (SocketAddr, JoinHandle<()>) {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65535];
            loop {
                let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
                    return;
                };
                let Some(ip) = answer else { continue };
                sock.send_to(&upstream_answer(&buf[..n], ip), peer)
                    .await
                    .unwrap();
            }
        });
        (addr, task)
    }

    #[tokio::test]
    async fn a_query_for_known_name_is_answered_authoritatively() {
        let (_server, udp, _) = start(vec![], UPSTREAM_TIMEOUT);

        let resp = ask_udp(udp, &query(0x1234, "Web.", RecordType::A)).await;

        assert_eq!(resp.metadata.id, 0x1234);
        assert_eq!(resp.metadata.message_type, MessageType::Response);
        assert_eq!(resp.metadata.response_code, ResponseCode::NoError);
        assert!(resp.metadata.authoritative);
        assert!(resp.metadata.recursion_available);
        assert!(resp.metadata.recursion_desired);
        assert_eq!(resp.queries.len(), 1);
        assert_eq!(resp.answers.len(), 1);
        let record = &resp.answers[0];
        assert_eq!(record.ttl, 600);
        assert_eq!(record.name, Name::from_ascii("Web.").unwrap());
        assert_eq!(record.data, RData::A(A(Ipv4Addr::new(172, 18, 0, 2))));
    }

    #[tokio::test]
    async fn aaaa_query_for_known_name_is_empty_noerror() {
        let (_server, udp, _) = start(vec![], UPSTREAM_TIMEOUT);

        let resp = ask_udp(udp, &query(7, "db.example.", RecordType::AAAA)).await;

        assert_eq!(resp.metadata.response_code, ResponseCode::NoError);
        assert!(resp.answers.is_empty());
        assert!(resp.metadata.authoritative);
    }

    #[tokio::test]
    async fn ptr_query_for_known_ip_is_answered() {
        let (_server, udp, _) = start(vec![], UPSTREAM_TIMEOUT);

        let resp = ask_udp(udp, &query(8, "3.0.18.172.in-addr.arpa.", RecordType::PTR)).await;

        assert_eq!(resp.metadata.response_code, ResponseCode::NoError);
        assert_eq!(resp.answers.len(), 1);
        assert_eq!(
            resp.answers[0].data,
            RData::PTR(PTR(Name::from_ascii("db.example.").unwrap()))
        );
        assert_eq!(resp.answers[0].ttl, 600);
    }

    #[tokio::test]
    async fn unknown_name_is_forwarded_and_relayed_unchanged() {
        let (upstream, _up) = fake_upstream(Some(Ipv4Addr::new(93, 184, 216, 34))).await;
        let (_server, udp, _) = start(vec![upstream], UPSTREAM_TIMEOUT);

        let packet = query(0xbeef, "example.com.", RecordType::A);
        let raw = ask_udp_raw(udp, &packet).await;

        assert_eq!(
            raw,
            upstream_answer(&packet, Ipv4Addr::new(93, 184, 216, 34)),
            "relayed byte for byte"
        );
        let resp = Message::from_vec(&raw).unwrap();
        assert_eq!(resp.metadata.id, 0xbeef);
        assert_eq!(resp.metadata.response_code, ResponseCode::NoError);
        assert!(
            !resp.metadata.authoritative,
            "relayed as the upstream sent it"
        );
        assert_eq!(resp.answers.len(), 1);
        assert_eq!(resp.answers[0].ttl, 42);
        assert_eq!(
            resp.answers[0].data,
            RData::A(A(Ipv4Addr::new(93, 184, 216, 34)))
        );
    }

    #[tokio::test]
    async fn known_name_with_other_type_is_forwarded() {
        let (upstream, _up) = fake_upstream(Some(Ipv4Addr::new(1, 2, 3, 4))).await;
        let (_server, udp, _) = start(vec![upstream], UPSTREAM_TIMEOUT);

        let resp = ask_udp(udp, &query(9, "web.", RecordType::MX)).await;

        assert_eq!(resp.answers[0].ttl, 42, "answered by the upstream");
    }

    #[tokio::test]
    async fn silent_upstream_is_skipped_for_the_next_one() {
        let (silent, _s) = fake_upstream(None).await;
        let (answering, _a) = fake_upstream(Some(Ipv4Addr::new(5, 6, 7, 8))).await;
        let (_server, udp, _) = start(vec![silent, answering], Duration::from_millis(200));

        let resp = ask_udp(udp, &query(10, "example.org.", RecordType::A)).await;

        assert_eq!(resp.answers[0].data, RData::A(A(Ipv4Addr::new(5, 6, 7, 8))));
    }

    #[tokio::test]
    async fn upstream_timeout_yields_servfail() {
        let (silent, _s) = fake_upstream(None).await;
        let (_server, udp, _) = start(vec![silent], Duration::from_millis(200));

        let resp = ask_udp(udp, &query(11, "example.org.", RecordType::A)).await;

        assert_eq!(resp.metadata.id, 11);
        assert_eq!(resp.metadata.response_code, ResponseCode::ServFail);
        assert!(resp.answers.is_empty());
    }

    #[tokio::test]
    async fn no_upstreams_yields_servfail() {
        let (_server, udp, _) = start(vec![], UPSTREAM_TIMEOUT);

        let resp = ask_udp(udp, &query(12, "unknown.", RecordType::A)).await;

        assert_eq!(resp.metadata.response_code, ResponseCode::ServFail);
    }

    #[tokio::test]
    async fn garbage_and_responses_are_dropped_without_reply() {
        let (_server, udp, _) = start(vec![], UPSTREAM_TIMEOUT);
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut response = Message::response(99, OpCode::Query);
        response.add_query(Query::query(
            Name::from_ascii("web.").unwrap(),
            RecordType::A,
        ));
        let mut short_question = query(98, "web.", RecordType::A);
        short_question.truncate(short_question.len() - 3);

        for junk in [
            &b""[..],
            &b"\x12"[..],
            &[0xffu8; 11][..],
            &[0xffu8; 300][..],
            &short_question[..],
            &response.to_vec().unwrap()[..],
        ] {
            client.send_to(junk, udp).await.unwrap();
        }
        client
            .send_to(&query(13, "web.", RecordType::A), udp)
            .await
            .unwrap();

        // The first datagram back must answer the valid query: nothing was
        // sent for the junk, and the server survived it.
        let mut buf = vec![0u8; 65535];
        let (n, _) = tokio::time::timeout(WAIT, client.recv_from(&mut buf))
            .await
            .expect("answer")
            .unwrap();
        let resp = Message::from_vec(&buf[..n]).unwrap();
        assert_eq!(resp.metadata.id, 13);
        assert_eq!(resp.answers.len(), 1);
    }

    #[tokio::test]
    async fn oversized_udp_answer_is_truncated_and_complete_over_tcp() {
        let (_server, udp, tcp) = start(vec![], UPSTREAM_TIMEOUT);

        let over_udp = ask_udp(udp, &query(14, "many.", RecordType::A)).await;
        let mut stream = TcpStream::connect(tcp).await.unwrap();
        let over_tcp = ask_tcp(&mut stream, &query(15, "many.", RecordType::A)).await;

        assert!(over_udp.metadata.truncation);
        assert!(over_udp.answers.is_empty());
        assert!(!over_tcp.metadata.truncation);
        assert_eq!(over_tcp.answers.len(), 60);
    }

    #[tokio::test]
    async fn tcp_serves_several_queries_on_one_connection() {
        let (upstream, _up) = fake_upstream(Some(Ipv4Addr::new(9, 9, 9, 9))).await;
        let (_server, _, tcp) = start(vec![upstream], UPSTREAM_TIMEOUT);
        let mut stream = TcpStream::connect(tcp).await.unwrap();

        let local = ask_tcp(&mut stream, &query(16, "web.", RecordType::A)).await;
        let forwarded = ask_tcp(&mut stream, &query(17, "example.net.", RecordType::A)).await;

        assert_eq!(local.metadata.id, 16);
        assert_eq!(
            local.answers[0].data,
            RData::A(A(Ipv4Addr::new(172, 18, 0, 2)))
        );
        assert_eq!(forwarded.metadata.id, 17);
        assert_eq!(
            forwarded.answers[0].data,
            RData::A(A(Ipv4Addr::new(9, 9, 9, 9)))
        );
    }

    #[tokio::test]
    async fn shutdown_closes_the_sockets() {
        let (server, udp, tcp) = start(vec![], UPSTREAM_TIMEOUT);

        server.shutdown().await;

        std::net::UdpSocket::bind(udp).expect("udp port released");
        std::net::TcpListener::bind(tcp).expect("tcp port released");
    }

    #[test]
    fn host_upstreams_reads_nameserver_lines() {
        let conf = "# generated\nsearch example.com\nnameserver 127.0.0.53\n\
                    nameserver  1.1.1.1 \nnameserver 2606:4700::1111\nnameserver fe80::1%1\n\
                    nameserver 127.0.0.53\nnameserver bogus\n;nameserver 8.8.8.8\noptions edns0\n";

        let got = host_upstreams(conf);

        assert_eq!(
            got,
            vec![
                "127.0.0.53:53".parse::<SocketAddr>().unwrap(),
                "1.1.1.1:53".parse().unwrap(),
                "[2606:4700::1111]:53".parse().unwrap(),
                SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 53, 0, 1)),
            ]
        );
    }

    /// Needs root: a real network namespace, queried from inside with busybox.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn serves_inside_a_network_namespace() {
        if !rustix::process::geteuid().is_root() {
            eprintln!(
                "skipping serves_inside_a_network_namespace: needs root (network namespaces)"
            );
            return;
        }
        // "ready" is printed once the namespace exists and its loopback is up.
        let mut holder = tokio::process::Command::new("unshare")
            .args([
                "-n",
                "sh",
                "-c",
                "ip link set lo up && echo ready && exec sleep 30",
            ])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn unshare");
        let pid = holder.id().expect("pid");
        let mut line = String::new();
        let mut out = tokio::io::BufReader::new(holder.stdout.take().unwrap());
        tokio::io::AsyncBufReadExt::read_line(&mut out, &mut line)
            .await
            .unwrap();
        assert_eq!(line.trim(), "ready");

        let (udp, tcp) =
            bind_in_netns(Path::new(&format!("/proc/{pid}/ns/net"))).expect("bind in netns");
        assert_eq!(
            udp.local_addr().unwrap(),
            SocketAddr::from((DNS_ADDR, DNS_PORT))
        );
        let server = DnsServer::spawn(udp, tcp, names(), vec![]);
        let lookup = tokio::process::Command::new("nsenter")
            .args([
                "-t",
                &pid.to_string(),
                "-n",
                "busybox",
                "nslookup",
                "web",
                "127.0.0.11",
            ])
            .output()
            .await
            .expect("run nslookup");
        server.shutdown().await;
        holder.kill().await.unwrap();

        let stdout = String::from_utf8_lossy(&lookup.stdout);
        assert!(
            stdout.contains("Address: 172.18.0.2"),
            "nslookup output:\n{stdout}\n{}",
            String::from_utf8_lossy(&lookup.stderr)
        );
    }
}

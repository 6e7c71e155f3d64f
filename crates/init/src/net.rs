//! Guest networking for QEMU user-mode networking (slirp): a static address,
//! the default route and DNS, set over rtnetlink with raw messages (no `ip`
//! binary, no async runtime).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// The guest's address in QEMU's user-mode network.
pub const ADDRESS: [u8; 4] = [10, 0, 2, 15];
pub const PREFIX: u8 = 24;
/// The host as the guest sees it.
pub const GATEWAY: &str = "10.0.2.2";
/// QEMU's built-in DNS forwarder.
pub const DNS: &str = "10.0.2.3";

const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_BROADCAST: u16 = 4;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;

/// Appends a netlink attribute (padded to 4 bytes).
fn attr(buf: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(payload);
    while buf.len() % 4 != 0 {
        buf.push(0);
    }
}

/// Body of RTM_NEWLINK that sets IFF_UP.
pub fn link_up_body(index: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(16);
    b.push(libc::AF_UNSPEC as u8);
    b.push(0);
    b.extend_from_slice(&0u16.to_ne_bytes());
    b.extend_from_slice(&(index as i32).to_ne_bytes());
    b.extend_from_slice(&(libc::IFF_UP as u32).to_ne_bytes());
    b.extend_from_slice(&(libc::IFF_UP as u32).to_ne_bytes());
    b
}

/// Body of RTM_NEWADDR for an IPv4 address.
pub fn addr_body(index: u32, addr: [u8; 4], prefix: u8) -> Vec<u8> {
    let mut b = vec![libc::AF_INET as u8, prefix, 0, 0];
    b.extend_from_slice(&index.to_ne_bytes());
    attr(&mut b, IFA_LOCAL, &addr);
    attr(&mut b, IFA_ADDRESS, &addr);
    let mask: u32 = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix as u32) };
    let bcast = (u32::from_be_bytes(addr) | !mask).to_be_bytes();
    attr(&mut b, IFA_BROADCAST, &bcast);
    b
}

/// Body of RTM_NEWROUTE for the IPv4 default route.
pub fn default_route_body(index: u32, gateway: [u8; 4]) -> Vec<u8> {
    // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags.
    let mut b = vec![libc::AF_INET as u8, 0, 0, 0, libc::RT_TABLE_MAIN, libc::RTPROT_BOOT, libc::RT_SCOPE_UNIVERSE, libc::RTN_UNICAST];
    b.extend_from_slice(&0u32.to_ne_bytes());
    attr(&mut b, RTA_GATEWAY, &gateway);
    attr(&mut b, RTA_OIF, &index.to_ne_bytes());
    b
}

struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

impl Netlink {
    fn open() -> io::Result<Netlink> {
        // SAFETY: socket(2) with constant arguments; the fd is owned below.
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh socket we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_nl zeroed is a valid "kernel assigns the port id" address.
        let rc = unsafe {
            let mut sa: libc::sockaddr_nl = std::mem::zeroed();
            sa.nl_family = libc::AF_NETLINK as u16;
            libc::bind(fd.as_raw_fd(), (&sa as *const libc::sockaddr_nl).cast(), std::mem::size_of::<libc::sockaddr_nl>() as u32)
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Netlink { fd, seq: 1 })
    }

    /// Sends one request and waits for its acknowledgement.
    fn request(&mut self, kind: u16, flags: u16, body: &[u8]) -> io::Result<()> {
        self.seq += 1;
        let len = 16 + body.len();
        let mut msg = Vec::with_capacity(len);
        msg.extend_from_slice(&(len as u32).to_ne_bytes());
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        msg.extend_from_slice(&self.seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(body);
        // SAFETY: msg is a valid buffer of msg.len() bytes.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = [0u8; 8192];
        loop {
            // SAFETY: buf is writable for its length.
            let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut off = 0usize;
            let n = n as usize;
            while off + 16 <= n {
                let mlen = u32::from_ne_bytes(buf[off..off + 4].try_into().expect("4 bytes")) as usize;
                let mtype = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().expect("2 bytes"));
                let mseq = u32::from_ne_bytes(buf[off + 8..off + 12].try_into().expect("4 bytes"));
                if mlen < 16 || off + mlen > n {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "truncated netlink reply"));
                }
                if mtype == NLMSG_ERROR && mseq == self.seq && mlen >= 20 {
                    let err = i32::from_ne_bytes(buf[off + 16..off + 20].try_into().expect("4 bytes"));
                    return if err == 0 { Ok(()) } else { Err(io::Error::from_raw_os_error(-err)) };
                }
                off += (mlen + 3) & !3;
            }
        }
    }
}

fn ifindex(name: &str) -> io::Result<u32> {
    let s = std::fs::read_to_string(format!("/sys/class/net/{name}/ifindex"))?;
    s.trim().parse().map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad ifindex"))
}

/// The first interface that is not loopback, waiting up to `wait` for the
/// virtio-net driver to register it. `eth0` is preferred.
fn find_uplink(wait: Duration) -> Option<String> {
    let deadline = Instant::now() + wait;
    loop {
        if std::path::Path::new("/sys/class/net/eth0").exists() {
            return Some("eth0".into());
        }
        if let Ok(rd) = std::fs::read_dir("/sys/class/net") {
            let mut names: Vec<String> = rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
            names.sort();
            if let Some(n) = names.into_iter().find(|n| n != "lo" && (n.starts_with("eth") || n.starts_with("en"))) {
                return Some(n);
            }
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn parse_v4(s: &str) -> Option<[u8; 4]> {
    s.parse::<std::net::Ipv4Addr>().ok().map(|a| a.octets())
}

/// Brings up lo and the uplink with the static address and default route.
pub fn configure(gateway: &str) -> Result<String, String> {
    let mut nl = Netlink::open().map_err(|e| format!("open rtnetlink: {e}"))?;
    let lo = ifindex("lo").map_err(|e| format!("find lo: {e}"))?;
    nl.request(RTM_NEWLINK, 0, &link_up_body(lo)).map_err(|e| format!("set lo up: {e}"))?;
    let name = find_uplink(Duration::from_secs(5)).ok_or("no network interface appeared (virtio_net)")?;
    let idx = ifindex(&name).map_err(|e| format!("find {name}: {e}"))?;
    nl.request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, &addr_body(idx, ADDRESS, PREFIX))
        .map_err(|e| format!("add address to {name}: {e}"))?;
    nl.request(RTM_NEWLINK, 0, &link_up_body(idx)).map_err(|e| format!("set {name} up: {e}"))?;
    let gw = parse_v4(gateway).ok_or_else(|| format!("bad gateway {gateway:?}"))?;
    nl.request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, &default_route_body(idx, gw))
        .map_err(|e| format!("add default route via {gateway} on {name}: {e}"))?;
    Ok(name)
}

/// /etc/hosts content (the image links /etc/hosts to /run/berth/hosts).
pub fn hosts_file(gateway: &str) -> String {
    let a = ADDRESS;
    format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{}.{}.{}.{}\tberth\n{gateway}\thost.docker.internal gateway.docker.internal\n",
        a[0], a[1], a[2], a[3]
    )
}

pub fn resolv_conf() -> String {
    format!("nameserver {DNS}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_message_carries_local_address_and_broadcast() {
        let b = addr_body(2, [10, 0, 2, 15], 24);
        assert_eq!(&b[..4], &[libc::AF_INET as u8, 24, 0, 0]);
        assert_eq!(u32::from_ne_bytes(b[4..8].try_into().unwrap()), 2);
        // IFA_LOCAL attribute
        assert_eq!(u16::from_ne_bytes(b[8..10].try_into().unwrap()), 8);
        assert_eq!(u16::from_ne_bytes(b[10..12].try_into().unwrap()), IFA_LOCAL);
        assert_eq!(&b[12..16], &[10, 0, 2, 15]);
        // broadcast last
        assert_eq!(&b[b.len() - 4..], &[10, 0, 2, 255]);
        assert_eq!(b.len() % 4, 0);
    }

    #[test]
    fn default_route_message_has_gateway_and_oif() {
        let b = default_route_body(3, [10, 0, 2, 2]);
        assert_eq!(b.len(), 12 + 8 + 8);
        assert_eq!(b[1], 0, "dst_len 0 = default route");
        assert_eq!(&b[16..20], &[10, 0, 2, 2]);
        assert_eq!(u32::from_ne_bytes(b[24..28].try_into().unwrap()), 3);
    }

    #[test]
    fn hosts_file_names_the_host() {
        let h = hosts_file("10.0.2.2");
        assert!(h.contains("10.0.2.2\thost.docker.internal gateway.docker.internal\n"));
        assert!(h.starts_with("127.0.0.1\tlocalhost\n"));
        assert_eq!(resolv_conf(), "nameserver 10.0.2.3\n");
    }
}

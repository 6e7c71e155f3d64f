//! Netlink operations on links, addresses and routes, for bridge networks.
//!
//! This module owns talking rtnetlink (through the `rtnetlink` crate): the
//! bridges of the engine's networks, the veth pairs of container endpoints,
//! and the configuration of the container side of an endpoint inside its
//! network namespace. It also owns the two sysctls bridge networking needs
//! (`ip_forward`, `route_localnet`) and the MAC address scheme.
//!
//! It does not own which networks exist, address management, or NAT and
//! filter rules (see `nft.rs`).
//!
//! Namespaces: the engine's own threads never change network namespace. A
//! [`Netlink`] for another namespace ([`Netlink::in_netns`]) opens its socket
//! in a short-lived thread that joins the namespace; a netlink socket stays
//! bound to the namespace it was created in, so the engine then uses it from
//! any task. Dropping a [`Netlink`] closes its socket, so it never keeps a
//! namespace alive.
//!
//! Errors are `io::Error`s whose message names the interface and operation.
//! When the kernel answered with an errno, the error's kind follows it and
//! [`errno`] returns it (so callers can match `EEXIST`, `ENODEV`, ...).

use std::fmt;
use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsFd;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteHeader};
use rtnetlink::{LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

/// An rtnetlink connection bound to one network namespace (the engine's own,
/// or a container's).
///
/// The connection task runs on the tokio runtime that created the value; it is
/// stopped, and the socket closed, when the value is dropped.
pub struct Netlink {
    handle: rtnetlink::Handle,
    conn: tokio::task::JoinHandle<()>,
}

impl fmt::Debug for Netlink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Netlink").finish_non_exhaustive()
    }
}

impl Drop for Netlink {
    fn drop(&mut self) {
        // The connection task would also end on its own once every handle is
        // gone, but only when next polled; aborting makes closing the socket
        // (and releasing a container's namespace) not depend on that.
        self.conn.abort();
    }
}

/// A netlink failure with the operation (and interface) it concerned.
#[derive(Debug)]
struct OpError {
    what: String,
    errno: Option<i32>,
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl fmt::Display for OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.what, self.source)
    }
}

impl std::error::Error for OpError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

/// The errno behind an error returned by this module (or any `io::Error`
/// made from an OS error), if the kernel gave one.
pub fn errno(err: &io::Error) -> Option<i32> {
    if let Some(code) = err.raw_os_error() {
        return Some(code);
    }
    err.get_ref()
        .and_then(|e| e.downcast_ref::<OpError>())
        .and_then(|e| e.errno)
}

/// Wraps an rtnetlink error: the kernel's errno (if any) decides the kind and
/// is kept for [`errno`]; `what` names the operation and interface.
fn nl_err(what: impl Into<String>, err: rtnetlink::Error) -> io::Error {
    let what = what.into();
    match err {
        rtnetlink::Error::NetlinkError(msg) => {
            let os = msg.to_io();
            let errno = os.raw_os_error();
            io::Error::new(
                os.kind(),
                OpError {
                    what,
                    errno,
                    source: Box::new(os),
                },
            )
        }
        other => io::Error::other(OpError {
            what,
            errno: None,
            source: Box::new(other),
        }),
    }
}

/// Wraps a non-netlink OS error (opening a namespace file, setns) the same way.
fn os_err(what: impl Into<String>, err: io::Error) -> io::Error {
    let errno = err.raw_os_error();
    io::Error::new(
        err.kind(),
        OpError {
            what: what.into(),
            errno,
            source: Box::new(err),
        },
    )
}

fn is_errno(err: &rtnetlink::Error, code: i32) -> bool {
    matches!(err, rtnetlink::Error::NetlinkError(m) if m.raw_code().abs() == code)
}

fn link_name(msg: &LinkMessage) -> Option<&str> {
    msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

fn link_mtu(msg: &LinkMessage) -> Option<u32> {
    msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(m) => Some(*m),
        _ => None,
    })
}

fn link_kind(msg: &LinkMessage) -> Option<&InfoKind> {
    msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(k) => Some(k),
            _ => None,
        }),
        _ => None,
    })
}

/// Spawns the connection future on the current runtime.
fn spawn_connection<F>(conn: F) -> io::Result<tokio::task::JoinHandle<()>>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let rt = tokio::runtime::Handle::try_current()
        .map_err(|e| io::Error::other(format!("netlink needs a tokio runtime: {e}")))?;
    Ok(rt.spawn(conn))
}

impl Netlink {
    /// A connection in the engine's own network namespace.
    pub async fn host() -> io::Result<Netlink> {
        let (conn, handle, messages) =
            rtnetlink::new_connection().map_err(|e| os_err("open netlink socket", e))?;
        // Unsolicited messages are never read; dropping the receiver lets the
        // connection end as soon as its handles are gone.
        drop(messages);
        let conn = spawn_connection(conn)?;
        Ok(Netlink { handle, conn })
    }

    /// A connection inside the network namespace at `netns` (for example
    /// `/proc/<pid>/ns/net` or a bind-mounted namespace file).
    ///
    /// Must be called within a tokio runtime (the connection task is spawned
    /// on it). The socket is created by a fresh thread that joins the
    /// namespace and exits; the calling thread never changes namespace.
    pub fn in_netns(netns: &Path) -> io::Result<Netlink> {
        let rt = tokio::runtime::Handle::try_current()
            .map_err(|e| io::Error::other(format!("netlink needs a tokio runtime: {e}")))?;
        let ns = File::open(netns)
            .map_err(|e| os_err(format!("open network namespace {}", netns.display()), e))?;
        let ns_name = netns.display().to_string();
        let rt_in_thread = rt.clone();
        let joined = std::thread::Builder::new()
            .name("berth-netns".into())
            .spawn(move || {
                rustix::thread::move_into_link_name_space(
                    ns.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .map_err(|e| os_err(format!("join network namespace {ns_name}"), e.into()))?;
                // The tokio socket registers with the runtime's reactor, which
                // needs the runtime's context in this thread.
                let _guard = rt_in_thread.enter();
                rtnetlink::new_connection()
                    .map_err(|e| os_err(format!("open netlink socket in {ns_name}"), e))
            })
            .map_err(|e| os_err("spawn namespace thread", e))?
            .join()
            .map_err(|_| io::Error::other("namespace thread panicked"))?;
        let (conn, handle, messages) = joined?;
        drop(messages);
        let conn = rt.spawn(conn);
        Ok(Netlink { handle, conn })
    }

    /// The link called `name`, if it exists.
    async fn get_link(&self, name: &str) -> io::Result<Option<LinkMessage>> {
        let mut links = self.handle.link().get().match_name(name).execute();
        match links.try_next().await {
            Ok(link) => Ok(link),
            Err(e) if is_errno(&e, libc::ENODEV) => Ok(None),
            Err(e) => Err(nl_err(format!("look up link {name}"), e)),
        }
    }

    async fn index_of(&self, name: &str) -> io::Result<u32> {
        match self.get_link(name).await? {
            Some(l) => Ok(l.header.index),
            None => Err(io::Error::new(
                io::ErrorKind::NotFound,
                OpError {
                    what: format!("look up link {name}"),
                    errno: Some(libc::ENODEV),
                    source: Box::new(io::Error::from_raw_os_error(libc::ENODEV)),
                },
            )),
        }
    }

    /// Whether a link called `name` exists.
    pub async fn link_exists(&self, name: &str) -> io::Result<bool> {
        Ok(self.get_link(name).await?.is_some())
    }

    /// The names of every link in the namespace.
    pub async fn list_link_names(&self) -> io::Result<Vec<String>> {
        let links: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| nl_err("list links", e))?;
        Ok(links
            .iter()
            .filter_map(|l| link_name(l).map(str::to_owned))
            .collect())
    }

    /// Deletes the link `name`; `Ok(false)` if there was none.
    pub async fn delete_link(&self, name: &str) -> io::Result<bool> {
        let Some(link) = self.get_link(name).await? else {
            return Ok(false);
        };
        match self.handle.link().del(link.header.index).execute().await {
            Ok(()) => Ok(true),
            // Gone between the lookup and the delete.
            Err(e) if is_errno(&e, libc::ENODEV) => Ok(false),
            Err(e) => Err(nl_err(format!("delete link {name}"), e)),
        }
    }

    /// Makes sure the bridge `name` exists, carries `gateway/prefix`, has
    /// `mtu` (when given) and is up. Idempotent; an existing link of that
    /// name that is not a bridge is an error.
    pub async fn ensure_bridge(
        &self,
        name: &str,
        gateway: Ipv4Addr,
        prefix: u8,
        mtu: Option<u32>,
    ) -> io::Result<()> {
        let link = match self.get_link(name).await? {
            Some(link) => link,
            None => {
                let mut msg = LinkBridge::new(name);
                if let Some(mtu) = mtu {
                    msg = msg.mtu(mtu);
                }
                match self.handle.link().add(msg.build()).execute().await {
                    Ok(()) => {}
                    // Created concurrently: fine, it is checked below.
                    Err(e) if is_errno(&e, libc::EEXIST) => {}
                    Err(e) => return Err(nl_err(format!("create bridge {name}"), e)),
                }
                self.get_link(name).await?.ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("bridge {name} vanished after creation"),
                    )
                })?
            }
        };
        if link_kind(&link) != Some(&InfoKind::Bridge) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("link {name} exists and is not a bridge"),
            ));
        }
        let index = link.header.index;

        if let Some(mtu) = mtu {
            if link_mtu(&link) != Some(mtu) {
                let msg = LinkUnspec::new_with_index(index).mtu(mtu).build();
                self.handle
                    .link()
                    .change(msg)
                    .execute()
                    .await
                    .map_err(|e| nl_err(format!("set mtu {mtu} on bridge {name}"), e))?;
            }
        }

        let addrs: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| nl_err(format!("list addresses of bridge {name}"), e))?;
        let has_gateway = addrs.iter().any(|a| {
            a.header.prefix_len == prefix
                && a.attributes.iter().any(|attr| {
                    matches!(attr, AddressAttribute::Local(ip) | AddressAttribute::Address(ip)
                        if *ip == IpAddr::V4(gateway))
                })
        });
        if !has_gateway {
            self.add_address(index, gateway, prefix, &format!("bridge {name}")).await?;
        }

        if !link.header.flags.contains(LinkFlags::Up) {
            self.set_up(index, name).await?;
        }
        Ok(())
    }

    /// Adds `addr/prefix` to the link `index` (`what` names it in errors);
    /// an address already there is fine.
    async fn add_address(&self, index: u32, addr: Ipv4Addr, prefix: u8, what: &str) -> io::Result<()> {
        match self.handle.address().add(index, IpAddr::V4(addr), prefix).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::EEXIST) => Ok(()),
            Err(e) => Err(nl_err(format!("add address {addr}/{prefix} to {what}"), e)),
        }
    }

    async fn set_up(&self, index: u32, name: &str) -> io::Result<()> {
        let msg = LinkUnspec::new_with_index(index).up().build();
        self.handle
            .link()
            .change(msg)
            .execute()
            .await
            .map_err(|e| nl_err(format!("set link {name} up"), e))
    }

    /// Creates the veth pair `host_name` / `peer_tmp_name`, attaches
    /// `host_name` to `bridge` and sets it up, and moves `peer_tmp_name` into
    /// the network namespace at `netns` (where [`Netlink::configure_endpoint`]
    /// finishes it). Both ends get the bridge's MTU.
    ///
    /// On failure after the pair was created, the pair is deleted again.
    pub async fn create_veth_into(
        &self,
        host_name: &str,
        bridge: &str,
        peer_tmp_name: &str,
        netns: &Path,
    ) -> io::Result<()> {
        let ns = File::open(netns)
            .map_err(|e| os_err(format!("open network namespace {}", netns.display()), e))?;
        let br = self.get_link(bridge).await?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("bridge {bridge} for veth {host_name} does not exist"),
            )
        })?;
        // One request: the peer is born in the container's namespace (moving
        // it afterwards costs an RCU grace period, ~20 ms), the host end on
        // the bridge and up.
        let mut peer = LinkUnspec::new_with_name(peer_tmp_name).setns_by_fd(ns.as_raw_fd());
        let mut msg = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(host_name.to_string())
            .controller(br.header.index)
            .up();
        if let Some(mtu) = link_mtu(&br) {
            peer = peer.mtu(mtu);
            msg = msg.mtu(mtu);
        }
        let msg = msg
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())))
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(|e| nl_err(format!("create veth pair {host_name}/{peer_tmp_name} into {} on {bridge}", netns.display()), e))
    }


    /// On a [`Netlink::in_netns`] connection: turns the interface moved in by
    /// [`Netlink::create_veth_into`] into the container's endpoint. Renames
    /// `tmp_name` to `final_name` (`eth0`, `eth1`, ...), sets `mac`, adds
    /// `addr/prefix`, sets it and `lo` up, and when `gateway` is given adds
    /// the default route through it.
    ///
    /// Only a container's first endpoint should get a gateway. If a default
    /// route already exists (`EEXIST`, a gateway passed for a second
    /// network), that is not an error: the first network's route is kept,
    /// as dockerd does.
    pub async fn configure_endpoint(
        &self,
        tmp_name: &str,
        final_name: &str,
        addr: Ipv4Addr,
        prefix: u8,
        mac: [u8; 6],
        gateway: Option<Ipv4Addr>,
    ) -> io::Result<()> {
        let index = self.index_of(tmp_name).await?;
        // Renaming needs the link down, which a freshly moved veth end is.
        let msg = LinkUnspec::new_with_index(index)
            .name(final_name)
            .address(mac.to_vec())
            .build();
        self.handle
            .link()
            .change(msg)
            .execute()
            .await
            .map_err(|e| {
                nl_err(
                    format!("rename {tmp_name} to {final_name} and set its mac"),
                    e,
                )
            })?;

        self.add_address(index, addr, prefix, final_name).await?;
        self.set_up(index, final_name).await?;

        let lo = self.index_of("lo").await?;
        self.set_up(lo, "lo").await?;

        if let Some(gw) = gateway {
            let route = RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(gw)
                .output_interface(index)
                .build();
            match self.handle.route().add(route).execute().await {
                Ok(()) => {}
                Err(e) if is_errno(&e, libc::EEXIST) => {
                    tracing::debug!("default route already present, keeping it (gateway {gw})");
                }
                Err(e) => {
                    return Err(nl_err(
                        format!("add default route via {gw} on {final_name}"),
                        e,
                    ))
                }
            }
        }
        Ok(())
    }

    /// Destinations of the IPv4 routes in the main table, without the
    /// default route: the subnets already reachable from here, which new
    /// networks must avoid.
    pub async fn routes_v4(&self) -> io::Result<Vec<(Ipv4Addr, u8)>> {
        let query = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let routes: Vec<_> = self
            .handle
            .route()
            .get(query)
            .execute()
            .try_collect()
            .await
            .map_err(|e| nl_err("list ipv4 routes", e))?;
        let mut out = Vec::new();
        for r in &routes {
            let table = r
                .attributes
                .iter()
                .find_map(|a| match a {
                    RouteAttribute::Table(t) => Some(*t),
                    _ => None,
                })
                .unwrap_or(u32::from(r.header.table));
            if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
                continue;
            }
            let prefix = r.header.destination_prefix_length;
            if prefix == 0 {
                continue;
            }
            let dest = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(*ip),
                _ => None,
            });
            if let Some(dest) = dest {
                if !out.contains(&(dest, prefix)) {
                    out.push((dest, prefix));
                }
            }
        }
        Ok(out)
    }
}

/// Turns on IPv4 forwarding (`/proc/sys/net/ipv4/ip_forward`), which bridge
/// networks with outside access need.
pub fn set_ip_forward() -> io::Result<()> {
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
        .map_err(|e| os_err("enable net.ipv4.ip_forward", e))
}

/// Sets `net.ipv4.conf.<bridge>.route_localnet = 1`, so that traffic to a
/// port published on 127.0.0.1 can be DNATed out of `bridge`.
pub fn set_route_localnet(bridge: &str) -> io::Result<()> {
    if bridge.is_empty() || bridge.contains('/') || bridge == "." || bridge == ".." {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid interface name {bridge:?}"),
        ));
    }
    std::fs::write(
        format!("/proc/sys/net/ipv4/conf/{bridge}/route_localnet"),
        "1",
    )
    .map_err(|e| os_err(format!("enable route_localnet on {bridge}"), e))
}

/// The MAC address of the endpoint with address `ip`: `02:42:` followed by
/// the address's four octets, as dockerd generates it.
pub fn mac_for(ip: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = ip.octets();
    [0x02, 0x42, a, b, c, d]
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::process::{Child, Command};
    use std::time::{Duration, Instant};

    #[test]
    fn mac_for_prefixes_02_42_to_the_address() {
        assert_eq!(
            mac_for(Ipv4Addr::new(172, 17, 0, 2)),
            [0x02, 0x42, 172, 17, 0, 2]
        );
    }

    #[test]
    fn errno_reads_wrapped_netlink_errors() {
        let e = os_err("x", io::Error::from_raw_os_error(libc::EEXIST));
        assert_eq!(errno(&e), Some(libc::EEXIST));
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert!(e.to_string().starts_with("x: "), "{e}");
    }

    #[test]
    fn route_localnet_rejects_path_like_names() {
        assert!(set_route_localnet("../x").is_err());
        assert!(set_route_localnet("").is_err());
    }

    pub(crate) fn is_root() -> bool {
        rustix::process::geteuid().is_root()
    }

    /// A child in its own network namespace, killed on drop.
    pub(crate) struct NsChild(Child);

    impl NsChild {
        pub(crate) fn spawn() -> NsChild {
            let child = Command::new("unshare")
                .args(["-n", "sleep", "30"])
                .spawn()
                .expect("spawn unshare");
            let me = std::fs::read_link("/proc/self/ns/net").expect("own netns");
            let path = format!("/proc/{}/ns/net", child.id());
            // unshare(1) switches namespace after exec; wait for it.
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                if let Ok(ns) = std::fs::read_link(&path) {
                    if ns != me {
                        break;
                    }
                }
                assert!(Instant::now() < deadline, "child never left the host netns");
                std::thread::sleep(Duration::from_millis(10));
            }
            NsChild(child)
        }

        pub(crate) fn netns(&self) -> std::path::PathBuf {
            format!("/proc/{}/ns/net", self.0.id()).into()
        }
    }

    impl Drop for NsChild {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// Deletes the bridge at the end of the test, even on panic.
    pub(crate) struct BridgeGuard(pub(crate) String);

    impl Drop for BridgeGuard {
        fn drop(&mut self) {
            let _ = Command::new("ip")
                .args(["link", "del", &self.0])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }

    #[tokio::test]
    async fn bridge_veth_and_endpoint_reach_the_container() {
        if !is_root() {
            eprintln!("skipping bridge_veth_and_endpoint_reach_the_container: needs root");
            return;
        }
        let tag: u32 = rand::random();
        let br = format!("bt{:06x}", tag & 0xff_ffff);
        let x = (tag >> 24) as u8;
        let gw = Ipv4Addr::new(10, 251, x, 1);
        let ip = Ipv4Addr::new(10, 251, x, 2);
        let _guard = BridgeGuard(br.clone());

        let nl = Netlink::host().await.expect("host netlink");
        nl.ensure_bridge(&br, gw, 24, Some(1450))
            .await
            .expect("ensure bridge");
        // Idempotent.
        nl.ensure_bridge(&br, gw, 24, Some(1450))
            .await
            .expect("ensure bridge again");
        let link = nl.get_link(&br).await.expect("get").expect("bridge exists");
        assert!(link.header.flags.contains(LinkFlags::Up), "bridge is up");
        assert_eq!(link_mtu(&link), Some(1450));
        assert!(nl.link_exists(&br).await.expect("exists"));
        assert!(nl.list_link_names().await.expect("list").contains(&br));

        let routes = nl.routes_v4().await.expect("routes");
        assert!(
            routes.contains(&(Ipv4Addr::new(10, 251, x, 0), 24)),
            "{routes:?}"
        );
        let host_has_testnet = Command::new("ip")
            .args(["-4", "route", "show", "192.0.2.0/24"])
            .output()
            .map(|o| !o.stdout.is_empty())
            .unwrap_or(false);
        if host_has_testnet {
            assert!(
                routes.contains(&(Ipv4Addr::new(192, 0, 2, 0), 24)),
                "{routes:?}"
            );
        }
        assert!(
            !routes.iter().any(|r| r.1 == 0),
            "no default route: {routes:?}"
        );

        let child = NsChild::spawn();
        let host_end = format!("vt{:06x}", tag & 0xff_ffff);
        let peer_tmp = format!("vp{:06x}", tag & 0xff_ffff);
        nl.create_veth_into(&host_end, &br, &peer_tmp, &child.netns())
            .await
            .expect("create veth");
        assert!(nl.link_exists(&host_end).await.expect("host end"));
        assert!(!nl.link_exists(&peer_tmp).await.expect("peer moved"));

        let inside = Netlink::in_netns(&child.netns()).expect("netns netlink");
        inside
            .configure_endpoint(&peer_tmp, "eth0", ip, 24, mac_for(ip), Some(gw))
            .await
            .expect("configure endpoint");
        // A second endpoint given a gateway too keeps the first default route.
        let host_end2 = format!("vu{:06x}", tag & 0xff_ffff);
        nl.create_veth_into(&host_end2, &br, &peer_tmp, &child.netns())
            .await
            .expect("create second veth");
        let ip2 = Ipv4Addr::new(10, 251, x, 3);
        inside
            .configure_endpoint(&peer_tmp, "eth1", ip2, 24, mac_for(ip2), Some(gw))
            .await
            .expect("second endpoint with a gateway");
        let names = inside.list_link_names().await.expect("names inside");
        assert!(names.contains(&"eth0".to_string()), "{names:?}");
        let eth0 = inside.get_link("eth0").await.expect("get").expect("eth0");
        let mac = eth0.attributes.iter().find_map(|a| match a {
            LinkAttribute::Address(m) => Some(m.clone()),
            _ => None,
        });
        assert_eq!(mac, Some(mac_for(ip).to_vec()));
        let inner_routes = inside.routes_v4().await.expect("routes inside");
        assert!(inner_routes.contains(&(Ipv4Addr::new(10, 251, x, 0), 24)));
        let out = Command::new("nsenter")
            .arg(format!("--net={}", child.netns().display()))
            .args(["ip", "-4", "route", "show", "default"])
            .output()
            .expect("nsenter");
        let out = String::from_utf8_lossy(&out.stdout);
        assert!(out.contains(&format!("via {gw}")), "default route: {out}");

        let ping = Command::new("busybox")
            .args(["ping", "-c1", "-W2", &ip.to_string()])
            .status()
            .expect("run busybox ping");
        assert!(ping.success(), "ping {ip} from the host");

        drop(inside);
        assert!(nl
            .delete_link(&host_end2)
            .await
            .expect("delete second veth"));
        assert!(nl.delete_link(&host_end).await.expect("delete veth"));
        assert!(!nl.delete_link(&host_end).await.expect("delete veth again"));
        assert!(nl.delete_link(&br).await.expect("delete bridge"));
        assert!(!nl.link_exists(&br).await.expect("exists after delete"));
    }

    #[tokio::test]
    async fn ensure_bridge_refuses_a_non_bridge_link() {
        if !is_root() {
            eprintln!("skipping ensure_bridge_refuses_a_non_bridge_link: needs root");
            return;
        }
        let nl = Netlink::host().await.expect("host netlink");
        let err = nl
            .ensure_bridge("lo", Ipv4Addr::new(10, 251, 0, 1), 24, None)
            .await
            .expect_err("lo is not a bridge");
        assert!(err.to_string().contains("not a bridge"), "{err}");
    }

    #[tokio::test]
    async fn missing_link_reports_enodev() {
        if !is_root() {
            eprintln!("skipping missing_link_reports_enodev: needs root");
            return;
        }
        let nl = Netlink::host().await.expect("host netlink");
        let err = nl
            .create_veth_into(
                "vtnone0",
                "btnonexist",
                "vpnone0",
                Path::new("/proc/self/ns/net"),
            )
            .await
            .expect_err("no bridge");
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        let err = nl.index_of("btnonexist").await.expect_err("no link");
        assert_eq!(errno(&err), Some(libc::ENODEV));
        assert!(!nl.delete_link("btnonexist").await.expect("delete missing"));
    }
}

//! Container networking: networks (the default bridge, user-defined
//! bridges, `host`, `none`), IP address management, endpoints in container
//! network namespaces, NAT and published ports, and the embedded DNS server.
//!
//! Owns network records (one atomic JSON file), address allocation, the
//! Linux bridges, the engine's nftables table and the live per-container
//! pieces (DNS server, port proxies). Does not own containers: the container
//! service decides which endpoints a container has (stored in its record)
//! and calls [`Networks::attach`] / [`Networks::detach`] around its life;
//! it tells this module who is connected through the usage callback.
//!
//! A container's interfaces live in the network namespace its runtime
//! creates; they are configured after `runtime create` and before the
//! process starts, so the process sees its network from its first
//! instruction. The veth pair dies with the namespace, so an exited
//! container leaves no interface behind even when the engine was killed.

pub mod dns;
pub mod ipam;
pub mod link;
pub mod nft;
pub mod proxy;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::content::write_atomic;
use crate::error::{Error, Kind, Result};
use crate::events::EventBus;
use crate::filters::Filters;
use crate::paths::Paths;
use ipam::Subnet;

/// The predefined networks, as dockerd names them.
pub const BRIDGE: &str = "bridge";
pub const HOST: &str = "host";
pub const NONE: &str = "none";

/// One network's record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetworkRecord {
    pub id: String,
    pub name: String,
    /// `bridge`, `host` or `null` (the `none` network).
    pub driver: String,
    pub created: String,
    #[serde(default)]
    pub internal: bool,
    #[serde(default)]
    pub attachable: bool,
    #[serde(default)]
    pub subnet: Option<String>,
    #[serde(default)]
    pub gateway: Option<String>,
    #[serde(default)]
    pub ip_range: Option<String>,
    /// The subnet was given by the user (only then may containers ask for
    /// a fixed address, as with dockerd).
    #[serde(default)]
    pub user_subnet: bool,
    /// The gateway was given by the user (inspect shows a gateway for a
    /// user subnet only then, as dockerd).
    #[serde(default)]
    pub user_gateway: bool,
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The Linux bridge (bridge driver only).
    #[serde(default)]
    pub bridge: String,
}

impl NetworkRecord {
    pub fn subnet(&self) -> Option<Subnet> {
        self.subnet.as_deref().and_then(|s| s.parse().ok())
    }
    pub fn gateway(&self) -> Option<Ipv4Addr> {
        self.gateway.as_deref().and_then(|g| g.parse().ok())
    }
    fn range(&self) -> Option<Subnet> {
        self.ip_range.as_deref().and_then(|s| s.parse().ok())
    }
    pub fn predefined(&self) -> bool {
        [BRIDGE, HOST, NONE].contains(&self.name.as_str())
    }
    pub fn is_bridge(&self) -> bool {
        self.driver == "bridge"
    }
    /// User-defined bridges get DNS by name; the default bridge does not.
    pub fn has_dns(&self) -> bool {
        self.is_bridge() && self.name != BRIDGE
    }
}

/// A container's endpoint on one network, as kept in its record. The
/// address fields are set while the container runs.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Endpoint {
    pub network_id: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    /// `--ip`.
    #[serde(default)]
    pub requested_ip: Option<String>,
    #[serde(default)]
    pub endpoint_id: String,
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
    /// The last address held, preferred at the next start.
    #[serde(default)]
    pub last_ip: Option<Ipv4Addr>,
    #[serde(default)]
    pub host_veth: String,
    /// `--mac-address` (`02:42:...` derived from the address otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

impl Endpoint {
    /// The MAC address while connected: `--mac-address`, else derived
    /// from the address as dockerd does.
    pub fn mac_address(&self) -> Option<String> {
        self.ip.map(|ip| self.mac.clone().unwrap_or_else(|| mac_string(ip)))
    }

    /// Takes the address and names of a planned endpoint.
    pub fn assign(&mut self, p: &Planned) {
        self.ip = Some(p.ip);
        self.last_ip = Some(p.ip);
        self.endpoint_id = p.endpoint_id.clone();
        self.host_veth = p.host_veth.clone();
    }
}

/// Engine-wide network settings (dockerd's `--bridge`, `--bip`,
/// `--iptables`, `--ip-forward`, `--host-gateway-ip`).
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Linux name of the default bridge; `None` disables it (`--bridge none`).
    pub default_bridge: Option<String>,
    /// `--bip`: the default bridge's gateway address and prefix.
    pub bip: Option<(Ipv4Addr, u8)>,
    /// The nftables table holding this engine's rules.
    pub table: String,
    /// `--iptables=false` leaves the firewall alone.
    pub firewall: bool,
    pub ip_forward: bool,
    pub host_gateway_ip: Option<Ipv4Addr>,
    /// The engine runs in the Berth VM (see [`Networks::publish`]).
    pub vm_guest: bool,
}

impl NetConfig {
    /// Defaults for an engine with this exec root: `berth0` and table
    /// `berth` for the standard one, names derived from the exec root
    /// otherwise, so engines side by side (tests) never share a bridge.
    pub fn for_exec_root(exec_root: &Path) -> NetConfig {
        let standard = [Path::new("/var/run/berth"), Path::new("/run/berth")].contains(&exec_root);
        let (bridge, table) = if standard {
            ("berth0".to_owned(), "berth".to_owned())
        } else {
            let h = crate::digest::Digest::of(exec_root.as_os_str().as_encoded_bytes());
            let tag = &h.hex()[..8];
            (format!("bb-{tag}"), format!("berth-{tag}"))
        };
        NetConfig { default_bridge: Some(bridge), bip: None, table, firewall: true, ip_forward: true, host_gateway_ip: None, vm_guest: false }
    }
}

/// One published port as it is live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortBinding {
    /// `80/tcp`.
    pub container_port: String,
    pub host_ip: String,
    pub host_port: u16,
}

/// A container as the network module sees it (from the usage callback).
#[derive(Debug, Clone)]
pub struct Attached {
    pub container_id: String,
    pub name: String,
    pub running: bool,
    pub hostname: String,
    pub endpoints: BTreeMap<String, Endpoint>,
}

pub type UsageFn = Arc<dyn Fn() -> Vec<Attached> + Send + Sync>;

/// An endpoint ready to be plumbed into a namespace.
#[derive(Debug, Clone)]
pub struct Planned {
    pub network: NetworkRecord,
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    pub host_veth: String,
    pub endpoint_id: String,
    /// `--mac-address`, else derived from the address.
    pub mac: [u8; 6],
}

/// What runs for a live container besides its interfaces.
#[derive(Default)]
struct Live {
    dns: Option<dns::DnsServer>,
    proxies: Vec<proxy::Published>,
    ports: Vec<nft::PortRule>,
}

struct State {
    nets: BTreeMap<String, NetworkRecord>,
    /// Addresses in use per network ID.
    used: HashMap<String, BTreeSet<Ipv4Addr>>,
}

/// The network service.
pub struct Networks {
    paths: Paths,
    pub cfg: NetConfig,
    events: Arc<EventBus>,
    state: Mutex<State>,
    usage: RwLock<Option<UsageFn>>,
    host_nl: tokio::sync::OnceCell<link::Netlink>,
    live: Mutex<HashMap<String, Live>>,
    /// Serializes ruleset applications (each replaces the whole table).
    nft_lock: tokio::sync::Mutex<()>,
}

fn no_such(name: &str) -> Error {
    Error::not_found(format!("network {name} not found"))
}

fn io_err(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::internal(format!("{what}: {e}"))
}

/// Holds a host-wide lock while subnets are chosen and bridges created, so
/// engines starting side by side do not pick the same subnet.
struct HostLock(#[allow(dead_code)] std::fs::File);

impl HostLock {
    fn take() -> Result<HostLock> {
        let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open("/run/berth-ipam.lock").map_err(io_err("open /run/berth-ipam.lock"))?;
        rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive).map_err(|e| Error::internal(format!("lock /run/berth-ipam.lock: {e}")))?;
        Ok(HostLock(f))
    }
}

impl Networks {
    /// Loads the network records (creating the predefined ones). Bridges
    /// and rules are set up by [`Networks::init`].
    pub fn open(paths: &Paths, cfg: NetConfig, events: Arc<EventBus>) -> std::io::Result<Arc<Networks>> {
        std::fs::create_dir_all(paths.network_dir())?;
        let mut nets: BTreeMap<String, NetworkRecord> = match std::fs::read(paths.networks_file()) {
            Ok(data) => serde_json::from_slice::<Vec<NetworkRecord>>(&data)
                .map_err(|e| std::io::Error::other(format!("{}: {e}", paths.networks_file().display())))?
                .into_iter()
                .map(|n| (n.id.clone(), n))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e),
        };
        let mut predefined = vec![(HOST, "host"), (NONE, "null")];
        match &cfg.default_bridge {
            Some(_) => predefined.push((BRIDGE, "bridge")),
            None => nets.retain(|_, n| n.name != BRIDGE),
        }
        for (name, driver) in predefined {
            if !nets.values().any(|n| n.name == name) {
                let id = crate::digest::random_id();
                nets.insert(id.clone(), NetworkRecord {
                    id,
                    name: name.into(),
                    driver: driver.into(),
                    created: crate::timefmt::now_rfc3339(),
                    internal: false,
                    attachable: false,
                    subnet: None,
                    gateway: None,
                    ip_range: None,
                    user_subnet: false,
                    user_gateway: false,
                    options: BTreeMap::new(),
                    labels: BTreeMap::new(),
                    bridge: String::new(),
                });
            }
        }
        if let Some(b) = &cfg.default_bridge {
            if let Some(n) = nets.values_mut().find(|n| n.name == BRIDGE) {
                n.bridge = b.clone();
                n.options = default_bridge_options(b);
            }
        }
        let me = Arc::new(Networks {
            paths: paths.clone(),
            cfg,
            events,
            state: Mutex::new(State { nets, used: HashMap::new() }),
            usage: RwLock::new(None),
            host_nl: tokio::sync::OnceCell::new(),
            live: Mutex::new(HashMap::new()),
            nft_lock: tokio::sync::Mutex::new(()),
        });
        // Best effort: on a full data disk the engine must still start (the
        // records are re-derived at every start).
        if let Err(e) = me.persist() {
            tracing::warn!(error = %e, "persist network records");
        }
        Ok(me)
    }

    pub fn set_usage(&self, f: UsageFn) {
        *self.usage.write().expect("usage lock poisoned") = Some(f);
    }

    fn attached(&self) -> Vec<Attached> {
        self.usage.read().expect("usage lock poisoned").as_ref().map(|f| f()).unwrap_or_default()
    }

    fn persist(&self) -> std::io::Result<()> {
        let st = self.state.lock().expect("network state poisoned");
        let list: Vec<&NetworkRecord> = st.nets.values().collect();
        write_atomic(&self.paths.networks_file(), &serde_json::to_vec_pretty(&list).map_err(std::io::Error::other)?)?;
        self.write_owned(&st)
    }

    /// Names what this engine created on the host, so a harness (or an
    /// operator) can clean up after an engine that cannot.
    fn write_owned(&self, st: &State) -> std::io::Result<()> {
        let links: Vec<&str> = st.nets.values().filter(|n| n.is_bridge()).map(|n| n.bridge.as_str()).collect();
        let owned = json!({"table": self.cfg.table, "links": links});
        write_atomic(&self.paths.network_dir().join("owned.json"), owned.to_string().as_bytes())
    }

    async fn nl(&self) -> Result<&link::Netlink> {
        self.host_nl.get_or_try_init(|| async { link::Netlink::host().await.map_err(io_err("netlink")) }).await
    }

    /// Sets up the default bridge and every user bridge (after a reboot
    /// they are gone), IP forwarding and the engine's nftables table.
    pub async fn init(&self) -> Result<()> {
        if self.cfg.ip_forward {
            if let Err(e) = link::set_ip_forward() {
                tracing::warn!(error = %e, "cannot enable IP forwarding");
            }
        }
        let _host = HostLock::take()?;
        let routes = self.routes_elsewhere().await?;
        let bridges: Vec<NetworkRecord> = self.state.lock().expect("network state poisoned").nets.values().filter(|n| n.is_bridge()).cloned().collect();
        for mut n in bridges {
            let ours: Vec<Subnet> = self.subnets_except(&n.id);
            let stored = n.subnet();
            let conflict = stored.is_some_and(|s| routes.iter().chain(ours.iter()).any(|r| r.overlaps(&s)));
            if n.name == BRIDGE {
                if let Some((gw, prefix)) = self.cfg.bip {
                    let s = Subnet::new(gw, prefix);
                    n.subnet = Some(s.to_string());
                    n.gateway = Some(gw.to_string());
                } else if stored.is_none() || conflict {
                    let mut taken = routes.clone();
                    taken.extend(ours);
                    let s = ipam::pick_subnet(&taken).ok_or_else(|| Error::internal("could not find a free subnet for the default bridge"))?;
                    n.subnet = Some(s.to_string());
                    n.gateway = Some(s.default_gateway().to_string());
                }
            } else if conflict {
                tracing::warn!(network = %n.name, subnet = ?n.subnet, "network's subnet overlaps a route on this host");
            }
            let (Some(s), Some(gw)) = (n.subnet(), n.gateway()) else { continue };
            self.nl().await?.ensure_bridge(&n.bridge, gw, s.prefix, None).await.map_err(io_err(format!("create bridge {}", n.bridge)))?;
            self.state.lock().expect("network state poisoned").nets.insert(n.id.clone(), n);
        }
        self.persist().map_err(io_err("save networks"))?;
        drop(_host);
        self.apply_rules().await
    }

    /// IPv4 routes on the host that are not this engine's bridges.
    async fn routes_elsewhere(&self) -> Result<Vec<Subnet>> {
        let ours: Vec<Subnet> = self.state.lock().expect("network state poisoned").nets.values().filter_map(NetworkRecord::subnet).collect();
        let routes = self.nl().await?.routes_v4().await.map_err(io_err("list routes"))?;
        Ok(routes.into_iter().map(|(a, p)| Subnet::new(a, p)).filter(|r| !ours.contains(r)).collect())
    }

    fn subnets_except(&self, id: &str) -> Vec<Subnet> {
        self.state.lock().expect("network state poisoned").nets.values().filter(|n| n.id != id).filter_map(NetworkRecord::subnet).collect()
    }

    /// Replaces the engine's nftables table with the current state.
    async fn apply_rules(&self) -> Result<()> {
        if !self.cfg.firewall {
            return Ok(());
        }
        let _g = self.nft_lock.lock().await;
        let rules = {
            let st = self.state.lock().expect("network state poisoned");
            let bridges = st
                .nets
                .values()
                .filter(|n| n.is_bridge())
                .filter_map(|n| {
                    let s = n.subnet()?;
                    Some(nft::Bridge { name: n.bridge.clone(), subnet: (s.addr, s.prefix), internal: n.internal, masquerade: masquerade(n) })
                })
                .collect();
            let ports = self.live.lock().expect("live lock poisoned").values().flat_map(|l| l.ports.clone()).collect();
            nft::Ruleset { table: self.cfg.table.clone(), bridges, ports }
        };
        tokio::task::spawn_blocking(move || nft::apply(&rules)).await.map_err(|e| Error::internal(e.to_string()))?.map_err(io_err("apply nftables rules"))
    }

    /// Removes the bridges and rules of this engine, when it shuts down
    /// with no container running.
    pub async fn teardown_host(&self) {
        let bridges: Vec<String> = self.state.lock().expect("network state poisoned").nets.values().filter(|n| n.is_bridge()).map(|n| n.bridge.clone()).collect();
        if let Ok(nl) = self.nl().await {
            for b in bridges {
                let _ = nl.delete_link(&b).await;
            }
        }
        if self.cfg.firewall {
            let table = self.cfg.table.clone();
            let _ = tokio::task::spawn_blocking(move || nft::remove(&table)).await;
        }
    }

    pub fn get(&self, name_or_id: &str) -> Result<NetworkRecord> {
        let st = self.state.lock().expect("network state poisoned");
        find(&st.nets, name_or_id).cloned()
    }

    /// The address containers use for `host-gateway`.
    pub fn host_gateway(&self) -> Option<Ipv4Addr> {
        self.cfg.host_gateway_ip.or_else(|| self.get(BRIDGE).ok().and_then(|n| n.gateway()))
    }

    /// `POST /networks/create`.
    pub async fn create(&self, body: &Value) -> Result<NetworkRecord> {
        let name = body.get("Name").and_then(Value::as_str).unwrap_or_default().to_owned();
        if name.is_empty() {
            return Err(Error::invalid("network name is required"));
        }
        if !valid_name(&name) {
            return Err(Error::invalid(format!("invalid network name {name:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")));
        }
        let driver = body.get("Driver").and_then(Value::as_str).filter(|d| !d.is_empty()).unwrap_or("bridge").to_owned();
        if driver != "bridge" {
            if driver == "host" || driver == "null" {
                return Err(Error::new(Kind::Forbidden, format!("only one instance of \"{driver}\" network is allowed")));
            }
            return Err(Error::not_found(format!("plugin \"{driver}\" not found")));
        }
        if body.get("EnableIPv6").and_then(Value::as_bool).unwrap_or(false) {
            return Err(Error::new(Kind::NotImplemented, "IPv6 networks are not supported yet"));
        }
        let strmap = |k: &str| -> Result<BTreeMap<String, String>> {
            match body.get(k) {
                None | Some(Value::Null) => Ok(BTreeMap::new()),
                Some(v) => serde_json::from_value(v.clone()).map_err(|e| Error::invalid(format!("invalid {k}: {e}"))),
            }
        };
        let labels = strmap("Labels")?;
        let options = strmap("Options")?;
        let configs: Vec<Value> = body.pointer("/IPAM/Config").and_then(Value::as_array).cloned().unwrap_or_default();
        if configs.len() > 1 {
            return Err(Error::new(Kind::NotImplemented, "only one IPv4 subnet per network is supported"));
        }
        let cfg = configs.first().cloned().unwrap_or(Value::Null);
        let field = |k: &str| cfg.get(k).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned);
        let subnet: Option<Subnet> = field("Subnet").map(|s| s.parse::<Subnet>().map_err(|e| Error::invalid(e.to_string()))).transpose()?;
        let range: Option<Subnet> = field("IPRange").map(|s| s.parse::<Subnet>().map_err(|e| Error::invalid(e.to_string()))).transpose()?;
        let gateway: Option<Ipv4Addr> = field("Gateway").map(|g| g.parse::<Ipv4Addr>().map_err(|_| Error::invalid(format!("invalid gateway address {g}")))).transpose()?;
        if subnet.is_none() && (range.is_some() || gateway.is_some()) {
            return Err(Error::invalid("ip-range and gateway need a subnet"));
        }
        if let (Some(s), Some(r)) = (subnet, range) {
            if !s.overlaps(&r) || r.prefix < s.prefix {
                return Err(Error::invalid(format!("invalid pool request: ip-range {r} is not within subnet {s}")));
            }
        }
        if let (Some(s), Some(g)) = (subnet, gateway) {
            if !s.contains(g) {
                return Err(Error::invalid(format!("no matching subnet for gateway {g}")));
            }
        }
        let _host = HostLock::take()?;
        {
            let st = self.state.lock().expect("network state poisoned");
            if st.nets.values().any(|n| n.name == name) {
                return Err(Error::conflict(format!("network with name {name} already exists")));
            }
            if let Some(s) = subnet {
                if st.nets.values().filter_map(NetworkRecord::subnet).any(|o| o.overlaps(&s)) {
                    return Err(Error::new(Kind::Forbidden, "Pool overlaps with other one on this address space"));
                }
            }
        }
        let s = match subnet {
            Some(s) => s,
            None => {
                let mut taken = self.routes_elsewhere().await?;
                taken.extend(self.subnets_except(""));
                ipam::pick_subnet(&taken).ok_or_else(|| Error::new(Kind::Forbidden, "could not find an available, non-overlapping IPv4 address pool among the defaults to assign to the network"))?
            }
        };
        let gw = gateway.unwrap_or_else(|| s.default_gateway());
        let id = crate::digest::random_id();
        let bridge = options.get("com.docker.network.bridge.name").cloned().unwrap_or_else(|| format!("br-{}", &id[..12]));
        if bridge.len() > 15 || !valid_name(&bridge) {
            return Err(Error::invalid(format!("invalid bridge name {bridge:?}: at most 15 of [a-zA-Z0-9_.-]")));
        }
        // Never adopt (and later delete) an interface someone else made.
        if self.nl().await?.link_exists(&bridge).await.unwrap_or(false) {
            return Err(Error::conflict(format!("bridge name {bridge} is already in use by an interface on this host")));
        }
        let rec = NetworkRecord {
            id: id.clone(),
            name: name.clone(),
            driver,
            created: crate::timefmt::now_rfc3339(),
            internal: body.get("Internal").and_then(Value::as_bool).unwrap_or(false),
            attachable: body.get("Attachable").and_then(Value::as_bool).unwrap_or(false),
            subnet: Some(s.to_string()),
            gateway: Some(gw.to_string()),
            ip_range: range.map(|r| r.to_string()),
            user_subnet: subnet.is_some(),
            user_gateway: gateway.is_some(),
            options,
            labels,
            bridge: bridge.clone(),
        };
        self.nl().await?.ensure_bridge(&bridge, gw, s.prefix, None).await.map_err(io_err(format!("create bridge {bridge}")))?;
        self.state.lock().expect("network state poisoned").nets.insert(id.clone(), rec.clone());
        self.persist().map_err(io_err("save networks"))?;
        drop(_host);
        if let Err(e) = self.apply_rules().await {
            self.state.lock().expect("network state poisoned").nets.remove(&id);
            let _ = self.persist();
            let _ = self.nl().await?.delete_link(&bridge).await;
            return Err(e);
        }
        self.event(&rec, "create", &[]);
        Ok(rec)
    }

    fn event(&self, n: &NetworkRecord, action: &str, extra: &[(&str, &str)]) {
        let mut attrs = BTreeMap::from([("name".to_owned(), n.name.clone()), ("type".to_owned(), n.driver.clone())]);
        for (k, v) in extra {
            attrs.insert((*k).to_owned(), (*v).to_owned());
        }
        self.events.publish("network", action, &n.id, attrs);
    }

    /// Running containers with an endpoint on `id`.
    fn users(&self, id: &str) -> Vec<Attached> {
        self.attached().into_iter().filter(|a| a.running && a.endpoints.values().any(|e| e.network_id == id)).collect()
    }

    /// `DELETE /networks/{id}`.
    pub async fn remove(&self, name_or_id: &str) -> Result<()> {
        let n = self.get(name_or_id)?;
        if n.predefined() {
            return Err(Error::new(Kind::Forbidden, format!("{} is a pre-defined network and cannot be removed", n.name)));
        }
        if !self.users(&n.id).is_empty() {
            return Err(Error::new(Kind::Forbidden, format!("error while removing network: network {} id {} has active endpoints", n.name, n.id)));
        }
        self.state.lock().expect("network state poisoned").nets.remove(&n.id);
        self.persist().map_err(io_err("save networks"))?;
        if n.is_bridge() {
            if let Err(e) = self.nl().await?.delete_link(&n.bridge).await {
                tracing::warn!(bridge = %n.bridge, error = %e, "delete bridge");
            }
        }
        self.apply_rules().await?;
        self.event(&n, "destroy", &[]);
        Ok(())
    }

    /// `POST /networks/prune`.
    pub async fn prune(&self, filters: &Filters) -> Result<Value> {
        let until = filters.until()?;
        let candidates: Vec<NetworkRecord> = self.state.lock().expect("network state poisoned").nets.values().filter(|n| !n.predefined()).cloned().collect();
        let mut deleted = Vec::new();
        for n in candidates {
            if !filters.labels_match("label", &n.labels) || filters.labels_excluded("label!", &n.labels) || until.is_some_and(|u| crate::timefmt::parse_rfc3339(&n.created).map(|t| t.0).unwrap_or(0) >= u) {
                continue;
            }
            if self.remove(&n.id).await.is_ok() {
                deleted.push(n.name.clone());
            }
        }
        if !deleted.is_empty() {
            self.events.publish("network", "prune", "", BTreeMap::from([("reclaimed".to_owned(), "0".to_owned())]));
        }
        Ok(json!({"NetworksDeleted": deleted}))
    }

    /// `GET /networks`.
    pub fn list(&self, filters: &Filters) -> Result<Value> {
        if let [t, ..] = filters.get("type") {
            if t != "custom" && t != "builtin" {
                return Err(Error::invalid(format!("invalid filter: 'type'='{t}'")));
            }
        }
        let nets: Vec<NetworkRecord> = self.state.lock().expect("network state poisoned").nets.values().cloned().collect();
        let attached = self.attached();
        let any = |key: &str, f: &dyn Fn(&str) -> bool| filters.get(key).is_empty() || filters.get(key).iter().any(|v| f(v));
        let mut out = Vec::new();
        for n in nets {
            let used = attached.iter().any(|a| a.endpoints.values().any(|e| e.network_id == n.id));
            let ok = any("driver", &|v| v == n.driver)
                && any("id", &|v| n.id.starts_with(v))
                && any("name", &|v| n.name.contains(v))
                && any("scope", &|v| v == "local")
                && any("type", &|v| (v == "builtin") == n.predefined())
                && any("dangling", &|v| (v == "true" || v == "1") == (!used && !n.predefined()))
                && filters.labels_match("label", &n.labels);
            if ok {
                out.push(self.to_json(&n, false, &attached));
            }
        }
        out.sort_by(|a, b| a["Name"].as_str().cmp(&b["Name"].as_str()));
        Ok(Value::Array(out))
    }

    /// `GET /networks/{id}`.
    pub fn inspect(&self, name_or_id: &str) -> Result<Value> {
        let n = self.get(name_or_id)?;
        Ok(self.to_json(&n, true, &self.attached()))
    }

    fn to_json(&self, n: &NetworkRecord, containers: bool, attached: &[Attached]) -> Value {
        let mut ipam_cfg = Vec::new();
        if let Some(s) = &n.subnet {
            let mut c = json!({"Subnet": s});
            if let Some(g) = n.gateway.as_ref().filter(|_| !n.user_subnet || n.user_gateway) {
                c["Gateway"] = json!(g);
            }
            if let Some(r) = &n.ip_range {
                c["IPRange"] = json!(r);
            }
            ipam_cfg.push(c);
        }
        let mut v = json!({
            "Name": n.name, "Id": n.id, "Created": n.created, "Scope": "local", "Driver": n.driver,
            "EnableIPv6": false,
            "IPAM": {"Driver": "default", "Options": if n.predefined() { Value::Null } else { json!({}) }, "Config": ipam_cfg},
            "Internal": n.internal, "Attachable": n.attachable, "Ingress": false,
            "ConfigFrom": {"Network": ""}, "ConfigOnly": false,
            "Containers": {}, "Options": n.options, "Labels": n.labels,
        });
        if containers {
            let prefix = n.subnet().map(|s| s.prefix).unwrap_or(0);
            let mut map = serde_json::Map::new();
            for a in attached.iter().filter(|a| a.running) {
                for ep in a.endpoints.values().filter(|e| e.network_id == n.id) {
                    map.insert(a.container_id.clone(), json!({
                        "Name": a.name,
                        "EndpointID": ep.endpoint_id,
                        "MacAddress": ep.mac_address().unwrap_or_default(),
                        "IPv4Address": ep.ip.map(|ip| format!("{ip}/{prefix}")).unwrap_or_default(),
                        "IPv6Address": "",
                    }));
                }
            }
            v["Containers"] = Value::Object(map);
        }
        v
    }

    /// Checks a container's requested endpoint against its network
    /// (dockerd's create-time rules).
    pub fn check_endpoint(&self, net: &NetworkRecord, ep: &Endpoint) -> Result<()> {
        if let Some(ip) = &ep.requested_ip {
            if !net.is_bridge() || !net.user_subnet {
                return Err(Error::invalid("user specified IP address is supported only when connecting to networks with user configured subnets"));
            }
            let addr: Ipv4Addr = ip.parse().map_err(|_| Error::invalid(format!("invalid IPv4 address: {ip}")))?;
            if !net.subnet().is_some_and(|s| s.contains(addr)) {
                return Err(Error::invalid(format!("no configured subnet or ip-range contain the IP address {addr}")));
            }
        }
        if let Some(mac) = &ep.mac {
            if parse_mac(mac).is_none() {
                return Err(Error::invalid(format!("invalid MAC address: {mac}")));
            }
        }
        if !ep.aliases.is_empty() && !net.has_dns() {
            return Err(Error::invalid("network-scoped alias is supported only for containers in user defined networks"));
        }
        Ok(())
    }

    /// Allocates an address on each bridge network for a container about
    /// to start. `order` lists the network names, the primary first.
    pub fn plan(&self, container_id: &str, endpoints: &BTreeMap<String, Endpoint>, order: &[String]) -> Result<Vec<Planned>> {
        let mut st = self.state.lock().expect("network state poisoned");
        let mut out: Vec<Planned> = Vec::new();
        let mut fail = None;
        for name in order {
            let Some(ep) = endpoints.get(name) else { continue };
            let net = match st.nets.get(&ep.network_id).or_else(|| st.nets.values().find(|n| &n.name == name)) {
                Some(n) => n.clone(),
                None => {
                    fail = Some(no_such(name));
                    break;
                }
            };
            if !net.is_bridge() {
                continue;
            }
            let (Some(subnet), Some(gw)) = (net.subnet(), net.gateway()) else {
                fail = Some(Error::internal(format!("network {} has no subnet", net.name)));
                break;
            };
            let used = st.used.entry(net.id.clone()).or_default();
            let requested = ep.requested_ip.as_deref().and_then(|s| s.parse::<Ipv4Addr>().ok());
            let ip = match requested {
                Some(r) if used.contains(&r) => {
                    fail = Some(Error::new(Kind::Forbidden, format!("Address already in use: {r} on network {}", net.name)));
                    break;
                }
                Some(r) => Some(r),
                None => ipam::allocate(&subnet, net.range().as_ref(), gw, used, ep.last_ip),
            };
            let Some(ip) = ip else {
                fail = Some(Error::new(Kind::Forbidden, format!("no available IPv4 addresses on this network's address pools: {} ({})", net.name, net.id)));
                break;
            };
            used.insert(ip);
            out.push(Planned {
                ip,
                prefix: subnet.prefix,
                gateway: (!net.internal).then_some(gw),
                host_veth: format!("veth{}", &crate::digest::random_id()[..7]),
                endpoint_id: crate::digest::random_id(),
                mac: ep.mac.as_deref().and_then(parse_mac).unwrap_or_else(|| link::mac_for(ip)),
                network: net,
            });
        }
        if let Some(e) = fail {
            for p in &out {
                if let Some(u) = st.used.get_mut(&p.network.id) {
                    u.remove(&p.ip);
                }
            }
            return Err(e);
        }
        drop(st);
        tracing::debug!(container_id, endpoints = out.len(), "planned endpoints");
        Ok(out)
    }

    /// Marks addresses as used (re-adopting a running container).
    pub fn adopt(&self, endpoints: &BTreeMap<String, Endpoint>) {
        let mut st = self.state.lock().expect("network state poisoned");
        for ep in endpoints.values() {
            if let Some(ip) = ep.ip {
                st.used.entry(ep.network_id.clone()).or_default().insert(ip);
            }
        }
    }

    /// Returns addresses to their networks.
    pub fn release(&self, endpoints: impl IntoIterator<Item = (String, Ipv4Addr)>) {
        let mut st = self.state.lock().expect("network state poisoned");
        for (net, ip) in endpoints {
            if let Some(u) = st.used.get_mut(&net) {
                u.remove(&ip);
            }
        }
    }

    /// Creates the container's interface for `p` in the namespace of `pid`,
    /// named `iface` (eth0, eth1, ...).
    pub async fn plumb(&self, pid: u32, p: &Planned, iface: &str, default_route: bool) -> Result<()> {
        let netns = PathBuf::from(format!("/proc/{pid}/ns/net"));
        let tmp = format!("vb{}", &crate::digest::random_id()[..8]);
        self.nl().await?.create_veth_into(&p.host_veth, &p.network.bridge, &tmp, &netns).await.map_err(io_err(format!("create endpoint on {}", p.network.name)))?;
        let inside = link::Netlink::in_netns(&netns).map_err(io_err("enter container network namespace"))?;
        let gw = if default_route { p.gateway } else { None };
        inside.configure_endpoint(&tmp, iface, p.ip, p.prefix, p.mac, gw).await.map_err(io_err(format!("configure {iface}")))?;
        Ok(())
    }

    /// Removes a host veth (disconnect; cleanup after a crash).
    pub async fn unplumb(&self, host_veth: &str) {
        if host_veth.is_empty() {
            return;
        }
        if let Ok(nl) = self.nl().await {
            let _ = nl.delete_link(host_veth).await;
        }
    }

    /// Publishes ports for a running container: binds every host port
    /// first (a port in use fails before any rule exists), then adds the
    /// DNAT rules. `bindings` are (container port "80/tcp", host ip, host
    /// port spec "8080", "8000-8010" or "").
    pub async fn publish(&self, container_id: &str, target: Ipv4Addr, bridge: &str, bindings: &[(String, String, String)]) -> Result<Vec<PortBinding>> {
        let mut proxies = Vec::new();
        let mut rules = Vec::new();
        let mut out = Vec::new();
        for (cport, host_ip, host_port) in bindings {
            let (port, proto) = parse_port(cport)?;
            let ips: Vec<IpAddr> = if host_ip.is_empty() {
                vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED), IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)]
            } else {
                vec![host_ip.parse().map_err(|_| Error::invalid(format!("invalid IP address: {host_ip}")))?]
            };
            let candidates: Vec<u16> = parse_host_ports(host_port)?;
            let mut bound = None;
            let mut last_err = None;
            'ports: for hp in &candidates {
                let mut here = Vec::new();
                for (i, ip) in ips.iter().enumerate() {
                    // All families share the port the first one got.
                    let want = if i == 0 { *hp } else { bound.or(Some(*hp)).unwrap_or(0) };
                    let addr = SocketAddr::new(self.bind_ip(*ip), want);
                    match proxy::publish(addr, proto, SocketAddr::new(IpAddr::V4(target), port)).await {
                        Ok(p) => {
                            if i == 0 {
                                bound = Some(p.local_addr().port());
                            }
                            here.push(p);
                        }
                        // IPv6 may be off on this host: IPv4 is enough.
                        Err(e) if ip.is_ipv6() && host_ip.is_empty() && !matches!(e.raw_os_error(), Some(libc::EADDRINUSE)) => {}
                        Err(e) => {
                            last_err = Some(proxy::port_in_use_message(addr, proto, &e));
                            bound = None;
                            continue 'ports;
                        }
                    }
                }
                proxies.extend(here);
                break;
            }
            let Some(hp) = bound else {
                drop(proxies);
                return Err(Error::internal(format!(
                    "driver failed programming external connectivity on endpoint {}: {}",
                    &container_id[..12.min(container_id.len())],
                    last_err.unwrap_or_else(|| "no free port".into())
                )));
            };
            for ip in &ips {
                let IpAddr::V4(v4) = ip else {
                    if proxies.iter().any(|p| p.local_addr().is_ipv6()) {
                        out.push(PortBinding { container_port: cport.clone(), host_ip: "::".into(), host_port: hp });
                    }
                    continue;
                };
                rules.push(nft::PortRule {
                    proto: match proto {
                        proxy::Proto::Tcp => nft::Proto::Tcp,
                        proxy::Proto::Udp => nft::Proto::Udp,
                    },
                    host_ip: Some(*v4).filter(|v| !v.is_unspecified() && (!self.cfg.vm_guest || !v.is_loopback())),
                    host_port: hp,
                    container_ip: target,
                    container_port: port,
                    bridge: bridge.to_owned(),
                });
                out.push(PortBinding { container_port: cport.clone(), host_ip: v4.to_string(), host_port: hp });
            }
        }
        {
            let mut live = self.live.lock().expect("live lock poisoned");
            let l = live.entry(container_id.to_owned()).or_default();
            l.proxies.extend(proxies);
            l.ports.extend(rules.clone());
        }
        if !rules.is_empty() {
            if let Err(e) = self.apply_rules().await {
                self.forget_live(container_id);
                return Err(e);
            }
        }
        Ok(out)
    }

    /// Where a port published on `ip` is opened. In the Berth VM the host
    /// forwards its loopback ports to the guest's own interface, so a
    /// loopback binding must answer on every guest address.
    fn bind_ip(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(v) if self.cfg.vm_guest && v.is_loopback() => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(v) if self.cfg.vm_guest && v.is_loopback() => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
            other => other,
        }
    }

    /// Starts the embedded DNS server in the namespace of `pid`.
    pub fn start_dns(&self, container_id: &str, pid: u32, resolver: Arc<dyn dns::Resolver>, upstreams: Vec<SocketAddr>) -> Result<()> {
        let (udp, tcp) = dns::bind_in_netns(Path::new(&format!("/proc/{pid}/ns/net"))).map_err(io_err("start embedded DNS server"))?;
        let server = dns::DnsServer::spawn(udp, tcp, resolver, upstreams);
        self.live.lock().expect("live lock poisoned").entry(container_id.to_owned()).or_default().dns = Some(server);
        Ok(())
    }

    /// Drops a container's DNS server and proxies at once; true when it
    /// had port rules (the table needs [`Networks::reapply`]).
    pub fn forget_live(&self, container_id: &str) -> bool {
        self.live.lock().expect("live lock poisoned").remove(container_id).is_some_and(|l| !l.ports.is_empty())
    }

    /// After a container exits: stops its DNS server and proxies and drops
    /// its port rules. Its interfaces went with its namespace.
    pub async fn detach(&self, container_id: &str) {
        if self.forget_live(container_id) {
            self.reapply().await;
        }
    }

    /// Applies the rules again (after [`Networks::forget_live`]).
    pub async fn reapply(&self) {
        if let Err(e) = self.apply_rules().await {
            tracing::warn!(error = %e, "re-apply nftables rules");
        }
    }

    pub fn connect_event(&self, net: &NetworkRecord, container_id: &str, action: &str) {
        self.event(net, action, &[("container", container_id)]);
    }
}

fn masquerade(n: &NetworkRecord) -> bool {
    n.options.get("com.docker.network.bridge.enable_ip_masquerade").is_none_or(|v| v != "false")
}

fn default_bridge_options(bridge: &str) -> BTreeMap<String, String> {
    [
        ("com.docker.network.bridge.default_bridge", "true"),
        ("com.docker.network.bridge.enable_icc", "true"),
        ("com.docker.network.bridge.enable_ip_masquerade", "true"),
        ("com.docker.network.bridge.host_binding_ipv4", "0.0.0.0"),
        ("com.docker.network.bridge.name", bridge),
        ("com.docker.network.driver.mtu", "1500"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

fn find<'a>(nets: &'a BTreeMap<String, NetworkRecord>, name_or_id: &str) -> Result<&'a NetworkRecord> {
    if let Some(n) = nets.get(name_or_id) {
        return Ok(n);
    }
    if let Some(n) = nets.values().find(|n| n.name == name_or_id) {
        return Ok(n);
    }
    let mut by_prefix = nets.values().filter(|n| !name_or_id.is_empty() && n.id.starts_with(name_or_id));
    match (by_prefix.next(), by_prefix.next()) {
        (Some(n), None) => Ok(n),
        (Some(_), Some(_)) => Err(Error::invalid(format!("network {name_or_id} is ambiguous"))),
        _ => Err(no_such(name_or_id)),
    }
}

fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty() && b[0].is_ascii_alphanumeric() && b.iter().all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c))
}

/// `02:42:ac:11:00:02` for 172.17.0.2, as dockerd derives MACs.
pub fn mac_string(ip: Ipv4Addr) -> String {
    link::mac_for(ip).iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// `02:42:ac:11:00:02` → bytes; a unicast address only.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<u8> = s.split(':').map(|p| if p.len() == 2 { u8::from_str_radix(p, 16).ok() } else { None }).collect::<Option<_>>()?;
    let mac: [u8; 6] = parts.try_into().ok()?;
    (mac[0] & 1 == 0).then_some(mac)
}

/// `80/tcp` → (80, tcp).
pub fn parse_port(spec: &str) -> Result<(u16, proxy::Proto)> {
    let (p, proto) = spec.split_once('/').unwrap_or((spec, "tcp"));
    let proto = match proto {
        "tcp" => proxy::Proto::Tcp,
        "udp" => proxy::Proto::Udp,
        other => return Err(Error::invalid(format!("invalid proto: {other}"))),
    };
    let port = p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| Error::invalid(format!("invalid port: {spec}")))?;
    Ok((port, proto))
}

/// A host port spec: "" (any), "8080", or a range "8000-8010" (the first
/// free one is taken).
pub fn parse_host_ports(spec: &str) -> Result<Vec<u16>> {
    let bad = || Error::invalid(format!("invalid host port: {spec}"));
    if spec.is_empty() || spec == "0" {
        return Ok(vec![0]);
    }
    match spec.split_once('-') {
        None => Ok(vec![spec.parse().map_err(|_| bad())?]),
        Some((a, b)) => {
            let (a, b): (u16, u16) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
            if a == 0 || a > b {
                return Err(bad());
            }
            Ok((a..=b).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engines_side_by_side_get_their_own_names() {
        let std_cfg = NetConfig::for_exec_root(Path::new("/var/run/berth"));
        assert_eq!((std_cfg.default_bridge.as_deref(), std_cfg.table.as_str()), (Some("berth0"), "berth"));
        let a = NetConfig::for_exec_root(Path::new("/tmp/a/exec"));
        let b = NetConfig::for_exec_root(Path::new("/tmp/b/exec"));
        assert_ne!(a.default_bridge, b.default_bridge);
        assert!(a.default_bridge.as_ref().unwrap().len() <= 15);
        assert_ne!(a.table, b.table);
    }

    #[test]
    fn port_specs() {
        assert_eq!(parse_port("80/tcp").unwrap().0, 80);
        assert!(matches!(parse_port("53/udp").unwrap().1, proxy::Proto::Udp));
        assert!(parse_port("0/tcp").is_err());
        assert!(parse_port("80/sctp").is_err());
        assert_eq!(parse_host_ports("").unwrap(), vec![0]);
        assert_eq!(parse_host_ports("8000-8002").unwrap(), vec![8000, 8001, 8002]);
        assert!(parse_host_ports("9-3").is_err());
        assert!(parse_host_ports("x").is_err());
    }

    #[test]
    fn names_and_macs() {
        assert!(valid_name("my-net_1.x"));
        assert!(!valid_name("../x") && !valid_name("a/b") && !valid_name(""));
        assert_eq!(mac_string(Ipv4Addr::new(172, 17, 0, 2)), "02:42:ac:11:00:02");
        assert_eq!(parse_mac("92:d0:c6:0a:29:33"), Some([0x92, 0xd0, 0xc6, 0x0a, 0x29, 0x33]));
        assert_eq!(parse_mac("01:00:5e:00:00:01"), None, "multicast");
        assert_eq!(parse_mac("92:d0:c6:0a:29"), None);
        assert_eq!(parse_mac("zz:d0:c6:0a:29:33"), None);
    }
}

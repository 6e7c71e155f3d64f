//! A container's networking: which networks it is on (decided at create,
//! changed by connect/disconnect), plumbing its endpoints when it starts,
//! its published ports, the names the embedded DNS server answers for it,
//! and what inspect and `ps` show.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Weak};

use serde_json::{json, Value};

use super::{Containers, Handle, Record};
use crate::error::{Error, Result};
use crate::network::{self, dns, Endpoint, Networks, Planned, PortBinding};

/// What the container's network namespace is.
pub(crate) enum Mode {
    /// Its own namespace, with endpoints on these networks (possibly none).
    Own,
    Host,
    /// Joins another container's namespace.
    Container,
}

pub(crate) fn mode(r: &Record) -> Mode {
    let m = super::network_mode(r);
    if m == network::HOST {
        Mode::Host
    } else if m.starts_with("container:") {
        Mode::Container
    } else {
        Mode::Own
    }
}

/// The endpoints a new container asks for (`--network`, `--ip`,
/// `--network-alias`, and every entry of `NetworkingConfig`).
pub(crate) fn endpoints_for_create(nets: &Networks, host_config: &Value, networking: Option<&Value>) -> Result<BTreeMap<String, Endpoint>> {
    let mode = host_config.get("NetworkMode").and_then(Value::as_str).filter(|m| !m.is_empty()).unwrap_or("default");
    let configs = networking.and_then(|n| n.get("EndpointsConfig")).and_then(Value::as_object).cloned().unwrap_or_default();
    let mut out = BTreeMap::new();
    if mode.starts_with("container:") {
        if !configs.is_empty() {
            return Err(Error::invalid("conflicting options: container type network can't be used with multiple networks"));
        }
        return Ok(out);
    }
    let primary = if mode == "default" { network::BRIDGE } else { mode };
    let primary = match nets.get(primary) {
        Ok(n) => n,
        Err(_) if primary == network::BRIDGE => nets.get(network::NONE)?,
        Err(e) => return Err(e),
    };
    let mut names = vec![primary.name.clone()];
    names.extend(configs.keys().filter(|k| **k != primary.name && k.as_str() != mode).cloned());
    let several = names.len() > 1;
    for name in names {
        let net = nets.get(&name)?;
        // host and none cannot be combined with other networks.
        if (net.name == network::HOST || net.name == network::NONE) && several {
            return Err(Error::invalid("container cannot be disconnected from host network or connected to host network"));
        }
        let cfg = configs.get(&name).or_else(|| if name == primary.name { configs.get(mode) } else { None });
        let ep = endpoint_from_config(&net.id, cfg);
        nets.check_endpoint(&net, &ep)?;
        out.insert(net.name.clone(), ep);
    }
    Ok(out)
}

/// An endpoint from an `EndpointSettings` body (create or connect).
pub(crate) fn endpoint_from_config(network_id: &str, cfg: Option<&Value>) -> Endpoint {
    let cfg = cfg.cloned().unwrap_or(Value::Null);
    let aliases: Vec<String> = cfg.get("Aliases").and_then(|a| serde_json::from_value(a.clone()).ok()).unwrap_or_default();
    let ip = cfg.pointer("/IPAMConfig/IPv4Address").and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned);
    let mac = cfg.get("MacAddress").and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned);
    Endpoint { network_id: network_id.to_owned(), aliases, requested_ip: ip, mac, ..Endpoint::default() }
}

/// Network names in attach order: the one of `--network` first.
fn order(r: &Record) -> Vec<String> {
    let mode = super::network_mode(r);
    let primary = if mode == "default" { network::BRIDGE.to_owned() } else { mode };
    let mut names: Vec<String> = r.networks.keys().filter(|k| **k == primary).cloned().collect();
    names.extend(r.networks.keys().filter(|k| **k != primary).cloned());
    names
}

/// The answers of one container's embedded DNS server: containers on the
/// same user-defined networks by name, alias, short ID and hostname, also
/// as `<name>.<network>`.
struct Names {
    containers: Weak<Containers>,
    id: String,
}

impl Names {
    /// (network ID, network name) of the querier's DNS-enabled networks.
    fn scopes(&self, c: &Containers) -> Vec<(String, String)> {
        let Ok(h) = c.find(&self.id) else { return Vec::new() };
        let r = h.record();
        r.networks
            .iter()
            .filter_map(|(name, ep)| c.networks.get(&ep.network_id).ok().filter(|n| n.has_dns()).map(|n| (n.id.clone(), name.clone())))
            .collect()
    }
}

impl dns::Resolver for Names {
    fn lookup_a(&self, name: &str) -> Option<Vec<Ipv4Addr>> {
        let c = self.containers.upgrade()?;
        let scopes = self.scopes(&c);
        let mut ips = Vec::new();
        for h in c.all() {
            let r = h.record();
            if !r.state.running {
                continue;
            }
            let hostname = r.config.get("Hostname").and_then(Value::as_str).unwrap_or_default().to_ascii_lowercase();
            for (net_id, net_name) in &scopes {
                let Some(ep) = r.networks.values().find(|e| &e.network_id == net_id) else { continue };
                let Some(ip) = ep.ip else { continue };
                let bare = name.strip_suffix(&format!(".{}", net_name.to_ascii_lowercase())).unwrap_or(name);
                let matches = |n: &str| n.eq_ignore_ascii_case(bare);
                let named = matches(&r.name) || matches(r.short_id()) || matches(&r.id) || ep.aliases.iter().any(|a| matches(a)) || (!hostname.is_empty() && hostname == bare);
                if named && !ips.contains(&ip) {
                    ips.push(ip);
                }
            }
        }
        (!ips.is_empty()).then_some(ips)
    }

    fn lookup_ptr(&self, ip: Ipv4Addr) -> Option<String> {
        let c = self.containers.upgrade()?;
        let scopes = self.scopes(&c);
        for h in c.all() {
            let r = h.record();
            for (net_id, net_name) in &scopes {
                if r.state.running && r.networks.values().any(|e| &e.network_id == net_id && e.ip == Some(ip)) {
                    return Some(format!("{}.{}", r.name, net_name));
                }
            }
        }
        None
    }
}

impl Containers {
    /// The usage callback the network service sees containers through.
    pub(crate) fn network_usage(self: &Arc<Self>) -> network::UsageFn {
        let weak = Arc::downgrade(self);
        Arc::new(move || {
            let Some(c) = weak.upgrade() else { return Vec::new() };
            c.all()
                .iter()
                .map(|h| {
                    let r = h.record();
                    network::Attached {
                        container_id: r.id.clone(),
                        name: r.name.clone(),
                        running: r.state.running,
                        hostname: r.config.get("Hostname").and_then(Value::as_str).unwrap_or_default().to_owned(),
                        endpoints: r.networks.clone(),
                    }
                })
                .collect()
        })
    }

    /// Before the bundle is written: addresses for every bridge endpoint.
    pub(crate) fn net_plan(&self, r: &Record) -> Result<Vec<Planned>> {
        if !matches!(mode(r), Mode::Own) {
            return Ok(Vec::new());
        }
        self.networks.plan(&r.id, &r.networks, &order(r))
    }

    /// Whether the container's resolv.conf points at the embedded server.
    pub(crate) fn uses_embedded_dns(plan: &[Planned]) -> bool {
        plan.iter().any(|p| p.network.has_dns())
    }

    /// `--add-host` entries with `host-gateway` resolved.
    pub(crate) fn extra_hosts(&self, r: &Record) -> Vec<String> {
        let list: Vec<String> = r.host_config.get("ExtraHosts").and_then(|v| serde_json::from_value(v.clone()).ok()).unwrap_or_default();
        let gw = self.networks.host_gateway();
        let gw_text = gw.map(|g| g.to_string()).unwrap_or_else(|| "127.0.0.1".into());
        let mut out: Vec<String> = list
            .into_iter()
            .map(|e| match e.split_once(':') {
                Some((h, "host-gateway")) => format!("{h}:{gw_text}"),
                _ => e,
            })
            .collect();
        // Legacy links (`--link name:alias`): the target's address under
        // both names, as dockerd writes them.
        let links: Vec<String> = r.host_config.get("Links").and_then(|v| serde_json::from_value(v.clone()).ok()).unwrap_or_default();
        for l in links {
            let (name, alias) = l.split_once(':').unwrap_or((&l, &l));
            let name = name.trim_start_matches('/');
            let alias = alias.rsplit('/').next().unwrap_or(alias);
            let Ok(target) = self.find(name) else { continue };
            let t = target.record();
            if let Some(ip) = t.networks.values().find_map(|e| e.ip) {
                out.push(format!("{alias}:{ip}"));
                if alias != t.name {
                    out.push(format!("{}:{ip}", t.name));
                }
            }
        }
        // In the Berth VM, as in Docker Desktop, every container knows the
        // host by name.
        if self.networks.cfg.vm_guest && gw.is_some() && !out.iter().any(|e| e.starts_with("host.docker.internal:")) {
            out.push(format!("host.docker.internal:{gw_text}"));
            out.push(format!("gateway.docker.internal:{gw_text}"));
        }
        out
    }

    /// Keeps the planned addresses in the record, so whatever happens
    /// next, [`Containers::net_detach`] gives them back.
    pub(crate) fn net_record_plan(&self, h: &Handle, plan: &[Planned]) {
        h.update(|r| {
            for p in plan {
                if let Some(ep) = r.networks.get_mut(&p.network.name) {
                    ep.assign(p);
                }
            }
        });
    }

    /// After `runtime create`, before the process starts: interfaces, the
    /// DNS server, published ports. On failure the caller detaches.
    pub(crate) async fn net_attach(self: &Arc<Self>, h: &Arc<Handle>, pid: u32, plan: &[Planned]) -> Result<()> {
        let ports = self.net_attach_inner(&h.record(), pid, plan).await?;
        h.update(|r| r.ports = ports);
        // As dockerd: the container joins its networks when it starts.
        for p in plan {
            self.networks.connect_event(&p.network, &h.id, "connect");
        }
        Ok(())
    }

    async fn net_attach_inner(self: &Arc<Self>, rec: &Record, pid: u32, plan: &[Planned]) -> Result<Vec<PortBinding>> {
        for (i, p) in plan.iter().enumerate() {
            self.networks.plumb(pid, p, &format!("eth{i}"), i == 0).await?;
        }
        if Self::uses_embedded_dns(plan) {
            self.start_dns(rec, pid)?;
        }
        let bindings = port_requests(rec);
        if bindings.is_empty() {
            return Ok(Vec::new());
        }
        let Some(first) = plan.first() else {
            // Host and none networks publish nothing, as dockerd.
            return Ok(Vec::new());
        };
        self.networks.publish(&rec.id, first.ip, &first.network.bridge, &bindings).await
    }

    /// Whether the running container has an address on a DNS-enabled
    /// network (its embedded DNS server runs then).
    fn serves_dns(&self, r: &Record) -> bool {
        r.networks.values().any(|e| e.ip.is_some() && self.networks.get(&e.network_id).is_ok_and(|n| n.has_dns()))
    }

    fn start_dns(self: &Arc<Self>, rec: &Record, pid: u32) -> Result<()> {
        let dns: Vec<String> = rec.host_config.get("Dns").and_then(|v| serde_json::from_value(v.clone()).ok()).unwrap_or_default();
        let upstreams = if dns.is_empty() {
            dns::host_upstreams(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default())
        } else {
            dns.iter().filter_map(|d| d.parse::<std::net::IpAddr>().ok()).map(|ip| std::net::SocketAddr::new(ip, 53)).collect()
        };
        let resolver = Arc::new(Names { containers: Arc::downgrade(self), id: rec.id.clone() });
        self.networks.start_dns(&rec.id, pid, resolver, upstreams)
    }

    /// After an exit: addresses back to the pool, DNS and proxies stopped.
    pub(crate) fn net_detach(&self, h: &Handle) {
        let rec = h.record();
        let held: Vec<(String, Ipv4Addr)> = rec.networks.values().filter_map(|e| e.ip.map(|ip| (e.network_id.clone(), ip))).collect();
        let veths: Vec<String> = rec.networks.values().map(|e| e.host_veth.clone()).filter(|v| !v.is_empty()).collect();
        if held.is_empty() && rec.ports.is_empty() && veths.is_empty() {
            return;
        }
        for (net_id, _) in &held {
            if let Ok(net) = self.networks.get(net_id) {
                self.networks.connect_event(&net, &rec.id, "disconnect");
            }
        }
        self.networks.release(held);
        h.update(|r| {
            for ep in r.networks.values_mut() {
                ep.ip = None;
                ep.endpoint_id.clear();
                ep.host_veth.clear();
            }
            r.ports.clear();
        });
        // Proxies and the DNS server go now (a restart may bind the same
        // ports at once); the table and veths are cleaned up behind.
        let had_ports = self.networks.forget_live(&rec.id);
        let nets = self.networks.clone();
        tokio::spawn(async move {
            if had_ports {
                nets.reapply().await;
            }
            for v in veths {
                nets.unplumb(&v).await;
            }
        });
    }

    /// A running container found at start-up: its addresses are taken,
    /// its DNS server and port proxies come back.
    pub(crate) async fn net_readopt(self: &Arc<Self>, h: &Arc<Handle>) {
        let rec = h.record();
        self.networks.adopt(&rec.networks);
        let pid = rec.state.pid as u32;
        if self.serves_dns(&rec) {
            if let Err(e) = self.start_dns(&rec, pid) {
                tracing::warn!(container_id = %rec.id, error = %e, "restart DNS server");
            }
        }
        if rec.ports.is_empty() {
            return;
        }
        let first = order(&rec).into_iter().find_map(|n| rec.networks.get(&n).and_then(|e| e.ip.map(|ip| (e.network_id.clone(), ip))));
        let Some((net_id, ip)) = first else { return };
        let Ok(net) = self.networks.get(&net_id) else { return };
        let bindings: Vec<(String, String, String)> = rec
            .ports
            .iter()
            .filter(|p| !p.host_ip.contains(':'))
            .map(|p| (p.container_port.clone(), if p.host_ip == "0.0.0.0" { String::new() } else { p.host_ip.clone() }, p.host_port.to_string()))
            .collect();
        match self.networks.publish(&rec.id, ip, &net.bridge, &bindings).await {
            Ok(ports) => h.update(|r| r.ports = ports),
            Err(e) => tracing::warn!(container_id = %rec.id, error = %e, "re-publish ports"),
        }
    }

    /// `POST /networks/{id}/connect`.
    pub async fn connect(self: &Arc<Self>, network: &str, container: &str, cfg: Option<&Value>) -> Result<()> {
        let net = self.networks.get(network)?;
        let h = self.find(container)?;
        let _op = h.op.lock().await;
        let rec = h.record();
        if !matches!(mode(&rec), Mode::Own) || rec.networks.contains_key(network::NONE) || net.name == network::HOST || net.name == network::NONE {
            return Err(Error::new(crate::error::Kind::Forbidden, "container cannot be disconnected from host network or connected to host network"));
        }
        if rec.networks.contains_key(&net.name) {
            return Err(Error::new(crate::error::Kind::Forbidden, format!("endpoint with name {} already exists in network {}", rec.name, net.name)));
        }
        let ep = endpoint_from_config(&net.id, cfg);
        self.networks.check_endpoint(&net, &ep)?;
        h.update(|r| {
            r.networks.insert(net.name.clone(), ep.clone());
        });
        if rec.state.running {
            let one = BTreeMap::from([(net.name.clone(), ep)]);
            let plan = self.networks.plan(&rec.id, &one, std::slice::from_ref(&net.name))?;
            let iface = format!("eth{}", rec.networks.values().filter(|e| e.ip.is_some()).count());
            let first = rec.networks.values().all(|e| e.ip.is_none());
            let plumbed = match plan.first() {
                Some(p) => self.networks.plumb(rec.state.pid as u32, p, &iface, first).await,
                None => Ok(()),
            };
            if let Err(e) = plumbed {
                self.networks.release(plan.iter().map(|p| (p.network.id.clone(), p.ip)));
                h.update(|r| {
                    r.networks.remove(&net.name);
                });
                return Err(e);
            }
            self.net_record_plan(&h, &plan);
            if net.has_dns() && !self.serves_dns(&rec) {
                if let Err(e) = self.start_dns(&rec, rec.state.pid as u32) {
                    tracing::warn!(container_id = %rec.id, error = %e, "start DNS server on connect");
                }
            }
        }
        self.persist(&h)?;
        self.networks.connect_event(&net, &rec.id, "connect");
        Ok(())
    }

    /// `POST /networks/{id}/disconnect`.
    pub async fn disconnect(self: &Arc<Self>, network: &str, container: &str, _force: bool) -> Result<()> {
        let net = self.networks.get(network)?;
        let h = self.find(container)?;
        let _op = h.op.lock().await;
        let rec = h.record();
        if net.name == network::HOST || net.name == network::NONE {
            return Err(Error::new(crate::error::Kind::Forbidden, "container cannot be disconnected from host network or connected to host network"));
        }
        let Some(ep) = rec.networks.get(&net.name).cloned() else {
            return Err(Error::new(crate::error::Kind::Forbidden, format!("container {} is not connected to network {}", rec.id, net.name)));
        };
        if let Some(ip) = ep.ip {
            self.networks.unplumb(&ep.host_veth).await;
            self.networks.release([(net.id.clone(), ip)]);
        }
        h.update(|r| {
            r.networks.remove(&net.name);
        });
        self.persist(&h)?;
        self.networks.connect_event(&net, &rec.id, "disconnect");
        Ok(())
    }

    /// `NetworkSettings` for inspect.
    pub(crate) fn network_settings(&self, r: &Record) -> Value {
        let primary = order(r).into_iter().next().and_then(|n| r.networks.get(&n).cloned()).unwrap_or_default();
        let prefix = self.networks.get(&primary.network_id).ok().and_then(|n| n.subnet()).map(|s| s.prefix).unwrap_or(0);
        let gw = self.networks.get(&primary.network_id).ok().and_then(|n| n.gateway()).filter(|_| primary.ip.is_some());
        let default_bridge = r.networks.keys().next().is_some_and(|_| super::network_mode(r) == "default" || super::network_mode(r) == network::BRIDGE);
        let (ip, gateway, mac, ep_id, plen) = match (default_bridge, primary.ip) {
            (true, Some(ip)) => (ip.to_string(), gw.map(|g| g.to_string()).unwrap_or_default(), primary.mac_address().unwrap_or_default(), primary.endpoint_id.clone(), prefix),
            _ => (String::new(), String::new(), String::new(), String::new(), 0),
        };
        let sandbox_key = if r.state.running && matches!(mode(r), Mode::Own) { format!("/proc/{}/ns/net", r.state.pid) } else { String::new() };
        json!({
            "Bridge": "", "SandboxID": if sandbox_key.is_empty() { String::new() } else { r.id.clone() }, "HairpinMode": false,
            "LinkLocalIPv6Address": "", "LinkLocalIPv6PrefixLen": 0,
            "Ports": self.ports_json(r), "SandboxKey": sandbox_key,
            "SecondaryIPAddresses": null, "SecondaryIPv6Addresses": null,
            "EndpointID": ep_id, "Gateway": gateway, "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0,
            "IPAddress": ip, "IPPrefixLen": plen, "IPv6Gateway": "", "MacAddress": mac,
            "Networks": self.networks_summary(r),
        })
    }

    fn endpoint_json(&self, r: &Record, ep: &Endpoint) -> Value {
        let net = self.networks.get(&ep.network_id).ok();
        let prefix = net.as_ref().and_then(|n| n.subnet()).map(|s| s.prefix).unwrap_or(0);
        let running = ep.ip.is_some();
        let dns_names: Value = match net.as_ref().is_some_and(|n| n.has_dns()) {
            true => {
                let mut names = vec![r.name.clone(), r.short_id().to_owned()];
                names.extend(ep.aliases.iter().cloned());
                json!(names)
            }
            false => Value::Null,
        };
        json!({
            "IPAMConfig": ep.requested_ip.as_ref().map(|ip| json!({"IPv4Address": ip})),
            "Links": null,
            "Aliases": if ep.aliases.is_empty() { Value::Null } else { json!(ep.aliases) },
            "MacAddress": ep.mac_address().unwrap_or_default(),
            "DriverOpts": null,
            "NetworkID": ep.network_id,
            "EndpointID": ep.endpoint_id,
            "Gateway": if running { net.as_ref().and_then(|n| n.gateway()).map(|g| g.to_string()).unwrap_or_default() } else { String::new() },
            "IPAddress": ep.ip.map(|i| i.to_string()).unwrap_or_default(),
            "IPPrefixLen": if running { prefix } else { 0 },
            "IPv6Gateway": "", "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0,
            "DNSNames": dns_names,
        })
    }

    /// `NetworkSettings.Ports`: every exposed or published port, with its
    /// host bindings while the container runs.
    pub(crate) fn ports_json(&self, r: &Record) -> Value {
        let mut map = serde_json::Map::new();
        if !r.state.running {
            return Value::Object(map);
        }
        for p in exposed_ports(r) {
            map.insert(p, Value::Null);
        }
        for b in &r.ports {
            let entry = map.entry(b.container_port.clone()).or_insert(Value::Null);
            if entry.is_null() {
                *entry = json!([]);
            }
            if let Some(a) = entry.as_array_mut() {
                a.push(json!({"HostIp": b.host_ip, "HostPort": b.host_port.to_string()}));
            }
        }
        Value::Object(map)
    }

    /// `Ports` of `GET /containers/json`.
    pub(crate) fn ports_summary(&self, r: &Record) -> Value {
        let mut out = Vec::new();
        for b in &r.ports {
            let Ok((port, proto)) = network::parse_port(&b.container_port) else { continue };
            out.push(json!({"IP": b.host_ip, "PrivatePort": port, "PublicPort": b.host_port, "Type": proto.to_string()}));
        }
        for p in exposed_ports(r) {
            if !r.ports.iter().any(|b| b.container_port == p) {
                if let Ok((port, proto)) = network::parse_port(&p) {
                    out.push(json!({"PrivatePort": port, "Type": proto.to_string()}));
                }
            }
        }
        Value::Array(out)
    }

    /// `NetworkSettings.Networks` of `GET /containers/json`.
    pub(crate) fn networks_summary(&self, r: &Record) -> Value {
        let mut nets = serde_json::Map::new();
        for (name, ep) in &r.networks {
            nets.insert(name.clone(), self.endpoint_json(r, ep));
        }
        Value::Object(nets)
    }
}

/// A port key as inspect shows it: `80` is `80/tcp`.
fn port_key(k: &str) -> String {
    if k.contains('/') {
        k.to_owned()
    } else {
        format!("{k}/tcp")
    }
}

/// `ExposedPorts` keys (image and request merged), normalized to `80/tcp`.
fn exposed_ports(r: &Record) -> Vec<String> {
    let mut out: Vec<String> = r
        .config
        .get("ExposedPorts")
        .and_then(Value::as_object)
        .map(|m| m.keys().map(|k| port_key(k)).collect())
        .unwrap_or_default();
    out.sort();
    out
}

/// The ports to publish: `PortBindings`, and with `-P` every exposed port
/// not bound explicitly (to a random host port).
fn port_requests(r: &Record) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    if let Some(map) = r.host_config.get("PortBindings").and_then(Value::as_object) {
        for (cport, list) in map {
            let cport = port_key(cport);
            let list = list.as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                out.push((cport.clone(), String::new(), String::new()));
            }
            for b in list {
                let ip = b.get("HostIp").and_then(Value::as_str).unwrap_or_default().to_owned();
                let port = b.get("HostPort").and_then(Value::as_str).unwrap_or_default().to_owned();
                out.push((cport.clone(), ip, port));
            }
        }
    }
    if r.host_config.get("PublishAllPorts").and_then(Value::as_bool).unwrap_or(false) {
        for p in exposed_ports(r) {
            if !out.iter().any(|(c, _, _)| *c == p) {
                out.push((p, String::new(), String::new()));
            }
        }
    }
    out
}

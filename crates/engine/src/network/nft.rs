//! The engine's NAT and filter rules, as one nftables table.
//!
//! This module owns the translation of the desired network state (bridges
//! and published ports) into nftables rules, and applying them. Every rule
//! the engine needs lives in a single table of family `ip` whose name the
//! caller chooses (several engines on one host use different names). The
//! table is a pure function of a [`Ruleset`] ([`batch`]); [`apply`] replaces
//! the whole table in one atomic nft transaction (`add table`, `delete
//! table`, then every chain and rule), so applying is idempotent and
//! reconciling after a restart is just applying again.
//!
//! The rules follow what dockerd installs with iptables:
//!
//! - `postrouting` (nat): masquerade a bridge's subnet leaving by another
//!   interface (unless the network is internal or masquerading is off).
//! - `prerouting`, `output` (nat): traffic to a local address jumps to
//!   `ports` (from outside, and from the host itself). Loopback
//!   destinations are left to the userland proxy, as dockerd's
//!   `! -d 127.0.0.0/8`: DNAT from 127.0.0.1 would need `route_localnet`,
//!   which lets containers reach services bound to the host's loopback.
//! - `ports`: one DNAT per published port, skipped for traffic entering from
//!   the container's own bridge (the userland proxy handles hairpin, like
//!   docker-proxy).
//! - `forward` (filter, policy accept): established/related flows accepted
//!   first; internal bridges cut off from every other interface; new flows
//!   between two different bridges dropped (dockerd's DOCKER-ISOLATION).
//!
//! It does not own the sysctls (`link.rs`), the userland proxy
//! (`proxy.rs`), or which ports and networks exist.
//!
//! Note that an `accept` here does not override a `drop` in another table
//! (for example an iptables `FORWARD` policy of `DROP` left by dockerd).

use std::borrow::Cow;
use std::collections::HashSet;
use std::ffi::OsString;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use nftables::batch::Batch;
use nftables::expr::{
    Expression, Fib, FibFlag, FibResult, Meta, MetaKey, NamedExpression, Payload, PayloadField,
    Prefix, SetItem, CT,
};
use nftables::schema::{Chain, NfListObject, Nftables, Rule, Table};
use nftables::stmt::{JumpTarget, Match, Operator, Statement, NAT};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

/// Chain names inside the engine's table.
const POSTROUTING: &str = "postrouting";
const PREROUTING: &str = "prerouting";
const OUTPUT: &str = "output";
const PORTS: &str = "ports";
const FORWARD: &str = "forward";

/// nftables' standard priorities (`srcnat`, `dstnat`, `filter`) for family ip.
const PRIO_SRCNAT: i32 = 100;
const PRIO_DSTNAT: i32 = -100;
const PRIO_FILTER: i32 = 0;

/// A bridge network, as far as NAT and filtering are concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bridge {
    /// The bridge interface name (e.g. `docker0`, `br-<id>`).
    pub name: String,
    /// The network's subnet (address, prefix length); host bits are ignored.
    pub subnet: (Ipv4Addr, u8),
    /// An internal network: no traffic in or out of the bridge.
    pub internal: bool,
    /// Masquerade traffic from the subnet leaving the host
    /// (`com.docker.network.bridge.enable_ip_masquerade`).
    pub masquerade: bool,
}

/// The transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    /// The protocol's name in nftables (and in Docker's `80/tcp`).
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        }
    }
}

/// One published port: traffic to `host_ip:host_port` goes to
/// `container_ip:container_port` on `bridge`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRule {
    pub proto: Proto,
    /// The host address the port is published on; `None` (or 0.0.0.0)
    /// means every local address.
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub container_ip: Ipv4Addr,
    pub container_port: u16,
    /// The bridge the container is reached through.
    pub bridge: String,
}

/// The whole desired state of the engine's table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    /// The table's name (family `ip`), e.g. `berth`.
    pub table: String,
    pub bridges: Vec<Bridge>,
    pub ports: Vec<PortRule>,
}

fn s(v: impl Into<String>) -> Expression<'static> {
    Expression::String(Cow::Owned(v.into()))
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: Cow::Borrowed(protocol),
            field: Cow::Borrowed(field),
        },
    )))
}

fn prefix(addr: Ipv4Addr, len: u8) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(s(network(addr, len).to_string())),
        len: u32::from(len),
    }))
}

/// `addr` with its host bits cleared (nft refuses a prefix with host bits).
fn network(addr: Ipv4Addr, len: u8) -> Ipv4Addr {
    let len = u32::from(len.min(32));
    let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
    Ipv4Addr::from(u32::from(addr) & mask)
}

fn matches(
    left: Expression<'static>,
    op: Operator,
    right: Expression<'static>,
) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}

fn iifname(op: Operator, name: &str) -> Statement<'static> {
    matches(meta(MetaKey::Iifname), op, s(name))
}

fn oifname(op: Operator, name: &str) -> Statement<'static> {
    matches(meta(MetaKey::Oifname), op, s(name))
}

/// `fib daddr type local`
fn daddr_is_local() -> Statement<'static> {
    let mut flags = HashSet::new();
    flags.insert(FibFlag::Daddr);
    matches(
        Expression::Named(NamedExpression::Fib(Fib {
            result: FibResult::Type,
            flags,
        })),
        Operator::EQ,
        s("local"),
    )
}

fn drop_() -> Statement<'static> {
    Statement::Drop(None)
}

fn table_obj(table: &str) -> NfListObject<'static> {
    NfListObject::Table(Table {
        family: NfFamily::IP,
        name: Cow::Owned(table.to_string()),
        handle: None,
    })
}

fn base_chain(
    table: &str,
    name: &'static str,
    ty: NfChainType,
    hook: NfHook,
    prio: i32,
) -> NfListObject<'static> {
    NfListObject::Chain(Chain {
        family: NfFamily::IP,
        table: Cow::Owned(table.to_string()),
        name: Cow::Borrowed(name),
        _type: Some(ty),
        hook: Some(hook),
        prio: Some(prio),
        policy: Some(NfChainPolicy::Accept),
        ..Chain::default()
    })
}

fn rule(table: &str, chain: &'static str, expr: Vec<Statement<'static>>) -> NfListObject<'static> {
    NfListObject::Rule(Rule {
        family: NfFamily::IP,
        table: Cow::Owned(table.to_string()),
        chain: Cow::Borrowed(chain),
        expr: Cow::Owned(expr),
        ..Rule::default()
    })
}

/// The nft JSON batch that replaces the table `r.table` with the rules for
/// `r`. Pure: the same ruleset always gives the same batch.
///
/// Names are not validated here; [`apply`] does that.
pub fn batch(r: &Ruleset) -> Nftables<'static> {
    let t = r.table.as_str();
    let mut b = Batch::new();

    // `add` first so that `delete` succeeds whether or not the table exists;
    // all of it is one transaction, so the old table stays until the new one
    // is complete.
    b.add(table_obj(t));
    b.delete(table_obj(t));
    b.add(table_obj(t));

    b.add(base_chain(
        t,
        POSTROUTING,
        NfChainType::NAT,
        NfHook::Postrouting,
        PRIO_SRCNAT,
    ));
    b.add(base_chain(
        t,
        PREROUTING,
        NfChainType::NAT,
        NfHook::Prerouting,
        PRIO_DSTNAT,
    ));
    b.add(base_chain(
        t,
        OUTPUT,
        NfChainType::NAT,
        NfHook::Output,
        PRIO_DSTNAT,
    ));
    b.add(NfListObject::Chain(Chain {
        family: NfFamily::IP,
        table: Cow::Owned(t.to_string()),
        name: Cow::Borrowed(PORTS),
        ..Chain::default()
    }));
    b.add(base_chain(
        t,
        FORWARD,
        NfChainType::Filter,
        NfHook::Forward,
        PRIO_FILTER,
    ));

    // postrouting
    for br in &r.bridges {
        if br.masquerade && !br.internal {
            b.add(rule(
                t,
                POSTROUTING,
                vec![
                    matches(
                        payload("ip", "saddr"),
                        Operator::EQ,
                        prefix(br.subnet.0, br.subnet.1),
                    ),
                    oifname(Operator::NEQ, &br.name),
                    Statement::Masquerade(None),
                ],
            ));
        }
    }
    // prerouting, output
    for chain in [PREROUTING, OUTPUT] {
        let mut expr = Vec::with_capacity(3);
        if chain == OUTPUT {
            expr.push(matches(payload("ip", "daddr"), Operator::NEQ, prefix(Ipv4Addr::new(127, 0, 0, 0), 8)));
        }
        expr.push(daddr_is_local());
        expr.push(Statement::Jump(JumpTarget {
            target: Cow::Borrowed(PORTS),
        }));
        b.add(rule(t, chain, expr));
    }
    // ports
    for p in &r.ports {
        let mut expr = Vec::with_capacity(4);
        if let Some(ip) = p.host_ip.filter(|ip| !ip.is_unspecified()) {
            expr.push(matches(
                payload("ip", "daddr"),
                Operator::EQ,
                s(ip.to_string()),
            ));
        }
        expr.push(iifname(Operator::NEQ, &p.bridge));
        expr.push(matches(
            payload(p.proto.as_str(), "dport"),
            Operator::EQ,
            Expression::Number(u32::from(p.host_port)),
        ));
        expr.push(Statement::DNAT(Some(NAT {
            addr: Some(s(p.container_ip.to_string())),
            family: None,
            port: Some(Expression::Number(u32::from(p.container_port))),
            flags: None,
        })));
        b.add(rule(t, PORTS, expr));
    }

    // forward
    b.add(rule(
        t,
        FORWARD,
        vec![
            matches(
                Expression::Named(NamedExpression::CT(CT {
                    key: Cow::Borrowed("state"),
                    family: None,
                    dir: None,
                })),
                Operator::IN,
                Expression::List(vec![s("established"), s("related")]),
            ),
            Statement::Accept(None),
        ],
    ));
    for br in r.bridges.iter().filter(|br| br.internal) {
        b.add(rule(
            t,
            FORWARD,
            vec![
                iifname(Operator::EQ, &br.name),
                oifname(Operator::NEQ, &br.name),
                drop_(),
            ],
        ));
        b.add(rule(
            t,
            FORWARD,
            vec![
                oifname(Operator::EQ, &br.name),
                iifname(Operator::NEQ, &br.name),
                drop_(),
            ],
        ));
    }
    // Isolation: one rule per bridge with the set of every other bridge,
    // equivalent to a drop for each ordered pair.
    for br in &r.bridges {
        let others: Vec<SetItem<'static>> = r
            .bridges
            .iter()
            .filter(|o| o.name != br.name)
            .map(|o| SetItem::Element(s(o.name.clone())))
            .collect();
        if others.is_empty() {
            continue;
        }
        b.add(rule(
            t,
            FORWARD,
            vec![
                iifname(Operator::EQ, &br.name),
                matches(
                    meta(MetaKey::Oifname),
                    Operator::EQ,
                    Expression::Named(NamedExpression::Set(others)),
                ),
                drop_(),
            ],
        ));
    }

    b.to_nftables()
}

/// Checks the names that end up in the batch, so that a bad name is a clear
/// error rather than an nft parse failure (or, for a string starting with
/// `@` or `$`, a set or variable reference).
fn validate(r: &Ruleset) -> io::Result<()> {
    validate_table(&r.table)?;
    let bridges = r.bridges.iter().map(|b| b.name.as_str());
    let port_bridges = r.ports.iter().map(|p| p.bridge.as_str());
    for name in bridges.chain(port_bridges) {
        let ok = !name.is_empty()
            && name.len() < 16
            && !name.starts_with(['@', '$'])
            && name
                .chars()
                .all(|c| c.is_ascii_graphic() && c != '/' && c != ':' && c != '"' && c != '\\');
        if !ok {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid interface name {name:?} for table {}", r.table),
            ));
        }
    }
    for b in &r.bridges {
        if b.subnet.1 > 32 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "invalid prefix length /{} for bridge {}",
                    b.subnet.1, b.name
                ),
            ));
        }
    }
    Ok(())
}

fn validate_table(table: &str) -> io::Result<()> {
    let ok = !table.is_empty()
        && table.len() <= 64
        && table.starts_with(|c: char| c.is_ascii_alphabetic())
        && table
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid nftables table name {table:?}"),
        ))
    }
}

/// Replaces the table `r.table` with the rules for `r`, atomically.
///
/// Runs `nft -j -f -` and blocks until it exits: call it from
/// `spawn_blocking` in async code.
pub fn apply(r: &Ruleset) -> io::Result<()> {
    validate(r)?;
    run_nft(&batch(r), &format!("apply nftables table {}", r.table))
}

/// Deletes the table `table` if it exists (no error if it does not).
pub fn remove(table: &str) -> io::Result<()> {
    validate_table(table)?;
    let mut b = Batch::new();
    b.add(table_obj(table));
    b.delete(table_obj(table));
    run_nft(&b.to_nftables(), &format!("remove nftables table {table}"))
}

/// The `nft` to run: the first in `PATH`, else the usual sbin locations (the
/// engine may run with a `PATH` without them).
fn nft_program() -> OsString {
    let in_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("nft"))
            .find(|p| p.is_file())
    });
    in_path
        .or_else(|| {
            ["/usr/sbin/nft", "/sbin/nft"]
                .into_iter()
                .map(std::path::PathBuf::from)
                .find(|p| p.is_file())
        })
        .map(|p| p.into_os_string())
        .unwrap_or_else(|| "nft".into())
}

/// Feeds the batch to `nft -j -f -`.
///
/// This does what `nftables::helper::apply_ruleset` does, except that it
/// captures nft's stderr: the crate's helper lets it go to the engine's
/// stderr, so its error would not say what nft rejected.
fn run_nft(batch: &Nftables<'_>, what: &str) -> io::Result<()> {
    let json = serde_json::to_string(batch)
        .map_err(|e| io::Error::other(format!("{what}: encode nft json: {e}")))?;
    let program = nft_program();
    let mut child = Command::new(&program)
        .args(["-j", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("{what}: run {}: {e}", program.to_string_lossy()),
            )
        })?;
    let write_res = match child.stdin.take() {
        Some(mut stdin) => stdin.write_all(json.as_bytes()),
        None => Ok(()),
    };
    // Wait first: if nft failed early (a broken pipe on write), its stderr
    // says why.
    let out = child
        .wait_with_output()
        .map_err(|e| io::Error::new(e.kind(), format!("{what}: wait for nft: {e}")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(io::Error::other(format!(
            "{what}: nft failed ({}): {}",
            out.status,
            stderr.trim()
        )));
    }
    write_res.map_err(|e| io::Error::new(e.kind(), format!("{what}: write to nft: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn sample() -> Ruleset {
        Ruleset {
            table: "berth".into(),
            bridges: vec![
                Bridge {
                    name: "docker0".into(),
                    subnet: (Ipv4Addr::new(172, 17, 0, 1), 16),
                    internal: false,
                    masquerade: true,
                },
                Bridge {
                    name: "br-int".into(),
                    subnet: (Ipv4Addr::new(172, 18, 0, 0), 16),
                    internal: true,
                    masquerade: true,
                },
            ],
            ports: vec![PortRule {
                proto: Proto::Tcp,
                host_ip: None,
                host_port: 8080,
                container_ip: Ipv4Addr::new(172, 17, 0, 2),
                container_port: 80,
                bridge: "docker0".into(),
            }],
        }
    }

    fn objects(r: &Ruleset) -> Vec<Value> {
        let v = serde_json::to_value(batch(r)).expect("serialize");
        v["nftables"].as_array().expect("array").clone()
    }

    /// The `expr` lists of the rules added to `chain`.
    fn rules(objs: &[Value], chain: &str) -> Vec<Value> {
        objs.iter()
            .filter_map(|o| o.get("add").and_then(|a| a.get("rule")))
            .filter(|r| r["chain"] == chain)
            .map(|r| r["expr"].clone())
            .collect()
    }

    #[test]
    fn batch_replaces_the_table_in_one_transaction() {
        let objs = objects(&sample());
        let table = json!({"table": {"family": "ip", "name": "berth"}});
        assert_eq!(objs[0], json!({"add": table}));
        assert_eq!(objs[1], json!({"delete": table}));
        assert_eq!(objs[2], json!({"add": table}));
        assert!(objs.iter().skip(3).all(|o| o.get("delete").is_none()));
    }

    #[test]
    fn batch_declares_hooked_chains_with_standard_priorities() {
        let objs = objects(&sample());
        let chain = |name: &str| {
            objs.iter()
                .find_map(|o| o["add"].get("chain").filter(|c| c["name"] == name).cloned())
                .unwrap_or_else(|| panic!("chain {name} missing"))
        };
        let post = chain("postrouting");
        assert_eq!(
            (post["type"].as_str(), post["hook"].as_str()),
            (Some("nat"), Some("postrouting"))
        );
        assert_eq!(post["prio"], 100);
        assert_eq!(chain("prerouting")["prio"], -100);
        assert_eq!(chain("output")["hook"], "output");
        assert_eq!(chain("output")["prio"], -100);
        let fwd = chain("forward");
        assert_eq!(
            (fwd["type"].as_str(), fwd["policy"].as_str()),
            (Some("filter"), Some("accept"))
        );
        assert_eq!(fwd["prio"], 0);
        assert!(
            chain("ports").get("hook").is_none(),
            "ports is a regular chain"
        );
    }

    /// A `match` statement as nft JSON.
    fn m(left: Value, op: &str, right: Value) -> Value {
        json!({"match": {"left": left, "op": op, "right": right}})
    }

    fn meta_key(key: &str) -> Value {
        json!({"meta": {"key": key}})
    }

    fn field(protocol: &str, field: &str) -> Value {
        json!({"payload": {"protocol": protocol, "field": field}})
    }

    #[test]
    fn published_port_dnats_to_the_container() {
        let ports = rules(&objects(&sample()), "ports");
        assert_eq!(
            ports,
            vec![json!([
                m(meta_key("iifname"), "!=", json!("docker0")),
                m(field("tcp", "dport"), "==", json!(8080)),
                {"dnat": {"addr": "172.17.0.2", "port": 80}},
            ])]
        );
    }

    #[test]
    fn port_on_a_host_address_matches_that_address() {
        let mut r = sample();
        r.ports[0].host_ip = Some(Ipv4Addr::new(127, 0, 0, 1));
        r.ports[0].proto = Proto::Udp;
        let ports = rules(&objects(&r), "ports");
        assert_eq!(
            ports[0],
            json!([
                m(field("ip", "daddr"), "==", json!("127.0.0.1")),
                m(meta_key("iifname"), "!=", json!("docker0")),
                m(field("udp", "dport"), "==", json!(8080)),
                {"dnat": {"addr": "172.17.0.2", "port": 80}},
            ])
        );
    }

    #[test]
    fn unspecified_host_address_means_any() {
        let mut r = sample();
        r.ports[0].host_ip = Some(Ipv4Addr::UNSPECIFIED);
        assert_eq!(
            rules(&objects(&r), "ports"),
            rules(&objects(&sample()), "ports")
        );
    }

    #[test]
    fn masquerade_only_for_external_masquerading_bridges() {
        let post = rules(&objects(&sample()), "postrouting");
        assert_eq!(
            post,
            vec![
                // The internal bridge br-int gets neither rule.
                json!([
                    m(field("ip", "saddr"), "==", json!({"prefix": {"addr": "172.17.0.0", "len": 16}})),
                    m(meta_key("oifname"), "!=", json!("docker0")),
                    {"masquerade": null},
                ]),
            ]
        );
    }

    #[test]
    fn no_masquerade_when_disabled() {
        let mut r = sample();
        r.bridges[0].masquerade = false;
        let post = rules(&objects(&r), "postrouting");
        assert!(post.is_empty(), "no masquerade: {post:?}");
    }

    #[test]
    fn local_destinations_jump_to_ports() {
        let objs = objects(&sample());
        assert_eq!(
            rules(&objs, "prerouting"),
            vec![json!([
                m(json!({"fib": {"result": "type", "flags": ["daddr"]}}), "==", json!("local")),
                {"jump": {"target": "ports"}}
            ])]
        );
        // Loopback is the userland proxy's.
        assert_eq!(
            rules(&objs, "output"),
            vec![json!([
                m(field("ip", "daddr"), "!=", json!({"prefix": {"addr": "127.0.0.0", "len": 8}})),
                m(json!({"fib": {"result": "type", "flags": ["daddr"]}}), "==", json!("local")),
                {"jump": {"target": "ports"}}
            ])]
        );
    }

    #[test]
    fn forward_accepts_established_first_then_isolates() {
        let fwd = rules(&objects(&sample()), "forward");
        let drop = json!({"drop": null});
        assert_eq!(
            fwd,
            vec![
                json!([
                    m(json!({"ct": {"key": "state"}}), "in", json!(["established", "related"])),
                    {"accept": null},
                ]),
                // Internal bridge: cut off in both directions.
                json!([
                    m(meta_key("iifname"), "==", json!("br-int")),
                    m(meta_key("oifname"), "!=", json!("br-int")),
                    drop,
                ]),
                json!([
                    m(meta_key("oifname"), "==", json!("br-int")),
                    m(meta_key("iifname"), "!=", json!("br-int")),
                    drop,
                ]),
                // Isolation, each direction.
                json!([
                    m(meta_key("iifname"), "==", json!("docker0")),
                    m(meta_key("oifname"), "==", json!({"set": ["br-int"]})),
                    drop,
                ]),
                json!([
                    m(meta_key("iifname"), "==", json!("br-int")),
                    m(meta_key("oifname"), "==", json!({"set": ["docker0"]})),
                    drop,
                ]),
            ]
        );
    }

    #[test]
    fn single_bridge_needs_no_isolation_rule() {
        let mut r = sample();
        r.bridges.truncate(1);
        assert_eq!(rules(&objects(&r), "forward").len(), 1);
    }

    #[test]
    fn subnet_host_bits_are_cleared() {
        assert_eq!(
            network(Ipv4Addr::new(172, 17, 0, 1), 16),
            Ipv4Addr::new(172, 17, 0, 0)
        );
        assert_eq!(
            network(Ipv4Addr::new(10, 1, 2, 3), 0),
            Ipv4Addr::UNSPECIFIED
        );
        assert_eq!(
            network(Ipv4Addr::new(10, 1, 2, 3), 32),
            Ipv4Addr::new(10, 1, 2, 3)
        );
    }

    #[test]
    fn bad_names_are_refused_before_running_nft() {
        let mut r = sample();
        r.table = "bad table".into();
        assert_eq!(
            apply(&r).expect_err("table").kind(),
            io::ErrorKind::InvalidInput
        );
        let mut r = sample();
        r.bridges[0].name = "@set".into();
        assert_eq!(
            apply(&r).expect_err("bridge").kind(),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(
            remove("").expect_err("empty").kind(),
            io::ErrorKind::InvalidInput
        );
    }

    fn is_root() -> bool {
        rustix::process::geteuid().is_root()
    }

    fn list_table(name: &str) -> Option<String> {
        let out = Command::new(nft_program())
            .args(["-j", "list", "table", "ip", name])
            .stderr(Stdio::null())
            .output()
            .expect("run nft");
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    struct TableGuard(String);

    impl Drop for TableGuard {
        fn drop(&mut self) {
            let _ = remove(&self.0);
        }
    }

    #[test]
    fn apply_replaces_the_table_and_remove_deletes_it() {
        if !is_root() {
            eprintln!("skipping apply_replaces_the_table_and_remove_deletes_it: needs root");
            return;
        }
        let table = format!("bt{:06x}", rand::random::<u32>() & 0xff_ffff);
        let _guard = TableGuard(table.clone());
        let mut r = sample();
        r.table = table.clone();

        apply(&r).expect("apply");
        let listed = list_table(&table).expect("table exists");
        for chain in ["postrouting", "prerouting", "output", "ports", "forward"] {
            assert!(
                listed.contains(&format!(r#""name": "{chain}""#)),
                "{chain}: {listed}"
            );
        }
        assert!(
            listed.contains(r#""dnat": {"addr": "172.17.0.2", "port": 80}"#),
            "{listed}"
        );
        assert!(listed.contains(r#""right": 8080"#), "{listed}");
        assert!(listed.contains(r#""masquerade": null"#), "{listed}");

        // Apply again with another port: the old rule is gone, not duplicated.
        r.ports[0].host_port = 9090;
        r.ports[0].container_port = 81;
        apply(&r).expect("apply again");
        apply(&r).expect("apply a third time");
        let listed = list_table(&table).expect("table exists");
        assert!(!listed.contains(r#""right": 8080"#), "{listed}");
        assert_eq!(listed.matches(r#""right": 9090"#).count(), 1, "{listed}");
        assert!(listed.contains(r#""port": 81"#), "{listed}");

        remove(&table).expect("remove");
        assert!(list_table(&table).is_none(), "table gone");
        remove(&table).expect("remove a missing table");
    }

    #[test]
    fn apply_reports_what_nft_rejected() {
        if !is_root() {
            eprintln!("skipping apply_reports_what_nft_rejected: needs root");
            return;
        }
        let table = format!("bt{:06x}", rand::random::<u32>() & 0xff_ffff);
        let _guard = TableGuard(table.clone());
        let mut b = Batch::new();
        b.add(NfListObject::Rule(Rule {
            family: NfFamily::IP,
            table: Cow::Owned(table.clone()),
            chain: Cow::Borrowed("nochain"),
            expr: Cow::Owned(vec![Statement::Accept(None)]),
            ..Rule::default()
        }));
        let err = run_nft(&b.to_nftables(), "test").expect_err("no such table");
        assert!(err.to_string().starts_with("test: nft failed"), "{err}");
        assert!(
            err.to_string().len() > "test: nft failed (exit status: 1): ".len(),
            "{err}"
        );
    }

    /// Listens on port 80 in the namespace and answers every connection
    /// with "hello"; killed on drop.
    struct Server(std::process::Child);

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn fetch(addr: std::net::SocketAddr) -> io::Result<String> {
        use std::io::Read;
        let mut conn =
            std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2))?;
        conn.set_read_timeout(Some(std::time::Duration::from_secs(2)))?;
        let mut out = String::new();
        conn.read_to_string(&mut out)?;
        Ok(out)
    }

    #[tokio::test]
    async fn published_ports_reach_the_container() {
        use crate::network::link::{self, tests::*, Netlink};
        if !is_root() {
            eprintln!("skipping published_ports_reach_the_container: needs root");
            return;
        }
        let tag: u32 = rand::random();
        let br = format!("bt{:06x}", tag & 0xff_ffff);
        let x = (tag >> 24) as u8;
        let (gw, ip) = (Ipv4Addr::new(10, 252, x, 1), Ipv4Addr::new(10, 252, x, 2));
        let _bridge = BridgeGuard(br.clone());
        let _table = TableGuard(br.clone());

        let nl = Netlink::host().await.expect("host netlink");
        nl.ensure_bridge(&br, gw, 24, None).await.expect("bridge");
        let child = NsChild::spawn();
        let host_end = format!("vt{:06x}", tag & 0xff_ffff);
        nl.create_veth_into(&host_end, &br, "vtmp0", &child.netns())
            .await
            .expect("veth");
        let inside = Netlink::in_netns(&child.netns()).expect("netns netlink");
        inside
            .configure_endpoint("vtmp0", "eth0", ip, 24, link::mac_for(ip), Some(gw))
            .await
            .expect("endpoint");
        let _server = Server(
            Command::new("nsenter")
                .arg(format!("--net={}", child.netns().display()))
                .args([
                    "busybox",
                    "nc",
                    "-ll",
                    "-p",
                    "80",
                    "-e",
                    "/bin/echo",
                    "hello",
                ])
                .spawn()
                .expect("spawn server"),
        );
        let direct = std::net::SocketAddr::from((ip, 80));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while fetch(direct).map(|s| s.trim() != "hello").unwrap_or(true) {
            assert!(
                std::time::Instant::now() < deadline,
                "server never answered directly"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }

        let any_port = 20000 + (tag % 20000) as u16;
        let lo_port = any_port + 1;
        let rule = |host_ip, host_port| PortRule {
            proto: Proto::Tcp,
            host_ip,
            host_port,
            container_ip: ip,
            container_port: 80,
            bridge: br.clone(),
        };
        let r = Ruleset {
            table: br.clone(),
            bridges: vec![Bridge {
                name: br.clone(),
                subnet: (gw, 24),
                internal: false,
                masquerade: true,
            }],
            ports: vec![
                rule(None, any_port),
                rule(Some(Ipv4Addr::LOCALHOST), lo_port),
            ],
        };
        apply(&r).expect("apply");

        // To a local address (here the gateway's), through the output chain.
        let got = fetch((gw, any_port).into()).expect("published on any address");
        assert_eq!(got.trim(), "hello");
        // 127.0.0.1 is never DNATed (the userland proxy serves it).
        assert!(fetch((Ipv4Addr::LOCALHOST, lo_port).into()).is_err());
        // The 127.0.0.1 port is not published on other addresses.
        assert!(fetch((gw, lo_port).into()).is_err());

        drop(inside);
        nl.delete_link(&host_end).await.expect("delete veth");
        nl.delete_link(&br).await.expect("delete bridge");
    }
}

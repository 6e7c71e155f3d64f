//! Networks and published ports through the real docker CLI: the default
//! bridge, user-defined bridges with DNS by name and alias, NAT, `-p` in
//! its forms, connect/disconnect, cleanup, and reconciliation after the
//! engine is killed. Error texts are compared with dockerd's where the
//! reference can produce them.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{nft_table, reference, require, Berthd, Need};

fn ready(images: &[&str]) -> Berthd {
    let d = Berthd::start();
    for i in images {
        d.docker_ok(&["pull", "-q", i]);
    }
    d
}

/// A free TCP port on the host (bound then released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `redis-cli -h host -p port ping` from the host, retried until redis
/// answers or 20 s pass.
fn redis_ping(host: &str, port: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = Command::new("redis-cli").args(["-h", host, "-p", &port.to_string(), "ping"]).output().expect("redis-cli (Debian redis-tools)");
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if text == "PONG" || Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The links enslaved to `bridge`.
fn ports_of(bridge: &str) -> String {
    let out = Command::new("ip").args(["-o", "link", "show", "master", bridge]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn inspect(d: &Berthd, fmt: &str, what: &str) -> String {
    d.docker_ok(&["inspect", "-f", fmt, what]).trim().to_owned()
}

#[test]
fn published_redis_answers_from_the_host_and_from_other_containers() {
    require!(Need::Root, Need::Registry);
    let d = ready(&["redis", "busybox"]);
    let (lo, any) = (free_port(), free_port());
    d.docker_ok(&["run", "-d", "--name", "cache", "-p", &format!("127.0.0.1:{lo}:6379"), "-p", &format!("{any}:6379"), "redis"]);
    assert_eq!(redis_ping("127.0.0.1", lo), "PONG");
    assert_eq!(redis_ping("127.0.0.1", any), "PONG");
    let port = d.docker_ok(&["port", "cache", "6379"]);
    assert!(port.contains(&format!("127.0.0.1:{lo}")) && port.contains(&format!("0.0.0.0:{any}")), "{port}");
    let ps = d.docker_ok(&["ps", "--format", "{{.Ports}}"]);
    assert!(ps.contains(&format!("127.0.0.1:{lo}->6379/tcp")), "{ps}");
    // Another container reaches it through the host's address on the
    // bridge (the userland proxy handles this hairpin, as docker-proxy).
    let gw = inspect(&d, "{{range .NetworkSettings.Networks}}{{.Gateway}}{{end}}", "cache");
    let out = d.docker_ok(&["run", "--rm", "redis", "redis-cli", "-h", &gw, "-p", &any.to_string(), "ping"]);
    assert_eq!(out.trim(), "PONG");
    // And directly by address on the default bridge.
    let ip = inspect(&d, "{{.NetworkSettings.IPAddress}}", "cache");
    assert!(ip.starts_with(&gw[..gw.rfind('.').unwrap()]), "{ip} vs {gw}");
    let out = d.docker_ok(&["run", "--rm", "redis", "redis-cli", "-h", &ip, "ping"]);
    assert_eq!(out.trim(), "PONG");
    // The rule is there while it runs, gone (with the proxy) once removed.
    assert!(nft_table(&d).contains(&format!("dport {any} dnat")), "{}", nft_table(&d));
    d.docker_ok(&["rm", "-f", "cache"]);
    assert!(!nft_table(&d).contains(&format!("dport {any}")), "{}", nft_table(&d));
    assert!(TcpStream::connect(("127.0.0.1", lo)).is_err(), "port {lo} still answers");
}

#[test]
fn publish_all_ranges_and_udp() {
    require!(Need::Root, Need::Registry);
    let d = ready(&["busybox"]);
    // -P: every exposed port gets a random host port.
    d.docker_ok(&["run", "-d", "--name", "web", "-P", "--expose", "80", "busybox", "httpd", "-f", "-p", "80", "-h", "/etc"]);
    let port = d.docker_ok(&["port", "web", "80/tcp"]);
    let host_port: u16 = port.lines().next().unwrap().rsplit(':').next().unwrap().trim().parse().unwrap();
    assert!(host_port > 1024, "{port}");
    let body = http_get(host_port, "/hostname");
    assert!(body.contains("200 OK"), "{body}");
    // A host range for one container port: the first free one is taken.
    let base = free_port();
    let _hold = TcpListener::bind(("0.0.0.0", base)).ok();
    let range = format!("{base}-{}:80", base + 5);
    d.docker_ok(&["run", "-d", "--name", "ranged", "-p", &range, "busybox", "httpd", "-f", "-p", "80", "-h", "/etc"]);
    let got = d.docker_ok(&["port", "ranged", "80"]);
    let p: u16 = got.lines().next().unwrap().rsplit(':').next().unwrap().trim().parse().unwrap();
    assert!(p > base && p <= base + 5, "{got} (base {base} was held)");
    assert!(http_get(p, "/hostname").contains("200 OK"));
    // UDP: an echo server (perl from the redis image's Debian base).
    let uport = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let echo = r#"$s=IO::Socket::INET->new(LocalPort=>9999,Proto=>"udp") or die "$!"; while($s->recv($m,1000)){ $s->send("echo:$m") }"#;
    d.docker_ok(&["pull", "-q", "redis"]);
    d.docker_ok(&["run", "-d", "--name", "udp", "-p", &format!("127.0.0.1:{uport}:9999/udp"), "redis", "perl", "-MIO::Socket::INET", "-e", echo]);
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut buf = [0u8; 64];
    loop {
        s.send_to(b"datagram", ("127.0.0.1", uport)).unwrap();
        if let Ok((n, _)) = s.recv_from(&mut buf) {
            assert_eq!(&buf[..n], b"echo:datagram");
            break;
        }
        assert!(Instant::now() < deadline, "no UDP echo through the published port");
    }
    assert!(d.docker_ok(&["port", "udp"]).contains(&format!("9999/udp -> 127.0.0.1:{uport}")));
}

fn http_get(port: u16, path: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(mut c) = TcpStream::connect(("127.0.0.1", port)) {
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let _ = c.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes());
            let mut out = String::new();
            let _ = c.read_to_string(&mut out);
            if !out.is_empty() {
                return out;
            }
        }
        assert!(Instant::now() < deadline, "nothing answers on port {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn port_in_use_fails_clearly_and_leaves_no_rule() {
    require!(Need::Root, Need::Registry);
    let d = ready(&["busybox"]);
    let holder = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let err = d.docker_err(&["run", "-d", "--name", "clash", "-p", &format!("{port}:80"), "busybox", "sleep", "60"]);
    assert!(err.contains(&format!("Bind for 0.0.0.0:{port} failed: port is already allocated")), "{err}");
    assert!(!nft_table(&d).contains(&format!("dport {port}")), "{}", nft_table(&d));
    assert_eq!(inspect(&d, "{{.State.Running}}", "clash"), "false");
    // The container owns nothing on the bridge.
    let bridge = bridge_of(&d, "bridge");
    assert!(ports_of(&bridge).trim().is_empty(), "{}", ports_of(&bridge));
    // Freed, it starts.
    drop(holder);
    d.docker_ok(&["start", "clash"]);
    assert!(nft_table(&d).contains(&format!("dport {port}")));
}

fn bridge_of(d: &Berthd, net: &str) -> String {
    let opts = d.docker_ok(&["network", "inspect", "-f", "{{index .Options \"com.docker.network.bridge.name\"}}|{{.Id}}", net]);
    let (name, id) = opts.trim().split_once('|').unwrap();
    if name.is_empty() || name == "<no value>" {
        format!("br-{}", &id[..12])
    } else {
        name.to_owned()
    }
}

#[test]
fn user_network_resolves_names_and_aliases_default_bridge_does_not() {
    require!(Need::Root, Need::Registry);
    let d = ready(&["busybox"]);
    d.docker_ok(&["network", "create", "--label", "team=a", "appnet"]);
    d.docker_ok(&["run", "-d", "--name", "db", "--network", "appnet", "--network-alias", "database", "busybox", "sleep", "300"]);
    let db_ip = inspect(&d, "{{.NetworkSettings.Networks.appnet.IPAddress}}", "db");
    for name in ["db", "database", &inspect(&d, "{{.Id}}", "db")[..12]] {
        let out = d.docker_ok(&["run", "--rm", "--network", "appnet", "busybox", "nslookup", name]);
        assert!(out.contains(&format!("Address: {db_ip}")), "{name}: {out}");
    }
    let out = d.docker_ok(&["run", "--rm", "--network", "appnet", "busybox", "ping", "-c", "1", "-W", "3", "database"]);
    assert!(out.contains("1 packets received"), "{out}");
    let resolv = d.docker_ok(&["run", "--rm", "--network", "appnet", "busybox", "cat", "/etc/resolv.conf"]);
    assert!(resolv.contains("nameserver 127.0.0.11"), "{resolv}");
    // Other names go to the host's resolvers (the embedded server forwards).
    let host_resolves = Command::new("getent").args(["hosts", "deb.debian.org"]).output().map(|o| o.status.success()).unwrap_or(false);
    if host_resolves {
        let out = d.docker_ok(&["run", "--rm", "--network", "appnet", "busybox", "nslookup", "deb.debian.org"]);
        assert!(out.contains("Name:\tdeb.debian.org"), "{out}");
    }
    // The default bridge has no DNS by name, as with dockerd.
    d.docker_ok(&["run", "-d", "--name", "onbridge", "busybox", "sleep", "300"]);
    let out = d.docker(&["run", "--rm", "busybox", "ping", "-c", "1", "-W", "2", "onbridge"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad address"), "{:?}", out);
    // inspect lists the connected container; ls filters by label.
    let net = d.docker_ok(&["network", "inspect", "appnet"]);
    assert!(net.contains(&format!("\"IPv4Address\": \"{db_ip}/")), "{net}");
    assert_eq!(d.docker_ok(&["network", "ls", "-q", "--filter", "label=team=a"]).trim().len(), 12);
    // In use: refused; after the container goes: removed.
    let err = d.docker_err(&["network", "rm", "appnet"]);
    assert!(err.contains("has active endpoints"), "{err}");
    d.docker_ok(&["rm", "-f", "db"]);
    d.docker_ok(&["network", "rm", "appnet"]);
    let err = d.docker_err(&["network", "rm", "bridge"]);
    assert!(err.contains("bridge is a pre-defined network and cannot be removed"), "{err}");
}

#[test]
fn ip_internal_isolation_connect_disconnect_and_nat() {
    require!(Need::Root, Need::Registry);
    let d = ready(&["busybox"]);
    d.docker_ok(&["network", "create", "--subnet", "10.231.0.0/24", "--gateway", "10.231.0.254", "--ip-range", "10.231.0.128/25", "fixed"]);
    d.docker_ok(&["network", "create", "--internal", "sealed"]);
    // --ip on a network with a user subnet.
    d.docker_ok(&["run", "-d", "--name", "pinned", "--network", "fixed", "--ip", "10.231.0.50", "busybox", "sleep", "300"]);
    let out = d.docker_ok(&["exec", "pinned", "ip", "-4", "-o", "addr", "show", "eth0"]);
    assert!(out.contains("10.231.0.50/24"), "{out}");
    let route = d.docker_ok(&["exec", "pinned", "ip", "route"]);
    assert!(route.contains("default via 10.231.0.254"), "{route}");
    // Without --ip, addresses come from the ip-range.
    d.docker_ok(&["run", "-d", "--name", "ranged", "--network", "fixed", "busybox", "sleep", "300"]);
    assert_eq!(inspect(&d, "{{.NetworkSettings.Networks.fixed.IPAddress}}", "ranged"), "10.231.0.128");
    // --ip where dockerd refuses it.
    let err = d.docker_err(&["run", "--rm", "--ip", "172.17.0.99", "busybox", "true"]);
    assert!(err.contains("user specified IP address is supported only when connecting to networks with user configured subnets"), "{err}");
    // (The CLI refuses this one itself; the API gives dockerd's words.)
    let err = d.docker_err(&["run", "--rm", "--network-alias", "x", "busybox", "true"]);
    assert!(err.contains("only supported for user-defined networks") || err.contains("supported only for containers in user defined networks"), "{err}");
    // NAT: the default bridge reaches the host's gateway; an internal
    // network reaches its peers only.
    let host_gw = default_gateway();
    let out = d.docker_ok(&["run", "--rm", "busybox", "ping", "-c", "1", "-W", "3", &host_gw]);
    assert!(out.contains("1 packets received"), "{out}");
    d.docker_ok(&["run", "-d", "--name", "inside", "--network", "sealed", "busybox", "sleep", "300"]);
    let out = d.docker(&["run", "--rm", "--network", "sealed", "busybox", "ping", "-c", "1", "-W", "2", &host_gw]);
    assert!(!out.status.success(), "internal network reached {host_gw}");
    let out = d.docker_ok(&["run", "--rm", "--network", "sealed", "busybox", "ping", "-c", "1", "-W", "3", "inside"]);
    assert!(out.contains("1 packets received"), "{out}");
    // Two user networks are isolated from each other.
    let out = d.docker(&["run", "--rm", "--network", "sealed", "busybox", "ping", "-c", "1", "-W", "2", "10.231.0.50"]);
    assert!(!out.status.success(), "crossed from sealed to fixed");
    // connect / disconnect a running container.
    d.docker_ok(&["network", "connect", "--alias", "joined", "sealed", "pinned"]);
    let out = d.docker_ok(&["exec", "pinned", "ip", "-o", "link"]);
    assert!(out.contains("eth1"), "{out}");
    let out = d.docker_ok(&["run", "--rm", "--network", "sealed", "busybox", "ping", "-c", "1", "-W", "3", "joined"]);
    assert!(out.contains("1 packets received"), "{out}");
    let nets = inspect(&d, "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}", "pinned");
    assert_eq!(nets, "fixed sealed");
    d.docker_ok(&["network", "disconnect", "sealed", "pinned"]);
    let out = d.docker_ok(&["exec", "pinned", "ip", "-o", "link"]);
    assert!(!out.contains("eth1"), "{out}");
    // Overlapping and malformed subnets.
    let err = d.docker_err(&["network", "create", "--subnet", "10.231.0.0/16", "overlap"]);
    assert!(err.contains("Pool overlaps with other one on this address space"), "{err}");
    let err = d.docker_err(&["network", "create", "--subnet", "10.231.0/16", "bad"]);
    assert!(err.contains("invalid CIDR address: 10.231.0/16"), "{err}");
    // A bridge name that is an existing host interface is never taken over.
    let host_if = default_route_dev();
    let err = d.docker_err(&["network", "create", "-o", &format!("com.docker.network.bridge.name={host_if}"), "hijack"]);
    assert!(err.contains("already in use"), "{err}");
    let err = d.docker_err(&["network", "create", "-o", "com.docker.network.bridge.name=x;y$z", "weird"]);
    assert!(err.contains("invalid bridge name"), "{err}");
    assert!(Command::new("ip").args(["link", "show", &host_if]).output().unwrap().status.success());
}

/// The interface of the host's default route.
fn default_route_dev() -> String {
    let out = Command::new("ip").args(["-4", "route", "show", "default"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let words: Vec<&str> = text.split_whitespace().collect();
    words.iter().position(|w| *w == "dev").map(|i| words[i + 1].to_owned()).expect("a default route with a device")
}

/// The host's default gateway (reachable through NAT from containers).
fn default_gateway() -> String {
    let out = Command::new("ip").args(["-4", "route", "show", "default"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().nth(2).expect("a default route").to_owned()
}

#[test]
fn host_none_container_modes_dns_and_add_host() {
    require!(Need::Root, Need::Registry);
    let d = ready(&["busybox"]);
    let host_links = String::from_utf8_lossy(&Command::new("ip").args(["-o", "link"]).output().unwrap().stdout).lines().count();
    let out = d.docker_ok(&["run", "--rm", "--network", "host", "busybox", "ip", "-o", "link"]);
    assert!(out.lines().count() >= host_links.saturating_sub(2), "{out}");
    let out = d.docker_ok(&["run", "--rm", "--network", "none", "busybox", "ip", "-o", "link"]);
    assert_eq!(out.lines().count(), 1, "{out}");
    d.docker_ok(&["run", "-d", "--name", "owner", "busybox", "sleep", "300"]);
    let a = d.docker_ok(&["exec", "owner", "ip", "-4", "-o", "addr", "show", "eth0"]);
    let b = d.docker_ok(&["run", "--rm", "--network", "container:owner", "busybox", "ip", "-4", "-o", "addr", "show", "eth0"]);
    assert_eq!(a.split_whitespace().nth(3), b.split_whitespace().nth(3));
    // Legacy links on the default bridge.
    let owner_ip = inspect(&d, "{{.NetworkSettings.IPAddress}}", "owner");
    let out = d.docker_ok(&["run", "--rm", "--link", "owner:db", "busybox", "ping", "-c", "1", "-W", "3", "db"]);
    assert!(out.contains(&format!("({owner_ip})")) && out.contains("1 packets received"), "{out}");
    let out = d.docker_ok(&["run", "--rm", "--mac-address", "92:d0:c6:0a:29:33", "busybox", "cat", "/sys/class/net/eth0/address"]);
    assert_eq!(out.trim(), "92:d0:c6:0a:29:33");
    let err = d.docker_err(&["run", "--rm", "--mac-address", "01:00:5e:00:00:01", "busybox", "true"]);
    assert!(err.to_lowercase().contains("mac address"), "{err}");
    let out = d.docker_ok(&["run", "--rm", "--dns", "192.0.2.53", "--dns-search", "corp.example", "busybox", "cat", "/etc/resolv.conf"]);
    assert!(out.contains("nameserver 192.0.2.53") && out.contains("search corp.example"), "{out}");
    let gw = d.docker_ok(&["network", "inspect", "-f", "{{range .IPAM.Config}}{{.Gateway}}{{end}}", "bridge"]);
    let out = d.docker_ok(&["run", "--rm", "--add-host", "host.docker.internal:host-gateway", "--add-host", "db:10.1.2.3", "busybox", "cat", "/etc/hosts"]);
    assert!(out.contains(&format!("{}\thost.docker.internal", gw.trim())) && out.contains("10.1.2.3\tdb"), "{out}");
    // The default bridge's subnet overlaps no route of another interface.
    let subnet = d.docker_ok(&["network", "inspect", "-f", "{{range .IPAM.Config}}{{.Subnet}}{{end}}", "bridge"]);
    let bridge = bridge_of(&d, "bridge");
    let routes = String::from_utf8_lossy(&Command::new("ip").args(["-4", "route", "show", "match", subnet.trim()]).output().unwrap().stdout).into_owned();
    for r in routes.lines().filter(|l| !l.starts_with("default")) {
        assert!(r.contains(&bridge), "{subnet} overlaps {r}");
    }
}

#[test]
fn kill9_restart_reconciles_and_removal_leaves_nothing() {
    require!(Need::Root, Need::Registry);
    let mut d = ready(&["redis", "busybox"]);
    d.docker_ok(&["network", "create", "svc"]);
    let port = free_port();
    d.docker_ok(&["run", "-d", "--name", "kv", "--network", "svc", "-p", &format!("127.0.0.1:{port}:6379"), "redis"]);
    d.docker_ok(&["run", "-d", "--name", "peer", "--network", "svc", "busybox", "sleep", "300"]);
    assert_eq!(redis_ping("127.0.0.1", port), "PONG");
    d.kill9();
    d.restart();
    // The port and the names answer again, the container kept its address.
    assert_eq!(redis_ping("127.0.0.1", port), "PONG");
    let out = d.docker_ok(&["exec", "peer", "nslookup", "kv"]);
    let kv_ip = inspect(&d, "{{.NetworkSettings.Networks.svc.IPAddress}}", "kv");
    assert!(out.contains(&format!("Address: {kv_ip}")), "{out}");
    // A new container does not get an address already in use.
    d.docker_ok(&["run", "-d", "--name", "third", "--network", "svc", "busybox", "sleep", "300"]);
    let third = inspect(&d, "{{.NetworkSettings.Networks.svc.IPAddress}}", "third");
    assert_ne!(third, kv_ip);
    let svc_bridge = bridge_of(&d, "svc");
    assert_eq!(ports_of(&svc_bridge).lines().count(), 3, "{}", ports_of(&svc_bridge));
    // Removing every container leaves no veth, rule or proxy.
    d.docker_ok(&["rm", "-f", "kv", "peer", "third"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ports_of(&svc_bridge).trim().is_empty() {
        assert!(Instant::now() < deadline, "veths left: {}", ports_of(&svc_bridge));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!nft_table(&d).contains("dnat"), "{}", nft_table(&d));
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    // Network events, prune.
    d.docker_ok(&["network", "create", "spare"]);
    d.docker_ok(&["network", "create", "--label", "keep=yes", "kept"]);
    let out = d.docker_ok(&["network", "prune", "-f", "--filter", "label!=keep"]);
    assert!(out.contains("spare") && out.contains("svc") && !out.contains("kept"), "{out}");
    assert!(d.docker_ok(&["network", "ls", "--format", "{{.Name}}"]).contains("kept"));
    let out = d.docker_ok(&["system", "prune", "-f"]);
    assert!(out.contains("Deleted Networks:") && out.contains("kept"), "{out}");
    let until = (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 1).to_string();
    let events = d.docker_ok(&["events", "--since", "0", "--until", &until, "--filter", "type=network", "--format", "{{.Action}} {{.Actor.Attributes.name}}"]);
    // (Events before the restart went with the killed engine, as dockerd's.)
    for e in ["connect svc", "disconnect svc", "create spare", "destroy spare", "destroy svc"] {
        assert!(events.contains(e), "missing {e:?} in\n{events}");
    }
    // A stopped engine with nothing running takes its bridges away.
    let default_bridge = bridge_of(&d, "bridge");
    d.stop();
    assert!(!Command::new("ip").args(["link", "show", &default_bridge]).output().unwrap().status.success(), "{default_bridge} left");
}

#[test]
fn network_errors_match_dockerd() {
    require!(Need::Root, Need::Registry, Need::Reference);
    let d = Berthd::start();
    let Some(r) = reference() else { return };
    let clients: [&common::Client; 2] = [&d, &r];
    for (i, c) in clients.iter().enumerate() {
        let net = format!("cmpnet{i}");
        let sub = format!("10.24{i}.0.0/24");
        let run = |args: &[&str]| {
            let out = c.docker(args);
            (out.status.success(), String::from_utf8_lossy(&out.stderr).trim().to_owned())
        };
        let target = c.host();
        assert!(run(&["network", "create", "--subnet", &sub, &net]).0);
        let (ok, dup) = run(&["network", "create", &net]);
        let (ok2, missing) = run(&["network", "inspect", "nosuchnet"]);
        let (ok3, overlap) = run(&["network", "create", "--subnet", &sub.replace("/24", "/16"), &format!("{net}x")]);
        run(&["network", "rm", &net]);
        assert!(!ok && !ok2 && !ok3);
        let want_dup = format!("Error response from daemon: network with name {net} already exists");
        assert_eq!(dup, want_dup, "engine {target}");
        assert!(missing.contains("network nosuchnet not found"), "engine {target}: {missing}");
        assert!(overlap.contains("Pool overlaps with other one on this address space"), "engine {target}: {overlap}");
    }
}

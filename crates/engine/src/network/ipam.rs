//! IPv4 address management: subnets, the pools new networks are carved
//! from (dockerd's default address pools), and handing out addresses in a
//! network. Pure: no I/O, so every rule is unit-tested.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 subnet in CIDR form, normalized to its network address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Subnet {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Subnet {
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Subnet {
        let prefix = prefix.min(32);
        Subnet { addr: Ipv4Addr::from(u32::from(addr) & mask(prefix)), prefix }
    }
    fn first(&self) -> u32 {
        u32::from(self.addr)
    }
    fn last(&self) -> u32 {
        self.first() | !mask(self.prefix)
    }
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == self.first()
    }
    pub fn overlaps(&self, other: &Subnet) -> bool {
        self.first() <= other.last() && other.first() <= self.last()
    }
    /// The subnet's `n`th address (0 is the network address).
    pub fn nth(&self, n: u32) -> Option<Ipv4Addr> {
        let ip = self.first().checked_add(n)?;
        (ip <= self.last()).then(|| Ipv4Addr::from(ip))
    }
    /// The conventional gateway: the first host address.
    pub fn default_gateway(&self) -> Ipv4Addr {
        self.nth(1).unwrap_or(self.addr)
    }
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.last())
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Why a subnet string was refused (dockerd's words).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid CIDR address: {0}")]
pub struct BadCidr(pub String);

impl FromStr for Subnet {
    type Err = BadCidr;
    fn from_str(s: &str) -> Result<Self, BadCidr> {
        let bad = || BadCidr(s.to_owned());
        let (a, p) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = a.parse().map_err(|_| bad())?;
        let prefix: u8 = p.parse().map_err(|_| bad())?;
        if prefix > 32 || p.starts_with('+') {
            return Err(bad());
        }
        Ok(Subnet::new(addr, prefix))
    }
}

/// dockerd's default address pools: 172.17.0.0/16 to 172.31.0.0/16, then
/// 192.168.0.0/16 in /20s.
pub fn default_pools() -> impl Iterator<Item = Subnet> {
    let big = (17u8..=31).map(|b| Subnet::new(Ipv4Addr::new(172, b, 0, 0), 16));
    let small = (0u8..16).map(|i| Subnet::new(Ipv4Addr::new(192, 168, i * 16, 0), 20));
    big.chain(small)
}

/// The first default pool that overlaps none of `taken` (routes on the
/// host, other networks).
pub fn pick_subnet(taken: &[Subnet]) -> Option<Subnet> {
    default_pools().find(|p| !taken.iter().any(|t| t.overlaps(p)))
}

/// Picks a free address in `subnet` (within `range` when given), never the
/// network, gateway or broadcast address, preferring `preferred` when it is
/// free. Addresses are handed out in order, as dockerd does.
pub fn allocate(subnet: &Subnet, range: Option<&Subnet>, gateway: Ipv4Addr, used: &BTreeSet<Ipv4Addr>, preferred: Option<Ipv4Addr>) -> Option<Ipv4Addr> {
    let usable = |ip: Ipv4Addr| {
        subnet.contains(ip) && range.is_none_or(|r| r.contains(ip)) && ip != gateway && ip != subnet.addr && ip != subnet.broadcast() && !used.contains(&ip)
    };
    if let Some(p) = preferred.filter(|p| usable(*p)) {
        return Some(p);
    }
    let space = range.unwrap_or(subnet);
    (space.first()..=space.last()).map(Ipv4Addr::from).find(|ip| usable(*ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> Subnet {
        x.parse().unwrap()
    }

    #[test]
    fn parses_and_normalizes() {
        assert_eq!(s("172.18.5.4/16").to_string(), "172.18.0.0/16");
        assert_eq!(s("10.0.0.0/8").nth(1), Some(Ipv4Addr::new(10, 0, 0, 1)));
        for bad in ["foo", "10.0.0.0", "10.0.0.0/33", "10.0.0/8", "10.0.0.0/+8", "::1/64", "10.0.0.0/x"] {
            assert_eq!(bad.parse::<Subnet>().unwrap_err().to_string(), format!("invalid CIDR address: {bad}"));
        }
    }

    #[test]
    fn overlap_is_symmetric_and_exact() {
        assert!(s("172.17.0.0/16").overlaps(&s("172.17.3.0/24")));
        assert!(s("172.17.3.0/24").overlaps(&s("172.17.0.0/16")));
        assert!(!s("172.17.0.0/16").overlaps(&s("172.18.0.0/16")));
        assert!(s("0.0.0.0/0").overlaps(&s("10.0.0.0/8")));
    }

    #[test]
    fn picks_first_pool_not_routed() {
        assert_eq!(pick_subnet(&[]), Some(s("172.17.0.0/16")));
        assert_eq!(pick_subnet(&[s("172.17.0.0/16"), s("172.18.1.0/24")]), Some(s("172.19.0.0/16")));
        let all_big: Vec<Subnet> = (17..=31).map(|b| Subnet::new(Ipv4Addr::new(172, b, 0, 0), 16)).collect();
        assert_eq!(pick_subnet(&all_big), Some(s("192.168.0.0/20")));
        assert_eq!(pick_subnet(&[s("0.0.0.0/0")]), None);
    }

    #[test]
    fn allocates_in_order_skipping_reserved() {
        let net = s("10.9.0.0/29");
        let gw = net.default_gateway();
        let mut used = BTreeSet::new();
        let mut got = Vec::new();
        while let Some(ip) = allocate(&net, None, gw, &used, None) {
            used.insert(ip);
            got.push(ip.to_string());
        }
        assert_eq!(got, ["10.9.0.2", "10.9.0.3", "10.9.0.4", "10.9.0.5", "10.9.0.6"]);
    }

    #[test]
    fn allocation_honours_range_and_preference() {
        let net = s("10.9.0.0/24");
        let gw = Ipv4Addr::new(10, 9, 0, 1);
        let range = s("10.9.0.128/25");
        let used = BTreeSet::new();
        assert_eq!(allocate(&net, Some(&range), gw, &used, None), Some(Ipv4Addr::new(10, 9, 0, 128)));
        assert_eq!(allocate(&net, Some(&range), gw, &used, Some(Ipv4Addr::new(10, 9, 0, 200))), Some(Ipv4Addr::new(10, 9, 0, 200)));
        // A preference outside the range or taken is ignored.
        assert_eq!(allocate(&net, Some(&range), gw, &used, Some(Ipv4Addr::new(10, 9, 0, 5))), Some(Ipv4Addr::new(10, 9, 0, 128)));
        assert_eq!(allocate(&net, None, gw, &used, Some(gw)), Some(Ipv4Addr::new(10, 9, 0, 2)));
    }
}

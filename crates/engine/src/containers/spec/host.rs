//! Facts about the host that change what spec dockerd would write: the
//! architecture, the kernel version, the capabilities the engine holds,
//! the CPUs, and a few paths under /proc and /sys.
//!
//! They are read once ([`HostInfo::detect`]) and passed in, so tests can
//! build a spec for any host without touching this one.

use std::path::Path;
use std::sync::OnceLock;

use super::caps::CAP_NAMES;

/// What the spec builder needs to know about the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInfo {
    /// Go's name of the architecture, as seccomp profiles' `arches`
    /// filters use it ("amd64", "arm64", "x86", ...).
    pub arch: &'static str,
    /// Kernel version and major revision ("6.1.2-foo" → (6, 1)); `None`
    /// if uname's release did not parse.
    pub kernel: Option<(u64, u64)>,
    /// Capability numbers the engine holds in its effective set, limited to
    /// the ones the kernel knows (`/proc/sys/kernel/cap_last_cap`). A
    /// privileged container gets exactly these, as with dockerd.
    pub effective_caps: u64,
    /// CPUs this process may run on (Go's `runtime.NumCPU`).
    pub num_cpus: usize,
    /// The online CPUs as a list ("0-3"), for cpuset checks.
    pub online_cpus: String,
    /// Whether the kernel supports seccomp filters.
    pub seccomp: bool,
    /// `/sys/devices/system/cpu/cpuN/thermal_throttle` paths that exist;
    /// dockerd masks them.
    pub thermal_throttle_paths: Vec<String>,
    /// Whether `net.ipv4.ping_group_range` exists.
    pub has_ping_group_range: bool,
    /// Whether `net.ipv4.ip_unprivileged_port_start` exists.
    pub has_unprivileged_port_start: bool,
}

impl HostInfo {
    /// Reads the facts of this host (cached after the first call).
    pub fn detect() -> &'static HostInfo {
        static HOST: OnceLock<HostInfo> = OnceLock::new();
        HOST.get_or_init(detect_uncached)
    }

    /// The seccomp architecture of the host (`SCMP_ARCH_X86_64`, ...), the
    /// key into a profile's `archMap`.
    pub fn seccomp_arch(&self) -> Option<&'static str> {
        Some(match self.arch {
            "x86" => "SCMP_ARCH_X86",
            "amd64" => "SCMP_ARCH_X86_64",
            "arm" => "SCMP_ARCH_ARM",
            "arm64" => "SCMP_ARCH_AARCH64",
            "loong64" => "SCMP_ARCH_LOONGARCH64",
            "mips64" => "SCMP_ARCH_MIPS64",
            "mips64n32" => "SCMP_ARCH_MIPS64N32",
            "mipsel64" => "SCMP_ARCH_MIPSEL64",
            "mips3l64n32" => "SCMP_ARCH_MIPSEL64N32",
            "mipsle" => "SCMP_ARCH_MIPSEL",
            "ppc" => "SCMP_ARCH_PPC",
            "ppc64" => "SCMP_ARCH_PPC64",
            "ppc64le" => "SCMP_ARCH_PPC64LE",
            "riscv64" => "SCMP_ARCH_RISCV64",
            "s390" => "SCMP_ARCH_S390",
            "s390x" => "SCMP_ARCH_S390X",
            _ => return None,
        })
    }
}

fn detect_uncached() -> HostInfo {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field =
        |name: &str| status.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(':')).map(|v| v.trim().to_owned()));
    let last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(CAP_NAMES.len() as u32 - 1)
        .min(CAP_NAMES.len() as u32 - 1);
    let known_mask = if last_cap >= 63 { u64::MAX } else { (1u64 << (last_cap + 1)) - 1 };
    // If the status file cannot be read, assume every known capability,
    // as dockerd does; the runtime then refuses what is really missing.
    let effective = field("CapEff").and_then(|v| u64::from_str_radix(&v, 16).ok()).unwrap_or(known_mask) & known_mask;
    let online_cpus = std::fs::read_to_string("/sys/devices/system/cpu/online").map(|s| s.trim().to_owned()).unwrap_or_default();
    let possible = std::fs::read_to_string("/sys/devices/system/cpu/possible").map(|s| s.trim().to_owned()).unwrap_or_default();
    let thermal_throttle_paths = parse_cpu_list(&possible)
        .unwrap_or_default()
        .into_iter()
        .map(|cpu| format!("/sys/devices/system/cpu/cpu{cpu}/thermal_throttle"))
        .filter(|p| Path::new(p).exists())
        .collect();
    HostInfo {
        arch: go_arch(),
        kernel: parse_kernel_release(&rustix::system::uname().release().to_string_lossy()),
        effective_caps: effective,
        num_cpus: affinity_cpus(),
        online_cpus,
        seccomp: field("Seccomp").is_some(),
        thermal_throttle_paths,
        has_ping_group_range: Path::new("/proc/sys/net/ipv4/ping_group_range").exists(),
        has_unprivileged_port_start: Path::new("/proc/sys/net/ipv4/ip_unprivileged_port_start").exists(),
    }
}

/// Go's GOARCH-derived libseccomp names, for the target we were built for.
fn go_arch() -> &'static str {
    if cfg!(target_arch = "x86_64") {
        "amd64"
    } else if cfg!(target_arch = "aarch64") {
        "arm64"
    } else if cfg!(target_arch = "x86") {
        "x86"
    } else if cfg!(target_arch = "arm") {
        "arm"
    } else if cfg!(target_arch = "riscv64") {
        "riscv64"
    } else if cfg!(target_arch = "s390x") {
        "s390x"
    } else if cfg!(all(target_arch = "powerpc64", target_endian = "little")) {
        "ppc64le"
    } else if cfg!(target_arch = "powerpc64") {
        "ppc64"
    } else if cfg!(target_arch = "loongarch64") {
        "loong64"
    } else {
        "unknown"
    }
}

/// "5.10.0-8-amd64" → (5, 10); like moby's `parseRelease` (`%d.%d`).
pub(crate) fn parse_kernel_release(release: &str) -> Option<(u64, u64)> {
    let mut parts = release.splitn(2, '.');
    let kernel = leading_number(parts.next()?)?;
    let major = leading_number(parts.next()?)?;
    Some((kernel, major))
}

fn leading_number(s: &str) -> Option<u64> {
    let digits: &str = &s[..s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len())];
    digits.parse().ok()
}

/// How many CPUs this process may run on.
fn affinity_cpus() -> usize {
    // SAFETY: cpu_set_t is plain data, zero is a valid (empty) set, and
    // sched_getaffinity writes at most size_of::<cpu_set_t>() bytes into it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
            let n = libc::CPU_COUNT(&set);
            if n > 0 {
                return n as usize;
            }
        }
    }
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Parses a kernel CPU list ("0-3,5,7-8"); `None` if malformed.
pub(crate) fn parse_cpu_list(list: &str) -> Option<Vec<u32>> {
    let mut out = Vec::new();
    if list.trim().is_empty() {
        return Some(out);
    }
    for part in list.trim().split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.parse().ok()?, b.parse().ok()?);
                if b < a || b - a > 65536 {
                    return None;
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().ok()?),
        }
    }
    Some(out)
}

#[cfg(test)]
impl HostInfo {
    /// An x86_64 host with kernel 6.1 and every capability, for tests.
    pub(crate) fn fixture() -> HostInfo {
        HostInfo {
            arch: "amd64",
            kernel: Some((6, 1)),
            effective_caps: (1u64 << CAP_NAMES.len()) - 1,
            num_cpus: 4,
            online_cpus: "0-3".into(),
            seccomp: true,
            thermal_throttle_paths: Vec::new(),
            has_ping_group_range: true,
            has_unprivileged_port_start: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_release_parses_like_moby() {
        assert_eq!(parse_kernel_release("3.12.25-gentoo"), Some((3, 12)));
        assert_eq!(parse_kernel_release("3.12-1-amd64"), Some((3, 12)));
        assert_eq!(parse_kernel_release("6.18.44-fc-v669"), Some((6, 18)));
        assert_eq!(parse_kernel_release("garbage"), None);
    }

    #[test]
    fn cpu_lists_parse() {
        assert_eq!(parse_cpu_list("0-2,5"), Some(vec![0, 1, 2, 5]));
        assert_eq!(parse_cpu_list(""), Some(vec![]));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("a"), None);
    }

    #[test]
    fn detect_reads_this_host() {
        let host = HostInfo::detect();
        assert!(host.num_cpus >= 1);
        if cfg!(target_arch = "x86_64") {
            assert_eq!(host.seccomp_arch(), Some("SCMP_ARCH_X86_64"));
        }
    }
}

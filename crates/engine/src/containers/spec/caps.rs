//! Linux capabilities: dockerd's default set and its CapAdd/CapDrop rules.

use super::error::SpecError;
use super::host::HostInfo;

/// Capability names by number (index = `CAP_*` value), up to Linux 5.9's
/// CAP_CHECKPOINT_RESTORE; the same table containerd's `cap.Known` has.
pub const CAP_NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// dockerd's default capabilities (moby `oci/caps.DefaultCapabilities`),
/// in its order.
pub const DEFAULT_CAPS: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

const ALL: &str = "ALL";

fn number(name: &str) -> Option<usize> {
    CAP_NAMES.iter().position(|n| *n == name)
}

/// Every capability the host lets us hand out, in numeric order.
pub fn all_caps(host: &HostInfo) -> Vec<String> {
    CAP_NAMES.iter().enumerate().filter(|(i, _)| host.effective_caps & (1 << i) != 0).map(|(_, n)| (*n).to_owned()).collect()
}

/// Upper-cases, adds the `CAP_` prefix and checks each name; "ALL" passes
/// through. dockerd's `NormalizeLegacyCapabilities`.
pub fn normalize(caps: &[String], host: &HostInfo) -> Result<Vec<String>, SpecError> {
    let mut out = Vec::with_capacity(caps.len());
    for c in caps {
        let mut c = c.to_uppercase();
        if c == ALL {
            out.push(c);
            continue;
        }
        if !c.starts_with("CAP_") {
            c = format!("CAP_{c}");
        }
        match number(&c) {
            None => return Err(SpecError::UnknownCapability(c)),
            Some(n) if host.effective_caps & (1 << n) == 0 => return Err(SpecError::UnavailableCapability(c)),
            Some(_) => out.push(c),
        }
    }
    Ok(out)
}

/// The container's capability set: dockerd's `TweakCapabilities` over the
/// default set.
pub fn tweak(adds: &[String], drops: &[String], privileged: bool, host: &HostInfo) -> Result<Vec<String>, SpecError> {
    if privileged {
        return Ok(all_caps(host));
    }
    let defaults = || DEFAULT_CAPS.iter().map(|c| (*c).to_owned()).collect::<Vec<_>>();
    if adds.is_empty() && drops.is_empty() {
        return Ok(defaults());
    }
    let drops = normalize(drops, host)?;
    let adds = normalize(adds, host)?;
    let mut caps: Vec<String> = if adds.iter().any(|c| c == ALL) {
        all_caps(host).into_iter().filter(|c| !drops.contains(c)).collect()
    } else if drops.iter().any(|c| c == ALL) {
        adds
    } else {
        let mut caps: Vec<String> = defaults().into_iter().filter(|c| !drops.contains(c)).collect();
        caps.extend(adds);
        caps
    };
    // dockerd may list a capability twice (added and already present);
    // the runtime does not mind, but one entry each is tidier.
    let mut seen = std::collections::HashSet::new();
    caps.retain(|c| seen.insert(c.clone()));
    Ok(caps)
}

/// The capability bitmap /proc/<pid>/status would show for `caps`.
pub fn bitmap(caps: &[String]) -> u64 {
    caps.iter().filter_map(|c| number(c)).fold(0, |m, n| m | (1 << n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_owned()).collect()
    }

    #[test]
    fn default_set_is_dockerds_fourteen() {
        let caps = tweak(&[], &[], false, &HostInfo::fixture()).unwrap();
        assert_eq!(caps, s(&DEFAULT_CAPS));
        assert_eq!(bitmap(&caps), 0xa80425fb);
    }

    #[test]
    fn drop_all_then_add_keeps_only_the_added() {
        let caps = tweak(&s(&["net_admin"]), &s(&["ALL"]), false, &HostInfo::fixture()).unwrap();
        assert_eq!(caps, s(&["CAP_NET_ADMIN"]));
    }

    #[test]
    fn add_all_minus_drops() {
        let caps = tweak(&s(&["all"]), &s(&["CAP_SYS_ADMIN"]), false, &HostInfo::fixture()).unwrap();
        assert_eq!(caps.len(), CAP_NAMES.len() - 1);
        assert!(!caps.contains(&"CAP_SYS_ADMIN".to_owned()));
    }

    #[test]
    fn add_and_drop_accept_any_case_and_prefix() {
        let caps = tweak(&s(&["Sys_Ptrace", "CAP_NET_ADMIN"]), &s(&["cap_chown", "MKNOD"]), false, &HostInfo::fixture()).unwrap();
        assert!(caps.contains(&"CAP_SYS_PTRACE".to_owned()) && caps.contains(&"CAP_NET_ADMIN".to_owned()));
        assert!(!caps.contains(&"CAP_CHOWN".to_owned()) && !caps.contains(&"CAP_MKNOD".to_owned()));
    }

    #[test]
    fn unknown_capability_is_reported_like_dockerd() {
        let err = tweak(&s(&["foo"]), &[], false, &HostInfo::fixture()).unwrap_err();
        assert_eq!(err.to_string(), "unknown capability: \"CAP_FOO\"");
    }

    #[test]
    fn capability_the_engine_lacks_is_refused() {
        let mut host = HostInfo::fixture();
        host.effective_caps &= !(1 << 24);
        let err = tweak(&s(&["SYS_RESOURCE"]), &[], false, &host).unwrap_err();
        assert!(err.to_string().starts_with("capability not supported"), "{err}");
    }

    #[test]
    fn privileged_gets_every_cap_the_host_has() {
        let mut host = HostInfo::fixture();
        host.effective_caps &= !(1 << 24);
        let caps = tweak(&[], &[], true, &host).unwrap();
        assert_eq!(caps.len(), CAP_NAMES.len() - 1);
        assert!(!caps.contains(&"CAP_SYS_RESOURCE".to_owned()));
    }
}

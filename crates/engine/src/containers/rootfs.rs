//! A container's root filesystem: an overlay of its image's snapshots with
//! the container's own writable layer on top, and the generated `/etc`
//! files (hosts, hostname, resolv.conf) bound into it.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Mounts the overlay at `target`: `lowers` top first, then `upper` and
/// `work`. A mount already there is kept (re-adoption after a restart).
pub fn mount_overlay(lowers: &[PathBuf], upper: &Path, work: &Path, target: &Path) -> Result<()> {
    for d in [upper, work, target] {
        std::fs::create_dir_all(d).map_err(|e| Error::io(format!("create {}", d.display()), e))?;
    }
    if is_mountpoint(target) {
        return Ok(());
    }
    let lowerdir = if lowers.is_empty() {
        // An image with no layers (from scratch): overlay needs one lower.
        let empty = upper.with_file_name("empty-lower");
        std::fs::create_dir_all(&empty).map_err(|e| Error::io("create empty lower dir", e))?;
        empty.display().to_string()
    } else {
        lowers.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(":")
    };
    let data = format!("lowerdir={lowerdir},upperdir={},workdir={}", upper.display(), work.display());
    let data = std::ffi::CString::new(data).map_err(|_| Error::internal("overlay options contain a NUL byte"))?;
    rustix::mount::mount("overlay", target, "overlay", rustix::mount::MountFlags::empty(), Some(data.as_c_str()))
        .map_err(|e| Error::internal(format!("mount overlay at {}: {e}", target.display())))
}

/// Unmounts the container's rootfs if mounted (lazily, so a process still
/// holding it cannot make removal fail).
pub fn unmount(target: &Path) -> Result<()> {
    if !is_mountpoint(target) {
        return Ok(());
    }
    rustix::mount::unmount(target, rustix::mount::UnmountFlags::DETACH)
        .map_err(|e| Error::internal(format!("unmount {}: {e}", target.display())))
}

/// Whether `path` is a mount point, from /proc/self/mountinfo.
pub fn is_mountpoint(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return false };
    let want = path.to_string_lossy();
    info.lines().any(|l| l.split(' ').nth(4).is_some_and(|mp| unescape(mp) == want))
}

fn unescape(s: &str) -> String {
    s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
}

/// The `/etc/hosts` dockerd writes: localhost, `--add-host` entries, and
/// the container's own name on its address (127.0.1.1 without one).
pub fn hosts_file(hostname: &str, own_ip: Option<std::net::Ipv4Addr>, extra: &[String]) -> String {
    let mut s = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
    );
    for e in extra {
        if let Some((host, ip)) = e.split_once(':') {
            s.push_str(&format!("{ip}\t{host}\n"));
        }
    }
    if !hostname.is_empty() {
        match own_ip {
            Some(ip) => s.push_str(&format!("{ip}\t{hostname}\n")),
            None => s.push_str(&format!("127.0.1.1\t{hostname}\n")),
        }
    }
    s
}

/// The host's resolv.conf with loopback name servers dropped (they do not
/// answer inside the container's network namespace), as dockerd does; when
/// none remain, Google's public servers.
pub fn resolv_conf(host: &str, dns: &[String], search: &[String]) -> String {
    let mut out = String::new();
    let mut servers = 0;
    for line in host.lines() {
        let t = line.trim();
        if let Some(ns) = t.strip_prefix("nameserver") {
            let ns = ns.trim();
            if !dns.is_empty() || ns.starts_with("127.") || ns == "::1" {
                continue;
            }
            servers += 1;
        }
        if t.starts_with("search") && !search.is_empty() {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    for d in dns {
        out.push_str(&format!("nameserver {d}\n"));
        servers += 1;
    }
    if !search.is_empty() {
        out.push_str(&format!("search {}\n", search.join(" ")));
    }
    if servers == 0 {
        out.push_str("nameserver 8.8.8.8\nnameserver 8.8.4.4\n");
    }
    out
}

/// The resolv.conf of a container on a user-defined network: the embedded
/// DNS server, the host's search domains, `ndots:0` as dockerd writes.
pub fn resolv_conf_embedded(host: &str, search: &[String], options: &[String]) -> String {
    let mut out = String::from("nameserver 127.0.0.11\n");
    if !search.is_empty() {
        out.push_str(&format!("search {}\n", search.join(" ")));
    } else if let Some(line) = host.lines().map(str::trim).find(|l| l.starts_with("search")) {
        out.push_str(line);
        out.push('\n');
    }
    let mut opts: Vec<String> = vec!["ndots:0".into()];
    opts.extend(options.iter().cloned());
    out.push_str(&format!("options {}\n", opts.join(" ")));
    out
}

/// A bind mount of a generated file into the container.
pub fn bind_mount(source: &Path, dest: &str, readonly: bool) -> serde_json::Value {
    let mut options = vec!["rbind", "rprivate"];
    if readonly {
        options.push("ro");
    }
    serde_json::json!({"destination": dest, "type": "bind", "source": source, "options": options})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_nameservers_are_dropped_with_fallback() {
        let out = resolv_conf("nameserver 127.0.0.53\nsearch lan\n", &[], &[]);
        assert!(!out.contains("127.0.0.53"));
        assert!(out.contains("search lan"));
        assert!(out.contains("nameserver 8.8.8.8"));
    }

    #[test]
    fn explicit_dns_replaces_host_servers() {
        let out = resolv_conf("nameserver 10.0.0.1\n", &["1.1.1.1".into()], &[]);
        assert!(!out.contains("10.0.0.1"));
        assert!(out.contains("nameserver 1.1.1.1"));
    }

    #[test]
    fn hosts_file_names_the_container() {
        let h = hosts_file("abc123", None, &["db:10.0.0.2".into()]);
        assert!(h.contains("127.0.0.1\tlocalhost"));
        assert!(h.contains("10.0.0.2\tdb"));
        assert!(h.ends_with("127.0.1.1\tabc123\n"));
    }
}

//! The kernel command line: the `berth.*` parameters the host passes.

/// What berth-init reads from `/proc/cmdline`. Defaults match the host's
/// contract (root on the first virtio disk, data on the second), so a boot
/// loader that passes only `root=/dev/vda` (vfkit) works as well.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmdline {
    /// Read-only root device (`berth.root=`, else `root=`).
    pub root: String,
    /// Root filesystem type (`berth.rootfstype=`, else `rootfstype=`).
    pub root_fstype: String,
    /// Persistent data disk (`berth.data=`).
    pub data: String,
    /// `berth.debug`: verbose console.
    pub debug: bool,
    /// `berth.noengine`: do not start berthd (for debugging the image).
    pub no_engine: bool,
    /// `berth.probe`: the host's accelerator probe; print the banner and
    /// power off at once.
    pub probe: bool,
}

impl Default for Cmdline {
    fn default() -> Self {
        Cmdline {
            root: "/dev/vda".into(),
            root_fstype: "ext4".into(),
            data: "/dev/vdb".into(),
            debug: false,
            no_engine: false,
            probe: false,
        }
    }
}

/// Splits a kernel command line into words, honouring double quotes as the
/// kernel does (`key="a b"`).
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

/// Parses `/proc/cmdline`. Unknown words are ignored; `berth.*` wins over the
/// generic `root=`/`rootfstype=`.
pub fn parse(line: &str) -> Cmdline {
    let mut c = Cmdline::default();
    let mut berth_root = None;
    let mut berth_fstype = None;
    for w in words(line) {
        let (k, v) = match w.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (w.as_str(), None),
        };
        match (k, v) {
            ("berth.root", Some(v)) if !v.is_empty() => berth_root = Some(v.to_string()),
            ("root", Some(v)) if !v.is_empty() => c.root = v.to_string(),
            ("berth.rootfstype", Some(v)) if !v.is_empty() => berth_fstype = Some(v.to_string()),
            ("rootfstype", Some(v)) if !v.is_empty() => c.root_fstype = v.to_string(),
            ("berth.data", Some(v)) if !v.is_empty() => c.data = v.to_string(),
            ("berth.debug", v) => c.debug = v.is_none_or(|v| v != "0"),
            ("berth.noengine", v) => c.no_engine = v.is_none_or(|v| v != "0"),
            ("berth.probe", v) => c.probe = v.is_none_or(|v| v != "0"),
            _ => {}
        }
    }
    if let Some(r) = berth_root {
        c.root = r;
    }
    if let Some(f) = berth_fstype {
        c.root_fstype = f;
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_cmdline_sets_root_and_data() {
        let c = parse("console=ttyS0 quiet berth.root=/dev/vda berth.data=/dev/vdb\n");
        assert_eq!(c.root, "/dev/vda");
        assert_eq!(c.data, "/dev/vdb");
        assert_eq!(c.root_fstype, "ext4");
        assert!(!c.debug);
    }

    #[test]
    fn berth_root_wins_over_generic_root() {
        let c = parse("root=/dev/sda1 berth.root=/dev/vdc rootfstype=squashfs");
        assert_eq!(c.root, "/dev/vdc");
        assert_eq!(c.root_fstype, "squashfs");
    }

    #[test]
    fn generic_root_is_used_without_berth_root() {
        let c = parse("console=hvc0 root=/dev/vda ro quiet");
        assert_eq!(c.root, "/dev/vda");
        assert_eq!(c.data, "/dev/vdb");
    }

    #[test]
    fn quoted_values_and_flags_parse() {
        let c = parse("foo=\"a b\" berth.debug berth.noengine=0 berth.data=\"/dev/vdz\"");
        assert!(c.debug);
        assert!(!c.no_engine);
        assert_eq!(c.data, "/dev/vdz");
    }

    #[test]
    fn accelerator_probe_is_recognised() {
        assert!(parse("console=ttyS0 panic=-1 berth.probe=1").probe);
        assert!(!parse("console=ttyS0").probe);
    }

    #[test]
    fn empty_values_keep_defaults() {
        let c = parse("berth.root= berth.data=");
        assert_eq!(c, Cmdline::default());
    }
}

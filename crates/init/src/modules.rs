//! Kernel modules: `modules.dep` resolution and loading with finit_module(2),
//! so the guest needs no kmod at boot (kmod is in the root only for the
//! kernel's own autoloading through /sbin/modprobe).

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};

/// A module's name as the kernel knows it: file name without `.ko*`, `-`
/// folded to `_`.
pub fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let stem = match base.find(".ko") {
        Some(i) => &base[..i],
        None => base,
    };
    stem.replace('-', "_")
}

/// Parsed `modules.dep` (+ `modules.builtin`).
#[derive(Debug, Default)]
pub struct DepTable {
    /// name → (relative path, dependencies' relative paths, as listed).
    modules: HashMap<String, (String, Vec<String>)>,
    builtin: HashSet<String>,
}

impl DepTable {
    pub fn parse(dep: &str, builtin: &str) -> DepTable {
        let mut modules = HashMap::new();
        for line in dep.lines() {
            let Some((m, deps)) = line.split_once(':') else { continue };
            let m = m.trim();
            if m.is_empty() {
                continue;
            }
            let deps = deps.split_whitespace().map(str::to_string).collect();
            modules.insert(module_name(m), (m.to_string(), deps));
        }
        let builtin = builtin.lines().map(str::trim).filter(|l| !l.is_empty()).map(module_name).collect();
        DepTable { modules, builtin }
    }

    /// Relative paths to load, dependencies first, the module last. `Ok(vec![])`
    /// for a built-in module; an error names a module that is neither.
    pub fn load_order(&self, name: &str) -> Result<Vec<String>, String> {
        let name = module_name(name);
        if self.builtin.contains(&name) {
            return Ok(Vec::new());
        }
        let (path, deps) = self.modules.get(&name).ok_or_else(|| format!("module {name} not found in modules.dep"))?;
        // modules.dep lists dependencies transitively, each before the ones it
        // needs: load them in reverse.
        let mut order: Vec<String> = deps.iter().rev().cloned().collect();
        order.push(path.clone());
        let mut seen = HashSet::new();
        order.retain(|p| seen.insert(p.clone()));
        Ok(order)
    }
}

/// Loads modules from `/lib/modules/<release>`.
pub struct Loader {
    dir: PathBuf,
    table: DepTable,
    loaded: HashSet<String>,
}

impl Loader {
    pub fn open(dir: &Path) -> io::Result<Loader> {
        let dep = std::fs::read_to_string(dir.join("modules.dep"))?;
        let builtin = std::fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default();
        Ok(Loader { dir: dir.to_path_buf(), table: DepTable::parse(&dep, &builtin), loaded: HashSet::new() })
    }

    /// `/lib/modules/<uname -r>`.
    pub fn for_running_kernel() -> io::Result<Loader> {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")?;
        Loader::open(&Path::new("/lib/modules").join(release.trim()))
    }

    /// Loads one module and what it needs. Already-loaded modules are fine.
    pub fn load(&mut self, name: &str) -> Result<(), String> {
        let order = self.table.load_order(name)?;
        for rel in order {
            let n = module_name(&rel);
            if self.loaded.contains(&n) {
                continue;
            }
            if Path::new("/sys/module").join(&n).join("initstate").exists() {
                self.loaded.insert(n);
                continue;
            }
            match crate::sys::finit_module(&self.dir.join(&rel)) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => return Err(format!("load {n} ({rel}): {e}")),
            }
            self.loaded.insert(n);
        }
        Ok(())
    }

    /// Loads each module, logging failures; returns how many failed.
    pub fn load_all(&mut self, names: &[&str]) -> usize {
        let mut failed = 0;
        for n in names {
            if let Err(e) = self.load(n) {
                crate::log!("module: {e}");
                failed += 1;
            }
        }
        failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko
kernel/fs/mbcache.ko:
kernel/fs/jbd2/jbd2.ko:
kernel/lib/crc16.ko:
kernel/arch/x86/crypto/crc32c-intel.ko:
kernel/net/netfilter/nft_masq.ko: kernel/net/netfilter/nf_nat.ko kernel/net/netfilter/nf_conntrack.ko kernel/net/netfilter/nf_tables.ko kernel/net/netfilter/nfnetlink.ko kernel/lib/libcrc32c.ko
";

    #[test]
    fn module_name_strips_dir_suffix_and_dashes() {
        assert_eq!(module_name("kernel/arch/x86/crypto/crc32c-intel.ko"), "crc32c_intel");
        assert_eq!(module_name("kernel/fs/ext4/ext4.ko.xz"), "ext4");
        assert_eq!(module_name("9pnet_virtio"), "9pnet_virtio");
    }

    #[test]
    fn dependencies_load_before_the_module_in_reverse_listing_order() {
        let t = DepTable::parse(DEP, "");
        assert_eq!(
            t.load_order("ext4").unwrap(),
            vec!["kernel/fs/jbd2/jbd2.ko", "kernel/fs/mbcache.ko", "kernel/lib/crc16.ko", "kernel/fs/ext4/ext4.ko"]
        );
        let masq = t.load_order("nft_masq").unwrap();
        assert_eq!(masq.first().unwrap(), "kernel/lib/libcrc32c.ko");
        assert_eq!(masq.last().unwrap(), "kernel/net/netfilter/nft_masq.ko");
    }

    #[test]
    fn dashed_names_resolve() {
        let t = DepTable::parse(DEP, "");
        assert_eq!(t.load_order("crc32c-intel").unwrap(), vec!["kernel/arch/x86/crypto/crc32c-intel.ko"]);
        assert_eq!(t.load_order("crc32c_intel").unwrap(), vec!["kernel/arch/x86/crypto/crc32c-intel.ko"]);
    }

    #[test]
    fn builtin_modules_need_no_loading() {
        let t = DepTable::parse(DEP, "kernel/drivers/virtio/virtio.ko\nkernel/fs/ext4/ext4.ko\n");
        assert_eq!(t.load_order("virtio").unwrap(), Vec::<String>::new());
        assert_eq!(t.load_order("ext4").unwrap(), Vec::<String>::new());
    }

    #[test]
    fn unknown_module_is_an_error() {
        let t = DepTable::parse(DEP, "");
        assert!(t.load_order("nosuch").unwrap_err().contains("nosuch"));
    }
}

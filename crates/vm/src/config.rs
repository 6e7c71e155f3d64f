//! The VM's user-facing configuration and its validation.
//!
//! Owns [`VmConfig`] and [`Accel`]. It does not decide which accelerator
//! actually works on this host (that is [`crate::qemu::probe_accel`]) and does
//! not turn the config into a command line (the backends do).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Smallest memory the guest kernel plus engine can run in.
pub const MIN_MEMORY_MIB: u64 = 512;
/// Smallest data disk that holds a few images.
pub const MIN_DISK_GIB: u64 = 4;

/// Hardware acceleration for the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Linux KVM.
    Kvm,
    /// macOS Hypervisor.framework.
    Hvf,
    /// Windows Hypervisor Platform.
    Whpx,
    /// QEMU's software emulation: slow but always works.
    Tcg,
    /// Probe the host's native accelerator, falling back to TCG.
    Auto,
}

impl Accel {
    /// The name QEMU uses for `-accel`/`accel=`; `None` for [`Accel::Auto`],
    /// which must be resolved first.
    pub fn qemu_name(self) -> Option<&'static str> {
        match self {
            Accel::Kvm => Some("kvm"),
            Accel::Hvf => Some("hvf"),
            Accel::Whpx => Some("whpx"),
            Accel::Tcg => Some("tcg"),
            Accel::Auto => None,
        }
    }

    /// Whether the accelerator runs guest code on the host CPU, which is what
    /// makes `-cpu host` meaningful.
    pub fn is_hardware(self) -> bool {
        matches!(self, Accel::Kvm | Accel::Hvf | Accel::Whpx)
    }
}

/// An invalid [`VmConfig`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// `cpus` is 0.
    #[error("validate vm config: cpus must be at least 1")]
    NoCpus,
    /// More vCPUs than the host has.
    #[error("validate vm config: cpus is {requested} but this host has only {host}")]
    TooManyCpus { requested: u32, host: u32 },
    /// Memory below [`MIN_MEMORY_MIB`].
    #[error("validate vm config: memory_mib is {requested} but the vm needs at least {min} MiB")]
    TooLittleMemory { requested: u64, min: u64 },
    /// Disk below [`MIN_DISK_GIB`].
    #[error(
        "validate vm config: disk_gib is {requested} but the data disk needs at least {min} GiB"
    )]
    TooSmallDisk { requested: u64, min: u64 },
    /// A share that is not an absolute path; shares appear at the same path in
    /// the guest, so a relative one has no meaning there.
    #[error("validate vm config: share {0:?} must be an absolute path")]
    RelativeShare(PathBuf),
    /// Extra kernel arguments that would break the single `-append` argument.
    #[error("validate vm config: kernel_cmdline_extra must not contain newlines or quotes")]
    BadKernelCmdline,
}

/// What the user asks of the VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmConfig {
    /// Virtual CPUs; at least 1 and at most the host's CPUs.
    pub cpus: u32,
    /// Guest memory in MiB; at least [`MIN_MEMORY_MIB`].
    pub memory_mib: u64,
    /// Data disk size in GiB; at least [`MIN_DISK_GIB`].
    pub disk_gib: u64,
    /// Requested accelerator.
    pub accel: Accel,
    /// Host folders shared into the guest at the same path.
    pub shares: Vec<PathBuf>,
    /// Appended to the kernel command line the backend builds.
    #[serde(default)]
    pub kernel_cmdline_extra: String,
}

impl VmConfig {
    /// Defaults: 2 vCPUs (fewer on a 1-CPU host), 2 GiB memory, 64 GiB disk,
    /// automatic acceleration, sharing the user's home (when known) and `/tmp`.
    pub fn with_defaults(user_home: Option<PathBuf>, host_cpus: u32) -> Self {
        let mut shares: Vec<PathBuf> = user_home.into_iter().collect();
        shares.push(PathBuf::from("/tmp"));
        Self {
            cpus: host_cpus.clamp(1, 2),
            memory_mib: 2048,
            disk_gib: 64,
            accel: Accel::Auto,
            shares,
            kernel_cmdline_extra: String::new(),
        }
    }

    /// [`VmConfig::with_defaults`] for this process's `HOME` and CPU count.
    pub fn host_default() -> Self {
        Self::with_defaults(std::env::var_os("HOME").map(PathBuf::from), host_cpus())
    }

    /// Checks the config against a host with `host_cpus` CPUs.
    pub fn validate(&self, host_cpus: u32) -> Result<(), ConfigError> {
        if self.cpus == 0 {
            return Err(ConfigError::NoCpus);
        }
        if self.cpus > host_cpus {
            return Err(ConfigError::TooManyCpus {
                requested: self.cpus,
                host: host_cpus,
            });
        }
        if self.memory_mib < MIN_MEMORY_MIB {
            return Err(ConfigError::TooLittleMemory {
                requested: self.memory_mib,
                min: MIN_MEMORY_MIB,
            });
        }
        if self.disk_gib < MIN_DISK_GIB {
            return Err(ConfigError::TooSmallDisk {
                requested: self.disk_gib,
                min: MIN_DISK_GIB,
            });
        }
        if let Some(bad) = self.shares.iter().find(|p| p.is_relative()) {
            return Err(ConfigError::RelativeShare(bad.clone()));
        }
        if self.kernel_cmdline_extra.contains(['\n', '\r', '"']) {
            return Err(ConfigError::BadKernelCmdline);
        }
        Ok(())
    }
}

/// CPUs available to this process (1 when unknown).
pub fn host_cpus() -> u32 {
    std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> VmConfig {
        VmConfig::with_defaults(Some("/home/u".into()), 4)
    }

    #[test]
    fn defaults_are_valid_and_share_home_and_tmp() {
        let cfg = valid();
        assert_eq!(cfg.validate(4), Ok(()));
        assert_eq!(
            cfg.shares,
            vec![PathBuf::from("/home/u"), PathBuf::from("/tmp")]
        );
        assert_eq!(cfg.accel, Accel::Auto);
    }

    #[test]
    fn defaults_fit_a_one_cpu_host() {
        let cfg = VmConfig::with_defaults(None, 1);
        assert_eq!(cfg.validate(1), Ok(()));
    }

    #[test]
    fn zero_cpus_is_rejected() {
        let cfg = VmConfig { cpus: 0, ..valid() };
        assert_eq!(cfg.validate(4), Err(ConfigError::NoCpus));
    }

    #[test]
    fn more_cpus_than_host_is_rejected_with_both_numbers() {
        let cfg = VmConfig { cpus: 8, ..valid() };
        let err = cfg.validate(2).unwrap_err();
        assert_eq!(
            err,
            ConfigError::TooManyCpus {
                requested: 8,
                host: 2
            }
        );
        assert!(err
            .to_string()
            .contains("cpus is 8 but this host has only 2"));
    }

    #[test]
    fn memory_below_512_mib_is_rejected() {
        let cfg = VmConfig {
            memory_mib: 511,
            ..valid()
        };
        assert!(matches!(
            cfg.validate(4),
            Err(ConfigError::TooLittleMemory { requested: 511, .. })
        ));
    }

    #[test]
    fn disk_below_4_gib_is_rejected() {
        let cfg = VmConfig {
            disk_gib: 3,
            ..valid()
        };
        assert!(matches!(
            cfg.validate(4),
            Err(ConfigError::TooSmallDisk { requested: 3, .. })
        ));
    }

    #[test]
    fn relative_share_is_rejected() {
        let cfg = VmConfig {
            shares: vec!["src".into()],
            ..valid()
        };
        assert_eq!(
            cfg.validate(4),
            Err(ConfigError::RelativeShare("src".into()))
        );
    }

    #[test]
    fn quote_in_kernel_cmdline_is_rejected() {
        let cfg = VmConfig {
            kernel_cmdline_extra: "a=\"b\"".into(),
            ..valid()
        };
        assert_eq!(cfg.validate(4), Err(ConfigError::BadKernelCmdline));
    }

    #[test]
    fn accel_serializes_lowercase() {
        assert_eq!(serde_json::to_string(&Accel::Whpx).unwrap(), "\"whpx\"");
    }
}

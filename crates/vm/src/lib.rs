//! Host-side VM manager for Berth.
//!
//! Owns everything needed to describe, boot, watch and stop the small Linux VM
//! that runs `berthd`: the paths under `$BERTH_HOME` ([`paths`]), the VM's
//! configuration ([`config`]), the backend contract ([`backend`]) and the
//! pure, testable parts of the QEMU ([`qemu`], [`qmp`]) and vfkit ([`vfkit`])
//! backends. It does not own the guest image (built by `vm-image/`), the
//! engine, or any CLI/UI presentation.

pub mod backend;
pub mod config;
pub mod paths;
pub mod qemu;
pub mod qmp;
pub mod vfkit;

pub use backend::{Backend, BackendError, RunningVm, StopReport, StopStep, VmStatus};
pub use config::{Accel, ConfigError, VmConfig};
pub use paths::{BerthHome, PathsError};

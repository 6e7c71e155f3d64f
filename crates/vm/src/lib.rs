//! Host-side VM manager for Berth.
//!
//! Owns everything needed to describe, boot, watch and stop the small Linux VM
//! that runs `berthd`: the paths under `$BERTH_HOME` ([`paths`]), the VM's
//! configuration ([`config`]), the guest image checks ([`image`]) and inputs
//! ([`guest`]), the backend contract ([`backend`]), the QEMU backend
//! ([`qemu`] command lines, [`qmp`], [`qemu_backend`]), the pure parts of the
//! vfkit backend ([`vfkit`]), and the host-side supervisor ([`supervisor`])
//! that relays the engine socket and published ports ([`forward`],
//! [`engine_client`]) and records state ([`state`]); plus the `berth` docker
//! context ([`context`]). It does not own the guest image (built by
//! `vm-image/`), the engine, or any CLI/UI presentation.

pub mod backend;
pub mod config;
pub mod context;
pub mod engine_client;
pub mod forward;
pub mod guest;
pub mod image;
pub mod paths;
pub mod qemu;
pub mod qemu_backend;
pub mod qmp;
pub mod state;
pub mod supervisor;
pub mod vfkit;

pub use backend::{Backend, BackendError, RunningVm, StopReport, StopStep, VmStatus};
pub use config::{Accel, ConfigError, VmConfig};
pub use paths::{BerthHome, PathsError};

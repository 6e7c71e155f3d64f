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
//!
//! Platforms: everything builds on Linux and macOS. On Windows only the
//! platform-neutral modules build so far (paths, config, image and guest
//! checks, the backend contract, QEMU command lines incl. WHPX), checked with
//! `cargo check --target x86_64-pc-windows-gnu -p berth-vm` (not in CI: the
//! target must be fetched). The supervisor, QMP transport, relay and state
//! lock use unix sockets, signals and flock; their Windows counterparts
//! (named pipes, QMP over TCP, a WSL2 backend) are the next step.

pub mod backend;
pub mod config;
#[cfg(unix)]
pub mod context;
#[cfg(unix)]
pub mod engine_client;
#[cfg(unix)]
pub mod forward;
pub mod guest;
pub mod image;
pub mod paths;
pub mod qemu;
#[cfg(unix)]
pub mod qemu_backend;
#[cfg(unix)]
pub mod qmp;
#[cfg(unix)]
pub mod state;
#[cfg(unix)]
pub mod supervisor;
#[cfg(unix)]
pub mod vfkit;

pub use backend::{Backend, BackendError, RunningVm, StopReport, StopStep, VmStatus};
pub use config::{Accel, ConfigError, VmConfig};
pub use paths::{BerthHome, PathsError};

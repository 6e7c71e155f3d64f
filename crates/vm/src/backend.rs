//! The contract every VM backend (QEMU, vfkit, later WSL2) fulfils, and the
//! backend-independent graceful-stop escalation.
//!
//! Owns [`Backend`], the values it returns, and [`escalate_stop`]. It does not
//! own how a backend talks to its hypervisor (see [`crate::qemu`],
//! [`crate::qmp`], [`crate::vfkit`]) nor where files live ([`crate::paths`]).

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, VmConfig};
use crate::paths::BerthHome;

/// A boxed error from a hypervisor-specific layer.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A backend operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The config was rejected before anything was started.
    #[error("start vm")]
    InvalidConfig(#[from] ConfigError),
    /// The hypervisor could not be started or did not come up.
    #[error("start vm")]
    Start(#[source] BoxError),
    /// A VM is already running for this `$BERTH_HOME`.
    #[error("start vm: already running with pid {pid}")]
    AlreadyRunning { pid: u32 },
    /// Stopping failed even after escalation.
    #[error("stop vm")]
    Stop(#[source] BoxError),
    /// The VM state could not be determined.
    #[error("read vm status")]
    Status(#[source] BoxError),
}

/// A VM the backend has started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningVm {
    /// Hypervisor process id.
    pub pid: u32,
    /// When the hypervisor was started.
    pub since: SystemTime,
    /// Where the guest console is being written.
    pub console_log: PathBuf,
    /// The control socket (QMP or vfkit REST).
    pub control_socket: PathBuf,
}

/// What [`Backend::status`] observed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum VmStatus {
    /// The hypervisor process is alive.
    Running { pid: u32, since: SystemTime },
    /// No VM, and the last one stopped cleanly (or there never was one).
    Stopped,
    /// The recorded VM is gone without a clean stop.
    Crashed { reason: String },
}

/// One step of a stop, in the order taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopStep {
    /// The guest was asked to power down (ACPI powerdown / vfkit `Stop`).
    PowerdownRequested,
    /// The request itself failed; we went straight to killing.
    PowerdownFailed { reason: String },
    /// The hypervisor exited within the grace period.
    Exited,
    /// The grace period ran out.
    TimedOut,
    /// The hypervisor was killed (QMP `quit`, vfkit `HardStop` or a signal).
    Killed,
}

/// How a stop went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopReport {
    /// Steps taken, in order.
    pub steps: Vec<StopStep>,
    /// Whether the VM had to be killed rather than shut down.
    pub forced: bool,
    /// Time from the first request to exit.
    pub elapsed: Duration,
}

/// A hypervisor backend.
///
/// Contract, for every implementation:
///
/// - `start` validates the config, boots the VM described by `config` using
///   the files named by `home`, and returns once the hypervisor process is
///   running and its control socket answers. It does not wait for the engine
///   inside the guest. If a VM is already running for `home` it returns
///   [`BackendError::AlreadyRunning`] and changes nothing. On error, nothing
///   it started is left running.
/// - `stop` is idempotent: stopping a stopped VM returns an empty report. It
///   first asks the guest to power down, waits at most `grace`, then kills
///   the hypervisor, logging each step (see [`escalate_stop`]). It returns
///   only once the hypervisor process is gone.
/// - `status` never changes state; it reports what it observes, and reports
///   [`VmStatus::Crashed`] when a VM recorded as running has disappeared.
///
/// Backends hold no state that outlives the process except under `home`, so
/// a new process (the CLI after the app, say) can stop or query a VM it did
/// not start.
pub trait Backend {
    /// Boots the VM; see the trait docs.
    fn start(
        &self,
        config: &VmConfig,
        home: &BerthHome,
    ) -> impl Future<Output = Result<RunningVm, BackendError>> + Send;

    /// Stops the VM, escalating after `grace`; see the trait docs.
    fn stop(
        &self,
        grace: Duration,
    ) -> impl Future<Output = Result<StopReport, BackendError>> + Send;

    /// Reports the VM state; see the trait docs.
    fn status(&self) -> impl Future<Output = Result<VmStatus, BackendError>> + Send;
}

/// The hypervisor-specific actions [`escalate_stop`] sequences.
pub trait StopControl {
    /// Asks the guest to shut down (QMP `system_powerdown`, vfkit `Stop`).
    fn request_powerdown(&mut self) -> impl Future<Output = Result<(), BoxError>> + Send;
    /// Resolves when the hypervisor process has exited.
    fn wait_exit(&mut self) -> impl Future<Output = ()> + Send;
    /// Ends the hypervisor now and resolves once it is gone.
    fn kill(&mut self) -> impl Future<Output = Result<(), BoxError>> + Send;
}

/// Powerdown → wait up to `grace` → kill, logging each step at the level an
/// operator needs: info for the normal path, warn when escalating.
pub async fn escalate_stop<C: StopControl + Send>(
    ctl: &mut C,
    grace: Duration,
) -> Result<StopReport, BackendError> {
    let started = Instant::now();
    let mut steps = Vec::new();
    match ctl.request_powerdown().await {
        Ok(()) => {
            tracing::info!(
                vm = "berth",
                grace_ms = grace.as_millis() as u64,
                "requested guest powerdown"
            );
            steps.push(StopStep::PowerdownRequested);
            if tokio::time::timeout(grace, ctl.wait_exit()).await.is_ok() {
                tracing::info!(vm = "berth", "vm exited after powerdown");
                steps.push(StopStep::Exited);
                return Ok(StopReport {
                    steps,
                    forced: false,
                    elapsed: started.elapsed(),
                });
            }
            tracing::warn!(
                vm = "berth",
                grace_ms = grace.as_millis() as u64,
                "vm did not power down in time, killing"
            );
            steps.push(StopStep::TimedOut);
        }
        Err(e) => {
            tracing::warn!(vm = "berth", error = %e, "powerdown request failed, killing");
            steps.push(StopStep::PowerdownFailed {
                reason: e.to_string(),
            });
        }
    }
    ctl.kill().await.map_err(BackendError::Stop)?;
    tracing::warn!(vm = "berth", "vm killed");
    steps.push(StopStep::Killed);
    Ok(StopReport {
        steps,
        forced: true,
        elapsed: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake hypervisor whose guest either honours powerdown or ignores it.
    struct FakeControl {
        honours_powerdown: bool,
        powerdown_fails: bool,
        powered_down: bool,
        killed: bool,
    }

    impl FakeControl {
        fn new(honours_powerdown: bool, powerdown_fails: bool) -> Self {
            Self {
                honours_powerdown,
                powerdown_fails,
                powered_down: false,
                killed: false,
            }
        }
    }

    impl StopControl for FakeControl {
        async fn request_powerdown(&mut self) -> Result<(), BoxError> {
            if self.powerdown_fails {
                return Err("qmp socket gone".into());
            }
            self.powered_down = true;
            Ok(())
        }
        async fn wait_exit(&mut self) {
            if self.powered_down && self.honours_powerdown {
                return;
            }
            std::future::pending::<()>().await
        }
        async fn kill(&mut self) -> Result<(), BoxError> {
            self.killed = true;
            Ok(())
        }
    }

    #[tokio::test]
    async fn cooperative_guest_stops_without_kill() {
        let mut ctl = FakeControl::new(true, false);
        let report = escalate_stop(&mut ctl, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(
            report.steps,
            vec![StopStep::PowerdownRequested, StopStep::Exited]
        );
        assert!(!report.forced);
        assert!(!ctl.killed);
    }

    #[tokio::test]
    async fn guest_ignoring_powerdown_is_killed_after_grace() {
        let mut ctl = FakeControl::new(false, false);
        let report = escalate_stop(&mut ctl, Duration::from_millis(20))
            .await
            .unwrap();
        assert_eq!(
            report.steps,
            vec![
                StopStep::PowerdownRequested,
                StopStep::TimedOut,
                StopStep::Killed
            ]
        );
        assert!(report.forced);
        assert!(ctl.killed);
    }

    #[tokio::test]
    async fn failed_powerdown_request_goes_straight_to_kill() {
        let mut ctl = FakeControl::new(true, true);
        let report = escalate_stop(&mut ctl, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(
            report.steps,
            vec![
                StopStep::PowerdownFailed {
                    reason: "qmp socket gone".into()
                },
                StopStep::Killed
            ]
        );
        assert!(ctl.killed);
    }
}

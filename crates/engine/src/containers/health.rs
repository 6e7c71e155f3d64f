//! Health checks: the image's `HEALTHCHECK` or `docker run --health-*`,
//! probed the way dockerd probes them (moby `daemon/health.go`, read for
//! the facts).
//!
//! Owns `State.Health` (`Status`, `FailingStreak`, the last five results)
//! and the per-container monitor task. Does not own exec itself: a probe is
//! an exec through the container's shim (`{"op":"exec"}`), without a
//! registered exec instance, as dockerd's probes are invisible to
//! `docker exec` inspection too.
//!
//! One monitor runs per running container that has a check. It is tied to
//! one run of the container: it captures the container's exit counter when
//! the container starts and ends as soon as that counter moves (the
//! container exited, was stopped or removed), so a restart never leaves two
//! monitors, and a result from an old run is never recorded on a new one.
//! While the container is paused no probe runs.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tokio::io::AsyncReadExt;

use super::{shim, Containers, Handle};

/// Longest probe output kept; more is cut and marked with "...".
const MAX_OUTPUT: usize = 4096;
/// Results kept in `State.Health.Log`.
const MAX_LOG: usize = 5;
const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_START_INTERVAL: Duration = Duration::from_secs(5);
const DEFAULT_RETRIES: u64 = 3;
/// How long starting the probe process may take; not counted in its timeout.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a killed probe gets to go away before the result is recorded.
const KILL_GRACE: Duration = Duration::from_secs(10);

pub const STARTING: &str = "starting";
pub const HEALTHY: &str = "healthy";
pub const UNHEALTHY: &str = "unhealthy";

/// A container's health check, with dockerd's defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Check {
    /// The probe's command line (`CMD-SHELL` already wrapped in the shell).
    pub cmd: Vec<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub start_period: Duration,
    pub start_interval: Duration,
    pub retries: u64,
}

impl Check {
    /// The check of an effective container config, or `None` when it has
    /// none (no `Healthcheck`, an empty test, `["NONE"]`, an unknown kind).
    pub fn from_config(config: &Value) -> Option<Check> {
        let hc = config.get("Healthcheck").filter(|v| v.is_object())?;
        let test: Vec<String> = hc.get("Test").and_then(|t| serde_json::from_value(t.clone()).ok()).unwrap_or_default();
        let (kind, rest) = test.split_first()?;
        let cmd = match kind.as_str() {
            "CMD" => rest.to_vec(),
            "CMD-SHELL" => {
                let mut shell: Vec<String> = config.get("Shell").and_then(|s| serde_json::from_value(s.clone()).ok()).unwrap_or_default();
                if shell.is_empty() {
                    shell = vec!["/bin/sh".into(), "-c".into()];
                }
                shell.extend(rest.iter().cloned());
                shell
            }
            "NONE" => return None,
            other => {
                tracing::warn!(kind = other, "unknown health check type (expected CMD); no health check");
                return None;
            }
        };
        if cmd.is_empty() {
            return None;
        }
        let duration = |key: &str, default: Duration| match hc.get(key).and_then(Value::as_i64) {
            Some(ns) if ns > 0 => Duration::from_nanos(ns as u64),
            _ => default,
        };
        Some(Check {
            cmd,
            interval: duration("Interval", DEFAULT_INTERVAL),
            timeout: duration("Timeout", DEFAULT_TIMEOUT),
            start_period: duration("StartPeriod", Duration::ZERO),
            start_interval: duration("StartInterval", DEFAULT_START_INTERVAL),
            retries: hc.get("Retries").and_then(Value::as_i64).filter(|r| *r > 0).map_or(DEFAULT_RETRIES, |r| r as u64),
        })
    }

    /// The wait before the next probe: the start interval while the
    /// container is starting within its start period, the rest of the
    /// start period when that is shorter than the interval, else the
    /// interval.
    fn next_wait(&self, since_start: Duration, status: &str) -> Duration {
        if since_start >= self.start_period {
            return self.interval;
        }
        let remaining = self.start_period - since_start;
        if remaining < self.interval {
            return remaining;
        }
        if status == STARTING {
            self.start_interval
        } else {
            self.interval
        }
    }
}

/// One probe's result, as `State.Health.Log` shows it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Probed {
    pub start: SystemTime,
    pub end: SystemTime,
    pub exit_code: i64,
    pub output: String,
}

impl Probed {
    fn to_json(&self) -> Value {
        json!({"Start": rfc3339(self.start), "End": rfc3339(self.end), "ExitCode": self.exit_code, "Output": self.output})
    }
}

fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    crate::timefmt::format_rfc3339(d.as_secs() as i64, d.subsec_nanos())
}

/// Folds a result into `State.Health` (dockerd's `handleProbeResult`).
/// `started_at` is the container's start, for the start period. Returns
/// the status before and after.
pub(crate) fn apply(health: &mut Value, check: &Check, started_at: Option<SystemTime>, result: &Probed) -> (String, String) {
    if !health.is_object() {
        *health = empty(STARTING);
    }
    let old = health["Status"].as_str().unwrap_or(STARTING).to_owned();
    let mut log: Vec<Value> = health.get("Log").and_then(Value::as_array).cloned().unwrap_or_default();
    log.push(result.to_json());
    if log.len() > MAX_LOG {
        log.drain(..log.len() - MAX_LOG);
    }
    health["Log"] = Value::Array(log);
    let mut streak = health.get("FailingStreak").and_then(Value::as_u64).unwrap_or(0);
    let mut status = old.clone();
    if result.exit_code == 0 {
        streak = 0;
        status = HEALTHY.into();
    } else {
        // While starting, failures within the start period do not count.
        let in_start_period = old == STARTING
            && started_at.is_some_and(|s| result.start.duration_since(s).unwrap_or_default() < check.start_period);
        if !in_start_period {
            streak += 1;
            if streak >= check.retries {
                status = UNHEALTHY.into();
            }
        }
    }
    health["FailingStreak"] = json!(streak);
    health["Status"] = json!(status);
    (old, status)
}

fn empty(status: &str) -> Value {
    json!({"Status": status, "FailingStreak": 0, "Log": []})
}

/// What collects a probe's output from the shim's multiplexed stream:
/// frame payloads, stdout and stderr alike, up to [`MAX_OUTPUT`] bytes.
#[derive(Default)]
struct Capture {
    kept: Vec<u8>,
    truncated: bool,
    header: Vec<u8>,
    payload_left: usize,
}

impl Capture {
    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.payload_left == 0 {
                let take = (8 - self.header.len()).min(data.len());
                self.header.extend_from_slice(&data[..take]);
                data = &data[take..];
                if self.header.len() == 8 {
                    self.payload_left = u32::from_be_bytes([self.header[4], self.header[5], self.header[6], self.header[7]]) as usize;
                    self.header.clear();
                }
                continue;
            }
            let take = self.payload_left.min(data.len());
            let room = MAX_OUTPUT - self.kept.len();
            self.kept.extend_from_slice(&data[..take.min(room)]);
            self.truncated |= take > room;
            self.payload_left -= take;
            data = &data[take..];
        }
    }

    fn text(&self) -> String {
        let mut s = String::from_utf8_lossy(&self.kept).into_owned();
        if self.truncated {
            s.push_str("...");
        }
        s
    }
}

/// Go's `time.Duration.String()` ("30s", "200ms", "1m30s"), as dockerd
/// writes the timeout into its message.
pub(crate) fn go_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        return "0s".into();
    }
    let frac = |value: u128, unit: u128, suffix: &str| {
        let whole = value / unit;
        let rest = value % unit;
        if rest == 0 {
            return format!("{whole}{suffix}");
        }
        let digits = unit.to_string().len() - 1;
        let f = format!("{rest:0digits$}");
        format!("{whole}.{}{suffix}", f.trim_end_matches('0'))
    };
    if ns < 1_000 {
        return format!("{ns}ns");
    }
    if ns < 1_000_000 {
        return frac(ns, 1_000, "µs");
    }
    if ns < 1_000_000_000 {
        return frac(ns, 1_000_000, "ms");
    }
    let secs_total = ns / 1_000_000_000;
    let (h, m) = (secs_total / 3600, secs_total % 3600 / 60);
    let s = frac(ns % 60_000_000_000, 1_000_000_000, "s");
    match (h, m) {
        (0, 0) => s,
        (0, m) => format!("{m}m{s}"),
        (h, m) => format!("{h}h{m}m{s}"),
    }
}

impl Containers {
    /// Sets a container that just started (or was re-adopted) to
    /// `starting` and starts its monitor, if it has a check. Call with
    /// the state already running and before the container's exit monitor
    /// is spawned, so no exit can slip past the monitor's start.
    pub(crate) fn health_start(self: &Arc<Self>, h: &Arc<Handle>) {
        let rec = h.record();
        let Some(check) = Check::from_config(&rec.config) else { return };
        h.update(|r| {
            let mut health = r.state.health.take().filter(Value::is_object).unwrap_or_else(|| empty(STARTING));
            health["Status"] = json!(STARTING);
            health["FailingStreak"] = json!(0);
            if !health.get("Log").is_some_and(Value::is_array) {
                health["Log"] = json!([]);
            }
            r.state.health = Some(health);
        });
        let run = *h.exits.borrow();
        let me = self.clone();
        let h = h.clone();
        let span = tracing::debug_span!("health", container_id = %h.id);
        tokio::spawn(tracing::Instrument::instrument(async move { me.health_monitor(h, check, run).await }, span));
    }

    /// After an exit: a container that is not running is reported
    /// `unhealthy`, as dockerd does once its monitor stops (no event).
    pub(crate) fn health_stop(&self, h: &Handle) {
        h.update(|r| {
            if let Some(health) = r.state.health.as_mut().filter(|v| v.is_object()) {
                health["Status"] = json!(UNHEALTHY);
            }
        });
    }

    async fn health_monitor(self: Arc<Self>, h: Arc<Handle>, check: Check, run: u64) {
        let mut exits = h.exits.subscribe();
        let started_at = crate::timefmt::parse_rfc3339(&h.record().state.started_at)
            .map(|(s, n)| UNIX_EPOCH + Duration::new(s.max(0) as u64, n));
        loop {
            let since_start = started_at.and_then(|s| SystemTime::now().duration_since(s).ok()).unwrap_or_default();
            let status = h.record().state.health.as_ref().and_then(|v| v.get("Status")).and_then(Value::as_str).unwrap_or(STARTING).to_owned();
            let wait = check.next_wait(since_start, &status);
            tokio::select! {
                _ = exits.wait_for(|n| *n != run) => break,
                _ = tokio::time::sleep(wait) => {}
            }
            let rec = h.record();
            if !rec.state.running || *h.exits.borrow() != run {
                break;
            }
            if rec.state.paused {
                // dockerd stops probing a paused container and reports it
                // unhealthy until a probe says otherwise.
                self.health_stop(&h);
                continue;
            }
            let result = tokio::select! {
                _ = exits.wait_for(|n| *n != run) => break,
                r = self.probe(&h, &check) => r,
            };
            tracing::debug!(exit_code = result.exit_code, "health check done");
            let changed = h.update(|r| {
                // A result that lands after the run ended is dropped.
                if !r.state.running || *h.exits.borrow() != run {
                    return None;
                }
                let health = r.state.health.get_or_insert_with(|| empty(STARTING));
                let (old, new) = apply(health, &check, started_at, &result);
                (old != new).then_some(new)
            });
            if let Some(status) = changed {
                // Best effort, like dockerd: only a status change is
                // written; the log is kept in memory until the next write.
                if let Err(e) = self.persist(&h) {
                    tracing::warn!(error = %e, "persist health status");
                }
                self.event(&h, &format!("health_status: {status}"), &[]);
            }
        }
        tracing::debug!("health monitor stopped");
    }

    /// Runs the probe once as an exec in the container.
    async fn probe(&self, h: &Handle, check: &Check) -> Probed {
        let start = SystemTime::now();
        let fail = |output: String| Probed { start, end: SystemTime::now(), exit_code: -1, output };
        let state_dir = self.paths.container_state_dir(&h.id);
        let Some(mut process) = std::fs::read(state_dir.join("config.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| v.get("process").cloned())
        else {
            return fail(format!("container {} has no bundle", h.id));
        };
        // The container's own process settings (user, working directory,
        // environment, capabilities) with the probe's command, no terminal.
        process["args"] = json!(check.cmd);
        process["terminal"] = json!(false);
        let exec_id = crate::digest::random_id();
        let words = format!("{} {}", check.cmd[0], check.cmd[1..].join(" "));
        self.event(h, &format!("exec_create: {words}"), &[("execID", exec_id.clone())]);
        let req = json!({"op": "exec", "process": process, "tty": false, "stdin": false, "detach": false});
        let (answer, mut stream) = match tokio::time::timeout(START_TIMEOUT, shim::open_stream(&state_dir, req)).await {
            Ok(Ok(opened)) => opened,
            Ok(Err(e)) => return fail(e.message),
            Err(_) => return fail(format!("timed out starting health check for container {}", h.id)),
        };
        let pid = answer.get("exec_pid").and_then(Value::as_i64).unwrap_or(0);
        self.event(h, &format!("exec_start: {words}"), &[("execID", exec_id.clone())]);
        let mut capture = Capture::default();
        let mut chunk = vec![0u8; 8192];
        let read_all = async {
            while let Ok(n) = stream.read(&mut chunk).await {
                if n == 0 {
                    break;
                }
                capture.feed(&chunk[..n]);
            }
        };
        let timed_out = tokio::time::timeout(check.timeout, read_all).await.is_err();
        if timed_out {
            tracing::debug!(pid, "health check taking too long; killing it");
            if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
            }
            // The stream closes once the shim has reaped the probe; wait
            // for that so dying probes do not pile up.
            let _ = tokio::time::timeout(KILL_GRACE, async {
                while let Ok(n) = stream.read(&mut chunk).await {
                    if n == 0 {
                        break;
                    }
                }
            })
            .await;
        }
        let exit_file = state_dir.join(format!("exec-{pid}.exit"));
        let code = std::fs::read(&exit_file)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| v.get("exit_code").and_then(Value::as_i64));
        // The probe's exit file is ours alone; nobody else reads it.
        let _ = std::fs::remove_file(&exit_file);
        if let Some(code) = code {
            self.event(h, "exec_die", &[("execID", exec_id), ("exitCode", code.to_string())]);
        }
        let end = SystemTime::now();
        if timed_out {
            let out = capture.text();
            let limit = go_duration(check.timeout);
            let output = if out.is_empty() {
                format!("Health check exceeded timeout ({limit})")
            } else {
                format!("Health check exceeded timeout ({limit}): {out}")
            };
            return Probed { start, end, exit_code: -1, output };
        }
        match code {
            Some(exit_code) => Probed { start, end, exit_code, output: capture.text() },
            None => Probed { start, end, exit_code: -1, output: format!("healthcheck for container {} has no exit code", h.id) },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(retries: u64, start_period: Duration) -> Check {
        Check {
            cmd: vec!["true".into()],
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            start_period,
            start_interval: DEFAULT_START_INTERVAL,
            retries,
        }
    }

    fn result(at: SystemTime, code: i64) -> Probed {
        Probed { start: at, end: at, exit_code: code, output: String::new() }
    }

    #[test]
    fn config_kinds_and_defaults() {
        let c = Check::from_config(&json!({"Healthcheck": {"Test": ["CMD-SHELL", "test -f /x"]}})).unwrap();
        assert_eq!(c.cmd, ["/bin/sh", "-c", "test -f /x"]);
        assert_eq!((c.interval, c.timeout, c.start_period, c.retries), (DEFAULT_INTERVAL, DEFAULT_TIMEOUT, Duration::ZERO, 3));
        let c = Check::from_config(&json!({"Shell": ["/bin/bash", "-eu", "-c"], "Healthcheck": {"Test": ["CMD-SHELL", "true"], "Interval": 200_000_000, "Retries": 1}})).unwrap();
        assert_eq!(c.cmd, ["/bin/bash", "-eu", "-c", "true"]);
        assert_eq!((c.interval, c.retries), (Duration::from_millis(200), 1));
        assert_eq!(Check::from_config(&json!({"Healthcheck": {"Test": ["CMD", "curl", "-f", "x"]}})).unwrap().cmd, ["curl", "-f", "x"]);
        assert_eq!(Check::from_config(&json!({"Healthcheck": {"Test": ["NONE"]}})), None);
        assert_eq!(Check::from_config(&json!({"Healthcheck": {"Test": []}})), None);
        assert_eq!(Check::from_config(&json!({"Healthcheck": {"Test": ["CMD"]}})), None);
        assert_eq!(Check::from_config(&json!({})), None);
    }

    #[test]
    fn failures_count_up_to_retries_then_unhealthy() {
        let c = check(2, Duration::ZERO);
        let t = SystemTime::now();
        let mut h = empty(STARTING);
        assert_eq!(apply(&mut h, &c, Some(t), &result(t, 1)), (STARTING.into(), STARTING.into()));
        assert_eq!(h["FailingStreak"], 1);
        assert_eq!(apply(&mut h, &c, Some(t), &result(t, 1)), (STARTING.into(), UNHEALTHY.into()));
        assert_eq!(apply(&mut h, &c, Some(t), &result(t, 0)), (UNHEALTHY.into(), HEALTHY.into()));
        assert_eq!(h["FailingStreak"], 0);
    }

    #[test]
    fn failures_in_the_start_period_do_not_count() {
        let c = check(1, Duration::from_secs(60));
        let t = SystemTime::now();
        let mut h = empty(STARTING);
        apply(&mut h, &c, Some(t), &result(t + Duration::from_secs(1), 1));
        assert_eq!((h["Status"].as_str(), h["FailingStreak"].as_u64()), (Some(STARTING), Some(0)));
        apply(&mut h, &c, Some(t), &result(t + Duration::from_secs(61), 1));
        assert_eq!(h["Status"], UNHEALTHY);
    }

    #[test]
    fn log_keeps_the_last_five() {
        let c = check(3, Duration::ZERO);
        let t = SystemTime::now();
        let mut h = empty(STARTING);
        for code in 0..7 {
            apply(&mut h, &c, Some(t), &result(t, code));
        }
        let codes: Vec<i64> = h["Log"].as_array().unwrap().iter().map(|r| r["ExitCode"].as_i64().unwrap()).collect();
        assert_eq!(codes, [2, 3, 4, 5, 6]);
    }

    #[test]
    fn start_interval_applies_while_starting_in_the_start_period() {
        let mut c = check(3, Duration::from_secs(60));
        c.interval = Duration::from_secs(30);
        assert_eq!(c.next_wait(Duration::from_secs(1), STARTING), DEFAULT_START_INTERVAL);
        assert_eq!(c.next_wait(Duration::from_secs(1), HEALTHY), Duration::from_secs(30));
        assert_eq!(c.next_wait(Duration::from_secs(50), STARTING), Duration::from_secs(10));
        assert_eq!(c.next_wait(Duration::from_secs(70), STARTING), Duration::from_secs(30));
    }

    #[test]
    fn output_is_demultiplexed_and_capped() {
        let mut cap = Capture::default();
        let mut stream = crate::containers::logs::frame(1, b"out ");
        stream.extend(crate::containers::logs::frame(2, b"err"));
        // Fed in awkward pieces: frame boundaries fall anywhere.
        for piece in stream.chunks(3) {
            cap.feed(piece);
        }
        assert_eq!(cap.text(), "out err");
        let mut big = Capture::default();
        big.feed(&crate::containers::logs::frame(1, &vec![b'x'; MAX_OUTPUT + 10]));
        assert_eq!(big.text().len(), MAX_OUTPUT + 3);
        assert!(big.text().ends_with("x..."));
    }

    #[test]
    fn durations_print_like_go() {
        assert_eq!(go_duration(Duration::from_secs(30)), "30s");
        assert_eq!(go_duration(Duration::from_millis(200)), "200ms");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(go_duration(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(go_duration(Duration::from_micros(1500)), "1.5ms");
    }
}

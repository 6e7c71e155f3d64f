//! The host-side supervisor: one long-lived process per running VM.
//!
//! Owns, for the VM's whole life: the QEMU child (spawned through
//! [`crate::qemu_backend`]), the engine socket `$BERTH_HOME/run/docker.sock`
//! relayed to the guest engine ([`crate::forward`]), the published-port
//! forwards kept in step with the engine's container events, and the record
//! in `vm/state.json` ([`crate::state`]). It stops the VM gracefully on
//! SIGTERM/SIGINT and records a crash (with the console tail) when QEMU exits
//! on its own.
//!
//! It does not parse command lines or print for humans (the `berth` CLI),
//! and does not daemonize itself: the caller starts it detached.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::VmConfig;
use crate::engine_client::{self, EngineAddr, EventStream};
use crate::forward::{
    bind_relay_socket, desired_forwards, diff_forwards, host_port_available, hostfwd_add,
    hostfwd_remove, serve_relay, PortForward,
};
use crate::image::GuestImage;
use crate::paths::BerthHome;
use crate::qemu_backend::{
    human_monitor_command, pick_loopback_port, spawn_vm, stop_child, SpawnPlan,
};
use crate::state::{tail, unix_now, Phase, SupervisorLock, VmState};

/// How often forwards that failed (host port taken) are retried.
const FAILED_FORWARD_RETRY: Duration = Duration::from_secs(5);

/// How long a graceful stop waits for the guest before killing QEMU.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(30);

/// What the supervisor is asked to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuperviseRequest {
    /// The VM config, its accelerator already resolved (not `auto`).
    pub config: VmConfig,
    /// The guest image directory (checked by the caller).
    pub image_dir: PathBuf,
    /// Owner (uid, gid) for the engine socket; `None` keeps the process's.
    pub socket_owner: Option<(u32, u32)>,
    /// Grace period of a graceful stop, in seconds.
    pub stop_grace_secs: u64,
}

/// A supervisor failure before or while running the VM.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// Another supervisor runs for this `$BERTH_HOME`.
    #[error("start vm: already running (supervisor pid {pid})")]
    AlreadyRunning { pid: u32 },
    /// Reading or writing state failed.
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    /// QEMU could not be started.
    #[error(transparent)]
    Qemu(#[from] crate::qemu_backend::QemuError),
    /// The engine socket could not be served.
    #[error(transparent)]
    Relay(#[from] crate::forward::RelayError),
    /// Signal handlers could not be installed.
    #[error("install signal handlers")]
    Signals(#[source] std::io::Error),
    /// No free loopback port for the engine forward.
    #[error("pick a loopback port for the engine")]
    Port(#[source] std::io::Error),
}

/// How the supervised VM ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Stopped on request.
    Stopped,
    /// QEMU exited on its own.
    Crashed,
}

/// The state record shared by the supervisor's tasks; every change is saved.
#[derive(Clone)]
struct Shared {
    home: BerthHome,
    state: Arc<Mutex<VmState>>,
}

impl Shared {
    fn update(&self, f: impl FnOnce(&mut VmState)) {
        let mut s = self.state.lock().expect("state lock not poisoned");
        f(&mut s);
        if let Err(e) = s.save(&self.home) {
            tracing::error!(vm = "berth", error = %e, "could not record vm state");
        }
    }
}

/// Runs the VM until it is stopped (SIGTERM/SIGINT) or crashes.
pub async fn supervise(home: BerthHome, req: SuperviseRequest) -> Result<Outcome, SupervisorError> {
    use tokio::signal::unix::{signal, SignalKind};

    let Some(_lock) = SupervisorLock::try_acquire(&home)? else {
        let pid = VmState::load(&home)
            .ok()
            .flatten()
            .map(|s| s.supervisor_pid)
            .unwrap_or(0);
        return Err(SupervisorError::AlreadyRunning { pid });
    };
    let mut sigterm = signal(SignalKind::terminate()).map_err(SupervisorError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(SupervisorError::Signals)?;

    let api_port = pick_loopback_port().map_err(SupervisorError::Port)?;
    let api = SocketAddr::from((Ipv4Addr::LOCALHOST, api_port));
    let image = GuestImage::in_dir(&req.image_dir);
    let shared = Shared {
        home: home.clone(),
        state: Arc::new(Mutex::new(VmState {
            phase: Phase::Starting,
            supervisor_pid: std::process::id(),
            qemu_pid: None,
            accel: req.config.accel,
            cpus: req.config.cpus,
            memory_mib: req.config.memory_mib,
            disk_gib: req.config.disk_gib,
            image_dir: req.image_dir.clone(),
            api_port,
            socket: home.docker_socket(),
            started_at: unix_now(),
            boot_ms: None,
            forwards: Vec::new(),
            warnings: Vec::new(),
            crash: None,
            stop: None,
        })),
    };
    shared.update(|_| {});

    let started = Instant::now();
    let plan = SpawnPlan {
        image,
        accel: req.config.accel,
        api_port,
        engine_args: Vec::new(),
    };
    let mut child = match spawn_vm(&req.config, &home, &plan).await {
        Ok(c) => c,
        Err(e) => {
            shared.update(|s| {
                s.phase = Phase::Crashed;
                s.crash = Some(format!("{e}"));
            });
            return Err(e.into());
        }
    };
    let qemu_pid = child.id();
    shared.update(|s| s.qemu_pid = qemu_pid);
    tracing::info!(vm = "berth", pid = qemu_pid, api_port, "qemu running");

    let listener = bind_relay_socket(&home.docker_socket(), req.socket_owner)?;
    let relay = tokio::spawn(serve_relay(listener, api));
    let engine = EngineAddr::Tcp(api);
    let mut ports = None;

    let boot = wait_engine(&engine);
    tokio::pin!(boot);
    let mut booted = false;
    let outcome = loop {
        tokio::select! {
            _ = &mut boot, if !booted => {
                booted = true;
                let ms = started.elapsed().as_millis() as u64;
                tracing::info!(vm = "berth", boot_ms = ms, "engine answers");
                shared.update(|s| {
                    s.phase = Phase::Running;
                    s.boot_ms = Some(ms);
                });
                ports = Some(tokio::spawn(watch_ports(shared.clone(), engine.clone())));
            }
            status = child.wait() => {
                let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                let reason = format!(
                    "qemu exited unexpectedly ({status})\n--- qemu output ---\n{}\n--- console tail ---\n{}",
                    tail(&home.qemu_log(), 10),
                    tail(&home.console_log(), 20)
                );
                tracing::error!(vm = "berth", %status, "qemu exited unexpectedly");
                shared.update(|s| {
                    s.phase = Phase::Crashed;
                    s.crash = Some(reason);
                    s.forwards.clear();
                });
                break Outcome::Crashed;
            }
            _ = sigterm.recv() => break Outcome::Stopped,
            _ = sigint.recv() => break Outcome::Stopped,
        }
    };

    if let Some(p) = ports {
        p.abort();
    }
    if outcome == Outcome::Stopped {
        shared.update(|s| s.phase = Phase::Stopping);
        let grace = requested_grace(&home).unwrap_or(Duration::from_secs(req.stop_grace_secs));
        let _ = std::fs::remove_file(home.stop_request());
        let report = stop_child(&mut child, &home, grace).await;
        shared.update(|s| {
            s.forwards.clear();
            match report {
                Ok(r) => {
                    s.phase = Phase::Stopped;
                    s.stop = Some(r);
                }
                Err(e) => {
                    s.phase = Phase::Crashed;
                    s.crash = Some(format!("stop failed: {e}"));
                }
            }
        });
    }
    relay.abort();
    let _ = std::fs::remove_file(home.docker_socket());
    Ok(outcome)
}

/// What a stopping client asked for in `vm/stop-request.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopRequest {
    /// Seconds the guest gets to power down before QEMU is killed.
    pub grace_secs: u64,
}

/// Records `grace` for the supervisor to use on its next SIGTERM.
pub fn request_stop_grace(home: &BerthHome, grace: Duration) -> std::io::Result<()> {
    let body = serde_json::to_vec(&StopRequest {
        grace_secs: grace.as_secs(),
    })
    .expect("stop request serializes");
    std::fs::write(home.stop_request(), body)
}

fn requested_grace(home: &BerthHome) -> Option<Duration> {
    let bytes = std::fs::read(home.stop_request()).ok()?;
    let req: StopRequest = serde_json::from_slice(&bytes).ok()?;
    Some(Duration::from_secs(req.grace_secs))
}

/// Resolves once the guest engine answers `/_ping` on the forwarded port.
/// QEMU accepts the TCP connection itself, so only an HTTP answer counts;
/// there is no event to await, so this polls every 200 ms.
async fn wait_engine(engine: &EngineAddr) {
    loop {
        let attempt = tokio::time::timeout(Duration::from_secs(2), engine_client::ping(engine));
        if let Ok(Ok(())) = attempt.await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Keeps QEMU's forwards equal to the ports published by running
/// containers: reconciles when the event stream (re)connects and on each
/// container start/die.
async fn watch_ports(shared: Shared, engine: EngineAddr) {
    let mut fw = Forwarder::default();
    loop {
        // Subscribe first, then list: an event between the two is not lost.
        match EventStream::open(&engine).await {
            Ok(mut events) => {
                fw.reconcile(&shared, &engine).await;
                loop {
                    // A host port that was taken may be freed by another
                    // program; nothing tells us, so retry while any failed.
                    let retry = tokio::time::sleep(FAILED_FORWARD_RETRY);
                    let ev = tokio::select! {
                        ev = events.next() => ev,
                        _ = retry, if !fw.failed.is_empty() => {
                            fw.reconcile(&shared, &engine).await;
                            continue;
                        }
                    };
                    match ev {
                        None => break,
                        Some(Ok(ev)) if engine_client::event_changes_ports(&ev) => {
                            fw.reconcile(&shared, &engine).await
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => {
                            tracing::warn!(vm = "berth", error = %e, "bad engine event");
                        }
                    }
                }
                tracing::info!(vm = "berth", "engine event stream closed; reconnecting");
            }
            Err(e) => tracing::warn!(vm = "berth", error = %e, "cannot watch engine events"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The forwards QEMU has, and the ones that could not be added.
#[derive(Default)]
struct Forwarder {
    current: BTreeSet<PortForward>,
    failed: BTreeMap<PortForward, String>,
}

impl Forwarder {
    async fn reconcile(&mut self, shared: &Shared, engine: &EngineAddr) {
        let containers = match engine_client::list_containers(engine).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(vm = "berth", error = %e, "cannot list containers");
                return;
            }
        };
        let desired = desired_forwards(&containers);
        let (add, remove) = diff_forwards(&self.current, &desired);
        let qmp = shared.home.qmp_socket();
        for f in remove {
            match human_monitor_command(&qmp, &hostfwd_remove(&f)).await {
                Ok(out) if out.trim().is_empty() => {
                    tracing::info!(vm = "berth", forward = %f, "port forward removed");
                }
                Ok(out) => {
                    tracing::warn!(vm = "berth", forward = %f, output = %out.trim(), "hostfwd_remove")
                }
                Err(e) => tracing::warn!(vm = "berth", forward = %f, error = %e, "hostfwd_remove"),
            }
            self.current.remove(&f);
        }
        self.failed.retain(|f, _| desired.contains(f));
        for f in add {
            if let Err(e) = host_port_available(&f) {
                let msg = format!(
                    "published port {f} is not forwarded: host address {}:{} is unavailable ({e})",
                    f.host_ip, f.host_port
                );
                tracing::warn!(vm = "berth", forward = %f, "{msg}");
                self.failed.insert(f, msg);
                continue;
            }
            match human_monitor_command(&qmp, &hostfwd_add(&f)).await {
                Ok(out) if out.trim().is_empty() => {
                    tracing::info!(vm = "berth", forward = %f, "port forward added");
                    self.failed.remove(&f);
                    self.current.insert(f);
                }
                Ok(out) => {
                    let msg = format!("published port {f} is not forwarded: {}", out.trim());
                    tracing::warn!(vm = "berth", forward = %f, "{msg}");
                    self.failed.insert(f, msg);
                }
                Err(e) => {
                    let msg = format!("published port {f} is not forwarded: {e}");
                    tracing::warn!(vm = "berth", forward = %f, "{msg}");
                    self.failed.insert(f, msg);
                }
            }
        }
        let forwards: Vec<_> = self.current.iter().copied().collect();
        let warnings: Vec<_> = self.failed.values().cloned().collect();
        shared.update(|s| {
            s.forwards = forwards;
            s.warnings = warnings;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::{TcpListener, UnixListener};

    /// A FAKE engine (not berthd): answers every request with `containers`.
    async fn fake_engine(containers: Arc<Mutex<Value>>) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                let body = containers.lock().unwrap().to_string();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf).await;
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                });
            }
        });
        addr
    }

    /// A FAKE QMP server (not QEMU): accepts one session per operation and
    /// records each HMP command line.
    async fn fake_qmp(path: PathBuf, lines: Arc<Mutex<Vec<String>>>) {
        let l = UnixListener::bind(path).unwrap();
        tokio::spawn(async move {
            loop {
                let (s, _) = l.accept().await.unwrap();
                let lines = lines.clone();
                tokio::spawn(async move {
                    let (r, mut w) = s.into_split();
                    let mut r = BufReader::new(r);
                    w.write_all(b"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, \"minor\": 2, \"major\": 7}, \"package\": \"\"}, \"capabilities\": []}}\r\n").await.unwrap();
                    let mut line = String::new();
                    while r.read_line(&mut line).await.unwrap_or(0) > 0 {
                        let cmd: Value = serde_json::from_str(line.trim()).unwrap();
                        let ret = if cmd["execute"] == "human-monitor-command" {
                            lines.lock().unwrap().push(
                                cmd["arguments"]["command-line"]
                                    .as_str()
                                    .unwrap()
                                    .to_string(),
                            );
                            json!("")
                        } else {
                            json!({})
                        };
                        let mut reply = json!({ "return": ret });
                        if let Some(id) = cmd.get("id") {
                            reply["id"] = id.clone();
                        }
                        w.write_all(format!("{reply}\r\n").as_bytes())
                            .await
                            .unwrap();
                        line.clear();
                    }
                });
            }
        });
    }

    fn shared(home: &BerthHome) -> Shared {
        std::fs::create_dir_all(home.vm_dir()).unwrap();
        Shared {
            home: home.clone(),
            state: Arc::new(Mutex::new(VmState {
                phase: Phase::Running,
                supervisor_pid: 1,
                qemu_pid: None,
                accel: crate::Accel::Tcg,
                cpus: 1,
                memory_mib: 512,
                disk_gib: 4,
                image_dir: "/img".into(),
                api_port: 1,
                socket: home.docker_socket(),
                started_at: 0,
                boot_ms: None,
                forwards: vec![],
                warnings: vec![],
                crash: None,
                stop: None,
            })),
        }
    }

    #[tokio::test]
    async fn forwards_follow_published_ports_and_taken_port_is_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let home = BerthHome::new(dir.path());
        let shared = shared(&home);
        let hmp = Arc::new(Mutex::new(Vec::new()));
        fake_qmp(home.qmp_socket(), hmp.clone()).await;
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let taken_port = taken.local_addr().unwrap().port();
        let free_port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let containers = Arc::new(Mutex::new(json!([
            {"Id": "a", "Ports": [{"IP": "127.0.0.1", "PrivatePort": 80, "PublicPort": free_port, "Type": "tcp"}]},
            {"Id": "b", "Ports": [{"IP": "127.0.0.1", "PrivatePort": 80, "PublicPort": taken_port, "Type": "tcp"}]}
        ])));
        let engine = EngineAddr::Tcp(fake_engine(containers.clone()).await);
        let mut fw = Forwarder::default();

        fw.reconcile(&shared, &engine).await;
        assert_eq!(
            *hmp.lock().unwrap(),
            [format!(
                "hostfwd_add n0 tcp:127.0.0.1:{free_port}-:{free_port}"
            )]
        );
        let state = VmState::load(&home).unwrap().unwrap();
        assert_eq!(state.forwards.len(), 1);
        assert_eq!(state.warnings.len(), 1);
        assert!(
            state.warnings[0].contains(&taken_port.to_string()),
            "{:?}",
            state.warnings
        );
        assert!(
            state.warnings[0].contains("unavailable"),
            "{:?}",
            state.warnings
        );

        // The container stops: its forward goes, and so does the warning.
        *containers.lock().unwrap() = json!([]);
        fw.reconcile(&shared, &engine).await;
        assert_eq!(
            hmp.lock().unwrap().last().unwrap(),
            &format!("hostfwd_remove n0 tcp:127.0.0.1:{free_port}")
        );
        let state = VmState::load(&home).unwrap().unwrap();
        assert!(state.forwards.is_empty());
        assert!(state.warnings.is_empty());
        drop(taken);
    }
}

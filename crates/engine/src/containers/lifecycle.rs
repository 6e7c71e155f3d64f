//! Starting, stopping and watching containers, attach and exec.
//!
//! `start` mounts the rootfs, writes the OCI bundle, spawns the shim (which
//! creates the container), connects attachers that were waiting, then tells
//! the shim to start the process. A monitor task per running container holds
//! a connection to the shim that closes when the container exits.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::{rootfs, shim, spec, Containers, Handle, PendingAttach, Record, State};
use crate::error::{Error, Kind, Result};

/// An exec instance (`docker exec`).
pub struct Exec {
    pub id: String,
    pub container: String,
    pub config: Value,
    pub state: std::sync::Mutex<ExecState>,
}

#[derive(Debug, Clone, Default)]
pub struct ExecState {
    pub running: bool,
    pub pid: i64,
    pub exit_code: Option<i64>,
    pub started: bool,
}

/// Entrypoint followed by Cmd, from the effective config.
pub(crate) fn process_args(r: &Record) -> Vec<String> {
    let list = |k: &str| -> Vec<String> { r.config.get(k).and_then(|v| serde_json::from_value(v.clone()).ok()).unwrap_or_default() };
    let mut args = list("Entrypoint");
    args.extend(list("Cmd"));
    args
}

/// Signal names and numbers as `docker kill -s` accepts them.
pub fn parse_signal(s: &str) -> Result<i32> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(libc::SIGKILL);
    }
    if let Ok(n) = s.parse::<i32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
        return Err(Error::invalid(format!("Invalid signal: {s}")));
    }
    let name = s.to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    let n = match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "ILL" => libc::SIGILL,
        "TRAP" => libc::SIGTRAP,
        "ABRT" | "IOT" => libc::SIGABRT,
        "BUS" => libc::SIGBUS,
        "FPE" => libc::SIGFPE,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "SEGV" => libc::SIGSEGV,
        "USR2" => libc::SIGUSR2,
        "PIPE" => libc::SIGPIPE,
        "ALRM" => libc::SIGALRM,
        "TERM" => libc::SIGTERM,
        "STKFLT" => libc::SIGSTKFLT,
        "CHLD" => libc::SIGCHLD,
        "CONT" => libc::SIGCONT,
        "STOP" => libc::SIGSTOP,
        "TSTP" => libc::SIGTSTP,
        "TTIN" => libc::SIGTTIN,
        "TTOU" => libc::SIGTTOU,
        "URG" => libc::SIGURG,
        "XCPU" => libc::SIGXCPU,
        "XFSZ" => libc::SIGXFSZ,
        "VTALRM" => libc::SIGVTALRM,
        "PROF" => libc::SIGPROF,
        "WINCH" => libc::SIGWINCH,
        "IO" | "POLL" => libc::SIGIO,
        "PWR" => libc::SIGPWR,
        "SYS" => libc::SIGSYS,
        _ => return Err(Error::invalid(format!("Invalid signal: {s}"))),
    };
    Ok(n)
}

fn not_running(id: &str) -> Error {
    Error::conflict(format!("Container {id} is not running"))
}

impl Containers {
    fn state_dir(&self, id: &str) -> std::path::PathBuf {
        self.paths.container_state_dir(id)
    }

    /// `POST /containers/{id}/start`. Returns false when it already ran
    /// (dockerd answers 304).
    pub async fn start(self: &Arc<Self>, name_or_id: &str) -> Result<bool> {
        let h = self.find(name_or_id)?;
        let _op = h.op.lock().await;
        let rec = h.record();
        if rec.state.paused {
            return Err(Error::conflict("cannot start a paused container, try unpause instead"));
        }
        if rec.state.running {
            return Ok(false);
        }
        if rec.state.status == "removing" || rec.state.dead {
            return Err(Error::conflict(format!("container is marked for removal and cannot be started")));
        }
        h.update(|r| {
            r.manually_stopped = false;
            r.restart_count = 0;
        });
        self.start_locked(&h).await.map(|_| true)
    }

    /// Starts a container whose op lock the caller holds.
    pub(crate) async fn start_locked(self: &Arc<Self>, h: &Arc<Handle>) -> Result<()> {
        match self.launch(h).await {
            Ok(pid) => {
                h.update(|r| {
                    r.state = State {
                        status: "running".into(),
                        running: true,
                        pid: pid as i64,
                        started_at: crate::timefmt::now_rfc3339(),
                        finished_at: r.state.finished_at.clone(),
                        health: r.state.health.clone(),
                        ..State::default()
                    };
                    r.has_been_started = true;
                });
                self.health_start(h);
                self.persist(h)?;
                self.volume_events(&h.record(), "mount");
                self.event(h, "start", &[]);
                self.spawn_monitor(h.clone());
                Ok(())
            }
            Err(e) => {
                self.net_detach(h);
                let rec = h.record();
                self.release_volumes(&rec.id);
                let _ = rootfs::unmount(&self.paths.container_rootfs(&rec.id));
                let _ = std::fs::remove_dir_all(self.state_dir(&rec.id));
                let code = if e.message.contains("executable file not found") || e.message.contains("No such file") { 127 } else if e.message.contains("ermission denied") { 126 } else { 128 };
                h.update(|r| {
                    r.state.status = if r.has_been_started { "exited".into() } else { "created".into() };
                    r.state.running = false;
                    r.state.pid = 0;
                    r.state.exit_code = code;
                    r.state.error = e.message.clone();
                });
                let _ = self.persist(h);
                // Attachers waiting for this start get the failure; waiters
                // see an exit, as dockerd reports a failed start.
                for p in h.pending_attach.lock().expect("attach lock poisoned").drain(..) {
                    let _ = p.reply.send(Err(e.clone()));
                }
                self.event(h, "die", &[("exitCode", code.to_string())]);
                h.exits.send_modify(|n| *n += 1);
                if rec.host_config.get("AutoRemove").and_then(Value::as_bool).unwrap_or(false) {
                    // After the caller releases the op lock.
                    let me = self.clone();
                    let id = rec.id.clone();
                    tokio::spawn(async move {
                        if let Err(e) = me.remove(&id, true, true).await {
                            tracing::warn!(container_id = %id, error = %e, "auto-remove after failed start");
                        }
                    });
                }
                Err(Error::new(Kind::InvalidArgument, e.message))
            }
        }
    }

    /// Mounts, writes the bundle, spawns the shim and starts the process.
    async fn launch(self: &Arc<Self>, h: &Arc<Handle>) -> Result<u32> {
        let rec = h.record();
        let id = rec.id.clone();
        let image = self.images.store.get(&rec.image_id).ok_or_else(|| Error::not_found(format!("No such image: {}", rec.image)))?;
        let lowers = self.images.snapshots.lower_dirs(&image.record.chain());
        let target = self.paths.container_rootfs(&id);
        rootfs::mount_overlay(&lowers, &self.paths.container_upper(&id), &self.paths.container_work(&id), &target)?;
        let hostname = rec.config.get("Hostname").and_then(Value::as_str).unwrap_or(&id[..12]).to_owned();
        let strings = |k: &str| -> Vec<String> { rec.host_config.get(k).and_then(|v| serde_json::from_value(v.clone()).ok()).unwrap_or_default() };
        let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let plan = self.net_plan(&rec)?;
        let own_ip = plan.first().map(|p| p.ip);
        let resolv = if Self::uses_embedded_dns(&plan) {
            rootfs::resolv_conf_embedded(&host_resolv, &strings("DnsSearch"), &strings("DnsOptions"))
        } else {
            rootfs::resolv_conf(&host_resolv, &strings("Dns"), &strings("DnsSearch"))
        };
        let files = [
            ("hosts", rootfs::hosts_file(&hostname, own_ip, &self.extra_hosts(&rec)), "/etc/hosts"),
            ("hostname", format!("{hostname}\n"), "/etc/hostname"),
            ("resolv.conf", resolv, "/etc/resolv.conf"),
        ];
        self.net_record_plan(h, &plan);
        let mut extra_mounts = Vec::new();
        let read_only = rec.host_config.get("ReadonlyRootfs").and_then(Value::as_bool).unwrap_or(false);
        for (name, content, dest) in &files {
            let path = self.paths.container_etc_file(&id, name);
            std::fs::write(&path, content).map_err(|e| Error::io(format!("write {name}"), e))?;
            extra_mounts.push(rootfs::bind_mount(&path, dest, read_only));
        }
        extra_mounts.extend(self.oci_mounts(&rec, &target)?);
        let state_dir = self.state_dir(&id);
        let _ = std::fs::remove_dir_all(&state_dir);
        std::fs::create_dir_all(&state_dir).map_err(|e| Error::io("create state dir", e))?;
        let use_init = rec.host_config.get("Init").and_then(Value::as_bool).unwrap_or(false);
        let input = spec::SpecInput {
            id: &id,
            rootfs: &target,
            image_config: image.config.get("config").unwrap_or(&Value::Null),
            config: &rec.config,
            host_config: &rec.host_config,
            hostname: &hostname,
            cgroup_parent: "/berth",
            cgroup_v2: std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists(),
            extra_mounts,
            namespace_paths: self.namespace_paths(&rec)?,
            init_path: if use_init { self.runtime.init.as_deref() } else { None },
        };
        if use_init && self.runtime.init.is_none() {
            return Err(Error::invalid("--init needs tini (Debian package tini) installed"));
        }
        let oci = spec::build(&input).map_err(|e| Error::invalid(e.to_string()))?;
        let config_path = state_dir.join("config.json");
        std::fs::write(&config_path, serde_json::to_vec_pretty(&oci).map_err(|e| Error::internal(e.to_string()))?)
            .map_err(|e| Error::io("write OCI bundle", e))?;
        let log_opts = rec.host_config.pointer("/LogConfig/Config").cloned().unwrap_or(Value::Null);
        let runtime = self.runtime.runtimes.get(&rec.runtime).cloned().ok_or_else(|| Error::invalid(format!("unknown runtime {}", rec.runtime)))?;
        let spawn = shim::ShimSpawn {
            binary: self.runtime.shim.clone(),
            id: id.clone(),
            bundle: state_dir.clone(),
            state_dir: state_dir.clone(),
            runtime,
            runtime_root: self.paths.runtime_root(),
            log_path: (super::log_driver(&rec) == "json-file").then(|| self.paths.container_log(&id)),
            log_max_size: log_opts.get("max-size").and_then(Value::as_str).and_then(parse_size),
            log_max_file: log_opts.get("max-file").and_then(Value::as_str).and_then(|s| s.parse().ok()),
            tty: rec.tty(),
            stdin: rec.config.get("OpenStdin").and_then(Value::as_bool).unwrap_or(false),
        };
        let pid = shim::spawn(&spawn).await?;
        if let Err(e) = self.net_attach(h, pid, &plan).await {
            let _ = shim::request(&state_dir, json!({"op": "kill", "signal": libc::SIGKILL, "all": true})).await;
            return Err(e);
        }
        // Attachers that came before start are connected before the process
        // runs, so they miss nothing.
        let pending: Vec<PendingAttach> = h.pending_attach.lock().expect("attach lock poisoned").drain(..).collect();
        for p in pending {
            let stream = shim::open_stream(&state_dir, p.request.clone()).await.map(|(_, s)| s);
            let _ = p.reply.send(stream);
        }
        shim::request(&state_dir, json!({"op": "start"})).await?;
        Ok(pid)
    }

    /// Namespaces joined from another container (`--network`, `--ipc`,
    /// `--pid` set to `container:<name or id>`): that container must run.
    fn namespace_paths(&self, rec: &Record) -> Result<spec::NamespacePaths> {
        let join = |key: &str, ns: &str| -> Result<Option<std::path::PathBuf>> {
            let Some(target) = rec.host_config.get(key).and_then(Value::as_str).and_then(|m| m.strip_prefix("container:")) else {
                return Ok(None);
            };
            let other = self.find(target)?.record();
            if !other.state.running {
                return Err(Error::conflict(format!("cannot join network namespace of a non running container: container {} is exited", other.id)));
            }
            Ok(Some(std::path::PathBuf::from(format!("/proc/{}/ns/{ns}", other.state.pid))))
        };
        Ok(spec::NamespacePaths { network: join("NetworkMode", "net")?, ipc: join("IpcMode", "ipc")?, pid: join("PidMode", "pid")? })
    }

    /// Watches a running container until it exits.
    pub(crate) fn spawn_monitor(self: &Arc<Self>, h: Arc<Handle>) {
        let me = self.clone();
        tokio::spawn(async move {
            let state_dir = me.state_dir(&h.id);
            let watch = shim::open_stream(&state_dir, json!({"op": "attach", "stdin": false, "stdout": false, "stderr": false})).await;
            if let Ok((_, mut stream)) = watch {
                let mut sink = tokio::io::sink();
                let _ = tokio::io::copy(&mut stream, &mut sink).await;
            }
            // The connection closes when the container exits (or the shim
            // dies); the exit record tells which.
            let mut exit = shim::read_exit(&state_dir);
            for _ in 0..100 {
                if exit.is_some() || !shim::alive(&state_dir) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                exit = shim::read_exit(&state_dir);
            }
            me.finish_exit(&h, exit);
            me.after_exit(h).await;
        });
    }

    /// Records an exit: state, unmount, event, waiters.
    pub(crate) fn finish_exit(&self, h: &Arc<Handle>, exit: Option<shim::ExitRecord>) {
        let id = h.id.clone();
        if exit.is_none() {
            // The shim died without recording an exit: its container must
            // not run on unsupervised.
            let rec = h.record();
            // Only if that PID is still this container's (its cgroup names
            // the container): after a reboot the number means nothing.
            let ours = std::fs::read_to_string(format!("/proc/{}/cgroup", rec.state.pid)).is_ok_and(|c| c.contains(&id));
            if rec.state.pid > 0 && ours {
                if let Some(pid) = rustix::process::Pid::from_raw(rec.state.pid as i32) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
            }
        }
        let (code, oom, at) = match &exit {
            Some(e) => (e.exit_code, e.oom_killed, e.exited_at.clone().unwrap_or_else(crate::timefmt::now_rfc3339)),
            None => (255, false, crate::timefmt::now_rfc3339()),
        };
        h.update(|r| {
            r.state.status = "exited".into();
            r.state.running = false;
            r.state.paused = false;
            r.state.restarting = false;
            r.state.pid = 0;
            r.state.exit_code = code;
            r.state.oom_killed = oom;
            r.state.finished_at = at;
            if exit.is_none() {
                r.state.error = "container shim exited unexpectedly".into();
            }
        });
        self.health_stop(h);
        if exit.is_none() {
            self.forget_runtime_state(&h.record());
        }
        self.net_detach(h);
        let _ = rootfs::unmount(&self.paths.container_rootfs(&id));
        self.release_volumes(&id);
        let _ = std::fs::remove_dir_all(self.state_dir(&id));
        if let Err(e) = self.persist(h) {
            tracing::error!(container_id = %id, error = %e, "persist exit");
        }
        self.volume_events(&h.record(), "unmount");
        if oom {
            self.event(h, "oom", &[]);
        }
        self.event(h, "die", &[("exitCode", code.to_string())]);
        h.exits.send_modify(|n| *n += 1);
    }

    /// Restart policy and auto-remove, after an exit.
    async fn after_exit(self: &Arc<Self>, h: Arc<Handle>) {
        let rec = h.record();
        // A stop, kill or restart by the user cancels the policy for this
        // run (dockerd cancels the container's restart manager).
        if !rec.manually_stopped && policy_restarts(&rec) {
            // dockerd's backoff: 100ms doubling up to a minute, reset after
            // 10s of running.
            let ran = crate::timefmt::parse_rfc3339(&rec.state.started_at).map(|t| crate::timefmt::now().0 - t.0).unwrap_or(0);
            let delay = if ran >= 10 { 100 } else { 100u64 << rec.restart_count.min(10) };
            // As dockerd: the count goes up when the restart is decided,
            // and the container is `restarting` until it runs again.
            h.update(|r| {
                r.restart_count += 1;
                r.state.restarting = true;
                r.state.status = "restarting".into();
            });
            let _ = self.persist(&h);
            tokio::time::sleep(Duration::from_millis(delay.min(60_000))).await;
            let _op = h.op.lock().await;
            let rec = h.record();
            // Stopped (see stop_locked), removed or started meanwhile.
            if !rec.state.restarting || rec.state.running || rec.state.status == "removing" {
                return;
            }
            // A policy restart emits `start` only, as dockerd's does.
            let started = match rec.manually_stopped {
                true => false,
                false => self.start_locked(&h).await.map_err(|e| tracing::warn!(container_id = %h.id, error = %e, "restart failed")).is_ok(),
            };
            if !started {
                h.update(|r| {
                    r.state.restarting = false;
                    r.state.status = if r.has_been_started { "exited".into() } else { "created".into() };
                });
                let _ = self.persist(&h);
            }
            return;
        }
        if rec.host_config.get("AutoRemove").and_then(Value::as_bool).unwrap_or(false) {
            if let Err(e) = self.remove(&h.id, false, true).await {
                tracing::warn!(container_id = %h.id, error = %e, "auto-remove failed");
            }
        }
    }

    /// Waits for the container to exit, up to `timeout` (None: forever).
    /// Returns whether it exited.
    async fn wait_exit(&self, h: &Handle, since: u64, timeout: Option<Duration>) -> bool {
        let mut rx = h.exits.subscribe();
        let fut = rx.wait_for(|n| *n > since);
        match timeout {
            Some(t) => tokio::time::timeout(t, fut).await.is_ok(),
            None => fut.await.is_ok(),
        }
    }

    /// `POST /containers/{id}/stop`. Returns false when it was not running
    /// (dockerd answers 304).
    pub async fn stop(self: &Arc<Self>, name_or_id: &str, timeout: Option<i64>, signal: Option<&str>) -> Result<bool> {
        let h = self.find(name_or_id)?;
        let _op = h.op.lock().await;
        h.update(|r| r.manually_stopped = true);
        let _ = self.persist(&h);
        self.stop_locked(&h, timeout, signal).await
    }

    pub(crate) async fn stop_locked(self: &Arc<Self>, h: &Arc<Handle>, timeout: Option<i64>, signal: Option<&str>) -> Result<bool> {
        let rec = h.record();
        if !rec.state.running {
            if !rec.state.restarting {
                return Ok(false);
            }
            // Between two restarts: stopping cancels the next one.
            h.update(|r| {
                r.state.restarting = false;
                r.state.status = "exited".into();
            });
            let _ = self.persist(h);
            self.event(h, "stop", &[]);
            return Ok(true);
        }
        let stop_signal = signal
            .map(str::to_owned)
            .or_else(|| rec.config.get("StopSignal").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_else(|| "SIGTERM".into());
        let sig = parse_signal(&stop_signal)?;
        let timeout = timeout
            .or_else(|| rec.config.get("StopTimeout").and_then(Value::as_i64))
            .unwrap_or(10);
        let since = *h.exits.borrow();
        let state_dir = self.state_dir(&rec.id);
        if rec.state.paused {
            let _ = shim::request(&state_dir, json!({"op": "resume"})).await;
        }
        if shim::request(&state_dir, json!({"op": "kill", "signal": sig, "all": false})).await.is_ok() {
            self.event(h, "kill", &[("signal", sig.to_string())]);
        }
        let graceful = if timeout < 0 { None } else { Some(Duration::from_secs(timeout as u64)) };
        if !self.wait_exit(h, since, graceful).await {
            let _ = shim::request(&state_dir, json!({"op": "kill", "signal": libc::SIGKILL, "all": true})).await;
            self.event(h, "kill", &[("signal", libc::SIGKILL.to_string())]);
            if !self.wait_exit(h, since, Some(Duration::from_secs(30))).await {
                return Err(Error::internal(format!("container {} did not exit after SIGKILL", rec.id)));
            }
        }
        self.event(h, "stop", &[]);
        Ok(true)
    }

    /// `POST /containers/{id}/kill`.
    pub async fn kill(self: &Arc<Self>, name_or_id: &str, signal: &str) -> Result<()> {
        let h = self.find(name_or_id)?;
        let sig = parse_signal(signal)?;
        let rec = h.record();
        if !rec.state.running {
            return Err(not_running(&rec.id));
        }
        if sig == libc::SIGKILL || sig == libc::SIGTERM {
            // An explicit kill is a manual stop for restart policies only
            // when it ends the container; dockerd treats kill like stop.
            h.update(|r| r.manually_stopped = true);
        }
        shim::request(&self.state_dir(&rec.id), json!({"op": "kill", "signal": sig, "all": false})).await?;
        self.event(&h, "kill", &[("signal", sig.to_string())]);
        Ok(())
    }

    /// `POST /containers/{id}/restart`.
    pub async fn restart(self: &Arc<Self>, name_or_id: &str, timeout: Option<i64>, signal: Option<&str>) -> Result<()> {
        let h = self.find(name_or_id)?;
        let _op = h.op.lock().await;
        h.update(|r| r.manually_stopped = true);
        self.stop_locked(&h, timeout, signal).await?;
        h.update(|r| {
            r.manually_stopped = false;
            r.restart_count = 0;
        });
        self.start_locked(&h).await?;
        self.event(&h, "restart", &[]);
        Ok(())
    }

    /// `POST /containers/{id}/pause` and `/unpause`.
    pub async fn pause(self: &Arc<Self>, name_or_id: &str, pause: bool) -> Result<()> {
        let h = self.find(name_or_id)?;
        let _op = h.op.lock().await;
        let rec = h.record();
        if !rec.state.running {
            return Err(not_running(&rec.id));
        }
        if pause && rec.state.paused {
            return Err(Error::conflict(format!("Container {} is already paused", rec.id)));
        }
        if !pause && !rec.state.paused {
            return Err(Error::conflict(format!("Container {} is not paused", rec.id)));
        }
        shim::request(&self.state_dir(&rec.id), json!({"op": if pause { "pause" } else { "resume" }})).await?;
        h.update(|r| {
            r.state.paused = pause;
            r.state.status = if pause { "paused".into() } else { "running".into() };
        });
        self.persist(&h)?;
        self.event(&h, if pause { "pause" } else { "unpause" }, &[]);
        Ok(())
    }

    /// `DELETE /containers/{id}`.
    pub async fn remove(self: &Arc<Self>, name_or_id: &str, force: bool, volumes: bool) -> Result<()> {
        let h = self.find(name_or_id)?;
        let _op = h.op.lock().await;
        let rec = h.record();
        if rec.state.status == "removing" {
            return Err(Error::conflict(format!("removal of container {} is already in progress", rec.id)));
        }
        if rec.state.running {
            if !force {
                let what = if rec.state.paused { "paused" } else { "running" };
                return Err(Error::conflict(format!(
                    "cannot remove container \"/{}\": container is {what}: stop the container before removing or force remove",
                    rec.name
                )));
            }
            h.update(|r| r.manually_stopped = true);
            self.stop_locked(&h, Some(0), Some("SIGKILL")).await?;
        }
        h.update(|r| r.state.status = "removing".into());
        let _ = rootfs::unmount(&self.paths.container_rootfs(&rec.id));
        let _ = std::fs::remove_dir_all(self.state_dir(&rec.id));
        std::fs::remove_dir_all(self.paths.container_dir(&rec.id)).map_err(|e| Error::io("remove container", e))?;
        self.forget(&h);
        if volumes {
            // Anonymous volumes only, as dockerd since API 1.42.
            let names: Vec<String> = rec.mounts.iter().filter(|m| m.typ == "volume").map(|m| m.name.clone()).collect();
            self.volumes.remove_anonymous(&names);
        }
        self.event(&h, "destroy", &[]);
        h.removed.send_replace(true);
        Ok(())
    }

    /// `POST /containers/{id}/wait`: resolves with the exit code. The
    /// returned future is built synchronously so the caller can send
    /// response headers before it resolves (the CLI waits for them).
    pub fn wait(self: &Arc<Self>, name_or_id: &str, condition: &str) -> Result<impl std::future::Future<Output = Result<i64>> + Send + 'static> {
        let h = self.find(name_or_id)?;
        let since = *h.exits.borrow();
        let condition = match condition {
            "" | "not-running" => 0,
            "next-exit" => 1,
            "removed" => 2,
            other => return Err(Error::invalid(format!("invalid condition: \"{other}\""))),
        };
        let mut exits = h.exits.subscribe();
        let mut removed = h.removed.subscribe();
        Ok(async move {
            let rec = h.record();
            match condition {
                0 if !rec.state.running => return Ok(rec.state.exit_code),
                2 => {
                    let _ = removed.wait_for(|r| *r).await;
                    return Ok(h.record().state.exit_code);
                }
                _ => {}
            }
            let _ = exits.wait_for(|n| *n > since).await;
            Ok(h.record().state.exit_code)
        })
    }

    /// Attaches to a container's stdio through its shim. Before start, the
    /// attach waits and is connected right before the process runs.
    pub async fn attach(self: &Arc<Self>, name_or_id: &str, stdin: bool, stdout: bool, stderr: bool) -> Result<(Record, tokio::sync::oneshot::Receiver<Result<tokio::net::UnixStream>>)> {
        let h = self.find(name_or_id)?;
        let rec = h.record();
        // dockerd closes the container's stdin when the client's ends only
        // for StdinOnce without a TTY; a detached `-it` session goes on.
        let stdin_once = rec.config.get("StdinOnce").and_then(Value::as_bool).unwrap_or(false) && !rec.tty();
        let request = json!({"op": "attach", "stdin": stdin, "stdout": stdout, "stderr": stderr, "stdin_once": stdin_once});
        let (tx, rx) = tokio::sync::oneshot::channel();
        if rec.state.running {
            let stream = shim::open_stream(&self.state_dir(&rec.id), request).await.map(|(_, s)| s);
            let _ = tx.send(stream);
        } else {
            h.pending_attach.lock().expect("attach lock poisoned").push(PendingAttach { request, reply: tx });
        }
        Ok((rec, rx))
    }

    /// `POST /containers/{id}/resize`.
    pub async fn resize(&self, name_or_id: &str, width: u16, height: u16) -> Result<()> {
        let h = self.find(name_or_id)?;
        let rec = h.record();
        if !rec.state.running {
            return Err(not_running(&rec.id));
        }
        shim::request(&self.state_dir(&rec.id), json!({"op": "resize", "width": width, "height": height})).await.map(|_| ())
    }
}

/// dockerd's restart-manager decision for a container that exited with
/// its recorded exit code: `always` restarts, `unless-stopped` unless the
/// user stopped it, `on-failure[:N]` after a non-zero exit while fewer than
/// N restarts happened.
pub(crate) fn policy_restarts(rec: &Record) -> bool {
    let policy = rec.host_config.pointer("/RestartPolicy/Name").and_then(Value::as_str).unwrap_or("no");
    let max = rec.host_config.pointer("/RestartPolicy/MaximumRetryCount").and_then(Value::as_u64).unwrap_or(0);
    match policy {
        "always" => true,
        "unless-stopped" => !rec.manually_stopped,
        "on-failure" => rec.state.exit_code != 0 && (max == 0 || rec.restart_count < max),
        _ => false,
    }
}

/// `10m`, `1g`, `512k`, `100` (bytes) as docker's log options write sizes.
fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let (num, mult) = match s.chars().last()? {
        'k' => (&s[..s.len() - 1], 1024),
        'm' => (&s[..s.len() - 1], 1024 * 1024),
        'g' => (&s[..s.len() - 1], 1024 * 1024 * 1024),
        'b' => (&s[..s.len() - 1], 1),
        _ => (&s[..], 1),
    };
    num.trim().parse::<f64>().ok().map(|n| (n * mult as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_by_name_and_number() {
        assert_eq!(parse_signal("SIGTERM").unwrap(), libc::SIGTERM);
        assert_eq!(parse_signal("hup").unwrap(), libc::SIGHUP);
        assert_eq!(parse_signal("9").unwrap(), 9);
        assert!(parse_signal("SIGNOPE").is_err());
        assert!(parse_signal("99").is_err());
    }

    #[test]
    fn log_sizes_parse_like_docker() {
        assert_eq!(parse_size("10m"), Some(10 * 1024 * 1024));
        assert_eq!(parse_size("1k"), Some(1024));
        assert_eq!(parse_size("100"), Some(100));
    }
}

//! `berth vm ...`: start, stop, status, logs, shell, and the hidden
//! supervisor entry point. Presentation only; the VM work is in `berth-vm`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use berth_vm::config::host_cpus;
use berth_vm::context::{docker_config_dir, write_context};
use berth_vm::engine_client::ping_unix;
use berth_vm::image::GuestImage;
use berth_vm::qemu_backend::resolve_accel;
use berth_vm::state::{observe, tail, Phase, SupervisorLock, VmState};
use berth_vm::supervisor::{supervise, Outcome, SuperviseRequest};
use berth_vm::{Accel, BerthHome, StopStep, VmConfig};

use crate::{Format, VmCommand};

/// Runs one `berth vm` subcommand; returns the exit code.
pub async fn run(cmd: VmCommand) -> Result<i32> {
    let home = BerthHome::from_env()?;
    match cmd {
        VmCommand::Start {
            cpus,
            memory,
            disk,
            accel,
            image,
            timeout,
            share,
        } => {
            let mut config = VmConfig::host_default();
            if let Some(c) = cpus {
                config.cpus = c;
            }
            if let Some(m) = memory {
                config.memory_mib = m;
            }
            if let Some(d) = disk {
                config.disk_gib = d;
            }
            config.accel = accel.into();
            if !share.is_empty() {
                config.shares = share;
            }
            start(&home, config, image, Duration::from_secs(timeout)).await
        }
        VmCommand::Stop { grace } => stop(&home, Duration::from_secs(grace)).await,
        VmCommand::Status { format } => status(&home, format),
        VmCommand::Logs { follow } => logs(&home, follow).await,
        VmCommand::Shell => crate::shell::run(&home.shell_socket(), is_running(&home)?).await,
        VmCommand::Supervise { request } => {
            let req: SuperviseRequest =
                serde_json::from_str(&request).context("decode supervise request")?;
            match supervise(home, req).await? {
                Outcome::Stopped => Ok(0),
                Outcome::Crashed => Ok(1),
            }
        }
    }
}

fn is_running(home: &BerthHome) -> Result<bool> {
    Ok(matches!(
        observe(home)?.map(|s| s.phase),
        Some(Phase::Running | Phase::Starting)
    ))
}

/// The guest image directory: `--image`/`BERTH_VM_IMAGE`, else
/// `$BERTH_HOME/vm-image` if it exists, else the checkout's
/// `target/vm-image` next to this binary (`target/debug/berth`) or under the
/// current directory.
fn image_dir(home: &BerthHome, explicit: Option<PathBuf>) -> PathBuf {
    if let Some(dir) = explicit {
        return dir;
    }
    let mut candidates = vec![home.image_dir()];
    if let Ok(exe) = std::env::current_exe() {
        if let Some(target) = exe.parent().and_then(Path::parent) {
            candidates.push(target.join("vm-image"));
        }
    }
    if let Ok(cwd) = std::env::current_dir() {
        candidates.extend(cwd.ancestors().map(|d| d.join("target/vm-image")));
    }
    candidates
        .iter()
        .find(|d| d.join("vmlinuz").exists())
        .cloned()
        .unwrap_or_else(|| home.image_dir())
}

/// The user who should own the engine socket: the sudo caller when run with
/// sudo, else this process's user.
fn socket_owner() -> Option<(u32, u32)> {
    let uid = std::env::var("SUDO_UID").ok()?.parse().ok()?;
    let gid = std::env::var("SUDO_GID").ok()?.parse().ok()?;
    Some((uid, gid))
}

/// Puts the spawned supervisor in its own session, so it outlives this
/// command and the terminal.
fn detach(cmd: &mut tokio::process::Command) {
    // SAFETY: setsid is async-signal-safe and only affects the child.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

async fn start(
    home: &BerthHome,
    mut config: VmConfig,
    image: Option<PathBuf>,
    timeout: Duration,
) -> Result<i32> {
    let begun = Instant::now();
    if let Some(state) = observe(home)? {
        if matches!(
            state.phase,
            Phase::Starting | Phase::Running | Phase::Stopping
        ) {
            println!(
                "berth vm is already running (supervisor pid {}, qemu pid {}); engine: unix://{}",
                state.supervisor_pid,
                state.qemu_pid.unwrap_or(0),
                state.socket.display()
            );
            return Ok(0);
        }
    }
    config.validate(host_cpus())?;
    let dir = image_dir(home, image);
    let image = GuestImage::in_dir(&dir);
    image.check()?;
    std::fs::create_dir_all(home.vm_dir())
        .with_context(|| format!("create {}", home.vm_dir().display()))?;

    if config.accel == Accel::Auto && !home.accel_cache().exists() {
        eprintln!(
            "probing hardware acceleration (up to {} s, cached in {})...",
            berth_vm::qemu_backend::PROBE_TIMEOUT.as_secs(),
            home.accel_cache().display()
        );
    }
    config.accel = resolve_accel(config.accel, home, &image).await;

    let req = SuperviseRequest {
        config: config.clone(),
        image_dir: dir.clone(),
        socket_owner: socket_owner(),
        stop_grace_secs: 30,
    };
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(home.supervisor_log())
        .with_context(|| format!("open {}", home.supervisor_log().display()))?;
    let exe = std::env::current_exe().context("locate the berth binary")?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args(["vm", "_supervise", "--request"])
        .arg(serde_json::to_string(&req)?)
        .env(berth_vm::paths::BERTH_HOME_ENV, home.root())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    detach(&mut cmd);
    let mut supervisor = cmd.spawn().context("start the vm supervisor")?;

    let socket = home.docker_socket();
    let deadline = begun + timeout;
    loop {
        // The supervisor records `running` (and the boot time) when the
        // engine answers on the forwarded port; then the relay must answer.
        let running = VmState::load(home)
            .ok()
            .flatten()
            .is_some_and(|s| s.phase == Phase::Running);
        if running {
            if let Ok(Ok(())) =
                tokio::time::timeout(Duration::from_secs(2), ping_unix(&socket)).await
            {
                break;
            }
        }
        if let Ok(Some(status)) = supervisor.try_wait() {
            let state = observe(home)?;
            if state.as_ref().is_some_and(|s| s.phase == Phase::Stopped) {
                bail!("the vm was stopped before the engine answered");
            }
            let why = state
                .and_then(|s| s.crash)
                .unwrap_or_else(|| tail(&home.supervisor_log(), 10));
            bail!("the vm did not start (supervisor exited: {status}):\n{why}");
        }
        if Instant::now() > deadline {
            eprintln!(
                "berth: the engine did not answer within {} s; stopping the vm",
                timeout.as_secs()
            );
            if let Some(pid) = supervisor.id() {
                // SAFETY: plain kill(2) on our own child's pid.
                unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            }
            let _ = tokio::time::timeout(Duration::from_secs(45), supervisor.wait()).await;
            bail!(
                "engine did not answer on {} within {} s; console tail ({}):\n{}",
                socket.display(),
                timeout.as_secs(),
                home.console_log().display(),
                tail(&home.console_log(), 30)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let context = docker_config_dir(
        std::env::var_os("DOCKER_CONFIG").map(PathBuf::from),
        std::env::var_os("HOME").map(PathBuf::from),
    )
    .map(|dir| write_context(&dir, &socket));
    let boot_ms = VmState::load(home)?.and_then(|s| s.boot_ms);
    println!(
        "berth vm started in {:.1} s (guest boot {}, accel {}, {} cpus, {} MiB)",
        begun.elapsed().as_secs_f64(),
        boot_ms
            .map(|ms| format!("{:.1} s", ms as f64 / 1000.0))
            .unwrap_or_else(|| "?".into()),
        config.accel.qemu_name().unwrap_or("?"),
        config.cpus,
        config.memory_mib
    );
    println!("engine: unix://{}", socket.display());
    match context {
        Some(Ok(path)) => println!(
            "docker context: berth ({}); use `docker --context berth` or DOCKER_HOST=unix://{}",
            path.display(),
            socket.display()
        ),
        Some(Err(e)) => eprintln!("berth: warning: {e:#}"),
        None => {}
    }
    Ok(0)
}

async fn stop(home: &BerthHome, grace: Duration) -> Result<i32> {
    let Some(state) = observe(home)? else {
        println!("berth vm is not running");
        return Ok(0);
    };
    if !SupervisorLock::is_held(home)? {
        match state.phase {
            Phase::Crashed => println!(
                "berth vm is not running (it crashed: {})",
                state
                    .crash
                    .as_deref()
                    .unwrap_or("unknown reason")
                    .lines()
                    .next()
                    .unwrap_or("")
            ),
            _ => println!("berth vm is not running"),
        }
        return Ok(0);
    }
    let begun = Instant::now();
    berth_vm::supervisor::request_stop_grace(home, grace)
        .with_context(|| format!("write {}", home.stop_request().display()))?;
    // SAFETY: plain kill(2); the lock proves the recorded supervisor lives.
    if unsafe { libc::kill(state.supervisor_pid as i32, libc::SIGTERM) } != 0 {
        bail!(
            "signal the vm supervisor (pid {}): {}",
            state.supervisor_pid,
            std::io::Error::last_os_error()
        );
    }
    let wait = grace + Duration::from_secs(15);
    if tokio::time::timeout(wait, SupervisorLock::wait_released(home))
        .await
        .is_err()
    {
        bail!(
            "the vm supervisor (pid {}) did not exit within {} s",
            state.supervisor_pid,
            wait.as_secs()
        );
    }
    let after = VmState::load(home)?;
    let steps = after
        .as_ref()
        .and_then(|s| s.stop.as_ref())
        .map(|r| {
            r.steps
                .iter()
                .map(|s| match s {
                    StopStep::PowerdownRequested => "powerdown requested".to_string(),
                    StopStep::PowerdownFailed { reason } => format!("powerdown failed ({reason})"),
                    StopStep::Exited => "guest shut down".to_string(),
                    StopStep::TimedOut => format!("no shutdown within {} s", grace.as_secs()),
                    StopStep::Killed => "qemu killed".to_string(),
                })
                .collect::<Vec<_>>()
                .join(" -> ")
        })
        .unwrap_or_default();
    let forced = after
        .as_ref()
        .and_then(|s| s.stop.as_ref())
        .is_some_and(|r| r.forced);
    println!(
        "berth vm stopped in {:.1} s{}: {steps}",
        begun.elapsed().as_secs_f64(),
        if forced { " (forced)" } else { "" }
    );
    Ok(0)
}

fn status(home: &BerthHome, format: Format) -> Result<i32> {
    let state = observe(home)?;
    if format == Format::Json {
        let v = match &state {
            None => serde_json::json!({ "phase": "stopped" }),
            Some(s) => serde_json::to_value(s)?,
        };
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    let Some(s) = state else {
        println!("state:   stopped (never started)");
        return Ok(0);
    };
    let phase = match s.phase {
        Phase::Starting => "starting",
        Phase::Running => "running",
        Phase::Stopping => "stopping",
        Phase::Stopped => "stopped",
        Phase::Crashed => "crashed",
    };
    println!("state:   {phase}");
    let live = matches!(s.phase, Phase::Starting | Phase::Running | Phase::Stopping);
    if live {
        println!(
            "pid:     qemu {} (supervisor {})",
            s.qemu_pid
                .map(|p| p.to_string())
                .unwrap_or_else(|| "-".into()),
            s.supervisor_pid
        );
        println!(
            "up:      {} s",
            berth_vm::state::unix_now().saturating_sub(s.started_at)
        );
    }
    if let Some(ms) = s.boot_ms {
        println!("boot:    {:.1} s", ms as f64 / 1000.0);
    }
    println!(
        "vm:      accel {}, {} cpus, {} MiB memory, {} GiB disk",
        s.accel.qemu_name().unwrap_or("auto"),
        s.cpus,
        s.memory_mib,
        s.disk_gib
    );
    println!("image:   {}", s.image_dir.display());
    if live {
        println!("socket:  unix://{}", s.socket.display());
        let ports: Vec<String> = s.forwards.iter().map(|f| f.to_string()).collect();
        println!(
            "ports:   {}",
            if ports.is_empty() {
                "-".to_string()
            } else {
                ports.join(", ")
            }
        );
        for w in &s.warnings {
            println!("warning: {w}");
        }
    }
    if let (Phase::Crashed, Some(c)) = (s.phase, &s.crash) {
        println!("crash:   {c}");
    }
    if let (Phase::Stopped, Some(r)) = (s.phase, &s.stop) {
        println!(
            "stop:    {:.1} s{}",
            r.elapsed.as_secs_f64(),
            if r.forced { " (forced)" } else { "" }
        );
    }
    Ok(0)
}

/// Prints the labelled logs; with `follow`, keeps printing new lines
/// (polling the files' length: there is no portable change event for a file
/// another process appends to).
async fn logs(home: &BerthHome, follow: bool) -> Result<i32> {
    let sources = [
        ("console", home.console_log()),
        ("engine", home.engine_log()),
        ("host", home.supervisor_log()),
    ];
    let mut offsets = Vec::new();
    for (label, path) in &sources {
        let bytes = std::fs::read(path).unwrap_or_default();
        if !follow {
            println!("==> {label}: {} <==", path.display());
        }
        print_labelled(label, &bytes, follow);
        offsets.push(bytes.len() as u64);
    }
    if !follow {
        return Ok(0);
    }
    loop {
        for ((label, path), off) in sources.iter().zip(offsets.iter_mut()) {
            let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            if len < *off {
                *off = 0; // replaced by a new boot
            }
            if len > *off {
                use std::io::{Read, Seek, SeekFrom};
                let mut f = std::fs::File::open(path)?;
                f.seek(SeekFrom::Start(*off))?;
                let mut buf = Vec::new();
                f.take(len - *off).read_to_end(&mut buf)?;
                // Print whole lines only; keep a partial one for next time.
                let end = buf
                    .iter()
                    .rposition(|b| *b == b'\n')
                    .map(|i| i + 1)
                    .unwrap_or(0);
                print_labelled(label, &buf[..end], true);
                *off += end as u64;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn print_labelled(label: &str, bytes: &[u8], prefix: bool) {
    use std::io::Write;
    let text = String::from_utf8_lossy(bytes);
    let mut out = std::io::stdout().lock();
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        let _ = if prefix {
            writeln!(out, "[{label}] {line}")
        } else {
            writeln!(out, "{line}")
        };
    }
    let _ = out.flush();
}

//! `berthd`: parses dockerd's flags, opens the engine and serves the Docker
//! Engine API until SIGTERM/SIGINT. All the work is in `berth-engine`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use berth_engine::config::{validate_mirror, DaemonJson, EngineConfig};
use berth_engine::engine::Engine;
use berth_engine::server::{self, Host, TlsFiles};
use clap::Parser;

const DEFAULT_CONFIG: &str = "/etc/berth/daemon.json";

/// The Berth container engine. Speaks the Docker Engine API.
#[derive(Parser, Debug)]
#[command(name = "berthd", version, about)]
struct Flags {
    /// Root directory of persistent state.
    #[arg(long)]
    data_root: Option<PathBuf>,
    /// Root directory of execution state.
    #[arg(long)]
    exec_root: Option<PathBuf>,
    /// Address to serve: unix:///path or tcp://127.0.0.1:port (repeatable).
    #[arg(short = 'H', long = "host")]
    host: Vec<String>,
    /// File to write the daemon's PID to.
    #[arg(long)]
    pidfile: Option<PathBuf>,
    /// daemon.json with settings (dockerd's format).
    #[arg(long)]
    config_file: Option<PathBuf>,
    /// Registry to reach over plain HTTP or unverified TLS (repeatable).
    #[arg(long = "insecure-registry")]
    insecure_registry: Vec<String>,
    /// Preferred Docker Hub mirror (repeatable).
    #[arg(long = "registry-mirror")]
    registry_mirror: Vec<String>,
    /// debug, info, warn, error or fatal.
    #[arg(short = 'l', long)]
    log_level: Option<String>,
    /// Enable debug logging.
    #[arg(short = 'D', long)]
    debug: bool,
    /// Keep containers running when the daemon stops.
    #[arg(long)]
    live_restore: bool,
    /// OCI runtime for containers that name none (crun, runc, youki, or a
    /// name from daemon.json `runtimes`).
    #[arg(long)]
    default_runtime: Option<String>,
    /// Serve TCP addresses over TLS.
    #[arg(long)]
    tls: bool,
    /// Serve TLS and require client certificates signed by --tlscacert.
    #[arg(long)]
    tlsverify: bool,
    /// CA that signs accepted client certificates.
    #[arg(long)]
    tlscacert: Option<PathBuf>,
    /// Server certificate (PEM).
    #[arg(long)]
    tlscert: Option<PathBuf>,
    /// Server key (PEM).
    #[arg(long)]
    tlskey: Option<PathBuf>,
    /// `none` to create no default bridge.
    #[arg(short = 'b', long)]
    bridge: Option<String>,
    /// The default bridge's address and prefix (172.20.0.1/16).
    #[arg(long)]
    bip: Option<String>,
    /// Manage NAT and published-port rules (nftables).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    iptables: Option<bool>,
    /// Enable IPv4 forwarding.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    ip_forward: Option<bool>,
    /// The address `host-gateway` stands for in --add-host.
    #[arg(long)]
    host_gateway_ip: Option<std::net::Ipv4Addr>,
    /// Set by berth-init in the Berth VM: ports published on a loopback
    /// address also answer on the guest's interface, where the host's
    /// forwards arrive.
    #[arg(long, hide = true)]
    vm_guest: bool,
}

struct Settings {
    engine: EngineConfig,
    hosts: Vec<Host>,
    tls: Option<TlsFiles>,
    pidfile: Option<PathBuf>,
    log_level: String,
}

fn settings(flags: Flags) -> Result<Settings> {
    let (file, path) = match &flags.config_file {
        Some(p) => (DaemonJson::load(p)?, Some(p.clone())),
        None if Path::new(DEFAULT_CONFIG).exists() => (DaemonJson::load(Path::new(DEFAULT_CONFIG))?, Some(PathBuf::from(DEFAULT_CONFIG))),
        None => (DaemonJson::default(), None),
    };
    // dockerd refuses a setting given both as a flag and in the file.
    let mut given = Vec::new();
    if flags.data_root.is_some() { given.push("data-root"); }
    if flags.exec_root.is_some() { given.push("exec-root"); }
    if !flags.host.is_empty() { given.push("hosts"); }
    if flags.pidfile.is_some() { given.push("pidfile"); }
    if !flags.registry_mirror.is_empty() { given.push("registry-mirrors"); }
    if !flags.insecure_registry.is_empty() { given.push("insecure-registries"); }
    if flags.log_level.is_some() { given.push("log-level"); }
    if flags.bridge.is_some() { given.push("bridge"); }
    if flags.bip.is_some() { given.push("bip"); }
    if flags.iptables.is_some() { given.push("iptables"); }
    if flags.ip_forward.is_some() { given.push("ip-forward"); }
    if flags.host_gateway_ip.is_some() { given.push("host-gateway-ip"); }
    let conflicts: Vec<String> = file.set_keys().into_iter().filter(|k| given.contains(k)).map(|k| format!("{k}: (from flag and file)")).collect();
    if !conflicts.is_empty() {
        bail!(
            "unable to configure the Docker daemon with file {}: the following directives are specified both as a flag and in the configuration file: {}",
            path.map(|p| p.display().to_string()).unwrap_or_default(),
            conflicts.join(", ")
        );
    }
    let mirrors = if flags.registry_mirror.is_empty() { file.registry_mirrors.clone().unwrap_or_default() } else { flags.registry_mirror };
    let mirrors = mirrors.iter().map(|m| validate_mirror(m)).collect::<Result<Vec<_>, _>>()?;
    let hosts = if flags.host.is_empty() {
        file.hosts.clone().unwrap_or_else(|| vec!["unix:///var/run/berth/docker.sock".to_owned()])
    } else {
        flags.host
    };
    let hosts = hosts.iter().map(|h| Host::parse(h)).collect::<Result<Vec<_>, _>>()?;
    let log_level = flags
        .log_level
        .or(file.log_level.clone())
        .unwrap_or_else(|| if flags.debug || file.debug == Some(true) { "debug".into() } else { "info".into() });
    let engine = EngineConfig {
        data_root: flags.data_root.or(file.data_root.clone()).unwrap_or_else(|| PathBuf::from("/var/lib/berth")),
        exec_root: flags.exec_root.or(file.exec_root.clone()).unwrap_or_else(|| PathBuf::from("/var/run/berth")),
        registry_mirrors: mirrors,
        insecure_registries: if flags.insecure_registry.is_empty() { file.insecure_registries.clone().unwrap_or_default() } else { flags.insecure_registry },
        live_restore: flags.live_restore || file.live_restore == Some(true),
        hosts: hosts.iter().map(ToString::to_string).collect(),
        default_runtime: flags.default_runtime.clone().or(file.default_runtime.clone()),
        runtimes: file.runtimes.as_ref().map(berth_engine::config::runtime_paths).unwrap_or_default(),
        bridge: flags.bridge.clone().or(file.bridge.clone()),
        bip: flags.bip.clone().or(file.bip.clone()),
        iptables: flags.iptables.or(file.iptables).unwrap_or(true),
        ip_forward: flags.ip_forward.or(file.ip_forward).unwrap_or(true),
        host_gateway_ip: flags.host_gateway_ip.or(file.host_gateway_ip),
        vm_guest: flags.vm_guest,
    };
    let verify = flags.tlsverify || file.tlsverify == Some(true);
    let tls = if verify || flags.tls || file.tls == Some(true) {
        let cert = flags.tlscert.clone().or(file.tlscert.clone());
        let key = flags.tlskey.clone().or(file.tlskey.clone());
        let (Some(cert), Some(key)) = (cert, key) else { bail!("TLS needs --tlscert and --tlskey") };
        Some(TlsFiles { ca: flags.tlscacert.clone().or(file.tlscacert.clone()), cert, key, verify })
    } else {
        None
    };
    Ok(Settings { engine, hosts, tls, pidfile: flags.pidfile.or(file.pidfile), log_level })
}

fn init_logging(level: &str) -> Result<()> {
    let filter = match level {
        "debug" | "info" | "warn" | "error" | "trace" => level,
        "fatal" | "panic" => "error",
        other => bail!("unable to parse logging level: {other}"),
    };
    let filter = format!("{filter},hyper=info,reqwest=info,h2=info,rustls=info");
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    Ok(())
}

/// Writes the PID file, refusing to overwrite one of a live process.
fn write_pidfile(path: &Path) -> Result<()> {
    if let Ok(old) = std::fs::read_to_string(path) {
        if let Ok(pid) = old.trim().parse::<i32>() {
            if pid != std::process::id() as i32 && Path::new(&format!("/proc/{pid}")).exists() {
                bail!("pid file found, ensure berthd is not running or delete {}", path.display());
            }
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, format!("{}\n", std::process::id())).with_context(|| format!("write pid file {}", path.display()))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    tracing::info!("shutting down");
}

fn main() {
    if let Err(e) = run() {
        eprintln!("berthd: {e:#}");
        std::process::exit(1);
    }
}

/// Keeps the idle footprint small: glibc gives every thread that allocates
/// its own arena and keeps freed memory in them; two arenas are plenty for
/// a daemon whose work is mostly I/O.
fn limit_malloc_arenas() {
    // SAFETY: mallopt only changes allocator tuning; called before any
    // thread is started.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn run() -> Result<()> {
    limit_malloc_arenas();
    let settings = settings(Flags::parse())?;
    init_logging(&settings.log_level)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_keep_alive(std::time::Duration::from_secs(5))
        .enable_all()
        .build()
        .context("start runtime")?;
    runtime.block_on(async {
        let engine = Engine::open(settings.engine.clone())?;
        engine.networks.init().await.context("set up networking")?;
        engine.containers.reconcile();
        if let Some(p) = &settings.pidfile {
            write_pidfile(p)?;
        }
        tracing::info!(data_root = %settings.engine.data_root.display(), hosts = ?settings.engine.hosts, "berthd ready");
        let served = server::serve(engine.clone(), &settings.hosts, settings.tls.as_ref(), shutdown_signal()).await;
        // Without running containers nothing needs the bridges and rules.
        if engine.containers.counts().1 + engine.containers.counts().2 == 0 {
            engine.networks.teardown_host().await;
        }
        if let Some(p) = &settings.pidfile {
            let _ = std::fs::remove_file(p);
        }
        for h in &settings.hosts {
            if let Host::Unix(path) = h {
                let _ = std::fs::remove_file(path);
            }
        }
        served?;
        Ok(())
    })
}

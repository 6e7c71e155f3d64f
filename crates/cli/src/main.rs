//! `berth`: the command-line front of the Berth VM.
//!
//! Parses arguments and reports; the work is in `berth-vm`. `berth vm start`
//! checks the image, resolves the accelerator, starts a detached supervisor
//! (`berth vm _supervise`, hidden) that owns QEMU and the engine socket, and
//! returns once the engine answers through `$BERTH_HOME/run/docker.sock`.
//!
//! Exit codes: 0 on success (including `start` when the VM is already
//! running and `stop` when it is already stopped: both are idempotent), 1 on
//! any failure, 2 on a usage error.

mod shell;
mod vm;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Berth: a Docker-compatible container platform.
#[derive(Debug, Parser)]
#[command(name = "berth", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Manage the engine VM.
    #[command(subcommand)]
    Vm(VmCommand),
}

/// Accelerator choice on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum AccelArg {
    Auto,
    Kvm,
    Hvf,
    Whpx,
    Tcg,
}

impl From<AccelArg> for berth_vm::Accel {
    fn from(a: AccelArg) -> Self {
        match a {
            AccelArg::Auto => Self::Auto,
            AccelArg::Kvm => Self::Kvm,
            AccelArg::Hvf => Self::Hvf,
            AccelArg::Whpx => Self::Whpx,
            AccelArg::Tcg => Self::Tcg,
        }
    }
}

/// Output format of `status`.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Format {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum VmCommand {
    /// Boot the VM; returns once the engine answers.
    Start {
        /// Virtual CPUs.
        #[arg(long)]
        cpus: Option<u32>,
        /// Memory in MiB.
        #[arg(long)]
        memory: Option<u64>,
        /// Data disk size in GiB (grown, never shrunk).
        #[arg(long)]
        disk: Option<u64>,
        /// Hardware acceleration; auto probes it (cached) and falls back to tcg.
        #[arg(long, value_enum, default_value = "auto")]
        accel: AccelArg,
        /// Guest image directory (vmlinuz, initrd.img, rootfs.img).
        #[arg(long, env = "BERTH_VM_IMAGE")]
        image: Option<PathBuf>,
        /// Host folder shared into the VM at the same path (repeatable;
        /// replaces the default of your home folder and /tmp).
        #[arg(long)]
        share: Vec<PathBuf>,
        /// Seconds to wait for the engine to answer.
        #[arg(long, default_value_t = 180)]
        timeout: u64,
    },
    /// Shut the VM down gracefully (kills it after the grace period).
    Stop {
        /// Seconds the guest gets to power down before QEMU is killed.
        #[arg(long, default_value_t = 30)]
        grace: u64,
    },
    /// Show whether the VM runs, and how.
    Status {
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Print the guest console and engine logs.
    Logs {
        /// Keep printing as the logs grow.
        #[arg(short, long)]
        follow: bool,
    },
    /// Open a root shell in the guest (Ctrl-] detaches).
    Shell,
    /// Run the supervisor (internal; started by `start`).
    #[command(name = "_supervise", hide = true)]
    Supervise {
        /// The supervise request, as JSON.
        #[arg(long)]
        request: String,
    },
}

fn main() {
    let cli = Cli::parse();
    let supervisor = matches!(cli.command, Command::Vm(VmCommand::Supervise { .. }));
    if !supervisor {
        // Like other Unix tools, end quietly when the reader of our output
        // goes away (`berth vm logs | head`) instead of failing to print.
        // The supervisor keeps Rust's default (ignored), as its relay must
        // survive clients that hang up.
        // SAFETY: setting a signal disposition before any threads start.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let filter = std::env::var("BERTH_LOG")
        .unwrap_or_else(|_| if supervisor { "info" } else { "warn" }.to_string());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime builds");
    let code = rt.block_on(async {
        let Command::Vm(cmd) = cli.command;
        match vm::run(cmd).await {
            Ok(code) => code,
            Err(e) => {
                eprintln!("berth: {e:#}");
                1
            }
        }
    });
    std::process::exit(code);
}

//! Becoming a daemon and the start-up handshake.
//!
//! berthd reads exactly one line from our stdout: `created <pid>` or
//! `error <message>`. The process it spawned forks and exits at once; the
//! child detaches (own session, cwd `/`, stdio on /dev/null and `shim.log`),
//! becomes a child subreaper, creates the container, binds the control
//! socket, and only then answers.

use std::fmt;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::SystemTime;

use rustix::fs::{Mode, OFlags};

use crate::cli::Config;
use crate::clock::rfc3339_nano;
use crate::error::{Context, Result};
use crate::paths::StateDir;
use crate::shim::{self, Shim};
use crate::sys::{self, Forked, SignalFd};

/// The write end of berthd's pipe, until the one line is written.
struct Handshake(Option<OwnedFd>);

impl Handshake {
    fn send(&mut self, line: &str) {
        if let Some(fd) = self.0.take() {
            let mut f = std::fs::File::from(fd);
            let _ = f.write_all(format!("{}\n", one_line(line)).as_bytes());
        }
    }
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// For failures before there is anything to daemonize.
pub fn handshake_to_stdout(line: &str) {
    let _ = std::io::stdout().write_all(format!("{}\n", one_line(line)).as_bytes());
}

/// A line in `shim.log` (our stderr once detached).
pub fn diag(args: fmt::Arguments<'_>) {
    let line = format!("{} {args}\n", rfc3339_nano(SystemTime::now()));
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// Runs the shim; returns the exit status of the process that called it.
pub fn run(cfg: Config) -> i32 {
    sys::close_fds_from(3);
    let cfg = match absolute(cfg) {
        Ok(c) => c,
        Err(e) => {
            handshake_to_stdout(&format!("error {e}"));
            return 2;
        }
    };
    let pipe = match rustix::io::fcntl_dupfd_cloexec(rustix::stdio::stdout(), 3) {
        Ok(fd) => fd,
        Err(e) => {
            handshake_to_stdout(&format!("error dup handshake pipe: {e}"));
            return 1;
        }
    };
    let mut hs = Handshake(Some(pipe));
    match sys::fork() {
        Err(e) => {
            hs.send(&format!("error fork: {e}"));
            return 1;
        }
        // berthd reaps this one; the child carries on, reparented.
        Ok(Forked::Parent) => sys::exit_now(0),
        Ok(Forked::Child) => {}
    }
    match start(&cfg, &mut hs) {
        Ok(shim) => {
            shim::serve(shim);
            0
        }
        Err(e) => {
            diag(format_args!("start failed: {e}"));
            hs.send(&format!("error {e}"));
            1
        }
    }
}

/// Everything up to and including the `created` line.
fn start(cfg: &Config, hs: &mut Handshake) -> Result<Shim> {
    rustix::process::setsid().context("setsid")?;
    rustix::process::chdir("/").context("chdir /")?;
    let null = OpenOptions::new().read(true).write(true).open("/dev/null").context("open /dev/null")?;
    rustix::stdio::dup2_stdin(&null).context("stdin to /dev/null")?;
    rustix::stdio::dup2_stdout(&null).context("stdout to /dev/null")?;
    let dir_fd = rustix::fs::open(&cfg.state, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .context(format_args!("open state dir {}", cfg.state.display()))?;
    let paths = StateDir::new(cfg.state.clone(), dir_fd);
    // Our diagnostics (and a panic message, should there ever be one).
    match OpenOptions::new().create(true).append(true).mode(0o600).open(paths.shim_log()) {
        Ok(log) => rustix::stdio::dup2_stderr(&log).context("stderr to shim.log")?,
        Err(_) => rustix::stdio::dup2_stderr(&null).context("stderr to /dev/null")?,
    }
    drop(null);
    diag(format_args!("shim {} starting for container {}", std::process::id(), cfg.id));

    rustix::process::set_child_subreaper(Some(rustix::process::getpid())).context("become child subreaper")?;
    sys::ignore_sigpipe();
    let sig = SignalFd::new(&[libc::SIGCHLD, libc::SIGINT, libc::SIGHUP]).context("signalfd")?;
    let pid_file = paths.shim_pid();
    shim::write_atomic(&pid_file, format!("{}\n", std::process::id()).as_bytes()).context("write shim.pid")?;

    let mut shim = match Shim::create(cfg, paths, sig) {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(&pid_file);
            return Err(e);
        }
    };
    if let Err(e) = shim.listen() {
        shim.abort();
        return Err(e);
    }
    hs.send(&format!("created {}", shim.init_pid()));
    diag(format_args!("container {} created, init pid {}", cfg.id, shim.init_pid()));
    Ok(shim)
}

/// Paths made absolute before the chdir to `/`.
fn absolute(mut cfg: Config) -> Result<Config> {
    fn abs(p: &PathBuf) -> Result<PathBuf> {
        std::path::absolute(p).context(format_args!("resolve {}", p.display()))
    }
    cfg.bundle = abs(&cfg.bundle)?;
    cfg.state = abs(&cfg.state)?;
    if cfg.runtime.components().count() > 1 {
        cfg.runtime = abs(&cfg.runtime)?;
    }
    if let Some(r) = &cfg.runtime_root {
        cfg.runtime_root = Some(abs(r)?);
    }
    if let Some(l) = cfg.log.as_mut() {
        l.path = abs(&l.path)?;
    }
    Ok(cfg)
}

//! `berth-shim`: the supervisor of one container.
//!
//! berthd starts one shim per container. The shim owns, for that container's
//! whole life and independently of berthd (which may be killed and restarted
//! meanwhile):
//!
//! - running the OCI runtime (`create`, `start`, `kill`, `pause`, `resume`,
//!   `exec`, `delete`) through its command line;
//! - the container's stdio: pipes, or the pty master received over the
//!   console socket;
//! - the json-file log (Docker's format, with rotation);
//! - attach and exec streams, served on `STATE_DIR/shim.sock` (one JSON line
//!   request, one JSON line answer, then optionally a stream);
//! - reaping (it is a child subreaper) and recording the exit in
//!   `STATE_DIR/exit.json`.
//!
//! It does not own the bundle, the rootfs, networking, cgroup limits or the
//! container's metadata: berthd prepares those before it starts the shim and
//! reads what the shim leaves in the state directory.
//!
//! One thread, one poll(2) loop, std + rustix/libc: the resident size stays
//! well under 2 MiB.

/// A line in `shim.log`.
macro_rules! diag {
    ($($arg:tt)*) => {
        $crate::daemon::diag(format_args!($($arg)*))
    };
}
pub(crate) use diag;

mod cli;
mod clock;
mod daemon;
mod error;
mod jsonlog;
mod paths;
mod runtime;
mod shim;
mod stdio;
mod sys;

fn main() {
    let code = match cli::parse(std::env::args_os().skip(1)) {
        Ok(cfg) => daemon::run(cfg),
        Err(e) => {
            // berthd waits for one line on stdout, whatever happens.
            daemon::handshake_to_stdout(&format!("error {e}"));
            2
        }
    };
    std::process::exit(code);
}

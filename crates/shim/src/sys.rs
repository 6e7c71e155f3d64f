//! The OS calls rustix does not wrap safely (fork, signal masks, signalfd,
//! arbitrary signal numbers), and small fd helpers. All `unsafe` of the
//! crate lives here.

use std::io;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};

use rustix::fs::OFlags;
use rustix::pipe::PipeFlags;

pub enum Forked {
    Parent,
    Child,
}

/// fork(2). Call only while the process has one thread (the shim never
/// starts another).
pub fn fork() -> io::Result<Forked> {
    // SAFETY: the shim is single-threaded, so the child gets a consistent
    // copy of the whole process (no lock can be held by a vanished thread).
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        _ => Ok(Forked::Parent),
    }
}

/// Leaves at once, running no destructors and flushing nothing: for the
/// parent half of the daemonizing fork.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit has no preconditions.
    unsafe { libc::_exit(code) }
}

/// Closes every inherited fd from `first` on: the container must only see
/// the stdio the shim gives it, whatever berthd leaked to us.
pub fn close_fds_from(first: u32) {
    // SAFETY: close_range takes plain integers; no fd the process uses at
    // this point (only 0-2) is in the range.
    let r = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0u32) };
    if r != 0 {
        // Kernels before 5.9: mark them close-on-exec one by one instead.
        for fd in first as i32..1024 {
            // SAFETY: F_SETFD on an fd that may not exist only fails.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }
}

/// Ignores SIGPIPE: a vanished attach client must be an EPIPE, not a death.
/// (std restores the default disposition in every child it spawns.)
pub fn ignore_sigpipe() {
    // SAFETY: installing SIG_IGN has no preconditions.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}

/// Signals delivered as readable data on an fd instead of handlers. They are
/// blocked, not ignored: std clears the mask in the children it spawns, so
/// the runtime and the container start with default dispositions.
pub struct SignalFd(OwnedFd);

impl SignalFd {
    pub fn new(signals: &[libc::c_int]) -> io::Result<Self> {
        // SAFETY: `set` is initialised by sigemptyset before any other use;
        // sigprocmask and signalfd only read it.
        unsafe {
            let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
            libc::sigemptyset(set.as_mut_ptr());
            for &s in signals {
                libc::sigaddset(set.as_mut_ptr(), s);
            }
            let set = set.assume_init();
            if libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
            let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(SignalFd(OwnedFd::from_raw_fd(fd)))
        }
    }

    /// Consumes every pending signal. The shim only needs to know "something
    /// happened": after SIGCHLD it reaps with WNOHANG until nothing is left,
    /// and the others are ignored.
    pub fn drain(&self) {
        let mut buf = [0u8; 128 * 8];
        while let Ok(n) = rustix::io::read(&self.0, &mut buf) {
            if n == 0 {
                break;
            }
        }
    }
}

impl AsFd for SignalFd {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// kill(2) with any signal number (rustix only takes named signals).
pub fn kill(pid: i32, sig: i32) -> io::Result<()> {
    if pid <= 0 {
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    // SAFETY: kill takes plain integers; pid > 0 names one process.
    if unsafe { libc::kill(pid, sig) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// How a reaped child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Exited(i32),
    Signaled(i32),
}

/// Reaps one exited child, any child (`waitpid(-1, WNOHANG|__WALL)`):
/// `Ok(None)` when none has exited, `Err(ECHILD)` when there are none.
/// (rustix's `waitpid(None)` waits for our process group only, and the
/// container is in another.)
pub fn reap_one() -> io::Result<Option<(i32, Ended)>> {
    let mut status: libc::c_int = 0;
    // SAFETY: `status` is a valid, writable c_int for the call's duration.
    let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG | libc::__WALL) };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        return Ok(None);
    }
    let ended = if libc::WIFSIGNALED(status) {
        Ended::Signaled(libc::WTERMSIG(status))
    } else {
        Ended::Exited(libc::WEXITSTATUS(status))
    };
    Ok(Some((pid, ended)))
}

pub fn set_nonblocking(fd: impl AsFd) -> io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(&fd)?;
    rustix::fs::fcntl_setfl(&fd, flags | OFlags::NONBLOCK)?;
    Ok(())
}

/// A close-on-exec pipe, (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::pipe::pipe_with(PipeFlags::CLOEXEC)?)
}

/// Reads whatever is available without blocking, up to `limit` bytes, from
/// a non-blocking fd.
pub fn read_available(fd: impl AsFd, limit: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while out.len() < limit {
        match rustix::io::read(&fd, &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    out
}

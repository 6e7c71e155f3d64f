//! Thin wrappers over the Linux system calls berth-init makes. Every wrapper
//! returns `io::Result` with the operation named by the caller's context; no
//! wrapper panics.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn cstr(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// mount(2). `source`/`fstype`/`data` may be empty strings.
pub fn mount(source: &str, target: &Path, fstype: &str, flags: libc::c_ulong, data: &str) -> io::Result<()> {
    let src = cstr(OsStr::new(source))?;
    let tgt = cstr(target.as_os_str())?;
    let fs = cstr(OsStr::new(fstype))?;
    let dat = cstr(OsStr::new(data))?;
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the call.
    check(unsafe {
        libc::mount(
            if source.is_empty() { std::ptr::null() } else { src.as_ptr() },
            tgt.as_ptr(),
            if fstype.is_empty() { std::ptr::null() } else { fs.as_ptr() },
            flags,
            if data.is_empty() { std::ptr::null() } else { dat.as_ptr().cast() },
        )
    })
}

/// umount2(2).
pub fn umount(target: &Path, flags: libc::c_int) -> io::Result<()> {
    let tgt = cstr(target.as_os_str())?;
    // SAFETY: valid NUL-terminated path.
    check(unsafe { libc::umount2(tgt.as_ptr(), flags) })
}

/// finit_module(2) with no parameters.
pub fn finit_module(path: &Path) -> io::Result<()> {
    let f = std::fs::File::open(path)?;
    use std::os::fd::AsRawFd;
    let params = c"";
    // SAFETY: fd is open for the duration of the call; params is a valid C string.
    let rc = unsafe { libc::syscall(libc::SYS_finit_module, f.as_raw_fd(), params.as_ptr(), 0) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

pub fn sethostname(name: &str) -> io::Result<()> {
    // SAFETY: pointer and length describe a valid byte slice.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) })
}

pub fn chroot(path: &Path) -> io::Result<()> {
    let p = cstr(path.as_os_str())?;
    // SAFETY: valid NUL-terminated path.
    check(unsafe { libc::chroot(p.as_ptr()) })
}

pub fn sync() {
    // SAFETY: sync(2) has no arguments and cannot fail.
    unsafe { libc::sync() }
}

/// reboot(2) with RB_POWER_OFF. Returns only on failure.
pub fn power_off() -> io::Error {
    // SAFETY: reboot(2) with a valid command; needs CAP_SYS_BOOT which PID 1 has.
    unsafe { libc::reboot(libc::RB_POWER_OFF) };
    io::Error::last_os_error()
}

pub fn kill(pid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: kill(2) takes plain integers.
    check(unsafe { libc::kill(pid, sig) })
}

/// Signals PID 1 handles itself (blocked in every thread, taken with
/// sigtimedwait in the main loop).
/// SIGUSR1/SIGUSR2 are what busybox `halt`/`poweroff` send to init.
pub const HANDLED_SIGNALS: [i32; 6] = [libc::SIGCHLD, libc::SIGTERM, libc::SIGINT, libc::SIGPWR, libc::SIGUSR1, libc::SIGUSR2];

fn handled_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in HANDLED_SIGNALS {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

extern "C" fn noop_handler(_: libc::c_int) {}

/// Installs no-op handlers (the kernel drops signals to PID 1 whose handler is
/// SIG_DFL) and blocks the handled signals. Must run before any thread starts
/// so every thread inherits the mask. Children get an empty mask from std.
pub fn block_signals() -> io::Result<()> {
    for s in HANDLED_SIGNALS {
        // SAFETY: sigaction struct zero-initialised then filled; handler is a valid extern fn.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = noop_handler as extern "C" fn(libc::c_int) as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            check(libc::sigaction(s, &sa, std::ptr::null_mut()))?;
        }
    }
    let set = handled_set();
    // SAFETY: valid sigset pointer.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Gives a command's child an empty signal mask (the mask survives exec, and
/// berth-init blocks the signals it waits for).
pub fn command(program: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(program);
    // SAFETY: the closure only calls async-signal-safe functions.
    unsafe {
        cmd.pre_exec(|| {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            let rc = libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
            Ok(())
        });
    }
    cmd
}

/// Waits up to `timeout` for one of the handled signals; `None` on timeout.
pub fn wait_signal(timeout: std::time::Duration) -> Option<i32> {
    let set = handled_set();
    let ts = libc::timespec { tv_sec: timeout.as_secs() as libc::time_t, tv_nsec: timeout.subsec_nanos() as libc::c_long };
    // SAFETY: valid set and timespec; siginfo may be null.
    let rc = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &ts) };
    if rc > 0 {
        Some(rc)
    } else {
        None
    }
}

/// Exit of one child, reaped with waitpid(-1, WNOHANG).
pub struct Reaped {
    pub pid: i32,
    pub status: i32,
}

/// Reaps one exited child if there is one.
pub fn reap_one() -> Option<Reaped> {
    let mut status = 0;
    // SAFETY: waitpid with a valid status pointer.
    let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
    if pid > 0 {
        Some(Reaped { pid, status })
    } else {
        None
    }
}

/// True when this process has no children left (waitpid says ECHILD).
pub fn no_children() -> bool {
    // SAFETY: waitid with P_ALL, WNOHANG|WNOWAIT does not reap; siginfo is zeroed plain data.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let rc = libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOHANG | libc::WNOWAIT);
        rc < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD)
    }
}

/// Describes a wait status for the console ("exit code 1", "signal 9").
pub fn describe_status(status: i32) -> String {
    if libc::WIFEXITED(status) {
        format!("exit code {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!("signal {}", libc::WTERMSIG(status))
    } else {
        format!("status {status:#x}")
    }
}

/// Makes the calling process a session leader with `fd 0` as its controlling
/// terminal. For use in `pre_exec` (async-signal-safe calls only).
pub fn take_controlling_tty() -> io::Result<()> {
    // SAFETY: setsid and ioctl are async-signal-safe and take plain integers.
    unsafe {
        if libc::setsid() < 0 {
            return Err(io::Error::last_os_error());
        }
        check(libc::ioctl(0, libc::TIOCSCTTY, 1))
    }
}

/// Seconds since boot, from CLOCK_BOOTTIME.
pub fn uptime() -> f64 {
    // SAFETY: timespec is plain data filled by the kernel.
    unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts);
        ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
    }
}

/// Sets the wall clock.
pub fn set_clock(secs: i64) -> io::Result<()> {
    let ts = libc::timespec { tv_sec: secs as libc::time_t, tv_nsec: 0 };
    // SAFETY: valid timespec.
    check(unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) })
}

/// Reads the RTC (`/dev/rtc0`) as (year, month 1-12, day, hour, min, sec).
pub fn read_rtc() -> io::Result<(i64, u32, u32, u32, u32, u32)> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open("/dev/rtc0")?;
    let mut tm = [0 as libc::c_int; 9];
    const RTC_RD_TIME: libc::c_ulong = 0x8024_7009;
    // SAFETY: RTC_RD_TIME fills a struct rtc_time of nine ints; tm is that size.
    check(unsafe { libc::ioctl(f.as_raw_fd(), RTC_RD_TIME, tm.as_mut_ptr()) })?;
    Ok((tm[5] as i64 + 1900, tm[4] as u32 + 1, tm[3] as u32, tm[2] as u32, tm[1] as u32, tm[0] as u32))
}

pub fn getpid() -> i32 {
    // SAFETY: getpid cannot fail.
    unsafe { libc::getpid() }
}

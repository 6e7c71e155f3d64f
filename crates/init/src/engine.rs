//! Running berthd: its command line, its log (to the host's config share,
//! important lines to the console) and the readiness probe.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

pub const BERTHD: &str = "/usr/local/bin/berthd";
pub const SOCKET: &str = "/run/berth/docker.sock";
pub const DATA_ROOT: &str = "/var/lib/berth/engine";
pub const EXEC_ROOT: &str = "/run/berth/exec";

/// What this berthd and the host's daemon.json allow berth-init to pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flags {
    /// berthd knows `--host-gateway-ip` and daemon.json does not set
    /// `host-gateway-ip` (berthd refuses a setting given both ways).
    pub host_gateway_ip: bool,
    /// berthd knows `--vm-guest` (loopback-published ports also answer on
    /// the guest's interface, where the host's forwards arrive).
    pub vm_guest: bool,
}

impl Flags {
    /// From `accepts` (does this berthd accept these arguments? see
    /// [`accepts`]; some flags are hidden from `--help`) and the daemon.json
    /// text (if any).
    pub fn detect(accepts: impl Fn(&[&str]) -> bool, daemon_json: Option<&str>) -> Flags {
        let set_in_file = |key: &str| {
            daemon_json
                .and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok())
                .is_some_and(|v| v.get(key).is_some())
        };
        Flags {
            host_gateway_ip: !set_in_file("host-gateway-ip") && accepts(&["--host-gateway-ip", crate::net::GATEWAY]),
            vm_guest: !set_in_file("vm-guest") && accepts(&["--vm-guest"]),
        }
    }
}

/// berthd's arguments. `daemon_json` when the host provided one.
pub fn args(daemon_json: Option<&Path>, gateway: &str, flags: Flags, extra: &[String]) -> Vec<String> {
    let mut a = vec![
        "-H".to_string(),
        format!("unix://{SOCKET}"),
        "--data-root".into(),
        DATA_ROOT.into(),
        "--exec-root".into(),
        EXEC_ROOT.into(),
    ];
    if let Some(p) = daemon_json {
        a.push("--config-file".into());
        a.push(p.display().to_string());
    }
    if flags.host_gateway_ip {
        a.push("--host-gateway-ip".into());
        a.push(gateway.to_string());
    }
    if flags.vm_guest {
        a.push("--vm-guest".into());
    }
    a.extend(extra.iter().cloned());
    a
}

/// Whether this berthd accepts `args`: `berthd <args> --help` exits 0, and
/// fails on an unknown flag.
pub fn accepts(args: &[&str]) -> bool {
    crate::sys::command(BERTHD)
        .args(args)
        .arg("--help")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Lines worth copying to the console.
pub fn important(line: &str) -> bool {
    line.contains(" ERROR ")
        || line.contains(" WARN ")
        || line.contains("panicked")
        || line.starts_with("Error")
        || line.starts_with("error")
        // berthd's own fatal error before it exits (`berthd: open networks: ...`).
        || line.starts_with("berthd: ")
}

/// The engine's log sink: one pipe for every berthd run, read by one thread
/// that appends to the log file and copies important lines to the console.
pub struct LogSink {
    write: File,
    file: PathBuf,
}

impl LogSink {
    pub fn start(file: PathBuf) -> io::Result<LogSink> {
        let mut fds = [0; 2];
        // SAFETY: fds has room for two descriptors.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        use std::os::fd::FromRawFd;
        // SAFETY: pipe2 returned two fresh descriptors that we own.
        let (read, write) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
        let path = file.clone();
        std::thread::Builder::new().name("engine-log".into()).spawn(move || pump_log(read, &path))?;
        Ok(LogSink { write, file })
    }

    pub fn path(&self) -> &Path {
        &self.file
    }

    /// A line from berth-init itself into the engine log.
    pub fn note(&self, msg: &str) {
        let _ = (&self.write).write_all(format!("berth-init: {msg}\n").as_bytes());
    }

    fn stdio(&self) -> io::Result<Stdio> {
        Ok(Stdio::from(self.write.try_clone()?))
    }
}

fn open_log(path: &Path) -> Option<File> {
    std::fs::OpenOptions::new().create(true).append(true).open(path).ok()
}

fn pump_log(read: File, path: &Path) {
    let mut out = open_log(path);
    if out.is_none() {
        crate::log!("cannot open {}; engine log goes to the console only", path.display());
    }
    let mut r = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        match r.read_until(b'\n', &mut line) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end();
        let mut wrote = false;
        if let Some(f) = out.as_mut() {
            wrote = f.write_all(&line).is_ok();
        }
        if !wrote {
            // The share may have gone away (host side restarted it): retry once.
            out = open_log(path);
            if let Some(f) = out.as_mut() {
                wrote = f.write_all(&line).is_ok();
            }
        }
        if !wrote || important(text) {
            crate::log!("berthd: {text}");
        }
    }
}

/// Spawns berthd with its output into the sink.
pub fn spawn(args: &[String], sink: &LogSink) -> io::Result<Child> {
    crate::sys::command(BERTHD)
        .args(args)
        .stdin(Stdio::null())
        .stdout(sink.stdio()?)
        .stderr(sink.stdio()?)
        .env("PATH", crate::PATH)
        .env("HOME", "/root")
        .spawn()
}

/// One `GET /_ping` on the engine socket; true on `200 OK`.
pub fn ping(socket: &Path) -> bool {
    let Ok(mut s) = UnixStream::connect(socket) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /_ping HTTP/1.1\r\nHost: berth\r\nConnection: close\r\n\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        match s.read(&mut buf[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    is_ok_status(&buf[..n])
}

pub fn is_ok_status(head: &[u8]) -> bool {
    head.starts_with(b"HTTP/1.1 200") || head.starts_with(b"HTTP/1.0 200")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_args_follow_the_contract() {
        let a = args(Some(Path::new("/run/berth/host/daemon.json")), "10.0.2.2", Flags::default(), &["--debug".to_string()]);
        assert_eq!(
            a,
            [
                "-H",
                "unix:///run/berth/docker.sock",
                "--data-root",
                "/var/lib/berth/engine",
                "--exec-root",
                "/run/berth/exec",
                "--config-file",
                "/run/berth/host/daemon.json",
                "--debug"
            ]
        );
    }

    #[test]
    fn supported_flags_are_passed() {
        let flags = Flags::detect(|_| true, None);
        assert_eq!(flags, Flags { host_gateway_ip: true, vm_guest: true });
        let a = args(None, "10.0.2.2", flags, &[]);
        assert!(a.windows(2).any(|w| w[0] == "--host-gateway-ip" && w[1] == "10.0.2.2"));
        assert!(a.contains(&"--vm-guest".to_string()));
        assert!(!a.contains(&"--config-file".to_string()));
    }

    #[test]
    fn unknown_flags_are_not_passed() {
        assert_eq!(Flags::detect(|_| false, None), Flags::default());
        let only_gateway = Flags::detect(|a| a[0] == "--host-gateway-ip", None);
        assert_eq!(only_gateway, Flags { host_gateway_ip: true, vm_guest: false });
    }

    #[test]
    fn gateway_set_in_daemon_json_is_not_repeated_as_a_flag() {
        let flags = Flags::detect(|_| true, Some(r#"{"host-gateway-ip": "10.0.2.2"}"#));
        assert!(!flags.host_gateway_ip);
        assert!(flags.vm_guest);
    }

    #[test]
    fn ping_status_line_is_recognised() {
        assert!(is_ok_status(b"HTTP/1.1 200 OK\r\n"));
        assert!(!is_ok_status(b"HTTP/1.1 500 Internal"));
        assert!(!is_ok_status(b""));
    }

    #[test]
    fn errors_and_warnings_are_important() {
        assert!(important("2026-01-01T00:00:00Z ERROR berth_engine: boom"));
        assert!(important("2026-01-01T00:00:00Z  WARN berth_engine: hmm"));
        assert!(!important("2026-01-01T00:00:00Z  INFO berth_engine: fine"));
        assert!(important("berthd: open networks: No space left on device (os error 28)"));
    }
}

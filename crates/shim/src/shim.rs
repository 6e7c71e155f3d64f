//! The running shim: the container's init and exec processes, the control
//! socket, and the poll(2) loop that serves them until the init exits.
//!
//! Control socket protocol (`STATE_DIR/shim.sock`, mode 0600): each
//! connection sends one JSON line and gets one JSON line back.
//!
//! | request | answer |
//! | --- | --- |
//! | `{"op":"start"}` | `{"ok":true}` |
//! | `{"op":"state"}` | `{"pid":N,"status":"created\|running\|paused\|stopped","exit_code":N\|null}` |
//! | `{"op":"kill","signal":N,"all":bool}` | `{"ok":true}` |
//! | `{"op":"pause"}`, `{"op":"resume"}` | `{"ok":true}` |
//! | `{"op":"resize","width":W,"height":H[,"exec_pid":N]}` | `{"ok":true}` |
//! | `{"op":"attach","stdin":b,"stdout":b,"stderr":b[,"stdin_once":b]}` | `{"ok":true}`, then a stream |
//! | `{"op":"exec","process":{..},"tty":b,"stdin":b,"detach":b}` | `{"ok":true,"exec_pid":N}`, then a stream unless detached |
//!
//! Any failure answers `{"error":"..."}`. A stream carries the process's
//! output (multiplexed frames, or raw for a tty) and takes its input; the
//! shim closes it once the process has exited and its output is delivered.
//! An exec's exit code is in `exec-<pid>.exit` before its stream closes.

use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::io::{self, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use rustix::event::{poll, PollFd, PollFlags};
use rustix::io::Errno;
use rustix::net::{recvmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
use serde_json::{json, Value};

use crate::cli::Config;
use crate::clock::rfc3339_nano;
use crate::error::{Context, Error, Result};
use crate::jsonlog::JsonLog;
use crate::paths::StateDir;
use crate::runtime::{timespec, CallIo, Runtime};
use crate::stdio::{Client, Pio};
use crate::sys::{self, SignalFd};

/// After a process exits, how long its output may take to reach its end
/// (a grandchild outside a pid namespace can hold a pipe open forever).
const OUTPUT_GRACE: Duration = Duration::from_secs(2);
/// At the very end, how long clients get to take the rest of their output.
const FLUSH_GRACE: Duration = Duration::from_secs(5);
/// Longest request line.
const MAX_REQUEST: usize = 1 << 20;
/// Connections that have not sent their request yet.
const MAX_PENDING: usize = 64;
const READ_BUF: usize = 32 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Created,
    Running,
    Paused,
    Stopped,
}

impl Status {
    fn name(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        }
    }
}

struct ExitInfo {
    code: i32,
    signal: Option<i32>,
    at: SystemTime,
}

struct Exec {
    pid: i32,
    pio: Pio,
    exit_code: Option<i32>,
    /// Set when reaped: output still open then is given up on.
    deadline: Option<Instant>,
}

/// A connection whose request line has not fully arrived.
struct Pending {
    sock: Option<UnixStream>,
    buf: Vec<u8>,
}

/// What a poll slot belongs to.
#[derive(Clone, Copy)]
enum Tag {
    Signal,
    Listener,
    Pending(usize),
    Closing(usize),
    Source(Proc, usize),
    Sink(Proc),
    Client(Proc, usize),
}

#[derive(Clone, Copy)]
enum Proc {
    Init,
    Exec(usize),
}

pub struct Shim {
    id: String,
    paths: StateDir,
    runtime: Runtime,
    sig: SignalFd,
    init_pid: i32,
    status: Status,
    exit: Option<ExitInfo>,
    /// Set when the init exited: output still open then is given up on.
    deadline: Option<Instant>,
    /// The cgroup file whose `oom_kill` counter tells an OOM kill.
    oom_file: Option<PathBuf>,
    init: Pio,
    execs: Vec<Exec>,
    exec_seq: u64,
    listener: Option<UnixListener>,
    pending: Vec<Pending>,
    /// Connections that only wait for their last bytes to be delivered.
    closing: Vec<Client>,
    buf: Vec<u8>,
}

impl Shim {
    /// Runs `runtime create`. On failure the runtime's leftovers are deleted
    /// and the error is the runtime's message.
    pub fn create(cfg: &Config, paths: StateDir, sig: SignalFd) -> Result<Shim> {
        let runtime = Runtime { bin: cfg.runtime.clone(), root: cfg.runtime_root.clone(), id: cfg.id.clone() };
        for p in [paths.init_pid(), paths.exit_json(), paths.console_sock(), paths.shim_sock()] {
            let _ = std::fs::remove_file(p);
        }
        let log = match &cfg.log {
            Some(l) => Some(JsonLog::open(l).context(format_args!("open log {}", l.path.display()))?),
            None => None,
        };
        let created = create_container(cfg, &paths, &runtime, &sig);
        let _ = std::fs::remove_file(paths.console_sock());
        let (init_pid, mut init) = match created {
            Ok(c) => c,
            Err(e) => {
                let _ = runtime.simple(&[OsStr::new("delete"), OsStr::new("-f"), OsStr::new(&cfg.id)], &sig);
                let _ = std::fs::remove_file(paths.init_pid());
                return Err(Error::new(e));
            }
        };
        init.log = log;
        Ok(Shim {
            id: cfg.id.clone(),
            oom_file: oom_counter_file(init_pid),
            paths,
            runtime,
            sig,
            init_pid,
            status: Status::Created,
            exit: None,
            deadline: None,
            init,
            execs: Vec::new(),
            exec_seq: 0,
            listener: None,
            pending: Vec::new(),
            closing: Vec::new(),
            buf: vec![0; READ_BUF],
        })
    }

    pub fn init_pid(&self) -> i32 {
        self.init_pid
    }

    /// Binds the control socket, mode 0600 from the start.
    pub fn listen(&mut self) -> Result<()> {
        let path = self.paths.shim_sock();
        let name = self.paths.socket_name(&path);
        let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
        let bound = UnixListener::bind(&name);
        rustix::process::umask(old);
        let listener = bound.context(format_args!("bind {}", path.display()))?;
        listener.set_nonblocking(true).context("control socket non-blocking")?;
        self.listener = Some(listener);
        Ok(())
    }

    /// Undoes `create` when the shim cannot go on before its handshake.
    pub fn abort(&mut self) {
        let _ = self.runtime.simple(&[OsStr::new("delete"), OsStr::new("-f"), OsStr::new(&self.id)], &self.sig);
        self.reap();
        let _ = std::fs::remove_file(self.paths.shim_sock());
        let _ = std::fs::remove_file(self.paths.shim_pid());
    }

    /// One pass of the loop: reap, retire what ended, wait, serve.
    /// Returns false once the container is done.
    fn turn(&mut self) -> bool {
        self.reap();
        self.retire_execs();
        let now = Instant::now();
        self.init.drop_stalled(now);
        for e in &mut self.execs {
            e.pio.drop_stalled(now);
        }
        self.sweep();
        if self.exit.is_some() {
            let drained = self.init.output_done() && self.execs.is_empty();
            if drained || self.deadline.is_some_and(|d| now >= d) {
                return false;
            }
        }
        let timeout = self
            .execs
            .iter()
            .flat_map(|e| [e.deadline, e.pio.stall_deadline()])
            .chain([self.deadline, self.init.stall_deadline()])
            .flatten()
            .min()
            .map(|d| timespec(d.saturating_duration_since(now)));

        let mut tags = Vec::new();
        let revents: Vec<PollFlags> = {
            let mut slots: Vec<(Tag, BorrowedFd<'_>, PollFlags)> = Vec::new();
            slots.push((Tag::Signal, self.sig.as_fd(), PollFlags::IN));
            if let Some(l) = &self.listener {
                slots.push((Tag::Listener, l.as_fd(), PollFlags::IN));
            }
            for (i, p) in self.pending.iter().enumerate() {
                if let Some(s) = &p.sock {
                    slots.push((Tag::Pending(i), s.as_fd(), PollFlags::IN));
                }
            }
            for (i, c) in self.closing.iter().enumerate() {
                let ev = if c.pending() > 0 { PollFlags::OUT } else { PollFlags::empty() };
                slots.push((Tag::Closing(i), c.sock().as_fd(), ev));
            }
            let procs = std::iter::once((Proc::Init, &self.init))
                .chain(self.execs.iter().enumerate().map(|(i, e)| (Proc::Exec(i), &e.pio)));
            for (p, pio) in procs {
                // Backpressure: a lagging client holds the output back.
                for idx in 0..2 {
                    if let Some(fd) = pio.source(idx).filter(|_| !pio.backlogged()) {
                        slots.push((Tag::Source(p, idx), fd.as_fd(), PollFlags::IN));
                    }
                }
                if let Some(fd) = pio.sink_to_poll() {
                    slots.push((Tag::Sink(p), fd.as_fd(), PollFlags::OUT));
                }
                let room = pio.input_room();
                for (i, c) in pio.clients.iter().enumerate() {
                    slots.push((Tag::Client(p, i), c.sock().as_fd(), c.events(room)));
                }
            }
            let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(slots.len());
            for (tag, fd, ev) in slots {
                tags.push(tag);
                fds.push(PollFd::from_borrowed_fd(fd, ev));
            }
            match poll(&mut fds, timeout.as_ref()) {
                Ok(_) | Err(Errno::INTR) => {}
                Err(e) => {
                    diag!("poll: {e}");
                    return true;
                }
            }
            fds.iter().map(PollFd::revents).collect()
        };
        for (tag, rev) in tags.into_iter().zip(revents) {
            if !rev.is_empty() {
                self.handle(tag, rev);
            }
        }
        self.sweep();
        true
    }

    fn handle(&mut self, tag: Tag, rev: PollFlags) {
        match tag {
            Tag::Signal => self.sig.drain(),
            Tag::Listener => self.accept(),
            Tag::Pending(i) => self.read_request(i),
            Tag::Closing(i) => {
                if let Some(c) = self.closing.get_mut(i) {
                    c.flush();
                    if rev.intersects(PollFlags::HUP | PollFlags::ERR) {
                        c.abandon();
                    }
                }
            }
            Tag::Source(p, idx) => {
                if let Some(pio) = pio_mut(&mut self.init, &mut self.execs, p) {
                    pio.read_source(idx, &mut self.buf);
                }
            }
            Tag::Sink(p) => {
                if let Some(pio) = pio_mut(&mut self.init, &mut self.execs, p) {
                    pio.pump_input();
                }
            }
            Tag::Client(p, i) => {
                if let Some(pio) = pio_mut(&mut self.init, &mut self.execs, p) {
                    pio.client_event(i, rev, &mut self.buf);
                }
            }
        }
    }

    /// Drops what ended during the pass.
    fn sweep(&mut self) {
        self.pending.retain(|p| p.sock.is_some());
        self.init.remove_dead_clients();
        for e in &mut self.execs {
            e.pio.remove_dead_clients();
        }
        let mut i = 0;
        while i < self.closing.len() {
            if self.closing[i].is_dead() || self.closing[i].pending() == 0 {
                self.closing.swap_remove(i).close();
            } else {
                i += 1;
            }
        }
    }

    /// Collects every exited child: the init, exec processes, and orphans
    /// reparented to us from inside the container.
    fn reap(&mut self) {
        loop {
            let (pid, ended) = match sys::reap_one() {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // ECHILD: nothing left.
                Err(_) => break,
            };
            let (code, signal) = decode(ended);
            let now = Instant::now();
            if pid == self.init_pid && self.exit.is_none() {
                diag!("init {pid} exited: code {code}");
                self.exit = Some(ExitInfo { code, signal, at: SystemTime::now() });
                self.status = Status::Stopped;
                self.deadline = Some(now + OUTPUT_GRACE);
            } else if let Some(e) = self.execs.iter_mut().find(|e| e.pid == pid && e.exit_code.is_none()) {
                e.exit_code = Some(code);
                e.deadline = Some(now + OUTPUT_GRACE);
            }
        }
    }

    /// Exec processes that exited and whose output ended: their exit code
    /// is recorded, then their streams close.
    fn retire_execs(&mut self) {
        let now = Instant::now();
        let mut i = 0;
        while i < self.execs.len() {
            let e = &self.execs[i];
            let ended = e.exit_code.is_some() && (e.pio.output_done() || e.deadline.is_some_and(|d| now >= d));
            if !ended {
                i += 1;
                continue;
            }
            let e = self.execs.remove(i);
            self.retire_exec(e);
        }
    }

    fn retire_exec(&mut self, mut e: Exec) {
        e.pio.drain_sources(&mut self.buf);
        if let Some(code) = e.exit_code {
            let body = format!("{}\n", json!({ "exit_code": code }));
            if let Err(err) = write_atomic(&self.paths.exec_exit(e.pid), body.as_bytes()) {
                diag!("record exit of exec {}: {err}", e.pid);
            }
        }
        for mut c in e.pio.take_clients() {
            c.flush();
            self.closing.push(c);
        }
    }

    fn accept(&mut self) {
        let Some(listener) = &self.listener else { return };
        loop {
            match listener.accept() {
                Ok((sock, _)) => {
                    if self.pending.len() >= MAX_PENDING || sock.set_nonblocking(true).is_err() {
                        continue;
                    }
                    self.pending.push(Pending { sock: Some(sock), buf: Vec::new() });
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }

    fn read_request(&mut self, i: usize) {
        let Some(p) = self.pending.get_mut(i) else { return };
        let Some(sock) = p.sock.as_mut() else { return };
        let mut chunk = [0u8; 4096];
        match sock.read(&mut chunk) {
            Ok(0) => {
                p.sock = None;
                return;
            }
            Ok(n) => p.buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => return,
            Err(_) => {
                p.sock = None;
                return;
            }
        }
        let Some(nl) = p.buf.iter().position(|&b| b == b'\n') else {
            if p.buf.len() > MAX_REQUEST {
                p.sock = None;
            }
            return;
        };
        let Some(sock) = p.sock.take() else { return };
        let mut buf = std::mem::take(&mut p.buf);
        let rest = buf.split_off(nl + 1);
        buf.truncate(nl);
        self.request(sock, &buf, &rest);
    }

    /// Serves one request. `rest`: bytes the client sent after its line
    /// (early stdin for attach and exec).
    fn request(&mut self, sock: UnixStream, line: &[u8], rest: &[u8]) {
        let req: Value = match serde_json::from_slice(line) {
            Ok(v) => v,
            Err(e) => return self.answer(sock, Err(format!("bad request: {e}"))),
        };
        let op = req.get("op").and_then(Value::as_str).unwrap_or_default();
        let id = OsStr::new(&self.id);
        let answer = match op {
            "start" => self.runtime.simple(&[OsStr::new("start"), id], &self.sig).map(|()| {
                if self.status == Status::Created {
                    self.status = Status::Running;
                }
                json!({ "ok": true })
            }),
            "state" => Ok(json!({
                "pid": self.init_pid,
                "status": self.status.name(),
                "exit_code": self.exit.as_ref().map(|e| e.code),
            })),
            "kill" => self.kill(&req),
            "pause" | "resume" => self.runtime.simple(&[OsStr::new(op), id], &self.sig).map(|()| {
                if self.exit.is_none() {
                    self.status = if op == "pause" { Status::Paused } else { Status::Running };
                }
                json!({ "ok": true })
            }),
            "resize" => self.resize(&req),
            "attach" => {
                let client = Client::new(
                    sock,
                    flag(&req, "stdout"),
                    flag(&req, "stderr"),
                    flag(&req, "stdin"),
                    stdin_once(&req),
                );
                self.init.attach(client, b"{\"ok\":true}\n", rest);
                return;
            }
            "exec" => return self.exec(sock, &req, rest),
            _ => Err(format!("unknown op {op:?}")),
        };
        self.answer(sock, answer);
    }

    /// Sends a one-line answer and closes once it is delivered.
    fn answer(&mut self, sock: UnixStream, answer: std::result::Result<Value, String>) {
        let v = answer.unwrap_or_else(|e| json!({ "error": e }));
        let mut c = Client::new(sock, false, false, false, false);
        c.send(format!("{v}\n").as_bytes());
        c.flush();
        self.closing.push(c);
    }

    fn kill(&mut self, req: &Value) -> std::result::Result<Value, String> {
        let signal = req.get("signal").and_then(Value::as_i64).unwrap_or(libc::SIGTERM as i64);
        if !(1..=64).contains(&signal) {
            return Err(format!("invalid signal {signal}"));
        }
        let signal = signal as i32;
        let number = signal.to_string();
        let mut args = vec![OsStr::new("kill")];
        if flag(req, "all") {
            args.push(OsStr::new("--all"));
        }
        args.extend([OsStr::new(&self.id), OsStr::new(&number)]);
        match self.runtime.simple(&args, &self.sig) {
            Ok(()) => Ok(json!({ "ok": true })),
            // The runtime refuses a container it sees as stopped; the init
            // may still be ours to signal.
            Err(e) if self.exit.is_none() => match sys::kill(self.init_pid, signal) {
                Ok(()) => Ok(json!({ "ok": true })),
                Err(k) => Err(format!("{e} (kill {}: {k})", self.init_pid)),
            },
            Err(e) => Err(e),
        }
    }

    fn resize(&mut self, req: &Value) -> std::result::Result<Value, String> {
        let dim = |k: &str| req.get(k).and_then(Value::as_u64).map(|n| n.min(u16::MAX as u64) as u16);
        let (Some(width), Some(height)) = (dim("width"), dim("height")) else {
            return Err("resize needs width and height".to_owned());
        };
        let pio = match req.get("exec_pid").and_then(Value::as_i64) {
            Some(pid) => match self.execs.iter().find(|e| e.pid as i64 == pid) {
                Some(e) => &e.pio,
                None => return Err(format!("no exec process {pid}")),
            },
            None => &self.init,
        };
        let Some(master) = pio.master.as_ref() else {
            return Err("the process has no tty".to_owned());
        };
        let ws = rustix::termios::Winsize { ws_row: height, ws_col: width, ws_xpixel: 0, ws_ypixel: 0 };
        rustix::termios::tcsetwinsize(master, ws).map_err(|e| format!("resize tty: {e}"))?;
        Ok(json!({ "ok": true }))
    }

    fn exec(&mut self, sock: UnixStream, req: &Value, rest: &[u8]) {
        if self.exit.is_some() {
            return self.answer(sock, Err("container is not running".to_owned()));
        }
        let Some(mut process) = req.get("process").filter(|p| p.is_object()).cloned() else {
            return self.answer(sock, Err("exec needs a process object".to_owned()));
        };
        let (tty, detach) = (flag(req, "tty"), flag(req, "detach"));
        let stdin = flag(req, "stdin") && !detach;
        process["terminal"] = Value::Bool(tty);
        self.exec_seq += 1;
        match start_exec(&self.paths, &self.runtime, &self.sig, self.exec_seq, &process, tty, stdin) {
            Ok((pid, pio)) => {
                let answer = format!("{}\n", json!({ "ok": true, "exec_pid": pid }));
                let mut e = Exec { pid, pio, exit_code: None, deadline: None };
                if detach {
                    self.answer(sock, Ok(json!({ "ok": true, "exec_pid": pid })));
                } else {
                    e.pio.attach(Client::new(sock, true, true, stdin, true), answer.as_bytes(), rest);
                }
                self.execs.push(e);
            }
            Err(e) => self.answer(sock, Err(e)),
        }
    }

    /// After the init exited and its output ended: records the exit, lets
    /// the runtime forget the container, and closes every stream.
    fn finish(mut self) {
        self.init.drain_sources(&mut self.buf);
        for e in std::mem::take(&mut self.execs) {
            self.retire_exec(e);
        }
        if let Some(log) = self.init.log.as_mut() {
            if let Err(e) = log.flush_partial(SystemTime::now()) {
                diag!("write log: {e}");
            }
        }
        let exit = self.exit.take().unwrap_or(ExitInfo { code: 255, signal: None, at: SystemTime::now() });
        let oom = self.oom_file.as_deref().is_some_and(oom_killed);
        let record = json!({
            "exit_code": exit.code,
            "exited_at": rfc3339_nano(exit.at),
            "signal": exit.signal,
            "oom_killed": oom,
        });
        if let Err(e) = write_atomic(&self.paths.exit_json(), format!("{record}\n").as_bytes()) {
            diag!("record exit: {e}");
        }
        // No new connections: berthd now finds exit.json instead.
        self.listener = None;
        let _ = std::fs::remove_file(self.paths.shim_sock());
        self.pending.clear();

        let id = OsStr::new(&self.id);
        if let Err(e) = self.runtime.simple(&[OsStr::new("delete"), id], &self.sig) {
            diag!("runtime delete: {e}; forcing");
            if let Err(e) = self.runtime.simple(&[OsStr::new("delete"), OsStr::new("-f"), id], &self.sig) {
                diag!("runtime delete -f: {e}");
            }
        }
        self.reap();

        for mut c in self.init.take_clients() {
            c.flush();
            self.closing.push(c);
        }
        self.flush_closing();
        let _ = std::fs::remove_file(self.paths.shim_pid());
        diag!("container {} exited with {}; shim done", self.id, exit.code);
    }

    /// Delivers what closing connections still have queued, for a while.
    fn flush_closing(&mut self) {
        let deadline = Instant::now() + FLUSH_GRACE;
        loop {
            self.sweep();
            let now = Instant::now();
            if self.closing.is_empty() || now >= deadline {
                break;
            }
            let ts = timespec(deadline - now);
            let revents: Vec<PollFlags> = {
                let mut fds: Vec<PollFd<'_>> =
                    self.closing.iter().map(|c| PollFd::new(c.sock(), PollFlags::OUT)).collect();
                if let Err(e) = poll(&mut fds, Some(&ts)) {
                    if e != Errno::INTR {
                        break;
                    }
                }
                fds.iter().map(PollFd::revents).collect()
            };
            for (c, rev) in self.closing.iter_mut().zip(revents) {
                c.flush();
                if rev.intersects(PollFlags::HUP | PollFlags::ERR) {
                    c.abandon();
                }
            }
        }
        for c in self.closing.drain(..) {
            c.close();
        }
    }
}

/// Serves until the container is done, then cleans up. The process exits
/// after this returns.
pub fn serve(mut shim: Shim) {
    while shim.turn() {}
    shim.finish();
}

fn pio_mut<'a>(init: &'a mut Pio, execs: &'a mut [Exec], p: Proc) -> Option<&'a mut Pio> {
    match p {
        Proc::Init => Some(init),
        Proc::Exec(i) => execs.get_mut(i).map(|e| &mut e.pio),
    }
}

fn flag(req: &Value, key: &str) -> bool {
    req.get(key).and_then(Value::as_bool).unwrap_or(false)
}

/// Docker closes a container's stdin when an attach with stdin ends
/// (StdinOnce, what `docker run -i` sets); `"stdin_once":false` keeps it open.
fn stdin_once(req: &Value) -> bool {
    req.get("stdin_once").and_then(Value::as_bool).unwrap_or(true)
}

/// Exit code Docker reports (128+N for signal N), and the signal.
fn decode(ended: sys::Ended) -> (i32, Option<i32>) {
    match ended {
        sys::Ended::Exited(code) => (code, None),
        sys::Ended::Signaled(sig) => (128 + sig, Some(sig)),
    }
}

/// `runtime create`; returns the init's pid and its stdio.
fn create_container(
    cfg: &Config,
    paths: &StateDir,
    runtime: &Runtime,
    sig: &SignalFd,
) -> std::result::Result<(i32, Pio), String> {
    let pid_file = paths.init_pid();
    let mut args = vec![
        OsStr::new("create"),
        OsStr::new("--bundle"),
        cfg.bundle.as_os_str(),
        OsStr::new("--pid-file"),
        pid_file.as_os_str(),
    ];
    let pio = if cfg.tty {
        let console = paths.socket_name(&paths.console_sock());
        let listener = bind_console(&console)?;
        args.extend([OsStr::new("--console-socket"), console.as_os_str(), OsStr::new(&cfg.id)]);
        runtime.call(&args, tty_call_io()?, sig)?;
        tty_pio(receive_console(&listener)?, cfg.stdin)?
    } else {
        args.push(OsStr::new(&cfg.id));
        let (pio, io) = pipe_stdio(cfg.stdin)?;
        runtime.call(&args, io, sig)?;
        pio
    };
    Ok((read_pid(&pid_file)?, pio))
}

/// `runtime exec --detach` of one extra process; returns its pid and stdio.
fn start_exec(
    paths: &StateDir,
    runtime: &Runtime,
    sig: &SignalFd,
    seq: u64,
    process: &Value,
    tty: bool,
    stdin: bool,
) -> std::result::Result<(i32, Pio), String> {
    let process_file = paths.exec_process(seq);
    let pid_file = paths.exec_pid(seq);
    let console_file = paths.exec_console(seq);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&process_file)
            .map_err(|e| format!("write {}: {e}", process_file.display()))?;
        f.write_all(process.to_string().as_bytes()).map_err(|e| format!("write {}: {e}", process_file.display()))?;
        drop(f);
        let mut args = vec![
            OsStr::new("exec"),
            OsStr::new("--process"),
            process_file.as_os_str(),
            OsStr::new("--pid-file"),
            pid_file.as_os_str(),
            OsStr::new("--detach"),
        ];
        let console = paths.socket_name(&console_file);
        let pio = if tty {
            let listener = bind_console(&console)?;
            args.extend([OsStr::new("--tty"), OsStr::new("--console-socket"), console.as_os_str()]);
            args.push(OsStr::new(&runtime.id));
            runtime.call(&args, tty_call_io()?, sig)?;
            tty_pio(receive_console(&listener)?, stdin)?
        } else {
            args.push(OsStr::new(&runtime.id));
            let (pio, io) = pipe_stdio(stdin)?;
            runtime.call(&args, io, sig)?;
            pio
        };
        Ok((read_pid(&pid_file)?, pio))
    })();
    for p in [&process_file, &pid_file, &console_file] {
        let _ = std::fs::remove_file(p);
    }
    result
}

/// Pipes for a non-tty process: its stdio for the runtime call (the runtime
/// passes its own stdio on, and writes its errors to the stderr pipe), and
/// our ends.
fn pipe_stdio(stdin: bool) -> std::result::Result<(Pio, CallIo), String> {
    let fail = |e: io::Error| format!("create stdio pipes: {e}");
    let (out_r, out_w) = sys::pipe().map_err(fail)?;
    let (err_r, err_w) = sys::pipe().map_err(fail)?;
    sys::set_nonblocking(&out_r).map_err(fail)?;
    sys::set_nonblocking(&err_r).map_err(fail)?;
    let (child_in, sink) = if stdin {
        let (r, w) = sys::pipe().map_err(fail)?;
        sys::set_nonblocking(&w).map_err(fail)?;
        (Stdio::from(r), Some(w))
    } else {
        (Stdio::null(), None)
    };
    let errors = err_r.try_clone().map_err(fail)?;
    let io = CallIo { stdin: child_in, stdout: Stdio::from(out_w), stderr: Stdio::from(err_w), errors };
    Ok((Pio::new(false, Some(out_r), Some(err_r), sink), io))
}

/// For a tty process the runtime's own stdio is not the process's: its
/// output is only its error text.
fn tty_call_io() -> std::result::Result<CallIo, String> {
    let (r, w) = sys::pipe().map_err(|e| format!("pipe: {e}"))?;
    sys::set_nonblocking(&r).map_err(|e| format!("pipe: {e}"))?;
    let w2 = w.try_clone().map_err(|e| format!("pipe: {e}"))?;
    Ok(CallIo { stdin: Stdio::null(), stdout: Stdio::from(w2), stderr: Stdio::from(w), errors: r })
}

fn tty_pio(master: OwnedFd, stdin: bool) -> std::result::Result<Pio, String> {
    let fail = |e: io::Error| format!("pty master: {e}");
    sys::set_nonblocking(&master).map_err(fail)?;
    let sink = if stdin { Some(master.try_clone().map_err(fail)?) } else { None };
    let resize = master.try_clone().map_err(fail)?;
    let mut pio = Pio::new(true, Some(master), None, sink);
    pio.master = Some(resize);
    Ok(pio)
}

fn bind_console(path: &Path) -> std::result::Result<UnixListener, String> {
    let _ = std::fs::remove_file(path);
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let bound = UnixListener::bind(path);
    rustix::process::umask(old);
    bound.map_err(|e| format!("bind console socket {}: {e}", path.display()))
}

/// The pty master the runtime sent over the console socket (SCM_RIGHTS).
/// The runtime has exited by now, so its message is already queued.
fn receive_console(listener: &UnixListener) -> std::result::Result<OwnedFd, String> {
    listener.set_nonblocking(true).map_err(|e| format!("console socket: {e}"))?;
    let (conn, _) = listener.accept().map_err(|e| format!("the runtime sent no console: {e}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| format!("console socket: {e}"))?;
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut name = [0u8; 1024];
    let mut iov = [IoSliceMut::new(&mut name)];
    recvmsg(&conn, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC).map_err(|e| format!("receive console: {e}"))?;
    let mut master = None;
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = msg {
            for fd in fds {
                // Any extra fd is closed as it drops.
                if master.is_none() {
                    master = Some(fd);
                }
            }
        }
    }
    master.ok_or_else(|| "the runtime sent no pty master on the console socket".to_owned())
}

fn read_pid(path: &Path) -> std::result::Result<i32, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    text.trim().parse::<i32>().ok().filter(|&p| p > 0).ok_or_else(|| format!("{}: not a pid: {text:?}", path.display()))
}

/// Write, fsync, rename: readers see the old file or the whole new one.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(0o644).open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

/// The memory cgroup file with the container's `oom_kill` counter:
/// `memory.oom_control` (v1) or `memory.events` (v2).
fn oom_counter_file(pid: i32) -> Option<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let unified = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        if path == "/" {
            continue;
        }
        let rel = path.trim_start_matches('/');
        if controllers.split(',').any(|c| c == "memory") {
            return Some(Path::new("/sys/fs/cgroup/memory").join(rel).join("memory.oom_control"));
        }
        if unified && controllers.is_empty() {
            return Some(Path::new("/sys/fs/cgroup").join(rel).join("memory.events"));
        }
    }
    None
}

fn oom_killed(file: &Path) -> bool {
    std::fs::read_to_string(file).ok().is_some_and(|text| {
        text.lines().filter_map(|l| l.strip_prefix("oom_kill ")).any(|n| n.trim().parse::<u64>().is_ok_and(|n| n > 0))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_counter_is_read_from_oom_kill_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("memory.oom_control");
        std::fs::write(&f, "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n").unwrap();
        assert!(!oom_killed(&f));
        std::fs::write(&f, "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n").unwrap();
        assert!(oom_killed(&f));
        assert!(!oom_killed(&dir.path().join("missing")));
    }

    #[test]
    fn atomic_write_replaces_whole_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("exit.json");
        write_atomic(&f, b"one").unwrap();
        write_atomic(&f, b"two").unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"two");
        assert!(!dir.path().join("exit.json.tmp").exists());
    }
}

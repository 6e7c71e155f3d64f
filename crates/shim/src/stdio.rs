//! One process's stdio as the shim holds it (the container's init, or an
//! exec process), and the clients attached to it.
//!
//! Output read from the process goes to the json-file log (init only) and is
//! queued to every client that asked for that stream: Docker's 8-byte
//! multiplexed frames for a non-tty process, raw bytes for a tty.
//!
//! Slow clients: while a client has more than [`SOFT_BACKLOG`] queued, the
//! process's output is not read (the process waits on a full pipe, as under
//! dockerd), so a client that is only momentarily behind (a busy berthd)
//! loses nothing. A client that stays behind for [`STALL`], or ever has
//! [`MAX_CLIENT_BACKLOG`] queued, is dropped: a stuck reader holds up the
//! process and its log for at most that long, and costs at most 1 MiB.
//!
//! Input from clients is queued (bounded: past [`MAX_STDIN_BACKLOG`] clients
//! are simply not read) and written to the process's stdin when it can take
//! it.

use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant, SystemTime};

use rustix::event::PollFlags;
use rustix::io::Errno;

use crate::jsonlog::{JsonLog, Stream};

/// Output bytes a client may have queued before it is dropped.
pub const MAX_CLIENT_BACKLOG: usize = 1 << 20;
/// Output bytes queued for a client past which the process's output waits.
pub const SOFT_BACKLOG: usize = 256 << 10;
/// How long a client may stay past [`SOFT_BACKLOG`] before it is dropped.
pub const STALL: Duration = Duration::from_secs(2);
/// Input bytes queued for a process's stdin before clients are no longer read.
pub const MAX_STDIN_BACKLOG: usize = 256 << 10;
/// Reads per source in one final drain (bounds the drain of a process that
/// keeps writing).
const DRAIN_READS: usize = 64;
/// ASCII EOT: what "end of input" is on a terminal.
const VEOF: u8 = 0x04;

/// One connection on the control socket that carries a stream (attach or
/// exec), or that only waits for its answer to be delivered.
pub struct Client {
    sock: UnixStream,
    /// Output streams it receives: stdout, stderr.
    want: [bool; 2],
    /// Its bytes go to the process's stdin.
    input: bool,
    /// Its end of input (or its departure) closes the process's stdin.
    stdin_once: bool,
    /// Still reading from it (it has not shut down its sending side).
    reading: bool,
    out: Vec<u8>,
    sent: usize,
    /// Since when it has had more than SOFT_BACKLOG queued.
    behind_since: Option<Instant>,
    dead: bool,
}

impl Client {
    /// `sock` must be non-blocking.
    pub fn new(sock: UnixStream, want_stdout: bool, want_stderr: bool, input: bool, stdin_once: bool) -> Self {
        Client {
            sock,
            want: [want_stdout, want_stderr],
            input,
            stdin_once,
            reading: true,
            out: Vec::new(),
            sent: 0,
            behind_since: None,
            dead: false,
        }
    }

    pub fn is_dead(&self) -> bool {
        self.dead
    }

    pub fn pending(&self) -> usize {
        self.out.len() - self.sent
    }

    /// Queues bytes as they are (an answer line, or tty output).
    pub fn send(&mut self, data: &[u8]) {
        if self.dead {
            return;
        }
        if self.pending() + data.len() > MAX_CLIENT_BACKLOG {
            crate::diag!("dropping a client that is {} bytes behind", self.pending());
            self.kill();
            return;
        }
        self.out.extend_from_slice(data);
        self.note_backlog();
    }

    fn note_backlog(&mut self) {
        if self.pending() <= SOFT_BACKLOG {
            self.behind_since = None;
        } else if self.behind_since.is_none() {
            self.behind_since = Some(Instant::now());
        }
    }

    /// When it will have been behind for too long, if it is behind.
    pub fn stall_deadline(&self) -> Option<Instant> {
        self.behind_since.map(|t| t + STALL)
    }

    fn output(&mut self, stream: Stream, data: &[u8], tty: bool) {
        if !self.want[stream as usize - 1] {
            return;
        }
        if !tty {
            let len = (data.len() as u32).to_be_bytes();
            self.send(&[stream as u8, 0, 0, 0, len[0], len[1], len[2], len[3]]);
        }
        self.send(data);
    }

    /// Writes what it can without blocking.
    pub fn flush(&mut self) {
        while !self.dead && self.sent < self.out.len() {
            match (&self.sock).write(&self.out[self.sent..]) {
                Ok(0) => self.kill(),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => self.kill(),
            }
        }
        if self.sent == self.out.len() {
            self.out.clear();
            self.sent = 0;
            if self.out.capacity() > 64 * 1024 {
                self.out.shrink_to(16 * 1024);
            }
        } else if self.sent >= 64 * 1024 {
            self.out.drain(..self.sent);
            self.sent = 0;
        }
        self.note_backlog();
    }

    /// Gives up on it (it hung up, or will not take its last bytes).
    pub fn abandon(&mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        self.dead = true;
        self.out = Vec::new();
        self.sent = 0;
        self.behind_since = None;
    }

    /// poll(2) interest. `input_room`: the process's stdin can take more.
    pub fn events(&self, input_room: bool) -> PollFlags {
        let mut ev = PollFlags::empty();
        if self.reading && (!self.input || input_room) {
            ev |= PollFlags::IN;
        }
        if self.pending() > 0 {
            ev |= PollFlags::OUT;
        }
        ev
    }

    /// The stream to poll.
    pub fn sock(&self) -> &UnixStream {
        &self.sock
    }

    /// Reads what the client sent. Returns the bytes (empty for none) and
    /// whether its input just ended.
    fn read_input(&mut self, buf: &mut [u8]) -> (usize, bool) {
        if !self.reading || self.dead {
            return (0, false);
        }
        match (&self.sock).read(buf) {
            Ok(0) => {
                self.reading = false;
                (0, true)
            }
            Ok(n) => (n, false),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => (0, false),
            Err(_) => {
                self.reading = false;
                self.kill();
                (0, true)
            }
        }
    }

    /// Ends the connection after what is queued (the caller flushes first).
    pub fn close(self) {
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
    }
}

/// A process's stdio: output sources, stdin, and attached clients.
pub struct Pio {
    pub tty: bool,
    /// stdout (or the pty master), stderr.
    src: [Option<OwnedFd>; 2],
    /// stdin: a pipe's write end or a duplicate of the pty master.
    sink: Option<OwnedFd>,
    /// The pty master, for TIOCSWINSZ.
    pub master: Option<OwnedFd>,
    in_buf: Vec<u8>,
    in_close: bool,
    /// json-file log (the container's init only).
    pub log: Option<JsonLog>,
    pub clients: Vec<Client>,
}

impl Pio {
    /// All fds must be non-blocking and close-on-exec.
    pub fn new(tty: bool, stdout: Option<OwnedFd>, stderr: Option<OwnedFd>, stdin: Option<OwnedFd>) -> Self {
        Pio {
            tty,
            src: [stdout, stderr],
            sink: stdin,
            master: None,
            in_buf: Vec::new(),
            in_close: false,
            log: None,
            clients: Vec::new(),
        }
    }

    /// Some client is too far behind: leave the output unread for now.
    pub fn backlogged(&self) -> bool {
        self.clients.iter().any(|c| c.behind_since.is_some())
    }

    /// The earliest moment a lagging client is to be dropped.
    pub fn stall_deadline(&self) -> Option<Instant> {
        self.clients.iter().filter_map(Client::stall_deadline).min()
    }

    /// Drops clients that have been behind for [`STALL`].
    pub fn drop_stalled(&mut self, now: Instant) {
        for c in &mut self.clients {
            if c.stall_deadline().is_some_and(|d| now >= d) {
                crate::diag!("dropping a client stuck {} bytes behind", c.pending());
                c.kill();
            }
        }
    }

    /// Every output source reached its end.
    pub fn output_done(&self) -> bool {
        self.src.iter().all(Option::is_none)
    }

    pub fn source(&self, idx: usize) -> Option<&OwnedFd> {
        self.src.get(idx).and_then(Option::as_ref)
    }

    /// The stdin fd, when queued input waits for it.
    pub fn sink_to_poll(&self) -> Option<&OwnedFd> {
        self.sink.as_ref().filter(|_| !self.in_buf.is_empty())
    }

    pub fn input_room(&self) -> bool {
        self.sink.is_some() && self.in_buf.len() < MAX_STDIN_BACKLOG
    }

    /// Reads one chunk from source `idx`. Returns whether anything was read.
    pub fn read_source(&mut self, idx: usize, buf: &mut [u8]) -> bool {
        let Some(fd) = self.src.get(idx).and_then(Option::as_ref) else {
            return false;
        };
        match rustix::io::read(fd, &mut *buf) {
            Ok(0) => {
                self.src[idx] = None;
                false
            }
            Ok(n) => {
                let stream = if idx == 0 { Stream::Stdout } else { Stream::Stderr };
                self.output(stream, &buf[..n]);
                true
            }
            Err(Errno::AGAIN) | Err(Errno::INTR) => false,
            // EIO: the pty's last slave fd was closed; the same as an end.
            Err(_) => {
                self.src[idx] = None;
                false
            }
        }
    }

    /// Reads what is left in the sources without blocking (at the end).
    pub fn drain_sources(&mut self, buf: &mut [u8]) {
        for idx in 0..self.src.len() {
            for _ in 0..DRAIN_READS {
                if !self.read_source(idx, buf) {
                    break;
                }
            }
        }
    }

    fn output(&mut self, stream: Stream, data: &[u8]) {
        if let Some(log) = self.log.as_mut() {
            if let Err(e) = log.write(stream, data, SystemTime::now()) {
                crate::diag!("write log: {e}");
            }
        }
        for c in &mut self.clients {
            c.output(stream, data, self.tty);
            c.flush();
        }
    }

    /// Queues input for the process and writes what it takes now.
    pub fn push_input(&mut self, data: &[u8]) {
        if self.sink.is_some() && !data.is_empty() {
            self.in_buf.extend_from_slice(data);
            self.pump_input();
        }
    }

    /// The end of input: closes a pipe; on a tty (which has no end) sends
    /// EOT, which ends input for a reader in canonical mode.
    pub fn end_input(&mut self) {
        if self.tty {
            self.push_input(&[VEOF]);
        } else {
            self.in_close = true;
            self.pump_input();
        }
    }

    /// Writes queued input without blocking.
    pub fn pump_input(&mut self) {
        let Some(fd) = self.sink.as_ref() else {
            self.in_buf = Vec::new();
            return;
        };
        let mut broken = false;
        let mut written = 0;
        while written < self.in_buf.len() {
            match rustix::io::write(fd, &self.in_buf[written..]) {
                Ok(n) => written += n,
                Err(Errno::INTR) => {}
                Err(Errno::AGAIN) => break,
                // EPIPE: the process closed its stdin.
                Err(_) => {
                    broken = true;
                    break;
                }
            }
        }
        self.in_buf.drain(..written);
        if broken || (self.in_close && self.in_buf.is_empty()) {
            self.sink = None;
            self.in_buf = Vec::new();
        }
    }

    /// Handles poll results for client `i`.
    pub fn client_event(&mut self, i: usize, rev: PollFlags, buf: &mut [u8]) {
        let hangup = rev.intersects(PollFlags::HUP | PollFlags::ERR);
        if rev.intersects(PollFlags::IN) || hangup {
            // After a hangup, read to the end: what it sent still counts.
            let rounds = if hangup { 64 } else { 1 };
            for _ in 0..rounds {
                let Some(c) = self.clients.get_mut(i) else { return };
                let input = c.input;
                let once = c.stdin_once;
                let (n, ended) = c.read_input(buf);
                if n > 0 && input {
                    self.push_input(&buf[..n]);
                }
                if ended {
                    if input && once {
                        self.end_input();
                    }
                    break;
                }
                if n == 0 {
                    break;
                }
            }
        }
        if let Some(c) = self.clients.get_mut(i) {
            if rev.intersects(PollFlags::OUT) {
                c.flush();
            }
            if hangup {
                c.kill();
            }
        }
    }

    /// Drops dead clients; one that leaves while still sending ends the
    /// input if it owned it (StdinOnce).
    pub fn remove_dead_clients(&mut self) {
        let mut end = false;
        self.clients.retain(|c| {
            if c.dead && c.reading && c.input && c.stdin_once {
                end = true;
            }
            !c.dead
        });
        if end {
            self.end_input();
        }
    }

    /// Hands the clients over (at the end of the process).
    pub fn take_clients(&mut self) -> Vec<Client> {
        std::mem::take(&mut self.clients)
    }

    /// Adds a client and sends it `answer` first.
    pub fn attach(&mut self, mut client: Client, answer: &[u8], early_input: &[u8]) {
        client.send(answer);
        client.flush();
        if client.input {
            self.push_input(early_input);
        }
        self.clients.push(client);
    }
}

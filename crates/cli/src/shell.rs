//! `berth vm shell`: the terminal connected to the guest's root shell on
//! `$BERTH_HOME/vm/shell.sock` (a virtconsole).
//!
//! The terminal is put in raw mode (restored on every exit path by a guard),
//! so keys such as Ctrl-C reach the guest; Ctrl-] detaches. When stdin is not
//! a terminal (a script piped in), its end is passed on and the command exits
//! once the guest has been quiet for a moment, as the console itself never
//! ends.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Ctrl-]: detach, as telnet does.
const DETACH: u8 = 0x1d;

/// How long to wait for more guest output after piped stdin ended.
const DRAIN_IDLE: Duration = Duration::from_millis(800);

/// Restores the saved terminal mode when dropped.
struct RawMode {
    saved: libc::termios,
}

impl RawMode {
    /// Raw mode on stdin, if it is a terminal.
    fn enable() -> Option<Self> {
        // SAFETY: isatty/tcgetattr/tcsetattr on fd 0 with a termios we own;
        // cfmakeraw only edits that struct.
        unsafe {
            if libc::isatty(0) != 1 {
                return None;
            }
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut saved) != 0 {
                return None;
            }
            let mut raw = saved;
            libc::cfmakeraw(&mut raw);
            if libc::tcsetattr(0, libc::TCSANOW, &raw) != 0 {
                return None;
            }
            Some(Self { saved })
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the attributes read in `enable` on the same fd.
        unsafe {
            libc::tcsetattr(0, libc::TCSANOW, &self.saved);
        }
    }
}

/// Connects the terminal to the guest shell until detach or EOF.
pub async fn run(socket: &Path, vm_running: bool) -> Result<i32> {
    if !vm_running {
        bail!("berth vm is not running (start it with `berth vm start`)");
    }
    let stream = UnixStream::connect(socket)
        .await
        .with_context(|| format!("connect to guest shell {}", socket.display()))?;
    let (mut rd, mut wr) = stream.into_split();
    let raw = RawMode::enable();
    let interactive = raw.is_some();
    if interactive {
        eprint!("[connected to the berth vm; Ctrl-] to detach]\r\n");
    }
    // A fresh prompt: the shell printed its last one before we connected.
    wr.write_all(b"\n").await?;

    let mut stdin = tokio::io::stdin();
    let mut stdout = tokio::io::stdout();
    let mut inbuf = [0u8; 4096];
    let mut outbuf = [0u8; 8192];
    let mut stdin_open = true;
    loop {
        tokio::select! {
            n = stdin.read(&mut inbuf), if stdin_open => {
                let n = n?;
                if n == 0 {
                    stdin_open = false;
                    continue;
                }
                let chunk = &inbuf[..n];
                if interactive {
                    if let Some(i) = chunk.iter().position(|b| *b == DETACH) {
                        wr.write_all(&chunk[..i]).await?;
                        break;
                    }
                }
                wr.write_all(chunk).await?;
            }
            n = rd.read(&mut outbuf) => {
                let n = n?;
                if n == 0 {
                    break; // QEMU closed the console
                }
                stdout.write_all(&outbuf[..n]).await?;
                stdout.flush().await?;
            }
            _ = tokio::time::sleep(DRAIN_IDLE), if !stdin_open => break,
        }
    }
    drop(raw);
    if interactive {
        eprintln!("\n[detached]");
    }
    Ok(0)
}

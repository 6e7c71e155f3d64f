//! Reading the json-file logs the shim writes (`docker logs`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::mpsc;

use super::Containers;
use crate::error::{Error, Result};

/// One json-file line.
#[derive(Debug, Deserialize)]
struct Entry {
    log: String,
    stream: String,
    time: String,
}

/// What `docker logs` asked for.
#[derive(Debug, Clone, Default)]
pub struct LogOptions {
    pub stdout: bool,
    pub stderr: bool,
    pub follow: bool,
    pub timestamps: bool,
    /// Nanoseconds since the epoch.
    pub since: Option<i64>,
    pub until: Option<i64>,
    /// Last N lines only.
    pub tail: Option<usize>,
}

/// Docker's stdcopy header: stream, three zero bytes, big-endian length.
pub fn frame(stream: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.push(stream);
    out.extend_from_slice(&[0, 0, 0]);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

fn files(path: &Path) -> Vec<PathBuf> {
    // Rotated files first, oldest (highest number) first.
    let mut rotated: Vec<(u32, PathBuf)> = Vec::new();
    for n in 1..100 {
        let p = PathBuf::from(format!("{}.{n}", path.display()));
        if !p.exists() {
            break;
        }
        rotated.push((n, p));
    }
    rotated.sort_by(|a, b| b.0.cmp(&a.0));
    let mut out: Vec<PathBuf> = rotated.into_iter().map(|(_, p)| p).collect();
    out.push(path.to_path_buf());
    out
}

fn nanos(t: &str) -> i64 {
    crate::timefmt::parse_rfc3339(t).map(|(s, n)| s * 1_000_000_000 + i64::from(n)).unwrap_or(0)
}

/// Formats one entry for the client, or None when filtered out.
fn render(e: &Entry, o: &LogOptions, tty: bool) -> Option<Vec<u8>> {
    let stream = if e.stream == "stderr" { 2 } else { 1 };
    if (stream == 1 && !o.stdout) || (stream == 2 && !o.stderr) {
        return None;
    }
    let t = nanos(&e.time);
    if o.since.is_some_and(|s| t < s) || o.until.is_some_and(|u| t > u) {
        return None;
    }
    let mut payload = Vec::new();
    if o.timestamps {
        let (s, n) = (t.div_euclid(1_000_000_000), t.rem_euclid(1_000_000_000) as u32);
        payload.extend_from_slice(format!("{} ", format_fixed_nanos(s, n)).as_bytes());
    }
    payload.extend_from_slice(e.log.as_bytes());
    Some(if tty { payload } else { frame(stream, &payload) })
}

/// docker logs -t prints nine fractional digits always.
fn format_fixed_nanos(secs: i64, nanos: u32) -> String {
    let base = crate::timefmt::format_rfc3339(secs, 0);
    format!("{}.{nanos:09}Z", base.trim_end_matches('Z'))
}

impl Containers {
    /// `GET /containers/{id}/logs`: a channel of output chunks.
    pub fn logs(self: &Arc<Self>, name_or_id: &str, o: LogOptions) -> Result<(bool, mpsc::Receiver<Vec<u8>>)> {
        let h = self.find(name_or_id)?;
        let rec = h.record();
        let driver = super::log_driver(&rec);
        if driver != "json-file" && driver != "local" {
            return Err(Error::invalid(format!(
                "configured logging driver does not support reading: {driver}"
            )));
        }
        let tty = rec.tty();
        let path = self.paths.container_log(&rec.id);
        let (tx, rx) = mpsc::channel(64);
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut lines: Vec<String> = Vec::new();
            for f in files(&path) {
                if let Ok(file) = std::fs::File::open(&f) {
                    lines.extend(BufReader::new(file).lines().map_while(|l| l.ok()));
                }
            }
            if let Some(n) = o.tail {
                let skip = lines.len().saturating_sub(n);
                lines.drain(..skip);
            }
            for l in &lines {
                if let Ok(e) = serde_json::from_str::<Entry>(l) {
                    if let Some(out) = render(&e, &o, tty) {
                        if tx.blocking_send(out).is_err() {
                            return;
                        }
                    }
                }
            }
            if !o.follow {
                return;
            }
            // Follow: read what is appended until the container stops.
            let Ok(file) = std::fs::File::open(&path) else { return };
            let mut reader = BufReader::new(file);
            let mut skipped = 0usize;
            let total = lines.len();
            let mut line = String::new();
            // Skip what was already sent from the live file.
            let live_lines = std::fs::read_to_string(&path).map(|s| s.lines().count()).unwrap_or(0);
            let _ = total;
            while skipped < live_lines {
                line.clear();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                skipped += 1;
            }
            let handle = me.find(&h.id).ok();
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) => {
                        let running = handle.as_ref().is_some_and(|h| h.record().state.running);
                        if !running || tx.is_closed() {
                            // Drain what the shim wrote before exiting.
                            let mut rest = String::new();
                            while reader.read_line(&mut rest).unwrap_or(0) > 0 {}
                            for l in rest.lines() {
                                if let Ok(e) = serde_json::from_str::<Entry>(l) {
                                    if let Some(out) = render(&e, &o, tty) {
                                        let _ = tx.blocking_send(out);
                                    }
                                }
                            }
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Ok(_) => {
                        if !line.ends_with('\n') {
                            // A line still being written: wait for the rest.
                            let mut more = String::new();
                            while !line.ends_with('\n') {
                                more.clear();
                                if reader.read_line(&mut more).unwrap_or(0) == 0 {
                                    std::thread::sleep(Duration::from_millis(20));
                                }
                                line.push_str(&more);
                            }
                        }
                        if let Ok(e) = serde_json::from_str::<Entry>(line.trim_end()) {
                            if let Some(out) = render(&e, &o, tty) {
                                if tx.blocking_send(out).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    Err(_) => return,
                }
            }
        });
        Ok((tty, rx))
    }
}

//! Docker's json-file log driver, written by the shim.
//!
//! One JSON object a line: `{"log":"...","stream":"stdout","time":"..."}`.
//! Output is split at newlines; a line still without one is written when it
//! reaches 16 KiB or at exit, its `log` then lacking the trailing `\n` (how
//! Docker marks a partial line). Strings are escaped as Go's encoding/json
//! does (`<`, `>`, `&` as `\u003c`...; invalid UTF-8 as `\ufffd`), so the file
//! reads byte for byte like dockerd's.
//!
//! Rotation: before a line would push the file past `max_size`, FILE.(n-1)
//! is dropped, FILE.i becomes FILE.(i+1) and FILE becomes FILE.1; with
//! `max_file` 1 the file is truncated instead. Plain writes, no fsync: a log
//! is not state.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::cli::LogConfig;
use crate::clock::rfc3339_nano;

/// Longest line held back waiting for its newline.
pub const MAX_PARTIAL: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout = 1,
    Stderr = 2,
}

impl Stream {
    pub fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
    fn index(self) -> usize {
        self as usize - 1
    }
}

pub struct JsonLog {
    path: PathBuf,
    file: Option<File>,
    size: u64,
    max_size: Option<u64>,
    max_file: u32,
    /// Bytes of an unfinished line, per stream.
    partial: [Vec<u8>; 2],
    /// Encoded records not yet written.
    out: Vec<u8>,
    /// The last write error, reported once until writes work again.
    failing: bool,
}

impl JsonLog {
    pub fn open(cfg: &LogConfig) -> io::Result<Self> {
        let file = open_append(&cfg.path)?;
        let size = file.metadata()?.len();
        Ok(JsonLog {
            path: cfg.path.clone(),
            file: Some(file),
            size,
            max_size: cfg.max_size,
            max_file: cfg.max_file.max(1),
            partial: [Vec::new(), Vec::new()],
            out: Vec::new(),
            failing: false,
        })
    }

    /// Logs one chunk of output read at `now`. Errors are returned once per
    /// failing stretch; the container's output is never held up by them.
    pub fn write(&mut self, stream: Stream, data: &[u8], now: SystemTime) -> io::Result<()> {
        let time = rfc3339_nano(now);
        let mut rest = data;
        while !rest.is_empty() {
            let idx = stream.index();
            match rest.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    let (line, tail) = rest.split_at(i + 1);
                    rest = tail;
                    if self.partial[idx].is_empty() {
                        self.emit_line(stream, line, &time)?;
                    } else {
                        let mut whole = std::mem::take(&mut self.partial[idx]);
                        whole.extend_from_slice(line);
                        let r = self.emit_line(stream, &whole, &time);
                        whole.clear();
                        self.partial[idx] = whole;
                        r?;
                    }
                }
                None => {
                    self.partial[idx].extend_from_slice(rest);
                    rest = &[];
                    while self.partial[idx].len() >= MAX_PARTIAL {
                        let cut = utf8_cut(&self.partial[idx], MAX_PARTIAL);
                        let head: Vec<u8> = self.partial[idx].drain(..cut).collect();
                        self.record(stream, &head, &time)?;
                    }
                }
            }
        }
        self.flush()
    }

    /// Writes out unfinished lines (at exit).
    pub fn flush_partial(&mut self, now: SystemTime) -> io::Result<()> {
        let time = rfc3339_nano(now);
        for stream in [Stream::Stdout, Stream::Stderr] {
            let data = std::mem::take(&mut self.partial[stream.index()]);
            if !data.is_empty() {
                self.record(stream, &data, &time)?;
            }
        }
        self.flush()
    }

    /// A complete line (ending in `\n`), cut into 16 KiB partial records
    /// when longer.
    fn emit_line(&mut self, stream: Stream, line: &[u8], time: &str) -> io::Result<()> {
        let mut rest = line;
        while rest.len() > MAX_PARTIAL {
            let cut = utf8_cut(rest, MAX_PARTIAL);
            self.record(stream, &rest[..cut], time)?;
            rest = &rest[cut..];
        }
        self.record(stream, rest, time)
    }

    fn record(&mut self, stream: Stream, text: &[u8], time: &str) -> io::Result<()> {
        let start = self.out.len();
        self.out.extend_from_slice(b"{\"log\":");
        encode_go_string(&mut self.out, text);
        self.out.extend_from_slice(b",\"stream\":\"");
        self.out.extend_from_slice(stream.name().as_bytes());
        self.out.extend_from_slice(b"\",\"time\":\"");
        self.out.extend_from_slice(time.as_bytes());
        self.out.extend_from_slice(b"\"}\n");
        let len = (self.out.len() - start) as u64;
        if let Some(max) = self.max_size {
            let before = self.size + start as u64;
            if before > 0 && before + len > max {
                let record: Vec<u8> = self.out.drain(start..).collect();
                self.flush()?;
                self.rotate()?;
                self.out.extend_from_slice(&record);
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let r = match self.file.as_mut() {
            Some(f) => f.write_all(&self.out),
            None => Err(io::Error::other("log file is not open")),
        };
        // What cannot be written is lost, as dockerd loses it.
        if r.is_ok() {
            self.size += self.out.len() as u64;
        }
        self.out.clear();
        if self.out.capacity() > 256 * 1024 {
            self.out.shrink_to(64 * 1024);
        }
        self.report(r)
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file = None;
        let r = if self.max_file < 2 {
            OpenOptions::new().write(true).truncate(true).open(&self.path).map(drop)
        } else {
            let n = self.max_file - 1;
            let _ = std::fs::remove_file(numbered(&self.path, n));
            for i in (1..n).rev() {
                let from = numbered(&self.path, i);
                if from.exists() {
                    let _ = std::fs::rename(&from, numbered(&self.path, i + 1));
                }
            }
            std::fs::rename(&self.path, numbered(&self.path, 1))
        };
        self.size = 0;
        let opened = open_append(&self.path);
        let r = r.and(opened.map(|f| {
            self.file = Some(f);
        }));
        self.report(r)
    }

    fn report(&mut self, r: io::Result<()>) -> io::Result<()> {
        match r {
            Ok(()) => {
                self.failing = false;
                Ok(())
            }
            Err(e) if !self.failing => {
                self.failing = true;
                Err(e)
            }
            Err(_) => Ok(()),
        }
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).mode(0o640).open(path)
}

fn numbered(path: &Path, i: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{i}"));
    PathBuf::from(s)
}

/// The largest cut ≤ `max` that does not split a UTF-8 sequence (unless the
/// data is not UTF-8 there anyway).
fn utf8_cut(data: &[u8], max: usize) -> usize {
    if data.len() <= max {
        return data.len();
    }
    let mut cut = max;
    while cut > max.saturating_sub(3) && cut > 0 && (data[cut] & 0xC0) == 0x80 {
        cut -= 1;
    }
    if cut == 0 {
        max
    } else {
        cut
    }
}

/// Appends `s` as a JSON string the way Go's encoding/json writes it.
pub fn encode_go_string(out: &mut Vec<u8>, s: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    for chunk in s.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '"' => out.extend_from_slice(b"\\\""),
                '\\' => out.extend_from_slice(b"\\\\"),
                '\n' => out.extend_from_slice(b"\\n"),
                '\r' => out.extend_from_slice(b"\\r"),
                '\t' => out.extend_from_slice(b"\\t"),
                '<' | '>' | '&' | '\u{2028}' | '\u{2029}' | '\0'..='\x1f' => {
                    let n = c as u32;
                    out.extend_from_slice(b"\\u");
                    for shift in [12, 8, 4, 0] {
                        out.push(HEX[((n >> shift) & 0xF) as usize]);
                    }
                }
                _ => {
                    let mut b = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
                }
            }
        }
        if !chunk.invalid().is_empty() {
            out.extend_from_slice(b"\\ufffd");
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn t0() -> SystemTime {
        UNIX_EPOCH + Duration::new(1_136_214_245, 5)
    }

    fn log(dir: &Path, max_size: Option<u64>, max_file: u32) -> JsonLog {
        JsonLog::open(&LogConfig { path: dir.join("c-json.log"), max_size, max_file }).expect("open log")
    }

    fn lines(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .expect("read log")
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect()
    }

    #[test]
    fn splits_at_newlines_and_joins_across_chunks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut l = log(dir.path(), None, 1);
        l.write(Stream::Stdout, b"one\ntw", t0()).expect("write");
        l.write(Stream::Stderr, b"err\n", t0()).expect("write");
        l.write(Stream::Stdout, b"o\nthree", t0()).expect("write");
        l.flush_partial(t0()).expect("flush");
        let got = lines(&dir.path().join("c-json.log"));
        let logs: Vec<(&str, &str)> =
            got.iter().map(|v| (v["log"].as_str().unwrap(), v["stream"].as_str().unwrap())).collect();
        assert_eq!(logs, [("one\n", "stdout"), ("err\n", "stderr"), ("two\n", "stdout"), ("three", "stdout")]);
        assert_eq!(got[0]["time"], "2006-01-02T15:04:05.000000005Z");
    }

    #[test]
    fn escapes_like_go() {
        let mut out = Vec::new();
        encode_go_string(&mut out, b"a\"b\\<&>\x01\t\xff\xe2\x80\xa8\n");
        assert_eq!(String::from_utf8(out).unwrap(), r#""a\"b\\\u003c\u0026\u003e\u0001\t\ufffd\u2028\n""#);
    }

    #[test]
    fn exact_record_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut l = log(dir.path(), None, 1);
        l.write(Stream::Stdout, b"hi\n", UNIX_EPOCH + Duration::new(1_136_214_245, 0)).expect("write");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("c-json.log")).unwrap(),
            "{\"log\":\"hi\\n\",\"stream\":\"stdout\",\"time\":\"2006-01-02T15:04:05Z\"}\n"
        );
    }

    #[test]
    fn long_partial_lines_are_cut_at_16k() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut l = log(dir.path(), None, 1);
        l.write(Stream::Stdout, &vec![b'x'; MAX_PARTIAL + 10], t0()).expect("write");
        let got = lines(&dir.path().join("c-json.log"));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0]["log"].as_str().unwrap().len(), MAX_PARTIAL);
        l.write(Stream::Stdout, b"\n", t0()).expect("write");
        let got = lines(&dir.path().join("c-json.log"));
        assert_eq!(got[1]["log"].as_str().unwrap(), "xxxxxxxxxx\n");
    }

    #[test]
    fn rotates_keeping_max_file_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c-json.log");
        let mut l = log(dir.path(), Some(200), 3);
        for i in 0..20 {
            l.write(Stream::Stdout, format!("line {i}\n").as_bytes(), t0()).expect("write");
        }
        for p in [path.clone(), numbered(&path, 1), numbered(&path, 2)] {
            let size = std::fs::metadata(&p).expect("file exists").len();
            assert!(size > 0 && size <= 200, "{} has {size} bytes", p.display());
        }
        assert!(!numbered(&path, 3).exists());
        let last = lines(&path);
        assert_eq!(last.last().unwrap()["log"], "line 19\n");
    }

    #[test]
    fn max_file_one_truncates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c-json.log");
        let mut l = log(dir.path(), Some(200), 1);
        for i in 0..20 {
            l.write(Stream::Stdout, format!("line {i}\n").as_bytes(), t0()).expect("write");
        }
        assert!(std::fs::metadata(&path).unwrap().len() <= 200);
        assert!(!numbered(&path, 1).exists());
        assert_eq!(lines(&path).last().unwrap()["log"], "line 19\n");
    }

    #[test]
    fn cuts_do_not_split_utf8() {
        let s = "é".repeat(10);
        assert_eq!(utf8_cut(s.as_bytes(), 5), 4);
        assert_eq!(utf8_cut(b"abcdef", 3), 3);
    }
}

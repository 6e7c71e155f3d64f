//! The command line berthd starts the shim with.
//!
//! ```text
//! berth-shim --id ID --bundle BUNDLE_DIR --state STATE_DIR --runtime PATH [--runtime-root DIR]
//!            (--log-path FILE [--log-max-size BYTES] [--log-max-file N] | --no-log) [--tty] [--stdin]
//! ```
//!
//! Both `--opt value` and `--opt=value` are accepted. Hand-parsed: a
//! parser crate would cost more resident memory than this file.

use std::ffi::OsString;
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub id: String,
    pub bundle: PathBuf,
    pub state: PathBuf,
    pub runtime: PathBuf,
    pub runtime_root: Option<PathBuf>,
    /// `None` with `--no-log`.
    pub log: Option<LogConfig>,
    pub tty: bool,
    pub stdin: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    pub path: PathBuf,
    /// Rotate before the file would grow past this many bytes; `None` never.
    pub max_size: Option<u64>,
    /// Files kept, the live one included; 1 truncates instead of rotating.
    pub max_file: u32,
}

pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Config, String> {
    let mut id = None;
    let mut bundle = None;
    let mut state = None;
    let mut runtime = None;
    let mut runtime_root = None;
    let mut log_path = None;
    let mut max_size = None;
    let mut max_file = None;
    let (mut no_log, mut tty, mut stdin) = (false, false, false);

    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let arg = arg.into_string().map_err(|a| format!("argument is not UTF-8: {a:?}"))?;
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let flag = |v: &mut bool| -> Result<(), String> {
            if inline.is_some() {
                return Err(format!("{name} takes no value"));
            }
            *v = true;
            Ok(())
        };
        match name.as_str() {
            "--no-log" => flag(&mut no_log)?,
            "--tty" => flag(&mut tty)?,
            "--stdin" => flag(&mut stdin)?,
            "--id" | "--bundle" | "--state" | "--runtime" | "--runtime-root" | "--log-path" | "--log-max-size"
            | "--log-max-file" => {
                let value = match inline {
                    Some(v) => v,
                    None => it
                        .next()
                        .ok_or_else(|| format!("{name} needs a value"))?
                        .into_string()
                        .map_err(|a| format!("{name}: value is not UTF-8: {a:?}"))?,
                };
                match name.as_str() {
                    "--id" => id = Some(value),
                    "--bundle" => bundle = Some(PathBuf::from(value)),
                    "--state" => state = Some(PathBuf::from(value)),
                    "--runtime" => runtime = Some(PathBuf::from(value)),
                    "--runtime-root" => runtime_root = Some(PathBuf::from(value)),
                    "--log-path" => log_path = Some(PathBuf::from(value)),
                    "--log-max-size" => max_size = Some(parse_size(&value)?),
                    _ => {
                        max_file =
                            Some(value.parse::<u32>().map_err(|_| format!("--log-max-file: not a count: {value:?}"))?)
                    }
                }
            }
            _ => return Err(format!("unknown argument {arg:?}")),
        }
    }

    let id = id.ok_or("--id is required")?;
    if id.is_empty() || id.contains('/') || id.starts_with('.') {
        return Err(format!("--id: not a container id: {id:?}"));
    }
    let log = match (no_log, log_path) {
        (true, _) => None,
        (false, Some(path)) => {
            let max_file = max_file.unwrap_or(1);
            if max_file == 0 {
                return Err("--log-max-file must be at least 1".to_owned());
            }
            Some(LogConfig { path, max_size: max_size.filter(|&n| n > 0), max_file })
        }
        (false, None) => return Err("--log-path or --no-log is required".to_owned()),
    };
    Ok(Config {
        id,
        bundle: bundle.ok_or("--bundle is required")?,
        state: state.ok_or("--state is required")?,
        runtime: runtime.ok_or("--runtime is required")?,
        runtime_root,
        log,
        tty,
        stdin,
    })
}

/// Bytes, with an optional k/m/g suffix (powers of 1024, as Docker's
/// `max-size`).
fn parse_size(s: &str) -> Result<u64, String> {
    let lower = s.trim().to_ascii_lowercase();
    let lower = lower.strip_suffix('b').unwrap_or(&lower);
    let (digits, mult) = match lower.char_indices().last() {
        Some((i, 'k')) => (&lower[..i], 1u64 << 10),
        Some((i, 'm')) => (&lower[..i], 1 << 20),
        Some((i, 'g')) => (&lower[..i], 1 << 30),
        _ => (lower, 1),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("--log-max-size: not a size: {s:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<OsString> {
        s.iter().map(OsString::from).collect()
    }

    #[test]
    fn full_command_line_parses() {
        let c = parse(args(&[
            "--id",
            "abc",
            "--bundle",
            "/b",
            "--state",
            "/s",
            "--runtime",
            "/usr/bin/crun",
            "--runtime-root=/r",
            "--log-path",
            "/l.log",
            "--log-max-size",
            "10k",
            "--log-max-file",
            "3",
            "--tty",
            "--stdin",
        ]))
        .expect("parses");
        assert_eq!(c.id, "abc");
        assert_eq!(c.runtime_root, Some(PathBuf::from("/r")));
        assert_eq!(c.log, Some(LogConfig { path: "/l.log".into(), max_size: Some(10240), max_file: 3 }));
        assert!(c.tty && c.stdin);
    }

    #[test]
    fn no_log_needs_no_log_path() {
        let c = parse(args(&["--id", "a", "--bundle", "/b", "--state", "/s", "--runtime", "/x", "--no-log"]))
            .expect("parses");
        assert_eq!(c.log, None);
        assert!(!c.tty && !c.stdin);
    }

    #[test]
    fn missing_or_unknown_arguments_are_rejected() {
        assert!(parse(args(&["--id", "a", "--bundle", "/b", "--state", "/s", "--runtime", "/x"])).is_err());
        assert!(parse(args(&["--id", "a", "--bundle", "/b", "--state", "/s", "--no-log"])).is_err());
        assert!(parse(args(&["--id", "a", "--bundle", "/b", "--state", "/s", "--runtime", "/x", "--no-log", "--x"]))
            .is_err());
        assert!(
            parse(args(&["--id", "../a", "--bundle", "/b", "--state", "/s", "--runtime", "/x", "--no-log"])).is_err()
        );
        assert!(parse(args(&["--id"])).is_err());
    }

    #[test]
    fn sizes_take_suffixes() {
        assert_eq!(parse_size("100"), Ok(100));
        assert_eq!(parse_size("2m"), Ok(2 << 20));
        assert_eq!(parse_size("1GB"), Ok(1 << 30));
        assert!(parse_size("x").is_err());
    }
}

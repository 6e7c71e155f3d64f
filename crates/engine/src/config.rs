//! The engine's settings: dockerd's daemon.json format merged with flags,
//! with dockerd's rules (a setting given both ways is an error; unknown keys
//! are errors).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Settings read from a daemon.json file. Field names are dockerd's.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct DaemonJson {
    pub bridge: Option<String>,
    pub bip: Option<String>,
    pub iptables: Option<bool>,
    pub ip_forward: Option<bool>,
    pub host_gateway_ip: Option<std::net::Ipv4Addr>,
    pub data_root: Option<PathBuf>,
    pub exec_root: Option<PathBuf>,
    pub hosts: Option<Vec<String>>,
    pub pidfile: Option<PathBuf>,
    pub registry_mirrors: Option<Vec<String>>,
    pub insecure_registries: Option<Vec<String>>,
    pub log_level: Option<String>,
    pub debug: Option<bool>,
    pub live_restore: Option<bool>,
    pub tls: Option<bool>,
    pub tlsverify: Option<bool>,
    pub tlscacert: Option<PathBuf>,
    pub tlscert: Option<PathBuf>,
    pub tlskey: Option<PathBuf>,
    pub default_runtime: Option<String>,
    pub runtimes: Option<BTreeMap<String, serde_json::Value>>,
    pub experimental: Option<bool>,
}

/// Every key `DaemonJson` accepts, for dockerd's unknown-key error.
const KNOWN_KEYS: &[&str] = &[
    "data-root", "exec-root", "hosts", "pidfile", "registry-mirrors", "insecure-registries",
    "log-level", "debug", "live-restore", "tls", "tlsverify", "tlscacert", "tlscert", "tlskey",
    "default-runtime", "runtimes", "experimental", "bridge", "bip", "iptables", "ip-forward", "host-gateway-ip",
];

/// Why a daemon.json could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("unable to read configuration file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("unable to configure the Docker daemon with file {path}: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("unable to configure the Docker daemon with file {path}: the following directives don't match any configuration option: {keys}")]
    UnknownKeys { path: PathBuf, keys: String },
    #[error("unable to configure the Docker daemon with file {path}: the following directives are specified both as a flag and in the configuration file: {conflicts}")]
    Conflict { path: PathBuf, conflicts: String },
    #[error("invalid registry mirror {0:?}: must be an http:// or https:// URL without path")]
    Mirror(String),
}

impl DaemonJson {
    /// Reads and validates a daemon.json. A missing file is an error: dockerd
    /// only tolerates a missing file at its default path, which the caller
    /// decides.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let perr = |reason: String| ConfigError::Parse { path: path.to_owned(), reason };
        if text.trim().is_empty() {
            return Ok(DaemonJson::default());
        }
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| perr(e.to_string()))?;
        let obj = value.as_object().ok_or_else(|| perr("not a JSON object".into()))?;
        let mut unknown: Vec<&str> = obj.keys().map(String::as_str).filter(|k| !KNOWN_KEYS.contains(k)).collect();
        if !unknown.is_empty() {
            unknown.sort_unstable();
            return Err(ConfigError::UnknownKeys { path: path.to_owned(), keys: unknown.join(", ") });
        }
        serde_json::from_value(value).map_err(|e| perr(e.to_string()))
    }

    /// The keys set in this file, for the flag-conflict check.
    pub fn set_keys(&self) -> Vec<&'static str> {
        let mut keys = Vec::new();
        macro_rules! check { ($($field:ident => $key:literal),*) => { $( if self.$field.is_some() { keys.push($key); } )* } }
        check!(data_root => "data-root", exec_root => "exec-root", hosts => "hosts", pidfile => "pidfile",
            registry_mirrors => "registry-mirrors", insecure_registries => "insecure-registries",
            log_level => "log-level", debug => "debug", live_restore => "live-restore",
            bridge => "bridge", bip => "bip", iptables => "iptables", ip_forward => "ip-forward", host_gateway_ip => "host-gateway-ip");
        keys
    }
}

/// Normalizes a mirror URL as dockerd does (scheme required, trailing slash
/// dropped, no path).
pub fn validate_mirror(m: &str) -> Result<String, ConfigError> {
    let trimmed = m.trim_end_matches('/');
    let rest = trimmed
        .strip_prefix("http://")
        .or_else(|| trimmed.strip_prefix("https://"))
        .ok_or_else(|| ConfigError::Mirror(m.to_owned()))?;
    if rest.is_empty() || rest.contains('/') || rest.contains('?') || rest.contains('#') {
        return Err(ConfigError::Mirror(m.to_owned()));
    }
    Ok(trimmed.to_owned())
}

/// The engine's effective settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub data_root: PathBuf,
    pub exec_root: PathBuf,
    pub registry_mirrors: Vec<String>,
    pub insecure_registries: Vec<String>,
    pub live_restore: bool,
    /// Printed in `/info` as `DockerRootDir` etc.
    pub hosts: Vec<String>,
    /// Runtime used when a container names none (`crun` when unset).
    pub default_runtime: Option<String>,
    /// Extra OCI runtimes by name (daemon.json `runtimes`: `{"name": {"path": "/usr/bin/x"}}`).
    pub runtimes: BTreeMap<String, std::path::PathBuf>,
    /// `--bridge`: `none` disables the default bridge (dockerd's meaning of
    /// naming an existing bridge is not supported).
    pub bridge: Option<String>,
    /// `--bip`: the default bridge's address, `172.20.0.1/16`.
    pub bip: Option<String>,
    /// `--iptables`: manage the firewall (NAT, published ports).
    pub iptables: bool,
    /// `--ip-forward`.
    pub ip_forward: bool,
    /// `--host-gateway-ip`: what `host-gateway` in `--add-host` means.
    pub host_gateway_ip: Option<std::net::Ipv4Addr>,
    /// `--vm-guest`: the engine runs inside the Berth VM, whose host
    /// forwards published ports to the guest's interface.
    pub vm_guest: bool,
}

/// The `runtimes` map of daemon.json, paths only (runtime args are not
/// supported).
pub fn runtime_paths(map: &BTreeMap<String, serde_json::Value>) -> BTreeMap<String, std::path::PathBuf> {
    map.iter()
        .filter_map(|(k, v)| v.get("path").and_then(|p| p.as_str()).map(|p| (k.clone(), std::path::PathBuf::from(p))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_daemon_json_key_is_named_in_the_error() {
        let err = DaemonJson::parse(Path::new("d.json"), r#"{"registry-mirrors":[],"bogus":1}"#).unwrap_err();
        assert!(err.to_string().contains("don't match any configuration option: bogus"), "{err}");
    }

    #[test]
    fn daemon_json_reads_mirrors_and_insecure_registries() {
        let c = DaemonJson::parse(
            Path::new("d.json"),
            r#"{"registry-mirrors":["http://127.0.0.1:5000"],"insecure-registries":["10.0.0.0/8"]}"#,
        )
        .unwrap();
        assert_eq!(c.registry_mirrors.unwrap(), ["http://127.0.0.1:5000"]);
        assert_eq!(c.insecure_registries.unwrap(), ["10.0.0.0/8"]);
    }

    #[test]
    fn malformed_daemon_json_is_a_parse_error() {
        assert!(matches!(DaemonJson::parse(Path::new("d"), "{"), Err(ConfigError::Parse { .. })));
    }

    #[test]
    fn mirror_must_be_a_url_without_path() {
        assert_eq!(validate_mirror("http://127.0.0.1:5000/").unwrap(), "http://127.0.0.1:5000");
        assert!(validate_mirror("127.0.0.1:5000").is_err());
        assert!(validate_mirror("https://mirror/v2/x").is_err());
    }
}

//! The image configuration blob (OCI image config / Docker image JSON).
//!
//! Owns the typed view of a config. The original bytes are kept alongside:
//! the image ID is the sha256 of those exact bytes, so the engine stores
//! them verbatim and unknown fields survive untouched.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize};

use crate::digest::Digest;

/// Largest config blob accepted. Real ones are a few KiB; long build
/// histories stay far below this.
pub const MAX_CONFIG_SIZE: u64 = 8 << 20;

/// A config that is not valid JSON of the expected shape.
#[derive(Debug, thiserror::Error)]
#[error("invalid image config: {0}")]
pub struct InvalidConfig(String);

/// An image config with its original bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageConfig {
    raw: Bytes,
    parsed: ConfigFile,
}

impl ImageConfig {
    /// Parses `raw`, keeping it for [`ImageConfig::raw`].
    pub fn from_bytes(raw: Bytes) -> Result<Self, InvalidConfig> {
        if raw.len() as u64 > MAX_CONFIG_SIZE {
            return Err(InvalidConfig(format!("larger than {MAX_CONFIG_SIZE} bytes")));
        }
        let super::manifest::ObjectOnly(parsed): super::manifest::ObjectOnly<ConfigFile> = serde_json::from_slice(&raw).map_err(|e| InvalidConfig(e.to_string()))?;
        Ok(ImageConfig { raw, parsed })
    }

    /// [`ImageConfig::from_bytes`] on a copy of `raw`.
    pub fn from_slice(raw: &[u8]) -> Result<Self, InvalidConfig> {
        Self::from_bytes(Bytes::copy_from_slice(raw))
    }

    /// Serializes `parsed` to new bytes (for images built or committed
    /// locally).
    pub fn from_parsed(parsed: ConfigFile) -> Self {
        let raw = serde_json::to_vec(&parsed).expect("a config of strings, numbers and maps always serializes");
        ImageConfig { raw: Bytes::from(raw), parsed }
    }

    /// The bytes as received: store these, never a re-serialization.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// The image ID: sha256 of the raw bytes.
    pub fn id(&self) -> Digest {
        Digest::of(&self.raw)
    }

    pub fn get(&self) -> &ConfigFile {
        &self.parsed
    }
}

impl std::ops::Deref for ImageConfig {
    type Target = ConfigFile;
    fn deref(&self) -> &ConfigFile {
        &self.parsed
    }
}

/// The fields of an image config Berth uses. Unknown fields are ignored on
/// parse (and preserved in [`ImageConfig::raw`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConfigFile {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(rename = "os.version", default, skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
    #[serde(rename = "os.features", default, skip_serializing_if = "Option::is_none")]
    pub os_features: Option<Vec<String>>,
    /// RFC 3339 timestamp, kept as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ContainerConfig>,
    #[serde(default)]
    pub rootfs: RootFs,
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "null_as_default")]
    pub history: Vec<History>,
    /// Docker only: the ID of the build container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Docker only: the build container's config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_config: Option<ContainerConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_version: Option<String>,
}

/// The runtime defaults of an image (`config` in the image JSON).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "str_slice")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "str_slice")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Keys like `80/tcp`; values are empty objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<Healthcheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args_escaped: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_build: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<Vec<String>>,
}

/// `HEALTHCHECK` settings; durations are nanoseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Healthcheck {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_period: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_interval: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<i64>,
}

/// The layer chain by uncompressed digest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type", default = "layers_type")]
    pub kind: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub diff_ids: Vec<Digest>,
}

impl Default for RootFs {
    fn default() -> Self {
        RootFs { kind: layers_type(), diff_ids: Vec::new() }
    }
}

fn layers_type() -> String {
    "layers".to_owned()
}

/// One build step.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty_layer: bool,
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Docker's `strslice`: a JSON string or array of strings (or null).
fn str_slice<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<OneOrMany>::deserialize(d)? {
        None => None,
        Some(OneOrMany::One(s)) => Some(vec![s]),
        Some(OneOrMany::Many(v)) => Some(v),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCKER_CONFIG: &str = r##"{
      "architecture": "amd64",
      "config": {
        "Hostname": "", "User": "app", "Env": ["PATH=/usr/bin", "A=b"],
        "Cmd": ["redis-server"], "Entrypoint": "docker-entrypoint.sh",
        "WorkingDir": "/data", "Labels": {"k": "v"},
        "ExposedPorts": {"6379/tcp": {}}, "Volumes": {"/data": {}},
        "StopSignal": "SIGTERM", "ArgsEscaped": true, "OnBuild": null,
        "Shell": ["/bin/sh", "-c"],
        "Healthcheck": {"Test": ["CMD", "true"], "Interval": 1000000000, "Retries": 3}
      },
      "container": "abc",
      "container_config": {"Cmd": ["/bin/sh", "-c", "#(nop) CMD [\"redis-server\"]"]},
      "created": "2024-01-01T00:00:00.123456789Z",
      "docker_version": "24.0.7",
      "history": [
        {"created": "2024-01-01T00:00:00Z", "created_by": "ADD file:x in /"},
        {"created": "2024-01-01T00:00:01Z", "created_by": "CMD [\"redis-server\"]", "empty_layer": true, "comment": "buildkit"}
      ],
      "os": "linux",
      "rootfs": {"type": "layers", "diff_ids": ["sha256:0101010101010101010101010101010101010101010101010101010101010101"]},
      "x-unknown-field": {"kept": true}
    }"##;

    #[test]
    fn docker_config_fields_are_read() {
        let c = ImageConfig::from_bytes(Bytes::from_static(DOCKER_CONFIG.as_bytes())).unwrap();
        assert_eq!((c.os.as_str(), c.architecture.as_str()), ("linux", "amd64"));
        let cfg = c.config.as_ref().unwrap();
        assert_eq!(cfg.user.as_deref(), Some("app"));
        assert_eq!(cfg.entrypoint.as_deref(), Some(&["docker-entrypoint.sh".to_owned()][..]));
        assert_eq!(cfg.cmd.as_deref(), Some(&["redis-server".to_owned()][..]));
        assert!(cfg.exposed_ports.as_ref().unwrap().contains_key("6379/tcp"));
        assert_eq!(cfg.healthcheck.as_ref().unwrap().retries, Some(3));
        assert_eq!(cfg.on_build, None);
        assert_eq!(c.history.len(), 2);
        assert!(c.history[1].empty_layer);
        assert_eq!(c.rootfs.diff_ids.len(), 1);
        assert_eq!(c.docker_version.as_deref(), Some("24.0.7"));
        assert!(c.container_config.is_some());
    }

    #[test]
    fn raw_bytes_are_kept_verbatim_with_unknown_fields() {
        let raw = Bytes::from_static(DOCKER_CONFIG.as_bytes());
        let c = ImageConfig::from_bytes(raw.clone()).unwrap();
        assert_eq!(c.raw(), &raw);
        assert_eq!(c.id(), Digest::of(DOCKER_CONFIG.as_bytes()));
        assert!(std::str::from_utf8(c.raw()).unwrap().contains("x-unknown-field"));
    }

    #[test]
    fn minimal_oci_config_parses() {
        let c = ImageConfig::from_bytes(Bytes::from_static(
            br#"{"architecture":"arm64","variant":"v8","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"config":null,"history":null}"#,
        ))
        .unwrap();
        assert_eq!(c.variant.as_deref(), Some("v8"));
        assert!(c.config.is_none());
        assert!(c.history.is_empty());
    }

    #[test]
    fn malformed_configs_are_refused() {
        for bad in [&b"[]"[..], b"{", br#"{"rootfs":{"diff_ids":["md5:x"]}}"#, br#"{"config":{"Cmd":5}}"#] {
            assert!(ImageConfig::from_bytes(Bytes::copy_from_slice(bad)).is_err());
        }
    }

    #[test]
    fn parsed_config_round_trips() {
        let c = ImageConfig::from_bytes(Bytes::from_static(DOCKER_CONFIG.as_bytes())).unwrap();
        let again = ImageConfig::from_parsed(c.get().clone());
        assert_eq!(again.get(), c.get());
    }
}

//! `guest.json`, written by the host into the `berthcfg` share: the folders to
//! mount and the engine's extra arguments.

use serde::Deserialize;

/// How a share reaches the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ShareType {
    #[default]
    #[serde(rename = "9p")]
    NineP,
    Virtiofs,
}

/// One host folder shared into the guest at the same path.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Share {
    /// The device's mount tag (`share0`, ...).
    pub tag: String,
    /// Absolute path in the guest (the host's path).
    pub path: String,
    /// `9p` (the default) or `virtiofs`.
    #[serde(default, rename = "type")]
    pub kind: ShareType,
    #[serde(default)]
    pub readonly: bool,
}

/// The whole file. Unknown fields are ignored so the host can add some
/// before the guest knows them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct GuestConfig {
    #[serde(default)]
    pub shares: Vec<Share>,
    #[serde(default)]
    pub engine_args: Vec<String>,
    #[serde(default = "default_gateway")]
    pub host_gateway: String,
}

fn default_gateway() -> String {
    crate::net::GATEWAY.to_string()
}

impl Default for GuestConfig {
    fn default() -> Self {
        GuestConfig { shares: Vec::new(), engine_args: Vec::new(), host_gateway: default_gateway() }
    }
}

/// Parses guest.json.
pub fn parse(text: &str) -> Result<GuestConfig, serde_json::Error> {
    let c: GuestConfig = serde_json::from_str(text)?;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_example_parses() {
        let c = parse(
            r#"{"shares":[{"tag":"share0","path":"/tmp"},{"tag":"share1","path":"/home/u"}],
               "engine_args":["--debug"], "host_gateway":"10.0.2.2"}"#,
        )
        .unwrap();
        assert_eq!(c.shares.len(), 2);
        assert_eq!(c.shares[1], Share { tag: "share1".into(), path: "/home/u".into(), kind: ShareType::NineP, readonly: false });
        assert_eq!(c.engine_args, vec!["--debug"]);
        assert_eq!(c.host_gateway, "10.0.2.2");
    }

    #[test]
    fn missing_fields_take_defaults() {
        let c = parse("{}").unwrap();
        assert_eq!(c, GuestConfig::default());
        assert_eq!(c.host_gateway, "10.0.2.2");
    }

    #[test]
    fn virtiofs_share_and_unknown_fields_parse() {
        let c = parse(r#"{"shares":[{"tag":"s","path":"/Users/a","type":"virtiofs","readonly":true}],"future":1}"#).unwrap();
        assert_eq!(c.shares[0].kind, ShareType::Virtiofs);
        assert!(c.shares[0].readonly);
    }

    #[test]
    fn malformed_json_is_an_error() {
        assert!(parse(r#"{"shares": "nope"}"#).is_err());
        assert!(parse("{").is_err());
    }
}

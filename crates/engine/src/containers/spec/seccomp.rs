//! Seccomp: moby's default profile (and `seccomp=<json>` profiles in the
//! same format) turned into the OCI `linux.seccomp` section.
//!
//! The profile format extends the OCI one with `archMap` and per-rule
//! `includes`/`excludes` conditions on capabilities, architecture and kernel
//! version. Like dockerd (moby/profiles `setupSeccomp`) we keep a rule only
//! if its conditions hold for this container on this host: capabilities are
//! checked against the container's bounding set, architectures against the
//! host's Go architecture name, `minKernel` against uname.

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::SpecError;
use super::host::HostInfo;

/// moby's default profile; see SECCOMP-NOTICE.md for its origin.
const DEFAULT_PROFILE: &str = include_str!("seccomp-default.json");

/// A profile in Docker's format.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    #[serde(default)]
    default_action: String,
    #[serde(default)]
    default_errno_ret: Option<u32>,
    #[serde(default, deserialize_with = "null_as_empty")]
    architectures: Vec<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    arch_map: Vec<ArchMap>,
    #[serde(default, deserialize_with = "null_as_empty")]
    flags: Vec<String>,
    #[serde(default)]
    listener_path: Option<String>,
    #[serde(default)]
    listener_metadata: Option<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    syscalls: Vec<Rule>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArchMap {
    architecture: String,
    #[serde(default, deserialize_with = "null_as_empty")]
    sub_architectures: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    #[serde(default, deserialize_with = "null_as_empty")]
    names: Vec<String>,
    /// The pre-1.12 single-name form.
    #[serde(default)]
    name: String,
    action: String,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default, deserialize_with = "null_as_empty")]
    args: Vec<Arg>,
    #[serde(default)]
    includes: Option<Filter>,
    #[serde(default)]
    excludes: Option<Filter>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct Arg {
    index: u32,
    value: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    value_two: u64,
    op: String,
}

/// Go's JSON decoding reads `null` as an empty list; so do we.
fn null_as_empty<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Filter {
    #[serde(default, deserialize_with = "null_as_empty")]
    caps: Vec<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    arches: Vec<String>,
    #[serde(default, deserialize_with = "kernel_version")]
    min_kernel: Option<(u64, u64)>,
}

/// `"<kernel>.<major>"`, each below 256 and not both zero, as moby parses it.
fn kernel_version<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<(u64, u64)>, D::Error> {
    use serde::de::Error;
    let v = Option::<String>::deserialize(d)?;
    let Some(v) = v.filter(|v| !v.is_empty()) else { return Ok(None) };
    let bad = || D::Error::custom(format!("invalid kernel version: \"{v}\", expected \"<kernel>.<major>\""));
    let (a, b) = v.split_once('.').ok_or_else(bad)?;
    let (a, b): (u8, u8) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
    if a == 0 && b == 0 {
        return Err(bad());
    }
    Ok(Some((a.into(), b.into())))
}

impl Profile {
    /// Decodes a profile sent as `seccomp=<json>`.
    pub fn parse(body: &str) -> Result<Profile, SpecError> {
        serde_json::from_str(body).map_err(|e| SpecError::Seccomp(format!("Decoding seccomp profile failed: {e}")))
    }

    /// moby's default profile.
    pub fn default_profile() -> &'static Profile {
        static DEFAULT: OnceLock<Profile> = OnceLock::new();
        DEFAULT.get_or_init(|| {
            serde_json::from_str(DEFAULT_PROFILE).expect("the embedded default seccomp profile is valid (checked by a test)")
        })
    }

    /// The OCI `linux.seccomp` object for a container whose bounding set is
    /// `bounding`, or `None` when the profile is empty (no default action,
    /// no rules), which means "no filter".
    pub fn to_oci(&self, bounding: &[String], host: &HostInfo) -> Result<Option<Value>, SpecError> {
        if self.default_action.is_empty() && self.syscalls.is_empty() {
            return Ok(None);
        }
        if !self.architectures.is_empty() && !self.arch_map.is_empty() {
            return Err(SpecError::Seccomp(
                "both 'architectures' and 'archMap' are specified in the seccomp profile, use either 'architectures' or 'archMap'".into(),
            ));
        }
        let mut architectures = self.architectures.clone();
        if let Some(native) = host.seccomp_arch() {
            if let Some(a) = self.arch_map.iter().find(|a| a.architecture == native) {
                architectures.push(a.architecture.clone());
                architectures.extend(a.sub_architectures.iter().cloned());
            }
        }
        let kernel_at_least = |min: (u64, u64)| -> Result<bool, SpecError> {
            let (k, m) = host.kernel.ok_or_else(|| SpecError::Seccomp("failed to parse the kernel version".into()))?;
            Ok(k > min.0 || (k == min.0 && m >= min.1))
        };
        let has_cap = |c: &String| bounding.contains(c);
        let mut syscalls = Vec::new();
        for rule in &self.syscalls {
            let names = match (rule.name.is_empty(), rule.names.is_empty()) {
                (true, _) => rule.names.clone(),
                (false, true) => vec![rule.name.clone()],
                (false, false) => {
                    return Err(SpecError::Seccomp(
                        "both 'name' and 'names' are specified in the seccomp profile, use either 'name' or 'names'".into(),
                    ))
                }
            };
            if let Some(ex) = &rule.excludes {
                if ex.arches.iter().any(|a| a == host.arch) || ex.caps.iter().any(has_cap) {
                    continue;
                }
                if let Some(min) = ex.min_kernel {
                    if kernel_at_least(min)? {
                        continue;
                    }
                }
            }
            if let Some(inc) = &rule.includes {
                if !inc.arches.is_empty() && !inc.arches.iter().any(|a| a == host.arch) {
                    continue;
                }
                if !inc.caps.iter().all(has_cap) {
                    continue;
                }
                if let Some(min) = inc.min_kernel {
                    if !kernel_at_least(min)? {
                        continue;
                    }
                }
            }
            let mut out = serde_json::Map::new();
            out.insert("names".into(), names.into());
            out.insert("action".into(), rule.action.clone().into());
            if let Some(e) = rule.errno_ret {
                out.insert("errnoRet".into(), e.into());
            }
            if !rule.args.is_empty() {
                out.insert("args".into(), serde_json::to_value(&rule.args).expect("seccomp args serialize"));
            }
            syscalls.push(Value::Object(out));
        }
        let mut out = serde_json::Map::new();
        out.insert("defaultAction".into(), self.default_action.clone().into());
        if let Some(e) = self.default_errno_ret {
            out.insert("defaultErrnoRet".into(), e.into());
        }
        if !architectures.is_empty() {
            out.insert("architectures".into(), architectures.into());
        }
        if !self.flags.is_empty() {
            out.insert("flags".into(), self.flags.clone().into());
        }
        if let Some(p) = &self.listener_path {
            out.insert("listenerPath".into(), p.clone().into());
        }
        if let Some(m) = &self.listener_metadata {
            out.insert("listenerMetadata".into(), m.clone().into());
        }
        if !syscalls.is_empty() {
            out.insert("syscalls".into(), syscalls.into());
        }
        Ok(Some(Value::Object(out)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::containers::spec::caps::{tweak, DEFAULT_CAPS};

    fn default_caps() -> Vec<String> {
        DEFAULT_CAPS.iter().map(|c| (*c).to_owned()).collect()
    }

    fn rules_for<'a>(seccomp: &'a Value, name: &str) -> Vec<&'a Value> {
        seccomp["syscalls"].as_array().unwrap().iter().filter(|r| r["names"].as_array().unwrap().iter().any(|n| n == name)).collect()
    }

    #[test]
    fn embedded_default_profile_decodes() {
        let p = Profile::default_profile();
        assert_eq!(p.default_action, "SCMP_ACT_ERRNO");
        assert_eq!(p.default_errno_ret, Some(1));
        assert!(p.syscalls.len() > 20);
    }

    #[test]
    fn default_profile_on_x86_64_lists_the_three_x86_arches() {
        let s = Profile::default_profile().to_oci(&default_caps(), &HostInfo::fixture()).unwrap().unwrap();
        assert_eq!(s["architectures"], serde_json::json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]));
        assert_eq!(s["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(s["defaultErrnoRet"], 1);
    }

    #[test]
    fn default_profile_allows_chmod_and_arch_prctl_on_amd64() {
        let s = Profile::default_profile().to_oci(&default_caps(), &HostInfo::fixture()).unwrap().unwrap();
        let chmod = rules_for(&s, "chmod");
        assert_eq!(chmod.len(), 1);
        assert_eq!(chmod[0]["action"], "SCMP_ACT_ALLOW");
        assert!(chmod[0].get("args").is_none());
        assert_eq!(rules_for(&s, "arch_prctl").len(), 1);
        assert!(rules_for(&s, "s390_runtime_instr").is_empty());
    }

    #[test]
    fn clone_is_argument_filtered_without_sys_admin() {
        let s = Profile::default_profile().to_oci(&default_caps(), &HostInfo::fixture()).unwrap().unwrap();
        let clone = rules_for(&s, "clone");
        assert_eq!(clone.len(), 1, "{clone:?}");
        assert_eq!(clone[0]["args"][0]["index"], 0);
        assert_eq!(clone[0]["args"][0]["value"], 2114060288u64);
        assert_eq!(clone[0]["args"][0]["op"], "SCMP_CMP_MASKED_EQ");
        // clone3 fails with ENOSYS so libcs fall back to the filtered clone.
        let clone3 = rules_for(&s, "clone3");
        assert_eq!(clone3.len(), 1);
        assert_eq!(clone3[0]["action"], "SCMP_ACT_ERRNO");
        assert_eq!(clone3[0]["errnoRet"], 38);
        assert!(rules_for(&s, "mount").is_empty());
    }

    #[test]
    fn clone_is_allowed_outright_with_sys_admin() {
        let caps = tweak(&["SYS_ADMIN".to_owned()], &[], false, &HostInfo::fixture()).unwrap();
        let s = Profile::default_profile().to_oci(&caps, &HostInfo::fixture()).unwrap().unwrap();
        let clone = rules_for(&s, "clone");
        assert_eq!(clone.len(), 1);
        assert!(clone[0].get("args").is_none(), "the arg-filtered rule must be excluded: {clone:?}");
        assert!(rules_for(&s, "clone3").iter().all(|r| r["action"] == "SCMP_ACT_ALLOW"));
        assert_eq!(rules_for(&s, "mount").len(), 1);
    }

    #[test]
    fn ptrace_needs_kernel_4_8_or_sys_ptrace() {
        let mut host = HostInfo::fixture();
        host.kernel = Some((4, 4));
        let old = Profile::default_profile().to_oci(&default_caps(), &host).unwrap().unwrap();
        assert!(rules_for(&old, "ptrace").is_empty());
        host.kernel = Some((4, 8));
        let new = Profile::default_profile().to_oci(&default_caps(), &host).unwrap().unwrap();
        assert_eq!(rules_for(&new, "ptrace").len(), 1);
    }

    #[test]
    fn custom_profile_with_old_name_field_and_plain_architectures() {
        let p = Profile::parse(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_X86_64"],
                "syscalls":[{"name":"mkdir","action":"SCMP_ACT_ERRNO","comment":"x"}]}"#,
        )
        .unwrap();
        let s = p.to_oci(&default_caps(), &HostInfo::fixture()).unwrap().unwrap();
        assert_eq!(s["architectures"], serde_json::json!(["SCMP_ARCH_X86_64"]));
        assert_eq!(s["syscalls"], serde_json::json!([{"names":["mkdir"],"action":"SCMP_ACT_ERRNO"}]));
    }

    #[test]
    fn empty_profile_means_no_filter() {
        assert!(Profile::parse("{}").unwrap().to_oci(&[], &HostInfo::fixture()).unwrap().is_none());
    }

    #[test]
    fn malformed_profile_is_a_decode_error() {
        let err = Profile::parse("{not json").unwrap_err();
        assert!(err.to_string().starts_with("Decoding seccomp profile failed: "), "{err}");
        let err = Profile::parse(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["x"],"action":"SCMP_ACT_ALLOW","includes":{"minKernel":"4"}}]}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("invalid kernel version"), "{err}");
    }

    #[test]
    fn both_architectures_and_archmap_is_refused() {
        let p = Profile::parse(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_X86"],
                "archMap":[{"architecture":"SCMP_ARCH_X86_64","subArchitectures":[]}]}"#,
        )
        .unwrap();
        assert!(p.to_oci(&[], &HostInfo::fixture()).is_err());
    }
}

//! `HostConfig.SecurityOpt`, parsed as dockerd's `parseSecurityOpt` does.

use super::error::SpecError;

/// The seccomp choice of `seccomp=...`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SeccompChoice {
    /// No option: the default profile (none when privileged).
    #[default]
    Default,
    /// `seccomp=builtin`: the default profile, even when privileged.
    Builtin,
    /// `seccomp=unconfined`.
    Unconfined,
    /// `seccomp=<profile json>` (the CLI sends the file's content).
    Custom(String),
}

/// What the security options ask for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecurityOptions {
    pub no_new_privileges: bool,
    pub seccomp: SeccompChoice,
    /// `writable-cgroups[=bool]`: `None` leaves it to `Privileged`.
    pub writable_cgroups: Option<bool>,
    /// `apparmor=...`; recorded, not applied (Berth loads no AppArmor
    /// profiles).
    pub apparmor: Option<String>,
    /// `label=...`; recorded, not applied (no SELinux support).
    pub labels: Vec<String>,
}

fn parse_bool(v: &str) -> Option<bool> {
    // Go's strconv.ParseBool.
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Parses the options; errors carry dockerd's messages.
pub fn parse(opts: &[String]) -> Result<SecurityOptions, SpecError> {
    let mut out = SecurityOptions::default();
    for opt in opts {
        match opt.as_str() {
            "no-new-privileges" => {
                out.no_new_privileges = true;
                continue;
            }
            "writable-cgroups" => {
                out.writable_cgroups = Some(true);
                continue;
            }
            "disable" => {
                out.labels.push("disable".into());
                continue;
            }
            _ => {}
        }
        let split = if opt.contains('=') { opt.split_once('=') } else { opt.split_once(':') };
        let Some((k, v)) = split else {
            return Err(SpecError::invalid(format!("invalid --security-opt 1: {opt:?}")));
        };
        let invalid2 = || SpecError::invalid(format!("invalid --security-opt 2: {opt:?}"));
        match k {
            "label" => out.labels.push(v.to_owned()),
            "apparmor" => out.apparmor = Some(v.to_owned()),
            "seccomp" => {
                out.seccomp = match v {
                    "unconfined" => SeccompChoice::Unconfined,
                    "builtin" => SeccompChoice::Builtin,
                    "" => SeccompChoice::Default,
                    json => SeccompChoice::Custom(json.to_owned()),
                }
            }
            "no-new-privileges" => out.no_new_privileges = parse_bool(v).ok_or_else(invalid2)?,
            "writable-cgroups" => out.writable_cgroups = Some(parse_bool(v).ok_or_else(invalid2)?),
            _ => return Err(invalid2()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(v: &[&str]) -> Result<SecurityOptions, SpecError> {
        parse(&v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
    }

    #[test]
    fn no_new_privileges_forms() {
        assert!(p(&["no-new-privileges"]).unwrap().no_new_privileges);
        assert!(p(&["no-new-privileges:true"]).unwrap().no_new_privileges);
        assert!(p(&["no-new-privileges=true"]).unwrap().no_new_privileges);
        assert!(!p(&["no-new-privileges=false"]).unwrap().no_new_privileges);
        assert!(!p(&[]).unwrap().no_new_privileges);
    }

    #[test]
    fn seccomp_forms() {
        assert_eq!(p(&["seccomp=unconfined"]).unwrap().seccomp, SeccompChoice::Unconfined);
        assert_eq!(p(&["seccomp:unconfined"]).unwrap().seccomp, SeccompChoice::Unconfined);
        let json = r#"seccomp={"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["a=b"]}]}"#;
        assert!(matches!(p(&[json]).unwrap().seccomp, SeccompChoice::Custom(s) if s.starts_with('{')));
    }

    #[test]
    fn bad_options_have_dockerds_messages() {
        assert_eq!(p(&["bogus"]).unwrap_err().to_string(), "invalid --security-opt 1: \"bogus\"");
        assert_eq!(p(&["foo=bar"]).unwrap_err().to_string(), "invalid --security-opt 2: \"foo=bar\"");
        assert_eq!(p(&["no-new-privileges=maybe"]).unwrap_err().to_string(), "invalid --security-opt 2: \"no-new-privileges=maybe\"");
    }
}

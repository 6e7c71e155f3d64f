//! The process part of a container: command line, environment, working
//! directory and user, merged from the image config and the create request
//! with dockerd's rules (moby `daemon/commit.go` `merge`,
//! `mergeAndVerifyConfig`, `CreateDaemonEnvironment`).

use serde_json::Value;

use super::error::SpecError;
use super::json::{field_str, str_slice};

/// dockerd's default PATH for Linux containers.
pub const DEFAULT_PATH_ENV: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The command: `Entrypoint` + `Cmd` after Docker's override rules. A
/// request `Entrypoint` replaces the image's and then drops the image
/// `Cmd` unless the request gives one; a request `Cmd` replaces the
/// image's. `Entrypoint: [""]` clears the entrypoint.
pub fn args(image: &Value, config: &Value) -> Result<Vec<String>, SpecError> {
    let mut entrypoint = str_slice(config, "Entrypoint")?;
    let mut cmd = str_slice(config, "Cmd")?;
    if entrypoint.as_ref().is_none_or(Vec::is_empty) {
        if cmd.as_ref().is_none_or(Vec::is_empty) {
            cmd = str_slice(image, "Cmd")?;
        }
        if entrypoint.is_none() {
            entrypoint = str_slice(image, "Entrypoint")?;
        }
    }
    if entrypoint.as_deref() == Some(&[String::new()][..]) {
        entrypoint = None;
    }
    let mut args = entrypoint.unwrap_or_default();
    args.extend(cmd.unwrap_or_default());
    if args.is_empty() {
        return Err(SpecError::NoCommand);
    }
    Ok(args)
}

/// The environment: `PATH` (default), `HOSTNAME`, `TERM=xterm` with a TTY,
/// then the request's `Env` and the image's `Env` for keys the request
/// does not set, each replacing an earlier value of the same key. An entry
/// without `=` removes the variable.
pub fn env(image: &Value, config: &Value, hostname: &str, tty: bool) -> Result<Vec<String>, SpecError> {
    let user_env = str_slice(config, "Env")?.unwrap_or_default();
    let image_env = str_slice(image, "Env")?.unwrap_or_default();
    // merge(): the request's entries, then the image's for other keys.
    let key = |e: &str| e.split_once('=').map_or(e, |(k, _)| k).to_owned();
    let mut merged = user_env.clone();
    for e in image_env {
        let k = key(&e);
        if !user_env.iter().any(|u| key(u) == k) {
            merged.push(e);
        }
    }
    let mut env = vec![format!("PATH={DEFAULT_PATH_ENV}"), format!("HOSTNAME={hostname}")];
    if tty {
        env.push("TERM=xterm".into());
    }
    // ReplaceOrAppendEnvValues, except that a key set twice in the request
    // keeps one entry (the last), where dockerd would keep both.
    let mut removed = Vec::new();
    for value in merged {
        match value.split_once('=') {
            Some((k, _)) => {
                if let Some(slot) = env.iter_mut().find(|e| key(e) == k) {
                    *slot = value;
                } else {
                    env.push(value);
                }
            }
            None => removed.push(value),
        }
    }
    env.retain(|e| !removed.contains(&key(e)));
    Ok(env)
}

/// The working directory: the request's, else the image's, else "/".
pub fn cwd(image: &Value, config: &Value) -> Result<String, SpecError> {
    let wd = field_str(config, "WorkingDir")?.filter(|s| !s.is_empty()).or(field_str(image, "WorkingDir")?.filter(|s| !s.is_empty()));
    Ok(wd.map(clean_path).unwrap_or_else(|| "/".into()))
}

/// The user spec: the request's `User`, else the image's.
pub fn user_spec(image: &Value, config: &Value) -> Result<String, SpecError> {
    Ok(field_str(config, "User")?.filter(|s| !s.is_empty()).or(field_str(image, "User")?).unwrap_or_default().to_owned())
}

/// Lexically cleans an absolute path like Go's `filepath.Clean`.
pub fn clean_path(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn image() -> Value {
        json!({"Entrypoint": ["/entry"], "Cmd": ["image-cmd", "x"], "Env": ["PATH=/image/bin", "A=image", "B=image"]})
    }

    #[test]
    fn no_overrides_runs_image_entrypoint_and_cmd() {
        assert_eq!(args(&image(), &json!({})).unwrap(), ["/entry", "image-cmd", "x"]);
        assert_eq!(args(&image(), &json!({"Cmd": null, "Entrypoint": null})).unwrap(), ["/entry", "image-cmd", "x"]);
    }

    #[test]
    fn request_cmd_replaces_image_cmd_only() {
        assert_eq!(args(&image(), &json!({"Cmd": ["sh"]})).unwrap(), ["/entry", "sh"]);
    }

    #[test]
    fn request_entrypoint_drops_image_cmd() {
        assert_eq!(args(&image(), &json!({"Entrypoint": ["/other"]})).unwrap(), ["/other"]);
        assert_eq!(args(&image(), &json!({"Entrypoint": "/other"})).unwrap(), ["/other"]);
    }

    #[test]
    fn request_entrypoint_and_cmd_replace_both() {
        assert_eq!(args(&image(), &json!({"Entrypoint": ["/other"], "Cmd": ["a", "b"]})).unwrap(), ["/other", "a", "b"]);
    }

    #[test]
    fn empty_string_entrypoint_clears_it() {
        assert_eq!(args(&image(), &json!({"Entrypoint": [""], "Cmd": ["ls"]})).unwrap(), ["ls"]);
        // An empty list keeps the image Cmd but not its Entrypoint.
        assert_eq!(args(&image(), &json!({"Entrypoint": []})).unwrap(), ["image-cmd", "x"]);
    }

    #[test]
    fn nothing_to_run_is_an_error() {
        let err = args(&json!({}), &json!({"Cmd": []})).unwrap_err();
        assert_eq!(err.to_string(), "no command specified");
    }

    #[test]
    fn env_merges_request_over_image_and_keeps_path_from_image() {
        let env = env(&image(), &json!({"Env": ["B=req", "C=req"]}), "abc123", false).unwrap();
        assert_eq!(env, ["PATH=/image/bin", "HOSTNAME=abc123", "B=req", "C=req", "A=image"]);
    }

    #[test]
    fn env_defaults_path_and_sets_term_with_tty() {
        let env = env(&json!({}), &json!({"Env": ["X=1"]}), "h", true).unwrap();
        assert_eq!(env, [format!("PATH={DEFAULT_PATH_ENV}").as_str(), "HOSTNAME=h", "TERM=xterm", "X=1"]);
    }

    #[test]
    fn env_without_equals_unsets() {
        let env = env(&image(), &json!({"Env": ["A"]}), "h", false).unwrap();
        assert!(!env.iter().any(|e| e.starts_with("A=")), "{env:?}");
    }

    #[test]
    fn cwd_defaults_to_root_and_prefers_request() {
        assert_eq!(cwd(&json!({}), &json!({})).unwrap(), "/");
        assert_eq!(cwd(&json!({"WorkingDir": "/app"}), &json!({})).unwrap(), "/app");
        assert_eq!(cwd(&json!({"WorkingDir": "/app"}), &json!({"WorkingDir": "/srv/./x/"})).unwrap(), "/srv/x");
    }
}

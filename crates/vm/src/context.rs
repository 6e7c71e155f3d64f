//! The `berth` docker context.
//!
//! Owns writing the docker CLI's context metadata so `docker --context berth`
//! (or `DOCKER_CONTEXT=berth`) reaches the VM's engine socket. The docker CLI
//! stores a context as `<config dir>/contexts/meta/<sha256 of the name>/meta.json`
//! holding `{"Name", "Metadata", "Endpoints": {"docker": {"Host",
//! "SkipTLSVerify"}}}` (docker/cli `context/store`). It never switches the
//! current context (`currentContext` in config.json is left alone).

use std::path::{Path, PathBuf};

use serde_json::json;
use sha2::{Digest, Sha256};

/// The context's name.
pub const CONTEXT_NAME: &str = "berth";

/// Failure to write the context.
#[derive(Debug, thiserror::Error)]
#[error("write docker context {path:?}")]
pub struct ContextError {
    path: PathBuf,
    source: std::io::Error,
}

/// The docker CLI's config directory: `$DOCKER_CONFIG`, else `~/.docker`.
pub fn docker_config_dir(docker_config: Option<PathBuf>, home: Option<PathBuf>) -> Option<PathBuf> {
    docker_config
        .filter(|p| !p.as_os_str().is_empty())
        .or_else(|| home.map(|h| h.join(".docker")))
}

/// Where the metadata of context `name` lives under `config_dir`.
pub fn meta_path(config_dir: &Path, name: &str) -> PathBuf {
    let digest = hex::encode(Sha256::digest(name.as_bytes()));
    config_dir
        .join("contexts")
        .join("meta")
        .join(digest)
        .join("meta.json")
}

/// The metadata document for a context pointing at `socket`.
pub fn meta_json(name: &str, socket: &Path) -> serde_json::Value {
    json!({
        "Name": name,
        "Metadata": { "Description": "Berth VM engine" },
        "Endpoints": {
            "docker": {
                "Host": format!("unix://{}", socket.display()),
                "SkipTLSVerify": false
            }
        }
    })
}

/// Creates or updates the `berth` context under `config_dir` for `socket`;
/// returns the metadata file written.
pub fn write_context(config_dir: &Path, socket: &Path) -> Result<PathBuf, ContextError> {
    let path = meta_path(config_dir, CONTEXT_NAME);
    let err = |source| ContextError {
        path: path.clone(),
        source,
    };
    let dir = path.parent().expect("meta path has a parent");
    std::fs::create_dir_all(dir).map_err(err)?;
    let body = serde_json::to_vec(&meta_json(CONTEXT_NAME, socket)).expect("json serializes");
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, body).map_err(err)?;
    std::fs::rename(&tmp, &path).map_err(err)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_dir_is_sha256_of_name() {
        // sha256("berth"), as `docker context create berth` names the directory.
        let p = meta_path(Path::new("/c"), "berth");
        let digest = hex::encode(Sha256::digest(b"berth"));
        assert_eq!(
            p,
            Path::new("/c/contexts/meta")
                .join(&digest)
                .join("meta.json")
        );
        assert_eq!(digest.len(), 64);
    }

    #[test]
    fn written_context_points_at_socket_and_keeps_current_context() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"currentContext":"default"}"#,
        )
        .unwrap();
        let path = write_context(dir.path(), Path::new("/b/run/docker.sock")).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        assert_eq!(v["Name"], "berth");
        assert_eq!(
            v["Endpoints"]["docker"]["Host"],
            "unix:///b/run/docker.sock"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("config.json")).unwrap(),
            r#"{"currentContext":"default"}"#
        );
    }

    #[test]
    fn docker_config_env_wins() {
        assert_eq!(
            docker_config_dir(Some("/dc".into()), Some("/h".into())),
            Some(PathBuf::from("/dc"))
        );
        assert_eq!(
            docker_config_dir(None, Some("/h".into())),
            Some(PathBuf::from("/h/.docker"))
        );
    }
}

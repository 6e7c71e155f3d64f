//! Credentials from the docker CLI's `config.json`, for registries the API
//! request carried no `X-Registry-Auth` for.
//!
//! Owns reading `$DOCKER_CONFIG/config.json` (or `~/.docker/config.json`):
//! the `auths` entries, and the `credsStore` / `credHelpers` credential
//! helpers (`docker-credential-<name> get`). Does not write the file
//! (`docker login` in Berth goes through the API).

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use super::auth::Credentials;
use super::error::RegistryError;

/// The key Docker Hub credentials are stored under.
pub const HUB_SERVER: &str = "https://index.docker.io/v1/";
/// A credential helper that has not answered by then is given up on.
const HELPER_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest config file read.
const MAX_CONFIG_FILE: u64 = 4 << 20;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConfigFile {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    #[serde(default)]
    creds_store: Option<String>,
    #[serde(default)]
    cred_helpers: HashMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    identitytoken: String,
    #[serde(default)]
    registrytoken: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HelperAnswer {
    #[serde(default)]
    username: String,
    #[serde(default)]
    secret: String,
}

/// Where to look: the config directory and, for tests, where credential
/// helpers live (instead of `$PATH`).
#[derive(Debug, Clone)]
pub struct DockerConfig {
    dir: PathBuf,
    helper_path: Option<OsString>,
}

impl DockerConfig {
    /// `$DOCKER_CONFIG`, else `$HOME/.docker`; helpers found on `$PATH`.
    pub fn from_env() -> Self {
        let dir = match std::env::var_os("DOCKER_CONFIG") {
            Some(d) if !d.is_empty() => PathBuf::from(d),
            _ => std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default().join(".docker"),
        };
        DockerConfig { dir, helper_path: None }
    }

    /// Reads `dir/config.json`; helpers are searched in `helper_path` (a
    /// `PATH`-style list) when given, else on the process `$PATH`.
    pub fn new(dir: impl Into<PathBuf>, helper_path: Option<OsString>) -> Self {
        DockerConfig { dir: dir.into(), helper_path }
    }

    /// The credentials configured for `registry` (a reference's domain:
    /// `docker.io`, `localhost:5000`). Anonymous when there is no file or
    /// no entry; an error when the file or a helper is broken.
    pub async fn lookup(&self, registry: &str) -> Result<Credentials, RegistryError> {
        let Some(cfg) = self.read()? else { return Ok(Credentials::Anonymous) };
        let hub = is_hub(registry);
        let server = if hub { HUB_SERVER } else { registry };
        let matches = |key: &str| {
            let host = hostname_of(key);
            if hub {
                key == HUB_SERVER || is_hub(host)
            } else {
                host == registry
            }
        };
        let helper = cfg
            .cred_helpers
            .iter()
            .find(|(k, _)| matches(k))
            .map(|(_, v)| v.clone())
            .or_else(|| cfg.creds_store.clone())
            .filter(|h| !h.is_empty());
        if let Some(helper) = helper {
            if let Some(creds) = self.run_helper(&helper, server).await? {
                return Ok(creds);
            }
        }
        // Prefer the exact key, then any key naming the same host.
        let entry = cfg.auths.get(server).or_else(|| cfg.auths.iter().find(|(k, _)| matches(k)).map(|(_, v)| v));
        match entry {
            Some(e) => Credentials::from_fields(&e.username, &e.password, &e.auth, &e.identitytoken, &e.registrytoken)
                .map_err(|why| RegistryError::Credentials(format!("{}: {why}", self.file().display()))),
            None => Ok(Credentials::Anonymous),
        }
    }

    fn file(&self) -> PathBuf {
        self.dir.join("config.json")
    }

    fn read(&self) -> Result<Option<ConfigFile>, RegistryError> {
        let path = self.file();
        let broken = |why: String| RegistryError::Credentials(format!("reading {}: {why}", path.display()));
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(broken(e.to_string())),
        };
        if meta.len() > MAX_CONFIG_FILE {
            return Err(broken("file too large".into()));
        }
        let text = std::fs::read(&path).map_err(|e| broken(e.to_string()))?;
        serde_json::from_slice(&text).map(Some).map_err(|e| broken(e.to_string()))
    }

    /// Runs `docker-credential-<helper> get` with `server` on stdin. `None`
    /// when the helper has no credentials for it.
    async fn run_helper(&self, helper: &str, server: &str) -> Result<Option<Credentials>, RegistryError> {
        let program = format!("docker-credential-{helper}");
        let err = |why: String| RegistryError::Credentials(format!("error getting credentials - {program}: {why}"));
        if helper.contains('/') {
            return Err(err("helper name must not contain '/'".into()));
        }
        let path = match &self.helper_path {
            Some(dirs) => find_in(dirs, &program).ok_or_else(|| err("executable file not found".into()))?,
            None => PathBuf::from(&program),
        };
        let mut attempts = 0;
        let mut child = loop {
            let spawned = tokio::process::Command::new(&path)
                .arg("get")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn();
            match spawned {
                // A helper just installed may still be open for writing in a
                // process forked meanwhile; that clears up quickly.
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempts < 5 => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => break other.map_err(|e| err(e.to_string()))?,
            }
        };
        if let Some(mut stdin) = child.stdin.take() {
            // A helper that exits without reading is judged by its exit
            // status below, not by the broken pipe.
            let _ = stdin.write_all(server.as_bytes()).await;
        }
        let out = tokio::time::timeout(HELPER_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| err("timed out".into()))?
            .map_err(|e| err(e.to_string()))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            // The helper protocol's "not found" answer.
            if stdout.contains("credentials not found") {
                return Ok(None);
            }
            return Err(err(format!("{}, out: `{}`", out.status, stdout.trim())));
        }
        let answer: HelperAnswer = serde_json::from_str(&stdout).map_err(|e| err(format!("bad answer: {e}")))?;
        if answer.username == "<token>" {
            return Ok(Some(Credentials::IdentityToken(answer.secret)));
        }
        if answer.username.is_empty() && answer.secret.is_empty() {
            return Ok(None);
        }
        Ok(Some(Credentials::Basic { username: answer.username, password: answer.secret }))
    }
}

/// Credentials for `registry` from the default docker config location.
pub async fn lookup(registry: &str) -> Result<Credentials, RegistryError> {
    DockerConfig::from_env().lookup(registry).await
}

fn is_hub(host: &str) -> bool {
    matches!(host, "docker.io" | "index.docker.io" | "registry-1.docker.io")
}

/// `https://host:port/v1/` → `host:port`, as the docker CLI matches keys.
fn hostname_of(key: &str) -> &str {
    let rest = key.strip_prefix("https://").or_else(|| key.strip_prefix("http://")).unwrap_or(key);
    rest.split('/').next().unwrap_or(rest)
}

fn find_in(dirs: &OsString, program: &str) -> Option<PathBuf> {
    std::env::split_paths(dirs).map(|d| d.join(program)).find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn write_config(dir: &Path, json: &str) {
        std::fs::write(dir.join("config.json"), json).unwrap();
    }

    #[tokio::test]
    async fn missing_file_is_anonymous() {
        let dir = tempfile::tempdir().unwrap();
        let c = DockerConfig::new(dir.path(), None).lookup("localhost:5000").await.unwrap();
        assert_eq!(c, Credentials::Anonymous);
    }

    #[tokio::test]
    async fn auths_entries_are_matched_by_host() {
        let dir = tempfile::tempdir().unwrap();
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        write_config(
            dir.path(),
            &format!(
                r#"{{"auths": {{
                    "https://index.docker.io/v1/": {{"auth": "{}"}},
                    "http://localhost:5000/v2/": {{"auth": "{}"}},
                    "tok.example.com": {{"identitytoken": "refresh"}}
                }}}}"#,
                b64("hubuser:hubpass"),
                b64("local:secret")
            ),
        );
        let cfg = DockerConfig::new(dir.path(), None);
        assert_eq!(
            cfg.lookup("docker.io").await.unwrap(),
            Credentials::Basic { username: "hubuser".into(), password: "hubpass".into() }
        );
        assert_eq!(
            cfg.lookup("localhost:5000").await.unwrap(),
            Credentials::Basic { username: "local".into(), password: "secret".into() }
        );
        assert_eq!(cfg.lookup("tok.example.com").await.unwrap(), Credentials::IdentityToken("refresh".into()));
        assert_eq!(cfg.lookup("other.example.com").await.unwrap(), Credentials::Anonymous);
    }

    #[tokio::test]
    async fn malformed_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        write_config(dir.path(), "{not json");
        assert!(DockerConfig::new(dir.path(), None).lookup("docker.io").await.is_err());
    }

    fn write_helper(dir: &Path, name: &str, script: &str) {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join(format!("docker-credential-{name}"));
        std::fs::write(&p, script).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[tokio::test]
    async fn credential_helpers_answer_with_the_server_url_on_stdin() {
        let dir = tempfile::tempdir().unwrap();
        let bin = tempfile::tempdir().unwrap();
        // Echoes the server it was asked about as the username, so the test
        // sees what went to stdin.
        write_helper(
            bin.path(),
            "test",
            "#!/bin/sh\n[ \"$1\" = get ] || exit 2\nread server\ncase \"$server\" in\n\
             *nothing*) echo 'credentials not found in native keychain'; exit 1;;\n\
             *token*) printf '{\"ServerURL\":\"%s\",\"Username\":\"<token>\",\"Secret\":\"refresh\"}' \"$server\";;\n\
             *) printf '{\"ServerURL\":\"%s\",\"Username\":\"%s\",\"Secret\":\"s3cret\"}' \"$server\" \"$server\";;\nesac\n",
        );
        write_config(
            dir.path(),
            r#"{"credsStore": "test", "credHelpers": {"token.example.com": "test"},
                "auths": {"nothing.example.com": {"username": "fallback", "password": "pw"}}}"#,
        );
        let cfg = DockerConfig::new(dir.path(), Some(bin.path().as_os_str().to_owned()));
        assert_eq!(
            cfg.lookup("docker.io").await.unwrap(),
            Credentials::Basic { username: HUB_SERVER.into(), password: "s3cret".into() }
        );
        assert_eq!(
            cfg.lookup("localhost:5000").await.unwrap(),
            Credentials::Basic { username: "localhost:5000".into(), password: "s3cret".into() }
        );
        assert_eq!(cfg.lookup("token.example.com").await.unwrap(), Credentials::IdentityToken("refresh".into()));
        assert_eq!(
            cfg.lookup("nothing.example.com").await.unwrap(),
            Credentials::Basic { username: "fallback".into(), password: "pw".into() }
        );
    }

    #[tokio::test]
    async fn failing_or_missing_helper_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let bin = tempfile::tempdir().unwrap();
        write_helper(bin.path(), "broken", "#!/bin/sh\necho boom\nexit 3\n");
        write_config(dir.path(), r#"{"credHelpers": {"a.example.com": "broken", "b.example.com": "absent"}}"#);
        let cfg = DockerConfig::new(dir.path(), Some(bin.path().as_os_str().to_owned()));
        let e = cfg.lookup("a.example.com").await.unwrap_err();
        assert!(e.to_string().contains("boom"), "{e}");
        assert!(cfg.lookup("b.example.com").await.is_err());
    }
}

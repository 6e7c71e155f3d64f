//! The one error type of the registry client, and the translation of a
//! registry's HTTP error replies (`{"errors":[{"code","message"}]}`) into it.

use reqwest::StatusCode;

use crate::digest::Digest;

use super::manifest::ManifestError;

/// How the engine should classify a [`RegistryError`] (one HTTP status each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Unknown tag, manifest, blob or repository, or pull access denied
    /// (dockerd answers 404 for all of these).
    NotFound,
    /// Credentials were refused, or push access was denied.
    Unauthorized,
    /// The request itself is malformed: bad auth header, bad configuration,
    /// an image format that is refused.
    InvalidArgument,
    /// The registry misbehaved, sent bad content, or could not be reached.
    Upstream,
}

/// Everything that can go wrong talking to a registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Full dockerd-style message, e.g. `manifest for redis:nope not found:
    /// manifest unknown: manifest unknown`.
    #[error("{0}")]
    NotFound(String),
    /// e.g. `unauthorized: incorrect username or password`.
    #[error("{0}")]
    Unauthorized(String),
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("invalid manifest: {0}")]
    InvalidManifest(String),
    #[error("{0}")]
    InvalidConfig(String),
    /// The dockerd message for schema 1 images, naming the reference.
    #[error(
        "Docker Image Format v1 and Docker Image manifest version 2, schema 1 support has been removed. \
         Suggest the author of {0} to upgrade the image to the OCI Format or Docker Image manifest v2, schema 2. \
         More information at https://docs.docker.com/go/deprecated-image-specs/"
    )]
    Schema1NotSupported(String),
    /// `platform` is formatted as `os/arch[/variant]`.
    #[error("no matching manifest for {platform} in the manifest list entries")]
    NoMatchingManifest { platform: String },
    #[error("{what} is larger than the {limit}-byte limit")]
    TooLarge { what: String, limit: u64 },
    #[error("blob {digest} ended after {received} of {expected} bytes")]
    Truncated { digest: Digest, received: u64, expected: u64 },
    /// Any other error reply; `message` is `code: message` from the body
    /// when there is one.
    #[error("{message}")]
    Registry { status: u16, message: String },
    #[error("{0}")]
    Transport(String),
    #[error("invalid registry configuration: {0}")]
    Config(String),
    /// Credentials that could not be decoded or looked up.
    #[error("{0}")]
    Credentials(String),
}

impl RegistryError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            RegistryError::NotFound(_) | RegistryError::NoMatchingManifest { .. } => ErrorKind::NotFound,
            RegistryError::Unauthorized(_) => ErrorKind::Unauthorized,
            RegistryError::Schema1NotSupported(_)
            | RegistryError::Config(_)
            | RegistryError::Credentials(_) => ErrorKind::InvalidArgument,
            RegistryError::DigestMismatch { .. }
            | RegistryError::InvalidManifest(_)
            | RegistryError::InvalidConfig(_)
            | RegistryError::TooLarge { .. }
            | RegistryError::Truncated { .. }
            | RegistryError::Registry { .. }
            | RegistryError::Transport(_) => ErrorKind::Upstream,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.kind() == ErrorKind::NotFound
    }

    pub fn is_unauthorized(&self) -> bool {
        self.kind() == ErrorKind::Unauthorized
    }

    /// Connection-level failures: the next endpoint may do better.
    pub fn is_transport(&self) -> bool {
        matches!(self, RegistryError::Transport(_))
    }

    pub(crate) fn transport(err: &reqwest::Error) -> Self {
        // reqwest's Display omits the cause chain; include it so a TLS or
        // connection failure says what happened.
        let mut msg = err.to_string();
        let mut source = std::error::Error::source(err);
        while let Some(s) = source {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            source = s.source();
        }
        RegistryError::Transport(msg)
    }
}

impl From<ManifestError> for RegistryError {
    fn from(e: ManifestError) -> Self {
        match e {
            ManifestError::TooLarge { limit } => RegistryError::TooLarge { what: "manifest".into(), limit },
            ManifestError::NoMatchingManifest { platform } => RegistryError::NoMatchingManifest { platform },
            other => RegistryError::InvalidManifest(other.to_string()),
        }
    }
}

/// One entry of a registry's error body.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct ErrorEntry {
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub message: String,
}

impl ErrorEntry {
    /// `manifest unknown: manifest unknown`, as the Go errcode package
    /// prints it (code lowercased, underscores to spaces).
    pub fn describe(&self) -> String {
        let code = self.code.to_lowercase().replace('_', " ");
        match (code.is_empty(), self.message.is_empty()) {
            (false, false) => format!("{code}: {}", self.message),
            (false, true) => code,
            (true, _) => self.message.clone(),
        }
    }
}

/// Parses `{"errors":[...]}`; anything else yields no entries.
pub fn parse_error_body(body: &[u8]) -> Vec<ErrorEntry> {
    #[derive(serde::Deserialize)]
    struct Body {
        #[serde(default)]
        errors: Vec<ErrorEntry>,
    }
    serde_json::from_slice::<Body>(body).map(|b| b.errors).unwrap_or_default()
}

/// What a failed request was for, so the error can name it like dockerd.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Op<'a> {
    /// Pulling a manifest: `familiar` is the reference as the user wrote it
    /// (`redis:nope`), `name` the familiar repository (`redis`).
    PullManifest { familiar: &'a str, name: &'a str },
    /// Anything done while pushing.
    Push,
    /// Anything else (blobs, tags, catalog).
    Other,
}

/// Builds the error for a non-success reply with `status` and `body`.
pub(crate) fn from_response(status: StatusCode, body: &[u8], op: Op<'_>) -> RegistryError {
    let entries = parse_error_body(body);
    let first = entries.first();
    let detail = first.map(ErrorEntry::describe);
    let code = first.map(|e| e.code.as_str()).unwrap_or("");
    match (status, op) {
        (_, Op::PullManifest { name, .. }) if code == "NAME_UNKNOWN" => RegistryError::NotFound(format!(
            "repository {name} not found: {}",
            detail.unwrap_or_else(|| "name unknown: repository name not known to registry".into())
        )),
        (StatusCode::NOT_FOUND, Op::PullManifest { familiar, .. }) => RegistryError::NotFound(format!(
            "manifest for {familiar} not found: {}",
            detail.unwrap_or_else(|| "manifest unknown: manifest unknown".into())
        )),
        (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN, Op::PullManifest { name, .. }) => {
            RegistryError::NotFound(format!(
                "pull access denied for {name}, repository does not exist or may require 'docker login': {}",
                denied_detail(code, detail)
            ))
        }
        (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN, Op::Push) => {
            RegistryError::Unauthorized(denied_detail(code, detail))
        }
        (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN, Op::Other) => {
            RegistryError::Unauthorized(detail.unwrap_or_else(|| "unauthorized: authentication required".into()))
        }
        (StatusCode::NOT_FOUND, _) => {
            RegistryError::NotFound(detail.unwrap_or_else(|| "not found".into()))
        }
        _ => RegistryError::Registry {
            status: status.as_u16(),
            message: detail.unwrap_or_else(|| format!("received unexpected HTTP status: {status}")),
        },
    }
}

/// dockerd reports an access refusal as `denied: requested access to the
/// resource is denied` unless the registry said something more specific.
fn denied_detail(code: &str, detail: Option<String>) -> String {
    match detail {
        Some(d) if code == "DENIED" => d,
        _ => "denied: requested access to the resource is denied".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_entries_are_described_like_errcode() {
        let body = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{"Tag":"x"}}]}"#;
        let e = parse_error_body(body);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].describe(), "manifest unknown: manifest unknown");
        assert!(parse_error_body(b"<html>").is_empty());
    }

    #[test]
    fn missing_tag_reads_like_dockerd() {
        let body = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#;
        let e = from_response(StatusCode::NOT_FOUND, body, Op::PullManifest { familiar: "localhost:5000/x:nope", name: "localhost:5000/x" });
        assert_eq!(e.to_string(), "manifest for localhost:5000/x:nope not found: manifest unknown: manifest unknown");
        assert!(e.is_not_found());
    }

    #[test]
    fn unknown_repository_reads_like_dockerd() {
        let body = br#"{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry"}]}"#;
        let e = from_response(StatusCode::NOT_FOUND, body, Op::PullManifest { familiar: "x:1", name: "x" });
        assert_eq!(e.to_string(), "repository x not found: name unknown: repository name not known to registry");
        assert!(e.is_not_found());
    }

    #[test]
    fn denied_pull_is_reported_as_not_found() {
        let e = from_response(StatusCode::UNAUTHORIZED, b"", Op::PullManifest { familiar: "nope:latest", name: "nope" });
        assert_eq!(
            e.to_string(),
            "pull access denied for nope, repository does not exist or may require 'docker login': denied: requested access to the resource is denied"
        );
        assert!(e.is_not_found());
    }

    #[test]
    fn denied_push_is_unauthorized() {
        let e = from_response(StatusCode::FORBIDDEN, b"", Op::Push);
        assert!(e.is_unauthorized());
    }

    #[test]
    fn other_statuses_keep_the_registry_message() {
        let body = br#"{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}"#;
        let e = from_response(StatusCode::TOO_MANY_REQUESTS, body, Op::Other);
        assert_eq!(e.to_string(), "toomanyrequests: slow down");
        let e = from_response(StatusCode::BAD_GATEWAY, b"", Op::Other);
        assert_eq!(e.to_string(), "received unexpected HTTP status: 502 Bad Gateway");
    }
}

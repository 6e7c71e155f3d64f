//! The one error type of the spec module.

use std::path::PathBuf;

use crate::error::{Error, Kind};

/// Why a create request could not be validated or turned into an OCI spec.
///
/// Messages of the variants that a client can cause carry dockerd's wording,
/// so `docker` prints what it prints against dockerd.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// A create-time check failed (dockerd answers these with 400); the
    /// message is dockerd's.
    #[error("{0}")]
    Invalid(String),
    /// Neither the request nor the image names a command.
    #[error("no command specified")]
    NoCommand,
    /// CapAdd/CapDrop names a capability Linux does not have.
    #[error("unknown capability: {0:?}")]
    UnknownCapability(String),
    /// CapAdd names a capability the engine itself does not hold.
    #[error("capability not supported by your kernel or not available in the current environment: {0:?}")]
    UnavailableCapability(String),
    /// The user or group of `--user`/`--group-add` could not be resolved.
    #[error("{0}")]
    User(String),
    /// Reading the container's /etc/passwd or /etc/group failed.
    #[error("read {path} in the container: {source}")]
    ReadUserDb {
        path: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// A seccomp profile could not be decoded or applied.
    #[error("{0}")]
    Seccomp(String),
    /// A `--device` path could not be turned into a device node.
    #[error("error gathering device information while adding custom device {path:?}: {source}")]
    Device {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The working directory could not be created in the rootfs.
    #[error("cannot create the working directory {path}: {source}")]
    WorkingDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A `container:<id>` namespace mode came without a namespace path.
    #[error("cannot join the {ns} namespace of container {container}: it is not running")]
    NamespacePath { ns: &'static str, container: String },
}

impl SpecError {
    /// How the API reports this error.
    pub fn kind(&self) -> Kind {
        match self {
            SpecError::ReadUserDb { .. } | SpecError::WorkingDir { .. } => Kind::Internal,
            SpecError::NamespacePath { .. } => Kind::Conflict,
            _ => Kind::InvalidArgument,
        }
    }

    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        SpecError::Invalid(msg.into())
    }
}

impl From<SpecError> for Error {
    fn from(e: SpecError) -> Self {
        Error::new(e.kind(), e.to_string())
    }
}

//! The engine's error vocabulary: every failure the API can report, each
//! mapped to exactly one kind (and, at the API edge, one HTTP status).
//!
//! Modules keep their own error enums; this is where they are classified.

use std::fmt;

/// What kind of failure, as a client would act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// 400: the request is malformed or asks for something impossible.
    InvalidArgument,
    /// 401: registry refused our credentials.
    Unauthorized,
    /// 403: not allowed in this configuration.
    Forbidden,
    /// 404: the named object does not exist.
    NotFound,
    /// 409: the object is in a state that forbids the operation.
    Conflict,
    /// 500: our fault; the message is generic outside logs.
    Internal,
    /// 502/503-ish: an upstream (registry) failed.
    Unavailable,
    /// 501.
    NotImplemented,
}

impl Kind {
    /// The HTTP status dockerd uses for this kind.
    pub fn status(self) -> u16 {
        match self {
            Kind::InvalidArgument => 400,
            Kind::Unauthorized => 401,
            Kind::Forbidden => 403,
            Kind::NotFound => 404,
            Kind::Conflict => 409,
            Kind::Internal => 500,
            Kind::Unavailable => 500,
            Kind::NotImplemented => 501,
        }
    }
}

/// An engine error: a kind and the message the user sees.
#[derive(Debug, Clone)]
pub struct Error {
    pub kind: Kind,
    pub message: String,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Error { kind, message: message.into() }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Kind::InvalidArgument, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Kind::NotFound, message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(Kind::Conflict, message)
    }
    /// An internal failure. The detail is logged here, once, and the
    /// client sees it too (dockerd does the same for 500s it raises itself).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Kind::Internal, message)
    }
    /// Wraps an I/O failure with the operation that failed.
    pub fn io(op: impl fmt::Display, err: std::io::Error) -> Self {
        Self::internal(format!("{op}: {err}"))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

//! Distribution-spec registry client.
//!
//! Owns talking to image registries: which endpoints serve a registry
//! (Docker Hub mirrors, insecure registries over plain HTTP), token and
//! basic authentication, fetching and verifying manifests and blobs,
//! pushing, listing and searching. Also owns the wire formats it parses
//! (manifests, indexes, image configs) and where credentials come from
//! (`X-Registry-Auth`, `~/.docker/config.json`).
//!
//! Does not own storing anything: the engine writes blobs to the content
//! store while hashing them, and keeps manifest and config bytes verbatim.
//!
//! - [`client`]: endpoints, authenticated requests, operations.
//! - [`manifest`], [`platform`], [`image_config`]: the formats.
//! - [`auth`], [`docker_config`]: credentials.
//! - [`error`]: the one error type, classified for the API edge.

pub mod auth;
pub mod client;
pub mod docker_config;
pub mod error;
pub mod image_config;
pub mod manifest;
pub mod platform;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

pub use auth::Credentials;
pub use client::{verify, BlobStream, Endpoint, RegistryClient, RegistryConfig, Repository, Resolved, SearchResult};
pub use error::{ErrorKind, RegistryError};
pub use image_config::{ConfigFile, ImageConfig};
pub use manifest::{Descriptor, ImageIndex, ImageManifest, Manifest, ManifestKind};
pub use platform::{choose, Platform};

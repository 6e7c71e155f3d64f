//! Image layer tars: detecting their compression, unpacking them safely into
//! overlay snapshot directories, and packing directories back into tars.
//!
//! Owns the layer tar format as the OCI image spec and dockerd define it:
//! whiteouts (`.wh.<name>`, `.wh..wh..opq`) and how they map to overlayfs
//! (a 0:0 character device, the `trusted.overlay.opaque` xattr), ownership,
//! modes, mtimes, xattrs in PAX `SCHILY.xattr.*` records, hardlinks and
//! device nodes.
//!
//! Does not own where layer directories live, which layers stack on which,
//! or mounting them (see `snapshots`), nor fetching or verifying blobs (see
//! `content` and `digest`).
//!
//! # Safety model
//!
//! A layer is untrusted input. [`apply_layer`] never creates or changes
//! anything outside its destination: every path is cleaned lexically (a
//! leading `/` is dropped, `..` that would climb above the destination is an
//! error), every parent directory is opened component by component with
//! `O_NOFOLLOW` starting from a file descriptor of the destination, and every
//! entry is created with an `*at()` call relative to its parent's descriptor.
//! A symlink is stored verbatim and never followed, not even one created
//! earlier in the same layer: a path that goes through a symlink is refused.
//! The destination is only ever written by the unpacker, so a path checked
//! once stays what it was while the entry is created.

mod compression;
mod pack;
pub(crate) mod sys;
mod unpack;

#[cfg(test)]
mod tests;

use std::fmt;
use std::io;
use std::path::PathBuf;

pub use compression::decompressed;
pub use pack::{write_tar_of_dir, write_tar_of_dir_filtered, write_tar_of_entry};
pub use unpack::apply_layer;

/// Prefix of a whiteout entry: `.wh.<name>` deletes `<name>` from the layers
/// below.
pub const WHITEOUT_PREFIX: &str = ".wh.";

/// Prefix of whiteout metadata entries (AUFS leftovers) that delete nothing.
pub const WHITEOUT_META_PREFIX: &str = ".wh..wh.";

/// The entry that marks its directory opaque: the layers below contribute
/// nothing to it.
pub const WHITEOUT_OPAQUE: &str = ".wh..wh..opq";

/// The xattr overlayfs reads to treat a directory as opaque.
pub const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// How [`apply_layer`] unpacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyOptions {
    /// Give entries the numeric owner recorded in the tar. Only root can; when
    /// false, entries belong to the calling user.
    pub same_owner: bool,
    /// Interpret whiteouts (`.wh.<name>`, `.wh..wh..opq`) as a layer does.
    /// When false (a plain archive, such as `docker cp` extracts), they are
    /// ordinary files like any other.
    pub whiteouts: bool,
    /// Refuse, with [`Rejection::ReplaceDirectory`] or
    /// [`Rejection::ReplaceNonDirectory`], an entry that would replace a
    /// directory with a non-directory or the other way round (dockerd's
    /// `NoOverwriteDirNonDir`). Layers replace freely.
    pub no_replace_dir_non_dir: bool,
    /// Give every entry this (uid, gid) instead of the tar's (with
    /// `same_owner`), as `docker cp --archive` asks for the container's user.
    pub owner: Option<(u32, u32)>,
}

impl Default for ApplyOptions {
    /// Keeps owners when running as root, as dockerd does; a layer's rules.
    fn default() -> Self {
        ApplyOptions {
            same_owner: rustix::process::geteuid().is_root(),
            whiteouts: true,
            no_replace_dir_non_dir: false,
            owner: None,
        }
    }
}

/// What [`apply_layer`] unpacked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyStats {
    /// Sum of the sizes of the regular files written: what dockerd reports as
    /// a layer's size. Hardlinks are not counted again.
    pub bytes: u64,
    /// Tar entries applied, whiteouts and opaque markers included.
    pub entries: u64,
}

/// How [`write_tar_of_dir`] packs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PackOptions {
    /// The directory is an overlayfs upper directory: turn 0:0 character
    /// devices into `.wh.<name>` entries and opaque directories into
    /// `.wh..wh..opq` entries, as a layer tar expresses them.
    pub overlay_whiteouts: bool,
}

/// Why an entry of a layer was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// The path climbs above the destination with `..`.
    Breakout,
    /// A hardlink's target climbs above the destination with `..`.
    LinkTargetBreakout { target: String },
    /// A hardlink's target is the destination itself.
    LinkTargetIsRoot,
    /// A directory on the way to the entry is a symlink; it is not followed.
    SymlinkInPath { component: String },
    /// A component on the way to the entry exists and is not a directory.
    NotADirectoryInPath { component: String },
    /// The path contains a NUL byte.
    NulInPath,
    /// The cleaned path is longer than `PATH_MAX`.
    PathTooLong,
    /// `.wh.` with no name, or a name of `.` or `..`.
    InvalidWhiteout,
    /// A whiteout used as a directory on the way to another entry.
    WhiteoutAsDirectory { component: String },
    /// A tar entry type with no meaning in a layer (the raw type flag).
    UnsupportedType(u8),
    /// A numeric field (uid, gid, mtime, mode, device) that does not parse or
    /// does not fit.
    InvalidHeaderField(&'static str),
    /// A non-directory entry where a directory exists, with
    /// `no_replace_dir_non_dir`.
    ReplaceDirectory,
    /// A directory entry where a non-directory exists, with
    /// `no_replace_dir_non_dir`.
    ReplaceNonDirectory,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::Breakout => f.write_str("path climbs out of the destination (breakout)"),
            Rejection::LinkTargetBreakout { target } => {
                write!(f, "hardlink target {target:?} climbs out of the destination (breakout)")
            }
            Rejection::LinkTargetIsRoot => f.write_str("hardlink target is the layer root"),
            Rejection::SymlinkInPath { component } => {
                write!(f, "{component:?} is a symlink; paths through symlinks are not followed")
            }
            Rejection::NotADirectoryInPath { component } => write!(f, "{component:?} is not a directory"),
            Rejection::NulInPath => f.write_str("path contains a NUL byte"),
            Rejection::PathTooLong => f.write_str("path is longer than PATH_MAX"),
            Rejection::InvalidWhiteout => f.write_str("whiteout names no file"),
            Rejection::WhiteoutAsDirectory { component } => {
                write!(f, "whiteout {component:?} used as a directory")
            }
            Rejection::UnsupportedType(t) if t.is_ascii_graphic() => {
                write!(f, "unsupported entry type {:?}", char::from(*t))
            }
            Rejection::UnsupportedType(t) => write!(f, "unsupported entry type {t:#04x}"),
            Rejection::InvalidHeaderField(field) => write!(f, "invalid {field} in header"),
            Rejection::ReplaceDirectory => f.write_str("would replace a directory with a non-directory"),
            Rejection::ReplaceNonDirectory => f.write_str("would replace a non-directory with a directory"),
        }
    }
}

/// A failure to unpack or pack a tar. Variants name the operation that
/// failed; paths are as the tar spells them (lossily decoded for display).
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// `dest` could not be opened as a directory.
    #[error("opening destination {path}")]
    OpenDestination {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The stream is not a readable tar (corrupt, truncated, bad compression).
    #[error("reading layer tar")]
    ReadLayer(#[source] io::Error),
    /// An entry was refused as unsafe or malformed; see [`Rejection`].
    #[error("validating entry {path:?}: {reason}")]
    ValidateEntry { path: String, reason: Rejection },
    /// A parent directory of an entry could not be opened or created.
    #[error("resolving parent directory of {path:?}")]
    ResolveParent {
        path: String,
        #[source]
        source: io::Error,
    },
    /// What an entry replaces could not be removed.
    #[error("removing existing {path:?}")]
    RemoveExisting {
        path: String,
        #[source]
        source: io::Error,
    },
    /// The entry itself could not be created or written.
    #[error("creating {path:?}")]
    CreateEntry {
        path: String,
        #[source]
        source: io::Error,
    },
    /// A hardlink could not be made (its target missing, a directory...).
    #[error("hard-linking {path:?} to {target:?}")]
    LinkEntry {
        path: String,
        target: String,
        #[source]
        source: io::Error,
    },
    /// The overlay whiteout device for a `.wh.` entry could not be made.
    #[error("creating whiteout for {path:?}")]
    CreateWhiteout {
        path: String,
        #[source]
        source: io::Error,
    },
    /// `trusted.overlay.opaque` could not be set (needs root and a file
    /// system with trusted xattrs).
    #[error("marking {path:?} opaque")]
    MarkOpaque {
        path: String,
        #[source]
        source: io::Error,
    },
    /// Owner, mode, an xattr or mtime could not be set.
    #[error("setting {what} of {path:?}")]
    SetMetadata {
        path: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    /// Packing: an entry of the tree could not be read.
    #[error("reading {path}")]
    ReadTree {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Packing: the output refused a write.
    #[error("writing tar")]
    WriteTar(#[source] io::Error),
}

impl ArchiveError {
    /// The layer itself is malformed or hostile (as opposed to the host
    /// failing): the caller should report invalid input, not an internal
    /// error.
    pub fn is_invalid_layer(&self) -> bool {
        match self {
            ArchiveError::ReadLayer(_) | ArchiveError::ValidateEntry { .. } => true,
            // A hardlink to something the layer never extracted.
            ArchiveError::LinkEntry { source, .. } => source.kind() == io::ErrorKind::NotFound,
            _ => false,
        }
    }
}

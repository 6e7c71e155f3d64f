#![recursion_limit = "256"]
//! The Berth container engine as a library: `berthd` only parses flags and
//! calls into it.
//!
//! Modules own one noun each; see ARCHITECTURE.md for the map.

pub mod api;
pub mod archive;
pub mod config;
pub mod containers;
pub mod content;
pub mod digest;
pub mod engine;
pub mod error;
pub mod events;
pub mod filters;
pub mod images;
pub mod network;
pub mod paths;
pub mod reference;
pub mod registry;
pub mod server;
pub mod snapshots;
pub mod timefmt;
pub mod volumes;

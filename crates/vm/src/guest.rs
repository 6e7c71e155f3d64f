//! What the host hands the guest before each boot.
//!
//! Owns the `guest.json` contract with `berth-init` ([`GuestConfig`]), the
//! copy of `$BERTH_HOME/daemon.json` into the shared guest directory, and the
//! creation of the sparse data disk. The guest formats the disk on first boot;
//! the host never writes inside it. It does not own the QEMU command line
//! ([`crate::qemu`]) or the guest's side of the contract (`crates/init`).

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::VmConfig;
use crate::paths::BerthHome;
use crate::qemu::share_tag;

/// The host as seen from the guest over QEMU user networking; the guest
/// names it `host.docker.internal`.
pub const HOST_GATEWAY: &str = "10.0.2.2";

/// Failure to prepare the guest's inputs.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// A directory under `$BERTH_HOME` could not be created.
    #[error("create directory {path:?}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file handed to the guest could not be written.
    #[error("write {path:?}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `$BERTH_HOME/daemon.json` is not JSON; the guest engine would refuse it.
    #[error("read engine config {path:?}: not valid JSON")]
    DaemonJson {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// The data disk could not be created or sized.
    #[error("create data disk {path:?}")]
    DataDisk {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One host folder shared into the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestShare {
    /// 9p/virtiofs mount tag.
    pub tag: String,
    /// Where to mount it in the guest: the same path as on the host.
    pub path: PathBuf,
}

/// `guest.json`: read by `berth-init` from the `berthcfg` share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestConfig {
    /// Host folders to mount, in tag order.
    pub shares: Vec<GuestShare>,
    /// Extra `berthd` arguments.
    pub engine_args: Vec<String>,
    /// The host's address from inside the guest.
    pub host_gateway: String,
}

impl GuestConfig {
    /// The guest config for `config`: one share per configured folder, tags
    /// in the order [`crate::qemu`] attaches them.
    pub fn for_vm(config: &VmConfig) -> Self {
        Self {
            shares: config
                .shares
                .iter()
                .enumerate()
                .map(|(n, path)| GuestShare {
                    tag: share_tag(n),
                    path: path.clone(),
                })
                .collect(),
            engine_args: Vec::new(),
            host_gateway: HOST_GATEWAY.to_string(),
        }
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), GuestError> {
    let err = |source| GuestError::Write {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, bytes).map_err(err)?;
    fs::rename(&tmp, path).map_err(err)
}

fn create_dir(path: &Path) -> Result<(), GuestError> {
    fs::create_dir_all(path).map_err(|source| GuestError::CreateDir {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `guest.json` and the copy of `daemon.json` (removing a stale copy
/// when the user deleted theirs) into [`BerthHome::guest_dir`].
pub fn prepare_guest_dir(home: &BerthHome, guest: &GuestConfig) -> Result<(), GuestError> {
    create_dir(&home.guest_dir())?;
    let json = serde_json::to_vec_pretty(guest).expect("guest config serializes");
    write_atomic(&home.guest_config(), &json)?;
    let src = home.daemon_config();
    match fs::read(&src) {
        Ok(bytes) => {
            serde_json::from_slice::<serde_json::Value>(&bytes).map_err(|source| {
                GuestError::DaemonJson {
                    path: src.clone(),
                    source,
                }
            })?;
            write_atomic(&home.guest_daemon_config(), &bytes)?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            match fs::remove_file(home.guest_daemon_config()) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(GuestError::Write {
                        path: home.guest_daemon_config(),
                        source,
                    })
                }
            }
        }
        Err(source) => return Err(GuestError::Write { path: src, source }),
    }
    Ok(())
}

/// Creates the sparse raw data disk of `gib` GiB if it does not exist, or
/// grows it when `gib` is larger than it is (the guest grows the filesystem).
/// Never shrinks and never writes data. Returns whether it was created.
pub fn ensure_data_disk(home: &BerthHome, gib: u64) -> Result<bool, GuestError> {
    let path = home.data_disk();
    create_dir(&home.vm_dir())?;
    let err = |source| GuestError::DataDisk {
        path: path.clone(),
        source,
    };
    let created = !path.exists();
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(err)?;
    let want = gib.saturating_mul(1 << 30);
    let have = file.metadata().map_err(err)?.len();
    if have < want {
        file.set_len(want).map_err(err)?;
    }
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> VmConfig {
        VmConfig::with_defaults(Some("/home/u".into()), 2)
    }

    #[test]
    fn guest_json_has_agreed_shape() {
        let json = serde_json::to_value(GuestConfig::for_vm(&cfg())).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "shares": [
                    {"tag": "share0", "path": "/home/u"},
                    {"tag": "share1", "path": "/tmp"}
                ],
                "engine_args": [],
                "host_gateway": "10.0.2.2"
            })
        );
    }

    #[test]
    fn prepare_writes_guest_json_and_copies_daemon_json() {
        let dir = tempfile::tempdir().unwrap();
        let home = BerthHome::new(dir.path());
        fs::write(
            home.daemon_config(),
            br#"{"insecure-registries":["host.docker.internal:5000"]}"#,
        )
        .unwrap();
        prepare_guest_dir(&home, &GuestConfig::for_vm(&cfg())).unwrap();
        let written: GuestConfig =
            serde_json::from_slice(&fs::read(home.guest_config()).unwrap()).unwrap();
        assert_eq!(written, GuestConfig::for_vm(&cfg()));
        assert_eq!(
            fs::read(home.guest_daemon_config()).unwrap(),
            fs::read(home.daemon_config()).unwrap()
        );

        fs::remove_file(home.daemon_config()).unwrap();
        prepare_guest_dir(&home, &GuestConfig::for_vm(&cfg())).unwrap();
        assert!(!home.guest_daemon_config().exists());
    }

    #[test]
    fn bad_daemon_json_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let home = BerthHome::new(dir.path());
        fs::write(home.daemon_config(), b"{not json").unwrap();
        let err = prepare_guest_dir(&home, &GuestConfig::for_vm(&cfg())).unwrap_err();
        assert!(err.to_string().contains("daemon.json"), "{err}");
    }

    #[test]
    fn data_disk_is_sparse_created_once_and_never_shrunk() {
        let dir = tempfile::tempdir().unwrap();
        let home = BerthHome::new(dir.path());
        assert!(ensure_data_disk(&home, 8).unwrap());
        let meta = fs::metadata(home.data_disk()).unwrap();
        assert_eq!(meta.len(), 8 << 30);
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            assert!(meta.blocks() < 64, "disk is not sparse");
        }
        assert!(!ensure_data_disk(&home, 4).unwrap());
        assert_eq!(fs::metadata(home.data_disk()).unwrap().len(), 8 << 30);
    }
}

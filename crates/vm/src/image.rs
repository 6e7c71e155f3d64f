//! The guest image on the host: where its three files are and whether they
//! look bootable.
//!
//! Owns [`GuestImage`] (kernel, initrd, read-only root) and [`GuestImage::check`],
//! which reads only headers and sizes so a missing, truncated or wrong file is
//! reported, naming the file, before QEMU is started (a QEMU that boots a
//! truncated root fails minutes later, deep in the guest). It does not build
//! the image (`vm-image/build.sh`) or choose which directory to use (the CLI).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// A guest image file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The file does not exist.
    #[error("check guest image: {path:?} is missing (build it with vm-image/build.sh or pass --image DIR)")]
    Missing { path: PathBuf },
    /// The file exists but could not be read.
    #[error("check guest image: read {path:?}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file's first bytes are not those of the expected format.
    #[error("check guest image: {path:?} is not {expected}")]
    BadMagic {
        path: PathBuf,
        expected: &'static str,
    },
    /// The file is shorter than its own header says.
    #[error("check guest image: {path:?} is truncated: {actual} bytes, its {format} header says {expected}")]
    Truncated {
        path: PathBuf,
        format: &'static str,
        expected: u64,
        actual: u64,
    },
}

/// The read-only root's filesystem, as recognised from its superblock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootFormat {
    /// ext2/3/4.
    Ext4,
    /// squashfs.
    Squashfs,
    /// EROFS.
    Erofs,
}

/// The three files a guest image consists of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestImage {
    /// The kernel (`vmlinuz`).
    pub kernel: PathBuf,
    /// The initrd holding `berth-init` (`initrd.img`).
    pub initrd: PathBuf,
    /// The read-only root filesystem (`rootfs.img`).
    pub rootfs: PathBuf,
}

impl GuestImage {
    /// The image as `vm-image/build.sh` lays it out in `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            kernel: dir.join("vmlinuz"),
            initrd: dir.join("initrd.img"),
            rootfs: dir.join("rootfs.img"),
        }
    }

    /// Checks that all three files exist and have the right headers and
    /// sizes; returns the root's format.
    pub fn check(&self) -> Result<RootFormat, ImageError> {
        check_kernel(&self.kernel)?;
        check_initrd(&self.initrd)?;
        check_rootfs(&self.rootfs)
    }
}

/// Reads up to `len` bytes at `offset` (fewer at end of file).
fn read_at(file: &mut File, path: &Path, offset: u64, len: usize) -> Result<Vec<u8>, ImageError> {
    let err = |source| ImageError::Read {
        path: path.to_path_buf(),
        source,
    };
    file.seek(SeekFrom::Start(offset)).map_err(err)?;
    let mut buf = Vec::with_capacity(len);
    file.take(len as u64).read_to_end(&mut buf).map_err(err)?;
    Ok(buf)
}

fn open(path: &Path) -> Result<(File, u64), ImageError> {
    let file = File::open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            ImageError::Missing {
                path: path.to_path_buf(),
            }
        } else {
            ImageError::Read {
                path: path.to_path_buf(),
                source,
            }
        }
    })?;
    let len = file
        .metadata()
        .map_err(|source| ImageError::Read {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    Ok((file, len))
}

fn u32_le(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as u64)
        .unwrap_or(0)
}

/// A Linux kernel: an x86 bzImage ("HdrS" at 0x202), an arm64 `Image`
/// ("ARMd" at 0x38) or a compressed kernel (gzip, as Debian ships arm64).
fn check_kernel(path: &Path) -> Result<(), ImageError> {
    let (mut f, _) = open(path)?;
    let head = read_at(&mut f, path, 0, 0x240)?;
    let bzimage = head.get(0x202..0x206) == Some(b"HdrS");
    let arm64 = head.get(0x38..0x3c) == Some(b"ARM\x64");
    let gzip = head.starts_with(&[0x1f, 0x8b]);
    if bzimage || arm64 || gzip {
        Ok(())
    } else {
        Err(ImageError::BadMagic {
            path: path.to_path_buf(),
            expected: "a Linux kernel (bzImage, arm64 Image or gzip)",
        })
    }
}

/// An initramfs: a cpio archive, plain or compressed with one of the
/// kernel's decompressors.
fn check_initrd(path: &Path) -> Result<(), ImageError> {
    let (mut f, _) = open(path)?;
    let head = read_at(&mut f, path, 0, 8)?;
    const MAGICS: [&[u8]; 8] = [
        b"070701",                       // cpio newc
        b"070702",                       // cpio crc
        &[0x1f, 0x8b],                   // gzip
        &[0x28, 0xb5, 0x2f, 0xfd],       // zstd
        &[0xfd, b'7', b'z', b'X', b'Z'], // xz
        &[0x02, 0x21, 0x4c, 0x18],       // lz4 legacy
        b"BZh",                          // bzip2
        &[0x5d, 0x00, 0x00],             // lzma
    ];
    if MAGICS.iter().any(|m| head.starts_with(m)) {
        Ok(())
    } else {
        Err(ImageError::BadMagic {
            path: path.to_path_buf(),
            expected: "an initramfs (cpio, gzip, zstd, xz, lz4, bzip2 or lzma)",
        })
    }
}

/// The read-only root: ext4, squashfs or EROFS, at least as long as its
/// superblock says.
fn check_rootfs(path: &Path) -> Result<RootFormat, ImageError> {
    let (mut f, len) = open(path)?;
    let head = read_at(&mut f, path, 0, 64)?;
    let sb = read_at(&mut f, path, 1024, 1024)?;
    let (format, name, expected) = if head.starts_with(b"hsqs") {
        let used = head
            .get(40..48)
            .map(|s| u64::from_le_bytes(s.try_into().expect("8-byte slice")))
            .unwrap_or(u64::MAX);
        (RootFormat::Squashfs, "squashfs", used)
    } else if sb.get(56..58) == Some(&[0x53, 0xef]) {
        let lo = u32_le(&sb, 4);
        let log_block = u32_le(&sb, 24);
        let incompat = u32_le(&sb, 0x60);
        let hi = if incompat & 0x80 != 0 {
            u32_le(&sb, 0x150)
        } else {
            0
        };
        let block_size = 1024u64.checked_shl(log_block.min(16) as u32).unwrap_or(0);
        let blocks = (hi << 32) | lo;
        (RootFormat::Ext4, "ext4", blocks.saturating_mul(block_size))
    } else if u32_le(&sb, 0) == 0xe0f5_e1e2 {
        let blkszbits = sb.get(12).copied().unwrap_or(12).min(16) as u32;
        let blocks = u32_le(&sb, 36);
        (RootFormat::Erofs, "erofs", blocks << blkszbits)
    } else {
        return Err(ImageError::BadMagic {
            path: path.to_path_buf(),
            expected: "a root filesystem image (ext4, squashfs or erofs)",
        });
    };
    if len < expected {
        return Err(ImageError::Truncated {
            path: path.to_path_buf(),
            format: name,
            expected,
            actual: len,
        });
    }
    Ok(format)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn bzimage() -> Vec<u8> {
        let mut k = vec![0u8; 0x400];
        k[0x202..0x206].copy_from_slice(b"HdrS");
        k
    }

    /// A minimal ext4 superblock claiming `blocks` 4 KiB blocks.
    fn ext4(blocks: u32, actual_len: usize) -> Vec<u8> {
        let mut img = vec![0u8; actual_len.max(2048)];
        img[1024 + 4..1024 + 8].copy_from_slice(&blocks.to_le_bytes());
        img[1024 + 24..1024 + 28].copy_from_slice(&2u32.to_le_bytes()); // 1024 << 2
        img[1024 + 56] = 0x53;
        img[1024 + 57] = 0xef;
        img.truncate(actual_len.max(2048));
        img
    }

    fn write_image(dir: &Path, kernel: &[u8], initrd: &[u8], rootfs: &[u8]) -> GuestImage {
        let img = GuestImage::in_dir(dir);
        for (p, bytes) in [
            (&img.kernel, kernel),
            (&img.initrd, initrd),
            (&img.rootfs, rootfs),
        ] {
            File::create(p).unwrap().write_all(bytes).unwrap();
        }
        img
    }

    #[test]
    fn well_formed_image_passes() {
        let dir = tempfile::tempdir().unwrap();
        let img = write_image(dir.path(), &bzimage(), b"070701rest", &ext4(2, 8192));
        assert_eq!(img.check().unwrap(), RootFormat::Ext4);
    }

    #[test]
    fn missing_kernel_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let img = GuestImage::in_dir(dir.path());
        let err = img.check().unwrap_err();
        assert!(matches!(err, ImageError::Missing { ref path } if path.ends_with("vmlinuz")));
        assert!(err.to_string().contains("vmlinuz"));
    }

    #[test]
    fn truncated_ext4_root_is_reported_with_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let img = write_image(dir.path(), &bzimage(), &[0x1f, 0x8b, 8], &ext4(100, 8192));
        match img.check().unwrap_err() {
            ImageError::Truncated {
                expected, actual, ..
            } => {
                assert_eq!(expected, 409_600);
                assert_eq!(actual, 8192);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn kernel_without_magic_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let img = write_image(dir.path(), b"not a kernel", b"070701", &ext4(2, 8192));
        assert!(
            matches!(img.check(), Err(ImageError::BadMagic { ref path, .. }) if path.ends_with("vmlinuz"))
        );
    }

    #[test]
    fn empty_initrd_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let img = write_image(dir.path(), &bzimage(), b"", &ext4(2, 8192));
        assert!(
            matches!(img.check(), Err(ImageError::BadMagic { ref path, .. }) if path.ends_with("initrd.img"))
        );
    }

    #[test]
    fn rootfs_of_zeros_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let img = write_image(dir.path(), &bzimage(), b"070701", &[0u8; 4096]);
        assert!(
            matches!(img.check(), Err(ImageError::BadMagic { ref path, .. }) if path.ends_with("rootfs.img"))
        );
    }

    #[test]
    fn squashfs_size_comes_from_bytes_used() {
        let dir = tempfile::tempdir().unwrap();
        let mut sq = vec![0u8; 4096];
        sq[..4].copy_from_slice(b"hsqs");
        sq[40..48].copy_from_slice(&4096u64.to_le_bytes());
        let img = write_image(dir.path(), &bzimage(), b"070701", &sq);
        assert_eq!(img.check().unwrap(), RootFormat::Squashfs);
        sq[40..48].copy_from_slice(&8192u64.to_le_bytes());
        let img = write_image(dir.path(), &bzimage(), b"070701", &sq);
        assert!(matches!(img.check(), Err(ImageError::Truncated { .. })));
    }
}

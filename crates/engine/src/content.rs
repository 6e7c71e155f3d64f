//! The content store: every blob (manifests, configs, compressed layers) in
//! an OCI image layout, named by its digest.
//!
//! Owns durability: a blob becomes visible only after it was written to a
//! temporary file, verified against its digest, fsynced and renamed. Does not
//! own what refers to a blob (see `images`) nor when it is collected.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::digest::Digest;
use crate::paths::Paths;

/// Why content could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("size mismatch for {digest}: expected {expected} bytes, got {actual}")]
    SizeMismatch { digest: Digest, expected: u64, actual: u64 },
    #[error("{op} {path}: {source}")]
    Io { op: &'static str, path: PathBuf, source: io::Error },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ContentError + 'a {
    move |source| ContentError::Io { op, path: path.to_owned(), source }
}

/// Writes `data` to `path` durably: temp file, fsync, rename, fsync of the
/// directory. Used for blobs and for every metadata file.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = path.parent().ok_or_else(|| io::Error::other("path has no parent"))?;
    // Unchanged (a record re-saved at start-up): nothing to write, which keeps
    // the engine starting on a full disk.
    if fs::metadata(path).is_ok_and(|m| m.len() == data.len() as u64) && fs::read(path).is_ok_and(|old| old == data) {
        return Ok(());
    }
    let tmp = dir.join(format!(
        ".tmp-{}-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("f"),
        rand::random::<u64>()
    ));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// fsyncs a directory so a rename inside it survives a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The blob store of one engine.
#[derive(Debug, Clone)]
pub struct ContentStore {
    paths: Paths,
}

impl ContentStore {
    /// Opens (creating if needed) the store under the data root.
    pub fn open(paths: &Paths) -> io::Result<Self> {
        fs::create_dir_all(paths.blobs_dir())?;
        fs::create_dir_all(paths.ingest_dir())?;
        let layout = paths.content_dir().join("oci-layout");
        if !layout.exists() {
            write_atomic(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        Ok(ContentStore { paths: paths.clone() })
    }

    pub fn path(&self, d: &Digest) -> PathBuf {
        self.paths.blob(d)
    }

    pub fn exists(&self, d: &Digest) -> bool {
        self.paths.blob(d).is_file()
    }

    /// Size of a stored blob, if present.
    pub fn size(&self, d: &Digest) -> Option<u64> {
        fs::metadata(self.paths.blob(d)).ok().map(|m| m.len())
    }

    /// Reads a whole blob (for small ones: manifests and configs).
    pub fn read(&self, d: &Digest) -> Result<Vec<u8>, ContentError> {
        let path = self.paths.blob(d);
        fs::read(&path).map_err(io_err("read blob", &path))
    }

    pub fn open_blob(&self, d: &Digest) -> Result<File, ContentError> {
        let path = self.paths.blob(d);
        File::open(&path).map_err(io_err("open blob", &path))
    }

    /// Stores a small blob held in memory, verifying it against `expected`
    /// when given. Returns its digest.
    pub fn write_blob(&self, expected: Option<&Digest>, data: &[u8]) -> Result<Digest, ContentError> {
        let actual = Digest::of(data);
        if let Some(expected) = expected {
            if *expected != actual {
                return Err(ContentError::DigestMismatch { expected: expected.clone(), actual });
            }
        }
        let path = self.paths.blob(&actual);
        if !path.exists() {
            write_atomic(&path, data).map_err(io_err("write blob", &path))?;
        }
        Ok(actual)
    }

    /// Length of a partial download of `d` left by an earlier attempt.
    pub fn partial_len(&self, d: &Digest) -> u64 {
        fs::metadata(self.paths.ingest(d)).map(|m| m.len()).unwrap_or(0)
    }

    /// Opens (or resumes) the ingest file of `d` for appending.
    pub fn ingest(&self, d: &Digest) -> Result<Ingest, ContentError> {
        let path = self.paths.ingest(d);
        let file = OpenOptions::new().create(true).append(true).open(&path).map_err(io_err("open ingest", &path))?;
        let offset = file.metadata().map_err(io_err("stat ingest", &path))?.len();
        Ok(Ingest { file, path, digest: d.clone(), target: self.paths.blob(d), offset })
    }

    /// Stores a blob whose bytes are in a file we own (a finished upload),
    /// moving it into place after verification.
    pub fn commit_file(&self, file: &Path, expected: Option<&Digest>) -> Result<Digest, ContentError> {
        let mut f = File::open(file).map_err(io_err("open upload", file))?;
        let mut hasher = crate::digest::HashingWriter::new(io::sink());
        io::copy(&mut f, &mut hasher).map_err(io_err("hash upload", file))?;
        let (_, actual, _) = hasher.finish();
        if let Some(expected) = expected {
            if *expected != actual {
                return Err(ContentError::DigestMismatch { expected: expected.clone(), actual });
            }
        }
        let target = self.paths.blob(&actual);
        f.sync_all().map_err(io_err("sync upload", file))?;
        fs::rename(file, &target).map_err(io_err("rename upload", &target))?;
        sync_dir(&self.paths.blobs_dir()).map_err(io_err("sync blobs dir", &target))?;
        Ok(actual)
    }

    pub fn delete(&self, d: &Digest) -> io::Result<()> {
        match fs::remove_file(self.paths.blob(d)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }

    /// Every stored blob.
    pub fn list(&self) -> io::Result<Vec<Digest>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(self.paths.blobs_dir())? {
            let name = entry?.file_name();
            if let Some(d) = name.to_str().and_then(|n| Digest::from_hex(n).ok()) {
                out.push(d);
            }
        }
        Ok(out)
    }
}

/// A blob being downloaded. Bytes are appended as they arrive; the partial
/// file stays on failure so the next attempt resumes from `offset()`.
pub struct Ingest {
    file: File,
    path: PathBuf,
    digest: Digest,
    target: PathBuf,
    offset: u64,
}

impl Ingest {
    /// Bytes already present from an earlier attempt.
    pub fn offset(&self) -> u64 {
        self.offset
    }
    /// Where the partial bytes are, to replay them before new ones.
    pub fn partial_path(&self) -> &Path {
        &self.path
    }
    pub fn append(&mut self, data: &[u8]) -> Result<(), ContentError> {
        self.file.write_all(data).map_err(io_err("append ingest", &self.path))
    }
    /// Moves the download into the store once `actual` (the digest of every
    /// byte, computed by the caller while reading) matches. On a mismatch the
    /// partial file is discarded: resuming it could never succeed.
    pub fn commit(self, actual: &Digest, size: u64, expected_size: Option<u64>) -> Result<(), ContentError> {
        if *actual != self.digest {
            let _ = fs::remove_file(&self.path);
            return Err(ContentError::DigestMismatch { expected: self.digest, actual: actual.clone() });
        }
        if let Some(expected) = expected_size.filter(|e| *e != size) {
            let _ = fs::remove_file(&self.path);
            return Err(ContentError::SizeMismatch { digest: self.digest, expected, actual: size });
        }
        self.file.sync_all().map_err(io_err("sync ingest", &self.path))?;
        fs::rename(&self.path, &self.target).map_err(io_err("commit blob", &self.target))?;
        if let Some(dir) = self.target.parent() {
            sync_dir(dir).map_err(io_err("sync blobs dir", dir))?;
        }
        Ok(())
    }
    /// Drops the partial bytes (they were proven bad).
    pub fn discard(self) {
        let _ = fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, ContentStore) {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path().join("data"), dir.path().join("exec"));
        (dir, ContentStore::open(&paths).unwrap())
    }

    #[test]
    fn blob_with_wrong_digest_is_not_stored() {
        let (_d, s) = store();
        let wrong = Digest::of(b"other");
        assert!(matches!(s.write_blob(Some(&wrong), b"data"), Err(ContentError::DigestMismatch { .. })));
        assert!(s.list().unwrap().is_empty());
    }

    #[test]
    fn ingest_resumes_from_partial_bytes() {
        let (_d, s) = store();
        let d = Digest::of(b"hello world");
        let mut i = s.ingest(&d).unwrap();
        i.append(b"hello").unwrap();
        drop(i);
        let mut i = s.ingest(&d).unwrap();
        assert_eq!(i.offset(), 5);
        i.append(b" world").unwrap();
        i.commit(&d, 11, Some(11)).unwrap();
        assert_eq!(s.read(&d).unwrap(), b"hello world");
        assert_eq!(s.partial_len(&d), 0);
    }

    #[test]
    fn ingest_with_mismatching_digest_discards_partial() {
        let (_d, s) = store();
        let d = Digest::of(b"expected");
        let mut i = s.ingest(&d).unwrap();
        i.append(b"garbage").unwrap();
        assert!(i.commit(&Digest::of(b"garbage"), 7, None).is_err());
        assert!(!s.exists(&d));
        assert_eq!(s.partial_len(&d), 0);
    }
}

//! `docker pull`: resolve a reference at a registry, download the config and
//! layers, unpack each layer into its snapshot while it downloads, then record
//! the image and its names in one durable step.
//!
//! Layers are independent overlay directories, so every layer downloads and
//! unpacks in parallel; a layer already unpacked (by an earlier or a
//! concurrent pull) is never fetched twice.

use std::fs::File;
use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::StreamExt;
use serde::Serialize;
use tokio::sync::mpsc;

use super::store::{BlobRef, Image, ImageRecord, LayerRecord};
use super::Images;
use crate::archive::{self, ApplyOptions};
use crate::content::Ingest;
use crate::digest::{Digest, Hasher, HashingReader};
use crate::error::{Error, Kind, Result};
use crate::reference::Reference;
use crate::registry::{Credentials, Descriptor, Platform, RegistryError, Resolved};
use crate::snapshots::{chain_ids, dir_size, SnapshotMeta};

/// One line of a progress stream (pull, push, load, import), in dockerd's
/// `jsonmessage` shape.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct JsonMessage {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "progressDetail", skip_serializing_if = "Option::is_none")]
    pub progress_detail: Option<ProgressDetail>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    #[serde(rename = "errorDetail", skip_serializing_if = "Option::is_none")]
    pub error_detail: Option<ErrorDetail>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aux: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ProgressDetail {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ErrorDetail {
    pub message: String,
}

impl JsonMessage {
    pub fn status(status: impl Into<String>, id: Option<&str>) -> Self {
        JsonMessage { status: Some(status.into()), id: id.map(str::to_owned), progress_detail: None, ..Default::default() }
    }
    pub fn error(message: &str) -> Self {
        JsonMessage {
            error: Some(message.to_owned()),
            error_detail: Some(ErrorDetail { message: message.to_owned() }),
            ..Default::default()
        }
    }
    fn progress(status: &str, id: &str, current: u64, total: u64) -> Self {
        JsonMessage {
            status: Some(status.to_owned()),
            id: Some(id.to_owned()),
            progress_detail: Some(ProgressDetail { current: Some(current), total: Some(total) }),
            progress: Some(progress_bar(current, total)),
            ..Default::default()
        }
    }
    fn empty_detail(status: &str, id: &str) -> Self {
        JsonMessage {
            status: Some(status.to_owned()),
            id: Some(id.to_owned()),
            progress_detail: Some(ProgressDetail::default()),
            ..Default::default()
        }
    }
}

/// Where progress goes; a gone client does not stop the operation.
#[derive(Clone)]
pub struct Progress(Option<mpsc::UnboundedSender<JsonMessage>>);

impl Progress {
    pub fn new(tx: mpsc::UnboundedSender<JsonMessage>) -> Self {
        Progress(Some(tx))
    }
    pub fn discard() -> Self {
        Progress(None)
    }
    pub fn send(&self, m: JsonMessage) {
        if let Some(tx) = &self.0 {
            let _ = tx.send(m);
        }
    }
}

/// dockerd's text progress bar: 50 columns, then `current/total` in units.
fn progress_bar(current: u64, total: u64) -> String {
    let width = 50u64;
    let filled = if total > 0 { (current.min(total) * width / total) as usize } else { 0 };
    let mut bar = "=".repeat(filled);
    if (filled as u64) < width {
        bar.push('>');
        bar.push_str(&" ".repeat(width as usize - filled - 1));
    } else {
        bar.pop();
        bar.push('>');
    }
    format!("[{bar}] {:>8}/{}", human_size(current), human_size(total))
}

/// Decimal units with 4 significant digits, as Go's `units.HumanSize`
/// (`%.4g`).
pub fn human_size(n: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1000.0 && i < units.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    let int_digits = if v >= 100.0 { 3 } else if v >= 10.0 { 2 } else { 1 };
    let s = format!("{:.*}", 4 - int_digits, v);
    let s = if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_owned() } else { s };
    format!("{s}{}", units[i])
}

/// Maps a registry failure to what dockerd tells the user.
pub(crate) fn registry_error(r: &Reference, e: RegistryError) -> Error {
    if e.is_not_found() {
        if r.tag().is_some() || r.digest().is_some() {
            return Error::not_found(format!("manifest for {} not found: {e}", r.familiar()));
        }
        return Error::not_found(e.to_string());
    }
    if e.is_unauthorized() {
        return Error::not_found(format!(
            "pull access denied for {}, repository does not exist or may require 'docker login': {e}",
            r.familiar_repository()
        ));
    }
    Error::new(Kind::Unavailable, e.to_string())
}

const LAYER_ATTEMPTS: usize = 3;

impl Images {
    /// Pulls `reference` (tag defaults to `latest`) for `platform`, reporting
    /// progress. Returns the image ID.
    pub async fn pull(
        self: &Arc<Self>,
        reference: &Reference,
        platform: &Platform,
        creds: &Credentials,
        progress: &Progress,
    ) -> Result<Digest> {
        let r = reference.docker_ref();
        let shown = r.tag().map(str::to_owned).unwrap_or_else(|| r.digest().map(|d| d.to_string()).unwrap_or_default());
        let resolved = self.registry.resolve(&r, platform, creds).await.map_err(|e| registry_error(&r, e))?;
        progress.send(JsonMessage::status(format!("Pulling from {}", r.path()), Some(&shown)));

        // The config names the image; fetch it first (it is small).
        let config_bytes = self.fetch_small_blob(&resolved, &resolved.config).await.map_err(|e| registry_error(&r, e))?;
        let id = self.content.write_blob(Some(&resolved.config.digest), &config_bytes).map_err(|e| Error::internal(e.to_string()))?;
        let config: serde_json::Value = serde_json::from_slice(&config_bytes)
            .map_err(|e| Error::invalid(format!("invalid image config {id}: {e}")))?;
        let diff_ids: Vec<Digest> = config
            .pointer("/rootfs/diff_ids")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .ok_or_else(|| Error::invalid(format!("invalid image config {id}: missing rootfs.diff_ids")))?;
        if diff_ids.len() != resolved.layers.len() {
            return Err(Error::invalid(format!(
                "invalid image {}: manifest has {} layers but config has {} diff_ids",
                r.familiar(),
                resolved.layers.len(),
                diff_ids.len()
            )));
        }
        let chains = chain_ids(&diff_ids);
        let mut leased: Vec<Digest> = vec![id.clone()];
        leased.extend(chains.iter().cloned());
        leased.extend(resolved.layers.iter().map(|l| l.digest.clone()));
        leased.push(resolved.manifest_digest.clone());
        leased.extend(resolved.index_digest.iter().cloned());
        let _lease = self.lease(leased);

        let existing = self.store.get(&id);
        for l in &resolved.layers {
            progress.send(JsonMessage::empty_detail("Pulling fs layer", l.digest.short()));
        }
        let layer_jobs = resolved.layers.iter().zip(diff_ids.iter()).zip(chains.iter()).enumerate().map(|(i, ((desc, diff), chain))| {
            let parent = if i == 0 { None } else { Some(chains[i - 1].clone()) };
            self.fetch_layer(&resolved, desc, diff, chain, parent, progress)
        });
        let layers = futures_util::future::try_join_all(layer_jobs).await?;

        // Manifests are content too: keep them for RepoDigests and push.
        self.content.write_blob(Some(&resolved.manifest_digest), &resolved.manifest).map_err(|e| Error::internal(e.to_string()))?;
        let mut manifests = vec![resolved.manifest_digest.clone()];
        if let (Some(d), Some((bytes, _))) = (&resolved.index_digest, &resolved.index) {
            self.content.write_blob(Some(d), bytes).map_err(|e| Error::internal(e.to_string()))?;
            manifests.push(d.clone());
        }
        let repo_digest = resolved.index_digest.clone().unwrap_or_else(|| resolved.manifest_digest.clone());
        let mut refs = vec![r.name_only().with_digest(repo_digest.clone())];
        if r.digest().is_none() {
            refs.push(r.clone());
        }
        let already_tagged = refs.iter().all(|x| self.store.resolve_reference(x).as_ref() == Some(&id));
        let record = ImageRecord {
            id: id.clone(),
            layers,
            parent: None,
            last_tag_time: None,
            manifests: {
                let mut m = existing.as_ref().map(|e| e.record.manifests.clone()).unwrap_or_default();
                for d in manifests {
                    if !m.contains(&d) {
                        m.push(d);
                    }
                }
                m
            },
        };
        self.store.put(Image { record, config }, &refs)?;
        progress.send(JsonMessage::status(format!("Digest: {repo_digest}"), None));
        let status = if existing.is_some() && already_tagged { "Image is up to date for" } else { "Downloaded newer image for" };
        progress.send(JsonMessage::status(format!("Status: {status} {}", r.familiar()), None));
        self.event("pull", &r.familiar(), Some(&r.familiar_repository()));
        release_freed_memory();
        Ok(id)
    }

    async fn fetch_small_blob(&self, resolved: &Resolved, desc: &Descriptor) -> std::result::Result<Vec<u8>, RegistryError> {
        if let Ok(data) = self.content.read(&desc.digest) {
            return Ok(data);
        }
        let mut stream = self.registry.fetch_blob(&resolved.repository, desc, 0).await?;
        let mut data = Vec::with_capacity(desc.size as usize);
        while let Some(chunk) = stream.next().await {
            data.extend_from_slice(&chunk?);
        }
        let actual = Digest::of(&data);
        if actual != desc.digest {
            return Err(RegistryError::DigestMismatch { expected: desc.digest.clone(), actual });
        }
        Ok(data)
    }

    /// Makes the snapshot of one layer exist, downloading and unpacking the
    /// blob unless another pull already did.
    #[allow(clippy::too_many_arguments)]
    async fn fetch_layer(
        &self,
        resolved: &Resolved,
        desc: &Descriptor,
        diff_id: &Digest,
        chain: &Digest,
        parent: Option<Digest>,
        progress: &Progress,
    ) -> Result<LayerRecord> {
        let short = desc.digest.short().to_owned();
        let gate = {
            let mut map = self.inflight.lock().await;
            map.entry(desc.digest.clone()).or_default().clone()
        };
        let _guard = gate.lock().await;
        let blob = Some(BlobRef { digest: desc.digest.clone(), media_type: desc.media_type.clone(), size: desc.size });
        if let Some(meta) = self.snapshots.meta(chain) {
            progress.send(JsonMessage::status("Already exists", Some(&short)));
            let blob = blob.filter(|b| self.content.exists(&b.digest));
            return Ok(LayerRecord { diff_id: diff_id.clone(), chain_id: chain.clone(), blob, size: meta.size });
        }
        let mut last_err = None;
        for attempt in 0..LAYER_ATTEMPTS {
            match self.download_and_unpack(resolved, desc, diff_id, chain, parent.clone(), progress).await {
                Ok(size) => {
                    progress.send(JsonMessage::empty_detail("Pull complete", &short));
                    return Ok(LayerRecord { diff_id: diff_id.clone(), chain_id: chain.clone(), blob, size });
                }
                Err(LayerError::Retryable(e)) => {
                    tracing::warn!(layer = %desc.digest, attempt, error = %e, "layer download interrupted; resuming");
                    progress.send(JsonMessage::status(format!("Retrying in {} second", attempt + 1), Some(&short)));
                    tokio::time::sleep(std::time::Duration::from_millis(200 * (attempt as u64 + 1))).await;
                    last_err = Some(e);
                }
                Err(LayerError::Fatal(e)) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| Error::internal("layer download failed")))
    }

    #[allow(clippy::too_many_arguments)]
    async fn download_and_unpack(
        &self,
        resolved: &Resolved,
        desc: &Descriptor,
        diff_id: &Digest,
        chain: &Digest,
        parent: Option<Digest>,
        progress: &Progress,
    ) -> std::result::Result<u64, LayerError> {
        let short = desc.digest.short().to_owned();
        let fatal = |e: String| LayerError::Fatal(Error::internal(e));
        let pending = self.snapshots.prepare().map_err(|e| fatal(format!("prepare snapshot: {e}")))?;
        let dest = pending.fs_dir();
        let local = self.content.exists(&desc.digest);
        let (tx, rx) = std::sync::mpsc::sync_channel::<std::result::Result<Bytes, String>>(16);
        let source = if local {
            drop(tx);
            let file = self.content.open_blob(&desc.digest).map_err(|e| fatal(e.to_string()))?;
            Source { prefix: Some(file), rx: None, pending: Bytes::new(), ingest: None, hasher: Hasher::new(), failure: None }
        } else {
            let ingest = self.content.ingest(&desc.digest).map_err(|e| fatal(e.to_string()))?;
            let prefix = if ingest.offset() > 0 {
                Some(File::open(ingest.partial_path()).map_err(|e| fatal(format!("open partial download: {e}")))?)
            } else {
                None
            };
            let offset = ingest.offset();
            if offset > 0 {
                tracing::info!(layer = %desc.digest, offset, "resuming download");
            } else {
                tracing::info!(layer = %desc.digest, size = desc.size, "downloading layer");
            }
            let mut stream = self.registry.fetch_blob(&resolved.repository, desc, offset).await.map_err(LayerError::from_registry)?;
            let total = desc.size;
            let progress = progress.clone();
            let short = short.clone();
            // Network side: forward chunks to the unpacking thread.
            tokio::spawn(async move {
                let mut current = offset;
                let mut last_report = 0u64;
                while let Some(chunk) = stream.next().await {
                    let msg = chunk.map_err(|e| e.to_string());
                    if let Ok(c) = &msg {
                        current += c.len() as u64;
                        if current - last_report >= 256 * 1024 || current == total {
                            last_report = current;
                            progress.send(JsonMessage::progress("Downloading", &short, current, total));
                        }
                    }
                    let failed = msg.is_err();
                    let tx2 = tx.clone();
                    if tokio::task::spawn_blocking(move || tx2.send(msg)).await.map(|r| r.is_err()).unwrap_or(true) || failed {
                        return;
                    }
                }
            });
            Source { prefix, rx: Some(rx), pending: Bytes::new(), ingest: Some(ingest), hasher: Hasher::new(), failure: None }
        };
        let expected_size = desc.size;
        let dest2 = dest.clone();
        let unpacked = tokio::task::spawn_blocking(move || unpack(source, &dest2, expected_size))
            .await
            .map_err(|e| fatal(format!("unpack task: {e}")))?;
        let (blob_digest, blob_size, applied, source) = match unpacked {
            Ok(v) => v,
            Err(UnpackError::Transport(e)) => return Err(LayerError::Retryable(Error::new(Kind::Unavailable, e))),
            Err(UnpackError::Layer(e)) => return Err(LayerError::Fatal(Error::invalid(format!("failed to register layer: {e}")))),
        };
        if blob_digest != desc.digest || blob_size != desc.size {
            if let Some(ingest) = source.ingest {
                ingest.discard();
            }
            return Err(LayerError::Fatal(Error::invalid(format!(
                "filesystem layer verification failed for digest {}",
                desc.digest
            ))));
        }
        if let Some(ingest) = source.ingest {
            progress.send(JsonMessage::empty_detail("Verifying Checksum", &short));
            ingest.commit(&blob_digest, blob_size, Some(desc.size)).map_err(|e| fatal(e.to_string()))?;
            progress.send(JsonMessage::empty_detail("Download complete", &short));
        }
        let actual_diff = applied.map_err(|e| LayerError::Fatal(Error::invalid(format!("failed to register layer: {e}"))))?;
        if actual_diff != *diff_id {
            return Err(LayerError::Fatal(Error::invalid(format!(
                "failed to register layer: layer {} has diff ID {actual_diff}, the image config says {diff_id}",
                desc.digest
            ))));
        }
        let size = dir_size(&dest).map_err(|e| fatal(format!("measure layer: {e}")))?;
        progress.send(JsonMessage::progress("Extracting", &short, desc.size, desc.size));
        let meta = SnapshotMeta { chain_id: chain.clone(), diff_id: diff_id.clone(), parent, size };
        self.snapshots.commit(pending, &meta).map_err(|e| fatal(format!("commit snapshot: {e}")))?;
        Ok(size)
    }
}

/// Hands memory freed by a pull's buffers back to the OS, so an idle engine
/// stays small after a big pull.
fn release_freed_memory() {
    // SAFETY: malloc_trim only releases free heap pages; it has no
    // preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

enum LayerError {
    Retryable(Error),
    Fatal(Error),
}

impl LayerError {
    fn from_registry(e: RegistryError) -> Self {
        if e.is_transport() {
            LayerError::Retryable(Error::new(Kind::Unavailable, e.to_string()))
        } else {
            LayerError::Fatal(Error::new(Kind::Unavailable, e.to_string()))
        }
    }
}

enum UnpackError {
    Transport(String),
    Layer(String),
}

/// The compressed bytes of a layer: what an earlier attempt left on disk,
/// then what the network sends (appended to the ingest file as it passes).
struct Source {
    prefix: Option<File>,
    rx: Option<std::sync::mpsc::Receiver<std::result::Result<Bytes, String>>>,
    pending: Bytes,
    ingest: Option<Ingest>,
    hasher: Hasher,
    /// What broke the connection, if it broke.
    failure: Option<String>,
}

impl Read for Source {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(prefix) = &mut self.prefix {
                let n = prefix.read(buf)?;
                if n > 0 {
                    self.hasher.update(&buf[..n]);
                    return Ok(n);
                }
                self.prefix = None;
            }
            if !self.pending.is_empty() {
                let n = buf.len().min(self.pending.len());
                let chunk = self.pending.split_to(n);
                buf[..n].copy_from_slice(&chunk);
                self.hasher.update(&chunk);
                if let Some(ingest) = &mut self.ingest {
                    ingest.append(&chunk).map_err(io::Error::other)?;
                }
                return Ok(n);
            }
            let Some(rx) = &self.rx else { return Ok(0) };
            match rx.recv() {
                Ok(Ok(b)) => self.pending = b,
                Ok(Err(e)) => {
                    self.failure = Some(e.clone());
                    return Err(io::Error::new(io::ErrorKind::ConnectionAborted, TransportFailure(e)));
                }
                Err(_) => return Ok(0),
            }
        }
    }
}

#[derive(Debug)]
struct TransportFailure(String);
impl std::fmt::Display for TransportFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for TransportFailure {}

/// Reads through a shared `Source` so it can be recovered after the
/// decompressor (which wants to own its reader) is done.
struct Shared(Arc<Mutex<Source>>, Arc<AtomicBool>);

impl Read for Shared {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let r = self.0.lock().map_err(|_| io::Error::other("source lock poisoned"))?.read(buf);
        if let Err(e) = &r {
            if e.get_ref().is_some_and(|inner| inner.is::<TransportFailure>()) {
                self.1.store(true, Ordering::SeqCst);
            }
        }
        r
    }
}

/// Reads the chunks the decompressor thread sends.
struct ChunkReader {
    rx: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    pos: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            match self.rx.recv() {
                Ok(Ok(c)) => {
                    self.chunk = c;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Decompresses and unpacks one layer while hashing both the compressed
/// blob and the uncompressed tar. Runs on a blocking thread.
/// Returns the blob's digest and length, and the unpack outcome (the diff
/// ID, or why the tar was refused).
#[allow(clippy::type_complexity)]
fn unpack(
    source: Source,
    dest: &std::path::Path,
    _expected: u64,
) -> std::result::Result<(Digest, u64, std::result::Result<Digest, String>, Source), UnpackError> {
    let shared = Arc::new(Mutex::new(source));
    let transport_failed = Arc::new(AtomicBool::new(false));
    let classify = |e: String, failed: &AtomicBool| {
        if failed.load(Ordering::SeqCst) {
            UnpackError::Transport(e)
        } else {
            UnpackError::Layer(e)
        }
    };
    // Two stages on two threads: this one unpacks while a helper receives,
    // hashes, stores and decompresses. Decompression and file creation are
    // the two costs of a pull; overlapping them uses both cores.
    let (tx, rx) = std::sync::mpsc::sync_channel::<io::Result<Vec<u8>>>(32);
    let decompressor = {
        let source = Shared(shared.clone(), transport_failed.clone());
        std::thread::Builder::new()
            .name("layer-decompress".into())
            .spawn(move || {
                let mut reader = match archive::decompressed(source) {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                loop {
                    let mut buf = vec![0u8; 256 * 1024];
                    match reader.read(&mut buf) {
                        Ok(0) => return,
                        Ok(n) => {
                            buf.truncate(n);
                            if tx.send(Ok(buf)).is_err() {
                                return;
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    }
                }
            })
            .map_err(|e| UnpackError::Layer(format!("start decompressor: {e}")))?
    };
    let applied = (|| {
        let mut tar = HashingReader::new(ChunkReader { rx, chunk: Vec::new(), pos: 0 });
        archive::apply_layer(&mut tar, dest, &ApplyOptions::default()).map_err(|e| e.to_string())?;
        io::copy(&mut tar, &mut io::sink()).map_err(|e| e.to_string())?;
        Ok::<_, String>(tar.finish().0)
    })();
    decompressor.join().map_err(|_| UnpackError::Layer("decompressor panicked".into()))?;
    // Read the rest of the blob even when unpacking failed: a blob that is
    // not what the manifest promised is reported as such, not as a bad tar.
    io::copy(&mut Shared(shared.clone(), transport_failed.clone()), &mut io::sink())
        .map_err(|e| classify(e.to_string(), &transport_failed))?;
    let mut source = Arc::try_unwrap(shared)
        .map_err(|_| UnpackError::Layer("layer source still in use".into()))?
        .into_inner()
        .map_err(|_| UnpackError::Layer("layer source lock poisoned".into()))?;
    if let Some(failure) = source.failure.take() {
        // The connection broke: the partial download stays for a resume.
        return Err(UnpackError::Transport(failure));
    }
    let len = source.hasher.len();
    let digest = source.hasher.clone().finish();
    Ok((digest, len, applied, source))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_size_matches_go_units() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(1000), "1kB");
        assert_eq!(human_size(2_345_678), "2.346MB");
        assert_eq!(human_size(123_456_789), "123.5MB");
    }

    #[test]
    fn progress_bar_is_full_at_total() {
        assert!(progress_bar(10, 10).starts_with(&format!("[{}>]", "=".repeat(49))));
        assert!(progress_bar(0, 10).starts_with("[>"));
    }
}

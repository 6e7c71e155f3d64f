//! Image archives: `docker save`, `docker load` and `docker import`.
//!
//! Owns the docker-archive format in both directions and the `--change`
//! instructions of import. `save` writes what dockerd 25+ writes: a valid
//! OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/<hex>` holding
//! configs, one fresh OCI manifest per image and every layer as an
//! *uncompressed* tar whose digest is its diff ID) that also carries the
//! legacy `manifest.json` and `repositories` pointing into `blobs/`. dockerd
//! 20.10 loads it, since it only follows `manifest.json`. `load` reads that
//! layout, the older `<id>/layer.tar` one (dockerd ≤ 24), and plain OCI
//! layouts without `manifest.json`.
//!
//! An archive to load is untrusted: it is never extracted. Its members are
//! indexed by cleaned name (a name climbing out with `..` fails the load)
//! and read at their offsets; the names `manifest.json` and `index.json`
//! give are resolved inside that index only, following the archive's own
//! symlinks as if its root were `/`. Every layer is checked against the
//! config's diff IDs before anything is stored.
//!
//! Does not own layer tars (`crate::archive`), where blobs and snapshots
//! live (`content`, `snapshots`), nor the wire (`api`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};

use serde::{Deserialize, Serialize};

use super::store::{BlobRef, Image, ImageRecord, LayerRecord};
use super::Images;
use crate::archive::{self as layer_tar, ApplyOptions, ArchiveError, PackOptions};
use crate::digest::{Digest, HashingReader, HashingWriter};
use crate::error::{Error, Kind, Result};
use crate::reference::Reference;
use crate::registry::manifest::media_type;
use crate::registry::Platform;
use crate::snapshots::{chain_ids, dir_size, SnapshotMeta};

/// Annotation containerd (and dockerd 25+) put on `index.json` entries: the
/// full image name.
const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";
/// OCI annotation with the tag of an `index.json` entry.
const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The `oci-layout` file, byte for byte as dockerd writes it.
const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion": "1.0.0"}"#;

/// Largest JSON document read from an archive (`manifest.json`,
/// `index.json`, an image config or manifest).
const MAX_JSON: u64 = 32 << 20;
/// Most members an archive to load may have.
const MAX_MEMBERS: usize = 100_000;
/// Most images one archive may hold.
const MAX_IMAGES: usize = 10_000;
/// Most symlink and hardlink hops when resolving a name inside an archive.
const MAX_LINK_HOPS: usize = 64;

// ---------------------------------------------------------------------------
// Formats

/// One entry of `manifest.json`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ManifestEntry {
    config: String,
    /// `null` for an untagged image, as dockerd writes it.
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    #[serde(default)]
    layers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    parent: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OciDescriptor {
    #[serde(default)]
    media_type: String,
    digest: Digest,
    #[serde(default)]
    size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    platform: Option<OciPlatform>,
}

impl OciDescriptor {
    fn new(media_type: &str, digest: Digest, size: u64) -> Self {
        OciDescriptor { media_type: media_type.to_owned(), digest, size, annotations: BTreeMap::new(), platform: None }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct OciPlatform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    variant: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OciManifest {
    #[serde(default)]
    schema_version: u32,
    #[serde(default)]
    media_type: String,
    config: OciDescriptor,
    #[serde(default)]
    layers: Vec<OciDescriptor>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OciIndex {
    #[serde(default)]
    schema_version: u32,
    #[serde(default)]
    media_type: String,
    #[serde(default)]
    manifests: Vec<OciDescriptor>,
}

/// `blobs/sha256/<hex>`, the path of a blob inside the archive.
fn blob_path(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}


/// `e` and its sources, joined: `ArchiveError`s keep the cause in `source()`.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn layer_error(diff_id: &Digest, e: &ArchiveError) -> Error {
    if e.is_invalid_layer() {
        Error::invalid(format!("invalid layer {diff_id}: {}", error_chain(e)))
    } else {
        Error::internal(format!("unpack layer {diff_id}: {}", error_chain(e)))
    }
}

/// A failed copy, telling bad input from our own failure to write.
enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

fn copy_split(r: &mut dyn Read, w: &mut dyn Write) -> std::result::Result<u64, CopyError> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        w.write_all(&buf[..n]).map_err(CopyError::Write)?;
        total += n as u64;
    }
}

// ---------------------------------------------------------------------------
// Writing tars

/// A tar written entry by entry to a stream, with ustar headers as Go's
/// `archive/tar` writes them for short names.
struct TarOut<W: Write> {
    out: W,
}

impl<W: Write> TarOut<W> {
    fn header(&mut self, name: &str, size: u64, mode: u32, mtime: u64, kind: tar::EntryType) -> io::Result<()> {
        let mut h = tar::Header::new_ustar();
        h.set_path(name)?;
        h.set_size(size);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(mtime);
        h.set_entry_type(kind);
        h.set_cksum();
        self.out.write_all(h.as_bytes())
    }

    fn dir(&mut self, name: &str) -> io::Result<()> {
        self.header(name, 0, 0o755, 0, tar::EntryType::Directory)
    }

    fn file(&mut self, name: &str, data: &[u8], mtime: u64) -> io::Result<()> {
        self.header(name, data.len() as u64, 0o644, mtime, tar::EntryType::Regular)?;
        self.out.write_all(data)?;
        self.pad(data.len() as u64)
    }

    fn pad(&mut self, written: u64) -> io::Result<()> {
        let rem = (written % 512) as usize;
        if rem != 0 {
            self.out.write_all(&[0u8; 512][..512 - rem])?;
        }
        Ok(())
    }

    fn finish(mut self) -> io::Result<()> {
        self.out.write_all(&[0u8; 1024])?;
        self.out.flush()
    }
}

// ---------------------------------------------------------------------------
// Save

/// An image chosen for saving and the tags to save it under.
struct Selected {
    image: Image,
    tags: Vec<Reference>,
}

fn add_selected(out: &mut Vec<Selected>, image: Image, tag: Option<Reference>) {
    let pos = match out.iter().position(|s| s.image.id() == image.id()) {
        Some(p) => p,
        None => {
            out.push(Selected { image, tags: Vec::new() });
            out.len() - 1
        }
    };
    if let Some(t) = tag {
        if !out[pos].tags.contains(&t) {
            out[pos].tags.push(t);
        }
    }
}

/// Where the bytes of a layer to save come from.
enum LayerSource {
    /// A blob in the content store; `compressed` when it is not the tar
    /// itself (then it is decompressed on the fly).
    Blob { digest: Digest, compressed: bool },
    /// No blob: the tar is rebuilt from the unpacked snapshot.
    Snapshot(Digest),
}

struct SaveLayer {
    diff_id: Digest,
    size: u64,
    mtime: u64,
    source: LayerSource,
}

enum SaveBlob {
    Json { data: Vec<u8>, mtime: u64 },
    Layer(SaveLayer),
}

/// Everything an archive will hold, sized before the first byte is written
/// so that every error that can be found early is.
struct SavePlan {
    /// By hex digest: written in this (sorted) order, as dockerd's walk of
    /// its temporary directory does.
    blobs: BTreeMap<String, SaveBlob>,
    manifest: Vec<ManifestEntry>,
    index: Vec<OciDescriptor>,
    repositories: BTreeMap<String, BTreeMap<String, String>>,
}

impl Images {
    /// `docker save` (`GET /images/get?names=…`, `GET /images/{name}/get`):
    /// writes the named images as one tar to `out`.
    ///
    /// A name may be an ID or ID prefix (saved untagged), a `repo:tag` (saved
    /// with that tag only), a bare repository (every tag of it), or a digest
    /// reference (saved untagged), as dockerd resolves them. Layers are
    /// written uncompressed: the stored blob decompressed, or, when there is
    /// no blob, a tar rebuilt from the unpacked layer. Every layer is checked
    /// against its diff ID; compressed blobs and rebuilt tars are checked
    /// before anything is written, so those errors come before any output.
    ///
    /// Blocks: call it on a blocking thread.
    pub fn save(&self, names: &[String], out: impl Write) -> Result<()> {
        let selected = self.select_for_save(names)?;
        let mut leased = Vec::new();
        for s in &selected {
            leased.push(s.image.id().clone());
            for l in &s.image.record.layers {
                leased.push(l.diff_id.clone());
                leased.push(l.chain_id.clone());
                leased.extend(l.blob.as_ref().map(|b| b.digest.clone()));
            }
        }
        let _lease = self.lease(leased);
        let plan = self.plan_save(&selected)?;
        self.write_save(&plan, out)?;
        for s in &selected {
            // dockerd names the image by its ID in save events.
            let id = s.image.id().to_string();
            self.event("save", &id, Some(&id));
        }
        Ok(())
    }

    fn select_for_save(&self, names: &[String]) -> Result<Vec<Selected>> {
        let mut out = Vec::new();
        for name in names {
            let not_found = || Error::not_found(format!("No such image: {name}"));
            let hex = name.strip_prefix("sha256:").unwrap_or(name);
            if name.starts_with("sha256:") || (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())) {
                add_selected(&mut out, self.store.find(name)?.image, None);
                continue;
            }
            let r = match Reference::parse(name) {
                Ok(r) => r,
                Err(e) => match self.store.find(name) {
                    Ok(found) => {
                        add_selected(&mut out, found.image, None);
                        continue;
                    }
                    Err(_) => return Err(Error::invalid(e.to_string())),
                },
            };
            if r.digest().is_some() {
                add_selected(&mut out, self.store.find(name)?.image, None);
            } else if r.tag().is_some() {
                let id = self.store.resolve_reference(&r).ok_or_else(not_found)?;
                let image = self.store.get(&id).ok_or_else(not_found)?;
                add_selected(&mut out, image, Some(r));
            } else {
                // A bare repository saves every tag of it.
                let mut tagged: Vec<(Reference, Image)> = Vec::new();
                for img in self.store.list() {
                    for t in self.store.references_of(img.id()) {
                        if t.digest().is_none() && t.tag().is_some() && t.repository() == r.repository() {
                            tagged.push((t, img.clone()));
                        }
                    }
                }
                tagged.sort_by(|a, b| a.0.cmp(&b.0));
                if tagged.is_empty() {
                    add_selected(&mut out, self.store.find(name)?.image, None);
                }
                for (t, img) in tagged {
                    add_selected(&mut out, img, Some(t));
                }
            }
        }
        Ok(out)
    }

    fn plan_save(&self, selected: &[Selected]) -> Result<SavePlan> {
        let ids: HashSet<&Digest> = selected.iter().map(|s| s.image.id()).collect();
        let mut plan =
            SavePlan { blobs: BTreeMap::new(), manifest: Vec::new(), index: Vec::new(), repositories: BTreeMap::new() };
        for s in selected {
            let img = &s.image;
            let id = img.id();
            let Some(top) = img.record.layers.last() else {
                return Err(Error::new(Kind::NotImplemented, "empty export - not implemented"));
            };
            let top = top.diff_id.hex().to_owned();
            let config =
                self.content.read(id).map_err(|e| Error::internal(format!("read config of image {id}: {e}")))?;
            let mtime = u64::try_from(img.created_unix()).unwrap_or(0);
            let mut descriptors = Vec::new();
            let mut paths = Vec::new();
            for l in &img.record.layers {
                let size = match plan.blobs.get(l.diff_id.hex()) {
                    Some(SaveBlob::Layer(p)) => p.size,
                    Some(SaveBlob::Json { .. }) => {
                        return Err(Error::internal(format!("layer {} has the digest of a config", l.diff_id)))
                    }
                    None => {
                        let p = self.plan_layer(l, mtime)?;
                        let size = p.size;
                        plan.blobs.insert(l.diff_id.hex().to_owned(), SaveBlob::Layer(p));
                        size
                    }
                };
                descriptors.push(OciDescriptor::new(media_type::OCI_LAYER_TAR, l.diff_id.clone(), size));
                paths.push(blob_path(&l.diff_id));
            }
            let config_size = config.len() as u64;
            plan.blobs.insert(id.hex().to_owned(), SaveBlob::Json { data: config, mtime });
            let manifest = OciManifest {
                schema_version: 2,
                media_type: media_type::OCI_MANIFEST.to_owned(),
                config: OciDescriptor::new(media_type::OCI_CONFIG, id.clone(), config_size),
                layers: descriptors,
            };
            let data = to_json(&manifest)?;
            let manifest_desc = OciDescriptor::new(media_type::OCI_MANIFEST, Digest::of(&data), data.len() as u64);
            plan.blobs.insert(manifest_desc.digest.hex().to_owned(), SaveBlob::Json { data, mtime: 0 });

            let mut repo_tags = Vec::new();
            for t in &s.tags {
                let tag = t.tag().unwrap_or(crate::reference::DEFAULT_TAG);
                plan.repositories.entry(t.familiar_repository()).or_default().insert(tag.to_owned(), top.clone());
                repo_tags.push(t.familiar());
                let mut d = manifest_desc.clone();
                d.annotations.insert(ANNOTATION_IMAGE_NAME.to_owned(), t.to_string());
                d.annotations.insert(ANNOTATION_REF_NAME.to_owned(), tag.to_owned());
                plan.index.push(d);
            }
            if s.tags.is_empty() {
                plan.index.push(manifest_desc);
            }
            plan.manifest.push(ManifestEntry {
                config: blob_path(id),
                repo_tags: (!repo_tags.is_empty()).then_some(repo_tags),
                layers: paths,
                parent: img.record.parent.as_ref().filter(|p| ids.contains(p)).map(ToString::to_string),
            });
        }
        Ok(plan)
    }

    /// Finds the bytes of one layer and their size, checking a compressed
    /// blob or a rebuilt tar against the diff ID now.
    fn plan_layer(&self, l: &LayerRecord, mtime: u64) -> Result<SaveLayer> {
        let diff_id = &l.diff_id;
        let plan = |size, source| Ok(SaveLayer { diff_id: diff_id.clone(), size, mtime, source });
        if let Some(size) = self.content.size(diff_id) {
            return plan(size, LayerSource::Blob { digest: diff_id.clone(), compressed: false });
        }
        if let Some(b) = l.blob.as_ref().filter(|b| self.content.exists(&b.digest)) {
            let file = self.content.open_blob(&b.digest).map_err(|e| Error::internal(e.to_string()))?;
            let reader = layer_tar::decompressed(BufReader::new(file))
                .map_err(|e| Error::io(format!("read blob {}", b.digest), e))?;
            let mut hashing = HashingReader::new(reader);
            io::copy(&mut hashing, &mut io::sink())
                .map_err(|e| Error::io(format!("decompress blob {}", b.digest), e))?;
            let (actual, size) = hashing.finish();
            if actual != *diff_id {
                return Err(Error::internal(format!(
                    "layer {diff_id}: blob {} decompresses to {actual}, not to the layer's diff ID",
                    b.digest
                )));
            }
            return plan(size, LayerSource::Blob { digest: b.digest.clone(), compressed: true });
        }
        if self.snapshots.exists(&l.chain_id) {
            let mut hashing = HashingWriter::new(io::sink());
            layer_tar::write_tar_of_dir(
                &self.snapshots.fs_dir(&l.chain_id),
                &mut hashing,
                &PackOptions { overlay_whiteouts: true },
            )
            .map_err(|e| Error::internal(format!("pack layer {diff_id}: {}", error_chain(&e))))?;
            let (_, actual, size) = hashing.finish();
            if actual != *diff_id {
                return Err(Error::internal(format!(
                    "cannot save layer {diff_id}: its blob is gone, and the tar rebuilt from its unpacked files \
                     has digest {actual}, which does not match the diff ID in the image config"
                )));
            }
            return plan(size, LayerSource::Snapshot(l.chain_id.clone()));
        }
        Err(Error::internal(format!("layer {diff_id} is missing: neither its blob nor its unpacked files exist")))
    }

    fn write_save(&self, plan: &SavePlan, out: impl Write) -> Result<()> {
        let write_err = |e| Error::io("write archive", e);
        let mut tar = TarOut { out };
        tar.dir("blobs/").map_err(write_err)?;
        tar.dir("blobs/sha256/").map_err(write_err)?;
        for (hex, blob) in &plan.blobs {
            let name = format!("blobs/sha256/{hex}");
            match blob {
                SaveBlob::Json { data, mtime } => tar.file(&name, data, *mtime).map_err(write_err)?,
                SaveBlob::Layer(l) => self.write_layer(&mut tar, &name, l)?,
            }
        }
        let index =
            OciIndex { schema_version: 2, media_type: media_type::OCI_INDEX.to_owned(), manifests: plan.index.clone() };
        tar.file("index.json", &to_json(&index)?, 0).map_err(write_err)?;
        // json.Encoder ends documents with a newline; dockerd's files do.
        let mut manifest = to_json(&plan.manifest)?;
        manifest.push(b'\n');
        tar.file("manifest.json", &manifest, 0).map_err(write_err)?;
        tar.file("oci-layout", OCI_LAYOUT, 0).map_err(write_err)?;
        if !plan.repositories.is_empty() {
            let mut repos = to_json(&plan.repositories)?;
            repos.push(b'\n');
            tar.file("repositories", &repos, 0).map_err(write_err)?;
        }
        tar.finish().map_err(write_err)
    }

    fn write_layer<W: Write>(&self, tar: &mut TarOut<W>, name: &str, l: &SaveLayer) -> Result<()> {
        let write_err = |e| Error::io("write archive", e);
        tar.header(name, l.size, 0o644, l.mtime, tar::EntryType::Regular).map_err(write_err)?;
        let mut hashing = HashingWriter::new(&mut tar.out);
        match &l.source {
            LayerSource::Blob { digest, compressed } => {
                let file = self.content.open_blob(digest).map_err(|e| Error::internal(e.to_string()))?;
                let mut reader: Box<dyn Read + Send> = if *compressed {
                    layer_tar::decompressed(BufReader::new(file))
                        .map_err(|e| Error::io(format!("read blob {digest}"), e))?
                } else {
                    Box::new(file)
                };
                match copy_split(&mut (&mut reader).take(l.size), &mut hashing) {
                    Ok(_) => {}
                    Err(CopyError::Read(e)) => return Err(Error::io(format!("read blob {digest}"), e)),
                    Err(CopyError::Write(e)) => return Err(write_err(e)),
                }
            }
            LayerSource::Snapshot(chain) => {
                layer_tar::write_tar_of_dir(
                    &self.snapshots.fs_dir(chain),
                    &mut hashing,
                    &PackOptions { overlay_whiteouts: true },
                )
                .map_err(|e| Error::internal(format!("pack layer {}: {}", l.diff_id, error_chain(&e))))?;
            }
        }
        let (_, actual, written) = hashing.finish();
        if written != l.size || actual != l.diff_id {
            return Err(Error::internal(format!(
                "layer {} changed while it was being saved ({written} bytes with digest {actual}, expected {} bytes)",
                l.diff_id, l.size
            )));
        }
        tar.pad(written).map_err(write_err)
    }
}

fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| Error::internal(e.to_string()))
}

// ---------------------------------------------------------------------------
// Reading archives

/// Where a regular member's bytes are in the archive file.
#[derive(Debug, Clone, Copy)]
struct Member {
    offset: u64,
    size: u64,
}

#[derive(Debug)]
enum Node {
    File(Member),
    /// Target as the archive spells it.
    Symlink(String),
    /// Target, cleaned, relative to the archive root.
    Hardlink(String),
}

/// Cleans a member name lexically: a leading `/` and `.` components are
/// dropped, `..` pops a component. `Ok(None)` for the root itself; an error
/// when `..` climbs above the root.
fn clean_name(name: &str) -> std::result::Result<Option<String>, ()> {
    if name.contains('\0') {
        return Err(());
    }
    let mut parts: Vec<&str> = Vec::new();
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop().ok_or(())?;
            }
            c => parts.push(c),
        }
    }
    Ok((!parts.is_empty()).then(|| parts.join("/")))
}

/// An uncompressed archive, indexed without extracting anything.
struct Bundle {
    file: File,
    nodes: HashMap<String, Node>,
}

impl Bundle {
    fn index(file: File) -> Result<Self> {
        let invalid = |e: io::Error| Error::invalid(format!("invalid archive: {e}"));
        let reader = file.try_clone().map_err(|e| Error::io("open archive", e))?;
        let mut archive = tar::Archive::new(reader);
        let mut nodes = HashMap::new();
        let mut count = 0usize;
        for entry in archive.entries_with_seek().map_err(invalid)? {
            let entry = entry.map_err(invalid)?;
            count += 1;
            if count > MAX_MEMBERS {
                return Err(Error::invalid(format!("invalid archive: more than {MAX_MEMBERS} members")));
            }
            let raw = entry.path_bytes();
            let Ok(name) = std::str::from_utf8(&raw) else {
                // Nothing in an image archive has such a name, and nothing
                // can refer to it: skip it.
                continue;
            };
            let Some(name) = clean_name(name)
                .map_err(|()| Error::invalid(format!("invalid archive: member {name:?} points outside the archive")))?
            else {
                continue;
            };
            let kind = entry.header().entry_type();
            let node = match kind {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    Node::File(Member { offset: entry.raw_file_position(), size: entry.size() })
                }
                tar::EntryType::Symlink => match entry.link_name_bytes() {
                    Some(t) => match std::str::from_utf8(&t) {
                        Ok(t) => Node::Symlink(t.to_owned()),
                        Err(_) => continue,
                    },
                    None => continue,
                },
                tar::EntryType::Link => {
                    let target =
                        entry.link_name_bytes().map(|t| String::from_utf8_lossy(&t).into_owned()).unwrap_or_default();
                    match clean_name(&target) {
                        Ok(Some(t)) => Node::Hardlink(t),
                        _ => {
                            return Err(Error::invalid(format!(
                                "invalid archive: hardlink {name:?} points outside the archive ({target:?})"
                            )))
                        }
                    }
                }
                // Directories are implied by names; devices, fifos and the
                // like have no place in an image archive.
                _ => {
                    nodes.remove(&name);
                    continue;
                }
            };
            nodes.insert(name, node);
        }
        Ok(Bundle { file, nodes })
    }

    fn contains(&self, name: &str) -> bool {
        self.resolve(name).is_ok()
    }

    /// Resolves a name a manifest gives to a regular member, following the
    /// archive's symlinks (scoped to the archive, whose root acts as `/`)
    /// and hardlinks.
    fn resolve(&self, name: &str) -> Result<Member> {
        let outside = || Error::invalid(format!("invalid archive: {name:?} points outside the archive"));
        let missing = || Error::invalid(format!("invalid archive: {name} not found"));
        if name.starts_with('/') {
            return Err(outside());
        }
        clean_name(name).map_err(|()| outside())?;
        let mut todo: Vec<String> = name.split('/').rev().map(str::to_owned).collect();
        let mut done: Vec<String> = Vec::new();
        let mut hops = 0usize;
        while let Some(c) = todo.pop() {
            match c.as_str() {
                "" | "." => continue,
                ".." => {
                    done.pop();
                    continue;
                }
                _ => done.push(c),
            }
            let path = done.join("/");
            let target = match self.nodes.get(&path) {
                Some(Node::Symlink(t)) => t.clone(),
                Some(Node::Hardlink(t)) if todo.is_empty() => format!("/{t}"),
                _ => continue,
            };
            hops += 1;
            if hops > MAX_LINK_HOPS {
                return Err(Error::invalid(format!("invalid archive: too many links resolving {name}")));
            }
            done.pop();
            if target.starts_with('/') {
                done.clear();
            }
            todo.extend(target.split('/').rev().map(str::to_owned));
        }
        match self.nodes.get(&done.join("/")) {
            Some(Node::File(m)) => Ok(*m),
            _ => Err(missing()),
        }
    }

    /// A reader of one member's bytes that owns its file handle.
    fn reader(&self, m: Member) -> Result<io::Take<File>> {
        let mut f = self.file.try_clone().map_err(|e| Error::io("open archive", e))?;
        f.seek(SeekFrom::Start(m.offset)).map_err(|e| Error::io("read archive", e))?;
        Ok(f.take(m.size))
    }

    fn read_json(&self, name: &str) -> Result<Vec<u8>> {
        let m = self.resolve(name)?;
        if m.size > MAX_JSON {
            return Err(Error::invalid(format!("invalid archive: {name} is larger than {MAX_JSON} bytes")));
        }
        let mut data = Vec::with_capacity(m.size as usize);
        self.reader(m)?.read_to_end(&mut data).map_err(|e| Error::io("read archive", e))?;
        Ok(data)
    }

    /// A blob of an OCI layout, verified against its digest.
    fn read_blob(&self, d: &Digest) -> Result<Vec<u8>> {
        let data = self.read_json(&blob_path(d))?;
        let actual = Digest::of(&data);
        if actual != *d {
            return Err(Error::invalid(format!("invalid archive: blob {d} has digest {actual}")));
        }
        Ok(data)
    }
}

/// One image of an archive, parsed and checked, not yet stored.
struct LoadImage {
    id: Digest,
    config_bytes: Vec<u8>,
    config: serde_json::Value,
    diff_ids: Vec<Digest>,
    /// The archive member of each layer.
    layers: Vec<Member>,
    tags: Vec<Reference>,
    parent: Option<Digest>,
}

/// Parses an image config as dockerd's load checks it.
fn parse_config(bytes: &[u8]) -> Result<(serde_json::Value, Vec<Digest>)> {
    let config: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| Error::invalid(format!("invalid image JSON: {e}")))?;
    if !config.is_object() {
        return Err(Error::invalid("invalid image JSON: not an object"));
    }
    let Some(rootfs) = config.get("rootfs").filter(|r| !r.is_null()) else {
        return Err(Error::invalid("invalid image JSON, no RootFS key"));
    };
    let diff_ids: Vec<Digest> = match rootfs.get("diff_ids") {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| Error::invalid(format!("invalid image JSON: {e}")))?,
    };
    if diff_ids.len() > crate::registry::manifest::MAX_LAYERS {
        return Err(Error::invalid(format!(
            "invalid image JSON: more than {} layers",
            crate::registry::manifest::MAX_LAYERS
        )));
    }
    let os = config.get("os").and_then(|v| v.as_str()).unwrap_or("");
    if !os.is_empty() && os != "linux" {
        return Err(Error::invalid(format!("cannot load {os} image on linux")));
    }
    Ok((config, diff_ids))
}

fn parse_tag(tag: &str) -> Result<Reference> {
    let r = Reference::parse(tag).map_err(|e| Error::invalid(e.to_string()))?;
    if r.tag().is_none() || r.digest().is_some() {
        return Err(Error::invalid(format!("invalid tag {tag:?}")));
    }
    Ok(r)
}

/// Whether `parent` can be recorded as the parent of `child` (dockerd's
/// rule: the child's history is the parent's plus one entry).
fn valid_parent(child: &serde_json::Value, parent: &serde_json::Value) -> bool {
    let history = |v: &serde_json::Value| v.get("history").and_then(|h| h.as_array()).cloned().unwrap_or_default();
    let (c, p) = (history(child), history(parent));
    if c.is_empty() && p.is_empty() {
        return true;
    }
    c.len() == p.len() + 1 && p.iter().zip(c.iter()).all(|(a, b)| a == b)
}

impl Images {
    /// `docker load` (`POST /images/load`): loads every image of the archive
    /// at `archive`, a file the caller owns (the spooled request body).
    ///
    /// Accepts what `docker save` writes — dockerd 20.10's
    /// `<id>/layer.tar` layout and the OCI layout with `manifest.json` of
    /// dockerd 25+ (and [`Images::save`]) — and plain OCI layouts (just
    /// `index.json`), each possibly gzip- or zstd-compressed. Layer members
    /// may be compressed too. Each layer is verified against the config's
    /// diff ID before anything is stored; then it is kept as an uncompressed
    /// blob (digest = diff ID) and unpacked into its snapshot unless one with
    /// its chain ID exists. If anything fails, nothing new is left behind.
    ///
    /// `progress` receives dockerd's lines, without newline: `Loaded image:
    /// busybox:latest` per tag, `Loaded image ID: sha256:…` for untagged
    /// images (printed, as dockerd does, for every image when the last one
    /// has no tag), and `The image X already exists, renaming the old one
    /// with ID … to empty string` when a tag moves. No progress bars are
    /// produced, so `quiet` changes nothing.
    ///
    /// `archive` is read in place (it is a seekable file: the spooled
    /// request body); a compressed archive is first decompressed into an
    /// anonymous temporary file in `$TMPDIR`, where dockerd extracts
    /// archives too. Layers go from the archive straight into the content
    /// store's ingest area, so nothing else needs scratch space. Blocks:
    /// call it on a blocking thread.
    pub fn load(&self, archive: File, quiet: bool, progress: &mut dyn FnMut(String)) -> Result<()> {
        let _ = quiet;
        let bundle = open_bundle(archive)?;
        let images = read_images(&bundle)?;

        // Each diff ID whose blob is missing is read from the archive and
        // verified before anything is stored; the store pass reads it again
        // (and the content store verifies it again).
        let mut verified: Vec<(Digest, Member)> = Vec::new();
        let mut seen = HashSet::new();
        let mut jobs: Vec<(usize, Digest, Member)> = Vec::new();
        for img in &images {
            for (i, (d, m)) in img.diff_ids.iter().zip(&img.layers).enumerate() {
                if !self.content.exists(d) && seen.insert(d.clone()) {
                    jobs.push((i, d.clone(), *m));
                }
            }
        }
        jobs.sort_by_key(|(_, _, m)| m.offset);
        for (i, d, m) in jobs {
            verify_layer(&bundle, m, i, &d)?;
            verified.push((d, m));
        }

        let mut leased = Vec::new();
        for img in &images {
            leased.push(img.id.clone());
            leased.extend(img.diff_ids.iter().cloned());
            leased.extend(chain_ids(&img.diff_ids));
        }
        let lease = self.lease(leased);
        let outcome =
            self.store_loaded(&bundle, &images, &verified).and_then(|()| self.register_loaded(&images, progress));
        drop(lease);
        if outcome.is_err() {
            // Blobs and snapshots this load stored belong to no image.
            if let Err(e) = self.gc() {
                tracing::warn!(error = %e, "cleaning up after a failed load failed");
            }
        }
        outcome
    }

    fn store_loaded(&self, bundle: &Bundle, images: &[LoadImage], verified: &[(Digest, Member)]) -> Result<()> {
        for img in images {
            self.content.write_blob(Some(&img.id), &img.config_bytes).map_err(|e| Error::internal(e.to_string()))?;
        }
        for (d, m) in verified {
            if !self.content.exists(d) {
                let reader = layer_tar::decompressed(BufReader::new(bundle.reader(*m)?))
                    .map_err(|e| Error::invalid(format!("invalid archive: reading layer {d}: {e}")))?;
                self.ingest_layer(reader, d)?;
            }
        }
        for img in images {
            let chains = chain_ids(&img.diff_ids);
            for (i, (d, c)) in img.diff_ids.iter().zip(&chains).enumerate() {
                if !self.snapshots.exists(c) {
                    let parent = i.checked_sub(1).map(|p| chains[p].clone());
                    self.unpack_blob(d, c, parent)?;
                }
            }
        }
        Ok(())
    }

    /// Unpacks the uncompressed layer blob `diff_id` into the snapshot `chain`.
    pub(crate) fn unpack_blob(&self, diff_id: &Digest, chain: &Digest, parent: Option<Digest>) -> Result<u64> {
        let pending = self.snapshots.prepare().map_err(|e| Error::io("prepare snapshot", e))?;
        let blob = self.content.open_blob(diff_id).map_err(|e| Error::internal(e.to_string()))?;
        layer_tar::apply_layer(BufReader::new(blob), &pending.fs_dir(), &ApplyOptions::default())
            .map_err(|e| layer_error(diff_id, &e))?;
        let size = dir_size(&pending.fs_dir()).map_err(|e| Error::io("measure layer", e))?;
        let meta = SnapshotMeta { chain_id: chain.clone(), diff_id: diff_id.clone(), parent, size };
        self.snapshots.commit(pending, &meta).map_err(|e| Error::io("commit snapshot", e))?;
        Ok(size)
    }

    /// Stores the uncompressed layer tar `reader` yields as the blob
    /// `diff_id`; fails, storing nothing, if its digest differs.
    fn ingest_layer(&self, reader: impl Read, diff_id: &Digest) -> Result<()> {
        let store_err = |e: crate::content::ContentError| Error::internal(format!("store layer {diff_id}: {e}"));
        let mut ingest = self.content.ingest(diff_id).map_err(store_err)?;
        if ingest.offset() > 0 {
            // Left by an interrupted download; this copy is complete.
            ingest.discard();
            ingest = self.content.ingest(diff_id).map_err(store_err)?;
        }
        let mut hashing = HashingReader::new(reader);
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = match hashing.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    ingest.discard();
                    return Err(Error::invalid(format!("invalid archive: reading layer {diff_id}: {e}")));
                }
            };
            if let Err(e) = ingest.append(&buf[..n]) {
                ingest.discard();
                return Err(store_err(e));
            }
        }
        let (actual, size) = hashing.finish();
        ingest.commit(&actual, size, None).map_err(|e| match e {
            crate::content::ContentError::DigestMismatch { expected, actual } => Error::invalid(format!(
                "invalid diffID for layer: expected {:?}, got {:?}",
                expected.to_string(),
                actual.to_string()
            )),
            e => store_err(e),
        })
    }

    pub(crate) fn layer_records(&self, diff_ids: &[Digest], existing: Option<&Image>) -> Result<Vec<LayerRecord>> {
        let chains = chain_ids(diff_ids);
        let mut out = Vec::with_capacity(diff_ids.len());
        for (i, (d, c)) in diff_ids.iter().zip(chains).enumerate() {
            let size = self
                .snapshots
                .meta(&c)
                .map(|m| m.size)
                .ok_or_else(|| Error::internal(format!("snapshot {c} vanished")))?;
            // Keep the blob an earlier pull recorded (push sends it as is).
            let blob = existing
                .and_then(|e| e.record.layers.get(i))
                .and_then(|l| l.blob.clone())
                .filter(|b| self.content.exists(&b.digest))
                .or_else(|| {
                    self.content.size(d).map(|size| BlobRef {
                        digest: d.clone(),
                        media_type: media_type::OCI_LAYER_TAR.to_owned(),
                        size,
                    })
                });
            out.push(LayerRecord { diff_id: d.clone(), chain_id: c, blob, size });
        }
        Ok(out)
    }

    fn register_loaded(&self, images: &[LoadImage], progress: &mut dyn FnMut(String)) -> Result<()> {
        let by_id: HashMap<&Digest, &LoadImage> = images.iter().map(|i| (&i.id, i)).collect();
        let mut id_lines = Vec::new();
        let mut last_tagged = 0;
        for img in images {
            let existing = self.store.get(&img.id);
            let layers = self.layer_records(&img.diff_ids, existing.as_ref())?;
            let parent = img
                .parent
                .as_ref()
                .filter(|p| **p != img.id)
                .and_then(|p| by_id.get(p))
                .filter(|p| valid_parent(&img.config, &p.config))
                .map(|p| p.id.clone());
            let record = ImageRecord {
                id: img.id.clone(),
                layers,
                parent,
                last_tag_time: None,
                manifests: existing.map(|e| e.record.manifests).unwrap_or_default(),
            };
            let moved: Vec<Option<Digest>> =
                img.tags.iter().map(|t| self.store.resolve_reference(t).filter(|prev| *prev != img.id)).collect();
            self.store.put(Image { record, config: img.config.clone() }, &img.tags)?;
            for (t, prev) in img.tags.iter().zip(moved) {
                if let Some(prev) = prev {
                    progress(format!(
                        "The image {} already exists, renaming the old one with ID {prev} to empty string",
                        t.familiar()
                    ));
                }
                progress(format!("Loaded image: {}", t.familiar()));
            }
            id_lines.push(format!("Loaded image ID: {}", img.id));
            last_tagged = img.tags.len();
            let id = img.id.to_string();
            self.event("load", &id, Some(&id));
        }
        if last_tagged == 0 {
            for l in id_lines {
                progress(l);
            }
        }
        Ok(())
    }
}

/// Opens the archive, decompressing it into an anonymous temporary file
/// first if it is compressed.
fn open_bundle(mut file: File) -> Result<Bundle> {
    let mut magic = [0u8; 6];
    let mut len = 0;
    while len < magic.len() {
        match file.read(&mut magic[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("read archive", e)),
        }
    }
    file.seek(SeekFrom::Start(0)).map_err(|e| Error::io("read archive", e))?;
    let head = &magic[..len];
    if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        return Err(Error::invalid("xz-compressed archives are not supported: decompress the archive first"));
    }
    if head.starts_with(b"BZh") {
        return Err(Error::invalid("bzip2-compressed archives are not supported: decompress the archive first"));
    }
    let compressed = head.starts_with(&[0x1f, 0x8b]) || head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]);
    if !compressed {
        return Bundle::index(file);
    }
    let mut out = tempfile::tempfile().map_err(|e| Error::io("create temporary file", e))?;
    let mut reader =
        layer_tar::decompressed(BufReader::new(file)).map_err(|e| Error::invalid(format!("invalid archive: {e}")))?;
    match copy_split(&mut reader, &mut out) {
        Ok(_) => {}
        Err(CopyError::Read(e)) => return Err(Error::invalid(format!("invalid archive: {e}"))),
        Err(CopyError::Write(e)) => return Err(Error::io("decompress archive", e)),
    }
    out.seek(SeekFrom::Start(0)).map_err(|e| Error::io("read temporary file", e))?;
    Bundle::index(out)
}

/// Every image of the archive, from `manifest.json` or else `index.json`.
fn read_images(bundle: &Bundle) -> Result<Vec<LoadImage>> {
    if bundle.contains("manifest.json") {
        return read_docker_manifest(bundle);
    }
    if bundle.contains("index.json") {
        return read_oci_index(bundle);
    }
    Err(Error::invalid("invalid archive: does not contain a manifest.json"))
}

fn read_docker_manifest(bundle: &Bundle) -> Result<Vec<LoadImage>> {
    let data = bundle.read_json("manifest.json")?;
    let entries: Option<Vec<ManifestEntry>> = serde_json::from_slice(&data)
        .map_err(|e| Error::invalid(format!("invalid archive: failed to decode manifest.json: {e}")))?;
    let entries = entries.ok_or_else(|| Error::invalid("invalid manifest, manifest cannot be null (but can be [])"))?;
    if entries.len() > MAX_IMAGES {
        return Err(Error::invalid(format!("invalid manifest: more than {MAX_IMAGES} images")));
    }
    let mut images = Vec::new();
    for m in entries {
        let config_bytes = bundle.read_json(&m.config)?;
        let (config, diff_ids) = parse_config(&config_bytes)?;
        if m.layers.len() != diff_ids.len() {
            return Err(Error::invalid(format!(
                "invalid manifest, layers length mismatch: expected {}, got {}",
                m.layers.len(),
                diff_ids.len()
            )));
        }
        let layers = m.layers.iter().map(|l| bundle.resolve(l)).collect::<Result<Vec<_>>>()?;
        let tags = m.repo_tags.unwrap_or_default().iter().map(|t| parse_tag(t)).collect::<Result<Vec<_>>>()?;
        let parent = m
            .parent
            .filter(|p| !p.is_empty())
            .map(|p| p.parse::<Digest>().map_err(|e| Error::invalid(format!("invalid manifest: {e}"))))
            .transpose()?;
        images.push(LoadImage { id: Digest::of(&config_bytes), config_bytes, config, diff_ids, layers, tags, parent });
    }
    Ok(images)
}

/// A plain OCI layout: `index.json` lists manifests (or indexes, of which
/// the entry for this host's platform is taken).
fn read_oci_index(bundle: &Bundle) -> Result<Vec<LoadImage>> {
    let data = bundle.read_json("index.json")?;
    let index: OciIndex = serde_json::from_slice(&data)
        .map_err(|e| Error::invalid(format!("invalid archive: failed to decode index.json: {e}")))?;
    if index.manifests.len() > MAX_IMAGES {
        return Err(Error::invalid(format!("invalid index.json: more than {MAX_IMAGES} manifests")));
    }
    let mut images: Vec<LoadImage> = Vec::new();
    for desc in &index.manifests {
        let manifest_desc =
            if matches!(desc.media_type.as_str(), media_type::OCI_INDEX | media_type::DOCKER_MANIFEST_LIST) {
                let nested: OciIndex = serde_json::from_slice(&bundle.read_blob(&desc.digest)?)
                    .map_err(|e| Error::invalid(format!("invalid archive: index {}: {e}", desc.digest)))?;
                let wanted = |d: &&OciDescriptor| {
                    matches!(d.media_type.as_str(), media_type::OCI_MANIFEST | media_type::DOCKER_MANIFEST)
                        && d.platform.as_ref().is_none_or(|p| p.os == "linux" && p.architecture == crate::engine::go_arch())
                };
                match nested.manifests.iter().find(wanted) {
                    Some(d) => d.clone(),
                    None => {
                        return Err(Error::invalid(format!(
                            "invalid archive: index {} has no image for linux/{}",
                            desc.digest,
                            crate::engine::go_arch()
                        )))
                    }
                }
            } else if matches!(desc.media_type.as_str(), media_type::OCI_MANIFEST | media_type::DOCKER_MANIFEST | "") {
                desc.clone()
            } else {
                continue;
            };
        let manifest: OciManifest = serde_json::from_slice(&bundle.read_blob(&manifest_desc.digest)?)
            .map_err(|e| Error::invalid(format!("invalid archive: manifest {}: {e}", manifest_desc.digest)))?;
        if !matches!(manifest.config.media_type.as_str(), media_type::OCI_CONFIG | media_type::DOCKER_CONFIG | "") {
            continue;
        }
        let config_bytes = bundle.read_blob(&manifest.config.digest)?;
        let (config, diff_ids) = parse_config(&config_bytes)?;
        if manifest.layers.len() != diff_ids.len() {
            return Err(Error::invalid(format!(
                "invalid manifest, layers length mismatch: expected {}, got {}",
                manifest.layers.len(),
                diff_ids.len()
            )));
        }
        let layers =
            manifest.layers.iter().map(|l| bundle.resolve(&blob_path(&l.digest))).collect::<Result<Vec<_>>>()?;
        let name = desc.annotations.get(ANNOTATION_IMAGE_NAME).or_else(|| {
            // A ref name alone (`latest`) names no repository.
            desc.annotations.get(ANNOTATION_REF_NAME).filter(|n| n.contains(':'))
        });
        let tag = name.map(|n| parse_tag(n)).transpose()?;
        let id = Digest::of(&config_bytes);
        match images.iter_mut().find(|i| i.id == id) {
            Some(existing) => existing.tags.extend(tag.filter(|t| !existing.tags.contains(t))),
            None => images.push(LoadImage {
                id,
                config_bytes,
                config,
                diff_ids,
                layers,
                tags: tag.into_iter().collect(),
                parent: None,
            }),
        }
    }
    Ok(images)
}

/// Checks one layer member, decompressed, against `diff_id` (layer `index`
/// of its image).
fn verify_layer(bundle: &Bundle, m: Member, index: usize, diff_id: &Digest) -> Result<()> {
    let reader = layer_tar::decompressed(BufReader::new(bundle.reader(m)?))
        .map_err(|e| Error::invalid(format!("invalid archive: reading layer {diff_id}: {e}")))?;
    let mut hashing = HashingReader::new(reader);
    if let Err(CopyError::Read(e) | CopyError::Write(e)) = copy_split(&mut hashing, &mut io::sink()) {
        return Err(Error::invalid(format!("invalid archive: reading layer {diff_id}: {e}")));
    }
    let (actual, _) = hashing.finish();
    if actual != *diff_id {
        return Err(Error::invalid(format!(
            "invalid diffID for layer {index}: expected {:?}, got {:?}",
            diff_id.to_string(),
            actual.to_string()
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Import

/// The config of an imported image, with dockerd 20.10's fields in the
/// (sorted) order it writes them.
#[derive(Serialize)]
struct ImportedConfig<'a> {
    architecture: &'a str,
    comment: &'a str,
    config: &'a changes::RunConfig,
    container_config: changes::RunConfig,
    created: &'a str,
    docker_version: &'a str,
    history: [ImportedHistory<'a>; 1],
    os: &'a str,
    rootfs: ImportedRootFs<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    variant: Option<&'a str>,
}

#[derive(Serialize)]
struct ImportedHistory<'a> {
    created: &'a str,
    comment: &'a str,
}

#[derive(Serialize)]
struct ImportedRootFs<'a> {
    #[serde(rename = "type")]
    typ: &'static str,
    diff_ids: &'a [Digest],
}

impl Images {
    /// `docker import` (`POST /images/create?fromSrc=-`) for this host's
    /// platform; see [`Images::import_with_platform`].
    pub fn import(
        &self,
        archive: File,
        reference: Option<Reference>,
        changes: &[String],
        message: &str,
    ) -> Result<Digest> {
        self.import_with_platform(archive, reference, changes, message, None)
    }

    /// `docker import`: makes a one-layer image of the root file system tar
    /// in `archive` (gzip- or zstd-compressed or not; stored uncompressed),
    /// applies the `--change` instructions (CMD, ENTRYPOINT, ENV, EXPOSE,
    /// HEALTHCHECK, LABEL, ONBUILD, STOPSIGNAL, USER, VOLUME, WORKDIR, with
    /// dockerd's parsing and messages) to its config, tags it `reference`
    /// if given, and returns its ID.
    ///
    /// The config is what dockerd 20.10 writes: host (or `platform`)
    /// architecture and OS, `created` now, `docker_version`, `comment` =
    /// `message` (default `Imported from -`), one history entry with the
    /// same `created` and `comment`. `archive` is read twice (once to learn
    /// the diff ID, once into the content store) and needs no scratch space.
    /// Blocks: call it on a blocking thread.
    pub fn import_with_platform(
        &self,
        mut archive: File,
        reference: Option<Reference>,
        changes: &[String],
        message: &str,
        platform: Option<&Platform>,
    ) -> Result<Digest> {
        if reference.as_ref().is_some_and(|r| r.digest().is_some()) {
            return Err(Error::invalid("cannot import digest reference"));
        }
        let (os, arch, variant) = match platform {
            Some(p) => (p.os.as_str(), p.architecture.as_str(), p.variant.as_deref()),
            None => ("linux", crate::engine::go_arch(), None),
        };
        if os != "linux" {
            return Err(Error::invalid("operating system is not supported"));
        }
        let run_config = changes::apply(changes).map_err(Error::invalid)?;
        let message = if message.is_empty() { "Imported from -" } else { message };

        let input = archive.try_clone().map_err(|e| Error::io("open archive", e))?;
        let reader = layer_tar::decompressed(BufReader::new(input))
            .map_err(|e| Error::invalid(format!("invalid archive: {e}")))?;
        let mut hashing = HashingReader::new(reader);
        if let Err(CopyError::Read(e) | CopyError::Write(e)) = copy_split(&mut hashing, &mut io::sink()) {
            return Err(Error::invalid(format!("invalid archive: {e}")));
        }
        let (diff_id, _) = hashing.finish();
        archive.seek(SeekFrom::Start(0)).map_err(|e| Error::io("read archive", e))?;

        let lease = self.lease([diff_id.clone()]);
        let outcome =
            self.store_import(archive, &diff_id, &run_config, message, (os, arch, variant), reference.as_ref());
        drop(lease);
        if outcome.is_err() {
            if let Err(e) = self.gc() {
                tracing::warn!(error = %e, "cleaning up after a failed import failed");
            }
        }
        outcome
    }

    fn store_import(
        &self,
        archive: File,
        diff_id: &Digest,
        run_config: &changes::RunConfig,
        message: &str,
        (os, arch, variant): (&str, &str, Option<&str>),
        reference: Option<&Reference>,
    ) -> Result<Digest> {
        if !self.content.exists(diff_id) {
            let reader = layer_tar::decompressed(BufReader::new(archive))
                .map_err(|e| Error::invalid(format!("invalid archive: {e}")))?;
            self.ingest_layer(reader, diff_id)?;
        }
        if !self.snapshots.exists(diff_id) {
            self.unpack_blob(diff_id, diff_id, None)?;
        }
        let created = crate::timefmt::now_rfc3339();
        let docker_version = env!("CARGO_PKG_VERSION");
        let diff_ids = [diff_id.clone()];
        let config = ImportedConfig {
            architecture: arch,
            comment: message,
            config: run_config,
            container_config: changes::RunConfig::default(),
            created: &created,
            docker_version,
            history: [ImportedHistory { created: &created, comment: message }],
            os,
            rootfs: ImportedRootFs { typ: "layers", diff_ids: &diff_ids },
            variant,
        };
        let bytes = serde_json::to_vec(&config).map_err(|e| Error::internal(e.to_string()))?;
        let _lease = self.lease([Digest::of(&bytes)]);
        let id = self.content.write_blob(None, &bytes).map_err(|e| Error::internal(e.to_string()))?;
        let layers = self.layer_records(&diff_ids, None)?;
        let config: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| Error::internal(e.to_string()))?;
        let record = ImageRecord { id: id.clone(), layers, parent: None, last_tag_time: None, manifests: Vec::new() };
        self.store.put(Image { record, config }, &[])?;
        let idstr = id.to_string();
        if let Some(r) = reference {
            self.store.tag(&id, r)?;
            self.event("tag", &idstr, Some(&r.familiar()));
        }
        self.event("import", &idstr, Some(&idstr));
        Ok(id)
    }
}

// ---------------------------------------------------------------------------
// --change instructions

/// The Dockerfile instructions `docker import --change` and `docker commit
/// --change` accept, parsed and applied the way dockerd's builder does
/// (line continuation, comments, JSON and shell forms, `$VAR` expansion
/// against the ENV set so far), with its error messages.
pub(crate) mod changes {
    use std::collections::BTreeMap;

    use serde::Serialize;

    /// A container's run configuration as dockerd serializes
    /// `container.Config` into image configs: every field, in Go's order.
    #[derive(Debug, Clone, Default, PartialEq, Serialize)]
    #[serde(rename_all = "PascalCase")]
    pub(crate) struct RunConfig {
        pub hostname: String,
        pub domainname: String,
        pub user: String,
        pub attach_stdin: bool,
        pub attach_stdout: bool,
        pub attach_stderr: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub exposed_ports: Option<BTreeMap<String, Empty>>,
        pub tty: bool,
        pub open_stdin: bool,
        pub stdin_once: bool,
        pub env: Option<Vec<String>>,
        pub cmd: Option<Vec<String>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub healthcheck: Option<HealthConfig>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        pub args_escaped: bool,
        pub image: String,
        pub volumes: Option<BTreeMap<String, Empty>>,
        pub working_dir: String,
        pub entrypoint: Option<Vec<String>>,
        pub on_build: Option<Vec<String>>,
        pub labels: Option<BTreeMap<String, String>>,
        #[serde(skip_serializing_if = "String::is_empty")]
        pub stop_signal: String,
    }

    /// Go's `struct{}` in port and volume sets.
    #[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
    pub(crate) struct Empty {}

    /// `container.HealthConfig`; durations in nanoseconds.
    #[derive(Debug, Clone, Default, PartialEq, Serialize)]
    #[serde(rename_all = "PascalCase")]
    pub(crate) struct HealthConfig {
        #[serde(skip_serializing_if = "Vec::is_empty")]
        pub test: Vec<String>,
        #[serde(skip_serializing_if = "is_zero")]
        pub interval: i64,
        #[serde(skip_serializing_if = "is_zero")]
        pub timeout: i64,
        #[serde(skip_serializing_if = "is_zero")]
        pub start_period: i64,
        #[serde(skip_serializing_if = "is_zero")]
        pub retries: i64,
    }

    fn is_zero(v: &i64) -> bool {
        *v == 0
    }

    /// Instructions a change may use (dockerd's `validCommitCommands`).
    const ALLOWED: &[&str] = &[
        "cmd",
        "entrypoint",
        "healthcheck",
        "env",
        "expose",
        "label",
        "onbuild",
        "stopsignal",
        "user",
        "volume",
        "workdir",
    ];

    const NOT_STRING_ARRAY: &str = "when using JSON array syntax, arrays must be comprised of strings only";

    /// One parsed line.
    #[derive(Debug)]
    struct Node {
        /// Lowercase instruction.
        cmd: String,
        original: String,
        flags: Vec<String>,
        args: Vec<String>,
        /// The arguments were a JSON array.
        json: bool,
    }

    /// Applies `changes` to an empty config.
    pub(crate) fn apply(changes: &[String]) -> Result<RunConfig, String> {
        apply_to(RunConfig::default(), changes)
    }

    /// Applies `changes` to `cfg` (a container's config, for commit).
    pub(crate) fn apply_to(mut cfg: RunConfig, changes: &[String]) -> Result<RunConfig, String> {
        if changes.is_empty() {
            return Ok(cfg);
        }
        let lines = logical_lines(&changes.join("\n"));
        if lines.is_empty() {
            return Err("file with no instructions".to_owned());
        }
        let nodes = lines.iter().map(|l| parse_line(l)).collect::<Result<Vec<_>, _>>()?;
        if let Some(bad) = nodes.iter().find(|n| !ALLOWED.contains(&n.cmd.as_str())) {
            return Err(format!("{} is not a valid change command", bad.cmd));
        }
        let mut cmd_set = false;
        for n in &nodes {
            dispatch(&mut cfg, n, &mut cmd_set)?;
        }
        Ok(cfg)
    }

    /// Joins continuation lines and drops comments and blank lines.
    fn logical_lines(text: &str) -> Vec<String> {
        let trim_cr = |l: &str| l.strip_suffix('\r').unwrap_or(l).to_owned();
        let mut out = Vec::new();
        let mut lines = text.split('\n').map(trim_cr);
        while let Some(raw) = lines.next() {
            let line = raw.trim_start();
            if line.starts_with('#') {
                continue;
            }
            let (mut acc, mut done) = trim_continuation(line);
            if done && acc.trim().is_empty() {
                continue;
            }
            while !done {
                let Some(next) = lines.next() else { break };
                if next.trim_start().starts_with('#') || next.trim().is_empty() {
                    continue;
                }
                let (more, end) = trim_continuation(&next);
                acc.push_str(&more);
                done = end;
            }
            out.push(acc);
        }
        out
    }

    fn trim_continuation(line: &str) -> (String, bool) {
        match line.trim_end_matches([' ', '\t']).strip_suffix('\\') {
            Some(rest) => (rest.to_owned(), false),
            None => (line.to_owned(), true),
        }
    }

    fn is_ws(c: char) -> bool {
        matches!(c, ' ' | '\t' | '\x0b' | '\x0c' | '\r')
    }

    /// Splits at the first run of whitespace (Go's `reWhitespace.Split(s, 2)`).
    fn split_ws2(s: &str) -> (&str, Option<&str>) {
        match s.find(is_ws) {
            Some(i) => (&s[..i], Some(s[i..].trim_start_matches(is_ws))),
            None => (s, None),
        }
    }

    fn split_ws(s: &str) -> Vec<String> {
        s.split(is_ws).filter(|w| !w.is_empty()).map(str::to_owned).collect()
    }

    fn parse_line(line: &str) -> Result<Node, String> {
        let trimmed = line.trim();
        let (cmd, rest) = split_ws2(trimmed);
        let cmd = cmd.to_lowercase();
        let (flags, rest) = extract_flags(rest.unwrap_or(""));
        let (args, json) = match cmd.as_str() {
            "cmd" | "entrypoint" => maybe_json(rest)?,
            "env" => (name_val(rest, "ENV")?, false),
            "label" => (name_val(rest, "LABEL")?, false),
            "expose" => (split_ws(rest), false),
            "user" | "workdir" | "stopsignal" => {
                (if rest.is_empty() { Vec::new() } else { vec![rest.to_owned()] }, false)
            }
            "volume" => match json_array(rest)? {
                Some(list) => (list, true),
                None => (split_ws(rest), false),
            },
            "healthcheck" => {
                let (typ, tail) = split_ws2(rest);
                if typ.is_empty() {
                    (Vec::new(), false)
                } else {
                    let (mut cmd_args, json) = maybe_json(tail.unwrap_or(""))?;
                    cmd_args.insert(0, typ.to_owned());
                    (cmd_args, json)
                }
            }
            "onbuild" => {
                if !rest.is_empty() {
                    // The trigger is parsed like any line, so its errors show.
                    parse_line(rest)?;
                }
                (if rest.is_empty() { Vec::new() } else { vec![rest.to_owned()] }, false)
            }
            _ => (Vec::new(), false),
        };
        Ok(Node { cmd, original: line.to_owned(), flags, args, json })
    }

    /// Leading `--name[=value]` words (builder flags) and the rest.
    fn extract_flags(mut rest: &str) -> (Vec<String>, &str) {
        let mut flags = Vec::new();
        loop {
            rest = rest.trim_start_matches(char::is_whitespace);
            if !rest.starts_with("--") {
                return (flags, rest);
            }
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            let word = &rest[..end];
            rest = &rest[end..];
            if word == "--" {
                return (flags, rest.trim_start_matches(char::is_whitespace));
            }
            flags.push(word[2..].to_owned());
        }
    }

    /// `Some(list)` when `rest` is a JSON array of strings, `None` when it is
    /// not JSON; an error for an array with other elements.
    fn json_array(rest: &str) -> Result<Option<Vec<String>>, String> {
        let t = rest.trim_start();
        if !t.starts_with('[') {
            return Ok(None);
        }
        // Like Go's json.Decoder: the first value counts, the rest is ignored.
        match serde_json::Deserializer::from_str(t).into_iter::<serde_json::Value>().next() {
            Some(Ok(serde_json::Value::Array(items))) => items
                .into_iter()
                .map(|v| match v {
                    serde_json::Value::String(s) => Ok(s),
                    _ => Err(NOT_STRING_ARRAY.to_owned()),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            _ => Ok(None),
        }
    }

    fn maybe_json(rest: &str) -> Result<(Vec<String>, bool), String> {
        if rest.is_empty() {
            return Ok((Vec::new(), false));
        }
        Ok(match json_array(rest)? {
            Some(list) => (list, true),
            None => (vec![rest.to_owned()], false),
        })
    }

    /// `KEY name value` or `KEY name=value …`, as key/value pairs still
    /// quoted (quotes go at expansion).
    fn name_val(rest: &str, key: &str) -> Result<Vec<String>, String> {
        let words = parse_words(rest);
        if words.is_empty() {
            return Ok(Vec::new());
        }
        if !words[0].contains('=') {
            return match split_ws2(rest) {
                (k, Some(v)) if !v.is_empty() => Ok(vec![k.to_owned(), v.to_owned()]),
                _ => Err(format!("{key} must have two arguments")),
            };
        }
        let mut out = Vec::new();
        for w in words {
            let Some((k, v)) = w.split_once('=') else {
                return Err(format!("Syntax error - can't find = in {w:?}. Must be of the form: name=value"));
            };
            out.push(k.to_owned());
            out.push(v.to_owned());
        }
        Ok(out)
    }

    /// Splits on unquoted whitespace, keeping quotes and escapes in the
    /// words (the builder's `parseWords`).
    fn parse_words(rest: &str) -> Vec<String> {
        let mut words = Vec::new();
        let mut word = String::new();
        let mut quote: Option<char> = None;
        let mut blank_ok = false;
        let mut in_word = false;
        let mut chars = rest.chars().peekable();
        while let Some(c) = chars.next() {
            if let Some(q) = quote {
                if c == q {
                    quote = None;
                } else if c == '\\' && q != '\'' {
                    match chars.next() {
                        None => {
                            quote = None;
                            continue;
                        }
                        Some(n) => {
                            word.push(c);
                            word.push(n);
                            continue;
                        }
                    }
                }
                word.push(c);
                continue;
            }
            if c.is_whitespace() {
                if in_word && (blank_ok || !word.is_empty()) {
                    words.push(std::mem::take(&mut word));
                }
                word.clear();
                in_word = false;
                blank_ok = false;
                continue;
            }
            in_word = true;
            if c == '\'' || c == '"' {
                quote = Some(c);
                blank_ok = true;
            }
            if c == '\\' {
                match chars.next() {
                    None => continue,
                    Some(n) => {
                        word.push(c);
                        word.push(n);
                        continue;
                    }
                }
            }
            word.push(c);
        }
        if in_word && (blank_ok || !word.is_empty()) {
            words.push(word);
        }
        words
    }

    /// Shell-like word processing: quotes removed, escapes applied, `$VAR`,
    /// `${VAR}` and `${VAR:-x}`/`${VAR-x}`/`${VAR:+x}`/`${VAR+x}`/
    /// `${VAR:?x}`/`${VAR?x}` expanded from `env`.
    pub(crate) fn process_word(word: &str, env: &[String]) -> Result<String, String> {
        let mut lx = Lexer { chars: word.chars().collect(), pos: 0, env };
        lx.until(None)
    }

    struct Lexer<'a> {
        chars: Vec<char>,
        pos: usize,
        env: &'a [String],
    }

    impl Lexer<'_> {
        fn next(&mut self) -> Option<char> {
            let c = self.chars.get(self.pos).copied();
            if c.is_some() {
                self.pos += 1;
            }
            c
        }

        fn peek(&self) -> Option<char> {
            self.chars.get(self.pos).copied()
        }

        fn lookup(&self, name: &str) -> Option<String> {
            self.env.iter().rev().find_map(|e| match e.split_once('=') {
                Some((k, v)) if k == name => Some(v.to_owned()),
                None if e == name => Some(String::new()),
                _ => None,
            })
        }

        fn until(&mut self, stop: Option<char>) -> Result<String, String> {
            let mut out = String::new();
            loop {
                let Some(c) = self.next() else {
                    return match stop {
                        Some(_) => Err("missing '}' in substitution".to_owned()),
                        None => Ok(out),
                    };
                };
                if Some(c) == stop {
                    return Ok(out);
                }
                match c {
                    '\'' => loop {
                        match self.next() {
                            None => {
                                return Err(
                                    "unexpected end of statement while looking for matching single-quote".to_owned()
                                )
                            }
                            Some('\'') => break,
                            Some(ch) => out.push(ch),
                        }
                    },
                    '"' => loop {
                        match self.next() {
                            None => {
                                return Err(
                                    "unexpected end of statement while looking for matching double-quote".to_owned()
                                )
                            }
                            Some('"') => break,
                            Some('$') => out.push_str(&self.dollar()?),
                            Some('\\') => match self.peek() {
                                None => {}
                                Some(n @ ('"' | '$' | '\\')) => {
                                    self.pos += 1;
                                    out.push(n);
                                }
                                Some(_) => out.push('\\'),
                            },
                            Some(ch) => out.push(ch),
                        }
                    },
                    '\\' => {
                        if let Some(n) = self.next() {
                            out.push(n);
                        }
                    }
                    '$' => out.push_str(&self.dollar()?),
                    c => out.push(c),
                }
            }
        }

        fn name(&mut self) -> String {
            let mut name = String::new();
            while let Some(c) = self.peek().filter(|c| c.is_ascii_alphanumeric() || *c == '_') {
                name.push(c);
                self.pos += 1;
            }
            name
        }

        fn dollar(&mut self) -> Result<String, String> {
            match self.peek() {
                Some('{') => {
                    self.pos += 1;
                    let name = self.name();
                    let value = self.lookup(&name);
                    let (colon, op) = match self.next() {
                        Some('}') => return Ok(value.unwrap_or_default()),
                        Some(':') => (true, self.next()),
                        Some(op @ ('-' | '+' | '?')) => (false, Some(op)),
                        _ => return Err("missing ':' in substitution".to_owned()),
                    };
                    let word = self.until(Some('}'))?;
                    let unset = if colon { value.as_deref().unwrap_or("").is_empty() } else { value.is_none() };
                    match op {
                        Some('-') => Ok(if unset { word } else { value.unwrap_or_default() }),
                        Some('+') => Ok(if unset { String::new() } else { word }),
                        Some('?') if unset => Err(if word.is_empty() {
                            format!("{name}: is not allowed to be unset")
                        } else {
                            format!("{name}: {word}")
                        }),
                        Some('?') => Ok(value.unwrap_or_default()),
                        Some(op) => Err(format!("unsupported modifier ({op}) in substitution")),
                        None => Err("missing ':' in substitution".to_owned()),
                    }
                }
                Some(c) if c.is_ascii_alphanumeric() || c == '_' => {
                    let name = self.name();
                    Ok(self.lookup(&name).unwrap_or_default())
                }
                _ => Ok("$".to_owned()),
            }
        }
    }

    fn reject_flags(n: &Node) -> Result<(), String> {
        match n.flags.first() {
            Some(f) => Err(format!("Unknown flag: {}", f.split('=').next().unwrap_or(f))),
            None => Ok(()),
        }
    }

    fn exactly_one<'a>(n: &'a Node, name: &str) -> Result<&'a str, String> {
        match n.args.as_slice() {
            [one] => Ok(one),
            _ => Err(format!("{name} requires exactly one argument")),
        }
    }

    /// A CMD or ENTRYPOINT: JSON form as is, shell form behind `/bin/sh -c`.
    fn command_line(n: &Node) -> Vec<String> {
        if n.args.is_empty() || n.json {
            return n.args.clone();
        }
        let mut cmd = vec!["/bin/sh".to_owned(), "-c".to_owned()];
        cmd.extend(n.args.iter().cloned());
        cmd
    }

    fn pairs(n: &Node, name: &str) -> Result<Vec<(String, String)>, String> {
        if n.args.is_empty() {
            return Err(format!("{name} requires at least one argument"));
        }
        let mut out = Vec::new();
        for kv in n.args.chunks(2) {
            let [k, v] = kv else { return Err(format!("Bad input to {name}, too many arguments")) };
            if k.is_empty() {
                return Err(format!("{name} names can not be blank"));
            }
            out.push((k.clone(), v.clone()));
        }
        Ok(out)
    }

    fn dispatch(cfg: &mut RunConfig, n: &Node, cmd_set: &mut bool) -> Result<(), String> {
        if n.cmd != "healthcheck" {
            reject_flags(n)?;
        }
        let env = cfg.env.clone().unwrap_or_default();
        let expand = |w: &str| process_word(w, &env);
        match n.cmd.as_str() {
            "cmd" => {
                cfg.cmd = Some(command_line(n));
                if !n.args.is_empty() {
                    *cmd_set = true;
                }
            }
            "entrypoint" => {
                cfg.entrypoint = Some(command_line(n));
                if !*cmd_set {
                    cfg.cmd = None;
                }
            }
            "env" => {
                for (k, v) in pairs(n, "ENV")? {
                    let (k, v) = (expand(&k)?, expand(&v)?);
                    let list = cfg.env.get_or_insert_with(Vec::new);
                    let var = format!("{k}={v}");
                    match list.iter_mut().find(|e| e.split('=').next() == Some(k.as_str())) {
                        Some(e) => *e = var,
                        None => list.push(var),
                    }
                }
            }
            "label" => {
                for (k, v) in pairs(n, "LABEL")? {
                    let (k, v) = (expand(&k)?, expand(&v)?);
                    cfg.labels.get_or_insert_with(BTreeMap::new).insert(k, v);
                }
            }
            "expose" => {
                if n.args.is_empty() {
                    return Err("EXPOSE requires at least one argument".to_owned());
                }
                let mut specs = n.args.clone();
                specs.sort();
                for s in specs {
                    for word in split_ws(&expand(&s)?) {
                        for port in parse_port_spec(&word)? {
                            cfg.exposed_ports.get_or_insert_with(BTreeMap::new).insert(port, Empty {});
                        }
                    }
                }
            }
            "user" => cfg.user = expand(exactly_one(n, "USER")?)?,
            "workdir" => {
                let path = expand(exactly_one(n, "WORKDIR")?)?;
                cfg.working_dir = normalize_workdir(&cfg.working_dir, &path)?;
            }
            "volume" => {
                if n.args.is_empty() {
                    return Err("VOLUME requires at least one argument".to_owned());
                }
                for v in &n.args {
                    let v = expand(v.trim())?;
                    if v.is_empty() {
                        return Err("VOLUME specified can not be an empty string".to_owned());
                    }
                    cfg.volumes.get_or_insert_with(BTreeMap::new).insert(v, Empty {});
                }
            }
            "stopsignal" => {
                let sig = expand(exactly_one(n, "STOPSIGNAL")?)?;
                if !valid_signal(&sig) {
                    return Err(format!("Invalid signal: {sig}"));
                }
                cfg.stop_signal = sig;
            }
            "onbuild" => {
                let Some(expr) = n.args.first() else {
                    return Err("ONBUILD requires at least one argument".to_owned());
                };
                let trigger = split_ws2(expr.trim()).0.to_uppercase();
                match trigger.as_str() {
                    "ONBUILD" => return Err("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed".to_owned()),
                    "MAINTAINER" | "FROM" => return Err(format!("{trigger} isn't allowed as an ONBUILD trigger")),
                    _ => {}
                }
                let original = n.original.trim_start();
                let expression = original.get(n.cmd.len()..).unwrap_or("").trim_start();
                cfg.on_build.get_or_insert_with(Vec::new).push(expression.to_owned());
            }
            "healthcheck" => cfg.healthcheck = Some(healthcheck(n)?),
            other => return Err(format!("{other} is not a valid change command")),
        }
        Ok(())
    }

    fn healthcheck(n: &Node) -> Result<HealthConfig, String> {
        let Some(typ) = n.args.first() else {
            return Err("HEALTHCHECK requires at least one argument".to_owned());
        };
        let typ = typ.to_uppercase();
        let rest = &n.args[1..];
        if typ == "NONE" {
            if !rest.is_empty() {
                return Err("HEALTHCHECK NONE takes no arguments".to_owned());
            }
            return Ok(HealthConfig { test: vec![typ], ..HealthConfig::default() });
        }
        let mut values: BTreeMap<&str, String> = BTreeMap::new();
        for f in &n.flags {
            let (name, value) = match f.split_once('=') {
                Some((name, value)) => (name, value),
                None => (f.as_str(), ""),
            };
            let known = ["interval", "timeout", "start-period", "retries"];
            let Some(name) = known.iter().find(|k| **k == name) else {
                return Err(format!("Unknown flag: {name}"));
            };
            if !f.contains('=') {
                return Err(format!("Missing a value on flag: {name}"));
            }
            if values.insert(name, value.to_owned()).is_some() {
                return Err(format!("Duplicate flag specified: {name}"));
            }
        }
        let mut h = HealthConfig::default();
        match typ.as_str() {
            "CMD" => {
                if rest.is_empty() {
                    return Err("Missing command after HEALTHCHECK CMD".to_owned());
                }
                h.test.push(if n.json { "CMD".to_owned() } else { "CMD-SHELL".to_owned() });
                h.test.extend(rest.iter().cloned());
            }
            _ => return Err(format!("Unknown type {typ:?} in HEALTHCHECK (try CMD)")),
        }
        let interval = |flag: &str| -> Result<i64, String> {
            match values.get(flag).filter(|v| !v.is_empty()) {
                None => Ok(0),
                Some(v) => {
                    let d = parse_go_duration(v)?;
                    if d < 1_000_000 {
                        return Err(format!("Interval {flag:?} cannot be less than 1ms"));
                    }
                    Ok(d)
                }
            }
        };
        h.interval = interval("interval")?;
        h.timeout = interval("timeout")?;
        h.start_period = interval("start-period")?;
        if let Some(v) = values.get("retries").filter(|v| !v.is_empty()) {
            let r: i32 = v.parse().map_err(|_| format!("strconv.ParseInt: parsing {v:?}: invalid syntax"))?;
            if r < 1 {
                return Err(format!("--retries must be at least 1 (not {r})"));
            }
            h.retries = i64::from(r);
        }
        Ok(h)
    }

    /// A Go duration (`1m30s`, `1.5h`, `250ms`) in nanoseconds.
    fn parse_go_duration(s: &str) -> Result<i64, String> {
        let invalid = || format!("time: invalid duration {s:?}");
        let (neg, mut rest) = match s.strip_prefix('-') {
            Some(r) => (true, r),
            None => (false, s.strip_prefix('+').unwrap_or(s)),
        };
        if rest == "0" {
            return Ok(0);
        }
        if rest.is_empty() {
            return Err(invalid());
        }
        let mut total: u128 = 0;
        while !rest.is_empty() {
            let int_end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
            let (int, after) = rest.split_at(int_end);
            rest = after;
            let mut frac = "";
            if let Some(r) = rest.strip_prefix('.') {
                let end = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
                frac = &r[..end];
                rest = &r[end..];
            }
            if int.is_empty() && frac.is_empty() {
                return Err(invalid());
            }
            let unit_end = rest.find(|c: char| c == '.' || c.is_ascii_digit()).unwrap_or(rest.len());
            let (unit, after) = rest.split_at(unit_end);
            rest = after;
            let scale: u128 = match unit {
                "" => return Err(format!("time: missing unit in duration {s:?}")),
                "ns" => 1,
                "us" | "µs" | "μs" => 1_000,
                "ms" => 1_000_000,
                "s" => 1_000_000_000,
                "m" => 60_000_000_000,
                "h" => 3_600_000_000_000,
                _ => return Err(format!("time: unknown unit {unit:?} in duration {s:?}")),
            };
            let whole: u128 = if int.is_empty() { 0 } else { int.parse().map_err(|_| invalid())? };
            total = total.checked_add(whole.checked_mul(scale).ok_or_else(invalid)?).ok_or_else(invalid)?;
            if !frac.is_empty() {
                let frac = &frac[..frac.len().min(20)];
                let f: u128 = frac.parse().map_err(|_| invalid())?;
                total += f * scale / 10u128.pow(frac.len() as u32);
            }
            if total > i64::MAX as u128 {
                return Err(invalid());
            }
        }
        let total = total as i64;
        Ok(if neg { -total } else { total })
    }

    /// dockerd's `signal.ParseSignal` on Linux: a number, or a name with or
    /// without `SIG`.
    fn valid_signal(s: &str) -> bool {
        if let Ok(n) = s.parse::<i64>() {
            return n != 0;
        }
        const NAMES: &[&str] = &[
            "ABRT", "ALRM", "BUS", "CHLD", "CLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "IOT", "KILL", "PIPE",
            "POLL", "PROF", "PWR", "QUIT", "SEGV", "STKFLT", "STOP", "SYS", "TERM", "TRAP", "TSTP", "TTIN", "TTOU",
            "URG", "USR1", "USR2", "VTALRM", "WINCH", "XCPU", "XFSZ", "RTMIN", "RTMAX",
        ];
        let upper = s.to_uppercase();
        let name = upper.strip_prefix("SIG").unwrap_or(&upper);
        if NAMES.contains(&name) {
            return true;
        }
        let offset = |prefix: &str, sign: char| {
            name.strip_prefix(prefix)
                .and_then(|r| r.strip_prefix(sign))
                .and_then(|n| n.parse::<u32>().ok())
                .is_some_and(|n| (1..=15).contains(&n) || (sign == '-' && n == 14))
        };
        offset("RTMIN", '+') || offset("RTMAX", '-')
    }

    /// EXPOSE `80`, `80/udp`, `8000-8010/tcp` (an `ip:host:` prefix is
    /// ignored, as only the container port matters).
    fn parse_port_spec(spec: &str) -> Result<Vec<String>, String> {
        let (raw, proto) = match spec.split_once('/') {
            Some((p, proto)) if !proto.is_empty() => (p, proto.to_lowercase()),
            Some((p, _)) => (p, "tcp".to_owned()),
            None => (spec, "tcp".to_owned()),
        };
        if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
            return Err(format!("invalid proto: {proto}"));
        }
        let container = raw.rsplit(':').next().unwrap_or(raw);
        if container.is_empty() {
            return Err(format!("no port specified: {spec}<empty>"));
        }
        let bad = || format!("invalid containerPort: {container}");
        let (start, end) = match container.split_once('-') {
            Some((a, b)) => (a.parse::<u16>().map_err(|_| bad())?, b.parse::<u16>().map_err(|_| bad())?),
            None => {
                let p = container.parse::<u16>().map_err(|_| bad())?;
                (p, p)
            }
        };
        if end < start {
            return Err(bad());
        }
        Ok((start..=end).map(|p| format!("{p}/{proto}")).collect())
    }

    /// WORKDIR: a relative path is taken from the current one.
    fn normalize_workdir(current: &str, requested: &str) -> Result<String, String> {
        if requested.is_empty() {
            return Err("cannot normalize nothing".to_owned());
        }
        if requested.starts_with('/') {
            return Ok(requested.to_owned());
        }
        let mut parts: Vec<&str> = Vec::new();
        for c in current.split('/').chain(requested.split('/')) {
            match c {
                "" | "." => {}
                ".." => {
                    parts.pop();
                }
                c => parts.push(c),
            }
        }
        Ok(format!("/{}", parts.join("/")))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn apply1(changes: &[&str]) -> Result<RunConfig, String> {
            apply(&changes.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        }

        #[test]
        fn shell_form_cmd_runs_under_sh() {
            let c = apply1(&["CMD echo hi there"]).unwrap();
            assert_eq!(c.cmd, Some(vec!["/bin/sh".into(), "-c".into(), "echo hi there".into()]));
        }

        #[test]
        fn json_form_entrypoint_is_kept_and_clears_unset_cmd() {
            let c = apply1(&[r#"ENTRYPOINT ["/app", "--flag"]"#]).unwrap();
            assert_eq!(c.entrypoint, Some(vec!["/app".into(), "--flag".into()]));
            assert_eq!(c.cmd, None);
            let c = apply1(&[r#"CMD ["x"]"#, "ENTRYPOINT /app"]).unwrap();
            assert_eq!(c.cmd, Some(vec!["x".into()]));
            assert_eq!(c.entrypoint, Some(vec!["/bin/sh".into(), "-c".into(), "/app".into()]));
        }

        #[test]
        fn env_expands_earlier_values_and_replaces_keys() {
            let c = apply1(&["ENV A=1 B=two", r#"ENV B="$A and ${A:-x}" C=${NOPE:-dflt}"#, "ENV LEGACY hello world"])
                .unwrap();
            assert_eq!(
                c.env,
                Some(vec!["A=1".into(), "B=1 and 1".into(), "C=dflt".into(), "LEGACY=hello world".into()])
            );
        }

        #[test]
        fn label_expose_volume_workdir_user_stopsignal_apply() {
            let c = apply1(&[
                r#"LABEL "com.example.name"="a b" other=x"#,
                "EXPOSE 80 53/udp 8000-8001",
                r#"VOLUME ["/data", "/logs"]"#,
                "WORKDIR /srv",
                "WORKDIR app/../web",
                "USER nobody:nogroup",
                "STOPSIGNAL SIGQUIT",
            ])
            .unwrap();
            let labels = c.labels.unwrap();
            assert_eq!(labels["com.example.name"], "a b");
            assert_eq!(labels["other"], "x");
            let ports: Vec<_> = c.exposed_ports.unwrap().into_keys().collect();
            assert_eq!(ports, ["53/udp", "80/tcp", "8000/tcp", "8001/tcp"]);
            let vols: Vec<_> = c.volumes.unwrap().into_keys().collect();
            assert_eq!(vols, ["/data", "/logs"]);
            assert_eq!(c.working_dir, "/srv/web");
            assert_eq!(c.user, "nobody:nogroup");
            assert_eq!(c.stop_signal, "SIGQUIT");
        }

        #[test]
        fn healthcheck_and_onbuild_parse_like_dockerd() {
            let c =
                apply1(&["HEALTHCHECK --interval=5s --retries=3 CMD curl -f http://localhost/", "ONBUILD RUN make"])
                    .unwrap();
            let h = c.healthcheck.unwrap();
            assert_eq!(h.test, ["CMD-SHELL", "curl -f http://localhost/"]);
            assert_eq!(h.interval, 5_000_000_000);
            assert_eq!(h.retries, 3);
            assert_eq!(c.on_build, Some(vec!["RUN make".into()]));
            let c = apply1(&["HEALTHCHECK NONE"]).unwrap();
            assert_eq!(c.healthcheck.unwrap().test, ["NONE"]);
        }

        #[test]
        fn continuation_lines_and_comments_are_handled() {
            let c = apply1(&["# comment", "ENV A=1 \\", "  B=2"]).unwrap();
            assert_eq!(c.env, Some(vec!["A=1".into(), "B=2".into()]));
        }

        #[test]
        fn invalid_changes_report_dockerd_messages() {
            let err = |c: &[&str]| apply1(c).unwrap_err();
            assert_eq!(err(&["RUN echo hi"]), "run is not a valid change command");
            assert_eq!(err(&["FOO bar"]), "foo is not a valid change command");
            assert_eq!(err(&["ENV"]), "ENV requires at least one argument");
            assert_eq!(err(&["ENV A"]), "ENV must have two arguments");
            assert_eq!(err(&["ENV A=1 B"]), r#"Syntax error - can't find = in "B". Must be of the form: name=value"#);
            assert_eq!(err(&["USER"]), "USER requires exactly one argument");
            assert_eq!(err(&["STOPSIGNAL SIGFOO"]), "Invalid signal: SIGFOO");
            assert_eq!(err(&["EXPOSE 80/xyz"]), "invalid proto: xyz");
            assert_eq!(err(&[r#"CMD ["a", 1]"#]), NOT_STRING_ARRAY);
            assert_eq!(err(&["ONBUILD ONBUILD RUN x"]), "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed");
            assert_eq!(err(&["USER --chown=1 x"]), "Unknown flag: chown");
            assert_eq!(err(&["HEALTHCHECK --interval=0s CMD true"]), r#"Interval "interval" cannot be less than 1ms"#);
            assert_eq!(err(&[""]), "file with no instructions");
        }

        #[test]
        fn empty_changes_leave_the_zero_config() {
            let json = serde_json::to_string(&apply1(&[]).unwrap()).unwrap();
            assert_eq!(
                json,
                r#"{"Hostname":"","Domainname":"","User":"","AttachStdin":false,"AttachStdout":false,"AttachStderr":false,"Tty":false,"OpenStdin":false,"StdinOnce":false,"Env":null,"Cmd":null,"Image":"","Volumes":null,"WorkingDir":"","Entrypoint":null,"OnBuild":null,"Labels":null}"#
            );
        }

        #[test]
        fn go_durations_parse() {
            assert_eq!(parse_go_duration("1m30s"), Ok(90_000_000_000));
            assert_eq!(parse_go_duration("1.5h"), Ok(5_400_000_000_000));
            assert_eq!(parse_go_duration("250ms"), Ok(250_000_000));
            assert!(parse_go_duration("5").is_err());
            assert!(parse_go_duration("abc").is_err());
        }
    }
}

// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::content::ContentStore;
    use crate::events::EventBus;
    use crate::images::store::ImageStore;
    use crate::paths::Paths;
    use crate::registry::{RegistryClient, RegistryConfig};
    use crate::snapshots::Snapshots;

    /// One engine's image service on a fresh data root.
    struct Engine {
        _dir: tempfile::TempDir,
        paths: Paths,
        images: Images,
    }

    fn engine() -> Engine {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path().join("data"), dir.path().join("exec"));
        std::fs::create_dir_all(paths.tmp_dir()).unwrap();
        let content = ContentStore::open(&paths).unwrap();
        let snapshots = Snapshots::open(&paths).unwrap();
        let store = ImageStore::open(&paths, |id| content.read(id).ok(), |c| snapshots.exists(c)).unwrap();
        let registry = RegistryClient::new(RegistryConfig::default()).unwrap();
        let images = Images::new(store, content, snapshots, registry, Arc::new(EventBus::new()));
        Engine { _dir: dir, paths, images }
    }

    fn require_root() -> bool {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipping: needs root (layers keep their owners)");
            return false;
        }
        true
    }

    /// A layer tar with the given files (and their parent directories).
    fn layer(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut dirs = HashSet::new();
        for (name, data) in files {
            let mut parent = String::new();
            for c in name.split('/').collect::<Vec<_>>().split_last().map(|(_, d)| d.to_vec()).unwrap_or_default() {
                parent.push_str(c);
                parent.push('/');
                if dirs.insert(parent.clone()) {
                    let mut h = tar::Header::new_ustar();
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o755);
                    h.set_mtime(1_600_000_000);
                    h.set_size(0);
                    b.append_data(&mut h, &parent, io::empty()).unwrap();
                }
            }
            let mut h = tar::Header::new_ustar();
            h.set_mode(0o644);
            h.set_mtime(1_600_000_000);
            h.set_size(data.len() as u64);
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn config_json(diff_ids: &[Digest], created: &str, cmd: &str) -> Vec<u8> {
        let history: Vec<_> =
            diff_ids.iter().map(|_| serde_json::json!({"created": created, "created_by": cmd})).collect();
        serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "created": created,
            "config": {"Cmd": [cmd]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": history,
        }))
        .unwrap()
    }

    /// Stores an image the way a pull does: gzip blobs (unless `blob` is
    /// false for a layer), snapshots, config, tags.
    fn add_image(e: &Engine, tars: &[(Vec<u8>, bool)], tags: &[&str], cmd: &str) -> Digest {
        let images = &e.images;
        let diff_ids: Vec<Digest> = tars.iter().map(|(t, _)| Digest::of(t)).collect();
        let chains = chain_ids(&diff_ids);
        let mut layers = Vec::new();
        for (i, ((t, keep_blob), chain)) in tars.iter().zip(&chains).enumerate() {
            let blob = keep_blob.then(|| {
                let gz = gzip(t);
                let digest = images.content.write_blob(None, &gz).unwrap();
                BlobRef { digest, media_type: media_type::OCI_LAYER_GZIP.into(), size: gz.len() as u64 }
            });
            if !images.snapshots.exists(chain) {
                let pending = images.snapshots.prepare().unwrap();
                layer_tar::apply_layer(&t[..], &pending.fs_dir(), &ApplyOptions::default()).unwrap();
                let size = dir_size(&pending.fs_dir()).unwrap();
                let parent = i.checked_sub(1).map(|p| chains[p].clone());
                images
                    .snapshots
                    .commit(
                        pending,
                        &SnapshotMeta { chain_id: chain.clone(), diff_id: diff_ids[i].clone(), parent, size },
                    )
                    .unwrap();
            }
            let size = images.snapshots.meta(chain).unwrap().size;
            layers.push(LayerRecord { diff_id: diff_ids[i].clone(), chain_id: chain.clone(), blob, size });
        }
        let config = config_json(&diff_ids, "2024-01-02T03:04:05.123456789Z", cmd);
        let id = images.content.write_blob(None, &config).unwrap();
        let refs: Vec<Reference> = tags.iter().map(|t| Reference::parse(t).unwrap().with_default_tag()).collect();
        let record = ImageRecord { id: id.clone(), layers, parent: None, last_tag_time: None, manifests: Vec::new() };
        images.store.put(Image { record, config: serde_json::from_slice(&config).unwrap() }, &refs).unwrap();
        id
    }

    /// The members of a tar, by name.
    fn members(archive: &[u8]) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        let mut a = tar::Archive::new(archive);
        for entry in a.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            out.insert(name, data);
        }
        out
    }

    /// A tar of `(name, data)` members, as an archive to load.
    fn archive(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            // `append_data` refuses `..`; write the name by hand.
            let bytes = name.as_bytes();
            h.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    /// The spooled request body, as the handler hands it over.
    fn upload(e: &Engine, data: &[u8]) -> File {
        let mut f = tempfile::tempfile_in(e.paths.tmp_dir()).unwrap();
        f.write_all(data).unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        f
    }

    fn load(e: &Engine, data: &[u8]) -> (Result<()>, Vec<String>) {
        let file = upload(e, data);
        let mut lines = Vec::new();
        let r = e.images.load(file, false, &mut |l| lines.push(l));
        (r, lines)
    }

    fn assert_nothing_stored(e: &Engine) {
        assert!(e.images.store.list().is_empty(), "an image was stored");
        assert!(e.images.content.list().unwrap().is_empty(), "a blob was stored");
        assert!(e.images.snapshots.list().unwrap().is_empty(), "a snapshot was stored");
    }

    #[test]
    fn save_then_load_into_another_engine_keeps_ids_tags_and_diff_ids() {
        if !require_root() {
            return;
        }
        let a = engine();
        let base = layer(&[("etc/os-release", b"NAME=test\n"), ("bin/sh", b"#!fake shell\n")]);
        let app = layer(&[("app/run", b"echo app\n")]);
        let base_id = add_image(&a, &[(base.clone(), true)], &["busybox:latest", "busybox:1.36"], "sh");
        let app_id = add_image(&a, &[(base.clone(), true), (app.clone(), true)], &["example.com/team/app:v1"], "run");

        let mut out = Vec::new();
        a.images.save(&["busybox:latest".into(), app_id.to_string()], &mut out).unwrap();

        // The layout: an OCI layout plus manifest.json, layers uncompressed.
        let m = members(&out);
        assert_eq!(m["oci-layout"], OCI_LAYOUT);
        for tar in [&base, &app] {
            assert_eq!(m[&blob_path(&Digest::of(tar))], *tar);
        }
        let manifest: Vec<serde_json::Value> = serde_json::from_slice(&m["manifest.json"]).unwrap();
        assert_eq!(manifest[0]["Config"], blob_path(&base_id));
        assert_eq!(manifest[0]["RepoTags"], serde_json::json!(["busybox:latest"]));
        assert_eq!(manifest[1]["RepoTags"], serde_json::Value::Null, "saved by ID: untagged");
        assert_eq!(
            manifest[1]["Layers"],
            serde_json::json!([blob_path(&Digest::of(&base)), blob_path(&Digest::of(&app))])
        );
        let repos: serde_json::Value = serde_json::from_slice(&m["repositories"]).unwrap();
        assert_eq!(repos["busybox"]["latest"], Digest::of(&base).hex());
        let index: OciIndex = serde_json::from_slice(&m["index.json"]).unwrap();
        assert_eq!(index.manifests.len(), 2);
        assert_eq!(index.manifests[0].annotations[ANNOTATION_IMAGE_NAME], "docker.io/library/busybox:latest");
        assert_eq!(index.manifests[0].annotations[ANNOTATION_REF_NAME], "latest");
        for d in &index.manifests {
            let om: OciManifest = serde_json::from_slice(&m[&blob_path(&d.digest)]).unwrap();
            assert_eq!(Digest::of(&m[&blob_path(&om.config.digest)]), om.config.digest);
            for l in &om.layers {
                assert_eq!(l.media_type, media_type::OCI_LAYER_TAR);
                assert_eq!(Digest::of(&m[&blob_path(&l.digest)]), l.digest);
                assert_eq!(m[&blob_path(&l.digest)].len() as u64, l.size);
            }
        }

        let b = engine();
        let (r, lines) = load(&b, &out);
        r.unwrap();
        assert_eq!(
            lines,
            [
                "Loaded image: busybox:latest",
                format!("Loaded image ID: sha256:{}", base_id.hex()).as_str(),
                format!("Loaded image ID: {app_id}").as_str()
            ]
        );
        let loaded = b.images.store.find("busybox:latest").unwrap().image;
        assert_eq!(loaded.id(), &base_id);
        assert!(b.images.store.find("busybox:1.36").is_err(), "only the named tag is saved");
        let loaded_app = b.images.store.get(&app_id).unwrap();
        let diff_ids: Vec<Digest> = loaded_app.record.layers.iter().map(|l| l.diff_id.clone()).collect();
        assert_eq!(diff_ids, [Digest::of(&base), Digest::of(&app)]);
        for l in &loaded_app.record.layers {
            let blob = l.blob.as_ref().unwrap();
            assert_eq!(blob.digest, l.diff_id, "layers are stored uncompressed");
            assert!(b.images.content.exists(&l.diff_id));
            assert!(b.images.snapshots.exists(&l.chain_id));
            assert!(l.size > 0);
        }
        let top = b.images.snapshots.fs_dir(&loaded_app.record.layers[1].chain_id);
        assert_eq!(std::fs::read(top.join("app/run")).unwrap(), b"echo app\n");

        // And B saves what A saved, byte for byte.
        let mut again = Vec::new();
        b.images.save(&["busybox:latest".into(), app_id.to_string()], &mut again).unwrap();
        assert_eq!(again, out);
    }

    #[test]
    fn save_of_a_bare_repository_includes_all_its_tags() {
        if !require_root() {
            return;
        }
        let a = engine();
        add_image(&a, &[(layer(&[("f", b"1")]), true)], &["busybox:latest", "busybox:1.36"], "sh");
        let mut out = Vec::new();
        a.images.save(&["busybox".into()], &mut out).unwrap();
        let manifest: Vec<ManifestEntry> = serde_json::from_slice(&members(&out)["manifest.json"]).unwrap();
        assert_eq!(manifest[0].repo_tags, Some(vec!["busybox:1.36".into(), "busybox:latest".into()]));
    }

    #[test]
    fn save_of_an_unknown_name_is_not_found() {
        let a = engine();
        let err = a.images.save(&["nosuch:latest".into()], &mut Vec::new()).unwrap_err();
        assert_eq!(err.kind, Kind::NotFound);
        assert_eq!(err.message, "No such image: nosuch:latest");
    }

    #[test]
    fn save_rebuilds_a_layer_without_blob_from_its_snapshot() {
        if !require_root() {
            return;
        }
        let a = engine();
        // A tar as the packer writes it, so that rebuilding it is exact.
        let src = tempfile::tempdir().unwrap();
        std::fs::create_dir(src.path().join("etc")).unwrap();
        std::fs::write(src.path().join("etc/hostname"), b"box\n").unwrap();
        let mut packed = Vec::new();
        layer_tar::write_tar_of_dir(src.path(), &mut packed, &PackOptions { overlay_whiteouts: true }).unwrap();
        let id = add_image(&a, &[(packed.clone(), false)], &["nob:latest"], "sh");
        let mut out = Vec::new();
        a.images.save(&["nob:latest".into()], &mut out).unwrap();
        assert_eq!(members(&out)[&blob_path(&Digest::of(&packed))], packed);

        // A snapshot changed since: the rebuilt tar cannot match.
        let chain = a.images.store.get(&id).unwrap().record.layers[0].chain_id.clone();
        std::fs::write(a.images.snapshots.fs_dir(&chain).join("extra"), b"x").unwrap();
        let err = a.images.save(&["nob:latest".into()], &mut Vec::new()).unwrap_err();
        assert!(err.message.contains("does not match the diff ID"), "{}", err.message);
    }

    #[test]
    fn load_of_dockerd_20_10_layout_with_symlinked_layer_works() {
        if !require_root() {
            return;
        }
        let base = layer(&[("hello", b"world")]);
        let d = Digest::of(&base);
        // Two layers with the same content; dockerd ≤ 24 symlinks the second.
        let config = config_json(&[d.clone(), d.clone()], "2021-01-01T00:00:00Z", "sh");
        let id = Digest::of(&config);
        let manifest = format!(
            r#"[{{"Config":"{}.json","RepoTags":["old:1"],"Layers":["aaa/layer.tar","bbb/layer.tar"]}}]"#,
            id.hex()
        );
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |name: &str, data: &[u8]| {
            let mut h = tar::Header::new_ustar();
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            b.append_data(&mut h, name, data).unwrap();
        };
        add("aaa/layer.tar", &base);
        add("aaa/VERSION", b"1.0");
        add(&format!("{}.json", id.hex()), &config);
        add("manifest.json", manifest.as_bytes());
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "bbb/layer.tar", "../aaa/layer.tar").unwrap();
        let data = b.into_inner().unwrap();

        let e = engine();
        let (r, lines) = load(&e, &data);
        r.unwrap();
        assert_eq!(lines, ["Loaded image: old:1"]);
        let img = e.images.store.find("old:1").unwrap().image;
        assert_eq!(img.id(), &id);
        assert_eq!(img.record.layers.len(), 2);
        assert!(e.images.snapshots.exists(&img.record.layers[1].chain_id));
    }

    #[test]
    fn load_of_gzip_compressed_archive_and_tag_move_message() {
        if !require_root() {
            return;
        }
        let a = engine();
        let id = add_image(&a, &[(layer(&[("v", b"2")]), true)], &["busybox:latest"], "new");
        let mut out = Vec::new();
        a.images.save(&["busybox:latest".into()], &mut out).unwrap();

        let b = engine();
        let old = add_image(&b, &[(layer(&[("v", b"1")]), true)], &["busybox:latest"], "old");
        let (r, lines) = load(&b, &gzip(&out));
        r.unwrap();
        assert_eq!(
            lines,
            [
                format!("The image busybox:latest already exists, renaming the old one with ID {old} to empty string"),
                "Loaded image: busybox:latest".to_owned(),
            ]
        );
        assert_eq!(b.images.store.find("busybox:latest").unwrap().image.id(), &id);
    }

    #[test]
    fn load_of_oci_layout_without_manifest_json_uses_index_names() {
        if !require_root() {
            return;
        }
        let a = engine();
        let id = add_image(&a, &[(layer(&[("f", b"x")]), true)], &["quay.io/org/tool:2"], "sh");
        let mut out = Vec::new();
        a.images.save(&["quay.io/org/tool:2".into()], &mut out).unwrap();
        let kept: Vec<(String, Vec<u8>)> = members(&out)
            .into_iter()
            .filter(|(n, _)| n != "manifest.json" && n != "repositories" && !n.ends_with('/'))
            .collect();
        let refs: Vec<(&str, &[u8])> = kept.iter().map(|(n, d)| (n.as_str(), d.as_slice())).collect();

        let b = engine();
        let (r, lines) = load(&b, &archive(&refs));
        r.unwrap();
        assert_eq!(lines, ["Loaded image: quay.io/org/tool:2"]);
        assert_eq!(b.images.store.find("quay.io/org/tool:2").unwrap().image.id(), &id);
    }

    #[test]
    fn load_refuses_members_outside_the_archive_and_stores_nothing() {
        let tar = layer(&[("f", b"x")]);
        let config = config_json(&[Digest::of(&tar)], "2021-01-01T00:00:00Z", "sh");
        let manifest = br#"[{"Config":"config.json","RepoTags":["evil:1"],"Layers":["layer.tar"]}]"#;
        let e = engine();
        let data = archive(&[("../layer.tar", &tar), ("config.json", &config), ("manifest.json", manifest)]);
        let (r, _) = load(&e, &data);
        let err = r.unwrap_err();
        assert_eq!(err.kind, Kind::InvalidArgument);
        assert!(err.message.contains("outside the archive"), "{}", err.message);
        assert_nothing_stored(&e);

        // A manifest naming a path outside is refused as well.
        let manifest = br#"[{"Config":"config.json","RepoTags":["evil:1"],"Layers":["../../etc/passwd"]}]"#;
        let data = archive(&[("layer.tar", &tar), ("config.json", &config), ("manifest.json", manifest)]);
        let (r, _) = load(&e, &data);
        assert!(r.unwrap_err().message.contains("outside the archive"));
        assert_nothing_stored(&e);
    }

    #[test]
    fn load_refuses_a_layer_that_does_not_match_its_diff_id_and_stores_nothing() {
        let good = layer(&[("f", b"good")]);
        let evil = layer(&[("f", b"evil")]);
        let config = config_json(&[Digest::of(&good), Digest::of(&good)], "2021-01-01T00:00:00Z", "sh");
        // Both layers claim the same diff ID and the bad one comes first: it
        // must not slip by because the same diff ID is also found good.
        let manifest = br#"[{"Config":"config.json","RepoTags":["x:1"],"Layers":["b.tar","a.tar"]}]"#;
        let data =
            archive(&[("a.tar", &good), ("b.tar", &evil), ("config.json", &config), ("manifest.json", manifest)]);
        let e = engine();
        let (r, lines) = load(&e, &data);
        let err = r.unwrap_err();
        assert_eq!(err.kind, Kind::InvalidArgument);
        assert_eq!(
            err.message,
            format!("invalid diffID for layer 0: expected \"{}\", got \"{}\"", Digest::of(&good), Digest::of(&evil))
        );
        assert!(lines.is_empty());
        assert_nothing_stored(&e);
    }

    #[test]
    fn load_of_a_layer_with_a_breakout_entry_stores_nothing() {
        // The diff ID matches, so the layer is only refused when unpacked,
        // after its blob was stored: that blob must be cleaned up.
        let evil = archive(&[("../../escaped", b"x")]);
        let config = config_json(&[Digest::of(&evil)], "2021-01-01T00:00:00Z", "sh");
        let manifest = br#"[{"Config":"config.json","RepoTags":["x:1"],"Layers":["l.tar"]}]"#;
        let e = engine();
        let (r, _) = load(&e, &archive(&[("l.tar", &evil), ("config.json", &config), ("manifest.json", manifest)]));
        let err = r.unwrap_err();
        assert_eq!(err.kind, Kind::InvalidArgument);
        assert!(err.message.contains("breakout"), "{}", err.message);
        assert_nothing_stored(&e);
        assert!(!e.paths.data_root().parent().unwrap().join("escaped").exists());
    }

    #[test]
    fn loading_the_same_archive_twice_changes_nothing() {
        if !require_root() {
            return;
        }
        let a = engine();
        let id = add_image(&a, &[(layer(&[("f", b"x")]), true)], &["busybox:latest"], "sh");
        let mut out = Vec::new();
        a.images.save(&["busybox:latest".into()], &mut out).unwrap();
        let b = engine();
        load(&b, &out).0.unwrap();
        let blobs = b.images.content.list().unwrap().len();
        let (r, lines) = load(&b, &out);
        r.unwrap();
        assert_eq!(lines, ["Loaded image: busybox:latest"]);
        assert_eq!(b.images.content.list().unwrap().len(), blobs);
        assert_eq!(b.images.store.list().len(), 1);
        assert_eq!(b.images.store.find("busybox").unwrap().image.id(), &id);
    }

    #[test]
    fn load_without_manifest_reports_dockerd_error() {
        let e = engine();
        let (r, _) = load(&e, &archive(&[("foo", b"bar")]));
        assert_eq!(r.unwrap_err().message, "invalid archive: does not contain a manifest.json");
    }

    #[test]
    fn import_applies_changes_and_tags() {
        if !require_root() {
            return;
        }
        let e = engine();
        let rootfs = gzip(&layer(&[("bin/sh", b"#!fake\n")]));
        let file = upload(&e, &rootfs);
        let r = Reference::parse("imported:1").unwrap();
        let id =
            e.images.import(file, Some(r), &[r#"CMD ["sh"]"#.to_owned(), "ENV A=b".to_owned()], "from a test").unwrap();
        let img = e.images.store.find("imported:1").unwrap().image;
        assert_eq!(img.id(), &id);
        assert_eq!(Digest::of(&e.images.content.read(&id).unwrap()), id);
        let c = &img.config;
        assert_eq!(c["config"]["Cmd"], serde_json::json!(["sh"]));
        assert_eq!(c["config"]["Env"], serde_json::json!(["A=b"]));
        assert_eq!(c["comment"], "from a test");
        assert_eq!(c["architecture"], crate::engine::go_arch());
        assert_eq!(c["os"], "linux");
        assert_eq!(c["history"][0]["comment"], "from a test");
        assert_eq!(c["history"][0]["created"], c["created"]);
        assert_eq!(c["container_config"]["Cmd"], serde_json::Value::Null);
        let l = &img.record.layers[0];
        assert_eq!(c["rootfs"]["diff_ids"][0], l.diff_id.to_string());
        assert_eq!(l.blob.as_ref().unwrap().digest, l.diff_id);
        assert_eq!(std::fs::read(e.images.snapshots.fs_dir(&l.chain_id).join("bin/sh")).unwrap(), b"#!fake\n");
        assert!(img.record.last_tag_time.is_some(), "tagging records the time, as docker tag does");
    }

    #[test]
    fn import_with_an_invalid_change_stores_nothing() {
        let e = engine();
        let file = upload(&e, &layer(&[("f", b"x")]));
        let err = e.images.import(file, None, &["RUN true".to_owned()], "").unwrap_err();
        assert_eq!(err.kind, Kind::InvalidArgument);
        assert_eq!(err.message, "run is not a valid change command");
        assert_nothing_stored(&e);
    }
}

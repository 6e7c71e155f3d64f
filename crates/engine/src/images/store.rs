//! The image store: which images exist, what names point at them, and the
//! metadata `docker images`/`inspect` show.
//!
//! All records live in one JSON file rewritten atomically on each change, so a
//! crash at any moment leaves either the old or the new set of images and
//! tags, never a half-tagged image. Image configs and layers live in the
//! content store and snapshots; this module only refers to them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::RwLock;

use serde::{Deserialize, Serialize};

use crate::content::write_atomic;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::paths::Paths;
use crate::reference::Reference;

/// One layer of an image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LayerRecord {
    pub diff_id: Digest,
    pub chain_id: Digest,
    /// The blob this layer came from (compressed as the registry served it),
    /// when we have it; push and save use it as is.
    pub blob: Option<BlobRef>,
    /// Unpacked size.
    pub size: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BlobRef {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
}

/// What the engine records about one image (the config is in content).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The config digest.
    pub id: Digest,
    pub layers: Vec<LayerRecord>,
    /// The image this one was built or committed from, if local.
    #[serde(default)]
    pub parent: Option<Digest>,
    #[serde(default)]
    pub last_tag_time: Option<String>,
    /// Manifests and indexes this image was pulled through (kept for
    /// RepoDigests, push and save).
    #[serde(default)]
    pub manifests: Vec<Digest>,
}

impl ImageRecord {
    pub fn size(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }
    pub fn chain(&self) -> Vec<Digest> {
        self.layers.iter().map(|l| l.chain_id.clone()).collect()
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Persisted {
    images: Vec<ImageRecord>,
    /// Full reference (`docker.io/library/busybox:latest` or `...@sha256:`)
    /// to image ID.
    references: BTreeMap<String, Digest>,
}

/// An image as loaded: its record plus its parsed config.
#[derive(Debug, Clone)]
pub struct Image {
    pub record: ImageRecord,
    pub config: serde_json::Value,
}

impl Image {
    pub fn id(&self) -> &Digest {
        &self.record.id
    }
    /// `created` from the config, as unix seconds (0 when absent).
    pub fn created_unix(&self) -> i64 {
        self.created_str().and_then(crate::timefmt::parse_rfc3339).map(|t| t.0).unwrap_or(0)
    }
    pub fn created_str(&self) -> Option<&str> {
        self.config.get("created").and_then(|v| v.as_str())
    }
    pub fn labels(&self) -> BTreeMap<String, String> {
        self.config
            .pointer("/config/Labels")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default()
    }
}

#[derive(Default)]
struct State {
    images: HashMap<Digest, Image>,
    references: BTreeMap<String, Digest>,
}

/// The engine's images and names.
pub struct ImageStore {
    paths: Paths,
    state: RwLock<State>,
}

/// What resolving a user's name or ID found.
#[derive(Debug, Clone)]
pub struct Found {
    pub image: Image,
    /// The reference it was found by, when it was a name.
    pub by_reference: Option<Reference>,
}

impl ImageStore {
    /// Loads the store; `config_of` reads an image's config blob, and images
    /// whose config or layers are gone are dropped (a later pull restores
    /// them).
    pub fn open(
        paths: &Paths,
        config_of: impl Fn(&Digest) -> Option<Vec<u8>>,
        layer_ok: impl Fn(&Digest) -> bool,
    ) -> std::io::Result<Self> {
        std::fs::create_dir_all(paths.metadata_dir())?;
        let file = paths.metadata_dir().join("images.json");
        let persisted: Persisted = match std::fs::read(&file) {
            Ok(data) => serde_json::from_slice(&data).map_err(std::io::Error::other)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Persisted::default(),
            Err(e) => return Err(e),
        };
        let mut state = State::default();
        for record in persisted.images {
            let complete = record.layers.iter().all(|l| layer_ok(&l.chain_id));
            let config = config_of(&record.id).and_then(|c| serde_json::from_slice(&c).ok());
            match (complete, config) {
                (true, Some(config)) => {
                    state.images.insert(record.id.clone(), Image { record, config });
                }
                _ => tracing::warn!(image = %record.id, "dropping image whose content is incomplete"),
            }
        }
        state.references = persisted.references.into_iter().filter(|(_, id)| state.images.contains_key(id)).collect();
        Ok(ImageStore { paths: paths.clone(), state: RwLock::new(state) })
    }

    fn persist(&self, state: &State) -> Result<()> {
        let persisted = Persisted {
            images: state.images.values().map(|i| i.record.clone()).collect(),
            references: state.references.clone(),
        };
        let data = serde_json::to_vec(&persisted).map_err(|e| Error::internal(e.to_string()))?;
        write_atomic(&self.paths.metadata_dir().join("images.json"), &data).map_err(|e| Error::io("write image metadata", e))
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().expect("image store lock poisoned")
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().expect("image store lock poisoned")
    }

    /// Adds (or replaces) an image and points `refs` at it, in one durable
    /// step. Returns the IDs that lost their last reference to it.
    pub fn put(&self, image: Image, refs: &[Reference]) -> Result<()> {
        let mut state = self.write();
        let id = image.id().clone();
        let mut image = image;
        if let Some(old) = state.images.get(&id) {
            image.record.last_tag_time = old.record.last_tag_time.clone();
            if image.record.parent.is_none() {
                image.record.parent = old.record.parent.clone();
            }
        }
        state.images.insert(id.clone(), image);
        for r in refs {
            state.references.insert(r.to_string(), id.clone());
        }
        self.persist(&state)
    }

    /// Points `r` at image `id` (the tag command). Returns the image that
    /// `r` pointed at before, if another.
    pub fn tag(&self, id: &Digest, r: &Reference) -> Result<Option<Digest>> {
        let mut state = self.write();
        let previous = state.references.insert(r.to_string(), id.clone());
        if let Some(img) = state.images.get_mut(id) {
            img.record.last_tag_time = Some(crate::timefmt::now_rfc3339());
        }
        self.persist(&state)?;
        Ok(previous.filter(|p| p != id))
    }

    /// Removes a reference; returns the image it pointed at.
    pub fn untag(&self, r: &Reference) -> Result<Option<Digest>> {
        let mut state = self.write();
        let removed = state.references.remove(&r.to_string());
        if removed.is_some() {
            self.persist(&state)?;
        }
        Ok(removed)
    }

    /// Deletes the image record (its references must be gone already).
    pub fn delete(&self, id: &Digest) -> Result<Option<Image>> {
        let mut state = self.write();
        let removed = state.images.remove(id);
        state.references.retain(|_, v| v != id);
        self.persist(&state)?;
        Ok(removed)
    }

    pub fn get(&self, id: &Digest) -> Option<Image> {
        self.read().images.get(id).cloned()
    }

    pub fn list(&self) -> Vec<Image> {
        self.read().images.values().cloned().collect()
    }

    /// Every reference pointing at `id`, parsed, in a stable order.
    pub fn references_of(&self, id: &Digest) -> Vec<Reference> {
        self.read()
            .references
            .iter()
            .filter(|(_, v)| *v == id)
            .filter_map(|(k, _)| Reference::parse(k).ok())
            .collect()
    }

    pub fn resolve_reference(&self, r: &Reference) -> Option<Digest> {
        self.read().references.get(&r.to_string()).cloned()
    }

    /// Finds an image by name (tag or digest reference) or by (a prefix
    /// of) its ID, in dockerd's order.
    pub fn find(&self, name_or_id: &str) -> Result<Found> {
        let shown = match Reference::parse(name_or_id) {
            Ok(r) if !is_id_prefix(name_or_id) => r.with_default_tag().familiar(),
            _ => name_or_id.to_owned(),
        };
        let not_found = || Error::not_found(format!("No such image: {shown}"));
        if name_or_id.is_empty() {
            return Err(not_found());
        }
        // A full ID with or without `sha256:`.
        if let Ok(d) = name_or_id.parse::<Digest>() {
            return self.get(&d).map(|image| Found { image, by_reference: None }).ok_or_else(not_found);
        }
        if let Ok(r) = Reference::parse(name_or_id) {
            let r = r.with_default_tag();
            if let Some(id) = self.resolve_reference(&r) {
                if let Some(image) = self.get(&id) {
                    return Ok(Found { image, by_reference: Some(r) });
                }
            }
        }
        let hex = name_or_id.strip_prefix("sha256:").unwrap_or(name_or_id);
        if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let state = self.read();
            let mut matches = state.images.keys().filter(|id| id.hex().starts_with(hex));
            if let Some(first) = matches.next() {
                if matches.next().is_some() {
                    return Err(Error::invalid(format!("multiple IDs found with provided prefix: {hex}")));
                }
                let image = state.images.get(first).cloned().expect("key from this map");
                return Ok(Found { image, by_reference: None });
            }
        }
        Err(not_found())
    }

    /// Chain IDs and blobs any image still uses (for garbage collection).
    pub fn referenced(&self) -> (HashSet<Digest>, HashSet<Digest>) {
        let state = self.read();
        let mut chains = HashSet::new();
        let mut blobs = HashSet::new();
        for img in state.images.values() {
            blobs.insert(img.record.id.clone());
            blobs.extend(img.record.manifests.iter().cloned());
            for l in &img.record.layers {
                chains.insert(l.chain_id.clone());
                if let Some(b) = &l.blob {
                    blobs.insert(b.digest.clone());
                }
            }
        }
        (chains, blobs)
    }

    /// Manifest digests recorded as `name@digest` references: they are
    /// content too.
    pub fn referenced_manifests(&self) -> HashSet<Digest> {
        self.read().references.keys().filter_map(|k| k.rsplit_once('@')).filter_map(|(_, d)| d.parse().ok()).collect()
    }

    /// Images whose parent is `id` (dockerd refuses to delete those).
    pub fn children(&self, id: &Digest) -> Vec<Digest> {
        self.read().images.values().filter(|i| i.record.parent.as_ref() == Some(id)).map(|i| i.id().clone()).collect()
    }
}

/// Whether `s` could be (a prefix of) an image ID rather than a name.
fn is_id_prefix(s: &str) -> bool {
    let hex = s.strip_prefix("sha256:").unwrap_or(s);
    !hex.is_empty() && hex.len() <= 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

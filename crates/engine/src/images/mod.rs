//! Images: names, metadata and the operations of the image API (list,
//! inspect, history, tag, remove, prune, disk usage, garbage collection).
//! Pull lives in `pull`, archives (save/load/import) in `archive`.
//!
//! Owns the meaning of image operations; does not own blob bytes
//! (`content`), unpacked layers (`snapshots`) or the wire (`api`).

pub mod archive;
pub mod pull;
pub mod push;
pub mod store;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use bollard_stubs::models::{ImageDeleteResponseItem, ImagePruneResponse, ImageSummary};
use serde::Serialize;

use crate::content::ContentStore;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::events::EventBus;
use crate::filters::{glob_match, Filters};
use crate::reference::Reference;
use crate::registry::RegistryClient;
use crate::snapshots::Snapshots;
use store::{Image, ImageStore};

/// `docker image inspect`, with dockerd's field names.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageInspect {
    pub id: String,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    pub parent: String,
    pub comment: String,
    pub created: String,
    pub container: String,
    pub container_config: serde_json::Value,
    pub docker_version: String,
    pub author: String,
    pub config: serde_json::Value,
    pub architecture: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    pub os: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
    pub size: u64,
    pub virtual_size: u64,
    pub graph_driver: GraphDriver,
    #[serde(rename = "RootFS")]
    pub root_fs: RootFs,
    pub metadata: InspectMetadata,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct GraphDriver {
    pub data: BTreeMap<String, String>,
    pub name: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RootFs {
    #[serde(rename = "Type")]
    pub typ: String,
    pub layers: Vec<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct InspectMetadata {
    pub last_tag_time: String,
}

/// One row of `docker history`.
#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct HistoryItem {
    pub id: String,
    pub created: i64,
    pub created_by: String,
    pub tags: Option<Vec<String>>,
    pub size: u64,
    pub comment: String,
}

/// An image's `config` as dockerd shows it: its container-config struct
/// with every always-present field filled in.
fn container_config(config: Option<&serde_json::Value>) -> serde_json::Value {
    let mut out = serde_json::json!({
        "Hostname": "", "Domainname": "", "User": "", "AttachStdin": false, "AttachStdout": false,
        "AttachStderr": false, "Tty": false, "OpenStdin": false, "StdinOnce": false, "Env": null,
        "Cmd": null, "Image": "", "Volumes": null, "WorkingDir": "", "Entrypoint": null,
        "OnBuild": null, "Labels": null,
    });
    if let (Some(serde_json::Value::Object(src)), serde_json::Value::Object(dst)) = (config, &mut out) {
        for (k, v) in src {
            dst.insert(k.clone(), v.clone());
        }
    }
    out
}

/// Image part of `/system/df`.
pub struct DiskUsage {
    pub layers_size: u64,
    pub images: Vec<ImageSummary>,
}

/// The containers using each image (ID, running); supplied by the
/// container half of the engine so image removal can refuse images in use.
pub type UsageFn = Arc<dyn Fn() -> HashMap<Digest, Vec<(String, bool)>> + Send + Sync>;

/// The image service.
pub struct Images {
    pub store: ImageStore,
    pub content: ContentStore,
    pub snapshots: Snapshots,
    pub registry: RegistryClient,
    pub events: Arc<EventBus>,
    /// Blobs and chain IDs an operation in flight is writing: GC keeps them.
    leases: Mutex<HashMap<Digest, usize>>,
    /// One download/unpack per key at a time, across concurrent pulls.
    pub(crate) inflight: tokio::sync::Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
    usage: Mutex<Option<UsageFn>>,
}

/// Keeps a digest safe from garbage collection while alive.
pub struct Lease<'a> {
    images: &'a Images,
    digests: Vec<Digest>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let mut leases = self.images.leases.lock().expect("lease lock poisoned");
        for d in &self.digests {
            if let Some(n) = leases.get_mut(d) {
                *n -= 1;
                if *n == 0 {
                    leases.remove(d);
                }
            }
        }
    }
}

fn summary_repo_lists(refs: &[Reference]) -> (Vec<String>, Vec<String>) {
    let mut tags = Vec::new();
    let mut digests = Vec::new();
    for r in refs {
        if r.digest().is_some() {
            digests.push(r.familiar());
        } else {
            tags.push(r.familiar());
        }
    }
    (tags, digests)
}

impl Images {
    pub fn new(
        store: ImageStore,
        content: ContentStore,
        snapshots: Snapshots,
        registry: RegistryClient,
        events: Arc<EventBus>,
    ) -> Self {
        Images {
            store,
            content,
            snapshots,
            registry,
            events,
            leases: Mutex::new(HashMap::new()),
            inflight: tokio::sync::Mutex::new(HashMap::new()),
            usage: Mutex::new(None),
        }
    }

    /// Lets the container service tell which images are in use.
    pub fn set_usage(&self, f: UsageFn) {
        *self.usage.lock().expect("usage lock poisoned") = Some(f);
    }

    fn users(&self) -> HashMap<Digest, Vec<(String, bool)>> {
        self.usage.lock().expect("usage lock poisoned").as_ref().map(|f| f()).unwrap_or_default()
    }

    /// Containers per image.
    fn usage(&self) -> HashMap<Digest, usize> {
        self.users().into_iter().map(|(k, v)| (k, v.len())).collect()
    }

    pub fn lease(&self, digests: impl IntoIterator<Item = Digest>) -> Lease<'_> {
        let digests: Vec<Digest> = digests.into_iter().collect();
        let mut leases = self.leases.lock().expect("lease lock poisoned");
        for d in &digests {
            *leases.entry(d.clone()).or_default() += 1;
        }
        Lease { images: self, digests }
    }

    /// Publishes an image event with dockerd's attributes.
    pub fn event(&self, action: &str, id: &str, name: Option<&str>) {
        let mut attrs = BTreeMap::new();
        if let Some(n) = name {
            attrs.insert("name".to_owned(), n.to_owned());
        }
        if let Some(found) = self.store.find(id).ok().or_else(|| name.and_then(|n| self.store.find(n).ok())) {
            for (k, v) in found.image.labels() {
                attrs.insert(k, v);
            }
        }
        self.events.publish("image", action, id, attrs);
    }

    fn summary(&self, img: &Image, containers: i64, shared: i64) -> ImageSummary {
        let refs = self.store.references_of(img.id());
        let (repo_tags, repo_digests) = summary_repo_lists(&refs);
        ImageSummary {
            id: img.id().to_string(),
            parent_id: img.record.parent.as_ref().map(ToString::to_string).unwrap_or_default(),
            repo_tags,
            repo_digests,
            created: img.created_unix(),
            size: img.record.size() as i64,
            shared_size: shared,
            labels: img.labels().into_iter().collect(),
            containers,
            manifests: None,
            descriptor: None,
        }
    }

    /// `GET /images/json`.
    pub fn list(&self, all: bool, filters: &Filters) -> Result<Vec<ImageSummary>> {
        let filters_ok = Filters(filters.0.clone());
        let dangling = filters_ok.bool("dangling")?;
        let before = self.time_bound(filters_ok.get("before"))?;
        let since = self.time_bound(filters_ok.get("since"))?;
        let usage = self.usage();
        let mut images = self.store.list();
        if !all {
            // Intermediate images (untagged parents of other images) are
            // hidden unless `-a`, as dockerd does.
            let parents: HashSet<Digest> = images.iter().filter_map(|i| i.record.parent.clone()).collect();
            images.retain(|i| !(parents.contains(i.id()) && self.store.references_of(i.id()).is_empty()));
        }
        let mut out = Vec::new();
        for img in images {
            let refs = self.store.references_of(img.id());
            let tagged = refs.iter().any(|r| r.digest().is_none());
            if let Some(d) = dangling {
                if d == tagged {
                    continue;
                }
            }
            if !filters_ok.labels_match("label", &img.labels()) {
                continue;
            }
            let created = img.created_unix();
            if before.is_some_and(|b| created >= b) || since.is_some_and(|s| created <= s) {
                continue;
            }
            let mut summary = self.summary(&img, *usage.get(img.id()).unwrap_or(&0) as i64, -1);
            let patterns = filters_ok.get("reference");
            if !patterns.is_empty() {
                let matching: Vec<&Reference> = refs
                    .iter()
                    .filter(|r| patterns.iter().any(|p| glob_match(p, &r.familiar()) || glob_match(p, &r.familiar_repository())))
                    .collect();
                if matching.is_empty() {
                    continue;
                }
                // dockerd lists only the names that matched.
                summary.repo_tags.retain(|t| matching.iter().any(|r| r.familiar() == *t));
                summary.repo_digests.retain(|t| matching.iter().any(|r| r.familiar() == *t));
            }
            out.push(summary);
        }
        out.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| a.id.cmp(&b.id)));
        Ok(out)
    }

    fn time_bound(&self, values: &[String]) -> Result<Option<i64>> {
        match values {
            [] => Ok(None),
            [v] => Ok(Some(self.store.find(v)?.image.created_unix())),
            _ => Err(Error::invalid("only one value allowed for before/since")),
        }
    }

    /// `GET /images/{name}/json`.
    pub fn inspect(&self, name: &str) -> Result<ImageInspect> {
        let img = self.store.find(name)?.image;
        let refs = self.store.references_of(img.id());
        let (repo_tags, repo_digests) = summary_repo_lists(&refs);
        let c = &img.config;
        let s = |k: &str| c.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_owned();
        let chain = img.record.chain();
        let mut lowers: Vec<String> = self.snapshots.lower_dirs(&chain).iter().map(|p| p.display().to_string()).collect();
        let mut data = BTreeMap::new();
        if let Some(top) = lowers.first().cloned() {
            lowers.remove(0);
            data.insert("UpperDir".to_owned(), top.clone());
            data.insert("MergedDir".to_owned(), String::new());
            if !lowers.is_empty() {
                data.insert("LowerDir".to_owned(), lowers.join(":"));
            }
            data.retain(|_, v| !v.is_empty());
        }
        let size = img.record.size();
        Ok(ImageInspect {
            id: img.id().to_string(),
            repo_tags,
            repo_digests,
            parent: img.record.parent.as_ref().map(ToString::to_string).unwrap_or_default(),
            comment: s("comment"),
            created: s("created"),
            container: s("container"),
            container_config: c.get("container_config").cloned().unwrap_or(serde_json::json!({})),
            docker_version: s("docker_version"),
            author: s("author"),
            config: container_config(c.get("config")),
            architecture: s("architecture"),
            variant: c.get("variant").and_then(|v| v.as_str()).map(str::to_owned),
            os: s("os"),
            os_version: c.get("os.version").and_then(|v| v.as_str()).map(str::to_owned),
            size,
            virtual_size: size,
            graph_driver: GraphDriver { data, name: "overlay2".to_owned() },
            root_fs: RootFs {
                typ: "layers".to_owned(),
                layers: img.record.layers.iter().map(|l| l.diff_id.to_string()).collect(),
            },
            metadata: InspectMetadata {
                last_tag_time: img.record.last_tag_time.clone().unwrap_or_else(|| "0001-01-01T00:00:00Z".to_owned()),
            },
        })
    }

    /// `GET /images/{name}/history`, newest first.
    pub fn history(&self, name: &str) -> Result<Vec<HistoryItem>> {
        let img = self.store.find(name)?.image;
        let history: Vec<serde_json::Value> =
            img.config.get("history").and_then(|h| h.as_array().cloned()).unwrap_or_default();
        let mut layers = img.record.layers.iter();
        let mut rows = Vec::new();
        for h in &history {
            let empty = h.get("empty_layer").and_then(|v| v.as_bool()).unwrap_or(false);
            let size = if empty { 0 } else { layers.next().map(|l| l.size).unwrap_or(0) };
            let text = |k: &str| h.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_owned();
            rows.push(HistoryItem {
                id: "<missing>".to_owned(),
                created: h
                    .get("created")
                    .and_then(|v| v.as_str())
                    .and_then(crate::timefmt::parse_rfc3339)
                    .map(|t| t.0)
                    .unwrap_or(0),
                created_by: text("created_by"),
                tags: None,
                size,
                comment: text("comment"),
            });
        }
        if history.is_empty() {
            // An image without history (imported by hand): one row per layer.
            for l in &img.record.layers {
                rows.push(HistoryItem {
                    id: "<missing>".to_owned(),
                    created: img.created_unix(),
                    created_by: String::new(),
                    tags: None,
                    size: l.size,
                    comment: String::new(),
                });
            }
        }
        rows.reverse();
        if let Some(top) = rows.first_mut() {
            top.id = img.id().to_string();
            let (tags, _) = summary_repo_lists(&self.store.references_of(img.id()));
            top.tags = Some(tags);
        }
        Ok(rows)
    }

    /// `POST /images/{name}/tag`.
    pub fn tag(&self, source: &str, repo: &str, tag: Option<&str>) -> Result<()> {
        let img = self.store.find(source)?.image;
        let full = match tag.filter(|t| !t.is_empty()) {
            Some(t) => format!("{repo}:{t}"),
            None => repo.to_owned(),
        };
        let r = Reference::parse(&full).map_err(|e| Error::invalid(e.to_string()))?;
        if r.digest().is_some() {
            return Err(Error::invalid("refusing to create a tag with a digest reference"));
        }
        let r = r.with_default_tag();
        self.store.tag(img.id(), &r)?;
        self.event("tag", &img.id().to_string(), Some(&r.familiar()));
        Ok(())
    }

    /// `DELETE /images/{name}`, with dockerd's untag-then-delete rules.
    pub fn remove(&self, name: &str, force: bool, prune: bool) -> Result<Vec<ImageDeleteResponseItem>> {
        let found = self.store.find(name)?;
        let id = found.image.id().clone();
        let idstr = id.to_string();
        let untagged = |s: String| ImageDeleteResponseItem { untagged: Some(s), deleted: None };
        let mut records = Vec::new();
        let is_id = idstr.starts_with(name) || id.hex().starts_with(name);
        let users = self.users().remove(&id).unwrap_or_default();
        let in_use = users.len();
        let short = |c: &str| c.chars().take(12).collect::<String>();
        if !is_id && found.by_reference.is_some() {
            let r = found.by_reference.clone().expect("checked is_some");
            let refs = self.store.references_of(&id);
            let repos: HashSet<String> = refs.iter().map(|x| x.repository()).collect();
            let single = refs.iter().filter(|x| x.digest().is_none()).count() <= 1 && repos.len() <= 1;
            if !force && single {
                if let Some((c, _)) = users.first() {
                    return Err(Error::conflict(format!(
                        "conflict: unable to remove repository reference \"{name}\" (must force) - container {} is using its referenced image {}",
                        short(c),
                        id.short()
                    )));
                }
            }
            self.store.untag(&r)?;
            records.push(untagged(r.familiar()));
            self.event("untag", &idstr, Some(&r.familiar()));
            let mut remaining = self.store.references_of(&id);
            if r.digest().is_none() && !remaining.iter().any(|x| x.digest().is_none() && x.repository() == r.repository()) {
                for other in remaining.iter().filter(|x| x.digest().is_some() && x.repository() == r.repository()) {
                    self.store.untag(other)?;
                    records.push(untagged(other.familiar()));
                }
                remaining.retain(|x| !(x.digest().is_some() && x.repository() == r.repository()));
            }
            if !remaining.is_empty() || in_use > 0 {
                return Ok(records);
            }
        } else {
            let refs = self.store.references_of(&id);
            let repos: HashSet<String> = refs.iter().map(|r| r.repository()).collect();
            let tags = refs.iter().filter(|r| r.digest().is_none()).count();
            if refs.len() > 0 && (repos.len() > 1 || tags > 1) && !force {
                return Err(Error::conflict(format!(
                    "conflict: unable to delete {} (must be forced) - image is referenced in multiple repositories",
                    id.short()
                )));
            }
            if let Some((c, _)) = users.iter().find(|(_, running)| *running) {
                return Err(Error::conflict(format!(
                    "conflict: unable to delete {} (cannot be forced) - image is being used by running container {}",
                    id.short(),
                    short(c)
                )));
            }
            if let Some((c, _)) = users.first().filter(|_| !force) {
                return Err(Error::conflict(format!(
                    "conflict: unable to delete {} (must be forced) - image is being used by stopped container {}",
                    id.short(),
                    short(c)
                )));
            }
            for r in refs {
                self.store.untag(&r)?;
                records.push(untagged(r.familiar()));
                self.event("untag", &idstr, Some(&r.familiar()));
            }
        }
        if !self.store.children(&id).is_empty() && !force {
            return Err(Error::conflict(format!(
                "conflict: unable to delete {} (cannot be forced) - image has dependent child images",
                id.short()
            )));
        }
        records.extend(self.delete_image(&id, prune)?);
        Ok(records)
    }

    /// Drops an untagged image and collects what only it used.
    fn delete_image(&self, id: &Digest, prune_parents: bool) -> Result<Vec<ImageDeleteResponseItem>> {
        let mut records = Vec::new();
        let Some(img) = self.store.delete(id)? else { return Ok(records) };
        records.push(ImageDeleteResponseItem { untagged: None, deleted: Some(id.to_string()) });
        self.events.publish("image", "delete", &id.to_string(), BTreeMap::new());
        for chain in self.gc()? {
            if img.record.layers.iter().any(|l| l.chain_id == chain) {
                records.push(ImageDeleteResponseItem { untagged: None, deleted: Some(chain.to_string()) });
            }
        }
        if prune_parents {
            if let Some(parent) = &img.record.parent {
                if self.store.references_of(parent).is_empty() && self.store.children(parent).is_empty() {
                    records.extend(self.delete_image(parent, true)?);
                }
            }
        }
        Ok(records)
    }

    /// Deletes snapshots and blobs no image (and no operation in flight)
    /// uses. Returns the chain IDs removed.
    pub fn gc(&self) -> Result<Vec<Digest>> {
        let (chains, mut blobs) = self.store.referenced();
        blobs.extend(self.store.referenced_manifests());
        let leased: HashSet<Digest> = self.leases.lock().expect("lease lock poisoned").keys().cloned().collect();
        let mut removed = Vec::new();
        for c in self.snapshots.list().map_err(|e| Error::io("list snapshots", e))? {
            if !chains.contains(&c) && !leased.contains(&c) {
                self.snapshots.remove(&c).map_err(|e| Error::io("remove snapshot", e))?;
                removed.push(c);
            }
        }
        for b in self.content.list().map_err(|e| Error::io("list blobs", e))? {
            if !blobs.contains(&b) && !leased.contains(&b) {
                self.content.delete(&b).map_err(|e| Error::io("delete blob", e))?;
            }
        }
        Ok(removed)
    }

    /// `POST /images/prune`.
    pub fn prune(&self, filters: &Filters) -> Result<ImagePruneResponse> {
        let dangling_only = filters.bool("dangling")?.unwrap_or(true);
        let until = filters.until()?;
        let usage = self.usage();
        let mut deleted = Vec::new();
        let mut reclaimed = 0u64;
        let before: HashSet<Digest> = self.snapshots.list().map_err(|e| Error::io("list snapshots", e))?.into_iter().collect();
        let sizes: HashMap<Digest, u64> =
            before.iter().filter_map(|c| self.snapshots.meta(c).map(|m| (c.clone(), m.size))).collect();
        for img in self.store.list() {
            let refs = self.store.references_of(img.id());
            let tagged = refs.iter().any(|r| r.digest().is_none());
            if (dangling_only && tagged) || usage.get(img.id()).copied().unwrap_or(0) > 0 {
                continue;
            }
            if until.is_some_and(|u| img.created_unix() >= u) || !filters.labels_match("label", &img.labels()) {
                continue;
            }
            if !self.store.children(img.id()).is_empty() {
                continue;
            }
            for r in &refs {
                self.store.untag(r)?;
                deleted.push(ImageDeleteResponseItem { untagged: Some(r.familiar()), deleted: None });
                self.event("untag", &img.id().to_string(), Some(&r.familiar()));
            }
            deleted.extend(self.delete_image(img.id(), true)?);
        }
        let after: HashSet<Digest> = self.snapshots.list().map_err(|e| Error::io("list snapshots", e))?.into_iter().collect();
        for gone in before.difference(&after) {
            reclaimed += sizes.get(gone).copied().unwrap_or(0);
        }
        if !deleted.is_empty() {
            self.events.publish("image", "prune", "", BTreeMap::from([("reclaimed".to_owned(), reclaimed.to_string())]));
        }
        Ok(ImagePruneResponse { images_deleted: Some(deleted), space_reclaimed: Some(reclaimed as i64) })
    }

    /// Image half of `/system/df`: layers shared between images are
    /// counted once in `layers_size` and reported as `SharedSize`.
    pub fn disk_usage(&self) -> Result<DiskUsage> {
        let images = self.store.list();
        let mut users: HashMap<Digest, usize> = HashMap::new();
        for img in &images {
            for l in &img.record.layers {
                *users.entry(l.chain_id.clone()).or_default() += 1;
            }
        }
        let mut layers_size = 0u64;
        let mut seen = HashSet::new();
        for img in &images {
            for l in &img.record.layers {
                if seen.insert(l.chain_id.clone()) {
                    layers_size += l.size;
                }
            }
        }
        let usage = self.usage();
        let mut out = Vec::new();
        for img in &images {
            let shared: u64 = img.record.layers.iter().filter(|l| users[&l.chain_id] > 1).map(|l| l.size).sum();
            out.push(self.summary(img, usage.get(img.id()).copied().unwrap_or(0) as i64, shared as i64));
        }
        out.sort_by(|a, b| b.created.cmp(&a.created));
        Ok(DiskUsage { layers_size, images: out })
    }
}

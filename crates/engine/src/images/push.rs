//! `docker push` and `docker search`.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::json;

use super::pull::{JsonMessage, Progress};
use super::Images;
use crate::digest::Digest;
use crate::error::{Error, Kind, Result};
use crate::filters::Filters;
use crate::reference::Reference;
use crate::registry::{Credentials, RegistryError, SearchResult};

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

fn push_error(e: RegistryError) -> Error {
    if e.is_unauthorized() {
        return Error::new(Kind::Unauthorized, e.to_string());
    }
    Error::new(Kind::Unavailable, e.to_string())
}

impl Images {
    /// Pushes the image named `reference` (with `tag`, default `latest`) to
    /// its registry, layer blobs as stored, then a manifest under the tag.
    pub async fn push(self: &Arc<Self>, reference: &Reference, tag: Option<&str>, creds: &Credentials, progress: &Progress) -> Result<()> {
        let r = match tag {
            Some(t) => reference.name_only().with_tag(t).map_err(|e| Error::invalid(e.to_string()))?,
            None => reference.clone().with_default_tag(),
        };
        let id = self.store.resolve_reference(&r).ok_or_else(|| {
            Error::not_found(format!("An image does not exist locally with the tag: {}", r.name_only().familiar()))
        })?;
        let img = self.store.get(&id).ok_or_else(|| Error::not_found(format!("No such image: {}", r.familiar())))?;
        progress.send(JsonMessage::status(format!("The push refers to repository [{}]", r.name_only().familiar()), None));
        let repo = self.registry.repository(&r, creds, true).await.map_err(push_error)?;
        let _lease = self.lease(std::iter::once(id.clone()).chain(img.record.layers.iter().filter_map(|l| l.blob.as_ref().map(|b| b.digest.clone()))));

        let mut blobs = Vec::new();
        for l in img.record.layers.iter().rev() {
            let b = l.blob.clone().filter(|b| self.content.exists(&b.digest)).ok_or_else(|| {
                Error::internal(format!("layer {} has no stored blob to push", l.diff_id))
            })?;
            progress.send(JsonMessage { status: Some("Preparing".into()), id: Some(l.diff_id.short().to_owned()), progress_detail: Some(Default::default()), ..Default::default() });
            blobs.push((l.diff_id.clone(), b));
        }
        for (diff, b) in &blobs {
            let short = diff.short();
            if self.registry.blob_exists(&repo, &b.digest).await.map_err(push_error)? {
                progress.send(JsonMessage::status("Layer already exists", Some(short)));
                continue;
            }
            progress.send(JsonMessage::status("Pushing", Some(short)));
            let path = self.content.path(&b.digest);
            let file = tokio::fs::File::open(&path).await.map_err(|e| Error::io("open layer blob", e))?;
            let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
            self.registry.push_blob(&repo, &b.digest, b.size, body).await.map_err(push_error)?;
            progress.send(JsonMessage::status("Pushed", Some(short)));
        }
        let config = self.content.read(&id).map_err(|e| Error::internal(e.to_string()))?;
        if !self.registry.blob_exists(&repo, &id).await.map_err(push_error)? {
            self.registry.push_blob(&repo, &id, config.len() as u64, config.clone()).await.map_err(push_error)?;
        }
        let oci = blobs.iter().any(|(_, b)| b.media_type.starts_with("application/vnd.oci."));
        let (manifest_type, config_type) = if oci { (OCI_MANIFEST, OCI_CONFIG) } else { (DOCKER_MANIFEST, DOCKER_CONFIG) };
        let layers: Vec<serde_json::Value> = img
            .record
            .layers
            .iter()
            .filter_map(|l| l.blob.as_ref())
            .map(|b| json!({"mediaType": b.media_type, "size": b.size, "digest": b.digest}))
            .collect();
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": {"mediaType": config_type, "size": config.len(), "digest": id},
            "layers": layers,
        });
        let bytes = serde_json::to_vec_pretty(&manifest).map_err(|e| Error::internal(e.to_string()))?;
        let size = bytes.len();
        let tag = r.tag().unwrap_or("latest").to_owned();
        let digest: Digest = self.registry.put_manifest(&repo, &tag, manifest_type, Bytes::from(bytes.clone())).await.map_err(push_error)?;
        self.content.write_blob(Some(&digest), &bytes).map_err(|e| Error::internal(e.to_string()))?;
        let mut record = img.record.clone();
        if !record.manifests.contains(&digest) {
            record.manifests.push(digest.clone());
        }
        self.store.put(super::store::Image { record, config: img.config.clone() }, &[r.name_only().with_digest(digest.clone())])?;
        progress.send(JsonMessage::status(format!("{tag}: digest: {digest} size: {size}"), None));
        progress.send(JsonMessage {
            progress_detail: Some(Default::default()),
            aux: Some(json!({"Tag": tag, "Digest": digest, "Size": size})),
            ..Default::default()
        });
        self.event("push", &r.familiar(), Some(&r.familiar_repository()));
        Ok(())
    }

    /// `GET /images/search`: Docker Hub's search API for Hub names; for a
    /// term naming another registry (`127.0.0.1:5000/busy`), that registry's
    /// catalog filtered by the rest of the term.
    pub async fn search(&self, term: &str, limit: usize, filters: &Filters, creds: &Credentials) -> Result<Vec<SearchResult>> {
        let stars: Option<u64> = match filters.get("stars") {
            [] => None,
            [s] => Some(s.parse().map_err(|_| Error::invalid(format!("invalid filter 'stars={s}'")))?),
            _ => return Err(Error::invalid("only one value allowed for stars")),
        };
        let official = filters.bool("is-official")?;
        let automated = filters.bool("is-automated")?;
        let (domain, needle) = match term.split_once('/') {
            Some((d, rest)) if d.contains('.') || d.contains(':') || d == "localhost" => (Some(d), rest),
            _ => (None, term),
        };
        let mut results = match domain {
            Some(d) if d != "docker.io" && d != "index.docker.io" => {
                let repos = self.registry.catalog(d, creds).await.map_err(push_error)?;
                repos
                    .into_iter()
                    .filter(|r| r.contains(needle))
                    .map(|r| SearchResult { name: format!("{d}/{r}"), ..Default::default() })
                    .collect()
            }
            _ => self.registry.hub_search(needle, limit as u32).await.map_err(push_error)?,
        };
        results.retain(|r| {
            stars.is_none_or(|s| r.star_count >= s)
                && official.is_none_or(|o| r.is_official == o)
                && automated.is_none_or(|a| r.is_automated == a)
        });
        results.truncate(limit);
        Ok(results)
    }
}

//! Image manifests and indexes as registries serve them: Docker schema 2
//! manifests and manifest lists, OCI image manifests and indexes.
//!
//! Owns parsing untrusted manifest bytes into typed, validated values:
//! size limit, type detection from the Content-Type or the document,
//! refusal of schema 1 and of ambiguous documents, digest and size checks on
//! every descriptor, and the allowed layer media types. Does not fetch
//! anything (see `client`) nor choose a platform (see `platform`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

use super::platform::Platform;

/// Media types this module knows.
pub mod media_type {
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
    pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
    pub const DOCKER_FOREIGN_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
    pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    pub const OCI_NONDIST_TAR: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar";
    pub const OCI_NONDIST_GZIP: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
    pub const OCI_NONDIST_ZSTD: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd";

    /// The `Accept` header for manifest requests, most specific first.
    pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
        application/vnd.docker.distribution.manifest.list.v2+json, \
        application/vnd.oci.image.manifest.v1+json, \
        application/vnd.docker.distribution.manifest.v2+json";
}

/// Largest manifest accepted (the limit containerd and the distribution
/// registry use).
pub const MAX_MANIFEST_SIZE: u64 = 4 << 20;
/// Most layers an image manifest may list.
pub const MAX_LAYERS: usize = 1000;
/// Most entries an index may list.
pub const MAX_INDEX_ENTRIES: usize = 1000;

/// Why manifest bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is larger than the {limit}-byte limit")]
    TooLarge { limit: u64 },
    #[error("schema 1 manifests are not supported")]
    Schema1,
    #[error("ambiguous manifest: it has both `layers` and `manifests`")]
    Ambiguous,
    #[error("unsupported manifest media type {0:?}")]
    UnsupportedMediaType(String),
    #[error("no matching manifest for {platform} in the manifest list entries")]
    NoMatchingManifest { platform: String },
    #[error("{0}")]
    Invalid(String),
}

/// What a manifest document is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ManifestKind {
    DockerManifest,
    DockerManifestList,
    OciManifest,
    OciIndex,
}

impl ManifestKind {
    pub fn from_media_type(mt: &str) -> Option<Self> {
        match mt {
            media_type::DOCKER_MANIFEST => Some(ManifestKind::DockerManifest),
            media_type::DOCKER_MANIFEST_LIST => Some(ManifestKind::DockerManifestList),
            media_type::OCI_MANIFEST => Some(ManifestKind::OciManifest),
            media_type::OCI_INDEX => Some(ManifestKind::OciIndex),
            _ => None,
        }
    }

    pub fn media_type(self) -> &'static str {
        match self {
            ManifestKind::DockerManifest => media_type::DOCKER_MANIFEST,
            ManifestKind::DockerManifestList => media_type::DOCKER_MANIFEST_LIST,
            ManifestKind::OciManifest => media_type::OCI_MANIFEST,
            ManifestKind::OciIndex => media_type::OCI_INDEX,
        }
    }

    pub fn is_index(self) -> bool {
        matches!(self, ManifestKind::DockerManifestList | ManifestKind::OciIndex)
    }
}

/// Whether `mt` names an image manifest or index (as opposed to an artifact).
pub fn is_manifest_media_type(mt: &str) -> bool {
    ManifestKind::from_media_type(mt).is_some()
}

/// Whether `mt` is a layer type Berth can unpack or skip.
pub fn is_layer_media_type(mt: &str) -> bool {
    use media_type::*;
    matches!(
        mt,
        DOCKER_LAYER_GZIP
            | DOCKER_LAYER_TAR
            | DOCKER_FOREIGN_LAYER_GZIP
            | OCI_LAYER_TAR
            | OCI_LAYER_GZIP
            | OCI_LAYER_ZSTD
            | OCI_NONDIST_TAR
            | OCI_NONDIST_GZIP
            | OCI_NONDIST_ZSTD
    )
}

/// A validated content descriptor: what a blob or manifest is, its digest
/// (sha256 only) and its size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

impl Descriptor {
    pub fn new(media_type: &str, digest: Digest, size: u64) -> Self {
        Descriptor {
            media_type: media_type.to_owned(),
            digest,
            size,
            urls: Vec::new(),
            annotations: BTreeMap::new(),
            platform: None,
        }
    }

    /// Layers that registries need not hold (Windows base layers): the
    /// engine may skip or fetch them from `urls`.
    pub fn is_foreign(&self) -> bool {
        self.media_type == media_type::DOCKER_FOREIGN_LAYER_GZIP
            || self.media_type.starts_with("application/vnd.oci.image.layer.nondistributable.")
    }
}

/// A platform-specific image: one config and its layers, bottom first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageManifest {
    pub kind: ManifestKind,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    pub annotations: BTreeMap<String, String>,
    pub subject: Option<Descriptor>,
}

impl ImageManifest {
    /// Serializes the manifest (for pushing an image built locally). Pushing
    /// a pulled image should send its original bytes instead.
    pub fn to_json(&self) -> Vec<u8> {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Out<'a> {
            schema_version: u32,
            media_type: &'a str,
            config: &'a Descriptor,
            layers: &'a [Descriptor],
            #[serde(skip_serializing_if = "BTreeMap::is_empty")]
            annotations: &'a BTreeMap<String, String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            subject: &'a Option<Descriptor>,
        }
        let out = Out {
            schema_version: 2,
            media_type: self.kind.media_type(),
            config: &self.config,
            layers: &self.layers,
            annotations: &self.annotations,
            subject: &self.subject,
        };
        serde_json::to_vec_pretty(&out).expect("a manifest of strings and numbers always serializes")
    }
}

/// A list of manifests, usually one per platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageIndex {
    pub kind: ManifestKind,
    pub manifests: Vec<Descriptor>,
    pub annotations: BTreeMap<String, String>,
}

/// A parsed manifest document.
// Few manifests are alive at once; boxing the image variant would only
// make every match on it noisier.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Manifest {
    Image(ImageManifest),
    Index(ImageIndex),
}

impl Manifest {
    pub fn kind(&self) -> ManifestKind {
        match self {
            Manifest::Image(m) => m.kind,
            Manifest::Index(i) => i.kind,
        }
    }

    pub fn media_type(&self) -> &'static str {
        self.kind().media_type()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDoc {
    schema_version: Option<i64>,
    media_type: Option<String>,
    config: Option<ObjectOnly<RawDescriptor>>,
    layers: Option<Vec<ObjectOnly<RawDescriptor>>>,
    manifests: Option<Vec<ObjectOnly<RawDescriptor>>>,
    annotations: Option<BTreeMap<String, String>>,
    subject: Option<ObjectOnly<RawDescriptor>>,
    /// Only schema 1 has it.
    fs_layers: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDescriptor {
    media_type: Option<String>,
    digest: Option<String>,
    size: Option<i64>,
    urls: Option<Vec<String>>,
    annotations: Option<BTreeMap<String, String>>,
    platform: Option<ObjectOnly<Platform>>,
}

/// A struct that may only be read from a JSON object. serde's derived
/// impls also accept an array, filling fields by position; Go's decoder
/// (and so every other registry client) does not, and a document that
/// parses differently in different clients is how content confusion starts.
pub(crate) struct ObjectOnly<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for ObjectOnly<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Visit<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(Visit(std::marker::PhantomData)).map(ObjectOnly)
    }
}

/// The media type without parameters, lowercased: `Application/JSON;
/// charset=utf-8` → `application/json`.
pub fn essence(content_type: &str) -> String {
    content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase()
}

fn is_schema1_type(mt: &str) -> bool {
    mt == media_type::DOCKER_SCHEMA1 || mt == media_type::DOCKER_SCHEMA1_SIGNED
}

/// Parses manifest bytes served with `content_type` (the response's
/// Content-Type, if any). A missing or generic Content-Type (`application/
/// json`, `text/plain`, `application/octet-stream`, or anything unknown)
/// defers to the document's `mediaType` field, then to its shape.
pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<Manifest, ManifestError> {
    if bytes.len() as u64 > MAX_MANIFEST_SIZE {
        return Err(ManifestError::TooLarge { limit: MAX_MANIFEST_SIZE });
    }
    let header = content_type.map(essence).filter(|h| !h.is_empty());
    if header.as_deref().is_some_and(is_schema1_type) {
        return Err(ManifestError::Schema1);
    }
    let ObjectOnly(doc): ObjectOnly<RawDoc> =
        serde_json::from_slice(bytes).map_err(|e| ManifestError::Invalid(format!("malformed manifest JSON: {e}")))?;
    if doc.schema_version == Some(1) || doc.fs_layers.is_some() {
        return Err(ManifestError::Schema1);
    }
    if doc.layers.is_some() && doc.manifests.is_some() {
        return Err(ManifestError::Ambiguous);
    }
    let kind = detect_kind(header.as_deref(), &doc)?;
    if doc.schema_version != Some(2) {
        return Err(ManifestError::Invalid(format!(
            "unsupported schemaVersion {}",
            doc.schema_version.map_or_else(|| "(missing)".to_owned(), |v| v.to_string())
        )));
    }
    let annotations = doc.annotations.unwrap_or_default();
    if kind.is_index() {
        if doc.config.is_some() || doc.layers.is_some() {
            return Err(ManifestError::Ambiguous);
        }
        let raw = doc.manifests.ok_or_else(|| ManifestError::Invalid("index has no `manifests`".into()))?;
        if raw.len() > MAX_INDEX_ENTRIES {
            return Err(ManifestError::Invalid(format!("index has {} entries, more than {MAX_INDEX_ENTRIES}", raw.len())));
        }
        let manifests = raw
            .into_iter()
            .enumerate()
            .map(|(i, d)| descriptor(d.0, &format!("manifests[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Manifest::Index(ImageIndex { kind, manifests, annotations }))
    } else {
        if doc.manifests.is_some() {
            return Err(ManifestError::Ambiguous);
        }
        let config = descriptor(
            doc.config.ok_or_else(|| ManifestError::Invalid("image manifest has no `config`".into()))?.0,
            "config",
        )?;
        if config.media_type != media_type::DOCKER_CONFIG && config.media_type != media_type::OCI_CONFIG {
            return Err(ManifestError::Invalid(format!(
                "unsupported config media type {:?}: not a container image",
                config.media_type
            )));
        }
        let raw = doc.layers.ok_or_else(|| ManifestError::Invalid("image manifest has no `layers`".into()))?;
        if raw.len() > MAX_LAYERS {
            return Err(ManifestError::Invalid(format!("image has {} layers, more than {MAX_LAYERS}", raw.len())));
        }
        let layers = raw
            .into_iter()
            .enumerate()
            .map(|(i, d)| {
                let what = format!("layers[{i}]");
                let d = descriptor(d.0, &what)?;
                if !is_layer_media_type(&d.media_type) {
                    return Err(ManifestError::Invalid(format!("{what}: unsupported layer media type {:?}", d.media_type)));
                }
                Ok(d)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let subject = doc.subject.map(|s| descriptor(s.0, "subject")).transpose()?;
        Ok(Manifest::Image(ImageManifest { kind, config, layers, annotations, subject }))
    }
}

fn detect_kind(header: Option<&str>, doc: &RawDoc) -> Result<ManifestKind, ManifestError> {
    let from_header = header.and_then(ManifestKind::from_media_type);
    let from_field = match doc.media_type.as_deref() {
        None | Some("") => None,
        Some(mt) if is_schema1_type(mt) => return Err(ManifestError::Schema1),
        Some(mt) => Some(ManifestKind::from_media_type(mt).ok_or_else(|| ManifestError::UnsupportedMediaType(mt.to_owned()))?),
    };
    match (from_header, from_field) {
        (Some(h), Some(f)) if h != f => Err(ManifestError::Invalid(format!(
            "served as {} but the document says {}",
            h.media_type(),
            f.media_type()
        ))),
        (Some(k), _) | (None, Some(k)) => Ok(k),
        (None, None) if doc.manifests.is_some() => Ok(ManifestKind::OciIndex),
        (None, None) if doc.config.is_some() || doc.layers.is_some() => Ok(ManifestKind::OciManifest),
        (None, None) => Err(ManifestError::Invalid("cannot tell what kind of manifest this is".into())),
    }
}

/// RFC 6838 type/subtype characters, bounded in length.
fn valid_media_type(mt: &str) -> bool {
    let ok = |s: &str| {
        !s.is_empty() && s.len() <= 127 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b))
    };
    matches!(mt.split_once('/'), Some((t, s)) if ok(t) && ok(s))
}

fn descriptor(raw: RawDescriptor, what: &str) -> Result<Descriptor, ManifestError> {
    let invalid = |msg: String| ManifestError::Invalid(format!("{what}: {msg}"));
    let media_type = raw.media_type.unwrap_or_default();
    if !valid_media_type(&media_type) {
        return Err(invalid(format!("invalid media type {media_type:?}")));
    }
    let digest_str = raw.digest.ok_or_else(|| invalid("missing digest".into()))?;
    let digest: Digest = match digest_str.split_once(':') {
        Some(("sha256", _)) => digest_str.parse().map_err(|e| invalid(format!("{e}")))?,
        Some((alg, _)) => return Err(invalid(format!("unsupported digest algorithm {alg:?}"))),
        None => return Err(invalid(format!("invalid digest {digest_str:?}"))),
    };
    let size = match raw.size {
        Some(s) if s >= 0 => s as u64,
        Some(s) => return Err(invalid(format!("negative size {s}"))),
        None => return Err(invalid("missing size".into())),
    };
    Ok(Descriptor {
        media_type,
        digest,
        size,
        urls: raw.urls.unwrap_or_default(),
        annotations: raw.annotations.unwrap_or_default(),
        platform: raw.platform.map(|p| p.0),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::registry::platform::{choose, Platform};
    use serde_json::json;

    pub(crate) fn d(n: u8) -> String {
        format!("sha256:{}", hex::encode([n; 32]))
    }

    pub(crate) fn image_json(layers: usize) -> serde_json::Value {
        json!({
            "schemaVersion": 2,
            "mediaType": media_type::DOCKER_MANIFEST,
            "config": {"mediaType": media_type::DOCKER_CONFIG, "digest": d(1), "size": 10},
            "layers": (0..layers).map(|i| json!({"mediaType": media_type::DOCKER_LAYER_GZIP, "digest": Digest::of(&i.to_le_bytes()).to_string(), "size": 100})).collect::<Vec<_>>(),
        })
    }

    fn bytes(v: &serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(v).unwrap()
    }

    #[test]
    fn docker_schema2_manifest_parses() {
        let m = parse(&bytes(&image_json(2)), Some(media_type::DOCKER_MANIFEST)).unwrap();
        let Manifest::Image(m) = m else { panic!("not an image") };
        assert_eq!(m.kind, ManifestKind::DockerManifest);
        assert_eq!(m.config.digest.to_string(), d(1));
        assert_eq!(m.layers.len(), 2);
        assert_eq!(m.layers[1].size, 100);
    }

    #[test]
    fn oci_manifest_without_media_type_field_is_detected_by_shape() {
        let mut v = image_json(1);
        v.as_object_mut().unwrap().remove("mediaType");
        v["config"]["mediaType"] = json!(media_type::OCI_CONFIG);
        v["layers"][0]["mediaType"] = json!(media_type::OCI_LAYER_ZSTD);
        for ct in [None, Some("application/json"), Some("text/plain; charset=utf-8")] {
            assert_eq!(parse(&bytes(&v), ct).unwrap().kind(), ManifestKind::OciManifest, "{ct:?}");
        }
    }

    #[test]
    fn media_type_field_decides_when_content_type_is_generic() {
        let v = image_json(1);
        assert_eq!(parse(&bytes(&v), Some("application/octet-stream")).unwrap().kind(), ManifestKind::DockerManifest);
        let idx = json!({"schemaVersion": 2, "mediaType": media_type::DOCKER_MANIFEST_LIST, "manifests": []});
        assert_eq!(parse(&bytes(&idx), None).unwrap().kind(), ManifestKind::DockerManifestList);
        let idx = json!({"schemaVersion": 2, "manifests": []});
        assert_eq!(parse(&bytes(&idx), None).unwrap().kind(), ManifestKind::OciIndex);
    }

    #[test]
    fn content_type_parameters_and_case_are_ignored() {
        let v = image_json(0);
        let ct = "Application/Vnd.Docker.Distribution.Manifest.V2+json; charset=utf-8";
        assert_eq!(parse(&bytes(&v), Some(ct)).unwrap().kind(), ManifestKind::DockerManifest);
    }

    #[test]
    fn header_and_field_disagreeing_is_refused() {
        let v = image_json(1);
        assert!(matches!(parse(&bytes(&v), Some(media_type::OCI_INDEX)), Err(ManifestError::Invalid(_))));
    }

    #[test]
    fn schema1_is_refused() {
        let v = json!({"schemaVersion": 1, "name": "x", "tag": "y", "fsLayers": [], "history": []});
        assert_eq!(parse(&bytes(&v), None), Err(ManifestError::Schema1));
        assert_eq!(parse(b"not even json", Some(media_type::DOCKER_SCHEMA1_SIGNED)), Err(ManifestError::Schema1));
        let v = json!({"schemaVersion": 2, "mediaType": media_type::DOCKER_SCHEMA1, "layers": []});
        assert_eq!(parse(&bytes(&v), None), Err(ManifestError::Schema1));
    }

    #[test]
    fn documents_with_layers_and_manifests_are_ambiguous() {
        let mut v = image_json(1);
        v["manifests"] = json!([]);
        for ct in [None, Some(media_type::DOCKER_MANIFEST), Some(media_type::OCI_INDEX)] {
            assert_eq!(parse(&bytes(&v), ct), Err(ManifestError::Ambiguous), "{ct:?}");
        }
        let idx = json!({"schemaVersion": 2, "mediaType": media_type::OCI_INDEX, "manifests": [], "config": image_json(0)["config"]});
        assert_eq!(parse(&bytes(&idx), None), Err(ManifestError::Ambiguous));
    }

    #[test]
    fn oversize_manifest_is_refused_before_parsing() {
        let big = vec![b' '; MAX_MANIFEST_SIZE as usize + 1];
        assert_eq!(parse(&big, None), Err(ManifestError::TooLarge { limit: MAX_MANIFEST_SIZE }));
    }

    #[test]
    fn bad_descriptors_are_refused() {
        let cases: Vec<(&str, serde_json::Value)> = vec![
            ("negative size", json!(-1)),
            ("missing size", serde_json::Value::Null),
            ("fraction", json!(1.5)),
        ];
        for (what, size) in cases {
            let mut v = image_json(1);
            if size.is_null() {
                v["layers"][0].as_object_mut().unwrap().remove("size");
            } else {
                v["layers"][0]["size"] = size;
            }
            assert!(parse(&bytes(&v), None).is_err(), "{what}");
        }
        for digest in ["sha512:abcd", "sha256:ABC", "nope", "", "sha256:../../etc/passwd"] {
            let mut v = image_json(1);
            v["layers"][0]["digest"] = json!(digest);
            assert!(matches!(parse(&bytes(&v), None), Err(ManifestError::Invalid(_))), "{digest}");
        }
        let mut v = image_json(1);
        v["layers"][0]["mediaType"] = json!("application/x-evil");
        assert!(parse(&bytes(&v), None).unwrap_err().to_string().contains("unsupported layer media type"));
        let mut v = image_json(1);
        v["config"]["mediaType"] = json!("application/vnd.cncf.helm.config.v1+json");
        assert!(parse(&bytes(&v), None).unwrap_err().to_string().contains("config media type"));
    }

    #[test]
    fn too_many_layers_are_refused() {
        let v = image_json(MAX_LAYERS + 1);
        assert!(parse(&bytes(&v), None).unwrap_err().to_string().contains("more than"));
        assert!(parse(&bytes(&image_json(MAX_LAYERS)), None).is_ok());
    }

    #[test]
    fn all_layer_media_types_are_accepted() {
        use media_type::*;
        for mt in [DOCKER_LAYER_GZIP, DOCKER_FOREIGN_LAYER_GZIP, OCI_LAYER_TAR, OCI_LAYER_GZIP, OCI_LAYER_ZSTD, OCI_NONDIST_TAR, OCI_NONDIST_GZIP, OCI_NONDIST_ZSTD] {
            let mut v = image_json(1);
            v["layers"][0]["mediaType"] = json!(mt);
            assert!(parse(&bytes(&v), None).is_ok(), "{mt}");
        }
    }

    #[test]
    fn duplicate_keys_and_wrong_types_are_refused() {
        let dup = br#"{"schemaVersion":2,"schemaVersion":2,"manifests":[]}"#;
        assert!(parse(dup, None).is_err());
        assert!(parse(br#"[]"#, None).is_err());
        // Positional arrays would fill the struct's fields in order.
        assert!(parse(br#"[2, "application/vnd.oci.image.index.v1+json", null, null, []]"#, None).is_err());
        let mut v = image_json(1);
        v["layers"][0] = json!([media_type::DOCKER_LAYER_GZIP, d(3), 1]);
        assert!(parse(&bytes(&v), None).is_err());
        assert!(parse(br#"{"schemaVersion":"2","manifests":[]}"#, None).is_err());
        assert!(parse(br#"{"schemaVersion":3,"manifests":[]}"#, None).is_err());
        assert!(parse(br#"{"schemaVersion":2}"#, None).is_err());
    }

    #[test]
    fn manifest_serializes_back_to_an_equal_manifest() {
        let Manifest::Image(m) = parse(&bytes(&image_json(3)), None).unwrap() else { panic!() };
        let again = parse(&m.to_json(), Some(media_type::DOCKER_MANIFEST)).unwrap();
        assert_eq!(again, Manifest::Image(m));
    }

    fn index(entries: &[(&str, &str, Option<&str>)]) -> ImageIndex {
        let manifests: Vec<_> = entries
            .iter()
            .enumerate()
            .map(|(i, (os, arch, variant))| {
                let mut p = json!({"os": os, "architecture": arch});
                if let Some(v) = variant {
                    p["variant"] = json!(v);
                }
                json!({"mediaType": media_type::OCI_MANIFEST, "digest": d(i as u8), "size": 1, "platform": p})
            })
            .collect();
        let v = json!({"schemaVersion": 2, "mediaType": media_type::OCI_INDEX, "manifests": manifests});
        match parse(&bytes(&v), None).unwrap() {
            Manifest::Index(i) => i,
            Manifest::Image(_) => panic!("not an index"),
        }
    }

    #[test]
    fn platform_choice_picks_the_matching_entry() {
        let idx = index(&[
            ("linux", "amd64", None),
            ("linux", "arm64", Some("v8")),
            ("linux", "arm", Some("v6")),
            ("linux", "arm", Some("v7")),
            ("unknown", "unknown", None),
        ]);
        let pick = |p: &str| choose(&idx, &Platform::parse(p).unwrap()).map(|d| d.digest.to_string());
        assert_eq!(pick("linux/amd64").unwrap(), d(0));
        assert_eq!(pick("linux/arm64").unwrap(), d(1));
        assert_eq!(pick("linux/arm64/v8").unwrap(), d(1));
        assert_eq!(pick("linux/arm/v7").unwrap(), d(3));
        assert_eq!(pick("linux/arm").unwrap(), d(3));
        assert_eq!(pick("linux/arm/v6").unwrap(), d(2));
        let e = pick("linux/s390x").unwrap_err();
        assert_eq!(e.to_string(), "no matching manifest for linux/s390x in the manifest list entries");
        let e = pick("windows/amd64").unwrap_err();
        assert_eq!(e.to_string(), "no matching manifest for windows/amd64 in the manifest list entries");
    }

    #[test]
    fn arm_v7_host_falls_back_to_v6() {
        let idx = index(&[("linux", "amd64", None), ("linux", "arm", Some("v6"))]);
        let got = choose(&idx, &Platform::parse("linux/arm/v7").unwrap()).unwrap();
        assert_eq!(got.digest.to_string(), d(1));
    }

    #[test]
    fn attestation_entries_are_never_chosen() {
        let v = json!({"schemaVersion": 2, "manifests": [
            {"mediaType": "application/vnd.in-toto+json", "digest": d(1), "size": 1},
            {"mediaType": media_type::OCI_MANIFEST, "digest": d(2), "size": 1, "platform": {"os": "linux", "architecture": "amd64"}},
        ]});
        let Manifest::Index(idx) = parse(&bytes(&v), None).unwrap() else { panic!() };
        assert_eq!(choose(&idx, &Platform::default()).unwrap().digest.to_string(), d(2));
    }
}

//! Client tests against the in-process FAKE registry (`fake.rs`): auth
//! flows, verification, hostile replies, resume, mirrors, push, listing.
//! The real registry is exercised by the engine's integration tests.

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::json;

use super::client::pick_child;
use super::fake::{DigestHeader, FakeAuth, FakeRegistry};
use super::manifest::{media_type, Descriptor, Manifest, MAX_MANIFEST_SIZE};
use super::*;
use crate::digest::Digest;
use crate::reference::Reference;

fn client() -> RegistryClient {
    RegistryClient::new(RegistryConfig::default()).unwrap()
}

fn basic(user: &str, password: &str) -> Credentials {
    Credentials::Basic { username: user.into(), password: password.into() }
}

/// An image (config + one layer) stored in `fake` under `repo`; returns the
/// manifest bytes, its digest, the config and the layer.
struct Image {
    manifest: Vec<u8>,
    digest: Digest,
    config: Vec<u8>,
    layer: Vec<u8>,
}

fn store_image(fake: &FakeRegistry, repo: &str, tag: Option<&str>, arch: &str) -> Image {
    let config = serde_json::to_vec(&json!({
        "architecture": arch, "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [Digest::of(arch.as_bytes()).to_string()]},
        "config": {"Cmd": ["/bin/sh"]}
    }))
    .unwrap();
    let layer = format!("layer for {arch} ").repeat(50).into_bytes();
    let config_digest = fake.put_blob(&config);
    let layer_digest = fake.put_blob(&layer);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media_type::DOCKER_MANIFEST,
        "config": {"mediaType": media_type::DOCKER_CONFIG, "digest": config_digest.to_string(), "size": config.len()},
        "layers": [{"mediaType": media_type::DOCKER_LAYER_GZIP, "digest": layer_digest.to_string(), "size": layer.len()}],
    }))
    .unwrap();
    let digest = fake.add_manifest(repo, tag, &manifest, media_type::DOCKER_MANIFEST);
    Image { manifest, digest, config, layer }
}

fn index_json(entries: &[(&Digest, usize, &str, &str, Option<&str>)]) -> Vec<u8> {
    let manifests: Vec<_> = entries
        .iter()
        .map(|(d, size, mt, arch, variant)| {
            let mut p = json!({"os": "linux", "architecture": arch});
            if let Some(v) = variant {
                p["variant"] = json!(v);
            }
            json!({"mediaType": mt, "digest": d.to_string(), "size": size, "platform": p})
        })
        .collect();
    serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": media_type::OCI_INDEX, "manifests": manifests})).unwrap()
}

fn reference(fake: &FakeRegistry, rest: &str) -> Reference {
    Reference::parse(&format!("{}/{rest}", fake.domain())).unwrap()
}

async fn collect(mut s: BlobStream) -> Result<Vec<u8>, RegistryError> {
    let mut out = Vec::new();
    while let Some(chunk) = s.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

#[tokio::test]
async fn pull_by_tag_without_auth_resolves_and_verifies() {
    let fake = FakeRegistry::start().await;
    let img = store_image(&fake, "app", Some("1"), "amd64");
    let r = client().resolve(&reference(&fake, "app:1"), &Platform::default(), &Credentials::Anonymous).await.unwrap();
    assert_eq!(r.manifest_digest, img.digest);
    assert_eq!(r.repo_digest(), &img.digest);
    assert_eq!(r.index_digest, None);
    assert_eq!(&r.manifest[..], &img.manifest[..]);
    assert_eq!(r.media_type, media_type::DOCKER_MANIFEST);
    assert_eq!(r.layers.len(), 1);
    // 127.0.0.1 is insecure by default: https was tried, then http served.
    assert_eq!(r.endpoint().url.scheme(), "http");
    let config = client().fetch_config(&r.repository, &r.config).await.unwrap();
    assert_eq!(&config.raw()[..], &img.config[..]);
    assert_eq!(config.architecture, "amd64");
}

#[tokio::test]
async fn token_auth_flow_fetches_a_token_with_basic_credentials_and_caches_it() {
    let fake = FakeRegistry::start().await;
    fake.state().auth = FakeAuth::Bearer { user: Some(("alice".into(), "s3cret".into())) };
    let img = store_image(&fake, "team/app", Some("latest"), "amd64");
    let c = client();
    let creds = basic("alice", "s3cret");
    let r = c.resolve(&reference(&fake, "team/app"), &Platform::default(), &creds).await.unwrap();
    assert_eq!(r.manifest_digest, img.digest);

    let log = fake.log();
    let manifest_gets: Vec<_> = log.iter().filter(|l| l.path.contains("/manifests/")).collect();
    assert_eq!(manifest_gets[0].authorization, None, "first try is unauthenticated");
    assert_eq!(manifest_gets[1].authorization.as_deref(), Some("Bearer tok:repository:team/app:pull"));
    let token_req = log.iter().find(|l| l.path.starts_with("/token")).unwrap();
    assert!(token_req.authorization.as_deref().unwrap().starts_with("Basic "));
    assert!(token_req.path.contains("service=fake-registry"));
    assert_eq!(fake.state().token_requests, ["repository:team/app:pull"]);

    // Blob fetches and a second resolve reuse the cached token.
    let layer = collect(c.fetch_blob(&r.repository, &r.layers[0], 0).await.unwrap()).await.unwrap();
    assert_eq!(layer, img.layer);
    c.resolve(&reference(&fake, "team/app"), &Platform::default(), &creds).await.unwrap();
    assert_eq!(fake.state().token_requests.len(), 1);
    let unauthenticated = fake.log().iter().filter(|l| l.path.starts_with("/v2/team") && l.authorization.is_none()).count();
    assert_eq!(unauthenticated, 1);
}

#[tokio::test]
async fn tokens_are_not_shared_between_credentials() {
    let fake = FakeRegistry::start().await;
    fake.state().auth = FakeAuth::Bearer { user: Some(("alice".into(), "s3cret".into())) };
    store_image(&fake, "app", Some("latest"), "amd64");
    let c = client();
    c.resolve(&reference(&fake, "app"), &Platform::default(), &basic("alice", "s3cret")).await.unwrap();
    let e = c.resolve(&reference(&fake, "app"), &Platform::default(), &Credentials::Anonymous).await.unwrap_err();
    assert!(e.is_not_found(), "{e}");
}

#[tokio::test]
async fn wrong_password_is_unauthorized() {
    let fake = FakeRegistry::start().await;
    fake.state().auth = FakeAuth::Bearer { user: Some(("alice".into(), "s3cret".into())) };
    store_image(&fake, "app", Some("latest"), "amd64");
    let e = client().resolve(&reference(&fake, "app"), &Platform::default(), &basic("alice", "nope")).await.unwrap_err();
    assert!(e.is_unauthorized(), "{e}");
    assert_eq!(e.to_string(), "unauthorized: incorrect username or password");
}

#[tokio::test]
async fn anonymous_pull_of_a_protected_repository_is_pull_access_denied() {
    let fake = FakeRegistry::start().await;
    fake.state().auth = FakeAuth::Bearer { user: Some(("alice".into(), "s3cret".into())) };
    store_image(&fake, "private", Some("latest"), "amd64");
    let e = client().resolve(&reference(&fake, "private"), &Platform::default(), &Credentials::Anonymous).await.unwrap_err();
    assert!(e.is_not_found());
    assert_eq!(
        e.to_string(),
        format!(
            "pull access denied for {}/private, repository does not exist or may require 'docker login': \
             denied: requested access to the resource is denied",
            fake.domain()
        )
    );
}

#[tokio::test]
async fn basic_auth_challenge_is_answered_with_the_password() {
    let fake = FakeRegistry::start().await;
    fake.state().auth = FakeAuth::Basic { user: "bob".into(), password: "pw".into() };
    let img = store_image(&fake, "app", Some("latest"), "amd64");
    let c = client();
    let r = c.resolve(&reference(&fake, "app"), &Platform::default(), &basic("bob", "pw")).await.unwrap();
    assert_eq!(r.manifest_digest, img.digest);
    // Once the origin is known to want Basic, later requests send it up front.
    let layer = collect(c.fetch_blob(&r.repository, &r.layers[0], 0).await.unwrap()).await.unwrap();
    assert_eq!(layer, img.layer);
    let blob_gets: Vec<_> = fake.log().into_iter().filter(|l| l.path.contains("/blobs/")).collect();
    assert_eq!(blob_gets.len(), 1);
    assert!(blob_gets[0].authorization.as_deref().unwrap().starts_with("Basic "));
    // Without credentials the 401 stands.
    let e = client().resolve(&reference(&fake, "app"), &Platform::default(), &Credentials::Anonymous).await.unwrap_err();
    assert!(e.is_not_found(), "{e}");
}

#[tokio::test]
async fn missing_tag_and_missing_repository_read_like_dockerd() {
    let fake = FakeRegistry::start().await;
    store_image(&fake, "app", Some("1"), "amd64");
    let e = client().resolve(&reference(&fake, "app:nope"), &Platform::default(), &Credentials::Anonymous).await.unwrap_err();
    assert!(e.is_not_found());
    assert_eq!(e.to_string(), format!("manifest for {}/app:nope not found: manifest unknown: manifest unknown", fake.domain()));
    let e = client().resolve(&reference(&fake, "other"), &Platform::default(), &Credentials::Anonymous).await.unwrap_err();
    assert!(e.is_not_found());
    assert_eq!(
        e.to_string(),
        format!("repository {}/other not found: name unknown: repository name not known to registry", fake.domain())
    );
}

#[tokio::test]
async fn wrong_docker_content_digest_header_is_refused() {
    let fake = FakeRegistry::start().await;
    let img = store_image(&fake, "app", None, "amd64");
    let liar = Digest::of(b"something else");
    fake.put_manifest("app", "latest", &img.manifest, Some(media_type::DOCKER_MANIFEST), DigestHeader::Wrong(liar.clone()));
    let e = client().resolve(&reference(&fake, "app"), &Platform::default(), &Credentials::Anonymous).await.unwrap_err();
    match e {
        RegistryError::DigestMismatch { expected, actual } => {
            assert_eq!(expected, liar);
            assert_eq!(actual, img.digest);
        }
        other => panic!("expected a digest mismatch, got {other}"),
    }
}

#[tokio::test]
async fn missing_digest_header_is_fine_the_digest_is_computed() {
    let fake = FakeRegistry::start().await;
    let img = store_image(&fake, "app", None, "amd64");
    fake.put_manifest("app", "latest", &img.manifest, None, DigestHeader::Absent);
    let r = client().resolve(&reference(&fake, "app"), &Platform::default(), &Credentials::Anonymous).await.unwrap();
    assert_eq!(r.manifest_digest, img.digest);
}

#[tokio::test]
async fn pull_by_digest_refuses_content_that_hashes_otherwise() {
    let fake = FakeRegistry::start().await;
    let img = store_image(&fake, "app", None, "amd64");
    let other = store_image(&fake, "app", None, "arm64");
    // The registry serves the arm64 manifest for the amd64 digest, and
    // even claims the requested digest in the header.
    fake.put_manifest("app", &img.digest.to_string(), &other.manifest, Some(media_type::DOCKER_MANIFEST), DigestHeader::Wrong(img.digest.clone()));
    let r = reference(&fake, &format!("app@{}", img.digest));
    let e = client().resolve(&r, &Platform::default(), &Credentials::Anonymous).await.unwrap_err();
    assert!(matches!(e, RegistryError::DigestMismatch { ref expected, ref actual } if *expected == img.digest && *actual == other.digest), "{e}");
}

#[tokio::test]
async fn pull_by_digest_with_a_tag_uses_the_digest() {
    let fake = FakeRegistry::start().await;
    let img = store_image(&fake, "app", None, "amd64");
    let r = reference(&fake, &format!("app:ignored@{}", img.digest));
    let got = client().resolve(&r, &Platform::default(), &Credentials::Anonymous).await.unwrap();
    assert_eq!(got.manifest_digest, img.digest);
}

#[tokio::test]
async fn oversize_manifest_is_refused() {
    let fake = FakeRegistry::start().await;
    let mut big = serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": []})).unwrap();
    big.resize(MAX_MANIFEST_SIZE as usize + 1, b' ');
    fake.put_manifest("app", "latest", &big, Some(media_type::OCI_INDEX), DigestHeader::Correct);
    for chunked in [false, true] {
        fake.state().chunked = chunked;
        let e = client().resolve(&reference(&fake, "app"), &Platform::default(), &Credentials::Anonymous).await.unwrap_err();
        assert!(matches!(e, RegistryError::TooLarge { .. }), "chunked={chunked}: {e}");
    }
}

#[tokio::test]
async fn ambiguous_manifest_is_refused() {
    let fake = FakeRegistry::start().await;
    let img = store_image(&fake, "app", None, "amd64");
    let mut doc: serde_json::Value = serde_json::from_slice(&img.manifest).unwrap();
    doc["manifests"] = json!([]);
    fake.add_manifest("app", Some("latest"), &serde_json::to_vec(&doc).unwrap(), media_type::DOCKER_MANIFEST);
    let e = client().resolve(&reference(&fake, "app"), &Platform::default(), &Credentials::Anonymous).await.unwrap_err();
    assert!(matches!(e, RegistryError::InvalidManifest(ref m) if m.contains("ambiguous")), "{e}");
}

#[tokio::test]
async fn schema1_is_refused_with_the_dockerd_message() {
    let fake = FakeRegistry::start().await;
    let doc = br#"{"schemaVersion":1,"name":"app","tag":"old","fsLayers":[],"history":[],"signatures":[]}"#;
    fake.add_manifest("app", Some("old"), doc, media_type::DOCKER_SCHEMA1_SIGNED);
    let e = client().resolve(&reference(&fake, "app:old"), &Platform::default(), &Credentials::Anonymous).await.unwrap_err();
    assert!(matches!(e, RegistryError::Schema1NotSupported(_)));
    let msg = e.to_string();
    assert!(msg.contains("schema 1 support has been removed"), "{msg}");
    assert!(msg.contains(&format!("Suggest the author of {}/app:old", fake.domain())), "{msg}");
}

#[tokio::test]
async fn index_platform_choice_and_repo_digest() {
    let fake = FakeRegistry::start().await;
    let amd = store_image(&fake, "multi", None, "amd64");
    let arm64 = store_image(&fake, "multi", None, "arm64");
    let armv7 = store_image(&fake, "multi", None, "arm");
    let mt = media_type::DOCKER_MANIFEST;
    let index = index_json(&[
        (&amd.digest, amd.manifest.len(), mt, "amd64", None),
        (&arm64.digest, arm64.manifest.len(), mt, "arm64", Some("v8")),
        (&armv7.digest, armv7.manifest.len(), mt, "arm", Some("v7")),
    ]);
    let index_digest = fake.add_manifest("multi", Some("latest"), &index, media_type::OCI_INDEX);
    let c = client();
    for (platform, want) in [("linux/amd64", &amd), ("linux/arm64", &arm64), ("linux/arm64/v8", &arm64), ("linux/arm/v7", &armv7), ("linux/arm", &armv7)] {
        let r = c.resolve(&reference(&fake, "multi"), &Platform::parse(platform).unwrap(), &Credentials::Anonymous).await.unwrap();
        assert_eq!(r.manifest_digest, want.digest, "{platform}");
        assert_eq!(r.index_digest.as_ref(), Some(&index_digest));
        assert_eq!(r.repo_digest(), &index_digest);
        assert_eq!(r.index.as_ref().map(|(b, _)| b.len()), Some(index.len()));
    }
    let e = c.resolve(&reference(&fake, "multi"), &Platform::parse("linux/s390x").unwrap(), &Credentials::Anonymous).await.unwrap_err();
    assert!(e.is_not_found());
    assert_eq!(e.to_string(), "no matching manifest for linux/s390x in the manifest list entries");
}

#[tokio::test]
async fn index_entry_whose_content_has_another_digest_is_refused() {
    let fake = FakeRegistry::start().await;
    let amd = store_image(&fake, "multi", None, "amd64");
    let other = store_image(&fake, "multi", None, "arm64");
    fake.put_manifest("multi", &amd.digest.to_string(), &other.manifest, Some(media_type::DOCKER_MANIFEST), DigestHeader::Absent);
    let index = index_json(&[(&amd.digest, amd.manifest.len(), media_type::DOCKER_MANIFEST, "amd64", None)]);
    fake.add_manifest("multi", Some("latest"), &index, media_type::OCI_INDEX);
    let e = client().resolve(&reference(&fake, "multi"), &Platform::default(), &Credentials::Anonymous).await.unwrap_err();
    assert!(matches!(e, RegistryError::DigestMismatch { .. }), "{e}");
}

#[tokio::test]
async fn one_level_of_nested_index_is_followed_but_not_two() {
    let fake = FakeRegistry::start().await;
    let img = store_image(&fake, "nest", None, "amd64");
    let inner = index_json(&[(&img.digest, img.manifest.len(), media_type::DOCKER_MANIFEST, "amd64", None)]);
    let inner_digest = fake.add_manifest("nest", None, &inner, media_type::OCI_INDEX);
    let outer = index_json(&[(&inner_digest, inner.len(), media_type::OCI_INDEX, "amd64", None)]);
    let outer_digest = fake.add_manifest("nest", Some("one"), &outer, media_type::OCI_INDEX);
    let r = client().resolve(&reference(&fake, "nest:one"), &Platform::default(), &Credentials::Anonymous).await.unwrap();
    assert_eq!(r.manifest_digest, img.digest);
    assert_eq!(r.index_digest, Some(outer_digest.clone()));

    let outermost = index_json(&[(&outer_digest, outer.len(), media_type::OCI_INDEX, "amd64", None)]);
    fake.add_manifest("nest", Some("two"), &outermost, media_type::OCI_INDEX);
    let e = client().resolve(&reference(&fake, "nest:two"), &Platform::default(), &Credentials::Anonymous).await.unwrap_err();
    assert!(matches!(e, RegistryError::InvalidManifest(ref m) if m.contains("nested")), "{e}");
}

#[test]
fn self_referencing_index_is_refused() {
    let own = Digest::of(b"the index itself");
    let index = ImageIndex {
        kind: ManifestKind::OciIndex,
        manifests: vec![Descriptor {
            platform: Some(Platform::default()),
            ..Descriptor::new(media_type::OCI_INDEX, own.clone(), 10)
        }],
        annotations: Default::default(),
    };
    let e = pick_child(&index, &Platform::default(), &[own]).unwrap_err();
    assert!(e.to_string().contains("refers to itself"), "{e}");
}

#[tokio::test]
async fn blob_resume_uses_range_and_206() {
    let fake = FakeRegistry::start().await;
    let img = store_image(&fake, "app", Some("latest"), "amd64");
    let c = client();
    let r = c.resolve(&reference(&fake, "app"), &Platform::default(), &Credentials::Anonymous).await.unwrap();
    let got = collect(c.fetch_blob(&r.repository, &r.layers[0], 100).await.unwrap()).await.unwrap();
    assert_eq!(got, img.layer[100..]);
    let last = fake.log().into_iter().rev().find(|l| l.path.contains("/blobs/")).unwrap();
    assert!(last.path.contains(&img_layer_digest(&r)));
}

fn img_layer_digest(r: &Resolved) -> String {
    r.layers[0].digest.to_string()
}

#[tokio::test]
async fn blob_resume_when_the_server_ignores_range_skips_the_prefix() {
    let fake = FakeRegistry::start().await;
    fake.state().ignore_range = true;
    let img = store_image(&fake, "app", Some("latest"), "amd64");
    let c = client();
    let r = c.resolve(&reference(&fake, "app"), &Platform::default(), &Credentials::Anonymous).await.unwrap();
    for chunked in [false, true] {
        fake.state().chunked = chunked;
        let got = collect(c.fetch_blob(&r.repository, &r.layers[0], 300).await.unwrap()).await.unwrap();
        assert_eq!(got, img.layer[300..], "chunked={chunked}");
    }
    let done = collect(c.fetch_blob(&r.repository, &r.layers[0], img.layer.len() as u64).await.unwrap()).await.unwrap();
    assert!(done.is_empty());
    assert!(c.fetch_blob(&r.repository, &r.layers[0], img.layer.len() as u64 + 1).await.is_err());
}

#[tokio::test]
async fn blob_longer_than_declared_is_refused() {
    let fake = FakeRegistry::start().await;
    store_image(&fake, "app", Some("latest"), "amd64");
    fake.state().blob_extra = b"trailing garbage".to_vec();
    let c = client();
    let r = c.resolve(&reference(&fake, "app"), &Platform::default(), &Credentials::Anonymous).await.unwrap();
    // With a Content-Length the request is refused before reading.
    let e = c.fetch_blob(&r.repository, &r.layers[0], 0).await.unwrap_err();
    assert!(matches!(e, RegistryError::TooLarge { .. }), "{e}");
    // Chunked, the stream fails once the declared size is passed.
    fake.state().chunked = true;
    let e = collect(c.fetch_blob(&r.repository, &r.layers[0], 0).await.unwrap()).await.unwrap_err();
    assert!(matches!(e, RegistryError::TooLarge { .. }), "{e}");
}

#[tokio::test]
async fn blob_shorter_than_declared_is_truncated() {
    let fake = FakeRegistry::start().await;
    let img = store_image(&fake, "app", Some("latest"), "amd64");
    let c = client();
    let r = c.resolve(&reference(&fake, "app"), &Platform::default(), &Credentials::Anonymous).await.unwrap();
    let mut desc = r.layers[0].clone();
    desc.size += 10;
    let e = collect(c.fetch_blob(&r.repository, &desc, 0).await.unwrap()).await.unwrap_err();
    match e {
        RegistryError::Truncated { received, expected, .. } => {
            assert_eq!(received, img.layer.len() as u64);
            assert_eq!(expected, desc.size);
        }
        other => panic!("expected truncation, got {other}"),
    }
}

#[tokio::test]
async fn redirected_blob_does_not_carry_authorization_to_the_other_host() {
    let storage = FakeRegistry::start().await;
    let fake = FakeRegistry::start().await;
    fake.state().auth = FakeAuth::Bearer { user: None };
    let img = store_image(&fake, "app", Some("latest"), "amd64");
    storage.put_blob(&img.layer);
    fake.state().redirect_blobs = Some(storage.url());
    let c = client();
    let r = c.resolve(&reference(&fake, "app"), &Platform::default(), &Credentials::Anonymous).await.unwrap();
    let got = collect(c.fetch_blob(&r.repository, &r.layers[0], 0).await.unwrap()).await.unwrap();
    assert_eq!(got, img.layer);
    let registry_get = fake.log().into_iter().rev().find(|l| l.path.contains("/blobs/")).unwrap();
    assert!(registry_get.authorization.is_some(), "the registry itself got the token");
    let storage_log = storage.log();
    assert_eq!(storage_log.len(), 1);
    assert_eq!(storage_log[0].authorization, None, "the token leaked to another host");
}

#[tokio::test]
async fn hub_names_use_mirrors_in_order_then_hub() {
    let empty_mirror = FakeRegistry::start().await;
    empty_mirror.state().know_nothing = true;
    let mirror = FakeRegistry::start().await;
    let hub = FakeRegistry::start().await;
    let in_mirror = store_image(&mirror, "library/redis", Some("7"), "amd64");
    let in_hub = store_image(&hub, "library/redis", Some("8"), "amd64");
    let c = RegistryClient::new(RegistryConfig {
        mirrors: vec![empty_mirror.url(), mirror.url()],
        hub_registry: hub.url(),
        ..RegistryConfig::default()
    })
    .unwrap();
    let r = c.resolve(&Reference::parse("redis:7").unwrap(), &Platform::default(), &Credentials::Anonymous).await.unwrap();
    assert_eq!(r.manifest_digest, in_mirror.digest);
    assert_eq!(r.endpoint().url.as_str(), format!("{}/", mirror.url()));
    assert!(r.endpoint().mirror);
    assert!(empty_mirror.log().iter().any(|l| l.path.contains("/v2/library/redis/manifests/7")));

    // A tag no mirror has comes from Hub.
    let r = c.resolve(&Reference::parse("redis:8").unwrap(), &Platform::default(), &Credentials::Anonymous).await.unwrap();
    assert_eq!(r.manifest_digest, in_hub.digest);
    assert!(!r.endpoint().mirror);

    // Hub's own answer is final.
    let e = c.resolve(&Reference::parse("redis:9").unwrap(), &Platform::default(), &Credentials::Anonymous).await.unwrap_err();
    assert_eq!(e.to_string(), "manifest for redis:9 not found: manifest unknown: manifest unknown");
}

#[tokio::test]
async fn unreachable_mirror_falls_back_too() {
    let hub = FakeRegistry::start().await;
    let img = store_image(&hub, "user/app", Some("latest"), "amd64");
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let c = RegistryClient::new(RegistryConfig {
        mirrors: vec![format!("http://{dead}")],
        hub_registry: hub.url(),
        ..RegistryConfig::default()
    })
    .unwrap();
    let r = c.resolve(&Reference::parse("user/app").unwrap(), &Platform::default(), &Credentials::Anonymous).await.unwrap();
    assert_eq!(r.manifest_digest, img.digest);
}

#[tokio::test]
async fn push_uploads_blobs_and_manifest_with_push_scope() {
    let fake = FakeRegistry::start().await;
    fake.state().auth = FakeAuth::Bearer { user: Some(("alice".into(), "pw".into())) };
    let c = client();
    let creds = basic("alice", "pw");
    let target = reference(&fake, "pushed:v1");
    let repo = c.repository(&target, &creds, true).await.unwrap();

    let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let layer = b"layer bytes".repeat(100);
    let config_digest = Digest::of(config);
    let layer_digest = Digest::of(&layer);
    assert!(!c.blob_exists(&repo, &layer_digest).await.unwrap());
    c.push_blob(&repo, &config_digest, config.len() as u64, Bytes::from_static(config)).await.unwrap();
    let stream = futures_util::stream::iter(layer.chunks(64).map(|c| Ok::<_, std::io::Error>(Bytes::copy_from_slice(c))).collect::<Vec<_>>());
    c.push_blob(&repo, &layer_digest, layer.len() as u64, reqwest::Body::wrap_stream(stream)).await.unwrap();
    assert!(c.blob_exists(&repo, &layer_digest).await.unwrap());
    let log = fake.log();
    assert!(log.iter().any(|l| l.method == axum::http::Method::POST && l.path.contains("/blobs/uploads/")));
    assert!(log.iter().any(|l| l.method == axum::http::Method::PUT && l.path.contains(&format!("digest={}", layer_digest).replace(':', "%3A"))));

    let manifest = ImageManifest {
        kind: ManifestKind::DockerManifest,
        config: Descriptor::new(media_type::DOCKER_CONFIG, config_digest, config.len() as u64),
        layers: vec![Descriptor::new(media_type::DOCKER_LAYER_GZIP, layer_digest, layer.len() as u64)],
        annotations: Default::default(),
        subject: None,
    };
    let bytes = Bytes::from(manifest.to_json());
    let digest = c.put_manifest(&repo, "v1", media_type::DOCKER_MANIFEST, bytes.clone()).await.unwrap();
    assert_eq!(digest, Digest::of(&bytes));
    let token_requests = fake.state().token_requests.clone();
    assert!(!token_requests.is_empty());
    assert!(token_requests.iter().all(|s| s.starts_with("repository:pushed:pull,push")), "{token_requests:?}");
    assert!(c.put_manifest(&repo, "bad tag", media_type::DOCKER_MANIFEST, bytes).await.is_err());

    // What was pushed pulls back.
    let r = c.resolve(&target, &Platform::default(), &creds).await.unwrap();
    assert_eq!(r.manifest_digest, digest);
    let got = c.fetch_blob_bytes(&r.repository, &r.layers[0], 1 << 20).await.unwrap();
    assert_eq!(&got[..], &layer[..]);
}

#[tokio::test]
async fn push_without_credentials_is_unauthorized() {
    let fake = FakeRegistry::start().await;
    fake.state().auth = FakeAuth::Bearer { user: Some(("alice".into(), "pw".into())) };
    let c = client();
    let repo = c.repository(&reference(&fake, "x"), &Credentials::Anonymous, true).await.unwrap();
    let e = c.push_blob(&repo, &Digest::of(b"a"), 1, Bytes::from_static(b"a")).await.unwrap_err();
    assert!(e.is_unauthorized(), "{e}");
}

#[tokio::test]
async fn catalog_and_tags_follow_pagination() {
    let fake = FakeRegistry::start().await;
    fake.state().catalog = vec!["a".into(), "b/c".into(), "d".into(), "e".into(), "f".into()];
    store_image(&fake, "a", Some("1"), "amd64");
    store_image(&fake, "a", Some("2"), "arm64");
    let c = client();
    let repos = c.catalog(&fake.domain(), &Credentials::Anonymous).await.unwrap();
    assert_eq!(repos, ["a", "b/c", "d", "e", "f"]);
    let repo = c.repository(&reference(&fake, "a"), &Credentials::Anonymous, false).await.unwrap();
    assert_eq!(c.tags(&repo).await.unwrap(), ["1", "2"]);
}

#[tokio::test]
async fn hub_search_reads_the_index_answer() {
    let index = FakeRegistry::start().await;
    index.state().search = Some(json!({
        "num_results": 2, "query": "redis",
        "results": [
            {"name": "redis", "description": "Redis is a data store", "star_count": 10, "is_official": true, "is_automated": false},
            {"name": "user/redis", "description": "", "star_count": 0}
        ]
    }));
    let c = RegistryClient::new(RegistryConfig { hub_index: index.url(), ..RegistryConfig::default() }).unwrap();
    let results = c.hub_search("redis", 25).await.unwrap();
    assert_eq!(results.len(), 2);
    assert_eq!(results[0].name, "redis");
    assert!(results[0].is_official);
    assert_eq!(results[1].star_count, 0);
    let req = index.log().into_iter().find(|l| l.path.starts_with("/v1/search")).unwrap();
    assert!(req.path.contains("q=redis") && req.path.contains("n=25"), "{}", req.path);
}

#[tokio::test]
async fn x_registry_auth_credentials_work_end_to_end() {
    use base64::Engine as _;
    let fake = FakeRegistry::start().await;
    fake.state().auth = FakeAuth::Bearer { user: Some(("alice".into(), "s3cret".into())) };
    store_image(&fake, "app", Some("latest"), "amd64");
    let header = base64::engine::general_purpose::URL_SAFE
        .encode(format!(r#"{{"username":"alice","password":"s3cret","serveraddress":"{}"}}"#, fake.domain()));
    let creds = Credentials::from_x_registry_auth(&header).unwrap();
    client().resolve(&reference(&fake, "app"), &Platform::default(), &creds).await.unwrap();
}

#[tokio::test]
async fn identity_token_is_exchanged_with_the_oauth_refresh_grant() {
    let fake = FakeRegistry::start().await;
    fake.state().auth = FakeAuth::Bearer { user: Some(("alice".into(), "pw".into())) };
    let img = store_image(&fake, "app", Some("latest"), "amd64");
    let r = client()
        .resolve(&reference(&fake, "app"), &Platform::default(), &Credentials::IdentityToken("refresh-ok".into()))
        .await
        .unwrap();
    assert_eq!(r.manifest_digest, img.digest);
    let post = fake.log().into_iter().find(|l| l.path.starts_with("/token")).unwrap();
    assert_eq!(post.method, axum::http::Method::POST);
    let e = client()
        .resolve(&reference(&fake, "app"), &Platform::default(), &Credentials::IdentityToken("stale".into()))
        .await
        .unwrap_err();
    assert!(e.is_unauthorized(), "{e}");
}

#[tokio::test]
async fn registry_token_is_sent_as_is() {
    let fake = FakeRegistry::start().await;
    fake.state().auth = FakeAuth::Bearer { user: Some(("alice".into(), "pw".into())) };
    store_image(&fake, "app", Some("latest"), "amd64");
    let creds = Credentials::RegistryToken("tok:repository:app:pull".into());
    client().resolve(&reference(&fake, "app"), &Platform::default(), &creds).await.unwrap();
    assert!(fake.state().token_requests.is_empty());
}

#[test]
fn parsed_index_from_the_fake_helpers_is_an_index() {
    let d = Digest::of(b"x");
    let bytes = index_json(&[(&d, 1, media_type::DOCKER_MANIFEST, "amd64", None)]);
    assert!(matches!(manifest::parse(&bytes, None).unwrap(), Manifest::Index(_)));
}

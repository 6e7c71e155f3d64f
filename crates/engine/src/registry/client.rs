//! The distribution-spec client: which endpoints serve a registry, sending
//! authenticated requests, and the operations the engine needs (resolve a
//! reference to a platform's manifest, stream blobs with resume, push,
//! list catalog and tags, search Docker Hub).
//!
//! Verifies everything it parses (manifest digests, sizes); blob digests
//! are verified by the caller as it writes (see [`verify`] for small ones).

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use reqwest::header::{HeaderMap, ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LINK, LOCATION, RANGE};
use reqwest::{Response, StatusCode, Url};
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::reference::{Reference, DEFAULT_DOMAIN, DEFAULT_TAG};

use super::auth::{challenges_of, AuthCache, Credentials};
use super::error::{from_response, Op, RegistryError};
use super::image_config::{ImageConfig, MAX_CONFIG_SIZE};
use super::manifest::{self, essence, media_type, Descriptor, ImageIndex, ImageManifest, Manifest, ManifestError, ManifestKind, MAX_MANIFEST_SIZE};
use super::platform::{choose, Platform};

/// The header registries put a manifest's digest in.
const DOCKER_CONTENT_DIGEST: &str = "docker-content-digest";
/// How much of an error body is read for its message.
const MAX_ERROR_BODY: u64 = 64 << 10;
/// Largest catalog, tag list or search page read.
const MAX_LIST_RESPONSE: u64 = 4 << 20;
/// Pages of a catalog or tag list followed at most.
const MAX_PAGES: usize = 1000;

/// How the client reaches registries. Mirrors and insecure registries mean
/// what they mean in dockerd's `daemon.json`.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Pull-through mirrors for Docker Hub (`https://mirror.example.com`,
    /// or `http://…` for a plain-HTTP one), tried in order before Hub.
    pub mirrors: Vec<String>,
    /// `host:port` names or CIDRs (`10.0.0.0/8`) whose registries may use
    /// plain HTTP or unverified TLS. `localhost` and 127.0.0.0/8 always are.
    pub insecure_registries: Vec<String>,
    pub user_agent: String,
    /// Docker Hub's registry API; tests point it at a fake.
    pub hub_registry: String,
    /// Docker Hub's search index; tests point it at a fake.
    pub hub_index: String,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            mirrors: Vec::new(),
            insecure_registries: Vec::new(),
            user_agent: format!("berth/{}", env!("CARGO_PKG_VERSION")),
            hub_registry: "https://registry-1.docker.io".into(),
            hub_index: "https://index.docker.io".into(),
        }
    }
}

/// One base URL a registry is reached at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Scheme, host, port; path `/`.
    pub url: Url,
    /// A Docker Hub mirror: any failure falls through to the next endpoint.
    pub mirror: bool,
    /// TLS certificates are not verified (insecure registries over https).
    pub skip_tls_verify: bool,
}

impl Endpoint {
    fn origin(&self) -> String {
        self.url.origin().ascii_serialization()
    }

    fn v2(&self, rest: &str) -> Result<Url, RegistryError> {
        self.url
            .join(&format!("v2/{rest}"))
            .map_err(|e| RegistryError::Config(format!("bad URL for {rest:?} on {}: {e}", self.url)))
    }
}

/// A repository on one endpoint with the credentials to use: what blob and
/// push operations act on.
#[derive(Debug, Clone)]
pub struct Repository {
    domain: String,
    path: String,
    endpoint: Endpoint,
    credentials: Credentials,
    push: bool,
}

impl Repository {
    fn new(reference: &Reference, endpoint: Endpoint, credentials: Credentials, push: bool) -> Self {
        Repository {
            domain: reference.domain().to_owned(),
            path: reference.path().to_owned(),
            endpoint,
            credentials,
            push,
        }
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The token scope requests on this repository need.
    fn scope(&self) -> String {
        let actions = if self.push { "pull,push" } else { "pull" };
        format!("repository:{}:{actions}", self.path)
    }

    fn url(&self, rest: &str) -> Result<Url, RegistryError> {
        self.endpoint.v2(&format!("{}/{rest}", self.path))
    }

    /// The repository as users see it (`redis`, `localhost:5000/x`).
    pub fn familiar_name(&self) -> String {
        let reference = Reference::from_parts(&self.domain, &self.path);
        reference.map(|r| r.familiar_repository()).unwrap_or_else(|_| self.path.clone())
    }
}

/// What a reference resolved to for one platform.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Where the manifest came from; fetch the blobs from the same place.
    pub repository: Repository,
    /// Digest of the platform-specific image manifest.
    pub manifest_digest: Digest,
    /// Its exact bytes (store verbatim: the digest is over them).
    pub manifest: Bytes,
    pub media_type: String,
    pub image: ImageManifest,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    /// Digest of the top-level index the tag pointed at, if it was one.
    pub index_digest: Option<Digest>,
    /// That index's bytes and media type.
    pub index: Option<(Bytes, String)>,
}

impl Resolved {
    /// The digest dockerd records in RepoDigests: the top-level one the
    /// registry served for the tag (the index if there was one).
    pub fn repo_digest(&self) -> &Digest {
        self.index_digest.as_ref().unwrap_or(&self.manifest_digest)
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.repository.endpoint
    }
}

/// One Docker Hub search hit, shaped like the Engine API's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchResult {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub star_count: u64,
    #[serde(default)]
    pub is_official: bool,
    #[serde(default)]
    pub is_automated: bool,
}

/// An IP network from `insecure_registries`.
#[derive(Debug, Clone, Copy)]
struct Cidr {
    addr: IpAddr,
    prefix: u32,
}

impl Cidr {
    fn parse(s: &str) -> Option<Self> {
        let (addr, prefix) = s.split_once('/')?;
        let addr: IpAddr = addr.parse().ok()?;
        let prefix: u32 = prefix.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(Cidr { addr, prefix })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        fn bits(ip: IpAddr) -> (u128, u32) {
            match ip {
                IpAddr::V4(v4) => (u128::from(u32::from(v4)) << 96, 32),
                IpAddr::V6(v6) => (u128::from(v6), 128),
            }
        }
        let (net, net_len) = bits(self.addr);
        let (ip, ip_len) = bits(ip);
        if net_len != ip_len {
            return false;
        }
        let mask = if self.prefix == 0 { 0 } else { u128::MAX << (128 - self.prefix) };
        net & mask == ip & mask
    }
}

struct Inner {
    secure: reqwest::Client,
    insecure: reqwest::Client,
    mirrors: Vec<Url>,
    insecure_names: Vec<String>,
    insecure_cidrs: Vec<Cidr>,
    hub_registry: Url,
    hub_index: Url,
    auth: AuthCache,
}

/// A registry client. Cheap to clone; clones share connections and tokens.
#[derive(Clone)]
pub struct RegistryClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient").field("mirrors", &self.inner.mirrors).finish_non_exhaustive()
    }
}

fn base_url(s: &str, what: &str) -> Result<Url, RegistryError> {
    let url = Url::parse(s.trim()).map_err(|e| RegistryError::Config(format!("invalid {what} {s:?}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(RegistryError::Config(format!("invalid {what} {s:?}: must be an http:// or https:// URL")));
    }
    if (url.path() != "/" && !url.path().is_empty()) || url.query().is_some() || url.fragment().is_some() {
        return Err(RegistryError::Config(format!("invalid {what} {s:?}: path, query, or fragment at end of the URI")));
    }
    Ok(url)
}

/// `host:port` of a domain → the host, brackets of IPv6 removed.
fn host_of(domain: &str) -> &str {
    if let Some(rest) = domain.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    domain.rsplit_once(':').map_or(domain, |(h, _)| h)
}

impl RegistryClient {
    pub fn new(config: RegistryConfig) -> Result<Self, RegistryError> {
        let build = |skip_verify: bool| {
            reqwest::Client::builder()
                .user_agent(config.user_agent.clone())
                .connect_timeout(Duration::from_secs(30))
                .danger_accept_invalid_certs(skip_verify)
                .build()
                .map_err(|e| RegistryError::Config(format!("building HTTP client: {e}")))
        };
        let mirrors = config.mirrors.iter().map(|m| base_url(m, "mirror")).collect::<Result<Vec<_>, _>>()?;
        let mut insecure_names = Vec::new();
        // dockerd always treats the loopback network as insecure.
        let mut insecure_cidrs = vec![Cidr { addr: IpAddr::from([127, 0, 0, 0]), prefix: 8 }];
        for entry in &config.insecure_registries {
            let entry = entry.trim();
            let entry = entry.strip_prefix("http://").or_else(|| entry.strip_prefix("https://")).unwrap_or(entry);
            let entry = entry.trim_end_matches('/');
            if entry.contains('/') {
                let cidr = Cidr::parse(entry)
                    .ok_or_else(|| RegistryError::Config(format!("invalid insecure registry CIDR {entry:?}")))?;
                insecure_cidrs.push(cidr);
            } else if !entry.is_empty() {
                insecure_names.push(entry.to_owned());
            }
        }
        Ok(RegistryClient {
            inner: Arc::new(Inner {
                secure: build(false)?,
                insecure: build(true)?,
                mirrors,
                insecure_names,
                insecure_cidrs,
                hub_registry: base_url(&config.hub_registry, "hub registry")?,
                hub_index: base_url(&config.hub_index, "hub index")?,
                auth: AuthCache::default(),
            }),
        })
    }

    /// Whether `domain` (`host[:port]`) may be reached over plain HTTP or
    /// unverified TLS, as dockerd decides it (without a DNS lookup: only
    /// `localhost` and IP literals are matched against the CIDRs).
    pub fn is_insecure(&self, domain: &str) -> bool {
        if self.inner.insecure_names.iter().any(|n| n.eq_ignore_ascii_case(domain)) {
            return true;
        }
        let host = host_of(domain);
        if host.eq_ignore_ascii_case("localhost") {
            return true;
        }
        match host.parse::<IpAddr>() {
            Ok(ip) => self.inner.insecure_cidrs.iter().any(|c| c.contains(ip)),
            Err(_) => false,
        }
    }

    /// The endpoints to try for `domain`, in order: Docker Hub's mirrors
    /// (pulls only) then Hub itself; for an insecure registry https without
    /// verification then plain http; otherwise https.
    pub fn endpoints(&self, domain: &str, push: bool) -> Result<Vec<Endpoint>, RegistryError> {
        if domain == DEFAULT_DOMAIN {
            let mut out = Vec::new();
            if !push {
                for m in &self.inner.mirrors {
                    let host = m.host_str().unwrap_or("");
                    let domain = match m.port() {
                        Some(p) => format!("{host}:{p}"),
                        None => host.to_owned(),
                    };
                    out.push(Endpoint {
                        url: m.clone(),
                        mirror: true,
                        skip_tls_verify: m.scheme() == "https" && self.is_insecure(&domain),
                    });
                }
            }
            out.push(Endpoint { url: self.inner.hub_registry.clone(), mirror: false, skip_tls_verify: false });
            return Ok(out);
        }
        if !crate::reference::is_domain(domain) {
            return Err(RegistryError::Config(format!("invalid registry name {domain:?}")));
        }
        let url = |scheme: &str| base_url(&format!("{scheme}://{domain}/"), "registry");
        if self.is_insecure(domain) {
            Ok(vec![
                Endpoint { url: url("https")?, mirror: false, skip_tls_verify: true },
                Endpoint { url: url("http")?, mirror: false, skip_tls_verify: true },
            ])
        } else {
            Ok(vec![Endpoint { url: url("https")?, mirror: false, skip_tls_verify: false }])
        }
    }

    fn http(&self, endpoint: &Endpoint) -> &reqwest::Client {
        if endpoint.skip_tls_verify {
            &self.inner.insecure
        } else {
            &self.inner.secure
        }
    }

    /// Sends a request built by `build`, answering one 401 challenge: a
    /// cached token is attached up front when there is one; on 401 a fresh
    /// token (or basic credentials) is obtained and the request rebuilt.
    async fn send<F>(&self, endpoint: &Endpoint, creds: &Credentials, scope: &str, build: F) -> Result<Response, RegistryError>
    where
        F: Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    {
        let http = self.http(endpoint);
        let origin = endpoint.origin();
        let mut req = build(http);
        if let Some(h) = self.inner.auth.cached_header(&origin, scope, creds) {
            req = req.header(AUTHORIZATION, h);
        }
        let resp = req.send().await.map_err(|e| RegistryError::transport(&e))?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let challenges = challenges_of(resp.headers());
        let Some(header) = self.inner.auth.authorize(http, &origin, &challenges, scope, creds).await? else {
            return Ok(resp);
        };
        build(http).header(AUTHORIZATION, header).send().await.map_err(|e| RegistryError::transport(&e))
    }

    async fn get_manifest(&self, repo: &Repository, target: &str, op: Op<'_>) -> Result<Fetched, RegistryError> {
        let url = repo.url(&format!("manifests/{target}"))?;
        let resp = self
            .send(&repo.endpoint, &repo.credentials, &repo.scope(), |h| {
                h.get(url.clone()).header(ACCEPT, media_type::ACCEPT)
            })
            .await?;
        if !resp.status().is_success() {
            return Err(fail(resp, op).await);
        }
        let content_type = header_str(resp.headers(), CONTENT_TYPE.as_str());
        let digest_header = header_str(resp.headers(), DOCKER_CONTENT_DIGEST);
        let bytes = read_capped(resp, MAX_MANIFEST_SIZE, "manifest").await?;
        Ok(Fetched { bytes, content_type, digest_header })
    }

    /// Resolves `reference` to the image manifest for `platform`: fetches the
    /// manifest the tag or digest names, verifies it, and if it is an index
    /// picks the platform's entry and fetches that. Docker Hub names try the
    /// mirrors first; any mirror failure, and connection failures anywhere,
    /// move on to the next endpoint.
    pub async fn resolve(&self, reference: &Reference, platform: &Platform, creds: &Credentials) -> Result<Resolved, RegistryError> {
        let reference = reference.docker_ref();
        let familiar = reference.familiar();
        let name = reference.familiar_repository();
        let op = Op::PullManifest { familiar: &familiar, name: &name };
        let mut last = None;
        for endpoint in self.endpoints(reference.domain(), false)? {
            let repo = Repository::new(&reference, endpoint, creds.clone(), false);
            tracing::debug!(image = %reference, endpoint = %repo.endpoint.url, "resolving");
            match self.resolve_at(&repo, &reference, platform, op, &familiar).await {
                Ok(r) => return Ok(r),
                Err(e) if repo.endpoint.mirror || e.is_transport() => {
                    tracing::warn!(image = %reference, endpoint = %repo.endpoint.url, error = %e, "endpoint failed, trying the next");
                    // A registry's own answer ("manifest unknown") says more
                    // than a later endpoint that could not be reached.
                    if last.as_ref().is_none_or(RegistryError::is_transport) {
                        last = Some(e);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| RegistryError::Config(format!("no endpoint for {}", reference.domain()))))
    }

    async fn resolve_at(
        &self,
        repo: &Repository,
        reference: &Reference,
        platform: &Platform,
        op: Op<'_>,
        familiar: &str,
    ) -> Result<Resolved, RegistryError> {
        let target = match reference.digest() {
            Some(d) => d.to_string(),
            None => reference.tag().unwrap_or(DEFAULT_TAG).to_owned(),
        };
        let top = self.get_manifest(repo, &target, op).await?;
        let top_digest = check_manifest_digest(&top.bytes, reference.digest(), top.digest_header.as_deref())?;
        let mut index = match parse_fetched(&top, None, familiar)? {
            Manifest::Image(image) => return Ok(resolved(repo, top_digest, top.bytes, image, None)),
            Manifest::Index(index) => index,
        };
        let top_media_type = index.kind.media_type().to_owned();
        let mut seen = vec![top_digest.clone()];
        // One level of nesting (index → index → manifest) is allowed.
        for depth in 0..2 {
            let child = pick_child(&index, platform, &seen)?;
            let fetched = self.get_manifest(repo, &child.digest.to_string(), op).await?;
            verify(&child, &fetched.bytes)?;
            match parse_fetched(&fetched, Some(&child), familiar)? {
                Manifest::Image(image) => {
                    let top_index = Some((top.bytes.clone(), top_media_type));
                    let mut r = resolved(repo, child.digest, fetched.bytes, image, Some(top_digest));
                    r.index = top_index;
                    return Ok(r);
                }
                Manifest::Index(next) if depth == 0 => {
                    seen.push(child.digest);
                    index = next;
                }
                Manifest::Index(_) => break,
            }
        }
        Err(RegistryError::InvalidManifest("indexes nested more than one level deep".into()))
    }

    /// A repository handle on the first reachable endpoint of its registry,
    /// for blob, tag and push operations outside [`RegistryClient::resolve`].
    /// `push` asks for push access (and skips Hub mirrors).
    pub async fn repository(&self, reference: &Reference, creds: &Credentials, push: bool) -> Result<Repository, RegistryError> {
        let mut last = None;
        for endpoint in self.endpoints(reference.domain(), push)? {
            let url = endpoint.v2("")?;
            match self.http(&endpoint).get(url).send().await {
                Ok(_) => return Ok(Repository::new(reference, endpoint, creds.clone(), push)),
                Err(e) => last = Some(RegistryError::transport(&e)),
            }
        }
        Err(last.unwrap_or_else(|| RegistryError::Config(format!("no endpoint for {}", reference.domain()))))
    }

    /// Streams the blob `desc` from `offset` on. Uses `Range` to resume:
    /// a 206 is taken as is; a 200 (the server ignored the range) has its
    /// first `offset` bytes dropped. The stream fails if more bytes arrive
    /// than `desc.size` declares, or fewer ([`RegistryError::Truncated`],
    /// after which the caller may resume). Redirects are followed; the
    /// `Authorization` header is not sent to another host. The caller
    /// verifies the digest.
    pub async fn fetch_blob(&self, repo: &Repository, desc: &Descriptor, offset: u64) -> Result<BlobStream, RegistryError> {
        if offset > desc.size {
            return Err(RegistryError::Config(format!(
                "resume offset {offset} is beyond the {} bytes of blob {}",
                desc.size, desc.digest
            )));
        }
        let mut stream = BlobStream {
            inner: None,
            digest: desc.digest.clone(),
            size: desc.size,
            skip: 0,
            remaining: desc.size - offset,
        };
        if offset == desc.size {
            return Ok(stream);
        }
        let url = repo.url(&format!("blobs/{}", desc.digest))?;
        let resp = self
            .send(&repo.endpoint, &repo.credentials, &repo.scope(), |h| {
                let req = h.get(url.clone());
                if offset > 0 {
                    req.header(RANGE, format!("bytes={offset}-"))
                } else {
                    req
                }
            })
            .await?;
        let expected_body = match resp.status() {
            StatusCode::PARTIAL_CONTENT => {
                if let Some(start) = header_str(resp.headers(), CONTENT_RANGE.as_str()).and_then(|v| range_start(&v)) {
                    if start != offset {
                        return Err(RegistryError::Registry {
                            status: 206,
                            message: format!("asked for blob {} from byte {offset}, got a range from byte {start}", desc.digest),
                        });
                    }
                }
                desc.size - offset
            }
            StatusCode::OK => {
                stream.skip = offset;
                desc.size
            }
            _ => return Err(fail(resp, Op::Other).await),
        };
        if let Some(len) = content_length(resp.headers()) {
            if len > expected_body {
                return Err(RegistryError::TooLarge { what: format!("blob {}", desc.digest), limit: desc.size });
            }
        }
        stream.inner = Some(Box::pin(resp.bytes_stream()));
        Ok(stream)
    }

    /// Fetches a small blob whole and verifies it against `desc`.
    pub async fn fetch_blob_bytes(&self, repo: &Repository, desc: &Descriptor, limit: u64) -> Result<Bytes, RegistryError> {
        if desc.size > limit {
            return Err(RegistryError::TooLarge { what: format!("blob {}", desc.digest), limit });
        }
        let mut stream = self.fetch_blob(repo, desc, 0).await?;
        let mut buf = BytesMut::with_capacity(desc.size as usize);
        while let Some(chunk) = stream.next().await {
            buf.extend_from_slice(&chunk?);
        }
        let buf = buf.freeze();
        verify(desc, &buf)?;
        Ok(buf)
    }

    /// Fetches, verifies and parses the image config of a resolved image.
    pub async fn fetch_config(&self, repo: &Repository, desc: &Descriptor) -> Result<ImageConfig, RegistryError> {
        let raw = self.fetch_blob_bytes(repo, desc, MAX_CONFIG_SIZE).await?;
        ImageConfig::from_bytes(raw).map_err(|e| RegistryError::InvalidConfig(e.to_string()))
    }

    /// Whether the registry already has `digest` in this repository.
    pub async fn blob_exists(&self, repo: &Repository, digest: &Digest) -> Result<bool, RegistryError> {
        let url = repo.url(&format!("blobs/{digest}"))?;
        let resp = self.send(&repo.endpoint, &repo.credentials, &repo.scope(), |h| h.head(url.clone())).await?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(fail(resp, self.op_for(repo)).await),
        }
    }

    fn op_for(&self, repo: &Repository) -> Op<'static> {
        if repo.push {
            Op::Push
        } else {
            Op::Other
        }
    }

    /// Uploads a blob in one piece: POST to start the upload, then PUT the
    /// `size` bytes of `body` with the digest. The PUT is not retried (a
    /// streamed body cannot be replayed); the POST establishes the auth it
    /// needs.
    pub async fn push_blob(
        &self,
        repo: &Repository,
        digest: &Digest,
        size: u64,
        body: impl Into<reqwest::Body>,
    ) -> Result<(), RegistryError> {
        let op = self.op_for(repo);
        let scope = repo.scope();
        let url = repo.url("blobs/uploads/")?;
        let resp = self
            .send(&repo.endpoint, &repo.credentials, &scope, |h| h.post(url.clone()).header(CONTENT_LENGTH, 0))
            .await?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(fail(resp, op).await);
        }
        let location = header_str(resp.headers(), LOCATION.as_str())
            .ok_or_else(|| RegistryError::Registry { status: 202, message: "upload started without a Location".into() })?;
        let mut put = resp
            .url()
            .join(&location)
            .map_err(|e| RegistryError::Registry { status: 202, message: format!("bad upload Location {location:?}: {e}") })?;
        put.query_pairs_mut().append_pair("digest", &digest.to_string());
        let mut req = self
            .http(&repo.endpoint)
            .put(put.clone())
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, size)
            .body(body);
        // Only the registry itself gets the credentials, not an upload
        // location on another host.
        if put.origin().ascii_serialization() == repo.endpoint.origin() {
            if let Some(h) = self.inner.auth.cached_header(&repo.endpoint.origin(), &scope, &repo.credentials) {
                req = req.header(AUTHORIZATION, h);
            }
        }
        let resp = req.send().await.map_err(|e| RegistryError::transport(&e))?;
        if !resp.status().is_success() {
            return Err(fail(resp, op).await);
        }
        Ok(())
    }

    /// Uploads a manifest under `tag_or_digest`; returns its digest.
    pub async fn put_manifest(
        &self,
        repo: &Repository,
        tag_or_digest: &str,
        media_type: &str,
        bytes: Bytes,
    ) -> Result<Digest, RegistryError> {
        let valid_target = tag_or_digest.parse::<Digest>().is_ok()
            || Reference::from_parts(&repo.domain, &repo.path).and_then(|r| r.with_tag(tag_or_digest)).is_ok();
        if !valid_target {
            return Err(RegistryError::Config(format!("invalid tag or digest {tag_or_digest:?}")));
        }
        let url = repo.url(&format!("manifests/{tag_or_digest}"))?;
        let resp = self
            .send(&repo.endpoint, &repo.credentials, &repo.scope(), |h| {
                h.put(url.clone()).header(CONTENT_TYPE, media_type).body(bytes.clone())
            })
            .await?;
        if !resp.status().is_success() {
            return Err(fail(resp, self.op_for(repo)).await);
        }
        let digest_header = header_str(resp.headers(), DOCKER_CONTENT_DIGEST);
        check_manifest_digest(&bytes, None, digest_header.as_deref())
    }

    /// The repositories of a registry (`GET /v2/_catalog`, all pages).
    pub async fn catalog(&self, domain: &str, creds: &Credentials) -> Result<Vec<String>, RegistryError> {
        #[derive(Deserialize)]
        struct Page {
            #[serde(default)]
            repositories: Option<Vec<String>>,
        }
        let mut last = None;
        for endpoint in self.endpoints(domain, false)?.into_iter().filter(|e| !e.mirror) {
            let first = endpoint.v2("_catalog?n=1000")?;
            let result = self
                .paginate(&endpoint, creds, "registry:catalog:*", first, |body| {
                    serde_json::from_slice::<Page>(body).map(|p| p.repositories.unwrap_or_default())
                })
                .await;
            match result {
                Err(e) if e.is_transport() => last = Some(e),
                other => return other,
            }
        }
        Err(last.unwrap_or_else(|| RegistryError::Config(format!("no endpoint for {domain}"))))
    }

    /// The tags of a repository (`GET /v2/<name>/tags/list`, all pages).
    pub async fn tags(&self, repo: &Repository) -> Result<Vec<String>, RegistryError> {
        #[derive(Deserialize)]
        struct Page {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let first = repo.url("tags/list")?;
        self.paginate(&repo.endpoint, &repo.credentials, &repo.scope(), first, |body| {
            serde_json::from_slice::<Page>(body).map(|p| p.tags.unwrap_or_default())
        })
        .await
    }

    /// Follows `Link: <…>; rel="next"` on the same origin, collecting items.
    async fn paginate(
        &self,
        endpoint: &Endpoint,
        creds: &Credentials,
        scope: &str,
        first: Url,
        parse: impl Fn(&[u8]) -> Result<Vec<String>, serde_json::Error>,
    ) -> Result<Vec<String>, RegistryError> {
        let mut out = Vec::new();
        let mut url = first;
        for _ in 0..MAX_PAGES {
            let resp = self.send(endpoint, creds, scope, |h| h.get(url.clone())).await?;
            if !resp.status().is_success() {
                return Err(fail(resp, Op::Other).await);
            }
            let next = header_str(resp.headers(), LINK.as_str()).and_then(|l| next_link(&l));
            let body = read_capped(resp, MAX_LIST_RESPONSE, "list").await?;
            out.extend(parse(&body).map_err(|e| RegistryError::Registry { status: 200, message: format!("malformed list: {e}") })?);
            let Some(next) = next.and_then(|n| url.join(&n).ok()) else { return Ok(out) };
            if next.origin() != endpoint.url.origin() || next == url {
                return Ok(out);
            }
            url = next;
        }
        Ok(out)
    }

    /// Searches Docker Hub (`GET <index>/v1/search?q=&n=`).
    pub async fn hub_search(&self, term: &str, limit: u32) -> Result<Vec<SearchResult>, RegistryError> {
        #[derive(Deserialize)]
        struct Answer {
            #[serde(default)]
            results: Vec<SearchResult>,
        }
        let mut url = self
            .inner
            .hub_index
            .join("v1/search")
            .map_err(|e| RegistryError::Config(format!("bad hub index URL: {e}")))?;
        url.query_pairs_mut().append_pair("q", term).append_pair("n", &limit.to_string());
        let resp = self.inner.secure.get(url).send().await.map_err(|e| RegistryError::transport(&e))?;
        if !resp.status().is_success() {
            return Err(fail(resp, Op::Other).await);
        }
        let body = read_capped(resp, MAX_LIST_RESPONSE, "search response").await?;
        let answer: Answer = serde_json::from_slice(&body)
            .map_err(|e| RegistryError::Registry { status: 200, message: format!("malformed search response: {e}") })?;
        Ok(answer.results)
    }
}

/// The entry of `index` to descend into for `platform`. `seen` holds the
/// digests of the indexes above: an entry naming one of them is a cycle.
/// (With every manifest verified against its sha256 a real cycle cannot be
/// built; this guards the descent regardless.)
pub(crate) fn pick_child(index: &ImageIndex, platform: &Platform, seen: &[Digest]) -> Result<Descriptor, RegistryError> {
    let child = choose(index, platform)?.clone();
    if seen.contains(&child.digest) {
        return Err(RegistryError::InvalidManifest(format!("index refers to itself ({})", child.digest)));
    }
    if child.size > MAX_MANIFEST_SIZE {
        return Err(RegistryError::TooLarge { what: format!("manifest {}", child.digest), limit: MAX_MANIFEST_SIZE });
    }
    Ok(child)
}

struct Fetched {
    bytes: Bytes,
    content_type: Option<String>,
    digest_header: Option<String>,
}

fn resolved(repo: &Repository, digest: Digest, bytes: Bytes, image: ImageManifest, index_digest: Option<Digest>) -> Resolved {
    Resolved {
        repository: repo.clone(),
        manifest_digest: digest,
        manifest: bytes,
        media_type: image.kind.media_type().to_owned(),
        config: image.config.clone(),
        layers: image.layers.clone(),
        image,
        index_digest,
        index: None,
    }
}

/// Parses a fetched manifest. A generic Content-Type defers to the media type
/// of the descriptor that pointed at it; the document must then be of the
/// kind (index or image) that descriptor announced.
fn parse_fetched(f: &Fetched, desc: Option<&Descriptor>, familiar: &str) -> Result<Manifest, RegistryError> {
    let served = f.content_type.as_deref().map(essence);
    let specific = served.filter(|ct| {
        ManifestKind::from_media_type(ct).is_some()
            || ct == media_type::DOCKER_SCHEMA1
            || ct == media_type::DOCKER_SCHEMA1_SIGNED
    });
    let content_type = specific.or_else(|| desc.map(|d| d.media_type.clone()).filter(|m| manifest::is_manifest_media_type(m)));
    let parsed = manifest::parse(&f.bytes, content_type.as_deref()).map_err(|e| match e {
        ManifestError::Schema1 => RegistryError::Schema1NotSupported(familiar.to_owned()),
        other => other.into(),
    })?;
    if let Some(announced) = desc.and_then(|d| ManifestKind::from_media_type(&d.media_type)) {
        if announced.is_index() != parsed.kind().is_index() {
            return Err(RegistryError::InvalidManifest(format!(
                "index entry announced {} but the registry served {}",
                announced.media_type(),
                parsed.media_type()
            )));
        }
    }
    Ok(parsed)
}

/// The sha256 of manifest `bytes`, which must equal the digest pulled by
/// (if any) and the `Docker-Content-Digest` header (if it is a sha256).
fn check_manifest_digest(bytes: &[u8], expected: Option<&Digest>, header: Option<&str>) -> Result<Digest, RegistryError> {
    let actual = Digest::of(bytes);
    if let Some(expected) = expected {
        if *expected != actual {
            return Err(RegistryError::DigestMismatch { expected: expected.clone(), actual });
        }
    }
    if let Some(header) = header.map(str::trim).filter(|h| !h.is_empty()) {
        match header.parse::<Digest>() {
            Ok(claimed) if claimed != actual => {
                return Err(RegistryError::DigestMismatch { expected: claimed, actual });
            }
            Ok(_) => {}
            Err(_) if header.starts_with("sha256:") => {
                return Err(RegistryError::InvalidManifest(format!("malformed Docker-Content-Digest {header:?}")));
            }
            // Another algorithm: nothing to compare; our own hash stands.
            Err(_) => tracing::debug!(header, "ignoring non-sha256 Docker-Content-Digest"),
        }
    }
    Ok(actual)
}

/// Checks `data` against `desc`: the digest, then the size.
pub fn verify(desc: &Descriptor, data: &[u8]) -> Result<(), RegistryError> {
    let actual = Digest::of(data);
    if actual != desc.digest {
        return Err(RegistryError::DigestMismatch { expected: desc.digest.clone(), actual });
    }
    if data.len() as u64 != desc.size {
        return Err(RegistryError::InvalidManifest(format!(
            "{} is {} bytes, its descriptor says {}",
            desc.digest,
            data.len(),
            desc.size
        )));
    }
    Ok(())
}

/// A blob body being received, bounded by its declared size.
pub struct BlobStream {
    inner: Option<Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>>,
    digest: Digest,
    size: u64,
    /// Bytes still to drop (a 200 answer to a range request).
    skip: u64,
    /// Bytes still expected.
    remaining: u64,
}

impl std::fmt::Debug for BlobStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStream").field("digest", &self.digest).field("remaining", &self.remaining).finish()
    }
}

impl Stream for BlobStream {
    type Item = Result<Bytes, RegistryError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            let Some(inner) = this.inner.as_mut() else { return Poll::Ready(None) };
            match inner.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(mut chunk))) => {
                    if this.skip > 0 {
                        let n = this.skip.min(chunk.len() as u64);
                        chunk = chunk.slice(n as usize..);
                        this.skip -= n;
                        if chunk.is_empty() {
                            continue;
                        }
                    }
                    if chunk.len() as u64 > this.remaining {
                        this.inner = None;
                        return Poll::Ready(Some(Err(RegistryError::TooLarge {
                            what: format!("blob {}", this.digest),
                            limit: this.size,
                        })));
                    }
                    this.remaining -= chunk.len() as u64;
                    return Poll::Ready(Some(Ok(chunk)));
                }
                Poll::Ready(Some(Err(e))) => {
                    this.inner = None;
                    return Poll::Ready(Some(Err(RegistryError::transport(&e))));
                }
                Poll::Ready(None) => {
                    this.inner = None;
                    if this.remaining > 0 {
                        return Poll::Ready(Some(Err(RegistryError::Truncated {
                            digest: this.digest.clone(),
                            received: this.size - this.remaining,
                            expected: this.size,
                        })));
                    }
                    return Poll::Ready(None);
                }
            }
        }
    }
}

fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    header_str(headers, CONTENT_LENGTH.as_str())?.trim().parse().ok()
}

/// `bytes 100-199/200` → 100.
fn range_start(content_range: &str) -> Option<u64> {
    let rest = content_range.trim().strip_prefix("bytes")?.trim_start();
    rest.split('-').next()?.trim().parse().ok()
}

/// The target of `rel="next"` in a Link header.
fn next_link(link: &str) -> Option<String> {
    link.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        let is_next = params.split(';').any(|p| {
            let p = p.trim().replace(' ', "");
            p == "rel=\"next\"" || p == "rel=next"
        });
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        is_next.then(|| target.to_owned())
    })
}

/// Reads a whole body of at most `limit` bytes; a larger one is refused
/// from its Content-Length before reading, or as soon as it passes the
/// limit.
pub(crate) async fn read_capped(resp: Response, limit: u64, what: &str) -> Result<Bytes, RegistryError> {
    let too_large = || RegistryError::TooLarge { what: what.to_owned(), limit };
    if content_length(resp.headers()).is_some_and(|len| len > limit) {
        return Err(too_large());
    }
    let mut body = resp.bytes_stream();
    let mut buf = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| RegistryError::transport(&e))?;
        if (buf.len() + chunk.len()) as u64 > limit {
            return Err(too_large());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// The error for a failed response, with whatever message its body has.
async fn fail(resp: Response, op: Op<'_>) -> RegistryError {
    let status = resp.status();
    let mut body = resp.bytes_stream();
    let mut buf = Vec::new();
    while let Some(Ok(chunk)) = body.next().await {
        buf.extend_from_slice(&chunk);
        if buf.len() as u64 >= MAX_ERROR_BODY {
            buf.truncate(MAX_ERROR_BODY as usize);
            break;
        }
    }
    from_response(status, &buf, op)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_localhost_are_insecure_by_default() {
        let c = RegistryClient::new(RegistryConfig::default()).unwrap();
        assert!(c.is_insecure("localhost:5000"));
        assert!(c.is_insecure("127.0.0.1:5000"));
        assert!(c.is_insecure("127.1.2.3"));
        assert!(!c.is_insecure("10.0.0.1:5000"));
        assert!(!c.is_insecure("registry.example.com"));
        assert!(!c.is_insecure("[::1]:5000"));
    }

    #[test]
    fn configured_names_and_cidrs_are_insecure() {
        let c = RegistryClient::new(RegistryConfig {
            insecure_registries: vec!["reg.local:5000".into(), "10.0.0.0/8".into(), "fd00::/8".into(), "http://other:1/".into()],
            ..RegistryConfig::default()
        })
        .unwrap();
        assert!(c.is_insecure("reg.local:5000"));
        assert!(!c.is_insecure("reg.local:5001"));
        assert!(c.is_insecure("10.1.2.3:5000"));
        assert!(!c.is_insecure("11.1.2.3:5000"));
        assert!(c.is_insecure("[fd12::1]:5000"));
        assert!(c.is_insecure("other:1"));
    }

    #[test]
    fn bad_configuration_is_refused() {
        for bad in ["ftp://m", "https://m/path", "not a url"] {
            let cfg = RegistryConfig { mirrors: vec![bad.into()], ..RegistryConfig::default() };
            assert!(RegistryClient::new(cfg).is_err(), "{bad}");
        }
        let cfg = RegistryConfig { insecure_registries: vec!["10.0.0.0/33".into()], ..RegistryConfig::default() };
        assert!(RegistryClient::new(cfg).is_err());
    }

    #[test]
    fn hub_endpoints_are_mirrors_then_hub_and_push_skips_mirrors() {
        let c = RegistryClient::new(RegistryConfig {
            mirrors: vec!["https://m1.example.com".into(), "http://127.0.0.1:9/".into()],
            ..RegistryConfig::default()
        })
        .unwrap();
        let eps = c.endpoints("docker.io", false).unwrap();
        let urls: Vec<_> = eps.iter().map(|e| (e.url.as_str(), e.mirror)).collect();
        assert_eq!(
            urls,
            [("https://m1.example.com/", true), ("http://127.0.0.1:9/", true), ("https://registry-1.docker.io/", false)]
        );
        let eps = c.endpoints("docker.io", true).unwrap();
        assert_eq!(eps.len(), 1);
    }

    #[test]
    fn insecure_registries_try_https_then_http() {
        let c = RegistryClient::new(RegistryConfig::default()).unwrap();
        let eps = c.endpoints("localhost:5000", false).unwrap();
        let urls: Vec<_> = eps.iter().map(|e| (e.url.as_str(), e.skip_tls_verify)).collect();
        assert_eq!(urls, [("https://localhost:5000/", true), ("http://localhost:5000/", true)]);
        let eps = c.endpoints("quay.io", false).unwrap();
        assert_eq!(eps.len(), 1);
        assert!(!eps[0].skip_tls_verify);
    }

    #[test]
    fn link_headers_are_parsed() {
        assert_eq!(next_link(r#"</v2/_catalog?last=b&n=2>; rel="next""#).as_deref(), Some("/v2/_catalog?last=b&n=2"));
        assert_eq!(next_link(r#"<a>; rel="prev", <b>; rel=next"#).as_deref(), Some("b"));
        assert_eq!(next_link("garbage"), None);
    }

    #[test]
    fn content_range_start_is_parsed() {
        assert_eq!(range_start("bytes 100-199/200"), Some(100));
        assert_eq!(range_start("bytes */200"), None);
    }

    #[test]
    fn manifest_digest_checks() {
        let body = b"{}";
        let good = Digest::of(body);
        let other = Digest::of(b"x");
        assert_eq!(check_manifest_digest(body, None, None).unwrap(), good);
        assert_eq!(check_manifest_digest(body, Some(&good), Some(&good.to_string())).unwrap(), good);
        assert!(matches!(check_manifest_digest(body, Some(&other), None), Err(RegistryError::DigestMismatch { .. })));
        assert!(matches!(
            check_manifest_digest(body, None, Some(&other.to_string())),
            Err(RegistryError::DigestMismatch { .. })
        ));
        assert!(check_manifest_digest(body, None, Some("sha256:zz")).is_err());
        assert!(check_manifest_digest(body, None, Some("sha512:abcd")).is_ok());
    }
}

//! A FAKE registry for unit tests, not a registry implementation.
//!
//! An axum app on 127.0.0.1:0 that speaks just enough of the distribution
//! API for the client's tests, and can be told to misbehave in the ways a
//! real registry (the Debian docker-registry the integration tests use)
//! never does: wrong `Docker-Content-Digest`, content that does not hash to
//! the digest asked for, ignored `Range`, bodies longer or shorter than
//! declared, oversize manifests, redirects to another host. It records every
//! request so tests can check what the client sent.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use axum::Router;
use base64::Engine as _;
use bytes::Bytes;

use crate::digest::Digest;

/// How the fake wants clients to authenticate.
#[derive(Clone, Default)]
pub(crate) enum FakeAuth {
    #[default]
    None,
    /// Token auth through `/token` on the fake itself. With `user`, the
    /// token endpoint demands those Basic credentials to grant access
    /// (anonymous requests get a token that grants nothing, like Hub).
    Bearer { user: Option<(String, String)> },
    Basic { user: String, password: String },
}

/// What to put in `Docker-Content-Digest` for a manifest.
#[derive(Clone)]
pub(crate) enum DigestHeader {
    Correct,
    Absent,
    Wrong(Digest),
}

#[derive(Clone)]
pub(crate) struct FakeManifest {
    pub bytes: Bytes,
    pub content_type: Option<String>,
    pub digest_header: DigestHeader,
}

/// One request as the fake saw it.
#[derive(Clone, Debug)]
pub(crate) struct Logged {
    pub method: Method,
    pub path: String,
    pub authorization: Option<String>,
}

#[derive(Default)]
pub(crate) struct FakeState {
    /// Keyed by (repository, tag or digest).
    pub manifests: HashMap<(String, String), FakeManifest>,
    pub blobs: HashMap<String, Bytes>,
    pub auth: FakeAuth,
    /// Answer range requests with 200 and the whole blob.
    pub ignore_range: bool,
    /// Appended to every blob body: a blob longer than its descriptor.
    pub blob_extra: Vec<u8>,
    /// Send blob and manifest bodies without Content-Length.
    pub chunked: bool,
    /// Redirect blob GETs to this base URL (another fake).
    pub redirect_blobs: Option<String>,
    /// Reply 404 to every manifest request (an empty mirror).
    pub know_nothing: bool,
    pub catalog: Vec<String>,
    pub search: Option<serde_json::Value>,
    pub log: Vec<Logged>,
    pub token_requests: Vec<String>,
    uploads: u64,
}

pub(crate) struct FakeRegistry {
    pub addr: SocketAddr,
    state: Arc<Mutex<FakeState>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeRegistry {
    pub(crate) async fn start() -> Self {
        let state = Arc::new(Mutex::new(FakeState::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind fake registry");
        let addr = listener.local_addr().expect("fake registry address");
        let app = Router::new().fallback(handle).with_state((state.clone(), addr));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeRegistry { addr, state, task }
    }

    /// `127.0.0.1:port`, a reference domain.
    pub(crate) fn domain(&self) -> String {
        self.addr.to_string()
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().expect("fake registry state")
    }

    pub(crate) fn put_blob(&self, data: &[u8]) -> Digest {
        let d = Digest::of(data);
        self.state().blobs.insert(d.to_string(), Bytes::copy_from_slice(data));
        d
    }

    /// Serves `bytes` under `reference` (a tag or digest) of `repo`.
    pub(crate) fn put_manifest(&self, repo: &str, reference: &str, bytes: &[u8], content_type: Option<&str>, digest_header: DigestHeader) {
        let m = FakeManifest {
            bytes: Bytes::copy_from_slice(bytes),
            content_type: content_type.map(str::to_owned),
            digest_header,
        };
        self.state().manifests.insert((repo.to_owned(), reference.to_owned()), m);
    }

    /// Serves `bytes` under its digest, and under `tag` if given; returns
    /// the digest.
    pub(crate) fn add_manifest(&self, repo: &str, tag: Option<&str>, bytes: &[u8], content_type: &str) -> Digest {
        let d = Digest::of(bytes);
        self.put_manifest(repo, &d.to_string(), bytes, Some(content_type), DigestHeader::Correct);
        if let Some(tag) = tag {
            self.put_manifest(repo, tag, bytes, Some(content_type), DigestHeader::Correct);
        }
        d
    }

    pub(crate) fn log(&self) -> Vec<Logged> {
        self.state().log.clone()
    }
}

type Shared = (Arc<Mutex<FakeState>>, SocketAddr);

fn reply(status: StatusCode) -> axum::http::response::Builder {
    Response::builder().status(status)
}

fn finish(b: axum::http::response::Builder, body: Body) -> Response {
    b.body(body).expect("fake registry response")
}

fn errors(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({"errors": [{"code": code, "message": message}]}).to_string();
    finish(reply(status).header("content-type", "application/json"), Body::from(body))
}

fn body_of(data: Bytes, chunked: bool) -> Body {
    if chunked {
        let mid = data.len() / 2;
        let parts = vec![Ok::<_, std::io::Error>(data.slice(..mid)), Ok(data.slice(mid..))];
        Body::from_stream(futures_util::stream::iter(parts))
    } else {
        Body::from(data)
    }
}

fn header(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

fn query_params(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), decode(v)))
        .collect()
}

fn decode(s: &str) -> String {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap_or(b'?'));
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether the request may proceed; otherwise the 401 to send.
#[allow(clippy::result_large_err)] // test-only; the response is sent right away
fn check_auth(st: &FakeState, addr: SocketAddr, headers: &HeaderMap, name: Option<&str>, push: bool) -> Result<(), Response> {
    let given = header(headers, "authorization");
    match &st.auth {
        FakeAuth::None => Ok(()),
        FakeAuth::Basic { user, password } => {
            let want = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")));
            if given.as_deref() == Some(want.as_str()) {
                Ok(())
            } else {
                let mut r = errors(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "authentication required");
                r.headers_mut().insert("www-authenticate", "Basic realm=\"fake\"".parse().expect("header"));
                Err(r)
            }
        }
        FakeAuth::Bearer { .. } => {
            let action = if push { "push" } else { "pull" };
            let scope = name.map(|n| format!("repository:{n}:"));
            let ok = given.as_deref().and_then(|g| g.strip_prefix("Bearer tok:")).is_some_and(|granted| match &scope {
                // Tokens are `tok:<scopes joined by +>`; `anon` grants nothing.
                Some(prefix) => granted.split('+').any(|s| {
                    s.strip_prefix(prefix.as_str()).is_some_and(|actions| actions.split(',').any(|a| a == action))
                }),
                None => true,
            });
            if ok {
                return Ok(());
            }
            let mut challenge = format!("Bearer realm=\"http://{addr}/token\",service=\"fake-registry\"");
            if let Some(n) = name {
                let actions = if push { "pull,push" } else { "pull" };
                challenge.push_str(&format!(",scope=\"repository:{n}:{actions}\""));
            }
            let mut r = errors(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "authentication required");
            r.headers_mut().insert("www-authenticate", challenge.parse().expect("header"));
            Err(r)
        }
    }
}

async fn handle(State((state, addr)): State<Shared>, req: Request) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let headers = req.headers().clone();
    let body = axum::body::to_bytes(req.into_body(), 64 << 20).await.unwrap_or_default();
    let mut st = state.lock().expect("fake registry state");
    st.log.push(Logged { method: method.clone(), path: format!("{path}?{query}"), authorization: header(&headers, "authorization") });

    if path == "/token" && method == Method::POST {
        return oauth_token(&mut st, &body);
    }
    if path == "/token" {
        return token(&mut st, &headers, &query);
    }
    if path == "/v1/search" {
        return match &st.search {
            Some(v) => finish(reply(StatusCode::OK), Body::from(v.to_string())),
            None => errors(StatusCode::NOT_FOUND, "NOT_FOUND", "no search here"),
        };
    }
    let Some(rest) = path.strip_prefix("/v2/") else { return errors(StatusCode::NOT_FOUND, "NOT_FOUND", "not a v2 path") };
    if rest.is_empty() {
        if let Err(r) = check_auth(&st, addr, &headers, None, false) {
            return r;
        }
        return finish(reply(StatusCode::OK), Body::from("{}"));
    }
    if rest == "_catalog" {
        if let Err(r) = check_auth(&st, addr, &headers, None, false) {
            return r;
        }
        return catalog(&st, &query);
    }
    let push = method == Method::PUT || method == Method::POST;
    if let Some((name, reference)) = rest.rsplit_once("/manifests/") {
        if let Err(r) = check_auth(&st, addr, &headers, Some(name), push) {
            return r;
        }
        return manifests(&mut st, &method, name, reference, &headers, body);
    }
    if let Some((name, upload)) = rest.split_once("/blobs/uploads/") {
        if let Err(r) = check_auth(&st, addr, &headers, Some(name), true) {
            return r;
        }
        return uploads(&mut st, &method, name, upload, &query, body);
    }
    if let Some((name, digest)) = rest.rsplit_once("/blobs/") {
        if let Err(r) = check_auth(&st, addr, &headers, Some(name), false) {
            return r;
        }
        return blobs(&st, &method, name, digest, &headers);
    }
    if let Some(name) = rest.strip_suffix("/tags/list") {
        if let Err(r) = check_auth(&st, addr, &headers, Some(name), false) {
            return r;
        }
        let mut tags: Vec<&str> = st
            .manifests
            .keys()
            .filter(|(n, r)| n == name && !r.starts_with("sha256:"))
            .map(|(_, r)| r.as_str())
            .collect();
        tags.sort();
        return finish(reply(StatusCode::OK), Body::from(serde_json::json!({"name": name, "tags": tags}).to_string()));
    }
    errors(StatusCode::NOT_FOUND, "NOT_FOUND", "unknown path")
}

fn token(st: &mut FakeState, headers: &HeaderMap, query: &str) -> Response {
    let params = query_params(query);
    let scopes: Vec<String> = params.iter().filter(|(k, _)| k == "scope").map(|(_, v)| v.clone()).collect();
    st.token_requests.push(scopes.join(" "));
    let FakeAuth::Bearer { user } = &st.auth else { return errors(StatusCode::NOT_FOUND, "NOT_FOUND", "no token server") };
    let given = header(headers, "authorization");
    let granted = match (user, given) {
        (None, _) => true,
        (Some((u, p)), Some(g)) => {
            let want = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}")));
            if g != want {
                return finish(
                    reply(StatusCode::UNAUTHORIZED).header("content-type", "application/json"),
                    Body::from(r#"{"details":"incorrect username or password"}"#),
                );
            }
            true
        }
        // Anonymous: a token that grants nothing, as Docker Hub does.
        (Some(_), None) => false,
    };
    let token = if granted { format!("tok:{}", scopes.join("+")) } else { "anon".to_owned() };
    let body = serde_json::json!({"token": token, "expires_in": 300}).to_string();
    finish(reply(StatusCode::OK).header("content-type", "application/json"), Body::from(body))
}

/// The OAuth2 refresh-token grant: `refresh-ok` is the one valid token.
fn oauth_token(st: &mut FakeState, body: &[u8]) -> Response {
    let form = query_params(&String::from_utf8_lossy(body));
    let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap_or_default();
    st.token_requests.push(get("scope"));
    if get("grant_type") != "refresh_token" || get("refresh_token") != "refresh-ok" {
        return finish(reply(StatusCode::UNAUTHORIZED), Body::from(r#"{"details":"invalid refresh token"}"#));
    }
    let token = format!("tok:{}", get("scope").replace(' ', "+"));
    let body = serde_json::json!({"access_token": token, "expires_in": 300}).to_string();
    finish(reply(StatusCode::OK).header("content-type", "application/json"), Body::from(body))
}

fn manifests(st: &mut FakeState, method: &Method, name: &str, reference: &str, headers: &HeaderMap, body: Bytes) -> Response {
    if *method == Method::PUT {
        let d = Digest::of(&body);
        let m = FakeManifest { bytes: body, content_type: header(headers, "content-type"), digest_header: DigestHeader::Correct };
        st.manifests.insert((name.to_owned(), reference.to_owned()), m.clone());
        st.manifests.insert((name.to_owned(), d.to_string()), m);
        return finish(reply(StatusCode::CREATED).header("docker-content-digest", d.to_string()), Body::empty());
    }
    let found = if st.know_nothing { None } else { st.manifests.get(&(name.to_owned(), reference.to_owned())) };
    let Some(m) = found else {
        if st.manifests.keys().any(|(n, _)| n == name) && !st.know_nothing {
            return errors(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN", "manifest unknown");
        }
        return errors(StatusCode::NOT_FOUND, "NAME_UNKNOWN", "repository name not known to registry");
    };
    let mut b = reply(StatusCode::OK);
    if let Some(ct) = &m.content_type {
        b = b.header("content-type", ct);
    }
    match &m.digest_header {
        DigestHeader::Correct => b = b.header("docker-content-digest", Digest::of(&m.bytes).to_string()),
        DigestHeader::Wrong(d) => b = b.header("docker-content-digest", d.to_string()),
        DigestHeader::Absent => {}
    }
    finish(b, body_of(m.bytes.clone(), st.chunked))
}

fn blobs(st: &FakeState, method: &Method, name: &str, digest: &str, headers: &HeaderMap) -> Response {
    let Some(data) = st.blobs.get(digest) else { return errors(StatusCode::NOT_FOUND, "BLOB_UNKNOWN", "blob unknown to registry") };
    if *method == Method::HEAD {
        return finish(reply(StatusCode::OK).header("content-length", data.len()), Body::empty());
    }
    if let Some(base) = &st.redirect_blobs {
        return finish(reply(StatusCode::TEMPORARY_REDIRECT).header("location", format!("{base}/v2/{name}/blobs/{digest}")), Body::empty());
    }
    let range_start = header(headers, "range")
        .and_then(|r| r.strip_prefix("bytes=").and_then(|r| r.strip_suffix('-')).and_then(|n| n.parse::<usize>().ok()));
    let (status, start) = match range_start {
        Some(n) if !st.ignore_range && n < data.len() => (StatusCode::PARTIAL_CONTENT, n),
        _ => (StatusCode::OK, 0),
    };
    let mut out = data.slice(start..).to_vec();
    out.extend_from_slice(&st.blob_extra);
    let mut b = reply(status);
    if status == StatusCode::PARTIAL_CONTENT {
        b = b.header("content-range", format!("bytes {start}-{}/{}", data.len() - 1, data.len()));
    }
    finish(b, body_of(Bytes::from(out), st.chunked))
}

fn uploads(st: &mut FakeState, method: &Method, name: &str, upload: &str, query: &str, body: Bytes) -> Response {
    if *method == Method::POST && upload.is_empty() {
        st.uploads += 1;
        let location = format!("/v2/{name}/blobs/uploads/u{}?state=x", st.uploads);
        return finish(reply(StatusCode::ACCEPTED).header("location", location), Body::empty());
    }
    if *method == Method::PUT {
        let params = query_params(query);
        let Some((_, digest)) = params.iter().find(|(k, _)| k == "digest") else {
            return errors(StatusCode::BAD_REQUEST, "DIGEST_INVALID", "no digest");
        };
        if Digest::of(&body).to_string() != *digest {
            return errors(StatusCode::BAD_REQUEST, "DIGEST_INVALID", "provided digest did not match uploaded content");
        }
        st.blobs.insert(digest.clone(), body);
        return finish(reply(StatusCode::CREATED).header("docker-content-digest", digest.as_str()), Body::empty());
    }
    errors(StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED", "unsupported")
}

fn catalog(st: &FakeState, query: &str) -> Response {
    let params = query_params(query);
    let n: usize = params.iter().find(|(k, _)| k == "n").and_then(|(_, v)| v.parse().ok()).unwrap_or(100).min(2);
    let last = params.iter().find(|(k, _)| k == "last").map(|(_, v)| v.clone());
    let mut names = st.catalog.clone();
    names.sort();
    let rest: Vec<String> = names.into_iter().filter(|x| last.as_ref().is_none_or(|l| x > l)).collect();
    let page: Vec<String> = rest.iter().take(n).cloned().collect();
    let mut b = reply(StatusCode::OK);
    if rest.len() > n {
        if let Some(l) = page.last() {
            b = b.header("link", format!("</v2/_catalog?last={l}&n={n}>; rel=\"next\""));
        }
    }
    finish(b, Body::from(serde_json::json!({"repositories": page}).to_string()))
}

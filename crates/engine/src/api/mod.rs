//! The Docker Engine API over HTTP: routing, version negotiation, request
//! parsing and error encoding. Handlers translate between the wire and the
//! engine; they never touch disk themselves.

mod container_fs;
mod containers;
mod images;
mod networks;
mod system;
mod volumes;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::engine::Engine;
use crate::error::{Error, Kind};

/// The newest API version served.
pub const API_VERSION: &str = "1.47";
/// The oldest API version served, as dockerd.
pub const MIN_API_VERSION: &str = "1.24";

/// The version a request asked for, from its `/vX.Y` prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ApiVersion(pub u32, pub u32);

impl ApiVersion {
    pub fn parse(s: &str) -> Option<Self> {
        let (a, b) = s.split_once('.')?;
        Some(ApiVersion(a.parse().ok()?, b.parse().ok()?))
    }
}

impl std::fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

pub(crate) type AppState = State<Arc<Engine>>;

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        if self.kind == Kind::Internal {
            tracing::error!(error = %self.message, "request failed");
        }
        let status = StatusCode::from_u16(self.kind.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        json_response(status, &serde_json::json!({ "message": self.message }))
    }
}

/// A JSON response with dockerd's content type.
pub(crate) fn json_response<T: serde::Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(mut body) => {
            body.push(b'\n');
            let mut resp = Response::new(Body::from(body));
            *resp.status_mut() = status;
            resp.headers_mut().insert("content-type", HeaderValue::from_static("application/json"));
            resp
        }
        Err(e) => Error::internal(format!("encode response: {e}")).into_response(),
    }
}

/// One value as a newline-terminated JSON line (events, stats, wait).
pub(crate) fn json_line<T: serde::Serialize>(value: &T) -> Vec<u8> {
    let mut line = serde_json::to_vec(value).unwrap_or_default();
    line.push(b'\n');
    line
}

/// The items of a channel as a stream, ending when every sender is gone.
pub(crate) fn receive<T: Send + 'static>(rx: tokio::sync::mpsc::Receiver<T>) -> impl futures_util::Stream<Item = T> + Send {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) })
}

/// A 200 response whose body is sent as `stream` yields it (progress,
/// events, logs, archives).
pub(crate) fn streaming<S, T, E>(stream: S, content_type: HeaderValue) -> Response
where
    S: futures_util::Stream<Item = Result<T, E>> + Send + 'static,
    T: Into<bytes::Bytes> + 'static,
    E: Into<axum::BoxError> + 'static,
{
    let mut resp = Response::new(Body::from_stream(stream));
    resp.headers_mut().insert("content-type", content_type);
    resp
}

pub(crate) fn ok_json<T: serde::Serialize>(value: &T) -> Response {
    json_response(StatusCode::OK, value)
}

/// Query parameters in order, repeated keys kept.
#[derive(Debug, Default)]
pub(crate) struct Params(Vec<(String, String)>);

impl Params {
    pub fn from_query(q: Option<&str>) -> Result<Self, Error> {
        let q = q.unwrap_or_default();
        serde_urlencoded::from_str::<Vec<(String, String)>>(q)
            .map(Params)
            .map_err(|e| Error::invalid(format!("invalid query: {e}")))
    }
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str())
    }
    pub fn all(&self, k: &str) -> Vec<&str> {
        self.0.iter().filter(|(key, _)| key == k).map(|(_, v)| v.as_str()).collect()
    }
    /// dockerd's `BoolValue`: absent, empty, `0`, `no`, `false`, `none` are false.
    pub fn bool(&self, k: &str) -> bool {
        match self.get(k) {
            None => false,
            Some(v) => !matches!(v.trim().to_ascii_lowercase().as_str(), "" | "0" | "no" | "false" | "none"),
        }
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Params {
    type Rejection = Error;
    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Self, Error> {
        Params::from_query(parts.uri.query())
    }
}

/// Strips and checks the `/vX.Y` prefix so the routes below are written
/// once, unversioned.
async fn negotiate(mut req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let mut version = ApiVersion::parse(API_VERSION).expect("constant");
    if let Some(rest) = path.strip_prefix("/v") {
        let (ver, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if let Some(v) = ApiVersion::parse(ver) {
            let max = ApiVersion::parse(API_VERSION).expect("constant");
            let min = ApiVersion::parse(MIN_API_VERSION).expect("constant");
            if v > max {
                return Error::invalid(format!(
                    "client version {v} is too new. Maximum supported API version is {API_VERSION}"
                ))
                .into_response();
            }
            if v < min {
                return Error::invalid(format!(
                    "client version {v} is too old. Minimum supported API version is {MIN_API_VERSION}, please upgrade your client to a newer version"
                ))
                .into_response();
            }
            version = v;
            let new_path = if tail.is_empty() { "/".to_owned() } else { tail.to_owned() };
            let pq = match req.uri().query() {
                Some(q) => format!("{new_path}?{q}"),
                None => new_path,
            };
            match pq.parse() {
                Ok(uri) => *req.uri_mut() = uri,
                Err(_) => return Error::invalid("invalid request path").into_response(),
            }
        }
    }
    req.extensions_mut().insert(version);
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert("api-version", HeaderValue::from_static(API_VERSION));
    h.insert("docker-experimental", HeaderValue::from_static("false"));
    h.insert("ostype", HeaderValue::from_static("linux"));
    h.insert("server", HeaderValue::from_static(concat!("Docker/", env!("CARGO_PKG_VERSION"), " (linux)")));
    resp
}

async fn not_found() -> Error {
    Error::new(Kind::NotFound, "page not found")
}

/// The whole API as a service, ready to serve on any listener (tests call
/// it without a socket).
pub fn service(engine: Arc<Engine>) -> Router {
    let api = Router::new()
        .route("/_ping", get(system::ping).head(system::ping))
        .route("/version", get(system::version))
        .route("/info", get(system::info))
        .route("/events", get(system::events))
        .route("/system/df", get(system::df))
        .route("/images/json", get(images::list))
        .route("/images/create", post(images::create))
        .route("/images/search", get(images::search))
        .route("/images/prune", post(images::prune))
        .route("/images/get", get(images::save_many))
        .route("/images/load", post(images::load))
        .route("/images/{*rest}", get(images::get_dispatch).post(images::post_dispatch).delete(images::delete))
        .route("/containers/create", post(containers::create))
        .route("/containers/json", get(containers::list))
        .route("/containers/prune", post(containers::prune))
        .route("/containers/{id}", axum::routing::delete(containers::delete))
        .route("/containers/{id}/{what}", get(containers::get_dispatch).post(containers::post_dispatch))
        .route("/exec/{id}/start", post(containers::exec_start))
        .route("/exec/{id}/json", get(containers::exec_json))
        .route("/exec/{id}/resize", post(containers::exec_resize))
        .route("/build/prune", post(system::build_prune))
        .route("/networks", get(networks::list))
        .route("/networks/create", post(networks::create))
        .route("/networks/prune", post(networks::prune))
        .route("/networks/{id}", get(networks::inspect).delete(networks::delete))
        .route("/networks/{id}/{what}", post(networks::post_dispatch))
        .route("/volumes", get(volumes::list))
        .route("/volumes/create", post(volumes::create))
        .route("/volumes/prune", post(volumes::prune))
        .route("/volumes/{name}", get(volumes::inspect).delete(volumes::delete))
        .route("/containers/{id}/archive", get(container_fs::archive_get).head(container_fs::archive_head).put(container_fs::archive_put))
        .route("/commit", post(container_fs::commit))
        .fallback(not_found)
        .with_state(engine);
    Router::new().fallback_service(api).layer(axum::middleware::from_fn(negotiate))
}

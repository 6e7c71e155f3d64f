//! `/images/*` handlers.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::sync::mpsc;

use futures_util::StreamExt;

use super::{ok_json, receive, streaming, AppState, Params};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::filters::Filters;
use crate::images::pull::{JsonMessage, Progress};
use crate::reference::Reference;
use crate::registry::docker_config::DockerConfig;
use crate::registry::{Credentials, Platform};

pub(super) async fn list(State(engine): AppState, params: Params) -> Result<Response> {
    let filters = Filters::parse(params.get("filters"), &["before", "dangling", "label", "reference", "since", "until"])?;
    let mut filters = filters;
    // Old clients send `filter=name` for a reference filter.
    if let Some(f) = params.get("filter").filter(|f| !f.is_empty()) {
        filters.0.entry("reference".to_owned()).or_default().push(f.to_owned());
    }
    let mut list = engine.images.list(params.bool("all"), &filters)?;
    if !params.bool("shared-size") {
        for i in &mut list {
            i.shared_size = -1;
        }
    }
    Ok(ok_json(&list))
}

/// The client's credentials (`X-Registry-Auth`), else those the engine's
/// own `~/.docker/config.json` (or its credential helper) has for `domain`.
async fn credentials(headers: &HeaderMap, domain: &str) -> Result<Credentials> {
    let header = headers.get("x-registry-auth").and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty());
    if let Some(h) = header {
        let creds = Credentials::from_x_registry_auth(h).map_err(|e| Error::invalid(e.to_string()))?;
        if creds != Credentials::Anonymous {
            return Ok(creds);
        }
    }
    match DockerConfig::from_env().lookup(domain).await {
        Ok(c) => Ok(c),
        Err(e) => {
            tracing::warn!(registry = domain, error = %e, "ignoring unreadable docker credentials");
            Ok(Credentials::Anonymous)
        }
    }
}

fn platform(params: &Params) -> Result<Platform> {
    match params.get("platform").filter(|p| !p.is_empty()) {
        None => Ok(Platform::default()),
        Some(p) => Platform::parse(p).map_err(|e| Error::invalid(e.to_string())),
    }
}

/// Runs `op` and streams its progress. An error before any progress becomes
/// a plain HTTP error (as dockerd), one after becomes an error message in
/// the stream.
async fn progress_stream<F, Fut>(op: F) -> Response
where
    F: FnOnce(Progress) -> Fut,
    Fut: std::future::Future<Output = Result<()>> + Send + 'static,
{
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut task = tokio::spawn(op(Progress::new(tx)));
    let first = tokio::select! {
        m = rx.recv() => m,
        done = &mut task => {
            match done {
                Ok(Err(e)) => return e.into_response(),
                Err(e) => return Error::internal(format!("operation panicked: {e}")).into_response(),
                Ok(Ok(())) => rx.recv().await,
            }
        }
    };
    let (btx, brx) = mpsc::channel::<std::result::Result<Vec<u8>, std::io::Error>>(64);
    let encode = |m: &JsonMessage| {
        let mut v = serde_json::to_vec(m).unwrap_or_default();
        v.extend_from_slice(b"\r\n");
        v
    };
    tokio::spawn(async move {
        if let Some(m) = first {
            let _ = btx.send(Ok(encode(&m))).await;
        }
        while let Some(m) = rx.recv().await {
            let _ = btx.send(Ok(encode(&m))).await;
        }
        let end = match task.await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.message),
            Err(e) => Some(format!("operation panicked: {e}")),
        };
        if let Some(msg) = end {
            let _ = btx.send(Ok(encode(&JsonMessage::error(&msg)))).await;
        }
    });
    streaming(receive(brx), HeaderValue::from_static("application/json"))
}

/// `POST /images/create`: pull (`fromImage`) or import (`fromSrc`).
pub(super) async fn create(State(engine): AppState, params: Params, headers: HeaderMap, body: Body) -> Result<Response> {
    if let Some(from) = params.get("fromImage").filter(|f| !f.is_empty()) {
        let tag = params.get("tag").filter(|t| !t.is_empty());
        let name = match tag {
            Some(t) if t.starts_with("sha256:") => format!("{from}@{t}"),
            Some(t) => format!("{from}:{t}"),
            None => from.to_owned(),
        };
        let reference = Reference::parse(&name).map_err(|e| Error::invalid(e.to_string()))?;
        let platform = platform(&params)?;
        let creds = credentials(&headers, reference.domain()).await?;
        let images = engine.images.clone();
        return Ok(progress_stream(move |p| async move {
            images.pull(&reference, &platform, &creds, &p).await.map(|_| ())
        })
        .await);
    }
    if let Some(src) = params.get("fromSrc").filter(|f| !f.is_empty()) {
        return import(engine, &params, src, body).await;
    }
    Err(Error::invalid("fromImage or fromSrc is required"))
}

async fn import(engine: Arc<Engine>, params: &Params, src: &str, body: Body) -> Result<Response> {
    if src != "-" {
        return Err(Error::invalid("importing from a URL is not supported; send the archive in the request body"));
    }
    let repo = params.get("repo").filter(|r| !r.is_empty());
    let reference = match repo {
        None => None,
        Some(r) => {
            let name = match params.get("tag").filter(|t| !t.is_empty()) {
                Some(t) => format!("{r}:{t}"),
                None => r.to_owned(),
            };
            Some(Reference::parse(&name).map_err(|e| Error::invalid(e.to_string()))?.with_default_tag())
        }
    };
    let changes: Vec<String> = params.all("changes").into_iter().map(str::to_owned).collect();
    let message = params.get("message").unwrap_or_default().to_owned();
    let upload = engine.spool_body(body).await?;
    let images = engine.images.clone();
    Ok(progress_stream(move |p| async move {
        let id = tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(upload.path()).map_err(|e| Error::io("open upload", e))?;
            images.import(file, reference, &changes, &message)
        })
        .await
        .map_err(|e| Error::internal(e.to_string()))??;
        p.send(JsonMessage::status(id.to_string(), None));
        Ok(())
    })
    .await)
}

pub(super) async fn search(State(engine): AppState, params: Params, headers: HeaderMap) -> Result<Response> {
    let term = params.get("term").unwrap_or_default();
    if term.is_empty() {
        return Err(Error::invalid("term is required"));
    }
    let limit = match params.get("limit").filter(|l| !l.is_empty()) {
        None => 25,
        Some(l) => l.parse::<usize>().map_err(|_| Error::invalid(format!("invalid limit {l:?}")))?,
    };
    if limit == 0 || limit > 100 {
        return Err(Error::invalid(format!("limit {limit} is outside the range of [1, 100]")));
    }
    let filters = Filters::parse(params.get("filters"), &["is-automated", "is-official", "stars"])?;
    let domain = match term.split_once('/') {
        Some((d, _)) if d.contains('.') || d.contains(':') || d == "localhost" => d,
        _ => "docker.io",
    };
    let creds = credentials(&headers, domain).await?;
    let results = engine.images.search(term, limit, &filters, &creds).await?;
    Ok(ok_json(&results))
}

pub(super) async fn prune(State(engine): AppState, params: Params) -> Result<Response> {
    let filters = Filters::parse(params.get("filters"), &["dangling", "label", "label!", "until"])?;
    Ok(ok_json(&engine.images.prune(&filters)?))
}

/// Streams a `docker save` archive produced on a blocking thread. Every
/// error `save` can report comes before its first byte, so waiting for the
/// first chunk lets a failure be a plain HTTP error.
async fn save_stream(engine: Arc<Engine>, names: Vec<String>) -> Result<Response> {
    let (tx, mut rx) = mpsc::channel::<std::result::Result<Vec<u8>, std::io::Error>>(8);
    let images = engine.images.clone();
    let mut done = tokio::task::spawn_blocking(move || images.save(&names, ChannelWriter(tx)));
    let first = tokio::select! {
        chunk = rx.recv() => chunk,
        result = &mut done => {
            result.map_err(|e| Error::internal(e.to_string()))??;
            rx.recv().await
        }
    };
    tokio::spawn(async move {
        if let Ok(Err(e)) = done.await {
            tracing::error!(error = %e, "save failed mid-stream");
        }
    });
    let stream = futures_util::stream::iter(first).chain(receive(rx));
    Ok(streaming(stream, HeaderValue::from_static("application/x-tar")))
}

struct ChannelWriter(mpsc::Sender<std::result::Result<Vec<u8>, std::io::Error>>);

impl std::io::Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.blocking_send(Ok(buf.to_vec())).map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub(super) async fn save_many(State(engine): AppState, params: Params) -> Result<Response> {
    let names: Vec<String> = params.all("names").into_iter().map(str::to_owned).collect();
    save_stream(engine, names).await
}

pub(super) async fn load(State(engine): AppState, params: Params, body: Body) -> Result<Response> {
    let quiet = params.bool("quiet");
    let upload = engine.spool_body(body).await?;
    let images = engine.images.clone();
    Ok(progress_stream(move |p| async move {
        tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(upload.path()).map_err(|e| Error::io("open upload", e))?;
            images.load(file, quiet, &mut |line: String| p.send(JsonMessage { stream: Some(format!("{line}\n")), ..Default::default() }))
        })
        .await
        .map_err(|e| Error::internal(e.to_string()))?
    })
    .await)
}

/// `GET /images/{name}/json|history|get` (names contain slashes).
pub(super) async fn get_dispatch(State(engine): AppState, Path(rest): Path<String>) -> Result<Response> {
    if let Some(name) = rest.strip_suffix("/json") {
        return Ok(ok_json(&engine.images.inspect(name)?));
    }
    if let Some(name) = rest.strip_suffix("/history") {
        return Ok(ok_json(&engine.images.history(name)?));
    }
    if let Some(name) = rest.strip_suffix("/get") {
        return save_stream(engine, vec![name.to_owned()]).await;
    }
    Err(Error::not_found("page not found"))
}

/// `POST /images/{name}/tag|push`.
pub(super) async fn post_dispatch(State(engine): AppState, Path(rest): Path<String>, params: Params, headers: HeaderMap) -> Result<Response> {
    if let Some(name) = rest.strip_suffix("/tag") {
        let repo = params.get("repo").unwrap_or_default();
        if repo.is_empty() {
            return Err(Error::invalid("repo is required"));
        }
        engine.images.tag(name, repo, params.get("tag"))?;
        return Ok((StatusCode::CREATED, "").into_response());
    }
    if let Some(name) = rest.strip_suffix("/push") {
        let tag = params.get("tag").filter(|t| !t.is_empty()).map(str::to_owned);
        let name = name.to_owned();
        let images = engine.images.clone();
        let r = Reference::parse(&name).map_err(|e| Error::invalid(e.to_string()))?;
        let creds = credentials(&headers, r.domain()).await?;
        return Ok(progress_stream(move |p| async move { images.push(&r, tag.as_deref(), &creds, &p).await }).await);
    }
    Err(Error::not_found("page not found"))
}

pub(super) async fn delete(State(engine): AppState, Path(name): Path<String>, params: Params) -> Result<Response> {
    let records = engine.images.remove(&name, params.bool("force"), !params.bool("noprune"))?;
    Ok(ok_json(&records))
}

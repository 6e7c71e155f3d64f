//! A container's file system on the wire: `docker cp`
//! (`HEAD|GET|PUT /containers/{id}/archive`), `docker diff`
//! (`GET /containers/{id}/changes`), `docker export`
//! (`GET /containers/{id}/export`) and `docker commit` (`POST /commit`).
//! The work is in `containers::fs`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use http_body_util::BodyExt;
use serde_json::{json, Value};

use super::{json_response, ok_json, AppState, Params};
use crate::containers::fs::{CommitOptions, ExtractOptions, PathStat, TarStream};
use crate::engine::Engine;
use crate::error::{Error, Result};

/// The header dockerd puts the stat of an archived path in.
const PATH_STAT_HEADER: &str = "x-docker-container-path-stat";

/// Largest commit body (a container config) accepted.
const MAX_CONFIG_BODY: usize = 4 * 1024 * 1024;

/// `path`, which every archive call requires.
fn archive_path(params: &Params) -> Result<&str> {
    params.get("path").filter(|p| !p.is_empty()).ok_or_else(|| Error::invalid("bad parameter: path cannot be empty"))
}

/// Base64 of the stat's JSON, as dockerd's `setContainerPathStatHeader`.
fn stat_header(stat: &PathStat) -> Result<HeaderValue> {
    let json = serde_json::to_vec(stat).map_err(|e| Error::internal(e.to_string()))?;
    HeaderValue::from_str(&base64::engine::general_purpose::STANDARD.encode(json)).map_err(|e| Error::internal(e.to_string()))
}

fn tar_response(stream: TarStream) -> Response {
    super::streaming(super::receive(stream), HeaderValue::from_static("application/x-tar"))
}

/// `HEAD /containers/{id}/archive?path=`.
pub(super) async fn archive_head(State(engine): AppState, Path(id): Path<String>, params: Params) -> Result<Response> {
    let stat = engine.containers.stat_path(&id, archive_path(&params)?).await?;
    let mut resp = StatusCode::OK.into_response();
    resp.headers_mut().insert(PATH_STAT_HEADER, stat_header(&stat)?);
    Ok(resp)
}

/// `GET /containers/{id}/archive?path=`.
pub(super) async fn archive_get(State(engine): AppState, Path(id): Path<String>, params: Params) -> Result<Response> {
    let (stat, stream) = engine.containers.archive_path(&id, archive_path(&params)?).await?;
    let mut resp = tar_response(stream);
    resp.headers_mut().insert(PATH_STAT_HEADER, stat_header(&stat)?);
    Ok(resp)
}

/// `PUT /containers/{id}/archive?path=&noOverwriteDirNonDir=&copyUIDGID=`.
pub(super) async fn archive_put(State(engine): AppState, Path(id): Path<String>, params: Params, body: Body) -> Result<Response> {
    let path = archive_path(&params)?.to_owned();
    // Fail fast on an unknown container, before taking in the upload.
    engine.containers.find(&id)?;
    let opts = ExtractOptions {
        copy_uid_gid: params.bool("copyUIDGID"),
        no_overwrite_dir_non_dir: params.bool("noOverwriteDirNonDir"),
    };
    let upload = engine.spool_body(body).await?;
    let file = upload.reopen().map_err(|e| Error::io("open upload", e))?;
    engine.containers.extract_to_dir(&id, &path, opts, file).await?;
    Ok(StatusCode::OK.into_response())
}

/// `GET /containers/{id}/changes` (`null` when nothing changed, as dockerd).
pub(super) async fn changes(engine: Arc<Engine>, id: &str) -> Result<Response> {
    let changes = engine.containers.changes(id).await?;
    Ok(ok_json(&Some(changes).filter(|c| !c.is_empty())))
}

/// `GET /containers/{id}/export`.
pub(super) async fn export(engine: Arc<Engine>, id: &str) -> Result<Response> {
    Ok(tar_response(engine.containers.export(id).await?))
}

/// `POST /commit?container=&repo=&tag=&comment=&author=&pause=&changes=`,
/// with an optional container config as the body.
pub(super) async fn commit(State(engine): AppState, params: Params, body: Body) -> Result<Response> {
    let config = config_body(body).await?;
    let opts = CommitOptions {
        repo: params.get("repo").unwrap_or_default().to_owned(),
        tag: params.get("tag").unwrap_or_default().to_owned(),
        comment: params.get("comment").unwrap_or_default().to_owned(),
        author: params.get("author").unwrap_or_default().to_owned(),
        // Pauses unless asked not to, as dockerd.
        pause: params.get("pause").is_none() || params.bool("pause"),
        changes: params.all("changes").into_iter().map(str::to_owned).collect(),
        config,
    };
    let id = engine.containers.commit(params.get("container").unwrap_or_default(), opts).await?;
    Ok(json_response(StatusCode::CREATED, &json!({"Id": id.to_string()})))
}

/// The commit body: a container config, or nothing (the CLI sends `null`).
async fn config_body(body: Body) -> Result<Option<Value>> {
    let bytes = http_body_util::Limited::new(body, MAX_CONFIG_BODY)
        .collect()
        .await
        .map_err(|e| Error::invalid(format!("read request body: {e}")))?
        .to_bytes();
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    match serde_json::from_slice::<Value>(&bytes).map_err(|e| Error::invalid(format!("invalid JSON: {e}")))? {
        Value::Null => Ok(None),
        v @ Value::Object(_) => Ok(Some(v)),
        _ => Err(Error::invalid("invalid JSON: expected an object")),
    }
}

//! `/volumes/*` handlers.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::containers::json_body;
use super::{json_response, ok_json, AppState, Params};
use crate::error::{Error, Result};
use crate::filters::Filters;

/// `POST /volumes/create`.
pub(super) async fn create(State(engine): AppState, body: Body) -> Result<Response> {
    let body = json_body(body).await?;
    let map = |k: &str| -> Result<BTreeMap<String, String>> {
        match body.get(k) {
            None | Some(Value::Null) => Ok(BTreeMap::new()),
            Some(v) => serde_json::from_value(v.clone()).map_err(|e| Error::invalid(format!("invalid {k}: {e}"))),
        }
    };
    let name = body.get("Name").and_then(Value::as_str);
    let driver = body.get("Driver").and_then(Value::as_str);
    let rec = engine.volumes.create(name, driver, map("Labels")?, map("DriverOpts")?)?;
    Ok(json_response(StatusCode::CREATED, &engine.volumes.inspect(&rec.name)?))
}

/// `GET /volumes`.
pub(super) async fn list(State(engine): AppState, params: Params) -> Result<Response> {
    let filters = Filters::parse(params.get("filters"), &["dangling", "driver", "label", "label!", "name"])?;
    Ok(ok_json(&engine.volumes.list(&filters)?))
}

/// `GET /volumes/{name}`.
pub(super) async fn inspect(State(engine): AppState, Path(name): Path<String>) -> Result<Response> {
    Ok(ok_json(&engine.volumes.inspect(&name)?))
}

/// `DELETE /volumes/{name}`.
pub(super) async fn delete(State(engine): AppState, Path(name): Path<String>, params: Params) -> Result<Response> {
    engine.volumes.remove(&name, params.bool("force"))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /volumes/prune`.
pub(super) async fn prune(State(engine): AppState, params: Params) -> Result<Response> {
    let filters = Filters::parse(params.get("filters"), &["label", "label!", "all"])?;
    Ok(ok_json(&engine.volumes.prune(&filters)?))
}

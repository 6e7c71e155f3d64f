//! `/networks/*` handlers.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::containers::json_body;
use super::{json_response, ok_json, AppState, Params};
use crate::error::{Error, Result};
use crate::filters::Filters;

/// `GET /networks`.
pub(super) async fn list(State(engine): AppState, params: Params) -> Result<Response> {
    let filters = Filters::parse(params.get("filters"), &["dangling", "driver", "id", "label", "name", "scope", "type"])?;
    Ok(ok_json(&engine.networks.list(&filters)?))
}

/// `POST /networks/create`.
pub(super) async fn create(State(engine): AppState, body: Body) -> Result<Response> {
    let body = json_body(body).await?;
    let rec = engine.networks.create(&body).await?;
    Ok(json_response(StatusCode::CREATED, &json!({"Id": rec.id, "Warning": ""})))
}

/// `GET /networks/{id}`.
pub(super) async fn inspect(State(engine): AppState, Path(id): Path<String>) -> Result<Response> {
    Ok(ok_json(&engine.networks.inspect(&id)?))
}

/// `DELETE /networks/{id}`.
pub(super) async fn delete(State(engine): AppState, Path(id): Path<String>) -> Result<Response> {
    engine.networks.remove(&id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /networks/prune`.
pub(super) async fn prune(State(engine): AppState, params: Params) -> Result<Response> {
    let filters = Filters::parse(params.get("filters"), &["label", "label!", "until"])?;
    Ok(ok_json(&engine.networks.prune(&filters).await?))
}

/// `POST /networks/{id}/connect` and `/disconnect`.
pub(super) async fn post_dispatch(State(engine): AppState, Path((id, what)): Path<(String, String)>, body: Body) -> Result<Response> {
    let body = json_body(body).await?;
    let container = body.get("Container").and_then(Value::as_str).filter(|c| !c.is_empty()).ok_or_else(|| Error::invalid("no container specified"))?.to_owned();
    match what.as_str() {
        "connect" => engine.containers.connect(&id, &container, body.get("EndpointConfig")).await?,
        "disconnect" => engine.containers.disconnect(&id, &container, body.get("Force").and_then(Value::as_bool).unwrap_or(false)).await?,
        _ => return Err(Error::not_found("page not found")),
    }
    Ok(StatusCode::OK.into_response())
}

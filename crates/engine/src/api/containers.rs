//! `/containers/*` handlers, including the hijacked attach stream.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

use futures_util::StreamExt;

use super::{json_response, ok_json, receive, streaming, AppState, Params};
use crate::containers::logs::LogOptions;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::filters::Filters;

/// Largest JSON request body accepted (create, update, exec): far above
/// any real request, small enough that a hostile one costs nothing.
const MAX_JSON_BODY: usize = 4 * 1024 * 1024;

/// Reads a JSON object body with dockerd's error wording.
pub(super) async fn json_body(body: Body) -> Result<Value> {
    let limited = http_body_util::Limited::new(body, MAX_JSON_BODY);
    let bytes = limited
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                Error::invalid(format!("request body is larger than {MAX_JSON_BODY} bytes"))
            } else {
                Error::invalid(format!("read request body: {e}"))
            }
        })?
        .to_bytes();
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| Error::invalid(format!("invalid JSON: {e}")))?;
    if !v.is_object() {
        return Err(Error::invalid("invalid JSON: expected an object"));
    }
    Ok(v)
}

fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

fn not_modified() -> Response {
    StatusCode::NOT_MODIFIED.into_response()
}

pub(super) async fn create(State(engine): AppState, params: Params, body: Body) -> Result<Response> {
    let body = json_body(body).await?;
    let (id, warnings) = engine.containers.create(params.get("name"), &body)?;
    Ok(json_response(StatusCode::CREATED, &json!({"Id": id, "Warnings": warnings})))
}

pub(super) async fn list(State(engine): AppState, params: Params) -> Result<Response> {
    let filters = Filters::parse(
        params.get("filters"),
        &["ancestor", "before", "expose", "exited", "health", "id", "isolation", "is-task", "label", "name", "network", "publish", "since", "status", "volume"],
    )?;
    let limit = params.get("limit").and_then(|l| l.parse::<i64>().ok()).filter(|l| *l > 0).map(|l| l as usize);
    let all = params.bool("all") || limit.is_some();
    Ok(ok_json(&engine.containers.list(all, limit, params.bool("size"), &filters)?))
}

pub(super) async fn prune(State(engine): AppState, params: Params) -> Result<Response> {
    let filters = Filters::parse(params.get("filters"), &["label", "label!", "until"])?;
    Ok(ok_json(&engine.containers.prune(&filters).await?))
}

fn int_param(params: &Params, k: &str) -> Result<Option<i64>> {
    match params.get(k).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| Error::invalid(format!("invalid value for {k}: {v:?}"))),
    }
}

/// `GET /containers/{id}/{json|logs|top|stats|changes|export|archive}`.
pub(super) async fn get_dispatch(State(engine): AppState, Path((id, what)): Path<(String, String)>, params: Params) -> Result<Response> {
    match what.as_str() {
        "json" => Ok(ok_json(&engine.containers.inspect(&id, params.bool("size"))?)),
        "logs" => logs(engine, &id, &params).await,
        "top" => Ok(ok_json(&engine.containers.top(&id, params.get("ps_args").unwrap_or_default())?)),
        "stats" => stats(engine, &id, &params).await,
        "changes" => super::container_fs::changes(engine, &id).await,
        "export" => super::container_fs::export(engine, &id).await,
        _ => Err(Error::not_found("page not found")),
    }
}

async fn logs(engine: Arc<Engine>, id: &str, params: &Params) -> Result<Response> {
    let time = |k: &str| -> Result<Option<i64>> {
        match params.get(k).filter(|v| !v.is_empty() && *v != "0") {
            None => Ok(None),
            Some(v) => crate::timefmt::parse_time_arg(v)
                .map(|(s, n)| Some(s * 1_000_000_000 + i64::from(n)))
                .ok_or_else(|| Error::invalid(format!("invalid value for \"{k}\": {v}"))),
        }
    };
    let opts = LogOptions {
        stdout: params.bool("stdout"),
        stderr: params.bool("stderr"),
        follow: params.bool("follow"),
        timestamps: params.bool("timestamps"),
        since: time("since")?,
        until: time("until")?,
        tail: params.get("tail").filter(|t| *t != "all" && !t.is_empty()).and_then(|t| t.parse().ok()),
    };
    if !opts.stdout && !opts.stderr {
        return Err(Error::invalid("Bad parameters: you must choose at least one stream"));
    }
    let (tty, rx) = engine.containers.logs(id, opts)?;
    Ok(streaming(receive(rx).map(Ok::<_, std::io::Error>), stream_type(tty)))
}

/// `POST /containers/{id}/{start|stop|kill|restart|pause|unpause|wait|attach|resize|rename}`.
pub(super) async fn post_dispatch(State(engine): AppState, Path((id, what)): Path<(String, String)>, params: Params, req: Request) -> Result<Response> {
    let c = &engine.containers;
    match what.as_str() {
        "start" => Ok(if c.start(&id).await? { no_content() } else { not_modified() }),
        "stop" => {
            let t = int_param(&params, "t")?.or(int_param(&params, "timeout")?);
            Ok(if c.stop(&id, t, params.get("signal").filter(|s| !s.is_empty())).await? { no_content() } else { not_modified() })
        }
        "restart" => {
            let t = int_param(&params, "t")?.or(int_param(&params, "timeout")?);
            c.restart(&id, t, params.get("signal").filter(|s| !s.is_empty())).await?;
            Ok(no_content())
        }
        "kill" => {
            c.kill(&id, params.get("signal").unwrap_or("SIGKILL")).await?;
            Ok(no_content())
        }
        "pause" => c.pause(&id, true).await.map(|_| no_content()),
        "unpause" => c.pause(&id, false).await.map(|_| no_content()),
        "rename" => {
            c.rename(&id, params.get("name").unwrap_or_default())?;
            Ok(no_content())
        }
        "resize" => {
            let h = int_param(&params, "h")?.unwrap_or(0).clamp(0, u16::MAX as i64) as u16;
            let w = int_param(&params, "w")?.unwrap_or(0).clamp(0, u16::MAX as i64) as u16;
            c.resize(&id, w, h).await?;
            Ok(StatusCode::OK.into_response())
        }
        "wait" => {
            let fut = c.wait(&id, params.get("condition").unwrap_or(""))?;
            // Headers go out now; the body when the container exits.
            let stream = futures_util::stream::once(async move {
                let body = match fut.await {
                    Ok(code) => json!({"StatusCode": code, "Error": null}),
                    Err(e) => json!({"StatusCode": -1, "Error": {"Message": e.message}}),
                };
                Ok::<_, std::io::Error>(super::json_line(&body))
            });
            let mut resp = Response::new(Body::from_stream(stream));
            resp.headers_mut().insert("content-type", HeaderValue::from_static("application/json"));
            Ok(resp)
        }
        "attach" => attach(engine.clone(), &id, &params, req).await,
        "exec" => {
            let body = json_body(req.into_body()).await?;
            let exec_id = c.exec_create(&id, &body)?;
            Ok(json_response(StatusCode::CREATED, &json!({"Id": exec_id})))
        }
        "update" => {
            let body = json_body(req.into_body()).await?;
            Ok(ok_json(&json!({"Warnings": c.update(&id, &body).await?})))
        }
        _ => Err(Error::not_found("page not found")),
    }
}

fn stream_type(tty: bool) -> HeaderValue {
    HeaderValue::from_static(if tty { "application/vnd.docker.raw-stream" } else { "application/vnd.docker.multiplexed-stream" })
}

/// The 101 answer that hands the connection over to a raw stream, as
/// dockerd's hijack does: raw for a TTY, multiplexed frames otherwise.
fn hijacked(tty: bool) -> Response {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert("content-type", stream_type(tty));
    h.insert("connection", HeaderValue::from_static("Upgrade"));
    h.insert("upgrade", HeaderValue::from_static("tcp"));
    resp
}

/// Docker's detach-key syntax: comma-separated `ctrl-<c>` or single
/// characters (`ctrl-p,ctrl-q`).
fn parse_detach_keys(spec: &str) -> Result<Vec<u8>> {
    let bad = || Error::invalid(format!("Invalid detach keys ({spec}) provided"));
    spec.split(',')
        .map(|k| {
            let k = k.trim();
            match k.strip_prefix("ctrl-") {
                Some(c) if c.len() == 1 => {
                    let c = c.as_bytes()[0].to_ascii_lowercase();
                    match c {
                        b'a'..=b'z' => Ok(c - b'a' + 1),
                        b'@' => Ok(0),
                        b'[' => Ok(27),
                        b'\\' => Ok(28),
                        b']' => Ok(29),
                        b'^' => Ok(30),
                        b'_' => Ok(31),
                        _ => Err(bad()),
                    }
                }
                Some(_) => Err(bad()),
                None if k.len() == 1 => Ok(k.as_bytes()[0]),
                None => Err(bad()),
            }
        })
        .collect()
}

/// Joins a client to a container with stdin, watching the client's input
/// for the detach sequence: on it the client is let go and the container
/// keeps running. Bytes that only start the sequence are held back until
/// it is clear they are not it.
async fn pump_with_detach_keys<C>(client: C, shim: tokio::net::UnixStream, keys: Vec<u8>)
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut client_r, mut client_w) = tokio::io::split(client);
    let (mut shim_r, mut shim_w) = shim.into_split();
    let output = async {
        let _ = tokio::io::copy(&mut shim_r, &mut client_w).await;
        let _ = client_w.shutdown().await;
    };
    let input = async {
        let mut buf = [0u8; 8192];
        let mut matched = 0usize;
        loop {
            let n = match client_r.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    let _ = shim_w.shutdown().await;
                    // Stdin is done; output goes on until the container ends.
                    return std::future::pending::<()>().await;
                }
                Ok(n) => n,
            };
            let mut out = Vec::with_capacity(n);
            for &b in &buf[..n] {
                if !keys.is_empty() && b == keys[matched] {
                    matched += 1;
                    if matched == keys.len() {
                        let _ = shim_w.write_all(&out).await;
                        return;
                    }
                    continue;
                }
                out.extend_from_slice(&keys[..matched]);
                matched = 0;
                if !keys.is_empty() && b == keys[0] {
                    matched = 1;
                    continue;
                }
                out.push(b);
            }
            if shim_w.write_all(&out).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = output => {}
        _ = input => {}
    }
}

/// Hijacks the connection and joins it to the container's stdio.
async fn attach(engine: Arc<Engine>, id: &str, params: &Params, mut req: Request) -> Result<Response> {
    let stream = params.bool("stream");
    let logs = params.bool("logs");
    let (stdin, stdout, stderr) = (params.bool("stdin"), params.bool("stdout"), params.bool("stderr"));
    if !stream && !logs {
        return Err(Error::invalid("Bad parameters: you must choose at least one stream"));
    }
    let detach_keys = parse_detach_keys(params.get("detachKeys").filter(|k| !k.is_empty()).unwrap_or("ctrl-p,ctrl-q"))?;
    let (rec, shim_rx) = engine.containers.attach(id, stdin, stdout, stderr).await?;
    let upgrade = hyper::upgrade::on(&mut req);
    let tty = rec.tty();
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut client = TokioIo::new(upgraded);
        match shim_rx.await {
            Ok(Ok(shim)) if stdin => pump_with_detach_keys(client, shim, detach_keys).await,
            Ok(Ok(mut shim)) => {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut shim).await;
            }
            // A failed start is reported by the start call itself; the
            // attach just ends, as with dockerd.
            Ok(Err(_)) | Err(_) => {}
        }
    });
    Ok(hijacked(tty))
}

pub(super) async fn delete(State(engine): AppState, Path(id): Path<String>, params: Params) -> Result<Response> {
    engine.containers.remove(&id, params.bool("force"), params.bool("v")).await?;
    Ok(no_content())
}

/// `GET /containers/{id}/stats`: one sample with `stream=false`, else one
/// per second; `precpu_stats` is the previous sample's CPU, so clients can
/// compute a percentage.
async fn stats(engine: Arc<Engine>, id: &str, params: &Params) -> Result<Response> {
    let stream = params.get("stream").is_none_or(|v| !matches!(v, "0" | "false" | "False"));
    let one_shot = params.bool("one-shot");
    let c = engine.containers.clone();
    let first = c.stats(id)?;
    let id = id.to_owned();
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    tokio::spawn(async move {
        let encode = super::json_line::<Value>;
        let mut prev = first;
        if !stream && one_shot {
            prev["precpu_stats"] = json!({"cpu_usage": {"total_usage": 0}, "throttling_data": {}});
            let _ = tx.send(encode(&prev)).await;
            return;
        }
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(if stream { 1000 } else { 500 })).await;
            let Ok(mut next) = c.stats(&id) else { return };
            next["precpu_stats"] = prev["cpu_stats"].clone();
            next["preread"] = prev["read"].clone();
            if tx.send(encode(&next)).await.is_err() || !stream {
                return;
            }
            let running = c.find(&id).map(|h| h.record().state.running).unwrap_or(false);
            prev = next;
            if !running {
                return;
            }
        }
    });
    Ok(streaming(receive(rx).map(Ok::<_, std::io::Error>), HeaderValue::from_static("application/json")))
}

/// `POST /exec/{id}/start`.
pub(super) async fn exec_start(State(engine): AppState, Path(id): Path<String>, mut req: Request) -> Result<Response> {
    let upgrade = hyper::upgrade::on(&mut req);
    let body = json_body(req.into_body()).await?;
    let detach = body.get("Detach").and_then(Value::as_bool).unwrap_or(false);
    let (tty, stream) = engine.containers.exec_start(&id, detach).await?;
    let Some(mut shim) = stream else {
        return Ok(StatusCode::OK.into_response());
    };
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut client = TokioIo::new(upgraded);
        let _ = tokio::io::copy_bidirectional(&mut client, &mut shim).await;
    });
    Ok(hijacked(tty))
}

pub(super) async fn exec_json(State(engine): AppState, Path(id): Path<String>) -> Result<Response> {
    Ok(ok_json(&engine.containers.exec_inspect(&id)?))
}

pub(super) async fn exec_resize(State(engine): AppState, Path(id): Path<String>, params: Params) -> Result<Response> {
    let h = int_param(&params, "h")?.unwrap_or(0).clamp(0, u16::MAX as i64) as u16;
    let w = int_param(&params, "w")?.unwrap_or(0).clamp(0, u16::MAX as i64) as u16;
    engine.containers.exec_resize(&id, w, h).await?;
    Ok(StatusCode::OK.into_response())
}

//! `/_ping`, `/version`, `/info`, `/events`, `/system/df`.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, Method};
use axum::response::Response;
use bollard_stubs::models::{SystemVersion, SystemVersionComponents, SystemVersionPlatform};

use super::{ok_json, AppState, Params, API_VERSION, MIN_API_VERSION};
use crate::engine::Engine;
use crate::error::Error;
use crate::events::EventFilter;
use crate::filters::Filters;

pub(super) async fn ping(method: Method) -> Response {
    let body = if method == Method::HEAD { Body::empty() } else { Body::from("OK") };
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert("content-type", HeaderValue::from_static("text/plain; charset=utf-8"));
    h.insert("cache-control", HeaderValue::from_static("no-cache, no-store, must-revalidate"));
    h.insert("pragma", HeaderValue::from_static("no-cache"));
    h.insert("builder-version", HeaderValue::from_static("1"));
    h.insert("swarm", HeaderValue::from_static("inactive"));
    resp
}

pub(super) async fn version(State(engine): AppState) -> Response {
    let version = env!("CARGO_PKG_VERSION").to_owned();
    let kernel = Engine::kernel_version();
    let details = |pairs: &[(&str, &str)]| Some(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
    let v = SystemVersion {
        platform: Some(SystemVersionPlatform { name: "Berth Engine".to_owned() }),
        components: Some(vec![SystemVersionComponents {
            name: "Engine".to_owned(),
            version: version.clone(),
            details: details(&[
                ("ApiVersion", API_VERSION),
                ("MinAPIVersion", MIN_API_VERSION),
                ("Os", "linux"),
                ("Arch", engine.arch()),
                ("KernelVersion", &kernel),
                ("Experimental", "false"),
            ]),
        }]),
        version: Some(version),
        api_version: Some(API_VERSION.to_owned()),
        min_api_version: Some(MIN_API_VERSION.to_owned()),
        git_commit: Some(option_env!("BERTH_GIT_COMMIT").unwrap_or("unknown").to_owned()),
        go_version: Some("n/a (rust)".to_owned()),
        os: Some("linux".to_owned()),
        arch: Some(engine.arch().to_owned()),
        kernel_version: Some(kernel),
        experimental: Some(false),
        build_time: None,
    };
    ok_json(&v)
}

pub(super) async fn info(State(engine): AppState) -> Response {
    ok_json(&engine.info())
}

pub(super) async fn df(State(engine): AppState) -> Result<Response, Error> {
    let usage = engine.images.disk_usage()?;
    // The pre-1.52 shape, which is what the versions we serve expect.
    let resp = serde_json::json!({
        "LayersSize": usage.layers_size,
        "Images": usage.images,
        "Containers": engine.containers.disk_usage(),
        "Volumes": engine.volumes.disk_usage(),
        "BuildCache": [],
    });
    Ok(ok_json(&resp))
}

/// `GET /events`: history since `since`, then live events until `until`
/// (or forever), each as one JSON line.
pub(super) async fn events(State(engine): AppState, params: Params) -> Result<Response, Error> {
    let filters = Filters::parse(
        params.get("filters"),
        &["container", "event", "image", "label", "type", "volume", "network", "daemon", "plugin", "node", "service", "secret", "config", "scope"],
    )?;
    let parse_time = |k: &str| -> Result<Option<i64>, Error> {
        match params.get(k).filter(|s| !s.is_empty()) {
            None => Ok(None),
            Some(s) => crate::timefmt::parse_time_arg(s)
                .map(|(secs, nanos)| Some(secs * 1_000_000_000 + i64::from(nanos)))
                .ok_or_else(|| Error::invalid(format!("failed to parse value {s:?} as a timestamp"))),
        }
    };
    let since = parse_time(&"since")?;
    let until = parse_time(&"until")?;
    let filter = EventFilter::new(filters.0);
    let (past, mut rx) = engine.events.subscribe();
    let (tx, body_rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(64);
    let encode = super::json_line::<crate::events::Event>;
    let in_window = move |t: i64| since.is_none_or(|s| t >= s) && until.is_none_or(|u| t <= u);
    tokio::spawn(async move {
        if since.is_some() {
            for e in past.iter().filter(|e| in_window(e.time_nano) && filter.matches(e)) {
                if tx.send(Ok(encode(e))).await.is_err() {
                    return;
                }
            }
        }
        let deadline = until.map(|u| {
            let now = crate::timefmt::now();
            let now_ns = now.0 * 1_000_000_000 + i64::from(now.1);
            tokio::time::Instant::now() + std::time::Duration::from_nanos(u.saturating_sub(now_ns).max(0) as u64)
        });
        loop {
            let next = async {
                match deadline {
                    Some(d) => tokio::time::timeout_at(d, rx.recv()).await.ok(),
                    None => Some(rx.recv().await),
                }
            };
            tokio::select! {
                _ = tx.closed() => return,
                got = next => match got {
                    None => return,
                    Some(Ok(e)) => {
                        if in_window(e.time_nano) && filter.matches(&e) && tx.send(Ok(encode(&e))).await.is_err() {
                            return;
                        }
                    }
                    Some(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => continue,
                    Some(Err(_)) => return,
                },
            }
        }
    });
    Ok(super::streaming(super::receive(body_rx), HeaderValue::from_static("application/json")))
}

/// `POST /build/prune`: the engine has no build cache yet, so nothing to
/// reclaim (`docker system prune` calls it).
pub(super) async fn build_prune() -> axum::response::Response {
    super::ok_json(&serde_json::json!({"CachesDeleted": null, "SpaceReclaimed": 0}))
}

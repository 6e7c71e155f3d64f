//! Pulls that go wrong: the engine killed mid-pull, a partial download left
//! behind, two pulls of the same image at once, and registries that lie.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::Stdio;

use common::{require, Berthd, Need};

fn redis_layers() -> Vec<serde_json::Value> {
    let f = common::fixtures_json().expect("fixtures.json (BERTH_TEST_FIXTURES)");
    f["library/redis:latest"]["layers"].as_array().expect("layers").clone()
}

fn redis_id() -> String {
    let f = common::fixtures_json().expect("fixtures.json");
    f["library/redis:latest"]["config"].as_str().expect("config").to_owned()
}

fn count_dir(p: &std::path::Path) -> usize {
    std::fs::read_dir(p).map(|r| r.count()).unwrap_or(0)
}

#[test]
fn engine_killed_mid_pull_leaves_no_half_image_and_repull_repairs() {
    require!(Need::Root, Need::Registry);
    let mut d = Berthd::start();
    let mut child = d.docker_command(&["pull", "redis"]).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("docker pull");
    let stdout = child.stdout.take().expect("piped");
    for line in BufReader::new(stdout).lines() {
        if line.expect("read pull output").contains("Downloading") {
            break;
        }
    }
    d.kill9();
    let _ = child.wait();
    d.restart();
    // Either the image is whole, or it is not there at all.
    let listed = d.docker_ok(&["images", "-q", "redis"]);
    if !listed.trim().is_empty() {
        d.docker_ok(&["image", "inspect", "redis"]);
    }
    assert_eq!(count_dir(&d.data_root().join("snapshots-tmp")), 0, "half-unpacked layers survived a restart");
    let out = d.docker_ok(&["pull", "redis"]);
    assert!(out.contains("Status:"), "{out}");
    let id = d.docker_ok(&["image", "inspect", "-f", "{{.Id}}", "redis"]);
    assert_eq!(id.trim(), redis_id());
}

#[test]
fn partial_download_is_resumed_with_a_range_request() {
    require!(Need::Root, Need::Registry);
    let reg = common::registry().expect("required");
    let layer = redis_layers().into_iter().max_by_key(|l| l["size"].as_u64()).expect("a layer");
    let digest = layer["digest"].as_str().expect("digest");
    let (status, _, blob) = common::http_tcp(&reg, "GET", &format!("/v2/library/redis/blobs/{digest}"), None, &[]);
    assert_eq!(status, 200);
    let mut d = Berthd::start();
    d.stop();
    let ingest = d.data_root().join("content/ingest").join(&digest["sha256:".len()..]);
    std::fs::write(&ingest, &blob[..blob.len() / 2]).expect("write partial blob");
    d.restart();
    d.docker_ok(&["pull", "redis"]);
    let log = d.log();
    assert!(
        log.lines().any(|l| l.contains("resuming download") && l.contains(digest) && l.contains(&format!("offset={}", blob.len() / 2))),
        "no resume in log:\n{log}"
    );
    assert_eq!(d.docker_ok(&["image", "inspect", "-f", "{{.Id}}", "redis"]).trim(), redis_id());
    assert!(!ingest.exists(), "the partial file should have become the blob");
}

#[test]
fn overlapping_pulls_download_each_layer_once() {
    require!(Need::Root, Need::Registry);
    let d = Berthd::start();
    let pulls: Vec<_> = (0..3).map(|_| d.docker_command(&["pull", "-q", "redis"]).stdout(Stdio::piped()).spawn().expect("pull")).collect();
    for p in pulls {
        let out = p.wait_with_output().expect("wait");
        assert!(out.status.success());
    }
    let log = d.log();
    for l in redis_layers() {
        let digest = l["digest"].as_str().expect("digest");
        let n = log.lines().filter(|x| x.contains("downloading layer") && x.contains(digest)).count();
        assert_eq!(n, 1, "layer {digest} downloaded {n} times");
    }
}

/// A registry that lies, for what a real registry never does. Serves one
/// canned response per path, forever, on a loopback port.
struct FakeRegistry {
    addr: String,
}

type Route = (String, u16, Vec<(String, String)>, Vec<u8>, bool);

impl FakeRegistry {
    fn start(routes: Vec<Route>) -> FakeRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let routes = std::sync::Arc::new(routes);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                let routes = routes.clone();
                // One thread per connection: a client that stops reading a
                // huge answer must not stall the others.
                std::thread::spawn(move || {
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                    // A TLS ClientHello (the engine tries https first on an
                    // insecure registry): hang up, as a plain-HTTP server's
                    // garbage answer would make the handshake fail.
                    if req.first() == Some(&0x16) {
                        return;
                    }
                }
                let text = String::from_utf8_lossy(&req);
                let path = text.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let path = path.split('?').next().unwrap_or("/").to_owned();
                let head = text.starts_with("HEAD");
                let route = routes.iter().find(|r| r.0 == path);
                let (status, headers, body, truncate) = match route {
                    Some(r) => (r.1, r.2.clone(), r.3.clone(), r.4),
                    None if path == "/v2/" => (200, vec![], b"{}".to_vec(), false),
                    None => (404, vec![], br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#.to_vec(), false),
                };
                let mut resp = format!("HTTP/1.1 {status} X\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
                for (k, v) in headers {
                    resp.push_str(&format!("{k}: {v}\r\n"));
                }
                resp.push_str("\r\n");
                let _ = s.write_all(resp.as_bytes());
                if !head {
                    let n = if truncate { body.len() / 2 } else { body.len() };
                    let _ = s.write_all(&body[..n]);
                }
                });
            }
        });
        FakeRegistry { addr }
    }
}

fn sha(data: &[u8]) -> String {
    let out = std::process::Command::new("sha256sum").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().and_then(|mut c| {
        c.stdin.take().expect("stdin").write_all(data)?;
        c.wait_with_output()
    });
    format!("sha256:{}", String::from_utf8_lossy(&out.expect("sha256sum").stdout).split_whitespace().next().expect("hash"))
}

fn manifest_route(repo: &str, manifest: &[u8], media_type: &str) -> Route {
    (
        format!("/v2/{repo}/manifests/latest"),
        200,
        vec![("Content-Type".into(), media_type.into())],
        manifest.to_vec(),
        false,
    )
}

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

#[test]
fn lying_registries_get_clear_errors_and_nothing_is_stored() {
    require!(Need::Root);
    let layer = b"not really a gzip layer, and not what the manifest promised".to_vec();
    let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:0000000000000000000000000000000000000000000000000000000000000000"]}}"#.to_vec();
    let claimed_layer = sha(b"something else entirely");
    let manifest = |layer_digest: &str, size: usize| {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","size":{},"digest":"{}"}},"layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","size":{size},"digest":"{layer_digest}"}}]}}"#,
            config.len(),
            sha(&config)
        )
        .into_bytes()
    };
    let wrong = manifest(&claimed_layer, layer.len());
    let good_layer_digest = sha(&layer);
    let truncated = manifest(&good_layer_digest, layer.len());
    let huge = vec![b' '; 5 * 1024 * 1024];
    let index_self = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.index.v1+json","digest":"sha256:SELF","size":1,"platform":{"os":"linux","architecture":"amd64"}}]}"#.to_vec();
    let ambiguous = format!(r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"mediaType":"x","size":1,"digest":"{}"}},"layers":[],"manifests":[]}}"#, sha(b"x")).into_bytes();
    let bad_digest = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"mediaType":"application/vnd.docker.container.image.v1+json","size":1,"digest":"sha256:../../etc/passwd"},"layers":[]}"#.to_vec();
    let reg = FakeRegistry::start(vec![
        manifest_route("bad/digest", &wrong, DOCKER_MANIFEST),
        (format!("/v2/bad/digest/blobs/{}", sha(&config)), 200, vec![], config.clone(), false),
        (format!("/v2/bad/digest/blobs/{claimed_layer}"), 200, vec![], layer.clone(), false),
        manifest_route("bad/truncated", &truncated, DOCKER_MANIFEST),
        (format!("/v2/bad/truncated/blobs/{}", sha(&config)), 200, vec![], config.clone(), false),
        (format!("/v2/bad/truncated/blobs/{good_layer_digest}"), 200, vec![], layer.clone(), true),
        manifest_route("bad/huge", &huge, DOCKER_MANIFEST),
        manifest_route("bad/selfref", &index_self, "application/vnd.oci.image.index.v1+json"),
        manifest_route("bad/ambiguous", &ambiguous, DOCKER_MANIFEST),
        manifest_route("bad/malformed", &bad_digest, DOCKER_MANIFEST),
    ]);
    let d = Berthd::start_with(&["--insecure-registry", &reg.addr]);
    for (repo, expect) in [
        ("bad/digest", "filesystem layer verification failed"),
        ("bad/truncated", "end of file before message length reached"),
        ("bad/huge", "manifest is larger than"),
        ("bad/selfref", "invalid digest"),
        ("bad/ambiguous", "ambiguous manifest"),
        ("bad/malformed", "invalid digest \"sha256:../../etc/passwd\""),
    ] {
        let err = d.docker_err(&["pull", &format!("{}/{repo}", reg.addr)]);
        assert!(err.contains(expect), "{repo}: {err}");
        assert!(!err.to_lowercase().contains("panic"), "{repo}: {err}");
    }
    assert!(d.docker_ok(&["images", "-q"]).trim().is_empty());
    assert_eq!(count_dir(&d.data_root().join("snapshots")), 0);
    let blobs = std::fs::read_dir(d.data_root().join("content/blobs/sha256")).expect("blobs").count();
    // Only the (verified) config blob may have been kept; no layer.
    assert!(blobs <= 1, "{blobs} blobs stored");
    assert_eq!(d.api("GET", "/_ping", None, &[]).0, 200);
}

//! Checks the test environment itself (scripts/test-env): the registry serves
//! the fixtures, and the reference dockerd pulls them through its mirror. A
//! failure here means the environment is broken, not berthd.

mod common;

use common::{http_tcp, require, Need};

#[test]
fn registry_lists_busybox_tags() {
    require!(Need::Registry);
    let registry = common::registry().expect("required above");

    let (status, _, body) = http_tcp(&registry, "GET", "/v2/library/busybox/tags/list", None, &[]);

    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let tags: serde_json::Value = serde_json::from_slice(&body).expect("tags list is JSON");
    assert_eq!(tags["name"], "library/busybox");
    let tags: Vec<&str> = tags["tags"]
        .as_array()
        .expect("tags array")
        .iter()
        .filter_map(|t| t.as_str())
        .collect();
    assert!(
        tags.contains(&"latest") && tags.contains(&"1.35"),
        "tags: {tags:?}"
    );
}

#[test]
fn registry_serves_fixture_manifest_digest() {
    require!(Need::Registry);
    let registry = common::registry().expect("required above");
    let Some(fixtures) = common::fixtures_json() else {
        eprintln!("skipping: BERTH_TEST_FIXTURES not set");
        return;
    };
    let want = fixtures["berth/multiarch:latest"]["manifest"]
        .as_str()
        .expect("digest");

    let (status, headers, _) = http_tcp(
        &registry,
        "HEAD",
        "/v2/berth/multiarch/manifests/latest",
        None,
        &[("Accept", "application/vnd.oci.image.index.v1+json")],
    );

    assert_eq!(status, 200);
    let got = headers
        .iter()
        .find(|(k, _)| k == "docker-content-digest")
        .map(|(_, v)| v.as_str());
    assert_eq!(got, Some(want));
}

#[test]
fn reference_pulls_busybox_from_mirror() {
    require!(Need::Registry, Need::Reference);
    let reference = common::reference().expect("required above");

    reference.docker_ok(&["pull", "busybox"]);
    let inspect = reference.docker_ok(&["image", "inspect", "busybox"]);

    let inspect: serde_json::Value = serde_json::from_str(&inspect).expect("inspect is JSON");
    assert_eq!(inspect[0]["Config"]["Cmd"][0], "sh");
    if let Some(fixtures) = common::fixtures_json() {
        let want = fixtures["library/busybox:latest"]["manifest"]
            .as_str()
            .expect("digest");
        let repo_digests = inspect[0]["RepoDigests"].to_string();
        assert!(repo_digests.contains(want), "{repo_digests} lacks {want}");
    }
}

#[test]
fn reference_api_decodes_chunked_pull_progress() {
    require!(Need::Registry, Need::Reference);
    let reference = common::reference().expect("required above");

    let (status, headers, body) = reference.api(
        "POST",
        "/images/create?fromImage=busybox&tag=latest",
        None,
        &[],
    );

    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v == "chunked"));
    let last = String::from_utf8_lossy(&body)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    assert!(last.contains("Status: "), "last progress line: {last}");
}

#[test]
fn reference_ping_and_version() {
    require!(Need::Reference);
    let reference = common::reference().expect("required above");

    let (status, _, body) = reference.api("GET", "/_ping", None, &[]);
    let (vstatus, version) = reference.api_json("GET", "/version", None);

    assert_eq!((status, body.as_slice()), (200, &b"OK"[..]));
    assert_eq!(vstatus, 200);
    assert!(version["ApiVersion"].is_string(), "{version}");
}

//! The image half of the engine through the real docker CLI, compared with
//! the reference dockerd where a user would see a difference.

mod common;

use common::{require, Berthd, Need};

fn inspect(c: &common::Client, name: &str) -> serde_json::Value {
    let out = c.docker_ok(&["image", "inspect", name]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("inspect prints JSON");
    v[0].clone()
}

fn pull(c: &common::Client, name: &str) -> String {
    c.docker_ok(&["pull", name])
}

#[test]
fn pull_from_mirror_prints_dockers_progress_and_status() {
    require!(Need::Root, Need::Registry);
    let d = Berthd::start();
    let out = pull(&d, "busybox");
    assert!(out.contains("latest: Pulling from library/busybox"), "{out}");
    assert!(out.contains("Pull complete"), "{out}");
    assert!(out.contains("Digest: sha256:"), "{out}");
    assert!(out.contains("Status: Downloaded newer image for busybox:latest"), "{out}");
    let again = pull(&d, "busybox");
    assert!(again.contains("Status: Image is up to date for busybox:latest"), "{again}");
}

#[test]
fn pulled_images_match_dockerd_id_layers_size_and_config() {
    require!(Need::Root, Need::Registry, Need::Reference);
    let d = Berthd::start();
    let r = common::reference().expect("required");
    for name in ["busybox", "berth/labels", "redis", "berth/plain"] {
        pull(&d, name);
        pull(&r, name);
        let (ours, theirs) = (inspect(&d, name), inspect(&r, name));
        for field in ["Id", "RootFS", "Size", "Architecture", "Os", "Created", "Author"] {
            assert_eq!(ours[field], theirs[field], "{name}: {field} differs");
        }
        // The reference engine is shared with other tests, which may have
        // pulled the same image under other names: compare this name's.
        let digests = |v: &serde_json::Value| -> Vec<String> {
            v["RepoDigests"].as_array().into_iter().flatten().filter_map(|d| d.as_str()).filter(|d| d.starts_with(&format!("{name}@"))).map(str::to_owned).collect()
        };
        assert_eq!(digests(&ours), digests(&theirs), "{name}: RepoDigests differ");
        assert!(!digests(&ours).is_empty(), "{name}: no RepoDigest");
        for field in ["Cmd", "Entrypoint", "Env", "Labels", "WorkingDir", "User", "ExposedPorts", "Volumes"] {
            assert_eq!(ours["Config"][field], theirs["Config"][field], "{name}: Config.{field} differs");
        }
    }
}

#[test]
fn history_matches_dockerd() {
    require!(Need::Root, Need::Registry, Need::Reference);
    let d = Berthd::start();
    let r = common::reference().expect("required");
    pull(&d, "berth/labels");
    pull(&r, "berth/labels");
    let fmt = ["history", "--no-trunc", "--format", "{{.ID}}|{{.CreatedBy}}|{{.Size}}|{{.Comment}}", "berth/labels"];
    assert_eq!(d.docker_ok(&fmt), r.docker_ok(&fmt));
}

#[test]
fn pull_unknown_tag_reports_not_found() {
    require!(Need::Root, Need::Registry);
    let d = Berthd::start();
    let err = d.docker_err(&["pull", "busybox:does-not-exist"]);
    assert!(err.contains("manifest for busybox:does-not-exist not found"), "{err}");
    assert!(err.contains("manifest unknown"), "{err}");
    let err = d.docker_err(&["image", "inspect", "busybox:does-not-exist"]);
    assert!(err.contains("No such image"), "{err}");
}

#[test]
fn platform_flag_picks_the_index_entry() {
    require!(Need::Root, Need::Registry);
    let d = Berthd::start();
    d.docker_ok(&["pull", "--platform", "linux/arm64", "berth/multiarch"]);
    assert_eq!(inspect(&d, "berth/multiarch")["Architecture"], "arm64");
    d.docker_ok(&["pull", "berth/multiarch"]);
    assert_eq!(inspect(&d, "berth/multiarch")["Architecture"], "amd64");
    let err = d.docker_err(&["pull", "--platform", "linux/s390x", "berth/multiarch"]);
    assert!(err.contains("no matching manifest for linux/s390x"), "{err}");
}

#[test]
fn zstd_and_uncompressed_layers_unpack() {
    require!(Need::Root, Need::Registry);
    let d = Berthd::start();
    pull(&d, "busybox");
    pull(&d, "berth/zstd");
    pull(&d, "berth/plain");
    // All three carry the same busybox rootfs: same diff ID, whatever the
    // compression.
    let layers = |n| inspect(&d, n)["RootFS"]["Layers"].clone();
    assert_eq!(layers("berth/zstd"), layers("busybox"));
    assert_eq!(layers("berth/plain"), layers("busybox"));
}

#[test]
fn image_list_filters_and_order() {
    require!(Need::Root, Need::Registry);
    let d = Berthd::start();
    pull(&d, "busybox");
    pull(&d, "berth/labels");
    d.docker_ok(&["tag", "busybox", "mine/tool:1"]);
    let names = |args: &[&str]| -> Vec<String> {
        let mut a = vec!["images", "--format", "{{.Repository}}:{{.Tag}}"];
        a.extend_from_slice(args);
        let out = d.docker_ok(&a);
        let mut v: Vec<String> = out.lines().map(str::to_owned).collect();
        v.sort();
        v
    };
    assert_eq!(names(&["--filter", "label=org.berth.fixture"]), ["berth/labels:latest"]);
    assert_eq!(names(&["--filter", "label=org.berth.fixture=labels"]), ["berth/labels:latest"]);
    assert!(names(&["--filter", "label=org.berth.fixture=nope"]).is_empty());
    assert_eq!(names(&["--filter", "reference=mine/*"]), ["mine/tool:1"]);
    assert_eq!(names(&["--filter", "reference=busybox"]), ["busybox:latest"]);
    assert!(names(&["--filter", "dangling=true"]).is_empty());
    // One ID under two tags lists both rows with the same ID.
    let ids = d.docker_ok(&["images", "-q", "--no-trunc", "--filter", "reference=busybox", "--filter", "reference=mine/tool"]);
    let ids: Vec<&str> = ids.lines().collect();
    assert_eq!(ids.len(), 2);
    assert_eq!(ids[0], ids[1]);
    let err = d.docker_err(&["images", "--filter", "bogus=1"]);
    assert!(err.contains("invalid filter 'bogus'"), "{err}");
}

#[test]
fn before_and_since_filters_compare_creation_times() {
    require!(Need::Root, Need::Registry, Need::Reference);
    let d = Berthd::start();
    let r = common::reference().expect("required");
    for n in ["busybox", "berth/labels", "redis"] {
        pull(&d, n);
        pull(&r, n);
    }
    for f in ["before=berth/labels", "since=busybox", "before=redis"] {
        let args = ["images", "--format", "{{.ID}}", "--filter", f, "--filter", "reference=busybox", "--filter", "reference=redis", "--filter", "reference=berth/labels"];
        // The reference engine is shared: it may hold extra tags of the
        // same images, so compare the sets of IDs.
        let ids = |out: String| out.lines().map(str::to_owned).collect::<std::collections::BTreeSet<_>>();
        assert_eq!(ids(d.docker_ok(&args)), ids(r.docker_ok(&args)), "filter {f}");
    }
}

#[test]
fn tag_then_rmi_untags_before_deleting() {
    require!(Need::Root, Need::Registry);
    let d = Berthd::start();
    pull(&d, "busybox");
    let id = inspect(&d, "busybox")["Id"].as_str().expect("id").to_owned();
    d.docker_ok(&["tag", "busybox", "other/name:v1"]);
    let out = d.docker_ok(&["rmi", "other/name:v1"]);
    assert_eq!(out.trim(), "Untagged: other/name:v1");
    assert!(d.docker(&["image", "inspect", &id]).status.success());
    // By ID with two repositories: dockerd's conflict.
    d.docker_ok(&["tag", "busybox", "other/name:v2"]);
    let err = d.docker_err(&["rmi", &id[7..19]]);
    assert!(err.contains("unable to delete") && err.contains("must be forced") && err.contains("referenced in multiple repositories"), "{err}");
    let out = d.docker_ok(&["rmi", "-f", &id[7..19]]);
    assert!(out.contains("Untagged: busybox:latest"), "{out}");
    assert!(out.contains(&format!("Deleted: {id}")), "{out}");
    assert!(d.docker_ok(&["images", "-q"]).trim().is_empty());
    let err = d.docker_err(&["rmi", "busybox"]);
    assert!(err.contains("No such image: busybox"), "{err}");
}

#[test]
fn rmi_of_last_tag_matches_dockerd_output() {
    require!(Need::Root, Need::Registry, Need::Reference);
    let d = Berthd::start();
    let r = common::reference().expect("required");
    pull(&d, "berth/plain");
    pull(&r, "berth/plain");
    let ours = d.docker_ok(&["rmi", "berth/plain"]);
    let theirs = r.docker_ok(&["rmi", "berth/plain"]);
    let first_lines = |s: &str| s.lines().filter(|l| l.starts_with("Untagged") || l.starts_with("Deleted: sha256:") ).take(3).map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(first_lines(&ours), first_lines(&theirs));
}

#[test]
fn prune_removes_dangling_then_all_unused() {
    require!(Need::Root, Need::Registry);
    let d = Berthd::start();
    pull(&d, "busybox");
    pull(&d, "berth/labels");
    // Make busybox's ID dangling by moving its only tag away.
    let bb = inspect(&d, "busybox")["Id"].as_str().expect("id").to_owned();
    d.docker_ok(&["tag", "berth/labels", "busybox:latest"]);
    let dangling = d.docker_ok(&["images", "-q", "--no-trunc", "--filter", "dangling=true"]);
    assert_eq!(dangling.trim(), bb);
    let out = d.docker_ok(&["image", "prune", "-f"]);
    assert!(out.contains(&format!("deleted: {bb}")), "{out}");
    assert!(out.contains("Total reclaimed space:"), "{out}");
    assert!(d.docker(&["image", "inspect", &bb]).status.code() != Some(0));
    d.docker_ok(&["image", "prune", "-af"]);
    assert!(d.docker_ok(&["images", "-q"]).trim().is_empty());
    // Nothing is left on disk either.
    let snaps = std::fs::read_dir(d.data_root().join("snapshots")).expect("snapshots dir").count();
    assert_eq!(snaps, 0);
}

#[test]
fn system_df_counts_shared_layers_once() {
    require!(Need::Root, Need::Registry);
    let d = Berthd::start();
    pull(&d, "busybox");
    pull(&d, "berth/labels");
    let (status, df) = d.api_json("GET", "/system/df", None);
    assert_eq!(status, 200);
    let images = df["Images"].as_array().expect("images");
    let sum: i64 = images.iter().map(|i| i["Size"].as_i64().unwrap_or(0)).sum();
    let shared: i64 = images.iter().map(|i| i["SharedSize"].as_i64().unwrap_or(0)).sum();
    let layers = df["LayersSize"].as_i64().expect("LayersSize");
    // The labels image is built on busybox's layer: that layer counts once.
    assert!(shared > 0, "{df}");
    assert_eq!(layers, sum - shared / 2, "{df}");
    let out = d.docker_ok(&["system", "df"]);
    assert!(out.lines().any(|l| l.starts_with("Images") && l.contains(" 2 ")), "{out}");
}

#[test]
fn save_and_load_interchange_with_dockerd() {
    require!(Need::Root, Need::Registry, Need::Reference);
    let d = Berthd::start();
    let r = common::reference().expect("required");
    let dir = tempfile::tempdir().expect("tempdir");
    let ours = dir.path().join("ours.tar");
    let theirs = dir.path().join("theirs.tar");
    pull(&d, "berth/labels");
    pull(&r, "berth/labels");
    r.docker_ok(&["tag", "berth/labels", "interchange/from-dockerd:1"]);
    d.docker_ok(&["tag", "berth/labels", "interchange/from-berth:1"]);
    d.docker_ok(&["save", "-o", ours.to_str().expect("utf8"), "interchange/from-berth:1"]);
    r.docker_ok(&["save", "-o", theirs.to_str().expect("utf8"), "interchange/from-dockerd:1"]);
    r.docker_ok(&["rmi", "interchange/from-dockerd:1"]);
    // dockerd loads ours, we load dockerd's; IDs survive both ways.
    let loaded = r.docker_ok(&["load", "-i", ours.to_str().expect("utf8")]);
    assert!(loaded.contains("Loaded image: interchange/from-berth:1"), "{loaded}");
    let fresh = Berthd::start();
    let loaded = fresh.docker_ok(&["load", "-i", theirs.to_str().expect("utf8")]);
    assert!(loaded.contains("Loaded image: interchange/from-dockerd:1"), "{loaded}");
    let id = inspect(&d, "berth/labels")["Id"].clone();
    assert_eq!(inspect(&r, "interchange/from-berth:1")["Id"], id);
    assert_eq!(inspect(&fresh, "interchange/from-dockerd:1")["Id"], id);
    assert_eq!(inspect(&fresh, "interchange/from-dockerd:1")["RootFS"], inspect(&r, "berth/labels")["RootFS"]);
    r.docker_ok(&["rmi", "interchange/from-berth:1"]);
}

#[test]
fn import_applies_changes_and_message() {
    require!(Need::Root, Need::Registry);
    let d = Berthd::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("etc")).expect("mkdir");
    std::fs::write(root.join("etc/hello"), "hi\n").expect("write");
    let tarball = dir.path().join("rootfs.tar");
    let status = std::process::Command::new("tar")
        .args(["-C", root.to_str().expect("utf8"), "-cf", tarball.to_str().expect("utf8"), "."])
        .status()
        .expect("tar");
    assert!(status.success());
    let out = d.docker_ok(&[
        "import", "--change", "CMD [\"sh\"]", "--change", "ENV A=b", "--message", "from a test",
        tarball.to_str().expect("utf8"), "imported/one:v1",
    ]);
    assert!(out.trim().starts_with("sha256:"), "{out}");
    let i = inspect(&d, "imported/one:v1");
    assert_eq!(i["Config"]["Cmd"], serde_json::json!(["sh"]));
    assert!(i["Config"]["Env"].as_array().expect("env").iter().any(|e| e == "A=b"), "{i}");
    assert_eq!(i["Comment"], "from a test");
    assert_eq!(i["RootFS"]["Layers"].as_array().expect("layers").len(), 1);
}

#[test]
fn push_to_registry_then_dockerd_pulls_the_same_image() {
    require!(Need::Root, Need::Registry, Need::Reference);
    let reg = common::registry().expect("required");
    let d = Berthd::start();
    let r = common::reference().expect("required");
    pull(&d, "berth/labels");
    let target = format!("{reg}/pushed/labels:t{}", std::process::id());
    d.docker_ok(&["tag", "berth/labels", &target]);
    let out = d.docker_ok(&["push", &target]);
    assert!(out.contains("digest: sha256:"), "{out}");
    pull(&r, &target);
    assert_eq!(inspect(&r, &target)["Id"], inspect(&d, "berth/labels")["Id"]);
    r.docker_ok(&["rmi", &target]);
    let err = d.docker_err(&["push", &format!("{reg}/pushed/nothing:here")]);
    assert!(err.contains("An image does not exist locally with the tag"), "{err}");
}

#[test]
fn search_lists_a_registry_catalog() {
    require!(Need::Root, Need::Registry);
    let reg = common::registry().expect("required");
    let d = Berthd::start();
    let out = d.docker_ok(&["search", &format!("{reg}/busy")]);
    assert!(out.contains(&format!("{reg}/library/busybox")), "{out}");
}

#[test]
fn events_stream_image_actions_with_filters() {
    require!(Need::Root, Need::Registry);
    let d = Berthd::start();
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() - 1;
    pull(&d, "busybox");
    d.docker_ok(&["tag", "busybox", "evt/x:1"]);
    d.docker_ok(&["rmi", "evt/x:1"]);
    let until = since + 3600;
    let window = |f: &[&str]| {
        let mut a = vec!["events".to_owned(), "--since".into(), since.to_string(), "--until".into(), "0".into(), "--format".into(), "{{.Type}} {{.Action}}".into()];
        a[4] = until.to_string();
        // --until in the future would wait; use the current time instead.
        a[4] = (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() + 1).to_string();
        for x in f {
            a.push((*x).to_owned());
        }
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        d.docker_ok(&refs)
    };
    let all = window(&[]);
    for action in ["image pull", "image tag", "image untag"] {
        assert!(all.contains(action), "{action} missing from:\n{all}");
    }
    let only_tag = window(&["--filter", "event=tag"]);
    assert_eq!(only_tag.trim(), "image tag");
}

#[test]
fn second_engine_on_the_same_data_root_is_refused() {
    require!(Need::Root);
    let d = Berthd::start();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_berthd"))
        .args(["--data-root", d.data_root().to_str().expect("utf8"), "--exec-root", "/tmp/berth-second-exec", "-H", "unix:///tmp/berth-second.sock"])
        .output()
        .expect("run berthd");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another berthd is already running"), "{err}");
}

#[test]
fn socket_is_not_world_accessible() {
    require!(Need::Root);
    use std::os::unix::fs::PermissionsExt;
    let d = Berthd::start();
    let mode = std::fs::metadata(d.socket()).expect("socket").permissions().mode() & 0o777;
    assert_eq!(mode & 0o007, 0, "socket mode {mode:o}");
}

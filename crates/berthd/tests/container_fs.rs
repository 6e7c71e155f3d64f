//! A container's file system from the outside, through the real docker CLI:
//! `docker cp` both ways on running and stopped containers, `docker diff`,
//! `docker export` and `docker commit`, compared with dockerd where the
//! reference runs; and that a copy never follows a container's symlink to
//! the host.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{require, Berthd, Client, Need};

/// How long an expected event may take to show up.
const EVENT_TIMEOUT: Duration = Duration::from_secs(30);

fn ready() -> Berthd {
    let d = Berthd::start();
    d.docker_ok(&["pull", "-q", "busybox"]);
    d
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs()
}

/// A name no other test (here or on the shared reference dockerd) uses.
fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").subsec_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// Waits until `container` has had an event `action` since `since`
/// (replayed from history or live), or panics after [`EVENT_TIMEOUT`].
fn wait_event(c: &Client, since: u64, container: &str, action: &str) {
    let since = since.to_string();
    let filter_c = format!("container={container}");
    let filter_e = format!("event={action}");
    let mut child = c
        .docker_command(&["events", "--since", &since, "--filter", &filter_c, "--filter", &filter_e, "--format", "{{.Action}}"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn docker events");
    let stdout = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let got = rx.recv_timeout(EVENT_TIMEOUT);
    let _ = child.kill();
    let _ = child.wait();
    match got {
        Ok(line) => assert_eq!(line.trim(), action),
        Err(_) => panic!("no {action} event for {container} within {EVENT_TIMEOUT:?}"),
    }
}

/// `tar -t` of `archive`.
fn tar_list(archive: &[u8]) -> Vec<String> {
    let mut child = Command::new("tar")
        .args(["-t", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tar");
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let data = archive.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let out = child.wait_with_output().expect("run tar");
    let _ = feeder.join();
    assert!(out.status.success(), "tar -t failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
}

/// A tar (made by `tar -c`) of `name` in `dir`.
fn tar_of(dir: &Path, name: &str) -> Vec<u8> {
    let out = Command::new("tar").arg("-C").arg(dir).args(["-c", "-f", "-", name]).output().expect("run tar");
    assert!(out.status.success(), "tar -c failed: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn put_archive(c: &Client, container: &str, path: &str, tar: &[u8]) -> (u16, String) {
    let (status, _, body) = c.api(
        "PUT",
        &format!("/v1.43/containers/{container}/archive?path={path}&noOverwriteDirNonDir=1"),
        Some(tar),
        &[("Content-Type", "application/x-tar")],
    );
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn dir_is_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir).expect("read host dir").next().is_none()
}

fn container_mounted(d: &Berthd, id: &str) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let merged = d.data_root().join("containers").join(id);
    mounts.contains(merged.to_str().expect("utf8 data root"))
}

#[test]
fn cp_copies_files_and_directories_out_of_and_into_a_running_container() {
    require!(Need::Root, Need::Registry);
    let d = ready();
    let since = now_secs();
    d.docker_ok(&["run", "-d", "--name", "cpbox", "busybox", "sleep", "1000"]);
    d.docker_ok(&["exec", "cpbox", "sh", "-c", "mkdir -p /data/sub && echo inside > /data/sub/f"]);
    let tmp = tempfile::tempdir().expect("tempdir");
    let at = |p: &str| tmp.path().join(p).display().to_string();

    d.docker_ok(&["cp", "cpbox:/data/sub/f", &at("f_out")]);
    assert_eq!(std::fs::read_to_string(at("f_out")).expect("copied file"), "inside\n");
    d.docker_ok(&["cp", "cpbox:/data", &at("data_out")]);
    assert_eq!(std::fs::read_to_string(at("data_out/sub/f")).expect("copied dir"), "inside\n");
    // To stdout: a tar whose entries are named from the base name.
    let out = d.docker(&["cp", "cpbox:/data/sub/f", "-"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(tar_list(&out.stdout), vec!["f"]);
    let out = d.docker(&["cp", "cpbox:/data", "-"]);
    assert_eq!(tar_list(&out.stdout), vec!["data/", "data/sub/", "data/sub/f"]);
    wait_event(&d, since, "cpbox", "archive-path");

    std::fs::write(at("in.txt"), "from the host\n").expect("write host file");
    d.docker_ok(&["cp", &at("in.txt"), "cpbox:/data/"]);
    assert_eq!(d.docker_ok(&["exec", "cpbox", "cat", "/data/in.txt"]), "from the host\n");
    std::fs::create_dir_all(at("tree/a/b")).expect("mkdir");
    std::fs::write(at("tree/a/b/g"), "deep\n").expect("write");
    d.docker_ok(&["cp", &at("tree"), "cpbox:/data/tree"]);
    assert_eq!(d.docker_ok(&["exec", "cpbox", "cat", "/data/tree/a/b/g"]), "deep\n");
    wait_event(&d, since, "cpbox", "extract-to-dir");
}

#[test]
fn cp_works_on_a_stopped_container_and_leaves_nothing_mounted() {
    require!(Need::Root, Need::Registry);
    let d = ready();
    d.docker_ok(&["run", "--name", "stopped", "busybox", "sh", "-c", "echo made > /made"]);
    let id = d.docker_ok(&["inspect", "-f", "{{.Id}}", "stopped"]).trim().to_owned();
    assert!(!container_mounted(&d, &id), "a stopped container's rootfs stays mounted");
    let tmp = tempfile::tempdir().expect("tempdir");
    let made = tmp.path().join("made");
    d.docker_ok(&["cp", "stopped:/made", made.to_str().expect("utf8")]);
    assert_eq!(std::fs::read_to_string(&made).expect("copied"), "made\n");
    let input = tmp.path().join("in.txt");
    std::fs::write(&input, "while stopped\n").expect("write host file");
    d.docker_ok(&["cp", input.to_str().expect("utf8"), "stopped:/"]);
    assert!(!container_mounted(&d, &id), "cp left the rootfs mounted");
    // The file is in the container's writable layer: it survives a start.
    d.docker_ok(&["start", "stopped"]);
    d.docker_ok(&["wait", "stopped"]);
    let out = d.docker(&["cp", "stopped:/in.txt", "-"]);
    assert!(contains(&out.stdout, b"while stopped\n"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!container_mounted(&d, &id), "cp left the rootfs mounted");
}

#[test]
fn cp_of_a_missing_path_reports_dockerd_error() {
    require!(Need::Root, Need::Registry);
    let d = ready();
    d.docker_ok(&["create", "--name", "nofile", "busybox", "true"]);
    // The 20.10 CLI words a 404 itself, the 28.x CLI prints the daemon's
    // message; that message is in the body either way.
    let err = d.docker_err(&["cp", "nofile:/nope", "-"]);
    assert!(
        err.contains("No such container:path: nofile:/nope") || err.contains("Could not find the file /nope in container nofile"),
        "{err}"
    );
    let message = r#"{"message":"Could not find the file /nope in container nofile"}"#;
    let (status, _, body) = d.api("GET", "/v1.43/containers/nofile/archive?path=/nope", None, &[]);
    assert_eq!((status, String::from_utf8_lossy(&body).trim()), (404, message));
    let (status, _, _) = d.api("HEAD", "/v1.43/containers/nofile/archive?path=/nope", None, &[]);
    assert_eq!(status, 404);
    let (status, body) = put_archive(&d, "nofile", "/nope", &[0u8; 1024]);
    assert_eq!((status, body.trim()), (404, message));
    if let Some(r) = common::reference() {
        let name = unique("berth-cp-nofile");
        r.docker_ok(&["create", "--name", &name, "busybox", "true"]);
        let reference_err = r.docker_err(&["cp", &format!("{name}:/nope"), "-"]);
        let (status, _, body) = r.api("GET", &format!("/v1.41/containers/{name}/archive?path=/nope"), None, &[]);
        r.docker_ok(&["rm", &name]);
        assert_eq!(reference_err.trim().replace(&name, "nofile"), err.trim());
        assert_eq!((status, String::from_utf8_lossy(&body).trim().replace(&name, "nofile")), (404, message.to_owned()));
    }
}

#[test]
fn cp_resolves_symlinks_inside_the_container_never_on_the_host() {
    require!(Need::Root, Need::Registry);
    let d = ready();
    // On the host: a secret file and an empty directory the container's
    // symlinks name by their host paths.
    let host = tempfile::Builder::new().prefix("berth-host-").tempdir_in("/tmp").expect("host dir");
    let secret_text = format!("HOST_SECRET_{}", unique("s"));
    let secret = host.path().join("secret");
    std::fs::write(&secret, &secret_text).expect("write secret");
    let host_dir = host.path().join("hostdir");
    std::fs::create_dir(&host_dir).expect("mkdir host dir");
    let (secret_p, host_dir_p) = (secret.display().to_string(), host_dir.display().to_string());

    d.docker_ok(&["run", "-d", "--name", "linky", "busybox", "sleep", "1000"]);
    let links = format!(
        "ln -s {secret_p} /leak && ln -s ../../../../../../..{secret_p} /climb && ln -s {host_dir_p} /linkdir"
    );
    d.docker_ok(&["exec", "linky", "sh", "-c", &links]);

    // The link itself is copied, not what it names on the host.
    let out = d.docker(&["cp", "linky:/leak", "-"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(tar_list(&out.stdout), vec!["leak"]);
    assert!(!contains(&out.stdout, secret_text.as_bytes()), "host secret leaked");
    // Followed (-L), it names a file the container does not have.
    for link in ["linky:/leak", "linky:/climb"] {
        let out = d.docker(&["cp", "-L", link, "-"]);
        assert!(!out.status.success(), "cp -L {link} should fail: the target is not in the container");
        assert!(!contains(&out.stdout, secret_text.as_bytes()), "host secret leaked through {link}");
    }
    let (status, _, body) = d.api("GET", &format!("/v1.43/containers/linky/archive?path={secret_p}"), None, &[]);
    let message = format!("Could not find the file {secret_p} in container linky");
    assert_eq!(status, 404);
    assert!(String::from_utf8_lossy(&body).contains(&message), "{}", String::from_utf8_lossy(&body));
    for path in ["/leak/", "/climb/", "/leak/.", "/climb/../secret"] {
        let (_, _, body) = d.api("GET", &format!("/v1.43/containers/linky/archive?path={path}"), None, &[]);
        assert!(!contains(&body, secret_text.as_bytes()), "host secret leaked through {path}");
    }

    // Copying into the link never writes into the host directory.
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::write(tmp.path().join("dropped"), "dropped\n").expect("write");
    let dropped = tmp.path().join("dropped").display().to_string();
    let _ = d.docker(&["cp", &dropped, "linky:/linkdir/"]);
    let _ = d.docker(&["cp", &dropped, "linky:/linkdir"]);
    let tar = tar_of(tmp.path(), "dropped");
    let (status, body) = put_archive(&d, "linky", "/linkdir", &tar);
    assert_eq!(status, 404, "{body}");
    assert!(dir_is_empty(&host_dir), "cp wrote into the host directory");

    // Once the container has those paths itself, the links reach them:
    // the container's files, not the host's.
    d.docker_ok(&["exec", "linky", "sh", "-c", &format!("mkdir -p {host_dir_p} && echo CONTAINER_FILE > {secret_p}")]);
    for link in ["linky:/leak", "linky:/climb"] {
        let out = d.docker(&["cp", "-L", link, "-"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(contains(&out.stdout, b"CONTAINER_FILE"), "cp -L {link} did not read the container's file");
        assert!(!contains(&out.stdout, secret_text.as_bytes()), "host secret leaked through {link}");
    }
    let (status, body) = put_archive(&d, "linky", "/linkdir", &tar);
    assert_eq!(status, 200, "{body}");
    d.docker_ok(&["cp", &dropped, "linky:/linkdir/"]);
    assert_eq!(d.docker_ok(&["exec", "linky", "cat", &format!("{host_dir_p}/dropped")]), "dropped\n");
    assert!(dir_is_empty(&host_dir), "cp wrote into the host directory");
    assert_eq!(std::fs::read_to_string(&secret).expect("secret"), secret_text, "host secret was changed");

    // The same on the stopped container, whose rootfs cp mounts itself.
    d.docker_ok(&["kill", "linky"]);
    d.docker_ok(&["wait", "linky"]);
    let out = d.docker(&["cp", "-L", "linky:/climb", "-"]);
    assert!(contains(&out.stdout, b"CONTAINER_FILE") && !contains(&out.stdout, secret_text.as_bytes()));
    let (status, body) = put_archive(&d, "linky", "/linkdir", &tar);
    assert_eq!(status, 200, "{body}");
    assert!(dir_is_empty(&host_dir), "cp wrote into the host directory");
}

/// The steps whose `docker diff` the test compares.
const DIFF_SCRIPT: &str =
    "mkdir -p /d/sub && echo hi > /d/sub/f && ln -s /etc/passwd /lnk && rm /etc/group && echo x >> /etc/passwd && touch /bin/newfile";

#[test]
fn diff_lists_added_changed_and_deleted_files_like_dockerd() {
    require!(Need::Root, Need::Registry);
    let d = ready();
    d.docker_ok(&["create", "--name", "fresh", "busybox", "true"]);
    assert_eq!(d.docker_ok(&["diff", "fresh"]), "");
    d.docker_ok(&["run", "--name", "differ", "--network", "none", "busybox", "sh", "-c", DIFF_SCRIPT]);
    let ours = d.docker_ok(&["diff", "differ"]);
    let expected = "C /bin\nA /bin/newfile\nA /d\nA /d/sub\nA /d/sub/f\nC /etc\nD /etc/group\nC /etc/passwd\nA /lnk\n";
    assert_eq!(ours, expected);
    if let Some(r) = common::reference() {
        // dockerd lists changes in no particular order: compare them sorted.
        let name = unique("berth-diff");
        r.docker_ok(&["run", "--name", &name, "--network", "none", "busybox", "sh", "-c", DIFF_SCRIPT]);
        let theirs = r.docker_ok(&["diff", &name]);
        r.docker_ok(&["rm", &name]);
        let sorted = |s: &str| {
            let mut v: Vec<String> = s.lines().map(str::to_owned).collect();
            v.sort();
            v
        };
        assert_eq!(sorted(&ours), sorted(&theirs));
    }
}

#[test]
fn export_streams_the_whole_file_system() {
    require!(Need::Root, Need::Registry);
    let d = ready();
    d.docker_ok(&["run", "--name", "exp", "busybox", "sh", "-c", "echo x > /exported"]);
    let id = d.docker_ok(&["inspect", "-f", "{{.Id}}", "exp"]).trim().to_owned();
    let since = now_secs();
    let out = d.docker(&["export", "exp"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let names = tar_list(&out.stdout);
    for want in ["bin/busybox", "exported", "etc/passwd"] {
        assert!(names.iter().any(|n| n == want), "{want} missing from the export");
    }
    wait_event(&d, since, "exp", "export");
    assert!(!container_mounted(&d, &id), "export left the rootfs mounted");
    // A running container exports too, and keeps running.
    d.docker_ok(&["run", "-d", "--name", "live", "busybox", "sleep", "1000"]);
    let out = d.docker(&["export", "live"]);
    assert!(tar_list(&out.stdout).iter().any(|n| n == "bin/busybox"));
    assert_eq!(d.docker_ok(&["inspect", "-f", "{{.State.Running}}", "live"]).trim(), "true");
}

#[test]
fn commit_applies_changes_and_extends_the_history_with_the_parent_set() {
    require!(Need::Root, Need::Registry);
    let d = ready();
    let script = "echo data > /committed";
    d.docker_ok(&["run", "--name", "committer", "busybox", "sh", "-c", script]);
    let since = now_secs();
    let busybox_id = d.docker_ok(&["inspect", "-f", "{{.Id}}", "busybox"]).trim().to_owned();
    let container_id = d.docker_ok(&["inspect", "-f", "{{.Id}}", "committer"]).trim().to_owned();
    let history = |c: &Client, image: &str| -> Vec<String> {
        c.docker_ok(&["history", "--no-trunc", "--format", "{{.CreatedBy}}|{{.Comment}}", image]).lines().map(str::to_owned).collect()
    };
    let before = history(&d, "busybox");
    let commit = ["commit", "--change", r#"CMD ["echo","hi"]"#, "-m", "snapshot", "-a", "Berth Test"];
    let id = d.docker_ok(&[&commit[..], &["committer", "committed:v1"]].concat()).trim().to_owned();
    assert!(id.starts_with("sha256:") && id.len() == 71, "{id}");
    wait_event(&d, since, "committer", "commit");

    assert_eq!(d.docker_ok(&["run", "--rm", "committed:v1"]), "hi\n");
    assert_eq!(d.docker_ok(&["run", "--rm", "committed:v1", "cat", "/committed"]), "data\n");
    let after = history(&d, "committed:v1");
    assert_eq!(after.len(), before.len() + 1, "{after:?}");
    assert_eq!(after[0], format!("sh -c {script}|snapshot"));
    let inspect = d.docker_ok(&["image", "inspect", "-f", "{{.Id}}|{{.Parent}}|{{.Comment}}|{{.Author}}|{{.Container}}|{{json .Config.Cmd}}", "committed:v1"]);
    assert_eq!(inspect.trim(), format!("{id}|{busybox_id}|snapshot|Berth Test|{container_id}|[\"echo\",\"hi\"]"));
    let layers = |c: &Client, image: &str| c.docker_ok(&["image", "inspect", "-f", "{{len .RootFS.Layers}}", image]).trim().parse::<usize>().expect("a count");
    assert_eq!(layers(&d, "committed:v1"), layers(&d, "busybox") + 1);

    // A container that changed nothing commits to an empty layer, as dockerd.
    d.docker_ok(&["run", "--name", "idle", "busybox", "true"]);
    let empty = d.docker_ok(&["commit", "idle"]).trim().to_owned();
    assert_eq!(layers(&d, &empty), layers(&d, "busybox"));
    assert_eq!(history(&d, &empty).len(), before.len() + 1);

    if let Some(r) = common::reference() {
        let name = unique("berth-commit");
        let tag = format!("{name}:v1");
        r.docker_ok(&["run", "--name", &name, "--network", "none", "busybox", "sh", "-c", script]);
        r.docker_ok(&[&commit[..], &[name.as_str(), tag.as_str()]].concat());
        let theirs = history(&r, &tag);
        let their_cmd = r.docker_ok(&["image", "inspect", "-f", "{{json .Config.Cmd}}|{{.Comment}}|{{.Author}}", &tag]);
        let their_layers = layers(&r, &tag);
        let their_base = layers(&r, "busybox");
        r.docker_ok(&["rm", &name]);
        r.docker_ok(&["rmi", &tag]);
        assert_eq!(after, theirs);
        assert_eq!(their_cmd.trim(), "[\"echo\",\"hi\"]|snapshot|Berth Test");
        assert_eq!(their_layers - their_base, 1);
    }
}

#[test]
fn commit_pauses_a_running_container_and_leaves_it_running() {
    require!(Need::Root, Need::Registry);
    let d = ready();
    d.docker_ok(&["run", "-d", "--name", "busy", "busybox", "sleep", "1000"]);
    d.docker_ok(&["exec", "busy", "touch", "/marker"]);
    let since = now_secs();
    d.docker_ok(&["commit", "busy", "busy:snap"]);
    for action in ["pause", "commit", "unpause"] {
        wait_event(&d, since, "busy", action);
    }
    assert_eq!(d.docker_ok(&["inspect", "-f", "{{.State.Status}}", "busy"]).trim(), "running");
    assert_eq!(d.docker_ok(&["run", "--rm", "busy:snap", "ls", "/marker"]), "/marker\n");
    let err = d.docker_err(&["commit", "--change", "RUN true", "busy"]);
    assert!(err.contains("run is not a valid change command"), "{err}");
}

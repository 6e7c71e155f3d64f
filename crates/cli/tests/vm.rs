//! End-to-end: the real guest image under QEMU (TCG), the real `docker` CLI
//! on the host against `$BERTH_HOME/run/docker.sock`.
//!
//! Needs root, `target/vm-image/` (`vm-image/build.sh`), QEMU, the docker CLI
//! and the fixture registry (`eval "$(scripts/test-env start)"`, which sets
//! `BERTH_TEST_REGISTRY`). Without them it skips with a message, except
//! under `CI=true`, where it fails. One test function, three boots (first
//! boot; restart with the data disk full; restart with a larger disk): TCG
//! boots are slow. About 45-60 s in all, ~12 s of it the redis pull the UDP
//! check needs (perl for an echo server).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("crates/cli is two levels below the workspace")
        .to_path_buf()
}

/// Skips (prints why and returns true) or, under CI=true, fails.
fn skip(why: &str) -> bool {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("vm e2e cannot run under CI=true: {why}");
    }
    eprintln!("SKIPPED vm e2e: {why}");
    true
}

/// Runs `cmd` and echoes it with its output, so a failing test shows the
/// whole conversation.
fn run_logged(name: &str, args: &[&str], mut cmd: Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {name}: {e}"));
    eprintln!(
        "$ {name} {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn docker_cli() -> Option<PathBuf> {
    let preferred = PathBuf::from("/usr/local/bin/docker");
    if preferred.exists() {
        return Some(preferred);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("docker"))
            .find(|p| p.exists())
    })
}

struct Env {
    berth: PathBuf,
    docker: PathBuf,
    home: tempfile::TempDir,
    docker_config: tempfile::TempDir,
}

impl Env {
    fn sock(&self) -> PathBuf {
        self.home.path().join("run/docker.sock")
    }

    fn berth(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(&self.berth);
        cmd.args(args)
            .env("BERTH_HOME", self.home.path())
            .env("DOCKER_CONFIG", self.docker_config.path())
            .env("BERTH_VM_IMAGE", workspace_root().join("target/vm-image"));
        run_logged("berth", args, cmd)
    }

    fn docker(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(&self.docker);
        cmd.args(args)
            .env("DOCKER_HOST", format!("unix://{}", self.sock().display()))
            .env("DOCKER_CONFIG", self.docker_config.path())
            .env_remove("DOCKER_CONTEXT");
        run_logged("docker", args, cmd)
    }

    fn docker_ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(out.status.success(), "docker {args:?} failed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn logs_on_failure(&self) {
        let out = self.berth(&["vm", "logs"]);
        let text = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = text.lines().collect();
        eprintln!(
            "--- berth vm logs (last 80 lines) ---\n{}",
            lines[lines.len().saturating_sub(80)..].join("\n")
        );
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Never leave a VM behind, whatever failed.
        let _ = Command::new(&self.berth)
            .args(["vm", "stop", "--grace", "20"])
            .env("BERTH_HOME", self.home.path())
            .output();
    }
}

fn http_get(port: u16) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

#[test]
fn vm_boots_serves_docker_cli_and_keeps_images_across_restart() {
    let image = workspace_root().join("target/vm-image");
    if !["vmlinuz", "initrd.img", "rootfs.img"]
        .iter()
        .all(|f| image.join(f).exists())
    {
        skip(&format!(
            "no guest image at {} (run vm-image/build.sh)",
            image.display()
        ));
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 && skip("needs root") {
        return;
    }
    let Some(docker) = docker_cli() else {
        skip("no docker CLI");
        return;
    };
    let Ok(registry) = std::env::var("BERTH_TEST_REGISTRY") else {
        skip("BERTH_TEST_REGISTRY unset (eval \"$(scripts/test-env start)\")");
        return;
    };
    let registry_port = registry.rsplit(':').next().unwrap_or("5000").to_string();
    let guest_registry = format!("host.docker.internal:{registry_port}");

    let env = Env {
        berth: PathBuf::from(env!("CARGO_BIN_EXE_berth")),
        docker,
        home: tempfile::Builder::new()
            .prefix("bh")
            .tempdir_in("/tmp")
            .unwrap(),
        docker_config: tempfile::tempdir().unwrap(),
    };
    std::fs::write(
        env.home.path().join("daemon.json"),
        format!(r#"{{"insecure-registries": ["{guest_registry}"]}}"#),
    )
    .unwrap();

    // Boot.
    let t = Instant::now();
    let out = env.berth(&[
        "vm", "start", "--accel", "tcg", "--memory", "1024", "--cpus", "2", "--disk", "4",
    ]);
    if !out.status.success() {
        env.logs_on_failure();
        panic!("berth vm start failed");
    }
    eprintln!("cold start: {:.1} s", t.elapsed().as_secs_f64());
    let meta = std::fs::read_dir(env.docker_config.path().join("contexts/meta"))
        .unwrap()
        .count();
    assert_eq!(meta, 1, "berth docker context written");

    // A second start says so and changes nothing.
    let again = env.berth(&["vm", "start", "--accel", "tcg"]);
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("already running"));

    let status = env.berth(&["vm", "status", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(v["phase"], "running");
    assert_eq!(v["accel"], "tcg");

    // The real docker CLI through the relayed socket.
    let version = env.docker_ok(&["version", "--format", "{{.Server.Version}}"]);
    assert!(!version.trim().is_empty());

    // Pull from the host's registry through host.docker.internal.
    let image_ref = format!("{guest_registry}/library/busybox:latest");
    env.docker_ok(&["pull", &image_ref]);
    let out = env.docker_ok(&["run", "--rm", &image_ref, "echo", "hello from the vm"]);
    assert_eq!(out.trim(), "hello from the vm");

    // Bind mount of a host folder under /tmp, both directions.
    let shared = tempfile::Builder::new()
        .prefix("berth-e2e")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::write(shared.path().join("from-host"), "host wrote this\n").unwrap();
    let mount = format!("{}:/work", shared.path().display());
    let out = env.docker_ok(&[
        "run",
        "--rm",
        "-v",
        &mount,
        &image_ref,
        "sh",
        "-c",
        "cat /work/from-host && echo guest wrote this > /work/from-guest",
    ]);
    assert_eq!(out.trim(), "host wrote this");
    assert_eq!(
        std::fs::read_to_string(shared.path().join("from-guest"))
            .unwrap()
            .trim(),
        "guest wrote this"
    );

    // A published port answers on the host, and goes away with the container.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    // Published on the host's loopback, as users usually do: the engine in
    // the guest (--vm-guest) answers the forward on its interface.
    let publish = format!("127.0.0.1:{port}:80");
    env.docker_ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "-p",
        &publish,
        &image_ref,
        "sh",
        "-c",
        "mkdir -p /www && echo published-ok > /www/index.html && httpd -f -p 80 -h /www",
    ]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        match http_get(port) {
            Ok(b) if b.contains("published-ok") => break b,
            _ if Instant::now() > deadline => {
                env.logs_on_failure();
                panic!("published port {port} did not answer on the host");
            }
            _ => std::thread::sleep(Duration::from_millis(300)),
        }
    };
    assert!(body.contains("200"), "{body}");
    env.docker_ok(&["rm", "-f", "web"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while http_get(port)
        .map(|b| b.contains("published-ok"))
        .unwrap_or(false)
    {
        assert!(
            Instant::now() < deadline,
            "forward of port {port} outlived its container"
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    // Containers know the host by name, as in Docker Desktop.
    let hosts = env.docker_ok(&["run", "--rm", &image_ref, "cat", "/etc/hosts"]);
    assert!(hosts.contains("10.0.2.2\thost.docker.internal"), "{hosts}");

    // Data that must survive both a full disk and the restart below.
    env.docker_ok(&[
        "run",
        "--rm",
        "-v",
        "keep:/d",
        &image_ref,
        "sh",
        "-c",
        "echo kept > /d/marker",
    ]);

    // A full data disk: the engine keeps answering, what needs space fails
    // with ENOSPC in the message, nothing already there is lost, and freeing
    // the space is enough to recover. The filler runs as root in the
    // container, so it takes ext4's root reserve too; it is left behind
    // (no --rm) so nothing frees space until we say so.
    let t = Instant::now();
    let redis_ref = format!("{guest_registry}/library/redis:latest");
    let _ = env.docker(&[
        "run",
        "--name",
        "filler",
        "-v",
        "fill:/f",
        &image_ref,
        "sh",
        "-c",
        "fallocate -l $(df -k /f | awk 'NR==2 {print $4}')k /f/big; \
         dd if=/dev/zero of=/f/rest bs=1M 2>/dev/null; df -k /f",
    ]);
    let no_space = |out: &Output| {
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr)
                .to_lowercase()
                .contains("no space left on device")
    };
    let out = env.docker(&["pull", &redis_ref]);
    assert!(no_space(&out), "pull on a full disk: clear ENOSPC error");
    let out = env.docker(&["run", "--rm", &image_ref, "true"]);
    assert!(no_space(&out), "run on a full disk: clear ENOSPC error");
    let version = env.docker_ok(&["version", "--format", "{{.Server.Version}}"]);
    assert!(!version.trim().is_empty(), "engine answers on a full disk");
    let images = env.docker_ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    assert!(images.contains(&image_ref), "images intact: {images}");
    // A restart with the disk still full: the engine must come up (it
    // used to exit rewriting its network records, and berth-init restarted
    // it forever), so the user can free space with docker itself.
    assert!(env.berth(&["vm", "stop"]).status.success());
    let out = env.berth(&[
        "vm",
        "start",
        "--accel",
        "tcg",
        "--memory",
        "1024",
        "--cpus",
        "2",
        "--disk",
        "4",
        "--timeout",
        "60",
    ]);
    if !out.status.success() {
        env.logs_on_failure();
        panic!("berth vm start with a full data disk failed");
    }
    let images = env.docker_ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    assert!(images.contains(&image_ref), "images intact: {images}");
    let names = env.docker_ok(&["ps", "-a", "--format", "{{.Names}}"]);
    assert!(
        names.lines().any(|n| n == "filler"),
        "containers intact: {names}"
    );
    env.docker_ok(&["rm", "filler"]);
    env.docker_ok(&["volume", "rm", "fill"]);
    let out = env.docker_ok(&[
        "run",
        "--rm",
        "-v",
        "keep:/d",
        &image_ref,
        "cat",
        "/d/marker",
    ]);
    assert_eq!(
        out.trim(),
        "kept",
        "volume data intact after the disk was full"
    );
    eprintln!("full disk check: {:.1} s", t.elapsed().as_secs_f64());

    // UDP: a published UDP port answers on the host (QEMU udp hostfwd).
    // The Debian-based redis image has perl for a small echo server.
    let t = Instant::now();
    env.docker_ok(&["pull", "-q", &redis_ref]);
    eprintln!("redis pull: {:.1} s", t.elapsed().as_secs_f64());
    let udp_port = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap().port()
    };
    let publish = format!("127.0.0.1:{udp_port}:9999/udp");
    env.docker_ok(&[
        "run",
        "-d",
        "--name",
        "udp-echo",
        "-p",
        &publish,
        &redis_ref,
        "perl",
        "-MIO::Socket::INET",
        "-e",
        r#"$s=IO::Socket::INET->new(LocalPort=>9999,Proto=>"udp") or die "$!"; while($s->recv($m,1000)){ $s->send("echo:$m") }"#,
    ]);
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let reply = loop {
        let _ = sock.send_to(b"ping-udp", ("127.0.0.1", udp_port));
        let mut buf = [0u8; 64];
        match sock.recv_from(&mut buf) {
            Ok((n, _)) => break String::from_utf8_lossy(&buf[..n]).into_owned(),
            Err(_) if Instant::now() > deadline => {
                env.logs_on_failure();
                panic!("published UDP port {udp_port} did not answer on the host");
            }
            Err(_) => {}
        }
    };
    assert_eq!(reply, "echo:ping-udp");
    env.docker_ok(&["rm", "-f", "udp-echo"]);
    eprintln!("udp check: {:.1} s", t.elapsed().as_secs_f64());

    // Graceful stop, restart with a larger disk: the images and the volume
    // are still there, and the filesystem grew with the disk.
    let out = env.berth(&["vm", "stop"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("guest shut down"),
        "stop was not graceful: {text}"
    );
    assert!(!env.sock().exists(), "engine socket removed after stop");

    let out = env.berth(&[
        "vm", "start", "--accel", "tcg", "--memory", "1024", "--cpus", "2", "--disk", "5",
    ]);
    if !out.status.success() {
        env.logs_on_failure();
        panic!("second berth vm start failed");
    }
    let images = env.docker_ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    for want in [&image_ref, &redis_ref] {
        assert!(
            images.lines().any(|l| l == want.as_str()),
            "{want} survived the restart: {images}"
        );
    }
    let out = env.docker_ok(&[
        "run",
        "--rm",
        "-v",
        "keep:/d",
        &image_ref,
        "sh",
        "-c",
        "cat /d/marker; df -k /d | awk 'NR==2 {print $2}'",
    ]);
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("kept"), "volume survived the restart");
    let kib: u64 = lines
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0);
    assert!(
        kib > 4_700_000,
        "data filesystem grew to the 5 GiB disk: {kib} KiB"
    );
    let out = env.berth(&["vm", "stop"]);
    assert!(out.status.success());
}

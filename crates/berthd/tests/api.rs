//! The API surface itself: version negotiation, ping headers, errors, and
//! hostile request bodies. Raw HTTP where the CLI would hide the detail.

mod common;

use common::{require, Berthd, Need};

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

#[test]
fn ping_answers_head_and_get_with_negotiation_headers() {
    require!(Need::Root);
    let d = Berthd::start();
    for method in ["GET", "HEAD"] {
        let (status, headers, body) = d.api(method, "/_ping", None, &[]);
        assert_eq!(status, 200);
        assert_eq!(header(&headers, "Api-Version"), Some("1.47"));
        assert_eq!(header(&headers, "OSType"), Some("linux"));
        assert_eq!(header(&headers, "Docker-Experimental"), Some("false"));
        if method == "GET" {
            assert_eq!(body, b"OK");
        }
    }
}

#[test]
fn versioned_paths_within_range_work_and_others_are_refused() {
    require!(Need::Root);
    let d = Berthd::start();
    for path in ["/version", "/v1.24/version", "/v1.41/version", "/v1.47/version"] {
        let (status, v) = d.api_json("GET", path, None);
        assert_eq!(status, 200, "{path}");
        assert_eq!(v["ApiVersion"], "1.47");
        assert_eq!(v["MinAPIVersion"], "1.24");
    }
    let (status, v) = d.api_json("GET", "/v1.99/version", None);
    assert_eq!(status, 400);
    assert_eq!(v["message"], "client version 1.99 is too new. Maximum supported API version is 1.47");
    let (status, v) = d.api_json("GET", "/v1.23/version", None);
    assert_eq!(status, 400);
    assert!(v["message"].as_str().expect("message").starts_with("client version 1.23 is too old"), "{v}");
}

#[test]
fn docker_cli_negotiates_current_and_old_api_versions() {
    require!(Need::Root);
    let d = Berthd::start();
    assert_eq!(d.docker_ok(&["version", "--format", "{{.Server.APIVersion}}"]).trim(), "1.47");
    // A client pinned to dockerd 20.10's API still works.
    let out = d.docker_command(&["version", "--format", "{{.Client.APIVersion}}"]).env("DOCKER_API_VERSION", "1.41").output().expect("docker");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1.41");
    // And so does Debian's docker 20.10 client itself, next to the 28.x one.
    if std::path::Path::new(common::DOCKER_20_10).exists() && common::docker_cli() != common::DOCKER_20_10 {
        let out = std::process::Command::new(common::DOCKER_20_10)
            .args(["-H", d.host(), "version", "--format", "{{.Client.Version}} {{.Server.APIVersion}}"])
            .env("DOCKER_CONFIG", d.docker_config())
            .output()
            .expect("docker 20.10");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.starts_with("20.10") && text.trim().ends_with("1.47"), "{text}");
    }
    let v = d.docker_ok(&["version", "--format", "{{.Client.Version}}"]);
    assert!(v.starts_with("28.") || common::docker_cli() == common::DOCKER_20_10, "tests should drive the 28.x CLI: {v}");
    let info = d.docker_ok(&["info", "--format", "{{.OSType}} {{.Driver}} {{.DockerRootDir}}"]);
    assert_eq!(info.trim(), format!("linux overlay2 {}", d.data_root().display()));
}

#[test]
fn unknown_routes_and_bad_parameters_get_json_errors() {
    require!(Need::Root);
    let d = Berthd::start();
    let (status, v) = d.api_json("GET", "/v1.47/nothing/here", None);
    assert_eq!(status, 404);
    assert_eq!(v["message"], "page not found");
    let (status, v) = d.api_json("GET", "/images/json?filters=%7Bnot-json", None);
    assert_eq!(status, 400);
    assert!(v["message"].as_str().expect("message").contains("invalid filter"), "{v}");
    let (status, v) = d.api_json("POST", "/images/create", None);
    assert_eq!(status, 400, "{v}");
    let (status, v) = d.api_json("POST", "/images/create?fromImage=library%2FRedis", None);
    assert_eq!(status, 400);
    assert!(v["message"].as_str().expect("message").contains("must be lowercase"), "{v}");
    let (status, v) = d.api_json("POST", "/images/create?fromImage=busybox&platform=bad%20platform!", None);
    assert_eq!(status, 400, "{v}");
}

#[test]
fn hostile_load_bodies_fail_cleanly_and_store_nothing() {
    require!(Need::Root);
    let d = Berthd::start();
    let blobs = || std::fs::read_dir(d.data_root().join("content/blobs/sha256")).map(|r| r.count()).unwrap_or(0);
    let before = blobs();
    for body in [&b"definitely not a tar"[..], &[0u8; 10240][..], &[0x1f, 0x8b, 0, 0][..]] {
        let (status, _, out) = d.api("POST", "/images/load?quiet=1", Some(body), &[("Content-Type", "application/x-tar")]);
        let text = String::from_utf8_lossy(&out);
        assert!(status >= 400 || text.contains("error"), "status {status}: {text}");
    }
    assert_eq!(blobs(), before);
    // The engine still answers.
    assert_eq!(d.api("GET", "/_ping", None, &[]).0, 200);
}

#[test]
fn events_until_in_the_past_returns_at_once() {
    require!(Need::Root);
    let d = Berthd::start();
    let (status, _, body) = d.api("GET", "/events?since=1&until=2", None, &[]);
    assert_eq!(status, 200);
    assert!(body.is_empty(), "{}", String::from_utf8_lossy(&body));
}

#[test]
fn daemon_json_is_read_and_flag_conflicts_are_refused() {
    require!(Need::Root);
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("daemon.json");
    std::fs::write(&cfg, r#"{"registry-mirrors": ["http://127.0.0.1:1"]}"#).expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_berthd"))
        .args(["--config-file", cfg.to_str().expect("utf8"), "--registry-mirror", "http://127.0.0.1:2"])
        .args(["--data-root", dir.path().join("d").to_str().expect("utf8"), "-H", &format!("unix://{}/s", dir.path().display())])
        .output()
        .expect("berthd");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("specified both as a flag and in the configuration file: registry-mirrors"), "{err}");
    std::fs::write(&cfg, r#"{"no-such-option": true}"#).expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_berthd"))
        .args(["--config-file", cfg.to_str().expect("utf8")])
        .output()
        .expect("berthd");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("don't match any configuration option: no-such-option"), "{err}");
}

#[test]
fn tcp_is_served_on_loopback_only() {
    require!(Need::Root);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_berthd"))
        .args(["--data-root", "/tmp/berth-tcp-refused", "-H", "tcp://0.0.0.0:23750"])
        .output()
        .expect("berthd");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to listen on tcp://0.0.0.0:23750 without TLS"));
    let port = free_port();
    let d = Berthd::start_with(&["-H", &format!("tcp://127.0.0.1:{port}")]);
    let (status, _, body) = common::http_tcp(&format!("127.0.0.1:{port}"), "GET", "/_ping", None, &[]);
    assert_eq!(status, 200);
    assert_eq!(body, b"OK");
    drop(d);
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, made
/// with the openssl CLI.
fn make_certs(dir: &std::path::Path) {
    let sh = |script: &str| {
        let out = std::process::Command::new("sh").arg("-ec").arg(script).current_dir(dir).output().expect("sh");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    sh("openssl req -x509 -newkey rsa:2048 -nodes -keyout ca-key.pem -out ca.pem -days 2 -subj /CN=berth-test-ca 2>/dev/null
        openssl req -newkey rsa:2048 -nodes -keyout server-key.pem -out server.csr -subj /CN=127.0.0.1 2>/dev/null
        printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > server.ext
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -out server.pem -days 2 -extfile server.ext 2>/dev/null
        openssl req -newkey rsa:2048 -nodes -keyout key.pem -out client.csr -subj /CN=client 2>/dev/null
        printf 'extendedKeyUsage=clientAuth\n' > client.ext
        openssl x509 -req -in client.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -out cert.pem -days 2 -extfile client.ext 2>/dev/null
        cp ca.pem ca-client.pem");
}

#[test]
fn tcp_with_mutual_tls_accepts_only_clients_with_a_signed_certificate() {
    require!(Need::Root);
    let certs = tempfile::tempdir().expect("tempdir");
    make_certs(certs.path());
    let p = |f: &str| certs.path().join(f).to_str().expect("utf8").to_owned();
    let port = free_port();
    let addr = format!("tcp://127.0.0.1:{port}");
    let d = Berthd::start_with(&["--tlsverify", "--tlscacert", &p("ca.pem"), "--tlscert", &p("server.pem"), "--tlskey", &p("server-key.pem"), "-H", &addr]);
    // An empty config dir: the CLI would otherwise find cert.pem there.
    let config = tempfile::tempdir().expect("tempdir");
    let docker = |args: &[&str]| {
        std::process::Command::new(common::docker_cli()).env("DOCKER_CONFIG", config.path()).env_remove("DOCKER_CERT_PATH").args(args).output().expect("docker")
    };
    let ca = p("ca.pem");
    let (cert, key) = (p("cert.pem"), p("key.pem"));
    let ok = docker(&["--tlsverify", "--tlscacert", &ca, "--tlscert", &cert, "--tlskey", &key, "-H", &addr, "version", "--format", "{{.Server.APIVersion}}"]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "1.47");
    // No client certificate: the handshake is refused.
    let refused = docker(&["--tlsverify", "--tlscacert", &ca, "-H", &addr, "version"]);
    assert!(!refused.status.success());
    // Plain HTTP on the TLS port gets nothing useful either.
    let plain = docker(&["-H", &addr, "version", "--format", "{{.Server.APIVersion}}"]);
    assert!(!String::from_utf8_lossy(&plain.stdout).contains("1.47"));
    drop(d);
}

/// A loopback port nothing listens on right now.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

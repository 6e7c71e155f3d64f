//! The QMP (QEMU Machine Protocol) client, on the `qapi` crate.
//!
//! Owns connecting to QEMU's `-qmp unix:...` socket (greeting, then
//! `qmp_capabilities`) and the few typed commands the VM manager sends:
//! `system_powerdown`, `quit`, `query-status` and `human-monitor-command`
//! (for `hostfwd_add`/`hostfwd_remove`, which have no QMP equivalent). The
//! wire handling (JSON lines, command ids, skipping asynchronous events) is
//! `qapi`'s, with types generated from QEMU's own schema. It does not own
//! when to stop or how to escalate (see [`crate::backend::escalate_stop`]),
//! nor spawning QEMU.
//!
//! QEMU's QMP socket serves one client at a time, so callers connect per
//! operation and drop the client when done. That also keeps sessions short:
//! `qapi` decodes events against the schema it was generated from, and an
//! event that schema does not know (a much newer QEMU) arriving while a
//! command is in flight fails that command; a short session makes that
//! unlikely, and every caller treats a failed command as retryable.

use std::path::{Path, PathBuf};

use qapi::futures::{QapiStream, QmpStreamTokio};
use qapi::qmp;
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::UnixStream;

/// A QMP operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket could not be connected.
    #[error("connect to qmp socket {path:?}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The greeting or capabilities negotiation failed (not QMP, or closed).
    #[error("negotiate qmp on {path:?}")]
    Greeting {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Sending the command or reading its reply failed (QEMU went away).
    #[error("run qmp command {command}")]
    Io {
        command: &'static str,
        source: std::io::Error,
    },
    /// QEMU answered with an `error` reply.
    #[error("qmp command {command} failed: {class}: {desc}")]
    Command {
        command: &'static str,
        class: String,
        desc: String,
    },
}

/// Result of `query-status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QmpStatus {
    /// Whether guest CPUs are running.
    pub running: bool,
    /// QEMU's run state: `running`, `paused`, `shutdown`, `prelaunch`, ...
    pub status: String,
}

type Stream =
    QapiStream<QmpStreamTokio<ReadHalf<UnixStream>>, QmpStreamTokio<WriteHalf<UnixStream>>>;

/// A negotiated QMP session.
pub struct QmpClient {
    stream: Stream,
    version: (i64, i64, i64),
}

impl std::fmt::Debug for QmpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QmpClient")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl QmpClient {
    /// Connects to `path`, reads the greeting and enters command mode.
    pub async fn connect(path: &Path) -> Result<Self, QmpError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| QmpError::Connect {
                path: path.to_path_buf(),
                source,
            })?;
        let greeting = |source| QmpError::Greeting {
            path: path.to_path_buf(),
            source,
        };
        let negotiation = QmpStreamTokio::open(stream).await.map_err(greeting)?;
        let v = &negotiation.capabilities.QMP.version.qemu;
        let version = (v.major, v.minor, v.micro);
        let stream = negotiation.negotiate().await.map_err(greeting)?;
        Ok(Self { stream, version })
    }

    /// QEMU's version (major, minor, micro) from the greeting.
    pub fn qemu_version(&self) -> (i64, i64, i64) {
        self.version
    }

    async fn run<C>(&mut self, command: C) -> Result<C::Ok, QmpError>
    where
        C: qapi::qmp::QmpCommand + qapi::Command + 'static,
    {
        let name = <C as qapi::Command>::NAME;
        self.stream.execute(command).await.map_err(|e| match e {
            qapi::ExecuteError::Qapi(err) => QmpError::Command {
                command: name,
                class: format!("{:?}", err.class),
                desc: err.desc,
            },
            qapi::ExecuteError::Io(source) => QmpError::Io {
                command: name,
                source,
            },
        })
    }

    /// Asks the guest to shut down via ACPI; returns once QEMU accepted the
    /// request, not when the guest is off.
    pub async fn system_powerdown(&mut self) -> Result<(), QmpError> {
        self.run(qmp::system_powerdown {}).await.map(drop)
    }

    /// Ends QEMU immediately (no guest shutdown).
    pub async fn quit(&mut self) -> Result<(), QmpError> {
        self.run(qmp::quit {}).await.map(drop)
    }

    /// `query-status`.
    pub async fn query_status(&mut self) -> Result<QmpStatus, QmpError> {
        let info = self.run(qmp::query_status {}).await?;
        let status = serde_json::to_value(info.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| format!("{:?}", info.status));
        Ok(QmpStatus {
            running: info.running,
            status,
        })
    }

    /// Runs one HMP command line and returns its text output. HMP reports
    /// most failures as text rather than as a QMP error, so callers must
    /// read the output.
    pub async fn human_monitor_command(&mut self, line: &str) -> Result<String, QmpError> {
        self.run(qmp::human_monitor_command {
            command_line: line.to_string(),
            cpu_index: None,
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::UnixListener;

    const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 8}, "package": ""}, "capabilities": ["oob"]}}"#;

    /// What the fake QEMU sends in answer to one command; `{id}` is replaced
    /// by the id the client used.
    struct Exchange {
        expect: &'static str,
        reply: Vec<&'static str>,
    }

    /// A FAKE QMP server (not QEMU): greets, then answers each expected
    /// command with scripted lines, asserting the command name.
    async fn fake_qmp_server(listener: UnixListener, script: Vec<Exchange>) {
        let (stream, _) = listener.accept().await.unwrap();
        let (r, mut w) = stream.into_split();
        let mut r = BufReader::new(r);
        w.write_all(format!("{GREETING}\r\n").as_bytes())
            .await
            .unwrap();
        for ex in script {
            let mut line = String::new();
            r.read_line(&mut line).await.unwrap();
            let cmd: Value = serde_json::from_str(line.trim()).unwrap();
            assert_eq!(cmd["execute"], ex.expect);
            let id = cmd["id"].to_string();
            for reply in ex.reply {
                w.write_all(format!("{}\r\n", reply.replace("{id}", &id)).as_bytes())
                    .await
                    .unwrap();
            }
        }
    }

    fn negotiate() -> Exchange {
        Exchange {
            expect: "qmp_capabilities",
            reply: vec![r#"{"return": {}, "id": {id}}"#],
        }
    }

    async fn connect_fake(
        script: Vec<Exchange>,
    ) -> (QmpClient, tokio::task::JoinHandle<()>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(fake_qmp_server(listener, script));
        let client = QmpClient::connect(&path).await.unwrap();
        (client, server, dir)
    }

    #[tokio::test]
    async fn connect_reads_greeting_and_negotiates() {
        let (client, server, _dir) = connect_fake(vec![negotiate()]).await;
        assert_eq!(client.qemu_version(), (8, 2, 0));
        server.await.unwrap();
    }

    #[tokio::test]
    async fn query_status_skips_interleaved_event() {
        let (mut client, server, _dir) = connect_fake(vec![
            negotiate(),
            Exchange {
                expect: "query-status",
                reply: vec![
                    r#"{"event": "POWERDOWN", "timestamp": {"seconds": 1, "microseconds": 2}}"#,
                    r#"{"return": {"running": true, "singlestep": false, "status": "running"}, "id": {id}}"#,
                ],
            },
        ])
        .await;
        let status = client.query_status().await.unwrap();
        assert_eq!(
            status,
            QmpStatus {
                running: true,
                status: "running".into()
            }
        );
        server.await.unwrap();
    }

    #[tokio::test]
    async fn error_reply_becomes_command_error() {
        let (mut client, server, _dir) = connect_fake(vec![
            negotiate(),
            Exchange {
                expect: "system_powerdown",
                reply: vec![r#"{"error": {"class": "GenericError", "desc": "guest is not running"}, "id": {id}}"#],
            },
        ])
        .await;
        let err = client.system_powerdown().await.unwrap_err();
        match err {
            QmpError::Command {
                command,
                class,
                desc,
            } => {
                assert_eq!(command, "system_powerdown");
                assert_eq!(class, "GenericError");
                assert_eq!(desc, "guest is not running");
            }
            other => panic!("unexpected error {other:?}"),
        }
        server.await.unwrap();
    }

    #[tokio::test]
    async fn powerdown_then_quit_succeed() {
        let (mut client, server, _dir) = connect_fake(vec![
            negotiate(),
            Exchange { expect: "system_powerdown", reply: vec![r#"{"return": {}, "id": {id}}"#] },
            Exchange {
                expect: "quit",
                reply: vec![
                    r#"{"return": {}, "id": {id}}"#,
                    r#"{"event": "SHUTDOWN", "data": {"guest": false, "reason": "host-qmp-quit"}, "timestamp": {"seconds": 1, "microseconds": 2}}"#,
                ],
            },
        ])
        .await;
        client.system_powerdown().await.unwrap();
        client.quit().await.unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn human_monitor_command_sends_command_line_and_returns_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (r, mut w) = stream.into_split();
            let mut r = BufReader::new(r);
            w.write_all(format!("{GREETING}\r\n").as_bytes())
                .await
                .unwrap();
            let mut seen = Vec::new();
            for _ in 0..2 {
                let mut line = String::new();
                r.read_line(&mut line).await.unwrap();
                let cmd: Value = serde_json::from_str(line.trim()).unwrap();
                let ret = match cmd["execute"].as_str().unwrap() {
                    "human-monitor-command" => {
                        json!("Could not set up host forwarding rule 'tcp:0.0.0.0:80-:80'\r\n")
                    }
                    _ => json!({}),
                };
                let mut reply = json!({"return": ret});
                if let Some(id) = cmd.get("id") {
                    reply["id"] = id.clone();
                }
                w.write_all(format!("{reply}\r\n").as_bytes())
                    .await
                    .unwrap();
                seen.push(cmd);
            }
            seen
        });
        let mut client = QmpClient::connect(&path).await.unwrap();
        let out = client
            .human_monitor_command("hostfwd_add n0 tcp:0.0.0.0:80-:80")
            .await
            .unwrap();
        assert!(out.starts_with("Could not set up host forwarding rule"));
        let seen = server.await.unwrap();
        assert_eq!(seen[1]["execute"], "human-monitor-command");
        assert_eq!(
            seen[1]["arguments"]["command-line"],
            "hostfwd_add n0 tcp:0.0.0.0:80-:80"
        );
    }

    #[tokio::test]
    async fn closed_socket_before_reply_is_reported() {
        let (mut client, server, _dir) = connect_fake(vec![negotiate()]).await;
        server.await.unwrap(); // the fake hangs up after its script
        let err = client.query_status().await.unwrap_err();
        assert!(matches!(err, QmpError::Io { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn non_qmp_greeting_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            stream.write_all(b"{\"hello\": 1}\r\n").await.unwrap();
        });
        let err = QmpClient::connect(&path).await.unwrap_err();
        assert!(matches!(err, QmpError::Greeting { .. }), "{err:?}");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn missing_socket_is_a_connect_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = QmpClient::connect(&dir.path().join("nope.sock"))
            .await
            .unwrap_err();
        assert!(matches!(err, QmpError::Connect { .. }));
    }
}

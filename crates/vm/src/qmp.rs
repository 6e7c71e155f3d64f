//! A minimal QMP (QEMU Machine Protocol) client over a unix socket.
//!
//! Owns the JSON exchange with QEMU's `-qmp unix:...` socket: read the
//! greeting, negotiate with `qmp_capabilities`, then one command at a time,
//! skipping asynchronous events while waiting for a command's `return` or
//! `error`. QMP is line-based: each message is one JSON object followed by
//! CRLF. It does not own when to stop or how to escalate (see
//! [`crate::backend::escalate_stop`]), nor spawning QEMU.
//!
//! Commands carry an `id` that QEMU echoes, so a reply that does not belong
//! to the command in flight is detected rather than misattributed.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
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
    /// The first message was not a QMP greeting.
    #[error("read qmp greeting: unexpected message {0}")]
    Greeting(String),
    /// Writing a command failed.
    #[error("send qmp command {command}")]
    Send {
        command: String,
        source: std::io::Error,
    },
    /// Reading a reply failed.
    #[error("read reply to qmp command {command}")]
    Receive {
        command: String,
        source: std::io::Error,
    },
    /// QEMU closed the socket before replying.
    #[error("read reply to qmp command {command}: connection closed")]
    Closed { command: String },
    /// A line was not a JSON object QMP could have sent.
    #[error("decode qmp message {line:?}")]
    Decode {
        line: String,
        source: serde_json::Error,
    },
    /// QEMU answered with an `error` reply.
    #[error("qmp command {command} failed: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
    /// A reply of an unexpected shape (wrong id, neither return nor error).
    #[error("read reply to qmp command {command}: unexpected message {message}")]
    UnexpectedReply { command: String, message: String },
}

/// Result of `query-status`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct QmpStatus {
    /// Whether guest CPUs are running.
    pub running: bool,
    /// QEMU's run state: `running`, `paused`, `shutdown`, `prelaunch`, ...
    pub status: String,
}

/// A negotiated QMP session.
#[derive(Debug)]
pub struct QmpClient {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    greeting: Value,
    events: Vec<Value>,
    next_id: u64,
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
        Self::handshake(stream).await
    }

    /// Reads the greeting from an already connected stream and negotiates.
    pub async fn handshake(stream: UnixStream) -> Result<Self, QmpError> {
        let (r, w) = stream.into_split();
        let mut client = Self {
            reader: BufReader::new(r),
            writer: w,
            greeting: Value::Null,
            events: Vec::new(),
            next_id: 0,
        };
        let greeting = client.read_message("greeting").await?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Greeting(greeting.to_string()));
        }
        client.greeting = greeting;
        client.execute("qmp_capabilities", None).await?;
        Ok(client)
    }

    /// The `QMP` object QEMU greeted with (version, capabilities).
    pub fn greeting(&self) -> &Value {
        &self.greeting
    }

    /// Events received while waiting for replies, oldest first; drains them.
    pub fn take_events(&mut self) -> Vec<Value> {
        std::mem::take(&mut self.events)
    }

    /// Runs `command` with optional `arguments` and returns its `return` value.
    pub async fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "execute": command, "id": id });
        if let Some(args) = arguments {
            msg["arguments"] = args;
        }
        let mut line = msg.to_string();
        line.push_str("\r\n");
        let send_err = |source| QmpError::Send {
            command: command.to_string(),
            source,
        };
        self.writer
            .write_all(line.as_bytes())
            .await
            .map_err(send_err)?;
        self.writer.flush().await.map_err(send_err)?;

        loop {
            let reply = self.read_message(command).await?;
            if reply.get("event").is_some() {
                tracing::debug!(vm = "berth", event = %reply["event"], "qmp event");
                self.events.push(reply);
                continue;
            }
            if reply.get("id").is_some_and(|v| v != &json!(id)) {
                return Err(QmpError::UnexpectedReply {
                    command: command.to_string(),
                    message: reply.to_string(),
                });
            }
            if let Some(ret) = reply.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = reply.get("error") {
                let field = |k: &str| {
                    err.get(k)
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string()
                };
                return Err(QmpError::Command {
                    command: command.to_string(),
                    class: field("class"),
                    desc: field("desc"),
                });
            }
            return Err(QmpError::UnexpectedReply {
                command: command.to_string(),
                message: reply.to_string(),
            });
        }
    }

    /// Asks the guest to shut down via ACPI; returns once QEMU accepted the
    /// request, not when the guest is off.
    pub async fn system_powerdown(&mut self) -> Result<(), QmpError> {
        self.execute("system_powerdown", None).await.map(drop)
    }

    /// Ends QEMU immediately (no guest shutdown).
    pub async fn quit(&mut self) -> Result<(), QmpError> {
        self.execute("quit", None).await.map(drop)
    }

    /// `query-status`.
    pub async fn query_status(&mut self) -> Result<QmpStatus, QmpError> {
        let v = self.execute("query-status", None).await?;
        serde_json::from_value(v.clone()).map_err(|source| QmpError::Decode {
            line: v.to_string(),
            source,
        })
    }

    async fn read_message(&mut self, waiting_for: &str) -> Result<Value, QmpError> {
        let mut line = String::new();
        loop {
            line.clear();
            let n = self
                .reader
                .read_line(&mut line)
                .await
                .map_err(|source| QmpError::Receive {
                    command: waiting_for.to_string(),
                    source,
                })?;
            if n == 0 {
                return Err(QmpError::Closed {
                    command: waiting_for.to_string(),
                });
            }
            if !line.trim().is_empty() {
                break;
            }
        }
        let trimmed = line.trim();
        let value: Value = serde_json::from_str(trimmed).map_err(|source| QmpError::Decode {
            line: trimmed.to_string(),
            source,
        })?;
        if !value.is_object() {
            return Err(QmpError::UnexpectedReply {
                command: waiting_for.to_string(),
                message: trimmed.to_string(),
            });
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        assert_eq!(client.greeting()["QMP"]["version"]["qemu"]["major"], 8);
        server.await.unwrap();
    }

    #[tokio::test]
    async fn query_status_skips_interleaved_event() {
        let (mut client, server, _dir) = connect_fake(vec![
            negotiate(),
            Exchange {
                expect: "query-status",
                reply: vec![
                    r#"{"event": "RTC_CHANGE", "data": {"offset": 0}, "timestamp": {"seconds": 1, "microseconds": 2}}"#,
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
        let events = client.take_events();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0]["event"], "RTC_CHANGE");
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
    async fn execute_passes_arguments() {
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
            for _ in 0..2 {
                let mut line = String::new();
                r.read_line(&mut line).await.unwrap();
                let cmd: Value = serde_json::from_str(line.trim()).unwrap();
                let ret = cmd.get("arguments").cloned().unwrap_or(json!({}));
                w.write_all(format!("{}\r\n", json!({"return": ret, "id": cmd["id"]})).as_bytes())
                    .await
                    .unwrap();
            }
        });
        let mut client = QmpClient::connect(&path).await.unwrap();
        let echoed = client
            .execute(
                "human-monitor-command",
                Some(json!({"command-line": "info cpus"})),
            )
            .await
            .unwrap();
        assert_eq!(echoed, json!({"command-line": "info cpus"}));
        server.await.unwrap();
    }

    #[tokio::test]
    async fn closed_socket_before_reply_is_reported() {
        let (mut client, server, _dir) = connect_fake(vec![negotiate()]).await;
        server.await.unwrap(); // the fake hangs up after its script
        let err = client.query_status().await.unwrap_err();
        assert!(
            matches!(err, QmpError::Closed { .. } | QmpError::Send { .. }),
            "{err:?}"
        );
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
        assert!(matches!(err, QmpError::Greeting(_)), "{err:?}");
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

//! The few engine API calls the host side makes itself.
//!
//! Owns a minimal HTTP/1.1 client (hyper's connection API, no pool) for
//! `GET /_ping` (is the engine up, over the forwarded TCP port or the relayed
//! unix socket), `GET /containers/json` (what is published) and the
//! `GET /events` stream (when that changes). It does not decide what to do
//! with the answers (see [`crate::supervisor`]).

use std::path::{Path, PathBuf};

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};

/// An engine API call that failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The engine could not be reached.
    #[error("connect to engine at {target}")]
    Connect {
        target: String,
        source: std::io::Error,
    },
    /// The HTTP exchange failed (closed early, not HTTP).
    #[error("call engine {path}")]
    Http { path: String, source: hyper::Error },
    /// The engine answered with a non-success status.
    #[error("call engine {path}: status {status}")]
    Status { path: String, status: u16 },
    /// The body was not the JSON expected.
    #[error("decode engine response to {path}")]
    Decode {
        path: String,
        source: serde_json::Error,
    },
}

/// Where the engine is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineAddr {
    /// The forwarded TCP port on host loopback.
    Tcp(std::net::SocketAddr),
    /// A unix socket (the relay).
    Unix(PathBuf),
}

impl std::fmt::Display for EngineAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EngineAddr::Tcp(a) => write!(f, "tcp://{a}"),
            EngineAddr::Unix(p) => write!(f, "unix://{}", p.display()),
        }
    }
}

async fn send<S>(stream: S, path: &str) -> Result<hyper::Response<Incoming>, EngineError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let http = |source| EngineError::Http {
        path: path.to_string(),
        source,
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http)?;
    tokio::spawn(async move {
        // Ends when the response body is consumed or dropped.
        let _ = conn.await;
    });
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, "berth")
        .body(Empty::<Bytes>::new())
        .expect("static request parts are valid");
    let resp = sender.send_request(req).await.map_err(http)?;
    let status = resp.status();
    if !status.is_success() {
        return Err(EngineError::Status {
            path: path.to_string(),
            status: status.as_u16(),
        });
    }
    Ok(resp)
}

async fn get(addr: &EngineAddr, path: &str) -> Result<hyper::Response<Incoming>, EngineError> {
    let connect = |source| EngineError::Connect {
        target: addr.to_string(),
        source,
    };
    match addr {
        EngineAddr::Tcp(a) => send(TcpStream::connect(a).await.map_err(connect)?, path).await,
        EngineAddr::Unix(p) => send(UnixStream::connect(p).await.map_err(connect)?, path).await,
    }
}

async fn get_body(addr: &EngineAddr, path: &str) -> Result<Bytes, EngineError> {
    let resp = get(addr, path).await?;
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|source| EngineError::Http {
            path: path.to_string(),
            source,
        })?;
    Ok(body.to_bytes())
}

/// `GET /_ping`: `Ok` once the engine itself answers (QEMU's forward accepts
/// TCP connections before the guest listens, so a connect proves nothing).
pub async fn ping(addr: &EngineAddr) -> Result<(), EngineError> {
    get_body(addr, "/_ping").await.map(drop)
}

/// [`ping`] over a unix socket path.
pub async fn ping_unix(path: &Path) -> Result<(), EngineError> {
    ping(&EngineAddr::Unix(path.to_path_buf())).await
}

/// `GET /containers/json`: running containers with their `Ports`.
pub async fn list_containers(addr: &EngineAddr) -> Result<Vec<Value>, EngineError> {
    let path = "/containers/json";
    let body = get_body(addr, path).await?;
    serde_json::from_slice(&body).map_err(|source| EngineError::Decode {
        path: path.to_string(),
        source,
    })
}

/// An open `GET /events` stream of container events.
pub struct EventStream {
    body: Incoming,
    buf: BytesMut,
}

/// Path of the container-events stream.
pub const CONTAINER_EVENTS_PATH: &str = "/events?filters=%7B%22type%22%3A%5B%22container%22%5D%7D";

impl EventStream {
    /// Opens the container event stream.
    pub async fn open(addr: &EngineAddr) -> Result<Self, EngineError> {
        let resp = get(addr, CONTAINER_EVENTS_PATH).await?;
        Ok(Self {
            body: resp.into_body(),
            buf: BytesMut::new(),
        })
    }

    /// The next event; `None` when the engine closed the stream.
    pub async fn next(&mut self) -> Option<Result<Value, EngineError>> {
        loop {
            if let Some(event) = next_json_line(&mut self.buf) {
                return Some(event.map_err(|source| EngineError::Decode {
                    path: "/events".to_string(),
                    source,
                }));
            }
            match self.body.frame().await? {
                Ok(frame) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Err(source) => {
                    return Some(Err(EngineError::Http {
                        path: "/events".to_string(),
                        source,
                    }))
                }
            }
        }
    }
}

/// Splits one newline-terminated JSON value off `buf`, skipping blank lines.
fn next_json_line(buf: &mut BytesMut) -> Option<Result<Value, serde_json::Error>> {
    loop {
        let nl = buf.iter().position(|b| *b == b'\n')?;
        let line = buf.split_to(nl);
        buf.advance(1);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        return Some(serde_json::from_slice(&line));
    }
}

/// Whether a container event changes what is published (`start`, `die`;
/// `stop`/`kill` are followed by `die`, and `destroy` of a running container
/// by `die` too).
pub fn event_changes_ports(event: &Value) -> bool {
    let action = event
        .get("Action")
        .or_else(|| event.get("status"))
        .and_then(Value::as_str)
        .unwrap_or("");
    matches!(action, "start" | "die" | "restart" | "unpause" | "pause")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    #[test]
    fn json_lines_split_across_chunks() {
        let mut buf = BytesMut::from(&b"{\"Action\":\"start\"}\n\n{\"Act"[..]);
        let first = next_json_line(&mut buf).unwrap().unwrap();
        assert_eq!(first["Action"], "start");
        assert!(next_json_line(&mut buf).is_none());
        buf.extend_from_slice(b"ion\":\"die\"}\n");
        assert_eq!(next_json_line(&mut buf).unwrap().unwrap()["Action"], "die");
        assert!(buf.is_empty());
    }

    #[test]
    fn only_lifecycle_events_trigger_reconcile() {
        assert!(event_changes_ports(
            &serde_json::json!({"Type":"container","Action":"start"})
        ));
        assert!(event_changes_ports(&serde_json::json!({"status":"die"})));
        assert!(!event_changes_ports(
            &serde_json::json!({"Action":"exec_start: sh"})
        ));
        assert!(!event_changes_ports(&serde_json::json!({})));
    }

    /// A FAKE engine (not berthd) serving one chunked events response.
    #[tokio::test]
    async fn event_stream_reads_chunked_events() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let (r, mut w) = s.into_split();
            let mut r = BufReader::new(r);
            let mut line = String::new();
            r.read_line(&mut line).await.unwrap();
            assert!(line.starts_with("GET /events?filters="), "{line}");
            loop {
                line.clear();
                r.read_line(&mut line).await.unwrap();
                if line == "\r\n" {
                    break;
                }
            }
            let ev1 = "{\"Type\":\"container\",\"Action\":\"start\"}\n";
            let ev2 = "{\"Type\":\"container\",\"Action\":\"die\"}\n";
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{ev1}\r\n{:x}\r\n{ev2}\r\n0\r\n\r\n",
                ev1.len(),
                ev2.len()
            );
            w.write_all(resp.as_bytes()).await.unwrap();
        });
        let mut events = EventStream::open(&EngineAddr::Tcp(addr)).await.unwrap();
        assert_eq!(events.next().await.unwrap().unwrap()["Action"], "start");
        assert_eq!(events.next().await.unwrap().unwrap()["Action"], "die");
        assert!(events.next().await.is_none());
    }

    #[tokio::test]
    async fn ping_of_dead_port_is_a_connect_error() {
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let err = ping(&EngineAddr::Tcp(dead)).await.unwrap_err();
        assert!(matches!(err, EngineError::Connect { .. }), "{err:?}");
    }
}

//! A small client of LXD's REST API over the daemon's unix socket (HTTP/1.1, one connection per
//! request), enough for the LXD backend: JSON requests, LXD's response envelope, background
//! operations and waiting for them, file pushes.
//!
//! LXD answers every request with an envelope:
//!
//! ```text
//! {"type":"sync",  "status_code":200, "metadata":{…}}                       done
//! {"type":"async", "status_code":100, "operation":"/1.0/operations/ID",
//!  "metadata":{"id":ID, "status":"Running", "metadata":{…}, "err":""}}     started in the background
//! {"type":"error", "error_code":404, "error":"Instance not found"}           refused
//! ```
//!
//! An operation is waited for with `GET /1.0/operations/ID/wait?timeout=N`, which answers
//! (sync) with the operation once it ended or `N` seconds passed. Every call has a time limit;
//! a body that is no envelope is an error naming the request, never a panic.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::net::UnixStream;

/// The largest response body accepted.
pub const MAX_BODY: usize = 16 << 20;
/// Time limit of one plain request (not of waiting for an operation).
pub const CALL_LIMIT: Duration = Duration::from_secs(30);

/// A failure talking to LXD, or LXD's refusal.
#[derive(Debug, thiserror::Error)]
pub enum LxdError {
    #[error("cannot connect to LXD at {}", socket.display())]
    Connect {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("LXD request {method} {path}: HTTP failed")]
    Http {
        method: String,
        path: String,
        #[source]
        source: hyper::Error,
    },
    #[error("LXD request {method} {path}: bad request: {reason}")]
    Request {
        method: String,
        path: String,
        reason: String,
    },
    #[error("LXD request {method} {path}: no answer within {limit_ms} ms")]
    Timeout {
        method: String,
        path: String,
        limit_ms: u64,
    },
    /// LXD's error envelope (or an HTTP error status with LXD's text).
    #[error("LXD refused {method} {path} ({code}): {error}")]
    Refused {
        method: String,
        path: String,
        code: u16,
        error: String,
    },
    #[error("LXD request {method} {path}: bad answer: {reason}")]
    BadResponse {
        method: String,
        path: String,
        reason: String,
    },
    /// A background operation ended other than in success.
    #[error("LXD operation {id} ended {status}: {err}")]
    OperationFailed {
        id: String,
        status: String,
        err: String,
    },
    #[error("LXD operation {id} still {status} after {limit_ms} ms")]
    OperationTimeout {
        id: String,
        status: String,
        limit_ms: u64,
    },
}

impl LxdError {
    /// LXD's HTTP-like code of a refusal (e.g. 404 for an unknown instance).
    pub fn code(&self) -> Option<u16> {
        match self {
            Self::Refused { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// A background operation (`/1.0/operations/ID`) as LXD describes it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Operation {
    pub id: String,
    #[serde(default)]
    pub class: String,
    /// `Running`, `Success`, `Failure`, `Cancelled`, …
    #[serde(default)]
    pub status: String,
    /// 103 running, 200 success, 400 failure, 401 cancelled.
    #[serde(default)]
    pub status_code: u16,
    /// Operation-specific data, e.g. a migration source's websocket secrets.
    #[serde(default)]
    pub metadata: Value,
    /// Why it failed.
    #[serde(default)]
    pub err: String,
}

impl Operation {
    /// Whether the operation ended (in any way).
    pub fn is_final(&self) -> bool {
        self.status_code >= 200
            || matches!(self.status.as_str(), "Success" | "Failure" | "Cancelled")
    }

    /// Whether it ended in success.
    pub fn succeeded(&self) -> bool {
        self.status_code == 200 || self.status == "Success"
    }
}

/// What LXD answered to a request that did not fail.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// Done: the metadata.
    Sync(Value),
    /// Started in the background.
    Async(Operation),
}

impl Answer {
    /// The background operation, if it is one.
    pub fn operation(self) -> Option<Operation> {
        match self {
            Self::Async(op) => Some(op),
            Self::Sync(_) => None,
        }
    }
}

/// The envelope of every LXD answer.
#[derive(Debug, Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    status_code: u16,
    #[serde(default)]
    error_code: u16,
    #[serde(default)]
    error: String,
    #[serde(default)]
    operation: String,
    #[serde(default)]
    metadata: Value,
}

/// A raw request body with its content type.
#[derive(Debug, Clone)]
enum Body<'a> {
    None,
    Json(&'a Value),
    File {
        bytes: &'a [u8],
        headers: &'a [(&'a str, String)],
    },
}

/// A client of one LXD daemon's unix socket.
#[derive(Debug, Clone)]
pub struct LxdClient {
    socket: PathBuf,
    call_limit: Duration,
}

impl LxdClient {
    /// A client of the daemon listening on `socket` (e.g. `/var/lib/lxd/unix.socket`).
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            call_limit: CALL_LIMIT,
        }
    }

    /// The same client with another time limit for plain requests.
    pub fn with_call_limit(mut self, limit: Duration) -> Self {
        self.call_limit = limit;
        self
    }

    /// The daemon's socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `GET path`: the metadata of a sync answer.
    pub async fn get(&self, path: &str) -> Result<Value, LxdError> {
        match self
            .call(Method::GET, path, Body::None, self.call_limit)
            .await?
        {
            Answer::Sync(v) => Ok(v),
            Answer::Async(op) => Err(bad("GET", path, format!("unexpected operation {}", op.id))),
        }
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Answer, LxdError> {
        self.call(Method::POST, path, Body::Json(body), self.call_limit)
            .await
    }

    /// `PUT path` with a JSON body.
    pub async fn put(&self, path: &str, body: &Value) -> Result<Answer, LxdError> {
        self.call(Method::PUT, path, Body::Json(body), self.call_limit)
            .await
    }

    /// `PATCH path` with a JSON body.
    pub async fn patch(&self, path: &str, body: &Value) -> Result<Answer, LxdError> {
        self.call(Method::PATCH, path, Body::Json(body), self.call_limit)
            .await
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> Result<Answer, LxdError> {
        self.call(Method::DELETE, path, Body::None, self.call_limit)
            .await
    }

    /// Writes file `path` (absolute) into instance `name` as root with `mode` (e.g. `0755`).
    pub async fn push_file(
        &self,
        name: &str,
        path: &str,
        contents: &[u8],
        mode: u32,
    ) -> Result<(), LxdError> {
        let url = format!("/1.0/instances/{name}/files?path={}", query_escape(path));
        let headers = [
            ("X-LXD-uid", "0".to_owned()),
            ("X-LXD-gid", "0".to_owned()),
            ("X-LXD-mode", format!("{mode:04o}")),
            ("X-LXD-type", "file".to_owned()),
            ("X-LXD-write", "overwrite".to_owned()),
        ];
        let body = Body::File {
            bytes: contents,
            headers: &headers,
        };
        self.call(Method::POST, &url, body, self.call_limit)
            .await
            .map(drop)
    }

    /// Waits (at most `limit`, whole seconds on LXD's side) for operation `id` (an id or its
    /// `/1.0/operations/ID` path) to end; the operation if it succeeded.
    pub async fn wait(&self, id: &str, limit: Duration) -> Result<Operation, LxdError> {
        let id = id.rsplit('/').next().unwrap_or(id).to_owned();
        let secs = limit.as_secs().max(1);
        let path = format!("/1.0/operations/{id}/wait?timeout={secs}");
        let limit_ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
        let answer = self
            .call(
                Method::GET,
                &path,
                Body::None,
                limit + Duration::from_secs(5),
            )
            .await?;
        let value = match answer {
            Answer::Sync(v) => v,
            Answer::Async(op) => {
                return Err(bad("GET", &path, format!("unexpected operation {}", op.id)))
            }
        };
        let op: Operation = serde_json::from_value(value)
            .map_err(|e| bad("GET", &path, format!("no operation: {e}")))?;
        if !op.is_final() {
            return Err(LxdError::OperationTimeout {
                id,
                status: op.status,
                limit_ms,
            });
        }
        if op.succeeded() {
            Ok(op)
        } else {
            Err(LxdError::OperationFailed {
                id,
                status: op.status,
                err: op.err,
            })
        }
    }

    /// Any call by method name (`GET`, `POST`, `PUT`, `PATCH`, `DELETE`) with an optional JSON body.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Answer, LxdError> {
        let m = Method::from_bytes(method.as_bytes()).map_err(|e| LxdError::Request {
            method: method.to_owned(),
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        let body = body.map_or(Body::None, Body::Json);
        self.call(m, path, body, self.call_limit).await
    }

    /// Runs `answer`'s operation to its end (at most `limit`); a sync answer is already done.
    pub async fn finish(&self, answer: Answer, limit: Duration) -> Result<Value, LxdError> {
        match answer {
            Answer::Sync(v) => Ok(v),
            Answer::Async(op) => self.wait(&op.id, limit).await.map(|op| op.metadata),
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Body<'_>,
        limit: Duration,
    ) -> Result<Answer, LxdError> {
        let m = method.to_string();
        let limit_ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
        tokio::time::timeout(limit, self.call_once(method, path, body))
            .await
            .map_err(|_| LxdError::Timeout {
                method: m,
                path: path.to_owned(),
                limit_ms,
            })?
    }

    async fn call_once(
        &self,
        method: Method,
        path: &str,
        body: Body<'_>,
    ) -> Result<Answer, LxdError> {
        let m = method.to_string();
        let http = |source| LxdError::Http {
            method: m.clone(),
            path: path.to_owned(),
            source,
        };
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| LxdError::Connect {
                    socket: self.socket.clone(),
                    source,
                })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http)?;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        let builder = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "lxd")
            .header("user-agent", "testbed-svcmod");
        let request = match body {
            Body::None => builder.body(Full::new(Bytes::new())),
            Body::Json(v) => builder
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(v.to_string()))),
            Body::File { bytes, headers } => headers
                .iter()
                .fold(builder, |b, (k, v)| b.header(*k, v.as_str()))
                .header("content-type", "application/octet-stream")
                .body(Full::new(Bytes::copy_from_slice(bytes))),
        }
        .map_err(|e| LxdError::Request {
            method: m.clone(),
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        let result = async {
            let response = sender.send_request(request).await.map_err(http)?;
            let status = response.status();
            let bytes = Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| bad(&m, path, format!("cannot read the body: {e}")))?
                .to_bytes();
            parse_envelope(&m, path, status, &bytes)
        }
        .await;
        driver.abort();
        result
    }
}

/// Runs `future` to its end from synchronous code (the testbed's bring-up, tests): on a
/// current-thread runtime of its own, in a thread of its own (so also from inside another
/// runtime).
pub fn block_on<F>(future: F) -> std::io::Result<F::Output>
where
    F: std::future::Future + Send,
    F::Output: Send,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|rt| rt.block_on(future))
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the LXD call panicked")))
    })
}

fn bad(method: &str, path: &str, reason: String) -> LxdError {
    LxdError::BadResponse {
        method: method.to_owned(),
        path: path.to_owned(),
        reason,
    }
}

/// At most the first 200 characters of a body, for errors.
fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut s: String = text.chars().take(200).collect();
    if text.chars().count() > 200 {
        s.push('…');
    }
    s
}

/// One answer's envelope → an [`Answer`] or the error it carries.
fn parse_envelope(
    method: &str,
    path: &str,
    status: StatusCode,
    bytes: &[u8],
) -> Result<Answer, LxdError> {
    let envelope: Envelope = match serde_json::from_slice(bytes) {
        Ok(e) => e,
        Err(e) if status.is_success() => {
            return Err(bad(
                method,
                path,
                format!("HTTP {status}, no LXD envelope ({e}): {:?}", excerpt(bytes)),
            ))
        }
        Err(_) => {
            return Err(LxdError::Refused {
                method: method.to_owned(),
                path: path.to_owned(),
                code: status.as_u16(),
                error: excerpt(bytes),
            })
        }
    };
    match envelope.kind.as_str() {
        "error" => Err(LxdError::Refused {
            method: method.to_owned(),
            path: path.to_owned(),
            code: if envelope.error_code != 0 {
                envelope.error_code
            } else {
                status.as_u16()
            },
            error: envelope.error,
        }),
        _ if !status.is_success() => Err(LxdError::Refused {
            method: method.to_owned(),
            path: path.to_owned(),
            code: status.as_u16(),
            error: envelope.error,
        }),
        "sync" => Ok(Answer::Sync(envelope.metadata)),
        "async" => {
            let mut op: Operation = serde_json::from_value(envelope.metadata)
                .map_err(|e| bad(method, path, format!("async answer without operation: {e}")))?;
            if op.id.is_empty() {
                op.id = envelope
                    .operation
                    .rsplit('/')
                    .next()
                    .unwrap_or_default()
                    .to_owned();
            }
            if op.id.is_empty() {
                return Err(bad(
                    method,
                    path,
                    "async answer without operation id".into(),
                ));
            }
            let _ = envelope.status_code;
            Ok(Answer::Async(op))
        }
        other => Err(bad(method, path, format!("unknown answer type {other:?}"))),
    }
}

/// `s` escaped for a URL query value.
pub fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixListener;

    /// One request as the fake saw it: request line, headers and body.
    #[derive(Debug, Clone)]
    struct Seen {
        line: String,
        head: String,
        body: Vec<u8>,
    }

    /// A fake LXD: answers each request by its request line (`METHOD PATH`) with a canned HTTP
    /// status and body; records what it got.
    struct FakeLxd {
        dir: PathBuf,
        seen: Arc<Mutex<Vec<Seen>>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for FakeLxd {
        fn drop(&mut self) {
            self.task.abort();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    impl FakeLxd {
        fn start(answers: Vec<(&'static str, u16, String)>) -> (FakeLxd, LxdClient) {
            static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "svcmod-fake-lxd-{}-{}",
                std::process::id(),
                N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("dir");
            let socket = dir.join("unix.socket");
            let listener = UnixListener::bind(&socket).expect("bind");
            let seen = Arc::new(Mutex::new(Vec::new()));
            let log = Arc::clone(&seen);
            let task = tokio::spawn(async move {
                while let Ok((mut s, _)) = listener.accept().await {
                    let req = read_request(&mut s).await;
                    let (status, body) = answers
                        .iter()
                        .find(|(line, _, _)| req.line.starts_with(line))
                        .map(|(_, st, b)| (*st, b.clone()))
                        .unwrap_or((
                            404,
                            r#"{"type":"error","error":"not found","error_code":404}"#.into(),
                        ));
                    log.lock().expect("log").push(req);
                    let text = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(text.as_bytes()).await;
                    let _ = s.shutdown().await;
                }
            });
            (
                FakeLxd { dir, seen, task },
                LxdClient::new(socket).with_call_limit(Duration::from_secs(5)),
            )
        }

        fn seen(&self) -> Vec<Seen> {
            self.seen.lock().expect("seen").clone()
        }
    }

    async fn read_request(s: &mut tokio::net::UnixStream) -> Seen {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_string();
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                while buf.len() < end + 4 + len {
                    let n = s.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let body = buf[end + 4..].to_vec();
                let line = head.lines().next().unwrap_or_default().to_owned();
                return Seen { line, head, body };
            }
            let n = s.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                return Seen {
                    line: String::new(),
                    head: String::new(),
                    body: buf,
                };
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    #[tokio::test]
    async fn a_sync_answer_gives_its_metadata() {
        let (fake, lxd) = FakeLxd::start(vec![(
            "GET /1.0/instances/c1/state",
            200,
            json!({"type":"sync","status":"Success","status_code":200,"operation":"",
                   "error_code":0,"error":"","metadata":{"status":"Running","pid":4242}})
            .to_string(),
        )]);
        let state = lxd.get("/1.0/instances/c1/state").await.expect("state");
        assert_eq!(state["pid"], 4242);
        let seen = fake.seen();
        assert_eq!(seen[0].line, "GET /1.0/instances/c1/state HTTP/1.1");
        assert!(seen[0].head.to_lowercase().contains("host: lxd"));
    }

    #[tokio::test]
    async fn an_async_operation_is_waited_for() {
        let (fake, lxd) = FakeLxd::start(vec![
            (
                "POST /1.0/instances/c1 ",
                202,
                json!({"type":"async","status":"Operation created","status_code":100,
                       "operation":"/1.0/operations/op-1","error_code":0,"error":"",
                       "metadata":{"id":"op-1","class":"websocket","status":"Running",
                                   "status_code":103,"metadata":{"control":"s1","fs":"s2","criu":"s3"},
                                   "err":""}})
                .to_string(),
            ),
            (
                "GET /1.0/operations/op-1/wait?timeout=7 ",
                200,
                json!({"type":"sync","status":"Success","status_code":200,
                       "metadata":{"id":"op-1","status":"Success","status_code":200,
                                   "metadata":{"done":true},"err":""}})
                .to_string(),
            ),
            (
                "GET /1.0/operations/op-2/wait",
                200,
                json!({"type":"sync","status_code":200,
                       "metadata":{"id":"op-2","status":"Failure","status_code":400,
                                   "err":"Failed restoring: criu failed"}})
                .to_string(),
            ),
            (
                "GET /1.0/operations/op-3/wait",
                200,
                json!({"type":"sync","status_code":200,
                       "metadata":{"id":"op-3","status":"Running","status_code":103}})
                .to_string(),
            ),
        ]);
        let body = json!({"migration": true, "live": true});
        let op = lxd
            .post("/1.0/instances/c1", &body)
            .await
            .expect("post")
            .operation()
            .expect("async");
        assert_eq!(op.id, "op-1");
        assert_eq!(op.metadata["criu"], "s3");
        assert!(!op.is_final());
        let sent: Value = serde_json::from_slice(&fake.seen()[0].body).expect("json body");
        assert_eq!(sent, body);
        let done = lxd
            .wait("/1.0/operations/op-1", Duration::from_secs(7))
            .await
            .expect("wait");
        assert!(done.succeeded());
        assert_eq!(done.metadata["done"], true);
        let e = lxd
            .wait("op-2", Duration::from_secs(1))
            .await
            .expect_err("failed");
        assert!(
            matches!(&e, LxdError::OperationFailed { err, .. } if err.contains("criu failed")),
            "{e:?}"
        );
        let e = lxd
            .wait("op-3", Duration::from_secs(1))
            .await
            .expect_err("running");
        assert!(matches!(e, LxdError::OperationTimeout { .. }), "{e:?}");
    }

    #[tokio::test]
    async fn an_error_envelope_carries_lxds_text() {
        let (_fake, lxd) = FakeLxd::start(vec![(
            "DELETE /1.0/instances/c1",
            400,
            json!({"type":"error","error":"Instance is busy running a stop operation",
                   "error_code":400,"metadata":null})
            .to_string(),
        )]);
        let e = lxd.delete("/1.0/instances/c1").await.expect_err("refused");
        assert_eq!(e.code(), Some(400));
        assert!(
            e.to_string().contains("busy running a stop operation"),
            "{e}"
        );
        let e = lxd.get("/1.0/instances/none").await.expect_err("404");
        assert_eq!(e.code(), Some(404));
    }

    #[tokio::test]
    async fn garbage_is_a_clear_error() {
        let (_fake, lxd) = FakeLxd::start(vec![
            ("GET /1.0/a", 200, "<html>not LXD</html>".into()),
            (
                "GET /1.0/b",
                200,
                r#"{"type":"async","metadata":{}}"#.into(),
            ),
            ("GET /1.0/c", 200, r#"{"type":"weird"}"#.into()),
            ("GET /1.0/d", 500, "\u{0}\u{1}binary".into()),
        ]);
        let e = lxd.get("/1.0/a").await.expect_err("html");
        assert!(
            matches!(e, LxdError::BadResponse { .. }) && e.to_string().contains("not LXD"),
            "{e}"
        );
        let e = lxd.get("/1.0/b").await.expect_err("no op");
        assert!(matches!(e, LxdError::BadResponse { .. }), "{e}");
        let e = lxd.get("/1.0/c").await.expect_err("weird");
        assert!(e.to_string().contains("weird"), "{e}");
        let e = lxd.get("/1.0/d").await.expect_err("500");
        assert_eq!(e.code(), Some(500));
        let nowhere = LxdClient::new("/nonexistent/lxd.socket");
        let e = nowhere.get("/1.0").await.expect_err("no socket");
        assert!(matches!(e, LxdError::Connect { .. }), "{e}");
    }

    #[tokio::test]
    async fn a_silent_daemon_times_out() {
        let dir = std::env::temp_dir().join(format!("svcmod-silent-lxd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let socket = dir.join("s");
        let listener = UnixListener::bind(&socket).expect("bind");
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let lxd = LxdClient::new(&socket).with_call_limit(Duration::from_millis(200));
        let e = lxd.get("/1.0").await.expect_err("silent");
        assert!(matches!(e, LxdError::Timeout { .. }), "{e}");
        hold.abort();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn files_are_pushed_with_lxds_headers() {
        let (fake, lxd) = FakeLxd::start(vec![(
            "POST /1.0/instances/c1/files?path=/svc-init",
            200,
            json!({"type":"sync","status_code":200,"metadata":{}}).to_string(),
        )]);
        lxd.push_file("c1", "/svc-init", b"#!/bin/sh\n", 0o755)
            .await
            .expect("push");
        let seen = &fake.seen()[0];
        assert_eq!(seen.body, b"#!/bin/sh\n");
        let head = seen.head.to_lowercase();
        assert!(head.contains("x-lxd-mode: 0755"), "{head}");
        assert!(head.contains("x-lxd-uid: 0"), "{head}");
        assert_eq!(query_escape("/a b&c"), "/a%20b%26c");
    }
}

//! Bad input against any SBI server through a real HTTP/2 client: `curl --http2-prior-knowledge`
//! (Debian's curl, installed by `scripts/setup`), one process per try, so every try is a new
//! connection as an NF's first call would be. The servers' tests use it to show that a refusal
//! (401, 413, …) always arrives as a status with its ProblemDetails, never as a reset stream.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

static NEXT_ANSWER: AtomicU64 = AtomicU64::new(0);

/// What one try got: the status and the body, or what curl said instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A complete answer.
    Status {
        status: u16,
        content_type: String,
        body: Vec<u8>,
    },
    /// No complete answer (e.g. `curl: (92) HTTP/2 stream 1 was not closed cleanly`).
    Failed(String),
}

impl Answer {
    /// True for a complete answer with `status` and an `application/problem+json` body whose
    /// `status` is the same.
    pub fn is_problem(&self, status: u16) -> bool {
        match self {
            Answer::Status {
                status: s,
                content_type,
                body,
            } => {
                *s == status
                    && content_type.starts_with(model::problem::PROBLEM_JSON)
                    && serde_json::from_slice::<model::problem::ProblemDetails>(body)
                        .is_ok_and(|p| p.status == Some(status))
            }
            Answer::Failed(_) => false,
        }
    }
}

/// One request: `method url` with an optional bearer `token` and a body of `body_len` octets
/// (JSON-looking: `{"x":"aaa…"}`, or exactly `body_len` octets of it), written to a file in
/// `scratch` once per length.
#[derive(Debug, Clone)]
pub struct Try<'a> {
    pub method: &'a str,
    pub url: &'a str,
    pub token: Option<&'a str>,
    pub body_len: usize,
}

/// Runs `tries` separate curl processes of `t`, each with a 10 s limit.
pub fn repeat(t: &Try<'_>, tries: usize, scratch: &Path) -> std::io::Result<Vec<Answer>> {
    let body = body_file(scratch, t.body_len)?;
    let n = NEXT_ANSWER.fetch_add(1, Ordering::Relaxed);
    let out = scratch.join(format!("answer-{}-{n}", std::process::id()));
    let answers = (0..tries).map(|_| once(t, &body, &out)).collect();
    let _ = std::fs::remove_file(&out);
    answers
}

fn body_file(scratch: &Path, len: usize) -> std::io::Result<PathBuf> {
    let path = scratch.join(format!("body-{len}.json"));
    if !path.exists() {
        let mut body = Vec::with_capacity(len);
        body.extend_from_slice(b"{\"x\":\"");
        body.resize(len.saturating_sub(2).max(body.len()), b'a');
        body.extend_from_slice(b"\"}");
        body.truncate(len);
        std::fs::write(&path, body)?;
    }
    Ok(path)
}

fn once(t: &Try<'_>, body: &Path, out: &Path) -> std::io::Result<Answer> {
    let _ = std::fs::remove_file(out);
    let mut c = Command::new("curl");
    c.args(["--http2-prior-knowledge", "--silent", "--show-error"])
        .args(["--max-time", "10", "--noproxy", "*", "-X", t.method])
        .args(["-H", "content-type: application/json"])
        .arg("--data-binary")
        .arg(format!("@{}", body.display()))
        .arg("-o")
        .arg(out)
        .args(["-w", "%{http_code} %{content_type}"]);
    if let Some(token) = t.token {
        c.args(["-H", &format!("authorization: Bearer {token}")]);
    }
    let done = c.arg(t.url).output()?;
    let written = String::from_utf8_lossy(&done.stdout).into_owned();
    if !done.status.success() {
        return Ok(Answer::Failed(format!(
            "{} (after `{written}`)",
            String::from_utf8_lossy(&done.stderr).trim()
        )));
    }
    let (status, content_type) = written.split_once(' ').unwrap_or((&written, ""));
    Ok(Answer::Status {
        status: status.parse().unwrap_or(0),
        content_type: content_type.to_owned(),
        body: std::fs::read(out).unwrap_or_default(),
    })
}

/// A one-line summary of a series: how many were the expected ProblemDetails, and the others.
pub fn summary(answers: &[Answer], status: u16) -> String {
    let good = answers.iter().filter(|a| a.is_problem(status)).count();
    let mut other: Vec<String> = answers
        .iter()
        .filter(|a| !a.is_problem(status))
        .map(|a| match a {
            Answer::Status { status, .. } => format!("status {status}"),
            Answer::Failed(e) => e.clone(),
        })
        .collect();
    other.sort();
    other.dedup();
    format!(
        "{good}/{} answered {status} ProblemDetails; other: {other:?}",
        answers.len()
    )
}

/// What every SBI endpoint owes bad input: for each `(method, url)`, `tries` requests without
/// the token and with a 256 KiB body (401) and as many with `token` and a body one octet over
/// [`crate::server::MAX_BODY`] (413), each answered with its ProblemDetails. Blocks (runs curl).
/// Returns one line per series (printed as it ends) and the lines of the series that were not
/// all answered so.
pub fn refusals(
    endpoints: &[(&str, String)],
    token: &str,
    tries: usize,
) -> std::io::Result<(Vec<String>, Vec<String>)> {
    let scratch = std::env::temp_dir().join(format!(
        "sbi-refusals-{}-{}",
        std::process::id(),
        NEXT_ANSWER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&scratch)?;
    let (mut lines, mut failed) = (Vec::new(), Vec::new());
    for (method, url) in endpoints {
        for (token, body_len, status) in [
            (None, 256 << 10, 401),
            (Some(token), crate::server::MAX_BODY + 1, 413),
        ] {
            let t = Try {
                method,
                url,
                token,
                body_len,
            };
            let answers = repeat(&t, tries, &scratch);
            let answers = match answers {
                Ok(a) => a,
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&scratch);
                    return Err(e);
                }
            };
            let line = format!("{method} {url}: {}", summary(&answers, status));
            println!("{line}");
            if answers.iter().any(|a| !a.is_problem(status)) {
                failed.push(line.clone());
            }
            lines.push(line);
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    Ok((lines, failed))
}

/// A TCP port free on 127.0.0.1 right now, for a server under test that binds its own address.
pub fn free_loopback_port() -> std::io::Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
}

/// Waits until something accepts connections on `addr`, at most `within`; false if nothing did.
pub async fn wait_listening(addr: std::net::SocketAddr, within: std::time::Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    true
}

//! Talking to the running network functions from the root namespace: the UEs' control sockets and
//! the gNBs' control API (reached from a thread that enters the gNB's namespace).

use model::ran::xn::{HandoverReport, HandoverTrigger, CONTROL_BASE, PORT};
use serde::de::DeserializeOwned;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::plan::{Plan, Role};

/// A failed call to a running network function.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("cannot reach {what}: {detail}")]
    Unreachable { what: String, detail: String },
    #[error("{what} answered {status}: {body}")]
    Status {
        what: String,
        status: u16,
        body: String,
    },
    #[error("{0}")]
    Usage(String),
}

/// `GET path` over a UE's control socket (HTTP/1.1), parsed as JSON.
pub fn ue_get<T: DeserializeOwned>(socket: &Path, path: &str) -> Result<T, CallError> {
    let (what, body) = ue_call(socket, "GET", path, 200)?;
    serde_json::from_str(&body).map_err(|e| CallError::Unreachable {
        what,
        detail: format!("bad answer: {e}"),
    })
}

/// `POST path` without a body over a UE's control socket, e.g. `/ue/v1/gaps/reset` (204).
pub fn ue_post(socket: &Path, path: &str) -> Result<(), CallError> {
    ue_call(socket, "POST", path, 204).map(|_| ())
}

/// One HTTP/1.1 request over a UE's control socket; the peer's name for errors and the body.
fn ue_call(
    socket: &Path,
    method: &str,
    path: &str,
    want: u16,
) -> Result<(String, String), CallError> {
    let what = format!("UE control socket {}", socket.display());
    let unreachable = |e: std::io::Error| CallError::Unreachable {
        what: what.clone(),
        detail: e.to_string(),
    };
    let mut s = UnixStream::connect(socket).map_err(unreachable)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(unreachable)?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: ue\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .map_err(unreachable)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(unreachable)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if status != want {
        return Err(CallError::Status {
            what,
            status,
            body: body.to_owned(),
        });
    }
    Ok((what, body.to_owned()))
}

/// Hands UE `ue` over to the gNB of site `to_site` (e.g. `site-b` or `b`), through the UE's current
/// gNB, and returns the report (timeline) once the path switch is complete.
pub fn handover(
    plan: &Plan,
    token: &str,
    ue: &str,
    to_site: &str,
) -> Result<HandoverReport, CallError> {
    let site = to_site.strip_prefix("site-").unwrap_or(to_site);
    let target = format!("gnb-{site}");
    if plan.node(&target).is_none() {
        let sites: Vec<_> = plan
            .nodes
            .iter()
            .filter(|n| n.role == Role::Site)
            .map(|n| n.name.as_str())
            .collect();
        return Err(CallError::Usage(format!(
            "no site `{to_site}` (sites: {})",
            sites.join(", ")
        )));
    }
    if plan.node(ue).is_none_or(|n| n.role != Role::Ue) {
        return Err(CallError::Usage(format!("no UE `{ue}`")));
    }
    let status: serde_json::Value = ue_get(&crate::nf::ue_socket(plan, ue), "/ue/v1/status")?;
    let radio = status["gnbRadio"].as_str().unwrap_or_default().to_owned();
    let source = plan
        .nodes
        .iter()
        .filter(|n| n.role == Role::Gnb)
        .find(|g| {
            g.addr("air")
                .is_some_and(|a| radio.starts_with(&format!("{a}:")))
        })
        .ok_or_else(|| CallError::Usage(format!("{ue} is attached to no known gNB ({radio})")))?;
    if source.name == target {
        return Err(CallError::Usage(format!(
            "{ue} is already served by {target}"
        )));
    }
    let trigger = HandoverTrigger {
        ue: ue.to_owned(),
        target_gnb: target.clone(),
    };
    let url = format!("http://127.0.0.1:{PORT}{CONTROL_BASE}/handovers");
    sbi_call_in(
        &source.netns,
        token,
        Duration::from_secs(30),
        format!("{} control API", source.name),
        move |client| async move { client.post::<_, HandoverReport>(&url, &trigger).await },
    )
}

/// One SBI call (h2c, the deployment's `token`, time limit `timeout`) made from a thread inside
/// namespace `netns`, so that the namespace's addresses and routes apply; `what` names the peer
/// in errors.
pub fn sbi_call_in<T, F, Fut>(
    netns: &str,
    token: &str,
    timeout: Duration,
    what: String,
    call: F,
) -> Result<T, CallError>
where
    T: Send + 'static,
    F: FnOnce(sbi::Client) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, sbi::ClientError>>,
{
    let token = token.to_owned();
    let result = netkit::Netns::new(netns)
        .run_in(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(call(sbi::Client::new(Some(token), timeout)))
                .map_err(|e| e.to_string())
        })
        .map_err(|e| CallError::Unreachable {
            what: what.clone(),
            detail: e.to_string(),
        })?;
    result.map_err(|detail| CallError::Unreachable { what, detail })
}

//! The gNB stand-in: radio (UDP frames from UEs, [`crate::radio`]), N3 GTP-U towards the UPFs,
//! Xn-U forwarding and the Xn handover with path switch (ARCHITECTURE.md, "Xn handover with UPF
//! relocation"), and the testbed's control API.
//!
//! [`context`] holds every UE context as a pure state machine; this module is its driver: one task
//! owns the core and the two UDP sockets, HTTP handlers only parse and forward requests to it
//! ([`api`]), and SBI calls run as tasks whose answers come back as events.

pub mod api;
pub mod context;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use model::ran::n2::{self, PathSwitchAck, PduSessionSetupResponse};
use model::ran::xn::{self, HandoverReport, HandoverRequestAck};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, oneshot};

use self::context::{Action, CallFailure, CoreConfig, Event, Failure, GnbCore, RequestId};
use crate::radio::{self, Frame};

/// The gNB's configuration (`gnb --config gnb-a.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GnbConfig {
    /// The gNB's name, e.g. `gnb-a` (sent to the SMF, which picks the site's UPF by it).
    pub name: String,
    /// The site the gNB belongs to, e.g. `a`.
    pub site: String,
    /// Radio UDP address on the air segment, e.g. `10.10.0.1:4997`.
    pub radio_addr: SocketAddrV4,
    /// The N3 address put in the downlink tunnels this gNB hands to the SMF, e.g. `10.30.0.1`.
    pub n3_addr: Ipv4Addr,
    /// The Xn address put in the forwarding tunnels this gNB hands to peers, e.g. `10.40.0.1`.
    pub xn_addr: Ipv4Addr,
    /// Where GTP-U (N3 and Xn-U) is received, e.g. `0.0.0.0:2152`.
    pub gtpu_bind: SocketAddrV4,
    /// The HTTP server: Xn API for peers and control API for the testbed, e.g. `0.0.0.0:38422`.
    pub http_addr: SocketAddrV4,
    /// The SMF's base URL, e.g. `http://10.100.0.10:8000`.
    pub smf_url: String,
    /// The deployment's bearer token (required on the HTTP API and sent on every SBI call).
    pub token: Option<String>,
    /// The default QFI (used when the SMF's answer carries none that is valid), e.g. 9.
    pub qfi: u8,
    /// The other gNBs, reachable over Xn.
    pub peers: Vec<GnbPeer>,
}

/// Another gNB this one can hand UEs over to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GnbPeer {
    /// The peer's name, e.g. `gnb-b`.
    pub name: String,
    /// The peer's Xn base URL, e.g. `http://10.40.0.2:38422`.
    pub xn_url: String,
}

/// Why the gNB could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum GnbError {
    #[error("qfi {0} out of range (must be below 64)")]
    Qfi(u8),
    #[error("cannot bind the radio socket on {addr}")]
    BindRadio {
        addr: SocketAddrV4,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot bind gtp-u on {addr}")]
    BindGtpu {
        addr: SocketAddrV4,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot bind the http api on {addr}")]
    BindHttp {
        addr: SocketAddrV4,
        #[source]
        source: std::io::Error,
    },
    #[error("radio socket {0} is not ipv4")]
    NotIpv4(SocketAddr),
}

/// A request from an HTTP handler to the task that owns the core.
#[derive(Debug)]
pub enum Request {
    Trigger(
        xn::HandoverTrigger,
        oneshot::Sender<Result<HandoverReport, Failure>>,
    ),
    HandoverRequest(
        xn::HandoverRequest,
        oneshot::Sender<Result<HandoverRequestAck, Failure>>,
    ),
    Release(xn::UeContextRelease, oneshot::Sender<Result<(), Failure>>),
    Status(oneshot::Sender<GnbStatus>),
}

/// `GET /gnb-control/v1/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GnbStatus {
    pub name: String,
    pub radio: SocketAddrV4,
    pub counters: serde_json::Value,
    pub ues: Vec<UeSummary>,
}

/// One UE context in [`GnbStatus`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UeSummary {
    pub supi: String,
    pub ue_name: Option<String>,
    pub phase: String,
    pub radio_id: u16,
    pub ue_ipv4: Option<Ipv4Addr>,
    pub dl_teid: u32,
    pub upf_tunnel: Option<model::ran::TunnelEndpoint>,
    pub packets_up: u64,
    pub packets_down: u64,
}

enum Input {
    Request(Request),
    Event(Event),
}

/// Runs the gNB until `shutdown`; tunnels go to GTP-U port 2152.
pub async fn run(
    config: GnbConfig,
    ready: sbi::nf::Ready,
    shutdown: sbi::nf::Shutdown,
) -> Result<(), GnbError> {
    run_with_gtpu_port(config, wire::gtpu::PORT, ready, shutdown).await
}

/// [`run`], sending every G-PDU to `gtpu_peer_port` instead of 2152 (tests on loopback, where
/// several gNBs and UPFs bind different 127.0.0.x addresses with one free port).
pub async fn run_with_gtpu_port(
    config: GnbConfig,
    gtpu_peer_port: u16,
    ready: sbi::nf::Ready,
    shutdown: sbi::nf::Shutdown,
) -> Result<(), GnbError> {
    if wire::gtpu::Qfi::new(config.qfi).is_err() {
        return Err(GnbError::Qfi(config.qfi));
    }
    let radio_sock =
        UdpSocket::bind(config.radio_addr)
            .await
            .map_err(|source| GnbError::BindRadio {
                addr: config.radio_addr,
                source,
            })?;
    let radio_local = match radio_sock.local_addr() {
        Ok(SocketAddr::V4(a)) => a,
        Ok(other) => return Err(GnbError::NotIpv4(other)),
        Err(source) => {
            return Err(GnbError::BindRadio {
                addr: config.radio_addr,
                source,
            })
        }
    };
    let gtpu_sock =
        UdpSocket::bind(config.gtpu_bind)
            .await
            .map_err(|source| GnbError::BindGtpu {
                addr: config.gtpu_bind,
                source,
            })?;
    let listener = TcpListener::bind(config.http_addr)
        .await
        .map_err(|source| GnbError::BindHttp {
            addr: config.http_addr,
            source,
        })?;

    let (tx, mut rx) = mpsc::channel::<Input>(1024);
    let (req_tx, mut req_rx) = mpsc::channel::<Request>(64);
    // Requests from handlers join the event stream.
    {
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(r) = req_rx.recv().await {
                if tx.send(Input::Request(r)).await.is_err() {
                    break;
                }
            }
        });
    }
    let http = {
        let router = api::router(req_tx);
        let stop = shutdown.clone();
        let token = config.token.clone();
        tokio::spawn(async move {
            if let Err(e) = sbi::serve(listener, router, token, stop.wait()).await {
                tracing::error!(error = %e, "gnb http api failed");
            }
        })
    };

    let mut core = GnbCore::new(CoreConfig {
        name: config.name.clone(),
        radio: radio_local,
        n3_addr: config.n3_addr,
        xn_addr: config.xn_addr,
        qfi: config.qfi,
        peers: config
            .peers
            .iter()
            .map(|p| (p.name.clone(), p.xn_url.trim_end_matches('/').to_owned()))
            .collect(),
    });
    core.set_wall_anchor(tokio::time::Instant::now(), model::ran::unix_now_us());
    let mut driver = Driver {
        radio: radio_sock,
        gtpu: gtpu_sock,
        gtpu_peer_port,
        client: sbi::Client::new(config.token.clone(), Duration::from_secs(5)),
        smf_url: config.smf_url.trim_end_matches('/').to_owned(),
        tx,
        next_id: 1,
        triggers: HashMap::new(),
        xn_requests: HashMap::new(),
        releases: HashMap::new(),
    };
    tracing::info!(gnb = config.name, radio = %radio_local, gtpu = %config.gtpu_bind, http = %config.http_addr, "gnb up");
    ready.ready();

    let stop = shutdown.wait();
    tokio::pin!(stop);
    let mut radio_buf = vec![0u8; 65536];
    let mut gtpu_buf = vec![0u8; 65536];
    // Junk on the radio or N3 socket is counted; its log lines are bounded.
    let mut noise = sbi::ratelog::LogLimiter::new();
    loop {
        let event = tokio::select! {
            _ = &mut stop => break,
            r = driver.radio.recv_from(&mut radio_buf) => match r {
                Ok((n, from)) => match radio::parse(&radio_buf[..n]) {
                    Ok(Frame::Data { radio_id, packet }) => Event::Uplink { from, radio_id, packet: packet.to_vec() },
                    Ok(Frame::Control(rrc)) => Event::Rrc { from, rrc },
                    Err(e) => {
                        core.counters.malformed += 1;
                        if let Some(suppressed) = noise.allow() {
                            tracing::warn!(%from, error = %e, malformed = core.counters.malformed, suppressed, "malformed radio frame");
                        }
                        continue;
                    }
                },
                Err(e) => {
                    tracing::debug!(error = %e, "radio receive failed");
                    continue;
                }
            },
            r = driver.gtpu.recv_from(&mut gtpu_buf) => match r {
                Ok((n, from)) => match wire::gtpu::decapsulate(&gtpu_buf[..n]) {
                    Ok((repr, payload)) => Event::Gtpu { from, repr, payload: payload.to_vec() },
                    Err(e) => {
                        core.counters.malformed += 1;
                        if let Some(suppressed) = noise.allow() {
                            tracing::warn!(%from, error = %e, malformed = core.counters.malformed, suppressed, "malformed gtp-u message");
                        }
                        continue;
                    }
                },
                Err(e) => {
                    tracing::debug!(error = %e, "gtp-u receive failed");
                    continue;
                }
            },
            Some(input) = rx.recv() => match input {
                Input::Event(e) => e,
                Input::Request(r) => match driver.request(&core, r) {
                    Some(e) => e,
                    None => continue,
                },
            },
        };
        let actions = core.handle(tokio::time::Instant::now(), event);
        for a in actions {
            driver.perform(a).await;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), http).await;
    tracing::info!(gnb = config.name, "gnb stopped");
    Ok(())
}

struct Driver {
    radio: UdpSocket,
    gtpu: UdpSocket,
    gtpu_peer_port: u16,
    client: sbi::Client,
    smf_url: String,
    tx: mpsc::Sender<Input>,
    next_id: RequestId,
    triggers: HashMap<RequestId, oneshot::Sender<Result<HandoverReport, Failure>>>,
    xn_requests: HashMap<RequestId, oneshot::Sender<Result<HandoverRequestAck, Failure>>>,
    releases: HashMap<RequestId, oneshot::Sender<Result<(), Failure>>>,
}

impl Driver {
    fn id(&mut self) -> RequestId {
        self.next_id += 1;
        self.next_id
    }

    /// Turns a handler's request into a core event (keeping its answer channel).
    fn request(&mut self, core: &GnbCore, r: Request) -> Option<Event> {
        let id = self.id();
        match r {
            Request::Trigger(trigger, reply) => {
                self.triggers.insert(id, reply);
                Some(Event::Trigger { id, trigger })
            }
            Request::HandoverRequest(request, reply) => {
                self.xn_requests.insert(id, reply);
                Some(Event::HandoverRequest { id, request })
            }
            Request::Release(release, reply) => {
                self.releases.insert(id, reply);
                Some(Event::UeContextRelease { id, release })
            }
            Request::Status(reply) => {
                let ues = core
                    .contexts()
                    .map(|c| UeSummary {
                        supi: c.supi.clone(),
                        ue_name: c.ue_name.clone(),
                        phase: c.phase.name().to_owned(),
                        radio_id: c.radio_id,
                        ue_ipv4: c.ue_ipv4,
                        dl_teid: c.dl_teid,
                        upf_tunnel: c.upf_tunnel,
                        packets_up: c.packets_up,
                        packets_down: c.packets_down,
                    })
                    .collect();
                let _ = reply.send(GnbStatus {
                    name: core.name().to_owned(),
                    radio: match self.radio.local_addr() {
                        Ok(SocketAddr::V4(a)) => a,
                        _ => SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
                    },
                    counters: serde_json::to_value(&core.counters).unwrap_or_default(),
                    ues,
                });
                None
            }
        }
    }

    async fn perform(&mut self, action: Action) {
        match action {
            Action::SendRadio { to, frame } => {
                if let Err(e) = self.radio.send_to(&frame, to).await {
                    tracing::debug!(%to, error = %e, "radio send failed");
                }
            }
            Action::SendGtpu { to, message } => {
                let dst = SocketAddrV4::new(to, self.gtpu_peer_port);
                if let Err(e) = self.gtpu.send_to(&message, dst).await {
                    tracing::debug!(%dst, error = %e, "gtp-u send failed");
                }
            }
            Action::ReplyGtpu { to, message } => {
                if let Err(e) = self.gtpu.send_to(&message, to).await {
                    tracing::debug!(%to, error = %e, "gtp-u reply failed");
                }
            }
            Action::SetupPduSession {
                supi,
                epoch,
                request,
            } => {
                let (client, tx) = (self.client.clone(), self.tx.clone());
                let url = format!("{}{}/pdu-sessions", self.smf_url, n2::BASE);
                tokio::spawn(async move {
                    let result = client
                        .post::<_, PduSessionSetupResponse>(&url, &request)
                        .await
                        .map_err(|e| e.to_string());
                    let _ = tx
                        .send(Input::Event(Event::SessionSetup {
                            supi,
                            epoch,
                            result,
                        }))
                        .await;
                });
            }
            Action::RequestHandover {
                supi,
                epoch,
                xn_url,
                request,
            } => {
                let (client, tx) = (self.client.clone(), self.tx.clone());
                let url = format!("{xn_url}{}/handover-requests", xn::BASE);
                tokio::spawn(async move {
                    let result = client
                        .post::<_, HandoverRequestAck>(&url, &request)
                        .await
                        .map_err(|e| e.to_string());
                    let _ = tx
                        .send(Input::Event(Event::HandoverPrepared {
                            supi,
                            epoch,
                            result,
                        }))
                        .await;
                });
            }
            Action::PathSwitch {
                supi,
                epoch,
                request,
            } => {
                let (client, tx) = (self.client.clone(), self.tx.clone());
                let url = format!("{}{}/path-switch", self.smf_url, n2::BASE);
                tokio::spawn(async move {
                    let result = client
                        .post::<_, PathSwitchAck>(&url, &request)
                        .await
                        .map_err(|e| match &e {
                            sbi::ClientError::Transport { .. } => {
                                CallFailure::transient(sbi::error_chain(&e))
                            }
                            sbi::ClientError::Status { status, .. } if *status >= 500 => {
                                CallFailure::transient(e.to_string())
                            }
                            _ => CallFailure::refused(e.to_string()),
                        });
                    let _ = tx
                        .send(Input::Event(Event::PathSwitched {
                            supi,
                            epoch,
                            result,
                        }))
                        .await;
                });
            }
            Action::ReleaseUeContext { xn_url, release } => {
                let client = self.client.clone();
                let url = format!("{xn_url}{}/ue-context-releases", xn::BASE);
                tokio::spawn(async move {
                    if let Err(e) = client.post_no_content(&url, &release).await {
                        tracing::error!(error = %e, supi = release.supi, "ue context release failed");
                    }
                });
            }
            Action::AnswerTrigger { id, result } => {
                if let Some(reply) = self.triggers.remove(&id) {
                    let _ = reply.send(result);
                }
            }
            Action::AnswerHandoverRequest { id, result } => {
                if let Some(reply) = self.xn_requests.remove(&id) {
                    let _ = reply.send(result);
                }
            }
            Action::AnswerRelease { id, result } => {
                if let Some(reply) = self.releases.remove(&id) {
                    let _ = reply.send(result);
                }
            }
            Action::StartTimer {
                supi,
                epoch,
                timer,
                at,
            } => {
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    tokio::time::sleep_until(at).await;
                    let _ = tx
                        .send(Input::Event(Event::Timer { supi, epoch, timer }))
                        .await;
                });
            }
        }
    }
}

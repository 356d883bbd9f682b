//! The UE stand-in: attaches over the radio (UDP to its gNB, [`crate::radio`]), puts its PDU
//! session address on a TUN device with the default route through it, carries packets between
//! the TUN and the radio, follows HandoverCommands to the target gNB, and records downlink gaps
//! per flow ([`gaps`]) for the thesis's service-downtime probe.
//!
//! The TUN side is the [`Tun`] trait: [`RealTun`] (tun-rs) in production, [`ChannelTun`] in
//! tests without root. The control API (`/ue/v1/...`) is HTTP/1.1 on a unix socket (mode 600, no
//! token).

pub mod gaps;

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use model::ran::radio::Rrc;
use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::{Duration, Instant};

use self::gaps::{FlowGaps, GapRecorder};
use crate::radio::{self, Frame};

/// How often an AttachRequest is repeated until the accept comes.
pub const ATTACH_RETRY: Duration = Duration::from_millis(300);
/// How long the UE tries to attach before it gives up.
pub const ATTACH_TIMEOUT: Duration = Duration::from_secs(20);
/// How often a HandoverConfirm is repeated until the first downlink packet from the target.
pub const CONFIRM_RETRY: Duration = Duration::from_millis(100);
/// How long a HandoverConfirm is repeated at most.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(1);

/// The UE's configuration (`ue --config ue1.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UeConfig {
    /// The UE's testbed name, e.g. `ue1`.
    pub name: String,
    /// The UE's SUPI, e.g. `imsi-001010000000001`.
    pub supi: String,
    /// The radio address of the gNB it attaches to first, e.g. `10.10.0.1:4997`.
    pub gnb_radio: SocketAddrV4,
    /// Where its radio socket binds on the air segment, e.g. `10.10.0.101:0`.
    pub radio_bind: SocketAddrV4,
    /// The TUN device's name, e.g. `ue0`.
    pub tun: String,
    /// The TUN device's MTU, e.g. 1400 (leaves room for the GTP-U and radio headers).
    pub mtu: u16,
    /// The unix socket of the control API, e.g. `/run/testbed/NAME/ue1.sock`.
    pub control_socket: PathBuf,
}

/// Why the UE could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum UeError {
    #[error("cannot bind the radio socket on {addr}")]
    BindRadio {
        addr: SocketAddrV4,
        #[source]
        source: std::io::Error,
    },
    #[error("radio socket failed")]
    Radio(#[source] std::io::Error),
    #[error("no attach accept from {gnb} within {secs} s (last reject: {last_reject})")]
    AttachTimeout {
        gnb: SocketAddrV4,
        secs: u64,
        last_reject: String,
    },
    #[error("cannot create tun device {name}")]
    Tun {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot configure tun device {name}")]
    TunConfig {
        name: String,
        #[source]
        source: netkit::CmdError,
    },
    #[error("cannot serve the control api on {path}")]
    ControlSocket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The IP side of the UE: where uplink packets come from and downlink packets go.
pub trait Tun: Send + Sync + 'static {
    /// Reads one IP packet (uplink).
    fn recv(&self, buf: &mut [u8]) -> impl Future<Output = std::io::Result<usize>> + Send;
    /// Writes one IP packet (downlink).
    fn send(&self, packet: &[u8]) -> impl Future<Output = std::io::Result<usize>> + Send;
}

/// A real TUN device (tun-rs).
pub struct RealTun(tun_rs::AsyncDevice);

impl std::fmt::Debug for RealTun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RealTun").finish_non_exhaustive()
    }
}

impl Tun for RealTun {
    async fn recv(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.recv(buf).await
    }
    async fn send(&self, packet: &[u8]) -> std::io::Result<usize> {
        self.0.send(packet).await
    }
}

/// Creates TUN `name` with `ue_ipv4`/32 and `mtu`, brings it up and routes the default through
/// it (`ip route replace default dev NAME`); the air segment stays directly connected.
pub async fn create_tun(name: &str, ue_ipv4: Ipv4Addr, mtu: u16) -> Result<RealTun, UeError> {
    let dev = tun_rs::DeviceBuilder::new()
        .name(name)
        .ipv4(ue_ipv4, 32, None)
        .mtu(mtu)
        .build_async()
        .map_err(|source| UeError::Tun {
            name: name.to_owned(),
            source,
        })?;
    let owned = name.to_owned();
    let configured = tokio::task::spawn_blocking(move || {
        netkit::Tool::new("ip")
            .args(["link", "set", "dev", &owned, "up"])
            .run()?;
        netkit::Tool::new("ip")
            .args(["route", "replace", "default", "dev", &owned])
            .run()
    })
    .await;
    match configured {
        Ok(Ok(())) => Ok(RealTun(dev)),
        Ok(Err(source)) => Err(UeError::TunConfig {
            name: name.to_owned(),
            source,
        }),
        Err(e) => Err(UeError::Tun {
            name: name.to_owned(),
            source: std::io::Error::other(e),
        }),
    }
}

/// A TUN stand-in made of channels (tests without root): the [`TunPeer`] plays the applications.
#[derive(Debug)]
pub struct ChannelTun {
    uplink: tokio::sync::Mutex<mpsc::Receiver<Vec<u8>>>,
    downlink: mpsc::UnboundedSender<Vec<u8>>,
}

/// The application side of a [`ChannelTun`].
#[derive(Debug)]
pub struct TunPeer {
    /// Packets the UE sends uplink.
    pub uplink: mpsc::Sender<Vec<u8>>,
    /// Packets the UE received downlink.
    pub downlink: mpsc::UnboundedReceiver<Vec<u8>>,
}

/// A connected [`ChannelTun`] and its [`TunPeer`].
pub fn channel_tun() -> (ChannelTun, TunPeer) {
    let (up_tx, up_rx) = mpsc::channel(1024);
    let (down_tx, down_rx) = mpsc::unbounded_channel();
    (
        ChannelTun {
            uplink: tokio::sync::Mutex::new(up_rx),
            downlink: down_tx,
        },
        TunPeer {
            uplink: up_tx,
            downlink: down_rx,
        },
    )
}

impl Tun for ChannelTun {
    async fn recv(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        let packet = self.uplink.lock().await.recv().await;
        match packet {
            Some(p) => {
                let n = p.len().min(buf.len());
                buf[..n].copy_from_slice(&p[..n]);
                Ok(n)
            }
            // The peer is gone: no more uplink, ever.
            None => std::future::pending().await,
        }
    }
    async fn send(&self, packet: &[u8]) -> std::io::Result<usize> {
        self.downlink
            .send(packet.to_vec())
            .map(|()| packet.len())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))
    }
}

/// `GET /ue/v1/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UeStatus {
    pub name: String,
    pub supi: String,
    /// The PDU session address, once attached.
    pub ue_ipv4: Option<Ipv4Addr>,
    /// The serving gNB's radio address.
    pub gnb_radio: SocketAddrV4,
    /// The radio id at the serving gNB, once attached.
    pub radio_id: Option<u16>,
    pub packets_up: u64,
    pub packets_down: u64,
    pub handovers: u64,
}

#[derive(Debug)]
struct Shared {
    status: UeStatus,
    gaps: GapRecorder,
}

#[derive(Debug, Clone)]
struct ApiState(Arc<Mutex<Shared>>);

impl ApiState {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GapsQuery {
    since_ms: Option<u64>,
}

fn control_router(state: ApiState) -> Router {
    Router::new()
        .route(
            "/ue/v1/status",
            get(|State(s): State<ApiState>| async move { axum::Json(s.lock().status.clone()) }),
        )
        .route(
            "/ue/v1/gaps",
            get(
                |State(s): State<ApiState>, Query(q): Query<GapsQuery>| async move {
                    let since_us = q.since_ms.unwrap_or(0).saturating_mul(1000);
                    let report: Vec<FlowGaps> = s.lock().gaps.report(since_us);
                    axum::Json(report)
                },
            ),
        )
        .route(
            "/ue/v1/gaps/reset",
            post(|State(s): State<ApiState>| async move {
                s.lock().gaps.reset();
                StatusCode::NO_CONTENT
            }),
        )
        .with_state(state)
}

/// Runs the UE with a real TUN device until `shutdown`.
pub async fn run(
    config: UeConfig,
    ready: sbi::nf::Ready,
    shutdown: sbi::nf::Shutdown,
) -> Result<(), UeError> {
    let (name, mtu) = (config.tun.clone(), config.mtu);
    run_with(
        config,
        move |ip| async move { create_tun(&name, ip, mtu).await },
        ready,
        shutdown,
    )
    .await
}

/// [`run`] with the TUN side made by `make_tun` once the UE has its address.
pub async fn run_with<T, F, Fut>(
    config: UeConfig,
    make_tun: F,
    ready: sbi::nf::Ready,
    shutdown: sbi::nf::Shutdown,
) -> Result<(), UeError>
where
    T: Tun,
    F: FnOnce(Ipv4Addr) -> Fut,
    Fut: Future<Output = Result<T, UeError>>,
{
    let started = Instant::now();
    let radio = UdpSocket::bind(config.radio_bind)
        .await
        .map_err(|source| UeError::BindRadio {
            addr: config.radio_bind,
            source,
        })?;
    let shared = ApiState(Arc::new(Mutex::new(Shared {
        status: UeStatus {
            name: config.name.clone(),
            supi: config.supi.clone(),
            ue_ipv4: None,
            gnb_radio: config.gnb_radio,
            radio_id: None,
            packets_up: 0,
            packets_down: 0,
            handovers: 0,
        },
        gaps: GapRecorder::new(),
    })));
    let api = serve_control(&config.control_socket, shared.clone(), shutdown.clone())?;
    let result = serve_radio(
        config.clone(),
        radio,
        make_tun,
        &shared,
        started,
        ready,
        shutdown,
    )
    .await;
    let _ = tokio::time::timeout(Duration::from_secs(2), api).await;
    let _ = std::fs::remove_file(&config.control_socket);
    result
}

fn serve_control(
    path: &std::path::Path,
    state: ApiState,
    shutdown: sbi::nf::Shutdown,
) -> Result<tokio::task::JoinHandle<()>, UeError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |source| UeError::ControlSocket {
        path: path.to_owned(),
        source,
    };
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    let router = control_router(state);
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown.wait())
            .await
        {
            tracing::error!(error = %e, "ue control api failed");
        }
    }))
}

/// Attaches, makes the TUN, then carries packets until `shutdown`.
async fn serve_radio<T, F, Fut>(
    config: UeConfig,
    radio: UdpSocket,
    make_tun: F,
    shared: &ApiState,
    started: Instant,
    ready: sbi::nf::Ready,
    shutdown: sbi::nf::Shutdown,
) -> Result<(), UeError>
where
    T: Tun,
    F: FnOnce(Ipv4Addr) -> Fut,
    Fut: Future<Output = Result<T, UeError>>,
{
    let stop = shutdown.wait();
    tokio::pin!(stop);
    let mut buf = vec![0u8; 65536];
    let mut gnb = SocketAddr::V4(config.gnb_radio);

    // Attach.
    let attach = radio::control_frame(&Rrc::AttachRequest {
        supi: config.supi.clone(),
        ue_name: config.name.clone(),
    });
    let deadline = Instant::now() + ATTACH_TIMEOUT;
    let mut last_reject = String::from("none");
    let (mut radio_id, ue_ipv4) = 'attach: loop {
        if Instant::now() >= deadline {
            return Err(UeError::AttachTimeout {
                gnb: config.gnb_radio,
                secs: ATTACH_TIMEOUT.as_secs(),
                last_reject,
            });
        }
        if let Err(e) = radio.send_to(&attach, gnb).await {
            tracing::debug!(error = %e, "attach request not sent");
        }
        let retry = tokio::time::sleep(ATTACH_RETRY);
        tokio::pin!(retry);
        loop {
            tokio::select! {
                _ = &mut stop => return Ok(()),
                _ = &mut retry => continue 'attach,
                r = radio.recv_from(&mut buf) => {
                    let (n, _) = r.map_err(UeError::Radio)?;
                    match radio::parse(&buf[..n]) {
                        Ok(Frame::Control(Rrc::AttachAccept { radio_id, ue_ipv4, qfi })) => {
                            tracing::info!(ue = config.name, %ue_ipv4, radio_id, qfi, "attached");
                            break 'attach (radio_id, ue_ipv4);
                        }
                        Ok(Frame::Control(Rrc::AttachReject { cause })) => {
                            tracing::warn!(ue = config.name, cause, "attach rejected; retrying");
                            last_reject = cause;
                        }
                        Ok(other) => tracing::debug!(frame = ?other, "ignored before attach"),
                        Err(e) => tracing::debug!(error = %e, "malformed radio frame"),
                    }
                }
            }
        }
    };
    {
        let mut s = shared.lock();
        s.status.ue_ipv4 = Some(ue_ipv4);
        s.status.radio_id = Some(radio_id);
    }
    let tun = make_tun(ue_ipv4).await?;
    ready.ready();

    // Carry packets.
    let mut tun_buf = vec![0u8; 65536];
    // While handing over: the HandoverConfirm to repeat, until when.
    let mut confirm: Option<(Vec<u8>, Instant)> = None;
    let mut next_confirm = Instant::now();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            r = tun.recv(&mut tun_buf) => match r {
                Ok(n) => {
                    let frame = radio::data_frame(radio_id, &tun_buf[..n]);
                    match radio.send_to(&frame, gnb).await {
                        Ok(_) => shared.lock().status.packets_up += 1,
                        Err(e) => tracing::debug!(error = %e, "uplink not sent"),
                    }
                }
                Err(e) => tracing::warn!(error = %e, "tun read failed"),
            },
            r = radio.recv_from(&mut buf) => {
                let (n, from) = match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::debug!(error = %e, "radio receive failed");
                        continue;
                    }
                };
                match radio::parse(&buf[..n]) {
                    Ok(Frame::Data { packet, .. }) => {
                        if confirm.is_some() && from == gnb {
                            confirm = None;
                        }
                        if let Err(e) = tun.send(packet).await {
                            tracing::debug!(error = %e, "tun write failed");
                        }
                        let at = started.elapsed();
                        let mut s = shared.lock();
                        s.status.packets_down += 1;
                        s.gaps.record(u64::try_from(at.as_micros()).unwrap_or(u64::MAX), packet);
                    }
                    Ok(Frame::Control(Rrc::HandoverCommand { target_gnb, target, radio_id: new_id })) => {
                        let target = SocketAddr::V4(target);
                        if target == gnb && new_id == radio_id {
                            continue; // a repeated command
                        }
                        tracing::info!(ue = config.name, target_gnb, %target, radio_id = new_id, "handover command");
                        gnb = target;
                        radio_id = new_id;
                        let frame = radio::control_frame(&Rrc::HandoverConfirm {
                            supi: config.supi.clone(),
                            radio_id,
                        });
                        if let Err(e) = radio.send_to(&frame, gnb).await {
                            tracing::debug!(error = %e, "handover confirm not sent");
                        }
                        confirm = Some((frame, Instant::now() + CONFIRM_TIMEOUT));
                        next_confirm = Instant::now() + CONFIRM_RETRY;
                        let mut s = shared.lock();
                        s.status.handovers += 1;
                        s.status.radio_id = Some(radio_id);
                        if let SocketAddr::V4(t) = target {
                            s.status.gnb_radio = t;
                        }
                    }
                    Ok(Frame::Control(Rrc::AttachAccept { .. })) => {} // a late repeat
                    Ok(Frame::Control(other)) => tracing::debug!(rrc = ?other, "rrc message ignored"),
                    Err(e) => tracing::debug!(%from, error = %e, "malformed radio frame"),
                }
            }
            _ = tokio::time::sleep_until(next_confirm), if confirm.is_some() => {
                if let Some((frame, until)) = &confirm {
                    if Instant::now() >= *until {
                        confirm = None;
                    } else {
                        let _ = radio.send_to(frame, gnb).await;
                        next_confirm = Instant::now() + CONFIRM_RETRY;
                    }
                }
            }
        }
    }
    tracing::info!(ue = config.name, "ue stopped");
    Ok(())
}

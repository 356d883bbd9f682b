//! The SMF stand-in: PFCP (N4) to the UPFs, the N2 stand-in for the gNBs (PDU session setup,
//! path switch with UPF relocation) and Nsmf_EventExposure (TS 29.508) for AFs.
//!
//! SBI (HTTP/2 h2c, bearer token required):
//!
//! | method and path | body | answer |
//! |---|---|---|
//! | `POST /n2-lite/v1/pdu-sessions` | `PduSessionSetupRequest` | 201 `PduSessionSetupResponse` |
//! | `POST /n2-lite/v1/path-switch` | `PathSwitchRequest` | 200 `PathSwitchAck` |
//! | `POST /nsmf-event-exposure/v1/subscriptions` | `NsmfEventExposure` | 201 + `Location` |
//! | `GET /nsmf-event-exposure/v1/subscriptions/{subId}` | | 200 `NsmfEventExposure` |
//! | `PUT /nsmf-event-exposure/v1/subscriptions/{subId}` | `NsmfEventExposure` | 200 (replaced) |
//! | `DELETE /nsmf-event-exposure/v1/subscriptions/{subId}` | | 204 |
//! | `POST /nsmf-event-exposure/v1/acks/{ackId}` (an `ackUri`) | `AckOfNotify` | 204 |
//! | `PUT /n7-lite/v1/traffic-controls/{tcId}?anyUeInd=true` (or `ueIpv4Addr=A`, `gpsi=G`) | `TrafficControlData` (TS 29.512) | 201 (200 replaced) + `Location` |
//! | `GET /n7-lite/v1/traffic-controls/{tcId}` | | 200 `TrafficControlData` |
//! | `DELETE /n7-lite/v1/traffic-controls/{tcId}` | | 204 |
//!
//! The N7 stand-in is where the NEF, standing in for the PCF, puts an AF's traffic influence:
//! TS 29.512 traffic control data whose `upPathChgEvent` subscribes to `UP_PATH_CH` (to the NEF)
//! and may ask for AF acknowledgements (`afAckInd`): those notifications carry an `ackUri`, and
//! the path switch holds until the answers came or [`SmfConfig::ack_timeout`] passed.
//!
//! Errors are ProblemDetails: 400 (bad body, unsupported subscription or traffic control: see
//! [`events`]), 401, 404 (unknown subscription, traffic control, UE, or an acknowledgement no
//! switch waits for), 500 (`INSUFFICIENT_RESOURCES`, `SYSTEM_FAILURE`: a UPF refused),
//! 502 (`LR_UPDATE_FAILED`), 504 (`UPF_NOT_RESPONDING`).
//!
//! Layout: [`session`] and [`events`] are the pure state (session table, allocation, PFCP
//! requests; subscriptions and which notifications are owed), [`switch`] the path switch as a
//! pure state machine, [`store`] what the SMF keeps on disk to survive a crash, [`n4`] the PFCP
//! endpoint, [`procedure`] the component that drives the procedures' I/O, [`api`] the HTTP
//! handlers.

pub mod api;
pub mod events;
pub mod n4;
pub mod procedure;
pub mod session;
pub mod store;
pub mod switch;

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sbi::nf::{Ready, Shutdown};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinSet;

pub use procedure::{ProcedureError, Smf};

/// How long the SMF waits for every UPF's association before saying it is ready anyway.
pub const ASSOCIATION_WAIT: Duration = Duration::from_secs(10);
/// How long a path switch holds for AF acknowledgements unless configured (`ackTimeoutMs`).
pub const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(2);

/// Configuration of the SMF process (`smf.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SmfConfig {
    /// Where the SBI (HTTP/2 h2c) listens, e.g. `10.100.0.10:8000`.
    pub sbi_addr: SocketAddrV4,
    /// The local PFCP socket, e.g. `10.100.0.10:8805`; its address is the SMF's Node ID and
    /// F-SEID address.
    pub pfcp_addr: SocketAddrV4,
    /// The deployment's bearer token: required on every request and sent on every call.
    pub token: Option<String>,
    /// Base URL of the Location Registry, e.g. `http://10.100.0.10:8001`.
    pub lr_url: String,
    /// The UE address pool, e.g. `192.168.1.0/24`; its first host (`.1`) is reserved and
    /// addresses are handed out from the second (`.2`).
    pub ue_pool: ipnet::Ipv4Net,
    /// The QFI of every PDU session's QoS flow (e.g. 9).
    pub qfi: u8,
    /// The UPFs, one per site.
    pub upfs: Vec<UpfPeer>,
    /// The gNBs and their sites (a gNB is served by its site's UPF).
    pub gnbs: Vec<GnbSite>,
    /// Networks a subscription's `notifUri` may point into, e.g. `["10.100.0.0/24"]`; absent or
    /// empty: the SMF's own SBI network ([`sbi::CallbackNetworks::or_own`]). Others get 400.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub callback_networks: Vec<ipnet::Ipv4Net>,
    /// Where the SMF keeps its sessions, subscriptions and path switches in progress (see
    /// [`store`]), e.g. `/run/testbed/NAME/smf`; a restarted SMF takes them up. Absent: nothing
    /// outlives the process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<PathBuf>,
    /// How long a path switch waits for the AF acknowledgements its notifications asked for
    /// (ms; default 2000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack_timeout_ms: Option<u64>,
}

/// One UPF the SMF controls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpfPeer {
    /// Its name, e.g. `upf-a`.
    pub name: String,
    /// The site it serves, e.g. `a`.
    pub site: String,
    /// The DNAI of the site's edge cloud, reported in `UP_PATH_CH` notifications.
    pub dnai: String,
    /// Its PFCP socket, e.g. `10.100.0.22:8805`.
    pub pfcp: SocketAddrV4,
    /// Its N3 address (uplink F-TEIDs), e.g. `10.30.0.102`.
    pub n3: Ipv4Addr,
    /// Its N9 address (downlink F-TEIDs, the IAPs' tunnel end), e.g. `10.90.0.2`.
    pub n9: Ipv4Addr,
}

/// A gNB and its site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GnbSite {
    /// Its name, e.g. `gnb-a`.
    pub name: String,
    /// Its site, e.g. `a`.
    pub site: String,
}

/// Why the SMF stopped (or did not start).
#[derive(Debug, thiserror::Error)]
pub enum SmfError {
    #[error("bad config: {0}")]
    Config(String),
    #[error("cannot listen for {what} on {addr}")]
    Bind {
        what: &'static str,
        addr: SocketAddrV4,
        #[source]
        source: std::io::Error,
    },
    #[error("sbi server failed")]
    Serve(#[source] std::io::Error),
    #[error("cannot take up the smf's state")]
    Store(#[source] Box<sbi::StoreError>),
}

impl SmfConfig {
    /// How long a path switch holds for AF acknowledgements.
    pub fn ack_timeout(&self) -> Duration {
        self.ack_timeout_ms
            .map_or(DEFAULT_ACK_TIMEOUT, Duration::from_millis)
    }

    /// Checks what serde cannot: unique names, a usable pool and QFI, gNB sites with a UPF.
    pub fn validate(&self) -> Result<(), SmfError> {
        let bad = |m: String| Err(SmfError::Config(m));
        if self.qfi > 63 {
            return bad(format!("qfi {} is above 63", self.qfi));
        }
        if self.ue_pool.hosts().count() < 2 {
            return bad(format!(
                "ue pool {} has no address after the reserved first one",
                self.ue_pool
            ));
        }
        let mut names = HashSet::new();
        for u in &self.upfs {
            if !names.insert(&u.name) {
                return bad(format!("upf {} appears twice", u.name));
            }
        }
        let mut gnbs = HashSet::new();
        for g in &self.gnbs {
            if !gnbs.insert(&g.name) {
                return bad(format!("gnb {} appears twice", g.name));
            }
            if !self.upfs.iter().any(|u| u.site == g.site) {
                return bad(format!("no upf serves site {} of {}", g.site, g.name));
            }
        }
        if reqwest::Url::parse(&self.lr_url).is_err() {
            return bad(format!("lrUrl `{}` is not a URL", self.lr_url));
        }
        Ok(())
    }
}

/// The SMF process: binds `config.sbi_addr` and `config.pfcp_addr`, serves until `shutdown`.
pub async fn run(config: SmfConfig, ready: Ready, shutdown: Shutdown) -> Result<(), SmfError> {
    config.validate()?;
    let listener = TcpListener::bind(config.sbi_addr)
        .await
        .map_err(|source| SmfError::Bind {
            what: "sbi",
            addr: config.sbi_addr,
            source,
        })?;
    let pfcp = UdpSocket::bind(config.pfcp_addr)
        .await
        .map_err(|source| SmfError::Bind {
            what: "pfcp",
            addr: config.pfcp_addr,
            source,
        })?;
    run_on(config, listener, pfcp, ready, shutdown).await
}

/// Runs the SMF on already bound sockets (tests bind `127.0.0.1:0`); `config.sbi_addr` and
/// `config.pfcp_addr` are not used except the latter's address as Node ID when the socket is
/// bound to `0.0.0.0`.
pub async fn run_on(
    mut config: SmfConfig,
    listener: TcpListener,
    pfcp: UdpSocket,
    ready: Ready,
    shutdown: Shutdown,
) -> Result<(), SmfError> {
    config.validate()?;
    let node = match pfcp.local_addr() {
        Ok(std::net::SocketAddr::V4(a)) if !a.ip().is_unspecified() => *a.ip(),
        _ => *config.pfcp_addr.ip(),
    };
    let api_root = match listener.local_addr() {
        Ok(a) => format!("http://{a}"),
        Err(_) => format!("http://{}", config.sbi_addr),
    };
    let own = match listener.local_addr() {
        Ok(std::net::SocketAddr::V4(a)) => *a.ip(),
        _ => *config.sbi_addr.ip(),
    };
    let callbacks = sbi::CallbackNetworks::or_own(&config.callback_networks, own);
    config.callback_networks = callbacks.networks().to_vec();
    tracing::info!(%api_root, pfcp = %node, upfs = config.upfs.len(), %callbacks, "smf starting");
    let n4 = n4::N4::new(pfcp, node);
    let mut tasks = JoinSet::new();
    tasks.spawn(n4.clone().receive());
    let (associated_tx, mut associated) = tokio::sync::mpsc::unbounded_channel();
    for upf in &config.upfs {
        tasks.spawn(n4::keep_associated(
            n4.clone(),
            upf.name.clone(),
            upf.pfcp,
            associated_tx.clone(),
        ));
    }
    drop(associated_tx);
    let mut missing: HashSet<String> = config.upfs.iter().map(|u| u.name.clone()).collect();
    tasks.spawn(async move {
        let deadline = tokio::time::Instant::now() + ASSOCIATION_WAIT;
        while !missing.is_empty() {
            match tokio::time::timeout_at(deadline, associated.recv()).await {
                Ok(Some(name)) => {
                    missing.remove(&name);
                }
                Ok(None) | Err(_) => break,
            }
        }
        if !missing.is_empty() {
            let mut missing: Vec<_> = missing.into_iter().collect();
            missing.sort();
            tracing::warn!(
                ?missing,
                "ready without every upf associated (still trying)"
            );
        }
        ready.ready();
        // Later re-associations are logged by their tasks.
        while associated.recv().await.is_some() {}
    });
    let token = config.token.clone();
    let smf = Arc::new(Smf::open(config, n4, api_root.clone())?);
    // Path switches a crash cut short are finished now (a retried request may come first).
    tasks.spawn({
        let smf = smf.clone();
        async move { smf.resume().await }
    });
    let result = sbi::serve(listener, api::router(smf, api_root), token, shutdown.wait()).await;
    tasks.abort_all();
    result.map_err(SmfError::Serve)
}

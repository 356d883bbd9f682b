//! The IAP (Optimal Routing): downlink packets for the UE pool reach the site's kernel, which
//! routes them into the TUN `iap0`; the IAP looks the destination up in its location cache (filled
//! by the LR's pushes, and by a GET on a miss) and sends each packet in a G-PDU to the serving
//! UPF's N9 tunnel, with a DL PDU Session Container.
//!
//! * At start: serve `POST /iap/v1/locations` (LR pushes, answered 204 once applied), subscribe
//!   at the LR (`POST {lr}/lr/v1/subscriptions`, retried with backoff), then `GET {lr}/lr/v1/ues`.
//!   Ready once subscribed, or after 10 s at most (the subscription keeps being retried).
//! * On a miss: the packet is queued (at most [`cache::MAX_QUEUED`] per UE) and one
//!   `GET {lr}/lr/v1/ues/{ip}` runs in its own task; its answer flushes the queue. A failed query
//!   drops the queue and stops asking for [`cache::NEGATIVE_TTL`].
//! * At shutdown: `DELETE` the subscription and log the counters as one JSON line
//!   (`iap counters summary=…`).
//!
//! Everything that touches the cache runs in one task (the HTTP handler only forwards the push
//! and waits for it to be applied), so a push's 204 means later packets use the new tunnel.

pub mod cache;

use crate::upf::port::{PacketPort, TunPort};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use cache::{ipv4_destination, IapCounters, Learnt, LocationCache, Route, UeCounters};
use model::ran::lr::{LrSubscription, UeLocation};
use model::ran::TunnelEndpoint;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use wire::gtpu::{self, Qfi};

/// Path of the push endpoint.
pub const LOCATIONS_PATH: &str = "/iap/v1/locations";
/// Readiness does not wait longer than this for the LR subscription.
pub const READY_DEADLINE: Duration = Duration::from_secs(10);
/// Timeout of every call to the LR.
const LR_TIMEOUT: Duration = Duration::from_secs(2);

/// The IAP's config file (`iap --config iap-a.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IapConfig {
    /// The IAP's name, e.g. `iap-a` (logs).
    pub name: String,
    /// Its site, e.g. `a` (logs).
    pub site: String,
    /// Where the IAP serves the LR's pushes, e.g. `10.100.0.21:8010`.
    pub sbi_addr: SocketAddrV4,
    /// The LR's base URL, e.g. `http://10.100.0.10:8001`.
    pub lr_url: String,
    /// The deployment's bearer token (required by the IAP's server, sent by its client).
    pub token: Option<String>,
    /// TUN device the site's kernel routes the UE pool into, e.g. `iap0`.
    pub tun: String,
    /// The TUN's address (/32), e.g. `10.255.1.1`.
    pub tun_addr: Ipv4Addr,
    /// The UE pool, e.g. `192.168.1.0/24`; the IAP routes it into the TUN itself.
    pub ue_pool: ipnet::Ipv4Net,
    /// QFI in the DL PDU Session Container of every G-PDU, e.g. 9.
    pub qfi: u8,
}

/// Why the IAP could not start.
#[derive(Debug, thiserror::Error)]
pub enum IapError {
    #[error("bad qfi {0} in config (must be below 64)")]
    Qfi(u8),
    #[error("cannot create tun device {name}")]
    Tun {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot route the ue pool into the tun")]
    Route(#[source] netkit::CmdError),
    #[error("cannot bind {what} on {addr}")]
    Bind {
        what: &'static str,
        addr: SocketAddrV4,
        #[source]
        source: std::io::Error,
    },
}

/// A snapshot of the IAP: counters and cached locations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IapStatus {
    pub name: String,
    pub counters: IapCounters,
    pub ues: BTreeMap<Ipv4Addr, UeCounters>,
    pub locations: Vec<UeLocation>,
    /// Whether the LR subscription succeeded.
    pub subscribed: bool,
}

/// What reaches the packet task from the outside.
#[derive(Debug)]
enum Event {
    /// A push from the LR; `applied` is answered once the cache holds it.
    Push {
        location: UeLocation,
        applied: oneshot::Sender<()>,
    },
    /// The LR's list at start.
    Initial(Vec<UeLocation>),
    /// The answer to a miss query (`None`: unknown or no answer).
    Answer(Ipv4Addr, Option<UeLocation>),
}

/// Runs the IAP with a real TUN (and the route of the UE pool into it) until `shutdown`.
pub async fn run(
    config: IapConfig,
    ready: sbi::nf::Ready,
    shutdown: sbi::nf::Shutdown,
) -> Result<(), IapError> {
    let tun = TunPort::create(&config.tun, config.tun_addr).map_err(|source| IapError::Tun {
        name: config.tun.clone(),
        source,
    })?;
    let pool = config.ue_pool.trunc().to_string();
    tokio::task::spawn_blocking({
        let tun = config.tun.clone();
        move || {
            netkit::Tool::new("ip")
                .args(["route", "replace", &pool, "dev", &tun])
                .run()
        }
    })
    .await
    .map_err(|e| {
        IapError::Route(netkit::CmdError::Spawn {
            program: "ip".into(),
            source: std::io::Error::other(e),
        })
    })?
    .map_err(IapError::Route)?;
    tracing::info!(tun = tun.name(), pool = %config.ue_pool, "tun up, ue pool routed into it");
    run_with(config, tun, gtpu::PORT, ready, shutdown)
        .await
        .map(drop)
}

/// Runs the IAP with any packet port; G-PDUs go to `gtpu_peer_port` of the UPF (2152 in
/// production). Returns the final status.
pub async fn run_with<P: PacketPort>(
    config: IapConfig,
    port: P,
    gtpu_peer_port: u16,
    ready: sbi::nf::Ready,
    shutdown: sbi::nf::Shutdown,
) -> Result<IapStatus, IapError> {
    let qfi = Qfi::new(config.qfi).map_err(|_| IapError::Qfi(config.qfi))?;
    let listener = TcpListener::bind(config.sbi_addr)
        .await
        .map_err(|source| IapError::Bind {
            what: "sbi listener",
            addr: config.sbi_addr,
            source,
        })?;
    let any = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0);
    let gtpu_socket = UdpSocket::bind(any)
        .await
        .map_err(|source| IapError::Bind {
            what: "gtp-u socket",
            addr: any,
            source,
        })?;
    let local = listener.local_addr().map_err(|source| IapError::Bind {
        what: "sbi listener",
        addr: config.sbi_addr,
        source,
    })?;
    let notify_uri = format!("http://{local}{LOCATIONS_PATH}");
    let lr = config.lr_url.trim_end_matches('/').to_owned();
    let client = sbi::Client::new(config.token.clone(), LR_TIMEOUT);
    let (events, events_rx) = mpsc::channel(1024);

    let router = Router::new()
        .route(LOCATIONS_PATH, post(push))
        .with_state(events.clone());
    let server = tokio::spawn(sbi::serve(
        listener,
        router,
        config.token.clone(),
        shutdown.clone().wait(),
    ));
    tracing::info!(iap = %config.name, site = %config.site, sbi = %local, lr = %lr, "iap serving pushes");

    let datapath = Datapath {
        port,
        socket: gtpu_socket,
        gtpu_peer_port,
        qfi,
        cache: LocationCache::new(),
        events: events_rx,
        events_tx: events.clone(),
        client: client.clone(),
        lr: lr.clone(),
    };
    let packets = tokio::spawn(datapath.run(shutdown.clone()));

    let mut subscription = tokio::spawn(subscribe(client.clone(), lr.clone(), notify_uri, events));
    let mut location = None;
    let mut subscribed = false;
    tokio::select! {
        r = &mut subscription => {
            location = r.ok().flatten();
            subscribed = true;
        }
        () = tokio::time::sleep(READY_DEADLINE) => {
            tracing::warn!(lr = %lr, "no lr subscription yet; ready anyway, still trying");
        }
        () = shutdown.clone().wait() => {}
    }
    ready.ready();
    shutdown.wait().await;

    if !subscribed {
        if subscription.is_finished() {
            location = subscription.await.ok().flatten();
            subscribed = true;
        } else {
            subscription.abort();
        }
    }
    if let Some(url) = &location {
        match client.delete(url).await {
            Ok(()) => tracing::info!(subscription = %url, "lr subscription deleted"),
            Err(error) => tracing::warn!(%error, "cannot delete lr subscription"),
        }
    }
    let cache = packets.await.unwrap_or_default();
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%error, "sbi server ended with an error"),
        Err(error) => tracing::warn!(%error, "sbi server task failed"),
    }
    let mut locations: Vec<UeLocation> = cache.locations().cloned().collect();
    locations.sort_by_key(|l| l.ue_ipv4);
    let status = IapStatus {
        name: config.name,
        counters: cache.counters(),
        ues: cache.ue_counters().clone(),
        locations,
        subscribed,
    };
    tracing::info!(
        summary = %serde_json::to_string(&status).unwrap_or_default(),
        "iap counters"
    );
    Ok(status)
}

/// `POST /iap/v1/locations`: hands the push to the packet task and answers 204 once applied.
async fn push(
    State(events): State<mpsc::Sender<Event>>,
    sbi::Json(location): sbi::Json<UeLocation>,
) -> Result<StatusCode, sbi::ApiError> {
    let (applied, done) = oneshot::channel();
    let unavailable = || sbi::ApiError::status(StatusCode::SERVICE_UNAVAILABLE, "iap stopping");
    events
        .send(Event::Push { location, applied })
        .await
        .map_err(|_| unavailable())?;
    done.await.map_err(|_| unavailable())?;
    Ok(StatusCode::NO_CONTENT)
}

/// Subscribes at the LR (retrying with backoff until it answers), then fetches every location.
/// Returns the subscription's URL (from the Location header of the 201).
async fn subscribe(
    client: sbi::Client,
    lr: String,
    notify_uri: String,
    events: mpsc::Sender<Event>,
) -> Option<String> {
    let url = format!("{lr}{}/subscriptions", model::ran::lr::BASE);
    let body = LrSubscription { notify_uri };
    let mut backoff = Duration::from_millis(100);
    let mut attempts = 0u32;
    // Warn at the first failure and then about every 20 s, debug otherwise.
    let mut next_warning = 1u32;
    let response = loop {
        attempts += 1;
        match client.send(reqwest::Method::POST, &url, Some(&body)).await {
            Ok(r) => break r,
            Err(error) => {
                if attempts >= next_warning {
                    next_warning = attempts + 10;
                    tracing::warn!(%error, attempts, "lr subscription failed, retrying");
                } else {
                    tracing::debug!(%error, attempts, "lr subscription failed, retrying");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    };
    let location = response
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(|l| absolute(&lr, l));
    tracing::info!(subscription = ?location, attempts, "subscribed at the lr");
    if location.is_none() {
        tracing::warn!("lr subscription answer has no location header; it cannot be deleted");
    }
    let all = format!("{lr}{}/ues", model::ran::lr::BASE);
    match client.get::<Vec<UeLocation>>(&all).await {
        Ok(list) => {
            tracing::info!(ues = list.len(), "locations fetched from the lr");
            let _ = events.send(Event::Initial(list)).await;
        }
        Err(error) => tracing::warn!(%error, "cannot fetch locations; misses will ask"),
    }
    location
}

/// `location` as an absolute URL (the LR may answer a path).
fn absolute(base: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        location.to_owned()
    } else {
        let origin = base
            .find("://")
            .and_then(|s| base[s + 3..].find('/').map(|p| &base[..s + 3 + p]))
            .unwrap_or(base);
        format!("{origin}/{}", location.trim_start_matches('/'))
    }
}

/// The packet task: owns the port, the G-PDU socket and the cache.
struct Datapath<P> {
    port: P,
    socket: UdpSocket,
    gtpu_peer_port: u16,
    qfi: Qfi,
    cache: LocationCache,
    events: mpsc::Receiver<Event>,
    events_tx: mpsc::Sender<Event>,
    client: sbi::Client,
    lr: String,
}

impl<P: PacketPort> Datapath<P> {
    async fn run(mut self, shutdown: sbi::nf::Shutdown) -> LocationCache {
        let mut buf = vec![0u8; 65_536];
        let mut out = vec![0u8; 65_536 + 64];
        let stop = shutdown.wait();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                biased;
                () = &mut stop => break,
                Some(event) = self.events.recv() => self.on_event(event, &mut out).await,
                r = self.port.recv(&mut buf) => match r {
                    Ok(n) => self.on_packet(&buf[..n], &mut out).await,
                    Err(error) => {
                        tracing::warn!(%error, "tun receive failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
            }
        }
        self.cache
    }

    async fn on_event(&mut self, event: Event, out: &mut [u8]) {
        match event {
            Event::Push { location, applied } => {
                tracing::info!(ue = %location.ue_ipv4, site = %location.site, version = location.version, teid = location.upf_tunnel.teid, upf = %location.upf_tunnel.ipv4, "location pushed");
                self.learn(location, out).await;
                let _ = applied.send(());
            }
            Event::Initial(list) => {
                for location in list {
                    self.learn(location, out).await;
                }
            }
            Event::Answer(ue, Some(location)) => {
                self.learn(location, out).await;
                // An answer about another address than asked leaves the queue: give up on it.
                self.cache.query_failed(ue, Instant::now());
            }
            Event::Answer(ue, None) => {
                let dropped = self.cache.query_failed(ue, Instant::now());
                tracing::debug!(%ue, dropped, "lr does not know the ue");
            }
        }
    }

    async fn learn(&mut self, location: UeLocation, out: &mut [u8]) {
        let ue = location.ue_ipv4;
        let version = location.version;
        match self.cache.learn(location) {
            Learnt::Updated { tunnel, flush } => {
                for packet in flush {
                    let ok = self.send(&packet, tunnel, out).await;
                    self.cache.sent(ue, packet.len(), ok, true);
                }
            }
            Learnt::Stale { cached_version } => {
                tracing::info!(%ue, version, cached_version, "stale location ignored");
            }
        }
    }

    async fn on_packet(&mut self, packet: &[u8], out: &mut [u8]) {
        let Some(ue) = ipv4_destination(packet) else {
            self.cache.non_ipv4();
            return;
        };
        match self.cache.route(ue, packet, Instant::now()) {
            Route::Forward(tunnel) => {
                let ok = self.send(packet, tunnel, out).await;
                self.cache.sent(ue, packet.len(), ok, false);
            }
            Route::QueuedAskLr => {
                let (client, events) = (self.client.clone(), self.events_tx.clone());
                let url = format!("{}{}/ues/{ue}", self.lr, model::ran::lr::BASE);
                tokio::spawn(async move {
                    let answer = match client.get::<UeLocation>(&url).await {
                        Ok(l) => Some(l),
                        Err(error) => {
                            tracing::debug!(%error, %ue, "location query failed");
                            None
                        }
                    };
                    let _ = events.send(Event::Answer(ue, answer)).await;
                });
            }
            Route::Queued | Route::Dropped => {}
        }
    }

    async fn send(&self, packet: &[u8], tunnel: TunnelEndpoint, out: &mut [u8]) -> bool {
        crate::upf::port::send_downlink(
            &self.socket,
            packet,
            tunnel.ipv4,
            tunnel.teid,
            self.qfi,
            self.gtpu_peer_port,
            out,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscription_location_becomes_absolute() {
        let base = "http://10.100.0.10:8001";
        assert_eq!(
            absolute(base, "/lr/v1/subscriptions/3"),
            "http://10.100.0.10:8001/lr/v1/subscriptions/3"
        );
        assert_eq!(
            absolute("http://h:1/prefix", "/lr/v1/subscriptions/3"),
            "http://h:1/lr/v1/subscriptions/3"
        );
        assert_eq!(absolute(base, "http://x/y"), "http://x/y");
    }

    #[test]
    fn config_is_camel_case_and_strict() {
        let text = r#"{"name":"iap-a","site":"a","sbiAddr":"10.100.0.21:8010",
            "lrUrl":"http://10.100.0.10:8001","token":null,"tun":"iap0",
            "tunAddr":"10.255.1.1","uePool":"192.168.1.0/24","qfi":9}"#;
        let c: IapConfig = serde_json::from_str(text).expect("config");
        assert_eq!(c.ue_pool.prefix_len(), 24);
        let bad = text.replace("\"qfi\":9", "\"qfi\":9,\"extra\":1");
        assert!(serde_json::from_str::<IapConfig>(&bad).is_err());
    }
}

//! The Location Registry (LR) of Optimal Routing: which UPF serves each UE address.
//!
//! The SMF `PUT`s a UE's location ([`UeLocation`]) at every PDU session setup and UPF relocation;
//! the LR stamps it with the next version, pushes it to every subscriber (the IAPs) concurrently,
//! each push with a 1 s timeout, and answers only once every push finished or timed out. So when
//! the SMF's `PUT` returns, every reachable IAP sends downlink to the new UPF. A failed push is
//! logged and counted, never fatal. IAPs `GET` a UE on a cache miss. A subscription's
//! `notifyUri` must point inside the deployment (an IPv4 host in the LR's callback networks, its
//! own SBI network unless configured), else it is refused with 400.
//!
//! API under [`lr::BASE`] (`/lr/v1`), bearer token required:
//!
//! | method and path | body | answer |
//! |---|---|---|
//! | `PUT /ues/{ipv4}` | [`UeLocation`] (its `ueIpv4` must be `{ipv4}`) | 200 stored location (new `version`) |
//! | `GET /ues/{ipv4}` | | 200 [`UeLocation`], 404 |
//! | `GET /ues` | | 200 array of [`UeLocation`] |
//! | `DELETE /ues/{ipv4}` | | 204, 404 (no push) |
//! | `POST /subscriptions` | [`LrSubscription`] | 201, `Location: /lr/v1/subscriptions/{id}` |
//! | `DELETE /subscriptions/{id}` | | 204, 404 |
//!
//! [`Registry`] is the state with no I/O; [`LocationRegistry`] owns it and does the pushes; the
//! HTTP handlers only parse and forward to it.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};
use axum::Router;
use model::ran::lr::{self, LrSubscription, UeLocation};
use sbi::nf::{Ready, Shutdown};
use sbi::{ApiError, CallbackNetworks, Json};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// How long one push to a subscriber may take.
pub const PUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// Configuration of the LR process (`lr.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LrConfig {
    /// Where the LR's SBI (HTTP/2 h2c) listens, e.g. `10.100.0.10:8001`.
    pub sbi_addr: SocketAddrV4,
    /// The deployment's bearer token: required on every request and sent with every push.
    pub token: Option<String>,
    /// Networks a subscription's `notifyUri` may point into, e.g. `["10.100.0.0/24"]`; absent or
    /// empty: the LR's own SBI network ([`sbi::CallbackNetworks::or_own`]). Others get 400.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub callback_networks: Vec<ipnet::Ipv4Net>,
}

/// Why the LR stopped.
#[derive(Debug, thiserror::Error)]
pub enum LrError {
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddrV4,
        #[source]
        source: std::io::Error,
    },
    #[error("sbi server failed")]
    Serve(#[source] std::io::Error),
}

/// A request the registry refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("`{0}` is not an IPv4 address")]
    BadAddress(String),
    #[error("path names {path} but the body's ueIpv4 is {body}")]
    AddressMismatch { path: Ipv4Addr, body: Ipv4Addr },
    #[error("no location for UE {0}")]
    UnknownUe(Ipv4Addr),
    #[error("notifyUri refused: {0}")]
    BadNotifyUri(#[source] sbi::CallbackError),
    #[error("no subscription {0}")]
    UnknownSubscription(String),
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        let detail = e.to_string();
        match e {
            RegistryError::BadAddress(_) => ApiError::bad_request(detail, Some("ipv4")),
            RegistryError::AddressMismatch { .. } => ApiError::bad_request(detail, Some("/ueIpv4")),
            RegistryError::BadNotifyUri(_) => ApiError::bad_request(detail, Some("/notifyUri")),
            RegistryError::UnknownUe(_) | RegistryError::UnknownSubscription(_) => {
                ApiError::not_found(detail)
            }
        }
    }
}

/// The registry's state: locations by UE address and push subscriptions. No I/O.
#[derive(Debug)]
pub struct Registry {
    locations: BTreeMap<Ipv4Addr, UeLocation>,
    subscriptions: BTreeMap<String, LrSubscription>,
    /// Last version given to each UE, kept after a delete so versions never go back.
    versions: HashMap<Ipv4Addr, u64>,
    next_subscription: u64,
    /// Where `notifyUri`s may point.
    callbacks: CallbackNetworks,
}

impl Registry {
    /// An empty registry; subscriptions' `notifyUri`s must point into `callbacks`.
    pub fn new(callbacks: CallbackNetworks) -> Self {
        Self {
            locations: BTreeMap::new(),
            subscriptions: BTreeMap::new(),
            versions: HashMap::new(),
            next_subscription: 0,
            callbacks,
        }
    }

    /// Stores `location` for the UE named in the path: its version becomes the previous one plus 1
    /// (1 for a new UE), whatever the body said. Returns the stored location.
    pub fn update(
        &mut self,
        path: Ipv4Addr,
        mut location: UeLocation,
    ) -> Result<UeLocation, RegistryError> {
        if location.ue_ipv4 != path {
            return Err(RegistryError::AddressMismatch {
                path,
                body: location.ue_ipv4,
            });
        }
        let version = self.versions.entry(path).or_insert(0);
        *version += 1;
        location.version = *version;
        self.locations.insert(path, location.clone());
        Ok(location)
    }

    /// The location of `ue`.
    pub fn get(&self, ue: Ipv4Addr) -> Result<&UeLocation, RegistryError> {
        self.locations.get(&ue).ok_or(RegistryError::UnknownUe(ue))
    }

    /// Every location, by address.
    pub fn list(&self) -> Vec<UeLocation> {
        self.locations.values().cloned().collect()
    }

    /// Forgets `ue`.
    pub fn remove(&mut self, ue: Ipv4Addr) -> Result<UeLocation, RegistryError> {
        self.locations
            .remove(&ue)
            .ok_or(RegistryError::UnknownUe(ue))
    }

    /// Adds a push subscription; returns its id.
    pub fn subscribe(&mut self, subscription: LrSubscription) -> Result<String, RegistryError> {
        self.callbacks
            .check(&subscription.notify_uri)
            .map_err(RegistryError::BadNotifyUri)?;
        self.next_subscription += 1;
        let id = format!("sub-{}", self.next_subscription);
        self.subscriptions.insert(id.clone(), subscription);
        Ok(id)
    }

    /// Removes a push subscription.
    pub fn unsubscribe(&mut self, id: &str) -> Result<LrSubscription, RegistryError> {
        self.subscriptions
            .remove(id)
            .ok_or_else(|| RegistryError::UnknownSubscription(id.to_owned()))
    }

    /// Where every change is pushed.
    pub fn notify_uris(&self) -> Vec<String> {
        self.subscriptions
            .values()
            .map(|s| s.notify_uri.clone())
            .collect()
    }
}

/// Push outcomes since start.
#[derive(Debug, Default)]
pub struct PushCounters {
    /// Pushes answered with a success status.
    pub delivered: AtomicU64,
    /// Pushes that failed or timed out.
    pub failed: AtomicU64,
}

/// The component that owns the [`Registry`] and pushes its changes.
#[derive(Debug)]
pub struct LocationRegistry {
    registry: Mutex<Registry>,
    client: sbi::Client,
    /// Push outcomes.
    pub pushes: PushCounters,
}

impl LocationRegistry {
    /// A registry pushing with the deployment's `token` to subscribers inside `callbacks`.
    pub fn new(token: Option<String>, callbacks: CallbackNetworks) -> Self {
        Self {
            registry: Mutex::new(Registry::new(callbacks)),
            client: sbi::Client::new(token, PUSH_TIMEOUT),
            pushes: PushCounters::default(),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Registry) -> R) -> R {
        f(&mut self.registry.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Stores a location and pushes it to every subscriber; returns once all pushes are done.
    pub async fn update(
        &self,
        path: Ipv4Addr,
        location: UeLocation,
    ) -> Result<UeLocation, RegistryError> {
        let (stored, uris) = self.with(|r| Ok((r.update(path, location)?, r.notify_uris())))?;
        tracing::info!(ue = %stored.ue_ipv4, site = %stored.site, dnai = %stored.dnai,
            teid = stored.upf_tunnel.teid, version = stored.version, subscribers = uris.len(),
            "location updated");
        let mut pushes = JoinSet::new();
        for uri in uris {
            let (client, body) = (self.client.clone(), stored.clone());
            pushes.spawn(async move {
                let result =
                    tokio::time::timeout(PUSH_TIMEOUT, client.post_no_content(&uri, &body))
                        .await
                        .map_err(|_| "timed out".to_owned())
                        .and_then(|r| r.map_err(|e| e.to_string()));
                (uri, result)
            });
        }
        while let Some(done) = pushes.join_next().await {
            match done {
                Ok((_, Ok(()))) => {
                    self.pushes.delivered.fetch_add(1, Ordering::Relaxed);
                }
                Ok((uri, Err(error))) => {
                    let failed = self.pushes.failed.fetch_add(1, Ordering::Relaxed) + 1;
                    tracing::warn!(ue = %stored.ue_ipv4, %uri, %error, failed, "push failed");
                }
                Err(error) => {
                    self.pushes.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%error, "push task failed");
                }
            }
        }
        Ok(stored)
    }

    /// The location of `ue`.
    pub fn get(&self, ue: Ipv4Addr) -> Result<UeLocation, RegistryError> {
        self.with(|r| r.get(ue).cloned())
    }

    /// Every location.
    pub fn list(&self) -> Vec<UeLocation> {
        self.with(|r| r.list())
    }

    /// Forgets `ue`.
    pub fn remove(&self, ue: Ipv4Addr) -> Result<(), RegistryError> {
        self.with(|r| r.remove(ue)).map(|l| {
            tracing::info!(ue = %l.ue_ipv4, "location removed");
        })
    }

    /// Adds a push subscription; returns its id.
    pub fn subscribe(&self, subscription: LrSubscription) -> Result<String, RegistryError> {
        let uri = subscription.notify_uri.clone();
        let id = self.with(|r| r.subscribe(subscription))?;
        tracing::info!(subscription = %id, %uri, "subscribed");
        Ok(id)
    }

    /// Removes a push subscription.
    pub fn unsubscribe(&self, id: &str) -> Result<(), RegistryError> {
        let s = self.with(|r| r.unsubscribe(id))?;
        tracing::info!(subscription = %id, uri = %s.notify_uri, "unsubscribed");
        Ok(())
    }
}

/// The LR process: binds `config.sbi_addr` and serves until `shutdown`.
pub async fn run(config: LrConfig, ready: Ready, shutdown: Shutdown) -> Result<(), LrError> {
    let listener = TcpListener::bind(config.sbi_addr)
        .await
        .map_err(|source| LrError::Bind {
            addr: config.sbi_addr,
            source,
        })?;
    run_on(config, listener, ready, shutdown).await
}

/// Serves the LR on an already bound `listener` (tests bind `127.0.0.1:0`); `config.sbi_addr`
/// is not used (the listener's address is the LR's own).
pub async fn run_on(
    config: LrConfig,
    listener: TcpListener,
    ready: Ready,
    shutdown: Shutdown,
) -> Result<(), LrError> {
    let own = match listener.local_addr() {
        Ok(std::net::SocketAddr::V4(a)) => *a.ip(),
        _ => *config.sbi_addr.ip(),
    };
    let callbacks = CallbackNetworks::or_own(&config.callback_networks, own);
    tracing::info!(%own, %callbacks, "location registry listening");
    let token = config.token;
    let registry = Arc::new(LocationRegistry::new(token.clone(), callbacks));
    ready.ready();
    sbi::serve(listener, router(registry), token, shutdown.wait())
        .await
        .map_err(LrError::Serve)
}

/// The LR's HTTP API over `registry`.
pub fn router(registry: Arc<LocationRegistry>) -> Router {
    Router::new()
        .route(
            &format!("{}/ues/{{ipv4}}", lr::BASE),
            get(get_ue).put(put_ue).delete(delete_ue),
        )
        .route(&format!("{}/ues", lr::BASE), get(list_ues))
        .route(&format!("{}/subscriptions", lr::BASE), post(subscribe))
        .route(
            &format!("{}/subscriptions/{{id}}", lr::BASE),
            delete(unsubscribe),
        )
        .with_state(registry)
}

type Lr = State<Arc<LocationRegistry>>;

fn ue_address(text: &str) -> Result<Ipv4Addr, RegistryError> {
    text.parse()
        .map_err(|_| RegistryError::BadAddress(text.to_owned()))
}

async fn put_ue(
    State(lr): Lr,
    Path(ipv4): Path<String>,
    Json(location): Json<UeLocation>,
) -> Result<Json<UeLocation>, ApiError> {
    Ok(Json(lr.update(ue_address(&ipv4)?, location).await?))
}

async fn get_ue(State(lr): Lr, Path(ipv4): Path<String>) -> Result<Json<UeLocation>, ApiError> {
    Ok(Json(lr.get(ue_address(&ipv4)?)?))
}

async fn list_ues(State(lr): Lr) -> Json<Vec<UeLocation>> {
    Json(lr.list())
}

async fn delete_ue(State(lr): Lr, Path(ipv4): Path<String>) -> Result<StatusCode, ApiError> {
    lr.remove(ue_address(&ipv4)?)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn subscribe(
    State(lr): Lr,
    Json(subscription): Json<LrSubscription>,
) -> Result<impl IntoResponse, ApiError> {
    let id = lr.subscribe(subscription.clone())?;
    let location = format!("{}/subscriptions/{id}", lr::BASE);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(subscription),
    ))
}

async fn unsubscribe(State(lr): Lr, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    lr.unsubscribe(&id)?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::ran::TunnelEndpoint;

    fn sbi_net() -> CallbackNetworks {
        CallbackNetworks::new(vec!["10.100.0.0/24".parse().expect("net")])
    }

    fn location(ue: [u8; 4], site: &str, version: u64) -> UeLocation {
        UeLocation {
            ue_ipv4: ue.into(),
            site: site.into(),
            dnai: format!("edge-{site}"),
            upf_tunnel: TunnelEndpoint {
                ipv4: Ipv4Addr::new(10, 90, 0, 2),
                teid: 7,
            },
            version,
        }
    }

    #[test]
    fn versions_increase_whatever_the_body_says() {
        let mut r = Registry::new(sbi_net());
        let ue = Ipv4Addr::new(192, 168, 1, 2);
        assert_eq!(
            r.update(ue, location([192, 168, 1, 2], "a", 40))
                .map(|l| l.version),
            Ok(1)
        );
        assert_eq!(
            r.update(ue, location([192, 168, 1, 2], "b", 0))
                .map(|l| l.version),
            Ok(2)
        );
        assert_eq!(r.get(ue).map(|l| l.site.as_str()), Ok("b"));
        // A delete does not reset the version: a late push of the old one stays older.
        assert!(r.remove(ue).is_ok());
        assert_eq!(r.get(ue), Err(RegistryError::UnknownUe(ue)));
        assert_eq!(
            r.update(ue, location([192, 168, 1, 2], "a", 0))
                .map(|l| l.version),
            Ok(3)
        );
        assert_eq!(r.list().len(), 1);
    }

    #[test]
    fn path_and_body_must_name_the_same_ue() {
        let mut r = Registry::new(sbi_net());
        let path = Ipv4Addr::new(192, 168, 1, 3);
        assert_eq!(
            r.update(path, location([192, 168, 1, 2], "a", 0)),
            Err(RegistryError::AddressMismatch {
                path,
                body: Ipv4Addr::new(192, 168, 1, 2)
            })
        );
        assert!(r.list().is_empty());
    }

    #[test]
    fn subscriptions_come_and_go() {
        let mut r = Registry::new(sbi_net());
        let sub = |uri: &str| LrSubscription {
            notify_uri: uri.into(),
        };
        let a = r.subscribe(sub("http://10.100.0.21:8010/iap/v1/locations"));
        let b = r.subscribe(sub("http://10.100.0.22:8010/iap/v1/locations"));
        assert_eq!((a.as_deref(), b.as_deref()), (Ok("sub-1"), Ok("sub-2")));
        assert_eq!(
            r.subscribe(sub("not a uri")),
            Err(RegistryError::BadNotifyUri(sbi::CallbackError::NotHttp(
                "not a uri".into()
            )))
        );
        // Outside the deployment's SBI network, or a name: refused, naming the address.
        for uri in ["http://8.8.8.8/x", "http://iap.example.invalid/x"] {
            let e = r.subscribe(sub(uri)).expect_err(uri);
            assert!(e.to_string().contains(uri), "{e}");
        }
        assert_eq!(r.notify_uris().len(), 2);
        assert!(r.unsubscribe("sub-1").is_ok());
        assert_eq!(
            r.unsubscribe("sub-1"),
            Err(RegistryError::UnknownSubscription("sub-1".into()))
        );
        assert_eq!(
            r.notify_uris(),
            ["http://10.100.0.22:8010/iap/v1/locations"]
        );
    }
}

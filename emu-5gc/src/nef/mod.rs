//! The NEF stand-in: TS 29.522 TrafficInfluence for AFs that are not trusted (the SMOs), on the
//! SBI beside the SMF.
//!
//! | method and path (under `/3gpp-traffic-influence/v1`) | body | answer |
//! |---|---|---|
//! | `POST /{afId}/subscriptions` | `TrafficInfluSub` | 201 + `Location`, the body with `self` |
//! | `GET /{afId}/subscriptions` | | 200 `[TrafficInfluSub]` |
//! | `GET /{afId}/subscriptions/{subscriptionId}` | | 200 `TrafficInfluSub` |
//! | `PUT /{afId}/subscriptions/{subscriptionId}` | `TrafficInfluSub` | 200 |
//! | `PATCH /{afId}/subscriptions/{subscriptionId}` | `TrafficInfluSubPatch` (merge patch) | 200 |
//! | `DELETE /{afId}/subscriptions/{subscriptionId}` | | 204 |
//! | `POST /{afId}/subscriptions/{subscriptionId}/acks/{ackId}` (an `afAckUri`) | `AfAckInfo` | 204 |
//!
//! and, for the SMF, `POST /nef-callbacks/v1/notifications/{subscriptionId}`
//! (`NsmfEventExposureNotification`, 204).
//!
//! **Mapping (directly to the SMF, no PCF process).** A subscription becomes TS 29.512
//! `TrafficControlData` that the NEF puts at the SMF's N7 stand-in
//! (`PUT {smf}/n7-lite/v1/traffic-controls/{subscriptionId}?anyUeInd=true|ueIpv4Addr=A|gpsi=G`):
//! `routeToLocs` from `trafficRoutes`, and an `upPathChgEvent` whose `notificationUri` is the
//! NEF's callback, `notifCorreId` the subscription id, `dnaiChgType` and `afAckInd` the AF's. The
//! NEF plays the PCF's part of the chain (AF → NEF → UDR → PCF → SMF in TS 23.502 §4.3.6): a PCF
//! would only relay this traffic control data (there are no other policies in the testbed), and
//! one process less keeps a restart's cases few. The SMF notifies the NEF (TS 29.508, with
//! `ackUri` when the AF acknowledges); the NEF POSTs a TS 29.522 `EventNotification` to the AF's
//! `notificationDestination`, with an `afAckUri` of its own; the AF's `AfAckInfo` there goes on to
//! the SMF's `ackUri` as `AckOfNotify`.
//!
//! **Who may call.** Every SBI caller holds the deployment's token (per-NF tokens are a later
//! issue), so the NEF checks what it can: `afId` must be one of the AFs of its config (`afIds`,
//! else 403), and a subscription is a resource under its creator's `afId` only (under any other
//! it is 404, as is its `afAckUri`). [`Nef::authorize`] is the one place a token's identity will
//! be compared with `afId`.
//!
//! Subscriptions are kept in `stateDir` ([`sbi::Store`]); a restarted NEF puts every one at the
//! SMF again. Acknowledgements in flight are not kept (the SMF's hold runs out instead).

pub mod api;
pub mod influence;

use std::collections::BTreeMap;
use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use model::nsmf_event_exposure::{AckOfNotify, NsmfEventExposureNotification};
use model::sm_policy::N7_LITE_BASE;
use model::traffic_influence::{AfAckInfo, TrafficInfluSub, TrafficInfluSubPatch, API_ROOT_PATH};
use sbi::nf::{Ready, Shutdown};
use sbi::{CallbackNetworks, Store, StoreError};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use self::influence::{InfluenceError, Influences, StoredInfluence};

/// Path prefix of the NEF's callbacks for the SMF.
pub const CALLBACK_BASE: &str = "/nef-callbacks/v1";
/// How long the SMF may take to take or drop a traffic control.
pub const SMF_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one notification to an AF may take.
pub const NOTIFICATION_TIMEOUT: Duration = Duration::from_secs(1);
/// How long an acknowledgement is tried at the SMF (it may be restarting; its hold lasts 2 s).
pub const ACK_FORWARD_WITHIN: Duration = Duration::from_millis(1500);
/// Acknowledgements remembered for repeats (the oldest go first).
pub const REMEMBERED_ACKS: usize = 1024;

const SUBSCRIPTIONS: &str = "subscriptions";
const META: &str = "meta";
const COUNTERS: &str = "counters";

/// Configuration of the NEF process (`nef.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NefConfig {
    /// Where the SBI (HTTP/2 h2c) listens, e.g. `10.100.0.10:8002`.
    pub sbi_addr: SocketAddrV4,
    /// The deployment's bearer token: required on every request and sent on every call.
    pub token: Option<String>,
    /// Base URL of the SMF, e.g. `http://10.100.0.10:8000`.
    pub smf_url: String,
    /// The AFs of the deployment (`afId`s, e.g. `smo-x`); absent or empty: any `afId`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub af_ids: Vec<String>,
    /// Networks a `notificationDestination` may point into; absent or empty: the NEF's own SBI
    /// network ([`sbi::CallbackNetworks::or_own`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub callback_networks: Vec<ipnet::Ipv4Net>,
    /// Where the subscriptions are kept, e.g. `/run/testbed/NAME/nef`; absent: nothing outlives
    /// the process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<PathBuf>,
}

/// Why the NEF stopped (or did not start).
#[derive(Debug, thiserror::Error)]
pub enum NefStartError {
    #[error("bad config: {0}")]
    Config(String),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddrV4,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot take up the nef's state")]
    Store(#[source] StoreError),
    #[error("sbi server failed")]
    Serve(#[source] std::io::Error),
}

/// Why a request to the NEF failed.
#[derive(Debug, thiserror::Error)]
pub enum NefError {
    #[error(transparent)]
    Influence(#[from] InfluenceError),
    #[error("af {0} is not an af of this deployment")]
    UnknownAf(String),
    #[error("the smf did not take the traffic control of {subscription_id}")]
    Smf {
        subscription_id: String,
        #[source]
        source: sbi::ClientError,
    },
    #[error("no acknowledgement {0} is awaited here")]
    UnknownAck(String),
    #[error("notification for {subscription_id} carries notifId {notif_id}")]
    WrongNotifId {
        subscription_id: String,
        notif_id: String,
    },
    #[error("the smf did not take the acknowledgement")]
    AckForward(#[source] sbi::ClientError),
}

/// Counters of the NEF.
#[derive(Debug, Default)]
pub struct NefCounters {
    pub notifications_delivered: AtomicU64,
    pub notifications_failed: AtomicU64,
    pub acks_forwarded: AtomicU64,
}

/// The id counter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Counters {
    last_subscription: u64,
}

/// An acknowledgement the NEF hands on to the SMF.
#[derive(Debug, Clone)]
struct ForwardedAck {
    af_id: String,
    subscription_id: String,
    smf_ack_uri: String,
    ack: AckOfNotify,
}

/// The NEF.
#[derive(Debug)]
pub struct Nef {
    config: NefConfig,
    api_root: String,
    smf: sbi::Client,
    notifier: sbi::Client,
    store: Store,
    influences: Mutex<Influences>,
    acks: Mutex<BTreeMap<String, ForwardedAck>>,
    next_ack: AtomicU64,
    /// What happened.
    pub counters: NefCounters,
}

impl Nef {
    /// A NEF whose SBI is at `api_root`; its state in `config.state_dir`, if any, taken up.
    pub fn open(config: NefConfig, api_root: String) -> Result<Self, NefStartError> {
        let own = *config.sbi_addr.ip();
        let callbacks = CallbackNetworks::or_own(&config.callback_networks, own);
        let store = match &config.state_dir {
            Some(dir) => Store::open(dir, &[SUBSCRIPTIONS, META]).map_err(NefStartError::Store)?,
            None => Store::memory(),
        };
        let counters: Counters = store
            .get(META, COUNTERS)
            .map_err(NefStartError::Store)?
            .unwrap_or_default();
        let stored: Vec<StoredInfluence> =
            store.all(SUBSCRIPTIONS).map_err(NefStartError::Store)?;
        Ok(Self {
            smf: sbi::Client::new(config.token.clone(), SMF_TIMEOUT),
            notifier: sbi::Client::new(config.token.clone(), NOTIFICATION_TIMEOUT),
            influences: Mutex::new(Influences::restore(
                callbacks,
                counters.last_subscription,
                stored,
            )),
            store,
            acks: Mutex::new(BTreeMap::new()),
            next_ack: AtomicU64::new(1),
            api_root: api_root.trim_end_matches('/').to_owned(),
            counters: NefCounters::default(),
            config,
        })
    }

    fn influences(&self) -> std::sync::MutexGuard<'_, Influences> {
        self.influences
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn acks(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, ForwardedAck>> {
        self.acks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the caller may act as `af_id`. Today every caller holds the deployment's token,
    /// so this checks that `af_id` is an AF of the deployment; with per-NF tokens the token's
    /// identity is compared with `af_id` here.
    pub fn authorize(&self, af_id: &str) -> Result<(), NefError> {
        if self.config.af_ids.is_empty() || self.config.af_ids.iter().any(|a| a == af_id) {
            Ok(())
        } else {
            Err(NefError::UnknownAf(af_id.to_owned()))
        }
    }

    fn subscription_uri(&self, af_id: &str, id: &str) -> String {
        format!(
            "{}{API_ROOT_PATH}/{af_id}/subscriptions/{id}",
            self.api_root
        )
    }

    fn persist(&self, result: Result<(), StoreError>) {
        if let Err(error) = result {
            tracing::error!(error = %sbi::error_chain(&error), "cannot write the nef's state");
        }
    }

    /// Puts subscription `id`'s traffic control data at the SMF.
    async fn install(&self, id: &str, sub: &TrafficInfluSub) -> Result<(), NefError> {
        let callback = format!("{}{CALLBACK_BASE}/notifications/{id}", self.api_root);
        let data = influence::traffic_control(id, sub, callback);
        let url = format!(
            "{}{N7_LITE_BASE}/traffic-controls/{id}?{}",
            self.config.smf_url.trim_end_matches('/'),
            influence::ue_query(sub)
        );
        self.smf
            .send(reqwest::Method::PUT, &url, Some(&data))
            .await
            .map(drop)
            .map_err(|source| NefError::Smf {
                subscription_id: id.to_owned(),
                source,
            })
    }

    fn save(&self, entry: &StoredInfluence) {
        self.persist(self.store.put(SUBSCRIPTIONS, &entry.subscription_id, entry));
    }

    /// Creates `af_id`'s subscription `sub`: the SMF has its traffic control before it exists.
    pub async fn create(
        &self,
        af_id: &str,
        mut sub: TrafficInfluSub,
    ) -> Result<TrafficInfluSub, NefError> {
        self.authorize(af_id)?;
        let id = self.influences().admit(&sub)?;
        let last = self.influences().last_id();
        self.persist(self.store.put(
            META,
            COUNTERS,
            &Counters {
                last_subscription: last,
            },
        ));
        sub.self_link = Some(self.subscription_uri(af_id, &id));
        self.install(&id, &sub).await?;
        let entry = StoredInfluence {
            af_id: af_id.to_owned(),
            subscription_id: id.clone(),
            subscription: sub.clone(),
        };
        self.save(&entry);
        self.influences().insert(entry);
        tracing::info!(af_id, subscription_id = %id, ack = sub.af_ack_ind.unwrap_or(false),
            destination = ?sub.notification_destination, "traffic influence subscription created");
        Ok(sub)
    }

    /// `af_id`'s subscriptions.
    pub fn list(&self, af_id: &str) -> Result<Vec<TrafficInfluSub>, NefError> {
        self.authorize(af_id)?;
        Ok(self.influences().of(af_id))
    }

    /// `af_id`'s subscription `id`.
    pub fn get(&self, af_id: &str, id: &str) -> Result<TrafficInfluSub, NefError> {
        self.authorize(af_id)?;
        Ok(self.influences().get(af_id, id)?.subscription.clone())
    }

    /// Replaces `af_id`'s subscription `id` with `sub`.
    pub async fn replace(
        &self,
        af_id: &str,
        id: &str,
        mut sub: TrafficInfluSub,
    ) -> Result<TrafficInfluSub, NefError> {
        self.authorize(af_id)?;
        self.influences().check_replacement(af_id, id, &sub)?;
        sub.self_link = Some(self.subscription_uri(af_id, id));
        self.install(id, &sub).await?;
        let entry = StoredInfluence {
            af_id: af_id.to_owned(),
            subscription_id: id.to_owned(),
            subscription: sub.clone(),
        };
        self.save(&entry);
        self.influences().insert(entry);
        tracing::info!(
            af_id,
            subscription_id = id,
            "traffic influence subscription replaced"
        );
        Ok(sub)
    }

    /// Applies `patch` to `af_id`'s subscription `id`.
    pub async fn patch(
        &self,
        af_id: &str,
        id: &str,
        patch: &TrafficInfluSubPatch,
    ) -> Result<TrafficInfluSub, NefError> {
        let current = self.get(af_id, id)?;
        self.replace(af_id, id, patch.apply(&current)).await
    }

    /// Deletes `af_id`'s subscription `id` (and its traffic control at the SMF).
    pub async fn delete(&self, af_id: &str, id: &str) -> Result<(), NefError> {
        self.authorize(af_id)?;
        self.influences().get(af_id, id)?;
        let url = format!(
            "{}{N7_LITE_BASE}/traffic-controls/{id}",
            self.config.smf_url.trim_end_matches('/')
        );
        match self.smf.delete(&url).await {
            Ok(()) | Err(sbi::ClientError::Status { status: 404, .. }) => {}
            Err(source) => {
                return Err(NefError::Smf {
                    subscription_id: id.to_owned(),
                    source,
                })
            }
        }
        self.influences().remove(af_id, id)?;
        self.persist(self.store.delete(SUBSCRIPTIONS, id));
        tracing::info!(
            af_id,
            subscription_id = id,
            "traffic influence subscription deleted"
        );
        Ok(())
    }

    /// Puts every subscription's traffic control at the SMF again (after a restart), each
    /// tried every second until the SMF takes it.
    pub async fn reconcile(&self) {
        let all: Vec<StoredInfluence> = self.influences().all().cloned().collect();
        for entry in all {
            loop {
                let still = self
                    .influences()
                    .by_id(&entry.subscription_id)
                    .is_some_and(|e| e == &entry);
                if !still {
                    break; // changed or deleted meanwhile: that call installed it
                }
                match self
                    .install(&entry.subscription_id, &entry.subscription)
                    .await
                {
                    Ok(()) => break,
                    Err(error) => {
                        tracing::warn!(subscription_id = %entry.subscription_id,
                            error = %sbi::error_chain(&error), "traffic control not at the smf yet");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }
    }

    /// The SMF's notification for subscription `id`: each `UP_PATH_CH` event goes to the AF as a
    /// TS 29.522 notification (with an `afAckUri` when the SMF gave an `ackUri`).
    pub async fn on_smf_notification(
        &self,
        id: &str,
        n: NsmfEventExposureNotification,
    ) -> Result<(), NefError> {
        let entry =
            self.influences()
                .by_id(id)
                .cloned()
                .ok_or_else(|| InfluenceError::NotFound {
                    af_id: "(any)".into(),
                    subscription_id: id.to_owned(),
                })?;
        if n.notif_id.as_str() != id {
            return Err(NefError::WrongNotifId {
                subscription_id: id.to_owned(),
                notif_id: n.notif_id.to_string(),
            });
        }
        let Some(destination) = entry.subscription.notification_destination.clone() else {
            return Ok(()); // no events subscribed: nothing to tell
        };
        for e in &n.event_notifs {
            let af_ack_uri = n.ack_uri.as_ref().map(|smf_ack_uri| {
                let ack_id = format!("ack-{}", self.next_ack.fetch_add(1, Ordering::Relaxed));
                let mut acks = self.acks();
                while acks.len() >= REMEMBERED_ACKS {
                    acks.pop_first();
                }
                acks.insert(
                    ack_id.clone(),
                    ForwardedAck {
                        af_id: entry.af_id.clone(),
                        subscription_id: id.to_owned(),
                        smf_ack_uri: smf_ack_uri.clone(),
                        ack: AckOfNotify {
                            notif_id: n.notif_id.clone(),
                            ack_result: model::traffic_influence::AfResultInfo::new(
                                model::traffic_influence::AfResultStatus::Success,
                            ),
                            supi: e.supi.clone(),
                            gpsi: e.gpsi.clone(),
                        },
                    },
                );
                format!("{}/acks/{ack_id}", self.subscription_uri(&entry.af_id, id))
            });
            let Some(body) = influence::af_notification(&entry.subscription, e, af_ack_uri) else {
                continue;
            };
            let sent = self
                .notifier
                .send(reqwest::Method::POST, &destination, Some(&body))
                .await;
            match sent {
                Ok(_) => {
                    self.counters
                        .notifications_delivered
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::info!(subscription_id = id, %destination, kind = %body.dnai_chg_type,
                        ack = body.af_ack_uri.is_some(), "af notified");
                }
                Err(error) => {
                    self.counters
                        .notifications_failed
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(subscription_id = id, %destination, error = %sbi::error_chain(&error),
                        "af notification failed");
                }
            }
        }
        Ok(())
    }

    /// The AF's acknowledgement at `afAckUri`: handed on to the SMF's `ackUri` as `AckOfNotify`
    /// (tried for [`ACK_FORWARD_WITHIN`] while the SMF does not answer).
    pub async fn acknowledge(
        &self,
        af_id: &str,
        id: &str,
        ack_id: &str,
        info: AfAckInfo,
    ) -> Result<(), NefError> {
        self.authorize(af_id)?;
        let forwarded = self
            .acks()
            .get(ack_id)
            .filter(|a| a.af_id == af_id && a.subscription_id == id)
            .cloned()
            .ok_or_else(|| NefError::UnknownAck(ack_id.to_owned()))?;
        let ack = AckOfNotify {
            ack_result: info.ack_result,
            gpsi: info.gpsi.or(forwarded.ack.gpsi.clone()),
            ..forwarded.ack
        };
        let deadline = tokio::time::Instant::now() + ACK_FORWARD_WITHIN;
        let mut wait = Duration::from_millis(50);
        loop {
            let sent = self
                .smf
                .send(reqwest::Method::POST, &forwarded.smf_ack_uri, Some(&ack))
                .await;
            match sent {
                Ok(_) => {
                    self.counters.acks_forwarded.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(af_id, subscription_id = id, ack_id,
                        af_status = %ack.ack_result.af_status, "af acknowledgement handed on to the smf");
                    return Ok(());
                }
                Err(sbi::ClientError::Transport { .. })
                    if tokio::time::Instant::now() + wait < deadline =>
                {
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
                Err(e) => return Err(NefError::AckForward(e)),
            }
        }
    }
}

/// The NEF process: binds `config.sbi_addr`, serves until `shutdown`.
pub async fn run(config: NefConfig, ready: Ready, shutdown: Shutdown) -> Result<(), NefStartError> {
    let listener =
        TcpListener::bind(config.sbi_addr)
            .await
            .map_err(|source| NefStartError::Bind {
                addr: config.sbi_addr,
                source,
            })?;
    run_on(config, listener, ready, shutdown).await
}

/// Runs the NEF on an already bound listener (tests bind `127.0.0.1:0`).
pub async fn run_on(
    config: NefConfig,
    listener: TcpListener,
    ready: Ready,
    shutdown: Shutdown,
) -> Result<(), NefStartError> {
    if reqwest::Url::parse(&config.smf_url).is_err() {
        return Err(NefStartError::Config(format!(
            "smfUrl `{}` is not a URL",
            config.smf_url
        )));
    }
    let api_root = match listener.local_addr() {
        Ok(a) => format!("http://{a}"),
        Err(_) => format!("http://{}", config.sbi_addr),
    };
    let token = config.token.clone();
    let nef = Arc::new(Nef::open(config, api_root.clone())?);
    tracing::info!(%api_root, subscriptions = nef.influences().all().count(), "nef starting");
    let reconcile = tokio::spawn({
        let nef = nef.clone();
        async move { nef.reconcile().await }
    });
    ready.ready();
    let result = sbi::serve(listener, api::router(nef), token, shutdown.wait()).await;
    reconcile.abort();
    result.map_err(NefStartError::Serve)
}

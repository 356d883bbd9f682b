//! The SMF component: owns the session table and the subscriptions and drives the procedures'
//! I/O (PFCP to UPFs, `PUT` to the LR, notifications to AFs). The HTTP handlers only parse and
//! forward to it.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use model::common::RouteToLocation;
use model::nsmf_event_exposure::{NsmfEventExposure, SubscriptionId};
use model::ran::lr::{self, UeLocation};
use model::ran::n2::{
    PathSwitchAck, PathSwitchRequest, PduSessionSetupRequest, PduSessionSetupResponse,
};
use model::ran::TunnelEndpoint;
use model::timeline::Stopwatch;
use tokio::task::JoinSet;

use super::events::{SubscriptionError, Subscriptions, Timing, UpPathChange};
use super::n4::{N4Error, N4};
use super::session::{self, AllocationError, Session, SessionTable, UpfTunnels, PDU_SESSION_ID};
use super::{SmfConfig, UpfPeer};

/// How long one notification to a subscriber may take.
pub const NOTIFICATION_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the LR may take to answer a `PUT` (it pushes to every IAP first, 1 s each at most).
pub const LR_TIMEOUT: Duration = Duration::from_secs(3);

/// Why an N2 procedure failed.
#[derive(Debug, thiserror::Error)]
pub enum ProcedureError {
    #[error("unknown gnb {0}")]
    UnknownGnb(String),
    #[error("no upf serves site {site} of {gnb}")]
    NoUpf { gnb: String, site: String },
    #[error("no pdu session for {0}")]
    UnknownUe(String),
    #[error("{supi} has address {has}, not {asked}")]
    AddressMismatch {
        supi: String,
        has: Ipv4Addr,
        asked: Ipv4Addr,
    },
    #[error(transparent)]
    Allocation(#[from] AllocationError),
    #[error("pfcp session {procedure} at {upf} failed")]
    Pfcp {
        procedure: &'static str,
        upf: String,
        #[source]
        source: N4Error,
    },
    #[error("location registry update failed")]
    Lr(#[source] sbi::ClientError),
}

/// Counters of the SMF's procedures.
#[derive(Debug, Default)]
pub struct SmfCounters {
    /// Notifications answered with a success status.
    pub notifications_delivered: AtomicU64,
    /// Notifications that failed or timed out.
    pub notifications_failed: AtomicU64,
    /// PFCP requests whose failure did not stop a procedure (clean-up, source deletion).
    pub pfcp_cleanup_failures: AtomicU64,
}

/// The SMF.
#[derive(Debug)]
pub struct Smf {
    config: SmfConfig,
    n4: Arc<N4>,
    lr: sbi::Client,
    notifier: sbi::Client,
    sessions: Mutex<SessionTable>,
    subscriptions: Mutex<Subscriptions>,
    /// One procedure at a time per UE.
    ue_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// What happened.
    pub counters: SmfCounters,
}

impl Smf {
    /// An SMF speaking PFCP through `n4`.
    pub fn new(config: SmfConfig, n4: Arc<N4>) -> Self {
        Self {
            lr: sbi::Client::new(config.token.clone(), LR_TIMEOUT),
            notifier: sbi::Client::new(config.token.clone(), NOTIFICATION_TIMEOUT),
            sessions: Mutex::new(SessionTable::new(config.ue_pool)),
            subscriptions: Mutex::new(Subscriptions::new(sbi::CallbackNetworks::or_own(
                &config.callback_networks,
                *config.sbi_addr.ip(),
            ))),
            ue_locks: Mutex::new(HashMap::new()),
            counters: SmfCounters::default(),
            config,
            n4,
        }
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, SessionTable> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn subscriptions(&self) -> std::sync::MutexGuard<'_, Subscriptions> {
        self.subscriptions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    async fn lock_ue(&self, supi: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = self
            .ue_locks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(supi.to_owned())
            .or_default()
            .clone();
        lock.lock_owned().await
    }

    /// The UPF serving `gnb`'s site.
    fn upf_for(&self, gnb: &str) -> Result<&UpfPeer, ProcedureError> {
        let site = self
            .config
            .gnbs
            .iter()
            .find(|g| g.name == gnb)
            .map(|g| &g.site)
            .ok_or_else(|| ProcedureError::UnknownGnb(gnb.to_owned()))?;
        self.config
            .upfs
            .iter()
            .find(|u| &u.site == site)
            .ok_or_else(|| ProcedureError::NoUpf {
                gnb: gnb.to_owned(),
                site: site.clone(),
            })
    }

    fn upf_named(&self, name: &str) -> Option<&UpfPeer> {
        self.config.upfs.iter().find(|u| u.name == name)
    }

    fn location(&self, ue: Ipv4Addr, upf: &UpfPeer, tunnels: &UpfTunnels) -> UeLocation {
        UeLocation {
            ue_ipv4: ue,
            site: upf.site.clone(),
            dnai: upf.dnai.clone(),
            upf_tunnel: tunnels.downlink,
            version: 0,
        }
    }

    async fn put_location(&self, location: &UeLocation) -> Result<UeLocation, ProcedureError> {
        let url = format!(
            "{}{}/ues/{}",
            self.config.lr_url.trim_end_matches('/'),
            lr::BASE,
            location.ue_ipv4
        );
        self.lr
            .put(&url, location)
            .await
            .map_err(ProcedureError::Lr)
    }

    async fn establish(
        &self,
        upf: &UpfPeer,
        ue: Ipv4Addr,
        tunnels: &UpfTunnels,
        gnb: TunnelEndpoint,
    ) -> Result<(u64, u64), ProcedureError> {
        let cp_seid = self.sessions().allocate_seid();
        let request = session::establishment_request(self.n4.node(), cp_seid, ue, tunnels, gnb);
        let up_seid = self
            .n4
            .establish(upf.pfcp, request)
            .await
            .map_err(|source| ProcedureError::Pfcp {
                procedure: "establishment",
                upf: upf.name.clone(),
                source,
            })?;
        Ok((cp_seid, up_seid))
    }

    /// Deletes a PFCP session whose failure must not stop the procedure; logs and counts it.
    async fn delete_quietly(&self, upf: &UpfPeer, up_seid: u64, why: &str) -> bool {
        match self
            .n4
            .delete(upf.pfcp, session::deletion_request(up_seid))
            .await
        {
            Ok(()) => true,
            Err(error) => {
                self.counters
                    .pfcp_cleanup_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(upf = %upf.name, up_seid, %error, why, "pfcp session deletion failed");
                false
            }
        }
    }

    /// PDU Session Resource Setup: a session at the UPF of the gNB's site, the UE's address in
    /// the LR. A UE that already has a session gets the same address; its old session goes.
    pub async fn setup_pdu_session(
        &self,
        request: PduSessionSetupRequest,
    ) -> Result<PduSessionSetupResponse, ProcedureError> {
        let _ue = self.lock_ue(&request.supi).await;
        let upf = self.upf_for(&request.gnb)?;
        let (ue_ipv4, previous) = {
            let mut table = self.sessions();
            (
                table.address_for(&request.supi)?,
                table.get(&request.supi).cloned(),
            )
        };
        if let Some(old) = &previous {
            if let Some(old_upf) = self.upf_named(&old.upf) {
                tracing::info!(supi = %old.supi, upf = %old.upf, "replacing the ue's previous pdu session");
                self.delete_quietly(old_upf, old.up_seid, "re-attach").await;
            }
        }
        let result = self.setup_at(upf, &request, ue_ipv4).await;
        let mut table = self.sessions();
        if let Some(old) = &previous {
            table.release_tunnels(&old.upf, &old.tunnels);
        }
        match result {
            Ok(session) => {
                let response = PduSessionSetupResponse {
                    ue_ipv4,
                    pdu_session_id: PDU_SESSION_ID,
                    qfi: self.config.qfi,
                    upf_tunnel: session.tunnels.uplink,
                };
                tracing::info!(supi = %session.supi, ue = %ue_ipv4, upf = %session.upf, gnb = %session.gnb,
                    ul_teid = session.tunnels.uplink.teid, dl_teid = session.tunnels.downlink.teid,
                    "pdu session set up");
                table.insert(session);
                Ok(response)
            }
            Err(error) => {
                if previous.is_some() {
                    // The old session was deleted: the UE has none now.
                    table.remove(&request.supi);
                }
                table.release_address(&request.supi);
                Err(error)
            }
        }
    }

    async fn setup_at(
        &self,
        upf: &UpfPeer,
        request: &PduSessionSetupRequest,
        ue_ipv4: Ipv4Addr,
    ) -> Result<Session, ProcedureError> {
        let tunnels = self
            .sessions()
            .allocate_tunnels(&upf.name, upf.n3, upf.n9)?;
        let (cp_seid, up_seid) = match self
            .establish(upf, ue_ipv4, &tunnels, request.gnb_tunnel)
            .await
        {
            Ok(seids) => seids,
            Err(e) => {
                self.sessions().release_tunnels(&upf.name, &tunnels);
                return Err(e);
            }
        };
        if let Err(e) = self
            .put_location(&self.location(ue_ipv4, upf, &tunnels))
            .await
        {
            self.delete_quietly(upf, up_seid, "lr update failed").await;
            self.sessions().release_tunnels(&upf.name, &tunnels);
            return Err(e);
        }
        Ok(Session {
            supi: request.supi.clone(),
            ue_ipv4,
            upf: upf.name.clone(),
            gnb: request.gnb.clone(),
            gnb_tunnel: request.gnb_tunnel,
            tunnels,
            cp_seid,
            up_seid,
        })
    }

    /// Path Switch after an Xn handover: a UPF relocation if the target gNB's site has another
    /// UPF (ARCHITECTURE.md, handover step 5), else a downlink switch at the same UPF.
    pub async fn path_switch(
        &self,
        request: PathSwitchRequest,
    ) -> Result<PathSwitchAck, ProcedureError> {
        let _ue = self.lock_ue(&request.supi).await;
        let session = self
            .sessions()
            .get(&request.supi)
            .cloned()
            .ok_or_else(|| ProcedureError::UnknownUe(request.supi.clone()))?;
        if session.ue_ipv4 != request.ue_ipv4 {
            return Err(ProcedureError::AddressMismatch {
                supi: request.supi,
                has: session.ue_ipv4,
                asked: request.ue_ipv4,
            });
        }
        let target = self.upf_for(&request.gnb)?;
        let source = self
            .upf_named(&session.upf)
            .ok_or_else(|| ProcedureError::NoUpf {
                gnb: session.gnb.clone(),
                site: session.upf.clone(),
            })?;
        let mut clock = Stopwatch::start();
        let moved = if target.name == source.name {
            self.switch_downlink(&mut clock, source, &session, &request)
                .await?
        } else {
            self.relocate(&mut clock, source, target, &session, &request)
                .await?
        };
        let ack = PathSwitchAck {
            upf_tunnel: moved.tunnels.uplink,
            upf: moved.upf.clone(),
            timeline: clock.into_steps(),
        };
        tracing::info!(supi = %moved.supi, ue = %moved.ue_ipv4, upf = %moved.upf, gnb = %moved.gnb,
            steps = ?ack.timeline.iter().map(|s| (s.step.as_str(), s.took_us)).collect::<Vec<_>>(),
            "path switched");
        self.sessions().insert(moved);
        Ok(ack)
    }

    async fn switch_downlink(
        &self,
        clock: &mut Stopwatch,
        upf: &UpfPeer,
        session: &Session,
        request: &PathSwitchRequest,
    ) -> Result<Session, ProcedureError> {
        let modify = self.n4.modify(
            upf.pfcp,
            session::switch_downlink_request(session.up_seid, request.gnb_tunnel),
        );
        clock
            .time(
                format!("pfcp session modification (end marker) at {}", upf.name),
                modify,
            )
            .await
            .map_err(|source| ProcedureError::Pfcp {
                procedure: "modification",
                upf: upf.name.clone(),
                source,
            })?;
        Ok(Session {
            gnb: request.gnb.clone(),
            gnb_tunnel: request.gnb_tunnel,
            ..session.clone()
        })
    }

    async fn relocate(
        &self,
        clock: &mut Stopwatch,
        source: &UpfPeer,
        target: &UpfPeer,
        session: &Session,
        request: &PathSwitchRequest,
    ) -> Result<Session, ProcedureError> {
        let route = |u: &UpfPeer| RouteToLocation::new(u.dnai.as_str(), u.n9, wire::gtpu::PORT);
        let change = UpPathChange {
            supi: session.supi.clone(),
            pdu_session_id: PDU_SESSION_ID,
            ue_ipv4: session.ue_ipv4,
            source: route(source),
            target: route(target),
        };
        tracing::info!(supi = %session.supi, ue = %session.ue_ipv4, source = %source.name,
            target = %target.name, "upf relocation started");

        // 1. EARLY notifications, before the new path exists.
        self.notify_step(clock, Timing::Early, &change).await;

        // 2. Session at the target UPF, downlink to the target gNB.
        let tunnels = self
            .sessions()
            .allocate_tunnels(&target.name, target.n3, target.n9)?;
        let establish = self.establish(target, session.ue_ipv4, &tunnels, request.gnb_tunnel);
        let seids = clock
            .time(
                format!("pfcp session establishment at {}", target.name),
                establish,
            )
            .await;
        let (cp_seid, up_seid) = match seids {
            Ok(seids) => seids,
            Err(e) => {
                self.sessions().release_tunnels(&target.name, &tunnels);
                return Err(e);
            }
        };
        let undo_target = |why: &'static str| async move {
            self.delete_quietly(target, up_seid, why).await;
            self.sessions().release_tunnels(&target.name, &tunnels);
        };

        // 3. The LR (and through it every IAP) sends downlink to the target UPF.
        let location = self.location(session.ue_ipv4, target, &tunnels);
        let put = self.put_location(&location);
        let lr_step = format!("lr update (site {}, after pushes to iaps)", target.site);
        if let Err(e) = clock.time(lr_step, put).await {
            self.restore_location(source, session).await;
            undo_target("lr update failed").await;
            return Err(e);
        }

        // 4. End Marker from the source UPF to the source gNB; late downlink to the target gNB.
        let modify = self.n4.modify(
            source.pfcp,
            session::switch_downlink_request(session.up_seid, request.gnb_tunnel),
        );
        let step = format!("pfcp session modification (end marker) at {}", source.name);
        if let Err(source_error) = clock.time(step, modify).await {
            self.restore_location(source, session).await;
            undo_target("source modification failed").await;
            return Err(ProcedureError::Pfcp {
                procedure: "modification",
                upf: source.name.clone(),
                source: source_error,
            });
        }

        // 5. The source session goes. The new path works already: a failure is logged only.
        let delete = self.delete_quietly(source, session.up_seid, "relocation");
        let deleted = clock
            .time(format!("pfcp session deletion at {}", source.name), delete)
            .await;
        if deleted {
            self.sessions()
                .release_tunnels(&source.name, &session.tunnels);
        }

        // 6. LATE notifications, after the new path is in use.
        self.notify_step(clock, Timing::Late, &change).await;

        Ok(Session {
            supi: session.supi.clone(),
            ue_ipv4: session.ue_ipv4,
            upf: target.name.clone(),
            gnb: request.gnb.clone(),
            gnb_tunnel: request.gnb_tunnel,
            tunnels,
            cp_seid,
            up_seid,
        })
    }

    /// Puts the UE's source location back in the LR after a failed relocation (best effort).
    async fn restore_location(&self, source: &UpfPeer, session: &Session) {
        let location = self.location(session.ue_ipv4, source, &session.tunnels);
        if let Err(error) = self.put_location(&location).await {
            tracing::warn!(ue = %session.ue_ipv4, %error, "cannot restore the source location in the lr");
        }
    }

    async fn notify_step(&self, clock: &mut Stopwatch, timing: Timing, change: &UpPathChange) {
        let deliveries = self
            .subscriptions()
            .up_path_change(timing, change, SystemTime::now());
        let label = match timing {
            Timing::Early => "early",
            Timing::Late => "late",
        };
        let step = format!(
            "{label} up_path_ch notifications ({} subscriptions)",
            deliveries.len()
        );
        clock.time(step, self.notify(deliveries)).await;
    }

    /// Sends every notification concurrently (1 s each at most) and waits for all of them.
    async fn notify(&self, deliveries: Vec<super::events::Delivery>) {
        let mut sends = JoinSet::new();
        for d in deliveries {
            let client = self.notifier.clone();
            sends.spawn(async move {
                let result = tokio::time::timeout(
                    NOTIFICATION_TIMEOUT,
                    client.send(reqwest::Method::POST, &d.notif_uri, Some(&d.body)),
                )
                .await;
                (d, result)
            });
        }
        while let Some(done) = sends.join_next().await {
            let Ok((d, result)) = done else {
                self.counters
                    .notifications_failed
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let error = match result {
                Ok(Ok(response)) => {
                    if response.status() != reqwest::StatusCode::NO_CONTENT {
                        tracing::warn!(sub_id = %d.sub_id, uri = %d.notif_uri, status = %response.status(),
                            "notification answered without 204");
                    }
                    self.counters
                        .notifications_delivered
                        .fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => "timed out".to_owned(),
            };
            let failed = self
                .counters
                .notifications_failed
                .fetch_add(1, Ordering::Relaxed)
                + 1;
            tracing::warn!(sub_id = %d.sub_id, uri = %d.notif_uri, %error, failed, "notification failed");
        }
    }

    /// Creates a subscription; returns it with its `subId`.
    pub fn create_subscription(
        &self,
        s: NsmfEventExposure,
    ) -> Result<NsmfEventExposure, SubscriptionError> {
        let created = self.subscriptions().create(s, SystemTime::now())?;
        tracing::info!(sub_id = ?created.sub_id, uri = %created.notif_uri, "event exposure subscription created");
        Ok(created)
    }

    /// The subscription `id`.
    pub fn subscription(
        &self,
        id: &SubscriptionId,
    ) -> Result<NsmfEventExposure, SubscriptionError> {
        self.subscriptions().get(id)
    }

    /// Replaces the subscription `id`.
    pub fn replace_subscription(
        &self,
        id: &SubscriptionId,
        s: NsmfEventExposure,
    ) -> Result<NsmfEventExposure, SubscriptionError> {
        let replaced = self.subscriptions().replace(id, s, SystemTime::now())?;
        tracing::info!(sub_id = %id, "event exposure subscription replaced");
        Ok(replaced)
    }

    /// Deletes the subscription `id`.
    pub fn delete_subscription(&self, id: &SubscriptionId) -> Result<(), SubscriptionError> {
        self.subscriptions().delete(id)?;
        tracing::info!(sub_id = %id, "event exposure subscription deleted");
        Ok(())
    }
}

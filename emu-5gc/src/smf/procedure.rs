//! The SMF component: owns the session table and the subscriptions and drives the procedures'
//! I/O (PFCP to UPFs, `PUT` to the LR, notifications to AFs); a path switch runs as the pure
//! [`PathSwitch`] machine, persisted before every step. The HTTP handlers only parse and
//! forward to it.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use model::common::RouteToLocation;
use model::nsmf_event_exposure::{AckOfNotify, NsmfEventExposure, SubscriptionId, API_ROOT_PATH};
use model::ran::lr::{self, UeLocation};
use model::ran::n2::{
    PathSwitchAck, PathSwitchRequest, PduSessionSetupRequest, PduSessionSetupResponse,
};
use model::ran::unix_now_us;
use model::sm_policy::TrafficControlData;
use model::timeline::{us, Stopwatch};
use model::traffic_influence::AfResultStatus;
use sbi::Store;
use tokio::task::JoinSet;
use tokio::time::Instant;
use wire::pfcp::Cause;

use super::events::{
    Audience, Delivery, Owed, StoredTrafficControl, SubscriptionError, Subscriptions, Timing,
    TrafficControls, UeScope, UpPathChange,
};
use super::n4::{N4Error, N4};
use super::session::{self, AllocationError, Session, SessionTable, UpfTunnels, PDU_SESSION_ID};
use super::store::{self, LastSwitch, UeRecord};
use super::switch::{Command, Event, PathSwitch, Stage, Target};
use super::{SmfConfig, SmfError, UpfPeer};

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
    /// A path switch resumed after a restart failed (its first error is all that is left).
    #[error("path switch failed: {0}")]
    Failed(String),
}

/// A switch's UPF is no longer in the config (it was when the switch started, before a restart).
fn unknown(upf: &str) -> String {
    format!("upf {upf} is not configured")
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
    /// Writes to the state directory that failed.
    pub store_failures: AtomicU64,
    /// AF acknowledgements that said `SUCCESS`.
    pub acks_succeeded: AtomicU64,
    /// AF acknowledgements that said anything else.
    pub acks_failed: AtomicU64,
    /// Acknowledgements a hold's time limit passed without.
    pub acks_missing: AtomicU64,
}

/// Why an acknowledgement (`AckOfNotify` to an `ackUri`) is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    #[error("no acknowledgement {0} is awaited (unknown, or its hold is over)")]
    NotAwaited(String),
    #[error("acknowledgement {ack_id} is for notifId {expected}, not {got}")]
    WrongNotifId {
        ack_id: String,
        expected: String,
        got: String,
    },
}

/// An acknowledgement a path switch waits for.
#[derive(Debug)]
struct PendingAck {
    notif_id: String,
    /// To the waiting switch: (ack id, `afStatus`).
    to: tokio::sync::mpsc::UnboundedSender<(String, String)>,
}

/// What the SMF remembers of a UE's path switches besides its session.
#[derive(Debug, Default)]
struct Procedures {
    /// A switch cut short by a crash, to finish.
    pending: Option<PathSwitch>,
    /// The last one that completed.
    last: Option<LastSwitch>,
}

/// The SMF.
#[derive(Debug)]
pub struct Smf {
    config: SmfConfig,
    n4: Arc<N4>,
    lr: sbi::Client,
    notifier: sbi::Client,
    store: Store,
    sessions: Mutex<SessionTable>,
    subscriptions: Mutex<Subscriptions>,
    controls: Mutex<TrafficControls>,
    procedures: Mutex<HashMap<String, Procedures>>,
    /// Acknowledgements awaited, by ack id (the last segment of the `ackUri`).
    acks: Mutex<HashMap<String, PendingAck>>,
    next_ack: AtomicU64,
    /// `http://host:port` of the SMF's SBI (for `ackUri`s).
    api_root: String,
    /// One procedure at a time per UE.
    ue_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// What happened.
    pub counters: SmfCounters,
}

impl Smf {
    /// An SMF speaking PFCP through `n4` that keeps nothing on disk; its SBI is at `api_root`
    /// (`http://10.100.0.10:8000`).
    pub fn new(config: SmfConfig, n4: Arc<N4>, api_root: String) -> Self {
        Self::with_store(
            config,
            n4,
            api_root,
            Store::memory(),
            store::Restored::default(),
        )
    }

    /// An SMF with the state in `config.state_dir` (if any): what a previous run left there is
    /// taken up (sessions, subscriptions, traffic controls, id counters, path switches to
    /// finish: [`Self::resume`]).
    pub fn open(config: SmfConfig, n4: Arc<N4>, api_root: String) -> Result<Self, SmfError> {
        let Some(dir) = config.state_dir.clone() else {
            return Ok(Self::new(config, n4, api_root));
        };
        let store_error = |e: sbi::StoreError| SmfError::Store(Box::new(e));
        let store = Store::open(&dir, &store::TABLES).map_err(store_error)?;
        let restored = store::load(&store).map_err(store_error)?;
        tracing::info!(dir = %dir.display(), ues = restored.ues.len(),
            subscriptions = restored.subscriptions.len(),
            pending = restored.ues.iter().filter(|u| u.switch.is_some()).count(),
            "smf state loaded");
        Ok(Self::with_store(config, n4, api_root, store, restored))
    }

    fn with_store(
        config: SmfConfig,
        n4: Arc<N4>,
        api_root: String,
        store: Store,
        restored: store::Restored,
    ) -> Self {
        let callbacks =
            sbi::CallbackNetworks::or_own(&config.callback_networks, *config.sbi_addr.ip());
        let reserved: Vec<(String, UpfTunnels)> = restored
            .ues
            .iter()
            .filter_map(|u| u.switch.as_ref()?.target.as_ref())
            .map(|t| (t.upf.clone(), t.tunnels))
            .collect();
        let procedures = restored
            .ues
            .iter()
            .map(|u| {
                (
                    u.session.supi.clone(),
                    Procedures {
                        pending: u.switch.clone(),
                        last: u.last_switch.clone(),
                    },
                )
            })
            .collect();
        let table = SessionTable::restore(
            config.ue_pool,
            restored.counters.allocations,
            restored.ues.into_iter().map(|u| u.session),
            reserved,
        );
        Self {
            lr: sbi::Client::new(config.token.clone(), LR_TIMEOUT),
            notifier: sbi::Client::new(config.token.clone(), NOTIFICATION_TIMEOUT),
            store,
            sessions: Mutex::new(table),
            subscriptions: Mutex::new(Subscriptions::restore(
                callbacks,
                restored.counters.last_subscription,
                restored.subscriptions,
            )),
            controls: Mutex::new(TrafficControls::restore(restored.traffic_controls)),
            procedures: Mutex::new(procedures),
            acks: Mutex::new(HashMap::new()),
            next_ack: AtomicU64::new(1),
            api_root: api_root.trim_end_matches('/').to_owned(),
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

    fn controls(&self) -> std::sync::MutexGuard<'_, TrafficControls> {
        self.controls.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn acks(&self) -> std::sync::MutexGuard<'_, HashMap<String, PendingAck>> {
        self.acks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn procedures(&self) -> std::sync::MutexGuard<'_, HashMap<String, Procedures>> {
        self.procedures
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

    /// Deletes a PFCP session whose failure must not stop the procedure; logs and counts it. A
    /// UPF that does not know the session (a deletion repeated after a restart) counts as done.
    async fn delete_quietly(&self, upf: &UpfPeer, up_seid: u64, why: &str) -> bool {
        match self
            .n4
            .delete(upf.pfcp, session::deletion_request(up_seid))
            .await
        {
            Ok(()) => true,
            Err(N4Error::Rejected { cause, .. }) if cause == Cause::SESSION_CONTEXT_NOT_FOUND.0 => {
                tracing::info!(upf = %upf.name, up_seid, why, "pfcp session already gone");
                true
            }
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
        // A new session: whatever a path switch left of the old one is over.
        if let Some(p) = self.procedures().get_mut(&request.supi) {
            if let Some(pending) = p.pending.take() {
                if let Some(t) = pending.target {
                    self.sessions().release_tunnels(&t.upf, &t.tunnels);
                }
            }
            p.last = None;
        }
        let result = self.setup_at(upf, &request, ue_ipv4).await;
        {
            let mut table = self.sessions();
            if let Some(old) = &previous {
                table.release_tunnels(&old.upf, &old.tunnels);
            }
            match &result {
                Ok(session) => {
                    tracing::info!(supi = %session.supi, ue = %ue_ipv4, upf = %session.upf, gnb = %session.gnb,
                        ul_teid = session.tunnels.uplink.teid, dl_teid = session.tunnels.downlink.teid,
                        "pdu session set up");
                    table.insert(session.clone());
                }
                Err(_) => {
                    if previous.is_some() {
                        // The old session was deleted: the UE has none now.
                        table.remove(&request.supi);
                    }
                    table.release_address(&request.supi);
                }
            }
        }
        self.save_ue(&request.supi, None);
        let session = result?;
        Ok(PduSessionSetupResponse {
            ue_ipv4,
            pdu_session_id: PDU_SESSION_ID,
            qfi: self.config.qfi,
            upf_tunnel: session.tunnels.uplink,
        })
    }

    async fn setup_at(
        &self,
        upf: &UpfPeer,
        request: &PduSessionSetupRequest,
        ue_ipv4: Ipv4Addr,
    ) -> Result<Session, ProcedureError> {
        let (tunnels, cp_seid) = {
            let mut table = self.sessions();
            let tunnels = table.allocate_tunnels(&upf.name, upf.n3, upf.n9)?;
            (tunnels, table.allocate_seid())
        };
        // The ids are on disk before the UPF hears of them: a restart never hands them out again.
        self.save_counters();
        let establishment = session::establishment_request(
            self.n4.node(),
            cp_seid,
            ue_ipv4,
            &tunnels,
            request.gnb_tunnel,
        );
        let up_seid = match self.n4.establish(upf.pfcp, establishment).await {
            Ok(seid) => seid,
            Err(source) => {
                self.sessions().release_tunnels(&upf.name, &tunnels);
                return Err(ProcedureError::Pfcp {
                    procedure: "establishment",
                    upf: upf.name.clone(),
                    source,
                });
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
    /// UPF (ARCHITECTURE.md, handover step 5), else a downlink switch at the same UPF. A switch of
    /// this UE cut short (an SMF crash, a dropped request) is finished first; a request the
    /// session already matches (a retry) gets the same answer again and changes nothing at the
    /// UPFs.
    pub async fn path_switch(
        &self,
        request: PathSwitchRequest,
    ) -> Result<PathSwitchAck, ProcedureError> {
        let _ue = self.lock_ue(&request.supi).await;
        self.check_ue(&request)?;
        let pending = self
            .procedures()
            .get_mut(&request.supi)
            .and_then(|p| p.pending.take());
        if let Some(pending) = pending {
            let same = pending.request == request;
            tracing::info!(supi = %request.supi, stage = ?pending.stage, same, "finishing a path switch cut short");
            let finished = self.drive(pending, true).await;
            if same {
                return finished;
            }
        }
        let session = self.check_ue(&request)?;
        if session.gnb == request.gnb && session.gnb_tunnel == request.gnb_tunnel {
            let last = self
                .procedures()
                .get(&request.supi)
                .and_then(|p| p.last.clone())
                .filter(|l| l.request == request);
            tracing::info!(supi = %request.supi, gnb = %request.gnb, "path switch already done: answered again");
            return Ok(last.map(|l| l.ack).unwrap_or_else(|| PathSwitchAck {
                upf_tunnel: session.tunnels.uplink,
                upf: session.upf.clone(),
                timeline: Vec::new(),
            }));
        }
        let target = self.upf_for(&request.gnb)?;
        let source = self
            .upf_named(&session.upf)
            .ok_or_else(|| ProcedureError::NoUpf {
                gnb: session.gnb.clone(),
                site: session.upf.clone(),
            })?;
        let target = if target.name == source.name {
            None
        } else {
            let (tunnels, cp_seid) = {
                let mut table = self.sessions();
                let tunnels = table.allocate_tunnels(&target.name, target.n3, target.n9)?;
                (tunnels, table.allocate_seid())
            };
            self.save_counters();
            tracing::info!(supi = %session.supi, ue = %session.ue_ipv4, source = %source.name,
                target = %target.name, "upf relocation started");
            Some(Target {
                upf: target.name.clone(),
                tunnels,
                cp_seid,
                up_seid: None,
            })
        };
        let switch = PathSwitch::new(
            request,
            session,
            target,
            us(self.config.ack_timeout()),
            unix_now_us(),
        );
        self.drive(switch, false).await
    }

    /// The UE's session, if `request` fits it.
    fn check_ue(&self, request: &PathSwitchRequest) -> Result<Session, ProcedureError> {
        let session = self
            .sessions()
            .get(&request.supi)
            .cloned()
            .ok_or_else(|| ProcedureError::UnknownUe(request.supi.clone()))?;
        if session.ue_ipv4 != request.ue_ipv4 {
            return Err(ProcedureError::AddressMismatch {
                supi: request.supi.clone(),
                has: session.ue_ipv4,
                asked: request.ue_ipv4,
            });
        }
        Ok(session)
    }

    /// Runs `switch` from its current step to its end (the caller holds the UE's lock),
    /// persisting it before every step; applies the outcome to the session table. `resumed`: it
    /// was cut short (by a crash) and goes on from where it was.
    async fn drive(
        &self,
        mut switch: PathSwitch,
        resumed: bool,
    ) -> Result<PathSwitchAck, ProcedureError> {
        let supi = switch.request.supi.clone();
        let mut clock = Stopwatch::start();
        let earlier = std::mem::take(&mut switch.steps);
        if resumed {
            clock.record(
                format!("smf restarted: path switch resumed ({:?})", switch.stage),
                Instant::now(),
            );
        }
        let change = self.change_of(&switch);
        // Acknowledgements of this switch's notifications come in here.
        let (ack_tx, mut ack_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut error: Option<ProcedureError> = None;
        let mut fail = |e: ProcedureError| {
            let detail = sbi::error_chain(&e);
            error.get_or_insert(e);
            detail
        };
        let mut command = switch.handle(unix_now_us(), Event::Resume);
        loop {
            switch.steps = earlier.iter().chain(clock.steps()).cloned().collect();
            self.save_ue(&supi, Some(&switch));
            let Some(cmd) = command.take() else {
                command = switch.handle(unix_now_us(), Event::Resume);
                continue;
            };
            let event = match cmd {
                Command::Finish => break,
                Command::Notify { timing, audience } => {
                    let awaiting = match &change {
                        Some(change) => {
                            self.notify_step(&mut clock, timing, audience, change, &ack_tx)
                                .await
                        }
                        None => BTreeMap::new(),
                    };
                    Event::Notified { awaiting }
                }
                Command::Hold {
                    timing,
                    deadline_unix_us,
                    awaiting,
                } => {
                    command = Some(
                        self.hold(
                            &mut switch,
                            &mut clock,
                            &earlier,
                            (timing, deadline_unix_us, awaiting),
                            &ack_tx,
                            &mut ack_rx,
                        )
                        .await,
                    );
                    continue;
                }
                Command::Establish {
                    upf,
                    cp_seid,
                    tunnels,
                    gnb_tunnel,
                } => {
                    let Some(peer) = self.upf_named(&upf) else {
                        command =
                            switch.handle(unix_now_us(), Event::Established(Err(unknown(&upf))));
                        continue;
                    };
                    let request = session::establishment_request(
                        self.n4.node(),
                        cp_seid,
                        switch.source.ue_ipv4,
                        &tunnels,
                        gnb_tunnel,
                    );
                    let answer = clock
                        .time(
                            format!("pfcp session establishment at {upf}"),
                            self.n4.establish(peer.pfcp, request),
                        )
                        .await;
                    Event::Established(answer.map_err(|source| {
                        fail(ProcedureError::Pfcp {
                            procedure: "establishment",
                            upf: upf.clone(),
                            source,
                        })
                    }))
                }
                Command::PutLocation { upf, tunnels } => {
                    let Some(peer) = self.upf_named(&upf) else {
                        command =
                            switch.handle(unix_now_us(), Event::LocationPut(Err(unknown(&upf))));
                        continue;
                    };
                    let location = self.location(switch.source.ue_ipv4, peer, &tunnels);
                    let restoring = switch.stage == Stage::RestoreLr;
                    let step = if restoring {
                        format!("lr restored (site {})", peer.site)
                    } else {
                        format!("lr update (site {}, after pushes to iaps)", peer.site)
                    };
                    let answer = clock.time(step, self.put_location(&location)).await;
                    Event::LocationPut(match answer {
                        Ok(_) => Ok(()),
                        Err(e) if restoring => {
                            tracing::warn!(ue = %switch.source.ue_ipv4, error = %sbi::error_chain(&e),
                                "cannot restore the source location in the lr");
                            Err(sbi::error_chain(&e))
                        }
                        Err(e) => Err(fail(e)),
                    })
                }
                Command::Modify {
                    upf,
                    up_seid,
                    gnb_tunnel,
                } => {
                    let Some(peer) = self.upf_named(&upf) else {
                        command = switch.handle(unix_now_us(), Event::Modified(Err(unknown(&upf))));
                        continue;
                    };
                    let modify = self.n4.modify(
                        peer.pfcp,
                        session::switch_downlink_request(up_seid, gnb_tunnel),
                    );
                    let answer = clock
                        .time(
                            format!("pfcp session modification (end marker) at {upf}"),
                            modify,
                        )
                        .await;
                    Event::Modified(answer.map_err(|source| {
                        fail(ProcedureError::Pfcp {
                            procedure: "modification",
                            upf: upf.clone(),
                            source,
                        })
                    }))
                }
                Command::Delete { upf, up_seid, why } => {
                    let Some(peer) = self.upf_named(&upf) else {
                        command = switch.handle(unix_now_us(), Event::Deleted(false));
                        continue;
                    };
                    let deleted = if switch.stage == Stage::DeleteSource {
                        clock
                            .time(
                                format!("pfcp session deletion at {upf}"),
                                self.delete_quietly(peer, up_seid, why),
                            )
                            .await
                    } else {
                        self.delete_quietly(peer, up_seid, why).await
                    };
                    Event::Deleted(deleted)
                }
            };
            command = switch.handle(unix_now_us(), event);
        }
        switch.steps = earlier.into_iter().chain(clock.into_steps()).collect();
        self.finish(switch, error)
    }

    /// Waits for the acknowledgements a switch's notifications asked for, until every one came
    /// or the deadline passed (the UE's downlink stays on the path it has meanwhile); records
    /// the hold as a step; the command after it.
    async fn hold(
        &self,
        switch: &mut PathSwitch,
        clock: &mut Stopwatch,
        earlier: &[model::ran::TimelineStep],
        (timing, deadline_unix_us, awaiting): (Timing, u64, Vec<String>),
        ack_tx: &tokio::sync::mpsc::UnboundedSender<(String, String)>,
        ack_rx: &mut tokio::sync::mpsc::UnboundedReceiver<(String, String)>,
    ) -> Command {
        let supi = switch.request.supi.clone();
        let began = Instant::now();
        // (Re)registered: after a restart the awaited ids are only on disk.
        if let Some(hold) = &switch.hold {
            let mut acks = self.acks();
            for (ack_id, notif_id) in &hold.awaiting {
                acks.insert(
                    ack_id.clone(),
                    PendingAck {
                        notif_id: notif_id.clone(),
                        to: ack_tx.clone(),
                    },
                );
            }
        }
        tracing::info!(%supi, timing = timing.label(), expected = awaiting.len(),
            "holding the path switch for af acknowledgements");
        let deadline =
            began + Duration::from_micros(deadline_unix_us.saturating_sub(unix_now_us()));
        let next = loop {
            tokio::select! {
                Some((ack_id, af_status)) = ack_rx.recv() => {
                    let next = switch.handle(unix_now_us(), Event::Acked { ack_id, af_status });
                    switch.steps = earlier.iter().chain(clock.steps()).cloned().collect();
                    self.save_ue(&supi, Some(switch));
                    if let Some(next) = next {
                        break next;
                    }
                }
                () = tokio::time::sleep_until(deadline) => {
                    // The monotonic clock says the time is up, whatever the wall clock says.
                    let now = unix_now_us().max(deadline_unix_us);
                    if let Some(next) = switch.handle(now, Event::HoldExpired) {
                        break next;
                    }
                }
            }
        };
        {
            let mut acks = self.acks();
            for ack_id in &awaiting {
                acks.remove(ack_id);
            }
        }
        let summary = match switch.holds.last() {
            Some(h) => {
                let missing = h.answers.iter().filter(|a| a.af_status.is_none()).count();
                self.counters
                    .acks_missing
                    .fetch_add(missing as u64, Ordering::Relaxed);
                if h.all_succeeded() {
                    tracing::info!(%supi, answers = %h.summary(), "af acknowledged: path switch goes on");
                } else {
                    tracing::warn!(%supi, answers = %h.summary(),
                        "af acknowledgements missing or not SUCCESS: path switch goes on anyway");
                }
                h.summary()
            }
            None => String::new(),
        };
        clock.record(
            format!(
                "hold for af acknowledgements of the {} notification ({} expected): {summary}",
                timing.label(),
                awaiting.len()
            ),
            began,
        );
        next
    }

    /// Takes an AF's acknowledgement (`POST {ackUri}` with `AckOfNotify`) to the switch that
    /// waits for it.
    pub fn acknowledge(&self, ack_id: &str, ack: &AckOfNotify) -> Result<(), AckError> {
        let acks = self.acks();
        let pending = acks
            .get(ack_id)
            .ok_or_else(|| AckError::NotAwaited(ack_id.to_owned()))?;
        if pending.notif_id != ack.notif_id.as_str() {
            return Err(AckError::WrongNotifId {
                ack_id: ack_id.to_owned(),
                expected: pending.notif_id.clone(),
                got: ack.notif_id.to_string(),
            });
        }
        let status = ack.ack_result.af_status.as_str().to_owned();
        let counter = if ack.ack_result.af_status == AfResultStatus::Success {
            &self.counters.acks_succeeded
        } else {
            &self.counters.acks_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        tracing::info!(ack_id, notif_id = %ack.notif_id, af_status = %status, "af acknowledgement");
        pending
            .to
            .send((ack_id.to_owned(), status))
            .map_err(|_| AckError::NotAwaited(ack_id.to_owned()))
    }

    /// Applies a finished switch: the new session (or the old one after a failure), the TEIDs
    /// that are free again, the answer kept for a repeated request.
    fn finish(
        &self,
        switch: PathSwitch,
        error: Option<ProcedureError>,
    ) -> Result<PathSwitchAck, ProcedureError> {
        let supi = switch.request.supi.clone();
        let outcome = switch
            .outcome()
            .unwrap_or_else(|| Err("path switch did not finish".into()));
        let result = match outcome {
            Ok(moved) => {
                let mut timeline = switch.steps.clone();
                for s in &mut timeline {
                    if let Some(at) = s.at_unix_us {
                        s.at_us = at.saturating_sub(switch.started_unix_us);
                    }
                }
                let ack = PathSwitchAck {
                    upf_tunnel: moved.tunnels.uplink,
                    upf: moved.upf.clone(),
                    timeline,
                };
                tracing::info!(supi = %moved.supi, ue = %moved.ue_ipv4, upf = %moved.upf, gnb = %moved.gnb,
                    steps = ?ack.timeline.iter().map(|s| (s.step.as_str(), s.took_us)).collect::<Vec<_>>(),
                    "path switched");
                {
                    let mut table = self.sessions();
                    if switch.relocates() && switch.source_deleted {
                        table.release_tunnels(&switch.source.upf, &switch.source.tunnels);
                    }
                    table.insert(moved);
                }
                self.procedures().entry(supi.clone()).or_default().last = Some(LastSwitch {
                    request: switch.request.clone(),
                    ack: ack.clone(),
                });
                Ok(ack)
            }
            Err(detail) => {
                if let Some(t) = &switch.target {
                    self.sessions().release_tunnels(&t.upf, &t.tunnels);
                }
                Err(error.unwrap_or(ProcedureError::Failed(detail)))
            }
        };
        self.save_ue(&supi, None);
        result
    }

    /// The path change a relocation reports (`None` for a switch at the same UPF).
    fn change_of(&self, switch: &PathSwitch) -> Option<UpPathChange> {
        let target = self.upf_named(&switch.target.as_ref()?.upf)?;
        let source = self.upf_named(&switch.source.upf)?;
        let route = |u: &UpfPeer| RouteToLocation::new(u.dnai.as_str(), u.n9, wire::gtpu::PORT);
        Some(UpPathChange {
            supi: switch.source.supi.clone(),
            pdu_session_id: PDU_SESSION_ID,
            ue_ipv4: switch.source.ue_ipv4,
            source: route(source),
            target: route(target),
        })
    }

    /// Finishes every path switch a crash cut short (each under its UE's lock); a retried
    /// request of the gNB then gets the answer.
    pub async fn resume(&self) {
        let pending: Vec<String> = self
            .procedures()
            .iter()
            .filter(|(_, p)| p.pending.is_some())
            .map(|(supi, _)| supi.clone())
            .collect();
        for supi in pending {
            let _ue = self.lock_ue(&supi).await;
            let Some(switch) = self
                .procedures()
                .get_mut(&supi)
                .and_then(|p| p.pending.take())
            else {
                continue; // a retried request finished it first
            };
            tracing::info!(%supi, stage = ?switch.stage, "resuming a path switch cut short");
            if let Err(error) = self.drive(switch, true).await {
                tracing::warn!(%supi, error = %sbi::error_chain(&error), "resumed path switch failed");
            }
        }
    }

    /// Sends the `timing` notifications `audience` is owed and records the step; the ones that
    /// expect an acknowledgement get an `ackUri` (registered to `acks` before they go): those
    /// (ack id → `notifId`).
    async fn notify_step(
        &self,
        clock: &mut Stopwatch,
        timing: Timing,
        audience: Audience,
        change: &UpPathChange,
        acks: &tokio::sync::mpsc::UnboundedSender<(String, String)>,
    ) -> BTreeMap<String, String> {
        let now = SystemTime::now();
        let owed = self
            .subscriptions()
            .up_path_change(timing, audience, change, now);
        self.save_subscriptions(&owed);
        let mut deliveries = owed.deliveries;
        deliveries.extend(
            self.controls()
                .up_path_change(timing, audience, change, now),
        );
        if audience == Audience::AckExpected && deliveries.is_empty() {
            return BTreeMap::new();
        }
        let mut awaiting = BTreeMap::new();
        for d in deliveries.iter_mut().filter(|d| d.expects_ack) {
            let ack_id = format!(
                "ack-{}-{}",
                unix_now_us(),
                self.next_ack.fetch_add(1, Ordering::Relaxed)
            );
            d.body.ack_uri = Some(format!("{}{API_ROOT_PATH}/acks/{ack_id}", self.api_root));
            let notif_id = d.body.notif_id.to_string();
            self.acks().insert(
                ack_id.clone(),
                PendingAck {
                    notif_id: notif_id.clone(),
                    to: acks.clone(),
                },
            );
            awaiting.insert(ack_id, notif_id);
        }
        let expecting = if awaiting.is_empty() {
            String::new()
        } else {
            format!(", {} expecting an acknowledgement", awaiting.len())
        };
        let step = format!(
            "{} up_path_ch notifications ({} subscriptions{expecting})",
            timing.label(),
            deliveries.len()
        );
        clock.time(step, self.notify(deliveries)).await;
        awaiting
    }

    /// Sends every notification concurrently (1 s each at most) and waits for all of them.
    async fn notify(&self, deliveries: Vec<Delivery>) {
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
        let created = {
            let mut subs = self.subscriptions();
            let created = subs.create(s, SystemTime::now())?;
            self.save_subscription(&subs, &created);
            created
        };
        self.save_counters();
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
        let replaced = {
            let mut subs = self.subscriptions();
            let replaced = subs.replace(id, s, SystemTime::now())?;
            self.save_subscription(&subs, &replaced);
            replaced
        };
        tracing::info!(sub_id = %id, "event exposure subscription replaced");
        Ok(replaced)
    }

    /// Deletes the subscription `id`.
    pub fn delete_subscription(&self, id: &SubscriptionId) -> Result<(), SubscriptionError> {
        self.subscriptions().delete(id)?;
        self.persist(self.store.delete(store::SUBSCRIPTIONS, id.as_str()));
        tracing::info!(sub_id = %id, "event exposure subscription deleted");
        Ok(())
    }

    /// Stores (or replaces) traffic control `tc_id` for `scope` (the N7 stand-in: what a PCF
    /// would push); whether it is new.
    pub fn put_traffic_control(
        &self,
        tc_id: &str,
        scope: UeScope,
        data: TrafficControlData,
    ) -> Result<bool, SubscriptionError> {
        let callbacks = self.subscriptions().callbacks().clone();
        let control = StoredTrafficControl { scope, data };
        let created = self.controls().put(tc_id, control.clone(), &callbacks)?;
        self.persist(self.store.put(store::TRAFFIC_CONTROLS, tc_id, &control));
        tracing::info!(tc_id, scope = ?control.scope, created,
            ack = control.data.up_path_chg_event.as_ref().is_some_and(|e| e.expects_ack()),
            "traffic control stored");
        Ok(created)
    }

    /// Traffic control `tc_id`.
    pub fn traffic_control(&self, tc_id: &str) -> Result<TrafficControlData, SubscriptionError> {
        self.controls().get(tc_id).map(|c| c.data.clone())
    }

    /// Removes traffic control `tc_id`.
    pub fn delete_traffic_control(&self, tc_id: &str) -> Result<(), SubscriptionError> {
        self.controls().delete(tc_id)?;
        self.persist(self.store.delete(store::TRAFFIC_CONTROLS, tc_id));
        tracing::info!(tc_id, "traffic control removed");
        Ok(())
    }

    /// Logs and counts a failed write: the procedure goes on (only a later restart would miss
    /// what was not written).
    fn persist(&self, result: Result<(), sbi::StoreError>) {
        if let Err(error) = result {
            self.counters.store_failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %sbi::error_chain(&error), "cannot write the smf's state");
        }
    }

    fn save_subscription(&self, subs: &Subscriptions, s: &NsmfEventExposure) {
        let Some(id) = &s.sub_id else { return };
        if let Some(stored) = subs.stored(id) {
            self.persist(self.store.put(store::SUBSCRIPTIONS, id.as_str(), stored));
        }
    }

    /// Writes the report counts of the subscriptions `owed` was sent to, removes those that
    /// ended.
    fn save_subscriptions(&self, owed: &Owed) {
        if !self.store.is_persistent() {
            return;
        }
        let subs = self.subscriptions();
        for d in &owed.deliveries {
            if let Some(stored) = subs.stored(&d.sub_id) {
                self.persist(
                    self.store
                        .put(store::SUBSCRIPTIONS, d.sub_id.as_str(), stored),
                );
            }
        }
        for id in &owed.ended {
            self.persist(self.store.delete(store::SUBSCRIPTIONS, id.as_str()));
        }
    }

    fn save_counters(&self) {
        let counters = store::Counters {
            last_subscription: self.subscriptions().last_id(),
            allocations: self.sessions().allocations(),
        };
        self.persist(self.store.put(store::META, store::COUNTERS, &counters));
    }

    /// Writes UE `supi`'s record: its session, `pending` (the switch in progress), the last
    /// switch; removes it when the UE has no session.
    fn save_ue(&self, supi: &str, pending: Option<&PathSwitch>) {
        if !self.store.is_persistent() {
            return;
        }
        let session = self.sessions().get(supi).cloned();
        let last = self.procedures().get(supi).and_then(|p| p.last.clone());
        let result = match session {
            Some(session) => self.store.put(
                store::UES,
                supi,
                &UeRecord {
                    session,
                    switch: pending.cloned(),
                    last_switch: last,
                },
            ),
            None => self.store.delete(store::UES, supi),
        };
        self.persist(result);
    }
}

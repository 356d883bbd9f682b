//! The handover negotiator (thesis §4.2.2): topology and service databases, registered service
//! modules, and the driver that runs the relocation state machines of [`crate::core`] — one task
//! per source relocation, target phases answered inline — performing their commands through
//! [`Remote`] (peer SMOs and service modules) and a [`FlowProgrammer`], with time limits, and
//! persisting every step in the [`Store`].

use crate::config::{BadCallback, CallbackNetworks, SmoConfig, Timeouts};
use crate::core::ack::{self, AckRequest, Unmoved};
use crate::core::hints::{Hint, Hints, Queued};
use crate::core::reconcile::{Ended, Policy};
use crate::core::{
    candidates_for, ExecuteFailure, Local, SourceCommand, SourceEvent, SourceRelocation,
    SourceStart, TargetContext, TargetEffect, TargetRelocation, TargetStep,
};
use crate::routing::{FlowProgrammer, FlowReport, FlowSet};
use crate::store::{HostedService, Store, StoreError, StoredRelocation};
use model::common::Dnai;
use model::nsmf_event_exposure::{EventNotification, NsmfEventExposureNotification, SmfEvent};
use model::smo::{
    ExecuteReport, ExecuteRequest, PeerInfo, PeerRelocationAnswer, PeerRelocationMessage,
    PeerResult, RelocationControl, RelocationPhase, RelocationRecord, RelocationState,
    RelocationTrigger, ResourceRequirements, Service, ServiceArrival, ServiceModule,
    ServiceModuleRegistration,
};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use model::traffic_influence::AfAckInfo;

mod reconcile;

/// What the SMO asks of other processes (peer SMOs, its service modules): [`crate::http::HttpRemote`]
/// in production, fakes in tests. (Named apart from `svcmod::Backend`, a module's migration
/// backend.) Time limits are applied by the negotiator, so implementations may simply wait.
pub trait Remote: Send + Sync + 'static {
    /// One peer-protocol message to `peer`.
    fn call_peer(
        &self,
        peer: &PeerInfo,
        msg: &PeerRelocationMessage,
    ) -> impl Future<Output = Result<PeerRelocationAnswer, String>> + Send;
    /// The module's ServedService callback: the service serving `ue`, if it hosts one.
    fn served_service(
        &self,
        module: &ServiceModule,
        ue: Ipv4Addr,
    ) -> impl Future<Output = Result<Option<Service>, String>> + Send;
    /// The module's GetServices callback.
    fn services(
        &self,
        module: &ServiceModule,
    ) -> impl Future<Output = Result<Vec<Service>, String>> + Send;
    /// Where the Location Registry says `ue` is: the DNAI of its serving site's edge cloud
    /// (`None`: the LR does not know the UE, or there is no LR to ask).
    fn ue_location(
        &self,
        ue: Ipv4Addr,
    ) -> impl Future<Output = Result<Option<Dnai>, String>> + Send;
    /// The module's Execute callback (the live migration). `Err(Refused)` only when the module
    /// answered that it failed (the service then still runs at the source).
    fn execute(
        &self,
        module: &ServiceModule,
        req: &ExecuteRequest,
    ) -> impl Future<Output = Result<ExecuteReport, ExecuteFailure>> + Send;
    /// POSTs an acknowledgement to a notification's `afAckUri`: the answer's status (2xx), or
    /// why there was none (an error status is an `Err` naming it). Remotes of tests without a
    /// network to acknowledge to keep this default, which says so.
    fn acknowledge(
        &self,
        uri: &str,
        body: &AfAckInfo,
    ) -> impl Future<Output = Result<u16, String>> + Send {
        let _ = body;
        let uri = uri.to_owned();
        async move { Err(format!("this remote cannot acknowledge to {uri}")) }
    }
}

/// The negotiator's clock: µs, monotonic within a run; the wall clock in production (so
/// persisted times stay meaningful across restarts), tokio's (pausable) clock in tests.
#[derive(Debug, Clone)]
pub enum Clock {
    Wall,
    /// µs since `base` on tokio's clock, plus `offset_us`.
    Tokio {
        base: tokio::time::Instant,
        offset_us: u64,
    },
}

impl Clock {
    /// A tokio clock starting at `offset_us`.
    pub fn tokio(offset_us: u64) -> Self {
        Self::Tokio {
            base: tokio::time::Instant::now(),
            offset_us,
        }
    }

    pub fn now_us(&self) -> u64 {
        match self {
            Self::Wall => model::ran::unix_now_us(),
            Self::Tokio { base, offset_us } => {
                offset_us + u64::try_from(base.elapsed().as_micros()).unwrap_or(u64::MAX)
            }
        }
    }
}

/// A request the negotiator refuses.
#[derive(Debug, thiserror::Error)]
pub enum NegotiatorError {
    #[error("no service module `{0}`")]
    NoModule(String),
    /// A field of the request the SMO will not use (a callback outside the deployment's
    /// networks, an unusable address).
    #[error("bad request: {0}")]
    Invalid(#[from] BadCallback),
    #[error("no relocation `{0}` with this SMO as its target")]
    NoTargetRelocation(String),
    /// The request does not fit the relocation's state (nothing changed).
    #[error("{0}")]
    Conflict(String),
    /// The flows of the request could not be installed.
    #[error("{0}")]
    Flows(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug)]
enum Entry {
    Source(Box<SourceRelocation>),
    Target(Box<TargetRelocation>),
}

impl Entry {
    fn record(&self) -> &RelocationRecord {
        match self {
            Self::Source(m) => m.record(),
            Self::Target(m) => m.record(),
        }
    }

    /// When it began (driver clock, µs), while it runs.
    fn running_since_us(&self) -> Option<u64> {
        (self.record().state == RelocationState::Running).then(|| match self {
            Self::Source(m) => m.started_us(),
            Self::Target(m) => m.started_us(),
        })
    }
}

#[derive(Debug, Default)]
struct Db {
    modules: BTreeMap<String, ServiceModule>,
    services: BTreeMap<String, HostedService>,
    relocations: BTreeMap<String, Entry>,
    /// Relocation ids in arrival order (for listing).
    order: Vec<String>,
    /// Notifications for UEs with a relocation running here, queued and coalesced.
    hints: Hints,
    /// UEs whose source relocation is being set up (the serving service is being looked up).
    starting: BTreeSet<Ipv4Addr>,
    /// Cancellations asked for, by relocation id, with their cause (the driver applies them
    /// between steps while the relocation can still be cancelled).
    cancels: BTreeMap<String, String>,
    /// Per service id, how its relocations here ended lately (the reconciler's settle time and
    /// retry backoff; not persisted: after a restart nothing waits).
    ended: BTreeMap<String, Ended>,
}

impl Db {
    /// Whether a relocation of `ue` runs (or is being set up) here, as source or target.
    fn busy(&self, ue: Ipv4Addr) -> bool {
        self.starting.contains(&ue)
            || self.relocations.values().any(|e| {
                let r = e.record();
                r.state == RelocationState::Running && r.ue_ipv4_addr == ue
            })
    }

    /// The running source relocation of service `service_id`, if any.
    fn running_source_of(&self, service_id: &str) -> Option<&SourceRelocation> {
        self.relocations.values().find_map(|e| match e {
            Entry::Source(m) if !m.is_done() && m.record().service.service_id == service_id => {
                Some(&**m)
            }
            _ => None,
        })
    }
}

/// Counts of what the negotiator did with notifications (for `/metrics`).
#[derive(Debug, Default)]
struct Counters {
    /// Notifications that found no service to relocate.
    skipped: AtomicU64,
    /// Notifications queued behind a running relocation of their UE (new hints).
    queued: AtomicU64,
    /// Notifications folded into a UE's queued hint.
    coalesced: AtomicU64,
    /// Cancellations applied to relocations that had not reached EXECUTE.
    cancelled: AtomicU64,
    /// Hints taken after a relocation ended and re-evaluated against the LR.
    reevaluated: AtomicU64,
    /// Reconciler rounds, corrections by action, errors by what failed.
    reconciler_runs: AtomicU64,
    reconciler: Mutex<ReconcilerTally>,
}

/// What the reconciler corrected, and what it could not observe or correct.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcilerTally {
    /// By [`Correction::action`].
    pub corrections: BTreeMap<&'static str, u64>,
    /// By what failed: `switch` (reading the flows), `module` (GetServices), `lr`, `apply` (a
    /// correction's flows).
    pub errors: BTreeMap<&'static str, u64>,
}

/// What the negotiator did with notifications so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NotificationCounts {
    pub skipped: u64,
    pub queued: u64,
    pub coalesced: u64,
    pub cancelled: u64,
    pub reevaluated: u64,
}

struct Inner<R, F> {
    local: Local,
    /// Whether notifications may relocate services (`appReloInd`).
    relocates: bool,
    peers: Vec<PeerInfo>,
    /// The reconciler's patience.
    policy: Policy,
    /// Where callback URIs may point.
    callbacks: CallbackNetworks,
    capacity: ResourceRequirements,
    timeouts: Timeouts,
    remote: R,
    flows: F,
    store: Store,
    clock: Clock,
    db: Mutex<Db>,
    /// Target relocations are answered one message at a time each; this serialises them.
    target_lock: tokio::sync::Mutex<()>,
    next_id: AtomicU64,
    counters: Counters,
    /// Source relocation tasks spawned and not yet ended (see [`Negotiator::idle`]).
    tasks: Arc<AtomicUsize>,
}

/// Counts one source relocation task from before it is spawned until it ends (or is dropped).
struct TaskGuard(Arc<AtomicUsize>);

impl TaskGuard {
    fn new(tasks: &Arc<AtomicUsize>) -> Self {
        tasks.fetch_add(1, Ordering::SeqCst);
        Self(tasks.clone())
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The handover negotiator. Cheap to clone (shared state).
pub struct Negotiator<R, F> {
    inner: Arc<Inner<R, F>>,
}

impl<R, F> Clone for Negotiator<R, F> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<R, F> std::fmt::Debug for Negotiator<R, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Negotiator")
            .field("smo_id", &self.inner.local.smo_id)
            .finish_non_exhaustive()
    }
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

impl<R: Remote, F: FlowProgrammer> Negotiator<R, F> {
    /// A negotiator for `config`, loading registrations, services and relocations from `store`.
    /// Call [`Negotiator::resume`] once the runtime runs to finish interrupted relocations.
    pub fn new(
        config: &SmoConfig,
        remote: R,
        flows: F,
        store: Store,
        clock: Clock,
    ) -> Result<Self, StoreError> {
        let mut db = Db::default();
        let mut max_seq = 0;
        for m in store.modules()? {
            if let Some(seq) = m
                .module_id
                .strip_prefix("module-")
                .and_then(|n| n.parse::<u64>().ok())
            {
                max_seq = max_seq.max(seq);
            }
            db.modules.insert(m.module_id.clone(), m);
        }
        for s in store.services()? {
            db.services.insert(s.service.service_id.clone(), s);
        }
        let mut loaded: Vec<(u64, String, Entry)> = Vec::new();
        for r in store.relocations()? {
            let entry = match r {
                StoredRelocation::Source(m) => Entry::Source(m),
                StoredRelocation::Target(m) => Entry::Target(m),
            };
            let rec = entry.record();
            if let Some(seq) = rec
                .relocation_id
                .strip_prefix(&format!("{}-", config.smo_id))
                .and_then(|n| n.parse::<u64>().ok())
            {
                max_seq = max_seq.max(seq);
            }
            loaded.push((rec.started_unix_us, rec.relocation_id.clone(), entry));
        }
        loaded.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
        for (_, id, e) in loaded {
            db.order.push(id.clone());
            db.relocations.insert(id, e);
        }
        Ok(Self {
            inner: Arc::new(Inner {
                relocates: config.relocates(),
                local: Local {
                    smo_id: config.smo_id.clone(),
                    dnai: config.dnai.clone(),
                    api_root: config.api_root(),
                    ports: config.ports.clone(),
                },
                peers: config.peers.clone(),
                policy: config.reconcile.policy(),
                callbacks: config.callbacks(),
                capacity: config.capacity,
                timeouts: config.timeouts,
                remote,
                flows,
                store,
                clock,
                db: Mutex::new(db),
                target_lock: tokio::sync::Mutex::new(()),
                next_id: AtomicU64::new(max_seq + 1),
                counters: Counters::default(),
                tasks: Arc::new(AtomicUsize::new(0)),
            }),
        })
    }

    fn db(&self) -> MutexGuard<'_, Db> {
        // A panic while holding the lock would be a bug; keep serving with the data as it is.
        self.inner
            .db
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Where callback URIs may point (the API checks a peer message's `notifUri` against it).
    pub fn callbacks(&self) -> &CallbackNetworks {
        &self.inner.callbacks
    }

    /// This SMO's id.
    pub fn smo_id(&self) -> &str {
        &self.inner.local.smo_id
    }

    /// Finishes or fails every source relocation a previous run left running (one task each).
    /// Returns how many it resumed.
    pub fn resume(&self) -> usize {
        let running: Vec<SourceRelocation> = self
            .db()
            .relocations
            .values()
            .filter_map(|e| match e {
                Entry::Source(m) if !m.is_done() => Some((**m).clone()),
                _ => None,
            })
            .collect();
        let n = running.len();
        for mut m in running {
            let this = self.clone();
            let task = TaskGuard::new(&self.inner.tasks);
            tokio::spawn(async move {
                let _task = task;
                let now = this.inner.clock.now_us();
                let cmds = m.resume(now);
                tracing::info!(relocation = %m.record().relocation_id, "resuming after restart");
                this.drive(m, cmds).await;
            });
        }
        n
    }

    // ----- 5GC network interface -----

    /// A notification the event signalling module checked. For every `UP_PATH_CH` event: when a
    /// relocation of its UE runs here (as source or target), the event is queued and coalesced
    /// ([`Hints`]) — and a source relocation that has not reached EXECUTE and goes elsewhere is
    /// cancelled; when the UE left this SMO's DNAI, a source relocation starts. Returns the ids of
    /// the relocations started (they run in the background).
    pub fn on_notification(&self, n: &NsmfEventExposureNotification) -> Vec<String> {
        let notified_us = self.inner.clock.now_us();
        let notified_unix_us = model::ran::unix_now_us();
        n.event_notifs
            .iter()
            .filter_map(|ev| self.on_event(ev, None, notified_us, notified_unix_us))
            .collect()
    }

    /// A path change the NEF notified (TS 29.522, as the SMF's event it stands for), with the
    /// acknowledgement it asks for, if any: handled as [`Negotiator::on_notification`] handles
    /// the SMF's events. A relocation it starts acknowledges when it is done
    /// ([`crate::core::ack`]); a notification that starts none is acknowledged at once. Returns
    /// the id of the relocation started.
    pub fn on_af_notification(
        &self,
        ev: &EventNotification,
        ack: Option<AckRequest>,
    ) -> Option<String> {
        let notified_us = self.inner.clock.now_us();
        self.on_event(ev, ack, notified_us, model::ran::unix_now_us())
    }

    /// One `UP_PATH_CH` event (see [`Negotiator::on_notification`]).
    fn on_event(
        &self,
        ev: &EventNotification,
        ack: Option<AckRequest>,
        notified_us: u64,
        notified_unix_us: u64,
    ) -> Option<String> {
        if ev.event != SmfEvent::UpPathCh {
            return None;
        }
        let (Some(src), Some(dst)) = (&ev.source_dnai, &ev.target_dnai) else {
            return None;
        };
        let ue = ev.source_ue_ipv4_addr.or(ev.target_ue_ipv4_addr)?;
        {
            let mut db = self.db();
            if db.busy(ue) {
                self.queue(&mut db, ue, ev, notified_us);
                drop(db);
                self.acknowledge_now(ack, Unmoved::Queued);
                return None;
            }
            if src != &self.inner.local.dnai || dst == src {
                drop(db);
                self.acknowledge_now(ack, Unmoved::NotFromHere);
                return None;
            }
            if !self.inner.relocates {
                drop(db);
                tracing::info!(%ue, to = %dst, "relocation not allowed (appReloInd false): the service stays");
                self.acknowledge_now(ack, Unmoved::NotAllowed);
                return None;
            }
            db.starting.insert(ue);
        }
        let seq = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}-{seq}", self.inner.local.smo_id);
        let this = self.clone();
        let ev = ev.clone();
        let task = TaskGuard::new(&self.inner.tasks);
        let relocation = id.clone();
        tokio::spawn(async move {
            let _task = task;
            let start = Trigger {
                control: RelocationControl::default(),
                notified_us,
                notified_unix_us,
                ack,
            };
            this.run_source(relocation, ev, ue, start).await;
        });
        Some(id)
    }

    /// Acknowledges a notification that starts no relocation here (`why`), in the background.
    fn acknowledge_now(&self, ack: Option<AckRequest>, why: Unmoved) {
        let Some(req) = ack else {
            return;
        };
        let status = ack::unmoved(why);
        let this = self.clone();
        tokio::spawn(async move {
            let r = this.acknowledge(&req.uri, &req.body(status.clone())).await;
            match r {
                Ok(code) => {
                    tracing::info!(uri = %req.uri, af_status = %status, ?why, answer = code, "notification acknowledged")
                }
                Err(e) => {
                    tracing::warn!(uri = %req.uri, af_status = %status, ?why, error = %e, "acknowledgement not taken")
                }
            }
        });
    }

    /// One acknowledgement, within the peer time limit.
    async fn acknowledge(&self, uri: &str, body: &AfAckInfo) -> Result<u16, String> {
        let limit = self.inner.timeouts.peer_ms;
        tokio::time::timeout(ms(limit), self.inner.remote.acknowledge(uri, body))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {limit} ms")))
    }

    /// Queues `ev` for `ue`, whose relocation runs here; asks a source relocation that has not
    /// reached EXECUTE and moves the UE elsewhere than `ev` says to cancel.
    fn queue(&self, db: &mut Db, ue: Ipv4Addr, ev: &EventNotification, now_us: u64) {
        let c = &self.inner.counters;
        let count = match db.hints.push(ue, ev.clone(), now_us) {
            Queued::New => {
                c.queued.fetch_add(1, Ordering::Relaxed);
                1
            }
            Queued::Coalesced(n) => {
                c.coalesced.fetch_add(1, Ordering::Relaxed);
                n
            }
        };
        let cancel = db.relocations.values().find_map(|e| match e {
            Entry::Source(m)
                if m.can_cancel()
                    && m.record().ue_ipv4_addr == ue
                    && ev.target_dnai.as_ref() != Some(&m.record().target_dnai) =>
            {
                Some(m.record().relocation_id.clone())
            }
            _ => None,
        });
        let to = ev.target_dnai.clone().unwrap_or_else(|| Dnai::new(""));
        if let Some(id) = &cancel {
            db.cancels.insert(
                id.clone(),
                format!("cancelled before EXECUTE: UE {ue} moved on to {to}"),
            );
        }
        tracing::info!(%ue, to = %to, queued = count, cancel = ?cancel, "notification queued behind a running relocation of the UE");
    }

    /// Looks up the service serving `ue` and relocates it towards `ev.targetDnai`; a service
    /// already being relocated gets the event queued instead.
    async fn run_source(&self, id: String, ev: EventNotification, ue: Ipv4Addr, start: Trigger) {
        let found = self.find_serving_service(ue).await;
        let Some((module, service)) = found else {
            self.db().starting.remove(&ue);
            self.acknowledge_now(start.ack.clone(), Unmoved::NothingServes);
            if start.control.trigger == RelocationTrigger::Notification {
                self.inner.counters.skipped.fetch_add(1, Ordering::Relaxed);
            }
            tracing::info!(%ue, trigger = ?start.control.trigger, "no registered service serves this UE: nothing to relocate");
            self.after_relocation();
            return;
        };
        let target_dnai = ev.target_dnai.clone().unwrap_or_else(|| "".into());
        let begun = {
            let mut db = self.db();
            db.starting.remove(&ue);
            if db.running_source_of(&service.service_id).is_some() {
                // Another UE of the same service started its relocation first.
                self.queue(&mut db, ue, &ev, start.notified_us);
                self.acknowledge_now(start.ack.clone(), Unmoved::Queued);
                None
            } else {
                let (m, cmds) = SourceRelocation::start(
                    self.inner.clock.now_us(),
                    SourceStart {
                        relocation_id: id.clone(),
                        local: self.inner.local.clone(),
                        candidates: candidates_for(&self.inner.peers, &target_dnai),
                        notification: ev,
                        ue,
                        target_dnai,
                        module,
                        service,
                        notified_us: start.notified_us,
                        notified_unix_us: start.notified_unix_us,
                        control: start.control,
                        ack: start.ack.clone(),
                    },
                );
                db.order.push(id.clone());
                db.relocations
                    .insert(id, Entry::Source(Box::new(m.clone())));
                Some((m, cmds))
            }
        };
        if let Some((m, cmds)) = begun {
            self.drive(m, cmds).await;
        }
    }

    /// Notes that a relocation of `service_id` ended now: for a source one (`source`), whether it
    /// failed in a row with earlier ones.
    fn ended(&self, service_id: &str, source: Option<&RelocationRecord>) {
        let now = self.inner.clock.now_us();
        let mut db = self.db();
        let e = db.ended.entry(service_id.to_owned()).or_default();
        e.at_us = now;
        if let Some(r) = source {
            match r.state {
                RelocationState::Completed => e.failures = 0,
                RelocationState::Failed if !r.control.cancelled => e.failures += 1,
                _ => {}
            }
        }
    }

    /// A relocation ended here (or never began): every queued hint whose UE has nothing running
    /// here any more is re-evaluated in the background.
    fn after_relocation(&self) {
        let ready: Vec<(Ipv4Addr, Hint)> = {
            let mut db = self.db();
            let ues: Vec<Ipv4Addr> = db.hints.ues().filter(|ue| !db.busy(*ue)).collect();
            ues.into_iter()
                .filter_map(|ue| db.hints.take(ue).map(|h| (ue, h)))
                .collect()
        };
        for (ue, hint) in ready {
            self.inner
                .counters
                .reevaluated
                .fetch_add(1, Ordering::Relaxed);
            let this = self.clone();
            let task = TaskGuard::new(&self.inner.tasks);
            tokio::spawn(async move {
                let _task = task;
                this.reevaluate(ue, hint).await;
            });
        }
    }

    /// A queued hint, re-evaluated: where does the LR say the UE is now (the latest notification
    /// when the LR cannot tell)? When that is another edge and a module here serves the UE, the
    /// service follows it (a relocation with trigger `REQUEUED`).
    async fn reevaluate(&self, ue: Ipv4Addr, hint: Hint) {
        let local = self.inner.local.dnai.clone();
        let limit = ms(self.inner.timeouts.module_ms);
        let asked = tokio::time::timeout(limit, self.inner.remote.ue_location(ue)).await;
        let (at, source) = match asked {
            Ok(Ok(Some(dnai))) => (Some(dnai), "the LR"),
            Ok(Ok(None)) => (hint.latest.target_dnai.clone(), "the latest notification"),
            Ok(Err(e)) => {
                tracing::warn!(%ue, error = %e, "LR lookup failed: going by the latest notification");
                (hint.latest.target_dnai.clone(), "the latest notification")
            }
            Err(_) => {
                tracing::warn!(%ue, "LR lookup timed out: going by the latest notification");
                (hint.latest.target_dnai.clone(), "the latest notification")
            }
        };
        let Some(at) = at.filter(|d| d != &local) else {
            tracing::info!(%ue, coalesced = hint.count, by = source, "re-evaluated: the UE is at this edge's site, nothing to move from here");
            return;
        };
        tracing::info!(%ue, at = %at, coalesced = hint.count, by = source, "re-evaluated: relocating what serves the UE here, if anything");
        {
            let mut db = self.db();
            if db.busy(ue) {
                // Something started meanwhile: keep the hint for when it ends.
                db.hints.push(ue, hint.latest, hint.first_us);
                return;
            }
            db.starting.insert(ue);
        }
        let seq = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}-{seq}", self.inner.local.smo_id);
        let ev = up_path_event(Some(&hint.latest), ue, &local, &at);
        let start = Trigger {
            control: RelocationControl {
                trigger: RelocationTrigger::Requeued,
                coalesced: hint.count,
                ..RelocationControl::default()
            },
            notified_us: self.inner.clock.now_us(),
            notified_unix_us: model::ran::unix_now_us(),
            ack: None,
        };
        self.run_source(id, ev, ue, start).await;
    }

    /// Asks every registered module (at once) for the service serving `ue`.
    async fn find_serving_service(&self, ue: Ipv4Addr) -> Option<(ServiceModule, Service)> {
        let modules: Vec<ServiceModule> = self.db().modules.values().cloned().collect();
        let limit = ms(self.inner.timeouts.module_ms);
        let asks = modules.into_iter().map(|m| async move {
            match tokio::time::timeout(limit, self.inner.remote.served_service(&m, ue)).await {
                Ok(Ok(Some(s))) => Some((m, s)),
                Ok(Ok(None)) => None,
                Ok(Err(e)) => {
                    tracing::warn!(module = %m.module_id, "ServedService failed: {e}");
                    None
                }
                Err(_) => {
                    tracing::warn!(module = %m.module_id, "ServedService timed out");
                    None
                }
            }
        });
        let found = join_all(asks).await;
        found.into_iter().flatten().next()
    }

    /// Runs the source machine's commands until it is done, persisting after every step.
    async fn drive(&self, mut m: SourceRelocation, mut cmds: Vec<SourceCommand>) {
        self.save_source(&m);
        let t = self.inner.timeouts;
        while !cmds.is_empty() {
            let mut event = None;
            for cmd in std::mem::take(&mut cmds) {
                match cmd {
                    SourceCommand::CallPeer { peer, message } => {
                        let r = tokio::time::timeout(
                            ms(t.peer_ms),
                            self.inner.remote.call_peer(&peer, &message),
                        )
                        .await
                        .unwrap_or_else(|_| Err(format!("no answer within {} ms", t.peer_ms)));
                        event = Some(SourceEvent::Peer(r));
                    }
                    SourceCommand::ApplyFlows(set) => {
                        event = Some(SourceEvent::Flows(self.apply_flows(&set).await));
                    }
                    SourceCommand::Execute { module, request } => {
                        let r = tokio::time::timeout(
                            ms(t.execute_ms),
                            self.inner.remote.execute(&module, &request),
                        )
                        .await
                        .unwrap_or_else(|_| {
                            Err(ExecuteFailure::Unknown(format!(
                                "no answer within {} ms",
                                t.execute_ms
                            )))
                        });
                        event = Some(SourceEvent::Executed(r));
                    }
                    SourceCommand::CheckServiceLocal { module, service_id } => {
                        let r = tokio::time::timeout(
                            ms(t.module_ms),
                            self.inner.remote.services(&module),
                        )
                        .await
                        .unwrap_or_else(|_| Err(format!("no answer within {} ms", t.module_ms)))
                        .map(|list| list.iter().any(|s| s.service_id == service_id));
                        event = Some(SourceEvent::ServiceLocal(r));
                    }
                    SourceCommand::ServiceMoved { service_id } => {
                        self.db().services.remove(&service_id);
                        if let Err(e) = self.inner.store.delete_service(&service_id) {
                            tracing::error!("{e}");
                        }
                    }
                    SourceCommand::Wait {
                        ms: pause,
                        phase,
                        why,
                    } => {
                        tracing::info!(
                            relocation = %m.record().relocation_id,
                            phase = %phase,
                            retry_in_ms = pause,
                            redrives = m.record().control.redrives,
                            "{why}: sending it again"
                        );
                        tokio::time::sleep(ms(pause)).await;
                        event = Some(SourceEvent::Waited);
                    }
                    SourceCommand::Acknowledge { uri, body } => {
                        let r = self.acknowledge(&uri, &body).await;
                        tracing::info!(
                            relocation = %m.record().relocation_id,
                            %uri,
                            af_status = %body.ack_result.af_status,
                            answer = ?r,
                            "notification acknowledged"
                        );
                        event = Some(SourceEvent::Acknowledged(r));
                    }
                    SourceCommand::Done => {}
                }
            }
            if let Some(ev) = event {
                cmds = m.handle(self.inner.clock.now_us(), ev);
            }
            let cancel = self.db().cancels.remove(&m.record().relocation_id);
            if let Some(cause) = cancel {
                if m.can_cancel() {
                    tracing::info!(relocation = %m.record().relocation_id, %cause, "relocation cancelled");
                    self.inner
                        .counters
                        .cancelled
                        .fetch_add(1, Ordering::Relaxed);
                    cmds = m.cancel(self.inner.clock.now_us(), cause);
                }
            }
            self.save_source(&m);
        }
        let r = m.record();
        tracing::info!(
            relocation = %r.relocation_id,
            state = ?r.state,
            total_us = ?r.total_us,
            cause = ?r.cause,
            "relocation ended"
        );
        self.ended(&r.service.service_id, Some(r));
        self.after_relocation();
    }

    /// Applies a relocation's flow set on this edge's switch, logging what it cost.
    async fn apply_flows(&self, set: &FlowSet) -> Result<FlowReport, String> {
        let r = self.inner.flows.apply(set).await.map_err(|e| e.to_string());
        if let Ok(rep) = &r {
            tracing::info!(label = %set.label, took_us = rep.took.as_micros(), "flows applied");
        }
        r
    }

    fn save_source(&self, m: &SourceRelocation) {
        self.save(
            StoredRelocation::Source(Box::new(m.clone())),
            Entry::Source(Box::new(m.clone())),
        );
    }

    /// Persists a relocation, then makes it what the API shows.
    fn save(&self, stored: StoredRelocation, entry: Entry) {
        let id = entry.record().relocation_id.clone();
        if let Err(e) = self.inner.store.put_relocation(&id, &stored) {
            tracing::error!("{e}");
        }
        self.db().relocations.insert(id, entry);
    }

    // ----- peer network interface (target side) -----

    /// One peer-protocol message from a source SMO; the answer to send back.
    pub async fn on_peer_message(&self, msg: &PeerRelocationMessage) -> PeerRelocationAnswer {
        let _one_at_a_time = self.inner.target_lock.lock().await;
        let now = self.inner.clock.now_us();
        let (modules, used) = {
            let db = self.db();
            let modules: Vec<ServiceModule> = db.modules.values().cloned().collect();
            let used = db
                .services
                .values()
                .fold(ResourceRequirements::default(), |a, s| {
                    let r = s.service.resource_requirements;
                    ResourceRequirements {
                        cpu_millis: a.cpu_millis.saturating_add(r.cpu_millis),
                        memory_mb: a.memory_mb.saturating_add(r.memory_mb),
                        disk_mb: a.disk_mb.saturating_add(r.disk_mb),
                    }
                });
            (modules, used)
        };
        let ctx = TargetContext {
            modules: &modules,
            capacity: self.inner.capacity,
            used,
        };
        let existing = match self.db().relocations.get(&msg.relocation_id) {
            Some(Entry::Target(m)) => Some(Ok((**m).clone())),
            Some(Entry::Source(_)) => Some(Err(())),
            None => None,
        };
        let (mut m, step) = match existing {
            Some(Ok(mut m)) => {
                let step = m.on_message(now, msg, ctx);
                (m, step)
            }
            Some(Err(())) => {
                return refuse(msg, "this SMO is the source of that relocation");
            }
            None if matches!(
                msg.relocation_phase,
                RelocationPhase::Initiate | RelocationPhase::Failure
            ) =>
            {
                let (m, step) = TargetRelocation::start(
                    now,
                    model::ran::unix_now_us(),
                    self.inner.local.clone(),
                    msg,
                    ctx,
                );
                let id = msg.relocation_id.clone();
                self.db().order.push(id);
                (m, step)
            }
            None => return refuse(msg, "unknown relocation"),
        };
        let answer = self.target_step(&mut m, step).await;
        self.save_target(&m);
        if m.is_done() {
            self.ended(&m.record().service.service_id, None);
            self.after_relocation();
        }
        answer
    }

    /// Performs a target step: the answer as it is, or the flows applied and their result fed
    /// back (with its effects). The caller holds the target lock and saves `m` afterwards.
    async fn target_step(
        &self,
        m: &mut TargetRelocation,
        step: TargetStep,
    ) -> PeerRelocationAnswer {
        match step {
            TargetStep::Answer(a) => a,
            TargetStep::Apply(set) => {
                self.save_target(m);
                let r = self.apply_flows(&set).await;
                let (a, effects) = m.on_flows(self.inner.clock.now_us(), r);
                for e in effects {
                    match e {
                        TargetEffect::ServiceArrived { module_id, service } => {
                            let hs = HostedService { module_id, service };
                            if let Err(e) = self.inner.store.put_service(&hs) {
                                tracing::error!("{e}");
                            }
                            self.db().services.insert(hs.service.service_id.clone(), hs);
                        }
                    }
                }
                a
            }
        }
    }

    // ----- service-mobility API: the target module's arrival -----

    /// The target's service module reports that the service of relocation `relocation_id` is
    /// about to resume here: the new path is installed now (EXECUTE at the target, see
    /// [`TargetRelocation::on_arrival`]). `Ok` once the bundle is committed.
    pub async fn on_arrival(
        &self,
        relocation_id: &str,
        arrival: &ServiceArrival,
    ) -> Result<(), NegotiatorError> {
        let _one_at_a_time = self.inner.target_lock.lock().await;
        let existing = match self.db().relocations.get(relocation_id) {
            Some(Entry::Target(m)) => Some((**m).clone()),
            _ => None,
        };
        let Some(mut m) = existing else {
            return Err(NegotiatorError::NoTargetRelocation(relocation_id.into()));
        };
        let step = m
            .on_arrival(self.inner.clock.now_us(), &arrival.service_id)
            .map_err(NegotiatorError::Conflict)?;
        let answer = self.target_step(&mut m, step).await;
        self.save_target(&m);
        tracing::info!(
            relocation = %relocation_id,
            service = %arrival.service_id,
            result = ?answer.result,
            took_us = answer.took_us,
            "service arrival: new path"
        );
        match answer.result {
            PeerResult::Proceed => Ok(()),
            PeerResult::Fail => Err(NegotiatorError::Flows(
                answer
                    .cause
                    .unwrap_or_else(|| "new path not installed".into()),
            )),
        }
    }

    fn save_target(&self, m: &TargetRelocation) {
        self.save(
            StoredRelocation::Target(Box::new(m.clone())),
            Entry::Target(Box::new(m.clone())),
        );
    }

    // ----- service-mobility API (service modules) -----

    /// Registers a module; its id. A module that registers again with the same `notifAddress`
    /// (it was killed and came back without de-registering) gets its old id and its new
    /// registration: one module, not a live one and a dead one.
    pub fn register(
        &self,
        reg: ServiceModuleRegistration,
    ) -> Result<ServiceModule, NegotiatorError> {
        check_registration(&reg, &self.inner.callbacks)?;
        let known = self
            .db()
            .modules
            .values()
            .find(|m| m.registration.notif_address == reg.notif_address)
            .map(|m| m.module_id.clone());
        let module_id = known.unwrap_or_else(|| {
            let seq = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
            format!("module-{seq}")
        });
        let m = ServiceModule {
            module_id,
            registration: reg,
        };
        self.inner.store.put_module(&m)?;
        self.db().modules.insert(m.module_id.clone(), m.clone());
        Ok(m)
    }

    /// Replaces a module's registration.
    pub fn update(
        &self,
        id: &str,
        reg: ServiceModuleRegistration,
    ) -> Result<ServiceModule, NegotiatorError> {
        check_registration(&reg, &self.inner.callbacks)?;
        if !self.db().modules.contains_key(id) {
            return Err(NegotiatorError::NoModule(id.into()));
        }
        let m = ServiceModule {
            module_id: id.into(),
            registration: reg,
        };
        self.inner.store.put_module(&m)?;
        self.db().modules.insert(id.into(), m.clone());
        Ok(m)
    }

    /// De-registers a module (its services leave the service database).
    pub fn deregister(&self, id: &str) -> Result<(), NegotiatorError> {
        if !self.db().modules.contains_key(id) {
            return Err(NegotiatorError::NoModule(id.into()));
        }
        self.inner.store.delete_module(id)?;
        let gone: Vec<String> = {
            let mut db = self.db();
            db.modules.remove(id);
            let gone = db
                .services
                .values()
                .filter(|s| s.module_id == id)
                .map(|s| s.service.service_id.clone())
                .collect::<Vec<_>>();
            for s in &gone {
                db.services.remove(s);
            }
            gone
        };
        for s in gone {
            self.inner.store.delete_service(&s)?;
        }
        Ok(())
    }

    pub fn module(&self, id: &str) -> Option<ServiceModule> {
        self.db().modules.get(id).cloned()
    }

    pub fn modules(&self) -> Vec<ServiceModule> {
        self.db().modules.values().cloned().collect()
    }

    /// The service database.
    pub fn hosted_services(&self) -> Vec<HostedService> {
        self.db().services.values().cloned().collect()
    }

    // ----- stopwatch -----

    /// Every relocation this SMO took part in, oldest first.
    pub fn relocations(&self) -> Vec<RelocationRecord> {
        let db = self.db();
        db.order
            .iter()
            .filter_map(|id| db.relocations.get(id).map(|e| e.record().clone()))
            .collect()
    }

    pub fn relocation(&self, id: &str) -> Option<RelocationRecord> {
        self.db().relocations.get(id).map(|e| e.record().clone())
    }

    /// Notifications that found no service to relocate.
    pub fn skipped(&self) -> u64 {
        self.inner.counters.skipped.load(Ordering::Relaxed)
    }

    /// What became of the notifications so far.
    pub fn notification_counts(&self) -> NotificationCounts {
        let c = &self.inner.counters;
        NotificationCounts {
            skipped: c.skipped.load(Ordering::Relaxed),
            queued: c.queued.load(Ordering::Relaxed),
            coalesced: c.coalesced.load(Ordering::Relaxed),
            cancelled: c.cancelled.load(Ordering::Relaxed),
            reevaluated: c.reevaluated.load(Ordering::Relaxed),
        }
    }

    /// Reconciler rounds so far, and what they corrected or could not.
    pub fn reconciler_counts(&self) -> (u64, ReconcilerTally) {
        let c = &self.inner.counters;
        let tally = c
            .reconciler
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        (c.reconciler_runs.load(Ordering::Relaxed), tally)
    }

    /// UEs with a notification queued behind a running relocation.
    pub fn queued_hints(&self) -> usize {
        self.db().hints.len()
    }

    /// Waits until no source relocation is running (tests, shutdown), including those whose
    /// notification arrived but whose task has not recorded them yet.
    pub async fn idle(&self) {
        loop {
            let running = self.inner.tasks.load(Ordering::SeqCst) > 0
                || self.db().relocations.values().any(|e| {
                    matches!(e, Entry::Source(m) if m.record().state == RelocationState::Running)
                });
            if !running {
                return;
            }
            tokio::time::sleep(ms(5)).await;
        }
    }
}

/// When and how a source relocation starts.
#[derive(Debug, Clone)]
struct Trigger {
    control: RelocationControl,
    /// When its notification (or re-evaluation) came: the driver's clock and the wall clock, µs.
    notified_us: u64,
    notified_unix_us: u64,
    /// The acknowledgement its notification asked for.
    ack: Option<AckRequest>,
}

/// An `UP_PATH_CH` event moving `ue` from `from` to `to`, for a relocation the SMO starts itself
/// (a re-evaluation, the reconciler): `base`'s other fields (the SMF's latest notification for
/// the UE), or a fresh LATE event stamped now.
pub fn up_path_event(
    base: Option<&EventNotification>,
    ue: Ipv4Addr,
    from: &Dnai,
    to: &Dnai,
) -> EventNotification {
    let mut ev = base.cloned().unwrap_or_else(|| {
        let now = model::ran::unix_now_us();
        let at = model::common::DateTime::from_unix(
            i64::try_from(now / 1_000_000).unwrap_or(i64::MAX),
            u32::try_from(now % 1_000_000).unwrap_or(0) * 1_000,
        )
        .unwrap_or_else(|| {
            model::common::DateTime::from_unix(0, 0).unwrap_or_else(|| unreachable!("epoch"))
        });
        let mut ev = EventNotification::new(SmfEvent::UpPathCh, at);
        ev.dnai_chg_type = Some(model::common::DnaiChangeType::Late);
        ev
    });
    ev.source_dnai = Some(from.clone());
    ev.target_dnai = Some(to.clone());
    ev.source_ue_ipv4_addr = Some(ue);
    ev
}

fn refuse(msg: &PeerRelocationMessage, cause: &str) -> PeerRelocationAnswer {
    PeerRelocationAnswer {
        relocation_id: msg.relocation_id.clone(),
        relocation_phase: msg.relocation_phase,
        result: PeerResult::Fail,
        cause: Some(cause.into()),
        target_module_address: None,
        took_us: 0,
        flow_install_us: None,
    }
}

/// A registration's callbacks point into the deployment's networks, its address is usable.
fn check_registration(
    reg: &ServiceModuleRegistration,
    callbacks: &CallbackNetworks,
) -> Result<(), NegotiatorError> {
    for (field, uri) in [
        ("getServiceNotifUri", &reg.get_service_notif_uri),
        ("servedServiceNotifUri", &reg.served_service_notif_uri),
        ("executeNotifUri", &reg.execute_notif_uri),
    ] {
        callbacks.check(field, uri)?;
    }
    if reg.notif_address.ip().is_unspecified() || reg.notif_address.port() == 0 {
        return Err(BadCallback {
            field: "notifAddress",
            reason: format!("must be a reachable ip:port, got `{}`", reg.notif_address),
        }
        .into());
    }
    Ok(())
}

/// Awaits all futures concurrently (no extra dependency for one use).
async fn join_all<T, Fut: Future<Output = T>>(futs: impl IntoIterator<Item = Fut>) -> Vec<T> {
    let mut set = Vec::new();
    for f in futs {
        set.push(Box::pin(f));
    }
    let mut out: Vec<Option<T>> = (0..set.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in set.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

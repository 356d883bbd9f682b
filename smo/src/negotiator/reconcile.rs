//! The reconciler's driver: each round observes (the switch's SMO flows first, then the records,
//! every module's GetServices, the LR for the UEs that matter), lets
//! [`crate::core::reconcile::decide`] say what is off, and corrects it — flows on the switch, a
//! relocation (trigger `RECONCILER`), the service database. Every correction is logged
//! (`reconciler: <action>`) and counted (`smo_reconciler_corrections_total{action}`); what could
//! not be observed or corrected is counted as an error (`smo_reconciler_errors_total{what}`).
//!
//! The flows are read before the records: a relocation's record exists before any of its flows,
//! so a cookie seen on the switch always has its record in the snapshot. A correction for a
//! service is skipped when a relocation of it started since the snapshot.

use super::{
    join_all, ms, up_path_event, Entry, Negotiator, ReconcilerTally, Remote, TaskGuard, Trigger,
};
use crate::core::reconcile::{decide, Correction, Hosted, Observed};
use crate::routing::FlowProgrammer;
use crate::store::HostedService;
use model::common::Dnai;
use model::smo::{RelocationControl, RelocationState, RelocationTrigger, ServiceModule};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::time::Duration;

impl<R: Remote, F: FlowProgrammer> Negotiator<R, F> {
    /// Starts the reconciler: a round now, then one every `period`, for as long as the runtime
    /// runs.
    pub fn spawn_reconciler(&self, period: Duration) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                this.reconcile().await;
            }
        })
    }

    /// One round; returns the corrections it made (or tried to). Put off (nothing observed, not
    /// counted) while a relocation that began less than `defer_ms` ago runs here.
    pub async fn reconcile(&self) -> Vec<Correction> {
        let now = self.inner.clock.now_us();
        let busy = self.db().relocations.values().any(|e| {
            e.running_since_us()
                .is_some_and(|t| now.saturating_sub(t) < self.inner.policy.defer_us)
        });
        if busy {
            tracing::debug!("reconciler: a relocation runs; round put off");
            return Vec::new();
        }
        let c = &self.inner.counters;
        c.reconciler_runs.fetch_add(1, Ordering::Relaxed);
        let flows = match self.inner.flows.flows().await {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "reconciler: cannot read the switch's flows; round skipped");
                self.tally_error("switch");
                return Vec::new();
            }
        };
        let (modules, database, relocations, ended) = {
            let db = self.db();
            let modules: Vec<ServiceModule> = db.modules.values().cloned().collect();
            let database: BTreeMap<String, String> = db
                .services
                .values()
                .map(|h| (h.service.service_id.clone(), h.module_id.clone()))
                .collect();
            let relocations: Vec<_> = db
                .order
                .iter()
                .filter_map(|id| db.relocations.get(id).map(|e| e.record().clone()))
                .collect();
            (modules, database, relocations, db.ended.clone())
        };
        let limit = ms(self.inner.timeouts.module_ms);
        let asks = modules.iter().map(|m| async move {
            let r = tokio::time::timeout(limit, self.inner.remote.services(m)).await;
            (m, r)
        });
        let mut hosted = Vec::new();
        let mut all_modules_answered = true;
        for (m, r) in join_all(asks).await {
            match r {
                Ok(Ok(list)) => hosted.extend(list.into_iter().map(|service| Hosted {
                    module_id: m.module_id.clone(),
                    service,
                })),
                Ok(Err(e)) => {
                    tracing::warn!(module = %m.module_id, error = %e, "reconciler: GetServices failed");
                    all_modules_answered = false;
                    self.tally_error("module");
                }
                Err(_) => {
                    tracing::warn!(module = %m.module_id, "reconciler: GetServices timed out");
                    all_modules_answered = false;
                    self.tally_error("module");
                }
            }
        }
        // The UEs that matter: those the hosted services serve, and those of failed relocations
        // (whose trombone may or may not still be the path).
        let mut ues: BTreeSet<Ipv4Addr> = hosted
            .iter()
            .flat_map(|h| h.service.ue_ipv4_addrs.iter().copied())
            .collect();
        ues.extend(
            relocations
                .iter()
                .filter(|r| r.state == RelocationState::Failed)
                .map(|r| r.ue_ipv4_addr),
        );
        let lookups = ues.iter().map(|ue| async move {
            let r = tokio::time::timeout(limit, self.inner.remote.ue_location(*ue)).await;
            (*ue, r)
        });
        let mut locations: BTreeMap<Ipv4Addr, Dnai> = BTreeMap::new();
        for (ue, r) in join_all(lookups).await {
            match r {
                Ok(Ok(Some(d))) => {
                    locations.insert(ue, d);
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => {
                    tracing::debug!(%ue, error = %e, "reconciler: LR lookup failed");
                    self.tally_error("lr");
                }
                Err(_) => self.tally_error("lr"),
            }
        }
        let peer_dnais: BTreeSet<Dnai> = self.inner.peers.iter().map(|p| p.dnai.clone()).collect();
        let corrections = decide(&Observed {
            local: &self.inner.local,
            now_us: self.inner.clock.now_us(),
            hosted: &hosted,
            all_modules_answered,
            database: &database,
            relocations: &relocations,
            locations: &locations,
            flows: &flows,
            peer_dnais: &peer_dnais,
            ended: &ended,
            policy: self.inner.policy,
        });
        for c in &corrections {
            self.correct(c).await;
        }
        corrections
    }

    async fn correct(&self, c: &Correction) {
        if let Some(id) = c.service_id() {
            if self.db().running_source_of(id).is_some() || self.target_running(id) {
                tracing::debug!(service = %id, action = c.action(), "reconciler: a relocation started meanwhile; skipped");
                return;
            }
        }
        match c {
            Correction::Flows {
                service_id,
                relocation_id,
                set,
                ..
            } => match self.inner.flows.apply(set).await {
                Ok(r) => {
                    tracing::info!(action = c.action(), service = ?service_id, relocation = ?relocation_id, flow_mods = r.flow_mods, label = %set.label, "reconciler: {}", c.action());
                    self.tally(c.action());
                }
                Err(e) => {
                    tracing::warn!(action = c.action(), service = ?service_id, relocation = ?relocation_id, error = %e, "reconciler: correction failed");
                    self.tally_error("apply");
                }
            },
            Correction::StartRelocation {
                service, ue, to, ..
            } => {
                {
                    let mut db = self.db();
                    if db.busy(*ue) {
                        return;
                    }
                    db.starting.insert(*ue);
                }
                tracing::info!(action = c.action(), service = %service.service_id, %ue, to = %to, "reconciler: {}", c.action());
                self.tally(c.action());
                let seq = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
                let id = format!("{}-{seq}", self.inner.local.smo_id);
                let ev = up_path_event(None, *ue, &self.inner.local.dnai, to);
                let start = Trigger {
                    control: RelocationControl {
                        trigger: RelocationTrigger::Reconciler,
                        ..RelocationControl::default()
                    },
                    notified_us: self.inner.clock.now_us(),
                    notified_unix_us: model::ran::unix_now_us(),
                    ack: None,
                };
                let this = self.clone();
                let ue = *ue;
                let task = TaskGuard::new(&self.inner.tasks);
                tokio::spawn(async move {
                    let _task = task;
                    this.run_source(id, ev, ue, start).await;
                });
            }
            Correction::Adopt { module_id, service } => {
                let hs = HostedService {
                    module_id: module_id.clone(),
                    service: service.clone(),
                };
                if let Err(e) = self.inner.store.put_service(&hs) {
                    tracing::error!("{e}");
                }
                self.db().services.insert(service.service_id.clone(), hs);
                tracing::info!(action = c.action(), service = %service.service_id, module = %module_id, "reconciler: {}", c.action());
                self.tally(c.action());
            }
            Correction::Forget { service_id } => {
                self.db().services.remove(service_id);
                if let Err(e) = self.inner.store.delete_service(service_id) {
                    tracing::error!("{e}");
                }
                tracing::info!(action = c.action(), service = %service_id, "reconciler: {}", c.action());
                self.tally(c.action());
            }
        }
    }

    /// Whether a relocation of `service_id` with this SMO as its target runs.
    fn target_running(&self, service_id: &str) -> bool {
        self.db().relocations.values().any(|e| {
            matches!(e, Entry::Target(m) if m.record().state == RelocationState::Running
                && m.record().service.service_id == service_id)
        })
    }

    fn tally(&self, action: &'static str) {
        self.count(action, |t| &mut t.corrections);
    }

    fn tally_error(&self, what: &'static str) {
        self.count(what, |t| &mut t.errors);
    }

    fn count(
        &self,
        key: &'static str,
        table: impl FnOnce(&mut ReconcilerTally) -> &mut BTreeMap<&'static str, u64>,
    ) {
        let mut t = self
            .inner
            .counters
            .reconciler
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *table(&mut t).entry(key).or_default() += 1;
    }
}

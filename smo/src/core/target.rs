//! The target side of one relocation: [`TargetRelocation`] answers the source's messages phase by
//! phase and the arrival its own service module reports.

use super::{cookie_for, elapsed, note, Local};
use crate::routing::rules::{self, ServiceAt};
use crate::routing::{FlowReport, FlowSet};
use model::common::Dnai;
use model::smo::{
    PeerRelocationAnswer, PeerRelocationMessage, PeerResult, PhaseTiming, RelocationPhase as Phase,
    RelocationRecord, RelocationRole, RelocationState, ResourceRequirements, Service,
    ServiceModule,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// What the target knows about its own edge when it answers.
#[derive(Debug, Clone, Copy)]
pub struct TargetContext<'a> {
    pub modules: &'a [ServiceModule],
    /// What the edge can host in all.
    pub capacity: ResourceRequirements,
    /// What the services it hosts take.
    pub used: ResourceRequirements,
}

/// What the target's driver does next for one message.
#[derive(Debug, Clone, PartialEq)]
pub enum TargetStep {
    /// Send this answer.
    Answer(PeerRelocationAnswer),
    /// Apply these flows, then feed the result to [`TargetRelocation::on_flows`].
    Apply(FlowSet),
}

/// Side effects of a finished target phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetEffect {
    /// The service now runs here, hosted by `module_id`: add it to the service database.
    ServiceArrived { module_id: String, service: Service },
}

/// The target side of one relocation: answers the source's messages phase by phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetRelocation {
    record: RelocationRecord,
    local: Local,
    /// The phase whose flows are being applied, and when its message arrived.
    pending: Option<(Phase, u64)>,
    started_us: u64,
    new_path_installed: bool,
    /// The target's module reported the service's arrival ([`TargetRelocation::on_arrival`]):
    /// EXECUTE's flows were applied then, and the peer's EXECUTE only confirms them.
    #[serde(default)]
    arrived: bool,
    /// The source's EXECUTE came: the source knows the service moved, so it will not roll back.
    #[serde(default)]
    peer_executed: bool,
    /// The PROCEED answer given to each phase: a phase message that comes again (its answer was
    /// lost, the source re-drives it) gets the same answer and changes nothing.
    #[serde(default)]
    answers: BTreeMap<Phase, PeerRelocationAnswer>,
}

impl TargetRelocation {
    /// A relocation the source opens with `msg` (INITIATE, or FAILURE for one this SMO never
    /// saw: it still installs the trombone).
    pub fn start(
        now_us: u64,
        now_unix_us: u64,
        local: Local,
        msg: &PeerRelocationMessage,
        ctx: TargetContext<'_>,
    ) -> (Self, TargetStep) {
        let n = &msg.notification;
        let record = RelocationRecord {
            relocation_id: msg.relocation_id.clone(),
            role: RelocationRole::Target,
            state: RelocationState::Running,
            phase: msg.relocation_phase,
            ue_ipv4_addr: n
                .source_ue_ipv4_addr
                .or(n.target_ue_ipv4_addr)
                .unwrap_or(Ipv4Addr::UNSPECIFIED),
            source_dnai: n.source_dnai.clone().unwrap_or_else(|| Dnai::new("")),
            target_dnai: n.target_dnai.clone().unwrap_or_else(|| local.dnai.clone()),
            peer: None,
            service: msg.service.clone(),
            module_id: None,
            target_module_address: None,
            started_unix_us: now_unix_us,
            phases: Vec::new(),
            peer_phases: Vec::new(),
            total_us: None,
            execute: None,
            cause: None,
            control: Default::default(),
            af_ack: None,
        };
        let mut m = Self {
            record,
            local,
            pending: None,
            started_us: now_us,
            new_path_installed: false,
            arrived: false,
            peer_executed: false,
            answers: BTreeMap::new(),
        };
        let step = m.on_message(now_us, msg, ctx);
        (m, step)
    }

    pub fn record(&self) -> &RelocationRecord {
        &self.record
    }

    /// When the source's first message arrived, µs on the driver's clock.
    pub fn started_us(&self) -> u64 {
        self.started_us
    }

    pub fn is_done(&self) -> bool {
        self.record.state != RelocationState::Running && self.pending.is_none()
    }

    /// One message from the source.
    pub fn on_message(
        &mut self,
        now_us: u64,
        msg: &PeerRelocationMessage,
        ctx: TargetContext<'_>,
    ) -> TargetStep {
        let phase = msg.relocation_phase;
        if msg.relocation_id != self.record.relocation_id {
            return TargetStep::Answer(self.reject(phase, "wrong relocation".into()));
        }
        if let Some((interrupted, _)) = self.pending.take() {
            // The driver hands one relocation one message at a time, so a phase still pending
            // here was interrupted before it answered (the SMO restarted, or the source gave up
            // and the call was dropped): its set is either all in or not at all. Forget it; the
            // phase this message asks for (FAILURE, COMPLETE, or the same one again) installs
            // what it needs itself.
            self.note(format!("{interrupted} interrupted before it answered"));
        }
        if let Some(answered) = self.answers.get(&phase) {
            // The same message again (relocation id + phase): the same answer. Only PROCEEDs are
            // kept; a phase that failed (e.g. its flows) is handled again.
            if matches!(phase, Phase::Execute | Phase::Complete) {
                self.peer_executed = true;
            }
            return TargetStep::Answer(answered.clone());
        }
        if phase == Phase::Failure {
            if self.peer_executed || self.record.state == RelocationState::Completed {
                // The service runs here: tromboning it back to the source would cut it off.
                // (An arrival alone does not count: the module may still have rolled back to the
                // source after reporting it, and then FAILURE is right to trombone again.)
                return TargetStep::Answer(
                    self.reject(phase, "the service already arrived here".into()),
                );
            }
            if let Some(c) = &msg.cause {
                self.note(format!("source: {c}"));
            }
            return self.begin_apply(phase, now_us, self.trombone_set("failure-target"));
        }
        if self.record.state != RelocationState::Running {
            return TargetStep::Answer(self.reject(
                phase,
                format!("relocation already ended ({:?})", self.record.state),
            ));
        }
        if phase == Phase::Execute && self.arrived {
            self.peer_executed = true;
            // The module reported the arrival first: EXECUTE's flows are in (or failed then).
            if self.new_path_installed {
                return TargetStep::Answer(self.confirm_execute());
            }
            if self.record.phases.last().map(|t| t.phase) == Some(Phase::Execute) {
                self.record.phases.pop();
            }
            return self.begin_apply(phase, now_us, self.new_path_set());
        }
        let expected_next = match self.record.phases.last() {
            None => Phase::Initiate,
            Some(t) => match t.phase {
                Phase::Initiate => Phase::Validate,
                Phase::Validate => Phase::Prepare,
                Phase::Prepare => Phase::Execute,
                _ => Phase::Complete,
            },
        };
        // COMPLETE may follow PREPARE when the source could not reach us at EXECUTE.
        let in_order =
            phase == expected_next || (phase == Phase::Complete && expected_next == Phase::Execute);
        if !in_order {
            return TargetStep::Answer(self.reject(
                phase,
                format!("{phase} out of order (expected {expected_next})"),
            ));
        }
        match phase {
            Phase::Initiate => {
                let found = ctx
                    .modules
                    .iter()
                    .find(|m| m.registration.relocation_type == msg.relocation_type);
                let result = match found {
                    Some(m) => {
                        self.record.module_id = Some(m.module_id.clone());
                        self.record.target_module_address = Some(m.registration.notif_address);
                        Ok(())
                    }
                    None => Err(format!(
                        "no service module of type {} is registered here",
                        msg.relocation_type
                    )),
                };
                TargetStep::Answer(self.answer_now(phase, now_us, result))
            }
            Phase::Validate => {
                let need = msg.service.resource_requirements;
                let free = ResourceRequirements {
                    cpu_millis: ctx.capacity.cpu_millis.saturating_sub(ctx.used.cpu_millis),
                    memory_mb: ctx.capacity.memory_mb.saturating_sub(ctx.used.memory_mb),
                    disk_mb: ctx.capacity.disk_mb.saturating_sub(ctx.used.disk_mb),
                };
                let result = if need.fits(&free) {
                    Ok(())
                } else {
                    Err(format!(
                        "not enough resources: service needs {need:?}, free {free:?}"
                    ))
                };
                TargetStep::Answer(self.answer_now(phase, now_us, result))
            }
            // The network holds the UE's path switch for the source's acknowledgement: the UE's
            // traffic keeps the old path, no trombone to carry it (make-before-break).
            Phase::Prepare if msg.path_held => {
                TargetStep::Answer(self.answer_now(phase, now_us, Ok(())))
            }
            Phase::Prepare => self.begin_apply(phase, now_us, self.trombone_set("trombone-target")),
            Phase::Execute => {
                self.peer_executed = true;
                self.begin_apply(phase, now_us, self.new_path_set())
            }
            Phase::Complete => {
                self.peer_executed = true;
                let set = if self.new_path_installed {
                    FlowSet::default()
                } else {
                    self.new_path_set()
                };
                self.begin_apply(phase, now_us, set)
            }
            Phase::Failure => TargetStep::Answer(self.answer_now(phase, now_us, Ok(()))),
        }
    }

    /// The target's service module reports that the service is about to resume here (the source
    /// committed the migration): EXECUTE begins now, with the new path's flows, so the UE's
    /// packets reach the service from its first one instead of following the trombone back to
    /// the source until the source's EXECUTE arrives. `Err` (nothing changed) when the service
    /// cannot arrive now: before PREPARE completed, after the relocation failed, or for another
    /// service. A repeated arrival (or one after the new path is in) is answered at once.
    pub fn on_arrival(&mut self, now_us: u64, service_id: &str) -> Result<TargetStep, String> {
        if service_id != self.record.service.service_id {
            return Err(format!(
                "relocation {} moves service {}, not {service_id}",
                self.record.relocation_id, self.record.service.service_id
            ));
        }
        if self.new_path_installed {
            self.arrived = true;
            return Ok(TargetStep::Answer(self.confirm_execute()));
        }
        if self.record.state != RelocationState::Running {
            return Err(format!(
                "relocation already ended ({:?})",
                self.record.state
            ));
        }
        if let Some((interrupted, _)) = self.pending.take() {
            // As in `on_message`: one step at a time, so this one was interrupted.
            self.note(format!("{interrupted} interrupted before it answered"));
        }
        match self.record.phases.last().map(|t| t.phase) {
            Some(Phase::Prepare) => {
                self.arrived = true;
                Ok(self.begin_apply(Phase::Execute, now_us, self.new_path_set()))
            }
            // The arrival's flows failed: try again (the failed timing is replaced).
            Some(Phase::Execute) if self.arrived => {
                self.record.phases.pop();
                Ok(self.begin_apply(Phase::Execute, now_us, self.new_path_set()))
            }
            Some(p) => Err(format!(
                "the service cannot arrive after {p} (PREPARE must be the last phase)"
            )),
            None => Err("the service cannot arrive before PREPARE".into()),
        }
    }

    /// EXECUTE's answer when the arrival already installed the new path: PROCEED with the
    /// timing recorded then (no flows now, no second timing).
    fn confirm_execute(&self) -> PeerRelocationAnswer {
        let timing = self
            .record
            .phases
            .iter()
            .rev()
            .find(|t| t.phase == Phase::Execute);
        PeerRelocationAnswer {
            relocation_id: self.record.relocation_id.clone(),
            relocation_phase: Phase::Execute,
            result: PeerResult::Proceed,
            cause: None,
            target_module_address: None,
            took_us: timing.map_or(0, |t| t.took_us),
            flow_install_us: timing.and_then(|t| t.flow_install_us),
        }
    }

    /// The result of the flows [`TargetStep::Apply`] asked for: the answer to send, and what to
    /// record.
    pub fn on_flows(
        &mut self,
        now_us: u64,
        result: Result<FlowReport, String>,
    ) -> (PeerRelocationAnswer, Vec<TargetEffect>) {
        let Some((phase, arrived_us)) = self.pending.take() else {
            return (
                self.reject(self.record.phase, "no flows pending".into()),
                Vec::new(),
            );
        };
        let (flow_us, flow_mods) = match &result {
            Ok(r) => (
                Some(u64::try_from(r.took.as_micros()).unwrap_or(u64::MAX)),
                u32::try_from(r.flow_mods).unwrap_or(u32::MAX),
            ),
            Err(_) => (None, 0),
        };
        let mut effects = Vec::new();
        let outcome = match (phase, result) {
            (Phase::Execute, Ok(_)) => {
                self.new_path_installed = true;
                Ok(())
            }
            (Phase::Complete, Ok(_)) => {
                self.new_path_installed = true;
                effects.push(TargetEffect::ServiceArrived {
                    module_id: self.record.module_id.clone().unwrap_or_default(),
                    service: self.record.service.clone(),
                });
                Ok(())
            }
            (_, Ok(_)) => Ok(()),
            (p, Err(e)) => Err(format!("{p} flows: {e}")),
        };
        let answer = self.finish_phase(phase, arrived_us, now_us, outcome, flow_us, flow_mods);
        (answer, effects)
    }

    fn begin_apply(&mut self, phase: Phase, now_us: u64, set: FlowSet) -> TargetStep {
        self.record.phase = phase;
        self.pending = Some((phase, now_us));
        TargetStep::Apply(set)
    }

    /// A FAIL answer that changes nothing here (wrong or out-of-order message).
    fn reject(&self, phase: Phase, cause: String) -> PeerRelocationAnswer {
        PeerRelocationAnswer {
            relocation_id: self.record.relocation_id.clone(),
            relocation_phase: phase,
            result: PeerResult::Fail,
            cause: Some(cause),
            target_module_address: None,
            took_us: 0,
            flow_install_us: None,
        }
    }

    fn answer_now(
        &mut self,
        phase: Phase,
        now_us: u64,
        outcome: Result<(), String>,
    ) -> PeerRelocationAnswer {
        self.finish_phase(phase, now_us, now_us, outcome, None, 0)
    }

    fn finish_phase(
        &mut self,
        phase: Phase,
        arrived_us: u64,
        now_us: u64,
        outcome: Result<(), String>,
        flow_install_us: Option<u64>,
        flow_mods: u32,
    ) -> PeerRelocationAnswer {
        let took_us = elapsed(now_us, arrived_us);
        self.record.phase = phase;
        self.record.phases.push(PhaseTiming {
            phase,
            start_us: elapsed(arrived_us, self.started_us),
            took_us,
            flow_install_us,
            flow_mods,
        });
        let (result, cause) = match outcome {
            Ok(()) => (PeerResult::Proceed, None),
            Err(e) => {
                self.note(e.clone());
                (PeerResult::Fail, Some(e))
            }
        };
        match (phase, result) {
            (Phase::Failure, _) => self.record.state = RelocationState::Failed,
            // The source fails (or, after INITIATE, asks another peer): only FAILURE may follow.
            (Phase::Initiate | Phase::Validate | Phase::Prepare, PeerResult::Fail) => {
                self.record.state = RelocationState::Failed;
            }
            (Phase::Complete, PeerResult::Proceed) => {
                self.record.state = RelocationState::Completed;
                self.record.total_us = Some(elapsed(now_us, self.started_us));
            }
            _ => {}
        }
        let answer = PeerRelocationAnswer {
            relocation_id: self.record.relocation_id.clone(),
            relocation_phase: phase,
            result,
            cause,
            target_module_address: (phase == Phase::Initiate && result == PeerResult::Proceed)
                .then_some(self.record.target_module_address)
                .flatten(),
            took_us,
            flow_install_us,
        };
        if result == PeerResult::Proceed {
            self.answers.insert(phase, answer.clone());
        }
        answer
    }

    fn service_at(&self) -> Option<ServiceAt> {
        ServiceAt::of(&self.record.service)
    }

    fn trombone_set(&self, label: &str) -> FlowSet {
        match self.service_at() {
            Some(svc) => {
                let mut set = rules::trombone_target(
                    cookie_for(&self.record.relocation_id),
                    &self.local.ports,
                    svc.ip,
                    svc.mac,
                    self.record.ue_ipv4_addr,
                );
                set.label = label.to_owned();
                set
            }
            None => FlowSet::default(),
        }
    }

    fn new_path_set(&self) -> FlowSet {
        match self.service_at() {
            Some(svc) => rules::new_path_target(
                cookie_for(&self.record.relocation_id),
                &self.local.ports,
                &svc,
            ),
            None => FlowSet::default(),
        }
    }

    fn note(&mut self, cause: String) {
        note(&mut self.record, cause);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::rules::EdgePorts;
    use model::nsmf_event_exposure::{EventNotification, SmfEvent};
    use model::smo::RelocationType;

    fn target_module() -> ServiceModule {
        super::super::test_module("module-9", "10.0.1.2:9100")
    }

    /// What the target knows: `modules`, room for anything.
    fn context(modules: &[ServiceModule]) -> TargetContext<'_> {
        TargetContext {
            modules,
            capacity: ResourceRequirements::default(),
            used: ResourceRequirements::default(),
        }
    }

    fn peer_msg(phase: Phase) -> PeerRelocationMessage {
        let at = model::common::DateTime::from_unix(0, 0).expect("epoch");
        let mut n = EventNotification::new(SmfEvent::UpPathCh, at);
        n.source_dnai = Some(Dnai::new("edge-x"));
        n.target_dnai = Some(Dnai::new("edge-y"));
        n.source_ue_ipv4_addr = Some(Ipv4Addr::new(192, 168, 1, 2));
        PeerRelocationMessage {
            relocation_id: "smo-x-1".into(),
            relocation_type: RelocationType::Test,
            relocation_phase: phase,
            notif_uri: "http://smo-x.invalid/smo-peer/v1/relocations/smo-x-1".into(),
            source_smo_id: "smo-x".into(),
            notification: n,
            service: Service {
                service_id: "svc-1".into(),
                ipv4_addr: Ipv4Addr::new(20, 0, 0, 10),
                mac_addr: "02:00:00:00:00:0a".into(),
                ovs_port: "svc1".into(),
                relocation_type: RelocationType::Test,
                resource_requirements: ResourceRequirements::default(),
                ue_ipv4_addrs: Vec::new(),
            },
            cause: None,
            path_held: false,
        }
    }

    fn flows_ok(mods: usize, us: u64) -> Result<FlowReport, String> {
        Ok(FlowReport {
            flow_mods: mods,
            took: std::time::Duration::from_micros(us),
        })
    }

    /// A target relocation through INITIATE and VALIDATE (and PREPARE when `prepare`).
    fn target(prepare: bool) -> TargetRelocation {
        let modules = [target_module()];
        let ctx = || context(&modules);
        let local = Local {
            smo_id: "smo-y".into(),
            dnai: Dnai::new("edge-y"),
            api_root: "http://smo-y.invalid".into(),
            ports: EdgePorts::testbed(),
        };
        let (mut m, step) =
            TargetRelocation::start(100, 0, local, &peer_msg(Phase::Initiate), ctx());
        assert!(matches!(step, TargetStep::Answer(a) if a.result == PeerResult::Proceed));
        let step = m.on_message(110, &peer_msg(Phase::Validate), ctx());
        assert!(matches!(step, TargetStep::Answer(a) if a.result == PeerResult::Proceed));
        if prepare {
            let step = m.on_message(120, &peer_msg(Phase::Prepare), ctx());
            assert!(matches!(step, TargetStep::Apply(s) if s.label == "trombone-target"));
            let (a, _) = m.on_flows(130, flows_ok(4, 9));
            assert_eq!(a.result, PeerResult::Proceed);
        }
        m
    }

    fn executes(m: &TargetRelocation) -> usize {
        m.record()
            .phases
            .iter()
            .filter(|t| t.phase == Phase::Execute)
            .count()
    }

    #[test]
    fn an_arrival_after_prepare_installs_the_new_path_and_execute_only_confirms_it() {
        let modules = [target_module()];
        let ctx = context(&modules);
        let mut m = target(true);
        let step = m.on_arrival(1_000, "svc-1").expect("may arrive");
        let TargetStep::Apply(set) = step else {
            panic!("expected the new path, got {step:?}");
        };
        assert_eq!(set.label, "new-path-target");
        let (a, effects) = m.on_flows(1_300, flows_ok(3, 250));
        assert_eq!(
            (a.relocation_phase, a.result),
            (Phase::Execute, PeerResult::Proceed)
        );
        assert!(effects.is_empty());
        assert!(m.new_path_installed);
        let timing = m.record().phases.last().expect("EXECUTE timed").clone();
        assert_eq!(
            (timing.phase, timing.start_us, timing.took_us),
            (Phase::Execute, 900, 300)
        );
        assert_eq!((timing.flow_install_us, timing.flow_mods), (Some(250), 3));

        // A repeated arrival changes nothing.
        let before = m.clone();
        assert!(matches!(
            m.on_arrival(1_400, "svc-1"),
            Ok(TargetStep::Answer(a)) if a.result == PeerResult::Proceed
        ));
        assert_eq!(m, before);

        // The source's EXECUTE: PROCEED at once with the arrival's timing, no flows.
        let step = m.on_message(2_000, &peer_msg(Phase::Execute), ctx);
        let TargetStep::Answer(a) = step else {
            panic!("expected an answer, got {step:?}");
        };
        assert_eq!(
            (a.relocation_phase, a.result, a.took_us, a.flow_install_us),
            (Phase::Execute, PeerResult::Proceed, 300, Some(250))
        );
        assert_eq!(executes(&m), 1);

        // FAILURE is refused now (the service runs here); COMPLETE proceeds as before.
        let step = m.on_message(2_100, &peer_msg(Phase::Failure), ctx);
        assert!(matches!(step, TargetStep::Answer(a) if a.result == PeerResult::Fail));
        let step = m.on_message(2_200, &peer_msg(Phase::Complete), ctx);
        let TargetStep::Apply(set) = step else {
            panic!("expected COMPLETE's (empty) set, got {step:?}");
        };
        assert!(set.add.is_empty() && set.delete.is_empty());
        let (a, effects) = m.on_flows(2_250, flows_ok(0, 1));
        assert_eq!(a.result, PeerResult::Proceed);
        assert_eq!(effects.len(), 1);
        let r = m.record();
        assert_eq!(r.state, RelocationState::Completed);
        let phases: Vec<Phase> = r.phases.iter().map(|t| t.phase).collect();
        assert_eq!(phases, Phase::SUCCESS_PATH);
        assert_eq!(executes(&m), 1);
        assert!(m.is_done());
    }

    #[test]
    fn the_service_cannot_arrive_before_prepare_after_failure_or_under_another_name() {
        let mut m = target(false);
        let before = m.clone();
        let e = m.on_arrival(500, "svc-1").expect_err("before PREPARE");
        assert!(e.contains("VALIDATE"), "{e}");
        assert_eq!(m, before);

        let mut m = target(true);
        let before = m.clone();
        let e = m.on_arrival(500, "svc-2").expect_err("another service");
        assert!(e.contains("svc-2"), "{e}");
        assert_eq!(m, before);

        // After FAILURE (the trombone stays): no arrival.
        let modules = [target_module()];
        let ctx = context(&modules);
        let step = m.on_message(600, &peer_msg(Phase::Failure), ctx);
        assert!(matches!(step, TargetStep::Apply(s) if s.label == "failure-target"));
        let _ = m.on_flows(610, flows_ok(4, 5));
        assert_eq!(m.record().state, RelocationState::Failed);
        let e = m.on_arrival(700, "svc-1").expect_err("failed");
        assert!(e.contains("Failed"), "{e}");
        assert!(!m.new_path_installed);
    }

    #[test]
    fn when_the_arrivals_flows_fail_execute_applies_them_again() {
        let modules = [target_module()];
        let ctx = context(&modules);
        let mut m = target(true);
        assert!(matches!(
            m.on_arrival(1_000, "svc-1"),
            Ok(TargetStep::Apply(_))
        ));
        let (a, _) = m.on_flows(1_100, Err("switch gone".into()));
        assert_eq!(a.result, PeerResult::Fail);
        assert!(!m.new_path_installed);
        let step = m.on_message(2_000, &peer_msg(Phase::Execute), ctx);
        assert!(matches!(step, TargetStep::Apply(s) if s.label == "new-path-target"));
        let (a, _) = m.on_flows(2_100, flows_ok(3, 80));
        assert_eq!(a.result, PeerResult::Proceed);
        assert!(m.new_path_installed);
        assert_eq!(executes(&m), 1);
    }

    #[test]
    fn a_rollback_after_the_arrival_gets_the_trombone_back() {
        // The module reported the arrival, then failed to resume at the target and rolled back to
        // the source: the source's FAILURE must trombone again, not be refused.
        let modules = [target_module()];
        let ctx = context(&modules);
        let mut m = target(true);
        assert!(matches!(
            m.on_arrival(1_000, "svc-1"),
            Ok(TargetStep::Apply(_))
        ));
        let _ = m.on_flows(1_100, flows_ok(3, 80));
        assert!(m.new_path_installed);
        let step = m.on_message(2_000, &peer_msg(Phase::Failure), ctx);
        assert!(
            matches!(&step, TargetStep::Apply(s) if s.label == "failure-target"),
            "{step:?}"
        );
        let (a, _) = m.on_flows(2_100, flows_ok(4, 90));
        assert_eq!(a.result, PeerResult::Proceed);
        assert_eq!(m.record().state, RelocationState::Failed);
    }

    #[test]
    fn a_repeated_phase_gets_its_first_answer_and_a_failed_one_is_tried_again() {
        let modules = [target_module()];
        let ctx = context(&modules);
        let mut m = target(true);
        // EXECUTE's new path fails, COMPLETE's too: each is a FAIL, and nothing is kept.
        let step = m.on_message(1_000, &peer_msg(Phase::Execute), ctx);
        assert!(matches!(step, TargetStep::Apply(s) if s.label == "new-path-target"));
        assert_eq!(
            m.on_flows(1_010, Err("switch gone".into())).0.result,
            PeerResult::Fail
        );
        let step = m.on_message(1_100, &peer_msg(Phase::Complete), ctx);
        assert!(matches!(step, TargetStep::Apply(s) if s.label == "new-path-target"));
        assert_eq!(
            m.on_flows(1_110, Err("switch gone".into())).0.result,
            PeerResult::Fail
        );
        assert_eq!(m.record().state, RelocationState::Running, "not confirmed");
        // The source sends COMPLETE again: the flows are tried again, and this time they go in.
        let step = m.on_message(1_200, &peer_msg(Phase::Complete), ctx);
        assert!(matches!(step, TargetStep::Apply(s) if s.label == "new-path-target"));
        let (done, effects) = m.on_flows(1_250, flows_ok(3, 40));
        assert_eq!(done.result, PeerResult::Proceed);
        assert_eq!(effects.len(), 1);
        assert_eq!(m.record().state, RelocationState::Completed);
        // Its answer was lost: the same COMPLETE gets the same answer, and nothing changes.
        let before = m.clone();
        let step = m.on_message(1_900, &peer_msg(Phase::Complete), ctx);
        assert_eq!(step, TargetStep::Answer(done));
        assert_eq!(m, before);
    }
}

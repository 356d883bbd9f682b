//! The relocation procedure (thesis §4.1, Figure 4.1) as two state machines that do no I/O
//! (STYLE.md item 2): [`SourceRelocation`] runs at the SMO the UE left, [`TargetRelocation`] at the
//! SMO it moved to. Each takes events with the current time and returns commands; the driver
//! ([`crate::negotiator`]) performs them and feeds the results back. Both machines are `serde`
//! values: the driver persists them after every step, and a restarted SMO resumes them
//! ([`SourceRelocation::resume`]), finishing or failing cleanly.
//!
//! Source: INITIATE (ask candidate peers in order of cost until one has a module of the right
//! type) → VALIDATE (target checks resources) → PREPARE (tromboning flows here, then at the target)
//! → EXECUTE (the module migrates the service; then the target swaps its trombone for the new path)
//! → COMPLETE (cleanup here, target records the service) — or FAILURE from any phase before the
//! service moved: the trombone is (re)installed on both sides so the UE keeps reaching the service
//! at the source. After the service moved, nothing fails the relocation any more: trouble in
//! COMPLETE is recorded as its cause, the state is still `COMPLETED`.

use crate::routing::rules::{self, EdgePorts, ServiceAt};
use crate::routing::{FlowReport, FlowSet, Mac};
use model::common::Dnai;
use model::nsmf_event_exposure::EventNotification;
use model::smo::{
    ExecuteReport, ExecuteRequest, PeerInfo, PeerRelocationAnswer, PeerRelocationMessage,
    PeerResult, PhaseTiming, RelocationPhase as Phase, RelocationRecord, RelocationRole,
    RelocationState, ResourceRequirements, Service, ServiceModule,
};
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// What a machine needs to know about its own SMO.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Local {
    pub smo_id: String,
    pub dnai: Dnai,
    /// Base URL of this SMO's API.
    pub api_root: String,
    pub ports: EdgePorts,
}

/// The cookie of a relocation's flows, the same at both SMOs (derived from its id).
pub fn cookie_for(relocation_id: &str) -> u64 {
    // FNV-1a, 32 bits: stable across processes and versions.
    let mut h: u32 = 0x811c_9dc5;
    for b in relocation_id.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    rules::relocation_cookie(h)
}

fn elapsed(now_us: u64, since_us: u64) -> u64 {
    now_us.saturating_sub(since_us)
}

/// How a module's Execute call ended, when it did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecuteFailure {
    /// The module answered with an error: by contract the service still runs at the source.
    Refused(String),
    /// No answer (timeout, connection lost): where the service is must be checked.
    Unknown(String),
}

/// Results the source's driver feeds back, one per command that awaits one.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceEvent {
    Peer(Result<PeerRelocationAnswer, String>),
    Flows(Result<FlowReport, String>),
    Executed(Result<ExecuteReport, ExecuteFailure>),
    /// Answer to [`SourceCommand::CheckServiceLocal`]: does the local module still host it?
    ServiceLocal(Result<bool, String>),
}

/// What the source asks its driver to do.
// Commands live for one step and are moved once; boxing the peer message would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum SourceCommand {
    CallPeer {
        peer: PeerInfo,
        message: PeerRelocationMessage,
    },
    ApplyFlows(FlowSet),
    Execute {
        module: ServiceModule,
        request: ExecuteRequest,
    },
    CheckServiceLocal {
        module: ServiceModule,
        service_id: String,
    },
    /// The service left: drop it from the service database.
    ServiceMoved {
        service_id: String,
    },
    /// The relocation ended (see the record's state); persist it one last time.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Awaiting {
    Peer(Phase),
    Flows(Phase),
    Execute,
    ServiceLocal,
    Nothing,
}

/// The source side of one relocation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceRelocation {
    record: RelocationRecord,
    local: Local,
    notification: EventNotification,
    module: ServiceModule,
    /// Peers still to ask at INITIATE, best first.
    candidates: Vec<PeerInfo>,
    awaiting: Awaiting,
    /// Start of the current phase, µs on the driver's clock.
    phase_start_us: u64,
    /// When the notification arrived, µs on the driver's clock.
    notified_us: u64,
    flow_us: Option<u64>,
    flow_mods: u32,
    migrated: bool,
}

/// Peers that serve `target_dnai`, best (lowest cost, then id) first.
pub fn candidates_for(peers: &[PeerInfo], target_dnai: &Dnai) -> Vec<PeerInfo> {
    let mut c: Vec<PeerInfo> = peers
        .iter()
        .filter(|p| &p.dnai == target_dnai)
        .cloned()
        .collect();
    c.sort_by(|a, b| a.cost.cmp(&b.cost).then_with(|| a.smo_id.cmp(&b.smo_id)));
    c
}

/// Everything a source relocation starts from.
#[derive(Debug, Clone)]
pub struct SourceStart {
    pub relocation_id: String,
    pub local: Local,
    pub notification: EventNotification,
    pub ue: Ipv4Addr,
    pub target_dnai: Dnai,
    /// The serving service and the module hosting it (found before INITIATE, thesis §4.1).
    pub module: ServiceModule,
    pub service: Service,
    /// From [`candidates_for`].
    pub candidates: Vec<PeerInfo>,
    /// When the notification arrived (driver clock, µs) and on the wall clock.
    pub notified_us: u64,
    pub notified_unix_us: u64,
}

impl SourceRelocation {
    /// Starts INITIATE at `now_us`.
    pub fn start(now_us: u64, s: SourceStart) -> (Self, Vec<SourceCommand>) {
        let record = RelocationRecord {
            relocation_id: s.relocation_id,
            role: RelocationRole::Source,
            state: RelocationState::Running,
            phase: Phase::Initiate,
            ue_ipv4_addr: s.ue,
            source_dnai: s.local.dnai.clone(),
            target_dnai: s.target_dnai,
            peer: None,
            service: s.service,
            module_id: Some(s.module.module_id.clone()),
            target_module_address: None,
            started_unix_us: s.notified_unix_us,
            phases: Vec::new(),
            peer_phases: Vec::new(),
            total_us: None,
            execute: None,
            cause: None,
        };
        let mut m = Self {
            record,
            local: s.local,
            notification: s.notification,
            module: s.module,
            candidates: s.candidates,
            awaiting: Awaiting::Nothing,
            phase_start_us: now_us,
            notified_us: s.notified_us,
            flow_us: None,
            flow_mods: 0,
            migrated: false,
        };
        let cmds = if m.service_at().is_none() {
            let mac = m.record.service.mac_addr.clone();
            m.fail(now_us, format!("service has a bad MAC address `{mac}`"))
        } else {
            m.next_candidate(now_us, "no peer SMO serves the target DNAI".into())
        };
        (m, cmds)
    }

    /// The relocation's record (what `GET …/relocations/{id}` shows).
    pub fn record(&self) -> &RelocationRecord {
        &self.record
    }

    /// True once the relocation ended.
    pub fn is_done(&self) -> bool {
        self.record.state != RelocationState::Running
    }

    /// After a restart: go on from the persisted state. Before EXECUTE the relocation fails
    /// (the service never left); during EXECUTE the module is asked where the service is; after
    /// it, the pending step is repeated (every step from there on is idempotent).
    pub fn resume(&mut self, now_us: u64) -> Vec<SourceCommand> {
        match self.awaiting {
            Awaiting::Nothing => Vec::new(),
            Awaiting::Peer(p @ (Phase::Initiate | Phase::Validate | Phase::Prepare))
            | Awaiting::Flows(p @ Phase::Prepare) => {
                self.fail(now_us, format!("SMO restarted during {p}"))
            }
            Awaiting::Execute | Awaiting::ServiceLocal => self.check_local(),
            Awaiting::Peer(p) => self.call_peer(p, None),
            Awaiting::Flows(Phase::Complete) => self.apply(Phase::Complete, self.cleanup_set()),
            Awaiting::Flows(_) => self.apply(Phase::Failure, self.failure_set()),
        }
    }

    /// Feeds one result in.
    pub fn handle(&mut self, now_us: u64, event: SourceEvent) -> Vec<SourceCommand> {
        match (self.awaiting, event) {
            (Awaiting::Peer(phase), SourceEvent::Peer(answer)) => {
                self.on_peer(now_us, phase, answer)
            }
            (Awaiting::Flows(phase), SourceEvent::Flows(result)) => {
                self.on_flows(now_us, phase, result)
            }
            (Awaiting::Execute, SourceEvent::Executed(result)) => match result {
                Ok(report) => {
                    self.record.execute = Some(report);
                    self.migrated = true;
                    self.call_peer(Phase::Execute, None)
                }
                Err(ExecuteFailure::Refused(e)) => {
                    self.fail(now_us, format!("service module could not migrate: {e}"))
                }
                Err(ExecuteFailure::Unknown(e)) => {
                    self.note(format!("no answer from the service module ({e})"));
                    self.check_local()
                }
            },
            (Awaiting::ServiceLocal, SourceEvent::ServiceLocal(result)) => match result {
                Ok(false) => {
                    self.migrated = true;
                    self.call_peer(Phase::Execute, None)
                }
                Ok(true) => self.fail(now_us, "the service is still at the source".into()),
                // Unknown: assume the service stayed, the only state FAILURE can keep working.
                Err(e) => self.fail(now_us, format!("cannot tell where the service is: {e}")),
            },
            // An event nobody waits for (a late answer after a restart): ignore it.
            _ => Vec::new(),
        }
    }

    fn on_peer(
        &mut self,
        now_us: u64,
        phase: Phase,
        answer: Result<PeerRelocationAnswer, String>,
    ) -> Vec<SourceCommand> {
        let answer = match answer {
            Ok(a) if a.relocation_phase != phase => Err(format!(
                "peer answered phase {} to {phase}",
                a.relocation_phase
            )),
            other => other,
        };
        if let Ok(a) = &answer {
            self.record.peer_phases.push(PhaseTiming {
                phase,
                start_us: 0,
                took_us: a.took_us,
                flow_install_us: a.flow_install_us,
                flow_mods: 0,
            });
        }
        let proceed = match &answer {
            Ok(a) if a.result == PeerResult::Proceed => Ok(a),
            Ok(a) => Err(format!(
                "peer refused {phase}: {}",
                a.cause.as_deref().unwrap_or("no cause given")
            )),
            Err(e) => Err(format!("peer {phase}: {e}")),
        };
        match (phase, proceed) {
            (Phase::Initiate, Ok(a)) => match a.target_module_address {
                Some(addr) => {
                    self.record.target_module_address = Some(addr);
                    self.next_phase(now_us, Phase::Validate);
                    self.call_peer(Phase::Validate, None)
                }
                None => self.next_candidate(now_us, "peer named no target module".into()),
            },
            (Phase::Initiate, Err(e)) => self.next_candidate(now_us, e),
            (Phase::Validate, Ok(_)) => {
                self.next_phase(now_us, Phase::Prepare);
                self.apply(Phase::Prepare, self.trombone_set("trombone-source"))
            }
            (Phase::Prepare, Ok(_)) => match self.record.target_module_address {
                // INITIATE only proceeds with the target module's address: never here.
                None => self.fail(now_us, "no target module address from INITIATE".into()),
                Some(target_address) => {
                    self.next_phase(now_us, Phase::Execute);
                    self.awaiting = Awaiting::Execute;
                    vec![SourceCommand::Execute {
                        module: self.module.clone(),
                        request: ExecuteRequest {
                            relocation_id: self.record.relocation_id.clone(),
                            service: self.record.service.clone(),
                            target_address,
                        },
                    }]
                }
            },
            (Phase::Validate | Phase::Prepare, Err(e)) => self.fail(now_us, e),
            (Phase::Execute, result) => {
                if let Err(e) = result {
                    self.note(e);
                }
                self.next_phase(now_us, Phase::Complete);
                self.apply(Phase::Complete, self.cleanup_set())
            }
            (Phase::Complete, result) => {
                if let Err(e) = result {
                    self.note(e);
                }
                self.end_phase(now_us);
                self.record.state = RelocationState::Completed;
                self.record.total_us = Some(elapsed(now_us, self.notified_us));
                self.awaiting = Awaiting::Nothing;
                vec![
                    SourceCommand::ServiceMoved {
                        service_id: self.record.service.service_id.clone(),
                    },
                    SourceCommand::Done,
                ]
            }
            (Phase::Failure, result) => {
                if let Err(e) = result {
                    self.note(e);
                }
                self.finish_failed(now_us)
            }
        }
    }

    fn on_flows(
        &mut self,
        now_us: u64,
        phase: Phase,
        result: Result<FlowReport, String>,
    ) -> Vec<SourceCommand> {
        match result {
            Ok(r) => {
                let us = u64::try_from(r.took.as_micros()).unwrap_or(u64::MAX);
                self.flow_us = Some(self.flow_us.unwrap_or(0) + us);
                self.flow_mods += u32::try_from(r.flow_mods).unwrap_or(u32::MAX);
            }
            Err(e) if phase == Phase::Prepare => {
                return self.fail(now_us, format!("tromboning flows: {e}"));
            }
            Err(e) => self.note(format!("{phase} flows: {e}")),
        }
        match phase {
            Phase::Failure if self.record.peer.is_none() => self.finish_failed(now_us),
            p => self.call_peer(p, None),
        }
    }

    /// INITIATE with the next candidate, or FAILURE with `cause` when none is left.
    fn next_candidate(&mut self, now_us: u64, cause: String) -> Vec<SourceCommand> {
        if self.candidates.is_empty() {
            return self.fail(now_us, cause);
        }
        let peer = self.candidates.remove(0);
        self.record.peer = Some(peer);
        self.call_peer(Phase::Initiate, None)
    }

    fn fail(&mut self, now_us: u64, cause: String) -> Vec<SourceCommand> {
        self.note(cause.clone());
        self.next_phase(now_us, Phase::Failure);
        if self.service_at().is_none() {
            return self.finish_failed(now_us);
        }
        self.apply(Phase::Failure, self.failure_set())
    }

    fn finish_failed(&mut self, now_us: u64) -> Vec<SourceCommand> {
        self.end_phase(now_us);
        self.record.state = RelocationState::Failed;
        self.awaiting = Awaiting::Nothing;
        vec![SourceCommand::Done]
    }

    fn check_local(&mut self) -> Vec<SourceCommand> {
        self.awaiting = Awaiting::ServiceLocal;
        vec![SourceCommand::CheckServiceLocal {
            module: self.module.clone(),
            service_id: self.record.service.service_id.clone(),
        }]
    }

    fn call_peer(&mut self, phase: Phase, cause: Option<String>) -> Vec<SourceCommand> {
        let Some(peer) = self.record.peer.clone() else {
            // FAILURE before any peer was asked.
            self.awaiting = Awaiting::Nothing;
            return Vec::new();
        };
        self.awaiting = Awaiting::Peer(phase);
        let cause = cause.or_else(|| {
            (phase == Phase::Failure)
                .then(|| self.record.cause.clone())
                .flatten()
        });
        vec![SourceCommand::CallPeer {
            peer,
            message: PeerRelocationMessage {
                relocation_id: self.record.relocation_id.clone(),
                relocation_type: self.record.service.relocation_type,
                relocation_phase: phase,
                notif_uri: format!(
                    "{}/smo-peer/v1/relocations/{}",
                    self.local.api_root, self.record.relocation_id
                ),
                source_smo_id: self.local.smo_id.clone(),
                notification: self.notification.clone(),
                service: self.record.service.clone(),
                cause,
            },
        }]
    }

    fn apply(&mut self, phase: Phase, set: FlowSet) -> Vec<SourceCommand> {
        self.awaiting = Awaiting::Flows(phase);
        vec![SourceCommand::ApplyFlows(set)]
    }

    fn service_at(&self) -> Option<ServiceAt> {
        let mac: Mac = self.record.service.mac_addr.parse().ok()?;
        Some(ServiceAt {
            ip: self.record.service.ipv4_addr,
            mac,
            port: self.record.service.ovs_port.clone(),
        })
    }

    fn cookie(&self) -> u64 {
        cookie_for(&self.record.relocation_id)
    }

    fn trombone_set(&self, label: &str) -> FlowSet {
        match self.service_at() {
            Some(svc) => {
                let mut set = rules::trombone_source(
                    self.cookie(),
                    &self.local.ports,
                    &svc,
                    self.record.ue_ipv4_addr,
                );
                set.label = label.to_owned();
                set
            }
            None => FlowSet::default(),
        }
    }

    fn failure_set(&self) -> FlowSet {
        self.trombone_set("failure-source")
    }

    fn cleanup_set(&self) -> FlowSet {
        rules::cleanup_source(self.cookie(), self.record.service.ipv4_addr)
    }

    fn note(&mut self, cause: String) {
        self.record.cause = Some(match self.record.cause.take() {
            Some(c) => format!("{c}; {cause}"),
            None => cause,
        });
    }

    fn end_phase(&mut self, now_us: u64) {
        let start = self.phase_start_us;
        self.record.phases.push(PhaseTiming {
            phase: self.record.phase,
            start_us: elapsed(start, self.notified_us),
            took_us: elapsed(now_us, start),
            flow_install_us: self.flow_us.take(),
            flow_mods: std::mem::take(&mut self.flow_mods),
        });
        self.phase_start_us = now_us;
    }

    fn next_phase(&mut self, now_us: u64, next: Phase) {
        self.end_phase(now_us);
        self.record.phase = next;
    }
}

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
        };
        let mut m = Self {
            record,
            local,
            pending: None,
            started_us: now_us,
            new_path_installed: false,
            arrived: false,
            peer_executed: false,
        };
        let step = m.on_message(now_us, msg, ctx);
        (m, step)
    }

    pub fn record(&self) -> &RelocationRecord {
        &self.record
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
        PeerRelocationAnswer {
            relocation_id: self.record.relocation_id.clone(),
            relocation_phase: phase,
            result,
            cause,
            target_module_address: (phase == Phase::Initiate && result == PeerResult::Proceed)
                .then_some(self.record.target_module_address)
                .flatten(),
            took_us,
            flow_install_us,
        }
    }

    fn service_at(&self) -> Option<ServiceAt> {
        let mac: Mac = self.record.service.mac_addr.parse().ok()?;
        Some(ServiceAt {
            ip: self.record.service.ipv4_addr,
            mac,
            port: self.record.service.ovs_port.clone(),
        })
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
        self.record.cause = Some(match self.record.cause.take() {
            Some(c) => format!("{c}; {cause}"),
            None => cause,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::nsmf_event_exposure::SmfEvent;
    use model::smo::RelocationType;

    fn peer(id: &str, dnai: &str, cost: u32) -> PeerInfo {
        PeerInfo {
            smo_id: id.into(),
            dnai: Dnai::new(dnai),
            api_root: format!("http://{id}.invalid"),
            cost,
        }
    }

    fn start(mac: &str, candidates: Vec<PeerInfo>) -> (SourceRelocation, Vec<SourceCommand>) {
        let at = model::common::DateTime::from_unix(0, 0).expect("epoch");
        SourceRelocation::start(
            7,
            SourceStart {
                relocation_id: "smo-x-1".into(),
                local: Local {
                    smo_id: "smo-x".into(),
                    dnai: Dnai::new("edge-x"),
                    api_root: "http://smo-x.invalid".into(),
                    ports: EdgePorts::testbed(),
                },
                notification: EventNotification::new(SmfEvent::UpPathCh, at),
                ue: Ipv4Addr::new(192, 168, 1, 2),
                target_dnai: Dnai::new("edge-y"),
                module: ServiceModule {
                    module_id: "module-1".into(),
                    registration: model::smo::ServiceModuleRegistration {
                        relocation_type: RelocationType::Test,
                        resource_requirements: ResourceRequirements::default(),
                        get_service_notif_uri: "http://m.invalid/s".into(),
                        served_service_notif_uri: "http://m.invalid/ss".into(),
                        execute_notif_uri: "http://m.invalid/e".into(),
                        notif_address: "10.0.1.1:9100".parse().expect("addr"),
                    },
                },
                service: Service {
                    service_id: "svc-1".into(),
                    ipv4_addr: Ipv4Addr::new(20, 0, 0, 10),
                    mac_addr: mac.into(),
                    ovs_port: "svc1".into(),
                    relocation_type: RelocationType::Test,
                    resource_requirements: ResourceRequirements::default(),
                    ue_ipv4_addrs: Vec::new(),
                },
                candidates,
                notified_us: 5,
                notified_unix_us: 0,
            },
        )
    }

    #[test]
    fn cookies_are_stable_tagged_and_distinct() {
        assert_eq!(cookie_for("smo-x-1"), 0x534d_4f52_8a43_6809);
        assert_eq!(&cookie_for("anything").to_be_bytes()[..4], b"SMOR");
        let mut all: Vec<u64> = (1..=100_000)
            .map(|n| cookie_for(&format!("smo-x-{n}")))
            .collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 100_000);
    }

    #[test]
    fn candidates_serve_the_target_dnai_cheapest_first() {
        let peers = [
            peer("smo-c", "edge-y", 5),
            peer("smo-z", "edge-z", 0),
            peer("smo-b", "edge-y", 1),
            peer("smo-a", "edge-y", 5),
        ];
        let ids: Vec<String> = candidates_for(&peers, &Dnai::new("edge-y"))
            .into_iter()
            .map(|p| p.smo_id)
            .collect();
        assert_eq!(ids, ["smo-b", "smo-a", "smo-c"]);
        assert!(candidates_for(&peers, &Dnai::new("edge-q")).is_empty());
    }

    #[test]
    fn a_service_with_a_bad_mac_fails_at_once_without_flows() {
        let (m, cmds) = start("not-a-mac", vec![peer("smo-y", "edge-y", 0)]);
        assert_eq!(cmds, [SourceCommand::Done]);
        assert!(m.is_done());
        assert_eq!(m.record().state, RelocationState::Failed);
        assert!(m
            .record()
            .cause
            .as_deref()
            .is_some_and(|c| c.contains("bad MAC")));
        let phases: Vec<Phase> = m.record().phases.iter().map(|t| t.phase).collect();
        assert_eq!(phases, [Phase::Initiate, Phase::Failure]);
    }

    #[test]
    fn without_candidates_the_source_trombones_alone_and_fails() {
        let (mut m, cmds) = start("02:00:00:00:00:0a", Vec::new());
        let [SourceCommand::ApplyFlows(set)] = cmds.as_slice() else {
            panic!("expected the failure set, got {cmds:?}");
        };
        assert_eq!(set.label, "failure-source");
        let report = FlowReport {
            flow_mods: 2,
            took: std::time::Duration::from_micros(40),
        };
        assert_eq!(
            m.handle(50, SourceEvent::Flows(Ok(report))),
            [SourceCommand::Done]
        );
        let r = m.record();
        assert_eq!(r.state, RelocationState::Failed);
        let failure = r.phases.last().expect("FAILURE timed");
        assert_eq!(
            (failure.phase, failure.start_us, failure.took_us),
            (Phase::Failure, 2, 43)
        );
        assert_eq!((failure.flow_install_us, failure.flow_mods), (Some(40), 2));
        // Nothing more to do, whatever arrives or however often it restarts.
        let before = m.clone();
        assert!(m.handle(60, SourceEvent::ServiceLocal(Ok(true))).is_empty());
        assert!(m.resume(70).is_empty());
        assert_eq!(m, before);
    }

    #[test]
    fn events_nobody_waits_for_are_ignored() {
        let (mut m, cmds) = start("02:00:00:00:00:0a", vec![peer("smo-y", "edge-y", 0)]);
        assert!(matches!(
            cmds.as_slice(),
            [SourceCommand::CallPeer { message, .. }] if message.relocation_phase == Phase::Initiate
        ));
        let before = m.clone();
        let late = SourceEvent::Executed(Ok(ExecuteReport::default()));
        assert!(m.handle(10, late).is_empty());
        assert!(m
            .handle(10, SourceEvent::Flows(Err("late".into())))
            .is_empty());
        assert_eq!(m, before);
    }

    // ----- target side: the module's arrival -----

    fn target_module() -> ServiceModule {
        ServiceModule {
            module_id: "module-9".into(),
            registration: model::smo::ServiceModuleRegistration {
                relocation_type: RelocationType::Test,
                resource_requirements: ResourceRequirements::default(),
                get_service_notif_uri: "http://m.invalid/s".into(),
                served_service_notif_uri: "http://m.invalid/ss".into(),
                execute_notif_uri: "http://m.invalid/e".into(),
                notif_address: "10.0.1.2:9100".parse().expect("addr"),
            },
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
        let ctx = || TargetContext {
            modules: &modules,
            capacity: ResourceRequirements::default(),
            used: ResourceRequirements::default(),
        };
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
        let ctx = TargetContext {
            modules: &modules,
            capacity: ResourceRequirements::default(),
            used: ResourceRequirements::default(),
        };
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
        let ctx = TargetContext {
            modules: &modules,
            capacity: ResourceRequirements::default(),
            used: ResourceRequirements::default(),
        };
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
        let ctx = TargetContext {
            modules: &modules,
            capacity: ResourceRequirements::default(),
            used: ResourceRequirements::default(),
        };
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
        let ctx = TargetContext {
            modules: &modules,
            capacity: ResourceRequirements::default(),
            used: ResourceRequirements::default(),
        };
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
}

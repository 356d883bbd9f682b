//! The source side of one relocation: [`SourceRelocation`], from the notification to COMPLETE or
//! FAILURE.
//!
//! Once the service may have left (EXECUTE, COMPLETE) and in FAILURE, a peer message that gets no
//! answer is sent again after a backoff ([`redrive_ms`]) until the target answers: the target
//! answers a phase it saw before with the same answer, so re-sending is safe. The source records
//! COMPLETED only once the target PROCEEDed COMPLETE, i.e. confirmed the service's new path there
//! (a refused COMPLETE is re-driven as well); FAILURE gives up after [`FAILURE_PATIENCE_US`] (the
//! service runs here either way). Before EXECUTE a peer that does not answer fails the
//! relocation: the service never left, and FAILURE re-installs the trombone on both sides.

use super::ack::{self, AckRequest};
use super::{cookie_for, elapsed, note, Local};
use crate::routing::rules::{self, ServiceAt};
use crate::routing::{FlowReport, FlowSet};
use model::common::Dnai;
use model::nsmf_event_exposure::EventNotification;
use model::smo::{
    AfAckRecord, ExecuteReport, ExecuteRequest, PeerInfo, PeerRelocationAnswer,
    PeerRelocationMessage, PeerResult, PhaseTiming, RelocationControl, RelocationPhase as Phase,
    RelocationRecord, RelocationRole, RelocationState, Service, ServiceModule,
};
use model::traffic_influence::AfAckInfo;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// The first pause before a peer message is sent again, and the longest (the pause doubles).
pub const REDRIVE_FIRST_MS: u64 = 100;
pub const REDRIVE_MAX_MS: u64 = 2_000;
/// How long FAILURE is re-sent to a peer that does not answer before the source records FAILED
/// without it.
pub const FAILURE_PATIENCE_US: u64 = 60_000_000;

/// The pause before the `attempt`-th re-send (0-based): 100 ms, 200 ms, … up to 2 s.
pub fn redrive_ms(attempt: u32) -> u64 {
    REDRIVE_FIRST_MS
        .saturating_mul(1u64 << attempt.min(20))
        .min(REDRIVE_MAX_MS)
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
    /// The pause of [`SourceCommand::Wait`] is over.
    Waited,
    /// Answer to [`SourceCommand::Acknowledge`]: the HTTP status, or why none came.
    Acknowledged(Result<u16, String>),
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
    /// Pause `ms`, then feed [`SourceEvent::Waited`]: the peer message of `phase` got no answer
    /// (`why`) and is sent again afterwards.
    Wait {
        ms: u64,
        phase: Phase,
        why: String,
    },
    /// POST `body` to `uri` (the notification's `afAckUri`), then feed
    /// [`SourceEvent::Acknowledged`].
    Acknowledge {
        uri: String,
        body: AfAckInfo,
    },
    /// The relocation ended (see the record's state); persist it one last time.
    Done,
}

/// What follows the acknowledgement's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum AfterAck {
    /// COMPLETE (the target confirmed the new path at EXECUTE).
    Complete,
    /// The record's COMPLETED (the target confirmed it at COMPLETE).
    Completed,
    /// The record's FAILED.
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Awaiting {
    Peer(Phase),
    Flows(Phase),
    Execute,
    ServiceLocal,
    /// The pause before the phase's message is sent again.
    Redrive(Phase),
    /// The answer to the acknowledgement.
    Ack(AfterAck),
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
    /// Re-sends of the current phase's message, and when the first one was due.
    #[serde(default)]
    attempts: u32,
    #[serde(default)]
    redrive_since_us: Option<u64>,
    /// The acknowledgement the network waits for before it switches the UE's path
    /// ([`ack`](super::ack)); `None` once sent.
    #[serde(default)]
    ack: Option<AckRequest>,
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
    /// What started it (a notification unless said otherwise).
    pub control: RelocationControl,
    /// The acknowledgement the notification asked for: the network holds the UE's path switch
    /// until it comes, so PREPARE installs no trombone (make-before-break).
    pub ack: Option<AckRequest>,
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
            control: s.control,
            af_ack: s.ack.as_ref().map(|a| AfAckRecord {
                af_ack_uri: a.uri.clone(),
                af_status: None,
                sent_us: None,
                answer: None,
            }),
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
            attempts: 0,
            redrive_since_us: None,
            ack: s.ack,
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

    /// When its notification arrived, µs on the driver's clock.
    pub fn started_us(&self) -> u64 {
        self.notified_us
    }

    /// True once the relocation ended.
    pub fn is_done(&self) -> bool {
        self.record.state != RelocationState::Running
    }

    /// Whether [`SourceRelocation::cancel`] may still stop it: running and not yet in EXECUTE
    /// (the service has not been asked to move).
    pub fn can_cancel(&self) -> bool {
        !self.is_done()
            && matches!(
                self.record.phase,
                Phase::Initiate | Phase::Validate | Phase::Prepare
            )
    }

    /// Cancels it because the UE moved on (`cause`): FAILURE at once, withdrawing this side's
    /// trombone instead of keeping it (the UE is no longer at the target's site; where it is now
    /// is for the next relocation to decide), and telling the target. The commands of the step
    /// the driver was about to take are dropped. Only when [`SourceRelocation::can_cancel`].
    pub fn cancel(&mut self, now_us: u64, cause: String) -> Vec<SourceCommand> {
        if !self.can_cancel() {
            return Vec::new();
        }
        self.record.control.cancelled = true;
        self.fail(now_us, cause)
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
            Awaiting::Peer(p) | Awaiting::Redrive(p) => self.call_peer(p, None),
            Awaiting::Flows(Phase::Complete) => self.apply(Phase::Complete, self.cleanup_set()),
            Awaiting::Ack(after) => self.send_ack(now_us, after),
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
            (Awaiting::Ack(after), SourceEvent::Acknowledged(answer)) => {
                self.on_ack(now_us, after, answer)
            }
            (Awaiting::ServiceLocal, SourceEvent::ServiceLocal(result)) => match result {
                Ok(false) => {
                    self.migrated = true;
                    self.call_peer(Phase::Execute, None)
                }
                Ok(true) => self.fail(now_us, "the service is still at the source".into()),
                // Unknown: assume the service stayed, the only state FAILURE can keep working.
                Err(e) => self.fail(now_us, format!("cannot tell where the service is: {e}")),
            },
            (Awaiting::Redrive(phase), SourceEvent::Waited) => self.call_peer(phase, None),
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
        // Phases the target must hear: no answer (or a COMPLETE it could not confirm) is sent
        // again; everything else ends the phase.
        match &answer {
            Err(e) if matches!(phase, Phase::Execute | Phase::Complete | Phase::Failure) => {
                return self.redrive(now_us, phase, format!("peer {phase}: {e}"));
            }
            Ok(a) if phase == Phase::Complete && a.result == PeerResult::Fail => {
                let why = a.cause.as_deref().unwrap_or("no cause given");
                return self.redrive(now_us, phase, format!("peer refused COMPLETE: {why}"));
            }
            _ => {}
        }
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
                if self.path_held() {
                    // The UE's traffic keeps the old path until the acknowledgement: no
                    // trombone to carry it meanwhile.
                    return self.call_peer(Phase::Prepare, None);
                }
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
                let confirmed = result.is_ok();
                if let Err(e) = result {
                    self.note(e);
                }
                if confirmed && self.ack.is_some() {
                    // The service runs at the target and its new path is in: the network may
                    // switch the UE's path now.
                    return self.send_ack(now_us, AfterAck::Complete);
                }
                self.complete(now_us)
            }
            // Only a PROCEED gets here (see above): the target confirmed the new path.
            (Phase::Complete, _) => {
                if self.ack.is_some() {
                    return self.send_ack(now_us, AfterAck::Completed);
                }
                self.completed(now_us)
            }
            (Phase::Failure, result) => {
                if let Err(e) = result {
                    self.note(e);
                }
                self.finish_failed(now_us)
            }
        }
    }

    /// Whether the network holds the UE's path switch for this relocation's acknowledgement.
    pub fn path_held(&self) -> bool {
        self.record.af_ack.is_some()
    }

    /// COMPLETE: the cleanup here, then the target's confirmation.
    fn complete(&mut self, now_us: u64) -> Vec<SourceCommand> {
        self.next_phase(now_us, Phase::Complete);
        self.apply(Phase::Complete, self.cleanup_set())
    }

    /// POSTs the acknowledgement (its status from how the relocation went), then `after`.
    fn send_ack(&mut self, now_us: u64, after: AfterAck) -> Vec<SourceCommand> {
        let Some(req) = self.ack.clone() else {
            return self.after_ack(now_us, after);
        };
        let status = ack::relocated(after != AfterAck::Failed);
        let sent_us = elapsed(now_us, self.notified_us);
        if let Some(r) = &mut self.record.af_ack {
            r.af_status = Some(status.clone());
            r.sent_us = Some(sent_us);
        }
        self.awaiting = Awaiting::Ack(after);
        vec![SourceCommand::Acknowledge {
            uri: req.uri.clone(),
            body: req.body(status),
        }]
    }

    /// The acknowledgement's answer: noted (a lost one is not retried: the network's hold ends
    /// by itself), then on.
    fn on_ack(
        &mut self,
        now_us: u64,
        after: AfterAck,
        answer: Result<u16, String>,
    ) -> Vec<SourceCommand> {
        self.ack = None;
        let text = match answer {
            Ok(status) => status.to_string(),
            Err(e) => e,
        };
        if let Some(r) = &mut self.record.af_ack {
            r.answer = Some(text);
        }
        self.after_ack(now_us, after)
    }

    fn after_ack(&mut self, now_us: u64, after: AfterAck) -> Vec<SourceCommand> {
        match after {
            AfterAck::Complete => self.complete(now_us),
            AfterAck::Completed => self.completed(now_us),
            AfterAck::Failed => self.failed(now_us),
        }
    }

    /// The target confirmed the new path: COMPLETED.
    fn completed(&mut self, now_us: u64) -> Vec<SourceCommand> {
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

    /// The message of `phase` got no answer (`why`): pause, then send it again; FAILURE gives up
    /// after [`FAILURE_PATIENCE_US`].
    fn redrive(&mut self, now_us: u64, phase: Phase, why: String) -> Vec<SourceCommand> {
        let since = *self.redrive_since_us.get_or_insert(now_us);
        if phase == Phase::Failure && elapsed(now_us, since) >= FAILURE_PATIENCE_US {
            self.note(format!(
                "{why} (given up after {} s)",
                FAILURE_PATIENCE_US / 1_000_000
            ));
            return self.finish_failed(now_us);
        }
        let ms = redrive_ms(self.attempts);
        self.attempts = self.attempts.saturating_add(1);
        self.record.control.redrives = self.record.control.redrives.saturating_add(1);
        self.awaiting = Awaiting::Redrive(phase);
        vec![SourceCommand::Wait { ms, phase, why }]
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

    /// FAILURE is over (its flows in, the target told or given up on): the acknowledgement,
    /// if one is due, then FAILED.
    fn finish_failed(&mut self, now_us: u64) -> Vec<SourceCommand> {
        if self.ack.is_some() {
            return self.send_ack(now_us, AfterAck::Failed);
        }
        self.failed(now_us)
    }

    fn failed(&mut self, now_us: u64) -> Vec<SourceCommand> {
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
                path_held: self.path_held(),
            },
        }]
    }

    fn apply(&mut self, phase: Phase, set: FlowSet) -> Vec<SourceCommand> {
        self.awaiting = Awaiting::Flows(phase);
        vec![SourceCommand::ApplyFlows(set)]
    }

    fn service_at(&self) -> Option<ServiceAt> {
        ServiceAt::of(&self.record.service)
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

    /// FAILURE's flows here: the trombone (the UE at the target's site keeps reaching the
    /// service here), or, for a cancelled relocation, the trombone's removal.
    fn failure_set(&self) -> FlowSet {
        if self.record.control.cancelled {
            let mut set = rules::withdraw(self.cookie());
            set.label = "withdraw-source".into();
            return set;
        }
        self.trombone_set("failure-source")
    }

    fn cleanup_set(&self) -> FlowSet {
        rules::cleanup_source(self.cookie(), self.record.service.ipv4_addr)
    }

    fn note(&mut self, cause: String) {
        note(&mut self.record, cause);
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
        self.attempts = 0;
        self.redrive_since_us = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::rules::EdgePorts;
    use model::nsmf_event_exposure::SmfEvent;
    use model::smo::{RelocationType, ResourceRequirements};

    fn peer(id: &str, dnai: &str, cost: u32) -> PeerInfo {
        PeerInfo {
            smo_id: id.into(),
            dnai: Dnai::new(dnai),
            api_root: format!("http://{id}.invalid"),
            cost,
        }
    }

    fn start(mac: &str, candidates: Vec<PeerInfo>) -> (SourceRelocation, Vec<SourceCommand>) {
        SourceRelocation::start(7, spec(mac, candidates, 5))
    }

    /// The relocation the tests start: svc-1 of ue 192.168.1.2 from edge X to edge Y.
    pub(super) fn spec(mac: &str, candidates: Vec<PeerInfo>, notified_us: u64) -> SourceStart {
        let at = model::common::DateTime::from_unix(0, 0).expect("epoch");
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
            module: super::super::test_module("module-1", "10.0.1.1:9100"),
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
            notified_us,
            notified_unix_us: 0,
            control: RelocationControl::default(),
            ack: None,
        }
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

    fn proceed(phase: Phase) -> SourceEvent {
        SourceEvent::Peer(Ok(PeerRelocationAnswer {
            relocation_id: "smo-x-1".into(),
            relocation_phase: phase,
            result: PeerResult::Proceed,
            cause: None,
            target_module_address: (phase == Phase::Initiate)
                .then(|| "10.0.1.2:9200".parse().expect("addr")),
            took_us: 0,
            flow_install_us: None,
        }))
    }

    fn flows() -> SourceEvent {
        SourceEvent::Flows(Ok(FlowReport {
            flow_mods: 2,
            took: std::time::Duration::from_micros(10),
        }))
    }

    /// A relocation whose service moved: the module's Execute answered, the source asks the target
    /// for EXECUTE.
    fn migrated() -> SourceRelocation {
        let (mut m, _) = start("02:00:00:00:00:0a", vec![peer("smo-y", "edge-y", 0)]);
        m.handle(10, proceed(Phase::Initiate));
        m.handle(20, proceed(Phase::Validate));
        m.handle(30, flows());
        m.handle(40, proceed(Phase::Prepare));
        let cmds = m.handle(50, SourceEvent::Executed(Ok(ExecuteReport::default())));
        assert!(matches!(
            cmds.as_slice(),
            [SourceCommand::CallPeer { message, .. }] if message.relocation_phase == Phase::Execute
        ));
        m
    }

    fn waits(cmds: &[SourceCommand]) -> (u64, Phase) {
        match cmds {
            [SourceCommand::Wait { ms, phase, .. }] => (*ms, *phase),
            other => panic!("expected a pause, got {other:?}"),
        }
    }

    fn sends(cmds: &[SourceCommand]) -> Phase {
        match cmds {
            [SourceCommand::CallPeer { message, .. }] => message.relocation_phase,
            other => panic!("expected a peer message, got {other:?}"),
        }
    }

    #[test]
    fn re_sends_back_off_from_100_ms_to_2_s() {
        let pauses: Vec<u64> = (0..7).map(redrive_ms).collect();
        assert_eq!(pauses, [100, 200, 400, 800, 1_600, 2_000, 2_000]);
        assert_eq!(redrive_ms(u32::MAX), 2_000);
    }

    #[test]
    fn no_completed_without_the_targets_confirmation() {
        let mut m = migrated();
        // EXECUTE unanswered twice: sent again after 100, then 200 ms.
        let cmds = m.handle(60, SourceEvent::Peer(Err("connection refused".into())));
        assert_eq!(waits(&cmds), (100, Phase::Execute));
        assert_eq!(sends(&m.handle(160, SourceEvent::Waited)), Phase::Execute);
        let cmds = m.handle(170, SourceEvent::Peer(Err("connection refused".into())));
        assert_eq!(waits(&cmds), (200, Phase::Execute));
        // A restart while pausing sends it at once.
        let mut restarted = m.clone();
        assert_eq!(sends(&restarted.resume(180)), Phase::Execute);
        assert_eq!(sends(&m.handle(370, SourceEvent::Waited)), Phase::Execute);
        // The target answers: COMPLETE, cleanup first; the pauses start over.
        let cmds = m.handle(380, proceed(Phase::Execute));
        assert!(
            matches!(cmds.as_slice(), [SourceCommand::ApplyFlows(s)] if s.label == "cleanup-source")
        );
        assert_eq!(sends(&m.handle(390, flows())), Phase::Complete);
        // The target refuses COMPLETE (its new path is not in): not COMPLETED, sent again.
        let refused = SourceEvent::Peer(Ok(PeerRelocationAnswer {
            result: PeerResult::Fail,
            cause: Some("COMPLETE flows: switch gone".into()),
            ..match proceed(Phase::Complete) {
                SourceEvent::Peer(Ok(a)) => a,
                _ => unreachable!(),
            }
        }));
        let cmds = m.handle(400, refused);
        assert_eq!(waits(&cmds), (100, Phase::Complete));
        assert_eq!(m.record().state, RelocationState::Running);
        assert!(m
            .record()
            .peer_phases
            .iter()
            .all(|t| t.phase != Phase::Complete));
        assert_eq!(sends(&m.handle(500, SourceEvent::Waited)), Phase::Complete);
        let cmds = m.handle(510, proceed(Phase::Complete));
        assert!(matches!(
            cmds.as_slice(),
            [SourceCommand::ServiceMoved { .. }, SourceCommand::Done]
        ));
        let r = m.record();
        assert_eq!(r.state, RelocationState::Completed);
        assert_eq!(r.control.redrives, 3);
        assert_eq!(r.cause, None, "a re-sent message is no cause");
        let peer: Vec<Phase> = r.peer_phases.iter().map(|t| t.phase).collect();
        assert_eq!(peer, Phase::SUCCESS_PATH, "one timing per phase");
    }

    #[test]
    fn an_unanswered_failure_is_given_up_after_a_minute() {
        let (mut m, _) = start("02:00:00:00:00:0a", vec![peer("smo-y", "edge-y", 0)]);
        m.handle(10, proceed(Phase::Initiate));
        let cmds = m.handle(20, SourceEvent::Peer(Err("connection refused".into())));
        assert!(
            matches!(cmds.as_slice(), [SourceCommand::ApplyFlows(s)] if s.label == "failure-source")
        );
        assert_eq!(sends(&m.handle(30, flows())), Phase::Failure);
        let mut now = 40;
        loop {
            let cmds = m.handle(now, SourceEvent::Peer(Err("connection refused".into())));
            if cmds == [SourceCommand::Done] {
                break;
            }
            let (pause, phase) = waits(&cmds);
            assert_eq!(phase, Phase::Failure);
            now += pause * 1_000;
            assert_eq!(sends(&m.handle(now, SourceEvent::Waited)), Phase::Failure);
            assert!(now < 40 + FAILURE_PATIENCE_US + 3_000_000, "never gave up");
        }
        assert!(now >= 40 + FAILURE_PATIENCE_US);
        let r = m.record();
        assert_eq!(r.state, RelocationState::Failed);
        assert!(
            r.cause
                .as_deref()
                .is_some_and(|c| c.contains("given up after 60 s")),
            "{r:#?}"
        );
    }
}

#[cfg(test)]
mod ack_tests {
    use super::*;
    use model::traffic_influence::AfResultStatus;

    fn held() -> (SourceRelocation, Vec<SourceCommand>) {
        let peer = PeerInfo {
            smo_id: "smo-y".into(),
            dnai: Dnai::new("edge-y"),
            api_root: "http://smo-y.invalid".into(),
            cost: 0,
        };
        let mut spec = super::tests::spec("02:00:00:00:00:0a", vec![peer], 0);
        spec.ack = Some(AckRequest {
            uri: "http://nef.invalid/acks/ack-1".into(),
            af_trans_id: Some("t".into()),
        });
        SourceRelocation::start(0, spec)
    }

    fn proceed(phase: Phase) -> SourceEvent {
        SourceEvent::Peer(Ok(PeerRelocationAnswer {
            relocation_id: "smo-x-1".into(),
            relocation_phase: phase,
            result: PeerResult::Proceed,
            cause: None,
            target_module_address: (phase == Phase::Initiate)
                .then(|| "10.0.1.2:9200".parse().expect("addr")),
            took_us: 0,
            flow_install_us: None,
        }))
    }

    fn acks(cmds: &[SourceCommand]) -> AfResultStatus {
        match cmds {
            [SourceCommand::Acknowledge { uri, body }] => {
                assert_eq!(uri, "http://nef.invalid/acks/ack-1");
                assert_eq!(body.af_trans_id.as_deref(), Some("t"));
                body.ack_result.af_status.clone()
            }
            other => panic!("expected the acknowledgement, got {other:?}"),
        }
    }

    #[test]
    fn a_held_relocation_skips_the_trombone_and_acks_between_execute_and_complete() {
        let (mut m, cmds) = held();
        assert!(m.path_held());
        assert!(
            matches!(cmds.as_slice(), [SourceCommand::CallPeer { message, .. }] if message.path_held)
        );
        m.handle(10, proceed(Phase::Initiate));
        // VALIDATE proceeds: PREPARE asks the target at once, no flows here.
        let cmds = m.handle(20, proceed(Phase::Validate));
        assert!(matches!(
            cmds.as_slice(),
            [SourceCommand::CallPeer { message, .. }]
                if message.relocation_phase == Phase::Prepare && message.path_held
        ));
        let cmds = m.handle(30, proceed(Phase::Prepare));
        assert!(matches!(cmds.as_slice(), [SourceCommand::Execute { .. }]));
        m.handle(300_030, SourceEvent::Executed(Ok(ExecuteReport::default())));
        // The target confirmed the new path: the acknowledgement, before COMPLETE's cleanup.
        let cmds = m.handle(300_040, proceed(Phase::Execute));
        assert_eq!(acks(&cmds), AfResultStatus::Success);
        let noted = m.record().af_ack.clone().expect("noted");
        assert_eq!(
            (noted.af_status, noted.sent_us, noted.answer),
            (Some(AfResultStatus::Success), Some(300_040), None)
        );
        // A restart while it waits for the answer sends it again.
        let mut restarted = m.clone();
        assert_eq!(acks(&restarted.resume(300_050)), AfResultStatus::Success);
        let cmds = m.handle(300_060, SourceEvent::Acknowledged(Ok(204)));
        assert!(
            matches!(cmds.as_slice(), [SourceCommand::ApplyFlows(s)] if s.label == "cleanup-source")
        );
        assert_eq!(
            m.record().af_ack.as_ref().and_then(|a| a.answer.as_deref()),
            Some("204")
        );
        m.handle(
            300_070,
            SourceEvent::Flows(Ok(FlowReport {
                flow_mods: 2,
                took: std::time::Duration::from_micros(10),
            })),
        );
        let cmds = m.handle(300_080, proceed(Phase::Complete));
        assert!(matches!(
            cmds.as_slice(),
            [SourceCommand::ServiceMoved { .. }, SourceCommand::Done]
        ));
        assert_eq!(m.record().state, RelocationState::Completed);
    }

    #[test]
    fn a_held_relocation_that_fails_acks_other_after_failures_flows_and_a_lost_answer_is_noted() {
        let (mut m, _) = held();
        m.handle(10, proceed(Phase::Initiate));
        // The target refuses VALIDATE: FAILURE's trombone here, then the target, then the ack.
        let refused = SourceEvent::Peer(Ok(PeerRelocationAnswer {
            result: PeerResult::Fail,
            cause: Some("no room".into()),
            ..match proceed(Phase::Validate) {
                SourceEvent::Peer(Ok(a)) => a,
                _ => unreachable!(),
            }
        }));
        let cmds = m.handle(20, refused);
        assert!(
            matches!(cmds.as_slice(), [SourceCommand::ApplyFlows(s)] if s.label == "failure-source")
        );
        let cmds = m.handle(
            30,
            SourceEvent::Flows(Ok(FlowReport {
                flow_mods: 2,
                took: std::time::Duration::from_micros(10),
            })),
        );
        assert!(matches!(
            cmds.as_slice(),
            [SourceCommand::CallPeer { message, .. }] if message.relocation_phase == Phase::Failure
        ));
        let cmds = m.handle(40, proceed(Phase::Failure));
        assert_eq!(acks(&cmds), AfResultStatus::OtherReason);
        assert_eq!(
            m.record().state,
            RelocationState::Running,
            "FAILED after the ack"
        );
        let cmds = m.handle(
            50,
            SourceEvent::Acknowledged(Err("no answer within 1000 ms".into())),
        );
        assert_eq!(cmds, [SourceCommand::Done]);
        let r = m.record();
        assert_eq!(r.state, RelocationState::Failed);
        assert_eq!(
            r.af_ack.as_ref().and_then(|a| a.answer.as_deref()),
            Some("no answer within 1000 ms")
        );
    }
}

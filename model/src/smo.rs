//! The Service Mobility Orchestrator's own messages (thesis §3.4.3, §4.1): the service-mobility API
//! for service modules, the callbacks a service module serves, the peer protocol between SMOs, and
//! the relocation record the stopwatch fills. JSON over HTTP/2 (h2c) with the deployment's bearer
//! token; the OpenAPI description is `smo/openapi.yaml`.

use crate::common::Dnai;
use crate::nsmf_event_exposure::EventNotification;
use crate::traffic_influence::AfResultStatus;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};

/// How a service is moved: the service module backend that can do it. A target accepts a
/// relocation only when it has a module registered with the same type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RelocationType {
    /// A process tree in its own namespaces, dumped and restored with CRIU.
    Criu,
    /// An LXC container (`lxc-checkpoint`).
    Lxc,
    /// An LXD container (LXD's live migration).
    Lxd,
    /// A test module that moves nothing (fake service modules in tests).
    Test,
}

impl fmt::Display for RelocationType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Criu => "CRIU",
            Self::Lxc => "LXC",
            Self::Lxd => "LXD",
            Self::Test => "TEST",
        })
    }
}

/// A relocation phase (thesis Figure 4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RelocationPhase {
    Initiate,
    Validate,
    Prepare,
    Execute,
    Complete,
    Failure,
}

impl RelocationPhase {
    /// The phases in the order a successful relocation runs them.
    pub const SUCCESS_PATH: [RelocationPhase; 5] = [
        Self::Initiate,
        Self::Validate,
        Self::Prepare,
        Self::Execute,
        Self::Complete,
    ];
}

impl fmt::Display for RelocationPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Initiate => "INITIATE",
            Self::Validate => "VALIDATE",
            Self::Prepare => "PREPARE",
            Self::Execute => "EXECUTE",
            Self::Complete => "COMPLETE",
            Self::Failure => "FAILURE",
        })
    }
}

/// What a service needs from the edge cloud that receives it. Zero means "no requirement".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceRequirements {
    #[serde(default)]
    pub cpu_millis: u32,
    #[serde(default)]
    pub memory_mb: u32,
    #[serde(default)]
    pub disk_mb: u32,
}

impl ResourceRequirements {
    /// True when `self` fits into `capacity` (field by field).
    pub fn fits(&self, capacity: &ResourceRequirements) -> bool {
        self.cpu_millis <= capacity.cpu_millis
            && self.memory_mb <= capacity.memory_mb
            && self.disk_mb <= capacity.disk_mb
    }
}

/// `POST /service-mobility/v1/service-modules` (and `PUT …/{moduleId}`): a service module
/// registers with its SMO (thesis §3.4.3 "Register service").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceModuleRegistration {
    pub relocation_type: RelocationType,
    #[serde(default)]
    pub resource_requirements: ResourceRequirements,
    /// `GET` → `[Service]`: the services the module hosts.
    pub get_service_notif_uri: String,
    /// `GET …?ueIpv4Addr=A` → `Service` (200) or 404: the service serving UE `A`.
    pub served_service_notif_uri: String,
    /// `POST ExecuteRequest` → `ExecuteReport`: migrate a service to a target module.
    pub execute_notif_uri: String,
    /// Where the module is hosted (`ip:port` on the backhaul), given to source modules as the
    /// migration target.
    pub notif_address: SocketAddr,
}

/// A registered service module, as the SMO stores and returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceModule {
    pub module_id: String,
    #[serde(flatten)]
    pub registration: ServiceModuleRegistration,
}

/// A service a module hosts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Service {
    pub service_id: String,
    /// The service's address in 20.0.0.0/16 (kept across relocations).
    pub ipv4_addr: Ipv4Addr,
    /// The service's MAC, `aa:bb:cc:dd:ee:ff` (kept across relocations).
    pub mac_addr: String,
    /// Its port on the edge's Open vSwitch bridge (same name at every edge).
    pub ovs_port: String,
    pub relocation_type: RelocationType,
    #[serde(default)]
    pub resource_requirements: ResourceRequirements,
    /// UEs the service is serving now (from its live sockets where the module can tell).
    #[serde(default)]
    pub ue_ipv4_addrs: Vec<Ipv4Addr>,
}

/// `POST {executeNotifUri}`: migrate `service` to the module at `targetAddress`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecuteRequest {
    pub relocation_id: String,
    pub service: Service,
    /// The target module's `notifAddress` (`ip:port`).
    pub target_address: SocketAddr,
}

/// A service module's answer to [`ExecuteRequest`] when the service runs at the target.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecuteReport {
    /// The migration as the module measured it.
    pub took_us: u64,
    /// Bytes moved to the target (images, pages), when the module counts them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_moved: Option<u64>,
    /// The module's own steps (dump, transfer, restore, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<crate::ran::TimelineStep>,
}

/// `POST /service-mobility/v1/relocations/{relocationId}/arrival`: the target's service module
/// tells its own SMO that the service of that relocation is about to resume here (sent after the
/// source's commit, before the service's carrier comes up), so the SMO switches the data path
/// before the service's first packet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceArrival {
    pub service_id: String,
}

/// An SMO known to another (topology database entry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerInfo {
    pub smo_id: String,
    pub dnai: Dnai,
    /// Base URL of the peer's API, e.g. `http://10.100.0.42:8090`.
    pub api_root: String,
    /// Preference when several peers serve the target DNAI: lower is better.
    #[serde(default)]
    pub cost: u32,
}

/// `POST /smo-peer/v1/relocations`: one phase of a relocation, source → target SMO (thesis §3.4.3:
/// the notification's fields plus RelocationType, RelocationPhase and NotifUri).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerRelocationMessage {
    pub relocation_id: String,
    pub relocation_type: RelocationType,
    pub relocation_phase: RelocationPhase,
    /// Where the target may reach the source about this relocation
    /// (`{apiRoot}/smo-peer/v1/relocations/{relocationId}`).
    pub notif_uri: String,
    pub source_smo_id: String,
    /// The `UP_PATH_CH` notification that started the relocation.
    pub notification: EventNotification,
    /// The service being relocated.
    pub service: Service,
    /// Why the source gave up (FAILURE only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// The network holds the UE's path switch until the source acknowledges the notification
    /// (TS 29.522 `afAckInd`): the UE's traffic stays on the old path meanwhile, so PREPARE
    /// installs no trombone (make-before-break). Absent: false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub path_held: bool,
}

/// Whether the target agrees to go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PeerResult {
    Proceed,
    Fail,
}

/// The target's answer to one [`PeerRelocationMessage`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerRelocationAnswer {
    pub relocation_id: String,
    pub relocation_phase: RelocationPhase,
    pub result: PeerResult,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// INITIATE: the `notifAddress` of the target's service module.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_module_address: Option<SocketAddr>,
    /// The phase's time at the target (its stopwatch).
    pub took_us: u64,
    /// Time spent installing flows in this phase at the target, if it installed any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_install_us: Option<u64>,
}

/// Which side of a relocation an SMO is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RelocationRole {
    Source,
    Target,
}

/// Where a relocation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RelocationState {
    Running,
    /// The service runs at the target (reached COMPLETE).
    Completed,
    /// The service stayed at the source (went through FAILURE).
    Failed,
}

/// One phase as the stopwatch saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PhaseTiming {
    pub phase: RelocationPhase,
    /// µs after the notification was received (source) or INITIATE arrived (target).
    pub start_us: u64,
    pub took_us: u64,
    /// Flow installs in this phase (sum over sets), and how many flow mods they sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_install_us: Option<u64>,
    #[serde(default)]
    pub flow_mods: u32,
}

/// `GET /application-function/v1/relocations/{relocationId}`: a relocation with its stopwatch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RelocationRecord {
    pub relocation_id: String,
    pub role: RelocationRole,
    pub state: RelocationState,
    /// The phase running now, or the last one.
    pub phase: RelocationPhase,
    pub ue_ipv4_addr: Ipv4Addr,
    pub source_dnai: Dnai,
    pub target_dnai: Dnai,
    /// The SMO on the other side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<PeerInfo>,
    pub service: Service,
    /// Source: the local module that hosts the service; target: the module that receives it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_module_address: Option<SocketAddr>,
    /// Wall clock (µs since the Unix epoch) when the notification (source) or INITIATE (target)
    /// arrived.
    pub started_unix_us: u64,
    /// This SMO's phases.
    #[serde(default)]
    pub phases: Vec<PhaseTiming>,
    /// Source only: the target's phases as its answers reported them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peer_phases: Vec<PhaseTiming>,
    /// Source only: notification received → COMPLETE finished (the thesis's total migration time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_us: Option<u64>,
    /// Source only: the module's report of the migration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execute: Option<ExecuteReport>,
    /// Why it failed (or what went wrong after the service moved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// Source only: how the relocation was started and driven (absent when it was started by a
    /// notification and ran without a re-sent message).
    #[serde(default, skip_serializing_if = "RelocationControl::is_plain")]
    pub control: RelocationControl,
    /// Source only: the acknowledgement of the notification the network waits for (TS 29.522
    /// `afAckUri`), absent when none was asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub af_ack: Option<AfAckRecord>,
}

/// The acknowledgement of one path-change notification (see [`RelocationRecord::af_ack`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AfAckRecord {
    /// Where it goes (the notification's `afAckUri`).
    pub af_ack_uri: String,
    /// What was (or is being) answered; absent until it is decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub af_status: Option<AfResultStatus>,
    /// When it was sent, µs after the notification arrived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_us: Option<u64>,
    /// The answer: `204`, another status, or why none came.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
}

/// What started a source relocation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RelocationTrigger {
    /// An `UP_PATH_CH` notification moving the UE away from this SMO's DNAI.
    #[default]
    Notification,
    /// Notifications that arrived while an earlier relocation of the service ran: queued,
    /// coalesced, and re-evaluated against the UE's location (the LR) when it ended.
    Requeued,
    /// The reconciler: a service running at another edge than the one of its UEs' site.
    Reconciler,
}

/// How a source relocation was started and driven (see [`RelocationRecord::control`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RelocationControl {
    #[serde(default)]
    pub trigger: RelocationTrigger,
    /// Notifications folded into this relocation while an earlier one of the service ran.
    #[serde(default)]
    pub coalesced: u32,
    /// Peer messages sent again because the last one got no answer (or, for COMPLETE, no
    /// PROCEED): phase messages are idempotent and re-driven with backoff until answered.
    #[serde(default)]
    pub redrives: u32,
    /// FAILED because a newer notification for the UE cancelled it before EXECUTE.
    #[serde(default)]
    pub cancelled: bool,
}

impl RelocationControl {
    /// Started by a notification, nothing re-sent, not cancelled.
    pub fn is_plain(&self) -> bool {
        *self == Self::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_use_the_thesis_spelling() {
        assert_eq!(
            serde_json::to_value(RelocationPhase::Initiate).ok(),
            Some(serde_json::json!("INITIATE"))
        );
        assert_eq!(
            serde_json::to_value(RelocationType::Criu).ok(),
            Some(serde_json::json!("CRIU"))
        );
        assert_eq!(RelocationPhase::Failure.to_string(), "FAILURE");
    }

    #[test]
    fn registration_rejects_unknown_fields_and_missing_uris() {
        let ok = serde_json::json!({
            "relocationType": "CRIU",
            "getServiceNotifUri": "http://a/s",
            "servedServiceNotifUri": "http://a/ss",
            "executeNotifUri": "http://a/e",
            "notifAddress": "10.0.1.1:9100"
        });
        let r: ServiceModuleRegistration = serde_json::from_value(ok.clone()).expect("valid");
        assert_eq!(r.resource_requirements, ResourceRequirements::default());
        let mut extra = ok.clone();
        extra["bogus"] = serde_json::json!(1);
        assert!(serde_json::from_value::<ServiceModuleRegistration>(extra).is_err());
        let mut missing = ok;
        missing.as_object_mut().map(|o| o.remove("executeNotifUri"));
        assert!(serde_json::from_value::<ServiceModuleRegistration>(missing).is_err());
    }

    #[test]
    fn requirements_fit_field_by_field() {
        let cap = ResourceRequirements {
            cpu_millis: 1000,
            memory_mb: 512,
            disk_mb: 0,
        };
        assert!(ResourceRequirements::default().fits(&cap));
        assert!(!ResourceRequirements {
            disk_mb: 1,
            ..Default::default()
        }
        .fits(&cap));
    }
}

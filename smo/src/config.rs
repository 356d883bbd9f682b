//! The SMO's configuration file (JSON, `smo --config FILE`).

use crate::core::reconcile::Policy;
use crate::routing::rules::EdgePorts;
use model::common::Dnai;
use model::smo::{PeerInfo, ResourceRequirements};
use serde::{Deserialize, Serialize};
use std::net::SocketAddrV4;
use std::path::PathBuf;

/// Which `UP_PATH_CH` notifications the SMO subscribes to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum NotifyWhen {
    /// Before the new user-plane path is active.
    Early,
    /// After it is active (the thesis's choice: the container moves after the UPF).
    #[default]
    Late,
}

/// Time limits of the calls a relocation makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub struct Timeouts {
    /// One peer-protocol call.
    pub peer_ms: u64,
    /// A module's GetServices / ServedService callback.
    pub module_ms: u64,
    /// A module's Execute callback (the live migration).
    pub execute_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            peer_ms: 5_000,
            module_ms: 2_000,
            execute_ms: 60_000,
        }
    }
}

/// The reconciler's period and patience (`reconcile` in the config; every field optional).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields, default)]
pub struct ReconcileConfig {
    /// How often the reconciler compares what is with what should be (the first round runs at
    /// start); 0 turns it off.
    pub period_ms: u64,
    /// A service whose relocation ended less than this ago is left alone (the modules' and the
    /// switch's view may lag the records).
    pub settle_ms: u64,
    /// After a failed relocation, the next one of the same service waits this long, doubling
    /// with every further failure up to `retry_max_ms`.
    pub retry_first_ms: u64,
    pub retry_max_ms: u64,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        Self {
            period_ms: 1_000,
            settle_ms: 2_000,
            retry_first_ms: 10_000,
            retry_max_ms: 300_000,
        }
    }
}

impl ReconcileConfig {
    /// The decision's [`Policy`].
    pub fn policy(&self) -> Policy {
        Policy {
            settle_us: self.settle_ms.saturating_mul(1_000),
            retry_first_us: self.retry_first_ms.saturating_mul(1_000),
            retry_max_us: self.retry_max_ms.saturating_mul(1_000),
        }
    }
}

/// Everything one SMO needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub struct SmoConfig {
    /// e.g. `smo-x`.
    pub smo_id: String,
    /// The DNAI of this SMO's edge cloud, as the SMF names it (e.g. `edge-x`).
    pub dnai: Dnai,
    /// Where the API listens, e.g. `10.100.0.41:8090`.
    pub api_addr: SocketAddrV4,
    /// The deployment's bearer token: required on every request and sent on every call.
    pub token: Option<String>,
    /// Base URL of the SMF, e.g. `http://10.100.0.10:8000`. Without it the SMO does not subscribe
    /// (notifications can still be posted to it).
    pub smf_url: Option<String>,
    /// Base URL of the Location Registry, e.g. `http://10.100.0.10:8001`: where the SMO asks which
    /// site (DNAI) a UE is at (`GET /lr/v1/ues/{ip}`) when it re-evaluates queued notifications
    /// and when it reconciles. Without it queued notifications are re-evaluated against the
    /// latest of them, and the reconciler starts no relocation.
    #[serde(default)]
    pub lr_url: Option<String>,
    #[serde(default)]
    pub notify_when: NotifyWhen,
    /// The topology database: peer SMOs.
    #[serde(default)]
    pub peers: Vec<PeerInfo>,
    /// The OpenFlow management socket of the edge's bridge, e.g.
    /// `/run/testbed/tb/ovs-edge-x/br-edge-x.mgmt`.
    pub ovs_mgmt: PathBuf,
    /// The bridge's backhaul and N6 port names.
    pub ports: EdgePorts,
    /// What this edge can host (VALIDATE checks incoming services against it).
    #[serde(default = "default_capacity")]
    pub capacity: ResourceRequirements,
    /// Where relocations and registrations are persisted.
    pub state_dir: PathBuf,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default)]
    pub reconcile: ReconcileConfig,
}

/// What an edge can host when the config names no capacity.
pub fn default_capacity() -> ResourceRequirements {
    ResourceRequirements {
        cpu_millis: 2000,
        memory_mb: 4096,
        disk_mb: 10240,
    }
}

impl SmoConfig {
    /// Base URL of this SMO's API.
    pub fn api_root(&self) -> String {
        format!("http://{}", self.api_addr)
    }
}

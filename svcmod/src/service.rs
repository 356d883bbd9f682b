//! What the module says about its services and their moves: how a service is made
//! ([`ServiceSpec`]) and where it is in its lifecycle ([`ServiceState`]), how it moves
//! ([`Strategy`]), faults the module can cause on purpose ([`Fault`]), and the reports of one
//! move at the source ([`MigrationReport`]) and at the target ([`IncomingReport`]).

use crate::container;
use crate::error::BackendError;
use model::ran::TimelineStep;
use model::smo::{ExecuteReport, RelocationType, ResourceRequirements, Service};
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// How a service's memory moves. Serialized `stop-and-copy` / `lazy-pages`; the snake_case
/// spellings `stop_and_copy` / `lazy_pages` are accepted too.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Stop the service, dump everything, copy, restore (the downtime grows with the memory).
    #[default]
    #[serde(alias = "stop_and_copy")]
    StopAndCopy,
    /// Post-copy: dump all but the memory pages, restore at once, and let the target fetch pages
    /// from the source's page server as the service touches them (CRIU `--lazy-pages`).
    #[serde(alias = "lazy_pages")]
    LazyPages,
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::StopAndCopy => "stop-and-copy",
            Self::LazyPages => "lazy-pages",
        })
    }
}

/// A failure a module causes on purpose when told to (`POST /svcmod/v1/faults`): for failure
/// experiments and the end-to-end failure tests. Serialized kebab-case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// The next service this module receives has its images damaged right before the restore,
    /// so the real restore fails (the source must roll back).
    CorruptImages,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::CorruptImages => "corrupt-images",
        })
    }
}

/// A service to start (in a config: snake_case fields, unknown ones refused).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// 1–13 characters of `a-z0-9-` (it names the OVS port `s-<id>` and the namespaces).
    pub service_id: String,
    /// In 20.0.0.0/16; kept across migrations.
    pub ipv4_addr: Ipv4Addr,
    /// Unicast `aa:bb:cc:dd:ee:ff`; kept across migrations.
    pub mac_addr: String,
    /// What runs, as root (CRIU backend: the command line of the process tree; LXC backend: the
    /// container's init, with the directory of an absolute program bound in read-only).
    pub command: Vec<String>,
    #[serde(default)]
    pub resource_requirements: ResourceRequirements,
}

impl ServiceSpec {
    /// The service this spec makes on a backend of `relocation_type`, its MAC and OVS port name
    /// checked (`s-<id>`); it serves no UE yet.
    pub fn service(&self, relocation_type: RelocationType) -> Result<Service, BackendError> {
        Ok(Service {
            service_id: self.service_id.clone(),
            ipv4_addr: self.ipv4_addr,
            mac_addr: container::validate_mac(&self.mac_addr)?,
            ovs_port: container::ovs_port_name(&self.service_id)?,
            relocation_type,
            resource_requirements: self.resource_requirements,
            ue_ipv4_addrs: Vec::new(),
        })
    }
}

/// Where a hosted service is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceState {
    /// Being created.
    Starting,
    /// Running here; can be listed, served, migrated and removed.
    Running,
    /// A migration to another module is running.
    MigratingOut,
}

impl ServiceState {
    /// Whether a migration (or a removal) may start.
    pub fn can_migrate(self) -> bool {
        self == Self::Running
    }
}

/// One migration as the source module measured it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MigrationReport {
    pub relocation_id: String,
    pub service: Service,
    pub strategy: Strategy,
    /// Connect + the target making the service's namespace.
    pub prepare_us: u64,
    /// `criu dump` (the service stops at its start).
    pub dump_us: u64,
    /// Images to the target over the backhaul.
    pub transfer_us: u64,
    /// `criu restore` at the target until every task is restored (target's clock).
    pub restore_us: u64,
    /// Commit → the service runs at the target (carrier up, tasks resumed).
    pub resume_us: u64,
    /// Post-copy: the service's resume at the target → its last page served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pages_us: Option<u64>,
    /// Dump start → the service runs again (at the target, or at the source after a rollback).
    pub frozen_us: u64,
    /// The whole migration.
    pub total_us: u64,
    /// Size of the images.
    pub image_bytes: u64,
    /// Bytes the source sent on the migration connection (images and framing).
    pub bytes_moved: u64,
    pub steps: Vec<TimelineStep>,
}

impl MigrationReport {
    /// The answer to the SMO's Execute.
    pub fn to_execute_report(&self) -> ExecuteReport {
        ExecuteReport {
            took_us: self.total_us,
            bytes_moved: Some(self.bytes_moved),
            steps: self.steps.clone(),
        }
    }
}

/// One migration as the target module saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IncomingReport {
    pub relocation_id: String,
    pub service: Service,
    pub prepare_us: u64,
    pub receive_us: u64,
    pub restore_us: u64,
    pub resume_us: u64,
    /// Post-copy: resume → the last page arrived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pages_us: Option<u64>,
    pub image_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_becomes_the_execute_answer() {
        let began = tokio::time::Instant::now();
        let mut sw = model::timeline::Stopwatch::start_at(began);
        sw.record_at("dump", began, began);
        sw.record_took_at("restore at target", 7, began);
        let report = MigrationReport {
            relocation_id: "r".into(),
            service: crate::fake::service("a", RelocationType::Criu),
            strategy: Strategy::StopAndCopy,
            prepare_us: 1,
            dump_us: 2,
            transfer_us: 3,
            restore_us: 7,
            resume_us: 4,
            pages_us: None,
            frozen_us: 16,
            total_us: 20,
            image_bytes: 100,
            bytes_moved: 120,
            steps: sw.steps().to_vec(),
        };
        let e = report.to_execute_report();
        assert_eq!(e.took_us, 20);
        assert_eq!(e.bytes_moved, Some(120));
        assert_eq!(e.steps.len(), 2);
        assert_eq!(e.steps[1].took_us, 7);
        assert!(e.steps.iter().all(|s| s.at_unix_us.is_some()));
    }

    #[test]
    fn only_a_running_service_can_move() {
        assert!(ServiceState::Running.can_migrate());
        assert!(!ServiceState::MigratingOut.can_migrate());
        assert!(!ServiceState::Starting.can_migrate());
        assert_eq!(Strategy::LazyPages.to_string(), "lazy-pages");
    }

    #[test]
    fn strategies_parse_in_both_spellings() {
        for (text, want) in [
            ("stop-and-copy", Strategy::StopAndCopy),
            ("stop_and_copy", Strategy::StopAndCopy),
            ("lazy-pages", Strategy::LazyPages),
            ("lazy_pages", Strategy::LazyPages),
        ] {
            let got: Strategy = serde_json::from_value(serde_json::json!(text)).expect(text);
            assert_eq!(got, want);
        }
        assert_eq!(
            serde_json::to_value(Strategy::LazyPages).expect("json"),
            serde_json::json!("lazy-pages")
        );
        assert!(serde_json::from_value::<Strategy>(serde_json::json!("copy")).is_err());
    }
}

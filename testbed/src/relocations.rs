//! `testbed relocations`: every SMO's relocation records (`GET /application-function/v1/relocations`,
//! fetched from a thread inside the SMO's edge namespace), merged by relocation id — the source
//! SMO's record with the target SMO's — and printed as a table of phases and times.

use model::smo::{PhaseTiming, RelocationPhase, RelocationRecord, RelocationRole};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use crate::handover::CallError;
use crate::plan::Plan;

/// Path of the SMO's relocation collection.
pub const RELOCATIONS_PATH: &str = "/application-function/v1/relocations";

/// One relocation as both of its SMOs recorded it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MergedRelocation {
    pub relocation_id: String,
    /// The source SMO's record (it has the total and the module's report).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<RelocationRecord>,
    /// The target SMO's record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<RelocationRecord>,
}

impl MergedRelocation {
    /// The record that speaks for the relocation: the source's, else the target's.
    pub fn main(&self) -> Option<&RelocationRecord> {
        self.source.as_ref().or(self.target.as_ref())
    }

    /// The source's timing of `phase`.
    pub fn source_phase(&self, phase: RelocationPhase) -> Option<&PhaseTiming> {
        self.source.as_ref().and_then(|r| find(&r.phases, phase))
    }

    /// The target's timing of `phase`: from its own record, else as the source heard it.
    pub fn target_phase(&self, phase: RelocationPhase) -> Option<&PhaseTiming> {
        self.target
            .as_ref()
            .and_then(|r| find(&r.phases, phase))
            .or_else(|| {
                self.source
                    .as_ref()
                    .and_then(|r| find(&r.peer_phases, phase))
            })
    }

    /// Notification → COMPLETE at the source, µs.
    pub fn total_us(&self) -> Option<u64> {
        self.source.as_ref().and_then(|r| r.total_us)
    }
}

fn find(phases: &[PhaseTiming], phase: RelocationPhase) -> Option<&PhaseTiming> {
    phases.iter().find(|p| p.phase == phase)
}

/// Merges the records of every SMO by relocation id, in order of first appearance (each SMO lists
/// its relocations oldest first).
pub fn merge(records: impl IntoIterator<Item = RelocationRecord>) -> Vec<MergedRelocation> {
    let mut order: Vec<String> = Vec::new();
    let mut by_id: BTreeMap<String, MergedRelocation> = BTreeMap::new();
    for r in records {
        let id = r.relocation_id.clone();
        let m = by_id.entry(id.clone()).or_insert_with(|| {
            order.push(id.clone());
            MergedRelocation {
                relocation_id: id,
                source: None,
                target: None,
            }
        });
        match r.role {
            RelocationRole::Source => m.source = Some(r),
            RelocationRole::Target => m.target = Some(r),
        }
    }
    order
        .into_iter()
        .filter_map(|id| by_id.remove(&id))
        .collect()
}

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1e3)
}

fn opt_ms(us: Option<u64>) -> String {
    us.map_or_else(|| "-".to_owned(), ms)
}

/// The phases shown for a relocation: the success path, plus FAILURE when either side went there.
fn shown_phases(m: &MergedRelocation) -> Vec<RelocationPhase> {
    let mut p = RelocationPhase::SUCCESS_PATH.to_vec();
    let f = RelocationPhase::Failure;
    let failed = m.source_phase(f).is_some()
        || m.target_phase(f).is_some()
        || [m.source.as_ref(), m.target.as_ref()]
            .into_iter()
            .flatten()
            .any(|r| r.phase == f);
    if failed {
        p.push(f);
    }
    p
}

/// The table `testbed relocations` prints: one line per relocation, then its phases with the
/// source's and the target's times and flow installs (ms).
pub fn table(relocations: &[MergedRelocation]) -> String {
    let mut out = String::new();
    if relocations.is_empty() {
        out.push_str("no relocations\n");
        return out;
    }
    let _ = writeln!(
        out,
        "{:<14} {:<15} {:<24} {:<21} {:<10} {:<9} {:>10}  cause",
        "relocation", "UE", "service", "source→target", "state", "phase", "total ms"
    );
    for m in relocations {
        let Some(r) = m.main() else { continue };
        let state = serde_json::to_value(r.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        // The target's cause repeats the source's when the source told it why (FAILURE).
        let cause = m
            .source
            .as_ref()
            .and_then(|r| r.cause.as_deref())
            .or_else(|| m.target.as_ref().and_then(|r| r.cause.as_deref()))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<14} {:<15} {:<24} {:<21} {:<10} {:<9} {:>10}  {}",
            m.relocation_id,
            r.ue_ipv4_addr.to_string(),
            format!("{} ({})", r.service.service_id, r.service.ipv4_addr),
            format!("{}→{}", r.source_dnai, r.target_dnai),
            state,
            r.phase.to_string(),
            opt_ms(m.total_us()),
            if cause.is_empty() { "-" } else { &cause },
        );
        if m.source.is_none() {
            out.push_str("    (no record from the source SMO)\n");
        }
        if m.target.is_none() {
            out.push_str("    (no record from the target SMO)\n");
        }
        let _ = writeln!(
            out,
            "    {:<9} {:>10} {:>10} {:>13} {:>13}",
            "phase", "source ms", "target ms", "src flows ms", "tgt flows ms"
        );
        for phase in shown_phases(m) {
            let s = m.source_phase(phase);
            let t = m.target_phase(phase);
            let _ = writeln!(
                out,
                "    {:<9} {:>10} {:>10} {:>13} {:>13}",
                phase.to_string(),
                opt_ms(s.map(|p| p.took_us)),
                opt_ms(t.map(|p| p.took_us)),
                opt_ms(s.and_then(|p| p.flow_install_us)),
                opt_ms(t.and_then(|p| p.flow_install_us)),
            );
        }
        if let Some(x) = m.source.as_ref().and_then(|r| r.execute.as_ref()) {
            let _ = writeln!(
                out,
                "    module migration {} ms{}",
                ms(x.took_us),
                x.bytes_moved
                    .map(|b| format!(", {b} bytes moved"))
                    .unwrap_or_default()
            );
        }
    }
    out
}

/// What one SMO answered.
#[derive(Debug)]
pub struct SmoAnswer {
    /// The SMO's launch name, e.g. `smo-x`.
    pub smo: String,
    pub records: Result<Vec<RelocationRecord>, CallError>,
}

/// `GET {api_root}{path}` from a thread inside namespace `netns`, parsed as JSON.
pub fn get_in<T>(netns: &str, url: String, token: &str, what: String) -> Result<T, CallError>
where
    T: serde::de::DeserializeOwned + Send + 'static,
{
    crate::handover::sbi_call_in(
        netns,
        token,
        Duration::from_secs(5),
        what,
        move |client| async move { client.get::<T>(&url).await },
    )
}

/// The relocation records of the SMO of edge node `edge`.
pub fn fetch(plan: &Plan, token: &str, edge: &str) -> Result<Vec<RelocationRecord>, CallError> {
    let url = format!("{}{RELOCATIONS_PATH}", crate::nf::smo_api_root(plan, edge));
    get_in(
        &plan.netns(edge),
        url,
        token,
        format!("{} API", crate::nf::smo_name(edge)),
    )
}

/// Asks every edge cloud's SMO (one at a time) for its relocations.
pub fn collect(plan: &Plan, token: &str) -> Vec<SmoAnswer> {
    plan.switches
        .iter()
        .map(|sw| SmoAnswer {
            smo: crate::nf::smo_name(&sw.node),
            records: fetch(plan, token, &sw.node),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::smo::{ExecuteReport, RelocationState, RelocationType, Service};
    use std::net::Ipv4Addr;

    fn timing(phase: RelocationPhase, took_us: u64, flows: Option<u64>) -> PhaseTiming {
        PhaseTiming {
            phase,
            start_us: 0,
            took_us,
            flow_install_us: flows,
            flow_mods: u32::from(flows.is_some()),
        }
    }

    fn record(id: &str, role: RelocationRole, phases: Vec<PhaseTiming>) -> RelocationRecord {
        RelocationRecord {
            relocation_id: id.into(),
            role,
            state: RelocationState::Completed,
            phase: RelocationPhase::Complete,
            ue_ipv4_addr: Ipv4Addr::new(192, 168, 1, 2),
            source_dnai: "edge-x".into(),
            target_dnai: "edge-y".into(),
            peer: None,
            service: Service {
                service_id: "probe-x".into(),
                ipv4_addr: Ipv4Addr::new(20, 0, 0, 10),
                mac_addr: "02:14:00:00:00:0a".into(),
                ovs_port: "srv".into(),
                relocation_type: RelocationType::Test,
                resource_requirements: Default::default(),
                ue_ipv4_addrs: Vec::new(),
            },
            module_id: None,
            target_module_address: None,
            started_unix_us: 0,
            phases,
            peer_phases: Vec::new(),
            total_us: None,
            execute: None,
            cause: None,
            control: Default::default(),
            af_ack: None,
        }
    }

    fn success(took: u64) -> Vec<PhaseTiming> {
        RelocationPhase::SUCCESS_PATH
            .iter()
            .map(|&p| timing(p, took, (p == RelocationPhase::Prepare).then_some(took / 2)))
            .collect()
    }

    #[test]
    fn records_merge_by_id_source_with_target_in_first_seen_order() {
        let mut src = record("smo-x-1", RelocationRole::Source, success(1000));
        src.total_us = Some(5000);
        let tgt = record("smo-x-1", RelocationRole::Target, success(300));
        let other = record("smo-y-2", RelocationRole::Source, Vec::new());
        let merged = merge([src.clone(), other.clone(), tgt.clone()]);
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0].relocation_id, "smo-x-1");
        assert_eq!(merged[0].source.as_ref(), Some(&src));
        assert_eq!(merged[0].target.as_ref(), Some(&tgt));
        assert_eq!(merged[0].total_us(), Some(5000));
        assert_eq!(merged[1].relocation_id, "smo-y-2");
        assert!(merged[1].target.is_none());
        let json = serde_json::to_value(&merged).expect("json");
        assert_eq!(json[0]["relocationId"], "smo-x-1");
        assert_eq!(json[0]["source"]["role"], "SOURCE");
        assert_eq!(json[0]["target"]["role"], "TARGET");
        assert!(json[1].get("target").is_none());
    }

    #[test]
    fn target_times_fall_back_to_what_the_source_heard() {
        let mut src = record("smo-x-1", RelocationRole::Source, success(1000));
        src.peer_phases = vec![timing(RelocationPhase::Prepare, 77, Some(40))];
        let m = &merge([src])[0];
        let t = m
            .target_phase(RelocationPhase::Prepare)
            .expect("from peer phases");
        assert_eq!(t.took_us, 77);
        assert!(m.target_phase(RelocationPhase::Execute).is_none());
    }

    #[test]
    fn the_table_shows_each_phase_on_both_sides_with_flow_installs_and_total() {
        let mut src = record("smo-x-1", RelocationRole::Source, success(1500));
        src.total_us = Some(7654);
        src.execute = Some(ExecuteReport {
            took_us: 2000,
            bytes_moved: Some(4096),
            steps: Vec::new(),
        });
        let tgt = record("smo-x-1", RelocationRole::Target, success(260));
        let text = table(&merge([src, tgt]));
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("relocation"), "{text}");
        assert!(lines[0].contains("source→target"), "{text}");
        let row = lines[1];
        for want in [
            "smo-x-1",
            "192.168.1.2",
            "probe-x (20.0.0.10)",
            "edge-x→edge-y",
            "COMPLETED",
            "COMPLETE",
            "7.65",
        ] {
            assert!(row.contains(want), "`{want}` missing in `{row}`");
        }
        assert!(row.trim_end().ends_with('-'), "no cause: {row}");
        let prepare = lines
            .iter()
            .find(|l| l.trim_start().starts_with("PREPARE"))
            .expect("PREPARE line");
        let cols: Vec<&str> = prepare.split_whitespace().collect();
        assert_eq!(cols, ["PREPARE", "1.50", "0.26", "0.75", "0.13"]);
        let initiate = lines
            .iter()
            .find(|l| l.trim_start().starts_with("INITIATE"))
            .expect("INITIATE line");
        assert_eq!(
            initiate.split_whitespace().collect::<Vec<_>>(),
            ["INITIATE", "1.50", "0.26", "-", "-"]
        );
        assert!(!text.contains("FAILURE"), "{text}");
        assert!(text.contains("module migration 2.00 ms, 4096 bytes moved"));
    }

    #[test]
    fn a_failed_relocation_shows_its_failure_phase_cause_and_missing_side() {
        let mut src = record(
            "smo-x-3",
            RelocationRole::Source,
            vec![
                timing(RelocationPhase::Initiate, 900, None),
                timing(RelocationPhase::Failure, 1200, Some(800)),
            ],
        );
        src.state = RelocationState::Failed;
        src.phase = RelocationPhase::Failure;
        src.cause = Some("service module could not migrate: boom".into());
        let text = table(&merge([src]));
        assert!(text.contains("FAILED"), "{text}");
        assert!(text.contains("service module could not migrate: boom"));
        assert!(text.contains("(no record from the target SMO)"));
        let failure = text
            .lines()
            .find(|l| l.trim_start().starts_with("FAILURE"))
            .expect("FAILURE line");
        assert_eq!(
            failure.split_whitespace().collect::<Vec<_>>(),
            ["FAILURE", "1.20", "-", "0.80", "-"]
        );
        assert_eq!(table(&[]), "no relocations\n");
    }
}

//! `GET /metrics`: the stopwatch's records as Prometheus text exposition (format 0.0.4),
//! computed at scrape time by a pure function over the records.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `smo_info` | gauge (1) | `smo_id` |
//! | `smo_relocations_total` | counter: relocations that ended | `role`, `state` (`completed`, `failed`) |
//! | `smo_relocations_running` | gauge | `role` |
//! | `smo_relocation_phase_seconds` | summary (`_sum`, `_count`) of this SMO's phases | `role`, `phase` |
//! | `smo_flow_install_seconds` | summary of flow installs per phase | `role`, `phase` |
//! | `smo_relocation_total_seconds` | summary of the source's total migration time | |
//! | `smo_relocation_last_total_seconds` | gauge: the latest completed relocation's total | |
//! | `smo_relocations_started_total` | counter: source relocations by what started them | `trigger` (`notification`, `requeued`, `reconciler`) |
//! | `smo_relocations_cancelled_total` | counter: source relocations cancelled before EXECUTE by a newer notification | |
//! | `smo_peer_redrives_total` | counter: peer messages sent again for want of an answer | |
//! | `smo_notifications_skipped_total` | counter: notifications with no service to move | |
//! | `smo_notifications_queued_total` | counter: notifications queued behind a running relocation of their UE | |
//! | `smo_notifications_coalesced_total` | counter: notifications folded into a UE's queued one | |
//! | `smo_notifications_queued` | gauge: UEs with a notification queued now | |
//! | `smo_reevaluations_total` | counter: queued notifications re-evaluated against the LR once the UE's relocation ended | |
//! | `smo_reconciler_runs_total` | counter: reconciler rounds | |
//! | `smo_reconciler_corrections_total` | counter: corrections made | `action` (`install_direct_path`, `remove_direct_path`, `install_trombone`, `remove_trombone`, `start_relocation`, `adopt_service`, `forget_service`) |
//! | `smo_reconciler_errors_total` | counter: what a round could not observe or correct | `what` (`switch`, `module`, `lr`, `apply`) |
//! | `smo_service_modules` | gauge: registered service modules | |
//! | `smo_hosted_services` | gauge: the service database's size | |
//!
//! A relocation in state `running` is a gauge, not a counter value: it leaves that state.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use model::smo::{
    RelocationPhase, RelocationRecord, RelocationRole, RelocationState, RelocationTrigger,
};

use crate::core::reconcile::{ACTIONS, ERRORS};
use crate::negotiator::{NotificationCounts, ReconcilerTally};

/// The content type of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What one scrape shows.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot<'a> {
    pub smo_id: &'a str,
    pub relocations: &'a [RelocationRecord],
    pub notifications: NotificationCounts,
    /// UEs with a notification queued now.
    pub queued_hints: usize,
    pub reconciler_runs: u64,
    pub reconciler: &'a ReconcilerTally,
    pub service_modules: usize,
    pub hosted_services: usize,
}

const ROLES: [RelocationRole; 2] = [RelocationRole::Source, RelocationRole::Target];
const PHASES: [RelocationPhase; 6] = [
    RelocationPhase::Initiate,
    RelocationPhase::Validate,
    RelocationPhase::Prepare,
    RelocationPhase::Execute,
    RelocationPhase::Complete,
    RelocationPhase::Failure,
];

const TRIGGERS: [RelocationTrigger; 3] = [
    RelocationTrigger::Notification,
    RelocationTrigger::Requeued,
    RelocationTrigger::Reconciler,
];

fn trigger_label(t: RelocationTrigger) -> &'static str {
    match t {
        RelocationTrigger::Notification => "notification",
        RelocationTrigger::Requeued => "requeued",
        RelocationTrigger::Reconciler => "reconciler",
    }
}

fn role_label(r: RelocationRole) -> &'static str {
    match r {
        RelocationRole::Source => "source",
        RelocationRole::Target => "target",
    }
}

fn phase_label(p: RelocationPhase) -> &'static str {
    match p {
        RelocationPhase::Initiate => "initiate",
        RelocationPhase::Validate => "validate",
        RelocationPhase::Prepare => "prepare",
        RelocationPhase::Execute => "execute",
        RelocationPhase::Complete => "complete",
        RelocationPhase::Failure => "failure",
    }
}

/// A label value escaped for the text format: `\` → `\\`, `"` → `\"`, newline → `\n`.
pub fn escape_label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Microseconds as seconds.
fn seconds(us: u64) -> f64 {
    // Exact for every duration below 2^53 µs (285 years).
    us as f64 / 1e6
}

/// `{a="x",b="y"}` (empty when there are no labels).
fn labels(pairs: &[(&str, &str)]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape_label_value(v)))
        .collect();
    format!("{{{}}}", inner.join(","))
}

/// Accumulates one metric family.
struct Family<'o> {
    out: &'o mut String,
}

impl<'o> Family<'o> {
    fn new(out: &'o mut String, name: &str, kind: &str, help: &str) -> Self {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        Self { out }
    }

    fn sample(&mut self, name: &str, pairs: &[(&str, &str)], value: impl std::fmt::Display) {
        let _ = writeln!(self.out, "{name}{} {value}", labels(pairs));
    }
}

#[derive(Default, Clone, Copy)]
struct Summary {
    sum_us: u64,
    count: u64,
}

impl Summary {
    fn add(&mut self, us: u64) {
        self.sum_us = self.sum_us.saturating_add(us);
        self.count += 1;
    }
}

/// Renders `s` in the Prometheus text format.
pub fn render(s: &Snapshot<'_>) -> String {
    let mut ended: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    let mut running: BTreeMap<&str, u64> = BTreeMap::new();
    let mut phases: BTreeMap<(&str, &str), Summary> = BTreeMap::new();
    let mut flows: BTreeMap<(&str, &str), Summary> = BTreeMap::new();
    let mut total = Summary::default();
    let mut last_total_us = None;
    let mut started: BTreeMap<&str, u64> =
        TRIGGERS.iter().map(|t| (trigger_label(*t), 0)).collect();
    let (mut cancelled, mut redrives) = (0u64, 0u64);
    for role in ROLES {
        let r = role_label(role);
        running.insert(r, 0);
        for state in ["completed", "failed"] {
            ended.insert((r, state), 0);
        }
        for phase in PHASES {
            phases.insert((r, phase_label(phase)), Summary::default());
            flows.insert((r, phase_label(phase)), Summary::default());
        }
    }
    for rec in s.relocations {
        let role = role_label(rec.role);
        match rec.state {
            RelocationState::Running => *running.entry(role).or_default() += 1,
            RelocationState::Completed => *ended.entry((role, "completed")).or_default() += 1,
            RelocationState::Failed => *ended.entry((role, "failed")).or_default() += 1,
        }
        for p in &rec.phases {
            let key = (role, phase_label(p.phase));
            phases.entry(key).or_default().add(p.took_us);
            if let Some(us) = p.flow_install_us {
                flows.entry(key).or_default().add(us);
            }
        }
        if rec.role == RelocationRole::Source {
            *started
                .entry(trigger_label(rec.control.trigger))
                .or_default() += 1;
            cancelled += u64::from(rec.control.cancelled);
            redrives += u64::from(rec.control.redrives);
            if let Some(us) = rec.total_us {
                total.add(us);
                if rec.state == RelocationState::Completed {
                    last_total_us = Some(us);
                }
            }
        }
    }

    let mut out = String::new();
    let mut f = Family::new(&mut out, "smo_info", "gauge", "This SMO (always 1).");
    f.sample("smo_info", &[("smo_id", s.smo_id)], 1);

    let mut f = Family::new(
        &mut out,
        "smo_relocations_total",
        "counter",
        "Relocations that ended, by role and final state.",
    );
    for ((role, state), n) in &ended {
        f.sample(
            "smo_relocations_total",
            &[("role", role), ("state", state)],
            n,
        );
    }

    let mut f = Family::new(
        &mut out,
        "smo_relocations_running",
        "gauge",
        "Relocations running now, by role.",
    );
    for (role, n) in &running {
        f.sample("smo_relocations_running", &[("role", role)], n);
    }

    summary_family(
        &mut out,
        "smo_relocation_phase_seconds",
        "Time spent in each relocation phase at this SMO.",
        &phases,
    );
    summary_family(
        &mut out,
        "smo_flow_install_seconds",
        "Time spent installing flows in each relocation phase at this SMO.",
        &flows,
    );

    let mut f = Family::new(
        &mut out,
        "smo_relocation_total_seconds",
        "summary",
        "Total migration time at the source: notification received to COMPLETE finished.",
    );
    f.sample(
        "smo_relocation_total_seconds_sum",
        &[],
        seconds(total.sum_us),
    );
    f.sample("smo_relocation_total_seconds_count", &[], total.count);

    let mut f = Family::new(
        &mut out,
        "smo_relocation_last_total_seconds",
        "gauge",
        "Total migration time of the latest completed relocation this SMO was the source of.",
    );
    if let Some(us) = last_total_us {
        f.sample("smo_relocation_last_total_seconds", &[], seconds(us));
    }

    let mut f = Family::new(
        &mut out,
        "smo_relocations_started_total",
        "counter",
        "Source relocations by what started them.",
    );
    for (trigger, n) in &started {
        f.sample("smo_relocations_started_total", &[("trigger", trigger)], n);
    }
    let n = &s.notifications;
    for (name, kind, help, value) in [
        (
            "smo_relocations_cancelled_total",
            "counter",
            "Source relocations cancelled before EXECUTE by a newer notification for their UE.",
            cancelled,
        ),
        (
            "smo_peer_redrives_total",
            "counter",
            "Peer messages sent again because the last one got no answer (or COMPLETE no PROCEED).",
            redrives,
        ),
        (
            "smo_notifications_skipped_total",
            "counter",
            "UP_PATH_CH notifications for which no registered service served the UE.",
            n.skipped,
        ),
        (
            "smo_notifications_queued_total",
            "counter",
            "UP_PATH_CH notifications queued behind a running relocation of their UE.",
            n.queued,
        ),
        (
            "smo_notifications_coalesced_total",
            "counter",
            "UP_PATH_CH notifications folded into the notification queued for their UE.",
            n.coalesced,
        ),
        (
            "smo_notifications_queued",
            "gauge",
            "UEs with a notification queued behind a running relocation now.",
            s.queued_hints as u64,
        ),
        (
            "smo_reevaluations_total",
            "counter",
            "Queued notifications re-evaluated against the LR once their UE's relocation ended.",
            n.reevaluated,
        ),
    ] {
        let mut f = Family::new(&mut out, name, kind, help);
        f.sample(name, &[], value);
    }

    let mut f = Family::new(
        &mut out,
        "smo_reconciler_runs_total",
        "counter",
        "Reconciler rounds (at start and every period).",
    );
    f.sample("smo_reconciler_runs_total", &[], s.reconciler_runs);
    let mut f = Family::new(
        &mut out,
        "smo_reconciler_corrections_total",
        "counter",
        "What the reconciler corrected, by action.",
    );
    for action in ACTIONS {
        let n = s.reconciler.corrections.get(action).copied().unwrap_or(0);
        f.sample("smo_reconciler_corrections_total", &[("action", action)], n);
    }
    let mut f = Family::new(
        &mut out,
        "smo_reconciler_errors_total",
        "counter",
        "What a reconciler round could not observe or correct, by what failed.",
    );
    for what in ERRORS {
        let n = s.reconciler.errors.get(what).copied().unwrap_or(0);
        f.sample("smo_reconciler_errors_total", &[("what", what)], n);
    }

    let mut f = Family::new(
        &mut out,
        "smo_service_modules",
        "gauge",
        "Registered service modules.",
    );
    f.sample("smo_service_modules", &[], s.service_modules);

    let mut f = Family::new(
        &mut out,
        "smo_hosted_services",
        "gauge",
        "Services in the service database.",
    );
    f.sample("smo_hosted_services", &[], s.hosted_services);
    out
}

fn summary_family(
    out: &mut String,
    name: &str,
    help: &str,
    values: &BTreeMap<(&str, &str), Summary>,
) {
    let mut f = Family::new(out, name, "summary", help);
    let (sum, count) = (format!("{name}_sum"), format!("{name}_count"));
    for ((role, phase), v) in values {
        let l = [("role", *role), ("phase", *phase)];
        f.sample(&sum, &l, seconds(v.sum_us));
        f.sample(&count, &l, v.count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::smo::{PhaseTiming, RelocationType, Service};

    fn record(id: &str, role: RelocationRole, state: RelocationState) -> RelocationRecord {
        RelocationRecord {
            relocation_id: id.into(),
            role,
            state,
            phase: RelocationPhase::Complete,
            ue_ipv4_addr: [192, 168, 1, 2].into(),
            source_dnai: "edge-x".into(),
            target_dnai: "edge-y".into(),
            peer: None,
            service: Service {
                service_id: "svc".into(),
                ipv4_addr: [20, 0, 0, 10].into(),
                mac_addr: "02:00:00:00:00:0a".into(),
                ovs_port: "srv".into(),
                relocation_type: RelocationType::Test,
                resource_requirements: Default::default(),
                ue_ipv4_addrs: Vec::new(),
            },
            module_id: None,
            target_module_address: None,
            started_unix_us: 0,
            phases: Vec::new(),
            peer_phases: Vec::new(),
            total_us: None,
            execute: None,
            cause: None,
            control: Default::default(),
            af_ack: None,
        }
    }

    fn phase(phase: RelocationPhase, took_us: u64, flow_us: Option<u64>) -> PhaseTiming {
        PhaseTiming {
            phase,
            start_us: 0,
            took_us,
            flow_install_us: flow_us,
            flow_mods: 0,
        }
    }

    fn lines(text: &str) -> Vec<&str> {
        text.lines().collect()
    }

    #[test]
    fn empty_snapshot_has_every_family_with_help_and_type() {
        let text = render(&Snapshot {
            smo_id: "smo-x",
            relocations: &[],
            notifications: NotificationCounts::default(),
            queued_hints: 0,
            reconciler_runs: 0,
            reconciler: &ReconcilerTally::default(),
            service_modules: 0,
            hosted_services: 0,
        });
        for (name, kind) in [
            ("smo_info", "gauge"),
            ("smo_relocations_total", "counter"),
            ("smo_relocations_running", "gauge"),
            ("smo_relocation_phase_seconds", "summary"),
            ("smo_flow_install_seconds", "summary"),
            ("smo_relocation_total_seconds", "summary"),
            ("smo_relocation_last_total_seconds", "gauge"),
            ("smo_relocations_started_total", "counter"),
            ("smo_relocations_cancelled_total", "counter"),
            ("smo_peer_redrives_total", "counter"),
            ("smo_notifications_skipped_total", "counter"),
            ("smo_notifications_queued_total", "counter"),
            ("smo_notifications_coalesced_total", "counter"),
            ("smo_notifications_queued", "gauge"),
            ("smo_reevaluations_total", "counter"),
            ("smo_reconciler_runs_total", "counter"),
            ("smo_reconciler_corrections_total", "counter"),
            ("smo_reconciler_errors_total", "counter"),
            ("smo_service_modules", "gauge"),
            ("smo_hosted_services", "gauge"),
        ] {
            let help = format!("# HELP {name} ");
            let kind_line = format!("# TYPE {name} {kind}");
            let l = lines(&text);
            let at = l
                .iter()
                .position(|x| x.starts_with(&help))
                .unwrap_or_else(|| panic!("no HELP for {name}:\n{text}"));
            assert_eq!(l.get(at + 1), Some(&kind_line.as_str()), "{text}");
        }
        let l = lines(&text);
        assert!(l.contains(&r#"smo_relocations_total{role="source",state="completed"} 0"#));
        assert!(
            l.contains(&r#"smo_relocation_phase_seconds_count{role="target",phase="failure"} 0"#)
        );
        assert!(l.contains(&"smo_relocation_total_seconds_count 0"));
        assert!(
            !l.iter()
                .any(|x| x.starts_with("smo_relocation_last_total_seconds ")),
            "no sample without a completed relocation"
        );
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn records_become_counters_and_summaries() {
        let mut done = record("x-1", RelocationRole::Source, RelocationState::Completed);
        done.phases = vec![
            phase(RelocationPhase::Initiate, 1_000, None),
            phase(RelocationPhase::Prepare, 2_500, Some(500)),
        ];
        done.total_us = Some(1_250_000);
        let mut later = record("x-2", RelocationRole::Source, RelocationState::Completed);
        later.phases = vec![phase(RelocationPhase::Prepare, 1_500, Some(250))];
        later.total_us = Some(2_000_000);
        let mut failed = record("x-3", RelocationRole::Source, RelocationState::Failed);
        failed.total_us = None;
        failed.control.cancelled = true;
        later.control = model::smo::RelocationControl {
            trigger: RelocationTrigger::Requeued,
            coalesced: 2,
            redrives: 3,
            cancelled: false,
        };
        let running = record("y-1", RelocationRole::Target, RelocationState::Running);
        let text = render(&Snapshot {
            smo_id: "smo-x",
            relocations: &[done, later, failed, running],
            notifications: NotificationCounts {
                skipped: 3,
                queued: 4,
                coalesced: 5,
                cancelled: 1,
                reevaluated: 4,
            },
            queued_hints: 1,
            reconciler_runs: 7,
            reconciler: &ReconcilerTally {
                corrections: [("remove_trombone", 2)].into_iter().collect(),
                errors: [("lr", 1)].into_iter().collect(),
            },
            service_modules: 2,
            hosted_services: 1,
        });
        let l = lines(&text);
        for want in [
            r#"smo_info{smo_id="smo-x"} 1"#,
            r#"smo_relocations_total{role="source",state="completed"} 2"#,
            r#"smo_relocations_total{role="source",state="failed"} 1"#,
            r#"smo_relocations_total{role="target",state="completed"} 0"#,
            r#"smo_relocations_running{role="target"} 1"#,
            r#"smo_relocation_phase_seconds_sum{role="source",phase="prepare"} 0.004"#,
            r#"smo_relocation_phase_seconds_count{role="source",phase="prepare"} 2"#,
            r#"smo_relocation_phase_seconds_sum{role="source",phase="initiate"} 0.001"#,
            r#"smo_flow_install_seconds_sum{role="source",phase="prepare"} 0.00075"#,
            r#"smo_flow_install_seconds_count{role="source",phase="prepare"} 2"#,
            r#"smo_flow_install_seconds_count{role="source",phase="initiate"} 0"#,
            "smo_relocation_total_seconds_sum 3.25",
            "smo_relocation_total_seconds_count 2",
            "smo_relocation_last_total_seconds 2",
            "smo_notifications_skipped_total 3",
            r#"smo_relocations_started_total{trigger="notification"} 2"#,
            r#"smo_relocations_started_total{trigger="requeued"} 1"#,
            r#"smo_relocations_started_total{trigger="reconciler"} 0"#,
            "smo_relocations_cancelled_total 1",
            "smo_peer_redrives_total 3",
            "smo_notifications_queued_total 4",
            "smo_notifications_coalesced_total 5",
            "smo_notifications_queued 1",
            "smo_reevaluations_total 4",
            "smo_reconciler_runs_total 7",
            r#"smo_reconciler_corrections_total{action="remove_trombone"} 2"#,
            r#"smo_reconciler_corrections_total{action="start_relocation"} 0"#,
            r#"smo_reconciler_errors_total{what="lr"} 1"#,
            r#"smo_reconciler_errors_total{what="switch"} 0"#,
            "smo_service_modules 2",
            "smo_hosted_services 1",
        ] {
            assert!(l.contains(&want), "missing `{want}` in\n{text}");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label_value(r#"a\b"c"#), r#"a\\b\"c"#);
        assert_eq!(escape_label_value("two\nlines"), r"two\nlines");
        assert_eq!(escape_label_value("plain-id_1.2"), "plain-id_1.2");
        let text = render(&Snapshot {
            smo_id: "odd \"smo\"\n\\",
            relocations: &[],
            notifications: NotificationCounts::default(),
            queued_hints: 0,
            reconciler_runs: 0,
            reconciler: &ReconcilerTally::default(),
            service_modules: 0,
            hosted_services: 0,
        });
        assert!(
            text.lines()
                .any(|l| l == r#"smo_info{smo_id="odd \"smo\"\n\\"} 1"#),
            "{text}"
        );
    }
}

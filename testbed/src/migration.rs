//! What a handover did to the UE's edge service: `testbed handover` hands the UE over, then waits
//! for the service relocation the handover triggered at the SMOs (if any) to end, and measures the
//! UE-side downtime — the largest downlink gap of the UE's flows (the UE's gap recorder,
//! `/ue/v1/gaps`) that ended after the handover began.
//!
//! The gap recorder counts time from the UE process's start; the testbed maps its own clock onto
//! the UE's through the process's start time (`/proc/<pid>/stat`, boot-time clock ticks), to
//! within a few ticks — plenty for picking the gaps that ended after the handover began.

use emu_ran::ue::gaps::FlowGaps;
use model::ran::xn::HandoverReport;
use model::smo::{RelocationRecord, RelocationRole, RelocationState};
use serde::Serialize;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::handover::CallError;
use crate::plan::Plan;
use crate::relocations::{self, MergedRelocation};

/// How long `testbed handover` waits for the relocation to end, unless told otherwise.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(30);
/// How long a relocation record may take to appear after the handover returned: the source SMO
/// first asks its modules which service serves the UE (2 s time limit per module).
pub const APPEAR_WITHIN: Duration = Duration::from_secs(5);
/// How long, after the relocation ended, to wait for every flow that was active before the
/// handover to deliver a packet again (so the gap it had is closed and recorded).
pub const RESUME_WITHIN: Duration = Duration::from_secs(5);
/// Gaps that ended up to this long before the handover's start (as mapped onto the UE's clock)
/// still count: the mapping overestimates the UE's clock by up to a clock tick (10 ms) plus the
/// UE's own start-up (measured: ≈ 6 ms).
const CLOCK_SLACK_MS: f64 = 30.0;
/// Flows that delivered at least [`ACTIVE_PACKETS`] packets within this long before the handover
/// count as active (a one-off exchange, e.g. a single ping, or a flow that just ended, does not).
/// The recorder's windows start on 100 ms boundaries, so this covers the last 200–300 ms.
const ACTIVE_WINDOW_MS: f64 = 200.0;
const ACTIVE_PACKETS: u64 = 5;
const POLL: Duration = Duration::from_millis(50);
/// `USER_HZ`: the unit of `/proc/<pid>/stat`'s start time (100 on every Linux ABI).
const CLOCK_TICKS_PER_SEC: f64 = 100.0;

/// A handover and what it did to the UE's service (`testbed handover --json`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HandoverOutcome {
    #[serde(flatten)]
    pub handover: HandoverReport,
    /// Wall clock (µs since the Unix epoch) when the handover was triggered.
    pub started_unix_us: u64,
    /// The relocation the handover triggered: both SMOs' records.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relocation: Option<MergedRelocation>,
    /// Why there is no relocation, or why it did not end in time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relocation_note: Option<String>,
    /// The UE-side downtime.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ue_downtime: Option<UeDowntime>,
}

/// The largest downlink gap of the UE's flows that were live before the handover and whose gap
/// ended after it began. A flow that was idle before the handover (a ping every second, a flow
/// that had ended) is not measured: its interval is not downtime.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UeDowntime {
    /// The live flow with the largest gap (none when no live flow had one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flow: Option<String>,
    pub largest_gap_ms: f64,
    /// When that gap ended, ms after the handover began.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gap_ended_after_handover_ms: Option<f64>,
    /// The flows live just before the handover (at least [`ACTIVE_PACKETS`] packets in its last
    /// [`ACTIVE_WINDOW_MS`]): the ones measured.
    pub live_flows: Vec<String>,
    /// Every flow of the UE in the window from the handover's start (largest gap per flow).
    pub flows: Vec<FlowGaps>,
    /// Live flows that delivered nothing after the relocation ended (within [`RESUME_WITHIN`]):
    /// they stopped, and their gap is still open.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub silent_flows: Vec<StoppedFlow>,
}

/// A flow that was live before the handover and stopped.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StoppedFlow {
    pub flow: String,
    /// How long it has been silent when the handover's report was made, ms (`None`: no arrival
    /// in the window at all).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub silent_for_ms: Option<f64>,
}

impl std::fmt::Display for StoppedFlow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.silent_for_ms {
            Some(ms) => write!(f, "{} (silent for {:.0} ms)", self.flow, ms),
            None => write!(f, "{}", self.flow),
        }
    }
}

/// Picks the largest gap among the `live` flows of `flows` that ended at or after `since_ms`
/// (UE clock); gap ends are reported relative to `handover_ms`.
pub fn largest_gap(
    flows: &[FlowGaps],
    live: &[String],
    since_ms: f64,
    handover_ms: f64,
) -> UeDowntime {
    let best = flows
        .iter()
        .filter(|f| live.contains(&f.flow))
        .filter(|f| f.gap_ended_at_ms.is_some_and(|e| e >= since_ms))
        .max_by(|a, b| a.largest_gap_ms.total_cmp(&b.largest_gap_ms));
    UeDowntime {
        flow: best.map(|f| f.flow.clone()),
        largest_gap_ms: best.map_or(0.0, |f| f.largest_gap_ms),
        gap_ended_after_handover_ms: best
            .and_then(|f| f.gap_ended_at_ms)
            .map(|e| e - handover_ms),
        live_flows: live.to_vec(),
        flows: flows.to_vec(),
        silent_flows: Vec::new(),
    }
}

/// The UE process's clock: ms since it started, as its gap recorder counts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UeClock {
    /// The process's start on the boot-time clock, ms.
    started_ms: f64,
}

impl UeClock {
    /// The clock of the process whose `/proc/<pid>/stat` reads `stat`.
    pub fn from_stat(stat: &str) -> Option<Self> {
        // Field 22 (starttime); the command name (field 2) may hold spaces, so count after `)`.
        let rest = stat.rsplit_once(')')?.1;
        let ticks: u64 = rest.split_whitespace().nth(19)?.parse().ok()?;
        Some(Self {
            started_ms: ticks as f64 * 1e3 / CLOCK_TICKS_PER_SEC,
        })
    }

    /// The clock of UE `ue` of the running testbed (its PID from the testbed's state).
    pub fn of(plan: &Plan, ue: &str) -> Option<Self> {
        let state = crate::state::State::load(&plan.state_dir).ok()??;
        let p = state.processes.iter().find(|p| p.process.name == ue)?;
        if !p.process.is_running() {
            return None;
        }
        Self::from_stat(&std::fs::read_to_string(format!("/proc/{}/stat", p.process.pid)).ok()?)
    }

    /// Now on the UE's clock, ms.
    pub fn now_ms(&self) -> f64 {
        boot_time_ms() - self.started_ms
    }
}

fn boot_time_ms() -> f64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as f64 * 1e3 + t.tv_nsec() as f64 / 1e6)
        .unwrap_or(0.0)
}

/// The UE's per-flow gaps in the segments that end after `since_ms` (UE clock).
pub fn ue_gaps(plan: &Plan, ue: &str, since_ms: f64) -> Result<Vec<FlowGaps>, CallError> {
    let since = since_ms.max(0.0) as u64;
    crate::handover::ue_get(
        &crate::nf::ue_socket(plan, ue),
        &format!("/ue/v1/gaps?sinceMs={since}"),
    )
}

/// Flows with at least `min_packets` packets in `gaps`.
fn active(gaps: &[FlowGaps], min_packets: u64) -> Vec<String> {
    gaps.iter()
        .filter(|g| g.packets >= min_packets.max(1))
        .map(|g| g.flow.clone())
        .collect()
}

/// Arms `fault` in every service module of edge node `edge` (`POST /svcmod/v1/faults`; the CRIU
/// one, and the LXC / LXD ones when they run): e.g. [`svcmod::Fault::CorruptImages`] makes the
/// next migration *into* that edge fail at its restore (LXD: its pull fails).
pub fn arm_fault(
    plan: &Plan,
    token: &str,
    edge: &str,
    fault: svcmod::Fault,
) -> Result<(), CallError> {
    for (name, root) in crate::nf::svcmod_api_roots(plan, edge) {
        let url = format!("{root}/faults");
        crate::handover::sbi_call_in(
            &plan.netns(edge),
            token,
            Duration::from_secs(5),
            format!("{name} fault {fault}"),
            move |client| async move {
                client
                    .post_no_content(&url, &serde_json::json!({ "fault": fault }))
                    .await
            },
        )?;
    }
    Ok(())
}

/// `smo_notifications_skipped_total` summed over every SMO (notifications for which no registered
/// service served the UE); `None` when an SMO did not answer.
pub fn skipped_notifications(plan: &Plan, token: &str) -> Option<u64> {
    let mut sum = 0;
    for sw in &plan.switches {
        let url = format!("{}/metrics", crate::nf::smo_api_root(plan, &sw.node));
        let text = crate::handover::sbi_call_in(
            &plan.netns(&sw.node),
            token,
            Duration::from_secs(5),
            format!("{} metrics", sw.node),
            move |client| async move {
                let resp = client.send(reqwest::Method::GET, &url, None::<&()>).await?;
                resp.text()
                    .await
                    .map_err(|source| sbi::ClientError::Body { url, source })
            },
        )
        .ok()?;
        sum += metric(&text, "smo_notifications_skipped_total")?;
    }
    Some(sum)
}

/// The value of an unlabelled metric in Prometheus text.
fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (n, v) = l.split_once(' ')?;
            (n == name).then(|| v.trim().parse::<f64>().ok())?
        })
        .map(|v| v as u64)
}

/// The newest source record about `ue` that began at or after `since_unix_us`.
pub fn newest_for(
    records: &[RelocationRecord],
    ue: Ipv4Addr,
    since_unix_us: u64,
) -> Option<&RelocationRecord> {
    records
        .iter()
        .filter(|r| {
            r.role == RelocationRole::Source
                && r.ue_ipv4_addr == ue
                && r.started_unix_us >= since_unix_us
        })
        .max_by_key(|r| r.started_unix_us)
}

/// How waiting for a relocation ended.
#[derive(Debug, Clone, PartialEq)]
pub enum RelocationWait {
    /// It ended (COMPLETED or FAILED).
    Ended(MergedRelocation),
    /// It was still running when the time was up.
    Running(MergedRelocation),
    /// The source SMO found no service serving the UE.
    NoService,
    /// No record appeared (no SMO, or none reachable).
    NoneSeen(String),
}

/// Waits (up to `limit`) for the relocation of a service serving `ue` that began at or after
/// `since_unix_us` to end, polling every SMO's records. `skipped_before` is
/// [`skipped_notifications`] from before the handover: when it grows and no record appeared, no
/// service served the UE.
pub fn wait_for_relocation(
    plan: &Plan,
    token: &str,
    ue: Ipv4Addr,
    since_unix_us: u64,
    skipped_before: Option<u64>,
    limit: Duration,
) -> RelocationWait {
    let start = Instant::now();
    let mut last_error = String::new();
    // The SMOs are asked one after the other, so a target asked before its source may show its
    // state from before the source's last phase: once the source has ended, ask everyone once
    // more (the target answered that phase before the source could end).
    let mut source_ended = false;
    loop {
        let mut records = Vec::new();
        for a in relocations::collect(plan, token) {
            match a.records {
                Ok(r) => records.extend(r),
                Err(e) => last_error = format!("{}: {e}", a.smo),
            }
        }
        let found = newest_for(&records, ue, since_unix_us).map(|r| r.relocation_id.clone());
        let merged = found.and_then(|id| {
            relocations::merge(records.into_iter().filter(|r| r.relocation_id == id))
                .into_iter()
                .next()
        });
        if let Some(m) = merged {
            let done = m
                .source
                .as_ref()
                .is_some_and(|r| r.state != RelocationState::Running);
            if done && source_ended {
                return RelocationWait::Ended(m);
            }
            if done {
                source_ended = true;
                continue;
            }
            if start.elapsed() >= limit {
                return RelocationWait::Running(m);
            }
        } else {
            let skipped = skipped_before.is_some_and(|before| {
                skipped_notifications(plan, token).is_some_and(|now| now > before)
            });
            if skipped {
                return RelocationWait::NoService;
            }
            if start.elapsed() >= APPEAR_WITHIN.min(limit) {
                let why = if last_error.is_empty() {
                    format!(
                        "no SMO started a relocation for {ue} within {} s",
                        APPEAR_WITHIN.min(limit).as_secs()
                    )
                } else {
                    format!("no relocation seen ({last_error})")
                };
                return RelocationWait::NoneSeen(why);
            }
        }
        std::thread::sleep(POLL);
    }
}

/// Hands `ue` over to `to_site`, then — unless `wait` is `None` — waits up to `wait` for the
/// relocation the handover triggered to end and measures the UE-side downtime.
pub fn handover_and_follow(
    plan: &Plan,
    token: &str,
    ue: &str,
    to_site: &str,
    wait: Option<Duration>,
) -> Result<HandoverOutcome, CallError> {
    let clock = wait.and_then(|_| UeClock::of(plan, ue));
    let (skipped_before, active_before) = match (wait, clock) {
        (Some(_), Some(c)) => (
            skipped_notifications(plan, token),
            ue_gaps(plan, ue, c.now_ms() - ACTIVE_WINDOW_MS)
                .map(|g| active(&g, ACTIVE_PACKETS))
                .unwrap_or_default(),
        ),
        (Some(_), None) => (skipped_notifications(plan, token), Vec::new()),
        _ => (None, Vec::new()),
    };
    let started_unix_us = model::ran::unix_now_us();
    let handover_ue_ms = clock.map(|c| c.now_ms());
    let handover = crate::handover::handover(plan, token, ue, to_site)?;
    let mut outcome = HandoverOutcome {
        started_unix_us,
        relocation: None,
        relocation_note: None,
        ue_downtime: None,
        handover,
    };
    let Some(limit) = wait else {
        return Ok(outcome);
    };
    match wait_for_relocation(
        plan,
        token,
        outcome.handover.ue_ipv4,
        started_unix_us,
        skipped_before,
        limit,
    ) {
        RelocationWait::Ended(m) => outcome.relocation = Some(m),
        RelocationWait::Running(m) => {
            outcome.relocation_note = Some(format!(
                "still running after {} s (see `testbed relocations`)",
                limit.as_secs()
            ));
            outcome.relocation = Some(m);
        }
        RelocationWait::NoService => {
            outcome.relocation_note =
                Some("no service module serves this UE: nothing to relocate".into());
        }
        RelocationWait::NoneSeen(why) => outcome.relocation_note = Some(why),
    }
    if let (Some(c), Some(h)) = (clock, handover_ue_ms) {
        // Wait until every flow active before the handover delivered again after the relocation
        // ended (packets in segments that start after now), so its gap is closed and recorded.
        let ended = c.now_ms();
        let start = Instant::now();
        let mut silent = active_before.clone();
        while !silent.is_empty() && start.elapsed() < RESUME_WITHIN {
            if let Ok(g) = ue_gaps(plan, ue, ended + 100.0) {
                let now_active = active(&g, 1);
                silent.retain(|f| !now_active.contains(f));
            }
            if !silent.is_empty() {
                std::thread::sleep(POLL);
            }
        }
        if let Ok(g) = ue_gaps(plan, ue, h - CLOCK_SLACK_MS) {
            let mut d = largest_gap(&g, &active_before, h - CLOCK_SLACK_MS, h);
            let now = c.now_ms();
            d.silent_flows = silent
                .into_iter()
                .map(|flow| StoppedFlow {
                    silent_for_ms: g
                        .iter()
                        .find(|f| f.flow == flow)
                        .and_then(|f| f.last_arrival_ms)
                        .map(|last| (now - last).max(0.0)),
                    flow,
                })
                .collect();
            outcome.ue_downtime = Some(d);
        }
    }
    Ok(outcome)
}

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1e3)
}

/// The text `testbed handover` prints: the handover's timeline, then the relocation (phases on
/// both sides, total, the module's steps and bytes moved) and the UE-side downtime.
pub fn text(ue: &str, o: &HandoverOutcome) -> String {
    let r = &o.handover;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "handover of {} ({}, {}) from {} to {}: {} downlink packet(s) forwarded over Xn",
        ue, r.supi, r.ue_ipv4, r.source_gnb, r.target_gnb, r.forwarded_packets
    );
    let _ = writeln!(out, "  {:>9}  {:>9}  step", "at ms", "took ms");
    for s in &r.timeline {
        let _ = writeln!(
            out,
            "  {:>9.2}  {:>9.2}  {}",
            s.at_us as f64 / 1e3,
            s.took_us as f64 / 1e3,
            s.step
        );
    }
    if let Some(m) = &o.relocation {
        out.push_str("\nservice relocation triggered by the handover:\n");
        out.push_str(&relocations::table(std::slice::from_ref(m)));
        if let Some(t) = m.total_us() {
            let _ = writeln!(
                out,
                "  total migration (notification → COMPLETE): {} ms",
                ms(t)
            );
        }
        if let Some(x) = m.source.as_ref().and_then(|s| s.execute.as_ref()) {
            if !x.steps.is_empty() {
                let _ = writeln!(
                    out,
                    "  module steps:\n    {:>9}  {:>9}  step",
                    "at ms", "took ms"
                );
                for s in &x.steps {
                    let _ = writeln!(
                        out,
                        "    {:>9.2}  {:>9.2}  {}",
                        s.at_us as f64 / 1e3,
                        s.took_us as f64 / 1e3,
                        s.step
                    );
                }
            }
            let _ = writeln!(
                out,
                "  bytes moved: {}",
                x.bytes_moved
                    .map_or_else(|| "not reported".to_owned(), |b| b.to_string())
            );
        }
    }
    if let Some(note) = &o.relocation_note {
        let _ = writeln!(out, "\nservice relocation: {note}");
    }
    if let Some(d) = &o.ue_downtime {
        match &d.flow {
            Some(flow) => {
                let _ = writeln!(
                    out,
                    "\nUE-side downtime: largest downlink gap {:.1} ms ({flow}), ended {:.0} ms after the handover began",
                    d.largest_gap_ms,
                    d.gap_ended_after_handover_ms.unwrap_or(0.0)
                );
            }
            None if d.live_flows.is_empty() => {
                let _ = writeln!(
                    out,
                    "\nUE-side downtime: not measured: no flow was live before the handover (an idle flow's interval is not downtime; start one, e.g. a tbprobe stream)"
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "\nUE-side downtime: no gap on the {} live flow(s) since the handover began",
                    d.live_flows.len()
                );
            }
        }
        for f in &d.silent_flows {
            let _ = writeln!(
                out,
                "  FLOW STOPPED: {f}: live before the handover, nothing since the relocation ended"
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::ran::TimelineStep;
    use model::smo::{ExecuteReport, PhaseTiming, RelocationPhase, RelocationType, Service};

    fn flow(name: &str, packets: u64, gap: f64, end: Option<f64>) -> FlowGaps {
        FlowGaps {
            flow: name.into(),
            packets,
            largest_gap_ms: gap,
            gap_ended_at_ms: end,
            last_arrival_ms: end,
        }
    }

    #[test]
    fn the_downtime_is_the_largest_gap_that_ended_after_the_handover_began() {
        let flows = [
            flow("tcp a", 100, 900.0, Some(4_000.0)), // before the handover: ignored
            flow("tcp b", 100, 310.0, Some(10_450.0)),
            flow("udp c", 50, 120.0, Some(10_200.0)),
            flow("icmp d", 1, 0.0, None),
        ];
        let live: Vec<String> = ["tcp a", "tcp b", "udp c"].map(String::from).to_vec();
        let d = largest_gap(&flows, &live, 9_900.0, 10_000.0);
        assert_eq!(d.flow.as_deref(), Some("tcp b"));
        assert_eq!(d.largest_gap_ms, 310.0);
        assert_eq!(d.gap_ended_after_handover_ms, Some(450.0));
        assert_eq!(d.flows.len(), 4);
        let none = largest_gap(&flows[3..], &live, 0.0, 0.0);
        assert_eq!(none.flow, None);
        assert_eq!(none.largest_gap_ms, 0.0);
        // A flow that was not live before the handover (a ping every second) is not measured,
        // however large its gap.
        let idle = [flow("icmp idle", 3, 1001.9, Some(10_900.0))];
        let d = largest_gap(&idle, &[], 9_900.0, 10_000.0);
        assert_eq!((d.flow, d.largest_gap_ms), (None, 0.0));
        let d = largest_gap(
            &[idle[0].clone(), flows[2].clone()],
            &live,
            9_900.0,
            10_000.0,
        );
        assert_eq!(d.flow.as_deref(), Some("udp c"));
        assert_eq!(active(&flows, 1), ["tcp a", "tcp b", "udp c", "icmp d"]);
        assert_eq!(active(&flows, 5), ["tcp a", "tcp b", "udp c"]);
    }

    #[test]
    fn the_ue_clock_comes_from_the_process_start_time() {
        // A command name with spaces and a parenthesis must not shift the fields.
        let stat =
            "4242 (ue (x) 1) S 1 4242 4242 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 4 0 123456 0 0";
        let c = UeClock::from_stat(stat).expect("parses");
        assert_eq!(c.started_ms, 1_234_560.0);
        assert!(UeClock::from_stat("garbage").is_none());
        let mine = std::fs::read_to_string("/proc/self/stat").expect("own stat");
        let me = UeClock::from_stat(&mine).expect("own clock");
        let now = me.now_ms();
        assert!((0.0..24.0 * 3600e3).contains(&now), "{now}");
    }

    #[test]
    fn metrics_are_read_from_the_exposition_text() {
        let text = "# HELP smo_notifications_skipped_total x\n# TYPE smo_notifications_skipped_total counter\nsmo_notifications_skipped_total 3\nsmo_service_modules 1\n";
        assert_eq!(metric(text, "smo_notifications_skipped_total"), Some(3));
        assert_eq!(metric(text, "smo_service_modules"), Some(1));
        assert_eq!(metric(text, "smo_missing"), None);
    }

    fn record(id: &str, role: RelocationRole, ue: [u8; 4], started: u64) -> RelocationRecord {
        RelocationRecord {
            relocation_id: id.into(),
            role,
            state: RelocationState::Completed,
            phase: RelocationPhase::Complete,
            ue_ipv4_addr: ue.into(),
            source_dnai: "edge-x".into(),
            target_dnai: "edge-y".into(),
            peer: None,
            service: Service {
                service_id: "stream1".into(),
                ipv4_addr: Ipv4Addr::new(20, 0, 0, 100),
                mac_addr: "02:00:00:00:01:00".into(),
                ovs_port: "s-stream1".into(),
                relocation_type: RelocationType::Criu,
                resource_requirements: Default::default(),
                ue_ipv4_addrs: Vec::new(),
            },
            module_id: None,
            target_module_address: None,
            started_unix_us: started,
            phases: Vec::new(),
            peer_phases: Vec::new(),
            total_us: None,
            execute: None,
            cause: None,
            control: Default::default(),
            af_ack: None,
        }
    }

    #[test]
    fn the_relocation_followed_is_the_newest_source_record_of_the_ue_since_the_handover() {
        let ue = [192, 168, 1, 2];
        let records = [
            record("smo-x-1", RelocationRole::Source, ue, 100),
            record("smo-y-1", RelocationRole::Source, ue, 300),
            record("smo-x-1", RelocationRole::Target, ue, 350),
            record("smo-x-2", RelocationRole::Source, [192, 168, 1, 3], 400),
            record("smo-x-3", RelocationRole::Source, ue, 250),
        ];
        let ue = Ipv4Addr::from(ue);
        assert_eq!(
            newest_for(&records, ue, 200).map(|r| r.relocation_id.as_str()),
            Some("smo-y-1")
        );
        assert!(newest_for(&records, ue, 301).is_none());
    }

    #[test]
    fn the_text_shows_timeline_phases_total_module_steps_bytes_and_downtime() {
        let mut src = record("smo-x-1", RelocationRole::Source, [192, 168, 1, 2], 1);
        src.total_us = Some(1_234_560);
        src.phases = RelocationPhase::SUCCESS_PATH
            .iter()
            .map(|&phase| PhaseTiming {
                phase,
                start_us: 0,
                took_us: 1000,
                flow_install_us: None,
                flow_mods: 0,
            })
            .collect();
        let step = |name: &str, at_us, took_us| TimelineStep {
            step: name.into(),
            at_us,
            took_us,
            at_unix_us: None,
        };
        src.execute = Some(ExecuteReport {
            took_us: 800_000,
            bytes_moved: Some(654_321),
            steps: vec![
                step("dump", 1_000, 300_000),
                step("restore", 400_000, 200_000),
            ],
        });
        let tgt = record("smo-x-1", RelocationRole::Target, [192, 168, 1, 2], 2);
        let o = HandoverOutcome {
            handover: HandoverReport {
                supi: "imsi-001010000000001".into(),
                ue_ipv4: Ipv4Addr::new(192, 168, 1, 2),
                source_gnb: "gnb-a".into(),
                target_gnb: "gnb-b".into(),
                timeline: vec![step("handover request", 0, 2_000)],
                forwarded_packets: 7,
            },
            started_unix_us: 0,
            relocation: relocations::merge([src, tgt]).into_iter().next(),
            relocation_note: None,
            ue_downtime: Some(UeDowntime {
                flow: Some("tcp 20.0.0.100:5000 > 192.168.1.2:40000".into()),
                largest_gap_ms: 456.7,
                gap_ended_after_handover_ms: Some(1500.0),
                live_flows: vec!["tcp 20.0.0.100:5000 > 192.168.1.2:40000".into()],
                flows: Vec::new(),
                silent_flows: vec![StoppedFlow {
                    flow: "tcp 20.0.0.101:5000 > 192.168.1.2:40002".into(),
                    silent_for_ms: Some(5210.0),
                }],
            }),
        };
        let t = text("ue1", &o);
        for want in [
            "handover of ue1 (imsi-001010000000001, 192.168.1.2) from gnb-a to gnb-b: 7",
            "handover request",
            "smo-x-1",
            "COMPLETED",
            "EXECUTE",
            "total migration (notification → COMPLETE): 1234.56 ms",
            "module migration 800.00 ms, 654321 bytes moved",
            "dump",
            "restore",
            "bytes moved: 654321",
            "UE-side downtime: largest downlink gap 456.7 ms (tcp 20.0.0.100:5000 > 192.168.1.2:40000), ended 1500 ms after",
            "FLOW STOPPED: tcp 20.0.0.101:5000 > 192.168.1.2:40002 (silent for 5210 ms)",
        ] {
            assert!(t.contains(want), "`{want}` missing in:\n{t}");
        }
        let json = serde_json::to_value(&o).expect("json");
        assert_eq!(json["targetGnb"], "gnb-b");
        assert_eq!(
            json["relocation"]["source"]["execute"]["bytesMoved"],
            654321
        );
        assert_eq!(json["ueDowntime"]["largestGapMs"], 456.7);
        assert!(json.get("relocationNote").is_none());
    }
}

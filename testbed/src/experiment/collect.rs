//! After a run's schedule: every handover joined (and followed up where it found no
//! relocation), every flow finished, the captures read, and the run's result assembled — the
//! handover timelines, the relocations with both SMOs' records, the UE-side downtime two ways,
//! each flow's report — with the run's verdict: ok only when every flow, handover and relocation
//! did what it should.

use emu_ran::ue::gaps::FlowGaps;
use model::smo::RelocationState;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use super::capture;
use super::flows::{finish_flow, Played};
use super::{Runner, CLOCK_SLACK_MS};
use crate::migration::{self, HandoverOutcome};
use crate::pcap::{self, CaptureFlowGap};
use crate::relocations::MergedRelocation;
use crate::results::{HandoverResult, KillResult, RelocationResult, RunResult};

/// A handover that ended: what it did, and when the thread returned (µs since the epoch).
#[derive(Debug)]
pub(super) struct HandoverDone {
    pub(super) member: String,
    pub(super) to: String,
    pub(super) seq: usize,
    pub(super) outcome: Result<HandoverOutcome, String>,
    pub(super) returned_unix_us: u64,
}

impl Runner<'_> {
    /// Waits for the run's handovers and flows to end and assembles `r` (`errors`: what already
    /// went wrong before the schedule; `ue_ip`: each member's address at the run's start).
    pub(super) fn collect(
        &self,
        mut r: RunResult,
        mut errors: Vec<String>,
        ue_ip: &BTreeMap<String, Ipv4Addr>,
        played: Played<'_>,
    ) -> RunResult {
        let Played {
            captures,
            running,
            mut jobs,
            kills,
            mut flow_results,
        } = played;
        // Every kill happened (or said why not).
        for (process, k) in kills {
            let k = k.join().unwrap_or_else(|_| KillResult {
                error: Some("the kill thread panicked".into()),
                ..super::kill::planned(&process)
            });
            if let Some(e) = &k.error {
                errors.push(format!("kill of {}: {e}", k.process));
            }
            r.kills.push(k);
        }
        // Every handover (and the relocation it waits for) ends.
        let mut done: Vec<HandoverDone> = Vec::new();
        jobs.sort_by_key(|j| j.seq);
        for j in jobs {
            let (outcome, returned_unix_us) = j.thread.join().unwrap_or_else(|_| {
                (
                    Err("the handover thread panicked".into()),
                    model::ran::unix_now_us(),
                )
            });
            let outcome = outcome.map(|mut o| {
                if self.served(&j.member) {
                    self.follow_up(&mut o);
                }
                o
            });
            done.push(HandoverDone {
                member: j.member,
                to: j.to,
                seq: j.seq,
                outcome,
                returned_unix_us,
            });
        }
        // Every flow ends (or is ended).
        for mut f in running {
            flow_results.push(finish_flow(&mut f));
        }
        // The gap recorder's view until now, per UE, for the last handover of each.
        let query_unix_us = model::ran::unix_now_us();
        let mut final_gaps: BTreeMap<String, (Vec<FlowGaps>, f64)> = BTreeMap::new();
        for j in &done {
            let Ok(o) = &j.outcome else { continue };
            let ue = self.tb_ue(&j.member);
            let Some(clock) = migration::UeClock::of(&self.plan, &ue) else {
                continue;
            };
            let now_ue = clock.now_ms();
            let h =
                now_ue - (model::ran::unix_now_us().saturating_sub(o.started_unix_us)) as f64 / 1e3;
            let since = h - CLOCK_SLACK_MS;
            if let Ok(g) = migration::ue_gaps(&self.plan, &ue, since) {
                // Later handovers of the same UE replace earlier ones (done is in order).
                final_gaps.insert(j.member.clone(), (g, since));
            }
        }
        let pcaps = capture::finish(captures, self.keep_pcap, &mut r);
        let parsed = capture::parse(&pcaps, &mut r.notes);
        // Assemble each handover and relocation.
        let last_of: BTreeMap<&String, usize> = done.iter().map(|j| (&j.member, j.seq)).collect();
        let mut seen: BTreeSet<String> = BTreeSet::new();
        for j in &done {
            let what = format!("{} → {}", j.member, j.to);
            let o = match &j.outcome {
                Ok(o) => o,
                Err(e) => {
                    errors.push(format!("handover {what}: {e}"));
                    r.handovers.push(HandoverResult {
                        ue: j.member.clone(),
                        to: j.to.clone(),
                        timeline: Vec::new(),
                        started_unix_us: None,
                        error: Some(e.clone()),
                        relocation_id: None,
                        relocation_note: None,
                        downtime_ms: None,
                        downtime_capture_ms: None,
                    });
                    continue;
                }
            };
            let is_last = last_of.get(&j.member) == Some(&j.seq);
            // The gap recorder's flows and window for this handover.
            let (rec_flows, since, end_unix_us) = match (is_last, final_gaps.get(&j.member)) {
                (true, Some((g, since))) => (g.clone(), *since, query_unix_us),
                _ => {
                    let flows = o
                        .ue_downtime
                        .as_ref()
                        .map(|d| d.flows.clone())
                        .unwrap_or_default();
                    (flows, f64::MIN, j.returned_unix_us)
                }
            };
            let cap_flows: Option<Vec<CaptureFlowGap>> = match (
                parsed.get(&j.member),
                ue_ip.get(&j.member).copied().or(Some(o.handover.ue_ipv4)),
            ) {
                (Some(p), Some(ip)) => Some(pcap::downlink_gaps(
                    p,
                    ip,
                    o.started_unix_us.saturating_mul(1000),
                    end_unix_us.saturating_mul(1000),
                )),
                _ => None,
            };
            // Only flows live before the handover measure downtime (an idle interval does not).
            let rec_flows: Vec<FlowGaps> = match &o.ue_downtime {
                Some(d) => rec_flows
                    .into_iter()
                    .filter(|f| d.live_flows.contains(&f.flow))
                    .collect(),
                None => rec_flows,
            };
            let cap_flows: Option<Vec<CaptureFlowGap>> = match (&o.ue_downtime, cap_flows) {
                (Some(d), Some(c)) => Some(
                    c.into_iter()
                        .filter(|f| d.live_flows.contains(&f.flow))
                        .collect(),
                ),
                (_, c) => c,
            };
            let rec_largest = |src| recorder_downtime(&rec_flows, src, since);
            let cap_largest = |src| cap_flows.as_deref().and_then(|c| capture_downtime(c, src));
            // A flow that was live before the handover and delivered nothing after the
            // relocation ended has stopped: the run failed, whatever its tools say.
            if let Some(d) = &o.ue_downtime {
                if !d.silent_flows.is_empty() {
                    errors.push(format!(
                        "handover {what}: flows live before it stopped: {}",
                        d.silent_flows
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
            }
            r.handovers.push(HandoverResult {
                ue: j.member.clone(),
                to: j.to.clone(),
                timeline: o.handover.timeline.clone(),
                started_unix_us: Some(o.started_unix_us),
                error: None,
                relocation_id: o.relocation.as_ref().map(|m| m.relocation_id.clone()),
                relocation_note: o.relocation_note.clone(),
                downtime_ms: rec_largest(None),
                downtime_capture_ms: cap_largest(None),
            });
            if let Some(p) = relocation_problem(o) {
                if self.served(&j.member) {
                    errors.push(format!("handover {what}: {p}"));
                }
            }
            let Some(m) = &o.relocation else { continue };
            if !seen.insert(m.relocation_id.clone()) {
                continue;
            }
            let (service_id, svc_ip) = m
                .main()
                .map(|rec| (rec.service.service_id.clone(), rec.service.ipv4_addr))
                .unwrap_or((String::new(), Ipv4Addr::UNSPECIFIED));
            r.relocations.push(RelocationResult::new(
                &j.member,
                &service_id,
                m.source.clone(),
                m.target.clone(),
                rec_largest(Some(svc_ip)),
                cap_largest(Some(svc_ip)),
            ));
        }
        for f in &flow_results {
            if !f.ok {
                errors.push(format!(
                    "{} flow of {} to {}: {}",
                    f.kind,
                    f.ue,
                    f.target,
                    f.error.as_deref().unwrap_or("failed")
                ));
            }
        }
        r.flows = flow_results;
        r.ok = errors.is_empty();
        r.error = (!errors.is_empty()).then(|| errors.join("; "));
        r.finished_unix_us = Some(model::ran::unix_now_us());
        r
    }
}

/// Why a handover's relocation does not count as done (`None`: it completed).
pub(super) fn relocation_problem(o: &HandoverOutcome) -> Option<String> {
    match o.relocation.as_ref() {
        None => Some(
            o.relocation_note
                .clone()
                .unwrap_or_else(|| "no relocation".into()),
        ),
        Some(m) => relocation_state_problem(m, o.relocation_note.as_deref()),
    }
}

fn relocation_state_problem(m: &MergedRelocation, note: Option<&str>) -> Option<String> {
    let Some(src) = &m.source else {
        return Some(format!("relocation {}: no source record", m.relocation_id));
    };
    match src.state {
        RelocationState::Completed => None,
        RelocationState::Failed => Some(format!(
            "relocation {} FAILED in {}: {}",
            m.relocation_id,
            src.phase,
            src.cause.as_deref().unwrap_or("no cause given")
        )),
        RelocationState::Running => Some(format!(
            "relocation {} still running in {}{}",
            m.relocation_id,
            src.phase,
            note.map(|n| format!(" ({n})")).unwrap_or_default()
        )),
    }
}

/// The UE gap recorder's downtime: the largest gap among `flows` from `src` (any sender when
/// `None`) that ended at or after `since_ms` (UE clock); `None` when no such flow had a gap.
pub fn recorder_downtime(flows: &[FlowGaps], src: Option<Ipv4Addr>, since_ms: f64) -> Option<f64> {
    let chosen: Vec<FlowGaps> = flows
        .iter()
        .filter(|f| src.is_none_or(|s| flow_src(&f.flow) == Some(s)))
        .cloned()
        .collect();
    let names: Vec<String> = chosen.iter().map(|f| f.flow.clone()).collect();
    let d = migration::largest_gap(&chosen, &names, since_ms, since_ms);
    d.flow.map(|_| d.largest_gap_ms)
}

/// The capture's downtime: the largest gap among the capture's flows from `src` (any sender
/// when `None`); `None` when no such flow had a gap in the window.
pub fn capture_downtime(flows: &[CaptureFlowGap], src: Option<Ipv4Addr>) -> Option<f64> {
    flows
        .iter()
        .filter(|f| src.is_none_or(|s| f.src == s) && f.gap_ended_unix_ns.is_some())
        .map(|f| f.largest_gap_ms)
        .max_by(f64::total_cmp)
}

/// The sender of a flow as the gap recorder names it (`tcp 20.0.0.100:5000 > …`).
pub(super) fn flow_src(flow: &str) -> Option<Ipv4Addr> {
    let src = flow.split_whitespace().nth(1)?;
    src.split(':').next()?.parse().ok()
}

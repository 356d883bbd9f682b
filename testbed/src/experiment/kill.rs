//! Scripted kills: a `[[timeline]]` `kill` (and each kill of a chaos run) does what `testbed
//! kill` does — SIGKILL to the network function by its recorded PID, after checking it is still
//! the one the testbed started ([`crate::supervise::kill`]); the supervisor starts it again.
//!
//! A kill with a `phase` first waits (from its `at_s`) until a relocation's source record, at
//! any SMO and begun during the run, is in that phase ([`in_phase`]; every SMO's records read at
//! once every [`PHASE_POLL`] over kept connections), then `after_ms`, then kills. Short phases (INITIATE, VALIDATE, PREPARE last
//! a few ms) may pass between two polls; the result says how far into the phase the kill landed
//! by the SMO's own stopwatch ([`KillResult::into_phase_ms`]).

use model::smo::{RelocationPhase, RelocationRecord, RelocationRole, RelocationState};
use std::time::{Duration, Instant};

use super::{sleep_until, stopped};
use crate::plan::Plan;
use crate::results::KillResult;
use crate::scenario::Kill;

/// How often the SMOs' records are read while a kill waits for a phase.
pub const PHASE_POLL: Duration = Duration::from_millis(10);

/// A relocation seen in the phase a kill waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhaseSeen {
    pub relocation_id: String,
    /// When the phase began by the SMO's stopwatch (µs since the epoch), if it says.
    pub phase_started_unix_us: Option<u64>,
}

/// The oldest running source record, begun at or after `since_unix_us`, whose current phase is
/// `phase`.
pub fn in_phase(
    records: &[RelocationRecord],
    phase: RelocationPhase,
    since_unix_us: u64,
) -> Option<PhaseSeen> {
    records
        .iter()
        .filter(|r| {
            r.role == RelocationRole::Source
                && r.state == RelocationState::Running
                && r.phase == phase
                && r.started_unix_us >= since_unix_us
        })
        .min_by_key(|r| r.started_unix_us)
        .map(|r| PhaseSeen {
            relocation_id: r.relocation_id.clone(),
            // The stopwatch lists a phase once it ended; the running one began when the last
            // listed one ended.
            phase_started_unix_us: r
                .phases
                .iter()
                .find(|p| p.phase == phase)
                .map(|p| p.start_us)
                .or_else(|| r.phases.iter().map(|p| p.start_us + p.took_us).max())
                .map(|us| r.started_unix_us + us),
        })
}

/// Reads every SMO's relocation records every [`PHASE_POLL`] (from a thread in the first edge
/// cloud's namespace, one SBI client, all SMOs at once) until [`in_phase`] finds one, or
/// `deadline`.
fn wait_for_phase(
    plan: &Plan,
    token: &str,
    phase: RelocationPhase,
    since_unix_us: u64,
    deadline: Instant,
) -> Result<PhaseSeen, String> {
    let urls: Vec<String> = plan
        .switches
        .iter()
        .map(|sw| {
            format!(
                "{}{}",
                crate::nf::smo_api_root(plan, &sw.node),
                crate::relocations::RELOCATIONS_PATH
            )
        })
        .collect();
    let netns = plan
        .switches
        .first()
        .map(|sw| sw.netns.clone())
        .unwrap_or_default();
    let token = token.to_owned();
    let not_seen =
        move || format!("no relocation begun during the run was in {phase} before the run ended");
    netkit::Netns::new(netns)
        .run_in(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            let client = sbi::Client::new(Some(token), Duration::from_secs(1));
            rt.block_on(async {
                loop {
                    let mut calls = tokio::task::JoinSet::new();
                    for url in &urls {
                        let (c, url) = (client.clone(), url.clone());
                        calls.spawn(async move { c.get::<Vec<RelocationRecord>>(&url).await });
                    }
                    let mut records = Vec::new();
                    while let Some(r) = calls.join_next().await {
                        if let Ok(Ok(r)) = r {
                            records.extend(r);
                        }
                    }
                    if let Some(s) = in_phase(&records, phase, since_unix_us) {
                        return Ok(s);
                    }
                    if stopped() || Instant::now() >= deadline {
                        return Err(not_seen());
                    }
                    tokio::time::sleep(PHASE_POLL).await;
                }
            })
        })
        .map_err(|e| e.to_string())?
}

/// A kill of `process` with nothing done yet.
pub(super) fn planned(process: &str) -> KillResult {
    KillResult {
        process: process.to_owned(),
        node: None,
        at_s: None,
        phase: None,
        after_ms: None,
        relocation_id: None,
        phase_seen_unix_us: None,
        phase_started_unix_us: None,
        killed_unix_us: None,
        pid: None,
        error: None,
    }
}

/// Kills `process` of testbed `name` now.
pub fn kill_now(name: &str, process: &str) -> KillResult {
    let mut r = planned(process);
    fire(name, &mut r);
    r
}

fn fire(name: &str, r: &mut KillResult) {
    let at = model::ran::unix_now_us();
    match crate::supervise::kill(name, None, &r.process) {
        Ok(p) => {
            r.killed_unix_us = Some(at);
            r.pid = Some(p.process.pid);
            r.node = Some(p.node);
        }
        Err(e) => r.error = Some(e),
    }
}

/// A `[[timeline]]` kill, called at its `at_s`: waits for its phase (relocations begun at or
/// after `since_unix_us`, until `deadline`) and `after_ms` if it has one, then kills.
pub fn scripted(
    plan: &Plan,
    token: &str,
    kill: &Kill<'_>,
    at_s: f64,
    since_unix_us: u64,
    deadline: Instant,
) -> KillResult {
    let mut r = planned(kill.process);
    r.at_s = Some(at_s);
    if let Some(phase) = kill.phase {
        r.phase = Some(phase);
        r.after_ms = Some(kill.after_ms);
        let seen = match wait_for_phase(plan, token, phase, since_unix_us, deadline) {
            Ok(s) => s,
            Err(e) => {
                r.error = Some(e);
                return r;
            }
        };
        let seen_at = Instant::now();
        r.phase_seen_unix_us = Some(model::ran::unix_now_us());
        r.relocation_id = Some(seen.relocation_id);
        r.phase_started_unix_us = seen.phase_started_unix_us;
        if !sleep_until(seen_at + Duration::from_millis(kill.after_ms)) {
            r.error = Some("interrupted".into());
            return r;
        }
    }
    fire(&plan.name, &mut r);
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::tests::record;

    #[test]
    fn the_phase_is_the_current_one_of_a_running_source_record_of_this_run() {
        let mut execute = record(RelocationRole::Source, [10, 20, 30, 400, 50], None, None);
        execute.relocation_id = "smo-x-2".into();
        execute.state = RelocationState::Running;
        execute.phase = RelocationPhase::Execute;
        let since = execute.started_unix_us;
        let mut target = execute.clone();
        target.role = RelocationRole::Target;
        let mut done = execute.clone();
        done.relocation_id = "smo-x-1".into();
        done.state = RelocationState::Completed;
        let mut older = execute.clone();
        older.relocation_id = "smo-y-9".into();
        older.started_unix_us = since - 1;
        let records = [target.clone(), done, older, execute.clone()];
        let seen = in_phase(&records, RelocationPhase::Execute, since).expect("in EXECUTE");
        assert_eq!(seen.relocation_id, "smo-x-2");
        // EXECUTE began after INITIATE + VALIDATE + PREPARE (10 + 20 + 30 µs).
        assert_eq!(seen.phase_started_unix_us, Some(since + 60));
        assert_eq!(in_phase(&records, RelocationPhase::Prepare, since), None);
        assert_eq!(in_phase(&[target], RelocationPhase::Execute, since), None);
        // While EXECUTE runs the stopwatch lists only the phases before it: it began when
        // PREPARE ended.
        execute.phases.truncate(3);
        let seen = in_phase(
            std::slice::from_ref(&execute),
            RelocationPhase::Execute,
            since,
        )
        .expect("seen");
        assert_eq!(seen.phase_started_unix_us, Some(since + 60));
        // Without any stopwatch entry the start is unknown.
        execute.phases.clear();
        let seen = in_phase(&[execute], RelocationPhase::Execute, since).expect("seen");
        assert_eq!(seen.phase_started_unix_us, None);
    }

    #[test]
    fn a_kill_says_how_far_into_the_phase_it_landed() {
        let mut k = planned("smo-y");
        assert_eq!(k.into_phase_ms(), None);
        k.phase_started_unix_us = Some(1_000_000);
        k.killed_unix_us = Some(1_041_500);
        assert_eq!(k.into_phase_ms(), Some(41.5));
        let refused = kill_now("no-such-testbed-here", "smo-y");
        assert!(
            refused
                .error
                .as_deref()
                .is_some_and(|e| e.contains("no-such-testbed-here")),
            "{refused:?}"
        );
        assert_eq!((refused.pid, refused.killed_unix_us), (None, None));
    }
}

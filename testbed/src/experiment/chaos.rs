//! A chaos run ([`crate::chaos`]): the observer starts; the run waits (up to
//! [`READY_WITHIN`]) until a sample is converged; then it plays the run's schedule — each event
//! at its time after that start, one after another (an action that takes longer delays the
//! next, and the result says when each ran) — observes `observe_s` after the last, stops the
//! observer, keeps the samples in `runs/NNN-samples.json`, and judges them. A handover to the
//! site the UE is already at (an earlier one failed) is skipped and says so. The run is ok when
//! the verdict has no violation and the observer ran.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::flows::service_port;
use super::{sleep_until, stopped, Runner, READY_WITHIN};
use crate::chaos::observe::{Observer, ObserverConfig};
use crate::chaos::{assess_latest, judge, ChaosAction, Expect};
use crate::plan::Role;
use crate::relocations::MergedRelocation;
use crate::results::{ChaosEventResult, ChaosRun, RelocationResult, RunResult};
use crate::scenario::ChaosSpec;

/// The longest a chaos run's stream check may run (the observer stops it at the run's end).
const STREAM_LONGEST: Duration = Duration::from_secs(24 * 3600);

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl Runner<'_> {
    /// The edge cloud next to each site: `site-a` → `edge-x`.
    fn edge_of_site(&self) -> BTreeMap<String, String> {
        self.plan
            .switches
            .iter()
            .filter_map(|sw| {
                let site = self.plan.node(&sw.node)?.site.clone()?;
                Some((format!("site-{site}"), sw.node.clone()))
            })
            .collect()
    }

    /// One chaos run; `None` when interrupted (nothing is recorded then).
    pub(super) fn run_chaos(&self, run: u32, spec: &ChaosSpec) -> Option<RunResult> {
        let mut r = RunResult::failed(run, model::ran::unix_now_us(), String::new());
        r.finished_unix_us = None;
        let member = self.sc.chaos_ue().unwrap_or_default();
        let ue = self.tb_ue(&member);
        let Some(svc) = self
            .sc
            .services_serving(&member)
            .first()
            .and_then(|s| self.plan.service(&s.id))
            .cloned()
        else {
            r.error = Some(format!("no planned service serves {member}"));
            r.finished_unix_us = Some(model::ran::unix_now_us());
            return Some(r);
        };
        let seed = spec.run_seed(run);
        let sites: Vec<String> = self
            .plan
            .nodes
            .iter()
            .filter(|n| n.role == Role::Site)
            .map(|n| n.name.clone())
            .collect();
        let schedule = crate::chaos::schedule(spec, seed, &sites, &self.first_site);
        let clock = Instant::now();
        let clock_unix_us = model::ran::unix_now_us();
        let sample = Duration::from_millis(spec.sample_ms);
        let obs = Observer::start(ObserverConfig {
            plan: self.plan.clone(),
            token: self.token.clone(),
            ue: ue.clone(),
            stream: SocketAddr::from((svc.ipv4_addr, service_port(svc.kind))),
            sample,
            since_unix_us: clock_unix_us,
            clock,
            longest: STREAM_LONGEST,
        });
        let expect = Expect {
            service_id: svc.service_id.clone(),
            service_ip: svc.ipv4_addr,
            edge_of_site: self.edge_of_site(),
            bound_ms: spec.bound_ms(),
            delivering_within_ms: Expect::delivering_within(ms(sample)),
        };
        let mut chaos = ChaosRun {
            seed,
            ue: member.clone(),
            service_id: svc.service_id.clone(),
            bound_ms: spec.bound_ms(),
            sample_ms: spec.sample_ms,
            clock_unix_us,
            start_ms: 0.0,
            events: Vec::new(),
            verdict: judge(&expect, &[], &[], 0.0, 0),
            stream: None,
            stream_error: None,
            samples_file: None,
        };
        // A converged start.
        let waiting = Instant::now();
        let mut not_yet = loop {
            if stopped() {
                drop(obs.stop());
                return None;
            }
            match assess_latest(&expect, &obs.samples()) {
                Some(a) if a.converged() => break None,
                a if waiting.elapsed() >= READY_WITHIN => {
                    break Some(
                        a.map_or_else(|| "no sample".to_owned(), |a| a.unconverged.join("; ")),
                    )
                }
                _ => std::thread::sleep(sample / 2),
            }
        };
        chaos.start_ms = ms(clock.elapsed());
        if not_yet.is_none() {
            for ev in &schedule {
                let due_ms = chaos.start_ms + ev.at_ms as f64;
                if !sleep_until(clock + Duration::from_secs_f64(due_ms / 1e3)) {
                    drop(obs.stop());
                    return None;
                }
                let started_ms = ms(clock.elapsed());
                let (kill, error) = match &ev.action {
                    ChaosAction::Handover { to } => (None, self.chaos_handover(&member, to).err()),
                    ChaosAction::Kill { process } => {
                        let k = super::kill::kill_now(&self.plan.name, process);
                        let e = k.error.clone();
                        (Some(k), e)
                    }
                };
                chaos.events.push(ChaosEventResult {
                    seq: ev.seq,
                    action: ev.action.clone(),
                    due_ms,
                    started_ms,
                    done_ms: ms(clock.elapsed()),
                    kill,
                    error,
                });
            }
            let last = chaos.events.last().map_or(chaos.start_ms, |e| e.done_ms);
            let end =
                clock + Duration::from_secs_f64(last / 1e3 + self.sc.scenario.observe_s.max(0.0));
            if !sleep_until(end) {
                drop(obs.stop());
                return None;
            }
        }
        let (samples, stream, sampler_error) = obs.stop();
        let corrupt = stream.as_ref().map_or(0, |s| s.corrupt_records);
        let times: Vec<_> = chaos.events.iter().map(ChaosEventResult::times).collect();
        chaos.verdict = judge(&expect, &times, &samples, chaos.start_ms, corrupt);
        match stream {
            Ok(s) => chaos.stream = Some(s),
            Err(e) => chaos.stream_error = Some(e),
        }
        let name = format!("{run:03}-samples.json");
        let written = serde_json::to_vec(&samples)
            .map_err(|e| e.to_string())
            .and_then(|b| {
                std::fs::write(self.dir.join("runs").join(&name), b).map_err(|e| e.to_string())
            });
        match written {
            Ok(()) => chaos.samples_file = Some(name),
            Err(e) => r.notes.push(format!("the samples could not be kept: {e}")),
        }
        r.relocations = self.relocations_since(clock_unix_us, &member);
        let failed: Vec<String> = chaos
            .events
            .iter()
            .filter_map(|e| {
                e.error
                    .as_ref()
                    .map(|x| format!("event {} ({}): {x}", e.seq, e.action))
            })
            .collect();
        if !failed.is_empty() {
            r.notes.push(format!(
                "{} of {} events did not do what they should: {}",
                failed.len(),
                chaos.events.len(),
                failed.join("; ")
            ));
        }
        let mut errors = Vec::new();
        if let Some(why) = not_yet.take() {
            errors.push(format!(
                "not converged within {} s before the first event: {why}",
                READY_WITHIN.as_secs()
            ));
        }
        if let Some(e) = sampler_error {
            errors.push(format!("the observer's sampler: {e}"));
        }
        if let Some(e) = &chaos.stream_error {
            errors.push(e.clone());
        }
        let by_kind = chaos.verdict.by_kind();
        if !by_kind.is_empty() {
            errors.push(format!(
                "{} violation(s): {}",
                chaos.verdict.violations.len(),
                by_kind
                    .iter()
                    .map(|(k, n)| format!("{n} {k}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        r.ok = errors.is_empty();
        r.error = (!errors.is_empty()).then(|| errors.join("; "));
        r.chaos = Some(chaos);
        r.finished_unix_us = Some(model::ran::unix_now_us());
        Some(r)
    }

    /// Hands the chaos UE over to `to`, unless it is there already (an earlier handover did not
    /// complete: then the event is skipped).
    fn chaos_handover(&self, member: &str, to: &str) -> Result<(), String> {
        let ue = self.tb_ue(member);
        if self.serving_site(member).is_ok_and(|at| at == to) {
            return Err(format!(
                "skipped: {ue} is at {to} already (an earlier handover did not complete)"
            ));
        }
        crate::handover::handover(&self.plan, &self.token, &ue, to)
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// The relocations every SMO records as begun at or after `since_unix_us` (both records of
    /// each), for the usual per-phase tables.
    fn relocations_since(&self, since_unix_us: u64, member: &str) -> Vec<RelocationResult> {
        let records = crate::relocations::collect(&self.plan, &self.token)
            .into_iter()
            .filter_map(|a| a.records.ok())
            .flatten()
            .filter(|r| r.started_unix_us >= since_unix_us);
        crate::relocations::merge(records)
            .into_iter()
            .map(|m: MergedRelocation| {
                let service = m
                    .main()
                    .map(|r| r.service.service_id.clone())
                    .unwrap_or_default();
                RelocationResult::new(member, &service, m.source, m.target, None, None)
            })
            .collect()
    }
}

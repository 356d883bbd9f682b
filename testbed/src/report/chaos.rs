//! The report's chaos part (experiments of a `[chaos]` scenario): per run the events, how they
//! converged, the violations by kind and each one, the final state and the stream's verdict;
//! over all runs the time to converge, p50 / p99.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::{percentile, Experiment};
use crate::chaos::{ChaosAction, Convergence, ViolationKind};
use crate::results::ChaosRun;

/// Violations listed one by one (per run); the rest are counted.
const LISTED: usize = 40;

fn chaos_runs(e: &Experiment) -> Vec<(u32, &ChaosRun)> {
    e.runs
        .iter()
        .filter_map(|r| r.chaos.as_ref().map(|c| (r.run, c)))
        .collect()
}

/// p50 and p99 of `v` (ms, unsorted), as printed.
fn p50_p99(v: &[f64]) -> (String, String) {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let p = |q| {
        let x = percentile(&v, q);
        if x.is_nan() {
            "–".to_owned()
        } else {
            format!("{x:.0}")
        }
    };
    (p(0.5), p(0.99))
}

/// The stream's verdict in words.
fn stream_verdict(c: &ChaosRun) -> String {
    match (&c.stream, &c.stream_error) {
        (Some(s), _) if s.corrupt_records > 0 => {
            format!("**{} corrupt record(s)**", s.corrupt_records)
        }
        (Some(s), _) if s.reconnects == 0 && s.disconnected.is_none() => {
            "byte-exact, one connection".to_owned()
        }
        (Some(s), _) => format!(
            "byte-exact per connection, {} reconnect(s){}",
            s.reconnects,
            s.disconnected
                .as_deref()
                .map_or_else(String::new, |d| format!(", disconnected at the end: {d}"))
        ),
        (None, Some(e)) => format!("**no stream**: {e}"),
        (None, None) => "not recorded".to_owned(),
    }
}

/// The chaos headline: events, violations by kind, convergence p50 / p99 over every run (empty
/// without chaos runs).
pub fn chaos_headline(e: &Experiment) -> String {
    let runs = chaos_runs(e);
    if runs.is_empty() {
        return String::new();
    }
    let events: usize = runs.iter().map(|(_, c)| c.events.len()).sum();
    let mut kinds: BTreeMap<ViolationKind, usize> = BTreeMap::new();
    let mut times = Vec::new();
    let (mut conv, mut sup, mut not) = (0, 0, 0);
    for (_, c) in &runs {
        for (k, n) in c.verdict.by_kind() {
            *kinds.entry(k).or_default() += n;
        }
        times.extend(c.verdict.convergence_ms());
        let (a, b, d) = c.verdict.counts();
        (conv, sup, not) = (conv + a, sup + b, not + d);
    }
    let violations: usize = kinds.values().sum();
    let (p50, p99) = p50_p99(&times);
    let mut out = String::from("## Chaos: invariants and time to converge\n\n");
    let _ = writeln!(
        out,
        "{} run(s), {events} events: {conv} converged, {sup} superseded by the next event, {not} not converged within the bound.\n",
        runs.len()
    );
    out.push_str("| Violations (goal 0) | Time to converge p50 (ms) | p99 (ms) | Converged events |\n|---:|---:|---:|---:|\n");
    let _ = writeln!(out, "| {violations} | {p50} | {p99} | {} |\n", times.len());
    if !kinds.is_empty() {
        out.push_str("| Violation | Count |\n|---|---:|\n");
        for (k, n) in &kinds {
            let _ = writeln!(out, "| {k} | {n} |");
        }
        out.push('\n');
    }
    out
}

/// The chaos section of `report.md` (empty without chaos runs).
pub fn chaos_section(e: &Experiment) -> String {
    let runs = chaos_runs(e);
    if runs.is_empty() {
        return String::new();
    }
    let mut out = String::from("## Chaos runs\n\n");
    out.push_str(
        "Each run played a seeded random schedule (`[chaos]`) of handovers of the UE and kills of \
         network functions while an observer sampled the truth: every edge's modules' \
         GetServices, the site serving the UE, the records the UE's reconnecting stream \
         delivered, the relocations each SMO records as RUNNING, the relocation and service \
         flows on each switch, the network functions down. **Converged**: one running copy, at \
         the edge of the UE's site, the stream delivering, no relocation running, no relocation \
         flow on any switch and no service flow where the service does not run, every network \
         function up. **Time to converge**: from the event's action to the first converged \
         sample after it; *superseded* when the next event came first, a `not-converged` \
         violation when the bound passed. *Largest stream gap* and *longest misplaced* (the \
         longest stretch with the service not alone at the UE's edge) show what the bound \
         allowed. **Safety**: never two running copies \
         (`two-copies`), never a stream silence longer than the bound (`stream-gap`, to within a \
         sample period), never a corrupt record (`stream-corrupt`); a reconnect is counted, not \
         a violation.\n\n",
    );
    out.push_str("| Run | Seed | Events | Handovers | Kills | Actions failed | Converged | Superseded | Not converged | p50 (ms) | p99 (ms) | Largest stream gap (ms) | Longest misplaced (ms) | Violations | At the end | Stream |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|\n");
    for (run, c) in &runs {
        let handovers = c
            .events
            .iter()
            .filter(|x| matches!(x.action, ChaosAction::Handover { .. }))
            .count();
        let failed = c.events.iter().filter(|x| x.error.is_some()).count();
        let (conv, sup, not) = c.verdict.counts();
        let (p50, p99) = p50_p99(&c.verdict.convergence_ms());
        let f = &c.verdict.final_state;
        let end = if f.converged {
            format!(
                "converged ({} at {})",
                f.copies.join(", "),
                f.ue_site.as_deref().unwrap_or("?")
            )
        } else {
            format!("**NOT converged**: {}", f.why_not.join("; "))
        };
        let _ = writeln!(
            out,
            "| {run} | {} | {} | {handovers} | {} | {failed} | {conv} | {sup} | {not} | {p50} | {p99} | {:.0} | {:.0} | {} | {end} | {} |",
            c.seed,
            c.events.len(),
            c.events.len() - handovers,
            c.verdict.largest_stream_gap_ms,
            c.verdict.longest_misplaced_ms,
            c.verdict.violations.len(),
            stream_verdict(c)
        );
    }
    out.push('\n');
    for (run, c) in &runs {
        let s = |ms: f64| format!("{:.1}", (ms - c.start_ms) / 1e3);
        if !c.verdict.violations.is_empty() {
            let _ = writeln!(
                out,
                "### Run {run}: violations (times in s after the schedule began)\n"
            );
            out.push_str(
                "| Kind | From (s) | To (s) | After event | What |\n|---|---:|---:|---:|---|\n",
            );
            for v in c.verdict.violations.iter().take(LISTED) {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} |",
                    v.kind,
                    s(v.from_ms),
                    v.to_ms.map_or_else(|| "end".to_owned(), s),
                    v.event.map_or_else(|| "–".to_owned(), |x| x.to_string()),
                    v.detail.replace('|', "/")
                );
            }
            if c.verdict.violations.len() > LISTED {
                let _ = writeln!(
                    out,
                    "\n… and {} more (all in `raw.json`).",
                    c.verdict.violations.len() - LISTED
                );
            }
            out.push('\n');
        }
        let _ = writeln!(
            out,
            "<details><summary>Run {run}: the {} events (samples: {})</summary>\n",
            c.events.len(),
            c.samples_file.as_deref().unwrap_or("not kept")
        );
        out.push_str("| # | Due (s) | Ran (s) | Took (ms) | Action | Result | Convergence |\n|---:|---:|---:|---:|---|---|---|\n");
        for (x, v) in c.events.iter().zip(&c.verdict.events) {
            let result = match (&x.error, &x.kill) {
                (Some(e), _) => e.replace('|', "/"),
                (None, Some(k)) => format!(
                    "pid {} on {}",
                    k.pid.map_or_else(|| "?".to_owned(), |p| p.to_string()),
                    k.node.as_deref().unwrap_or("?")
                ),
                (None, None) => "ok".to_owned(),
            };
            let conv = match &v.convergence {
                Convergence::Converged { ms } => format!("{ms:.0} ms"),
                Convergence::Superseded { after_ms } => {
                    format!("superseded after {after_ms:.0} ms")
                }
                Convergence::NotConverged { late_ms, why } => format!(
                    "**not converged**{}: {}",
                    late_ms.map_or_else(String::new, |l| format!(" (after {l:.0} ms)")),
                    why.join("; ").replace('|', "/")
                ),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.0} | {} | {result} | {conv} |",
                x.seq,
                s(x.due_ms),
                s(x.started_ms),
                x.done_ms - x.started_ms,
                x.action
            );
        }
        out.push_str("\n</details>\n\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::judge::{EventTimes, Expect};
    use crate::chaos::{judge, EdgeSample, Sample};
    use crate::results::tests::ok_run;
    use crate::results::{ChaosEventResult, ExperimentMeta};
    use std::net::Ipv4Addr;

    /// A chaos run whose service stays at edge X while the UE goes to site B: its one event
    /// never converges.
    pub(crate) fn stranded_run(run: u32) -> crate::results::RunResult {
        let expect = Expect {
            service_id: "streamer".into(),
            service_ip: Ipv4Addr::new(20, 0, 0, 100),
            edge_of_site: [("site-a", "edge-x"), ("site-b", "edge-y")]
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
                .into(),
            bound_ms: 1000.0,
            delivering_within_ms: 200.0,
        };
        let samples: Vec<Sample> = (0u32..40)
            .map(|i| {
                let t = f64::from(i) * 100.0;
                Sample {
                    at_ms: t,
                    took_ms: 2.0,
                    ue_site: Some(if t < 1000.0 { "site-a" } else { "site-b" }.into()),
                    stream_records: if t < 1500.0 {
                        u64::from(i) * 10 + 10
                    } else {
                        160
                    },
                    stream_corrupt: 0,
                    edges: ["edge-x", "edge-y"]
                        .map(|edge| EdgeSample {
                            edge: edge.into(),
                            services: Some(if edge == "edge-x" {
                                vec!["streamer".into()]
                            } else {
                                vec![]
                            }),
                            running: Some(vec![]),
                            relocation_flows: Some(0),
                            service_flows: Some(vec![]),
                        })
                        .to_vec(),
                    down: vec![],
                }
            })
            .collect();
        let event = ChaosEventResult {
            seq: 0,
            action: ChaosAction::Handover {
                to: "site-b".into(),
            },
            due_ms: 1000.0,
            started_ms: 1000.0,
            done_ms: 1012.0,
            kill: None,
            error: None,
        };
        let times: Vec<EventTimes> = vec![event.times()];
        let verdict = judge(&expect, &times, &samples, 500.0, 0);
        let mut r = ok_run(run, [1; 5], [1; 5], 5, 1.0, None);
        r.ok = false;
        r.chaos = Some(ChaosRun {
            seed: 41 + u64::from(run),
            ue: "ue1".into(),
            service_id: "streamer".into(),
            bound_ms: 1000.0,
            sample_ms: 100,
            clock_unix_us: 1_700_000_000_000_000,
            start_ms: 500.0,
            events: vec![event],
            verdict,
            stream: Some(crate::probe::StreamReport {
                records: 160,
                reconnects: 2,
                ..Default::default()
            }),
            stream_error: None,
            samples_file: Some(format!("{run:03}-samples.json")),
        });
        r
    }

    #[test]
    fn the_chaos_section_shows_events_violations_by_kind_and_percentiles() {
        let mut e = Experiment {
            meta: ExperimentMeta::new("chaos", "chaos.toml", 1, BTreeMap::new(), None),
            runs: vec![ok_run(1, [1; 5], [1; 5], 5, 1.0, None)],
        };
        assert_eq!(chaos_section(&e), "", "no chaos runs, no section");
        e.runs = vec![stranded_run(1)];
        let md = super::super::markdown_report(&e, &[]);
        for want in [
            "## Chaos: invariants and time to converge",
            "1 run(s), 1 events: 0 converged, 0 superseded by the next event, 1 not converged within the bound.",
            "| 2 | – | – | 0 |",
            "| not-converged | 1 |",
            "| stream-gap | 1 |",
            "| 1 | 42 | 1 | 1 | 0 | 0 | 0 | 0 | 1 | – | – | 2400 | 2900 | 2 | **NOT converged**: streamer runs at edge-x, the UE is at site-b (edge-y); the stream is silent for 2400 ms | byte-exact per connection, 2 reconnect(s) |",
            "### Run 1: violations (times in s after the schedule began)",
            "| not-converged | 0.5 | end | 0 | event 0 not converged within 1000 ms: streamer runs at edge-x, the UE is at site-b (edge-y); the stream is silent for 500 ms |",
            "| stream-gap | 1.0 | end | 0 | the stream was silent until the last sample, 2400 ms (bound 1000 ms) |",
            "<details><summary>Run 1: the 1 events (samples: 001-samples.json)</summary>",
            "| 0 | 0.5 | 0.5 | 12 | handover to site-b | ok | **not converged**: streamer runs at edge-x, the UE is at site-b (edge-y); the stream is silent for 500 ms |",
        ] {
            assert!(md.contains(want), "missing `{want}` in\n{md}");
        }
        // A run whose event converged shows its time.
        let mut good = stranded_run(2);
        if let Some(c) = &mut good.chaos {
            c.verdict.violations.clear();
            c.verdict.events[0].convergence = Convergence::Converged { ms: 250.0 };
            c.verdict.final_state.converged = true;
            c.stream = Some(crate::probe::StreamReport {
                intact: true,
                ..Default::default()
            });
        }
        e.runs = vec![good];
        let md = chaos_section(&e);
        let head = chaos_headline(&e);
        assert!(head.contains("| 0 | 250 | 250 | 1 |"), "{head}");
        assert!(md.contains("byte-exact, one connection"), "{md}");
        assert!(!md.contains("### Run 2: violations"), "{md}");
    }
}

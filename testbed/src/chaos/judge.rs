//! The chaos verdicts, pure: from the samples the observer took and the times the events
//! happened to each event's time to converge, the violations and the final state.
//!
//! **Converged** ([`assess`]): every part answered, and
//! 1. exactly one edge's modules list the service as running (GetServices),
//! 2. at the edge of the site that serves the UE,
//! 3. the UE's stream delivered within [`Expect::delivering_within_ms`],
//! 4. no SMO records a RUNNING relocation begun during the run,
//! 5. no switch holds a relocation (trombone) flow, and no switch but the one where the service
//!    runs holds the service's own flows,
//! 6. every network function of the testbed, and its supervisor, is running.
//!
//! **Per event** ([`judge`]): its time to converge is from the start of its action to the first
//! sample begun after the action ended that is converged. Converged within the bound: that time.
//! The next event came first (before the bound): *superseded*. Otherwise: a `not-converged`
//! violation (with the time it did converge, if it did before the next event).
//!
//! **Safety**, from the schedule's start to the last sample: never two running copies
//! (`two-copies`, each stretch of samples that saw two once), never a silence of the stream
//! longer than the bound (`stream-gap`, measured between the samples that saw new records, so to
//! within a sample period; a silence that never ended counts up to the last sample), never a
//! record with wrong bytes (`stream-corrupt`). A reconnect is not a violation; the run's stream
//! report counts them.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use super::Sample;

/// What the judge holds the samples against.
#[derive(Debug, Clone, PartialEq)]
pub struct Expect {
    /// The service the observer watches.
    pub service_id: String,
    pub service_ip: Ipv4Addr,
    /// The edge cloud next to each site (`site-a` → `edge-x`).
    pub edge_of_site: BTreeMap<String, String>,
    /// The bound, ms: on convergence and on the stream's silence.
    pub bound_ms: f64,
    /// The stream is delivering when a sample within this long (ms) saw new records.
    pub delivering_within_ms: f64,
}

impl Expect {
    /// The delivery window for a sample period: two periods (one sample without new records is
    /// tolerated, two are not).
    pub fn delivering_within(sample_ms: f64) -> f64 {
        2.0 * sample_ms
    }
}

/// One sample judged on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assessment {
    /// The edges whose modules list the service as running.
    pub copies: Vec<String>,
    /// Why the sample is not converged; empty: it is.
    pub unconverged: Vec<String>,
}

impl Assessment {
    pub fn converged(&self) -> bool {
        self.unconverged.is_empty()
    }
}

/// Judges one sample; `last_delivery_ms` is the time of the latest sample (up to this one) that
/// saw new records.
pub fn assess(expect: &Expect, s: &Sample, last_delivery_ms: Option<f64>) -> Assessment {
    let mut why = Vec::new();
    let mut copies = Vec::new();
    for e in &s.edges {
        match &e.services {
            None => why.push(format!("{}'s service module does not answer", e.edge)),
            Some(ids) if ids.contains(&expect.service_id) => copies.push(e.edge.clone()),
            Some(_) => {}
        }
    }
    match copies.as_slice() {
        [_] => {}
        [] if s.edges.iter().any(|e| e.services.is_none()) => why.push(format!(
            "no module that answers lists {} as running",
            expect.service_id
        )),
        [] => why.push(format!("no running copy of {}", expect.service_id)),
        many => why.push(format!(
            "{} running copies of {} ({})",
            many.len(),
            expect.service_id,
            many.join(", ")
        )),
    }
    match &s.ue_site {
        None => why.push("the UE does not answer".into()),
        Some(site) => {
            let want = expect.edge_of_site.get(site);
            if let ([at], Some(want)) = (copies.as_slice(), want) {
                if at != want {
                    why.push(format!(
                        "{} runs at {at}, the UE is at {site} ({want})",
                        expect.service_id
                    ));
                }
            }
            if want.is_none() {
                why.push(format!("the UE is at {site}, which has no edge cloud"));
            }
        }
    }
    match last_delivery_ms {
        None => why.push("the stream has delivered nothing".into()),
        Some(t) if s.at_ms - t > expect.delivering_within_ms => {
            why.push(format!("the stream is silent for {:.0} ms", s.at_ms - t));
        }
        Some(_) => {}
    }
    for e in &s.edges {
        match &e.running {
            None => why.push(format!("{}'s SMO does not answer", e.edge)),
            Some(r) if !r.is_empty() => {
                why.push(format!("{} records running: {}", e.edge, r.join(", ")));
            }
            Some(_) => {}
        }
        match e.relocation_flows {
            None => why.push(format!("{}'s flows cannot be read", e.edge)),
            Some(0) => {}
            Some(n) => why.push(format!("{} holds {n} relocation flow(s)", e.edge)),
        }
        let own = copies.len() == 1 && copies[0] == e.edge;
        if let Some(ips) = &e.service_flows {
            if !own && ips.contains(&expect.service_ip) {
                why.push(format!(
                    "{} holds flows of {} ({}), which does not run there",
                    e.edge, expect.service_id, expect.service_ip
                ));
            }
        }
    }
    if !s.down.is_empty() {
        why.push(format!("down: {}", s.down.join(", ")));
    }
    Assessment {
        copies,
        unconverged: why,
    }
}

/// Whether sample `s` saw new records since the one before it (`prev`; none: since the start).
fn delivered(prev: Option<&Sample>, s: &Sample) -> bool {
    s.stream_records > prev.map_or(0, |p| p.stream_records)
}

/// The newest of `samples` judged on its own (the stream's last delivery taken from all of
/// them): what the driver waits on before the first event.
pub fn assess_latest(expect: &Expect, samples: &[Sample]) -> Option<Assessment> {
    let last = samples.last()?;
    let last_delivery = (0..samples.len())
        .rev()
        .find(|&i| delivered(i.checked_sub(1).map(|j| &samples[j]), &samples[i]))
        .map(|i| samples[i].at_ms);
    Some(assess(expect, last, last_delivery))
}

/// When an event's action ran, ms on the run's clock (the samples' clock).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EventTimes {
    pub seq: u32,
    pub started_ms: f64,
    pub done_ms: f64,
}

/// How an event ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "verdict")]
pub enum Convergence {
    /// Converged this long after the action began, within the bound.
    Converged {
        #[serde(rename = "ms")]
        ms: f64,
    },
    /// The next event began this long after this one, before it converged and before the bound.
    Superseded {
        #[serde(rename = "afterMs")]
        after_ms: f64,
    },
    /// Not converged within the bound (a violation): converged only this late, or not before
    /// the next event or the end; why not, as the sample at the bound saw it.
    NotConverged {
        #[serde(rename = "lateMs", default, skip_serializing_if = "Option::is_none")]
        late_ms: Option<f64>,
        why: Vec<String>,
    },
}

/// One event's verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventVerdict {
    pub seq: u32,
    pub convergence: Convergence,
}

/// The kinds of violation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ViolationKind {
    /// Two (or more) edges' modules listed the service as running.
    TwoCopies,
    /// The UE's stream was silent longer than the bound.
    StreamGap,
    /// An event did not converge within the bound.
    NotConverged,
    /// The stream delivered a record with wrong bytes or out of sequence.
    StreamCorrupt,
}

impl std::fmt::Display for ViolationKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::TwoCopies => "two-copies",
            Self::StreamGap => "stream-gap",
            Self::NotConverged => "not-converged",
            Self::StreamCorrupt => "stream-corrupt",
        })
    }
}

/// A violated invariant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Violation {
    pub kind: ViolationKind,
    /// From when (ms on the run's clock) …
    pub from_ms: f64,
    /// … until when (`None`: still so at the last sample).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_ms: Option<f64>,
    /// The last event begun at or before `from_ms` (`None`: before the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<u32>,
    /// What was seen, against what was expected.
    pub detail: String,
}

/// The state after the last event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FinalState {
    /// The last sample is converged.
    pub converged: bool,
    /// Ms after the last event's action began that the first converged sample after it was
    /// taken (`None`: none was).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub converged_after_ms: Option<f64>,
    /// Where the service ran at the last sample.
    pub copies: Vec<String>,
    /// The site serving the UE at the last sample.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ue_site: Option<String>,
    /// Why the last sample is not converged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub why_not: Vec<String>,
}

/// Everything judged about one chaos run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChaosVerdict {
    pub events: Vec<EventVerdict>,
    pub violations: Vec<Violation>,
    pub final_state: FinalState,
    /// Samples judged (from the schedule's start).
    pub samples: usize,
    /// The stream's longest silence between two samples that saw new records (or to the last
    /// sample), ms: what the bound allows shows here.
    pub largest_stream_gap_ms: f64,
    /// The longest stretch of samples in which the service did not run (alone) at the edge of
    /// the UE's site, ms (from its first such sample to the first sample after it).
    pub longest_misplaced_ms: f64,
}

impl ChaosVerdict {
    /// The times to converge of the events that converged, ms.
    pub fn convergence_ms(&self) -> Vec<f64> {
        self.events
            .iter()
            .filter_map(|e| match e.convergence {
                Convergence::Converged { ms } => Some(ms),
                _ => None,
            })
            .collect()
    }

    /// Violations by kind.
    pub fn by_kind(&self) -> BTreeMap<ViolationKind, usize> {
        let mut m = BTreeMap::new();
        for v in &self.violations {
            *m.entry(v.kind).or_default() += 1;
        }
        m
    }

    /// Events superseded and not converged.
    pub fn counts(&self) -> (usize, usize, usize) {
        let mut c = (0, 0, 0);
        for e in &self.events {
            match e.convergence {
                Convergence::Converged { .. } => c.0 += 1,
                Convergence::Superseded { .. } => c.1 += 1,
                Convergence::NotConverged { .. } => c.2 += 1,
            }
        }
        c
    }
}

/// Judges a chaos run: `events` as they ran (in order), `samples` in order, the schedule having
/// begun at `start_ms` (the samples before it only set the stream's last delivery), and
/// `corrupt_records` the stream's own count at its end (records after the last sample count
/// too).
pub fn judge(
    expect: &Expect,
    events: &[EventTimes],
    samples: &[Sample],
    start_ms: f64,
    corrupt_records: u64,
) -> ChaosVerdict {
    // Every sample assessed, with the stream's last delivery as of it.
    let mut last_delivery: Option<f64> = None;
    let mut assessed: Vec<(&Sample, Assessment)> = Vec::with_capacity(samples.len());
    let mut deliveries: Vec<f64> = Vec::new();
    for (i, s) in samples.iter().enumerate() {
        if delivered(i.checked_sub(1).map(|j| &samples[j]), s) {
            last_delivery = Some(s.at_ms);
            deliveries.push(s.at_ms);
        }
        assessed.push((s, assess(expect, s, last_delivery)));
    }
    let judged: Vec<&(&Sample, Assessment)> = assessed
        .iter()
        .filter(|(s, _)| s.at_ms >= start_ms)
        .collect();
    let event_at = |t: f64| {
        events
            .iter()
            .take_while(|e| e.started_ms <= t)
            .last()
            .map(|e| e.seq)
    };
    let mut violations = Vec::new();

    // Two copies: each stretch of samples that saw more than one.
    let mut stretch: Option<(f64, f64, Vec<String>)> = None;
    let close = |stretch: &mut Option<(f64, f64, Vec<String>)>, v: &mut Vec<Violation>| {
        if let Some((from, to, edges)) = stretch.take() {
            v.push(Violation {
                kind: ViolationKind::TwoCopies,
                from_ms: from,
                to_ms: Some(to),
                event: event_at(from),
                detail: format!(
                    "{} ran at {} at once (expected one copy)",
                    expect.service_id,
                    edges.join(" and ")
                ),
            });
        }
    };
    for (s, a) in &judged {
        if a.copies.len() > 1 {
            match &mut stretch {
                Some((_, to, _)) => *to = s.at_ms,
                None => stretch = Some((s.at_ms, s.at_ms, a.copies.clone())),
            }
        } else {
            close(&mut stretch, &mut violations);
        }
    }
    close(&mut stretch, &mut violations);

    // Stream gaps longer than the bound, between the samples that saw new records.
    let end_ms = judged.last().map_or(start_ms, |(s, _)| s.at_ms);
    let mut from = deliveries
        .iter()
        .copied()
        .rfind(|t| *t <= start_ms)
        .unwrap_or(start_ms);
    for t in deliveries.iter().copied().filter(|t| *t > start_ms) {
        if t - from > expect.bound_ms {
            violations.push(Violation {
                kind: ViolationKind::StreamGap,
                from_ms: from,
                to_ms: Some(t),
                event: event_at(from),
                detail: format!(
                    "the stream was silent for {:.0} ms (bound {:.0} ms)",
                    t - from,
                    expect.bound_ms
                ),
            });
        }
        from = t;
    }
    if end_ms - from > expect.bound_ms {
        violations.push(Violation {
            kind: ViolationKind::StreamGap,
            from_ms: from,
            to_ms: None,
            event: event_at(from),
            detail: format!(
                "the stream was silent until the last sample, {:.0} ms (bound {:.0} ms)",
                end_ms - from,
                expect.bound_ms
            ),
        });
    }

    let largest_stream_gap_ms = deliveries
        .iter()
        .copied()
        .filter(|t| *t > start_ms)
        .chain(std::iter::once(end_ms))
        .scan(
            deliveries
                .iter()
                .copied()
                .rfind(|t| *t <= start_ms)
                .unwrap_or(start_ms),
            |prev, t| {
                let gap = t - *prev;
                *prev = t;
                Some(gap)
            },
        )
        .fold(0.0, f64::max);
    let mut longest_misplaced_ms: f64 = 0.0;
    let mut misplaced_since: Option<f64> = None;
    for (s, a) in &judged {
        let home = s
            .ue_site
            .as_ref()
            .and_then(|site| expect.edge_of_site.get(site));
        let placed = matches!((a.copies.as_slice(), home), ([at], Some(h)) if at == h);
        match (placed, misplaced_since) {
            (false, None) => misplaced_since = Some(s.at_ms),
            (true, Some(from)) => {
                longest_misplaced_ms = longest_misplaced_ms.max(s.at_ms - from);
                misplaced_since = None;
            }
            _ => {}
        }
    }
    if let Some(from) = misplaced_since {
        longest_misplaced_ms = longest_misplaced_ms.max(end_ms - from);
    }

    // Corrupt records.
    let first_corrupt = judged.iter().find(|(s, _)| s.stream_corrupt > 0);
    let corrupt = corrupt_records.max(judged.last().map_or(0, |(s, _)| s.stream_corrupt));
    if corrupt > 0 {
        let at = first_corrupt.map_or(end_ms, |(s, _)| s.at_ms);
        violations.push(Violation {
            kind: ViolationKind::StreamCorrupt,
            from_ms: at,
            to_ms: None,
            event: event_at(at),
            detail: format!(
                "{corrupt} record(s) out of sequence or with wrong bytes (expected every byte once, in order, on each connection)"
            ),
        });
    }

    // Each event.
    let mut verdicts = Vec::with_capacity(events.len());
    for (i, e) in events.iter().enumerate() {
        let next = events.get(i + 1).map(|n| n.started_ms);
        let deadline = e.started_ms + expect.bound_ms;
        let window = judged
            .iter()
            .filter(|(s, _)| s.at_ms >= e.done_ms && next.is_none_or(|n| s.at_ms < n));
        let converged_at = window
            .clone()
            .find(|(_, a)| a.converged())
            .map(|(s, _)| s.at_ms);
        let convergence = match (converged_at, next) {
            (Some(c), _) if c <= deadline => Convergence::Converged {
                ms: c - e.started_ms,
            },
            (_, Some(n)) if n <= deadline => Convergence::Superseded {
                after_ms: n - e.started_ms,
            },
            (late, _) => {
                // Why not, as the last sample up to the bound saw it.
                let why = window
                    .clone()
                    .take_while(|(s, _)| s.at_ms <= deadline)
                    .last()
                    .map_or_else(
                        || {
                            vec![if e.done_ms > deadline {
                                format!("its action took {:.0} ms", e.done_ms - e.started_ms)
                            } else {
                                "no sample until the bound".to_owned()
                            }]
                        },
                        |(_, a)| a.unconverged.clone(),
                    );
                violations.push(Violation {
                    kind: ViolationKind::NotConverged,
                    from_ms: e.started_ms,
                    to_ms: late,
                    event: Some(e.seq),
                    detail: format!(
                        "event {} not converged within {:.0} ms{}: {}",
                        e.seq,
                        expect.bound_ms,
                        late.map_or_else(String::new, |c| format!(
                            " (converged after {:.0} ms)",
                            c - e.started_ms
                        )),
                        why.join("; ")
                    ),
                });
                Convergence::NotConverged {
                    late_ms: late.map(|c| c - e.started_ms),
                    why,
                }
            }
        };
        verdicts.push(EventVerdict {
            seq: e.seq,
            convergence,
        });
    }
    violations.sort_by(|a, b| a.from_ms.total_cmp(&b.from_ms));

    let last = judged.last();
    let final_state = FinalState {
        converged: last.is_some_and(|(_, a)| a.converged()),
        converged_after_ms: events.last().and_then(|e| {
            judged
                .iter()
                .find(|(s, a)| s.at_ms >= e.done_ms && a.converged())
                .map(|(s, _)| s.at_ms - e.started_ms)
        }),
        copies: last.map(|(_, a)| a.copies.clone()).unwrap_or_default(),
        ue_site: last.and_then(|(s, _)| s.ue_site.clone()),
        why_not: last.map_or_else(
            || vec!["no sample".to_owned()],
            |(_, a)| a.unconverged.clone(),
        ),
    };
    ChaosVerdict {
        events: verdicts,
        violations,
        final_state,
        samples: judged.len(),
        largest_stream_gap_ms,
        longest_misplaced_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::super::EdgeSample;
    use super::*;

    const SVC: Ipv4Addr = Ipv4Addr::new(20, 0, 0, 100);

    fn expect() -> Expect {
        Expect {
            service_id: "streamer".into(),
            service_ip: SVC,
            edge_of_site: [("site-a", "edge-x"), ("site-b", "edge-y")]
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
                .into(),
            bound_ms: 1000.0,
            delivering_within_ms: Expect::delivering_within(100.0),
        }
    }

    fn edge(name: &str, runs: bool) -> EdgeSample {
        EdgeSample {
            edge: name.into(),
            services: Some(if runs {
                vec!["streamer".into()]
            } else {
                vec![]
            }),
            running: Some(vec![]),
            relocation_flows: Some(0),
            service_flows: Some(if runs && name == "edge-y" {
                vec![SVC]
            } else {
                vec![]
            }),
        }
    }

    /// A converged sample: the service at `at` ("x" or "y"), the UE at the matching site.
    fn steady(t: f64, at: &str, records: u64) -> Sample {
        Sample {
            at_ms: t,
            took_ms: 3.0,
            ue_site: Some(if at == "x" { "site-a" } else { "site-b" }.into()),
            stream_records: records,
            stream_corrupt: 0,
            edges: vec![edge("edge-x", at == "x"), edge("edge-y", at == "y")],
            down: vec![],
        }
    }

    /// Samples every 100 ms from `from` to `to` (exclusive), each changed by `f`, with the
    /// stream delivering 10 records per sample from `records`.
    fn run(from: f64, to: f64, records: &mut u64, f: impl Fn(&mut Sample)) -> Vec<Sample> {
        let mut out = Vec::new();
        let mut t = from;
        while t < to {
            *records += 10;
            let mut s = steady(t, "x", *records);
            f(&mut s);
            out.push(s);
            t += 100.0;
        }
        out
    }

    fn at_y(s: &mut Sample) {
        *s = Sample {
            at_ms: s.at_ms,
            stream_records: s.stream_records,
            ..steady(s.at_ms, "y", 0)
        };
    }

    fn ev(seq: u32, started: f64) -> EventTimes {
        EventTimes {
            seq,
            started_ms: started,
            done_ms: started + 15.0,
        }
    }

    #[test]
    fn a_steady_sample_is_converged_and_each_fault_is_named() {
        let e = expect();
        let ok = steady(1000.0, "x", 50);
        assert!(assess(&e, &ok, Some(950.0)).converged());
        let y = steady(1000.0, "y", 50);
        assert!(assess(&e, &y, Some(950.0)).converged());
        let why = |f: &dyn Fn(&mut Sample), last: Option<f64>| {
            let mut s = steady(1000.0, "x", 50);
            f(&mut s);
            assess(&e, &s, last).unconverged.join("; ")
        };
        type Change = Box<dyn Fn(&mut Sample)>;
        let cases: Vec<(Change, Option<f64>, &str)> = vec![
            (
                Box::new(|s: &mut Sample| s.ue_site = Some("site-b".into())),
                Some(950.0),
                "streamer runs at edge-x, the UE is at site-b (edge-y)",
            ),
            (
                Box::new(|s: &mut Sample| s.edges[1].services = Some(vec!["streamer".into()])),
                Some(950.0),
                "2 running copies of streamer (edge-x, edge-y)",
            ),
            (
                Box::new(|s: &mut Sample| s.edges[0].services = Some(vec![])),
                Some(950.0),
                "no running copy of streamer",
            ),
            (
                Box::new(|s: &mut Sample| s.edges[1].services = None),
                Some(950.0),
                "edge-y's service module does not answer",
            ),
            (
                Box::new(|s: &mut Sample| s.edges[0].services = None),
                Some(950.0),
                "edge-x's service module does not answer; no module that answers lists streamer as running",
            ),
            (
                Box::new(|_: &mut Sample| {}),
                Some(700.0),
                "the stream is silent for 300 ms",
            ),
            (
                Box::new(|_: &mut Sample| {}),
                None,
                "the stream has delivered nothing",
            ),
            (
                Box::new(|s: &mut Sample| s.edges[0].running = Some(vec!["smo-x-3".into()])),
                Some(950.0),
                "edge-x records running: smo-x-3",
            ),
            (
                Box::new(|s: &mut Sample| s.edges[1].running = None),
                Some(950.0),
                "edge-y's SMO does not answer",
            ),
            (
                Box::new(|s: &mut Sample| s.edges[1].relocation_flows = Some(3)),
                Some(950.0),
                "edge-y holds 3 relocation flow(s)",
            ),
            (
                Box::new(|s: &mut Sample| s.edges[0].relocation_flows = None),
                Some(950.0),
                "edge-x's flows cannot be read",
            ),
            (
                Box::new(|s: &mut Sample| s.edges[1].service_flows = Some(vec![SVC])),
                Some(950.0),
                "edge-y holds flows of streamer (20.0.0.100), which does not run there",
            ),
            (
                Box::new(|s: &mut Sample| s.down = vec!["smf".into()]),
                Some(950.0),
                "down: smf",
            ),
            (
                Box::new(|s: &mut Sample| s.ue_site = None),
                Some(950.0),
                "the UE does not answer",
            ),
        ];
        for (f, last, want) in cases {
            let got = why(&*f, last);
            assert_eq!(got, want);
        }
        // The service's own flows where it runs are its path, not stale.
        let mut s = steady(1000.0, "x", 50);
        s.edges[0].service_flows = Some(vec![SVC]);
        assert!(assess(&e, &s, Some(1000.0)).converged());
    }

    #[test]
    fn each_event_converges_is_superseded_or_violates_the_bound() {
        let e = expect();
        let mut rec = 0;
        // 0-1000: steady at X. Event 0 at 1000 (handover to B): converged at 1300 (three samples
        // with the service still at X, then at Y). Event 1 at 2000 (back to A) is superseded by
        // event 2 at 2400 (to B again), which never converges: the service stays at X.
        let mut s = run(0.0, 1000.0, &mut rec, |_| {});
        s.extend(run(1000.0, 1300.0, &mut rec, |s| {
            s.ue_site = Some("site-b".into())
        }));
        s.extend(run(1300.0, 2000.0, &mut rec, at_y));
        s.extend(run(2000.0, 2400.0, &mut rec, |s| {
            at_y(s);
            s.ue_site = Some("site-a".into());
        }));
        s.extend(run(2400.0, 5000.0, &mut rec, |s| {
            s.ue_site = Some("site-b".into());
            s.edges[1].relocation_flows = Some(4);
        }));
        let events = [ev(0, 1000.0), ev(1, 2000.0), ev(2, 2400.0)];
        let v = judge(&e, &events, &s, 1000.0, 0);
        assert_eq!(
            v.events[0].convergence,
            Convergence::Converged { ms: 300.0 }
        );
        assert_eq!(
            v.events[1].convergence,
            Convergence::Superseded { after_ms: 400.0 }
        );
        let Convergence::NotConverged { late_ms, why } = &v.events[2].convergence else {
            panic!("event 2: {:?}", v.events[2]);
        };
        assert_eq!(*late_ms, None);
        assert_eq!(
            why.join("; "),
            "streamer runs at edge-x, the UE is at site-b (edge-y); edge-y holds 4 relocation flow(s)"
        );
        assert_eq!(v.convergence_ms(), [300.0]);
        assert_eq!(v.counts(), (1, 1, 1));
        // Misplaced from 1000 (UE at B, service at X) to 1300, from 2000 to the end at 4900.
        assert_eq!(v.longest_misplaced_ms, 2900.0);
        assert_eq!(v.largest_stream_gap_ms, 100.0);
        assert_eq!(v.violations.len(), 1, "{:?}", v.violations);
        assert_eq!(v.violations[0].kind, ViolationKind::NotConverged);
        assert_eq!(v.violations[0].event, Some(2));
        assert!(!v.final_state.converged);
        assert_eq!(v.final_state.copies, ["edge-x"]);
        assert_eq!(v.final_state.ue_site.as_deref(), Some("site-b"));
        assert_eq!(v.final_state.converged_after_ms, None);
        // The same run, converged at 3600 (after the 1000 ms bound): a violation that says
        // when it did converge.
        for x in s.iter_mut().filter(|x| x.at_ms >= 3600.0) {
            at_y(x);
        }
        let v = judge(&e, &events, &s, 1000.0, 0);
        assert_eq!(
            v.events[2].convergence,
            Convergence::NotConverged {
                late_ms: Some(1200.0),
                why: vec![
                    "streamer runs at edge-x, the UE is at site-b (edge-y)".into(),
                    "edge-y holds 4 relocation flow(s)".into()
                ]
            }
        );
        assert!(v.final_state.converged);
        assert_eq!(v.final_state.converged_after_ms, Some(1200.0));
        assert!(
            v.violations[0].detail.contains("converged after 1200 ms"),
            "{:?}",
            v.violations
        );
    }

    #[test]
    fn a_sample_taken_before_the_action_ended_does_not_count_as_converged() {
        let e = expect();
        let mut rec = 0;
        let mut s = run(0.0, 1000.0, &mut rec, |_| {});
        // The kill's action took 150 ms: the sample at 1100 is still the old world.
        s.extend(run(1000.0, 1200.0, &mut rec, |_| {}));
        s.extend(run(1200.0, 1500.0, &mut rec, |s| {
            s.down = vec!["smo-y".into()]
        }));
        s.extend(run(1500.0, 3000.0, &mut rec, |_| {}));
        let events = [EventTimes {
            seq: 0,
            started_ms: 1000.0,
            done_ms: 1150.0,
        }];
        let v = judge(&e, &events, &s, 1000.0, 0);
        assert_eq!(
            v.events[0].convergence,
            Convergence::Converged { ms: 500.0 }
        );
        assert!(v.violations.is_empty());
    }

    #[test]
    fn an_action_that_outlasts_the_bound_is_not_converged_and_says_so() {
        let e = expect();
        let mut rec = 0;
        let s = run(0.0, 4000.0, &mut rec, |_| {});
        let slow = EventTimes {
            seq: 0,
            started_ms: 1000.0,
            done_ms: 2500.0,
        };
        let v = judge(&e, &[slow], &s, 500.0, 0);
        assert_eq!(
            v.events[0].convergence,
            Convergence::NotConverged {
                late_ms: Some(1500.0),
                why: vec!["its action took 1500 ms".into()]
            }
        );
    }

    #[test]
    fn two_copies_are_a_violation_once_per_stretch() {
        let e = expect();
        let mut rec = 0;
        let both = |s: &mut Sample| s.edges[1].services = Some(vec!["streamer".into()]);
        let mut s = run(0.0, 1000.0, &mut rec, |_| {});
        s.extend(run(1000.0, 1300.0, &mut rec, both));
        s.extend(run(1300.0, 2000.0, &mut rec, |_| {}));
        s.extend(run(2000.0, 2100.0, &mut rec, both));
        s.extend(run(2100.0, 4000.0, &mut rec, |_| {}));
        // Before the schedule's start it does not count.
        s[2].edges[1].services = Some(vec!["streamer".into()]);
        let v = judge(&e, &[ev(0, 900.0), ev(1, 1950.0)], &s, 500.0, 0);
        let copies: Vec<&Violation> = v
            .violations
            .iter()
            .filter(|x| x.kind == ViolationKind::TwoCopies)
            .collect();
        assert_eq!(copies.len(), 2, "{:?}", v.violations);
        assert_eq!((copies[0].from_ms, copies[0].to_ms), (1000.0, Some(1200.0)));
        assert_eq!(copies[0].event, Some(0));
        assert_eq!(copies[1].event, Some(1));
        assert_eq!(
            copies[0].detail,
            "streamer ran at edge-x and edge-y at once (expected one copy)"
        );
    }

    #[test]
    fn a_stream_silent_longer_than_the_bound_is_a_violation_also_at_the_end() {
        let e = expect();
        let mut rec = 0;
        let mut s = run(0.0, 1000.0, &mut rec, |_| {});
        // Silent from 1000 to 2500 (the last delivery seen at 900), then again from 3000 on.
        let frozen = rec;
        s.extend(run(1000.0, 2500.0, &mut rec, |x| x.stream_records = frozen));
        rec = frozen;
        s.extend(run(2500.0, 3000.0, &mut rec, |_| {}));
        let frozen = rec;
        s.extend(run(3000.0, 4500.0, &mut rec, |x| x.stream_records = frozen));
        let v = judge(&e, &[ev(0, 1000.0)], &s, 500.0, 0);
        let gaps: Vec<&Violation> = v
            .violations
            .iter()
            .filter(|x| x.kind == ViolationKind::StreamGap)
            .collect();
        assert_eq!(gaps.len(), 2, "{:?}", v.violations);
        assert_eq!((gaps[0].from_ms, gaps[0].to_ms), (900.0, Some(2500.0)));
        assert_eq!(
            gaps[0].detail,
            "the stream was silent for 1600 ms (bound 1000 ms)"
        );
        assert_eq!((gaps[1].from_ms, gaps[1].to_ms), (2900.0, None));
        assert_eq!(v.largest_stream_gap_ms, 1600.0);
        assert!(!v.final_state.converged);
        assert!(
            v.final_state
                .why_not
                .iter()
                .any(|w| w.starts_with("the stream is silent")),
            "{:?}",
            v.final_state
        );
        // A 900 ms silence (between the samples at 900 and 1800) is within the bound.
        let mut rec = 0;
        let mut s = run(0.0, 1000.0, &mut rec, |_| {});
        let frozen = rec;
        s.extend(run(1000.0, 1800.0, &mut rec, |x| x.stream_records = frozen));
        rec = frozen;
        s.extend(run(1800.0, 3000.0, &mut rec, |_| {}));
        let v = judge(&e, &[ev(0, 1200.0)], &s, 500.0, 0);
        assert!(v.violations.is_empty(), "{:?}", v.violations);
        // Silent at the samples from 1200 on (300 ms and more since the last delivery, more than
        // two periods): converged only when it delivers again.
        assert_eq!(
            v.events[0].convergence,
            Convergence::Converged { ms: 600.0 }
        );
    }

    #[test]
    fn corrupt_records_are_a_violation_and_reconnects_are_not() {
        let e = expect();
        let mut rec = 0;
        let mut s = run(0.0, 3000.0, &mut rec, |_| {});
        let v = judge(&e, &[ev(0, 1000.0)], &s, 500.0, 0);
        assert!(v.violations.is_empty());
        // Records after the last sample count, by the stream's own report.
        let v = judge(&e, &[ev(0, 1000.0)], &s, 500.0, 2);
        assert_eq!(v.by_kind(), [(ViolationKind::StreamCorrupt, 1)].into());
        for x in s.iter_mut().filter(|x| x.at_ms >= 1500.0) {
            x.stream_corrupt = 1;
        }
        let v = judge(&e, &[ev(0, 1000.0)], &s, 500.0, 0);
        assert_eq!(v.violations[0].kind, ViolationKind::StreamCorrupt);
        assert_eq!(v.violations[0].from_ms, 1500.0);
        assert_eq!(v.violations[0].event, Some(0));
    }
}

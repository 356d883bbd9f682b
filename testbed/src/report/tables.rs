//! The report's text: thesis Tables 5.4–5.6 beside ours, the downtime agreement, flows, memory
//! against the aims, failed runs and every run, as Markdown.

use model::smo::RelocationPhase;
use std::fmt::Write as _;
use std::path::PathBuf;

use super::plots::plot_title;
use super::*;

const TABLE_HEAD: &str = "| Measurement point | n | MIN (ms) | MAX (ms) | MEAN (ms) | STDEV (ms) | 90th percentile (ms) |\n|---|---:|---:|---:|---:|---:|---:|\n";

fn stats_row(out: &mut String, label: &str, v: &[f64]) {
    match Stats::of(v) {
        Some(s) => {
            let _ = writeln!(
                out,
                "| {label} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
                s.n, s.min, s.max, s.mean, s.stdev, s.p90
            );
        }
        None => {
            let _ = writeln!(out, "| {label} | 0 | – | – | – | – | – |");
        }
    }
}

fn thesis_row(out: &mut String, label: &str, t: &ThesisRow) {
    let _ = writeln!(
        out,
        "| {label}, thesis | {THESIS_RUNS} | {} | {} | {} | {} | {} |",
        t.min, t.max, t.mean, t.stdev, t.p90
    );
}

/// `YYYY-MM-DD hh:mm:ss UTC` of µs since the Unix epoch.
pub(super) fn utc(unix_us: u64) -> String {
    let secs = unix_us / 1_000_000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm, non-negative days).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_owned(), |v| format!("{v:.2}"))
}

/// `report.md` for `e`, linking `plots` (file names relative to the report).
pub fn markdown_report(e: &Experiment, plots: &[PathBuf]) -> String {
    let m = &e.meta;
    let mut out = String::new();
    let ok = e.runs.iter().filter(|r| r.ok).count();
    let failed: Vec<&RunResult> = e.runs.iter().filter(|r| !r.ok).collect();
    let s = samples(e);
    let _ = writeln!(out, "# Experiment report: {}\n", m.scenario);
    let _ = writeln!(
        out,
        "* Scenario `{}` (`{}`): {} runs asked, {} recorded — {} succeeded, {} failed{}.",
        m.scenario,
        m.scenario_file,
        m.runs_asked,
        e.runs.len(),
        ok,
        failed.len(),
        match (m.runs_asked as usize).checked_sub(e.runs.len()) {
            Some(0) | None => String::new(),
            Some(k) => format!(", {k} not run"),
        }
    );
    let mm = &m.machine;
    let _ = writeln!(
        out,
        "* Machine: {}, {} ({}), {} CPUs, {} MiB memory.",
        mm.hostname, mm.kernel, mm.arch, mm.cpus, mm.memory_mb
    );
    let tools: Vec<String> = m.tools.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let _ = writeln!(
        out,
        "* Tools: {}; testbed commit `{}`.",
        if tools.is_empty() {
            "not recorded".to_owned()
        } else {
            tools.join(", ")
        },
        m.git_commit.as_deref().unwrap_or("unknown")
    );
    let _ = writeln!(
        out,
        "* Started {}, finished {}.\n",
        utc(m.started_unix_us),
        m.finished_unix_us
            .map_or_else(|| "(not finished)".to_owned(), utc)
    );
    let _ = writeln!(
        out,
        "Statistics are over the {} relocations of the {ok} successful runs (n per row: the \
         relocations that reported the value). STDEV is the sample standard deviation (n − 1); \
         the 90th percentile interpolates linearly between the closest ranks (Excel's \
         PERCENTILE.INC). Each measured row is followed by the thesis's (§5.4.1, {THESIS_RUNS} \
         runs, LXD on two 1-core VMs; \"< 1\" as printed there).\n",
        s.len()
    );

    let phases = RelocationPhase::SUCCESS_PATH;
    for (title, side, thesis) in [
        (
            "Source edge cloud: time per relocation phase (thesis Table 5.4)",
            true,
            &THESIS_SOURCE,
        ),
        (
            "Target edge cloud: time per relocation phase (thesis Table 5.5)",
            false,
            &THESIS_TARGET,
        ),
    ] {
        let _ = writeln!(out, "## {title}\n");
        out.push_str(TABLE_HEAD);
        for (p, t) in phases.iter().zip(thesis.iter()) {
            let v = values(&s, |x| {
                if side {
                    x.source_ms.get(*p)
                } else {
                    x.target_ms.get(*p)
                }
            });
            stats_row(&mut out, &p.to_string(), &v);
            thesis_row(&mut out, &p.to_string(), t);
        }
        if !side {
            out.push_str(
                "\nThe target's phases do different work here than in the thesis (Table 4.1): \
                 this SMO installs the service's new path at the target in EXECUTE (one bundle \
                 that also removes the trombone) and only records the service in COMPLETE; the \
                 thesis removed the trombone in EXECUTE and installed the new path in COMPLETE.\n",
            );
        }
        out.push('\n');
    }

    out.push_str(&headline(e));
    out.push('\n');
    out.push_str(&super::chaos_section(e));

    out.push_str("## Data transferred\n\n");
    out.push_str("| Measurement point | n | MIN (MB) | MAX (MB) | MEAN (MB) | STDEV (MB) | 90th percentile (MB) |\n|---|---:|---:|---:|---:|---:|---:|\n");
    stats_row(
        &mut out,
        "Bytes moved by the service module",
        &values(&s, |x| x.bytes_moved.map(|b| b as f64 / 1e6)),
    );
    out.push_str("\n(MB = 10⁶ bytes; the thesis gives no statistics for it.)\n\n");

    out.push_str(&flows_section(e));
    out.push_str(&kills_section(e));
    out.push_str(&memory_section(e));

    out.push_str("## Failed runs\n\n");
    if failed.is_empty() {
        out.push_str("None.\n\n");
    } else {
        let _ = writeln!(
            out,
            "{} of {} recorded runs failed:\n",
            failed.len(),
            e.runs.len()
        );
        for r in &failed {
            let _ = writeln!(
                out,
                "* run {}: {}",
                r.run,
                r.error
                    .as_deref()
                    .unwrap_or("(no error recorded)")
                    .replace('\n', " ")
            );
        }
        out.push('\n');
    }

    out.push_str("## Per run\n\n");
    out.push_str("| Run | Relocation | UE | Service | Total migration (ms) | Downtime, UE (ms) | Downtime, capture (ms) | Difference (ms) | Bytes moved | Result |\n|---:|---:|---|---|---:|---:|---:|---:|---:|---|\n");
    for r in &e.runs {
        let result = if r.ok { "ok" } else { "FAILED" };
        if r.relocations.is_empty() {
            let _ = writeln!(
                out,
                "| {} | – | – | – | – | – | – | – | – | {result} |",
                r.run
            );
        }
        for (i, x) in r.relocations.iter().enumerate() {
            let diff = x
                .downtime_ms
                .zip(x.downtime_capture_ms)
                .map(|(a, b)| (a - b).abs());
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {result} |",
                r.run,
                i + 1,
                x.ue,
                x.service_id,
                opt(x.total_ms),
                opt(x.downtime_ms),
                opt(x.downtime_capture_ms),
                opt(diff),
                x.bytes_moved
                    .map_or_else(|| "–".to_owned(), |b| b.to_string()),
            );
        }
    }
    out.push('\n');

    if !plots.is_empty() {
        out.push_str("## Plots\n\n");
        for p in plots
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "svg"))
        {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let stem = name.trim_end_matches(".svg");
            let _ = writeln!(out, "![{}]({name}) ([PNG]({stem}.png))\n", plot_title(stem));
        }
    }
    out
}

/// Thesis Table 5.6 for `e` (total migration time, downtime from the UE's gap recorder and from
/// the packet capture, the thesis's rows beside) and the sentence on whether the two downtime
/// measures agree.
pub fn headline(e: &Experiment) -> String {
    let s = samples(e);
    let mut out = String::new();
    out.push_str("## Total migration time and service downtime (thesis Table 5.6)\n\n");
    out.push_str(TABLE_HEAD);
    stats_row(
        &mut out,
        "Total migration time",
        &values(&s, |x| x.total_ms),
    );
    thesis_row(&mut out, "Total migration time", &THESIS_TOTAL);
    stats_row(
        &mut out,
        "Downtime (UE gap recorder)",
        &values(&s, |x| x.downtime_ms),
    );
    stats_row(
        &mut out,
        "Downtime (packet capture)",
        &values(&s, |x| x.downtime_capture_ms),
    );
    thesis_row(&mut out, "Downtime", &THESIS_DOWNTIME);
    out.push('\n');
    out.push_str(&agreement(&s));
    out.push('\n');
    let chaos = super::chaos_headline(e);
    if !chaos.is_empty() {
        out.push('\n');
        out.push_str(&chaos);
    }
    out
}

/// The flows of every recorded run by kind: how many there were and how many were ok (a stream
/// intact on one connection, a ping answered, …).
fn flows_section(e: &Experiment) -> String {
    let mut by_kind: std::collections::BTreeMap<&str, (usize, usize)> = Default::default();
    for f in e.runs.iter().flat_map(|r| &r.flows) {
        let c = by_kind.entry(f.kind.as_str()).or_default();
        c.0 += 1;
        c.1 += usize::from(f.ok);
    }
    let mut out = String::from("## Flows\n\n");
    if by_kind.is_empty() {
        out.push_str("Not recorded.\n\n");
        return out;
    }
    out.push_str("| Kind | Flows | Ok |\n|---|---:|---:|\n");
    for (kind, (n, ok)) in by_kind {
        let _ = writeln!(out, "| {kind} | {n} | {ok} |");
    }
    out.push_str(
        "\n(`stream` ok: every byte once, in order, on one connection; `ping` ok: answered.)\n\n",
    );
    out
}

/// Every `[[timeline]]` kill of the recorded runs: what, when, into which phase, the PID, or
/// why not (empty when no run killed anything).
fn kills_section(e: &Experiment) -> String {
    let kills: Vec<(u32, &crate::results::KillResult)> = e
        .runs
        .iter()
        .flat_map(|r| r.kills.iter().map(move |k| (r.run, k)))
        .collect();
    if kills.is_empty() {
        return String::new();
    }
    let mut out = String::from("## Kills\n\n");
    out.push_str(
        "SIGKILL to a network function by its recorded PID (the supervisor starts it again); \
         with a phase, the kill waited for a relocation's source record in that phase. \"Into \
         phase\" is SIGKILL's time after the phase began by the SMO's stopwatch.\n\n",
    );
    out.push_str("| Run | Process | Node | At (s) | Phase | After (ms) | Relocation | Into phase (ms) | PID | Result |\n|---:|---|---|---:|---|---:|---|---:|---:|---|\n");
    let dash = || "–".to_owned();
    for (run, k) in &kills {
        let _ = writeln!(
            out,
            "| {run} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            k.process,
            k.node.clone().unwrap_or_else(dash),
            k.at_s.map_or_else(dash, |s| format!("{s}")),
            k.phase.map_or_else(dash, |p| p.to_string()),
            k.after_ms.map_or_else(dash, |ms| ms.to_string()),
            k.relocation_id.clone().unwrap_or_else(dash),
            opt(k.into_phase_ms()),
            k.pid.map_or_else(dash, |p| p.to_string()),
            k.error
                .as_deref()
                .map_or_else(|| "killed".to_owned(), |e| format!("NOT KILLED: {e}")),
        );
    }
    out.push('\n');
    out
}

/// Peak memory aim of a testbed process by name, MB (`None`: not the testbed's own, e.g. Open
/// vSwitch): each SMO ≤ 30 MB, every other network function ≤ 20 MB.
pub fn memory_aim_mb(process: &str) -> Option<f64> {
    if process.starts_with("ovs") {
        None
    } else if process.starts_with("smo") {
        Some(SMO_AIM_MB)
    } else {
        Some(NF_AIM_MB)
    }
}

/// Aim for each network function's peak resident memory, MB.
pub const NF_AIM_MB: f64 = 20.0;
/// Aim for each SMO's peak resident memory, MB.
pub const SMO_AIM_MB: f64 = 30.0;

/// The peak memory table: every process's highest `VmHWM` over the runs, with its aim.
fn memory_section(e: &Experiment) -> String {
    let peaks = results::peak_rss(&e.runs);
    let mut out = String::from("## Peak memory per process\n\n");
    if peaks.is_empty() {
        out.push_str("Not recorded.\n\n");
        return out;
    }
    let _ = writeln!(
        out,
        "Highest peak resident memory (`VmHWM`, MB = 2²⁰ bytes) of each testbed process over the \
         runs, read at the end of each run. Aims: each network function ≤ {NF_AIM_MB} MB, each \
         SMO ≤ {SMO_AIM_MB} MB (Open vSwitch is not the testbed's own).\n"
    );
    out.push_str("| Process | Peak RSS (MB) | Aim (MB) | Within aim |\n|---|---:|---:|---|\n");
    let mut over = Vec::new();
    for (name, kb) in &peaks {
        let mb = *kb as f64 / 1024.0;
        let (aim, verdict) = match memory_aim_mb(name) {
            Some(a) if mb <= a => (format!("{a:.0}"), "yes".to_owned()),
            Some(a) => {
                over.push(name.as_str());
                (format!("{a:.0}"), "**NO**".to_owned())
            }
            None => ("–".to_owned(), "–".to_owned()),
        };
        let _ = writeln!(out, "| {name} | {mb:.1} | {aim} | {verdict} |");
    }
    if over.is_empty() {
        out.push_str("\nEvery process with an aim is within it.\n\n");
    } else {
        let _ = writeln!(out, "\nOver the aim: {}.\n", over.join(", "));
    }
    out
}

/// The sentence on whether the two downtime measures agree.
fn agreement(s: &[(u32, &RelocationResult)]) -> String {
    let both: Vec<(u32, f64)> = s
        .iter()
        .filter_map(|(run, x)| {
            x.downtime_ms
                .zip(x.downtime_capture_ms)
                .map(|(a, b)| (*run, (a - b).abs()))
        })
        .collect();
    let Some(&(worst_run, worst)) = both.iter().max_by(|a, b| a.1.total_cmp(&b.1)) else {
        return "The two downtime measures cannot be compared: no relocation has both the UE gap \
                recorder's and the packet capture's."
            .to_owned();
    };
    let off = both
        .iter()
        .filter(|(_, d)| *d > DOWNTIME_AGREEMENT_MS)
        .count();
    if off == 0 {
        format!(
            "The two downtime measures agree within {DOWNTIME_AGREEMENT_MS} ms in all {} \
             relocations that have both (largest difference {worst:.2} ms, run {worst_run}).",
            both.len()
        )
    } else {
        format!(
            "The two downtime measures do NOT agree within {DOWNTIME_AGREEMENT_MS} ms: {off} of {} \
             relocations that have both differ by more (largest difference {worst:.2} ms, run \
             {worst_run}).",
            both.len()
        )
    }
}

// ------------------------------------------------------------------------------------ plots

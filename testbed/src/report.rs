//! The experiment report: `report(DIR)` reads the raw results ([`crate::results::load`]) and
//! writes `DIR/report.md` — the thesis's Tables 5.4 (source phases), 5.5 (target phases) and
//! 5.6 (total migration time, service downtime) with this experiment's numbers beside the
//! thesis's — and the plots of Figures 5.5-5.8 as SVG and PNG:
//!
//! | file | what |
//! |---|---|
//! | `source-phases` | per run, INITIATE / VALIDATE / PREPARE / COMPLETE at the source (Figure 5.5, left) |
//! | `source-execute` | per run, EXECUTE at the source (Figure 5.5, right) |
//! | `target-phases`, `target-execute` | the same at the target (Figure 5.6) |
//! | `total-migration` | per run, total migration time (Figure 5.7) |
//! | `downtime` | per run, service downtime, UE gap recorder and packet capture side by side (Figure 5.8) |
//! | `downtime-cdf`, `downtime-histogram` | distribution of the downtime |
//!
//! Statistics are over the relocations of the successful runs. STDEV is the sample standard
//! deviation (divisor n − 1, Excel's `STDEV.S`); the 90th percentile interpolates linearly
//! between the closest ranks (Excel's `PERCENTILE.INC`, NumPy's default): with the sorted
//! values x₀ … xₙ₋₁ and h = 0.9 · (n − 1), P90 = x⌊h⌋ + (h − ⌊h⌋) · (x⌊h⌋₊₁ − x⌊h⌋). The
//! thesis's one-decimal percentiles of whole-millisecond data (57,30; 59,60; 2707,70) fit this
//! method and not nearest-rank.
//!
//! Plots are drawn with `plotters` (SVG and bitmap backends, `ab_glyph` text) and the DejaVu
//! Sans font compiled in from the `dejavu` crate, so no system font or fontconfig is needed.

use model::smo::RelocationPhase;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::results::{self, Experiment, RelocationResult, ResultsError, RunResult};

/// A value printed in the thesis's tables.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ThesisValue {
    Ms(f64),
    /// Printed as "< 1".
    BelowOneMs,
}

impl std::fmt::Display for ThesisValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ms(v) => write!(f, "{v:.2}"),
            Self::BelowOneMs => f.write_str("< 1"),
        }
    }
}

/// One row of a thesis table: MIN, MAX, MEAN, STDEV, 90th percentile (ms), over 50 runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ThesisRow {
    pub min: ThesisValue,
    pub max: ThesisValue,
    pub mean: ThesisValue,
    pub stdev: ThesisValue,
    pub p90: ThesisValue,
}

/// Runs behind every thesis table (§5.4.1: "50 repeated performance test runs").
pub const THESIS_RUNS: usize = 50;

const fn row(min: f64, max: f64, mean: f64, stdev: f64, p90: f64) -> ThesisRow {
    use ThesisValue::Ms;
    ThesisRow {
        min: Ms(min),
        max: Ms(max),
        mean: Ms(mean),
        stdev: Ms(stdev),
        p90: Ms(p90),
    }
}

/// Thesis Table 5.4, source edge cloud, INITIATE … COMPLETE (`shared/thesis.txt` lines 1107-1115).
pub const THESIS_SOURCE: [ThesisRow; 5] = [
    row(19.00, 85.00, 39.66, 14.60, 57.30),
    row(1.00, 8.00, 1.48, 1.45, 2.00),
    row(32.00, 83.00, 44.18, 12.61, 59.60),
    row(2438.00, 3001.00, 2607.90, 111.09, 2707.70),
    row(36.00, 86.00, 49.10, 10.10, 67.00),
];

/// Thesis Table 5.5, target edge cloud, INITIATE … COMPLETE (`shared/thesis.txt` lines 1119-1127).
pub const THESIS_TARGET: [ThesisRow; 5] = [
    ThesisRow {
        min: ThesisValue::BelowOneMs,
        ..row(0.0, 22.00, 1.92, 3.19, 3.00)
    },
    ThesisRow {
        min: ThesisValue::BelowOneMs,
        max: ThesisValue::Ms(3.00),
        mean: ThesisValue::BelowOneMs,
        stdev: ThesisValue::BelowOneMs,
        p90: ThesisValue::Ms(1.00),
    },
    row(18.00, 69.00, 31.30, 8.82, 42.40),
    row(18.00, 44.00, 21.74, 5.34, 25.50),
    row(85.00, 236.00, 99.32, 21.85, 111.00),
];

/// Thesis Table 5.6, total migration time (`shared/thesis.txt` lines 1131-1135).
pub const THESIS_TOTAL: ThesisRow = row(2649.00, 3217.00, 2835.26, 122.31, 2966.50);
/// Thesis Table 5.6, service downtime (`shared/thesis.txt` lines 1131-1136).
pub const THESIS_DOWNTIME: ThesisRow = row(1255.79, 2909.97, 1679.18, 493.16, 2622.81);

/// How close the two downtime measures must be to "agree", ms.
pub const DOWNTIME_AGREEMENT_MS: f64 = 5.0;

/// MIN, MAX, MEAN, STDEV, 90th percentile of some values (ms).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    pub n: usize,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    /// Sample standard deviation (n − 1); 0 for one value.
    pub stdev: f64,
    /// 90th percentile, linear interpolation between closest ranks.
    pub p90: f64,
}

impl Stats {
    /// The statistics of `values` (non-finite values ignored); `None` when there are none.
    pub fn of(values: &[f64]) -> Option<Self> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let mean = v.iter().sum::<f64>() / n as f64;
        let stdev = if n > 1 {
            (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        } else {
            0.0
        };
        Some(Self {
            n,
            min: v[0],
            max: v[n - 1],
            mean,
            stdev,
            p90: percentile(&v, 0.9),
        })
    }
}

/// The `p` quantile (0 ≤ p ≤ 1) of ascending `sorted` values by linear interpolation between the
/// closest ranks (`PERCENTILE.INC`); NaN when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let n = sorted.len();
    if n == 0 {
        return f64::NAN;
    }
    let h = p.clamp(0.0, 1.0) * (n - 1) as f64;
    let lo = h.floor() as usize;
    let hi = (lo + 1).min(n - 1);
    sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo])
}

/// What `report` wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportFiles {
    /// `DIR/report.md`.
    pub markdown: PathBuf,
    /// Every plot, SVG and PNG.
    pub plots: Vec<PathBuf>,
    /// The headline: Table 5.6 (total migration time, downtime both ways) and the agreement line.
    pub headline: String,
}

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot read the results: {0}")]
    Results(#[from] ResultsError),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot draw {path}: {message}")]
    Plot { path: PathBuf, message: String },
    #[error("cannot load the plot font: {0}")]
    Font(String),
}

/// Reads the results in `dir` and writes `dir/report.md` and the plots.
pub fn report(dir: &Path) -> Result<ReportFiles, ReportError> {
    let experiment = results::load(dir)?;
    let plots = plots(&experiment, dir)?;
    let markdown = dir.join("report.md");
    std::fs::write(&markdown, markdown_report(&experiment, &plots)).map_err(|source| {
        ReportError::Write {
            path: markdown.clone(),
            source,
        }
    })?;
    Ok(ReportFiles {
        markdown,
        plots,
        headline: headline(&experiment),
    })
}

/// The relocations the statistics are over: those of successful runs, with their run.
fn samples(e: &Experiment) -> Vec<(u32, &RelocationResult)> {
    e.runs
        .iter()
        .filter(|r| r.ok)
        .flat_map(|r| r.relocations.iter().map(move |x| (r.run, x)))
        .collect()
}

fn values(
    samples: &[(u32, &RelocationResult)],
    f: impl Fn(&RelocationResult) -> Option<f64>,
) -> Vec<f64> {
    samples.iter().filter_map(|(_, x)| f(x)).collect()
}

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
fn utc(unix_us: u64) -> String {
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

    out.push_str("## Data transferred\n\n");
    out.push_str("| Measurement point | n | MIN (MB) | MAX (MB) | MEAN (MB) | STDEV (MB) | 90th percentile (MB) |\n|---|---:|---:|---:|---:|---:|---:|\n");
    stats_row(
        &mut out,
        "Bytes moved by the service module",
        &values(&s, |x| x.bytes_moved.map(|b| b as f64 / 1e6)),
    );
    out.push_str("\n(MB = 10⁶ bytes; the thesis gives no statistics for it.)\n\n");

    out.push_str(&flows_section(e));
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

const WIDTH: u32 = 1200;
const HEIGHT: u32 = 600;
const FONT: &str = "sans-serif";
/// Series colours (matplotlib's tab10).
const COLOURS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(23, 190, 207),
];
const FAILED: RGBColor = RGBColor(214, 39, 40);

/// Registers the compiled-in DejaVu Sans as `sans-serif` (once).
fn ensure_font() -> Result<(), ReportError> {
    static FONT_LOADED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    FONT_LOADED
        .get_or_init(|| {
            plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular())
                .and_then(|()| {
                    plotters::style::register_font(FONT, FontStyle::Bold, dejavu::sans::bold())
                })
                .map_err(|_| "DejaVu Sans is not a valid font".to_owned())
        })
        .clone()
        .map_err(ReportError::Font)
}

/// The title of a plot by its file stem.
fn plot_title(stem: &str) -> &'static str {
    match stem {
        "source-phases" => "Source edge cloud: INITIATE, VALIDATE, PREPARE, COMPLETE per run (cf. Figure 5.5, left)",
        "source-execute" => "Source edge cloud: EXECUTE per run (cf. Figure 5.5, right)",
        "target-phases" => "Target edge cloud: INITIATE, VALIDATE, PREPARE, COMPLETE per run (cf. Figure 5.6)",
        "target-execute" => "Target edge cloud: EXECUTE per run (cf. Figure 5.6)",
        "total-migration" => "Total migration time per run (cf. Figure 5.7)",
        "downtime" => "Service downtime per run (cf. Figure 5.8)",
        "downtime-cdf" => "Service downtime: cumulative distribution",
        "downtime-histogram" => "Service downtime: histogram",
        _ => "",
    }
}

/// One run's place on a per-run chart: its relocations' values per series.
struct Slot {
    run: u32,
    ok: bool,
    /// `[relocation][series]`.
    groups: Vec<Vec<Option<f64>>>,
}

/// Bars per run (grouped by series, one group per relocation), failed runs marked.
struct BarChart {
    stem: &'static str,
    series: Vec<String>,
    slots: Vec<Slot>,
}

/// Empirical CDF (or histogram) of one or more measures.
struct Distribution {
    stem: &'static str,
    histogram: bool,
    series: Vec<(String, Vec<f64>)>,
}

trait Chart {
    fn stem(&self) -> &'static str;
    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>>;
}

/// The top of a chart's y axis: room above the highest bar for the legend.
fn y_top(max: f64) -> f64 {
    if max.is_finite() && max > 0.0 {
        max * 1.3
    } else {
        1.0
    }
}

impl Chart for BarChart {
    fn stem(&self) -> &'static str {
        self.stem
    }

    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        root.fill(&WHITE)?;
        let last = self.slots.iter().map(|s| s.run).max().unwrap_or(1);
        let max = self
            .slots
            .iter()
            .flat_map(|s| s.groups.iter().flatten().flatten())
            .copied()
            .fold(0.0, f64::max);
        let mut chart = ChartBuilder::on(root)
            .caption(plot_title(self.stem), (FONT, 22))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(75)
            .build_cartesian_2d(0.5f64..f64::from(last) + 0.5, 0.0..y_top(max))?;
        let whole = |v: &f64| {
            if v.fract().abs() < 1e-9 {
                format!("{v:.0}")
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(usize::try_from(last.min(25)).unwrap_or(25))
            .x_label_formatter(&whole)
            .x_desc("run")
            .y_desc("time (ms)")
            .label_style((FONT, 15))
            .draw()?;
        let k = self.series.len().max(1);
        for (si, name) in self.series.iter().enumerate() {
            let colour = COLOURS[si % COLOURS.len()];
            let mut bars = Vec::new();
            for slot in self.slots.iter().filter(|s| s.ok) {
                let per = slot.groups.len().max(1);
                let width = 0.8 / (per * k) as f64;
                for (gi, g) in slot.groups.iter().enumerate() {
                    if let Some(v) = g.get(si).copied().flatten() {
                        let x0 = f64::from(slot.run) - 0.4 + (gi * k + si) as f64 * width;
                        bars.push(Rectangle::new(
                            [(x0, 0.0), (x0 + width, v)],
                            colour.filled(),
                        ));
                    }
                }
            }
            chart
                .draw_series(bars)?
                .label(name.as_str())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 6), (x + 12, y + 6)], colour.filled())
                });
        }
        let failed: Vec<u32> = self.slots.iter().filter(|s| !s.ok).map(|s| s.run).collect();
        if !failed.is_empty() {
            chart
                .draw_series(
                    failed
                        .iter()
                        .map(|r| Cross::new((f64::from(*r), 0.0), 7, FAILED.stroke_width(3))),
                )?
                .label("failed run")
                .legend(|(x, y)| Cross::new((x + 6, y), 6, FAILED.stroke_width(3)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font((FONT, 15))
            .draw()?;
        root.present()
    }
}

impl Chart for Distribution {
    fn stem(&self) -> &'static str {
        self.stem
    }

    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        root.fill(&WHITE)?;
        let all: Vec<f64> = self
            .series
            .iter()
            .flat_map(|(_, v)| v.iter().copied())
            .collect();
        let lo = all.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = all.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let (lo, hi) = if lo.is_finite() && hi > lo {
            let pad = (hi - lo) * 0.05;
            ((lo - pad).max(0.0), hi + pad)
        } else if lo.is_finite() {
            ((lo - 1.0).max(0.0), lo + 1.0)
        } else {
            (0.0, 1.0)
        };
        // Histogram bins: ⌈√n⌉ (1..=30) equal bins over the whole range.
        let n = self.series.iter().map(|(_, v)| v.len()).max().unwrap_or(0);
        let bins = ((n as f64).sqrt().ceil() as usize).clamp(1, 30);
        let width = (hi - lo) / bins as f64;
        let counts: Vec<Vec<usize>> = self
            .series
            .iter()
            .map(|(_, v)| {
                let mut c = vec![0usize; bins];
                for x in v {
                    let b = (((x - lo) / width).floor().max(0.0) as usize).min(bins - 1);
                    c[b] += 1;
                }
                c
            })
            .collect();
        let y_max = if self.histogram {
            counts.iter().flatten().copied().max().unwrap_or(1).max(1) as f64 * 1.25
        } else {
            1.0
        };
        let mut chart = ChartBuilder::on(root)
            .caption(plot_title(self.stem), (FONT, 22))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(75)
            .build_cartesian_2d(lo..hi, 0.0..y_max)?;
        let whole = |v: &f64| format!("{v:.0}");
        let fraction = |v: &f64| format!("{v:.1}");
        chart
            .configure_mesh()
            .y_label_formatter(if self.histogram { &whole } else { &fraction })
            .x_label_formatter(&whole)
            .x_desc("downtime (ms)")
            .y_desc(if self.histogram {
                "relocations"
            } else {
                "fraction of relocations ≤ x"
            })
            .label_style((FONT, 15))
            .draw()?;
        let k = self.series.len().max(1);
        for (si, (name, v)) in self.series.iter().enumerate() {
            let colour = COLOURS[si % COLOURS.len()];
            if self.histogram {
                let w = width / k as f64;
                let bars = counts[si]
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| **c > 0)
                    .map(|(b, c)| {
                        let x0 = lo + b as f64 * width + si as f64 * w;
                        Rectangle::new([(x0, 0.0), (x0 + w * 0.9, *c as f64)], colour.filled())
                    });
                chart
                    .draw_series(bars)?
                    .label(name.as_str())
                    .legend(move |(x, y)| {
                        Rectangle::new([(x, y - 6), (x + 12, y + 6)], colour.filled())
                    });
            } else {
                let mut sorted = v.clone();
                sorted.sort_by(f64::total_cmp);
                let m = sorted.len() as f64;
                let mut points = vec![(lo, 0.0)];
                for (i, x) in sorted.iter().enumerate() {
                    points.push((*x, i as f64 / m));
                    points.push((*x, (i + 1) as f64 / m));
                }
                points.push((hi, 1.0));
                chart
                    .draw_series(LineSeries::new(points, colour.stroke_width(2)))?
                    .label(name.as_str())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 14, y)], colour.stroke_width(2))
                    });
            }
        }
        chart
            .configure_series_labels()
            .position(if self.histogram {
                SeriesLabelPosition::UpperRight
            } else {
                SeriesLabelPosition::LowerRight
            })
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font((FONT, 15))
            .draw()?;
        root.present()
    }
}

/// Draws `chart` as `dir/<stem>.svg` and `dir/<stem>.png`.
fn render(chart: &impl Chart, dir: &Path) -> Result<Vec<PathBuf>, ReportError> {
    let svg = dir.join(format!("{}.svg", chart.stem()));
    let png = dir.join(format!("{}.png", chart.stem()));
    let plot_err = |path: &Path| {
        let path = path.to_owned();
        move |e: String| ReportError::Plot { path, message: e }
    };
    {
        let root = SVGBackend::new(&svg, (WIDTH, HEIGHT)).into_drawing_area();
        chart
            .draw(&root)
            .map_err(|e| plot_err(&svg)(e.to_string()))?;
    }
    {
        let root = BitMapBackend::new(&png, (WIDTH, HEIGHT)).into_drawing_area();
        chart
            .draw(&root)
            .map_err(|e| plot_err(&png)(e.to_string()))?;
    }
    Ok(vec![svg, png])
}

/// Draws every plot of `e` into `dir`.
pub fn plots(e: &Experiment, dir: &Path) -> Result<Vec<PathBuf>, ReportError> {
    ensure_font()?;
    let slots = |f: &dyn Fn(&RelocationResult) -> Vec<Option<f64>>| -> Vec<Slot> {
        e.runs
            .iter()
            .map(|r| Slot {
                run: r.run,
                ok: r.ok,
                groups: r.relocations.iter().map(f).collect(),
            })
            .collect()
    };
    use RelocationPhase::{Complete, Execute, Initiate, Prepare, Validate};
    let non_exec = [Initiate, Validate, Prepare, Complete];
    let names = |ps: &[RelocationPhase]| ps.iter().map(ToString::to_string).collect::<Vec<_>>();
    let has_capture = e
        .runs
        .iter()
        .flat_map(|r| &r.relocations)
        .any(|x| x.downtime_capture_ms.is_some());
    let mut downtime_series = vec!["UE gap recorder".to_owned()];
    if has_capture {
        downtime_series.push("packet capture".to_owned());
    }
    let bar_charts = [
        BarChart {
            stem: "source-phases",
            series: names(&non_exec),
            slots: slots(&|x| non_exec.iter().map(|p| x.source_ms.get(*p)).collect()),
        },
        BarChart {
            stem: "source-execute",
            series: names(&[Execute]),
            slots: slots(&|x| vec![x.source_ms.execute]),
        },
        BarChart {
            stem: "target-phases",
            series: names(&non_exec),
            slots: slots(&|x| non_exec.iter().map(|p| x.target_ms.get(*p)).collect()),
        },
        BarChart {
            stem: "target-execute",
            series: names(&[Execute]),
            slots: slots(&|x| vec![x.target_ms.execute]),
        },
        BarChart {
            stem: "total-migration",
            series: vec!["total migration time".to_owned()],
            slots: slots(&|x| vec![x.total_ms]),
        },
        BarChart {
            stem: "downtime",
            series: downtime_series,
            slots: slots(&|x| {
                let mut v = vec![x.downtime_ms];
                if has_capture {
                    v.push(x.downtime_capture_ms);
                }
                v
            }),
        },
    ];
    let mut files = Vec::new();
    for c in &bar_charts {
        files.extend(render(c, dir)?);
    }
    let s = samples(e);
    let mut dist = vec![("UE gap recorder".to_owned(), values(&s, |x| x.downtime_ms))];
    if has_capture {
        dist.push((
            "packet capture".to_owned(),
            values(&s, |x| x.downtime_capture_ms),
        ));
    }
    for histogram in [false, true] {
        let c = Distribution {
            stem: if histogram {
                "downtime-histogram"
            } else {
                "downtime-cdf"
            },
            histogram,
            series: dist.clone(),
        };
        files.extend(render(&c, dir)?);
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::tests::{failed_run, ok_run};
    use crate::results::{write_outputs, ExperimentMeta};

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn statistics_are_exact_on_small_inputs() {
        let s = Stats::of(&[4.0, 1.0, 3.0, 2.0, 5.0]).expect("stats");
        assert_eq!(s.n, 5);
        assert_eq!((s.min, s.max), (1.0, 5.0));
        assert!(close(s.mean, 3.0));
        // Sample variance of 1..5: 10 / 4 = 2.5.
        assert!(close(s.stdev, 2.5f64.sqrt()), "{}", s.stdev);
        // h = 0.9 · 4 = 3.6: 4 + 0.6 · (5 − 4).
        assert!(close(s.p90, 4.6), "{}", s.p90);
        let one = Stats::of(&[7.0]).expect("one");
        assert_eq!(
            (one.min, one.max, one.mean, one.stdev, one.p90),
            (7.0, 7.0, 7.0, 0.0, 7.0)
        );
        assert!(Stats::of(&[]).is_none());
        assert!(Stats::of(&[f64::NAN]).is_none());
        // 50 whole-ms values 1..=50: h = 44.1 → 45.1, one decimal as in the thesis's tables.
        let v: Vec<f64> = (1..=50).map(f64::from).collect();
        assert!(close(Stats::of(&v).expect("50").p90, 45.1));
        assert!(close(percentile(&[10.0, 20.0], 0.5), 15.0));
        assert!(close(percentile(&[10.0, 20.0], 1.0), 20.0));
        assert!(percentile(&[], 0.9).is_nan());
    }

    #[test]
    fn thesis_constants_are_the_tables() {
        assert_eq!(THESIS_SOURCE[3].mean, ThesisValue::Ms(2607.90));
        assert_eq!(THESIS_TARGET[1].mean, ThesisValue::BelowOneMs);
        assert_eq!(THESIS_TARGET[0].max, ThesisValue::Ms(22.0));
        assert_eq!(THESIS_TOTAL.mean.to_string(), "2835.26");
        assert_eq!(THESIS_DOWNTIME.p90.to_string(), "2622.81");
        assert_eq!(ThesisValue::BelowOneMs.to_string(), "< 1");
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/thesis.txt"),
        );
        // Where the thesis is beside the repository, the constants must match its lines.
        if let Ok(text) = text {
            let lines: Vec<&str> = text.lines().collect();
            let at = |n: usize| lines.get(n - 1).copied().unwrap_or_default();
            assert_eq!(
                at(1111),
                "| INITIATE | 19,00 | 85,00 | 39,66 | 14,60 | 57,30 |"
            );
            assert_eq!(at(1124), "| VALIDATE | < 1 | 3,00 | < 1 | < 1 | 1,00 |");
            assert_eq!(
                at(1135),
                "| Total migration time | 2649,00 | 3217,00 | 2835,26 | 122,31 | 2966,50 |"
            );
            assert_eq!(
                at(1136),
                "| Downtime | 1255,79 | 2909,97 | 1679,18 | 493,16 | 2622,81 |"
            );
        }
    }

    #[test]
    fn utc_formats_unix_microseconds() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400_000_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_700_000_000_123_456), "2023-11-14 22:13:20 UTC");
    }

    /// Three successful runs with known numbers and one failed run.
    fn experiment() -> Experiment {
        let runs = vec![
            ok_run(
                1,
                [1000, 100, 3000, 400_000, 5000],
                [10, 20, 30_000, 40_000, 50_000],
                410_000,
                100.0,
                Some(102.0),
            ),
            ok_run(
                2,
                [2000, 200, 3000, 500_000, 5000],
                [10, 20, 30_000, 40_000, 50_000],
                510_000,
                200.0,
                Some(201.0),
            ),
            failed_run(3, "restore failed at the target"),
            ok_run(
                4,
                [3000, 300, 3000, 600_000, 5000],
                [10, 20, 30_000, 40_000, 50_000],
                610_000,
                300.0,
                Some(299.5),
            ),
        ];
        Experiment {
            meta: ExperimentMeta::new(
                "synthetic",
                "scenarios/synthetic.toml",
                5,
                [("criu".to_owned(), "4.2".to_owned())].into(),
                Some("0123abc".into()),
            ),
            runs,
        }
    }

    #[test]
    fn markdown_has_the_thesis_tables_with_known_numbers() {
        let md = markdown_report(&experiment(), &[]);
        for want in [
            "# Experiment report: synthetic",
            "5 runs asked, 4 recorded — 3 succeeded, 1 failed, 1 not run.",
            "## Source edge cloud: time per relocation phase (thesis Table 5.4)",
            // INITIATE 1, 2, 3 ms: mean 2, stdev 1, P90 = 2 + 0.8 · 1.
            "| INITIATE | 3 | 1.00 | 3.00 | 2.00 | 1.00 | 2.80 |",
            "| INITIATE, thesis | 50 | 19.00 | 85.00 | 39.66 | 14.60 | 57.30 |",
            "| EXECUTE | 3 | 400.00 | 600.00 | 500.00 | 100.00 | 580.00 |",
            "| EXECUTE, thesis | 50 | 2438.00 | 3001.00 | 2607.90 | 111.09 | 2707.70 |",
            "## Target edge cloud: time per relocation phase (thesis Table 5.5)",
            "| VALIDATE | 3 | 0.02 | 0.02 | 0.02 | 0.00 | 0.02 |",
            "| VALIDATE, thesis | 50 | < 1 | 3.00 | < 1 | < 1 | 1.00 |",
            "| COMPLETE | 3 | 50.00 | 50.00 | 50.00 | 0.00 | 50.00 |",
            "| Total migration time | 3 | 410.00 | 610.00 | 510.00 | 100.00 | 590.00 |",
            "| Total migration time, thesis | 50 | 2649.00 | 3217.00 | 2835.26 | 122.31 | 2966.50 |",
            "| Downtime (UE gap recorder) | 3 | 100.00 | 300.00 | 200.00 | 100.00 | 280.00 |",
            "| Downtime (packet capture) | 3 | 102.00 | 299.50 | 200.83 |",
            "| Downtime, thesis | 50 | 1255.79 | 2909.97 | 1679.18 | 493.16 | 2622.81 |",
            "agree within 5 ms in all 3 relocations that have both (largest difference 2.00 ms, run 1)",
            "| Bytes moved by the service module | 3 | 1.00 | 1.00 | 1.00 | 0.00 | 1.00 |",
            "1 of 4 recorded runs failed:",
            "* run 3: restore failed at the target",
            "| 3 | – | – | – | – | – | – | – | – | FAILED |",
            "| 1 | 1 | ue1 | svc | 410.00 | 100.00 | 102.00 | 2.00 | 1000000 | ok |",
            "Tools: criu 4.2; testbed commit `0123abc`.",
        ] {
            assert!(md.contains(want), "missing `{want}` in\n{md}");
        }
    }

    #[test]
    fn peak_memory_is_the_highest_per_process_with_its_aim() {
        let mut e = experiment();
        let md = markdown_report(&e, &[]);
        // smo-x peaked at 9000 + run kB: the highest is run 4's, 9004 kB = 8.79 MB.
        assert!(md.contains("| smo-x | 8.8 | 30 | yes |"), "{md}");
        assert!(
            md.contains("Every process with an aim is within it."),
            "{md}"
        );
        e.runs[0].peak_rss_kb.insert("upf-a".into(), 25 * 1024);
        e.runs[1]
            .peak_rss_kb
            .insert("ovs-vswitchd@tb-edge-x".into(), 40 * 1024);
        let md = markdown_report(&e, &[]);
        assert!(md.contains("| upf-a | 25.0 | 20 | **NO** |"), "{md}");
        assert!(
            md.contains("| ovs-vswitchd@tb-edge-x | 40.0 | – | – |"),
            "{md}"
        );
        assert!(md.contains("Over the aim: upf-a."), "{md}");
        assert_eq!(memory_aim_mb("smo-y"), Some(SMO_AIM_MB));
        assert_eq!(memory_aim_mb("svcmod-x"), Some(NF_AIM_MB));
        assert_eq!(memory_aim_mb("ovsdb-server@tb-edge-y"), None);
        assert!(md.contains("## Flows\n\nNot recorded."), "{md}");
        let flow = |ok| crate::results::FlowResult {
            ue: "ue1".into(),
            kind: "stream".into(),
            target: "svc".into(),
            address: None,
            start_s: 0.0,
            duration_s: 1.0,
            ok,
            error: None,
            report: None,
        };
        e.runs[0].flows = vec![flow(true)];
        e.runs[1].flows = vec![flow(false)];
        assert!(markdown_report(&e, &[]).contains("| stream | 2 | 1 |"));
        for r in &mut e.runs {
            r.peak_rss_kb.clear();
        }
        assert!(markdown_report(&e, &[]).contains("## Peak memory per process\n\nNot recorded."));
    }

    #[test]
    fn disagreeing_or_missing_capture_is_said() {
        let mut e = experiment();
        e.runs[1].relocations[0].downtime_capture_ms = Some(250.0);
        let md = markdown_report(&e, &[]);
        assert!(
            md.contains("do NOT agree within 5 ms: 1 of 3 relocations that have both differ by more (largest difference 50.00 ms, run 2)"),
            "{md}"
        );
        for r in &mut e.runs {
            for x in &mut r.relocations {
                x.downtime_capture_ms = None;
            }
        }
        let md = markdown_report(&e, &[]);
        assert!(md.contains("cannot be compared"), "{md}");
        assert!(
            md.contains("| Downtime (packet capture) | 0 | – | – | – | – | – |"),
            "{md}"
        );
    }

    #[test]
    fn report_of_a_directory_writes_markdown_and_every_plot() {
        let dir = std::env::temp_dir().join(format!("tb-report-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let e = experiment();
        write_outputs(&dir, &e).expect("write results");
        let files = report(&dir).expect("report");
        let md = std::fs::read_to_string(&files.markdown).expect("report.md");
        assert!(md.contains("1 of 4 recorded runs failed"), "{md}");
        assert!(md.contains("![Total migration time per run (cf. Figure 5.7)](total-migration.svg) ([PNG](total-migration.png))"), "{md}");
        let stems = [
            "source-phases",
            "source-execute",
            "target-phases",
            "target-execute",
            "total-migration",
            "downtime",
            "downtime-cdf",
            "downtime-histogram",
        ];
        assert_eq!(files.plots.len(), stems.len() * 2);
        for stem in stems {
            let png = std::fs::read(dir.join(format!("{stem}.png"))).expect("png");
            assert!(png.len() > 1000, "{stem}.png is {} bytes", png.len());
            assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{stem}.png magic");
            let svg = std::fs::read_to_string(dir.join(format!("{stem}.svg"))).expect("svg");
            assert!(
                svg.contains("<svg") && svg.trim_end().ends_with("</svg>"),
                "{stem}.svg"
            );
            assert!(
                svg.contains(plot_title(stem).split(' ').next().unwrap_or("?")),
                "{stem} title"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn report_with_only_failed_runs_still_works() {
        let dir = std::env::temp_dir().join(format!("tb-report-failed-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut e = experiment();
        e.runs = vec![failed_run(1, "a"), failed_run(2, "b\nsecond line")];
        write_outputs(&dir, &e).expect("write");
        let files = report(&dir).expect("report");
        let md = std::fs::read_to_string(&files.markdown).expect("md");
        assert!(md.contains("2 of 2 recorded runs failed"), "{md}");
        assert!(md.contains("* run 2: b second line"), "{md}");
        assert!(md.contains("| INITIATE | 0 | – | – | – | – | – |"), "{md}");
        assert_eq!(files.plots.len(), 16);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

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

use std::path::{Path, PathBuf};

mod chaos;
mod plots;
mod tables;

pub use chaos::{chaos_headline, chaos_section};
pub use plots::plots;
pub use tables::{headline, markdown_report, memory_aim_mb, NF_AIM_MB, SMO_AIM_MB};

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

#[cfg(test)]
mod tests {
    use super::plots::plot_title;
    use super::tables::utc;
    use super::*;
    use crate::results::tests::{failed_run, ok_run};
    use crate::results::{write_outputs, ExperimentMeta};
    use model::smo::RelocationPhase;

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
    fn kills_are_listed_with_their_phase_pid_or_why_not() {
        let mut e = experiment();
        assert!(
            !markdown_report(&e, &[]).contains("## Kills"),
            "no kills, no section"
        );
        let kill = |process: &str| crate::results::KillResult {
            process: process.into(),
            node: Some("edge-y".into()),
            at_s: Some(3.0),
            phase: Some(RelocationPhase::Execute),
            after_ms: Some(40),
            relocation_id: Some("smo-x-1".into()),
            phase_seen_unix_us: Some(1_000_005_000),
            phase_started_unix_us: Some(1_000_000_000),
            killed_unix_us: Some(1_000_045_250),
            pid: Some(4242),
            error: None,
        };
        e.runs[0].kills = vec![
            kill("smo-y"),
            crate::results::KillResult {
                error: Some("no relocation begun during the run was in EXECUTE".into()),
                pid: None,
                killed_unix_us: None,
                ..kill("svcmod-y")
            },
        ];
        let md = markdown_report(&e, &[]);
        for want in [
            "## Kills",
            "| 1 | smo-y | edge-y | 3 | EXECUTE | 40 | smo-x-1 | 45.25 | 4242 | killed |",
            "| 1 | svcmod-y | edge-y | 3 | EXECUTE | 40 | smo-x-1 | – | – | NOT KILLED: no relocation begun during the run was in EXECUTE |",
        ] {
            assert!(md.contains(want), "missing `{want}` in\n{md}");
        }
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

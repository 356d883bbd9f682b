//! The report's plots (thesis Figures 5.5–5.8, the downtime histogram and CDF) as SVG and PNG,
//! drawn with plotters and a compiled-in font.

use model::smo::RelocationPhase;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

use super::*;

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
pub(super) fn plot_title(stem: &str) -> &'static str {
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

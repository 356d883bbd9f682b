//! Privileged end-to-end test of the experiment runner and the report: a tiny scenario (one UE,
//! the streamer at edge X, an 8 s stream, a handover to site B at 3 s, two runs) on its own
//! topology (`ci-exp`, namespaces `tbex-*`) is run with the real `testbed experiment run`, then
//! reported with `testbed report`; the raw results, the CSV, the report's statistics and its
//! downtime agreement line must agree with each other; a rerun with `--runs 3` adds run 3 only;
//! a Ctrl-C during run 4 records nothing for it and leaves nothing behind.
//!
//! `#[ignore]`d (a plain `cargo test` counts it as skipped); `scripts/test` runs it as root after
//! `cargo build --bins` (the testbed binary starts the other binaries from its own directory).

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testbed::pcap::Pcap;
use testbed::report::{Stats, DOWNTIME_AGREEMENT_MS};
use testbed::results::{self, RunResult};

const NAME: &str = "ci-exp";
const PREFIX: &str = "tbex";

const TOPOLOGY: &str = r#"
name = "ci-exp"
prefix = "tbex"
ues = 1

[[sites]]
name = "a"
edge = "x"

[[sites]]
name = "b"
edge = "y"
"#;

const SCENARIO: &str = r#"
[scenario]
name = "tbex"
description = "CI: one UE streams from the streamer at edge X for 8 s and hands over to site B at 3 s"
topology = "tbex-topology.toml"
runs = 2
notify = "LATE"
observe_s = 2

[[ue]]
name = "ue1"

[[service]]
id = "streamer"
edge = "edge-x"
backend = "criu"
kind = "streamer"
serves = ["ue1"]

[[traffic]]
ue = "ue1"
kind = "stream"
target = "streamer"
start_s = 0
duration_s = 8

[[timeline]]
at_s = 3
action = "handover"
ue = "ue1"
to = "site-b"
"#;

/// Removes the testbed and the temporary directory, also when the test fails.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        testbed::topo::down(NAME, Some(PREFIX));
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn testbed_bin() -> &'static str {
    env!("CARGO_BIN_EXE_testbed")
}

/// Runs `testbed ARGS`, echoing its output; (success, stdout, stderr).
fn testbed(args: &[&str]) -> (bool, String, String) {
    let (code, stdout, stderr) = common::testbed_cli(args);
    (code == Some(0), stdout, stderr)
}

fn run_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir.join("runs"))
        .expect("runs/")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json"))
        .collect();
    v.sort();
    v
}

/// Nothing of the testbed or the experiment in `out` is left ([`common::assert_nothing_left`]).
fn assert_nothing_left(out: &Path) {
    common::assert_nothing_left(NAME, PREFIX, out);
}

fn stat_row(label: &str, v: &[f64]) -> String {
    let s = Stats::of(v).unwrap_or_else(|| panic!("no values for {label}"));
    format!(
        "| {label} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
        s.n, s.min, s.max, s.mean, s.stdev, s.p90
    )
}

#[test]
#[ignore = "privileged: needs root; run with --include-ignored as root"]
fn an_experiment_runs_is_recorded_reported_and_resumes() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "SKIPPED an_experiment_runs_is_recorded_reported_and_resumes: needs root (namespaces, TUN, OVS, CRIU, tcpdump); run `scripts/test` as root"
        );
        return;
    }
    let tmp = std::env::temp_dir().join(format!("tbex-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).expect("tmp dir");
    testbed::topo::down(NAME, Some(PREFIX));
    let _cleanup = Cleanup(tmp.clone());
    std::fs::write(tmp.join("tbex-topology.toml"), TOPOLOGY).expect("topology");
    let scenario = tmp.join("tbex.toml");
    std::fs::write(&scenario, SCENARIO).expect("scenario");
    let out = tmp.join("out");
    let (scen, outs) = (
        scenario.to_str().expect("utf-8"),
        out.to_str().expect("utf-8"),
    );

    // Two runs.
    let t = Instant::now();
    let (ok, stdout, stderr) = testbed(&["experiment", "run", scen, "--out", outs]);
    assert!(ok, "experiment run failed:\n{stdout}\n{stderr}");
    eprintln!("two runs took {:.0} s", t.elapsed().as_secs_f64());
    assert!(stderr.contains("run 2/2"), "no progress line: {stderr}");
    assert_nothing_left(&out);
    assert_eq!(run_files(&out), ["001.json", "002.json"]);
    let runs = results::read_runs(&out).expect("runs/");
    let raw = results::read_raw(&out).expect("raw.json");
    assert_eq!(raw.runs, runs, "raw.json = runs/");
    assert_eq!(
        results::read_csv(&out).expect("runs.csv"),
        results::csv_rows(&runs),
        "runs.csv = runs/"
    );
    let m = &raw.meta;
    assert_eq!((m.scenario.as_str(), m.runs_asked), ("tbex", 2));
    assert!(m.finished_unix_us.is_some());
    assert!(m.scenario_text.as_deref() == Some(SCENARIO));
    assert!(m.machine.kernel.starts_with("Linux"), "{:?}", m.machine);
    for tool in ["criu", "ovs", "tcpdump"] {
        assert!(
            m.tools.contains_key(tool),
            "no {tool} version: {:?}",
            m.tools
        );
    }
    assert!(m.git_commit.is_some(), "no git commit");
    for r in &runs {
        check_run(r, &out);
    }

    // The report, against the raw data.
    let (ok, stdout, stderr) = testbed(&["report", outs]);
    assert!(ok, "report failed:\n{stdout}\n{stderr}");
    let md = std::fs::read_to_string(out.join("report.md")).expect("report.md");
    let x: Vec<_> = runs.iter().flat_map(|r| &r.relocations).collect();
    let totals: Vec<f64> = x.iter().filter_map(|x| x.total_ms).collect();
    let ue: Vec<f64> = x.iter().filter_map(|x| x.downtime_ms).collect();
    let cap: Vec<f64> = x.iter().filter_map(|x| x.downtime_capture_ms).collect();
    assert_eq!((totals.len(), ue.len(), cap.len()), (2, 2, 2));
    for row in [
        stat_row("Total migration time", &totals),
        stat_row("Downtime (UE gap recorder)", &ue),
        stat_row("Downtime (packet capture)", &cap),
    ] {
        assert!(md.contains(&row), "report.md lacks `{row}`:\n{md}");
        assert!(
            stdout.contains(&row),
            "the headline lacks `{row}`:\n{stdout}"
        );
    }
    let (worst_run, worst) = runs
        .iter()
        .flat_map(|r| r.relocations.iter().map(move |x| (r.run, x)))
        .filter_map(|(run, x)| Some((run, (x.downtime_ms? - x.downtime_capture_ms?).abs())))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .expect("both measures");
    let line = if worst <= DOWNTIME_AGREEMENT_MS {
        format!("agree within {DOWNTIME_AGREEMENT_MS} ms in all 2 relocations that have both (largest difference {worst:.2} ms, run {worst_run})")
    } else {
        format!("do NOT agree within {DOWNTIME_AGREEMENT_MS} ms")
    };
    assert!(md.contains(&line), "report.md lacks `{line}`:\n{md}");
    assert!(md.contains("| stream | 2 | 2 |"), "flows: {md}");
    assert!(md.contains("## Peak memory per process"), "{md}");
    assert!(md.contains("| smo-x |"), "{md}");
    eprintln!(
        "downtime UE/capture: {:?} / {:?} ms; total {:?} ms; largest difference {worst:.2} ms",
        ue, cap, totals
    );
    for (name, kb) in results::peak_rss(&runs) {
        eprintln!("peak RSS {name}: {:.1} MB", kb as f64 / 1024.0);
    }
    for stem in [
        "source-phases",
        "source-execute",
        "target-phases",
        "target-execute",
        "total-migration",
        "downtime",
        "downtime-cdf",
        "downtime-histogram",
    ] {
        let svg = std::fs::read_to_string(out.join(format!("{stem}.svg"))).expect("svg");
        assert!(svg.contains("<svg") && svg.len() > 1000, "{stem}.svg");
        let png = std::fs::read(out.join(format!("{stem}.png"))).expect("png");
        assert!(
            png.len() > 1000 && png.starts_with(b"\x89PNG"),
            "{stem}.png"
        );
        assert!(
            stdout.contains(&format!("{stem}.svg")),
            "{stem}.svg not listed"
        );
    }

    // Resume: --runs 3 adds run 3 only (and --keep leaves the testbed up).
    let before: Vec<Vec<u8>> = ["001.json", "002.json"]
        .iter()
        .map(|f| std::fs::read(out.join("runs").join(f)).expect("run file"))
        .collect();
    let (ok, stdout, stderr) = testbed(&[
        "experiment",
        "run",
        scen,
        "--runs",
        "3",
        "--out",
        outs,
        "--keep",
    ]);
    assert!(ok, "resumed run failed:\n{stdout}\n{stderr}");
    assert!(
        stderr.contains("1 run(s) to do of 3 (2 recorded)"),
        "{stderr}"
    );
    assert!(stderr.contains("stays up (--keep)"), "{stderr}");
    assert!(Path::new(testbed::plan::STATE_ROOT).join(NAME).exists());
    assert_eq!(run_files(&out), ["001.json", "002.json", "003.json"]);
    for (f, b) in ["001.json", "002.json"].iter().zip(&before) {
        assert_eq!(
            &std::fs::read(out.join("runs").join(f)).expect("run file"),
            b,
            "{f} changed on resume"
        );
    }
    let raw = results::read_raw(&out).expect("raw.json");
    assert_eq!(raw.meta.runs_asked, 3);
    assert_eq!(raw.runs.len(), 3);
    check_run(&raw.runs[2], &out);

    // --reuse refuses a testbed that is not the scenario's, then takes the one kept up (its UE
    // still at site B from run 3) and leaves it up.
    let early = tmp.join("tbex-early.toml");
    std::fs::write(
        &early,
        SCENARIO.replace("notify = \"LATE\"", "notify = \"EARLY\""),
    )
    .expect("scenario");
    let other = tmp.join("out-early");
    let (ok, _, stderr) = testbed(&[
        "experiment",
        "run",
        early.to_str().expect("utf-8"),
        "--out",
        other.to_str().expect("utf-8"),
        "--reuse",
    ]);
    assert!(!ok);
    assert!(
        stderr.contains(
            "is up but not for this scenario: its SMOs subscribe to LATE, the scenario asks EARLY"
        ),
        "{stderr}"
    );
    let (ok, stdout, stderr) = testbed(&[
        "experiment",
        "run",
        scen,
        "--runs",
        "4",
        "--out",
        outs,
        "--reuse",
    ]);
    assert!(ok, "reused run failed:\n{stdout}\n{stderr}");
    assert!(
        stderr.contains("using testbed `ci-exp` (--reuse)"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("is down"),
        "--reuse must not take it down: {stderr}"
    );
    check_run(&results::read_raw(&out).expect("raw").runs[3], &out);
    let (ok, _, _) = testbed(&["down", "--name", NAME]);
    assert!(ok, "testbed down");
    assert_nothing_left(&out);

    // Ctrl-C during run 5: nothing recorded for it, nothing left behind.
    let mut child = Command::new(testbed_bin())
        .args(["experiment", "run", scen, "--runs", "5", "--out", outs])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn testbed");
    let err = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            if l.starts_with("run 5/5") {
                let _ = tx.send(());
            }
            all.push_str(&l);
            all.push('\n');
        }
        all
    });
    let started = rx.recv_timeout(Duration::from_secs(120)).is_ok();
    std::thread::sleep(Duration::from_secs(2));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid")),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("SIGINT");
    let status = child.wait().expect("wait");
    let log = reader.join().expect("stderr reader");
    eprintln!("$ testbed experiment run … --runs 5 (interrupted)\n{log}");
    assert!(started, "run 5 never started");
    assert!(!status.success(), "an interrupted experiment must fail");
    assert!(log.contains("interrupted: 4 of 5 runs recorded"), "{log}");
    assert_eq!(
        run_files(&out),
        ["001.json", "002.json", "003.json", "004.json"]
    );
    assert_nothing_left(&out);

    // A run that fails is recorded with its error, and the experiment goes on: a second stream
    // flow asks for 20 ms chunks, which the services do not send; beside it an iperf3 flow to the
    // DN (through GTP-U, across the handover) works.
    let failing = tmp.join("tbex-fail.toml");
    std::fs::write(
        &failing,
        SCENARIO.replace(
            "[[timeline]]",
            "[[traffic]]\nue = \"ue1\"\nkind = \"iperf3\"\ntarget = \"dn\"\nstart_s = 0\nduration_s = 6\nparams = { bitrate = \"20M\" }\n\n\
             [[traffic]]\nue = \"ue1\"\nkind = \"stream\"\ntarget = \"streamer\"\nstart_s = 0\nduration_s = 8\nparams = { interval_ms = 20 }\n\n[[timeline]]",
        ),
    )
    .expect("scenario");
    let out2 = tmp.join("out-fail");
    let outs2 = out2.to_str().expect("utf-8");
    let (ok, stdout, _) = testbed(&[
        "experiment",
        "run",
        failing.to_str().expect("utf-8"),
        "--out",
        outs2,
        "--no-pcap-keep",
    ]);
    assert!(!ok, "an experiment with failed runs exits non-zero");
    assert!(
        stdout.contains("2 of 2 runs recorded (0 ok, 2 failed"),
        "{stdout}"
    );
    let raw = results::read_raw(&out2).expect("raw.json");
    assert_eq!(raw.runs.len(), 2);
    for r in &raw.runs {
        assert!(!r.ok);
        let e = r.error.as_deref().unwrap_or_default();
        assert!(
            e.contains("interval_ms = 20 is not supported"),
            "run {}: {e}",
            r.run
        );
        let iperf = r
            .flows
            .iter()
            .find(|f| f.kind == "iperf3")
            .expect("the iperf3 flow's result");
        assert!(iperf.ok, "{iperf:#?}");
        let bps = iperf
            .report
            .as_ref()
            .and_then(|v| v["receivedBitsPerSecond"].as_f64())
            .unwrap_or(0.0);
        assert!(bps > 1e6, "iperf3 through GTP-U: {bps} bit/s");
        // Everything else of the run was still measured; the capture was not kept.
        assert_eq!(r.relocations.len(), 1, "{r:#?}");
        assert!(r.relocations[0].downtime_capture_ms.is_some());
        assert!(r.flows.iter().any(|f| f.kind == "stream" && f.ok));
        assert!(r.captures.is_empty());
    }
    let pcaps = std::fs::read_dir(out2.join("runs"))
        .expect("runs/")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".pcap"))
        .count();
    assert_eq!(pcaps, 0, "--no-pcap-keep");
    let (ok, _, _) = testbed(&["report", outs2]);
    assert!(ok);
    let md = std::fs::read_to_string(out2.join("report.md")).expect("report.md");
    assert!(md.contains("2 of 2 recorded runs failed"), "{md}");
    assert_nothing_left(&out2);
}

/// One recorded run: ok, with every Table 4.1 measurement point, the handover timeline, both
/// downtimes, the flow's report, a kept capture and the processes' peak memory.
fn check_run(r: &RunResult, out: &Path) {
    assert!(r.ok, "run {} failed: {:?}\n{r:#?}", r.run, r.error);
    assert_eq!(r.handovers.len(), 1, "{r:#?}");
    let h = &r.handovers[0];
    assert!(!h.timeline.is_empty(), "no handover timeline");
    assert_eq!(r.relocations.len(), 1, "{r:#?}");
    let x = &r.relocations[0];
    assert_eq!(x.service_id, "streamer");
    assert_eq!(
        h.relocation_id.as_deref(),
        x.source.as_ref().map(|s| s.relocation_id.as_str())
    );
    for (side, p) in [("source", &x.source_ms), ("target", &x.target_ms)] {
        for phase in model::smo::RelocationPhase::SUCCESS_PATH {
            assert!(p.get(phase).is_some(), "run {}: no {side} {phase}", r.run);
        }
    }
    assert!(x.total_ms.is_some_and(|t| t > 0.0));
    assert!(x.bytes_moved.is_some_and(|b| b > 0));
    let steps = x
        .source
        .as_ref()
        .and_then(|s| s.execute.as_ref())
        .map(|e| e.steps.len())
        .unwrap_or(0);
    assert!(steps > 0, "no module steps");
    let (d, c) = (
        x.downtime_ms.expect("UE-side downtime"),
        x.downtime_capture_ms.expect("capture downtime"),
    );
    assert!(
        d > 10.0 && c > 10.0,
        "downtimes {d} / {c} ms: the migration froze the service"
    );
    assert_eq!(r.flows.len(), 1);
    let f = &r.flows[0];
    assert!(f.ok, "{f:?}");
    assert_eq!(
        f.report.as_ref().and_then(|v| v["intact"].as_bool()),
        Some(true)
    );
    assert_eq!(r.captures, [format!("{:03}-ue1.pcap", r.run)]);
    let bytes = std::fs::read(out.join("runs").join(&r.captures[0])).expect("capture");
    let p = Pcap::parse(&bytes).expect("pcap");
    assert_eq!(p.header.linktype, testbed::pcap::LINKTYPE_RAW);
    assert!(
        p.records.len() > 100,
        "{} packets captured",
        p.records.len()
    );
    for name in ["smo-x", "smo-y", "svcmod-x", "ue1", "smf"] {
        assert!(
            r.peak_rss_kb.get(name).is_some_and(|kb| *kb > 0),
            "no peak RSS of {name}: {:?}",
            r.peak_rss_kb
        );
    }
}

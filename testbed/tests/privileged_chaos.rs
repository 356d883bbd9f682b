//! Privileged end-to-end tests of scripted kills and the chaos experiment, each on its own
//! topology, with the real `testbed experiment run` and `testbed report`:
//!
//! * `chaos-short` (15 seeded events: handovers of ue1 and SIGKILLs of smo-y, svcmod-y, the SMF)
//!   on `ci-chaos` (namespaces `tbch-*`): the run plays exactly the schedule its seed gives, at
//!   its times; every kill names its PID or why not; the samples are kept and the recorded
//!   verdict is what the judge makes of them; the same samples judged with a 1 ms bound are
//!   violations (the verdict can fail on real samples); the report shows the events, the
//!   violations by kind and the time to converge; nothing is left behind. It asserts what holds
//!   always and prints what the verdict found. With the SMO's reconciler and the modules' and
//!   SMF's crash safety merged most runs find no violation, but not every one (on 2026-12-08, 1
//!   of 10 ended with the service stranded at edge-y behind a RUNNING target record): the
//!   assertion "no violation and converged at the end" waits for that to be fixed.
//! * a `[[timeline]]` kill of smo-y 20 ms into EXECUTE on `ci-kill` (`tbkl-*`): the runner waits
//!   for the relocation the handover triggered to be in EXECUTE, kills, and records the PID, the
//!   relocation and how far into the phase it landed.
//!
//! `#[ignore]`d; run as root after `cargo build --workspace --bins`:
//! `flock -o /work/locks/testbed-e2e.lock cargo test -p testbed --test privileged_chaos --
//! --include-ignored`.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use testbed::chaos::judge::Expect;
use testbed::chaos::{self, ChaosAction, Sample, ViolationKind};
use testbed::results::{self, RunResult};

/// The two tests bring up testbeds of their own; one at a time on a 2-core machine.
static SERIAL: Mutex<()> = Mutex::new(());

/// A two-site topology named `name` with namespaces `prefix-*` and one UE.
fn topology(name: &str, prefix: &str) -> String {
    format!(
        "name = \"{name}\"\nprefix = \"{prefix}\"\nues = 1\n\n[[sites]]\nname = \"a\"\nedge = \"x\"\n\n[[sites]]\nname = \"b\"\nedge = \"y\"\n"
    )
}

/// Removes the testbed and the temporary directory, also when the test fails.
struct Cleanup(&'static str, &'static str, PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        testbed::topo::down(self.0, Some(self.1));
        let _ = std::fs::remove_dir_all(&self.2);
    }
}

/// A fresh temporary directory with the topology file `<name>-topology.toml`, the scenario
/// `scenario` (its `topology` pointed at that file) and the cleanup guard.
fn prepare(name: &'static str, prefix: &'static str, scenario: &str) -> (PathBuf, Cleanup) {
    let tmp = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).expect("tmp dir");
    testbed::topo::down(name, Some(prefix));
    let guard = Cleanup(name, prefix, tmp.clone());
    let topo_file = format!("{name}-topology.toml");
    std::fs::write(tmp.join(&topo_file), topology(name, prefix)).expect("topology");
    let text = scenario.replace(
        "topology = \"two-site\"",
        &format!("topology = \"{topo_file}\""),
    );
    assert_ne!(text, scenario, "the scenario names the two-site topology");
    let path = tmp.join("scenario.toml");
    std::fs::write(&path, text).expect("scenario");
    (path, guard)
}

/// `testbed experiment run SCENARIO --out OUT`: it must run (exit 0: every run ok; 2: runs
/// failed and are recorded) and leave nothing; the run recorded.
fn run_experiment(name: &str, prefix: &str, scenario: &Path, out: &Path) -> RunResult {
    let t = Instant::now();
    let (code, stdout, stderr) = common::testbed_cli(&[
        "experiment",
        "run",
        scenario.to_str().expect("utf-8"),
        "--out",
        out.to_str().expect("utf-8"),
    ]);
    eprintln!(
        "the experiment took {:.0} s (exit {code:?})",
        t.elapsed().as_secs_f64()
    );
    assert!(
        matches!(code, Some(0 | 2)),
        "experiment run did not run:\n{stdout}\n{stderr}"
    );
    common::assert_nothing_left(name, prefix, out);
    let mut runs = results::read_runs(out).expect("runs/");
    assert_eq!(runs.len(), 1, "one run recorded");
    let r = runs.remove(0);
    assert_eq!(
        code == Some(0),
        r.ok,
        "exit code and the run's verdict agree"
    );
    r
}

fn report(out: &Path) -> (String, String) {
    let (code, stdout, stderr) = common::testbed_cli(&["report", out.to_str().expect("utf-8")]);
    assert_eq!(code, Some(0), "report failed:\n{stdout}\n{stderr}");
    let md = std::fs::read_to_string(out.join("report.md")).expect("report.md");
    (md, stdout)
}

#[test]
#[ignore = "privileged: needs root; run with --include-ignored as root"]
fn a_chaos_run_plays_its_seeded_schedule_and_judges_it_from_the_samples() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    common::require_root();
    let (name, prefix) = ("ci-chaos", "tbch");
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/chaos-short.toml"),
    )
    .expect("chaos-short.toml");
    let (scenario, guard) = prepare(name, prefix, &shipped);
    let out = guard.2.join("out");
    let t = Instant::now();
    let r = run_experiment(name, prefix, &scenario, &out);
    let took = t.elapsed();
    let c = r.chaos.as_ref().expect("a chaos result");

    // Exactly the schedule its seed gives, each event at (or after) its time.
    let (sc, _) = testbed::experiment::load(&scenario).expect("scenario");
    let spec = sc.chaos.clone().expect("[chaos]");
    assert_eq!(c.seed, spec.run_seed(1));
    let sites = ["site-a".to_owned(), "site-b".to_owned()];
    let planned = chaos::schedule(&spec, c.seed, &sites, "site-a");
    assert_eq!(planned.len(), 15);
    let ran: Vec<&ChaosAction> = c.events.iter().map(|e| &e.action).collect();
    assert_eq!(ran, planned.iter().map(|e| &e.action).collect::<Vec<_>>());
    for (e, p) in c.events.iter().zip(&planned) {
        assert_eq!(e.due_ms, c.start_ms + p.at_ms as f64, "event {}", e.seq);
        assert!(
            e.started_ms >= e.due_ms - 1.0,
            "event {} early: {e:?}",
            e.seq
        );
        assert!(e.done_ms >= e.started_ms);
        match &e.action {
            ChaosAction::Kill { process } => {
                let k = e.kill.as_ref().expect("a kill's record");
                assert_eq!(&k.process, process);
                assert!(
                    k.pid.is_some() != k.error.is_some(),
                    "a kill has a PID or says why not: {k:?}"
                );
            }
            ChaosAction::Handover { .. } => assert!(e.kill.is_none()),
        }
    }
    assert_eq!((c.ue.as_str(), c.service_id.as_str()), ("ue1", "streamer"));

    // The samples are kept, in order, and the recorded verdict is the judge's of them.
    let file = out
        .join("runs")
        .join(c.samples_file.as_deref().expect("samples kept"));
    let samples: Vec<Sample> =
        serde_json::from_slice(&std::fs::read(&file).expect("samples")).expect("samples parse");
    let span = c.events.last().map_or(0.0, |e| e.done_ms) - c.start_ms;
    assert!(
        samples.len() as f64 >= span / c.sample_ms as f64 / 2.0,
        "{} samples over {span:.0} ms",
        samples.len()
    );
    assert!(samples.windows(2).all(|w| w[0].at_ms < w[1].at_ms));
    assert!(samples.iter().all(|s| s.edges.len() == 2));
    assert!(
        samples.last().is_some_and(|s| s.stream_records > 0),
        "the stream delivered nothing at all"
    );
    let expect = Expect {
        service_id: c.service_id.clone(),
        service_ip: std::net::Ipv4Addr::new(20, 0, 0, 100),
        edge_of_site: [("site-a", "edge-x"), ("site-b", "edge-y")]
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
            .into(),
        bound_ms: c.bound_ms,
        delivering_within_ms: Expect::delivering_within(c.sample_ms as f64),
    };
    let times: Vec<_> = c.events.iter().map(|e| e.times()).collect();
    let corrupt = c.stream.as_ref().map_or(0, |s| s.corrupt_records);
    let again = chaos::judge(&expect, &times, &samples, c.start_ms, corrupt);
    assert_eq!(again, c.verdict, "the recorded verdict is the judge's");
    // The verdict can fail on these very samples: with a 1 ms bound no event converges in
    // time and every 100 ms between samples is a stream gap.
    let strict = chaos::judge(
        &Expect {
            bound_ms: 1.0,
            ..expect.clone()
        },
        &times,
        &samples,
        c.start_ms,
        corrupt,
    );
    let kinds = strict.by_kind();
    assert!(
        kinds.contains_key(&ViolationKind::NotConverged)
            && kinds.contains_key(&ViolationKind::StreamGap),
        "a 1 ms bound must be violated: {kinds:?}"
    );
    // The run is ok exactly when the verdict found nothing.
    assert_eq!(
        r.ok,
        c.verdict.violations.is_empty() && c.stream_error.is_none(),
        "{:?}",
        r.error
    );
    if !c.verdict.violations.is_empty() {
        assert!(
            r.error.as_deref().is_some_and(|e| e.contains("violation")),
            "{:?}",
            r.error
        );
    }

    // The report shows it.
    let (md, headline) = report(&out);
    for want in [
        "## Chaos: invariants and time to converge",
        "## Chaos runs",
        &format!("| 1 | {} | 15 |", c.seed),
        "<details><summary>Run 1: the 15 events",
    ] {
        assert!(md.contains(want), "report.md lacks `{want}`:\n{md}");
    }
    assert!(headline.contains("## Chaos: invariants"), "{headline}");
    let violations = c.verdict.violations.len();
    assert!(
        md.contains(&format!("\n| {violations} | ")),
        "the report counts {violations} violation(s):\n{md}"
    );

    // What it found, for the record.
    let (conv, sup, not) = c.verdict.counts();
    let mut t_conv = c.verdict.convergence_ms();
    t_conv.sort_by(f64::total_cmp);
    eprintln!(
        "chaos-short (seed {}): {} events ({} failed actions), {conv} converged (p50 {:.0} ms, p99 {:.0} ms), {sup} superseded, {not} not converged; violations {:?}; at the end: {:?}; stream: {:?} reconnects, {:?} corrupt; whole test {:.0} s",
        c.seed,
        c.events.len(),
        c.events.iter().filter(|e| e.error.is_some()).count(),
        testbed::report::percentile(&t_conv, 0.5),
        testbed::report::percentile(&t_conv, 0.99),
        c.verdict.by_kind(),
        c.verdict.final_state,
        c.stream.as_ref().map(|s| s.reconnects),
        c.stream.as_ref().map(|s| s.corrupt_records),
        took.as_secs_f64()
    );
    for e in c.events.iter().filter(|e| e.error.is_some()) {
        eprintln!(
            "  event {} ({}): {}",
            e.seq,
            e.action,
            e.error.as_deref().unwrap_or_default()
        );
    }
    for v in &c.verdict.violations {
        eprintln!(
            "  violation: {} from {:.0} ms: {}",
            v.kind,
            v.from_ms - c.start_ms,
            v.detail
        );
    }
}

const KILL_SCENARIO: &str = r#"
[scenario]
name = "tbkl"
description = "CI: ue1 streams from the streamer at edge X and hands over to site B at 2 s; smo-y is killed 20 ms into that relocation's EXECUTE"
topology = "two-site"
runs = 1
notify = "LATE"
observe_s = 4

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
duration_s = 7

[[timeline]]
at_s = 2
action = "handover"
ue = "ue1"
to = "site-b"

[[timeline]]
at_s = 2
action = "kill"
process = "smo-y"
phase = "EXECUTE"
after_ms = 20
"#;

#[test]
#[ignore = "privileged: needs root; run with --include-ignored as root"]
fn a_timeline_kill_waits_for_its_phase_and_is_recorded() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    common::require_root();
    let (name, prefix) = ("ci-kill", "tbkl");
    let (scenario, guard) = prepare(name, prefix, KILL_SCENARIO);
    let out = guard.2.join("out");
    let r = run_experiment(name, prefix, &scenario, &out);
    let [k] = r.kills.as_slice() else {
        panic!("one kill recorded: {:?}", r.kills);
    };
    assert_eq!(k.error, None, "{k:?}");
    assert_eq!(
        (k.process.as_str(), k.node.as_deref()),
        ("smo-y", Some("edge-y"))
    );
    assert!(k.pid.is_some_and(|p| p > 1), "{k:?}");
    assert_eq!(k.phase, Some(model::smo::RelocationPhase::Execute));
    let reloc = k
        .relocation_id
        .as_deref()
        .expect("the relocation it waited for");
    if let Some(h) = r.handovers.first().and_then(|h| h.relocation_id.as_deref()) {
        assert_eq!(reloc, h, "the handover's relocation");
    }
    let into = k
        .into_phase_ms()
        .expect("the phase's start by the SMO's stopwatch");
    assert!(
        (20.0..5000.0).contains(&into),
        "killed {into:.1} ms into EXECUTE (asked 20)"
    );
    let (seen, killed) = (
        k.phase_seen_unix_us.expect("seen"),
        k.killed_unix_us.expect("killed"),
    );
    assert!(killed >= seen + 20_000, "{k:?}");
    let (md, _) = report(&out);
    assert!(
        md.contains("## Kills")
            && md.contains(&format!(
                "| 1 | smo-y | edge-y | 2 | EXECUTE | 20 | {reloc} |"
            )),
        "{md}"
    );
    eprintln!(
        "killed smo-y (pid {:?}) {into:.1} ms into EXECUTE of {reloc} (seen {:.1} ms after the phase began); the run: {}",
        k.pid,
        (seen as f64 - k.phase_started_unix_us.unwrap_or(seen) as f64) / 1e3,
        testbed::experiment::one_line(&r)
    );
}

//! `testbed experiment run SCENARIO --out DIR`: runs a scenario's experiment on the testbed and
//! records every run in `DIR` ([`crate::results`]), resumable.
//!
//! 1. Loads and checks the scenario; `--runs N` overrides its `runs`.
//! 2. Starts (or resumes) the experiment in `DIR`: `meta.json` with the machine, kernel, tool
//!    versions, git commit and the scenario's text. A run already in `DIR/runs/` is not run again
//!    (a failed one neither, unless `--retry-failed`).
//! 3. Brings the testbed up for the scenario (as `testbed up --scenario` does), or with `--reuse`
//!    takes the one that is up if it is exactly the scenario's; what it brought up it tears down
//!    at the end, also after an error or Ctrl-C (a guard), unless `--keep`.
//! 4. Each run: resets the UEs' gap recorders, starts `tcpdump -i ue0` in every UE's namespace,
//!    starts each `[[traffic]]` flow at its `start_s` in its UE's namespace, does each
//!    `[[timeline]]` handover at its `at_s` (a group's members at once, each through
//!    [`crate::migration::handover_and_follow`], which waits for the relocation it triggered),
//!    keeps observing until the run's last flow ended, then collects: the handover timelines,
//!    both SMOs' records of every relocation (phases, total, the module's steps and bytes), the
//!    UE-side downtime twice — the UE's gap recorder and the capture ([`crate::pcap`]) — and each
//!    flow's own report; finally every testbed process's peak memory (`VmHWM`).
//! 5. Between runs it hands every UE back to the first site and waits for the relocation back
//!    (not measured); if that fails, the next run fails with the reason. A failed run is recorded
//!    with its error and the experiment goes on.
//!
//! Downtime of a relocation, both ways, is the largest inter-arrival gap of the downlink flows
//! from the relocated service to the UE whose handover moved it, over the same window: from the
//! handover's trigger to the end of the run (for a UE that hands over again in the same run: to
//! when the earlier relocation's measurement ended). Captures are kept as
//! `DIR/runs/NNN-<ue>.pcap` (the evidence behind the capture column) unless `--no-pcap-keep`.
//!
//! Ctrl-C (or SIGTERM) stops the experiment: the run in progress is dropped (not recorded, so a
//! rerun of the same command does it), its processes are ended by PID, the testbed goes down.

use emu_ran::ue::UeStatus;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

mod capture;
mod chaos;
mod collect;
mod flows;
pub mod kill;

pub use collect::{capture_downtime, recorder_downtime};
pub use flows::service_port;

use collect::relocation_problem;
use flows::{FlowPlan, HeldStream};

use crate::migration::{self, HandoverOutcome};
use crate::plan::{Plan, DN_SERVER};
use crate::results::{self, ExperimentMeta, ResultsError, RunResult};
use crate::scenario::{Scenario, ScenarioError, TrafficKind, DN_TARGET, MAX_RUNS};
use crate::spec::TopologySpec;
use crate::state::{State, StateError};
use crate::topo::{self, UpError, UpOptions};

/// How long a handover waits for the relocation it triggered.
pub const RELOCATION_WAIT: Duration = Duration::from_secs(60);
/// How long after its planned end a flow may take to finish before it is ended.
pub const FLOW_GRACE: Duration = Duration::from_secs(15);
/// How long the testbed may take to be ready for a run (UEs attached, services at home and
/// answering).
pub const READY_WITHIN: Duration = Duration::from_secs(30);
/// The UE's TUN device, where the capture listens.
pub const UE_TUN: &str = "ue0";
/// Bytes captured per packet: IPv4 + TCP headers with options, no payload needed.
const SNAPLEN: &str = "128";
/// Gap recorder windows start this long before the handover (the UE clock's uncertainty; see
/// [`crate::migration`]).
const CLOCK_SLACK_MS: f64 = 30.0;

/// What `testbed experiment run` was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOptions {
    pub scenario: PathBuf,
    pub out: PathBuf,
    /// Runs in all (default: the scenario's).
    pub runs: Option<u32>,
    /// Use the testbed that is up (it must match the scenario) instead of bringing one up.
    pub reuse: bool,
    /// Leave the testbed up at the end.
    pub keep: bool,
    /// Keep the packet captures in `DIR/runs/`.
    pub keep_pcap: bool,
    /// Run the recorded failed runs again.
    pub retry_failed: bool,
}

/// How the experiment ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub dir: PathBuf,
    pub runs_asked: u32,
    /// Runs recorded in `DIR` now.
    pub recorded: usize,
    pub ok: usize,
    pub failed: usize,
    /// Runs done by this invocation.
    pub ran_now: usize,
}

/// Why an experiment could not run (a failed *run* is not an error: it is recorded).
#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    #[error("--runs {0}: must be 1..={MAX_RUNS}")]
    Runs(u32),
    #[error(transparent)]
    Results(#[from] ResultsError),
    #[error(
        "{dir} holds the experiment of scenario `{found}`, not `{want}`: choose another --out"
    )]
    OtherExperiment {
        dir: PathBuf,
        found: String,
        want: String,
    },
    #[error("cannot bring the testbed up: {0} (or use the one that is up: --reuse)")]
    Up(#[from] UpError),
    #[error("--reuse: {0}")]
    Reuse(String),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("interrupted: {recorded} of {asked} runs recorded in {dir}; run the same command again to resume")]
    Interrupted {
        recorded: usize,
        asked: u32,
        dir: PathBuf,
    },
}

static STOP: AtomicBool = AtomicBool::new(false);

fn stopped() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// Turns SIGINT and SIGTERM into [`stopped`] (from a thread with its own runtime), once.
fn watch_signals() {
    static WATCHING: std::sync::Once = std::sync::Once::new();
    WATCHING.call_once(|| {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                let _ = tx.send(());
                return;
            };
            rt.block_on(async move {
                use tokio::signal::unix::{signal, SignalKind};
                let (Ok(mut int), Ok(mut term)) = (
                    signal(SignalKind::interrupt()),
                    signal(SignalKind::terminate()),
                ) else {
                    let _ = tx.send(());
                    return;
                };
                let _ = tx.send(());
                loop {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                    }
                    if !STOP.swap(true, Ordering::Relaxed) {
                        eprintln!("\ninterrupted: ending the current run (not recorded) and cleaning up …");
                    }
                }
            });
        });
        let _ = rx.recv_timeout(Duration::from_secs(5));
    });
}

/// Sleeps until `at` in small steps; `false` when interrupted first.
fn sleep_until(at: Instant) -> bool {
    loop {
        if stopped() {
            return false;
        }
        let now = Instant::now();
        if now >= at {
            return true;
        }
        std::thread::sleep((at - now).min(Duration::from_millis(50)));
    }
}

/// Tears the testbed the experiment brought up down when dropped (unless it is to be kept).
#[derive(Debug)]
struct TestbedGuard {
    name: String,
    prefix: String,
    keep: bool,
}

impl Drop for TestbedGuard {
    fn drop(&mut self) {
        if self.keep {
            eprintln!(
                "testbed `{}` stays up (--keep); `testbed down --name {}` removes it",
                self.name, self.name
            );
            return;
        }
        let r = topo::down(&self.name, Some(&self.prefix));
        eprintln!(
            "testbed `{}` is down: {} process(es) ended, {} namespace(s) removed{}",
            self.name,
            r.processes_ended.len(),
            r.netns_removed.len(),
            if r.problems.is_empty() {
                String::new()
            } else {
                format!("; problems: {}", r.problems.join("; "))
            }
        );
    }
}

/// Reads and checks a scenario file as the runner needs it: [`Scenario::load`], then every
/// process its kills name against the network functions of the testbed it brings up.
pub fn load(path: &Path) -> Result<(Scenario, TopologySpec), ScenarioError> {
    let (sc, topology) = Scenario::load(path)?;
    let spec = sc.testbed_spec(topology.clone())?;
    sc.check_processes(&topology.name, &process_names(&sc, &spec))?;
    Ok((sc, topology))
}

/// The network functions the testbed of scenario `sc` runs (what the supervisor restarts and a
/// kill may name), as `testbed status` names them.
pub fn process_names(sc: &Scenario, spec: &TopologySpec) -> Vec<String> {
    let mut plan = Plan::new(spec);
    // A service the plan refuses is refused again, with its reason, when the testbed comes up.
    let _ = plan.set_services(&sc.services);
    crate::nf::launches(&plan, "", &crate::nf::LaunchOptions::new())
        .into_iter()
        .map(|l| l.name)
        .collect()
}

/// Runs the experiment.
pub fn run(opts: &RunOptions) -> Result<Summary, ExperimentError> {
    let (sc, topology) = load(&opts.scenario)?;
    let text = std::fs::read_to_string(&opts.scenario).map_err(|source| ScenarioError::Read {
        path: opts.scenario.clone(),
        source,
    })?;
    let runs = opts.runs.unwrap_or(sc.scenario.runs);
    if runs == 0 || runs > MAX_RUNS {
        return Err(ExperimentError::Runs(runs));
    }
    let spec = sc.testbed_spec(topology)?;
    let dir = opts.out.clone();
    let mut meta = match results::read_meta(&dir)? {
        Some(m) if m.scenario != sc.scenario.name => {
            return Err(ExperimentError::OtherExperiment {
                dir,
                found: m.scenario,
                want: sc.scenario.name.clone(),
            })
        }
        Some(mut m) => {
            m.runs_asked = runs;
            m.finished_unix_us = None;
            m
        }
        None => ExperimentMeta::new(
            &sc.scenario.name,
            &opts.scenario.display().to_string(),
            runs,
            tool_versions(),
            git_commit(),
        ),
    };
    meta.scenario_text = Some(text);
    let recorded: BTreeMap<u32, bool> = results::read_runs(&dir)?
        .into_iter()
        .map(|r| (r.run, r.ok))
        .collect();
    let todo: Vec<u32> = (1..=runs)
        .filter(|r| match recorded.get(r) {
            None => true,
            Some(ok) => opts.retry_failed && !ok,
        })
        .collect();
    if todo.is_empty() {
        eprintln!(
            "all {runs} runs of `{}` are recorded in {}",
            sc.scenario.name,
            dir.display()
        );
        results::begin(&dir, &meta)?;
        let e = results::finish(&dir, &meta)?;
        return Ok(summary(&dir, runs, &e.runs, 0));
    }
    eprintln!(
        "experiment `{}`: {} run(s) to do of {runs} ({} recorded), results in {}",
        sc.scenario.name,
        todo.len(),
        recorded.len(),
        dir.display()
    );
    watch_signals();
    // The testbed first: a refused --reuse or a failed bring-up writes nothing to DIR.
    let (state, guard) = testbed_for(&sc, &spec, opts)?;
    results::begin(&dir, &meta)?;
    let token = state.token.clone().ok_or_else(|| {
        ExperimentError::Reuse("the testbed runs no network functions (--network-only)".into())
    })?;
    let runner = Runner {
        sc: &sc,
        plan: state.plan(),
        token,
        dir: dir.clone(),
        keep_pcap: opts.keep_pcap,
        bins: crate::nf::bin_dir(),
        members: sc.ue_members(),
        first_site: spec
            .sites
            .first()
            .map(|s| format!("site-{}", s.name))
            .unwrap_or_default(),
    };
    // A reused testbed may have its UEs elsewhere from an earlier experiment.
    let mut pending = runner.reset().err();
    let began = Instant::now();
    let mut ran_now = 0usize;
    for (i, &run) in todo.iter().enumerate() {
        if stopped() {
            break;
        }
        let eta = (ran_now > 0).then(|| began.elapsed() / ran_now as u32 * (todo.len() - i) as u32);
        eprintln!(
            "run {run}/{runs} ({} of {} now) …{}",
            i + 1,
            todo.len(),
            eta.map_or_else(String::new, |d| format!(" ETA {}", hms(d)))
        );
        let started = model::ran::unix_now_us();
        let result = match pending.take() {
            Some(e) => Some(RunResult::failed(
                run,
                started,
                format!("before the run: {e}"),
            )),
            None => match &sc.chaos {
                Some(c) => runner.run_chaos(run, c),
                None => runner.run_once(run),
            },
        };
        let Some(mut result) = result else {
            break;
        };
        result.peak_rss_kb = peak_rss_kb(&state);
        results::append_run(&dir, &result)?;
        ran_now += 1;
        eprintln!("run {run}/{runs}: {}", one_line(&result));
        if i + 1 < todo.len() && !stopped() {
            pending = runner.reset().err();
        }
    }
    let all = results::read_runs(&dir)?;
    if stopped() {
        drop(guard);
        return Err(ExperimentError::Interrupted {
            recorded: all.len(),
            asked: runs,
            dir,
        });
    }
    let e = results::finish(&dir, &meta)?;
    drop(guard);
    Ok(summary(&dir, runs, &e.runs, ran_now))
}

fn summary(dir: &Path, runs_asked: u32, runs: &[RunResult], ran_now: usize) -> Summary {
    let ok = runs.iter().filter(|r| r.ok).count();
    Summary {
        dir: dir.to_owned(),
        runs_asked,
        recorded: runs.len(),
        ok,
        failed: runs.len() - ok,
        ran_now,
    }
}

/// `1h 02m`, `31m 20s`, `45s`.
fn hms(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, s % 3600 / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m {s:02}s"),
        (h, m, _) => format!("{h}h {m:02}m"),
    }
}

/// A run in one line: ok or the error, with its headline numbers.
pub fn one_line(r: &RunResult) -> String {
    let nums: Vec<String> = r
        .relocations
        .iter()
        .map(|x| {
            let f = |v: Option<f64>| v.map_or_else(|| "–".to_owned(), |v| format!("{v:.1}"));
            format!(
                "{} {}: total {} ms, downtime {} ms (UE) / {} ms (capture), {} bytes moved",
                x.ue,
                x.service_id,
                f(x.total_ms),
                f(x.downtime_ms),
                f(x.downtime_capture_ms),
                x.bytes_moved
                    .map_or_else(|| "–".to_owned(), |b| b.to_string())
            )
        })
        .collect();
    let kills: Vec<String> = r
        .kills
        .iter()
        .map(|k| match (&k.error, k.pid) {
            (Some(e), _) => format!("kill of {} FAILED: {e}", k.process),
            (None, pid) => format!(
                "killed {} (pid {}){}",
                k.process,
                pid.map_or_else(|| "?".to_owned(), |p| p.to_string()),
                match (k.phase, k.into_phase_ms()) {
                    (Some(p), Some(ms)) => format!(" {ms:.0} ms into {p}"),
                    (Some(p), None) => format!(" in {p}"),
                    _ => String::new(),
                }
            ),
        })
        .collect();
    let chaos = r.chaos.as_ref().map(|c| {
        let v = &c.verdict;
        let (conv, sup, not) = v.counts();
        let mut t = v.convergence_ms();
        t.sort_by(f64::total_cmp);
        let p = |q| {
            let x = crate::report::percentile(&t, q);
            if x.is_nan() {
                "–".to_owned()
            } else {
                format!("{x:.0}")
            }
        };
        format!(
            "chaos seed {}: {} events, {conv} converged (p50 {} ms, p99 {} ms), {sup} superseded, {not} not converged; {} violation(s); at the end {}",
            c.seed,
            c.events.len(),
            p(0.5),
            p(0.99),
            v.violations.len(),
            if v.final_state.converged { "converged" } else { "NOT converged" }
        )
    });
    // A chaos run says its verdict and how many relocations ran, not each one.
    let nums: Vec<String> = match chaos {
        Some(c) => vec![c, format!("{} relocation(s)", r.relocations.len())],
        None => nums.into_iter().chain(kills).collect(),
    };
    match (&r.error, r.ok) {
        (_, true) => format!("ok — {}", nums.join("; ")),
        (Some(e), false) => format!("FAILED — {e}"),
        (None, false) => "FAILED".to_owned(),
    }
}

/// The testbed for the scenario: brought up (with a guard that takes it down), or the one that
/// is up with `--reuse`.
fn testbed_for(
    sc: &Scenario,
    spec: &TopologySpec,
    opts: &RunOptions,
) -> Result<(State, Option<TestbedGuard>), ExperimentError> {
    if opts.reuse {
        let st = State::load(&State::dir(&spec.name))?.ok_or_else(|| {
            ExperimentError::Reuse(format!(
                "no testbed `{}` is up (bring it up with `testbed up --scenario {}`, or run without --reuse)",
                spec.name,
                opts.scenario.display()
            ))
        })?;
        let diff = reuse_mismatch(&st, sc, spec);
        if !diff.is_empty() {
            return Err(ExperimentError::Reuse(format!(
                "testbed `{}` is up but not for this scenario: {}; bring it down (`testbed down --name {}`) or run without --reuse",
                spec.name,
                diff.join("; "),
                spec.name
            )));
        }
        eprintln!("using testbed `{}` (--reuse)", spec.name);
        return Ok((st, None));
    }
    let t = Instant::now();
    let plan = topo::up(
        spec,
        UpOptions {
            network_functions: true,
            services: true,
            service_specs: Some(sc.services.clone()),
            notify: sc.scenario.notify,
            supervise: true,
        },
    )?;
    let guard = TestbedGuard {
        name: plan.name.clone(),
        prefix: plan.prefix.clone(),
        keep: opts.keep,
    };
    eprintln!(
        "testbed `{}` is up ({} namespaces) in {:.1} s",
        plan.name,
        plan.nodes.len(),
        t.elapsed().as_secs_f64()
    );
    let st = State::load(&plan.state_dir)?.ok_or_else(|| {
        ExperimentError::Reuse(format!("testbed `{}` came up without state", plan.name))
    })?;
    Ok((st, Some(guard)))
}

/// How the testbed that is up differs from what the scenario needs (empty: it matches).
pub fn reuse_mismatch(st: &State, sc: &Scenario, spec: &TopologySpec) -> Vec<String> {
    let mut diff = Vec::new();
    if !st.complete {
        diff.push("its bring-up did not finish".to_owned());
    }
    if st.token.is_none() {
        diff.push("it runs no network functions".to_owned());
    }
    if st.spec.prefix != spec.prefix || st.spec.sites != spec.sites {
        diff.push(format!(
            "its topology differs (prefix {}, sites {:?}; the scenario's: prefix {}, sites {:?})",
            st.spec.prefix,
            st.spec.sites.iter().map(|s| &s.name).collect::<Vec<_>>(),
            spec.prefix,
            spec.sites.iter().map(|s| &s.name).collect::<Vec<_>>()
        ));
    }
    if st.spec.ues != spec.ues {
        diff.push(format!(
            "it has {} UE(s), the scenario needs {}",
            st.spec.ues, spec.ues
        ));
    }
    if st.services.as_ref() != Some(&sc.services) {
        diff.push(format!(
            "its services are {}, the scenario's {}",
            st.services.as_ref().map_or_else(
                || "the default ones".to_owned(),
                |s| format!("{:?}", s.iter().map(|x| &x.id).collect::<Vec<_>>())
            ),
            format_args!(
                "{:?}",
                sc.services.iter().map(|x| &x.id).collect::<Vec<_>>()
            )
        ));
    }
    if st.notify != sc.scenario.notify {
        let name = |n| {
            serde_json::to_value(n)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default()
        };
        diff.push(format!(
            "its SMOs subscribe to {}, the scenario asks {}",
            name(st.notify),
            name(sc.scenario.notify)
        ));
    }
    diff
}

/// `VmHWM` (kB) of every running testbed process, by name.
fn peak_rss_kb(state: &State) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for p in &state.processes {
        if !p.process.is_running() {
            continue;
        }
        let kb = std::fs::read_to_string(format!("/proc/{}/status", p.process.pid))
            .ok()
            .and_then(|s| vm_hwm_kb(&s));
        if let Some(kb) = kb {
            let e: &mut u64 = out.entry(p.process.name.clone()).or_default();
            *e = (*e).max(kb);
        }
    }
    out
}

/// The `VmHWM:` line of `/proc/PID/status`, kB.
pub fn vm_hwm_kb(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The first line of `program args…`'s output (stdout, else stderr) that holds a digit.
fn version_of(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .map(str::trim)
        .find(|l| l.chars().any(|c| c.is_ascii_digit()))
        // ffmpeg goes on with its copyright on the same line.
        .map(|l| {
            l.split(" Copyright")
                .next()
                .unwrap_or(l)
                .chars()
                .take(160)
                .collect()
        })
}

/// Versions of the tools an experiment depends on, as they print them; absent tools left out.
pub fn tool_versions() -> BTreeMap<String, String> {
    let tools: [(&str, &str, &[&str]); 7] = [
        ("criu", "criu", &["--version"]),
        ("ovs", "ovs-vswitchd", &["--version"]),
        ("lxc", "lxc-start", &["--version"]),
        ("nginx", "nginx", &["-v"]),
        ("ffmpeg", "ffmpeg", &["-version"]),
        ("tcpdump", "tcpdump", &["--version"]),
        ("iproute2", "ip", &["-V"]),
    ];
    tools
        .iter()
        .filter_map(|(k, p, a)| version_of(p, a).map(|v| ((*k).to_owned(), v)))
        .collect()
}

/// The testbed's git commit (`-dirty` with uncommitted changes to tracked files), if the source
/// tree it was built from is here.
pub fn git_commit() -> Option<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let git = |args: &[&str]| {
        Command::new("git")
            .args(["-c", "safe.directory=*", "-C"])
            .arg(dir)
            .args(args)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let head = git(&["rev-parse", "HEAD"]).filter(|h| !h.is_empty())?;
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    Some(if dirty { format!("{head}-dirty") } else { head })
}

#[derive(Debug)]
struct Runner<'a> {
    sc: &'a Scenario,
    plan: Plan,
    token: String,
    dir: PathBuf,
    keep_pcap: bool,
    bins: PathBuf,
    /// The scenario's UE members; member *i* is the testbed's `ue<i+1>`.
    members: Vec<String>,
    first_site: String,
}

impl Runner<'_> {
    /// The testbed's name of a scenario UE member.
    fn tb_ue(&self, member: &str) -> String {
        let i = self
            .members
            .iter()
            .position(|m| m == member)
            .unwrap_or_default();
        format!("ue{}", i + 1)
    }

    fn ue_status(&self, member: &str) -> Result<UeStatus, String> {
        let ue = self.tb_ue(member);
        crate::handover::ue_get(&crate::nf::ue_socket(&self.plan, &ue), "/ue/v1/status")
            .map_err(|e| format!("{ue}: {e}"))
    }

    /// The site serving `member` now, e.g. `site-a`.
    fn serving_site(&self, member: &str) -> Result<String, String> {
        let st = self.ue_status(member)?;
        let radio = *st.gnb_radio.ip();
        crate::chaos::observe::site_of_radio(&self.plan, radio)
            .ok_or_else(|| format!("{member} is attached to no known gNB ({radio})"))
    }

    /// The address a flow goes to.
    fn target_addr(&self, target: &str) -> Result<Ipv4Addr, String> {
        if target == DN_TARGET {
            return Ok(DN_SERVER);
        }
        self.plan
            .service(target)
            .map(|s| s.ipv4_addr)
            .ok_or_else(|| format!("service `{target}` is not planned in this testbed"))
    }

    /// Every flow, one per UE member.
    fn flow_plans(&self) -> Vec<FlowPlan<'_>> {
        self.sc
            .traffic
            .iter()
            .flat_map(|t| {
                self.sc
                    .resolve_ue(&t.ue)
                    .into_iter()
                    .map(move |m| FlowPlan { member: m, spec: t })
            })
            .collect()
    }

    /// Waits until the testbed is ready for a run: every UE attached, every service (its OVS
    /// port) at its home edge cloud only, every stream target accepting connections from its UE.
    fn get_ready(&self) -> Result<(), String> {
        let start = Instant::now();
        let until = |what: &str, ok: &mut dyn FnMut() -> Result<(), String>| loop {
            match ok() {
                Ok(()) => return Ok(()),
                Err(e) if start.elapsed() >= READY_WITHIN || stopped() => {
                    return Err(format!("{what}: {e}"))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        };
        for m in &self.members {
            until(&format!("{m} attached"), &mut || {
                self.ue_status(m)?
                    .ue_ipv4
                    .map(|_| ())
                    .ok_or_else(|| "no PDU session yet".to_owned())
            })?;
        }
        for s in &self.plan.services {
            until(
                &format!("service {} at {}", s.service_id, s.edge),
                &mut || match self.service_edges(&s.service_id).as_slice() {
                    [only] if *only == s.edge => Ok(()),
                    [] => Err(format!(
                        "port {} on no edge bridge",
                        Plan::service_port(&s.service_id)
                    )),
                    edges => Err(format!("at {}", edges.join(", "))),
                },
            )?;
        }
        for f in self.flow_plans() {
            if f.spec.kind != TrafficKind::Stream {
                continue;
            }
            let addr = SocketAddr::from((self.target_addr(&f.spec.target)?, crate::nf::PROBE_PORT));
            let ns = netkit::Netns::new(self.plan.netns(&self.tb_ue(&f.member)));
            until(&format!("{} reaches {addr}", f.member), &mut || {
                ns.run_in(move || TcpStream::connect_timeout(&addr, Duration::from_secs(1)))
                    .map_err(|e| e.to_string())?
                    .map(drop)
                    .map_err(|e| e.to_string())
            })?;
        }
        Ok(())
    }

    /// Puts every UE back at the first site (waiting for the relocations back), then
    /// [`Self::get_ready`]. Before the first run too: a reused testbed may have its UEs elsewhere.
    fn reset(&self) -> Result<(), String> {
        let mut back = Vec::new();
        // A service serves a UE while it has a connection from it (the module asks the
        // service's sockets): the run's flows have ended, so hold one open during the hand-back.
        let mut held = Vec::new();
        // A UE at home whose service stayed away (its relocation back failed earlier) goes to
        // the service's site first, so that handing it back moves the service home.
        for m in &self.members {
            if self.serving_site(m)? != self.first_site || !self.services_away(m) {
                continue;
            }
            if let Some(site) = self.site_of_away_service(m) {
                migration::handover_and_follow(
                    &self.plan,
                    &self.token,
                    &self.tb_ue(m),
                    &site,
                    None,
                )
                .map_err(|e| format!("handing {m} to {site}, where its service is: {e}"))?;
            }
        }
        for m in &self.members {
            let at = self.serving_site(m)?;
            if at == self.first_site {
                continue;
            }
            for id in self.services_of(m) {
                let port = self
                    .plan
                    .service(&id)
                    .map_or(crate::nf::PROBE_PORT, |s| service_port(s.kind));
                let addr = SocketAddr::from((self.target_addr(&id)?, port));
                held.push(
                    HeldStream::open(&self.plan.netns(&self.tb_ue(m)), addr)
                        .map_err(|e| format!("{m} cannot reach service {id} at {addr}: {e}"))?,
                );
            }
            let (plan, token, ue, to) = (
                self.plan.clone(),
                self.token.clone(),
                self.tb_ue(m),
                self.first_site.clone(),
            );
            back.push((
                m.clone(),
                std::thread::spawn(move || {
                    migration::handover_and_follow(&plan, &token, &ue, &to, Some(RELOCATION_WAIT))
                }),
            ));
        }
        let mut errors = Vec::new();
        for (m, t) in back {
            let what = format!("handing {m} back to {}", self.first_site);
            match t.join() {
                Err(_) => errors.push(format!("{what}: the thread panicked")),
                Ok(Err(e)) => errors.push(format!("{what}: {e}")),
                Ok(Ok(mut o)) => {
                    // Only a service away from home has to come back.
                    if self.services_away(&m) {
                        self.follow_up(&mut o);
                        if let Some(e) = relocation_problem(&o) {
                            errors.push(format!("{what}: {e}"));
                        }
                    }
                }
            }
        }
        drop(held);
        if !errors.is_empty() {
            return Err(errors.join("; "));
        }
        self.get_ready()
    }

    /// The ids of the scenario's services that serve `member`.
    fn services_of(&self, member: &str) -> Vec<String> {
        self.sc
            .services_serving(member)
            .into_iter()
            .map(|s| s.id.clone())
            .collect()
    }

    /// The edge nodes whose bridge has service `id`'s OVS port: where it runs, whatever the
    /// backend (every backend attaches `s-<id>` where the service is; during a move both).
    fn service_edges(&self, id: &str) -> Vec<String> {
        let port = Plan::service_port(id);
        self.plan
            .switches
            .iter()
            .filter(|sw| {
                netkit::ovs::OvsInstance::new(&sw.netns, &sw.dir)
                    .ports(&sw.bridge)
                    .is_ok_and(|ports| ports.contains(&port))
            })
            .map(|sw| sw.node.clone())
            .collect()
    }

    /// Whether a service serving `member` is away from its home edge cloud now.
    fn services_away(&self, member: &str) -> bool {
        self.services_of(member).iter().any(|id| {
            self.plan
                .service(id)
                .is_some_and(|s| !self.service_edges(id).contains(&s.edge))
        })
    }

    /// The site whose edge cloud hosts a service of `member` that is away from home.
    fn site_of_away_service(&self, member: &str) -> Option<String> {
        self.services_of(member).iter().find_map(|id| {
            let home = &self.plan.service(id)?.edge;
            self.service_edges(id)
                .into_iter()
                .find(|edge| edge != home)
                .and_then(|edge| self.plan.node(&edge)?.site.clone())
                .map(|site| format!("site-{site}"))
        })
    }

    /// When a handover found no relocation, looks again, without the "no service serves the
    /// UE" shortcut: that one counts skipped notifications over all SMOs, so with several UEs
    /// handing over at once another UE's skip reads as this one's.
    fn follow_up(&self, o: &mut HandoverOutcome) {
        if o.relocation.is_some() {
            return;
        }
        match migration::wait_for_relocation(
            &self.plan,
            &self.token,
            o.handover.ue_ipv4,
            o.started_unix_us,
            None,
            RELOCATION_WAIT,
        ) {
            migration::RelocationWait::Ended(m) => {
                o.relocation = Some(m);
                o.relocation_note = None;
            }
            migration::RelocationWait::Running(m) => {
                o.relocation = Some(m);
                o.relocation_note = Some(format!(
                    "still running after {} s",
                    RELOCATION_WAIT.as_secs()
                ));
            }
            migration::RelocationWait::NoService => {}
            migration::RelocationWait::NoneSeen(why) => o.relocation_note = Some(why),
        }
    }

    /// Whether some service of the scenario serves `member`.
    fn served(&self, member: &str) -> bool {
        !self.services_of(member).is_empty()
    }

    /// One run: prepare (UE addresses, fresh gap recorders), capture at every UE, play the
    /// schedule ([`flows`]), collect the result ([`collect`]); `None` when interrupted (nothing
    /// is recorded then).
    fn run_once(&self, run: u32) -> Option<RunResult> {
        let mut r = RunResult::failed(run, model::ran::unix_now_us(), String::new());
        r.finished_unix_us = None;
        let mut errors: Vec<String> = Vec::new();
        let mut ue_ip: BTreeMap<String, Ipv4Addr> = BTreeMap::new();
        for m in &self.members {
            let ue = self.tb_ue(m);
            match self.ue_status(m) {
                Ok(st) => {
                    if let Some(ip) = st.ue_ipv4 {
                        ue_ip.insert(m.clone(), ip);
                    }
                }
                Err(e) => errors.push(e),
            }
            if let Err(e) = crate::handover::ue_post(
                &crate::nf::ue_socket(&self.plan, &ue),
                "/ue/v1/gaps/reset",
            ) {
                errors.push(format!("resetting {ue}'s gap recorder: {e}"));
            }
        }
        let captures = self.start_captures(run, &mut r.notes);
        let played = self.play(captures)?;
        Some(self.collect(r, errors, &ue_ip, played))
    }
}

#[cfg(test)]
mod tests {
    use super::collect::flow_src;
    use super::*;
    use crate::pcap::CaptureFlowGap;
    use emu_ran::ue::gaps::FlowGaps;

    #[test]
    fn vm_hwm_is_read_from_proc_status() {
        let status = "Name:\tsmo\nVmPeak:\t  100 kB\nVmHWM:\t   12345 kB\nVmRSS:\t  9000 kB\n";
        assert_eq!(vm_hwm_kb(status), Some(12345));
        assert_eq!(vm_hwm_kb("Name: x\n"), None);
        let mine = std::fs::read_to_string("/proc/self/status").expect("own status");
        assert!(vm_hwm_kb(&mine).is_some_and(|kb| kb > 0));
    }

    #[test]
    fn ping_summaries_and_flow_names_parse() {
        let out = "PING 20.0.0.100 (20.0.0.100) 56(84) bytes of data.\n\n--- 20.0.0.100 ping statistics ---\n800 packets transmitted, 781 received, 2.375% packet loss, time 7990ms\nrtt min/avg/max/mdev = 0.1/0.2/0.3/0.01 ms\n";
        let r = crate::probe::PingReport::parse(out, Duration::from_millis(10)).expect("summary");
        assert_eq!((r.transmitted, r.received), (800, 781));
        let r = crate::probe::PingReport::parse(
            "3 packets transmitted, 0 received, +3 errors, 100% packet loss",
            Duration::from_millis(10),
        )
        .expect("summary");
        assert_eq!((r.transmitted, r.received, r.ok), (3, 0, false));
        assert_eq!(
            flow_src("tcp 20.0.0.100:5000 > 192.168.1.2:40000"),
            Some(Ipv4Addr::new(20, 0, 0, 100))
        );
        assert_eq!(
            flow_src("icmp 10.60.0.100 > 192.168.1.2 id 7"),
            Some(Ipv4Addr::new(10, 60, 0, 100))
        );
        assert_eq!(flow_src("non-ipv4 (version 6)"), None);
    }

    #[test]
    fn the_downtime_is_the_largest_gap_of_the_services_flows_in_the_window() {
        let rec = |flow: &str, gap, end| FlowGaps {
            flow: flow.into(),
            packets: 100,
            largest_gap_ms: gap,
            gap_ended_at_ms: end,
            last_arrival_ms: end,
        };
        let flows = [
            rec(
                "tcp 20.0.0.100:5000 > 192.168.1.2:40000",
                180.0,
                Some(10_200.0),
            ),
            rec("icmp 10.60.0.100 > 192.168.1.2 id 9", 400.0, Some(10_300.0)),
            rec(
                "tcp 20.0.0.101:5000 > 192.168.1.2:40002",
                900.0,
                Some(2_000.0),
            ),
        ];
        let svc = Ipv4Addr::new(20, 0, 0, 100);
        assert_eq!(recorder_downtime(&flows, Some(svc), 9_970.0), Some(180.0));
        assert_eq!(recorder_downtime(&flows, None, 9_970.0), Some(400.0));
        // A gap that ended before the window does not count.
        let old = Ipv4Addr::new(20, 0, 0, 101);
        assert_eq!(recorder_downtime(&flows, Some(old), 9_970.0), None);
        assert_eq!(recorder_downtime(&flows, Some(old), 0.0), Some(900.0));
        let cap = |src: [u8; 4], gap, end| CaptureFlowGap {
            flow: String::new(),
            src: src.into(),
            packets: 10,
            largest_gap_ms: gap,
            gap_ended_unix_ns: end,
        };
        let c = [
            cap([20, 0, 0, 100], 180.5, Some(1)),
            cap([10, 60, 0, 100], 400.0, Some(2)),
            cap([20, 0, 0, 101], 0.0, None),
        ];
        assert_eq!(capture_downtime(&c, Some(svc)), Some(180.5));
        assert_eq!(capture_downtime(&c, None), Some(400.0));
        assert_eq!(capture_downtime(&c, Some(old)), None);
    }

    #[test]
    fn durations_print_short() {
        assert_eq!(hms(Duration::from_secs(45)), "45s");
        assert_eq!(hms(Duration::from_secs(31 * 60 + 20)), "31m 20s");
        assert_eq!(hms(Duration::from_secs(3720)), "1h 02m");
    }

    #[test]
    fn tools_and_commit_are_found_where_present() {
        let v = tool_versions();
        for (k, line) in &v {
            assert!(line.chars().any(|c| c.is_ascii_digit()), "{k}: {line}");
        }
        // The source tree is a git checkout in CI and here.
        if Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../.git")
            .exists()
        {
            let c = git_commit().expect("commit");
            assert!(
                c.len() >= 40 && c[..40].chars().all(|c| c.is_ascii_hexdigit()),
                "{c}"
            );
        }
    }

    #[test]
    fn the_runner_loads_every_shipped_scenario_and_refuses_a_kill_of_an_unknown_process() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        for entry in std::fs::read_dir(&dir).expect("scenarios/") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "toml") {
                load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            }
        }
        let text = std::fs::read_to_string(dir.join("thesis-5.4-streamer.toml")).expect("scenario");
        let sc = Scenario::from_toml(&text).expect("valid");
        let topo = crate::spec::TopologySpec::builtin("two-site").expect("builtin");
        let names = process_names(&sc, &sc.testbed_spec(topo).expect("spec"));
        for want in [
            "lr", "smf", "upf-a", "iap-b", "smo-x", "smo-y", "svcmod-x", "svcmod-y", "gnb-a",
            "ue1", "probe-dn",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
        }
        assert!(
            !names.iter().any(|n| n.starts_with("svcmod-lxc")),
            "{names:?}"
        );
        let tmp = std::env::temp_dir().join(format!("tb-load-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).expect("tmp");
        let bad = text.replace(
            "[[timeline]]",
            "[[timeline]]\nat_s = 31\naction = \"kill\"\nprocess = \"smo-z\"\n\n[[timeline]]",
        );
        std::fs::write(tmp.join("bad.toml"), bad).expect("write");
        let err = load(&tmp.join("bad.toml")).expect_err("smo-z");
        let _ = std::fs::remove_dir_all(&tmp);
        let err = err.to_string();
        assert!(
            err.contains("process `smo-z` is no network function of topology two-site (lr, upf-a"),
            "{err}"
        );
    }

    #[test]
    fn reuse_refuses_a_testbed_that_is_not_the_scenarios() {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/thesis-5.4-streamer.toml"),
        )
        .expect("scenario");
        let sc = Scenario::from_toml(&text).expect("valid");
        let topo = crate::spec::TopologySpec::builtin("two-site").expect("builtin");
        let spec = sc.testbed_spec(topo.clone()).expect("spec");
        let mut st = State::new(spec.clone());
        st.complete = true;
        st.token = Some("t".into());
        st.services = Some(sc.services.clone());
        st.notify = sc.scenario.notify;
        assert!(reuse_mismatch(&st, &sc, &spec).is_empty());
        st.spec.ues = 3;
        st.services = None;
        st.notify = crate::scenario::Notify::Early;
        let diff = reuse_mismatch(&st, &sc, &spec).join("; ");
        assert!(
            diff.contains("its SMOs subscribe to EARLY, the scenario asks LATE"),
            "{diff}"
        );
        assert!(
            diff.contains("it has 3 UE(s), the scenario needs 1"),
            "{diff}"
        );
        assert!(diff.contains("its services are the default ones"), "{diff}");
    }
}

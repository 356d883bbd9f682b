//! Raw experiment results: what each run of a scenario measured, and where it is kept.
//!
//! An experiment's directory `DIR` holds:
//!
//! | file | what | written by |
//! |---|---|---|
//! | `meta.json` | [`ExperimentMeta`]: scenario, runs asked, machine, tool versions, commit, start/finish | [`begin`], [`finish`] |
//! | `runs/NNN.json` | one [`RunResult`] per finished run (NNN = run number, from 001), written atomically as the run ends | [`append_run`] |
//! | `runs/NNN-<ue>.pcap` | the packet capture at each UE during run NNN (unless `--no-pcap-keep`) | `crate::experiment` |
//! | `raw.json` | [`Experiment`]: the meta and every run, in run order — everything measured | [`finish`] |
//! | `runs.csv` | one row per relocation (one per run in single-service scenarios; a failed run without a relocation still has a row), a column per thesis Table 4.1 measurement point: [`CSV_COLUMNS`] | [`finish`] |
//!
//! Resuming: [`completed_runs`] lists the runs already in `runs/`; the runner skips them and
//! [`finish`] rebuilds `raw.json` and `runs.csv` from `runs/`. Times in the CSV and the
//! per-phase fields are milliseconds with µs resolution (the SMO's stopwatch counts µs); the
//! records themselves keep µs.

use model::ran::TimelineStep;
use model::smo::{RelocationPhase, RelocationRecord};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::relocations::MergedRelocation;

/// Everything one experiment measured (`raw.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Experiment {
    pub meta: ExperimentMeta,
    /// In run order.
    pub runs: Vec<RunResult>,
}

/// Where and how an experiment ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExperimentMeta {
    /// The scenario's name.
    pub scenario: String,
    /// The scenario file as given.
    pub scenario_file: String,
    pub runs_asked: u32,
    pub machine: MachineInfo,
    /// Tool versions as the runner found them (`criu`, `ovs`, `lxc`, …), absent tools left out.
    #[serde(default)]
    pub tools: BTreeMap<String, String>,
    /// The testbed's git commit (with `-dirty` when the tree had changes), if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_commit: Option<String>,
    /// The scenario file's text as the experiment ran it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scenario_text: Option<String>,
    /// µs since the Unix epoch.
    pub started_unix_us: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_unix_us: Option<u64>,
}

impl ExperimentMeta {
    /// A new experiment's meta, started now on this machine.
    pub fn new(
        scenario: &str,
        scenario_file: &str,
        runs_asked: u32,
        tools: BTreeMap<String, String>,
        git_commit: Option<String>,
    ) -> Self {
        Self {
            scenario: scenario.to_owned(),
            scenario_file: scenario_file.to_owned(),
            runs_asked,
            machine: MachineInfo::detect(),
            tools,
            git_commit,
            scenario_text: None,
            started_unix_us: model::ran::unix_now_us(),
            finished_unix_us: None,
        }
    }
}

/// The machine an experiment ran on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MachineInfo {
    pub hostname: String,
    /// As `uname -srv` prints it: kernel name, release, version.
    pub kernel: String,
    /// CPU architecture (`uname -m`).
    pub arch: String,
    /// CPUs this process may use.
    pub cpus: usize,
    /// `MemTotal` from `/proc/meminfo`, MiB (0 if unknown).
    pub memory_mb: u64,
}

impl MachineInfo {
    /// This machine, from `/proc` (the kernel's `uname` fields live in `/proc/sys/kernel`).
    pub fn detect() -> Self {
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .map(|s| s.trim().to_owned())
                .unwrap_or_default()
        };
        let kernel = ["ostype", "osrelease", "version"]
            .map(|f| read(&format!("/proc/sys/kernel/{f}")))
            .join(" ");
        let memory_mb = read("/proc/meminfo")
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb / 1024);
        Self {
            hostname: read("/proc/sys/kernel/hostname"),
            kernel: kernel.trim().to_owned(),
            arch: std::env::consts::ARCH.to_owned(),
            cpus: std::thread::available_parallelism().map_or(0, usize::from),
            memory_mb,
        }
    }
}

/// One run of the scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunResult {
    /// Run number, from 1.
    pub run: u32,
    /// The run did everything the scenario asked and every relocation completed.
    pub ok: bool,
    /// Why not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// µs since the Unix epoch.
    pub started_unix_us: u64,
    /// Each handover of the run, in order.
    #[serde(default)]
    pub handovers: Vec<HandoverResult>,
    /// Each service relocation the handovers caused.
    #[serde(default)]
    pub relocations: Vec<RelocationResult>,
    /// µs since the Unix epoch, when the run's traffic had ended and everything was collected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_unix_us: Option<u64>,
    /// Each flow of the run (one per UE member of every `[[traffic]]`) and what it reported.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flows: Vec<FlowResult>,
    /// Packet captures kept for the run (file names under `runs/`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub captures: Vec<String>,
    /// Things worth knowing that did not fail the run (e.g. a capture that could not be read).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Peak resident memory (`VmHWM`, kB) of each testbed process by name, read at the run's end.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub peak_rss_kb: BTreeMap<String, u64>,
    /// Each `[[timeline]]` kill of the run, in order: what, when, the PID, or why not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kills: Vec<KillResult>,
    /// A chaos run's schedule as it ran and its verdict (scenarios with `[chaos]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chaos: Option<ChaosRun>,
}

/// One chaos run: its seed, the events as they ran, the stream's report and the verdict. The
/// observer's samples are in `runs/NNN-samples.json` (the evidence behind the verdict). Times
/// are ms on the run's clock, whose zero is `clock_unix_us`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChaosRun {
    /// The run's seed (the scenario's `seed + run − 1`).
    pub seed: u64,
    /// The scenario's UE member that handed over, and the service the observer watched.
    pub ue: String,
    pub service_id: String,
    /// The bound and the sample period the run was judged with.
    pub bound_ms: f64,
    pub sample_ms: u64,
    /// µs since the epoch at the run clock's zero.
    pub clock_unix_us: u64,
    /// When the schedule began (the testbed was converged then), ms.
    pub start_ms: f64,
    /// Each event as it ran.
    pub events: Vec<ChaosEventResult>,
    pub verdict: crate::chaos::ChaosVerdict,
    /// The UE's reconnecting stream's own report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<crate::probe::StreamReport>,
    /// Why there is no stream report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_error: Option<String>,
    /// The samples' file under `runs/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples_file: Option<String>,
}

/// One chaos event as it ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChaosEventResult {
    pub seq: u32,
    pub action: crate::chaos::ChaosAction,
    /// When it was due, when its action began and ended, ms on the run's clock.
    pub due_ms: f64,
    pub started_ms: f64,
    pub done_ms: f64,
    /// A kill: what was killed (PID, node) or why not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill: Option<KillResult>,
    /// Why the action did not happen or failed (a handover refused; "skipped": the UE was at
    /// the target already, an earlier handover having failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ChaosEventResult {
    /// The times the judge needs.
    pub fn times(&self) -> crate::chaos::judge::EventTimes {
        crate::chaos::judge::EventTimes {
            seq: self.seq,
            started_ms: self.started_ms,
            done_ms: self.done_ms,
        }
    }
}

/// One kill (a `[[timeline]]` kill or a chaos event): what was killed, when, its PID, the phase
/// it waited for, or why it could not kill.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KillResult {
    /// The network function, as `testbed status` names it.
    pub process: String,
    /// The node it ran on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Seconds after the run started, as planned (`[[timeline]]` kills).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_s: Option<f64>,
    /// The relocation phase it waited for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RelocationPhase>,
    /// How long into that phase it was to kill, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_ms: Option<u64>,
    /// The relocation whose source record was seen in `phase`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relocation_id: Option<String>,
    /// µs since the Unix epoch, when the runner first saw that record in `phase`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase_seen_unix_us: Option<u64>,
    /// µs since the Unix epoch, when the phase began by the SMO's stopwatch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase_started_unix_us: Option<u64>,
    /// µs since the Unix epoch, when SIGKILL was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub killed_unix_us: Option<u64>,
    /// The PID killed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// Why it did not kill.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl KillResult {
    /// How far into the phase it waited for the kill landed, by the SMO's stopwatch, ms.
    pub fn into_phase_ms(&self) -> Option<f64> {
        let (kill, start) = (self.killed_unix_us?, self.phase_started_unix_us?);
        Some((kill as f64 - start as f64) / 1e3)
    }
}

impl RunResult {
    /// A run that failed before it measured anything.
    pub fn failed(run: u32, started_unix_us: u64, error: String) -> Self {
        Self {
            run,
            ok: false,
            error: Some(error),
            started_unix_us,
            handovers: Vec::new(),
            relocations: Vec::new(),
            finished_unix_us: Some(model::ran::unix_now_us()),
            flows: Vec::new(),
            captures: Vec::new(),
            notes: Vec::new(),
            peak_rss_kb: BTreeMap::new(),
            kills: Vec::new(),
            chaos: None,
        }
    }
}

/// One flow of a run: what the scenario asked and what the flow's own tool reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FlowResult {
    /// The scenario's UE member.
    pub ue: String,
    /// `stream`, `ping`, `iperf3`, `rtmp-play`.
    pub kind: String,
    /// The service id or `dn`, and the address used.
    pub target: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    pub start_s: f64,
    pub duration_s: f64,
    /// The flow ran and its tool was content (`stream`: every byte once, in order, on one
    /// connection; `ping`: some replies).
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The tool's own report (`tbprobe stream`'s JSON; ping's counts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<serde_json::Value>,
}

/// The highest peak resident memory (kB) of each process name over `runs`.
pub fn peak_rss(runs: &[RunResult]) -> BTreeMap<String, u64> {
    let mut out: BTreeMap<String, u64> = BTreeMap::new();
    for (name, kb) in runs.iter().flat_map(|r| &r.peak_rss_kb) {
        let e = out.entry(name.clone()).or_default();
        *e = (*e).max(*kb);
    }
    out
}

/// One handover and the timeline the source gNB reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HandoverResult {
    pub ue: String,
    /// The target site, e.g. `site-b`.
    pub to: String,
    /// request → UE at target → path switch → PFCP → LR update → notifications → release.
    #[serde(default)]
    pub timeline: Vec<TimelineStep>,
    /// µs since the Unix epoch, when the handover was triggered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_unix_us: Option<u64>,
    /// Why the handover failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The relocation it triggered (an id in [`RunResult::relocations`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relocation_id: Option<String>,
    /// Why there is no relocation, or why it did not end in time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relocation_note: Option<String>,
    /// Largest downlink gap of any of the UE's flows after the handover, UE gap recorder, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime_ms: Option<f64>,
    /// The same from the packet capture, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime_capture_ms: Option<f64>,
}

/// One relocation: both SMOs' records and the numbers the report uses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RelocationResult {
    /// The UE whose handover moved the service.
    pub ue: String,
    pub service_id: String,
    /// The source SMO's record (phases, the target's phases as it heard them, total, the
    /// module's report).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<RelocationRecord>,
    /// The target SMO's own record, if it was fetched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<RelocationRecord>,
    /// Time in each phase at the source edge cloud, ms.
    pub source_ms: PhaseMs,
    /// Time in each phase at the target edge cloud, ms (its own record, else as the source heard it).
    pub target_ms: PhaseMs,
    /// Total migration time: notification received → COMPLETE finished at the source, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_ms: Option<f64>,
    /// Service downtime seen by the UE's gap recorder (largest downlink gap of the flow), ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime_ms: Option<f64>,
    /// Service downtime from a packet capture next to the UE, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime_capture_ms: Option<f64>,
    /// Bytes the service module moved to the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_moved: Option<u64>,
}

/// Milliseconds per phase of the success path (absent: the phase did not run or was not reported).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PhaseMs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initiate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prepare: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execute: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub complete: Option<f64>,
}

impl PhaseMs {
    /// The time of `phase` (FAILURE: always `None`).
    pub fn get(&self, phase: RelocationPhase) -> Option<f64> {
        match phase {
            RelocationPhase::Initiate => self.initiate,
            RelocationPhase::Validate => self.validate,
            RelocationPhase::Prepare => self.prepare,
            RelocationPhase::Execute => self.execute,
            RelocationPhase::Complete => self.complete,
            RelocationPhase::Failure => None,
        }
    }

    fn set(&mut self, phase: RelocationPhase, ms: Option<f64>) {
        match phase {
            RelocationPhase::Initiate => self.initiate = ms,
            RelocationPhase::Validate => self.validate = ms,
            RelocationPhase::Prepare => self.prepare = ms,
            RelocationPhase::Execute => self.execute = ms,
            RelocationPhase::Complete => self.complete = ms,
            RelocationPhase::Failure => {}
        }
    }
}

/// µs → ms.
pub fn us_to_ms(us: u64) -> f64 {
    us as f64 / 1e3
}

impl RelocationResult {
    /// Derives the per-phase times, total and bytes from the records.
    pub fn new(
        ue: &str,
        service_id: &str,
        source: Option<RelocationRecord>,
        target: Option<RelocationRecord>,
        downtime_ms: Option<f64>,
        downtime_capture_ms: Option<f64>,
    ) -> Self {
        let merged = MergedRelocation {
            relocation_id: String::new(),
            source,
            target,
        };
        let mut source_ms = PhaseMs::default();
        let mut target_ms = PhaseMs::default();
        for p in RelocationPhase::SUCCESS_PATH {
            source_ms.set(p, merged.source_phase(p).map(|t| us_to_ms(t.took_us)));
            target_ms.set(p, merged.target_phase(p).map(|t| us_to_ms(t.took_us)));
        }
        let total_ms = merged.total_us().map(us_to_ms);
        let bytes_moved = merged
            .source
            .as_ref()
            .and_then(|r| r.execute.as_ref())
            .and_then(|x| x.bytes_moved);
        Self {
            ue: ue.to_owned(),
            service_id: service_id.to_owned(),
            source: merged.source,
            target: merged.target,
            source_ms,
            target_ms,
            total_ms,
            downtime_ms,
            downtime_capture_ms,
            bytes_moved,
        }
    }
}

/// Why results could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum ResultsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path} line {line}: {message}")]
    Csv {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{0}: no meta.json or raw.json (not an experiment directory)")]
    NotAnExperiment(PathBuf),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ResultsError + '_ {
    move |source| ResultsError::Io {
        path: path.to_owned(),
        source,
    }
}

/// `DIR/meta.json`.
pub fn meta_path(dir: &Path) -> PathBuf {
    dir.join("meta.json")
}
/// `DIR/raw.json`.
pub fn raw_path(dir: &Path) -> PathBuf {
    dir.join("raw.json")
}
/// `DIR/runs.csv`.
pub fn csv_path(dir: &Path) -> PathBuf {
    dir.join("runs.csv")
}
/// `DIR/runs/NNN.json` of run `run`.
pub fn run_path(dir: &Path, run: u32) -> PathBuf {
    dir.join("runs").join(format!("{run:03}.json"))
}

/// Writes `bytes` to `path` atomically: a temporary file beside it, synced, then renamed.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ResultsError> {
    use std::io::Write as _;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(bytes).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), ResultsError> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|source| ResultsError::Json {
        path: path.to_owned(),
        source,
    })?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ResultsError> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    serde_json::from_slice(&bytes).map_err(|source| ResultsError::Json {
        path: path.to_owned(),
        source,
    })
}

/// Starts (or resumes) an experiment in `dir`: creates `dir/runs/` and writes `meta.json`.
pub fn begin(dir: &Path, meta: &ExperimentMeta) -> Result<(), ResultsError> {
    let runs = dir.join("runs");
    std::fs::create_dir_all(&runs).map_err(io_err(&runs))?;
    write_json(&meta_path(dir), meta)
}

/// The meta of the experiment in `dir`, if it has one.
pub fn read_meta(dir: &Path) -> Result<Option<ExperimentMeta>, ResultsError> {
    let path = meta_path(dir);
    if !path.exists() {
        return Ok(None);
    }
    read_json(&path).map(Some)
}

/// Records a finished run as `dir/runs/NNN.json` (replacing an earlier try of the same run).
pub fn append_run(dir: &Path, run: &RunResult) -> Result<(), ResultsError> {
    let runs = dir.join("runs");
    std::fs::create_dir_all(&runs).map_err(io_err(&runs))?;
    write_json(&run_path(dir, run.run), run)
}

/// The run numbers already recorded in `dir/runs/` (failed runs included: read them with
/// [`read_runs`] to retry those).
pub fn completed_runs(dir: &Path) -> Result<BTreeSet<u32>, ResultsError> {
    Ok(run_files(dir)?.into_keys().collect())
}

fn run_files(dir: &Path) -> Result<BTreeMap<u32, PathBuf>, ResultsError> {
    let runs = dir.join("runs");
    let mut out = BTreeMap::new();
    let entries = match std::fs::read_dir(&runs) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_err(&runs)(e)),
    };
    for entry in entries {
        let path = entry.map_err(io_err(&runs))?.path();
        let run = path
            .extension()
            .filter(|e| *e == "json")
            .and(path.file_stem())
            .and_then(|s| s.to_str())
            .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<u32>().ok());
        if let Some(run) = run {
            out.insert(run, path);
        }
    }
    Ok(out)
}

/// Every run recorded in `dir/runs/`, in run order.
pub fn read_runs(dir: &Path) -> Result<Vec<RunResult>, ResultsError> {
    run_files(dir)?
        .values()
        .map(|p| read_json::<RunResult>(p))
        .collect()
}

/// Ends an experiment: stamps `finished` (if unset), writes `meta.json`, `raw.json` and
/// `runs.csv` from the runs in `dir/runs/`, and returns the whole.
pub fn finish(dir: &Path, meta: &ExperimentMeta) -> Result<Experiment, ResultsError> {
    let mut meta = meta.clone();
    meta.finished_unix_us
        .get_or_insert_with(model::ran::unix_now_us);
    write_json(&meta_path(dir), &meta)?;
    let experiment = Experiment {
        meta,
        runs: read_runs(dir)?,
    };
    write_outputs(dir, &experiment)?;
    Ok(experiment)
}

/// Writes `raw.json` and `runs.csv`.
pub fn write_outputs(dir: &Path, experiment: &Experiment) -> Result<(), ResultsError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    write_json(&raw_path(dir), experiment)?;
    write_atomic(&csv_path(dir), to_csv(&experiment.runs).as_bytes())
}

/// `raw.json`.
pub fn read_raw(dir: &Path) -> Result<Experiment, ResultsError> {
    read_json(&raw_path(dir))
}

/// The experiment in `dir` for a report: `raw.json`, unless `runs/` holds runs it lacks (an
/// experiment still running, interrupted, or resumed after it finished), then `meta.json` +
/// `runs/`.
pub fn load(dir: &Path) -> Result<Experiment, ResultsError> {
    let files = run_files(dir)?;
    if raw_path(dir).exists() {
        let raw = read_raw(dir)?;
        let have: BTreeSet<u32> = raw.runs.iter().map(|r| r.run).collect();
        if files.keys().all(|r| have.contains(r)) {
            return Ok(raw);
        }
    }
    let meta = read_meta(dir)?.ok_or_else(|| ResultsError::NotAnExperiment(dir.to_owned()))?;
    Ok(Experiment {
        meta,
        runs: read_runs(dir)?,
    })
}

/// The columns of `runs.csv`: the run, the relocation within it, then thesis Table 4.1's
/// measurement points (source phases, target phases, total migration time, downtime — UE gap
/// recorder and packet capture —, data transferred), then the outcome.
pub const CSV_COLUMNS: [&str; 22] = [
    "run",
    "relocation",
    "ue",
    "service",
    "started_unix_us",
    "src_initiate_ms",
    "src_validate_ms",
    "src_prepare_ms",
    "src_execute_ms",
    "src_complete_ms",
    "tgt_initiate_ms",
    "tgt_validate_ms",
    "tgt_prepare_ms",
    "tgt_execute_ms",
    "tgt_complete_ms",
    "total_ms",
    "downtime_ms",
    "downtime_capture_ms",
    "bytes_moved",
    "ok",
    "error",
    "relocation_state",
];

/// One row of `runs.csv`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CsvRow {
    pub run: u32,
    /// From 1 within the run; `None` for a run without relocations.
    pub relocation: Option<u32>,
    pub ue: String,
    pub service: String,
    pub started_unix_us: u64,
    pub source_ms: PhaseMs,
    pub target_ms: PhaseMs,
    pub total_ms: Option<f64>,
    pub downtime_ms: Option<f64>,
    pub downtime_capture_ms: Option<f64>,
    pub bytes_moved: Option<u64>,
    pub ok: bool,
    pub error: String,
    /// The source's record's state (`COMPLETED`, `FAILED`, `RUNNING`), empty without one.
    pub relocation_state: String,
}

/// The rows of `runs.csv` for `runs`.
pub fn csv_rows(runs: &[RunResult]) -> Vec<CsvRow> {
    let mut rows = Vec::new();
    for r in runs {
        let base = CsvRow {
            run: r.run,
            started_unix_us: r.started_unix_us,
            ok: r.ok,
            error: r.error.clone().unwrap_or_default(),
            ..CsvRow::default()
        };
        if r.relocations.is_empty() {
            rows.push(base);
            continue;
        }
        for (i, x) in r.relocations.iter().enumerate() {
            let state = x
                .source
                .as_ref()
                .or(x.target.as_ref())
                .and_then(|rec| serde_json::to_value(rec.state).ok())
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            rows.push(CsvRow {
                relocation: u32::try_from(i + 1).ok(),
                ue: x.ue.clone(),
                service: x.service_id.clone(),
                source_ms: x.source_ms,
                target_ms: x.target_ms,
                total_ms: x.total_ms,
                downtime_ms: x.downtime_ms,
                downtime_capture_ms: x.downtime_capture_ms,
                bytes_moved: x.bytes_moved,
                relocation_state: state,
                ..base.clone()
            });
        }
    }
    rows
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.3}")).unwrap_or_default()
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

impl CsvRow {
    fn fields(&self) -> Vec<String> {
        let mut f = vec![
            self.run.to_string(),
            self.relocation.map(|r| r.to_string()).unwrap_or_default(),
            self.ue.clone(),
            self.service.clone(),
            self.started_unix_us.to_string(),
        ];
        for phases in [&self.source_ms, &self.target_ms] {
            for p in RelocationPhase::SUCCESS_PATH {
                f.push(fmt_ms(phases.get(p)));
            }
        }
        f.push(fmt_ms(self.total_ms));
        f.push(fmt_ms(self.downtime_ms));
        f.push(fmt_ms(self.downtime_capture_ms));
        f.push(self.bytes_moved.map(|b| b.to_string()).unwrap_or_default());
        f.push(self.ok.to_string());
        f.push(self.error.clone());
        f.push(self.relocation_state.clone());
        f
    }

    fn from_fields(f: &[String]) -> Result<Self, String> {
        if f.len() != CSV_COLUMNS.len() {
            return Err(format!(
                "{} fields, expected {}",
                f.len(),
                CSV_COLUMNS.len()
            ));
        }
        fn num<T: std::str::FromStr>(f: &[String], i: usize) -> Result<Option<T>, String> {
            let s = f[i].trim();
            if s.is_empty() {
                return Ok(None);
            }
            s.parse()
                .map(Some)
                .map_err(|_| format!("{} = `{s}` is not a number", CSV_COLUMNS[i]))
        }
        let mut phases = [PhaseMs::default(), PhaseMs::default()];
        for (side, ph) in phases.iter_mut().enumerate() {
            for (k, p) in RelocationPhase::SUCCESS_PATH.into_iter().enumerate() {
                ph.set(p, num(f, 5 + side * 5 + k)?);
            }
        }
        let [source_ms, target_ms] = phases;
        Ok(Self {
            run: num(f, 0)?.ok_or("run is empty")?,
            relocation: num(f, 1)?,
            ue: f[2].clone(),
            service: f[3].clone(),
            started_unix_us: num(f, 4)?.unwrap_or(0),
            source_ms,
            target_ms,
            total_ms: num(f, 15)?,
            downtime_ms: num(f, 16)?,
            downtime_capture_ms: num(f, 17)?,
            bytes_moved: num(f, 18)?,
            ok: match f[19].as_str() {
                "true" => true,
                "false" => false,
                other => return Err(format!("ok = `{other}` is not true or false")),
            },
            error: f[20].clone(),
            relocation_state: f[21].clone(),
        })
    }
}

/// `runs.csv` for `runs` (RFC 4180: comma-separated, fields with commas, quotes or newlines
/// quoted; a header line).
pub fn to_csv(runs: &[RunResult]) -> String {
    let mut out = CSV_COLUMNS.join(",");
    out.push('\n');
    for row in csv_rows(runs) {
        let fields: Vec<String> = row.fields().iter().map(|f| csv_field(f)).collect();
        out.push_str(&fields.join(","));
        out.push('\n');
    }
    out
}

/// A CSV record: the line it starts on, and its fields.
type CsvRecord = (usize, Vec<String>);

/// Splits RFC 4180 text into records; an error carries the line and what is wrong.
fn parse_csv(text: &str) -> Result<Vec<CsvRecord>, (usize, String)> {
    let mut records = Vec::new();
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut line = 1;
    let mut start = 1;
    let mut chars = text.chars().peekable();
    let mut any = false;
    while let Some(c) = chars.next() {
        any = true;
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => quoted = false,
                c => {
                    if c == '\n' {
                        line += 1;
                    }
                    field.push(c);
                }
            }
            continue;
        }
        match c {
            '"' if field.is_empty() => quoted = true,
            ',' => fields.push(std::mem::take(&mut field)),
            '\r' => {}
            '\n' => {
                fields.push(std::mem::take(&mut field));
                records.push((start, std::mem::take(&mut fields)));
                line += 1;
                start = line;
                any = false;
            }
            c => field.push(c),
        }
    }
    if quoted {
        return Err((start, "unterminated quoted field".into()));
    }
    if any {
        fields.push(field);
        records.push((start, fields));
    }
    Ok(records)
}

/// Reads `runs.csv` back.
pub fn read_csv(dir: &Path) -> Result<Vec<CsvRow>, ResultsError> {
    let path = csv_path(dir);
    let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
    let csv_err = |line, message| ResultsError::Csv {
        path: path.clone(),
        line,
        message,
    };
    let records = parse_csv(&text).map_err(|(l, m)| csv_err(l, m))?;
    let mut it = records.into_iter();
    match it.next() {
        Some((_, header)) if header == CSV_COLUMNS => {}
        Some((l, header)) => {
            return Err(csv_err(
                l,
                format!(
                    "header `{}` is not `{}`",
                    header.join(","),
                    CSV_COLUMNS.join(",")
                ),
            ))
        }
        None => return Err(csv_err(1, "empty file".into())),
    }
    it.map(|(l, f)| CsvRow::from_fields(&f).map_err(|m| csv_err(l, m)))
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use model::common::Dnai;
    use model::smo::{
        ExecuteReport, PhaseTiming, RelocationRole, RelocationState, RelocationType, Service,
    };

    /// A relocation record with the given phase times (µs, success path order).
    pub(crate) fn record(
        role: RelocationRole,
        phases_us: [u64; 5],
        total_us: Option<u64>,
        bytes: Option<u64>,
    ) -> RelocationRecord {
        let mut start = 0;
        let phases = RelocationPhase::SUCCESS_PATH
            .into_iter()
            .zip(phases_us)
            .map(|(phase, took_us)| {
                let p = PhaseTiming {
                    phase,
                    start_us: start,
                    took_us,
                    flow_install_us: None,
                    flow_mods: 0,
                };
                start += took_us;
                p
            })
            .collect();
        RelocationRecord {
            relocation_id: "r1".into(),
            role,
            state: RelocationState::Completed,
            phase: RelocationPhase::Complete,
            ue_ipv4_addr: std::net::Ipv4Addr::new(192, 168, 1, 2),
            source_dnai: Dnai("edge-x".into()),
            target_dnai: Dnai("edge-y".into()),
            peer: None,
            service: Service {
                service_id: "svc".into(),
                ipv4_addr: std::net::Ipv4Addr::new(20, 0, 0, 50),
                mac_addr: "02:00:00:00:00:50".into(),
                ovs_port: "svc".into(),
                relocation_type: RelocationType::Criu,
                resource_requirements: Default::default(),
                ue_ipv4_addrs: vec![],
            },
            module_id: None,
            target_module_address: None,
            started_unix_us: 1_700_000_000_000_000,
            phases,
            peer_phases: vec![],
            total_us,
            execute: bytes.map(|b| ExecuteReport {
                took_us: phases_us[3],
                bytes_moved: Some(b),
                steps: vec![],
            }),
            cause: None,
            control: Default::default(),
            af_ack: None,
        }
    }

    /// A successful run: source phases `src` (µs), target phases `tgt` (µs), total, downtimes.
    pub(crate) fn ok_run(
        run: u32,
        src: [u64; 5],
        tgt: [u64; 5],
        total_us: u64,
        downtime_ms: f64,
        capture_ms: Option<f64>,
    ) -> RunResult {
        let mut source = record(RelocationRole::Source, src, Some(total_us), Some(1_000_000));
        // The source heard the target's phases; the target's own record is fetched too.
        source.peer_phases = record(RelocationRole::Target, tgt, None, None).phases;
        let target = record(RelocationRole::Target, tgt, None, None);
        RunResult {
            run,
            ok: true,
            error: None,
            started_unix_us: 1_700_000_000_000_000 + u64::from(run) * 60_000_000,
            handovers: vec![HandoverResult {
                ue: "ue1".into(),
                to: "site-b".into(),
                timeline: vec![TimelineStep {
                    step: "handover request".into(),
                    at_us: 0,
                    took_us: 1200,
                    at_unix_us: None,
                }],
                started_unix_us: None,
                error: None,
                relocation_id: Some("r1".into()),
                relocation_note: None,
                downtime_ms: Some(downtime_ms),
                downtime_capture_ms: capture_ms,
            }],
            relocations: vec![RelocationResult::new(
                "ue1",
                "svc",
                Some(source),
                Some(target),
                Some(downtime_ms),
                capture_ms,
            )],
            finished_unix_us: None,
            flows: vec![],
            captures: vec![],
            notes: vec![],
            peak_rss_kb: [("smo-x".to_owned(), 9000 + u64::from(run))].into(),
            kills: vec![],
            chaos: None,
        }
    }

    pub(crate) fn failed_run(run: u32, error: &str) -> RunResult {
        let mut r = RunResult::failed(run, 1_700_000_000_000_000, error.into());
        r.finished_unix_us = None;
        r
    }

    fn tmp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tb-results-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn relocation_result_derives_phase_times_from_the_records() {
        let run = ok_run(
            1,
            [1000, 2000, 3000, 400_000, 5000],
            [10, 20, 30, 40, 50],
            411_000,
            120.0,
            None,
        );
        let x = &run.relocations[0];
        assert_eq!(x.source_ms.initiate, Some(1.0));
        assert_eq!(x.source_ms.execute, Some(400.0));
        assert_eq!(x.target_ms.complete, Some(0.05));
        assert_eq!(x.total_ms, Some(411.0));
        assert_eq!(x.bytes_moved, Some(1_000_000));
        // Without the target's record, the target's phases come from the source's peer_phases.
        let y = RelocationResult::new("ue1", "svc", x.source.clone(), None, None, None);
        assert_eq!(y.target_ms, x.target_ms);
        assert_eq!(y.source_ms.get(RelocationPhase::Failure), None);
    }

    #[test]
    fn machine_info_is_detected() {
        let m = MachineInfo::detect();
        assert!(m.cpus >= 1);
        assert!(m.kernel.starts_with("Linux"), "{}", m.kernel);
        assert!(m.memory_mb > 0);
        assert!(!m.hostname.is_empty());
    }

    #[test]
    fn runs_append_resume_and_finish() {
        let dir = tmp_dir("resume");
        let meta = ExperimentMeta::new(
            "t",
            "scenarios/t.toml",
            3,
            [("criu".to_owned(), "4.2".to_owned())].into(),
            Some("abc123".into()),
        );
        begin(&dir, &meta).expect("begin");
        assert!(completed_runs(&dir).expect("list").is_empty());
        assert!(matches!(load(&dir), Ok(e) if e.runs.is_empty()));
        append_run(
            &dir,
            &ok_run(1, [1, 2, 3, 4, 5], [1, 2, 3, 4, 5], 15, 10.0, Some(11.0)),
        )
        .expect("append 1");
        append_run(&dir, &failed_run(2, "handover timed out")).expect("append 2");
        assert_eq!(completed_runs(&dir).expect("list"), BTreeSet::from([1, 2]));
        // An interrupted experiment reads from meta.json + runs/.
        assert_eq!(load(&dir).expect("load").runs.len(), 2);
        assert_eq!(read_meta(&dir).expect("meta"), Some(meta.clone()));
        // A retry of run 2 replaces it.
        append_run(
            &dir,
            &ok_run(2, [1, 2, 3, 4, 5], [1, 2, 3, 4, 5], 15, 10.0, None),
        )
        .expect("retry 2");
        let e = finish(&dir, &meta).expect("finish");
        assert_eq!(e.runs.len(), 2);
        assert!(e.runs.iter().all(|r| r.ok));
        assert!(e.meta.finished_unix_us.is_some());
        assert_eq!(read_raw(&dir).expect("raw"), e);
        // Resumed after finishing: load sees the new run although raw.json lacks it.
        append_run(&dir, &failed_run(3, "x")).expect("append 3");
        assert_eq!(load(&dir).expect("load").runs.len(), 3);
        let e = finish(&dir, &e.meta).expect("finish again");
        assert_eq!(load(&dir).expect("load"), e);
        assert_eq!(
            e.meta.finished_unix_us,
            read_meta(&dir).expect("m").and_then(|m| m.finished_unix_us)
        );
        let _ = std::fs::remove_dir_all(&dir);
        assert!(matches!(load(&dir), Err(ResultsError::NotAnExperiment(_))));
    }

    #[test]
    fn csv_has_a_column_per_measurement_point_and_reads_back() {
        let runs = vec![
            ok_run(
                1,
                [19_000, 1_000, 32_000, 2_438_000, 36_000],
                [500, 200, 18_000, 18_000, 85_000],
                2_649_000,
                1255.79,
                Some(1256.5),
            ),
            failed_run(2, "restore failed: \"criu\" said, no"),
        ];
        let text = to_csv(&runs);
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some("run,relocation,ue,service,started_unix_us,src_initiate_ms,src_validate_ms,src_prepare_ms,src_execute_ms,src_complete_ms,tgt_initiate_ms,tgt_validate_ms,tgt_prepare_ms,tgt_execute_ms,tgt_complete_ms,total_ms,downtime_ms,downtime_capture_ms,bytes_moved,ok,error,relocation_state")
        );
        assert_eq!(
            lines.next(),
            Some("1,1,ue1,svc,1700000060000000,19.000,1.000,32.000,2438.000,36.000,0.500,0.200,18.000,18.000,85.000,2649.000,1255.790,1256.500,1000000,true,,COMPLETED")
        );
        assert_eq!(
            lines.next(),
            Some("2,,,,1700000000000000,,,,,,,,,,,,,,,false,\"restore failed: \"\"criu\"\" said, no\",")
        );
        let dir = tmp_dir("csv");
        write_outputs(
            &dir,
            &Experiment {
                meta: ExperimentMeta::new("t", "t.toml", 2, BTreeMap::new(), None),
                runs: runs.clone(),
            },
        )
        .expect("write");
        let back = read_csv(&dir).expect("read back");
        assert_eq!(back, csv_rows(&runs));
        assert_eq!(back[1].error, "restore failed: \"criu\" said, no");
        std::fs::write(csv_path(&dir), "run,ok\n1,true\n").expect("write bad");
        let err = read_csv(&dir).expect_err("bad header");
        assert!(err.to_string().contains("line 1"), "{err}");
        std::fs::write(csv_path(&dir), format!("{}\n1,x\n", CSV_COLUMNS.join(","))).expect("w");
        let err = read_csv(&dir).expect_err("short row");
        assert!(err.to_string().contains("line 2: 2 fields"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn csv_parser_handles_quotes_and_newlines() {
        let r = parse_csv("a,\"b,c\"\n\"x\"\"y\",\"multi\nline\"\nlast,").expect("parses");
        assert_eq!(r[0], (1, vec!["a".to_owned(), "b,c".to_owned()]));
        assert_eq!(r[1], (2, vec!["x\"y".to_owned(), "multi\nline".to_owned()]));
        assert_eq!(r[2], (4, vec!["last".to_owned(), String::new()]));
        assert!(parse_csv("\"open").is_err());
    }
}

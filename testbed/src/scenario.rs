//! Experiment scenarios: what one experiment does in each of its runs, written as TOML
//! (`scenarios/*.toml`; the format is documented in `scenarios/README.md`).
//!
//! ```toml
//! [scenario]
//! name = "thesis-5.4"          # 1-32 of a-z, 0-9, '-', '.'; names the results directory
//! description = "…"
//! topology = "two-site"        # a built-in topology, or a TOML file (relative to this file)
//! runs = 50                    # how many times the run is repeated
//! notify = "LATE"              # the SMOs' UP_PATH_CH subscription: "LATE" or "EARLY"
//! observe_s = 10               # seconds the run keeps measuring after the last handover
//!
//! [[ue]]                       # UEs; `count = N` makes a group name1..nameN
//! name = "ue1"
//!
//! [[service]]                  # services, each started at its edge cloud before the run
//! id = "nginx"
//! edge = "edge-x"
//! backend = "criu"             # "criu" | "lxc" | "lxd"
//! strategy = "stop_and_copy"   # "stop_and_copy" | "lazy_pages" (criu only)
//! kind = "nginx-rtmp"          # "streamer" | "nginx-rtmp" | "ballast" (+ memory_mb)
//! serves = ["ue1"]
//!
//! [[traffic]]                  # what each UE does during the run
//! ue = "ue1"
//! kind = "rtmp-play"           # "stream" | "rtmp-play" | "iperf3" | "ping"
//! target = "nginx"             # a service id, or "dn" (the central DN server)
//! start_s = 0
//! duration_s = 40
//! params = { buffer_ms = 1000 }
//!
//! [[timeline]]                 # what happens when, seconds after the traffic started
//! at_s = 30
//! action = "handover"
//! ue = "ue1"                   # a UE, or a whole group (its members hand over together)
//! to = "site-b"
//! ```
//!
//! The model is small on purpose: [`Scenario::from_toml`] parses (every table refuses unknown
//! fields) and checks everything that needs no topology — names, numbers, cross-references, the
//! timing of handovers; [`Scenario::check_topology`] checks edges and sites against the topology;
//! [`Scenario::load`] does both for a file. Every refusal names the field and says why.
//!
//! Timing: a run starts its traffic at `t = 0` (each flow at its `start_s`) and lasts until the
//! last flow ends ([`Scenario::run_duration_s`]). Every handover happens inside the run and leaves
//! `observe_s` of traffic after it. UEs all attach at the topology's first site; UE member *i* of
//! the scenario (in declaration order, groups expanded) is the testbed's `ue<i>`
//! ([`Scenario::ue_members`]).

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use model::smo::RelocationPhase;

use crate::spec::{SpecError, TopologySpec, MAX_UES};

/// Most runs one experiment may ask for.
pub const MAX_RUNS: u32 = 10_000;
/// Longest run, seconds (traffic end).
pub const MAX_RUN_S: f64 = 3600.0;
/// The `target` of a flow that goes to the central DN server instead of a service.
pub const DN_TARGET: &str = "dn";

/// One experiment as written in a scenario file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Name, topology, repetitions.
    pub scenario: ScenarioHeader,
    /// The UEs (`[[ue]]`), in testbed order.
    #[serde(default, rename = "ue")]
    pub ues: Vec<UeSpec>,
    /// The services (`[[service]]`).
    #[serde(default, rename = "service")]
    pub services: Vec<ServiceSpec>,
    /// The UEs' flows (`[[traffic]]`).
    #[serde(default)]
    pub traffic: Vec<TrafficSpec>,
    /// The events of a run (`[[timeline]]`).
    #[serde(default)]
    pub timeline: Vec<TimelineEvent>,
    /// `[chaos]`: each run is a seeded random schedule of handovers and kills instead of
    /// `[[traffic]]` and `[[timeline]]` ([`crate::chaos`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chaos: Option<ChaosSpec>,
}

/// The `[chaos]` table: a run of the scenario is a seeded random schedule of ping-pong
/// handovers of one UE and kills of network functions, watched by an observer that judges
/// every event ([`crate::chaos`]). Defaults in the field docs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChaosSpec {
    /// The seed of run 1; run *k* uses `seed + k − 1` (default 1).
    #[serde(default = "chaos_default_seed")]
    pub seed: u64,
    /// Events per run (1..=[`MAX_CHAOS_EVENTS`]).
    pub events: u32,
    /// The time from one event to the next, ms, drawn uniformly from `[min, max]` (default
    /// `[50, 3000]`).
    #[serde(default = "chaos_default_interval")]
    pub interval_ms: [u64; 2],
    /// The UE that hands over (a UE or group member; default the first UE). Exactly one
    /// service serves it, a `streamer` or `ballast`: the observer streams from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ue: Option<String>,
    /// The network functions a kill picks from, uniformly (default none: handovers only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kill: Vec<String>,
    /// The share of the events that are kills, 0..=1 (default 0.25 when `kill` names
    /// processes): exactly `round(events × kill_share)` of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill_share: Option<f64>,
    /// The bound, seconds (default 5): an event must converge within it unless the next event
    /// comes first, and the UE's stream may never be silent longer.
    #[serde(default = "chaos_default_bound")]
    pub bound_s: f64,
    /// How often the observer samples the truth, ms (20..=1000, default 100).
    #[serde(default = "chaos_default_sample")]
    pub sample_ms: u64,
}

fn chaos_default_seed() -> u64 {
    1
}
fn chaos_default_interval() -> [u64; 2] {
    [50, 3000]
}
fn chaos_default_bound() -> f64 {
    5.0
}
fn chaos_default_sample() -> u64 {
    100
}

/// Most events a chaos run may have.
pub const MAX_CHAOS_EVENTS: u32 = 10_000;
/// The share of kills when `kill` names processes and `kill_share` is not given.
pub const DEFAULT_KILL_SHARE: f64 = 0.25;

impl ChaosSpec {
    /// The share of kills: as given, else [`DEFAULT_KILL_SHARE`] when `kill` names processes.
    pub fn kill_share(&self) -> f64 {
        match (self.kill_share, self.kill.is_empty()) {
            (Some(s), _) => s,
            (None, true) => 0.0,
            (None, false) => DEFAULT_KILL_SHARE,
        }
    }

    /// The seed of run `run` (from 1): `seed + run − 1`.
    pub fn run_seed(&self, run: u32) -> u64 {
        self.seed.wrapping_add(u64::from(run.saturating_sub(1)))
    }

    /// The bound in ms.
    pub fn bound_ms(&self) -> f64 {
        self.bound_s * 1e3
    }
}

/// The `[scenario]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioHeader {
    /// 1-32 of `a-z`, `0-9`, `-` and `.`, starting with a letter; names the results.
    pub name: String,
    /// What the experiment shows (free text).
    #[serde(default)]
    pub description: String,
    /// A built-in topology (`two-site`, `three-site`) or a topology TOML file, relative to the
    /// scenario file.
    pub topology: String,
    /// How many times the run is repeated (1..=[`MAX_RUNS`]).
    pub runs: u32,
    /// Which `UP_PATH_CH` notification the SMOs subscribe to.
    #[serde(default)]
    pub notify: Notify,
    /// Seconds of traffic measured after the last handover (> 0).
    pub observe_s: f64,
}

/// The SMOs' `UP_PATH_CH` subscription (`LATE` | `EARLY`): the SMO's own setting.
pub use smo::config::NotifyWhen as Notify;

/// A `[[ue]]`: one UE, or a group of `count` UEs named `<name>1` … `<name>N`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UeSpec {
    /// The UE's name (1-16 of `a-z`, `0-9`, `-`), or the group's.
    pub name: String,
    /// UEs in the group (default 1: a single UE called `name`).
    #[serde(default = "one")]
    pub count: u16,
}

fn one() -> u16 {
    1
}

/// A `[[service]]`: a service started at an edge cloud before each run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// Unique id (1-13 of `a-z`, `0-9`, `-`; not `dn`): it names the OVS port `s-<id>`.
    pub id: String,
    /// The edge cloud it starts at, as the topology names its node: `edge-<edge>`.
    pub edge: String,
    /// The service module backend that migrates it.
    pub backend: Backend,
    /// How its memory moves.
    #[serde(default)]
    pub strategy: Strategy,
    /// What runs inside.
    pub kind: ServiceKind,
    /// `ballast` only: resident memory the service holds (MB, touched at start).
    #[serde(default)]
    pub memory_mb: Option<u32>,
    /// The UEs (or groups) it serves; their handovers move it.
    pub serves: Vec<String>,
}

/// Service module backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// A process tree in its own namespaces, dumped and restored with CRIU.
    Criu,
    /// An LXC container (`lxc-checkpoint`).
    Lxc,
    /// An LXD container (LXD's live migration, as in the thesis).
    Lxd,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Criu => "criu",
            Self::Lxc => "lxc",
            Self::Lxd => "lxd",
        })
    }
}

impl fmt::Display for ServiceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Streamer => "streamer",
            Self::NginxRtmp => "nginx-rtmp",
            Self::Ballast => "ballast",
        })
    }
}

/// How the memory of a service moves (`stop_and_copy` | `lazy_pages`; the kebab-case spellings
/// are accepted too): the service module's own setting.
pub use svcmod::Strategy;

/// What a service runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceKind {
    /// The testbed's test streamer (TCP stream of numbered chunks, UDP echo).
    Streamer,
    /// nginx with the RTMP module serving a test video (thesis §5.1).
    NginxRtmp,
    /// The test streamer holding `memory_mb` of resident memory.
    Ballast,
}

/// A `[[traffic]]`: one flow of one UE (or of every member of a group).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficSpec {
    /// The UE or group.
    pub ue: String,
    pub kind: TrafficKind,
    /// A service id, or `dn` for the central DN server.
    pub target: String,
    /// Seconds after the run started (≥ 0).
    pub start_s: f64,
    /// Seconds the flow lasts (> 0).
    pub duration_s: f64,
    /// Kind-specific settings.
    #[serde(default)]
    pub params: TrafficParams,
}

/// Kind of flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrafficKind {
    /// The test stream (TCP, downlink) from a streamer/ballast service or the DN.
    Stream,
    /// `ffmpeg` playing the RTMP stream of an nginx-rtmp service.
    RtmpPlay,
    /// `iperf3` against the DN server (services run no iperf3 server).
    Iperf3,
    /// ICMP echo to a service or the DN.
    Ping,
}

impl fmt::Display for TrafficKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Stream => "stream",
            Self::RtmpPlay => "rtmp-play",
            Self::Iperf3 => "iperf3",
            Self::Ping => "ping",
        })
    }
}

/// `params = { … }` of a flow; each key belongs to some kinds only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficParams {
    /// `stream`: ms between chunks; `ping`: ms between echo requests (1..=10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_ms: Option<u32>,
    /// `rtmp-play`: the player's buffer in ms (the thesis used 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buffer_ms: Option<u32>,
    /// `iperf3`: target bitrate as iperf3's `-b` takes it, e.g. `"50M"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bitrate: Option<String>,
    /// `iperf3`: downlink (server sends, `-R`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reverse: Option<bool>,
}

/// A `[[timeline]]` event. Which keys it takes depends on its `action` (checked by
/// [`Scenario::validate`]); read a validated one through [`TimelineEvent::step`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimelineEvent {
    /// Seconds after the run started.
    pub at_s: f64,
    pub action: Action,
    /// `handover`: the UE, or a group whose members all hand over at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ue: Option<String>,
    /// `handover`: the site to hand over to, as the topology names its node: `site-<site>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// `kill`: the network function, as `testbed status` names it (`smo-y`, `svcmod-x`, `smf`,
    /// `upf-a`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<String>,
    /// `kill`: from `at_s`, wait until a relocation's source record (any SMO, begun during the
    /// run) is in this phase, then kill.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RelocationPhase>,
    /// `kill` with `phase`: how long into the phase (ms after the runner saw it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_ms: Option<u64>,
}

/// What a timeline event does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Xn handover with UPF relocation (`testbed handover`).
    Handover,
    /// SIGKILL to one of the testbed's network functions (`testbed kill`); the supervisor starts
    /// it again.
    Kill,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Handover => "handover",
            Self::Kill => "kill",
        })
    }
}

/// What a (validated) timeline event does, with the keys its action takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step<'a> {
    Handover { ue: &'a str, to: &'a str },
    Kill(Kill<'a>),
}

/// A scripted kill: which process, and optionally when relative to a relocation phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kill<'a> {
    pub process: &'a str,
    pub phase: Option<RelocationPhase>,
    /// ms into `phase` (0 without a phase).
    pub after_ms: u64,
}

/// The longest `after_ms` of a kill.
pub const MAX_AFTER_MS: u64 = 60_000;

impl TimelineEvent {
    /// The event's action with its keys (empty strings where a key is missing: validate first).
    pub fn step(&self) -> Step<'_> {
        fn s(o: &Option<String>) -> &str {
            o.as_deref().unwrap_or_default()
        }
        match self.action {
            Action::Handover => Step::Handover {
                ue: s(&self.ue),
                to: s(&self.to),
            },
            Action::Kill => Step::Kill(Kill {
                process: s(&self.process),
                phase: self.phase,
                after_ms: self.after_ms.unwrap_or(0),
            }),
        }
    }

    /// `handover of ue1 at 30 s`, `kill of smo-y at 12 s` (for messages).
    fn describe(&self) -> String {
        let of = match self.step() {
            Step::Handover { ue, .. } => ue,
            Step::Kill(k) => k.process,
        };
        if of.is_empty() {
            format!("{} at {} s", self.action, self.at_s)
        } else {
            format!("{} of {of} at {} s", self.action, self.at_s)
        }
    }
}

/// Why a scenario was refused.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read scenario {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse scenario: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("invalid scenario: {0}")]
    Invalid(String),
    #[error("scenario topology `{topology}`: {source}")]
    Topology {
        topology: String,
        #[source]
        source: SpecError,
    },
    #[error("cannot read scenario topology {path}: {source}")]
    TopologyRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn invalid<T>(m: String) -> Result<T, ScenarioError> {
    Err(ScenarioError::Invalid(m))
}

impl Scenario {
    /// Parses a scenario and checks everything that needs no topology.
    pub fn from_toml(text: &str) -> Result<Self, ScenarioError> {
        let s: Self = toml::from_str(text)?;
        s.validate()?;
        Ok(s)
    }

    /// Reads, parses and fully checks a scenario file; its topology is resolved relative to the
    /// file's directory.
    pub fn load(path: &Path) -> Result<(Self, TopologySpec), ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.to_owned(),
            source,
        })?;
        let s = Self::from_toml(&text)?;
        let topo = s.topology(path.parent().unwrap_or(Path::new(".")))?;
        s.check_topology(&topo)?;
        Ok((s, topo))
    }

    /// The scenario's topology: built in, or the file `topology` (relative paths from `base`).
    pub fn topology(&self, base: &Path) -> Result<TopologySpec, ScenarioError> {
        let t = &self.scenario.topology;
        let wrap = |source| ScenarioError::Topology {
            topology: t.clone(),
            source,
        };
        if !t.ends_with(".toml") && !t.contains('/') {
            return TopologySpec::builtin(t).map_err(wrap);
        }
        let path = base.join(t);
        let text = std::fs::read_to_string(&path)
            .map_err(|source| ScenarioError::TopologyRead { path, source })?;
        TopologySpec::from_toml(&text).map_err(wrap)
    }

    /// The UEs one by one, groups expanded, in declaration order: member *i* (from 0) is the
    /// testbed's `ue<i+1>`.
    pub fn ue_members(&self) -> Vec<String> {
        self.ues.iter().flat_map(UeSpec::members).collect()
    }

    /// The members a reference (a UE name or a group name) stands for; empty if unknown.
    pub fn resolve_ue(&self, name: &str) -> Vec<String> {
        for u in &self.ues {
            let members = u.members();
            if u.name == name {
                return members;
            }
            if members.iter().any(|m| m == name) {
                return vec![name.to_owned()];
            }
        }
        Vec::new()
    }

    /// The service with `id`.
    pub fn service(&self, id: &str) -> Option<&ServiceSpec> {
        self.services.iter().find(|s| s.id == id)
    }

    /// A run lasts until its last flow ends (seconds after it started).
    pub fn run_duration_s(&self) -> f64 {
        self.traffic
            .iter()
            .map(|t| t.start_s + t.duration_s)
            .fold(0.0, f64::max)
    }

    /// The timeline in the order it happens (stable for equal times).
    pub fn timeline_in_order(&self) -> Vec<&TimelineEvent> {
        let mut t: Vec<&TimelineEvent> = self.timeline.iter().collect();
        t.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
        t
    }

    /// Checks names, numbers, cross-references and timing (everything but the topology).
    pub fn validate(&self) -> Result<(), ScenarioError> {
        let h = &self.scenario;
        if !is_name_with(&h.name, 32, "-.") {
            return invalid(format!(
                "scenario.name `{}` must be 1-32 of a-z, 0-9, '-' and '.', starting with a letter",
                h.name
            ));
        }
        if h.topology.is_empty() {
            return invalid(
                "scenario.topology is empty (a built-in name such as `two-site`, or a .toml file)"
                    .into(),
            );
        }
        if h.runs == 0 || h.runs > MAX_RUNS {
            return invalid(format!("scenario.runs = {} must be 1..={MAX_RUNS}", h.runs));
        }
        if !(h.observe_s.is_finite() && h.observe_s > 0.0) {
            return invalid(format!(
                "scenario.observe_s = {} must be > 0 (seconds measured after the last handover)",
                h.observe_s
            ));
        }
        self.validate_ues()?;
        self.validate_services()?;
        if self.chaos.is_some() {
            return self.validate_chaos();
        }
        self.validate_traffic()?;
        self.validate_timeline()
    }

    /// The UE a chaos run hands over (`[chaos] ue`, default the first UE member).
    pub fn chaos_ue(&self) -> Option<String> {
        let c = self.chaos.as_ref()?;
        match &c.ue {
            Some(u) => Some(u.clone()),
            None => self.ue_members().into_iter().next(),
        }
    }

    /// The services that serve UE member `member`.
    pub fn services_serving(&self, member: &str) -> Vec<&ServiceSpec> {
        self.services
            .iter()
            .filter(|s| {
                s.serves
                    .iter()
                    .any(|u| self.resolve_ue(u).iter().any(|x| x == member))
            })
            .collect()
    }

    fn validate_chaos(&self) -> Result<(), ScenarioError> {
        let Some(c) = &self.chaos else { return Ok(()) };
        if !self.traffic.is_empty() {
            return invalid(
                "[[traffic]] with [chaos]: a chaos run's traffic is the observer's own stream from the UE's service".into(),
            );
        }
        if !self.timeline.is_empty() {
            return invalid(
                "[[timeline]] with [chaos]: a chaos run's events are generated from chaos.seed"
                    .into(),
            );
        }
        if c.events == 0 || c.events > MAX_CHAOS_EVENTS {
            return invalid(format!(
                "chaos.events = {} must be 1..={MAX_CHAOS_EVENTS}",
                c.events
            ));
        }
        let [lo, hi] = c.interval_ms;
        if lo == 0 || lo > hi || hi > 600_000 {
            return invalid(format!(
                "chaos.interval_ms = [{lo}, {hi}] must be [min, max] with 1 ≤ min ≤ max ≤ 600000"
            ));
        }
        let longest_s = f64::from(c.events) * hi as f64 / 1e3 + self.scenario.observe_s;
        if longest_s > MAX_RUN_S {
            return invalid(format!(
                "chaos: {} events × up to {hi} ms + scenario.observe_s may take {longest_s} s, longer than the longest run ({MAX_RUN_S} s)",
                c.events
            ));
        }
        let share = c.kill_share();
        if !(share.is_finite() && (0.0..=1.0).contains(&share)) {
            return invalid(format!("chaos.kill_share = {share} must be 0..=1"));
        }
        match (c.kill.is_empty(), share > 0.0) {
            (true, true) => {
                return invalid(format!(
                    "chaos.kill_share = {share} but chaos.kill names no process to kill"
                ))
            }
            (false, false) => {
                return invalid(
                    "chaos.kill names processes but chaos.kill_share = 0 (leave kill out for handovers only)".into(),
                )
            }
            _ => {}
        }
        for p in &c.kill {
            if !is_name(p, 32) {
                return invalid(format!(
                    "chaos.kill: `{p}` must be a network function's name as `testbed status` shows it (e.g. smo-y, svcmod-x, smf)"
                ));
            }
        }
        if !(c.bound_s.is_finite() && c.bound_s > 0.0 && c.bound_s <= 600.0) {
            return invalid(format!(
                "chaos.bound_s = {} must be > 0 and ≤ 600",
                c.bound_s
            ));
        }
        if !(20..=1000).contains(&c.sample_ms) {
            return invalid(format!(
                "chaos.sample_ms = {} must be 20..=1000",
                c.sample_ms
            ));
        }
        if self.scenario.observe_s < c.bound_s {
            return invalid(format!(
                "scenario.observe_s = {} is shorter than chaos.bound_s = {}: the last event must have the bound to converge in",
                self.scenario.observe_s, c.bound_s
            ));
        }
        let ue = self.chaos_ue().unwrap_or_default();
        if self.resolve_ue(&ue) != [ue.clone()] {
            return invalid(format!(
                "chaos.ue `{ue}` must be one UE (a [[ue]] or a group member, not a group)"
            ));
        }
        match self.services_serving(&ue).as_slice() {
            [s] if matches!(s.kind, ServiceKind::Streamer | ServiceKind::Ballast) => Ok(()),
            [s] => invalid(format!(
                "chaos: service `{}` serving {ue} is a {}; the observer streams from a streamer or ballast",
                s.id, s.kind
            )),
            many => invalid(format!(
                "chaos: {} services serve {ue} ({}); exactly one must (the one the observer watches)",
                many.len(),
                many.iter().map(|s| s.id.as_str()).collect::<Vec<_>>().join(", ")
            )),
        }
    }

    fn validate_ues(&self) -> Result<(), ScenarioError> {
        if self.ues.is_empty() {
            return invalid("no [[ue]]: a scenario needs at least one UE".into());
        }
        let mut names = BTreeSet::new();
        let mut total = 0u32;
        for (i, u) in self.ues.iter().enumerate() {
            if !is_name(&u.name, 16) {
                return invalid(format!(
                    "ue[{i}].name `{}` must be 1-16 of a-z, 0-9 and '-', starting with a letter",
                    u.name
                ));
            }
            if u.count == 0 {
                return invalid(format!("ue[{i}] ({}).count = 0 must be at least 1", u.name));
            }
            total += u32::from(u.count);
            let mut all = u.members();
            if u.count > 1 {
                all.push(u.name.clone());
            }
            for n in all {
                if n == DN_TARGET || !names.insert(n.clone()) {
                    return invalid(format!(
                        "ue[{i}] ({}): the name `{n}` is used twice (names and group members must be unique, and not `dn`)",
                        u.name
                    ));
                }
            }
        }
        if total > u32::from(MAX_UES) {
            return invalid(format!(
                "{total} UEs in all (groups counted); a testbed has at most {MAX_UES}"
            ));
        }
        Ok(())
    }

    fn validate_services(&self) -> Result<(), ScenarioError> {
        let mut ids = BTreeSet::new();
        for s in &self.services {
            let at = format!("service `{}`", s.id);
            if !is_name(&s.id, 13) || s.id == DN_TARGET {
                return invalid(format!(
                    "{at}: id must be 1-13 of a-z, 0-9 and '-' (it names the OVS port `s-<id>`), starting with a letter, and not `dn`"
                ));
            }
            if !ids.insert(s.id.as_str()) {
                return invalid(format!("{at}: id is used twice"));
            }
            if s.strategy == Strategy::LazyPages && s.backend != Backend::Criu {
                return invalid(format!(
                    "{at}: strategy = \"lazy_pages\" needs backend = \"criu\" (lxc and lxd copy memory before they stop)"
                ));
            }
            match (s.kind, s.memory_mb) {
                (ServiceKind::Ballast, None | Some(0)) => {
                    return invalid(format!(
                        "{at}: kind = \"ballast\" needs memory_mb > 0 (the memory it holds)"
                    ))
                }
                (ServiceKind::Ballast, Some(mb)) if mb > 16_384 => {
                    return invalid(format!("{at}: memory_mb = {mb} is more than 16384"))
                }
                (ServiceKind::Streamer | ServiceKind::NginxRtmp, Some(_)) => {
                    return invalid(format!(
                        "{at}: memory_mb is only for kind = \"ballast\" (the test streamer holding that much memory)"
                    ))
                }
                _ => {}
            }
            if s.serves.is_empty() {
                return invalid(format!(
                    "{at}: serves is empty (a service moves when a UE it serves hands over)"
                ));
            }
            for u in &s.serves {
                if self.resolve_ue(u).is_empty() {
                    return invalid(format!(
                        "{at}: serves `{u}`, which is no [[ue]] or group member"
                    ));
                }
            }
        }
        Ok(())
    }

    fn validate_traffic(&self) -> Result<(), ScenarioError> {
        if self.traffic.is_empty() {
            return invalid("no [[traffic]]: a run measures the UEs' flows".into());
        }
        for (i, t) in self.traffic.iter().enumerate() {
            let at = format!("traffic[{i}] ({} {} → {})", t.ue, t.kind, t.target);
            let members = self.resolve_ue(&t.ue);
            if members.is_empty() {
                return invalid(format!("{at}: ue `{}` is no [[ue]] or group member", t.ue));
            }
            if !(t.start_s.is_finite() && t.start_s >= 0.0) {
                return invalid(format!("{at}: start_s = {} must be ≥ 0", t.start_s));
            }
            if !(t.duration_s.is_finite() && t.duration_s > 0.0) {
                return invalid(format!("{at}: duration_s = {} must be > 0", t.duration_s));
            }
            if t.start_s + t.duration_s > MAX_RUN_S {
                return invalid(format!(
                    "{at}: ends at {} s, after the longest run ({MAX_RUN_S} s)",
                    t.start_s + t.duration_s
                ));
            }
            let service = if t.target == DN_TARGET {
                None
            } else {
                let Some(s) = self.service(&t.target) else {
                    return invalid(format!(
                        "{at}: target `{}` is no [[service]] id (nor `dn`)",
                        t.target
                    ));
                };
                for m in &members {
                    if !s
                        .serves
                        .iter()
                        .any(|u| self.resolve_ue(u).iter().any(|x| x == m))
                    {
                        return invalid(format!(
                            "{at}: service `{}` does not serve `{m}` (add it to the service's serves)",
                            s.id
                        ));
                    }
                }
                Some(s)
            };
            let kind_ok = matches!(
                (t.kind, service.map(|s| s.kind)),
                (
                    TrafficKind::Stream,
                    None | Some(ServiceKind::Streamer | ServiceKind::Ballast)
                ) | (TrafficKind::RtmpPlay, Some(ServiceKind::NginxRtmp))
                    | (TrafficKind::Iperf3, None)
                    | (TrafficKind::Ping, _)
            );
            if !kind_ok {
                let why = match t.kind {
                    TrafficKind::Stream => {
                        "a stream comes from a streamer or ballast service, or dn"
                    }
                    TrafficKind::RtmpPlay => "rtmp-play needs an nginx-rtmp service",
                    TrafficKind::Iperf3 => "iperf3 runs against dn (services run no iperf3 server)",
                    TrafficKind::Ping => "",
                };
                return invalid(format!("{at}: kind does not fit the target: {why}"));
            }
            let p = &t.params;
            let allowed: &[&str] = match t.kind {
                TrafficKind::Stream | TrafficKind::Ping => &["interval_ms"],
                TrafficKind::RtmpPlay => &["buffer_ms"],
                TrafficKind::Iperf3 => &["bitrate", "reverse"],
            };
            let given = [
                ("interval_ms", p.interval_ms.is_some()),
                ("buffer_ms", p.buffer_ms.is_some()),
                ("bitrate", p.bitrate.is_some()),
                ("reverse", p.reverse.is_some()),
            ];
            for (key, set) in given {
                if set && !allowed.contains(&key) {
                    return invalid(format!(
                        "{at}: params.{key} does not apply to kind {} (it takes: {})",
                        t.kind,
                        allowed.join(", ")
                    ));
                }
            }
            if let Some(ms) = p.interval_ms {
                if !(1..=10_000).contains(&ms) {
                    return invalid(format!("{at}: params.interval_ms = {ms} must be 1..=10000"));
                }
            }
            if let Some(b) = &p.bitrate {
                let digits = b.trim_end_matches(['K', 'M', 'G', 'k', 'm', 'g']);
                if digits.is_empty() || digits.parse::<f64>().is_err() {
                    return invalid(format!(
                        "{at}: params.bitrate `{b}` must be a number with an optional K, M or G, e.g. \"50M\""
                    ));
                }
            }
        }
        Ok(())
    }

    fn validate_timeline(&self) -> Result<(), ScenarioError> {
        if self.timeline.is_empty() {
            return invalid(
                "no [[timeline]]: a run needs at least one event (a handover to measure)".into(),
            );
        }
        let end = self.run_duration_s();
        let observe = self.scenario.observe_s;
        let mut seen: BTreeMap<String, f64> = BTreeMap::new();
        for (i, e) in self.timeline.iter().enumerate() {
            let at = format!("timeline[{i}] ({})", e.describe());
            let keys = [
                ("ue", e.ue.is_some()),
                ("to", e.to.is_some()),
                ("process", e.process.is_some()),
                ("phase", e.phase.is_some()),
                ("after_ms", e.after_ms.is_some()),
            ];
            let (needs, takes): (&[&str], &[&str]) = match e.action {
                Action::Handover => (&["ue", "to"], &["ue", "to"]),
                Action::Kill => (&["process"], &["process", "phase", "after_ms"]),
            };
            for (key, set) in keys {
                if set && !takes.contains(&key) {
                    return invalid(format!(
                        "{at}: {key} does not apply to action = \"{}\" (it takes: {})",
                        e.action,
                        takes.join(", ")
                    ));
                }
                if !set && needs.contains(&key) {
                    return invalid(format!("{at}: action = \"{}\" needs {key}", e.action));
                }
            }
            if !(e.at_s.is_finite() && e.at_s > 0.0 && e.at_s < end) {
                return invalid(format!(
                    "{at}: at_s must be inside the run, 0 < at_s < {end} s (the end of the last flow)"
                ));
            }
            match e.step() {
                Step::Handover { ue, .. } => {
                    if self.resolve_ue(ue).is_empty() {
                        return invalid(format!("{at}: ue `{ue}` is no [[ue]] or group member"));
                    }
                    if e.at_s + observe > end {
                        return invalid(format!(
                            "{at}: the run ends at {end} s (the end of the last flow), before at_s + scenario.observe_s = {} s; lengthen the traffic",
                            e.at_s + observe
                        ));
                    }
                    for m in self.resolve_ue(ue) {
                        if let Some(prev) = seen.insert(m.clone(), e.at_s) {
                            if prev == e.at_s {
                                return invalid(format!(
                                    "{at}: `{m}` already hands over at {prev} s"
                                ));
                            }
                        }
                    }
                }
                Step::Kill(k) => check_kill(&at, &k, e.after_ms.is_some())?,
            }
        }
        Ok(())
    }

    /// Checks every process a kill names (`[[timeline]]` kills) against the network functions
    /// of the testbed the scenario brings up (`known`, as `testbed status` names them); the
    /// caller derives them from the topology ([`crate::experiment::load`] does).
    pub fn check_processes(&self, topology: &str, known: &[String]) -> Result<(), ScenarioError> {
        for p in self.chaos.iter().flat_map(|c| &c.kill) {
            if !known.iter().any(|k| k == p) {
                return invalid(format!(
                    "chaos.kill: `{p}` is no network function of topology {topology} ({})",
                    known.join(", ")
                ));
            }
        }
        for (i, e) in self.timeline.iter().enumerate() {
            if let Step::Kill(k) = e.step() {
                if !known.iter().any(|p| p == k.process) {
                    return invalid(format!(
                        "timeline[{i}] ({}): process `{}` is no network function of topology {topology} ({})",
                        e.describe(),
                        k.process,
                        known.join(", ")
                    ));
                }
            }
        }
        Ok(())
    }

    /// The topology the testbed brings up for this scenario: `topo` with one testbed UE per UE
    /// member (member *i* is `ue<i+1>`).
    pub fn testbed_spec(&self, mut topo: TopologySpec) -> Result<TopologySpec, ScenarioError> {
        let n = self.ue_members().len();
        topo.ues = u16::try_from(n)
            .ok()
            .filter(|n| *n <= MAX_UES)
            .ok_or_else(|| ScenarioError::Invalid(format!("{n} UEs: at most {MAX_UES}")))?;
        topo.validate().map_err(|source| ScenarioError::Topology {
            topology: self.scenario.topology.clone(),
            source,
        })?;
        Ok(topo)
    }

    /// Checks the scenario against its topology: every service's edge and every handover's
    /// target site exist, and no handover goes to the site the UE is already at (UEs start at
    /// the first site).
    pub fn check_topology(&self, topo: &TopologySpec) -> Result<(), ScenarioError> {
        let edges: Vec<String> = topo
            .sites
            .iter()
            .map(|s| format!("edge-{}", s.edge))
            .collect();
        let sites: Vec<String> = topo
            .sites
            .iter()
            .map(|s| format!("site-{}", s.name))
            .collect();
        for s in &self.services {
            if !edges.contains(&s.edge) {
                return invalid(format!(
                    "service `{}`: edge `{}` is not an edge cloud of topology {} ({})",
                    s.id,
                    s.edge,
                    topo.name,
                    edges.join(", ")
                ));
            }
        }
        let Some(first) = sites.first() else {
            return invalid(format!("topology {} has no sites", topo.name));
        };
        if self.chaos.is_some() && sites.len() < 2 {
            return invalid(format!(
                "chaos hands the UE over between sites: topology {} has one",
                topo.name
            ));
        }
        let mut at: BTreeMap<String, &str> = self
            .ue_members()
            .into_iter()
            .map(|m| (m, first.as_str()))
            .collect();
        for e in self.timeline_in_order() {
            let Step::Handover { ue, to } = e.step() else {
                continue;
            };
            if !sites.iter().any(|s| s == to) {
                return invalid(format!(
                    "timeline (handover of {ue} at {} s): to `{to}` is not a site of topology {} ({})",
                    e.at_s,
                    topo.name,
                    sites.join(", ")
                ));
            }
            for m in self.resolve_ue(ue) {
                let now = at.entry(m.clone()).or_insert(first.as_str());
                if *now == to {
                    return invalid(format!(
                        "timeline (handover of {ue} at {} s): `{m}` is already at {to} then (UEs start at {first})",
                        e.at_s
                    ));
                }
                *now = to;
            }
        }
        Ok(())
    }
}

impl UeSpec {
    /// The UEs this entry stands for: `[name]`, or `name1..nameN` for a group.
    pub fn members(&self) -> Vec<String> {
        if self.count <= 1 {
            vec![self.name.clone()]
        } else {
            (1..=self.count)
                .map(|k| format!("{}{k}", self.name))
                .collect()
        }
    }
}

/// The checks of a kill that need no topology: a process name, and `after_ms` only with a
/// phase and within [`MAX_AFTER_MS`].
fn check_kill(at: &str, k: &Kill<'_>, after_given: bool) -> Result<(), ScenarioError> {
    if !is_name(k.process, 32) {
        return invalid(format!(
            "{at}: process `{}` must be a network function's name as `testbed status` shows it (e.g. smo-y, svcmod-x, smf)",
            k.process
        ));
    }
    if after_given && k.phase.is_none() {
        return invalid(format!(
            "{at}: after_ms needs phase (without a phase, put the delay into at_s)"
        ));
    }
    if k.after_ms > MAX_AFTER_MS {
        return invalid(format!(
            "{at}: after_ms = {} is more than {MAX_AFTER_MS}",
            k.after_ms
        ));
    }
    Ok(())
}

fn is_name(s: &str, max: usize) -> bool {
    is_name_with(s, max, "-")
}

/// 1..=max of `a-z`, `0-9` and `extra`, starting with a letter.
fn is_name_with(s: &str, max: usize, extra: &str) -> bool {
    (1..=max).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || extra.contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenarios_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios")
    }

    #[test]
    fn every_shipped_scenario_parses_and_validates() {
        let mut names = Vec::new();
        let dir = std::fs::read_dir(scenarios_dir()).expect("scenarios/ exists");
        for entry in dir {
            let path = entry.expect("dir entry").path();
            if path.extension().and_then(|e| e.to_str()) != Some("toml") {
                continue;
            }
            let (s, topo) =
                Scenario::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(
                path.file_stem().and_then(|s| s.to_str()),
                Some(s.scenario.name.as_str()),
                "file name = scenario name"
            );
            assert!(!s.scenario.description.is_empty(), "{}", path.display());
            assert!(!topo.sites.is_empty());
            names.push(s.scenario.name);
        }
        names.sort();
        assert_eq!(
            names,
            [
                "ballast-200mb",
                "chaos-crash",
                "chaos-pingpong",
                "chaos-short",
                "five-ues",
                "lazy-pages",
                "lxc-streamer",
                "quick-criu-lazy-nginx",
                "quick-criu-lazy-streamer",
                "quick-criu-nginx",
                "quick-criu-streamer",
                "quick-lxc-nginx",
                "quick-lxc-streamer",
                "quick-lxd-streamer",
                "thesis-5.4",
                "thesis-5.4-lxd",
                "thesis-5.4-streamer",
                "twenty-ues"
            ]
        );
    }

    #[test]
    fn thesis_scenario_is_the_thesis_setup() {
        let (s, topo) = Scenario::load(&scenarios_dir().join("thesis-5.4.toml")).expect("loads");
        assert_eq!(topo.name, "two-site");
        assert_eq!(s.scenario.runs, 50);
        assert_eq!(s.scenario.notify, Notify::Late);
        assert_eq!(s.scenario.observe_s, 10.0);
        assert_eq!(s.ue_members(), ["ue1"]);
        assert_eq!(s.services.len(), 1);
        assert_eq!(s.services[0].kind, ServiceKind::NginxRtmp);
        assert_eq!(s.services[0].edge, "edge-x");
        assert_eq!(s.timeline.len(), 1);
        assert_eq!(s.timeline[0].at_s, 30.0);
        assert_eq!(s.timeline[0].to.as_deref(), Some("site-b"));
        assert_eq!(s.run_duration_s(), 40.0);
        assert_eq!(s.traffic[0].params.buffer_ms, Some(1000));
    }

    #[test]
    fn five_ues_hand_over_together_each_with_its_service() {
        let (s, _) = Scenario::load(&scenarios_dir().join("five-ues.toml")).expect("loads");
        let members = s.ue_members();
        assert_eq!(members, ["ue1", "ue2", "ue3", "ue4", "ue5"]);
        assert_eq!(s.services.len(), 5);
        let ats: BTreeSet<u64> = s.timeline.iter().map(|e| e.at_s as u64).collect();
        assert_eq!(ats.len(), 1, "one moment");
        let moved: Vec<String> = s
            .timeline
            .iter()
            .flat_map(|e| s.resolve_ue(e.ue.as_deref().unwrap_or_default()))
            .collect();
        assert_eq!(moved, members);
        for m in &members {
            let serving: Vec<&str> = s
                .services
                .iter()
                .filter(|x| x.serves.iter().any(|u| s.resolve_ue(u).contains(m)))
                .map(|x| x.id.as_str())
                .collect();
            assert_eq!(serving.len(), 1, "{m} has its own service: {serving:?}");
        }
    }

    #[test]
    fn ballast_and_lazy_pages_scenarios_say_what_they_test() {
        let (b, _) = Scenario::load(&scenarios_dir().join("ballast-200mb.toml")).expect("loads");
        assert_eq!(b.services[0].kind, ServiceKind::Ballast);
        assert_eq!(b.services[0].memory_mb, Some(200));
        let (l, _) = Scenario::load(&scenarios_dir().join("lazy-pages.toml")).expect("loads");
        assert!(l.services.iter().all(|s| s.strategy == Strategy::LazyPages));
        let (st, _) =
            Scenario::load(&scenarios_dir().join("thesis-5.4-streamer.toml")).expect("loads");
        assert_eq!(st.services[0].kind, ServiceKind::Streamer);
        assert_eq!(st.traffic[0].kind, TrafficKind::Stream);
    }

    const BASE: &str = r#"
[scenario]
name = "t"
topology = "two-site"
runs = 3
observe_s = 10

[[ue]]
name = "ue1"

[[service]]
id = "svc"
edge = "edge-x"
backend = "criu"
kind = "streamer"
serves = ["ue1"]

[[traffic]]
ue = "ue1"
kind = "stream"
target = "svc"
start_s = 0
duration_s = 40

[[timeline]]
at_s = 30
action = "handover"
ue = "ue1"
to = "site-b"
"#;

    fn check(text: &str) -> Result<Scenario, ScenarioError> {
        let s = Scenario::from_toml(text)?;
        s.check_topology(&TopologySpec::builtin("two-site").expect("builtin"))?;
        Ok(s)
    }

    #[test]
    fn the_minimal_scenario_is_valid_with_defaults() {
        let s = check(BASE).expect("valid");
        assert_eq!(s.scenario.notify, Notify::Late);
        assert_eq!(s.services[0].strategy, Strategy::StopAndCopy);
        assert_eq!(s.ues[0].count, 1);
        assert_eq!(s.traffic[0].params, TrafficParams::default());
    }

    #[test]
    fn groups_expand_and_resolve() {
        let text = BASE
            .replace("name = \"ue1\"", "name = \"ue\"\ncount = 3")
            .replace("serves = [\"ue1\"]", "serves = [\"ue\"]")
            .replace("ue = \"ue1\"\nto", "ue = \"ue\"\nto");
        let s = check(&text).expect("valid");
        assert_eq!(s.ue_members(), ["ue1", "ue2", "ue3"]);
        assert_eq!(s.resolve_ue("ue"), ["ue1", "ue2", "ue3"]);
        assert_eq!(s.resolve_ue("ue2"), ["ue2"]);
        assert!(s.resolve_ue("ue4").is_empty());
    }

    /// Each refusal: (what to change in BASE, a piece of the message that must name the field).
    #[test]
    fn every_refusal_names_the_field_and_why() {
        let cases: &[(&str, &str, &str)] = &[
            ("runs = 3", "runs = 3\ncolour = 1", "colour"),
            ("to = \"site-b\"", "to = \"site-b\"\nspeed = 1", "speed"),
            ("name = \"t\"", "name = \"Bad Name\"", "scenario.name `Bad Name`"),
            ("runs = 3", "runs = 0", "scenario.runs = 0"),
            ("observe_s = 10", "observe_s = 0", "scenario.observe_s = 0"),
            ("runs = 3", "runs = 3\nnotify = \"SOMETIMES\"", "SOMETIMES"),
            ("topology = \"two-site\"", "topology = \"\"", "scenario.topology is empty"),
            ("[[ue]]\nname = \"ue1\"", "[[ue]]\nname = \"ue1\"\ncount = 0", "count = 0"),
            ("[[ue]]\nname = \"ue1\"", "[[ue]]\nname = \"ue1\"\n[[ue]]\nname = \"ue1\"", "used twice"),
            ("[[ue]]\nname = \"ue1\"", "[[ue]]\nname = \"ue1\"\n[[ue]]\nname = \"ue\"\ncount = 2", "`ue1` is used twice"),
            ("[[ue]]\nname = \"ue1\"", "[[ue]]\nname = \"ue1\"\n[[ue]]\nname = \"x\"\ncount = 150", "151 UEs"),
            ("id = \"svc\"", "id = \"dn\"", "not `dn`"),
            ("backend = \"criu\"", "backend = \"docker\"", "docker"),
            ("backend = \"criu\"", "backend = \"lxc\"\nstrategy = \"lazy_pages\"", "needs backend = \"criu\""),
            ("kind = \"streamer\"", "kind = \"ballast\"", "needs memory_mb"),
            ("kind = \"streamer\"", "kind = \"streamer\"\nmemory_mb = 5", "memory_mb is only for kind = \"ballast\""),
            ("serves = [\"ue1\"]", "serves = []", "serves is empty"),
            ("serves = [\"ue1\"]", "serves = [\"ue9\"]", "serves `ue9`"),
            ("ue = \"ue1\"\nkind", "ue = \"ue7\"\nkind", "ue `ue7` is no [[ue]]"),
            ("target = \"svc\"", "target = \"nope\"", "target `nope` is no [[service]]"),
            ("start_s = 0", "start_s = -1", "start_s = -1"),
            ("duration_s = 40", "duration_s = 0", "duration_s = 0"),
            ("duration_s = 40", "duration_s = 4000", "after the longest run"),
            ("kind = \"stream\"", "kind = \"rtmp-play\"", "rtmp-play needs an nginx-rtmp service"),
            ("kind = \"stream\"", "kind = \"iperf3\"", "iperf3 runs against dn"),
            ("duration_s = 40", "duration_s = 40\nparams = { buffer_ms = 5 }", "params.buffer_ms does not apply to kind stream"),
            ("duration_s = 40", "duration_s = 40\nparams = { interval_ms = 0 }", "params.interval_ms = 0"),
            ("duration_s = 40", "duration_s = 40\nparams = { window = 5 }", "window"),
            ("[[timeline]]", "[[timelines]]", "timelines"),
            ("at_s = 30", "at_s = 45", "at_s must be inside the run"),
            ("at_s = 30", "at_s = 0", "at_s must be inside the run"),
            ("at_s = 30", "at_s = 35", "before at_s + scenario.observe_s = 45"),
            ("action = \"handover\"", "action = \"teleport\"", "teleport"),
            ("ue = \"ue1\"\nto", "ue = \"ue3\"\nto", "ue `ue3` is no [[ue]]"),
            ("to = \"site-b\"", "to = \"site-b\"\n[[timeline]]\nat_s = 30\naction = \"handover\"\nue = \"ue1\"\nto = \"site-a\"", "already hands over at 30 s"),
            ("edge = \"edge-x\"", "edge = \"edge-z\"", "edge `edge-z` is not an edge cloud of topology two-site (edge-x, edge-y)"),
            ("to = \"site-b\"", "to = \"b\"", "to `b` is not a site of topology two-site (site-a, site-b)"),
            ("to = \"site-b\"", "to = \"site-a\"", "`ue1` is already at site-a then"),
            ("to = \"site-b\"", "to = \"site-b\"\n[[timeline]]\nat_s = 20\naction = \"handover\"\nue = \"ue1\"\nto = \"site-b\"", "`ue1` is already at site-b then"),
            ("to = \"site-b\"", "", "action = \"handover\" needs to"),
            ("to = \"site-b\"", "to = \"site-b\"\nprocess = \"smo-y\"", "process does not apply to action = \"handover\" (it takes: ue, to)"),
        ];
        // Kills: appended to BASE's timeline.
        let kill = |keys: &str| {
            format!("to = \"site-b\"\n[[timeline]]\nat_s = 20\naction = \"kill\"{keys}")
        };
        let kills: Vec<(&str, String, &str)> = vec![
            ("to = \"site-b\"", kill(""), "timeline[1] (kill at 20 s): action = \"kill\" needs process"),
            ("to = \"site-b\"", kill("\nprocess = \"smo-y\"\nue = \"ue1\""), "timeline[1] (kill of smo-y at 20 s): ue does not apply to action = \"kill\" (it takes: process, phase, after_ms)"),
            ("to = \"site-b\"", kill("\nprocess = \"Smo Y\""), "process `Smo Y` must be a network function's name"),
            ("to = \"site-b\"", kill("\nprocess = \"smo-y\"\nafter_ms = 40"), "after_ms needs phase"),
            ("to = \"site-b\"", kill("\nprocess = \"smo-y\"\nphase = \"LATER\""), "LATER"),
            ("to = \"site-b\"", kill("\nprocess = \"smo-y\"\nphase = \"EXECUTE\"\nafter_ms = 70000"), "after_ms = 70000 is more than 60000"),
            ("to = \"site-b\"", kill("\nprocess = \"smo-y\"").replace("at_s = 20", "at_s = 40"), "timeline[1] (kill of smo-y at 40 s): at_s must be inside the run"),
        ];
        let all = cases
            .iter()
            .map(|(a, b, c)| (*a, (*b).to_owned(), *c))
            .chain(kills);
        for (from, to, want) in all {
            let to = to.as_str();
            assert!(BASE.contains(from), "BASE lacks {from:?}");
            let text = BASE.replacen(from, to, 1);
            let err = check(&text).expect_err(to);
            assert!(
                err.to_string().contains(want),
                "{to:?}: got `{err}`, want `{want}`"
            );
        }
    }

    #[test]
    fn a_kill_names_its_process_and_may_wait_for_a_phase() {
        let text = BASE.replace(
            "to = \"site-b\"",
            "to = \"site-b\"\n\n[[timeline]]\nat_s = 31\naction = \"kill\"\nprocess = \"smo-y\"\nphase = \"EXECUTE\"\nafter_ms = 40\n\n[[timeline]]\nat_s = 39\naction = \"kill\"\nprocess = \"smf\"",
        );
        // A kill needs no observe_s after it (39 + 10 > 40), only to be inside the run.
        let s = check(&text).expect("valid");
        let steps: Vec<Step<'_>> = s.timeline_in_order().iter().map(|e| e.step()).collect();
        assert_eq!(
            steps,
            [
                Step::Handover {
                    ue: "ue1",
                    to: "site-b"
                },
                Step::Kill(Kill {
                    process: "smo-y",
                    phase: Some(RelocationPhase::Execute),
                    after_ms: 40
                }),
                Step::Kill(Kill {
                    process: "smf",
                    phase: None,
                    after_ms: 0
                }),
            ]
        );
        let known: Vec<String> = ["lr", "smf", "smo-x", "smo-y"].map(String::from).to_vec();
        s.check_processes("two-site", &known).expect("known");
        let err = s
            .check_processes("two-site", &known[..3])
            .expect_err("smo-y unknown");
        assert_eq!(
            err.to_string(),
            "invalid scenario: timeline[1] (kill of smo-y at 31 s): process `smo-y` is no network function of topology two-site (lr, smf, smo-x)"
        );
        // Handovers and the site checks ignore kills.
        assert_eq!(
            s.timeline
                .iter()
                .filter(|e| e.action == Action::Kill)
                .count(),
            2
        );
    }

    const CHAOS: &str = r#"
[scenario]
name = "c"
topology = "two-site"
runs = 1
observe_s = 6

[[ue]]
name = "ue1"

[[service]]
id = "streamer"
edge = "edge-x"
backend = "criu"
kind = "streamer"
serves = ["ue1"]

[chaos]
seed = 7
events = 100
kill = ["smo-y", "svcmod-y", "smf"]
"#;

    #[test]
    fn a_chaos_table_replaces_traffic_and_timeline_with_documented_defaults() {
        let s = check(CHAOS).expect("valid");
        let c = s.chaos.as_ref().expect("chaos");
        assert_eq!((c.seed, c.events, c.interval_ms), (7, 100, [50, 3000]));
        assert_eq!((c.bound_s, c.sample_ms), (5.0, 100));
        assert_eq!(c.kill_share(), DEFAULT_KILL_SHARE);
        assert_eq!((c.run_seed(1), c.run_seed(3)), (7, 9));
        assert_eq!(s.chaos_ue().as_deref(), Some("ue1"));
        let pingpong = check(&CHAOS.replace("kill = [\"smo-y\", \"svcmod-y\", \"smf\"]\n", ""))
            .expect("handovers only");
        assert_eq!(
            pingpong.chaos.as_ref().map(ChaosSpec::kill_share),
            Some(0.0)
        );
        let known: Vec<String> = ["smo-y", "svcmod-y", "smf"].map(String::from).to_vec();
        s.check_processes("two-site", &known).expect("known");
        let err = s.check_processes("two-site", &known[..2]).expect_err("smf");
        assert!(
            err.to_string().contains(
                "chaos.kill: `smf` is no network function of topology two-site (smo-y, svcmod-y)"
            ),
            "{err}"
        );
    }

    #[test]
    fn every_chaos_refusal_names_the_field_and_why() {
        let cases: &[(&str, &str, &str)] = &[
            ("events = 100", "events = 0", "chaos.events = 0 must be 1..=10000"),
            ("events = 100", "events = 100\ninterval_ms = [300, 200]", "chaos.interval_ms = [300, 200]"),
            ("events = 100", "events = 100\ninterval_ms = [0, 200]", "1 ≤ min ≤ max"),
            ("events = 100", "events = 5000\ninterval_ms = [50, 3000]", "longer than the longest run"),
            ("events = 100", "events = 100\nkill_share = 1.5", "chaos.kill_share = 1.5 must be 0..=1"),
            ("events = 100", "events = 100\nkill_share = 0", "chaos.kill names processes but chaos.kill_share = 0"),
            ("kill = [\"smo-y\", \"svcmod-y\", \"smf\"]", "kill_share = 0.5", "chaos.kill_share = 0.5 but chaos.kill names no process"),
            ("\"smf\"]", "\"Smf\"]", "chaos.kill: `Smf` must be a network function's name"),
            ("events = 100", "events = 100\nbound_s = 0", "chaos.bound_s = 0 must be > 0"),
            ("events = 100", "events = 100\nsample_ms = 5", "chaos.sample_ms = 5 must be 20..=1000"),
            ("events = 100", "events = 100\nbound_s = 8", "scenario.observe_s = 6 is shorter than chaos.bound_s = 8"),
            ("events = 100", "events = 100\nue = \"ue9\"", "chaos.ue `ue9` must be one UE"),
            ("events = 100", "events = 100\nspeed = 3", "speed"),
            ("kind = \"streamer\"", "kind = \"nginx-rtmp\"", "serving ue1 is a nginx-rtmp; the observer streams from a streamer or ballast"),
            ("serves = [\"ue1\"]", "serves = [\"ue1\"]\n\n[[service]]\nid = \"two\"\nedge = \"edge-y\"\nbackend = \"criu\"\nkind = \"streamer\"\nserves = [\"ue1\"]", "2 services serve ue1 (streamer, two); exactly one must"),
            ("[chaos]", "[[traffic]]\nue = \"ue1\"\nkind = \"stream\"\ntarget = \"streamer\"\nstart_s = 0\nduration_s = 40\n\n[chaos]", "[[traffic]] with [chaos]"),
            ("[chaos]", "[[timeline]]\nat_s = 30\naction = \"handover\"\nue = \"ue1\"\nto = \"site-b\"\n\n[chaos]", "[[timeline]] with [chaos]"),
        ];
        for (from, to, want) in cases {
            assert!(CHAOS.contains(from), "CHAOS lacks {from:?}");
            let err = check(&CHAOS.replacen(from, to, 1)).expect_err(to);
            assert!(
                err.to_string().contains(want),
                "{to:?}: got `{err}`, want `{want}`"
            );
        }
        let one_site = r#"
name = "one"
prefix = "tb1"
ues = 1

[[sites]]
name = "a"
edge = "x"
"#;
        let s = Scenario::from_toml(CHAOS).expect("valid");
        let err = s
            .check_topology(&TopologySpec::from_toml(one_site).expect("topology"))
            .expect_err("one site");
        assert!(err.to_string().contains("has one"), "{err}");
    }

    #[test]
    fn a_scenario_without_traffic_ues_or_timeline_is_refused() {
        let no_timeline = BASE.split("[[timeline]]").next().unwrap_or_default();
        let err = check(no_timeline).expect_err("no timeline");
        assert!(err.to_string().contains("no [[timeline]]"), "{err}");
        let header: String = BASE.split("[[ue]]").next().unwrap_or_default().to_owned();
        let err = check(&header).expect_err("no ue");
        assert!(err.to_string().contains("no [[ue]]"), "{err}");
        let no_traffic = BASE.replacen("[[traffic]]", "[[nothing]]", 1);
        assert!(check(&no_traffic).is_err());
    }

    #[test]
    fn topology_files_resolve_relative_to_the_scenario() {
        let dir = std::env::temp_dir().join(format!("tb-scenario-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        std::fs::write(dir.join("three.toml"), crate::spec::THREE_SITE).expect("write topo");
        let text = BASE
            .replace("topology = \"two-site\"", "topology = \"three.toml\"")
            .replace("to = \"site-b\"", "to = \"site-c\"");
        std::fs::write(dir.join("t.toml"), &text).expect("write scenario");
        let (_, topo) = Scenario::load(&dir.join("t.toml")).expect("loads");
        assert_eq!(topo.sites.len(), 3);
        std::fs::write(
            dir.join("t.toml"),
            text.replace("three.toml", "missing.toml"),
        )
        .expect("write");
        let err = Scenario::load(&dir.join("t.toml")).expect_err("missing topology");
        assert!(err.to_string().contains("missing.toml"), "{err}");
        let err = Scenario::load(&dir.join("absent.toml")).expect_err("missing file");
        assert!(err.to_string().contains("absent.toml"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
        let four = Scenario::from_toml(&BASE.replace("\"two-site\"", "\"four-site\""))
            .expect("valid without the topology");
        let err = four.topology(Path::new(".")).expect_err("unknown built-in");
        assert!(err.to_string().contains("four-site"), "{err}");
    }
}

//! The supervisor: restarts a network function that dies, with backoff, as systemd or a kubelet
//! would, and counts the restarts in the testbed's state (`testbed status` shows them).
//!
//! `testbed up` starts it last (`testbed supervise --name NAME`, detached, its log in
//! `<state dir>/supervisor.log`, recorded in the state like every other process, so `testbed down`
//! ends it first). Every [`POLL`] it reads the state and checks each network function it started
//! (every [`crate::nf::launches`] entry: LR, SMF, UPFs, IAPs, SMOs, service modules, gNBs, UEs,
//! probe servers; not the OVS daemons or LXD): one that is gone is started again from the same
//! launch (same namespace, config and ready file) once its backoff allows, and the state gets its
//! new PID and one more restart. A process's restart delay starts at [`BACKOFF_FIRST`], doubles at
//! every restart up to [`BACKOFF_MAX`], and falls back to the first once the process stayed up for
//! [`STABLE_AFTER`]. The supervisor ends when the testbed's state is gone or no longer lists it.
//!
//! [`Backoff`] is the policy, pure and tested on its own clock; [`run`] does the I/O.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use netkit::process::Started;

use crate::nf::{self, Launch, LaunchOptions};
use crate::state::{NodeProcess, State};

/// How often the supervisor looks.
pub const POLL: Duration = Duration::from_millis(100);
/// The first restart's delay after a death.
pub const BACKOFF_FIRST: Duration = Duration::from_millis(200);
/// The longest restart delay: under the 5 s the deployment has to converge after a crash. It was
/// 10 s, and a process killed again and again (chaos-crash: smo-y, nine kills in 30 s) stayed down
/// 12.8 s, long enough alone to break that bound; a restart costs a process start, not more.
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// A process up this long since its restart counts as stable: its next death waits
/// [`BACKOFF_FIRST`] again.
pub const STABLE_AFTER: Duration = Duration::from_secs(30);
/// How long a restarted process may take to write its ready file.
pub const READY_WITHIN: Duration = Duration::from_secs(15);
/// The supervisor's process name in the state.
pub const NAME: &str = "supervisor";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    /// The delay the next death waits.
    delay: Duration,
    /// Set while the process is dead: when it may be restarted.
    restart_at: Option<Duration>,
    /// When it was last (re)started.
    started_at: Duration,
}

/// The restart policy: per process, when a dead one may start again. Times are durations on the
/// caller's monotonic clock, so tests drive it without sleeping.
#[derive(Debug, Default, Clone)]
pub struct Backoff {
    entries: BTreeMap<String, Entry>,
}

impl Backoff {
    /// What to do about process `name`, seen `alive` (or not) at `now`: `true` means restart it
    /// now (the caller then calls [`Backoff::restarted`]).
    pub fn observe(&mut self, name: &str, alive: bool, now: Duration) -> bool {
        let e = self.entries.entry(name.to_owned()).or_insert(Entry {
            delay: BACKOFF_FIRST,
            restart_at: None,
            started_at: Duration::ZERO,
        });
        if alive {
            e.restart_at = None;
            if now.saturating_sub(e.started_at) >= STABLE_AFTER {
                e.delay = BACKOFF_FIRST;
            }
            return false;
        }
        let at = *e.restart_at.get_or_insert(now + e.delay);
        now >= at
    }

    /// Process `name` was started again at `now`: its next death waits twice as long.
    pub fn restarted(&mut self, name: &str, now: Duration) {
        if let Some(e) = self.entries.get_mut(name) {
            e.restart_at = None;
            e.started_at = now;
            e.delay = (e.delay * 2).min(BACKOFF_MAX);
        }
    }

    /// The delay a death of `name` would wait now.
    pub fn delay(&self, name: &str) -> Duration {
        self.entries.get(name).map_or(BACKOFF_FIRST, |e| e.delay)
    }
}

/// Why the supervisor could not start.
#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    #[error("testbed `{0}` is not up")]
    NotUp(String),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error("testbed `{0}` runs no network functions (no token)")]
    NoFunctions(String),
}

/// Supervises testbed `name` until its state is gone (or no longer lists this supervisor).
pub fn run(name: &str) -> Result<(), SuperviseError> {
    let dir = State::dir(name);
    let state = State::load(&dir)?.ok_or_else(|| SuperviseError::NotUp(name.to_owned()))?;
    let token = state
        .token
        .clone()
        .ok_or_else(|| SuperviseError::NoFunctions(name.to_owned()))?;
    let plan = state.plan();
    let bins = nf::bin_dir();
    let opts = LaunchOptions {
        bin_dir: bins.clone(),
        services: state.services_started,
    };
    let launches: BTreeMap<String, Launch> = nf::launches(&plan, &token, &opts)
        .into_iter()
        .map(|l| (l.name.clone(), l))
        .collect();
    let me = std::process::id() as i32;
    let clock = Instant::now();
    let mut backoff = Backoff::default();
    tracing::info!(testbed = name, functions = launches.len(), "supervising");
    loop {
        std::thread::sleep(POLL);
        let Ok(Some(mut state)) = State::load(&dir) else {
            tracing::info!("the testbed's state is gone: stopping");
            return Ok(());
        };
        if !state
            .processes
            .iter()
            .any(|p| p.process.name == NAME && p.process.pid == me)
        {
            tracing::info!("the state no longer lists this supervisor: stopping");
            return Ok(());
        }
        let mut changed = false;
        for i in 0..state.processes.len() {
            let p = &state.processes[i];
            let Some(launch) = launches.get(&p.process.name) else {
                continue;
            };
            let now = clock.elapsed();
            if !backoff.observe(&p.process.name, p.process.is_running(), now) {
                continue;
            }
            let (node, pname, old) = (p.node.clone(), p.process.name.clone(), p.process.pid);
            match restart(launch, &plan.netns(&node), &plan.state_dir, &bins) {
                Ok(started) => {
                    backoff.restarted(&pname, clock.elapsed());
                    tracing::warn!(process = %pname, %node, old_pid = old, pid = started.pid,
                        restarts = state.processes[i].restarts + 1,
                        next_delay_ms = backoff.delay(&pname).as_millis() as u64,
                        "restarted a network function that died");
                    let p = &mut state.processes[i];
                    p.process = started;
                    p.restarts += 1;
                    changed = true;
                }
                Err(e) => {
                    backoff.restarted(&pname, clock.elapsed());
                    tracing::error!(process = %pname, %node, error = %e,
                        next_delay_ms = backoff.delay(&pname).as_millis() as u64,
                        "restart failed; trying again after the backoff");
                    state.processes[i].restarts += 1;
                    changed = true;
                }
            }
        }
        if changed {
            if let Err(e) = state.save(&dir) {
                tracing::error!(error = %e, "cannot record the restarts");
            }
        }
    }
}

/// Starts `launch` again in `netns` and waits for it to be ready (when it says so).
fn restart(
    launch: &Launch,
    netns: &str,
    state_dir: &Path,
    bins: &Path,
) -> Result<Started, nf::LaunchError> {
    let s = nf::spawn(launch, netns, state_dir, bins)?;
    let started = Started {
        name: launch.name.clone(),
        pid: s.pid,
        marker: s.marker.clone(),
    };
    if launch.waits_ready {
        nf::wait_ready(&launch.name, &s, state_dir, READY_WITHIN)?;
    }
    Ok(started)
}

/// Starts the supervisor of the testbed whose state is in `state_dir` (detached, in the host's
/// namespaces, its log `supervisor.log` there) and records it in `state`.
pub fn start(name: &str, state: &mut State, state_dir: &Path) -> Result<(), nf::LaunchError> {
    let bin = nf::bin_dir().join("testbed");
    if !bin.is_file() {
        return Err(nf::LaunchError::NoBinary(bin));
    }
    let log = state_dir.join("supervisor.log");
    let marker = format!("supervise --name {name}");
    let pid = nf::spawn_detached(
        &[
            bin.display().to_string(),
            "supervise".into(),
            "--name".into(),
            name.to_owned(),
        ],
        &log,
    )?;
    state.processes.push(NodeProcess {
        node: "host".into(),
        process: Started {
            name: NAME.into(),
            pid,
            marker,
        },
        restarts: 0,
    });
    Ok(())
}

/// SIGKILL to process `process` of testbed `name` (on node `node`, when given), by its recorded
/// PID after checking it is still the one the testbed started: for crash experiments. The
/// supervisor restarts it.
pub fn kill(name: &str, node: Option<&str>, process: &str) -> Result<NodeProcess, String> {
    let state = State::load(&State::dir(name))
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("testbed `{name}` is not up"))?;
    let found: Vec<&NodeProcess> = state
        .processes
        .iter()
        .filter(|p| p.process.name == process && node.is_none_or(|n| p.node == n))
        .collect();
    let p = match found.as_slice() {
        [p] => *p,
        [] => {
            let known: Vec<String> = state
                .processes
                .iter()
                .map(|p| format!("{} {}", p.node, p.process.name))
                .collect();
            return Err(format!(
                "no process `{process}`{} in testbed `{name}` (processes: {})",
                node.map(|n| format!(" on {n}")).unwrap_or_default(),
                known.join(", ")
            ));
        }
        _ => {
            return Err(format!(
                "`{process}` names several processes: give the node"
            ))
        }
    };
    if !p.process.is_running() {
        return Err(format!(
            "{} (pid {}) on {} is not running",
            p.process.name, p.process.pid, p.node
        ));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(p.process.pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .map_err(|e| format!("cannot kill pid {}: {e}", p.process.pid))?;
    Ok(p.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn a_dead_process_restarts_after_a_delay_that_doubles_and_resets_when_stable() {
        let mut b = Backoff::default();
        assert!(!b.observe("smo-y", true, ms(0)));
        // Dies at 1 s: restarted 200 ms later, not before.
        assert!(!b.observe("smo-y", false, ms(1000)));
        assert!(!b.observe("smo-y", false, ms(1199)));
        assert!(b.observe("smo-y", false, ms(1200)));
        b.restarted("smo-y", ms(1200));
        assert_eq!(b.delay("smo-y"), ms(400));
        // Dies again at once: 400 ms, then 800 ms, … up to the cap.
        assert!(!b.observe("smo-y", false, ms(1300)));
        assert!(b.observe("smo-y", false, ms(1700)));
        b.restarted("smo-y", ms(1700));
        for _ in 0..10 {
            b.restarted("smo-y", ms(1700));
        }
        assert_eq!(b.delay("smo-y"), BACKOFF_MAX);
        // Up for longer than STABLE_AFTER: the next death waits the first delay again.
        assert!(!b.observe("smo-y", true, ms(1700) + STABLE_AFTER));
        assert_eq!(b.delay("smo-y"), BACKOFF_FIRST);
        // Processes are independent.
        assert!(!b.observe("svcmod-x", false, ms(5000)));
        assert!(b.observe("svcmod-x", false, ms(5200)));
        assert_eq!(b.delay("lr"), BACKOFF_FIRST);
    }

    #[test]
    fn a_process_that_comes_back_by_itself_is_not_restarted() {
        let mut b = Backoff::default();
        assert!(!b.observe("ue1", false, ms(0)));
        assert!(!b.observe("ue1", true, ms(100)));
        // The pending restart was dropped: a new death starts a new delay.
        assert!(!b.observe("ue1", false, ms(300)));
        assert!(b.observe("ue1", false, ms(500)));
    }
}

//! Bringing a planned topology up, reporting its status, and tearing it down.

use netkit::link::{self, End, IfaceInfo};
use netkit::ovs::{OvsError, OvsInstance};
use netkit::process::{self, Started};
use netkit::{CmdError, Netns};
use serde::Serialize;
use std::path::Path;
use std::time::Duration;

use crate::plan::{Plan, Role, MTU};
use crate::scenario::{Notify, ServiceSpec as ScenarioService};
use crate::spec::TopologySpec;
use crate::state::{NodeProcess, State, StateError};

/// Why `up` failed (everything it made has been removed again).
#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error("testbed `{name}` is already up (state in {dir}); run `testbed down` first")]
    AlreadyUp { name: String, dir: String },
    #[error("namespaces with prefix `{prefix}-` are left from an earlier run ({list}); run `testbed down` to remove them")]
    Leftovers { prefix: String, list: String },
    #[error("{step}")]
    Step {
        step: String,
        #[source]
        source: StepError,
    },
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Launch(#[from] crate::nf::LaunchError),
    #[error("cannot plan the services: {0}")]
    Services(String),
    #[error("cannot prepare the nginx-rtmp service")]
    Rtmp(#[from] crate::rtmp::RtmpError),
    #[error("cannot start the LXD daemons")]
    Lxd(#[source] svcmod::lxd_daemon::DaemonError),
}

/// The failure of one bring-up step.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Cmd(#[from] CmdError),
    #[error(transparent)]
    Ovs(#[from] OvsError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Launch(#[from] crate::nf::LaunchError),
}

fn step<E: Into<StepError>>(what: impl Into<String>) -> impl FnOnce(E) -> UpError {
    let step = what.into();
    move |e| UpError::Step {
        step,
        source: e.into(),
    }
}

/// What `up` starts besides the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpOptions {
    /// Start the 5G network functions (LR, SMF, UPFs, IAPs, gNBs, UEs), the SMOs, the service
    /// modules and the probe servers.
    pub network_functions: bool,
    /// Have the service modules start the plan's services (the `stream1` streaming service in
    /// the first edge cloud).
    pub services: bool,
    /// These services instead of the default ones (see [`Plan::set_services`]), e.g. a scenario's.
    pub service_specs: Option<Vec<ScenarioService>>,
    /// The SMOs' `UP_PATH_CH` subscription.
    pub notify: Notify,
    /// Start the supervisor ([`crate::supervise`]): a network function that dies is started
    /// again. Off for tests that need a killed process to stay dead.
    pub supervise: bool,
}

impl Default for UpOptions {
    fn default() -> Self {
        Self {
            network_functions: true,
            services: true,
            service_specs: None,
            notify: Notify::default(),
            supervise: true,
        }
    }
}

/// Brings the topology of `spec` up. On failure, everything made so far is torn down again.
pub fn up(spec: &TopologySpec, opts: UpOptions) -> Result<Plan, UpError> {
    let mut state = State::new(spec.clone());
    state.services = opts.service_specs.clone();
    state.notify = opts.notify;
    state.services_started = opts.services;
    let mut plan = Plan::new(spec);
    plan.notify = opts.notify;
    if let Some(services) = &opts.service_specs {
        plan.set_services(services).map_err(UpError::Services)?;
    }
    if State::load(&plan.state_dir)?.is_some() {
        return Err(UpError::AlreadyUp {
            name: plan.name.clone(),
            dir: plan.state_dir.display().to_string(),
        });
    }
    let left = Netns::list_with_prefix(&format!("{}-", plan.prefix));
    if !left.is_empty() {
        return Err(UpError::Leftovers {
            prefix: plan.prefix.clone(),
            list: left.iter().map(Netns::name).collect::<Vec<_>>().join(", "),
        });
    }
    state.save(&plan.state_dir)?;
    for p in crate::host::apply() {
        tracing::warn!("{p}");
    }
    let built = build(&plan, &mut state).and_then(|()| {
        if opts.network_functions {
            if opts.services {
                prepare_rtmp_services(&plan)?;
            }
            if crate::lxd::used(&plan) {
                crate::lxd::start_all(&plan).map_err(UpError::Lxd)?;
            }
            start_functions(&plan, &mut state, &opts)
        } else {
            Ok(())
        }
    });
    let built = built.and_then(|()| {
        if opts.network_functions && opts.supervise {
            crate::supervise::start(&plan.name, &mut state, &plan.state_dir)?;
        }
        Ok(())
    });
    match built {
        Ok(()) => {
            state.complete = true;
            state.save(&plan.state_dir)?;
            Ok(plan)
        }
        Err(e) => {
            tracing::error!(error = %e, "bring-up failed; removing what was made");
            down(&plan.name, Some(&plan.prefix));
            Err(e)
        }
    }
}

fn build(plan: &Plan, state: &mut State) -> Result<(), UpError> {
    let dir = plan.state_dir.clone();
    for n in &plan.nodes {
        let ns = Netns::new(&n.netns);
        ns.create()
            .map_err(step(format!("create namespace {ns}")))?;
        state.netns.push(n.netns.clone());
        state.save(&dir)?;
        // Keep the namespaces quiet: no IPv6 router solicitations or DAD on the segments.
        ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")
            .and_then(|()| ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1"))
            .map_err(step(format!("configure {ns}")))?;
    }
    let fabric = Netns::new(plan.netns("fabric"));
    for s in &plan.segments {
        link::create_bridge(&fabric, &s.bridge)
            .map_err(step(format!("create bridge {} in {fabric}", s.bridge)))?;
    }
    for l in &plan.links {
        let a = End {
            netns: plan.netns(&l.a.node),
            ifname: l.a.ifname.clone(),
        };
        let b = End {
            netns: plan.netns(&l.b.node),
            ifname: l.b.ifname.clone(),
        };
        let what = format!("link {}:{} - {}:{}", l.a.node, a.ifname, l.b.node, b.ifname);
        link::create_veth(&a, &b, MTU).map_err(step(format!("create {what}")))?;
        if l.a.ovs || l.b.ovs {
            for e in [&a, &b] {
                link::tx_checksum_off(&Netns::new(&e.netns), &e.ifname)
                    .map_err(step(format!("checksum offload off on {what}")))?;
            }
        }
        for (e, le) in [(&a, &l.a), (&b, &l.b)] {
            if let Some(br) = &le.bridge {
                link::attach_to_bridge(&Netns::new(&e.netns), &e.ifname, br)
                    .map_err(step(format!("attach {what} to {br}")))?;
            }
        }
    }
    for sw in &plan.switches {
        let ovs = OvsInstance::new(&sw.netns, &sw.dir);
        let mut started = Vec::new();
        let res = ovs.start(|p| started.push(p));
        record(state, &sw.node, started);
        state.save(&dir)?;
        res.map_err(step(format!("start Open vSwitch in {}", sw.netns)))?;
        let ns = Netns::new(&sw.netns);
        ovs.add_bridge(&sw.bridge)
            .map_err(step(format!("add bridge {}", sw.bridge)))?;
        for l in &plan.links {
            for e in [&l.a, &l.b] {
                if e.ovs && e.node == sw.node {
                    ovs.add_port(&sw.bridge, &e.ifname)
                        .map_err(step(format!("add port {} to {}", e.ifname, sw.bridge)))?;
                }
            }
        }
        for p in &sw.internal_ports {
            ovs.add_internal_port(&sw.bridge, p)
                .map_err(step(format!("add internal port {p} to {}", sw.bridge)))?;
        }
        for ifname in std::iter::once(&sw.bridge).chain(&sw.internal_ports) {
            link::set_up(&ns, ifname).map_err(step(format!("bring {ifname} up in {ns}")))?;
        }
        ovs.del_flows(&sw.bridge, "")
            .map_err(step(format!("clear flows of {}", sw.bridge)))?;
        ovs.add_flows(&sw.bridge, &sw.base_flows)
            .map_err(step(format!("install base flows on {}", sw.bridge)))?;
    }
    for n in &plan.nodes {
        let ns = Netns::new(&n.netns);
        for (ifname, mac) in &n.macs {
            link::set_mac(&ns, ifname, mac)
                .map_err(step(format!("set MAC of {}:{ifname}", n.name)))?;
        }
        for a in &n.addresses {
            link::add_addr(&ns, &a.ifname, a.addr).map_err(step(format!(
                "address {} on {}:{}",
                a.addr, n.name, a.ifname
            )))?;
        }
        for r in &n.routes {
            link::add_route(&ns, r.dst, r.via, r.dev.as_deref())
                .map_err(step(format!("route {} in {}", r.dst, n.name)))?;
        }
        if n.forwarding {
            ns.sysctl("net.ipv4.ip_forward", "1")
                .map_err(step(format!("enable forwarding in {}", n.name)))?;
        }
        if n.role == Role::Site {
            // Uplink leaves the UPF's TUN and downlink for the same UE enters the IAP's TUN:
            // asymmetric by design, so reverse-path filtering must be off.
            for key in ["all", "default"] {
                ns.sysctl(&format!("net.ipv4.conf.{key}.rp_filter"), "0")
                    .map_err(step(format!("rp_filter off in {}", n.name)))?;
            }
        }
    }
    Ok(())
}

/// For the plan's nginx-rtmp services: the test video (encoded once per machine, with a line on
/// stderr while it encodes) and each service's nginx config under the state dir.
fn prepare_rtmp_services(plan: &Plan) -> Result<(), UpError> {
    let rtmp: Vec<_> = plan
        .services
        .iter()
        .filter(|s| s.kind == crate::scenario::ServiceKind::NginxRtmp)
        .collect();
    if rtmp.is_empty() {
        return Ok(());
    }
    crate::rtmp::ensure_media(|path| {
        eprintln!(
            "encoding the nginx-rtmp test video {} (once per machine, ≈ 30 s)…",
            path.display()
        );
    })?;
    // An LXC or LXD container writes its config itself (`rtmp::lxc_service_command`).
    for s in rtmp
        .iter()
        .filter(|s| s.backend == crate::scenario::Backend::Criu)
    {
        crate::rtmp::write_config(
            &plan.state_dir,
            &s.service_id,
            std::path::Path::new(crate::rtmp::MEDIA_DIR),
        )?;
    }
    Ok(())
}

/// Starts every network function and probe, each after the previous one is ready.
fn start_functions(plan: &Plan, state: &mut State, opts: &UpOptions) -> Result<(), UpError> {
    let token = crate::nf::new_token();
    state.token = Some(token.clone());
    state.save(&plan.state_dir)?;
    let bins = crate::nf::bin_dir();
    let launch = crate::nf::LaunchOptions {
        bin_dir: bins.clone(),
        services: opts.services,
    };
    for l in crate::nf::launches(plan, &token, &launch) {
        let netns = plan.netns(&l.node);
        let s = crate::nf::spawn(&l, &netns, &plan.state_dir, &bins)?;
        state.processes.push(NodeProcess {
            node: l.node.clone(),
            process: Started {
                name: l.name.clone(),
                pid: s.pid,
                marker: s.marker.clone(),
            },
            restarts: 0,
        });
        state.save(&plan.state_dir)?;
        if l.waits_ready {
            crate::nf::wait_ready(&l.name, &s, &plan.state_dir, Duration::from_secs(30))?;
        }
    }
    Ok(())
}

fn record(state: &mut State, node: &str, started: Vec<Started>) {
    state
        .processes
        .extend(started.into_iter().map(|process| NodeProcess {
            node: node.to_owned(),
            process,
            restarts: 0,
        }));
}

/// What `down` removed.
#[derive(Debug, Default, Serialize)]
pub struct DownReport {
    pub processes_ended: Vec<String>,
    pub netns_removed: Vec<String>,
    /// Service modules' work directories removed.
    pub work_dirs_removed: Vec<String>,
    /// Host settings put back (see [`crate::host`]).
    pub host_settings_restored: Vec<String>,
    pub problems: Vec<String>,
}

/// Removes everything testbed `name` made: the processes it recorded (by PID, after checking they are
/// still the ones it started), any other process still inside its namespaces, its namespaces (from its
/// state and from its naming prefix — service namespaces `<prefix>-svc-*` included), the service
/// modules' work directories (`/dev/shm/testbed-svcmod/<prefix>-*`), its LXD daemons with their
/// directories ([`crate::lxd`]), its state directory, and —
/// when no other testbed is up — CRIU's kernel-feature cache the modules made. Safe to run at any
/// time, repeatedly.
pub fn down(name: &str, prefix_hint: Option<&str>) -> DownReport {
    let dir = State::dir(name);
    let mut report = DownReport::default();
    let state = match State::load(&dir) {
        Ok(s) => s,
        Err(e) => {
            report.problems.push(format!("{e}; removing by prefix"));
            None
        }
    };
    let prefix = state
        .as_ref()
        .map(|s| s.spec.prefix.clone())
        .or_else(|| prefix_hint.map(str::to_owned))
        .unwrap_or_else(|| "tb".to_owned());
    let grace = Duration::from_secs(3);
    if let Some(s) = &state {
        for p in s.processes.iter().rev() {
            if process::terminate(&p.process, grace) {
                report.processes_ended.push(format!(
                    "{} (pid {}, {})",
                    p.process.name, p.process.pid, p.node
                ));
            }
        }
    }
    // The LXD daemons run in the edges' namespaces: stopped (and their pools, loop devices and
    // directories removed) after the service modules ended, before the sweep below.
    let (stopped, problems) = crate::lxd::stop_all(name);
    report.processes_ended.extend(stopped);
    report.problems.extend(problems);
    let mut namespaces: Vec<Netns> = Netns::list_with_prefix(&format!("{prefix}-"));
    if let Some(s) = &state {
        for n in &s.netns {
            let ns = Netns::new(n);
            if ns.exists() && !namespaces.contains(&ns) {
                namespaces.push(ns);
            }
        }
    }
    let me = std::process::id() as i32;
    for ns in &namespaces {
        // Anything still running inside the testbed's namespaces was started in them by the testbed
        // (or by `testbed exec`); end it by PID so the namespace really goes away.
        if let Some(inode) = ns.inode() {
            for pid in process::pids_in_netns(inode) {
                if pid == me {
                    continue;
                }
                let what = process::cmdline(pid).unwrap_or_default();
                process::signal_and_wait(pid, grace);
                report
                    .processes_ended
                    .push(format!("{what} (pid {pid}, in {ns})"));
            }
        }
    }
    for ns in &namespaces {
        match ns.delete() {
            Ok(()) => report.netns_removed.push(ns.name().to_owned()),
            Err(e) => report.problems.push(e.to_string()),
        }
    }
    remove_module_work_dirs(
        Path::new(svcmod::criu_backend::DEFAULT_WORK_ROOT),
        &prefix,
        &mut report,
    );
    if dir.exists() {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            report
                .problems
                .push(format!("cannot remove {}: {e}", dir.display()));
        }
    }
    // The last testbed down puts the host's settings back and removes CRIU's kernel-feature
    // cache the service modules made.
    if State::list().is_empty() {
        let (restored, problems) = crate::host::restore();
        report.host_settings_restored = restored;
        report.problems.extend(problems);
    }
    let kdat = Path::new(svcmod::criu::KDAT_CACHE);
    if State::list().is_empty() && kdat.exists() {
        match std::fs::remove_file(kdat) {
            Ok(()) => report.work_dirs_removed.push(kdat.display().to_string()),
            Err(e) => report
                .problems
                .push(format!("cannot remove {}: {e}", kdat.display())),
        }
    }
    report
}

/// Removes the service modules' work directories of testbed prefix `prefix` under `root`
/// (`<root>/<prefix>-<edge>`: images and CRIU logs), and `root` itself once empty.
fn remove_module_work_dirs(root: &Path, prefix: &str, report: &mut DownReport) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    let mine = format!("{prefix}-");
    for e in entries.filter_map(Result::ok) {
        let name = e.file_name();
        if !name.to_string_lossy().starts_with(&mine) {
            continue;
        }
        let path = e.path();
        match std::fs::remove_dir_all(&path) {
            Ok(()) => report.work_dirs_removed.push(path.display().to_string()),
            Err(err) => report
                .problems
                .push(format!("cannot remove {}: {err}", path.display())),
        }
    }
    // Other testbeds may still use it: only an empty root goes.
    let _ = std::fs::remove_dir(root);
}

/// The live status of a testbed.
#[derive(Debug, Serialize)]
pub struct Status {
    pub name: String,
    pub prefix: String,
    pub complete: bool,
    /// The supervisor that restarts dead network functions (none with `--no-supervise`).
    pub supervisor: Option<ProcessStatus>,
    pub nodes: Vec<NodeStatus>,
}

/// One node's live status.
#[derive(Debug, Serialize)]
pub struct NodeStatus {
    pub name: String,
    pub role: Role,
    pub netns: String,
    pub present: bool,
    pub interfaces: Vec<IfaceInfo>,
    pub bridges: Vec<BridgeStatus>,
    pub processes: Vec<ProcessStatus>,
}

/// An Open vSwitch bridge of an edge cloud.
#[derive(Debug, Serialize)]
pub struct BridgeStatus {
    pub name: String,
    pub ports: Vec<String>,
    pub flows: usize,
}

/// A process the testbed started.
#[derive(Debug, Serialize)]
pub struct ProcessStatus {
    pub name: String,
    pub pid: i32,
    pub alive: bool,
    /// Times the supervisor started it again.
    pub restarts: u32,
}

/// Reads the live status of testbed `name`; `None` when it is not up.
pub fn status(name: &str) -> Result<Option<Status>, StateError> {
    let Some(state) = State::load(&State::dir(name))? else {
        return Ok(None);
    };
    let plan = state.plan();
    let nodes = plan
        .nodes
        .iter()
        .map(|n| {
            let ns = Netns::new(&n.netns);
            let present = ns.exists();
            let bridges = plan
                .switch(&n.name)
                .filter(|_| present)
                .map(|sw| {
                    let ovs = OvsInstance::new(&sw.netns, &sw.dir);
                    ovs.bridges()
                        .unwrap_or_default()
                        .into_iter()
                        .map(|b| BridgeStatus {
                            ports: ovs.ports(&b).unwrap_or_default(),
                            flows: ovs.dump_flows(&b).map(|f| f.len()).unwrap_or(0),
                            name: b,
                        })
                        .collect()
                })
                .unwrap_or_default();
            NodeStatus {
                name: n.name.clone(),
                role: n.role,
                netns: n.netns.clone(),
                present,
                interfaces: if present {
                    link::list_ifaces(&ns).unwrap_or_default()
                } else {
                    Vec::new()
                },
                bridges,
                processes: state
                    .processes
                    .iter()
                    .filter(|p| p.node == n.name)
                    .map(|p| ProcessStatus {
                        name: p.process.name.clone(),
                        pid: p.process.pid,
                        alive: p.process.is_running(),
                        restarts: p.restarts,
                    })
                    .chain(
                        crate::lxd::running(&plan.name, &n.name).map(|d| ProcessStatus {
                            name: "lxd".into(),
                            pid: d.pid,
                            alive: d.is_running(),
                            restarts: 0,
                        }),
                    )
                    .collect(),
            }
        })
        .collect();
    let supervisor = state
        .processes
        .iter()
        .find(|p| p.process.name == crate::supervise::NAME)
        .map(|p| ProcessStatus {
            name: p.process.name.clone(),
            pid: p.process.pid,
            alive: p.process.is_running(),
            restarts: p.restarts,
        });
    Ok(Some(Status {
        name: plan.name,
        prefix: plan.prefix,
        complete: state.complete,
        supervisor,
        nodes,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn down_removes_only_this_prefixs_module_work_dirs() {
        let root = std::env::temp_dir().join(format!("tb-workdirs-test-{}", std::process::id()));
        for d in ["tbq-x/m1", "tbq-y", "tbqq-x", "tb-x", "other"] {
            std::fs::create_dir_all(root.join(d)).expect("mkdir");
        }
        std::fs::write(root.join("tbq-x/m1/pages-1.img"), b"x").expect("image");
        let mut report = DownReport::default();
        remove_module_work_dirs(&root, "tbq", &mut report);
        let mut left: Vec<String> = std::fs::read_dir(&root)
            .expect("root")
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["other", "tb-x", "tbqq-x"]);
        assert_eq!(report.work_dirs_removed.len(), 2, "{report:?}");
        assert!(report.problems.is_empty(), "{report:?}");
        for d in ["other", "tb-x", "tbqq-x"] {
            std::fs::remove_dir(root.join(d)).expect("cleanup");
        }
        remove_module_work_dirs(&root, "tbq", &mut report);
        assert!(!root.exists(), "an empty root goes too");
        remove_module_work_dirs(&root, "tbq", &mut report);
    }
}

//! `testbed`: bring the 5G edge service-mobility testbed up, inspect it, run programs in it, tear it down.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::ExitCode;

use testbed::plan::Plan;
use testbed::spec::TopologySpec;
use testbed::state::State;
use testbed::{doctor, topo};

#[derive(Parser, Debug)]
#[command(
    name = "testbed",
    version,
    about = "Two-site 5G edge service-mobility testbed"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check that this machine can run the testbed; prints what is missing and how to fix it.
    Doctor {
        /// Print the checks as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Bring a topology up: a built-in one by name (two-site, three-site) or one from a TOML file.
    Up {
        /// Built-in topology.
        #[arg(default_value = "two-site", conflicts_with = "topology")]
        builtin: String,
        /// A topology file (TOML) instead of a built-in one.
        #[arg(long, value_name = "FILE.toml")]
        topology: Option<PathBuf>,
        /// Number of UEs (overrides the topology's).
        #[arg(long)]
        ues: Option<u16>,
        /// Build only the network (namespaces, links, Open vSwitch); start no network functions.
        #[arg(long)]
        network_only: bool,
        /// Start the service modules without their services (no `stream1` in edge cloud X).
        #[arg(long)]
        no_services: bool,
        /// Bring up what a scenario file needs: its topology, UEs, services and notification
        /// type (instead of the built-in topology and `stream1`).
        #[arg(long, value_name = "SCENARIO.toml", conflicts_with_all = ["topology", "ues"])]
        scenario: Option<PathBuf>,
        /// Do not start the supervisor (a network function that dies stays dead).
        #[arg(long)]
        no_supervise: bool,
    },
    /// Hand a UE over to another site (Xn handover with UPF relocation), print the timeline, then
    /// wait for the service relocation it triggers and print its phases, the migration and the
    /// UE-side downtime (on the flows live before the handover). Exits 1 when such a flow
    /// stopped.
    Handover {
        #[arg(long)]
        name: Option<String>,
        /// The UE, e.g. ue1.
        #[arg(long)]
        ue: String,
        /// The target site, e.g. site-b.
        #[arg(long)]
        to: String,
        /// Print the report as JSON (the handover, the relocation's records, the UE-side downtime).
        #[arg(long)]
        json: bool,
        /// Do not wait for the service relocation the handover triggers.
        #[arg(long)]
        no_wait: bool,
        /// How long to wait for that relocation to end, in seconds.
        #[arg(long, default_value_t = testbed::migration::DEFAULT_WAIT.as_secs_f64(), value_name = "S")]
        wait_secs: f64,
    },
    /// Every SMO's service relocations, merged (source + target record): phases, times, flow installs.
    Relocations {
        /// The testbed (default: the one that is up).
        #[arg(long)]
        name: Option<String>,
        /// Print the merged records as JSON.
        #[arg(long)]
        json: bool,
    },
    /// SIGKILL to one of the testbed's processes, for crash experiments (the supervisor starts
    /// it again, with backoff; `testbed status` counts the restarts): `testbed kill edge-y
    /// smo-y`, or just `testbed kill smo-y`.
    Kill {
        #[arg(long)]
        name: Option<String>,
        /// The node and the process (`edge-y smo-y`), or the process alone.
        #[arg(num_args = 1..=2, required = true, value_names = ["NODE", "PROCESS"])]
        what: Vec<String>,
    },
    /// Run the supervisor of a testbed (started by `testbed up`; not for direct use).
    #[command(hide = true)]
    Supervise {
        #[arg(long)]
        name: String,
    },
    /// Arm a fault in an edge cloud's service module, for failure experiments:
    /// `corrupt-images` makes the next migration into that edge fail at its restore (the source
    /// must roll back and keep serving).
    Fault {
        #[arg(long)]
        name: Option<String>,
        /// The edge node, e.g. edge-y.
        edge: String,
        /// The fault: corrupt-images.
        fault: String,
    },
    /// Ask a UE for its status, or for the downlink gaps it recorded (the UE-side downtime probe).
    Ue {
        #[arg(long)]
        name: Option<String>,
        /// The UE, e.g. ue1.
        ue: String,
        /// `status` or `gaps`.
        #[arg(default_value = "status")]
        what: String,
    },
    /// Show each node: namespace, interfaces and addresses, OVS bridges, processes.
    Status {
        /// The testbed (default: the one that is up).
        #[arg(long)]
        name: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run a program inside a node's network namespace, e.g. `testbed exec ue1 -- ping 20.0.0.10`.
    Exec {
        /// The testbed (default: the one that is up).
        #[arg(long)]
        name: Option<String>,
        /// Node name (ue1, gnb-a, site-a, core, dn, edge-x, fabric, …).
        node: String,
        /// The program and its arguments.
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Print the planned topology (nodes, links, addresses, flows) without making anything.
    Plan {
        #[arg(default_value = "two-site", conflicts_with = "topology")]
        builtin: String,
        #[arg(long, value_name = "FILE.toml")]
        topology: Option<PathBuf>,
    },
    /// Run a scenario's experiment, or list what it needs.
    Experiment {
        #[command(subcommand)]
        command: ExperimentCommand,
    },
    /// Write the report of an experiment directory: report.md (thesis Tables 5.4-5.6 side by
    /// side, downtime two ways, peak memory) and the plots as SVG + PNG.
    Report {
        /// The experiment's directory (`--out` of `testbed experiment run`).
        dir: PathBuf,
    },
    /// Remove everything `up` made (also after a crash half-way).
    Down {
        /// The testbed (default: every testbed that has state, or `two-site`).
        #[arg(long)]
        name: Option<String>,
        /// Also remove namespaces with this prefix (default: from the state, else `tb`).
        #[arg(long)]
        prefix: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum ExperimentCommand {
    /// Bring the testbed up for SCENARIO (or reuse it), do its runs, record each in DIR
    /// (runs/NNN.json, raw.json, runs.csv, meta.json); resumes an interrupted experiment.
    Run {
        /// The scenario file (TOML, see testbed/scenarios/README.md).
        scenario: PathBuf,
        /// Runs in all (default: the scenario's `runs`); runs already in DIR are not redone.
        #[arg(long)]
        runs: Option<u32>,
        /// The experiment's directory.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Use the testbed that is up (it must be the scenario's) instead of bringing one up.
        #[arg(long)]
        reuse: bool,
        /// Leave the testbed up at the end.
        #[arg(long)]
        keep: bool,
        /// Delete each run's packet captures (DIR/runs/NNN-<ue>.pcap) once they are read.
        #[arg(long)]
        no_pcap_keep: bool,
        /// Run the recorded failed runs again.
        #[arg(long)]
        retry_failed: bool,
    },
    /// Print the seeded schedule a `[chaos]` scenario's run plays (the same for every machine).
    Schedule {
        /// The scenario file (TOML with a [chaos] table).
        scenario: PathBuf,
        /// The run (its seed is the scenario's seed + run − 1).
        #[arg(long, default_value_t = 1)]
        run: u32,
        /// Print the events as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// A closed pipe ends the CLI quietly (`testbed status | head`), as it ends `ls`: Rust ignores
/// SIGPIPE, and `println!` panics on the broken pipe instead.
#[allow(unsafe_code)]
fn default_sigpipe() {
    // SAFETY: restores the default disposition of one signal before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    default_sigpipe();
    let cli = Cli::parse();
    // The supervisor's log is a file; its default filter says what it restarted.
    let default_filter = match cli.command {
        Command::Supervise { .. } => "info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TESTBED_LOG")
                .unwrap_or_else(|_| default_filter.into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("testbed: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_spec(builtin: &str, topology: Option<&PathBuf>) -> Result<TopologySpec> {
    match topology {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            TopologySpec::from_toml(&text).with_context(|| format!("in {}", path.display()))
        }
        None => Ok(TopologySpec::builtin(builtin)?),
    }
}

/// The testbed a command is about: the one named, else the only one up.
/// The state and plan of the testbed `name` (default: the one that is up).
fn running(name: Option<String>) -> Result<(String, State, Plan)> {
    let name = current(name)?;
    let state =
        State::load(&State::dir(&name))?.with_context(|| format!("testbed `{name}` is not up"))?;
    let plan = state.plan();
    Ok((name, state, plan))
}

/// [`running`] plus the deployment's token, for commands that talk to its network functions.
fn running_with_token(name: Option<String>) -> Result<(String, Plan, String)> {
    let (name, state, plan) = running(name)?;
    let token = state.token.context(
        "this testbed runs no network functions (it was brought up with --network-only)",
    )?;
    Ok((name, plan, token))
}

fn current(name: Option<String>) -> Result<String> {
    if let Some(n) = name {
        return Ok(n);
    }
    let up = State::list();
    match up.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!("no testbed is up (start one with `testbed up two-site`)"),
        many => bail!(
            "several testbeds are up ({}); pick one with --name",
            many.join(", ")
        ),
    }
}

fn require_root() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("this command must run as root (network namespaces, Open vSwitch)");
    }
    Ok(())
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Doctor { json } => {
            let checks = doctor::run();
            if json {
                println!("{}", serde_json::to_string_pretty(&checks)?);
            } else {
                print!("{}", doctor::table(&checks));
            }
            let missing = checks.iter().filter(|c| !c.ok).count();
            if missing > 0 {
                if !json {
                    println!("\n{missing} check(s) failed.");
                }
                return Ok(ExitCode::FAILURE);
            }
            if !json {
                println!("\nall checks passed: this machine can run the testbed.");
            }
        }
        Command::Plan { builtin, topology } => {
            let spec = load_spec(&builtin, topology.as_ref())?;
            println!("{}", serde_json::to_string_pretty(&Plan::new(&spec))?);
        }
        Command::Up {
            builtin,
            topology,
            ues,
            network_only,
            no_services,
            scenario,
            no_supervise,
        } => {
            require_root()?;
            let mut opts = topo::UpOptions {
                network_functions: !network_only,
                services: !no_services,
                supervise: !no_supervise,
                ..Default::default()
            };
            let spec = if let Some(path) = &scenario {
                let (sc, spec) = testbed::scenario::Scenario::load(path)?;
                opts.service_specs = Some(sc.services.clone());
                opts.notify = sc.scenario.notify;
                sc.testbed_spec(spec)?
            } else {
                let mut spec = load_spec(&builtin, topology.as_ref())?;
                if let Some(n) = ues {
                    spec.ues = n;
                    spec.validate()?;
                }
                spec
            };
            let t = std::time::Instant::now();
            let plan = topo::up(&spec, opts)?;
            println!(
                "testbed `{}` is up ({} namespaces, {} links, {} Open vSwitch instances) in {:.1} s",
                plan.name,
                plan.nodes.len(),
                plan.links.len(),
                plan.switches.len(),
                t.elapsed().as_secs_f64()
            );
            println!("  state: {}", plan.state_dir.display());
            println!("  try:   testbed status; testbed exec ue1 -- ping -c 3 10.60.0.100; testbed handover --ue ue1 --to site-b; testbed down");
        }
        Command::Status { name, json } => {
            let name = current(name)?;
            let Some(st) = topo::status(&name)? else {
                bail!("testbed `{name}` is not up");
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                print_status(&st);
            }
        }
        Command::Exec { name, node, cmd } => {
            let (name, _, plan) = running(name)?;
            let Some(n) = plan.node(&node) else {
                let known: Vec<_> = plan.nodes.iter().map(|n| n.name.as_str()).collect();
                bail!("no node `{node}` in `{name}` (nodes: {})", known.join(", "));
            };
            let err = std::process::Command::new("ip")
                .args(["netns", "exec", &n.netns])
                .args(&cmd)
                .exec();
            bail!("cannot run {:?} in {}: {err}", cmd, n.netns);
        }
        Command::Handover {
            name,
            ue,
            to,
            json,
            no_wait,
            wait_secs,
        } => {
            let (_, plan, token) = running_with_token(name)?;
            let wait = (!no_wait).then(|| std::time::Duration::from_secs_f64(wait_secs.max(0.0)));
            let outcome = testbed::migration::handover_and_follow(&plan, &token, &ue, &to, wait)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&outcome)?);
            } else {
                print!("{}", testbed::migration::text(&ue, &outcome));
            }
            // A flow that was live before the handover and stopped is a failure, said plainly.
            if let Some(d) = outcome
                .ue_downtime
                .as_ref()
                .filter(|d| !d.silent_flows.is_empty())
            {
                eprintln!(
                    "testbed: {} flow(s) of {ue} stopped after the handover: {}",
                    d.silent_flows.len(),
                    d.silent_flows
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Relocations { name, json } => {
            let (_, plan, token) = running_with_token(name)?;
            let mut records = Vec::new();
            let mut unreachable = 0;
            for a in testbed::relocations::collect(&plan, &token) {
                match a.records {
                    Ok(r) => records.extend(r),
                    Err(e) => {
                        unreachable += 1;
                        eprintln!("testbed: {}: {e}", a.smo);
                    }
                }
            }
            let merged = testbed::relocations::merge(records);
            if json {
                println!("{}", serde_json::to_string_pretty(&merged)?);
            } else {
                print!("{}", testbed::relocations::table(&merged));
            }
            if unreachable > 0 {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Kill { name, what } => {
            require_root()?;
            let name = current(name)?;
            let (node, process) = match what.as_slice() {
                [p] => (None, p.as_str()),
                [n, p] => (Some(n.as_str()), p.as_str()),
                _ => bail!("give NODE PROCESS or PROCESS"),
            };
            let p = testbed::supervise::kill(&name, node, process).map_err(anyhow::Error::msg)?;
            println!(
                "killed {} (pid {}) on {} with SIGKILL; the supervisor starts it again",
                p.process.name, p.process.pid, p.node
            );
        }
        Command::Supervise { name } => {
            testbed::supervise::run(&name)?;
        }
        Command::Fault { name, edge, fault } => {
            let (name, plan, token) = running_with_token(name)?;
            if plan.switches.iter().all(|sw| sw.node != edge) {
                bail!("no edge cloud `{edge}` in testbed `{name}`");
            }
            let fault: svcmod::Fault =
                serde_json::from_value(serde_json::Value::String(fault.clone())).map_err(|_| {
                    anyhow::anyhow!("unknown fault `{fault}` (known: corrupt-images)")
                })?;
            testbed::migration::arm_fault(&plan, &token, &edge, fault)?;
            println!("{fault} armed in {}", testbed::nf::svcmod_name(&edge));
        }
        Command::Ue { name, ue, what } => {
            let (_, _, plan) = running(name)?;
            let path = match what.as_str() {
                "status" => "/ue/v1/status",
                "gaps" => "/ue/v1/gaps",
                other => bail!("unknown `{other}`: use status or gaps"),
            };
            let v: serde_json::Value =
                testbed::handover::ue_get(&testbed::nf::ue_socket(&plan, &ue), path)?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Command::Experiment {
            command:
                ExperimentCommand::Run {
                    scenario,
                    runs,
                    out,
                    reuse,
                    keep,
                    no_pcap_keep,
                    retry_failed,
                },
        } => {
            require_root()?;
            let s = testbed::experiment::run(&testbed::experiment::RunOptions {
                scenario,
                out,
                runs,
                reuse,
                keep,
                keep_pcap: !no_pcap_keep,
                retry_failed,
            })?;
            println!(
                "experiment in {}: {} of {} runs recorded ({} ok, {} failed; {} run now); `testbed report {}` makes the report",
                s.dir.display(),
                s.recorded,
                s.runs_asked,
                s.ok,
                s.failed,
                s.ran_now,
                s.dir.display()
            );
            if s.failed > 0 {
                return Ok(ExitCode::from(2));
            }
        }
        Command::Experiment {
            command:
                ExperimentCommand::Schedule {
                    scenario,
                    run,
                    json,
                },
        } => {
            let (sc, topo) = testbed::experiment::load(&scenario)?;
            let Some(chaos) = &sc.chaos else {
                bail!("{} has no [chaos] table", scenario.display());
            };
            let sites: Vec<String> = topo
                .sites
                .iter()
                .map(|s| format!("site-{}", s.name))
                .collect();
            let seed = chaos.run_seed(run.max(1));
            let events = testbed::chaos::schedule(
                chaos,
                seed,
                &sites,
                sites.first().map_or("", String::as_str),
            );
            if json {
                println!("{}", serde_json::to_string_pretty(&events)?);
            } else {
                println!(
                    "{} run {run}: seed {seed}, {} events",
                    sc.scenario.name,
                    events.len()
                );
                println!("  {:>4}  {:>9}  action", "#", "at ms");
                for e in &events {
                    println!("  {:>4}  {:>9}  {}", e.seq, e.at_ms, e.action);
                }
            }
        }
        Command::Report { dir } => {
            let files = testbed::report::report(&dir)?;
            println!("wrote {}", files.markdown.display());
            for p in &files.plots {
                println!("wrote {}", p.display());
            }
            println!();
            print!("{}", files.headline);
        }
        Command::Down { name, prefix } => {
            require_root()?;
            let names = match name {
                Some(n) => vec![n],
                None => {
                    let up = State::list();
                    if up.is_empty() {
                        vec!["two-site".to_owned()]
                    } else {
                        up
                    }
                }
            };
            let mut ok = true;
            for n in names {
                let r = topo::down(&n, prefix.as_deref());
                println!(
                    "testbed `{n}` is down: {} process(es) ended, {} namespace(s) removed",
                    r.processes_ended.len(),
                    r.netns_removed.len()
                );
                for p in &r.processes_ended {
                    println!("  ended {p}");
                }
                for d in &r.work_dirs_removed {
                    println!("  removed {d}");
                }
                for h in &r.host_settings_restored {
                    println!("  restored {h}");
                }
                for p in &r.problems {
                    ok = false;
                    println!("  problem: {p}");
                }
            }
            if !ok {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_status(st: &topo::Status) {
    println!(
        "testbed `{}` (namespaces {}-*){}",
        st.name,
        st.prefix,
        if st.complete {
            ""
        } else {
            "  [bring-up incomplete]"
        }
    );
    match &st.supervisor {
        Some(p) => println!(
            "supervisor pid {} {} (restarts network functions that die)",
            p.pid,
            if p.alive { "alive" } else { "DEAD" }
        ),
        None => {
            println!("no supervisor (up --no-supervise): a network function that dies stays dead")
        }
    }
    for n in &st.nodes {
        let mark = if n.present { "up" } else { "MISSING" };
        println!(
            "\n{:<8} {:<7} {} [{mark}]",
            n.name,
            format!("{:?}", n.role).to_lowercase(),
            n.netns
        );
        for i in n.interfaces.iter().filter(|i| i.name != "lo") {
            let state = if i.up { "UP" } else { "down" };
            println!(
                "    {:<12} {:<4} {:<17} {}",
                i.name,
                state,
                i.mac.as_deref().unwrap_or("-"),
                i.addrs.join(" ")
            );
        }
        for b in &n.bridges {
            println!(
                "    ovs {} ports [{}], {} flows",
                b.name,
                b.ports.join(", "),
                b.flows
            );
        }
        for p in &n.processes {
            let alive = if p.alive { "alive" } else { "DEAD" };
            let restarts = match p.restarts {
                0 => String::new(),
                1 => ", restarted once".to_owned(),
                n => format!(", restarted {n} times"),
            };
            println!("    process {} pid {} {alive}{restarts}", p.name, p.pid);
        }
    }
}

//! Set-up shared by the privileged end-to-end tests: a two-site testbed with its network functions
//! under the test's own name and prefix, torn down by a guard also when the test fails.

use testbed::plan::Plan;
use testbed::spec::TopologySpec;
use testbed::state::State;
use testbed::topo;

/// Tears the testbed down, also when the test fails half-way.
#[allow(dead_code)] // not every test file brings a testbed up itself
pub struct Guard(pub String, pub String);

impl Drop for Guard {
    fn drop(&mut self) {
        topo::down(&self.0, Some(&self.1));
    }
}

/// Fails (never skips silently) when not root.
#[allow(dead_code)] // not every test file checks root itself
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "privileged test: needs root (namespaces, TUN, OVS); run `scripts/test` as root"
    );
}

/// Brings `two-site` up as `name`/`prefix` (after removing any leftovers of an earlier run) with
/// every network function and SMO; the plan, the deployment's token and the tear-down guard.
#[allow(dead_code)] // not every test file brings up the default testbed
pub fn up(name: &str, prefix: &str) -> (Plan, String, Guard) {
    up_with(name, prefix, topo::UpOptions::default())
}

/// [`up`] with these options (e.g. a scenario's services).
#[allow(dead_code)] // not every test file brings up other services
pub fn up_with(name: &str, prefix: &str, opts: topo::UpOptions) -> (Plan, String, Guard) {
    let mut spec = TopologySpec::builtin("two-site").expect("builtin");
    spec.name = name.into();
    spec.prefix = prefix.into();
    topo::down(name, Some(prefix));
    let guard = Guard(name.into(), prefix.into());
    let plan = topo::up(&spec, opts).expect("testbed up with network functions and SMOs");
    let token = State::load(&plan.state_dir)
        .expect("state")
        .and_then(|s| s.token)
        .expect("token");
    (plan, token, guard)
}

/// `eth0`'s IPv4 address and MAC in the network namespace `nsenter` enters with `target`
/// (`--net=/run/netns/NAME`, or `-t PID -n`).
#[allow(dead_code)] // not every test file looks inside a service
pub fn eth0_identity(target: &[&str]) -> (String, String) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("nsenter")
            .args(target)
            .args(args)
            .output()
            .expect("nsenter");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let word_after = |text: &str, key: &str| {
        text.split_whitespace()
            .skip_while(|w| *w != key)
            .nth(1)
            .unwrap_or_default()
            .to_owned()
    };
    let addr = run(&["ip", "-4", "-o", "addr", "show", "dev", "eth0"]);
    let ip = word_after(&addr, "inet")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let mac = word_after(
        &run(&["ip", "-o", "link", "show", "dev", "eth0"]),
        "link/ether",
    );
    (ip, mac)
}

/// The stdout of `args` run inside network namespace `netns` (`ip netns exec`).
#[allow(dead_code)] // not every test file looks inside namespaces
pub fn in_ns(netns: &str, args: &[&str]) -> String {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", netns])
        .args(args)
        .output()
        .expect("ip netns exec");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `ok` every 20 ms until it holds or `limit` passed; whether it held.
#[allow(dead_code)] // not every test file waits for a condition
pub fn wait_for(limit: std::time::Duration, mut ok: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if ok() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    ok()
}

/// The PID of LXC service `id`'s init at `edge` (asked with `lxc-info` in the edge's namespace,
/// in the LXC module's lxcpath), if the container runs there.
#[allow(dead_code)] // not every test file runs LXC services
pub fn lxc_init_pid(plan: &Plan, id: &str, edge: &str) -> Option<u32> {
    let lxcpath = std::path::Path::new(svcmod::criu_backend::DEFAULT_WORK_ROOT)
        .join(format!("{}-{}", plan.prefix, Plan::edge_short(edge)))
        .join("lxc");
    let name = svcmod::lxc::container_name(&plan.prefix, id, Plan::edge_short(edge));
    in_ns(
        &plan.netns(edge),
        &[
            "lxc-info",
            "-P",
            &lxcpath.to_string_lossy(),
            "-n",
            &name,
            "-p",
            "-H",
        ],
    )
    .trim()
    .parse()
    .ok()
}

/// The PID of LXD service `id`'s init at `edge` (from the edge's LXD daemon), if its instance
/// runs there.
#[allow(dead_code)] // not every test file runs LXD services
pub fn lxd_init_pid(plan: &Plan, id: &str, edge: &str) -> Option<u32> {
    let daemon = testbed::lxd::running(&plan.name, edge)?;
    let name = svcmod::lxd_backend::instance_name(&plan.prefix, id);
    let state = daemon
        .request("GET", &format!("/1.0/instances/{name}/state"), None)
        .ok()?;
    let pid = state["metadata"]["pid"].as_u64()?;
    u32::try_from(pid).ok().filter(|p| *p > 0)
}

/// Nothing of testbed `name` is left: no namespace with its `prefix`, no state, no process
/// started for it (their command lines name its state directory or `out`, e.g. an experiment's
/// directory).
#[allow(dead_code)] // not every test file runs experiments
pub fn assert_nothing_left(name: &str, prefix: &str, out: &std::path::Path) {
    let ns = netkit::Netns::list_with_prefix(&format!("{prefix}-"));
    assert!(ns.is_empty(), "namespaces left: {ns:?}");
    let state = std::path::Path::new(testbed::plan::STATE_ROOT).join(name);
    assert!(!state.exists(), "{} left", state.display());
    let me = std::process::id().to_string();
    let mut left = Vec::new();
    for e in std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(Result::ok)
    {
        let pid = e.file_name().to_string_lossy().into_owned();
        if pid == me || !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let cmd = std::fs::read(e.path().join("cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        if cmd.contains(&state.display().to_string()) || cmd.contains(&out.display().to_string()) {
            left.push(format!("{pid}: {cmd}"));
        }
    }
    assert!(left.is_empty(), "processes left: {left:#?}");
}

/// Runs the `testbed` binary with `args`, echoing its output; (exit code, stdout, stderr).
#[allow(dead_code)] // not every test file runs the CLI
pub fn testbed_cli(args: &[&str]) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_testbed"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run testbed");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    eprintln!("$ testbed {}\n{stdout}{stderr}", args.join(" "));
    (out.status.code(), stdout, stderr)
}

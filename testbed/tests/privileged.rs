//! Privileged integration tests: real namespaces, veths, Linux bridges and Open vSwitch.
//!
//! They are `#[ignore]`d so a plain `cargo test` counts them as skipped; CI runs them as root with
//! `--include-ignored` (see scripts/test). Run by hand without root, they fail and say why.
//! They use their own testbed names and namespace prefixes, so they never touch a user's testbed,
//! and they tear down in a drop guard, also when an assertion fails.

use std::process::Command;
use std::sync::Mutex;

use netkit::ovs::OvsInstance;
use netkit::Netns;
use testbed::plan::Plan;
use testbed::spec::TopologySpec;
use testbed::state::State;
use testbed::topo;

/// One testbed at a time: the tests share the machine's namespaces and ports.
static SERIAL: Mutex<()> = Mutex::new(());

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "privileged test: needs root (network namespaces, Open vSwitch); run `scripts/test` as root"
    );
}

fn spec(name: &str, prefix: &str, base: &str) -> TopologySpec {
    let mut s = TopologySpec::builtin(base).expect("builtin");
    s.name = name.into();
    s.prefix = prefix.into();
    s.validate().expect("valid");
    s
}

/// Tears the testbed down when dropped, so a failing assertion leaves nothing behind.
struct Guard {
    name: String,
    prefix: String,
}

impl Drop for Guard {
    fn drop(&mut self) {
        topo::down(&self.name, Some(&self.prefix));
    }
}

fn up(spec: &TopologySpec) -> (Plan, Guard) {
    // A previous crashed run of this very test may have left its testbed: clear it first.
    topo::down(&spec.name, Some(&spec.prefix));
    let guard = Guard {
        name: spec.name.clone(),
        prefix: spec.prefix.clone(),
    };
    let plan = topo::up(
        spec,
        topo::UpOptions {
            network_functions: false,
            services: false,
            ..Default::default()
        },
    )
    .expect("testbed up");
    (plan, guard)
}

/// One ping with a 1 s deadline: for checks that a path is closed.
fn ping(plan: &Plan, node: &str, dst: &str) -> bool {
    let ns = plan.node(node).expect("node").netns.clone();
    Command::new("ip")
        .args([
            "netns", "exec", &ns, "ping", "-c", "1", "-W", "1", "-q", dst,
        ])
        .output()
        .expect("run ping")
        .status
        .success()
}

/// Up to three pings: for checks that a path is open (the first packet may wait for ARP and the
/// OVS userspace upcall on a loaded 2-core machine).
fn reach(plan: &Plan, node: &str, dst: &str) -> bool {
    (0..3).any(|_| ping(plan, node, dst))
}

/// Sends a line over TCP from `from` to `to_addr:port` (a listener in node `to`); true if it arrived.
fn tcp(plan: &Plan, from: &str, to: &str, to_addr: &str, port: u16) -> bool {
    let ns = |n: &str| plan.node(n).expect("node").netns.clone();
    let mut server = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns(to),
            "timeout",
            "5",
            "nc",
            "-l",
            "-p",
            &port.to_string(),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("nc -l");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let sent = Command::new("sh")
        .args([
            "-c",
            &format!(
                "echo through-ovs | ip netns exec {} timeout 3 nc -q 1 -w 2 {to_addr} {port}",
                ns(from)
            ),
        ])
        .status()
        .expect("nc")
        .success();
    if !sent {
        let _ = server.kill();
    }
    let out = server.wait_with_output().expect("nc -l output");
    sent && String::from_utf8_lossy(&out.stdout).contains("through-ovs")
}

fn assert_gone(plan: &Plan, pids: &[i32]) {
    let left = Netns::list_with_prefix(&format!("{}-", plan.prefix));
    assert!(left.is_empty(), "namespaces left: {left:?}");
    for pid in pids {
        assert!(
            !netkit::process::is_alive(*pid),
            "process {pid} still alive"
        );
    }
    assert!(
        !plan.state_dir.exists(),
        "state dir {} left",
        plan.state_dir.display()
    );
}

#[test]
#[ignore = "privileged: needs root; run with --include-ignored as root"]
fn two_site_links_carry_traffic_edges_are_isolated_and_down_removes_everything() {
    require_root();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let spec = spec("ci-two-site", "tbci", "two-site");
    let (plan, guard) = up(&spec);

    // Every link that should carry traffic does.
    let reachable = [
        ("ue1", "10.10.0.1"),      // air: UE ↔ gNB-A
        ("ue1", "10.10.0.2"),      // air: UE ↔ gNB-B
        ("gnb-a", "10.30.0.101"),  // N3 A
        ("gnb-b", "10.30.0.102"),  // N3 B
        ("gnb-a", "10.40.0.2"),    // Xn
        ("site-a", "10.90.0.2"),   // N9
        ("site-a", "10.60.0.100"), // site A ↔ central DN
        ("site-b", "10.60.0.100"), // site B ↔ central DN
        ("core", "10.100.0.21"),   // SBI / N4 to site A
        ("core", "10.100.0.22"),   // SBI / N4 to site B
        ("core", "10.100.0.31"),   // SBI to gNB-A
        ("core", "10.100.0.41"),   // SBI to edge X
        ("core", "10.100.0.42"),   // SBI to edge Y
        ("site-a", "20.0.0.10"),   // N6 A through OVS of edge X
        ("site-b", "20.0.0.20"),   // N6 B through OVS of edge Y
        ("edge-x", "10.0.1.2"),    // backhaul through both OVS bridges
        ("edge-y", "10.0.1.1"),
    ];
    for (node, dst) in reachable {
        assert!(reach(&plan, node, dst), "{node} cannot reach {dst}");
    }
    // TCP through the OVS userspace datapath (needs checksum offload off on the veths).
    assert!(
        tcp(&plan, "site-a", "edge-x", "20.0.0.10", 5201),
        "TCP site-a → edge-x"
    );

    // The data path between edge clouds is closed by default …
    let isolated = [
        ("edge-x", "20.0.0.20"),
        ("edge-y", "20.0.0.10"),
        ("site-a", "20.0.0.20"),
        ("site-b", "20.0.0.10"),
    ];
    for (node, dst) in isolated {
        assert!(
            !ping(&plan, node, dst),
            "{node} reaches {dst} without an OpenFlow rule"
        );
    }
    // … opens with OpenFlow rules on both edge bridges. They output to the probe port explicitly:
    // NORMAL on traffic from the backhaul would learn the other site's anycast gateway MAC on `bh`.
    let allow = |sw: &testbed::plan::Switch| {
        let probe = plan
            .node(&sw.node)
            .and_then(|n| n.addr("srv"))
            .expect("probe address");
        OvsInstance::new(&sw.netns, &sw.dir)
            .add_flows(
                &sw.bridge,
                &[
                    format!("cookie=0x77,priority=200,in_port=bh,arp,arp_tpa={probe},actions=output:srv"),
                    format!("cookie=0x77,priority=200,in_port=bh,ip,nw_dst={probe},actions=output:srv"),
                ],
            )
            .expect("add flows");
    };
    plan.switches.iter().for_each(allow);
    assert!(
        reach(&plan, "edge-x", "20.0.0.20"),
        "rule added, edge X still cannot reach edge Y"
    );
    assert!(
        tcp(&plan, "edge-y", "edge-x", "20.0.0.10", 5202),
        "TCP edge-y → edge-x with rule"
    );
    // … and closes again when they are removed.
    for sw in &plan.switches {
        let ovs = OvsInstance::new(&sw.netns, &sw.dir);
        ovs.del_flows(&sw.bridge, "cookie=0x77/-1")
            .expect("del flows");
        let flows = ovs.dump_flows(&sw.bridge).expect("dump");
        assert_eq!(flows.len(), sw.base_flows.len(), "{flows:?}");
    }
    assert!(
        !ping(&plan, "edge-x", "20.0.0.20"),
        "rule removed, edge X still reaches edge Y"
    );
    // The local N6 paths still work: nothing was learned on the backhaul.
    assert!(reach(&plan, "site-a", "20.0.0.10") && reach(&plan, "site-b", "20.0.0.20"));

    // Status sees every node and every OVS process alive.
    let st = topo::status(&spec.name).expect("status").expect("is up");
    assert!(st.complete);
    assert!(st.nodes.iter().all(|n| n.present));
    let pids: Vec<i32> = st
        .nodes
        .iter()
        .flat_map(|n| n.processes.iter().map(|p| (p.pid, p.alive)))
        .inspect(|(pid, alive)| assert!(alive, "process {pid} dead"))
        .map(|(pid, _)| pid)
        .collect();
    assert_eq!(pids.len(), 4, "ovsdb-server + ovs-vswitchd per edge");
    let edge_x = st
        .nodes
        .iter()
        .find(|n| n.name == "edge-x")
        .expect("edge-x");
    assert_eq!(edge_x.bridges.len(), 1);
    assert!(edge_x.bridges[0].ports.contains(&"bh".to_owned()));

    // A second `up` refuses clearly and changes nothing.
    let err = topo::up(
        &spec,
        topo::UpOptions {
            network_functions: false,
            services: false,
            ..Default::default()
        },
    )
    .expect_err("second up must refuse");
    assert!(err.to_string().contains("already up"), "{err}");
    assert!(reach(&plan, "site-a", "20.0.0.10"));

    let report = topo::down(&spec.name, None);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.netns_removed.len(), plan.nodes.len());
    assert_gone(&plan, &pids);
    drop(guard);
}

#[test]
#[ignore = "privileged: needs root; run with --include-ignored as root"]
fn down_cleans_up_after_a_crash_without_state() {
    require_root();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let spec = spec("ci-crash", "tbcr", "two-site");
    let (plan, guard) = up(&spec);
    let state = State::load(&plan.state_dir).expect("load").expect("state");
    let pids: Vec<i32> = state.processes.iter().map(|p| p.process.pid).collect();
    assert_eq!(pids.len(), 4);
    // A crash that lost the state file: down must still find everything by the naming prefix,
    // including the OVS daemons inside the namespaces.
    std::fs::remove_dir_all(&plan.state_dir).expect("remove state");
    let err = topo::up(
        &spec,
        topo::UpOptions {
            network_functions: false,
            services: false,
            ..Default::default()
        },
    )
    .expect_err("leftovers must be refused");
    assert!(
        err.to_string().contains("left from an earlier run"),
        "{err}"
    );
    let report = topo::down(&spec.name, Some(&spec.prefix));
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(
        report.processes_ended.len() >= 4,
        "{:?}",
        report.processes_ended
    );
    assert_gone(&plan, &pids);
    drop(guard);
}

#[test]
#[ignore = "privileged: needs root; run with --include-ignored as root"]
fn three_sites_from_a_file_and_the_cli_round_trip_twice() {
    require_root();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = std::env::temp_dir().join(format!("tb-three-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("three.toml");
    std::fs::write(
        &file,
        "name = \"ci-three\"\nprefix = \"tbc3\"\nues = 2\n\
         [[sites]]\nname = \"a\"\nedge = \"x\"\n[[sites]]\nname = \"b\"\nedge = \"y\"\n\
         [[sites]]\nname = \"c\"\nedge = \"z\"\ndnai = \"dnai-z\"\n",
    )
    .expect("write topology");
    let spec =
        TopologySpec::from_toml(&std::fs::read_to_string(&file).expect("read")).expect("spec");
    let plan = Plan::new(&spec);
    let _guard = Guard {
        name: spec.name.clone(),
        prefix: spec.prefix.clone(),
    };
    topo::down(&spec.name, Some(&spec.prefix));
    let bin = env!("CARGO_BIN_EXE_testbed");
    let run = |args: &[&str]| {
        let out = Command::new(bin).args(args).output().expect("run testbed");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "testbed {args:?} failed:\n{text}");
        text
    };
    let path = file.display().to_string();
    for round in 0..2 {
        run(&["up", "--network-only", "--topology", &path]);
        let status = run(&["status", "--name", "ci-three"]);
        for node in ["edge-z", "site-c", "gnb-c", "ue2"] {
            assert!(
                status.contains(node),
                "round {round}: status lacks {node}:\n{status}"
            );
        }
        assert!(
            !status.contains("MISSING") && !status.contains("DEAD"),
            "{status}"
        );
        let json = run(&["status", "--name", "ci-three", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&json).expect("status json");
        assert_eq!(v["nodes"].as_array().map(Vec::len), Some(plan.nodes.len()));
        assert!(reach(&plan, "edge-x", "10.0.1.3"), "backhaul x → z");
        assert!(reach(&plan, "ue2", "10.10.0.3"), "ue2 → gNB-C");
        let exec = run(&[
            "exec", "--name", "ci-three", "ue2", "--", "ip", "-4", "-o", "addr", "show", "air",
        ]);
        assert!(exec.contains("10.10.0.102"), "{exec}");
        run(&["down", "--name", "ci-three"]);
        assert_gone(&plan, &[]);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

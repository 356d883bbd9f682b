//! Privileged tests of the routing module against a real Open vSwitch: a private `ovsdb-server` +
//! `ovs-vswitchd` in a namespace of their own (`tsr-…`), a `netdev` bridge in secure fail mode
//! speaking OpenFlow 1.3 with internal ports `bh`, `n6` and `srv`, programmed by
//! [`OvsProgrammer`] and read back with `ovs-ofctl dump-flows`. One test also gives `n6` the site
//! router's addresses, so the namespace's kernel plays the site: the trombone's ARP reply (a
//! PACKET_OUT) must complete its pending neighbour entry for the service.
//!
//! They are `#[ignore]`d so a plain `cargo test` counts them as skipped; `scripts/test` runs them as
//! root with `--include-ignored`. Run without root (or without Open vSwitch) they fail and say why.
//! Each test tears its namespace and daemons down in a drop guard, also when an assertion fails.

use std::collections::BTreeSet;
use std::future::Future;
use std::io::{BufRead, BufReader, Read};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use netkit::ovs::OvsInstance;
use netkit::process::{self, Started};
use netkit::{link, Netns};
use smo::routing::ovs::OvsProgrammer;
use smo::routing::rules::{
    cleanup_source, new_path_target, relocation_cookie, service_cookie, trombone_source,
    trombone_target, EdgePorts, ServiceAt,
};
use smo::routing::{
    CookieDelete, FlowAction, FlowError, FlowMatch, FlowProgrammer, FlowRule, FlowSet, Mac,
    GATEWAY_IP, GATEWAY_MAC, TROMBONE_UPLINK_MAC,
};

/// One switch at a time: the timings printed are then not skewed by a neighbour's OVS.
static SERIAL: Mutex<()> = Mutex::new(());

const BR: &str = "br-tsr";
const PORTS: [&str; 3] = ["bh", "n6", "srv"];
const SVC: Ipv4Addr = Ipv4Addr::new(20, 0, 0, 10);
const SVC_MAC: Mac = Mac([0x02, 0x20, 0, 0, 0, 0x0a]);
const UE: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);
/// A flow that is not the SMO's, which no set may touch.
const BASE_FLOW: &str = "cookie=0x1,priority=0,actions=NORMAL";

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "privileged test: needs root (network namespaces, Open vSwitch); run `sudo scripts/test`"
    );
    assert!(
        netkit::cmd::on_path("ovs-vswitchd") && netkit::cmd::on_path("ovs-ofctl"),
        "privileged test: needs Open vSwitch (ovs-vswitchd, ovs-ofctl); run scripts/setup"
    );
}

/// A namespace with a private OVS and bridge [`BR`]; removes both when dropped.
struct Lab {
    ns: Netns,
    ovs: OvsInstance,
    started: Vec<Started>,
}

impl Lab {
    /// Sets up `tsr-<tag>` (clearing what a crashed earlier run of the same test left).
    fn up(tag: &str) -> Lab {
        require_root();
        let name = format!("tsr-{tag}");
        let dir = std::env::temp_dir().join(&name);
        let mut lab = Lab {
            ns: Netns::new(&name),
            ovs: OvsInstance::new(&name, &dir),
            started: Vec::new(),
        };
        lab.teardown();
        lab.ns.create().expect("create namespace");
        lab.start_ovs();
        lab.ovs.add_bridge(BR).expect("add bridge");
        for p in PORTS {
            lab.ovs.add_internal_port(BR, p).expect("add internal port");
            link::set_up(&lab.ns, p).expect("port up");
        }
        lab.ovs
            .add_flows(BR, &[BASE_FLOW.to_owned()])
            .expect("base flow");
        lab
    }

    fn start_ovs(&mut self) {
        let mut started = Vec::new();
        let res = self.ovs.start(|p| started.push(p));
        self.started.extend(started);
        res.expect("start Open vSwitch");
    }

    fn mgmt(&self) -> PathBuf {
        self.ovs.dir().join(format!("{BR}.mgmt"))
    }

    fn programmer(&self) -> OvsProgrammer {
        OvsProgrammer::new(self.mgmt(), Duration::from_secs(3))
    }

    /// The bridge's flows, normalised (ports by name, no statistics).
    fn flows(&self) -> BTreeSet<Flow> {
        self.ovs
            .ofctl("dump-flows", BR, &["--names", "--no-stats"])
            .expect("dump-flows")
            .lines()
            .filter(|l| !l.starts_with("OFPST_FLOW") && !l.trim().is_empty())
            .map(Flow::parse)
            .collect()
    }

    /// Ends the daemons (by recorded PID, then anything else still in the namespace) and removes the
    /// namespace and the run directory.
    fn teardown(&mut self) {
        for p in self.started.drain(..).rev() {
            process::terminate(&p, Duration::from_secs(3));
        }
        if let Some(inode) = self.ns.inode() {
            for pid in process::pids_in_netns(inode) {
                process::signal_and_wait(pid, Duration::from_secs(3));
            }
        }
        if self.ns.exists() {
            if let Err(e) = self.ns.delete() {
                eprintln!("cleanup: {e}");
            }
        }
        let _ = std::fs::remove_dir_all(self.ovs.dir());
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// One flow as `ovs-ofctl` writes or reads it, with the match fields as a set (OVS reorders them).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Flow {
    cookie: String,
    priority: String,
    matches: BTreeSet<String>,
    actions: String,
}

impl Flow {
    /// Parses a dump line (` cookie=0x1, priority=0 actions=NORMAL`) or an add-flow line
    /// (`cookie=0x1,priority=0,actions=NORMAL`).
    fn parse(line: &str) -> Flow {
        // ovs-ofctl quotes port names with characters such as `-`.
        let line = line.trim().replace('"', "");
        let (head, actions) = line
            .split_once(" actions=")
            .or_else(|| line.split_once(",actions="))
            .unwrap_or_else(|| panic!("no actions in `{line}`"));
        let mut flow = Flow {
            cookie: "0x0".into(),
            priority: "32768".into(),
            matches: BTreeSet::new(),
            actions: actions.to_owned(),
        };
        for tok in head.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            match tok.split_once('=') {
                Some(("cookie", v)) => flow.cookie = v.to_owned(),
                Some(("priority", v)) => flow.priority = v.to_owned(),
                Some(("table" | "duration" | "n_packets" | "n_bytes" | "idle_age", _)) => {}
                _ => {
                    flow.matches.insert(tok.to_owned());
                }
            }
        }
        flow
    }
}

fn expect(sets: &[&FlowSet]) -> BTreeSet<Flow> {
    std::iter::once(Flow::parse(BASE_FLOW))
        .chain(
            sets.iter()
                .flat_map(|s| s.add.iter().map(|r| Flow::parse(&r.to_ofctl()))),
        )
        .collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn svc() -> ServiceAt {
    ServiceAt {
        ip: SVC,
        mac: SVC_MAC,
        port: "srv".into(),
    }
}

/// Applies `set`, prints what it took, and returns the error if any.
fn apply(rt: &tokio::runtime::Runtime, p: &OvsProgrammer, set: &FlowSet) -> Result<(), FlowError> {
    let r = rt.block_on(p.apply(set))?;
    eprintln!(
        "apply {:<16} {} flow mods, took {:?}",
        set.label, r.flow_mods, r.took
    );
    assert_eq!(r.flow_mods, set.delete.len() + set.add.len());
    Ok(())
}

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn block_on<F: Future>(rt: &tokio::runtime::Runtime, f: F) -> F::Output {
    rt.block_on(f)
}

#[test]
#[ignore = "privileged: needs root; run with --include-ignored as root"]
fn the_smos_flows_read_back_as_the_rules_it_installed() {
    let _serial = serial();
    let lab = Lab::up("readback");
    let rt = runtime();
    let p = lab.programmer();
    block_on(&rt, p.connect()).expect("connect");
    let ports = EdgePorts::testbed();
    let sorted = |mut v: Vec<FlowRule>| {
        v.sort_by_key(FlowRule::to_ofctl);
        v
    };
    let read = || block_on(&rt, p.flows()).expect("flow statistics");
    // Nothing of the SMO's yet: the base flow (cookie 0x1) is not returned.
    assert_eq!(read(), Default::default());
    let target = trombone_target(relocation_cookie(1), &ports, SVC, SVC_MAC, UE);
    let source = trombone_source(relocation_cookie(2), &ports, &svc(), UE);
    let new_path = new_path_target(relocation_cookie(3), &ports, &svc());
    for set in [&target, &source, &new_path] {
        apply(&rt, &p, set).expect("install");
    }
    let got = read();
    assert!(got.unreadable.is_empty(), "{got:?}");
    let want: Vec<FlowRule> = [&target, &source, &new_path]
        .iter()
        .flat_map(|s| s.add.clone())
        .collect();
    assert_eq!(
        sorted(got.rules),
        sorted(want),
        "field for field, ports by name"
    );

    // A flow the SMO never installs (a masked match) under an SMO cookie is reported, not hidden.
    lab.ovs
        .add_flows(
            BR,
            &[
                "cookie=0x534d4f5200000009,priority=300,ip,nw_dst=20.0.0.0/16,actions=drop"
                    .to_owned(),
            ],
        )
        .expect("odd flow");
    let got = read();
    assert_eq!(got.unreadable, [0x534d_4f52_0000_0009]);
    assert_eq!(got.rules.len(), 2 + 3 + 2);
}

#[test]
#[ignore = "privileged: needs root; run with --include-ignored as root"]
fn every_phase_installs_exactly_its_flows() {
    let _serial = serial();
    let lab = Lab::up("phases");
    let rt = runtime();
    let p = lab.programmer();
    block_on(&rt, p.connect()).expect("connect");
    let ports = EdgePorts::testbed();
    let c = relocation_cookie(1);
    assert_eq!(lab.flows(), expect(&[]));

    // This edge as the target of relocation 1: trombone, then the direct path.
    let target = trombone_target(c, &ports, SVC, SVC_MAC, UE);
    apply(&rt, &p, &target).expect("trombone-target");
    assert_eq!(lab.flows(), expect(&[&target]));
    let new_path = new_path_target(c, &ports, &svc());
    apply(&rt, &p, &new_path).expect("new-path-target");
    assert_eq!(lab.flows(), expect(&[&new_path]));

    // Then as the source of relocation 2 of the same service.
    let c2 = relocation_cookie(2);
    let source = trombone_source(c2, &ports, &svc(), UE);
    apply(&rt, &p, &source).expect("trombone-source");
    assert_eq!(lab.flows(), expect(&[&new_path, &source]));
    let cleanup = cleanup_source(c2, SVC);
    apply(&rt, &p, &cleanup).expect("cleanup-source");
    assert_eq!(lab.flows(), expect(&[]));

    // Applying a set twice leaves one copy of each flow; an empty set is a no-op.
    apply(&rt, &p, &target).expect("again");
    apply(&rt, &p, &target).expect("and again");
    assert_eq!(lab.flows(), expect(&[&target]));
    let r = block_on(&rt, p.apply(&FlowSet::default())).expect("empty set");
    assert_eq!((r.flow_mods, r.took), (0, Duration::ZERO));
}

#[test]
#[ignore = "privileged: needs root; run with --include-ignored as root"]
fn ovs_ofctl_accepts_every_rendered_rule_and_reads_it_like_the_binary_encoding() {
    let _serial = serial();
    let lab = Lab::up("ofctl");
    let rt = runtime();
    let p = lab.programmer();
    let ports = EdgePorts::testbed();
    let c = relocation_cookie(3);
    let sets = [
        trombone_source(c, &ports, &svc(), UE),
        trombone_target(c, &ports, SVC, SVC_MAC, UE),
        new_path_target(c, &ports, &svc()),
    ];
    for set in &sets {
        for rule in &set.add {
            lab.ovs
                .ofctl("add-flow", BR, &[&rule.to_ofctl()])
                .unwrap_or_else(|e| panic!("ovs-ofctl refused `{}`: {e}", rule.to_ofctl()));
        }
    }
    let by_ofctl = lab.flows();
    assert_eq!(by_ofctl, expect(&sets.iter().collect::<Vec<_>>()));
    for cookie in [c, service_cookie(SVC)] {
        lab.ovs
            .del_flows(BR, &CookieDelete { cookie }.to_ofctl())
            .expect("del-flows");
    }
    assert_eq!(lab.flows(), expect(&[]));
    for set in &sets {
        let adds_only = FlowSet {
            delete: Vec::new(),
            ..set.clone()
        };
        apply(&rt, &p, &adds_only).expect("apply");
    }
    assert_eq!(lab.flows(), by_ofctl);
}

#[test]
#[ignore = "privileged: needs root; run with --include-ignored as root"]
fn unknown_port_fails_the_whole_set_before_anything_changes() {
    let _serial = serial();
    let lab = Lab::up("unknown");
    let rt = runtime();
    let p = lab.programmer();
    let ports = EdgePorts::testbed();
    let c = relocation_cookie(4);
    let target = trombone_target(c, &ports, SVC, SVC_MAC, UE);
    apply(&rt, &p, &target).expect("trombone-target");
    let before = lab.flows();

    let elsewhere = ServiceAt {
        port: "svc-gone".into(),
        ..svc()
    };
    let err = apply(&rt, &p, &new_path_target(c, &ports, &elsewhere)).expect_err("unknown port");
    assert!(
        matches!(err, FlowError::UnknownPort(ref n) if n == "svc-gone"),
        "{err}"
    );
    assert_eq!(
        lab.flows(),
        before,
        "the deletion of the set must not happen"
    );

    // The port appears (a restored service): the next set finds it.
    lab.ovs.add_internal_port(BR, "svc-gone").expect("add port");
    let set = new_path_target(c, &ports, &elsewhere);
    apply(&rt, &p, &set).expect("port known now");
    assert_eq!(lab.flows(), expect(&[&set]));
}

#[test]
#[ignore = "privileged: needs root; run with --include-ignored as root"]
fn a_set_the_switch_refuses_changes_nothing() {
    let _serial = serial();
    let lab = Lab::up("refused");
    let rt = runtime();
    let p = lab.programmer();
    let ports = EdgePorts::testbed();
    let c = relocation_cookie(5);
    let target = trombone_target(c, &ports, SVC, SVC_MAC, UE);
    apply(&rt, &p, &target).expect("trombone-target");
    let before = lab.flows();

    // A valid swap plus one flow OVS refuses when it is added to the bundle: an ARP field
    // without `eth_type=0x0806` breaks OpenFlow's match prerequisites.
    let mut bad = new_path_target(c, &ports, &svc());
    bad.add.push(FlowRule {
        cookie: service_cookie(SVC),
        priority: 150,
        matches: FlowMatch {
            in_port: Some("n6".into()),
            arp_tpa: Some(SVC),
            ..FlowMatch::default()
        },
        actions: vec![FlowAction::Output("srv".into())],
    });
    let err = apply(&rt, &p, &bad).expect_err("refused");
    eprintln!("refused as expected: {err}");
    // OFPET_BAD_MATCH / OFPBMC_BAD_PREREQ.
    assert!(
        matches!(
            err,
            FlowError::Rejected {
                err_type: 4,
                code: 9
            }
        ),
        "{err}"
    );
    assert_eq!(lab.flows(), before, "nothing of the refused set may stay");

    // The connection is still good.
    let good = new_path_target(c, &ports, &svc());
    apply(&rt, &p, &good).expect("valid set after a refused one");
    assert_eq!(lab.flows(), expect(&[&good]));
}

#[test]
#[ignore = "privileged: needs root; run with --include-ignored as root"]
fn a_set_that_fails_at_commit_is_reverted_as_a_whole() {
    let _serial = serial();
    let lab = Lab::up("commit");
    let rt = runtime();
    let p = lab.programmer();
    // Table 0 holds at most 4 flows and refuses more: the base flow plus the target's trombone fit.
    lab.ovs
        .vsctl([
            "--",
            "--id=@t",
            "create",
            "Flow_Table",
            "flow_limit=4",
            "overflow_policy=refuse",
            "--",
            "set",
            "Bridge",
            BR,
            "flow_tables:0=@t",
        ])
        .expect("limit table 0");
    let ports = EdgePorts::testbed();
    let target = trombone_target(relocation_cookie(6), &ports, SVC, SVC_MAC, UE);
    apply(&rt, &p, &target).expect("trombone-target fits");
    let before = lab.flows();
    assert_eq!(before.len(), 4);

    // Two more flows: the first would fit only if the table were bigger; all-or-nothing.
    let source = trombone_source(relocation_cookie(7), &ports, &svc(), UE);
    let err = apply(&rt, &p, &source).expect_err("table full");
    eprintln!("refused at commit as expected: {err}");
    // OFPET_FLOW_MOD_FAILED / OFPFMFC_TABLE_FULL.
    assert!(
        matches!(
            err,
            FlowError::Rejected {
                err_type: 5,
                code: 1
            }
        ),
        "{err}"
    );
    assert_eq!(lab.flows(), before);
}

#[test]
#[ignore = "privileged: needs root; run with --include-ignored as root"]
fn follows_a_service_port_that_comes_back_with_another_number() {
    let _serial = serial();
    let lab = Lab::up("renumber");
    let rt = runtime();
    let p = lab.programmer();
    block_on(&rt, p.connect()).expect("connect");
    let srv_no = block_on(&rt, p.ports()).expect("ports")["srv"];

    // The service moves away and comes back: its port is re-created with another number.
    lab.ovs.vsctl(["del-port", BR, "srv"]).expect("del-port");
    lab.ovs
        .vsctl([
            "add-port",
            BR,
            "srv",
            "--",
            "set",
            "interface",
            "srv",
            "type=internal",
            "ofport_request=50",
        ])
        .expect("add-port");
    // The PORT_STATUS messages are on their way by now; give the loaded machine a moment.
    std::thread::sleep(Duration::from_millis(200));
    let set = new_path_target(relocation_cookie(8), &EdgePorts::testbed(), &svc());
    apply(&rt, &p, &set).expect("apply");
    let numbers = block_on(&rt, p.ports()).expect("ports");
    assert_eq!(numbers["srv"], 50, "was {srv_no}");
    assert_eq!(lab.flows(), expect(&[&set]));
    let raw = lab
        .ovs
        .ofctl("dump-flows", BR, &["--no-names", "--no-stats"])
        .expect("dump");
    assert!(raw.contains("actions=output:50"), "{raw}");
}

#[test]
#[ignore = "privileged: needs root; run with --include-ignored as root"]
fn reconnects_after_the_connection_drops_and_after_ovs_restarts() {
    let _serial = serial();
    let mut lab = Lab::up("restart");
    let rt = runtime();
    let p = lab.programmer();
    let ports = EdgePorts::testbed();
    let c = relocation_cookie(9);
    let target = trombone_target(c, &ports, SVC, SVC_MAC, UE);
    apply(&rt, &p, &target).expect("first");

    block_on(&rt, p.disconnect());
    let new_path = new_path_target(c, &ports, &svc());
    apply(&rt, &p, &new_path).expect("after disconnect");
    assert_eq!(lab.flows(), expect(&[&new_path]));

    // Restart both daemons: the bridge and its ports come back from the database, the flows do not.
    for d in lab.started.drain(..).rev() {
        assert!(process::terminate(&d, Duration::from_secs(3)), "{d:?}");
    }
    let _ = std::fs::remove_file(lab.mgmt());
    lab.start_ovs();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !lab.mgmt().exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "bridge socket did not come back"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    lab.ovs
        .add_flows(BR, &[BASE_FLOW.to_owned()])
        .expect("base flow");
    let source = trombone_source(c, &ports, &svc(), UE);
    apply(&rt, &p, &source).expect("the stale connection is replaced once");
    assert_eq!(lab.flows(), expect(&[&source]));
}

#[test]
#[ignore = "privileged: needs root; run with --include-ignored as root"]
fn an_absent_switch_is_a_connect_error() {
    require_root();
    let rt = runtime();
    let p = OvsProgrammer::new(
        std::env::temp_dir().join("tsr-absent/none.mgmt"),
        Duration::from_secs(1),
    );
    let err = block_on(&rt, p.connect()).expect_err("no socket");
    assert!(matches!(err, FlowError::Connect { .. }), "{err}");
}

/// A process the test started (by PID): killed and reaped when dropped.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The namespace's neighbour entry for `ip` on `dev`, as `ip neigh show` prints it (empty if none).
fn neighbour(lab: &Lab, dev: &str, ip: Ipv4Addr) -> String {
    lab.ns
        .tool("ip")
        .args(["neigh", "show", &ip.to_string(), "dev", dev])
        .stdout()
        .expect("ip neigh")
        .trim()
        .to_owned()
}

/// Polls `f` every 5 ms for up to `limit`; whether it became true.
fn within(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if f() {
            return true;
        }
        if start.elapsed() >= limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// One UDP datagram from the namespace to `to`: the kernel resolves `to` first (an ARP request,
/// an INCOMPLETE neighbour entry) and queues the datagram on the entry.
fn send_udp(lab: &Lab, to: Ipv4Addr) {
    lab.ns
        .run_in(move || {
            let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
            s.send_to(b"trombone", (to, 9))
        })
        .expect("enter namespace")
        .expect("send");
}

#[test]
#[ignore = "privileged: needs root; run with --include-ignored as root"]
fn the_target_trombone_completes_the_sites_pending_arp_entry_at_once() {
    let _serial = serial();
    let lab = Lab::up("announce");
    let rt = runtime();
    let p = lab.programmer();
    assert!(
        netkit::cmd::on_path("tcpdump"),
        "privileged test: needs tcpdump"
    );
    // The namespace's kernel is the site's router on n6: the anycast gateway's MAC and address.
    // It retries an unanswered ARP request only after 10 s, so whatever completes its entry for
    // the service within the test's 1 s windows is not its own retry.
    link::set_mac(&lab.ns, "n6", &GATEWAY_MAC.to_string()).expect("gateway MAC");
    lab.ns
        .ip(["addr", "add", &format!("{GATEWAY_IP}/16"), "dev", "n6"])
        .expect("gateway address");
    lab.ns
        .sysctl("net.ipv4.neigh.n6.retrans_time_ms", "10000")
        .expect("slow ARP retries");

    // Traffic for the service before any trombone: the router asks, nobody answers.
    send_udp(&lab, SVC);
    assert!(
        within(Duration::from_secs(1), || neighbour(&lab, "n6", SVC)
            .contains("INCOMPLETE")),
        "no pending entry: `{}`",
        neighbour(&lab, "n6", SVC)
    );

    // The trombone's flows alone (the ARP responder included) leave the entry pending: the
    // router does not ask again for 10 s.
    let c = relocation_cookie(10);
    let ports = EdgePorts::testbed();
    let target = trombone_target(c, &ports, SVC, SVC_MAC, UE);
    assert_eq!(target.packets.len(), 1);
    let flows_only = FlowSet {
        packets: Vec::new(),
        ..target.clone()
    };
    apply(&rt, &p, &flows_only).expect("flows only");
    std::thread::sleep(Duration::from_secs(1));
    let pending = neighbour(&lab, "n6", SVC);
    assert!(
        pending.contains("INCOMPLETE"),
        "without the ARP reply: `{pending}`"
    );

    // Watch the backhaul for the queued datagram, which the trombone forwards once the entry
    // is complete.
    let mut dump = Command::new("ip")
        .args(["netns", "exec", lab.ns.name(), "tcpdump"])
        .args([
            "-i",
            "bh",
            "-n",
            "-e",
            "-l",
            "-c",
            "1",
            "--immediate-mode",
            "-Z",
            "root",
        ])
        .args(["udp and dst host", &SVC.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map(ChildGuard)
        .expect("start tcpdump");
    let mut err = BufReader::new(dump.0.stderr.take().expect("stderr"));
    let mut line = String::new();
    while !line.contains("listening on") {
        line.clear();
        let n = err.read_line(&mut line).expect("tcpdump stderr");
        assert!(n > 0, "tcpdump ended before it listened");
    }

    // The whole set: the same flows again and the ARP reply, sent once they are in.
    let t0 = Instant::now();
    apply(&rt, &p, &target).expect("trombone-target");
    let mut entry = String::new();
    assert!(
        within(Duration::from_secs(1), || {
            entry = neighbour(&lab, "n6", SVC);
            entry.contains(&SVC_MAC.to_string()) && entry.contains("REACHABLE")
        }),
        "the ARP reply did not complete the entry: `{entry}`"
    );
    eprintln!(
        "neighbour entry complete {:.1} ms after the set was applied: {entry}",
        t0.elapsed().as_secs_f64() * 1e3
    );
    assert_eq!(lab.flows(), expect(&[&target]));

    // The queued datagram left the router towards the service's MAC and went over the backhaul
    // addressed to the trombone's uplink MAC.
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        if matches!(dump.0.try_wait(), Ok(Some(_))) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = dump.0.kill();
    let _ = dump.0.wait();
    let mut out = String::new();
    if let Some(mut o) = dump.0.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    eprintln!("on the backhaul: {}", out.trim());
    assert!(
        out.contains(&format!("{GATEWAY_MAC} > {TROMBONE_UPLINK_MAC}"))
            && out.contains(&format!("> {SVC}.9:")),
        "tromboned datagram not seen on bh as {GATEWAY_MAC} > {TROMBONE_UPLINK_MAC}: `{out}`"
    );
}

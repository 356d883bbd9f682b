//! The SMO's flow programming: generating each phase's flow set (`smo::routing::rules`) and
//! encoding it as OpenFlow 1.3 (pure), and — as root with Open vSwitch installed — installing
//! sets on a real switch over the SMO's long-lived connection (a private `ovs-vswitchd` in
//! namespace `tsr-bench`, torn down afterwards).
//!
//! Besides criterion's wall-clock figures for a whole `apply`, the install group prints the
//! median and 99th percentile of `FlowReport::took` (first octet sent to the commit reply).

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use benches::{encode_flow_set, service_at, RulePhase, SVC_IP, SVC_MAC, UE};
use criterion::{criterion_group, criterion_main, Criterion};
use netkit::ovs::OvsInstance;
use netkit::process::{self, Started};
use netkit::{link, Netns};
use smo::routing::ovs::OvsProgrammer;
use smo::routing::rules::{
    new_path_target, relocation_cookie, service_cookie, trombone_target, EdgePorts,
};
use smo::routing::{CookieDelete, FlowProgrammer, FlowSet};

const BR: &str = "br-tsr";

/// Each phase's flow set: generated, and generated + encoded as the bytes the SMO's programmer
/// writes (bundle open, flow mods, barrier, commit; packet-outs and a barrier).
fn generate_and_encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("openflow");
    let ports = EdgePorts::testbed();
    let mut out = Vec::with_capacity(1024);
    for phase in RulePhase::ALL {
        group.bench_function(format!("generate {}", phase.label()), |b| {
            b.iter(|| black_box(phase).flow_set(black_box(1), &ports))
        });
        group.bench_function(format!("generate+encode {}", phase.label()), |b| {
            b.iter(|| {
                let set = black_box(phase).flow_set(black_box(1), &ports);
                encode_flow_set(&set, &mut out)
            })
        });
    }
    group.finish();
}

/// A namespace with a private OVS and bridge `br-tsr` with internal ports `bh`, `n6`, `srv`;
/// removed when dropped.
struct Lab {
    ns: Netns,
    ovs: OvsInstance,
    started: Vec<Started>,
}

impl Lab {
    fn up() -> Result<Lab, String> {
        let name = "tsr-bench";
        let mut lab = Lab {
            ns: Netns::new(name),
            ovs: OvsInstance::new(name, std::env::temp_dir().join(name)),
            started: Vec::new(),
        };
        lab.teardown();
        lab.ns.create().map_err(|e| e.to_string())?;
        let mut started = Vec::new();
        let res = lab.ovs.start(|p| started.push(p));
        lab.started = started;
        res.map_err(|e| e.to_string())?;
        lab.ovs.add_bridge(BR).map_err(|e| e.to_string())?;
        for p in ["bh", "n6", "srv"] {
            lab.ovs
                .add_internal_port(BR, p)
                .map_err(|e| e.to_string())?;
            link::set_up(&lab.ns, p).map_err(|e| e.to_string())?;
        }
        lab.ovs
            .add_flows(BR, &["cookie=0x1,priority=0,actions=NORMAL".to_owned()])
            .map_err(|e| e.to_string())?;
        Ok(lab)
    }

    fn mgmt(&self) -> PathBuf {
        self.ovs.dir().join(format!("{BR}.mgmt"))
    }

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
            let _ = self.ns.delete();
        }
        let _ = std::fs::remove_dir_all(self.ovs.dir());
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.teardown();
    }
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[(sorted.len() - 1) * p / 100]
}

fn report(what: &str, mut took: Vec<Duration>) {
    took.sort();
    eprintln!(
        "flow_install/{what}: took (first octet sent → commit reply) median {:?}, p99 {:?}, max {:?} over {} sets",
        percentile(&took, 50),
        percentile(&took, 99),
        took.last().copied().unwrap_or_default(),
        took.len()
    );
}

fn flow_install(c: &mut Criterion) {
    let root = nix::unistd::geteuid().is_root();
    if !root || !netkit::cmd::on_path("ovs-vswitchd") {
        println!("skipped: flow-install bench needs root and Open vSwitch");
        return;
    }
    let lab = match Lab::up() {
        Ok(l) => l,
        Err(e) => panic!("flow-install bench: cannot set up Open vSwitch: {e}"),
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("tokio runtime: {e}"),
    };
    let p = OvsProgrammer::new(lab.mgmt(), Duration::from_secs(3));
    if let Err(e) = rt.block_on(p.connect()) {
        panic!("connect to {}: {e}", lab.mgmt().display());
    }
    let apply = |set: &FlowSet| -> Duration {
        match rt.block_on(p.apply(set)) {
            Ok(r) => r.took,
            Err(e) => panic!("apply {}: {e}", set.label),
        }
    };

    let ports = EdgePorts::testbed();
    let cookie = relocation_cookie(1);
    let install = trombone_target(cookie, &ports, SVC_IP, SVC_MAC, UE);
    let swap = new_path_target(cookie, &ports, &service_at());
    let remove = |cookie: u64| FlowSet {
        label: "reset".into(),
        delete: vec![CookieDelete { cookie }],
        add: Vec::new(),
        packets: Vec::new(),
    };
    let (remove_trombone, remove_path) = (remove(cookie), remove(service_cookie(SVC_IP)));

    let mut group = c.benchmark_group("flow_install");
    group.sample_size(50);
    group.measurement_time(Duration::from_secs(5));

    let mut took = Vec::new();
    group.bench_function("install trombone-target (3 adds)", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let t0 = Instant::now();
                took.push(apply(&install));
                total += t0.elapsed();
                apply(&remove_trombone);
            }
            total
        })
    });
    report("install trombone-target", std::mem::take(&mut took));

    group.bench_function("swap new-path-target (1 delete, 2 adds)", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                apply(&install);
                let t0 = Instant::now();
                took.push(apply(&swap));
                total += t0.elapsed();
                apply(&remove_path);
            }
            total
        })
    });
    report("swap new-path-target", took);
    group.finish();
    drop(p);
    drop(rt);
    drop(lab);
}

criterion_group!(benches, generate_and_encode, flow_install);
criterion_main!(benches);

//! Privileged: live migration of a real TCP service in an LXD container between two edge clouds,
//! each with its own LXD daemon (`svcmod::lxd_daemon`), moved by LXD's live migration in pull
//! mode ([`LxdBackend`]).
//!
//! Run as root: `cargo build -p testbed --bin tbprobe && cargo test -p svcmod --test
//! privileged_lxd -- --ignored --nocapture --test-threads=1` (the probe binary is looked up next
//! to this test's target directory, or in `$TBPROBE`). Without root, LXD, CRIU, btrfs or OVS each
//! test prints why and returns.
//!
//! The world is `common::Fabric` with the prefix `tlxb-<letter>` (two edges with OVS, the fabric,
//! the UE), an LXD daemon in each edge's namespace (directory `/var/tmp/tlxb-<letter>/<edge>`,
//! HTTPS on the edge's backhaul address, trusting each other); the modules run in-process.
//! [`World`]'s drop stops the daemons (which removes their containers, loop devices, mounts and
//! cgroups) before the fabric goes, also when a test fails.

mod common;

use common::{client_report, ms, sh, Fabric, SERVICE_ID, SERVICE_IP, SERVICE_MAC, UE_IP};
use model::smo::{ExecuteRequest, RelocationType, Service};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use svcmod::container::EdgeSite;
use svcmod::lxd_backend::{LxdBackend, LxdConfig};
use svcmod::lxd_daemon::{self, Daemon, DaemonSpec};
use svcmod::{Backend, Fault, MigrationError, MigrationReport, ServiceSpec};

const MODULE_PORT: u16 = 9100;
const LXD_PORT: u16 = 8443;

/// The privileged tests share the machine's two cores: one at a time keeps the timings honest.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Why these tests cannot run here, if they cannot.
fn skip_reason() -> Option<String> {
    if let Some(why) = common::lxd_skip_reason(&[
        "criu",
        "ovsdb-server",
        "ovs-vswitchd",
        "ovs-vsctl",
        "ethtool",
        "ss",
        "nft",
    ]) {
        return Some(why);
    }
    if !Path::new(lxd_daemon::DEFAULT_CRIU).is_file() {
        return Some(format!(
            "{} is missing (scripts/setup)",
            lxd_daemon::DEFAULT_CRIU
        ));
    }
    let probe = std::env::var_os("TBPROBE").map(PathBuf::from).or_else(|| {
        let exe = std::env::current_exe().ok()?;
        Some(exe.parent()?.parent()?.join("tbprobe"))
    });
    match probe {
        Some(p) if p.is_file() => None,
        _ => Some(
            "tbprobe is missing: build it with `cargo build -p testbed --bin tbprobe` (same \
             CARGO_TARGET_DIR) or set TBPROBE"
                .into(),
        ),
    }
}

macro_rules! skip_unless_able {
    () => {
        if let Some(why) = skip_reason() {
            println!("skipped: {why}");
            return;
        }
    };
}

/// The LXD daemons of a world; dropping it stops them (and removes all of theirs).
struct Daemons {
    dirs: Vec<PathBuf>,
    running: Vec<Daemon>,
}

impl Drop for Daemons {
    fn drop(&mut self) {
        for d in &self.running {
            if let Err(e) = lxd_daemon::stop(d) {
                println!("cleanup: stopping the daemon in {}: {e}", d.dir.display());
            }
        }
        for dir in &self.dirs {
            if let Err(e) = lxd_daemon::sweep(dir) {
                println!("cleanup: sweeping {}: {e}", dir.display());
            }
            let _ = std::fs::remove_dir_all(dir);
        }
        if let Some(root) = self.dirs.first().and_then(|d| d.parent()) {
            let _ = std::fs::remove_dir(root);
        }
    }
}

/// Everything one test made; dropping it removes all of it (also when the test fails).
/// Fields drop in order: the receivers stop, the daemons go, then the fabric.
struct World {
    x: Arc<LxdBackend>,
    y: Arc<LxdBackend>,
    stop_receivers: Vec<tokio::sync::oneshot::Sender<()>>,
    _daemons: Daemons,
    fabric: Fabric,
}

impl Drop for World {
    fn drop(&mut self) {
        for tx in self.stop_receivers.drain(..) {
            let _ = tx.send(());
        }
    }
}

impl World {
    fn ns(&self, name: &str) -> String {
        self.fabric.ns(name)
    }

    async fn up(prefix: &str) -> World {
        Self::up_with(prefix, None, true).await
    }

    /// The world with X's move limit `x_move_limit` (default: the backend's), and Y's migration
    /// receiver only when `y_receives` (else the test plays Y's module itself).
    async fn up_with(prefix: &str, x_move_limit: Option<Duration>, y_receives: bool) -> World {
        let fabric = Fabric::up_prefixed(prefix);
        let root = PathBuf::from(format!("/var/tmp/{prefix}"));
        let mut daemons = Daemons {
            dirs: vec![root.join("x"), root.join("y")],
            running: Vec::new(),
        };
        for dir in &daemons.dirs {
            let _ = lxd_daemon::sweep(dir);
        }
        let (x_site, y_site) = (fabric.x.clone(), fabric.y.clone());
        for (site, addr, dir) in [
            (&x_site, common::X_BACKHAUL, daemons.dirs[0].clone()),
            (&y_site, common::Y_BACKHAUL, daemons.dirs[1].clone()),
        ] {
            let spec = DaemonSpec::new(dir, site.netns.name(), SocketAddrV4::new(addr, LXD_PORT));
            let began = Instant::now();
            let d = tokio::task::spawn_blocking(move || lxd_daemon::start(&spec))
                .await
                .expect("join")
                .unwrap_or_else(|e| panic!("LXD daemon at edge {}: {e}", site.edge));
            println!(
                "LXD daemon at edge {} ready in {:.0} ms",
                site.edge,
                began.elapsed().as_secs_f64() * 1000.0
            );
            daemons.running.push(d);
        }
        lxd_daemon::trust_each_other(&daemons.running[0], &daemons.running[1])
            .expect("the daemons trust each other");
        let module = |site: EdgeSite, d: &Daemon| {
            let mut cfg = LxdConfig::for_daemon(
                fabric.prefix.clone(),
                site,
                d.socket.clone(),
                SocketAddr::V4(d.https_addr),
                d.dir.join("lxd/server.crt"),
            );
            // The moves' directories: under the fabric's root, removed with it.
            cfg.work_dir = fabric.root.join(format!("work-{}", cfg.site.edge));
            cfg.background_cleanup = true;
            Arc::new(LxdBackend::new(cfg))
        };
        let x = {
            let mut m = module(x_site.clone(), &daemons.running[0]);
            if let Some(limit) = x_move_limit {
                let mut cfg = m.config().clone();
                cfg.timeouts.restore = limit;
                m = Arc::new(LxdBackend::new(cfg));
            }
            m
        };
        let y = module(y_site.clone(), &daemons.running[1]);
        let mut world = World {
            x,
            y,
            stop_receivers: Vec::new(),
            _daemons: daemons,
            fabric,
        };
        for (backend, site, addr) in [
            (Arc::clone(&world.x), x_site, common::X_BACKHAUL),
            (Arc::clone(&world.y), y_site, common::Y_BACKHAUL),
        ] {
            if site.edge == "y" && !y_receives {
                continue;
            }
            let listener =
                svcmod::transfer::listen_in(&site.netns, SocketAddr::from((addr, MODULE_PORT)))
                    .await
                    .expect("module listener");
            let (tx, rx) = tokio::sync::oneshot::channel();
            tokio::spawn(svcmod::run_receiver(backend, listener, async move {
                let _ = rx.await;
            }));
            world.stop_receivers.push(tx);
        }
        world
    }

    /// Starts the probe service in a container at edge X and waits until it listens.
    async fn start_service(&self) -> Service {
        let began = Instant::now();
        let service = self
            .x
            .create(ServiceSpec {
                service_id: SERVICE_ID.into(),
                ipv4_addr: SERVICE_IP,
                mac_addr: SERVICE_MAC.into(),
                command: vec![
                    common::tbprobe().display().to_string(),
                    "serve".into(),
                    "--tcp=0.0.0.0:5000".into(),
                ],
                resource_requirements: Default::default(),
            })
            .await
            .expect("create service at edge x");
        println!(
            "created in {:.0} ms",
            began.elapsed().as_secs_f64() * 1000.0
        );
        assert_eq!(service.ovs_port, "s-p50");
        assert_eq!(service.relocation_type, RelocationType::Lxd);
        let pid = self
            .x
            .container(SERVICE_ID)
            .and_then(|i| i.init_pid())
            .expect("runs");
        let start = Instant::now();
        loop {
            let out = sh(Command::new("nsenter")
                .arg(format!("--net=/proc/{pid}/ns/net"))
                .args(["--", "ss", "-tlnH"]));
            if out.contains(":5000") {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "service never listened"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        service
    }

    fn request_to(&self, relocation_id: &str, service: &Service, to: Ipv4Addr) -> ExecuteRequest {
        ExecuteRequest {
            relocation_id: relocation_id.into(),
            service: service.clone(),
            target_address: format!("{to}:{MODULE_PORT}").parse().expect("addr"),
        }
    }

    fn edge(&self, e: char) -> &Arc<LxdBackend> {
        match e {
            'x' => &self.x,
            _ => &self.y,
        }
    }

    /// Forgets learned MACs on edge `e`'s bridge (see privileged_lxc: the harness's bridges
    /// learn, the testbed's forward by the SMO's flows).
    fn flush_fdb(&self, e: char) {
        let ctl = self
            .edge(e)
            .config()
            .site
            .ovs
            .dir()
            .join("ovs-vswitchd.ctl");
        sh(Command::new("ovs-appctl")
            .arg("-t")
            .arg(&ctl)
            .args(["fdb/flush", &format!("br-{e}")]));
    }

    /// Checks that the service runs in an LXD container at edge `at` (same IP and MAC read
    /// inside, its port up on that edge's bridge, offload off, the gateway pinned) and that
    /// nothing of it is left at edge `left`; the init's PID.
    async fn assert_hosted_at(&self, at: char, left: char) -> i32 {
        let here = self.edge(at);
        let there = self.edge(left);
        let inst = here.container(SERVICE_ID).expect("hosted");
        let pid = inst
            .init_pid()
            .expect("init runs in the container's cgroup");
        let cmdline = netkit::process::cmdline(pid).unwrap_or_default();
        assert!(cmdline.contains("tbprobe serve"), "{cmdline}");
        let inside = |args: &[&str]| {
            sh(Command::new("nsenter")
                .arg(format!("--net=/proc/{pid}/ns/net"))
                .arg("--")
                .args(args))
        };
        let text = inside(&["ip", "-j", "addr", "show", "dev", "eth0"]);
        let eth0 = netkit::link::parse_ip_addr_json(&text);
        assert_eq!(eth0.len(), 1, "{text}");
        assert_eq!(eth0[0].mac.as_deref(), Some(SERVICE_MAC));
        assert_eq!(eth0[0].addrs, ["20.0.0.50/16"]);
        assert!(inside(&["ethtool", "-k", "eth0"]).contains("tx-checksumming: off"));
        assert!(inside(&["ip", "neigh", "show", "20.0.0.1"]).contains("PERMANENT"));
        let edge_ns = self.ns(&format!("edge-{at}"));
        assert!(common::iface(&edge_ns, "s-p50").up, "port up at {at}");
        assert!(common::tx_checksum_is_off(&edge_ns, "s-p50"));
        let ports = here
            .config()
            .site
            .ovs
            .ports(&format!("br-{at}"))
            .expect("ports");
        assert!(ports.iter().any(|p| p == "s-p50"), "{ports:?}");
        // Nothing left at the other edge: no instance, veth or OVS port.
        assert!(there.container(SERVICE_ID).is_none());
        there.settle().await;
        let e = there
            .runtime()
            .client()
            .get(&format!("/1.0/instances/{}", inst.name()))
            .await
            .expect_err("no instance left");
        assert_eq!(e.code(), Some(404), "{e}");
        let other_ns = netkit::Netns::new(self.ns(&format!("edge-{left}")));
        let links = netkit::link::list_ifaces(&other_ns).expect("links");
        assert!(
            !links.iter().any(|l| l.name == "s-p50"),
            "veth left at {left}"
        );
        let ports = there
            .config()
            .site
            .ovs
            .ports(&format!("br-{left}"))
            .expect("ports");
        assert!(
            !ports.iter().any(|p| p == "s-p50"),
            "port left at {left}: {ports:?}"
        );
        pid
    }
}

fn print_report(label: &str, r: &MigrationReport) {
    println!(
        "{label}: prepare {:.1} ms, LXD move {:.1} ms, attach {:.1} ms, frozen ≤ {:.1} ms, \
         total {:.1} ms",
        ms(r.prepare_us),
        ms(r.restore_us),
        ms(r.resume_us),
        ms(r.frozen_us),
        ms(r.total_us),
    );
    for s in &r.steps {
        println!(
            "  step {:<28} at {:>9} µs took {:>9} µs",
            s.step, s.at_us, s.took_us
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: needs root, LXD, CRIU, btrfs and OVS; run by scripts/test"]
async fn an_lxd_container_moves_there_and_back_with_its_tcp_stream() {
    skip_unless_able!();
    let _serial = SERIAL.lock().await;
    let w = World::up("tlxb-a").await;
    let service = w.start_service().await;
    let first_pid = w.assert_hosted_at('x', 'y').await;
    let client = w.fabric.start_client(12.0);
    tokio::time::sleep(Duration::from_millis(1500)).await;

    assert_eq!(
        w.x.serving(UE_IP)
            .await
            .expect("serving")
            .map(|s| s.service_id),
        Some(SERVICE_ID.to_owned()),
        "the container's live socket names the UE"
    );

    w.flush_fdb('y');
    let there =
        w.x.migrate_out(&w.request_to("rel-1", &service, common::Y_BACKHAUL))
            .await
            .expect("x → y");
    print_report("x → y", &there);
    assert!(there.restore_us > 0 && there.frozen_us <= there.total_us);
    let at_y = w.assert_hosted_at('y', 'x').await;
    assert!(
        !netkit::process::is_alive(first_pid),
        "the source's init is gone"
    );
    assert_eq!(
        w.y.serving(UE_IP)
            .await
            .expect("serving")
            .map(|s| s.ipv4_addr),
        Some(SERVICE_IP)
    );
    assert!(w.x.services().await.expect("list").is_empty());

    tokio::time::sleep(Duration::from_millis(1500)).await;
    w.flush_fdb('x');
    let back =
        w.y.migrate_out(&w.request_to("rel-2", &service, common::X_BACKHAUL))
            .await
            .expect("y → x");
    print_report("y → x", &back);
    w.assert_hosted_at('x', 'y').await;
    assert!(!netkit::process::is_alive(at_y));

    let stream = client_report(client).await;
    println!(
        "client: {} records, {} bytes, largest gap {:.1} ms (ended at {:.0} ms), corrupt {}, \
         disconnected {:?}",
        stream.records,
        stream.bytes,
        stream.max_gap_ms,
        stream.max_gap_end_ms,
        stream.corrupt_records,
        stream.disconnected
    );
    assert!(stream.intact, "{stream:?}");
    assert_eq!(stream.corrupt_records, 0);
    assert!(stream.disconnected.is_none());
    assert!(stream.max_gap_ms < 5000.0, "{stream:?}");

    w.x.remove(SERVICE_ID).await.expect("remove at x");
    let links = netkit::link::list_ifaces(&netkit::Netns::new(w.ns("edge-x"))).expect("links");
    assert!(!links.iter().any(|l| l.name == "s-p50"));
    let ports = w.x.config().site.ovs.ports("br-x").expect("ports");
    assert!(!ports.iter().any(|p| p == "s-p50"), "{ports:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: needs root, LXD, CRIU, btrfs and OVS; run by scripts/test"]
async fn a_failed_restore_at_the_target_keeps_the_service_serving_at_the_source() {
    skip_unless_able!();
    let _serial = SERIAL.lock().await;
    let w = World::up("tlxb-b").await;
    let service = w.start_service().await;
    w.assert_hosted_at('x', 'y').await;
    let client = w.fabric.start_client(8.0);
    tokio::time::sleep(Duration::from_millis(1500)).await;

    w.y.arm_fault(Fault::CorruptImages).expect("armed");
    let began = Instant::now();
    let e =
        w.x.migrate_out(&w.request_to("rel-f", &service, common::Y_BACKHAUL))
            .await
            .expect_err("the target's restore fails");
    println!(
        "failed move answered after {:.0} ms: {e}",
        began.elapsed().as_secs_f64() * 1000.0
    );
    assert!(e.service_at_source(), "{e:?}");
    // The fault hits LXD's restore, after the source's dump: the source had to be released.
    let MigrationError::RolledBack { report, .. } = &e else {
        panic!("expected a rollback after the dump: {e:?}");
    };
    print_report("x → y (rolled back)", report);
    w.assert_hosted_at('x', 'y').await;
    assert_eq!(
        w.x.serving(UE_IP)
            .await
            .expect("serving")
            .map(|s| s.service_id),
        Some(SERVICE_ID.to_owned())
    );

    let stream = client_report(client).await;
    println!(
        "client: {} records, largest gap {:.1} ms (ended at {:.0} ms), corrupt {}, \
         disconnected {:?}",
        stream.records,
        stream.max_gap_ms,
        stream.max_gap_end_ms,
        stream.corrupt_records,
        stream.disconnected
    );
    assert!(stream.intact, "{stream:?}");
    assert!(stream.disconnected.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: needs root, LXD, CRIU, btrfs and OVS; run by scripts/test"]
async fn a_target_that_falls_silent_after_a_failed_pull_does_not_leave_the_source_frozen() {
    skip_unless_able!();
    let _serial = SERIAL.lock().await;
    let w = World::up_with("tlxb-c", Some(Duration::from_secs(3)), false).await;
    let service = w.start_service().await;
    w.assert_hosted_at('x', 'y').await;

    // Y's "module": takes the service, lets its daemon pull it into a failing restore (the
    // port name is taken), then says nothing more: the source's dump waits in post-dump.
    let listener = svcmod::transfer::listen_in(
        &w.fabric.y.netns,
        SocketAddr::from((common::Y_BACKHAUL, MODULE_PORT)),
    )
    .await
    .expect("listener");
    let (y_lxd, y_ns) = (w.y.runtime().client().clone(), w.fabric.y.netns.clone());
    let silent = tokio::spawn(async move {
        use svcmod::transfer::{Conn, Message};
        let (stream, _) = listener.accept().await.expect("accept");
        let mut conn = Conn::new(stream);
        let Ok(Message::Prepare { offer, .. }) = conn.recv().await else {
            panic!("expected a prepare");
        };
        let mv: svcmod::lxd_backend::LxdMove =
            serde_json::from_value(offer).expect("an LXD move in the offer");
        conn.send(&Message::Prepared { took_us: 1 })
            .await
            .expect("prepared");
        assert!(matches!(conn.recv().await, Ok(Message::Restore)));
        y_ns.ip([
            "link", "add", "s-p50", "type", "veth", "peer", "name", "f-p50",
        ])
        .expect("take the port name");
        let op = y_lxd
            .post("/1.0/instances", &svcmod::lxd_backend::pull_body(&mv))
            .await
            .expect("pull")
            .operation()
            .expect("operation");
        let pulled = y_lxd.wait(&op.id, Duration::from_secs(20)).await;
        println!(
            "silent target: pull ended {:?}",
            pulled.map(|_| ()).map_err(|e| e.to_string())
        );
        let _ = y_ns.ip(["link", "del", "s-p50"]);
        // Silence, with the connection open.
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(conn);
    });

    let client = w.fabric.start_client(14.0);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let began = Instant::now();
    let e =
        w.x.migrate_out(&w.request_to("rel-s", &service, common::Y_BACKHAUL))
            .await
            .expect_err("the target falls silent");
    println!(
        "silent target: answered after {:.0} ms: {e}",
        began.elapsed().as_secs_f64() * 1000.0
    );
    silent.abort();
    assert!(e.service_at_source(), "{e:?}");
    let MigrationError::RolledBack { report, .. } = &e else {
        panic!("expected a rollback after the dump: {e:?}");
    };
    print_report("x → silent y (rolled back)", report);
    w.assert_hosted_at('x', 'y').await;
    let stream = client_report(client).await;
    println!(
        "client: {} records, largest gap {:.1} ms (ended at {:.0} ms), corrupt {}, \
         disconnected {:?}",
        stream.records,
        stream.max_gap_ms,
        stream.max_gap_end_ms,
        stream.corrupt_records,
        stream.disconnected
    );
    assert!(stream.intact, "{stream:?}");
    assert!(stream.disconnected.is_none());
}

//! Privileged: two `svcmod` daemon processes, one per edge namespace (started with
//! `ip netns exec`, as `testbed up` does), move a live TCP service when told to over their
//! HTTP callbacks.
//!
//! Run as root: `cargo build -p svcmod -p testbed --bins && cargo test -p svcmod --test
//! privileged_daemon -- --ignored --nocapture`. Without root the test fails; it never passes
//! silently.
//!
//! The world is `common::Fabric` ('d'). A fake SMO listens on edge X's backhaul address
//! (10.0.1.1:8090, reachable from both edges); both daemons register there. The test calls the
//! daemons' callbacks from threads inside the edge namespaces (`Netns::run_in`).

mod common;

use common::daemon::{get_in, post_in, served_service, DaemonProcess};
use common::fake_smo::{Behaviour, FakeSmo};
use common::{
    client_report, ms, require_root, tbprobe, Fabric, SERVICE_ID, SERVICE_IP, SERVICE_MAC, UE_IP,
    X_BACKHAUL, Y_BACKHAUL,
};
use model::smo::{ExecuteReport, ExecuteRequest, Service};
use netkit::Netns;
use sbi::ClientError;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::time::{Duration, Instant};
use svcmod::container::EdgeSite;
use svcmod::{ModuleConfig, ServiceSpec, Strategy};

const TOKEN: &str = "tok-privileged-daemon";
const SMO_PORT: u16 = 8090;
const API_PORT: u16 = 9100;
const MIGRATION_PORT: u16 = 9200;

fn module_config(
    fabric: &Fabric,
    site: &EdgeSite,
    addr: Ipv4Addr,
    strategy: Strategy,
    services: Vec<ServiceSpec>,
) -> ModuleConfig {
    ModuleConfig {
        name: format!("svcmod-{}", site.edge),
        smo_url: format!("http://{X_BACKHAUL}:{SMO_PORT}"),
        token: Some(TOKEN.into()),
        api_addr: SocketAddrV4::new(addr, API_PORT),
        migration_addr: SocketAddrV4::new(addr, MIGRATION_PORT),
        prefix: fabric.prefix.clone(),
        site: site.clone(),
        backend: svcmod::daemon::ModuleBackend::Criu,
        lxd: None,
        work_dir: Some(fabric.root.join(format!("work-{}", site.edge))),
        strategy,
        services,
    }
}

/// The fake SMO on edge X's backhaul address, where both daemons register.
async fn fake_smo(fabric: &Fabric) -> FakeSmo {
    let listener =
        svcmod::transfer::listen_in(&fabric.x.netns, SocketAddr::from((X_BACKHAUL, SMO_PORT)))
            .await
            .expect("fake SMO listener in edge x");
    FakeSmo::start(listener, Some(TOKEN.into()), Behaviour::default())
}

/// The probe service (`tbprobe serve`) X starts.
fn probe() -> ServiceSpec {
    ServiceSpec {
        service_id: SERVICE_ID.into(),
        ipv4_addr: SERVICE_IP,
        mac_addr: SERVICE_MAC.into(),
        command: vec![
            tbprobe().display().to_string(),
            "serve".into(),
            "--tcp=0.0.0.0:5000".into(),
        ],
        resource_requirements: Default::default(),
    }
}

fn status_of<T: std::fmt::Debug>(r: Result<T, ClientError>) -> (u16, Option<String>) {
    match r {
        Err(ClientError::Status {
            status, problem, ..
        }) => (status, problem.and_then(|p| p.cause)),
        other => panic!("expected an error status, got {other:?}"),
    }
}

fn print_execute(label: &str, r: &ExecuteReport, wall: Duration) {
    println!(
        "{label}: took {:.1} ms (Execute answered after {:.1} ms), moved {} B",
        ms(r.took_us),
        wall.as_secs_f64() * 1000.0,
        r.bytes_moved.unwrap_or(0)
    );
    for s in &r.steps {
        println!(
            "  step {:<26} at {:>9} µs took {:>9} µs",
            s.step, s.at_us, s.took_us
        );
    }
}

fn ids(list: &[Service]) -> Vec<&str> {
    list.iter().map(|s| s.service_id.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: needs root, OVS and CRIU; run by scripts/test"]
async fn two_daemons_move_a_live_stream_when_told_to_execute() {
    require_root();
    let fabric = Fabric::up('d');
    let smo = fake_smo(&fabric).await;
    let probe = probe();
    // X moves by stop-and-copy, Y (the way back) by lazy pages.
    let x_cfg = module_config(
        &fabric,
        &fabric.x,
        X_BACKHAUL,
        Strategy::StopAndCopy,
        vec![probe],
    );
    let y_cfg = module_config(&fabric, &fabric.y, Y_BACKHAUL, Strategy::LazyPages, vec![]);
    let began = Instant::now();
    let mut x = DaemonProcess::spawn(&fabric.ns("edge-x"), &x_cfg, &fabric.root);
    let mut y = DaemonProcess::spawn(&fabric.ns("edge-y"), &y_cfg, &fabric.root);
    x.wait_ready(Duration::from_secs(20)).await;
    y.wait_ready(Duration::from_secs(20)).await;
    println!(
        "both daemons ready after {:.0} ms",
        began.elapsed().as_secs_f64() * 1000.0
    );
    assert!(
        x.log_text().contains("left the private mount namespace"),
        "{}",
        x.log_text()
    );

    // Both registered, each with its own migration address.
    let mut notif: Vec<String> = smo.seen(|s| {
        s.registrations
            .iter()
            .map(|r| r["notifAddress"].as_str().unwrap_or_default().to_owned())
            .collect()
    });
    notif.sort();
    assert_eq!(notif, ["10.0.1.1:9200", "10.0.1.2:9200"]);

    // The service X made is visible from the host (not only in X's mount namespace).
    let svc_x = fabric.ns("svc-p50-x");
    assert!(Netns::new(&svc_x).inode().is_some(), "{svc_x} is enterable");
    fabric
        .wait_listening(&svc_x, 5000, Duration::from_secs(5))
        .await;

    let x_api = format!("http://{X_BACKHAUL}:{API_PORT}/svcmod/v1");
    let y_api = format!("http://{Y_BACKHAUL}:{API_PORT}/svcmod/v1");
    let (x_ns, y_ns) = (fabric.x.netns.clone(), fabric.y.netns.clone());

    // X → Y under a live stream.
    let client = fabric.start_client(7.0);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let at_x: Vec<Service> = get_in(&x_ns, TOKEN, format!("{x_api}/services"))
        .await
        .expect("services at x");
    assert_eq!(ids(&at_x), [SERVICE_ID]);
    assert_eq!(at_x[0].ue_ipv4_addrs, [UE_IP], "serving the UE");
    let served: Service = get_in(
        &x_ns,
        TOKEN,
        format!("{x_api}/served-service?ueIpv4Addr={UE_IP}"),
    )
    .await
    .expect("served at x");
    let at_y: Vec<Service> = get_in(&y_ns, TOKEN, format!("{y_api}/services"))
        .await
        .expect("services at y");
    assert!(at_y.is_empty());

    let req = ExecuteRequest {
        relocation_id: "rel-daemon-1".into(),
        service: served.clone(),
        target_address: format!("{Y_BACKHAUL}:{MIGRATION_PORT}")
            .parse()
            .expect("addr"),
    };
    let t0 = Instant::now();
    let there: ExecuteReport = post_in(&x_ns, TOKEN, format!("{x_api}/execute"), req.clone())
        .await
        .expect("execute at x");
    print_execute("x → y stop-and-copy", &there, t0.elapsed());
    assert!(there.bytes_moved.unwrap_or(0) > 0);
    let steps: Vec<&str> = there.steps.iter().map(|s| s.step.as_str()).collect();
    for want in [
        "prepare target",
        "dump",
        "transfer images",
        "restore at target",
    ] {
        assert!(steps.contains(&want), "{steps:?}");
    }

    // The tables: gone at X, hosted (and serving the UE) at Y.
    let at_x: Vec<Service> = get_in(&x_ns, TOKEN, format!("{x_api}/services"))
        .await
        .expect("services at x");
    assert!(at_x.is_empty(), "{at_x:?}");
    let at_y: Vec<Service> = get_in(&y_ns, TOKEN, format!("{y_api}/services"))
        .await
        .expect("services at y");
    assert_eq!(ids(&at_y), [SERVICE_ID]);
    let served_y: Service = get_in(
        &y_ns,
        TOKEN,
        format!("{y_api}/served-service?ueIpv4Addr={UE_IP}"),
    )
    .await
    .expect("served at y");
    assert_eq!(served_y.ipv4_addr, SERVICE_IP);
    assert_eq!(served_y.mac_addr, SERVICE_MAC);
    // The source container goes in the background, right after Execute answered.
    let removing = Instant::now();
    while Netns::new(&svc_x).exists() && removing.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "source namespace removed {:.1} ms after Execute answered",
        removing.elapsed().as_secs_f64() * 1e3
    );
    assert!(!Netns::new(&svc_x).exists(), "source namespace removed");
    assert!(Netns::new(fabric.ns("svc-p50-y")).inode().is_some());

    // The real daemons' error answers.
    let again = post_in::<_, ExecuteReport>(&x_ns, TOKEN, format!("{x_api}/execute"), req).await;
    assert_eq!(
        status_of(again),
        (409, Some("SERVICE_NOT_HOSTED".into())),
        "not at x any more"
    );
    let to_itself = ExecuteRequest {
        relocation_id: "rel-daemon-self".into(),
        service: served_y.clone(),
        target_address: format!("{Y_BACKHAUL}:{MIGRATION_PORT}")
            .parse()
            .expect("addr"),
    };
    let own =
        post_in::<_, ExecuteReport>(&y_ns, TOKEN, format!("{y_api}/execute"), to_itself).await;
    assert_eq!(status_of(own), (422, Some("INVALID_TARGET".into())));

    let stream = client_report(client).await;
    println!(
        "client over x → y: {} records, {} bytes, largest gap {:.1} ms (ended at {:.0} ms), corrupt {}, disconnected {:?}",
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
    assert!(stream.records > 500, "{stream:?}");
    assert!(stream.max_gap_ms < 1000.0, "{stream:?}");

    // Y → X by lazy pages, under a new stream: the receive side of X keeps its table too.
    let client = fabric.start_client(5.0);
    let client_started = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let back = ExecuteRequest {
        relocation_id: "rel-daemon-2".into(),
        service: served_y,
        target_address: format!("{X_BACKHAUL}:{MIGRATION_PORT}")
            .parse()
            .expect("addr"),
    };
    let t0 = Instant::now();
    let execute_at_ms = client_started.elapsed().as_secs_f64() * 1000.0;
    let report: ExecuteReport = post_in(&y_ns, TOKEN, format!("{y_api}/execute"), back)
        .await
        .expect("execute at y");
    print_execute("y → x lazy pages", &report, t0.elapsed());
    assert!(
        report.steps.iter().any(|s| s.step == "serve lazy pages"),
        "{:?}",
        report.steps
    );
    let at_x: Vec<Service> = get_in(&x_ns, TOKEN, format!("{x_api}/services"))
        .await
        .expect("services at x");
    assert_eq!(ids(&at_x), [SERVICE_ID]);
    let at_y: Vec<Service> = get_in(&y_ns, TOKEN, format!("{y_api}/services"))
        .await
        .expect("services at y");
    assert!(at_y.is_empty(), "{at_y:?}");
    let stream = client_report(client).await;
    println!(
        "client over y → x: {} records, largest gap {:.1} ms (ended at {:.0} ms; Execute sent at {:.0} ms), corrupt {}, disconnected {:?}",
        stream.records,
        stream.max_gap_ms,
        stream.max_gap_end_ms,
        execute_at_ms,
        stream.corrupt_records,
        stream.disconnected
    );
    assert!(stream.intact && stream.records > 300, "{stream:?}");

    // SIGTERM: both de-register, X removes the service it hosts (its processes, OVS port and
    // namespace), both their work directories.
    let svc_pids = Netns::new(fabric.ns("svc-p50-x"))
        .inode()
        .map(netkit::process::pids_in_netns)
        .unwrap_or_default();
    assert!(!svc_pids.is_empty(), "the service runs at x");
    let t0 = Instant::now();
    let x_status = x.terminate(Duration::from_secs(20)).await;
    let y_status = y.terminate(Duration::from_secs(20)).await;
    println!(
        "both daemons ended {:.0} ms after SIGTERM",
        t0.elapsed().as_secs_f64() * 1000.0
    );
    assert!(x_status.success(), "{x_status}:\n{}", x.log_text());
    assert!(y_status.success(), "{y_status}:\n{}", y.log_text());
    let mut gone = smo.seen(|s| s.deletions.clone());
    gone.sort();
    assert_eq!(
        gone,
        [
            "/service-mobility/v1/service-modules/module-1",
            "/service-mobility/v1/service-modules/module-2"
        ]
    );
    let alive: Vec<i32> = svc_pids
        .into_iter()
        .filter(|p| netkit::process::is_alive(*p))
        .collect();
    assert!(alive.is_empty(), "service processes left: {alive:?}");
    for (site, br) in [(&fabric.x, "br-x"), (&fabric.y, "br-y")] {
        let ports = site.ovs.ports(br).expect("ports");
        assert!(!ports.iter().any(|p| p == "s-p50"), "{br}: {ports:?}");
    }
    let left = Netns::list_with_prefix(&fabric.ns("svc-"));
    assert!(left.is_empty(), "service namespaces left: {left:?}");
    for e in ["x", "y"] {
        let dir = fabric.root.join(format!("work-{e}"));
        assert!(!dir.exists(), "{} left", dir.display());
    }
    let text = x.log_text();
    for want in [
        "registered with the SMO",
        "de-registered",
        "service removed",
    ] {
        assert!(text.contains(want), "x log lacks `{want}`:\n{text}");
    }
}

/// A `criu` wrapper for the daemons (first on their `PATH`): a file `slow-restore` (or
/// `slow-dump`) in `dir` makes the next restore (dump) note `restoring` (`dumping`) there and
/// wait `secs` first, so the test can kill the module in the middle of it.
fn slow_criu(dir: &Path) {
    let real = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|d| Path::new(d).join("criu"))
        .find(|p| p.is_file())
        .expect("criu on PATH (scripts/setup)");
    std::fs::create_dir_all(dir).expect("bin dir");
    let wrapper = dir.join("criu");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/bash\n\
             d={dir}\n\
             if [ \"$1\" = restore ] && [ -e $d/slow-restore ]; then rm -f $d/slow-restore; touch $d/restoring; sleep 6; fi\n\
             if [ \"$1\" = dump ] && [ -e $d/slow-dump ]; then rm -f $d/slow-dump; touch $d/dumping; sleep 2; fi\n\
             exec {real} \"$@\"\n",
            dir = dir.display(),
            real = real.display()
        ),
    )
    .expect("wrapper");
    common::sh(std::process::Command::new("chmod").arg("+x").arg(&wrapper));
}

async fn wait_for_file(path: &Path, limit: Duration) {
    let start = Instant::now();
    while !path.exists() {
        assert!(start.elapsed() < limit, "{} never appeared", path.display());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: needs root, OVS and CRIU; run by scripts/test"]
async fn a_module_killed_mid_move_at_the_target_or_the_source_restarts_with_one_copy_serving() {
    require_root();
    let fabric = Fabric::up('k');
    let _smo = fake_smo(&fabric).await;
    let bin = fabric.root.join("bin");
    slow_criu(&bin);
    let probe = probe();
    let x_cfg = module_config(
        &fabric,
        &fabric.x,
        X_BACKHAUL,
        Strategy::StopAndCopy,
        vec![probe],
    );
    let y_cfg = module_config(
        &fabric,
        &fabric.y,
        Y_BACKHAUL,
        Strategy::StopAndCopy,
        vec![],
    );
    let (edge_x, edge_y) = (fabric.ns("edge-x"), fabric.ns("edge-y"));
    let again = fabric.root.join("restarted");
    std::fs::create_dir_all(&again).expect("dir");
    let mut x = DaemonProcess::spawn_with_path(&edge_x, &x_cfg, &fabric.root, Some(&bin));
    let mut y = DaemonProcess::spawn_with_path(&edge_y, &y_cfg, &fabric.root, Some(&bin));
    x.wait_ready(Duration::from_secs(20)).await;
    y.wait_ready(Duration::from_secs(20)).await;
    let svc_x = fabric.ns("svc-p50-x");
    fabric
        .wait_listening(&svc_x, 5000, Duration::from_secs(5))
        .await;
    let x_api = format!("http://{X_BACKHAUL}:{API_PORT}/svcmod/v1");
    let y_api = format!("http://{Y_BACKHAUL}:{API_PORT}/svcmod/v1");
    let (x_ns, y_ns) = (fabric.x.netns.clone(), fabric.y.netns.clone());
    let services_at = |ns: &Netns, api: &str| {
        let (ns, url) = (ns.clone(), format!("{api}/services"));
        async move {
            get_in::<Vec<Service>>(&ns, TOKEN, url)
                .await
                .expect("services")
        }
    };
    // One copy, at x, serving the UE; nothing of it at y.
    let one_copy_at_x = || async {
        let at_x = services_at(&x_ns, &x_api).await;
        assert_eq!(ids(&at_x), [SERVICE_ID]);
        assert_eq!(at_x[0].ue_ipv4_addrs, [UE_IP], "serving the UE");
        assert!(services_at(&y_ns, &y_api).await.is_empty());
        assert!(!Netns::new(fabric.ns("svc-p50-y")).exists(), "nothing at y");
        let pids = Netns::new(&svc_x)
            .inode()
            .map(netkit::process::pids_in_netns)
            .unwrap_or_default();
        assert!(!pids.is_empty(), "the service runs at x");
    };
    let client = fabric.start_client(16.0);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let served = served_service(&x_ns, TOKEN, &x_api, UE_IP).await;
    let execute = |relocation_id: &str| {
        let req = ExecuteRequest {
            relocation_id: relocation_id.into(),
            service: served.clone(),
            target_address: format!("{Y_BACKHAUL}:{MIGRATION_PORT}")
                .parse()
                .expect("addr"),
        };
        let (ns, url) = (x_ns.clone(), format!("{x_api}/execute"));
        tokio::spawn(async move { post_in::<_, ExecuteReport>(&ns, TOKEN, url, req).await })
    };

    // 1. The target's module dies while it restores: the source rolls back; the restarted
    // target removes what it half-made.
    std::fs::write(bin.join("slow-restore"), "").expect("slow restore");
    let moving = execute("rel-crash-target");
    wait_for_file(&bin.join("restoring"), Duration::from_secs(15)).await;
    assert!(
        Netns::new(fabric.ns("svc-p50-y")).exists(),
        "half-made at y"
    );
    y.kill();
    let answer = moving.await.expect("execute task");
    assert_eq!(
        status_of(answer),
        (502, Some("MIGRATION_ROLLED_BACK".into()))
    );
    let mut y = DaemonProcess::spawn_with_path(&edge_y, &y_cfg, &again, Some(&bin));
    y.wait_ready(Duration::from_secs(20)).await;
    one_copy_at_x().await;
    assert!(
        y.log_text().contains("restarted after a crash"),
        "{}",
        y.log_text()
    );
    println!("target killed mid-restore: rolled back at x, nothing left at y after its restart");

    // 2. The source's module dies during its dump: the dump goes on (the tree stops), the target
    // aborts; the restarted source resumes the service from the images (Commit never went out).
    std::fs::write(bin.join("slow-dump"), "").expect("slow dump");
    let moving = execute("rel-crash-source");
    wait_for_file(&bin.join("dumping"), Duration::from_secs(15)).await;
    x.kill();
    let killed_at = Instant::now();
    assert!(moving.await.expect("execute task").is_err(), "no answer");
    let mut x = DaemonProcess::spawn_with_path(&edge_x, &x_cfg, &again, Some(&bin));
    x.wait_ready(Duration::from_secs(40)).await;
    println!(
        "source killed mid-dump: its restart was ready {:.0} ms after the kill",
        killed_at.elapsed().as_secs_f64() * 1e3
    );
    one_copy_at_x().await;
    let text = x.log_text();
    assert!(text.contains("resumed the move a crash cut off"), "{text}");

    client_report(client)
        .await
        .print_and_check("client over both crashes");

    assert!(x.terminate(Duration::from_secs(20)).await.success());
    assert!(y.terminate(Duration::from_secs(20)).await.success());
    let left = Netns::list_with_prefix(&fabric.ns("svc-"));
    assert!(left.is_empty(), "service namespaces left: {left:?}");
}

//! Privileged: live migration of a real TCP service between two edge clouds with CRIU.
//!
//! Run as root: `cargo build -p testbed --bin tbprobe && cargo test -p svcmod --test privileged_criu
//! -- --ignored --nocapture` (the probe binary is looked up next to this test's target directory,
//! or in `$TBPROBE`). Without root these tests fail; they never pass silently.
//!
//! The world is `common::Fabric` (two edges with OVS, the fabric, the UE); the modules run
//! in-process here (see `privileged_daemon.rs` for the daemon processes).

mod common;

use common::{
    client_report, iface, in_netns, keep_work, ms, require_root, sh, tbprobe, tx_checksum_is_off,
    Fabric, SERVICE_ID, SERVICE_IP, SERVICE_MAC, UE_IP,
};
use model::smo::{ExecuteRequest, RelocationType, Service};
use netkit::Netns;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};
use svcmod::container::EdgeSite;
use svcmod::criu::Criu;
use svcmod::{
    Backend, CriuBackend, CriuConfig, CriuOptions, MigrationError, MigrationReport, ServiceSpec,
    Strategy,
};

const MODULE_PORT: u16 = 9100;
/// Touched memory of the service in the lazy-pages test (perl holds about twice this).
const BALLAST_MB: u32 = 64;

/// The privileged tests share the machine's two cores: one at a time keeps the timings honest.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Everything one test made; dropping it removes all of it (also when the test fails).
struct World {
    fabric: Fabric,
    x: Arc<CriuBackend>,
    y: Arc<CriuBackend>,
    stop_receivers: Vec<tokio::sync::oneshot::Sender<()>>,
}

impl World {
    fn ns(&self, name: &str) -> String {
        self.fabric.ns(name)
    }

    async fn up(letter: char, y_criu: Option<Criu>) -> World {
        let fabric = Fabric::up(letter);
        let module = |site: EdgeSite, criu: Option<Criu>, backhaul: Ipv4Addr| {
            let mut cfg = CriuConfig::new(
                fabric.prefix.clone(),
                site.clone(),
                CriuOptions {
                    backhaul_addr: Some(backhaul),
                    ..CriuOptions::default()
                },
            );
            cfg.work_dir = fabric.root.join(format!("work-{}", site.edge));
            cfg.keep_work = keep_work();
            if let Some(c) = criu {
                cfg.runtime.criu = c;
            }
            Arc::new(CriuBackend::new(cfg))
        };
        let (x_site, y_site) = (fabric.x.clone(), fabric.y.clone());
        let mut world = World {
            x: module(x_site.clone(), None, common::X_BACKHAUL),
            y: module(y_site.clone(), y_criu, common::Y_BACKHAUL),
            fabric,
            stop_receivers: Vec::new(),
        };
        for (backend, site, addr) in [
            (Arc::clone(&world.x), x_site, common::X_BACKHAUL),
            (Arc::clone(&world.y), y_site, common::Y_BACKHAUL),
        ] {
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

    /// Starts the probe service at edge X and waits until it listens.
    async fn start_service(&self) -> Service {
        self.start_service_with(vec![
            tbprobe().display().to_string(),
            "serve".into(),
            "--tcp=0.0.0.0:5000".into(),
        ])
        .await
    }

    /// Starts the probe service with `ballast_mb` of touched memory in a second process of its
    /// tree (perl holding a string), as a service with a real working set would have. (Perl's
    /// `sleep` returns early when CRIU restores it, hence the loop.)
    async fn start_service_with_ballast(&self, ballast_mb: u32) -> Service {
        let script = format!(
            "perl -e '$x = chr(1) x ({ballast_mb} << 20); sleep 1000 while 1' & exec {} serve --tcp=0.0.0.0:5000",
            tbprobe().display()
        );
        let service = self
            .start_service_with(vec!["sh".into(), "-c".into(), script])
            .await;
        // Wait until the ballast is resident.
        let start = Instant::now();
        loop {
            let pids = self
                .x
                .container(SERVICE_ID)
                .map(|c| c.pids())
                .unwrap_or_default();
            let rss_kb: u64 = pids
                .iter()
                .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
                .filter_map(|st| {
                    st.lines()
                        .find(|l| l.starts_with("VmRSS:"))
                        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                })
                .sum();
            if rss_kb >= u64::from(ballast_mb) * 1024 {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "ballast never resident"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        service
    }

    async fn start_service_with(&self, command: Vec<String>) -> Service {
        let service = self
            .x
            .create(ServiceSpec {
                service_id: SERVICE_ID.into(),
                ipv4_addr: SERVICE_IP,
                mac_addr: SERVICE_MAC.into(),
                command,
                resource_requirements: Default::default(),
            })
            .await
            .expect("create service at edge x");
        assert_eq!(service.ovs_port, "s-p50");
        let svc_ns = self.ns("svc-p50-x");
        let start = Instant::now();
        loop {
            let out = sh(in_netns(&svc_ns, "ss").args(["-tlnH"]));
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

    /// Starts the stream client at the UE (one connection, never reconnects).
    fn start_client(&self, seconds: f64) -> Child {
        self.fabric.start_client(seconds)
    }

    fn request(&self, relocation_id: &str, service: &Service) -> ExecuteRequest {
        self.request_to(relocation_id, service, Ipv4Addr::new(10, 0, 1, 2))
    }

    fn request_to(&self, relocation_id: &str, service: &Service, to: Ipv4Addr) -> ExecuteRequest {
        ExecuteRequest {
            relocation_id: relocation_id.into(),
            service: service.clone(),
            target_address: format!("{to}:{MODULE_PORT}").parse().expect("addr"),
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for tx in self.stop_receivers.drain(..) {
            let _ = tx.send(());
        }
    }
}

#[test]
#[ignore = "privileged: needs root and CRIU; run by scripts/test"]
fn the_kdat_cache_is_made_for_the_running_kernel_and_criu_loads_it() {
    require_root();
    let criu = Criu::default();
    let existed = Path::new(svcmod::criu::KDAT_CACHE).exists();
    let bytes = criu.prime_kdat_cache().expect("kdat cache");
    assert!(bytes > 0);
    let on_disk = std::fs::metadata(svcmod::criu::KDAT_CACHE).expect("cache file");
    assert_eq!(on_disk.len(), bytes);
    // A CRIU run now loads it instead of probing the kernel.
    let log = std::env::temp_dir().join(format!("svcmod-kdat-check-{}.log", std::process::id()));
    let out = Command::new(&criu.bin)
        .args(["check", "-v4", "-o"])
        .arg(&log)
        .output()
        .expect("criu check");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    assert!(out.status.success(), "{out:?}");
    if !existed {
        let _ = std::fs::remove_file(svcmod::criu::KDAT_CACHE);
    }
    assert!(
        text.contains("Loaded kdat cache from"),
        "criu did not load the cache:\n{}",
        text.lines().take(8).collect::<Vec<_>>().join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: needs root, OVS and CRIU; run by scripts/test"]
async fn stop_and_copy_moves_a_live_tcp_stream_between_edges() {
    require_root();
    let _serial = SERIAL.lock().await;
    let w = World::up('a', None).await;
    let service = w.start_service().await;
    let root_before =
        w.x.container(SERVICE_ID)
            .and_then(|c| c.root_pid())
            .expect("service runs");
    let client = w.start_client(6.0);
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let served = w.x.serving(UE_IP).await.expect("serving");
    assert_eq!(
        served.as_ref().map(|s| s.service_id.as_str()),
        Some(SERVICE_ID),
        "the service's live socket names the UE"
    );
    assert_eq!(
        w.x.services().await.expect("list")[0].ue_ipv4_addrs,
        [UE_IP]
    );

    let report =
        w.x.migrate_out(&w.request("rel-1", &service))
            .await
            .expect("migration");
    println!(
        "stop-and-copy: prepare {:.1} ms, dump {:.1} ms, transfer {:.1} ms, restore {:.1} ms, \
         resume {:.1} ms, frozen {:.1} ms, total {:.1} ms; images {} B, moved {} B",
        ms(report.prepare_us),
        ms(report.dump_us),
        ms(report.transfer_us),
        ms(report.restore_us),
        ms(report.resume_us),
        ms(report.frozen_us),
        ms(report.total_us),
        report.image_bytes,
        report.bytes_moved
    );
    for s in &report.steps {
        println!(
            "  step {:<20} at {:>9} µs took {:>9} µs",
            s.step, s.at_us, s.took_us
        );
    }
    assert!(report.image_bytes > 0);
    assert!(report.bytes_moved > report.image_bytes);
    assert!(report.dump_us > 0 && report.transfer_us > 0 && report.restore_us > 0);
    assert_eq!(
        report.to_execute_report().bytes_moved,
        Some(report.bytes_moved)
    );

    // Source side: gone.
    assert!(w.x.services().await.expect("list").is_empty());
    assert!(
        !Netns::new(w.ns("svc-p50-x")).exists(),
        "source netns removed"
    );
    assert!(!netkit::process::is_alive(root_before), "source tree gone");
    let x_ports = w.x.config().site.ovs.ports("br-x").expect("ports");
    assert!(!x_ports.iter().any(|p| p == "s-p50"), "{x_ports:?}");

    // Target side: the same service, same IP and MAC, serving the UE.
    let target = w.y.container(SERVICE_ID).expect("hosted at y");
    let pid = target.root_pid().expect("restored tree runs");
    assert!(
        target.owns(pid),
        "the restored tree lives in the target netns"
    );
    assert_eq!(target.netns().name(), w.ns("svc-p50-y"));
    let cmdline = netkit::process::cmdline(pid).unwrap_or_default();
    assert!(cmdline.contains("tbprobe serve"), "{cmdline}");
    let eth0 = iface(&w.ns("svc-p50-y"), "eth0");
    assert_eq!(eth0.mac.as_deref(), Some(SERVICE_MAC));
    assert_eq!(eth0.addrs, ["20.0.0.50/16"]);
    assert!(tx_checksum_is_off(&w.ns("svc-p50-y"), "eth0"));
    assert!(tx_checksum_is_off(&w.ns("edge-y"), "s-p50"));
    assert!(iface(&w.ns("edge-y"), "s-p50").up, "target carrier up");
    let y_ports = w.y.config().site.ovs.ports("br-y").expect("ports");
    assert!(y_ports.iter().any(|p| p == "s-p50"), "{y_ports:?}");
    let at_y = w.y.serving(UE_IP).await.expect("serving");
    assert_eq!(at_y.map(|s| s.ipv4_addr), Some(SERVICE_IP));

    let stream = client_report(client).await;
    println!(
        "client: {} records, {} bytes, largest gap {:.1} ms (ended at {:.0} ms), corrupt {}, disconnected {:?}",
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
    // 10 ms records for 6 s; the pause is well under a second.
    assert!(stream.records > 500, "{stream:?}");
    assert!(stream.max_gap_ms < 1000.0, "{stream:?}");

    w.y.remove(SERVICE_ID).await.expect("remove at y");
    assert!(!Netns::new(w.ns("svc-p50-y")).exists());
    assert!(
        !netkit::process::is_alive(pid),
        "removed service's tree is gone"
    );
}

/// The target's CRIU, wrapped: `corrupt` garbles an image before a restore; `fail-after-commit`
/// makes the restore fail right after the commit (the gate ran, the tree never resumed).
fn failing_criu(root: &Path) -> (Criu, PathBuf) {
    std::fs::create_dir_all(root).expect("dir");
    let mode = root.join("criu-mode");
    let wrapper = root.join("criu-wrapper");
    std::fs::write(&mode, "ok").expect("mode");
    std::fs::write(
        &wrapper,
        format!(
            r#"#!/bin/bash
mode=$(cat {mode})
args=("$@")
if [ "$1" = restore ]; then
  for ((i=0; i<${{#args[@]}}; i++)); do
    case "${{args[$i]}}" in
      -D) d="${{args[$((i+1))]}}";;
      --action-script) si=$((i+1));;
    esac
  done
  if [ "$mode" = corrupt ]; then printf 'garbage' > "$d/pstree.img"; fi
  if [ "$mode" = fail-after-commit ] && [ -n "$si" ]; then
    w="$d/../failing-gate.sh"
    printf '#!/bin/sh\nsh %s || exit 1\n[ "$CRTOOLS_SCRIPT_ACTION" = post-restore ] && exit 1\nexit 0\n' "${{args[$si]}}" > "$w"
    chmod +x "$w"
    args[$si]="$w"
  fi
fi
exec criu "${{args[@]}}"
"#,
            mode = mode.display()
        ),
    )
    .expect("wrapper");
    sh(Command::new("chmod").arg("+x").arg(&wrapper));
    (Criu::new(&wrapper), mode)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: needs root, OVS and CRIU; run by scripts/test"]
async fn a_failed_move_leaves_the_service_serving_at_the_source() {
    require_root();
    let _serial = SERIAL.lock().await;
    let wrapper_dir = PathBuf::from("/dev/shm/tsv-b-criu");
    let (criu, mode) = failing_criu(&wrapper_dir);
    struct RemoveDir(PathBuf);
    impl Drop for RemoveDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _wrapper_guard = RemoveDir(wrapper_dir);
    let w = World::up('b', Some(criu)).await;
    let service = w.start_service().await;
    let client = w.start_client(12.0);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let at_source = |w: &World| {
        let c = w.x.container(SERVICE_ID).expect("still hosted at x");
        let pid = c.root_pid().expect("a live tree at x");
        assert!(c.owns(pid));
        assert!(iface(&w.ns("edge-x"), "s-p50").up, "source carrier up");
        assert!(w.y.container(SERVICE_ID).is_none(), "nothing hosted at y");
        assert!(
            !Netns::new(w.ns("svc-p50-y")).exists(),
            "target netns removed"
        );
        pid
    };

    // A: the target cannot make the namespace (its name is taken): nothing is stopped.
    let blocker = Netns::new(w.ns("svc-p50-y"));
    blocker.create().expect("blocker netns");
    let pid_a =
        w.x.container(SERVICE_ID)
            .and_then(|c| c.root_pid())
            .expect("pid");
    let err =
        w.x.migrate_out(&w.request("rel-a", &service))
            .await
            .expect_err("the target must refuse");
    println!("A (target netns taken): {err}");
    assert!(matches!(err, MigrationError::NotStarted { .. }), "{err:?}");
    assert!(sbi::error_chain(&err).contains("already exists"), "{err:?}");
    blocker.delete().expect("remove blocker");
    assert_eq!(at_source(&w), pid_a, "the very same process kept running");
    tokio::time::sleep(Duration::from_millis(700)).await;

    // B: the images arrive corrupt, the target's restore fails: the source restores itself.
    std::fs::write(&mode, "corrupt").expect("mode");
    let err =
        w.x.migrate_out(&w.request("rel-b", &service))
            .await
            .expect_err("restore must fail");
    println!("B (corrupt image): {err}");
    let MigrationError::RolledBack { report, .. } = &err else {
        panic!("expected a rollback: {err:?}");
    };
    println!(
        "  dump {:.1} ms, transfer {:.1} ms, frozen {:.1} ms, images {} B",
        ms(report.dump_us),
        ms(report.transfer_us),
        ms(report.frozen_us),
        report.image_bytes
    );
    assert!(err.service_at_source());
    let pid_b = at_source(&w);
    assert_ne!(pid_b, pid_a, "restored from the images");
    tokio::time::sleep(Duration::from_millis(700)).await;

    // C: the restore fails after the commit (the gate ran): the target takes its carrier down,
    // says so, and the source restores itself.
    std::fs::write(&mode, "fail-after-commit").expect("mode");
    let err =
        w.x.migrate_out(&w.request("rel-c", &service))
            .await
            .expect_err("resume must fail");
    println!("C (fails after commit): {err}");
    assert!(
        matches!(err, MigrationError::RolledBack { ref cause, .. } if cause.to_string().contains("failed to resume")),
        "{err:?}"
    );
    at_source(&w);
    tokio::time::sleep(Duration::from_millis(700)).await;

    // E: post-copy, images corrupt: the target fails before fetching any page, so the source
    // restores itself lazily from its own page server.
    std::fs::write(&mode, "corrupt").expect("mode");
    let err =
        w.x.migrate_out_with(&w.request("rel-e", &service), Strategy::LazyPages)
            .await
            .expect_err("lazy restore must fail");
    println!("E (lazy pages, corrupt image): {err}");
    assert!(matches!(err, MigrationError::RolledBack { .. }), "{err:?}");
    at_source(&w);
    tokio::time::sleep(Duration::from_millis(700)).await;

    // D: with a working target the same service moves after all of that.
    std::fs::write(&mode, "ok").expect("mode");
    let report =
        w.x.migrate_out(&w.request("rel-d", &service))
            .await
            .expect("migration after the failures");
    println!(
        "D (ok): dump {:.1} ms, transfer {:.1} ms, restore {:.1} ms, frozen {:.1} ms, total {:.1} ms",
        ms(report.dump_us),
        ms(report.transfer_us),
        ms(report.restore_us),
        ms(report.frozen_us),
        ms(report.total_us)
    );
    assert!(w
        .y
        .container(SERVICE_ID)
        .and_then(|c| c.root_pid())
        .is_some());
    assert!(!Netns::new(w.ns("svc-p50-x")).exists());

    let stream = client_report(client).await;
    println!(
        "client over A–E: {} records, largest gap {:.1} ms, corrupt {}, disconnected {:?}",
        stream.records, stream.max_gap_ms, stream.corrupt_records, stream.disconnected
    );
    assert!(stream.intact, "{stream:?}");
    assert!(stream.records > 900, "{stream:?}");
    assert_eq!(RelocationType::Criu, w.y.relocation_type());
}

fn print_report(label: &str, r: &MigrationReport) {
    println!(
        "{label}: prepare {:.1} ms, dump {:.1} ms, transfer {:.1} ms, restore {:.1} ms, \
         resume {:.1} ms, frozen {:.1} ms, pages {}, total {:.1} ms; images {} B, moved {} B",
        ms(r.prepare_us),
        ms(r.dump_us),
        ms(r.transfer_us),
        ms(r.restore_us),
        ms(r.resume_us),
        ms(r.frozen_us),
        r.pages_us
            .map(|p| format!("{:.1} ms", ms(p)))
            .unwrap_or_else(|| "-".into()),
        ms(r.total_us),
        r.image_bytes,
        r.bytes_moved
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: needs root, OVS and CRIU; run by scripts/test"]
async fn lazy_pages_move_a_service_with_ballast_and_keep_its_stream() {
    require_root();
    let _serial = SERIAL.lock().await;
    let pipe_max_before = std::fs::read_to_string("/proc/sys/fs/pipe-max-size").expect("sysctl");
    let w = World::up('c', None).await;
    let service = w.start_service_with_ballast(BALLAST_MB).await;

    // X → Y stop-and-copy, then Y → X post-copy, each under its own stream.
    let client = w.start_client(12.0);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let full =
        w.x.migrate_out_with(&w.request("rel-full", &service), Strategy::StopAndCopy)
            .await
            .expect("stop-and-copy");
    let full_stream = client_report(client).await;
    print_report("ballast stop-and-copy", &full);
    println!("  client gap {:.1} ms", full_stream.max_gap_ms);
    assert!(
        full_stream.intact && full_stream.records > 300,
        "{full_stream:?}"
    );
    assert!(
        full.image_bytes > u64::from(BALLAST_MB) << 20,
        "{}",
        full.image_bytes
    );

    let client = w.start_client(8.0);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let lazy =
        w.y.migrate_out_with(
            &w.request_to("rel-lazy", &service, Ipv4Addr::new(10, 0, 1, 1)),
            Strategy::LazyPages,
        )
        .await
        .expect("lazy pages");
    let lazy_stream = client_report(client).await;
    print_report("ballast lazy pages", &lazy);
    println!("  client gap {:.1} ms", lazy_stream.max_gap_ms);
    for s in &lazy.steps {
        println!(
            "  step {:<26} at {:>9} µs took {:>9} µs",
            s.step, s.at_us, s.took_us
        );
    }
    assert!(
        lazy_stream.intact && lazy_stream.records > 300,
        "{lazy_stream:?}"
    );
    assert!(lazy.pages_us.is_some());
    assert!(
        lazy.image_bytes < full.image_bytes / 4,
        "the pages stay behind: {} vs {}",
        lazy.image_bytes,
        full.image_bytes
    );
    let back = w.x.container(SERVICE_ID).expect("hosted at x again");
    let pid = back.root_pid().expect("runs");
    assert!(back.owns(pid));
    assert!(!Netns::new(w.ns("svc-p50-y")).exists());
    // The ballast came along (every page fetched).
    for p in back.pids() {
        let rss = std::fs::read_to_string(format!("/proc/{p}/status"))
            .ok()
            .and_then(|st| {
                st.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .map(str::to_owned)
            });
        println!(
            "  at x after post-copy: pid {p} {:?} {rss:?}",
            netkit::process::cmdline(p)
        );
    }
    let rss_kb: u64 = back
        .pids()
        .iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .filter_map(|st| {
            st.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .sum();
    assert!(
        rss_kb >= u64::from(BALLAST_MB) * 1024,
        "resident after post-copy: {rss_kb} kB"
    );
    drop(w);
    let pipe_max_after = std::fs::read_to_string("/proc/sys/fs/pipe-max-size").expect("sysctl");
    assert_eq!(pipe_max_before, pipe_max_after, "fs.pipe-max-size put back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: needs root, OVS and CRIU; run by scripts/test"]
async fn three_services_moved_at_once_all_arrive() {
    require_root();
    let _serial = SERIAL.lock().await;
    let w = World::up('t', None).await;
    // Three services of one module, each a process tree in its own PID namespace with the
    // host's /proc and the module's working directory: their dumps must not collide (CRIU's
    // parasite mounts a proc at `proc.crtools` in the task's working directory).
    let mut services = Vec::new();
    for i in 1..=3u8 {
        let service =
            w.x.create(ServiceSpec {
                service_id: format!("m{i}"),
                ipv4_addr: Ipv4Addr::new(20, 0, 0, 60 + i),
                mac_addr: format!("02:00:00:00:00:6{i}"),
                command: vec![
                    tbprobe().display().to_string(),
                    "serve".into(),
                    "--tcp=0.0.0.0:5000".into(),
                ],
                resource_requirements: Default::default(),
            })
            .await
            .expect("create a service at edge x");
        services.push(service);
    }
    let moves: Vec<_> = services
        .iter()
        .map(|s| {
            let (x, request) = (
                Arc::clone(&w.x),
                w.request(&format!("rel-{}", s.service_id), s),
            );
            tokio::spawn(async move { x.migrate_out(&request).await })
        })
        .collect();
    for (s, m) in services.iter().zip(moves) {
        match m.await.expect("the move's task") {
            Ok(report) => print_report(&format!("{} x → y", s.service_id), &report),
            Err(e) => panic!("{} did not move: {e}", s.service_id),
        }
    }
    assert!(w.x.services().await.expect("list").is_empty());
    let mut at_y: Vec<String> =
        w.y.services()
            .await
            .expect("list")
            .into_iter()
            .map(|s| s.service_id)
            .collect();
    at_y.sort();
    assert_eq!(at_y, ["m1", "m2", "m3"]);
    for s in &services {
        w.y.remove(&s.service_id).await.expect("remove at y");
    }
}

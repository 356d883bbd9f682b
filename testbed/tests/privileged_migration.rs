//! Privileged end-to-end tests of live service migration in the testbed: `testbed up` starts a
//! CRIU service module (`svcmod`) in each edge cloud and the streaming service `stream1`
//! (20.0.0.100, a tbprobe TCP stream) in edge X. ue1 streams from it; handing ue1 over to site B
//! makes SMO-X relocate the service: the module live-migrates it to edge Y (same IP and MAC, TCP
//! connection intact) and the relocation completes on its own; handing back moves it back.
//! A dead target module, or a restore that fails at the target (an armed fault damages the
//! images), makes the relocation fail with the service still at edge X, reachable through the
//! trombone; ten migrations in a row leave nothing behind.
//!
//! `#[ignore]`d (a plain `cargo test` counts them as skipped); `scripts/test` runs them as root
//! after `cargo build --bins`.

use model::smo::{RelocationPhase, RelocationState};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use testbed::migration::HandoverOutcome;
use testbed::plan::{Plan, STREAM_SERVICE_ID, STREAM_SERVICE_IP, STREAM_SERVICE_MAC};
use testbed::probe::{StreamReport, StreamWatch};

static SERIAL: Mutex<()> = Mutex::new(());

mod common;
use common::{require_root, up, up_with, wait_for};

/// How long a migration may take before the test gives up waiting.
const MIGRATION_LIMIT: Duration = Duration::from_secs(60);

const LOGS: [&str; 5] = ["svcmod-x", "svcmod-y", "smo-x", "smo-y", "smf"];

fn logs(plan: &Plan) -> String {
    LOGS.iter()
        .map(|n| {
            format!(
                "--- {n}\n{}\n",
                testbed::nf::tail(&plan.state_dir.join(format!("{n}.log")), 30)
            )
        })
        .collect()
}

/// The service's namespace while at `edge`.
fn svc_netns(plan: &Plan, edge: &str) -> netkit::Netns {
    netkit::Netns::new(plan.service_netns(STREAM_SERVICE_ID, edge))
}

/// Every service namespace of the testbed.
fn svc_namespaces(plan: &Plan) -> Vec<String> {
    let mut v: Vec<String> = netkit::Netns::list_with_prefix(&format!("{}-svc-", plan.prefix))
        .iter()
        .map(|n| n.name().to_owned())
        .collect();
    v.sort();
    v
}

/// The service's address and MAC inside its namespace at `edge`.
fn identity(plan: &Plan, edge: &str) -> (String, String) {
    common::eth0_identity(&[&format!(
        "--net=/run/netns/{}",
        svc_netns(plan, edge).name()
    )])
}

/// The ports of edge `edge`'s bridge.
fn ports(plan: &Plan, edge: &str) -> Vec<String> {
    let sw = plan.switch(edge).expect("switch");
    netkit::ovs::OvsInstance::new(&sw.netns, &sw.dir)
        .ports(&sw.bridge)
        .expect("ovs ports")
}

fn flow_count(plan: &Plan, edge: &str) -> usize {
    let sw = plan.switch(edge).expect("switch");
    netkit::ovs::OvsInstance::new(&sw.netns, &sw.dir)
        .dump_flows(&sw.bridge)
        .map(|f| f.len())
        .expect("dump flows")
}

/// Files (at any depth) under a module's work directory; 0 when it does not exist.
fn files_under(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                1 + files_under(&p)
            } else {
                1
            }
        })
        .sum()
}

fn work_dir(plan: &Plan, edge: &str) -> PathBuf {
    Path::new(svcmod::criu_backend::DEFAULT_WORK_ROOT).join(format!(
        "{}-{}",
        plan.prefix,
        Plan::edge_short(edge)
    ))
}

/// The PID the testbed recorded for process `name`.
fn recorded_pid(plan: &Plan, name: &str) -> i32 {
    let state = testbed::state::State::load(&plan.state_dir)
        .expect("state")
        .expect("state present");
    let p = state
        .processes
        .iter()
        .find(|p| p.process.name == name)
        .unwrap_or_else(|| panic!("no recorded process {name}"));
    assert!(p.process.is_running(), "{name} is not running");
    p.process.pid
}

/// Open file descriptors and resident memory (kB) of a process.
fn footprint(pid: i32) -> (usize, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0);
    (fds, rss)
}

/// ue1's TCP stream from the service, checked byte for byte as it arrives, on one connection.
struct Stream {
    watch: StreamWatch,
    thread: std::thread::JoinHandle<std::io::Result<std::io::Result<StreamReport>>>,
}

impl Stream {
    fn start(plan: &Plan) -> Stream {
        let watch = StreamWatch::default();
        let w = watch.clone();
        let ns = netkit::Netns::new(plan.netns("ue1"));
        let thread = std::thread::spawn(move || {
            ns.run_in(move || {
                testbed::probe::check_stream_watched(
                    (STREAM_SERVICE_IP, testbed::nf::PROBE_PORT).into(),
                    64,
                    Duration::from_secs(900),
                    &w,
                )
            })
        });
        Stream { watch, thread }
    }

    /// Waits until `n` more records arrived; how long that took.
    fn progress(&self, n: u64, limit: Duration) -> Option<Duration> {
        let from = self.watch.records();
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.watch.records() >= from + n {
                return Some(start.elapsed());
            }
            if self.thread.is_finished() {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }

    fn finish(self) -> StreamReport {
        self.watch.stop();
        self.thread
            .join()
            .expect("stream thread")
            .expect("run in ue1")
            .expect("stream connects")
    }
}

/// The largest time between two records of the stream as its client saw them (polling its watch
/// every millisecond), from `start` until `finish`.
struct GapMeter {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Duration>,
}

impl GapMeter {
    fn start(watch: &StreamWatch) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (w, s) = (watch.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let (mut last, mut seen) = (Instant::now(), w.records());
            let mut max_gap = Duration::ZERO;
            while !s.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(1));
                let n = w.records();
                if n != seen {
                    let now = Instant::now();
                    max_gap = max_gap.max(now - last);
                    (last, seen) = (now, n);
                }
            }
            max_gap.max(last.elapsed())
        });
        GapMeter { stop, thread }
    }

    fn finish(self) -> Duration {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("gap meter")
    }
}

/// Waits until the stream service runs in edge X and ue1's stream from it flows.
fn stream_from_service(plan: &Plan) -> Stream {
    assert!(
        wait_for(Duration::from_secs(15), || svc_netns(plan, "edge-x")
            .exists()),
        "no service namespace {} after up\n{}",
        svc_netns(plan, "edge-x").name(),
        logs(plan)
    );
    stream_once_listening(plan)
}

/// ue1's stream from 20.0.0.100, once the service listens.
fn stream_once_listening(plan: &Plan) -> Stream {
    // ue1 needs its PDU session first; the service needs to listen: retry the connection.
    let start = Instant::now();
    loop {
        let s = Stream::start(plan);
        if s.progress(50, Duration::from_secs(5)).is_some() {
            return s;
        }
        let rep = s.finish();
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no stream from {STREAM_SERVICE_IP}:5000 to ue1: {rep:?}\n{}",
            logs(plan)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Hands ue1 over to `to` and waits for the relocation; the client-side gap too.
fn hand_over(plan: &Plan, token: &str, to: &str, stream: &Stream) -> (HandoverOutcome, Duration) {
    let meter = GapMeter::start(&stream.watch);
    let o = testbed::migration::handover_and_follow(plan, token, "ue1", to, Some(MIGRATION_LIMIT))
        .unwrap_or_else(|e| panic!("handover to {to}: {e}\n{}", logs(plan)));
    // The stream resumes (records keep arriving after the move) before the meter stops.
    let resumed = stream.progress(50, Duration::from_secs(15));
    let gap = meter.finish();
    assert!(
        resumed.is_some(),
        "the stream did not resume after the handover to {to} ({} records, {} corrupt)\n{}\n{}",
        stream.watch.records(),
        stream.watch.corrupt(),
        testbed::migration::text("ue1", &o),
        logs(plan)
    );
    assert_eq!(stream.watch.corrupt(), 0, "corrupt records after {to}");
    (o, gap)
}

/// [`hand_over`], printing the outcome under `what`; the relocation must have COMPLETED.
fn hand_over_completed(
    plan: &Plan,
    token: &str,
    to: &str,
    stream: &Stream,
    what: &str,
) -> (HandoverOutcome, Duration) {
    let (o, client_gap) = hand_over(plan, token, to, stream);
    eprintln!(
        "\n===== ue1 → {to}: {what}\n{}",
        testbed::migration::text("ue1", &o)
    );
    assert_eq!(
        state_of(&o),
        RelocationState::Completed,
        "{}\n{}",
        testbed::migration::text("ue1", &o),
        logs(plan)
    );
    (o, client_gap)
}

fn state_of(o: &HandoverOutcome) -> RelocationState {
    o.relocation
        .as_ref()
        .and_then(|m| m.source.as_ref())
        .map(|r| r.state)
        .unwrap_or_else(|| panic!("no relocation record: {:?}", o.relocation_note))
}

/// The service runs in `here` (namespace, identity, OVS port) and nowhere else.
fn assert_service_at(plan: &Plan, here: &str, gone: &str) {
    assert!(
        wait_for(Duration::from_secs(5), || !svc_netns(plan, gone).exists()),
        "{} still exists: {:?}",
        svc_netns(plan, gone).name(),
        svc_namespaces(plan)
    );
    assert!(
        svc_netns(plan, here).exists(),
        "{} missing: {:?}",
        svc_netns(plan, here).name(),
        svc_namespaces(plan)
    );
    assert_eq!(svc_namespaces(plan), [svc_netns(plan, here).name()]);
    let (ip, mac) = identity(plan, here);
    assert_eq!(ip, STREAM_SERVICE_IP.to_string(), "address at {here}");
    assert_eq!(mac, STREAM_SERVICE_MAC, "MAC at {here}");
    let port = Plan::service_port(STREAM_SERVICE_ID);
    let (p_here, p_gone) = (ports(plan, here), ports(plan, gone));
    assert!(p_here.contains(&port), "{port} not on {here}: {p_here:?}");
    assert!(
        !p_gone.contains(&port),
        "{port} still on {gone}: {p_gone:?}"
    );
}

/// The service's UDP echo (the probe's `--udp`, migrated with it) answers ue1.
fn udp_echo(plan: &Plan) -> bool {
    netkit::Netns::new(plan.netns("ue1"))
        .run_in(|| {
            let sock = std::net::UdpSocket::bind("0.0.0.0:0")?;
            sock.set_read_timeout(Some(Duration::from_millis(500)))?;
            let mut buf = [0u8; 64];
            for i in 0..6u8 {
                let probe = [b'e', b'c', b'h', b'o', i];
                sock.send_to(&probe, (STREAM_SERVICE_IP, testbed::nf::PROBE_PORT))?;
                if let Ok((n, _)) = sock.recv_from(&mut buf) {
                    if buf[..n] == probe {
                        return Ok(true);
                    }
                }
            }
            Ok::<_, std::io::Error>(false)
        })
        .ok()
        .and_then(Result::ok)
        .unwrap_or(false)
}

fn ms(us: u64) -> f64 {
    us as f64 / 1e3
}

/// One line of numbers for a relocation: total, module time, bytes, UE-side gap, client gap.
fn summary(o: &HandoverOutcome, client_gap: Duration) -> String {
    let m = o.relocation.as_ref();
    let x = m
        .and_then(|m| m.source.as_ref())
        .and_then(|r| r.execute.as_ref());
    format!(
        "total {} ms, module {} ms, {} bytes moved, UE-side gap {} ms ({}), client-side gap {:.1} ms",
        m.and_then(|m| m.total_us())
            .map_or_else(|| "-".into(), |t| format!("{:.1}", ms(t))),
        x.map_or_else(|| "-".into(), |x| format!("{:.1}", ms(x.took_us))),
        x.and_then(|x| x.bytes_moved)
            .map_or_else(|| "-".into(), |b| b.to_string()),
        o.ue_downtime
            .as_ref()
            .map_or_else(|| "-".into(), |d| format!("{:.1}", d.largest_gap_ms)),
        o.ue_downtime
            .as_ref()
            .and_then(|d| d.flow.clone())
            .unwrap_or_default(),
        client_gap.as_secs_f64() * 1e3,
    )
}

#[test]
#[ignore = "privileged: needs root; run with --include-ignored as root"]
fn a_handover_live_migrates_the_stream_service_and_back() {
    require_root();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (plan, token, guard) = up("ci-mg", "tbmg");
    let stream = stream_from_service(&plan);
    assert_service_at(&plan, "edge-x", "edge-y");
    assert!(udp_echo(&plan), "no UDP echo from the service at edge-x");

    for (to, here, gone) in [
        ("site-b", "edge-y", "edge-x"),
        ("site-a", "edge-x", "edge-y"),
    ] {
        let (o, client_gap) = hand_over_completed(
            &plan,
            &token,
            to,
            &stream,
            &format!("stream1 {gone} → {here}"),
        );
        let m = o.relocation.as_ref().expect("relocation");
        let src = m.source.as_ref().expect("source record");
        assert_eq!(src.service.service_id, STREAM_SERVICE_ID);
        assert_eq!(src.service.ipv4_addr, STREAM_SERVICE_IP);
        for side in [m.source.as_ref(), m.target.as_ref()] {
            let phases: Vec<RelocationPhase> = side
                .expect("both sides' records")
                .phases
                .iter()
                .map(|p| p.phase)
                .collect();
            assert_eq!(phases, RelocationPhase::SUCCESS_PATH, "{m:#?}");
        }
        let x = src.execute.as_ref().expect("the module's report");
        assert!(x.bytes_moved.unwrap_or(0) > 0, "{x:?}");
        assert!(!x.steps.is_empty(), "{x:?}");
        assert_service_at(&plan, here, gone);
        let d = o.ue_downtime.as_ref().expect("UE-side downtime measured");
        assert!(
            d.flow
                .as_deref()
                .is_some_and(|f| f.contains("20.0.0.100:5000")),
            "the largest gap is not the stream's: {d:?}"
        );
        assert!(d.silent_flows.is_empty(), "{d:?}");
        let before = stream.watch.records();
        std::thread::sleep(Duration::from_secs(1));
        let flowing = stream.watch.records() - before;
        assert!(flowing >= 50, "only {flowing} records in 1 s at {here}");
        assert!(udp_echo(&plan), "no UDP echo from the service at {here}");
        eprintln!("ue1 → {to}: {}", summary(&o, client_gap));
    }
    let rep = stream.finish();
    assert!(
        rep.intact && rep.disconnected.is_none(),
        "stream not byte-exact on one connection: {rep:?}"
    );
    eprintln!(
        "stream across both migrations: {} records, byte-exact, one connection, largest gap {:.1} ms",
        rep.records, rep.max_gap_ms
    );
    drop(guard);
    assert!(netkit::Netns::list_with_prefix("tbmg-").is_empty());
    assert!(!work_dir(&plan, "edge-x").exists() && !work_dir(&plan, "edge-y").exists());
}

/// The relocation of `o` FAILED at the source, the service still runs in edge X, and ue1 (now at
/// site B) reaches it through the trombone with its stream byte-exact on one connection. Returns
/// the failure's cause.
fn assert_failed_and_still_served_from_x(
    plan: &Plan,
    o: &HandoverOutcome,
    stream: Stream,
    client_gap: Duration,
) -> String {
    assert_eq!(
        state_of(o),
        RelocationState::Failed,
        "{}\n{}",
        testbed::migration::text("ue1", o),
        logs(plan)
    );
    let src = o
        .relocation
        .as_ref()
        .and_then(|m| m.source.as_ref())
        .expect("source record");
    assert_eq!(src.phase, RelocationPhase::Failure, "{src:#?}");
    let cause = src.cause.clone().unwrap_or_default();
    eprintln!("relocation failed: {cause}");
    assert_service_at(plan, "edge-x", "edge-y");
    let before = stream.watch.records();
    std::thread::sleep(Duration::from_secs(2));
    let through = stream.watch.records() - before;
    assert!(
        through >= 100,
        "only {through} records in 2 s through the trombone"
    );
    eprintln!(
        "through the trombone: {through} records in 2 s; {}",
        summary(o, client_gap)
    );
    let rep = stream.finish();
    assert!(
        rep.intact && rep.disconnected.is_none(),
        "stream not byte-exact on one connection: {rep:?}"
    );
    cause
}

#[test]
#[ignore = "privileged: needs root; run with --include-ignored as root"]
fn a_dead_target_module_fails_the_relocation_and_the_service_stays_at_edge_x() {
    require_root();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // No supervisor: the dead module must stay dead for this case.
    let (plan, token, guard) = common::up_with(
        "ci-mgf",
        "tbmf",
        testbed::topo::UpOptions {
            supervise: false,
            ..Default::default()
        },
    );
    let stream = stream_from_service(&plan);

    // The target module dies without de-registering.
    let pid = recorded_pid(&plan, "svcmod-y");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill svcmod-y");
    assert!(
        wait_for(Duration::from_secs(5), || !netkit::process::is_alive(pid)),
        "svcmod-y (pid {pid}) still alive"
    );

    let (o, client_gap) = hand_over(&plan, &token, "site-b", &stream);
    eprintln!(
        "\n===== ue1 → site-b with svcmod-y dead\n{}",
        testbed::migration::text("ue1", &o)
    );
    // The service still runs in edge X, and ue1 at site B reaches it through the trombone.
    assert_failed_and_still_served_from_x(&plan, &o, stream, client_gap);
    drop(guard);
    assert!(netkit::Netns::list_with_prefix("tbmf-").is_empty());
}

#[test]
#[ignore = "privileged: needs root; run with --include-ignored as root"]
fn a_failed_restore_at_the_target_rolls_back_and_the_service_stays_at_edge_x() {
    require_root();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (plan, token, guard) = up("ci-mgr", "tbmr");
    let stream = stream_from_service(&plan);

    // The target module's next restore really fails (its core images are damaged first).
    testbed::migration::arm_fault(&plan, &token, "edge-y", svcmod::Fault::CorruptImages)
        .expect("arm the fault in svcmod-y");
    let (o, client_gap) = hand_over(&plan, &token, "site-b", &stream);
    eprintln!(
        "\n===== ue1 → site-b with a failing restore at edge Y\n{}",
        testbed::migration::text("ue1", &o)
    );
    // The service was dumped, the restore at Y failed, and X restored it from its own images:
    // it still runs in edge X, and ue1 at site B reaches it through the trombone.
    let cause = assert_failed_and_still_served_from_x(&plan, &o, stream, client_gap);
    assert!(
        cause.contains("restore failed") && cause.contains("resumed at the source"),
        "the cause should say the restore failed and the service was rolled back: {cause}"
    );
    drop(guard);
    assert!(netkit::Netns::list_with_prefix("tbmr-").is_empty());
}

/// One migration of the series.
struct Run {
    total_ms: f64,
    ue_gap_ms: f64,
    /// Flows on edge X's and edge Y's bridge afterwards.
    flows: (usize, usize),
    /// Open descriptors and resident kB of the long-lived processes afterwards.
    footprints: Vec<(usize, u64)>,
}

#[test]
#[ignore = "privileged: needs root; run with --include-ignored as root"]
fn ten_migrations_in_a_row_leave_nothing_behind() {
    require_root();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (plan, token, guard) = up("ci-mg10", "tbmt");
    let stream = stream_from_service(&plan);
    let pids = [
        ("svcmod-x", recorded_pid(&plan, "svcmod-x")),
        ("svcmod-y", recorded_pid(&plan, "svcmod-y")),
        ("smo-x", recorded_pid(&plan, "smo-x")),
        ("smo-y", recorded_pid(&plan, "smo-y")),
    ];
    let sample = || -> Vec<(usize, u64)> { pids.iter().map(|(_, p)| footprint(*p)).collect() };
    let first = sample();
    let mut runs: Vec<Run> = Vec::new();
    eprintln!("run  to      total ms  UE gap ms  client gap ms  bytes    flows X/Y  fds+rss kB (svcmod-x svcmod-y smo-x smo-y)");
    for i in 0..10 {
        let (to, here, gone) = if i % 2 == 0 {
            ("site-b", "edge-y", "edge-x")
        } else {
            ("site-a", "edge-x", "edge-y")
        };
        let (o, client_gap) = hand_over(&plan, &token, to, &stream);
        assert_eq!(
            state_of(&o),
            RelocationState::Completed,
            "run {i}\n{}\n{}",
            testbed::migration::text("ue1", &o),
            logs(&plan)
        );
        assert_service_at(&plan, here, gone);
        for edge in ["edge-x", "edge-y"] {
            let dir = work_dir(&plan, edge);
            assert_eq!(files_under(&dir), 0, "run {i}: {} not empty", dir.display());
        }
        let fp = sample();
        let m = o.relocation.as_ref().expect("relocation");
        let total = m.total_us().map_or(0.0, ms);
        let gap = o.ue_downtime.as_ref().map_or(0.0, |d| d.largest_gap_ms);
        let bytes = m
            .source
            .as_ref()
            .and_then(|r| r.execute.as_ref())
            .and_then(|x| x.bytes_moved)
            .unwrap_or(0);
        let (fx, fy) = (flow_count(&plan, "edge-x"), flow_count(&plan, "edge-y"));
        eprintln!(
            "{:>3}  {to}  {total:>8.1}  {gap:>9.1}  {:>13.1}  {bytes:>7}  {fx:>4}/{fy:<4}  {}",
            i + 1,
            client_gap.as_secs_f64() * 1e3,
            fp.iter()
                .map(|(f, r)| format!("{f}+{r}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        runs.push(Run {
            total_ms: total,
            ue_gap_ms: gap,
            flows: (fx, fy),
            footprints: fp,
        });
        // Let the stream settle at its new place before the next handover.
        assert!(stream.progress(50, Duration::from_secs(10)).is_some());
    }
    // Nothing grows from one round trip to the next: the same flows in the same place, and the
    // long-lived processes' descriptors stay put.
    for i in 2..runs.len() {
        assert_eq!(
            runs[i].flows,
            runs[i - 2].flows,
            "flow counts differ between runs {} and {}",
            i - 1,
            i + 1
        );
    }
    let last = &runs[runs.len() - 1].footprints;
    for ((name, _), ((f0, r0), (f1, r1))) in pids.iter().zip(first.iter().zip(last)) {
        eprintln!("{name}: fds {f0} → {f1}, rss {r0} kB → {r1} kB");
        assert!(
            *f1 <= f0 + 16,
            "{name}'s open descriptors grew from {f0} to {f1} over 10 migrations"
        );
    }
    let totals: Vec<f64> = runs.iter().map(|r| r.total_ms).collect();
    let gaps: Vec<f64> = runs.iter().map(|r| r.ue_gap_ms).collect();
    let stats = |v: &[f64]| {
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        (s[0], s[s.len() / 2], s[s.len() - 1])
    };
    let (t0, tm, t1) = stats(&totals);
    let (g0, gm, g1) = stats(&gaps);
    eprintln!(
        "10 migrations: total min/median/max {t0:.1}/{tm:.1}/{t1:.1} ms; UE-side gap {g0:.1}/{gm:.1}/{g1:.1} ms"
    );
    let rep = stream.finish();
    assert!(
        rep.intact && rep.disconnected.is_none(),
        "stream not byte-exact on one connection across 10 migrations: {rep:?}"
    );
    eprintln!(
        "stream across 10 migrations: {} records, byte-exact, one connection",
        rep.records
    );
    drop(guard);
    assert!(netkit::Netns::list_with_prefix("tbmt-").is_empty());
    assert!(!work_dir(&plan, "edge-x").exists() && !work_dir(&plan, "edge-y").exists());
}

/// The services the module on callback port `port` of `edge` hosts (GetServices).
fn module_services(plan: &Plan, token: &str, edge: &str, port: u16) -> Vec<model::smo::Service> {
    let ip = plan
        .node(edge)
        .and_then(|n| n.addr("sbi"))
        .expect("edge SBI address");
    let url = format!("http://{ip}:{port}{}", svcmod::api::SERVICES);
    testbed::handover::sbi_call_in(
        &plan.netns(edge),
        token,
        Duration::from_secs(5),
        format!("{edge} module on {port}: services"),
        move |c| async move { c.get::<Vec<model::smo::Service>>(&url).await },
    )
    .unwrap_or_default()
}

/// The LXC module of `edge`: the services it hosts.
fn lxc_services(plan: &Plan, token: &str, edge: &str) -> Vec<model::smo::Service> {
    module_services(plan, token, edge, testbed::nf::SVCMOD_LXC_PORT)
}

/// The LXC container's `eth0` address and MAC, read inside its network namespace (its init's).
fn lxc_identity(plan: &Plan, id: &str, edge: &str) -> (String, String) {
    let pid = common::lxc_init_pid(plan, id, edge)
        .unwrap_or_else(|| panic!("no container of {id} running at {edge}"))
        .to_string();
    common::eth0_identity(&["-t", &pid, "-n"])
}

#[test]
#[ignore = "privileged: needs root; run with --include-ignored as root"]
fn a_handover_live_migrates_an_lxc_service_and_back() {
    require_root();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let service: testbed::scenario::ServiceSpec = toml::from_str(
        "id = \"lx1\"\nedge = \"edge-x\"\nbackend = \"lxc\"\nkind = \"streamer\"\nserves = [\"ue1\"]",
    )
    .expect("service");
    let (plan, token, guard) = up_with(
        "ci-mgl",
        "tbml",
        testbed::topo::UpOptions {
            service_specs: Some(vec![service]),
            ..Default::default()
        },
    );
    assert!(
        wait_for(Duration::from_secs(20), || lxc_services(
            &plan, &token, "edge-x"
        )
        .iter()
        .any(|s| s.service_id == "lx1")),
        "the LXC module at edge X does not host lx1\n{}",
        logs(&plan)
    );
    let stream = stream_once_listening(&plan);
    for (to, here, gone) in [
        ("site-b", "edge-y", "edge-x"),
        ("site-a", "edge-x", "edge-y"),
    ] {
        let (o, client_gap) = hand_over_completed(
            &plan,
            &token,
            to,
            &stream,
            &format!("lx1 (LXC) {gone} → {here}"),
        );
        let src = o
            .relocation
            .as_ref()
            .and_then(|m| m.source.as_ref())
            .expect("source record");
        assert_eq!(src.service.relocation_type, model::smo::RelocationType::Lxc);
        let listed = |edge| {
            lxc_services(&plan, &token, edge)
                .iter()
                .any(|s| s.service_id == "lx1")
        };
        assert!(listed(here), "lx1 not hosted at {here}");
        assert!(!listed(gone), "lx1 still hosted at {gone}");
        let (p_here, p_gone) = (ports(&plan, here), ports(&plan, gone));
        assert!(p_here.iter().any(|p| p == "s-lx1"), "{p_here:?}");
        assert!(!p_gone.iter().any(|p| p == "s-lx1"), "{p_gone:?}");
        assert_eq!(
            lxc_identity(&plan, "lx1", here),
            (STREAM_SERVICE_IP.to_string(), STREAM_SERVICE_MAC.to_owned()),
            "address and MAC at {here}"
        );
        eprintln!("ue1 → {to}: {}", summary(&o, client_gap));
    }
    let rep = stream.finish();
    assert!(
        rep.intact && rep.disconnected.is_none(),
        "stream not byte-exact on one connection: {rep:?}"
    );
    drop(guard);
    assert!(netkit::Netns::list_with_prefix("tbml-").is_empty());
    assert!(!work_dir(&plan, "edge-x").exists() && !work_dir(&plan, "edge-y").exists());
}

/// The LXD instance's `eth0` address and MAC, read inside its network namespace (its init's).
fn lxd_identity(plan: &Plan, id: &str, edge: &str) -> (String, String) {
    let pid = common::lxd_init_pid(plan, id, edge)
        .unwrap_or_else(|| panic!("{id} does not run at {edge}"))
        .to_string();
    common::eth0_identity(&["-t", &pid, "-n"])
}

/// Logs of an LXD testbed: its LXD modules' and SMOs', and the daemons' own.
fn lxd_logs(plan: &Plan) -> String {
    let mut out: String = ["svcmod-lxd-x", "svcmod-lxd-y", "smo-x", "smo-y"]
        .iter()
        .map(|n| {
            format!(
                "--- {n}\n{}\n",
                testbed::nf::tail(&plan.state_dir.join(format!("{n}.log")), 30)
            )
        })
        .collect();
    for edge in ["edge-x", "edge-y"] {
        let log = testbed::lxd::daemon_dir(&plan.name, edge).join("lxd.log");
        out.push_str(&format!(
            "--- lxd at {edge}\n{}\n",
            testbed::nf::tail(&log, 15)
        ));
    }
    out
}

#[test]
#[ignore = "privileged: needs root; run with --include-ignored as root"]
fn a_handover_live_migrates_an_lxd_service_between_two_lxd_daemons_and_a_failed_pull_keeps_it() {
    require_root();
    if !Path::new("/usr/bin/lxd").exists() {
        eprintln!("skipped: no LXD (/usr/bin/lxd); run scripts/setup");
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let service: testbed::scenario::ServiceSpec = toml::from_str(
        "id = \"ld1\"\nedge = \"edge-x\"\nbackend = \"lxd\"\nkind = \"streamer\"\nserves = [\"ue1\"]",
    )
    .expect("service");
    let (plan, token, guard) = up_with(
        "ci-mgd",
        "tbmd",
        testbed::topo::UpOptions {
            service_specs: Some(vec![service]),
            ..Default::default()
        },
    );
    let hosted = |edge| {
        module_services(&plan, &token, edge, testbed::nf::SVCMOD_LXD_PORT)
            .iter()
            .any(|s| s.service_id == "ld1")
    };
    assert!(
        wait_for(Duration::from_secs(30), || hosted("edge-x")),
        "the LXD module at edge X does not host ld1\n{}",
        lxd_logs(&plan)
    );
    let stream = stream_once_listening(&plan);
    for (to, here, gone) in [
        ("site-b", "edge-y", "edge-x"),
        ("site-a", "edge-x", "edge-y"),
    ] {
        let (o, client_gap) = hand_over_completed(
            &plan,
            &token,
            to,
            &stream,
            &format!("ld1 (LXD) {gone} → {here}"),
        );
        let src = o
            .relocation
            .as_ref()
            .and_then(|m| m.source.as_ref())
            .expect("source record");
        assert_eq!(src.service.relocation_type, model::smo::RelocationType::Lxd);
        assert!(
            wait_for(Duration::from_secs(10), || !hosted(gone)),
            "ld1 still hosted at {gone}\n{}",
            lxd_logs(&plan)
        );
        assert!(hosted(here), "ld1 not hosted at {here}");
        let p_here = ports(&plan, here);
        assert!(p_here.iter().any(|p| p == "s-ld1"), "{p_here:?}");
        // The source removes its stopped instance and port after answering.
        assert!(
            wait_for(Duration::from_secs(10), || !ports(&plan, gone)
                .iter()
                .any(|p| p == "s-ld1")),
            "s-ld1 still on {gone}'s bridge: {:?}",
            ports(&plan, gone)
        );
        assert_eq!(
            lxd_identity(&plan, "ld1", here),
            (STREAM_SERVICE_IP.to_string(), STREAM_SERVICE_MAC.to_owned()),
            "address and MAC at {here}"
        );
        eprintln!("ue1 → {to}: {}", summary(&o, client_gap));
    }
    // The target's pull fails (LXD cannot make the service's port there): the relocation
    // FAILS and the service keeps serving at X, its stream byte-exact on the same connection.
    testbed::migration::arm_fault(&plan, &token, "edge-y", svcmod::Fault::CorruptImages)
        .expect("arm the fault at edge Y");
    let (o, client_gap) = hand_over(&plan, &token, "site-b", &stream);
    eprintln!(
        "\n===== ue1 → site-b with a failing pull at edge Y\n{}",
        testbed::migration::text("ue1", &o)
    );
    assert_eq!(
        state_of(&o),
        RelocationState::Failed,
        "{}\n{}",
        testbed::migration::text("ue1", &o),
        lxd_logs(&plan)
    );
    assert!(
        hosted("edge-x") && !hosted("edge-y"),
        "ld1 not (only) at edge X"
    );
    assert_eq!(
        lxd_identity(&plan, "ld1", "edge-x"),
        (STREAM_SERVICE_IP.to_string(), STREAM_SERVICE_MAC.to_owned())
    );
    let before = stream.watch.records();
    std::thread::sleep(Duration::from_secs(2));
    let through = stream.watch.records() - before;
    assert!(
        through >= 100,
        "only {through} records in 2 s through the trombone"
    );
    eprintln!(
        "after the failed pull: {through} records in 2 s; {}",
        summary(&o, client_gap)
    );
    let rep = stream.finish();
    assert!(
        rep.intact && rep.disconnected.is_none(),
        "stream not byte-exact on one connection: {rep:?}"
    );
    drop(guard);
    assert!(netkit::Netns::list_with_prefix("tbmd-").is_empty());
    let dirs = Path::new(testbed::lxd::ROOT).join("ci-mgd");
    assert!(!dirs.exists(), "{} left", dirs.display());
    // No pool loop device (inside a daemon's mount namespace its file is /var/lib/lxd/disks/…),
    // no cgroup of the instance in any hierarchy.
    let loops = String::from_utf8_lossy(
        &std::process::Command::new("losetup")
            .arg("-a")
            .output()
            .expect("losetup")
            .stdout,
    )
    .into_owned();
    assert!(
        !loops.contains("/var/lib/lxd/disks/") && !loops.contains("/var/lib/testbed/lxd/ci-mgd"),
        "loop devices left: {loops}"
    );
    let instance = svcmod::lxd_backend::instance_name("tbmd", "ld1");
    let cgroups: Vec<String> = std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .flat_map(|h| std::fs::read_dir(h.path()).into_iter().flatten())
        .filter_map(Result::ok)
        .map(|c| c.path().display().to_string())
        .filter(|p| p.contains(&instance))
        .collect();
    assert!(cgroups.is_empty(), "cgroups left: {cgroups:?}");
}

//! Privileged end-to-end test of the thesis's real streaming service: `testbed up` with one
//! nginx-rtmp service (CRIU backend, stop-and-copy) in edge X; ue1 plays the 720p test video with
//! ffmpeg (the testbed's player) over RTMP; handing ue1 over to site B live-migrates nginx (its
//! master and worker, the RTMP session's TCP connection, the open video file) to edge Y, and the
//! player plays on, on the same connection; handing back moves it back.
//!
//! `#[ignore]`d (a plain `cargo test` counts it as skipped); `scripts/test` runs it as root after
//! `cargo build --bins`. As a normal user, or without nginx, its RTMP module, ffmpeg or CRIU, it
//! prints why and returns.

use model::smo::{RelocationPhase, RelocationState};
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use testbed::migration::HandoverOutcome;
use testbed::plan::Plan;
use testbed::player::{largest_stall, PlayOptions, Player};
use testbed::spec::TopologySpec;
use testbed::state::State;
use testbed::{rtmp, topo};

#[allow(dead_code)]
mod common;
use common::{in_ns, wait_for, Guard};

const NAME: &str = "ci-rt";
const PREFIX: &str = "tbrt";
const SERVICE: &str = "nginx";
/// How long a migration may take before the test gives up waiting.
const MIGRATION_LIMIT: Duration = Duration::from_secs(60);

/// Why the test cannot run here, if it cannot.
fn cannot_run() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (namespaces, TUN, OVS, CRIU); run `sudo scripts/test`".into());
    }
    for (path, what) in [
        (rtmp::NGINX, "nginx (nginx-light)"),
        (
            rtmp::RTMP_MODULE,
            "the nginx RTMP module (libnginx-mod-rtmp)",
        ),
    ] {
        if !std::path::Path::new(path).exists() {
            return Some(format!("no {what} at {path}; run scripts/setup"));
        }
    }
    for (tool, arg) in [("ffmpeg", "-version"), ("criu", "--version"), ("ss", "-V")] {
        if !Command::new(tool)
            .arg(arg)
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return Some(format!("no working `{tool}`; run scripts/setup"));
        }
    }
    None
}

fn logs(plan: &Plan) -> String {
    let mut out: String = ["svcmod-x", "svcmod-y", "smo-x", "smo-y"]
        .iter()
        .map(|n| {
            format!(
                "--- {n}\n{}\n",
                testbed::nf::tail(&plan.state_dir.join(format!("{n}.log")), 30)
            )
        })
        .collect();
    out.push_str(&format!(
        "--- nginx error log\n{}\n",
        testbed::nf::tail(&rtmp::error_log_path(&plan.state_dir, SERVICE), 20)
    ));
    out
}

/// `two-site` as `ci-rt`/`tbrt` with one nginx-rtmp service (criu, stop-and-copy) in edge X.
fn up() -> (Plan, String, Guard) {
    let mut spec = TopologySpec::builtin("two-site").expect("builtin");
    spec.name = NAME.into();
    spec.prefix = PREFIX.into();
    topo::down(NAME, Some(PREFIX));
    let guard = Guard(NAME.into(), PREFIX.into());
    let service = toml::from_str(&format!(
        "id = \"{SERVICE}\"\nedge = \"edge-x\"\nbackend = \"criu\"\nstrategy = \"stop_and_copy\"\n\
         kind = \"nginx-rtmp\"\nserves = [\"ue1\"]"
    ))
    .expect("service spec");
    let opts = topo::UpOptions {
        service_specs: Some(vec![service]),
        ..topo::UpOptions::default()
    };
    let plan = topo::up(&spec, opts).expect("testbed up with an nginx-rtmp service");
    let token = State::load(&plan.state_dir)
        .expect("state")
        .and_then(|s| s.token)
        .expect("token");
    (plan, token, guard)
}

fn service_netns(plan: &Plan, edge: &str) -> netkit::Netns {
    netkit::Netns::new(plan.service_netns(SERVICE, edge))
}

/// The service's address and MAC inside its namespace at `edge`.
fn identity(plan: &Plan, edge: &str) -> (String, String) {
    common::eth0_identity(&[&format!(
        "--net=/run/netns/{}",
        service_netns(plan, edge).name()
    )])
}

/// nginx's processes in the service's namespace at `edge` (their command lines; at the first
/// edge the `unshare` that started the tree is there too, and not counted).
fn nginx_tree(plan: &Plan, edge: &str) -> Vec<String> {
    let mut v: Vec<String> = service_netns(plan, edge)
        .inode()
        .map(netkit::process::pids_in_netns)
        .unwrap_or_default()
        .into_iter()
        .filter_map(netkit::process::cmdline)
        .map(|c| c.trim().to_owned())
        .filter(|c| c.starts_with("nginx:"))
        .collect();
    v.sort();
    v
}

fn assert_nginx_tree(plan: &Plan, edge: &str) {
    let tree = nginx_tree(plan, edge);
    assert!(
        tree.len() == 2
            && tree[0].starts_with("nginx: master process")
            && tree[1].starts_with("nginx: worker process"),
        "nginx's tree at {edge}: {tree:?}\n{}",
        logs(plan)
    );
}

/// ue1's established TCP connections to the service's RTMP port, as `local-addr:port`.
fn ue_rtmp_connections(plan: &Plan, ip: Ipv4Addr) -> Vec<String> {
    let peer = format!("{ip}:{}", rtmp::RTMP_PORT);
    in_ns(&plan.netns("ue1"), &["ss", "-tnH", "state", "established"])
        .lines()
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            let at = cols.iter().position(|c| *c == peer)?;
            at.checked_sub(1).map(|i| cols[i].to_owned())
        })
        .collect()
}

/// Plays the service's test video in ue1 (retrying while ue1's session and nginx come up) until
/// 2 s of media have played.
fn start_player(plan: &Plan, ip: Ipv4Addr) -> Player {
    let ns = service_netns(plan, "edge-x");
    assert!(
        wait_for(Duration::from_secs(15), || ns.exists()
            && in_ns(ns.name(), &["ss", "-ltnH"]).contains(":1935")),
        "nginx does not listen on 1935 in {}\n{}",
        ns.name(),
        logs(plan)
    );
    let start = Instant::now();
    loop {
        let opts = PlayOptions {
            url: rtmp::play_url(ip),
            duration_ms: 900_000,
            buffer_ms: testbed::player::DEFAULT_BUFFER_MS,
        };
        let mut player = netkit::Netns::new(plan.netns("ue1"))
            .run_in(move || Player::start(&opts))
            .expect("enter ue1")
            .expect("ffmpeg starts");
        let watch = player.watch();
        if wait_for(Duration::from_secs(8), || {
            watch.media_ms() > 2000.0 || player.has_exited()
        }) && !player.has_exited()
        {
            return player;
        }
        let rep = player.finish();
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "ue1 cannot play {}: {rep:#?}\n{}",
            rtmp::play_url(ip),
            logs(plan)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1e3
}

/// One line of numbers for a relocation.
fn summary(o: &HandoverOutcome, stall_ms: f64) -> String {
    let m = o.relocation.as_ref();
    let x = m
        .and_then(|m| m.source.as_ref())
        .and_then(|r| r.execute.as_ref());
    let step = |name: &str| {
        x.and_then(|x| x.steps.iter().find(|s| s.step.starts_with(name)))
            .map_or_else(|| "-".into(), |s| format!("{:.1}", ms(s.took_us)))
    };
    format!(
        "relocation total {} ms; module {} ms (dump {} ms, transfer {} ms, restore {} ms, resume {} ms); \
         {} bytes moved; UE-side largest gap {} ms ({}); player's largest stall {stall_ms:.0} ms",
        m.and_then(|m| m.total_us())
            .map_or_else(|| "-".into(), |t| format!("{:.1}", ms(t))),
        x.map_or_else(|| "-".into(), |x| format!("{:.1}", ms(x.took_us))),
        step("dump"),
        step("transfer"),
        step("restore"),
        step("resume"),
        x.and_then(|x| x.bytes_moved)
            .map_or_else(|| "-".into(), |b| b.to_string()),
        o.ue_downtime
            .as_ref()
            .map_or_else(|| "-".into(), |d| format!("{:.1}", d.largest_gap_ms)),
        o.ue_downtime
            .as_ref()
            .and_then(|d| d.flow.clone())
            .unwrap_or_default(),
    )
}

#[test]
#[ignore = "privileged: needs root; run with --include-ignored as root"]
fn a_handover_live_migrates_nginx_rtmp_while_ue1_plays_and_back() {
    if let Some(why) = cannot_run() {
        eprintln!("skipped: {why}");
        return;
    }
    let (plan, token, guard) = up();
    let svc = plan.service(SERVICE).expect("planned service").clone();
    assert!(rtmp::media_path().is_file(), "up made the test video");
    let mut player = start_player(&plan, svc.ipv4_addr);
    assert_nginx_tree(&plan, "edge-x");
    let watch = player.watch();
    std::thread::sleep(Duration::from_secs(5));
    let conn = ue_rtmp_connections(&plan, svc.ipv4_addr);
    assert_eq!(conn.len(), 1, "ue1's RTMP connections: {conn:?}");

    for (to, here, gone) in [
        ("site-b", "edge-y", "edge-x"),
        ("site-a", "edge-x", "edge-y"),
    ] {
        let from_ms = player.elapsed().as_secs_f64() * 1e3;
        let o = testbed::migration::handover_and_follow(
            &plan,
            &token,
            "ue1",
            to,
            Some(MIGRATION_LIMIT),
        )
        .unwrap_or_else(|e| panic!("handover to {to}: {e}\n{}", logs(&plan)));
        eprintln!(
            "\n===== ue1 → {to}: {SERVICE} {gone} → {here}\n{}",
            testbed::migration::text("ue1", &o)
        );
        let m = o
            .relocation
            .as_ref()
            .unwrap_or_else(|| panic!("no relocation: {:?}\n{}", o.relocation_note, logs(&plan)));
        let src = m.source.as_ref().expect("source record");
        assert_eq!(
            src.state,
            RelocationState::Completed,
            "{}\n{}",
            testbed::migration::text("ue1", &o),
            logs(&plan)
        );
        assert_eq!(src.service.service_id, SERVICE);
        for side in [m.source.as_ref(), m.target.as_ref()] {
            let phases: Vec<RelocationPhase> = side
                .expect("both sides' records")
                .phases
                .iter()
                .map(|p| p.phase)
                .collect();
            assert_eq!(phases, RelocationPhase::SUCCESS_PATH, "{m:#?}");
        }
        // The service runs at `here` only, with its address and MAC.
        assert!(
            wait_for(Duration::from_secs(5), || !service_netns(&plan, gone)
                .exists()),
            "{} still exists",
            service_netns(&plan, gone).name()
        );
        assert!(
            service_netns(&plan, here).exists(),
            "{} missing",
            service_netns(&plan, here).name()
        );
        assert_nginx_tree(&plan, here);
        let (ip, mac) = identity(&plan, here);
        assert_eq!(ip, svc.ipv4_addr.to_string(), "address at {here}");
        assert_eq!(mac, svc.mac_addr, "MAC at {here}");
        // The player plays on: ≥ 3 s of media in the next 4 s, ffmpeg still running, on the
        // same TCP connection.
        let m0 = watch.media_ms();
        std::thread::sleep(Duration::from_secs(4));
        let advanced = watch.media_ms() - m0;
        if player.has_exited() {
            let rep = player.finish();
            panic!(
                "the player stopped after the move to {here}: {rep:#?}\n{}",
                logs(&plan)
            );
        }
        assert!(
            advanced >= 3000.0,
            "only {advanced:.0} ms of media in the 4 s after the move to {here}\n{}",
            logs(&plan)
        );
        let after = ue_rtmp_connections(&plan, svc.ipv4_addr);
        assert_eq!(after, conn, "ue1's RTMP connection changed");
        let d = o.ue_downtime.as_ref().expect("UE-side downtime measured");
        assert!(
            d.flow.as_deref().is_some_and(|f| f.contains(":1935")),
            "the largest gap is not the RTMP stream's: {d:?}"
        );
        let to_ms = player.elapsed().as_secs_f64() * 1e3;
        let stall = largest_stall(&watch.samples(), from_ms, to_ms).map_or(0.0, |s| s.ms);
        eprintln!(
            "ue1 → {to} ({gone} → {here}): {}; media +{:.1} s in the 4 s after",
            summary(&o, stall),
            advanced / 1e3
        );
    }
    let rep = player.finish();
    eprintln!(
        "player: {}",
        serde_json::to_string(&rep).unwrap_or_default()
    );
    assert!(!rep.exited_early, "{rep:#?}");
    assert!(rep.ok, "{rep:#?}");
    // The player binary (`tbprobe rtmp-play`, as `testbed exec ue1 -- tbprobe …` runs it) plays
    // the migrated service on a fresh connection.
    let tbprobe = testbed::nf::bin_dir().join("tbprobe");
    let url = rtmp::play_url(svc.ipv4_addr);
    let out = Command::new("ip")
        .args(["netns", "exec", &plan.netns("ue1")])
        .arg(&tbprobe)
        .args(["rtmp-play", &url, "--seconds", "3"])
        .output()
        .expect("tbprobe rtmp-play");
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("tbprobe rtmp-play: {}", text.trim());
    let again: serde_json::Value = serde_json::from_str(text.trim()).expect("one JSON report");
    assert!(out.status.success() && again["ok"] == true, "{again:#}");
    assert!(
        again["media_seconds"].as_f64().unwrap_or(0.0) >= 2.0,
        "{again:#}"
    );
    let log = std::fs::read_to_string(rtmp::error_log_path(&plan.state_dir, SERVICE))
        .expect("nginx error log");
    for bad in ["[emerg]", "[alert]", "[crit]"] {
        assert!(!log.contains(bad), "nginx logged {bad}:\n{log}");
    }
    drop(guard);
    assert!(netkit::Netns::list_with_prefix(&format!("{PREFIX}-")).is_empty());
    assert!(!plan.state_dir.exists());
}

//! Privileged end-to-end tests of the thesis's real streaming service: `testbed up` with one
//! nginx-rtmp service (stop-and-copy; on the CRIU backend, in an LXC container, in an LXD container) in edge X; ue1 plays the 720p test video with
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
use testbed::scenario::Backend;
use testbed::{rtmp, topo};

#[allow(dead_code)]
mod common;
use common::{in_ns, wait_for, Guard};

/// The one nginx-rtmp service.
const SERVICE: &str = "nginx";
/// How long a migration may take before the test gives up waiting.
const MIGRATION_LIMIT: Duration = Duration::from_secs(60);
/// One testbed at a time: both tests play 720p video through GTP-U on 2 cores.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Why the test cannot run here, if it cannot.
fn cannot_run(backend: Backend) -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (namespaces, TUN, OVS, CRIU); run `scripts/test` as root".into());
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
    let mut tools = vec![("ffmpeg", "-version"), ("criu", "--version"), ("ss", "-V")];
    match backend {
        Backend::Lxc => tools.push(("lxc-checkpoint", "--version")),
        Backend::Lxd => tools.push(("lxd", "--version")),
        Backend::Criu => {}
    }
    for (tool, arg) in tools {
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

/// The testbed of one backend's test.
struct Bed {
    plan: Plan,
    token: String,
    backend: Backend,
}

impl Bed {
    /// `two-site` with one nginx-rtmp service (stop-and-copy, on `backend`) in edge X, under a
    /// name and prefix of its own.
    fn up(backend: Backend) -> (Self, Guard) {
        let (name, prefix) = match backend {
            Backend::Lxc => ("ci-rl", "tbrl"),
            Backend::Lxd => ("ci-rd", "tbrd"),
            Backend::Criu => ("ci-rt", "tbrt"),
        };
        let service = toml::from_str(&format!(
            "id = \"{SERVICE}\"\nedge = \"edge-x\"\nbackend = \"{backend}\"\n\
             strategy = \"stop_and_copy\"\nkind = \"nginx-rtmp\"\nserves = [\"ue1\"]"
        ))
        .expect("service spec");
        let opts = topo::UpOptions {
            service_specs: Some(vec![service]),
            ..topo::UpOptions::default()
        };
        let (plan, token, guard) = common::up_with(name, prefix, opts);
        (
            Self {
                plan,
                token,
                backend,
            },
            guard,
        )
    }

    /// The service's network namespace at `edge` as a file `nsenter --net=` takes (CRIU: its
    /// named namespace; LXC: its init's), if it runs there.
    fn ns(&self, edge: &str) -> Option<String> {
        match self.backend {
            Backend::Lxc => common::lxc_init_pid(&self.plan, SERVICE, edge)
                .map(|pid| format!("/proc/{pid}/ns/net")),
            Backend::Lxd => common::lxd_init_pid(&self.plan, SERVICE, edge)
                .map(|pid| format!("/proc/{pid}/ns/net")),
            Backend::Criu => {
                let ns = netkit::Netns::new(self.plan.service_netns(SERVICE, edge));
                ns.exists().then(|| ns.path().display().to_string())
            }
        }
    }

    /// The stdout of `args` in the service's network namespace at `edge` (empty if none).
    fn in_service(&self, edge: &str, args: &[&str]) -> String {
        let Some(ns) = self.ns(edge) else {
            return String::new();
        };
        let out = Command::new("nsenter")
            .arg(format!("--net={ns}"))
            .args(args)
            .output()
            .expect("nsenter");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// nginx's error log (CRIU: under the state dir; LXC: in the container's own /tmp).
    fn error_log(&self) -> String {
        match self.backend {
            Backend::Lxc | Backend::Lxd => ["edge-x", "edge-y"]
                .iter()
                .find_map(|e| {
                    common::lxc_init_pid(&self.plan, SERVICE, e)
                        .or_else(|| common::lxd_init_pid(&self.plan, SERVICE, e))
                })
                .and_then(|pid| {
                    Command::new("nsenter")
                        .args(["-t", &pid.to_string(), "-m", "cat"])
                        .arg(std::path::Path::new(rtmp::LXC_SERVICE_DIR).join("error.log"))
                        .output()
                        .ok()
                })
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default(),
            _ => std::fs::read_to_string(rtmp::error_log_path(&self.plan.state_dir, SERVICE))
                .unwrap_or_default(),
        }
    }

    fn logs(&self) -> String {
        let modules: &[&str] = match self.backend {
            Backend::Lxc => &["svcmod-lxc-x", "svcmod-lxc-y"],
            Backend::Lxd => &["svcmod-lxd-x", "svcmod-lxd-y"],
            Backend::Criu => &["svcmod-x", "svcmod-y"],
        };
        let mut out: String = modules
            .iter()
            .chain(&["smo-x", "smo-y"])
            .map(|n| {
                format!(
                    "--- {n}\n{}\n",
                    testbed::nf::tail(&self.plan.state_dir.join(format!("{n}.log")), 30)
                )
            })
            .collect();
        let log = self.error_log();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        out.push_str("--- nginx error log\n");
        for l in tail.into_iter().rev() {
            out.push_str(l);
            out.push('\n');
        }
        out
    }

    /// The service's address and MAC inside its namespace at `edge`.
    fn identity(&self, edge: &str) -> (String, String) {
        let ns = self
            .ns(edge)
            .unwrap_or_else(|| panic!("{SERVICE} does not run at {edge}"));
        common::eth0_identity(&[&format!("--net={ns}")])
    }

    /// nginx's processes in the service's namespace at `edge` (their command lines; at the first
    /// edge the `unshare` that started a CRIU tree is there too, and not counted).
    fn nginx_tree(&self, edge: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .ns(edge)
            .and_then(|ns| std::fs::metadata(ns).ok())
            .map(|m| netkit::process::pids_in_netns(std::os::unix::fs::MetadataExt::ino(&m)))
            .unwrap_or_default()
            .into_iter()
            .filter_map(netkit::process::cmdline)
            .map(|c| c.trim().to_owned())
            .filter(|c| c.starts_with("nginx:"))
            .collect();
        v.sort();
        v
    }

    fn assert_nginx_tree(&self, edge: &str) {
        let tree = self.nginx_tree(edge);
        assert!(
            tree.len() == 2
                && tree[0].starts_with("nginx: master process")
                && tree[1].starts_with("nginx: worker process"),
            "nginx's tree at {edge}: {tree:?}\n{}",
            self.logs()
        );
    }
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
fn start_player(bed: &Bed, ip: Ipv4Addr) -> Player {
    let plan = &bed.plan;
    assert!(
        wait_for(Duration::from_secs(15), || bed
            .in_service("edge-x", &["ss", "-ltnH"])
            .contains(":1935")),
        "nginx does not listen on 1935 at edge-x\n{}",
        bed.logs()
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
            bed.logs()
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
    migrates_nginx_and_back(Backend::Criu);
}

#[test]
#[ignore = "privileged: needs root; run with --include-ignored as root"]
fn a_handover_live_migrates_nginx_rtmp_in_an_lxc_container_while_ue1_plays_and_back() {
    migrates_nginx_and_back(Backend::Lxc);
}

#[test]
#[ignore = "privileged: needs root; run with --include-ignored as root"]
fn a_handover_live_migrates_nginx_rtmp_between_lxd_daemons_while_ue1_plays_and_back() {
    migrates_nginx_and_back(Backend::Lxd);
}

/// ue1 plays the video from nginx (on `backend`) in edge X; handing it over to site B and back
/// moves nginx there and back while the player plays on, on the same connection.
fn migrates_nginx_and_back(backend: Backend) {
    if let Some(why) = cannot_run(backend) {
        eprintln!("skipped: {why}");
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (bed, guard) = Bed::up(backend);
    let (plan, token) = (&bed.plan, &bed.token);
    let svc = plan.service(SERVICE).expect("planned service").clone();
    assert!(rtmp::media_path().is_file(), "up made the test video");
    let mut player = start_player(&bed, svc.ipv4_addr);
    bed.assert_nginx_tree("edge-x");
    let watch = player.watch();
    std::thread::sleep(Duration::from_secs(5));
    let conn = ue_rtmp_connections(plan, svc.ipv4_addr);
    assert_eq!(conn.len(), 1, "ue1's RTMP connections: {conn:?}");

    for (to, here, gone) in [
        ("site-b", "edge-y", "edge-x"),
        ("site-a", "edge-x", "edge-y"),
    ] {
        let from_ms = player.elapsed().as_secs_f64() * 1e3;
        let o =
            testbed::migration::handover_and_follow(plan, token, "ue1", to, Some(MIGRATION_LIMIT))
                .unwrap_or_else(|e| panic!("handover to {to}: {e}\n{}", bed.logs()));
        eprintln!(
            "\n===== ue1 → {to}: {SERVICE} {gone} → {here}\n{}",
            testbed::migration::text("ue1", &o)
        );
        let m = o
            .relocation
            .as_ref()
            .unwrap_or_else(|| panic!("no relocation: {:?}\n{}", o.relocation_note, bed.logs()));
        let src = m.source.as_ref().expect("source record");
        assert_eq!(
            src.state,
            RelocationState::Completed,
            "{}\n{}",
            testbed::migration::text("ue1", &o),
            bed.logs()
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
            wait_for(Duration::from_secs(5), || bed.ns(gone).is_none()),
            "{SERVICE} still runs at {gone}"
        );
        assert!(bed.ns(here).is_some(), "{SERVICE} does not run at {here}");
        bed.assert_nginx_tree(here);
        let (ip, mac) = bed.identity(here);
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
                bed.logs()
            );
        }
        assert!(
            advanced >= 3000.0,
            "only {advanced:.0} ms of media in the 4 s after the move to {here}\n{}",
            bed.logs()
        );
        let after = ue_rtmp_connections(plan, svc.ipv4_addr);
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
    let log = bed.error_log();
    assert!(
        log.contains("start worker process"),
        "nginx's error log (info) is there: {log}"
    );
    for bad in ["[emerg]", "[alert]", "[crit]"] {
        assert!(!log.contains(bad), "nginx logged {bad}:\n{log}");
    }
    drop(guard);
    assert!(netkit::Netns::list_with_prefix(&format!("{}-", plan.prefix)).is_empty());
    assert!(!plan.state_dir.exists());
}

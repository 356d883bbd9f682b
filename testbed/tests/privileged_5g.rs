//! Privileged end-to-end tests of the 5G stand-ins in the real topology: UE traffic through GTP-U
//! (checked with tshark), a TCP stream and a 10 ms ping across Xn handovers with UPF relocation,
//! UP_PATH_CH notifications to a subscriber in an edge cloud, an SMF killed with SIGKILL during
//! a path switch and after it, and an AF at the NEF whose acknowledgement the path switch waits
//! for while the UE's downlink stays on the old path.
//!
//! `#[ignore]`d (a plain `cargo test` counts them as skipped); `scripts/test` runs them as root.

use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use testbed::plan::Plan;

static SERIAL: Mutex<()> = Mutex::new(());

mod common;
use common::{require_root, up};

fn in_ns(plan: &Plan, node: &str, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &plan.netns(node)]).args(args);
    c
}

fn ok(mut c: Command) -> (bool, String) {
    let out = c.output().expect("run");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A tcpdump on bridge `bridge` of the fabric writing what `filter` selects to `pcap`; a second
/// later, so that it captures from the start.
fn capture(plan: &Plan, bridge: &str, pcap: &std::path::Path, filter: &str) -> std::process::Child {
    let c = in_ns(
        plan,
        "fabric",
        &[
            "tcpdump",
            "-Z",
            "root",
            "--immediate-mode",
            "-i",
            bridge,
            "-U",
            "-w",
        ],
    )
    .arg(pcap)
    .arg(filter)
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .expect("tcpdump");
    std::thread::sleep(Duration::from_secs(1));
    c
}

/// Ends a tcpdump with SIGINT, so it writes out everything it captured.
fn stop_capture(c: &mut std::process::Child) {
    let pid = nix::unistd::Pid::from_raw(c.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
    let _ = c.wait();
}

/// Standard output only (tshark warns on stderr when run as root).
fn stdout_of(mut c: Command) -> String {
    String::from_utf8_lossy(&c.output().expect("run").stdout).into_owned()
}

fn reach(plan: &Plan, node: &str, dst: &str) -> bool {
    (0..3).any(|_| {
        ok(in_ns(
            plan,
            node,
            &["ping", "-c", "1", "-W", "1", "-q", dst],
        ))
        .0
    })
}

fn handover(plan: &Plan, token: &str, to: &str) -> model::ran::xn::HandoverReport {
    testbed::handover::handover(plan, token, "ue1", to).unwrap_or_else(|e| {
        let logs: String = ["gnb-a", "gnb-b", "smf", "upf-a", "upf-b", "ue1"]
            .iter()
            .map(|n| {
                format!(
                    "--- {n}\n{}\n",
                    testbed::nf::tail(&plan.state_dir.join(format!("{n}.log")), 12)
                )
            })
            .collect();
        panic!("handover to {to} failed: {e}\n{logs}")
    })
}

#[test]
#[ignore = "privileged: needs root; run with --include-ignored as root"]
fn ue_traffic_crosses_gtpu_and_a_stream_survives_handovers() {
    require_root();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (plan, token, guard) = up("ci-5g", "tb5g");

    // The UE got its address from the SMF and reaches the central DN and edge X through GTP-U.
    let (_, addr) = ok(in_ns(
        &plan,
        "ue1",
        &["ip", "-4", "-o", "addr", "show", "ue0"],
    ));
    assert!(
        addr.contains("192.168.1."),
        "ue0 has no PDU session address: {addr}"
    );
    let pcap = plan.state_dir.join("n3.pcap");
    let mut n3_capture = capture(&plan, "br-n3", &pcap, "udp port 2152");
    assert!(
        reach(&plan, "ue1", "10.60.0.100"),
        "ue1 cannot reach the central DN"
    );
    assert!(reach(&plan, "ue1", "20.0.0.10"), "ue1 cannot reach edge X");
    std::thread::sleep(Duration::from_millis(300));
    stop_capture(&mut n3_capture);
    let decoded = stdout_of({
        let mut c = Command::new("tshark");
        c.arg("-r").arg(&pcap).args([
            "-d",
            "udp.port==2152,gtp",
            "-T",
            "fields",
            "-e",
            "gtp.teid",
            "-e",
            "gtp.ext_hdr.pdu_ses_con.qos_flow_id",
            "-e",
            "ip.dst",
        ]);
        c
    });
    let lines: Vec<&str> = decoded.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        lines.len() >= 4,
        "tshark decoded too few G-PDUs:\n{decoded}"
    );
    for l in &lines {
        let f: Vec<&str> = l.split('\t').collect();
        assert!(
            f.len() >= 2 && f[0].starts_with("0x") && f[1] == "9",
            "not a G-PDU with QFI 9: {l}"
        );
    }

    // A TCP stream from the central DN survives A→B and B→A with no reconnect and no missing byte.
    let stream = in_ns(&plan, "ue1", &[])
        .arg(testbed::nf::bin_dir().join("tbprobe"))
        .args(["stream", "10.60.0.100:5000", "--seconds", "9"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("stream");
    std::thread::sleep(Duration::from_secs(2));
    let n4 = plan.state_dir.join("n4.pcap");
    let mut n4_capture = capture(&plan, "br-sbi", &n4, "udp port 8805");
    let to_b = handover(&plan, &token, "site-b");
    std::thread::sleep(Duration::from_millis(200));
    stop_capture(&mut n4_capture);
    let pfcp = stdout_of({
        let mut c = Command::new("tshark");
        c.arg("-r").arg(&n4).args([
            "-T",
            "fields",
            "-e",
            "pfcp.msg_type",
            "-e",
            "_ws.expert.severity",
        ]);
        c
    });
    for (msg, name) in [
        ("50", "establishment"),
        ("51", "establishment response"),
        ("52", "modification"),
        ("54", "deletion"),
    ] {
        assert!(
            pfcp.lines().any(|l| l.split('\t').next() == Some(msg)),
            "no PFCP session {name} ({msg}) decoded on N4 during the handover:\n{pfcp}"
        );
    }
    assert_eq!(to_b.target_gnb, "gnb-b");
    assert!(!to_b.timeline.is_empty());
    std::thread::sleep(Duration::from_secs(2));
    let to_a = handover(&plan, &token, "site-a");
    assert_eq!(to_a.target_gnb, "gnb-a");
    let out = stream.wait_with_output().expect("stream output");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stream report: {e}: {:?}", out));
    assert_eq!(
        report["intact"], true,
        "stream broken across handovers: {report}"
    );
    assert!(report["records"].as_u64().unwrap_or(0) > 500, "{report}");
    eprintln!("stream across two handovers: {report}");

    // A 10 ms ping across a handover loses at most one packet.
    let ping = in_ns(
        &plan,
        "ue1",
        &["ping", "-i", "0.01", "-c", "300", "-q", "10.60.0.100"],
    )
    .stdout(Stdio::piped())
    .spawn()
    .expect("ping");
    std::thread::sleep(Duration::from_millis(800));
    handover(&plan, &token, "site-b");
    let out = ping.wait_with_output().expect("ping output");
    let text = String::from_utf8_lossy(&out.stdout);
    let received: u32 = text
        .split(", ")
        .find_map(|p| p.strip_suffix(" received").and_then(|n| n.parse().ok()))
        .unwrap_or(0);
    eprintln!(
        "10 ms ping across a handover: {}",
        text.lines().rev().nth(1).unwrap_or("")
    );
    assert!(
        received >= 299,
        "lost {} of 300 pings across a handover:\n{text}",
        300 - received
    );
    // Now served at site B: edge Y is the local edge cloud.
    assert!(
        reach(&plan, "ue1", "20.0.0.20"),
        "ue1 at site B cannot reach edge Y"
    );
    drop(guard);
}

#[test]
#[ignore = "privileged: needs root; run with --include-ignored as root"]
fn smf_sends_early_and_late_up_path_change_to_a_subscriber_in_edge_x() {
    use axum::routing::post;
    use model::common::DnaiChangeType;
    use model::nsmf_event_exposure::{EventSubscription, NsmfEventExposure};

    require_root();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (plan, token, guard) = up("ci-ee", "tbee");
    let edge = netkit::Netns::new(plan.netns("edge-x"));
    let af = plan
        .node("edge-x")
        .and_then(|n| n.addr("sbi"))
        .expect("edge-x sbi");
    let (subscribed_tx, subscribed_rx) = std::sync::mpsc::channel();
    let tok = token.clone();
    let subscriber = std::thread::spawn(move || {
        edge.run_in(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("rt");
            rt.block_on(async move {
                let (ntx, mut nrx) = tokio::sync::mpsc::unbounded_channel::<serde_json::Value>();
                let router = axum::Router::new().route(
                    "/notify",
                    post(move |sbi::Json(v): sbi::Json<serde_json::Value>| {
                        let ntx = ntx.clone();
                        async move {
                            let _ = ntx.send(v);
                            axum::http::StatusCode::NO_CONTENT
                        }
                    }),
                );
                let listener = tokio::net::TcpListener::bind((af, 9999))
                    .await
                    .expect("bind af");
                tokio::spawn(sbi::serve(
                    listener,
                    router,
                    Some(tok.clone()),
                    std::future::pending(),
                ));
                let client = sbi::Client::new(Some(tok), Duration::from_secs(5));
                let url = "http://10.100.0.10:8000/nsmf-event-exposure/v1/subscriptions";
                for (id, chg) in [
                    ("early", DnaiChangeType::Early),
                    ("late", DnaiChangeType::Late),
                ] {
                    let mut sub = NsmfEventExposure::new(
                        id,
                        format!("http://{af}:9999/notify"),
                        vec![EventSubscription::up_path_change(chg)],
                    );
                    sub.any_ue_ind = Some(true);
                    let created: serde_json::Value =
                        client.post(url, &sub).await.expect("subscribe");
                    assert!(created["subId"].is_string(), "{created}");
                }
                let _ = subscribed_tx.send(());
                let mut got = Vec::new();
                while got.len() < 2 {
                    match tokio::time::timeout(Duration::from_secs(20), nrx.recv()).await {
                        Ok(Some(v)) => got.push(v),
                        _ => break,
                    }
                }
                got
            })
        })
        .expect("run in edge-x")
    });
    subscribed_rx
        .recv_timeout(Duration::from_secs(15))
        .expect("subscribed");
    let report = handover(&plan, &token, "site-b");
    let notifs = subscriber.join().expect("subscriber thread");
    assert_eq!(notifs.len(), 2, "{notifs:?}");
    let schemas = model::schema::SchemaSet::load(model::schema::SchemaSet::default_dir())
        .expect("3GPP schemas");
    let mut kinds = Vec::new();
    for n in &notifs {
        schemas
            .validate(model::schema::names::NSMF_EVENT_EXPOSURE_NOTIFICATION, n)
            .unwrap_or_else(|e| panic!("notification not schema-valid: {e:?}\n{n}"));
        let e = &n["eventNotifs"][0];
        assert_eq!(e["event"], "UP_PATH_CH");
        assert_eq!(e["sourceDnai"], "edge-x");
        assert_eq!(e["targetDnai"], "edge-y");
        assert_eq!(e["sourceUeIpv4Addr"], report.ue_ipv4.to_string());
        assert_eq!(e["targetUeIpv4Addr"], report.ue_ipv4.to_string());
        kinds.push((
            n["notifId"].as_str().unwrap_or("").to_owned(),
            e["dnaiChgType"].as_str().unwrap_or("").to_owned(),
        ));
    }
    kinds.sort();
    assert_eq!(
        kinds,
        [
            ("early".into(), "EARLY".into()),
            ("late".into(), "LATE".into())
        ]
    );
    drop(guard);
}

/// A subscriber of the SMF's `UP_PATH_CH` (TS 29.508, any UE, EARLY and LATE) in edge X: every
/// notification reaches the test as `(notifId, dnaiChgType, sourceDnai)` on the returned channel;
/// the answer to the first EARLY one is held back for `stall`.
fn early_late_subscriber(
    plan: &Plan,
    token: &str,
    stall: Duration,
) -> std::sync::mpsc::Receiver<(String, String, String)> {
    use axum::routing::post;
    use model::common::DnaiChangeType;
    use model::nsmf_event_exposure::{EventSubscription, NsmfEventExposure};

    let edge = netkit::Netns::new(plan.netns("edge-x"));
    let af = plan
        .node("edge-x")
        .and_then(|n| n.addr("sbi"))
        .expect("edge-x sbi");
    let (tx, rx) = std::sync::mpsc::channel();
    let (subscribed_tx, subscribed_rx) = std::sync::mpsc::channel();
    let tok = token.to_owned();
    std::thread::spawn(move || {
        edge.run_in(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("rt");
            rt.block_on(async move {
                let stalled = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                let router = axum::Router::new().route(
                    "/notify",
                    post(move |sbi::Json(v): sbi::Json<serde_json::Value>| {
                        let (tx, stalled) = (tx.clone(), stalled.clone());
                        async move {
                            let e = &v["eventNotifs"][0];
                            let text = |f: &serde_json::Value| f.as_str().unwrap_or("?").to_owned();
                            let kind = text(&e["dnaiChgType"]);
                            let _ = tx.send((
                                text(&v["notifId"]),
                                kind.clone(),
                                text(&e["sourceDnai"]),
                            ));
                            if kind == "EARLY"
                                && !stalled.swap(true, std::sync::atomic::Ordering::SeqCst)
                            {
                                tokio::time::sleep(stall).await;
                            }
                            axum::http::StatusCode::NO_CONTENT
                        }
                    }),
                );
                let listener = tokio::net::TcpListener::bind((af, 9998))
                    .await
                    .expect("bind af");
                let client = sbi::Client::new(Some(tok.clone()), Duration::from_secs(5));
                let mut sub = NsmfEventExposure::new(
                    "crash-af",
                    format!("http://{af}:9998/notify"),
                    vec![EventSubscription::up_path_change(DnaiChangeType::EarlyLate)],
                );
                sub.any_ue_ind = Some(true);
                let created: serde_json::Value = client
                    .post(
                        "http://10.100.0.10:8000/nsmf-event-exposure/v1/subscriptions",
                        &sub,
                    )
                    .await
                    .expect("subscribe");
                assert!(created["subId"].is_string(), "{created}");
                let _ = subscribed_tx.send(());
                let _ = sbi::serve(listener, router, Some(tok), std::future::pending()).await;
            })
        })
        .expect("run in edge-x")
    });
    subscribed_rx
        .recv_timeout(Duration::from_secs(15))
        .expect("subscribed at the smf");
    rx
}

/// The SMF's restart count and whether it runs, from the testbed's state.
fn smf_restarts(plan: &Plan) -> (u32, bool) {
    let state = testbed::state::State::load(&plan.state_dir)
        .expect("state")
        .expect("up");
    let p = state
        .processes
        .iter()
        .find(|p| p.process.name == "smf")
        .expect("smf in the state");
    (p.restarts, p.process.is_running())
}

/// Waits until the supervisor has restarted the SMF `n` times and the new one is ready.
fn await_smf_restart(plan: &Plan, n: u32) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        if smf_restarts(plan) == (n, true) && plan.state_dir.join("smf.ready").exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "the smf was not restarted {n} times: {:?}\n{}",
        smf_restarts(plan),
        std::fs::read_to_string(plan.state_dir.join("supervisor.log")).unwrap_or_default()
    );
}

/// Notifications until `want` of them arrived (or 15 s passed).
fn collect(
    rx: &std::sync::mpsc::Receiver<(String, String, String)>,
    want: usize,
) -> Vec<(String, String, String)> {
    let mut got = Vec::new();
    while got.len() < want {
        match rx.recv_timeout(Duration::from_secs(15)) {
            Ok(n) => got.push(n),
            Err(_) => break,
        }
    }
    got
}

#[test]
#[ignore = "privileged: needs root; run with --include-ignored as root"]
fn an_smf_killed_during_and_after_a_path_switch_comes_back_with_its_sessions_and_subscriptions() {
    require_root();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (plan, token, guard) = common::up_with(
        "ci-smfkill",
        "tbsk",
        testbed::topo::UpOptions {
            services: false,
            ..Default::default()
        },
    );
    assert!(
        reach(&plan, "ue1", "10.60.0.100"),
        "ue1 cannot reach the DN"
    );
    // The subscriber holds its answer to the first EARLY notification: the SMF is then inside
    // the path switch (EARLY sent, nothing at the UPFs yet) when it is killed.
    let notes = early_late_subscriber(&plan, &token, Duration::from_millis(800));
    let (p, t) = (plan.clone(), token.clone());
    let to_b = std::thread::spawn(move || testbed::handover::handover(&p, &t, "ue1", "site-b"));
    let first = notes
        .recv_timeout(Duration::from_secs(10))
        .expect("an EARLY notification for the handover to site B");
    assert_eq!((first.1.as_str(), first.2.as_str()), ("EARLY", "edge-x"));
    testbed::supervise::kill(&plan.name, Some("core"), "smf").expect("kill the smf");
    let report = to_b.join().expect("handover thread").unwrap_or_else(|e| {
        let logs: String = ["smf", "gnb-b", "gnb-a", "supervisor"]
            .iter()
            .map(|n| {
                format!(
                    "--- {n}\n{}\n",
                    testbed::nf::tail(&plan.state_dir.join(format!("{n}.log")), 15)
                )
            })
            .collect();
        panic!("the handover cut by the smf's crash did not complete: {e}\n{logs}")
    });
    assert_eq!(report.target_gnb, "gnb-b");
    eprintln!(
        "handover across the smf's crash: {:#?}",
        report
            .timeline
            .iter()
            .map(|s| (s.step.as_str(), s.at_us, s.took_us))
            .collect::<Vec<_>>()
    );
    await_smf_restart(&plan, 1);
    // The restarted SMF finished the relocation: its LATE notification came (after a repeated
    // EARLY, at least once), and the UE's session works through site B.
    let mut after = Vec::new();
    while !after
        .iter()
        .any(|n: &(String, String, String)| n.1 == "LATE")
    {
        match notes.recv_timeout(Duration::from_secs(15)) {
            Ok(n) => after.push(n),
            Err(_) => break,
        }
    }
    assert!(
        after.iter().any(|n| n.1 == "LATE" && n.2 == "edge-x"),
        "no LATE notification for the relocation to site B: {after:?}"
    );
    eprintln!("notifications after the crash: {after:?}");
    while notes.try_recv().is_ok() {}
    assert!(
        reach(&plan, "ue1", "10.60.0.100"),
        "ue1 lost its session after the smf's crash"
    );

    // Killed again while idle: the next handover finds the session and notifies the same
    // subscription.
    testbed::supervise::kill(&plan.name, Some("core"), "smf").expect("kill the smf again");
    await_smf_restart(&plan, 2);
    assert!(
        reach(&plan, "ue1", "10.60.0.100"),
        "ue1 lost its session after the second crash"
    );
    let back = handover(&plan, &token, "site-a");
    assert_eq!(back.target_gnb, "gnb-a");
    let mut kinds: Vec<(String, String, String)> = collect(&notes, 2);
    kinds.sort();
    assert_eq!(
        kinds,
        [
            ("crash-af".into(), "EARLY".into(), "edge-y".into()),
            ("crash-af".into(), "LATE".into(), "edge-y".into())
        ],
        "the restarted smf did not notify the subscription it had before"
    );
    assert!(
        reach(&plan, "ue1", "10.60.0.100"),
        "ue1 has no session at site A after the handover back"
    );
    drop(guard);
    assert!(netkit::Netns::list_with_prefix("tbsk-").is_empty());
}

/// What the AF at the NEF saw: the TS 29.522 notification, when its acknowledgement went (host
/// wall clock, µs) and the NEF's answer to it.
struct AckedNotification {
    body: serde_json::Value,
    acked_at_unix_us: u64,
    answer: Result<(), String>,
}

/// An AF in edge X (`afId` smo-x) subscribed at the NEF to EARLY `UP_PATH_CHANGE` with
/// `afAckInd`: it answers each notification at once (204) and POSTs `AfAckInfo` SUCCESS to its
/// `afAckUri` `delay` later. The subscription's 201 body comes back first.
fn nef_af(
    plan: &Plan,
    token: &str,
    delay: Duration,
) -> (
    serde_json::Value,
    std::sync::mpsc::Receiver<AckedNotification>,
) {
    use axum::routing::post;

    let edge = netkit::Netns::new(plan.netns("edge-x"));
    let af = plan
        .node("edge-x")
        .and_then(|n| n.addr("sbi"))
        .expect("edge-x sbi");
    let nef = testbed::nf::nef_url(plan);
    let (tx, rx) = std::sync::mpsc::channel();
    let (created_tx, created_rx) = std::sync::mpsc::channel();
    let tok = token.to_owned();
    std::thread::spawn(move || {
        edge.run_in(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("rt");
            rt.block_on(async move {
                let client = sbi::Client::new(Some(tok.clone()), Duration::from_secs(5));
                let acker = client.clone();
                let router = axum::Router::new().route(
                    "/ti",
                    post(move |sbi::Json(v): sbi::Json<serde_json::Value>| {
                        let (tx, client) = (tx.clone(), acker.clone());
                        tokio::spawn(async move {
                            tokio::time::sleep(delay).await;
                            let ack = serde_json::json!({
                                "afTransId": v["afTransId"],
                                "ackResult": {"afStatus": "SUCCESS"}
                            });
                            let acked_at_unix_us = model::ran::unix_now_us();
                            let answer = match v["afAckUri"].as_str() {
                                Some(uri) => client
                                    .post_no_content(uri, &ack)
                                    .await
                                    .map_err(|e| sbi::error_chain(&e)),
                                None => Err("no afAckUri".into()),
                            };
                            let _ = tx.send(AckedNotification {
                                body: v,
                                acked_at_unix_us,
                                answer,
                            });
                        });
                        async { axum::http::StatusCode::NO_CONTENT }
                    }),
                );
                let listener = tokio::net::TcpListener::bind((af, 9997))
                    .await
                    .expect("bind af");
                let sub = serde_json::json!({
                    "afAppId": "stream",
                    "afTransId": "held-1",
                    "anyUeInd": true,
                    "subscribedEvents": ["UP_PATH_CHANGE"],
                    "dnaiChgType": "EARLY",
                    "notificationDestination": format!("http://{af}:9997/ti"),
                    "afAckInd": true,
                    "addrPreserInd": true,
                    "appReloInd": true
                });
                let created: Result<serde_json::Value, _> = client
                    .post(
                        &format!("{nef}/3gpp-traffic-influence/v1/smo-x/subscriptions"),
                        &sub,
                    )
                    .await;
                let _ = created_tx.send(created.map_err(|e| sbi::error_chain(&e)));
                let _ = sbi::serve(listener, router, Some(tok), std::future::pending()).await;
            })
        })
        .expect("run in edge-x")
    });
    let created = created_rx
        .recv_timeout(Duration::from_secs(15))
        .expect("an answer from the nef")
        .unwrap_or_else(|e| panic!("subscription at the nef: {e}"));
    (created, rx)
}

/// Downlink G-PDUs on N3 in `pcap`: (host wall clock µs, outer source, outer destination), for
/// destinations in `gnbs`.
fn downlink_gpdus(
    pcap: &std::path::Path,
    gnbs: &[std::net::Ipv4Addr],
) -> Vec<(u64, std::net::Ipv4Addr, std::net::Ipv4Addr)> {
    let fields = stdout_of({
        let mut c = Command::new("tshark");
        c.arg("-r").arg(pcap).args([
            "-d",
            "udp.port==2152,gtp",
            "-Y",
            "gtp.message == 255",
            "-T",
            "fields",
            "-E",
            "occurrence=f",
            "-e",
            "frame.time_epoch",
            "-e",
            "ip.src",
            "-e",
            "ip.dst",
        ]);
        c
    });
    fields
        .lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let at: f64 = f.next()?.parse().ok()?;
            let src = f.next()?.parse().ok()?;
            let dst = f.next()?.parse().ok()?;
            gnbs.contains(&dst).then_some(((at * 1e6) as u64, src, dst))
        })
        .collect()
}

#[test]
#[ignore = "privileged: needs root; run with --include-ignored as root"]
fn a_path_switch_held_for_the_afs_acknowledgement_keeps_the_downlink_on_the_old_path() {
    require_root();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (plan, token, guard) = common::up_with(
        "ci-afack",
        "tbak",
        testbed::topo::UpOptions {
            services: false,
            ..Default::default()
        },
    );
    let n3 = |node: &str| plan.node(node).and_then(|n| n.addr("n3")).expect(node);
    let (upf_a, upf_b, gnb_a, gnb_b) = (n3("site-a"), n3("site-b"), n3("gnb-a"), n3("gnb-b"));
    let schemas = model::schema::SchemaSet::load(model::schema::SchemaSet::default_dir())
        .expect("3GPP schemas");
    let check = |name: &str, v: &serde_json::Value| {
        schemas
            .validate(name, v)
            .unwrap_or_else(|e| panic!("{v} does not match {name}: {e:?}"))
    };
    let (created, acks) = nef_af(&plan, &token, Duration::from_millis(1500));
    check(model::schema::names::TRAFFIC_INFLU_SUB, &created);
    // The SMOs subscribe at the NEF too (before this AF): the id is whatever the NEF gave.
    let own = created["self"].as_str().expect("self").to_owned();
    let prefix = format!(
        "{}/3gpp-traffic-influence/v1/smo-x/subscriptions/",
        testbed::nf::nef_url(&plan)
    );
    let sub_id = own
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("self {own} is not under {prefix}"))
        .to_owned();
    assert!(sub_id.starts_with("sub-"), "{own}");

    // A stream from the DN's probe server to the UE (its downlink enters at site A's IAP, like
    // edge X's; edge X's own server is out of reach from site B without the SMOs' relocation
    // flows), across the held switch, captured on N3.
    let pcap = plan.state_dir.join("held-n3.pcap");
    let mut n3_capture = capture(&plan, "br-n3", &pcap, "udp port 2152");
    let stream = in_ns(&plan, "ue1", &[])
        .arg(testbed::nf::bin_dir().join("tbprobe"))
        .args(["stream", "10.60.0.100:5000", "--seconds", "7"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("stream");
    std::thread::sleep(Duration::from_secs(2));
    let report = handover(&plan, &token, "site-b");
    let out = stream.wait_with_output().expect("stream output");
    stop_capture(&mut n3_capture);
    let stream_report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stream report: {e}: {out:?}"));
    eprintln!(
        "handover held for the af: {:#?}",
        report
            .timeline
            .iter()
            .map(|s| (s.step.as_str(), s.at_us, s.took_us))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        stream_report["intact"], true,
        "the stream broke across the held switch: {stream_report}"
    );

    // The AF got a TS 29.522 notification with an afAckUri, and the NEF took its answer.
    let acked = acks
        .recv_timeout(Duration::from_secs(5))
        .expect("a notification at the af");
    check(
        model::schema::names::TRAFFIC_INFLUENCE_NOTIFICATION,
        &acked.body,
    );
    assert_eq!(
        (
            &acked.body["dnaiChgType"],
            &acked.body["sourceDnai"],
            &acked.body["targetDnai"]
        ),
        (
            &serde_json::json!("EARLY"),
            &serde_json::json!("edge-x"),
            &serde_json::json!("edge-y")
        )
    );
    assert_eq!(acked.answer, Ok(()), "the acknowledgement was not taken");

    // The hold is in the timeline and ended with the AF's SUCCESS, not with the 2 s limit.
    let hold = report
        .timeline
        .iter()
        .find(|s| s.step.starts_with("smf: hold for af acknowledgements"))
        .unwrap_or_else(|| panic!("no hold in {:?}", report.timeline));
    assert_eq!(
        hold.step,
        format!(
            "smf: hold for af acknowledgements of the early notification (1 expected): {sub_id} SUCCESS"
        )
    );
    let held_from = hold.at_unix_us.expect("wall clock");
    let held_until = held_from + hold.took_us;
    assert!(
        held_until >= acked.acked_at_unix_us,
        "the hold ended before the ack was sent"
    );
    let switched = report
        .timeline
        .iter()
        .find(|s| s.step.starts_with("smf: lr update"))
        .and_then(|s| s.at_unix_us.map(|at| at + s.took_us))
        .expect("the lr update in the timeline");
    eprintln!(
        "hold: {} ms (the af answered {} ms after its start)",
        hold.took_us / 1000,
        acked.acked_at_unix_us.saturating_sub(held_from) / 1000
    );

    // The downlink: from the old UPF (to the source gNB, which forwards over Xn) all through
    // the hold, nothing from the new one; after the switch from the new UPF only.
    let gpdus = downlink_gpdus(&pcap, &[gnb_a, gnb_b]);
    let during: Vec<_> = gpdus
        .iter()
        .filter(|(at, _, _)| (held_from..held_until).contains(at))
        .collect();
    let old = during
        .iter()
        .filter(|(_, s, d)| (*s, *d) == (upf_a, gnb_a))
        .count();
    let new_during = during.iter().filter(|(_, s, _)| *s == upf_b).count();
    let after: Vec<_> = gpdus
        .iter()
        .filter(|(at, _, _)| *at > switched + 200_000)
        .collect();
    let new_after = after
        .iter()
        .filter(|(_, s, d)| (*s, *d) == (upf_b, gnb_b))
        .count();
    let old_after = after.iter().filter(|(_, s, _)| *s == upf_a).count();
    eprintln!(
        "downlink g-pdus: during the hold {old} from the old upf, {new_during} from the new; \
         after the switch {new_after} from the new, {old_after} from the old"
    );
    assert!(
        old > 10,
        "too little downlink on the old path during the hold: {old}"
    );
    assert_eq!(
        new_during, 0,
        "the new upf carried downlink during the hold"
    );
    assert!(
        new_after > 10,
        "too little downlink on the new path after: {new_after}"
    );
    assert_eq!(
        old_after, 0,
        "the old upf still carried downlink after the switch"
    );
    drop(guard);
    assert!(netkit::Netns::list_with_prefix("tbak-").is_empty());
}

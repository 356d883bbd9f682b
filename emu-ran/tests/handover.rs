//! In-process (no root): two real gNBs on 127.0.0.2 / 127.0.0.3, a real UE with a channel TUN, a
//! fake SMF (axum through `sbi::serve`) and a fake UPF (a UDP socket on 127.0.0.4 speaking
//! `wire::gtpu`). Attach, uplink and downlink, then Xn handovers A→B and B→A while the fake UPF
//! streams numbered downlink packets: the UE must get every number once and in order.

#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use emu_ran::gnb::{GnbConfig, GnbPeer, GnbStatus};
use emu_ran::ue::{TunPeer, UeConfig, UeStatus};
use model::ran::n2::{
    PathSwitchAck, PathSwitchRequest, PduSessionSetupRequest, PduSessionSetupResponse,
};
use model::ran::xn::{HandoverReport, HandoverTrigger};
use model::ran::{TimelineStep, TunnelEndpoint};
use sbi::Json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, Mutex};
use wire::gtpu::{self, GtpuRepr, MessageType, PduSessionInfo, Qfi, Teid};

const TOKEN: &str = "test-token";
const SUPI: &str = "imsi-001010000000001";
const UE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);
const UPF: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);
const UL_TEID_A: u32 = 0x1001;
const UL_TEID_B: u32 = 0x2001;

/// A port free for UDP and TCP on every address.
fn free_port(ips: &[Ipv4Addr]) -> u16 {
    for _ in 0..100 {
        let probe = std::net::UdpSocket::bind((ips[0], 0)).unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        let ok = ips.iter().all(|ip| {
            std::net::UdpSocket::bind((*ip, port)).is_ok()
                && std::net::TcpListener::bind((*ip, port)).is_ok()
        });
        if ok {
            return port;
        }
    }
    panic!("no free port");
}

/// The fake UPF: one socket for both "sites", a downlink stream with sequence numbers.
struct FakeUpf {
    socket: Arc<UdpSocket>,
    port: u16,
    state: Mutex<UpfState>,
}

struct UpfState {
    /// Where downlink goes (the serving gNB's tunnel).
    dl_tunnel: Option<TunnelEndpoint>,
    streaming: bool,
    next_seq: u32,
}

fn dl_packet(seq: u32) -> Vec<u8> {
    let mut p = vec![0u8; 32];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&32u16.to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&[20, 0, 0, 10]);
    p[16..20].copy_from_slice(&UE_IP.octets());
    p[20..22].copy_from_slice(&9000u16.to_be_bytes());
    p[22..24].copy_from_slice(&40000u16.to_be_bytes());
    p[24..26].copy_from_slice(&12u16.to_be_bytes());
    p[28..32].copy_from_slice(&seq.to_be_bytes());
    p
}

fn seq_of(p: &[u8]) -> Option<u32> {
    (p.len() == 32 && p[9] == 17).then(|| u32::from_be_bytes([p[28], p[29], p[30], p[31]]))
}

impl FakeUpf {
    async fn send_dl(&self, tunnel: TunnelEndpoint, payload: &[u8]) {
        let repr = GtpuRepr::g_pdu(
            Teid(tunnel.teid),
            Some(PduSessionInfo::downlink(Qfi::new(9).unwrap())),
        );
        let msg = gtpu::to_vec(&repr, payload).unwrap();
        self.socket
            .send_to(&msg, SocketAddrV4::new(tunnel.ipv4, self.port))
            .await
            .unwrap();
    }

    /// Sends a numbered downlink packet every 2 ms while streaming.
    async fn stream(self: Arc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_millis(2)).await;
            let mut s = self.state.lock().await;
            if let (true, Some(t)) = (s.streaming, s.dl_tunnel) {
                let seq = s.next_seq;
                s.next_seq += 1;
                self.send_dl(t, &dl_packet(seq)).await;
            }
        }
    }

    /// Like the SMF's PFCP sequence: the new path first, then the End Marker on the old one.
    async fn switch(&self, new: TunnelEndpoint) {
        let old = {
            let mut s = self.state.lock().await;
            s.dl_tunnel.replace(new)
        };
        // new-path packets overtake the last forwarded ones
        tokio::time::sleep(Duration::from_millis(10)).await;
        if let Some(old) = old {
            let msg = gtpu::to_vec(&GtpuRepr::end_marker(Teid(old.teid)), &[]).unwrap();
            self.socket
                .send_to(&msg, SocketAddrV4::new(old.ipv4, self.port))
                .await
                .unwrap();
        }
    }
}

#[derive(Clone)]
struct FakeSmf {
    upf: Arc<FakeUpf>,
    setups: Arc<Mutex<Vec<PduSessionSetupRequest>>>,
    switches: Arc<Mutex<Vec<PathSwitchRequest>>>,
}

async fn pdu_sessions(
    State(smf): State<FakeSmf>,
    Json(req): Json<PduSessionSetupRequest>,
) -> (StatusCode, Json<PduSessionSetupResponse>) {
    smf.upf.state.lock().await.dl_tunnel = Some(req.gnb_tunnel);
    smf.setups.lock().await.push(req);
    (
        StatusCode::CREATED,
        Json(PduSessionSetupResponse {
            ue_ipv4: UE_IP,
            pdu_session_id: 1,
            qfi: 9,
            upf_tunnel: TunnelEndpoint {
                ipv4: UPF,
                teid: UL_TEID_A,
            },
        }),
    )
}

async fn path_switch(
    State(smf): State<FakeSmf>,
    Json(req): Json<PathSwitchRequest>,
) -> Json<PathSwitchAck> {
    let start = std::time::Instant::now();
    smf.upf.switch(req.gnb_tunnel).await;
    let took = start.elapsed().as_micros() as u64;
    let (teid, upf) = if req.gnb == "gnb-b" {
        (UL_TEID_B, "upf-b")
    } else {
        (UL_TEID_A, "upf-a")
    };
    smf.switches.lock().await.push(req);
    Json(PathSwitchAck {
        upf_tunnel: TunnelEndpoint { ipv4: UPF, teid },
        upf: upf.into(),
        timeline: vec![TimelineStep {
            step: "pfcp session modification at the source upf (end marker)".into(),
            at_us: 0,
            took_us: took,
            at_unix_us: None,
        }],
    })
}

fn gnb_config(
    name: &str,
    ip: Ipv4Addr,
    gtpu_port: u16,
    http_port: u16,
    smf: SocketAddr,
    peer: (&str, Ipv4Addr),
) -> GnbConfig {
    GnbConfig {
        name: name.into(),
        site: name.trim_start_matches("gnb-").into(),
        radio_addr: SocketAddrV4::new(ip, 0),
        n3_addr: ip,
        xn_addr: ip,
        gtpu_bind: SocketAddrV4::new(ip, gtpu_port),
        http_addr: SocketAddrV4::new(ip, http_port),
        smf_url: format!("http://{smf}"),
        token: Some(TOKEN.into()),
        qfi: 9,
        peers: vec![GnbPeer {
            name: peer.0.into(),
            xn_url: format!("http://{}:{http_port}", peer.1),
        }],
    }
}

/// A raw HTTP/1.1 request over the UE's unix socket; returns (status, body).
async fn ue_api(path: &PathBuf, method: &str, target: &str) -> (u16, String) {
    let mut s = tokio::net::UnixStream::connect(path).await.unwrap();
    let req = format!(
        "{method} {target} HTTP/1.1\r\nHost: ue\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8(buf).unwrap();
    let status = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

async fn next_ul(rx: &mut mpsc::UnboundedReceiver<(GtpuRepr, Vec<u8>)>) -> (GtpuRepr, Vec<u8>) {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("uplink in time")
        .unwrap()
}

async fn next_dl(peer: &mut TunPeer) -> Vec<u8> {
    tokio::time::timeout(Duration::from_secs(5), peer.downlink.recv())
        .await
        .expect("downlink in time")
        .unwrap()
}

/// Waits until the fake UPF has sent `n` stream packets since sequence number `since`.
async fn sent_since(upf: &FakeUpf, since: u32, n: u32) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while upf.state.lock().await.next_seq < since + n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the fake UPF sent fewer than {n} packets in 10 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Streams downlink, hands the UE over with `trigger_url`, and checks the sequence numbers.
async fn handover_while_streaming(
    client: &sbi::Client,
    upf: &FakeUpf,
    peer: &mut TunPeer,
    trigger_url: &str,
    ue: &str,
    target: &str,
) -> HandoverReport {
    let first = {
        let mut s = upf.state.lock().await;
        s.streaming = true;
        s.next_seq
    };
    // At least 25 packets before and 25 after the handover, however slow the machine is.
    sent_since(upf, first, 25).await;
    let report: HandoverReport = client
        .post(
            trigger_url,
            &HandoverTrigger {
                ue: ue.into(),
                target_gnb: target.into(),
            },
        )
        .await
        .expect("handover report");
    let after = upf.state.lock().await.next_seq;
    sent_since(upf, after, 25).await;
    let last = {
        let mut s = upf.state.lock().await;
        s.streaming = false;
        s.next_seq
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut got = Vec::new();
    while let Ok(p) = peer.downlink.try_recv() {
        if let Some(seq) = seq_of(&p) {
            got.push(seq);
        }
    }
    let want: Vec<u32> = (first..last).collect();
    assert!(want.len() > 40, "stream too short: {}", want.len());
    assert_eq!(got, want, "every sequence number once and in order");
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_data_and_handovers_back_and_forth() {
    let (ip_a, ip_b) = (Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3));
    let gtpu_port = free_port(&[ip_a, ip_b, UPF]);
    let http_port = free_port(&[ip_a, ip_b]);

    // fake UPF
    let upf_socket = Arc::new(UdpSocket::bind((UPF, gtpu_port)).await.unwrap());
    let upf = Arc::new(FakeUpf {
        socket: upf_socket.clone(),
        port: gtpu_port,
        state: Mutex::new(UpfState {
            dl_tunnel: None,
            streaming: false,
            next_seq: 1000,
        }),
    });
    tokio::spawn(upf.clone().stream());
    let (ul_tx, mut ul_rx) = mpsc::unbounded_channel();
    let (echo_tx, mut echo_rx) = mpsc::unbounded_channel();
    {
        let s = upf_socket.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            loop {
                let (n, from) = s.recv_from(&mut buf).await.unwrap();
                let (repr, payload) = gtpu::decapsulate(&buf[..n]).unwrap();
                match repr.msg_type {
                    MessageType::EchoResponse => {
                        let _ = echo_tx.send((from, repr));
                    }
                    _ => {
                        let _ = ul_tx.send((repr, payload.to_vec()));
                    }
                }
            }
        });
    }

    // fake SMF
    let smf = FakeSmf {
        upf: upf.clone(),
        setups: Arc::default(),
        switches: Arc::default(),
    };
    let smf_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let smf_addr = smf_listener.local_addr().unwrap();
    let router = Router::new()
        .route("/n2-lite/v1/pdu-sessions", post(pdu_sessions))
        .route("/n2-lite/v1/path-switch", post(path_switch))
        .with_state(smf.clone());
    let (stop_tx, stop) = sbi::nf::Shutdown::new();
    {
        let stop = stop.clone();
        tokio::spawn(sbi::serve(
            smf_listener,
            router,
            Some(TOKEN.into()),
            stop.wait(),
        ));
    }

    // two gNBs
    let a = gnb_config(
        "gnb-a",
        ip_a,
        gtpu_port,
        http_port,
        smf_addr,
        ("gnb-b", ip_b),
    );
    let b = gnb_config(
        "gnb-b",
        ip_b,
        gtpu_port,
        http_port,
        smf_addr,
        ("gnb-a", ip_a),
    );
    let gnb_a = tokio::spawn(emu_ran::gnb::run_with_gtpu_port(
        a,
        gtpu_port,
        sbi::nf::Ready::none(),
        stop.clone(),
    ));
    let gnb_b = tokio::spawn(emu_ran::gnb::run_with_gtpu_port(
        b,
        gtpu_port,
        sbi::nf::Ready::none(),
        stop.clone(),
    ));
    let client = sbi::Client::new(Some(TOKEN.into()), Duration::from_secs(15));
    let status_url = |ip: Ipv4Addr| format!("http://{ip}:{http_port}/gnb-control/v1/status");
    let mut status_a = None;
    for _ in 0..100 {
        if let Ok(s) = client.get::<GnbStatus>(&status_url(ip_a)).await {
            status_a = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status_a = status_a.expect("gnb-a up");
    // without the token: 401
    let anon = sbi::Client::new(None, Duration::from_secs(5));
    assert!(matches!(
        anon.get::<GnbStatus>(&status_url(ip_a)).await,
        Err(sbi::ClientError::Status { status: 401, .. })
    ));

    // the UE, with a channel TUN
    let sock = std::env::temp_dir().join(format!("t3r-ue-{}.sock", std::process::id()));
    let ue = UeConfig {
        name: "ue1".into(),
        supi: SUPI.into(),
        gnb_radio: status_a.radio,
        radio_bind: "127.0.0.1:0".parse().unwrap(),
        tun: "unused".into(),
        mtu: 1400,
        control_socket: sock.clone(),
    };
    let (tun, mut peer) = emu_ran::ue::channel_tun();
    let (ip_tx, mut ip_rx) = mpsc::unbounded_channel();
    let ue_task = tokio::spawn(emu_ran::ue::run_with(
        ue,
        move |ip| async move {
            let _ = ip_tx.send(ip);
            Ok(tun)
        },
        sbi::nf::Ready::none(),
        stop.clone(),
    ));
    let ip = tokio::time::timeout(Duration::from_secs(5), ip_rx.recv())
        .await
        .expect("attached")
        .unwrap();
    assert_eq!(ip, UE_IP);
    {
        let setups = smf.setups.lock().await;
        assert_eq!(setups.len(), 1);
        assert_eq!(setups[0].supi, SUPI);
        assert_eq!(setups[0].gnb, "gnb-a");
        assert_eq!(setups[0].gnb_tunnel.ipv4, ip_a);
    }

    // uplink: a G-PDU with the UL TEID and the QFI
    peer.uplink
        .send(vec![0x45, 0, 0, 20, 1, 2, 3])
        .await
        .unwrap();
    let (repr, payload) = next_ul(&mut ul_rx).await;
    assert_eq!(repr.msg_type, MessageType::GPdu);
    assert_eq!(repr.teid, Teid(UL_TEID_A));
    assert_eq!(
        repr.pdu_session,
        Some(PduSessionInfo::uplink(Qfi::new(9).unwrap()))
    );
    assert_eq!(payload, [0x45, 0, 0, 20, 1, 2, 3]);

    // downlink
    let tunnel_a = upf.state.lock().await.dl_tunnel.unwrap();
    upf.send_dl(tunnel_a, &dl_packet(1)).await;
    assert_eq!(seq_of(&next_dl(&mut peer).await), Some(1));

    // echo
    let echo = gtpu::to_vec(&GtpuRepr::echo_request(5), &[]).unwrap();
    upf_socket.send_to(&echo, (ip_a, gtpu_port)).await.unwrap();
    let (from, repr) = tokio::time::timeout(Duration::from_secs(5), echo_rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(from, SocketAddr::from((ip_a, gtpu_port)));
    assert_eq!(repr, GtpuRepr::echo_response(5));

    // errors of the trigger: unknown UE, unknown target
    let trigger_a = format!("http://{ip_a}:{http_port}/gnb-control/v1/handovers");
    let e = client
        .post::<_, HandoverReport>(
            &trigger_a,
            &HandoverTrigger {
                ue: "ue9".into(),
                target_gnb: "gnb-b".into(),
            },
        )
        .await;
    assert!(
        matches!(e, Err(sbi::ClientError::Status { status: 404, .. })),
        "{e:?}"
    );
    let e = client
        .post::<_, HandoverReport>(
            &trigger_a,
            &HandoverTrigger {
                ue: "ue1".into(),
                target_gnb: "gnb-z".into(),
            },
        )
        .await;
    assert!(
        matches!(e, Err(sbi::ClientError::Status { status: 400, .. })),
        "{e:?}"
    );

    // handover A → B while streaming
    let report =
        handover_while_streaming(&client, &upf, &mut peer, &trigger_a, "ue1", "gnb-b").await;
    assert_eq!(report.supi, SUPI);
    assert_eq!(report.source_gnb, "gnb-a");
    assert_eq!(report.target_gnb, "gnb-b");
    assert_eq!(report.ue_ipv4, UE_IP);
    let steps: Vec<&str> = report.timeline.iter().map(|s| s.step.as_str()).collect();
    for want in [
        "handover request to gnb-b (acknowledged)",
        "handover command to ue",
        "ue arrived at target (handover confirm)",
        "path switch request to smf (acknowledged, upf-b)",
        "smf: pfcp session modification at the source upf (end marker)",
        "ue context release from gnb-b",
    ] {
        assert!(steps.contains(&want), "{want} missing in {steps:?}");
    }
    assert!(report.timeline.windows(2).all(|w| w[0].at_us <= w[1].at_us));
    eprintln!(
        "A→B: forwarded {} packets; timeline {:#?}",
        report.forwarded_packets, report.timeline
    );
    {
        let switches = smf.switches.lock().await;
        assert_eq!(switches.len(), 1);
        assert_eq!(switches[0].gnb, "gnb-b");
        assert_eq!(switches[0].supi, SUPI);
        assert_eq!(switches[0].ue_ipv4, UE_IP);
        assert_eq!(switches[0].gnb_tunnel.ipv4, ip_b);
        assert_eq!(
            upf.state.lock().await.dl_tunnel,
            Some(switches[0].gnb_tunnel)
        );
    }
    // uplink now goes through gnb-b to the new UL TEID
    while ul_rx.try_recv().is_ok() {}
    peer.uplink.send(vec![0x45, 7]).await.unwrap();
    let (repr, _) = next_ul(&mut ul_rx).await;
    assert_eq!(repr.teid, Teid(UL_TEID_B));
    // the UE's control API (its counters move right after each packet went out: poll)
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let st = loop {
        let (code, body) = ue_api(&sock, "GET", "/ue/v1/status").await;
        assert_eq!(code, 200);
        let st: UeStatus = serde_json::from_str(&body).unwrap();
        if st.packets_up >= 2 || tokio::time::Instant::now() > deadline {
            break st;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(st.handovers, 1);
    assert_eq!(st.ue_ipv4, Some(UE_IP));
    assert_eq!(st.gnb_radio.ip(), &ip_b);
    assert!(st.packets_down > 40 && st.packets_up >= 2, "{st:?}");
    let (code, body) = ue_api(&sock, "GET", "/ue/v1/gaps?sinceMs=0").await;
    assert_eq!(code, 200);
    let gaps: serde_json::Value = serde_json::from_str(&body).unwrap();
    let flow = &gaps[0];
    assert_eq!(flow["flow"], "udp 20.0.0.10:9000 > 192.168.1.2:40000");
    assert!(flow["largestGapMs"].as_f64().unwrap() > 0.0);
    eprintln!("gaps after A→B: {gaps}");
    assert_eq!(ue_api(&sock, "POST", "/ue/v1/gaps/reset").await.0, 204);
    assert_eq!(ue_api(&sock, "GET", "/ue/v1/gaps").await.1, "[]");

    // and back B → A, naming the UE (gnb-b learnt the name from the HandoverRequest)
    let trigger_b = format!("http://{ip_b}:{http_port}/gnb-control/v1/handovers");
    let report =
        handover_while_streaming(&client, &upf, &mut peer, &trigger_b, "ue1", "gnb-a").await;
    assert_eq!(report.source_gnb, "gnb-b");
    assert!(report.forwarded_packets <= 1000);
    assert_eq!(smf.switches.lock().await[1].gnb_tunnel.ipv4, ip_a);
    while ul_rx.try_recv().is_ok() {}
    peer.uplink.send(vec![0x45, 8]).await.unwrap();
    assert_eq!(next_ul(&mut ul_rx).await.0.teid, Teid(UL_TEID_A));
    // gnb-b forgot the UE (after the End Marker or the 1 s linger)
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let sb: GnbStatus = client.get(&status_url(ip_b)).await.unwrap();
    assert!(sb.ues.is_empty(), "{:?}", sb.ues);

    // shutdown: everything ends, the socket file goes
    stop_tx.send(true).unwrap();
    for t in [gnb_a, gnb_b] {
        tokio::time::timeout(Duration::from_secs(5), t)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
    tokio::time::timeout(Duration::from_secs(5), ue_task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(!sock.exists());
}

#[tokio::test]
async fn configs_are_strict_and_a_bad_qfi_is_refused() {
    let text = r#"{"name":"ue1","supi":"imsi-1","gnbRadio":"10.10.0.1:4997","radioBind":"10.10.0.101:0",
        "tun":"ue0","mtu":1400,"controlSocket":"/run/x.sock","extra":1}"#;
    assert!(serde_json::from_str::<UeConfig>(text).is_err());
    let gnb = r#"{"name":"gnb-a","site":"a","radioAddr":"10.10.0.1:4997","n3Addr":"10.30.0.1",
        "xnAddr":"10.40.0.1","gtpuBind":"0.0.0.0:2152","httpAddr":"0.0.0.0:38422",
        "smfUrl":"http://10.100.0.10:8000","token":null,"qfi":9,
        "peers":[{"name":"gnb-b","xnUrl":"http://10.40.0.2:38422"}]}"#;
    let c: GnbConfig = serde_json::from_str(gnb).unwrap();
    assert_eq!(c.peers[0].name, "gnb-b");
    // a qfi of 64 is refused at start
    let (_tx, stop) = sbi::nf::Shutdown::new();
    let bad = GnbConfig { qfi: 64, ..c };
    assert!(matches!(
        emu_ran::gnb::run(bad, sbi::nf::Ready::none(), stop).await,
        Err(emu_ran::gnb::GnbError::Qfi(64))
    ));
}

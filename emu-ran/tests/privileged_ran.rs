//! Privileged (root): the real `ue` binary with a real TUN in namespace `t3r-ue`, the real `gnb`
//! binary in `t3r-gnb`, joined by a veth on 10.223.0.0/24. The SMF and UPF are fakes running in
//! this process on a thread that entered `t3r-gnb`; the fake UPF turns ICMP echo requests into
//! replies. `ping` in `t3r-ue` must get its replies through TUN → radio → gNB → GTP-U and back.
//!
//! `#[ignore]`d (a plain `cargo test` counts it as skipped); run as root with `--include-ignored`.

#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use emu_ran::gnb::GnbConfig;
use emu_ran::ue::UeConfig;
use model::ran::n2::{PduSessionSetupRequest, PduSessionSetupResponse};
use model::ran::TunnelEndpoint;
use netkit::link::End;
use netkit::Netns;
use sbi::Json;
use wire::gtpu::{self, GtpuRepr, MessageType, PduSessionInfo, Qfi, Teid};

const UE_NS: &str = "t3r-ue";
const GNB_NS: &str = "t3r-gnb";
const TOKEN: &str = "t3r-token";
const UE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);
const GNB_AIR: Ipv4Addr = Ipv4Addr::new(10, 223, 0, 1);
const UE_AIR: Ipv4Addr = Ipv4Addr::new(10, 223, 0, 101);
const UPF: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);
const UL_TEID: u32 = 0x1001;
/// Reached only through the UE's TUN (no such host exists anywhere).
const FAR_HOST: &str = "10.224.0.9";

/// Removes everything the test made, whatever happened.
struct Guard {
    children: Vec<Child>,
    dir: PathBuf,
}

impl Drop for Guard {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in [UE_NS, GNB_NS] {
            let n = Netns::new(ns);
            if n.exists() {
                let _ = n.delete();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "privileged test: needs root (namespaces, TUN); run as root with --include-ignored"
    );
}

fn wait_for(path: &Path, what: &str, children: &mut [Child]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        for c in children.iter_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                panic!("{what}: a process ended early with {status}");
            }
        }
        assert!(Instant::now() < deadline, "{what} not ready in time");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Internet checksum.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An ICMP echo request turned into the reply: addresses swapped, type 0, checksums fixed.
fn echo_reply(request: &[u8]) -> Option<Vec<u8>> {
    let ihl = usize::from(request.first()? & 0x0f) * 4;
    if request.len() < ihl + 8 || request[0] >> 4 != 4 || request[9] != 1 || request[ihl] != 8 {
        return None;
    }
    let mut p = request.to_vec();
    let (src, dst) = (p[12..16].to_vec(), p[16..20].to_vec());
    p[12..16].copy_from_slice(&dst);
    p[16..20].copy_from_slice(&src);
    p[10..12].copy_from_slice(&[0, 0]);
    let c = checksum(&p[..ihl]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p[ihl] = 0;
    p[ihl + 2..ihl + 4].copy_from_slice(&[0, 0]);
    let c = checksum(&p[ihl..]);
    p[ihl + 2..ihl + 4].copy_from_slice(&c.to_be_bytes());
    Some(p)
}

type UplinkSeen = (u32, Option<u8>);

#[derive(Clone, Default)]
struct Fakes {
    dl_tunnel: Arc<Mutex<Option<TunnelEndpoint>>>,
    setups: Arc<Mutex<Vec<PduSessionSetupRequest>>>,
    /// Uplink G-PDUs seen: TEID and QFI.
    uplink: Arc<Mutex<Vec<UplinkSeen>>>,
}

async fn pdu_sessions(
    State(f): State<Fakes>,
    Json(req): Json<PduSessionSetupRequest>,
) -> (StatusCode, Json<PduSessionSetupResponse>) {
    *f.dl_tunnel.lock().unwrap() = Some(req.gnb_tunnel);
    f.setups.lock().unwrap().push(req);
    (
        StatusCode::CREATED,
        Json(PduSessionSetupResponse {
            ue_ipv4: UE_IP,
            pdu_session_id: 1,
            qfi: 9,
            upf_tunnel: TunnelEndpoint {
                ipv4: UPF,
                teid: UL_TEID,
            },
        }),
    )
}

/// The fake SMF (127.0.0.1:8000) and UPF (127.0.0.4:2152) inside `t3r-gnb`, until `stop`.
fn start_fakes(
    fakes: Fakes,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> std::thread::JoinHandle<()> {
    let ns = std::fs::File::open(Netns::new(GNB_NS).path()).unwrap();
    let (up_tx, up_rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let smf = tokio::net::TcpListener::bind("127.0.0.1:8000")
                .await
                .unwrap();
            let upf = tokio::net::UdpSocket::bind((UPF, gtpu::PORT))
                .await
                .unwrap();
            let router = Router::new()
                .route("/n2-lite/v1/pdu-sessions", post(pdu_sessions))
                .with_state(fakes.clone());
            let (_tx, shutdown) = sbi::nf::Shutdown::new();
            tokio::spawn(sbi::serve(smf, router, Some(TOKEN.into()), shutdown.wait()));
            up_tx.send(()).unwrap();
            let upf_loop = async {
                let mut buf = vec![0u8; 65536];
                loop {
                    let Ok((n, _)) = upf.recv_from(&mut buf).await else {
                        continue;
                    };
                    let Ok((repr, packet)) = gtpu::decapsulate(&buf[..n]) else {
                        continue;
                    };
                    if repr.msg_type != MessageType::GPdu {
                        continue;
                    }
                    fakes
                        .uplink
                        .lock()
                        .unwrap()
                        .push((repr.teid.0, repr.pdu_session.map(|p| p.qfi.value())));
                    let tunnel = *fakes.dl_tunnel.lock().unwrap();
                    if let (Some(reply), Some(t)) = (echo_reply(packet), tunnel) {
                        let dl = GtpuRepr::g_pdu(
                            Teid(t.teid),
                            Some(PduSessionInfo::downlink(Qfi::new(9).unwrap())),
                        );
                        let msg = gtpu::to_vec(&dl, &reply).unwrap();
                        let _ = upf
                            .send_to(&msg, SocketAddrV4::new(t.ipv4, gtpu::PORT))
                            .await;
                    }
                }
            };
            tokio::select! {
                _ = upf_loop => {}
                _ = stop => {}
            }
        });
    });
    up_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("fakes up");
    handle
}

fn ue_get(sock: &Path, path: &str) -> serde_json::Value {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: ue\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let body = text.split_once("\r\n\r\n").unwrap().1;
    serde_json::from_str(body).unwrap()
}

#[test]
#[ignore = "privileged: needs root"]
fn ping_through_the_tun_radio_gnb_and_gtpu() {
    require_root();
    let dir = std::env::temp_dir().join(format!("t3r-ran-{}", std::process::id()));
    let mut guard = Guard {
        children: Vec::new(),
        dir: dir.clone(),
    };
    for ns in [UE_NS, GNB_NS] {
        let n = Netns::new(ns);
        if n.exists() {
            n.delete().unwrap();
        }
        n.create().unwrap();
    }
    std::fs::create_dir_all(&dir).unwrap();
    netkit::link::create_veth(
        &End {
            netns: UE_NS.into(),
            ifname: "air".into(),
        },
        &End {
            netns: GNB_NS.into(),
            ifname: "air".into(),
        },
        1500,
    )
    .unwrap();
    netkit::link::add_addr(
        &Netns::new(UE_NS),
        "air",
        format!("{UE_AIR}/24").parse().unwrap(),
    )
    .unwrap();
    netkit::link::add_addr(
        &Netns::new(GNB_NS),
        "air",
        format!("{GNB_AIR}/24").parse().unwrap(),
    )
    .unwrap();

    let fakes = Fakes::default();
    let (stop_fakes, stop_rx) = tokio::sync::oneshot::channel();
    let fakes_thread = start_fakes(fakes.clone(), stop_rx);

    // the gNB binary in t3r-gnb
    let gnb = GnbConfig {
        name: "gnb-a".into(),
        site: "a".into(),
        radio_addr: SocketAddrV4::new(GNB_AIR, 4997),
        n3_addr: GNB_AIR,
        xn_addr: GNB_AIR,
        gtpu_bind: SocketAddrV4::new(GNB_AIR, gtpu::PORT),
        http_addr: "127.0.0.1:38422".parse().unwrap(),
        smf_url: "http://127.0.0.1:8000".into(),
        token: Some(TOKEN.into()),
        qfi: 9,
        peers: vec![],
    };
    let gnb_json = dir.join("gnb-a.json");
    std::fs::write(&gnb_json, serde_json::to_vec(&gnb).unwrap()).unwrap();
    let gnb_ready = dir.join("gnb-a.ready");
    guard.children.push(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                GNB_NS,
                env!("CARGO_BIN_EXE_gnb"),
                "--config",
            ])
            .arg(&gnb_json)
            .arg("--ready-file")
            .arg(&gnb_ready)
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(&gnb_ready, "gnb", &mut guard.children);

    // the UE binary in t3r-ue
    let sock = dir.join("ue1.sock");
    let ue = UeConfig {
        name: "ue1".into(),
        supi: "imsi-001010000000001".into(),
        gnb_radio: SocketAddrV4::new(GNB_AIR, 4997),
        radio_bind: SocketAddrV4::new(UE_AIR, 0),
        tun: "ue0".into(),
        mtu: 1400,
        control_socket: sock.clone(),
    };
    let ue_json = dir.join("ue1.json");
    std::fs::write(&ue_json, serde_json::to_vec(&ue).unwrap()).unwrap();
    let ue_ready = dir.join("ue1.ready");
    guard.children.push(
        Command::new("ip")
            .args(["netns", "exec", UE_NS, env!("CARGO_BIN_EXE_ue"), "--config"])
            .arg(&ue_json)
            .arg("--ready-file")
            .arg(&ue_ready)
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(&ue_ready, "ue", &mut guard.children);
    {
        let setups = fakes.setups.lock().unwrap();
        assert_eq!(setups.len(), 1);
        assert_eq!(setups[0].gnb_tunnel.ipv4, GNB_AIR);
    }
    // the control socket is root-only
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // the TUN carries the session address and the default route
    let routes = Netns::new(UE_NS)
        .tool("ip")
        .args(["route", "show", "default"])
        .stdout()
        .unwrap();
    assert!(routes.contains("dev ue0"), "{routes}");
    let addrs = Netns::new(UE_NS)
        .tool("ip")
        .args(["-4", "addr", "show", "dev", "ue0"])
        .stdout()
        .unwrap();
    assert!(addrs.contains("192.168.1.2/32"), "{addrs}");

    let out = Command::new("ip")
        .args([
            "netns", "exec", UE_NS, "ping", "-c", "3", "-i", "0.2", "-W", "2", FAR_HOST,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ping failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("3 received"), "{text}");

    let uplink = fakes.uplink.lock().unwrap().clone();
    assert!(uplink.len() >= 3, "{uplink:?}");
    assert!(uplink
        .iter()
        .all(|(teid, qfi)| *teid == UL_TEID && *qfi == Some(9)));
    let status = ue_get(&sock, "/ue/v1/status");
    assert_eq!(status["ueIpv4"], "192.168.1.2");
    assert!(status["packetsUp"].as_u64().unwrap() >= 3, "{status}");
    assert!(status["packetsDown"].as_u64().unwrap() >= 3, "{status}");
    let gaps = ue_get(&sock, "/ue/v1/gaps?sinceMs=0");
    let flow = gaps
        .as_array()
        .unwrap()
        .iter()
        .find(|f| {
            f["flow"]
                .as_str()
                .unwrap()
                .starts_with(&format!("icmp {FAR_HOST} > 192.168.1.2"))
        })
        .unwrap_or_else(|| panic!("no icmp flow in {gaps}"));
    assert_eq!(flow["packets"], 3);
    let gap = flow["largestGapMs"].as_f64().unwrap();
    assert!((150.0..1000.0).contains(&gap), "{flow}");

    // SIGTERM: both end cleanly and the UE removes its socket
    for c in &mut guard.children {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
    }
    for c in &mut guard.children {
        let status = c.wait().unwrap();
        assert!(status.success(), "{status}");
    }
    guard.children.clear();
    assert!(!sock.exists());
    let _ = stop_fakes.send(());
    fakes_thread.join().unwrap();
}

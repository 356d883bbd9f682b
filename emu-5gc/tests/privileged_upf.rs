//! Privileged tests of the UPF and the IAP binaries with real TUN devices. Need root.
//!
//! * UPF: the `upf` binary runs in namespace `t3u-site`, which forwards (rp_filter off) to
//!   namespace `t3u-dn` over a veth (10.222.0.1 ↔ 10.222.0.2). A UL G-PDU carrying an ICMP echo
//!   request from 192.168.1.2 to 10.222.0.2, sent to the UPF's GTP-U socket, must arrive in
//!   `t3u-dn` (its ICMP InEchos counter goes up).
//! * IAP: the `iap` binary runs in namespace `t3u-iap` with a fake LR (served by this test on a
//!   socket inside the namespace); a datagram sent to 192.168.1.2 inside the namespace must be
//!   routed into `iap0` and come out as a G-PDU to the UPF's tunnel (127.0.0.1:2152).
#![allow(clippy::unwrap_used)]

mod common;
use common::{establishment, icmp_echo, UE};
use netkit::link::{self, End};
use netkit::Netns;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use wire::gtpu::{self, GtpuRepr, PduSessionInfo, Qfi, Teid};
use wire::pfcp::{AssociationSetup, Cause, Message, NodeId};

const SITE: &str = "t3u-site";
const DN: &str = "t3u-dn";
const SITE_DN_ADDR: Ipv4Addr = Ipv4Addr::new(10, 222, 0, 1);
const DN_ADDR: Ipv4Addr = Ipv4Addr::new(10, 222, 0, 2);
const LOCALHOST: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// Removes everything the test made: the UPF process, the namespaces (and with them the veth and
/// the TUN), the temporary directory.
struct Guard {
    nf: Option<Child>,
    dir: PathBuf,
    namespaces: Vec<Netns>,
}

impl Guard {
    fn stop_nf(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.nf.take()?;
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.stop_nf();
        for ns in &self.namespaces {
            if ns.exists() {
                let _ = ns.delete();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Guard {
    /// Deletes leftovers of an earlier run, then creates the namespaces and a temporary directory.
    fn new(test: &str, namespaces: &[&str]) -> Guard {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test needs root (network namespaces and a TUN device)"
        );
        let dir = std::env::temp_dir().join(format!("t3u-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let namespaces: Vec<Netns> = namespaces.iter().map(|n| Netns::new(*n)).collect();
        for ns in &namespaces {
            if ns.exists() {
                ns.delete().unwrap();
            }
        }
        let guard = Guard {
            nf: None,
            dir,
            namespaces,
        };
        for ns in &guard.namespaces {
            ns.create().unwrap();
        }
        guard
    }

    /// Starts `bin` inside `ns` with `config`, and waits for its ready file.
    fn start(&mut self, ns: &str, bin: &str, config: &serde_json::Value) {
        let config_path = self.dir.join("nf.json");
        std::fs::write(&config_path, config.to_string()).unwrap();
        let ready = self.dir.join("nf.ready");
        let log = std::fs::File::create(self.log_path()).unwrap();
        self.nf = Some(
            Command::new("ip")
                .args(["netns", "exec", ns, bin, "--config"])
                .arg(&config_path)
                .arg("--ready-file")
                .arg(&ready)
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
        let deadline = Instant::now() + Duration::from_secs(15);
        while !ready.exists() {
            assert!(Instant::now() < deadline, "{bin} not ready: {}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("nf.log")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Stops the NF (SIGTERM), checks it exited cleanly, and returns its `counters` log line.
    fn stop_and_summary(&mut self, what: &str) -> String {
        let status = self.stop_nf().expect("exit status");
        let log = self.log();
        assert!(status.success(), "exited with {status}:\n{log}");
        log.lines()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no `{what}` in log:\n{log}"))
            .to_owned()
    }
}

/// The ICMP InEchos counter of a namespace (`/proc/net/snmp` read from inside it).
fn in_echos(ns: &Netns) -> u64 {
    let text = ns.tool("cat").arg("/proc/net/snmp").stdout().unwrap();
    let icmp: Vec<&str> = text.lines().filter(|l| l.starts_with("Icmp:")).collect();
    let names = icmp[0].split_whitespace();
    let values = icmp[1].split_whitespace();
    names
        .zip(values)
        .find(|(n, _)| *n == "InEchos")
        .map(|(_, v)| v.parse().unwrap())
        .expect("InEchos in /proc/net/snmp")
}

fn request(socket: &UdpSocket, to: SocketAddr, msg: &Message) -> Message {
    socket.send_to(&msg.to_vec().unwrap(), to).unwrap();
    let mut buf = [0u8; 4096];
    let (n, _) = socket.recv_from(&mut buf).expect("pfcp answer");
    Message::parse(&buf[..n]).unwrap()
}

#[test]
#[ignore = "privileged: needs root"]
fn uplink_g_pdu_reaches_the_dn_through_the_upf_tun() {
    let mut guard = Guard::new("upf", &[SITE, DN]);
    // Namespaces, the veth between them, forwarding without reverse-path filtering.
    let (site, dn) = (Netns::new(SITE), Netns::new(DN));
    link::create_veth(
        &End {
            netns: SITE.into(),
            ifname: "dn0".into(),
        },
        &End {
            netns: DN.into(),
            ifname: "eth0".into(),
        },
        1500,
    )
    .unwrap();
    link::add_addr(&site, "dn0", format!("{SITE_DN_ADDR}/24").parse().unwrap()).unwrap();
    link::add_addr(&dn, "eth0", format!("{DN_ADDR}/24").parse().unwrap()).unwrap();
    site.sysctl("net.ipv4.ip_forward", "1").unwrap();
    site.sysctl("net.ipv4.conf.all.rp_filter", "0").unwrap();
    site.sysctl("net.ipv4.conf.default.rp_filter", "0").unwrap();

    // The UPF binary inside the site.
    let config = serde_json::json!({
        "name": "upf-t3u",
        "pfcpAddr": "127.0.0.1:8805",
        "n3Addr": "127.0.0.1",
        "n9Addr": "127.0.0.1",
        "gtpuBind": "0.0.0.0:2152",
        "tun": "upf0",
        "tunAddr": "10.255.0.1",
    });
    guard.start(SITE, env!("CARGO_BIN_EXE_upf"), &config);
    let links = site
        .tool("ip")
        .args(["-br", "link", "show", "upf0"])
        .stdout()
        .unwrap();
    assert!(links.contains("upf0"), "{links}");

    // The test's SMF and gNB: sockets born inside the site namespace.
    let (smf, gnb) = site
        .run_in(|| {
            let smf = UdpSocket::bind((LOCALHOST, 0)).unwrap();
            smf.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            (smf, UdpSocket::bind((LOCALHOST, 0)).unwrap())
        })
        .unwrap();
    let pfcp: SocketAddr = "127.0.0.1:8805".parse().unwrap();
    let answer = request(
        &smf,
        pfcp,
        &Message::AssociationSetupRequest(AssociationSetup {
            seq: 1,
            node_id: NodeId::Ipv4(LOCALHOST),
            cause: None,
            recovery_time_stamp: 1,
        }),
    );
    assert!(
        matches!(answer, Message::AssociationSetupResponse(a) if a.cause == Some(Cause::ACCEPTED)),
        "{answer:?}"
    );
    let answer = request(&smf, pfcp, &establishment(2, 0xa1));
    assert!(
        matches!(answer, Message::SessionEstablishmentResponse(e) if e.cause == Cause::ACCEPTED),
        "{answer:?}"
    );

    // A UL G-PDU with an echo request to the DN: it must come out of upf0 and cross the veth.
    let before = in_echos(&dn);
    let inner = icmp_echo(UE, DN_ADDR, 1);
    let qfi = Qfi::new(9).unwrap();
    let g_pdu = gtpu::to_vec(
        &GtpuRepr::g_pdu(Teid(0x100), Some(PduSessionInfo::uplink(qfi))),
        &inner,
    )
    .unwrap();
    gnb.send_to(&g_pdu, "127.0.0.1:2152").unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    while in_echos(&dn) <= before {
        assert!(
            Instant::now() < deadline,
            "the echo request never reached {DN}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // The summary logged at shutdown counts it.
    let summary = guard.stop_and_summary("upf counters");
    assert!(summary.contains(r#""ulPackets":1"#), "{summary}");
}

const IAP_NS: &str = "t3u-iap";

/// The fake LR of the IAP test: one UE, one subscription, and a record of the DELETE.
#[derive(Debug, Default)]
struct FakeLr {
    notify_uris: Vec<String>,
    deleted: bool,
}

type Lr = std::sync::Arc<std::sync::Mutex<FakeLr>>;

fn fake_lr(lr: Lr) -> axum::Router {
    use axum::extract::State;
    use axum::http::{header, StatusCode};
    use axum::routing::{delete, get, post};
    use model::ran::lr::{LrSubscription, UeLocation};
    use model::ran::TunnelEndpoint;
    axum::Router::new()
        .route(
            "/lr/v1/subscriptions",
            post(
                |State(lr): State<Lr>, sbi::Json(s): sbi::Json<LrSubscription>| async move {
                    lr.lock().unwrap().notify_uris.push(s.notify_uri);
                    (
                        StatusCode::CREATED,
                        [(header::LOCATION, "/lr/v1/subscriptions/1")],
                    )
                },
            ),
        )
        .route(
            "/lr/v1/subscriptions/1",
            delete(|State(lr): State<Lr>| async move {
                lr.lock().unwrap().deleted = true;
                StatusCode::NO_CONTENT
            }),
        )
        .route(
            "/lr/v1/ues",
            get(|| async {
                sbi::Json(vec![UeLocation {
                    ue_ipv4: UE,
                    site: "a".into(),
                    dnai: "edge-x".into(),
                    upf_tunnel: TunnelEndpoint {
                        ipv4: LOCALHOST,
                        teid: 0x200,
                    },
                    version: 1,
                }])
            }),
        )
        .with_state(lr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: needs root"]
async fn downlink_routed_into_iap0_leaves_as_g_pdu_to_the_serving_upf() {
    let mut guard = Guard::new("iap", &[IAP_NS]);
    let ns = Netns::new(IAP_NS);

    // Sockets inside the namespace: the fake LR, the serving UPF's GTP-U, a DN sender.
    let (lr_listener, upf, dn) = ns
        .run_in(|| {
            let lr = std::net::TcpListener::bind((LOCALHOST, 0)).unwrap();
            let upf = UdpSocket::bind((LOCALHOST, gtpu::PORT)).unwrap();
            let dn = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
            (lr, upf, dn)
        })
        .unwrap();
    lr_listener.set_nonblocking(true).unwrap();
    let lr_addr = lr_listener.local_addr().unwrap();
    let lr: Lr = Default::default();
    let (stop_lr, lr_shutdown) = sbi::nf::Shutdown::new();
    tokio::spawn(sbi::serve(
        tokio::net::TcpListener::from_std(lr_listener).unwrap(),
        fake_lr(lr.clone()),
        Some("t3u-token".into()),
        lr_shutdown.wait(),
    ));
    upf.set_nonblocking(true).unwrap();
    let upf = tokio::net::UdpSocket::from_std(upf).unwrap();

    let config = serde_json::json!({
        "name": "iap-t3u",
        "site": "a",
        "sbiAddr": "127.0.0.1:8010",
        "lrUrl": format!("http://{lr_addr}"),
        "token": "t3u-token",
        "tun": "iap0",
        "tunAddr": "10.255.1.1",
        "uePool": "192.168.1.0/24",
        "qfi": 9,
    });
    tokio::task::block_in_place(|| guard.start(IAP_NS, env!("CARGO_BIN_EXE_iap"), &config));
    assert_eq!(
        lr.lock().unwrap().notify_uris,
        vec!["http://127.0.0.1:8010/iap/v1/locations".to_string()]
    );
    let route = ns
        .tool("ip")
        .args(["route", "show", "192.168.1.0/24"])
        .stdout()
        .unwrap();
    assert!(route.contains("dev iap0"), "{route}");

    // A datagram for the UE: the kernel routes it into iap0, the IAP tunnels it.
    dn.send_to(b"downlink for ue1", (UE, 9999)).unwrap();
    let mut buf = vec![0u8; 2048];
    let (n, _) = tokio::time::timeout(Duration::from_secs(3), upf.recv_from(&mut buf))
        .await
        .expect("g-pdu at the upf in time")
        .unwrap();
    let (repr, inner) = gtpu::decapsulate(&buf[..n]).unwrap();
    assert_eq!(repr.teid, Teid(0x200));
    assert_eq!(
        repr.pdu_session.map(|p| (p.direction, p.qfi.value())),
        Some((gtpu::Direction::Downlink, 9))
    );
    assert_eq!(inner[0] >> 4, 4, "inner packet is ipv4");
    assert_eq!(&inner[16..20], &UE.octets());
    assert!(inner.ends_with(b"downlink for ue1"));

    let summary = tokio::task::block_in_place(|| guard.stop_and_summary("iap counters"));
    assert!(summary.contains(r#""forwardedPackets":1"#), "{summary}");
    assert!(
        lr.lock().unwrap().deleted,
        "subscription deleted at shutdown"
    );
    let _ = stop_lr.send(true);
}

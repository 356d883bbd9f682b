//! In-process tests of the UPF and the IAP on 127.0.0.1, without root: the TUN is a channel
//! ([`ChannelPort`]), the SMF, gNBs, LR and the UPF behind an IAP are fakes in this file.
#![allow(clippy::unwrap_used)]

mod common;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};
use axum::Router;
use common::{establishment, icmp_echo, UE};
use emu_5gc::iap::{self, IapConfig, IapStatus};
use emu_5gc::upf::port::{ChannelPort, ChannelPortPeer};
use emu_5gc::upf::{Upf, UpfConfig, UpfHandle, UpfStatus};
use model::ran::lr::{LrSubscription, UeLocation};
use model::ran::TunnelEndpoint;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use wire::gtpu::{self, Direction, GtpuRepr, MessageType, PduSessionInfo, Qfi, Teid};
use wire::pfcp::{
    AssociationSetup, Cause, Far, FarId, ForwardingParameters, Heartbeat, Message, NodeId,
    OuterHeaderCreation, SessionDeletionRequest, SessionModificationRequest,
};

const LOCALHOST: Ipv4Addr = Ipv4Addr::LOCALHOST;
const GNB_B: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const WAIT: Duration = Duration::from_secs(3);
const QUIET: Duration = Duration::from_millis(200);

async fn recv(socket: &UdpSocket) -> Vec<u8> {
    let mut buf = vec![0; 65_536];
    let (n, _) = timeout(WAIT, socket.recv_from(&mut buf))
        .await
        .expect("datagram in time")
        .unwrap();
    buf.truncate(n);
    buf
}

async fn nothing(socket: &UdpSocket) {
    let mut buf = vec![0; 65_536];
    if let Ok(r) = timeout(QUIET, socket.recv_from(&mut buf)).await {
        let (n, from) = r.unwrap();
        panic!("unexpected datagram from {from}: {:02x?}", &buf[..n]);
    }
}

/// Polls `f` until it holds (or fails after [`WAIT`]).
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !f() {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// UPF

struct RunningUpf {
    pfcp: SocketAddr,
    gtpu: SocketAddr,
    handle: UpfHandle,
    n6: ChannelPortPeer,
    stop: watch::Sender<bool>,
    task: JoinHandle<UpfStatus>,
}

async fn start_upf(gnb_port: u16) -> RunningUpf {
    let config = UpfConfig {
        name: "upf-t".into(),
        pfcp_addr: SocketAddrV4::new(LOCALHOST, 0),
        n3_addr: LOCALHOST,
        n9_addr: LOCALHOST,
        gtpu_bind: SocketAddrV4::new(LOCALHOST, 0),
        tun: "unused".into(),
        tun_addr: Ipv4Addr::new(10, 255, 0, 1),
    };
    let (port, n6) = ChannelPort::pair();
    let upf = Upf::bind(config, port, gnb_port).await.unwrap();
    let (pfcp, gtpu, handle) = (
        upf.pfcp_addr().unwrap(),
        upf.gtpu_addr().unwrap(),
        upf.handle(),
    );
    let (stop, shutdown) = sbi::nf::Shutdown::new();
    let task = tokio::spawn(upf.serve(shutdown));
    RunningUpf {
        pfcp,
        gtpu,
        handle,
        n6,
        stop,
        task,
    }
}

/// The test's SMF: one PFCP socket.
struct Smf {
    socket: UdpSocket,
    upf: SocketAddr,
    seq: u32,
}

impl Smf {
    async fn new(upf: SocketAddr) -> Self {
        Smf {
            socket: UdpSocket::bind((LOCALHOST, 0)).await.unwrap(),
            upf,
            seq: 0,
        }
    }

    fn seq(&mut self) -> u32 {
        self.seq += 1;
        self.seq
    }

    async fn request(&self, msg: &Message) -> Message {
        self.socket
            .send_to(&msg.to_vec().unwrap(), self.upf)
            .await
            .unwrap();
        Message::parse(&recv(&self.socket).await).unwrap()
    }
}

fn g_pdu(teid: u32, container: Option<PduSessionInfo>, inner: &[u8]) -> Vec<u8> {
    gtpu::to_vec(&GtpuRepr::g_pdu(Teid(teid), container), inner).unwrap()
}

fn qfi(v: u8) -> Qfi {
    Qfi::new(v).unwrap()
}

#[tokio::test]
async fn upf_forwards_uplink_and_downlink_switches_path_with_end_marker_and_forgets_deleted_session(
) {
    let gnb_a = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
    let gnb_port = gnb_a.local_addr().unwrap().port();
    let gnb_b = UdpSocket::bind((GNB_B, gnb_port)).await.unwrap();
    let iap = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
    let mut upf = start_upf(gnb_port).await;
    let mut smf = Smf::new(upf.pfcp).await;

    // Association Setup.
    let seq = smf.seq();
    let answer = smf
        .request(&Message::AssociationSetupRequest(AssociationSetup {
            seq,
            node_id: NodeId::Ipv4(LOCALHOST),
            cause: None,
            recovery_time_stamp: 1,
        }))
        .await;
    let Message::AssociationSetupResponse(a) = answer else {
        panic!("{answer:?}")
    };
    assert_eq!(
        (a.seq, a.cause, a.node_id),
        (seq, Some(Cause::ACCEPTED), NodeId::Ipv4(LOCALHOST))
    );
    assert_ne!(a.recovery_time_stamp, 0);

    // Session Establishment.
    let seq = smf.seq();
    let answer = smf.request(&establishment(seq, 0xa1)).await;
    let Message::SessionEstablishmentResponse(e) = answer else {
        panic!("{answer:?}")
    };
    assert_eq!((e.seid, e.seq, e.cause), (0x77, seq, Cause::ACCEPTED));
    let up = e.up_f_seid.expect("up f-seid");
    assert_eq!(up.ipv4, LOCALHOST);

    // Uplink: G-PDU on TEID 0x100 -> the inner packet on N6.
    let inner = icmp_echo(UE, Ipv4Addr::new(10, 222, 0, 2), 1);
    gnb_a
        .send_to(
            &g_pdu(0x100, Some(PduSessionInfo::uplink(qfi(9))), &inner),
            upf.gtpu,
        )
        .await
        .unwrap();
    let written = timeout(WAIT, upf.n6.written.recv()).await.unwrap().unwrap();
    assert_eq!(written, inner);

    // Downlink from the IAP on TEID 0x200 -> gNB A on TEID 0xa1 with a DL container (QFI kept).
    let reply = icmp_echo(Ipv4Addr::new(10, 222, 0, 2), UE, 1);
    iap.send_to(
        &g_pdu(0x200, Some(PduSessionInfo::downlink(qfi(5))), &reply),
        upf.gtpu,
    )
    .await
    .unwrap();
    let got = recv(&gnb_a).await;
    let (repr, payload) = gtpu::decapsulate(&got).unwrap();
    assert_eq!(repr.msg_type, MessageType::GPdu);
    assert_eq!(repr.teid, Teid(0xa1));
    let container = repr.pdu_session.expect("dl container");
    assert_eq!(
        (container.direction, container.qfi),
        (Direction::Downlink, qfi(5))
    );
    assert_eq!(payload, &reply[..]);
    // Without an incoming container the QFI is 9.
    iap.send_to(&g_pdu(0x200, None, &reply), upf.gtpu)
        .await
        .unwrap();
    let got = recv(&gnb_a).await;
    let (repr, _) = gtpu::decapsulate(&got).unwrap();
    assert_eq!(repr.pdu_session.map(|p| p.qfi), Some(qfi(9)));

    // Modification with SNDEM: End Marker to gNB A's tunnel, then downlink to gNB B.
    let seq = smf.seq();
    let answer = smf
        .request(&Message::SessionModificationRequest(
            SessionModificationRequest {
                seid: up.seid,
                seq,
                update_fars: vec![Far {
                    far_id: FarId(2),
                    apply_action: None,
                    forwarding_parameters: Some(ForwardingParameters {
                        destination_interface: None,
                        network_instance: None,
                        outer_header_creation: Some(OuterHeaderCreation {
                            teid: Teid(0xb2),
                            ipv4: GNB_B,
                        }),
                        send_end_marker: true,
                    }),
                }],
                ..Default::default()
            },
        ))
        .await;
    let Message::SessionModificationResponse(m) = answer else {
        panic!("{answer:?}")
    };
    assert_eq!((m.seid, m.seq, m.cause), (0x77, seq, Cause::ACCEPTED));
    let em = recv(&gnb_a).await;
    let (repr, payload) = gtpu::decapsulate(&em).unwrap();
    assert_eq!(
        (repr.msg_type, repr.teid),
        (MessageType::EndMarker, Teid(0xa1))
    );
    assert!(payload.is_empty());
    iap.send_to(&g_pdu(0x200, None, &reply), upf.gtpu)
        .await
        .unwrap();
    let got = recv(&gnb_b).await;
    let (repr, payload) = gtpu::decapsulate(&got).unwrap();
    assert_eq!(repr.teid, Teid(0xb2));
    assert_eq!(payload, &reply[..]);
    nothing(&gnb_a).await;

    let status = upf.handle.status();
    assert_eq!(status.sessions.len(), 1);
    let c = status.sessions[0].counters;
    assert_eq!((c.ul_packets, c.dl_packets, c.end_markers), (1, 3, 1));
    assert_eq!(c.ul_bytes, inner.len() as u64);

    // A request for an unknown SEID.
    let seq = smf.seq();
    let answer = smf
        .request(&Message::SessionDeletionRequest(SessionDeletionRequest {
            seid: 0xdead,
            seq,
        }))
        .await;
    let Message::SessionDeletionResponse(d) = answer else {
        panic!("{answer:?}")
    };
    assert_eq!(d.cause, Cause::SESSION_CONTEXT_NOT_FOUND);

    // Deletion: later downlink is dropped and counted.
    let seq = smf.seq();
    let answer = smf
        .request(&Message::SessionDeletionRequest(SessionDeletionRequest {
            seid: up.seid,
            seq,
        }))
        .await;
    let Message::SessionDeletionResponse(d) = answer else {
        panic!("{answer:?}")
    };
    assert_eq!((d.seid, d.cause), (0x77, Cause::ACCEPTED));
    iap.send_to(&g_pdu(0x200, None, &reply), upf.gtpu)
        .await
        .unwrap();
    gnb_a
        .send_to(&g_pdu(0x100, None, &inner), upf.gtpu)
        .await
        .unwrap();
    eventually("unknown teids counted", || {
        upf.handle.status().counters.gtpu_unknown_teid == 2
    })
    .await;
    nothing(&gnb_b).await;
    assert!(upf.n6.written.try_recv().is_err());

    upf.stop.send(true).unwrap();
    let status = timeout(WAIT, upf.task).await.unwrap().unwrap();
    assert!(status.sessions.is_empty());
    let t = status.session_totals;
    assert_eq!((t.ul_packets, t.dl_packets, t.end_markers), (1, 3, 1));
    assert_eq!(status.counters.pfcp_unknown_seid, 1);
}

#[tokio::test]
async fn upf_survives_garbage_and_answers_echo_and_heartbeat() {
    let gnb = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
    let upf = start_upf(gnb.local_addr().unwrap().port()).await;
    let mut smf = Smf::new(upf.pfcp).await;
    let junk: [&[u8]; 5] = [
        b"",
        b"\xff\xff\xff",
        b"hello, world: not a protocol message",
        &[0x30, 0xff, 0x00, 0x40, 0, 0, 0, 1],
        &[0x21, 0x32, 0x00, 0x0c, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0],
    ];
    for j in junk {
        smf.socket.send_to(j, upf.pfcp).await.unwrap();
        gnb.send_to(j, upf.gtpu).await.unwrap();
    }
    // Still alive: Heartbeat and Echo answered.
    let seq = smf.seq();
    let answer = smf
        .request(&Message::HeartbeatRequest(Heartbeat {
            seq,
            recovery_time_stamp: 7,
        }))
        .await;
    assert!(matches!(answer, Message::HeartbeatResponse(h) if h.seq == seq));
    gnb.send_to(
        &gtpu::to_vec(&GtpuRepr::echo_request(42), &[]).unwrap(),
        upf.gtpu,
    )
    .await
    .unwrap();
    let echo = recv(&gnb).await;
    let (repr, payload) = gtpu::decapsulate(&echo).unwrap();
    assert_eq!(
        (repr.msg_type, repr.seq),
        (MessageType::EchoResponse, Some(42))
    );
    assert_eq!(payload, &gtpu::RECOVERY_IE[..]);
    // Packets read from N6 are dropped and counted.
    upf.n6.inject.send(vec![0x45; 40]).unwrap();
    eventually("tun packet counted", || {
        upf.handle.status().counters.tun_packets_dropped == 1
    })
    .await;
    let c = upf.handle.status().counters;
    assert_eq!(c.pfcp_malformed, 5, "{c:?}");
    assert_eq!(c.gtpu_malformed, 5, "{c:?}");
    upf.stop.send(true).unwrap();
    timeout(WAIT, upf.task).await.unwrap().unwrap();
}

// ---------------------------------------------------------------------------------------------
// IAP

const TOKEN: &str = "test-token";
const UE3: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 3);
const UE9: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 9);

#[derive(Debug, Default)]
struct FakeLr {
    /// What GET /lr/v1/ues answers.
    listed: Vec<UeLocation>,
    /// What GET /lr/v1/ues/{ip} knows (besides the listed ones).
    known: Vec<UeLocation>,
    notify_uris: Vec<String>,
    list_fetched: bool,
    queries: Vec<Ipv4Addr>,
    deleted: Vec<String>,
}

type Lr = Arc<Mutex<FakeLr>>;

async fn lr_subscribe(
    State(lr): State<Lr>,
    sbi::Json(s): sbi::Json<LrSubscription>,
) -> impl IntoResponse {
    lr.lock().unwrap().notify_uris.push(s.notify_uri.clone());
    (
        StatusCode::CREATED,
        [(header::LOCATION, "/lr/v1/subscriptions/1")],
        sbi::Json(s),
    )
}

async fn lr_unsubscribe(State(lr): State<Lr>, Path(id): Path<String>) -> StatusCode {
    lr.lock().unwrap().deleted.push(id);
    StatusCode::NO_CONTENT
}

async fn lr_list(State(lr): State<Lr>) -> sbi::Json<Vec<UeLocation>> {
    let mut lr = lr.lock().unwrap();
    lr.list_fetched = true;
    sbi::Json(lr.listed.clone())
}

async fn lr_get(
    State(lr): State<Lr>,
    Path(ip): Path<Ipv4Addr>,
) -> Result<sbi::Json<UeLocation>, sbi::ApiError> {
    let mut lr = lr.lock().unwrap();
    lr.queries.push(ip);
    lr.listed
        .iter()
        .chain(&lr.known)
        .find(|l| l.ue_ipv4 == ip)
        .cloned()
        .map(sbi::Json)
        .ok_or_else(|| sbi::ApiError::not_found("unknown ue"))
}

async fn start_lr(listener: TcpListener, lr: Lr) -> watch::Sender<bool> {
    let router = Router::new()
        .route("/lr/v1/subscriptions", post(lr_subscribe))
        .route("/lr/v1/subscriptions/{id}", delete(lr_unsubscribe))
        .route("/lr/v1/ues", get(lr_list))
        .route("/lr/v1/ues/{ip}", get(lr_get))
        .with_state(lr);
    let (stop, shutdown) = sbi::nf::Shutdown::new();
    tokio::spawn(sbi::serve(
        listener,
        router,
        Some(TOKEN.into()),
        shutdown.wait(),
    ));
    stop
}

fn location(ue: Ipv4Addr, teid: u32, version: u64) -> UeLocation {
    UeLocation {
        ue_ipv4: ue,
        site: "a".into(),
        dnai: "edge-x".into(),
        upf_tunnel: TunnelEndpoint {
            ipv4: LOCALHOST,
            teid,
        },
        version,
    }
}

fn iap_config(lr: SocketAddr) -> IapConfig {
    IapConfig {
        name: "iap-t".into(),
        site: "a".into(),
        sbi_addr: SocketAddrV4::new(LOCALHOST, 0),
        lr_url: format!("http://{lr}"),
        token: Some(TOKEN.into()),
        tun: "unused".into(),
        tun_addr: Ipv4Addr::new(10, 255, 1, 1),
        ue_pool: "192.168.1.0/24".parse().unwrap(),
        qfi: 9,
    }
}

struct RunningIap {
    tun: ChannelPortPeer,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<IapStatus, iap::IapError>>,
}

fn start_iap(config: IapConfig, upf_port: u16) -> RunningIap {
    let (port, tun) = ChannelPort::pair();
    let (stop, shutdown) = sbi::nf::Shutdown::new();
    let task = tokio::spawn(iap::run_with(
        config,
        port,
        upf_port,
        sbi::nf::Ready::none(),
        shutdown,
    ));
    RunningIap { tun, stop, task }
}

/// Receives one G-PDU at the UPF stand-in; returns its TEID, QFI and inner packet.
async fn recv_g_pdu(upf: &UdpSocket) -> (u32, u8, Vec<u8>) {
    let d = recv(upf).await;
    let (repr, payload) = gtpu::decapsulate(&d).unwrap();
    assert_eq!(repr.msg_type, MessageType::GPdu);
    let c = repr.pdu_session.expect("dl container");
    assert_eq!(c.direction, Direction::Downlink);
    (repr.teid.0, c.qfi.value(), payload.to_vec())
}

#[tokio::test]
async fn iap_tunnels_downlink_to_the_pushed_location_and_ignores_stale_pushes() {
    let lr: Lr = Arc::new(Mutex::new(FakeLr {
        listed: vec![location(UE, 0x200, 1)],
        known: vec![location(UE3, 0x333, 1)],
        ..Default::default()
    }));
    let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let lr_addr = listener.local_addr().unwrap();
    let _lr_stop = start_lr(listener, lr.clone()).await;
    let upf = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
    let iap = start_iap(iap_config(lr_addr), upf.local_addr().unwrap().port());

    eventually("subscription and list fetched", || {
        let lr = lr.lock().unwrap();
        !lr.notify_uris.is_empty() && lr.list_fetched
    })
    .await;
    let notify_uri = lr.lock().unwrap().notify_uris[0].clone();
    assert!(notify_uri.ends_with("/iap/v1/locations"), "{notify_uri}");

    // A packet for the listed UE goes to its tunnel.
    let p1 = icmp_echo(Ipv4Addr::new(20, 0, 0, 10), UE, 1);
    iap.tun.inject.send(p1.clone()).unwrap();
    assert_eq!(recv_g_pdu(&upf).await, (0x200, 9, p1));

    // A newer push redirects the traffic.
    let client = sbi::Client::new(Some(TOKEN.into()), WAIT);
    client
        .post_no_content(&notify_uri, &location(UE, 0x300, 2))
        .await
        .unwrap();
    let p2 = icmp_echo(Ipv4Addr::new(20, 0, 0, 10), UE, 2);
    iap.tun.inject.send(p2.clone()).unwrap();
    assert_eq!(recv_g_pdu(&upf).await, (0x300, 9, p2));

    // An older push is answered but ignored.
    client
        .post_no_content(&notify_uri, &location(UE, 0x400, 1))
        .await
        .unwrap();
    let p3 = icmp_echo(Ipv4Addr::new(20, 0, 0, 10), UE, 3);
    iap.tun.inject.send(p3.clone()).unwrap();
    assert_eq!(recv_g_pdu(&upf).await, (0x300, 9, p3));

    // A miss: queued, the LR asked once, then everything flushed in order.
    let misses: Vec<Vec<u8>> = (10..13)
        .map(|s| icmp_echo(Ipv4Addr::new(20, 0, 0, 10), UE3, s))
        .collect();
    for p in &misses {
        iap.tun.inject.send(p.clone()).unwrap();
    }
    for p in &misses {
        assert_eq!(recv_g_pdu(&upf).await, (0x333, 9, p.clone()));
    }
    // An unknown UE: asked, dropped, not asked again right away.
    for s in 0..3 {
        iap.tun
            .inject
            .send(icmp_echo(Ipv4Addr::new(20, 0, 0, 10), UE9, s))
            .unwrap();
    }
    nothing(&upf).await;
    // Not IPv4.
    iap.tun.inject.send(vec![0x60; 40]).unwrap();

    // Pushes without the token or with a bad body are refused.
    let no_token = sbi::Client::new(None, WAIT);
    let err = no_token
        .post_no_content(&notify_uri, &location(UE, 0x500, 9))
        .await
        .unwrap_err();
    assert!(
        matches!(err, sbi::ClientError::Status { status: 401, .. }),
        "{err}"
    );
    let err = client
        .post_no_content(&notify_uri, &serde_json::json!({"ueIpv4": "192.168.1.2"}))
        .await
        .unwrap_err();
    assert!(
        matches!(err, sbi::ClientError::Status { status: 400, .. }),
        "{err}"
    );

    iap.stop.send(true).unwrap();
    let status = timeout(WAIT, iap.task).await.unwrap().unwrap().unwrap();
    {
        let lr = lr.lock().unwrap();
        assert_eq!(lr.deleted, vec!["1".to_string()]);
        assert_eq!(lr.queries.iter().filter(|&&q| q == UE3).count(), 1);
        assert_eq!(lr.queries.iter().filter(|&&q| q == UE9).count(), 1);
        assert!(!lr.queries.contains(&UE));
    }
    assert!(status.subscribed);
    let ue = status.ues[&UE];
    assert_eq!(ue.forwarded_packets, 3);
    let ue3 = status.ues[&UE3];
    assert_eq!(
        (ue3.forwarded_packets, ue3.queued_packets, ue3.queries),
        (3, 3, 1)
    );
    assert_eq!(status.ues[&UE9].dropped_packets, 3);
    assert_eq!(status.counters.stale_locations, 1);
    assert_eq!(status.counters.flushed_packets, 3);
    assert_eq!(status.counters.non_ipv4_dropped, 1);
    let cached: Vec<(Ipv4Addr, u32, u64)> = status
        .locations
        .iter()
        .map(|l| (l.ue_ipv4, l.upf_tunnel.teid, l.version))
        .collect();
    assert_eq!(cached, vec![(UE, 0x300, 2), (UE3, 0x333, 1)]);
}

#[tokio::test]
async fn iap_keeps_trying_until_the_lr_starts() {
    // Reserve a port, free it, and start the LR there only later.
    let reserved = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let lr_addr = reserved.local_addr().unwrap();
    drop(reserved);
    let upf = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
    let iap = start_iap(iap_config(lr_addr), upf.local_addr().unwrap().port());
    tokio::time::sleep(Duration::from_millis(400)).await;

    let lr: Lr = Arc::new(Mutex::new(FakeLr {
        listed: vec![location(UE, 0x200, 1)],
        ..Default::default()
    }));
    let listener = TcpListener::bind(lr_addr).await.unwrap();
    let _lr_stop = start_lr(listener, lr.clone()).await;
    eventually("late subscription", || lr.lock().unwrap().list_fetched).await;
    let p = icmp_echo(Ipv4Addr::new(20, 0, 0, 10), UE, 1);
    iap.tun.inject.send(p.clone()).unwrap();
    assert_eq!(recv_g_pdu(&upf).await, (0x200, 9, p));

    iap.stop.send(true).unwrap();
    let status = timeout(WAIT, iap.task).await.unwrap().unwrap().unwrap();
    assert!(status.subscribed);
    assert_eq!(lr.lock().unwrap().deleted.len(), 1);
}

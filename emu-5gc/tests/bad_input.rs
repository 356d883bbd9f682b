//! Bad input at every SBI endpoint of the SMF, the LR and the IAP (real processes' servers on
//! 127.0.0.1, a real HTTP/2 client: curl): a POST or PUT without the token and with a body, and
//! one over the size limit with the token, 100 tries each, every one answered with its status
//! and a ProblemDetails, never a reset stream.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use emu_5gc::iap::IapConfig;
use emu_5gc::lr::LrConfig;
use emu_5gc::smf::SmfConfig;
use emu_5gc::upf::port::ChannelPort;
use sbi::nf::{Ready, Shutdown};
use sbi::probe;
use tokio::net::{TcpListener, UdpSocket};

const TOKEN: &str = "test-token";
const TRIES: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow: 1400 curl tries (about 75 s); scripts/test runs it"]
async fn every_endpoint_answers_401_and_413_as_problem_details_over_http2() {
    let mut stops = Vec::new();

    let lr_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let lr: SocketAddr = lr_listener.local_addr().expect("addr");
    let (stop, shutdown) = Shutdown::new();
    stops.push(stop);
    let lr_config = LrConfig {
        sbi_addr: "127.0.0.1:0".parse().expect("addr"),
        token: Some(TOKEN.into()),
        callback_networks: Vec::new(),
    };
    tokio::spawn(emu_5gc::lr::run_on(
        lr_config,
        lr_listener,
        Ready::none(),
        shutdown,
    ));

    let smf_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let smf: SocketAddr = smf_listener.local_addr().expect("addr");
    let pfcp = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let smf_config = SmfConfig {
        sbi_addr: "127.0.0.1:0".parse().expect("addr"),
        pfcp_addr: "127.0.0.1:0".parse().expect("addr"),
        token: Some(TOKEN.into()),
        lr_url: format!("http://{lr}"),
        ue_pool: "192.168.1.0/24".parse().expect("pool"),
        qfi: 9,
        upfs: Vec::new(),
        gnbs: Vec::new(),
        callback_networks: Vec::new(),
        state_dir: None,
        ack_timeout_ms: None,
    };
    let (stop, shutdown) = Shutdown::new();
    stops.push(stop);
    tokio::spawn(emu_5gc::smf::run_on(
        smf_config,
        smf_listener,
        pfcp,
        Ready::none(),
        shutdown,
    ));

    let iap = SocketAddrV4::new(
        Ipv4Addr::LOCALHOST,
        probe::free_loopback_port().expect("free port"),
    );
    let iap_config = IapConfig {
        name: "iap-t".into(),
        site: "a".into(),
        sbi_addr: iap,
        lr_url: format!("http://{lr}"),
        token: Some(TOKEN.into()),
        tun: "unused".into(),
        tun_addr: Ipv4Addr::new(10, 255, 1, 1),
        ue_pool: "192.168.1.0/24".parse().expect("pool"),
        qfi: 9,
    };
    let (port, _tun) = ChannelPort::pair();
    let (stop, shutdown) = Shutdown::new();
    stops.push(stop);
    tokio::spawn(emu_5gc::iap::run_with(
        iap_config,
        port,
        2152,
        Ready::none(),
        shutdown,
    ));
    for a in [lr, smf, SocketAddr::V4(iap)] {
        assert!(
            probe::wait_listening(a, Duration::from_secs(10)).await,
            "nothing listens on {a}"
        );
    }

    let endpoints = [
        ("POST", format!("http://{smf}/n2-lite/v1/pdu-sessions")),
        ("POST", format!("http://{smf}/n2-lite/v1/path-switch")),
        (
            "POST",
            format!("http://{smf}/nsmf-event-exposure/v1/subscriptions"),
        ),
        (
            "PUT",
            format!("http://{smf}/nsmf-event-exposure/v1/subscriptions/sub-1"),
        ),
        ("PUT", format!("http://{lr}/lr/v1/ues/192.168.1.2")),
        ("POST", format!("http://{lr}/lr/v1/subscriptions")),
        ("POST", format!("http://{iap}/iap/v1/locations")),
    ];
    let (_, failed) =
        tokio::task::spawn_blocking(move || probe::refusals(&endpoints, TOKEN, TRIES))
            .await
            .expect("curl task")
            .expect("curl runs");
    drop(stops);
    assert!(failed.is_empty(), "{failed:#?}");
}

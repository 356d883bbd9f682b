//! Bad input at every POST endpoint of the gNB's HTTP API (its real server on 127.0.0.1, a real
//! HTTP/2 client: curl): without the token and with a body, and over the size limit with the
//! token, 100 tries each, every one answered with its status and a ProblemDetails, never a reset
//! stream.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use emu_ran::gnb::GnbConfig;
use sbi::probe;

const TOKEN: &str = "test-token";
const TRIES: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow: 600 curl tries (about 30 s); scripts/test runs it"]
async fn every_endpoint_answers_401_and_413_as_problem_details_over_http2() {
    let ip = Ipv4Addr::LOCALHOST;
    let http = SocketAddrV4::new(ip, probe::free_loopback_port().expect("free port"));
    let config = GnbConfig {
        name: "gnb-t".into(),
        site: "t".into(),
        radio_addr: SocketAddrV4::new(ip, 0),
        n3_addr: ip,
        xn_addr: ip,
        gtpu_bind: SocketAddrV4::new(ip, 0),
        http_addr: http,
        smf_url: "http://127.0.0.1:9".into(),
        token: Some(TOKEN.into()),
        qfi: 9,
        peers: Vec::new(),
    };
    let (stop, shutdown) = sbi::nf::Shutdown::new();
    let gnb = tokio::spawn(emu_ran::gnb::run(config, sbi::nf::Ready::none(), shutdown));
    assert!(
        probe::wait_listening(SocketAddr::V4(http), Duration::from_secs(10)).await,
        "the gnb does not listen on {http}"
    );
    let endpoints: Vec<(&str, String)> = [
        "/xnap-lite/v1/handover-requests",
        "/xnap-lite/v1/ue-context-releases",
        "/gnb-control/v1/handovers",
    ]
    .iter()
    .map(|path| ("POST", format!("http://{http}{path}")))
    .collect();
    let (_, failed) =
        tokio::task::spawn_blocking(move || probe::refusals(&endpoints, TOKEN, TRIES))
            .await
            .expect("curl task")
            .expect("curl runs");
    drop(stop);
    let _ = tokio::time::timeout(Duration::from_secs(5), gnb).await;
    assert!(failed.is_empty(), "{failed:#?}");
}

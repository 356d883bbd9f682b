//! Bad input at every POST endpoint of the gNB's HTTP API (its real server on 127.0.0.1, a real
//! HTTP/2 client: curl): without the token and with a body, and over the size limit with the
//! token, 100 tries each, every one answered with its status and a ProblemDetails, never a reset
//! stream.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use emu_ran::gnb::GnbConfig;
use sbi::probe::{self, Try};

const TOKEN: &str = "test-token";
const TRIES: usize = 100;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow: 600 curl tries (about 30 s); scripts/test runs it"]
async fn every_endpoint_answers_401_and_413_as_problem_details_over_http2() {
    let ip = Ipv4Addr::LOCALHOST;
    let http = SocketAddrV4::new(ip, free_port());
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
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(SocketAddr::V4(http))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "the gnb does not listen on {http}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let scratch = std::env::temp_dir().join(format!("emu-ran-bad-input-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).expect("scratch dir");
    let mut failed = Vec::new();
    for path in [
        "/xnap-lite/v1/handover-requests",
        "/xnap-lite/v1/ue-context-releases",
        "/gnb-control/v1/handovers",
    ] {
        for (token, body_len, status) in [
            (None, 256 << 10, 401),
            (Some(TOKEN), sbi::server::MAX_BODY + 1, 413),
        ] {
            let (url, dir) = (format!("http://{http}{path}"), scratch.clone());
            let answers = tokio::task::spawn_blocking(move || {
                let t = Try {
                    method: "POST",
                    url: &url,
                    token,
                    body_len,
                };
                probe::repeat(&t, TRIES, &dir)
            })
            .await
            .expect("curl task")
            .expect("curl runs");
            let line = format!("POST {path}: {}", probe::summary(&answers, status));
            println!("{line}");
            if answers.iter().any(|a| !a.is_problem(status)) {
                failed.push(line);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    drop(stop);
    let _ = tokio::time::timeout(Duration::from_secs(5), gnb).await;
    assert!(failed.is_empty(), "{failed:#?}");
}

//! In-process tests of the Location Registry and the SMF on 127.0.0.1: the LR for real, fakes for
//! the UPFs (UDP sockets speaking `wire::pfcp`), the IAPs and the AF (h2c servers via
//! `sbi::serve`). A shared log records what every fake received, in order.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use emu_5gc::smf::{GnbSite, SmfConfig, UpfPeer};
use model::common::DnaiChangeType;
use model::nsmf_event_exposure::{EventSubscription, NsmfEventExposure};
use model::ran::lr::{LrSubscription, UeLocation};
use model::ran::n2::{
    PathSwitchAck, PathSwitchRequest, PduSessionSetupRequest, PduSessionSetupResponse,
};
use model::ran::{TimelineStep, TunnelEndpoint};
use model::schema::{names, SchemaSet};
use sbi::nf::{Ready, Shutdown};
use serde_json::{json, Value};
use tokio::net::{TcpListener, UdpSocket};
use wire::gtpu::Teid;
use wire::pfcp::{
    ApplyAction, AssociationSetup, Cause, FSeid, FarId, Heartbeat, Interface, Message, NodeId,
    OuterHeaderCreation, OuterHeaderRemoval, PdrId, SessionEstablishmentResponse, SessionResponse,
    UeIpAddress,
};

const TOKEN: &str = "test-token";
const SUPI: &str = "imsi-001010000000001";

/// What the fakes received, in order.
#[derive(Debug, Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn push(&self, entry: String) {
        self.0.lock().expect("log").push(entry);
    }
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().expect("log"))
    }
}

async fn listener() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let a = l.local_addr().expect("addr");
    (l, a)
}

/// Serves a fake's `app` on 127.0.0.1:0 (h2c, the token required) until the test ends; its address.
async fn serve_fake(app: Router) -> SocketAddr {
    let (l, a) = listener().await;
    tokio::spawn(sbi::serve(
        l,
        app,
        Some(TOKEN.into()),
        std::future::pending(),
    ));
    a
}

/// A client speaking h2c like the NFs, with or without the token.
fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

async fn call(
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let mut r = http().request(method, url);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    if let Some(b) = body {
        r = r
            .header("content-type", "application/json")
            .body(b.to_owned());
    }
    let resp = r.send().await.expect("send");
    let status = StatusCode::from_u16(resp.status().as_u16()).expect("status");
    let headers = resp.headers().clone();
    let text = resp.text().await.expect("body");
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, headers, value)
}

async fn send_json(
    method: reqwest::Method,
    url: &str,
    body: &impl serde::Serialize,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let text = serde_json::to_string(body).expect("json");
    call(method, url, Some(TOKEN), Some(&text)).await
}

/// Runs the LR on 127.0.0.1:0; returns its base URL.
async fn start_lr() -> (String, tokio::sync::watch::Sender<bool>) {
    let (l, a) = listener().await;
    let (stop, shutdown) = Shutdown::new();
    let config = emu_5gc::lr::LrConfig {
        sbi_addr: "127.0.0.1:0".parse().expect("addr"),
        token: Some(TOKEN.into()),
        callback_networks: Vec::new(),
    };
    tokio::spawn(emu_5gc::lr::run_on(config, l, Ready::none(), shutdown));
    (format!("http://{a}"), stop)
}

/// A fake IAP: records every push (after `delay`) and answers 204.
async fn fake_iap(
    name: &'static str,
    log: Log,
    delay: Duration,
) -> (String, Arc<Mutex<Vec<UeLocation>>>) {
    let pushes: Arc<Mutex<Vec<UeLocation>>> = Arc::default();
    let state = (name, log, pushes.clone(), delay);
    type S = (&'static str, Log, Arc<Mutex<Vec<UeLocation>>>, Duration);
    let app = Router::new()
        .route(
            "/iap/v1/locations",
            post(
                |State((name, log, pushes, delay)): State<S>,
                 sbi::Json(l): sbi::Json<UeLocation>| async move {
                    tokio::time::sleep(delay).await;
                    log.push(format!("{name} push site {} version {}", l.site, l.version));
                    pushes.lock().expect("pushes").push(l);
                    StatusCode::NO_CONTENT
                },
            ),
        )
        .with_state(state);
    let a = serve_fake(app).await;
    (format!("http://{a}/iap/v1/locations"), pushes)
}

// ---------------------------------------------------------------------------------------------
// LR

fn location(ue: Ipv4Addr, site: &str, version: u64) -> UeLocation {
    UeLocation {
        ue_ipv4: ue,
        site: site.into(),
        dnai: format!("edge-{site}"),
        upf_tunnel: TunnelEndpoint {
            ipv4: Ipv4Addr::new(10, 90, 0, 2),
            teid: 0x10,
        },
        version,
    }
}

#[tokio::test]
async fn lr_stores_versions_and_pushes_before_answering() {
    let (lr, _stop) = start_lr().await;
    let log = Log::default();
    let (iap_a, pushes_a) = fake_iap("iap-a", log.clone(), Duration::from_millis(300)).await;
    let (iap_b, pushes_b) = fake_iap("iap-b", log.clone(), Duration::ZERO).await;
    let subs = format!("{lr}/lr/v1/subscriptions");
    let mut locations = Vec::new();
    for uri in [&iap_a, &iap_b] {
        let (status, headers, body) = send_json(
            reqwest::Method::POST,
            &subs,
            &LrSubscription {
                notify_uri: uri.clone(),
            },
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["notifyUri"], uri.as_str());
        let loc = headers["location"].to_str().expect("location").to_owned();
        assert!(loc.starts_with("/lr/v1/subscriptions/"), "{loc}");
        locations.push(loc);
    }

    let ue = Ipv4Addr::new(192, 168, 1, 2);
    let url = format!("{lr}/lr/v1/ues/{ue}");
    let started = Instant::now();
    let (status, _, body) = send_json(reqwest::Method::PUT, &url, &location(ue, "a", 77)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "answered before the slow push"
    );
    let stored: UeLocation = serde_json::from_value(body).expect("location");
    assert_eq!(stored.version, 1, "the LR assigns versions");
    // Both subscribers have it by the time the PUT answered.
    assert_eq!(
        pushes_a.lock().expect("a").as_slice(),
        std::slice::from_ref(&stored)
    );
    assert_eq!(
        pushes_b.lock().expect("b").as_slice(),
        std::slice::from_ref(&stored)
    );

    let (status, _, body) = send_json(reqwest::Method::PUT, &url, &location(ue, "b", 0)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["version"], 2);
    assert_eq!(body["site"], "b");
    let (status, _, body) = call(reqwest::Method::GET, &url, Some(TOKEN), None).await;
    assert_eq!(
        (status, body["version"].clone(), body["site"].clone()),
        (StatusCode::OK, json!(2), json!("b"))
    );

    let other = Ipv4Addr::new(192, 168, 1, 3);
    let other_url = format!("{lr}/lr/v1/ues/{other}");
    assert_eq!(
        send_json(reqwest::Method::PUT, &other_url, &location(other, "a", 0))
            .await
            .0,
        StatusCode::OK
    );
    let (status, _, list) = call(
        reqwest::Method::GET,
        &format!("{lr}/lr/v1/ues"),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let list: Vec<UeLocation> = serde_json::from_value(list).expect("list");
    assert_eq!(
        list.iter()
            .map(|l| (l.ue_ipv4, l.version))
            .collect::<Vec<_>>(),
        [(ue, 2), (other, 1)]
    );

    // Unsubscribing iap-a stops its pushes.
    assert_eq!(pushes_a.lock().expect("a").len(), 3);
    let (status, _, _) = call(
        reqwest::Method::DELETE,
        &format!("{lr}{}", locations[0]),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _, body) = call(
        reqwest::Method::DELETE,
        &format!("{lr}{}", locations[0]),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["status"], 404);
    assert_eq!(
        send_json(reqwest::Method::PUT, &url, &location(ue, "a", 0))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        pushes_a.lock().expect("a").len(),
        3,
        "no push after unsubscribing"
    );
    assert_eq!(pushes_b.lock().expect("b").len(), 4);
    assert_eq!(
        pushes_b.lock().expect("b").last().map(|l| l.version),
        Some(3)
    );

    // DELETE, then 404.
    let (status, _, _) = call(reqwest::Method::DELETE, &url, Some(TOKEN), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    for method in [reqwest::Method::GET, reqwest::Method::DELETE] {
        let (status, headers, body) = call(method, &url, Some(TOKEN), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(headers["content-type"], "application/problem+json");
        assert_eq!(body["status"], 404);
    }
}

#[tokio::test]
async fn lr_refuses_bad_requests_and_survives_dead_subscribers() {
    let (lr, _stop) = start_lr().await;
    let ue = Ipv4Addr::new(192, 168, 1, 2);
    let url = format!("{lr}/lr/v1/ues/{ue}");
    let good = serde_json::to_string(&location(ue, "a", 0)).expect("json");

    // No token: 401, nothing stored.
    let (status, _, body) = call(reqwest::Method::PUT, &url, None, Some(&good)).await;
    assert_eq!(
        (status, body["status"].clone()),
        (StatusCode::UNAUTHORIZED, json!(401))
    );
    let (status, _, _) = call(reqwest::Method::PUT, &url, Some("wrong"), Some(&good)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        call(reqwest::Method::GET, &url, Some(TOKEN), None).await.0,
        StatusCode::NOT_FOUND
    );

    // Bad bodies and paths: 400 problem+json.
    let mismatch =
        serde_json::to_string(&location(Ipv4Addr::new(192, 168, 1, 9), "a", 0)).expect("json");
    let mut unknown_field: Value = serde_json::from_str(&good).expect("json");
    unknown_field["extra"] = json!(1);
    let unknown_field = unknown_field.to_string();
    for (url, body) in [
        (url.as_str(), "{not json"),
        (url.as_str(), r#"{"ueIpv4":"192.168.1.2"}"#),
        (url.as_str(), mismatch.as_str()),
        (url.as_str(), unknown_field.as_str()),
        (&format!("{lr}/lr/v1/ues/not-an-ip") as &str, good.as_str()),
    ] {
        let (status, headers, problem) =
            call(reqwest::Method::PUT, url, Some(TOKEN), Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{url} {body}: {problem}");
        assert_eq!(headers["content-type"], "application/problem+json");
        assert_eq!(problem["status"], 400);
    }
    let subs = format!("{lr}/lr/v1/subscriptions");
    let (status, _, _) = call(
        reqwest::Method::POST,
        &subs,
        Some(TOKEN),
        Some(r#"{"notifyUri":"nowhere"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, _) = call(
        reqwest::Method::DELETE,
        &format!("{subs}/sub-99"),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A subscriber that never answers, one that is not there: the PUT answers within ~1 s.
    let silent = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let silent_uri = format!(
        "http://{}/iap/v1/locations",
        silent.local_addr().expect("addr")
    );
    let gone = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let gone_uri = format!(
        "http://{}/iap/v1/locations",
        gone.local_addr().expect("addr")
    );
    drop(gone);
    for uri in [silent_uri, gone_uri] {
        let (status, _, _) = send_json(
            reqwest::Method::POST,
            &subs,
            &LrSubscription { notify_uri: uri },
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let started = Instant::now();
    let (status, _, body) = call(reqwest::Method::PUT, &url, Some(TOKEN), Some(&good)).await;
    assert_eq!(
        (status, body["version"].clone()),
        (StatusCode::OK, json!(1))
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "{took:?}"
    );
    drop(silent);
}

// ---------------------------------------------------------------------------------------------
// SMF

/// A fake UPF: answers association, heartbeat and session messages; records the session ones.
#[derive(Debug, Clone)]
struct FakeUpf {
    addr: SocketAddrV4,
    received: Arc<Mutex<Vec<Message>>>,
    associated: Arc<AtomicBool>,
    /// Associations set up (a restarted SMF sets one up again).
    associations: Arc<AtomicU64>,
    reject_establishment: Arc<AtomicBool>,
    /// Requests of this kind (`establishment`, `modification`) get no answer.
    silent: Arc<Mutex<Option<&'static str>>>,
}

impl FakeUpf {
    async fn start(name: &'static str, log: Log, seid_base: u64) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = match socket.local_addr().expect("addr") {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(_) => panic!("v6"),
        };
        let upf = FakeUpf {
            addr,
            received: Arc::default(),
            associated: Arc::default(),
            associations: Arc::default(),
            reject_establishment: Arc::default(),
            silent: Arc::default(),
        };
        let me = upf.clone();
        let next_seid = AtomicU64::new(seid_base);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            loop {
                let (len, from) = socket.recv_from(&mut buf).await.expect("recv");
                let m = Message::parse(&buf[..len]).expect("the smf sends valid pfcp");
                let node_id = NodeId::Ipv4(Ipv4Addr::LOCALHOST);
                let answer = match &m {
                    Message::AssociationSetupRequest(r) => {
                        me.associated.store(true, Ordering::SeqCst);
                        me.associations.fetch_add(1, Ordering::SeqCst);
                        Message::AssociationSetupResponse(AssociationSetup {
                            seq: r.seq,
                            node_id,
                            cause: Some(Cause::ACCEPTED),
                            recovery_time_stamp: 1,
                        })
                    }
                    Message::HeartbeatRequest(r) => Message::HeartbeatResponse(Heartbeat {
                        seq: r.seq,
                        recovery_time_stamp: 1,
                    }),
                    Message::SessionEstablishmentRequest(r) => {
                        let reject = me.reject_establishment.load(Ordering::SeqCst);
                        log.push(format!("{name} establishment"));
                        Message::SessionEstablishmentResponse(SessionEstablishmentResponse {
                            seid: r.cp_f_seid.seid,
                            seq: r.seq,
                            node_id,
                            cause: if reject {
                                Cause::REJECTED
                            } else {
                                Cause::ACCEPTED
                            },
                            up_f_seid: (!reject).then(|| FSeid {
                                seid: next_seid.fetch_add(1, Ordering::SeqCst),
                                ipv4: Ipv4Addr::LOCALHOST,
                            }),
                        })
                    }
                    Message::SessionModificationRequest(r) => {
                        log.push(format!("{name} modification"));
                        Message::SessionModificationResponse(SessionResponse {
                            seid: 1,
                            seq: r.seq,
                            cause: Cause::ACCEPTED,
                        })
                    }
                    Message::SessionDeletionRequest(r) => {
                        log.push(format!("{name} deletion"));
                        Message::SessionDeletionResponse(SessionResponse {
                            seid: 1,
                            seq: r.seq,
                            cause: Cause::ACCEPTED,
                        })
                    }
                    other => panic!("unexpected {other:?}"),
                };
                let kind = match m {
                    Message::SessionEstablishmentRequest(_) => "establishment",
                    Message::SessionModificationRequest(_) => "modification",
                    _ => "",
                };
                if !matches!(
                    m,
                    Message::AssociationSetupRequest(_) | Message::HeartbeatRequest(_)
                ) {
                    me.received.lock().expect("received").push(m);
                }
                if *me.silent.lock().expect("silent") == Some(kind) {
                    continue;
                }
                let bytes = answer.to_vec().expect("encode");
                socket.send_to(&bytes, from).await.expect("send");
            }
        });
        upf
    }

    fn take(&self) -> Vec<Message> {
        std::mem::take(&mut *self.received.lock().expect("received"))
    }
}

/// A fake AF: records every notification body and answers 204.
async fn fake_af(log: Log) -> (String, Arc<Mutex<Vec<Value>>>) {
    let bodies: Arc<Mutex<Vec<Value>>> = Arc::default();
    type S = (Log, Arc<Mutex<Vec<Value>>>);
    let app = Router::new()
        .route(
            "/af/v1/notifications",
            post(
                |State((log, bodies)): State<S>, sbi::Json(v): sbi::Json<Value>| async move {
                    let kind = v["eventNotifs"][0]["dnaiChgType"]
                        .as_str()
                        .unwrap_or("?")
                        .to_owned();
                    log.push(format!(
                        "af {kind} {}",
                        v["notifId"].as_str().unwrap_or("?")
                    ));
                    bodies.lock().expect("bodies").push(v);
                    StatusCode::NO_CONTENT
                },
            ),
        )
        .with_state((log, bodies.clone()));
    let a = serve_fake(app).await;
    (format!("http://{a}/af/v1/notifications"), bodies)
}

struct Testbed {
    smf: String,
    /// The SMF runs on a runtime of its own: dropping it is the SMF's crash (every task of it
    /// ends at its next await, none writes afterwards).
    smf_rt: Option<tokio::runtime::Runtime>,
    smf_config: SmfConfig,
    lr: String,
    upf_a: FakeUpf,
    upf_b: FakeUpf,
    af_uri: String,
    af: Arc<Mutex<Vec<Value>>>,
    iap: Arc<Mutex<Vec<UeLocation>>>,
    log: Log,
    schemas: SchemaSet,
    _stops: Vec<tokio::sync::watch::Sender<bool>>,
}

const N3_A: Ipv4Addr = Ipv4Addr::new(10, 30, 0, 102);
const N3_B: Ipv4Addr = Ipv4Addr::new(10, 30, 0, 103);
const N9_A: Ipv4Addr = Ipv4Addr::new(10, 90, 0, 2);
const N9_B: Ipv4Addr = Ipv4Addr::new(10, 90, 0, 3);

async fn testbed() -> Testbed {
    testbed_in(None).await
}

/// A fresh state directory for an SMF of these tests.
fn state_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("smf-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

async fn testbed_in(state_dir: Option<std::path::PathBuf>) -> Testbed {
    testbed_with(state_dir, None).await
}

/// A testbed whose SMF holds a path switch at most `ack_timeout_ms` for AF acknowledgements.
async fn testbed_with(
    state_dir: Option<std::path::PathBuf>,
    ack_timeout_ms: Option<u64>,
) -> Testbed {
    let log = Log::default();
    let (lr, lr_stop) = start_lr().await;
    let (iap_uri, iap) = fake_iap("iap", log.clone(), Duration::ZERO).await;
    let (status, _, _) = send_json(
        reqwest::Method::POST,
        &format!("{lr}/lr/v1/subscriptions"),
        &LrSubscription {
            notify_uri: iap_uri,
        },
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let upf_a = FakeUpf::start("upf-a", log.clone(), 0xa000).await;
    let upf_b = FakeUpf::start("upf-b", log.clone(), 0xb000).await;
    let (af_uri, af) = fake_af(log.clone()).await;
    let peer = |name: &str, site: &str, upf: &FakeUpf, n3, n9| UpfPeer {
        name: name.into(),
        site: site.into(),
        dnai: format!("edge-{site}"),
        pfcp: upf.addr,
        n3,
        n9,
    };
    let gnb = |name: &str, site: &str| GnbSite {
        name: name.into(),
        site: site.into(),
    };
    let config = SmfConfig {
        sbi_addr: "127.0.0.1:0".parse().expect("addr"),
        pfcp_addr: "127.0.0.1:0".parse().expect("addr"),
        token: Some(TOKEN.into()),
        lr_url: lr.clone(),
        ue_pool: "192.168.1.0/24".parse().expect("pool"),
        qfi: 9,
        upfs: vec![
            peer("upf-a", "a", &upf_a, N3_A, N9_A),
            peer("upf-b", "b", &upf_b, N3_B, N9_B),
        ],
        gnbs: vec![gnb("gnb-a", "a"), gnb("gnb-a2", "a"), gnb("gnb-b", "b")],
        callback_networks: Vec::new(),
        state_dir,
        ack_timeout_ms,
    };
    let (smf_rt, smf) = start_smf(config.clone()).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !(upf_a.associated.load(Ordering::SeqCst) && upf_b.associated.load(Ordering::SeqCst)) {
        assert!(
            Instant::now() < deadline,
            "the smf did not associate with both upfs"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let schemas = SchemaSet::load(SchemaSet::default_dir()).expect("3gpp schemas");
    Testbed {
        smf,
        smf_rt: Some(smf_rt),
        smf_config: config,
        lr,
        upf_a,
        upf_b,
        af_uri,
        af,
        iap,
        log,
        schemas,
        _stops: vec![lr_stop],
    }
}

/// Starts an SMF with `config` on a runtime of its own (its sockets on 127.0.0.1:0); the
/// runtime and the SMF's base URL.
async fn start_smf(config: SmfConfig) -> (tokio::runtime::Runtime, String) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("smf runtime");
    let (tx, rx) = tokio::sync::oneshot::channel();
    rt.spawn(async move {
        let (sbi, addr) = listener().await;
        let pfcp = UdpSocket::bind("127.0.0.1:0").await.expect("bind pfcp");
        let _ = tx.send(addr);
        let (_stop, shutdown) = Shutdown::new();
        let _ = emu_5gc::smf::run_on(config, sbi, pfcp, Ready::none(), shutdown).await;
    });
    let addr = rx.await.expect("smf started");
    (rt, format!("http://{addr}"))
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if let Some(rt) = self.smf_rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Testbed {
    /// The SMF's crash (every task of it ends, as with SIGKILL) and its start again with the
    /// same config (and state directory), on new ports.
    async fn restart_smf(&mut self) {
        if let Some(rt) = self.smf_rt.take() {
            rt.shutdown_background();
        }
        let (rt, url) = start_smf(self.smf_config.clone()).await;
        self.smf_rt = Some(rt);
        self.smf = url;
    }

    fn check(&self, schema: &str, value: &Value) {
        if let Err(errors) = self.schemas.validate(schema, value) {
            panic!("{value} does not match {schema}: {errors:#?}");
        }
    }

    /// Subscribes (validating the request and the 201 body); returns the subscription's URL.
    async fn subscribe(
        &self,
        notif_id: &str,
        timing: DnaiChangeType,
        supi: Option<&str>,
    ) -> String {
        let mut s = NsmfEventExposure::new(
            notif_id,
            self.af_uri.as_str(),
            vec![EventSubscription::up_path_change(timing)],
        );
        match supi {
            Some(supi) => s.supi = Some(supi.into()),
            None => s.any_ue_ind = Some(true),
        }
        let request = serde_json::to_value(&s).expect("json");
        self.check(names::NSMF_EVENT_EXPOSURE, &request);
        let url = format!("{}/nsmf-event-exposure/v1/subscriptions", self.smf);
        let (status, headers, body) = send_json(reqwest::Method::POST, &url, &request).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        self.check(names::NSMF_EVENT_EXPOSURE, &body);
        let location = headers["location"].to_str().expect("location").to_owned();
        let sub_id = body["subId"].as_str().expect("subId");
        assert_eq!(location, format!("{url}/{sub_id}"));
        location
    }

    async fn setup(&self, supi: &str, gnb: &str, teid: u32) -> PduSessionSetupResponse {
        let request = PduSessionSetupRequest {
            supi: supi.into(),
            gnb: gnb.into(),
            gnb_tunnel: gnb_tunnel(gnb, teid),
        };
        let (status, _, body) = send_json(
            reqwest::Method::POST,
            &format!("{}/n2-lite/v1/pdu-sessions", self.smf),
            &request,
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        serde_json::from_value(body).expect("setup response")
    }

    async fn path_switch(&self, ue: Ipv4Addr, gnb: &str, teid: u32) -> (StatusCode, Value) {
        let request = PathSwitchRequest {
            supi: SUPI.into(),
            ue_ipv4: ue,
            gnb: gnb.into(),
            gnb_tunnel: gnb_tunnel(gnb, teid),
        };
        let (status, _, body) = send_json(
            reqwest::Method::POST,
            &format!("{}/n2-lite/v1/path-switch", self.smf),
            &request,
        )
        .await;
        (status, body)
    }

    /// A path switch request sent in a task of its own (one a crash may cut): its answer's
    /// status, or the error of a request that got none.
    fn spawn_path_switch(
        &self,
        ue: Ipv4Addr,
        gnb: &str,
        teid: u32,
    ) -> tokio::task::JoinHandle<Result<u16, reqwest::Error>> {
        let request = serde_json::to_string(&PathSwitchRequest {
            supi: SUPI.into(),
            ue_ipv4: ue,
            gnb: gnb.into(),
            gnb_tunnel: gnb_tunnel(gnb, teid),
        })
        .expect("json");
        let url = format!("{}/n2-lite/v1/path-switch", self.smf);
        tokio::spawn(async move {
            http()
                .post(&url)
                .bearer_auth(TOKEN)
                .header("content-type", "application/json")
                .body(request)
                .send()
                .await
                .map(|r| r.status().as_u16())
        })
    }

    async fn lr_location(&self, ue: Ipv4Addr) -> UeLocation {
        let (status, _, body) = call(
            reqwest::Method::GET,
            &format!("{}/lr/v1/ues/{ue}", self.lr),
            Some(TOKEN),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        serde_json::from_value(body).expect("location")
    }

    /// Every notification received since the last call, each validated against the schema.
    fn notifications(&self) -> Vec<Value> {
        let bodies = std::mem::take(&mut *self.af.lock().expect("af"));
        for b in &bodies {
            self.check(names::NSMF_EVENT_EXPOSURE_NOTIFICATION, b);
        }
        bodies
    }
}

fn gnb_tunnel(gnb: &str, teid: u32) -> TunnelEndpoint {
    let last = match gnb {
        "gnb-a" | "gnb-a2" => 2,
        _ => 3,
    };
    TunnelEndpoint {
        ipv4: Ipv4Addr::new(10, 30, 0, last),
        teid,
    }
}

/// The session establishment in `messages`; checks it against the contract.
fn check_establishment(
    messages: &[Message],
    ue: Ipv4Addr,
    n3: Ipv4Addr,
    n9: Ipv4Addr,
    gnb: TunnelEndpoint,
) -> (u32, u32) {
    let [Message::SessionEstablishmentRequest(r)] = messages else {
        panic!("expected one establishment, got {messages:?}");
    };
    assert_eq!(r.seid, 0);
    assert_eq!(r.node_id, NodeId::Ipv4(Ipv4Addr::LOCALHOST));
    assert_eq!(r.cp_f_seid.ipv4, Ipv4Addr::LOCALHOST);
    let [ul, dl] = &r.create_pdrs[..] else {
        panic!("two pdrs: {r:?}");
    };
    assert_eq!(
        (ul.pdr_id, ul.precedence, ul.far_id),
        (PdrId(1), 100, Some(FarId(1)))
    );
    assert_eq!(ul.pdi.source_interface, Interface::ACCESS);
    let ul_teid = ul.pdi.f_teid.expect("uplink f-teid");
    assert_eq!(ul_teid.ipv4, n3);
    assert_eq!(ul.pdi.ue_ip_address, None);
    assert_eq!(
        ul.outer_header_removal,
        Some(OuterHeaderRemoval::GTPU_UDP_IPV4)
    );
    assert_eq!(
        (dl.pdr_id, dl.precedence, dl.far_id),
        (PdrId(2), 100, Some(FarId(2)))
    );
    assert_eq!(dl.pdi.source_interface, Interface::CORE);
    let dl_teid = dl.pdi.f_teid.expect("downlink f-teid");
    assert_eq!(dl_teid.ipv4, n9);
    assert_eq!(
        dl.pdi.ue_ip_address,
        Some(UeIpAddress {
            ipv4: ue,
            destination: true
        })
    );
    assert_eq!(
        dl.outer_header_removal,
        Some(OuterHeaderRemoval::GTPU_UDP_IPV4)
    );
    assert_ne!(ul_teid.teid, dl_teid.teid);
    let [far1, far2] = &r.create_fars[..] else {
        panic!("two fars: {r:?}");
    };
    assert_eq!(
        (far1.far_id, far1.apply_action),
        (FarId(1), Some(ApplyAction::FORW))
    );
    let fp1 = far1
        .forwarding_parameters
        .as_ref()
        .expect("far 1 forwarding");
    assert_eq!(
        (fp1.destination_interface, fp1.outer_header_creation),
        (Some(Interface::CORE), None)
    );
    assert_eq!(
        (far2.far_id, far2.apply_action),
        (FarId(2), Some(ApplyAction::FORW))
    );
    let fp2 = far2
        .forwarding_parameters
        .as_ref()
        .expect("far 2 forwarding");
    assert_eq!(fp2.destination_interface, Some(Interface::ACCESS));
    assert_eq!(
        fp2.outer_header_creation,
        Some(OuterHeaderCreation {
            teid: Teid(gnb.teid),
            ipv4: gnb.ipv4
        })
    );
    assert!(!fp2.send_end_marker);
    (ul_teid.teid.0, dl_teid.teid.0)
}

/// The Update FAR 2 with SNDEM in a modification of `seid`, pointing at `gnb`.
fn check_switch(m: &Message, seid: u64, gnb: TunnelEndpoint) {
    let Message::SessionModificationRequest(r) = m else {
        panic!("not a modification: {m:?}");
    };
    assert_eq!(r.seid, seid);
    let [far] = &r.update_fars[..] else {
        panic!("one update far: {r:?}");
    };
    assert_eq!(far.far_id, FarId(2));
    let fp = far
        .forwarding_parameters
        .as_ref()
        .expect("update forwarding parameters");
    assert!(fp.send_end_marker, "SNDEM");
    assert_eq!(
        fp.outer_header_creation,
        Some(OuterHeaderCreation {
            teid: Teid(gnb.teid),
            ipv4: gnb.ipv4
        })
    );
    assert!(r.create_pdrs.is_empty() && r.create_fars.is_empty() && r.remove_pdrs.is_empty());
}

fn step_names(timeline: &[TimelineStep]) -> Vec<&str> {
    timeline.iter().map(|s| s.step.as_str()).collect()
}

#[tokio::test]
async fn pdu_session_and_handover_with_upf_relocation() {
    let tb = testbed().await;
    let early = tb.subscribe("early-any", DnaiChangeType::Early, None).await;
    tb.subscribe("late-any", DnaiChangeType::Late, None).await;
    let mine = tb
        .subscribe("both-mine", DnaiChangeType::EarlyLate, Some(SUPI))
        .await;
    tb.subscribe(
        "other-ue",
        DnaiChangeType::EarlyLate,
        Some("imsi-001010000000099"),
    )
    .await;

    // PDU session at gnb-a → upf-a.
    let setup = tb.setup(SUPI, "gnb-a", 0x51).await;
    let ue = Ipv4Addr::new(192, 168, 1, 2);
    assert_eq!((setup.ue_ipv4, setup.pdu_session_id, setup.qfi), (ue, 1, 9));
    let (ul_a, dl_a) =
        check_establishment(&tb.upf_a.take(), ue, N3_A, N9_A, gnb_tunnel("gnb-a", 0x51));
    assert_eq!(
        setup.upf_tunnel,
        TunnelEndpoint {
            ipv4: N3_A,
            teid: ul_a
        }
    );
    let at_a = tb.lr_location(ue).await;
    assert_eq!(
        (at_a.site.as_str(), at_a.dnai.as_str(), at_a.version),
        ("a", "edge-a", 1)
    );
    assert_eq!(
        at_a.upf_tunnel,
        TunnelEndpoint {
            ipv4: N9_A,
            teid: dl_a
        }
    );
    assert_eq!(
        tb.iap.lock().expect("iap").last(),
        Some(&at_a),
        "the iap got the push"
    );
    assert!(tb.upf_b.take().is_empty());
    assert!(tb.notifications().is_empty(), "no notification at setup");
    tb.log.take();

    // Handover to gnb-b: relocation to upf-b.
    let (status, body) = tb.path_switch(ue, "gnb-b", 0x61).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let ack: PathSwitchAck = serde_json::from_value(body).expect("ack");
    let log = tb.log.take();
    assert_eq!(
        log,
        [
            // EARLY notifications (concurrent: any order among themselves) …
            log[0].clone(),
            log[1].clone(),
            "upf-b establishment".into(),
            "iap push site b version 2".into(),
            "upf-a modification".into(),
            "upf-a deletion".into(),
            log[6].clone(),
            log[7].clone(),
        ],
        "order of the relocation"
    );
    let mut early_log = log[..2].to_vec();
    early_log.sort();
    assert_eq!(early_log, ["af EARLY both-mine", "af EARLY early-any"]);
    let mut late_log = log[6..].to_vec();
    late_log.sort();
    assert_eq!(late_log, ["af LATE both-mine", "af LATE late-any"]);

    let (ul_b, dl_b) =
        check_establishment(&tb.upf_b.take(), ue, N3_B, N9_B, gnb_tunnel("gnb-b", 0x61));
    assert_eq!(ack.upf, "upf-b");
    assert_eq!(
        ack.upf_tunnel,
        TunnelEndpoint {
            ipv4: N3_B,
            teid: ul_b
        }
    );
    let at_a_msgs = tb.upf_a.take();
    let [modification, deletion] = &at_a_msgs[..] else {
        panic!("modification and deletion at upf-a: {at_a_msgs:?}");
    };
    let seid_a = 0xa000; // the fake's first session
    check_switch(modification, seid_a, gnb_tunnel("gnb-b", 0x61));
    assert!(
        matches!(deletion, Message::SessionDeletionRequest(d) if d.seid == seid_a),
        "{deletion:?}"
    );
    let at_b = tb.lr_location(ue).await;
    assert_eq!(
        (at_b.site.as_str(), at_b.dnai.as_str(), at_b.version),
        ("b", "edge-b", 2)
    );
    assert_eq!(
        at_b.upf_tunnel,
        TunnelEndpoint {
            ipv4: N9_B,
            teid: dl_b
        }
    );

    assert_eq!(
        step_names(&ack.timeline),
        [
            "early up_path_ch notifications (2 subscriptions)",
            "pfcp session establishment at upf-b",
            "lr update (site b, after pushes to iaps)",
            "pfcp session modification (end marker) at upf-a",
            "pfcp session deletion at upf-a",
            "late up_path_ch notifications (2 subscriptions)",
        ]
    );
    assert!(ack
        .timeline
        .windows(2)
        .all(|w| w[0].at_us + w[0].took_us <= w[1].at_us + 1));

    // The notifications: schema-valid (checked in `notifications`), and their content.
    let notifications = tb.notifications();
    assert_eq!(notifications.len(), 4);
    for n in &notifications {
        let [e] = n["eventNotifs"].as_array().expect("eventNotifs").as_slice() else {
            panic!("one event: {n}");
        };
        assert_eq!(e["event"], "UP_PATH_CH");
        assert_eq!(e["sourceDnai"], "edge-a");
        assert_eq!(e["targetDnai"], "edge-b");
        assert_eq!(e["sourceUeIpv4Addr"], "192.168.1.2");
        assert_eq!(e["targetUeIpv4Addr"], "192.168.1.2");
        assert_eq!(
            e["sourceTraRouting"],
            json!({"dnai": "edge-a", "routeInfo": {"ipv4Addr": "10.90.0.2", "portNumber": 2152}})
        );
        assert_eq!(
            e["targetTraRouting"],
            json!({"dnai": "edge-b", "routeInfo": {"ipv4Addr": "10.90.0.3", "portNumber": 2152}})
        );
        assert_eq!(e["supi"], SUPI);
        assert_eq!(e["pduSeId"], 1);
        let kind = e["dnaiChgType"].as_str().expect("dnaiChgType");
        let id = n["notifId"].as_str().expect("notifId");
        assert!(
            matches!(
                (kind, id),
                ("EARLY", "early-any" | "both-mine") | ("LATE", "late-any" | "both-mine")
            ),
            "{kind} {id}"
        );
    }

    // Change the subscriptions: delete the per-UE one, turn the EARLY one into LATE.
    let (status, _, _) = call(reqwest::Method::DELETE, &mine, Some(TOKEN), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let mut replaced = NsmfEventExposure::new(
        "early-now-late",
        tb.af_uri.as_str(),
        vec![EventSubscription::up_path_change(DnaiChangeType::Late)],
    );
    replaced.any_ue_ind = Some(true);
    let (status, _, body) = send_json(reqwest::Method::PUT, &early, &replaced).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    tb.check(names::NSMF_EVENT_EXPOSURE, &body);

    // And back to gnb-a: relocation to upf-a again.
    let (status, body) = tb.path_switch(ue, "gnb-a", 0x52).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let back: PathSwitchAck = serde_json::from_value(body).expect("ack");
    let (ul_a2, _) =
        check_establishment(&tb.upf_a.take(), ue, N3_A, N9_A, gnb_tunnel("gnb-a", 0x52));
    assert_ne!(ul_a2, ul_a, "fresh teids");
    assert_eq!(
        (back.upf.as_str(), back.upf_tunnel),
        (
            "upf-a",
            TunnelEndpoint {
                ipv4: N3_A,
                teid: ul_a2
            }
        )
    );
    let at_b_msgs = tb.upf_b.take();
    assert_eq!(at_b_msgs.len(), 2);
    check_switch(&at_b_msgs[0], 0xb000, gnb_tunnel("gnb-a", 0x52));
    assert_eq!(tb.lr_location(ue).await.site, "a");
    let mut ids: Vec<String> = tb
        .notifications()
        .iter()
        .map(|n| {
            format!(
                "{} {}",
                n["eventNotifs"][0]["dnaiChgType"].as_str().unwrap_or("?"),
                n["notifId"].as_str().unwrap_or("?")
            )
        })
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        ["LATE early-now-late", "LATE late-any"],
        "no notification for the deleted subscription"
    );
    assert_eq!(
        back.timeline[0].step,
        "early up_path_ch notifications (0 subscriptions)"
    );

    // Handover to another gNB of the same site: only FAR 2 changes, with an End Marker.
    tb.log.take();
    let (status, body) = tb.path_switch(ue, "gnb-a2", 0x53).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let same: PathSwitchAck = serde_json::from_value(body).expect("ack");
    assert_eq!(
        (same.upf.as_str(), same.upf_tunnel),
        ("upf-a", back.upf_tunnel)
    );
    assert_eq!(
        step_names(&same.timeline),
        ["pfcp session modification (end marker) at upf-a"]
    );
    let msgs = tb.upf_a.take();
    assert_eq!(msgs.len(), 1);
    check_switch(&msgs[0], 0xa001, gnb_tunnel("gnb-a2", 0x53));
    assert_eq!(
        tb.log.take(),
        ["upf-a modification"],
        "no lr update, no notification"
    );
    assert!(tb.notifications().is_empty());

    // Re-attach keeps the address; another UE gets the next one.
    let again = tb.setup(SUPI, "gnb-b", 0x62).await;
    assert_eq!(again.ue_ipv4, ue);
    assert_eq!(again.upf_tunnel.ipv4, N3_B);
    let other = tb.setup("imsi-001010000000002", "gnb-a", 0x54).await;
    assert_eq!(other.ue_ipv4, Ipv4Addr::new(192, 168, 1, 3));
}

#[tokio::test]
async fn failed_relocation_leaves_the_session_at_the_source() {
    let tb = testbed().await;
    tb.subscribe("both", DnaiChangeType::EarlyLate, None).await;
    let setup = tb.setup(SUPI, "gnb-a", 0x51).await;
    let ue = setup.ue_ipv4;
    tb.upf_a.take();
    tb.log.take();

    tb.upf_b.reject_establishment.store(true, Ordering::SeqCst);
    let (status, problem) = tb.path_switch(ue, "gnb-b", 0x61).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{problem}");
    tb.check(names::PROBLEM_DETAILS, &problem);
    assert_eq!(problem["cause"], "SYSTEM_FAILURE");
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("upf-b")),
        "{problem}"
    );
    assert_eq!(
        tb.log.take(),
        ["af EARLY both", "upf-b establishment"],
        "nothing at upf-a, no lr update, no LATE"
    );
    assert!(tb.upf_a.take().is_empty());
    assert_eq!(tb.lr_location(ue).await.site, "a");
    assert_eq!(tb.notifications().len(), 1);

    // The session is still at upf-a: a retry works once upf-b accepts.
    tb.upf_b.reject_establishment.store(false, Ordering::SeqCst);
    let (status, body) = tb.path_switch(ue, "gnb-b", 0x61).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["upf"], "upf-b");

    // Unknown UE, wrong address, unknown gNB.
    let (status, problem) = tb
        .path_switch(Ipv4Addr::new(192, 168, 1, 9), "gnb-a", 1)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    tb.check(names::PROBLEM_DETAILS, &problem);
    let (status, _) = tb.path_switch(ue, "gnb-z", 1).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let request = PathSwitchRequest {
        supi: "imsi-001010000000777".into(),
        ue_ipv4: ue,
        gnb: "gnb-a".into(),
        gnb_tunnel: gnb_tunnel("gnb-a", 1),
    };
    let (status, _, problem) = send_json(
        reqwest::Method::POST,
        &format!("{}/n2-lite/v1/path-switch", tb.smf),
        &request,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{problem}");
    tb.check(names::PROBLEM_DETAILS, &problem);
}

/// The establishment's uplink/downlink TEIDs and CP SEID.
fn establishment_ids(m: &Message) -> (u32, u32, u64) {
    let Message::SessionEstablishmentRequest(r) = m else {
        panic!("not an establishment: {m:?}");
    };
    let teid = |i: usize| r.create_pdrs[i].pdi.f_teid.expect("f-teid").teid.0;
    (teid(0), teid(1), r.cp_f_seid.seid)
}

#[tokio::test]
async fn a_restarted_smf_has_its_sessions_subscriptions_and_ids() {
    let dir = state_dir("restart");
    let mut tb = testbed_in(Some(dir.clone())).await;
    let early = tb.subscribe("early-any", DnaiChangeType::Early, None).await;
    tb.subscribe("late-mine", DnaiChangeType::Late, Some(SUPI))
        .await;
    let gone = tb.subscribe("gone", DnaiChangeType::EarlyLate, None).await;
    let (status, _, _) = call(reqwest::Method::DELETE, &gone, Some(TOKEN), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let setup = tb.setup(SUPI, "gnb-a", 0x51).await;
    tb.upf_a.take();
    tb.log.take();

    tb.restart_smf().await;
    // The UPFs see a new association (the SMF's new Recovery Time Stamp), nothing else.
    let deadline = Instant::now() + Duration::from_secs(5);
    while tb.upf_a.associations.load(Ordering::SeqCst) < 2 {
        assert!(Instant::now() < deadline, "no new association with upf-a");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(tb.upf_a.take().is_empty() && tb.upf_b.take().is_empty());
    // The subscription is still there, under the same URL path.
    let path = early.split_once("/nsmf-event-exposure").expect("path").1;
    let (status, _, body) = call(
        reqwest::Method::GET,
        &format!("{}/nsmf-event-exposure{path}", tb.smf),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(
        (status, body["notifId"].clone()),
        (StatusCode::OK, json!("early-any"))
    );

    // The session is still there: the handover relocates it, the same subscriptions hear of it.
    let (status, body) = tb.path_switch(setup.ue_ipv4, "gnb-b", 0x61).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["upf"], "upf-b");
    let a = tb.upf_a.take();
    check_switch(&a[0], 0xa000, gnb_tunnel("gnb-b", 0x61));
    let (ul, _, cp_seid) = establishment_ids(&tb.upf_b.take()[0]);
    assert_eq!(
        (ul, cp_seid),
        (1, 2),
        "the counters went on (upf-b's first TEIDs, SEID 2)"
    );
    let mut got: Vec<String> = tb
        .notifications()
        .iter()
        .map(|n| {
            format!(
                "{} {}",
                n["notifId"].as_str().unwrap_or("?"),
                n["eventNotifs"][0]["dnaiChgType"].as_str().unwrap_or("?")
            )
        })
        .collect();
    got.sort();
    assert_eq!(got, ["early-any EARLY", "late-mine LATE"]);
    // Ids count on: the deleted sub-3 is not handed out again.
    let next = tb.subscribe("next", DnaiChangeType::Late, None).await;
    assert!(next.ends_with("/subscriptions/sub-4"), "{next}");
    // And another UE gets the next address, not the restored UE's.
    let other = tb.setup("imsi-001010000000002", "gnb-a", 0x54).await;
    assert_eq!(other.ue_ipv4, Ipv4Addr::new(192, 168, 1, 3));
    drop(tb);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_path_switch_cut_by_a_crash_is_finished_after_the_restart_and_a_retry_gets_its_answer() {
    for (upf, stalled) in [("upf-b", "establishment"), ("upf-a", "modification")] {
        let dir = state_dir(stalled);
        let mut tb = testbed_in(Some(dir.clone())).await;
        tb.subscribe("both", DnaiChangeType::EarlyLate, None).await;
        let setup = tb.setup(SUPI, "gnb-a", 0x51).await;
        let ue = setup.ue_ipv4;
        tb.upf_a.take();
        tb.log.take();
        let stalling = if upf == "upf-b" { &tb.upf_b } else { &tb.upf_a };
        *stalling.silent.lock().expect("silent") = Some(stalled);

        // The path switch stops at the UPF that does not answer; the SMF dies there.
        let cut = tb.spawn_path_switch(ue, "gnb-b", 0x61);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !tb
            .log
            .0
            .lock()
            .expect("log")
            .iter()
            .any(|l| l == &format!("{upf} {stalled}"))
        {
            assert!(Instant::now() < deadline, "no {stalled} at {upf}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let first_establishment = tb.upf_b.take();
        let at_a_before = tb.upf_a.take();
        *stalling.silent.lock().expect("silent") = None;
        tb.restart_smf().await;
        assert!(
            cut.await.expect("join").is_err(),
            "the request cut by the crash got no answer"
        );

        // The gNB tries again: the restarted SMF finished the switch (by itself or for this
        // request) and answers it.
        let (status, body) = tb.path_switch(ue, "gnb-b", 0x61).await;
        assert_eq!(status, StatusCode::OK, "{stalled}: {body}");
        let ack: PathSwitchAck = serde_json::from_value(body).expect("ack");
        assert_eq!(ack.upf, "upf-b");
        let steps = step_names(&ack.timeline);
        assert!(
            steps
                .iter()
                .any(|s| s.starts_with("smf restarted: path switch resumed")),
            "{stalled}: {steps:?}"
        );
        // What was sent again is the same (same TEIDs and SEID at the target), and the switch
        // went through once: one deletion at upf-a, one LR update to site b.
        let at_b = tb.upf_b.take();
        let at_a: Vec<Message> = at_a_before.into_iter().chain(tb.upf_a.take()).collect();
        let establishments: Vec<(u32, u32, u64)> = first_establishment
            .iter()
            .chain(&at_b)
            .filter(|m| matches!(m, Message::SessionEstablishmentRequest(_)))
            .map(establishment_ids)
            .collect();
        assert!(
            establishments.windows(2).all(|w| w[0] == w[1]) && !establishments.is_empty(),
            "{stalled}: {establishments:?}"
        );
        assert_eq!(ack.upf_tunnel.teid, establishments[0].0);
        let deletions = at_a
            .iter()
            .filter(|m| matches!(m, Message::SessionDeletionRequest(_)))
            .count();
        assert_eq!(deletions, 1, "{stalled}: {at_a:?}");
        assert!(at_a
            .iter()
            .all(|m| !matches!(m, Message::SessionEstablishmentRequest(_))));
        let at_b_site = tb.lr_location(ue).await;
        assert_eq!(at_b_site.site, "b");
        let kinds: Vec<String> = tb
            .notifications()
            .iter()
            .map(|n| {
                n["eventNotifs"][0]["dnaiChgType"]
                    .as_str()
                    .unwrap_or("?")
                    .to_owned()
            })
            .collect();
        assert_eq!(kinds, ["EARLY", "LATE"], "{stalled}: once each");

        // Once more: the same answer, nothing sent to any UPF or the LR.
        tb.log.take();
        let (status, again) = tb.path_switch(ue, "gnb-b", 0x61).await;
        assert_eq!(status, StatusCode::OK);
        let again: PathSwitchAck = serde_json::from_value(again).expect("ack");
        assert_eq!(again, ack);
        assert!(tb.upf_a.take().is_empty() && tb.upf_b.take().is_empty());
        assert!(tb.log.take().is_empty(), "no lr update, no notification");
        drop(tb);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

// ---------------------------------------------------------------------------------------------
// AF acknowledgements: traffic controls (the N7 stand-in) and the NEF

/// A fake AF that acknowledges: it records every notification, logs `af KIND ID` before its 204,
/// and for one with an `ackUri` (TS 29.508: `AckOfNotify`) or an `afAckUri` (TS 29.522:
/// `AfAckInfo`) POSTs `afStatus` there 50 ms later (logged `ack STATUS` before it goes; `None`:
/// no answer). What it sent and the status it got are in `acks`.
#[derive(Clone, Default)]
struct Acker {
    af_status: Arc<Mutex<Option<&'static str>>>,
    bodies: Arc<Mutex<Vec<Value>>>,
    acks: Arc<Mutex<Vec<(String, Value, StatusCode)>>>,
}

impl Acker {
    async fn start(log: Log, af_status: Option<&'static str>) -> (String, Self) {
        let me = Acker::default();
        *me.af_status.lock().expect("status") = af_status;
        type S = (Log, Acker);
        let app = Router::new()
            .route(
                "/af/v1/ack-notifications",
                post(
                    |State((log, me)): State<S>, sbi::Json(v): sbi::Json<Value>| async move {
                        let kind = v["dnaiChgType"]
                            .as_str()
                            .or(v["eventNotifs"][0]["dnaiChgType"].as_str())
                            .unwrap_or("?");
                        let id = v["notifId"].as_str().or(v["afTransId"].as_str());
                        log.push(format!("af {kind} {}", id.unwrap_or("?")));
                        me.bodies.lock().expect("bodies").push(v.clone());
                        let status = *me.af_status.lock().expect("status");
                        let ack = match (v["ackUri"].as_str(), v["afAckUri"].as_str(), status) {
                            (Some(uri), _, Some(s)) => Some((
                                uri.to_owned(),
                                json!({"notifId": v["notifId"], "ackResult": {"afStatus": s}}),
                            )),
                            (_, Some(uri), Some(s)) => Some((
                                uri.to_owned(),
                                json!({"afTransId": v["afTransId"], "ackResult": {"afStatus": s}}),
                            )),
                            _ => None,
                        };
                        if let Some((uri, body)) = ack {
                            tokio::spawn(async move {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                log.push(format!("ack {}", body["ackResult"]["afStatus"]));
                                let (status, _, _) =
                                    send_json(reqwest::Method::POST, &uri, &body).await;
                                me.acks.lock().expect("acks").push((uri, body, status));
                            });
                        }
                        StatusCode::NO_CONTENT
                    },
                ),
            )
            .with_state((log, me.clone()));
        let a = serve_fake(app).await;
        (format!("http://{a}/af/v1/ack-notifications"), me)
    }

    fn take_bodies(&self) -> Vec<Value> {
        std::mem::take(&mut *self.bodies.lock().expect("bodies"))
    }

    /// The acknowledgements sent and answered since the last call, once there are `n` (its
    /// answer may reach the fake after the SMF went on), or what there is after 2 s.
    async fn take_acks(&self, n: usize) -> Vec<(String, Value, StatusCode)> {
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.acks.lock().expect("acks").len() < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        std::mem::take(&mut *self.acks.lock().expect("acks"))
    }
}

/// The step of `timeline` that starts with `prefix`.
fn step<'a>(timeline: &'a [TimelineStep], prefix: &str) -> &'a TimelineStep {
    timeline
        .iter()
        .find(|s| s.step.starts_with(prefix))
        .unwrap_or_else(|| panic!("no step `{prefix}…` in {:?}", step_names(timeline)))
}

#[tokio::test]
async fn an_early_notification_with_an_ack_uri_holds_the_switch_until_the_answer_or_the_limit() {
    let tb = testbed_with(None, Some(400)).await;
    let (uri, acker) = Acker::start(tb.log.clone(), Some("SUCCESS")).await;
    // What the NEF puts at the SMF for an AF that acknowledges EARLY notifications.
    let control = json!({
        "tcId": "tc-1",
        "routeToLocs": [{"dnai": "edge-b", "routeInfo": {"ipv4Addr": "10.90.0.3", "portNumber": 2152}}],
        "upPathChgEvent": {
            "notificationUri": uri, "notifCorreId": "tc-1", "dnaiChgType": "EARLY", "afAckInd": true
        }
    });
    tb.check(names::TRAFFIC_CONTROL_DATA, &control);
    let tc_url = format!("{}/n7-lite/v1/traffic-controls/tc-1", tb.smf);
    let (status, headers, body) = send_json(
        reqwest::Method::PUT,
        &format!("{tc_url}?anyUeInd=true"),
        &control,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(headers["location"].to_str().expect("location"), tc_url);
    assert_eq!(body, control);
    let (status, _, body) = call(reqwest::Method::GET, &tc_url, Some(TOKEN), None).await;
    assert_eq!((status, &body), (StatusCode::OK, &control));
    // A plain TS 29.508 subscription is notified as before, without an ackUri, and not waited for.
    tb.subscribe("plain", DnaiChangeType::Early, None).await;

    let ue = tb.setup(SUPI, "gnb-a", 0x51).await.ue_ipv4;
    tb.upf_a.take();
    tb.log.take();

    // SUCCESS: the target UPF hears of the session only after the answer.
    let (status, body) = tb.path_switch(ue, "gnb-b", 0x61).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let ack: PathSwitchAck = serde_json::from_value(body).expect("ack");
    let log = tb.log.take();
    let mut early = log[..2].to_vec();
    early.sort();
    assert_eq!(early, ["af EARLY plain", "af EARLY tc-1"], "{log:?}");
    assert_eq!(
        log[2..5],
        [
            "ack \"SUCCESS\"".to_owned(),
            "upf-b establishment".into(),
            "iap push site b version 2".into()
        ],
        "{log:?}"
    );
    let hold = step(&ack.timeline, "hold for af acknowledgements");
    assert_eq!(
        hold.step,
        "hold for af acknowledgements of the early notification (1 expected): tc-1 SUCCESS"
    );
    let names_ = step_names(&ack.timeline);
    let at = |prefix: &str| names_.iter().position(|n| n.starts_with(prefix));
    assert!(at("early up_path_ch") < at("hold") && at("hold") < at("pfcp session establishment"));
    assert_eq!(
        names_[0],
        "early up_path_ch notifications (2 subscriptions, 1 expecting an acknowledgement)"
    );
    // The bodies: the acknowledged one has an ackUri at the SMF, the plain one none.
    let bodies = tb.notifications();
    assert_eq!(bodies.len(), 1);
    assert!(bodies[0].get("ackUri").is_none(), "{}", bodies[0]);
    let [with_ack] = &acker.take_bodies()[..] else {
        panic!("one notification to the acker");
    };
    tb.check(names::NSMF_EVENT_EXPOSURE_NOTIFICATION, with_ack);
    let ack_uri = with_ack["ackUri"].as_str().expect("ackUri");
    assert!(
        ack_uri.starts_with(&format!("{}/nsmf-event-exposure/v1/acks/", tb.smf)),
        "{ack_uri}"
    );
    let [(to, sent, answered)] = &acker.take_acks(1).await[..] else {
        panic!("one acknowledgement");
    };
    assert_eq!((to.as_str(), *answered), (ack_uri, StatusCode::NO_CONTENT));
    tb.check(names::ACK_OF_NOTIFY, sent);
    // Once the hold is over, the ackUri is gone; a wrong notifId is refused naming it.
    let (status, _, problem) = send_json(reqwest::Method::POST, ack_uri, sent).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{problem}");
    tb.check(names::PROBLEM_DETAILS, &problem);

    // A failure status: the switch goes on at once, and the timeline says what came back.
    *acker.af_status.lock().expect("status") = Some("RELOC_NO_ALLOWED");
    let (status, body) = tb.path_switch(ue, "gnb-a", 0x52).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let back: PathSwitchAck = serde_json::from_value(body).expect("ack");
    assert_eq!(back.upf, "upf-a");
    assert_eq!(
        step(&back.timeline, "hold").step,
        "hold for af acknowledgements of the early notification (1 expected): tc-1 RELOC_NO_ALLOWED"
    );
    let log = tb.log.take();
    let answered_at = log.iter().position(|l| l == "ack \"RELOC_NO_ALLOWED\"");
    let established_at = log.iter().position(|l| l == "upf-a establishment");
    assert!(
        answered_at < established_at && answered_at.is_some(),
        "{log:?}"
    );
    acker.take_bodies();
    acker.take_acks(1).await;

    // No answer: the switch waits for the limit (400 ms here), then goes on.
    *acker.af_status.lock().expect("status") = None;
    let (status, body) = tb.path_switch(ue, "gnb-b", 0x62).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let timed_out: PathSwitchAck = serde_json::from_value(body).expect("ack");
    assert_eq!(timed_out.upf, "upf-b");
    let hold = step(&timed_out.timeline, "hold");
    assert_eq!(
        hold.step,
        "hold for af acknowledgements of the early notification (1 expected): tc-1 no answer"
    );
    assert!(
        hold.took_us >= 400_000,
        "the hold lasted its limit: {hold:?}"
    );
    // The answer after the limit finds no hold.
    let [late] = &acker.take_bodies()[..] else {
        panic!("one notification");
    };
    let late_ack = json!({"notifId": "tc-1", "ackResult": {"afStatus": "SUCCESS"}});
    let (status, _, _) = send_json(
        reqwest::Method::POST,
        late["ackUri"].as_str().expect("ackUri"),
        &late_ack,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Bad traffic controls are refused naming the field; unknown ones are 404.
    let mut bad = control.clone();
    bad["upPathChgEvent"]["notificationUri"] = json!("http://8.8.8.8/x");
    bad["flowStatus"] = json!("ENABLED");
    let (status, _, problem) = send_json(
        reqwest::Method::PUT,
        &format!("{tc_url}?anyUeInd=true"),
        &bad,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    tb.check(names::PROBLEM_DETAILS, &problem);
    let params: Vec<&str> = problem["invalidParams"]
        .as_array()
        .expect("invalidParams")
        .iter()
        .filter_map(|p| p["param"].as_str())
        .collect();
    assert_eq!(params, ["/flowStatus", "/upPathChgEvent/notificationUri"]);
    let (status, _, problem) = send_json(reqwest::Method::PUT, &tc_url, &control).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "no ue scope: {problem}");
    let (status, _, _) = call(reqwest::Method::DELETE, &tc_url, Some(TOKEN), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _, problem) = call(reqwest::Method::GET, &tc_url, Some(TOKEN), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{problem}");
    tb.check(names::PROBLEM_DETAILS, &problem);
}

/// Starts a NEF for the SMF at `smf` (AFs `smo-x` and `smo-y`); its base URL.
async fn start_nef(smf: &str) -> (String, tokio::sync::watch::Sender<bool>) {
    let (l, a) = listener().await;
    let config = emu_5gc::nef::NefConfig {
        sbi_addr: "127.0.0.1:0".parse().expect("addr"),
        token: Some(TOKEN.into()),
        smf_url: smf.to_owned(),
        af_ids: vec!["smo-x".into(), "smo-y".into()],
        callback_networks: Vec::new(),
        state_dir: None,
    };
    let (stop, shutdown) = Shutdown::new();
    tokio::spawn(emu_5gc::nef::run_on(config, l, Ready::none(), shutdown));
    (format!("http://{a}"), stop)
}

/// The `param`s of a ProblemDetails' `invalidParams`.
fn invalid_params(problem: &Value) -> Vec<&str> {
    problem["invalidParams"]
        .as_array()
        .map(|ps| ps.iter().filter_map(|p| p["param"].as_str()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn an_af_subscribes_at_the_nef_and_its_acknowledgement_releases_the_held_switch() {
    let tb = testbed_with(None, Some(2_000)).await;
    let (nef, _nef_stop) = start_nef(&tb.smf).await;
    let (destination, smo) = Acker::start(tb.log.clone(), Some("SUCCESS")).await;
    let subs = format!("{nef}/3gpp-traffic-influence/v1/smo-x/subscriptions");
    let sub = json!({
        "afAppId": "stream1",
        "afTransId": "smo-x-1",
        "anyUeInd": true,
        "subscribedEvents": ["UP_PATH_CHANGE"],
        "dnaiChgType": "EARLY",
        "notificationDestination": destination,
        "trafficRoutes": [
            {"dnai": "edge-a", "routeInfo": {"ipv4Addr": "10.90.0.2", "portNumber": 2152}},
            {"dnai": "edge-b", "routeInfo": {"ipv4Addr": "10.90.0.3", "portNumber": 2152}}
        ],
        "afAckInd": true,
        "addrPreserInd": true,
        "appReloInd": true
    });
    tb.check(names::TRAFFIC_INFLU_SUB, &sub);

    // Create: 201 + Location, the body with self.
    let (status, headers, created) = send_json(reqwest::Method::POST, &subs, &sub).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    tb.check(names::TRAFFIC_INFLU_SUB, &created);
    let location = headers["location"].to_str().expect("location").to_owned();
    assert_eq!(location, format!("{subs}/sub-1"));
    assert_eq!(created["self"], location.as_str());
    let mut expected = sub.clone();
    expected["self"] = json!(location);
    assert_eq!(created, expected);
    // Read, list.
    let (status, _, read) = call(reqwest::Method::GET, &location, Some(TOKEN), None).await;
    assert_eq!((status, &read), (StatusCode::OK, &created));
    let (status, _, list) = call(reqwest::Method::GET, &subs, Some(TOKEN), None).await;
    assert_eq!((status, list), (StatusCode::OK, json!([created])));
    // The SMF has it as traffic control data (TS 29.512) whose notifications go to the NEF.
    let (status, _, control) = call(
        reqwest::Method::GET,
        &format!("{}/n7-lite/v1/traffic-controls/sub-1", tb.smf),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{control}");
    tb.check(names::TRAFFIC_CONTROL_DATA, &control);
    assert_eq!(control["routeToLocs"], sub["trafficRoutes"]);
    assert_eq!(
        control["upPathChgEvent"],
        json!({
            "notificationUri": format!("{nef}/nef-callbacks/v1/notifications/sub-1"),
            "notifCorreId": "sub-1", "dnaiChgType": "EARLY", "afAckInd": true
        })
    );

    // Another AF does not see it; an AF the deployment does not know is refused.
    let other = location.replace("/smo-x/", "/smo-y/");
    let (status, _, problem) = call(reqwest::Method::GET, &other, Some(TOKEN), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{problem}");
    tb.check(names::PROBLEM_DETAILS, &problem);
    let (status, _, problem) = send_json(
        reqwest::Method::POST,
        &subs.replace("/smo-x/", "/intruder/"),
        &sub,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{problem}");
    tb.check(names::PROBLEM_DETAILS, &problem);
    let (status, _, _) = call(reqwest::Method::GET, &subs, None, None).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "authenticated like every sbi endpoint"
    );
    // Bad bodies: 400 naming the field.
    let mut bad = sub.clone();
    bad.as_object_mut().expect("object").remove("dnaiChgType");
    bad["notificationDestination"] = json!("http://8.8.8.8/x");
    let (status, _, problem) = send_json(reqwest::Method::POST, &subs, &bad).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    tb.check(names::PROBLEM_DETAILS, &problem);
    assert_eq!(
        invalid_params(&problem),
        ["/notificationDestination", "/dnaiChgType"]
    );
    let mut bad = sub.clone();
    bad["ueIpv4"] = json!("192.168.1.2");
    let (status, _, problem) = send_json(reqwest::Method::POST, &subs, &bad).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("ueIpv4")),
        "{problem}"
    );
    // Unknown ids.
    let (status, _, _) = call(
        reqwest::Method::DELETE,
        &format!("{subs}/sub-9"),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // PATCH (merge patch) and PUT.
    let (status, _, patched) = send_json(
        reqwest::Method::PATCH,
        &location,
        &json!({"appReloInd": false}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    tb.check(names::TRAFFIC_INFLU_SUB, &patched);
    assert_eq!(patched["appReloInd"], false);
    let (status, _, replaced) = send_json(reqwest::Method::PUT, &location, &sub).await;
    assert_eq!(status, StatusCode::OK, "{replaced}");
    assert_eq!(replaced, created);

    // A handover: the SMF's EARLY notification reaches the SMO through the NEF with an
    // afAckUri; the SMO's AfAckInfo goes back through the NEF; only then the target UPF.
    let ue = tb.setup(SUPI, "gnb-a", 0x51).await.ue_ipv4;
    tb.upf_a.take();
    tb.log.take();
    let (status, body) = tb.path_switch(ue, "gnb-b", 0x61).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let ack: PathSwitchAck = serde_json::from_value(body).expect("ack");
    let log = tb.log.take();
    assert_eq!(
        log[..3],
        [
            "af EARLY smo-x-1".to_owned(),
            "ack \"SUCCESS\"".into(),
            "upf-b establishment".into()
        ],
        "{log:?}"
    );
    assert_eq!(
        step(&ack.timeline, "hold").step,
        "hold for af acknowledgements of the early notification (1 expected): sub-1 SUCCESS"
    );
    let [notification] = &smo.take_bodies()[..] else {
        panic!("one notification to the smo");
    };
    tb.check(names::TRAFFIC_INFLUENCE_NOTIFICATION, notification);
    let af_ack_uri = notification["afAckUri"].as_str().expect("afAckUri");
    assert!(
        af_ack_uri.starts_with(&format!("{location}/acks/")),
        "{af_ack_uri}"
    );
    assert_eq!(
        (
            &notification["afTransId"],
            &notification["dnaiChgType"],
            &notification["subscribedEvent"],
            &notification["sourceDnai"],
            &notification["targetDnai"],
            &notification["srcUeIpv4Addr"],
        ),
        (
            &json!("smo-x-1"),
            &json!("EARLY"),
            &json!("UP_PATH_CHANGE"),
            &json!("edge-a"),
            &json!("edge-b"),
            &json!("192.168.1.2"),
        )
    );
    let [(to, sent, answered)] = &smo.take_acks(1).await[..] else {
        panic!("one acknowledgement");
    };
    tb.check(names::AF_ACK_INFO, sent);
    assert_eq!(
        (to.as_str(), *answered),
        (af_ack_uri, StatusCode::NO_CONTENT)
    );
    // Again, after the hold: the SMF no longer waits for it.
    let (status, _, _) = send_json(reqwest::Method::POST, af_ack_uri, sent).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Delete: gone at the NEF and at the SMF.
    let (status, _, _) = call(reqwest::Method::DELETE, &location, Some(TOKEN), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _, _) = call(reqwest::Method::GET, &location, Some(TOKEN), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = call(
        reqwest::Method::GET,
        &format!("{}/n7-lite/v1/traffic-controls/sub-1", tb.smf),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_hold_cut_by_the_smfs_crash_goes_on_after_the_restart_with_the_same_ack_uri() {
    let dir = state_dir("hold-crash");
    let mut tb = testbed_with(Some(dir.clone()), Some(5_000)).await;
    let (uri, acker) = Acker::start(tb.log.clone(), None).await;
    let control = json!({
        "tcId": "tc-1",
        "upPathChgEvent": {
            "notificationUri": uri, "notifCorreId": "tc-1", "dnaiChgType": "EARLY", "afAckInd": true
        }
    });
    let (status, _, body) = send_json(
        reqwest::Method::PUT,
        &format!("{}/n7-lite/v1/traffic-controls/tc-1?anyUeInd=true", tb.smf),
        &control,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let ue = tb.setup(SUPI, "gnb-a", 0x51).await.ue_ipv4;
    tb.upf_a.take();
    tb.log.take();

    // The switch holds (the AF does not answer); the SMF dies meanwhile.
    let cut = tb.spawn_path_switch(ue, "gnb-b", 0x61);
    let deadline = Instant::now() + Duration::from_secs(5);
    let notification = loop {
        if let Some(n) = acker.take_bodies().pop() {
            break n;
        }
        assert!(Instant::now() < deadline, "no EARLY notification");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let old_smf = tb.smf.clone();
    tb.restart_smf().await;
    assert!(cut.await.expect("join").is_err(), "cut: no answer");
    assert!(
        tb.upf_b.take().is_empty(),
        "nothing at the target during the hold"
    );

    // The restarted SMF holds on (it sends EARLY not again) and takes the answer at the same
    // ackUri (on its new port here; the testbed's address does not change).
    let ack_uri = notification["ackUri"]
        .as_str()
        .expect("ackUri")
        .replace(&old_smf, &tb.smf);
    let ack = json!({"notifId": "tc-1", "ackResult": {"afStatus": "SUCCESS"}});
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (status, _, problem) = send_json(reqwest::Method::POST, &ack_uri, &ack).await;
        if status == StatusCode::NO_CONTENT {
            break;
        }
        // 404 until the restarted SMF has taken up the switch.
        assert_eq!(status, StatusCode::NOT_FOUND, "{problem}");
        assert!(Instant::now() < deadline, "the hold was not resumed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, body) = tb.path_switch(ue, "gnb-b", 0x61).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let done: PathSwitchAck = serde_json::from_value(body).expect("ack");
    assert_eq!(done.upf, "upf-b");
    assert_eq!(
        step(&done.timeline, "hold").step,
        "hold for af acknowledgements of the early notification (1 expected): tc-1 SUCCESS"
    );
    assert!(
        acker.take_bodies().is_empty(),
        "EARLY was not sent again after the restart"
    );
    assert_eq!(
        tb.upf_b
            .take()
            .iter()
            .filter(|m| matches!(m, Message::SessionEstablishmentRequest(_)))
            .count(),
        1
    );
    drop(tb);
    let _ = std::fs::remove_dir_all(&dir);
}

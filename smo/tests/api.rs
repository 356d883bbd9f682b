//! The SMO's HTTP API in-process on 127.0.0.1: two SMOs (X at edge-x, Y at edge-y, peers of each
//! other) with fake switches, a fake service module at each, one relocation driven end to end by
//! an `UP_PATH_CH` notification posted to X's event signalling endpoint; every error answer as
//! ProblemDetails; the subscription the SMO sends to the SMF checked against TS 29.508.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing;
use axum::Router;
use model::common::{DateTime, DnaiChangeType, RouteToLocation};
use model::nsmf_event_exposure::{EventNotification, NsmfEventExposureNotification};
use model::schema::names;
use model::smo::{
    ExecuteReport, ExecuteRequest, PeerInfo, RelocationPhase, RelocationRecord, RelocationRole,
    RelocationState, RelocationType, ResourceRequirements, Service, ServiceModule,
    ServiceModuleRegistration,
};
use serde_json::{json, Value};
use smo::config::{NotifyWhen, SmoConfig, Timeouts};
use smo::events::{self, SubscribeError};
use smo::http::HttpRemote;
use smo::negotiator::{Clock, Negotiator};
use smo::routing::fake::FakeProgrammer;
use smo::routing::rules::EdgePorts;
use smo::store::{HostedService, Store};
use tokio::net::TcpListener;

const TOKEN: &str = "test-token";
const UE: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);

// ----- plumbing -----

/// Serves `router` with the token until the returned sender is dropped.
async fn serve(listener: TcpListener, router: Router) -> tokio::sync::oneshot::Sender<()> {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(sbi::serve(
        listener,
        router,
        Some(TOKEN.into()),
        async move {
            let _ = stopped.await;
        },
    ));
    stop
}

struct Smo {
    root: String,
    flows: FakeProgrammer,
    negotiator: Negotiator<HttpRemote, FakeProgrammer>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

fn config(id: &str, dnai: &str, addr: SocketAddr, peers: Vec<PeerInfo>) -> SmoConfig {
    let SocketAddr::V4(api_addr) = addr else {
        panic!("not IPv4: {addr}");
    };
    SmoConfig {
        smo_id: id.into(),
        dnai: dnai.into(),
        api_addr,
        token: Some(TOKEN.into()),
        subscribe_at: smo::config::SubscribeAt::Smf,
        smf_url: None,
        nef: Default::default(),
        lr_url: None,
        notify_when: NotifyWhen::Late,
        peers,
        ovs_mgmt: "/nonexistent/br.mgmt".into(),
        ports: EdgePorts::testbed(),
        capacity: ResourceRequirements {
            cpu_millis: 2000,
            memory_mb: 4096,
            disk_mb: 10240,
        },
        state_dir: "/nonexistent/state".into(),
        timeouts: Timeouts::default(),
        reconcile: Default::default(),
        callback_networks: Vec::new(),
    }
}

/// An SMO served on `listener`.
async fn start_smo(listener: TcpListener, id: &str, dnai: &str, peers: Vec<PeerInfo>) -> Smo {
    let addr = listener.local_addr().expect("addr");
    let config = config(id, dnai, addr, peers);
    let root = config.api_root();
    let flows = FakeProgrammer::new();
    let negotiator = Negotiator::new(
        &config,
        HttpRemote::new(config.token.clone(), &config.timeouts),
        flows.clone(),
        Store::memory(),
        Clock::Wall,
    )
    .expect("negotiator");
    let router = smo::api::router(negotiator.clone(), &root);
    let stop = serve(listener, router).await;
    Smo {
        root,
        flows,
        negotiator,
        _stop: stop,
    }
}

async fn bind() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.expect("bind")
}

fn peer(id: &str, dnai: &str, l: &TcpListener) -> PeerInfo {
    PeerInfo {
        smo_id: id.into(),
        dnai: dnai.into(),
        api_root: format!("http://{}", l.local_addr().expect("addr")),
        cost: 0,
    }
}

/// X (edge-x) and Y (edge-y), peers of each other.
async fn two_smos() -> (Smo, Smo) {
    let (lx, ly) = (bind().await, bind().await);
    let (px, py) = (peer("smo-x", "edge-x", &lx), peer("smo-y", "edge-y", &ly));
    let x = start_smo(lx, "smo-x", "edge-x", vec![py]).await;
    let y = start_smo(ly, "smo-y", "edge-y", vec![px]).await;
    (x, y)
}

struct Answer {
    status: StatusCode,
    content_type: String,
    location: Option<String>,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    fn parse<T: serde::de::DeserializeOwned>(&self) -> T {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("does not parse ({e}): {}", self.text))
    }

    /// Checks that this is a ProblemDetails answer with `status`; returns the body.
    fn problem(&self, status: StatusCode) -> Value {
        assert_eq!(self.status, status, "{}", self.text);
        assert_eq!(
            self.content_type, "application/problem+json",
            "{}",
            self.text
        );
        let body = self.json();
        assert_eq!(body["status"], status.as_u16(), "{body}");
        assert!(
            body["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "no detail: {body}"
        );
        body
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(10))
        .no_proxy()
        .build()
        .expect("client")
}

/// One request; `body` is sent as `application/json` as it is (it may be malformed on purpose).
async fn call(
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Answer {
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
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (content_type, location) = (
        header("content-type").unwrap_or_default(),
        header("location"),
    );
    let status = StatusCode::from_u16(resp.status().as_u16()).expect("status");
    let text = resp.text().await.expect("body");
    Answer {
        status,
        content_type,
        location,
        text,
    }
}

async fn get(url: &str) -> Answer {
    call(reqwest::Method::GET, url, Some(TOKEN), None).await
}

async fn post(url: &str, body: &Value) -> Answer {
    call(
        reqwest::Method::POST,
        url,
        Some(TOKEN),
        Some(&body.to_string()),
    )
    .await
}

// ----- a fake service module -----

/// What a fake module hosts and what it was asked.
#[derive(Debug, Default)]
struct ModuleState {
    hosted: Vec<Service>,
    executed: Vec<ExecuteRequest>,
    /// `Authorization` headers of the SMO's calls.
    auth: Vec<Option<String>>,
}

type ModuleShared = Arc<Mutex<ModuleState>>;

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct UeQuery {
    ue_ipv4_addr: Ipv4Addr,
}

fn note_auth(st: &ModuleShared, headers: &axum::http::HeaderMap) {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    st.lock().expect("lock").auth.push(auth);
}

async fn module_services(
    State(st): State<ModuleShared>,
    headers: axum::http::HeaderMap,
) -> impl IntoResponse {
    note_auth(&st, &headers);
    let hosted = st.lock().expect("lock").hosted.clone();
    sbi::Json(hosted)
}

async fn module_served(
    State(st): State<ModuleShared>,
    headers: axum::http::HeaderMap,
    Query(q): Query<UeQuery>,
) -> axum::response::Response {
    note_auth(&st, &headers);
    let found = st
        .lock()
        .expect("lock")
        .hosted
        .iter()
        .find(|s| s.ue_ipv4_addrs.contains(&q.ue_ipv4_addr))
        .cloned();
    match found {
        Some(s) => sbi::Json(s).into_response(),
        None => sbi::ApiError::not_found("no service serves that UE").into_response(),
    }
}

async fn module_execute(
    State(st): State<ModuleShared>,
    headers: axum::http::HeaderMap,
    sbi::Json(req): sbi::Json<ExecuteRequest>,
) -> sbi::Json<ExecuteReport> {
    note_auth(&st, &headers);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut s = st.lock().expect("lock");
    s.hosted.retain(|h| h.service_id != req.service.service_id);
    s.executed.push(req);
    sbi::Json(ExecuteReport {
        took_us: 50_000,
        bytes_moved: Some(4096),
        steps: Vec::new(),
    })
}

struct Module {
    state: ModuleShared,
    registration: ServiceModuleRegistration,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// A module hosting `hosted`, registered nowhere yet; its migration target address is
/// `notif_address`.
async fn start_module(hosted: Vec<Service>, notif_address: &str) -> Module {
    let state: ModuleShared = Arc::new(Mutex::new(ModuleState {
        hosted,
        ..Default::default()
    }));
    let listener = bind().await;
    let root = format!("http://{}", listener.local_addr().expect("addr"));
    let router = Router::new()
        .route("/test-module/v1/services", routing::get(module_services))
        .route("/test-module/v1/served", routing::get(module_served))
        .route("/test-module/v1/execute", routing::post(module_execute))
        .with_state(state.clone());
    let stop = serve(listener, router).await;
    Module {
        state,
        registration: ServiceModuleRegistration {
            relocation_type: RelocationType::Test,
            resource_requirements: ResourceRequirements::default(),
            get_service_notif_uri: format!("{root}/test-module/v1/services"),
            served_service_notif_uri: format!("{root}/test-module/v1/served"),
            execute_notif_uri: format!("{root}/test-module/v1/execute"),
            notif_address: notif_address.parse().expect("ip:port"),
        },
        _stop: stop,
    }
}

fn service() -> Service {
    Service {
        service_id: "svc-1".into(),
        ipv4_addr: Ipv4Addr::new(20, 0, 0, 10),
        mac_addr: "02:00:14:00:00:0a".into(),
        ovs_port: "srv".into(),
        relocation_type: RelocationType::Test,
        resource_requirements: ResourceRequirements {
            cpu_millis: 100,
            memory_mb: 64,
            disk_mb: 0,
        },
        ue_ipv4_addrs: vec![UE],
    }
}

fn up_path_change(source: &str, target: &str) -> NsmfEventExposureNotification {
    let event = EventNotification::up_path_change(
        DnaiChangeType::Late,
        UE,
        RouteToLocation::new(source, Ipv4Addr::new(10, 90, 0, 2), 2152),
        RouteToLocation::new(target, Ipv4Addr::new(10, 90, 0, 3), 2152),
        DateTime::from(SystemTime::now()),
    );
    NsmfEventExposureNotification::new("smo-x-up-path-ch", vec![event])
}

async fn register(smo: &Smo, reg: &ServiceModuleRegistration) -> ServiceModule {
    let a = post(
        &format!("{}/service-mobility/v1/service-modules", smo.root),
        &serde_json::to_value(reg).expect("json"),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let m: ServiceModule = a.parse();
    assert_eq!(
        a.location.as_deref(),
        Some(
            format!(
                "{}/service-mobility/v1/service-modules/{}",
                smo.root, m.module_id
            )
            .as_str()
        )
    );
    assert_eq!(&m.registration, reg);
    m
}

async fn relocations(smo: &Smo) -> Vec<RelocationRecord> {
    let a = get(&format!("{}/application-function/v1/relocations", smo.root)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.content_type, "application/json");
    a.parse()
}

fn phases(p: &[model::smo::PhaseTiming]) -> Vec<RelocationPhase> {
    p.iter().map(|t| t.phase).collect()
}

// ----- the relocation, end to end -----

#[tokio::test]
async fn a_notification_relocates_the_service_from_x_to_y() {
    let (x, y) = two_smos().await;
    let schemas = common::schemas();
    let module_x = start_module(vec![service()], "10.0.1.2:9100").await;
    let module_y = start_module(Vec::new(), "10.0.1.3:9100").await;
    let mx = register(&x, &module_x.registration).await;
    let my = register(&y, &module_y.registration).await;

    // The SMF's notification reaches the event signalling module, which hands it on.
    let n = serde_json::to_value(up_path_change("edge-x", "edge-y")).expect("json");
    schemas.check(names::NSMF_EVENT_EXPOSURE_NOTIFICATION, &n);
    let a = post(&format!("{}/event-signalling/v1/notifications", x.root), &n).await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.text);

    // Poll X's stopwatch until the relocation ended.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let record = loop {
        let all = relocations(&x).await;
        if let Some(r) = all.iter().find(|r| r.state != RelocationState::Running) {
            break r.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no relocation ended: {all:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        record.state,
        RelocationState::Completed,
        "cause: {:?}",
        record.cause
    );
    assert_eq!(record.role, RelocationRole::Source);
    assert_eq!(record.cause, None);
    assert_eq!(record.ue_ipv4_addr, UE);
    assert_eq!(record.module_id.as_deref(), Some(mx.module_id.as_str()));
    assert_eq!(
        record
            .target_module_address
            .map(|a| a.to_string())
            .as_deref(),
        Some("10.0.1.3:9100")
    );
    assert_eq!(
        record.peer.as_ref().map(|p| p.smo_id.as_str()),
        Some("smo-y")
    );
    assert_eq!(phases(&record.phases), RelocationPhase::SUCCESS_PATH);
    assert_eq!(phases(&record.peer_phases), RelocationPhase::SUCCESS_PATH);
    let total = record.total_us.expect("totalUs");
    assert!(
        total >= 50_000,
        "total {total} µs includes the 50 ms migration"
    );
    assert_eq!(record.execute.as_ref().map(|e| e.took_us), Some(50_000));

    // The record by id, and as JSON it matches the OpenAPI schema.
    let by_id = get(&format!(
        "{}/application-function/v1/relocations/{}",
        x.root, record.relocation_id
    ))
    .await;
    assert_eq!(by_id.status, StatusCode::OK, "{}", by_id.text);
    assert_eq!(by_id.parse::<RelocationRecord>(), record);
    schemas.check(&common::smo_schema("RelocationRecord"), &by_id.json());

    // The module migrated the service to Y's module, with the token on every callback.
    {
        let st = module_x.state.lock().expect("lock");
        assert_eq!(st.executed.len(), 1);
        assert_eq!(st.executed[0].target_address.to_string(), "10.0.1.3:9100");
        assert_eq!(st.executed[0].relocation_id, record.relocation_id);
        assert!(!st.auth.is_empty());
        let bearer = format!("Bearer {TOKEN}");
        assert!(st
            .auth
            .iter()
            .all(|a| a.as_deref() == Some(bearer.as_str())));
    }

    // Y's side: the target record, every phase, and the service in its database.
    let at_y = relocations(&y).await;
    assert_eq!(at_y.len(), 1, "{at_y:?}");
    let target = &at_y[0];
    assert_eq!(target.relocation_id, record.relocation_id);
    assert_eq!(target.role, RelocationRole::Target);
    assert_eq!(
        target.state,
        RelocationState::Completed,
        "{:?}",
        target.cause
    );
    assert_eq!(phases(&target.phases), RelocationPhase::SUCCESS_PATH);
    schemas.check(
        &common::smo_schema("RelocationRecord"),
        &serde_json::to_value(target).expect("json"),
    );
    let services = get(&format!("{}/service-mobility/v1/services", y.root)).await;
    assert_eq!(services.status, StatusCode::OK);
    let hosted: Vec<HostedService> = services.parse();
    assert_eq!(
        hosted,
        vec![HostedService {
            module_id: my.module_id.clone(),
            service: service(),
        }]
    );
    for h in services.json().as_array().expect("array") {
        schemas.check(&common::smo_schema("HostedService"), h);
    }
    let at_x: Vec<HostedService> = get(&format!("{}/service-mobility/v1/services", x.root))
        .await
        .parse();
    assert!(at_x.is_empty(), "{at_x:?}");

    // Both switches were programmed.
    assert!(!x.flows.attempts().is_empty());
    assert!(!y.flows.attempts().is_empty());

    // Metrics at both ends.
    let m = get(&format!("{}/metrics", x.root)).await;
    assert_eq!(m.status, StatusCode::OK);
    assert!(
        m.content_type.starts_with("text/plain; version=0.0.4"),
        "{}",
        m.content_type
    );
    for want in [
        r#"smo_relocations_total{role="source",state="completed"} 1"#,
        r#"smo_relocation_phase_seconds_count{role="source",phase="execute"} 1"#,
        "smo_relocation_total_seconds_count 1",
        "smo_service_modules 1",
        "smo_notifications_skipped_total 0",
        "# TYPE smo_relocation_phase_seconds summary",
    ] {
        assert!(
            m.text.lines().any(|l| l == want),
            "no `{want}` in\n{}",
            m.text
        );
    }
    assert!(m
        .text
        .lines()
        .any(|l| l.starts_with("smo_relocation_last_total_seconds ")));
    let m = get(&format!("{}/metrics", y.root)).await;
    assert!(m
        .text
        .lines()
        .any(|l| l == r#"smo_relocations_total{role="target",state="completed"} 1"#));
    assert!(m.text.lines().any(|l| l == "smo_hosted_services 1"));

    // A second notification for the same UE finds no service at X any more: skipped.
    let a = post(&format!("{}/event-signalling/v1/notifications", x.root), &n).await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.text);
    x.negotiator.idle().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while x.negotiator.skipped() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "not skipped");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let m = get(&format!("{}/metrics", x.root)).await;
    assert!(m
        .text
        .lines()
        .any(|l| l == "smo_notifications_skipped_total 1"));
    assert_eq!(relocations(&x).await.len(), 1);
}

// ----- the service-mobility API -----

#[tokio::test]
async fn modules_are_resources() {
    let (x, _y) = two_smos().await;
    let schemas = common::schemas();
    let module = start_module(Vec::new(), "10.0.1.2:9100").await;
    let m = register(&x, &module.registration).await;
    let url = format!(
        "{}/service-mobility/v1/service-modules/{}",
        x.root, m.module_id
    );

    let a = get(&url).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.parse::<ServiceModule>(), m);
    schemas.check(&common::smo_schema("ServiceModule"), &a.json());

    let list = get(&format!("{}/service-mobility/v1/service-modules", x.root)).await;
    assert_eq!(list.parse::<Vec<ServiceModule>>(), vec![m.clone()]);

    // The module is killed and comes back (same notifAddress, no de-registration): the same
    // module, not a dead one beside a live one.
    let mut back = module.registration.clone();
    back.execute_notif_uri = back.execute_notif_uri.replace("/execute", "/execute?again");
    let again = register(&x, &back).await;
    assert_eq!(again.module_id, m.module_id);
    assert_eq!(again.registration, back);
    assert_eq!(module_count(&x).await, 1);
    let m = register(&x, &module.registration).await;

    let mut changed = module.registration.clone();
    changed.notif_address = "10.0.1.2:9200".parse().expect("addr");
    changed.relocation_type = RelocationType::Criu;
    let a = call(
        reqwest::Method::PUT,
        &url,
        Some(TOKEN),
        Some(&serde_json::to_string(&changed).expect("json")),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let updated: ServiceModule = a.parse();
    assert_eq!(updated.module_id, m.module_id);
    assert_eq!(updated.registration, changed);
    assert_eq!(get(&url).await.parse::<ServiceModule>(), updated);

    let a = call(reqwest::Method::DELETE, &url, Some(TOKEN), None).await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.text);
    get(&url).await.problem(StatusCode::NOT_FOUND);
    call(reqwest::Method::DELETE, &url, Some(TOKEN), None)
        .await
        .problem(StatusCode::NOT_FOUND);
    let list = get(&format!("{}/service-mobility/v1/service-modules", x.root)).await;
    assert!(list.parse::<Vec<ServiceModule>>().is_empty());

    let openapi = get(&format!("{}/openapi.yaml", x.root)).await;
    assert_eq!(openapi.status, StatusCode::OK);
    assert_eq!(openapi.content_type, "application/yaml");
    assert_eq!(openapi.text, smo::api::OPENAPI_YAML);
}

// ----- errors -----

fn registration_json() -> Value {
    json!({
        "relocationType": "TEST",
        "getServiceNotifUri": "http://127.0.0.1:9/m/services",
        "servedServiceNotifUri": "http://127.0.0.1:9/m/served",
        "executeNotifUri": "http://127.0.0.1:9/m/execute",
        "notifAddress": "10.0.1.2:9100"
    })
}

fn peer_message_json(relocation_id: &str) -> Value {
    json!({
        "relocationId": relocation_id,
        "relocationType": "TEST",
        "relocationPhase": "INITIATE",
        "notifUri": "http://127.0.0.1:9/smo-peer/v1/relocations/x",
        "sourceSmoId": "smo-x",
        "notification": serde_json::to_value(&up_path_change("edge-x", "edge-y").event_notifs[0]).expect("json"),
        "service": serde_json::to_value(service()).expect("json"),
    })
}

async fn module_count(smo: &Smo) -> usize {
    get(&format!("{}/service-mobility/v1/service-modules", smo.root))
        .await
        .parse::<Vec<ServiceModule>>()
        .len()
}

#[tokio::test]
async fn requests_without_the_token_change_nothing() {
    let (x, _y) = two_smos().await;
    let modules = format!("{}/service-mobility/v1/service-modules", x.root);
    let body = registration_json().to_string();
    for token in [None, Some("wrong-token")] {
        call(reqwest::Method::POST, &modules, token, Some(&body))
            .await
            .problem(StatusCode::UNAUTHORIZED);
        call(reqwest::Method::GET, &modules, token, None)
            .await
            .problem(StatusCode::UNAUTHORIZED);
        call(
            reqwest::Method::POST,
            &format!("{}/event-signalling/v1/notifications", x.root),
            token,
            Some(&serde_json::to_string(&up_path_change("edge-x", "edge-y")).expect("json")),
        )
        .await
        .problem(StatusCode::UNAUTHORIZED);
        call(
            reqwest::Method::GET,
            &format!("{}/metrics", x.root),
            token,
            None,
        )
        .await
        .problem(StatusCode::UNAUTHORIZED);
    }
    assert_eq!(module_count(&x).await, 0);
    assert!(relocations(&x).await.is_empty());
}

#[tokio::test]
async fn bad_bodies_are_answered_400_with_the_cause() {
    let (x, _y) = two_smos().await;
    let schemas = common::schemas();
    let modules = format!("{}/service-mobility/v1/service-modules", x.root);
    let peer = format!("{}/smo-peer/v1/relocations", x.root);
    let events = format!("{}/event-signalling/v1/notifications", x.root);
    let raw = |url: &str, body: &str| {
        let (url, body) = (url.to_owned(), body.to_owned());
        async move { call(reqwest::Method::POST, &url, Some(TOKEN), Some(&body)).await }
    };
    let check = |a: &Answer, detail_has: &str| -> Value {
        let p = a.problem(StatusCode::BAD_REQUEST);
        schemas.check(names::PROBLEM_DETAILS, &p);
        let detail = p["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains(detail_has),
            "detail `{detail}` does not name `{detail_has}`"
        );
        p
    };

    // Malformed JSON, everywhere a body is read.
    for url in [&modules, &peer, &events] {
        check(&raw(url, "{not json").await, "");
    }
    // Unknown and missing fields.
    let mut extra = registration_json();
    extra["bogus"] = json!(1);
    check(&post(&modules, &extra).await, "bogus");
    let mut missing = registration_json();
    missing.as_object_mut().map(|o| o.remove("executeNotifUri"));
    check(&post(&modules, &missing).await, "executeNotifUri");
    let mut bad_enum = registration_json();
    bad_enum["relocationType"] = json!("DOCKER");
    check(&post(&modules, &bad_enum).await, "DOCKER");
    // A registration whose callback is not http(s).
    let mut ftp = registration_json();
    ftp["getServiceNotifUri"] = json!("ftp://127.0.0.1/services");
    let p = check(&post(&modules, &ftp).await, "getServiceNotifUri");
    assert_eq!(p["invalidParams"][0]["param"], "/getServiceNotifUri");
    assert_eq!(p["cause"], "MANDATORY_IE_INCORRECT");
    // A callback outside the deployment's networks (here: the SMO's own /24, 127.0.0.0/24).
    for field in [
        "getServiceNotifUri",
        "servedServiceNotifUri",
        "executeNotifUri",
    ] {
        let mut outside = registration_json();
        outside[field] = json!("http://192.0.2.7:80/anywhere");
        let p = check(
            &post(&modules, &outside).await,
            "outside the deployment's networks",
        );
        assert_eq!(p["invalidParams"][0]["param"], format!("/{field}"), "{p}");
        assert_eq!(p["cause"], "MANDATORY_IE_INCORRECT");
        let mut named = registration_json();
        named[field] = json!("http://module.example/anywhere");
        let p = check(&post(&modules, &named).await, "must be an IPv4 address");
        assert_eq!(p["invalidParams"][0]["param"], format!("/{field}"), "{p}");
    }
    // The same for an update of a registered module.
    let m: ServiceModule = post(&modules, &registration_json()).await.parse();
    let a = call(
        reqwest::Method::PUT,
        &format!("{modules}/{}", m.module_id),
        Some(TOKEN),
        Some(&ftp.to_string()),
    )
    .await;
    check(&a, "getServiceNotifUri");
    assert_eq!(
        module_count(&x).await,
        1,
        "nothing registered by bad requests"
    );

    // Bad relocation ids.
    for (id, why) in [
        ("", "empty"),
        ("../etc/passwd", "'/'"),
        ("with space", "' '"),
        (&"r".repeat(65) as &str, "64"),
    ] {
        let p = check(&post(&peer, &peer_message_json(id)).await, why);
        assert_eq!(p["invalidParams"][0]["param"], "/relocationId", "{p}");
    }
    // A peer message whose notifUri points outside the deployment's networks.
    let mut outside = peer_message_json("smo-x-1");
    outside["notifUri"] = json!("http://198.51.100.9:8090/smo-peer/v1/relocations/smo-x-1");
    let p = check(&post(&peer, &outside).await, "198.51.100.9 is outside");
    assert_eq!(p["invalidParams"][0]["param"], "/notifUri", "{p}");
    assert!(
        x.negotiator.relocation("smo-x-1").is_none(),
        "a refused message changes nothing"
    );
    let mut unknown = peer_message_json("smo-x-1");
    unknown["extra"] = json!(true);
    check(&post(&peer, &unknown).await, "extra");
    let mut no_service = peer_message_json("smo-x-1");
    no_service.as_object_mut().map(|o| o.remove("service"));
    check(&post(&peer, &no_service).await, "service");

    // Notifications: no events, an UP_PATH_CH without what a relocation needs.
    check(
        &post(&events, &json!({"notifId": "n", "eventNotifs": []})).await,
        "at least one",
    );
    let mut no_id = serde_json::to_value(up_path_change("edge-x", "edge-y")).expect("json");
    no_id.as_object_mut().map(|o| o.remove("notifId"));
    check(&post(&events, &no_id).await, "notifId");
    let mut n = serde_json::to_value(up_path_change("edge-x", "edge-y")).expect("json");
    let e = n["eventNotifs"][0].as_object_mut().expect("event");
    e.remove("sourceDnai");
    e.remove("sourceUeIpv4Addr");
    e.remove("targetUeIpv4Addr");
    let p = check(&post(&events, &n).await, "sourceDnai");
    assert_eq!(p["cause"], "MANDATORY_IE_MISSING");
    assert_eq!(
        p["invalidParams"],
        json!([
            {"param": "/eventNotifs/0/sourceDnai", "reason": "UP_PATH_CH needs sourceDnai"},
            {"param": "/eventNotifs/0/sourceUeIpv4Addr",
             "reason": "UP_PATH_CH needs sourceUeIpv4Addr or targetUeIpv4Addr"},
        ])
    );
    let mut bad_ip = serde_json::to_value(up_path_change("edge-x", "edge-y")).expect("json");
    bad_ip["eventNotifs"][0]["sourceUeIpv4Addr"] = json!("192.168.1.300");
    check(&post(&events, &bad_ip).await, "");

    // A body that is not JSON at all (no content type) is 415, still ProblemDetails.
    let a = http()
        .post(&modules)
        .bearer_auth(TOKEN)
        .body("relocationType=TEST")
        .send()
        .await
        .expect("send");
    assert_eq!(a.status().as_u16(), 415);
    assert_eq!(
        a.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/problem+json")
    );
    assert!(relocations(&x).await.is_empty());
}

#[tokio::test]
async fn unknown_resources_are_404_and_wrong_methods_405() {
    let (x, _y) = two_smos().await;
    let schemas = common::schemas();
    for url in [
        format!("{}/service-mobility/v1/service-modules/module-99", x.root),
        format!("{}/application-function/v1/relocations/smo-x-99", x.root),
        format!("{}/no/such/path", x.root),
        format!("{}/service-mobility/v2/services", x.root),
    ] {
        let p = get(&url).await.problem(StatusCode::NOT_FOUND);
        schemas.check(names::PROBLEM_DETAILS, &p);
    }
    let p = call(
        reqwest::Method::PUT,
        &format!("{}/service-mobility/v1/service-modules/module-99", x.root),
        Some(TOKEN),
        Some(&registration_json().to_string()),
    )
    .await
    .problem(StatusCode::NOT_FOUND);
    assert!(p["detail"]
        .as_str()
        .unwrap_or_default()
        .contains("module-99"));
    for (method, path) in [
        (reqwest::Method::DELETE, "/service-mobility/v1/services"),
        (reqwest::Method::GET, "/smo-peer/v1/relocations"),
        (reqwest::Method::PUT, "/application-function/v1/relocations"),
        (reqwest::Method::GET, "/event-signalling/v1/notifications"),
        (reqwest::Method::POST, "/metrics"),
    ] {
        let a = call(method, &format!("{}{path}", x.root), Some(TOKEN), None).await;
        let p = a.problem(StatusCode::METHOD_NOT_ALLOWED);
        schemas.check(names::PROBLEM_DETAILS, &p);
    }
}

#[tokio::test]
async fn every_listed_route_is_served() {
    let (x, _y) = two_smos().await;
    for (method, template) in smo::api::ROUTES {
        let path = template
            .replace("{moduleId}", "module-probe")
            .replace("{relocationId}", "smo-x-probe");
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let body = matches!(method, reqwest::Method::POST | reqwest::Method::PUT).then_some("{}");
        let a = call(
            method.clone(),
            &format!("{}{path}", x.root),
            Some(TOKEN),
            body,
        )
        .await;
        assert_ne!(a.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        if a.status == StatusCode::NOT_FOUND {
            let detail = a.json()["detail"].as_str().unwrap_or_default().to_owned();
            assert_ne!(detail, "no such resource", "{method} {path} is not routed");
        }
    }
}

// ----- the subscription to the SMF -----

#[derive(Debug, Default)]
struct SmfState {
    subscriptions: Vec<Value>,
    deleted: Vec<String>,
    refuse: bool,
}

type SmfShared = Arc<Mutex<SmfState>>;

async fn smf_subscribe(
    State(st): State<SmfShared>,
    sbi::Json(body): sbi::Json<Value>,
) -> axum::response::Response {
    let mut s = st.lock().expect("lock");
    if s.refuse {
        return sbi::ApiError::bad_request("only UP_PATH_CH", Some("/eventSubs/0/event"))
            .into_response();
    }
    s.subscriptions.push(body.clone());
    let mut created = body;
    created["subId"] = json!("sub-1");
    (
        StatusCode::CREATED,
        [(
            axum::http::header::LOCATION,
            "/nsmf-event-exposure/v1/subscriptions/sub-1",
        )],
        sbi::Json(created),
    )
        .into_response()
}

async fn smf_unsubscribe(
    State(st): State<SmfShared>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> StatusCode {
    st.lock().expect("lock").deleted.push(id);
    StatusCode::NO_CONTENT
}

fn fake_smf(st: SmfShared) -> Router {
    Router::new()
        .route(
            "/nsmf-event-exposure/v1/subscriptions",
            routing::post(smf_subscribe),
        )
        .route(
            "/nsmf-event-exposure/v1/subscriptions/{subId}",
            routing::delete(smf_unsubscribe),
        )
        .with_state(st)
}

#[tokio::test]
async fn the_subscription_matches_ts_29_508_and_waits_for_the_smf() {
    let schemas = common::schemas();
    // Reserve a port for the SMF, which comes up only after the SMO started subscribing.
    let reserved = bind().await;
    let addr = reserved.local_addr().expect("addr");
    drop(reserved);
    let smf_url = format!("http://{addr}");
    let st: SmfShared = Arc::default();
    let late_smf = {
        let st = st.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(400)).await;
            let l = TcpListener::bind(addr)
                .await
                .expect("rebind the reserved port");
            serve(l, fake_smf(st)).await
        })
    };
    let client = sbi::Client::new(Some(TOKEN.into()), Duration::from_secs(2));
    let body = events::subscription(
        &events::notif_id("smo-x"),
        &events::notif_uri("http://127.0.0.1:8090"),
        NotifyWhen::Late,
    );
    let location = events::subscribe(&client, &smf_url, &body, Duration::from_secs(10))
        .await
        .expect("subscribed once the smf is up");
    let _smf = late_smf.await.expect("smf task");
    assert_eq!(
        location,
        format!("{smf_url}/nsmf-event-exposure/v1/subscriptions/sub-1")
    );
    let sent = st.lock().expect("lock").subscriptions.clone();
    assert_eq!(sent.len(), 1);
    schemas.check(names::NSMF_EVENT_EXPOSURE, &sent[0]);
    assert_eq!(
        sent[0],
        json!({
            "anyUeInd": true,
            "notifId": "smo-x-up-path-ch",
            "notifUri": "http://127.0.0.1:8090/event-signalling/v1/notifications",
            "eventSubs": [{"event": "UP_PATH_CH", "dnaiChgType": "LATE"}],
        })
    );
    let early = events::subscription("n", "http://127.0.0.1:8090/x", NotifyWhen::Early);
    schemas.check(
        names::NSMF_EVENT_EXPOSURE,
        &serde_json::to_value(&early).expect("json"),
    );

    events::unsubscribe(&client, &location)
        .await
        .expect("unsubscribed");
    assert_eq!(st.lock().expect("lock").deleted, ["sub-1"]);

    // A refusal is final, not retried.
    st.lock().expect("lock").refuse = true;
    let started = tokio::time::Instant::now();
    let e = events::subscribe(&client, &smf_url, &body, Duration::from_secs(10))
        .await
        .expect_err("refused");
    assert!(matches!(e, SubscribeError::Refused(_)), "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn an_smf_that_never_comes_is_reported() {
    let reserved = bind().await;
    let addr = reserved.local_addr().expect("addr");
    drop(reserved);
    let client = sbi::Client::new(Some(TOKEN.into()), Duration::from_secs(1));
    let body = events::subscription("n", "http://127.0.0.1:8090/x", NotifyWhen::Late);
    let e = events::subscribe(
        &client,
        &format!("http://{addr}"),
        &body,
        Duration::from_millis(500),
    )
    .await
    .expect_err("no smf");
    assert!(matches!(e, SubscribeError::Unreachable { .. }), "{e:?}");
}

// ----- the target module's arrival -----

#[tokio::test]
async fn the_arrival_is_checked_and_installs_the_new_path_once_prepare_is_done() {
    let (_x, y) = two_smos().await;
    let schemas = common::schemas();
    let modules = format!("{}/service-mobility/v1/service-modules", y.root);
    let peer = format!("{}/smo-peer/v1/relocations", y.root);
    let arrival = |id: &str| format!("{}/service-mobility/v1/relocations/{id}/arrival", y.root);
    let body = json!({"serviceId": service().service_id});
    let problem = |a: &Answer, status: StatusCode, detail_has: &str| {
        let p = a.problem(status);
        schemas.check(names::PROBLEM_DETAILS, &p);
        let detail = p["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains(detail_has),
            "`{detail}` lacks `{detail_has}`"
        );
    };
    assert_eq!(
        post(&modules, &registration_json()).await.status,
        StatusCode::CREATED
    );

    // 401 without (or with a wrong) token.
    for token in [None, Some("wrong-token")] {
        let a = call(
            reqwest::Method::POST,
            &arrival("smo-x-1"),
            token,
            Some(&body.to_string()),
        )
        .await;
        problem(&a, StatusCode::UNAUTHORIZED, "");
    }
    // 400: malformed, unknown field, missing field, bad relocation id.
    let raw = call(
        reqwest::Method::POST,
        &arrival("smo-x-1"),
        Some(TOKEN),
        Some("{nope"),
    )
    .await;
    problem(&raw, StatusCode::BAD_REQUEST, "");
    problem(
        &post(&arrival("smo-x-1"), &json!({"serviceId": "a", "extra": 1})).await,
        StatusCode::BAD_REQUEST,
        "extra",
    );
    problem(
        &post(&arrival("smo-x-1"), &json!({})).await,
        StatusCode::BAD_REQUEST,
        "serviceId",
    );
    problem(
        &post(&arrival("bad%20id"), &body).await,
        StatusCode::BAD_REQUEST,
        "relocationId",
    );
    // 404: no such relocation here.
    problem(
        &post(&arrival("smo-x-1"), &body).await,
        StatusCode::NOT_FOUND,
        "smo-x-1",
    );

    // INITIATE, VALIDATE: the service cannot arrive yet (409, nothing installed).
    for phase in ["INITIATE", "VALIDATE"] {
        let mut m = peer_message_json("smo-x-1");
        m["relocationPhase"] = json!(phase);
        let a = post(&peer, &m).await;
        assert_eq!(a.json()["result"], "PROCEED", "{phase}: {}", a.text);
    }
    problem(
        &post(&arrival("smo-x-1"), &body).await,
        StatusCode::CONFLICT,
        "PREPARE",
    );
    assert!(y.flows.attempts().is_empty(), "{:?}", y.flows.attempts());
    // Another service: 409.
    let mut m = peer_message_json("smo-x-1");
    m["relocationPhase"] = json!("PREPARE");
    assert_eq!(post(&peer, &m).await.json()["result"], "PROCEED");
    problem(
        &post(&arrival("smo-x-1"), &json!({"serviceId": "other"})).await,
        StatusCode::CONFLICT,
        "other",
    );

    // After PREPARE: 204, the new path is in; the peer's EXECUTE only confirms it.
    let a = post(&arrival("smo-x-1"), &body).await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.text);
    assert_eq!(
        y.flows.attempts(),
        ["trombone-target", "new-path-target"],
        "{:?}",
        y.flows.attempts()
    );
    m["relocationPhase"] = json!("EXECUTE");
    let a = post(&peer, &m).await;
    assert_eq!(a.json()["result"], "PROCEED", "{}", a.text);
    assert_eq!(y.flows.attempts().len(), 2, "no second install");
    let r: RelocationRecord = get(&format!(
        "{}/application-function/v1/relocations/smo-x-1",
        y.root
    ))
    .await
    .parse();
    assert_eq!(
        phases(&r.phases),
        [
            RelocationPhase::Initiate,
            RelocationPhase::Validate,
            RelocationPhase::Prepare,
            RelocationPhase::Execute
        ]
    );

    // A relocation that failed: 409.
    let mut f = peer_message_json("smo-x-2");
    f["relocationPhase"] = json!("FAILURE");
    assert_eq!(post(&peer, &f).await.json()["result"], "PROCEED");
    problem(
        &post(&arrival("smo-x-2"), &body).await,
        StatusCode::CONFLICT,
        "ended",
    );
}

// ----- the NEF's notifications (TS 29.522) and the acknowledgement -----

type Acks = Arc<Mutex<Vec<Value>>>;

async fn nef_ack(State(st): State<Acks>, sbi::Json(body): sbi::Json<Value>) -> StatusCode {
    st.lock().expect("lock").push(body);
    StatusCode::NO_CONTENT
}

#[tokio::test]
async fn the_nefs_notifications_are_checked_and_acknowledged() {
    let schemas = common::schemas();
    let (x, _y) = two_smos().await;
    let url = format!("{}/event-signalling/v1/nef-notifications", x.root);
    // A NEF stand-in taking acknowledgements (127.0.0.1 is inside the SMO's own /24).
    let acks: Acks = Arc::default();
    let nef = bind().await;
    let ack_uri = format!(
        "http://{}/3gpp-traffic-influence/v1/smo-x/subscriptions/sub-1/acks/ack-1",
        nef.local_addr().expect("addr")
    );
    let _nef = serve(
        nef,
        Router::new()
            .route(
                "/3gpp-traffic-influence/v1/smo-x/subscriptions/sub-1/acks/ack-1",
                routing::post(nef_ack),
            )
            .with_state(acks.clone()),
    )
    .await;
    let good = json!({
        "afTransId": "smo-x-up-path-change",
        "dnaiChgType": "EARLY",
        "subscribedEvent": "UP_PATH_CHANGE",
        "sourceDnai": "edge-x",
        "targetDnai": "edge-y",
        "srcUeIpv4Addr": "192.168.1.2",
        "tgtUeIpv4Addr": "192.168.1.2",
        "sourceTrafficRoute": {"dnai": "edge-x", "routeInfo": {"ipv4Addr": "10.90.0.2", "portNumber": 2152}},
        "afAckUri": ack_uri,
    });
    schemas.check(names::TRAFFIC_INFLUENCE_NOTIFICATION, &good);
    let a = post(&url, &good).await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{:?}", a.text);
    // No module here serves the UE: nothing to move, acknowledged at once.
    for _ in 0..200 {
        if !acks.lock().expect("lock").is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let got = acks.lock().expect("lock").clone();
    assert_eq!(got.len(), 1, "{got:?}");
    schemas.check(names::AF_ACK_INFO, &got[0]);
    assert_eq!(
        got[0],
        json!({"afTransId": "smo-x-up-path-change", "ackResult": {"afStatus": "SUCCESS"}})
    );

    // Bad bodies: 400 naming every field.
    let bad = |patch: Value| {
        let mut b = good.clone();
        for (k, v) in patch.as_object().expect("object") {
            if v.is_null() {
                b.as_object_mut().expect("object").remove(k);
            } else {
                b[k] = v.clone();
            }
        }
        b
    };
    for (body, params) in [
        (
            bad(json!({"sourceDnai": null, "srcUeIpv4Addr": null, "tgtUeIpv4Addr": null})),
            vec!["/sourceDnai", "/srcUeIpv4Addr"],
        ),
        (
            bad(json!({"dnaiChgType": "EARLY_LATE", "subscribedEvent": "OTHER_EVENT"})),
            vec!["/subscribedEvent", "/dnaiChgType"],
        ),
        (
            bad(json!({"afAckUri": "http://192.0.2.7/acks/1"})),
            vec!["/afAckUri"],
        ),
        (
            bad(json!({"afTransId": "smo-y-up-path-change"})),
            vec!["/afTransId"],
        ),
    ] {
        let a = post(&url, &body).await;
        let p = a.problem(StatusCode::BAD_REQUEST);
        schemas.check(names::PROBLEM_DETAILS, &p);
        let got: Vec<&str> = p["invalidParams"]
            .as_array()
            .expect("invalidParams")
            .iter()
            .filter_map(|i| i["param"].as_str())
            .collect();
        assert_eq!(got, params, "{body}: {p}");
    }
    let a = call(reqwest::Method::POST, &url, Some(TOKEN), Some("{not json")).await;
    a.problem(StatusCode::BAD_REQUEST);
    assert_eq!(
        acks.lock().expect("lock").len(),
        1,
        "bad bodies acknowledge nothing"
    );
}

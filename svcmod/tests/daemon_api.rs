//! The service-module daemon in-process, over loopback: `daemon::run_with` with a scripted fake
//! [`Backend`] and a fake SMO. Registration (validated against `smo/openapi.yaml`), the three
//! callbacks, the bearer token, bad queries and bodies, Execute's error mapping, the receive
//! side's table, start-up failures, the late SMO, de-registration and removal at shutdown.

mod common;

use common::fake_smo::{Behaviour, FakeSmo};
use model::schema::{names, SchemaSet};
use model::smo::{ExecuteReport, ExecuteRequest, RelocationType, Service};
use sbi::{Client, ClientError};
use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use svcmod::api::cause;
use svcmod::daemon::{self, DaemonError, RegisterPolicy, Settings};
use svcmod::transfer::TransferError;
use svcmod::{
    ArrivalHook, Backend, BackendError, IncomingReport, MigrationError, MigrationReport, MoveError,
    RuntimeError, ServiceSpec, ServiceState, Stopwatch, Strategy,
};
use tokio::io::AsyncBufReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const TOKEN: &str = "tok-daemon-api";
const UE: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "svcmod=info".into()),
        )
        .try_init();
}

// ---------------------------------------------------------------------------------------------
// The fake backend: a table of services and scripted migration outcomes.

#[derive(Debug, Default)]
struct FakeState {
    services: Vec<Service>,
    /// UEs each created service serves.
    ues: HashMap<String, Vec<Ipv4Addr>>,
    /// `create` fails for this id.
    fail_create: Option<String>,
    /// Outcomes of the next `migrate_out`s (default: success).
    script: VecDeque<Result<(), MigrationError>>,
    executed: Vec<ExecuteRequest>,
    removed: Vec<String>,
    /// Services created, in order.
    created: Vec<String>,
    /// Reconciles asked for.
    reconciled: u32,
}

#[derive(Debug, Default)]
struct FakeBackend(Mutex<FakeState>, HookSlot);

/// The daemon's arrival hook, called by the fake receive before the service "resumes".
#[derive(Default)]
struct HookSlot(Mutex<Option<ArrivalHook>>);

impl std::fmt::Debug for HookSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HookSlot")
    }
}

impl FakeBackend {
    fn lock(&self) -> MutexGuard<'_, FakeState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ids(&self) -> Vec<String> {
        self.lock()
            .services
            .iter()
            .map(|s| s.service_id.clone())
            .collect()
    }

    fn host(&self, s: Service) {
        self.lock().services.push(s);
    }
}

fn service(id: &str, last_octet: u8) -> Service {
    Service {
        service_id: id.into(),
        ipv4_addr: Ipv4Addr::new(20, 0, 0, last_octet),
        mac_addr: format!("02:00:00:00:00:{last_octet:02x}"),
        ovs_port: format!("s-{id}"),
        relocation_type: RelocationType::Criu,
        resource_requirements: Default::default(),
        ue_ipv4_addrs: vec![],
    }
}

fn spec(id: &str, last_octet: u8) -> ServiceSpec {
    let s = service(id, last_octet);
    ServiceSpec {
        service_id: s.service_id,
        ipv4_addr: s.ipv4_addr,
        mac_addr: s.mac_addr,
        command: vec!["true".into()],
        resource_requirements: Default::default(),
    }
}

/// A successful migration's report, with steps the way the CRIU backend records them.
fn report_for(req: &ExecuteRequest, s: Service) -> MigrationReport {
    let now = tokio::time::Instant::now();
    let mut sw = Stopwatch::start_at(now);
    for (step, took) in [
        ("prepare target", 1_500),
        ("dump", 40_000),
        ("transfer images", 9_000),
        ("restore at target", 60_000),
        ("resume at target", 2_000),
    ] {
        sw.record_took_at(step, took, now);
    }
    MigrationReport {
        relocation_id: req.relocation_id.clone(),
        service: s,
        strategy: Strategy::StopAndCopy,
        prepare_us: 1_500,
        dump_us: 40_000,
        transfer_us: 9_000,
        restore_us: 60_000,
        resume_us: 2_000,
        pages_us: None,
        frozen_us: 111_000,
        total_us: 112_500,
        image_bytes: 300_000,
        bytes_moved: 300_777,
        steps: sw.steps().to_vec(),
    }
}

impl Backend for FakeBackend {
    fn relocation_type(&self) -> RelocationType {
        RelocationType::Criu
    }

    fn set_arrival_hook(&self, hook: ArrivalHook) {
        *self.1 .0.lock().unwrap_or_else(|p| p.into_inner()) = Some(hook);
    }

    async fn create(&self, spec: ServiceSpec) -> Result<Service, BackendError> {
        let mut st = self.lock();
        if st.fail_create.as_deref() == Some(spec.service_id.as_str()) {
            return Err(BackendError::BadRequest(format!(
                "scripted: cannot create {}",
                spec.service_id
            )));
        }
        let s = Service {
            ue_ipv4_addrs: st.ues.get(&spec.service_id).cloned().unwrap_or_default(),
            ovs_port: format!("s-{}", spec.service_id),
            service_id: spec.service_id,
            ipv4_addr: spec.ipv4_addr,
            mac_addr: spec.mac_addr,
            relocation_type: RelocationType::Criu,
            resource_requirements: spec.resource_requirements,
        };
        st.services.push(s.clone());
        st.created.push(s.service_id.clone());
        Ok(s)
    }

    /// "What runs at the edge": the services it holds.
    async fn reconcile(&self) -> Result<Vec<Service>, BackendError> {
        let mut st = self.lock();
        st.reconciled += 1;
        Ok(st.services.clone())
    }

    async fn remove(&self, service_id: &str) -> Result<(), BackendError> {
        let mut st = self.lock();
        let before = st.services.len();
        st.services.retain(|s| s.service_id != service_id);
        if st.services.len() == before {
            return Err(BackendError::UnknownService {
                service_id: service_id.into(),
            });
        }
        st.removed.push(service_id.into());
        Ok(())
    }

    async fn services(&self) -> Result<Vec<Service>, BackendError> {
        Ok(self.lock().services.clone())
    }

    async fn migrate_out(
        &self,
        request: &ExecuteRequest,
    ) -> Result<MigrationReport, MigrationError> {
        let mut st = self.lock();
        st.executed.push(request.clone());
        let id = request.service.service_id.clone();
        let Some(pos) = st.services.iter().position(|s| s.service_id == id) else {
            return Err(MigrationError::NotStarted {
                service_id: id.clone(),
                cause: BackendError::UnknownService { service_id: id }.into(),
            });
        };
        match st.script.pop_front().unwrap_or(Ok(())) {
            Ok(()) => {
                let s = st.services.remove(pos);
                Ok(report_for(request, s))
            }
            Err(e) => {
                if !e.service_at_source() {
                    st.services.remove(pos);
                }
                Err(e)
            }
        }
    }

    /// The fake "migration protocol": one line of JSON, the service.
    async fn receive(&self, stream: TcpStream) -> Result<IncomingReport, MoveError> {
        let mut line = String::new();
        tokio::io::BufReader::new(stream)
            .read_line(&mut line)
            .await
            .map_err(|source| TransferError::Io {
                what: "the fake migration line".into(),
                source,
            })?;
        let s: Service = serde_json::from_str(&line)
            .map_err(|e| TransferError::Protocol(format!("bad service line: {e}")))?;
        // "Commit": the SMO hears of the arrival before the service resumes.
        let hook = self.1 .0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(hook) = hook {
            hook("incoming".into(), s.service_id.clone()).await;
        }
        self.host(s.clone());
        Ok(IncomingReport {
            relocation_id: "incoming".into(),
            service: s,
            prepare_us: 1,
            receive_us: 2,
            restore_us: 3,
            resume_us: 4,
            pages_us: None,
            image_bytes: 5,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Schemas: the 3GPP files and smo/openapi.yaml in one set.

const SMO_FILE: &str = "SMO_ServiceMobility.yaml";

fn smo_schema(name: &str) -> String {
    format!("{SMO_FILE}#/components/schemas/{name}")
}

struct Schemas {
    set: SchemaSet,
    dir: PathBuf,
}

impl Drop for Schemas {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Schemas {
    fn load() -> Schemas {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "svcmod-openapi-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        for entry in std::fs::read_dir(SchemaSet::default_dir()).expect("3gpp dir") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "yaml") {
                let name = path.file_name().expect("file name");
                std::os::unix::fs::symlink(&path, dir.join(name)).expect("symlink");
            }
        }
        let smo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../smo/openapi.yaml");
        std::fs::copy(smo, dir.join(SMO_FILE)).expect("copy smo/openapi.yaml");
        let set = SchemaSet::load(&dir).expect("schemas load");
        Schemas { set, dir }
    }

    fn check(&self, name: &str, value: &serde_json::Value) {
        if let Err(errors) = self.set.validate(name, value) {
            panic!("{value:#} does not match {name}: {errors:#?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The daemon under test.

struct Daemon {
    /// `http://127.0.0.1:PORT/svcmod/v1`
    base: String,
    notif: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    ready: tokio::sync::oneshot::Receiver<()>,
    run: JoinHandle<Result<(), DaemonError>>,
}

fn fast_policy() -> RegisterPolicy {
    RegisterPolicy {
        attempt_every: Duration::from_millis(50),
        patience: Duration::from_secs(10),
        retry_every: Duration::from_millis(100),
        call_limit: Duration::from_secs(2),
    }
}

async fn start(
    backend: &Arc<FakeBackend>,
    smo_url: &str,
    services: Vec<ServiceSpec>,
    register: RegisterPolicy,
) -> Daemon {
    start_with_state(backend, smo_url, services, register, None).await
}

async fn start_with_state(
    backend: &Arc<FakeBackend>,
    smo_url: &str,
    services: Vec<ServiceSpec>,
    register: RegisterPolicy,
    start_note: Option<PathBuf>,
) -> Daemon {
    init_tracing();
    let api = TcpListener::bind("127.0.0.1:0").await.expect("bind api");
    let migration = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind migration");
    let base = format!(
        "http://{}{}",
        api.local_addr().expect("addr"),
        svcmod::api::BASE
    );
    let notif = migration.local_addr().expect("addr");
    let settings = Settings {
        name: "svcmod-test".into(),
        smo_url: smo_url.into(),
        token: Some(TOKEN.into()),
        services,
        register,
        start_note,
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(daemon::run_with(
        Arc::clone(backend),
        settings,
        api,
        migration,
        move || {
            let _ = ready_tx.send(());
        },
        async move {
            let _ = stop_rx.await;
        },
    ));
    Daemon {
        base,
        notif,
        stop: Some(stop_tx),
        ready,
        run,
    }
}

impl Daemon {
    async fn wait_ready(&mut self, limit: Duration) {
        tokio::time::timeout(limit, &mut self.ready)
            .await
            .expect("ready in time")
            .expect("ready (the daemon ended before)");
    }

    async fn shut_down(mut self) -> Result<(), DaemonError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), self.run)
            .await
            .expect("ended in time")
            .expect("join")
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

fn client() -> Client {
    Client::new(Some(TOKEN.into()), Duration::from_secs(5))
}

async fn smo(behaviour: Behaviour) -> FakeSmo {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind smo");
    FakeSmo::start(l, Some(TOKEN.into()), behaviour)
}

/// A loopback port nobody listens on (yet).
fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("reserve");
    l.local_addr().expect("addr")
}

/// The status, cause and raw problem of a failed call.
fn problem_of<T: std::fmt::Debug>(
    r: Result<T, ClientError>,
) -> (u16, Option<String>, serde_json::Value) {
    match r {
        Err(ClientError::Status {
            status, problem, ..
        }) => {
            let p = problem.unwrap_or_else(|| panic!("{status} without ProblemDetails"));
            let json = serde_json::to_value(&p).expect("json");
            (status, p.cause.clone(), json)
        }
        other => panic!("expected an error status, got {other:?}"),
    }
}

fn execute_request(id: &str, target: &str) -> ExecuteRequest {
    ExecuteRequest {
        relocation_id: format!("rel-{id}"),
        service: service(id, 50),
        target_address: target.parse().expect("ip:port"),
    }
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_serves_the_callbacks_and_deregisters_at_shutdown() {
    let schemas = Schemas::load();
    let smo = smo(Behaviour::default()).await;
    let backend = Arc::new(FakeBackend::default());
    backend.lock().ues.insert("a".into(), vec![UE]);
    let mut d = start(
        &backend,
        &smo.url,
        vec![spec("a", 50), spec("b", 51)],
        fast_policy(),
    )
    .await;
    d.wait_ready(Duration::from_secs(5)).await;

    // The registration: schema-valid, pointing at the callbacks and the migration receiver.
    let reg = smo.seen(|s| s.registrations.clone());
    assert_eq!(reg.len(), 1, "{reg:#?}");
    let reg = &reg[0];
    schemas.check(&smo_schema("ServiceModuleRegistration"), reg);
    assert_eq!(reg["relocationType"], "CRIU");
    assert_eq!(reg["getServiceNotifUri"], d.url("/services"));
    assert_eq!(reg["servedServiceNotifUri"], d.url("/served-service"));
    assert_eq!(reg["executeNotifUri"], d.url("/execute"));
    assert_eq!(reg["notifAddress"], d.notif.to_string());

    // GetServices.
    let c = client();
    let list: serde_json::Value = c.get(&d.url("/services")).await.expect("services");
    let ids: Vec<&str> = list
        .as_array()
        .expect("array")
        .iter()
        .map(|s| {
            schemas.check(&smo_schema("Service"), s);
            s["serviceId"].as_str().expect("id")
        })
        .collect();
    assert_eq!(ids, ["a", "b"]);

    // The token is required.
    let (status, _, p) = problem_of(
        Client::new(None, Duration::from_secs(5))
            .get::<Vec<Service>>(&d.url("/services"))
            .await,
    );
    assert_eq!(status, 401);
    schemas.check(names::PROBLEM_DETAILS, &p);
    let (status, ..) = problem_of(
        Client::new(Some("wrong".into()), Duration::from_secs(5))
            .post::<_, ExecuteReport>(&d.url("/execute"), &execute_request("a", "127.0.0.1:1"))
            .await,
    );
    assert_eq!(status, 401);
    assert_eq!(backend.ids(), ["a", "b"], "nothing moved without the token");

    // ServedService.
    let s: Service = c
        .get(&d.url(&format!("/served-service?ueIpv4Addr={UE}")))
        .await
        .expect("served");
    assert_eq!(s.service_id, "a");
    let (status, _, p) = problem_of(
        c.get::<Service>(&d.url("/served-service?ueIpv4Addr=192.168.1.99"))
            .await,
    );
    assert_eq!(status, 404);
    schemas.check(names::PROBLEM_DETAILS, &p);
    for bad in [
        "?ueIpv4Addr=nonsense",
        "?ueIpv4Addr=192.168.1.300",
        "",
        "?ueIpv4Addr=1.1.1.1&ueIpv4Addr=2.2.2.2",
    ] {
        let (status, _, p) = problem_of(
            c.get::<Service>(&d.url(&format!("/served-service{bad}")))
                .await,
        );
        assert_eq!(status, 400, "{bad}");
        schemas.check(names::PROBLEM_DETAILS, &p);
    }

    // Bad bodies, wrong methods, unknown paths: ProblemDetails too.
    let bad_body = serde_json::json!({"relocationId": "r", "targetAddress": "127.0.0.1:1"});
    let (status, ..) = problem_of(
        c.post::<_, ExecuteReport>(&d.url("/execute"), &bad_body)
            .await,
    );
    assert_eq!(status, 400);
    let (status, ..) = problem_of(c.get::<ExecuteReport>(&d.url("/execute")).await);
    assert_eq!(status, 405);
    let (status, ..) = problem_of(c.get::<serde_json::Value>(&d.url("/nothing")).await);
    assert_eq!(status, 404);

    // Execute: the report, and the service leaves the list.
    let target = free_port().to_string();
    let rep: serde_json::Value = c
        .post(&d.url("/execute"), &execute_request("a", &target))
        .await
        .expect("execute");
    schemas.check(&smo_schema("ExecuteReport"), &rep);
    let rep: ExecuteReport = serde_json::from_value(rep).expect("report");
    assert_eq!(rep.took_us, 112_500);
    assert_eq!(rep.bytes_moved, Some(300_777));
    assert_eq!(rep.steps.len(), 5);
    assert!(rep.steps.iter().all(|s| s.at_unix_us.is_some()));
    assert_eq!(
        backend.lock().executed[0].target_address.to_string(),
        target
    );
    let list: Vec<Service> = c.get(&d.url("/services")).await.expect("services");
    assert_eq!(
        list.iter()
            .map(|s| s.service_id.as_str())
            .collect::<Vec<_>>(),
        ["b"]
    );

    // The receive side: an incoming service joins the list.
    {
        use tokio::io::AsyncWriteExt;
        let mut conn = TcpStream::connect(d.notif).await.expect("connect");
        let mut line = serde_json::to_vec(&service("c", 52)).expect("json");
        line.push(b'\n');
        conn.write_all(&line).await.expect("send");
    }
    let start = tokio::time::Instant::now();
    loop {
        let list: Vec<Service> = c.get(&d.url("/services")).await.expect("services");
        if list.iter().any(|s| s.service_id == "c") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "{list:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Before it "resumed", the SMO heard of its arrival (with the token; schema-valid).
    let arrivals = smo.seen(|s| s.arrivals.clone());
    assert_eq!(
        arrivals,
        [("incoming".to_owned(), serde_json::json!({"serviceId": "c"}))]
    );
    schemas.check(&smo_schema("ServiceArrival"), &arrivals[0].1);

    // Shutdown: de-registered (the Location), every hosted service removed.
    let api = d.url("/services");
    d.shut_down().await.expect("clean shutdown");
    assert_eq!(
        smo.seen(|s| s.deletions.clone()),
        ["/service-mobility/v1/service-modules/module-1"]
    );
    let mut removed = backend.lock().removed.clone();
    removed.sort();
    assert_eq!(removed, ["b", "c"]);
    assert!(backend.ids().is_empty());
    assert!(
        matches!(
            c.get::<Vec<Service>>(&api).await,
            Err(ClientError::Transport { .. })
        ),
        "no longer accepting"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execute_errors_map_to_statuses_and_say_where_the_service_is() {
    let schemas = Schemas::load();
    let smo = smo(Behaviour::default()).await;
    let backend = Arc::new(FakeBackend::default());
    let mut d = start(&backend, &smo.url, vec![], fast_policy()).await;
    d.wait_ready(Duration::from_secs(5)).await;
    let c = client();
    let target = free_port().to_string();
    let rolled_back_report = report_for(&execute_request("a", &target), service("a", 50));
    let not_started = |cause: MoveError| MigrationError::NotStarted {
        service_id: "a".into(),
        cause,
    };
    let local = |step, what: &str| MoveError::local(step)(RuntimeError::State(what.into()));
    // (the backend's outcome, status, cause, words the detail must hold, the service still
    // hosted here)
    let cases: Vec<(MigrationError, u16, &str, &str, bool)> = vec![
        (
            not_started(
                BackendError::Busy {
                    service_id: "a".into(),
                    state: ServiceState::MigratingOut,
                }
                .into(),
            ),
            409,
            cause::SERVICE_BUSY,
            "MigratingOut",
            true,
        ),
        (
            not_started(
                BackendError::BadRequest("target address `x` is not ip:port".into()).into(),
            ),
            422,
            cause::INVALID_TARGET,
            "not ip:port",
            true,
        ),
        (
            not_started(MoveError::Refused("network namespace exists".into())),
            502,
            cause::TARGET_REFUSED,
            "network namespace exists",
            true,
        ),
        (
            not_started(
                TransferError::Timeout {
                    what: "answer to prepare".into(),
                    limit_ms: 10_000,
                }
                .into(),
            ),
            502,
            cause::TARGET_FAILED,
            "no answer to prepare within 10000 ms",
            true,
        ),
        (
            not_started(MoveError::Unexpected {
                expected: "prepared",
                got: "commit",
            }),
            502,
            cause::TARGET_FAILED,
            "expected prepared, got commit",
            true,
        ),
        // A failure at the source is this module's, never the target's.
        (
            not_started(local("offer", "instance tb-svc-a is not running")),
            500,
            cause::MIGRATION_FAILED,
            "offer failed: instance tb-svc-a is not running",
            true,
        ),
        (
            not_started(BackendError::Unsupported("lazy-pages migration".into()).into()),
            500,
            cause::MIGRATION_FAILED,
            "lazy-pages migration is not supported",
            true,
        ),
        (
            MigrationError::RolledBack {
                service_id: "a".into(),
                cause: MoveError::TargetFailed {
                    step: "restore",
                    cause: "criu restore failed".into(),
                },
                report: Box::new(rolled_back_report),
            },
            502,
            cause::MIGRATION_ROLLED_BACK,
            "the target failed to restore: criu restore failed",
            true,
        ),
        (
            MigrationError::OutcomeUnknown {
                service_id: "a".into(),
                cause: TransferError::Timeout {
                    what: "answer to commit".into(),
                    limit_ms: 10_000,
                }
                .into(),
            },
            504,
            cause::MIGRATION_OUTCOME_UNKNOWN,
            "no answer to commit",
            false,
        ),
        (
            MigrationError::Lost {
                service_id: "a".into(),
                cause: local("checkpoint", "dump failed"),
                fallback: Box::new(RuntimeError::State("restore at source failed".into())),
            },
            504,
            cause::SERVICE_LOST,
            "restore at source failed",
            false,
        ),
    ];
    for (outcome, want_status, want_cause, want_detail, at_source) in cases {
        let what = sbi::error_chain(&outcome);
        if backend.ids().is_empty() {
            backend.host(service("a", 50));
        }
        backend.lock().script.push_back(Err(outcome));
        let (status, cause, p) = problem_of(
            c.post::<_, ExecuteReport>(&d.url("/execute"), &execute_request("a", &target))
                .await,
        );
        schemas.check(names::PROBLEM_DETAILS, &p);
        assert_eq!(status, want_status, "{what}");
        assert_eq!(cause.as_deref(), Some(want_cause), "{what}");
        assert!(
            p["detail"]
                .as_str()
                .is_some_and(|t| t.contains(want_detail)),
            "{what}: {p}"
        );
        let listed: Vec<Service> = c.get(&d.url("/services")).await.expect("services");
        assert_eq!(!listed.is_empty(), at_source, "{what}");
    }

    // Not hosted here: 409, from the backend's own answer.
    backend.lock().services.clear();
    let (status, cause, _) = problem_of(
        c.post::<_, ExecuteReport>(&d.url("/execute"), &execute_request("zz", &target))
            .await,
    );
    assert_eq!(
        (status, cause.as_deref()),
        (409, Some(cause::SERVICE_NOT_HOSTED))
    );

    // Unusable targets never reach the backend.
    backend.host(service("a", 50));
    let executed = backend.lock().executed.len();
    // Not ip:port at all: the body does not parse (400, naming the field).
    for bad in ["nonsense", "10.0.1.2"] {
        let mut body = serde_json::to_value(execute_request("a", "10.0.1.2:9200")).expect("json");
        body["targetAddress"] = serde_json::json!(bad);
        let (status, _, p) =
            problem_of(c.post::<_, ExecuteReport>(&d.url("/execute"), &body).await);
        schemas.check(names::PROBLEM_DETAILS, &p);
        assert_eq!(status, 400, "{bad}: {p}");
        assert!(p.to_string().contains("targetAddress"), "{bad}: {p}");
    }
    let own = d.notif.to_string();
    for bad in ["0.0.0.0:9200", "10.0.1.2:0", own.as_str()] {
        let (status, cause, p) = problem_of(
            c.post::<_, ExecuteReport>(&d.url("/execute"), &execute_request("a", bad))
                .await,
        );
        schemas.check(names::PROBLEM_DETAILS, &p);
        assert_eq!(
            (status, cause.as_deref()),
            (422, Some(cause::INVALID_TARGET)),
            "{bad}"
        );
    }
    assert_eq!(backend.lock().executed.len(), executed);
    assert_eq!(backend.ids(), ["a"]);
    d.shut_down().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_are_refused_clearly_when_unknown_or_not_supported() {
    let smo = smo(Behaviour::default()).await;
    let backend = Arc::new(FakeBackend::default());
    let mut d = start(&backend, &smo.url, vec![], fast_policy()).await;
    d.wait_ready(Duration::from_secs(5)).await;
    let c = client();
    // The fake backend cannot cause faults: 501 with the reason.
    let (status, _, p) = problem_of(
        c.post_no_content(
            &d.url("/faults"),
            &serde_json::json!({"fault": "corrupt-images"}),
        )
        .await,
    );
    assert_eq!(status, 501, "{p}");
    assert!(
        p["detail"]
            .as_str()
            .is_some_and(|t| t.contains("corrupt-images")),
        "{p}"
    );
    for bad in [
        serde_json::json!({"fault": "explode"}),
        serde_json::json!({"fault": "corrupt-images", "extra": 1}),
        serde_json::json!({}),
    ] {
        let (status, _, p) = problem_of(c.post_no_content(&d.url("/faults"), &bad).await);
        assert_eq!(status, 400, "{bad}: {p}");
    }
    let anonymous = Client::new(None, Duration::from_secs(2));
    let (status, _, _) = problem_of(
        anonymous
            .post_no_content(
                &d.url("/faults"),
                &serde_json::json!({"fault": "corrupt-images"}),
            )
            .await,
    );
    assert_eq!(status, 401);
    d.shut_down().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_waits_for_a_late_smo() {
    let addr = free_port();
    let backend = Arc::new(FakeBackend::default());
    let began = tokio::time::Instant::now();
    let mut d = start(
        &backend,
        &format!("http://{addr}"),
        vec![spec("a", 50)],
        fast_policy(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        matches!(
            d.ready.try_recv(),
            Err(tokio::sync::oneshot::error::TryRecvError::Empty)
        ),
        "ready before registering"
    );
    // The callbacks answer already.
    let list: Vec<Service> = client().get(&d.url("/services")).await.expect("services");
    assert_eq!(list.len(), 1);
    let smo = FakeSmo::start(
        TcpListener::bind(addr).await.expect("bind smo"),
        Some(TOKEN.into()),
        Behaviour::default(),
    );
    d.wait_ready(Duration::from_secs(5)).await;
    assert!(began.elapsed() >= Duration::from_millis(500));
    assert_eq!(smo.seen(|s| s.registrations.len()), 1);
    d.shut_down().await.expect("shutdown");
    assert_eq!(smo.seen(|s| s.deletions.len()), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_smo_the_daemon_serves_and_registers_in_the_background() {
    let addr = free_port();
    let backend = Arc::new(FakeBackend::default());
    let policy = RegisterPolicy {
        patience: Duration::from_millis(300),
        ..fast_policy()
    };
    let mut d = start(
        &backend,
        &format!("http://{addr}"),
        vec![spec("a", 50)],
        policy,
    )
    .await;
    // Ready after the patience, with a warning, not an error.
    d.wait_ready(Duration::from_secs(5)).await;
    let list: Vec<Service> = client().get(&d.url("/services")).await.expect("services");
    assert_eq!(list.len(), 1);
    // An incoming service arrives even though its arrival cannot be reported.
    {
        use tokio::io::AsyncWriteExt;
        let mut conn = TcpStream::connect(d.notif).await.expect("connect");
        let mut line = serde_json::to_vec(&service("c", 52)).expect("json");
        line.push(b'\n');
        conn.write_all(&line).await.expect("send");
    }
    let start = tokio::time::Instant::now();
    while !backend.ids().contains(&"c".to_owned()) {
        assert!(start.elapsed() < Duration::from_secs(5), "not received");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The SMO comes later (and answers a relative Location).
    let smo = FakeSmo::start(
        TcpListener::bind(addr).await.expect("bind smo"),
        Some(TOKEN.into()),
        Behaviour {
            relative_location: true,
            ..Default::default()
        },
    );
    assert!(
        smo.wait_for(Duration::from_secs(5), |s| s.registrations.len() == 1)
            .await,
        "registered in the background"
    );
    d.shut_down().await.expect("shutdown");
    assert_eq!(
        smo.seen(|s| s.deletions.clone()),
        ["/service-mobility/v1/service-modules/module-1"]
    );
    let mut removed = backend.lock().removed.clone();
    removed.sort();
    assert_eq!(removed, ["a", "c"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_smo_is_fatal_at_start_and_the_services_go() {
    let smo = smo(Behaviour {
        refuse: Some(400),
        ..Default::default()
    })
    .await;
    let backend = Arc::new(FakeBackend::default());
    let d = start(
        &backend,
        &smo.url,
        vec![spec("a", 50), spec("b", 51)],
        fast_policy(),
    )
    .await;
    let err = tokio::time::timeout(Duration::from_secs(10), d.run)
        .await
        .expect("ends")
        .expect("join")
        .expect_err("refused");
    assert!(matches!(err, DaemonError::Registration { .. }), "{err:?}");
    assert!(
        daemon::error_chain(&err).contains("400"),
        "{}",
        daemon::error_chain(&err)
    );
    assert!(d.ready.await.is_err(), "never ready");
    assert!(backend.ids().is_empty());
    assert_eq!(
        smo.seen(|s| s.registrations.len()),
        1,
        "no retry after a 4xx"
    );
    assert!(smo.seen(|s| s.deletions.is_empty()));

    // A wrong token is a refusal too (401 from the SMO).
    let other = FakeSmo::start(
        TcpListener::bind("127.0.0.1:0").await.expect("bind"),
        Some("other-token".into()),
        Behaviour::default(),
    );
    let d = start(&backend, &other.url, vec![spec("a", 50)], fast_policy()).await;
    let err = tokio::time::timeout(Duration::from_secs(10), d.run)
        .await
        .expect("ends")
        .expect("join")
        .expect_err("refused");
    assert!(daemon::error_chain(&err).contains("401"), "{err:?}");
    assert!(backend.ids().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_cannot_be_created_is_fatal_and_the_others_go() {
    let smo = smo(Behaviour::default()).await;
    let backend = Arc::new(FakeBackend::default());
    backend.lock().fail_create = Some("bad".into());
    let d = start(
        &backend,
        &smo.url,
        vec![spec("a", 50), spec("b", 51), spec("bad", 52), spec("c", 53)],
        fast_policy(),
    )
    .await;
    let err = tokio::time::timeout(Duration::from_secs(10), d.run)
        .await
        .expect("ends")
        .expect("join")
        .expect_err("fatal");
    match &err {
        DaemonError::CreateService { service_id, .. } => assert_eq!(service_id, "bad"),
        other => panic!("{other:?}"),
    }
    assert!(
        daemon::error_chain(&err).contains("scripted: cannot create bad"),
        "{}",
        daemon::error_chain(&err)
    );
    assert_eq!(backend.lock().removed, ["b", "a"], "newest first");
    assert!(backend.ids().is_empty(), "c was never made");
    assert!(smo.seen(|s| s.registrations.is_empty()), "never registered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_while_waiting_for_the_smo_removes_the_services() {
    let backend = Arc::new(FakeBackend::default());
    let mut d = start(
        &backend,
        &format!("http://{}", free_port()),
        vec![spec("a", 50)],
        fast_policy(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(d.ready.try_recv().is_err());
    let began = tokio::time::Instant::now();
    d.shut_down().await.expect("shutdown");
    assert!(began.elapsed() < Duration::from_secs(3));
    assert_eq!(backend.lock().removed, ["a"]);
}

#[test]
fn the_binary_refuses_a_bad_config_with_64_and_names_the_field() {
    let dir = std::env::temp_dir().join(format!("svcmod-badcfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let cfg = dir.join("svcmod.json");
    let good = serde_json::json!({
        "name": "svcmod-x",
        "smo_url": "http://10.100.0.41:8090",
        "api_addr": "10.100.0.41:9100",
        "migration_addr": "10.0.1.1:9200",
        "prefix": "tb",
        "site": {"edge": "x", "netns": "tb-edge-x", "bridge": "br-x", "ovs_dir": "/run/testbed/t/ovs-x"},
        "strategy": "lazy_pages"
    });
    for (field, value, want) in [
        (
            "migration_addr",
            serde_json::json!("0.0.0.0:9200"),
            "migration_addr",
        ),
        (
            "colour",
            serde_json::json!("blue"),
            "unknown field `colour`",
        ),
    ] {
        let mut bad = good.clone();
        bad[field] = value;
        std::fs::write(&cfg, bad.to_string()).expect("write");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_svcmod"))
            .arg("--config")
            .arg(&cfg)
            .output()
            .expect("run svcmod");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{field}: {stderr}");
        assert!(stderr.contains(want), "{field}: {stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_daemon_reconciles_instead_of_creating_its_services_again() {
    let smo = smo(Behaviour::default()).await;
    let note = std::env::temp_dir().join(format!("svcmod-daemon-{}.started", std::process::id()));
    let _ = std::fs::remove_dir(&note);
    let specs = vec![spec("a", 50)];
    let start = async |backend: &Arc<FakeBackend>| {
        start_with_state(
            backend,
            &smo.url,
            specs.clone(),
            fast_policy(),
            Some(note.clone()),
        )
        .await
    };
    // A fresh start creates the services and notes that it runs; a clean end removes the note.
    let first = Arc::new(FakeBackend::default());
    let mut d = start(&first).await;
    d.wait_ready(Duration::from_secs(5)).await;
    assert_eq!(first.lock().created, ["a"]);
    assert!(note.exists());
    d.shut_down().await.expect("clean");
    assert!(!note.exists(), "a clean end leaves no note");
    // Killed: the note stays. The same config again: what runs is taken over; the configured
    // service (which may have moved away meanwhile) is not made again.
    let second = Arc::new(FakeBackend::default());
    let mut d = start(&second).await;
    d.wait_ready(Duration::from_secs(5)).await;
    d.run.abort();
    assert!(note.exists(), "a killed module leaves its note");
    let again = Arc::new(FakeBackend::default());
    again.host(service("b", 51));
    let mut d = start(&again).await;
    d.wait_ready(Duration::from_secs(5)).await;
    assert!(again.lock().created.is_empty(), "nothing created");
    assert_eq!(again.lock().reconciled, 1);
    let listed: Vec<Service> = client().get(&d.url("/services")).await.expect("services");
    assert_eq!(
        listed
            .iter()
            .map(|s| s.service_id.as_str())
            .collect::<Vec<_>>(),
        ["b"]
    );
    d.shut_down().await.expect("clean");
    assert!(!note.exists());
}

//! The control overhead of one relocation: a source and a target [`Negotiator`] in process, both
//! machines running for real, with fakes that cost nothing (switches that install at once, a
//! service module whose Execute answers at once). What is left — notification → COMPLETED — is the
//! SMO's own work: the state machines, the peer protocol round trips (in process: no HTTP), the
//! rule generation, the stopwatch. The thesis measured total − EXECUTE ≈ 227 ms; the target here is
//! ≤ 10 ms.
//!
//! The fakes are a trimmed copy of those in `smo/tests/relocation.rs` (no fault injection).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use model::common::{DateTime, Dnai, DnaiChangeType, RouteToLocation};
use model::nsmf_event_exposure::{EventNotification, NsmfEventExposureNotification};
use model::smo::{
    ExecuteReport, ExecuteRequest, PeerInfo, PeerRelocationAnswer, PeerRelocationMessage,
    RelocationPhase, RelocationRecord, RelocationState, RelocationType, ResourceRequirements,
    Service, ServiceModule, ServiceModuleRegistration,
};
use smo::config::{SmoConfig, Timeouts};
use smo::core::ExecuteFailure;
use smo::negotiator::{Clock, Negotiator, Remote};
use smo::routing::fake::FakeProgrammer;
use smo::routing::rules::EdgePorts;
use smo::store::Store;

const UE: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);

fn service() -> Service {
    Service {
        service_id: "svc-1".into(),
        ipv4_addr: Ipv4Addr::new(20, 0, 0, 10),
        mac_addr: "02:00:00:00:00:0a".into(),
        ovs_port: "svc1".into(),
        relocation_type: RelocationType::Test,
        resource_requirements: ResourceRequirements::default(),
        ue_ipv4_addrs: vec![UE],
    }
}

type Smo = Negotiator<InstantRemote, FakeProgrammer>;

/// Peer calls go straight to the target negotiator; the module serves one service and migrates
/// it at once.
#[derive(Debug, Clone, Default)]
struct InstantRemote {
    target: Option<Smo>,
}

impl Remote for InstantRemote {
    async fn call_peer(
        &self,
        _peer: &PeerInfo,
        msg: &PeerRelocationMessage,
    ) -> Result<PeerRelocationAnswer, String> {
        match &self.target {
            Some(t) => Ok(t.on_peer_message(msg).await),
            None => Err("no peer".into()),
        }
    }

    async fn served_service(
        &self,
        _module: &ServiceModule,
        ue: Ipv4Addr,
    ) -> Result<Option<Service>, String> {
        Ok((ue == UE).then(service))
    }

    async fn services(&self, _module: &ServiceModule) -> Result<Vec<Service>, String> {
        Ok(Vec::new())
    }

    async fn ue_location(&self, _ue: Ipv4Addr) -> Result<Option<Dnai>, String> {
        Ok(None)
    }

    async fn execute(
        &self,
        _module: &ServiceModule,
        _req: &ExecuteRequest,
    ) -> Result<ExecuteReport, ExecuteFailure> {
        Ok(ExecuteReport::default())
    }
}

fn registration(addr: &str) -> ServiceModuleRegistration {
    ServiceModuleRegistration {
        relocation_type: RelocationType::Test,
        resource_requirements: ResourceRequirements::default(),
        get_service_notif_uri: format!("http://{addr}/services"),
        served_service_notif_uri: format!("http://{addr}/served-service"),
        execute_notif_uri: format!("http://{addr}/execute"),
        notif_address: addr.parse().expect("module address"),
    }
}

fn config(id: &str, dnai: &str, peers: Vec<PeerInfo>) -> SmoConfig {
    SmoConfig {
        smo_id: id.into(),
        dnai: Dnai::new(dnai),
        api_addr: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8090),
        token: None,
        subscribe_at: smo::config::SubscribeAt::Smf,
        smf_url: None,
        nef: Default::default(),
        lr_url: None,
        notify_when: Default::default(),
        peers,
        ovs_mgmt: PathBuf::from("/nonexistent"),
        ports: EdgePorts::testbed(),
        capacity: ResourceRequirements {
            cpu_millis: 2000,
            memory_mb: 4096,
            disk_mb: 10240,
        },
        state_dir: PathBuf::from("/nonexistent"),
        timeouts: Timeouts::default(),
        reconcile: Default::default(),
        callback_networks: vec!["10.100.1.0/24"
            .parse()
            .unwrap_or_else(|_| unreachable!("a network"))],
    }
}

fn notification() -> NsmfEventExposureNotification {
    let at = DateTime::from_unix(1_700_000_000, 0).unwrap_or_else(|| unreachable!("valid"));
    NsmfEventExposureNotification::new(
        "notif-1",
        vec![EventNotification::up_path_change(
            DnaiChangeType::Late,
            UE,
            RouteToLocation::new("edge-x", Ipv4Addr::new(10, 100, 0, 21), 2152),
            RouteToLocation::new("edge-y", Ipv4Addr::new(10, 100, 0, 22), 2152),
            at,
        )],
    )
}

/// A fresh source and target (in-memory stores, zero-delay switches), modules registered.
/// Must run inside the runtime (the clocks read tokio's).
fn pair() -> Smo {
    let target = Negotiator::new(
        &config("smo-y", "edge-y", Vec::new()),
        InstantRemote::default(),
        FakeProgrammer::new(),
        Store::memory(),
        Clock::tokio(0),
    )
    .unwrap_or_else(|e| panic!("target: {e}"));
    target
        .register(registration("10.100.1.42:9100"))
        .unwrap_or_else(|e| panic!("register: {e}"));
    let peer = PeerInfo {
        smo_id: "smo-y".into(),
        dnai: Dnai::new("edge-y"),
        api_root: "http://10.100.0.42:8090".into(),
        cost: 0,
    };
    let source = Negotiator::new(
        &config("smo-x", "edge-x", vec![peer]),
        InstantRemote {
            target: Some(target),
        },
        FakeProgrammer::new(),
        Store::memory(),
        Clock::tokio(0),
    )
    .unwrap_or_else(|e| panic!("source: {e}"));
    source
        .register(registration("10.100.1.41:9100"))
        .unwrap_or_else(|e| panic!("register: {e}"));
    source
}

/// Notification → COMPLETED, on the caller's clock; and the source's record.
async fn relocate(source: &Smo) -> (Duration, RelocationRecord) {
    let t0 = Instant::now();
    let ids = source.on_notification(&notification());
    let id = ids.first().cloned().unwrap_or_default();
    loop {
        match source.relocation(&id) {
            Some(r) if r.state != RelocationState::Running => {
                let took = t0.elapsed();
                assert_eq!(r.state, RelocationState::Completed, "{r:?}");
                return (took, r);
            }
            // Let the relocation task run (current-thread runtime).
            _ => tokio::task::yield_now().await,
        }
    }
}

fn relocation(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));

    let (_, rec) = rt.block_on(async { relocate(&pair()).await });
    let total = rec.total_us.unwrap_or_default();
    let execute = rec
        .phases
        .iter()
        .find(|t| t.phase == RelocationPhase::Execute)
        .map_or(0, |t| t.took_us);
    println!(
        "control overhead: {} µs (total {total} µs − execute {execute} µs)",
        total.saturating_sub(execute)
    );

    let mut group = c.benchmark_group("relocation");
    group.bench_function("control overhead of one relocation", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut sum = Duration::ZERO;
                for _ in 0..iters {
                    let source = pair();
                    sum += relocate(&source).await.0;
                }
                sum
            })
        })
    });
    group.finish();
}

criterion_group!(benches, relocation);
criterion_main!(benches);

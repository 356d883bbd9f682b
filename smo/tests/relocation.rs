//! The relocation procedure end to end, in process (no root, no sockets): a source and a target
//! [`Negotiator`] whose machines both run for real, [`FakeProgrammer`] switches, a scripted service
//! module, and a peer transport ([`FakeRemote::call_peer`]) that hands each message to the target
//! negotiator — or refuses, errs or hangs at a chosen phase. Everything runs on tokio's paused
//! clock: timeouts elapse at once and every phase time is exact.
//!
//! Restart tests run the first half of a relocation on one runtime and drop it while the source
//! (or the target) waits: every task dies mid-await, as in a crash. A second runtime builds new
//! negotiators over the same state directories, with the same switches and module (separate
//! processes that survive an SMO restart), and resumes.

mod common;

use common::{ms, wait_until, TempDir};
use model::common::{DateTime, Dnai, DnaiChangeType, RouteToLocation};
use model::nsmf_event_exposure::{EventNotification, NsmfEventExposureNotification};
use model::smo::{
    ExecuteReport, ExecuteRequest, PeerInfo, PeerRelocationAnswer, PeerRelocationMessage,
    PeerResult, PhaseTiming, RelocationPhase as Phase, RelocationRecord, RelocationState,
    RelocationType, ResourceRequirements, Service, ServiceArrival, ServiceModule,
    ServiceModuleRegistration,
};
use model::traffic_influence::{AfAckInfo, AfResultStatus};
use smo::config::{SmoConfig, SubscribeAt, Timeouts};
use smo::core::ack::AckRequest;
use smo::core::{cookie_for, ExecuteFailure, Local, TargetContext, TargetRelocation, TargetStep};
use smo::negotiator::{Clock, Negotiator, Remote};
use smo::routing::fake::FakeProgrammer;
use smo::routing::rules::{self, service_cookie, EdgePorts, ServiceAt};
use smo::routing::{FlowProgrammer, FlowRule, FlowSet, Mac};
use smo::store::{HostedService, Store};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

// ----- the scenario's constants -----

/// The UE of service 1.
const UE: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);
const SOURCE_ID: &str = "smo-x";
const SOURCE_DNAI: &str = "edge-x";
const TARGET_ID: &str = "smo-y";
const TARGET_DNAI: &str = "edge-y";
const TARGET_MODULE_ADDR: &str = "10.100.1.42:9100";
const TIMEOUTS: Timeouts = Timeouts {
    peer_ms: 1_000,
    module_ms: 500,
    execute_ms: 10_000,
};
/// Per flow set at the source and at the target.
const SOURCE_FLOW_DELAY: Duration = Duration::from_millis(1);
const TARGET_FLOW_DELAY: Duration = Duration::from_millis(2);
/// The live migration the module performs on a good day.
const MIGRATION: Duration = Duration::from_millis(300);
const CAPACITY: ResourceRequirements = ResourceRequirements {
    cpu_millis: 2000,
    memory_mb: 4096,
    disk_mb: 10240,
};
/// Long enough to be "forever" for a test that crashes first.
const FOREVER: Duration = Duration::from_secs(3600);

/// Service `n` (1-based): 20.0.0.(9+n), MAC 02:00:00:00:00:(9+n), port `svc{n}`, serving UE
/// 192.168.1.(1+n). Service 1 is 20.0.0.10 / 02:00:00:00:00:0a / `svc1` for 192.168.1.2.
fn service(n: u8) -> Service {
    Service {
        service_id: format!("svc-{n}"),
        ipv4_addr: Ipv4Addr::new(20, 0, 0, 9 + n),
        mac_addr: format!("02:00:00:00:00:{:02x}", 9 + n),
        ovs_port: format!("svc{n}"),
        relocation_type: RelocationType::Test,
        resource_requirements: ResourceRequirements {
            cpu_millis: 100,
            memory_mb: 256,
            disk_mb: 100,
        },
        ue_ipv4_addrs: vec![ue(n)],
    }
}

fn ue(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 1, 1 + n)
}

fn registration(kind: RelocationType, addr: &str) -> ServiceModuleRegistration {
    ServiceModuleRegistration {
        relocation_type: kind,
        resource_requirements: ResourceRequirements::default(),
        get_service_notif_uri: format!("http://{addr}/services"),
        served_service_notif_uri: format!("http://{addr}/served-service"),
        execute_notif_uri: format!("http://{addr}/execute"),
        notif_address: addr.parse().expect("ip:port"),
    }
}

fn peer(id: &str, dnai: &str, cost: u32) -> PeerInfo {
    PeerInfo {
        smo_id: id.into(),
        dnai: Dnai::new(dnai),
        api_root: format!("http://{id}.invalid:8090"),
        cost,
    }
}

fn config(id: &str, dnai: &str, peers: Vec<PeerInfo>, capacity: ResourceRequirements) -> SmoConfig {
    SmoConfig {
        smo_id: id.into(),
        dnai: Dnai::new(dnai),
        api_addr: SocketAddrV4::new(Ipv4Addr::new(10, 100, 0, 41), 8090),
        token: None,
        subscribe_at: smo::config::SubscribeAt::Smf,
        smf_url: None,
        nef: Default::default(),
        lr_url: None,
        notify_when: Default::default(),
        peers,
        ovs_mgmt: PathBuf::from("/nonexistent/br.mgmt"),
        ports: EdgePorts::testbed(),
        capacity,
        state_dir: PathBuf::from("/nonexistent"),
        timeouts: TIMEOUTS,
        reconcile: Default::default(),
        callback_networks: vec!["10.100.0.0/16".parse().expect("net")],
    }
}

fn event(ue: Ipv4Addr, from: &str, to: &str) -> EventNotification {
    let at = DateTime::from_unix(1_700_000_000, 0).expect("a valid time");
    EventNotification::up_path_change(
        DnaiChangeType::Late,
        ue,
        RouteToLocation::new(from, Ipv4Addr::new(10, 100, 0, 21), 2152),
        RouteToLocation::new(to, Ipv4Addr::new(10, 100, 0, 22), 2152),
        at,
    )
}

/// The SMF's late `UP_PATH_CH` notification: `ue` moved from `from` to `to`.
fn up_path_change(ue: Ipv4Addr, from: &str, to: &str) -> NsmfEventExposureNotification {
    NsmfEventExposureNotification::new("notif-1", vec![event(ue, from, to)])
}

// ----- fakes -----

/// What the module does when asked to Execute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Migration {
    /// Migrates in this time, then answers (the service left).
    Succeeds(Duration),
    /// Answers at once that it could not (the service stays).
    Refused,
    /// Never answers; `moved` says whether the service left all the same.
    Hangs { moved: bool },
}

#[derive(Debug)]
struct ModuleState {
    /// What GetServices lists (and ServedService searches).
    services: Vec<Service>,
    migration: Migration,
    /// GetServices never answers.
    services_hang: bool,
    executed: Vec<ExecuteRequest>,
    hangs: usize,
    /// The target module reports the service's arrival to this target SMO (with its switch)
    /// before a successful migration answers, as the CRIU module does on `Commit`.
    arrive_at: Option<(Smo, FakeProgrammer)>,
    /// Per arrival reported: its result and the target's flow sets applied when Execute
    /// answered.
    arrivals: Vec<(Result<(), String>, Vec<String>)>,
}

/// The source's service module (a separate process: it survives SMO restarts).
#[derive(Debug, Clone)]
struct FakeModule(Arc<Mutex<ModuleState>>);

impl FakeModule {
    fn new(services: Vec<Service>, migration: Migration) -> Self {
        Self(Arc::new(Mutex::new(ModuleState {
            services,
            migration,
            services_hang: false,
            executed: Vec::new(),
            hangs: 0,
            arrive_at: None,
            arrivals: Vec::new(),
        })))
    }

    fn lock(&self) -> MutexGuard<'_, ModuleState> {
        self.0.lock().expect("module lock")
    }

    fn hosts(&self, service_id: &str) -> bool {
        self.lock()
            .services
            .iter()
            .any(|s| s.service_id == service_id)
    }

    fn executed(&self) -> usize {
        self.lock().executed.len()
    }

    fn hangs(&self) -> usize {
        self.lock().hangs
    }

    fn set_services_hang(&self, hang: bool) {
        self.lock().services_hang = hang;
    }

    fn arrive_at(&self, target: Smo, flows: FakeProgrammer) {
        self.lock().arrive_at = Some((target, flows));
    }

    fn arrivals(&self) -> Vec<(Result<(), String>, Vec<String>)> {
        self.lock().arrivals.clone()
    }

    fn remove(&self, service_id: &str) {
        self.lock().services.retain(|s| s.service_id != service_id);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeerFault {
    /// The message reaches the target, its answer is rewritten to FAIL.
    Refuse,
    /// The message does not get through: an error at once.
    Unreachable,
    /// The message does not get through and no answer ever comes.
    Hang,
    /// The message reaches the target, which handles it, but its answer is lost (an error).
    LoseAnswer,
    /// The target crashes when the message arrives, before it handles it.
    KillBefore,
    /// The target handles the message and crashes before it answers.
    KillAfter,
    /// The target crashes while it installs the phase's flows (its switch is slow for once).
    KillDuring,
}

type Smo = Negotiator<FakeRemote, FakeProgrammer>;

/// A phase's fault, and for how many more messages (`None`: every one).
type Fault = (PeerFault, Option<usize>);

/// Peer SMOs (in-process negotiators) and the local service module, with faults per phase.
#[derive(Debug, Clone)]
struct FakeRemote {
    module: FakeModule,
    peers: Arc<Mutex<BTreeMap<String, Smo>>>,
    faults: Arc<Mutex<BTreeMap<Phase, Fault>>>,
    /// Every message sent: (peer, phase).
    sent: Arc<Mutex<Vec<(String, Phase)>>>,
    /// Peer calls that hung.
    hangs: Arc<AtomicUsize>,
    /// The target crashed (a `Kill…` fault) and is not up again yet: messages are refused.
    target_down: Arc<AtomicBool>,
    /// The target's switch, slowed down by [`PeerFault::KillDuring`].
    target_flows: Arc<Mutex<Option<FakeProgrammer>>>,
    /// Every acknowledgement sent, with what the switches had applied then.
    acks: Arc<Mutex<Vec<Acked>>>,
    /// This side's own switch, to note what it had applied at an acknowledgement.
    own_flows: Arc<Mutex<Option<FakeProgrammer>>>,
}

/// One acknowledgement as the NEF got it, and the flow sets applied by then.
#[derive(Debug, Clone)]
struct Acked {
    uri: String,
    body: AfAckInfo,
    own_labels: Vec<String>,
    target_labels: Vec<String>,
    service_still_at_source: bool,
}

impl FakeRemote {
    fn new(module: FakeModule) -> Self {
        Self {
            module,
            peers: Arc::default(),
            faults: Arc::default(),
            sent: Arc::default(),
            hangs: Arc::default(),
            target_down: Arc::default(),
            target_flows: Arc::default(),
            acks: Arc::default(),
            own_flows: Arc::default(),
        }
    }

    fn acks(&self) -> Vec<Acked> {
        self.acks.lock().expect("acks").clone()
    }

    fn target_is_down(&self) -> bool {
        self.target_down.load(Ordering::SeqCst)
    }

    /// A crash: the target is down until [`World::restart_target`].
    fn crash_target(&self, how: &str) -> Result<PeerRelocationAnswer, String> {
        self.target_down.store(true, Ordering::SeqCst);
        Err(format!("connection reset: the target crashed {how}"))
    }

    fn add_peer(&self, id: &str, smo: Smo) {
        self.peers.lock().expect("peers").insert(id.into(), smo);
    }

    /// Every message of `phase` meets `fault`.
    fn fault(&self, phase: Phase, fault: PeerFault) {
        self.faults
            .lock()
            .expect("faults")
            .insert(phase, (fault, None));
    }

    /// The next `times` messages of `phase` meet `fault`, later ones go through.
    fn fault_times(&self, phase: Phase, fault: PeerFault, times: usize) {
        self.faults
            .lock()
            .expect("faults")
            .insert(phase, (fault, Some(times)));
    }

    /// The fault the next message of `phase` meets, counting it.
    fn take_fault(&self, phase: Phase) -> Option<PeerFault> {
        let mut faults = self.faults.lock().expect("faults");
        let (fault, left) = faults.get_mut(&phase)?;
        let fault = *fault;
        match left {
            None => Some(fault),
            Some(0) => None,
            Some(n) => {
                *n -= 1;
                Some(fault)
            }
        }
    }

    fn sent(&self) -> Vec<(String, Phase)> {
        self.sent.lock().expect("sent").clone()
    }

    fn hangs(&self) -> usize {
        self.hangs.load(Ordering::SeqCst)
    }
}

impl Remote for FakeRemote {
    async fn call_peer(
        &self,
        peer: &PeerInfo,
        msg: &PeerRelocationMessage,
    ) -> Result<PeerRelocationAnswer, String> {
        let phase = msg.relocation_phase;
        self.sent
            .lock()
            .expect("sent")
            .push((peer.smo_id.clone(), phase));
        if self.target_is_down() {
            return Err("connection refused: the target is down".into());
        }
        let fault = self.take_fault(phase);
        match fault {
            Some(PeerFault::Hang) => {
                self.hangs.fetch_add(1, Ordering::SeqCst);
                return std::future::pending().await;
            }
            Some(PeerFault::Unreachable) => return Err("connection refused".into()),
            Some(PeerFault::KillBefore) => {
                return self.crash_target("before it handled the message")
            }
            _ => {}
        }
        let target = self.peers.lock().expect("peers").get(&peer.smo_id).cloned();
        let Some(target) = target else {
            return Err(format!("no route to {}", peer.api_root));
        };
        let mut answer = if fault == Some(PeerFault::KillDuring) {
            let flows = self.target_flows.lock().expect("flows").clone();
            if let Some(f) = &flows {
                f.set_delay(FOREVER);
            }
            let handled = tokio::select! {
                a = target.on_peer_message(msg) => Some(a),
                () = tokio::time::sleep(ms(10)) => None,
            };
            if let Some(f) = &flows {
                f.set_delay(TARGET_FLOW_DELAY);
            }
            match handled {
                Some(a) => a,
                // The handler is dropped mid-await, as in a crash.
                None => return self.crash_target("while it installed the flows"),
            }
        } else {
            target.on_peer_message(msg).await
        };
        if fault == Some(PeerFault::KillAfter) {
            return self.crash_target("before it answered");
        }
        match fault {
            Some(PeerFault::Refuse) => {
                answer.result = PeerResult::Fail;
                answer.cause = Some("refused by the test".into());
            }
            Some(PeerFault::LoseAnswer) => return Err("connection reset before the answer".into()),
            _ => {}
        }
        Ok(answer)
    }

    async fn served_service(
        &self,
        _module: &ServiceModule,
        ue: Ipv4Addr,
    ) -> Result<Option<Service>, String> {
        Ok(self
            .module
            .lock()
            .services
            .iter()
            .find(|s| s.ue_ipv4_addrs.contains(&ue))
            .cloned())
    }

    async fn ue_location(&self, _ue: Ipv4Addr) -> Result<Option<Dnai>, String> {
        // No LR in these tests: re-evaluations go by the latest notification.
        Ok(None)
    }

    async fn services(&self, _module: &ServiceModule) -> Result<Vec<Service>, String> {
        let hang = {
            let mut st = self.module.lock();
            if st.services_hang {
                st.hangs += 1;
            }
            st.services_hang
        };
        if hang {
            return std::future::pending().await;
        }
        Ok(self.module.lock().services.clone())
    }

    async fn execute(
        &self,
        _module: &ServiceModule,
        req: &ExecuteRequest,
    ) -> Result<ExecuteReport, ExecuteFailure> {
        let migration = {
            let mut st = self.module.lock();
            st.executed.push(req.clone());
            st.migration
        };
        let id = &req.service.service_id;
        match migration {
            Migration::Succeeds(took) => {
                tokio::time::sleep(took).await;
                let arrive_at = self.module.lock().arrive_at.clone();
                if let Some((target, flows)) = arrive_at {
                    let arrival = ServiceArrival {
                        service_id: id.clone(),
                    };
                    let r = target
                        .on_arrival(&req.relocation_id, &arrival)
                        .await
                        .map_err(|e| e.to_string());
                    let applied = labels(&flows);
                    self.module.lock().arrivals.push((r, applied));
                }
                self.module.remove(id);
                Ok(ExecuteReport {
                    took_us: u64::try_from(took.as_micros()).expect("fits"),
                    ..ExecuteReport::default()
                })
            }
            Migration::Refused => Err(ExecuteFailure::Refused("checkpoint failed".into())),
            Migration::Hangs { moved } => {
                if moved {
                    self.module.remove(id);
                }
                self.module.lock().hangs += 1;
                std::future::pending().await
            }
        }
    }

    async fn acknowledge(&self, uri: &str, body: &AfAckInfo) -> Result<u16, String> {
        let of = |f: &Arc<Mutex<Option<FakeProgrammer>>>| {
            f.lock()
                .expect("flows")
                .as_ref()
                .map(labels)
                .unwrap_or_default()
        };
        let acked = Acked {
            uri: uri.to_owned(),
            body: body.clone(),
            own_labels: of(&self.own_flows),
            target_labels: of(&self.target_flows),
            service_still_at_source: self.module.hosts("svc-1"),
        };
        self.acks.lock().expect("acks").push(acked);
        Ok(204)
    }
}

// ----- the world: a source and a target SMO -----

/// What a world starts from; [`Setup::default`] is the happy path with one service.
#[derive(Debug, Clone)]
struct Setup {
    services: Vec<Service>,
    migration: Migration,
    /// The module type registered at the target (`None`: no module).
    target_module: Option<RelocationType>,
    target_capacity: ResourceRequirements,
    source_flow_delay: Duration,
    target_flow_delay: Duration,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            services: vec![service(1)],
            migration: Migration::Succeeds(MIGRATION),
            target_module: Some(RelocationType::Test),
            target_capacity: CAPACITY,
            source_flow_delay: SOURCE_FLOW_DELAY,
            target_flow_delay: TARGET_FLOW_DELAY,
        }
    }
}

#[derive(Debug)]
struct Site {
    smo: Smo,
    flows: FakeProgrammer,
    remote: FakeRemote,
    clock: Clock,
}

/// What outlives an SMO restart: the switches, the module and the state directories.
#[derive(Debug, Clone)]
struct Survivors {
    module: FakeModule,
    source_flows: FakeProgrammer,
    target_flows: FakeProgrammer,
    source_dir: PathBuf,
    target_dir: PathBuf,
    target_capacity: ResourceRequirements,
}

#[derive(Debug)]
struct World {
    source: Site,
    target: Site,
    module: FakeModule,
    survivors: Survivors,
}

fn source_smo(s: &Survivors, remote: FakeRemote, clock: Clock) -> Smo {
    let store = Store::open(&s.source_dir).expect("source store");
    Negotiator::new(
        &config(
            SOURCE_ID,
            SOURCE_DNAI,
            vec![peer(TARGET_ID, TARGET_DNAI, 0)],
            CAPACITY,
        ),
        remote,
        s.source_flows.clone(),
        store,
        clock,
    )
    .expect("source negotiator")
}

fn target_smo(s: &Survivors, clock: Clock) -> (Smo, FakeRemote) {
    let store = Store::open(&s.target_dir).expect("target store");
    let remote = FakeRemote::new(FakeModule::new(Vec::new(), Migration::Refused));
    let smo = Negotiator::new(
        &config(TARGET_ID, TARGET_DNAI, Vec::new(), s.target_capacity),
        remote.clone(),
        s.target_flows.clone(),
        store,
        clock,
    )
    .expect("target negotiator");
    (smo, remote)
}

impl World {
    /// First start: the module hosts `setup.services`, registered at the source, which has them
    /// in its service database and their direct paths on its switch.
    async fn new(dir: &TempDir, setup: Setup) -> Self {
        let survivors = Survivors {
            module: FakeModule::new(setup.services.clone(), setup.migration),
            source_flows: FakeProgrammer::new(),
            target_flows: FakeProgrammer::new(),
            source_dir: dir.join("source"),
            target_dir: dir.join("target"),
            target_capacity: setup.target_capacity,
        };
        let seed = Store::open(&survivors.source_dir).expect("seed store");
        for s in &setup.services {
            let at = service_at(s);
            let mut direct = rules::new_path_target(0, &EdgePorts::testbed(), &at);
            direct.delete.clear();
            direct.label = "service-up".into();
            survivors
                .source_flows
                .apply(&direct)
                .await
                .expect("seed the direct path");
            seed.put_service(&HostedService {
                module_id: "module-1".into(),
                service: s.clone(),
            })
            .expect("seed the service database");
        }
        survivors.source_flows.set_delay(setup.source_flow_delay);
        survivors.target_flows.set_delay(setup.target_flow_delay);
        let w = Self::start(survivors, 0, 0);
        let m = w
            .source
            .smo
            .register(registration(RelocationType::Test, "10.100.1.41:9100"))
            .expect("register at the source");
        assert_eq!(m.module_id, "module-1");
        if let Some(kind) = setup.target_module {
            w.target
                .smo
                .register(registration(kind, TARGET_MODULE_ADDR))
                .expect("register at the target");
        }
        w
    }

    /// Both SMOs (re)started over the survivors, their clocks going on from the given µs.
    fn start(survivors: Survivors, source_us: u64, target_us: u64) -> Self {
        let target_clock = Clock::tokio(target_us);
        let (target, target_remote) = target_smo(&survivors, target_clock.clone());
        let source_clock = Clock::tokio(source_us);
        let remote = FakeRemote::new(survivors.module.clone());
        remote.add_peer(TARGET_ID, target.clone());
        *remote.target_flows.lock().expect("flows") = Some(survivors.target_flows.clone());
        *remote.own_flows.lock().expect("flows") = Some(survivors.source_flows.clone());
        let source = source_smo(&survivors, remote.clone(), source_clock.clone());
        Self {
            source: Site {
                smo: source,
                flows: survivors.source_flows.clone(),
                remote,
                clock: source_clock,
            },
            target: Site {
                smo: target,
                flows: survivors.target_flows.clone(),
                remote: target_remote,
                clock: target_clock,
            },
            module: survivors.module.clone(),
            survivors,
        }
    }

    /// The target SMO starts again over its state directory, its switch and its clock (after a
    /// `Kill…` fault): a new negotiator the source's messages reach from now on.
    fn restart_target(&mut self) {
        let clock = Clock::tokio(self.target.clock.now_us());
        let (smo, remote) = target_smo(&self.survivors, clock.clone());
        self.source.remote.add_peer(TARGET_ID, smo.clone());
        self.source
            .remote
            .target_down
            .store(false, Ordering::SeqCst);
        self.target = Site {
            smo,
            flows: self.survivors.target_flows.clone(),
            remote,
            clock,
        };
    }

    /// Notifies the source that UE `n` moved to the target DNAI; waits for the relocation to
    /// end and returns the source's record.
    async fn relocate(&self, n: u8) -> RelocationRecord {
        let ids = self
            .source
            .smo
            .on_notification(&up_path_change(ue(n), SOURCE_DNAI, TARGET_DNAI));
        assert_eq!(ids.len(), 1, "one relocation per UP_PATH_CH event");
        self.source.smo.idle().await;
        self.source
            .smo
            .relocation(&ids[0])
            .expect("the relocation is recorded once idle() returns")
    }

    fn target_record(&self, id: &str) -> RelocationRecord {
        self.target
            .smo
            .relocation(id)
            .expect("the target recorded the relocation")
    }
}

// ----- assertions -----

fn service_at(s: &Service) -> ServiceAt {
    ServiceAt {
        ip: s.ipv4_addr,
        mac: s.mac_addr.parse::<Mac>().expect("a MAC"),
        port: s.ovs_port.clone(),
    }
}

fn ofctl(rules: &[FlowRule]) -> Vec<String> {
    let mut v: Vec<String> = rules.iter().map(FlowRule::to_ofctl).collect();
    v.sort();
    v
}

/// Labels of the non-empty sets applied, in order.
fn labels(f: &FakeProgrammer) -> Vec<String> {
    f.applied()
        .into_iter()
        .filter(|s| !s.is_empty())
        .map(|s| s.label)
        .collect()
}

fn phases(timings: &[PhaseTiming]) -> Vec<Phase> {
    timings.iter().map(|t| t.phase).collect()
}

fn timing(phase: Phase, start_us: u64, took_us: u64, flow: Option<u64>, mods: u32) -> PhaseTiming {
    PhaseTiming {
        phase,
        start_us,
        took_us,
        flow_install_us: flow,
        flow_mods: mods,
    }
}

fn source_trombone(id: &str, n: u8) -> Vec<String> {
    ofctl(
        &rules::trombone_source(
            cookie_for(id),
            &EdgePorts::testbed(),
            &service_at(&service(n)),
            ue(n),
        )
        .add,
    )
}

fn target_trombone(id: &str, n: u8) -> Vec<String> {
    let at = service_at(&service(n));
    ofctl(&rules::trombone_target(cookie_for(id), &EdgePorts::testbed(), at.ip, at.mac, ue(n)).add)
}

fn direct_path(n: u8) -> Vec<String> {
    ofctl(&rules::new_path_target(0, &EdgePorts::testbed(), &service_at(&service(n))).add)
}

fn hosted(smo: &Smo) -> Vec<String> {
    smo.hosted_services()
        .into_iter()
        .map(|h| h.service.service_id)
        .collect()
}

/// A relocation of service 1 that ended at the source in FAILURE: the service still runs and is
/// reachable at the source; when the target took part, it trombones the UE's traffic there.
fn assert_failed(w: &World, rec: &RelocationRecord, cause: &str, target_took_part: bool) {
    let id = &rec.relocation_id;
    assert_eq!(rec.state, RelocationState::Failed, "{rec:#?}");
    assert_eq!(rec.phase, Phase::Failure);
    assert_eq!(rec.phases.last().map(|t| t.phase), Some(Phase::Failure));
    let got = rec.cause.clone().unwrap_or_default();
    assert!(got.contains(cause), "cause `{got}` should name `{cause}`");
    assert_eq!(rec.total_us, None);

    assert_eq!(
        labels(&w.source.flows).last().map(String::as_str),
        Some("failure-source")
    );
    assert_eq!(
        ofctl(&w.source.flows.installed_with_cookie(cookie_for(id))),
        source_trombone(id, 1)
    );
    assert_eq!(
        ofctl(
            &w.source
                .flows
                .installed_with_cookie(service_cookie(service(1).ipv4_addr))
        ),
        direct_path(1),
        "the service's own path at the source is untouched"
    );
    assert!(
        w.module.hosts("svc-1"),
        "the service still runs at the source"
    );
    assert_eq!(hosted(&w.source.smo), ["svc-1"]);
    assert!(hosted(&w.target.smo).is_empty());

    if target_took_part {
        let t = w.target_record(id);
        assert_eq!(t.state, RelocationState::Failed, "{t:#?}");
        assert_eq!(t.phases.last().map(|p| p.phase), Some(Phase::Failure));
        assert_eq!(
            labels(&w.target.flows).last().map(String::as_str),
            Some("failure-target")
        );
        assert_eq!(ofctl(&w.target.flows.installed()), target_trombone(id, 1));
        assert_eq!(
            w.source.remote.sent().last(),
            Some(&(TARGET_ID.to_owned(), Phase::Failure))
        );
    } else {
        assert!(w.target.flows.installed().is_empty());
        assert!(w.target.smo.relocation(id).is_none());
    }
}

/// A relocation of service `n` that reached COMPLETE: the service runs at the target, reached
/// over its direct path there; nothing of the relocation is left at the source.
fn assert_completed(w: &World, rec: &RelocationRecord, n: u8) {
    let id = &rec.relocation_id;
    let svc = service(n);
    assert_eq!(rec.state, RelocationState::Completed, "{rec:#?}");
    assert_eq!(rec.phase, Phase::Complete);
    assert_eq!(phases(&rec.phases).last(), Some(&Phase::Complete));
    assert!(rec.total_us.is_some());
    let t = w.target_record(id);
    assert_eq!(t.state, RelocationState::Completed, "{t:#?}");
    assert_eq!(t.phases.last().map(|p| p.phase), Some(Phase::Complete));

    assert!(w
        .target
        .flows
        .installed_with_cookie(cookie_for(id))
        .is_empty());
    assert_eq!(
        ofctl(
            &w.target
                .flows
                .installed_with_cookie(service_cookie(svc.ipv4_addr))
        ),
        direct_path(n)
    );
    assert!(w
        .source
        .flows
        .installed_with_cookie(cookie_for(id))
        .is_empty());
    assert!(w
        .source
        .flows
        .installed_with_cookie(service_cookie(svc.ipv4_addr))
        .is_empty());
    assert!(hosted(&w.target.smo).contains(&svc.service_id));
    assert!(!hosted(&w.source.smo).contains(&svc.service_id));
}

// ----- the happy path -----

#[tokio::test(start_paused = true)]
async fn happy_path_runs_every_phase_in_order_at_both_ends() {
    let dir = TempDir::new();
    let w = World::new(&dir, Setup::default()).await;
    let rec = w.relocate(1).await;
    let id = rec.relocation_id.clone();

    assert_completed(&w, &rec, 1);
    assert_eq!(rec.cause, None);
    assert_eq!(
        rec.peer.as_ref().map(|p| p.smo_id.as_str()),
        Some(TARGET_ID)
    );
    assert_eq!(
        rec.target_module_address.map(|a| a.to_string()).as_deref(),
        Some(TARGET_MODULE_ADDR)
    );
    assert_eq!(rec.module_id.as_deref(), Some("module-1"));
    assert_eq!(rec.ue_ipv4_addr, UE);
    assert_eq!(rec.service, service(1));
    assert_eq!(phases(&rec.phases), Phase::SUCCESS_PATH);
    // Source: trombone 1 ms, target trombone 2 ms, migration 300 ms, target new path 2 ms,
    // cleanup 1 ms; the target's COMPLETE installs nothing (the new path is in since EXECUTE).
    assert_eq!(
        rec.phases,
        [
            timing(Phase::Initiate, 0, 0, None, 0),
            timing(Phase::Validate, 0, 0, None, 0),
            timing(Phase::Prepare, 0, 3_000, Some(1_000), 2),
            timing(Phase::Execute, 3_000, 302_000, None, 0),
            timing(Phase::Complete, 305_000, 1_000, Some(1_000), 2),
        ]
    );
    assert!(
        rec.phases
            .iter()
            .find(|t| t.phase == Phase::Execute)
            .map(|t| t.took_us)
            >= Some(300_000)
    );
    assert_eq!(rec.total_us, Some(306_000), "notification → COMPLETE");
    assert_eq!(rec.execute.as_ref().map(|e| e.took_us), Some(300_000));
    assert_eq!(
        rec.peer_phases,
        [
            timing(Phase::Initiate, 0, 0, None, 0),
            timing(Phase::Validate, 0, 0, None, 0),
            timing(Phase::Prepare, 0, 2_000, Some(2_000), 0),
            timing(Phase::Execute, 0, 2_000, Some(2_000), 0),
            timing(Phase::Complete, 0, 0, Some(0), 0),
        ]
    );

    let t = w.target_record(&id);
    assert_eq!(t.state, RelocationState::Completed);
    assert_eq!(t.module_id.as_deref(), Some("module-1"));
    assert_eq!(
        t.target_module_address.map(|a| a.to_string()).as_deref(),
        Some(TARGET_MODULE_ADDR)
    );
    assert_eq!(
        t.phases,
        [
            timing(Phase::Initiate, 0, 0, None, 0),
            timing(Phase::Validate, 0, 0, None, 0),
            timing(Phase::Prepare, 1_000, 2_000, Some(2_000), 3),
            timing(Phase::Execute, 303_000, 2_000, Some(2_000), 3),
            timing(Phase::Complete, 306_000, 0, Some(0), 0),
        ]
    );
    assert_eq!(t.total_us, Some(306_000));

    assert_eq!(
        labels(&w.source.flows),
        ["service-up", "trombone-source", "cleanup-source"]
    );
    assert_eq!(
        labels(&w.target.flows),
        ["trombone-target", "new-path-target"]
    );
    assert_eq!(
        ofctl(&w.target.flows.installed()),
        direct_path(1),
        "only the new path"
    );
    assert!(w.source.flows.installed().is_empty());
    let sent: Vec<Phase> = w.source.remote.sent().into_iter().map(|(_, p)| p).collect();
    assert_eq!(sent, Phase::SUCCESS_PATH);
    assert_eq!(w.module.executed(), 1);
    assert!(!w.module.hosts("svc-1"));
    let arrived = w.target.smo.hosted_services();
    assert_eq!(arrived.len(), 1);
    assert_eq!(arrived[0].service, service(1));
    assert_eq!(arrived[0].module_id, "module-1");
    assert_eq!(w.source.smo.relocations().len(), 1);
    assert_eq!(w.target.smo.relocations().len(), 1);
}

// ----- the target module's arrival -----

#[tokio::test(start_paused = true)]
async fn the_arrival_installs_the_new_path_before_execute_returns() {
    let dir = TempDir::new();
    let w = World::new(&dir, Setup::default()).await;
    w.module
        .arrive_at(w.target.smo.clone(), w.target.flows.clone());
    let rec = w.relocate(1).await;
    let id = rec.relocation_id.clone();
    assert_completed(&w, &rec, 1);
    assert_eq!(rec.cause, None);

    // The arrival came while the source still waited for Execute, and the new path was in
    // before Execute answered.
    assert_eq!(
        w.module.arrivals(),
        [(
            Ok(()),
            vec!["trombone-target".to_owned(), "new-path-target".to_owned()]
        )]
    );
    // Once in all: the source's EXECUTE only confirmed it.
    assert_eq!(
        labels(&w.target.flows),
        ["trombone-target", "new-path-target"]
    );
    assert_eq!(ofctl(&w.target.flows.installed()), direct_path(1));
    let sent: Vec<Phase> = w.source.remote.sent().into_iter().map(|(_, p)| p).collect();
    assert_eq!(sent, Phase::SUCCESS_PATH);

    // The target's EXECUTE is timed from the arrival (end of the 300 ms migration, 2 ms of
    // flows), once; COMPLETE follows when the source's EXECUTE and COMPLETE come.
    let t = w.target_record(&id);
    assert_eq!(
        t.phases,
        [
            timing(Phase::Initiate, 0, 0, None, 0),
            timing(Phase::Validate, 0, 0, None, 0),
            timing(Phase::Prepare, 1_000, 2_000, Some(2_000), 3),
            timing(Phase::Execute, 303_000, 2_000, Some(2_000), 3),
            timing(Phase::Complete, 306_000, 0, Some(0), 0),
        ]
    );
    assert_eq!(
        rec.peer_phases
            .iter()
            .find(|p| p.phase == Phase::Execute)
            .cloned(),
        Some(timing(Phase::Execute, 0, 2_000, Some(2_000), 0)),
        "the peer's EXECUTE answer reports the arrival's timing"
    );
    assert_eq!(
        rec.phases
            .iter()
            .find(|p| p.phase == Phase::Execute)
            .cloned(),
        Some(timing(Phase::Execute, 3_000, 302_000, None, 0))
    );
    assert_eq!(rec.total_us, Some(306_000));
    let arrived = w.target.smo.hosted_services();
    assert_eq!(arrived.len(), 1);
    assert_eq!(arrived[0].service, service(1));
}

// ----- failure at every point -----

#[tokio::test(start_paused = true)]
async fn peer_without_a_module_of_that_type_refuses_initiate() {
    let dir = TempDir::new();
    let w = World::new(
        &dir,
        Setup {
            target_module: Some(RelocationType::Lxc),
            ..Setup::default()
        },
    )
    .await;
    let rec = w.relocate(1).await;
    assert_failed(
        &w,
        &rec,
        "peer refused INITIATE: no service module of type TEST",
        true,
    );
    assert_eq!(phases(&rec.phases), [Phase::Initiate, Phase::Failure]);
    assert_eq!(w.module.executed(), 0);
    let t = w.target_record(&rec.relocation_id);
    assert_eq!(phases(&t.phases), [Phase::Initiate, Phase::Failure]);
}

#[tokio::test(start_paused = true)]
async fn target_without_room_for_the_service_fails_validate() {
    let dir = TempDir::new();
    let w = World::new(
        &dir,
        Setup {
            target_capacity: ResourceRequirements {
                memory_mb: 128,
                ..CAPACITY
            },
            ..Setup::default()
        },
    )
    .await;
    let rec = w.relocate(1).await;
    assert_failed(
        &w,
        &rec,
        "peer refused VALIDATE: not enough resources",
        true,
    );
    assert_eq!(
        phases(&rec.phases),
        [Phase::Initiate, Phase::Validate, Phase::Failure]
    );
    assert_eq!(w.module.executed(), 0);
    assert_eq!(labels(&w.source.flows), ["service-up", "failure-source"]);
}

#[tokio::test(start_paused = true)]
async fn source_tromboning_flows_failing_in_prepare_fail_the_relocation() {
    let dir = TempDir::new();
    let w = World::new(&dir, Setup::default()).await;
    w.source.flows.fail_next("trombone-source");
    let rec = w.relocate(1).await;
    assert_failed(&w, &rec, "tromboning flows: injected failure", true);
    assert_eq!(
        phases(&rec.phases),
        [
            Phase::Initiate,
            Phase::Validate,
            Phase::Prepare,
            Phase::Failure
        ]
    );
    assert_eq!(w.module.executed(), 0);
    let sent: Vec<Phase> = w.source.remote.sent().into_iter().map(|(_, p)| p).collect();
    assert_eq!(
        sent,
        [Phase::Initiate, Phase::Validate, Phase::Failure],
        "PREPARE never sent"
    );
    assert_eq!(labels(&w.target.flows), ["failure-target"]);
}

#[tokio::test(start_paused = true)]
async fn target_tromboning_flows_failing_in_prepare_fail_the_relocation() {
    let dir = TempDir::new();
    let w = World::new(&dir, Setup::default()).await;
    w.target.flows.fail_next("trombone-target");
    let rec = w.relocate(1).await;
    assert_failed(
        &w,
        &rec,
        "peer refused PREPARE: PREPARE flows: injected failure",
        true,
    );
    assert_eq!(w.module.executed(), 0);
    assert_eq!(
        labels(&w.source.flows),
        ["service-up", "trombone-source", "failure-source"]
    );
    assert_eq!(labels(&w.target.flows), ["failure-target"]);
    assert_eq!(
        w.target.flows.attempts(),
        ["trombone-target", "failure-target"]
    );
}

/// Every way the peer can let the source down before EXECUTE, at every phase before it.
#[tokio::test(start_paused = true)]
async fn every_peer_fault_before_execute_fails_cleanly() {
    for phase in [Phase::Initiate, Phase::Validate, Phase::Prepare] {
        for fault in [PeerFault::Refuse, PeerFault::Unreachable, PeerFault::Hang] {
            let dir = TempDir::new();
            let w = World::new(&dir, Setup::default()).await;
            w.source.remote.fault(phase, fault);
            let rec = w.relocate(1).await;
            let cause = match fault {
                PeerFault::Refuse => format!("peer refused {phase}: refused by the test"),
                PeerFault::Unreachable => format!("peer {phase}: connection refused"),
                PeerFault::Hang => format!("peer {phase}: no answer within 1000 ms"),
                other => unreachable!("{other:?} is not among the cases"),
            };
            assert_failed(&w, &rec, &cause, true);
            assert_eq!(w.module.executed(), 0, "{phase} {fault:?}");
            let ran: Vec<Phase> = phases(&rec.phases);
            let upto = Phase::SUCCESS_PATH
                .iter()
                .position(|p| *p == phase)
                .expect("before EXECUTE");
            let mut want = Phase::SUCCESS_PATH[..=upto].to_vec();
            want.push(Phase::Failure);
            assert_eq!(ran, want, "{phase} {fault:?}");
            let took = rec
                .phases
                .iter()
                .find(|t| t.phase == phase)
                .map(|t| t.took_us)
                .expect("the phase was timed");
            match (fault, phase) {
                (PeerFault::Hang, Phase::Prepare) => assert_eq!(took, 1_000 + 1_000_000),
                (PeerFault::Hang, _) => assert_eq!(took, 1_000_000, "exactly the peer timeout"),
                (PeerFault::Refuse, Phase::Prepare) => assert_eq!(took, 1_000 + 2_000),
                (_, Phase::Prepare) => assert_eq!(took, 1_000),
                _ => assert_eq!(took, 0),
            }
            // The FAILURE phase: the source's failure set (1 ms) and the target's (2 ms).
            assert_eq!(rec.phases.last().map(|t| t.took_us), Some(3_000));
        }
    }
}

#[tokio::test(start_paused = true)]
async fn module_refusing_execute_fails_the_relocation() {
    let dir = TempDir::new();
    let w = World::new(
        &dir,
        Setup {
            migration: Migration::Refused,
            ..Setup::default()
        },
    )
    .await;
    let rec = w.relocate(1).await;
    assert_failed(
        &w,
        &rec,
        "service module could not migrate: checkpoint failed",
        true,
    );
    assert_eq!(w.module.executed(), 1);
    assert_eq!(
        phases(&rec.phases),
        [
            Phase::Initiate,
            Phase::Validate,
            Phase::Prepare,
            Phase::Execute,
            Phase::Failure
        ]
    );
    assert_eq!(rec.execute, None);
    assert_eq!(
        labels(&w.target.flows),
        ["trombone-target", "failure-target"]
    );
}

#[tokio::test(start_paused = true)]
async fn execute_timeout_with_the_service_still_local_fails() {
    let dir = TempDir::new();
    let w = World::new(
        &dir,
        Setup {
            migration: Migration::Hangs { moved: false },
            ..Setup::default()
        },
    )
    .await;
    let rec = w.relocate(1).await;
    assert_failed(&w, &rec, "no answer from the service module", true);
    assert_failed(&w, &rec, "the service is still at the source", true);
    let exec = rec
        .phases
        .iter()
        .find(|t| t.phase == Phase::Execute)
        .expect("EXECUTE");
    assert_eq!(exec.took_us, 10_000_000, "exactly the execute timeout");
}

#[tokio::test(start_paused = true)]
async fn execute_timeout_with_the_service_gone_completes() {
    let dir = TempDir::new();
    let w = World::new(
        &dir,
        Setup {
            migration: Migration::Hangs { moved: true },
            ..Setup::default()
        },
    )
    .await;
    let rec = w.relocate(1).await;
    assert_completed(&w, &rec, 1);
    assert_eq!(phases(&rec.phases), Phase::SUCCESS_PATH);
    assert!(rec
        .cause
        .as_deref()
        .is_some_and(|c| c.contains("no answer from the service module")));
    assert_eq!(rec.execute, None);
    let exec = rec
        .phases
        .iter()
        .find(|t| t.phase == Phase::Execute)
        .expect("EXECUTE");
    assert_eq!(
        exec.took_us,
        10_000_000 + 2_000,
        "timeout, then the target's new path"
    );
    assert_eq!(w.module.executed(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_peer_unreachable_at_execute_is_re_driven_until_it_answers() {
    let dir = TempDir::new();
    let w = World::new(&dir, Setup::default()).await;
    w.source
        .remote
        .fault_times(Phase::Execute, PeerFault::Unreachable, 3);
    let rec = w.relocate(1).await;
    assert_completed(&w, &rec, 1);
    assert_eq!(rec.cause, None);
    assert_eq!(rec.control.redrives, 3);
    // EXECUTE: the 300 ms migration, then the pauses of three re-sends (100, 200, 400 ms), then
    // the target's new path (2 ms).
    let exec = rec
        .phases
        .iter()
        .find(|t| t.phase == Phase::Execute)
        .expect("EXECUTE");
    assert_eq!(exec.took_us, 300_000 + 700_000 + 2_000);
    let sent: Vec<Phase> = w.source.remote.sent().into_iter().map(|(_, p)| p).collect();
    assert_eq!(
        sent,
        [
            Phase::Initiate,
            Phase::Validate,
            Phase::Prepare,
            Phase::Execute,
            Phase::Execute,
            Phase::Execute,
            Phase::Execute,
            Phase::Complete
        ]
    );
    assert_eq!(
        phases(&w.target_record(&rec.relocation_id).phases),
        Phase::SUCCESS_PATH
    );
}

#[tokio::test(start_paused = true)]
async fn lost_answers_are_re_driven_and_answered_again_without_a_second_effect() {
    let dir = TempDir::new();
    let w = World::new(&dir, Setup::default()).await;
    // EXECUTE's answer is lost once, COMPLETE's once, and then COMPLETE hangs once.
    w.source
        .remote
        .fault_times(Phase::Execute, PeerFault::LoseAnswer, 1);
    w.source
        .remote
        .fault_times(Phase::Complete, PeerFault::LoseAnswer, 1);
    let rec = w.relocate(1).await;
    assert_completed(&w, &rec, 1);
    assert_eq!(rec.cause, None);
    assert_eq!(rec.control.redrives, 2);
    // The target applied its new path once and recorded each phase once.
    assert_eq!(
        labels(&w.target.flows),
        ["trombone-target", "new-path-target"]
    );
    let t = w.target_record(&rec.relocation_id);
    assert_eq!(phases(&t.phases), Phase::SUCCESS_PATH);
    assert_eq!(hosted(&w.target.smo), ["svc-1"]);

    let dir = TempDir::new();
    let w = World::new(&dir, Setup::default()).await;
    w.source
        .remote
        .fault_times(Phase::Complete, PeerFault::Hang, 1);
    let rec = w.relocate(1).await;
    assert_completed(&w, &rec, 1);
    assert_eq!(rec.control.redrives, 1);
    let complete = rec.phases.last().expect("COMPLETE");
    assert_eq!(
        (complete.phase, complete.took_us),
        (Phase::Complete, 1_000 + 1_000_000 + 100_000),
        "cleanup, the peer timeout, the first pause; the answer itself takes no time"
    );
}

/// The target SMO crashes at every phase — before it handles the message, after it handled it
/// (its answer lost), or while it installs the phase's flows — and comes back 3 s later over its
/// store: the source re-drives what must be answered, and both records end final and agree.
#[tokio::test(start_paused = true)]
async fn a_target_that_restarts_at_every_phase_ends_final_and_in_agreement() {
    let cases = [
        (Phase::Initiate, PeerFault::KillBefore),
        (Phase::Initiate, PeerFault::KillAfter),
        (Phase::Validate, PeerFault::KillBefore),
        (Phase::Validate, PeerFault::KillAfter),
        (Phase::Prepare, PeerFault::KillBefore),
        (Phase::Prepare, PeerFault::KillAfter),
        (Phase::Prepare, PeerFault::KillDuring),
        (Phase::Execute, PeerFault::KillBefore),
        (Phase::Execute, PeerFault::KillAfter),
        (Phase::Execute, PeerFault::KillDuring),
        (Phase::Complete, PeerFault::KillBefore),
        (Phase::Complete, PeerFault::KillAfter),
    ];
    for (phase, kill) in cases {
        let dir = TempDir::new();
        let mut w = World::new(&dir, Setup::default()).await;
        w.source.remote.fault_times(phase, kill, 1);
        let ids = w
            .source
            .smo
            .on_notification(&up_path_change(UE, SOURCE_DNAI, TARGET_DNAI));
        wait_until("the target crashes", || w.source.remote.target_is_down()).await;
        tokio::time::sleep(ms(3_000)).await;
        assert_eq!(
            w.source.smo.relocation(&ids[0]).map(|r| r.state),
            Some(RelocationState::Running),
            "{phase} {kill:?}: the source waits for the target"
        );
        w.restart_target();
        w.source.smo.idle().await;
        let rec = w.source.smo.relocation(&ids[0]).expect("record");
        if phase < Phase::Execute {
            assert_failed(&w, &rec, "the target crashed", true);
            assert_eq!(w.module.executed(), 0, "{phase} {kill:?}");
        } else {
            assert_completed(&w, &rec, 1);
            assert_eq!(w.module.executed(), 1, "{phase} {kill:?}");
            assert_eq!(ofctl(&w.target.flows.installed()), direct_path(1));
        }
        assert!(rec.control.redrives >= 1, "{phase} {kill:?}: {rec:#?}");
        eprintln!(
            "target killed {kill:?} at {phase}: {:?} after {} re-sends",
            rec.state, rec.control.redrives
        );
    }
}

#[tokio::test(start_paused = true)]
async fn the_source_is_not_completed_until_the_target_confirms_its_new_path() {
    let dir = TempDir::new();
    let w = World::new(&dir, Setup::default()).await;
    // The target's switch refuses the new path at EXECUTE and at the first two COMPLETEs.
    for _ in 0..3 {
        w.target.flows.fail_next("new-path-target");
    }
    let ids = w
        .source
        .smo
        .on_notification(&up_path_change(UE, SOURCE_DNAI, TARGET_DNAI));
    wait_until("the service moved", || {
        w.module.executed() == 1 && !w.module.hosts("svc-1")
    })
    .await;
    wait_until("COMPLETE refused twice", || {
        w.target.flows.attempts().len() == 4
    })
    .await;
    let running = w.source.smo.relocation(&ids[0]).expect("record");
    assert_eq!(
        (running.state, running.phase),
        (RelocationState::Running, Phase::Complete),
        "no COMPLETED without the target's new path: {running:#?}"
    );
    w.source.smo.idle().await;
    let rec = w.source.smo.relocation(&ids[0]).expect("record");
    assert_completed(&w, &rec, 1);
    assert_eq!(rec.control.redrives, 2);
    assert!(
        rec.cause
            .as_deref()
            .is_some_and(|c| c.contains("peer refused EXECUTE: EXECUTE flows: injected failure")),
        "{rec:#?}"
    );
    assert_eq!(
        w.target.flows.attempts(),
        [
            "trombone-target",
            "new-path-target",
            "new-path-target",
            "new-path-target",
            "new-path-target"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn target_new_path_failing_at_execute_is_retried_at_complete() {
    let dir = TempDir::new();
    let w = World::new(&dir, Setup::default()).await;
    w.target.flows.fail_next("new-path-target");
    let rec = w.relocate(1).await;
    assert_completed(&w, &rec, 1);
    assert!(rec
        .cause
        .as_deref()
        .is_some_and(|c| c.contains("peer refused EXECUTE: EXECUTE flows: injected failure")));
    assert_eq!(
        w.target.flows.attempts(),
        ["trombone-target", "new-path-target", "new-path-target"]
    );
}

#[tokio::test(start_paused = true)]
async fn source_cleanup_failing_is_noted_and_the_relocation_completes() {
    let dir = TempDir::new();
    let w = World::new(&dir, Setup::default()).await;
    w.source.flows.fail_next("cleanup-source");
    let rec = w.relocate(1).await;
    assert_eq!(rec.state, RelocationState::Completed);
    assert!(rec
        .cause
        .as_deref()
        .is_some_and(|c| c.starts_with("COMPLETE flows: injected failure")));
    assert_eq!(
        w.target_record(&rec.relocation_id).state,
        RelocationState::Completed
    );
    assert!(hosted(&w.target.smo).contains(&"svc-1".to_owned()));
    assert!(!hosted(&w.source.smo).contains(&"svc-1".to_owned()));
}

#[tokio::test(start_paused = true)]
async fn target_flows_outlasting_the_peer_timeout_still_get_the_failure_trombone() {
    let dir = TempDir::new();
    let w = World::new(&dir, Setup::default()).await;
    // The target's switch takes an hour for its PREPARE set: the source gives up after the peer
    // timeout, the target's half-done PREPARE is abandoned, then FAILURE must still be honoured.
    w.target.flows.set_delay(FOREVER);
    let ids = w
        .source
        .smo
        .on_notification(&up_path_change(UE, SOURCE_DNAI, TARGET_DNAI));
    wait_until("the target installs its trombone", || {
        w.target
            .flows
            .attempts()
            .contains(&"trombone-target".to_owned())
    })
    .await;
    w.target.flows.set_delay(TARGET_FLOW_DELAY);
    w.source.smo.idle().await;
    let rec = w.source.smo.relocation(&ids[0]).expect("record");
    assert_failed(&w, &rec, "peer PREPARE: no answer within 1000 ms", true);
    assert_eq!(w.module.executed(), 0);
}

#[tokio::test(start_paused = true)]
async fn no_peer_serving_the_target_dnai_fails_without_asking_anyone() {
    let dir = TempDir::new();
    let w = World::new(&dir, Setup::default()).await;
    let ids = w
        .source
        .smo
        .on_notification(&up_path_change(UE, SOURCE_DNAI, "edge-z"));
    assert_eq!(ids.len(), 1);
    w.source.smo.idle().await;
    let rec = w.source.smo.relocation(&ids[0]).expect("record");
    assert_failed(&w, &rec, "no peer SMO serves the target DNAI", false);
    assert_eq!(phases(&rec.phases), [Phase::Initiate, Phase::Failure]);
    assert_eq!(rec.peer, None);
    assert!(w.source.remote.sent().is_empty());
    assert_eq!(w.module.executed(), 0);
}

#[tokio::test(start_paused = true)]
async fn cheaper_peer_refusing_initiate_hands_over_to_the_next() {
    let dir = TempDir::new();
    let module = FakeModule::new(vec![service(1)], Migration::Succeeds(MIGRATION));
    let survivors = Survivors {
        module: module.clone(),
        source_flows: FakeProgrammer::with_delay(SOURCE_FLOW_DELAY),
        target_flows: FakeProgrammer::with_delay(TARGET_FLOW_DELAY),
        source_dir: dir.join("source"),
        target_dir: dir.join("target"),
        target_capacity: CAPACITY,
    };
    // smo-w (cost 1) has only an LXD module; smo-y (cost 5) has a TEST module.
    let cheap_flows = FakeProgrammer::with_delay(TARGET_FLOW_DELAY);
    let cheap = Negotiator::new(
        &config("smo-w", TARGET_DNAI, Vec::new(), CAPACITY),
        FakeRemote::new(FakeModule::new(Vec::new(), Migration::Refused)),
        cheap_flows.clone(),
        Store::memory(),
        Clock::tokio(0),
    )
    .expect("cheap peer");
    cheap
        .register(registration(RelocationType::Lxd, "10.100.1.43:9100"))
        .expect("register");
    let (target, _) = target_smo(&survivors, Clock::tokio(0));
    target
        .register(registration(RelocationType::Test, TARGET_MODULE_ADDR))
        .expect("register");
    let remote = FakeRemote::new(module.clone());
    remote.add_peer("smo-w", cheap.clone());
    remote.add_peer(TARGET_ID, target.clone());
    let source = Negotiator::new(
        &config(
            SOURCE_ID,
            SOURCE_DNAI,
            vec![
                peer(TARGET_ID, TARGET_DNAI, 5),
                peer("smo-v", "edge-v", 0),
                peer("smo-w", TARGET_DNAI, 1),
            ],
            CAPACITY,
        ),
        remote.clone(),
        survivors.source_flows.clone(),
        Store::open(&survivors.source_dir).expect("store"),
        Clock::tokio(0),
    )
    .expect("source");
    source
        .register(registration(RelocationType::Test, "10.100.1.41:9100"))
        .expect("register");

    let ids = source.on_notification(&up_path_change(UE, SOURCE_DNAI, TARGET_DNAI));
    source.idle().await;
    let rec = source.relocation(&ids[0]).expect("record");
    assert_eq!(rec.state, RelocationState::Completed, "{rec:#?}");
    assert_eq!(
        rec.peer.as_ref().map(|p| p.smo_id.as_str()),
        Some(TARGET_ID)
    );
    assert_eq!(rec.cause, None);
    assert_eq!(phases(&rec.phases), Phase::SUCCESS_PATH);
    assert_eq!(
        remote.sent(),
        [
            ("smo-w".to_owned(), Phase::Initiate),
            (TARGET_ID.to_owned(), Phase::Initiate),
            (TARGET_ID.to_owned(), Phase::Validate),
            (TARGET_ID.to_owned(), Phase::Prepare),
            (TARGET_ID.to_owned(), Phase::Execute),
            (TARGET_ID.to_owned(), Phase::Complete),
        ]
    );
    // The peer that refused installed nothing and its relocation is over.
    assert!(cheap_flows.applied().is_empty());
    let refused = cheap.relocation(&ids[0]).expect("the cheap peer's record");
    assert_eq!(refused.state, RelocationState::Failed, "{refused:#?}");
    assert_eq!(phases(&refused.phases), [Phase::Initiate]);
    assert_eq!(
        target.relocation(&ids[0]).map(|r| r.state),
        Some(RelocationState::Completed)
    );
    assert_eq!(ofctl(&survivors.target_flows.installed()), direct_path(1));
    assert_eq!(hosted(&target), ["svc-1"]);
}

#[tokio::test(start_paused = true)]
async fn notifications_for_other_dnais_or_unserved_ues_start_nothing() {
    let dir = TempDir::new();
    let w = World::new(&dir, Setup::default()).await;
    // A UE leaving another edge, a UE staying put, a UE no module serves.
    let other = w
        .source
        .smo
        .on_notification(&up_path_change(UE, "edge-z", TARGET_DNAI));
    assert!(other.is_empty());
    let same = w
        .source
        .smo
        .on_notification(&up_path_change(UE, SOURCE_DNAI, SOURCE_DNAI));
    assert!(same.is_empty());
    let mut not_path = up_path_change(UE, SOURCE_DNAI, TARGET_DNAI);
    not_path.event_notifs[0].event = model::nsmf_event_exposure::SmfEvent::PduSesRel;
    assert!(w.source.smo.on_notification(&not_path).is_empty());
    let unserved = w.source.smo.on_notification(&up_path_change(
        Ipv4Addr::new(192, 168, 1, 99),
        SOURCE_DNAI,
        TARGET_DNAI,
    ));
    assert_eq!(unserved.len(), 1);
    w.source.smo.idle().await;
    assert_eq!(w.source.smo.skipped(), 1, "the unserved UE is counted");
    assert!(w.source.smo.relocations().is_empty());
    assert!(w.source.smo.relocation(&unserved[0]).is_none());
    assert!(w.source.remote.sent().is_empty());
    assert_eq!(
        w.source.flows.applied().len(),
        1,
        "only the seeded direct path"
    );
    assert!(w.target.flows.applied().is_empty());
    assert_eq!(w.module.executed(), 0);
}

#[tokio::test(start_paused = true)]
async fn five_relocations_at_once_each_complete_with_their_own_cookie() {
    let dir = TempDir::new();
    let w = World::new(
        &dir,
        Setup {
            services: (1..=5).map(service).collect(),
            ..Setup::default()
        },
    )
    .await;
    let mut ids = Vec::new();
    for n in 1..=5 {
        ids.extend(
            w.source
                .smo
                .on_notification(&up_path_change(ue(n), SOURCE_DNAI, TARGET_DNAI)),
        );
    }
    w.source.smo.idle().await;
    assert_eq!(ids.len(), 5);
    let mut distinct = ids.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 5, "distinct ids: {ids:?}");
    let mut cookies: Vec<u64> = ids.iter().map(|id| cookie_for(id)).collect();
    cookies.sort_unstable();
    cookies.dedup();
    assert_eq!(cookies.len(), 5, "distinct cookies");
    for id in &ids {
        let rec = w.source.smo.relocation(id).expect("record");
        let n = (1..=5)
            .find(|n| rec.ue_ipv4_addr == ue(*n))
            .expect("one of the UEs");
        assert_eq!(rec.service, service(n));
        assert_eq!(rec.cause, None, "{rec:#?}");
        assert_completed(&w, &rec, n);
        assert_eq!(rec.execute.as_ref().map(|e| e.took_us), Some(300_000));
    }
    let mut want: Vec<String> = (1..=5).flat_map(direct_path).collect();
    want.sort();
    assert_eq!(
        ofctl(&w.target.flows.installed()),
        want,
        "exactly the five new paths"
    );
    assert!(w.source.flows.installed().is_empty());
    let mut at_target = hosted(&w.target.smo);
    at_target.sort();
    assert_eq!(at_target, ["svc-1", "svc-2", "svc-3", "svc-4", "svc-5"]);
    assert!(hosted(&w.source.smo).is_empty());
    assert_eq!(w.module.executed(), 5);
    assert_eq!(w.source.smo.relocations().len(), 5);
    assert_eq!(w.target.smo.relocations().len(), 5);
}

// ----- the target guards its transitions -----

fn message(id: &str, phase: Phase) -> PeerRelocationMessage {
    PeerRelocationMessage {
        relocation_id: id.into(),
        relocation_type: RelocationType::Test,
        relocation_phase: phase,
        notif_uri: format!("http://smo-x.invalid:8090/smo-peer/v1/relocations/{id}"),
        source_smo_id: SOURCE_ID.into(),
        notification: event(UE, SOURCE_DNAI, TARGET_DNAI),
        service: service(1),
        cause: None,
        path_held: false,
    }
}

fn answered(step: TargetStep) -> PeerRelocationAnswer {
    match step {
        TargetStep::Answer(a) => a,
        TargetStep::Apply(set) => panic!("expected an answer, got flows {}", set.label),
    }
}

fn applies(step: TargetStep) -> FlowSet {
    match step {
        TargetStep::Apply(set) => set,
        TargetStep::Answer(a) => panic!("expected flows, got {a:?}"),
    }
}

fn flows_ok(mods: usize) -> Result<smo::routing::FlowReport, String> {
    Ok(smo::routing::FlowReport {
        flow_mods: mods,
        took: ms(1),
    })
}

#[test]
fn target_machine_rejects_out_of_order_phases_replays_repeated_ones_and_keeps_its_state() {
    let local = Local {
        smo_id: TARGET_ID.into(),
        dnai: Dnai::new(TARGET_DNAI),
        api_root: "http://smo-y.invalid:8090".into(),
        ports: EdgePorts::testbed(),
    };
    let modules = [ServiceModule {
        module_id: "module-1".into(),
        registration: registration(RelocationType::Test, TARGET_MODULE_ADDR),
    }];
    let ctx = TargetContext {
        modules: &modules,
        capacity: CAPACITY,
        used: ResourceRequirements::default(),
    };
    let id = "smo-x-1";
    let fail = |a: &PeerRelocationAnswer, phase: Phase, why: &str| {
        assert_eq!(a.result, PeerResult::Fail, "{a:?}");
        assert_eq!(a.relocation_phase, phase);
        assert!(a.cause.as_deref().is_some_and(|c| c.contains(why)), "{a:?}");
    };

    // Opened with PREPARE: nothing to prepare.
    let (m, step) = TargetRelocation::start(0, 0, local.clone(), &message(id, Phase::Prepare), ctx);
    fail(
        &answered(step),
        Phase::Prepare,
        "PREPARE out of order (expected INITIATE)",
    );
    assert!(m.record().phases.is_empty());

    let (mut m, step) =
        TargetRelocation::start(0, 0, local.clone(), &message(id, Phase::Initiate), ctx);
    let initiated = answered(step);
    assert_eq!(initiated.result, PeerResult::Proceed);
    assert_eq!(
        initiated
            .target_module_address
            .map(|a| a.to_string())
            .as_deref(),
        Some(TARGET_MODULE_ADDR)
    );

    let rejected = |m: &mut TargetRelocation, now: u64, msg: PeerRelocationMessage, why: &str| {
        let before = m.clone();
        let phase = msg.relocation_phase;
        fail(&answered(m.on_message(now, &msg, ctx)), phase, why);
        assert_eq!(*m, before, "a rejected {phase} changes nothing");
    };
    rejected(
        &mut m,
        1,
        message(id, Phase::Prepare),
        "PREPARE out of order (expected VALIDATE)",
    );
    rejected(&mut m, 1, message(id, Phase::Execute), "out of order");
    // A phase already answered (its answer was lost, the source sends it again): the same answer.
    let replayed = |m: &mut TargetRelocation,
                    now: u64,
                    msg: PeerRelocationMessage,
                    first: &PeerRelocationAnswer| {
        let before = m.clone();
        assert_eq!(&answered(m.on_message(now, &msg, ctx)), first);
        assert_eq!(
            *m, before,
            "a repeated {} changes nothing",
            msg.relocation_phase
        );
    };
    replayed(&mut m, 1, message(id, Phase::Initiate), &initiated);
    rejected(
        &mut m,
        1,
        message("smo-x-2", Phase::Validate),
        "wrong relocation",
    );

    let validated = answered(m.on_message(2, &message(id, Phase::Validate), ctx));
    assert_eq!(validated.result, PeerResult::Proceed);
    replayed(&mut m, 3, message(id, Phase::Validate), &validated);
    rejected(
        &mut m,
        3,
        message(id, Phase::Execute),
        "EXECUTE out of order (expected PREPARE)",
    );

    assert_eq!(
        applies(m.on_message(4, &message(id, Phase::Prepare), ctx)).label,
        "trombone-target"
    );
    let (a, effects) = m.on_flows(5, flows_ok(3));
    assert_eq!((a.result, a.took_us), (PeerResult::Proceed, 1));
    assert!(effects.is_empty());

    assert_eq!(
        applies(m.on_message(10, &message(id, Phase::Execute), ctx)).label,
        "new-path-target"
    );
    let (executed, _) = m.on_flows(12, flows_ok(3));
    assert_eq!(executed.result, PeerResult::Proceed);
    replayed(&mut m, 13, message(id, Phase::Execute), &executed);
    rejected(
        &mut m,
        13,
        message(id, Phase::Failure),
        "the service already arrived here",
    );

    let set = applies(m.on_message(14, &message(id, Phase::Complete), ctx));
    assert!(set.is_empty(), "the new path is in since EXECUTE");
    let (completed, effects) = m.on_flows(14, flows_ok(0));
    assert_eq!(completed.result, PeerResult::Proceed);
    assert_eq!(effects.len(), 1, "the service arrived");
    assert_eq!(m.record().state, RelocationState::Completed);
    assert!(m.is_done());
    replayed(&mut m, 15, message(id, Phase::Complete), &completed);
    replayed(&mut m, 15, message(id, Phase::Execute), &executed);
    rejected(
        &mut m,
        15,
        message(id, Phase::Failure),
        "the service already arrived here",
    );

    // Flows nobody asked for.
    let before = m.clone();
    let (a, effects) = m.on_flows(16, flows_ok(1));
    fail(&a, Phase::Complete, "no flows pending");
    assert!(effects.is_empty());
    assert_eq!(m, before);
}

#[test]
fn target_machine_that_refused_a_phase_accepts_only_failure() {
    let local = Local {
        smo_id: TARGET_ID.into(),
        dnai: Dnai::new(TARGET_DNAI),
        api_root: "http://smo-y.invalid:8090".into(),
        ports: EdgePorts::testbed(),
    };
    let modules = [ServiceModule {
        module_id: "module-1".into(),
        registration: registration(RelocationType::Test, TARGET_MODULE_ADDR),
    }];
    let full = TargetContext {
        modules: &modules,
        capacity: CAPACITY,
        used: CAPACITY,
    };
    let id = "smo-x-1";
    let (mut m, step) = TargetRelocation::start(0, 0, local, &message(id, Phase::Initiate), full);
    assert_eq!(answered(step).result, PeerResult::Proceed);
    let a = answered(m.on_message(1, &message(id, Phase::Validate), full));
    assert_eq!(a.result, PeerResult::Fail);
    assert!(a
        .cause
        .as_deref()
        .is_some_and(|c| c.contains("not enough resources")));
    assert_eq!(m.record().state, RelocationState::Failed);

    let before = m.clone();
    let a = answered(m.on_message(2, &message(id, Phase::Prepare), full));
    assert_eq!(
        a.result,
        PeerResult::Fail,
        "no PREPARE after a refused VALIDATE"
    );
    assert_eq!(m, before);

    let mut failure = message(id, Phase::Failure);
    failure.cause = Some("peer refused VALIDATE".into());
    let set = applies(m.on_message(3, &failure, full));
    assert_eq!(set.label, "failure-target");
    assert_eq!(ofctl(&set.add), target_trombone(id, 1));
    let (a, _) = m.on_flows(4, flows_ok(3));
    assert_eq!(a.result, PeerResult::Proceed);
    assert_eq!(m.record().state, RelocationState::Failed);
    assert!(m.is_done());
    assert_eq!(
        phases(&m.record().phases),
        [Phase::Initiate, Phase::Validate, Phase::Failure]
    );
}

#[test]
fn target_machine_goes_on_after_an_interrupted_phase() {
    let local = Local {
        smo_id: TARGET_ID.into(),
        dnai: Dnai::new(TARGET_DNAI),
        api_root: "http://smo-y.invalid:8090".into(),
        ports: EdgePorts::testbed(),
    };
    let modules = [ServiceModule {
        module_id: "module-1".into(),
        registration: registration(RelocationType::Test, TARGET_MODULE_ADDR),
    }];
    let ctx = TargetContext {
        modules: &modules,
        capacity: CAPACITY,
        used: ResourceRequirements::default(),
    };
    let id = "smo-x-1";
    let (mut m, _) = TargetRelocation::start(0, 0, local, &message(id, Phase::Initiate), ctx);
    answered(m.on_message(1, &message(id, Phase::Validate), ctx));
    // PREPARE's flows never report back (restart, dropped call): the machine is persisted with
    // the phase pending. The source may retry it...
    assert_eq!(
        applies(m.on_message(2, &message(id, Phase::Prepare), ctx)).label,
        "trombone-target"
    );
    assert!(!m.is_done());
    let mut retry = m.clone();
    assert_eq!(
        applies(retry.on_message(3, &message(id, Phase::Prepare), ctx)).label,
        "trombone-target"
    );
    assert_eq!(retry.on_flows(4, flows_ok(3)).0.result, PeerResult::Proceed);
    // ... or give up: FAILURE still installs the trombone.
    let set = applies(m.on_message(3, &message(id, Phase::Failure), ctx));
    assert_eq!(set.label, "failure-target");
    let (a, _) = m.on_flows(5, flows_ok(3));
    assert_eq!(a.result, PeerResult::Proceed);
    assert_eq!(m.record().state, RelocationState::Failed);
    assert!(m.is_done());
    assert!(m
        .record()
        .cause
        .as_deref()
        .is_some_and(|c| c.contains("PREPARE interrupted before it answered")));
}

#[tokio::test(start_paused = true)]
async fn target_replays_repeated_phases_and_refuses_others_over_the_peer_protocol() {
    let dir = TempDir::new();
    let w = World::new(&dir, Setup::default()).await;
    let t = &w.target.smo;
    let id = "smo-x-77";

    let a = t.on_peer_message(&message(id, Phase::Prepare)).await;
    assert_eq!(
        (a.result, a.cause.as_deref()),
        (PeerResult::Fail, Some("unknown relocation"))
    );
    assert!(
        t.relocation(id).is_none(),
        "no record for a PREPARE out of nowhere"
    );

    let mut first = Vec::new();
    for phase in [
        Phase::Initiate,
        Phase::Validate,
        Phase::Prepare,
        Phase::Execute,
    ] {
        let a = t.on_peer_message(&message(id, phase)).await;
        assert_eq!(a.result, PeerResult::Proceed, "{a:?}");
        first.push(a);
    }
    let before = t.relocation(id).expect("record");
    let flows_before = w.target.flows.applied();
    // Every phase again, latest first (answers lost, the source re-drives): the same answers.
    for a in first.iter().rev() {
        let again = t.on_peer_message(&message(id, a.relocation_phase)).await;
        assert_eq!(&again, a, "{} again", a.relocation_phase);
    }
    // FAILURE once the service is here: refused.
    let a = t.on_peer_message(&message(id, Phase::Failure)).await;
    assert_eq!(a.result, PeerResult::Fail, "FAILURE after EXECUTE: {a:?}");
    assert_eq!(t.relocation(id), Some(before), "state unchanged");
    assert_eq!(w.target.flows.applied(), flows_before, "no flows");
    let a = t.on_peer_message(&message(id, Phase::Complete)).await;
    assert_eq!(a.result, PeerResult::Proceed);
    assert_eq!(
        t.relocation(id).map(|r| r.state),
        Some(RelocationState::Completed)
    );

    // A message about a relocation this SMO is the source of.
    let rec = w.relocate(1).await;
    let a = w
        .source
        .smo
        .on_peer_message(&message(&rec.relocation_id, Phase::Initiate))
        .await;
    assert_eq!(a.result, PeerResult::Fail);
    assert_eq!(w.source.smo.relocation(&rec.relocation_id), Some(rec));
}

// ----- SMO restarts -----

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a runtime")
}

/// Runs a relocation of service 1 until `stuck` says the SMOs wait where the test wants them to,
/// then crashes both (drops the runtime with every task), restarts them over the same state
/// directories, lets `fix` change the surviving fakes, resumes and waits until the source is idle.
/// Returns the restarted world and the relocation's id.
fn crash_and_resume(
    dir: &TempDir,
    setup: Setup,
    faults: &[(Phase, PeerFault)],
    mut stuck: impl FnMut(&World) -> bool,
    fix: impl FnOnce(&World),
) -> (World, String) {
    let first = paused_runtime();
    let (survivors, id, source_us, target_us) = first.block_on(async {
        let w = World::new(dir, setup).await;
        for (phase, fault) in faults {
            w.source.remote.fault(*phase, *fault);
        }
        let ids = w
            .source
            .smo
            .on_notification(&up_path_change(UE, SOURCE_DNAI, TARGET_DNAI));
        wait_until("the SMOs get stuck", || stuck(&w)).await;
        let rec = w.source.smo.relocation(&ids[0]).expect("persisted");
        assert_eq!(rec.state, RelocationState::Running, "{rec:#?}");
        (
            w.survivors.clone(),
            ids[0].clone(),
            w.source.clock.now_us(),
            w.target.clock.now_us(),
        )
    });
    drop(first);

    let second = paused_runtime();
    let w = second.block_on(async {
        let w = World::start(survivors, source_us, target_us);
        assert_eq!(
            w.source.smo.relocation(&id).map(|r| r.state),
            Some(RelocationState::Running),
            "the store kept the running relocation"
        );
        fix(&w);
        assert_eq!(w.source.smo.resume(), 1);
        w.source.smo.idle().await;
        assert_eq!(w.source.smo.resume(), 0, "nothing left running");
        w
    });
    (w, id)
}

fn record(w: &World, id: &str) -> RelocationRecord {
    w.source.smo.relocation(id).expect("record")
}

fn hang_seen(w: &World) -> bool {
    w.source.remote.hangs() > 0 || w.module.hangs() > 0
}

#[test]
fn restart_while_the_peer_hangs_at_initiate_fails_cleanly() {
    let dir = TempDir::new();
    let (w, id) = crash_and_resume(
        &dir,
        Setup::default(),
        &[(Phase::Initiate, PeerFault::Hang)],
        hang_seen,
        |_| {},
    );
    assert_failed(&w, &record(&w, &id), "SMO restarted during INITIATE", true);
    // The target never saw INITIATE: FAILURE alone still gets it to trombone.
    assert_eq!(phases(&w.target_record(&id).phases), [Phase::Failure]);
    assert_eq!(w.module.executed(), 0);
}

#[test]
fn restart_while_the_peer_hangs_at_validate_fails_cleanly() {
    let dir = TempDir::new();
    let (w, id) = crash_and_resume(
        &dir,
        Setup::default(),
        &[(Phase::Validate, PeerFault::Hang)],
        hang_seen,
        |_| {},
    );
    assert_failed(&w, &record(&w, &id), "SMO restarted during VALIDATE", true);
    // The restarted target went on with the record it had persisted.
    assert_eq!(
        phases(&w.target_record(&id).phases),
        [Phase::Initiate, Phase::Failure]
    );
    assert_eq!(w.module.executed(), 0);
}

#[test]
fn restart_while_the_peer_hangs_at_prepare_fails_cleanly() {
    let dir = TempDir::new();
    let (w, id) = crash_and_resume(
        &dir,
        Setup::default(),
        &[(Phase::Prepare, PeerFault::Hang)],
        hang_seen,
        |_| {},
    );
    assert_failed(&w, &record(&w, &id), "SMO restarted during PREPARE", true);
    assert_eq!(
        phases(&w.target_record(&id).phases),
        [Phase::Initiate, Phase::Validate, Phase::Failure]
    );
    assert_eq!(w.module.executed(), 0);
}

#[test]
fn restart_while_the_source_installs_its_trombone_fails_cleanly() {
    let dir = TempDir::new();
    let setup = Setup {
        source_flow_delay: FOREVER,
        ..Setup::default()
    };
    let (w, id) = crash_and_resume(
        &dir,
        setup,
        &[],
        |w| {
            w.source
                .flows
                .attempts()
                .contains(&"trombone-source".to_owned())
        },
        |w| w.source.flows.set_delay(SOURCE_FLOW_DELAY),
    );
    assert_failed(&w, &record(&w, &id), "SMO restarted during PREPARE", true);
    assert_eq!(w.module.executed(), 0);
}

#[test]
fn restart_during_execute_with_the_service_moved_completes() {
    let dir = TempDir::new();
    let setup = Setup {
        migration: Migration::Hangs { moved: true },
        ..Setup::default()
    };
    let (w, id) = crash_and_resume(&dir, setup, &[], hang_seen, |_| {});
    let rec = record(&w, &id);
    assert_completed(&w, &rec, 1);
    assert_eq!(phases(&rec.phases), Phase::SUCCESS_PATH);
    assert_eq!(w.module.executed(), 1, "never executed twice");
    // The restarted target answered EXECUTE and COMPLETE of a relocation it saw before.
    assert_eq!(phases(&w.target_record(&id).phases), Phase::SUCCESS_PATH);
}

#[test]
fn restart_during_execute_with_the_service_still_local_fails() {
    let dir = TempDir::new();
    let setup = Setup {
        migration: Migration::Hangs { moved: false },
        ..Setup::default()
    };
    let (w, id) = crash_and_resume(&dir, setup, &[], hang_seen, |_| {});
    assert_failed(
        &w,
        &record(&w, &id),
        "the service is still at the source",
        true,
    );
    assert_eq!(w.module.executed(), 1, "never executed twice");
    assert_eq!(
        labels(&w.target.flows),
        ["trombone-target", "failure-target"]
    );
}

#[test]
fn restart_while_asking_where_the_service_is_completes_once_it_moved() {
    let dir = TempDir::new();
    let setup = Setup {
        migration: Migration::Hangs { moved: true },
        ..Setup::default()
    };
    let (w, id) = crash_and_resume(
        &dir,
        setup,
        &[],
        |w| {
            w.module.set_services_hang(true);
            w.module.hangs() >= 2
        },
        |w| w.module.set_services_hang(false),
    );
    let rec = record(&w, &id);
    assert_completed(&w, &rec, 1);
    assert_eq!(w.module.executed(), 1);
}

#[test]
fn restart_while_the_peer_hangs_at_execute_completes() {
    let dir = TempDir::new();
    let (w, id) = crash_and_resume(
        &dir,
        Setup::default(),
        &[(Phase::Execute, PeerFault::Hang)],
        hang_seen,
        |_| {},
    );
    let rec = record(&w, &id);
    assert_completed(&w, &rec, 1);
    assert_eq!(rec.cause, None);
    assert_eq!(rec.execute.as_ref().map(|e| e.took_us), Some(300_000));
    assert_eq!(w.module.executed(), 1);
    assert_eq!(phases(&w.target_record(&id).phases), Phase::SUCCESS_PATH);
}

#[test]
fn restart_while_the_source_cleans_up_completes() {
    let dir = TempDir::new();
    let (w, id) = crash_and_resume(
        &dir,
        Setup::default(),
        &[],
        |w| {
            if w.module.executed() == 1 {
                w.source.flows.set_delay(FOREVER);
            }
            w.source
                .flows
                .attempts()
                .contains(&"cleanup-source".to_owned())
        },
        |w| w.source.flows.set_delay(SOURCE_FLOW_DELAY),
    );
    assert_completed(&w, &record(&w, &id), 1);
    assert_eq!(w.module.executed(), 1);
}

#[test]
fn restart_while_the_peer_hangs_at_complete_completes() {
    let dir = TempDir::new();
    let (w, id) = crash_and_resume(
        &dir,
        Setup::default(),
        &[(Phase::Complete, PeerFault::Hang)],
        hang_seen,
        |_| {},
    );
    let rec = record(&w, &id);
    assert_completed(&w, &rec, 1);
    assert_eq!(rec.cause, None);
}

#[test]
fn restart_while_installing_failure_flows_finishes_the_failure() {
    let dir = TempDir::new();
    let setup = Setup {
        source_flow_delay: FOREVER,
        ..Setup::default()
    };
    let (w, id) = crash_and_resume(
        &dir,
        setup,
        &[(Phase::Validate, PeerFault::Refuse)],
        |w| {
            w.source
                .flows
                .attempts()
                .contains(&"failure-source".to_owned())
        },
        |w| w.source.flows.set_delay(SOURCE_FLOW_DELAY),
    );
    assert_failed(&w, &record(&w, &id), "peer refused VALIDATE", true);
}

#[test]
fn restart_while_the_peer_hangs_at_failure_finishes_the_failure() {
    let dir = TempDir::new();
    let (w, id) = crash_and_resume(
        &dir,
        Setup::default(),
        &[
            (Phase::Validate, PeerFault::Refuse),
            (Phase::Failure, PeerFault::Hang),
        ],
        hang_seen,
        |_| {},
    );
    assert_failed(&w, &record(&w, &id), "peer refused VALIDATE", true);
}

#[test]
fn target_restart_during_its_prepare_flows_still_installs_the_failure_trombone() {
    let dir = TempDir::new();
    let setup = Setup {
        target_flow_delay: FOREVER,
        ..Setup::default()
    };
    let (w, id) = crash_and_resume(
        &dir,
        setup,
        &[],
        |w| {
            w.target
                .flows
                .attempts()
                .contains(&"trombone-target".to_owned())
        },
        |w| w.target.flows.set_delay(TARGET_FLOW_DELAY),
    );
    assert_failed(&w, &record(&w, &id), "SMO restarted during PREPARE", true);
    let t = w.target_record(&id);
    assert!(
        t.cause.as_deref().is_some_and(|c| c.contains("PREPARE")),
        "{t:#?}"
    );
}

#[test]
fn target_restart_during_its_new_path_flows_completes() {
    let dir = TempDir::new();
    let (w, id) = crash_and_resume(
        &dir,
        Setup::default(),
        &[],
        |w| {
            if w.module.executed() == 1 {
                w.target.flows.set_delay(FOREVER);
            }
            w.target
                .flows
                .attempts()
                .contains(&"new-path-target".to_owned())
        },
        |w| w.target.flows.set_delay(TARGET_FLOW_DELAY),
    );
    assert_completed(&w, &record(&w, &id), 1);
    assert_eq!(w.module.executed(), 1);
}

// ----- the AF acknowledgement (NEF, afAckInd): make-before-break -----

const ACK_URI: &str =
    "http://10.100.0.10:8002/3gpp-traffic-influence/v1/smo-x/subscriptions/sub-1/acks/ack-1";

fn ack_request() -> Option<AckRequest> {
    Some(AckRequest {
        uri: ACK_URI.into(),
        af_trans_id: Some("smo-x-up-path-change".into()),
    })
}

impl World {
    /// The NEF's notification that UE `n` moved to the target DNAI, asking for an
    /// acknowledgement; waits for the relocation to end and returns the source's record.
    async fn relocate_held(&self, n: u8) -> RelocationRecord {
        let id = self
            .source
            .smo
            .on_af_notification(&event(ue(n), SOURCE_DNAI, TARGET_DNAI), ack_request())
            .expect("a relocation starts");
        self.source.smo.idle().await;
        self.source.smo.relocation(&id).expect("recorded")
    }
}

/// No flow set of either switch ever added a rule with the relocation's cookie.
fn no_trombone_ever(w: &World, id: &str) {
    for (side, f) in [("source", &w.source.flows), ("target", &w.target.flows)] {
        for set in f.applied() {
            assert!(
                set.add.iter().all(|r| r.cookie != cookie_for(id)),
                "{side} installed {} with the relocation's cookie (a trombone)",
                set.label
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_held_path_switch_moves_the_service_without_a_trombone_and_acks_once_the_new_path_is_in()
{
    let dir = TempDir::new();
    let w = World::new(&dir, Setup::default()).await;
    w.module
        .arrive_at(w.target.smo.clone(), w.target.flows.clone());
    let rec = w.relocate_held(1).await;
    let id = rec.relocation_id.clone();
    assert_completed(&w, &rec, 1);
    assert_eq!(labels(&w.source.flows), ["service-up", "cleanup-source"]);
    assert_eq!(labels(&w.target.flows), ["new-path-target"]);
    no_trombone_ever(&w, &id);

    let acks = w.source.remote.acks();
    assert_eq!(acks.len(), 1, "{acks:#?}");
    let a = &acks[0];
    assert_eq!(a.uri, ACK_URI);
    assert_eq!(a.body.ack_result.af_status, AfResultStatus::Success);
    assert_eq!(a.body.af_trans_id.as_deref(), Some("smo-x-up-path-change"));
    assert!(
        !a.service_still_at_source,
        "acknowledged before the service left"
    );
    assert_eq!(
        a.target_labels,
        ["new-path-target"],
        "acknowledged before the target's new path was in"
    );
    assert_eq!(
        a.own_labels,
        ["service-up"],
        "the acknowledgement comes before COMPLETE's cleanup"
    );
    let ack = rec.af_ack.as_ref().expect("the record notes the ack");
    assert_eq!(ack.af_ack_uri, ACK_URI);
    assert_eq!(ack.af_status, Some(AfResultStatus::Success));
    assert_eq!(ack.answer.as_deref(), Some("204"));
    assert!(
        ack.sent_us >= Some(300_000),
        "sent after the 300 ms migration: {ack:?}"
    );
    let t = w.target_record(&id);
    assert_eq!(t.state, RelocationState::Completed);
    assert_eq!(
        t.phases
            .iter()
            .find(|p| p.phase == Phase::Prepare)
            .map(|p| p.flow_install_us),
        Some(None),
        "no flows at the target's PREPARE"
    );
}

#[tokio::test(start_paused = true)]
async fn a_held_relocation_that_fails_acks_other_once_the_trombone_is_in() {
    let dir = TempDir::new();
    let w = World::new(
        &dir,
        Setup {
            migration: Migration::Refused,
            ..Setup::default()
        },
    )
    .await;
    let rec = w.relocate_held(1).await;
    assert_failed(
        &w,
        &rec,
        "service module could not migrate: checkpoint failed",
        true,
    );
    // Before the failure, no trombone; FAILURE installs it on both sides (the UE reaches the
    // service at the source over it once the SMF switched), and only then the ack goes.
    assert_eq!(labels(&w.source.flows), ["service-up", "failure-source"]);
    assert_eq!(labels(&w.target.flows), ["failure-target"]);
    let acks = w.source.remote.acks();
    assert_eq!(acks.len(), 1, "{acks:#?}");
    assert_eq!(
        acks[0].body.ack_result.af_status,
        AfResultStatus::OtherReason
    );
    assert_eq!(acks[0].own_labels, ["service-up", "failure-source"]);
    assert_eq!(acks[0].target_labels, ["failure-target"]);
    assert!(acks[0].service_still_at_source);
    let ack = rec.af_ack.as_ref().expect("noted");
    assert_eq!(ack.af_status, Some(AfResultStatus::OtherReason));
    assert_eq!(ack.answer.as_deref(), Some("204"));
}

#[tokio::test(start_paused = true)]
async fn without_an_ack_asked_the_nef_path_runs_the_thesis_procedure() {
    let dir = TempDir::new();
    let w = World::new(&dir, Setup::default()).await;
    let id = w
        .source
        .smo
        .on_af_notification(&event(UE, SOURCE_DNAI, TARGET_DNAI), None)
        .expect("started");
    w.source.smo.idle().await;
    let rec = w.source.smo.relocation(&id).expect("recorded");
    assert_completed(&w, &rec, 1);
    assert_eq!(rec.af_ack, None);
    assert_eq!(
        labels(&w.source.flows),
        ["service-up", "trombone-source", "cleanup-source"]
    );
    assert!(w.source.remote.acks().is_empty());
}

#[tokio::test(start_paused = true)]
async fn notifications_that_move_nothing_here_are_acked_at_once() {
    let dir = TempDir::new();
    let w = World::new(&dir, Setup::default()).await;
    // At the target SMO: the UE did not leave its edge.
    assert_eq!(
        w.target
            .smo
            .on_af_notification(&event(UE, SOURCE_DNAI, TARGET_DNAI), ack_request()),
        None
    );
    // At the source, a UE no module serves.
    let other = Ipv4Addr::new(192, 168, 1, 99);
    w.source
        .smo
        .on_af_notification(&event(other, SOURCE_DNAI, TARGET_DNAI), ack_request())
        .expect("looked up");
    w.source.smo.idle().await;
    wait_until("both acknowledged", || {
        w.target.remote.acks().len() == 1 && w.source.remote.acks().len() == 1
    })
    .await;
    for a in [&w.target.remote.acks()[0], &w.source.remote.acks()[0]] {
        assert_eq!(a.body.ack_result.af_status, AfResultStatus::Success);
    }
    assert_eq!(w.module.executed(), 0);

    // An SMO whose subscription says appReloInd false keeps the service and says so.
    let fixed_dir = TempDir::new();
    let mut cfg = config(
        SOURCE_ID,
        SOURCE_DNAI,
        vec![peer(TARGET_ID, TARGET_DNAI, 0)],
        CAPACITY,
    );
    cfg.subscribe_at = SubscribeAt::Nef;
    cfg.nef.app_relo_ind = false;
    let module = FakeModule::new(vec![service(1)], Migration::Succeeds(MIGRATION));
    let remote = FakeRemote::new(module.clone());
    let fixed = Negotiator::new(
        &cfg,
        remote.clone(),
        FakeProgrammer::new(),
        Store::open(fixed_dir.join("s")).expect("store"),
        Clock::tokio(0),
    )
    .expect("negotiator");
    fixed
        .register(registration(RelocationType::Test, "10.100.1.41:9100"))
        .expect("register");
    assert_eq!(
        fixed.on_af_notification(&event(UE, SOURCE_DNAI, TARGET_DNAI), ack_request()),
        None,
        "no relocation"
    );
    wait_until("acknowledged", || remote.acks().len() == 1).await;
    assert_eq!(
        remote.acks()[0].body.ack_result.af_status,
        AfResultStatus::RelocNoAllowed
    );
    assert!(fixed.relocations().is_empty());
    assert_eq!(module.executed(), 0);
    assert!(remote.sent().is_empty(), "no peer asked");
}

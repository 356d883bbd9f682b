//! Successive handovers, in process on tokio's paused clock: two or three SMOs (edge X at site A,
//! Y at B, Z at C), each with a fake switch and a fake service module; a module's Execute really
//! moves the service to the module at the target address, so a service can go back and forth.
//! A fake SMF notifies every SMO of each handover (as the real one notifies every subscriber) and a
//! fake LR knows where the UE is. Each test ends with a verdict on the switches' flows: from the
//! UE's current site, do its packets reach the service, and do the service's replies come back?
//!
//! What is tested: a notification that arrives while the UE's relocation runs is queued (never
//! dropped), coalesced with later ones, and re-evaluated against the LR when the relocation ends;
//! one that arrives before EXECUTE cancels the relocation instead; and each SMO's reconciler
//! repairs what notifications alone leave off: a missing new path, a stale trombone, a service at
//! the wrong edge.

mod common;

use common::reach::{reaches, Edge};
use common::{ms, wait_until, TempDir};
use model::common::{DateTime, Dnai, DnaiChangeType, RouteToLocation};
use model::nsmf_event_exposure::{EventNotification, NsmfEventExposureNotification};
use model::smo::{
    ExecuteReport, ExecuteRequest, PeerInfo, PeerRelocationAnswer, PeerRelocationMessage,
    RelocationPhase as Phase, RelocationRecord, RelocationRole, RelocationState, RelocationTrigger,
    RelocationType, ResourceRequirements, Service, ServiceModule, ServiceModuleRegistration,
};
use smo::config::{SmoConfig, Timeouts};
use smo::core::ExecuteFailure;
use smo::negotiator::{Clock, Negotiator, Remote};
use smo::routing::fake::FakeProgrammer;
use smo::routing::rules::{self, EdgePorts, ServiceAt};
use smo::store::Store;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

const UE: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);
const TIMEOUTS: Timeouts = Timeouts {
    peer_ms: 1_000,
    module_ms: 500,
    execute_ms: 10_000,
};
/// The live migration of the service.
const MIGRATION: Duration = Duration::from_millis(100);
/// What each flow set takes on every switch.
const FLOW_DELAY: Duration = Duration::from_millis(1);

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

// ----- fakes -----

/// One edge cloud's service module: the services it hosts; Execute moves one to the module at the
/// request's target address.
#[derive(Debug, Clone, Default)]
struct Module(Arc<Mutex<ModuleState>>);

#[derive(Debug, Default)]
struct ModuleState {
    services: Vec<Service>,
    executed: usize,
    /// Execute fails (the restore at the target, say): the service stays.
    refuse: bool,
}

impl Module {
    fn lock(&self) -> MutexGuard<'_, ModuleState> {
        self.0.lock().expect("module")
    }

    fn hosts(&self) -> bool {
        !self.lock().services.is_empty()
    }
}

/// Every module by its migration address, every SMO by id, and the LR: what all sites share.
#[derive(Debug, Clone, Default)]
struct Shared {
    modules: Arc<Mutex<BTreeMap<SocketAddr, Module>>>,
    peers: Arc<Mutex<BTreeMap<String, Smo>>>,
    lr: Arc<Mutex<BTreeMap<Ipv4Addr, Dnai>>>,
}

#[derive(Debug, Clone)]
struct MeshRemote {
    module: Module,
    shared: Shared,
}

type Smo = Negotiator<MeshRemote, FakeProgrammer>;

impl Remote for MeshRemote {
    async fn call_peer(
        &self,
        peer: &PeerInfo,
        msg: &PeerRelocationMessage,
    ) -> Result<PeerRelocationAnswer, String> {
        let target = self
            .shared
            .peers
            .lock()
            .expect("peers")
            .get(&peer.smo_id)
            .cloned();
        match target {
            Some(t) => Ok(t.on_peer_message(msg).await),
            None => Err(format!("no route to {}", peer.api_root)),
        }
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

    async fn services(&self, _module: &ServiceModule) -> Result<Vec<Service>, String> {
        Ok(self.module.lock().services.clone())
    }

    async fn ue_location(&self, ue: Ipv4Addr) -> Result<Option<Dnai>, String> {
        Ok(self.shared.lr.lock().expect("lr").get(&ue).cloned())
    }

    async fn execute(
        &self,
        _module: &ServiceModule,
        req: &ExecuteRequest,
    ) -> Result<ExecuteReport, ExecuteFailure> {
        let target = self
            .shared
            .modules
            .lock()
            .expect("modules")
            .get(&req.target_address)
            .cloned();
        let Some(target) = target else {
            return Err(ExecuteFailure::Refused(
                "no module at the target address".into(),
            ));
        };
        self.module.lock().executed += 1;
        tokio::time::sleep(MIGRATION).await;
        if self.module.lock().refuse {
            return Err(ExecuteFailure::Refused(
                "the restore failed at the target".into(),
            ));
        }
        let moved = {
            let mut st = self.module.lock();
            let at = st
                .services
                .iter()
                .position(|s| s.service_id == req.service.service_id);
            at.map(|i| st.services.remove(i))
        };
        match moved {
            Some(s) => {
                target.lock().services.push(s);
                Ok(ExecuteReport {
                    took_us: 100_000,
                    ..ExecuteReport::default()
                })
            }
            None => Err(ExecuteFailure::Refused("not hosted here".into())),
        }
    }
}

// ----- the mesh -----

#[derive(Debug)]
struct Site {
    dnai: Dnai,
    smo: Smo,
    flows: FakeProgrammer,
    module: Module,
}

struct Mesh {
    sites: Vec<Site>,
    shared: Shared,
    _dir: TempDir,
}

fn smo_id(edge: char) -> String {
    format!("smo-{edge}")
}

fn dnai(edge: char) -> Dnai {
    Dnai::new(format!("edge-{edge}"))
}

fn module_addr(i: usize) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::new(10, 0, 1, 1 + i as u8),
        9200,
    ))
}

impl Mesh {
    /// Edges `edges` (e.g. `['x', 'y']`), every SMO a peer of every other, the service at the
    /// first edge and the UE at its site.
    fn new(edges: &[char]) -> Self {
        let dir = TempDir::new();
        let shared = Shared::default();
        let mut sites = Vec::new();
        for (i, e) in edges.iter().enumerate() {
            let peers = edges
                .iter()
                .filter(|o| *o != e)
                .map(|o| PeerInfo {
                    smo_id: smo_id(*o),
                    dnai: dnai(*o),
                    api_root: format!("http://smo-{o}.invalid:8090"),
                    cost: 0,
                })
                .collect();
            let config = SmoConfig {
                smo_id: smo_id(*e),
                dnai: dnai(*e),
                api_addr: SocketAddrV4::new(Ipv4Addr::new(10, 100, 0, 41 + i as u8), 8090),
                token: None,
                subscribe_at: smo::config::SubscribeAt::Smf,
                smf_url: None,
                nef: Default::default(),
                lr_url: None,
                notify_when: Default::default(),
                peers,
                ovs_mgmt: "/nonexistent/br.mgmt".into(),
                ports: EdgePorts::testbed(),
                capacity: smo::config::default_capacity(),
                state_dir: dir.join(&e.to_string()),
                timeouts: TIMEOUTS,
                // The retry timings the tests below count on (10 s, doubling).
                reconcile: smo::config::ReconcileConfig {
                    retry_first_ms: 10_000,
                    ..Default::default()
                },
                callback_networks: vec!["10.0.1.0/24".parse().expect("net")],
            };
            let module = Module::default();
            shared
                .modules
                .lock()
                .expect("modules")
                .insert(module_addr(i), module.clone());
            let flows = FakeProgrammer::with_delay(FLOW_DELAY);
            let remote = MeshRemote {
                module: module.clone(),
                shared: shared.clone(),
            };
            let store = Store::open(&config.state_dir).expect("store");
            if i == 0 {
                // The service runs here from the start: in the database, its direct path in.
                store
                    .put_service(&smo::store::HostedService {
                        module_id: "module-1".into(),
                        service: service(),
                    })
                    .expect("seed");
                let at = ServiceAt::of(&service()).expect("a MAC");
                flows.seed(&rules::direct_path(&EdgePorts::testbed(), &at));
            }
            let smo = Negotiator::new(&config, remote, flows.clone(), store, Clock::tokio(0))
                .expect("negotiator");
            let addr = module_addr(i);
            smo.register(ServiceModuleRegistration {
                relocation_type: RelocationType::Test,
                resource_requirements: ResourceRequirements::default(),
                get_service_notif_uri: format!("http://{}:9100/services", addr.ip()),
                served_service_notif_uri: format!("http://{}:9100/served", addr.ip()),
                execute_notif_uri: format!("http://{}:9100/execute", addr.ip()),
                notif_address: addr,
            })
            .expect("register");
            shared
                .peers
                .lock()
                .expect("peers")
                .insert(smo_id(*e), smo.clone());
            sites.push(Site {
                dnai: dnai(*e),
                smo,
                flows,
                module,
            });
        }
        sites[0].module.lock().services.push(service());
        shared
            .lr
            .lock()
            .expect("lr")
            .insert(UE, sites[0].dnai.clone());
        Self {
            sites,
            shared,
            _dir: dir,
        }
    }

    fn site(&self, edge: char) -> &Site {
        self.sites
            .iter()
            .find(|s| s.dnai == dnai(edge))
            .expect("an edge of the mesh")
    }

    /// The UE hands over to `to`'s site: the LR knows it at once, and the SMF notifies every
    /// SMO (LATE `UP_PATH_CH`). Returns the relocations started, per SMO.
    fn hand_over(&self, to: char) -> Vec<String> {
        let from = self.shared.lr.lock().expect("lr").insert(UE, dnai(to));
        let from = from.unwrap_or_else(|| dnai(to));
        let at = DateTime::from_unix(1_700_000_000, 0).expect("a valid time");
        let ev = EventNotification::up_path_change(
            DnaiChangeType::Late,
            UE,
            RouteToLocation::new(from.as_str(), Ipv4Addr::new(10, 90, 0, 1), 2152),
            RouteToLocation::new(dnai(to).as_str(), Ipv4Addr::new(10, 90, 0, 2), 2152),
            at,
        );
        let n = NsmfEventExposureNotification::new("notif", vec![ev]);
        self.sites
            .iter()
            .flat_map(|s| s.smo.on_notification(&n))
            .collect()
    }

    /// Waits until no SMO has anything running (several rounds: one's end may start another's).
    async fn settle(&self) {
        for _ in 0..10 {
            for s in &self.sites {
                s.smo.idle().await;
            }
            tokio::time::sleep(ms(50)).await;
        }
    }

    /// The edge the service runs at.
    fn service_at(&self) -> Dnai {
        let at: Vec<&Site> = self.sites.iter().filter(|s| s.module.hosts()).collect();
        assert_eq!(at.len(), 1, "exactly one running copy of the service");
        at[0].dnai.clone()
    }

    /// The flows' verdict: from the UE's current site, the service is reached and answers.
    fn check_reachable(&self) {
        let ue_at = self
            .shared
            .lr
            .lock()
            .expect("lr")
            .get(&UE)
            .cloned()
            .expect("UE");
        let edges: Vec<Edge> = self
            .sites
            .iter()
            .map(|s| Edge {
                dnai: s.dnai.clone(),
                flows: s.flows.installed(),
                hosts: s.module.hosts(),
            })
            .collect();
        let svc = service();
        if let Err(why) = reaches(&edges, &ue_at, UE, svc.ipv4_addr, &svc.ovs_port) {
            panic!(
                "UE at {ue_at}, service at {}: {why}\n{}",
                self.service_at(),
                self.dump()
            );
        }
    }

    fn records(&self, role: RelocationRole) -> Vec<RelocationRecord> {
        self.sites
            .iter()
            .flat_map(|s| s.smo.relocations())
            .filter(|r| r.role == role)
            .collect()
    }

    fn dump(&self) -> String {
        let mut out = String::new();
        for s in &self.sites {
            out.push_str(&format!("--- {} (hosts: {})\n", s.dnai, s.module.hosts()));
            for r in s.flows.installed() {
                out.push_str(&format!("  {}\n", r.to_ofctl()));
            }
            for r in s.smo.relocations() {
                out.push_str(&format!(
                    "  {} {:?} {:?} {} {}→{} {:?} {:?}\n",
                    r.relocation_id,
                    r.role,
                    r.state,
                    r.phase,
                    r.source_dnai,
                    r.target_dnai,
                    r.control,
                    r.cause
                ));
            }
        }
        out
    }
}

fn phase_of(smo: &Smo, id: &str) -> Option<(RelocationState, Phase)> {
    smo.relocation(id).map(|r| (r.state, r.phase))
}

// ----- the cases -----

#[tokio::test(start_paused = true)]
async fn the_mesh_relocates_once_and_the_flows_reach_the_service() {
    let mesh = Mesh::new(&['x', 'y']);
    mesh.check_reachable();
    // The verdict can fail: the UE at site B with nothing installed anywhere.
    mesh.shared.lr.lock().expect("lr").insert(UE, dnai('y'));
    let edges: Vec<Edge> = mesh
        .sites
        .iter()
        .map(|s| Edge {
            dnai: s.dnai.clone(),
            flows: s.flows.installed(),
            hosts: s.module.hosts(),
        })
        .collect();
    let svc = service();
    let why = reaches(&edges, &dnai('y'), UE, svc.ipv4_addr, &svc.ovs_port)
        .expect_err("nothing answers at B");
    assert!(why.contains("ARP request"), "{why}");
    mesh.shared.lr.lock().expect("lr").insert(UE, dnai('x'));

    let ids = mesh.hand_over('y');
    assert_eq!(ids.len(), 1);
    mesh.settle().await;
    assert_eq!(mesh.service_at(), dnai('y'));
    mesh.check_reachable();
}

/// A→B, and back to A while the first relocation is in EXECUTE: the second notification is queued
/// at both SMOs (X is the source, Y the target), then re-evaluated: the LR says A, so the
/// service, now at Y, comes back.
#[tokio::test(start_paused = true)]
async fn a_notification_during_execute_is_queued_and_the_service_follows_the_ue_back() {
    let mesh = Mesh::new(&['x', 'y']);
    let (x, y) = (mesh.site('x'), mesh.site('y'));
    let ids = mesh.hand_over('y');
    let first = ids[0].clone();
    wait_until("EXECUTE at X", || {
        phase_of(&x.smo, &first) == Some((RelocationState::Running, Phase::Execute))
    })
    .await;
    assert!(
        mesh.hand_over('x').is_empty(),
        "nothing starts while it runs"
    );
    assert_eq!(x.smo.queued_hints(), 1, "queued at the source");
    assert_eq!(y.smo.queued_hints(), 1, "queued at the target");
    // Still in EXECUTE: too late to cancel.
    assert_eq!(
        phase_of(&x.smo, &first),
        Some((RelocationState::Running, Phase::Execute))
    );
    mesh.settle().await;

    assert_eq!(mesh.service_at(), dnai('x'), "{}", mesh.dump());
    mesh.check_reachable();
    let sources = mesh.records(RelocationRole::Source);
    assert_eq!(sources.len(), 2, "{}", mesh.dump());
    assert!(sources
        .iter()
        .all(|r| r.state == RelocationState::Completed));
    let back = y.smo.relocations();
    let back = back
        .iter()
        .find(|r| r.role == RelocationRole::Source)
        .expect("Y relocated it back");
    assert_eq!(back.control.trigger, RelocationTrigger::Requeued);
    assert_eq!(back.control.coalesced, 1);
    assert_eq!(back.target_dnai, dnai('x'));
    for s in &mesh.sites {
        let n = s.smo.notification_counts();
        assert_eq!((n.queued, n.reevaluated), (1, 1), "{}", s.dnai);
        assert_eq!(s.smo.queued_hints(), 0);
    }
}

/// Three handovers during one EXECUTE (B→A→B→A): one hint per SMO, counting three, re-evaluated
/// once against the LR.
#[tokio::test(start_paused = true)]
async fn notifications_during_execute_are_coalesced_into_one_re_evaluation() {
    let mesh = Mesh::new(&['x', 'y']);
    let (x, y) = (mesh.site('x'), mesh.site('y'));
    let first = mesh.hand_over('y')[0].clone();
    wait_until("EXECUTE at X", || {
        phase_of(&x.smo, &first) == Some((RelocationState::Running, Phase::Execute))
    })
    .await;
    for to in ['x', 'y', 'x'] {
        assert!(mesh.hand_over(to).is_empty());
        tokio::time::sleep(ms(10)).await;
    }
    for s in [x, y] {
        let n = s.smo.notification_counts();
        assert_eq!((n.queued, n.coalesced), (1, 2), "{}", s.dnai);
    }
    mesh.settle().await;
    assert_eq!(mesh.service_at(), dnai('x'));
    mesh.check_reachable();
    let sources = mesh.records(RelocationRole::Source);
    assert_eq!(
        sources.len(),
        2,
        "one relocation there, one back: {}",
        mesh.dump()
    );
    let back = sources
        .iter()
        .find(|r| r.control.trigger == RelocationTrigger::Requeued)
        .expect("the re-evaluation's relocation");
    assert_eq!(back.control.coalesced, 3);
}

/// Back to A while the first relocation is still in PREPARE: it is cancelled (FAILED, no
/// migration), X withdraws its trombone, and the service never moves.
#[tokio::test(start_paused = true)]
async fn a_handover_back_before_execute_cancels_the_relocation() {
    let mesh = Mesh::new(&['x', 'y']);
    let (x, y) = (mesh.site('x'), mesh.site('y'));
    // Y's switch is slow: the relocation sits in PREPARE for 50 ms.
    y.flows.set_delay(ms(50));
    let first = mesh.hand_over('y')[0].clone();
    wait_until("PREPARE at X", || {
        phase_of(&x.smo, &first) == Some((RelocationState::Running, Phase::Prepare))
    })
    .await;
    assert!(mesh.hand_over('x').is_empty());
    mesh.settle().await;

    let r = x.smo.relocation(&first).expect("record");
    assert_eq!(r.state, RelocationState::Failed, "{r:#?}");
    assert!(r.control.cancelled);
    assert!(
        r.cause.as_deref().is_some_and(
            |c| c.contains("cancelled before EXECUTE: UE 192.168.1.2 moved on to edge-x")
        ),
        "{r:#?}"
    );
    assert_eq!(
        x.module.lock().executed,
        0,
        "the service was never asked to move"
    );
    assert_eq!(mesh.service_at(), dnai('x'));
    assert!(
        trombones(x).is_empty(),
        "X withdrew its trombone: {}",
        mesh.dump()
    );
    mesh.check_reachable();
    assert_eq!(x.smo.notification_counts().cancelled, 1);
    assert_eq!(
        mesh.records(RelocationRole::Source).len(),
        1,
        "the re-evaluation found the UE home: nothing more"
    );
}

/// A→B→C on three sites: before EXECUTE the first relocation is cancelled and the re-evaluation
/// sends the service straight to C; during EXECUTE it goes to B, and from B on to C.
#[tokio::test(start_paused = true)]
async fn a_to_b_to_c_ends_at_c_whether_cancelled_or_after_execute() {
    for during_execute in [false, true] {
        let mesh = Mesh::new(&['x', 'y', 'z']);
        let (x, y) = (mesh.site('x'), mesh.site('y'));
        if !during_execute {
            y.flows.set_delay(ms(50));
        }
        let first = mesh.hand_over('y')[0].clone();
        let want = if during_execute {
            Phase::Execute
        } else {
            Phase::Prepare
        };
        wait_until("the first relocation under way", || {
            phase_of(&x.smo, &first) == Some((RelocationState::Running, want))
        })
        .await;
        assert!(mesh.hand_over('z').is_empty());
        mesh.settle().await;

        assert_eq!(mesh.service_at(), dnai('z'), "{}", mesh.dump());
        mesh.check_reachable();
        let first = x.smo.relocation(&first).expect("record");
        let moves = x.module.lock().executed + y.module.lock().executed;
        if during_execute {
            assert_eq!(first.state, RelocationState::Completed);
            assert_eq!(moves, 2, "X→Y, then Y→Z");
        } else {
            assert!(first.control.cancelled, "{first:#?}");
            assert_eq!(moves, 1, "X→Z only");
        }
        let last = mesh
            .records(RelocationRole::Source)
            .into_iter()
            .find(|r| r.target_dnai == dnai('z'))
            .expect("a relocation to Z");
        assert_eq!(last.state, RelocationState::Completed);
        assert_eq!(last.control.trigger, RelocationTrigger::Requeued);
    }
}

/// A→B→A within 100 ms, within 400 ms, and ten ping-pongs in 3 s: whatever the timing, the service
/// ends at the UE's edge, one copy of it, every relocation final, the flows reaching it.
#[tokio::test(start_paused = true)]
async fn ping_pongs_at_any_pace_end_with_the_service_where_the_ue_is() {
    for (gap_ms, handovers) in [(100, 2), (400, 2), (300, 10), (50, 10), (120, 10)] {
        let mesh = Mesh::new(&['x', 'y']);
        let mut to = 'y';
        for _ in 0..handovers {
            mesh.hand_over(to);
            tokio::time::sleep(ms(gap_ms)).await;
            to = if to == 'y' { 'x' } else { 'y' };
        }
        mesh.settle().await;
        let ue_at = mesh
            .shared
            .lr
            .lock()
            .expect("lr")
            .get(&UE)
            .cloned()
            .expect("UE");
        assert_eq!(mesh.service_at(), ue_at, "gap {gap_ms} ms: {}", mesh.dump());
        mesh.check_reachable();
        for role in [RelocationRole::Source, RelocationRole::Target] {
            for r in mesh.records(role) {
                assert_ne!(r.state, RelocationState::Running, "{r:#?}");
            }
        }
        let sources = mesh.records(RelocationRole::Source);
        let moves: usize = mesh.sites.iter().map(|s| s.module.lock().executed).sum();
        eprintln!(
            "{handovers} handovers {gap_ms} ms apart: {} relocations ({} cancelled), {moves} migrations",
            sources.len(),
            sources.iter().filter(|r| r.control.cancelled).count()
        );
    }
}

// ----- the reconciler -----

/// The SMO's reconciler patience (the default config): past it a service is judged.
const SETTLE: Duration = Duration::from_millis(2_000);

/// SMO cookies of relocations (trombones) on a site's switch.
fn trombones(site: &Site) -> Vec<String> {
    site.flows
        .installed()
        .into_iter()
        .filter(|r| smo::routing::rules::is_relocation_cookie(r.cookie))
        .map(|r| r.to_ofctl())
        .collect()
}

fn corrections(c: &[smo::core::reconcile::Correction]) -> Vec<&'static str> {
    c.iter().map(|c| c.action()).collect()
}

/// The brief's crash: edge Y kept its trombone and nobody installed the new path (the target's
/// record says COMPLETED all the same). The UE's packets trombone to X, where the service is not:
/// Y's reconciler swaps the trombone for the direct path.
#[tokio::test(start_paused = true)]
async fn the_reconciler_swaps_a_left_over_trombone_for_the_new_path() {
    let mesh = Mesh::new(&['x', 'y']);
    let y = mesh.site('y');
    let id = mesh.hand_over('y')[0].clone();
    mesh.settle().await;
    let at = ServiceAt::of(&service()).expect("a MAC");
    let cookie = smo::core::cookie_for(&id);
    let mut broken = rules::trombone_target(cookie, &EdgePorts::testbed(), at.ip, at.mac, UE);
    broken.delete.push(smo::routing::CookieDelete {
        cookie: rules::service_cookie(at.ip),
    });
    y.flows.seed(&broken);
    let unreachable =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| mesh.check_reachable()));
    assert!(unreachable.is_err(), "the verdict sees the broken path");
    tokio::time::sleep(SETTLE).await;
    assert_eq!(
        corrections(&y.smo.reconcile().await),
        ["install_direct_path", "remove_trombone"]
    );
    mesh.check_reachable();
    assert!(trombones(y).is_empty());
    assert_eq!(
        corrections(&y.smo.reconcile().await),
        Vec::<&str>::new(),
        "nothing more to do"
    );
    let (runs, tally) = y.smo.reconciler_counts();
    assert_eq!(runs, 2);
    assert_eq!(tally.corrections.get("install_direct_path"), Some(&1));
    assert_eq!(tally.corrections.get("remove_trombone"), Some(&1));
}

/// A relocation FAILED (the target's restore failed): the trombone is the path and stays. The UE
/// goes back to A without a relocation (nothing to move): both halves are now stale and each
/// SMO's reconciler removes its own; later the UE goes to B again and its notification is lost:
/// the reconciler moves the service, once the failure's backoff has passed.
#[tokio::test(start_paused = true)]
async fn the_reconciler_removes_a_stale_trombone_and_moves_a_misplaced_service() {
    let mesh = Mesh::new(&['x', 'y']);
    let (x, y) = (mesh.site('x'), mesh.site('y'));
    x.module.lock().refuse = true;
    let first = mesh.hand_over('y')[0].clone();
    mesh.settle().await;
    assert_eq!(
        x.smo.relocation(&first).map(|r| r.state),
        Some(RelocationState::Failed)
    );
    mesh.check_reachable();
    tokio::time::sleep(SETTLE).await;
    for s in [x, y] {
        assert_eq!(
            corrections(&s.smo.reconcile().await),
            Vec::<&str>::new(),
            "{}: the trombone is the path",
            s.dnai
        );
    }

    mesh.hand_over('x');
    mesh.settle().await;
    assert!(!trombones(x).is_empty() && !trombones(y).is_empty());
    tokio::time::sleep(SETTLE).await;
    assert_eq!(corrections(&x.smo.reconcile().await), ["remove_trombone"]);
    assert_eq!(corrections(&y.smo.reconcile().await), ["remove_trombone"]);
    assert!(
        trombones(x).is_empty() && trombones(y).is_empty(),
        "{}",
        mesh.dump()
    );
    mesh.check_reachable();

    // To B again, the SMF's notification lost: only the LR knows. Within the failure's backoff
    // (10 s) the trombone comes back (X's half, and Y's), so the UE reaches the service; after
    // it, the service moves.
    x.module.lock().refuse = false;
    mesh.shared.lr.lock().expect("lr").insert(UE, dnai('y'));
    assert_eq!(corrections(&x.smo.reconcile().await), ["install_trombone"]);
    assert_eq!(corrections(&y.smo.reconcile().await), ["install_trombone"]);
    mesh.check_reachable();
    tokio::time::sleep(ms(10_000)).await;
    let c = x.smo.reconcile().await;
    assert_eq!(corrections(&c), ["start_relocation"], "the backoff is over");
    mesh.settle().await;
    assert_eq!(mesh.service_at(), dnai('y'));
    mesh.check_reachable();
    let last = x
        .smo
        .relocations()
        .into_iter()
        .last()
        .expect("the reconciler's relocation");
    assert_eq!(last.control.trigger, RelocationTrigger::Reconciler);
    assert_eq!(last.state, RelocationState::Completed);
}

/// A failed relocation is not retried before its backoff, and retries back off.
#[tokio::test(start_paused = true)]
async fn the_reconciler_retries_a_failed_relocation_after_a_growing_backoff() {
    let mesh = Mesh::new(&['x', 'y']);
    let x = mesh.site('x');
    x.module.lock().refuse = true;
    mesh.hand_over('y');
    mesh.settle().await;
    let handle = x.smo.spawn_reconciler(ms(1_000));
    // Failures at ~0 s, then retries 10 s and 20 s after each failure: three in 40 s.
    tokio::time::sleep(ms(40_000)).await;
    let tries = x.module.lock().executed;
    assert_eq!(tries, 3, "{}", mesh.dump());
    x.module.lock().refuse = false;
    tokio::time::sleep(ms(45_000)).await;
    handle.abort();
    mesh.settle().await;
    assert_eq!(
        mesh.service_at(),
        dnai('y'),
        "the fourth try, 40 s after the third"
    );
    mesh.check_reachable();
}

/// Ten ping-pongs with every SMO's reconciler running: in the end the service is where the UE
/// is, every record final, and no trombone or stray direct path is left anywhere.
#[tokio::test(start_paused = true)]
async fn after_ping_pongs_the_reconcilers_leave_only_the_services_path() {
    for gap_ms in [50, 120, 300] {
        let mesh = Mesh::new(&['x', 'y']);
        mesh.site('y').flows.set_delay(ms(20));
        let handles: Vec<_> = mesh
            .sites
            .iter()
            .map(|s| s.smo.spawn_reconciler(ms(1_000)))
            .collect();
        let mut to = 'y';
        for _ in 0..10 {
            mesh.hand_over(to);
            tokio::time::sleep(ms(gap_ms)).await;
            to = if to == 'y' { 'x' } else { 'y' };
        }
        mesh.settle().await;
        tokio::time::sleep(SETTLE + ms(2_000)).await;
        mesh.settle().await;
        for h in handles {
            h.abort();
        }
        let ue_at = mesh
            .shared
            .lr
            .lock()
            .expect("lr")
            .get(&UE)
            .cloned()
            .expect("UE");
        assert_eq!(mesh.service_at(), ue_at, "gap {gap_ms}: {}", mesh.dump());
        mesh.check_reachable();
        for s in &mesh.sites {
            assert!(trombones(s).is_empty(), "gap {gap_ms}: {}", mesh.dump());
            let paths = s.flows.installed().len();
            let want = if s.dnai == ue_at { 2 } else { 0 };
            assert_eq!(
                paths,
                want,
                "gap {gap_ms}: only the direct path, where the service is: {}",
                mesh.dump()
            );
            for r in s.smo.relocations() {
                assert_ne!(r.state, RelocationState::Running);
            }
        }
        let cancelled = mesh
            .records(RelocationRole::Source)
            .iter()
            .filter(|r| r.control.cancelled)
            .count();
        let fixed: u64 = mesh
            .sites
            .iter()
            .map(|s| {
                s.smo
                    .reconciler_counts()
                    .1
                    .corrections
                    .values()
                    .sum::<u64>()
            })
            .sum();
        eprintln!("gap {gap_ms} ms: {cancelled} cancelled, {fixed} reconciler corrections");
    }
}

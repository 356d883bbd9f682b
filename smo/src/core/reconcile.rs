//! The reconciler's decision (STYLE.md item 15): a pure function from what one SMO observed — the
//! services its modules say run here (GetServices), where the LR says their UEs are, its
//! relocation records, and the SMO flows its switch holds — to the corrections that make the
//! switch and the service database what they should be. Notifications are hints; this is the
//! truth. The driver (`negotiator::reconcile`) observes at start and every period, applies the
//! corrections, logs and counts each one.
//!
//! What should be, at this edge:
//! * every service running here has its **direct path** (`rules::direct_path`, the service
//!   cookie), and a service cookie of a service that does not run here is removed;
//! * a relocation's **trombone** (its cookie) stays only while it is useful: the relocation
//!   FAILED (not cancelled), it is the service's latest here, the UE is still at the target's
//!   site (the LR), and the service still runs at the source (here for the source's half, not
//!   here for the target's). Then a missing or altered half is installed again; otherwise the
//!   trombone goes, and so does any SMO relocation cookie no record here explains;
//! * a service runs at the edge of its UEs' site: when every UE it serves whose site the LR knows
//!   is at one other edge that a peer serves, a **relocation** starts — after a failed one only
//!   once its backoff has passed ([`Policy::retry_after_us`]);
//! * the service database lists exactly the services running here.
//!
//! Hands off: whatever belongs to a service with a relocation running here (its machine owns it)
//! or one that ended less than [`Policy::settle_us`] ago (the modules' and the switch's view may
//! lag the records). "Does not run here" needs every module's answer: a module that did not
//! answer leaves those decisions for a later round.

use super::{cookie_for, Local};
use crate::routing::rules::{self, ServiceAt};
use crate::routing::{FlowRule, FlowSet, InstalledFlows};
use model::common::Dnai;
use model::smo::{RelocationRecord, RelocationRole, RelocationState, Service};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

/// How patient the reconciler is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// A service whose relocation ended less than this ago is left alone.
    pub settle_us: u64,
    /// After a failed relocation of a service, the next one waits this long, doubling with every
    /// further failure up to `retry_max_us`.
    pub retry_first_us: u64,
    pub retry_max_us: u64,
    /// A round is put off while a relocation that began less than this ago runs here.
    pub defer_us: u64,
}

impl Policy {
    /// The wait before another relocation of a service whose last `failures` relocations failed.
    pub fn retry_after_us(&self, failures: u32) -> u64 {
        if failures == 0 {
            return 0;
        }
        self.retry_first_us
            .saturating_mul(1u64 << (failures - 1).min(20))
            .min(self.retry_max_us)
    }
}

/// How a service's relocations here ended lately (kept by the driver, on its clock).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ended {
    /// When the latest ended, µs.
    pub at_us: u64,
    /// Source relocations of it that failed in a row (not counting cancelled ones); 0 after a
    /// completed one.
    pub failures: u32,
}

/// One service a module here lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hosted {
    pub module_id: String,
    pub service: Service,
}

/// What one round observed.
#[derive(Debug, Clone)]
pub struct Observed<'a> {
    pub local: &'a Local,
    /// µs on the driver's clock (the one [`Ended::at_us`] uses).
    pub now_us: u64,
    /// The services the modules that answered list.
    pub hosted: &'a [Hosted],
    /// Whether every registered module answered (else nothing is judged absent).
    pub all_modules_answered: bool,
    /// The service database: service id → module id.
    pub database: &'a BTreeMap<String, String>,
    /// Every relocation record here, oldest first.
    pub relocations: &'a [RelocationRecord],
    /// Where the LR says UEs are; a UE it could not tell about is missing.
    pub locations: &'a BTreeMap<Ipv4Addr, Dnai>,
    pub flows: &'a InstalledFlows,
    /// The DNAIs some peer serves (a relocation needs one).
    pub peer_dnais: &'a BTreeSet<Dnai>,
    /// Per service id, how its relocations here ended lately.
    pub ended: &'a BTreeMap<String, Ended>,
    pub policy: Policy,
}

/// What a flow correction repairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Repair {
    InstallDirectPath,
    RemoveDirectPath,
    InstallTrombone,
    RemoveTrombone,
}

/// One correction.
#[derive(Debug, Clone, PartialEq)]
pub enum Correction {
    /// Apply `set` on this edge's switch.
    Flows {
        repair: Repair,
        /// The service (or, for an orphan cookie, nothing) it concerns.
        service_id: Option<String>,
        /// The relocation whose trombone it is.
        relocation_id: Option<String>,
        set: FlowSet,
    },
    /// Relocate `service` (hosted by `module_id`) towards `to`, where its UE `ue` is.
    StartRelocation {
        module_id: String,
        service: Service,
        ue: Ipv4Addr,
        to: Dnai,
    },
    /// Add a service that runs here to the service database.
    Adopt { module_id: String, service: Service },
    /// Drop a service that does not run here from the service database.
    Forget { service_id: String },
}

/// Every [`Correction::action`].
pub const ACTIONS: [&str; 7] = [
    "install_direct_path",
    "remove_direct_path",
    "install_trombone",
    "remove_trombone",
    "start_relocation",
    "adopt_service",
    "forget_service",
];

/// What the driver counts as a reconciler error: reading the switch's flows, a module's
/// GetServices, an LR lookup, applying a correction's flows.
pub const ERRORS: [&str; 4] = ["switch", "module", "lr", "apply"];

impl Correction {
    /// Its name in logs and in `smo_reconciler_corrections_total{action}`.
    pub fn action(&self) -> &'static str {
        match self {
            Self::Flows { repair, .. } => match repair {
                Repair::InstallDirectPath => "install_direct_path",
                Repair::RemoveDirectPath => "remove_direct_path",
                Repair::InstallTrombone => "install_trombone",
                Repair::RemoveTrombone => "remove_trombone",
            },
            Self::StartRelocation { .. } => "start_relocation",
            Self::Adopt { .. } => "adopt_service",
            Self::Forget { .. } => "forget_service",
        }
    }

    /// The service it concerns, if one.
    pub fn service_id(&self) -> Option<&str> {
        match self {
            Self::Flows { service_id, .. } => service_id.as_deref(),
            Self::StartRelocation { service, .. } | Self::Adopt { service, .. } => {
                Some(&service.service_id)
            }
            Self::Forget { service_id } => Some(service_id),
        }
    }
}

/// Every correction `o` calls for.
pub fn decide(o: &Observed<'_>) -> Vec<Correction> {
    let mut out = Vec::new();
    let running: BTreeSet<&str> = o
        .relocations
        .iter()
        .filter(|r| r.state == RelocationState::Running)
        .map(|r| r.service.service_id.as_str())
        .collect();
    let busy = |service_id: &str| {
        running.contains(service_id)
            || o.ended
                .get(service_id)
                .is_some_and(|e| o.now_us.saturating_sub(e.at_us) < o.policy.settle_us)
    };
    // Services by address (several records may name the same service).
    let mut by_ip: BTreeMap<Ipv4Addr, &str> = BTreeMap::new();
    for r in o.relocations {
        by_ip.insert(r.service.ipv4_addr, &r.service.service_id);
    }
    let hosted_ids: BTreeSet<&str> = o
        .hosted
        .iter()
        .map(|h| h.service.service_id.as_str())
        .collect();
    let installed = group_by_cookie(&o.flows.rules);
    let unreadable: BTreeSet<u64> = o.flows.unreadable.iter().copied().collect();
    let differs = |cookie: u64, want: &[FlowRule]| {
        unreadable.contains(&cookie) || !same_rules(installed.get(&cookie).map(Vec::as_slice), want)
    };

    // Services that run here: their direct path, their place, the database.
    let mut seen = BTreeSet::new();
    for h in o.hosted {
        let s = &h.service;
        if !seen.insert(s.service_id.as_str()) || busy(&s.service_id) {
            continue;
        }
        if let Some(at) = ServiceAt::of(s) {
            let set = rules::direct_path(&o.local.ports, &at);
            if differs(rules::service_cookie(s.ipv4_addr), &set.add) {
                out.push(Correction::Flows {
                    repair: Repair::InstallDirectPath,
                    service_id: Some(s.service_id.clone()),
                    relocation_id: None,
                    set,
                });
            }
        }
        if !o.database.contains_key(&s.service_id) {
            out.push(Correction::Adopt {
                module_id: h.module_id.clone(),
                service: s.clone(),
            });
        }
        if let Some((ue, to)) = misplaced(o, s) {
            let backoff = o.ended.get(&s.service_id).is_some_and(|e| {
                o.now_us.saturating_sub(e.at_us) < o.policy.retry_after_us(e.failures)
            });
            if !backoff {
                out.push(Correction::StartRelocation {
                    module_id: h.module_id.clone(),
                    service: s.clone(),
                    ue,
                    to,
                });
            }
        }
    }

    if o.all_modules_answered {
        // Direct paths and database entries of services that do not run here.
        for cookie in installed.keys() {
            let Some(ip) = rules::service_of_cookie(*cookie) else {
                continue;
            };
            let here = o.hosted.iter().any(|h| h.service.ipv4_addr == ip);
            let owner = by_ip.get(&ip).copied();
            if here || owner.is_some_and(busy) {
                continue;
            }
            out.push(Correction::Flows {
                repair: Repair::RemoveDirectPath,
                service_id: owner.map(str::to_owned),
                relocation_id: None,
                set: labelled(rules::withdraw(*cookie), "stale-direct-path"),
            });
        }
        for id in o.database.keys() {
            if !hosted_ids.contains(id.as_str()) && !busy(id) {
                out.push(Correction::Forget {
                    service_id: id.clone(),
                });
            }
        }
    }

    // Trombones: only a useful one stays; none without a record.
    let latest = latest_per_service(o.relocations);
    let mut explained = BTreeSet::new();
    for r in o.relocations {
        let cookie = cookie_for(&r.relocation_id);
        explained.insert(cookie);
        if r.state == RelocationState::Running || busy(&r.service.service_id) {
            continue;
        }
        let present = installed.contains_key(&cookie) || unreadable.contains(&cookie);
        let Some(useful) = trombone_useful(o, r, &latest, &hosted_ids) else {
            continue;
        };
        if useful {
            let Some(set) = failure_trombone(o.local, r) else {
                continue;
            };
            if differs(cookie, &set.add) {
                out.push(Correction::Flows {
                    repair: Repair::InstallTrombone,
                    service_id: Some(r.service.service_id.clone()),
                    relocation_id: Some(r.relocation_id.clone()),
                    set: FlowSet {
                        // Replace whatever the cookie holds.
                        delete: vec![crate::routing::CookieDelete { cookie }],
                        ..set
                    },
                });
            }
        } else if present {
            out.push(Correction::Flows {
                repair: Repair::RemoveTrombone,
                service_id: Some(r.service.service_id.clone()),
                relocation_id: Some(r.relocation_id.clone()),
                set: labelled(rules::withdraw(cookie), "stale-trombone"),
            });
        }
    }
    let cookies: BTreeSet<u64> = installed.keys().chain(unreadable.iter()).copied().collect();
    for cookie in cookies {
        if rules::is_relocation_cookie(cookie) && !explained.contains(&cookie) {
            out.push(Correction::Flows {
                repair: Repair::RemoveTrombone,
                service_id: None,
                relocation_id: None,
                set: labelled(rules::withdraw(cookie), "orphan-trombone"),
            });
        }
    }
    out
}

/// `(ue, dnai)` when every UE of `s` the LR knows is at one other edge a peer serves.
fn misplaced(o: &Observed<'_>, s: &Service) -> Option<(Ipv4Addr, Dnai)> {
    let mut known = s
        .ue_ipv4_addrs
        .iter()
        .filter_map(|ue| o.locations.get(ue).map(|d| (*ue, d)));
    let (ue, to) = known.next()?;
    if known.any(|(_, d)| d != to) || to == &o.local.dnai || !o.peer_dnais.contains(to) {
        return None;
    }
    Some((ue, to.clone()))
}

/// The latest relocation record of each service here.
fn latest_per_service(relocations: &[RelocationRecord]) -> BTreeMap<&str, &str> {
    let mut latest: BTreeMap<&str, (u64, &str)> = BTreeMap::new();
    for r in relocations {
        let e = latest
            .entry(r.service.service_id.as_str())
            .or_insert((r.started_unix_us, r.relocation_id.as_str()));
        if r.started_unix_us >= e.0 {
            *e = (r.started_unix_us, r.relocation_id.as_str());
        }
    }
    latest.into_iter().map(|(k, (_, id))| (k, id)).collect()
}

/// Whether `r`'s trombone half here still carries the UE's traffic; `None` when that cannot be
/// told this round (the LR does not know the UE, or a module did not answer).
fn trombone_useful(
    o: &Observed<'_>,
    r: &RelocationRecord,
    latest: &BTreeMap<&str, &str>,
    hosted_ids: &BTreeSet<&str>,
) -> Option<bool> {
    let failed_for_real = r.state == RelocationState::Failed && !r.control.cancelled;
    let is_latest = latest.get(r.service.service_id.as_str()) == Some(&r.relocation_id.as_str());
    if !failed_for_real || !is_latest {
        return Some(false);
    }
    let ue_at_target = o.locations.get(&r.ue_ipv4_addr)? == &r.target_dnai;
    let here = hosted_ids.contains(r.service.service_id.as_str());
    if !here && !o.all_modules_answered {
        return None;
    }
    let at_source = match r.role {
        RelocationRole::Source => here,
        RelocationRole::Target => !here,
    };
    Some(ue_at_target && at_source)
}

/// The trombone half FAILURE leaves at this edge for `r`.
fn failure_trombone(local: &Local, r: &RelocationRecord) -> Option<FlowSet> {
    let at = ServiceAt::of(&r.service)?;
    let cookie = cookie_for(&r.relocation_id);
    let set = match r.role {
        RelocationRole::Source => rules::trombone_source(cookie, &local.ports, &at, r.ue_ipv4_addr),
        RelocationRole::Target => {
            rules::trombone_target(cookie, &local.ports, at.ip, at.mac, r.ue_ipv4_addr)
        }
    };
    Some(labelled(set, "restore-trombone"))
}

fn labelled(mut set: FlowSet, label: &str) -> FlowSet {
    set.label = label.to_owned();
    set
}

fn group_by_cookie(rules: &[FlowRule]) -> BTreeMap<u64, Vec<FlowRule>> {
    let mut by: BTreeMap<u64, Vec<FlowRule>> = BTreeMap::new();
    for r in rules {
        by.entry(r.cookie).or_default().push(r.clone());
    }
    by
}

/// The same rules, in any order.
fn same_rules(have: Option<&[FlowRule]>, want: &[FlowRule]) -> bool {
    let key = |rs: &[FlowRule]| {
        let mut v: Vec<String> = rs.iter().map(FlowRule::to_ofctl).collect();
        v.sort();
        v
    };
    key(have.unwrap_or_default()) == key(want)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::rules::EdgePorts;
    use model::smo::{PhaseTiming, RelocationControl, RelocationPhase, RelocationType};

    const UE: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);
    const SETTLE: u64 = 2_000_000;
    const POLICY: Policy = Policy {
        settle_us: SETTLE,
        retry_first_us: 10_000_000,
        retry_max_us: 300_000_000,
        defer_us: 30_000_000,
    };

    fn local(edge: &str) -> Local {
        Local {
            smo_id: format!("smo-{edge}"),
            dnai: Dnai::new(format!("edge-{edge}")),
            api_root: "http://smo.invalid".into(),
            ports: EdgePorts::testbed(),
        }
    }

    fn service() -> Service {
        Service {
            service_id: "svc-1".into(),
            ipv4_addr: Ipv4Addr::new(20, 0, 0, 10),
            mac_addr: "02:00:00:00:00:0a".into(),
            ovs_port: "svc1".into(),
            relocation_type: RelocationType::Test,
            resource_requirements: Default::default(),
            ue_ipv4_addrs: vec![UE],
        }
    }

    fn record(id: &str, role: RelocationRole, state: RelocationState) -> RelocationRecord {
        RelocationRecord {
            relocation_id: id.into(),
            role,
            state,
            phase: RelocationPhase::Failure,
            ue_ipv4_addr: UE,
            source_dnai: Dnai::new("edge-x"),
            target_dnai: Dnai::new("edge-y"),
            peer: None,
            service: service(),
            module_id: None,
            target_module_address: None,
            started_unix_us: 1,
            phases: vec![PhaseTiming {
                phase: RelocationPhase::Failure,
                start_us: 0,
                took_us: 1,
                flow_install_us: None,
                flow_mods: 0,
            }],
            peer_phases: Vec::new(),
            total_us: None,
            execute: None,
            cause: None,
            control: RelocationControl::default(),
            af_ack: None,
        }
    }

    /// One SMO's state, to observe.
    struct World {
        local: Local,
        hosted: Vec<Hosted>,
        all_answered: bool,
        database: BTreeMap<String, String>,
        relocations: Vec<RelocationRecord>,
        locations: BTreeMap<Ipv4Addr, Dnai>,
        flows: InstalledFlows,
        peers: BTreeSet<Dnai>,
        ended: BTreeMap<String, Ended>,
        now_us: u64,
    }

    impl World {
        fn at(edge: &str) -> Self {
            Self {
                local: local(edge),
                hosted: Vec::new(),
                all_answered: true,
                database: BTreeMap::new(),
                relocations: Vec::new(),
                locations: BTreeMap::new(),
                flows: InstalledFlows::default(),
                peers: ["edge-x", "edge-y", "edge-z"]
                    .into_iter()
                    .map(Dnai::new)
                    .filter(|d| d != &local(edge).dnai)
                    .collect(),
                ended: BTreeMap::new(),
                now_us: 100_000_000,
            }
        }

        fn hosting(mut self) -> Self {
            self.hosted.push(Hosted {
                module_id: "module-1".into(),
                service: service(),
            });
            self.database.insert("svc-1".into(), "module-1".into());
            self
        }

        fn ue_at(mut self, edge: &str) -> Self {
            self.locations.insert(UE, Dnai::new(format!("edge-{edge}")));
            self
        }

        fn with_flows(mut self, set: &FlowSet) -> Self {
            self.flows.rules.extend(set.add.iter().cloned());
            self
        }

        fn with_direct_path(self) -> Self {
            let set = rules::direct_path(&EdgePorts::testbed(), &svc_at());
            self.with_flows(&set)
        }

        fn decide(&self) -> Vec<Correction> {
            decide(&Observed {
                local: &self.local,
                now_us: self.now_us,
                hosted: &self.hosted,
                all_modules_answered: self.all_answered,
                database: &self.database,
                relocations: &self.relocations,
                locations: &self.locations,
                flows: &self.flows,
                peer_dnais: &self.peers,
                ended: &self.ended,
                policy: POLICY,
            })
        }
    }

    fn svc_at() -> ServiceAt {
        ServiceAt::of(&service()).expect("a MAC")
    }

    fn actions(c: &[Correction]) -> Vec<&'static str> {
        c.iter().map(Correction::action).collect()
    }

    #[test]
    fn all_in_order_means_nothing_to_do() {
        let w = World::at("x").hosting().ue_at("x").with_direct_path();
        assert_eq!(w.decide(), []);
        // The same with the LR silent about the UE.
        let w = World::at("x").hosting().with_direct_path();
        assert_eq!(w.decide(), []);
    }

    #[test]
    fn a_missing_or_altered_direct_path_is_installed_again() {
        let w = World::at("x").hosting().ue_at("x");
        let c = w.decide();
        assert_eq!(actions(&c), ["install_direct_path"]);
        let Correction::Flows { set, .. } = &c[0] else {
            unreachable!()
        };
        assert_eq!(
            set.delete[0].cookie,
            rules::service_cookie(service().ipv4_addr)
        );
        assert_eq!(
            set.add,
            rules::direct_path(&EdgePorts::testbed(), &svc_at()).add
        );
        // One of its two rules gone, or pointing at a renumbered port: the same.
        let mut w = World::at("x").hosting().ue_at("x").with_direct_path();
        w.flows.rules.pop();
        assert_eq!(actions(&w.decide()), ["install_direct_path"]);
        let mut w = World::at("x").hosting().ue_at("x").with_direct_path();
        w.flows.rules[0].actions = vec![crate::routing::FlowAction::Output("#7".into())];
        assert_eq!(actions(&w.decide()), ["install_direct_path"]);
        let mut w = World::at("x").hosting().ue_at("x").with_direct_path();
        w.flows
            .unreadable
            .push(rules::service_cookie(service().ipv4_addr));
        assert_eq!(actions(&w.decide()), ["install_direct_path"]);
    }

    #[test]
    fn a_service_at_the_wrong_edge_is_relocated_after_its_backoff() {
        let w = World::at("x").hosting().ue_at("y").with_direct_path();
        let c = w.decide();
        assert_eq!(
            c,
            [Correction::StartRelocation {
                module_id: "module-1".into(),
                service: service(),
                ue: UE,
                to: Dnai::new("edge-y"),
            }]
        );
        // Not towards a DNAI no peer serves, not while the LR cannot tell.
        let w = World::at("x").hosting().ue_at("q").with_direct_path();
        assert_eq!(w.decide(), []);
        // Two failures 15 s ago: the backoff is 20 s; 25 s after them it is over.
        let mut w = World::at("x").hosting().ue_at("y").with_direct_path();
        w.ended.insert(
            "svc-1".into(),
            Ended {
                at_us: w.now_us - 15_000_000,
                failures: 2,
            },
        );
        assert_eq!(w.decide(), []);
        w.now_us += 10_000_000;
        assert_eq!(actions(&w.decide()), ["start_relocation"]);
        assert_eq!(POLICY.retry_after_us(1), 10_000_000);
        assert_eq!(POLICY.retry_after_us(30), 300_000_000);
    }

    #[test]
    fn a_service_serving_ues_at_different_edges_stays() {
        let mut w = World::at("x").hosting().ue_at("y").with_direct_path();
        let other = Ipv4Addr::new(192, 168, 1, 3);
        w.hosted[0].service.ue_ipv4_addrs.push(other);
        w.locations.insert(other, Dnai::new("edge-z"));
        assert_eq!(w.decide(), []);
    }

    #[test]
    fn a_stale_trombone_goes_and_a_useful_one_stays_or_comes_back() {
        let id = "smo-x-3";
        let trombone = rules::trombone_source(cookie_for(id), &EdgePorts::testbed(), &svc_at(), UE);
        let failed = record(id, RelocationRole::Source, RelocationState::Failed);
        // Failed, the UE still at the target's site, the service here: the trombone is the path.
        let mut w = World::at("x")
            .hosting()
            .ue_at("y")
            .with_direct_path()
            .with_flows(&trombone);
        w.relocations.push(failed.clone());
        w.ended.insert(
            "svc-1".into(),
            Ended {
                at_us: 0,
                failures: 1,
            },
        );
        assert_eq!(
            actions(&w.decide()),
            ["start_relocation"],
            "a retry, the trombone kept"
        );
        w.flows.rules.retain(|r| r.cookie != cookie_for(id));
        assert_eq!(
            actions(&w.decide()),
            ["start_relocation", "install_trombone"]
        );
        // The UE came back: the trombone is stale.
        let mut w = World::at("x")
            .hosting()
            .ue_at("x")
            .with_direct_path()
            .with_flows(&trombone);
        w.relocations.push(failed.clone());
        let c = w.decide();
        assert_eq!(actions(&c), ["remove_trombone"]);
        let Correction::Flows {
            set, relocation_id, ..
        } = &c[0]
        else {
            unreachable!()
        };
        assert_eq!(relocation_id.as_deref(), Some(id));
        assert_eq!(set.delete[0].cookie, cookie_for(id));
        assert!(set.add.is_empty());
        // A cancelled one, and one a newer relocation of the service superseded: stale too.
        let mut w = World::at("x")
            .hosting()
            .ue_at("y")
            .with_direct_path()
            .with_flows(&trombone);
        let mut cancelled = failed.clone();
        cancelled.control.cancelled = true;
        w.relocations.push(cancelled);
        w.ended.insert(
            "svc-1".into(),
            Ended {
                at_us: 0,
                failures: 0,
            },
        );
        assert_eq!(
            actions(&w.decide()),
            ["start_relocation", "remove_trombone"]
        );
        let mut w = World::at("x")
            .hosting()
            .ue_at("x")
            .with_direct_path()
            .with_flows(&trombone);
        let mut newer = record(
            "smo-x-4",
            RelocationRole::Source,
            RelocationState::Completed,
        );
        newer.started_unix_us = 2;
        w.relocations.push(failed);
        w.relocations.push(newer);
        assert_eq!(actions(&w.decide()), ["remove_trombone"]);
    }

    #[test]
    fn the_targets_half_follows_the_same_rules() {
        let id = "smo-x-3";
        let half = rules::trombone_target(
            cookie_for(id),
            &EdgePorts::testbed(),
            svc_at().ip,
            svc_at().mac,
            UE,
        );
        let failed = record(id, RelocationRole::Target, RelocationState::Failed);
        // At Y, the service not here, the UE here: keep; missing: restore.
        let mut w = World::at("y").ue_at("y").with_flows(&half);
        w.relocations.push(failed.clone());
        assert_eq!(w.decide(), []);
        w.flows.rules.clear();
        assert_eq!(actions(&w.decide()), ["install_trombone"]);
        // The service arrived here after all (it runs here now): the trombone goes.
        let mut w = World::at("y")
            .hosting()
            .ue_at("y")
            .with_direct_path()
            .with_flows(&half);
        w.relocations.push(failed.clone());
        assert_eq!(actions(&w.decide()), ["remove_trombone"]);
        // A module did not answer: the service may run here; no judgement this round.
        let mut w = World::at("y").ue_at("x").with_flows(&half);
        w.relocations.push(failed);
        w.all_answered = false;
        assert_eq!(w.decide(), []);
        w.all_answered = true;
        assert_eq!(actions(&w.decide()), ["remove_trombone"]);
    }

    #[test]
    fn a_running_or_just_ended_relocation_is_left_to_its_machine() {
        let id = "smo-x-3";
        let trombone = rules::trombone_source(cookie_for(id), &EdgePorts::testbed(), &svc_at(), UE);
        // Running: its trombone, the service's path and place are the machine's.
        let mut w = World::at("x").hosting().ue_at("y").with_flows(&trombone);
        w.relocations
            .push(record(id, RelocationRole::Source, RelocationState::Running));
        assert_eq!(w.decide(), []);
        // Ended a second ago (settling); 3 s later the stale trombone goes.
        let mut w = World::at("x").ue_at("y").with_flows(&trombone);
        w.relocations.push(record(
            id,
            RelocationRole::Source,
            RelocationState::Completed,
        ));
        w.ended.insert(
            "svc-1".into(),
            Ended {
                at_us: w.now_us - 1_000_000,
                failures: 0,
            },
        );
        assert_eq!(w.decide(), []);
        w.now_us += 2_000_000;
        assert_eq!(actions(&w.decide()), ["remove_trombone"]);
    }

    #[test]
    fn what_runs_elsewhere_leaves_this_switch_and_the_database() {
        // The direct path and database entry of a service no module here lists.
        let mut w = World::at("y").ue_at("y").with_direct_path();
        w.database.insert("svc-1".into(), "module-1".into());
        w.relocations.push(record(
            "smo-x-3",
            RelocationRole::Target,
            RelocationState::Completed,
        ));
        let c = w.decide();
        assert_eq!(actions(&c), ["remove_direct_path", "forget_service"]);
        assert_eq!(c[0].service_id(), Some("svc-1"));
        // Unless a module did not answer.
        w.all_answered = false;
        assert_eq!(w.decide(), []);
        // A service that runs here but is not in the database is adopted.
        let mut w = World::at("x").hosting().ue_at("x").with_direct_path();
        w.database.clear();
        assert_eq!(actions(&w.decide()), ["adopt_service"]);
    }

    #[test]
    fn an_smo_cookie_no_record_explains_is_removed() {
        let orphan = rules::trombone_target(
            rules::relocation_cookie(77),
            &EdgePorts::testbed(),
            svc_at().ip,
            svc_at().mac,
            UE,
        );
        let w = World::at("y").ue_at("y").with_flows(&orphan);
        let c = w.decide();
        assert_eq!(actions(&c), ["remove_trombone"]);
        let Correction::Flows {
            set, service_id, ..
        } = &c[0]
        else {
            unreachable!()
        };
        assert_eq!(set.label, "orphan-trombone");
        assert_eq!(*service_id, None);
        // Unreadable ones too.
        let mut w = World::at("y");
        w.flows.unreadable.push(rules::relocation_cookie(78));
        assert_eq!(actions(&w.decide()), ["remove_trombone"]);
    }
}

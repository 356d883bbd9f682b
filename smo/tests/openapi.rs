//! `smo/openapi.yaml`: it parses, describes exactly the routes the router serves plus the
//! service-module callbacks, every `$ref` resolves, and the JSON of every SMO type (serialised
//! from Rust values) matches its schema — while wrong bodies do not.

mod common;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use common::{schemas, smo_schema};
use model::common::{DateTime, DnaiChangeType, RouteToLocation};
use model::nsmf_event_exposure::EventNotification;
use model::ran::TimelineStep;
use model::smo::{
    AfAckRecord, ExecuteReport, ExecuteRequest, PeerInfo, PeerRelocationAnswer,
    PeerRelocationMessage, PeerResult, PhaseTiming, RelocationControl, RelocationPhase,
    RelocationRecord, RelocationRole, RelocationState, RelocationTrigger, RelocationType,
    ResourceRequirements, Service, ServiceModule, ServiceModuleRegistration,
};
use model::traffic_influence::AfResultStatus;
use serde_json::{json, Value};
use smo::store::HostedService;

fn document() -> Value {
    let text = std::fs::read_to_string(common::openapi_path()).expect("read openapi.yaml");
    serde_norway::from_str(&text).expect("openapi.yaml parses")
}

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn service() -> Service {
    Service {
        service_id: "svc-1".into(),
        ipv4_addr: Ipv4Addr::new(20, 0, 0, 10),
        mac_addr: "02:00:14:00:00:0a".into(),
        ovs_port: "srv".into(),
        relocation_type: RelocationType::Criu,
        resource_requirements: ResourceRequirements {
            cpu_millis: 500,
            memory_mb: 256,
            disk_mb: 0,
        },
        ue_ipv4_addrs: vec![Ipv4Addr::new(192, 168, 1, 2)],
    }
}

fn registration() -> ServiceModuleRegistration {
    ServiceModuleRegistration {
        relocation_type: RelocationType::Criu,
        resource_requirements: ResourceRequirements::default(),
        get_service_notif_uri: "http://10.0.1.2:9100/criu/v1/services".into(),
        served_service_notif_uri: "http://10.0.1.2:9100/criu/v1/served".into(),
        execute_notif_uri: "http://10.0.1.2:9100/criu/v1/execute".into(),
        notif_address: "10.0.1.2:9100".parse().expect("addr"),
    }
}

fn notification() -> EventNotification {
    let mut n = EventNotification::up_path_change(
        DnaiChangeType::Late,
        Ipv4Addr::new(192, 168, 1, 2),
        RouteToLocation::new("edge-x", Ipv4Addr::new(10, 90, 0, 2), 2152),
        RouteToLocation::new("edge-y", Ipv4Addr::new(10, 90, 0, 3), 2152),
        DateTime::from_unix(1_800_000_000, 0).expect("in range"),
    );
    n.pdu_se_id = Some(1);
    n
}

fn report() -> ExecuteReport {
    ExecuteReport {
        took_us: 180_000,
        bytes_moved: Some(1_600_000),
        steps: vec![TimelineStep {
            step: "dump".into(),
            at_us: 0,
            took_us: 90_000,
            at_unix_us: Some(1_800_000_000_000_000),
        }],
    }
}

fn peer() -> PeerInfo {
    PeerInfo {
        smo_id: "smo-y".into(),
        dnai: "edge-y".into(),
        api_root: "http://10.100.0.43:8090".into(),
        cost: 1,
    }
}

fn timing(phase: RelocationPhase) -> PhaseTiming {
    PhaseTiming {
        phase,
        start_us: 10,
        took_us: 1_000,
        flow_install_us: Some(400),
        flow_mods: 6,
    }
}

fn record() -> RelocationRecord {
    RelocationRecord {
        relocation_id: "smo-x-3".into(),
        role: RelocationRole::Source,
        state: RelocationState::Completed,
        phase: RelocationPhase::Complete,
        ue_ipv4_addr: Ipv4Addr::new(192, 168, 1, 2),
        source_dnai: "edge-x".into(),
        target_dnai: "edge-y".into(),
        peer: Some(peer()),
        service: service(),
        module_id: Some("module-1".into()),
        target_module_address: Some("10.0.1.3:9100".parse().expect("addr")),
        started_unix_us: 1_800_000_000_000_000,
        phases: RelocationPhase::SUCCESS_PATH.map(timing).to_vec(),
        peer_phases: RelocationPhase::SUCCESS_PATH.map(timing).to_vec(),
        total_us: Some(250_000),
        execute: Some(report()),
        cause: Some("COMPLETE flows: slow switch".into()),
        control: RelocationControl {
            trigger: RelocationTrigger::Requeued,
            coalesced: 2,
            redrives: 1,
            cancelled: false,
        },
        af_ack: Some(AfAckRecord {
            af_ack_uri: "http://10.100.0.10:8002/3gpp-traffic-influence/v1/smo-x/subscriptions/sub-1/acks/ack-1".into(),
            af_status: Some(AfResultStatus::Success),
            sent_us: Some(240_000),
            answer: Some("204".into()),
        }),
    }
}

fn to_json(v: &impl serde::Serialize) -> Value {
    serde_json::to_value(v).expect("serialise")
}

#[test]
fn it_is_openapi_3_0_and_describes_exactly_the_routes_served() {
    let doc = document();
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.0")),
        "{}",
        doc["openapi"]
    );
    let mut described = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (key, _) in item.as_object().expect("path item") {
            if METHODS.contains(&key.as_str()) {
                described.insert((key.to_uppercase(), path.clone()));
            }
        }
    }
    let served: BTreeSet<(String, String)> = smo::api::ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(described, served, "openapi.yaml paths vs api::ROUTES");
    // The document served at /openapi.yaml is this file.
    assert_eq!(
        smo::api::OPENAPI_YAML,
        std::fs::read_to_string(common::openapi_path()).expect("read")
    );
}

#[test]
fn the_service_module_callbacks_are_described() {
    let doc = document();
    let callbacks = &doc["paths"]["/service-mobility/v1/service-modules"]["post"]["callbacks"];
    let get_services = &callbacks["getServices"]["{$request.body#/getServiceNotifUri}"]["get"];
    assert_eq!(
        get_services["responses"]["200"]["content"]["application/json"]["schema"]["items"]["$ref"],
        "#/components/schemas/Service"
    );
    let served = &callbacks["servedService"]["{$request.body#/servedServiceNotifUri}"]["get"];
    assert_eq!(served["parameters"][0]["name"], "ueIpv4Addr");
    assert!(served["responses"]["404"].is_object());
    let execute = &callbacks["execute"]["{$request.body#/executeNotifUri}"]["post"];
    assert_eq!(
        execute["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/ExecuteRequest"
    );
    assert_eq!(
        execute["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/ExecuteReport"
    );
    for op in [get_services, served, execute] {
        assert_eq!(op["tags"][0], "service-module callbacks");
    }
}

/// Every `$ref` anywhere in the document (paths, responses, callbacks, schemas).
fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, v) in o {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push(r.clone()),
                    _ => refs(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[test]
fn every_reference_resolves() {
    let doc = document();
    let s = schemas();
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(all.len() > 50, "{}", all.len());
    for r in all {
        if let Some(local) = r.strip_prefix("#/components/") {
            let (kind, name) = local.split_once('/').expect("kind/name");
            assert!(
                doc["components"][kind][name].is_object(),
                "{r} does not resolve"
            );
        } else {
            assert!(s.set.schema(&r).is_some(), "{r} does not resolve");
        }
    }
}

#[test]
fn every_smo_type_matches_its_schema() {
    let s = schemas();
    let module = ServiceModule {
        module_id: "module-1".into(),
        registration: registration(),
    };
    let message = PeerRelocationMessage {
        relocation_id: "smo-x-3".into(),
        relocation_type: RelocationType::Criu,
        relocation_phase: RelocationPhase::Failure,
        notif_uri: "http://10.100.0.42:8090/smo-peer/v1/relocations/smo-x-3".into(),
        source_smo_id: "smo-x".into(),
        notification: notification(),
        service: service(),
        cause: Some("peer refused VALIDATE".into()),
        path_held: true,
    };
    let answer = PeerRelocationAnswer {
        relocation_id: "smo-x-3".into(),
        relocation_phase: RelocationPhase::Initiate,
        result: PeerResult::Proceed,
        cause: None,
        target_module_address: Some("10.0.1.3:9100".parse().expect("addr")),
        took_us: 120,
        flow_install_us: Some(80),
    };
    let minimal_record = RelocationRecord {
        peer: None,
        module_id: None,
        target_module_address: None,
        phases: Vec::new(),
        peer_phases: Vec::new(),
        total_us: None,
        execute: None,
        cause: None,
        role: RelocationRole::Target,
        state: RelocationState::Running,
        ..record()
    };
    let cases: Vec<(&str, Value)> = vec![
        (
            "ResourceRequirements",
            to_json(&ResourceRequirements::default()),
        ),
        ("ServiceModuleRegistration", to_json(&registration())),
        ("ServiceModule", to_json(&module)),
        ("Service", to_json(&service())),
        (
            "HostedService",
            to_json(&HostedService {
                module_id: "module-1".into(),
                service: service(),
            }),
        ),
        (
            "ExecuteRequest",
            to_json(&ExecuteRequest {
                relocation_id: "smo-x-3".into(),
                service: service(),
                target_address: "10.0.1.3:9100".parse().expect("addr"),
            }),
        ),
        ("ExecuteReport", to_json(&report())),
        ("ExecuteReport", to_json(&ExecuteReport::default())),
        ("PeerInfo", to_json(&peer())),
        ("PeerRelocationMessage", to_json(&message)),
        ("PeerRelocationAnswer", to_json(&answer)),
        ("PhaseTiming", to_json(&timing(RelocationPhase::Prepare))),
        ("RelocationRecord", to_json(&record())),
        ("RelocationRecord", to_json(&minimal_record)),
        (
            "ServiceArrival",
            to_json(&model::smo::ServiceArrival {
                service_id: "video1".into(),
            }),
        ),
    ];
    for (name, value) in &cases {
        s.check(&smo_schema(name), value);
    }
    for t in [
        RelocationType::Criu,
        RelocationType::Lxc,
        RelocationType::Lxd,
        RelocationType::Test,
    ] {
        s.check(&smo_schema("RelocationType"), &to_json(&t));
    }
    for p in RelocationPhase::SUCCESS_PATH
        .into_iter()
        .chain([RelocationPhase::Failure])
    {
        s.check(&smo_schema("RelocationPhase"), &to_json(&p));
    }
    for st in [
        RelocationState::Running,
        RelocationState::Completed,
        RelocationState::Failed,
    ] {
        s.check(&smo_schema("RelocationState"), &to_json(&st));
    }
    s.check(&smo_schema("PeerResult"), &to_json(&PeerResult::Fail));
    s.check(
        &smo_schema("RelocationRole"),
        &to_json(&RelocationRole::Target),
    );
}

#[test]
fn bodies_serde_refuses_the_schema_refuses_too() {
    let s = schemas();
    let reject = |name: &str, value: Value| {
        assert!(
            s.set.validate(&smo_schema(name), &value).is_err(),
            "{value} should not match {name}"
        );
    };
    let mut extra = to_json(&registration());
    extra["bogus"] = json!(1);
    assert!(serde_json::from_value::<ServiceModuleRegistration>(extra.clone()).is_err());
    reject("ServiceModuleRegistration", extra);
    let mut missing = to_json(&registration());
    missing.as_object_mut().map(|o| o.remove("executeNotifUri"));
    assert!(serde_json::from_value::<ServiceModuleRegistration>(missing.clone()).is_err());
    reject("ServiceModuleRegistration", missing);
    let mut bad_type = to_json(&registration());
    bad_type["relocationType"] = json!("DOCKER");
    assert!(serde_json::from_value::<ServiceModuleRegistration>(bad_type.clone()).is_err());
    reject("ServiceModuleRegistration", bad_type);
    let arrival_extra = json!({"serviceId": "video1", "relocationId": "smo-x-1"});
    assert!(serde_json::from_value::<model::smo::ServiceArrival>(arrival_extra.clone()).is_err());
    reject("ServiceArrival", arrival_extra);
    let mut bad_ip = to_json(&service());
    bad_ip["ipv4Addr"] = json!("20.0.0.300");
    assert!(serde_json::from_value::<Service>(bad_ip.clone()).is_err());
    reject("Service", bad_ip);
    let mut bad_phase = to_json(&timing(RelocationPhase::Execute));
    bad_phase["phase"] = json!("MIGRATE");
    reject("PhaseTiming", bad_phase);
    let mut negative = to_json(&report());
    negative["tookUs"] = json!(-1);
    assert!(serde_json::from_value::<ExecuteReport>(negative.clone()).is_err());
    reject("ExecuteReport", negative);
    let mut bad_id = to_json(&PeerRelocationAnswer {
        relocation_id: "x".into(),
        relocation_phase: RelocationPhase::Validate,
        result: PeerResult::Fail,
        cause: Some("no capacity".into()),
        target_module_address: None,
        took_us: 1,
        flow_install_us: None,
    });
    bad_id.as_object_mut().map(|o| o.remove("result"));
    reject("PeerRelocationAnswer", bad_id);
    let mut record = to_json(&record());
    record["role"] = json!("OBSERVER");
    reject("RelocationRecord", record);
}

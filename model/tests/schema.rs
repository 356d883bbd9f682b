//! Every body the model produces validates against the 3GPP OpenAPI files, the validator rejects
//! broken bodies, and the request types reject what the SMF must answer with 400.
//!
//! The OpenAPI files are read from `$TESTBED_3GPP_DIR`, else `shared/3gpp` beside the workspace;
//! if they are missing these tests fail.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;

use model::common::{
    AccessType, DateTime, DddTrafficDescriptor, DlDataDeliveryStatus, DnaiChangeType,
    PduSessionType, PlmnId, RouteInformation, RouteToLocation, Snssai,
};
use model::nsmf_event_exposure::{
    EventNotification, EventSubscription, NotificationMethod, NsmfEventExposure,
    NsmfEventExposureNotification, SmfEvent, SubscriptionId,
};
use model::problem::{InvalidParam, ProblemDetails};
use model::schema::{names, SchemaSet};
use serde::Serialize;
use serde_json::{json, Value};

fn schemas() -> &'static SchemaSet {
    static SCHEMAS: OnceLock<SchemaSet> = OnceLock::new();
    SCHEMAS.get_or_init(|| {
        let dir = SchemaSet::default_dir();
        SchemaSet::load(&dir).unwrap_or_else(|error| {
            let mut message = error.to_string();
            let mut source = std::error::Error::source(&error);
            while let Some(cause) = source {
                message = format!("{message}: {cause}");
                source = cause.source();
            }
            panic!("cannot load the 3GPP OpenAPI files: {message}")
        })
    })
}

fn to_json(body: &impl Serialize) -> Value {
    serde_json::to_value(body).expect("serializable")
}

#[track_caller]
fn assert_valid(name: &str, body: &impl Serialize) -> Value {
    let json = to_json(body);
    if let Err(errors) = schemas().validate(name, &json) {
        panic!("{name} rejects {json:#}:\n{}", errors.join("\n"));
    }
    json
}

#[track_caller]
fn assert_invalid(name: &str, json: &Value) {
    assert!(
        schemas().validate(name, json).is_err(),
        "{name} accepts broken body {json:#}"
    );
}

fn at(secs: i64) -> DateTime {
    DateTime::from_unix(secs, 123_000_000).expect("in range")
}

fn routing(dnai: &str, last_octet: u8) -> RouteToLocation {
    RouteToLocation::new(dnai, Ipv4Addr::new(10, 100, last_octet, 1), 2152)
}

fn subscription(change: DnaiChangeType) -> NsmfEventExposure {
    NsmfEventExposure::new(
        "af-notif-1",
        "http://127.0.0.1:8090/nsmf-ee/notify",
        vec![EventSubscription::up_path_change(change)],
    )
}

fn slice() -> Snssai {
    Snssai {
        sst: 1,
        sd: Some("010203".into()),
    }
}

#[test]
fn any_ue_subscription_is_valid() {
    for change in [DnaiChangeType::Early, DnaiChangeType::Late] {
        let body = NsmfEventExposure {
            any_ue_ind: Some(true),
            dnn: Some("internet".into()),
            snssai: Some(slice()),
            ..subscription(change)
        };
        let json = assert_valid(names::NSMF_EVENT_EXPOSURE, &body);
        assert_eq!(json["anyUeInd"], true);
    }
}

#[test]
fn per_ue_subscription_is_valid() {
    let by_supi = NsmfEventExposure {
        supi: Some("imsi-001010000000001".into()),
        pdu_se_id: Some(1),
        ..subscription(DnaiChangeType::Early)
    };
    assert_valid(names::NSMF_EVENT_EXPOSURE, &by_supi);
    let by_gpsi = NsmfEventExposure {
        gpsi: Some("msisdn-491701234567".into()),
        ..subscription(DnaiChangeType::Late)
    };
    assert_valid(names::NSMF_EVENT_EXPOSURE, &by_gpsi);
}

#[test]
fn created_response_is_valid() {
    let created = NsmfEventExposure {
        sub_id: Some(SubscriptionId::new("sub-7")),
        supported_features: Some("0".into()),
        ..subscription(DnaiChangeType::EarlyLate)
    };
    let json = assert_valid(names::NSMF_EVENT_EXPOSURE, &created);
    assert_eq!(json["subId"], "sub-7");
}

#[test]
fn up_path_change_notifications_are_valid() {
    for change in [DnaiChangeType::Early, DnaiChangeType::Late] {
        let event = EventNotification {
            supi: Some("imsi-001010000000001".into()),
            pdu_se_id: Some(1),
            ..EventNotification::up_path_change(
                change,
                Ipv4Addr::new(10, 45, 0, 2),
                routing("edge-a", 1),
                routing("edge-b", 2),
                at(1_700_000_000),
            )
        };
        let body = NsmfEventExposureNotification::new("af-notif-1", vec![event]);
        let json = assert_valid(names::NSMF_EVENT_EXPOSURE_NOTIFICATION, &body);
        assert_eq!(
            json["eventNotifs"][0]["timeStamp"],
            "2023-11-14T22:13:20.123Z"
        );
        let back: NsmfEventExposureNotification =
            serde_json::from_value(json).expect("deserializable");
        assert_eq!(back, body);
    }
}

#[test]
fn problem_details_are_valid() {
    let bad = ProblemDetails::bad_request(
        "unknown field `foo`",
        vec![InvalidParam::new("/foo", "unknown field")],
    );
    assert_valid(names::PROBLEM_DETAILS, &bad);
    assert_valid(
        names::PROBLEM_DETAILS,
        &ProblemDetails::unauthorized("no token"),
    );
    assert_valid(
        names::PROBLEM_DETAILS,
        &ProblemDetails::not_found("no subscription sub-7"),
    );
}

#[test]
fn validator_rejects_broken_bodies() {
    let good = to_json(&subscription(DnaiChangeType::Early));
    assert!(schemas()
        .validate(names::NSMF_EVENT_EXPOSURE, &good)
        .is_ok());

    let mut numeric_event = good.clone();
    numeric_event["eventSubs"][0]["event"] = json!(123);
    assert_invalid(names::NSMF_EVENT_EXPOSURE, &numeric_event);

    let mut no_uri = good.clone();
    no_uri.as_object_mut().expect("object").remove("notifUri");
    assert_invalid(names::NSMF_EVENT_EXPOSURE, &no_uri);

    let mut no_events = good.clone();
    no_events["eventSubs"] = json!([]);
    assert_invalid(names::NSMF_EVENT_EXPOSURE, &no_events);

    let mut bad_slice = good;
    bad_slice["snssai"] = json!({"sst": 256});
    assert_invalid(names::NSMF_EVENT_EXPOSURE, &bad_slice);

    let notification = to_json(&NsmfEventExposureNotification::new(
        "n",
        vec![EventNotification::up_path_change(
            DnaiChangeType::Late,
            Ipv4Addr::new(10, 45, 0, 2),
            routing("edge-a", 1),
            routing("edge-b", 2),
            at(0),
        )],
    ));
    for (pointer, broken) in [
        ("/eventNotifs/0/timeStamp", json!("yesterday")),
        ("/eventNotifs/0/sourceUeIpv4Addr", json!("10.45.0.256")),
        ("/eventNotifs/0/dnaiChgType", json!(1)),
        (
            "/eventNotifs/0/targetTraRouting/routeInfo",
            json!({"ipv4Addr": "10.0.0.1"}),
        ),
    ] {
        let mut body = notification.clone();
        *body.pointer_mut(pointer).expect("pointer exists") = broken;
        assert_invalid(names::NSMF_EVENT_EXPOSURE_NOTIFICATION, &body);
    }
    let mut no_routing = notification;
    no_routing["eventNotifs"][0]["targetTraRouting"] = json!({"dnai": "edge-b"});
    assert_invalid(names::NSMF_EVENT_EXPOSURE_NOTIFICATION, &no_routing);

    assert_invalid(names::PROBLEM_DETAILS, &json!({"status": "400"}));
    assert!(schemas()
        .validate(
            "TS29508_Nsmf_EventExposure.yaml#/components/schemas/NoSuchThing",
            &json!({})
        )
        .is_err());
}

#[test]
fn nullable_route_to_location_accepts_null() {
    schemas()
        .validate(names::ROUTE_TO_LOCATION, &Value::Null)
        .expect("RouteToLocation is nullable");
    assert_invalid(names::EVENT_SUBSCRIPTION, &Value::Null);
}

#[test]
fn subscription_with_unknown_field_is_rejected() {
    let mut body = to_json(&subscription(DnaiChangeType::Early));
    body["ueIpv4Addr"] = json!("10.45.0.2");
    let error = serde_json::from_value::<NsmfEventExposure>(body).expect_err("unknown field");
    assert!(error.to_string().contains("unknown field"), "{error}");

    let mut body = to_json(&subscription(DnaiChangeType::Early));
    body["eventSubs"][0]["targetPeriod"] = json!({});
    assert!(serde_json::from_value::<NsmfEventExposure>(body).is_err());
}

#[test]
fn subscription_with_missing_required_field_is_rejected() {
    for field in ["notifId", "notifUri", "eventSubs"] {
        let mut body = to_json(&subscription(DnaiChangeType::Early));
        body.as_object_mut().expect("object").remove(field);
        let error = serde_json::from_value::<NsmfEventExposure>(body).expect_err(field);
        assert!(error.to_string().contains(field), "{error}");
    }
    let body =
        json!({"notifId": "n", "notifUri": "http://af/n", "eventSubs": [{"dnaiChgType": "EARLY"}]});
    assert!(serde_json::from_value::<NsmfEventExposure>(body).is_err());
}

/// The names of the properties schema `name` declares (looking through `nullable`'s `anyOf`).
fn declared_properties(name: &str) -> BTreeSet<String> {
    let schema = schemas().schema(name).expect("schema exists");
    let object = schema
        .get("properties")
        .or_else(|| schema.pointer("/anyOf/1/properties"))
        .and_then(Value::as_object)
        .expect("an object schema");
    object.keys().cloned().collect()
}

#[track_caller]
fn assert_field_for_field(name: &str, full: &impl Serialize) {
    let json = assert_valid(name, full);
    let ours: BTreeSet<String> = json.as_object().expect("object").keys().cloned().collect();
    assert_eq!(ours, declared_properties(name), "properties of {name}");
}

/// Fully populated bodies use every property of their schema, spelled as the YAML spells it,
/// with values the schema accepts.
#[test]
fn types_match_schemas_field_for_field() {
    let route = RouteToLocation {
        route_info: Some(RouteInformation {
            ipv4_addr: Some(Ipv4Addr::new(10, 100, 1, 1)),
            ipv6_addr: Some("2001:db8::1".parse().expect("ipv6")),
            port_number: 2152,
        }),
        route_prof_id: Some("profile-1".into()),
        ..routing("edge-a", 1)
    };
    assert_field_for_field(names::ROUTE_TO_LOCATION, &route);
    assert_field_for_field(
        "TS29571_CommonData.yaml#/components/schemas/RouteInformation",
        route.route_info.as_ref().expect("set"),
    );
    let traffic = DddTrafficDescriptor {
        ipv4_addr: Some(Ipv4Addr::new(192, 0, 2, 1)),
        ipv6_addr: Some(Ipv6Addr::LOCALHOST),
        port_number: Some(80),
        mac_addr: Some("00-1a-2b-3c-4d-5e".into()),
    };
    assert_field_for_field(
        "TS29571_CommonData.yaml#/components/schemas/DddTrafficDescriptor",
        &traffic,
    );

    let event_sub = EventSubscription {
        ddd_tra_descriptors: vec![traffic.clone()],
        ddd_stati: vec![DlDataDeliveryStatus::Buffered],
        app_ids: vec!["edge-app".into()],
        ..EventSubscription::up_path_change(DnaiChangeType::EarlyLate)
    };
    assert_field_for_field(names::EVENT_SUBSCRIPTION, &event_sub);

    let subscription = NsmfEventExposure {
        supi: Some("imsi-001010000000001".into()),
        gpsi: Some("msisdn-491701234567".into()),
        any_ue_ind: Some(false),
        group_id: Some("0123abcd-001-01-ab".into()),
        pdu_se_id: Some(5),
        dnn: Some("internet".into()),
        snssai: Some(slice()),
        sub_id: Some("sub-1".into()),
        alt_notif_ipv4_addrs: vec![Ipv4Addr::new(192, 0, 2, 2)],
        alt_notif_ipv6_addrs: vec!["2001:db8::2".parse().expect("ipv6")],
        alt_notif_fqdns: vec!["af.example.org".into()],
        imme_rep: Some(false),
        notif_method: Some(NotificationMethod::OnEventDetection),
        max_report_nbr: Some(10),
        expiry: Some(at(1_800_000_000)),
        rep_period: Some(60),
        guami: Some(json!({"plmnId": {"mcc": "001", "mnc": "01"}, "amfId": "cafe00"})),
        service_name: Some("nsmf-event-exposure".into()),
        supported_features: Some("1f".into()),
        samp_ratio: Some(100),
        grp_rep_time: Some(5),
        ..NsmfEventExposure::new("n-1", "http://af.example.org/notify", vec![event_sub])
    };
    assert_field_for_field(names::NSMF_EVENT_EXPOSURE, &subscription);
    let back: NsmfEventExposure =
        serde_json::from_value(to_json(&subscription)).expect("round trip");
    assert_eq!(back, subscription);

    let prefix = "2001:db8:abcd:12::/64".parse().expect("prefix");
    let event = EventNotification {
        supi: Some("imsi-001010000000001".into()),
        gpsi: Some("msisdn-491701234567".into()),
        source_ue_ipv6_prefix: Some(prefix),
        target_ue_ipv6_prefix: Some(prefix),
        ue_mac: Some("00-1a-2b-3c-4d-5e".into()),
        ad_ipv4_addr: Some(Ipv4Addr::new(10, 45, 0, 3)),
        ad_ipv6_prefix: Some(prefix),
        re_ipv4_addr: Some(Ipv4Addr::new(10, 45, 0, 4)),
        re_ipv6_prefix: Some(prefix),
        plmn_id: Some(PlmnId {
            mcc: "001".into(),
            mnc: "01".into(),
        }),
        acc_type: Some(AccessType::ThreeGppAccess),
        pdu_se_id: Some(5),
        ddd_status: Some(DlDataDeliveryStatus::Transmitted),
        ddd_tra_descriptor: Some(traffic),
        max_wait_time: Some(at(1_700_000_060)),
        comm_failure: Some(json!({"nasReleaseCode": "x"})),
        ipv4_addr: Some(Ipv4Addr::new(10, 45, 0, 2)),
        ipv6_prefixes: vec![prefix],
        ipv6_addrs: vec!["2001:db8:abcd:12::1".parse().expect("ipv6")],
        pdu_sess_type: Some(PduSessionType::Ipv4),
        qfi: Some(9),
        app_id: Some("edge-app".into()),
        ethf_descs: vec![json!({"ethType": "0800"})],
        f_descs: vec!["permit out ip from any to assigned".into()],
        dnn: Some("internet".into()),
        snssai: Some(slice()),
        ul_delays: vec![1],
        dl_delays: vec![2],
        rt_delays: vec![3],
        ..EventNotification::up_path_change(
            DnaiChangeType::Early,
            Ipv4Addr::new(10, 45, 0, 2),
            route,
            routing("edge-b", 2),
            at(1_700_000_000),
        )
    };
    assert_field_for_field(names::EVENT_NOTIFICATION, &event);
    let notification = NsmfEventExposureNotification {
        ack_uri: Some("http://smf.example.org/ack".into()),
        ..NsmfEventExposureNotification::new("n-1", vec![event])
    };
    assert_field_for_field(names::NSMF_EVENT_EXPOSURE_NOTIFICATION, &notification);
    let back: NsmfEventExposureNotification =
        serde_json::from_value(to_json(&notification)).expect("round trip");
    assert_eq!(back, notification);

    let problem = ProblemDetails {
        r#type: Some("https://example.org/problems/bad".into()),
        instance: Some("/nsmf-event-exposure/v1/subscriptions".into()),
        supported_features: Some("0".into()),
        access_token_error: Some(json!({"error": "invalid_request"})),
        access_token_request: Some(json!({
            "grant_type": "client_credentials",
            "nfInstanceId": "3fa85f64-5717-4562-b3fc-2c963f66afa6",
            "scope": "nsmf-event-exposure",
        })),
        nrf_id: Some("nrf.example.org".into()),
        ..ProblemDetails::bad_request("bad", vec![InvalidParam::new("/x", "y")])
    };
    assert_field_for_field(names::PROBLEM_DETAILS, &problem);
    assert_field_for_field(
        "TS29571_CommonData.yaml#/components/schemas/Snssai",
        &slice(),
    );
}

#[test]
fn unknown_enum_values_pass_the_extensible_schema() {
    let body = NsmfEventExposure::new(
        "n",
        "http://af/n",
        vec![EventSubscription::new(SmfEvent::Other(
            "FUTURE_EVENT".into(),
        ))],
    );
    assert_valid(names::NSMF_EVENT_EXPOSURE, &body);
}

// ---------------------------------------------------------------------------------------------
// TS 29.522 TrafficInfluence, TS 29.512 traffic control data, TS 29.508 AckOfNotify

use model::nsmf_event_exposure::AckOfNotify;
use model::sm_policy::{TrafficControlData, UpPathChgEvent};
use model::traffic_influence::{
    AfAckInfo, AfResultInfo, AfResultStatus, EventNotification as TiNotification, FlowInfo,
    SubscribedEvent, TrafficInfluSub, TrafficInfluSubPatch,
};

/// Every property of `full` is one `name` declares, and `full` uses all of them (for schemas
/// whose `oneOf`s make a body with every property invalid).
#[track_caller]
fn assert_same_properties(name: &str, full: &impl Serialize) {
    let json = to_json(full);
    let ours: BTreeSet<String> = json.as_object().expect("object").keys().cloned().collect();
    assert_eq!(ours, declared_properties(name), "properties of {name}");
}

/// The subscription an SMO makes at the NEF: any UE, early notifications it acknowledges.
fn influence_sub() -> TrafficInfluSub {
    TrafficInfluSub {
        af_app_id: Some("stream1".into()),
        af_trans_id: Some("smo-x-1".into()),
        any_ue_ind: Some(true),
        subscribed_events: Some(vec![SubscribedEvent::UpPathChange]),
        dnai_chg_type: Some(DnaiChangeType::Early),
        notification_destination: Some("http://10.100.0.41:8090/af/v1/ti-notifications".into()),
        traffic_routes: Some(vec![routing("edge-x", 1), routing("edge-y", 2)]),
        af_ack_ind: Some(true),
        addr_preser_ind: Some(true),
        app_relo_ind: Some(true),
        ..TrafficInfluSub::default()
    }
}

#[test]
fn traffic_influence_bodies_are_valid_and_match_field_for_field() {
    let sub = influence_sub();
    assert_valid(names::TRAFFIC_INFLU_SUB, &sub);
    let created = TrafficInfluSub {
        self_link: Some(
            "http://10.100.0.10:8002/3gpp-traffic-influence/v1/smo-x/subscriptions/sub-1".into(),
        ),
        ..sub.clone()
    };
    assert_valid(names::TRAFFIC_INFLU_SUB, &created);
    // One UE by address, with packet filters instead of an application id.
    let by_ip = TrafficInfluSub {
        af_app_id: None,
        any_ue_ind: None,
        ipv4_addr: Some(Ipv4Addr::new(192, 168, 1, 2)),
        traffic_filters: Some(vec![FlowInfo {
            flow_id: 1,
            flow_descriptions: vec!["permit out ip from 20.0.0.100 to 192.168.1.2".into()],
        }]),
        ..sub.clone()
    };
    assert_valid(names::TRAFFIC_INFLU_SUB, &by_ip);
    let back: TrafficInfluSub = serde_json::from_value(to_json(&created)).expect("round trip");
    assert_eq!(back, created);

    let full = TrafficInfluSub {
        af_service_id: Some("svc".into()),
        af_app_id: Some("stream1".into()),
        af_trans_id: Some("t".into()),
        app_relo_ind: Some(true),
        dnn: Some("internet".into()),
        snssai: Some(slice()),
        external_group_id: Some("group@example.org".into()),
        any_ue_ind: Some(false),
        subscribed_events: Some(vec![SubscribedEvent::UpPathChange]),
        gpsi: Some("msisdn-491701234567".into()),
        ipv4_addr: Some(Ipv4Addr::new(192, 168, 1, 2)),
        ip_domain: Some("domain".into()),
        ipv6_addr: Some(Ipv6Addr::LOCALHOST),
        mac_addr: Some("00-1a-2b-3c-4d-5e".into()),
        dnai_chg_type: Some(DnaiChangeType::EarlyLate),
        notification_destination: Some("http://af/n".into()),
        request_test_notification: Some(false),
        websock_notif_config: Some(json!({"requestWebsocketUri": false})),
        self_link: Some("http://nef/s".into()),
        traffic_filters: Some(vec![FlowInfo {
            flow_id: 1,
            flow_descriptions: vec!["permit out ip from any to any".into()],
        }]),
        eth_traffic_filters: Some(vec![json!({"ethType": "0800"})]),
        traffic_routes: Some(vec![routing("edge-x", 1)]),
        tfc_corr_ind: Some(false),
        temp_validities: vec![json!({"startTime": "2023-11-14T22:13:20Z"})],
        valid_geo_zone_ids: Some(vec!["zone-1".into()]),
        af_ack_ind: Some(true),
        addr_preser_ind: Some(true),
        supp_feat: Some("0".into()),
    };
    assert_same_properties(names::TRAFFIC_INFLU_SUB, &full);
    assert_field_for_field(
        names::FLOW_INFO,
        &full.traffic_filters.as_ref().expect("set")[0],
    );

    let patch = TrafficInfluSubPatch {
        app_relo_ind: Some(Some(false)),
        traffic_filters: full.traffic_filters.clone(),
        eth_traffic_filters: full.eth_traffic_filters.clone(),
        traffic_routes: full.traffic_routes.clone(),
        tfc_corr_ind: Some(None),
        temp_validities: Some(Some(full.temp_validities.clone())),
        valid_geo_zone_ids: Some(None),
        af_ack_ind: Some(Some(false)),
        addr_preser_ind: Some(None),
    };
    assert_field_for_field(names::TRAFFIC_INFLU_SUB_PATCH, &patch);

    let mut notification = TiNotification {
        af_trans_id: Some("smo-x-1".into()),
        source_traffic_route: Some(routing("edge-x", 1)),
        target_traffic_route: Some(routing("edge-y", 2)),
        source_dnai: Some("edge-x".into()),
        target_dnai: Some("edge-y".into()),
        gpsi: Some("msisdn-491701234567".into()),
        src_ue_ipv4_addr: Some(Ipv4Addr::new(192, 168, 1, 2)),
        src_ue_ipv6_prefix: Some("2001:db8::/64".parse().expect("prefix")),
        tgt_ue_ipv4_addr: Some(Ipv4Addr::new(192, 168, 1, 2)),
        tgt_ue_ipv6_prefix: Some("2001:db8::/64".parse().expect("prefix")),
        ue_mac: Some("00-1a-2b-3c-4d-5e".into()),
        af_ack_uri: Some("http://10.100.0.10:8002/ack/1".into()),
        ..TiNotification::up_path_change(DnaiChangeType::Early)
    };
    assert_field_for_field(names::TRAFFIC_INFLUENCE_NOTIFICATION, &notification);
    notification.af_ack_uri = None;
    let back: TiNotification = serde_json::from_value(to_json(&notification)).expect("round trip");
    assert_eq!(back, notification);

    let ack = AfAckInfo {
        af_trans_id: Some("smo-x-1".into()),
        ack_result: AfResultInfo {
            af_status: AfResultStatus::Success,
            traffic_route: Some(routing("edge-y", 2)),
        },
        gpsi: Some("msisdn-491701234567".into()),
    };
    assert_field_for_field(names::AF_ACK_INFO, &ack);
    assert_field_for_field(names::AF_RESULT_INFO, &ack.ack_result);
    for status in [
        AfResultStatus::Success,
        AfResultStatus::TemporaryCongestion,
        AfResultStatus::RelocNoAllowed,
        AfResultStatus::OtherReason,
    ] {
        let json = assert_valid(names::AF_RESULT_INFO, &AfResultInfo::new(status.clone()));
        assert_eq!(json["afStatus"], status.as_str());
    }
    let of_notify = AckOfNotify {
        notif_id: "sub-1".into(),
        ack_result: ack.ack_result.clone(),
        supi: Some("imsi-001010000000001".into()),
        gpsi: Some("msisdn-491701234567".into()),
    };
    assert_field_for_field(names::ACK_OF_NOTIFY, &of_notify);
    let back: AckOfNotify = serde_json::from_value(to_json(&of_notify)).expect("round trip");
    assert_eq!(back, of_notify);
}

#[test]
fn traffic_control_data_matches_field_for_field() {
    let event = UpPathChgEvent {
        notification_uri: "http://10.100.0.10:8002/nnef-callback/v1/notifications/sub-1".into(),
        notif_corre_id: "sub-1".into(),
        dnai_chg_type: DnaiChangeType::Early,
        af_ack_ind: Some(true),
    };
    assert_field_for_field(names::UP_PATH_CHG_EVENT, &event);
    let minimal = TrafficControlData {
        route_to_locs: vec![routing("edge-x", 1)],
        up_path_chg_event: Some(event.clone()),
        ..TrafficControlData::new("sub-1")
    };
    assert_valid(names::TRAFFIC_CONTROL_DATA, &minimal);
    let full = TrafficControlData {
        flow_status: Some(json!("ENABLED")),
        redirect_info: Some(json!({"redirectEnabled": false})),
        add_redirect_info: vec![json!({"redirectEnabled": false})],
        mute_notif: Some(false),
        traffic_steering_pol_id_dl: Some("dl".into()),
        traffic_steering_pol_id_ul: Some("ul".into()),
        traff_corre_ind: Some(false),
        steer_fun: Some(json!("MPTCP")),
        steer_mode_dl: Some(json!({"steerModeValue": "ACTIVE_STANDBY"})),
        steer_mode_ul: Some(json!({"steerModeValue": "ACTIVE_STANDBY"})),
        mul_acc_ctrl: Some(json!("ALLOWED")),
        ..minimal.clone()
    };
    assert_field_for_field(names::TRAFFIC_CONTROL_DATA, &full);
    let back: TrafficControlData = serde_json::from_value(to_json(&full)).expect("round trip");
    assert_eq!(back, full);
}

#[test]
fn the_validator_rejects_broken_traffic_influence_bodies() {
    let good = to_json(&influence_sub());
    let broken = |edit: &dyn Fn(&mut Value)| {
        let mut b = good.clone();
        edit(&mut b);
        b
    };
    for body in [
        // no UE, or two ways of naming it
        broken(&|b| drop(b.as_object_mut().map(|o| o.remove("anyUeInd")))),
        broken(&|b| b["ipv4Addr"] = json!("192.168.1.2")),
        // no application and no filters
        broken(&|b| drop(b.as_object_mut().map(|o| o.remove("afAppId")))),
        // events without a destination
        broken(&|b| {
            drop(
                b.as_object_mut()
                    .map(|o| o.remove("notificationDestination")),
            )
        }),
        broken(&|b| b["afAckInd"] = json!("yes")),
        broken(&|b| b["trafficRoutes"] = json!([{"dnai": "edge-x"}])),
    ] {
        assert_invalid(names::TRAFFIC_INFLU_SUB, &body);
    }
    assert_invalid(
        names::TRAFFIC_INFLUENCE_NOTIFICATION,
        &json!({"dnaiChgType": "EARLY"}),
    );
    assert_invalid(names::AF_ACK_INFO, &json!({"ackResult": {}}));
    assert_invalid(
        names::ACK_OF_NOTIFY,
        &json!({"ackResult": {"afStatus": "SUCCESS"}}),
    );
    assert_invalid(
        names::UP_PATH_CHG_EVENT,
        &json!({"notificationUri": "u", "notifCorreId": "c"}),
    );
    assert_invalid(names::TRAFFIC_CONTROL_DATA, &json!({"routeToLocs": []}));
}

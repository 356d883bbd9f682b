//! Nsmf_EventExposure (3GPP TS 29.508 V16.10.0, `TS29508_Nsmf_EventExposure.yaml`, API 1.1.3).
//!
//! The AF (here: the SMO) creates a subscription by `POST {apiRoot}/nsmf-event-exposure/v1/subscriptions`
//! with an [`NsmfEventExposure`] body; the SMF answers 201 with the same type (now carrying
//! `subId`) and later POSTs an [`NsmfEventExposureNotification`] to `notifUri`, answered 204.
//!
//! Field names are the YAML's, typos included (`ImmeRep`, `serviveName`). Request bodies the SMF
//! accepts reject unknown fields; bodies the AF receives ignore them. Properties whose types do
//! not matter to this project are kept as raw [`serde_json::Value`]s.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::Ipv6Net;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::traffic_influence::AfResultInfo;

use crate::common::{
    extensible_enum, non_empty, string_newtype, AccessType, DateTime, DddTrafficDescriptor,
    DlDataDeliveryStatus, Dnai, DnaiChangeType, DurationSec, Gpsi, MacAddr48, PduSessionId,
    PduSessionType, PlmnId, Qfi, RouteToLocation, Snssai, Supi, Uinteger,
};

/// API name and version: the path prefix of every resource.
pub const API_ROOT_PATH: &str = "/nsmf-event-exposure/v1";

string_newtype! {
    /// `SubId`: identifies an Individual SMF Notification Subscription (lower-with-hyphen
    /// characters only, as it is a URI path segment).
    SubscriptionId;
    /// `notifId`: the notification correlation id chosen by the subscriber.
    NotifId;
}

extensible_enum! {
    /// `SmfEvent`: the events an SMF exposes.
    SmfEvent {
        /// Access type change.
        AcTyCh = "AC_TY_CH",
        /// User-plane path change (DNAI change).
        UpPathCh = "UP_PATH_CH",
        /// PDU session release.
        PduSesRel = "PDU_SES_REL",
        /// PLMN change.
        PlmnCh = "PLMN_CH",
        /// UE IP address change.
        UeIpCh = "UE_IP_CH",
        /// Downlink data delivery status.
        Ddds = "DDDS",
        /// Communication failure.
        CommFail = "COMM_FAIL",
        /// PDU session establishment.
        PduSesEst = "PDU_SES_EST",
        /// QFI allocation.
        QfiAlloc = "QFI_ALLOC",
        /// QoS monitoring.
        QosMon = "QOS_MON",
    }
}

extensible_enum! {
    /// `NotificationMethod`.
    NotificationMethod {
        /// Report periodically (`repPeriod`).
        Periodic = "PERIODIC",
        /// Report once, then the subscription ends.
        OneTime = "ONE_TIME",
        /// Report each time the event is detected (the default).
        OnEventDetection = "ON_EVENT_DETECTION",
    }
}

/// `NsmfEventExposure`: an Individual SMF Notification Subscription (request and 201 body).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NsmfEventExposure {
    /// The UE the subscription is for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub supi: Option<Supi>,
    /// The UE the subscription is for, by public identifier.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpsi: Option<Gpsi>,
    /// The subscription applies to any UE; absent means `false`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub any_ue_ind: Option<bool>,
    /// The group of UEs the subscription is for (`GroupId`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// The PDU session the subscription is for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pdu_se_id: Option<PduSessionId>,
    /// Restricts the subscription to PDU sessions of this DNN.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dnn: Option<String>,
    /// Restricts the subscription to PDU sessions of this slice.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snssai: Option<Snssai>,
    /// Assigned by the SMF; present in the 201 response.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub_id: Option<SubscriptionId>,
    /// Correlation id echoed in every notification.
    pub notif_id: NotifId,
    /// Where notifications are POSTed.
    pub notif_uri: String,
    /// Backup IPv4 addresses for notifications.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alt_notif_ipv4_addrs: Vec<Ipv4Addr>,
    /// Backup IPv6 addresses for notifications.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alt_notif_ipv6_addrs: Vec<Ipv6Addr>,
    /// Backup FQDNs for notifications.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alt_notif_fqdns: Vec<String>,
    /// The subscribed events (at least one).
    #[serde(deserialize_with = "non_empty")]
    pub event_subs: Vec<EventSubscription>,
    /// Immediate reporting requested (`ImmeRep`, capitalised as in the YAML).
    #[serde(rename = "ImmeRep", skip_serializing_if = "Option::is_none")]
    pub imme_rep: Option<bool>,
    /// How events are reported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notif_method: Option<NotificationMethod>,
    /// Maximum number of reports, after which the subscription ends.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_report_nbr: Option<Uinteger>,
    /// When the subscription ends.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiry: Option<DateTime>,
    /// Reporting period for `PERIODIC` reporting, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rep_period: Option<DurationSec>,
    /// `Guami` of the AMF (kept as raw JSON).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guami: Option<Value>,
    /// The service name (`serviveName` in the YAML, a typo of the spec kept on the wire).
    #[serde(rename = "serviveName", skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    /// Supported features (hex string).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub supported_features: Option<String>,
    /// Sampling ratio in percent, 1..=100.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub samp_ratio: Option<u8>,
    /// Group reporting guard time, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grp_rep_time: Option<DurationSec>,
}

impl NsmfEventExposure {
    /// A subscription with only the required properties set.
    pub fn new(
        notif_id: impl Into<NotifId>,
        notif_uri: impl Into<String>,
        event_subs: Vec<EventSubscription>,
    ) -> Self {
        Self {
            supi: None,
            gpsi: None,
            any_ue_ind: None,
            group_id: None,
            pdu_se_id: None,
            dnn: None,
            snssai: None,
            sub_id: None,
            notif_id: notif_id.into(),
            notif_uri: notif_uri.into(),
            alt_notif_ipv4_addrs: Vec::new(),
            alt_notif_ipv6_addrs: Vec::new(),
            alt_notif_fqdns: Vec::new(),
            event_subs,
            imme_rep: None,
            notif_method: None,
            max_report_nbr: None,
            expiry: None,
            rep_period: None,
            guami: None,
            service_name: None,
            supported_features: None,
            samp_ratio: None,
            grp_rep_time: None,
        }
    }

    /// Whether the subscription applies to any UE (`anyUeInd`, default `false`).
    pub fn is_any_ue(&self) -> bool {
        self.any_ue_ind.unwrap_or(false)
    }
}

/// `EventSubscription`: one subscribed event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventSubscription {
    /// The event.
    pub event: SmfEvent,
    /// For `UP_PATH_CH`: early, late or both notifications.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dnai_chg_type: Option<DnaiChangeType>,
    /// For `DDDS`: the downlink traffic to report on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ddd_tra_descriptors: Vec<DddTrafficDescriptor>,
    /// For `DDDS`: the statuses to report.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ddd_stati: Vec<DlDataDeliveryStatus>,
    /// Restricts the event to these applications (`ApplicationId`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub app_ids: Vec<String>,
}

impl EventSubscription {
    /// A subscription to `event` with no further parameters.
    pub fn new(event: SmfEvent) -> Self {
        Self {
            event,
            dnai_chg_type: None,
            ddd_tra_descriptors: Vec::new(),
            ddd_stati: Vec::new(),
            app_ids: Vec::new(),
        }
    }

    /// A subscription to `UP_PATH_CH` with the given notification timing.
    pub fn up_path_change(dnai_chg_type: DnaiChangeType) -> Self {
        Self {
            dnai_chg_type: Some(dnai_chg_type),
            ..Self::new(SmfEvent::UpPathCh)
        }
    }
}

/// `NsmfEventExposureNotification`: the body POSTed to `notifUri`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NsmfEventExposureNotification {
    /// The subscription's correlation id.
    pub notif_id: NotifId,
    /// The events (at least one).
    #[serde(deserialize_with = "non_empty")]
    pub event_notifs: Vec<EventNotification>,
    /// Where the AF acknowledges the notification (`AckOfNotify`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ack_uri: Option<String>,
}

impl NsmfEventExposureNotification {
    /// A notification carrying `event_notifs` for the subscription `notif_id`.
    pub fn new(notif_id: impl Into<NotifId>, event_notifs: Vec<EventNotification>) -> Self {
        Self {
            notif_id: notif_id.into(),
            event_notifs,
            ack_uri: None,
        }
    }
}

/// `EventNotification`: one reported event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventNotification {
    /// The event.
    pub event: SmfEvent,
    /// When it happened.
    pub time_stamp: DateTime,
    /// The UE.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub supi: Option<Supi>,
    /// The UE, by public identifier.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpsi: Option<Gpsi>,
    /// `UP_PATH_CH`: the DNAI the user plane leaves.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_dnai: Option<Dnai>,
    /// `UP_PATH_CH`: the DNAI the user plane moves to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_dnai: Option<Dnai>,
    /// `UP_PATH_CH`: whether this is the early or the late notification.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dnai_chg_type: Option<DnaiChangeType>,
    /// `UP_PATH_CH`: UE IPv4 address on the source path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_ue_ipv4_addr: Option<Ipv4Addr>,
    /// `UP_PATH_CH`: UE IPv6 prefix on the source path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_ue_ipv6_prefix: Option<Ipv6Net>,
    /// `UP_PATH_CH`: UE IPv4 address on the target path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_ue_ipv4_addr: Option<Ipv4Addr>,
    /// `UP_PATH_CH`: UE IPv6 prefix on the target path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_ue_ipv6_prefix: Option<Ipv6Net>,
    /// `UP_PATH_CH`: traffic routing at the source DNAI.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_tra_routing: Option<RouteToLocation>,
    /// `UP_PATH_CH`: traffic routing at the target DNAI.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_tra_routing: Option<RouteToLocation>,
    /// `UP_PATH_CH`: UE MAC address (Ethernet PDU sessions).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ue_mac: Option<MacAddr48>,
    /// `UE_IP_CH`: added UE IPv4 address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ad_ipv4_addr: Option<Ipv4Addr>,
    /// `UE_IP_CH`: added UE IPv6 prefix.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ad_ipv6_prefix: Option<Ipv6Net>,
    /// `UE_IP_CH`: removed UE IPv4 address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub re_ipv4_addr: Option<Ipv4Addr>,
    /// `UE_IP_CH`: removed UE IPv6 prefix.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub re_ipv6_prefix: Option<Ipv6Net>,
    /// `PLMN_CH`: the new PLMN.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plmn_id: Option<PlmnId>,
    /// `AC_TY_CH`: the new access type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acc_type: Option<AccessType>,
    /// The PDU session.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pdu_se_id: Option<PduSessionId>,
    /// `DDDS`: the delivery status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ddd_status: Option<DlDataDeliveryStatus>,
    /// `DDDS`: the downlink traffic concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ddd_tra_descriptor: Option<DddTrafficDescriptor>,
    /// `DDDS`: estimated time until the UE is reachable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_wait_time: Option<DateTime>,
    /// `COMM_FAIL`: `CommunicationFailure` of TS 29.518 (kept as raw JSON).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm_failure: Option<Value>,
    /// `PDU_SES_EST`: the UE IPv4 address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv4_addr: Option<Ipv4Addr>,
    /// `PDU_SES_EST`: the UE IPv6 prefixes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ipv6_prefixes: Vec<Ipv6Net>,
    /// `PDU_SES_EST`: the UE IPv6 addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ipv6_addrs: Vec<Ipv6Addr>,
    /// `PDU_SES_EST`: the PDU session type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pdu_sess_type: Option<PduSessionType>,
    /// `QFI_ALLOC`: the allocated QFI.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qfi: Option<Qfi>,
    /// `QFI_ALLOC`: the application (`ApplicationId`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_id: Option<String>,
    /// `QFI_ALLOC`: Ethernet flow descriptions, `EthFlowDescription` of TS 29.514 (raw JSON).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ethf_descs: Vec<Value>,
    /// `QFI_ALLOC`: IP flow descriptions (`FlowDescription` strings, at most two).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub f_descs: Vec<String>,
    /// `PDU_SES_EST`: the DNN.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dnn: Option<String>,
    /// `PDU_SES_EST`: the slice.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snssai: Option<Snssai>,
    /// `QOS_MON`: uplink packet delays.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ul_delays: Vec<Uinteger>,
    /// `QOS_MON`: downlink packet delays.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dl_delays: Vec<Uinteger>,
    /// `QOS_MON`: round-trip packet delays.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rt_delays: Vec<Uinteger>,
}

impl EventNotification {
    /// A notification of `event` at `time_stamp` with no further properties.
    pub fn new(event: SmfEvent, time_stamp: DateTime) -> Self {
        Self {
            event,
            time_stamp,
            supi: None,
            gpsi: None,
            source_dnai: None,
            target_dnai: None,
            dnai_chg_type: None,
            source_ue_ipv4_addr: None,
            source_ue_ipv6_prefix: None,
            target_ue_ipv4_addr: None,
            target_ue_ipv6_prefix: None,
            source_tra_routing: None,
            target_tra_routing: None,
            ue_mac: None,
            ad_ipv4_addr: None,
            ad_ipv6_prefix: None,
            re_ipv4_addr: None,
            re_ipv6_prefix: None,
            plmn_id: None,
            acc_type: None,
            pdu_se_id: None,
            ddd_status: None,
            ddd_tra_descriptor: None,
            max_wait_time: None,
            comm_failure: None,
            ipv4_addr: None,
            ipv6_prefixes: Vec::new(),
            ipv6_addrs: Vec::new(),
            pdu_sess_type: None,
            qfi: None,
            app_id: None,
            ethf_descs: Vec::new(),
            f_descs: Vec::new(),
            dnn: None,
            snssai: None,
            ul_delays: Vec::new(),
            dl_delays: Vec::new(),
            rt_delays: Vec::new(),
        }
    }

    /// An `UP_PATH_CH` notification for one UE whose IPv4 address `ue_ipv4` stays the same on
    /// both paths: the DNAIs are those of `source` and `target`.
    pub fn up_path_change(
        dnai_chg_type: DnaiChangeType,
        ue_ipv4: Ipv4Addr,
        source: RouteToLocation,
        target: RouteToLocation,
        time_stamp: DateTime,
    ) -> Self {
        Self {
            source_dnai: Some(source.dnai.clone()),
            target_dnai: Some(target.dnai.clone()),
            dnai_chg_type: Some(dnai_chg_type),
            source_ue_ipv4_addr: Some(ue_ipv4),
            target_ue_ipv4_addr: Some(ue_ipv4),
            source_tra_routing: Some(source),
            target_tra_routing: Some(target),
            ..Self::new(SmfEvent::UpPathCh, time_stamp)
        }
    }
}

/// `AckOfNotify`: the AF's acknowledgement of a notification, POSTed to `ackUri` (answered 204).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AckOfNotify {
    /// The subscription's correlation id.
    pub notif_id: NotifId,
    /// The AF's result (`AfResultInfo` of TS 29.522).
    pub ack_result: AfResultInfo,
    /// The UE.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub supi: Option<Supi>,
    /// The UE, by public identifier.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpsi: Option<Gpsi>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(secs: i64) -> DateTime {
        DateTime::from_unix(secs, 0).expect("in range")
    }

    #[test]
    fn up_path_change_notification_wire_form() {
        let notification = EventNotification::up_path_change(
            DnaiChangeType::Early,
            Ipv4Addr::new(10, 45, 0, 2),
            RouteToLocation::new("edge-a", Ipv4Addr::new(10, 100, 1, 1), 2152),
            RouteToLocation::new("edge-b", Ipv4Addr::new(10, 100, 2, 1), 2152),
            at(1_700_000_000),
        );
        let body = NsmfEventExposureNotification::new("n-1", vec![notification]);
        assert_eq!(
            serde_json::to_value(&body).expect("serialize"),
            json!({
                "notifId": "n-1",
                "eventNotifs": [{
                    "event": "UP_PATH_CH",
                    "timeStamp": "2023-11-14T22:13:20Z",
                    "sourceDnai": "edge-a",
                    "targetDnai": "edge-b",
                    "dnaiChgType": "EARLY",
                    "sourceUeIpv4Addr": "10.45.0.2",
                    "targetUeIpv4Addr": "10.45.0.2",
                    "sourceTraRouting": {
                        "dnai": "edge-a",
                        "routeInfo": {"ipv4Addr": "10.100.1.1", "portNumber": 2152}
                    },
                    "targetTraRouting": {
                        "dnai": "edge-b",
                        "routeInfo": {"ipv4Addr": "10.100.2.1", "portNumber": 2152}
                    },
                }],
            })
        );
        let back: NsmfEventExposureNotification =
            serde_json::from_value(serde_json::to_value(&body).expect("serialize"))
                .expect("deserialize");
        assert_eq!(back, body);
    }

    #[test]
    fn subscription_round_trip_keeps_spec_spellings() {
        let subscription = NsmfEventExposure {
            imme_rep: Some(true),
            service_name: Some("nsmf-event-exposure".into()),
            any_ue_ind: Some(true),
            ..NsmfEventExposure::new(
                "n-1",
                "http://af.example/notify",
                vec![EventSubscription::up_path_change(DnaiChangeType::EarlyLate)],
            )
        };
        let json = serde_json::to_value(&subscription).expect("serialize");
        assert_eq!(json["ImmeRep"], true);
        assert_eq!(json["serviveName"], "nsmf-event-exposure");
        assert_eq!(json["eventSubs"][0]["dnaiChgType"], "EARLY_LATE");
        let back: NsmfEventExposure = serde_json::from_value(json).expect("deserialize");
        assert_eq!(back, subscription);
        assert!(back.is_any_ue());
    }

    #[test]
    fn empty_event_lists_are_rejected() {
        let body = json!({"notifId": "n", "notifUri": "http://af/n", "eventSubs": []});
        assert!(serde_json::from_value::<NsmfEventExposure>(body).is_err());
        let body = json!({"notifId": "n", "eventNotifs": []});
        assert!(serde_json::from_value::<NsmfEventExposureNotification>(body).is_err());
    }

    #[test]
    fn unknown_event_is_kept() {
        let sub: EventSubscription =
            serde_json::from_value(json!({"event": "FUTURE_EVENT"})).expect("deserialize");
        assert_eq!(sub.event, SmfEvent::Other("FUTURE_EVENT".into()));
    }
}

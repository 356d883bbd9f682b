//! TrafficInfluence of the NEF (3GPP TS 29.522 V16.7.0, `TS29522_TrafficInfluence.yaml`, API
//! 1.1.2): an AF that is not trusted asks the network to route its traffic and to be told of
//! user-plane path changes, through the NEF.
//!
//! The AF creates a subscription by `POST {apiRoot}/3gpp-traffic-influence/v1/{afId}/subscriptions`
//! with a [`TrafficInfluSub`] (answered 201 + `Location`, the body with `self`); with
//! `subscribedEvents: [UP_PATH_CHANGE]` the NEF POSTs an [`EventNotification`] to
//! `notificationDestination` for every path change (answered 204), and when the AF asked to
//! acknowledge them (`afAckInd: true`) the notification carries `afAckUri`, to which the AF POSTs
//! an [`AfAckInfo`]. `PATCH` takes a [`TrafficInfluSubPatch`] (JSON merge patch).
//!
//! Field names are the YAML's. Request bodies the NEF accepts reject unknown fields. Properties
//! whose types do not matter to this project are kept as raw [`serde_json::Value`]s.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::Ipv6Net;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::common::{
    extensible_enum, non_empty, Dnai, DnaiChangeType, Gpsi, MacAddr48, RouteToLocation, Snssai,
};

/// API name and version: the path prefix of every resource.
pub const API_ROOT_PATH: &str = "/3gpp-traffic-influence/v1";

extensible_enum! {
    /// `SubscribedEvent`.
    SubscribedEvent {
        /// Tell the AF when the UP path of the PDU session changes.
        UpPathChange = "UP_PATH_CHANGE",
    }
}

extensible_enum! {
    /// `AfResultStatus`: the AF's answer to a path change it was asked to acknowledge.
    AfResultStatus {
        /// The application layer is ready, or the relocation is completed.
        Success = "SUCCESS",
        /// The application relocation fails due to temporary congestion.
        TemporaryCongestion = "TEMPORARY_CONGESTION",
        /// The application relocation fails because it is not allowed.
        RelocNoAllowed = "RELOC_NO_ALLOWED",
        /// The application relocation fails for another reason (`OTHER`).
        OtherReason = "OTHER",
    }
}

/// `FlowInfo` (TS 29.122): one IP flow and its packet filters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FlowInfo {
    /// Identifies the flow.
    pub flow_id: i32,
    /// At most two IPFilterRule strings (UL and/or DL), TS 29.214 §5.3.8.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flow_descriptions: Vec<String>,
}

/// `TrafficInfluSub`: a traffic influence subscription (request and 201/200 body).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficInfluSub {
    /// The service on behalf of which the AF asks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub af_service_id: Option<String>,
    /// The application the request is for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub af_app_id: Option<String>,
    /// The AF's transaction id, echoed in notifications.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub af_trans_id: Option<String>,
    /// Whether the application can be relocated once a location was selected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_relo_ind: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dnn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snssai: Option<Snssai>,
    /// A group of UEs (`ExternalGroupId`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_group_id: Option<String>,
    /// The request applies to any UE.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub any_ue_ind: Option<bool>,
    /// The events the AF wants to hear of (at least one).
    #[serde(
        default,
        deserialize_with = "some_non_empty",
        skip_serializing_if = "Option::is_none"
    )]
    pub subscribed_events: Option<Vec<SubscribedEvent>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpsi: Option<Gpsi>,
    /// The UE, by its IPv4 address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv4_addr: Option<Ipv4Addr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_domain: Option<String>,
    /// The UE, by its IPv6 address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv6_addr: Option<Ipv6Addr>,
    /// The UE, by its MAC address (Ethernet PDU sessions).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac_addr: Option<MacAddr48>,
    /// Early, late or both notifications of `UP_PATH_CHANGE`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dnai_chg_type: Option<DnaiChangeType>,
    /// Where notifications are POSTed (`Link`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notification_destination: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_test_notification: Option<bool>,
    /// `WebsockNotifConfig` of TS 29.122 (raw JSON).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub websock_notif_config: Option<Value>,
    /// The subscription's own URI, set by the NEF.
    #[serde(rename = "self", skip_serializing_if = "Option::is_none")]
    pub self_link: Option<String>,
    /// IP packet filters of the application's traffic.
    #[serde(
        default,
        deserialize_with = "some_non_empty",
        skip_serializing_if = "Option::is_none"
    )]
    pub traffic_filters: Option<Vec<FlowInfo>>,
    /// Ethernet packet filters (`EthFlowDescription` of TS 29.514, raw JSON).
    #[serde(
        default,
        deserialize_with = "some_non_empty",
        skip_serializing_if = "Option::is_none"
    )]
    pub eth_traffic_filters: Option<Vec<Value>>,
    /// The N6 traffic routing per DNAI.
    #[serde(
        default,
        deserialize_with = "some_non_empty",
        skip_serializing_if = "Option::is_none"
    )]
    pub traffic_routes: Option<Vec<RouteToLocation>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tfc_corr_ind: Option<bool>,
    /// `TemporalValidity` of TS 29.514 (raw JSON).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub temp_validities: Vec<Value>,
    #[serde(
        default,
        deserialize_with = "some_non_empty",
        skip_serializing_if = "Option::is_none"
    )]
    pub valid_geo_zone_ids: Option<Vec<String>>,
    /// The AF acknowledges `UP_PATH_CHANGE` notifications (and the network waits for it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub af_ack_ind: Option<bool>,
    /// The UE's IP address is to be kept across a path change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addr_preser_ind: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub supp_feat: Option<String>,
}

/// `Some` of a `Vec` that must not be empty (`minItems: 1` on an optional array).
fn some_non_empty<'de, D, T>(deserializer: D) -> Result<Option<Vec<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    non_empty(deserializer).map(Some)
}

/// A JSON merge patch field that may be `null`: absent → `None` (unchanged), `null` →
/// `Some(None)` (removed), a value → `Some(Some(v))`.
fn nullable<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// `TrafficInfluSubPatch`: what a `PATCH` (`application/merge-patch+json`) may change; absent
/// fields stay, `null` removes a field where the YAML allows it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficInfluSubPatch {
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Option::is_none"
    )]
    pub app_relo_ind: Option<Option<bool>>,
    #[serde(
        default,
        deserialize_with = "some_non_empty",
        skip_serializing_if = "Option::is_none"
    )]
    pub traffic_filters: Option<Vec<FlowInfo>>,
    #[serde(
        default,
        deserialize_with = "some_non_empty",
        skip_serializing_if = "Option::is_none"
    )]
    pub eth_traffic_filters: Option<Vec<Value>>,
    #[serde(
        default,
        deserialize_with = "some_non_empty",
        skip_serializing_if = "Option::is_none"
    )]
    pub traffic_routes: Option<Vec<RouteToLocation>>,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Option::is_none"
    )]
    pub tfc_corr_ind: Option<Option<bool>>,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Option::is_none"
    )]
    pub temp_validities: Option<Option<Vec<Value>>>,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Option::is_none"
    )]
    pub valid_geo_zone_ids: Option<Option<Vec<String>>>,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Option::is_none"
    )]
    pub af_ack_ind: Option<Option<bool>>,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Option::is_none"
    )]
    pub addr_preser_ind: Option<Option<bool>>,
}

impl TrafficInfluSubPatch {
    /// `sub` with this patch applied (RFC 7396: present fields replace, `null` removes).
    pub fn apply(&self, sub: &TrafficInfluSub) -> TrafficInfluSub {
        fn set<T: Clone>(field: &mut Option<T>, patch: &Option<Option<T>>) {
            if let Some(value) = patch {
                field.clone_from(value);
            }
        }
        let mut out = sub.clone();
        set(&mut out.app_relo_ind, &self.app_relo_ind);
        set(&mut out.tfc_corr_ind, &self.tfc_corr_ind);
        set(&mut out.valid_geo_zone_ids, &self.valid_geo_zone_ids);
        set(&mut out.af_ack_ind, &self.af_ack_ind);
        set(&mut out.addr_preser_ind, &self.addr_preser_ind);
        if let Some(v) = &self.temp_validities {
            out.temp_validities = v.clone().unwrap_or_default();
        }
        if self.traffic_filters.is_some() {
            out.traffic_filters.clone_from(&self.traffic_filters);
        }
        if self.eth_traffic_filters.is_some() {
            out.eth_traffic_filters
                .clone_from(&self.eth_traffic_filters);
        }
        if self.traffic_routes.is_some() {
            out.traffic_routes.clone_from(&self.traffic_routes);
        }
        out
    }
}

/// `EventNotification`: a user-plane path change, POSTed to `notificationDestination`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventNotification {
    /// The subscription's `afTransId`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub af_trans_id: Option<String>,
    /// Early or late notification.
    pub dnai_chg_type: DnaiChangeType,
    /// Traffic routing at the source DNAI.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_traffic_route: Option<RouteToLocation>,
    /// The event (`UP_PATH_CHANGE`).
    pub subscribed_event: SubscribedEvent,
    /// Traffic routing at the target DNAI.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_traffic_route: Option<RouteToLocation>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_dnai: Option<Dnai>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_dnai: Option<Dnai>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpsi: Option<Gpsi>,
    /// The UE's IPv4 address on the source path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src_ue_ipv4_addr: Option<Ipv4Addr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src_ue_ipv6_prefix: Option<Ipv6Net>,
    /// The UE's IPv4 address on the target path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tgt_ue_ipv4_addr: Option<Ipv4Addr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tgt_ue_ipv6_prefix: Option<Ipv6Net>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ue_mac: Option<MacAddr48>,
    /// Where the AF acknowledges this notification ([`AfAckInfo`]), when it was asked to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub af_ack_uri: Option<String>,
}

impl EventNotification {
    /// A `UP_PATH_CHANGE` notification of `dnai_chg_type` with nothing else set.
    pub fn up_path_change(dnai_chg_type: DnaiChangeType) -> Self {
        Self {
            af_trans_id: None,
            dnai_chg_type,
            source_traffic_route: None,
            subscribed_event: SubscribedEvent::UpPathChange,
            target_traffic_route: None,
            source_dnai: None,
            target_dnai: None,
            gpsi: None,
            src_ue_ipv4_addr: None,
            src_ue_ipv6_prefix: None,
            tgt_ue_ipv4_addr: None,
            tgt_ue_ipv6_prefix: None,
            ue_mac: None,
            af_ack_uri: None,
        }
    }
}

/// `AfResultInfo`: the AF's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AfResultInfo {
    pub af_status: AfResultStatus,
    /// The traffic routing the AF now uses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traffic_route: Option<RouteToLocation>,
}

impl AfResultInfo {
    /// A result with only `af_status`.
    pub fn new(af_status: AfResultStatus) -> Self {
        Self {
            af_status,
            traffic_route: None,
        }
    }
}

/// `AfAckInfo`: the AF's acknowledgement, POSTed to `afAckUri` (answered 204).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AfAckInfo {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub af_trans_id: Option<String>,
    pub ack_result: AfResultInfo,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpsi: Option<Gpsi>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_merge_patch_replaces_removes_and_keeps() {
        let sub = TrafficInfluSub {
            af_app_id: Some("app".into()),
            any_ue_ind: Some(true),
            af_ack_ind: Some(true),
            app_relo_ind: Some(false),
            addr_preser_ind: Some(true),
            ..TrafficInfluSub::default()
        };
        let patch: TrafficInfluSubPatch =
            serde_json::from_value(json!({"afAckInd": null, "appReloInd": true})).expect("patch");
        assert_eq!(patch.af_ack_ind, Some(None));
        assert_eq!(patch.app_relo_ind, Some(Some(true)));
        assert_eq!(patch.addr_preser_ind, None);
        let out = patch.apply(&sub);
        assert_eq!(out.af_ack_ind, None, "null removes");
        assert_eq!(out.app_relo_ind, Some(true), "a value replaces");
        assert_eq!(out.addr_preser_ind, Some(true), "absent keeps");
        assert_eq!(
            serde_json::to_value(&patch).expect("json"),
            json!({"afAckInd": null, "appReloInd": true})
        );
        // Fields the YAML does not let a patch remove, or does not let it touch at all.
        assert!(
            serde_json::from_value::<TrafficInfluSubPatch>(json!({"trafficRoutes": null})).is_err()
        );
        assert!(
            serde_json::from_value::<TrafficInfluSubPatch>(json!({"anyUeInd": false})).is_err()
        );
    }

    #[test]
    fn empty_lists_and_unknown_fields_are_refused() {
        for body in [
            json!({"afAppId": "a", "anyUeInd": true, "subscribedEvents": []}),
            json!({"afAppId": "a", "anyUeInd": true, "trafficRoutes": []}),
            json!({"afAppId": "a", "anyUeInd": true, "ueIpv4": "10.0.0.1"}),
        ] {
            assert!(
                serde_json::from_value::<TrafficInfluSub>(body.clone()).is_err(),
                "{body}"
            );
        }
        let ack: AfAckInfo =
            serde_json::from_value(json!({"ackResult": {"afStatus": "FUTURE"}})).expect("ack");
        assert_eq!(
            ack.ack_result.af_status,
            AfResultStatus::Other("FUTURE".into())
        );
    }
}

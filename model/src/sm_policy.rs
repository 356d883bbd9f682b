//! The parts of Npcf_SMPolicyControl (3GPP TS 29.512 V16, `TS29512_Npcf_SMPolicyControl.yaml`)
//! that carry an AF's traffic influence to the SMF: [`TrafficControlData`] with its
//! [`UpPathChgEvent`] (where to notify user-plane path changes, early and/or late, and whether
//! the AF acknowledges them: `afAckInd`).
//!
//! Field names are the YAML's; bodies the SMF accepts reject unknown fields. Properties whose
//! types do not matter to this project are kept as raw [`serde_json::Value`]s.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Path prefix of the SMF's N7 stand-in: where the NEF (standing in for the PCF) puts traffic
/// control data, `PUT {N7_LITE_BASE}/traffic-controls/{tcId}?anyUeInd=true|ueIpv4Addr=A|gpsi=G`.
pub const N7_LITE_BASE: &str = "/n7-lite/v1";

use crate::common::{DnaiChangeType, RouteToLocation};

/// `UpPathChgEvent`: the subscription to `UP_PATH_CH` a traffic control carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpPathChgEvent {
    /// Where the SMF sends its Nsmf_EventExposure notifications (`Uri`).
    pub notification_uri: String,
    /// The `notifId` of those notifications.
    pub notif_corre_id: String,
    /// Early, late or both.
    pub dnai_chg_type: DnaiChangeType,
    /// The AF acknowledges the notifications: they carry an `ackUri`, and the SMF waits for the
    /// answer before it moves on (TS 23.502 §4.3.6.3).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub af_ack_ind: Option<bool>,
}

impl UpPathChgEvent {
    /// Whether notifications expect an acknowledgement (`afAckInd`, default `false`).
    pub fn expects_ack(&self) -> bool {
        self.af_ack_ind.unwrap_or(false)
    }
}

/// `TrafficControlData`: one traffic control policy of a PDU session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficControlData {
    /// Identifies the policy within the PDU session.
    pub tc_id: String,
    /// `FlowStatus` of TS 29.514 (raw JSON).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flow_status: Option<Value>,
    /// `RedirectInformation` (raw JSON).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect_info: Option<Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add_redirect_info: Vec<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mute_notif: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traffic_steering_pol_id_dl: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traffic_steering_pol_id_ul: Option<String>,
    /// Where the traffic is routed, per DNAI.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route_to_locs: Vec<RouteToLocation>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traff_corre_ind: Option<bool>,
    /// Tell the AF (or the NEF) of user-plane path changes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub up_path_chg_event: Option<UpPathChgEvent>,
    /// `SteeringFunctionality` (raw JSON).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steer_fun: Option<Value>,
    /// `SteeringMode` (raw JSON).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steer_mode_dl: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steer_mode_ul: Option<Value>,
    /// `MulticastAccessControl` (raw JSON).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mul_acc_ctrl: Option<Value>,
}

impl TrafficControlData {
    /// A traffic control `tc_id` with nothing else set.
    pub fn new(tc_id: impl Into<String>) -> Self {
        Self {
            tc_id: tc_id.into(),
            flow_status: None,
            redirect_info: None,
            add_redirect_info: Vec::new(),
            mute_notif: None,
            traffic_steering_pol_id_dl: None,
            traffic_steering_pol_id_ul: None,
            route_to_locs: Vec::new(),
            traff_corre_ind: None,
            up_path_chg_event: None,
            steer_fun: None,
            steer_mode_dl: None,
            steer_mode_ul: None,
            mul_acc_ctrl: None,
        }
    }
}

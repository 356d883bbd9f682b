//! The testbed's own RAN and core signalling, where 3GPP has no JSON form (NGAP, XnAP and RRC are
//! ASN.1 over SCTP/PDCP). Kept small and named after the procedures they stand for. Every body here
//! is JSON over HTTP/2 (h2c) with the deployment's bearer token, except radio frames (UDP, see
//! [`radio`]).
//!
//! * [`radio`]: UE ↔ gNB over UDP on the air segment (RRC stand-in + user data).
//! * [`n2`]: gNB → SMF, standing for NGAP through the AMF (PDU session resource setup, path switch).
//! * [`xn`]: gNB ↔ gNB (XnAP handover preparation) and the testbed's handover trigger.
//! * [`lr`]: the Location Registry: UE IP → serving UPF, with pushes to IAPs.

use serde::{Deserialize, Serialize};
use std::net::{Ipv4Addr, SocketAddrV4};

/// A GTP-U tunnel endpoint: the address and TEID a peer sends G-PDUs to (an F-TEID).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TunnelEndpoint {
    pub ipv4: Ipv4Addr,
    pub teid: u32,
}

/// A step of a procedure with its time, for timelines printed by `testbed handover`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TimelineStep {
    /// What happened, e.g. `pfcp session establishment at upf-b`.
    pub step: String,
    /// Microseconds since the procedure started (monotonic clock of the process that did it).
    pub at_us: u64,
    /// How long the step took, in microseconds.
    pub took_us: u64,
    /// When the step began on the host's wall clock (µs since the Unix epoch). Every network
    /// function runs on the same host, so steps from different processes line up on this clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_unix_us: Option<u64>,
}

/// The host's wall clock in µs since the Unix epoch (see [`TimelineStep::at_unix_us`]).
pub fn unix_now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Radio (UE ↔ gNB) over UDP, port [`radio::PORT`] on the gNB's air address.
///
/// Each datagram starts with one octet:
/// * [`radio::DATA`] (0x00): followed by the UE's radio id (u16, big endian) and one IP packet.
/// * [`radio::CONTROL`] (0x01): followed by one JSON [`radio::Rrc`] message.
pub mod radio {
    use super::*;

    /// The gNB's radio port.
    pub const PORT: u16 = 4997;
    /// First octet of a user-data frame.
    pub const DATA: u8 = 0x00;
    /// First octet of a control frame.
    pub const CONTROL: u8 = 0x01;

    /// RRC stand-in messages.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(tag = "msg", rename_all = "camelCase", deny_unknown_fields)]
    pub enum Rrc {
        /// UE → gNB: attach and ask for a PDU session (RRC setup + registration + PDU session
        /// establishment request, in one).
        #[serde(rename_all = "camelCase")]
        AttachRequest { supi: String, ue_name: String },
        /// gNB → UE: the session is up. `radio_id` tags the UE's data frames at this gNB.
        #[serde(rename_all = "camelCase")]
        AttachAccept {
            radio_id: u16,
            ue_ipv4: Ipv4Addr,
            qfi: u8,
        },
        /// gNB → UE: attach failed.
        AttachReject { cause: String },
        /// Source gNB → UE: move to the target gNB (RRCReconfiguration with mobility).
        #[serde(rename_all = "camelCase")]
        HandoverCommand {
            target_gnb: String,
            /// The target gNB's radio address.
            target: SocketAddrV4,
            /// The radio id the target gNB assigned.
            radio_id: u16,
        },
        /// UE → target gNB: arrived (RRCReconfigurationComplete).
        #[serde(rename_all = "camelCase")]
        HandoverConfirm { supi: String, radio_id: u16 },
    }
}

/// gNB → SMF, standing for NGAP through the AMF. Served by the SMF under [`n2::BASE`].
pub mod n2 {
    use super::*;

    /// Path prefix of the N2 stand-in API on the SMF.
    pub const BASE: &str = "/n2-lite/v1";

    /// `POST {BASE}/pdu-sessions`: PDU Session Resource Setup for a UE at this gNB.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct PduSessionSetupRequest {
        pub supi: String,
        /// The gNB's name, e.g. `gnb-a` (selects the site's UPF).
        pub gnb: String,
        /// Where the UPF sends downlink G-PDUs for this UE.
        pub gnb_tunnel: TunnelEndpoint,
    }

    /// 201 answer to [`PduSessionSetupRequest`].
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct PduSessionSetupResponse {
        pub ue_ipv4: Ipv4Addr,
        pub pdu_session_id: u8,
        pub qfi: u8,
        /// Where the gNB sends uplink G-PDUs (the UPF's N3 F-TEID).
        pub upf_tunnel: TunnelEndpoint,
    }

    /// `POST {BASE}/path-switch`: PathSwitchRequest from the target gNB after an Xn handover.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct PathSwitchRequest {
        pub supi: String,
        pub ue_ipv4: Ipv4Addr,
        /// The target gNB's name.
        pub gnb: String,
        /// The target gNB's downlink tunnel.
        pub gnb_tunnel: TunnelEndpoint,
    }

    /// 200 answer to [`PathSwitchRequest`] (PathSwitchRequestAcknowledge).
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct PathSwitchAck {
        /// The (possibly relocated) UPF's N3 F-TEID for uplink.
        pub upf_tunnel: TunnelEndpoint,
        /// The UPF now serving the UE, e.g. `upf-b`.
        pub upf: String,
        /// The SMF's steps: PFCP at the target, LR update, notifications, PFCP at the source.
        pub timeline: Vec<TimelineStep>,
    }
}

/// gNB ↔ gNB over the Xn segment (XnAP stand-in), and the testbed's trigger on the source gNB.
pub mod xn {
    use super::*;

    /// Path prefix of the Xn stand-in API on every gNB (listening on its Xn address).
    pub const BASE: &str = "/xnap-lite/v1";
    /// Port of the Xn API and of the testbed control API of a gNB.
    pub const PORT: u16 = 38422;
    /// Path prefix of the gNB's control API (listening on its SBI address, same port).
    pub const CONTROL_BASE: &str = "/gnb-control/v1";

    /// `POST {BASE}/handover-requests`: source → target gNB.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct HandoverRequest {
        pub source_gnb: String,
        pub supi: String,
        pub ue_ipv4: Ipv4Addr,
        pub qfi: u8,
        /// The UPF's uplink tunnel the target uses until the path switch answers.
        pub upf_tunnel: TunnelEndpoint,
        /// The UE's testbed name (e.g. `ue1`), when the source knows it: lets the target accept a
        /// [`HandoverTrigger`] that names the UE rather than its SUPI.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub ue_name: Option<String>,
    }

    /// 201 answer to [`HandoverRequest`] (HandoverRequestAcknowledge).
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct HandoverRequestAck {
        /// The radio id the UE will use at the target.
        pub radio_id: u16,
        /// The target's radio address.
        pub radio: SocketAddrV4,
        /// Where the source forwards downlink data that still reaches it (Xn-U data forwarding).
        pub forwarding_tunnel: TunnelEndpoint,
    }

    /// `POST {BASE}/ue-context-releases`: target → source gNB once the path switch is acknowledged
    /// (XnAP UE Context Release). The source stops forwarding after the End Marker and forgets the UE.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct UeContextRelease {
        pub target_gnb: String,
        pub supi: String,
        /// The target's and the SMF's steps, relative to the HandoverRequest's arrival at the target.
        pub timeline: Vec<TimelineStep>,
    }

    /// `POST {CONTROL_BASE}/handovers` on the source gNB: hand UE `supi` (or name) over to `target_gnb`.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct HandoverTrigger {
        /// The UE's SUPI or its testbed name (e.g. `ue1`).
        pub ue: String,
        pub target_gnb: String,
    }

    /// Answer to [`HandoverTrigger`], once the path switch completed at the target.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct HandoverReport {
        pub supi: String,
        pub ue_ipv4: Ipv4Addr,
        pub source_gnb: String,
        pub target_gnb: String,
        /// Source, target and SMF steps merged, times relative to the trigger.
        pub timeline: Vec<TimelineStep>,
        /// Downlink packets the source forwarded to the target over Xn-U.
        pub forwarded_packets: u64,
    }
}

/// The Location Registry: which UPF serves each UE address. Served under [`lr::BASE`].
pub mod lr {
    use super::*;

    /// Path prefix of the LR API.
    pub const BASE: &str = "/lr/v1";

    /// Where downlink for a UE goes: `PUT {BASE}/ues/{ipv4}` (SMF), `GET {BASE}/ues/{ipv4}` (IAP
    /// on a cache miss), `GET {BASE}/ues` (all), and the body of every push.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct UeLocation {
        pub ue_ipv4: Ipv4Addr,
        /// Serving site, e.g. `a`.
        pub site: String,
        /// DNAI of the serving site's edge cloud.
        pub dnai: String,
        /// The serving UPF's downlink F-TEID (on its N9 address) for this UE.
        pub upf_tunnel: TunnelEndpoint,
        /// Increases with every update of this UE, so a late push never overwrites a newer one.
        pub version: u64,
    }

    /// `POST {BASE}/subscriptions`: push every change to `notify_uri` (POST, body [`UeLocation`]).
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct LrSubscription {
        pub notify_uri: String,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rrc_is_tagged_json_and_rejects_unknown_fields() {
        let m = radio::Rrc::AttachAccept {
            radio_id: 3,
            ue_ipv4: Ipv4Addr::new(192, 168, 1, 2),
            qfi: 9,
        };
        let text = serde_json::to_string(&m).expect("json");
        assert_eq!(
            text,
            r#"{"msg":"attachAccept","radioId":3,"ueIpv4":"192.168.1.2","qfi":9}"#
        );
        assert_eq!(serde_json::from_str::<radio::Rrc>(&text).expect("parse"), m);
        assert!(serde_json::from_str::<radio::Rrc>(
            r#"{"msg":"attachReject","cause":"x","extra":1}"#
        )
        .is_err());
    }

    #[test]
    fn lr_location_round_trips() {
        let l = lr::UeLocation {
            ue_ipv4: Ipv4Addr::new(192, 168, 1, 2),
            site: "b".into(),
            dnai: "edge-y".into(),
            upf_tunnel: TunnelEndpoint {
                ipv4: Ipv4Addr::new(10, 90, 0, 2),
                teid: 0x200,
            },
            version: 2,
        };
        let v = serde_json::to_value(&l).expect("json");
        assert_eq!(v["upfTunnel"]["teid"], 0x200);
        assert_eq!(
            serde_json::from_value::<lr::UeLocation>(v).expect("parse"),
            l
        );
    }
}

//! The NEF's traffic influence subscriptions with no I/O: what it accepts, how it stores them,
//! and how a subscription becomes the SMF's traffic control data (TS 29.512) and an SMF
//! notification (TS 29.508) becomes the AF's (TS 29.522).
//!
//! What this NEF supports of TS 29.522 (anything else is refused with 400 naming the field):
//! * the UE: `anyUeInd: true`, `ipv4Addr` or `gpsi` (the testbed's UEs have no GPSI: accepted,
//!   never notified); not `ipv6Addr`, `macAddr`, `externalGroupId`;
//! * the application: exactly one of `afAppId`, `trafficFilters`, `ethTrafficFilters` (kept;
//!   the SMF's user plane does not filter by application);
//! * events: `UP_PATH_CHANGE` only, with `notificationDestination` (inside the deployment) and
//!   `dnaiChgType` EARLY, LATE or EARLY_LATE; `afAckInd` only with it;
//! * `trafficRoutes` go to the SMF as `routeToLocs`, `tfcCorrInd` as `traffCorreInd`;
//!   `afServiceId`, `afTransId`, `dnn`, `snssai`, `ipDomain`, `appReloInd`, `addrPreserInd`
//!   (the UE's address is always kept) and `suppFeat` are kept;
//! * not `websockNotifConfig`, `requestTestNotification: true`, `tempValidities`,
//!   `validGeoZoneIds`.

use std::collections::BTreeMap;

use model::common::DnaiChangeType;
use model::nsmf_event_exposure::{EventNotification as SmfNotification, SmfEvent};
use model::problem::{cause, InvalidParams, Refusal};
use model::sm_policy::{TrafficControlData, UpPathChgEvent};
use model::traffic_influence::{EventNotification, SubscribedEvent, TrafficInfluSub};
use sbi::CallbackNetworks;
use serde::{Deserialize, Serialize};

/// A request the NEF refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InfluenceError {
    #[error("{}", .0.detail)]
    Invalid(Refusal),
    /// No such subscription of this AF (another AF's subscriptions are not visible either).
    #[error("no subscription {subscription_id} of af {af_id}")]
    NotFound {
        af_id: String,
        subscription_id: String,
    },
}

/// One subscription as the store keeps it: its owner and the subscription (with `self`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StoredInfluence {
    pub af_id: String,
    pub subscription_id: String,
    pub subscription: TrafficInfluSub,
}

/// Which UEs a subscription is about, as the SMF's N7 stand-in takes it (its query).
pub fn ue_query(sub: &TrafficInfluSub) -> String {
    match (&sub.ipv4_addr, &sub.gpsi) {
        (Some(a), _) => format!("ueIpv4Addr={a}"),
        (None, Some(g)) => format!("gpsi={g}"),
        (None, None) => "anyUeInd=true".to_owned(),
    }
}

/// Whether `sub` asks for `UP_PATH_CHANGE` notifications.
pub fn wants_up_path_change(sub: &TrafficInfluSub) -> bool {
    sub.subscribed_events
        .as_ref()
        .is_some_and(|e| e.contains(&SubscribedEvent::UpPathChange))
}

/// Checks that this NEF can serve `sub` and call its `notificationDestination` (one of
/// `callbacks`); see the module documentation.
pub fn validate(sub: &TrafficInfluSub, callbacks: &CallbackNetworks) -> Result<(), InfluenceError> {
    let mut invalid = InvalidParams::new();
    let ues = [
        ("/anyUeInd", sub.any_ue_ind == Some(true)),
        ("/ipv4Addr", sub.ipv4_addr.is_some()),
        ("/gpsi", sub.gpsi.is_some()),
        ("/ipv6Addr", sub.ipv6_addr.is_some()),
        ("/macAddr", sub.mac_addr.is_some()),
        ("/externalGroupId", sub.external_group_id.is_some()),
    ];
    match ues.iter().filter(|(_, set)| *set).count() {
        0 => invalid.add(
            cause::MANDATORY_IE_MISSING,
            "/anyUeInd",
            "one of anyUeInd: true, ipv4Addr or gpsi names the UEs",
        ),
        1 => {}
        _ => invalid.add(
            cause::MANDATORY_IE_INCORRECT,
            "/anyUeInd",
            "name the UEs one way only (anyUeInd: true, ipv4Addr or gpsi)",
        ),
    }
    for (param, set) in &ues[3..] {
        if *set {
            invalid.add(
                cause::OPTIONAL_IE_INCORRECT,
                *param,
                "not supported by this nef (anyUeInd, ipv4Addr, gpsi)",
            );
        }
    }
    let apps = [
        sub.af_app_id.is_some(),
        sub.traffic_filters.is_some(),
        sub.eth_traffic_filters.is_some(),
    ];
    if apps.iter().filter(|set| **set).count() != 1 {
        invalid.add(
            cause::MANDATORY_IE_INCORRECT,
            "/afAppId",
            "exactly one of afAppId, trafficFilters or ethTrafficFilters names the traffic",
        );
    }
    if let Some(events) = &sub.subscribed_events {
        for (i, e) in events.iter().enumerate() {
            if *e != SubscribedEvent::UpPathChange {
                invalid.add(
                    cause::MANDATORY_IE_INCORRECT,
                    format!("/subscribedEvents/{i}"),
                    "only UP_PATH_CHANGE is supported",
                );
            }
        }
        match &sub.notification_destination {
            None => invalid.add(
                cause::MANDATORY_IE_MISSING,
                "/notificationDestination",
                "subscribedEvents need a notificationDestination",
            ),
            Some(uri) => {
                if let Err(e) = callbacks.check(uri) {
                    invalid.add(
                        cause::MANDATORY_IE_INCORRECT,
                        "/notificationDestination",
                        e.to_string(),
                    );
                }
            }
        }
        match &sub.dnai_chg_type {
            None => invalid.add(
                cause::MANDATORY_IE_MISSING,
                "/dnaiChgType",
                "UP_PATH_CHANGE needs dnaiChgType",
            ),
            Some(DnaiChangeType::Other(_)) => invalid.add(
                cause::MANDATORY_IE_INCORRECT,
                "/dnaiChgType",
                "dnaiChgType must be EARLY, LATE or EARLY_LATE",
            ),
            Some(_) => {}
        }
    }
    if sub.af_ack_ind == Some(true) && !wants_up_path_change(sub) {
        invalid.add(
            cause::OPTIONAL_IE_INCORRECT,
            "/afAckInd",
            "afAckInd acknowledges UP_PATH_CHANGE notifications: subscribe to them",
        );
    }
    let unsupported = [
        ("/websockNotifConfig", sub.websock_notif_config.is_some()),
        (
            "/requestTestNotification",
            sub.request_test_notification == Some(true),
        ),
        ("/tempValidities", !sub.temp_validities.is_empty()),
        ("/validGeoZoneIds", sub.valid_geo_zone_ids.is_some()),
    ];
    for (param, set) in unsupported {
        if set {
            invalid.add(
                cause::OPTIONAL_IE_INCORRECT,
                param,
                "not supported by this nef",
            );
        }
    }
    invalid.check().map_err(InfluenceError::Invalid)
}

/// The traffic control data the SMF gets for subscription `id` (`tcId` = the subscription id);
/// its notifications go to `notification_uri` (the NEF's callback) with `notifId` = the id.
pub fn traffic_control(
    id: &str,
    sub: &TrafficInfluSub,
    notification_uri: String,
) -> TrafficControlData {
    TrafficControlData {
        route_to_locs: sub.traffic_routes.clone().unwrap_or_default(),
        traff_corre_ind: sub.tfc_corr_ind,
        up_path_chg_event: wants_up_path_change(sub).then(|| UpPathChgEvent {
            notification_uri,
            notif_corre_id: id.to_owned(),
            dnai_chg_type: sub
                .dnai_chg_type
                .clone()
                .unwrap_or(DnaiChangeType::EarlyLate),
            af_ack_ind: sub.af_ack_ind,
        }),
        ..TrafficControlData::new(id)
    }
}

/// The AF's notification of the SMF's `UP_PATH_CH` event `e` for subscription `sub`;
/// `af_ack_uri` when the SMF expects an acknowledgement. `None` for any other event.
pub fn af_notification(
    sub: &TrafficInfluSub,
    e: &SmfNotification,
    af_ack_uri: Option<String>,
) -> Option<EventNotification> {
    if e.event != SmfEvent::UpPathCh {
        return None;
    }
    Some(EventNotification {
        af_trans_id: sub.af_trans_id.clone(),
        source_traffic_route: e.source_tra_routing.clone(),
        target_traffic_route: e.target_tra_routing.clone(),
        source_dnai: e.source_dnai.clone(),
        target_dnai: e.target_dnai.clone(),
        gpsi: e.gpsi.clone().or_else(|| sub.gpsi.clone()),
        src_ue_ipv4_addr: e.source_ue_ipv4_addr,
        src_ue_ipv6_prefix: e.source_ue_ipv6_prefix,
        tgt_ue_ipv4_addr: e.target_ue_ipv4_addr,
        tgt_ue_ipv6_prefix: e.target_ue_ipv6_prefix,
        ue_mac: e.ue_mac.clone(),
        af_ack_uri,
        ..EventNotification::up_path_change(e.dnai_chg_type.clone()?)
    })
}

/// The NEF's subscriptions, by id (`sub-N`, never reused).
#[derive(Debug)]
pub struct Influences {
    entries: BTreeMap<String, StoredInfluence>,
    last: u64,
    callbacks: CallbackNetworks,
}

impl Influences {
    /// The subscriptions a (re)started NEF has; `last` is the number of the last id handed out.
    pub fn restore(
        callbacks: CallbackNetworks,
        last: u64,
        entries: impl IntoIterator<Item = StoredInfluence>,
    ) -> Self {
        Self {
            entries: entries
                .into_iter()
                .map(|e| (e.subscription_id.clone(), e))
                .collect(),
            last,
            callbacks,
        }
    }

    /// The number of the last id handed out.
    pub fn last_id(&self) -> u64 {
        self.last
    }

    /// Checks `sub` and hands out the id it will have (nothing is stored yet: [`Self::insert`]).
    pub fn admit(&mut self, sub: &TrafficInfluSub) -> Result<String, InfluenceError> {
        validate(sub, &self.callbacks)?;
        self.last += 1;
        Ok(format!("sub-{}", self.last))
    }

    /// Checks `sub` as the new version of `af_id`'s subscription `id`.
    pub fn check_replacement(
        &self,
        af_id: &str,
        id: &str,
        sub: &TrafficInfluSub,
    ) -> Result<(), InfluenceError> {
        self.get(af_id, id)?;
        validate(sub, &self.callbacks)
    }

    /// Stores (or replaces) a subscription.
    pub fn insert(&mut self, entry: StoredInfluence) {
        self.entries.insert(entry.subscription_id.clone(), entry);
    }

    /// `af_id`'s subscription `id`.
    pub fn get(&self, af_id: &str, id: &str) -> Result<&StoredInfluence, InfluenceError> {
        self.entries
            .get(id)
            .filter(|e| e.af_id == af_id)
            .ok_or_else(|| InfluenceError::NotFound {
                af_id: af_id.to_owned(),
                subscription_id: id.to_owned(),
            })
    }

    /// Subscription `id`, whoever owns it (the SMF's notifications name only the id).
    pub fn by_id(&self, id: &str) -> Option<&StoredInfluence> {
        self.entries.get(id)
    }

    /// `af_id`'s subscriptions.
    pub fn of(&self, af_id: &str) -> Vec<TrafficInfluSub> {
        self.entries
            .values()
            .filter(|e| e.af_id == af_id)
            .map(|e| e.subscription.clone())
            .collect()
    }

    /// Every subscription.
    pub fn all(&self) -> impl Iterator<Item = &StoredInfluence> {
        self.entries.values()
    }

    /// Removes `af_id`'s subscription `id`.
    pub fn remove(&mut self, af_id: &str, id: &str) -> Result<StoredInfluence, InfluenceError> {
        self.get(af_id, id)?;
        self.entries
            .remove(id)
            .ok_or_else(|| InfluenceError::NotFound {
                af_id: af_id.to_owned(),
                subscription_id: id.to_owned(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::common::{DateTime, RouteToLocation};
    use model::traffic_influence::FlowInfo;
    use std::net::Ipv4Addr;

    fn callbacks() -> CallbackNetworks {
        CallbackNetworks::new(vec!["10.100.0.0/24".parse().expect("net")])
    }

    fn sub() -> TrafficInfluSub {
        TrafficInfluSub {
            af_app_id: Some("stream1".into()),
            af_trans_id: Some("t-1".into()),
            any_ue_ind: Some(true),
            subscribed_events: Some(vec![SubscribedEvent::UpPathChange]),
            dnai_chg_type: Some(DnaiChangeType::Early),
            notification_destination: Some("http://10.100.0.41:9997/ti".into()),
            traffic_routes: Some(vec![RouteToLocation::new(
                "edge-x",
                Ipv4Addr::new(10, 90, 0, 1),
                2152,
            )]),
            af_ack_ind: Some(true),
            ..TrafficInfluSub::default()
        }
    }

    fn params(e: InfluenceError) -> Vec<String> {
        match e {
            InfluenceError::Invalid(r) => r.invalid_params.into_iter().map(|p| p.param).collect(),
            other => panic!("not invalid: {other:?}"),
        }
    }

    #[test]
    fn what_cannot_be_served_is_refused_naming_the_field() {
        assert_eq!(validate(&sub(), &callbacks()), Ok(()));
        let mut s = sub();
        s.any_ue_ind = Some(false);
        assert_eq!(
            params(validate(&s, &callbacks()).expect_err("no ue")),
            ["/anyUeInd"]
        );
        let mut s = sub();
        s.ipv6_addr = Some(std::net::Ipv6Addr::LOCALHOST);
        s.traffic_filters = Some(vec![FlowInfo {
            flow_id: 1,
            flow_descriptions: Vec::new(),
        }]);
        s.subscribed_events = Some(vec![SubscribedEvent::Other("LATER".into())]);
        s.notification_destination = Some("http://8.8.8.8/x".into());
        s.dnai_chg_type = None;
        s.temp_validities = vec![serde_json::json!({})];
        assert_eq!(
            params(validate(&s, &callbacks()).expect_err("all wrong")),
            [
                "/anyUeInd",
                "/ipv6Addr",
                "/afAppId",
                "/subscribedEvents/0",
                "/notificationDestination",
                "/dnaiChgType",
                "/afAckInd",
                "/tempValidities"
            ]
        );
        let mut s = sub();
        s.subscribed_events = None;
        s.notification_destination = None;
        assert_eq!(
            params(validate(&s, &callbacks()).expect_err("ack without events")),
            ["/afAckInd"]
        );
        s.af_ack_ind = None;
        assert_eq!(validate(&s, &callbacks()), Ok(()), "routes only");
    }

    #[test]
    fn a_subscription_becomes_traffic_control_data_and_a_notification_an_af_notification() {
        let s = sub();
        let tc = traffic_control("sub-3", &s, "http://10.100.0.10:8002/cb/sub-3".into());
        assert_eq!(tc.tc_id, "sub-3");
        assert_eq!(Some(tc.route_to_locs.clone()), s.traffic_routes);
        let e = tc.up_path_chg_event.expect("event");
        assert_eq!(
            (e.notif_corre_id.as_str(), e.dnai_chg_type, e.af_ack_ind),
            ("sub-3", DnaiChangeType::Early, Some(true))
        );
        assert_eq!(ue_query(&s), "anyUeInd=true");
        let one = TrafficInfluSub {
            any_ue_ind: None,
            ipv4_addr: Some(Ipv4Addr::new(192, 168, 1, 2)),
            ..s.clone()
        };
        assert_eq!(ue_query(&one), "ueIpv4Addr=192.168.1.2");
        let no_events = TrafficInfluSub {
            subscribed_events: None,
            ..s.clone()
        };
        assert!(traffic_control("sub-4", &no_events, "u".into())
            .up_path_chg_event
            .is_none());

        let at = DateTime::from_unix(1_700_000_000, 0).expect("time");
        let smf = SmfNotification::up_path_change(
            DnaiChangeType::Early,
            Ipv4Addr::new(192, 168, 1, 2),
            RouteToLocation::new("edge-x", Ipv4Addr::new(10, 90, 0, 1), 2152),
            RouteToLocation::new("edge-y", Ipv4Addr::new(10, 90, 0, 2), 2152),
            at,
        );
        let n = af_notification(&s, &smf, Some("http://nef/ack/1".into())).expect("mapped");
        assert_eq!(n.subscribed_event, SubscribedEvent::UpPathChange);
        assert_eq!(n.dnai_chg_type, DnaiChangeType::Early);
        assert_eq!(n.af_trans_id.as_deref(), Some("t-1"));
        assert_eq!(n.source_dnai.as_ref().map(|d| d.as_str()), Some("edge-x"));
        assert_eq!(n.target_traffic_route, smf.target_tra_routing);
        assert_eq!(n.src_ue_ipv4_addr, Some(Ipv4Addr::new(192, 168, 1, 2)));
        assert_eq!(n.af_ack_uri.as_deref(), Some("http://nef/ack/1"));
        let other = SmfNotification::new(SmfEvent::PduSesRel, at);
        assert_eq!(af_notification(&s, &other, None), None);
    }

    #[test]
    fn subscriptions_belong_to_their_af_and_ids_are_not_reused() {
        let mut subs = Influences::restore(callbacks(), 0, []);
        let id = subs.admit(&sub()).expect("admitted");
        assert_eq!(id, "sub-1");
        subs.insert(StoredInfluence {
            af_id: "smo-x".into(),
            subscription_id: id.clone(),
            subscription: sub(),
        });
        assert!(subs.get("smo-x", &id).is_ok());
        assert!(matches!(
            subs.get("smo-y", &id),
            Err(InfluenceError::NotFound { .. })
        ));
        assert!(subs.remove("smo-y", &id).is_err(), "not another af's");
        assert_eq!(subs.of("smo-x").len(), 1);
        assert!(subs.of("smo-y").is_empty());
        assert!(subs.check_replacement("smo-x", &id, &sub()).is_ok());
        subs.remove("smo-x", &id).expect("removed");
        assert_eq!(subs.admit(&sub()).expect("next"), "sub-2");
        let again = Influences::restore(callbacks(), subs.last_id(), []);
        assert_eq!(again.last_id(), 2);
    }
}

//! Nsmf_EventExposure subscriptions with no I/O: validation, storage, and which notifications a
//! user-plane path change owes to whom.
//!
//! What this SMF supports of TS 29.508 (anything else is refused with 400 and says why):
//! * the UE: `anyUeInd: true`, or `supi`, or `gpsi` (the testbed's UEs have no GPSI, so a
//!   GPSI-only subscription is accepted but matches no UE); not `groupId`;
//! * events: only `UP_PATH_CH`, each with `dnaiChgType` `EARLY`, `LATE` or `EARLY_LATE`;
//! * `notifMethod` `ON_EVENT_DETECTION` (default) or `ONE_TIME`; `maxReportNbr` and `expiry`
//!   end a subscription; `pduSeId` restricts it to that PDU session (the testbed's is 1);
//!   `dnn`, `snssai`, `ImmeRep` and the alternative notification addresses are stored and
//!   otherwise ignored;
//! * `notifUri`: an `http(s)` URI whose host is an IPv4 address in the SMF's callback networks
//!   (its own SBI network unless configured), so the SMF never POSTs outside the deployment.
//!
//! Traffic controls (TS 29.512 `TrafficControlData`, put by the NEF on the N7 stand-in, see
//! [`TrafficControls`]) subscribe to `UP_PATH_CH` too, through their `upPathChgEvent`: for any
//! UE, one UE address or a GPSI (which matches no testbed UE); theirs are the notifications that
//! may expect an AF acknowledgement (`afAckInd`). Of the rest of `TrafficControlData` the SMF
//! keeps `routeToLocs`, `traffCorreInd` and `muteNotif`, and refuses what it cannot honour (flow
//! status, redirection, steering policies and modes, multicast access control) with 400.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::SystemTime;

use model::common::{DateTime, DnaiChangeType, RouteToLocation, Supi};
use model::nsmf_event_exposure::{
    EventNotification, NotificationMethod, NsmfEventExposure, NsmfEventExposureNotification,
    SmfEvent, SubscriptionId,
};
use model::problem::{cause, InvalidParam, InvalidParams, Refusal};
use model::sm_policy::TrafficControlData;
use sbi::CallbackNetworks;
use serde::{Deserialize, Serialize};

/// A request the subscription store refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscriptionError {
    #[error("{detail}")]
    Invalid {
        detail: String,
        /// Application error cause (TS 29.500).
        cause: &'static str,
        invalid_params: Vec<InvalidParam>,
    },
    #[error("no subscription {0}")]
    NotFound(SubscriptionId),
    #[error("no traffic control {0}")]
    NoTrafficControl(String),
}

/// Which notification of a path change: before (`EARLY`) or after (`LATE`) the new path is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Timing {
    Early,
    Late,
}

impl Timing {
    /// `early` or `late`, for logs and timelines.
    pub fn label(self) -> &'static str {
        match self {
            Timing::Early => "early",
            Timing::Late => "late",
        }
    }
}

/// Which of a timing's notifications a step sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Audience {
    /// Every subscription that wants this timing.
    All,
    /// Only those that expect an acknowledgement.
    AckExpected,
    /// Only those that expect none.
    NoAck,
}

impl Audience {
    fn includes(self, expects_ack: bool) -> bool {
        match self {
            Audience::All => true,
            Audience::AckExpected => expects_ack,
            Audience::NoAck => !expects_ack,
        }
    }
}

impl Timing {
    fn wanted_by(self, subscribed: &DnaiChangeType) -> bool {
        matches!(
            (self, subscribed),
            (_, DnaiChangeType::EarlyLate)
                | (Timing::Early, DnaiChangeType::Early)
                | (Timing::Late, DnaiChangeType::Late)
        )
    }

    fn change_type(self) -> DnaiChangeType {
        match self {
            Timing::Early => DnaiChangeType::Early,
            Timing::Late => DnaiChangeType::Late,
        }
    }
}

/// A user-plane path change of one UE (a UPF relocation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpPathChange {
    pub supi: String,
    pub pdu_session_id: u8,
    /// The UE's address (kept on both paths).
    pub ue_ipv4: Ipv4Addr,
    /// Routing at the source DNAI (the source UPF's N9 end).
    pub source: RouteToLocation,
    /// Routing at the target DNAI (the target UPF's N9 end).
    pub target: RouteToLocation,
}

/// One notification to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// The subscription (for a traffic control: its `tcId`).
    pub sub_id: SubscriptionId,
    pub notif_uri: String,
    pub body: NsmfEventExposureNotification,
    /// The subscriber acknowledges it (the body gets an `ackUri`).
    pub expects_ack: bool,
}

/// Which UEs a traffic control applies to (the N7 stand-in's query: `anyUeInd=true`,
/// `ueIpv4Addr=A` or `gpsi=G`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum UeScope {
    AnyUe,
    UeIpv4(Ipv4Addr),
    /// The testbed's UEs have no GPSI: kept, never matches.
    Gpsi(String),
}

impl UeScope {
    fn matches(&self, ue: Ipv4Addr) -> bool {
        match self {
            UeScope::AnyUe => true,
            UeScope::UeIpv4(a) => *a == ue,
            UeScope::Gpsi(_) => false,
        }
    }
}

/// A traffic control as the store keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StoredTrafficControl {
    pub scope: UeScope,
    pub data: TrafficControlData,
}

/// Checks that this SMF can honour traffic control `data` for `scope` and call its
/// `notificationUri`; `tc_id` is the resource's id (it must be `data`'s `tcId`).
pub fn validate_traffic_control(
    tc_id: &str,
    data: &TrafficControlData,
    callbacks: &CallbackNetworks,
) -> Result<(), SubscriptionError> {
    let mut invalid = InvalidParams::new();
    let mut bad = |c: &'static str, param: &str, reason: String| invalid.add(c, param, reason);
    if data.tc_id != tc_id {
        bad(
            cause::MANDATORY_IE_INCORRECT,
            "/tcId",
            format!("tcId {} is not the resource's {tc_id}", data.tc_id),
        );
    }
    let unsupported = [
        ("/flowStatus", data.flow_status.is_some()),
        ("/redirectInfo", data.redirect_info.is_some()),
        ("/addRedirectInfo", !data.add_redirect_info.is_empty()),
        (
            "/trafficSteeringPolIdDl",
            data.traffic_steering_pol_id_dl.is_some(),
        ),
        (
            "/trafficSteeringPolIdUl",
            data.traffic_steering_pol_id_ul.is_some(),
        ),
        ("/steerFun", data.steer_fun.is_some()),
        ("/steerModeDl", data.steer_mode_dl.is_some()),
        ("/steerModeUl", data.steer_mode_ul.is_some()),
        ("/mulAccCtrl", data.mul_acc_ctrl.is_some()),
    ];
    for (param, present) in unsupported {
        if present {
            bad(
                cause::OPTIONAL_IE_INCORRECT,
                param,
                "not supported by this smf".into(),
            );
        }
    }
    if let Some(e) = &data.up_path_chg_event {
        if let Err(error) = callbacks.check(&e.notification_uri) {
            bad(
                cause::MANDATORY_IE_INCORRECT,
                "/upPathChgEvent/notificationUri",
                error.to_string(),
            );
        }
        if matches!(e.dnai_chg_type, DnaiChangeType::Other(_)) {
            bad(
                cause::MANDATORY_IE_INCORRECT,
                "/upPathChgEvent/dnaiChgType",
                "dnaiChgType must be EARLY, LATE or EARLY_LATE".into(),
            );
        }
    }
    invalid.check().map_err(SubscriptionError::from)
}

/// The traffic controls, by `tcId`.
#[derive(Debug, Default)]
pub struct TrafficControls {
    entries: BTreeMap<String, StoredTrafficControl>,
}

impl TrafficControls {
    /// The traffic controls a restarted SMF had.
    pub fn restore(entries: impl IntoIterator<Item = StoredTrafficControl>) -> Self {
        Self {
            entries: entries
                .into_iter()
                .map(|e| (e.data.tc_id.clone(), e))
                .collect(),
        }
    }

    /// Stores (or replaces) traffic control `tc_id`; whether it is new.
    pub fn put(
        &mut self,
        tc_id: &str,
        control: StoredTrafficControl,
        callbacks: &CallbackNetworks,
    ) -> Result<bool, SubscriptionError> {
        validate_traffic_control(tc_id, &control.data, callbacks)?;
        Ok(self.entries.insert(tc_id.to_owned(), control).is_none())
    }

    /// Traffic control `tc_id`.
    pub fn get(&self, tc_id: &str) -> Result<&StoredTrafficControl, SubscriptionError> {
        self.entries
            .get(tc_id)
            .ok_or_else(|| SubscriptionError::NoTrafficControl(tc_id.to_owned()))
    }

    /// Removes traffic control `tc_id`.
    pub fn delete(&mut self, tc_id: &str) -> Result<(), SubscriptionError> {
        self.entries
            .remove(tc_id)
            .map(drop)
            .ok_or_else(|| SubscriptionError::NoTrafficControl(tc_id.to_owned()))
    }

    /// The `timing` notifications of `change` owed to `audience` by the traffic controls.
    pub fn up_path_change(
        &self,
        timing: Timing,
        audience: Audience,
        change: &UpPathChange,
        now: SystemTime,
    ) -> Vec<Delivery> {
        let supi = Supi::new(change.supi.as_str());
        self.entries
            .iter()
            .filter_map(|(tc_id, c)| {
                let e = c.data.up_path_chg_event.as_ref()?;
                let wanted = c.scope.matches(change.ue_ipv4)
                    && timing.wanted_by(&e.dnai_chg_type)
                    && audience.includes(e.expects_ack());
                wanted.then(|| Delivery {
                    sub_id: SubscriptionId::new(tc_id.as_str()),
                    notif_uri: e.notification_uri.clone(),
                    body: NsmfEventExposureNotification::new(
                        e.notif_corre_id.as_str(),
                        vec![change.event(timing, &supi, DateTime::from(now))],
                    ),
                    expects_ack: e.expects_ack(),
                })
            })
            .collect()
    }
}

impl UpPathChange {
    /// The `UP_PATH_CH` event of this change, `timing` notification.
    fn event(&self, timing: Timing, supi: &Supi, at: DateTime) -> EventNotification {
        let mut event = EventNotification::up_path_change(
            timing.change_type(),
            self.ue_ipv4,
            self.source.clone(),
            self.target.clone(),
            at,
        );
        event.supi = Some(supi.clone());
        event.pdu_se_id = Some(self.pdu_session_id);
        event
    }
}

/// One subscription as the store keeps it: the subscription and the reports it has had.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StoredSubscription {
    pub subscription: NsmfEventExposure,
    pub reports: u64,
}

/// The notifications a path change owes, and the subscriptions that ended with them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Owed {
    pub deliveries: Vec<Delivery>,
    /// Subscriptions that expired or had their last report: gone from the table.
    pub ended: Vec<SubscriptionId>,
}

/// The Individual SMF Notification Subscriptions.
#[derive(Debug)]
pub struct Subscriptions {
    entries: BTreeMap<SubscriptionId, StoredSubscription>,
    next: u64,
    /// Where `notifUri`s may point.
    callbacks: CallbackNetworks,
}

/// Checks that this SMF can serve `s` and call its `notifUri` (one of `callbacks`; see the module
/// documentation).
pub fn validate(
    s: &NsmfEventExposure,
    callbacks: &CallbackNetworks,
    now: SystemTime,
) -> Result<(), SubscriptionError> {
    let mut invalid = InvalidParams::new();
    let mut bad = |c: &'static str, param: String, reason: &str| invalid.add(c, param, reason);
    if s.group_id.is_some() {
        bad(
            cause::OPTIONAL_IE_INCORRECT,
            "/groupId".into(),
            "group subscriptions are not supported",
        );
    }
    let single_ue = s.supi.is_some() || s.gpsi.is_some();
    match (s.is_any_ue(), single_ue) {
        (true, true) => bad(
            cause::OPTIONAL_IE_INCORRECT,
            "/anyUeInd".into(),
            "anyUeInd: true cannot be combined with supi or gpsi",
        ),
        (false, false) if s.group_id.is_none() => bad(
            cause::MANDATORY_IE_MISSING,
            "/supi".into(),
            "one of supi, gpsi or anyUeInd: true is required",
        ),
        _ => {}
    }
    if let Err(e) = callbacks.check(&s.notif_uri) {
        bad(
            cause::MANDATORY_IE_INCORRECT,
            "/notifUri".into(),
            &e.to_string(),
        );
    }
    for (i, e) in s.event_subs.iter().enumerate() {
        if e.event != SmfEvent::UpPathCh {
            bad(
                cause::MANDATORY_IE_INCORRECT,
                format!("/eventSubs/{i}/event"),
                "only UP_PATH_CH is supported",
            );
            continue;
        }
        match &e.dnai_chg_type {
            None => bad(
                cause::MANDATORY_IE_MISSING,
                format!("/eventSubs/{i}/dnaiChgType"),
                "UP_PATH_CH needs dnaiChgType",
            ),
            Some(DnaiChangeType::Other(_)) => bad(
                cause::MANDATORY_IE_INCORRECT,
                format!("/eventSubs/{i}/dnaiChgType"),
                "dnaiChgType must be EARLY, LATE or EARLY_LATE",
            ),
            Some(_) => {}
        }
    }
    match &s.notif_method {
        None | Some(NotificationMethod::OnEventDetection | NotificationMethod::OneTime) => {}
        Some(_) => bad(
            cause::OPTIONAL_IE_INCORRECT,
            "/notifMethod".into(),
            "only ON_EVENT_DETECTION and ONE_TIME are supported",
        ),
    }
    if s.expiry.is_some_and(|e| e <= DateTime::from(now)) {
        bad(
            cause::OPTIONAL_IE_INCORRECT,
            "/expiry".into(),
            "expiry is in the past",
        );
    }
    invalid.check().map_err(SubscriptionError::from)
}

impl From<Refusal> for SubscriptionError {
    fn from(r: Refusal) -> Self {
        SubscriptionError::Invalid {
            detail: r.detail,
            cause: r.cause,
            invalid_params: r.invalid_params,
        }
    }
}

impl Subscriptions {
    /// No subscriptions yet; `notifUri`s must point into `callbacks`.
    pub fn new(callbacks: CallbackNetworks) -> Self {
        Self {
            entries: BTreeMap::new(),
            next: 0,
            callbacks,
        }
    }

    /// The subscriptions a restarted SMF had (`entries`), its id counter at `next` (the last id
    /// handed out: ids are never reused).
    pub fn restore(
        callbacks: CallbackNetworks,
        next: u64,
        entries: impl IntoIterator<Item = StoredSubscription>,
    ) -> Self {
        let mut subs = Self::new(callbacks);
        subs.next = next;
        for e in entries {
            if let Some(id) = e.subscription.sub_id.clone() {
                subs.entries.insert(id, e);
            }
        }
        subs
    }

    /// Where `notifUri`s (and traffic controls' `notificationUri`s) may point.
    pub fn callbacks(&self) -> &CallbackNetworks {
        &self.callbacks
    }

    /// The number of the last id handed out (`sub-N`).
    pub fn last_id(&self) -> u64 {
        self.next
    }

    /// Subscription `id` as the store keeps it.
    pub fn stored(&self, id: &SubscriptionId) -> Option<&StoredSubscription> {
        self.entries.get(id)
    }

    /// Stores a new subscription; returns it with its `subId`.
    pub fn create(
        &mut self,
        mut s: NsmfEventExposure,
        now: SystemTime,
    ) -> Result<NsmfEventExposure, SubscriptionError> {
        validate(&s, &self.callbacks, now)?;
        self.next += 1;
        let id = SubscriptionId::new(format!("sub-{}", self.next));
        s.sub_id = Some(id.clone());
        self.entries.insert(
            id,
            StoredSubscription {
                subscription: s.clone(),
                reports: 0,
            },
        );
        Ok(s)
    }

    /// The subscription `id`.
    pub fn get(&self, id: &SubscriptionId) -> Result<NsmfEventExposure, SubscriptionError> {
        self.entries
            .get(id)
            .map(|e| e.subscription.clone())
            .ok_or_else(|| SubscriptionError::NotFound(id.clone()))
    }

    /// Replaces the subscription `id` (its report count starts again).
    pub fn replace(
        &mut self,
        id: &SubscriptionId,
        mut s: NsmfEventExposure,
        now: SystemTime,
    ) -> Result<NsmfEventExposure, SubscriptionError> {
        let entry = self
            .entries
            .get_mut(id)
            .ok_or_else(|| SubscriptionError::NotFound(id.clone()))?;
        validate(&s, &self.callbacks, now)?;
        s.sub_id = Some(id.clone());
        *entry = StoredSubscription {
            subscription: s.clone(),
            reports: 0,
        };
        Ok(s)
    }

    /// Removes the subscription `id`.
    pub fn delete(&mut self, id: &SubscriptionId) -> Result<(), SubscriptionError> {
        self.entries
            .remove(id)
            .map(drop)
            .ok_or_else(|| SubscriptionError::NotFound(id.clone()))
    }

    /// Number of subscriptions.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there is no subscription.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The notifications owed to `audience` for the `timing` notification of `change`, counted
    /// as reports: subscriptions that expired are dropped first, and those that reach their last
    /// report (`ONE_TIME`, `maxReportNbr`) end here. (TS 29.508 subscriptions expect no
    /// acknowledgement.)
    pub fn up_path_change(
        &mut self,
        timing: Timing,
        audience: Audience,
        change: &UpPathChange,
        now: SystemTime,
    ) -> Owed {
        let now_dt = DateTime::from(now);
        let mut ended: Vec<SubscriptionId> = self
            .entries
            .iter()
            .filter(|(_, e)| e.subscription.expiry.is_some_and(|x| x <= now_dt))
            .map(|(id, _)| id.clone())
            .collect();
        for id in &ended {
            self.entries.remove(id);
        }
        let supi = Supi::new(change.supi.as_str());
        let mut deliveries = Vec::new();
        let mut last = Vec::new();
        for (id, e) in &mut self.entries {
            let s = &e.subscription;
            let ue_matches = s.is_any_ue() || s.supi.as_ref() == Some(&supi);
            let session_matches = s.pdu_se_id.is_none_or(|p| p == change.pdu_session_id);
            let wanted = s.event_subs.iter().any(|ev| {
                ev.event == SmfEvent::UpPathCh
                    && ev
                        .dnai_chg_type
                        .as_ref()
                        .is_some_and(|t| timing.wanted_by(t))
            });
            if !(ue_matches && session_matches && wanted && audience.includes(false)) {
                continue;
            }
            let mut event = change.event(timing, &supi, now_dt);
            event.gpsi = s.gpsi.clone();
            deliveries.push(Delivery {
                sub_id: id.clone(),
                notif_uri: s.notif_uri.clone(),
                body: NsmfEventExposureNotification::new(s.notif_id.clone(), vec![event]),
                expects_ack: false,
            });
            e.reports += 1;
            let limit = match s.notif_method {
                Some(NotificationMethod::OneTime) => Some(1),
                _ => s.max_report_nbr.filter(|n| *n > 0),
            };
            if limit.is_some_and(|n| e.reports >= n) {
                last.push(id.clone());
            }
        }
        for id in last {
            self.entries.remove(&id);
            ended.push(id);
        }
        Owed { deliveries, ended }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::nsmf_event_exposure::EventSubscription;
    use std::time::Duration;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn sbi_net() -> CallbackNetworks {
        CallbackNetworks::new(vec!["10.100.0.0/24".parse().expect("net")])
    }

    fn sub(timing: DnaiChangeType) -> NsmfEventExposure {
        let mut s = NsmfEventExposure::new(
            "n-1",
            "http://10.100.0.41:8080/af/v1/notifications",
            vec![EventSubscription::up_path_change(timing)],
        );
        s.any_ue_ind = Some(true);
        s
    }

    fn change() -> UpPathChange {
        UpPathChange {
            supi: "imsi-001010000000001".into(),
            pdu_session_id: 1,
            ue_ipv4: [192, 168, 1, 2].into(),
            source: RouteToLocation::new("edge-x", [10, 90, 0, 2].into(), 2152),
            target: RouteToLocation::new("edge-y", [10, 90, 0, 3].into(), 2152),
        }
    }

    fn params(e: SubscriptionError) -> Vec<String> {
        match e {
            SubscriptionError::Invalid { invalid_params, .. } => {
                invalid_params.into_iter().map(|p| p.param).collect()
            }
            other => panic!("not invalid: {other:?}"),
        }
    }

    #[test]
    fn create_assigns_ids_and_crud_works() {
        let mut subs = Subscriptions::new(sbi_net());
        let a = subs.create(sub(DnaiChangeType::Early), now()).expect("a");
        assert_eq!(a.sub_id, Some(SubscriptionId::new("sub-1")));
        let id = SubscriptionId::new("sub-1");
        assert_eq!(subs.get(&id), Ok(a));
        let mut late = sub(DnaiChangeType::Late);
        late.sub_id = Some(SubscriptionId::new("ignored"));
        let replaced = subs.replace(&id, late, now()).expect("replace");
        assert_eq!(replaced.sub_id, Some(id.clone()));
        assert_eq!(subs.get(&id).map(|s| s.event_subs), Ok(replaced.event_subs));
        assert_eq!(subs.delete(&id), Ok(()));
        assert_eq!(
            subs.delete(&id),
            Err(SubscriptionError::NotFound(id.clone()))
        );
        assert!(matches!(subs.get(&id), Err(SubscriptionError::NotFound(_))));
        assert!(matches!(
            subs.replace(&id, sub(DnaiChangeType::Late), now()),
            Err(SubscriptionError::NotFound(_))
        ));
        let b = subs.create(sub(DnaiChangeType::Early), now()).expect("b");
        assert_eq!(
            b.sub_id,
            Some(SubscriptionId::new("sub-2")),
            "ids are not reused"
        );
    }

    #[test]
    fn unsupported_subscriptions_are_refused_with_the_parameters_at_fault() {
        let mut s = sub(DnaiChangeType::Early);
        s.event_subs
            .push(EventSubscription::new(SmfEvent::PduSesEst));
        s.event_subs
            .push(EventSubscription::new(SmfEvent::UpPathCh));
        s.event_subs
            .push(EventSubscription::up_path_change(DnaiChangeType::Other(
                "SOON".into(),
            )));
        s.notif_method = Some(NotificationMethod::Periodic);
        s.supi = Some(Supi::new("imsi-1"));
        s.notif_uri = "nowhere".into();
        s.expiry = Some(DateTime::from(now() - Duration::from_secs(1)));
        assert_eq!(
            params(validate(&s, &sbi_net(), now()).expect_err("invalid")),
            [
                "/anyUeInd",
                "/notifUri",
                "/eventSubs/1/event",
                "/eventSubs/2/dnaiChgType",
                "/eventSubs/3/dnaiChgType",
                "/notifMethod",
                "/expiry"
            ]
        );
        let mut nobody = sub(DnaiChangeType::Early);
        nobody.any_ue_ind = None;
        let e = validate(&nobody, &sbi_net(), now()).expect_err("no ue");
        assert!(matches!(
            &e,
            SubscriptionError::Invalid {
                cause: "MANDATORY_IE_MISSING",
                ..
            }
        ));
        let mut group = nobody.clone();
        group.group_id = Some("g-1".into());
        assert_eq!(
            params(validate(&group, &sbi_net(), now()).expect_err("group")),
            ["/groupId"]
        );
        let mut gpsi = nobody;
        gpsi.gpsi = Some("msisdn-1".into());
        assert_eq!(validate(&gpsi, &sbi_net(), now()), Ok(()));
    }

    #[test]
    fn notif_uris_outside_the_deployment_are_refused() {
        let mut subs = Subscriptions::new(sbi_net());
        for uri in [
            "http://8.8.8.8/x",
            "http://10.100.1.41:8090/x",
            "http://af.invalid/x",
        ] {
            let mut s = sub(DnaiChangeType::Early);
            s.notif_uri = uri.into();
            let e = subs.create(s, now()).expect_err(uri);
            let SubscriptionError::Invalid {
                cause,
                invalid_params,
                ..
            } = &e
            else {
                panic!("{e:?}")
            };
            assert_eq!(*cause, "MANDATORY_IE_INCORRECT");
            assert_eq!(invalid_params[0].param, "/notifUri");
            assert!(
                invalid_params[0]
                    .reason
                    .as_deref()
                    .is_some_and(|r| r.contains(uri)),
                "{e:?}"
            );
        }
        assert!(subs.is_empty());
        // Inside: accepted, and a replacement is checked the same way.
        let created = subs
            .create(sub(DnaiChangeType::Early), now())
            .expect("inside");
        let id = created.sub_id.expect("id");
        let mut out = sub(DnaiChangeType::Late);
        out.notif_uri = "http://8.8.8.8/x".into();
        assert!(subs.replace(&id, out, now()).is_err());
        assert_eq!(
            subs.get(&id).map(|s| s.notif_uri),
            Ok(sub(DnaiChangeType::Early).notif_uri)
        );
    }

    #[test]
    fn early_and_late_reach_the_right_subscribers() {
        let mut subs = Subscriptions::new(sbi_net());
        subs.create(sub(DnaiChangeType::Early), now())
            .expect("early");
        subs.create(sub(DnaiChangeType::Late), now()).expect("late");
        subs.create(sub(DnaiChangeType::EarlyLate), now())
            .expect("both");
        let mut mine = sub(DnaiChangeType::Early);
        mine.any_ue_ind = None;
        mine.supi = Some(Supi::new("imsi-001010000000001"));
        mine.notif_id = "mine".into();
        subs.create(mine, now()).expect("mine");
        let mut other = sub(DnaiChangeType::EarlyLate);
        other.any_ue_ind = None;
        other.supi = Some(Supi::new("imsi-001010000000002"));
        subs.create(other, now()).expect("other ue");
        let mut other_session = sub(DnaiChangeType::EarlyLate);
        other_session.pdu_se_id = Some(5);
        subs.create(other_session, now()).expect("other session");

        let ids = |d: &[Delivery]| d.iter().map(|d| d.sub_id.0.clone()).collect::<Vec<_>>();
        let early = subs
            .up_path_change(Timing::Early, Audience::All, &change(), now())
            .deliveries;
        assert_eq!(ids(&early), ["sub-1", "sub-3", "sub-4"]);
        let late = subs
            .up_path_change(Timing::Late, Audience::All, &change(), now())
            .deliveries;
        assert_eq!(ids(&late), ["sub-2", "sub-3"]);

        let e = &early[2];
        assert_eq!(e.body.notif_id.as_str(), "mine");
        let [n] = &e.body.event_notifs[..] else {
            panic!("one event");
        };
        assert_eq!(n.event, SmfEvent::UpPathCh);
        assert_eq!(n.dnai_chg_type, Some(DnaiChangeType::Early));
        assert_eq!(n.source_dnai.as_ref().map(|d| d.as_str()), Some("edge-x"));
        assert_eq!(n.target_dnai.as_ref().map(|d| d.as_str()), Some("edge-y"));
        assert_eq!(n.target_tra_routing, Some(change().target));
        assert_eq!(n.source_ue_ipv4_addr, Some([192, 168, 1, 2].into()));
        assert_eq!(n.supi, Some(Supi::new("imsi-001010000000001")));
        assert_eq!(n.pdu_se_id, Some(1));
        assert_eq!(n.time_stamp, DateTime::from(now()));
        assert_eq!(
            late[1].body.event_notifs[0].dnai_chg_type,
            Some(DnaiChangeType::Late)
        );
    }

    #[test]
    fn one_time_max_reports_and_expiry_end_subscriptions() {
        let mut subs = Subscriptions::new(sbi_net());
        let mut once = sub(DnaiChangeType::EarlyLate);
        once.notif_method = Some(NotificationMethod::OneTime);
        subs.create(once, now()).expect("once");
        let mut twice = sub(DnaiChangeType::Early);
        twice.max_report_nbr = Some(2);
        subs.create(twice, now()).expect("twice");
        let mut soon = sub(DnaiChangeType::Early);
        soon.expiry = Some(DateTime::from(now() + Duration::from_secs(10)));
        subs.create(soon, now()).expect("soon");

        let first = subs.up_path_change(Timing::Early, Audience::All, &change(), now());
        assert_eq!(first.deliveries.len(), 3);
        assert_eq!(first.ended, [SubscriptionId::new("sub-1")]);
        assert_eq!(subs.len(), 2, "the one-time subscription ended");
        assert_eq!(
            subs.stored(&SubscriptionId::new("sub-2"))
                .map(|s| s.reports),
            Some(1)
        );
        assert!(subs
            .up_path_change(Timing::Late, Audience::All, &change(), now())
            .deliveries
            .is_empty());
        let later = now() + Duration::from_secs(20);
        let d = subs.up_path_change(Timing::Early, Audience::All, &change(), later);
        assert_eq!(d.deliveries.len(), 1, "the expired one is gone");
        assert_eq!(
            d.ended,
            [SubscriptionId::new("sub-3"), SubscriptionId::new("sub-2")],
            "expired first, then the one that had its last report"
        );
        assert!(subs.is_empty(), "the second report was the last");
    }

    #[test]
    fn restored_subscriptions_keep_their_ids_reports_and_counter() {
        let mut subs = Subscriptions::new(sbi_net());
        let mut twice = sub(DnaiChangeType::Early);
        twice.max_report_nbr = Some(2);
        subs.create(twice, now()).expect("twice");
        subs.create(sub(DnaiChangeType::Late), now()).expect("late");
        subs.delete(&SubscriptionId::new("sub-2")).expect("delete");
        subs.up_path_change(Timing::Early, Audience::All, &change(), now());
        let kept: Vec<StoredSubscription> = subs.entries.values().cloned().collect();
        let json = serde_json::to_string(&kept).expect("serialize");
        let back: Vec<StoredSubscription> = serde_json::from_str(&json).expect("parse");

        let mut restored = Subscriptions::restore(sbi_net(), subs.last_id(), back);
        assert_eq!(restored.last_id(), 2);
        let d = restored.up_path_change(Timing::Early, Audience::NoAck, &change(), now());
        assert_eq!(d.deliveries.len(), 1);
        assert_eq!(d.ended, [SubscriptionId::new("sub-1")], "its second report");
        let next = restored
            .create(sub(DnaiChangeType::Late), now())
            .expect("next");
        assert_eq!(
            next.sub_id,
            Some(SubscriptionId::new("sub-3")),
            "the deleted sub-2 is not handed out again"
        );
    }
}

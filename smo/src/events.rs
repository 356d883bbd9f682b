//! The event signalling module (thesis §4.2.1, the "Subscribe block"): it subscribes to
//! user-plane path changes — at the NEF (TS 29.522 TrafficInfluence, [`nef_subscription`]: the
//! default, the 3GPP way for an AF outside the operator's trust domain) or at the SMF directly
//! (TS 29.508 Nsmf_EventExposure `UP_PATH_CH`, [`subscription`]: the thesis's way) — and checks
//! every notification once ([`validate_notification`], [`validate_af_notification`], which also
//! turns the NEF's into the SMF event it stands for); the API hands what passes to the handover
//! negotiator in process. (The thesis draws an HTTP boundary between the two, the negotiator's
//! fixed AF URI; in one process it only cost a second validation and a loopback round trip.)
//!
//! The thesis's module first asks the SMF which events it exposes (`…/events`); TS 29.508 has no
//! such resource and the testbed's SMF serves none, so the SMO subscribes to `UP_PATH_CH` at once
//! (an SMF that cannot serve it answers 400, naming the event).

use std::net::Ipv4Addr;
use std::time::Duration;

use model::common::DnaiChangeType;
use model::nsmf_event_exposure::{
    EventSubscription, NsmfEventExposure, NsmfEventExposureNotification, SmfEvent, API_ROOT_PATH,
};
use model::problem::{cause, InvalidParam};
use model::traffic_influence::{self as ti, SubscribedEvent, TrafficInfluSub};
use sbi::{Client, ClientError};
use serde::Serialize;

use crate::config::{CallbackNetworks, NefSubscription, NotifyWhen};
use crate::core::ack::AckRequest;
use crate::paths;

/// How long [`subscribe`] waits between attempts at most.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Why the subscription could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    /// The SMF (or NEF) answered with an error status (not retried: the request itself is
    /// wrong).
    #[error("the subscription was refused")]
    Refused(#[source] ClientError),
    /// The SMF (or NEF) could not be reached (or answered 5xx) for the whole patience.
    #[error("no subscription within {waited:?}")]
    Unreachable {
        waited: Duration,
        #[source]
        source: ClientError,
    },
    /// A success other than 201 Created, or a 201 without a usable location.
    #[error("{status} to the subscription: {detail}")]
    Unexpected { status: u16, detail: String },
}

/// The subscription an SMO makes: any UE, `UP_PATH_CH` with the configured timing, notified at
/// `notif_uri` with the correlation id `notif_id`.
pub fn subscription(notif_id: &str, notif_uri: &str, when: NotifyWhen) -> NsmfEventExposure {
    let mut s = NsmfEventExposure::new(
        notif_id,
        notif_uri,
        vec![EventSubscription::up_path_change(timing(when))],
    );
    s.any_ue_ind = Some(true);
    s
}

fn timing(when: NotifyWhen) -> DnaiChangeType {
    match when {
        NotifyWhen::Early => DnaiChangeType::Early,
        NotifyWhen::Late => DnaiChangeType::Late,
    }
}

/// The traffic influence subscription an SMO makes at the NEF: any UE, `UP_PATH_CHANGE` with
/// the configured timing, notified at `notif_uri`, `afTransId` [`af_trans_id`], and the
/// acknowledgement and relocation indications of `nef`.
pub fn nef_subscription(
    smo_id: &str,
    notif_uri: &str,
    when: NotifyWhen,
    nef: &NefSubscription,
) -> TrafficInfluSub {
    TrafficInfluSub {
        af_app_id: Some(nef.af_app_id.clone()),
        af_trans_id: Some(af_trans_id(smo_id)),
        any_ue_ind: Some(true),
        subscribed_events: Some(vec![SubscribedEvent::UpPathChange]),
        dnai_chg_type: Some(timing(when)),
        notification_destination: Some(notif_uri.to_owned()),
        af_ack_ind: nef.af_ack_ind.then_some(true),
        app_relo_ind: Some(nef.app_relo_ind),
        // The service keeps its address wherever it runs; so does the UE.
        addr_preser_ind: Some(true),
        ..TrafficInfluSub::default()
    }
}

/// The `afTransId` of SMO `smo_id`'s subscription at the NEF (echoed in its notifications).
pub fn af_trans_id(smo_id: &str) -> String {
    format!("{smo_id}-up-path-change")
}

/// The URI the NEF notifies: this SMO's endpoint for TS 29.522 notifications.
pub fn nef_notif_uri(api_root: &str) -> String {
    format!(
        "{}{}",
        api_root.trim_end_matches('/'),
        paths::NEF_NOTIFICATIONS
    )
}

/// Creates `body` at the NEF whose base URL is `nef_url`, as AF `smo_id` (`POST
/// …/3gpp-traffic-influence/v1/{smoId}/subscriptions`, expecting 201); as [`subscribe`].
pub async fn subscribe_nef(
    client: &Client,
    nef_url: &str,
    smo_id: &str,
    body: &TrafficInfluSub,
    patience: Duration,
) -> Result<String, SubscribeError> {
    let nef_url = nef_url.trim_end_matches('/');
    let url = format!("{nef_url}{}/{smo_id}/subscriptions", ti::API_ROOT_PATH);
    create(client, nef_url, &url, body, patience).await
}

/// The notification correlation id of SMO `smo_id` (unique per SMO).
pub fn notif_id(smo_id: &str) -> String {
    format!("{smo_id}-up-path-ch")
}

/// The URI the SMF notifies: this SMO's event signalling endpoint.
pub fn notif_uri(api_root: &str) -> String {
    format!(
        "{}{}",
        api_root.trim_end_matches('/'),
        paths::EVENT_NOTIFICATIONS
    )
}

/// Creates `body` at the SMF whose base URL is `smf_url` (`POST …/nsmf-event-exposure/v1/
/// subscriptions`, expecting 201); returns the subscription's URL (the `Location` header). While
/// the SMF cannot be reached or answers 5xx, tries again with growing pauses for up to
/// `patience`; a 4xx is final.
pub async fn subscribe(
    client: &Client,
    smf_url: &str,
    body: &NsmfEventExposure,
    patience: Duration,
) -> Result<String, SubscribeError> {
    let smf_url = smf_url.trim_end_matches('/');
    let url = format!("{smf_url}{API_ROOT_PATH}/subscriptions");
    create(client, smf_url, &url, body, patience).await
}

/// POSTs `body` to `url` (under `base`), expecting 201; the new resource's URL. Retries while
/// the server cannot be reached or answers 5xx, for up to `patience`; a 4xx is final.
async fn create(
    client: &Client,
    base: &str,
    url: &str,
    body: &(impl Serialize + Sync),
    patience: Duration,
) -> Result<String, SubscribeError> {
    let smf_url = base;
    let started = tokio::time::Instant::now();
    let mut pause = Duration::from_millis(100);
    loop {
        let error = match client.send(reqwest::Method::POST, url, Some(body)).await {
            Ok(response) => return created(smf_url, url, response).await,
            Err(e @ ClientError::Status { status, .. }) if status < 500 => {
                return Err(SubscribeError::Refused(e));
            }
            Err(e) => e,
        };
        let waited = started.elapsed();
        if waited + pause > patience {
            return Err(SubscribeError::Unreachable {
                waited,
                source: error,
            });
        }
        tracing::info!(url = %url, error = %sbi::error_chain(&error), retry_in = ?pause, "not ready for the subscription yet");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_BACKOFF);
    }
}

/// The subscription URL from a successful answer.
async fn created(
    smf_url: &str,
    url: &str,
    response: reqwest::Response,
) -> Result<String, SubscribeError> {
    let status = response.status().as_u16();
    let location = response
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let answer: Option<serde_json::Value> = response.json().await.ok();
    if status != 201 {
        return Err(SubscribeError::Unexpected {
            status,
            detail: "expected 201 Created".into(),
        });
    }
    let location = match location {
        Some(l) if l.starts_with('/') => Some(format!("{smf_url}{l}")),
        Some(l) => Some(l),
        // No Location: the body's `self` (TS 29.522), or its `subId` (TS 29.508).
        None => answer.and_then(|a| {
            if let Some(link) = a.get("self").and_then(|v| v.as_str()) {
                return Some(link.to_owned());
            }
            a.get("subId")
                .and_then(|v| v.as_str())
                .map(|id| format!("{url}/{id}"))
        }),
    };
    location.ok_or_else(|| SubscribeError::Unexpected {
        status,
        detail: "neither a Location header nor a subId".into(),
    })
}

/// Deletes the subscription at `location` (the URL [`subscribe`] returned).
pub async fn unsubscribe(client: &Client, location: &str) -> Result<(), ClientError> {
    client.delete(location).await
}

/// A notification the event signalling module refuses (answered 400 with these details).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct InvalidNotification {
    pub detail: String,
    /// Application error cause (TS 29.500).
    pub cause: &'static str,
    pub invalid_params: Vec<InvalidParam>,
}

/// Checks that `n` carries what a relocation needs: at least one event, and for every
/// `UP_PATH_CH` event the source and target DNAI, the change type (`EARLY` or `LATE`) and the
/// UE's IPv4 address (source or target). Other events are accepted and ignored downstream.
pub fn validate_notification(n: &NsmfEventExposureNotification) -> Result<(), InvalidNotification> {
    let mut params = Vec::new();
    let mut first_cause = None;
    let mut bad = |c: &'static str, param: String, reason: &str| {
        first_cause.get_or_insert(c);
        params.push(InvalidParam::new(param, reason));
    };
    if n.notif_id.as_str().is_empty() {
        bad(
            cause::MANDATORY_IE_INCORRECT,
            "/notifId".into(),
            "notifId must not be empty",
        );
    }
    if n.event_notifs.is_empty() {
        bad(
            cause::MANDATORY_IE_MISSING,
            "/eventNotifs".into(),
            "at least one event notification is required",
        );
    }
    for (i, e) in n.event_notifs.iter().enumerate() {
        if e.event != SmfEvent::UpPathCh {
            continue;
        }
        let missing = |field: &str| format!("/eventNotifs/{i}/{field}");
        if e.source_dnai.is_none() {
            bad(
                cause::MANDATORY_IE_MISSING,
                missing("sourceDnai"),
                "UP_PATH_CH needs sourceDnai",
            );
        }
        if e.target_dnai.is_none() {
            bad(
                cause::MANDATORY_IE_MISSING,
                missing("targetDnai"),
                "UP_PATH_CH needs targetDnai",
            );
        }
        match &e.dnai_chg_type {
            None => bad(
                cause::MANDATORY_IE_MISSING,
                missing("dnaiChgType"),
                "UP_PATH_CH needs dnaiChgType",
            ),
            Some(DnaiChangeType::Early | DnaiChangeType::Late) => {}
            Some(_) => bad(
                cause::MANDATORY_IE_INCORRECT,
                missing("dnaiChgType"),
                "a notification's dnaiChgType is EARLY or LATE",
            ),
        }
        if ue_of(e).is_none() {
            bad(
                cause::MANDATORY_IE_MISSING,
                missing("sourceUeIpv4Addr"),
                "UP_PATH_CH needs sourceUeIpv4Addr or targetUeIpv4Addr",
            );
        }
    }
    match first_cause {
        None => Ok(()),
        Some(cause) => Err(InvalidNotification {
            detail: params
                .iter()
                .map(|p| format!("{}: {}", p.param, p.reason.as_deref().unwrap_or("invalid")))
                .collect::<Vec<_>>()
                .join("; "),
            cause,
            invalid_params: params,
        }),
    }
}

/// Checks a TS 29.522 notification from the NEF for SMO `smo_id`: `UP_PATH_CHANGE` with the
/// source and target DNAI, the change type (`EARLY` or `LATE`) and the UE's IPv4 address;
/// `afTransId`, when present, this SMO's ([`af_trans_id`]); `afAckUri`, when present, inside
/// `callbacks`. What passes becomes the SMF event it stands for (what the negotiator takes),
/// with the acknowledgement asked for.
pub fn validate_af_notification(
    n: &ti::EventNotification,
    smo_id: &str,
    callbacks: &CallbackNetworks,
) -> Result<
    (
        model::nsmf_event_exposure::EventNotification,
        Option<AckRequest>,
    ),
    InvalidNotification,
> {
    let mut params = Vec::new();
    let mut first_cause = None;
    let mut bad = |c: &'static str, param: &str, reason: String| {
        first_cause.get_or_insert(c);
        params.push(InvalidParam::new(param, reason));
    };
    if n.subscribed_event != SubscribedEvent::UpPathChange {
        bad(
            cause::MANDATORY_IE_INCORRECT,
            "/subscribedEvent",
            format!(
                "only UP_PATH_CHANGE is subscribed, got {}",
                n.subscribed_event
            ),
        );
    }
    if !matches!(
        n.dnai_chg_type,
        DnaiChangeType::Early | DnaiChangeType::Late
    ) {
        bad(
            cause::MANDATORY_IE_INCORRECT,
            "/dnaiChgType",
            "a notification's dnaiChgType is EARLY or LATE".into(),
        );
    }
    if n.source_dnai.is_none() {
        bad(
            cause::MANDATORY_IE_MISSING,
            "/sourceDnai",
            "UP_PATH_CHANGE needs sourceDnai".into(),
        );
    }
    if n.target_dnai.is_none() {
        bad(
            cause::MANDATORY_IE_MISSING,
            "/targetDnai",
            "UP_PATH_CHANGE needs targetDnai".into(),
        );
    }
    let ue = n.src_ue_ipv4_addr.or(n.tgt_ue_ipv4_addr);
    if ue.is_none() {
        bad(
            cause::MANDATORY_IE_MISSING,
            "/srcUeIpv4Addr",
            "UP_PATH_CHANGE needs srcUeIpv4Addr or tgtUeIpv4Addr".into(),
        );
    }
    let ours = af_trans_id(smo_id);
    if let Some(t) = n.af_trans_id.as_deref().filter(|t| *t != ours) {
        bad(
            cause::MANDATORY_IE_INCORRECT,
            "/afTransId",
            format!("`{t}` is not this SMO's transaction (`{ours}`)"),
        );
    }
    if let Some(uri) = &n.af_ack_uri {
        if let Err(e) = callbacks.check("afAckUri", uri) {
            bad(cause::MANDATORY_IE_INCORRECT, "/afAckUri", e.reason);
        }
    }
    let (None, Some(from), Some(to), Some(ue)) = (first_cause, &n.source_dnai, &n.target_dnai, ue)
    else {
        return Err(InvalidNotification {
            detail: params
                .iter()
                .map(|p| format!("{}: {}", p.param, p.reason.as_deref().unwrap_or("invalid")))
                .collect::<Vec<_>>()
                .join("; "),
            cause: first_cause.unwrap_or(cause::MANDATORY_IE_MISSING),
            invalid_params: params,
        });
    };
    let mut ev = crate::negotiator::up_path_event(None, ue, from, to);
    ev.dnai_chg_type = Some(n.dnai_chg_type.clone());
    ev.source_ue_ipv4_addr = n.src_ue_ipv4_addr;
    ev.target_ue_ipv4_addr = n.tgt_ue_ipv4_addr;
    ev.source_tra_routing.clone_from(&n.source_traffic_route);
    ev.target_tra_routing.clone_from(&n.target_traffic_route);
    ev.gpsi.clone_from(&n.gpsi);
    if ev.source_ue_ipv4_addr.is_none() {
        ev.source_ue_ipv4_addr = Some(ue);
    }
    let ack = n.af_ack_uri.as_ref().map(|uri| AckRequest {
        uri: uri.clone(),
        af_trans_id: n.af_trans_id.clone(),
    });
    Ok((ev, ack))
}

fn ue_of(e: &model::nsmf_event_exposure::EventNotification) -> Option<Ipv4Addr> {
    e.source_ue_ipv4_addr.or(e.target_ue_ipv4_addr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::common::{DateTime, RouteToLocation};
    use model::nsmf_event_exposure::EventNotification;

    fn up_path(ue: Ipv4Addr) -> EventNotification {
        EventNotification::up_path_change(
            DnaiChangeType::Late,
            ue,
            RouteToLocation::new("edge-x", Ipv4Addr::new(10, 90, 0, 2), 2152),
            RouteToLocation::new("edge-y", Ipv4Addr::new(10, 90, 0, 3), 2152),
            DateTime::from_unix(1_800_000_000, 0).expect("in range"),
        )
    }

    fn params(e: InvalidNotification) -> Vec<String> {
        e.invalid_params.into_iter().map(|p| p.param).collect()
    }

    #[test]
    fn subscription_is_any_ue_up_path_change_with_the_configured_timing() {
        let s = subscription("smo-x-up-path-ch", "http://a/n", NotifyWhen::Early);
        assert_eq!(s.any_ue_ind, Some(true));
        assert_eq!(
            s.event_subs,
            vec![EventSubscription::up_path_change(DnaiChangeType::Early)]
        );
        let late = subscription("n", "http://a/n", NotifyWhen::Late);
        assert_eq!(late.event_subs[0].dnai_chg_type, Some(DnaiChangeType::Late));
        assert_eq!(
            notif_uri("http://10.100.0.41:8090/"),
            "http://10.100.0.41:8090/event-signalling/v1/notifications"
        );
        assert_ne!(notif_id("smo-x"), notif_id("smo-y"));
    }

    #[test]
    fn complete_up_path_change_passes() {
        let n = NsmfEventExposureNotification::new("n", vec![up_path([192, 168, 1, 2].into())]);
        assert_eq!(validate_notification(&n), Ok(()));
        // Events the SMO does not use pass too (they are ignored downstream).
        let other = EventNotification::new(
            SmfEvent::PduSesEst,
            DateTime::from_unix(0, 0).expect("in range"),
        );
        let n = NsmfEventExposureNotification::new("n", vec![other]);
        assert_eq!(validate_notification(&n), Ok(()));
    }

    #[test]
    fn incomplete_notifications_name_every_missing_field() {
        let mut e = up_path([192, 168, 1, 2].into());
        e.source_dnai = None;
        e.target_dnai = None;
        e.dnai_chg_type = Some(DnaiChangeType::EarlyLate);
        e.source_ue_ipv4_addr = None;
        e.target_ue_ipv4_addr = None;
        let n = NsmfEventExposureNotification::new("n", vec![up_path([1, 2, 3, 4].into()), e]);
        let err = validate_notification(&n).expect_err("invalid");
        assert_eq!(err.cause, cause::MANDATORY_IE_MISSING);
        assert_eq!(
            params(err.clone()),
            [
                "/eventNotifs/1/sourceDnai",
                "/eventNotifs/1/targetDnai",
                "/eventNotifs/1/dnaiChgType",
                "/eventNotifs/1/sourceUeIpv4Addr",
            ]
        );
        assert!(
            err.detail.contains("UP_PATH_CH needs targetDnai"),
            "{}",
            err.detail
        );

        let mut missing_type = up_path([1, 2, 3, 4].into());
        missing_type.dnai_chg_type = None;
        let n = NsmfEventExposureNotification::new("", vec![missing_type]);
        let err = validate_notification(&n).expect_err("invalid");
        assert_eq!(err.cause, cause::MANDATORY_IE_INCORRECT, "first cause wins");
        assert_eq!(params(err), ["/notifId", "/eventNotifs/0/dnaiChgType"]);

        let empty = NsmfEventExposureNotification::new("n", Vec::new());
        assert_eq!(
            params(validate_notification(&empty).expect_err("invalid")),
            ["/eventNotifs"]
        );
    }

    #[test]
    fn the_target_address_is_enough() {
        let mut e = up_path([192, 168, 1, 2].into());
        e.source_ue_ipv4_addr = None;
        let n = NsmfEventExposureNotification::new("n", vec![e]);
        assert_eq!(validate_notification(&n), Ok(()));
    }
}

//! The SMF's HTTP handlers: they parse, forward to [`Smf`] and map its errors to ProblemDetails
//! (the one place that does).

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use model::nsmf_event_exposure::{AckOfNotify, NsmfEventExposure, SubscriptionId, API_ROOT_PATH};
use model::problem::ProblemDetails;
use model::ran::n2::{self, PathSwitchAck, PathSwitchRequest, PduSessionSetupRequest};
use model::sm_policy::{TrafficControlData, N7_LITE_BASE};
use sbi::{ApiError, Json};

use super::events::{SubscriptionError, UeScope};
use super::n4::N4Error;
use super::procedure::{AckError, ProcedureError, Smf};
use super::session::AllocationError;

/// The SMF's state as the handlers see it.
#[derive(Debug, Clone)]
struct Api {
    smf: Arc<Smf>,
    /// `http://host:port`, for `Location` headers.
    api_root: Arc<str>,
}

/// The SMF's routes; `api_root` (`http://10.100.0.10:8000`) prefixes `Location` headers.
pub fn router(smf: Arc<Smf>, api_root: String) -> Router {
    let api = Api {
        smf,
        api_root: api_root.trim_end_matches('/').into(),
    };
    Router::new()
        .route(
            &format!("{}/pdu-sessions", n2::BASE),
            post(setup_pdu_session),
        )
        .route(&format!("{}/path-switch", n2::BASE), post(path_switch))
        .route(
            &format!("{API_ROOT_PATH}/subscriptions"),
            post(create_subscription),
        )
        .route(
            &format!("{API_ROOT_PATH}/subscriptions/{{subId}}"),
            get(get_subscription)
                .put(replace_subscription)
                .delete(delete_subscription),
        )
        .route(
            &format!("{API_ROOT_PATH}/acks/{{ackId}}"),
            post(acknowledge),
        )
        .route(
            &format!("{N7_LITE_BASE}/traffic-controls/{{tcId}}"),
            get(get_traffic_control)
                .put(put_traffic_control)
                .delete(delete_traffic_control),
        )
        .with_state(api)
}

fn problem(status: StatusCode, cause: &str, detail: String) -> ApiError {
    let ApiError(p) = ApiError::status(status, detail);
    ApiError(p.with_cause(cause))
}

impl From<ProcedureError> for ApiError {
    fn from(e: ProcedureError) -> Self {
        let detail = sbi::error_chain(&e);
        tracing::warn!(error = %detail, "n2 procedure failed");
        match &e {
            ProcedureError::UnknownGnb(_) => ApiError::bad_request(detail, Some("/gnb")),
            ProcedureError::NoUpf { .. } => ApiError::bad_request(detail, Some("/gnb")),
            ProcedureError::AddressMismatch { .. } => {
                ApiError::bad_request(detail, Some("/ueIpv4"))
            }
            ProcedureError::UnknownUe(_) => {
                ApiError(ProblemDetails::not_found(detail).with_cause("CONTEXT_NOT_FOUND"))
            }
            ProcedureError::Allocation(
                AllocationError::PoolExhausted(_) | AllocationError::TeidsExhausted(_),
            ) => problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "INSUFFICIENT_RESOURCES",
                detail,
            ),
            ProcedureError::Pfcp {
                source: N4Error::NoAnswer { .. } | N4Error::Send { .. },
                ..
            } => problem(StatusCode::GATEWAY_TIMEOUT, "UPF_NOT_RESPONDING", detail),
            ProcedureError::Pfcp { .. } => {
                problem(StatusCode::INTERNAL_SERVER_ERROR, "SYSTEM_FAILURE", detail)
            }
            ProcedureError::Lr(_) => problem(StatusCode::BAD_GATEWAY, "LR_UPDATE_FAILED", detail),
            ProcedureError::Failed(_) => {
                problem(StatusCode::INTERNAL_SERVER_ERROR, "SYSTEM_FAILURE", detail)
            }
        }
    }
}

impl From<SubscriptionError> for ApiError {
    fn from(e: SubscriptionError) -> Self {
        match e {
            SubscriptionError::Invalid {
                detail,
                cause,
                invalid_params,
            } => ApiError(ProblemDetails::bad_request(detail, invalid_params).with_cause(cause)),
            SubscriptionError::NotFound(id) => ApiError::not_found(format!("no subscription {id}")),
            SubscriptionError::NoTrafficControl(id) => {
                ApiError::not_found(format!("no traffic control {id}"))
            }
        }
    }
}

impl From<AckError> for ApiError {
    fn from(e: AckError) -> Self {
        match &e {
            AckError::NotAwaited(_) => ApiError::not_found(e.to_string()),
            AckError::WrongNotifId { .. } => ApiError::bad_request(e.to_string(), Some("/notifId")),
        }
    }
}

/// A query of the N7 stand-in that names no UE scope, or more than one: why, and the parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BadScope {
    detail: String,
    param: String,
}

impl From<BadScope> for ApiError {
    fn from(e: BadScope) -> Self {
        ApiError::bad_request(e.detail, Some(&e.param))
    }
}

/// The UE scope of a traffic control from the query: exactly one of `anyUeInd=true`,
/// `ueIpv4Addr=A`, `gpsi=G`.
fn scope(query: Option<&str>) -> Result<UeScope, BadScope> {
    let bad = |detail: String, param: &str| BadScope {
        detail,
        param: param.to_owned(),
    };
    let mut found = Vec::new();
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let scope = match key {
            "anyUeInd" if value == "true" => UeScope::AnyUe,
            "anyUeInd" => {
                return Err(bad(
                    "anyUeInd must be true (or name the UE: ueIpv4Addr, gpsi)".into(),
                    "anyUeInd",
                ))
            }
            "ueIpv4Addr" => UeScope::UeIpv4(value.parse().map_err(|_| {
                bad(
                    format!("ueIpv4Addr `{value}` is not an IPv4 address"),
                    "ueIpv4Addr",
                )
            })?),
            "gpsi" if !value.is_empty() => UeScope::Gpsi(value.to_owned()),
            other => {
                return Err(bad(
                    format!("unknown query parameter `{other}` (anyUeInd, ueIpv4Addr or gpsi)"),
                    other,
                ))
            }
        };
        found.push(scope);
    }
    match <[UeScope; 1]>::try_from(found) {
        Ok([scope]) => Ok(scope),
        Err(_) => Err(bad(
            "exactly one of anyUeInd=true, ueIpv4Addr or gpsi names the UEs".into(),
            "anyUeInd",
        )),
    }
}

async fn put_traffic_control(
    State(api): State<Api>,
    Path(tc_id): Path<String>,
    RawQuery(query): RawQuery,
    Json(data): Json<TrafficControlData>,
) -> Result<impl IntoResponse, ApiError> {
    let scope = scope(query.as_deref())?;
    let created = api.smf.put_traffic_control(&tc_id, scope, data.clone())?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let location = format!("{}{N7_LITE_BASE}/traffic-controls/{tc_id}", api.api_root);
    Ok((status, [(header::LOCATION, location)], Json(data)))
}

async fn get_traffic_control(
    State(api): State<Api>,
    Path(tc_id): Path<String>,
) -> Result<Json<TrafficControlData>, ApiError> {
    Ok(Json(api.smf.traffic_control(&tc_id)?))
}

async fn delete_traffic_control(
    State(api): State<Api>,
    Path(tc_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    api.smf.delete_traffic_control(&tc_id)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn acknowledge(
    State(api): State<Api>,
    Path(ack_id): Path<String>,
    Json(ack): Json<AckOfNotify>,
) -> Result<StatusCode, ApiError> {
    api.smf.acknowledge(&ack_id, &ack)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn setup_pdu_session(
    State(api): State<Api>,
    Json(request): Json<PduSessionSetupRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let response = api.smf.setup_pdu_session(request).await?;
    Ok((StatusCode::CREATED, Json(response)))
}

async fn path_switch(
    State(api): State<Api>,
    Json(request): Json<PathSwitchRequest>,
) -> Result<Json<PathSwitchAck>, ApiError> {
    Ok(Json(api.smf.path_switch(request).await?))
}

async fn create_subscription(
    State(api): State<Api>,
    Json(subscription): Json<NsmfEventExposure>,
) -> Result<impl IntoResponse, ApiError> {
    let created = api.smf.create_subscription(subscription)?;
    let id = created
        .sub_id
        .as_ref()
        .map(|s| s.as_str())
        .unwrap_or_default();
    let location = format!("{}{API_ROOT_PATH}/subscriptions/{id}", api.api_root);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(created),
    ))
}

async fn get_subscription(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<Json<NsmfEventExposure>, ApiError> {
    Ok(Json(api.smf.subscription(&SubscriptionId::new(id))?))
}

async fn replace_subscription(
    State(api): State<Api>,
    Path(id): Path<String>,
    Json(subscription): Json<NsmfEventExposure>,
) -> Result<Json<NsmfEventExposure>, ApiError> {
    Ok(Json(api.smf.replace_subscription(
        &SubscriptionId::new(id),
        subscription,
    )?))
}

async fn delete_subscription(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    api.smf.delete_subscription(&SubscriptionId::new(id))?;
    Ok(StatusCode::NO_CONTENT)
}

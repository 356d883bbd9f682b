//! The SMF's HTTP handlers: they parse, forward to [`Smf`] and map its errors to ProblemDetails
//! (the one place that does).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use model::nsmf_event_exposure::{NsmfEventExposure, SubscriptionId, API_ROOT_PATH};
use model::problem::ProblemDetails;
use model::ran::n2::{self, PathSwitchAck, PathSwitchRequest, PduSessionSetupRequest};
use sbi::{ApiError, Json};

use super::events::SubscriptionError;
use super::n4::N4Error;
use super::procedure::{ProcedureError, Smf};
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
        }
    }
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

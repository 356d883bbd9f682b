//! The NEF's HTTP handlers: they parse, forward to [`Nef`] and map its errors to ProblemDetails
//! (the one place that does).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use model::nsmf_event_exposure::NsmfEventExposureNotification;
use model::problem::ProblemDetails;
use model::traffic_influence::{AfAckInfo, TrafficInfluSub, TrafficInfluSubPatch, API_ROOT_PATH};
use sbi::{ApiError, Json};

use super::influence::InfluenceError;
use super::{Nef, NefError, CALLBACK_BASE};

/// The NEF's routes.
pub fn router(nef: Arc<Nef>) -> Router {
    Router::new()
        .route(
            &format!("{API_ROOT_PATH}/{{afId}}/subscriptions"),
            get(list).post(create),
        )
        .route(
            &format!("{API_ROOT_PATH}/{{afId}}/subscriptions/{{subscriptionId}}"),
            get(read).put(replace).patch(patch).delete(delete),
        )
        .route(
            &format!("{API_ROOT_PATH}/{{afId}}/subscriptions/{{subscriptionId}}/acks/{{ackId}}"),
            post(acknowledge),
        )
        .route(
            &format!("{CALLBACK_BASE}/notifications/{{subscriptionId}}"),
            post(smf_notification),
        )
        .with_state(nef)
}

impl From<NefError> for ApiError {
    fn from(e: NefError) -> Self {
        let detail = sbi::error_chain(&e);
        match e {
            NefError::Influence(InfluenceError::Invalid(refusal)) => {
                ApiError(ProblemDetails::from(refusal))
            }
            NefError::Influence(InfluenceError::NotFound { .. }) | NefError::UnknownAck(_) => {
                ApiError::not_found(detail)
            }
            NefError::UnknownAf(_) => ApiError::status(StatusCode::FORBIDDEN, detail),
            NefError::WrongNotifId { .. } => ApiError::bad_request(detail, Some("/notifId")),
            NefError::AckForward(sbi::ClientError::Status { status: 404, .. }) => {
                ApiError::not_found(detail)
            }
            NefError::Smf { .. } | NefError::AckForward(_) => {
                tracing::warn!(error = %detail, "the smf did not take a request of the nef");
                ApiError::status(StatusCode::BAD_GATEWAY, detail)
            }
        }
    }
}

async fn create(
    State(nef): State<Arc<Nef>>,
    Path(af_id): Path<String>,
    Json(sub): Json<TrafficInfluSub>,
) -> Result<impl IntoResponse, ApiError> {
    let created = nef.create(&af_id, sub).await?;
    let location = created.self_link.clone().unwrap_or_default();
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(created),
    ))
}

async fn list(
    State(nef): State<Arc<Nef>>,
    Path(af_id): Path<String>,
) -> Result<Json<Vec<TrafficInfluSub>>, ApiError> {
    Ok(Json(nef.list(&af_id)?))
}

async fn read(
    State(nef): State<Arc<Nef>>,
    Path((af_id, id)): Path<(String, String)>,
) -> Result<Json<TrafficInfluSub>, ApiError> {
    Ok(Json(nef.get(&af_id, &id)?))
}

async fn replace(
    State(nef): State<Arc<Nef>>,
    Path((af_id, id)): Path<(String, String)>,
    Json(sub): Json<TrafficInfluSub>,
) -> Result<Json<TrafficInfluSub>, ApiError> {
    Ok(Json(nef.replace(&af_id, &id, sub).await?))
}

async fn patch(
    State(nef): State<Arc<Nef>>,
    Path((af_id, id)): Path<(String, String)>,
    Json(patch): Json<TrafficInfluSubPatch>,
) -> Result<Json<TrafficInfluSub>, ApiError> {
    Ok(Json(nef.patch(&af_id, &id, &patch).await?))
}

async fn delete(
    State(nef): State<Arc<Nef>>,
    Path((af_id, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    nef.delete(&af_id, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn acknowledge(
    State(nef): State<Arc<Nef>>,
    Path((af_id, id, ack_id)): Path<(String, String, String)>,
    Json(info): Json<AfAckInfo>,
) -> Result<StatusCode, ApiError> {
    nef.acknowledge(&af_id, &id, &ack_id, info).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn smf_notification(
    State(nef): State<Arc<Nef>>,
    Path(id): Path<String>,
    Json(n): Json<NsmfEventExposureNotification>,
) -> Result<StatusCode, ApiError> {
    nef.on_smf_notification(&id, n).await?;
    Ok(StatusCode::NO_CONTENT)
}

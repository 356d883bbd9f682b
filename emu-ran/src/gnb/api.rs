//! The gNB's HTTP API (one server, bearer token required): the Xn stand-in for peer gNBs under
//! [`xn::BASE`] and the testbed's control API under [`xn::CONTROL_BASE`]. Handlers only parse the
//! body and forward it, with an answer channel, to the task that owns the UE contexts.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use model::ran::xn;
use sbi::{ApiError, Json};
use tokio::sync::{mpsc, oneshot};

use super::context::Failure;
use super::Request;

/// The routes, forwarding to `requests`.
pub fn router(requests: mpsc::Sender<Request>) -> Router {
    Router::new()
        .route(
            &format!("{}/handover-requests", xn::BASE),
            post(handover_request),
        )
        .route(
            &format!("{}/ue-context-releases", xn::BASE),
            post(ue_context_release),
        )
        .route(&format!("{}/handovers", xn::CONTROL_BASE), post(trigger))
        .route(&format!("{}/status", xn::CONTROL_BASE), get(status))
        .with_state(requests)
}

fn failure(f: Failure) -> ApiError {
    ApiError::status(
        StatusCode::from_u16(f.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        f.detail,
    )
}

fn gone() -> ApiError {
    ApiError::status(StatusCode::SERVICE_UNAVAILABLE, "gnb is shutting down")
}

async fn ask<T>(
    requests: &mpsc::Sender<Request>,
    make: impl FnOnce(oneshot::Sender<T>) -> Request,
) -> Result<T, ApiError> {
    let (tx, rx) = oneshot::channel();
    requests.send(make(tx)).await.map_err(|_| gone())?;
    rx.await.map_err(|_| gone())
}

async fn handover_request(
    State(requests): State<mpsc::Sender<Request>>,
    Json(body): Json<xn::HandoverRequest>,
) -> Result<Response, ApiError> {
    let ack = ask(&requests, |tx| Request::HandoverRequest(body, tx))
        .await?
        .map_err(failure)?;
    Ok((StatusCode::CREATED, Json(ack)).into_response())
}

async fn ue_context_release(
    State(requests): State<mpsc::Sender<Request>>,
    Json(body): Json<xn::UeContextRelease>,
) -> Result<StatusCode, ApiError> {
    ask(&requests, |tx| Request::Release(body, tx))
        .await?
        .map_err(failure)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn trigger(
    State(requests): State<mpsc::Sender<Request>>,
    Json(body): Json<xn::HandoverTrigger>,
) -> Result<Json<xn::HandoverReport>, ApiError> {
    let report = ask(&requests, |tx| Request::Trigger(body, tx))
        .await?
        .map_err(failure)?;
    Ok(Json(report))
}

async fn status(
    State(requests): State<mpsc::Sender<Request>>,
) -> Result<Json<super::GnbStatus>, ApiError> {
    Ok(Json(ask(&requests, Request::Status).await?))
}

//! The service-module callbacks the SMO calls (`smo/openapi.yaml`, tag "service-module
//! callbacks"), served by the daemon under [`BASE`] with the deployment's bearer token:
//!
//! | callback | request | answer |
//! |---|---|---|
//! | GetServices | `GET /svcmod/v1/services` | 200 `[Service]` |
//! | ServedService | `GET /svcmod/v1/served-service?ueIpv4Addr=A` | 200 `Service`, 404 (none serves A), 400 (A missing or not IPv4) |
//! | Execute | `POST /svcmod/v1/execute` `ExecuteRequest` | 200 `ExecuteReport` once the service runs at the target; an error as below |
//!
//! Not a callback of the SMO, for failure experiments and tests: `POST /svcmod/v1/faults`
//! `{"fault": "corrupt-images"}` arms a [`Fault`] (204; 400 if unknown, 501 if the backend
//! cannot cause it).
//!
//! Every error is `application/problem+json` with a `cause` ([`cause`]). Execute's statuses
//! follow the contract "an error status means the service still runs at the source", except 504:
//!
//! | status | cause | the service |
//! |---|---|---|
//! | 401 | — | untouched (no or wrong bearer token; no handler runs) |
//! | 400 / 415 | `INVALID_MSG_FORMAT` / — | untouched (the body is not an `ExecuteRequest` / not JSON) |
//! | 409 | `SERVICE_NOT_HOSTED`, `SERVICE_BUSY` | not here / being migrated already: untouched |
//! | 422 | `INVALID_TARGET` | untouched (target not `ip:port`, or this module itself) |
//! | 500 | `MIGRATION_FAILED` | runs at the source (a step of this module failed before anything stopped, or the strategy is not supported) |
//! | 502 | `TARGET_REFUSED`, `TARGET_FAILED`, `MIGRATION_ROLLED_BACK` | runs at the source (the target refused, failed or could not be reached; after the service stopped it was restored here) |
//! | 504 | `MIGRATION_OUTCOME_UNKNOWN` | **unknown**: commit sent, not confirmed — at the target or nowhere; ask the target's GetServices |
//! | 504 | `SERVICE_LOST` | **gone**: the move failed and resuming at the source failed too |
//!
//! Handlers only parse and forward to [`Module`], which owns the calls into the backend; errors
//! become HTTP answers in one place (`impl From<CallbackError> for ApiError`).

use crate::backend::Backend;
use crate::error::{BackendError, MigrationError, MoveError};
use crate::service::Fault;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use model::smo::{ExecuteReport, ExecuteRequest, Service};
use sbi::{ApiError, Json};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

/// Path prefix of the callbacks.
pub const BASE: &str = "/svcmod/v1";
/// GetServices.
pub const SERVICES: &str = "/svcmod/v1/services";
/// ServedService.
pub const SERVED_SERVICE: &str = "/svcmod/v1/served-service";
/// Execute.
pub const EXECUTE: &str = "/svcmod/v1/execute";
/// Arms a fault (not an SMO callback).
pub const FAULTS: &str = "/svcmod/v1/faults";

/// The application error causes of the callbacks' ProblemDetails.
pub mod cause {
    /// 409: the module hosts no such service.
    pub const SERVICE_NOT_HOSTED: &str = "SERVICE_NOT_HOSTED";
    /// 409: the service is being created or migrated.
    pub const SERVICE_BUSY: &str = "SERVICE_BUSY";
    /// 422: the target address is unusable (or this module's own).
    pub const INVALID_TARGET: &str = "INVALID_TARGET";
    /// 500: a local step failed before anything was stopped; the service runs at the source.
    pub const MIGRATION_FAILED: &str = "MIGRATION_FAILED";
    /// 502: the target module refused the service; it runs at the source.
    pub const TARGET_REFUSED: &str = "TARGET_REFUSED";
    /// 502: the target could not be reached or failed before anything was stopped.
    pub const TARGET_FAILED: &str = "TARGET_FAILED";
    /// 502: the move failed after the dump; the service was restored at the source.
    pub const MIGRATION_ROLLED_BACK: &str = "MIGRATION_ROLLED_BACK";
    /// 504: commit sent but not confirmed: the service runs at the target or nowhere.
    pub const MIGRATION_OUTCOME_UNKNOWN: &str = "MIGRATION_OUTCOME_UNKNOWN";
    /// 504: the service is gone (the move and the rollback failed).
    pub const SERVICE_LOST: &str = "SERVICE_LOST";
    /// 500: the backend could not list its services.
    pub const BACKEND_FAILED: &str = "BACKEND_FAILED";
}

/// A callback that did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    #[error("no service here serves {ue}")]
    NotServed { ue: Ipv4Addr },
    #[error("target `{target}` is unusable: {reason}")]
    InvalidTarget {
        target: SocketAddr,
        reason: &'static str,
    },
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Migration(#[from] MigrationError),
}

/// The status and cause Execute answers for a failed migration (see the module docs): where the
/// service is first, then who failed.
pub fn migration_status(e: &MigrationError) -> (StatusCode, &'static str) {
    match e {
        MigrationError::NotStarted { cause, .. } => match cause {
            MoveError::Request(BackendError::UnknownService { .. }) => {
                (StatusCode::CONFLICT, cause::SERVICE_NOT_HOSTED)
            }
            MoveError::Request(BackendError::Busy { .. } | BackendError::AlreadyHosted { .. }) => {
                (StatusCode::CONFLICT, cause::SERVICE_BUSY)
            }
            MoveError::Request(BackendError::BadRequest(_)) => {
                (StatusCode::UNPROCESSABLE_ENTITY, cause::INVALID_TARGET)
            }
            MoveError::Refused(_) => (StatusCode::BAD_GATEWAY, cause::TARGET_REFUSED),
            MoveError::TargetFailed { .. }
            | MoveError::Connection(_)
            | MoveError::Unexpected { .. } => (StatusCode::BAD_GATEWAY, cause::TARGET_FAILED),
            // This module's own step (never the target's fault).
            MoveError::Request(BackendError::Unsupported(_) | BackendError::Runtime(_))
            | MoveError::Local { .. } => {
                (StatusCode::INTERNAL_SERVER_ERROR, cause::MIGRATION_FAILED)
            }
        },
        MigrationError::RolledBack { .. } => {
            (StatusCode::BAD_GATEWAY, cause::MIGRATION_ROLLED_BACK)
        }
        MigrationError::OutcomeUnknown { .. } => (
            StatusCode::GATEWAY_TIMEOUT,
            cause::MIGRATION_OUTCOME_UNKNOWN,
        ),
        MigrationError::Lost { .. } => (StatusCode::GATEWAY_TIMEOUT, cause::SERVICE_LOST),
    }
}

impl From<CallbackError> for ApiError {
    fn from(e: CallbackError) -> Self {
        let detail = sbi::error_chain(&e);
        let (status, cause) = match &e {
            CallbackError::NotServed { .. } => return ApiError::not_found(detail),
            CallbackError::InvalidTarget { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, cause::INVALID_TARGET)
            }
            CallbackError::Backend(BackendError::Unsupported(_)) => {
                return ApiError::status(StatusCode::NOT_IMPLEMENTED, detail)
            }
            CallbackError::Backend(_) => (StatusCode::INTERNAL_SERVER_ERROR, cause::BACKEND_FAILED),
            CallbackError::Migration(m) => migration_status(m),
        };
        let ApiError(problem) = ApiError::status(status, detail);
        ApiError(problem.with_cause(cause))
    }
}

/// The module as its callbacks see it: the backend and the module's own migration address.
#[derive(Debug)]
pub struct Module<B> {
    backend: Arc<B>,
    notif_address: SocketAddr,
}

impl<B: Backend> Module<B> {
    /// A module whose migration receiver listens on `notif_address`.
    pub fn new(backend: Arc<B>, notif_address: SocketAddr) -> Self {
        Self {
            backend,
            notif_address,
        }
    }

    /// GetServices.
    pub async fn services(&self) -> Result<Vec<Service>, CallbackError> {
        Ok(self.backend.services().await?)
    }

    /// ServedService.
    pub async fn served_service(&self, ue: Ipv4Addr) -> Result<Service, CallbackError> {
        self.backend
            .serving(ue)
            .await?
            .ok_or(CallbackError::NotServed { ue })
    }

    /// Arms a fault in the backend.
    pub fn arm_fault(&self, fault: Fault) -> Result<(), CallbackError> {
        self.backend.arm_fault(fault)?;
        tracing::warn!(%fault, "fault armed");
        Ok(())
    }

    /// Execute: checks the target, migrates, answers the report once the service runs there.
    pub async fn execute(&self, req: &ExecuteRequest) -> Result<ExecuteReport, CallbackError> {
        let invalid = |reason| CallbackError::InvalidTarget {
            target: req.target_address,
            reason,
        };
        let target = req.target_address;
        if target.ip().is_unspecified() || target.port() == 0 {
            return Err(invalid("unspecified address or port 0"));
        }
        if target == self.notif_address {
            return Err(invalid("it is this module's own address"));
        }
        let service = &req.service.service_id;
        tracing::info!(relocation = %req.relocation_id, %service, %target, "execute: migrating");
        match self.backend.migrate_out(req).await {
            Ok(report) => {
                tracing::info!(
                    relocation = %req.relocation_id, %service, %target,
                    total_us = report.total_us, frozen_us = report.frozen_us,
                    dump_us = report.dump_us, transfer_us = report.transfer_us,
                    restore_us = report.restore_us, bytes_moved = report.bytes_moved,
                    "execute: the service runs at the target"
                );
                Ok(report.to_execute_report())
            }
            Err(e) => {
                let (status, cause) = migration_status(&e);
                tracing::warn!(
                    relocation = %req.relocation_id, %service, %target,
                    status = status.as_u16(), cause, at_source = e.service_at_source(),
                    error = %e, "execute failed"
                );
                Err(e.into())
            }
        }
    }
}

/// The body of `POST /svcmod/v1/faults`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultRequest {
    fault: Fault,
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ServedQuery {
    ue_ipv4_addr: Option<String>,
}

/// The callbacks as an axum router (serve it with [`sbi::serve`] and the deployment's token).
pub fn router<B: Backend>(module: Arc<Module<B>>) -> Router {
    Router::new()
        .route(SERVICES, get(services::<B>))
        .route(SERVED_SERVICE, get(served_service::<B>))
        .route(EXECUTE, post(execute::<B>))
        .route(FAULTS, post(arm_fault::<B>))
        .with_state(module)
}

async fn services<B: Backend>(
    State(m): State<Arc<Module<B>>>,
) -> Result<Json<Vec<Service>>, ApiError> {
    Ok(Json(m.services().await?))
}

async fn served_service<B: Backend>(
    State(m): State<Arc<Module<B>>>,
    query: Result<Query<ServedQuery>, QueryRejection>,
) -> Result<Json<Service>, ApiError> {
    let Query(q) = query.map_err(|r| ApiError::bad_request(r.body_text(), None))?;
    let raw = q
        .ue_ipv4_addr
        .ok_or_else(|| ApiError::bad_request("ueIpv4Addr is required", Some("ueIpv4Addr")))?;
    let ue: Ipv4Addr = raw.parse().map_err(|_| {
        ApiError::bad_request(
            format!("`{raw}` is not an IPv4 address"),
            Some("ueIpv4Addr"),
        )
    })?;
    Ok(Json(m.served_service(ue).await?))
}

async fn execute<B: Backend>(
    State(m): State<Arc<Module<B>>>,
    Json(req): Json<ExecuteRequest>,
) -> Result<Json<ExecuteReport>, ApiError> {
    Ok(Json(m.execute(&req).await?))
}

async fn arm_fault<B: Backend>(
    State(m): State<Arc<Module<B>>>,
    Json(req): Json<FaultRequest>,
) -> Result<StatusCode, ApiError> {
    m.arm_fault(req.fault)?;
    Ok(StatusCode::NO_CONTENT)
}

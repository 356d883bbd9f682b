//! The SMO's HTTP API (described in `smo/openapi.yaml`): handlers only parse, hand the request to
//! the component that owns the state (the [`Negotiator`]), and map errors to ProblemDetails — in
//! one place, [`problem`].
//!
//! | route | module |
//! |---|---|
//! | `POST /event-signalling/v1/notifications` | event signalling: the SMF's callback; checked once ([`events::validate_notification`]), then handed to the negotiator in process (its 5GC interface, which starts relocations) |
//! | `POST /event-signalling/v1/nef-notifications` | event signalling: the NEF's callback (TS 29.522 `EventNotification`); checked once ([`events::validate_af_notification`], `afAckUri` inside the deployment), then handed to the negotiator like the SMF's, with the acknowledgement it asks for |
//! | `GET /application-function/v1/relocations[/{relocationId}]` | negotiator, stopwatch |
//! | `POST /smo-peer/v1/relocations` | negotiator, peer interface (target side) |
//! | `/service-mobility/v1/service-modules[/{moduleId}]`, `GET /service-mobility/v1/services` | negotiator, service-mobility API |
//! | `POST /service-mobility/v1/relocations/{relocationId}/arrival` | negotiator, service-mobility API: the target module's "the service resumes now" (the new path goes in before it does) |
//! | `GET /metrics`, `GET /openapi.yaml` | observability, description |
//!
//! [`sbi::serve`] adds the bearer token check (401) and ProblemDetails for unknown paths (404)
//! and wrong methods (405); [`sbi::Json`] answers malformed bodies with 400.

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use model::nsmf_event_exposure::NsmfEventExposureNotification;
use model::problem::{cause, InvalidParam, ProblemDetails};
use model::smo::{
    PeerRelocationAnswer, PeerRelocationMessage, RelocationRecord, ServiceArrival, ServiceModule,
    ServiceModuleRegistration,
};
use sbi::{ApiError, Json};

use crate::config::BadCallback;
use crate::events::{self, InvalidNotification};
use crate::metrics;
use crate::negotiator::{Negotiator, NegotiatorError, Remote};
use crate::paths;
use crate::routing::FlowProgrammer;
use crate::store::HostedService;

/// Every route the router serves: method and path template (OpenAPI spelling). `smo/openapi.yaml`
/// describes exactly these (checked by a test).
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", "/event-signalling/v1/notifications"),
    ("POST", "/event-signalling/v1/nef-notifications"),
    ("GET", "/application-function/v1/relocations"),
    ("GET", "/application-function/v1/relocations/{relocationId}"),
    ("POST", "/smo-peer/v1/relocations"),
    ("POST", "/service-mobility/v1/service-modules"),
    ("GET", "/service-mobility/v1/service-modules"),
    ("GET", "/service-mobility/v1/service-modules/{moduleId}"),
    ("PUT", "/service-mobility/v1/service-modules/{moduleId}"),
    ("DELETE", "/service-mobility/v1/service-modules/{moduleId}"),
    ("GET", "/service-mobility/v1/services"),
    (
        "POST",
        "/service-mobility/v1/relocations/{relocationId}/arrival",
    ),
    ("GET", "/metrics"),
    ("GET", "/openapi.yaml"),
];

/// The OpenAPI description served at [`paths::OPENAPI`].
pub const OPENAPI_YAML: &str = include_str!("../openapi.yaml");

/// Longest relocation id the peer protocol accepts.
pub const MAX_RELOCATION_ID_LEN: usize = 64;

/// What the handlers share.
struct Api<R, F> {
    negotiator: Negotiator<R, F>,
    /// `http://host:port`, for `Location` headers.
    api_root: Arc<str>,
}

impl<R, F> Clone for Api<R, F> {
    fn clone(&self) -> Self {
        Self {
            negotiator: self.negotiator.clone(),
            api_root: self.api_root.clone(),
        }
    }
}

/// The SMO's routes over `negotiator`; `api_root` (`http://10.100.0.41:8090`) prefixes
/// `Location` headers.
pub fn router<R: Remote, F: FlowProgrammer>(
    negotiator: Negotiator<R, F>,
    api_root: &str,
) -> Router {
    let api = Api {
        negotiator,
        api_root: api_root.trim_end_matches('/').into(),
    };
    Router::new()
        .route(paths::EVENT_NOTIFICATIONS, post(event_notification::<R, F>))
        .route(paths::NEF_NOTIFICATIONS, post(af_notification::<R, F>))
        .route(paths::AF_RELOCATIONS, get(relocations::<R, F>))
        .route(
            &format!("{}/{{relocationId}}", paths::AF_RELOCATIONS),
            get(relocation::<R, F>),
        )
        .route(paths::PEER_RELOCATIONS, post(peer_message::<R, F>))
        .route(
            paths::SERVICE_MODULES,
            post(register::<R, F>).get(modules::<R, F>),
        )
        .route(
            &format!("{}/{{moduleId}}", paths::SERVICE_MODULES),
            get(module::<R, F>)
                .put(update::<R, F>)
                .delete(deregister::<R, F>),
        )
        .route(paths::SERVICES, get(services::<R, F>))
        .route(
            &format!("{}/{{relocationId}}/arrival", paths::RELOCATIONS),
            post(arrival::<R, F>),
        )
        .route(paths::METRICS, get(metrics_text::<R, F>))
        .route(paths::OPENAPI, get(openapi))
        .with_state(api)
}

// ----- the one place errors become ProblemDetails -----

/// What a handler can fail with.
enum Failure {
    Negotiator(NegotiatorError),
    Notification(InvalidNotification),
    BadPath(PathRejection),
    BadRelocationId(String),
    NoRelocation(String),
    BadCallback(BadCallback),
}

fn with_cause(status: StatusCode, cause: &str, detail: String) -> ApiError {
    let ApiError(p) = ApiError::status(status, detail);
    ApiError(p.with_cause(cause))
}

/// Maps every handler failure to its status and ProblemDetails.
fn problem(f: Failure) -> ApiError {
    match f {
        Failure::Negotiator(NegotiatorError::NoModule(id)) => {
            ApiError::not_found(format!("no service module `{id}`"))
        }
        Failure::Negotiator(NegotiatorError::Invalid(bad)) | Failure::BadCallback(bad) => {
            let detail = bad.to_string();
            ApiError(
                ProblemDetails::bad_request(
                    detail,
                    vec![InvalidParam::new(format!("/{}", bad.field), bad.reason)],
                )
                .with_cause(cause::MANDATORY_IE_INCORRECT),
            )
        }
        Failure::Negotiator(NegotiatorError::NoTargetRelocation(id)) => {
            ApiError::not_found(format!("no relocation `{id}` with this SMO as its target"))
        }
        Failure::Negotiator(NegotiatorError::Conflict(detail)) => {
            ApiError::status(StatusCode::CONFLICT, detail)
        }
        Failure::Negotiator(NegotiatorError::Flows(detail)) => {
            tracing::error!(error = %detail, "new path not installed");
            with_cause(StatusCode::INTERNAL_SERVER_ERROR, "SYSTEM_FAILURE", detail)
        }
        Failure::Negotiator(e @ NegotiatorError::Store(_)) => {
            let detail = sbi::error_chain(&e);
            tracing::error!(error = %detail, "store failure");
            with_cause(StatusCode::INTERNAL_SERVER_ERROR, "SYSTEM_FAILURE", detail)
        }
        Failure::Notification(InvalidNotification {
            detail,
            cause,
            invalid_params,
        }) => ApiError(ProblemDetails::bad_request(detail, invalid_params).with_cause(cause)),
        Failure::BadPath(r) => ApiError::bad_request(r.body_text(), None),
        Failure::BadRelocationId(reason) => ApiError(
            ProblemDetails::bad_request(
                format!("relocationId: {reason}"),
                vec![InvalidParam::new("/relocationId", reason)],
            )
            .with_cause(cause::MANDATORY_IE_INCORRECT),
        ),
        Failure::NoRelocation(id) => ApiError::not_found(format!("no relocation `{id}`")),
    }
}

impl From<Failure> for ApiError {
    fn from(f: Failure) -> Self {
        problem(f)
    }
}

fn path(p: Result<Path<String>, PathRejection>) -> Result<String, Failure> {
    p.map(|Path(s)| s).map_err(Failure::BadPath)
}

/// Checks a relocation id: 1 to 64 characters of `[A-Za-z0-9._-]` (it names files and cookies).
pub fn check_relocation_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("must not be empty".into());
    }
    if id.len() > MAX_RELOCATION_ID_LEN {
        return Err(format!(
            "longer than {MAX_RELOCATION_ID_LEN} characters ({})",
            id.len()
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "character {c:?} is not allowed (only A-Z, a-z, 0-9, '.', '_', '-')"
        ));
    }
    Ok(())
}

// ----- event signalling → handover negotiator (5GC interface) -----

async fn event_notification<R: Remote, F: FlowProgrammer>(
    State(api): State<Api<R, F>>,
    Json(n): Json<NsmfEventExposureNotification>,
) -> Result<StatusCode, ApiError> {
    events::validate_notification(&n).map_err(Failure::Notification)?;
    let started = api.negotiator.on_notification(&n);
    tracing::info!(notif_id = %n.notif_id, events = n.event_notifs.len(), relocations = ?started, "notification handed to the handover negotiator");
    Ok(StatusCode::NO_CONTENT)
}

async fn af_notification<R: Remote, F: FlowProgrammer>(
    State(api): State<Api<R, F>>,
    Json(n): Json<model::traffic_influence::EventNotification>,
) -> Result<StatusCode, ApiError> {
    let (ev, ack) =
        events::validate_af_notification(&n, api.negotiator.smo_id(), api.negotiator.callbacks())
            .map_err(Failure::Notification)?;
    let acked = ack.is_some();
    let started = api.negotiator.on_af_notification(&ev, ack);
    tracing::info!(af_trans_id = ?n.af_trans_id, kind = %n.dnai_chg_type, ack = acked, relocation = ?started, "nef notification handed to the handover negotiator");
    Ok(StatusCode::NO_CONTENT)
}

// ----- handover negotiator: stopwatch -----

async fn relocations<R: Remote, F: FlowProgrammer>(
    State(api): State<Api<R, F>>,
) -> Json<Vec<RelocationRecord>> {
    Json(api.negotiator.relocations())
}

async fn relocation<R: Remote, F: FlowProgrammer>(
    State(api): State<Api<R, F>>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<RelocationRecord>, ApiError> {
    let id = path(id)?;
    match api.negotiator.relocation(&id) {
        Some(r) => Ok(Json(r)),
        None => Err(Failure::NoRelocation(id).into()),
    }
}

// ----- handover negotiator: peer interface -----

async fn peer_message<R: Remote, F: FlowProgrammer>(
    State(api): State<Api<R, F>>,
    Json(msg): Json<PeerRelocationMessage>,
) -> Result<Json<PeerRelocationAnswer>, ApiError> {
    check_relocation_id(&msg.relocation_id).map_err(Failure::BadRelocationId)?;
    api.negotiator
        .callbacks()
        .check("notifUri", &msg.notif_uri)
        .map_err(Failure::BadCallback)?;
    let answer = api.negotiator.on_peer_message(&msg).await;
    tracing::info!(
        relocation = %msg.relocation_id,
        phase = %msg.relocation_phase,
        result = ?answer.result,
        cause = ?answer.cause,
        "peer message answered"
    );
    Ok(Json(answer))
}

// ----- service-mobility API -----

async fn register<R: Remote, F: FlowProgrammer>(
    State(api): State<Api<R, F>>,
    Json(reg): Json<ServiceModuleRegistration>,
) -> Result<impl IntoResponse, ApiError> {
    let m = api.negotiator.register(reg).map_err(Failure::Negotiator)?;
    tracing::info!(module = %m.module_id, relocation_type = %m.registration.relocation_type, "service module registered");
    let location = format!("{}{}/{}", api.api_root, paths::SERVICE_MODULES, m.module_id);
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(m)))
}

async fn modules<R: Remote, F: FlowProgrammer>(
    State(api): State<Api<R, F>>,
) -> Json<Vec<ServiceModule>> {
    Json(api.negotiator.modules())
}

async fn module<R: Remote, F: FlowProgrammer>(
    State(api): State<Api<R, F>>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<ServiceModule>, ApiError> {
    let id = path(id)?;
    match api.negotiator.module(&id) {
        Some(m) => Ok(Json(m)),
        None => Err(Failure::Negotiator(NegotiatorError::NoModule(id)).into()),
    }
}

async fn update<R: Remote, F: FlowProgrammer>(
    State(api): State<Api<R, F>>,
    id: Result<Path<String>, PathRejection>,
    Json(reg): Json<ServiceModuleRegistration>,
) -> Result<Json<ServiceModule>, ApiError> {
    let id = path(id)?;
    let m = api
        .negotiator
        .update(&id, reg)
        .map_err(Failure::Negotiator)?;
    tracing::info!(module = %m.module_id, "service module updated");
    Ok(Json(m))
}

async fn deregister<R: Remote, F: FlowProgrammer>(
    State(api): State<Api<R, F>>,
    id: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let id = path(id)?;
    api.negotiator
        .deregister(&id)
        .map_err(Failure::Negotiator)?;
    tracing::info!(module = %id, "service module deregistered");
    Ok(StatusCode::NO_CONTENT)
}

async fn services<R: Remote, F: FlowProgrammer>(
    State(api): State<Api<R, F>>,
) -> Json<Vec<HostedService>> {
    Json(api.negotiator.hosted_services())
}

async fn arrival<R: Remote, F: FlowProgrammer>(
    State(api): State<Api<R, F>>,
    id: Result<Path<String>, PathRejection>,
    Json(body): Json<ServiceArrival>,
) -> Result<StatusCode, ApiError> {
    let id = path(id)?;
    check_relocation_id(&id).map_err(Failure::BadRelocationId)?;
    api.negotiator
        .on_arrival(&id, &body)
        .await
        .map_err(Failure::Negotiator)?;
    Ok(StatusCode::NO_CONTENT)
}

// ----- observability and description -----

async fn metrics_text<R: Remote, F: FlowProgrammer>(
    State(api): State<Api<R, F>>,
) -> impl IntoResponse {
    let n = &api.negotiator;
    let relocations = n.relocations();
    let (reconciler_runs, reconciler) = n.reconciler_counts();
    let text = metrics::render(&metrics::Snapshot {
        smo_id: n.smo_id(),
        relocations: &relocations,
        notifications: n.notification_counts(),
        queued_hints: n.queued_hints(),
        reconciler_runs,
        reconciler: &reconciler,
        service_modules: n.modules().len(),
        hosted_services: n.hosted_services().len(),
    });
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text)
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/yaml")], OPENAPI_YAML)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relocation_ids_are_checked() {
        assert_eq!(check_relocation_id("smo-x-12"), Ok(()));
        assert_eq!(check_relocation_id("a.b_C-9"), Ok(()));
        assert!(check_relocation_id("").is_err());
        assert!(check_relocation_id(&"a".repeat(65)).is_err());
        assert_eq!(check_relocation_id(&"a".repeat(64)), Ok(()));
        let e = check_relocation_id("../etc").expect_err("slash");
        assert!(e.contains("'/'"), "{e}");
        assert!(check_relocation_id("sp ace").is_err());
        assert!(check_relocation_id("é").is_err());
    }

    #[test]
    fn routes_are_unique() {
        let mut seen = std::collections::BTreeSet::new();
        for r in ROUTES {
            assert!(seen.insert(r), "duplicate route {r:?}");
        }
    }
}

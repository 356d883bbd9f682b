//! A fake SMO: the service-mobility API's registration, de-registration and arrival reports,
//! recording what it was sent (the registration and arrival bodies as raw JSON, the DELETEd
//! paths).

use axum::extract::{Path as UrlPath, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use axum::Router;
use model::smo::{ServiceModule, ServiceModuleRegistration};
use sbi::{ApiError, Json};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

pub const SERVICE_MODULES: &str = "/service-mobility/v1/service-modules";
pub const RELOCATIONS: &str = "/service-mobility/v1/relocations";

/// How the fake answers registrations.
#[derive(Debug, Clone, Copy, Default)]
pub struct Behaviour {
    /// Answer this status (a ProblemDetails) instead of registering.
    pub refuse: Option<u16>,
    /// Give a relative `Location` (the real SMO gives an absolute one).
    pub relative_location: bool,
}

#[derive(Debug, Default)]
pub struct Seen {
    /// Registration bodies, as sent.
    pub registrations: Vec<serde_json::Value>,
    /// Paths of the DELETEs.
    pub deletions: Vec<String>,
    /// Arrival reports: the relocation id of the path and the body, as sent.
    pub arrivals: Vec<(String, serde_json::Value)>,
}

#[derive(Debug)]
struct Inner {
    base: String,
    behaviour: Behaviour,
    seen: Mutex<Seen>,
}

/// A running fake SMO; stops when dropped.
#[derive(Debug)]
pub struct FakeSmo {
    pub url: String,
    inner: Arc<Inner>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl FakeSmo {
    /// Serves on `listener` with the deployment's `token`.
    pub fn start(listener: TcpListener, token: Option<String>, behaviour: Behaviour) -> FakeSmo {
        let addr = listener.local_addr().expect("addr");
        let url = format!("http://{addr}");
        let inner = Arc::new(Inner {
            base: url.clone(),
            behaviour,
            seen: Mutex::new(Seen::default()),
        });
        let app = Router::new()
            .route(SERVICE_MODULES, post(register))
            .route(&format!("{SERVICE_MODULES}/{{id}}"), delete(deregister))
            .route(&format!("{RELOCATIONS}/{{id}}/arrival"), post(arrival))
            .with_state(Arc::clone(&inner));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(sbi::serve(listener, app, token, async move {
            let _ = rx.await;
        }));
        FakeSmo {
            url,
            inner,
            _stop: tx,
        }
    }

    /// What it has seen so far.
    pub fn seen<T>(&self, f: impl FnOnce(&Seen) -> T) -> T {
        f(&self.inner.seen.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Waits until `done(seen)` holds, at most `limit`.
    pub async fn wait_for(&self, limit: Duration, done: impl Fn(&Seen) -> bool) -> bool {
        let start = tokio::time::Instant::now();
        while start.elapsed() < limit {
            if self.seen(&done) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.seen(done)
    }
}

async fn register(State(smo): State<Arc<Inner>>, Json(body): Json<serde_json::Value>) -> Response {
    let n = {
        let mut seen = smo.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.registrations.push(body.clone());
        seen.registrations.len()
    };
    if let Some(status) = smo.behaviour.refuse {
        let code = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
        return ApiError::status(code, "the fake SMO refuses").into_response();
    }
    let registration: ServiceModuleRegistration = match serde_json::from_value(body) {
        Ok(r) => r,
        Err(e) => return ApiError::bad_request(e.to_string(), None).into_response(),
    };
    let module_id = format!("module-{n}");
    let path = format!("{SERVICE_MODULES}/{module_id}");
    let location = if smo.behaviour.relative_location {
        path
    } else {
        format!("{}{path}", smo.base)
    };
    (
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(ServiceModule {
            module_id,
            registration,
        }),
    )
        .into_response()
}

async fn deregister(State(smo): State<Arc<Inner>>, UrlPath(id): UrlPath<String>) -> StatusCode {
    smo.seen
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .deletions
        .push(format!("{SERVICE_MODULES}/{id}"));
    StatusCode::NO_CONTENT
}

async fn arrival(
    State(smo): State<Arc<Inner>>,
    UrlPath(id): UrlPath<String>,
    Json(body): Json<serde_json::Value>,
) -> StatusCode {
    smo.seen
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .arrivals
        .push((id, body));
    StatusCode::NO_CONTENT
}

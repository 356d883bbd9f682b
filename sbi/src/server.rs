//! The server side: `serve(listener, router, token, shutdown)`, the [`Json`] extractor and [`ApiError`].

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use model::problem::{InvalidParam, ProblemDetails, PROBLEM_JSON};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;

/// An error answered as `application/problem+json`.
#[derive(Debug, Clone)]
pub struct ApiError(pub ProblemDetails);

impl ApiError {
    /// 400 with a reason (and optionally the offending parameter).
    pub fn bad_request(detail: impl Into<String>, param: Option<&str>) -> Self {
        let detail = detail.into();
        let params = param
            .map(|p| vec![InvalidParam::new(p, detail.clone())])
            .unwrap_or_default();
        Self(ProblemDetails::bad_request(detail, params))
    }

    /// 401: no or wrong bearer token.
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self(ProblemDetails::unauthorized(detail))
    }

    /// 404: no such resource.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self(ProblemDetails::not_found(detail))
    }

    /// Any other status.
    pub fn status(status: StatusCode, detail: impl Into<String>) -> Self {
        Self(ProblemDetails::new(
            status.as_u16(),
            status.canonical_reason().unwrap_or("error"),
            detail,
        ))
    }

    /// The HTTP status of this error.
    pub fn code(&self) -> StatusCode {
        self.0
            .status
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}",
            self.code(),
            self.0.detail.as_deref().unwrap_or_default()
        )
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = self.code();
        let body = serde_json::to_vec(&self.0).unwrap_or_default();
        (
            code,
            [(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON))],
            body,
        )
            .into_response()
    }
}

/// A JSON body (request or response). Requests that are not valid JSON, have the wrong content
/// type, or do not match `T` (unknown fields included, where `T` denies them) are answered with a
/// 400 ProblemDetails that names the cause.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<S, T> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Json(v)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(r: JsonRejection) -> ApiError {
    let code = r.status();
    let detail = r.body_text();
    if code == StatusCode::UNSUPPORTED_MEDIA_TYPE {
        ApiError::status(code, detail)
    } else {
        ApiError::bad_request(detail, None)
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// Serves `router` on `listener` (h2c and HTTP/1.1) until `shutdown` resolves. With a token, every
/// request must carry `Authorization: Bearer <token>`, else it is answered 401 and reaches no
/// handler. Unknown paths get 404 and wrong methods 405, both as ProblemDetails.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    token: Option<String>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = router
        .fallback(|| async { ApiError::not_found("no such resource") })
        .method_not_allowed_fallback(|| async {
            ApiError::status(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here")
        });
    let router = match token {
        Some(t) => {
            let expected: Arc<str> = Arc::from(format!("Bearer {t}"));
            router.layer(middleware::from_fn(move |req: Request, next: Next| {
                let expected = expected.clone();
                async move {
                    let ok = req
                        .headers()
                        .get(header::AUTHORIZATION)
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|v| v == &*expected);
                    if ok {
                        next.run(req).await
                    } else {
                        ApiError::unauthorized("missing or wrong bearer token").into_response()
                    }
                }
            }))
        }
        None => router,
    };
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

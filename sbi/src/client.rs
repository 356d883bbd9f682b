//! The client side: h2c (HTTP/2 prior knowledge) with the deployment's bearer token.

use model::problem::ProblemDetails;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::Duration;

/// A failed SBI call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach {url}")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered {status}: {detail}")]
    Status {
        url: String,
        status: u16,
        detail: String,
        problem: Option<Box<ProblemDetails>>,
    },
    #[error("{url} answered a body that does not parse")]
    Body {
        url: String,
        #[source]
        source: reqwest::Error,
    },
}

/// An SBI client for one deployment.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    token: Option<String>,
}

impl Client {
    /// A client that speaks HTTP/2 without TLS (h2c) and sends `token` as a bearer token.
    pub fn new(token: Option<String>, timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .http2_prior_knowledge()
            .timeout(timeout)
            .connect_timeout(timeout)
            .no_proxy()
            .tcp_nodelay(true)
            .build()
            .unwrap_or_default();
        Self { http, token }
    }

    fn req(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, url);
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    /// Sends a request and returns the raw response if its status is a success.
    pub async fn send(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<reqwest::Response, ClientError> {
        let mut r = self.req(method, url);
        if let Some(b) = body {
            r = r.json(b);
        }
        let resp = r.send().await.map_err(|source| ClientError::Transport {
            url: url.to_owned(),
            source,
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let problem: Option<Box<ProblemDetails>> = serde_json::from_str(&text).ok();
        let detail = problem
            .as_ref()
            .and_then(|p| p.detail.clone())
            .unwrap_or(text);
        Err(ClientError::Status {
            url: url.to_owned(),
            status,
            detail,
            problem,
        })
    }

    /// POST a JSON body, parse a JSON answer.
    pub async fn post<B: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        url: &str,
        body: &B,
    ) -> Result<R, ClientError> {
        let resp = self.send(reqwest::Method::POST, url, Some(body)).await?;
        parse(url, resp).await
    }

    /// PUT a JSON body, parse a JSON answer.
    pub async fn put<B: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        url: &str,
        body: &B,
    ) -> Result<R, ClientError> {
        let resp = self.send(reqwest::Method::PUT, url, Some(body)).await?;
        parse(url, resp).await
    }

    /// GET and parse a JSON answer.
    pub async fn get<R: DeserializeOwned>(&self, url: &str) -> Result<R, ClientError> {
        let resp = self.send(reqwest::Method::GET, url, None::<&()>).await?;
        parse(url, resp).await
    }

    /// POST a JSON body, expecting no answer body (e.g. 204).
    pub async fn post_no_content<B: Serialize + ?Sized>(
        &self,
        url: &str,
        body: &B,
    ) -> Result<(), ClientError> {
        self.send(reqwest::Method::POST, url, Some(body))
            .await
            .map(drop)
    }

    /// DELETE, expecting no answer body.
    pub async fn delete(&self, url: &str) -> Result<(), ClientError> {
        self.send(reqwest::Method::DELETE, url, None::<&()>)
            .await
            .map(drop)
    }
}

async fn parse<R: DeserializeOwned>(url: &str, resp: reqwest::Response) -> Result<R, ClientError> {
    resp.json().await.map_err(|source| ClientError::Body {
        url: url.to_owned(),
        source,
    })
}

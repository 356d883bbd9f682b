//! [`HttpRemote`]: the negotiator's calls to peer SMOs and service modules, over HTTP/2 (h2c)
//! with the deployment's bearer token.
//!
//! * peer: `POST {apiRoot}/smo-peer/v1/relocations` `PeerRelocationMessage` → 200
//!   `PeerRelocationAnswer`;
//! * module: `GET {servedServiceNotifUri}?ueIpv4Addr=A` → 200 `Service` or 404;
//!   `GET {getServiceNotifUri}` → `[Service]`; `POST {executeNotifUri}` `ExecuteRequest` → 200
//!   `ExecuteReport`;
//! * Location Registry: `GET {lrUrl}/lr/v1/ues/{ip}` → 200 `UeLocation` (its `dnai`) or 404;
//! * NEF: `POST {afAckUri}` `AfAckInfo` → 204 (TS 29.522).
//!
//! The negotiator applies the time limits of [`Timeouts`]; the client's own limit is only a
//! backstop above the longest of them, so one client (one connection pool) serves every call.

use std::net::Ipv4Addr;
use std::time::Duration;

use model::common::Dnai;
use model::ran::lr::UeLocation;
use model::smo::{
    ExecuteReport, ExecuteRequest, PeerInfo, PeerRelocationAnswer, PeerRelocationMessage, Service,
    ServiceModule,
};
use sbi::{Client, ClientError};

use crate::config::Timeouts;
use crate::core::ExecuteFailure;
use crate::paths;

use crate::negotiator::Remote;

/// What the client's backstop adds to the longest negotiator time limit.
const BACKSTOP_MARGIN: Duration = Duration::from_secs(5);

/// Peer SMOs, service modules and the Location Registry over HTTP.
#[derive(Debug, Clone)]
pub struct HttpRemote {
    client: Client,
    /// The LR's base URL, when there is one to ask.
    lr_url: Option<String>,
}

impl HttpRemote {
    /// Calls that send `token` and give up on their own only after the longest of `timeouts`
    /// (plus a margin): the negotiator cuts every call at its own limit first.
    pub fn new(token: Option<String>, timeouts: &Timeouts) -> Self {
        let longest = timeouts
            .peer_ms
            .max(timeouts.module_ms)
            .max(timeouts.execute_ms);
        Self {
            client: Client::new(token, Duration::from_millis(longest) + BACKSTOP_MARGIN),
            lr_url: None,
        }
    }

    /// Calls over an existing client.
    pub fn with_client(client: Client) -> Self {
        Self {
            client,
            lr_url: None,
        }
    }

    /// Asks the LR at `lr_url` (a base URL, e.g. `http://10.100.0.10:8001`) where UEs are.
    pub fn with_lr(mut self, lr_url: Option<String>) -> Self {
        self.lr_url = lr_url.map(|u| u.trim_end_matches('/').to_owned());
        self
    }
}

/// `uri` with `ueIpv4Addr=ue` added to its query.
fn served_service_url(uri: &str, ue: Ipv4Addr) -> Result<String, String> {
    let mut url = reqwest::Url::parse(uri).map_err(|e| format!("bad URI `{uri}`: {e}"))?;
    url.query_pairs_mut()
        .append_pair("ueIpv4Addr", &ue.to_string());
    Ok(url.into())
}

impl HttpRemote {
    /// Opens the h2c connection to every peer ahead of the first relocation (the first
    /// INITIATE otherwise pays for the connection set-up: ≈ 40 ms measured). Peers that are not
    /// up yet are retried for `patience`; failures are only logged.
    pub async fn warm_up(&self, peers: &[model::smo::PeerInfo], patience: std::time::Duration) {
        let start = tokio::time::Instant::now();
        for peer in peers {
            let url = format!(
                "{}{}",
                peer.api_root.trim_end_matches('/'),
                paths::AF_RELOCATIONS
            );
            loop {
                match self
                    .client
                    .send(reqwest::Method::GET, &url, None::<&()>)
                    .await
                {
                    Ok(_) => {
                        tracing::debug!(peer = %peer.smo_id, "connection to peer open");
                        break;
                    }
                    Err(e) if start.elapsed() < patience => {
                        tracing::debug!(peer = %peer.smo_id, "peer not reachable yet: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    }
                    Err(e) => {
                        tracing::info!(peer = %peer.smo_id, "peer not reachable: {e}");
                        break;
                    }
                }
            }
        }
    }
}

impl Remote for HttpRemote {
    async fn call_peer(
        &self,
        peer: &PeerInfo,
        msg: &PeerRelocationMessage,
    ) -> Result<PeerRelocationAnswer, String> {
        let url = format!(
            "{}{}",
            peer.api_root.trim_end_matches('/'),
            paths::PEER_RELOCATIONS
        );
        self.client
            .post(&url, msg)
            .await
            .map_err(|e| sbi::error_chain(&e))
    }

    async fn served_service(
        &self,
        module: &ServiceModule,
        ue: Ipv4Addr,
    ) -> Result<Option<Service>, String> {
        let url = served_service_url(&module.registration.served_service_notif_uri, ue)?;
        match self.client.get(&url).await {
            Ok(service) => Ok(Some(service)),
            Err(ClientError::Status { status: 404, .. }) => Ok(None),
            Err(e) => Err(sbi::error_chain(&e)),
        }
    }

    async fn ue_location(&self, ue: Ipv4Addr) -> Result<Option<Dnai>, String> {
        let Some(lr) = &self.lr_url else {
            return Ok(None);
        };
        let url = format!("{lr}{}/ues/{ue}", model::ran::lr::BASE);
        match self.client.get::<UeLocation>(&url).await {
            Ok(l) => Ok(Some(Dnai::new(&l.dnai))),
            Err(ClientError::Status { status: 404, .. }) => Ok(None),
            Err(e) => Err(sbi::error_chain(&e)),
        }
    }

    async fn services(&self, module: &ServiceModule) -> Result<Vec<Service>, String> {
        self.client
            .get(&module.registration.get_service_notif_uri)
            .await
            .map_err(|e| sbi::error_chain(&e))
    }

    async fn execute(
        &self,
        module: &ServiceModule,
        req: &ExecuteRequest,
    ) -> Result<ExecuteReport, ExecuteFailure> {
        match self
            .client
            .post(&module.registration.execute_notif_uri, req)
            .await
        {
            Ok(report) => Ok(report),
            // 504: the module itself does not know where the service ended up (commit sent, never
            // confirmed): as good as no answer.
            Err(ClientError::Status {
                status: 504,
                detail,
                ..
            }) => Err(ExecuteFailure::Unknown(format!("504: {detail}"))),
            // Any other error status: by contract the service still runs at the source.
            Err(ClientError::Status { status, detail, .. }) => {
                Err(ExecuteFailure::Refused(format!("{status}: {detail}")))
            }
            // No answer, or a success whose body we cannot read: where the service is must be
            // checked.
            Err(e) => Err(ExecuteFailure::Unknown(sbi::error_chain(&e))),
        }
    }

    async fn acknowledge(
        &self,
        uri: &str,
        body: &model::traffic_influence::AfAckInfo,
    ) -> Result<u16, String> {
        self.client
            .send(reqwest::Method::POST, uri, Some(body))
            .await
            .map(|r| r.status().as_u16())
            .map_err(|e| sbi::error_chain(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ue_goes_into_the_query() {
        assert_eq!(
            served_service_url("http://10.0.1.2:9100/m/v1/served", [192, 168, 1, 2].into()),
            Ok("http://10.0.1.2:9100/m/v1/served?ueIpv4Addr=192.168.1.2".to_owned())
        );
        assert_eq!(
            served_service_url("http://m:1/s?kind=x", [10, 0, 0, 1].into()),
            Ok("http://m:1/s?kind=x&ueIpv4Addr=10.0.0.1".to_owned())
        );
        assert!(served_service_url("not a uri", [10, 0, 0, 1].into()).is_err());
    }
}

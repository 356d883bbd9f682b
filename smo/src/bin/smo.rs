//! The SMO process: `smo --config smo.json [--ready-file PATH]` (see `smo::config::SmoConfig`).
//!
//! Opens the store, connects to the edge's Open vSwitch bridge (a missing bridge is only a
//! warning: the programmer connects again on first use), serves the API, resumes interrupted
//! relocations, starts the reconciler (a round at once, then every `reconcile.period_ms`),
//! subscribes to user-plane path changes (at the NEF, TS 29.522, or at the SMF, TS 29.508, as
//! `subscribe_at` says), and on SIGTERM unsubscribes (best effort) and stops.

use std::process::ExitCode;
use std::time::Duration;

use smo::api;
use smo::config::{SmoConfig, SubscribeAt};
use smo::events;
use smo::http::HttpRemote;
use smo::negotiator::{Clock, Negotiator};
use smo::routing::ovs::OvsProgrammer;
use smo::store::Store;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Bound on connecting to the switch and on each flow set.
const OVS_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the SMO keeps trying to subscribe while the SMF is not up.
const SUBSCRIBE_PATIENCE: Duration = Duration::from_secs(10);
/// How long the SMO keeps trying to open its connections to peers that are not up yet.
const PEER_WARM_UP_PATIENCE: Duration = Duration::from_secs(20);
/// Bound on each subscription request.
const SMF_TIMEOUT: Duration = Duration::from_secs(2);

fn main() -> ExitCode {
    sbi::nf::main::<SmoConfig, _, _>("smo", run)
}

async fn run(
    config: SmoConfig,
    ready: sbi::nf::Ready,
    shutdown: sbi::nf::Shutdown,
) -> Result<(), BoxError> {
    let api_root = config.api_root();
    let store = Store::open(&config.state_dir)?;
    let flows = OvsProgrammer::new(config.ovs_mgmt.clone(), OVS_TIMEOUT);
    match flows.connect().await {
        Ok(()) => {
            tracing::info!(socket = %config.ovs_mgmt.display(), "connected to the edge switch")
        }
        Err(e) => tracing::warn!(
            socket = %config.ovs_mgmt.display(),
            error = %e,
            "edge switch not reachable yet; connecting on first use"
        ),
    }
    let remote =
        HttpRemote::new(config.token.clone(), &config.timeouts).with_lr(config.lr_url.clone());
    let warm = remote.clone();
    let negotiator = Negotiator::new(&config, remote, flows, store, Clock::Wall)?;
    let router = api::router(negotiator.clone(), &api_root);

    let listener = tokio::net::TcpListener::bind(config.api_addr)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.api_addr))?;
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(sbi::serve(
        listener,
        router,
        config.token.clone(),
        async move {
            let _ = server_stopped.await;
        },
    ));
    tracing::info!(smo = %config.smo_id, dnai = %config.dnai, api = %api_root, peers = config.peers.len(), "serving");

    let peers = config.peers.clone();
    tokio::spawn(async move { warm.warm_up(&peers, PEER_WARM_UP_PATIENCE).await });

    let resumed = negotiator.resume();
    if resumed > 0 {
        tracing::info!(resumed, "resuming relocations of the previous run");
    }
    let reconciler = (config.reconcile.period_ms > 0).then(|| {
        tracing::info!(period_ms = config.reconcile.period_ms, "reconciler running");
        negotiator.spawn_reconciler(Duration::from_millis(config.reconcile.period_ms))
    });

    let smf = sbi::Client::new(config.token.clone(), SMF_TIMEOUT);
    let subscribing = async {
        match (config.subscribe_at, &config.nef.url, &config.smf_url) {
            (SubscribeAt::Nef, Some(nef_url), _) => {
                let body = events::nef_subscription(
                    &config.smo_id,
                    &events::nef_notif_uri(&api_root),
                    config.notify_when,
                    &config.nef,
                );
                events::subscribe_nef(&smf, nef_url, &config.smo_id, &body, SUBSCRIBE_PATIENCE)
                    .await
                    .map(Some)
                    .map_err(|e| {
                        format!(
                            "cannot subscribe at the nef {nef_url}: {}",
                            sbi::error_chain(&e)
                        )
                    })
            }
            (SubscribeAt::Smf, _, Some(smf_url)) => {
                let body = events::subscription(
                    &events::notif_id(&config.smo_id),
                    &events::notif_uri(&api_root),
                    config.notify_when,
                );
                events::subscribe(&smf, smf_url, &body, SUBSCRIBE_PATIENCE)
                    .await
                    .map(Some)
                    .map_err(|e| format!("cannot subscribe at {smf_url}: {}", sbi::error_chain(&e)))
            }
            (at, _, _) => {
                tracing::info!(
                    ?at,
                    "no url to subscribe at: not subscribing (notifications may still be posted)"
                );
                Ok(None)
            }
        }
    };
    let subscription = tokio::select! {
        r = subscribing => r?,
        () = shutdown.clone().wait() => {
            tracing::info!("stopped before the subscription was made");
            let _ = stop_server.send(());
            server.await??;
            return Ok(());
        }
    };
    if let Some(location) = &subscription {
        tracing::info!(%location, at = ?config.subscribe_at, when = ?config.notify_when,
            af_ack = config.nef.af_ack_ind, app_relo = config.nef.app_relo_ind, "subscribed to user-plane path changes");
    }

    ready.ready();
    shutdown.wait().await;

    if let Some(location) = subscription {
        match events::unsubscribe(&smf, &location).await {
            Ok(()) => tracing::info!(%location, "unsubscribed"),
            Err(e) => {
                tracing::warn!(%location, error = %sbi::error_chain(&e), "cannot unsubscribe")
            }
        }
    }
    if let Some(r) = reconciler {
        r.abort();
    }
    let _ = stop_server.send(());
    server.await??;
    tracing::info!("stopped");
    Ok(())
}

//! [`Backend`]: what the service-module daemon needs from a way of running and moving services.
//! The daemon (and its tests, with a fake) is generic over it; [`crate::driver::Driver`] is the
//! one implementation over every runtime. [`run_receiver`] accepts migration connections.

use crate::error::{BackendError, MigrationError, MoveError};
use crate::service::{Fault, IncomingReport, MigrationReport, ServiceSpec};
use model::smo::{ExecuteRequest, RelocationType, Service};
use std::future::Future;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// What a target backend calls once the source committed a migration, just before the service
/// resumes here: `(relocation id, service id)`. The daemon tells its SMO (`POST
/// …/relocations/{id}/arrival`), which switches the data path to this edge before the service's
/// first packet. The hook bounds its own time and never fails the migration; the backend waits
/// for it (at most [`ARRIVAL_LIMIT`]) and resumes the service whatever happened.
pub type ArrivalHook =
    Arc<dyn Fn(String, String) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// The longest a target backend waits for its [`ArrivalHook`] before resuming the service.
pub const ARRIVAL_LIMIT: Duration = Duration::from_millis(500);

/// A way of running and moving services. The service-module daemon is generic over it.
pub trait Backend: Send + Sync + 'static {
    /// The relocation type the module registers with.
    fn relocation_type(&self) -> RelocationType;

    /// Arms `fault` for the next migration it concerns (see [`Fault`]); backends that cannot cause
    /// it refuse with [`BackendError::Unsupported`].
    fn arm_fault(&self, fault: Fault) -> Result<(), BackendError> {
        Err(BackendError::Unsupported(format!(
            "fault {fault} in this backend"
        )))
    }

    /// Installs the hook called before an incoming service resumes (see [`ArrivalHook`]);
    /// backends that cannot tell ignore it. Without one, services resume without it.
    fn set_arrival_hook(&self, _hook: ArrivalHook) {}

    /// Creates and starts a service.
    fn create(
        &self,
        spec: ServiceSpec,
    ) -> impl Future<Output = Result<Service, BackendError>> + Send;

    /// Stops and removes a service.
    fn remove(&self, service_id: &str) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// The services running here, each with the UEs it serves now (from its live sockets).
    fn services(&self) -> impl Future<Output = Result<Vec<Service>, BackendError>> + Send;

    /// The service serving UE `ue` (it holds an established TCP connection with it), if any.
    fn serving(
        &self,
        ue: Ipv4Addr,
    ) -> impl Future<Output = Result<Option<Service>, BackendError>> + Send {
        async move {
            Ok(self
                .services()
                .await?
                .into_iter()
                .find(|s| s.ue_ipv4_addrs.contains(&ue)))
        }
    }

    /// Moves a service to the module at `request.target_address` (the SMO's Execute).
    fn migrate_out(
        &self,
        request: &ExecuteRequest,
    ) -> impl Future<Output = Result<MigrationReport, MigrationError>> + Send;

    /// Waits for work a migration left running after it answered (background removal of a
    /// source container); the daemon calls it before removing its services at shutdown.
    fn settle(&self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// After a crash of the module (a restart with the same config): takes what runs at its
    /// edge as its services and removes what a crash left half-made; the services hosted then.
    /// Backends that keep nothing outside the process have nothing to find.
    fn reconcile(&self) -> impl Future<Output = Result<Vec<Service>, BackendError>> + Send {
        async { Ok(Vec::new()) }
    }

    /// Takes in one service from a source module on an accepted migration connection.
    fn receive(
        &self,
        stream: TcpStream,
    ) -> impl Future<Output = Result<IncomingReport, MoveError>> + Send;
}

/// Accepts migration connections on `listener` (the module's `notifAddress`, bound inside its
/// edge's namespace: plainly when the module runs there, else with [`transfer::listen_in`]) and
/// receives each on its own task, until `shutdown` resolves. Then it stops accepting and waits
/// for the migrations it accepted to end (each has the backend's time limits): a receive cut
/// short would leave its half-made container behind.
pub async fn run_receiver<B: Backend>(
    backend: Arc<B>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) {
    tokio::pin!(shutdown);
    let mut running = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(_) = running.join_next(), if !running.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let backend = Arc::clone(&backend);
                    running.spawn(async move {
                        let _ = stream.set_nodelay(true);
                        match backend.receive(stream).await {
                            Ok(r) => tracing::info!(%peer, service = %r.service.service_id,
                                relocation = %r.relocation_id, prepare_us = r.prepare_us,
                                receive_us = r.receive_us, restore_us = r.restore_us,
                                resume_us = r.resume_us, image_bytes = r.image_bytes,
                                "service received"),
                            Err(e) => tracing::warn!(%peer, error = %e, "incoming migration failed"),
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    if !running.is_empty() {
        tracing::info!(
            migrations = running.len(),
            "waiting for incoming migrations to end"
        );
    }
    while running.join_next().await.is_some() {}
}

//! Service modules (thesis §3.4.3, §4.2): they host an edge cloud's services and live-migrate them
//! to another edge cloud's module when the SMO executes a relocation, keeping the service's TCP
//! sessions, IP address and MAC.
//!
//! * [`Backend`]: what the service-module daemon needs from a way of running services — create,
//!   list, find the service serving a UE, migrate one out (the SMO's Execute), receive one. The
//!   daemon is generic over it; `criu`, `lxc` and `lxd` are the implementations here. All speak
//!   the migration connection of [`transfer`].
//! * [`container`]: a service's namespaces, veth, OVS port and process tree (CRIU backend).
//! * [`criu`]: dump / restore / gated restore with the CRIU tool.
//! * [`lxc`]: a service as an LXC container, and the `lxc-*` tools (LXC backend).
//! * [`transfer`]: the migration connection between a source and a target module (control
//!   messages and image files over TCP on the backhaul).
//! * [`criu_backend`]: [`CriuBackend`], the migration procedure of both sides with CRIU.
//! * [`lxc_backend`]: [`LxcBackend`], the same with `lxc-checkpoint`.
//! * [`lxd`]: a small client of LXD's REST API over its unix socket.
//! * [`lxd_backend`]: [`LxdBackend`], services as LXD containers moved by LXD's own live
//!   migration (the target's daemon pulls from the source's over HTTPS on the backhaul).
//! * [`lxd_daemon`]: one LXD daemon per edge (its own network and mount namespace, btrfs pool,
//!   busybox image, the CRIU wrapper LXD needs), started and stopped by PID.
//! * [`hosting`]: the service table, the arrival hook's slot and helpers both backends share.
//! * [`daemon`] and [`api`]: the service-module daemon (`svcmod` binary) — its config, start-up
//!   (services, registration with the SMO), the SMO's callbacks over HTTP, shutdown.
//! * [`mount_ns`]: leaving the private mount namespace `ip netns exec` gives the daemon.

pub mod api;
pub mod container;
pub mod criu;
pub mod criu_backend;
pub mod daemon;
pub mod hosting;
pub mod lxc;
pub mod lxc_backend;
pub mod lxd;
pub mod lxd_backend;
pub mod lxd_daemon;
pub mod mount_ns;
pub mod transfer;

pub use container::EdgeSite;
pub use criu_backend::{CriuBackend, CriuConfig, Timeouts};
pub use daemon::{ModuleBackend, ModuleConfig};
pub use lxc_backend::{LxcBackend, LxcConfig};
pub use lxd_backend::{LxdBackend, LxdConfig};

use model::ran::TimelineStep;
use model::smo::{ExecuteReport, ExecuteRequest, RelocationType, ResourceRequirements, Service};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};

/// How a service's memory moves. Serialized `stop-and-copy` / `lazy-pages`; the snake_case
/// spellings `stop_and_copy` / `lazy_pages` are accepted too.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Stop the service, dump everything, copy, restore (the downtime grows with the memory).
    #[default]
    #[serde(alias = "stop_and_copy")]
    StopAndCopy,
    /// Post-copy: dump all but the memory pages, restore at once, and let the target fetch pages
    /// from the source's page server as the service touches them (CRIU `--lazy-pages`).
    #[serde(alias = "lazy_pages")]
    LazyPages,
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::StopAndCopy => "stop-and-copy",
            Self::LazyPages => "lazy-pages",
        })
    }
}

/// A failure a module causes on purpose when told to (`POST /svcmod/v1/faults`): for failure
/// experiments and the end-to-end failure tests. Serialized kebab-case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// The next service this module receives has its images damaged right before the restore,
    /// so the real restore fails (the source must roll back).
    CorruptImages,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::CorruptImages => "corrupt-images",
        })
    }
}

/// A service to start (in a config: snake_case fields, unknown ones refused).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// 1–13 characters of `a-z0-9-` (it names the OVS port `s-<id>` and the namespaces).
    pub service_id: String,
    /// In 20.0.0.0/16; kept across migrations.
    pub ipv4_addr: Ipv4Addr,
    /// Unicast `aa:bb:cc:dd:ee:ff`; kept across migrations.
    pub mac_addr: String,
    /// What runs, as root (CRIU backend: the command line of the process tree; LXC backend: the
    /// container's init, with the directory of an absolute program bound in read-only).
    pub command: Vec<String>,
    #[serde(default)]
    pub resource_requirements: ResourceRequirements,
}

impl ServiceSpec {
    /// The service this spec makes on a backend of `relocation_type`, its MAC and OVS port name
    /// checked (`s-<id>`); it serves no UE yet.
    pub fn service(&self, relocation_type: RelocationType) -> Result<Service, BackendError> {
        Ok(Service {
            service_id: self.service_id.clone(),
            ipv4_addr: self.ipv4_addr,
            mac_addr: container::validate_mac(&self.mac_addr)?,
            ovs_port: container::ovs_port_name(&self.service_id)?,
            relocation_type,
            resource_requirements: self.resource_requirements,
            ue_ipv4_addrs: Vec::new(),
        })
    }
}

/// Where a hosted service is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceState {
    /// Being created.
    Starting,
    /// Running here; can be listed, served, migrated and removed.
    Running,
    /// A migration to another module is running.
    MigratingOut,
}

impl ServiceState {
    /// Whether a migration (or a removal) may start.
    pub fn can_migrate(self) -> bool {
        self == Self::Running
    }
}

/// A failure of a backend operation.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("no service {service_id} here")]
    UnknownService { service_id: String },
    #[error("service {service_id} already exists here")]
    AlreadyHosted { service_id: String },
    #[error("service {service_id} is {state:?}")]
    Busy {
        service_id: String,
        state: ServiceState,
    },
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("{0} is not implemented yet")]
    Unsupported(String),
    #[error("the target module refused: {0}")]
    Refused(String),
    #[error("the target module failed: {0}")]
    TargetFailed(String),
    #[error(transparent)]
    Container(#[from] container::ContainerError),
    #[error(transparent)]
    Criu(#[from] criu::CriuError),
    #[error(transparent)]
    Lxc(#[from] lxc::LxcError),
    #[error(transparent)]
    Transfer(#[from] transfer::TransferError),
    #[error("cannot prepare {path}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("a blocking task failed: {0}")]
    Task(String),
}

/// A failed migration, by what became of the service.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// Nothing was stopped (or CRIU resumed the service itself): it runs at the source as before.
    #[error("migration of {service_id} did not happen, the service runs at the source: {source}")]
    NotStarted {
        service_id: String,
        #[source]
        source: BackendError,
    },
    /// The service was dumped, the move failed, and the service was restored at the source from
    /// the source's own images (its connections intact).
    #[error("migration of {service_id} failed after the dump ({cause}); resumed at the source")]
    RolledBack {
        service_id: String,
        cause: String,
        report: Box<MigrationReport>,
    },
    /// The move failed and so did resuming at the source.
    #[error("migration of {service_id} failed ({cause}) and resuming at the source failed too ({fallback}): the service is lost")]
    Lost {
        service_id: String,
        cause: String,
        fallback: String,
    },
    /// The target was told to go live but did not confirm: the service runs at the target or
    /// nowhere (the source has given it up).
    #[error("migration of {service_id}: commit sent but not confirmed ({cause})")]
    OutcomeUnknown { service_id: String, cause: String },
}

impl MigrationError {
    /// Whether the service is (still, or again) running at the source.
    pub fn service_at_source(&self) -> bool {
        matches!(self, Self::NotStarted { .. } | Self::RolledBack { .. })
    }
}

/// One migration as the source module measured it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MigrationReport {
    pub relocation_id: String,
    pub service: Service,
    pub strategy: Strategy,
    /// Connect + the target making the service's namespace.
    pub prepare_us: u64,
    /// `criu dump` (the service stops at its start).
    pub dump_us: u64,
    /// Images to the target over the backhaul.
    pub transfer_us: u64,
    /// `criu restore` at the target until every task is restored (target's clock).
    pub restore_us: u64,
    /// Commit → the service runs at the target (carrier up, tasks resumed).
    pub resume_us: u64,
    /// Post-copy: the service's resume at the target → its last page served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pages_us: Option<u64>,
    /// Dump start → the service runs again (at the target, or at the source after a rollback).
    pub frozen_us: u64,
    /// The whole migration.
    pub total_us: u64,
    /// Size of the images.
    pub image_bytes: u64,
    /// Bytes the source sent on the migration connection (images and framing).
    pub bytes_moved: u64,
    pub steps: Vec<TimelineStep>,
}

impl MigrationReport {
    /// The report of a migration of `service` (for the SMO's `request`) that is about to start:
    /// every time and count zero, no steps. Also checks the request's target address, the
    /// module every backend connects to.
    pub fn starting(
        request: &ExecuteRequest,
        service: &Service,
        strategy: Strategy,
    ) -> Result<(Self, std::net::SocketAddr), BackendError> {
        let target = request.target_address;
        let report = Self {
            relocation_id: request.relocation_id.clone(),
            service: service.clone(),
            strategy,
            prepare_us: 0,
            dump_us: 0,
            transfer_us: 0,
            restore_us: 0,
            resume_us: 0,
            pages_us: None,
            frozen_us: 0,
            total_us: 0,
            image_bytes: 0,
            bytes_moved: 0,
            steps: Vec::new(),
        };
        Ok((report, target))
    }

    /// The answer to the SMO's Execute.
    pub fn to_execute_report(&self) -> ExecuteReport {
        ExecuteReport {
            took_us: self.total_us,
            bytes_moved: Some(self.bytes_moved),
            steps: self.steps.clone(),
        }
    }
}

/// One migration as the target module saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IncomingReport {
    pub relocation_id: String,
    pub service: Service,
    pub prepare_us: u64,
    pub receive_us: u64,
    pub restore_us: u64,
    pub resume_us: u64,
    /// Post-copy: resume → the last page arrived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pages_us: Option<u64>,
    pub image_bytes: u64,
}

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

    /// Takes in one service from a source module on an accepted migration connection.
    fn receive(
        &self,
        stream: TcpStream,
    ) -> impl Future<Output = Result<IncomingReport, BackendError>> + Send;
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

/// The steps of one procedure on a monotonic clock, with wall-clock anchors.
#[derive(Debug, Clone)]
pub struct Stopwatch {
    start: Instant,
    start_unix_us: u64,
    steps: Vec<TimelineStep>,
}

impl Default for Stopwatch {
    fn default() -> Self {
        Self::start()
    }
}

impl Stopwatch {
    /// Starts now.
    pub fn start() -> Self {
        Self {
            start: Instant::now(),
            start_unix_us: model::ran::unix_now_us(),
            steps: Vec::new(),
        }
    }

    /// Records step `name` that began at `began` and ends now; returns its duration in µs.
    pub fn record(&mut self, name: impl Into<String>, began: Instant) -> u64 {
        let took_us = us(began.elapsed());
        let at_us = us(began.saturating_duration_since(self.start));
        self.steps.push(TimelineStep {
            step: name.into(),
            at_us,
            took_us,
            at_unix_us: Some(self.start_unix_us + at_us),
        });
        took_us
    }

    /// Records a step measured elsewhere (e.g. by the target) that ended now.
    pub fn record_took(&mut self, name: impl Into<String>, took_us: u64) {
        let end = us(self.start.elapsed());
        let at_us = end.saturating_sub(took_us);
        self.steps.push(TimelineStep {
            step: name.into(),
            at_us,
            took_us,
            at_unix_us: Some(self.start_unix_us + at_us),
        });
    }

    /// µs since the start.
    pub fn elapsed_us(&self) -> u64 {
        us(self.start.elapsed())
    }

    /// The steps so far.
    pub fn steps(&self) -> &[TimelineStep] {
        &self.steps
    }
}

/// A duration in whole µs.
pub fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_becomes_the_execute_answer() {
        let mut sw = Stopwatch::start();
        let began = Instant::now();
        sw.record("dump", began);
        sw.record_took("restore at target", 7);
        let report = MigrationReport {
            relocation_id: "r".into(),
            service: Service {
                service_id: "a".into(),
                ipv4_addr: Ipv4Addr::new(20, 0, 0, 50),
                mac_addr: "02:00:00:00:00:50".into(),
                ovs_port: "s-a".into(),
                relocation_type: RelocationType::Criu,
                resource_requirements: Default::default(),
                ue_ipv4_addrs: vec![],
            },
            strategy: Strategy::StopAndCopy,
            prepare_us: 1,
            dump_us: 2,
            transfer_us: 3,
            restore_us: 7,
            resume_us: 4,
            pages_us: None,
            frozen_us: 16,
            total_us: 20,
            image_bytes: 100,
            bytes_moved: 120,
            steps: sw.steps().to_vec(),
        };
        let e = report.to_execute_report();
        assert_eq!(e.took_us, 20);
        assert_eq!(e.bytes_moved, Some(120));
        assert_eq!(e.steps.len(), 2);
        assert_eq!(e.steps[1].took_us, 7);
        assert!(e.steps.iter().all(|s| s.at_unix_us.is_some()));
    }

    #[test]
    fn only_a_running_service_can_move() {
        assert!(ServiceState::Running.can_migrate());
        assert!(!ServiceState::MigratingOut.can_migrate());
        assert!(!ServiceState::Starting.can_migrate());
        assert_eq!(Strategy::LazyPages.to_string(), "lazy-pages");
    }

    #[test]
    fn strategies_parse_in_both_spellings() {
        for (text, want) in [
            ("stop-and-copy", Strategy::StopAndCopy),
            ("stop_and_copy", Strategy::StopAndCopy),
            ("lazy-pages", Strategy::LazyPages),
            ("lazy_pages", Strategy::LazyPages),
        ] {
            let got: Strategy = serde_json::from_value(serde_json::json!(text)).expect(text);
            assert_eq!(got, want);
        }
        assert_eq!(
            serde_json::to_value(Strategy::LazyPages).expect("json"),
            serde_json::json!("lazy-pages")
        );
        assert!(serde_json::from_value::<Strategy>(serde_json::json!("copy")).is_err());
    }
}

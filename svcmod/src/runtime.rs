//! [`Runtime`]: what differs between the ways a module runs and moves services — a CRIU process
//! tree ([`crate::criu_backend`]), an LXC container ([`crate::lxc_backend`]), an LXD instance
//! ([`crate::lxd_backend`]). Everything else (the service table, the move's protocol and its
//! outcome rule, the reports, the arrival hook, faults, background clean-up, work directories)
//! is written once, in [`crate::driver`] and [`crate::protocol`].
//!
//! A runtime holds its [`Config`]: the part every module has ([`Config`]'s own fields) and the
//! runtime's own options (`Config::runtime`).
//!
//! The steps of one move, and which runtime method does each:
//!
//! | step | source | target |
//! |---|---|---|
//! | the offer sent in `Prepare` | [`Runtime::offer`] (nothing stops) | [`Runtime::accept`]: decode, check, make the container silent |
//! | nothing stopped after all | [`Runtime::withdraw`] | [`Runtime::abort`], then [`Runtime::destroy`] |
//! | stop the service | [`Runtime::checkpoint`] (images into [`Leg::images`]; pull: note where it starts) | |
//! | restore | | [`Runtime::restore`] (images: gated, still stopped; pull: pulled, running) |
//! | the move failed after the stop | [`Runtime::resume_at_source`] | [`Runtime::abort`], [`Runtime::destroy`] |
//! | go live | | [`Runtime::go_live`] |
//! | after `Done` | [`Runtime::complete`], then [`Runtime::destroy`] | [`Runtime::settle`] |
//! | `Done` never came | [`Runtime::give_up`], then [`Runtime::destroy`] | |

use crate::container::EdgeSite;
use crate::error::RuntimeError;
use crate::hosting::damage_images;
use crate::service::{Fault, ServiceSpec, Strategy};
use model::smo::{RelocationType, Service};
use serde_json::Value;
use std::future::Future;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where work directories go unless configured: tmpfs (`/run` is not tmpfs on this machine,
/// `/dev/shm` is).
pub const DEFAULT_WORK_ROOT: &str = "/dev/shm/testbed-svcmod";

/// Time limits of one move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    /// The target making the service's container.
    pub prepare: Duration,
    pub dump: Duration,
    /// All images across; pull: the margin the source allows beyond the target's pull.
    pub transfer: Duration,
    /// The target's restore (pull: LXD's whole move).
    pub restore: Duration,
    /// `Commit` → `Done` (and the target's wait for `Commit`).
    pub commit: Duration,
    /// Post-copy: the resumed service's last page (the backhaul through the OVS userspace
    /// datapath moves ~30–50 MB/s here).
    pub pages: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(3),
            prepare: Duration::from_secs(10),
            dump: Duration::from_secs(30),
            transfer: Duration::from_secs(30),
            restore: Duration::from_secs(30),
            commit: Duration::from_secs(10),
            pages: Duration::from_secs(120),
        }
    }
}

/// How a module is set up: what every runtime's module has, and the runtime's own options `T`.
#[derive(Debug, Clone)]
pub struct Config<T> {
    /// Namespace prefix (the testbed's, e.g. `tb`): service namespaces and containers are
    /// `<prefix>-svc-<id>-<edge>` (LXD: instances `<prefix>-svc-<id>`).
    pub prefix: String,
    /// The edge cloud this module serves.
    pub site: EdgeSite,
    /// Images and logs (tmpfs); one subdirectory per move, removed afterwards.
    pub work_dir: PathBuf,
    /// How services move unless the SMO's Execute is told otherwise.
    pub strategy: Strategy,
    pub timeouts: Timeouts,
    /// MTU of the service's veth.
    pub mtu: u32,
    /// Keep each move's work directory (images, logs; debugging).
    pub keep_work: bool,
    /// Remove a migrated service's source container in the background, after answering the
    /// migration (the daemon: Execute answers 40–55 ms sooner). The service leaves the table at
    /// once; a service of the same id arriving meanwhile waits for the removal, and
    /// [`crate::Backend::settle`] waits for all of them. Off: removed before the move returns.
    pub background_cleanup: bool,
    /// The runtime's own options.
    pub runtime: T,
}

impl<T> Config<T> {
    /// The defaults for `site`: work directory [`DEFAULT_WORK_ROOT`]`/<prefix>-<edge>`,
    /// stop-and-copy, MTU 1500, the default time limits.
    pub fn new(prefix: impl Into<String>, site: EdgeSite, runtime: T) -> Self {
        let prefix = prefix.into();
        Self {
            work_dir: Path::new(DEFAULT_WORK_ROOT).join(format!("{prefix}-{}", site.edge)),
            prefix,
            site,
            strategy: Strategy::StopAndCopy,
            timeouts: Timeouts::default(),
            mtu: 1500,
            keep_work: false,
            background_cleanup: false,
            runtime,
        }
    }
}

/// How a service's state gets from the source to the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// The source checkpoints into image files, they travel on the migration connection, the
    /// target restores them stopped (gated), `Commit` makes it go live (CRIU tree, LXC).
    Images,
    /// The target's runtime pulls the service from the source's by itself on `Restore`, and the
    /// service runs at the target when the pull ends: no images on the connection, no `Commit`
    /// (LXD's live migration).
    Pull,
}

/// One side of one move: what the driver tells the runtime about it (kept in the move's work
/// directory as `move.json`, so a restarted module knows what it was doing).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Leg {
    pub relocation_id: String,
    pub service: Service,
    /// The move's own work directory (made empty before the move, removed after it).
    pub work: PathBuf,
}

impl Leg {
    /// Where the images are (images transport): `<work>/images`.
    pub fn images(&self) -> PathBuf {
        self.work.join("images")
    }
}

/// A checkpoint that worked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Checkpointed {
    /// Size of the images (0 when the runtime keeps them itself).
    pub image_bytes: u64,
}

/// Where a failed checkpoint left the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Left {
    /// It runs as before (CRIU resumes a tree whose dump failed).
    Running,
    /// It stopped, and can be resumed from what the checkpoint left.
    Stopped,
    /// It is gone.
    Gone,
}

/// A failed checkpoint.
#[derive(Debug, thiserror::Error)]
#[error("checkpoint failed (the service: {left:?})")]
pub struct CheckpointError {
    pub left: Left,
    #[source]
    pub source: RuntimeError,
}

/// A container of this module's that a restarted module finds at its edge.
#[derive(Debug)]
pub struct Found<C> {
    pub service_id: String,
    /// The service as its container shows it (address and MAC of `eth0`), when readable.
    pub service: Option<Service>,
    pub container: C,
    /// The service runs and is reachable (its carrier up): a half-made target (carrier down), a
    /// source a checkpoint stopped, or a service that died, does not.
    pub running: bool,
}

/// How the service came back at the source after a failed move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resumed {
    /// It had never stopped (LXD: the target failed before the dump).
    Untouched,
    /// It was brought back from what the checkpoint left.
    Restored,
}

/// What differs per backend. Every method that does system work may block the thread only
/// through [`crate::hosting::blocking`].
pub trait Runtime: Send + Sync + Sized + 'static {
    /// The runtime's own options (`Config::runtime`).
    type Options: Clone + std::fmt::Debug + Send + Sync;
    /// A hosted service's container.
    type Container: Clone + std::fmt::Debug + Send + Sync + 'static;
    /// What the source keeps of a move between its steps.
    type Outgoing: Send;
    /// What the target keeps of a move between its steps.
    type Incoming: Send;

    /// The relocation type the module registers with.
    const RELOCATION_TYPE: RelocationType;
    /// How its services move.
    const TRANSPORT: Transport;

    /// A runtime with no services.
    fn new(cfg: Config<Self::Options>) -> Self;

    /// Its configuration.
    fn config(&self) -> &Config<Self::Options>;

    /// Whether services can move with `strategy`.
    fn supports(strategy: Strategy) -> bool {
        strategy == Strategy::StopAndCopy
    }

    /// Makes and starts the container of a new service (`service` is `spec`'s, checked).
    fn start(
        &self,
        spec: &ServiceSpec,
        service: &Service,
    ) -> impl Future<Output = Result<Self::Container, RuntimeError>> + Send;

    /// Stops and removes a container with everything it has at the edge (port, namespace,
    /// cgroups); idempotent.
    fn destroy(
        &self,
        container: &Self::Container,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// The peers of the service's established TCP connections (the UEs it serves). Blocking.
    fn peers(container: &Self::Container) -> Result<Vec<Ipv4Addr>, RuntimeError>;

    /// Source: checks that the service can move with `strategy` and makes the offer the target
    /// needs (sent in `Prepare`). Nothing stops.
    fn offer(
        &self,
        leg: &Leg,
        strategy: Strategy,
        container: &Self::Container,
    ) -> impl Future<Output = Result<(Self::Outgoing, Value), RuntimeError>> + Send;

    /// Source: the offer is void and nothing was stopped (LXD cancels its operation).
    fn withdraw(&self, _out: Self::Outgoing) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Source: stops the service and leaves what the target needs (images transport: the images
    /// in [`Leg::images`]).
    fn checkpoint(
        &self,
        leg: &Leg,
        out: &mut Self::Outgoing,
        container: &mut Self::Container,
    ) -> impl Future<Output = Result<Checkpointed, CheckpointError>> + Send;

    /// Source, pull transport: the bytes the pull moved, once the target has it (images: the
    /// connection counts them).
    fn moved_bytes(&self, _out: &Self::Outgoing) -> impl Future<Output = Option<u64>> + Send {
        async { None }
    }

    /// Source: brings the service back after a failed move (the target has aborted: its copy
    /// never went live).
    fn resume_at_source(
        &self,
        leg: &Leg,
        out: Self::Outgoing,
        container: &mut Self::Container,
    ) -> impl Future<Output = Result<Resumed, RuntimeError>> + Send;

    /// Source: the runtime's part after the target said `Done` (post-copy: serve the remaining
    /// pages). An error: the target may not have all of the service.
    fn complete(
        &self,
        _out: &mut Self::Outgoing,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send {
        async { Ok(()) }
    }

    /// Source: the service left or may have (no `Done`); ends what the move still holds
    /// (post-copy: lets the target fetch its pages if it is there after all).
    fn give_up(&self, _out: Self::Outgoing) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Target: decodes and checks the source's offer and makes the service's container, silent
    /// (nothing of it may be seen on the edge's switch yet).
    fn accept(
        &self,
        leg: &Leg,
        offer: Value,
    ) -> impl Future<Output = Result<(Self::Incoming, Self::Container), RuntimeError>> + Send;

    /// Target: causes `fault` in the next restore; `false` when this runtime cannot. The images
    /// transport's default damages the images ([`damage_images`]: CRIU's restore then really
    /// fails).
    fn inject(
        &self,
        leg: &Leg,
        _incoming: &mut Self::Incoming,
        fault: Fault,
    ) -> impl Future<Output = Result<bool, RuntimeError>> + Send {
        let images = leg.images();
        async move {
            match (Self::TRANSPORT, fault) {
                (Transport::Images, Fault::CorruptImages) => damage_images(&images).map(|()| true),
                (Transport::Pull, Fault::CorruptImages) => Ok(false),
            }
        }
    }

    /// Target: restores the service (images: from [`Leg::images`], every task stopped, its
    /// carrier down; pull: pulls it, and it runs).
    fn restore(
        &self,
        leg: &Leg,
        incoming: &mut Self::Incoming,
        container: &mut Self::Container,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Target: the service runs here from now on (images: carrier up, tasks resumed; pull: its
    /// port on the bridge).
    fn go_live(
        &self,
        incoming: &mut Self::Incoming,
        container: &mut Self::Container,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Target: undoes a restore that will not go live (the driver destroys the container
    /// afterwards).
    fn abort(&self, _incoming: Self::Incoming) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Target: the runtime's part after `Done` (post-copy: the remaining pages arrive); how long
    /// it took, if there was such a part.
    fn settle(&self, _incoming: Self::Incoming) -> impl Future<Output = Option<Duration>> + Send {
        async { None }
    }

    /// Removes what the runtime keeps besides its containers (LXC: its lxcpath), once they are
    /// all gone.
    fn clean_up(&self) {}

    /// After a crash of the module: ends the runtime's own runs the crash left behind (a dump is
    /// let finish; a restore waiting for the dead module's decision is ended), then lists every
    /// container of this module's at its edge.
    fn survey(
        &self,
    ) -> impl Future<Output = Result<Vec<Found<Self::Container>>, RuntimeError>> + Send;

    /// After a crash of the module at the source: brings the service back from the images its
    /// checkpoint left in [`Leg::images`] (the move never sent `Commit`, so the target cannot
    /// have it). Default: this runtime cannot.
    fn resume_interrupted(
        &self,
        _leg: &Leg,
        _container: &mut Self::Container,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send {
        async {
            Err(RuntimeError::State(
                "this runtime cannot resume an interrupted move".into(),
            ))
        }
    }
}

/// The work directories of the moves of a runtime of `relocation_type` on `side` (`in`: the
/// target's, `out`: the source's) start so: `<work_dir>/<side>-<type>-` (every module of an edge
/// may share one work directory; each keeps to its own moves).
pub fn moves_prefix(work_dir: &Path, side: &str, relocation_type: RelocationType) -> PathBuf {
    let kind = relocation_type.to_string().to_lowercase();
    work_dir.join(format!("{side}-{kind}-"))
}

/// The offer a runtime needs from the source, decoded (and refused when absent or malformed:
/// `what` names it).
pub fn decode_offer<T: serde::de::DeserializeOwned>(
    offer: Value,
    what: &str,
) -> Result<T, RuntimeError> {
    if offer.is_null() {
        return Err(RuntimeError::Offer(format!("no {what}")));
    }
    serde_json::from_value(offer).map_err(|e| RuntimeError::Offer(format!("{what}: {e}")))
}

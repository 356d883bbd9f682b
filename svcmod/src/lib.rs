//! Service modules (thesis §3.4.3, §4.2): they host an edge cloud's services and live-migrate them
//! to another edge cloud's module when the SMO executes a relocation, keeping the service's TCP
//! sessions, IP address and MAC.
//!
//! * [`Backend`] ([`backend`]): what the service-module daemon needs from a way of running
//!   services — create, list, find the service serving a UE, migrate one out (the SMO's Execute),
//!   receive one. The daemon is generic over it.
//! * [`driver`]: [`Driver`], the one backend, over any [`Runtime`]: the service table, the move's
//!   both sides, the reports, the arrival hook, faults, background clean-up.
//! * [`protocol`]: the move's two-phase commit as two I/O-free state machines (source and
//!   target): what to undo after which failure, and where the service ended up.
//! * [`runtime`]: [`Runtime`], what differs per backend; its implementations [`criu_backend`]
//!   (process trees in their own namespaces, moved with CRIU: [`CriuBackend`]), [`lxc_backend`]
//!   (LXC containers, `lxc-checkpoint`: [`LxcBackend`]) and [`lxd_backend`] (LXD containers moved
//!   by LXD's own live migration, pulled by the target's daemon: [`LxdBackend`]).
//! * [`transfer`]: the migration connection between a source and a target module (control
//!   messages and image files over TCP on the backhaul); it knows no backend.
//! * [`container`]: a service's namespaces, veth, OVS port and process tree (CRIU runtime), and
//!   the port helpers every runtime uses.
//! * [`criu`]: dump / restore / gated restore with the CRIU tool, the kdat cache.
//! * [`lxc`]: a service as an LXC container, and the `lxc-*` tools.
//! * [`lxd`]: a small client of LXD's REST API over its unix socket.
//! * [`lxd_daemon`]: one LXD daemon per edge (its own network and mount namespace, btrfs pool,
//!   busybox image, the CRIU wrapper LXD needs), started and stopped by PID.
//! * [`hosting`]: the service table, the arrival hook's and the fault's slots, small helpers.
//! * [`service`]: services, strategies, faults and the move reports; [`error`]: the errors of
//!   each layer.
//! * [`daemon`] and [`api`]: the service-module daemon (`svcmod` binary) — its config, start-up
//!   (services, registration with the SMO), the SMO's callbacks over HTTP, shutdown.
//! * [`mount_ns`]: leaving the private mount namespace `ip netns exec` gives the daemon.

pub mod api;
pub mod backend;
pub mod container;
pub mod criu;
pub mod criu_backend;
pub mod daemon;
pub mod driver;
pub mod error;
#[cfg(test)]
mod fake;
pub mod hosting;
pub mod lxc;
pub mod lxc_backend;
pub mod lxd;
pub mod lxd_backend;
pub mod lxd_daemon;
pub mod mount_ns;
pub mod protocol;
pub mod runtime;
pub mod service;
pub mod transfer;

pub use backend::{run_receiver, ArrivalHook, Backend, ARRIVAL_LIMIT};
pub use container::EdgeSite;
pub use criu_backend::{CriuBackend, CriuConfig, CriuOptions};
pub use daemon::{ModuleBackend, ModuleConfig};
pub use driver::Driver;
pub use error::{BackendError, MigrationError, MoveError, RuntimeError};
pub use lxc_backend::{LxcBackend, LxcConfig, LxcOptions};
pub use lxd_backend::{LxdBackend, LxdConfig, LxdOptions};
pub use model::timeline::{us, Stopwatch};
pub use runtime::{Config, Runtime, Timeouts};
pub use service::{Fault, IncomingReport, MigrationReport, ServiceSpec, ServiceState, Strategy};

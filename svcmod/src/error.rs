//! The module's errors, one enum per layer, each with its sources:
//!
//! * [`RuntimeError`]: a step of a runtime (the backend's own tools: namespaces, CRIU, LXC, LXD)
//!   failed;
//! * [`BackendError`]: a request to the module cannot be carried out (unknown service, busy,
//!   bad or unsupported request), or a runtime step behind it failed;
//! * [`MoveError`]: why one move failed, by who failed: this module's runtime, the peer (its own
//!   words), the connection, or the request;
//! * [`MigrationError`]: a failed move at the source, by where the service ended up — the
//!   distinction the SMO acts on.

use crate::container::ContainerError;
use crate::criu::CriuError;
use crate::lxc::LxcError;
use crate::lxd::LxdError;
use crate::service::{MigrationReport, ServiceState};
use crate::transfer::TransferError;
use netkit::cmd::CmdError;

/// A failed step of a runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error(transparent)]
    Criu(#[from] CriuError),
    #[error(transparent)]
    Lxc(#[from] LxcError),
    #[error(transparent)]
    Lxd(#[from] LxdError),
    #[error(transparent)]
    Cmd(#[from] CmdError),
    #[error("cannot prepare {path}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The source's offer (in `Prepare`) does not decode or is not acceptable here.
    #[error("bad offer: {0}")]
    Offer(String),
    /// A state the runtime cannot work from (no init PID, an instance that does not run, …).
    #[error("{0}")]
    State(String),
    #[error("a blocking task failed")]
    Task(#[source] tokio::task::JoinError),
}

/// A request the module cannot carry out.
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
    #[error("{0} is not supported")]
    Unsupported(String),
    /// (Boxed: errors stay small on the way up.)
    #[error(transparent)]
    Runtime(Box<RuntimeError>),
}

impl From<RuntimeError> for BackendError {
    fn from(e: RuntimeError) -> Self {
        Self::Runtime(Box::new(e))
    }
}

impl From<ContainerError> for BackendError {
    fn from(e: ContainerError) -> Self {
        RuntimeError::from(e).into()
    }
}

/// Why a move failed.
#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    /// The request cannot be carried out here (unknown service, busy, unsupported strategy, a
    /// service this module does not take): nothing happened.
    #[error(transparent)]
    Request(#[from] BackendError),
    /// The target module refused the service (its words).
    #[error("the target module refused: {0}")]
    Refused(String),
    /// The target module reported that a step failed (its words).
    #[error("the target failed to {step}: {cause}")]
    TargetFailed { step: &'static str, cause: String },
    /// The migration connection failed: no connection, lost, a time limit, bad framing.
    #[error(transparent)]
    Connection(#[from] TransferError),
    /// The peer sent a message out of turn.
    #[error("expected {expected}, got {got}")]
    Unexpected {
        expected: &'static str,
        got: &'static str,
    },
    /// A step of this module's own runtime failed (at the source: the source's).
    #[error("{step} failed")]
    Local {
        step: &'static str,
        #[source]
        source: Box<RuntimeError>,
    },
}

impl MoveError {
    /// A failed step of this module's runtime.
    pub fn local(step: &'static str) -> impl FnOnce(RuntimeError) -> Self {
        move |source| Self::Local {
            step,
            source: Box::new(source),
        }
    }
}

/// A failed migration, by what became of the service.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// Nothing was stopped (or the runtime resumed the service itself): it runs at the source as
    /// before.
    #[error("migration of {service_id} did not happen, the service runs at the source")]
    NotStarted {
        service_id: String,
        #[source]
        cause: MoveError,
    },
    /// The service was stopped, the move failed, and the service was brought back at the source
    /// (its connections intact).
    #[error(
        "migration of {service_id} failed after the service stopped; it was resumed at the source"
    )]
    RolledBack {
        service_id: String,
        #[source]
        cause: MoveError,
        report: Box<MigrationReport>,
    },
    /// The move failed and so did resuming at the source.
    #[error("migration of {service_id} failed ({cause}) and the service could not be resumed at the source: it is lost")]
    Lost {
        service_id: String,
        cause: MoveError,
        #[source]
        fallback: Box<RuntimeError>,
    },
    /// The target was told to go live (or went live by itself) but did not confirm: the service
    /// runs at the target or nowhere (the source has given it up).
    #[error("migration of {service_id}: the target was to go live but did not confirm")]
    OutcomeUnknown {
        service_id: String,
        #[source]
        cause: MoveError,
    },
}

impl MigrationError {
    /// Whether the service is (still, or again) running at the source.
    pub fn service_at_source(&self) -> bool {
        matches!(self, Self::NotStarted { .. } | Self::RolledBack { .. })
    }

    /// Why the move failed.
    pub fn cause(&self) -> &MoveError {
        match self {
            Self::NotStarted { cause, .. }
            | Self::RolledBack { cause, .. }
            | Self::Lost { cause, .. }
            | Self::OutcomeUnknown { cause, .. } => cause,
        }
    }
}

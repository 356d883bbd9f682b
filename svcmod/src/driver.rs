//! [`Driver`]: the one [`Backend`], over any [`Runtime`]. It keeps the module's service table,
//! the arrival hook and the armed fault, and runs both sides of every move: it performs the
//! commands of the move's state machines ([`crate::protocol`]) — the runtime's steps and the
//! migration connection's messages — and feeds their results back. What became of a service is
//! the machines' decision; the driver only carries it out (the table, the source container's
//! removal, in the background if so configured, the move's work directory).
//!
//! The connection is any byte stream: a TCP connection on the backhaul in real use
//! ([`Driver::migrate_out_with`], [`Backend::receive`]), an in-memory one in the unit tests
//! ([`Driver::migrate_out_via`], [`Driver::receive_over`]).

use crate::backend::{ArrivalHook, Backend};
use crate::error::{BackendError, MigrationError, MoveError, RuntimeError};
use crate::hosting::{check_incoming, fresh_dir, path_safe, ArrivalSlot, FaultSlot, Hosting};
use crate::protocol::{
    SourceCommand, SourceEvent, SourceMove, SourceStart, TargetCommand, TargetEvent, TargetMove,
};
use crate::runtime::{moves_prefix, CheckpointError, Config, Left, Leg, Runtime, Transport};
use crate::service::{Fault, IncomingReport, MigrationReport, ServiceSpec, ServiceState, Strategy};
use crate::transfer::{self, Conn, TransferError, MAX_IMAGE_BYTES};
use model::smo::{ExecuteRequest, RelocationType, Service};
use model::timeline::us;
use serde_json::Value;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// A service module's backend over runtime `R`.
#[derive(Debug)]
pub struct Driver<R: Runtime> {
    runtime: Arc<R>,
    hosting: Hosting<R::Container>,
    arrival: ArrivalSlot,
    /// A fault armed for the next incoming move.
    fault: FaultSlot,
}

/// What the target holds of a move it accepted.
struct Held<R: Runtime> {
    leg: Leg,
    /// Until the runtime's part ended (aborted or settled).
    incoming: Option<R::Incoming>,
    container: R::Container,
}

impl<R: Runtime> Driver<R> {
    /// A module with no services yet.
    pub fn new(cfg: Config<R::Options>) -> Self {
        Self::with_runtime(R::new(cfg))
    }

    /// A module over `runtime`, with no services yet.
    pub fn with_runtime(runtime: R) -> Self {
        Self {
            runtime: Arc::new(runtime),
            hosting: Hosting::default(),
            arrival: ArrivalSlot::default(),
            fault: FaultSlot::default(),
        }
    }

    /// The runtime.
    pub fn runtime(&self) -> &R {
        &self.runtime
    }

    /// The module's configuration.
    pub fn config(&self) -> &Config<R::Options> {
        self.runtime.config()
    }

    /// The container of a hosted service.
    pub fn container(&self, service_id: &str) -> Option<R::Container> {
        self.hosting.get(service_id).map(|h| h.container)
    }

    /// The state of a hosted service.
    pub fn state(&self, service_id: &str) -> Option<ServiceState> {
        self.hosting.get(service_id).map(|h| h.state)
    }

    /// Removes every service this module hosts and what the runtime keeps besides (tests,
    /// shutdown of a throw-away deployment).
    pub async fn remove_all(&self) {
        self.hosting.settle().await;
        for id in self.hosting.ids() {
            if let Err(e) = self.remove(&id).await {
                tracing::warn!(service = %id, error = %sbi::error_chain(&e), "cannot remove service");
            }
        }
        self.runtime.clean_up();
    }

    /// The work directory of a move on `side` (`in`, `out`):
    /// `<work_dir>/<side>-<type>-<service>-<relocation>`.
    fn work(&self, side: &str, service_id: &str, relocation_id: &str) -> std::path::PathBuf {
        let prefix = moves_prefix(&self.config().work_dir, side, R::RELOCATION_TYPE);
        let mut name = prefix.into_os_string();
        name.push(format!("{service_id}-{}", path_safe(relocation_id)));
        name.into()
    }

    /// Removes a move's work directory (unless configured to keep it).
    fn remove_work(&self, dir: &Path) {
        if !self.config().keep_work {
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    /// Moves a service to the module at `request.target_address` with `strategy`, over a TCP
    /// connection from the edge's namespace (the trait's `migrate_out` uses the configured
    /// strategy).
    pub async fn migrate_out_with(
        &self,
        request: &ExecuteRequest,
        strategy: Strategy,
    ) -> Result<MigrationReport, MigrationError> {
        let cfg = self.config();
        let dial = transfer::connect_in(
            &cfg.site.netns,
            request.target_address,
            cfg.timeouts.connect,
        );
        self.migrate_out_via(request, strategy, dial).await
    }

    /// Moves a service over the connection `dial` makes (the source side of the protocol).
    pub async fn migrate_out_via<S, D>(
        &self,
        request: &ExecuteRequest,
        strategy: Strategy,
        dial: D,
    ) -> Result<MigrationReport, MigrationError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
        D: Future<Output = Result<S, TransferError>> + Send,
    {
        let id = &request.service.service_id;
        if !R::supports(strategy) {
            return Err(MigrationError::NotStarted {
                service_id: id.clone(),
                cause: BackendError::Unsupported(format!(
                    "{strategy} migration with the {} runtime",
                    R::RELOCATION_TYPE
                ))
                .into(),
            });
        }
        self.hosting
            .migrate_out(id, async |service, container| {
                self.run_source(request, strategy, service, container, dial)
                    .await
            })
            .await
    }

    async fn run_source<S, D>(
        &self,
        request: &ExecuteRequest,
        strategy: Strategy,
        service: Service,
        container: &mut R::Container,
        dial: D,
    ) -> Result<MigrationReport, MigrationError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
        D: Future<Output = Result<S, TransferError>> + Send,
    {
        use SourceCommand as C;
        use SourceEvent as E;
        let cfg = self.config();
        let service_id = service.service_id.clone();
        let leg = Leg {
            relocation_id: request.relocation_id.clone(),
            work: self.work("out", &service_id, &request.relocation_id),
            service: service.clone(),
        };
        let (mut machine, mut cmds) = SourceMove::start(
            Instant::now(),
            SourceStart {
                relocation_id: request.relocation_id.clone(),
                service,
                strategy,
                transport: R::TRANSPORT,
                timeouts: cfg.timeouts,
                background_cleanup: cfg.background_cleanup,
            },
        );
        let mut dial = Some(dial);
        let mut conn: Option<Conn<S>> = None;
        let mut out: Option<R::Outgoing> = None;
        let rt = &*self.runtime;
        loop {
            let mut event = None;
            for cmd in cmds {
                event = match cmd {
                    C::Offer => Some(E::Offered(
                        async {
                            fresh_dir(&leg.work)?;
                            if R::TRANSPORT == Transport::Images {
                                fresh_dir(&leg.images())?;
                            }
                            keep(&leg.work.join(MOVE_FILE), &serde_json::json!(leg))?;
                            let (o, offer) = rt.offer(&leg, strategy, container).await?;
                            out = Some(o);
                            Ok::<Value, RuntimeError>(offer)
                        }
                        .await,
                    )),
                    C::Connect => Some(E::Connected(match dial.take() {
                        Some(d) => d.await.map(|s| conn = Some(Conn::new(s))),
                        None => Err(not_connected()),
                    })),
                    C::Send(msg) => Some(E::Sent(match conn.as_mut() {
                        Some(c) => c.send(&msg).await.map(|()| c.bytes_sent()),
                        None => Err(not_connected()),
                    })),
                    C::Receive { expect, limit } => Some(E::Received(match conn.as_mut() {
                        Some(c) => c.recv_within(limit, expect).await,
                        None => Err(not_connected()),
                    })),
                    C::Checkpoint => Some(E::Checkpointed(match out.as_mut() {
                        Some(o) => rt.checkpoint(&leg, o, container).await,
                        None => Err(CheckpointError {
                            left: Left::Running,
                            source: RuntimeError::State("no offer was made".into()),
                        }),
                    })),
                    C::SendImages { limit } => Some(E::ImagesSent(match conn.as_mut() {
                        Some(c) => within(limit, "images sent", c.send_images(&leg.images()))
                            .await
                            .map(|_| c.bytes_sent()),
                        None => Err(not_connected()),
                    })),
                    C::Measure => Some(E::Measured(match out.as_ref() {
                        Some(o) => rt.moved_bytes(o).await,
                        None => None,
                    })),
                    C::MarkCommitting => {
                        // Before `Commit`: if this write fails, `Commit` must not go out.
                        match keep(&leg.work.join(COMMITTING), &serde_json::json!(true)) {
                            Ok(()) => None,
                            Err(e) => Some(E::Sent(Err(TransferError::Io {
                                what: "marking the commit".into(),
                                source: std::io::Error::other(sbi::error_chain(&e)),
                            }))),
                        }
                    }
                    C::Close => {
                        conn = None;
                        None
                    }
                    C::Withdraw => {
                        if let Some(o) = out.take() {
                            rt.withdraw(o).await;
                        }
                        None
                    }
                    C::ResumeAtSource => Some(E::Resumed(match out.take() {
                        Some(o) => rt.resume_at_source(&leg, o, container).await,
                        None => Err(RuntimeError::State("no move to undo".into())),
                    })),
                    C::Complete => Some(E::Completed(match out.as_mut() {
                        Some(o) => rt.complete(o).await,
                        None => Ok(()),
                    })),
                    C::RemoveSource => {
                        drop(out.take());
                        self.remove_work(&leg.work);
                        self.remove_source(&service_id, container).await;
                        Some(E::Removed)
                    }
                    C::GiveUp => {
                        if let Some(o) = out.take() {
                            rt.give_up(o).await;
                        }
                        if let Err(e) = rt.destroy(container).await {
                            tracing::warn!(service = %service_id, error = %sbi::error_chain(&e), "cannot remove the source container");
                        }
                        Some(E::GivenUp)
                    }
                    C::Done(outcome) => {
                        self.remove_work(&leg.work);
                        return outcome;
                    }
                };
                // The machine waits for this; the commands after a failed one are void.
                if event.is_some() {
                    break;
                }
            }
            let Some(event) = event else {
                // The machine always ends a batch with what it waits for: never here.
                return Err(MigrationError::OutcomeUnknown {
                    service_id,
                    cause: MoveError::local("move")(RuntimeError::State(
                        "the move waits for nothing".into(),
                    )),
                });
            };
            cmds = machine.handle(Instant::now(), event);
        }
    }

    /// The service left: its source container goes, in the background if so configured.
    async fn remove_source(&self, service_id: &str, container: &R::Container) {
        if !self.config().background_cleanup {
            if let Err(e) = self.runtime.destroy(container).await {
                tracing::warn!(service = %service_id, error = %sbi::error_chain(&e), "cannot remove the source container");
            }
            return;
        }
        let leaving = self.hosting.leaving(service_id);
        let (rt, c, id) = (
            Arc::clone(&self.runtime),
            container.clone(),
            service_id.to_owned(),
        );
        tokio::spawn(async move {
            let began = Instant::now();
            match rt.destroy(&c).await {
                Ok(()) => {
                    tracing::debug!(service = %id, took_us = us(began.elapsed()), "source container removed")
                }
                Err(e) => {
                    tracing::warn!(service = %id, error = %sbi::error_chain(&e), "cannot remove the source container")
                }
            }
            drop(leaving);
        });
    }

    /// Takes in one service over `stream` (the target side of the protocol); `Ok` once the
    /// service runs here.
    pub async fn receive_over<S>(&self, stream: S) -> Result<IncomingReport, MoveError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        use TargetCommand as C;
        use TargetEvent as E;
        let rt = &*self.runtime;
        let mut conn = Conn::new(stream);
        let (mut machine, mut cmds) =
            TargetMove::start(Instant::now(), R::TRANSPORT, self.config().timeouts);
        let mut held: Option<Held<R>> = None;
        loop {
            let mut event = None;
            for cmd in cmds {
                event = match cmd {
                    C::Receive { expect, limit } => {
                        Some(E::Received(conn.recv_within(limit, expect).await))
                    }
                    C::Accept {
                        relocation_id,
                        service,
                        offer,
                    } => Some(E::Accepted(
                        self.accept(relocation_id, service, offer)
                            .await
                            .map(|h| held = Some(h)),
                    )),
                    C::Send(msg) => Some(E::Sent(conn.send(&msg).await)),
                    C::Tell(msg) => {
                        if let Err(e) = conn.send(&msg).await {
                            tracing::debug!(message = msg.kind(), error = %e, "cannot tell the source");
                        }
                        None
                    }
                    C::ReceiveImages { limit } => Some(E::ImagesReceived(match held.as_ref() {
                        Some(h) => within(
                            limit,
                            "images",
                            conn.recv_images(&h.leg.images(), MAX_IMAGE_BYTES),
                        )
                        .await
                        .map(|s| s.image_bytes),
                        None => Err(not_connected()),
                    })),
                    C::Restore => Some(E::Restored(match held.as_mut() {
                        Some(h) => self.restore(h).await,
                        None => Err(RuntimeError::State("nothing accepted".into())),
                    })),
                    C::Arrive => {
                        if let Some(h) = held.as_ref() {
                            self.arrival
                                .report(&h.leg.relocation_id, &h.leg.service.service_id)
                                .await;
                        }
                        Some(E::Arrived)
                    }
                    C::GoLive => Some(E::Live(match held.as_mut() {
                        Some(Held {
                            incoming: Some(i),
                            container,
                            ..
                        }) => rt.go_live(i, container).await,
                        _ => Err(RuntimeError::State("nothing restored".into())),
                    })),
                    C::Abort => {
                        if let Some(h) = held.take() {
                            self.abort(h).await;
                        }
                        None
                    }
                    C::Settle => Some(E::Settled(
                        match held.as_mut().and_then(|h| h.incoming.take()) {
                            Some(i) => rt.settle(i).await,
                            None => None,
                        },
                    )),
                    C::Done(Ok(report)) => {
                        return match held.take() {
                            Some(h) => {
                                self.remove_work(&h.leg.work);
                                self.hosting.install(h.leg.service, h.container);
                                Ok(report)
                            }
                            None => Err(MoveError::local("receive")(RuntimeError::State(
                                "nothing to install".into(),
                            ))),
                        };
                    }
                    C::Done(Err(e)) => {
                        if let Some(h) = held.take() {
                            self.abort(h).await;
                        }
                        return Err(e);
                    }
                };
                if event.is_some() {
                    break;
                }
            }
            let Some(event) = event else {
                if let Some(h) = held.take() {
                    self.abort(h).await;
                }
                return Err(MoveError::local("receive")(RuntimeError::State(
                    "the move waits for nothing".into(),
                )));
            };
            cmds = machine.handle(Instant::now(), event);
        }
    }

    /// `Prepare` came: the service is checked, its id taken, the runtime makes its container.
    async fn accept(
        &self,
        relocation_id: String,
        service: Service,
        offer: Value,
    ) -> Result<Held<R>, MoveError> {
        let id = service.service_id.clone();
        // Back to an edge it just left: its old container must be gone first.
        if !self
            .hosting
            .wait_removed(Some(&id), self.config().timeouts.prepare)
            .await
        {
            tracing::warn!(service = %id, "the old container is still being removed");
        }
        check_incoming(&service, R::RELOCATION_TYPE)?;
        self.hosting.reserve(&id)?;
        let leg = Leg {
            work: self.work("in", &id, &relocation_id),
            relocation_id,
            service,
        };
        let made = async {
            fresh_dir(&leg.work)?;
            if R::TRANSPORT == Transport::Images {
                fresh_dir(&leg.images())?;
            }
            self.runtime.accept(&leg, offer).await
        }
        .await;
        match made {
            Ok((incoming, container)) => Ok(Held {
                leg,
                incoming: Some(incoming),
                container,
            }),
            Err(e) => {
                self.hosting.unreserve(&id);
                self.remove_work(&leg.work);
                Err(MoveError::local("accept")(e))
            }
        }
    }

    /// After a crash of the module (a restart with the same config): makes the service table
    /// what runs at this edge, level-triggered. Every move the crash cut off lost its connection
    /// (the peer aborts or resumes on its own), so:
    ///
    /// * an outgoing move that checkpointed the service and never marked `Commit` (the target
    ///   cannot have it) is resumed here from its images, as a rollback would;
    /// * every container whose service runs is hosted again;
    /// * everything else of this module's is removed: half-made targets, sources a move left
    ///   (`Commit` marked: the service is at the target or nowhere), services that died; and so
    ///   are the moves' work directories.
    ///
    /// The services hosted afterwards.
    pub async fn reconcile(&self) -> Result<Vec<Service>, BackendError> {
        let found = self.runtime.survey().await?;
        let moves = self.interrupted_moves();
        let mut hosted = Vec::new();
        for f in found {
            let id = f.service_id;
            let mut container = f.container;
            let interrupted = moves.iter().find(|(leg, _)| leg.service.service_id == id);
            let service = match (f.running, f.service, interrupted) {
                (true, Some(service), _) => Some(service),
                (false, _, Some((leg, false))) if R::TRANSPORT == Transport::Images => {
                    match self.runtime.resume_interrupted(leg, &mut container).await {
                        Ok(()) => {
                            tracing::warn!(service = %id, relocation = %leg.relocation_id, "resumed the move a crash cut off, at the source");
                            Some(leg.service.clone())
                        }
                        Err(e) => {
                            tracing::error!(service = %id, error = %sbi::error_chain(&e), "cannot resume the move a crash cut off: the service is lost");
                            None
                        }
                    }
                }
                _ => None,
            };
            match service {
                Some(s) => {
                    tracing::info!(service = %id, ip = %s.ipv4_addr, "hosted again after a restart");
                    self.hosting.install(s.clone(), container);
                    hosted.push(s);
                }
                None => {
                    tracing::warn!(service = %id, "removing what a crash left of it");
                    if let Err(e) = self.runtime.destroy(&container).await {
                        tracing::warn!(service = %id, error = %sbi::error_chain(&e), "cannot remove it");
                    }
                }
            }
        }
        for (leg, _) in &moves {
            self.remove_work(&leg.work);
        }
        for dir in self.move_dirs() {
            self.remove_work(&dir);
        }
        hosted.sort_by(|a, b| a.service_id.cmp(&b.service_id));
        Ok(hosted)
    }

    /// The work directories of this module's moves.
    fn move_dirs(&self) -> Vec<std::path::PathBuf> {
        let work_dir = &self.config().work_dir;
        let prefixes = MOVE_SIDES.map(|side| {
            moves_prefix(work_dir, side, R::RELOCATION_TYPE)
                .display()
                .to_string()
        });
        std::fs::read_dir(work_dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| {
                        let p_text = p.display().to_string();
                        p.is_dir() && prefixes.iter().any(|m| p_text.starts_with(m.as_str()))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The outgoing moves a crash cut off after their checkpoint: each move and whether it had
    /// marked `Commit`.
    fn interrupted_moves(&self) -> Vec<(Leg, bool)> {
        self.move_dirs()
            .into_iter()
            .filter_map(|dir| {
                let leg: Leg =
                    serde_json::from_slice(&std::fs::read(dir.join(MOVE_FILE)).ok()?).ok()?;
                let out = dir.display().to_string().starts_with(
                    &*moves_prefix(&self.config().work_dir, "out", R::RELOCATION_TYPE)
                        .to_string_lossy(),
                );
                let checkpointed = leg.images().is_dir()
                    && std::fs::read_dir(leg.images()).is_ok_and(|mut d| d.next().is_some());
                (out && checkpointed && leg.work == dir)
                    .then(|| (leg, dir.join(COMMITTING).exists()))
            })
            .collect()
    }

    /// The armed fault (if any), then the runtime's restore.
    async fn restore(&self, h: &mut Held<R>) -> Result<(), RuntimeError> {
        let Some(incoming) = h.incoming.as_mut() else {
            return Err(RuntimeError::State("nothing to restore".into()));
        };
        if self.fault.take(Fault::CorruptImages)
            && !self
                .runtime
                .inject(&h.leg, incoming, Fault::CorruptImages)
                .await?
        {
            tracing::warn!(fault = %Fault::CorruptImages, "this runtime cannot cause the fault");
        }
        self.runtime
            .restore(&h.leg, incoming, &mut h.container)
            .await
    }

    /// Undoes a receive: the runtime's restore, the container, the reservation, the work.
    async fn abort(&self, h: Held<R>) {
        if let Some(i) = h.incoming {
            self.runtime.abort(i).await;
        }
        if let Err(e) = self.runtime.destroy(&h.container).await {
            tracing::warn!(service = %h.leg.service.service_id, error = %sbi::error_chain(&e), "cannot remove the failed incoming container");
        }
        self.hosting.unreserve(&h.leg.service.service_id);
        self.remove_work(&h.leg.work);
    }
}

/// A move's record in its work directory ([`Leg`]).
const MOVE_FILE: &str = "move.json";
/// Written (durably: the process may die, the host does not) before `Commit` goes out.
const COMMITTING: &str = "committing";
/// The two sides of a move, as its work directory names them.
const MOVE_SIDES: [&str; 2] = ["in", "out"];

/// Writes `value` to `path` whole (a file written and renamed into place).
fn keep(path: &Path, value: &Value) -> Result<(), RuntimeError> {
    let io = |source| RuntimeError::Io {
        path: path.to_owned(),
        source,
    };
    let part = path.with_extension("part");
    std::fs::write(&part, value.to_string()).map_err(io)?;
    std::fs::rename(&part, path).map_err(io)
}

fn not_connected() -> TransferError {
    TransferError::Protocol("not connected".into())
}

/// `step` within `limit`.
async fn within<T>(
    limit: Duration,
    what: &str,
    step: impl Future<Output = Result<T, TransferError>>,
) -> Result<T, TransferError> {
    tokio::time::timeout(limit, step)
        .await
        .map_err(|_| TransferError::Timeout {
            what: what.to_owned(),
            limit_ms: u64::try_from(limit.as_millis()).unwrap_or(u64::MAX),
        })?
}

impl<R: Runtime> Backend for Driver<R> {
    fn relocation_type(&self) -> RelocationType {
        R::RELOCATION_TYPE
    }

    fn set_arrival_hook(&self, hook: ArrivalHook) {
        self.arrival.set(hook);
    }

    fn arm_fault(&self, fault: Fault) -> Result<(), BackendError> {
        self.fault.arm(fault);
        Ok(())
    }

    async fn create(&self, spec: ServiceSpec) -> Result<Service, BackendError> {
        let service = spec.service(R::RELOCATION_TYPE)?;
        if spec.command.is_empty() {
            return Err(BackendError::BadRequest("empty command".into()));
        }
        self.hosting.reserve(&service.service_id)?;
        match self.runtime.start(&spec, &service).await {
            Ok(container) => {
                self.hosting.install(service.clone(), container);
                Ok(service)
            }
            Err(e) => {
                self.hosting.unreserve(&service.service_id);
                Err(e.into())
            }
        }
    }

    async fn remove(&self, service_id: &str) -> Result<(), BackendError> {
        let h = self.hosting.take_for_removal(service_id)?;
        Ok(self.runtime.destroy(&h.container).await?)
    }

    async fn services(&self) -> Result<Vec<Service>, BackendError> {
        Ok(self.hosting.running_services(R::peers).await?)
    }

    async fn migrate_out(
        &self,
        request: &ExecuteRequest,
    ) -> Result<MigrationReport, MigrationError> {
        self.migrate_out_with(request, self.config().strategy).await
    }

    async fn receive(&self, stream: TcpStream) -> Result<IncomingReport, MoveError> {
        self.receive_over(stream).await
    }

    async fn settle(&self) {
        self.hosting.settle().await;
    }

    async fn reconcile(&self) -> Result<Vec<Service>, BackendError> {
        Driver::reconcile(self).await
    }
}

#[cfg(test)]
mod tests;

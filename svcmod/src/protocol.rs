//! The move of one service between two modules — the migration connection's two-phase commit —
//! as two state machines that do no I/O (STYLE.md item 2): [`SourceMove`] at the module the
//! service leaves, [`TargetMove`] at the one it goes to. Each takes events with the current time
//! and returns commands; the driver ([`crate::driver`]) performs them (the runtime's steps, the
//! connection's messages) and feeds the results back. The machines decide everything that can
//! lose a service: what to undo after which failure, and what became of the service. They also
//! keep the move's times and build its report, once.
//!
//! Images transport (CRIU tree, LXC), S = source, T = target:
//!
//! | # | S | T |
//! |---|---|---|
//! | 1 | offer; connect; `Prepare{service, offer}` | accept: check the offer, make the container with its carrier **down**; `Prepared` (or `Refused`: S changes nothing) |
//! | 2 | checkpoint (the service stops) | |
//! | 3 | the images, `Restore` | receive them; restore, gated: every task restored and stopped; `Restored` (or `Failed`) |
//! | 4 | `Commit` | the arrival hook (the SMO switches the path here), go live (carrier up, tasks resume); `Done` |
//! | 5 | the runtime's end (post-copy: the pages), remove the source container | |
//!
//! Pull transport (LXD): 1 as above (the offer names the source's migration operation); 2 only
//! notes where the pull starts; 3 `Restore` → T's runtime pulls the service, which then runs at
//! T: `Restored`; T attaches its port, calls the arrival hook, answers `Done` (no `Commit`).
//!
//! **The outcome rule (source).** Before the checkpoint nothing stopped: a failure is
//! [`MigrationError::NotStarted`] (the offer is withdrawn). A checkpoint that fails leaves the
//! service running (not started), stopped (rolled back) or gone ([`MigrationError::Lost`]).
//! From a stopped service on, any failure before `Commit` was delivered — images, `Restore`, no
//! or a wrong answer to it, a `Failed` answer, `Commit` not sent, a `Failed` answer to `Commit`
//! — closes the connection (T, whose copy never went live, aborts) and resumes the service at
//! the source ([`MigrationError::RolledBack`], or [`MigrationError::Lost`] when that fails too).
//! Only when `Commit` was delivered (pull: `Restored` came) and `Done` did not come is the
//! outcome unknown ([`MigrationError::OutcomeUnknown`]): the service runs at the target or
//! nowhere, and the source gives its copy up.
//!
//! **The target** undoes everything it made ([`TargetCommand::Abort`]) on any failure before
//! `Done`, *before* it answers `Failed`, so the source — which resumes at once — never meets a
//! live duplicate, and a retry finds the edge clean.
//!
//! **A crash** of either module closes the connection, which the other side takes as any lost
//! connection. The source marks `Commit` durably before sending it
//! ([`SourceCommand::MarkCommitting`]): a restarted source module resumes a move it left after
//! the checkpoint only when that mark is absent (the target cannot have gone live without
//! `Commit`); see [`crate::driver::Driver::reconcile`].

use crate::error::{MigrationError, MoveError, RuntimeError};
use crate::runtime::{CheckpointError, Checkpointed, Left, Resumed, Timeouts, Transport};
use crate::service::{IncomingReport, MigrationReport, Strategy};
use crate::transfer::{Message, TransferError};
use model::smo::Service;
use model::timeline::{us, Stopwatch};
use serde_json::Value;
use std::time::Duration;
use tokio::time::Instant;

/// Everything a source move starts from.
#[derive(Debug, Clone)]
pub struct SourceStart {
    pub relocation_id: String,
    pub service: Service,
    pub strategy: Strategy,
    pub transport: Transport,
    pub timeouts: Timeouts,
    /// Whether the source container is removed in the background (the report's step name).
    pub background_cleanup: bool,
}

/// What the source asks its driver to do. Commands run in order; the last one of a batch is
/// the one whose result the machine waits for (or [`SourceCommand::Done`]).
#[derive(Debug)]
pub enum SourceCommand {
    /// The runtime makes the offer (and checks the service can move). → [`SourceEvent::Offered`]
    Offer,
    /// Connect to the target module. → [`SourceEvent::Connected`]
    Connect,
    /// → [`SourceEvent::Sent`]
    Send(Message),
    /// → [`SourceEvent::Received`]
    Receive {
        expect: &'static str,
        limit: Duration,
    },
    /// The runtime stops the service (images: into the move's image directory).
    /// → [`SourceEvent::Checkpointed`]
    Checkpoint,
    /// → [`SourceEvent::ImagesSent`]
    SendImages { limit: Duration },
    /// Pull: the runtime counts what the pull moved. → [`SourceEvent::Measured`]
    Measure,
    /// Note durably, before `Commit` goes out, that the target may go live: a module restarted
    /// after a crash resumes an interrupted move at the source only without this mark. No
    /// result.
    MarkCommitting,
    /// Close the connection: the target aborts what it made. No result.
    Close,
    /// The offer is void, nothing stopped (the runtime undoes it). No result.
    Withdraw,
    /// The runtime brings the service back here. → [`SourceEvent::Resumed`]
    ResumeAtSource,
    /// The runtime's end of a move that worked (post-copy: the pages). → [`SourceEvent::Completed`]
    Complete,
    /// The service left: remove the source container (in the background if so configured).
    /// → [`SourceEvent::Removed`]
    RemoveSource,
    /// The service left or may have: the runtime drops the move, the source container goes.
    /// → [`SourceEvent::GivenUp`]
    GiveUp,
    /// The move ended.
    Done(Result<MigrationReport, MigrationError>),
}

/// Results the source's driver feeds back, one per command that awaits one.
#[derive(Debug)]
pub enum SourceEvent {
    Offered(Result<Value, RuntimeError>),
    Connected(Result<(), TransferError>),
    /// `Ok`: the bytes sent on the connection so far.
    Sent(Result<u64, TransferError>),
    Received(Result<Message, TransferError>),
    Checkpointed(Result<Checkpointed, CheckpointError>),
    /// `Ok`: the bytes sent on the connection so far.
    ImagesSent(Result<u64, TransferError>),
    Measured(Option<u64>),
    Resumed(Result<Resumed, RuntimeError>),
    Completed(Result<(), RuntimeError>),
    Removed,
    GivenUp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SourceStage {
    Offer,
    Connect,
    PrepareSent,
    Prepared,
    Checkpoint,
    Images,
    RestoreSent,
    Restored,
    Measure,
    CommitSent,
    Done,
    Complete,
    Remove,
    Resume,
    GiveUp,
    Ended,
}

/// The source side of one move.
#[derive(Debug)]
pub struct SourceMove {
    start: SourceStart,
    stage: SourceStage,
    sw: Stopwatch,
    /// When the step now running began.
    began: Instant,
    /// When the service stopped.
    frozen: Option<Instant>,
    offer: Option<Value>,
    offered: bool,
    connected: bool,
    report: MigrationReport,
    /// The failure being rolled back or given up on.
    cause: Option<MoveError>,
    /// Resuming at the source failed too.
    fallback: Option<RuntimeError>,
}

impl SourceMove {
    /// Starts the move at `now`.
    pub fn start(now: Instant, s: SourceStart) -> (Self, Vec<SourceCommand>) {
        let report = MigrationReport {
            relocation_id: s.relocation_id.clone(),
            service: s.service.clone(),
            strategy: s.strategy,
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
        let m = Self {
            start: s,
            stage: SourceStage::Offer,
            sw: Stopwatch::start_at(now),
            began: now,
            frozen: None,
            offer: None,
            offered: false,
            connected: false,
            report,
            cause: None,
            fallback: None,
        };
        (m, vec![SourceCommand::Offer])
    }

    /// Whether the move ended.
    pub fn is_done(&self) -> bool {
        self.stage == SourceStage::Ended
    }

    fn pull(&self) -> bool {
        self.start.transport == Transport::Pull
    }

    /// Feeds one result in.
    pub fn handle(&mut self, now: Instant, event: SourceEvent) -> Vec<SourceCommand> {
        use SourceCommand as C;
        use SourceEvent as E;
        use SourceStage as S;
        let t = self.start.timeouts;
        match (self.stage, event) {
            (S::Offer, E::Offered(Ok(offer))) => {
                if self.pull() {
                    self.sw
                        .record_at("source migration operation", self.began, now);
                }
                self.offered = true;
                self.offer = Some(offer);
                self.began = now;
                self.stage = S::Connect;
                vec![C::Connect]
            }
            (S::Offer, E::Offered(Err(e))) => self.not_started(MoveError::local("offer")(e)),
            (S::Connect, E::Connected(Ok(()))) => {
                self.connected = true;
                self.stage = S::PrepareSent;
                vec![C::Send(Message::Prepare {
                    relocation_id: self.start.relocation_id.clone(),
                    service: self.start.service.clone(),
                    offer: self.offer.take().unwrap_or_default(),
                })]
            }
            (S::Connect, E::Connected(Err(e))) | (S::PrepareSent, E::Sent(Err(e))) => {
                self.not_started(e.into())
            }
            (S::PrepareSent, E::Sent(Ok(_))) => {
                self.stage = S::Prepared;
                vec![C::Receive {
                    expect: "answer to prepare",
                    limit: t.prepare,
                }]
            }
            (S::Prepared, E::Received(answer)) => match answer {
                Ok(Message::Prepared { .. }) => {
                    self.report.prepare_us = self.sw.record_at("prepare target", self.began, now);
                    self.began = now;
                    self.stage = S::Checkpoint;
                    vec![C::Checkpoint]
                }
                Ok(Message::Refused { cause }) => self.not_started(MoveError::Refused(cause)),
                Ok(m) => self.not_started(unexpected("prepared", &m)),
                Err(e) => self.not_started(e.into()),
            },
            (S::Checkpoint, E::Checkpointed(Ok(c))) => {
                self.report.image_bytes = c.image_bytes;
                if self.pull() {
                    self.frozen = Some(now);
                    self.began = now;
                    self.stage = S::RestoreSent;
                    return vec![C::Send(Message::Restore)];
                }
                let name = match self.start.strategy {
                    Strategy::StopAndCopy => "dump",
                    Strategy::LazyPages => "dump (without lazy pages)",
                };
                self.report.dump_us = self.sw.record_at(name, self.began, now);
                self.frozen = Some(self.began);
                self.began = now;
                self.stage = S::Images;
                vec![C::SendImages { limit: t.transfer }]
            }
            (S::Checkpoint, E::Checkpointed(Err(CheckpointError { left, source }))) => {
                let cause = MoveError::local("checkpoint")(source);
                match left {
                    Left::Running => self.not_started(cause),
                    Left::Stopped => {
                        self.frozen = Some(self.began);
                        self.roll_back(now, cause)
                    }
                    Left::Gone => self.give_up(
                        cause,
                        Some(RuntimeError::State(
                            "the service did not survive its failed checkpoint".into(),
                        )),
                    ),
                }
            }
            (S::Images, E::ImagesSent(Ok(sent))) => {
                self.report.bytes_moved = sent;
                self.stage = S::RestoreSent;
                vec![C::Send(Message::Restore)]
            }
            (S::Images, E::ImagesSent(Err(e))) | (S::RestoreSent, E::Sent(Err(e))) => {
                self.roll_back(now, e.into())
            }
            (S::RestoreSent, E::Sent(Ok(sent))) => {
                if !self.pull() {
                    self.report.transfer_us = self.sw.record_at("transfer images", self.began, now);
                    self.report.bytes_moved = sent;
                }
                self.began = now;
                self.stage = S::Restored;
                vec![C::Receive {
                    expect: "answer to restore",
                    limit: t.restore + t.transfer,
                }]
            }
            (S::Restored, E::Received(answer)) => match answer {
                Ok(Message::Restored { restore_us }) => {
                    self.report.restore_us = restore_us;
                    let name = if self.pull() {
                        "LXD move (pull at target)"
                    } else {
                        "restore at target"
                    };
                    self.sw.record_took_at(name, restore_us, now);
                    if self.pull() {
                        self.stage = S::Measure;
                        vec![C::Measure]
                    } else {
                        self.stage = S::CommitSent;
                        vec![C::MarkCommitting, C::Send(Message::Commit)]
                    }
                }
                Ok(Message::Failed { cause }) => self.roll_back(
                    now,
                    MoveError::TargetFailed {
                        step: "restore",
                        cause,
                    },
                ),
                Ok(m) => self.roll_back(now, unexpected("restored", &m)),
                Err(e) => self.roll_back(now, e.into()),
            },
            (S::Measure, E::Measured(moved)) => {
                if let Some(b) = moved {
                    self.report.bytes_moved = b;
                }
                self.stage = S::Done;
                vec![C::Receive {
                    expect: "done",
                    limit: t.commit,
                }]
            }
            (S::CommitSent, E::Sent(Ok(sent))) => {
                self.report.bytes_moved = sent;
                self.stage = S::Done;
                vec![C::Receive {
                    expect: "answer to commit",
                    limit: t.commit,
                }]
            }
            // Not sent: the target cannot have it (a write fails only on a broken connection).
            (S::CommitSent, E::Sent(Err(e))) => self.roll_back(now, e.into()),
            (S::Done, E::Received(answer)) => match answer {
                Ok(Message::Done { resume_us }) => {
                    self.report.resume_us = resume_us;
                    let name = if self.pull() {
                        "attach at target"
                    } else {
                        "resume at target"
                    };
                    self.sw.record_took_at(name, resume_us, now);
                    self.report.frozen_us = self.frozen_us(now);
                    self.began = now;
                    self.stage = S::Complete;
                    self.connected = false;
                    vec![C::Close, C::Complete]
                }
                // The target holds nothing (it aborted before answering): resuming here is safe.
                Ok(Message::Failed { cause }) if !self.pull() => self.roll_back(
                    now,
                    MoveError::TargetFailed {
                        step: "resume",
                        cause,
                    },
                ),
                Ok(m) => self.give_up(unexpected("done", &m), None),
                Err(e) => self.give_up(e.into(), None),
            },
            (S::Complete, E::Completed(done)) => match done {
                Ok(()) => {
                    if self.start.strategy == Strategy::LazyPages {
                        self.report.pages_us =
                            Some(self.sw.record_at("serve lazy pages", self.began, now));
                    }
                    self.began = now;
                    self.stage = S::Remove;
                    vec![C::RemoveSource]
                }
                Err(e) => self.give_up(MoveError::local("complete")(e), None),
            },
            (S::Remove, E::Removed) => {
                let name = if !self.start.background_cleanup {
                    "remove source"
                } else if self.pull() {
                    "remove source (in the background)"
                } else {
                    "remove source images"
                };
                self.sw.record_at(name, self.began, now);
                self.stage = S::Ended;
                vec![C::Done(Ok(self.finish_report(now)))]
            }
            (S::Resume, E::Resumed(resumed)) => {
                let cause = self.take_cause();
                match resumed {
                    Ok(Resumed::Restored) => {
                        let name = if self.pull() {
                            "recover at source"
                        } else {
                            "restore at source"
                        };
                        self.sw.record_at(name, self.began, now);
                        self.report.frozen_us = self.frozen_us(now);
                        self.stage = S::Ended;
                        vec![C::Done(Err(MigrationError::RolledBack {
                            service_id: self.start.service.service_id.clone(),
                            cause,
                            report: Box::new(self.finish_report(now)),
                        }))]
                    }
                    Ok(Resumed::Untouched) => {
                        self.stage = S::Ended;
                        vec![C::Done(Err(MigrationError::NotStarted {
                            service_id: self.start.service.service_id.clone(),
                            cause,
                        }))]
                    }
                    Err(fallback) => self.give_up(cause, Some(fallback)),
                }
            }
            (S::GiveUp, E::GivenUp) => {
                let service_id = self.start.service.service_id.clone();
                let cause = self.take_cause();
                self.stage = S::Ended;
                vec![C::Done(Err(match self.fallback.take() {
                    Some(fallback) => MigrationError::Lost {
                        service_id,
                        cause,
                        fallback: Box::new(fallback),
                    },
                    None => MigrationError::OutcomeUnknown { service_id, cause },
                }))]
            }
            // An event nobody waits for (a driver bug): nothing to do.
            _ => Vec::new(),
        }
    }

    fn frozen_us(&self, now: Instant) -> u64 {
        self.frozen
            .map_or(0, |f| us(now.saturating_duration_since(f)))
    }

    fn finish_report(&mut self, now: Instant) -> MigrationReport {
        self.report.total_us = self.sw.elapsed_us_at(now);
        self.report.steps = self.sw.steps().to_vec();
        self.report.clone()
    }

    fn take_cause(&mut self) -> MoveError {
        self.cause.take().unwrap_or_else(|| {
            MoveError::local("move")(RuntimeError::State("no cause recorded".into()))
        })
    }

    /// Nothing stopped: close, withdraw the offer, done.
    fn not_started(&mut self, cause: MoveError) -> Vec<SourceCommand> {
        let mut cmds = self.close();
        if self.offered {
            cmds.push(SourceCommand::Withdraw);
        }
        self.stage = SourceStage::Ended;
        cmds.push(SourceCommand::Done(Err(MigrationError::NotStarted {
            service_id: self.start.service.service_id.clone(),
            cause,
        })));
        cmds
    }

    /// The service stopped and the move failed before the target went live: close (the target
    /// aborts), then resume here.
    fn roll_back(&mut self, now: Instant, cause: MoveError) -> Vec<SourceCommand> {
        self.cause = Some(cause);
        self.began = now;
        self.stage = SourceStage::Resume;
        let mut cmds = self.close();
        cmds.push(SourceCommand::ResumeAtSource);
        cmds
    }

    /// The service is gone from here: lost (`fallback`: why it could not be resumed) or at the
    /// target or nowhere (no fallback).
    fn give_up(&mut self, cause: MoveError, fallback: Option<RuntimeError>) -> Vec<SourceCommand> {
        self.cause = Some(cause);
        self.fallback = fallback;
        self.stage = SourceStage::GiveUp;
        let mut cmds = self.close();
        cmds.push(SourceCommand::GiveUp);
        cmds
    }

    fn close(&mut self) -> Vec<SourceCommand> {
        if std::mem::take(&mut self.connected) {
            vec![SourceCommand::Close]
        } else {
            Vec::new()
        }
    }
}

fn unexpected(expected: &'static str, got: &Message) -> MoveError {
    MoveError::Unexpected {
        expected,
        got: got.kind(),
    }
}

/// What the target asks its driver to do. Commands run in order; the last one of a batch is
/// the one whose result the machine waits for (or [`TargetCommand::Done`]).
#[derive(Debug)]
pub enum TargetCommand {
    /// → [`TargetEvent::Received`]
    Receive {
        expect: &'static str,
        limit: Duration,
    },
    /// The module checks the service (and takes its id), the runtime the offer, and makes the
    /// container. → [`TargetEvent::Accepted`]
    Accept {
        relocation_id: String,
        service: Service,
        offer: Value,
    },
    /// → [`TargetEvent::Sent`]
    Send(Message),
    /// Best effort (the answer matters no more to this side). No result.
    Tell(Message),
    /// → [`TargetEvent::ImagesReceived`]
    ReceiveImages { limit: Duration },
    /// An armed fault first, then the runtime's restore. → [`TargetEvent::Restored`]
    Restore,
    /// The arrival hook (the SMO switches the path here). → [`TargetEvent::Arrived`]
    Arrive,
    /// → [`TargetEvent::Live`]
    GoLive,
    /// Undo the receive: the runtime's restore, then the container, the service's id. No result.
    Abort,
    /// The runtime's part after `Done` (post-copy: the pages). → [`TargetEvent::Settled`]
    Settle,
    /// The receive ended (`Ok`: the service runs here; the module enters it).
    Done(Result<IncomingReport, MoveError>),
}

/// Results the target's driver feeds back, one per command that awaits one.
#[derive(Debug)]
pub enum TargetEvent {
    Received(Result<Message, TransferError>),
    Accepted(Result<(), MoveError>),
    Sent(Result<(), TransferError>),
    /// `Ok`: the bytes of image files received.
    ImagesReceived(Result<u64, TransferError>),
    Restored(Result<(), RuntimeError>),
    Arrived,
    Live(Result<(), RuntimeError>),
    Settled(Option<Duration>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TargetStage {
    Prepare,
    Accept,
    PreparedSent,
    Images,
    Restore,
    Restoring,
    RestoredSent,
    Commit,
    Arrive,
    Live,
    Settle,
    Ended,
}

/// The target side of one move.
#[derive(Debug)]
pub struct TargetMove {
    transport: Transport,
    timeouts: Timeouts,
    stage: TargetStage,
    began: Instant,
    /// The container exists (an [`TargetCommand::Abort`] has something to undo).
    accepted: bool,
    relocation_id: String,
    service: Option<Service>,
    prepare_us: u64,
    receive_us: u64,
    restore_us: u64,
    resume_us: u64,
    image_bytes: u64,
}

impl TargetMove {
    /// Waits for a source's `Prepare` from `now`.
    pub fn start(
        now: Instant,
        transport: Transport,
        timeouts: Timeouts,
    ) -> (Self, Vec<TargetCommand>) {
        let m = Self {
            transport,
            timeouts,
            stage: TargetStage::Prepare,
            began: now,
            accepted: false,
            relocation_id: String::new(),
            service: None,
            prepare_us: 0,
            receive_us: 0,
            restore_us: 0,
            resume_us: 0,
            image_bytes: 0,
        };
        let cmds = vec![TargetCommand::Receive {
            expect: "prepare",
            limit: timeouts.prepare,
        }];
        (m, cmds)
    }

    /// Whether the receive ended.
    pub fn is_done(&self) -> bool {
        self.stage == TargetStage::Ended
    }

    fn pull(&self) -> bool {
        self.transport == Transport::Pull
    }

    /// Feeds one result in.
    pub fn handle(&mut self, now: Instant, event: TargetEvent) -> Vec<TargetCommand> {
        use TargetCommand as C;
        use TargetEvent as E;
        use TargetStage as S;
        let t = self.timeouts;
        let since = |began: Instant| us(now.saturating_duration_since(began));
        match (self.stage, event) {
            (S::Prepare, E::Received(first)) => match first {
                Ok(Message::Prepare {
                    relocation_id,
                    service,
                    offer,
                }) => {
                    self.relocation_id = relocation_id.clone();
                    self.service = Some(service.clone());
                    self.began = now;
                    self.stage = S::Accept;
                    vec![C::Accept {
                        relocation_id,
                        service,
                        offer,
                    }]
                }
                Ok(m) => self.fail(unexpected("prepare", &m)),
                Err(e) => self.fail(e.into()),
            },
            (S::Accept, E::Accepted(Ok(()))) => {
                self.accepted = true;
                self.prepare_us = since(self.began);
                self.stage = S::PreparedSent;
                vec![C::Send(Message::Prepared {
                    took_us: self.prepare_us,
                })]
            }
            (S::Accept, E::Accepted(Err(e))) => {
                self.stage = S::Ended;
                vec![
                    C::Tell(Message::Refused {
                        cause: sbi::error_chain(&e),
                    }),
                    C::Done(Err(e)),
                ]
            }
            (S::PreparedSent, E::Sent(Ok(()))) => {
                self.began = now;
                if self.pull() {
                    self.stage = S::Restore;
                    vec![C::Receive {
                        expect: "restore",
                        limit: t.prepare,
                    }]
                } else {
                    self.stage = S::Images;
                    // The source checkpoints first: allow for it before the first image byte.
                    vec![C::ReceiveImages {
                        limit: t.dump + t.transfer,
                    }]
                }
            }
            (S::Images, E::ImagesReceived(Ok(bytes))) => {
                self.receive_us = since(self.began);
                self.image_bytes = bytes;
                self.stage = S::Restore;
                vec![C::Receive {
                    expect: "restore",
                    limit: t.transfer,
                }]
            }
            (S::Restore, E::Received(Ok(Message::Restore))) => {
                self.began = now;
                self.stage = S::Restoring;
                vec![C::Restore]
            }
            (S::Restoring, E::Restored(Ok(()))) => {
                self.restore_us = since(self.began);
                self.stage = S::RestoredSent;
                vec![C::Send(Message::Restored {
                    restore_us: self.restore_us,
                })]
            }
            (S::Restoring, E::Restored(Err(e))) => {
                self.fail_telling(MoveError::local("restore")(e))
            }
            (S::RestoredSent, E::Sent(Ok(()))) => {
                self.began = now;
                if self.pull() {
                    self.stage = S::Live;
                    vec![C::GoLive]
                } else {
                    self.stage = S::Commit;
                    vec![C::Receive {
                        expect: "commit",
                        limit: t.commit,
                    }]
                }
            }
            (S::Commit, E::Received(Ok(Message::Commit))) => {
                // The source gave the service up: the SMO switches the path here before it resumes.
                self.began = now;
                self.stage = S::Arrive;
                vec![C::Arrive]
            }
            (S::Arrive, E::Arrived) => {
                if self.pull() {
                    self.live(now)
                } else {
                    self.stage = S::Live;
                    vec![C::GoLive]
                }
            }
            (S::Live, E::Live(result)) => match (result, self.pull()) {
                (Ok(()), false) => self.live(now),
                (Err(e), false) => self.fail_telling(MoveError::local("resume")(e)),
                // Pulled: the service runs here whatever its port does; the SMO's path comes next.
                (result, true) => {
                    if let Err(e) = result {
                        tracing::warn!(error = %sbi::error_chain(&e), "the moved service's port is not attached");
                    }
                    self.stage = S::Arrive;
                    vec![C::Arrive]
                }
            },
            (S::Settle, E::Settled(pages)) => {
                self.stage = S::Ended;
                // Set by `Prepare`, the only way here.
                let Some(service) = self.service.take() else {
                    return vec![C::Done(Err(MoveError::Unexpected {
                        expected: "prepare",
                        got: "nothing",
                    }))];
                };
                let report = IncomingReport {
                    relocation_id: std::mem::take(&mut self.relocation_id),
                    service,
                    prepare_us: self.prepare_us,
                    receive_us: self.receive_us,
                    restore_us: self.restore_us,
                    resume_us: self.resume_us,
                    pages_us: pages.map(us),
                    image_bytes: self.image_bytes,
                };
                vec![C::Done(Ok(report))]
            }
            (S::Images, E::ImagesReceived(Err(e)))
            | (S::PreparedSent | S::RestoredSent, E::Sent(Err(e)))
            | (S::Restore | S::Commit, E::Received(Err(e))) => self.fail(e.into()),
            (S::Restore, E::Received(Ok(m))) => self.fail(unexpected("restore", &m)),
            (S::Commit, E::Received(Ok(m))) => self.fail(unexpected("commit", &m)),
            // An event nobody waits for (a driver bug): nothing to do.
            _ => Vec::new(),
        }
    }

    /// The service runs here: tell the source, then the runtime's own end.
    fn live(&mut self, now: Instant) -> Vec<TargetCommand> {
        self.resume_us = us(now.saturating_duration_since(self.began));
        self.stage = TargetStage::Settle;
        vec![
            TargetCommand::Tell(Message::Done {
                resume_us: self.resume_us,
            }),
            TargetCommand::Settle,
        ]
    }

    /// Undo what was made (if anything); the source finds out from the closed connection.
    fn fail(&mut self, cause: MoveError) -> Vec<TargetCommand> {
        self.stage = TargetStage::Ended;
        let mut cmds = Vec::new();
        if std::mem::take(&mut self.accepted) {
            cmds.push(TargetCommand::Abort);
        }
        cmds.push(TargetCommand::Done(Err(cause)));
        cmds
    }

    /// Undo what was made, *then* say `Failed` (with the runtime's own words: the source names
    /// the step).
    fn fail_telling(&mut self, cause: MoveError) -> Vec<TargetCommand> {
        let told = match &cause {
            MoveError::Local { source, .. } => sbi::error_chain(&**source),
            other => sbi::error_chain(other),
        };
        let mut cmds = self.fail(cause);
        cmds.insert(
            cmds.len() - 1,
            TargetCommand::Tell(Message::Failed { cause: told }),
        );
        cmds
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake;
    use model::smo::RelocationType;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    fn start(
        transport: Transport,
        strategy: Strategy,
    ) -> (SourceMove, Vec<SourceCommand>, Instant) {
        let t0 = Instant::now();
        let (m, cmds) = SourceMove::start(
            t0,
            SourceStart {
                relocation_id: "r".into(),
                service: fake::service("p50", RelocationType::Criu),
                strategy,
                transport,
                timeouts: Timeouts::default(),
                background_cleanup: false,
            },
        );
        (m, cmds, t0)
    }

    /// A command, shortly (a transcript's line).
    fn source_line(c: &SourceCommand) -> String {
        use SourceCommand as C;
        match c {
            C::Send(m) => format!("send {}", m.kind()),
            C::Receive { expect, .. } => format!("receive {expect}"),
            C::Done(Ok(_)) => "done: moved".into(),
            C::Done(Err(e)) => format!(
                "done: {}",
                match e {
                    MigrationError::NotStarted { .. } => "not started",
                    MigrationError::RolledBack { .. } => "rolled back",
                    MigrationError::Lost { .. } => "lost",
                    MigrationError::OutcomeUnknown { .. } => "unknown",
                }
            ),
            other => format!("{other:?}").to_lowercase(),
        }
    }

    fn lines(cmds: &[SourceCommand]) -> Vec<String> {
        cmds.iter().map(source_line).collect()
    }

    fn prepared() -> SourceEvent {
        SourceEvent::Received(Ok(Message::Prepared { took_us: 1 }))
    }

    fn lost_connection() -> TransferError {
        TransferError::Io {
            what: "reading a message".into(),
            source: std::io::ErrorKind::UnexpectedEof.into(),
        }
    }

    /// The images transport's happy path, event by event, up to the point `upto` events were
    /// fed; the machine and the last commands.
    fn images_upto(upto: usize) -> (SourceMove, Vec<SourceCommand>, Instant) {
        let (mut m, mut cmds, t0) = start(Transport::Images, Strategy::StopAndCopy);
        let happy = [
            SourceEvent::Offered(Ok(Value::Null)),
            SourceEvent::Connected(Ok(())),
            SourceEvent::Sent(Ok(10)),
            prepared(),
            SourceEvent::Checkpointed(Ok(Checkpointed { image_bytes: 100 })),
            SourceEvent::ImagesSent(Ok(130)),
            SourceEvent::Sent(Ok(140)),
            SourceEvent::Received(Ok(Message::Restored { restore_us: 7 })),
            SourceEvent::Sent(Ok(150)),
            SourceEvent::Received(Ok(Message::Done { resume_us: 3 })),
            SourceEvent::Completed(Ok(())),
            SourceEvent::Removed,
        ];
        for (i, e) in happy.into_iter().take(upto).enumerate() {
            cmds = m.handle(t0 + MS(10 * (i as u64 + 1)), e);
        }
        (m, cmds, t0)
    }

    #[test]
    fn the_source_moves_images_in_this_order_and_reports_once() {
        let (_, first, _) = images_upto(0);
        let want = [
            vec!["offer"],
            vec!["connect"],
            vec!["send prepare"],
            vec!["receive answer to prepare"],
            vec!["checkpoint"],
            vec!["sendimages { limit: 30s }"],
            vec!["send restore"],
            vec!["receive answer to restore"],
            vec!["markcommitting", "send commit"],
            vec!["receive answer to commit"],
            vec!["close", "complete"],
            vec!["removesource"],
            vec!["done: moved"],
        ];
        assert_eq!(lines(&first), want[0]);
        for (n, want) in want.iter().enumerate().skip(1) {
            let (_, cmds, _) = images_upto(n);
            assert_eq!(lines(&cmds), *want, "after {n} events");
        }
        let (m, mut cmds, _) = images_upto(12);
        assert!(m.is_done());
        let Some(SourceCommand::Done(Ok(r))) = cmds.pop() else {
            panic!("no report");
        };
        // Events every 10 ms: connect to Prepared 10 → 40, the dump 40 → 50, images and
        // Restore 50 → 70; the target's own times are its own.
        assert_eq!(
            (r.prepare_us, r.dump_us, r.transfer_us),
            (30_000, 10_000, 20_000)
        );
        assert_eq!(
            (r.restore_us, r.resume_us, r.image_bytes, r.bytes_moved),
            (7, 3, 100, 150)
        );
        assert_eq!(r.frozen_us, 60_000, "dump start (40 ms) to Done (100 ms)");
        assert_eq!(r.total_us, 120_000);
    }

    #[test]
    fn every_source_failure_ends_where_the_service_is() {
        use SourceEvent as E;
        let failed = || Message::Failed { cause: "no".into() };
        let runtime = || RuntimeError::State("no".into());
        let ckpt = |left| {
            E::Checkpointed(Err(CheckpointError {
                left,
                source: RuntimeError::State("no".into()),
            }))
        };
        let lost = || E::Received(Err(lost_connection()));
        let answer = |m| E::Received(Ok(m));
        const UNTOUCHED: &[&str] = &["close", "withdraw", "done: not started"];
        const ROLL_BACK: &[&str] = &["close", "resumeatsource"];
        const GIVE_UP: &[&str] = &["close", "giveup"];
        // (events of the happy path first, the failing event, its commands)
        let cases: Vec<(usize, SourceEvent, &[&str])> = vec![
            (0, E::Offered(Err(runtime())), &["done: not started"]),
            (
                1,
                E::Connected(Err(lost_connection())),
                &["withdraw", "done: not started"],
            ),
            (2, E::Sent(Err(lost_connection())), UNTOUCHED),
            (
                3,
                answer(Message::Refused { cause: "no".into() }),
                UNTOUCHED,
            ),
            (3, answer(Message::Commit), UNTOUCHED),
            (3, lost(), UNTOUCHED),
            (4, ckpt(Left::Running), UNTOUCHED),
            (4, ckpt(Left::Stopped), ROLL_BACK),
            (4, ckpt(Left::Gone), GIVE_UP),
            (5, E::ImagesSent(Err(lost_connection())), ROLL_BACK),
            (6, E::Sent(Err(lost_connection())), ROLL_BACK),
            (7, answer(failed()), ROLL_BACK),
            (7, answer(Message::Done { resume_us: 1 }), ROLL_BACK),
            (7, lost(), ROLL_BACK),
            // Commit not sent: the target cannot have it.
            (8, E::Sent(Err(lost_connection())), ROLL_BACK),
            // A Failed answer to Commit: the target went first, resuming here is safe.
            (9, answer(failed()), ROLL_BACK),
            // Commit delivered, no Done: the window.
            (9, lost(), GIVE_UP),
            (9, answer(Message::Prepared { took_us: 1 }), GIVE_UP),
            (10, E::Completed(Err(runtime())), &["giveup"]),
        ];
        for (n, event, want) in cases {
            let (mut m, _, t0) = images_upto(n);
            let what = format!("after {n} events: {event:?}");
            let cmds = m.handle(t0 + MS(1000), event);
            assert_eq!(lines(&cmds), want, "{what}");
            // The end: what the follow-up result makes of it.
            let last = match cmds.last() {
                Some(SourceCommand::ResumeAtSource) => {
                    let end = m.handle(t0 + MS(1100), E::Resumed(Ok(Resumed::Restored)));
                    assert_eq!(lines(&end), ["done: rolled back"], "{what}");
                    let Some(SourceCommand::Done(Err(MigrationError::RolledBack {
                        report, ..
                    }))) = end.last()
                    else {
                        panic!("{what}");
                    };
                    assert_eq!(
                        report.steps.last().map(|s| s.step.as_str()),
                        Some("restore at source")
                    );
                    assert!(report.frozen_us > 0, "{what}");
                    "rolled back"
                }
                Some(SourceCommand::GiveUp) => {
                    let end = m.handle(t0 + MS(1100), E::GivenUp);
                    let want = if matches!(n, 4) {
                        "done: lost"
                    } else {
                        "done: unknown"
                    };
                    assert_eq!(lines(&end), [want], "{what}");
                    want
                }
                _ => "done",
            };
            assert!(m.is_done(), "{what}: {last}");
        }
    }

    #[test]
    fn a_failed_resume_at_the_source_is_lost_and_an_untouched_service_did_not_move() {
        let (mut m, _, t0) = images_upto(7);
        let cmds = m.handle(t0, SourceEvent::Received(Err(lost_connection())));
        assert_eq!(lines(&cmds), ["close", "resumeatsource"]);
        let cmds = m.handle(
            t0,
            SourceEvent::Resumed(Err(RuntimeError::State("no".into()))),
        );
        assert_eq!(lines(&cmds), ["giveup"], "closed once, not twice");
        let cmds = m.handle(t0, SourceEvent::GivenUp);
        let Some(SourceCommand::Done(Err(MigrationError::Lost {
            cause, fallback, ..
        }))) = cmds.last()
        else {
            panic!("{cmds:?}");
        };
        assert!(matches!(cause, MoveError::Connection(_)));
        assert_eq!(fallback.to_string(), "no");
        // Pull: the target failed before the dump; LXD never stopped the service.
        let (mut m, _, t0) = start(Transport::Pull, Strategy::StopAndCopy);
        for e in [
            SourceEvent::Offered(Ok(Value::Null)),
            SourceEvent::Connected(Ok(())),
            SourceEvent::Sent(Ok(1)),
            prepared(),
            SourceEvent::Checkpointed(Ok(Checkpointed::default())),
            SourceEvent::Sent(Ok(2)),
        ] {
            m.handle(t0, e);
        }
        let cmds = m.handle(
            t0,
            SourceEvent::Received(Ok(Message::Failed {
                cause: "pull".into(),
            })),
        );
        assert_eq!(lines(&cmds), ["close", "resumeatsource"]);
        let cmds = m.handle(t0, SourceEvent::Resumed(Ok(Resumed::Untouched)));
        assert!(
            matches!(
                cmds.last(),
                Some(SourceCommand::Done(Err(MigrationError::NotStarted {
                    cause: MoveError::TargetFailed {
                        step: "restore",
                        ..
                    },
                    ..
                })))
            ),
            "{cmds:?}"
        );
    }

    #[test]
    fn a_pulled_move_has_no_images_and_no_commit() {
        let (mut m, first, t0) = start(Transport::Pull, Strategy::StopAndCopy);
        let mut transcript = vec![lines(&first)];
        for (i, e) in [
            SourceEvent::Offered(Ok(Value::Null)),
            SourceEvent::Connected(Ok(())),
            SourceEvent::Sent(Ok(1)),
            prepared(),
            SourceEvent::Checkpointed(Ok(Checkpointed::default())),
            SourceEvent::Sent(Ok(2)),
            SourceEvent::Received(Ok(Message::Restored { restore_us: 900 })),
            SourceEvent::Measured(Some(5000)),
            SourceEvent::Received(Ok(Message::Done { resume_us: 100 })),
            SourceEvent::Completed(Ok(())),
            SourceEvent::Removed,
        ]
        .into_iter()
        .enumerate()
        {
            transcript.push(lines(&m.handle(t0 + MS(i as u64), e)));
        }
        assert_eq!(
            transcript,
            [
                vec!["offer"],
                vec!["connect"],
                vec!["send prepare"],
                vec!["receive answer to prepare"],
                vec!["checkpoint"],
                vec!["send restore"],
                vec!["receive answer to restore"],
                vec!["measure"],
                vec!["receive done"],
                vec!["close", "complete"],
                vec!["removesource"],
                vec!["done: moved"],
            ]
        );
        // After Restored the service runs at the target: no Done is an unknown outcome.
        let (mut m, _, t0) = start(Transport::Pull, Strategy::StopAndCopy);
        for e in [
            SourceEvent::Offered(Ok(Value::Null)),
            SourceEvent::Connected(Ok(())),
            SourceEvent::Sent(Ok(1)),
            prepared(),
            SourceEvent::Checkpointed(Ok(Checkpointed::default())),
            SourceEvent::Sent(Ok(2)),
            SourceEvent::Received(Ok(Message::Restored { restore_us: 900 })),
            SourceEvent::Measured(None),
        ] {
            m.handle(t0, e);
        }
        let cmds = m.handle(
            t0,
            SourceEvent::Received(Ok(Message::Failed {
                cause: "late".into(),
            })),
        );
        assert_eq!(lines(&cmds), ["close", "giveup"]);
    }

    #[test]
    fn events_nobody_waits_for_change_nothing() {
        let (mut m, _, t0) = images_upto(4);
        assert!(m.handle(t0, SourceEvent::Removed).is_empty());
        assert!(m
            .handle(t0, SourceEvent::Received(Ok(Message::Commit)))
            .is_empty());
        let cmds = m.handle(t0, SourceEvent::Checkpointed(Ok(Checkpointed::default())));
        assert_eq!(
            lines(&cmds),
            ["sendimages { limit: 30s }"],
            "still waiting for the dump"
        );
    }

    // -----------------------------------------------------------------------------------------
    // Target.

    fn target_line(c: &TargetCommand) -> String {
        use TargetCommand as C;
        match c {
            C::Send(m) => format!("send {}", m.kind()),
            C::Tell(m) => format!("tell {}", m.kind()),
            C::Receive { expect, .. } => format!("receive {expect}"),
            C::Accept { .. } => "accept".into(),
            C::ReceiveImages { .. } => "receive images".into(),
            C::Done(Ok(_)) => "done: received".into(),
            C::Done(Err(_)) => "done: failed".into(),
            other => format!("{other:?}").to_lowercase(),
        }
    }

    fn tlines(cmds: &[TargetCommand]) -> Vec<String> {
        cmds.iter().map(target_line).collect()
    }

    fn prepare() -> TargetEvent {
        TargetEvent::Received(Ok(Message::Prepare {
            relocation_id: "r".into(),
            service: fake::service("p50", RelocationType::Criu),
            offer: Value::Null,
        }))
    }

    fn target_upto(transport: Transport, upto: usize) -> (TargetMove, Vec<TargetCommand>, Instant) {
        let t0 = Instant::now();
        let (mut m, mut cmds) = TargetMove::start(t0, transport, Timeouts::default());
        let happy: Vec<TargetEvent> = match transport {
            Transport::Images => vec![
                prepare(),
                TargetEvent::Accepted(Ok(())),
                TargetEvent::Sent(Ok(())),
                TargetEvent::ImagesReceived(Ok(100)),
                TargetEvent::Received(Ok(Message::Restore)),
                TargetEvent::Restored(Ok(())),
                TargetEvent::Sent(Ok(())),
                TargetEvent::Received(Ok(Message::Commit)),
                TargetEvent::Arrived,
                TargetEvent::Live(Ok(())),
                TargetEvent::Settled(None),
            ],
            Transport::Pull => vec![
                prepare(),
                TargetEvent::Accepted(Ok(())),
                TargetEvent::Sent(Ok(())),
                TargetEvent::Received(Ok(Message::Restore)),
                TargetEvent::Restored(Ok(())),
                TargetEvent::Sent(Ok(())),
                TargetEvent::Live(Ok(())),
                TargetEvent::Arrived,
                TargetEvent::Settled(None),
            ],
        };
        for (i, e) in happy.into_iter().take(upto).enumerate() {
            cmds = m.handle(t0 + MS(10 * (i as u64 + 1)), e);
        }
        (m, cmds, t0)
    }

    #[test]
    fn the_target_restores_stopped_goes_live_on_commit_and_reports_once() {
        let want: [&[&str]; 12] = [
            &["receive prepare"],
            &["accept"],
            &["send prepared"],
            &["receive images"],
            &["receive restore"],
            &["restore"],
            &["send restored"],
            &["receive commit"],
            &["arrive"],
            &["golive"],
            &["tell done", "settle"],
            &["done: received"],
        ];
        for (n, want) in want.iter().enumerate() {
            let (_, cmds, _) = target_upto(Transport::Images, n);
            assert_eq!(tlines(&cmds), *want, "after {n} events");
        }
        let (m, mut cmds, _) = target_upto(Transport::Images, 11);
        assert!(m.is_done());
        let Some(TargetCommand::Done(Ok(r))) = cmds.pop() else {
            panic!("no report");
        };
        assert_eq!(
            (r.relocation_id.as_str(), r.service.service_id.as_str()),
            ("r", "p50")
        );
        assert_eq!(
            (r.prepare_us, r.receive_us, r.restore_us, r.resume_us),
            (10_000, 10_000, 10_000, 20_000)
        );
        assert_eq!(r.image_bytes, 100);
    }

    #[test]
    fn a_pulled_target_attaches_then_reports_the_arrival_without_a_commit() {
        let want: [&[&str]; 10] = [
            &["receive prepare"],
            &["accept"],
            &["send prepared"],
            &["receive restore"],
            &["restore"],
            &["send restored"],
            &["golive"],
            &["arrive"],
            &["tell done", "settle"],
            &["done: received"],
        ];
        for (n, want) in want.iter().enumerate() {
            let (_, cmds, _) = target_upto(Transport::Pull, n);
            assert_eq!(tlines(&cmds), *want, "after {n} events");
        }
        // A port that does not attach does not undo a service that runs here.
        let (mut m, _, t0) = target_upto(Transport::Pull, 6);
        let cmds = m.handle(
            t0,
            TargetEvent::Live(Err(RuntimeError::State("no port".into()))),
        );
        assert_eq!(tlines(&cmds), ["arrive"]);
    }

    #[test]
    fn every_target_failure_undoes_what_it_made_before_it_says_so() {
        use TargetEvent as E;
        let rt = || RuntimeError::State("no".into());
        let lost = || E::Received(Err(lost_connection()));
        let not_sent = || E::Sent(Err(lost_connection()));
        const ABORT: &[&str] = &["abort", "done: failed"];
        const ABORT_THEN_TELL: &[&str] = &["abort", "tell failed", "done: failed"];
        let (images, pull) = (Transport::Images, Transport::Pull);
        let cases: Vec<(Transport, usize, TargetEvent, &[&str])> = vec![
            (
                images,
                0,
                E::Received(Ok(Message::Commit)),
                &["done: failed"],
            ),
            (images, 0, lost(), &["done: failed"]),
            (
                images,
                1,
                E::Accepted(Err(MoveError::local("accept")(rt()))),
                &["tell refused", "done: failed"],
            ),
            (images, 2, not_sent(), ABORT),
            (images, 3, E::ImagesReceived(Err(lost_connection())), ABORT),
            (images, 4, E::Received(Ok(Message::Commit)), ABORT),
            (images, 4, lost(), ABORT),
            (images, 5, E::Restored(Err(rt())), ABORT_THEN_TELL),
            (images, 6, not_sent(), ABORT),
            (images, 7, E::Received(Ok(Message::Restore)), ABORT),
            (images, 7, lost(), ABORT),
            (images, 9, E::Live(Err(rt())), ABORT_THEN_TELL),
            (pull, 3, lost(), ABORT),
            (pull, 4, E::Restored(Err(rt())), ABORT_THEN_TELL),
            // Restored not sent: the source recovers its own copy, this one must go.
            (pull, 5, not_sent(), ABORT),
        ];
        for (transport, n, event, want) in cases {
            let (mut m, _, t0) = target_upto(transport, n);
            let what = format!("{transport:?} after {n} events: {event:?}");
            assert_eq!(tlines(&m.handle(t0, event)), want, "{what}");
            assert!(m.is_done(), "{what}");
        }
    }
}

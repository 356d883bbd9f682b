//! One path switch of one UE as a pure state machine: [`PathSwitch::handle`] takes `(now, event)`
//! and answers the next [`Command`] (notify, hold for acknowledgements, PFCP, LR); the driver in
//! [`super::procedure`] performs it, feeds the result back and persists the machine after every
//! step. A restarted SMF loads the machine and feeds it [`Event::Resume`]: it answers the command
//! of the step it was in, which is safe to repeat (see ARCHITECTURE.md, "The SMF's crash").
//!
//! A UPF relocation (the target gNB's site has another UPF):
//!
//! ```text
//! Early ─▶ [EarlyHold] ─▶ Establish ─▶ LateAcked ─▶ [LateHold] ─▶ Lr ─▶ ModifySource ─▶ DeleteSource ─▶ Late ─▶ Done
//!                            │ fails                                 │ fails   │ fails
//!                            ▼                                       ▼         ▼
//!                          Failed ◀──────────── DeleteTarget ◀──── RestoreLr ◀─┘
//! ```
//!
//! * `Early`: EARLY `UP_PATH_CH` notifications; those that expect an AF acknowledgement carry an
//!   `ackUri`, and `EarlyHold` waits for their answers (at most the hold's time limit) before the
//!   new path is configured: the UE's downlink stays on the source UPF meanwhile.
//! * `Establish`: the session at the target UPF (the new path is configured, not used yet).
//! * `LateAcked`: LATE notifications that expect an acknowledgement, and `LateHold` for them,
//!   before the new path is activated (TS 23.502 §4.3.6.3); LATE ones that expect none go after
//!   it (`Late`), as before.
//! * `Lr`, `ModifySource`, `DeleteSource`: the new path is activated (LR and through it every IAP
//!   to the target UPF; End Marker from the source UPF, its late downlink to the target gNB), and
//!   the source session goes.
//!
//! A switch at the same UPF (another gNB of the site) is `ModifySource ─▶ Done` (or `Failed`).
//! Acknowledgements that say anything but `SUCCESS`, and a hold that runs out, do not stop the
//! switch: the UE is at the target gNB already and needs the new path; they are reported.

use std::collections::BTreeMap;

use model::ran::n2::PathSwitchRequest;
use model::ran::{TimelineStep, TunnelEndpoint};
use serde::{Deserialize, Serialize};

use super::events::{Audience, Timing};
use super::session::{Session, UpfTunnels};

/// The `afStatus` of a positive acknowledgement.
pub const ACK_SUCCESS: &str = "SUCCESS";

/// The target of a UPF relocation: what the SMF reserved there, and the UPF's SEID once known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Target {
    pub upf: String,
    pub tunnels: UpfTunnels,
    pub cp_seid: u64,
    pub up_seid: Option<u64>,
}

/// Where a path switch is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Stage {
    Early,
    EarlyHold,
    Establish,
    LateAcked,
    LateHold,
    Lr,
    ModifySource,
    DeleteSource,
    Late,
    RestoreLr,
    DeleteTarget,
    Done,
    Failed,
}

/// An answer to a notification that expected one: `afStatus`, or `None` if the hold ran out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AckAnswer {
    pub ack_id: String,
    pub notif_id: String,
    pub af_status: Option<String>,
}

/// A wait for AF acknowledgements.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Hold {
    pub timing: Timing,
    /// When it ends at the latest (µs on the host's wall clock, so it survives a restart).
    pub deadline_unix_us: u64,
    /// The acknowledgements still missing: ack id → the notification's `notifId`.
    pub awaiting: BTreeMap<String, String>,
    pub answers: Vec<AckAnswer>,
}

impl Hold {
    /// Whether every acknowledgement came and said `SUCCESS`.
    pub fn all_succeeded(&self) -> bool {
        self.awaiting.is_empty()
            && self
                .answers
                .iter()
                .all(|a| a.af_status.as_deref() == Some(ACK_SUCCESS))
    }

    /// One line for logs and the timeline: what came back.
    pub fn summary(&self) -> String {
        let mut parts: Vec<String> = self
            .answers
            .iter()
            .map(|a| {
                format!(
                    "{} {}",
                    a.notif_id,
                    a.af_status.as_deref().unwrap_or("no answer")
                )
            })
            .collect();
        parts.extend(
            self.awaiting
                .values()
                .map(|notif_id| format!("{notif_id} no answer")),
        );
        parts.join(", ")
    }
}

/// What happened, fed to [`PathSwitch::handle`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Start, or go on after a restart: (re)issue the current step.
    Resume,
    /// The notifications of a [`Command::Notify`] were sent; these expect an acknowledgement
    /// (ack id → `notifId`).
    Notified { awaiting: BTreeMap<String, String> },
    /// An acknowledgement arrived.
    Acked { ack_id: String, af_status: String },
    /// The hold's time limit passed.
    HoldExpired,
    /// The target UPF answered the establishment: its SEID, or why not.
    Established(Result<u64, String>),
    /// The LR answered.
    LocationPut(Result<(), String>),
    /// The source UPF answered the modification.
    Modified(Result<(), String>),
    /// A session deletion ended (`true`: the UPF deleted it or did not have it).
    Deleted(bool),
}

/// What the driver does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Send the `timing` notifications to `audience`; then [`Event::Notified`].
    Notify { timing: Timing, audience: Audience },
    /// Wait for the acknowledgements `awaiting` until `deadline_unix_us`; each as
    /// [`Event::Acked`], then [`Event::HoldExpired`] if some are missing.
    Hold {
        timing: Timing,
        deadline_unix_us: u64,
        awaiting: Vec<String>,
    },
    /// PFCP Session Establishment at the target; then [`Event::Established`].
    Establish {
        upf: String,
        cp_seid: u64,
        tunnels: UpfTunnels,
        gnb_tunnel: TunnelEndpoint,
    },
    /// `PUT` the UE's location at `upf` (its downlink tunnel in `tunnels`) to the LR; then
    /// [`Event::LocationPut`].
    PutLocation { upf: String, tunnels: UpfTunnels },
    /// PFCP Session Modification (End Marker, FAR 2 to `gnb_tunnel`); then [`Event::Modified`].
    Modify {
        upf: String,
        up_seid: u64,
        gnb_tunnel: TunnelEndpoint,
    },
    /// PFCP Session Deletion; then [`Event::Deleted`].
    Delete {
        upf: String,
        up_seid: u64,
        why: &'static str,
    },
    /// The switch is over: [`PathSwitch::outcome`].
    Finish,
}

/// One path switch of one UE.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathSwitch {
    pub request: PathSwitchRequest,
    /// The session as it was before.
    pub source: Session,
    /// Absent for a switch at the same UPF.
    pub target: Option<Target>,
    pub stage: Stage,
    /// The hold in progress.
    pub hold: Option<Hold>,
    /// Holds that ended.
    pub holds: Vec<Hold>,
    /// Whether the source UPF deleted the old session (its TEIDs may be given out again).
    pub source_deleted: bool,
    /// Why it failed (the first error).
    pub failure: Option<String>,
    /// How long a hold may last (µs).
    pub hold_limit_us: u64,
    /// When it started (µs on the host's wall clock).
    pub started_unix_us: u64,
    /// The steps so far (the driver appends them; they survive a restart).
    pub steps: Vec<TimelineStep>,
}

impl PathSwitch {
    /// A switch of `source` for `request`: a relocation to `target`, or at the same UPF.
    pub fn new(
        request: PathSwitchRequest,
        source: Session,
        target: Option<Target>,
        hold_limit_us: u64,
        now_unix_us: u64,
    ) -> Self {
        let stage = Self::first_stage(target.is_some());
        Self {
            request,
            source,
            target,
            stage,
            hold: None,
            holds: Vec::new(),
            source_deleted: false,
            failure: None,
            hold_limit_us,
            started_unix_us: now_unix_us,
            steps: Vec::new(),
        }
    }

    /// The stage a switch starts in: a relocation with the EARLY notifications, a switch at the
    /// same UPF with the modification.
    fn first_stage(relocates: bool) -> Stage {
        if relocates {
            Stage::Early
        } else {
            Stage::ModifySource
        }
    }

    /// Whether it is a UPF relocation.
    pub fn relocates(&self) -> bool {
        self.target.is_some()
    }

    /// Whether it is over.
    pub fn is_finished(&self) -> bool {
        matches!(self.stage, Stage::Done | Stage::Failed)
    }

    /// The session after a switch that is [`Stage::Done`]; why not after a failed one; `None`
    /// while it runs.
    pub fn outcome(&self) -> Option<Result<Session, String>> {
        match self.stage {
            Stage::Done => {
                let mut s = self.source.clone();
                s.gnb = self.request.gnb.clone();
                s.gnb_tunnel = self.request.gnb_tunnel;
                if let Some(t) = &self.target {
                    s.upf = t.upf.clone();
                    s.tunnels = t.tunnels;
                    s.cp_seid = t.cp_seid;
                    s.up_seid = t.up_seid.unwrap_or_default();
                }
                Some(Ok(s))
            }
            Stage::Failed => Some(Err(self
                .failure
                .clone()
                .unwrap_or_else(|| "path switch failed".into()))),
            _ => None,
        }
    }

    /// Handles `event` at `now_unix_us`; the next command, or `None` when the driver should keep
    /// waiting (an acknowledgement came, others are still missing).
    pub fn handle(&mut self, now_unix_us: u64, event: Event) -> Option<Command> {
        match (self.stage, event) {
            (_, Event::Resume) => {}
            (Stage::Early, Event::Notified { awaiting }) => {
                self.after_notify(now_unix_us, Timing::Early, awaiting, Stage::Establish)
            }
            (Stage::LateAcked, Event::Notified { awaiting }) => {
                self.after_notify(now_unix_us, Timing::Late, awaiting, Stage::Lr)
            }
            (Stage::Late, Event::Notified { .. }) => self.stage = Stage::Done,
            (Stage::EarlyHold | Stage::LateHold, Event::Acked { ack_id, af_status }) => {
                let hold = self.hold.as_mut()?;
                let notif_id = hold.awaiting.remove(&ack_id)?;
                hold.answers.push(AckAnswer {
                    ack_id,
                    notif_id,
                    af_status: Some(af_status),
                });
                if !hold.awaiting.is_empty() {
                    return None;
                }
                self.end_hold();
            }
            (Stage::EarlyHold | Stage::LateHold, Event::HoldExpired) => {
                if let Some(hold) = &self.hold {
                    if hold.deadline_unix_us > now_unix_us && !hold.awaiting.is_empty() {
                        // Early (a clock step): wait on.
                        return Some(self.command());
                    }
                }
                self.end_hold();
            }
            (Stage::Establish, Event::Established(result)) => match result {
                Ok(up_seid) => {
                    if let Some(t) = &mut self.target {
                        t.up_seid = Some(up_seid);
                    }
                    self.stage = Stage::LateAcked;
                }
                Err(e) => self.fail(e, Stage::Failed),
            },
            (Stage::Lr, Event::LocationPut(result)) => match result {
                Ok(()) => self.stage = Stage::ModifySource,
                Err(e) => self.fail(e, Stage::RestoreLr),
            },
            (Stage::ModifySource, Event::Modified(result)) => match (result, self.relocates()) {
                (Ok(()), true) => self.stage = Stage::DeleteSource,
                (Ok(()), false) => self.stage = Stage::Done,
                (Err(e), true) => self.fail(e, Stage::RestoreLr),
                (Err(e), false) => self.fail(e, Stage::Failed),
            },
            (Stage::DeleteSource, Event::Deleted(deleted)) => {
                self.source_deleted = deleted;
                self.stage = Stage::Late;
            }
            (Stage::RestoreLr, Event::LocationPut(_)) => self.stage = Stage::DeleteTarget,
            (Stage::DeleteTarget, Event::Deleted(_)) => self.stage = Stage::Failed,
            // An answer that does not fit the step (a stale one): the step goes on.
            _ => {}
        }
        Some(self.command())
    }

    fn after_notify(
        &mut self,
        now_unix_us: u64,
        timing: Timing,
        awaiting: BTreeMap<String, String>,
        next: Stage,
    ) {
        if awaiting.is_empty() {
            self.stage = next;
            return;
        }
        self.hold = Some(Hold {
            timing,
            deadline_unix_us: now_unix_us.saturating_add(self.hold_limit_us),
            awaiting,
            answers: Vec::new(),
        });
        self.stage = match timing {
            Timing::Early => Stage::EarlyHold,
            Timing::Late => Stage::LateHold,
        };
    }

    fn end_hold(&mut self) {
        if let Some(mut hold) = self.hold.take() {
            let missing = std::mem::take(&mut hold.awaiting);
            hold.answers
                .extend(missing.into_iter().map(|(ack_id, notif_id)| AckAnswer {
                    ack_id,
                    notif_id,
                    af_status: None,
                }));
            self.holds.push(hold);
        }
        self.stage = match self.stage {
            Stage::EarlyHold => Stage::Establish,
            _ => Stage::Lr,
        };
    }

    fn fail(&mut self, error: String, next: Stage) {
        self.failure.get_or_insert(error);
        self.stage = next;
    }

    /// The command of the current step.
    pub fn command(&self) -> Command {
        let source = &self.source;
        match (self.stage, &self.target) {
            (Stage::Early, _) => Command::Notify {
                timing: Timing::Early,
                audience: Audience::All,
            },
            (Stage::LateAcked, _) => Command::Notify {
                timing: Timing::Late,
                audience: Audience::AckExpected,
            },
            (Stage::Late, _) => Command::Notify {
                timing: Timing::Late,
                audience: Audience::NoAck,
            },
            (Stage::EarlyHold | Stage::LateHold, _) => match &self.hold {
                Some(h) => Command::Hold {
                    timing: h.timing,
                    deadline_unix_us: h.deadline_unix_us,
                    awaiting: h.awaiting.keys().cloned().collect(),
                },
                None => Command::Finish, // cannot happen: a hold stage always has its hold
            },
            (Stage::Establish, Some(t)) => Command::Establish {
                upf: t.upf.clone(),
                cp_seid: t.cp_seid,
                tunnels: t.tunnels,
                gnb_tunnel: self.request.gnb_tunnel,
            },
            (Stage::Lr, Some(t)) => Command::PutLocation {
                upf: t.upf.clone(),
                tunnels: t.tunnels,
            },
            (Stage::ModifySource, _) => Command::Modify {
                upf: source.upf.clone(),
                up_seid: source.up_seid,
                gnb_tunnel: self.request.gnb_tunnel,
            },
            (Stage::DeleteSource, _) => Command::Delete {
                upf: source.upf.clone(),
                up_seid: source.up_seid,
                why: "relocation",
            },
            (Stage::RestoreLr, _) => Command::PutLocation {
                upf: source.upf.clone(),
                tunnels: source.tunnels,
            },
            (Stage::DeleteTarget, Some(t)) => match t.up_seid {
                Some(up_seid) => Command::Delete {
                    upf: t.upf.clone(),
                    up_seid,
                    why: "relocation failed",
                },
                None => Command::Finish,
            },
            (Stage::DeleteTarget, None) => Command::Finish,
            (Stage::Establish | Stage::Lr, None) => Command::Finish,
            (Stage::Done | Stage::Failed, _) => Command::Finish,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000;

    fn tunnel(ipv4: [u8; 4], teid: u32) -> TunnelEndpoint {
        TunnelEndpoint {
            ipv4: ipv4.into(),
            teid,
        }
    }

    fn source() -> Session {
        Session {
            supi: "imsi-1".into(),
            ue_ipv4: [192, 168, 1, 2].into(),
            upf: "upf-a".into(),
            gnb: "gnb-a".into(),
            gnb_tunnel: tunnel([10, 30, 0, 2], 0x51),
            tunnels: UpfTunnels {
                uplink: tunnel([10, 30, 0, 102], 1),
                downlink: tunnel([10, 90, 0, 2], 2),
            },
            cp_seid: 1,
            up_seid: 0xa000,
        }
    }

    fn request(gnb: &str) -> PathSwitchRequest {
        PathSwitchRequest {
            supi: "imsi-1".into(),
            ue_ipv4: [192, 168, 1, 2].into(),
            gnb: gnb.into(),
            gnb_tunnel: tunnel([10, 30, 0, 3], 0x61),
        }
    }

    fn target() -> Target {
        Target {
            upf: "upf-b".into(),
            tunnels: UpfTunnels {
                uplink: tunnel([10, 30, 0, 103], 1),
                downlink: tunnel([10, 90, 0, 3], 2),
            },
            cp_seid: 2,
            up_seid: None,
        }
    }

    fn relocation() -> PathSwitch {
        PathSwitch::new(request("gnb-b"), source(), Some(target()), 2_000 * MS, 0)
    }

    fn acks(ids: &[(&str, &str)]) -> BTreeMap<String, String> {
        ids.iter()
            .map(|(a, n)| ((*a).to_owned(), (*n).to_owned()))
            .collect()
    }

    /// Feeds `event`, checks the command that comes back, and that a restart there (a round trip
    /// through the store's JSON, then `Resume`) asks for the same command again.
    #[track_caller]
    fn step(sw: &mut PathSwitch, now: u64, event: Event, want: &Command) {
        let got = sw.handle(now, event).expect("a command");
        assert_eq!(&got, want, "at {:?}", sw.stage);
        let json = serde_json::to_string(&sw).expect("serialize");
        let mut restarted: PathSwitch = serde_json::from_str(&json).expect("parse");
        assert_eq!(&restarted, sw);
        assert_eq!(
            restarted.handle(now, Event::Resume).as_ref(),
            Some(want),
            "resumed at {:?}",
            sw.stage
        );
    }

    fn early() -> Command {
        Command::Notify {
            timing: Timing::Early,
            audience: Audience::All,
        }
    }

    fn establish() -> Command {
        Command::Establish {
            upf: "upf-b".into(),
            cp_seid: 2,
            tunnels: target().tunnels,
            gnb_tunnel: request("gnb-b").gnb_tunnel,
        }
    }

    fn late_acked() -> Command {
        Command::Notify {
            timing: Timing::Late,
            audience: Audience::AckExpected,
        }
    }

    fn put_target() -> Command {
        Command::PutLocation {
            upf: "upf-b".into(),
            tunnels: target().tunnels,
        }
    }

    fn modify_source() -> Command {
        Command::Modify {
            upf: "upf-a".into(),
            up_seid: 0xa000,
            gnb_tunnel: request("gnb-b").gnb_tunnel,
        }
    }

    #[test]
    fn a_relocation_runs_its_steps_in_order_and_every_step_resumes() {
        let mut sw = relocation();
        assert_eq!(sw.handle(0, Event::Resume), Some(early()));
        let none = BTreeMap::new();
        step(
            &mut sw,
            1,
            Event::Notified {
                awaiting: none.clone(),
            },
            &establish(),
        );
        step(&mut sw, 2, Event::Established(Ok(0xb000)), &late_acked());
        step(
            &mut sw,
            3,
            Event::Notified {
                awaiting: none.clone(),
            },
            &put_target(),
        );
        step(&mut sw, 4, Event::LocationPut(Ok(())), &modify_source());
        step(
            &mut sw,
            5,
            Event::Modified(Ok(())),
            &Command::Delete {
                upf: "upf-a".into(),
                up_seid: 0xa000,
                why: "relocation",
            },
        );
        step(
            &mut sw,
            6,
            Event::Deleted(true),
            &Command::Notify {
                timing: Timing::Late,
                audience: Audience::NoAck,
            },
        );
        step(
            &mut sw,
            7,
            Event::Notified { awaiting: none },
            &Command::Finish,
        );
        let moved = sw.outcome().expect("over").expect("done");
        assert_eq!(
            (moved.upf.as_str(), moved.gnb.as_str(), moved.up_seid),
            ("upf-b", "gnb-b", 0xb000)
        );
        assert_eq!((moved.tunnels, moved.cp_seid), (target().tunnels, 2));
        assert_eq!(moved.gnb_tunnel, request("gnb-b").gnb_tunnel);
        assert!(sw.source_deleted && sw.holds.is_empty());
    }

    #[test]
    fn an_early_hold_keeps_the_new_path_unconfigured_until_every_ack() {
        let mut sw = relocation();
        sw.handle(0, Event::Resume);
        let hold = |awaiting: &[&str]| Command::Hold {
            timing: Timing::Early,
            deadline_unix_us: 10 * MS + 2_000 * MS,
            awaiting: awaiting.iter().map(|a| (*a).to_owned()).collect(),
        };
        step(
            &mut sw,
            10 * MS,
            Event::Notified {
                awaiting: acks(&[("ack-1", "nef-1"), ("ack-2", "nef-2")]),
            },
            &hold(&["ack-1", "ack-2"]),
        );
        assert_eq!(sw.stage, Stage::EarlyHold);
        // One answer: keep waiting (nothing to do); an unknown or repeated one changes nothing.
        assert_eq!(
            sw.handle(
                20 * MS,
                Event::Acked {
                    ack_id: "ack-2".into(),
                    af_status: "SUCCESS".into()
                }
            ),
            None
        );
        assert_eq!(
            sw.handle(
                21 * MS,
                Event::Acked {
                    ack_id: "ack-2".into(),
                    af_status: "OTHER".into()
                }
            ),
            None
        );
        // A restart while holding: the same hold, with what is still missing, until the same
        // deadline.
        let mut restarted: PathSwitch =
            serde_json::from_str(&serde_json::to_string(&sw).expect("json")).expect("parse");
        assert_eq!(
            restarted.handle(500 * MS, Event::Resume),
            Some(hold(&["ack-1"]))
        );
        // The last one: on to the establishment.
        step(
            &mut sw,
            600 * MS,
            Event::Acked {
                ack_id: "ack-1".into(),
                af_status: "SUCCESS".into(),
            },
            &establish(),
        );
        let [done] = &sw.holds[..] else {
            panic!("one hold: {:?}", sw.holds)
        };
        assert!(done.all_succeeded(), "{done:?}");
        assert_eq!(done.summary(), "nef-2 SUCCESS, nef-1 SUCCESS");
    }

    #[test]
    fn a_failed_ack_or_a_hold_that_runs_out_lets_the_switch_go_on_and_says_so() {
        // RELOC_NO_ALLOWED: reported, and on.
        let mut sw = relocation();
        sw.handle(0, Event::Resume);
        sw.handle(
            0,
            Event::Notified {
                awaiting: acks(&[("a", "n")]),
            },
        );
        step(
            &mut sw,
            5 * MS,
            Event::Acked {
                ack_id: "a".into(),
                af_status: "RELOC_NO_ALLOWED".into(),
            },
            &establish(),
        );
        assert!(!sw.holds[0].all_succeeded());
        assert_eq!(sw.holds[0].summary(), "n RELOC_NO_ALLOWED");

        // No answer: a time-out before the deadline (a clock step) waits on, at the deadline
        // the switch goes on.
        let mut sw = relocation();
        sw.handle(0, Event::Resume);
        let waiting = sw.handle(
            0,
            Event::Notified {
                awaiting: acks(&[("a", "n")]),
            },
        );
        assert_eq!(
            sw.handle(1_999 * MS, Event::HoldExpired),
            waiting,
            "not yet"
        );
        step(&mut sw, 2_000 * MS, Event::HoldExpired, &establish());
        assert_eq!(sw.holds[0].summary(), "n no answer");
        assert_eq!(sw.holds[0].answers[0].af_status, None);
    }

    #[test]
    fn a_late_notification_that_expects_an_ack_comes_before_the_new_path_is_active() {
        let mut sw = relocation();
        sw.handle(0, Event::Resume);
        sw.handle(
            0,
            Event::Notified {
                awaiting: BTreeMap::new(),
            },
        );
        assert_eq!(sw.handle(1, Event::Established(Ok(7))), Some(late_acked()));
        step(
            &mut sw,
            2,
            Event::Notified {
                awaiting: acks(&[("l", "late")]),
            },
            &Command::Hold {
                timing: Timing::Late,
                deadline_unix_us: 2 + 2_000 * MS,
                awaiting: vec!["l".into()],
            },
        );
        step(
            &mut sw,
            3,
            Event::Acked {
                ack_id: "l".into(),
                af_status: "SUCCESS".into(),
            },
            &put_target(),
        );
        assert_eq!(sw.holds[0].timing, Timing::Late);
    }

    #[test]
    fn failures_undo_the_target_and_keep_the_source() {
        // The target refuses: nothing to undo.
        let mut sw = relocation();
        sw.handle(0, Event::Resume);
        sw.handle(
            0,
            Event::Notified {
                awaiting: BTreeMap::new(),
            },
        );
        step(
            &mut sw,
            1,
            Event::Established(Err("upf-b rejected".into())),
            &Command::Finish,
        );
        assert_eq!(sw.outcome(), Some(Err("upf-b rejected".into())));

        // The LR fails: the source location back, the target session deleted.
        let at_lr = |sw: &mut PathSwitch| {
            sw.handle(0, Event::Resume);
            sw.handle(
                0,
                Event::Notified {
                    awaiting: BTreeMap::new(),
                },
            );
            sw.handle(1, Event::Established(Ok(0xb000)));
            sw.handle(
                2,
                Event::Notified {
                    awaiting: BTreeMap::new(),
                },
            )
        };
        let restore = Command::PutLocation {
            upf: "upf-a".into(),
            tunnels: source().tunnels,
        };
        let delete_target = Command::Delete {
            upf: "upf-b".into(),
            up_seid: 0xb000,
            why: "relocation failed",
        };
        let mut sw = relocation();
        assert_eq!(at_lr(&mut sw), Some(put_target()));
        step(
            &mut sw,
            3,
            Event::LocationPut(Err("lr down".into())),
            &restore,
        );
        step(
            &mut sw,
            4,
            Event::LocationPut(Err("still down".into())),
            &delete_target,
        );
        step(&mut sw, 5, Event::Deleted(false), &Command::Finish);
        assert_eq!(sw.outcome(), Some(Err("lr down".into())), "the first error");

        // The source refuses the modification: the same undo.
        let mut sw = relocation();
        at_lr(&mut sw);
        sw.handle(3, Event::LocationPut(Ok(())));
        step(
            &mut sw,
            4,
            Event::Modified(Err("upf-a timed out".into())),
            &restore,
        );
        step(&mut sw, 5, Event::LocationPut(Ok(())), &delete_target);
        step(&mut sw, 6, Event::Deleted(true), &Command::Finish);
        assert!(matches!(sw.outcome(), Some(Err(e)) if e == "upf-a timed out"));
    }

    #[test]
    fn a_switch_at_the_same_upf_only_modifies() {
        let mut sw = PathSwitch::new(request("gnb-a2"), source(), None, 0, 0);
        assert!(!sw.relocates());
        assert_eq!(sw.handle(0, Event::Resume), Some(modify_source()));
        step(&mut sw, 1, Event::Modified(Ok(())), &Command::Finish);
        let s = sw.outcome().expect("over").expect("done");
        assert_eq!((s.upf.as_str(), s.gnb.as_str()), ("upf-a", "gnb-a2"));
        assert_eq!(s.up_seid, 0xa000);

        let mut sw = PathSwitch::new(request("gnb-a2"), source(), None, 0, 0);
        sw.handle(0, Event::Resume);
        sw.handle(1, Event::Modified(Err("no".into())));
        assert!(sw.is_finished());
        assert_eq!(sw.outcome(), Some(Err("no".into())));
    }

    #[test]
    fn stale_answers_change_nothing() {
        let mut sw = relocation();
        sw.handle(0, Event::Resume);
        assert_eq!(
            sw.handle(1, Event::Established(Ok(9))),
            Some(early()),
            "an establishment answer while notifying"
        );
        assert_eq!(sw.handle(2, Event::HoldExpired), Some(early()));
        assert_eq!(sw.stage, Stage::Early);
        assert!(sw.target.as_ref().is_some_and(|t| t.up_seid.is_none()));
        assert_eq!(sw.outcome(), None);
    }
}

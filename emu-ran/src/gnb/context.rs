//! The gNB's UE contexts as a pure state machine: [`GnbCore::handle`] takes `(now, event)` and
//! returns [`Action`]s (frames to send, SBI calls to make, answers, timers); the driver in
//! [`super`] performs them and feeds the results back as events. No I/O, no clock of its own.
//!
//! Phases of a context ([`Phase`]):
//!
//! ```text
//! attach:  AttachRequest ─▶ Attaching ─(SMF answers)─▶ Connected
//! source:  Connected ─(trigger)─▶ Preparing ─(ack)─▶ Forwarding ─(release + End Marker or 1 s)─▶ gone
//! target:  (HandoverRequest) AwaitingUe ─(HandoverConfirm)─▶ PathSwitching ─(ack)─▶ Connected
//! ```

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use model::ran::n2::{
    PathSwitchAck, PathSwitchRequest, PduSessionSetupRequest, PduSessionSetupResponse,
};
use model::ran::radio::Rrc;
use model::ran::xn::{
    HandoverReport, HandoverRequest, HandoverRequestAck, HandoverTrigger, UeContextRelease,
};
use model::ran::{TimelineStep, TunnelEndpoint};
use tokio::time::{Duration, Instant};
use wire::gtpu::{self, GtpuRepr, MessageType, PduSessionInfo, Qfi, Teid};

use crate::radio;

/// Identifies a request (HTTP handler) waiting for an answer from the core.
pub type RequestId = u64;

/// How long the source keeps forwarding after the UE Context Release when no End Marker came.
pub const RELEASE_LINGER: Duration = Duration::from_secs(1);
/// How long the target holds downlink from the new path while waiting for the End Marker.
pub const NEW_PATH_HOLD: Duration = Duration::from_millis(200);
/// Downlink packets a target buffers for a UE that has not arrived (or waits for the End Marker).
pub const MAX_BUFFERED: usize = 1024;
/// How long a trigger waits for the whole handover before it fails.
pub const HANDOVER_GUARD: Duration = Duration::from_secs(10);
/// How long a target keeps a prepared context for a UE that does not arrive.
pub const AWAITING_UE_GUARD: Duration = Duration::from_secs(10);
/// How long the target keeps the forwarding tunnel after the path switch when no End Marker came.
pub const FORWARDING_TUNNEL_LIFETIME: Duration = Duration::from_secs(2);

/// A failed request, answered as ProblemDetails with `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub status: u16,
    pub detail: String,
}

impl Failure {
    fn new(status: u16, detail: impl Into<String>) -> Self {
        Self {
            status,
            detail: detail.into(),
        }
    }
}

/// Timers a context asks for ([`Action::StartTimer`]); they come back as [`Event::Timer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Timer {
    /// Source: the release came; stop forwarding now.
    ReleaseLinger,
    /// Source: the trigger has waited long enough.
    HandoverGuard,
    /// Target: deliver new-path downlink even without the End Marker.
    NewPathHold,
    /// Target: forget the forwarding tunnel.
    ForwardingDone,
    /// Target: the UE never arrived.
    AwaitingUe,
}

/// Something that happened to the gNB.
#[derive(Debug, Clone)]
pub enum Event {
    /// A control frame from a UE's radio address.
    Rrc { from: SocketAddr, rrc: Rrc },
    /// An uplink data frame.
    Uplink {
        from: SocketAddr,
        radio_id: u16,
        packet: Vec<u8>,
    },
    /// A GTP-U message on the N3/Xn-U socket.
    Gtpu {
        from: SocketAddr,
        repr: GtpuRepr,
        payload: Vec<u8>,
    },
    /// The SMF answered [`Action::SetupPduSession`].
    SessionSetup {
        supi: String,
        epoch: u64,
        result: Result<PduSessionSetupResponse, String>,
    },
    /// The testbed asks for a handover (`POST /gnb-control/v1/handovers`).
    Trigger {
        id: RequestId,
        trigger: HandoverTrigger,
    },
    /// The target answered [`Action::RequestHandover`].
    HandoverPrepared {
        supi: String,
        epoch: u64,
        result: Result<HandoverRequestAck, String>,
    },
    /// A source gNB asks to prepare a handover (`POST /xnap-lite/v1/handover-requests`).
    HandoverRequest {
        id: RequestId,
        request: HandoverRequest,
    },
    /// The target tells the source the handover is done (`POST /xnap-lite/v1/ue-context-releases`).
    UeContextRelease {
        id: RequestId,
        release: UeContextRelease,
    },
    /// The SMF answered [`Action::PathSwitch`].
    PathSwitched {
        supi: String,
        epoch: u64,
        result: Result<PathSwitchAck, String>,
    },
    /// A timer started by [`Action::StartTimer`] expired.
    Timer {
        supi: String,
        epoch: u64,
        timer: Timer,
    },
}

/// Something the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send a radio frame to a UE.
    SendRadio { to: SocketAddr, frame: Vec<u8> },
    /// Send a GTP-U message to a tunnel peer (port 2152 in production).
    SendGtpu { to: Ipv4Addr, message: Vec<u8> },
    /// Answer a GTP-U message to its sender's address and port (Echo Response).
    ReplyGtpu { to: SocketAddr, message: Vec<u8> },
    /// `POST {smf}/n2-lite/v1/pdu-sessions`, then [`Event::SessionSetup`].
    SetupPduSession {
        supi: String,
        epoch: u64,
        request: PduSessionSetupRequest,
    },
    /// `POST {xn_url}/xnap-lite/v1/handover-requests`, then [`Event::HandoverPrepared`].
    RequestHandover {
        supi: String,
        epoch: u64,
        xn_url: String,
        request: HandoverRequest,
    },
    /// `POST {smf}/n2-lite/v1/path-switch`, then [`Event::PathSwitched`].
    PathSwitch {
        supi: String,
        epoch: u64,
        request: PathSwitchRequest,
    },
    /// `POST {xn_url}/xnap-lite/v1/ue-context-releases` (fire and forget).
    ReleaseUeContext {
        xn_url: String,
        release: UeContextRelease,
    },
    /// Answer the trigger `id`.
    AnswerTrigger {
        id: RequestId,
        result: Result<HandoverReport, Failure>,
    },
    /// Answer the HandoverRequest `id`.
    AnswerHandoverRequest {
        id: RequestId,
        result: Result<HandoverRequestAck, Failure>,
    },
    /// Answer the UeContextRelease `id`.
    AnswerRelease {
        id: RequestId,
        result: Result<(), Failure>,
    },
    /// Feed [`Event::Timer`] back at `at`.
    StartTimer {
        supi: String,
        epoch: u64,
        timer: Timer,
        at: Instant,
    },
}

/// What a TEID this gNB handed out is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TeidRole {
    /// N3 downlink from a UPF.
    Downlink,
    /// Xn-U forwarding from a source gNB.
    Forwarding,
}

/// Where a UE context is in its life.
#[derive(Debug, Clone, PartialEq)]
pub enum Phase {
    /// Waiting for the SMF's PDU session answer.
    Attaching,
    /// Served here.
    Connected,
    /// Source: HandoverRequest sent, waiting for the ack.
    Preparing(SourceHandover),
    /// Source: HandoverCommand sent; downlink goes to the forwarding tunnel.
    Forwarding(SourceHandover),
    /// Target: prepared, waiting for the UE's HandoverConfirm.
    AwaitingUe,
    /// Target: the UE arrived; PathSwitchRequest sent.
    PathSwitching,
}

impl Phase {
    /// A short name for logs and the status API.
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Attaching => "attaching",
            Phase::Connected => "connected",
            Phase::Preparing(_) => "preparing",
            Phase::Forwarding(_) => "forwarding",
            Phase::AwaitingUe => "awaitingUe",
            Phase::PathSwitching => "pathSwitching",
        }
    }
}

/// The source side of a handover.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceHandover {
    pub trigger: RequestId,
    pub target_gnb: String,
    /// When the trigger arrived (timeline origin).
    pub started: Instant,
    /// When the HandoverRequest was sent.
    pub request_sent: Instant,
    /// When its acknowledgement arrived.
    pub acked: Option<Instant>,
    pub timeline: Vec<TimelineStep>,
    pub tunnel: Option<TunnelEndpoint>,
    pub forwarded: u64,
    pub end_marker_forwarded: bool,
    /// The UE Context Release arrived (the trigger is answered).
    pub released: bool,
}

/// The target side of a handover: the forwarding tunnel and the downlink ordering.
#[derive(Debug, Clone, PartialEq)]
pub struct Arrival {
    pub source_gnb: String,
    pub fwd_teid: u32,
    /// When the HandoverRequest arrived (timeline origin).
    pub started: Instant,
    pub timeline: Vec<TimelineStep>,
    /// Forwarded packets waiting for the UE.
    pub fwd_pending: VecDeque<Vec<u8>>,
    /// New-path packets waiting for the End Marker (or [`NEW_PATH_HOLD`]).
    pub new_pending: VecDeque<Vec<u8>>,
    pub end_marker: bool,
    pub hold_expired: bool,
    pub hold_started: bool,
    pub path_switch_sent: Option<Instant>,
    /// Forwarded packets dropped because the buffer was full.
    pub dropped: u64,
}

/// One UE at this gNB.
#[derive(Debug, Clone, PartialEq)]
pub struct UeContext {
    pub supi: String,
    /// The UE's testbed name, when it attached here (a handover does not carry it).
    pub ue_name: Option<String>,
    pub radio_id: u16,
    /// The N3 downlink TEID this gNB handed out for the UE.
    pub dl_teid: u32,
    /// Distinguishes this context from earlier ones of the same SUPI (stale answers and timers).
    pub epoch: u64,
    pub ue_radio: Option<SocketAddr>,
    pub ue_ipv4: Option<Ipv4Addr>,
    pub qfi: u8,
    /// Where uplink goes.
    pub upf_tunnel: Option<TunnelEndpoint>,
    pub phase: Phase,
    pub arrival: Option<Arrival>,
    pub packets_up: u64,
    pub packets_down: u64,
}

/// Counters of the whole gNB.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Counters {
    pub packets_up: u64,
    pub packets_down: u64,
    pub packets_forwarded: u64,
    /// Uplink frames with an unknown radio id or for a UE without a session.
    pub uplink_dropped: u64,
    /// G-PDUs and End Markers for TEIDs this gNB does not know.
    pub unknown_teid: u64,
    /// Downlink dropped because a handover buffer was full or the UE was unreachable.
    pub downlink_dropped: u64,
    /// Radio frames or GTP-U messages that did not parse (counted by the driver).
    pub malformed: u64,
    /// RRC messages that did not fit the UE's state.
    pub unexpected_rrc: u64,
    pub handovers_out: u64,
    pub handovers_in: u64,
}

/// The static facts the core needs.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    pub name: String,
    /// The radio address UEs reach (announced in HandoverRequestAck).
    pub radio: SocketAddrV4,
    pub n3_addr: Ipv4Addr,
    pub xn_addr: Ipv4Addr,
    pub qfi: u8,
    /// Peer gNB name → Xn base URL.
    pub peers: HashMap<String, String>,
}

/// All UE contexts of one gNB.
#[derive(Debug)]
pub struct GnbCore {
    config: CoreConfig,
    contexts: HashMap<String, UeContext>,
    by_radio_id: HashMap<u16, String>,
    by_teid: HashMap<u32, (String, TeidRole)>,
    next_radio_id: u16,
    next_teid: u32,
    next_epoch: u64,
    pub counters: Counters,
    /// An instant and the wall-clock time (µs since the Unix epoch) it corresponds to, so steps can
    /// be stamped on the host clock that every network function shares.
    wall_anchor: Option<(Instant, u64)>,
}

fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn step(step: impl Into<String>, at: Duration, took: Duration) -> TimelineStep {
    TimelineStep {
        step: step.into(),
        at_us: us(at),
        took_us: us(took),
        at_unix_us: None,
    }
}

/// The wall-clock time of `t`, given an anchor (an instant and its wall-clock time).
fn unix_at(anchor: Option<(Instant, u64)>, t: Instant) -> Option<u64> {
    anchor.map(|(i, u)| {
        if t >= i {
            u.saturating_add(us(t - i))
        } else {
            u.saturating_sub(us(i - t))
        }
    })
}

/// Stamps steps measured from `origin` with their wall-clock time.
fn stamp(anchor: Option<(Instant, u64)>, origin: Instant, steps: &mut [TimelineStep]) {
    if let Some(base) = unix_at(anchor, origin) {
        for s in steps.iter_mut().filter(|s| s.at_unix_us.is_none()) {
            s.at_unix_us = Some(base.saturating_add(s.at_us));
        }
    }
}

fn qfi_of(value: u8) -> Option<Qfi> {
    Qfi::new(value).ok()
}

impl GnbCore {
    pub fn new(config: CoreConfig) -> Self {
        Self {
            config,
            contexts: HashMap::new(),
            by_radio_id: HashMap::new(),
            by_teid: HashMap::new(),
            next_radio_id: 1,
            next_teid: 0x100,
            next_epoch: 1,
            counters: Counters::default(),
            wall_anchor: None,
        }
    }

    /// Ties this core's instants to the host's wall clock: `instant` is `unix_us` µs since the
    /// epoch. Timelines then carry wall-clock stamps and merge exactly with other processes'.
    pub fn set_wall_anchor(&mut self, instant: Instant, unix_us: u64) {
        self.wall_anchor = Some((instant, unix_us));
    }

    /// The gNB's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The context of `supi`, if any.
    pub fn context(&self, supi: &str) -> Option<&UeContext> {
        self.contexts.get(supi)
    }

    /// Every context, in no particular order.
    pub fn contexts(&self) -> impl Iterator<Item = &UeContext> {
        self.contexts.values()
    }

    /// Who a TEID this gNB handed out belongs to.
    pub fn teid_owner(&self, teid: u32) -> Option<&(String, TeidRole)> {
        self.by_teid.get(&teid)
    }

    /// Handles one event at `now`.
    pub fn handle(&mut self, now: Instant, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        match event {
            Event::Rrc { from, rrc } => self.on_rrc(now, from, rrc, &mut out),
            Event::Uplink {
                from: _,
                radio_id,
                packet,
            } => self.on_uplink(radio_id, &packet, &mut out),
            Event::Gtpu {
                from,
                repr,
                payload,
            } => self.on_gtpu(now, from, repr, payload, &mut out),
            Event::SessionSetup {
                supi,
                epoch,
                result,
            } => self.on_session_setup(&supi, epoch, result, &mut out),
            Event::Trigger { id, trigger } => self.on_trigger(now, id, trigger, &mut out),
            Event::HandoverPrepared {
                supi,
                epoch,
                result,
            } => self.on_prepared(now, &supi, epoch, result, &mut out),
            Event::HandoverRequest { id, request } => {
                self.on_handover_request(now, id, request, &mut out)
            }
            Event::UeContextRelease { id, release } => self.on_release(now, id, release, &mut out),
            Event::PathSwitched {
                supi,
                epoch,
                result,
            } => self.on_path_switched(now, &supi, epoch, result, &mut out),
            Event::Timer { supi, epoch, timer } => self.on_timer(&supi, epoch, timer, &mut out),
        }
        out
    }

    fn alloc_radio_id(&mut self) -> u16 {
        loop {
            let id = self.next_radio_id;
            self.next_radio_id = self.next_radio_id.checked_add(1).unwrap_or(1);
            if !self.by_radio_id.contains_key(&id) {
                return id;
            }
        }
    }

    fn alloc_teid(&mut self) -> u32 {
        loop {
            let t = self.next_teid;
            self.next_teid = self.next_teid.checked_add(1).unwrap_or(0x100);
            if t != 0 && !self.by_teid.contains_key(&t) {
                return t;
            }
        }
    }

    fn new_context(&mut self, supi: &str, ue_name: Option<String>, phase: Phase) -> &mut UeContext {
        self.remove_context(supi);
        let radio_id = self.alloc_radio_id();
        let dl_teid = self.alloc_teid();
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        self.by_radio_id.insert(radio_id, supi.to_owned());
        self.by_teid
            .insert(dl_teid, (supi.to_owned(), TeidRole::Downlink));
        self.contexts.entry(supi.to_owned()).or_insert(UeContext {
            supi: supi.to_owned(),
            ue_name,
            radio_id,
            dl_teid,
            epoch,
            ue_radio: None,
            ue_ipv4: None,
            qfi: self.config.qfi,
            upf_tunnel: None,
            phase,
            arrival: None,
            packets_up: 0,
            packets_down: 0,
        })
    }

    fn remove_context(&mut self, supi: &str) {
        if let Some(ctx) = self.contexts.remove(supi) {
            self.by_radio_id.remove(&ctx.radio_id);
            self.by_teid.remove(&ctx.dl_teid);
            if let Some(a) = ctx.arrival {
                self.by_teid.remove(&a.fwd_teid);
            }
            tracing::debug!(supi, "ue context removed");
        }
    }

    // ---- radio ----

    fn on_rrc(&mut self, now: Instant, from: SocketAddr, rrc: Rrc, out: &mut Vec<Action>) {
        match rrc {
            Rrc::AttachRequest { supi, ue_name } => self.on_attach(from, supi, ue_name, out),
            Rrc::HandoverConfirm { supi, radio_id } => {
                self.on_confirm(now, from, &supi, radio_id, out)
            }
            other => {
                self.counters.unexpected_rrc += 1;
                tracing::warn!(%from, rrc = ?other, "rrc message a gnb does not take");
            }
        }
    }

    fn on_attach(
        &mut self,
        from: SocketAddr,
        supi: String,
        ue_name: String,
        out: &mut Vec<Action>,
    ) {
        if let Some(ctx) = self.contexts.get_mut(&supi) {
            match ctx.phase {
                Phase::Attaching => {
                    // The SMF has not answered yet; the accept goes to the newest address.
                    ctx.ue_radio = Some(from);
                    return;
                }
                Phase::Connected => {
                    // A repeated request (the accept was lost): the same answer.
                    ctx.ue_radio = Some(from);
                    ctx.ue_name = Some(ue_name);
                    if let Some(ip) = ctx.ue_ipv4 {
                        out.push(Action::SendRadio {
                            to: from,
                            frame: radio::control_frame(&Rrc::AttachAccept {
                                radio_id: ctx.radio_id,
                                ue_ipv4: ip,
                                qfi: ctx.qfi,
                            }),
                        });
                    }
                    return;
                }
                _ => {
                    // In a handover: a fresh attach wins (the UE lost the old context).
                    tracing::warn!(
                        supi,
                        phase = ctx.phase.name(),
                        "attach during a handover: starting afresh"
                    );
                }
            }
        }
        let n3 = self.config.n3_addr;
        let gnb = self.config.name.clone();
        let ctx = self.new_context(&supi, Some(ue_name), Phase::Attaching);
        ctx.ue_radio = Some(from);
        tracing::info!(
            supi,
            radio_id = ctx.radio_id,
            dl_teid = ctx.dl_teid,
            "attach request"
        );
        out.push(Action::SetupPduSession {
            supi: supi.clone(),
            epoch: ctx.epoch,
            request: PduSessionSetupRequest {
                supi,
                gnb,
                gnb_tunnel: TunnelEndpoint {
                    ipv4: n3,
                    teid: ctx.dl_teid,
                },
            },
        });
    }

    fn on_session_setup(
        &mut self,
        supi: &str,
        epoch: u64,
        result: Result<PduSessionSetupResponse, String>,
        out: &mut Vec<Action>,
    ) {
        let default_qfi = self.config.qfi;
        let Some(ctx) = self.contexts.get_mut(supi) else {
            return;
        };
        if ctx.epoch != epoch || ctx.phase != Phase::Attaching {
            tracing::debug!(supi, "late pdu session answer ignored");
            return;
        }
        let Some(to) = ctx.ue_radio else { return };
        match result {
            Ok(resp) => {
                ctx.ue_ipv4 = Some(resp.ue_ipv4);
                ctx.qfi = if qfi_of(resp.qfi).is_some() {
                    resp.qfi
                } else {
                    default_qfi
                };
                ctx.upf_tunnel = Some(resp.upf_tunnel);
                ctx.phase = Phase::Connected;
                tracing::info!(supi, ue = %resp.ue_ipv4, upf = ?resp.upf_tunnel, "attached");
                out.push(Action::SendRadio {
                    to,
                    frame: radio::control_frame(&Rrc::AttachAccept {
                        radio_id: ctx.radio_id,
                        ue_ipv4: resp.ue_ipv4,
                        qfi: ctx.qfi,
                    }),
                });
            }
            Err(cause) => {
                tracing::warn!(supi, cause, "attach rejected");
                out.push(Action::SendRadio {
                    to,
                    frame: radio::control_frame(&Rrc::AttachReject { cause }),
                });
                self.remove_context(supi);
            }
        }
    }

    fn on_uplink(&mut self, radio_id: u16, packet: &[u8], out: &mut Vec<Action>) {
        let ctx = self
            .by_radio_id
            .get(&radio_id)
            .and_then(|s| self.contexts.get_mut(s));
        let Some(ctx) = ctx else {
            self.counters.uplink_dropped += 1;
            return;
        };
        let Some(tunnel) = ctx.upf_tunnel else {
            self.counters.uplink_dropped += 1;
            return;
        };
        let repr = GtpuRepr::g_pdu(
            Teid(tunnel.teid),
            qfi_of(ctx.qfi).map(PduSessionInfo::uplink),
        );
        match gtpu::to_vec(&repr, packet) {
            Ok(message) => {
                ctx.packets_up += 1;
                self.counters.packets_up += 1;
                out.push(Action::SendGtpu {
                    to: tunnel.ipv4,
                    message,
                });
            }
            Err(e) => {
                self.counters.uplink_dropped += 1;
                tracing::warn!(error = %e, "uplink packet does not fit a g-pdu");
            }
        }
    }

    fn on_confirm(
        &mut self,
        now: Instant,
        from: SocketAddr,
        supi: &str,
        radio_id: u16,
        out: &mut Vec<Action>,
    ) {
        let n3 = self.config.n3_addr;
        let gnb = self.config.name.clone();
        let Some(ctx) = self.contexts.get_mut(supi) else {
            self.counters.unexpected_rrc += 1;
            tracing::warn!(supi, "handover confirm for an unknown ue");
            return;
        };
        if ctx.radio_id != radio_id {
            self.counters.unexpected_rrc += 1;
            tracing::warn!(
                supi,
                radio_id,
                expected = ctx.radio_id,
                "handover confirm with a wrong radio id"
            );
            return;
        }
        match ctx.phase {
            Phase::AwaitingUe => {}
            Phase::PathSwitching | Phase::Connected => {
                // A repeated confirm: the UE's address may have changed, nothing else.
                ctx.ue_radio = Some(from);
                return;
            }
            _ => {
                self.counters.unexpected_rrc += 1;
                return;
            }
        }
        ctx.ue_radio = Some(from);
        ctx.phase = Phase::PathSwitching;
        let (Some(arrival), Some(ue_ipv4)) = (ctx.arrival.as_mut(), ctx.ue_ipv4) else {
            return;
        };
        let at = now - arrival.started;
        arrival.timeline.push(step(
            "ue arrived at target (handover confirm)",
            at,
            Duration::ZERO,
        ));
        let buffered = arrival.fwd_pending.len();
        arrival.path_switch_sent = Some(now);
        arrival.timeline.push(step(
            format!("forwarded packets buffered before arrival delivered: {buffered}"),
            at,
            Duration::ZERO,
        ));
        tracing::info!(supi, %from, buffered, "ue arrived; path switch");
        let request = PathSwitchRequest {
            supi: supi.to_owned(),
            ue_ipv4,
            gnb,
            gnb_tunnel: TunnelEndpoint {
                ipv4: n3,
                teid: ctx.dl_teid,
            },
        };
        let epoch = ctx.epoch;
        self.flush(supi, out);
        out.push(Action::PathSwitch {
            supi: supi.to_owned(),
            epoch,
            request,
        });
    }

    // ---- user plane ----

    fn deliver(counters: &mut Counters, ctx: &mut UeContext, packet: &[u8], out: &mut Vec<Action>) {
        match ctx.ue_radio {
            Some(to) => {
                ctx.packets_down += 1;
                counters.packets_down += 1;
                out.push(Action::SendRadio {
                    to,
                    frame: radio::data_frame(ctx.radio_id, packet),
                });
            }
            None => counters.downlink_dropped += 1,
        }
    }

    /// Target: delivers whatever the ordering rules allow.
    fn flush(&mut self, supi: &str, out: &mut Vec<Action>) {
        let Some(ctx) = self.contexts.get_mut(supi) else {
            return;
        };
        if ctx.ue_radio.is_none() || ctx.phase == Phase::AwaitingUe {
            return;
        }
        let Some(mut arrival) = ctx.arrival.take() else {
            return;
        };
        while let Some(p) = arrival.fwd_pending.pop_front() {
            Self::deliver(&mut self.counters, ctx, &p, out);
        }
        if arrival.end_marker || arrival.hold_expired {
            while let Some(p) = arrival.new_pending.pop_front() {
                Self::deliver(&mut self.counters, ctx, &p, out);
            }
        }
        ctx.arrival = Some(arrival);
    }

    fn buffered(a: &Arrival) -> usize {
        a.fwd_pending.len() + a.new_pending.len()
    }

    fn on_gtpu(
        &mut self,
        now: Instant,
        from: SocketAddr,
        repr: GtpuRepr,
        payload: Vec<u8>,
        out: &mut Vec<Action>,
    ) {
        match repr.msg_type {
            MessageType::EchoRequest => {
                let seq = repr.seq.unwrap_or(0);
                if let Ok(message) = gtpu::to_vec(&GtpuRepr::echo_response(seq), &gtpu::RECOVERY_IE)
                {
                    out.push(Action::ReplyGtpu { to: from, message });
                }
                return;
            }
            MessageType::GPdu | MessageType::EndMarker => {}
            other => {
                tracing::debug!(%from, kind = ?other, "gtp-u message ignored");
                return;
            }
        }
        let Some((supi, role)) = self.by_teid.get(&repr.teid.0).cloned() else {
            self.counters.unknown_teid += 1;
            tracing::debug!(%from, teid = %repr.teid, "gtp-u for an unknown teid");
            return;
        };
        let end_marker = repr.msg_type == MessageType::EndMarker;
        match role {
            TeidRole::Downlink => self.on_downlink(now, &supi, end_marker, payload, out),
            TeidRole::Forwarding => self.on_forwarded(&supi, end_marker, payload, out),
        }
    }

    fn on_downlink(
        &mut self,
        now: Instant,
        supi: &str,
        end_marker: bool,
        payload: Vec<u8>,
        out: &mut Vec<Action>,
    ) {
        let Some(ctx) = self.contexts.get_mut(supi) else {
            return;
        };
        if let Phase::Forwarding(ho) = &mut ctx.phase {
            let Some(tunnel) = ho.tunnel else { return };
            let repr = if end_marker {
                GtpuRepr::end_marker(Teid(tunnel.teid))
            } else {
                GtpuRepr::g_pdu(
                    Teid(tunnel.teid),
                    qfi_of(ctx.qfi).map(PduSessionInfo::downlink),
                )
            };
            let Ok(message) = gtpu::to_vec(&repr, &payload) else {
                self.counters.downlink_dropped += 1;
                return;
            };
            out.push(Action::SendGtpu {
                to: tunnel.ipv4,
                message,
            });
            if end_marker {
                ho.end_marker_forwarded = true;
                let at = now - ho.started;
                ho.timeline.push(step(
                    format!("end marker forwarded to {}", ho.target_gnb),
                    at,
                    Duration::ZERO,
                ));
                tracing::info!(supi, forwarded = ho.forwarded, "end marker forwarded");
                if ho.released {
                    self.remove_context(supi);
                }
            } else {
                ho.forwarded += 1;
                self.counters.packets_forwarded += 1;
            }
            return;
        }
        if end_marker {
            // An End Marker on our own downlink tunnel without a handover out: nothing to do.
            tracing::debug!(supi, "end marker on a tunnel that is not being forwarded");
            return;
        }
        match ctx.arrival.as_mut() {
            Some(a) if !(a.end_marker || a.hold_expired) || ctx.ue_radio.is_none() => {
                // New path before the old one ended: hold it back.
                if Self::buffered(a) >= MAX_BUFFERED {
                    self.counters.downlink_dropped += 1;
                    return;
                }
                a.new_pending.push_back(payload);
                if !a.hold_started {
                    a.hold_started = true;
                    out.push(Action::StartTimer {
                        supi: supi.to_owned(),
                        epoch: ctx.epoch,
                        timer: Timer::NewPathHold,
                        at: now + NEW_PATH_HOLD,
                    });
                }
            }
            _ => {
                if ctx.phase == Phase::Attaching || ctx.phase == Phase::AwaitingUe {
                    self.counters.downlink_dropped += 1;
                    return;
                }
                Self::deliver(&mut self.counters, ctx, &payload, out);
            }
        }
    }

    fn on_forwarded(
        &mut self,
        supi: &str,
        end_marker: bool,
        payload: Vec<u8>,
        out: &mut Vec<Action>,
    ) {
        let Some(ctx) = self.contexts.get_mut(supi) else {
            return;
        };
        let Some(a) = ctx.arrival.as_mut() else {
            return;
        };
        if end_marker {
            a.end_marker = true;
            tracing::info!(supi, "end marker arrived over xn-u");
            self.flush(supi, out);
            // With the path switched and the old path ended, the forwarding tunnel is done.
            if let Some(ctx) = self.contexts.get_mut(supi) {
                if ctx.phase == Phase::Connected {
                    if let Some(a) = ctx.arrival.take() {
                        self.by_teid.remove(&a.fwd_teid);
                    }
                }
            }
            return;
        }
        if ctx.phase == Phase::AwaitingUe || ctx.ue_radio.is_none() {
            if Self::buffered(a) >= MAX_BUFFERED {
                a.dropped += 1;
                self.counters.downlink_dropped += 1;
                return;
            }
            a.fwd_pending.push_back(payload);
            return;
        }
        Self::deliver(&mut self.counters, ctx, &payload, out);
    }

    // ---- source side ----

    fn find_ue(&self, ue: &str) -> Option<String> {
        if self.contexts.contains_key(ue) {
            return Some(ue.to_owned());
        }
        self.contexts
            .values()
            .find(|c| c.ue_name.as_deref() == Some(ue))
            .map(|c| c.supi.clone())
    }

    fn on_trigger(
        &mut self,
        now: Instant,
        id: RequestId,
        t: HandoverTrigger,
        out: &mut Vec<Action>,
    ) {
        let fail = |status, detail: String| Action::AnswerTrigger {
            id,
            result: Err(Failure::new(status, detail)),
        };
        let Some(supi) = self.find_ue(&t.ue) else {
            out.push(fail(
                404,
                format!("no ue `{}` at {}", t.ue, self.config.name),
            ));
            return;
        };
        if t.target_gnb == self.config.name {
            out.push(fail(
                400,
                format!("ue `{}` is already served by {}", t.ue, t.target_gnb),
            ));
            return;
        }
        let Some(xn_url) = self.config.peers.get(&t.target_gnb).cloned() else {
            out.push(fail(400, format!("unknown target gnb `{}`", t.target_gnb)));
            return;
        };
        let name = self.config.name.clone();
        let Some(ctx) = self.contexts.get_mut(&supi) else {
            return;
        };
        let (Phase::Connected, Some(ue_ipv4), Some(upf_tunnel), None) =
            (&ctx.phase, ctx.ue_ipv4, ctx.upf_tunnel, &ctx.arrival)
        else {
            out.push(fail(
                409,
                format!(
                    "ue `{}` is {} here, not ready for a handover",
                    t.ue,
                    ctx.phase.name()
                ),
            ));
            return;
        };
        tracing::info!(supi, target = t.target_gnb, "handover triggered");
        ctx.phase = Phase::Preparing(SourceHandover {
            trigger: id,
            target_gnb: t.target_gnb.clone(),
            started: now,
            request_sent: now,
            acked: None,
            timeline: Vec::new(),
            tunnel: None,
            forwarded: 0,
            end_marker_forwarded: false,
            released: false,
        });
        out.push(Action::RequestHandover {
            supi: supi.clone(),
            epoch: ctx.epoch,
            xn_url,
            request: HandoverRequest {
                source_gnb: name,
                supi: supi.clone(),
                ue_ipv4,
                qfi: ctx.qfi,
                upf_tunnel,
                ue_name: ctx.ue_name.clone(),
            },
        });
        out.push(Action::StartTimer {
            supi,
            epoch: ctx.epoch,
            timer: Timer::HandoverGuard,
            at: now + HANDOVER_GUARD,
        });
    }

    fn on_prepared(
        &mut self,
        now: Instant,
        supi: &str,
        epoch: u64,
        result: Result<HandoverRequestAck, String>,
        out: &mut Vec<Action>,
    ) {
        let Some(ctx) = self.contexts.get_mut(supi) else {
            return;
        };
        if ctx.epoch != epoch {
            return;
        }
        let Phase::Preparing(ho) = &mut ctx.phase else {
            return;
        };
        let mut ho = ho.clone();
        match result {
            Err(detail) => {
                tracing::warn!(
                    supi,
                    target = ho.target_gnb,
                    detail,
                    "handover preparation failed"
                );
                out.push(Action::AnswerTrigger {
                    id: ho.trigger,
                    result: Err(Failure::new(
                        502,
                        format!("target {} refused the handover: {detail}", ho.target_gnb),
                    )),
                });
                ctx.phase = Phase::Connected;
            }
            Ok(ack) => {
                ho.timeline.push(step(
                    format!("handover request to {} (acknowledged)", ho.target_gnb),
                    ho.request_sent - ho.started,
                    now - ho.request_sent,
                ));
                ho.timeline.push(step(
                    "handover command to ue",
                    now - ho.started,
                    Duration::ZERO,
                ));
                ho.tunnel = Some(ack.forwarding_tunnel);
                ho.acked = Some(now);
                let Some(to) = ctx.ue_radio else { return };
                tracing::info!(
                    supi,
                    target = ho.target_gnb,
                    radio_id = ack.radio_id,
                    "handover command"
                );
                out.push(Action::SendRadio {
                    to,
                    frame: radio::control_frame(&Rrc::HandoverCommand {
                        target_gnb: ho.target_gnb.clone(),
                        target: ack.radio,
                        radio_id: ack.radio_id,
                    }),
                });
                ctx.phase = Phase::Forwarding(ho);
            }
        }
    }

    fn on_release(
        &mut self,
        now: Instant,
        id: RequestId,
        r: UeContextRelease,
        out: &mut Vec<Action>,
    ) {
        let name = self.config.name.clone();
        let Some(ctx) = self.contexts.get_mut(&r.supi) else {
            out.push(Action::AnswerRelease {
                id,
                result: Err(Failure::new(404, format!("no ue context for {}", r.supi))),
            });
            return;
        };
        let (ue_ipv4, epoch) = (ctx.ue_ipv4, ctx.epoch);
        let Phase::Forwarding(ho) = &mut ctx.phase else {
            out.push(Action::AnswerRelease {
                id,
                result: Err(Failure::new(
                    409,
                    format!(
                        "ue {} is {} here, not handed over",
                        r.supi,
                        ctx.phase.name()
                    ),
                )),
            });
            return;
        };
        out.push(Action::AnswerRelease { id, result: Ok(()) });
        if ho.released {
            return;
        }
        if ho.target_gnb != r.target_gnb {
            tracing::warn!(
                supi = r.supi,
                expected = ho.target_gnb,
                got = r.target_gnb,
                "release from another gnb"
            );
        }
        ho.released = true;
        // The target's steps are relative to the HandoverRequest's arrival there, which has no
        // common clock with ours. We place that instant at the arrival of its acknowledgement
        // here: the target acknowledges at once, so this errs late by the answer's one-way delay
        // and keeps cause before effect (the UE's arrival at the target after our
        // HandoverCommand). The sending time would err early by the request's delay, which
        // includes the h2c connection set-up on a first handover (several ms).
        // With a wall-clock anchor (the real binary) the target's and the SMF's steps carry the
        // host's wall-clock time, shared by all processes, and line up exactly.
        let shift = ho.acked.unwrap_or(ho.request_sent) - ho.started;
        let origin = unix_at(self.wall_anchor, ho.started);
        let mut timeline = ho.timeline.clone();
        timeline.extend(r.timeline.iter().map(|s| TimelineStep {
            step: s.step.clone(),
            at_us: match (s.at_unix_us, origin) {
                (Some(u), Some(o)) => u.saturating_sub(o),
                _ => s.at_us.saturating_add(us(shift)),
            },
            took_us: s.took_us,
            at_unix_us: s.at_unix_us,
        }));
        timeline.push(step(
            format!("ue context release from {}", r.target_gnb),
            now - ho.started,
            Duration::ZERO,
        ));
        timeline.sort_by_key(|s| s.at_us);
        let report = HandoverReport {
            supi: r.supi.clone(),
            ue_ipv4: ue_ipv4.unwrap_or(Ipv4Addr::UNSPECIFIED),
            source_gnb: name,
            target_gnb: ho.target_gnb.clone(),
            timeline,
            forwarded_packets: ho.forwarded,
        };
        tracing::info!(supi = r.supi, forwarded = ho.forwarded, "handover complete");
        self.counters.handovers_out += 1;
        out.push(Action::AnswerTrigger {
            id: ho.trigger,
            result: Ok(report),
        });
        if ho.end_marker_forwarded {
            self.remove_context(&r.supi);
        } else {
            out.push(Action::StartTimer {
                supi: r.supi,
                epoch,
                timer: Timer::ReleaseLinger,
                at: now + RELEASE_LINGER,
            });
        }
    }

    // ---- target side ----

    fn on_handover_request(
        &mut self,
        now: Instant,
        id: RequestId,
        req: HandoverRequest,
        out: &mut Vec<Action>,
    ) {
        let radio = self.config.radio;
        let xn = self.config.xn_addr;
        if let Some(ctx) = self.contexts.get(&req.supi) {
            match (&ctx.phase, &ctx.arrival) {
                (Phase::AwaitingUe, Some(a)) if a.source_gnb == req.source_gnb => {
                    // A retried request: the same answer.
                    out.push(Action::AnswerHandoverRequest {
                        id,
                        result: Ok(HandoverRequestAck {
                            radio_id: ctx.radio_id,
                            radio,
                            forwarding_tunnel: TunnelEndpoint {
                                ipv4: xn,
                                teid: a.fwd_teid,
                            },
                        }),
                    });
                    return;
                }
                (Phase::Forwarding(ho), _) if ho.released => {
                    // We handed it out and it comes straight back: the old context goes.
                }
                (phase, _) => {
                    out.push(Action::AnswerHandoverRequest {
                        id,
                        result: Err(Failure::new(
                            409,
                            format!(
                                "ue {} is already {} at {}",
                                req.supi,
                                phase.name(),
                                self.config.name
                            ),
                        )),
                    });
                    return;
                }
            }
        }
        if !self.config.peers.contains_key(&req.source_gnb) {
            tracing::warn!(
                source = req.source_gnb,
                "handover request from a gnb that is not a peer"
            );
        }
        let fwd_teid = self.alloc_teid();
        let supi = req.supi.clone();
        let ctx = self.new_context(&supi, req.ue_name.clone(), Phase::AwaitingUe);
        ctx.ue_ipv4 = Some(req.ue_ipv4);
        ctx.qfi = req.qfi;
        ctx.upf_tunnel = Some(req.upf_tunnel);
        ctx.arrival = Some(Arrival {
            source_gnb: req.source_gnb.clone(),
            fwd_teid,
            started: now,
            timeline: vec![step(
                format!("handover request from {} admitted", req.source_gnb),
                Duration::ZERO,
                Duration::ZERO,
            )],
            fwd_pending: VecDeque::new(),
            new_pending: VecDeque::new(),
            end_marker: false,
            hold_expired: false,
            hold_started: false,
            path_switch_sent: None,
            dropped: 0,
        });
        let (radio_id, epoch) = (ctx.radio_id, ctx.epoch);
        self.by_teid
            .insert(fwd_teid, (supi.clone(), TeidRole::Forwarding));
        tracing::info!(
            supi,
            source = req.source_gnb,
            radio_id,
            fwd_teid,
            "handover prepared"
        );
        out.push(Action::AnswerHandoverRequest {
            id,
            result: Ok(HandoverRequestAck {
                radio_id,
                radio,
                forwarding_tunnel: TunnelEndpoint {
                    ipv4: xn,
                    teid: fwd_teid,
                },
            }),
        });
        out.push(Action::StartTimer {
            supi,
            epoch,
            timer: Timer::AwaitingUe,
            at: now + AWAITING_UE_GUARD,
        });
    }

    fn on_path_switched(
        &mut self,
        now: Instant,
        supi: &str,
        epoch: u64,
        result: Result<PathSwitchAck, String>,
        out: &mut Vec<Action>,
    ) {
        let Some(ctx) = self.contexts.get_mut(supi) else {
            return;
        };
        if ctx.epoch != epoch || ctx.phase != Phase::PathSwitching {
            return;
        }
        let Some(a) = ctx.arrival.as_mut() else {
            return;
        };
        let sent = a.path_switch_sent.unwrap_or(now);
        match result {
            Err(detail) => {
                // The UE stays here on the old UPF's uplink tunnel; no release is sent, so the
                // source's trigger fails on its guard timer.
                tracing::error!(
                    supi,
                    detail,
                    "path switch failed; uplink stays on the old upf"
                );
                a.timeline.push(step(
                    format!("path switch request to smf failed: {detail}"),
                    sent - a.started,
                    now - sent,
                ));
                ctx.phase = Phase::Connected;
            }
            Ok(ack) => {
                a.timeline.push(step(
                    format!("path switch request to smf (acknowledged, {})", ack.upf),
                    sent - a.started,
                    now - sent,
                ));
                let shift = us(sent - a.started);
                let origin = unix_at(self.wall_anchor, a.started);
                a.timeline.extend(ack.timeline.iter().map(|s| TimelineStep {
                    step: format!("smf: {}", s.step),
                    at_us: match (s.at_unix_us, origin) {
                        (Some(u), Some(o)) => u.saturating_sub(o),
                        _ => s.at_us.saturating_add(shift),
                    },
                    took_us: s.took_us,
                    at_unix_us: s.at_unix_us,
                }));
                a.timeline.push(step(
                    format!("ue context release to {}", a.source_gnb),
                    now - a.started,
                    Duration::ZERO,
                ));
                a.timeline.sort_by_key(|s| s.at_us);
                ctx.upf_tunnel = Some(ack.upf_tunnel);
                ctx.phase = Phase::Connected;
                self.counters.handovers_in += 1;
                tracing::info!(supi, upf = ack.upf, tunnel = ?ack.upf_tunnel, "path switched");
                let mut timeline = a.timeline.clone();
                stamp(self.wall_anchor, a.started, &mut timeline);
                let release = UeContextRelease {
                    target_gnb: self.config.name.clone(),
                    supi: supi.to_owned(),
                    timeline,
                };
                match self.config.peers.get(&a.source_gnb) {
                    Some(url) => out.push(Action::ReleaseUeContext {
                        xn_url: url.clone(),
                        release,
                    }),
                    None => tracing::error!(
                        source = a.source_gnb,
                        "cannot release: source is not a peer"
                    ),
                }
                if a.end_marker {
                    let fwd = a.fwd_teid;
                    ctx.arrival = None;
                    self.by_teid.remove(&fwd);
                } else {
                    out.push(Action::StartTimer {
                        supi: supi.to_owned(),
                        epoch,
                        timer: Timer::ForwardingDone,
                        at: now + FORWARDING_TUNNEL_LIFETIME,
                    });
                }
            }
        }
    }

    fn on_timer(&mut self, supi: &str, epoch: u64, timer: Timer, out: &mut Vec<Action>) {
        let Some(ctx) = self.contexts.get_mut(supi) else {
            return;
        };
        if ctx.epoch != epoch {
            return;
        }
        match timer {
            Timer::ReleaseLinger => {
                if matches!(&ctx.phase, Phase::Forwarding(ho) if ho.released) {
                    tracing::info!(
                        supi,
                        "no end marker within 1 s of the release; context dropped"
                    );
                    self.remove_context(supi);
                }
            }
            Timer::HandoverGuard => match &ctx.phase {
                Phase::Preparing(ho) => {
                    out.push(Action::AnswerTrigger {
                        id: ho.trigger,
                        result: Err(Failure::new(
                            504,
                            format!("no answer from {}", ho.target_gnb),
                        )),
                    });
                    ctx.phase = Phase::Connected;
                }
                Phase::Forwarding(ho) if !ho.released => {
                    out.push(Action::AnswerTrigger {
                        id: ho.trigger,
                        result: Err(Failure::new(
                            504,
                            format!(
                                "ue left for {} but no ue context release came within {} s (ue arrival or path switch failed there)",
                                ho.target_gnb,
                                HANDOVER_GUARD.as_secs()
                            ),
                        )),
                    });
                    self.remove_context(supi);
                }
                _ => {}
            },
            Timer::NewPathHold => {
                if let Some(a) = ctx.arrival.as_mut() {
                    if !a.end_marker {
                        tracing::info!(
                            supi,
                            held = a.new_pending.len(),
                            "no end marker within 200 ms; new path released"
                        );
                    }
                    a.hold_expired = true;
                    self.flush(supi, out);
                }
            }
            Timer::ForwardingDone => {
                if ctx.phase == Phase::Connected {
                    if let Some(a) = ctx.arrival.take() {
                        self.by_teid.remove(&a.fwd_teid);
                        // Whatever still waits goes out now, in arrival order per path.
                        let mut a = a;
                        let pending: Vec<Vec<u8>> = a
                            .fwd_pending
                            .drain(..)
                            .chain(a.new_pending.drain(..))
                            .collect();
                        for p in pending {
                            Self::deliver(&mut self.counters, ctx, &p, out);
                        }
                    }
                }
            }
            Timer::AwaitingUe => {
                if ctx.phase == Phase::AwaitingUe {
                    tracing::warn!(supi, "ue never arrived; prepared context dropped");
                    self.remove_context(supi);
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "context_tests.rs"]
mod tests;

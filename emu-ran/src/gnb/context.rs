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
//!          (no answer or 5xx from the SMF: PathSwitching, the request again after a backoff)
//! ```
//!
//! This file holds the types, the context table (radio ids, TEIDs, epochs) and the dispatch of
//! [`GnbCore::handle`]; each role's transitions are in a file of their own: [`attach`] (attach
//! and PDU session setup), [`user_plane`] (uplink, GTP-U in, delivery to the UE), [`source`]
//! (handing a UE out) and [`target`] (taking a UE in). Each has its tests beside it
//! (`*_tests.rs`, sharing the fixtures in `fixtures.rs`).

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
use wire::gtpu::{GtpuRepr, Qfi};

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
/// The first wait before a path switch the SMF did not answer is sent again; it doubles up to
/// [`PATH_SWITCH_RETRY_MAX`].
pub const PATH_SWITCH_RETRY_FIRST: Duration = Duration::from_millis(100);
/// The longest wait between two tries of a path switch.
pub const PATH_SWITCH_RETRY_MAX: Duration = Duration::from_secs(1);
/// How long after its first try a path switch is tried again at the most (the source's trigger
/// gives up after [`HANDOVER_GUARD`] from the trigger, which came earlier).
pub const PATH_SWITCH_GUARD: Duration = HANDOVER_GUARD;

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

/// Why a call to the core failed, and whether trying again may help (no answer, or a 5xx: the
/// SMF answers a repeated path switch with the same result).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallFailure {
    pub detail: String,
    pub retry: bool,
}

impl CallFailure {
    /// A failure that another try will not change (a 4xx, an answer that does not parse).
    pub fn refused(detail: impl Into<String>) -> Self {
        Self {
            detail: detail.into(),
            retry: false,
        }
    }

    /// A failure another try may mend (no answer, a 5xx).
    pub fn transient(detail: impl Into<String>) -> Self {
        Self {
            detail: detail.into(),
            retry: true,
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
    /// Target: send the path switch again.
    PathSwitchRetry,
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
        result: Result<PathSwitchAck, CallFailure>,
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
    /// When the first PathSwitchRequest was sent.
    pub path_switch_sent: Option<Instant>,
    /// PathSwitchRequests sent (tries).
    pub path_switch_tries: u32,
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

mod attach;
#[cfg(test)]
mod fixtures;
mod source;
mod target;
mod user_plane;

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

    fn on_timer(&mut self, supi: &str, epoch: u64, timer: Timer, out: &mut Vec<Action>) {
        if self.contexts.get(supi).is_none_or(|ctx| ctx.epoch != epoch) {
            return;
        }
        match timer {
            Timer::ReleaseLinger => self.on_release_linger(supi),
            Timer::HandoverGuard => self.on_handover_guard(supi, out),
            Timer::NewPathHold => self.on_new_path_hold(supi, out),
            Timer::ForwardingDone => self.on_forwarding_done(supi, out),
            Timer::AwaitingUe => self.on_awaiting_ue(supi),
            Timer::PathSwitchRetry => self.on_path_switch_retry(supi, out),
        }
    }
}

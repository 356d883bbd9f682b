//! The UPF: PFCP (N4) from the SMF, GTP-U on N3 (from and to gNBs) and N9 (from IAPs), and a TUN
//! device towards N6 through the site's kernel.
//!
//! * Uplink: a G-PDU whose TEID matches a PDR with a FAR without Outer Header Creation (the
//!   uplink PDR, source ACCESS) is decapsulated and its inner packet written to the TUN.
//! * Downlink: a G-PDU whose TEID matches a PDR whose FAR has Outer Header Creation (the downlink
//!   PDR, source CORE, fed by an IAP over N9) is re-encapsulated with the gNB's TEID and a DL PDU
//!   Session Container (QFI of the incoming container, else 9) and sent to the gNB's port 2152.
//! * Update FAR with SNDEM: an End Marker goes to the FAR's current tunnel before the new
//!   parameters apply. Everything runs in one task, so no G-PDU can overtake it.
//!
//! The session table ([`session`]) and the message handling ([`UpfState`]) do no I/O; [`Upf`]
//! owns the sockets and the [`PacketPort`]. Counters are logged as one JSON line
//! (`upf counters summary=…`) at shutdown.

pub mod port;
pub mod session;

use port::{PacketPort, TunPort};
use sbi::ratelog::LogLimiter;
use serde::{Deserialize, Serialize};
use session::{Flow, Session, SessionCounters, SessionTable, Tunnel, Verdict, CAUSE_RULE_FAILURE};
use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::net::UdpSocket;
use wire::gtpu::{self, GtpuRepr, MessageType, Qfi, Teid};
use wire::pfcp::{
    AssociationSetup, Cause, FSeid, Heartbeat, Message, NodeId, SessionEstablishmentResponse,
    SessionResponse,
};

/// QFI of the DL PDU Session Container when the incoming G-PDU has none.
pub const DEFAULT_QFI: u8 = 9;

/// Answers remembered for retransmitted PFCP requests (TS 29.244 clause 6.4).
pub const REMEMBERED_ANSWERS: usize = 256;

/// Offset between the NTP era (1900) and the Unix epoch, in seconds.
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// The UPF's config file (`upf --config upf-a.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpfConfig {
    /// The UPF's name, e.g. `upf-a` (logs).
    pub name: String,
    /// Where PFCP is served, e.g. `10.100.0.21:8805`; its IP is the Node ID and the UP F-SEID
    /// address.
    pub pfcp_addr: SocketAddrV4,
    /// This UPF's N3 address (in the F-TEIDs of uplink PDRs).
    pub n3_addr: Ipv4Addr,
    /// This UPF's N9 address (in the F-TEIDs of downlink PDRs).
    pub n9_addr: Ipv4Addr,
    /// The GTP-U socket, e.g. `0.0.0.0:2152` (N3 and N9).
    pub gtpu_bind: SocketAddrV4,
    /// TUN device for uplink packets towards N6 / the DN, e.g. `upf0`.
    pub tun: String,
    /// The TUN's address (/32), e.g. `10.255.0.1`.
    pub tun_addr: Ipv4Addr,
}

/// Why the UPF could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum UpfError {
    #[error("cannot create tun device {name}")]
    Tun {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot bind {what} socket on {addr}")]
    Bind {
        what: &'static str,
        addr: SocketAddrV4,
        #[source]
        source: std::io::Error,
    },
}

/// Counters of the UPF as a whole (per-session ones are in [`SessionCounters`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UpfCounters {
    /// PFCP messages received (parsed or not).
    pub pfcp_messages: u64,
    /// PFCP datagrams that did not parse.
    pub pfcp_malformed: u64,
    /// PFCP messages a UPF does not expect (responses).
    pub pfcp_unexpected: u64,
    /// Session requests answered "session context not found".
    pub pfcp_unknown_seid: u64,
    /// Session requests answered "rule creation/modification failure".
    pub pfcp_rejected: u64,
    /// Retransmitted requests answered again from memory, without applying them twice.
    pub pfcp_retransmissions: u64,
    /// GTP-U datagrams received.
    pub gtpu_messages: u64,
    /// GTP-U datagrams that did not parse.
    pub gtpu_malformed: u64,
    /// G-PDUs whose TEID no PDR matches (dropped).
    pub gtpu_unknown_teid: u64,
    /// Echo Requests answered.
    pub gtpu_echo_requests: u64,
    /// Other GTP-U messages (End Marker, Error Indication, …), ignored.
    pub gtpu_ignored: u64,
    /// Packets read from the TUN (not expected: dropped).
    pub tun_packets_dropped: u64,
    /// Sends that failed (socket or TUN errors).
    pub send_errors: u64,
}

/// A snapshot of the UPF: its counters, its sessions, and totals over every session it ever had.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UpfStatus {
    pub name: String,
    pub counters: UpfCounters,
    /// Sum over deleted and live sessions.
    pub session_totals: SessionCounters,
    pub sessions: Vec<Session>,
}

/// What the UPF must do after a PFCP message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PfcpReaction {
    /// End Markers to send, before anything else.
    pub end_markers: Vec<Tunnel>,
    /// The response to send back to the requester.
    pub reply: Option<Message>,
}

/// What the UPF must do with a GTP-U datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GtpuAction<'a> {
    /// Answer an Echo Request with this sequence number.
    EchoResponse(u16),
    /// Write the inner packet to N6.
    ToN6 { seid: u64, packet: &'a [u8] },
    /// Re-encapsulate towards a gNB.
    ToTunnel {
        seid: u64,
        tunnel: Tunnel,
        qfi: Qfi,
        packet: &'a [u8],
    },
    /// Nothing to send (dropped or ignored; already counted).
    Nothing,
}

/// The UPF's state and its reactions to messages. No I/O.
#[derive(Debug, Clone)]
pub struct UpfState {
    name: String,
    node_ip: Ipv4Addr,
    recovery_time_stamp: u32,
    /// The CP function associated with, and its Recovery Time Stamp.
    association: Option<(NodeId, u32)>,
    table: SessionTable,
    counters: UpfCounters,
    retired: SessionCounters,
    /// Recent answers by (requester, sequence number, request type), oldest first.
    answers: VecDeque<((SocketAddr, u32, u8), Message)>,
    /// Log lines about PFCP a peer got wrong (malformed, unexpected, unknown session), bounded.
    pfcp_noise: LogLimiter,
    /// Log lines about malformed GTP-U, bounded.
    gtpu_noise: LogLimiter,
}

impl UpfState {
    /// A UPF with no sessions; `node_ip` is its Node ID and UP F-SEID address.
    pub fn new(name: impl Into<String>, node_ip: Ipv4Addr, recovery_time_stamp: u32) -> Self {
        Self {
            name: name.into(),
            node_ip,
            recovery_time_stamp,
            association: None,
            table: SessionTable::new(),
            counters: UpfCounters::default(),
            retired: SessionCounters::default(),
            answers: VecDeque::new(),
            pfcp_noise: LogLimiter::new(),
            gtpu_noise: LogLimiter::new(),
        }
    }

    /// The session table.
    pub fn table(&self) -> &SessionTable {
        &self.table
    }

    /// The UPF-wide counters.
    pub fn counters(&self) -> UpfCounters {
        self.counters
    }

    /// A snapshot for logs and tests.
    pub fn status(&self) -> UpfStatus {
        let mut totals = self.retired;
        for s in self.table.sessions() {
            add(&mut totals, &s.counters);
        }
        UpfStatus {
            name: self.name.clone(),
            counters: self.counters,
            session_totals: totals,
            sessions: self.table.sessions().cloned().collect(),
        }
    }

    /// Handles one PFCP datagram from `from`. A retransmitted request (same requester, sequence
    /// number and type as a recent one) gets the same answer again and changes nothing.
    pub fn on_pfcp(&mut self, datagram: &[u8], from: SocketAddr) -> PfcpReaction {
        self.counters.pfcp_messages += 1;
        let msg = match Message::parse(datagram) {
            Ok(m) => m,
            Err(error) => {
                self.counters.pfcp_malformed += 1;
                if let Some(suppressed) = self.pfcp_noise.allow() {
                    tracing::warn!(%error, len = datagram.len(), %from, malformed = self.counters.pfcp_malformed, suppressed, "malformed pfcp message dropped");
                }
                return PfcpReaction::default();
            }
        };
        if let Message::AssociationSetupRequest(a) = &msg {
            if self.association != Some((a.node_id, a.recovery_time_stamp)) {
                // A new or restarted CP function: it numbers its requests afresh, and answers
                // kept for its previous run must not answer them. Its sessions stay.
                self.answers.retain(|((peer, _, _), _)| *peer != from);
            }
        }
        let header = msg.header();
        let key = (from, header.seq, header.msg_type);
        if let Some((_, answer)) = self.answers.iter().find(|(k, _)| *k == key) {
            self.counters.pfcp_retransmissions += 1;
            tracing::info!(%from, seq = header.seq, msg_type = header.msg_type, "retransmitted pfcp request answered again");
            return PfcpReaction {
                end_markers: Vec::new(),
                reply: Some(answer.clone()),
            };
        }
        let reaction = self.apply(msg);
        if let Some(answer) = &reaction.reply {
            if self.answers.len() == REMEMBERED_ANSWERS {
                self.answers.pop_front();
            }
            self.answers.push_back((key, answer.clone()));
        }
        reaction
    }

    fn apply(&mut self, msg: Message) -> PfcpReaction {
        let node_id = NodeId::Ipv4(self.node_ip);
        let mut reaction = PfcpReaction::default();
        reaction.reply = Some(match msg {
            Message::HeartbeatRequest(h) => Message::HeartbeatResponse(Heartbeat {
                seq: h.seq,
                recovery_time_stamp: self.recovery_time_stamp,
            }),
            Message::AssociationSetupRequest(a) => {
                tracing::info!(peer = ?a.node_id, recovery_time_stamp = a.recovery_time_stamp,
                    sessions = self.table.sessions().count(), "pfcp association set up (sessions kept)");
                self.association = Some((a.node_id, a.recovery_time_stamp));
                Message::AssociationSetupResponse(AssociationSetup {
                    seq: a.seq,
                    node_id,
                    cause: Some(Cause::ACCEPTED),
                    recovery_time_stamp: self.recovery_time_stamp,
                })
            }
            Message::SessionEstablishmentRequest(req) => {
                if self.association.is_none() {
                    tracing::warn!(smf = ?req.node_id, "session establishment without association, accepted anyway");
                }
                let (cause, up_f_seid) = match self.table.establish(&req) {
                    Ok(seid) => {
                        tracing::info!(
                            up_seid = seid,
                            cp_seid = req.cp_f_seid.seid,
                            pdrs = req.create_pdrs.len(),
                            fars = req.create_fars.len(),
                            "pfcp session established"
                        );
                        (
                            Cause::ACCEPTED,
                            Some(FSeid {
                                seid,
                                ipv4: self.node_ip,
                            }),
                        )
                    }
                    Err(error) => {
                        self.counters.pfcp_rejected += 1;
                        tracing::warn!(%error, cp_seid = req.cp_f_seid.seid, "pfcp session establishment rejected");
                        (CAUSE_RULE_FAILURE, None)
                    }
                };
                Message::SessionEstablishmentResponse(SessionEstablishmentResponse {
                    seid: req.cp_f_seid.seid,
                    seq: req.seq,
                    node_id,
                    cause,
                    up_f_seid,
                })
            }
            Message::SessionModificationRequest(req) => {
                let (seid, cause) = match self.table.modify(&req) {
                    Ok(end_markers) => {
                        tracing::info!(
                            up_seid = req.seid,
                            end_markers = end_markers.len(),
                            update_fars = req.update_fars.len(),
                            "pfcp session modified"
                        );
                        reaction.end_markers = end_markers;
                        (self.cp_seid(req.seid), Cause::ACCEPTED)
                    }
                    Err(e) => self.refusal(req.seid, e),
                };
                Message::SessionModificationResponse(SessionResponse {
                    seid,
                    seq: req.seq,
                    cause,
                })
            }
            Message::SessionDeletionRequest(req) => {
                let (seid, cause) = match self.table.delete(req.seid) {
                    Ok(s) => {
                        add(&mut self.retired, &s.counters);
                        tracing::info!(
                            up_seid = req.seid,
                            counters = %serde_json::to_string(&s.counters).unwrap_or_default(),
                            "pfcp session deleted"
                        );
                        (s.cp_seid, Cause::ACCEPTED)
                    }
                    Err(e) => self.refusal(req.seid, e),
                };
                Message::SessionDeletionResponse(SessionResponse {
                    seid,
                    seq: req.seq,
                    cause,
                })
            }
            other => {
                self.counters.pfcp_unexpected += 1;
                if let Some(suppressed) = self.pfcp_noise.allow() {
                    tracing::warn!(
                        msg_type = other.header().msg_type,
                        unexpected = self.counters.pfcp_unexpected,
                        suppressed,
                        "unexpected pfcp message ignored"
                    );
                }
                return PfcpReaction::default();
            }
        });
        reaction
    }

    fn cp_seid(&self, up_seid: u64) -> u64 {
        self.table.get(up_seid).map_or(0, |s| s.cp_seid)
    }

    /// The header SEID and cause of a refused modification or deletion.
    fn refusal(&mut self, up_seid: u64, error: session::SessionError) -> (u64, Cause) {
        match error {
            session::SessionError::NotFound(_) => {
                self.counters.pfcp_unknown_seid += 1;
                if let Some(suppressed) = self.pfcp_noise.allow() {
                    tracing::warn!(up_seid, suppressed, "pfcp request for unknown session");
                }
                // TS 29.244 7.2.2.4.2: SEID 0 when the session is not known.
                (0, Cause::SESSION_CONTEXT_NOT_FOUND)
            }
            error => {
                self.counters.pfcp_rejected += 1;
                tracing::warn!(up_seid, %error, "pfcp session modification rejected");
                (self.cp_seid(up_seid), CAUSE_RULE_FAILURE)
            }
        }
    }

    /// Handles one GTP-U datagram.
    pub fn on_gtpu<'a>(&mut self, datagram: &'a [u8]) -> GtpuAction<'a> {
        self.counters.gtpu_messages += 1;
        let (repr, payload) = match gtpu::decapsulate(datagram) {
            Ok(v) => v,
            Err(error) => {
                self.counters.gtpu_malformed += 1;
                if let Some(suppressed) = self.gtpu_noise.allow() {
                    tracing::warn!(%error, len = datagram.len(), malformed = self.counters.gtpu_malformed, suppressed, "malformed gtp-u dropped");
                }
                return GtpuAction::Nothing;
            }
        };
        match repr.msg_type {
            MessageType::EchoRequest => {
                self.counters.gtpu_echo_requests += 1;
                GtpuAction::EchoResponse(repr.seq.unwrap_or(0))
            }
            MessageType::GPdu => match self.table.lookup(repr.teid) {
                Verdict::ToN6 { seid } => GtpuAction::ToN6 {
                    seid,
                    packet: payload,
                },
                Verdict::ToTunnel { seid, tunnel } => GtpuAction::ToTunnel {
                    seid,
                    tunnel,
                    qfi: repr
                        .pdu_session
                        .map(|p| p.qfi)
                        .unwrap_or(Qfi::new(DEFAULT_QFI).unwrap_or_default()),
                    packet: payload,
                },
                Verdict::Drop { seid } => {
                    self.table.count(seid, Flow::Dropped, payload.len());
                    GtpuAction::Nothing
                }
                Verdict::Unknown => {
                    self.counters.gtpu_unknown_teid += 1;
                    tracing::debug!(teid = %repr.teid, "g-pdu for unknown teid dropped");
                    GtpuAction::Nothing
                }
            },
            other => {
                self.counters.gtpu_ignored += 1;
                tracing::debug!(msg_type = ?other, teid = %repr.teid, "gtp-u message ignored");
                GtpuAction::Nothing
            }
        }
    }

    /// Counts the outcome of a send the driver performed.
    pub fn sent(&mut self, seid: u64, flow: Flow, bytes: usize, ok: bool) {
        if ok {
            self.table.count(seid, flow, bytes);
        } else {
            self.counters.send_errors += 1;
            self.table.count(seid, Flow::Dropped, bytes);
        }
    }

    /// Counts a packet read from the TUN (dropped).
    pub fn tun_packet(&mut self) {
        self.counters.tun_packets_dropped += 1;
    }
}

fn add(total: &mut SessionCounters, c: &SessionCounters) {
    total.ul_packets += c.ul_packets;
    total.ul_bytes += c.ul_bytes;
    total.dl_packets += c.dl_packets;
    total.dl_bytes += c.dl_bytes;
    total.dropped_packets += c.dropped_packets;
    total.end_markers += c.end_markers;
}

/// Reads the live status of a running UPF.
#[derive(Debug, Clone)]
pub struct UpfHandle(Arc<Mutex<UpfState>>);

impl UpfHandle {
    /// A snapshot of counters and sessions.
    pub fn status(&self) -> UpfStatus {
        lock(&self.0).status()
    }
}

fn lock(state: &Mutex<UpfState>) -> MutexGuard<'_, UpfState> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A UPF with its sockets bound, ready to [`serve`](Upf::serve).
#[derive(Debug)]
pub struct Upf<P: PacketPort> {
    pfcp: UdpSocket,
    gtpu: UdpSocket,
    port: P,
    gtpu_peer_port: u16,
    state: Arc<Mutex<UpfState>>,
}

impl<P: PacketPort> Upf<P> {
    /// Binds the PFCP and GTP-U sockets. Downlink G-PDUs and End Markers go to
    /// `gtpu_peer_port` of the gNB (2152 in production; tests use other ports).
    pub async fn bind(config: UpfConfig, port: P, gtpu_peer_port: u16) -> Result<Self, UpfError> {
        let bind = |what, addr: SocketAddrV4| async move {
            UdpSocket::bind(addr)
                .await
                .map_err(|source| UpfError::Bind { what, addr, source })
        };
        let pfcp = bind("pfcp", config.pfcp_addr).await?;
        let gtpu = bind("gtp-u", config.gtpu_bind).await?;
        let node_ip = match *config.pfcp_addr.ip() {
            ip if ip.is_unspecified() => config.n3_addr,
            ip => ip,
        };
        let state = UpfState::new(&config.name, node_ip, recovery_time_stamp());
        tracing::info!(
            upf = %config.name,
            pfcp = %config.pfcp_addr,
            gtpu = %config.gtpu_bind,
            n3 = %config.n3_addr,
            n9 = %config.n9_addr,
            "upf bound"
        );
        Ok(Self {
            pfcp,
            gtpu,
            port,
            gtpu_peer_port,
            state: Arc::new(Mutex::new(state)),
        })
    }

    /// The bound PFCP address.
    pub fn pfcp_addr(&self) -> std::io::Result<SocketAddr> {
        self.pfcp.local_addr()
    }

    /// The bound GTP-U address.
    pub fn gtpu_addr(&self) -> std::io::Result<SocketAddr> {
        self.gtpu.local_addr()
    }

    /// A handle to read the status while serving.
    pub fn handle(&self) -> UpfHandle {
        UpfHandle(self.state.clone())
    }

    /// Serves PFCP, GTP-U and the TUN until `shutdown`; logs and returns the final status.
    pub async fn serve(self, shutdown: sbi::nf::Shutdown) -> UpfStatus {
        let mut pfcp_buf = vec![0u8; 65_536];
        let mut gtpu_buf = vec![0u8; 65_536];
        let mut tun_buf = vec![0u8; 65_536];
        let mut out = vec![0u8; 65_536 + 64];
        let stop = shutdown.wait();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                biased;
                () = &mut stop => break,
                r = self.pfcp.recv_from(&mut pfcp_buf) => match r {
                    Ok((n, from)) => self.on_pfcp(&pfcp_buf[..n], from).await,
                    Err(error) => tracing::warn!(%error, "pfcp receive failed"),
                },
                r = self.gtpu.recv_from(&mut gtpu_buf) => match r {
                    Ok((n, from)) => self.on_gtpu(&gtpu_buf[..n], from, &mut out).await,
                    Err(error) => tracing::warn!(%error, "gtp-u receive failed"),
                },
                r = self.port.recv(&mut tun_buf) => match r {
                    Ok(n) => {
                        lock(&self.state).tun_packet();
                        tracing::trace!(len = n, "packet from tun dropped");
                    }
                    Err(error) => {
                        tracing::warn!(%error, "tun receive failed");
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    }
                },
            }
        }
        let status = lock(&self.state).status();
        log_summary(&status);
        status
    }

    async fn on_pfcp(&self, datagram: &[u8], from: SocketAddr) {
        let reaction = lock(&self.state).on_pfcp(datagram, from);
        for tunnel in reaction.end_markers {
            let em = gtpu::to_vec(&GtpuRepr::end_marker(Teid(tunnel.teid)), &[]);
            let to = SocketAddr::from((tunnel.ipv4, self.gtpu_peer_port));
            match em {
                Ok(em) => match self.gtpu.send_to(&em, to).await {
                    Ok(_) => tracing::info!(teid = %Teid(tunnel.teid), %to, "end marker sent"),
                    Err(error) => {
                        lock(&self.state).counters.send_errors += 1;
                        tracing::warn!(%error, %to, "end marker send failed");
                    }
                },
                Err(error) => tracing::error!(%error, "cannot build end marker"),
            }
        }
        if let Some(reply) = reaction.reply {
            match reply.to_vec() {
                Ok(bytes) => {
                    if let Err(error) = self.pfcp.send_to(&bytes, from).await {
                        lock(&self.state).counters.send_errors += 1;
                        tracing::warn!(%error, %from, "pfcp reply send failed");
                    }
                }
                Err(error) => tracing::error!(%error, "cannot encode pfcp reply"),
            }
        }
    }

    async fn on_gtpu(&self, datagram: &[u8], from: SocketAddr, out: &mut [u8]) {
        let action = lock(&self.state).on_gtpu(datagram);
        match action {
            GtpuAction::Nothing => {}
            GtpuAction::EchoResponse(seq) => {
                let reply = gtpu::to_vec(&GtpuRepr::echo_response(seq), &gtpu::RECOVERY_IE);
                if let Ok(reply) = reply {
                    if let Err(error) = self.gtpu.send_to(&reply, from).await {
                        tracing::debug!(%error, %from, "echo response send failed");
                    }
                }
            }
            GtpuAction::ToN6 { seid, packet } => {
                let ok = match self.port.send(packet).await {
                    Ok(()) => true,
                    Err(error) => {
                        tracing::debug!(%error, "tun write failed");
                        false
                    }
                };
                lock(&self.state).sent(seid, Flow::Uplink, packet.len(), ok);
            }
            GtpuAction::ToTunnel {
                seid,
                tunnel,
                qfi,
                packet,
            } => {
                let ok = port::send_downlink(
                    &self.gtpu,
                    packet,
                    tunnel.ipv4,
                    tunnel.teid,
                    qfi,
                    self.gtpu_peer_port,
                    out,
                )
                .await;
                lock(&self.state).sent(seid, Flow::Downlink, packet.len(), ok);
            }
        }
    }
}

/// Logs the status as one JSON line: `upf counters summary={…}`.
fn log_summary(status: &UpfStatus) {
    let summary = serde_json::json!({
        "name": status.name,
        "counters": status.counters,
        "sessionTotals": status.session_totals,
        "sessions": status.sessions.iter().map(|s| serde_json::json!({
            "upSeid": s.up_seid, "cpSeid": s.cp_seid, "counters": s.counters,
        })).collect::<Vec<_>>(),
    });
    tracing::info!(summary = %summary, "upf counters");
}

/// NTP seconds now (the Recovery Time Stamp).
fn recovery_time_stamp() -> u32 {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    (unix + NTP_UNIX_OFFSET) as u32
}

/// Runs the UPF with a real TUN until `shutdown`.
pub async fn run(
    config: UpfConfig,
    ready: sbi::nf::Ready,
    shutdown: sbi::nf::Shutdown,
) -> Result<(), UpfError> {
    let tun = TunPort::create(&config.tun, config.tun_addr).map_err(|source| UpfError::Tun {
        name: config.tun.clone(),
        source,
    })?;
    tracing::info!(tun = tun.name(), addr = %config.tun_addr, "tun up");
    run_with(config, tun, gtpu::PORT, ready, shutdown).await
}

/// Runs the UPF with any packet port and GTP-U peer port (tests).
pub async fn run_with<P: PacketPort>(
    config: UpfConfig,
    port: P,
    gtpu_peer_port: u16,
    ready: sbi::nf::Ready,
    shutdown: sbi::nf::Shutdown,
) -> Result<(), UpfError> {
    let upf = Upf::bind(config, port, gtpu_peer_port).await?;
    ready.ready();
    upf.serve(shutdown).await;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SMF: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 100, 0, 10), 8805));

    fn state() -> UpfState {
        UpfState::new("upf-t", Ipv4Addr::new(10, 100, 0, 21), 1234)
    }

    #[test]
    fn config_is_camel_case_and_strict() {
        let text = r#"{"name":"upf-a","pfcpAddr":"10.100.0.21:8805","n3Addr":"10.30.0.102",
            "n9Addr":"10.90.0.2","gtpuBind":"0.0.0.0:2152","tun":"upf0","tunAddr":"10.255.0.1"}"#;
        let c: UpfConfig = serde_json::from_str(text).unwrap();
        assert_eq!(c.pfcp_addr.port(), 8805);
        let bad = text.replace("\"tun\":", "\"extra\":1,\"tun\":");
        assert!(serde_json::from_str::<UpfConfig>(&bad).is_err());
    }

    #[test]
    fn garbage_is_counted_not_answered() {
        let mut s = state();
        for junk in [&[][..], &[0xff; 3], &[0x20, 0x01, 0x00, 0x40, 0, 0, 0, 0]] {
            assert_eq!(s.on_pfcp(junk, SMF), PfcpReaction::default());
            assert_eq!(s.on_gtpu(junk), GtpuAction::Nothing);
        }
        assert_eq!(s.counters().pfcp_malformed, 3);
        assert_eq!(s.counters().gtpu_malformed, 3);
    }

    #[test]
    fn heartbeat_and_association_are_answered() {
        let mut s = state();
        let hb = Message::HeartbeatRequest(Heartbeat {
            seq: 5,
            recovery_time_stamp: 1,
        });
        let r = s.on_pfcp(&hb.to_vec().unwrap(), SMF);
        assert_eq!(
            r.reply,
            Some(Message::HeartbeatResponse(Heartbeat {
                seq: 5,
                recovery_time_stamp: 1234
            }))
        );
        let a = Message::AssociationSetupRequest(AssociationSetup {
            seq: 6,
            node_id: NodeId::Ipv4(Ipv4Addr::new(10, 100, 0, 10)),
            cause: None,
            recovery_time_stamp: 1,
        });
        let r = s.on_pfcp(&a.to_vec().unwrap(), SMF);
        assert_eq!(
            r.reply,
            Some(Message::AssociationSetupResponse(AssociationSetup {
                seq: 6,
                node_id: NodeId::Ipv4(Ipv4Addr::new(10, 100, 0, 21)),
                cause: Some(Cause::ACCEPTED),
                recovery_time_stamp: 1234
            }))
        );
        // A response sent to the UPF is not answered.
        let r = s.on_pfcp(&r.reply.unwrap().to_vec().unwrap(), SMF);
        assert_eq!(r, PfcpReaction::default());
        assert_eq!(s.counters().pfcp_unexpected, 1);
    }

    #[test]
    fn unknown_seid_gets_cause_65() {
        let mut s = state();
        let d = Message::SessionDeletionRequest(wire::pfcp::SessionDeletionRequest {
            seid: 42,
            seq: 9,
        });
        let r = s.on_pfcp(&d.to_vec().unwrap(), SMF);
        assert_eq!(
            r.reply,
            Some(Message::SessionDeletionResponse(SessionResponse {
                seid: 0,
                seq: 9,
                cause: Cause::SESSION_CONTEXT_NOT_FOUND
            }))
        );
        let m = Message::SessionModificationRequest(wire::pfcp::SessionModificationRequest {
            seid: 42,
            seq: 10,
            ..Default::default()
        });
        let r = s.on_pfcp(&m.to_vec().unwrap(), SMF);
        assert!(matches!(
            r.reply,
            Some(Message::SessionModificationResponse(SessionResponse {
                cause: Cause::SESSION_CONTEXT_NOT_FOUND,
                ..
            }))
        ));
        assert_eq!(s.counters().pfcp_unknown_seid, 2);
    }

    #[test]
    fn retransmitted_modification_is_answered_again_without_a_second_end_marker() {
        let mut s = state();
        let est = Message::SessionEstablishmentRequest(session::tests::establishment(7, 1, 2, 3));
        let r = s.on_pfcp(&est.to_vec().unwrap(), SMF);
        let Some(Message::SessionEstablishmentResponse(e)) = r.reply else {
            panic!("{r:?}")
        };
        assert_eq!(e.cause, Cause::ACCEPTED);
        let mut m = session::tests::update_far2(9, Ipv4Addr::new(10, 30, 0, 3), true);
        m.seid = e.up_f_seid.unwrap().seid;
        let m = Message::SessionModificationRequest(m).to_vec().unwrap();
        let first = s.on_pfcp(&m, SMF);
        assert_eq!(first.end_markers.len(), 1);
        let again = s.on_pfcp(&m, SMF);
        assert!(again.end_markers.is_empty());
        assert_eq!(again.reply, first.reply);
        assert_eq!(s.counters().pfcp_retransmissions, 1);
        // The same sequence number from another requester is a new request.
        let other = SocketAddr::from((Ipv4Addr::new(10, 100, 0, 11), 8805));
        assert_eq!(s.on_pfcp(&m, other).end_markers.len(), 1);
        assert_eq!(s.status().session_totals.end_markers, 2);
    }

    #[test]
    fn a_restarted_smf_gets_no_answer_kept_for_its_previous_run_and_keeps_its_sessions() {
        let mut s = state();
        let associate = |stamp, seq| {
            Message::AssociationSetupRequest(AssociationSetup {
                seq,
                node_id: NodeId::Ipv4(Ipv4Addr::new(10, 100, 0, 10)),
                cause: None,
                recovery_time_stamp: stamp,
            })
            .to_vec()
            .unwrap()
        };
        let establish = |cp_seid, ul, dl| {
            let mut e = session::tests::establishment(cp_seid, ul, dl, 3);
            e.seq = 5;
            Message::SessionEstablishmentRequest(e).to_vec().unwrap()
        };
        let up_seid = |r: PfcpReaction| match r.reply {
            Some(Message::SessionEstablishmentResponse(e)) => e.up_f_seid.unwrap().seid,
            other => panic!("{other:?}"),
        };
        s.on_pfcp(&associate(100, 1), SMF);
        let first = up_seid(s.on_pfcp(&establish(7, 1, 2), SMF));
        // The same association again (a retransmission): the kept answers stay.
        s.on_pfcp(&associate(100, 1), SMF);
        assert_eq!(up_seid(s.on_pfcp(&establish(7, 1, 2), SMF)), first);
        assert_eq!(s.counters().pfcp_retransmissions, 2);
        // The SMF restarted (a new Recovery Time Stamp) and happens to use sequence number 5
        // again for another session: that is a new request, not a retransmission.
        s.on_pfcp(&associate(200, 1), SMF);
        let second = up_seid(s.on_pfcp(&establish(8, 11, 12), SMF));
        assert_ne!(second, first);
        assert_eq!(s.counters().pfcp_retransmissions, 2);
        assert_eq!(s.table().sessions().count(), 2, "the old session is kept");
    }

    #[test]
    fn echo_request_is_answered() {
        let mut s = state();
        let echo = gtpu::to_vec(&GtpuRepr::echo_request(77), &[]).unwrap();
        assert_eq!(s.on_gtpu(&echo), GtpuAction::EchoResponse(77));
        let gpdu = gtpu::to_vec(&GtpuRepr::g_pdu(Teid(5), None), &[0x45; 20]).unwrap();
        assert_eq!(s.on_gtpu(&gpdu), GtpuAction::Nothing);
        assert_eq!(s.counters().gtpu_unknown_teid, 1);
    }
}

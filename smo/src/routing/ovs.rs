//! [`OvsProgrammer`]: installs flow sets on an Open vSwitch bridge over one long-lived OpenFlow 1.3
//! connection to the bridge's management socket (`…/BR.mgmt`, a unix socket OVS listens on for
//! local tools such as `ovs-ofctl`).
//!
//! # The connection
//!
//! Opened on first use (or by [`OvsProgrammer::connect`]): HELLO exchange (OpenFlow 1.3 only),
//! SET_ASYNC asking for port-status messages and nothing else, and a PORT_DESC request whose reply
//! maps port names to numbers. The map follows the PORT_STATUS messages OVS sends when ports come
//! and go (a service's port is re-created with a new number when the service moves), and is fetched
//! again once when a set names a port it does not know; a name still unknown then fails the set
//! with [`FlowError::UnknownPort`] before anything is sent. ECHO requests from the switch are
//! answered whenever the connection is read.
//!
//! OVS probes an idle management connection after 60 s and drops it if the probe goes unanswered
//! for another 60 s, so a task sends an ECHO every [`KEEPALIVE`] while the connection is idle (which
//! also keeps the port map current). After an I/O or protocol error or a timeout the connection is
//! dropped and the next call connects again; a set that failed on an old connection before its
//! commit was sent is retried once on a new one (nothing of it can have taken effect: OVS discards
//! a connection's open bundles when it goes away).
//!
//! # Reading the flows back
//!
//! [`FlowProgrammer::flows`] sends one FLOW statistics request (every table, cookies whose top
//! three octets are `SMO`, so the testbed's base flows stay out) and reads every part of the reply;
//! each flow becomes the [`FlowRule`] that would have installed it, port numbers named with the
//! connection's port map (a number it does not know stays visible as `#N`). What the SMO never
//! installs (masked or other match fields, other actions) is returned as an unreadable cookie.
//!
//! # One set, atomically
//!
//! Each set is one ONF bundle (the OpenFlow 1.4 bundle carried as an experimenter message in
//! OpenFlow 1.3, which Open vSwitch has implemented since 2.4; checked on 3.1.0), flags
//! `ATOMIC | ORDERED`:
//!
//! 1. OPEN, one BUNDLE_ADD per FLOW_MOD (every deletion, then every addition), and a BARRIER, written
//!    in one go. OVS decodes and checks each FLOW_MOD when it is *added* to the bundle and answers a
//!    bad one with an ERROR, but keeps the bundle open: committing it then would install the rest.
//!    The barrier reply says every add has been looked at.
//! 2. Any error so far: DISCARD, and the set fails with [`FlowError::Rejected`] (the first error).
//!    If a PORT_STATUS read before the barrier reply renumbered a port the set names, DISCARD and
//!    start again with the new numbers (at most twice).
//! 3. Otherwise COMMIT. OVS applies the bundle's flow mods as one new version of its tables, so
//!    packets see either the old or the new flows, never a mixture; if one fails at commit (e.g. a
//!    table is full), it reverts them all, sends that message's error and then an error for the
//!    commit.
//! 4. Then the set's packets (if any): one PACKET_OUT each (`in_port` `OFPP_CONTROLLER`, one OUTPUT
//!    to the named port), and a BARRIER. Only after the commit reply, so a frame that makes the
//!    site send traffic (an ARP reply) finds the flows in place. They are best effort: the flows are
//!    in whatever happens to them, so a refused packet (an ERROR for its xid before the barrier
//!    reply), a timeout or a broken connection at this point is logged and the set still succeeds
//!    (a broken connection is dropped and the next call connects again). A set with packets and no
//!    flow mods sends no bundle.
//!
//! `took` runs from the first octet of step 1 to the commit reply: two round trips to the switch
//! (≈ 0.2 ms on the testbed machine, see `benches/benches/openflow.rs`), plus step 4's round trip
//! when the set has packets (≈ 0.3 ms more in the testbed). Calls are serialised by a mutex over the
//! connection. The one case where a failed call may have changed the table: the connection breaks
//! (or the timeout passes) after COMMIT was sent and before its reply arrived; the error
//! ([`FlowError::Protocol`]) then says the set may have taken effect.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::rules::{SMO_COOKIE, SMO_COOKIE_MASK};
use super::{FlowError, FlowProgrammer, FlowReport, FlowRule, FlowSet, InstalledFlows, PacketOut};
use wire::openflow::{self as of, BundleCtrl, CodecError, FlowMod, FlowStats, Message, PortReason};

/// Bundle flags of every set.
const BUNDLE_FLAGS: u16 = of::OFPBF_ATOMIC | of::OFPBF_ORDERED;
/// Port-status reasons asked for: add, delete, modify.
const PORT_STATUS_ALL: u32 = 0b111;
/// How often an idle connection is pinged (OVS probes after 60 s of silence).
pub const KEEPALIVE: Duration = Duration::from_secs(20);
/// How many times a set is started again because ports were renumbered under it.
const PORT_RACE_RETRIES: usize = 2;

/// Installs flow sets on one OVS bridge through its management socket.
#[derive(Debug)]
pub struct OvsProgrammer {
    mgmt_socket: PathBuf,
    timeout: Duration,
    keepalive: Duration,
    conn: Arc<Mutex<Option<Conn>>>,
    /// Numbers the connections, so a keepalive task knows when its connection is gone.
    generation: AtomicU64,
}

impl OvsProgrammer {
    /// A programmer for the bridge whose management socket is `mgmt_socket` (e.g.
    /// `/run/testbed/NAME/ovs-edge-x/br-edge-x.mgmt`). It connects on first use; `timeout` bounds
    /// connecting and each [`FlowProgrammer::apply`].
    pub fn new(mgmt_socket: PathBuf, timeout: Duration) -> Self {
        Self {
            mgmt_socket,
            timeout,
            keepalive: KEEPALIVE,
            conn: Arc::new(Mutex::new(None)),
            generation: AtomicU64::new(0),
        }
    }

    /// Pings an idle connection every `every` instead of every [`KEEPALIVE`].
    pub fn with_keepalive(mut self, every: Duration) -> Self {
        self.keepalive = every;
        self
    }

    /// The management socket this programmer talks to.
    pub fn mgmt_socket(&self) -> &Path {
        &self.mgmt_socket
    }

    /// Connects now (HELLO, port map) unless already connected.
    pub async fn connect(&self) -> Result<(), FlowError> {
        let mut guard = self.conn.lock().await;
        if guard.is_none() {
            *guard = Some(self.open().await?);
        }
        Ok(())
    }

    /// Drops the connection; the next call connects again.
    pub async fn disconnect(&self) {
        *self.conn.lock().await = None;
    }

    /// The bridge's ports by name, fetched now (connecting first if needed).
    pub async fn ports(&self) -> Result<HashMap<String, u32>, FlowError> {
        let mut guard = self.conn.lock().await;
        let mut conn = match guard.take() {
            Some(c) => c,
            None => self.open().await?,
        };
        let res = tokio::time::timeout(self.timeout, conn.refresh_ports()).await;
        match res {
            Ok(Ok(())) => {
                let ports = conn.ports.clone();
                *guard = Some(conn);
                Ok(ports)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(FlowError::Timeout(self.timeout)),
        }
    }

    async fn open(&self) -> Result<Conn, FlowError> {
        let target = self.mgmt_socket.display().to_string();
        let stream = match tokio::time::timeout(
            self.timeout,
            UnixStream::connect(&self.mgmt_socket),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => return Err(FlowError::Connect { target, source }),
            Err(_) => return Err(FlowError::Timeout(self.timeout)),
        };
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let mut conn = Conn::new(stream, generation);
        match tokio::time::timeout(self.timeout, conn.handshake()).await {
            Ok(Ok(())) => {
                tracing::debug!(switch = %target, ports = conn.ports.len(), "OpenFlow connection up");
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(keepalive(
                        Arc::downgrade(&self.conn),
                        generation,
                        self.keepalive,
                        self.timeout,
                    ));
                }
                Ok(conn)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(FlowError::Timeout(self.timeout)),
        }
    }
}

/// Pings connection `generation` every `every` until it is replaced or the programmer is dropped;
/// a failed ping drops the connection (the next call connects again).
async fn keepalive(
    conn: Weak<Mutex<Option<Conn>>>,
    generation: u64,
    every: Duration,
    timeout: Duration,
) {
    loop {
        tokio::time::sleep(every).await;
        let Some(conn) = conn.upgrade() else { return };
        let mut guard = conn.lock().await;
        let Some(c) = guard.as_mut().filter(|c| c.generation == generation) else {
            return;
        };
        match tokio::time::timeout(timeout, c.ping()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::info!(error = %e, "switch connection lost while idle");
                *guard = None;
                return;
            }
            Err(_) => {
                tracing::info!(
                    ?timeout,
                    "switch did not answer an echo; dropping the connection"
                );
                *guard = None;
                return;
            }
        }
    }
}

impl FlowProgrammer for OvsProgrammer {
    async fn flows(&self) -> Result<InstalledFlows, FlowError> {
        self.read_flows().await
    }

    async fn apply(&self, set: &FlowSet) -> Result<FlowReport, FlowError> {
        if set.is_empty() {
            return Ok(FlowReport {
                flow_mods: 0,
                took: Duration::ZERO,
            });
        }
        let mut guard = self.conn.lock().await;
        // The connection is taken out while in use: if this future is dropped half-way, the
        // connection (with whatever was half sent on it) goes with it.
        let mut reused = guard.is_some();
        loop {
            let mut conn = match guard.take() {
                Some(c) => c,
                None => self.open().await?,
            };
            let res = tokio::time::timeout(self.timeout, conn.apply(set)).await;
            let failure = match res {
                Ok(Ok((mut report, packet_ports))) => {
                    if !packet_ports.is_empty() {
                        let sent = tokio::time::timeout(
                            self.timeout,
                            conn.send_packets(&set.packets, &packet_ports),
                        )
                        .await;
                        match sent {
                            Ok(Ok(took)) => report.took += took,
                            Ok(Err(Failure::Switch(e))) => {
                                tracing::warn!(label = %set.label, error = %e, "switch refused a packet of the set (its flows are in)");
                            }
                            Ok(Err(Failure::Link(e))) => {
                                tracing::warn!(label = %set.label, error = %e, "switch connection lost while sending the set's packets (its flows are in)");
                                return Ok(report);
                            }
                            Err(_) => {
                                tracing::warn!(label = %set.label, timeout = ?self.timeout, "switch did not confirm the set's packets (its flows are in); dropping the connection");
                                return Ok(report);
                            }
                        }
                    }
                    *guard = Some(conn);
                    tracing::debug!(
                        label = %set.label,
                        flow_mods = report.flow_mods,
                        packets = set.packets.len(),
                        took_us = report.took.as_micros() as u64,
                        "flow set applied"
                    );
                    return Ok(report);
                }
                Ok(Err(f)) => f,
                Err(_) => {
                    return Err(if conn.commit_sent {
                        FlowError::Protocol(format!(
                            "no commit reply within {:?}: set `{}` may have taken effect",
                            self.timeout, set.label
                        ))
                    } else {
                        FlowError::Timeout(self.timeout)
                    });
                }
            };
            match failure {
                Failure::Switch(e) => {
                    // The switch answered: the connection is fine.
                    *guard = Some(conn);
                    return Err(e);
                }
                Failure::Link(e) if reused && !conn.commit_sent => {
                    tracing::info!(label = %set.label, error = %e, "switch connection lost; reconnecting");
                    reused = false;
                }
                Failure::Link(e) if conn.commit_sent => {
                    return Err(FlowError::Protocol(format!(
                        "connection lost after commit: set `{}` may have taken effect ({e})",
                        set.label
                    )));
                }
                Failure::Link(e) => return Err(e),
            }
        }
    }
}

impl OvsProgrammer {
    /// The SMO's flows (cookies tagged `SMO`) as the switch reports them (flow statistics).
    async fn read_flows(&self) -> Result<InstalledFlows, FlowError> {
        let mut guard = self.conn.lock().await;
        let mut conn = match guard.take() {
            Some(c) => c,
            None => self.open().await?,
        };
        match tokio::time::timeout(self.timeout, conn.flow_stats()).await {
            Ok(Ok(stats)) => {
                let names: HashMap<u32, String> =
                    conn.ports.iter().map(|(n, no)| (*no, n.clone())).collect();
                *guard = Some(conn);
                let mut flows = InstalledFlows::default();
                for f in &stats {
                    match FlowRule::from_flow_stats(f, |no| names.get(&no).cloned()) {
                        Some(rule) => flows.rules.push(rule),
                        None => flows.unreadable.push(f.cookie),
                    }
                }
                Ok(flows)
            }
            Ok(Err(Failure::Switch(e))) => {
                *guard = Some(conn);
                Err(e)
            }
            Ok(Err(Failure::Link(e))) => Err(e),
            Err(_) => Err(FlowError::Timeout(self.timeout)),
        }
    }
}

/// Why one attempt failed.
#[derive(Debug)]
enum Failure {
    /// The switch refused (or a port is unknown): the connection is fine, nothing was applied.
    Switch(FlowError),
    /// The connection failed (I/O, protocol): drop it.
    Link(FlowError),
}

impl From<FlowError> for Failure {
    fn from(e: FlowError) -> Self {
        Failure::Link(e)
    }
}

/// A set with its port names resolved.
#[derive(Debug)]
struct Resolved {
    /// Deletions, then additions.
    mods: Vec<FlowMod>,
    /// The port number of each of the set's packets.
    packet_ports: Vec<u32>,
    /// Every `(name, number)` used, to notice a port renumbered under the set.
    used: Vec<(String, u32)>,
}

/// Whether `xid` is one of a bundle's `(first, count)` xids (they may wrap around).
fn in_bundle((first, count): (u32, u32), xid: u32) -> bool {
    xid.wrapping_sub(first) < count
}

fn protocol(e: CodecError) -> FlowError {
    FlowError::Protocol(e.to_string())
}

/// One OpenFlow connection.
#[derive(Debug)]
struct Conn {
    generation: u64,
    stream: UnixStream,
    rbuf: Vec<u8>,
    out: Vec<u8>,
    ports: HashMap<String, u32>,
    xid: u32,
    bundle_id: u32,
    /// Whether the current set's COMMIT has been written.
    commit_sent: bool,
}

impl Conn {
    fn new(stream: UnixStream, generation: u64) -> Self {
        Self {
            generation,
            stream,
            rbuf: Vec::with_capacity(16 * 1024),
            out: Vec::with_capacity(4096),
            ports: HashMap::new(),
            xid: 0,
            bundle_id: 0,
            commit_sent: false,
        }
    }

    fn next_xid(&mut self) -> u32 {
        self.xid = self.xid.wrapping_add(1);
        self.xid
    }

    /// HELLO both ways, SET_ASYNC, and the port map.
    async fn handshake(&mut self) -> Result<(), FlowError> {
        let mut out = Vec::with_capacity(64);
        let hello_xid = self.next_xid();
        of::hello(&mut out, hello_xid);
        let async_xid = self.next_xid();
        of::set_async(
            &mut out,
            async_xid,
            [0, 0],
            [PORT_STATUS_ALL, PORT_STATUS_ALL],
            [0, 0],
        );
        self.send(&out).await?;
        match self.recv().await? {
            Message::Hello {
                version, versions, ..
            } => {
                let ok = match versions {
                    Some(bits) => bits & (1 << of::OFP_VERSION) != 0,
                    None => version >= of::OFP_VERSION,
                };
                if !ok {
                    return Err(FlowError::Protocol(format!(
                        "switch does not speak OpenFlow 1.3 (hello version {version:#04x}, bitmap {versions:?})"
                    )));
                }
            }
            other => {
                return Err(FlowError::Protocol(format!(
                    "expected HELLO, got {other:?}"
                )))
            }
        }
        self.refresh_ports().await
    }

    /// ECHO round trip.
    async fn ping(&mut self) -> Result<(), FlowError> {
        let mut out = Vec::with_capacity(8);
        let xid = self.next_xid();
        of::echo_request(&mut out, xid, &[]);
        self.send(&out).await?;
        loop {
            match self.recv().await? {
                Message::EchoReply { xid: x, .. } if x == xid => return Ok(()),
                other => self.unsolicited(other),
            }
        }
    }

    /// The flow statistics of every flow with an SMO cookie, every part of the reply.
    async fn flow_stats(&mut self) -> Result<Vec<FlowStats>, Failure> {
        let mut out = Vec::with_capacity(64);
        let xid = self.next_xid();
        of::flow_stats_request(&mut out, xid, SMO_COOKIE, SMO_COOKIE_MASK);
        self.send(&out).await?;
        let mut flows = Vec::new();
        loop {
            match self.recv().await? {
                Message::FlowStatsReply {
                    xid: x,
                    more,
                    flows: part,
                } if x == xid => {
                    flows.extend(part);
                    if !more {
                        return Ok(flows);
                    }
                }
                Message::Error {
                    xid: x,
                    err_type,
                    code,
                    ..
                } if x == xid => {
                    return Err(Failure::Switch(FlowError::Rejected { err_type, code }))
                }
                other => self.unsolicited(other),
            }
        }
    }

    /// Fetches the port description and replaces the port map.
    async fn refresh_ports(&mut self) -> Result<(), FlowError> {
        let mut out = Vec::with_capacity(16);
        let xid = self.next_xid();
        of::port_desc_request(&mut out, xid);
        self.send(&out).await?;
        let mut ports = HashMap::new();
        loop {
            match self.recv().await? {
                Message::PortDescReply {
                    xid: x,
                    more,
                    ports: part,
                } if x == xid => {
                    ports.extend(part.into_iter().map(|p| (p.name, p.port_no)));
                    if !more {
                        break;
                    }
                }
                Message::Error {
                    xid: x,
                    err_type,
                    code,
                    ..
                } if x == xid => return Err(FlowError::Rejected { err_type, code }),
                other => self.unsolicited(other),
            }
        }
        self.ports = ports;
        Ok(())
    }

    /// The set's FLOW_MODs, deletions first, the port number of each of its packets, and the port
    /// numbers all of them use; fetches the port map again once for a name it lacks.
    async fn flow_mods(&mut self, set: &FlowSet) -> Result<Resolved, Failure> {
        let mut refreshed = false;
        'again: loop {
            let mut mods: Vec<FlowMod> = set
                .delete
                .iter()
                .map(|d| FlowMod::delete_cookie(d.cookie))
                .collect();
            let mut used: Vec<(String, u32)> = Vec::new();
            let mut unknown = None;
            for rule in &set.add {
                let ports = &self.ports;
                let resolved = rule.to_flow_mod(|name| {
                    let no = ports.get(name).copied();
                    if let Some(no) = no {
                        used.push((name.to_owned(), no));
                    }
                    no
                });
                match resolved {
                    Ok(fm) => {
                        fm.check_len()
                            .map_err(|e| Failure::Switch(FlowError::Protocol(e.to_string())))?;
                        mods.push(fm);
                    }
                    Err(name) => {
                        unknown = Some(name);
                        break;
                    }
                }
            }
            let mut packet_ports = Vec::with_capacity(set.packets.len());
            if unknown.is_none() {
                for p in &set.packets {
                    match self.ports.get(&p.port) {
                        Some(&no) => {
                            of::packet_out_len(&[of::Action::Output(no)], &p.data)
                                .map_err(|e| Failure::Switch(FlowError::Protocol(e.to_string())))?;
                            used.push((p.port.clone(), no));
                            packet_ports.push(no);
                        }
                        None => {
                            unknown = Some(p.port.clone());
                            break;
                        }
                    }
                }
            }
            match unknown {
                None => {
                    return Ok(Resolved {
                        mods,
                        packet_ports,
                        used,
                    })
                }
                Some(name) if refreshed => {
                    return Err(Failure::Switch(FlowError::UnknownPort(name)))
                }
                Some(name) => {
                    tracing::debug!(port = %name, "unknown port; fetching the port map again");
                    self.refresh_ports().await?;
                    refreshed = true;
                    continue 'again;
                }
            }
        }
    }

    /// Installs one set's flow mods as one bundle (see the module docs); returns the report and
    /// the port number of each of the set's packets, which the caller sends next.
    async fn apply(&mut self, set: &FlowSet) -> Result<(FlowReport, Vec<u32>), Failure> {
        self.commit_sent = false;
        self.drain_pending().await?;
        let mut start = None;
        let mut races = 0;
        let (flow_mods, commit_xid, bundle_xids, packet_ports) = loop {
            let Resolved {
                mods,
                packet_ports,
                used,
            } = self.flow_mods(set).await?;
            if mods.is_empty() {
                // Packets only: no bundle.
                let report = FlowReport {
                    flow_mods: 0,
                    took: Duration::ZERO,
                };
                return Ok((report, packet_ports));
            }

            self.bundle_id = self.bundle_id.wrapping_add(1);
            let bundle = self.bundle_id;
            let mut out = std::mem::take(&mut self.out);
            out.clear();
            let open_xid = self.next_xid();
            of::bundle_control(
                &mut out,
                open_xid,
                bundle,
                BundleCtrl::OpenRequest,
                BUNDLE_FLAGS,
            );
            for fm in &mods {
                let xid = self.next_xid();
                of::bundle_add_flow_mod(&mut out, xid, bundle, BUNDLE_FLAGS, fm);
            }
            let barrier_xid = self.next_xid();
            of::barrier_request(&mut out, barrier_xid);
            // The bundle's xids, OPEN to the last add, are `open_xid + i` for i < span.
            let bundle_xids = (open_xid, barrier_xid.wrapping_sub(open_xid));

            start.get_or_insert_with(Instant::now);
            let sent = self.send(&out).await;
            self.out = out;
            sent?;

            let mut first_error = None;
            loop {
                match self.recv().await? {
                    Message::BarrierReply { xid } if xid == barrier_xid => break,
                    Message::BundleControl {
                        xid,
                        ctrl: BundleCtrl::OpenReply,
                        ..
                    } if xid == open_xid => {}
                    Message::Error {
                        xid,
                        err_type,
                        code,
                        ..
                    } if in_bundle(bundle_xids, xid) => {
                        tracing::debug!(label = %set.label, xid, err_type, code, "switch refused a bundle message");
                        first_error.get_or_insert(FlowError::Rejected { err_type, code });
                    }
                    other => self.unsolicited(other),
                }
            }
            if let Some(e) = first_error {
                self.end_bundle(bundle, BundleCtrl::DiscardRequest).await?;
                return Err(Failure::Switch(e));
            }
            // Every PORT_STATUS the switch sent before it handled the barrier has been read.
            let renumbered = used
                .iter()
                .find(|(name, no)| self.ports.get(name) != Some(no));
            if let Some((name, no)) = renumbered {
                if races < PORT_RACE_RETRIES {
                    tracing::info!(port = %name, was = no, now = ?self.ports.get(name), "port renumbered during the set; starting again");
                    races += 1;
                    self.end_bundle(bundle, BundleCtrl::DiscardRequest).await?;
                    continue;
                }
                let name = name.clone();
                self.end_bundle(bundle, BundleCtrl::DiscardRequest).await?;
                return Err(Failure::Switch(FlowError::Protocol(format!(
                    "port `{name}` keeps changing its number"
                ))));
            }
            let commit_xid = self
                .end_bundle_send(bundle, BundleCtrl::CommitRequest)
                .await?;
            self.commit_sent = true;
            break (mods.len(), commit_xid, bundle_xids, packet_ports);
        };

        let mut first_error = None;
        loop {
            match self.recv().await? {
                Message::BundleControl {
                    xid,
                    ctrl: BundleCtrl::CommitReply,
                    ..
                } if xid == commit_xid => break,
                Message::Error {
                    xid,
                    err_type,
                    code,
                    ..
                } if in_bundle(bundle_xids, xid) => {
                    // The message that failed at commit time; the commit's own error follows.
                    first_error.get_or_insert(FlowError::Rejected { err_type, code });
                }
                Message::Error {
                    xid,
                    err_type,
                    code,
                    ..
                } if xid == commit_xid => {
                    self.commit_sent = false;
                    return Err(Failure::Switch(
                        first_error.unwrap_or(FlowError::Rejected { err_type, code }),
                    ));
                }
                other => self.unsolicited(other),
            }
        }
        let took = start.map(|s| s.elapsed()).unwrap_or_default();
        self.commit_sent = false;
        Ok((FlowReport { flow_mods, took }, packet_ports))
    }

    /// Sends `packets` out of the ports numbered `ports` (one each, as [`Conn::flow_mods`] resolved
    /// them) and a BARRIER; waits for the barrier reply. A refused packet is
    /// [`Failure::Switch`] (the first error), after the barrier reply. Returns how long it took.
    async fn send_packets(
        &mut self,
        packets: &[PacketOut],
        ports: &[u32],
    ) -> Result<Duration, Failure> {
        let start = Instant::now();
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        let first = self.xid.wrapping_add(1);
        for (p, &no) in packets.iter().zip(ports) {
            let xid = self.next_xid();
            of::packet_out(
                &mut out,
                xid,
                of::OFPP_CONTROLLER,
                &[of::Action::Output(no)],
                &p.data,
            );
        }
        let barrier_xid = self.next_xid();
        of::barrier_request(&mut out, barrier_xid);
        let xids = (first, barrier_xid.wrapping_sub(first));
        let sent = self.send(&out).await;
        self.out = out;
        sent?;
        let mut first_error = None;
        loop {
            match self.recv().await? {
                Message::BarrierReply { xid } if xid == barrier_xid => break,
                Message::Error {
                    xid,
                    err_type,
                    code,
                    ..
                } if in_bundle(xids, xid) => {
                    first_error.get_or_insert(FlowError::Rejected { err_type, code });
                }
                other => self.unsolicited(other),
            }
        }
        match first_error {
            Some(e) => Err(Failure::Switch(e)),
            None => Ok(start.elapsed()),
        }
    }

    async fn end_bundle_send(&mut self, bundle: u32, ctrl: BundleCtrl) -> Result<u32, FlowError> {
        let mut out = Vec::with_capacity(24);
        let xid = self.next_xid();
        of::bundle_control(&mut out, xid, bundle, ctrl, BUNDLE_FLAGS);
        self.send(&out).await?;
        Ok(xid)
    }

    /// Sends DISCARD (or CLOSE) and waits for its reply or error; either way the bundle is gone.
    async fn end_bundle(&mut self, bundle: u32, ctrl: BundleCtrl) -> Result<(), FlowError> {
        let xid = self.end_bundle_send(bundle, ctrl).await?;
        loop {
            match self.recv().await? {
                Message::BundleControl { xid: x, .. } | Message::Error { xid: x, .. }
                    if x == xid =>
                {
                    return Ok(())
                }
                other => self.unsolicited(other),
            }
        }
    }

    async fn send(&mut self, buf: &[u8]) -> Result<(), FlowError> {
        self.stream.write_all(buf).await?;
        Ok(())
    }

    /// The next message that is not an ECHO request (answered here) or a PORT_STATUS (applied to
    /// the port map here).
    async fn recv(&mut self) -> Result<Message, FlowError> {
        loop {
            if let Some(msg) = self.next_buffered().await? {
                return Ok(msg);
            }
            let mut chunk = [0u8; 8192];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(FlowError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "switch closed the connection",
                )));
            }
            self.rbuf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next whole message already read, after handling echoes and port status.
    async fn next_buffered(&mut self) -> Result<Option<Message>, FlowError> {
        while let Some(len) = of::frame_len(&self.rbuf).map_err(protocol)? {
            let msg = Message::parse(&self.rbuf[..len]).map_err(protocol)?;
            self.rbuf.drain(..len);
            match msg {
                Message::EchoRequest { xid, data } => {
                    let mut out = Vec::with_capacity(8 + data.len());
                    of::echo_reply(&mut out, xid, &data);
                    self.send(&out).await?;
                }
                Message::PortStatus { reason, port, .. } => {
                    tracing::debug!(port = %port.name, port_no = port.port_no, ?reason, "port status");
                    match reason {
                        PortReason::Delete => {
                            if self.ports.get(&port.name) == Some(&port.port_no) {
                                self.ports.remove(&port.name);
                            }
                        }
                        PortReason::Add | PortReason::Modify => {
                            self.ports.insert(port.name, port.port_no);
                        }
                    }
                }
                other => return Ok(Some(other)),
            }
        }
        Ok(None)
    }

    /// Reads whatever the switch sent while the connection was idle (echoes, port status,
    /// stray errors) without waiting.
    async fn drain_pending(&mut self) -> Result<(), FlowError> {
        loop {
            let mut chunk = [0u8; 8192];
            match self.stream.try_read(&mut chunk) {
                Ok(0) => {
                    return Err(FlowError::Io(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "switch closed the connection",
                    )))
                }
                Ok(n) => self.rbuf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(FlowError::Io(e)),
            }
        }
        while let Some(msg) = self.next_buffered().await? {
            self.unsolicited(msg);
        }
        Ok(())
    }

    /// A message nobody waits for.
    fn unsolicited(&mut self, msg: Message) {
        match msg {
            Message::Error {
                xid,
                err_type,
                code,
                ..
            } => {
                tracing::warn!(xid, err_type, code, "OpenFlow error for no pending request")
            }
            other => tracing::trace!(?other, "ignored OpenFlow message"),
        }
    }
}

#[cfg(test)]
mod tests {
    //! Against a scripted switch on a unix socket: what goes over the wire, in which order, and
    //! what the programmer makes of the answers. The real Open vSwitch is in
    //! `tests/privileged_ovs.rs`.

    use super::*;
    use crate::routing::rules::{relocation_cookie, trombone_target, EdgePorts};
    use crate::routing::{FlowAction, Mac};
    use std::net::Ipv4Addr;
    use std::sync::atomic::AtomicUsize;
    use tokio::net::UnixListener;

    /// What the scripted switch does.
    #[derive(Debug, Clone, Default)]
    struct Script {
        /// Refuse the n-th bundle add (1-based) with OFPET_BAD_MATCH / OFPBMC_BAD_PREREQ.
        reject_add: Option<usize>,
        /// Close the connection after answering the first commit.
        close_after_commit: bool,
        /// Refuse every PACKET_OUT with OFPET_BAD_ACTION / OFPBAC_BAD_OUT_PORT.
        reject_packet_out: bool,
    }

    /// One message the switch received: type, xid, ONF bundle control type or exp_type, frame.
    #[derive(Debug, Clone)]
    struct Seen {
        msg_type: u8,
        xid: u32,
        frame: Vec<u8>,
    }

    impl Seen {
        fn exp_type(&self) -> Option<u32> {
            (self.msg_type == of::msg_type::EXPERIMENTER).then(|| {
                u32::from_be_bytes([
                    self.frame[12],
                    self.frame[13],
                    self.frame[14],
                    self.frame[15],
                ])
            })
        }

        fn bundle_ctrl(&self) -> Option<u16> {
            (self.exp_type() == Some(of::ONF_ET_BUNDLE_CONTROL))
                .then(|| u16::from_be_bytes([self.frame[20], self.frame[21]]))
        }
    }

    #[derive(Debug, Default)]
    struct Log {
        seen: std::sync::Mutex<Vec<Seen>>,
        connections: AtomicUsize,
    }

    impl Log {
        fn seen(&self) -> Vec<Seen> {
            self.seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
        }
    }

    fn port(no: u32, name: &str) -> Vec<u8> {
        let mut p = Vec::with_capacity(64);
        p.extend_from_slice(&no.to_be_bytes());
        p.extend_from_slice(&[0; 12]);
        let mut n = [0u8; 16];
        n[..name.len()].copy_from_slice(name.as_bytes());
        p.extend_from_slice(&n);
        p.extend_from_slice(&[0; 32]);
        p
    }

    fn with_len(mut m: Vec<u8>) -> Vec<u8> {
        let len = m.len() as u16;
        m[2..4].copy_from_slice(&len.to_be_bytes());
        m
    }

    /// The port description in two parts: `bh`, then `n6` and `srv`.
    fn port_desc_reply(xid: u32) -> Vec<u8> {
        let head = |more: u8| {
            let mut m = vec![4, of::msg_type::MULTIPART_REPLY, 0, 0];
            m.extend_from_slice(&xid.to_be_bytes());
            m.extend_from_slice(&[0, 13, 0, more, 0, 0, 0, 0]);
            m
        };
        let mut first = head(1);
        first.extend(port(1, "bh"));
        let mut second = head(0);
        second.extend(port(2, "n6"));
        second.extend(port(3, "srv"));
        let mut out = with_len(first);
        out.extend(with_len(second));
        out
    }

    async fn serve(mut s: UnixStream, script: Script, log: Arc<Log>) -> std::io::Result<()> {
        let mut buf = Vec::new();
        let mut adds = 0;
        loop {
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
            while let Ok(Some(len)) = of::frame_len(&buf) {
                let frame: Vec<u8> = buf.drain(..len).collect();
                let h = of::Header::parse(&frame).map_err(std::io::Error::other)?;
                let seen = Seen {
                    msg_type: h.msg_type,
                    xid: h.xid,
                    frame: frame.clone(),
                };
                log.seen
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(seen.clone());
                let mut out = Vec::new();
                match h.msg_type {
                    of::msg_type::HELLO => of::hello(&mut out, h.xid),
                    of::msg_type::ECHO_REQUEST => of::echo_reply(&mut out, h.xid, &frame[8..]),
                    of::msg_type::MULTIPART_REQUEST => out = port_desc_reply(h.xid),
                    of::msg_type::BARRIER_REQUEST => {
                        // An echo from the switch while the programmer waits.
                        of::echo_request(&mut out, 0xec40, b"ping");
                        out.extend_from_slice(&[4, of::msg_type::BARRIER_REPLY, 0, 8]);
                        out.extend_from_slice(&h.xid.to_be_bytes());
                    }
                    of::msg_type::PACKET_OUT if script.reject_packet_out => {
                        out.extend_from_slice(&[4, of::msg_type::ERROR, 0, 12]);
                        out.extend_from_slice(&h.xid.to_be_bytes());
                        out.extend_from_slice(&[0, 2, 0, 4]);
                    }
                    of::msg_type::EXPERIMENTER => match (seen.exp_type(), seen.bundle_ctrl()) {
                        (Some(of::ONF_ET_BUNDLE_ADD_MESSAGE), _) => {
                            adds += 1;
                            if script.reject_add == Some(adds) {
                                out.extend_from_slice(&[4, of::msg_type::ERROR, 0, 12]);
                                out.extend_from_slice(&h.xid.to_be_bytes());
                                out.extend_from_slice(&[0, 4, 0, 9]);
                            }
                        }
                        (_, Some(ctrl @ (0 | 4 | 6))) => {
                            // OPEN, COMMIT, DISCARD: the reply is the request with type + 1.
                            out = frame.clone();
                            out[21] = (ctrl + 1) as u8;
                            if ctrl == 4 && script.close_after_commit {
                                s.write_all(&out).await?;
                                return Ok(());
                            }
                        }
                        _ => {}
                    },
                    _ => {}
                }
                s.write_all(&out).await?;
            }
        }
    }

    struct Switch {
        path: PathBuf,
        log: Arc<Log>,
    }

    impl Drop for Switch {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    fn switch(tag: &str, script: Script) -> Switch {
        let path = std::env::temp_dir().join(format!("smo-ovs-{tag}-{}.mgmt", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).expect("bind");
        let log = Arc::new(Log::default());
        let l = log.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                l.connections.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(serve(s, script.clone(), l.clone()));
            }
        });
        Switch { path, log }
    }

    fn target_set() -> FlowSet {
        trombone_target(
            relocation_cookie(1),
            &EdgePorts::testbed(),
            Ipv4Addr::new(20, 0, 0, 10),
            Mac([2, 0x20, 0, 0, 0, 0x0a]),
            Ipv4Addr::new(192, 168, 1, 2),
        )
    }

    fn programmer(sw: &Switch) -> OvsProgrammer {
        OvsProgrammer::new(sw.path.clone(), Duration::from_secs(2))
    }

    fn ports() -> impl Fn(&str) -> Option<u32> {
        |n: &str| match n {
            "bh" => Some(1),
            "n6" => Some(2),
            "srv" => Some(3),
            _ => None,
        }
    }

    #[tokio::test]
    async fn a_set_is_one_bundle_of_flow_mods_with_matching_xids() {
        let sw = switch("bundle", Script::default());
        let p = programmer(&sw);
        p.connect().await.expect("connect");
        assert_eq!(
            p.ports().await.expect("ports"),
            HashMap::from([("bh".into(), 1), ("n6".into(), 2), ("srv".into(), 3)])
        );
        let set = FlowSet {
            delete: vec![crate::routing::CookieDelete { cookie: 0x77 }],
            ..target_set()
        };
        let r = p.apply(&set).await.expect("apply");
        assert_eq!(r.flow_mods, 4);
        assert!(r.took > Duration::ZERO);
        // One more round trip: the switch has then seen everything the set sent.
        p.ports().await.expect("ports");

        let seen = sw.log.seen();
        let types: Vec<u8> = seen.iter().map(|s| s.msg_type).collect();
        use of::msg_type::*;
        assert_eq!(
            types[..3],
            [HELLO, SET_ASYNC, MULTIPART_REQUEST],
            "handshake"
        );
        // connect's port map, then the one `ports()` fetched.
        assert_eq!(types[3], MULTIPART_REQUEST);
        let bundle = &seen[4..];
        let ctrls: Vec<Option<u16>> = bundle.iter().map(Seen::bundle_ctrl).collect();
        assert_eq!(ctrls[0], Some(0), "OPEN first");
        assert!(ctrls[1..5].iter().all(Option::is_none));
        assert_eq!(bundle[5].msg_type, BARRIER_REQUEST);
        assert_eq!(bundle[6].msg_type, ECHO_REPLY, "the switch's echo answered");
        assert_eq!(bundle[6].xid, 0xec40);
        assert_eq!(bundle[6].frame[8..], *b"ping");
        assert_eq!(ctrls[7], Some(4), "then COMMIT");
        // After the commit reply, the set's ARP reply out of n6 (port 2), and a barrier.
        assert_eq!(bundle[8].msg_type, PACKET_OUT);
        let mut po = Vec::new();
        of::packet_out(
            &mut po,
            bundle[8].xid,
            of::OFPP_CONTROLLER,
            &[of::Action::Output(2)],
            &set.packets[0].data,
        );
        assert_eq!(bundle[8].frame, po);
        assert_eq!(bundle[9].msg_type, BARRIER_REQUEST);
        assert_eq!(bundle[10].msg_type, ECHO_REPLY);
        assert_eq!(bundle[11].msg_type, MULTIPART_REQUEST);
        assert_eq!(bundle.len(), 12);
        // Each add wraps the FLOW_MOD it should, with the outer xid, deletions first.
        let mut want = vec![FlowMod::delete_cookie(0x77)];
        want.extend(
            set.add
                .iter()
                .map(|r| r.to_flow_mod(ports()).expect("ports")),
        );
        for (add, fm) in bundle[1..5].iter().zip(&want) {
            assert_eq!(add.exp_type(), Some(of::ONF_ET_BUNDLE_ADD_MESSAGE));
            let mut inner = Vec::new();
            fm.emit(&mut inner, add.xid);
            assert_eq!(add.frame[24..], inner[..]);
            assert_eq!(add.frame[16..20], bundle[0].frame[16..20], "same bundle id");
        }
    }

    #[tokio::test]
    async fn a_refused_add_discards_the_bundle() {
        let sw = switch(
            "refused",
            Script {
                reject_add: Some(2),
                ..Script::default()
            },
        );
        let p = programmer(&sw);
        let err = p.apply(&target_set()).await.expect_err("refused");
        assert!(
            matches!(
                err,
                FlowError::Rejected {
                    err_type: 4,
                    code: 9
                }
            ),
            "{err}"
        );
        let ctrls: Vec<u16> = sw.log.seen().iter().filter_map(Seen::bundle_ctrl).collect();
        assert_eq!(ctrls, [0, 6], "OPEN, DISCARD, never COMMIT");
        // The connection is still good.
        p.apply(&target_set()).await.expect("next set");
        assert_eq!(sw.log.connections.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn an_unknown_port_sends_nothing_but_one_port_request() {
        let sw = switch("unknown", Script::default());
        let p = programmer(&sw);
        p.connect().await.expect("connect");
        let mut set = target_set();
        set.add[1].actions = vec![FlowAction::Output("gone".into())];
        let err = p.apply(&set).await.expect_err("unknown");
        assert!(
            matches!(err, FlowError::UnknownPort(ref n) if n == "gone"),
            "{err}"
        );
        let types: Vec<u8> = sw.log.seen().iter().map(|s| s.msg_type).collect();
        use of::msg_type::*;
        assert_eq!(
            types,
            [HELLO, SET_ASYNC, MULTIPART_REQUEST, MULTIPART_REQUEST]
        );
    }

    #[tokio::test]
    async fn a_refused_packet_leaves_the_set_installed_and_the_connection_up() {
        let sw = switch(
            "packet",
            Script {
                reject_packet_out: true,
                ..Script::default()
            },
        );
        let p = programmer(&sw);
        let r = p.apply(&target_set()).await.expect("the flows are in");
        assert_eq!(r.flow_mods, 3);
        let ctrls: Vec<u16> = sw.log.seen().iter().filter_map(Seen::bundle_ctrl).collect();
        assert_eq!(ctrls, [0, 4], "OPEN, COMMIT: the packet came after");
        p.apply(&target_set()).await.expect("next set");
        assert_eq!(sw.log.connections.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_set_of_packets_only_sends_no_bundle() {
        let sw = switch("packets-only", Script::default());
        let p = programmer(&sw);
        p.connect().await.expect("connect");
        let set = FlowSet {
            label: "announce".into(),
            packets: target_set().packets,
            ..FlowSet::default()
        };
        let r = p.apply(&set).await.expect("apply");
        assert_eq!(r.flow_mods, 0);
        assert!(r.took > Duration::ZERO);
        p.ports().await.expect("ports");
        let types: Vec<u8> = sw.log.seen().iter().map(|s| s.msg_type).collect();
        use of::msg_type::*;
        assert_eq!(
            types,
            [
                HELLO,
                SET_ASYNC,
                MULTIPART_REQUEST,
                PACKET_OUT,
                BARRIER_REQUEST,
                ECHO_REPLY,
                MULTIPART_REQUEST
            ]
        );
    }

    #[tokio::test]
    async fn an_unknown_packet_port_fails_the_set_before_anything_is_sent() {
        let sw = switch("packet-port", Script::default());
        let p = programmer(&sw);
        p.connect().await.expect("connect");
        let mut set = target_set();
        set.packets[0].port = "gone".into();
        let err = p.apply(&set).await.expect_err("unknown");
        assert!(
            matches!(err, FlowError::UnknownPort(ref n) if n == "gone"),
            "{err}"
        );
        let types: Vec<u8> = sw.log.seen().iter().map(|s| s.msg_type).collect();
        use of::msg_type::*;
        assert_eq!(
            types,
            [HELLO, SET_ASYNC, MULTIPART_REQUEST, MULTIPART_REQUEST]
        );
    }

    #[tokio::test]
    async fn a_dropped_connection_is_replaced_before_the_next_set() {
        let sw = switch(
            "drop",
            Script {
                close_after_commit: true,
                ..Script::default()
            },
        );
        let p = programmer(&sw);
        p.apply(&target_set()).await.expect("first");
        // The switch hung up after the commit reply; the next set notices and reconnects.
        p.apply(&target_set())
            .await
            .expect("second, on a new connection");
        assert_eq!(sw.log.connections.load(Ordering::Relaxed), 2);
        let empty = p.apply(&FlowSet::default()).await.expect("empty");
        assert_eq!(empty.flow_mods, 0);
    }

    #[tokio::test]
    async fn an_idle_connection_is_kept_alive() {
        let sw = switch("idle", Script::default());
        let p = programmer(&sw).with_keepalive(Duration::from_millis(20));
        p.connect().await.expect("connect");
        tokio::time::sleep(Duration::from_millis(150)).await;
        let echoes = sw
            .log
            .seen()
            .iter()
            .filter(|s| s.msg_type == of::msg_type::ECHO_REQUEST)
            .count();
        assert!(echoes >= 2, "{echoes} echoes");
        p.apply(&target_set()).await.expect("apply");
        assert_eq!(sw.log.connections.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn no_switch_is_a_connect_error() {
        let p = OvsProgrammer::new(
            std::env::temp_dir().join("smo-ovs-test-nothing-here.mgmt"),
            Duration::from_secs(1),
        );
        let err = p.apply(&target_set()).await.expect_err("no switch");
        assert!(matches!(err, FlowError::Connect { .. }), "{err}");
    }
}

//! Routing module: what the SMO asks of its edge cloud's switch.
//!
//! * [`rules`] generates the flow sets of each relocation phase (pure, unit-tested);
//! * [`FlowProgrammer`] installs one [`FlowSet`] atomically: [`ovs::OvsProgrammer`] over a long-lived
//!   OpenFlow 1.3 connection to the bridge's management socket (the codec is [`wire::openflow`]),
//!   [`fake::FakeProgrammer`] in memory for unit tests.
//!
//! Ports are named (`bh`, `n6`, the service's port); the programmer resolves names to OpenFlow port
//! numbers itself.

pub mod fake;
pub mod ovs;
pub mod rules;

use std::fmt;
use std::future::Future;
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::time::Duration;

/// An Ethernet MAC address, written `aa:bb:cc:dd:ee:ff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// A string that is not a MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a MAC address (want aa:bb:cc:dd:ee:ff)")]
pub struct BadMac(pub String);

impl FromStr for Mac {
    type Err = BadMac;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadMac(s.to_owned());
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for o in &mut out {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 {
                return Err(bad());
            }
            *o = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Mac(out))
    }
}

/// The anycast N6 gateway every site answers for (ARCHITECTURE.md, "Topology and addresses").
pub const GATEWAY_IP: Ipv4Addr = model::edge::GATEWAY_IP;
/// The anycast N6 gateway's MAC.
pub const GATEWAY_MAC: Mac = Mac(model::edge::GATEWAY_MAC);
/// The destination MAC of the trombone's downlink on the backhaul (the service's replies, from the
/// source edge to the target edge; `SMOR` in the middle). No host ever sends from it, so the
/// backhaul's learning bridge never learns it and always floods it: it reaches the target edge
/// whatever the bridge learned about the anycast [`GATEWAY_MAC`], which both sites own. Other edges
/// drop it (their base flow `priority=50,in_port=bh actions=drop`); the target restores
/// [`GATEWAY_MAC`] before handing the frame to its site.
pub const TROMBONE_MAC: Mac = Mac([0x02, 0x53, 0x4d, 0x4f, 0x52, 0x00]);
/// The destination MAC of the trombone's uplink on the backhaul (the site's traffic for the service,
/// from the target edge to the source edge), for the same reason as [`TROMBONE_MAC`]: the backhaul
/// bridge may have learned the service's own MAC on the wrong edge's port (e.g. the source's, from
/// an earlier trombone of the same service in the other direction). The source restores the
/// service's MAC before handing the frame to the service's port.
pub const TROMBONE_UPLINK_MAC: Mac = Mac([0x02, 0x53, 0x4d, 0x4f, 0x52, 0x01]);

/// What a flow matches. `None` fields are wildcards.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowMatch {
    /// Ingress port, by name.
    pub in_port: Option<String>,
    /// Ethernet type: 0x0800 (IPv4) or 0x0806 (ARP). Required by OpenFlow when any L3 field is set.
    pub eth_type: Option<u16>,
    pub ipv4_src: Option<Ipv4Addr>,
    pub ipv4_dst: Option<Ipv4Addr>,
    /// ARP opcode (1 request, 2 reply).
    pub arp_op: Option<u16>,
    /// ARP target protocol address.
    pub arp_tpa: Option<Ipv4Addr>,
}

/// One action of a flow, applied in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlowAction {
    /// Output to the named port.
    Output(String),
    /// Output back to the ingress port (OFPP_IN_PORT).
    InPort,
    /// OFPP_NORMAL (L2 learning switch).
    Normal,
    SetEthSrc(Mac),
    SetEthDst(Mac),
    SetArpOp(u16),
    SetArpSha(Mac),
    SetArpSpa(Ipv4Addr),
    SetArpTha(Mac),
    SetArpTpa(Ipv4Addr),
}

/// One flow to add (OFPFC_ADD, table 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowRule {
    pub cookie: u64,
    pub priority: u16,
    pub matches: FlowMatch,
    pub actions: Vec<FlowAction>,
}

/// Flows to remove: every flow in table 0 whose cookie equals `cookie` (full mask).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CookieDelete {
    pub cookie: u64,
}

/// An Ethernet frame the switch sends out of one port (an OpenFlow PACKET_OUT), e.g. an ARP reply
/// that tells the site's router where the service is before it asks again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketOut {
    /// The port to send it out of, by name.
    pub port: String,
    /// The whole Ethernet frame, from the destination MAC on (no FCS).
    pub data: Vec<u8>,
}

/// What one phase changes on one switch, applied as one atomic unit: deletions first, then
/// additions; either all take effect or none. Then, once the flows are in, the `packets` are sent
/// (in order); they are not part of the atomic unit: a packet that cannot be sent does not undo
/// the flows (it is logged).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowSet {
    /// What the set is for, e.g. `trombone-source`; shown in logs and timings.
    pub label: String,
    pub delete: Vec<CookieDelete>,
    pub add: Vec<FlowRule>,
    /// Frames to send once the flows took effect.
    pub packets: Vec<PacketOut>,
}

impl FlowSet {
    /// No deletions, no additions and no packets.
    pub fn is_empty(&self) -> bool {
        self.delete.is_empty() && self.add.is_empty() && self.packets.is_empty()
    }
}

/// What installing one set cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowReport {
    /// Flow mods sent (deletions + additions); the set's packets are not counted.
    pub flow_mods: usize,
    /// From the first byte sent to the bundle commit reply, plus sending the set's packets (to the
    /// barrier reply that follows them), if it has any.
    pub took: Duration,
}

/// Why a set was not installed. When `apply` fails, none of the set took effect.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    #[error("cannot reach the switch at {target}: {source}")]
    Connect {
        target: String,
        source: std::io::Error,
    },
    #[error("switch connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("no port named `{0}` on the bridge")]
    UnknownPort(String),
    #[error("switch rejected the set: OpenFlow error type {err_type} code {code}")]
    Rejected { err_type: u16, code: u16 },
    #[error("OpenFlow protocol: {0}")]
    Protocol(String),
    #[error("switch did not answer within {0:?}")]
    Timeout(Duration),
    /// A fake programmer told to fail.
    #[error("injected failure: {0}")]
    Injected(String),
}

/// The SMO's flows on a switch, as [`FlowProgrammer::flows`] reads them back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstalledFlows {
    /// Every flow with an SMO cookie ([`rules::is_smo_cookie`]), ports by name.
    pub rules: Vec<FlowRule>,
    /// Cookies of SMO flows that could not be read back as a [`FlowRule`] (match fields or actions
    /// the SMO never installs): whatever they are, they are not what the SMO would install.
    pub unreadable: Vec<u64>,
}

/// Installs flow sets on one switch.
pub trait FlowProgrammer: Send + Sync + 'static {
    /// Applies `set` atomically (see [`FlowSet`]) and reports what it cost. An empty set succeeds
    /// at once with zero flow mods.
    fn apply(&self, set: &FlowSet) -> impl Future<Output = Result<FlowReport, FlowError>> + Send;

    /// The SMO's flows installed on the switch now (what the reconciler compares with what should
    /// be there).
    fn flows(&self) -> impl Future<Output = Result<InstalledFlows, FlowError>> + Send;
}

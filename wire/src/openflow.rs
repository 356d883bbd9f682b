//! A minimal OpenFlow 1.3 codec (OpenFlow Switch Specification 1.3.5, section 7), no I/O: what
//! the SMO's Open vSwitch programmer (`smo::routing::ovs`) sends and reads on its connection.
//!
//! * sent: HELLO (with a version bitmap), ECHO request/reply, FEATURES request, MULTIPART
//!   PORT_DESC request, FLOW_MOD (add with OXM match and one APPLY_ACTIONS instruction; delete by
//!   cookie), PACKET_OUT (a frame from the controller, with an action list), BARRIER request, and
//!   the ONF bundle extension for OpenFlow 1.3 (`OFPT_EXPERIMENTER`, experimenter `ONF`
//!   0x4F4E4600, exp_type 2300 bundle control, 2301 bundle add);
//! * read: HELLO, ERROR (standard and experimenter), ECHO request/reply, FEATURES reply,
//!   MULTIPART PORT_DESC and FLOW (statistics) replies, BARRIER reply, bundle control replies;
//!   anything else is [`Message::Other`]. A flow's match fields, instructions and actions this
//!   codec does not know are skipped and counted ([`FlowStats::unknown`]).
//!
//! The bundle extension is the OpenFlow 1.4 bundle (spec 1.4.1 section 7.3.9) carried in an
//! experimenter message, as Open vSwitch implements it for OpenFlow 1.3 (`ovs-ofctl --bundle`
//! uses it): after the 16-octet experimenter header come the 1.4 body's `bundle_id`, `type` (a
//! pad in bundle add) and `flags`, and in bundle add the inner message, whose xid must equal the
//! outer one. Bundle errors come back as experimenter errors (type 0xffff) with the ONF codes
//! 2300–2315.

use std::net::Ipv4Addr;

/// Protocol version of OpenFlow 1.3.
pub const OFP_VERSION: u8 = 0x04;
/// Length of `ofp_header`.
pub const HEADER_LEN: usize = 8;

/// Message types (`ofp_type`) this codec knows.
pub mod msg_type {
    pub const HELLO: u8 = 0;
    pub const ERROR: u8 = 1;
    pub const ECHO_REQUEST: u8 = 2;
    pub const ECHO_REPLY: u8 = 3;
    pub const EXPERIMENTER: u8 = 4;
    pub const FEATURES_REQUEST: u8 = 5;
    pub const FEATURES_REPLY: u8 = 6;
    pub const PORT_STATUS: u8 = 12;
    pub const PACKET_OUT: u8 = 13;
    pub const FLOW_MOD: u8 = 14;
    pub const MULTIPART_REQUEST: u8 = 18;
    pub const MULTIPART_REPLY: u8 = 19;
    pub const BARRIER_REQUEST: u8 = 20;
    pub const BARRIER_REPLY: u8 = 21;
    pub const SET_ASYNC: u8 = 28;
}

/// Reserved port: the packet's ingress port (`OFPP_IN_PORT`).
pub const OFPP_IN_PORT: u32 = 0xffff_fff8;
/// Reserved port: the traditional L2 switch (`OFPP_NORMAL`).
pub const OFPP_NORMAL: u32 = 0xffff_fffa;
/// Reserved port: the controller (`OFPP_CONTROLLER`).
pub const OFPP_CONTROLLER: u32 = 0xffff_fffd;
/// Wildcard port in deletions (`OFPP_ANY`).
pub const OFPP_ANY: u32 = 0xffff_ffff;
/// Highest number of a physical port (`OFPP_MAX`).
pub const OFPP_MAX: u32 = 0xffff_ff00;
/// Wildcard group in deletions (`OFPG_ANY`).
pub const OFPG_ANY: u32 = 0xffff_ffff;
/// No buffered packet (`OFP_NO_BUFFER`).
pub const OFP_NO_BUFFER: u32 = 0xffff_ffff;
/// All tables (`OFPTT_ALL`).
pub const OFPTT_ALL: u8 = 0xff;
/// Output the whole packet to the controller (`OFPCML_NO_BUFFER`).
pub const OFPCML_NO_BUFFER: u16 = 0xffff;
/// Error type of experimenter errors (`OFPET_EXPERIMENTER`).
pub const OFPET_EXPERIMENTER: u16 = 0xffff;
/// Multipart type of the individual flow statistics (`OFPMP_FLOW`).
pub const OFPMP_FLOW: u16 = 1;
/// Multipart type of the port description (`OFPMP_PORT_DESC`).
pub const OFPMP_PORT_DESC: u16 = 13;
/// Multipart flag: more replies follow (`OFPMPF_REPLY_MORE`).
pub const OFPMPF_REPLY_MORE: u16 = 1;
/// Hello element type of the version bitmap (`OFPHET_VERSIONBITMAP`).
pub const OFPHET_VERSIONBITMAP: u16 = 1;

/// The ONF experimenter id (`ONF_VENDOR_ID`, "ONF\0").
pub const ONF_EXPERIMENTER: u32 = 0x4f4e_4600;
/// ONF exp_type of bundle control (`ONF_ET_BUNDLE_CONTROL`).
pub const ONF_ET_BUNDLE_CONTROL: u32 = 2300;
/// ONF exp_type of bundle add (`ONF_ET_BUNDLE_ADD_MESSAGE`).
pub const ONF_ET_BUNDLE_ADD_MESSAGE: u32 = 2301;
/// Bundle flag: all or nothing (`OFPBF_ATOMIC`).
pub const OFPBF_ATOMIC: u16 = 1;
/// Bundle flag: in the order added (`OFPBF_ORDERED`).
pub const OFPBF_ORDERED: u16 = 2;
/// ONF error code: one message in the bundle failed (`OFPBFC_MSG_FAILED`, ONF1.3 2313).
pub const ONF_BFC_MSG_FAILED: u16 = 2313;

/// Length of the experimenter message header (`ofp_experimenter_header`).
const EXPERIMENTER_HEADER_LEN: usize = 16;
/// Length of the bundle control / bundle add body that follows it.
const BUNDLE_BODY_LEN: usize = 8;
/// Length of a bundle add message around its inner message.
pub const BUNDLE_ADD_OVERHEAD: usize = EXPERIMENTER_HEADER_LEN + BUNDLE_BODY_LEN;
/// Length of `ofp_flow_mod` up to its match.
const FLOW_MOD_FIXED_LEN: usize = 48;
/// Length of `ofp_packet_out` up to its actions.
pub const PACKET_OUT_FIXED_LEN: usize = 24;
/// Length of `ofp_port`.
const PORT_LEN: usize = 64;
/// Length of `ofp_switch_features`.
const FEATURES_REPLY_LEN: usize = 32;
/// Length of `ofp_flow_stats` up to its match.
const FLOW_STATS_FIXED_LEN: usize = 48;

/// A message that cannot be read (or a flow that cannot be written).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("{what}: need {need} octets, have {have}")]
    Truncated {
        what: &'static str,
        need: usize,
        have: usize,
    },
    #[error("OpenFlow version {0:#04x}, want 0x04 (OpenFlow 1.3)")]
    Version(u8),
    #[error("message length {0} is shorter than the header")]
    Length(u16),
    #[error("message would be {0} octets, more than OpenFlow's 65535")]
    TooLong(usize),
    #[error("unknown bundle control type {0}")]
    BundleType(u16),
}

/// The OpenFlow header (`ofp_header`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: u8,
    pub msg_type: u8,
    pub length: u16,
    pub xid: u32,
}

impl Header {
    /// Reads the header at the start of `buf`.
    pub fn parse(buf: &[u8]) -> Result<Self, CodecError> {
        let mut r = Reader::new("ofp_header", buf);
        let h = Header {
            version: r.u8()?,
            msg_type: r.u8()?,
            length: r.u16()?,
            xid: r.u32()?,
        };
        if usize::from(h.length) < HEADER_LEN {
            return Err(CodecError::Length(h.length));
        }
        Ok(h)
    }
}

/// The length of the first whole message in `buf`, or `None` when more octets are needed.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, CodecError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = usize::from(Header::parse(buf)?.length);
    Ok((buf.len() >= len).then_some(len))
}

/// Bundle control types (`ofp14_bundle_ctrl_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleCtrl {
    OpenRequest,
    OpenReply,
    CloseRequest,
    CloseReply,
    CommitRequest,
    CommitReply,
    DiscardRequest,
    DiscardReply,
}

impl BundleCtrl {
    fn code(self) -> u16 {
        match self {
            BundleCtrl::OpenRequest => 0,
            BundleCtrl::OpenReply => 1,
            BundleCtrl::CloseRequest => 2,
            BundleCtrl::CloseReply => 3,
            BundleCtrl::CommitRequest => 4,
            BundleCtrl::CommitReply => 5,
            BundleCtrl::DiscardRequest => 6,
            BundleCtrl::DiscardReply => 7,
        }
    }

    fn from_code(c: u16) -> Result<Self, CodecError> {
        Ok(match c {
            0 => BundleCtrl::OpenRequest,
            1 => BundleCtrl::OpenReply,
            2 => BundleCtrl::CloseRequest,
            3 => BundleCtrl::CloseReply,
            4 => BundleCtrl::CommitRequest,
            5 => BundleCtrl::CommitReply,
            6 => BundleCtrl::DiscardRequest,
            7 => BundleCtrl::DiscardReply,
            other => return Err(CodecError::BundleType(other)),
        })
    }
}

/// One port of the switch, from the port description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortDesc {
    pub port_no: u32,
    pub hw_addr: [u8; 6],
    pub name: String,
}

/// Why a PORT_STATUS was sent (`ofp_port_reason`); unknown reasons read as `Modify`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortReason {
    Add,
    Delete,
    Modify,
}

/// A message read from the switch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// HELLO: the peer's highest `version`, and its version bitmap when it sent one.
    Hello {
        xid: u32,
        version: u8,
        versions: Option<u32>,
    },
    /// ERROR. For experimenter errors `err_type` is 0xffff, `code` the exp_type and
    /// `experimenter` the experimenter id. `data` is (the start of) the offending request.
    Error {
        xid: u32,
        err_type: u16,
        code: u16,
        experimenter: Option<u32>,
        data: Vec<u8>,
    },
    EchoRequest {
        xid: u32,
        data: Vec<u8>,
    },
    EchoReply {
        xid: u32,
        data: Vec<u8>,
    },
    FeaturesReply {
        xid: u32,
        datapath_id: u64,
        n_buffers: u32,
        n_tables: u8,
    },
    /// One part of the port description; `more` when further parts follow.
    PortDescReply {
        xid: u32,
        more: bool,
        ports: Vec<PortDesc>,
    },
    BarrierReply {
        xid: u32,
    },
    /// A port was added (`reason` 0), deleted (1) or changed (2).
    PortStatus {
        xid: u32,
        reason: PortReason,
        port: PortDesc,
    },
    /// One part of the flow statistics; `more` when further parts follow.
    FlowStatsReply {
        xid: u32,
        more: bool,
        flows: Vec<FlowStats>,
    },
    /// An ONF bundle control message (the switch sends the replies).
    BundleControl {
        xid: u32,
        bundle_id: u32,
        ctrl: BundleCtrl,
        flags: u16,
    },
    /// Anything else (e.g. a PORT_STATUS): read and ignored.
    Other {
        xid: u32,
        msg_type: u8,
    },
}

impl Message {
    /// Reads one whole message (as [`frame_len`] cut it).
    pub fn parse(frame: &[u8]) -> Result<Self, CodecError> {
        let h = Header::parse(frame)?;
        let len = usize::from(h.length);
        if frame.len() < len {
            return Err(CodecError::Truncated {
                what: "message",
                need: len,
                have: frame.len(),
            });
        }
        if h.version != OFP_VERSION && h.msg_type != msg_type::HELLO {
            return Err(CodecError::Version(h.version));
        }
        let body = &frame[HEADER_LEN..len];
        let xid = h.xid;
        Ok(match h.msg_type {
            msg_type::HELLO => Message::Hello {
                xid,
                version: h.version,
                versions: hello_versions(body)?,
            },
            msg_type::ERROR => {
                let mut r = Reader::new("ofp_error_msg", body);
                let err_type = r.u16()?;
                let code = r.u16()?;
                let experimenter = if err_type == OFPET_EXPERIMENTER {
                    Some(r.u32()?)
                } else {
                    None
                };
                Message::Error {
                    xid,
                    err_type,
                    code,
                    experimenter,
                    data: r.rest().to_vec(),
                }
            }
            msg_type::ECHO_REQUEST => Message::EchoRequest {
                xid,
                data: body.to_vec(),
            },
            msg_type::ECHO_REPLY => Message::EchoReply {
                xid,
                data: body.to_vec(),
            },
            msg_type::FEATURES_REPLY => {
                let mut r = Reader::new("ofp_switch_features", body);
                r.need(FEATURES_REPLY_LEN - HEADER_LEN)?;
                Message::FeaturesReply {
                    xid,
                    datapath_id: r.u64()?,
                    n_buffers: r.u32()?,
                    n_tables: r.u8()?,
                }
            }
            msg_type::MULTIPART_REPLY => {
                let mut r = Reader::new("ofp_multipart_reply", body);
                let mp_type = r.u16()?;
                let flags = r.u16()?;
                r.skip(4)?;
                if mp_type == OFPMP_FLOW {
                    let mut flows = Vec::new();
                    let mut rest = r.rest();
                    while !rest.is_empty() {
                        let (flow, tail) = parse_flow_stats(rest)?;
                        flows.push(flow);
                        rest = tail;
                    }
                    return Ok(Message::FlowStatsReply {
                        xid,
                        more: flags & OFPMPF_REPLY_MORE != 0,
                        flows,
                    });
                }
                if mp_type != OFPMP_PORT_DESC {
                    return Ok(Message::Other {
                        xid,
                        msg_type: h.msg_type,
                    });
                }
                let mut ports = Vec::new();
                let mut rest = r.rest();
                while !rest.is_empty() {
                    let (port, tail) = parse_port(rest)?;
                    ports.push(port);
                    rest = tail;
                }
                Message::PortDescReply {
                    xid,
                    more: flags & OFPMPF_REPLY_MORE != 0,
                    ports,
                }
            }
            msg_type::BARRIER_REPLY => Message::BarrierReply { xid },
            msg_type::PORT_STATUS => {
                let mut r = Reader::new("ofp_port_status", body);
                let reason = match r.u8()? {
                    0 => PortReason::Add,
                    1 => PortReason::Delete,
                    _ => PortReason::Modify,
                };
                r.skip(7)?;
                let (port, _) = parse_port(r.rest())?;
                Message::PortStatus { xid, reason, port }
            }
            msg_type::EXPERIMENTER => {
                let mut r = Reader::new("ofp_experimenter_header", body);
                let experimenter = r.u32()?;
                let exp_type = r.u32()?;
                if experimenter != ONF_EXPERIMENTER || exp_type != ONF_ET_BUNDLE_CONTROL {
                    return Ok(Message::Other {
                        xid,
                        msg_type: h.msg_type,
                    });
                }
                let bundle_id = r.u32()?;
                let ctrl = BundleCtrl::from_code(r.u16()?)?;
                let flags = r.u16()?;
                Message::BundleControl {
                    xid,
                    bundle_id,
                    ctrl,
                    flags,
                }
            }
            other => Message::Other {
                xid,
                msg_type: other,
            },
        })
    }
}

fn hello_versions(mut body: &[u8]) -> Result<Option<u32>, CodecError> {
    while body.len() >= 4 {
        let mut r = Reader::new("ofp_hello_elem_header", body);
        let elem_type = r.u16()?;
        let elem_len = usize::from(r.u16()?);
        if elem_len < 4 || elem_len > body.len() {
            return Err(CodecError::Truncated {
                what: "hello element",
                need: elem_len.max(4),
                have: body.len(),
            });
        }
        if elem_type == OFPHET_VERSIONBITMAP && elem_len >= 8 {
            // The first 32-bit word covers versions 0..=31.
            return Ok(Some(r.u32()?));
        }
        // Elements are padded to a multiple of 8 octets.
        body = &body[(elem_len.div_ceil(8) * 8).min(body.len())..];
    }
    Ok(None)
}

/// One flow of a flow statistics reply (`ofp_flow_stats`), counters left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowStats {
    pub table_id: u8,
    pub priority: u16,
    pub cookie: u64,
    /// The match fields this codec knows, in the order the switch sent them.
    pub matches: Vec<Oxm>,
    /// The actions of the APPLY_ACTIONS instruction this codec knows.
    pub actions: Vec<Action>,
    /// Match fields, instructions and actions it does not know (skipped): a flow with any is not
    /// fully described by `matches` and `actions`.
    pub unknown: usize,
}

fn parse_flow_stats(buf: &[u8]) -> Result<(FlowStats, &[u8]), CodecError> {
    let mut r = Reader::new("ofp_flow_stats", buf);
    let length = usize::from(r.u16()?);
    if length < FLOW_STATS_FIXED_LEN + 8 || length > buf.len() {
        return Err(CodecError::Truncated {
            what: "ofp_flow_stats",
            need: length.max(FLOW_STATS_FIXED_LEN + 8),
            have: buf.len(),
        });
    }
    let mut r = Reader::new("ofp_flow_stats", &buf[..length]);
    r.skip(2)?;
    let table_id = r.u8()?;
    r.skip(1 + 4 + 4)?; // pad, duration
    let priority = r.u16()?;
    r.skip(2 + 2 + 2 + 4)?; // timeouts, flags, pad
    let cookie = r.u64()?;
    r.skip(8 + 8)?; // packet and byte counts
    let mut unknown = 0;
    // ofp_match: type, length without padding, OXM fields, padding to 8.
    let match_type = r.u16()?;
    let match_len = usize::from(r.u16()?);
    if match_type != OFPMT_OXM || match_len < 4 {
        return Err(CodecError::Truncated {
            what: "ofp_match",
            need: 4,
            have: match_len,
        });
    }
    let fields = r.take(match_len - 4)?;
    r.skip((match_len.div_ceil(8) * 8 - match_len).min(r.rest().len()))?;
    let mut matches = Vec::new();
    let mut f = Reader::new("oxm field", fields);
    while !f.rest().is_empty() {
        match Oxm::read(&mut f)? {
            Some(oxm) => matches.push(oxm),
            None => unknown += 1,
        }
    }
    let mut actions = Vec::new();
    while !r.rest().is_empty() {
        let kind = r.u16()?;
        let len = usize::from(r.u16()?);
        if len < 4 {
            return Err(CodecError::Truncated {
                what: "ofp_instruction",
                need: 4,
                have: len,
            });
        }
        let body = r.take(len - 4)?;
        if kind != OFPIT_APPLY_ACTIONS || body.len() < 4 {
            unknown += 1;
            continue;
        }
        let mut a = Reader::new("ofp_action", &body[4..]);
        while !a.rest().is_empty() {
            match Action::read(&mut a)? {
                Some(action) => actions.push(action),
                None => unknown += 1,
            }
        }
    }
    Ok((
        FlowStats {
            table_id,
            priority,
            cookie,
            matches,
            actions,
            unknown,
        },
        &buf[length..],
    ))
}

fn parse_port(buf: &[u8]) -> Result<(PortDesc, &[u8]), CodecError> {
    let mut r = Reader::new("ofp_port", buf);
    r.need(PORT_LEN)?;
    let port_no = r.u32()?;
    r.skip(4)?;
    let mut hw_addr = [0u8; 6];
    hw_addr.copy_from_slice(r.take(6)?);
    r.skip(2)?;
    let raw = r.take(16)?;
    let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
    let name = String::from_utf8_lossy(&raw[..end]).into_owned();
    Ok((
        PortDesc {
            port_no,
            hw_addr,
            name,
        },
        &buf[PORT_LEN..],
    ))
}

/// A big-endian cursor over a message body.
struct Reader<'a> {
    what: &'static str,
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(what: &'static str, buf: &'a [u8]) -> Self {
        Self { what, buf, pos: 0 }
    }

    fn need(&self, n: usize) -> Result<(), CodecError> {
        let have = self.buf.len() - self.pos;
        if have < n {
            return Err(CodecError::Truncated {
                what: self.what,
                need: self.pos + n,
                have: self.buf.len(),
            });
        }
        Ok(())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        self.need(n)?;
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn skip(&mut self, n: usize) -> Result<(), CodecError> {
        self.take(n).map(drop)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, CodecError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, CodecError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, CodecError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }
}

// ---- encoding ----

fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_zeros(out: &mut Vec<u8>, n: usize) {
    out.resize(out.len() + n, 0);
}

/// Writes a header whose length [`end_message`] fills in; returns where the message starts.
fn begin_message(out: &mut Vec<u8>, msg_type: u8, xid: u32) -> usize {
    let start = out.len();
    out.extend_from_slice(&[OFP_VERSION, msg_type, 0, 0]);
    put_u32(out, xid);
    start
}

/// Fills in the length of the message that starts at `start`. Callers only build messages whose
/// length is known to fit (see [`FlowMod::check_len`]); a longer one is cut to a length the
/// switch will reject rather than misread.
fn end_message(out: &mut [u8], start: usize) {
    let len = u16::try_from(out.len() - start).unwrap_or(0);
    out[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// HELLO offering OpenFlow 1.3 only (a version bitmap element with bit 4 set).
pub fn hello(out: &mut Vec<u8>, xid: u32) {
    let start = begin_message(out, msg_type::HELLO, xid);
    put_u16(out, OFPHET_VERSIONBITMAP);
    put_u16(out, 8);
    put_u32(out, 1 << OFP_VERSION);
    end_message(out, start);
}

/// ECHO_REQUEST carrying `data`.
pub fn echo_request(out: &mut Vec<u8>, xid: u32, data: &[u8]) {
    let start = begin_message(out, msg_type::ECHO_REQUEST, xid);
    out.extend_from_slice(data);
    end_message(out, start);
}

/// ECHO_REPLY to a request with `xid`, echoing its `data`.
pub fn echo_reply(out: &mut Vec<u8>, xid: u32, data: &[u8]) {
    let start = begin_message(out, msg_type::ECHO_REPLY, xid);
    out.extend_from_slice(data);
    end_message(out, start);
}

/// FEATURES_REQUEST.
pub fn features_request(out: &mut Vec<u8>, xid: u32) {
    let start = begin_message(out, msg_type::FEATURES_REQUEST, xid);
    end_message(out, start);
}

/// MULTIPART_REQUEST of the port description.
pub fn port_desc_request(out: &mut Vec<u8>, xid: u32) {
    let start = begin_message(out, msg_type::MULTIPART_REQUEST, xid);
    put_u16(out, OFPMP_PORT_DESC);
    put_u16(out, 0);
    put_zeros(out, 4);
    end_message(out, start);
}

/// SET_ASYNC: which asynchronous messages the switch sends on this connection. Each mask pair
/// is for the master/equal role first, the slave role second; bit `n` enables reason `n`.
pub fn set_async(
    out: &mut Vec<u8>,
    xid: u32,
    packet_in: [u32; 2],
    port_status: [u32; 2],
    flow_removed: [u32; 2],
) {
    let start = begin_message(out, msg_type::SET_ASYNC, xid);
    for m in packet_in.into_iter().chain(port_status).chain(flow_removed) {
        put_u32(out, m);
    }
    end_message(out, start);
}

/// MULTIPART_REQUEST of the flow statistics of every table, for the flows whose cookie, masked
/// with `cookie_mask`, equals `cookie` (`0, 0` for all).
pub fn flow_stats_request(out: &mut Vec<u8>, xid: u32, cookie: u64, cookie_mask: u64) {
    let start = begin_message(out, msg_type::MULTIPART_REQUEST, xid);
    put_u16(out, OFPMP_FLOW);
    put_u16(out, 0);
    put_zeros(out, 4);
    out.push(OFPTT_ALL);
    put_zeros(out, 3);
    put_u32(out, OFPP_ANY);
    put_u32(out, OFPG_ANY);
    put_zeros(out, 4);
    put_u64(out, cookie);
    put_u64(out, cookie_mask);
    // An empty OXM match: type, length 4, padding to 8.
    put_u16(out, OFPMT_OXM);
    put_u16(out, 4);
    put_zeros(out, 4);
    end_message(out, start);
}

/// BARRIER_REQUEST.
pub fn barrier_request(out: &mut Vec<u8>, xid: u32) {
    let start = begin_message(out, msg_type::BARRIER_REQUEST, xid);
    end_message(out, start);
}

fn begin_onf(out: &mut Vec<u8>, exp_type: u32, xid: u32) -> usize {
    let start = begin_message(out, msg_type::EXPERIMENTER, xid);
    put_u32(out, ONF_EXPERIMENTER);
    put_u32(out, exp_type);
    start
}

/// An ONF bundle control request (open, close, commit or discard) for bundle `bundle_id`.
pub fn bundle_control(out: &mut Vec<u8>, xid: u32, bundle_id: u32, ctrl: BundleCtrl, flags: u16) {
    let start = begin_onf(out, ONF_ET_BUNDLE_CONTROL, xid);
    put_u32(out, bundle_id);
    put_u16(out, ctrl.code());
    put_u16(out, flags);
    end_message(out, start);
}

/// An ONF bundle add wrapping `fm`; the inner FLOW_MOD carries the same `xid` as the outer
/// message, as the extension requires.
pub fn bundle_add_flow_mod(out: &mut Vec<u8>, xid: u32, bundle_id: u32, flags: u16, fm: &FlowMod) {
    let start = begin_onf(out, ONF_ET_BUNDLE_ADD_MESSAGE, xid);
    put_u32(out, bundle_id);
    put_u16(out, 0);
    put_u16(out, flags);
    fm.emit(out, xid);
    end_message(out, start);
}

/// The length of a PACKET_OUT with `actions` carrying `data`, or [`CodecError::TooLong`] when it
/// would not fit OpenFlow's 16-bit length.
pub fn packet_out_len(actions: &[Action], data: &[u8]) -> Result<usize, CodecError> {
    let len = PACKET_OUT_FIXED_LEN + actions.iter().map(Action::len).sum::<usize>() + data.len();
    if len > usize::from(u16::MAX) {
        return Err(CodecError::TooLong(len));
    }
    Ok(len)
}

/// PACKET_OUT (spec 1.3.5 section 7.3.7) of a frame the controller supplies: no buffer
/// (`OFP_NO_BUFFER`), `in_port` as given (`OFPP_CONTROLLER` for a frame of the controller's own),
/// `actions` (e.g. one OUTPUT), then `data`, the whole Ethernet frame. Check the length first with
/// [`packet_out_len`].
pub fn packet_out(out: &mut Vec<u8>, xid: u32, in_port: u32, actions: &[Action], data: &[u8]) {
    let start = begin_message(out, msg_type::PACKET_OUT, xid);
    put_u32(out, OFP_NO_BUFFER);
    put_u32(out, in_port);
    let actions_len: usize = actions.iter().map(Action::len).sum();
    put_u16(out, u16::try_from(actions_len).unwrap_or(0));
    put_zeros(out, 6);
    for a in actions {
        a.emit(out);
    }
    out.extend_from_slice(data);
    end_message(out, start);
}

/// One OXM field of the OpenFlow basic class (`OFPXMC_OPENFLOW_BASIC`), without a mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Oxm {
    InPort(u32),
    EthDst([u8; 6]),
    EthSrc([u8; 6]),
    EthType(u16),
    Ipv4Src(Ipv4Addr),
    Ipv4Dst(Ipv4Addr),
    ArpOp(u16),
    ArpSpa(Ipv4Addr),
    ArpTpa(Ipv4Addr),
    ArpSha([u8; 6]),
    ArpTha([u8; 6]),
}

/// `OFPXMC_OPENFLOW_BASIC`.
const OXM_CLASS_BASIC: u32 = 0x8000;

impl Oxm {
    /// The field number (`oxm_ofb_match_fields`).
    pub fn field(&self) -> u8 {
        match self {
            Oxm::InPort(_) => 0,
            Oxm::EthDst(_) => 3,
            Oxm::EthSrc(_) => 4,
            Oxm::EthType(_) => 5,
            Oxm::Ipv4Src(_) => 11,
            Oxm::Ipv4Dst(_) => 12,
            Oxm::ArpOp(_) => 21,
            Oxm::ArpSpa(_) => 22,
            Oxm::ArpTpa(_) => 23,
            Oxm::ArpSha(_) => 24,
            Oxm::ArpTha(_) => 25,
        }
    }

    /// Length of the payload.
    pub fn payload_len(&self) -> usize {
        match self {
            Oxm::EthType(_) | Oxm::ArpOp(_) => 2,
            Oxm::InPort(_)
            | Oxm::Ipv4Src(_)
            | Oxm::Ipv4Dst(_)
            | Oxm::ArpSpa(_)
            | Oxm::ArpTpa(_) => 4,
            Oxm::EthDst(_) | Oxm::EthSrc(_) | Oxm::ArpSha(_) | Oxm::ArpTha(_) => 6,
        }
    }

    /// Length of header + payload.
    pub fn len(&self) -> usize {
        4 + self.payload_len()
    }

    /// An OXM is never empty (it has a header); for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Reads one OXM field: `None` (skipped) for a class, field, mask or length this codec does
    /// not know.
    fn read(r: &mut Reader<'_>) -> Result<Option<Self>, CodecError> {
        let header = r.u32()?;
        let len = (header & 0xff) as usize;
        let payload = r.take(len)?;
        let (class, field, masked) = (header >> 16, (header >> 9) & 0x7f, header & 0x100 != 0);
        if class != OXM_CLASS_BASIC || masked {
            return Ok(None);
        }
        let mac = || -> [u8; 6] {
            let mut m = [0u8; 6];
            m.copy_from_slice(payload);
            m
        };
        let ip = || Ipv4Addr::new(payload[0], payload[1], payload[2], payload[3]);
        let u16_ = || u16::from_be_bytes([payload[0], payload[1]]);
        Ok(match (field, len) {
            (0, 4) => Some(Oxm::InPort(u32::from_be_bytes([
                payload[0], payload[1], payload[2], payload[3],
            ]))),
            (3, 6) => Some(Oxm::EthDst(mac())),
            (4, 6) => Some(Oxm::EthSrc(mac())),
            (5, 2) => Some(Oxm::EthType(u16_())),
            (11, 4) => Some(Oxm::Ipv4Src(ip())),
            (12, 4) => Some(Oxm::Ipv4Dst(ip())),
            (21, 2) => Some(Oxm::ArpOp(u16_())),
            (22, 4) => Some(Oxm::ArpSpa(ip())),
            (23, 4) => Some(Oxm::ArpTpa(ip())),
            (24, 6) => Some(Oxm::ArpSha(mac())),
            (25, 6) => Some(Oxm::ArpTha(mac())),
            _ => None,
        })
    }

    /// Writes the 4-octet header (class, field, no mask, length) and the payload.
    pub fn emit(&self, out: &mut Vec<u8>) {
        let len = self.payload_len() as u32;
        put_u32(
            out,
            (OXM_CLASS_BASIC << 16) | (u32::from(self.field()) << 9) | len,
        );
        match *self {
            Oxm::InPort(p) => put_u32(out, p),
            Oxm::EthType(v) | Oxm::ArpOp(v) => put_u16(out, v),
            Oxm::Ipv4Src(a) | Oxm::Ipv4Dst(a) | Oxm::ArpSpa(a) | Oxm::ArpTpa(a) => {
                out.extend_from_slice(&a.octets())
            }
            Oxm::EthDst(m) | Oxm::EthSrc(m) | Oxm::ArpSha(m) | Oxm::ArpTha(m) => {
                out.extend_from_slice(&m)
            }
        }
    }
}

/// One action of an APPLY_ACTIONS instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `OFPAT_OUTPUT` to a port number (or a reserved port).
    Output(u32),
    /// `OFPAT_SET_FIELD`.
    SetField(Oxm),
}

const OFPAT_OUTPUT: u16 = 0;
const OFPAT_SET_FIELD: u16 = 25;
const OFPIT_APPLY_ACTIONS: u16 = 4;
const OFPMT_OXM: u16 = 1;

impl Action {
    /// Encoded length, padded to 8 octets.
    pub fn len(&self) -> usize {
        match self {
            Action::Output(_) => 16,
            Action::SetField(oxm) => (4 + oxm.len()).div_ceil(8) * 8,
        }
    }

    /// An action is never empty; for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Reads one action: `None` (skipped) for a type this codec does not know, or a SET_FIELD of
    /// an unknown field.
    fn read(r: &mut Reader<'_>) -> Result<Option<Self>, CodecError> {
        let kind = r.u16()?;
        let len = usize::from(r.u16()?);
        if len < 8 || len % 8 != 0 {
            return Err(CodecError::Truncated {
                what: "ofp_action",
                need: len.max(8).next_multiple_of(8),
                have: len,
            });
        }
        let body = r.take(len - 4)?;
        let mut b = Reader::new("ofp_action", body);
        Ok(match kind {
            OFPAT_OUTPUT if len == 16 => Some(Action::Output(b.u32()?)),
            OFPAT_SET_FIELD => Oxm::read(&mut b)?.map(Action::SetField),
            _ => None,
        })
    }

    pub fn emit(&self, out: &mut Vec<u8>) {
        match *self {
            Action::Output(port) => {
                put_u16(out, OFPAT_OUTPUT);
                put_u16(out, 16);
                put_u32(out, port);
                // max_len only matters for output to the controller.
                put_u16(
                    out,
                    if port == OFPP_CONTROLLER {
                        OFPCML_NO_BUFFER
                    } else {
                        0
                    },
                );
                put_zeros(out, 6);
            }
            Action::SetField(oxm) => {
                let len = self.len();
                put_u16(out, OFPAT_SET_FIELD);
                put_u16(out, len as u16);
                oxm.emit(out);
                put_zeros(out, len - 4 - oxm.len());
            }
        }
    }
}

/// FLOW_MOD command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowModCommand {
    /// `OFPFC_ADD`.
    Add,
    /// `OFPFC_DELETE` (non-strict).
    Delete,
}

/// A FLOW_MOD with port names already resolved to numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowMod {
    pub command: FlowModCommand,
    pub cookie: u64,
    pub cookie_mask: u64,
    pub table_id: u8,
    pub priority: u16,
    pub matches: Vec<Oxm>,
    /// The actions of one APPLY_ACTIONS instruction (none for deletions).
    pub actions: Vec<Action>,
}

impl FlowMod {
    /// Adds a flow to table 0.
    pub fn add(cookie: u64, priority: u16, matches: Vec<Oxm>, actions: Vec<Action>) -> Self {
        Self {
            command: FlowModCommand::Add,
            cookie,
            cookie_mask: 0,
            table_id: 0,
            priority,
            matches,
            actions,
        }
    }

    /// Deletes every flow of table 0 whose cookie is `cookie`.
    pub fn delete_cookie(cookie: u64) -> Self {
        Self {
            command: FlowModCommand::Delete,
            cookie,
            cookie_mask: u64::MAX,
            table_id: 0,
            priority: 0,
            matches: Vec::new(),
            actions: Vec::new(),
        }
    }

    fn match_len(&self) -> usize {
        4 + self.matches.iter().map(Oxm::len).sum::<usize>()
    }

    fn instructions_len(&self) -> usize {
        if self.command == FlowModCommand::Add {
            8 + self.actions.iter().map(Action::len).sum::<usize>()
        } else {
            0
        }
    }

    /// Encoded length of the whole message.
    pub fn encoded_len(&self) -> usize {
        FLOW_MOD_FIXED_LEN + self.match_len().div_ceil(8) * 8 + self.instructions_len()
    }

    /// Checks that the message, also wrapped in a bundle add, fits OpenFlow's 16-bit length.
    pub fn check_len(&self) -> Result<(), CodecError> {
        let len = self.encoded_len() + BUNDLE_ADD_OVERHEAD;
        if len > usize::from(u16::MAX) {
            return Err(CodecError::TooLong(len));
        }
        Ok(())
    }

    /// Writes the FLOW_MOD message with `xid`.
    pub fn emit(&self, out: &mut Vec<u8>, xid: u32) {
        let start = begin_message(out, msg_type::FLOW_MOD, xid);
        put_u64(out, self.cookie);
        put_u64(out, self.cookie_mask);
        out.push(self.table_id);
        out.push(match self.command {
            FlowModCommand::Add => 0,
            FlowModCommand::Delete => 3,
        });
        put_u16(out, 0); // idle_timeout
        put_u16(out, 0); // hard_timeout
        put_u16(out, self.priority);
        put_u32(out, OFP_NO_BUFFER);
        put_u32(out, OFPP_ANY); // out_port: only deletions look at it
        put_u32(out, OFPG_ANY); // out_group
        put_u16(out, 0); // flags
        put_zeros(out, 2);
        // ofp_match: type, length (without padding), OXM fields, zero padding to 8.
        let match_len = self.match_len();
        put_u16(out, OFPMT_OXM);
        put_u16(out, match_len as u16);
        for oxm in &self.matches {
            oxm.emit(out);
        }
        put_zeros(out, match_len.div_ceil(8) * 8 - match_len);
        if self.command == FlowModCommand::Add {
            put_u16(out, OFPIT_APPLY_ACTIONS);
            put_u16(out, self.instructions_len() as u16);
            put_zeros(out, 4);
            for a in &self.actions {
                a.emit(out);
            }
        }
        end_message(out, start);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut v = Vec::new();
        f(&mut v);
        v
    }

    #[test]
    fn hello_offers_only_openflow_13() {
        assert_eq!(
            bytes(|o| hello(o, 1)),
            [
                0x04, 0x00, 0x00, 0x10, 0, 0, 0, 1, // header, length 16
                0x00, 0x01, 0x00, 0x08, // OFPHET_VERSIONBITMAP, length 8
                0x00, 0x00, 0x00, 0x10, // bit 4: OpenFlow 1.3
            ]
        );
    }

    #[test]
    fn reads_hello_with_and_without_bitmap() {
        let ovs = [
            0x04, 0x00, 0x00, 0x10, 0, 0, 0, 9, 0x00, 0x01, 0x00, 0x08, 0x00, 0x00, 0x00, 0x10,
        ];
        assert_eq!(
            Message::parse(&ovs),
            Ok(Message::Hello {
                xid: 9,
                version: 4,
                versions: Some(0x10)
            })
        );
        // A 1.0-only peer: the header version differs, which HELLO allows.
        assert_eq!(
            Message::parse(&[0x01, 0x00, 0x00, 0x08, 0, 0, 0, 2]),
            Ok(Message::Hello {
                xid: 2,
                version: 1,
                versions: None
            })
        );
    }

    #[test]
    fn echo_round_trip() {
        let req = bytes(|o| echo_request(o, 0x0102_0304, b"hi"));
        assert_eq!(req, [0x04, 2, 0, 10, 1, 2, 3, 4, b'h', b'i']);
        assert_eq!(
            Message::parse(&req),
            Ok(Message::EchoRequest {
                xid: 0x0102_0304,
                data: b"hi".to_vec()
            })
        );
        let rep = bytes(|o| echo_reply(o, 7, b"hi"));
        assert_eq!(rep, [0x04, 3, 0, 10, 0, 0, 0, 7, b'h', b'i']);
        assert_eq!(
            Message::parse(&rep),
            Ok(Message::EchoReply {
                xid: 7,
                data: b"hi".to_vec()
            })
        );
    }

    #[test]
    fn reads_standard_and_experimenter_errors() {
        // OFPET_BAD_MATCH (4), OFPBMC_BAD_PREREQ (9), followed by the start of the request.
        let e = [0x04, 1, 0, 16, 0, 0, 0, 5, 0, 4, 0, 9, 0x04, 14, 0, 80];
        assert_eq!(
            Message::parse(&e),
            Ok(Message::Error {
                xid: 5,
                err_type: 4,
                code: 9,
                experimenter: None,
                data: vec![0x04, 14, 0, 80],
            })
        );
        // ONF bundle error OFPBFC_MSG_FAILED: type 0xffff, exp_type 2313, experimenter ONF.
        let e = [
            0x04, 1, 0, 16, 0, 0, 0, 6, 0xff, 0xff, 0x09, 0x09, 0x4f, 0x4e, 0x46, 0x00,
        ];
        assert_eq!(
            Message::parse(&e),
            Ok(Message::Error {
                xid: 6,
                err_type: OFPET_EXPERIMENTER,
                code: ONF_BFC_MSG_FAILED,
                experimenter: Some(ONF_EXPERIMENTER),
                data: Vec::new(),
            })
        );
    }

    #[test]
    fn features_request_and_reply() {
        assert_eq!(bytes(|o| features_request(o, 3)), [4, 5, 0, 8, 0, 0, 0, 3]);
        let mut rep = vec![4, 6, 0, 32, 0, 0, 0, 3];
        rep.extend_from_slice(&0x0000_aabb_ccdd_eeffu64.to_be_bytes());
        rep.extend_from_slice(&[0, 0, 0, 0]); // n_buffers
        rep.extend_from_slice(&[254, 0, 0, 0]); // n_tables, auxiliary_id, pad
        rep.extend_from_slice(&[0, 0, 0, 0x4f, 0, 0, 0, 0]); // capabilities, reserved
        assert_eq!(
            Message::parse(&rep),
            Ok(Message::FeaturesReply {
                xid: 3,
                datapath_id: 0xaabb_ccdd_eeff,
                n_buffers: 0,
                n_tables: 254,
            })
        );
        assert!(matches!(
            Message::parse(&rep[..24]),
            Err(CodecError::Truncated { .. })
        ));
    }

    fn port(no: u32, mac: [u8; 6], name: &str) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(&no.to_be_bytes());
        p.extend_from_slice(&[0; 4]);
        p.extend_from_slice(&mac);
        p.extend_from_slice(&[0; 2]);
        let mut n = [0u8; 16];
        n[..name.len()].copy_from_slice(name.as_bytes());
        p.extend_from_slice(&n);
        p.extend_from_slice(&[0; 32]); // config … max_speed
        assert_eq!(p.len(), 64);
        p
    }

    #[test]
    fn port_desc_request_and_reply() {
        assert_eq!(
            bytes(|o| port_desc_request(o, 4)),
            [4, 18, 0, 16, 0, 0, 0, 4, 0, 13, 0, 0, 0, 0, 0, 0]
        );
        let mut rep = vec![4, 19, 0, 0, 0, 0, 0, 4, 0, 13, 0, 1, 0, 0, 0, 0];
        rep.extend(port(1, [2, 0, 0, 0, 0, 1], "bh"));
        rep.extend(port(0xffff_fffe, [2, 0, 0, 0, 0, 2], "br-edge-x"));
        let len = rep.len() as u16;
        rep[2..4].copy_from_slice(&len.to_be_bytes());
        assert_eq!(
            Message::parse(&rep),
            Ok(Message::PortDescReply {
                xid: 4,
                more: true,
                ports: vec![
                    PortDesc {
                        port_no: 1,
                        hw_addr: [2, 0, 0, 0, 0, 1],
                        name: "bh".into()
                    },
                    PortDesc {
                        port_no: 0xffff_fffe,
                        hw_addr: [2, 0, 0, 0, 0, 2],
                        name: "br-edge-x".into()
                    },
                ],
            })
        );
        // A port cut short is an error, not a silently shorter list.
        rep.truncate(rep.len() - 1);
        let len = rep.len() as u16;
        rep[2..4].copy_from_slice(&len.to_be_bytes());
        assert!(matches!(
            Message::parse(&rep),
            Err(CodecError::Truncated { .. })
        ));
    }

    #[test]
    fn port_status_and_set_async() {
        let mut st = vec![4, 12, 0, 80, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0];
        st.extend(port(7, [2, 0, 0, 0, 0, 7], "srv"));
        assert_eq!(
            Message::parse(&st),
            Ok(Message::PortStatus {
                xid: 0,
                reason: PortReason::Delete,
                port: PortDesc {
                    port_no: 7,
                    hw_addr: [2, 0, 0, 0, 0, 7],
                    name: "srv".into()
                }
            })
        );
        #[rustfmt::skip]
        let want: Vec<u8> = vec![
            4, 28, 0, 32, 0, 0, 0, 3,
            0, 0, 0, 0, 0, 0, 0, 0, // packet_in_mask: none
            0, 0, 0, 7, 0, 0, 0, 7, // port_status_mask: add, delete, modify
            0, 0, 0, 0, 0, 0, 0, 0, // flow_removed_mask: none
        ];
        assert_eq!(bytes(|o| set_async(o, 3, [0, 0], [7, 7], [0, 0])), want);
    }

    #[test]
    fn barrier_request_and_reply() {
        assert_eq!(bytes(|o| barrier_request(o, 8)), [4, 20, 0, 8, 0, 0, 0, 8]);
        assert_eq!(
            Message::parse(&[4, 21, 0, 8, 0, 0, 0, 8]),
            Ok(Message::BarrierReply { xid: 8 })
        );
    }

    #[test]
    fn flow_mod_add_with_match_output_and_padding() {
        // priority=200,in_port=1,ip,nw_dst=20.0.0.10 actions=output:3
        let fm = FlowMod::add(
            0x534d_4f52_0000_0001,
            200,
            vec![
                Oxm::InPort(1),
                Oxm::EthType(0x0800),
                Oxm::Ipv4Dst(Ipv4Addr::new(20, 0, 0, 10)),
            ],
            vec![Action::Output(3)],
        );
        #[rustfmt::skip]
        let want: Vec<u8> = vec![
            0x04, 14, 0, 104, 0, 0, 0, 0x2a,                // header: FLOW_MOD, length 104
            0x53, 0x4d, 0x4f, 0x52, 0, 0, 0, 1,             // cookie
            0, 0, 0, 0, 0, 0, 0, 0,                         // cookie_mask
            0, 0,                                           // table 0, OFPFC_ADD
            0, 0, 0, 0,                                     // idle, hard timeout
            0, 200,                                         // priority
            0xff, 0xff, 0xff, 0xff,                         // buffer_id: OFP_NO_BUFFER
            0xff, 0xff, 0xff, 0xff,                         // out_port: OFPP_ANY
            0xff, 0xff, 0xff, 0xff,                         // out_group: OFPG_ANY
            0, 0, 0, 0,                                     // flags, pad
            0, 1, 0, 26,                                    // ofp_match: OXM, length 4+8+6+8
            0x80, 0x00, 0x00, 0x04, 0, 0, 0, 1,             // OXM in_port = 1
            0x80, 0x00, 0x0a, 0x02, 0x08, 0x00,             // OXM eth_type = 0x0800
            0x80, 0x00, 0x18, 0x04, 20, 0, 0, 10,           // OXM ipv4_dst
            0, 0, 0, 0, 0, 0,                               // match padding to 32
            0, 4, 0, 24, 0, 0, 0, 0,                        // APPLY_ACTIONS, length 8+16
            0, 0, 0, 16, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, // OUTPUT port 3, max_len 0
        ];
        assert_eq!(fm.encoded_len(), want.len());
        assert_eq!(bytes(|o| fm.emit(o, 0x2a)), want);
    }

    #[test]
    fn set_field_actions_are_padded_to_eight() {
        let cases: [(Action, Vec<u8>); 5] = [
            (
                Action::SetField(Oxm::EthDst([2, 0x14, 0, 0, 0, 1])),
                vec![0, 25, 0, 16, 0x80, 0, 0x06, 0x06, 2, 0x14, 0, 0, 0, 1, 0, 0],
            ),
            (
                Action::SetField(Oxm::EthSrc([2, 0x20, 0, 0, 0, 0x0a])),
                vec![
                    0, 25, 0, 16, 0x80, 0, 0x08, 0x06, 2, 0x20, 0, 0, 0, 0x0a, 0, 0,
                ],
            ),
            (
                Action::SetField(Oxm::ArpOp(2)),
                vec![0, 25, 0, 16, 0x80, 0, 0x2a, 0x02, 0, 2, 0, 0, 0, 0, 0, 0],
            ),
            (
                Action::SetField(Oxm::ArpSpa(Ipv4Addr::new(20, 0, 0, 10))),
                vec![0, 25, 0, 16, 0x80, 0, 0x2c, 0x04, 20, 0, 0, 10, 0, 0, 0, 0],
            ),
            (
                Action::Output(OFPP_CONTROLLER),
                vec![
                    0, 0, 0, 16, 0xff, 0xff, 0xff, 0xfd, 0xff, 0xff, 0, 0, 0, 0, 0, 0,
                ],
            ),
        ];
        for (a, want) in cases {
            assert_eq!(a.len(), want.len(), "{a:?}");
            assert_eq!(bytes(|o| a.emit(o)), want, "{a:?}");
        }
        let more: [(Oxm, [u8; 4]); 3] = [
            (Oxm::ArpTpa(Ipv4Addr::new(20, 0, 0, 1)), [0x80, 0, 0x2e, 4]),
            (Oxm::ArpSha([0; 6]), [0x80, 0, 0x30, 6]),
            (Oxm::ArpTha([0; 6]), [0x80, 0, 0x32, 6]),
        ];
        for (oxm, header) in more {
            let b = bytes(|o| oxm.emit(o));
            assert_eq!(b[..4], header, "{oxm:?}");
            assert_eq!(b.len(), oxm.len());
        }
    }

    #[test]
    fn flow_mod_delete_by_cookie() {
        #[rustfmt::skip]
        let want: Vec<u8> = vec![
            0x04, 14, 0, 56, 0, 0, 0, 7,
            0x53, 0x4d, 0x4f, 0x52, 0, 0, 0, 9,             // cookie
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // cookie_mask: all ones
            0, 3,                                           // table 0, OFPFC_DELETE
            0, 0, 0, 0, 0, 0,                               // timeouts, priority
            0xff, 0xff, 0xff, 0xff,                         // buffer_id
            0xff, 0xff, 0xff, 0xff,                         // out_port: OFPP_ANY
            0xff, 0xff, 0xff, 0xff,                         // out_group: OFPG_ANY
            0, 0, 0, 0,                                     // flags, pad
            0, 1, 0, 4, 0, 0, 0, 0,                         // empty OXM match, padded
        ];
        let fm = FlowMod::delete_cookie(0x534d_4f52_0000_0009);
        assert_eq!(fm.encoded_len(), 56);
        assert_eq!(bytes(|o| fm.emit(o, 7)), want);
    }

    #[test]
    fn bundle_control_request_and_reply() {
        #[rustfmt::skip]
        let open: Vec<u8> = vec![
            0x04, 4, 0, 24, 0, 0, 0, 11,    // OFPT_EXPERIMENTER, length 24
            0x4f, 0x4e, 0x46, 0x00,         // ONF
            0, 0, 0x08, 0xfc,               // exp_type 2300
            0, 0, 0, 5,                     // bundle_id
            0, 0,                           // OPEN_REQUEST
            0, 3,                           // ATOMIC | ORDERED
        ];
        assert_eq!(
            bytes(|o| bundle_control(
                o,
                11,
                5,
                BundleCtrl::OpenRequest,
                OFPBF_ATOMIC | OFPBF_ORDERED
            )),
            open
        );
        let commit = bytes(|o| bundle_control(o, 12, 5, BundleCtrl::CommitRequest, 3));
        assert_eq!(commit[20..22], [0, 4]);
        let discard = bytes(|o| bundle_control(o, 13, 5, BundleCtrl::DiscardRequest, 3));
        assert_eq!(discard[20..22], [0, 6]);
        let mut reply = commit.clone();
        reply[21] = 5; // COMMIT_REPLY
        assert_eq!(
            Message::parse(&reply),
            Ok(Message::BundleControl {
                xid: 12,
                bundle_id: 5,
                ctrl: BundleCtrl::CommitReply,
                flags: 3
            })
        );
        reply[21] = 42;
        assert_eq!(Message::parse(&reply), Err(CodecError::BundleType(42)));
    }

    #[test]
    fn bundle_add_wraps_the_flow_mod_with_the_same_xid() {
        let fm = FlowMod::delete_cookie(1);
        let b = bytes(|o| bundle_add_flow_mod(o, 0x77, 5, 3, &fm));
        #[rustfmt::skip]
        let head: [u8; 24] = [
            0x04, 4, 0, 80, 0, 0, 0, 0x77,  // OFPT_EXPERIMENTER, length 24 + 56
            0x4f, 0x4e, 0x46, 0x00,         // ONF
            0, 0, 0x08, 0xfd,               // exp_type 2301
            0, 0, 0, 5,                     // bundle_id
            0, 0,                           // pad
            0, 3,                           // flags
        ];
        assert_eq!(b[..24], head);
        assert_eq!(b[24..], bytes(|o| fm.emit(o, 0x77)));
        assert_eq!(Header::parse(&b[24..]).map(|h| h.xid), Ok(0x77));
    }

    /// The trombone's ARP responder: priority=200,in_port=2,arp,arp_op=1,arp_tpa=20.0.0.10, seven
    /// set-fields, IN_PORT.
    fn arp_responder() -> FlowMod {
        let svc = Ipv4Addr::new(20, 0, 0, 10);
        let (svc_mac, gw_mac) = ([2, 0x20, 0, 0, 0, 0x0a], [2, 0x14, 0, 0, 0, 1]);
        FlowMod::add(
            0x534d_4f52_0000_0001,
            200,
            vec![
                Oxm::InPort(2),
                Oxm::EthType(0x0806),
                Oxm::ArpOp(1),
                Oxm::ArpTpa(svc),
            ],
            vec![
                Action::SetField(Oxm::EthDst(gw_mac)),
                Action::SetField(Oxm::EthSrc(svc_mac)),
                Action::SetField(Oxm::ArpOp(2)),
                Action::SetField(Oxm::ArpSha(svc_mac)),
                Action::SetField(Oxm::ArpSpa(svc)),
                Action::SetField(Oxm::ArpTha(gw_mac)),
                Action::SetField(Oxm::ArpTpa(Ipv4Addr::new(20, 0, 0, 1))),
                Action::Output(OFPP_IN_PORT),
            ],
        )
    }

    #[test]
    fn an_arp_responder_encodes_in_prerequisite_order() {
        let fm = arp_responder();
        // 48 fixed + match (4 + 8 + 6 + 6 + 8 = 32) + instruction 8 + 7 set-fields × 16 + output 16.
        assert_eq!(fm.encoded_len(), 48 + 32 + 8 + 7 * 16 + 16);
        let b = bytes(|o| fm.emit(o, 1));
        assert_eq!(b.len(), fm.encoded_len());
        assert_eq!(usize::from(u16::from_be_bytes([b[2], b[3]])), b.len());
        assert!(fm.check_len().is_ok());
    }

    #[test]
    fn packet_out_of_a_controller_frame() {
        // A 42-octet frame (an ARP reply's length) out of port 2.
        let data: Vec<u8> = (0..42).collect();
        let actions = [Action::Output(2)];
        #[rustfmt::skip]
        let mut want: Vec<u8> = vec![
            0x04, 13, 0, 82, 0, 0, 0, 0x31,     // header: PACKET_OUT, length 24 + 16 + 42
            0xff, 0xff, 0xff, 0xff,             // buffer_id: OFP_NO_BUFFER
            0xff, 0xff, 0xff, 0xfd,             // in_port: OFPP_CONTROLLER
            0, 16,                              // actions_len
            0, 0, 0, 0, 0, 0,                   // pad
            0, 0, 0, 16, 0, 0, 0, 2,            // OUTPUT, length 16, port 2
            0, 0, 0, 0, 0, 0, 0, 0,             // max_len 0, pad
        ];
        want.extend_from_slice(&data);
        assert_eq!(packet_out_len(&actions, &data), Ok(want.len()));
        assert_eq!(
            bytes(|o| packet_out(o, 0x31, OFPP_CONTROLLER, &actions, &data)),
            want
        );
        // Without actions the switch drops the frame; the encoding still holds.
        let bare = bytes(|o| packet_out(o, 1, OFPP_CONTROLLER, &[], b"xy"));
        assert_eq!(bare.len(), 26);
        assert_eq!(bare[16..18], [0, 0]);
        assert_eq!(bare[24..], *b"xy");
        assert_eq!(
            packet_out_len(&actions, &vec![0; 65535 - 40 + 1]),
            Err(CodecError::TooLong(65536))
        );
        assert_eq!(packet_out_len(&actions, &vec![0; 65535 - 40]), Ok(65535));
    }

    #[test]
    fn flow_stats_request_asks_every_table_for_a_cookie_range() {
        #[rustfmt::skip]
        let want: Vec<u8> = vec![
            4, 18, 0, 56, 0, 0, 0, 9,                       // MULTIPART_REQUEST, length 56
            0, 1, 0, 0, 0, 0, 0, 0,                         // OFPMP_FLOW, flags, pad
            0xff, 0, 0, 0,                                  // table OFPTT_ALL, pad
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // out_port, out_group: any
            0, 0, 0, 0,                                     // pad
            0x53, 0x4d, 0x4f, 0, 0, 0, 0, 0,                // cookie
            0xff, 0xff, 0xff, 0, 0, 0, 0, 0,                // cookie mask
            0, 1, 0, 4, 0, 0, 0, 0,                         // empty OXM match, padded
        ];
        assert_eq!(
            bytes(|o| flow_stats_request(o, 9, 0x534d_4f00_0000_0000, 0xffff_ff00_0000_0000)),
            want
        );
    }

    /// A flow statistics entry for `fm`: the stats' own fixed part, then the FLOW_MOD's match and
    /// instructions (the same layout), then `extra` instructions.
    fn stats_of(fm: &FlowMod, extra: &[u8]) -> Vec<u8> {
        let encoded = bytes(|o| fm.emit(o, 1));
        let tail = &encoded[48..];
        let len = 48 + tail.len() + extra.len();
        let mut e = Vec::new();
        e.extend_from_slice(&(len as u16).to_be_bytes());
        e.extend_from_slice(&[0, 0]); // table 0, pad
        e.extend_from_slice(&[0, 0, 0, 7, 0, 0, 0, 0]); // duration
        e.extend_from_slice(&fm.priority.to_be_bytes());
        e.extend_from_slice(&[0; 10]); // timeouts, flags, pad
        e.extend_from_slice(&fm.cookie.to_be_bytes());
        e.extend_from_slice(&[0; 16]); // counters
        e.extend_from_slice(tail);
        e.extend_from_slice(extra);
        e
    }

    fn stats_reply(xid: u32, more: bool, entries: &[Vec<u8>]) -> Vec<u8> {
        let mut m = vec![4, 19, 0, 0, 0, 0, 0, 0, 0, 1, 0, u8::from(more), 0, 0, 0, 0];
        m[4..8].copy_from_slice(&xid.to_be_bytes());
        for e in entries {
            m.extend_from_slice(e);
        }
        let len = m.len() as u16;
        m[2..4].copy_from_slice(&len.to_be_bytes());
        m
    }

    #[test]
    fn flow_stats_read_back_what_a_flow_mod_wrote() {
        let responder = arp_responder();
        let path = FlowMod::add(
            0x534d_4f53_1400_000a,
            150,
            vec![
                Oxm::InPort(2),
                Oxm::EthType(0x0800),
                Oxm::Ipv4Src(Ipv4Addr::new(192, 168, 1, 2)),
                Oxm::Ipv4Dst(Ipv4Addr::new(20, 0, 0, 10)),
            ],
            vec![Action::Output(3)],
        );
        let reply = stats_reply(5, true, &[stats_of(&responder, &[]), stats_of(&path, &[])]);
        let Ok(Message::FlowStatsReply { xid, more, flows }) = Message::parse(&reply) else {
            panic!("not a flow stats reply: {:?}", Message::parse(&reply));
        };
        assert_eq!((xid, more), (5, true));
        assert_eq!(flows.len(), 2);
        for (f, fm) in flows.iter().zip([&responder, &path]) {
            assert_eq!(
                (f.table_id, f.cookie, f.priority, f.unknown),
                (0, fm.cookie, fm.priority, 0)
            );
            assert_eq!(f.matches, fm.matches);
            assert_eq!(f.actions, fm.actions);
        }
        // An empty reply: no flow.
        assert_eq!(
            Message::parse(&stats_reply(6, false, &[])),
            Ok(Message::FlowStatsReply {
                xid: 6,
                more: false,
                flows: Vec::new()
            })
        );
    }

    #[test]
    fn what_the_codec_does_not_know_in_a_flow_is_counted() {
        // A masked field (eth_dst/mask), a field of another class, a GOTO_TABLE instruction and a
        // GROUP action: four unknowns; the known parts still read.
        let fm = FlowMod::add(7, 10, vec![Oxm::EthType(0x0800)], vec![Action::Output(1)]);
        let mut e = stats_of(&fm, &[]);
        #[rustfmt::skip]
        let fields: [u8; 24] = [
            0x80, 0x00, 0x07, 12, 1, 2, 3, 4, 5, 6, 0xff, 0xff, 0xff, 0, 0, 0, // eth_dst + mask
            0xff, 0xff, 0x00, 4, 0, 0, 0, 1,                                   // experimenter
        ];
        // Rebuild the match: type, length 4 + 6 + 24 = 34, fields, padding to 40.
        let mut m = vec![0, 1, 0, 34];
        m.extend_from_slice(&[0x80, 0x00, 0x0a, 0x02, 0x08, 0x00]);
        m.extend_from_slice(&fields);
        m.extend_from_slice(&[0; 6]);
        let instructions = e[48 + 16..].to_vec(); // after the original 16-octet match
        e.truncate(48);
        e.extend_from_slice(&m);
        e.extend_from_slice(&instructions[..8]); // APPLY_ACTIONS header, length to fix
        let mut actions = instructions[8..].to_vec();
        actions.extend_from_slice(&[0, 22, 0, 8, 0, 0, 0, 9]); // OFPAT_GROUP 9
        let apply_len = (8 + actions.len()) as u16;
        let at = e.len() - 8;
        e[at + 2..at + 4].copy_from_slice(&apply_len.to_be_bytes());
        e.extend_from_slice(&actions);
        e.extend_from_slice(&[0, 1, 0, 8, 1, 0, 0, 0]); // GOTO_TABLE 1
        let len = e.len() as u16;
        e[0..2].copy_from_slice(&len.to_be_bytes());
        let Ok(Message::FlowStatsReply { flows, .. }) =
            Message::parse(&stats_reply(1, false, &[e]))
        else {
            panic!("not read");
        };
        assert_eq!(flows[0].matches, [Oxm::EthType(0x0800)]);
        assert_eq!(flows[0].actions, [Action::Output(1)]);
        assert_eq!(flows[0].unknown, 4);
    }

    #[test]
    fn framing_waits_for_whole_messages() {
        let mut buf = bytes(|o| echo_request(o, 1, b"abc"));
        buf.extend(bytes(|o| barrier_request(o, 2)));
        assert_eq!(frame_len(&buf[..5]), Ok(None));
        assert_eq!(frame_len(&buf[..10]), Ok(None));
        assert_eq!(frame_len(&buf), Ok(Some(11)));
        assert_eq!(frame_len(&buf[11..]), Ok(Some(8)));
        assert_eq!(
            frame_len(&[4, 0, 0, 4, 0, 0, 0, 0]),
            Err(CodecError::Length(4))
        );
        assert_eq!(
            Message::parse(&[0x05, 21, 0, 8, 0, 0, 0, 1]),
            Err(CodecError::Version(5))
        );
        assert_eq!(
            Message::parse(&[4, 10, 0, 8, 0, 0, 0, 1]),
            Ok(Message::Other {
                xid: 1,
                msg_type: 10
            })
        );
    }

    #[test]
    fn reading_cut_or_corrupted_messages_never_panics() {
        let mut samples = vec![
            vec![4, 0, 0, 16, 0, 0, 0, 1, 0, 1, 0, 8, 0, 0, 0, 0x10],
            vec![
                4, 1, 0, 16, 0, 0, 0, 6, 0xff, 0xff, 9, 9, 0x4f, 0x4e, 0x46, 0,
            ],
            bytes(|o| bundle_control(o, 1, 2, BundleCtrl::CommitReply, 3)),
            bytes(|o| echo_request(o, 1, b"x")),
        ];
        let mut desc = vec![4, 19, 0, 80, 0, 0, 0, 4, 0, 13, 0, 0, 0, 0, 0, 0];
        desc.extend(port(1, [0; 6], "bh"));
        samples.push(desc);
        let mut status = vec![4, 12, 0, 80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        status.extend(port(1, [0; 6], "bh"));
        samples.push(status);
        let mut features = vec![4, 6, 0, 32, 0, 0, 0, 3];
        features.extend([0u8; 24]);
        samples.push(features);
        let fm = FlowMod::add(
            1,
            2,
            vec![Oxm::InPort(1), Oxm::EthType(0x0800)],
            vec![Action::SetField(Oxm::EthDst([2; 6])), Action::Output(3)],
        );
        samples.push(stats_reply(
            2,
            false,
            &[stats_of(&fm, &[]), stats_of(&fm, &[])],
        ));
        // xorshift: deterministic corruption.
        let mut x: u32 = 0x9e37_79b9;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        for s in &samples {
            for cut in 0..=s.len() {
                let _ = Message::parse(&s[..cut]);
                let _ = frame_len(&s[..cut]);
            }
            for _ in 0..2000 {
                let mut m = s.clone();
                let i = next() as usize % m.len();
                m[i] = next() as u8;
                let _ = Message::parse(&m);
                let _ = frame_len(&m);
            }
        }
    }
}

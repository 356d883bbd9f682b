//! PFCP (TS 29.244) over UDP port 8805: the header view, a generic IE iterator and
//! typed messages for the subset an SMF and a UPF need.
//!
//! Header (octets): flags (version 1 in bits 8-6, FO, MP, S), message type, length (octets
//! after the first 4), SEID (8, only if S), sequence number (3), spare / message priority.
//! IEs are type (2), length (2), value; types with bit 0x8000 set are vendor specific and
//! start with a 2-octet enterprise ID. IEs unknown to a message are skipped.

use crate::gtpu::Teid;
use std::net::{Ipv4Addr, Ipv6Addr};

/// UDP port of PFCP.
pub const PORT: u16 = 8805;

/// Errors from parsing or emitting PFCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The buffer is shorter than the header or the length field says.
    #[error("truncated pfcp message: need {need} octets, have {have}")]
    Truncated { need: usize, have: usize },
    /// The version field is not 1.
    #[error("unsupported pfcp version {0}")]
    Version(u8),
    /// An IE header or value runs past its enclosing message or grouped IE.
    #[error("ie {0} runs past the end of its container")]
    IeTruncated(u16),
    /// An IE value is too short for its type.
    #[error("ie {ie_type} too short: {len} octets")]
    IeLength { ie_type: u16, len: usize },
    /// A mandatory IE is absent.
    #[error("missing mandatory ie {0}")]
    MissingIe(u16),
    /// An IE carries a variant this crate does not implement (e.g. IPv6 only, FQDN).
    #[error("unsupported content in ie {0}")]
    UnsupportedIe(u16),
    /// A message type this crate does not implement.
    #[error("unsupported pfcp message type {0}")]
    UnsupportedMessage(u8),
    /// A session message without the S flag.
    #[error("session message type {0} without seid")]
    MissingSeid(u8),
    /// The message or a grouped IE would not fit a 16-bit length field.
    #[error("pfcp message too long: {0} octets")]
    TooLong(usize),
}

/// Message types (TS 29.244 Table 7.3-1).
pub mod msg {
    #![allow(missing_docs)]
    pub const HEARTBEAT_REQUEST: u8 = 1;
    pub const HEARTBEAT_RESPONSE: u8 = 2;
    pub const ASSOCIATION_SETUP_REQUEST: u8 = 5;
    pub const ASSOCIATION_SETUP_RESPONSE: u8 = 6;
    pub const SESSION_ESTABLISHMENT_REQUEST: u8 = 50;
    pub const SESSION_ESTABLISHMENT_RESPONSE: u8 = 51;
    pub const SESSION_MODIFICATION_REQUEST: u8 = 52;
    pub const SESSION_MODIFICATION_RESPONSE: u8 = 53;
    pub const SESSION_DELETION_REQUEST: u8 = 54;
    pub const SESSION_DELETION_RESPONSE: u8 = 55;
}

/// IE types (TS 29.244 Table 8.1.2-1).
pub mod ie {
    #![allow(missing_docs)]
    pub const CREATE_PDR: u16 = 1;
    pub const PDI: u16 = 2;
    pub const CREATE_FAR: u16 = 3;
    pub const FORWARDING_PARAMETERS: u16 = 4;
    pub const UPDATE_FAR: u16 = 10;
    pub const UPDATE_FORWARDING_PARAMETERS: u16 = 11;
    pub const REMOVE_PDR: u16 = 15;
    pub const REMOVE_FAR: u16 = 16;
    pub const CAUSE: u16 = 19;
    pub const SOURCE_INTERFACE: u16 = 20;
    pub const F_TEID: u16 = 21;
    pub const NETWORK_INSTANCE: u16 = 22;
    pub const PRECEDENCE: u16 = 29;
    pub const DESTINATION_INTERFACE: u16 = 42;
    pub const APPLY_ACTION: u16 = 44;
    pub const PFCPSMREQ_FLAGS: u16 = 49;
    pub const PDR_ID: u16 = 56;
    pub const F_SEID: u16 = 57;
    pub const NODE_ID: u16 = 60;
    pub const OUTER_HEADER_CREATION: u16 = 84;
    pub const UE_IP_ADDRESS: u16 = 93;
    pub const OUTER_HEADER_REMOVAL: u16 = 95;
    pub const RECOVERY_TIME_STAMP: u16 = 96;
    pub const FAR_ID: u16 = 108;
    /// Bit marking a vendor-specific IE (value starts with an enterprise ID).
    pub const ENTERPRISE_BIT: u16 = 0x8000;
}

/// Byte positions in the PFCP header.
pub mod field {
    use core::ops::Range;

    /// Version, FO, MP, S.
    pub const FLAGS: usize = 0;
    /// Message type.
    pub const MSG_TYPE: usize = 1;
    /// Octets after the first 4.
    pub const LENGTH: Range<usize> = 2..4;
    /// SEID, present if S is set.
    pub const SEID: Range<usize> = 4..12;
    /// Header length without / with SEID.
    pub const HEADER_LEN: usize = 8;
    /// Header length with SEID.
    pub const HEADER_LEN_SEID: usize = 16;
}

/// Flag bits of octet 0.
pub mod flags {
    /// Version 1 in bits 8-6.
    pub const VERSION_1: u8 = 0x20;
    /// Follow On: another message follows in the datagram.
    pub const FO: u8 = 0x04;
    /// Message Priority present.
    pub const MP: u8 = 0x02;
    /// SEID present.
    pub const S: u8 = 0x01;
}

/// A read/write view of a PFCP message.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checks; accessors may panic on short buffers.
    pub const fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    /// Wraps a buffer and checks it, after which no accessor panics.
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that the header and the length field fit the buffer.
    pub fn check_len(&self) -> Result<(), Error> {
        let have = self.buffer.as_ref().len();
        if have < 4 {
            return Err(Error::Truncated { need: 4, have });
        }
        let need = self.message_len().max(self.header_len());
        if have < need {
            return Err(Error::Truncated { need, have });
        }
        if self.message_len() < self.header_len() {
            return Err(Error::Truncated {
                need: self.header_len(),
                have: self.message_len(),
            });
        }
        Ok(())
    }

    /// Consumes the view, returning the buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The version field (1).
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS] >> 5
    }

    /// The FO flag: another message follows this one.
    pub fn follow_on(&self) -> bool {
        self.buffer.as_ref()[field::FLAGS] & flags::FO != 0
    }

    /// The S flag: the header carries a SEID.
    pub fn seid_flag(&self) -> bool {
        self.buffer.as_ref()[field::FLAGS] & flags::S != 0
    }

    /// The message type.
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::MSG_TYPE]
    }

    /// The length field: octets after the first 4.
    pub fn length(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::LENGTH];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// The SEID, if the S flag is set.
    pub fn seid(&self) -> Option<u64> {
        self.seid_flag().then(|| {
            let mut b = [0; 8];
            b.copy_from_slice(&self.buffer.as_ref()[field::SEID]);
            u64::from_be_bytes(b)
        })
    }

    /// The 24-bit sequence number.
    pub fn seq_number(&self) -> u32 {
        let o = self.seq_offset();
        let b = &self.buffer.as_ref()[o..o + 3];
        u32::from_be_bytes([0, b[0], b[1], b[2]])
    }

    /// The message priority (0..=15), if the MP flag is set.
    pub fn priority(&self) -> Option<u8> {
        let data = self.buffer.as_ref();
        (data[field::FLAGS] & flags::MP != 0).then(|| data[self.seq_offset() + 3] >> 4)
    }

    /// Header length: 8, or 16 with SEID.
    pub fn header_len(&self) -> usize {
        if self.seid_flag() {
            field::HEADER_LEN_SEID
        } else {
            field::HEADER_LEN
        }
    }

    /// Length of this message (a datagram may hold more if FO is set).
    pub fn message_len(&self) -> usize {
        4 + usize::from(self.length())
    }

    /// The IEs of the message.
    pub fn payload(&self) -> &[u8] {
        let data = self.buffer.as_ref();
        let end = self.message_len().min(data.len());
        data.get(self.header_len()..end).unwrap_or_default()
    }

    /// Iterates over the top-level IEs.
    pub fn ies(&self) -> Ies<'_> {
        Ies::new(self.payload())
    }

    fn seq_offset(&self) -> usize {
        self.header_len() - 4
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the flags octet (version, FO, MP, S) at once.
    pub fn set_flags(&mut self, value: u8) {
        self.buffer.as_mut()[field::FLAGS] = value;
    }

    /// Sets the message type.
    pub fn set_msg_type(&mut self, value: u8) {
        self.buffer.as_mut()[field::MSG_TYPE] = value;
    }

    /// Sets the length field.
    pub fn set_length(&mut self, value: u16) {
        self.buffer.as_mut()[field::LENGTH].copy_from_slice(&value.to_be_bytes());
    }

    /// Sets the SEID octets (the S flag must already be set).
    pub fn set_seid(&mut self, value: u64) {
        self.buffer.as_mut()[field::SEID].copy_from_slice(&value.to_be_bytes());
    }

    /// Sets the low 24 bits of `value` as sequence number.
    pub fn set_seq_number(&mut self, value: u32) {
        let o = self.seq_offset();
        self.buffer.as_mut()[o..o + 3].copy_from_slice(&value.to_be_bytes()[1..]);
    }

    /// Sets the octet after the sequence number: priority in the high 4 bits.
    pub fn set_priority(&mut self, value: u8) {
        let o = self.seq_offset() + 3;
        self.buffer.as_mut()[o] = value << 4;
    }
}

/// High-level PFCP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HeaderRepr {
    /// Message type, see [`msg`].
    pub msg_type: u8,
    /// SEID; `Some` sets the S flag.
    pub seid: Option<u64>,
    /// Sequence number (24 bits; higher bits are dropped on emit).
    pub seq: u32,
    /// Message priority 0..=15; `Some` sets the MP flag.
    pub priority: Option<u8>,
}

impl HeaderRepr {
    /// Parses a header, checking length and version.
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Self, Error> {
        packet.check_len()?;
        if packet.version() != 1 {
            return Err(Error::Version(packet.version()));
        }
        Ok(HeaderRepr {
            msg_type: packet.msg_type(),
            seid: packet.seid(),
            seq: packet.seq_number(),
            priority: packet.priority(),
        })
    }

    /// Header length; the IEs start at this offset.
    pub fn buffer_len(&self) -> usize {
        if self.seid.is_some() {
            field::HEADER_LEN_SEID
        } else {
            field::HEADER_LEN
        }
    }

    /// Writes the header for `payload_len` octets of IEs.
    ///
    /// Panics if the buffer is shorter than `buffer_len()`.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>, payload_len: usize) {
        let mut fl = flags::VERSION_1;
        if self.seid.is_some() {
            fl |= flags::S;
        }
        if self.priority.is_some() {
            fl |= flags::MP;
        }
        packet.set_flags(fl);
        packet.set_msg_type(self.msg_type);
        packet.set_length((self.buffer_len() - 4 + payload_len) as u16);
        if let Some(seid) = self.seid {
            packet.set_seid(seid);
        }
        packet.set_seq_number(self.seq);
        packet.set_priority(self.priority.unwrap_or(0));
    }
}

/// One information element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ie<'a> {
    /// IE type, see [`ie`].
    pub ie_type: u16,
    /// Enterprise ID of a vendor-specific IE.
    pub enterprise_id: Option<u16>,
    /// Value (after the enterprise ID, if any).
    pub value: &'a [u8],
}

impl Ie<'_> {
    /// The `N` value octets at `at`, or an error if the value is too short.
    fn get<const N: usize>(&self, at: usize) -> Result<[u8; N], Error> {
        self.value
            .get(at..at + N)
            .and_then(|b| b.try_into().ok())
            .ok_or(Error::IeLength {
                ie_type: self.ie_type,
                len: self.value.len(),
            })
    }

    fn u8(&self) -> Result<u8, Error> {
        self.get::<1>(0).map(|[b]| b)
    }

    fn u16(&self) -> Result<u16, Error> {
        self.get(0).map(u16::from_be_bytes)
    }

    fn u32(&self) -> Result<u32, Error> {
        self.get(0).map(u32::from_be_bytes)
    }

    fn ipv4(&self, at: usize) -> Result<Ipv4Addr, Error> {
        self.get::<4>(at).map(Ipv4Addr::from)
    }
}

/// Iterator over a sequence of IEs; yields one error and stops on malformed input.
#[derive(Debug, Clone)]
pub struct Ies<'a> {
    data: &'a [u8],
}

impl<'a> Ies<'a> {
    /// Iterates over the IEs in `data` (a message payload or a grouped IE value).
    pub const fn new(data: &'a [u8]) -> Self {
        Ies { data }
    }
}

impl<'a> Iterator for Ies<'a> {
    type Item = Result<Ie<'a>, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        let data = core::mem::take(&mut self.data);
        let (ie_type, len) = match data {
            [] => return None,
            [t0, t1, l0, l1, ..] => (
                u16::from_be_bytes([*t0, *t1]),
                usize::from(u16::from_be_bytes([*l0, *l1])),
            ),
            [t0, t1, ..] => return Some(Err(Error::IeTruncated(u16::from_be_bytes([*t0, *t1])))),
            [t0] => return Some(Err(Error::IeTruncated(u16::from(*t0) << 8))),
        };
        let Some(value) = data.get(4..4 + len) else {
            return Some(Err(Error::IeTruncated(ie_type)));
        };
        self.data = &data[4 + len..];
        if ie_type & ie::ENTERPRISE_BIT == 0 {
            return Some(Ok(Ie {
                ie_type,
                enterprise_id: None,
                value,
            }));
        }
        Some(match value {
            [e0, e1, value @ ..] => Ok(Ie {
                ie_type,
                enterprise_id: Some(u16::from_be_bytes([*e0, *e1])),
                value,
            }),
            _ => Err(Error::IeLength { ie_type, len }),
        })
    }
}

/// Writes IEs into a vector, back-filling grouped IE lengths.
#[derive(Debug, Default)]
pub struct IeWriter {
    buf: Vec<u8>,
    too_long: Option<usize>,
}

impl IeWriter {
    /// Writes one IE with the given value.
    pub fn ie(&mut self, ie_type: u16, value: &[u8]) {
        self.group(ie_type, |w| w.buf.extend_from_slice(value));
    }

    /// Writes a grouped IE whose value is written by `f`.
    pub fn group(&mut self, ie_type: u16, f: impl FnOnce(&mut Self)) {
        let start = self.buf.len();
        self.buf.extend(ie_type.to_be_bytes());
        self.buf.extend([0, 0]);
        f(self);
        let len = self.buf.len() - start - 4;
        let len16 = u16::try_from(len).unwrap_or_else(|_| {
            self.too_long = Some(len);
            u16::MAX
        });
        self.buf[start + 2..start + 4].copy_from_slice(&len16.to_be_bytes());
    }

    /// Returns the written octets, or an error if a length overflowed.
    pub fn finish(self) -> Result<Vec<u8>, Error> {
        match self.too_long {
            Some(len) => Err(Error::TooLong(len)),
            None => Ok(self.buf),
        }
    }
}

fn required<T>(value: Option<T>, ie_type: u16) -> Result<T, Error> {
    value.ok_or(Error::MissingIe(ie_type))
}

/// Runs `f` on each IE of `data`, propagating iterator and callback errors.
fn each_ie<'a>(
    data: &'a [u8],
    mut f: impl FnMut(Ie<'a>) -> Result<(), Error>,
) -> Result<(), Error> {
    Ies::new(data).try_for_each(|ie| f(ie?))
}

/// Cause values (TS 29.244 clause 8.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cause(pub u8);

impl Cause {
    /// Request accepted (success).
    pub const ACCEPTED: Cause = Cause(1);
    /// Request rejected (reason not specified).
    pub const REJECTED: Cause = Cause(64);
    /// Session context not found.
    pub const SESSION_CONTEXT_NOT_FOUND: Cause = Cause(65);
    /// Mandatory IE missing.
    pub const MANDATORY_IE_MISSING: Cause = Cause(66);
    /// No established PFCP association.
    pub const NO_ESTABLISHED_ASSOCIATION: Cause = Cause(72);
}

/// Node ID (IE 60).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeId {
    /// Node ID type 0.
    Ipv4(Ipv4Addr),
    /// Node ID type 1.
    Ipv6(Ipv6Addr),
}

impl NodeId {
    fn decode(ie: &Ie<'_>) -> Result<Self, Error> {
        match ie.u8()? & 0x0f {
            0 => ie.ipv4(1).map(NodeId::Ipv4),
            1 => ie.get::<16>(1).map(|b| NodeId::Ipv6(b.into())),
            _ => Err(Error::UnsupportedIe(ie.ie_type)),
        }
    }

    fn encode(&self, w: &mut IeWriter) {
        match self {
            NodeId::Ipv4(a) => w.ie(ie::NODE_ID, &[&[0][..], &a.octets()].concat()),
            NodeId::Ipv6(a) => w.ie(ie::NODE_ID, &[&[1][..], &a.octets()].concat()),
        }
    }
}

/// F-SEID (IE 57), IPv4 only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FSeid {
    /// Session endpoint identifier.
    pub seid: u64,
    /// Address of the CP or UP function.
    pub ipv4: Ipv4Addr,
}

impl FSeid {
    fn decode(ie: &Ie<'_>) -> Result<Self, Error> {
        if ie.u8()? & 0x02 == 0 {
            return Err(Error::UnsupportedIe(ie.ie_type));
        }
        Ok(FSeid {
            seid: u64::from_be_bytes(ie.get(1)?),
            ipv4: ie.ipv4(9)?,
        })
    }

    fn encode(&self, w: &mut IeWriter) {
        w.ie(
            ie::F_SEID,
            &[&[0x02][..], &self.seid.to_be_bytes(), &self.ipv4.octets()].concat(),
        );
    }
}

/// F-TEID (IE 21), IPv4, TEID chosen by the CP function (no CH).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FTeid {
    /// Tunnel endpoint identifier.
    pub teid: Teid,
    /// GTP-U endpoint address.
    pub ipv4: Ipv4Addr,
}

impl FTeid {
    fn decode(ie: &Ie<'_>) -> Result<Self, Error> {
        // Flags: CHID 0x08, CH 0x04, V6 0x02, V4 0x01.
        if ie.u8()? & 0x0d != 0x01 {
            return Err(Error::UnsupportedIe(ie.ie_type));
        }
        Ok(FTeid {
            teid: Teid(u32::from_be_bytes(ie.get(1)?)),
            ipv4: ie.ipv4(5)?,
        })
    }

    fn encode(&self, w: &mut IeWriter) {
        w.ie(
            ie::F_TEID,
            &[&[0x01][..], &self.teid.0.to_be_bytes(), &self.ipv4.octets()].concat(),
        );
    }
}

/// UE IP Address (IE 93), IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UeIpAddress {
    /// The UE's address.
    pub ipv4: Ipv4Addr,
    /// S/D flag: true if the address is the destination (downlink PDI at the UPF).
    pub destination: bool,
}

impl UeIpAddress {
    fn decode(ie: &Ie<'_>) -> Result<Self, Error> {
        // Flags: ..., IPv6D 0x08, S/D 0x04, V4 0x02, V6 0x01.
        let fl = ie.u8()?;
        if fl & 0x02 == 0 {
            return Err(Error::UnsupportedIe(ie.ie_type));
        }
        Ok(UeIpAddress {
            ipv4: ie.ipv4(1)?,
            destination: fl & 0x04 != 0,
        })
    }

    fn encode(&self, w: &mut IeWriter) {
        let fl = 0x02 | if self.destination { 0x04 } else { 0 };
        w.ie(
            ie::UE_IP_ADDRESS,
            &[&[fl][..], &self.ipv4.octets()].concat(),
        );
    }
}

/// Outer Header Creation (IE 84) for GTP-U/UDP/IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OuterHeaderCreation {
    /// TEID of the peer tunnel endpoint.
    pub teid: Teid,
    /// Peer GTP-U address.
    pub ipv4: Ipv4Addr,
}

impl OuterHeaderCreation {
    /// Description value (octets 5-6) for GTP-U/UDP/IPv4: bit 1 of octet 5.
    pub const GTPU_UDP_IPV4: u16 = 0x0100;

    fn decode(ie: &Ie<'_>) -> Result<Self, Error> {
        if ie.u16()? != Self::GTPU_UDP_IPV4 {
            return Err(Error::UnsupportedIe(ie.ie_type));
        }
        Ok(OuterHeaderCreation {
            teid: Teid(u32::from_be_bytes(ie.get(2)?)),
            ipv4: ie.ipv4(6)?,
        })
    }

    fn encode(&self, w: &mut IeWriter) {
        let d = Self::GTPU_UDP_IPV4.to_be_bytes();
        w.ie(
            ie::OUTER_HEADER_CREATION,
            &[&d[..], &self.teid.0.to_be_bytes(), &self.ipv4.octets()].concat(),
        );
    }
}

/// Outer Header Removal description (IE 95).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OuterHeaderRemoval(pub u8);

impl OuterHeaderRemoval {
    /// Remove GTP-U/UDP/IPv4.
    pub const GTPU_UDP_IPV4: OuterHeaderRemoval = OuterHeaderRemoval(0);
}

/// Source / Destination Interface value (IEs 20 and 42).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Interface(pub u8);

impl Interface {
    /// Access (towards the RAN, N3).
    pub const ACCESS: Interface = Interface(0);
    /// Core (towards the data network, N6, or N9).
    pub const CORE: Interface = Interface(1);
    /// SGi-LAN / N6-LAN.
    pub const N6_LAN: Interface = Interface(2);
    /// CP function.
    pub const CP_FUNCTION: Interface = Interface(3);

    fn decode(ie: &Ie<'_>) -> Result<Self, Error> {
        Ok(Interface(ie.u8()? & 0x0f))
    }
}

/// Apply Action flags (IE 44).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ApplyAction(pub u8);

impl ApplyAction {
    /// Drop packets.
    pub const DROP: ApplyAction = ApplyAction(0x01);
    /// Forward packets.
    pub const FORW: ApplyAction = ApplyAction(0x02);
    /// Buffer packets.
    pub const BUFF: ApplyAction = ApplyAction(0x04);
    /// Notify the CP function on first buffered packet.
    pub const NOCP: ApplyAction = ApplyAction(0x08);

    /// True if all bits of `other` are set.
    pub const fn contains(self, other: ApplyAction) -> bool {
        self.0 & other.0 == other.0
    }
}

impl core::ops::BitOr for ApplyAction {
    type Output = ApplyAction;
    fn bitor(self, rhs: Self) -> Self {
        ApplyAction(self.0 | rhs.0)
    }
}

/// PDR ID (IE 56).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PdrId(pub u16);

/// FAR ID (IE 108).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FarId(pub u32);

/// Packet Detection Information (grouped IE 2).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pdi {
    /// Source Interface.
    pub source_interface: Interface,
    /// Local F-TEID to match (uplink at the UPF).
    pub f_teid: Option<FTeid>,
    /// Network Instance, as an opaque octet string.
    pub network_instance: Option<Vec<u8>>,
    /// UE IP address to match.
    pub ue_ip_address: Option<UeIpAddress>,
}

impl Pdi {
    fn decode(value: &[u8]) -> Result<Self, Error> {
        let (mut si, mut f_teid, mut network_instance, mut ue_ip_address) =
            (None, None, None, None);
        each_ie(value, |ie| {
            match ie.ie_type {
                ie::SOURCE_INTERFACE => si = Some(Interface::decode(&ie)?),
                ie::F_TEID => f_teid = Some(FTeid::decode(&ie)?),
                ie::NETWORK_INSTANCE => network_instance = Some(ie.value.to_vec()),
                ie::UE_IP_ADDRESS => ue_ip_address = Some(UeIpAddress::decode(&ie)?),
                _ => {}
            }
            Ok(())
        })?;
        let source_interface = required(si, ie::SOURCE_INTERFACE)?;
        Ok(Pdi {
            source_interface,
            f_teid,
            network_instance,
            ue_ip_address,
        })
    }

    fn encode(&self, w: &mut IeWriter) {
        w.group(ie::PDI, |w| {
            w.ie(ie::SOURCE_INTERFACE, &[self.source_interface.0]);
            if let Some(f) = &self.f_teid {
                f.encode(w);
            }
            if let Some(ni) = &self.network_instance {
                w.ie(ie::NETWORK_INSTANCE, ni);
            }
            if let Some(u) = &self.ue_ip_address {
                u.encode(w);
            }
        });
    }
}

/// Create PDR (grouped IE 1).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CreatePdr {
    /// Rule ID.
    pub pdr_id: PdrId,
    /// Precedence (lower wins).
    pub precedence: u32,
    /// What to match.
    pub pdi: Pdi,
    /// Outer header to remove (uplink).
    pub outer_header_removal: Option<OuterHeaderRemoval>,
    /// FAR applied to matching packets.
    pub far_id: Option<FarId>,
}

impl CreatePdr {
    fn decode(value: &[u8]) -> Result<Self, Error> {
        let (mut pdr_id, mut precedence, mut pdi, mut ohr, mut far_id) =
            (None, None, None, None, None);
        each_ie(value, |ie| {
            match ie.ie_type {
                ie::PDR_ID => pdr_id = Some(PdrId(ie.u16()?)),
                ie::PRECEDENCE => precedence = Some(ie.u32()?),
                ie::PDI => pdi = Some(Pdi::decode(ie.value)?),
                ie::OUTER_HEADER_REMOVAL => ohr = Some(OuterHeaderRemoval(ie.u8()?)),
                ie::FAR_ID => far_id = Some(FarId(ie.u32()?)),
                _ => {}
            }
            Ok(())
        })?;
        Ok(CreatePdr {
            pdr_id: required(pdr_id, ie::PDR_ID)?,
            precedence: required(precedence, ie::PRECEDENCE)?,
            pdi: required(pdi, ie::PDI)?,
            outer_header_removal: ohr,
            far_id,
        })
    }

    fn encode(&self, w: &mut IeWriter) {
        w.group(ie::CREATE_PDR, |w| {
            w.ie(ie::PDR_ID, &self.pdr_id.0.to_be_bytes());
            w.ie(ie::PRECEDENCE, &self.precedence.to_be_bytes());
            self.pdi.encode(w);
            if let Some(ohr) = self.outer_header_removal {
                w.ie(ie::OUTER_HEADER_REMOVAL, &[ohr.0]);
            }
            if let Some(far) = self.far_id {
                w.ie(ie::FAR_ID, &far.0.to_be_bytes());
            }
        });
    }
}

/// Forwarding Parameters (grouped IE 4) or, with everything optional, Update Forwarding
/// Parameters (grouped IE 11).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct ForwardingParameters {
    /// Destination Interface (mandatory in Forwarding Parameters).
    pub destination_interface: Option<Interface>,
    /// Network Instance, as an opaque octet string.
    pub network_instance: Option<Vec<u8>>,
    /// GTP-U tunnel to encapsulate into.
    pub outer_header_creation: Option<OuterHeaderCreation>,
    /// PFCPSMReq-Flags SNDEM: send an End Marker on the old path (update only).
    pub send_end_marker: bool,
}

impl ForwardingParameters {
    fn decode(value: &[u8]) -> Result<Self, Error> {
        let mut fp = ForwardingParameters::default();
        each_ie(value, |ie| {
            match ie.ie_type {
                ie::DESTINATION_INTERFACE => {
                    fp.destination_interface = Some(Interface::decode(&ie)?)
                }
                ie::NETWORK_INSTANCE => fp.network_instance = Some(ie.value.to_vec()),
                ie::OUTER_HEADER_CREATION => {
                    fp.outer_header_creation = Some(OuterHeaderCreation::decode(&ie)?)
                }
                ie::PFCPSMREQ_FLAGS => fp.send_end_marker = ie.u8()? & 0x02 != 0,
                _ => {}
            }
            Ok(())
        })?;
        Ok(fp)
    }

    fn encode(&self, w: &mut IeWriter, ie_type: u16) {
        w.group(ie_type, |w| {
            if let Some(di) = self.destination_interface {
                w.ie(ie::DESTINATION_INTERFACE, &[di.0]);
            }
            if let Some(ni) = &self.network_instance {
                w.ie(ie::NETWORK_INSTANCE, ni);
            }
            if let Some(o) = &self.outer_header_creation {
                o.encode(w);
            }
            if self.send_end_marker {
                w.ie(ie::PFCPSMREQ_FLAGS, &[0x02]);
            }
        });
    }
}

/// Create FAR (grouped IE 3) or Update FAR (grouped IE 10).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Far {
    /// Rule ID.
    pub far_id: FarId,
    /// Action (mandatory in Create FAR).
    pub apply_action: Option<ApplyAction>,
    /// Forwarding Parameters, or Update Forwarding Parameters in Update FAR.
    pub forwarding_parameters: Option<ForwardingParameters>,
}

impl Far {
    fn decode(value: &[u8], create: bool) -> Result<Self, Error> {
        let (mut far_id, mut apply_action, mut forwarding_parameters) = (None, None, None);
        let fp_type = if create {
            ie::FORWARDING_PARAMETERS
        } else {
            ie::UPDATE_FORWARDING_PARAMETERS
        };
        each_ie(value, |ie| {
            match ie.ie_type {
                ie::FAR_ID => far_id = Some(FarId(ie.u32()?)),
                ie::APPLY_ACTION => apply_action = Some(ApplyAction(ie.u8()?)),
                t if t == fp_type => {
                    forwarding_parameters = Some(ForwardingParameters::decode(ie.value)?)
                }
                _ => {}
            }
            Ok(())
        })?;
        if create {
            required(apply_action, ie::APPLY_ACTION)?;
            if let Some(fp) = &forwarding_parameters {
                required(fp.destination_interface, ie::DESTINATION_INTERFACE)?;
            }
        }
        Ok(Far {
            far_id: required(far_id, ie::FAR_ID)?,
            apply_action,
            forwarding_parameters,
        })
    }

    fn encode(&self, w: &mut IeWriter, create: bool) {
        let (ie_type, fp_type) = if create {
            (ie::CREATE_FAR, ie::FORWARDING_PARAMETERS)
        } else {
            (ie::UPDATE_FAR, ie::UPDATE_FORWARDING_PARAMETERS)
        };
        w.group(ie_type, |w| {
            w.ie(ie::FAR_ID, &self.far_id.0.to_be_bytes());
            if let Some(a) = self.apply_action {
                w.ie(ie::APPLY_ACTION, &[a.0]);
            }
            if let Some(fp) = &self.forwarding_parameters {
                fp.encode(w, fp_type);
            }
        });
    }
}

/// Heartbeat Request / Response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Heartbeat {
    /// Sequence number.
    pub seq: u32,
    /// Recovery Time Stamp (NTP seconds) of the sender.
    pub recovery_time_stamp: u32,
}

/// Association Setup Request (and Response, which carries a cause).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AssociationSetup {
    /// Sequence number.
    pub seq: u32,
    /// Sender's Node ID.
    pub node_id: NodeId,
    /// Cause: `Some` in a response, `None` in a request.
    pub cause: Option<Cause>,
    /// Recovery Time Stamp (NTP seconds) of the sender.
    pub recovery_time_stamp: u32,
}

/// Session Establishment Request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionEstablishmentRequest {
    /// Header SEID (0: the UP function has not allocated one yet).
    pub seid: u64,
    /// Sequence number.
    pub seq: u32,
    /// Node ID of the CP function.
    pub node_id: NodeId,
    /// CP F-SEID.
    pub cp_f_seid: FSeid,
    /// PDRs to create.
    pub create_pdrs: Vec<CreatePdr>,
    /// FARs to create (`apply_action` set).
    pub create_fars: Vec<Far>,
}

/// Session Establishment Response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionEstablishmentResponse {
    /// Header SEID (the CP F-SEID's SEID).
    pub seid: u64,
    /// Sequence number of the request.
    pub seq: u32,
    /// Node ID of the UP function.
    pub node_id: NodeId,
    /// Outcome.
    pub cause: Cause,
    /// UP F-SEID, present when accepted.
    pub up_f_seid: Option<FSeid>,
}

/// Session Modification Request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct SessionModificationRequest {
    /// Header SEID (the UP F-SEID's SEID).
    pub seid: u64,
    /// Sequence number.
    pub seq: u32,
    /// New CP F-SEID, if it changes.
    pub cp_f_seid: Option<FSeid>,
    /// PDRs to remove.
    pub remove_pdrs: Vec<PdrId>,
    /// FARs to remove.
    pub remove_fars: Vec<FarId>,
    /// PDRs to create.
    pub create_pdrs: Vec<CreatePdr>,
    /// FARs to create.
    pub create_fars: Vec<Far>,
    /// FARs to update (e.g. a new Outer Header Creation after a path switch).
    pub update_fars: Vec<Far>,
}

/// Session Deletion Request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionDeletionRequest {
    /// Header SEID (the UP F-SEID's SEID).
    pub seid: u64,
    /// Sequence number.
    pub seq: u32,
}

/// Session Modification / Deletion Response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionResponse {
    /// Header SEID (the CP F-SEID's SEID).
    pub seid: u64,
    /// Sequence number of the request.
    pub seq: u32,
    /// Outcome.
    pub cause: Cause,
}

/// A PFCP message of a supported type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Message {
    /// Type 1.
    HeartbeatRequest(Heartbeat),
    /// Type 2.
    HeartbeatResponse(Heartbeat),
    /// Type 5 (`cause` is `None`).
    AssociationSetupRequest(AssociationSetup),
    /// Type 6 (`cause` is `Some`).
    AssociationSetupResponse(AssociationSetup),
    /// Type 50.
    SessionEstablishmentRequest(SessionEstablishmentRequest),
    /// Type 51.
    SessionEstablishmentResponse(SessionEstablishmentResponse),
    /// Type 52.
    SessionModificationRequest(SessionModificationRequest),
    /// Type 53.
    SessionModificationResponse(SessionResponse),
    /// Type 54.
    SessionDeletionRequest(SessionDeletionRequest),
    /// Type 55.
    SessionDeletionResponse(SessionResponse),
}

impl Message {
    /// Parses the first message in `buf` (trailing octets, e.g. after FO, are ignored).
    pub fn parse(buf: &[u8]) -> Result<Message, Error> {
        let packet = Packet::new_checked(buf)?;
        let h = HeaderRepr::parse(&packet)?;
        let (seq, t, body) = (h.seq, h.msg_type, packet.payload());
        let seid = || h.seid.ok_or(Error::MissingSeid(t));
        let (mut node_id, mut cause, mut rts, mut f_seid) = (None, None, None, None);
        let mut m = SessionModificationRequest::default();
        each_ie(body, |ie| {
            match ie.ie_type {
                ie::NODE_ID => node_id = Some(NodeId::decode(&ie)?),
                ie::CAUSE => cause = Some(Cause(ie.u8()?)),
                ie::RECOVERY_TIME_STAMP => rts = Some(ie.u32()?),
                ie::F_SEID => f_seid = Some(FSeid::decode(&ie)?),
                ie::CREATE_PDR => m.create_pdrs.push(CreatePdr::decode(ie.value)?),
                ie::CREATE_FAR => m.create_fars.push(Far::decode(ie.value, true)?),
                ie::UPDATE_FAR => m.update_fars.push(Far::decode(ie.value, false)?),
                ie::REMOVE_PDR => m
                    .remove_pdrs
                    .push(PdrId(Self::inner(&ie, ie::PDR_ID)?.u16()?)),
                ie::REMOVE_FAR => m
                    .remove_fars
                    .push(FarId(Self::inner(&ie, ie::FAR_ID)?.u32()?)),
                _ => {}
            }
            Ok(())
        })?;
        let node_id = || required(node_id, ie::NODE_ID);
        let cause = || required(cause, ie::CAUSE);
        let heartbeat = || {
            Ok(Heartbeat {
                seq,
                recovery_time_stamp: required(rts, ie::RECOVERY_TIME_STAMP)?,
            })
        };
        let association = |cause| -> Result<_, Error> {
            let recovery_time_stamp = required(rts, ie::RECOVERY_TIME_STAMP)?;
            Ok(AssociationSetup {
                seq,
                node_id: node_id()?,
                cause,
                recovery_time_stamp,
            })
        };
        Ok(match t {
            msg::HEARTBEAT_REQUEST => Message::HeartbeatRequest(heartbeat()?),
            msg::HEARTBEAT_RESPONSE => Message::HeartbeatResponse(heartbeat()?),
            msg::ASSOCIATION_SETUP_REQUEST => Message::AssociationSetupRequest(association(None)?),
            msg::ASSOCIATION_SETUP_RESPONSE => {
                Message::AssociationSetupResponse(association(Some(cause()?))?)
            }
            msg::SESSION_ESTABLISHMENT_REQUEST => {
                Message::SessionEstablishmentRequest(SessionEstablishmentRequest {
                    seid: seid()?,
                    seq,
                    node_id: node_id()?,
                    cp_f_seid: required(f_seid, ie::F_SEID)?,
                    create_pdrs: m.create_pdrs,
                    create_fars: m.create_fars,
                })
            }
            msg::SESSION_ESTABLISHMENT_RESPONSE => {
                Message::SessionEstablishmentResponse(SessionEstablishmentResponse {
                    seid: seid()?,
                    seq,
                    node_id: node_id()?,
                    cause: cause()?,
                    up_f_seid: f_seid,
                })
            }
            msg::SESSION_MODIFICATION_REQUEST => {
                Message::SessionModificationRequest(SessionModificationRequest {
                    seid: seid()?,
                    seq,
                    cp_f_seid: f_seid,
                    ..m
                })
            }
            msg::SESSION_MODIFICATION_RESPONSE => {
                Message::SessionModificationResponse(SessionResponse {
                    seid: seid()?,
                    seq,
                    cause: cause()?,
                })
            }
            msg::SESSION_DELETION_REQUEST => {
                Message::SessionDeletionRequest(SessionDeletionRequest { seid: seid()?, seq })
            }
            msg::SESSION_DELETION_RESPONSE => Message::SessionDeletionResponse(SessionResponse {
                seid: seid()?,
                seq,
                cause: cause()?,
            }),
            t => return Err(Error::UnsupportedMessage(t)),
        })
    }

    /// The mandatory IE of type `ie_type` inside the grouped IE `ie`.
    fn inner<'a>(ie: &Ie<'a>, ie_type: u16) -> Result<Ie<'a>, Error> {
        for inner in Ies::new(ie.value) {
            let inner = inner?;
            if inner.ie_type == ie_type {
                return Ok(inner);
            }
        }
        Err(Error::MissingIe(ie_type))
    }

    /// The header of this message.
    pub fn header(&self) -> HeaderRepr {
        let (msg_type, seid, seq) = match self {
            Message::HeartbeatRequest(m) => (msg::HEARTBEAT_REQUEST, None, m.seq),
            Message::HeartbeatResponse(m) => (msg::HEARTBEAT_RESPONSE, None, m.seq),
            Message::AssociationSetupRequest(m) => (msg::ASSOCIATION_SETUP_REQUEST, None, m.seq),
            Message::AssociationSetupResponse(m) => (msg::ASSOCIATION_SETUP_RESPONSE, None, m.seq),
            Message::SessionEstablishmentRequest(m) => {
                (msg::SESSION_ESTABLISHMENT_REQUEST, Some(m.seid), m.seq)
            }
            Message::SessionEstablishmentResponse(m) => {
                (msg::SESSION_ESTABLISHMENT_RESPONSE, Some(m.seid), m.seq)
            }
            Message::SessionModificationRequest(m) => {
                (msg::SESSION_MODIFICATION_REQUEST, Some(m.seid), m.seq)
            }
            Message::SessionModificationResponse(m) => {
                (msg::SESSION_MODIFICATION_RESPONSE, Some(m.seid), m.seq)
            }
            Message::SessionDeletionRequest(m) => {
                (msg::SESSION_DELETION_REQUEST, Some(m.seid), m.seq)
            }
            Message::SessionDeletionResponse(m) => {
                (msg::SESSION_DELETION_RESPONSE, Some(m.seid), m.seq)
            }
        };
        HeaderRepr {
            msg_type,
            seid,
            seq,
            priority: None,
        }
    }

    fn encode_ies(&self, w: &mut IeWriter) {
        let rts = |w: &mut IeWriter, t: u32| w.ie(ie::RECOVERY_TIME_STAMP, &t.to_be_bytes());
        let cause = |w: &mut IeWriter, c: Cause| w.ie(ie::CAUSE, &[c.0]);
        match self {
            Message::HeartbeatRequest(m) | Message::HeartbeatResponse(m) => {
                rts(w, m.recovery_time_stamp)
            }
            Message::AssociationSetupRequest(m) | Message::AssociationSetupResponse(m) => {
                m.node_id.encode(w);
                if let Some(c) = m.cause {
                    cause(w, c);
                }
                rts(w, m.recovery_time_stamp);
            }
            Message::SessionEstablishmentRequest(m) => {
                m.node_id.encode(w);
                m.cp_f_seid.encode(w);
                m.create_pdrs.iter().for_each(|p| p.encode(w));
                m.create_fars.iter().for_each(|f| f.encode(w, true));
            }
            Message::SessionEstablishmentResponse(m) => {
                m.node_id.encode(w);
                cause(w, m.cause);
                if let Some(f) = &m.up_f_seid {
                    f.encode(w);
                }
            }
            Message::SessionModificationRequest(m) => {
                if let Some(f) = &m.cp_f_seid {
                    f.encode(w);
                }
                for id in &m.remove_pdrs {
                    w.group(ie::REMOVE_PDR, |w| w.ie(ie::PDR_ID, &id.0.to_be_bytes()));
                }
                for id in &m.remove_fars {
                    w.group(ie::REMOVE_FAR, |w| w.ie(ie::FAR_ID, &id.0.to_be_bytes()));
                }
                m.create_pdrs.iter().for_each(|p| p.encode(w));
                m.create_fars.iter().for_each(|f| f.encode(w, true));
                m.update_fars.iter().for_each(|f| f.encode(w, false));
            }
            Message::SessionModificationResponse(m) | Message::SessionDeletionResponse(m) => {
                cause(w, m.cause)
            }
            Message::SessionDeletionRequest(_) => {}
        }
    }

    /// Encodes the message into a new vector.
    pub fn to_vec(&self) -> Result<Vec<u8>, Error> {
        let header = self.header();
        let mut w = IeWriter {
            buf: vec![0; header.buffer_len()],
            too_long: None,
        };
        self.encode_ies(&mut w);
        let mut buf = w.finish()?;
        let payload_len = buf.len() - header.buffer_len();
        if buf.len() - 4 > usize::from(u16::MAX) {
            return Err(Error::TooLong(buf.len()));
        }
        header.emit(&mut Packet::new_unchecked(&mut buf), payload_len);
        Ok(buf)
    }

    /// Length of the encoded message (encodes it to find out).
    pub fn buffer_len(&self) -> usize {
        let mut w = IeWriter {
            buf: vec![0; self.header().buffer_len()],
            too_long: None,
        };
        self.encode_ies(&mut w);
        w.buf.len()
    }

    /// Encodes the message into `buf`, returning its length.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, Error> {
        let bytes = self.to_vec()?;
        let have = buf.len();
        buf.get_mut(..bytes.len())
            .ok_or(Error::Truncated {
                need: bytes.len(),
                have,
            })?
            .copy_from_slice(&bytes);
        Ok(bytes.len())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const HEARTBEAT_REQUEST: [u8; 16] = [
        0x20, 0x01, 0x00, 0x0c, // v1, Heartbeat Request, length 12
        0x00, 0x00, 0x2a, 0x00, // seq 42, spare
        0x00, 0x60, 0x00, 0x04, 0xeb, 0x1d, 0x2c, 0x80, // Recovery Time Stamp
    ];

    pub(crate) const ASSOCIATION_SETUP_REQUEST: [u8; 25] = [
        0x20, 0x05, 0x00, 0x15, // v1, Association Setup Request, length 21
        0x00, 0x00, 0x01, 0x00, // seq 1
        0x00, 0x3c, 0x00, 0x05, 0x00, 10, 0, 0, 3, // Node ID IPv4 10.0.0.3
        0x00, 0x60, 0x00, 0x04, 0xeb, 0x1d, 0x2c, 0x80, // Recovery Time Stamp
    ];

    /// One uplink PDR+FAR (N3 -> N6) and one downlink PDR+FAR (N6 -> N3 tunnel).
    pub(crate) const SESSION_ESTABLISHMENT_REQUEST: [u8; 217] = [
        0x21, 0x32, 0x00, 0xd5, // v1 S, Session Establishment Request, length 213
        0, 0, 0, 0, 0, 0, 0, 0, // SEID 0
        0x00, 0x00, 0x02, 0x00, // seq 2
        0x00, 0x3c, 0x00, 0x05, 0x00, 10, 0, 0, 3, // Node ID IPv4 10.0.0.3
        0x00, 0x39, 0x00, 0x0d, 0x02, // F-SEID, flags V4
        0, 0, 0, 0, 0, 0, 0, 0x01, 10, 0, 0, 3, //   SEID 1, 10.0.0.3
        0x00, 0x01, 0x00, 0x3d, // Create PDR (61)
        0x00, 0x38, 0x00, 0x02, 0x00, 0x01, //   PDR ID 1
        0x00, 0x1d, 0x00, 0x04, 0x00, 0x00, 0x00, 0x64, //   Precedence 100
        0x00, 0x02, 0x00, 0x1e, //   PDI (30)
        0x00, 0x14, 0x00, 0x01, 0x00, //     Source Interface Access
        0x00, 0x15, 0x00, 0x09, 0x01, //     F-TEID, flags V4
        0x00, 0x00, 0x00, 0x01, 10, 0, 0, 2, //       TEID 1, 10.0.0.2
        0x00, 0x16, 0x00, 0x08, //     Network Instance
        b'i', b'n', b't', b'e', b'r', b'n', b'e', b't', //       "internet"
        0x00, 0x5f, 0x00, 0x01, 0x00, //   Outer Header Removal GTP-U/UDP/IPv4
        0x00, 0x6c, 0x00, 0x04, 0x00, 0x00, 0x00, 0x01, //   FAR ID 1
        0x00, 0x01, 0x00, 0x28, // Create PDR (40)
        0x00, 0x38, 0x00, 0x02, 0x00, 0x02, //   PDR ID 2
        0x00, 0x1d, 0x00, 0x04, 0x00, 0x00, 0x00, 0x64, //   Precedence 100
        0x00, 0x02, 0x00, 0x0e, //   PDI (14)
        0x00, 0x14, 0x00, 0x01, 0x01, //     Source Interface Core
        0x00, 0x5d, 0x00, 0x05, 0x06, 10, 45, 0, 2, //     UE IP Address S/D=dst V4 10.45.0.2
        0x00, 0x6c, 0x00, 0x04, 0x00, 0x00, 0x00, 0x02, //   FAR ID 2
        0x00, 0x03, 0x00, 0x16, // Create FAR (22)
        0x00, 0x6c, 0x00, 0x04, 0x00, 0x00, 0x00, 0x01, //   FAR ID 1
        0x00, 0x2c, 0x00, 0x01, 0x02, //   Apply Action FORW
        0x00, 0x04, 0x00, 0x05, //   Forwarding Parameters (5)
        0x00, 0x2a, 0x00, 0x01, 0x01, //     Destination Interface Core
        0x00, 0x03, 0x00, 0x24, // Create FAR (36)
        0x00, 0x6c, 0x00, 0x04, 0x00, 0x00, 0x00, 0x02, //   FAR ID 2
        0x00, 0x2c, 0x00, 0x01, 0x02, //   Apply Action FORW
        0x00, 0x04, 0x00, 0x13, //   Forwarding Parameters (19)
        0x00, 0x2a, 0x00, 0x01, 0x00, //     Destination Interface Access
        0x00, 0x54, 0x00, 0x0a, 0x01, 0x00, //     Outer Header Creation GTP-U/UDP/IPv4
        0x00, 0x00, 0x00, 0x02, 10, 0, 0, 1, //       TEID 2, 10.0.0.1
    ];

    const RTS: u32 = 0xeb1d_2c80;
    const SMF: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3);

    pub(crate) fn establishment() -> SessionEstablishmentRequest {
        SessionEstablishmentRequest {
            seid: 0,
            seq: 2,
            node_id: NodeId::Ipv4(SMF),
            cp_f_seid: FSeid { seid: 1, ipv4: SMF },
            create_pdrs: vec![
                CreatePdr {
                    pdr_id: PdrId(1),
                    precedence: 100,
                    pdi: Pdi {
                        source_interface: Interface::ACCESS,
                        f_teid: Some(FTeid {
                            teid: Teid(1),
                            ipv4: Ipv4Addr::new(10, 0, 0, 2),
                        }),
                        network_instance: Some(b"internet".to_vec()),
                        ue_ip_address: None,
                    },
                    outer_header_removal: Some(OuterHeaderRemoval::GTPU_UDP_IPV4),
                    far_id: Some(FarId(1)),
                },
                CreatePdr {
                    pdr_id: PdrId(2),
                    precedence: 100,
                    pdi: Pdi {
                        source_interface: Interface::CORE,
                        f_teid: None,
                        network_instance: None,
                        ue_ip_address: Some(UeIpAddress {
                            ipv4: Ipv4Addr::new(10, 45, 0, 2),
                            destination: true,
                        }),
                    },
                    outer_header_removal: None,
                    far_id: Some(FarId(2)),
                },
            ],
            create_fars: vec![
                Far {
                    far_id: FarId(1),
                    apply_action: Some(ApplyAction::FORW),
                    forwarding_parameters: Some(ForwardingParameters {
                        destination_interface: Some(Interface::CORE),
                        ..Default::default()
                    }),
                },
                Far {
                    far_id: FarId(2),
                    apply_action: Some(ApplyAction::FORW),
                    forwarding_parameters: Some(ForwardingParameters {
                        destination_interface: Some(Interface::ACCESS),
                        outer_header_creation: Some(OuterHeaderCreation {
                            teid: Teid(2),
                            ipv4: Ipv4Addr::new(10, 0, 0, 1),
                        }),
                        ..Default::default()
                    }),
                },
            ],
        }
    }

    /// Path switch: downlink FAR 2 now tunnels to a new gNB, with an End Marker.
    pub(crate) fn modification() -> SessionModificationRequest {
        SessionModificationRequest {
            seid: 0x10,
            seq: 3,
            remove_pdrs: vec![PdrId(7)],
            remove_fars: vec![FarId(7)],
            update_fars: vec![Far {
                far_id: FarId(2),
                apply_action: Some(ApplyAction::FORW),
                forwarding_parameters: Some(ForwardingParameters {
                    destination_interface: Some(Interface::ACCESS),
                    outer_header_creation: Some(OuterHeaderCreation {
                        teid: Teid(9),
                        ipv4: Ipv4Addr::new(10, 0, 1, 1),
                    }),
                    send_end_marker: true,
                    ..Default::default()
                }),
            }],
            ..Default::default()
        }
    }

    /// Every supported message type, fixtures first.
    pub(crate) fn messages() -> Vec<Message> {
        let up = FSeid {
            seid: 0x10,
            ipv4: Ipv4Addr::new(10, 0, 0, 2),
        };
        vec![
            Message::HeartbeatRequest(Heartbeat {
                seq: 42,
                recovery_time_stamp: RTS,
            }),
            Message::AssociationSetupRequest(AssociationSetup {
                seq: 1,
                node_id: NodeId::Ipv4(SMF),
                cause: None,
                recovery_time_stamp: RTS,
            }),
            Message::SessionEstablishmentRequest(establishment()),
            Message::HeartbeatResponse(Heartbeat {
                seq: 42,
                recovery_time_stamp: RTS,
            }),
            Message::AssociationSetupResponse(AssociationSetup {
                seq: 1,
                node_id: NodeId::Ipv4(up.ipv4),
                cause: Some(Cause::ACCEPTED),
                recovery_time_stamp: RTS,
            }),
            Message::SessionEstablishmentResponse(SessionEstablishmentResponse {
                seid: 1,
                seq: 2,
                node_id: NodeId::Ipv4(up.ipv4),
                cause: Cause::ACCEPTED,
                up_f_seid: Some(up),
            }),
            Message::SessionModificationRequest(modification()),
            Message::SessionModificationResponse(SessionResponse {
                seid: 1,
                seq: 3,
                cause: Cause::ACCEPTED,
            }),
            Message::SessionDeletionRequest(SessionDeletionRequest { seid: 0x10, seq: 4 }),
            Message::SessionDeletionResponse(SessionResponse {
                seid: 1,
                seq: 4,
                cause: Cause::ACCEPTED,
            }),
        ]
    }

    fn fixtures() -> [(&'static [u8], Message); 3] {
        let m = messages();
        [
            (&HEARTBEAT_REQUEST, m[0].clone()),
            (&ASSOCIATION_SETUP_REQUEST, m[1].clone()),
            (&SESSION_ESTABLISHMENT_REQUEST, m[2].clone()),
        ]
    }

    #[test]
    fn fixtures_parse_and_emit() {
        for (bytes, message) in fixtures() {
            assert_eq!(Message::parse(bytes).unwrap(), message);
            assert_eq!(message.to_vec().unwrap(), bytes);
            assert_eq!(message.buffer_len(), bytes.len());
        }
    }

    #[test]
    fn all_messages_round_trip() {
        for message in messages() {
            let bytes = message.to_vec().unwrap();
            assert_eq!(Message::parse(&bytes).unwrap(), message, "{bytes:02x?}");
            let mut buf = [0u8; 512];
            assert_eq!(message.emit(&mut buf).unwrap(), bytes.len());
            assert_eq!(
                message.emit(&mut buf[..bytes.len() - 1]),
                Err(Error::Truncated {
                    need: bytes.len(),
                    have: bytes.len() - 1
                })
            );
        }
    }

    #[test]
    fn header_accessors() {
        let p = Packet::new_checked(&SESSION_ESTABLISHMENT_REQUEST[..]).unwrap();
        assert_eq!(
            (p.version(), p.seid_flag(), p.follow_on(), p.priority()),
            (1, true, false, None)
        );
        assert_eq!(
            (p.msg_type(), p.length(), p.seid(), p.seq_number()),
            (50, 213, Some(0), 2)
        );
        let types: Vec<u16> = p.ies().map(|ie| ie.unwrap().ie_type).collect();
        assert_eq!(types, [ie::NODE_ID, ie::F_SEID, 1, 1, 3, 3]);
        let h = HeaderRepr {
            msg_type: 1,
            seid: None,
            seq: 0x01_0203,
            priority: Some(5),
        };
        let mut buf = [0u8; 8];
        h.emit(&mut Packet::new_unchecked(&mut buf[..]), 0);
        assert_eq!(buf, [0x22, 1, 0, 4, 1, 2, 3, 0x50]);
        assert_eq!(
            HeaderRepr::parse(&Packet::new_checked(&buf[..]).unwrap()),
            Ok(h)
        );
    }

    #[test]
    fn every_truncation_is_an_error() {
        for message in messages() {
            let bytes = message.to_vec().unwrap();
            for len in 0..bytes.len() {
                assert!(
                    Message::parse(&bytes[..len]).is_err(),
                    "len {len} of {message:?}"
                );
            }
        }
    }

    #[test]
    fn mutations_never_panic() {
        for message in messages() {
            let bytes = message.to_vec().unwrap();
            for i in 0..bytes.len() {
                for v in [0x00, 0x01, 0x02, 0x05, 0x80, 0xff] {
                    let mut m = bytes.clone();
                    m[i] = v;
                    let _ = Message::parse(&m);
                }
            }
        }
    }

    #[test]
    fn unknown_and_enterprise_ies_are_skipped() {
        let mut bytes = HEARTBEAT_REQUEST.to_vec();
        bytes.extend([0x80, 0x01, 0x00, 0x03, 0x00, 0x0a, 0xff]); // vendor IE, enterprise 10
        bytes.extend([0x00, 0xc8, 0x00, 0x00]); // unknown IE 200, empty
        bytes[3] += 11;
        assert_eq!(Message::parse(&bytes).unwrap(), messages()[0]);
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        let vendor = packet.ies().nth(1).unwrap().unwrap();
        assert_eq!(
            (vendor.ie_type, vendor.enterprise_id, vendor.value),
            (0x8001, Some(10), &[0xff][..])
        );
        bytes[11] = 0x01; // vendor IE too short for its enterprise ID
        bytes[3] -= 11;
        bytes.truncate(16);
        bytes.extend([0x80, 0x01, 0x00, 0x01, 0x00]);
        bytes[3] += 5;
        assert!(Message::parse(&bytes).is_err());
    }

    #[test]
    fn semantic_errors() {
        let mut bytes = HEARTBEAT_REQUEST;
        bytes[1] = 99;
        assert_eq!(Message::parse(&bytes), Err(Error::UnsupportedMessage(99)));
        bytes[1] = msg::SESSION_DELETION_REQUEST;
        assert_eq!(Message::parse(&bytes), Err(Error::MissingSeid(54)));
        bytes[1] = msg::ASSOCIATION_SETUP_REQUEST;
        assert_eq!(Message::parse(&bytes), Err(Error::MissingIe(ie::NODE_ID)));
        bytes[0] = 0x40;
        assert_eq!(Message::parse(&bytes), Err(Error::Version(2)));
    }
}

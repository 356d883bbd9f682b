//! GTP-U (TS 29.281) over UDP port 2152, with the PDU Session Container
//! extension header (TS 38.415).
//!
//! Layout of a header with all optional parts present:
//!
//! ```text
//!  0      1      2      3      4 .. 8   8 .. 10  10      11        12 ..
//! flags  type   length (BE)    TEID     seq      N-PDU   next-ext  extension headers, then T-PDU
//! ```
//!
//! `length` counts the octets after the first 8. The 4 optional octets are present when
//! any of the E, S or PN flags is set. Each extension header is `len` (in 4-octet units),
//! `len * 4 - 2` content octets and the type of the next extension header (0 = none).

use core::fmt;
use core::ops::Range;

/// UDP port of GTP-U.
pub const PORT: u16 = 2152;
/// Extension header type of the PDU Session Container.
pub const EXT_PDU_SESSION_CONTAINER: u8 = 0x85;
/// Recovery IE (type 14, restart counter 0) carried by every Echo Response.
pub const RECOVERY_IE: [u8; 2] = [14, 0];

/// Errors from parsing or emitting GTP-U.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The buffer is shorter than the header or the length field says.
    #[error("truncated gtp-u packet: need {need} octets, have {have}")]
    Truncated { need: usize, have: usize },
    /// The version field is not 1.
    #[error("unsupported gtp version {0}")]
    Version(u8),
    /// The protocol type bit is 0 (GTP').
    #[error("protocol type is gtp' not gtp")]
    ProtocolType,
    /// An extension header has length 0 or runs past the message.
    #[error("malformed extension header of type {0:#04x}")]
    Extension(u8),
    /// A PDU Session Container with an unknown PDU type or too little content.
    #[error("malformed pdu session container")]
    PduSession,
    /// A QFI of 64 or more.
    #[error("qfi {0} out of range (must be below 64)")]
    Qfi(u8),
    /// The message would not fit the 16-bit length field.
    #[error("gtp-u message too long: {0} octets after the mandatory header")]
    TooLong(usize),
}

/// Tunnel endpoint identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Teid(pub u32);

impl fmt::Display for Teid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#010x}", self.0)
    }
}

/// QoS flow identifier, always below 64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Qfi(u8);

impl Qfi {
    /// Returns the QFI, or an error if `value >= 64`.
    pub const fn new(value: u8) -> Result<Self, Error> {
        if value < 64 {
            Ok(Qfi(value))
        } else {
            Err(Error::Qfi(value))
        }
    }

    /// The numeric value.
    pub const fn value(self) -> u8 {
        self.0
    }
}

impl TryFrom<u8> for Qfi {
    type Error = Error;
    fn try_from(value: u8) -> Result<Self, Error> {
        Qfi::new(value)
    }
}

/// GTP-U message type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    /// Echo Request (1).
    EchoRequest,
    /// Echo Response (2).
    EchoResponse,
    /// Error Indication (26).
    ErrorIndication,
    /// End Marker (254).
    EndMarker,
    /// G-PDU (255): carries a user packet.
    GPdu,
    /// Any other type.
    Other(u8),
}

impl From<u8> for MessageType {
    fn from(v: u8) -> Self {
        match v {
            1 => Self::EchoRequest,
            2 => Self::EchoResponse,
            26 => Self::ErrorIndication,
            254 => Self::EndMarker,
            255 => Self::GPdu,
            v => Self::Other(v),
        }
    }
}

impl From<MessageType> for u8 {
    fn from(t: MessageType) -> u8 {
        match t {
            MessageType::EchoRequest => 1,
            MessageType::EchoResponse => 2,
            MessageType::ErrorIndication => 26,
            MessageType::EndMarker => 254,
            MessageType::GPdu => 255,
            MessageType::Other(v) => v,
        }
    }
}

/// Byte positions in the GTP-U header.
pub mod field {
    use core::ops::Range;

    /// Version (3 bits), PT, spare, E, S, PN.
    pub const FLAGS: usize = 0;
    /// Message type.
    pub const MSG_TYPE: usize = 1;
    /// Octets after the mandatory header.
    pub const LENGTH: Range<usize> = 2..4;
    /// Tunnel endpoint identifier.
    pub const TEID: Range<usize> = 4..8;
    /// Sequence number (optional part).
    pub const SEQ: Range<usize> = 8..10;
    /// N-PDU number (optional part).
    pub const NPDU: usize = 10;
    /// Next extension header type (optional part).
    pub const NEXT_EXT: usize = 11;
    /// End of the mandatory header.
    pub const MANDATORY_END: usize = 8;
    /// End of the optional octets.
    pub const OPTIONAL_END: usize = 12;
}

/// Flag bits of octet 0.
pub mod flags {
    /// Version 1 in the top three bits.
    pub const VERSION_1: u8 = 0x20;
    /// Protocol type: GTP (as opposed to GTP').
    pub const PT: u8 = 0x10;
    /// Extension header flag.
    pub const E: u8 = 0x04;
    /// Sequence number flag.
    pub const S: u8 = 0x02;
    /// N-PDU number flag.
    pub const PN: u8 = 0x01;
}

/// A read/write view of a GTP-U packet.
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

    /// Checks that the header, the length field and the extension chain fit the buffer.
    pub fn check_len(&self) -> Result<(), Error> {
        let have = self.buffer.as_ref().len();
        if have < field::MANDATORY_END {
            return Err(Error::Truncated {
                need: field::MANDATORY_END,
                have,
            });
        }
        let end = self.message_len();
        if have < end {
            return Err(Error::Truncated { need: end, have });
        }
        if self.has_optional() && end < field::OPTIONAL_END {
            return Err(Error::Truncated {
                need: field::OPTIONAL_END,
                have: end,
            });
        }
        self.walk_extensions().map(|_| ())
    }

    /// Consumes the view, returning the buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The version field (1 for GTPv1).
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS] >> 5
    }

    /// The protocol type bit (true for GTP).
    pub fn protocol_type(&self) -> bool {
        self.flag(flags::PT)
    }

    /// The E flag: an extension header chain follows.
    pub fn ext_flag(&self) -> bool {
        self.flag(flags::E)
    }

    /// The S flag: the sequence number is meaningful.
    pub fn seq_flag(&self) -> bool {
        self.flag(flags::S)
    }

    /// The PN flag: the N-PDU number is meaningful.
    pub fn npdu_flag(&self) -> bool {
        self.flag(flags::PN)
    }

    /// The message type.
    pub fn msg_type(&self) -> MessageType {
        self.buffer.as_ref()[field::MSG_TYPE].into()
    }

    /// The length field: octets after the first 8.
    pub fn length(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::LENGTH])
    }

    /// The tunnel endpoint identifier.
    pub fn teid(&self) -> Teid {
        Teid(be32(&self.buffer.as_ref()[field::TEID]))
    }

    /// The sequence number, if the S flag is set.
    pub fn seq_number(&self) -> Option<u16> {
        self.seq_flag()
            .then(|| be16(&self.buffer.as_ref()[field::SEQ]))
    }

    /// The N-PDU number, if the PN flag is set.
    pub fn npdu_number(&self) -> Option<u8> {
        self.npdu_flag().then(|| self.buffer.as_ref()[field::NPDU])
    }

    /// The type of the first extension header, if the E flag is set.
    pub fn next_ext_type(&self) -> Option<u8> {
        self.ext_flag()
            .then(|| self.buffer.as_ref()[field::NEXT_EXT])
            .filter(|&t| t != 0)
    }

    /// Iterates over the extension header chain.
    pub fn extension_headers(&self) -> ExtensionHeaders<'_> {
        let data = self.buffer.as_ref();
        let end = self.message_len().min(data.len());
        ExtensionHeaders {
            data: data.get(field::OPTIONAL_END..end).unwrap_or_default(),
            next: self.next_ext_type().unwrap_or(0),
        }
    }

    /// Length of the whole header: mandatory, optional and extension headers.
    pub fn header_len(&self) -> usize {
        self.walk_extensions()
            .unwrap_or_else(|_| self.message_len().min(self.buffer.as_ref().len()))
    }

    /// The T-PDU (for a G-PDU, the inner IP packet) or the IEs of a signalling message.
    pub fn payload(&self) -> &[u8] {
        let data = self.buffer.as_ref();
        let end = self.message_len().min(data.len());
        data.get(self.header_len()..end).unwrap_or_default()
    }

    fn flag(&self, bit: u8) -> bool {
        self.buffer.as_ref()[field::FLAGS] & bit != 0
    }

    fn has_optional(&self) -> bool {
        self.buffer.as_ref()[field::FLAGS] & (flags::E | flags::S | flags::PN) != 0
    }

    fn message_len(&self) -> usize {
        field::MANDATORY_END + usize::from(self.length())
    }

    /// Walks the extension chain, returning the header length.
    fn walk_extensions(&self) -> Result<usize, Error> {
        if !self.has_optional() {
            return Ok(field::MANDATORY_END);
        }
        let data = self.buffer.as_ref();
        let end = self.message_len().min(data.len());
        let mut off = field::OPTIONAL_END;
        let mut next = self.next_ext_type().unwrap_or(0);
        while next != 0 {
            let len = usize::from(*data.get(off).ok_or(Error::Extension(next))?) * 4;
            if len == 0 || off + len > end {
                return Err(Error::Extension(next));
            }
            next = data[off + len - 1];
            off += len;
        }
        Ok(off)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the flags octet (version, PT, E, S, PN) at once.
    pub fn set_flags(&mut self, value: u8) {
        self.buffer.as_mut()[field::FLAGS] = value;
    }

    /// Sets the message type.
    pub fn set_msg_type(&mut self, value: MessageType) {
        self.buffer.as_mut()[field::MSG_TYPE] = value.into();
    }

    /// Sets the length field.
    pub fn set_length(&mut self, value: u16) {
        self.buffer.as_mut()[field::LENGTH].copy_from_slice(&value.to_be_bytes());
    }

    /// Sets the TEID.
    pub fn set_teid(&mut self, value: Teid) {
        self.buffer.as_mut()[field::TEID].copy_from_slice(&value.0.to_be_bytes());
    }

    /// Sets the sequence number octets (the S flag is set separately).
    pub fn set_seq_number(&mut self, value: u16) {
        self.buffer.as_mut()[field::SEQ].copy_from_slice(&value.to_be_bytes());
    }

    /// Sets the N-PDU number octet.
    pub fn set_npdu_number(&mut self, value: u8) {
        self.buffer.as_mut()[field::NPDU] = value;
    }

    /// Sets the next extension header type octet.
    pub fn set_next_ext_type(&mut self, value: u8) {
        self.buffer.as_mut()[field::NEXT_EXT] = value;
    }

    /// Mutable access to the payload.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let range = self.header_len()..self.message_len();
        let data = self.buffer.as_mut();
        let end = range.end.min(data.len());
        data.get_mut(range.start..end).unwrap_or_default()
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Packet<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

/// One extension header: its type and content (without the length and next-type octets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtensionHeader<'a> {
    /// Extension header type, e.g. [`EXT_PDU_SESSION_CONTAINER`].
    pub ext_type: u8,
    /// Content octets, including any padding.
    pub content: &'a [u8],
}

/// Iterator over an extension header chain; stops at the end or at a malformed header.
#[derive(Debug, Clone)]
pub struct ExtensionHeaders<'a> {
    data: &'a [u8],
    next: u8,
}

impl<'a> Iterator for ExtensionHeaders<'a> {
    type Item = ExtensionHeader<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next == 0 {
            return None;
        }
        let len = usize::from(*self.data.first()?) * 4;
        let Some(header) = self.data.get(..len).filter(|h| h.len() >= 4) else {
            self.next = 0;
            return None;
        };
        let item = ExtensionHeader {
            ext_type: self.next,
            content: &header[1..len - 1],
        };
        self.next = header[len - 1];
        self.data = &self.data[len..];
        Some(item)
    }
}

/// Direction of a PDU Session Container (its PDU type).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// DL PDU SESSION INFORMATION (PDU type 0).
    Downlink,
    /// UL PDU SESSION INFORMATION (PDU type 1).
    Uplink,
}

/// The fields of a PDU Session Container (TS 38.415) that this testbed uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PduSessionInfo {
    /// Downlink or uplink.
    pub direction: Direction,
    /// QoS flow identifier.
    pub qfi: Qfi,
    /// Reflective QoS indicator (downlink only, ignored on emit for uplink).
    pub rqi: bool,
    /// Paging policy indicator, 0..=7 (downlink only; `Some` sets the PPP bit).
    pub ppi: Option<u8>,
}

impl PduSessionInfo {
    /// Uplink container for `qfi`.
    pub const fn uplink(qfi: Qfi) -> Self {
        PduSessionInfo {
            direction: Direction::Uplink,
            qfi,
            rqi: false,
            ppi: None,
        }
    }

    /// Downlink container for `qfi`, without RQI or PPI.
    pub const fn downlink(qfi: Qfi) -> Self {
        PduSessionInfo {
            direction: Direction::Downlink,
            qfi,
            rqi: false,
            ppi: None,
        }
    }

    /// Parses the container content (the octets between length and next-type).
    pub fn parse(content: &[u8]) -> Result<Self, Error> {
        let [first, second, rest @ ..] = content else {
            return Err(Error::PduSession);
        };
        let qfi = Qfi(second & 0x3f);
        match first >> 4 {
            0 => {
                let ppi = match second & 0x80 {
                    0 => None,
                    _ => Some(rest.first().ok_or(Error::PduSession)? >> 5),
                };
                Ok(PduSessionInfo {
                    direction: Direction::Downlink,
                    qfi,
                    rqi: second & 0x40 != 0,
                    ppi,
                })
            }
            1 => Ok(Self::uplink(qfi)),
            _ => Err(Error::PduSession),
        }
    }

    /// Length of the whole extension header, a multiple of 4.
    pub fn buffer_len(&self) -> usize {
        if self.ppi().is_some() {
            8
        } else {
            4
        }
    }

    /// Writes the whole extension header (length, content, padding, next type 0).
    ///
    /// Panics if `buf` is shorter than [`buffer_len`](Self::buffer_len).
    pub fn emit(&self, buf: &mut [u8]) {
        let len = self.buffer_len();
        let buf = &mut buf[..len];
        buf.fill(0);
        buf[0] = (len / 4) as u8;
        match self.direction {
            Direction::Uplink => {
                buf[1] = 0x10;
                buf[2] = self.qfi.0;
            }
            Direction::Downlink => {
                buf[2] = self.qfi.0 | if self.rqi { 0x40 } else { 0 };
                if let Some(ppi) = self.ppi() {
                    buf[2] |= 0x80;
                    buf[3] = ppi << 5;
                }
            }
        }
    }

    fn ppi(&self) -> Option<u8> {
        match self.direction {
            Direction::Downlink => self.ppi.map(|p| p & 0x07),
            Direction::Uplink => None,
        }
    }
}

/// High-level GTP-U header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GtpuRepr {
    /// Message type.
    pub msg_type: MessageType,
    /// Tunnel endpoint identifier (0 for Echo).
    pub teid: Teid,
    /// Sequence number; `Some` sets the S flag (required for Echo).
    pub seq: Option<u16>,
    /// PDU Session Container, the only extension header emitted.
    pub pdu_session: Option<PduSessionInfo>,
}

impl GtpuRepr {
    /// A G-PDU header for `teid`.
    pub const fn g_pdu(teid: Teid, pdu_session: Option<PduSessionInfo>) -> Self {
        GtpuRepr {
            msg_type: MessageType::GPdu,
            teid,
            seq: None,
            pdu_session,
        }
    }

    /// An Echo Request header (TEID 0, S flag set).
    pub const fn echo_request(seq: u16) -> Self {
        GtpuRepr {
            msg_type: MessageType::EchoRequest,
            teid: Teid(0),
            seq: Some(seq),
            pdu_session: None,
        }
    }

    /// An Echo Response header; its payload must be [`RECOVERY_IE`].
    pub const fn echo_response(seq: u16) -> Self {
        GtpuRepr {
            msg_type: MessageType::EchoResponse,
            teid: Teid(0),
            seq: Some(seq),
            pdu_session: None,
        }
    }

    /// An End Marker header for `teid` (no payload).
    pub const fn end_marker(teid: Teid) -> Self {
        GtpuRepr {
            msg_type: MessageType::EndMarker,
            teid,
            seq: None,
            pdu_session: None,
        }
    }

    /// Parses a checked packet. Unknown extension headers are skipped.
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Self, Error> {
        packet.check_len()?;
        if packet.version() != 1 {
            return Err(Error::Version(packet.version()));
        }
        if !packet.protocol_type() {
            return Err(Error::ProtocolType);
        }
        let pdu_session = packet
            .extension_headers()
            .find(|h| h.ext_type == EXT_PDU_SESSION_CONTAINER)
            .map(|h| PduSessionInfo::parse(h.content))
            .transpose()?;
        Ok(GtpuRepr {
            msg_type: packet.msg_type(),
            teid: packet.teid(),
            seq: packet.seq_number(),
            pdu_session,
        })
    }

    /// Header length; the payload starts at this offset.
    pub fn buffer_len(&self) -> usize {
        let optional = self.seq.is_some() || self.pdu_session.is_some();
        field::MANDATORY_END
            + if optional { 4 } else { 0 }
            + self.pdu_session.map_or(0, |p| p.buffer_len())
    }

    /// Writes the header for a payload of `payload_len` octets that follows at
    /// [`buffer_len`](Self::buffer_len).
    ///
    /// Panics if the buffer is shorter than `buffer_len()`; the length field wraps if
    /// the message exceeds 65535 + 8 octets (use [`encapsulate`] for a checked version).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>, payload_len: usize) {
        let mut fl = flags::VERSION_1 | flags::PT;
        if self.seq.is_some() {
            fl |= flags::S;
        }
        if self.pdu_session.is_some() {
            fl |= flags::E;
        }
        packet.set_flags(fl);
        packet.set_msg_type(self.msg_type);
        packet.set_length((self.buffer_len() - field::MANDATORY_END + payload_len) as u16);
        packet.set_teid(self.teid);
        if self.seq.is_some() || self.pdu_session.is_some() {
            packet.set_seq_number(self.seq.unwrap_or(0));
            packet.set_npdu_number(0);
            packet.set_next_ext_type(self.pdu_session.map_or(0, |_| EXT_PDU_SESSION_CONTAINER));
        }
        if let Some(p) = self.pdu_session {
            p.emit(&mut packet.buffer.as_mut()[field::OPTIONAL_END..]);
        }
    }
}

/// Writes `repr` followed by `payload` into `buf`, returning the message length.
pub fn encapsulate(repr: &GtpuRepr, payload: &[u8], buf: &mut [u8]) -> Result<usize, Error> {
    let header = repr.buffer_len();
    let total = header + payload.len();
    if total - field::MANDATORY_END > usize::from(u16::MAX) {
        return Err(Error::TooLong(total - field::MANDATORY_END));
    }
    let have = buf.len();
    let buf = buf
        .get_mut(..total)
        .ok_or(Error::Truncated { need: total, have })?;
    buf[header..].copy_from_slice(payload);
    repr.emit(&mut Packet::new_unchecked(&mut *buf), payload.len());
    Ok(total)
}

/// Like [`encapsulate`], into a new vector.
pub fn to_vec(repr: &GtpuRepr, payload: &[u8]) -> Result<Vec<u8>, Error> {
    let mut buf = vec![0; repr.buffer_len() + payload.len()];
    encapsulate(repr, payload, &mut buf)?;
    Ok(buf)
}

/// Parses a GTP-U message, returning its header and payload (e.g. the inner IP packet).
pub fn decapsulate(buf: &[u8]) -> Result<(GtpuRepr, &[u8]), Error> {
    let packet = Packet::new_checked(buf)?;
    let repr = GtpuRepr::parse(&packet)?;
    let range: Range<usize> = packet.header_len()..packet.message_len();
    Ok((repr, &buf[range]))
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;

    /// A minimal IPv4 + ICMP echo request, 10.45.0.2 -> 10.0.0.9 (28 octets).
    pub(crate) const INNER_IP: [u8; 28] = [
        0x45, 0x00, 0x00, 0x1c, 0x00, 0x01, 0x00, 0x00, // ver/ihl, tos, length 28, id, frag
        0x40, 0x01, 0x66, 0xa9, // ttl 64, ICMP, header checksum
        10, 45, 0, 2, // source
        10, 0, 0, 9, // destination
        0x08, 0x00, 0xf7, 0xfe, 0x00, 0x01, 0x00, 0x00, // ICMP echo request id 1 seq 0
    ];

    /// G-PDU, TEID 0x12345678, PDU Session Container UL QFI 9, then `INNER_IP`.
    pub(crate) fn g_pdu_fixture() -> Vec<u8> {
        let mut v = vec![
            0x34, 0xff, 0x00, 0x24, // v1 PT E, G-PDU, length 36
            0x12, 0x34, 0x56, 0x78, // TEID
            0x00, 0x00, 0x00, 0x85, // seq, N-PDU, next ext = PDU Session Container
            0x01, 0x10, 0x09, 0x00, // len 1, UL, QFI 9, no next ext
        ];
        v.extend_from_slice(&INNER_IP);
        v
    }

    pub(crate) const ECHO_REQUEST: [u8; 12] = [
        0x32, 0x01, 0x00, 0x04, // v1 PT S, Echo Request, length 4
        0x00, 0x00, 0x00, 0x00, // TEID 0
        0x00, 0x07, 0x00, 0x00, // seq 7
    ];

    pub(crate) const ECHO_RESPONSE: [u8; 14] = [
        0x32, 0x02, 0x00, 0x06, // v1 PT S, Echo Response, length 6
        0x00, 0x00, 0x00, 0x00, // TEID 0
        0x00, 0x07, 0x00, 0x00, // seq 7
        0x0e, 0x00, // Recovery IE, restart counter 0
    ];

    pub(crate) const END_MARKER: [u8; 8] = [
        0x30, 0xfe, 0x00, 0x00, // v1 PT, End Marker, length 0
        0x00, 0x00, 0x00, 0x01, // TEID 1
    ];

    fn qfi(v: u8) -> Qfi {
        Qfi::new(v).unwrap()
    }

    fn fixtures() -> Vec<(Vec<u8>, GtpuRepr, Vec<u8>)> {
        vec![
            (
                g_pdu_fixture(),
                GtpuRepr::g_pdu(Teid(0x1234_5678), Some(PduSessionInfo::uplink(qfi(9)))),
                INNER_IP.to_vec(),
            ),
            (ECHO_REQUEST.to_vec(), GtpuRepr::echo_request(7), vec![]),
            (
                ECHO_RESPONSE.to_vec(),
                GtpuRepr::echo_response(7),
                RECOVERY_IE.to_vec(),
            ),
            (END_MARKER.to_vec(), GtpuRepr::end_marker(Teid(1)), vec![]),
        ]
    }

    #[test]
    fn fixtures_round_trip() {
        for (bytes, repr, payload) in fixtures() {
            let (parsed, got) = decapsulate(&bytes).unwrap();
            assert_eq!(parsed, repr);
            assert_eq!(got, &payload[..]);
            assert_eq!(to_vec(&repr, &payload).unwrap(), bytes);
        }
    }

    #[test]
    fn g_pdu_accessors() {
        let bytes = g_pdu_fixture();
        let p = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(
            (p.version(), p.protocol_type(), p.ext_flag(), p.seq_flag()),
            (1, true, true, false)
        );
        assert_eq!(p.msg_type(), MessageType::GPdu);
        assert_eq!(p.length(), 36);
        assert_eq!(p.teid(), Teid(0x1234_5678));
        assert_eq!(p.seq_number(), None);
        assert_eq!(p.header_len(), 16);
        let ext: Vec<_> = p.extension_headers().collect();
        assert_eq!(
            ext,
            [ExtensionHeader {
                ext_type: 0x85,
                content: &[0x10, 0x09]
            }]
        );
        assert_eq!(p.payload(), INNER_IP);
    }

    #[test]
    fn every_truncation_is_an_error() {
        for (bytes, _, _) in fixtures() {
            for len in 0..bytes.len() {
                assert!(
                    decapsulate(&bytes[..len]).is_err(),
                    "len {len} of {bytes:02x?}"
                );
            }
        }
    }

    #[test]
    fn mutations_never_panic() {
        for (bytes, _, _) in fixtures() {
            for i in 0..bytes.len() {
                for v in [0x00, 0x01, 0x04, 0x07, 0x3f, 0x80, 0x85, 0xff] {
                    let mut m = bytes.clone();
                    m[i] = v;
                    let _ = decapsulate(&m);
                    if let Ok(p) = Packet::new_checked(&m[..]) {
                        let _ = (p.payload(), p.extension_headers().count(), p.npdu_number());
                    }
                }
            }
        }
    }

    #[test]
    fn downlink_container_with_rqi_and_ppi() {
        let info = PduSessionInfo {
            rqi: true,
            ppi: Some(5),
            ..PduSessionInfo::downlink(qfi(63))
        };
        let repr = GtpuRepr {
            seq: Some(3),
            ..GtpuRepr::g_pdu(Teid(2), Some(info))
        };
        let bytes = to_vec(&repr, &INNER_IP).unwrap();
        assert_eq!(
            &bytes[..20],
            [
                0x36, 0xff, 0x00, 0x28, 0, 0, 0, 2, // v1 PT E S, G-PDU, length 40, TEID 2
                0x00, 0x03, 0x00, 0x85, // seq 3, N-PDU, PDU Session Container
                0x02, 0x00, 0xff, 0xa0, // len 2, DL, PPP|RQI|QFI 63, PPI 5
                0x00, 0x00, 0x00, 0x00, // padding, no next ext
            ]
        );
        assert_eq!(decapsulate(&bytes).unwrap(), (repr, &INNER_IP[..]));
    }

    #[test]
    fn unknown_extensions_are_skipped_and_bad_ones_rejected() {
        // UDP Port extension (0x40) then the PDU Session Container.
        let mut bytes = vec![0x34, 0xff, 0x00, 0x0c, 0, 0, 0, 1, 0, 0, 0, 0x40];
        bytes.extend([0x01, 0x08, 0x68, 0x85, 0x01, 0x10, 0x01, 0x00]);
        let (repr, payload) = decapsulate(&bytes).unwrap();
        assert_eq!(repr.pdu_session, Some(PduSessionInfo::uplink(qfi(1))));
        assert!(payload.is_empty());
        bytes[12] = 0; // zero-length extension header
        assert_eq!(decapsulate(&bytes), Err(Error::Extension(0x40)));
    }

    #[test]
    fn rejects_bad_version_pt_and_qfi() {
        let mut b = END_MARKER;
        b[0] = 0x40 | 0x10;
        assert_eq!(decapsulate(&b), Err(Error::Version(2)));
        b[0] = 0x20;
        assert_eq!(decapsulate(&b), Err(Error::ProtocolType));
        assert_eq!(Qfi::new(64), Err(Error::Qfi(64)));
        assert_eq!(Qfi::try_from(63).map(Qfi::value), Ok(63));
    }

    #[test]
    fn encapsulate_checks_buffer_size() {
        let mut buf = [0u8; 10];
        let r = encapsulate(&GtpuRepr::g_pdu(Teid(1), None), &INNER_IP, &mut buf);
        assert_eq!(r, Err(Error::Truncated { need: 36, have: 10 }));
        let big = vec![0; 70_000];
        assert!(matches!(
            to_vec(&GtpuRepr::g_pdu(Teid(1), None), &big),
            Err(Error::TooLong(_))
        ));
    }
}

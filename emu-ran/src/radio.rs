//! The radio frames of the air segment (UE ↔ gNB over UDP, see [`model::ran::radio`]):
//! `[0x00][radio id u16 BE][IP packet]` for user data, `[0x01][JSON Rrc]` for control.
//!
//! Parsing never panics: anything else is a [`FrameError`].

use model::ran::radio::{Rrc, CONTROL, DATA};

/// Octets before the IP packet of a data frame.
pub const DATA_HEADER_LEN: usize = 3;

/// A radio frame that does not parse.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("empty radio frame")]
    Empty,
    #[error("data frame of {0} octets is shorter than its 3-octet header")]
    ShortData(usize),
    #[error("data frame without an ip packet")]
    EmptyPacket,
    #[error("unknown radio frame type {0:#04x}")]
    UnknownType(u8),
    #[error("control frame is not an rrc message")]
    Control(#[source] serde_json::Error),
}

/// A parsed radio frame, borrowing the datagram.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame<'a> {
    /// User data of the UE with `radio_id` at the gNB.
    Data { radio_id: u16, packet: &'a [u8] },
    /// An RRC stand-in message.
    Control(Rrc),
}

/// Parses one datagram of the air segment.
pub fn parse(datagram: &[u8]) -> Result<Frame<'_>, FrameError> {
    match datagram.first() {
        None => Err(FrameError::Empty),
        Some(&DATA) => {
            let [_, hi, lo, packet @ ..] = datagram else {
                return Err(FrameError::ShortData(datagram.len()));
            };
            if packet.is_empty() {
                return Err(FrameError::EmptyPacket);
            }
            Ok(Frame::Data {
                radio_id: u16::from_be_bytes([*hi, *lo]),
                packet,
            })
        }
        Some(&CONTROL) => serde_json::from_slice(&datagram[1..])
            .map(Frame::Control)
            .map_err(FrameError::Control),
        Some(&other) => Err(FrameError::UnknownType(other)),
    }
}

/// A data frame carrying `packet` for/from the UE with `radio_id`.
pub fn data_frame(radio_id: u16, packet: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(DATA_HEADER_LEN + packet.len());
    v.push(DATA);
    v.extend_from_slice(&radio_id.to_be_bytes());
    v.extend_from_slice(packet);
    v
}

/// A control frame carrying `rrc`.
pub fn control_frame(rrc: &Rrc) -> Vec<u8> {
    let mut v = vec![CONTROL];
    // Serialising these plain enums cannot fail; an empty body would be refused by the peer.
    v.extend_from_slice(&serde_json::to_vec(rrc).unwrap_or_default());
    v
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn data_frames_round_trip() {
        let f = data_frame(0x0102, &[0x45, 1, 2]);
        assert_eq!(f, [0, 1, 2, 0x45, 1, 2]);
        assert_eq!(
            parse(&f).unwrap(),
            Frame::Data {
                radio_id: 0x0102,
                packet: &[0x45, 1, 2]
            }
        );
    }

    #[test]
    fn control_frames_round_trip() {
        let m = Rrc::AttachAccept {
            radio_id: 7,
            ue_ipv4: Ipv4Addr::new(192, 168, 1, 2),
            qfi: 9,
        };
        let f = control_frame(&m);
        assert_eq!(f[0], 1);
        assert_eq!(parse(&f).unwrap(), Frame::Control(m));
    }

    #[test]
    fn garbage_is_an_error_never_a_panic() {
        assert!(matches!(parse(&[]), Err(FrameError::Empty)));
        assert!(matches!(parse(&[0]), Err(FrameError::ShortData(1))));
        assert!(matches!(parse(&[0, 1]), Err(FrameError::ShortData(2))));
        assert!(matches!(parse(&[0, 1, 2]), Err(FrameError::EmptyPacket)));
        assert!(matches!(parse(&[7, 1, 2]), Err(FrameError::UnknownType(7))));
        assert!(matches!(parse(&[1]), Err(FrameError::Control(_))));
        assert!(matches!(
            parse(b"\x01{\"msg\":\"nope\"}"),
            Err(FrameError::Control(_))
        ));
        assert!(matches!(
            parse(b"\x01\xff\xfe"),
            Err(FrameError::Control(_))
        ));
        // every prefix of a valid control frame, and pseudo-random bytes, are handled
        let f = control_frame(&Rrc::AttachRequest {
            supi: "imsi-1".into(),
            ue_name: "ue1".into(),
        });
        for n in 0..f.len() {
            let _ = parse(&f[..n]);
        }
        let mut x: u32 = 12345;
        for _ in 0..2000 {
            let len = (x % 40) as usize;
            let buf: Vec<u8> = (0..len)
                .map(|_| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (x >> 16) as u8 % 3
                })
                .collect();
            let _ = parse(&buf);
            x = x.wrapping_add(7);
        }
    }
}

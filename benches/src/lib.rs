//! Criterion benchmarks of the testbed's per-packet and control paths (`cargo bench -p benches`).
//! Shared inputs live here so benches and tests build the same packets.

use wire::gtpu::{GtpuRepr, PduSessionInfo, Qfi, Teid};

/// A minimal IPv4 packet of `len` octets (header + zero payload), as a UE would send.
pub fn ipv4_packet(len: usize) -> Vec<u8> {
    let len = len.max(20);
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&[192, 168, 1, 2]);
    p[16..20].copy_from_slice(&[20, 0, 0, 10]);
    p
}

/// The uplink G-PDU header a gNB puts in front of a UE packet (QFI 9).
pub fn uplink_header() -> GtpuRepr {
    let qfi = Qfi::new(9).unwrap_or_else(|_| unreachable!("9 < 64"));
    GtpuRepr::g_pdu(Teid(0x1234_5678), Some(PduSessionInfo::uplink(qfi)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_inputs_round_trip() {
        let payload = ipv4_packet(1400);
        let bytes = wire::gtpu::to_vec(&uplink_header(), &payload).expect("encode");
        let (repr, inner) = wire::gtpu::decapsulate(&bytes).expect("decode");
        assert_eq!(repr, uplink_header());
        assert_eq!(inner, payload.as_slice());
    }
}

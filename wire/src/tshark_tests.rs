//! Cross-check with Wireshark: emitted GTP-U and PFCP packets must decode cleanly in
//! `tshark`. If tshark is not installed, the test prints why and passes.

#![allow(clippy::unwrap_used)]

use crate::{gtpu, pfcp};
use std::process::Command;

/// Wraps a UDP payload in Ethernet / IPv4 / UDP (checksum 0) for a pcap record.
fn frame(port: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
    let ip_len = (20 + 8 + payload.len()) as u16;
    let mut ip = [
        0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
    ];
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    let sum = ip
        .chunks(2)
        .fold(0u32, |s, w| s + u32::from(u16::from_be_bytes([w[0], w[1]])));
    let sum = (sum & 0xffff) + (sum >> 16);
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    f.extend(ip);
    f.extend(port.to_be_bytes());
    f.extend(port.to_be_bytes());
    f.extend((8 + payload.len() as u16).to_be_bytes());
    f.extend([0, 0]);
    f.extend_from_slice(payload);
    f
}

/// A classic pcap file (microsecond timestamps, Ethernet link type).
fn pcap(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for w in [0xa1b2_c3d4u32, 0x0004_0002, 0, 0, 65535, 1] {
        out.extend(w.to_le_bytes());
    }
    // The version is two u16 fields (2, 4): fix up the bytes written as one u32 above.
    out[4..8].copy_from_slice(&[2, 0, 4, 0]);
    for (i, f) in frames.iter().enumerate() {
        let len = f.len() as u32;
        for w in [1_700_000_000, i as u32, len, len] {
            out.extend(w.to_le_bytes());
        }
        out.extend_from_slice(f);
    }
    out
}

#[test]
fn tshark_decodes_emitted_packets() {
    // Skipped (with a printed reason) only where Wireshark is not installed.
    if Command::new("tshark").arg("--version").output().is_err() {
        println!("skipping: tshark not found in PATH");
        return;
    }
    let qfi9 = gtpu::Qfi::new(9).unwrap();
    let dl = gtpu::PduSessionInfo {
        rqi: true,
        ppi: Some(5),
        ..gtpu::PduSessionInfo::downlink(gtpu::Qfi::new(5).unwrap())
    };
    let inner = &gtpu::tests::INNER_IP;
    let gtp = [
        (
            gtpu::GtpuRepr::g_pdu(
                gtpu::Teid(0x1234_5678),
                Some(gtpu::PduSessionInfo::uplink(qfi9)),
            ),
            &inner[..],
        ),
        (
            gtpu::GtpuRepr::g_pdu(gtpu::Teid(0x0000_0002), Some(dl)),
            &inner[..],
        ),
        (gtpu::GtpuRepr::echo_request(7), &[][..]),
        (gtpu::GtpuRepr::echo_response(7), &gtpu::RECOVERY_IE[..]),
        (gtpu::GtpuRepr::end_marker(gtpu::Teid(0x0000_0002)), &[][..]),
    ];
    let mut frames: Vec<_> = gtp
        .iter()
        .map(|(repr, payload)| frame(gtpu::PORT, &gtpu::to_vec(repr, payload).unwrap()))
        .collect();
    frames.extend(
        pfcp::tests::messages()
            .iter()
            .map(|m| frame(pfcp::PORT, &m.to_vec().unwrap())),
    );

    let dir = std::env::temp_dir().join(format!("wire-tshark-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("emitted.pcap");
    std::fs::write(&file, pcap(&frames)).unwrap();
    let out = Command::new("tshark")
        .arg("-r")
        .arg(&file)
        .args([
            "-d",
            "udp.port==2152,gtp",
            "-o",
            "ip.check_checksum:TRUE",
            "-V",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    std::fs::remove_dir_all(&dir).unwrap();
    println!("{text}");
    assert!(
        out.status.success(),
        "tshark failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for bad in ["Malformed", "Expert Info (Error", "Expert Info (Warning"] {
        assert!(!text.contains(bad), "tshark reported {bad:?}");
    }
    let count = |s: &str| text.matches(s).count();
    assert_eq!(count("\nGPRS Tunneling Protocol\n"), gtp.len());
    assert_eq!(count("\nPacket Forwarding Control Protocol\n"), 10);
    // Outer IPv4 of every frame plus the two inner packets.
    assert_eq!(count("[Header checksum status: Good]"), frames.len() + 2);
    for want in [
        "TEID: 0x12345678 (305419896)",
        "PDU Type: UL PDU SESSION INFORMATION (1)",
        "..00 1001 = QoS Flow Identifier (QFI): 9",
        "PDU Type: DL PDU SESSION INFORMATION (0)",
        ".1.. .... = Reflective QoS Indicator (RQI): Present",
        "101. .... = Paging Policy Indicator (PPI): 5",
        "Internet Protocol Version 4, Src: 10.45.0.2, Dst: 10.0.0.9",
        "Message Type: Echo request (0x01)",
        "Message Type: Echo response (0x02)",
        "Recovery: 0",
        "Message Type: End Marker (0xfe)",
        "Message Type: PFCP Heartbeat Request (1)",
        "Message Type: PFCP Heartbeat Response (2)",
        "Message Type: PFCP Association Setup Request (5)",
        "Message Type: PFCP Association Setup Response (6)",
        "Message Type: PFCP Session Establishment Request (50)",
        "Message Type: PFCP Session Establishment Response (51)",
        "Message Type: PFCP Session Modification Request (52)",
        "Message Type: PFCP Session Modification Response (53)",
        "Message Type: PFCP Session Deletion Request (54)",
        "Message Type: PFCP Session Deletion Response (55)",
        "Node ID : IPv4 address: 10.0.0.3",
        "F-SEID : SEID: 0x0000000000000001, IPv4 10.0.0.3",
        "F-TEID : TEID: 0x00000001, IPv4 10.0.0.2",
        "Network Instance : internet",
        "Source Interface: Access (0)",
        "Outer Header Removal Description: GTP-U/UDP/IPv4 (0)",
        ".... .1.. = S/D: Destination IP address",
        "IPv4 address: 10.45.0.2",
        ".... ..1. = FORW (Forward): True",
        "Interface: Core (1)",
        "Outer Header Creation Description: GTP-U/UDP/IPv4  (256)",
        "TEID: 0x00000009",
        "IPv4 Address: 10.0.1.1",
        "Remove PDR : [Grouped IE]: PDR ID: 7",
        "SNDEM (Send End Marker Packets): True",
        "Cause: Request accepted(success) (1)",
    ] {
        assert!(text.contains(want), "tshark output lacks {want:?}");
    }
}

//! Packet builders shared by the emu-5gc integration tests.
#![allow(dead_code)]

use std::net::Ipv4Addr;
use wire::gtpu::Teid;
use wire::pfcp::{
    ApplyAction, CreatePdr, FSeid, FTeid, Far, FarId, ForwardingParameters, Interface, Message,
    NodeId, OuterHeaderCreation, OuterHeaderRemoval, Pdi, PdrId, SessionEstablishmentRequest,
    UeIpAddress,
};

const LOCALHOST: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// The UE of the tests' sessions.
pub const UE: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);

/// An IPv4 ICMP echo request from `src` to `dst` with correct checksums.
pub fn icmp_echo(src: Ipv4Addr, dst: Ipv4Addr, seq: u16) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34];
    icmp.extend(seq.to_be_bytes());
    icmp.extend(b"emu-5gc test payload");
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let total = (20 + icmp.len()) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 1, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend(src.octets());
    ip.extend(dst.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip.extend(icmp);
    ip
}

/// The Internet checksum.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The Session Establishment Request of the ARCHITECTURE.md contract on 127.0.0.1: uplink PDR 1
/// (TEID 0x100) → FAR 1 (core), downlink PDR 2 (TEID 0x200, UE 192.168.1.2) → FAR 2 (gNB TEID `gnb_teid`).
pub fn establishment(seq: u32, gnb_teid: u32) -> Message {
    let pdr = |id, source, teid, far| CreatePdr {
        pdr_id: PdrId(id),
        precedence: 100,
        pdi: Pdi {
            source_interface: source,
            f_teid: Some(FTeid {
                teid: Teid(teid),
                ipv4: LOCALHOST,
            }),
            network_instance: None,
            ue_ip_address: (source == Interface::CORE).then_some(UeIpAddress {
                ipv4: UE,
                destination: true,
            }),
        },
        outer_header_removal: Some(OuterHeaderRemoval::GTPU_UDP_IPV4),
        far_id: Some(FarId(far)),
    };
    let far = |id, dest, ohc: Option<OuterHeaderCreation>| Far {
        far_id: FarId(id),
        apply_action: Some(ApplyAction::FORW),
        forwarding_parameters: Some(ForwardingParameters {
            destination_interface: Some(dest),
            network_instance: None,
            outer_header_creation: ohc,
            send_end_marker: false,
        }),
    };
    Message::SessionEstablishmentRequest(SessionEstablishmentRequest {
        seid: 0,
        seq,
        node_id: NodeId::Ipv4(LOCALHOST),
        cp_f_seid: FSeid {
            seid: 0x77,
            ipv4: LOCALHOST,
        },
        create_pdrs: vec![
            pdr(1, Interface::ACCESS, 0x100, 1),
            pdr(2, Interface::CORE, 0x200, 2),
        ],
        create_fars: vec![
            far(1, Interface::CORE, None),
            far(
                2,
                Interface::ACCESS,
                Some(OuterHeaderCreation {
                    teid: Teid(gnb_teid),
                    ipv4: LOCALHOST,
                }),
            ),
        ],
    })
}

//! Criterion benchmarks of the testbed's per-packet and control paths (`cargo bench -p benches`).
//! Shared inputs live here so benches and tests build the same packets, messages and flow sets.

use std::net::Ipv4Addr;

use emu_5gc::iap::cache::{ipv4_destination, LocationCache, Route};
use emu_5gc::smf::session::{establishment_request, switch_downlink_request, UpfTunnels};
use emu_5gc::upf::port::encapsulate_downlink;
use emu_5gc::upf::session::Flow;
use emu_5gc::upf::{GtpuAction, UpfState};
use model::ran::lr::UeLocation;
use model::ran::TunnelEndpoint;
use smo::routing::rules::{
    cleanup_source, new_path_target, relocation_cookie, trombone_source, trombone_target,
    EdgePorts, ServiceAt,
};
use smo::routing::{FlowSet, Mac};
use wire::gtpu::{GtpuRepr, PduSessionInfo, Qfi, Teid};
use wire::openflow::{self, BundleCtrl, FlowMod, OFPBF_ATOMIC, OFPBF_ORDERED};
use wire::pfcp::{Heartbeat, Message};

/// The UE's address (the SMF's pool 192.168.1.0/24).
pub const UE: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);
/// The central DN server.
pub const DN: Ipv4Addr = Ipv4Addr::new(10, 60, 0, 100);
/// The SMF's N4 address.
pub const SMF_N4: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 10);
/// Site A's UPF: N4, N3 and N9 addresses.
pub const UPF_N4: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 21);
pub const UPF_N3: Ipv4Addr = Ipv4Addr::new(10, 30, 0, 101);
pub const UPF_N9: Ipv4Addr = Ipv4Addr::new(10, 90, 0, 1);
/// The TEIDs of the UE's session: uplink and downlink at the UPF, downlink at gNB A and gNB B.
pub const UL_TEID: u32 = 1;
pub const DL_TEID: u32 = 2;
pub const GNB_A_TEID: u32 = 0x100;
pub const GNB_B_TEID: u32 = 0x200;
/// The QFI of the UE's flow.
pub const QFI: u8 = 9;
/// The SMF's SEID of the session, and the one the UPF gives it (its first).
pub const CP_SEID: u64 = 1;
pub const UP_SEID: u64 = 1;

fn qfi() -> Qfi {
    Qfi::new(QFI).unwrap_or_else(|_| unreachable!("9 < 64"))
}

/// A minimal IPv4 packet of `len` octets (header + zero payload), as a UE would send.
pub fn ipv4_packet(len: usize) -> Vec<u8> {
    ipv4(len, UE, Ipv4Addr::new(20, 0, 0, 10))
}

/// A minimal IPv4 packet of `len` octets from the central DN to the UE.
pub fn downlink_ipv4_packet(len: usize) -> Vec<u8> {
    ipv4(len, DN, UE)
}

fn ipv4(len: usize, src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let len = len.max(20);
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    p
}

/// The uplink G-PDU header a gNB puts in front of a UE packet (QFI 9).
pub fn uplink_header() -> GtpuRepr {
    GtpuRepr::g_pdu(Teid(0x1234_5678), Some(PduSessionInfo::uplink(qfi())))
}

// ---- PFCP (N4) ----

/// The UPF's tunnel ends of the UE's session.
pub fn upf_tunnels() -> UpfTunnels {
    UpfTunnels {
        uplink: TunnelEndpoint {
            ipv4: UPF_N3,
            teid: UL_TEID,
        },
        downlink: TunnelEndpoint {
            ipv4: UPF_N9,
            teid: DL_TEID,
        },
    }
}

/// Gnb A's downlink tunnel (the session's FAR 2 at establishment).
pub fn gnb_a_tunnel() -> TunnelEndpoint {
    TunnelEndpoint {
        ipv4: Ipv4Addr::new(10, 30, 0, 1),
        teid: GNB_A_TEID,
    }
}

/// Gnb B's downlink tunnel (FAR 2 after the path switch).
pub fn gnb_b_tunnel() -> TunnelEndpoint {
    TunnelEndpoint {
        ipv4: Ipv4Addr::new(10, 30, 0, 2),
        teid: GNB_B_TEID,
    }
}

/// The PFCP messages the SMF sends a UPF, built by the SMF's own code: the session establishment
/// (PDR 1 + FAR 1 uplink, PDR 2 + FAR 2 downlink to gNB A), the path switch's modification (Update
/// FAR 2 to gNB B with SNDEM) and a heartbeat.
pub fn pfcp_messages() -> [(&'static str, Message); 3] {
    [
        (
            "session establishment request",
            establishment_request(SMF_N4, CP_SEID, UE, &upf_tunnels(), gnb_a_tunnel()),
        ),
        (
            "session modification request (sndem)",
            switch_downlink_request(UP_SEID, gnb_b_tunnel()),
        ),
        (
            "heartbeat request",
            Message::HeartbeatRequest(Heartbeat {
                seq: 42,
                recovery_time_stamp: 0xeb1d_2c80,
            }),
        ),
    ]
}

// ---- UPF and IAP per-packet paths ----

/// Site A's UPF with the UE's session established through its own PFCP handling.
pub fn upf_with_session() -> Result<UpfState, String> {
    let mut upf = UpfState::new("upf-a", UPF_N4, 1);
    let (_, establishment) = &pfcp_messages()[0];
    let bytes = establishment.to_vec().map_err(|e| e.to_string())?;
    let reaction = upf.on_pfcp(&bytes, (SMF_N4, wire::pfcp::PORT).into());
    match reaction.reply {
        Some(Message::SessionEstablishmentResponse(r))
            if r.cause == wire::pfcp::Cause::ACCEPTED =>
        {
            Ok(upf)
        }
        other => Err(format!("establishment not accepted: {other:?}")),
    }
}

/// An uplink G-PDU from gNB A: UL TEID, PDU Session Container UL (QFI 9), a UE packet of `len`.
pub fn uplink_gpdu(len: usize) -> Vec<u8> {
    let repr = GtpuRepr::g_pdu(Teid(UL_TEID), Some(PduSessionInfo::uplink(qfi())));
    wire::gtpu::to_vec(&repr, &ipv4_packet(len)).unwrap_or_default()
}

/// A downlink G-PDU from an IAP over N9: DL TEID, PDU Session Container DL (QFI 9), a packet of
/// `len` from the DN to the UE.
pub fn downlink_gpdu(len: usize) -> Vec<u8> {
    let repr = GtpuRepr::g_pdu(Teid(DL_TEID), Some(PduSessionInfo::downlink(qfi())));
    wire::gtpu::to_vec(&repr, &downlink_ipv4_packet(len)).unwrap_or_default()
}

/// The UPF's per-packet work on one G-PDU, without the sockets: what `Upf::on_gtpu` does around
/// its send (decapsulate, PDR by TEID, FAR; for the downlink FAR re-encapsulate towards the gNB
/// into `out`), then count it as sent. Returns the octets the UPF would send: the inner packet
/// written to N6, or the G-PDU to the gNB (`out[..n]`); 0 if nothing.
pub fn upf_packet(upf: &mut UpfState, datagram: &[u8], out: &mut [u8]) -> usize {
    match upf.on_gtpu(datagram) {
        GtpuAction::ToN6 { seid, packet } => {
            let n = packet.len();
            upf.sent(seid, Flow::Uplink, n, true);
            n
        }
        GtpuAction::ToTunnel {
            seid,
            tunnel,
            qfi,
            packet,
        } => {
            let inner = packet.len();
            let n = encapsulate_downlink(packet, tunnel.teid, qfi, out).unwrap_or(0);
            upf.sent(seid, Flow::Downlink, inner, n > 0);
            n
        }
        GtpuAction::EchoResponse(_) | GtpuAction::Nothing => 0,
    }
}

/// Site A's IAP with the UE's location learnt (the serving UPF's downlink F-TEID on N9).
pub fn iap_with_location() -> LocationCache {
    let mut cache = LocationCache::new();
    cache.learn(UeLocation {
        ue_ipv4: UE,
        site: "a".into(),
        dnai: "edge-x".into(),
        upf_tunnel: upf_tunnels().downlink,
        version: 1,
    });
    cache
}

/// The IAP's per-packet work on a downlink IP packet, without the sockets: the UE by destination
/// address, its serving UPF's tunnel from the location cache, encapsulation with that TEID and the
/// QFI into `out`, counted as sent. Returns the G-PDU's length (0 if not forwarded).
pub fn iap_packet(cache: &mut LocationCache, packet: &[u8], out: &mut [u8]) -> usize {
    let Some(ue) = ipv4_destination(packet) else {
        cache.non_ipv4();
        return 0;
    };
    match cache.route(ue, packet, tokio::time::Instant::now()) {
        Route::Forward(tunnel) => {
            let n = encapsulate_downlink(packet, tunnel.teid, qfi(), out).unwrap_or(0);
            cache.sent(ue, packet.len(), n > 0, false);
            n
        }
        Route::QueuedAskLr | Route::Queued | Route::Dropped => 0,
    }
}

// ---- OpenFlow rules ----

/// The migrated service as the flow sets see it.
pub const SVC_IP: Ipv4Addr = Ipv4Addr::new(20, 0, 0, 10);
pub const SVC_MAC: Mac = Mac([0x02, 0x20, 0, 0, 0, 0x0a]);

/// The service at its edge's switch, on port `srv`.
pub fn service_at() -> ServiceAt {
    ServiceAt {
        ip: SVC_IP,
        mac: SVC_MAC,
        port: "srv".into(),
    }
}

/// The port numbers of the bench switch: `bh` 1, `n6` 2, `srv` 3.
pub fn port_no(name: &str) -> Option<u32> {
    match name {
        "bh" => Some(1),
        "n6" => Some(2),
        "srv" => Some(3),
        _ => None,
    }
}

/// The flow sets of one relocation, in the order the SMOs install them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RulePhase {
    /// PREPARE at the source.
    TromboneSource,
    /// PREPARE at the target.
    TromboneTarget,
    /// EXECUTE at the target.
    NewPathTarget,
    /// COMPLETE at the source.
    CleanupSource,
}

impl RulePhase {
    /// Every phase.
    pub const ALL: [RulePhase; 4] = [
        RulePhase::TromboneSource,
        RulePhase::TromboneTarget,
        RulePhase::NewPathTarget,
        RulePhase::CleanupSource,
    ];

    /// The set's label.
    pub fn label(self) -> &'static str {
        match self {
            RulePhase::TromboneSource => "trombone-source",
            RulePhase::TromboneTarget => "trombone-target",
            RulePhase::NewPathTarget => "new-path-target",
            RulePhase::CleanupSource => "cleanup-source",
        }
    }

    /// Generates the phase's flow set for relocation `n` of the UE and [`service_at`] (pure).
    pub fn flow_set(self, n: u32, ports: &EdgePorts) -> FlowSet {
        let cookie = relocation_cookie(n);
        match self {
            RulePhase::TromboneSource => trombone_source(cookie, ports, &service_at(), UE),
            RulePhase::TromboneTarget => trombone_target(cookie, ports, SVC_IP, SVC_MAC, UE),
            RulePhase::NewPathTarget => new_path_target(cookie, ports, &service_at()),
            RulePhase::CleanupSource => cleanup_source(cookie, SVC_IP),
        }
    }
}

/// What the SMO's `OvsProgrammer` writes for `set` (ports by [`port_no`]): bundle OPEN, one
/// bundle ADD per deletion and addition, BARRIER, COMMIT, then a PACKET_OUT per packet and a
/// BARRIER. Returns the number of octets written into `out` (cleared first).
pub fn encode_flow_set(set: &FlowSet, out: &mut Vec<u8>) -> usize {
    const FLAGS: u16 = OFPBF_ATOMIC | OFPBF_ORDERED;
    out.clear();
    let mut xid = 0;
    let mut next = || {
        xid += 1;
        xid
    };
    if !set.delete.is_empty() || !set.add.is_empty() {
        openflow::bundle_control(out, next(), 1, BundleCtrl::OpenRequest, FLAGS);
        for d in &set.delete {
            openflow::bundle_add_flow_mod(out, next(), 1, FLAGS, &FlowMod::delete_cookie(d.cookie));
        }
        for r in &set.add {
            if let Ok(fm) = r.to_flow_mod(port_no) {
                openflow::bundle_add_flow_mod(out, next(), 1, FLAGS, &fm);
            }
        }
        openflow::barrier_request(out, next());
        openflow::bundle_control(out, next(), 1, BundleCtrl::CommitRequest, FLAGS);
    }
    if !set.packets.is_empty() {
        for p in &set.packets {
            let port = port_no(&p.port).unwrap_or(openflow::OFPP_NORMAL);
            openflow::packet_out(
                out,
                next(),
                openflow::OFPP_CONTROLLER,
                &[openflow::Action::Output(port)],
                &p.data,
            );
        }
        openflow::barrier_request(out, next());
    }
    out.len()
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

    #[test]
    fn pfcp_messages_round_trip() {
        let kinds: Vec<u8> = pfcp_messages()
            .iter()
            .map(|(what, m)| {
                let bytes = m.to_vec().expect(what);
                assert_eq!(&Message::parse(&bytes).expect(what), m, "{what}");
                m.header().msg_type
            })
            .collect();
        assert_eq!(kinds, [50, 52, 1]);
        let Message::SessionEstablishmentRequest(e) = &pfcp_messages()[0].1 else {
            panic!("not an establishment")
        };
        assert_eq!((e.create_pdrs.len(), e.create_fars.len()), (2, 2));
        let Message::SessionModificationRequest(m) = &pfcp_messages()[1].1 else {
            panic!("not a modification")
        };
        let fp = m.update_fars[0].forwarding_parameters.as_ref().expect("fp");
        assert!(fp.send_end_marker);
    }

    #[test]
    fn upf_forwards_uplink_to_n6_and_downlink_to_the_gnb() {
        let mut upf = upf_with_session().expect("session");
        let mut out = vec![0u8; 2048];
        let up = uplink_gpdu(1400);
        assert_eq!(upf_packet(&mut upf, &up, &mut out), 1400);
        let down = downlink_gpdu(1400);
        let n = upf_packet(&mut upf, &down, &mut out);
        let (repr, inner) = wire::gtpu::decapsulate(&out[..n]).expect("g-pdu");
        assert_eq!(repr.teid, Teid(GNB_A_TEID));
        assert_eq!(
            repr.pdu_session,
            Some(PduSessionInfo::downlink(qfi())),
            "dl container with the session's qfi"
        );
        assert_eq!(inner, downlink_ipv4_packet(1400).as_slice());
        let s = upf.table().get(UP_SEID).expect("session");
        assert_eq!((s.counters.ul_packets, s.counters.dl_packets), (1, 1));
        assert_eq!(upf.counters().gtpu_unknown_teid, 0);
    }

    #[test]
    fn iap_encapsulates_towards_the_serving_upf() {
        let mut iap = iap_with_location();
        let mut out = vec![0u8; 2048];
        let packet = downlink_ipv4_packet(1400);
        let n = iap_packet(&mut iap, &packet, &mut out);
        let (repr, inner) = wire::gtpu::decapsulate(&out[..n]).expect("g-pdu");
        assert_eq!(repr.teid, Teid(DL_TEID));
        assert_eq!(inner, packet.as_slice());
        // What the IAP sends is what the UPF's downlink PDR takes.
        assert_eq!(&out[..n], downlink_gpdu(1400).as_slice());
        assert_eq!(iap.ue_counters()[&UE].forwarded_packets, 1);
    }

    #[test]
    fn every_phase_encodes_to_whole_openflow_messages() {
        let ports = EdgePorts::testbed();
        let mut out = Vec::new();
        let mut counts = Vec::new();
        for phase in RulePhase::ALL {
            let set = phase.flow_set(1, &ports);
            assert_eq!(set.label, phase.label());
            let n = encode_flow_set(&set, &mut out);
            let (mut rest, mut frames) = (&out[..n], 0);
            while !rest.is_empty() {
                let len = openflow::frame_len(rest).expect("header").expect("whole");
                rest = &rest[len..];
                frames += 1;
            }
            counts.push(frames);
        }
        // open + mods + barrier + commit (+ packet-outs + barrier).
        assert_eq!(counts, [2 + 3, 3 + 3 + 2, 3 + 3, 2 + 3]);
    }
}

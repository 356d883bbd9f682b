//! The user plane of a served UE: uplink, downlink, echo, unknown TEIDs.

#![allow(clippy::unwrap_used)]

use crate::gnb::context::fixtures::*;
use crate::gnb::context::*;
use wire::gtpu::{self, GtpuRepr, PduSessionInfo, Qfi, Teid};

#[test]
fn uplink_becomes_a_g_pdu_to_the_upf_with_the_qfi() {
    let mut g = core("gnb-a", 1);
    let now = Instant::now();
    let (radio_id, _, _) = attached(&mut g, now);
    let a = g.handle(
        now,
        Event::Uplink {
            from: ue_addr(),
            radio_id,
            packet: vec![0x45, 1, 2, 3],
        },
    );
    let (to, repr, payload) = gtpu_of(&a[0]).unwrap();
    assert_eq!(to, upf_a().ipv4);
    assert_eq!(repr.teid, Teid(upf_a().teid));
    assert_eq!(
        repr.pdu_session,
        Some(PduSessionInfo::uplink(Qfi::new(9).unwrap()))
    );
    assert_eq!(payload, [0x45, 1, 2, 3]);
    // unknown radio id: dropped and counted
    let a = g.handle(
        now,
        Event::Uplink {
            from: ue_addr(),
            radio_id: 999,
            packet: vec![0x45],
        },
    );
    assert!(a.is_empty());
    assert_eq!(g.counters.uplink_dropped, 1);
    assert_eq!(g.counters.packets_up, 1);
}

#[test]
fn uplink_before_the_session_is_dropped() {
    let mut g = core("gnb-a", 1);
    let now = Instant::now();
    g.handle(now, attach_req());
    let radio_id = g.context(SUPI).unwrap().radio_id;
    let a = g.handle(
        now,
        Event::Uplink {
            from: ue_addr(),
            radio_id,
            packet: vec![0x45],
        },
    );
    assert!(a.is_empty());
    assert_eq!(g.counters.uplink_dropped, 1);
}

#[test]
fn downlink_reaches_the_ue_and_echo_is_answered() {
    let mut g = core("gnb-a", 1);
    let now = Instant::now();
    let (radio_id, dl_teid, _) = attached(&mut g, now);
    let a = g.handle(now, dl(dl_teid, &[0x45, 9]));
    assert_eq!(data_of(&a[0]).unwrap(), (radio_id, vec![0x45, 9]));
    // unknown TEID: counted
    assert!(g.handle(now, dl(0xdead, &[0x45])).is_empty());
    assert_eq!(g.counters.unknown_teid, 1);
    // echo
    let from: SocketAddr = "10.30.0.102:2152".parse().unwrap();
    let a = g.handle(
        now,
        Event::Gtpu {
            from,
            repr: GtpuRepr::echo_request(7),
            payload: vec![],
        },
    );
    let Action::ReplyGtpu { to, message } = &a[0] else {
        panic!("{a:?}")
    };
    assert_eq!(*to, from);
    let (r, p) = gtpu::decapsulate(message).unwrap();
    assert_eq!(r, GtpuRepr::echo_response(7));
    assert_eq!(p, gtpu::RECOVERY_IE);
    // an End Marker on a tunnel that is not being forwarded changes nothing
    assert!(g.handle(now, end_marker(dl_teid)).is_empty());
    assert_eq!(g.context(SUPI).unwrap().phase, Phase::Connected);
}

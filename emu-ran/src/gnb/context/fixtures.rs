//! Fixtures the role tests share: a gNB core, a UE attached, a handover out to gNB-B's
//! forwarding tunnel, one prepared in, and readers of the actions.

#![allow(clippy::unwrap_used)]

use super::*;
use crate::radio;
use model::ran::radio::Rrc;
use wire::gtpu::{self, GtpuRepr, PduSessionInfo, Qfi, Teid};

pub(super) const SUPI: &str = "imsi-001010000000001";

pub(super) fn ue_addr() -> SocketAddr {
    "10.10.0.101:40000".parse().unwrap()
}

pub(super) fn upf_a() -> TunnelEndpoint {
    TunnelEndpoint {
        ipv4: Ipv4Addr::new(10, 30, 0, 102),
        teid: 0x1001,
    }
}

pub(super) fn upf_b() -> TunnelEndpoint {
    TunnelEndpoint {
        ipv4: Ipv4Addr::new(10, 30, 0, 103),
        teid: 0x2001,
    }
}

pub(super) fn ue_ip() -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 1, 2)
}

pub(super) fn core(name: &str, i: u8) -> GnbCore {
    let mut peers = HashMap::new();
    for (n, j) in [("gnb-a", 1), ("gnb-b", 2)] {
        if n != name {
            peers.insert(n.to_owned(), format!("http://10.40.0.{j}:38422"));
        }
    }
    GnbCore::new(CoreConfig {
        name: name.into(),
        radio: SocketAddrV4::new(Ipv4Addr::new(10, 10, 0, i), 4997),
        n3_addr: Ipv4Addr::new(10, 30, 0, i),
        xn_addr: Ipv4Addr::new(10, 40, 0, i),
        qfi: 9,
        peers,
    })
}

pub(super) fn rrc_of(a: &Action) -> Option<(SocketAddr, Rrc)> {
    match a {
        Action::SendRadio { to, frame } => match radio::parse(frame).unwrap() {
            radio::Frame::Control(r) => Some((*to, r)),
            radio::Frame::Data { .. } => None,
        },
        _ => None,
    }
}

pub(super) fn data_of(a: &Action) -> Option<(u16, Vec<u8>)> {
    match a {
        Action::SendRadio { frame, .. } => match radio::parse(frame).unwrap() {
            radio::Frame::Data { radio_id, packet } => Some((radio_id, packet.to_vec())),
            radio::Frame::Control(_) => None,
        },
        _ => None,
    }
}

pub(super) fn gtpu_of(a: &Action) -> Option<(Ipv4Addr, GtpuRepr, Vec<u8>)> {
    match a {
        Action::SendGtpu { to, message } => {
            let (r, p) = gtpu::decapsulate(message).unwrap();
            Some((*to, r, p.to_vec()))
        }
        _ => None,
    }
}

pub(super) fn attach_req() -> Event {
    Event::Rrc {
        from: ue_addr(),
        rrc: Rrc::AttachRequest {
            supi: SUPI.into(),
            ue_name: "ue1".into(),
        },
    }
}

pub(super) fn dl(teid: u32, payload: &[u8]) -> Event {
    Event::Gtpu {
        from: "10.30.0.102:2152".parse().unwrap(),
        repr: GtpuRepr::g_pdu(
            Teid(teid),
            Some(PduSessionInfo::downlink(Qfi::new(9).unwrap())),
        ),
        payload: payload.to_vec(),
    }
}

pub(super) fn end_marker(teid: u32) -> Event {
    Event::Gtpu {
        from: "10.30.0.102:2152".parse().unwrap(),
        repr: GtpuRepr::end_marker(Teid(teid)),
        payload: Vec::new(),
    }
}

/// A gNB with the UE attached; returns the context's (radio id, dl teid, epoch).
pub(super) fn attached(g: &mut GnbCore, now: Instant) -> (u16, u32, u64) {
    let a = g.handle(now, attach_req());
    let Action::SetupPduSession { epoch, .. } = &a[0] else {
        panic!("{a:?}")
    };
    g.handle(
        now,
        Event::SessionSetup {
            supi: SUPI.into(),
            epoch: *epoch,
            result: Ok(PduSessionSetupResponse {
                ue_ipv4: ue_ip(),
                pdu_session_id: 1,
                qfi: 9,
                upf_tunnel: upf_a(),
            }),
        },
    );
    let c = g.context(SUPI).unwrap();
    (c.radio_id, c.dl_teid, c.epoch)
}

pub(super) fn trigger(g: &mut GnbCore, now: Instant, ue: &str, target: &str) -> Vec<Action> {
    g.handle(
        now,
        Event::Trigger {
            id: 1,
            trigger: HandoverTrigger {
                ue: ue.into(),
                target_gnb: target.into(),
            },
        },
    )
}

pub(super) fn trigger_failure(a: &[Action]) -> u16 {
    match &a[0] {
        Action::AnswerTrigger { result: Err(f), .. } => f.status,
        other => panic!("{other:?}"),
    }
}

/// gNB-A with the UE in `Forwarding` to gNB-B's tunnel; returns the tunnel.
pub(super) fn forwarding(g: &mut GnbCore, now: Instant) -> TunnelEndpoint {
    attached(g, now);
    let a = trigger(g, now, "ue1", "gnb-b");
    let Action::RequestHandover {
        xn_url,
        request,
        epoch,
        ..
    } = &a[0]
    else {
        panic!("{a:?}")
    };
    assert_eq!(xn_url, "http://10.40.0.2:38422");
    assert_eq!(request.source_gnb, "gnb-a");
    assert_eq!(request.upf_tunnel, upf_a());
    assert_eq!(request.ue_ipv4, ue_ip());
    assert_eq!(request.ue_name.as_deref(), Some("ue1"));
    assert!(matches!(
        a[1],
        Action::StartTimer {
            timer: Timer::HandoverGuard,
            ..
        }
    ));
    assert!(matches!(
        g.context(SUPI).unwrap().phase,
        Phase::Preparing(_)
    ));
    let tunnel = TunnelEndpoint {
        ipv4: Ipv4Addr::new(10, 40, 0, 2),
        teid: 0x777,
    };
    let a = g.handle(
        now + Duration::from_millis(2),
        Event::HandoverPrepared {
            supi: SUPI.into(),
            epoch: *epoch,
            result: Ok(HandoverRequestAck {
                radio_id: 42,
                radio: "10.10.0.2:4997".parse().unwrap(),
                forwarding_tunnel: tunnel,
            }),
        },
    );
    let (to, rrc) = rrc_of(&a[0]).unwrap();
    assert_eq!(to, ue_addr());
    assert_eq!(
        rrc,
        Rrc::HandoverCommand {
            target_gnb: "gnb-b".into(),
            target: "10.10.0.2:4997".parse().unwrap(),
            radio_id: 42
        }
    );
    assert!(matches!(
        g.context(SUPI).unwrap().phase,
        Phase::Forwarding(_)
    ));
    tunnel
}

pub(super) fn release(g: &mut GnbCore, now: Instant, id: RequestId) -> Vec<Action> {
    g.handle(
        now,
        Event::UeContextRelease {
            id,
            release: UeContextRelease {
                target_gnb: "gnb-b".into(),
                supi: SUPI.into(),
                timeline: vec![],
            },
        },
    )
}

pub(super) fn ho_request() -> HandoverRequest {
    HandoverRequest {
        source_gnb: "gnb-a".into(),
        supi: SUPI.into(),
        ue_ipv4: ue_ip(),
        qfi: 9,
        upf_tunnel: upf_a(),
        ue_name: Some("ue1".into()),
    }
}

/// gNB-B after admitting the HandoverRequest; returns the ack.
pub(super) fn prepared(g: &mut GnbCore, now: Instant) -> HandoverRequestAck {
    let a = g.handle(
        now,
        Event::HandoverRequest {
            id: 3,
            request: ho_request(),
        },
    );
    let Action::AnswerHandoverRequest {
        id: 3,
        result: Ok(ack),
    } = &a[0]
    else {
        panic!("{a:?}")
    };
    assert!(matches!(
        a[1],
        Action::StartTimer {
            timer: Timer::AwaitingUe,
            ..
        }
    ));
    ack.clone()
}

pub(super) fn confirm(g: &mut GnbCore, now: Instant, radio_id: u16) -> Vec<Action> {
    g.handle(
        now,
        Event::Rrc {
            from: ue_addr(),
            rrc: Rrc::HandoverConfirm {
                supi: SUPI.into(),
                radio_id,
            },
        },
    )
}

//! Attach and the radio control a gNB takes from UEs, with a simulated clock.

#![allow(clippy::unwrap_used)]

use crate::gnb::context::fixtures::*;
use crate::gnb::context::*;
use model::ran::radio::Rrc;

#[test]
fn attach_asks_the_smf_then_accepts() {
    let mut g = core("gnb-a", 1);
    let now = Instant::now();
    let a = g.handle(now, attach_req());
    assert_eq!(a.len(), 1);
    let Action::SetupPduSession { request, epoch, .. } = &a[0] else {
        panic!("{a:?}")
    };
    let c = g.context(SUPI).unwrap();
    assert_eq!(c.phase, Phase::Attaching);
    assert_eq!(request.gnb, "gnb-a");
    assert_eq!(
        request.gnb_tunnel,
        TunnelEndpoint {
            ipv4: Ipv4Addr::new(10, 30, 0, 1),
            teid: c.dl_teid
        }
    );
    assert_eq!(g.teid_owner(c.dl_teid).unwrap().1, TeidRole::Downlink);
    let a = g.handle(
        now,
        Event::SessionSetup {
            supi: SUPI.into(),
            epoch: *epoch,
            result: Ok(PduSessionSetupResponse {
                ue_ipv4: ue_ip(),
                pdu_session_id: 1,
                qfi: 5,
                upf_tunnel: upf_a(),
            }),
        },
    );
    let (to, rrc) = rrc_of(&a[0]).unwrap();
    assert_eq!(to, ue_addr());
    let radio_id = g.context(SUPI).unwrap().radio_id;
    assert_eq!(
        rrc,
        Rrc::AttachAccept {
            radio_id,
            ue_ipv4: ue_ip(),
            qfi: 5
        }
    );
    assert_eq!(g.context(SUPI).unwrap().phase, Phase::Connected);
}

#[test]
fn repeated_attach_requests_are_idempotent() {
    let mut g = core("gnb-a", 1);
    let now = Instant::now();
    g.handle(now, attach_req());
    // while the SMF has not answered: no second call
    assert!(g.handle(now, attach_req()).is_empty());
    let epoch = g.context(SUPI).unwrap().epoch;
    g.handle(
        now,
        Event::SessionSetup {
            supi: SUPI.into(),
            epoch,
            result: Ok(PduSessionSetupResponse {
                ue_ipv4: ue_ip(),
                pdu_session_id: 1,
                qfi: 9,
                upf_tunnel: upf_a(),
            }),
        },
    );
    // once connected: the same accept again, to the newest address
    let other: SocketAddr = "10.10.0.101:40001".parse().unwrap();
    let a = g.handle(
        now,
        Event::Rrc {
            from: other,
            rrc: Rrc::AttachRequest {
                supi: SUPI.into(),
                ue_name: "ue1".into(),
            },
        },
    );
    let (to, rrc) = rrc_of(&a[0]).unwrap();
    assert_eq!(to, other);
    assert!(matches!(rrc, Rrc::AttachAccept { ue_ipv4, .. } if ue_ipv4 == ue_ip()));
    assert_eq!(g.contexts().count(), 1);
}

#[test]
fn a_failed_session_setup_rejects_the_attach() {
    let mut g = core("gnb-a", 1);
    let now = Instant::now();
    g.handle(now, attach_req());
    let epoch = g.context(SUPI).unwrap().epoch;
    let a = g.handle(
        now,
        Event::SessionSetup {
            supi: SUPI.into(),
            epoch,
            result: Err("no upf".into()),
        },
    );
    assert_eq!(
        rrc_of(&a[0]).unwrap().1,
        Rrc::AttachReject {
            cause: "no upf".into()
        }
    );
    assert!(g.context(SUPI).is_none());
}

#[test]
fn late_session_answers_are_ignored() {
    let mut g = core("gnb-a", 1);
    let now = Instant::now();
    let (_, _, epoch) = attached(&mut g, now);
    let a = g.handle(
        now,
        Event::SessionSetup {
            supi: SUPI.into(),
            epoch,
            result: Err("late".into()),
        },
    );
    assert!(a.is_empty());
    let a = g.handle(
        now,
        Event::SessionSetup {
            supi: "imsi-unknown".into(),
            epoch: 99,
            result: Err("x".into()),
        },
    );
    assert!(a.is_empty());
    assert_eq!(g.context(SUPI).unwrap().phase, Phase::Connected);
}

#[test]
fn unexpected_rrc_is_counted() {
    let mut g = core("gnb-a", 1);
    let now = Instant::now();
    let a = g.handle(
        now,
        Event::Rrc {
            from: ue_addr(),
            rrc: Rrc::AttachReject { cause: "x".into() },
        },
    );
    assert!(a.is_empty());
    let a = g.handle(
        now,
        Event::Rrc {
            from: ue_addr(),
            rrc: Rrc::HandoverConfirm {
                supi: SUPI.into(),
                radio_id: 1,
            },
        },
    );
    assert!(a.is_empty());
    assert_eq!(g.counters.unexpected_rrc, 2);
}

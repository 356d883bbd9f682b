//! Every transition of the gNB's UE context state machine, with a simulated clock.

#![allow(clippy::unwrap_used)]

use super::*;
use model::ran::radio::Rrc;

const SUPI: &str = "imsi-001010000000001";

fn ue_addr() -> SocketAddr {
    "10.10.0.101:40000".parse().unwrap()
}

fn upf_a() -> TunnelEndpoint {
    TunnelEndpoint {
        ipv4: Ipv4Addr::new(10, 30, 0, 102),
        teid: 0x1001,
    }
}

fn upf_b() -> TunnelEndpoint {
    TunnelEndpoint {
        ipv4: Ipv4Addr::new(10, 30, 0, 103),
        teid: 0x2001,
    }
}

fn ue_ip() -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 1, 2)
}

fn core(name: &str, i: u8) -> GnbCore {
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

fn rrc_of(a: &Action) -> Option<(SocketAddr, Rrc)> {
    match a {
        Action::SendRadio { to, frame } => match radio::parse(frame).unwrap() {
            radio::Frame::Control(r) => Some((*to, r)),
            radio::Frame::Data { .. } => None,
        },
        _ => None,
    }
}

fn data_of(a: &Action) -> Option<(u16, Vec<u8>)> {
    match a {
        Action::SendRadio { frame, .. } => match radio::parse(frame).unwrap() {
            radio::Frame::Data { radio_id, packet } => Some((radio_id, packet.to_vec())),
            radio::Frame::Control(_) => None,
        },
        _ => None,
    }
}

fn gtpu_of(a: &Action) -> Option<(Ipv4Addr, GtpuRepr, Vec<u8>)> {
    match a {
        Action::SendGtpu { to, message } => {
            let (r, p) = gtpu::decapsulate(message).unwrap();
            Some((*to, r, p.to_vec()))
        }
        _ => None,
    }
}

fn attach_req() -> Event {
    Event::Rrc {
        from: ue_addr(),
        rrc: Rrc::AttachRequest {
            supi: SUPI.into(),
            ue_name: "ue1".into(),
        },
    }
}

fn dl(teid: u32, payload: &[u8]) -> Event {
    Event::Gtpu {
        from: "10.30.0.102:2152".parse().unwrap(),
        repr: GtpuRepr::g_pdu(
            Teid(teid),
            Some(PduSessionInfo::downlink(Qfi::new(9).unwrap())),
        ),
        payload: payload.to_vec(),
    }
}

fn end_marker(teid: u32) -> Event {
    Event::Gtpu {
        from: "10.30.0.102:2152".parse().unwrap(),
        repr: GtpuRepr::end_marker(Teid(teid)),
        payload: Vec::new(),
    }
}

/// A gNB with the UE attached; returns the context's (radio id, dl teid, epoch).
fn attached(g: &mut GnbCore, now: Instant) -> (u16, u32, u64) {
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

fn trigger(g: &mut GnbCore, now: Instant, ue: &str, target: &str) -> Vec<Action> {
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

fn trigger_failure(a: &[Action]) -> u16 {
    match &a[0] {
        Action::AnswerTrigger { result: Err(f), .. } => f.status,
        other => panic!("{other:?}"),
    }
}

#[test]
fn triggers_that_cannot_run_fail_with_a_status() {
    let mut g = core("gnb-a", 1);
    let now = Instant::now();
    assert_eq!(trigger_failure(&trigger(&mut g, now, "ue1", "gnb-b")), 404);
    g.handle(now, attach_req());
    // attaching: not ready
    assert_eq!(trigger_failure(&trigger(&mut g, now, "ue1", "gnb-b")), 409);
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
    assert_eq!(trigger_failure(&trigger(&mut g, now, "ue1", "gnb-z")), 400);
    assert_eq!(trigger_failure(&trigger(&mut g, now, "ue1", "gnb-a")), 400);
    assert_eq!(trigger_failure(&trigger(&mut g, now, "ue9", "gnb-b")), 404);
}

/// gNB-A with the UE in `Forwarding` to gNB-B's tunnel; returns the tunnel.
fn forwarding(g: &mut GnbCore, now: Instant) -> TunnelEndpoint {
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

#[test]
fn a_refused_preparation_fails_the_trigger_and_keeps_the_ue() {
    let mut g = core("gnb-a", 1);
    let now = Instant::now();
    let (_, _, epoch) = attached(&mut g, now);
    trigger(&mut g, now, SUPI, "gnb-b");
    // a second trigger while preparing
    assert_eq!(trigger_failure(&trigger(&mut g, now, "ue1", "gnb-b")), 409);
    let a = g.handle(
        now,
        Event::HandoverPrepared {
            supi: SUPI.into(),
            epoch,
            result: Err("503 full".into()),
        },
    );
    assert_eq!(trigger_failure(&a), 502);
    assert_eq!(g.context(SUPI).unwrap().phase, Phase::Connected);
    // a late ack after that changes nothing
    let a = g.handle(
        now,
        Event::HandoverPrepared {
            supi: SUPI.into(),
            epoch,
            result: Err("again".into()),
        },
    );
    assert!(a.is_empty());
}

#[test]
fn the_source_forwards_downlink_and_the_end_marker_then_reports() {
    let mut g = core("gnb-a", 1);
    let t0 = Instant::now();
    let tunnel = forwarding(&mut g, t0);
    let dl_teid = g.context(SUPI).unwrap().dl_teid;
    for i in 0..3u8 {
        let a = g.handle(t0, dl(dl_teid, &[0x45, i]));
        let (to, repr, payload) = gtpu_of(&a[0]).unwrap();
        assert_eq!(to, tunnel.ipv4);
        assert_eq!(repr.teid, Teid(tunnel.teid));
        assert_eq!(repr.msg_type, MessageType::GPdu);
        assert_eq!(payload, [0x45, i]);
    }
    let a = g.handle(t0 + Duration::from_millis(5), end_marker(dl_teid));
    let (_, repr, _) = gtpu_of(&a[0]).unwrap();
    assert_eq!(repr, GtpuRepr::end_marker(Teid(tunnel.teid)));
    assert_eq!(g.counters.packets_forwarded, 3);
    // the release answers the trigger with the merged timeline, and the context goes
    let a = g.handle(
        t0 + Duration::from_millis(10),
        Event::UeContextRelease {
            id: 5,
            release: UeContextRelease {
                target_gnb: "gnb-b".into(),
                supi: SUPI.into(),
                timeline: vec![TimelineStep {
                    step: "path switch".into(),
                    at_us: 3000,
                    took_us: 4000,
                    at_unix_us: None,
                }],
            },
        },
    );
    assert_eq!(
        a[0],
        Action::AnswerRelease {
            id: 5,
            result: Ok(())
        }
    );
    let Action::AnswerTrigger {
        id: 1,
        result: Ok(report),
    } = &a[1]
    else {
        panic!("{a:?}")
    };
    assert_eq!(report.forwarded_packets, 3);
    assert_eq!(report.source_gnb, "gnb-a");
    assert_eq!(report.target_gnb, "gnb-b");
    assert_eq!(report.ue_ipv4, ue_ip());
    let steps: Vec<(&str, u64)> = report
        .timeline
        .iter()
        .map(|s| (s.step.as_str(), s.at_us))
        .collect();
    assert_eq!(
        steps,
        [
            ("handover request to gnb-b (acknowledged)", 0),
            ("handover command to ue", 2000),
            ("end marker forwarded to gnb-b", 5000),
            ("path switch", 5000),
            ("ue context release from gnb-b", 10_000),
        ]
    );
    assert_eq!(report.timeline[0].took_us, 2000);
    assert!(g.context(SUPI).is_none());
    assert!(g.teid_owner(dl_teid).is_none());
    // a repeated release for a forgotten UE
    let a = g.handle(
        t0,
        Event::UeContextRelease {
            id: 6,
            release: UeContextRelease {
                target_gnb: "gnb-b".into(),
                supi: SUPI.into(),
                timeline: vec![],
            },
        },
    );
    assert!(matches!(&a[0], Action::AnswerRelease { result: Err(f), .. } if f.status == 404));
}

fn release(g: &mut GnbCore, now: Instant, id: RequestId) -> Vec<Action> {
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

#[test]
fn after_the_release_the_source_waits_for_the_end_marker() {
    let mut g = core("gnb-a", 1);
    let t0 = Instant::now();
    let tunnel = forwarding(&mut g, t0);
    let (dl_teid, epoch) = {
        let c = g.context(SUPI).unwrap();
        (c.dl_teid, c.epoch)
    };
    let a = release(&mut g, t0, 5);
    assert!(matches!(
        a.last().unwrap(),
        Action::StartTimer { timer: Timer::ReleaseLinger, at, .. } if *at == t0 + RELEASE_LINGER
    ));
    // a duplicate release: answered, nothing else
    let a = release(&mut g, t0, 6);
    assert_eq!(
        a,
        [Action::AnswerRelease {
            id: 6,
            result: Ok(())
        }]
    );
    // still forwarding
    let a = g.handle(t0, dl(dl_teid, &[0x45]));
    assert_eq!(gtpu_of(&a[0]).unwrap().0, tunnel.ipv4);
    let a = g.handle(t0, end_marker(dl_teid));
    assert_eq!(gtpu_of(&a[0]).unwrap().1.msg_type, MessageType::EndMarker);
    assert!(g.context(SUPI).is_none());
    // the linger timer of the gone context is stale
    assert!(g
        .handle(
            t0,
            Event::Timer {
                supi: SUPI.into(),
                epoch,
                timer: Timer::ReleaseLinger
            }
        )
        .is_empty());
}

#[test]
fn without_an_end_marker_the_source_stops_after_one_second() {
    let mut g = core("gnb-a", 1);
    let t0 = Instant::now();
    forwarding(&mut g, t0);
    let epoch = g.context(SUPI).unwrap().epoch;
    release(&mut g, t0, 5);
    g.handle(
        t0 + RELEASE_LINGER,
        Event::Timer {
            supi: SUPI.into(),
            epoch,
            timer: Timer::ReleaseLinger,
        },
    );
    assert!(g.context(SUPI).is_none());
}

#[test]
fn the_guard_fails_a_trigger_that_never_completes() {
    let mut g = core("gnb-a", 1);
    let t0 = Instant::now();
    forwarding(&mut g, t0);
    let epoch = g.context(SUPI).unwrap().epoch;
    let a = g.handle(
        t0 + HANDOVER_GUARD,
        Event::Timer {
            supi: SUPI.into(),
            epoch,
            timer: Timer::HandoverGuard,
        },
    );
    assert_eq!(trigger_failure(&a), 504);
    assert!(g.context(SUPI).is_none());
    // while preparing: the UE stays
    let mut g = core("gnb-a", 1);
    let (_, _, epoch) = attached(&mut g, t0);
    trigger(&mut g, t0, "ue1", "gnb-b");
    let a = g.handle(
        t0 + HANDOVER_GUARD,
        Event::Timer {
            supi: SUPI.into(),
            epoch,
            timer: Timer::HandoverGuard,
        },
    );
    assert_eq!(trigger_failure(&a), 504);
    assert_eq!(g.context(SUPI).unwrap().phase, Phase::Connected);
}

#[test]
fn a_release_for_a_ue_not_handed_over_is_refused() {
    let mut g = core("gnb-a", 1);
    let t0 = Instant::now();
    attached(&mut g, t0);
    let a = release(&mut g, t0, 5);
    assert!(matches!(&a[0], Action::AnswerRelease { result: Err(f), .. } if f.status == 409));
}

fn ho_request() -> HandoverRequest {
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
fn prepared(g: &mut GnbCore, now: Instant) -> HandoverRequestAck {
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

fn confirm(g: &mut GnbCore, now: Instant, radio_id: u16) -> Vec<Action> {
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

#[test]
fn the_target_admits_a_handover_and_answers_retries_alike() {
    let mut g = core("gnb-b", 2);
    let t0 = Instant::now();
    let ack = prepared(&mut g, t0);
    assert_eq!(ack.radio, "10.10.0.2:4997".parse().unwrap());
    assert_eq!(ack.forwarding_tunnel.ipv4, Ipv4Addr::new(10, 40, 0, 2));
    assert_eq!(
        g.teid_owner(ack.forwarding_tunnel.teid).unwrap().1,
        TeidRole::Forwarding
    );
    let c = g.context(SUPI).unwrap();
    assert_eq!(c.phase, Phase::AwaitingUe);
    assert_eq!(c.radio_id, ack.radio_id);
    assert_eq!(c.upf_tunnel, Some(upf_a()));
    assert_eq!(c.ue_name.as_deref(), Some("ue1"));
    // the same request again: the same answer
    let a = g.handle(
        t0,
        Event::HandoverRequest {
            id: 4,
            request: ho_request(),
        },
    );
    assert_eq!(
        a,
        [Action::AnswerHandoverRequest {
            id: 4,
            result: Ok(ack)
        }]
    );
}

#[test]
fn the_target_refuses_a_ue_it_already_serves() {
    let mut g = core("gnb-b", 2);
    let t0 = Instant::now();
    attached(&mut g, t0);
    let a = g.handle(
        t0,
        Event::HandoverRequest {
            id: 4,
            request: ho_request(),
        },
    );
    assert!(matches!(
        &a[0],
        Action::AnswerHandoverRequest { result: Err(f), .. } if f.status == 409
    ));
}

#[test]
fn the_target_delivers_forwarded_packets_in_order_then_switches_the_path() {
    let mut g = core("gnb-b", 2);
    let t0 = Instant::now();
    let ack = prepared(&mut g, t0);
    let fwd = ack.forwarding_tunnel.teid;
    // forwarded while the UE is on its way: buffered
    for i in 0..3u8 {
        assert!(g.handle(t0, dl(fwd, &[0x45, i])).is_empty());
    }
    // a confirm with a wrong radio id is ignored
    assert!(confirm(&mut g, t0, ack.radio_id + 1).is_empty());
    let a = confirm(&mut g, t0 + Duration::from_millis(3), ack.radio_id);
    let delivered: Vec<Vec<u8>> = a.iter().filter_map(data_of).map(|(_, p)| p).collect();
    assert_eq!(delivered, [vec![0x45, 0], vec![0x45, 1], vec![0x45, 2]]);
    let Some(Action::PathSwitch { request, epoch, .. }) = a.last() else {
        panic!("{a:?}")
    };
    let dl_teid = g.context(SUPI).unwrap().dl_teid;
    assert_eq!(request.gnb, "gnb-b");
    assert_eq!(request.ue_ipv4, ue_ip());
    assert_eq!(
        request.gnb_tunnel,
        TunnelEndpoint {
            ipv4: Ipv4Addr::new(10, 30, 0, 2),
            teid: dl_teid
        }
    );
    assert_eq!(g.context(SUPI).unwrap().phase, Phase::PathSwitching);
    // a repeated confirm: no second path switch
    assert!(confirm(&mut g, t0, ack.radio_id).is_empty());
    // forwarded after the arrival: straight to the UE
    let a = g.handle(t0, dl(fwd, &[0x45, 3]));
    assert_eq!(data_of(&a[0]).unwrap().1, [0x45, 3]);
    // uplink still goes to the old UPF
    let a = g.handle(
        t0,
        Event::Uplink {
            from: ue_addr(),
            radio_id: ack.radio_id,
            packet: vec![0x45],
        },
    );
    assert_eq!(gtpu_of(&a[0]).unwrap().0, upf_a().ipv4);
    // new-path downlink before the End Marker: held back
    assert!(matches!(
        g.handle(t0, dl(dl_teid, &[0x45, 10])).as_slice(),
        [Action::StartTimer {
            timer: Timer::NewPathHold,
            ..
        }]
    ));
    assert!(g.handle(t0, dl(dl_teid, &[0x45, 11])).is_empty());
    // the path switch is acknowledged: uplink moves, the release goes to the source
    let a = g.handle(
        t0 + Duration::from_millis(8),
        Event::PathSwitched {
            supi: SUPI.into(),
            epoch: *epoch,
            result: Ok(PathSwitchAck {
                upf_tunnel: upf_b(),
                upf: "upf-b".into(),
                timeline: vec![TimelineStep {
                    step: "pfcp session establishment at upf-b".into(),
                    at_us: 1000,
                    took_us: 500,
                    at_unix_us: None,
                }],
            }),
        },
    );
    let Action::ReleaseUeContext { xn_url, release } = &a[0] else {
        panic!("{a:?}")
    };
    assert_eq!(xn_url, "http://10.40.0.1:38422");
    assert_eq!(release.target_gnb, "gnb-b");
    let steps: Vec<(&str, u64)> = release
        .timeline
        .iter()
        .map(|s| (s.step.as_str(), s.at_us))
        .collect();
    assert_eq!(
        steps,
        [
            ("handover request from gnb-a admitted", 0),
            ("ue arrived at target (handover confirm)", 3000),
            (
                "forwarded packets buffered before arrival delivered: 3",
                3000
            ),
            ("path switch request to smf (acknowledged, upf-b)", 3000),
            ("smf: pfcp session establishment at upf-b", 4000),
            ("ue context release to gnb-a", 8000),
        ]
    );
    assert!(matches!(
        a[1],
        Action::StartTimer {
            timer: Timer::ForwardingDone,
            ..
        }
    ));
    assert_eq!(g.context(SUPI).unwrap().phase, Phase::Connected);
    let a = g.handle(
        t0,
        Event::Uplink {
            from: ue_addr(),
            radio_id: ack.radio_id,
            packet: vec![0x45],
        },
    );
    assert_eq!(gtpu_of(&a[0]).unwrap().0, upf_b().ipv4);
    // the End Marker over Xn-U releases the held new-path packets, after the old ones
    let a = g.handle(t0, dl(fwd, &[0x45, 4]));
    assert_eq!(data_of(&a[0]).unwrap().1, [0x45, 4]);
    let a = g.handle(t0, end_marker(fwd));
    let delivered: Vec<Vec<u8>> = a.iter().filter_map(data_of).map(|(_, p)| p).collect();
    assert_eq!(delivered, [vec![0x45, 10], vec![0x45, 11]]);
    // the forwarding tunnel is gone; the new path goes straight through
    assert!(g.teid_owner(fwd).is_none());
    assert!(g.context(SUPI).unwrap().arrival.is_none());
    let a = g.handle(t0, dl(dl_teid, &[0x45, 12]));
    assert_eq!(data_of(&a[0]).unwrap().1, [0x45, 12]);
    assert_eq!(g.counters.handovers_in, 1);
}

#[test]
fn without_an_end_marker_the_new_path_is_released_after_the_hold() {
    let mut g = core("gnb-b", 2);
    let t0 = Instant::now();
    let ack = prepared(&mut g, t0);
    confirm(&mut g, t0, ack.radio_id);
    let (dl_teid, epoch) = {
        let c = g.context(SUPI).unwrap();
        (c.dl_teid, c.epoch)
    };
    g.handle(t0, dl(dl_teid, &[0x45, 1]));
    let a = g.handle(
        t0 + NEW_PATH_HOLD,
        Event::Timer {
            supi: SUPI.into(),
            epoch,
            timer: Timer::NewPathHold,
        },
    );
    assert_eq!(data_of(&a[0]).unwrap().1, [0x45, 1]);
    // from now on the new path is not held
    let a = g.handle(t0, dl(dl_teid, &[0x45, 2]));
    assert_eq!(data_of(&a[0]).unwrap().1, [0x45, 2]);
}

#[test]
fn the_forwarding_tunnel_expires_after_the_path_switch() {
    let mut g = core("gnb-b", 2);
    let t0 = Instant::now();
    let ack = prepared(&mut g, t0);
    confirm(&mut g, t0, ack.radio_id);
    let epoch = g.context(SUPI).unwrap().epoch;
    g.handle(
        t0,
        Event::PathSwitched {
            supi: SUPI.into(),
            epoch,
            result: Ok(PathSwitchAck {
                upf_tunnel: upf_b(),
                upf: "upf-b".into(),
                timeline: vec![],
            }),
        },
    );
    g.handle(
        t0,
        Event::Timer {
            supi: SUPI.into(),
            epoch,
            timer: Timer::ForwardingDone,
        },
    );
    assert!(g.teid_owner(ack.forwarding_tunnel.teid).is_none());
    assert!(g.context(SUPI).unwrap().arrival.is_none());
    // a late path switch answer is ignored
    assert!(g
        .handle(
            t0,
            Event::PathSwitched {
                supi: SUPI.into(),
                epoch,
                result: Err("late".into())
            }
        )
        .is_empty());
}

#[test]
fn a_failed_path_switch_keeps_the_old_uplink_and_sends_no_release() {
    let mut g = core("gnb-b", 2);
    let t0 = Instant::now();
    let ack = prepared(&mut g, t0);
    confirm(&mut g, t0, ack.radio_id);
    let epoch = g.context(SUPI).unwrap().epoch;
    let a = g.handle(
        t0,
        Event::PathSwitched {
            supi: SUPI.into(),
            epoch,
            result: Err("smf down".into()),
        },
    );
    assert!(a.is_empty());
    let c = g.context(SUPI).unwrap();
    assert_eq!(c.phase, Phase::Connected);
    assert_eq!(c.upf_tunnel, Some(upf_a()));
}

#[test]
fn a_ue_that_never_arrives_is_forgotten() {
    let mut g = core("gnb-b", 2);
    let t0 = Instant::now();
    let ack = prepared(&mut g, t0);
    let epoch = g.context(SUPI).unwrap().epoch;
    // a stale timer of another epoch does nothing
    g.handle(
        t0,
        Event::Timer {
            supi: SUPI.into(),
            epoch: epoch + 100,
            timer: Timer::AwaitingUe,
        },
    );
    assert!(g.context(SUPI).is_some());
    g.handle(
        t0 + AWAITING_UE_GUARD,
        Event::Timer {
            supi: SUPI.into(),
            epoch,
            timer: Timer::AwaitingUe,
        },
    );
    assert!(g.context(SUPI).is_none());
    assert!(g.teid_owner(ack.forwarding_tunnel.teid).is_none());
}

#[test]
fn the_arrival_buffer_is_bounded() {
    let mut g = core("gnb-b", 2);
    let t0 = Instant::now();
    let ack = prepared(&mut g, t0);
    for _ in 0..MAX_BUFFERED + 5 {
        g.handle(t0, dl(ack.forwarding_tunnel.teid, &[0x45]));
    }
    assert_eq!(g.counters.downlink_dropped, 5);
    let a = confirm(&mut g, t0, ack.radio_id);
    assert_eq!(a.iter().filter_map(data_of).count(), MAX_BUFFERED);
}

#[test]
fn a_ue_handed_out_can_come_straight_back() {
    let mut g = core("gnb-a", 1);
    let t0 = Instant::now();
    forwarding(&mut g, t0);
    release(&mut g, t0, 5);
    // gnb-b hands it back before the linger ended
    let a = g.handle(
        t0,
        Event::HandoverRequest {
            id: 9,
            request: HandoverRequest {
                source_gnb: "gnb-b".into(),
                upf_tunnel: upf_b(),
                ..ho_request()
            },
        },
    );
    assert!(matches!(
        &a[0],
        Action::AnswerHandoverRequest { result: Ok(_), .. }
    ));
    let c = g.context(SUPI).unwrap();
    assert_eq!(c.phase, Phase::AwaitingUe);
    assert_eq!(c.upf_tunnel, Some(upf_b()));
}

//! The target side of a handover: admission, arrival, downlink ordering, path switch, timers.

#![allow(clippy::unwrap_used)]

use crate::gnb::context::fixtures::*;
use crate::gnb::context::*;

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

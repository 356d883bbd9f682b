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
                result: Err(CallFailure::refused("late"))
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
            result: Err(CallFailure::refused("404 no pdu session")),
        },
    );
    assert!(a.is_empty());
    let c = g.context(SUPI).unwrap();
    assert_eq!(c.phase, Phase::Connected);
    assert_eq!(c.upf_tunnel, Some(upf_a()));
}

#[test]
fn a_path_switch_the_smf_does_not_answer_is_sent_again_with_backoff_within_the_guard() {
    let mut g = core("gnb-b", 2);
    let t0 = Instant::now();
    let ack = prepared(&mut g, t0);
    let a = confirm(&mut g, t0, ack.radio_id);
    let Some(Action::PathSwitch { request: first, .. }) = a.last().cloned() else {
        panic!("{a:?}")
    };
    let epoch = g.context(SUPI).unwrap().epoch;
    let failed = |g: &mut GnbCore, at: Instant| {
        g.handle(
            at,
            Event::PathSwitched {
                supi: SUPI.into(),
                epoch,
                result: Err(CallFailure::transient("cannot reach the smf")),
            },
        )
    };
    let retry = |g: &mut GnbCore, at: Instant| {
        g.handle(
            at,
            Event::Timer {
                supi: SUPI.into(),
                epoch,
                timer: Timer::PathSwitchRetry,
            },
        )
    };
    // Each failure waits 100, 200, 400, 800, 1000, 1000 … ms, then the same request again.
    let mut now = t0;
    let mut waits = Vec::new();
    loop {
        let a = failed(&mut g, now);
        let [Action::StartTimer {
            timer: Timer::PathSwitchRetry,
            at,
            ..
        }] = a.as_slice()
        else {
            // The guard: no more tries, and the handover fails as before.
            assert!(a.is_empty(), "{a:?}");
            break;
        };
        waits.push((*at - now).as_millis());
        now = *at;
        assert_eq!(g.context(SUPI).unwrap().phase, Phase::PathSwitching);
        let a = retry(&mut g, now);
        assert_eq!(
            a,
            [Action::PathSwitch {
                supi: SUPI.into(),
                epoch,
                request: first.clone()
            }]
        );
    }
    assert_eq!(waits[..5], [100, 200, 400, 800, 1000]);
    assert!(waits[5..].iter().all(|w| *w == 1000), "{waits:?}");
    assert!(now - t0 < PATH_SWITCH_GUARD, "{:?}", now - t0);
    assert!(now - t0 + Duration::from_secs(1) >= PATH_SWITCH_GUARD);
    let c = g.context(SUPI).unwrap();
    assert_eq!(c.phase, Phase::Connected);
    assert_eq!(c.upf_tunnel, Some(upf_a()), "uplink stays on the old upf");
    // A retry timer after the end does nothing.
    assert!(retry(&mut g, now).is_empty());
}

#[test]
fn a_path_switch_answered_on_a_later_try_completes_the_handover() {
    let mut g = core("gnb-b", 2);
    let t0 = Instant::now();
    let ack = prepared(&mut g, t0);
    confirm(&mut g, t0, ack.radio_id);
    let epoch = g.context(SUPI).unwrap().epoch;
    let ms = Duration::from_millis;
    g.handle(
        t0 + ms(2),
        Event::PathSwitched {
            supi: SUPI.into(),
            epoch,
            result: Err(CallFailure::transient("503 smf starting")),
        },
    );
    let a = g.handle(
        t0 + ms(102),
        Event::Timer {
            supi: SUPI.into(),
            epoch,
            timer: Timer::PathSwitchRetry,
        },
    );
    assert!(matches!(a.as_slice(), [Action::PathSwitch { .. }]), "{a:?}");
    let a = g.handle(
        t0 + ms(150),
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
    assert!(
        a.iter()
            .any(|a| matches!(a, Action::ReleaseUeContext { .. })),
        "{a:?}"
    );
    let c = g.context(SUPI).unwrap();
    assert_eq!(
        (c.phase.clone(), c.upf_tunnel),
        (Phase::Connected, Some(upf_b()))
    );
    let steps: Vec<String> = c
        .arrival
        .as_ref()
        .map(|a| a.timeline.iter().map(|s| s.step.clone()).collect())
        .unwrap_or_default();
    assert!(
        steps
            .iter()
            .any(|s| s.starts_with("path switch request to smf failed (try 1): 503")),
        "{steps:?}"
    );
    assert!(
        steps.contains(&"path switch request to smf (acknowledged, upf-b)".to_owned()),
        "{steps:?}"
    );
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

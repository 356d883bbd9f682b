//! The source side of a handover: triggers, preparation, forwarding, release, guard.

#![allow(clippy::unwrap_used)]

use crate::gnb::context::fixtures::*;
use crate::gnb::context::*;
use wire::gtpu::{GtpuRepr, MessageType, Teid};

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

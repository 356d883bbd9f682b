//! Privileged end-to-end test of the SMOs on the standard AF path: they subscribe at the NEF
//! (TS 29.522) for EARLY notifications with `afAckInd`, so the SMF holds the UE's path switch
//! until they acknowledge. A handover of ue1 to site B: SMO-X moves `stream1` to edge Y while the
//! switch is held and acknowledges SUCCESS once it runs there with its new path
//! (make-before-break); no trombone flow (relocation cookie `0x534d4f52…`) ever appears on either
//! switch, and ue1's stream from the service stays byte-exact on one connection. Then edge X's
//! module refuses the way back (its restore fails): SMO-Y acknowledges OTHER once FAILURE's
//! trombone is in, the SMF switches, and ue1 at site A still reaches the service at edge Y.
//!
//! `#[ignore]`d (a plain `cargo test` counts them as skipped); run as root after
//! `cargo build --workspace --bins`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use model::ran::TimelineStep;
use model::smo::{RelocationRecord, RelocationState};
use model::traffic_influence::AfResultStatus;
use testbed::migration::HandoverOutcome;
use testbed::plan::{Plan, STREAM_SERVICE_IP};
use testbed::probe::{StreamReport, StreamWatch};

mod common;
use common::{require_root, wait_for};

const LOGS: [&str; 6] = ["svcmod-x", "svcmod-y", "smo-x", "smo-y", "smf", "nef"];
/// The tag of a relocation's flows (its cookie's upper half), as `ovs-ofctl` prints it.
const TROMBONE_COOKIE: &str = "cookie=0x534d4f52";

fn logs(plan: &Plan) -> String {
    LOGS.iter()
        .map(|n| {
            format!(
                "--- {n}\n{}\n",
                testbed::nf::tail(&plan.state_dir.join(format!("{n}.log")), 25)
            )
        })
        .collect()
}

/// ue1's TCP stream from the service, checked byte for byte as it arrives.
struct Stream {
    watch: StreamWatch,
    thread: std::thread::JoinHandle<std::io::Result<std::io::Result<StreamReport>>>,
}

impl Stream {
    fn start(plan: &Plan) -> Self {
        let watch = StreamWatch::default();
        let w = watch.clone();
        let ns = netkit::Netns::new(plan.netns("ue1"));
        let thread = std::thread::spawn(move || {
            ns.run_in(move || {
                testbed::probe::check_stream_watched(
                    (STREAM_SERVICE_IP, testbed::nf::PROBE_PORT).into(),
                    64,
                    Duration::from_secs(300),
                    &w,
                )
            })
        });
        Self { watch, thread }
    }

    /// Waits until `n` more records arrived.
    fn progress(&self, n: u64, limit: Duration) -> bool {
        let from = self.watch.records();
        wait_for(limit, || {
            self.watch.records() >= from + n || self.thread.is_finished()
        }) && self.watch.records() >= from + n
    }

    fn finish(self) -> StreamReport {
        self.watch.stop();
        self.thread
            .join()
            .expect("stream thread")
            .expect("run in ue1")
            .expect("stream connects")
    }
}

/// ue1's stream from `stream1` in edge X, once ue1 has its session and the service listens.
fn stream_from_service(plan: &Plan) -> Stream {
    let start = Instant::now();
    loop {
        let s = Stream::start(plan);
        if s.progress(50, Duration::from_secs(5)) {
            return s;
        }
        let rep = s.finish();
        assert!(
            start.elapsed() < Duration::from_secs(25),
            "no stream from {STREAM_SERVICE_IP}:5000 to ue1: {rep:?}\n{}",
            logs(plan)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Polls both edge switches' flows until stopped; every relocation-cookie flow seen.
struct TrombonePoll {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(usize, Vec<String>)>,
}

impl TrombonePoll {
    fn start(plan: &Plan) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let switches: Vec<_> = ["edge-x", "edge-y"]
            .iter()
            .map(|e| {
                let sw = plan.switch(e).expect("switch");
                (
                    e.to_string(),
                    netkit::ovs::OvsInstance::new(&sw.netns, &sw.dir),
                    sw.bridge.clone(),
                )
            })
            .collect();
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut polls, mut seen) = (0, Vec::new());
            while !s.load(Ordering::Relaxed) {
                for (edge, ovs, br) in &switches {
                    if let Ok(flows) = ovs.dump_flows(br) {
                        seen.extend(
                            flows
                                .into_iter()
                                .filter(|f| f.contains(TROMBONE_COOKIE))
                                .map(|f| format!("{edge}: {f}")),
                        );
                    }
                }
                polls += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            (polls, seen)
        });
        Self { stop, thread }
    }

    fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("poller")
    }
}

fn hand_over(plan: &Plan, token: &str, to: &str) -> HandoverOutcome {
    testbed::migration::handover_and_follow(plan, token, "ue1", to, Some(Duration::from_secs(30)))
        .unwrap_or_else(|e| panic!("handover to {to}: {e}\n{}", logs(plan)))
}

fn source_record(o: &HandoverOutcome, plan: &Plan) -> RelocationRecord {
    o.relocation
        .as_ref()
        .and_then(|m| m.source.clone())
        .unwrap_or_else(|| {
            panic!(
                "no relocation record: {:?}\n{}",
                o.relocation_note,
                logs(plan)
            )
        })
}

/// The SMF's hold for the acknowledgements of the EARLY notification.
fn hold(o: &HandoverOutcome) -> TimelineStep {
    o.handover
        .timeline
        .iter()
        .find(|s| s.step.starts_with("smf: hold for af acknowledgements"))
        .cloned()
        .unwrap_or_else(|| panic!("no hold in the timeline: {:#?}", o.handover.timeline))
}

/// The hold ended once the source SMO's acknowledgement was sent (not before; not at the 2 s
/// limit); its (start, end) on the wall clock.
fn assert_held_until_the_ack(
    o: &HandoverOutcome,
    rec: &RelocationRecord,
    status: &str,
) -> (u64, u64) {
    let h = hold(o);
    eprintln!("{}: {} ms", h.step, h.took_us / 1000);
    assert!(
        h.step.contains("(2 expected)") && h.step.contains(status) && !h.step.contains("no answer"),
        "both SMOs answer, the source with {status}: {}",
        h.step
    );
    let from = h.at_unix_us.expect("wall clock");
    let until = from + h.took_us;
    let ack = rec.af_ack.as_ref().expect("the record notes the ack");
    let sent = rec.started_unix_us + ack.sent_us.expect("sent");
    assert_eq!(ack.answer.as_deref(), Some("204"), "{ack:?}");
    assert!(
        (from..=until + 5_000).contains(&sent),
        "the ack ({sent}) must fall in the hold ({from}..{until}): {ack:?}"
    );
    assert!(
        h.took_us < 2_000_000,
        "the hold ran to its limit: {}",
        h.step
    );
    (from, until)
}

#[test]
#[ignore = "privileged: needs root; run with --include-ignored as root"]
fn the_smos_at_the_nef_move_the_service_while_the_path_switch_waits_for_their_ack() {
    require_root();
    let (plan, token, guard) = common::up_with(
        "ci-nef",
        "tbnf",
        testbed::topo::UpOptions {
            notify: testbed::scenario::Notify::Early,
            ..Default::default()
        },
    );
    let started = Instant::now();
    let stream = stream_from_service(&plan);

    // 1. ue1 → site B: the service moves while the switch is held, with no trombone.
    let poll = TrombonePoll::start(&plan);
    let o = hand_over(&plan, &token, "site-b");
    assert!(
        stream.progress(100, Duration::from_secs(10)),
        "the stream did not resume after the move ({} records)\n{}\n{}",
        stream.watch.records(),
        testbed::migration::text("ue1", &o),
        logs(&plan)
    );
    let (polls, trombones) = poll.finish();
    eprintln!(
        "\n===== ue1 → site-b, held\n{}",
        testbed::migration::text("ue1", &o)
    );
    let rec = source_record(&o, &plan);
    assert_eq!(
        rec.state,
        RelocationState::Completed,
        "{rec:#?}\n{}",
        logs(&plan)
    );
    let ack = rec.af_ack.clone().expect("acknowledged");
    assert_eq!(ack.af_status, Some(AfResultStatus::Success), "{ack:?}");
    let (held_from, held_until) = assert_held_until_the_ack(&o, &rec, "SUCCESS");
    eprintln!(
        "hold {held_from}..{held_until}; the ack {} ms after the notification; {polls} polls of both switches",
        ack.sent_us.unwrap_or_default() / 1000
    );
    assert!(polls >= 10, "the switches were polled only {polls} times");
    assert!(
        trombones.is_empty(),
        "trombone flows seen during a held relocation: {trombones:#?}"
    );
    assert_eq!(stream.watch.corrupt(), 0);

    // 2. ue1 back to site A, but edge X's module fails the restore: the relocation FAILS, the
    //    source acknowledges OTHER once the trombone is in, and ue1 still reaches the service.
    testbed::migration::arm_fault(&plan, &token, "edge-x", svcmod::Fault::CorruptImages)
        .expect("arm the fault in svcmod-x");
    let o = hand_over(&plan, &token, "site-a");
    eprintln!(
        "\n===== ue1 → site-a, restore fails at edge X\n{}",
        testbed::migration::text("ue1", &o)
    );
    let rec = source_record(&o, &plan);
    assert_eq!(
        rec.state,
        RelocationState::Failed,
        "{rec:#?}\n{}",
        logs(&plan)
    );
    let ack = rec.af_ack.clone().expect("acknowledged");
    assert_eq!(ack.af_status, Some(AfResultStatus::OtherReason), "{ack:?}");
    assert_held_until_the_ack(&o, &rec, "OTHER");
    assert!(
        stream.progress(100, Duration::from_secs(10)),
        "ue1 at site A does not reach the service after the failed move ({} records)\n{}",
        stream.watch.records(),
        logs(&plan)
    );
    let rep = stream.finish();
    assert!(
        rep.intact && rep.disconnected.is_none(),
        "stream not byte-exact on one connection: {rep:?}"
    );
    eprintln!(
        "took {:.1} s; stream: {rep:?}",
        started.elapsed().as_secs_f64()
    );
    drop(guard);
    assert!(netkit::Netns::list_with_prefix("tbnf-").is_empty());
}

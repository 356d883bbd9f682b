//! Every path of the move through the real driver, both sides, with the fake runtime
//! ([`crate::fake`]) over an in-memory connection (`tokio::io::duplex`) on a paused clock: each
//! test names what became of the service and checks it in the fake world — where it runs (one
//! copy, or none where the protocol says so) and that the target kept nothing of a failed move.

use super::*;
use crate::fake::{self, Act, Copy, Fake, FakeOptions, Step, World};
use crate::transfer::Message;
use std::path::PathBuf;
use tokio::task::JoinHandle;

const ID: &str = "p50";
const MS: fn(u64) -> Duration = Duration::from_millis;

/// Two fake modules, x and y, in one world.
struct Pair<const PULL: bool> {
    world: Arc<World>,
    x: Arc<Driver<Fake<PULL>>>,
    y: Arc<Driver<Fake<PULL>>>,
    root: PathBuf,
}

impl<const PULL: bool> Drop for Pair<PULL> {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// How the target behaves when a scripted step hangs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnHang {
    /// It stays silent (the connection open).
    Silent,
    /// It crashes: its task ends, the connection closes.
    Crash,
}

impl<const PULL: bool> Pair<PULL> {
    fn new(tag: &str) -> Self {
        let world = Arc::new(World::default());
        let root =
            std::env::temp_dir().join(format!("svcmod-driver-{tag}-{}-{PULL}", std::process::id()));
        let module = |edge: &str| {
            let mut cfg = Config::new(
                "tf",
                fake::site(edge),
                FakeOptions {
                    world: Arc::clone(&world),
                },
            );
            cfg.work_dir = root.join(edge);
            Arc::new(Driver::new(cfg))
        };
        let (x, y) = (module("x"), module("y"));
        let hook_world = Arc::clone(&world);
        y.set_arrival_hook(Arc::new(move |rel: String, id: String| {
            hook_world.note(format!("y arrival {rel} {id}"));
            Box::pin(async {})
        }));
        Self { world, x, y, root }
    }

    async fn host(&self) -> Service {
        self.x
            .create(ServiceSpec {
                service_id: ID.into(),
                ipv4_addr: std::net::Ipv4Addr::new(20, 0, 0, 50),
                mac_addr: "02:00:00:00:00:50".into(),
                command: vec!["serve".into()],
                resource_requirements: Default::default(),
            })
            .await
            .expect("hosted at x")
    }

    fn request(&self, service: &Service) -> ExecuteRequest {
        ExecuteRequest {
            relocation_id: "rel-1".into(),
            service: service.clone(),
            target_address: "10.0.1.2:9200".parse().expect("addr"),
        }
    }

    /// Moves the service x → y; the source's outcome and, unless the target never ended, the
    /// target's.
    async fn run(
        &self,
        strategy: Strategy,
        on_hang: OnHang,
    ) -> (
        Result<MigrationReport, MigrationError>,
        Option<Result<IncomingReport, MoveError>>,
    ) {
        let service = self.host().await;
        self.run_service(&service, strategy, on_hang).await
    }

    async fn run_service(
        &self,
        service: &Service,
        strategy: Strategy,
        on_hang: OnHang,
    ) -> (
        Result<MigrationReport, MigrationError>,
        Option<Result<IncomingReport, MoveError>>,
    ) {
        let (a, b) = tokio::io::duplex(64 << 10);
        let y = Arc::clone(&self.y);
        let mut target = tokio::spawn(async move { y.receive_over(b).await });
        let crasher = (on_hang == OnHang::Crash).then(|| {
            let (world, abort) = (Arc::clone(&self.world), target.abort_handle());
            tokio::spawn(async move {
                world.hung.notified().await;
                world.note("y crashes");
                abort.abort();
            })
        });
        let out = self
            .x
            .migrate_out_via(&self.request(service), strategy, async { Ok(a) })
            .await;
        let incoming = match tokio::time::timeout(Duration::from_secs(3600), &mut target).await {
            Ok(Ok(r)) => Some(r),
            _ => {
                target.abort();
                None
            }
        };
        if let Some(c) = crasher {
            c.abort();
        }
        (out, incoming)
    }

    /// The service runs at exactly `edges`, and nothing else of it exists anywhere.
    fn only_running_at(&self, edges: &[&str]) {
        assert_eq!(self.world.running(ID), edges, "{:?}", self.world.log());
        let others: Vec<(String, Copy)> = self
            .world
            .copies(ID)
            .into_iter()
            .filter(|(_, c)| *c != Copy::Running)
            .collect();
        assert!(others.is_empty(), "{others:?}: {:?}", self.world.log());
    }

    /// The modules' tables agree with the world: the service is in exactly `at`'s table.
    fn hosted_by(&self, at: Option<&str>) {
        assert_eq!(
            self.x.container(ID).is_some(),
            at == Some("x"),
            "x's table: {:?}",
            self.world.log()
        );
        assert_eq!(self.y.container(ID).is_some(), at == Some("y"), "y's table");
        if at == Some("x") {
            assert_eq!(self.x.state(ID), Some(ServiceState::Running));
        }
    }

    /// The same service moves x → y now: nothing of an earlier failed move is in the way.
    async fn moves_again(&self) {
        let service = fake::service(ID, RelocationType::Test);
        let (out, _) = self
            .run_service(&service, Strategy::StopAndCopy, OnHang::Silent)
            .await;
        expect_verdict(&out, "moved", "");
        self.ends_at(Some("y"));
    }

    /// The service runs only at `at` (or nowhere), and only that module hosts it.
    fn ends_at(&self, at: Option<&str>) {
        self.only_running_at(&at.into_iter().collect::<Vec<_>>());
        self.hosted_by(at);
    }

    fn logged(&self, what: &str) -> bool {
        self.world.log().iter().any(|l| l == what)
    }

    /// Position of `what` in the log.
    fn at(&self, what: &str) -> usize {
        let log = self.world.log();
        log.iter()
            .position(|l| l == what)
            .unwrap_or_else(|| panic!("{what} not in {log:?}"))
    }
}

fn step_names(r: &MigrationReport) -> Vec<&str> {
    r.steps.iter().map(|s| s.step.as_str()).collect()
}

/// Where a move left the service, and why, in words: `("rolled back", "connection")`.
fn verdict(out: &Result<MigrationReport, MigrationError>) -> (&'static str, String) {
    match out {
        Ok(_) => ("moved", String::new()),
        Err(e) => (
            match e {
                MigrationError::NotStarted { .. } => "not started",
                MigrationError::RolledBack { .. } => "rolled back",
                MigrationError::Lost { .. } => "lost",
                MigrationError::OutcomeUnknown { .. } => "unknown",
            },
            why(e.cause()),
        ),
    }
}

/// Who failed, in words.
fn why(cause: &MoveError) -> String {
    match cause {
        MoveError::Request(_) => "request".into(),
        MoveError::Refused(_) => "refused".into(),
        MoveError::TargetFailed { step, .. } => format!("target failed to {step}"),
        MoveError::Connection(_) => "connection".into(),
        MoveError::Unexpected { expected, got } => format!("{got} for {expected}"),
        MoveError::Local { step, .. } => format!("{step} failed here"),
    }
}

/// `verdict(out)` is `(at, cause)`, or the test fails naming what happened.
#[track_caller]
fn expect_verdict(out: &Result<MigrationReport, MigrationError>, at: &str, cause: &str) {
    let got = verdict(out);
    assert_eq!((got.0, got.1.as_str()), (at, cause), "{out:?}");
}

/// A target's outcome's cause, in words (`"received"` when it worked).
fn target_verdict(r: &Option<Result<IncomingReport, MoveError>>) -> String {
    match r {
        None => "never ended".into(),
        Some(Ok(_)) => "received".into(),
        Some(Err(e)) => why(e),
    }
}

// ---------------------------------------------------------------------------------------------
// Images transport (CRIU tree, LXC).

#[tokio::test(start_paused = true)]
async fn a_move_reports_every_step_on_the_paused_clock_and_leaves_one_copy_at_the_target() {
    let p = Pair::<false>::new("ok");
    for (step, ms) in [
        (Step::Accept, 3),
        (Step::Checkpoint, 40),
        (Step::Restore, 60),
        (Step::GoLive, 2),
    ] {
        p.world.takes(step, MS(ms));
    }
    let (out, incoming) = p.run(Strategy::StopAndCopy, OnHang::Silent).await;
    let r = out.expect("moved");
    assert_eq!(
        step_names(&r),
        [
            "prepare target",
            "dump",
            "transfer images",
            "restore at target",
            "resume at target",
            "remove source"
        ]
    );
    // Exact on the paused clock: the fake's times, and nothing else passes.
    assert_eq!(
        (r.prepare_us, r.dump_us, r.restore_us, r.resume_us),
        (3_000, 40_000, 60_000, 2_000)
    );
    assert_eq!(r.frozen_us, 102_000, "dump + transfer + restore + resume");
    assert_eq!(r.total_us, 105_000);
    assert_eq!(r.image_bytes, 1_200);
    assert!(r.bytes_moved > r.image_bytes, "{r:?}");
    let i = incoming.expect("target ended").expect("received");
    assert_eq!(
        (i.relocation_id.as_str(), i.service.service_id.as_str()),
        ("rel-1", ID)
    );
    assert_eq!(
        (i.prepare_us, i.restore_us, i.resume_us, i.image_bytes),
        (3_000, 60_000, 2_000, 1_200)
    );
    p.ends_at(Some("y"));
    // The SMO hears of the arrival between Commit and the resume.
    assert!(p.at("y arrival rel-1 p50") < p.at("y GoLive"));
    assert!(
        !p.root.join("x/out-p50-rel-1").exists(),
        "source work removed"
    );
    assert!(
        !p.root.join("y/in-p50-rel-1").exists(),
        "target work removed"
    );
}

#[tokio::test(start_paused = true)]
async fn lazy_pages_end_with_the_served_pages_and_background_removal_is_awaited() {
    let mut p = Pair::<false>::new("lazy");
    let mut cfg = p.x.config().clone();
    cfg.background_cleanup = true;
    p.x = Arc::new(Driver::new(cfg));
    p.world.takes(Step::Complete, MS(500));
    let (out, _) = p.run(Strategy::LazyPages, OnHang::Silent).await;
    let r = out.expect("moved");
    assert_eq!(
        step_names(&r),
        [
            "prepare target",
            "dump (without lazy pages)",
            "transfer images",
            "restore at target",
            "resume at target",
            "serve lazy pages",
            "remove source images"
        ]
    );
    assert_eq!(r.pages_us, Some(500_000));
    p.x.settle().await;
    p.only_running_at(&["y"]);
}

#[tokio::test(start_paused = true)]
async fn a_refusing_target_changes_nothing_and_the_offer_is_withdrawn() {
    let p = Pair::<false>::new("refused");
    p.world.script("y", Step::Accept, Act::Fail);
    let (out, incoming) = p.run(Strategy::StopAndCopy, OnHang::Silent).await;
    expect_verdict(&out, "not started", "refused");
    assert!(sbi::error_chain(&out.expect_err("refused")).contains("Accept fails at y"));
    assert_eq!(target_verdict(&incoming), "accept failed here");
    assert!(p.logged("x withdraw"));
    assert!(!p.logged("x Checkpoint"), "nothing stopped");
    p.ends_at(Some("x"));
    // The target's id is free again: the same move now works.
    p.moves_again().await;
}

#[tokio::test(start_paused = true)]
async fn a_target_hosting_the_id_already_refuses() {
    let p = Pair::<false>::new("twice");
    let service = p.host().await;
    p.y.create(ServiceSpec {
        service_id: ID.into(),
        ipv4_addr: service.ipv4_addr,
        mac_addr: service.mac_addr.clone(),
        command: vec!["serve".into()],
        resource_requirements: Default::default(),
    })
    .await
    .expect("y has one too");
    let (out, _) = p
        .run_service(&service, Strategy::StopAndCopy, OnHang::Silent)
        .await;
    expect_verdict(&out, "not started", "refused");
    assert!(sbi::error_chain(&out.expect_err("refused")).contains("already exists"));
    assert_eq!(p.world.running(ID), ["x", "y"], "both untouched");
}

#[tokio::test(start_paused = true)]
async fn no_connection_or_a_failed_offer_is_not_started_and_the_source_s_own_failure_is_a_500() {
    let p = Pair::<false>::new("noconn");
    let service = p.host().await;
    let out =
        p.x.migrate_out_via(&p.request(&service), Strategy::StopAndCopy, async {
            Err::<tokio::io::DuplexStream, _>(not_connected())
        })
        .await;
    expect_verdict(&out, "not started", "connection");
    let status = |out: &Result<_, MigrationError>| {
        out.as_ref()
            .err()
            .map(|e| crate::api::migration_status(e).1)
    };
    assert_eq!(status(&out), Some(crate::api::cause::TARGET_FAILED));
    assert!(p.logged("x withdraw"));
    p.world.script("x", Step::Offer, Act::Fail);
    let (out, _) = p
        .run_service(&service, Strategy::StopAndCopy, OnHang::Silent)
        .await;
    expect_verdict(&out, "not started", "offer failed here");
    // A failure at the source is never reported as the target's.
    assert_eq!(status(&out), Some(crate::api::cause::MIGRATION_FAILED));
    p.ends_at(Some("x"));
}

#[tokio::test(start_paused = true)]
async fn a_target_silent_or_dead_before_prepared_leaves_the_service_untouched() {
    for on_hang in [OnHang::Silent, OnHang::Crash] {
        let p = Pair::<false>::new("noprep");
        p.world.script("y", Step::Accept, Act::Hang);
        let (out, _) = p.run(Strategy::StopAndCopy, on_hang).await;
        expect_verdict(&out, "not started", "connection");
        assert!(p.logged("x withdraw"));
        assert!(!p.logged("x Checkpoint"));
        assert_eq!(p.world.running(ID), ["x"], "{on_hang:?}");
        p.hosted_by(Some("x"));
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_checkpoint_is_not_started_rolled_back_or_lost_by_where_it_left_the_service() {
    for (left, want, at) in [
        (Left::Running, "not started", Some("x")),
        (Left::Stopped, "rolled back", Some("x")),
        (Left::Gone, "lost", None),
    ] {
        let p = Pair::<false>::new("ckpt");
        p.world
            .script("x", Step::Checkpoint, Act::FailLeaving(left));
        let (out, incoming) = p.run(Strategy::StopAndCopy, OnHang::Silent).await;
        expect_verdict(&out, want, "checkpoint failed here");
        assert_eq!(p.logged("x Resume"), left == Left::Stopped, "{left:?}");
        assert_eq!(p.logged("x destroy"), left == Left::Gone, "{left:?}");
        // The target saw the connection close while it waited for images: it aborted.
        assert_eq!(target_verdict(&incoming), "connection");
        assert!(p.logged("y Abort") && p.logged("y destroy"));
        p.ends_at(at);
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_restore_at_the_target_rolls_back_after_the_target_removed_its_copy() {
    let p = Pair::<false>::new("restore");
    p.world.script("y", Step::Restore, Act::Fail);
    // Undoing takes a while: a target that said `Failed` first would let the source resume
    // beside its copy.
    p.world.takes(Step::Abort, MS(5));
    let (out, incoming) = p.run(Strategy::StopAndCopy, OnHang::Silent).await;
    expect_verdict(&out, "rolled back", "target failed to restore");
    let Err(MigrationError::RolledBack { cause, report, .. }) = &out else {
        panic!("{out:?}");
    };
    assert!(cause.to_string().contains("Restore fails at y"), "{cause}");
    assert_eq!(
        step_names(report),
        [
            "prepare target",
            "dump",
            "transfer images",
            "restore at source"
        ]
    );
    assert_eq!(target_verdict(&incoming), "restore failed here");
    assert!(p.at("y destroy") < p.at("x Resume"));
    p.ends_at(Some("x"));
}

#[tokio::test(start_paused = true)]
async fn an_armed_fault_makes_the_next_restore_fail_and_the_source_roll_back() {
    let p = Pair::<false>::new("fault");
    p.y.arm_fault(Fault::CorruptImages).expect("armed");
    let (out, _) = p.run(Strategy::StopAndCopy, OnHang::Silent).await;
    expect_verdict(&out, "rolled back", "target failed to restore");
    assert!(p.logged("y fault corrupt-images"));
    p.only_running_at(&["x"]);
    // Taken once: the next move works.
    p.moves_again().await;
}

#[tokio::test(start_paused = true)]
async fn no_answer_to_restore_rolls_back_whether_the_target_is_silent_or_dead() {
    for (act, on_hang) in [
        (Act::Hang, OnHang::Silent),
        (Act::Hang, OnHang::Crash),
        // Restored, then dead before it could say so.
        (Act::HangAfter, OnHang::Crash),
    ] {
        let p = Pair::<false>::new("norestored");
        p.world.script("y", Step::Restore, act);
        let (out, _) = p.run(Strategy::StopAndCopy, on_hang).await;
        expect_verdict(&out, "rolled back", "connection");
        assert_eq!(p.world.running(ID), ["x"], "{act:?} {on_hang:?}");
        p.hosted_by(Some("x"));
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_go_live_rolls_back_after_the_target_removed_its_copy() {
    let p = Pair::<false>::new("golive");
    p.world.script("y", Step::GoLive, Act::Fail);
    p.world.takes(Step::Abort, MS(5));
    let (out, _) = p.run(Strategy::StopAndCopy, OnHang::Silent).await;
    expect_verdict(&out, "rolled back", "target failed to resume");
    assert!(p.at("y destroy") < p.at("x Resume"));
    p.ends_at(Some("x"));
}

/// A move whose `Done` never came after the target was told to go live (or, pulled, went live):
/// the outcome is unknown and the source gives its copy up; the service runs at `running`.
async fn given_up<const PULL: bool>(
    (edge, step, act): (&str, Step, Act),
    strategy: Strategy,
    on_hang: OnHang,
    cause: &str,
    running: &[&str],
) -> Pair<PULL> {
    let p = Pair::<PULL>::new("givenup");
    p.world.script(edge, step, act);
    let (out, _) = p.run(strategy, on_hang).await;
    expect_verdict(&out, "unknown", cause);
    let status = out.as_ref().err().map(crate::api::migration_status);
    assert_eq!(
        status,
        Some((
            axum::http::StatusCode::GATEWAY_TIMEOUT,
            crate::api::cause::MIGRATION_OUTCOME_UNKNOWN
        ))
    );
    assert!(p.logged("x give up") && p.logged("x destroy"));
    assert!(p.x.container(ID).is_none(), "the source gave it up");
    assert_eq!(p.world.running(ID), running, "{:?}", p.world.log());
    p
}

#[tokio::test(start_paused = true)]
async fn a_commit_without_an_answer_is_an_unknown_outcome_and_the_source_gives_its_copy_up() {
    // Silent after Commit: the target never went live (the unknown window: none runs).
    let go_live = |act| ("y", Step::GoLive, act);
    let s = Strategy::StopAndCopy;
    given_up::<false>(go_live(Act::Hang), s, OnHang::Silent, "connection", &[]).await;
    // `Done` lost: the target went live and died before answering: exactly one copy, there.
    given_up::<false>(
        go_live(Act::HangAfter),
        s,
        OnHang::Crash,
        "connection",
        &["y"],
    )
    .await;
    // Pulled: the service runs at the target from `Restored` on.
    given_up::<true>(
        go_live(Act::HangAfter),
        s,
        OnHang::Crash,
        "connection",
        &["y"],
    )
    .await;
    // Post-copy: the pages could not all be served after `Done`.
    let complete = ("x", Step::Complete, Act::Fail);
    let cause = "complete failed here";
    given_up::<false>(complete, Strategy::LazyPages, OnHang::Silent, cause, &["y"]).await;
}

#[tokio::test(start_paused = true)]
async fn a_failed_rollback_is_lost_and_the_source_container_goes() {
    let p = Pair::<false>::new("lost");
    p.world.script("y", Step::Restore, Act::Fail);
    p.world.script("x", Step::Resume, Act::Fail);
    let (out, _) = p.run(Strategy::StopAndCopy, OnHang::Silent).await;
    expect_verdict(&out, "lost", "target failed to restore");
    let Err(e @ MigrationError::Lost { fallback, .. }) = &out else {
        panic!("{out:?}");
    };
    assert!(
        fallback.to_string().contains("Resume fails at x"),
        "{fallback}"
    );
    assert_eq!(
        crate::api::migration_status(e).1,
        crate::api::cause::SERVICE_LOST
    );
    p.ends_at(None);
}

#[tokio::test(start_paused = true)]
async fn requests_the_module_cannot_carry_out_touch_nothing() {
    let p = Pair::<true>::new("request");
    let service = fake::service(ID, RelocationType::Test);
    let unused = || async { Ok(tokio::io::duplex(64).0) };
    let out =
        p.x.migrate_out_via(&p.request(&service), Strategy::StopAndCopy, unused())
            .await;
    expect_verdict(&out, "not started", "request");
    assert!(matches!(
        out.as_ref().err().map(MigrationError::cause),
        Some(MoveError::Request(BackendError::UnknownService { .. }))
    ));
    p.host().await;
    let out =
        p.x.migrate_out_via(&p.request(&service), Strategy::LazyPages, unused())
            .await;
    expect_verdict(&out, "not started", "request");
    assert!(
        sbi::error_chain(&out.expect_err("lazy")).contains("lazy-pages"),
        "pulled runtimes take no lazy pages"
    );
    assert!(!p.logged("x Offer"));
    p.hosted_by(Some("x"));
}

// ---------------------------------------------------------------------------------------------
// A scripted peer on the other end: the wire's odd cases.

/// A target that plays the protocol by hand up to `Restored` (`answer_to_restore`), then
/// answers `Commit` with `after_restored` (if any), then closes.
async fn scripted_target(
    p: &Pair<false>,
    answer_to_restore: Message,
    after_restored: Option<Message>,
) -> Result<MigrationReport, MigrationError> {
    let service = fake::service(ID, RelocationType::Test);
    if p.x.container(ID).is_none() {
        p.host().await;
    }
    let (a, b) = tokio::io::duplex(64 << 10);
    let dir = p.root.join("scripted");
    let target = tokio::spawn(async move {
        let mut c = Conn::new(b);
        let _ = c.recv().await;
        let _ = c.send(&Message::Prepared { took_us: 1 }).await;
        let _ = fresh_dir(&dir);
        let _ = c.recv_images(&dir, MAX_IMAGE_BYTES).await;
        let _ = c.recv().await;
        let _ = c.send(&answer_to_restore).await;
        if let Some(m) = after_restored {
            let _ = c.recv().await;
            let _ = c.send(&m).await;
        }
        // Dropped here: the connection closes.
    });
    let out =
        p.x.migrate_out_via(&p.request(&service), Strategy::StopAndCopy, async { Ok(a) })
            .await;
    let _ = target.await;
    out
}

#[tokio::test(start_paused = true)]
async fn a_commit_that_cannot_be_sent_rolls_back() {
    let p = Pair::<false>::new("nocommit");
    // The target closes right after `Restored`: `Commit` finds the connection broken.
    let out = scripted_target(&p, Message::Restored { restore_us: 5 }, None).await;
    expect_verdict(&out, "rolled back", "connection");
    assert_eq!(p.world.running(ID), ["x"]);
}

#[tokio::test(start_paused = true)]
async fn answers_out_of_turn_are_refused_where_they_come() {
    let p = Pair::<false>::new("oot");
    // `Commit` in answer to `Restore`: the service stopped, so it is rolled back.
    let out = scripted_target(&p, Message::Commit, None).await;
    expect_verdict(&out, "rolled back", "commit for restored");
    // `Refused` in answer to `Commit`: the target may be live: unknown.
    let refused = Message::Refused { cause: "?".into() };
    let out = scripted_target(&p, Message::Restored { restore_us: 5 }, Some(refused)).await;
    expect_verdict(&out, "unknown", "refused for done");
}

/// A source that plays the protocol by hand: `Prepare`, then `then`; the target's outcome.
async fn scripted_source(
    p: &Pair<false>,
    then: impl AsyncFnOnce(&mut Conn<tokio::io::DuplexStream>),
) -> Result<IncomingReport, MoveError> {
    let (a, b) = tokio::io::duplex(64 << 10);
    let y = Arc::clone(&p.y);
    let target = tokio::spawn(async move { y.receive_over(b).await });
    let mut c = Conn::new(a);
    c.send(&Message::Prepare {
        relocation_id: "rel-s".into(),
        service: fake::service(ID, RelocationType::Test),
        offer: serde_json::json!({"fake": ID}),
    })
    .await
    .expect("prepare");
    assert!(matches!(c.recv().await, Ok(Message::Prepared { .. })));
    then(&mut c).await;
    drop(c);
    target.await.expect("target task")
}

#[tokio::test(start_paused = true)]
async fn a_target_aborts_whatever_the_source_does_wrong_and_keeps_nothing() {
    let p = Pair::<false>::new("badsource");
    let dir = p.root.join("src-images");
    fresh_dir(&dir).expect("dir");
    std::fs::write(dir.join("core-1.img"), "image of p50".repeat(100)).expect("image");
    let restored = async |c: &mut Conn<tokio::io::DuplexStream>| {
        c.send_images(&dir).await.expect("images");
        c.send(&Message::Restore).await.expect("restore");
        assert!(matches!(c.recv().await, Ok(Message::Restored { .. })));
    };
    let cases: Vec<(&str, Result<IncomingReport, MoveError>)> = vec![
        // The source dies after `Prepared`.
        ("connection", scripted_source(&p, async |_c| {}).await),
        // A message where images are due.
        (
            "connection",
            scripted_source(&p, async |c| {
                c.send(&Message::Restore).await.expect("send");
            })
            .await,
        ),
        // No `Commit` after `Restored`: the source gave up (or died).
        ("connection", scripted_source(&p, restored).await),
        // Something else than `Commit`.
        (
            "restore for commit",
            scripted_source(&p, async |c| {
                restored(c).await;
                c.send(&Message::Restore).await.expect("wrong");
            })
            .await,
        ),
    ];
    for (want, got) in cases {
        assert_eq!(target_verdict(&Some(got)), want);
        assert!(p.world.copies(ID).is_empty(), "{:?}", p.world.log());
        assert!(p.y.container(ID).is_none());
    }
    // A first message that is no `Prepare`: nothing is made.
    let (a, b) = tokio::io::duplex(4096);
    let y = Arc::clone(&p.y);
    let target = tokio::spawn(async move { y.receive_over(b).await });
    Conn::new(a).send(&Message::Commit).await.expect("send");
    let r = target.await.expect("target");
    assert_eq!(target_verdict(&Some(r)), "commit for prepare");
    // After all that, the target takes the service as ever.
    let r = scripted_source(&p, async |c| {
        restored(c).await;
        c.send(&Message::Commit).await.expect("commit");
        assert!(matches!(c.recv().await, Ok(Message::Done { .. })));
    })
    .await;
    assert_eq!(target_verdict(&Some(r)), "received");
    assert_eq!(p.world.running(ID), ["y"]);
    assert!(p.y.container(ID).is_some());
}

#[tokio::test(start_paused = true)]
async fn a_target_refuses_a_service_of_another_type_or_a_bad_offer() {
    let p = Pair::<false>::new("badoffer");
    for (rt, offer, want) in [
        (
            RelocationType::Criu,
            serde_json::json!({"fake": ID}),
            "relocation type CRIU",
        ),
        (
            RelocationType::Test,
            serde_json::json!({"fake": "other"}),
            "bad offer",
        ),
    ] {
        let (a, b) = tokio::io::duplex(4096);
        let y = Arc::clone(&p.y);
        let target = tokio::spawn(async move { y.receive_over(b).await });
        let mut c = Conn::new(a);
        c.send(&Message::Prepare {
            relocation_id: "r".into(),
            service: fake::service(ID, rt),
            offer,
        })
        .await
        .expect("send");
        let answer = c.recv().await;
        assert!(
            matches!(answer, Ok(Message::Refused { ref cause }) if cause.contains(want)),
            "{want}: {answer:?}"
        );
        assert!(target.await.expect("task").is_err());
        assert!(p.world.copies(ID).is_empty());
    }
}

// ---------------------------------------------------------------------------------------------
// Pull transport (LXD).

#[tokio::test(start_paused = true)]
async fn a_pulled_move_reports_its_steps_and_the_target_attaches_before_the_arrival() {
    let p = Pair::<true>::new("pull");
    p.world.takes(Step::Restore, MS(900));
    p.world.takes(Step::GoLive, MS(100));
    let (out, incoming) = p.run(Strategy::StopAndCopy, OnHang::Silent).await;
    let r = out.expect("moved");
    assert_eq!(
        step_names(&r),
        [
            "source migration operation",
            "prepare target",
            "LXD move (pull at target)",
            "attach at target",
            "remove source"
        ]
    );
    assert_eq!(
        (r.restore_us, r.resume_us, r.frozen_us),
        (900_000, 100_000, 1_000_000)
    );
    assert_eq!(
        (r.bytes_moved, r.image_bytes),
        (1234, 0),
        "the runtime counts"
    );
    assert_eq!(target_verdict(&incoming), "received");
    // No gate: the port goes on the bridge first, then the SMO switches the path to it.
    assert!(p.at("y GoLive") < p.at("y arrival rel-1 p50"));
    p.ends_at(Some("y"));
}

#[tokio::test(start_paused = true)]
async fn a_failed_pull_recovers_at_the_source_rolled_back_or_untouched() {
    for (stopped_source, want) in [(true, "rolled back"), (false, "not started")] {
        let p = Pair::<true>::new("pullfail");
        p.world.takes(Step::Abort, MS(5));
        p.world
            .script("y", Step::Restore, Act::FailPull { stopped_source });
        let (out, _) = p.run(Strategy::StopAndCopy, OnHang::Silent).await;
        expect_verdict(&out, want, "target failed to restore");
        assert!(p.at("y destroy") < p.at("x Resume"));
        p.ends_at(Some("x"));
    }
}

#[tokio::test(start_paused = true)]
async fn a_pull_the_target_never_answers_recovers_the_source() {
    let p = Pair::<true>::new("pullsilent");
    p.world.script("y", Step::Restore, Act::Hang);
    let (out, _) = p.run(Strategy::StopAndCopy, OnHang::Silent).await;
    // The hung pull never stopped the fake source: untouched.
    expect_verdict(&out, "not started", "connection");
    assert_eq!(p.world.running(ID), ["x"]);
}

// ---------------------------------------------------------------------------------------------
// A module killed mid-move and restarted with the same config: the reconcile.

impl<const PULL: bool> Pair<PULL> {
    /// Starts the move x → y with the source as a task of its own; the source's task, the
    /// target's task.
    async fn start_move(
        &self,
    ) -> (
        JoinHandle<Result<MigrationReport, MigrationError>>,
        JoinHandle<Result<IncomingReport, MoveError>>,
    ) {
        let service = self.host().await;
        let (a, b) = tokio::io::duplex(64 << 10);
        let y = Arc::clone(&self.y);
        let target = tokio::spawn(async move { y.receive_over(b).await });
        let (x, request) = (Arc::clone(&self.x), self.request(&service));
        let source = tokio::spawn(async move {
            x.migrate_out_via(&request, Strategy::StopAndCopy, async { Ok(a) })
                .await
        });
        (source, target)
    }

    /// Module `edge` restarted: a new driver on the same config (and work directory), its
    /// reconcile's services.
    async fn restart(&mut self, edge: &str) -> Vec<String> {
        let old = if edge == "x" { &self.x } else { &self.y };
        let fresh = Arc::new(Driver::new(old.config().clone()));
        let hosted = fresh.reconcile().await.expect("reconcile");
        if edge == "x" {
            self.x = fresh;
        } else {
            self.y = fresh;
        }
        hosted.into_iter().map(|s| s.service_id).collect()
    }

    /// Nothing of any move is left in the work directories.
    fn no_move_dirs(&self) {
        for edge in ["x", "y"] {
            let left: Vec<_> = std::fs::read_dir(self.root.join(edge))
                .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
                .unwrap_or_default();
            assert!(left.is_empty(), "{edge}: {left:?}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_source_killed_after_the_checkpoint_resumes_the_service_when_it_restarts() {
    let mut p = Pair::<false>::new("crash-src");
    p.world.script("x", Step::Checkpoint, Act::HangAfter);
    let (source, target) = p.start_move().await;
    p.world.hung.notified().await;
    source.abort();
    // The target sees the connection close and undoes what it made.
    let incoming = target.await.expect("target task");
    assert_eq!(target_verdict(&Some(incoming)), "connection");
    assert!(p.world.running(ID).is_empty(), "stopped at x, nothing at y");
    assert_eq!(p.restart("x").await, [ID]);
    assert!(p.logged("x resume interrupted"));
    p.ends_at(Some("x"));
    p.no_move_dirs();
    // The service moves on as ever.
    p.x.settle().await;
    let (out, _) = p
        .run_service(
            &fake::service(ID, RelocationType::Test),
            Strategy::StopAndCopy,
            OnHang::Silent,
        )
        .await;
    expect_verdict(&out, "moved", "");
}

#[tokio::test(start_paused = true)]
async fn after_commit_a_restarted_source_gives_up_and_a_restarted_target_keeps_its_live_copy() {
    let mut p = Pair::<false>::new("crash-both");
    // The target goes live, then both modules die before `Done`.
    p.world.script("y", Step::GoLive, Act::HangAfter);
    let (source, target) = p.start_move().await;
    p.world.hung.notified().await;
    source.abort();
    target.abort();
    assert_eq!(
        p.restart("x").await,
        Vec::<String>::new(),
        "Commit was marked"
    );
    assert_eq!(p.restart("y").await, [ID]);
    p.ends_at(Some("y"));
    p.no_move_dirs();
}

#[tokio::test(start_paused = true)]
async fn a_target_killed_mid_restore_leaves_nothing_once_restarted_and_the_source_rolled_back() {
    let mut p = Pair::<false>::new("crash-tgt");
    p.world.script("y", Step::Restore, Act::HangAfter);
    let (out, _) = p.run(Strategy::StopAndCopy, OnHang::Crash).await;
    expect_verdict(&out, "rolled back", "connection");
    assert_eq!(p.world.copies(ID).len(), 2, "the restored copy waits at y");
    assert!(p.restart("y").await.is_empty());
    p.ends_at(Some("x"));
    p.no_move_dirs();
    // A restart of the source hosts its running service as it was.
    assert_eq!(p.restart("x").await, [ID]);
    p.ends_at(Some("x"));
}

//! The supervisor, for real: a network function killed with SIGKILL (`testbed kill`) is started
//! again with its config and answers again; `testbed status` counts the restart; `testbed down`
//! ends the supervisor first and leaves nothing behind.
//!
//! Run as root: `cargo build --workspace --bins && cargo test -p testbed --test
//! privileged_supervise -- --include-ignored`.

mod common;
use common::{require_root, up_with, wait_for};
use std::time::Duration;
use testbed::state::State;

#[test]
#[ignore = "privileged: needs root; run with --include-ignored as root"]
fn a_killed_network_function_is_restarted_and_counted() {
    require_root();
    // No services: this is about the processes (a restarted module with services is the
    // service module's own case).
    let (plan, token, guard) = up_with(
        "ci-sup",
        "tbsv",
        testbed::topo::UpOptions {
            services: false,
            ..Default::default()
        },
    );
    let pid_of = |name: &str| {
        State::load(&plan.state_dir)
            .expect("state")
            .expect("up")
            .processes
            .into_iter()
            .find(|p| p.process.name == name)
            .expect(name)
    };
    let before = pid_of("smo-y");
    let supervisor = pid_of(testbed::supervise::NAME);
    assert!(supervisor.process.is_running(), "no supervisor running");

    let killed = testbed::supervise::kill(&plan.name, Some("edge-y"), "smo-y").expect("kill");
    assert_eq!(killed.process.pid, before.process.pid);
    assert!(
        wait_for(Duration::from_secs(15), || {
            let p = pid_of("smo-y");
            p.restarts == 1 && p.process.pid != before.process.pid && p.process.is_running()
        }),
        "smo-y was not restarted: {:?}\n{}",
        pid_of("smo-y"),
        std::fs::read_to_string(plan.state_dir.join("supervisor.log")).unwrap_or_default()
    );
    // The restarted SMO answers on its API with the deployment's token.
    let relocations = testbed::relocations::collect(&plan, &token);
    assert!(
        relocations.iter().all(|a| a.records.is_ok()),
        "an SMO does not answer after the restart: {relocations:?}"
    );
    let st = testbed::topo::status(&plan.name)
        .expect("status")
        .expect("up");
    let smo_y = st
        .nodes
        .iter()
        .flat_map(|n| &n.processes)
        .find(|p| p.name == "smo-y")
        .expect("smo-y in status");
    assert_eq!((smo_y.alive, smo_y.restarts), (true, 1));
    assert!(st.supervisor.is_some_and(|s| s.alive));
    // A process that is not there is refused by name, with the list.
    let err = testbed::supervise::kill(&plan.name, None, "smo-z").expect_err("no smo-z");
    assert!(
        err.contains("no process `smo-z`") && err.contains("smo-y"),
        "{err}"
    );

    drop(guard);
    assert!(
        !netkit::process::is_alive(supervisor.process.pid),
        "the supervisor outlived testbed down"
    );
    assert!(netkit::Netns::list_with_prefix("tbsv-").is_empty());
}

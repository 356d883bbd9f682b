//! Set-up shared by the privileged end-to-end tests: a two-site testbed with its network functions
//! under the test's own name and prefix, torn down by a guard also when the test fails.

use testbed::plan::Plan;
use testbed::spec::TopologySpec;
use testbed::state::State;
use testbed::topo;

/// Tears the testbed down, also when the test fails half-way.
pub struct Guard(pub String, pub String);

impl Drop for Guard {
    fn drop(&mut self) {
        topo::down(&self.0, Some(&self.1));
    }
}

/// Fails (never skips silently) when not root.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "privileged test: needs root (namespaces, TUN, OVS); run `sudo scripts/test`"
    );
}

/// Brings `two-site` up as `name`/`prefix` (after removing any leftovers of an earlier run) with
/// every network function and SMO; the plan, the deployment's token and the tear-down guard.
pub fn up(name: &str, prefix: &str) -> (Plan, String, Guard) {
    let mut spec = TopologySpec::builtin("two-site").expect("builtin");
    spec.name = name.into();
    spec.prefix = prefix.into();
    topo::down(name, Some(prefix));
    let guard = Guard(name.into(), prefix.into());
    let plan = topo::up(&spec, topo::UpOptions::default())
        .expect("testbed up with network functions and SMOs");
    let token = State::load(&plan.state_dir)
        .expect("state")
        .and_then(|s| s.token)
        .expect("token");
    (plan, token, guard)
}

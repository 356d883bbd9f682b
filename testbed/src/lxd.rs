//! The LXD daemons of a testbed whose planned services use the `lxd` backend (DESIGN.md "LXD",
//! [`svcmod::lxd_daemon`]): one per edge cloud, in the edge's network namespace and a mount
//! namespace of its own, listening on HTTPS on the edge's backhaul address ([`HTTPS_PORT`]), each
//! trusting the other edges' daemons. `testbed up` starts them after the network and before the
//! service modules (the LXD module of an edge talks to its daemon over the daemon's unix socket);
//! `testbed down` stops them after the modules ended (a module deletes its instances) and before
//! it ends what still runs in the namespaces, and removes their directories, pools and loop
//! devices.
//!
//! Everything of a daemon lives in [`daemon_dir`] (`/var/lib/testbed/lxd/<testbed>/<edge>`, not
//! under `/run`: the btrfs pool's loop file is 512 MiB sparse).

use crate::plan::{Plan, Switch};
use crate::scenario::Backend;
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use svcmod::daemon::LxdDaemonConfig;
use svcmod::lxd_daemon::{self, Daemon, DaemonError, DaemonSpec};

/// Where the testbeds' LXD daemons live.
pub const ROOT: &str = "/var/lib/testbed/lxd";
/// The port every daemon listens on for HTTPS (migration pulls), on its edge's backhaul address.
pub const HTTPS_PORT: u16 = 8443;

/// The directory of testbed `name`'s daemon for edge node `edge` (`edge-x` → `…/<name>/x`).
pub fn daemon_dir(name: &str, edge: &str) -> PathBuf {
    Path::new(ROOT).join(name).join(Plan::edge_short(edge))
}

/// Whether the plan runs a service on the `lxd` backend (then every edge cloud gets a daemon).
pub fn used(plan: &Plan) -> bool {
    plan.services.iter().any(|s| s.backend == Backend::Lxd)
}

/// Where the daemon of edge switch `sw` listens for HTTPS: the edge's backhaul address.
pub fn https_addr(plan: &Plan, sw: &Switch) -> Option<SocketAddrV4> {
    let ip = plan.node(&sw.node)?.addr(&sw.bridge)?;
    Some(SocketAddrV4::new(ip, HTTPS_PORT))
}

/// What to start for every edge cloud of `plan`: its node, its switch's namespace and its
/// backhaul address.
pub fn specs(plan: &Plan) -> Vec<(String, DaemonSpec)> {
    plan.switches
        .iter()
        .filter_map(|sw| {
            Some((
                sw.node.clone(),
                DaemonSpec::new(
                    daemon_dir(&plan.name, &sw.node),
                    sw.netns.clone(),
                    https_addr(plan, sw)?,
                ),
            ))
        })
        .collect()
}

/// The LXD module's view of edge switch `sw`'s daemon: its socket and certificate (as the host
/// sees them, under [`daemon_dir`]), its HTTPS address, the image.
pub fn module_config(plan: &Plan, sw: &Switch) -> Option<LxdDaemonConfig> {
    let dir = daemon_dir(&plan.name, &sw.node).join("lxd");
    Some(LxdDaemonConfig {
        socket: dir.join("unix.socket"),
        https_addr: https_addr(plan, sw)?,
        cert: dir.join("server.crt"),
        image_alias: lxd_daemon::IMAGE_ALIAS.to_owned(),
    })
}

/// Starts a daemon per edge cloud and makes them trust each other. On a failure the daemons
/// started so far keep running: `testbed down` ([`stop_all`]) removes them.
pub fn start_all(plan: &Plan) -> Result<Vec<Daemon>, DaemonError> {
    let mut daemons: Vec<Daemon> = Vec::new();
    for (edge, spec) in specs(plan) {
        let started = std::time::Instant::now();
        let d = lxd_daemon::start(&spec)?;
        tracing::info!(%edge, pid = d.pid, https = %d.https_addr, took_ms = started.elapsed().as_millis() as u64, "LXD daemon up");
        for other in &daemons {
            lxd_daemon::trust_each_other(other, &d)?;
        }
        daemons.push(d);
    }
    Ok(daemons)
}

/// Testbed `name`'s daemon of edge node `edge`, as recorded in its directory (if there is one).
pub fn running(name: &str, edge: &str) -> Option<Daemon> {
    lxd_daemon::load(&daemon_dir(name, edge)).ok().flatten()
}

/// Stops testbed `name`'s daemons (each recorded one by PID, or swept from its directory after a
/// crash) and removes their directories; the lines of what went and of what did not.
pub fn stop_all(name: &str) -> (Vec<String>, Vec<String>) {
    let (mut done, mut problems) = (Vec::new(), Vec::new());
    let root = Path::new(ROOT).join(name);
    let Ok(entries) = std::fs::read_dir(&root) else {
        return (done, problems);
    };
    for dir in entries.filter_map(Result::ok).map(|e| e.path()) {
        let stopped = match lxd_daemon::load(&dir) {
            Ok(Some(d)) => lxd_daemon::stop(&d).map(|()| format!("LXD daemon (pid {})", d.pid)),
            Ok(None) | Err(_) => lxd_daemon::sweep(&dir).map(|()| "LXD leftovers".to_owned()),
        };
        match stopped {
            Ok(what) => done.push(format!("{what} in {}", dir.display())),
            Err(e) => problems.push(format!("LXD daemon in {}: {e}", dir.display())),
        }
    }
    // Other testbeds may still have theirs: only empty directories go.
    let _ = std::fs::remove_dir(&root);
    let _ = std::fs::remove_dir(ROOT);
    if let Some(parent) = Path::new(ROOT).parent() {
        let _ = std::fs::remove_dir(parent);
    }
    (done, problems)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::TopologySpec;

    #[test]
    fn every_edge_gets_a_daemon_on_its_backhaul_address() {
        let plan = Plan::new(&TopologySpec::builtin("two-site").expect("builtin"));
        let specs = specs(&plan);
        let got: Vec<(&str, String, String, PathBuf)> = specs
            .iter()
            .map(|(e, s)| {
                (
                    e.as_str(),
                    s.netns.clone(),
                    s.https_addr.to_string(),
                    s.dir.clone(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (
                    "edge-x",
                    "tb-edge-x".to_owned(),
                    "10.0.1.1:8443".to_owned(),
                    PathBuf::from("/var/lib/testbed/lxd/two-site/x")
                ),
                (
                    "edge-y",
                    "tb-edge-y".to_owned(),
                    "10.0.1.2:8443".to_owned(),
                    PathBuf::from("/var/lib/testbed/lxd/two-site/y")
                ),
            ]
        );
        assert!(!used(&plan), "the default service runs on criu");
    }

    #[test]
    fn stopping_a_testbed_without_daemons_does_nothing() {
        let (done, problems) = stop_all("no-such-testbed-here");
        assert!(done.is_empty() && problems.is_empty());
    }
}

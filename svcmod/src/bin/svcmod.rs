//! `svcmod --config FILE.json --ready-file PATH`: the service module of one edge cloud (CRIU,
//! LXC or LXD backend, as its config's `backend` says). Started by `testbed up` inside the edge's namespace; see `svcmod::daemon` for what it
//! does and `svcmod::ModuleConfig` for the config. SIGTERM de-registers it and removes the
//! services it hosts.

use std::process::ExitCode;
use svcmod::daemon::{self, ModuleConfig};

fn main() -> ExitCode {
    // While the process has one thread: out of `ip netns exec`'s private mount namespace.
    let mount_ns = svcmod::mount_ns::join_host_mount_namespace();
    sbi::nf::main(
        "svcmod",
        move |cfg: ModuleConfig, ready, shutdown| async move {
            daemon::run(cfg, mount_ns, move || ready.ready(), shutdown.wait())
                .await
                .map_err(|e| daemon::error_chain(&e).into())
        },
    )
}

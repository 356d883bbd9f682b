//! The LXC runtime: services as real LXC containers ([`crate::lxc`]), moved with
//! `lxc-checkpoint` (CRIU underneath); [`LxcBackend`] is the driver over it, with the CRIU
//! runtime's protocol and guarantees ([`crate::protocol`]). Stop-and-copy only: `lxc-checkpoint`
//! offers a page server for pre-dumps only.
//!
//! | step | source | target |
//! |---|---|---|
//! | offer / accept | the container's [`ContainerSpec`] (command, binds) — never a config text: an LXC config from the network could carry `lxc.hook.*` lines | check the spec; write the container's config (from the spec) and rootfs skeleton into its lxcpath |
//! | checkpoint | freeze the container's cgroup (v1 freezer, polled every ms: [`Freezer`]; CRIU's own freeze polls every 100 ms), `lxc-checkpoint -s` (dumps with the TCP connections — the cgroup's state FROZEN with them — and stops the container: its netns and veth go; its OVS port is left dangling) | |
//! | restore | | `lxc-checkpoint -r -A gate` in its edge netns: CRIU makes `s-<id>` there (down) and stops at `post-restore`; T attaches `s-<id>` to its bridge, turns checksum offload off on both ends |
//! | go live | | the gate brings `s-<id>` up, CRIU resumes the container (frozen, as dumped) and T thaws it |
//! | resume at source | restore the container from its own images into its own lxcpath, exactly as a target does (gated: the stale port removed, the new one attached before the service resumes) | |
//!
//! A failed `lxc-checkpoint -s` leaves the container running (CRIU resumes it); if it is gone
//! all the same the service is lost. Every `lxc-*` command runs in the edge's netns (LXC
//! reaches its containers over an abstract unix socket, which belongs to a netns).

use crate::container::{self, attach, detach, port_exists, NetSpec};
use crate::criu::GatedRestore;
use crate::driver::Driver;
use crate::error::RuntimeError;
use crate::hosting::{blocking, blocking_try};
use crate::lxc::{self, ContainerSpec, Freezer, Lxc, LxcError};
use crate::runtime::{
    decode_offer, moves_prefix, CheckpointError, Checkpointed, Config, Found, Left, Leg, Resumed,
    Runtime, Transport,
};
use crate::service::{ServiceSpec, Strategy};
use model::smo::{RelocationType, Service};
use model::timeline::us;
use serde_json::Value;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The LXC runtime's own options.
#[derive(Debug, Clone, Default)]
pub struct LxcOptions {
    /// A directory put first on `lxc-checkpoint`'s `PATH`, holding the `criu` it runs (tests);
    /// `None`: the `criu` on `PATH` (the 4.2.1 wrapper).
    pub criu_dir: Option<PathBuf>,
}

/// How an LXC module is set up.
pub type LxcConfig = Config<LxcOptions>;

impl LxcConfig {
    /// The module's lxcpath: `<work_dir>/lxc`.
    pub fn lxcpath(&self) -> PathBuf {
        self.work_dir.join("lxc")
    }
}

/// The LXC service module backend of one edge cloud.
pub type LxcBackend = Driver<LxcRuntime>;

/// Services as LXC containers, moved with `lxc-checkpoint`.
#[derive(Debug)]
pub struct LxcRuntime {
    cfg: LxcConfig,
    lxc: Lxc,
}

/// A service's LXC container at one edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LxcContainer {
    name: String,
    port: String,
    spec: ContainerSpec,
    init_pid: Option<i32>,
    /// The `lxc.payload.*` cgroups its init is in (see [`lxc::payload_cgroups`]), removed with it.
    cgroups: Vec<String>,
}

impl LxcContainer {
    /// Records the init of the container, running now, and its cgroups.
    fn running(&mut self, pid: i32) {
        self.init_pid = Some(pid);
        for g in lxc::payload_cgroups(pid) {
            if !self.cgroups.contains(&g) {
                self.cgroups.push(g);
            }
        }
    }

    /// The container's name in the module's lxcpath.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host end of its veth (its OVS port).
    pub fn port(&self) -> &str {
        &self.port
    }

    /// What it holds.
    pub fn spec(&self) -> &ContainerSpec {
        &self.spec
    }

    /// The host PID of its init, while it runs.
    pub fn init_pid(&self) -> Option<i32> {
        self.init_pid.filter(|p| owns(&self.name, *p))
    }

    /// The network namespace of its init (`/proc/PID/ns/net`).
    pub fn netns_path(&self) -> Option<PathBuf> {
        self.init_pid()
            .map(|p| PathBuf::from(format!("/proc/{p}/ns/net")))
    }
}

/// Whether `pid` is alive and in container `name`'s cgroup (`…/lxc.payload.<name>`).
fn owns(name: &str, pid: i32) -> bool {
    netkit::process::is_alive(pid)
        && std::fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|c| {
            c.lines()
                .any(|l| l.ends_with(&format!("/lxc.payload.{name}")))
        })
}

/// The target's side of one move: the gated restore, once it runs.
#[derive(Debug)]
pub struct LxcIncoming {
    gated: Option<GatedRestore>,
}

impl LxcRuntime {
    /// The module's `lxc-*` tools.
    pub fn lxc(&self) -> &Lxc {
        &self.lxc
    }

    fn name(&self, service_id: &str) -> String {
        lxc::container_name(&self.cfg.prefix, service_id, &self.cfg.site.edge)
    }

    /// Starts `lxc-checkpoint -r` of `container` from `images`, gated, and waits until every
    /// task is restored: the veth's host end (down) then goes onto the bridge, checksum offload
    /// off on both ends. The commit brings the port up.
    async fn restore_gated(
        &self,
        container: &LxcContainer,
        images: &Path,
        gate_dir: &Path,
    ) -> Result<GatedRestore, RuntimeError> {
        let up = [
            "ip",
            "-n",
            self.cfg.site.netns.name(),
            "link",
            "set",
            &container.port,
            "up",
        ]
        .map(str::to_owned);
        let mut gated = self
            .lxc
            .restore_gated(&container.name, images, gate_dir, &up)?;
        let attached = async {
            gated.wait_restored(self.cfg.timeouts.restore).await?;
            let pid = gated.restored_pid().ok_or_else(|| LxcError::NotRunning {
                name: container.name.clone(),
            })?;
            let (site, port) = (self.cfg.site.clone(), container.port.clone());
            blocking_try(move || attach(&site, &port, pid)).await
        }
        .await;
        match attached {
            Ok(()) => Ok(gated),
            Err(e) => {
                gated.abort(Duration::from_secs(5)).await;
                Err(e)
            }
        }
    }

    /// Lets a gated restore run: CRIU resumes the container frozen (it was frozen at the dump:
    /// [`freeze`]), and it is thawed. Its init's PID.
    async fn commit(&self, gated: GatedRestore) -> Result<i32, RuntimeError> {
        let (restored, resume) = gated.commit(self.cfg.timeouts.commit).await?;
        if let Some(freezer) = Freezer::of(Path::new(lxc::CGROUP_ROOT), restored.pid) {
            blocking_try(move || freezer.thaw()).await?;
        }
        tracing::debug!(
            resume_us = us(resume),
            pid = restored.pid,
            "container resumed"
        );
        Ok(restored.pid)
    }
}

/// How long a container may take to freeze before the checkpoint goes on without it (CRIU
/// freezes it itself then).
const FREEZE_LIMIT: Duration = Duration::from_secs(2);

/// Freezes the container whose init is `pid` (see [`Freezer`]) and returns its freezer; `None`
/// when the host has no v1 freezer or the freeze failed (CRIU freezes it then).
async fn freeze(pid: Option<i32>) -> Option<Freezer> {
    let freezer = Freezer::of(Path::new(lxc::CGROUP_ROOT), pid?)?;
    let f = freezer.clone();
    match blocking_try(move || f.freeze(FREEZE_LIMIT)).await {
        Ok(took) => {
            tracing::debug!(took_us = us(took), "container frozen");
            Some(freezer)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot freeze the container; CRIU freezes it");
            None
        }
    }
}

/// Stops and removes a container, its port and its directory; tries every step.
fn destroy(lxc: &Lxc, site: &container::EdgeSite, c: &LxcContainer) -> Result<(), LxcError> {
    let stopped = lxc.stop(&c.name);
    let detached = detach(site, &c.port).map_err(LxcError::from);
    let destroyed = lxc.destroy(&c.name);
    lxc::remove_cgroups(Path::new(lxc::CGROUP_ROOT), &c.cgroups);
    stopped.and(detached).and(destroyed)
}

/// Refuses an interface that is in the edge's namespace already (another container's port).
fn port_free(site: &container::EdgeSite, port: &str) -> Result<(), LxcError> {
    if port_exists(site, port) {
        return Err(LxcError::Spec(format!(
            "interface {port} exists in {} already",
            site.netns
        )));
    }
    Ok(())
}

impl Runtime for LxcRuntime {
    type Options = LxcOptions;
    type Container = LxcContainer;
    type Outgoing = ();
    type Incoming = LxcIncoming;

    const RELOCATION_TYPE: RelocationType = RelocationType::Lxc;
    const TRANSPORT: Transport = Transport::Images;

    fn new(cfg: LxcConfig) -> Self {
        let lxc = Lxc {
            lxcpath: cfg.lxcpath(),
            netns: cfg.site.netns.clone(),
            criu_dir: cfg.runtime.criu_dir.clone(),
        };
        Self { cfg, lxc }
    }

    fn config(&self) -> &LxcConfig {
        &self.cfg
    }

    async fn start(
        &self,
        spec: &ServiceSpec,
        service: &Service,
    ) -> Result<LxcContainer, RuntimeError> {
        let mut c = LxcContainer {
            name: self.name(&service.service_id),
            port: service.ovs_port.clone(),
            spec: ContainerSpec::for_command(&spec.command)?,
            init_pid: None,
            cgroups: Vec::new(),
        };
        let (lxc, site) = (self.lxc.clone(), self.cfg.site.clone());
        let net = NetSpec::of(service, self.cfg.mtu);
        blocking_try(move || {
            let started = (|| {
                port_free(&site, &c.port)?;
                lxc.prepare()?;
                lxc.define(&c.name, &c.spec, &net, &c.port)?;
                let pid = lxc.start(&c.name, &c.spec.command)?;
                attach(&site, &c.port, pid)?;
                Ok::<_, LxcError>(pid)
            })();
            match started {
                Ok(pid) => {
                    c.running(pid);
                    Ok(c)
                }
                Err(e) => {
                    let tail = lxc.log_tail(&c.name);
                    if let Err(cleanup) = destroy(&lxc, &site, &c) {
                        tracing::warn!(error = %cleanup, "cannot remove a half-made container");
                    }
                    tracing::warn!(container = %c.name, lxc_log = %tail, "container did not start");
                    Err(e)
                }
            }
        })
        .await
    }

    async fn destroy(&self, container: &LxcContainer) -> Result<(), RuntimeError> {
        let (lxc, site, c) = (self.lxc.clone(), self.cfg.site.clone(), container.clone());
        blocking_try(move || destroy(&lxc, &site, &c)).await
    }

    fn peers(container: &LxcContainer) -> Result<Vec<Ipv4Addr>, RuntimeError> {
        let netns = container.netns_path().ok_or_else(|| LxcError::NotRunning {
            name: container.name.clone(),
        })?;
        Ok(container::tcp_peers_in(&netns)?)
    }

    async fn offer(
        &self,
        _leg: &Leg,
        _strategy: Strategy,
        container: &LxcContainer,
    ) -> Result<((), Value), RuntimeError> {
        if container.init_pid().is_none() {
            return Err(LxcError::NotRunning {
                name: container.name.clone(),
            }
            .into());
        }
        Ok(((), serde_json::json!(container.spec)))
    }

    async fn checkpoint(
        &self,
        leg: &Leg,
        _out: &mut (),
        container: &mut LxcContainer,
    ) -> Result<Checkpointed, CheckpointError> {
        let images = leg.images();
        let freezer = freeze(container.init_pid()).await;
        let dumped = self
            .lxc
            .checkpoint(&container.name, &images, self.cfg.timeouts.dump)
            .await;
        // CRIU's log stays beside the images: it is no image.
        let _ = std::fs::rename(images.join("dump.log"), leg.work.join("dump.log"));
        if let Err(e) = dumped {
            if let Some(f) = &freezer {
                // CRIU leaves a cgroup it found frozen frozen.
                let _ = f.thaw();
            }
            let (lxc, name) = (self.lxc.clone(), container.name.clone());
            let left = match blocking(move || lxc.init_pid(&name)).await {
                Ok(Ok(Some(pid))) => {
                    // CRIU resumed the container.
                    container.running(pid);
                    Left::Running
                }
                _ => Left::Gone,
            };
            return Err(CheckpointError {
                left,
                source: e.into(),
            });
        }
        container.init_pid = None;
        Ok(Checkpointed {
            image_bytes: crate::criu::dir_bytes(&images).unwrap_or(0),
        })
    }

    async fn resume_at_source(
        &self,
        leg: &Leg,
        _out: (),
        container: &mut LxcContainer,
    ) -> Result<Resumed, RuntimeError> {
        // The old port is left over from the running container; the restore makes a new veth.
        let (site, port) = (self.cfg.site.clone(), container.port.clone());
        blocking_try(move || detach(&site, &port)).await?;
        let gated = self
            .restore_gated(container, &leg.images(), &leg.work.join("gate"))
            .await?;
        let pid = self.commit(gated).await?;
        container.running(pid);
        Ok(Resumed::Restored)
    }

    async fn accept(
        &self,
        leg: &Leg,
        offer: Value,
    ) -> Result<(LxcIncoming, LxcContainer), RuntimeError> {
        let spec: ContainerSpec = decode_offer(offer, "LXC container spec")?;
        spec.validate()?;
        let id = &leg.service.service_id;
        let c = LxcContainer {
            name: self.name(id),
            port: leg.service.ovs_port.clone(),
            spec,
            init_pid: None,
            cgroups: Vec::new(),
        };
        let (lxc, site, made) = (self.lxc.clone(), self.cfg.site.clone(), c.clone());
        let net = NetSpec::of(&leg.service, self.cfg.mtu);
        blocking_try(move || {
            port_free(&site, &made.port)?;
            lxc.prepare()?;
            lxc.define(&made.name, &made.spec, &net, &made.port)
        })
        .await?;
        Ok((LxcIncoming { gated: None }, c))
    }

    async fn restore(
        &self,
        leg: &Leg,
        incoming: &mut LxcIncoming,
        container: &mut LxcContainer,
    ) -> Result<(), RuntimeError> {
        incoming.gated = Some(
            self.restore_gated(container, &leg.images(), &leg.work.join("gate"))
                .await?,
        );
        Ok(())
    }

    async fn go_live(
        &self,
        incoming: &mut LxcIncoming,
        container: &mut LxcContainer,
    ) -> Result<(), RuntimeError> {
        let gated = incoming
            .gated
            .take()
            .ok_or_else(|| RuntimeError::State("no restore to commit".into()))?;
        // On failure CRIU killed what it restored (or the container stayed frozen), but the
        // gate may have brought the port up: the driver removes the container and its port
        // before the source resumes the service.
        let pid = self.commit(gated).await?;
        container.running(pid);
        Ok(())
    }

    async fn abort(&self, incoming: LxcIncoming) {
        if let Some(g) = incoming.gated {
            g.abort(Duration::from_secs(5)).await;
        }
    }

    async fn survey(&self) -> Result<Vec<Found<LxcContainer>>, RuntimeError> {
        let (lxc, site, prefix) = (
            self.lxc.clone(),
            self.cfg.site.clone(),
            self.cfg.prefix.clone(),
        );
        let runs =
            ["in", "out"].map(|side| moves_prefix(&self.cfg.work_dir, side, RelocationType::Lxc));
        let limit = self.cfg.timeouts.dump;
        blocking(move || {
            crate::criu::settle_orphans(&runs, limit);
            let up = container::ports_up(&site);
            let mut found = Vec::new();
            for name in lxc.names() {
                let Some(id) =
                    container::service_id_in(&name, &prefix, &site.edge).map(str::to_owned)
                else {
                    continue;
                };
                let id = id.as_str();
                let mut c = LxcContainer {
                    port: format!("s-{id}"),
                    spec: lxc.kept_spec(&name).unwrap_or_else(|| {
                        tracing::warn!(container = %name, "no spec kept: it cannot move again");
                        ContainerSpec {
                            command: Vec::new(),
                            binds: Vec::new(),
                        }
                    }),
                    name,
                    init_pid: None,
                    cgroups: Vec::new(),
                };
                if let Ok(Some(pid)) = lxc.init_pid(&c.name) {
                    c.running(pid);
                }
                let service = c
                    .netns_path()
                    .and_then(|ns| container::service_in(id, RelocationType::Lxc, &ns).ok());
                let running = c.init_pid().is_some() && up.contains(&c.port);
                found.push(Found {
                    service_id: id.to_owned(),
                    service,
                    container: c,
                    running,
                });
            }
            found
        })
        .await
    }

    async fn resume_interrupted(
        &self,
        leg: &Leg,
        container: &mut LxcContainer,
    ) -> Result<(), RuntimeError> {
        self.resume_at_source(leg, (), container).await.map(drop)
    }

    fn clean_up(&self) {
        let _ = std::fs::remove_file(self.lxc.criu_conf());
        let _ = std::fs::remove_dir(&self.lxc.lxcpath);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{BackendError, MigrationError, MoveError};
    use crate::Backend;
    use model::smo::ExecuteRequest;

    use crate::fake::site;

    fn service(id: &str) -> Service {
        crate::fake::service(id, RelocationType::Lxc)
    }

    #[test]
    fn the_lxcpath_lives_in_the_work_dir() {
        let cfg = LxcConfig::new("tb", site("x"), LxcOptions::default());
        assert_eq!(cfg.work_dir, Path::new("/dev/shm/testbed-svcmod/tb-x"));
        assert_eq!(cfg.lxcpath(), Path::new("/dev/shm/testbed-svcmod/tb-x/lxc"));
        let b = LxcBackend::new(cfg);
        assert_eq!(b.runtime().name("p50"), "tb-svc-p50-x");
        assert_eq!(b.relocation_type(), RelocationType::Lxc);
    }

    #[tokio::test]
    async fn lazy_pages_are_refused_before_anything_happens() {
        let b = LxcBackend::new(LxcConfig::new("tb", site("x"), LxcOptions::default()));
        let request = ExecuteRequest {
            relocation_id: "r".into(),
            service: service("p50"),
            target_address: "10.0.1.2:9100".parse().expect("addr"),
        };
        let e = b
            .migrate_out_with(&request, Strategy::LazyPages)
            .await
            .expect_err("refused");
        assert!(
            matches!(
                e,
                MigrationError::NotStarted {
                    cause: MoveError::Request(BackendError::Unsupported(_)),
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(sbi::error_chain(&e).contains("lazy-pages"), "{e}");
        let e = b.migrate_out(&request).await.expect_err("unknown service");
        assert!(matches!(
            e,
            MigrationError::NotStarted {
                cause: MoveError::Request(BackendError::UnknownService { .. }),
                ..
            }
        ));
    }

    #[tokio::test]
    async fn a_target_takes_only_a_spec_never_a_config() {
        let b = LxcRuntime::new(LxcConfig::new("tb", site("x"), LxcOptions::default()));
        let leg = Leg {
            relocation_id: "r".into(),
            service: service("p50"),
            work: std::env::temp_dir().join("svcmod-lxc-offer-never-used"),
        };
        for (offer, want) in [
            (Value::Null, "no LXC container spec"),
            (
                serde_json::json!({"config": "lxc.hook.pre-start = /bin/sh -c 'x'"}),
                "unknown field `config`",
            ),
            (
                serde_json::json!({"command": ["x"], "binds": ["/proc/self"]}),
                "lies under /proc",
            ),
        ] {
            let e = b.accept(&leg, offer).await.expect_err("refused");
            assert!(sbi::error_chain(&e).contains(want), "{want}: {e}");
        }
        assert!(!leg.work.exists(), "nothing made");
    }
}

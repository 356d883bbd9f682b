//! The LXC backend: services as real LXC containers ([`crate::lxc`]), moved with
//! `lxc-checkpoint` (CRIU underneath) over the migration connection ([`crate::transfer`]), with
//! the CRIU backend's guarantees and the same two-phase commit.
//!
//! One migration (S = source module, T = target module), stop-and-copy only:
//!
//! | # | S | T |
//! |---|---|---|
//! | 1 | connect from its edge netns to T's backhaul address; `Prepare{service, container}` | check; write the container's config (from the [`ContainerSpec`], never a config text) and rootfs skeleton into its lxcpath; `Prepared` (or `Refused`: S changes nothing) |
//! | 2 | freeze the container's cgroup (v1 freezer, polled every ms: [`Freezer`]; CRIU's own freeze polls every 100 ms), `lxc-checkpoint -s` (dumps with the TCP connections — the cgroup's state FROZEN with them — and stops the container: its netns and veth go; its OVS port is left dangling) | |
//! | 3 | image files (without CRIU's log), `Restore` | receive into its tmpfs dir; `lxc-checkpoint -r -A gate` in its edge netns: CRIU makes `s-<id>` there (down) and stops at `post-restore`; T attaches `s-<id>` to its bridge, turns checksum offload off on both ends; `Restored` (or `Failed`) |
//! | 4 | `Commit` | the [`crate::ArrivalHook`] (**before the service resumes**: the daemon tells its SMO, which switches the data path here; ≤ [`crate::ARRIVAL_LIMIT`], never fatal), then the gate brings `s-<id>` up, CRIU resumes the container (frozen, as dumped) and T thaws it; `Done` |
//! | 5 | remove the images, the stopped container and the OVS port (in the background after answering, with [`LxcConfig::background_cleanup`]) | |
//!
//! **If anything fails before `Done`, the service resumes at the source.** Before step 2
//! nothing was stopped. A failed `lxc-checkpoint -s` leaves the container running (CRIU resumes
//! it); if it is gone all the same the service is lost. After a successful dump the source keeps
//! its images and its stopped container until the target reports `Done`: on any failure before
//! `Commit` (transfer, restore, time limit, connection lost, or a `Failed` answer to `Commit`)
//! S closes the connection — T, whose `s-<id>` never came up, aborts its gated restore (CRIU
//! kills what it restored; the veth goes with the container's netns) and removes its container
//! — then S restores the container from its own images into its own lxcpath, exactly as a
//! target does (gated: the port is re-attached before the service resumes), and the TCP peers'
//! retransmissions resume the connections. Only when `Commit` was sent and neither `Done` nor
//! `Failed` came back is the outcome unknown ([`MigrationError::OutcomeUnknown`]).
//!
//! Post-copy (`lazy-pages`) is refused with [`BackendError::Unsupported`]: `lxc-checkpoint`
//! offers a page server for pre-dumps only.

use crate::container::{self, NetSpec};
use crate::criu::GatedRestore;
use crate::criu_backend::{Timeouts, DEFAULT_WORK_ROOT};
use crate::hosting::{
    blocking, damage_images, fresh_dir, path_safe, prepare_target, ArrivalSlot, FaultSlot, Hosting,
};
use crate::lxc::{self, ContainerSpec, Freezer, Lxc, LxcError};
use crate::transfer::{self, Conn, Message};
use crate::{
    us, ArrivalHook, Backend, BackendError, Fault, IncomingReport, MigrationError, MigrationReport,
    ServiceSpec, ServiceState, Stopwatch, Strategy,
};
use model::smo::{ExecuteRequest, RelocationType, Service};
use netkit::cmd::{CmdError, Tool};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// How an LXC module is set up.
#[derive(Debug, Clone)]
pub struct LxcConfig {
    /// Namespace prefix (the testbed's, e.g. `tb`): containers are `<prefix>-svc-<id>-<edge>`.
    pub prefix: String,
    /// The edge cloud this module serves.
    pub site: EdgeSite,
    /// Images and logs (tmpfs), one subdirectory per migration; the lxcpath is `<work_dir>/lxc`.
    pub work_dir: PathBuf,
    /// A directory put first on `lxc-checkpoint`'s `PATH`, holding the `criu` it runs (tests);
    /// `None`: the `criu` on `PATH` (the 4.2.1 wrapper).
    pub criu_dir: Option<PathBuf>,
    pub timeouts: Timeouts,
    /// MTU of the service's veth.
    pub mtu: u32,
    /// Keep each migration's images and CRIU logs (debugging; they are removed otherwise).
    pub keep_work: bool,
    /// Remove a migrated service's stopped source container in the background, after answering
    /// the migration (see `CriuConfig::background_cleanup`).
    pub background_cleanup: bool,
}

use crate::container::EdgeSite;

impl LxcConfig {
    /// The defaults for `site`: work directory [`DEFAULT_WORK_ROOT`]`/<prefix>-<edge>`, `criu`
    /// from `PATH`, MTU 1500.
    pub fn new(prefix: impl Into<String>, site: EdgeSite) -> Self {
        let prefix = prefix.into();
        Self {
            work_dir: Path::new(DEFAULT_WORK_ROOT).join(format!("{prefix}-{}", site.edge)),
            prefix,
            site,
            criu_dir: None,
            timeouts: Timeouts::default(),
            mtu: 1500,
            keep_work: false,
            background_cleanup: false,
        }
    }

    /// The module's lxcpath.
    pub fn lxcpath(&self) -> PathBuf {
        self.work_dir.join("lxc")
    }
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

    /// The peers of the service's established TCP connections (`ss` in the container's netns).
    pub fn tcp_peers(&self) -> Result<Vec<Ipv4Addr>, LxcError> {
        let Some(ns) = self.netns_path() else {
            return Err(LxcError::NotRunning {
                name: self.name.clone(),
            });
        };
        let text = Tool::new("nsenter")
            .arg(format!("--net={}", ns.display()))
            .args(["--", "ss", "-tnH", "state", "established"])
            .stdout()?;
        Ok(container::parse_ss_peers(&text))
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

/// The LXC service module backend of one edge cloud.
#[derive(Debug)]
pub struct LxcBackend {
    cfg: LxcConfig,
    lxc: Lxc,
    hosting: Hosting<LxcContainer>,
    arrival: ArrivalSlot,
    /// A fault armed for the next incoming migration.
    fault: FaultSlot,
}

impl LxcBackend {
    /// A module with no services yet.
    pub fn new(cfg: LxcConfig) -> Self {
        let lxc = Lxc {
            lxcpath: cfg.lxcpath(),
            netns: cfg.site.netns.clone(),
            criu_dir: cfg.criu_dir.clone(),
        };
        Self {
            cfg,
            lxc,
            hosting: Hosting::default(),
            arrival: ArrivalSlot::default(),
            fault: FaultSlot::default(),
        }
    }

    /// The module's configuration.
    pub fn config(&self) -> &LxcConfig {
        &self.cfg
    }

    /// The module's `lxc-*` tools.
    pub fn lxc(&self) -> &Lxc {
        &self.lxc
    }

    /// The container of a hosted service.
    pub fn container(&self, service_id: &str) -> Option<LxcContainer> {
        self.hosting.get(service_id).map(|h| h.container)
    }

    /// The state of a hosted service.
    pub fn state(&self, service_id: &str) -> Option<ServiceState> {
        self.hosting.get(service_id).map(|h| h.state)
    }

    /// Waits for the source containers being removed in the background.
    pub async fn settle(&self) {
        self.hosting.settle().await;
    }

    fn net_spec(&self, service: &Service) -> NetSpec {
        NetSpec {
            service_id: service.service_id.clone(),
            ipv4_addr: service.ipv4_addr,
            mac_addr: service.mac_addr.clone(),
            mtu: self.cfg.mtu,
        }
    }

    fn name(&self, service_id: &str) -> String {
        lxc::container_name(&self.cfg.prefix, service_id, &self.cfg.site.edge)
    }

    fn check_service(&self, service: &Service) -> Result<(), BackendError> {
        crate::hosting::check_incoming(service, RelocationType::Lxc)
    }

    /// Removes a migration's work directory (unless configured to keep it).
    fn remove_work(&self, dir: &Path) {
        if !self.cfg.keep_work {
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    /// Moves a service with an explicit strategy (the trait's `migrate_out` uses stop-and-copy).
    pub async fn migrate_out_with(
        &self,
        request: &ExecuteRequest,
        strategy: Strategy,
    ) -> Result<MigrationReport, MigrationError> {
        let id = request.service.service_id.clone();
        let not_started = |source| MigrationError::NotStarted {
            service_id: id.clone(),
            source,
        };
        if strategy == Strategy::LazyPages {
            return Err(not_started(BackendError::Unsupported(
                "lazy-pages migration with the LXC backend (lxc-checkpoint has no post-copy restore)"
                    .into(),
            )));
        }
        self.hosting
            .migrate_out(&id, async |service, c| {
                self.run_migration(request, service, c).await
            })
            .await
    }

    async fn run_migration(
        &self,
        request: &ExecuteRequest,
        service: Service,
        container: &mut LxcContainer,
    ) -> Result<MigrationReport, MigrationError> {
        let id = service.service_id.clone();
        let not_started = |source: BackendError| MigrationError::NotStarted {
            service_id: id.clone(),
            source,
        };
        let t = self.cfg.timeouts;
        let mut sw = Stopwatch::start();
        let (mut report, target) =
            MigrationReport::starting(request, &service, Strategy::StopAndCopy)
                .map_err(&not_started)?;
        if container.init_pid().is_none() {
            return Err(not_started(
                LxcError::NotRunning {
                    name: container.name.clone(),
                }
                .into(),
            ));
        }

        // 1. The target writes the container's config and rootfs.
        let began = Instant::now();
        let mut conn = prepare_target(
            &self.cfg.site.netns,
            target,
            &Message::Prepare {
                relocation_id: request.relocation_id.clone(),
                service: service.clone(),
                container: Some(container.spec.clone()),
                lxd: None,
            },
            t.connect,
            t.prepare,
        )
        .await
        .map_err(&not_started)?;
        report.prepare_us = sw.record("prepare target", began);

        // 2. Checkpoint: the container stops (its netns and veth go with it).
        let out_dir = self
            .cfg
            .work_dir
            .join(format!("out-{id}-{}", path_safe(&request.relocation_id)));
        fresh_dir(&out_dir).map_err(&not_started)?;
        let images = out_dir.join("images");
        let frozen = Instant::now();
        let freezer = freeze(container.init_pid()).await;
        if let Err(e) = self.lxc.checkpoint(&container.name, &images, t.dump).await {
            drop(conn);
            if let Some(f) = &freezer {
                // CRIU leaves a cgroup it found frozen frozen.
                let _ = f.thaw();
            }
            let _ = std::fs::rename(images.join("dump.log"), out_dir.join("dump.log"));
            self.remove_work(&out_dir);
            let (lxc, name) = (self.lxc.clone(), container.name.clone());
            let still = blocking(move || lxc.init_pid(&name)).await;
            if let Ok(Ok(Some(pid))) = still {
                // CRIU resumed the container.
                container.running(pid);
                return Err(not_started(e.into()));
            }
            self.give_up_source(container, &out_dir).await;
            return Err(MigrationError::Lost {
                service_id: id,
                cause: e.to_string(),
                fallback: "the checkpoint failed and took the container with it".into(),
            });
        }
        report.dump_us = sw.record("dump", frozen);
        container.init_pid = None;
        // CRIU's log stays here: it is no image.
        let _ = std::fs::rename(images.join("dump.log"), out_dir.join("dump.log"));
        report.image_bytes = crate::criu::dir_bytes(&images).unwrap_or(0);
        let rollback = Rollback {
            out_dir: &out_dir,
            images: &images,
            frozen,
        };

        // 3. Images across, gated restore at the target.
        let moved: Result<u64, String> = async {
            let began = Instant::now();
            tokio::time::timeout(t.transfer, conn.send_images(&images))
                .await
                .map_err(|_| format!("images not sent within {} ms", t.transfer.as_millis()))?
                .map_err(|e| e.to_string())?;
            conn.send(&Message::Restore { page_server: None })
                .await
                .map_err(|e| e.to_string())?;
            report.transfer_us = sw.record("transfer images", began);
            match conn
                .recv_within(t.restore + t.transfer, "answer to restore")
                .await
            {
                Ok(Message::Restored { restore_us }) => {
                    sw.record_took("restore at target", restore_us);
                    Ok(restore_us)
                }
                Ok(Message::Failed { cause }) => Err(format!("target restore failed: {cause}")),
                Ok(other) => Err(format!("unexpected {} after restore", other.kind())),
                Err(e) => Err(e.to_string()),
            }
        }
        .await;
        report.bytes_moved = conn.bytes_sent();
        report.restore_us = match moved {
            Ok(r) => r,
            Err(cause) => {
                drop(conn);
                return Err(self.roll_back(container, rollback, cause, report, sw).await);
            }
        };

        // 4. Commit.
        if let Err(e) = conn.send(&Message::Commit).await {
            drop(conn);
            let cause = format!("cannot send commit: {e}");
            return Err(self.roll_back(container, rollback, cause, report, sw).await);
        }
        report.resume_us = match conn.recv_within(t.commit, "answer to commit").await {
            Ok(Message::Done { resume_us }) => resume_us,
            Ok(Message::Failed { cause }) => {
                // The target holds nothing (CRIU killed what it restored, its port is down).
                drop(conn);
                let cause = format!("target failed to resume: {cause}");
                return Err(self.roll_back(container, rollback, cause, report, sw).await);
            }
            other => {
                let cause = match other {
                    Ok(m) => format!("unexpected {} after commit", m.kind()),
                    Err(e) => e.to_string(),
                };
                self.give_up_source(container, &out_dir).await;
                return Err(MigrationError::OutcomeUnknown {
                    service_id: id,
                    cause,
                });
            }
        };
        sw.record_took("resume at target", report.resume_us);
        report.frozen_us = us(frozen.elapsed());
        report.bytes_moved = conn.bytes_sent();
        drop(conn);

        // 5. The source's leftovers.
        let began = Instant::now();
        if self.cfg.background_cleanup {
            self.remove_work(&out_dir);
            let leaving = self.hosting.leaving(&id);
            let (lxc, site, c) = (self.lxc.clone(), self.cfg.site.clone(), container.clone());
            tokio::spawn(async move {
                let began = Instant::now();
                let removed = blocking(move || destroy(&lxc, &site, &c))
                    .await
                    .and_then(|r| r.map_err(BackendError::from));
                match removed {
                    Ok(()) => {
                        tracing::debug!(service = %id, took_us = us(began.elapsed()), "source container removed")
                    }
                    Err(e) => {
                        tracing::warn!(service = %id, error = %e, "cannot remove the source container")
                    }
                }
                drop(leaving);
            });
            sw.record("remove source images", began);
        } else {
            self.give_up_source(container, &out_dir).await;
            sw.record("remove source", began);
        }
        report.total_us = sw.elapsed_us();
        report.steps = sw.steps().to_vec();
        Ok(report)
    }

    /// Removes the source container (stopped since the checkpoint), its port and the images.
    async fn give_up_source(&self, container: &mut LxcContainer, out_dir: &Path) {
        let (lxc, site, c) = (self.lxc.clone(), self.cfg.site.clone(), container.clone());
        if let Ok(Err(e)) | Err(e) = blocking(move || destroy(&lxc, &site, &c))
            .await
            .map(|r| r.map_err(BackendError::from))
        {
            tracing::warn!(error = %e, "cannot remove the source container");
        }
        self.remove_work(out_dir);
        container.init_pid = None;
    }

    /// Restores the container at the source from the source's images (see the module docs).
    /// The caller has closed the migration connection, so the target aborts.
    async fn roll_back(
        &self,
        container: &mut LxcContainer,
        rb: Rollback<'_>,
        cause: String,
        mut report: MigrationReport,
        mut sw: Stopwatch,
    ) -> MigrationError {
        let id = report.service.service_id.clone();
        tracing::warn!(service = %id, %cause, "migration failed after the checkpoint, restoring at the source");
        let began = Instant::now();
        let restored = self.restore_at_source(container, &rb).await;
        self.remove_work(rb.out_dir);
        match restored {
            Ok(pid) => {
                container.running(pid);
                sw.record("restore at source", began);
                report.frozen_us = us(rb.frozen.elapsed());
                report.total_us = sw.elapsed_us();
                report.steps = sw.steps().to_vec();
                MigrationError::RolledBack {
                    service_id: id,
                    cause,
                    report: Box::new(report),
                }
            }
            Err(fallback) => {
                self.give_up_source(container, rb.out_dir).await;
                MigrationError::Lost {
                    service_id: id,
                    cause,
                    fallback,
                }
            }
        }
    }

    async fn restore_at_source(
        &self,
        container: &LxcContainer,
        rb: &Rollback<'_>,
    ) -> Result<i32, String> {
        // The old port is left over from the running container; the restore makes a new veth.
        let (site, port) = (self.cfg.site.clone(), container.port.clone());
        blocking(move || detach(&site, &port))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot remove the stale port: {e}"))?;
        let t = self.cfg.timeouts;
        let mut gated = self
            .start_restore(container, rb.images, &rb.out_dir.join("gate"))
            .map_err(|e| e.to_string())?;
        let attached = async {
            gated.wait_restored(t.restore).await?;
            self.attach_restored(container, &gated).await
        }
        .await;
        if let Err(e) = attached {
            gated.abort(Duration::from_secs(5)).await;
            return Err(e.to_string());
        }
        let (restored, _) = gated.commit(t.commit).await.map_err(|e| e.to_string())?;
        thaw_restored(restored.pid)
            .await
            .map_err(|e| e.to_string())?;
        Ok(restored.pid)
    }

    /// Starts `lxc-checkpoint -r` of `container` from `images`, gated; the commit brings its
    /// port up.
    fn start_restore(
        &self,
        container: &LxcContainer,
        images: &Path,
        gate_dir: &Path,
    ) -> Result<GatedRestore, LxcError> {
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
        self.lxc
            .restore_gated(&container.name, images, gate_dir, &up)
    }

    /// Once CRIU stopped at `post-restore`: the veth's host end (down) onto the bridge, checksum
    /// offload off on both ends.
    async fn attach_restored(
        &self,
        container: &LxcContainer,
        gated: &GatedRestore,
    ) -> Result<(), BackendError> {
        let pid = gated.restored_pid().ok_or_else(|| LxcError::NotRunning {
            name: container.name.clone(),
        })?;
        let (site, port) = (self.cfg.site.clone(), container.port.clone());
        blocking(move || attach(&site, &port, pid))
            .await?
            .map_err(|e| LxcError::from(e).into())
    }

    /// The target side of one migration (see the module docs); `Ok` once the service runs here.
    pub async fn receive_service(&self, stream: TcpStream) -> Result<IncomingReport, BackendError> {
        let t = self.cfg.timeouts;
        let mut conn = Conn::new(stream);
        let (relocation_id, service, spec) = match conn.recv_within(t.prepare, "prepare").await? {
            Message::Prepare {
                relocation_id,
                service,
                container,
                ..
            } => (relocation_id, service, container),
            other => {
                return Err(BackendError::BadRequest(format!(
                    "expected prepare, got {}",
                    other.kind()
                )))
            }
        };
        let id = service.service_id.clone();
        // Back to an edge it just left: its old container must be gone first.
        if !self.hosting.wait_removed(Some(&id), t.prepare).await {
            tracing::warn!(service = %id, "the old container is still being removed");
        }
        let checked = self.check_service(&service).and_then(|()| {
            spec.ok_or_else(|| {
                BackendError::BadRequest("an LXC module needs the container's spec".into())
            })
        });
        let spec = match checked.and_then(|s| self.hosting.reserve(&id).map(|()| s)) {
            Ok(s) => s,
            Err(e) => {
                let _ = conn
                    .send(&Message::Refused {
                        cause: e.to_string(),
                    })
                    .await;
                return Err(e);
            }
        };
        let began = Instant::now();
        let container = LxcContainer {
            name: self.name(&id),
            port: service.ovs_port.clone(),
            spec,
            init_pid: None,
            cgroups: Vec::new(),
        };
        let (lxc, site, net, c) = (
            self.lxc.clone(),
            self.cfg.site.clone(),
            self.net_spec(&service),
            container.clone(),
        );
        let prepared = blocking(move || {
            if port_exists(&site, &c.port) {
                return Err(LxcError::Spec(format!(
                    "interface {} exists in {} already",
                    c.port, site.netns
                )));
            }
            lxc.prepare()?;
            lxc.define(&c.name, &c.spec, &net, &c.port)
        })
        .await
        .and_then(|r| r.map_err(BackendError::from));
        if let Err(e) = prepared {
            self.hosting.unreserve(&id);
            let _ = conn
                .send(&Message::Refused {
                    cause: e.to_string(),
                })
                .await;
            return Err(e);
        }
        let prepare_us = us(began.elapsed());
        let in_dir = self
            .cfg
            .work_dir
            .join(format!("in-{id}-{}", path_safe(&relocation_id)));
        let result = self
            .receive_and_restore(
                &mut conn,
                &container,
                &in_dir,
                prepare_us,
                (&relocation_id, &id),
            )
            .await;
        self.remove_work(&in_dir);
        match result {
            Ok((mut report, pid)) => {
                let mut container = container;
                container.running(pid);
                report.relocation_id = relocation_id;
                report.service = service.clone();
                self.hosting.install(service, container);
                Ok(report)
            }
            Err(e) => {
                let (lxc, site) = (self.lxc.clone(), self.cfg.site.clone());
                let _ = blocking(move || destroy(&lxc, &site, &container)).await;
                self.hosting.unreserve(&id);
                Err(e)
            }
        }
    }

    async fn receive_and_restore(
        &self,
        conn: &mut Conn,
        container: &LxcContainer,
        in_dir: &Path,
        prepare_us: u64,
        (relocation_id, service_id): (&str, &str),
    ) -> Result<(IncomingReport, i32), BackendError> {
        let t = self.cfg.timeouts;
        conn.send(&Message::Prepared {
            took_us: prepare_us,
        })
        .await?;
        fresh_dir(in_dir)?;
        let images = in_dir.join("images");
        fresh_dir(&images)?;
        let began = Instant::now();
        let stats = tokio::time::timeout(
            t.dump + t.transfer,
            conn.recv_images(&images, transfer::MAX_IMAGE_BYTES),
        )
        .await
        .map_err(|_| transfer::TransferError::Timeout {
            what: "images".into(),
            limit_ms: u64::try_from((t.dump + t.transfer).as_millis()).unwrap_or(u64::MAX),
        })??;
        let receive_us = us(began.elapsed());
        match conn.recv_within(t.transfer, "restore").await? {
            Message::Restore { page_server: None } => {}
            Message::Restore {
                page_server: Some(_),
            } => {
                let e = BackendError::Unsupported("lazy pages with the LXC backend".into());
                self.answer_failed(conn, container, e.to_string()).await;
                return Err(e);
            }
            other => {
                return Err(BackendError::BadRequest(format!(
                    "expected restore, got {}",
                    other.kind()
                )))
            }
        }

        if self.fault.take(Fault::CorruptImages) {
            damage_images(&images)?;
        }
        // Gated restore: every task restored and stopped, the port attached but down.
        let mut gated = match self.start_restore(container, &images, &in_dir.join("gate")) {
            Ok(g) => g,
            Err(e) => {
                self.answer_failed(conn, container, e.to_string()).await;
                return Err(e.into());
            }
        };
        let restored = async {
            let took = gated.wait_restored(t.restore).await?;
            self.attach_restored(container, &gated).await?;
            Ok::<_, BackendError>(took)
        }
        .await;
        let restore_us = match restored {
            Ok(d) => us(d),
            Err(e) => {
                gated.abort(Duration::from_secs(5)).await;
                self.answer_failed(conn, container, e.to_string()).await;
                return Err(e);
            }
        };
        let answered = async {
            conn.send(&Message::Restored { restore_us }).await?;
            conn.recv_within(t.commit, "commit").await
        }
        .await;
        match answered {
            Ok(Message::Commit) => {}
            Ok(other) => {
                gated.abort(Duration::from_secs(5)).await;
                return Err(BackendError::BadRequest(format!(
                    "expected commit, got {}",
                    other.kind()
                )));
            }
            Err(e) => {
                gated.abort(Duration::from_secs(5)).await;
                return Err(e.into());
            }
        }
        // The source gave the service up: let the SMO switch the path here before it resumes.
        let arrival = self.arrival.report(relocation_id, service_id).await;
        let committed = match gated.commit(t.commit).await {
            Ok((restored, resume)) => {
                let thawing = Instant::now();
                thaw_restored(restored.pid)
                    .await
                    .map(|()| (restored, resume + thawing.elapsed()))
            }
            Err(e) => Err(BackendError::from(e)),
        };
        match committed {
            Ok((restored, resume)) => {
                let resume_us = us(resume + arrival.unwrap_or_default());
                let _ = conn.send(&Message::Done { resume_us }).await;
                Ok((
                    IncomingReport {
                        relocation_id: String::new(),
                        service: container_service(service_id),
                        prepare_us,
                        receive_us,
                        restore_us,
                        resume_us,
                        pages_us: None,
                        image_bytes: stats.image_bytes,
                    },
                    restored.pid,
                ))
            }
            Err(e) => {
                // CRIU killed what it restored (or the restored container stayed frozen), but
                // the gate may have brought the port up: the container and its port go before
                // the source resumes the service.
                self.answer_failed(conn, container, e.to_string()).await;
                Err(e)
            }
        }
    }
}

impl LxcBackend {
    /// The target's answer to a failed receive: the half-made container goes first (its port,
    /// veth, directory and cgroups), then `Failed` — so the source, which resumes the service at
    /// once, never meets a duplicate here, and a retry finds the edge clean. (The caller removes
    /// it again on its way out; that is a no-op.)
    async fn answer_failed(&self, conn: &mut Conn, container: &LxcContainer, cause: String) {
        let (lxc, site, c) = (self.lxc.clone(), self.cfg.site.clone(), container.clone());
        match blocking(move || destroy(&lxc, &site, &c)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot remove the failed incoming container"),
            Err(e) => tracing::warn!(error = %e, "cannot remove the failed incoming container"),
        }
        let _ = conn.send(&Message::Failed { cause }).await;
    }
}

/// What a rollback needs from the migration it undoes.
#[derive(Debug, Clone, Copy)]
struct Rollback<'a> {
    out_dir: &'a Path,
    images: &'a Path,
    /// When the checkpoint started.
    frozen: Instant,
}

fn container_service(id: &str) -> Service {
    Service {
        service_id: id.to_owned(),
        ipv4_addr: Ipv4Addr::UNSPECIFIED,
        mac_addr: String::new(),
        ovs_port: String::new(),
        relocation_type: RelocationType::Lxc,
        resource_requirements: Default::default(),
        ue_ipv4_addrs: Vec::new(),
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
    match blocking(move || f.freeze(FREEZE_LIMIT)).await {
        Ok(Ok(took)) => {
            tracing::debug!(took_us = us(took), "container frozen");
            Some(freezer)
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot freeze the container; CRIU freezes it");
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot freeze the container; CRIU freezes it");
            None
        }
    }
}

/// Thaws a container CRIU restored frozen (it was frozen at the dump: [`freeze`]); a no-op for
/// one that runs.
async fn thaw_restored(pid: i32) -> Result<(), BackendError> {
    let Some(freezer) = Freezer::of(Path::new(lxc::CGROUP_ROOT), pid) else {
        return Ok(());
    };
    blocking(move || freezer.thaw()).await?.map_err(Into::into)
}

/// Whether interface `port` exists in the edge's namespace.
pub(crate) fn port_exists(site: &EdgeSite, port: &str) -> bool {
    site.netns
        .tool("ip")
        .args(["link", "show", "dev", port])
        .run()
        .is_ok()
}

/// Attaches the veth's host end `port` to the edge's bridge, turns transmit checksum offload
/// off on it and on `eth0` in the netns of `pid` (the container's init), and pins the gateway's
/// MAC there ([`container::pin_gateway_args`]; CRIU does not carry neighbour entries). Leaves the
/// link state as it is.
pub(crate) fn attach(site: &EdgeSite, port: &str, pid: i32) -> Result<(), CmdError> {
    site.ovs.add_port(&site.bridge, port)?;
    netkit::link::tx_checksum_off(&site.netns, port)?;
    let netns = format!("--net=/proc/{pid}/ns/net");
    Tool::new("nsenter")
        .arg(&netns)
        .args([
            "--",
            "ethtool",
            "-K",
            container::SERVICE_IFNAME,
            "tx",
            "off",
        ])
        .run()?;
    Tool::new("nsenter")
        .args([netns.as_str(), "--", "ip"])
        .args(container::pin_gateway_args())
        .run()
}

/// Removes `port` from the edge's bridge and the interface (if it still exists).
pub(crate) fn detach(site: &EdgeSite, port: &str) -> Result<(), CmdError> {
    let link = match site.netns.ip(["link", "del", port]) {
        Err(CmdError::Failed { stderr, .. }) if stderr.contains("Cannot find device") => Ok(()),
        other => other,
    };
    let ovs = site
        .ovs
        .vsctl(["--if-exists", "del-port", &site.bridge, port])
        .map(drop);
    link.and(ovs)
}

/// Stops and removes a container, its port and its directory; tries every step.
fn destroy(lxc: &Lxc, site: &EdgeSite, c: &LxcContainer) -> Result<(), LxcError> {
    let stopped = lxc.stop(&c.name);
    let detached = detach(site, &c.port).map_err(LxcError::from);
    let destroyed = lxc.destroy(&c.name);
    lxc::remove_cgroups(Path::new(lxc::CGROUP_ROOT), &c.cgroups);
    stopped.and(detached).and(destroyed)
}

impl Backend for LxcBackend {
    fn relocation_type(&self) -> RelocationType {
        RelocationType::Lxc
    }

    fn set_arrival_hook(&self, hook: ArrivalHook) {
        self.arrival.set(hook);
    }

    fn arm_fault(&self, fault: Fault) -> Result<(), BackendError> {
        self.fault.arm(fault);
        Ok(())
    }

    async fn create(&self, spec: ServiceSpec) -> Result<Service, BackendError> {
        let service = spec.service(RelocationType::Lxc)?;
        let container_spec = ContainerSpec::for_command(&spec.command)?;
        self.hosting.reserve(&service.service_id)?;
        let container = LxcContainer {
            name: self.name(&service.service_id),
            port: service.ovs_port.clone(),
            spec: container_spec,
            init_pid: None,
            cgroups: Vec::new(),
        };
        let (lxc, site, net, mut c) = (
            self.lxc.clone(),
            self.cfg.site.clone(),
            self.net_spec(&service),
            container,
        );
        let made = blocking(move || {
            let started = (|| {
                if port_exists(&site, &c.port) {
                    return Err(LxcError::Spec(format!(
                        "interface {} exists in {} already",
                        c.port, site.netns
                    )));
                }
                lxc.prepare()?;
                lxc.define(&c.name, &c.spec, &net, &c.port)?;
                let pid = lxc.start(&c.name, &c.spec.command)?;
                attach(&site, &c.port, pid)?;
                Ok(pid)
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
        .and_then(|r| r.map_err(BackendError::from));
        match made {
            Ok(c) => {
                self.hosting.install(service.clone(), c);
                Ok(service)
            }
            Err(e) => {
                self.hosting.unreserve(&service.service_id);
                Err(e)
            }
        }
    }

    async fn remove(&self, service_id: &str) -> Result<(), BackendError> {
        let h = self.hosting.take_for_removal(service_id)?;
        let (lxc, site) = (self.lxc.clone(), self.cfg.site.clone());
        blocking(move || destroy(&lxc, &site, &h.container)).await??;
        Ok(())
    }

    async fn services(&self) -> Result<Vec<Service>, BackendError> {
        self.hosting.running_services(LxcContainer::tcp_peers).await
    }

    async fn migrate_out(
        &self,
        request: &ExecuteRequest,
    ) -> Result<MigrationReport, MigrationError> {
        self.migrate_out_with(request, Strategy::StopAndCopy).await
    }

    async fn receive(&self, stream: TcpStream) -> Result<IncomingReport, BackendError> {
        self.receive_service(stream).await
    }

    async fn settle(&self) {
        LxcBackend::settle(self).await;
    }
}

/// Removes every container this module hosts and its lxcpath (tests, shutdown of a throw-away
/// deployment).
pub async fn remove_all(backend: &Arc<LxcBackend>) {
    backend.settle().await;
    for id in backend.hosting.ids() {
        let _ = backend.remove(&id).await;
    }
    let lxcpath = backend.lxc.lxcpath.clone();
    let _ = std::fs::remove_file(backend.lxc.criu_conf());
    let _ = std::fs::remove_dir(&lxcpath);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site() -> EdgeSite {
        serde_json::from_value(serde_json::json!({
            "edge": "x", "netns": "tb-edge-x", "bridge": "br-x", "ovs_dir": "/run/t/ovs-x"
        }))
        .expect("site")
    }

    #[test]
    fn the_lxcpath_lives_in_the_work_dir() {
        let cfg = LxcConfig::new("tb", site());
        assert_eq!(cfg.work_dir, Path::new("/dev/shm/testbed-svcmod/tb-x"));
        assert_eq!(cfg.lxcpath(), Path::new("/dev/shm/testbed-svcmod/tb-x/lxc"));
        let b = LxcBackend::new(cfg);
        assert_eq!(b.name("p50"), "tb-svc-p50-x");
        assert_eq!(b.relocation_type(), RelocationType::Lxc);
    }

    #[tokio::test]
    async fn lazy_pages_are_refused_before_anything_happens() {
        let b = LxcBackend::new(LxcConfig::new("tb", site()));
        let request = ExecuteRequest {
            relocation_id: "r".into(),
            service: container_service("p50"),
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
                    source: BackendError::Unsupported(_),
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("lazy-pages"), "{e}");
        let e = b.migrate_out(&request).await.expect_err("unknown service");
        assert!(matches!(
            e,
            MigrationError::NotStarted {
                source: BackendError::UnknownService { .. },
                ..
            }
        ));
    }

    #[test]
    fn only_lxc_services_with_their_port_are_taken() {
        let b = LxcBackend::new(LxcConfig::new("tb", site()));
        let mut s = container_service("p50");
        s.mac_addr = "02:00:00:00:00:50".into();
        s.ovs_port = "s-p50".into();
        assert!(b.check_service(&s).is_ok());
        let criu = Service {
            relocation_type: RelocationType::Criu,
            ..s.clone()
        };
        assert!(b
            .check_service(&criu)
            .expect_err("criu")
            .to_string()
            .contains("this module is LXC"));
        let port = Service {
            ovs_port: "s-other".into(),
            ..s
        };
        assert!(b.check_service(&port).is_err());
    }
}

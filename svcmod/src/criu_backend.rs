//! The CRIU backend: services as process trees in their own namespaces ([`crate::container`]),
//! moved with CRIU ([`crate::criu`]) over the migration connection ([`crate::transfer`]).
//!
//! One migration (S = source module, T = target module), stop-and-copy:
//!
//! | # | S | T |
//! |---|---|---|
//! | 1 | connect from its edge netns to T's backhaul address; `Prepare{service}` | make `<p>-svc-<id>-<T edge>` with the same IP/MAC, veth on T's bridge, **carrier down**; `Prepared` (or `Refused`: S changes nothing) |
//! | 2 | `criu dump` (tree killed, source netns locked by nftables); carrier down | |
//! | 3 | image files, `Restore` | receive into its tmpfs dir; gated `criu restore` into the prepared netns: stops at `post-restore`; `Restored` (or `Failed`) |
//! | 4 | `Commit` | the [`ArrivalHook`] (the daemon tells its SMO, which switches the data path here; ≤ [`crate::ARRIVAL_LIMIT`], never fatal), then the gate brings the carrier up, CRIU resumes the tree; `Done` |
//! | 5 | remove the images, and the source netns and OVS port (in the background after answering, with [`CriuConfig::background_cleanup`]) | |
//!
//! **If anything fails, the source resumes and nothing is lost.** Before step 2 nothing was
//! stopped. A failed dump is undone by CRIU itself (it resumes the tree). After a successful dump
//! the source keeps its namespace (locked, carrier down) and its images until the target reports
//! `Done`: on any failure before `Commit` (transfer, restore, time limit, connection lost, or a
//! `Failed` answer to `Commit`) S closes the connection — T, which never brought its carrier up,
//! aborts its gated restore (CRIU kills what it restored) and removes its namespace — then S
//! brings its own carrier up (the lock still silences the namespace) and restores the tree from
//! its own images into its own namespace; that restore removes the lock. The TCP state in the
//! images is the state the peer last saw, so the peer's retransmissions resume the connection.
//! Only when `Commit` was sent and neither `Done` nor `Failed` came back is the outcome unknown
//! (two-phase commit's window; one message on an established connection between two processes of
//! one host) — reported as [`MigrationError::OutcomeUnknown`].
//!
//! **Post-copy** ([`Strategy::LazyPages`]): S dumps everything but the memory pages and serves
//! them from a CRIU page server on its backhaul address; `Restore{pageServer}` makes T start
//! `criu lazy-pages` against it before the gated restore; after `Done` S waits until every page
//! was fetched (CRIU then kills the frozen source tree) and cleans up. Rollback works while no
//! lazy-pages daemon has fetched from the page server (CRIU serves one session): S then migrates
//! the service to itself — the old namespace loses its veth, port and name (CRIU still holds the
//! service's sockets there), a fresh container takes them with its carrier down, and a local
//! lazy-pages daemon + gated restore bring the service back. Once T's daemon has connected
//! (it does during T's restore) a failure loses the service ([`MigrationError::Lost`]); after
//! CRIU 4.2.1's failed lazy dump the tree resumes with its network still locked and its sockets
//! in repair mode (seen: the stream stalls), so that path cannot be used to roll back.

use crate::container::{self, Carrier, Container, EdgeSite, NetSpec};
use crate::criu::{
    Criu, DumpRequest, LazyDump, PageServer, PipeMaxSize, RestoreRequest, LAZY_PIPE_MAX_SIZE,
};
use crate::hosting::{
    blocking, damage_images, fresh_dir, path_safe, prepare_target, ArrivalSlot, FaultSlot, Hosting,
};
use crate::transfer::{self, Conn, Message};
use crate::{
    us, ArrivalHook, Backend, BackendError, Fault, IncomingReport, MigrationError, MigrationReport,
    ServiceSpec, ServiceState, Stopwatch, Strategy,
};
use model::smo::{ExecuteRequest, RelocationType, Service};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// Where images go unless configured: tmpfs (`/run` is not tmpfs on this machine, `/dev/shm` is).
pub const DEFAULT_WORK_ROOT: &str = "/dev/shm/testbed-svcmod";

/// Time limits of one migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    /// The target making the service's namespace.
    pub prepare: Duration,
    pub dump: Duration,
    /// All images across.
    pub transfer: Duration,
    /// The target's restore until every task is restored.
    pub restore: Duration,
    /// `Commit` → `Done` (and the target's wait for `Commit`).
    pub commit: Duration,
    /// Post-copy: the resumed service's last page (the backhaul through the OVS userspace
    /// datapath moves ~30–50 MB/s here).
    pub pages: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(3),
            prepare: Duration::from_secs(10),
            dump: Duration::from_secs(30),
            transfer: Duration::from_secs(30),
            restore: Duration::from_secs(30),
            commit: Duration::from_secs(10),
            pages: Duration::from_secs(120),
        }
    }
}

/// How a CRIU module is set up.
#[derive(Debug, Clone)]
pub struct CriuConfig {
    /// Namespace prefix (the testbed's, e.g. `tb`): service namespaces are `<prefix>-svc-<id>-<edge>`.
    pub prefix: String,
    /// The edge cloud this module serves.
    pub site: EdgeSite,
    /// Images and CRIU logs (tmpfs); one subdirectory per migration, removed afterwards.
    pub work_dir: PathBuf,
    pub criu: Criu,
    pub strategy: Strategy,
    pub timeouts: Timeouts,
    /// MTU of the service's veth.
    pub mtu: u32,
    /// This module's backhaul address (where its page server listens in post-copy migrations).
    pub backhaul_addr: Option<Ipv4Addr>,
    /// First TCP port of the page servers (one per migration, cycling through 100 ports).
    pub page_server_port: u16,
    /// Keep each migration's images and CRIU logs (debugging; they are removed otherwise).
    pub keep_work: bool,
    /// Remove a migrated service's source container in the background, after answering the
    /// migration (the daemon: Execute answers 40–55 ms sooner). The service leaves the table at
    /// once; a service of the same id arriving meanwhile waits for the removal, and
    /// [`CriuBackend::settle`] waits for all of them. Off: removed before `migrate_out` returns.
    pub background_cleanup: bool,
}

impl CriuConfig {
    /// The defaults for `site`: images under [`DEFAULT_WORK_ROOT`]`/<prefix>-<edge>`, `criu` from
    /// `PATH`, stop-and-copy, MTU 1500.
    pub fn new(prefix: impl Into<String>, site: EdgeSite) -> Self {
        let prefix = prefix.into();
        Self {
            work_dir: Path::new(DEFAULT_WORK_ROOT).join(format!("{prefix}-{}", site.edge)),
            prefix,
            site,
            criu: Criu::default(),
            strategy: Strategy::StopAndCopy,
            timeouts: Timeouts::default(),
            mtu: 1500,
            backhaul_addr: None,
            page_server_port: 27000,
            keep_work: false,
            background_cleanup: false,
        }
    }
}

/// The CRIU service module backend of one edge cloud.
#[derive(Debug)]
pub struct CriuBackend {
    cfg: CriuConfig,
    hosting: Hosting<Container>,
    /// Migrations started (page-server ports cycle with it).
    migrations: AtomicU16,
    arrival: ArrivalSlot,
    /// A fault armed for the next incoming migration.
    fault: FaultSlot,
    /// Held while a `criu dump` runs: one dump at a time. CRIU's parasite, in a task whose
    /// `/proc` belongs to another PID namespace (every service here: own PID namespace, the
    /// host's `/proc`), mounts a proc at `proc.crtools` *in the task's working directory*;
    /// services share theirs, so parallel dumps collided there ("Can't get proc fd", "Parasite
    /// failed to dump /proc/self/cgroup": every run of a shortened `five-ues` had one).
    dumps: tokio::sync::Mutex<()>,
}

impl CriuBackend {
    /// A module with no services yet.
    pub fn new(cfg: CriuConfig) -> Self {
        Self {
            cfg,
            hosting: Hosting::default(),
            migrations: AtomicU16::new(0),
            arrival: ArrivalSlot::default(),
            fault: FaultSlot::default(),
            dumps: tokio::sync::Mutex::new(()),
        }
    }

    /// Waits for the source containers being removed in the background (shutdown, tests).
    pub async fn settle(&self) {
        self.hosting.settle().await;
    }

    /// The module's configuration.
    pub fn config(&self) -> &CriuConfig {
        &self.cfg
    }

    /// The container of a hosted service (for tests and the daemon's status page).
    pub fn container(&self, service_id: &str) -> Option<Container> {
        self.hosting.get(service_id).map(|h| h.container)
    }

    /// The state of a hosted service.
    pub fn state(&self, service_id: &str) -> Option<ServiceState> {
        self.hosting.get(service_id).map(|h| h.state)
    }

    fn net_spec(&self, service: &Service) -> NetSpec {
        NetSpec {
            service_id: service.service_id.clone(),
            ipv4_addr: service.ipv4_addr,
            mac_addr: service.mac_addr.clone(),
            mtu: self.cfg.mtu,
        }
    }

    fn check_service(&self, service: &Service) -> Result<(), BackendError> {
        crate::hosting::check_incoming(service, RelocationType::Criu)
    }

    /// Moves a service with an explicit strategy (the trait's `migrate_out` uses the configured one).
    pub async fn migrate_out_with(
        &self,
        request: &ExecuteRequest,
        strategy: Strategy,
    ) -> Result<MigrationReport, MigrationError> {
        let id = request.service.service_id.clone();
        self.hosting
            .migrate_out(&id, async |service, container| {
                self.run_migration(request, strategy, service, container)
                    .await
            })
            .await
    }

    async fn run_migration(
        &self,
        request: &ExecuteRequest,
        strategy: Strategy,
        service: Service,
        container: &mut Container,
    ) -> Result<MigrationReport, MigrationError> {
        let id = service.service_id.clone();
        let not_started = |source: BackendError| MigrationError::NotStarted {
            service_id: id.clone(),
            source,
        };
        let t = self.cfg.timeouts;
        let mut sw = Stopwatch::start();
        let (mut report, target) =
            MigrationReport::starting(request, &service, strategy).map_err(&not_started)?;
        let page_server = match strategy {
            Strategy::StopAndCopy => None,
            Strategy::LazyPages => Some(self.page_server().map_err(&not_started)?),
        };
        let root = container.root_pid().ok_or_else(|| {
            not_started(BackendError::Container(
                container::ContainerError::NoRootProcess {
                    netns: container.netns().name().to_owned(),
                    waited_ms: 0,
                },
            ))
        })?;
        let inode = container
            .netns_inode()
            .ok_or_else(|| not_started(crate::criu::CriuError::NoNetns { pid: root }.into()))?;
        let _pipes = match page_server {
            Some(_) => {
                Some(PipeMaxSize::raise(LAZY_PIPE_MAX_SIZE).map_err(|e| not_started(e.into()))?)
            }
            None => None,
        };

        // 1. The target makes the service's namespace, carrier down.
        let began = Instant::now();
        let mut conn = prepare_target(
            &self.cfg.site.netns,
            target,
            &Message::Prepare {
                relocation_id: request.relocation_id.clone(),
                service: service.clone(),
                container: None,
                lxd: None,
            },
            t.connect,
            t.prepare,
        )
        .await
        .map_err(&not_started)?;
        report.prepare_us = sw.record("prepare target", began);

        // 2. Dump. From a successful dump on, the service is stopped (post-copy: frozen, and
        // killed by CRIU once the target has every page).
        let out_dir = self
            .cfg
            .work_dir
            .join(format!("out-{id}-{}", path_safe(&request.relocation_id)));
        fresh_dir(&out_dir).map_err(&not_started)?;
        let images = out_dir.join("images");
        let dump_req = DumpRequest {
            pid: root,
            netns_inode: inode,
            images: images.clone(),
            log: out_dir.join("dump.log"),
        };
        let one_dump = self.dumps.lock().await;
        let frozen = Instant::now();
        let dumped = match page_server {
            None => self
                .cfg
                .criu
                .dump(&dump_req, t.dump)
                .await
                .map(|d| (d, None)),
            Some(ps) => self
                .cfg
                .criu
                .dump_lazy(&dump_req, ps, &self.cfg.site.netns.path(), t.dump)
                .await
                .map(|ld| (ld.dumped(), Some(ld))),
        };
        drop(one_dump);
        let (dumped, mut lazy_dump) = match dumped {
            Ok(d) => d,
            Err(e) => {
                drop(conn);
                self.remove_work(&out_dir);
                // CRIU resumes the tree when a dump fails; if it is gone all the same, say so.
                if container.owns(root) {
                    return Err(not_started(e.into()));
                }
                self.give_up_source(container, &out_dir).await;
                return Err(MigrationError::Lost {
                    service_id: id,
                    cause: e.to_string(),
                    fallback: "the dump failed and took the service with it".into(),
                });
            }
        };
        report.dump_us = sw.record(
            if page_server.is_some() {
                "dump (without lazy pages)"
            } else {
                "dump"
            },
            frozen,
        );
        report.image_bytes = dumped.image_bytes;
        container.set_root_pid(None);
        let rollback = Rollback {
            out_dir: &out_dir,
            images: &images,
            frozen,
            page_server,
        };

        // 3. Images across, restore at the target (gated).
        let moved: Result<u64, String> = async {
            let c = container.clone();
            blocking(move || c.set_carrier(Carrier::Down))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("cannot take the source carrier down: {e}"))?;
            let began = Instant::now();
            tokio::time::timeout(t.transfer, conn.send_images(&images))
                .await
                .map_err(|_| format!("images not sent within {} ms", t.transfer.as_millis()))?
                .map_err(|e| e.to_string())?;
            conn.send(&Message::Restore {
                page_server: page_server.map(|ps| format!("{}:{}", ps.addr, ps.port)),
            })
            .await
            .map_err(|e| e.to_string())?;
            report.transfer_us = sw.record("transfer images", began);
            let limit = t.restore + t.transfer;
            match conn.recv_within(limit, "answer to restore").await {
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
                return Err(self
                    .roll_back(container, rollback, lazy_dump, cause, report, sw)
                    .await);
            }
        };

        // 4. Commit.
        if let Err(e) = conn.send(&Message::Commit).await {
            drop(conn);
            let cause = format!("cannot send commit: {e}");
            return Err(self
                .roll_back(container, rollback, lazy_dump, cause, report, sw)
                .await);
        }
        report.resume_us = match conn.recv_within(t.commit, "answer to commit").await {
            Ok(Message::Done { resume_us }) => resume_us,
            Ok(Message::Failed { cause }) => {
                // The target holds nothing (CRIU killed what it restored): resuming here is safe.
                drop(conn);
                let cause = format!("target failed to resume: {cause}");
                return Err(self
                    .roll_back(container, rollback, lazy_dump, cause, report, sw)
                    .await);
            }
            other => {
                let cause = match other {
                    Ok(m) => format!("unexpected {} after commit", m.kind()),
                    Err(e) => e.to_string(),
                };
                if let Some(ld) = lazy_dump.take() {
                    // Let the pages go to the target if it is there after all.
                    let _ = ld.wait_finished(t.pages).await;
                }
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

        // Post-copy: the service runs at the target and pulls the rest of its memory.
        if let Some(ld) = lazy_dump.take() {
            let began = Instant::now();
            let served = ld.wait_finished(t.pages).await;
            report.pages_us = Some(sw.record("serve lazy pages", began));
            if let Err(e) = served {
                self.give_up_source(container, &out_dir).await;
                return Err(MigrationError::OutcomeUnknown {
                    service_id: id,
                    cause: format!("post-copy page transfer failed after the target resumed: {e}"),
                });
            }
        }

        // 5. The source's leftovers.
        let began = Instant::now();
        if self.cfg.background_cleanup {
            // The images go now (tmpfs, quick); the container after the answer.
            self.remove_work(&out_dir);
            let mut c = container.clone();
            container.set_root_pid(None);
            let leaving = self.hosting.leaving(&id);
            tokio::spawn(async move {
                let began = Instant::now();
                let removed = blocking(move || c.destroy().map_err(BackendError::from))
                    .await
                    .and_then(|r| r);
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

    /// Removes a migration's work directory (unless configured to keep it).
    fn remove_work(&self, dir: &Path) {
        if !self.cfg.keep_work {
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    /// Where this module's page server listens for a post-copy migration.
    fn page_server(&self) -> Result<PageServer, BackendError> {
        let addr = self.cfg.backhaul_addr.ok_or_else(|| {
            BackendError::BadRequest(
                "lazy pages need the module's backhaul address (CriuConfig::backhaul_addr)".into(),
            )
        })?;
        let n = self.migrations.fetch_add(1, Ordering::Relaxed);
        Ok(PageServer {
            addr,
            port: self.cfg.page_server_port.saturating_add(n % 100),
        })
    }

    /// Removes the source container (its tree is gone since the dump) and the images.
    async fn give_up_source(&self, container: &mut Container, out_dir: &Path) {
        let mut c = container.clone();
        let out_dir = out_dir.to_owned();
        let keep = self.cfg.keep_work;
        let removed = blocking(move || {
            let r = c.destroy();
            if !keep {
                let _ = std::fs::remove_dir_all(&out_dir);
            }
            r.map_err(BackendError::from)
        })
        .await
        .and_then(|r| r);
        if let Err(e) = removed {
            tracing::warn!(error = %e, "cannot remove the source container");
        }
        container.set_root_pid(None);
    }

    /// Resumes the service at the source from the source's images (see the module docs). The
    /// caller has closed the migration connection, so the target aborts; its carrier never came
    /// up.
    async fn roll_back(
        &self,
        container: &mut Container,
        rb: Rollback<'_>,
        lazy_dump: Option<LazyDump>,
        cause: String,
        mut report: MigrationReport,
        mut sw: Stopwatch,
    ) -> MigrationError {
        let id = report.service.service_id.clone();
        tracing::warn!(service = %id, %cause, "migration failed after the dump, resuming at the source");
        let began = Instant::now();
        let restored = match (lazy_dump, rb.page_server) {
            (Some(ld), Some(ps)) => {
                self.restore_lazy_at_source(container, &report.service, &rb, ld, ps)
                    .await
            }
            _ => self.restore_at_source(container, &rb).await,
        };
        self.remove_work(rb.out_dir);
        match restored {
            Ok(pid) => {
                container.set_root_pid(Some(pid));
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
                let mut c = container.clone();
                let _ = blocking(move || c.destroy()).await;
                MigrationError::Lost {
                    service_id: id,
                    cause,
                    fallback,
                }
            }
        }
    }

    /// Stop-and-copy rollback: carrier up (the dump's lock still silences the namespace), then
    /// restore from the local images, which lifts the lock.
    async fn restore_at_source(
        &self,
        container: &Container,
        rb: &Rollback<'_>,
    ) -> Result<i32, String> {
        let c = container.clone();
        blocking(move || c.set_carrier(Carrier::Up))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot bring the source carrier up: {e}"))?;
        let req = RestoreRequest {
            images: rb.images.to_owned(),
            log: rb.out_dir.join("restore-at-source.log"),
            netns_path: container.netns().path(),
            lazy: false,
        };
        self.cfg
            .criu
            .restore(&req, self.cfg.timeouts.restore)
            .await
            .map(|r| r.pid)
            .map_err(|e| e.to_string())
    }

    /// Post-copy rollback: possible only while nobody fetched pages from the page server (CRIU
    /// serves one session). During a lazy dump CRIU itself holds the service's TCP sockets (in
    /// repair mode) until that session ends, so the old namespace cannot take the restored
    /// sockets ("Can't connect inet socket back"). The rollback therefore migrates the service
    /// to *this* edge: the old namespace loses its veth, port and name (CRIU kills the frozen
    /// tree when the pages are served), a fresh container with the same name, IP and MAC is made
    /// with its carrier down, and a local lazy-pages daemon + gated restore bring the service
    /// back exactly as a target would.
    async fn restore_lazy_at_source(
        &self,
        container: &mut Container,
        service: &Service,
        rb: &Rollback<'_>,
        lazy_dump: LazyDump,
        ps: PageServer,
    ) -> Result<i32, String> {
        let t = self.cfg.timeouts;
        if lazy_dump.page_server_used() {
            lazy_dump.kill().await;
            return Err(
                "post-copy: the target had started fetching pages, and CRIU serves them once"
                    .into(),
            );
        }
        let old = container.clone();
        let site = self.cfg.site.clone();
        let prefix = self.cfg.prefix.clone();
        let net = self.net_spec(service);
        let fresh = blocking(move || {
            old.remove_network()?;
            Container::prepare(&site, &prefix, &net, Carrier::Down)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot make a fresh source container: {e}"));
        let fresh = match fresh {
            Ok(c) => c,
            Err(e) => {
                lazy_dump.kill().await;
                return Err(e);
            }
        };
        *container = fresh;
        let daemon = match self
            .cfg
            .criu
            .lazy_pages_daemon(
                rb.images,
                &rb.out_dir.join("lazy-pages-at-source.log"),
                ps,
                &self.cfg.site.netns.path(),
                t.restore,
            )
            .await
        {
            Ok(d) => d,
            Err(e) => {
                lazy_dump.kill().await;
                return Err(e.to_string());
            }
        };
        let req = RestoreRequest {
            images: rb.images.to_owned(),
            log: rb.out_dir.join("restore-at-source.log"),
            netns_path: container.netns().path(),
            lazy: true,
        };
        let restored = async {
            let mut gated = self
                .cfg
                .criu
                .restore_gated(
                    &req,
                    &rb.out_dir.join("gate"),
                    &container.carrier_up_command(),
                )
                .await?;
            if let Err(e) = gated.wait_restored(t.restore).await {
                gated.abort(Duration::from_secs(5)).await;
                return Err(e);
            }
            gated.commit(t.commit).await
        }
        .await;
        match restored {
            Ok((r, _)) => {
                let pages = daemon.wait_finished(t.pages).await;
                let served = lazy_dump.wait_finished(t.pages).await;
                if let Err(e) = pages.and(served) {
                    tracing::error!(error = %e, "post-copy rollback: page transfer failed after the resume");
                }
                Ok(r.pid)
            }
            Err(e) => {
                daemon.kill().await;
                lazy_dump.kill().await;
                Err(e.to_string())
            }
        }
    }

    /// The target side of one migration (see the module docs); `Ok` once the service runs here.
    pub async fn receive_service(&self, stream: TcpStream) -> Result<IncomingReport, BackendError> {
        let t = self.cfg.timeouts;
        let mut conn = Conn::new(stream);
        let (relocation_id, service) = match conn.recv_within(t.prepare, "prepare").await? {
            Message::Prepare {
                relocation_id,
                service,
                ..
            } => (relocation_id, service),
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
        if let Err(e) = self
            .check_service(&service)
            .and_then(|()| self.hosting.reserve(&id))
        {
            let _ = conn
                .send(&Message::Refused {
                    cause: e.to_string(),
                })
                .await;
            return Err(e);
        }
        let began = Instant::now();
        let site = self.cfg.site.clone();
        let prefix = self.cfg.prefix.clone();
        let net = self.net_spec(&service);
        let prepared = blocking(move || Container::prepare(&site, &prefix, &net, Carrier::Down))
            .await
            .and_then(|r| r.map_err(BackendError::from));
        let mut container = match prepared {
            Ok(c) => c,
            Err(e) => {
                self.hosting.unreserve(&id);
                let _ = conn
                    .send(&Message::Refused {
                        cause: e.to_string(),
                    })
                    .await;
                return Err(e);
            }
        };
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
                container.set_root_pid(Some(pid));
                report.relocation_id = relocation_id;
                report.service = service.clone();
                self.hosting.install(service, container);
                Ok(report)
            }
            Err(e) => {
                let mut c = container.clone();
                let _ = blocking(move || c.destroy()).await;
                self.hosting.unreserve(&id);
                Err(e)
            }
        }
    }

    async fn receive_and_restore(
        &self,
        conn: &mut Conn,
        container: &Container,
        in_dir: &Path,
        prepare_us: u64,
        ids: (&str, &str),
    ) -> Result<(IncomingReport, i32), BackendError> {
        let t = self.cfg.timeouts;
        conn.send(&Message::Prepared {
            took_us: prepare_us,
        })
        .await?;
        fresh_dir(in_dir)?;
        let images = in_dir.join("images");
        fresh_dir(&images)?;
        // The source dumps first: allow for it before the first image byte.
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
        let page_server = match conn.recv_within(t.transfer, "restore").await? {
            Message::Restore { page_server: None } => None,
            Message::Restore {
                page_server: Some(addr),
            } => match addr.parse::<SocketAddr>() {
                Ok(SocketAddr::V4(a)) => Some(PageServer {
                    addr: *a.ip(),
                    port: a.port(),
                }),
                _ => {
                    let e = BackendError::BadRequest(format!("bad page server `{addr}`"));
                    answer_failed(conn, container, e.to_string()).await;
                    return Err(e);
                }
            },
            other => {
                return Err(BackendError::BadRequest(format!(
                    "expected restore, got {}",
                    other.kind()
                )))
            }
        };
        let _pipes = match page_server {
            Some(_) => match PipeMaxSize::raise(LAZY_PIPE_MAX_SIZE) {
                Ok(g) => Some(g),
                Err(e) => {
                    answer_failed(conn, container, e.to_string()).await;
                    return Err(e.into());
                }
            },
            None => None,
        };
        if self.fault.take(Fault::CorruptImages) {
            damage_images(&images)?;
        }
        // Post-copy: the lazy-pages daemon must be up before the restore hands it the tasks.
        let daemon = match page_server {
            None => None,
            Some(ps) => {
                let started = self
                    .cfg
                    .criu
                    .lazy_pages_daemon(
                        &images,
                        &in_dir.join("lazy-pages.log"),
                        ps,
                        &self.cfg.site.netns.path(),
                        t.restore,
                    )
                    .await;
                match started {
                    Ok(d) => Some(d),
                    Err(e) => {
                        answer_failed(conn, container, e.to_string()).await;
                        return Err(e.into());
                    }
                }
            }
        };
        let req = RestoreRequest {
            images: images.clone(),
            log: in_dir.join("restore.log"),
            netns_path: container.netns().path(),
            lazy: page_server.is_some(),
        };
        let gate = in_dir.join("gate");
        let outcome = self
            .restore_and_commit(conn, container, &req, &gate, ids)
            .await;
        let (restore_us, resume_us, pid) = match outcome {
            Ok(o) => o,
            Err(e) => {
                if let Some(d) = daemon {
                    d.kill().await;
                }
                return Err(e);
            }
        };
        // Post-copy: the service runs; the daemon pulls the rest of its memory.
        // A failure here cannot be undone (the source gave the service up at Commit): the service
        // stays, and the error is logged.
        let pages_us = match daemon {
            None => None,
            Some(d) => match d.wait_finished(t.pages).await {
                Ok(took) => Some(us(took)),
                Err(e) => {
                    tracing::error!(error = %e, "post-copy page transfer failed after the resume");
                    None
                }
            },
        };
        Ok((
            IncomingReport {
                relocation_id: String::new(),
                service: placeholder_service(""),
                prepare_us,
                receive_us,
                restore_us,
                resume_us,
                pages_us,
                image_bytes: stats.image_bytes,
            },
            pid,
        ))
    }

    /// The gated restore, the source's decision and the resume. Answers the source at every
    /// step; returns the restore and resume times and the restored root's PID. `ids`: the
    /// relocation and the service, for the arrival hook called between `Commit` and the resume.
    async fn restore_and_commit(
        &self,
        conn: &mut Conn,
        container: &Container,
        req: &RestoreRequest,
        gate: &Path,
        (relocation_id, service_id): (&str, &str),
    ) -> Result<(u64, u64, i32), BackendError> {
        let t = self.cfg.timeouts;
        let mut gated = match self
            .cfg
            .criu
            .restore_gated(req, gate, &container.carrier_up_command())
            .await
        {
            Ok(g) => g,
            Err(e) => {
                answer_failed(conn, container, e.to_string()).await;
                return Err(e.into());
            }
        };
        let restore_us = match gated.wait_restored(t.restore).await {
            Ok(d) => us(d),
            Err(e) => {
                gated.abort(Duration::from_secs(5)).await;
                answer_failed(conn, container, e.to_string()).await;
                return Err(e.into());
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
        match gated.commit(t.commit).await {
            Ok((restored, resume)) => {
                // The resume as the source sees it: the arrival report is part of it.
                let resume_us = us(resume + arrival.unwrap_or_default());
                // The source gave the service up when it sent Commit: a lost Done changes nothing.
                let _ = conn.send(&Message::Done { resume_us }).await;
                Ok((restore_us, resume_us, restored.pid))
            }
            Err(e) => {
                // CRIU killed what it restored, but the gate may have brought the carrier up:
                // remove the namespace before the source resumes the service, then tell it.
                answer_failed(conn, container, e.to_string()).await;
                Err(e.into())
            }
        }
    }
}

/// The target's answer to a failed receive: the half-made container goes first (its veth, OVS
/// port and namespace), then `Failed` — so the source, which resumes the service at once, never
/// meets a live duplicate here, and a retry finds the edge clean. (The caller removes it again
/// on its way out; that is a no-op.)
async fn answer_failed(conn: &mut Conn, container: &Container, cause: String) {
    let mut c = container.clone();
    match blocking(move || c.destroy()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot remove the failed incoming container"),
        Err(e) => tracing::warn!(error = %e, "cannot remove the failed incoming container"),
    }
    let _ = conn.send(&Message::Failed { cause }).await;
}

/// What a rollback needs from the migration it undoes.
#[derive(Debug, Clone, Copy)]
struct Rollback<'a> {
    out_dir: &'a Path,
    images: &'a Path,
    /// When the dump started.
    frozen: Instant,
    /// Post-copy: the source's page server.
    page_server: Option<PageServer>,
}

fn placeholder_service(id: &str) -> Service {
    Service {
        service_id: id.to_owned(),
        ipv4_addr: Ipv4Addr::UNSPECIFIED,
        mac_addr: String::new(),
        ovs_port: String::new(),
        relocation_type: RelocationType::Criu,
        resource_requirements: Default::default(),
        ue_ipv4_addrs: Vec::new(),
    }
}

impl Backend for CriuBackend {
    fn relocation_type(&self) -> RelocationType {
        RelocationType::Criu
    }

    fn set_arrival_hook(&self, hook: ArrivalHook) {
        self.arrival.set(hook);
    }

    fn arm_fault(&self, fault: Fault) -> Result<(), BackendError> {
        self.fault.arm(fault);
        Ok(())
    }

    async fn create(&self, spec: ServiceSpec) -> Result<Service, BackendError> {
        let service = spec.service(RelocationType::Criu)?;
        if spec.command.is_empty() {
            return Err(BackendError::BadRequest("empty command".into()));
        }
        self.hosting.reserve(&service.service_id)?;
        let site = self.cfg.site.clone();
        let prefix = self.cfg.prefix.clone();
        let net = self.net_spec(&service);
        let command = spec.command.clone();
        let made = blocking(move || {
            let mut c = Container::prepare(&site, &prefix, &net, Carrier::Up)?;
            match c.start(&command) {
                Ok(_) => Ok(c),
                Err(e) => {
                    let _ = c.destroy();
                    Err(e)
                }
            }
        })
        .await
        .and_then(|r| r.map_err(BackendError::from));
        match made {
            Ok(container) => {
                self.hosting.install(service.clone(), container);
                Ok(service)
            }
            Err(e) => {
                self.hosting.unreserve(&service.service_id);
                Err(e)
            }
        }
    }

    async fn remove(&self, service_id: &str) -> Result<(), BackendError> {
        let mut h = self.hosting.take_for_removal(service_id)?;
        blocking(move || h.container.destroy()).await??;
        Ok(())
    }

    async fn services(&self) -> Result<Vec<Service>, BackendError> {
        self.hosting.running_services(Container::tcp_peers).await
    }

    async fn migrate_out(
        &self,
        request: &ExecuteRequest,
    ) -> Result<MigrationReport, MigrationError> {
        self.migrate_out_with(request, self.cfg.strategy).await
    }

    async fn receive(&self, stream: TcpStream) -> Result<IncomingReport, BackendError> {
        self.receive_service(stream).await
    }

    async fn settle(&self) {
        CriuBackend::settle(self).await;
    }
}

/// Removes every container this module hosts (tests, shutdown of a throw-away deployment).
pub async fn remove_all(backend: &Arc<CriuBackend>) {
    backend.settle().await;
    let ids = backend.hosting.ids();
    for id in ids {
        let _ = backend.remove(&id).await;
    }
}

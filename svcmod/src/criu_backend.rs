//! The CRIU runtime: services as process trees in their own namespaces ([`crate::container`]),
//! moved with CRIU ([`crate::criu`]); [`CriuBackend`] is the driver over it. The move's protocol
//! and outcome rule are [`crate::protocol`]'s; what CRIU does in its steps:
//!
//! | step | source | target |
//! |---|---|---|
//! | offer / accept | checks the tree and its netns; post-copy: picks the page server (on the module's backhaul address) | makes `<p>-svc-<id>-<T edge>` with the same IP/MAC, veth on T's bridge, **carrier down** |
//! | checkpoint | `criu dump` (one at a time: the module's dump lock; the tree killed, its netns locked by nftables), then the carrier down | |
//! | restore | | gated `criu restore` into the prepared netns: stops at `post-restore` (post-copy: a `criu lazy-pages` daemon first) |
//! | go live | | the gate brings the carrier up, CRIU resumes the tree |
//! | resume at source | carrier up (the lock still silences the netns), restore from its own images (which lifts the lock) | |
//!
//! A failed dump is undone by CRIU itself (it resumes the tree): the move did not start, unless
//! the tree is gone all the same. After a successful dump the source keeps its namespace
//! (locked, carrier down) and its images until the target reports `Done`: the TCP state in the
//! images is the state the peer last saw, so after a rollback the peer's retransmissions resume
//! the connection.
//!
//! **Post-copy** ([`Strategy::LazyPages`]): S dumps everything but the memory pages and serves
//! them from a CRIU page server on its backhaul address (named in the offer); T starts
//! `criu lazy-pages` against it before the gated restore; after `Done` S waits until every page
//! was fetched (CRIU then kills the frozen source tree). Rollback works while no lazy-pages
//! daemon has fetched from the page server (CRIU serves one session): S then migrates the
//! service to itself — the old namespace loses its veth, port and name (CRIU still holds the
//! service's sockets there), a fresh container takes them with its carrier down, and a local
//! lazy-pages daemon + gated restore bring the service back. Once T's daemon has connected (it
//! does during T's restore) a failure loses the service ([`crate::MigrationError::Lost`]); after
//! CRIU 4.2.1's failed lazy dump the tree resumes with its network still locked and its sockets
//! in repair mode (seen: the stream stalls), so that path cannot be used to roll back.

pub use crate::runtime::{Timeouts, DEFAULT_WORK_ROOT};

use crate::container::{self, Carrier, Container, ContainerError, NetSpec};
use crate::criu::{
    Criu, CriuError, DumpRequest, GatedRestore, LazyDaemon, LazyDump, PageServer, PipeMaxSize,
    RestoreRequest, LAZY_PIPE_MAX_SIZE,
};
use crate::driver::Driver;
use crate::error::RuntimeError;
use crate::hosting::blocking_try;
use crate::runtime::{
    decode_offer, moves_prefix, CheckpointError, Checkpointed, Config, Found, Left, Leg, Resumed,
    Runtime, Transport,
};
use crate::service::{ServiceSpec, Strategy};
use model::smo::{RelocationType, Service};
use model::timeline::us;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

/// The CRIU runtime's own options.
#[derive(Debug, Clone)]
pub struct CriuOptions {
    pub criu: Criu,
    /// This module's backhaul address (where its page server listens in post-copy migrations).
    pub backhaul_addr: Option<Ipv4Addr>,
    /// First TCP port of the page servers (one per migration, cycling through 100 ports).
    pub page_server_port: u16,
}

impl Default for CriuOptions {
    /// `criu` from `PATH`, page servers from port 27000, no backhaul address (no post-copy).
    fn default() -> Self {
        Self {
            criu: Criu::default(),
            backhaul_addr: None,
            page_server_port: 27000,
        }
    }
}

/// How a CRIU module is set up.
pub type CriuConfig = Config<CriuOptions>;

/// The CRIU service module backend of one edge cloud.
pub type CriuBackend = Driver<CriuRuntime>;

/// Process trees in their own namespaces, moved with CRIU.
#[derive(Debug)]
pub struct CriuRuntime {
    cfg: CriuConfig,
    /// Migrations started (page-server ports cycle with it).
    migrations: AtomicU16,
    /// Held while a `criu dump` runs: one dump at a time. CRIU's parasite, in a task whose
    /// `/proc` belongs to another PID namespace (every service here: own PID namespace, the
    /// host's `/proc`), mounts a proc at `proc.crtools` *in the task's working directory*;
    /// services share theirs, so parallel dumps collided there ("Can't get proc fd", "Parasite
    /// failed to dump /proc/self/cgroup": every run of a shortened `five-ues` had one).
    dumps: tokio::sync::Mutex<()>,
}

/// What the target needs from a CRIU source: post-copy's page server (absent: stop-and-copy).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CriuOffer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_server: Option<SocketAddrV4>,
}

/// The source's side of one move.
#[derive(Debug)]
pub struct CriuOutgoing {
    root: i32,
    netns_inode: u64,
    page_server: Option<PageServer>,
    _pipes: Option<PipeMaxSize>,
    /// Post-copy: the dump serving the pages.
    lazy_dump: Option<LazyDump>,
}

/// The target's side of one move.
#[derive(Debug)]
pub struct CriuIncoming {
    page_server: Option<PageServer>,
    _pipes: Option<PipeMaxSize>,
    daemon: Option<LazyDaemon>,
    gated: Option<GatedRestore>,
}

impl CriuRuntime {
    fn criu(&self) -> &Criu {
        &self.cfg.runtime.criu
    }

    /// Where this module's page server listens for a post-copy migration.
    fn page_server(&self) -> Result<PageServer, RuntimeError> {
        let addr = self.cfg.runtime.backhaul_addr.ok_or_else(|| {
            RuntimeError::State(
                "lazy pages need the module's backhaul address (CriuOptions::backhaul_addr)".into(),
            )
        })?;
        let n = self.migrations.fetch_add(1, Ordering::Relaxed);
        Ok(PageServer {
            addr,
            port: self.cfg.runtime.page_server_port.saturating_add(n % 100),
        })
    }

    /// Stop-and-copy rollback: carrier up (the dump's lock still silences the namespace), then
    /// restore from the local images, which lifts the lock.
    async fn restore_at_source(&self, c: &Container, leg: &Leg) -> Result<i32, RuntimeError> {
        let up = c.clone();
        blocking_try(move || up.set_carrier(Carrier::Up)).await?;
        let req = RestoreRequest {
            images: leg.images(),
            log: leg.work.join("restore-at-source.log"),
            netns_path: c.netns().path(),
            lazy: false,
        };
        Ok(self
            .criu()
            .restore(&req, self.cfg.timeouts.restore)
            .await?
            .pid)
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
        leg: &Leg,
        lazy_dump: LazyDump,
        ps: PageServer,
    ) -> Result<i32, RuntimeError> {
        let t = self.cfg.timeouts;
        if lazy_dump.page_server_used() {
            lazy_dump.kill().await;
            return Err(RuntimeError::State(
                "post-copy: the target had started fetching pages, and CRIU serves them once"
                    .into(),
            ));
        }
        let (old, site, prefix) = (
            container.clone(),
            self.cfg.site.clone(),
            self.cfg.prefix.clone(),
        );
        let net = NetSpec::of(&leg.service, self.cfg.mtu);
        let fresh = blocking_try(move || {
            old.remove_network()?;
            Container::prepare(&site, &prefix, &net, Carrier::Down)
        })
        .await;
        *container = match fresh {
            Ok(c) => c,
            Err(e) => {
                lazy_dump.kill().await;
                return Err(e);
            }
        };
        let restored = async {
            let daemon = self
                .criu()
                .lazy_pages_daemon(
                    &leg.images(),
                    &leg.work.join("lazy-pages-at-source.log"),
                    ps,
                    &self.cfg.site.netns.path(),
                    t.restore,
                )
                .await?;
            let req = RestoreRequest {
                images: leg.images(),
                log: leg.work.join("restore-at-source.log"),
                netns_path: container.netns().path(),
                lazy: true,
            };
            let gate = leg.work.join("gate");
            let resumed = async {
                let mut gated = self
                    .criu()
                    .restore_gated(&req, &gate, &container.carrier_up_command())
                    .await?;
                if let Err(e) = gated.wait_restored(t.restore).await {
                    gated.abort(Duration::from_secs(5)).await;
                    return Err(e);
                }
                gated.commit(t.commit).await
            }
            .await;
            match resumed {
                Ok((r, _)) => Ok((r.pid, daemon)),
                Err(e) => {
                    daemon.kill().await;
                    Err(e)
                }
            }
        }
        .await;
        match restored {
            Ok((pid, daemon)) => {
                let pages = daemon.wait_finished(t.pages).await;
                let served = lazy_dump.wait_finished(t.pages).await;
                if let Err(e) = pages.and(served) {
                    tracing::error!(error = %e, "post-copy rollback: page transfer failed after the resume");
                }
                Ok(pid)
            }
            Err(e) => {
                lazy_dump.kill().await;
                Err(e.into())
            }
        }
    }
}

impl Runtime for CriuRuntime {
    type Options = CriuOptions;
    type Container = Container;
    type Outgoing = CriuOutgoing;
    type Incoming = CriuIncoming;

    const RELOCATION_TYPE: RelocationType = RelocationType::Criu;
    const TRANSPORT: Transport = Transport::Images;

    fn new(cfg: CriuConfig) -> Self {
        Self {
            cfg,
            migrations: AtomicU16::new(0),
            dumps: tokio::sync::Mutex::new(()),
        }
    }

    fn config(&self) -> &CriuConfig {
        &self.cfg
    }

    fn supports(_strategy: Strategy) -> bool {
        true
    }

    async fn start(
        &self,
        spec: &ServiceSpec,
        service: &Service,
    ) -> Result<Container, RuntimeError> {
        let (site, prefix) = (self.cfg.site.clone(), self.cfg.prefix.clone());
        let net = NetSpec::of(service, self.cfg.mtu);
        let command = spec.command.clone();
        blocking_try(move || {
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
    }

    async fn destroy(&self, container: &Container) -> Result<(), RuntimeError> {
        let mut c = container.clone();
        blocking_try(move || c.destroy()).await
    }

    fn peers(container: &Container) -> Result<Vec<Ipv4Addr>, RuntimeError> {
        Ok(container.tcp_peers()?)
    }

    async fn offer(
        &self,
        _leg: &Leg,
        strategy: Strategy,
        container: &Container,
    ) -> Result<(CriuOutgoing, Value), RuntimeError> {
        let root = container
            .root_pid()
            .ok_or_else(|| ContainerError::NoRootProcess {
                netns: container.netns().name().to_owned(),
                waited_ms: 0,
            })?;
        let netns_inode = container
            .netns_inode()
            .ok_or(CriuError::NoNetns { pid: root })?;
        let (page_server, pipes) = match strategy {
            Strategy::StopAndCopy => (None, None),
            Strategy::LazyPages => (
                Some(self.page_server()?),
                Some(PipeMaxSize::raise(LAZY_PIPE_MAX_SIZE)?),
            ),
        };
        let offer = match page_server {
            None => Value::Null,
            Some(ps) => serde_json::json!(CriuOffer {
                page_server: Some(SocketAddrV4::new(ps.addr, ps.port)),
            }),
        };
        let out = CriuOutgoing {
            root,
            netns_inode,
            page_server,
            _pipes: pipes,
            lazy_dump: None,
        };
        Ok((out, offer))
    }

    async fn checkpoint(
        &self,
        leg: &Leg,
        out: &mut CriuOutgoing,
        container: &mut Container,
    ) -> Result<Checkpointed, CheckpointError> {
        let req = DumpRequest {
            pid: out.root,
            netns_inode: out.netns_inode,
            images: leg.images(),
            log: leg.work.join("dump.log"),
        };
        let t = self.cfg.timeouts;
        let one_dump = self.dumps.lock().await;
        let dumped = match out.page_server {
            None => self.criu().dump(&req, t.dump).await.map(|d| (d, None)),
            Some(ps) => self
                .criu()
                .dump_lazy(&req, ps, &self.cfg.site.netns.path(), t.dump)
                .await
                .map(|ld| (ld.dumped(), Some(ld))),
        };
        drop(one_dump);
        let (dumped, lazy_dump) = dumped.map_err(|e| CheckpointError {
            // CRIU resumes the tree when a dump fails; it may be gone all the same.
            left: if container.owns(out.root) {
                Left::Running
            } else {
                Left::Gone
            },
            source: e.into(),
        })?;
        // From a successful dump on, the service is stopped (post-copy: frozen, and killed by
        // CRIU once the target has every page).
        container.set_root_pid(None);
        out.lazy_dump = lazy_dump;
        let down = container.clone();
        blocking_try(move || down.set_carrier(Carrier::Down))
            .await
            .map_err(|source| CheckpointError {
                left: Left::Stopped,
                source,
            })?;
        Ok(Checkpointed {
            image_bytes: dumped.image_bytes,
        })
    }

    async fn resume_at_source(
        &self,
        leg: &Leg,
        out: CriuOutgoing,
        container: &mut Container,
    ) -> Result<Resumed, RuntimeError> {
        let pid = match (out.lazy_dump, out.page_server) {
            (Some(ld), Some(ps)) => self.restore_lazy_at_source(container, leg, ld, ps).await?,
            _ => self.restore_at_source(container, leg).await?,
        };
        container.set_root_pid(Some(pid));
        Ok(Resumed::Restored)
    }

    async fn complete(&self, out: &mut CriuOutgoing) -> Result<(), RuntimeError> {
        match out.lazy_dump.take() {
            Some(ld) => Ok(ld.wait_finished(self.cfg.timeouts.pages).await?),
            None => Ok(()),
        }
    }

    async fn give_up(&self, out: CriuOutgoing) {
        if let Some(ld) = out.lazy_dump {
            // Let the pages go to the target if it is there after all.
            let _ = ld.wait_finished(self.cfg.timeouts.pages).await;
        }
    }

    async fn accept(
        &self,
        leg: &Leg,
        offer: Value,
    ) -> Result<(CriuIncoming, Container), RuntimeError> {
        let offer: CriuOffer = if offer.is_null() {
            CriuOffer::default()
        } else {
            decode_offer(offer, "CRIU offer")?
        };
        let (site, prefix) = (self.cfg.site.clone(), self.cfg.prefix.clone());
        let net = NetSpec::of(&leg.service, self.cfg.mtu);
        let container =
            blocking_try(move || Container::prepare(&site, &prefix, &net, Carrier::Down)).await?;
        let incoming = CriuIncoming {
            page_server: offer.page_server.map(|a| PageServer {
                addr: *a.ip(),
                port: a.port(),
            }),
            _pipes: None,
            daemon: None,
            gated: None,
        };
        Ok((incoming, container))
    }

    async fn restore(
        &self,
        leg: &Leg,
        incoming: &mut CriuIncoming,
        container: &mut Container,
    ) -> Result<(), RuntimeError> {
        let t = self.cfg.timeouts;
        // Post-copy: the lazy-pages daemon must be up before the restore hands it the tasks.
        if let Some(ps) = incoming.page_server {
            incoming._pipes = Some(PipeMaxSize::raise(LAZY_PIPE_MAX_SIZE)?);
            incoming.daemon = Some(
                self.criu()
                    .lazy_pages_daemon(
                        &leg.images(),
                        &leg.work.join("lazy-pages.log"),
                        ps,
                        &self.cfg.site.netns.path(),
                        t.restore,
                    )
                    .await?,
            );
        }
        let req = RestoreRequest {
            images: leg.images(),
            log: leg.work.join("restore.log"),
            netns_path: container.netns().path(),
            lazy: incoming.page_server.is_some(),
        };
        let mut gated = self
            .criu()
            .restore_gated(
                &req,
                &leg.work.join("gate"),
                &container.carrier_up_command(),
            )
            .await?;
        if let Err(e) = gated.wait_restored(t.restore).await {
            gated.abort(Duration::from_secs(5)).await;
            return Err(e.into());
        }
        incoming.gated = Some(gated);
        Ok(())
    }

    async fn go_live(
        &self,
        incoming: &mut CriuIncoming,
        container: &mut Container,
    ) -> Result<(), RuntimeError> {
        let gated = incoming
            .gated
            .take()
            .ok_or_else(|| RuntimeError::State("no restore to commit".into()))?;
        // On failure CRIU killed what it restored, but the gate may have brought the carrier up:
        // the driver removes the namespace before the source resumes the service.
        let (restored, resume) = gated.commit(self.cfg.timeouts.commit).await?;
        tracing::debug!(resume_us = us(resume), pid = restored.pid, "tree resumed");
        container.set_root_pid(Some(restored.pid));
        Ok(())
    }

    async fn abort(&self, incoming: CriuIncoming) {
        if let Some(g) = incoming.gated {
            g.abort(Duration::from_secs(5)).await;
        }
        if let Some(d) = incoming.daemon {
            d.kill().await;
        }
    }

    async fn survey(&self) -> Result<Vec<Found<Container>>, RuntimeError> {
        let (site, prefix) = (self.cfg.site.clone(), self.cfg.prefix.clone());
        let runs =
            ["in", "out"].map(|side| moves_prefix(&self.cfg.work_dir, side, RelocationType::Criu));
        let limit = self.cfg.timeouts.dump;
        blocking_try(move || {
            crate::criu::settle_orphans(&runs, limit);
            let up = container::ports_up(&site);
            let mut found = Vec::new();
            for netns in netkit::Netns::list_with_prefix(&format!("{prefix}-svc-")) {
                let Some(id) = container::service_id_in(netns.name(), &prefix, &site.edge) else {
                    continue;
                };
                let mut c = Container::adopt(&site, &prefix, id)?;
                // The tree's root: PID 1 of its own PID namespace.
                let root = c.pids().into_iter().find(|p| container::is_pid_ns_init(*p));
                c.set_root_pid(root);
                let service = container::service_in(id, RelocationType::Criu, &netns.path()).ok();
                let running = c.root_pid().is_some() && up.iter().any(|p| p == c.port());
                found.push(Found {
                    service_id: id.to_owned(),
                    service,
                    container: c,
                    running,
                });
            }
            Ok::<_, ContainerError>(found)
        })
        .await
    }

    async fn resume_interrupted(
        &self,
        leg: &Leg,
        container: &mut Container,
    ) -> Result<(), RuntimeError> {
        let pid = self.restore_at_source(container, leg).await?;
        container.set_root_pid(Some(pid));
        Ok(())
    }

    async fn settle(&self, incoming: CriuIncoming) -> Option<Duration> {
        // Post-copy: the service runs; the daemon pulls the rest of its memory. A failure here
        // cannot be undone (the source gave the service up at Commit): the service stays.
        match incoming
            .daemon?
            .wait_finished(self.cfg.timeouts.pages)
            .await
        {
            Ok(took) => Some(took),
            Err(e) => {
                tracing::error!(error = %e, "post-copy page transfer failed after the resume");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offer_names_only_a_page_server() {
        let offer = CriuOffer {
            page_server: Some("10.0.1.1:27000".parse().expect("addr")),
        };
        let v = serde_json::json!(offer);
        assert_eq!(v, serde_json::json!({"pageServer": "10.0.1.1:27000"}));
        assert_eq!(
            decode_offer::<CriuOffer>(v, "CRIU offer").expect("decodes"),
            offer
        );
        for bad in [
            serde_json::json!({"pageServer": "somewhere"}),
            serde_json::json!({"pageServer": "10.0.1.1:27000", "hook": "rm -rf /"}),
        ] {
            let e = decode_offer::<CriuOffer>(bad.clone(), "CRIU offer").expect_err("bad");
            assert!(
                e.to_string().starts_with("bad offer: CRIU offer"),
                "{bad}: {e}"
            );
        }
        assert_eq!(
            serde_json::json!(CriuOffer::default()),
            serde_json::json!({})
        );
    }
}

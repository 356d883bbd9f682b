//! The LXD backend: services as LXD system containers (one LXD daemon per edge, in the edge's
//! network namespace, see DESIGN.md "LXD"), moved by LXD's own live migration in **pull** mode:
//! the target's daemon pulls the instance from the source's daemon over HTTPS on the backhaul,
//! while the two modules speak the migration connection of [`crate::transfer`] to agree on it.
//!
//! A service's instance `<prefix>-svc-<id>` (the same name at every edge: each daemon has its own
//! LXD directory) is made from the daemon's local image alias (a busybox rootfs), privileged,
//! with `raw.lxc: lxc.console.path = none` and `lxc.init.cmd = /sbin/svcmod-init`: a script the
//! module writes into the rootfs (LXD's file API) that touches `/dev/console`, makes the merged-usr
//! links `/lib → usr/lib`, `/lib64 → usr/lib64` where missing, sets the service's address on
//! `eth0` with its route via the anycast gateway, and `exec`s the service's command. `eth0` is a
//! `p2p` NIC with the service's MAC whose host end is `s-<id>` (the service's OVS port, made by
//! LXD in the edge's namespace); the host's `/usr` (and the directory of an absolute program
//! outside it) are bound read-only as `disk` devices. The module attaches `s-<id>` to the edge's
//! OVS bridge, turns checksum offload off on both ends and pins the gateway's MAC in the
//! container ([`crate::lxc_backend`]'s `attach`, the init PID from `GET …/state`).
//!
//! One migration (S = source module, T = target module):
//!
//! | # | S | T |
//! |---|---|---|
//! | 1 | `GET /1.0/instances/NAME` (config, devices); `POST /1.0/instances/NAME {"migration":true,"live":true,"instance_only":true}` → LXD's operation and its secrets (nothing stops yet) | |
//! | 2 | `Prepare{service, lxd: LxdMove}` (the instance's config and devices, `https://S_HTTPS/1.0/operations/ID`, S's server certificate, the secrets) | check, reserve; `Prepared` (or `Refused`: S cancels its operation, nothing stopped) |
//! | 3 | `Restore` | `POST /1.0/instances` with `source: {type: migration, mode: pull, live: true, …}`; waits for its operation (LXD freezes, dumps, copies and restores the container: the service runs at T when it succeeds); `Restored` (or `Failed`, after removing what it made) |
//! | 4 | | `s-<id>` onto T's bridge, offload off, gateway pinned, then the [`crate::ArrivalHook`] (the SMO switches the path here, to that port); `Done` |
//! | 5 | delete the stopped source instance (LXD 5.0.2 may answer "busy running a stop operation" for a while: retried), remove its OVS port (in the background with [`LxdConfig::background_cleanup`]) | |
//!
//! **The service is at the source unless T said `Restored`.** LXD has no gated restore: the
//! container resumes at the target inside LXD's operation, so the port is attached and the
//! arrival hook runs right after the resume (the service's first packets may leave before the
//! path switch; the UE's retransmissions cover them). If T fails, hangs or the connection breaks before `Restored`, S releases its
//! side: LXD 5.0.2's source `criu dump` waits forever in its post-dump action script when the
//! target's restore failed, with the container frozen. S finds that `criu` (a process in the
//! edge's network namespace whose command line is a `dump` of the instance's init), kills the
//! action script under it — CRIU then treats the dump as failed and resumes the container itself,
//! with its TCP connections intact ([`MigrationError::RolledBack`]) — and only if that `criu`
//! does not end, kills it and thaws the container (its connections may then be lost); a stopped
//! source instance is started again (a fresh start). If nothing was dumped the service simply
//! runs on ([`MigrationError::NotStarted`]).
//!
//! Limits: LXD does not say how many bytes a migration moved: `bytes_moved` is what the source
//! edge sent on its backhaul interface during LXD's move (images, TLS and TCP/IP headers, and
//! whatever else the edge sent then), `image_bytes` is 0. Only stop-and-copy (LXD's live migration); post-copy is refused. The fault
//! [`Fault::CorruptImages`] makes the next incoming restore fail after the source's dump (the
//! target takes the service's port name `s-<id>` in its namespace right before pulling, so LXD
//! cannot make the container's NIC at the restore): LXD gives no hook to damage its images.

use crate::container::{self, EdgeSite};
use crate::criu_backend::Timeouts;
use crate::hosting::{blocking, prepare_target, ArrivalSlot, FaultSlot, Hosting};
use crate::lxc_backend::{attach, detach, port_exists};
use crate::lxd::{LxdClient, LxdError};
use crate::transfer::{Conn, Message};
use crate::{
    us, ArrivalHook, Backend, BackendError, Fault, IncomingReport, MigrationError, MigrationReport,
    ServiceSpec, Stopwatch, Strategy,
};
use model::smo::{ExecuteRequest, RelocationType, Service};
use netkit::cmd::Tool;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// The init script's place in the container's rootfs.
pub const INIT_PATH: &str = "/sbin/svcmod-init";
/// The default image alias (a busybox rootfs imported into each daemon).
pub const DEFAULT_IMAGE: &str = "testbed-busybox";

/// How an LXD module is set up.
#[derive(Debug, Clone)]
pub struct LxdConfig {
    /// Namespace prefix (the testbed's, e.g. `tb`): instances are `<prefix>-svc-<id>`.
    pub prefix: String,
    /// The edge cloud this module serves (its LXD daemon runs in `site.netns`).
    pub site: EdgeSite,
    /// The daemon's unix socket, e.g. `/var/lib/lxd/unix.socket`.
    pub socket: PathBuf,
    /// Where the daemon listens on HTTPS on the backhaul (target daemons pull from it), e.g.
    /// `10.0.1.1:8443`.
    pub https_addr: SocketAddr,
    /// The daemon's server certificate (PEM file), sent to targets so they can check it.
    pub cert: PathBuf,
    /// The local image the containers are made from.
    pub image: String,
    pub timeouts: Timeouts,
    /// Time limit of the target's pull (LXD's whole move: freeze, dump, copy, restore).
    pub move_limit: Duration,
    /// Delete a migrated service's stopped source instance in the background, after answering.
    pub background_cleanup: bool,
}

impl LxdConfig {
    /// The defaults for `site` and a daemon at `socket` / `https_addr` with certificate `cert`:
    /// image [`DEFAULT_IMAGE`], a move limit of 60 s.
    pub fn new(
        prefix: impl Into<String>,
        site: EdgeSite,
        socket: impl Into<PathBuf>,
        https_addr: SocketAddr,
        cert: impl Into<PathBuf>,
    ) -> Self {
        Self {
            prefix: prefix.into(),
            site,
            socket: socket.into(),
            https_addr,
            cert: cert.into(),
            image: DEFAULT_IMAGE.into(),
            timeouts: Timeouts::default(),
            move_limit: Duration::from_secs(60),
            background_cleanup: false,
        }
    }
}

/// What a target needs to pull an instance from the source's daemon (in `Prepare`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LxdMove {
    /// The instance's name (kept).
    pub name: String,
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub profiles: Vec<String>,
    /// The instance's own config (without `volatile.*`).
    pub config: Map<String, Value>,
    /// The instance's own devices.
    pub devices: Map<String, Value>,
    /// `https://SRC/1.0/operations/ID`: the source's migration operation.
    pub operation: String,
    /// The source daemon's server certificate (PEM).
    pub certificate: String,
    /// The operation's secrets (`control`, `fs`, `criu`).
    pub secrets: Value,
}

/// A service's LXD instance at one edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LxdInstance {
    name: String,
    port: String,
    init_pid: Option<i32>,
}

impl LxdInstance {
    /// The instance's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host end of its NIC (its OVS port).
    pub fn port(&self) -> &str {
        &self.port
    }

    /// The host PID of its init, while it runs.
    pub fn init_pid(&self) -> Option<i32> {
        self.init_pid.filter(|p| owns(&self.name, *p))
    }

    /// The peers of the service's established TCP connections (`ss` in the container's netns).
    pub fn tcp_peers(&self) -> Result<Vec<Ipv4Addr>, BackendError> {
        let pid = self.init_pid().ok_or_else(|| {
            BackendError::BadRequest(format!("instance {} is not running", self.name))
        })?;
        let text = Tool::new("nsenter")
            .arg(format!("--net=/proc/{pid}/ns/net"))
            .args(["--", "ss", "-tnH", "state", "established"])
            .stdout()
            .map_err(|e| BackendError::TargetFailed(e.to_string()))?;
        Ok(container::parse_ss_peers(&text))
    }
}

/// Whether `pid` is alive and in instance `name`'s cgroup: `…/lxc.payload.<name>`, or
/// `…/lxc.payload.<name>-<n>` (the daemons of one host share its cgroup tree, so a moved
/// container gets a numbered one while the source's still exists).
fn owns(name: &str, pid: i32) -> bool {
    netkit::process::is_alive(pid)
        && std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .is_ok_and(|c| c.lines().any(|l| in_payload_cgroup(l, name)))
}

/// Whether a `/proc/PID/cgroup` line is instance `name`'s payload cgroup.
fn in_payload_cgroup(line: &str, name: &str) -> bool {
    let Some((_, leaf)) = line.rsplit_once("/lxc.payload.") else {
        return false;
    };
    leaf == name
        || leaf
            .strip_prefix(name)
            .and_then(|r| r.strip_prefix('-'))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// An LXD failure as a backend error.
impl From<LxdError> for BackendError {
    fn from(e: LxdError) -> Self {
        BackendError::TargetFailed(format!("lxd: {}", sbi::error_chain(&e)))
    }
}

/// The LXD service module backend of one edge cloud.
#[derive(Debug)]
pub struct LxdBackend {
    cfg: LxdConfig,
    lxd: LxdClient,
    hosting: Hosting<LxdInstance>,
    arrival: ArrivalSlot,
    fault: FaultSlot,
}

impl LxdBackend {
    /// A module with no services yet.
    pub fn new(cfg: LxdConfig) -> Self {
        Self {
            lxd: LxdClient::new(cfg.socket.clone()),
            cfg,
            hosting: Hosting::default(),
            arrival: ArrivalSlot::default(),
            fault: FaultSlot::default(),
        }
    }

    /// The module's configuration.
    pub fn config(&self) -> &LxdConfig {
        &self.cfg
    }

    /// The client of the module's daemon.
    pub fn client(&self) -> &LxdClient {
        &self.lxd
    }

    /// The instance of a hosted service.
    pub fn instance(&self, service_id: &str) -> Option<LxdInstance> {
        self.hosting.get(service_id).map(|h| h.container)
    }

    /// The instance name of service `service_id`.
    pub fn name(&self, service_id: &str) -> String {
        instance_name(&self.cfg.prefix, service_id)
    }

    fn check_service(&self, service: &Service) -> Result<(), BackendError> {
        crate::hosting::check_incoming(service, RelocationType::Lxd)
    }

    /// The instance's state: (`status`, init PID).
    async fn state(&self, name: &str) -> Result<(String, Option<i32>), LxdError> {
        let s = self
            .lxd
            .get(&format!("/1.0/instances/{name}/state"))
            .await?;
        let status = s["status"].as_str().unwrap_or_default().to_owned();
        let pid = s["pid"]
            .as_i64()
            .and_then(|p| i32::try_from(p).ok())
            .filter(|p| *p > 0);
        Ok((status, pid))
    }

    /// `PUT …/state {"action": action}` and waits for it.
    async fn set_state(&self, name: &str, action: &str, force: bool) -> Result<(), LxdError> {
        let answer = self
            .lxd
            .put(
                &format!("/1.0/instances/{name}/state"),
                &json!({"action": action, "timeout": 30, "force": force}),
            )
            .await?;
        self.lxd
            .finish(answer, Duration::from_secs(40))
            .await
            .map(drop)
    }

    /// Stops (forced) and deletes an instance; retries while LXD is busy with it (LXD 5.0.2 keeps
    /// a moved instance "busy running a stop operation" for a while). Unknown: done.
    async fn delete_instance(&self, name: &str) -> Result<(), LxdError> {
        let path = format!("/1.0/instances/{name}");
        let mut last = None;
        for attempt in 0..40 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            match self.state(name).await {
                Err(e) if e.code() == Some(404) => return Ok(()),
                Ok((status, _)) if status != "Stopped" => {
                    if let Err(e) = self.set_state(name, "stop", true).await {
                        last = Some(e);
                        continue;
                    }
                }
                _ => {}
            }
            let deleted = match self.lxd.delete(&path).await {
                Ok(a) => self.lxd.finish(a, Duration::from_secs(30)).await.map(drop),
                Err(e) => Err(e),
            };
            match deleted {
                Ok(()) => return Ok(()),
                Err(e) if e.code() == Some(404) => return Ok(()),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(LxdError::OperationTimeout {
            id: path,
            status: "busy".into(),
            limit_ms: 10_000,
        }))
    }

    /// Removes an instance, its empty cgroups and its OVS port; tries each.
    async fn destroy(&self, inst: &LxdInstance) -> Result<(), BackendError> {
        let deleted = self.delete_instance(&inst.name).await;
        let (site, port, name) = (self.cfg.site.clone(), inst.port.clone(), inst.name.clone());
        let detached = blocking(move || {
            // LXD leaves the instance's empty cgroups behind (`lxc.payload.NAME/.lxc`).
            crate::lxd_daemon::remove_empty_cgroups([name]);
            detach(&site, &port)
        })
        .await?;
        deleted?;
        detached.map_err(|e| BackendError::TargetFailed(e.to_string()))
    }

    /// `s-<id>` onto the bridge (a stale port record first removed), offload off on both ends,
    /// the gateway pinned inside.
    async fn attach_port(&self, inst: &LxdInstance, pid: i32) -> Result<(), BackendError> {
        let (site, port) = (self.cfg.site.clone(), inst.port.clone());
        blocking(move || {
            site.ovs
                .vsctl(["--if-exists", "del-port", &site.bridge, &port])
                .map(drop)?;
            attach(&site, &port, pid)
        })
        .await?
        .map_err(|e| BackendError::TargetFailed(format!("cannot attach {}: {e}", inst.port)))
    }

    /// The body creating a service's instance.
    fn create_body(
        &self,
        name: &str,
        spec: &ServiceSpec,
        mac: &str,
    ) -> Result<Value, BackendError> {
        let mut devices = Map::new();
        devices.insert(
            container::SERVICE_IFNAME.into(),
            json!({
                "type": "nic", "nictype": "p2p", "name": container::SERVICE_IFNAME,
                "host_name": container::ovs_port_name(&spec.service_id)?, "hwaddr": mac,
            }),
        );
        for (i, dir) in bind_dirs(&spec.command)?.iter().enumerate() {
            devices.insert(
                format!("bind{i}"),
                json!({"type": "disk", "source": dir, "path": dir, "readonly": "true"}),
            );
        }
        Ok(json!({
            "name": name,
            "type": "container",
            "source": {"type": "image", "alias": self.cfg.image},
            "config": {
                "security.privileged": "true",
                "raw.lxc": raw_lxc(),
            },
            "devices": devices,
        }))
    }

    async fn create_instance(
        &self,
        inst: &LxdInstance,
        spec: &ServiceSpec,
        mac: &str,
    ) -> Result<i32, BackendError> {
        let body = self.create_body(&inst.name, spec, mac)?;
        let answer = self.lxd.post("/1.0/instances", &body).await?;
        self.lxd.finish(answer, Duration::from_secs(60)).await?;
        let script = init_script(spec.ipv4_addr, &spec.command);
        self.lxd
            .push_file(&inst.name, INIT_PATH, script.as_bytes(), 0o755)
            .await?;
        self.set_state(&inst.name, "start", false).await?;
        let (_, pid) = self.state(&inst.name).await?;
        let pid = pid.ok_or_else(|| {
            BackendError::TargetFailed(format!("instance {} started without an init", inst.name))
        })?;
        self.attach_port(inst, pid).await?;
        Ok(pid)
    }

    /// Cancels a source migration operation (best effort).
    async fn cancel(&self, op_id: &str) {
        if let Err(e) = self.lxd.delete(&format!("/1.0/operations/{op_id}")).await {
            tracing::debug!(operation = %op_id, error = %e, "cannot cancel the migration operation");
        }
    }

    /// Moves a service (stop-and-copy only: LXD's live migration).
    pub async fn migrate_out_with(
        &self,
        request: &ExecuteRequest,
        strategy: Strategy,
    ) -> Result<MigrationReport, MigrationError> {
        let id = request.service.service_id.clone();
        if strategy == Strategy::LazyPages {
            return Err(MigrationError::NotStarted {
                service_id: id,
                source: BackendError::Unsupported(
                    "lazy-pages migration with the LXD backend".into(),
                ),
            });
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
        inst: &mut LxdInstance,
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
        let pid_before = inst.init_pid().ok_or_else(|| {
            not_started(BackendError::BadRequest(format!(
                "instance {} is not running",
                inst.name
            )))
        })?;

        // 1. The instance and the source's migration operation.
        let began = Instant::now();
        let path = format!("/1.0/instances/{}", inst.name);
        let info = self
            .lxd
            .get(&path)
            .await
            .map_err(|e| not_started(e.into()))?;
        let certificate = std::fs::read_to_string(&self.cfg.cert).map_err(|source| {
            not_started(BackendError::Io {
                path: self.cfg.cert.clone(),
                source,
            })
        })?;
        let op = self
            .lxd
            .post(
                &path,
                &json!({"migration": true, "live": true, "instance_only": true}),
            )
            .await
            .map_err(|e| not_started(e.into()))?
            .operation()
            .ok_or_else(|| {
                not_started(BackendError::TargetFailed(
                    "lxd answered the migration request without an operation".into(),
                ))
            })?;
        let mv = move_of(
            &info,
            &inst.name,
            &self.cfg.https_addr,
            &op.id,
            certificate,
            op.metadata.clone(),
        );
        sw.record("source migration operation", began);

        // 2. The target checks and reserves.
        let began = Instant::now();
        let prepared = prepare_target(
            &self.cfg.site.netns,
            target,
            &Message::Prepare {
                relocation_id: request.relocation_id.clone(),
                service: service.clone(),
                container: None,
                lxd: Some(Box::new(mv)),
            },
            t.connect,
            t.prepare,
        )
        .await;
        let mut conn = match prepared {
            Ok(c) => c,
            Err(e) => {
                self.cancel(&op.id).await;
                return Err(not_started(e));
            }
        };
        report.prepare_us = sw.record("prepare target", began);

        // 3. The target pulls: LXD freezes, dumps, copies, restores.
        let sent_before = backhaul_tx_bytes(&self.cfg.site).await;
        let frozen = Instant::now();
        let pulled = async {
            conn.send(&Message::Restore { page_server: None })
                .await
                .map_err(|e| e.to_string())?;
            match conn
                .recv_within(
                    self.cfg.move_limit + Duration::from_secs(5),
                    "answer to the pull",
                )
                .await
            {
                Ok(Message::Restored { restore_us }) => Ok(restore_us),
                Ok(Message::Failed { cause }) => Err(format!("target pull failed: {cause}")),
                Ok(other) => Err(format!("unexpected {} after restore", other.kind())),
                Err(e) => Err(e.to_string()),
            }
        }
        .await;
        report.restore_us = match pulled {
            Ok(r) => r,
            Err(cause) => {
                drop(conn);
                return Err(self
                    .recover_source(inst, &op.id, pid_before, cause, report, sw, frozen)
                    .await);
            }
        };
        sw.record_took("LXD move (pull at target)", report.restore_us);
        if let (Some(a), Some(b)) = (sent_before, backhaul_tx_bytes(&self.cfg.site).await) {
            report.bytes_moved = b.saturating_sub(a);
        }

        // 4. The target attaches the port.
        report.resume_us = match conn.recv_within(t.commit, "done").await {
            Ok(Message::Done { resume_us }) => resume_us,
            other => {
                let cause = match other {
                    Ok(m) => format!("unexpected {} after restored", m.kind()),
                    Err(e) => e.to_string(),
                };
                inst.init_pid = None;
                return Err(MigrationError::OutcomeUnknown {
                    service_id: id,
                    cause,
                });
            }
        };
        sw.record_took("attach at target", report.resume_us);
        report.frozen_us = us(frozen.elapsed());
        drop(conn);
        // LXD's own operation at the source ends with the move.
        if let Err(e) = self.lxd.wait(&op.id, Duration::from_secs(10)).await {
            tracing::debug!(service = %id, error = %e, "source migration operation");
        }

        // 5. The stopped source instance goes.
        let began = Instant::now();
        inst.init_pid = None;
        if self.cfg.background_cleanup {
            let leaving = self.hosting.leaving(&id);
            let this = Remover {
                lxd: self.lxd.clone(),
                site: self.cfg.site.clone(),
            };
            let inst = inst.clone();
            tokio::spawn(async move {
                if let Err(e) = this.remove(&inst).await {
                    tracing::warn!(service = %inst.name, error = %e, "cannot remove the source instance");
                }
                drop(leaving);
            });
        } else if let Err(e) = self.destroy(inst).await {
            tracing::warn!(service = %id, error = %e, "cannot remove the source instance");
        }
        sw.record("remove source", began);
        report.total_us = sw.elapsed_us();
        report.steps = sw.steps().to_vec();
        Ok(report)
    }

    /// The move failed before the target said `Restored`: the service is made to run at the source
    /// again (see the module docs).
    #[allow(clippy::too_many_arguments)]
    async fn recover_source(
        &self,
        inst: &mut LxdInstance,
        op_id: &str,
        pid_before: i32,
        cause: String,
        mut report: MigrationReport,
        mut sw: Stopwatch,
        frozen: Instant,
    ) -> MigrationError {
        let id = report.service.service_id.clone();
        tracing::warn!(service = %id, %cause, "LXD move failed, keeping the service at the source");
        let began = Instant::now();
        let netns_ino = self.cfg.site.netns.inode();
        let name = inst.name.clone();
        let released = blocking(move || release_stuck_dump(netns_ino, &name, pid_before))
            .await
            .unwrap_or_default();
        self.cancel(op_id).await;
        let mut restarted = false;
        let recovered: Result<i32, String> = async {
            // LXD may take a moment to notice the dump ended.
            let mut state = self.state(&inst.name).await.map_err(|e| e.to_string())?;
            for _ in 0..20 {
                if state.0 == "Running" || state.0 == "Stopped" || state.0 == "Frozen" {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                state = self.state(&inst.name).await.map_err(|e| e.to_string())?;
            }
            match state.0.as_str() {
                "Frozen" => self
                    .set_state(&inst.name, "unfreeze", false)
                    .await
                    .map_err(|e| e.to_string())?,
                "Stopped" => {
                    restarted = true;
                    self.set_state(&inst.name, "start", false)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                _ => {}
            }
            let (_, pid) = self.state(&inst.name).await.map_err(|e| e.to_string())?;
            let pid = pid.ok_or("no init PID".to_owned())?;
            if restarted {
                self.attach_port(inst, pid)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok(pid)
        }
        .await;
        match recovered {
            Ok(pid) => {
                inst.init_pid = Some(pid);
                sw.record("recover at source", began);
                report.frozen_us = us(frozen.elapsed());
                report.total_us = sw.elapsed_us();
                report.steps = sw.steps().to_vec();
                if released.is_none() && !restarted && pid == pid_before {
                    MigrationError::NotStarted {
                        service_id: id,
                        source: BackendError::TargetFailed(cause),
                    }
                } else {
                    let how = match (&released, restarted) {
                        (_, true) => {
                            "; the source instance was started again (its connections are lost)"
                                .to_owned()
                        }
                        (Some(r), false) => format!("; {r}"),
                        (None, false) => String::new(),
                    };
                    MigrationError::RolledBack {
                        service_id: id,
                        cause: format!("{cause}{how}"),
                        report: Box::new(report),
                    }
                }
            }
            Err(fallback) => MigrationError::Lost {
                service_id: id,
                cause,
                fallback,
            },
        }
    }

    /// The target side of one migration (see the module docs); `Ok` once the service runs here.
    pub async fn receive_service(&self, stream: TcpStream) -> Result<IncomingReport, BackendError> {
        let t = self.cfg.timeouts;
        let mut conn = Conn::new(stream);
        let (relocation_id, service, mv) = match conn.recv_within(t.prepare, "prepare").await? {
            Message::Prepare {
                relocation_id,
                service,
                lxd,
                ..
            } => (relocation_id, service, lxd),
            other => {
                return Err(BackendError::BadRequest(format!(
                    "expected prepare, got {}",
                    other.kind()
                )))
            }
        };
        let id = service.service_id.clone();
        if !self.hosting.wait_removed(Some(&id), t.prepare).await {
            tracing::warn!(service = %id, "the old instance is still being removed");
        }
        let began = Instant::now();
        let checked = self
            .check_service(&service)
            .and_then(|()| {
                mv.ok_or_else(|| {
                    BackendError::BadRequest("an LXD module needs the instance".into())
                })
            })
            .and_then(|mv| {
                if mv.name != self.name(&id) {
                    return Err(BackendError::BadRequest(format!(
                        "instance {} is not named {}",
                        mv.name,
                        self.name(&id)
                    )));
                }
                if port_exists(&self.cfg.site, &service.ovs_port) {
                    return Err(BackendError::BadRequest(format!(
                        "interface {} exists in {} already",
                        service.ovs_port, self.cfg.site.netns
                    )));
                }
                Ok(mv)
            });
        let mv = match checked.and_then(|m| self.hosting.reserve(&id).map(|()| m)) {
            Ok(m) => m,
            Err(e) => {
                let _ = conn
                    .send(&Message::Refused {
                        cause: e.to_string(),
                    })
                    .await;
                return Err(e);
            }
        };
        let inst = LxdInstance {
            name: mv.name.clone(),
            port: service.ovs_port.clone(),
            init_pid: None,
        };
        let prepare_us = us(began.elapsed());
        let result = self
            .pull(&mut conn, &inst, &mv, prepare_us, (&relocation_id, &id))
            .await;
        match result {
            Ok((mut report, pid)) => {
                let mut inst = inst;
                inst.init_pid = Some(pid);
                report.relocation_id = relocation_id;
                report.service = service.clone();
                self.hosting.install(service, inst);
                Ok(report)
            }
            Err(e) => {
                self.hosting.unreserve(&id);
                Err(e)
            }
        }
    }

    async fn pull(
        &self,
        conn: &mut Conn,
        inst: &LxdInstance,
        mv: &LxdMove,
        prepare_us: u64,
        (relocation_id, service_id): (&str, &str),
    ) -> Result<(IncomingReport, i32), BackendError> {
        let t = self.cfg.timeouts;
        conn.send(&Message::Prepared {
            took_us: prepare_us,
        })
        .await?;
        match conn.recv_within(t.prepare, "restore").await? {
            Message::Restore { page_server: None } => {}
            other => {
                return Err(BackendError::BadRequest(format!(
                    "expected restore, got {}",
                    other.kind()
                )))
            }
        }
        let fault = self.fault.take(Fault::CorruptImages);
        let began = Instant::now();
        let pulled = async {
            if fault {
                let site = self.cfg.site.clone();
                let port = inst.port.clone();
                blocking(move || {
                    let peer = format!("f{}", &port[1..]);
                    site.netns
                        .ip(["link", "add", &port, "type", "veth", "peer", "name", &peer])
                })
                    .await?
                    .map_err(|e| BackendError::TargetFailed(e.to_string()))?;
                tracing::warn!(port = %inst.port, "fault: the service's port name is taken: the restore will fail");
            }
            let answer = self.lxd.post("/1.0/instances", &pull_body(mv)).await?;
            let op = answer.operation().ok_or_else(|| {
                BackendError::TargetFailed("lxd answered the pull without an operation".into())
            })?;
            match self.lxd.wait(&op.id, self.cfg.move_limit).await {
                Ok(_) => Ok(()),
                Err(e) => {
                    self.cancel(&op.id).await;
                    Err(BackendError::from(e))
                }
            }
        }
        .await;
        let restore_us = us(began.elapsed());
        let pid = match pulled {
            Ok(()) => self
                .state(&inst.name)
                .await
                .map_err(BackendError::from)
                .and_then(|(_, pid)| {
                    pid.ok_or_else(|| {
                        BackendError::TargetFailed("moved instance has no init".into())
                    })
                }),
            Err(e) => Err(e),
        };
        let pid = match pid {
            Ok(p) => p,
            Err(e) => {
                self.answer_failed(conn, inst, fault, e.to_string()).await;
                return Err(e);
            }
        };
        // From here on the service runs here.
        conn.send(&Message::Restored { restore_us }).await?;
        let began = Instant::now();
        // The port first: the SMO's new path outputs to it.
        if let Err(e) = self.attach_port(inst, pid).await {
            tracing::warn!(service = %service_id, error = %e, "the moved service's port is not attached");
        }
        self.arrival.report(relocation_id, service_id).await;
        let resume_us = us(began.elapsed());
        let _ = conn.send(&Message::Done { resume_us }).await;
        Ok((
            IncomingReport {
                relocation_id: String::new(),
                service: service_of(service_id),
                prepare_us,
                receive_us: 0,
                restore_us,
                resume_us,
                pages_us: None,
                image_bytes: 0,
            },
            pid,
        ))
    }

    /// The target's answer to a failed pull: what it made goes first, then `Failed`.
    async fn answer_failed(&self, conn: &mut Conn, inst: &LxdInstance, fault: bool, cause: String) {
        if fault {
            let site = self.cfg.site.clone();
            let port = inst.port.clone();
            let _ = blocking(move || site.netns.ip(["link", "del", &port])).await;
        }
        if let Err(e) = self.destroy(inst).await {
            tracing::warn!(instance = %inst.name, error = %e, "cannot remove the failed incoming instance");
        }
        let _ = conn.send(&Message::Failed { cause }).await;
    }
}

/// Removes a source instance in the background.
#[derive(Debug)]
struct Remover {
    lxd: LxdClient,
    site: EdgeSite,
}

impl Remover {
    async fn remove(&self, inst: &LxdInstance) -> Result<(), BackendError> {
        // A throw-away backend with the same client does the work.
        let b = LxdBackend {
            cfg: LxdConfig::new(
                "",
                self.site.clone(),
                self.lxd.socket(),
                SocketAddr::from(([0, 0, 0, 0], 0)),
                "",
            ),
            lxd: self.lxd.clone(),
            hosting: Hosting::default(),
            arrival: ArrivalSlot::default(),
            fault: FaultSlot::default(),
        };
        b.destroy(inst).await
    }
}

/// What the target needs, from the source's `GET /1.0/instances/NAME`.
fn move_of(
    info: &Value,
    name: &str,
    https: &SocketAddr,
    op_id: &str,
    certificate: String,
    secrets: Value,
) -> LxdMove {
    let object = |v: &Value| v.as_object().cloned().unwrap_or_default();
    let mut config = object(&info["config"]);
    config.retain(|k, _| !k.starts_with("volatile."));
    LxdMove {
        name: name.to_owned(),
        architecture: info["architecture"].as_str().unwrap_or_default().to_owned(),
        profiles: info["profiles"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| p.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_else(|| vec!["default".into()]),
        config,
        devices: object(&info["devices"]),
        operation: format!("https://{https}/1.0/operations/{op_id}"),
        certificate,
        secrets,
    }
}

/// The target's `POST /1.0/instances` body pulling `mv`.
pub fn pull_body(mv: &LxdMove) -> Value {
    json!({
        "name": mv.name,
        "type": "container",
        "architecture": mv.architecture,
        "profiles": mv.profiles,
        "config": mv.config,
        "devices": mv.devices,
        "source": {
            "type": "migration",
            "mode": "pull",
            "operation": mv.operation,
            "certificate": mv.certificate,
            "secrets": mv.secrets,
            "live": true,
            "instance_only": true,
        },
    })
}

/// Host directories a service's container binds read-only: the same as an LXC container's
/// ([`crate::lxc::ContainerSpec::for_command`]: `/usr`, `/etc`, the directory of an absolute
/// program and of the files its arguments name by absolute path).
pub fn bind_dirs(command: &[String]) -> Result<Vec<PathBuf>, BackendError> {
    Ok(crate::lxc::ContainerSpec::for_command(command)?.binds)
}

/// The container's `raw.lxc`: no console (CRIU cannot carry it), the module's init, no IPv6
/// (the service speaks IPv4 only, like the other backends' services).
pub fn raw_lxc() -> String {
    format!(
        "lxc.console.path = none\n\
         lxc.init.cmd = {INIT_PATH}\n\
         lxc.sysctl.net.ipv6.conf.all.disable_ipv6 = 1\n\
         lxc.sysctl.net.ipv6.conf.default.disable_ipv6 = 1\n"
    )
}

/// `s` quoted for `sh`.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The container's init: console, merged-usr links, the service's address and route, then the
/// service's command in its place (so the service is PID 1 of the container).
pub fn init_script(ip: Ipv4Addr, command: &[String]) -> String {
    let bb = "/bin/busybox";
    let cmd: Vec<String> = command.iter().map(|a| sh_quote(a)).collect();
    format!(
        "#!/bin/busybox sh\n\
         # written by the testbed's LXD service module\n\
         {bb} touch /dev/console\n\
         for d in lib lib64; do [ -e /$d ] || [ ! -d /usr/$d ] || {bb} ln -s usr/$d /$d; done\n\
         {bb} ip addr add {ip}/{len} dev {dev}\n\
         {bb} ip link set {dev} up\n\
         {bb} ip route add default via {gw}\n\
         exec {cmd}\n",
        len = container::SERVICE_PREFIX_LEN,
        dev = container::SERVICE_IFNAME,
        gw = container::GATEWAY,
        cmd = cmd.join(" "),
    )
}

/// Bytes the edge has sent on its backhaul interface (the bridge's own port, where the daemon's
/// HTTPS address is), from `/proc/net/dev` in the edge's namespace; `None` if unreadable.
async fn backhaul_tx_bytes(site: &EdgeSite) -> Option<u64> {
    let (ns, bridge) = (site.netns.clone(), site.bridge.clone());
    let text = blocking(move || ns.tool("cat").arg("/proc/net/dev").stdout())
        .await
        .ok()?
        .ok()?;
    tx_bytes_of(&text, &bridge)
}

/// Interface `ifname`'s transmitted bytes in a `/proc/net/dev` text.
pub fn tx_bytes_of(net_dev: &str, ifname: &str) -> Option<u64> {
    net_dev.lines().find_map(|l| {
        let (name, counters) = l.split_once(':')?;
        (name.trim() == ifname)
            .then(|| counters.split_whitespace().nth(8)?.parse().ok())
            .flatten()
    })
}

/// The LXD instance of service `service_id` in a testbed of namespace prefix `prefix`:
/// `<prefix>-svc-<id>`, the same at every edge.
pub fn instance_name(prefix: &str, service_id: &str) -> String {
    format!("{prefix}-svc-{service_id}")
}

fn service_of(id: &str) -> Service {
    Service {
        service_id: id.to_owned(),
        ipv4_addr: Ipv4Addr::UNSPECIFIED,
        mac_addr: String::new(),
        ovs_port: String::new(),
        relocation_type: RelocationType::Lxd,
        resource_requirements: Default::default(),
        ue_ipv4_addrs: Vec::new(),
    }
}

/// The arguments of `pid`'s command line.
fn args_of(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|b| *b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a command line is a `criu dump` (directly or through a `criu` wrapper script) of the
/// tree rooted at `init_pid` or naming instance `name`.
pub fn is_dump_of(args: &[String], name: &str, init_pid: i32) -> bool {
    // `criu dump …`, `sh …/criu dump …` or `ld-linux… --library-path L …/criu dump …`.
    let Some(criu) = args
        .iter()
        .position(|a| Path::new(a).file_name().is_some_and(|f| f == "criu"))
    else {
        return false;
    };
    let dump = args[criu + 1..].iter().any(|a| a == "dump");
    let pid = init_pid.to_string();
    let ours = args
        .windows(2)
        .any(|w| (w[0] == "-t" || w[0] == "--tree") && w[1] == pid)
        || args.iter().any(|a| *a == format!("--tree={pid}"))
        || args
            .iter()
            .any(|a| a.contains(&format!("/{name}/")) || a.ends_with(&format!("/{name}")));
    dump && ours
}

/// Releases a source `criu dump` of instance `name` stuck in its post-dump action script (in
/// the edge's network namespace `netns_ino`): kills what runs under it (the action script), so
/// CRIU resumes the container itself; if the dump does not end within 5 s, kills it. What was
/// done, or `None` when no dump ran.
fn release_stuck_dump(netns_ino: Option<u64>, name: &str, init_pid: i32) -> Option<String> {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let candidates: Vec<i32> = match netns_ino {
        Some(ino) => netkit::process::pids_in_netns(ino),
        None => Vec::new(),
    };
    let dumps: Vec<i32> = candidates
        .iter()
        .copied()
        .filter(|p| is_dump_of(&args_of(*p), name, init_pid))
        .collect();
    if dumps.is_empty() {
        return None;
    }
    // Everything below the dump processes that is no dump itself: the action script.
    let all: Vec<i32> = std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let below = |p: i32| {
        let mut cur = p;
        for _ in 0..32 {
            match netkit::process::parent_pid(cur) {
                Some(pp) if dumps.contains(&pp) => return true,
                Some(pp) if pp > 1 => cur = pp,
                _ => return false,
            }
        }
        false
    };
    let scripts: Vec<i32> = all
        .into_iter()
        .filter(|p| !dumps.contains(p) && below(*p))
        .collect();
    tracing::warn!(?dumps, ?scripts, instance = %name, "releasing a stuck source dump");
    for p in &scripts {
        let _ = kill(Pid::from_raw(*p), Signal::SIGKILL);
    }
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if dumps.iter().all(|p| !netkit::process::is_alive(*p)) {
            return Some(format!(
                "the source's criu dump ({dumps:?}) was released: its post-dump script was killed"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for p in dumps.iter().rev() {
        let _ = kill(Pid::from_raw(*p), Signal::SIGKILL);
    }
    // CRIU's network lock stays behind when it is killed.
    if netkit::process::is_alive(init_pid) {
        let ns = format!("--net=/proc/{init_pid}/ns/net");
        if let Ok(text) = Tool::new("nsenter")
            .args([ns.as_str(), "--", "nft", "list", "tables"])
            .stdout()
        {
            for line in text.lines() {
                let w: Vec<&str> = line.split_whitespace().collect();
                if let ["table", family, table] = w.as_slice() {
                    if table.starts_with("CRIU") {
                        let _ = Tool::new("nsenter")
                            .args([ns.as_str(), "--", "nft", "delete", "table", family, table])
                            .run();
                    }
                }
            }
        }
    }
    Some(format!(
        "the source's criu dump ({dumps:?}) did not end and was killed"
    ))
}

impl Backend for LxdBackend {
    fn relocation_type(&self) -> RelocationType {
        RelocationType::Lxd
    }

    fn set_arrival_hook(&self, hook: ArrivalHook) {
        self.arrival.set(hook);
    }

    fn arm_fault(&self, fault: Fault) -> Result<(), BackendError> {
        self.fault.arm(fault);
        Ok(())
    }

    async fn create(&self, spec: ServiceSpec) -> Result<Service, BackendError> {
        let service = spec.service(RelocationType::Lxd)?;
        bind_dirs(&spec.command)?;
        if port_exists(&self.cfg.site, &service.ovs_port) {
            return Err(BackendError::BadRequest(format!(
                "interface {} exists in {} already",
                service.ovs_port, self.cfg.site.netns
            )));
        }
        self.hosting.reserve(&service.service_id)?;
        let mut inst = LxdInstance {
            name: self.name(&service.service_id),
            port: service.ovs_port.clone(),
            init_pid: None,
        };
        match self.create_instance(&inst, &spec, &service.mac_addr).await {
            Ok(pid) => {
                inst.init_pid = Some(pid);
                self.hosting.install(service.clone(), inst);
                Ok(service)
            }
            Err(e) => {
                if let Err(cleanup) = self.destroy(&inst).await {
                    tracing::warn!(error = %cleanup, "cannot remove a half-made instance");
                }
                self.hosting.unreserve(&service.service_id);
                Err(e)
            }
        }
    }

    async fn remove(&self, service_id: &str) -> Result<(), BackendError> {
        let h = self.hosting.take_for_removal(service_id)?;
        self.destroy(&h.container).await
    }

    async fn services(&self) -> Result<Vec<Service>, BackendError> {
        self.hosting.running_services(LxdInstance::tcp_peers).await
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
        self.hosting.settle().await;
    }
}

/// Removes every instance this module hosts (tests, shutdown of a throw-away deployment).
pub async fn remove_all(backend: &LxdBackend) {
    backend.hosting.settle().await;
    for id in backend.hosting.ids() {
        let _ = backend.remove(&id).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site() -> EdgeSite {
        serde_json::from_value(json!({
            "edge": "x", "netns": "tb-edge-x", "bridge": "br-x", "ovs_dir": "/run/t/ovs-x"
        }))
        .expect("site")
    }

    fn backend() -> LxdBackend {
        LxdBackend::new(LxdConfig::new(
            "tb",
            site(),
            "/nonexistent/unix.socket",
            "10.0.1.1:8443".parse().expect("addr"),
            "/nonexistent/server.crt",
        ))
    }

    #[test]
    fn transmitted_bytes_come_from_the_ninth_counter_of_the_interface() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
             face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
             lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0\n  \
             br-x: 5000      10    0    0    0     0          0         0   123456      20    0    0    0     0       0          0\n";
        assert_eq!(tx_bytes_of(text, "br-x"), Some(123_456));
        assert_eq!(tx_bytes_of(text, "lo"), Some(100));
        assert_eq!(tx_bytes_of(text, "br-y"), None);
        assert_eq!(tx_bytes_of("garbage", "br-x"), None);
    }

    #[test]
    fn the_init_script_sets_the_address_and_execs_the_command() {
        let cmd = ["/opt/x/tbprobe", "serve", "--banner", "it's a b"].map(String::from);
        let s = init_script(Ipv4Addr::new(20, 0, 0, 50), &cmd);
        assert!(s.starts_with("#!/bin/busybox sh\n"));
        assert!(s.contains("touch /dev/console"));
        assert!(s.contains("ip addr add 20.0.0.50/16 dev eth0\n"));
        assert!(s.contains("ip route add default via 20.0.0.1\n"));
        assert!(
            s.ends_with("exec '/opt/x/tbprobe' 'serve' '--banner' 'it'\\''s a b'\n"),
            "{s}"
        );
        let usr_etc = bind_dirs(&["sleep".into()]).expect("binds");
        assert_eq!(usr_etc[..2], [PathBuf::from("/usr"), PathBuf::from("/etc")]);
        let binds = bind_dirs(&cmd).expect("binds");
        assert_eq!(binds.last(), Some(&PathBuf::from("/opt/x")));
        assert!(bind_dirs(&["/proc/self/exe".into()]).is_err());
        assert!(bind_dirs(&[]).is_err());
    }

    #[test]
    fn the_create_body_has_the_nic_and_the_binds() {
        let b = backend();
        let spec = ServiceSpec {
            service_id: "p50".into(),
            ipv4_addr: Ipv4Addr::new(20, 0, 0, 50),
            mac_addr: "02:00:00:00:00:50".into(),
            command: vec!["/opt/x/tbprobe".into()],
            resource_requirements: Default::default(),
        };
        let body = b
            .create_body("tb-svc-p50", &spec, "02:00:00:00:00:50")
            .expect("body");
        assert_eq!(body["source"]["alias"], "testbed-busybox");
        assert_eq!(body["config"]["security.privileged"], "true");
        assert!(body["config"]["raw.lxc"]
            .as_str()
            .is_some_and(|r| r.contains("lxc.console.path = none") && r.contains(INIT_PATH)));
        assert_eq!(
            body["devices"]["eth0"],
            json!({"type":"nic","nictype":"p2p","name":"eth0","host_name":"s-p50","hwaddr":"02:00:00:00:00:50"})
        );
        let binds = bind_dirs(&spec.command).expect("binds");
        let last = format!("bind{}", binds.len() - 1);
        assert_eq!(body["devices"][last.as_str()]["source"], "/opt/x");
        assert_eq!(body["devices"]["bind0"]["source"], "/usr");
        assert_eq!(body["devices"]["bind0"]["readonly"], "true");
    }

    #[test]
    fn the_pull_body_names_the_source_operation() {
        let info = json!({
            "name": "tb-svc-p50", "architecture": "x86_64", "profiles": ["default"],
            "config": {"security.privileged": "true", "volatile.eth0.hwaddr": "x", "volatile.idmap.base": "0"},
            "devices": {"eth0": {"type": "nic"}},
        });
        let mv = move_of(
            &info,
            "tb-svc-p50",
            &"10.0.1.1:8443".parse().expect("addr"),
            "op-1",
            "PEM".into(),
            json!({"control": "a", "fs": "b", "criu": "c"}),
        );
        assert_eq!(mv.config.len(), 1, "volatile keys are dropped");
        let body = pull_body(&mv);
        assert_eq!(
            body["source"]["operation"],
            "https://10.0.1.1:8443/1.0/operations/op-1"
        );
        assert_eq!(body["source"]["mode"], "pull");
        assert_eq!(body["source"]["secrets"]["criu"], "c");
        assert_eq!(body["source"]["live"], true);
        assert_eq!(body["devices"]["eth0"]["type"], "nic");
        let back: LxdMove =
            serde_json::from_value(serde_json::to_value(&mv).expect("json")).expect("again");
        assert_eq!(back, mv);
    }

    #[test]
    fn a_moved_container_may_have_a_numbered_cgroup() {
        assert!(in_payload_cgroup(
            "0::/lxc.payload.tb-svc-p50",
            "tb-svc-p50"
        ));
        assert!(in_payload_cgroup(
            "4:memory:/lxc.payload.tb-svc-p50-1",
            "tb-svc-p50"
        ));
        assert!(!in_payload_cgroup(
            "0::/lxc.payload.tb-svc-p500",
            "tb-svc-p50"
        ));
        assert!(!in_payload_cgroup(
            "0::/lxc.payload.tb-svc-p50-x",
            "tb-svc-p50"
        ));
        assert!(!in_payload_cgroup(
            "0::/lxc.monitor.tb-svc-p50",
            "tb-svc-p50"
        ));
    }

    #[test]
    fn a_stuck_dump_is_recognised_by_its_tree() {
        let args = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        assert!(is_dump_of(
            &args("/bin/sh /d/bin/criu dump --tcp-established -t 4242 -D /var/lib/lxd/x"),
            "c",
            4242
        ));
        assert!(is_dump_of(
            &args("/opt/testbed/bin/criu dump --tree=4242"),
            "c",
            4242
        ));
        assert!(!is_dump_of(
            &args("/opt/testbed/bin/criu restore -t 4242"),
            "c",
            4242
        ));
        assert!(!is_dump_of(
            &args("/opt/testbed/bin/criu dump -t 4243"),
            "c",
            4242
        ));
        assert!(!is_dump_of(&args("lxd dump -t 4242"), "c", 4242));
        assert!(is_dump_of(
            &args("/opt/l/ld-linux-x86-64.so.2 --library-path /opt/l /opt/c/usr/sbin/criu dump -t 4242"),
            "c",
            4242
        ));
    }

    #[tokio::test]
    async fn only_lxd_services_are_taken_and_lazy_pages_refused() {
        let b = backend();
        assert_eq!(b.relocation_type(), RelocationType::Lxd);
        assert_eq!(b.name("p50"), "tb-svc-p50");
        let mut s = service_of("p50");
        s.mac_addr = "02:00:00:00:00:50".into();
        s.ovs_port = "s-p50".into();
        assert!(b.check_service(&s).is_ok());
        let lxc = Service {
            relocation_type: RelocationType::Lxc,
            ..s.clone()
        };
        assert!(b.check_service(&lxc).is_err());
        let request = ExecuteRequest {
            relocation_id: "r".into(),
            service: s,
            target_address: "10.0.1.2:9100".parse().expect("addr"),
        };
        let e = b
            .migrate_out_with(&request, Strategy::LazyPages)
            .await
            .expect_err("lazy");
        assert!(matches!(
            e,
            MigrationError::NotStarted {
                source: BackendError::Unsupported(_),
                ..
            }
        ));
        let e = b.migrate_out(&request).await.expect_err("unknown");
        assert!(matches!(
            e,
            MigrationError::NotStarted {
                source: BackendError::UnknownService { .. },
                ..
            }
        ));
    }
}

//! The LXD runtime: services as LXD system containers (one LXD daemon per edge, in the edge's
//! network namespace, see DESIGN.md "LXD"), moved by LXD's own live migration in **pull** mode
//! (transport [`Transport::Pull`]): the target's daemon pulls the instance from the source's
//! daemon over HTTPS on the backhaul, while the two modules speak the migration connection to
//! agree on it ([`crate::protocol`]); [`LxdBackend`] is the driver over it.
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
//! container ([`crate::container::attach`], the init PID from `GET …/state`).
//!
//! | step | source | target |
//! |---|---|---|
//! | offer / accept | `GET /1.0/instances/NAME` (config, devices); `POST /1.0/instances/NAME {"migration":true,"live":true,"instance_only":true}` → LXD's operation and its secrets (nothing stops yet): the [`LxdMove`] with `https://S_HTTPS/1.0/operations/ID` and S's server certificate | check the name and that `s-<id>` is free |
//! | withdraw | cancel the operation | |
//! | checkpoint | note the backhaul's sent bytes (LXD stops the service inside the target's pull) | |
//! | restore | | `POST /1.0/instances` with `source: {type: migration, mode: pull, live: true, …}`; wait for its operation (LXD freezes, dumps, copies and restores: the service runs here when it succeeds) |
//! | go live | | `s-<id>` onto the bridge, offload off, gateway pinned (then the arrival hook: the SMO's new path outputs to that port) |
//! | after `Done` | LXD's operation ends; the stopped source instance is deleted (LXD 5.0.2 may answer "busy running a stop operation" for a while: retried) | |
//! | resume at source | release the stuck dump, see below | |
//!
//! LXD has no gated restore: the container resumes at the target inside LXD's operation, so the
//! port is attached and the arrival hook runs right after the resume (the service's first
//! packets may leave before the path switch; the UE's retransmissions cover them). **The service
//! is at the source unless T said `Restored`.** If T fails, hangs or the connection breaks
//! before, S releases its side: LXD 5.0.2's source `criu dump` waits forever in its post-dump
//! action script when the target's restore failed, with the container frozen. S finds that
//! `criu` (a process in the edge's network namespace whose command line is a `dump` of the
//! instance's init), kills the action script under it — CRIU then treats the dump as failed and
//! resumes the container itself, with its TCP connections intact (rolled back) — and only if
//! that `criu` does not end, kills it and thaws the container (its connections may then be
//! lost); a stopped source instance is started again (a fresh start). If nothing was dumped the
//! service simply runs on (not started).
//!
//! Limits: LXD does not say how many bytes a migration moved: `bytes_moved` is what the source
//! edge sent on its backhaul interface during LXD's move (images, TLS and TCP/IP headers, and
//! whatever else the edge sent then), `image_bytes` is 0. Only stop-and-copy (LXD's live
//! migration); post-copy is refused. The fault [`Fault::CorruptImages`] makes the next incoming
//! restore fail after the source's dump (the target takes the service's port name `s-<id>` in
//! its namespace right before pulling, so LXD cannot make the container's NIC at the restore):
//! LXD gives no hook to damage its images.

use crate::container::{self, attach, detach, port_exists, EdgeSite};
use crate::driver::Driver;
use crate::error::RuntimeError;
use crate::hosting::{blocking, blocking_try};
use crate::lxc::LxcError;
use crate::lxd::{LxdClient, LxdError};
use crate::runtime::{
    decode_offer, CheckpointError, Checkpointed, Config, Found, Leg, Resumed, Runtime, Transport,
};
use crate::service::{Fault, ServiceSpec, Strategy};
use model::smo::{RelocationType, Service};
use netkit::cmd::Tool;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The init script's place in the container's rootfs.
pub const INIT_PATH: &str = "/sbin/svcmod-init";
/// The default image alias (a busybox rootfs imported into each daemon).
pub const DEFAULT_IMAGE: &str = "testbed-busybox";

/// The LXD runtime's own options: the edge's daemon.
#[derive(Debug, Clone)]
pub struct LxdOptions {
    /// The daemon's unix socket, e.g. `/var/lib/lxd/unix.socket`.
    pub socket: PathBuf,
    /// Where the daemon listens on HTTPS on the backhaul (target daemons pull from it), e.g.
    /// `10.0.1.1:8443`.
    pub https_addr: SocketAddr,
    /// The daemon's server certificate (PEM file), sent to targets so they can check it.
    pub cert: PathBuf,
    /// The local image the containers are made from.
    pub image: String,
}

/// How an LXD module is set up.
pub type LxdConfig = Config<LxdOptions>;

impl LxdConfig {
    /// The defaults for `site` and a daemon at `socket` / `https_addr` with certificate `cert`:
    /// image [`DEFAULT_IMAGE`]; the restore limit is the time limit of LXD's whole move (the
    /// target's pull), 60 s, and the source waits 5 s longer for its answer (`transfer`).
    pub fn for_daemon(
        prefix: impl Into<String>,
        site: EdgeSite,
        socket: impl Into<PathBuf>,
        https_addr: SocketAddr,
        cert: impl Into<PathBuf>,
    ) -> Self {
        let mut cfg = Config::new(
            prefix,
            site,
            LxdOptions {
                socket: socket.into(),
                https_addr,
                cert: cert.into(),
                image: DEFAULT_IMAGE.into(),
            },
        );
        cfg.timeouts.restore = Duration::from_secs(60);
        cfg.timeouts.transfer = Duration::from_secs(5);
        cfg
    }
}

/// The LXD service module backend of one edge cloud.
pub type LxdBackend = Driver<LxdRuntime>;

/// Services as LXD instances, moved by LXD's live migration.
#[derive(Debug)]
pub struct LxdRuntime {
    cfg: LxdConfig,
    lxd: LxdClient,
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

    /// Its init's PID, or the error that it does not run.
    fn running_pid(&self) -> Result<i32, RuntimeError> {
        self.init_pid()
            .ok_or_else(|| RuntimeError::State(format!("instance {} is not running", self.name)))
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

/// The source's side of one move.
#[derive(Debug)]
pub struct LxdOutgoing {
    /// LXD's migration operation at the source.
    op_id: String,
    /// The init when the move began.
    pid_before: i32,
    /// The backhaul's sent bytes when the pull began.
    sent_before: Option<u64>,
}

/// The target's side of one move.
#[derive(Debug)]
pub struct LxdIncoming {
    mv: LxdMove,
    /// The interface the fault made in the port's name (removed again on abort).
    taken_port: Option<String>,
}

impl LxdRuntime {
    /// The client of the module's daemon.
    pub fn client(&self) -> &LxdClient {
        &self.lxd
    }

    /// The instance name of service `service_id`.
    pub fn name(&self, service_id: &str) -> String {
        instance_name(&self.cfg.prefix, service_id)
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

    /// The init PID of a running instance.
    async fn init_of(&self, name: &str) -> Result<i32, RuntimeError> {
        let (_, pid) = self.state(name).await?;
        pid.ok_or_else(|| RuntimeError::State(format!("instance {name} has no init")))
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

    /// `s-<id>` onto the bridge (a stale port record first removed), offload off on both ends,
    /// the gateway pinned inside.
    async fn attach_port(&self, inst: &LxdInstance, pid: i32) -> Result<(), RuntimeError> {
        let (site, port) = (self.cfg.site.clone(), inst.port.clone());
        blocking_try(move || {
            site.ovs
                .vsctl(["--if-exists", "del-port", &site.bridge, &port])
                .map(drop)?;
            attach(&site, &port, pid)
        })
        .await
    }

    /// The body creating a service's instance.
    fn create_body(
        &self,
        name: &str,
        spec: &ServiceSpec,
        mac: &str,
    ) -> Result<Value, RuntimeError> {
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
            "source": {"type": "image", "alias": self.cfg.runtime.image},
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
    ) -> Result<i32, RuntimeError> {
        let body = self.create_body(&inst.name, spec, mac)?;
        let answer = self.lxd.post("/1.0/instances", &body).await?;
        self.lxd.finish(answer, Duration::from_secs(60)).await?;
        let script = init_script(spec.ipv4_addr, &spec.command);
        self.lxd
            .push_file(&inst.name, INIT_PATH, script.as_bytes(), 0o755)
            .await?;
        self.set_state(&inst.name, "start", false).await?;
        let pid = self.init_of(&inst.name).await?;
        self.attach_port(inst, pid).await?;
        Ok(pid)
    }

    /// Cancels a source migration operation (best effort).
    async fn cancel(&self, op_id: &str) {
        if let Err(e) = self.lxd.delete(&format!("/1.0/operations/{op_id}")).await {
            tracing::debug!(operation = %op_id, error = %e, "cannot cancel the migration operation");
        }
    }
}

impl Runtime for LxdRuntime {
    type Options = LxdOptions;
    type Container = LxdInstance;
    type Outgoing = LxdOutgoing;
    type Incoming = LxdIncoming;

    const RELOCATION_TYPE: RelocationType = RelocationType::Lxd;
    const TRANSPORT: Transport = Transport::Pull;

    fn new(cfg: LxdConfig) -> Self {
        Self {
            lxd: LxdClient::new(cfg.runtime.socket.clone()),
            cfg,
        }
    }

    fn config(&self) -> &LxdConfig {
        &self.cfg
    }

    async fn start(
        &self,
        spec: &ServiceSpec,
        service: &Service,
    ) -> Result<LxdInstance, RuntimeError> {
        bind_dirs(&spec.command)?;
        if port_exists(&self.cfg.site, &service.ovs_port) {
            return Err(RuntimeError::State(format!(
                "interface {} exists in {} already",
                service.ovs_port, self.cfg.site.netns
            )));
        }
        let mut inst = LxdInstance {
            name: self.name(&service.service_id),
            port: service.ovs_port.clone(),
            init_pid: None,
        };
        match self.create_instance(&inst, spec, &service.mac_addr).await {
            Ok(pid) => {
                inst.init_pid = Some(pid);
                Ok(inst)
            }
            Err(e) => {
                if let Err(cleanup) = self.destroy(&inst).await {
                    tracing::warn!(error = %cleanup, "cannot remove a half-made instance");
                }
                Err(e)
            }
        }
    }

    /// Removes an instance, its empty cgroups and its OVS port; tries each.
    async fn destroy(&self, inst: &LxdInstance) -> Result<(), RuntimeError> {
        let deleted = self.delete_instance(&inst.name).await;
        let (site, port, name) = (self.cfg.site.clone(), inst.port.clone(), inst.name.clone());
        let detached = blocking_try(move || {
            // LXD leaves the instance's empty cgroups behind (`lxc.payload.NAME/.lxc`).
            crate::lxd_daemon::remove_empty_cgroups([name]);
            detach(&site, &port)
        })
        .await;
        deleted?;
        detached
    }

    fn peers(inst: &LxdInstance) -> Result<Vec<Ipv4Addr>, RuntimeError> {
        let pid = inst.running_pid()?;
        Ok(container::tcp_peers_in(Path::new(&format!(
            "/proc/{pid}/ns/net"
        )))?)
    }

    async fn offer(
        &self,
        _leg: &Leg,
        _strategy: Strategy,
        inst: &LxdInstance,
    ) -> Result<(LxdOutgoing, Value), RuntimeError> {
        let pid_before = inst.running_pid()?;
        let path = format!("/1.0/instances/{}", inst.name);
        let info = self.lxd.get(&path).await?;
        let cert = &self.cfg.runtime.cert;
        let certificate = std::fs::read_to_string(cert).map_err(|source| RuntimeError::Io {
            path: cert.clone(),
            source,
        })?;
        let op = self
            .lxd
            .post(
                &path,
                &json!({"migration": true, "live": true, "instance_only": true}),
            )
            .await?
            .operation()
            .ok_or_else(|| {
                RuntimeError::State(
                    "lxd answered the migration request without an operation".into(),
                )
            })?;
        let mv = move_of(
            &info,
            &inst.name,
            &self.cfg.runtime.https_addr,
            &op.id,
            certificate,
            op.metadata.clone(),
        );
        let out = LxdOutgoing {
            op_id: op.id,
            pid_before,
            sent_before: None,
        };
        Ok((out, json!(mv)))
    }

    async fn withdraw(&self, out: LxdOutgoing) {
        self.cancel(&out.op_id).await;
    }

    async fn checkpoint(
        &self,
        _leg: &Leg,
        out: &mut LxdOutgoing,
        _inst: &mut LxdInstance,
    ) -> Result<Checkpointed, CheckpointError> {
        out.sent_before = backhaul_tx_bytes(&self.cfg.site).await;
        Ok(Checkpointed::default())
    }

    async fn moved_bytes(&self, out: &LxdOutgoing) -> Option<u64> {
        let after = backhaul_tx_bytes(&self.cfg.site).await?;
        Some(after.saturating_sub(out.sent_before?))
    }

    /// The move failed before the target said `Restored` (see the module docs).
    async fn resume_at_source(
        &self,
        _leg: &Leg,
        out: LxdOutgoing,
        inst: &mut LxdInstance,
    ) -> Result<Resumed, RuntimeError> {
        let netns_ino = self.cfg.site.netns.inode();
        let (name, pid_before) = (inst.name.clone(), out.pid_before);
        let released = blocking(move || release_stuck_dump(netns_ino, &name, pid_before)).await?;
        self.cancel(&out.op_id).await;
        // LXD may take a moment to notice the dump ended.
        let mut state = self.state(&inst.name).await?;
        for _ in 0..20 {
            if matches!(state.0.as_str(), "Running" | "Stopped" | "Frozen") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            state = self.state(&inst.name).await?;
        }
        let restarted = state.0 == "Stopped";
        match state.0.as_str() {
            "Frozen" => self.set_state(&inst.name, "unfreeze", false).await?,
            "Stopped" => self.set_state(&inst.name, "start", false).await?,
            _ => {}
        }
        let pid = self.init_of(&inst.name).await?;
        if restarted {
            self.attach_port(inst, pid).await?;
            tracing::warn!(instance = %inst.name, "the source instance was started again (its connections are lost)");
        }
        inst.init_pid = Some(pid);
        if let Some(r) = &released {
            tracing::warn!(instance = %inst.name, "{r}");
        }
        Ok(if released.is_none() && !restarted && pid == pid_before {
            Resumed::Untouched
        } else {
            Resumed::Restored
        })
    }

    async fn complete(&self, out: &mut LxdOutgoing) -> Result<(), RuntimeError> {
        // LXD's own operation at the source ends with the move.
        if let Err(e) = self.lxd.wait(&out.op_id, Duration::from_secs(10)).await {
            tracing::debug!(operation = %out.op_id, error = %e, "source migration operation");
        }
        Ok(())
    }

    async fn accept(
        &self,
        leg: &Leg,
        offer: Value,
    ) -> Result<(LxdIncoming, LxdInstance), RuntimeError> {
        let mv: LxdMove = decode_offer(offer, "LXD move")?;
        let name = self.name(&leg.service.service_id);
        if mv.name != name {
            return Err(RuntimeError::Offer(format!(
                "instance {} is not named {name}",
                mv.name
            )));
        }
        if port_exists(&self.cfg.site, &leg.service.ovs_port) {
            return Err(RuntimeError::State(format!(
                "interface {} exists in {} already",
                leg.service.ovs_port, self.cfg.site.netns
            )));
        }
        let inst = LxdInstance {
            name,
            port: leg.service.ovs_port.clone(),
            init_pid: None,
        };
        Ok((
            LxdIncoming {
                mv,
                taken_port: None,
            },
            inst,
        ))
    }

    async fn inject(
        &self,
        leg: &Leg,
        incoming: &mut LxdIncoming,
        fault: Fault,
    ) -> Result<bool, RuntimeError> {
        match fault {
            Fault::CorruptImages => {
                let (site, port) = (self.cfg.site.clone(), leg.service.ovs_port.clone());
                let peer = format!("f{}", port.get(1..).unwrap_or_default());
                let taken = port.clone();
                blocking_try(move || {
                    site.netns
                        .ip(["link", "add", &taken, "type", "veth", "peer", "name", &peer])
                })
                .await?;
                incoming.taken_port = Some(port);
                tracing::warn!("fault: the service's port name is taken: the restore will fail");
                Ok(true)
            }
        }
    }

    async fn restore(
        &self,
        _leg: &Leg,
        incoming: &mut LxdIncoming,
        inst: &mut LxdInstance,
    ) -> Result<(), RuntimeError> {
        let answer = self
            .lxd
            .post("/1.0/instances", &pull_body(&incoming.mv))
            .await?;
        let op = answer.operation().ok_or_else(|| {
            RuntimeError::State("lxd answered the pull without an operation".into())
        })?;
        if let Err(e) = self.lxd.wait(&op.id, self.cfg.timeouts.restore).await {
            self.cancel(&op.id).await;
            return Err(e.into());
        }
        inst.init_pid = Some(self.init_of(&inst.name).await?);
        Ok(())
    }

    async fn go_live(
        &self,
        _incoming: &mut LxdIncoming,
        inst: &mut LxdInstance,
    ) -> Result<(), RuntimeError> {
        // The port first: the SMO's new path outputs to it.
        let pid = inst.running_pid()?;
        self.attach_port(inst, pid).await
    }

    /// Every instance `<prefix>-svc-<id>` of the edge's daemon: a running one is reachable again
    /// (its port onto the bridge: a target may have crashed between the pull and the attach); a
    /// frozen one is a source whose dump a crash left stuck: released and thawed, it runs.
    async fn survey(&self) -> Result<Vec<Found<LxdInstance>>, RuntimeError> {
        let head = format!("{}-svc-", self.cfg.prefix);
        let listed = self.lxd.get("/1.0/instances").await?;
        let mut found = Vec::new();
        for url in listed.as_array().into_iter().flatten() {
            let Some(name) = url.as_str().and_then(|u| u.rsplit('/').next()) else {
                continue;
            };
            let Some(id) = name
                .strip_prefix(&head)
                .filter(|id| container::validate_service_id(id).is_ok())
            else {
                continue;
            };
            let mut inst = LxdInstance {
                name: name.to_owned(),
                port: format!("s-{id}"),
                init_pid: None,
            };
            let (mut status, pid) = self.state(name).await?;
            if let (true, Some(pid)) = (status == "Frozen", pid) {
                let (ino, n) = (self.cfg.site.netns.inode(), name.to_owned());
                let released = blocking(move || release_stuck_dump(ino, &n, pid)).await?;
                tracing::warn!(instance = %name, ?released, "a frozen source instance after a crash");
                self.set_state(name, "unfreeze", false).await?;
                status = self.state(name).await?.0;
            }
            let mut service = None;
            if status == "Running" {
                let pid = self.init_of(name).await?;
                inst.init_pid = Some(pid);
                self.attach_port(&inst, pid).await?;
                let ns = PathBuf::from(format!("/proc/{pid}/ns/net"));
                service = container::service_in(id, RelocationType::Lxd, &ns).ok();
            }
            found.push(Found {
                service_id: id.to_owned(),
                running: service.is_some(),
                service,
                container: inst,
            });
        }
        Ok(found)
    }

    async fn abort(&self, incoming: LxdIncoming) {
        if let Some(port) = incoming.taken_port {
            let site = self.cfg.site.clone();
            let _ = blocking(move || site.netns.ip(["link", "del", &port])).await;
        }
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
pub fn bind_dirs(command: &[String]) -> Result<Vec<PathBuf>, LxcError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{BackendError, MigrationError, MoveError};
    use crate::hosting::check_incoming;
    use crate::Backend;
    use model::smo::ExecuteRequest;

    fn backend() -> LxdBackend {
        LxdBackend::new(LxdConfig::for_daemon(
            "tb",
            crate::fake::site("x"),
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
            .runtime()
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
        assert_eq!(b.runtime().name("p50"), "tb-svc-p50");
        let s = crate::fake::service("p50", RelocationType::Lxd);
        assert!(check_incoming(&s, RelocationType::Lxd).is_ok());
        let lxc = Service {
            relocation_type: RelocationType::Lxc,
            ..s.clone()
        };
        assert!(check_incoming(&lxc, RelocationType::Lxd).is_err());
        // The offer must pull the instance of this very service.
        let leg = Leg {
            relocation_id: "r".into(),
            service: s.clone(),
            work: std::env::temp_dir().join("svcmod-lxd-offer-never-used"),
        };
        let mv = move_of(
            &json!({"name": "tb-svc-other"}),
            "tb-svc-other",
            &"10.0.1.1:8443".parse().expect("addr"),
            "op-1",
            "PEM".into(),
            json!({}),
        );
        let e = b
            .runtime()
            .accept(&leg, json!(mv))
            .await
            .expect_err("another instance");
        assert!(e.to_string().contains("is not named tb-svc-p50"), "{e}");
        let e = b
            .runtime()
            .accept(&leg, json!({"name": "tb-svc-p50"}))
            .await
            .expect_err("not a move");
        assert!(e.to_string().starts_with("bad offer: LXD move"), "{e}");
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
                cause: MoveError::Request(BackendError::Unsupported(_)),
                ..
            }
        ));
        let e = b.migrate_out(&request).await.expect_err("unknown");
        assert!(matches!(
            e,
            MigrationError::NotStarted {
                cause: MoveError::Request(BackendError::UnknownService { .. }),
                ..
            }
        ));
    }
}

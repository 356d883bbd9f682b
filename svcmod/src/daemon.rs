//! The service-module daemon (`svcmod --config FILE.json --ready-file PATH`): one per edge cloud,
//! started by `testbed up` inside the edge's namespace. In order:
//!
//! 1. (binary, single-threaded) leave the private mount namespace of `ip netns exec`
//!    ([`crate::mount_ns`]) so the service namespaces it makes are visible to the host;
//! 2. bind the callbacks on `api_addr` and the migration receiver on `migration_addr` (plainly
//!    when it runs in the edge's namespace, else inside it with [`transfer::listen_in`]);
//! 3. create the configured services — a failure is fatal and removes what was made; or, when
//!    the work directory says the module had started before (it was killed, and is restarted
//!    with the same config), reconcile instead: host what runs at the edge, remove what a crash
//!    left half-made, resume at the source a move cut off before `Commit`
//!    ([`crate::driver::Driver::reconcile`]);
//! 4. serve the callbacks ([`crate::api`]) and receive migrations ([`crate::run_receiver`]);
//! 5. register with the SMO (`POST {smo_url}/service-mobility/v1/service-modules`), retrying every
//!    200 ms for up to 10 s; a 4xx answer is fatal at start. When the SMO does not answer in that
//!    window the daemon warns, goes on, and keeps registering in the background every 2 s;
//! 6. ready (the ready file) once registered or the window is over;
//! 7. on SIGTERM: stop registering, de-register (`DELETE` the registration's `Location`), stop
//!    accepting callbacks and migrations and let the running ones end, remove every service it
//!    hosts (CRIU: processes by PID, OVS port, namespace; LXC: container, OVS port, cgroups) and
//!    its work directory (with the LXC backend's lxcpath).
//!
//! [`run_with`] is the daemon over any [`Backend`] and pre-bound listeners (the tests run it with
//! a fake backend on loopback); [`run`] is the daemon from a [`ModuleConfig`], over the backend
//! it names (`backend`: CRIU or LXC).

use crate::api::{self, Module};
use crate::backend::{ArrivalHook, Backend, ARRIVAL_LIMIT};
use crate::container::{self, EdgeSite};
use crate::criu_backend::{CriuBackend, CriuConfig, CriuOptions};
use crate::error::BackendError;
use crate::lxc_backend::{LxcBackend, LxcConfig, LxcOptions};
use crate::lxd_backend::{LxdBackend, LxdConfig};
use crate::mount_ns::{MountNamespace, MountNsError};
use crate::runtime::{Config, DEFAULT_WORK_ROOT};
use crate::service::{ServiceSpec, Strategy};
use crate::transfer;
use model::smo::{RelocationType, ServiceArrival, ServiceModule, ServiceModuleRegistration};
use netkit::Netns;
use sbi::{Client, ClientError};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

/// The SMO's service-module collection.
pub const SERVICE_MODULES: &str = "/service-mobility/v1/service-modules";
/// The SMO's relocations as modules see them: `{RELOCATIONS}/{relocationId}/arrival`.
pub const RELOCATIONS: &str = "/service-mobility/v1/relocations";

/// `svcmod --config FILE.json --ready-file PATH`: one service module of one edge cloud (JSON,
/// snake_case, unknown fields refused; checked when parsed, so a bad config exits with 64).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "snake_case",
    try_from = "ModuleConfigFields"
)]
pub struct ModuleConfig {
    /// The module's name in logs, e.g. `svcmod-x`.
    pub name: String,
    /// Base URL of this edge's SMO, e.g. `http://10.100.0.41:8090`.
    pub smo_url: String,
    /// The deployment's bearer token: required on the callbacks, sent to the SMO.
    pub token: Option<String>,
    /// Where the callbacks listen, e.g. `10.100.0.41:9100` (0.0.0.0: the SMO is told 127.0.0.1).
    pub api_addr: SocketAddrV4,
    /// The migration receiver's backhaul address, e.g. `10.0.1.1:9200`: the registration's
    /// `notifAddress` (and, for lazy pages, where this module's page servers listen).
    pub migration_addr: SocketAddrV4,
    /// The testbed's namespace prefix, e.g. `tb`: service namespaces (CRIU) and containers (LXC)
    /// are `<prefix>-svc-<id>-<edge>`.
    pub prefix: String,
    /// The edge cloud: `{"edge", "netns", "bridge", "ovs_dir"}` (see [`EdgeSite`]).
    pub site: EdgeSite,
    /// How services run and move: `criu` (default; process trees in their own namespaces),
    /// `lxc` (LXC containers, `lxc-checkpoint`) or `lxd` (LXD containers, LXD's live migration;
    /// needs `lxd`). The module registers with the matching relocation type (`CRIU` / `LXC` /
    /// `LXD`).
    #[serde(default)]
    pub backend: ModuleBackend,
    /// The edge's LXD daemon (backend `lxd` only): `{"socket", "https_addr", "cert",
    /// "image_alias"}` (see [`LxdDaemonConfig`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lxd: Option<LxdDaemonConfig>,
    /// Images, CRIU logs and (LXC) the lxcpath `lxc/` (tmpfs; removed at shutdown). Default
    /// `/dev/shm/testbed-svcmod/<prefix>-<edge>`.
    pub work_dir: Option<PathBuf>,
    /// How services move: `stop-and-copy` (default) or `lazy-pages` (`stop_and_copy` /
    /// `lazy_pages` accepted too; CRIU only).
    #[serde(default)]
    pub strategy: Strategy,
    /// Services created at start, in this module's edge.
    #[serde(default)]
    pub services: Vec<ServiceSpec>,
}

/// [`ModuleConfig`] as parsed, before its checks.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
struct ModuleConfigFields {
    name: String,
    smo_url: String,
    token: Option<String>,
    api_addr: SocketAddrV4,
    migration_addr: SocketAddrV4,
    prefix: String,
    site: EdgeSite,
    #[serde(default)]
    backend: ModuleBackend,
    #[serde(default)]
    lxd: Option<LxdDaemonConfig>,
    work_dir: Option<PathBuf>,
    #[serde(default)]
    strategy: Strategy,
    #[serde(default)]
    services: Vec<ServiceSpec>,
}

impl TryFrom<ModuleConfigFields> for ModuleConfig {
    type Error = String;

    fn try_from(f: ModuleConfigFields) -> Result<Self, String> {
        let cfg = ModuleConfig {
            name: f.name,
            smo_url: f.smo_url,
            token: f.token,
            api_addr: f.api_addr,
            migration_addr: f.migration_addr,
            prefix: f.prefix,
            site: f.site,
            backend: f.backend,
            lxd: f.lxd,
            work_dir: f.work_dir,
            strategy: f.strategy,
            services: f.services,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

impl ModuleConfig {
    /// Checks what serde cannot: names, URL, addresses, paths, the services. The error names
    /// the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.trim().is_empty() {
            return Err("name: empty".into());
        }
        match reqwest::Url::parse(&self.smo_url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            _ => return Err(format!("smo_url: `{}` is not an http(s) URL", self.smo_url)),
        }
        if self.token.as_deref().is_some_and(str::is_empty) {
            return Err("token: empty (leave it out for none)".into());
        }
        if self.migration_addr.ip().is_unspecified() || self.migration_addr.port() == 0 {
            return Err(format!(
                "migration_addr: {} is no address another module can reach",
                self.migration_addr
            ));
        }
        if self.api_addr == self.migration_addr {
            return Err("api_addr and migration_addr are the same".into());
        }
        if self.prefix.is_empty()
            || !self
                .prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(format!("prefix: `{}` (want a-z, 0-9, -)", self.prefix));
        }
        if self.backend == ModuleBackend::Lxc && self.strategy == Strategy::LazyPages {
            return Err("strategy: lazy-pages is not supported by the lxc backend".into());
        }
        match (&self.lxd, self.backend) {
            (None, ModuleBackend::Lxd) => return Err("lxd: missing (backend lxd needs it)".into()),
            (Some(_), b) if b != ModuleBackend::Lxd => {
                return Err("lxd: only for backend lxd".into())
            }
            (Some(l), _) => l.validate()?,
            (None, _) => {}
        }
        if self.backend == ModuleBackend::Lxd && self.strategy == Strategy::LazyPages {
            return Err("strategy: lazy-pages is not supported by the lxd backend".into());
        }
        if let Some(w) = &self.work_dir {
            if !w.is_absolute() || w.parent().is_none() {
                return Err(format!(
                    "work_dir: `{}` (want an absolute path below /)",
                    w.display()
                ));
            }
        }
        let (mut ids, mut ips) = (HashSet::new(), HashSet::new());
        for (i, s) in self.services.iter().enumerate() {
            let at = |e: &dyn std::fmt::Display| format!("services[{i}]: {e}");
            container::validate_service_id(&s.service_id).map_err(|e| at(&e))?;
            container::validate_mac(&s.mac_addr).map_err(|e| at(&e))?;
            if s.command.is_empty() {
                return Err(at(&"empty command"));
            }
            if !ids.insert(s.service_id.as_str()) {
                return Err(at(&format_args!("service id {} twice", s.service_id)));
            }
            if !ips.insert(s.ipv4_addr) {
                return Err(at(&format_args!("address {} twice", s.ipv4_addr)));
            }
        }
        Ok(())
    }

    /// What every backend's module takes from this config: the defaults of [`Config::new`], the
    /// configured work directory and strategy, the source container removed in the background
    /// (Execute answers as soon as the service runs at the target).
    fn module_config<T>(&self, runtime: T) -> Config<T> {
        let mut c = Config::new(self.prefix.clone(), self.site.clone(), runtime);
        self.adapt(&mut c);
        c
    }

    fn adapt<T>(&self, c: &mut Config<T>) {
        if let Some(w) = &self.work_dir {
            c.work_dir = w.clone();
        }
        c.strategy = self.strategy;
        c.background_cleanup = true;
    }

    /// The CRIU backend's configuration, with page servers on the migration address.
    pub fn criu_config(&self) -> CriuConfig {
        self.module_config(CriuOptions {
            backhaul_addr: Some(*self.migration_addr.ip()),
            ..CriuOptions::default()
        })
    }

    /// The LXC backend's configuration.
    pub fn lxc_config(&self) -> LxcConfig {
        self.module_config(LxcOptions::default())
    }

    /// The LXD backend's configuration (backend `lxd`): the daemon of the `lxd` table, the
    /// defaults of [`LxdConfig::for_daemon`] otherwise.
    pub fn lxd_config(&self) -> Option<LxdConfig> {
        let l = self.lxd.as_ref()?;
        let mut c = LxdConfig::for_daemon(
            self.prefix.clone(),
            self.site.clone(),
            l.socket.clone(),
            l.https_addr.into(),
            l.cert.clone(),
        );
        c.runtime.image = l.image_alias.clone();
        self.adapt(&mut c);
        Some(c)
    }

    /// The work directory of the configured backend (every backend's default is the same).
    pub fn work_dir(&self) -> PathBuf {
        self.criu_config().work_dir
    }

    /// What [`run_with`] needs from the config.
    pub fn settings(&self) -> Settings {
        Settings {
            name: self.name.clone(),
            smo_url: self.smo_url.clone(),
            token: self.token.clone(),
            services: self.services.clone(),
            register: RegisterPolicy::default(),
            start_note: Some(start_note(&self.work_dir(), &self.name)),
        }
    }
}

/// The edge's LXD daemon, for backend `lxd` (in a config: the `lxd` table).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct LxdDaemonConfig {
    /// The daemon's unix socket, e.g. `/var/lib/lxd/unix.socket` (as the module sees it).
    pub socket: PathBuf,
    /// The daemon's HTTPS address on the backhaul, e.g. `10.0.1.1:8443`: target daemons pull
    /// services from it.
    pub https_addr: SocketAddrV4,
    /// The daemon's server certificate (PEM file), e.g. `/var/lib/lxd/server.crt`.
    pub cert: PathBuf,
    /// The local image services are made from (default `testbed-busybox`).
    #[serde(default = "default_image_alias")]
    pub image_alias: String,
}

fn default_image_alias() -> String {
    crate::lxd_backend::DEFAULT_IMAGE.into()
}

impl LxdDaemonConfig {
    fn validate(&self) -> Result<(), String> {
        if !self.socket.is_absolute() {
            return Err(format!(
                "lxd.socket: `{}` (want an absolute path)",
                self.socket.display()
            ));
        }
        if !self.cert.is_absolute() {
            return Err(format!(
                "lxd.cert: `{}` (want an absolute path)",
                self.cert.display()
            ));
        }
        if self.https_addr.ip().is_unspecified() || self.https_addr.port() == 0 {
            return Err(format!(
                "lxd.https_addr: {} is no address another daemon can reach",
                self.https_addr
            ));
        }
        if self.image_alias.trim().is_empty() {
            return Err("lxd.image_alias: empty".into());
        }
        Ok(())
    }
}

/// The backend a module runs its services on (in a config: `"criu"`, `"lxc"` or `"lxd"`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModuleBackend {
    /// [`CriuBackend`]: process trees in their own namespaces, moved with CRIU.
    #[default]
    Criu,
    /// [`LxcBackend`]: LXC containers, moved with `lxc-checkpoint`.
    Lxc,
    /// [`LxdBackend`]: LXD containers, moved by LXD's live migration (pull mode).
    Lxd,
}

impl ModuleBackend {
    /// The relocation type a module of this backend registers with.
    pub fn relocation_type(self) -> RelocationType {
        match self {
            Self::Criu => RelocationType::Criu,
            Self::Lxc => RelocationType::Lxc,
            Self::Lxd => RelocationType::Lxd,
        }
    }
}

/// How the daemon registers with its SMO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegisterPolicy {
    /// Pause between attempts during start-up.
    pub attempt_every: Duration,
    /// How long start-up waits for the SMO before going on without it (a warning).
    pub patience: Duration,
    /// Pause between attempts after that (in the background).
    pub retry_every: Duration,
    /// Time limit of one call to the SMO.
    pub call_limit: Duration,
}

impl Default for RegisterPolicy {
    fn default() -> Self {
        Self {
            attempt_every: Duration::from_millis(200),
            patience: Duration::from_secs(10),
            retry_every: Duration::from_secs(2),
            call_limit: Duration::from_secs(5),
        }
    }
}

/// The backend-independent part of the daemon's configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The module's name in logs.
    pub name: String,
    pub smo_url: String,
    pub token: Option<String>,
    /// Created at start.
    pub services: Vec<ServiceSpec>,
    pub register: RegisterPolicy,
    /// Where the module notes that it runs (an empty directory — `testbed down` sweeps it with
    /// the work directories — made once its services are, removed when [`run_with`] ends: only
    /// a killed module leaves it). When it is there at start, the module
    /// was killed and is restarted, and it reconciles ([`Backend::reconcile`]) instead of
    /// creating `services` — what runs at its edge is the truth (a service may have moved away
    /// before the crash). `None`: always a fresh start.
    pub start_note: Option<PathBuf>,
}

/// The start note of module `name` whose work directory is `work_dir`: beside it (the modules of
/// an edge may share a work directory, and it holds only the moves' directories),
/// `<work_dir>.<name>.started`.
pub fn start_note(work_dir: &Path, name: &str) -> PathBuf {
    let mut file = work_dir.as_os_str().to_owned();
    file.push(format!(".{name}.started"));
    PathBuf::from(file)
}

/// A failure that ends the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("bad config: {0}")]
    Config(String),
    #[error(transparent)]
    MountNamespace(#[from] MountNsError),
    #[error("cannot listen for {what} on {addr}")]
    Listen {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot prepare the work directory {path}")]
    WorkDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create service {service_id} (the services made before it were removed)")]
    CreateService {
        service_id: String,
        #[source]
        source: BackendError,
    },
    #[error("cannot take over what runs at the edge after a restart")]
    Reconcile(#[source] BackendError),
    #[error("the SMO at {url} refused the registration")]
    Registration {
        url: String,
        #[source]
        source: ClientError,
    },
    #[error("the callback server stopped: {0}")]
    Serve(String),
    #[error("shutdown left things behind: {0}")]
    Cleanup(String),
}

/// Where the SMO finds this module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    pub module_id: String,
    /// The registration's URL (the `Location` of the 201), de-registered with `DELETE`.
    pub location: String,
}

/// The registration of a module whose callbacks listen on `api` and whose migration receiver
/// listens on `notif`.
pub fn registration(
    relocation_type: RelocationType,
    api: SocketAddr,
    notif: SocketAddr,
) -> ServiceModuleRegistration {
    let base = format!("http://{api}");
    ServiceModuleRegistration {
        relocation_type,
        // The module itself asks nothing of the edge; its services carry their requirements.
        resource_requirements: Default::default(),
        get_service_notif_uri: format!("{base}{}", api::SERVICES),
        served_service_notif_uri: format!("{base}{}", api::SERVED_SERVICE),
        execute_notif_uri: format!("{base}{}", api::EXECUTE),
        notif_address: notif,
    }
}

/// The address the SMO should call back on: the listening address, with an unspecified IP
/// replaced by loopback (the SMO runs in the same edge namespace).
pub fn callback_addr(local: SocketAddr) -> SocketAddr {
    match local {
        SocketAddr::V4(a) if a.ip().is_unspecified() => {
            SocketAddr::from((Ipv4Addr::LOCALHOST, a.port()))
        }
        other => other,
    }
}

/// Whether this thread runs in namespace `netns`.
fn runs_in(netns: &Netns) -> bool {
    let own = std::fs::metadata("/proc/thread-self/ns/net")
        .map(|m| m.ino())
        .ok();
    own.is_some() && own == netns.inode()
}

/// Binds `addr` in the edge's namespace: plainly when the daemon runs there (as `testbed up`
/// starts it), else inside it with [`transfer::listen_in`].
pub async fn bind_in(
    netns: &Netns,
    addr: SocketAddr,
    what: &'static str,
) -> Result<TcpListener, DaemonError> {
    let listen = |source| DaemonError::Listen { what, addr, source };
    if runs_in(netns) {
        return TcpListener::bind(addr).await.map_err(listen);
    }
    tracing::info!(%netns, %addr, what, "not running in the edge's namespace: binding inside it");
    transfer::listen_in(netns, addr)
        .await
        .map_err(|e| listen(std::io::Error::other(sbi::error_chain(&e))))
}

/// The service-module daemon of `cfg` over the backend it names (the `svcmod` binary's body).
/// `mount_ns` is what [`crate::mount_ns::join_host_mount_namespace`] did before the runtime
/// started.
pub async fn run(
    cfg: ModuleConfig,
    mount_ns: Result<MountNamespace, MountNsError>,
    on_ready: impl FnOnce() + Send,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), DaemonError> {
    cfg.validate().map_err(DaemonError::Config)?;
    if let MountNamespace::Joined { pid } = mount_ns? {
        tracing::info!(
            host_pid = pid,
            "left the private mount namespace of `ip netns exec`: service namespaces are made in the host's"
        );
    }
    let work_dir = cfg.work_dir();
    std::fs::create_dir_all(&work_dir).map_err(|source| DaemonError::WorkDir {
        path: work_dir.clone(),
        source,
    })?;
    // Both backends run CRIU (LXC's lxc-checkpoint the one on PATH): both profit.
    match cfg.criu_config().runtime.criu.prime_kdat_cache() {
        Ok(bytes) => tracing::debug!(bytes, "CRIU kernel-feature cache made"),
        Err(e) => {
            tracing::warn!(error = %sbi::error_chain(&e), "no CRIU kernel-feature cache: every dump and restore probes the kernel")
        }
    }
    let result = async {
        let api = bind_in(&cfg.site.netns, cfg.api_addr.into(), "callbacks").await?;
        let migration = bind_in(&cfg.site.netns, cfg.migration_addr.into(), "migrations").await?;
        tracing::info!(
            module = %cfg.name, edge = %cfg.site.edge, backend = ?cfg.backend,
            api = %cfg.api_addr, migration = %cfg.migration_addr, strategy = %cfg.strategy,
            work_dir = %work_dir.display(), services = cfg.services.len(),
            "service module starting"
        );
        match cfg.backend {
            ModuleBackend::Criu => {
                run_with(
                    Arc::new(CriuBackend::new(cfg.criu_config())),
                    cfg.settings(),
                    api,
                    migration,
                    on_ready,
                    shutdown,
                )
                .await
            }
            ModuleBackend::Lxc => {
                run_with(
                    Arc::new(LxcBackend::new(cfg.lxc_config())),
                    cfg.settings(),
                    api,
                    migration,
                    on_ready,
                    shutdown,
                )
                .await
            }
            ModuleBackend::Lxd => {
                let lxd = cfg
                    .lxd_config()
                    .ok_or_else(|| DaemonError::Config("lxd: missing".into()))?;
                run_with(
                    Arc::new(LxdBackend::new(lxd)),
                    cfg.settings(),
                    api,
                    migration,
                    on_ready,
                    shutdown,
                )
                .await
            }
        }
    }
    .await;
    let removed = remove_work_dir(&work_dir);
    result.and(removed)
}

/// `e` with all its causes, for the binary's last words.
pub fn error_chain(e: &DaemonError) -> String {
    sbi::error_chain(e)
}

/// Removes the work directory, and the default root above it when that is left empty.
fn remove_work_dir(dir: &Path) -> Result<(), DaemonError> {
    let removed = match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(DaemonError::Cleanup(format!(
            "cannot remove {}: {e}",
            dir.display()
        ))),
        _ => Ok(()),
    };
    if dir.parent() == Some(Path::new(DEFAULT_WORK_ROOT)) {
        let _ = std::fs::remove_dir(DEFAULT_WORK_ROOT);
    }
    removed
}

/// The daemon over `backend` with its listeners bound: creates the services, serves the
/// callbacks on `api` and migrations on `migration`, registers, calls `on_ready`, and runs until
/// `shutdown` resolves; then de-registers, stops, and removes the services (see the module docs).
pub async fn run_with<B: Backend>(
    backend: Arc<B>,
    settings: Settings,
    api: TcpListener,
    migration: TcpListener,
    on_ready: impl FnOnce() + Send,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), DaemonError> {
    let local = |l: &TcpListener, what| {
        l.local_addr().map_err(|source| DaemonError::Listen {
            what,
            addr: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            source,
        })
    };
    let api_addr = callback_addr(local(&api, "callbacks")?);
    let notif = local(&migration, "migrations")?;
    let note = settings.start_note.clone();
    if note.as_ref().is_some_and(|n| n.exists()) {
        let hosted = backend.reconcile().await.map_err(DaemonError::Reconcile)?;
        tracing::warn!(
            module = %settings.name,
            services = ?hosted.iter().map(|s| s.service_id.as_str()).collect::<Vec<_>>(),
            "restarted after a crash: hosting what runs at this edge"
        );
    } else {
        create_services(&*backend, &settings.services).await?;
        if let Some(n) = &note {
            std::fs::create_dir_all(n).map_err(|source| DaemonError::WorkDir {
                path: n.clone(),
                source,
            })?;
        }
    }

    let (serve_stop_tx, serve_stop) = watch::channel(false);
    let receiver = tokio::spawn(crate::backend::run_receiver(
        Arc::clone(&backend),
        migration,
        stopped(serve_stop.clone()),
    ));
    backend.set_arrival_hook(arrival_hook(&settings));
    let module = Arc::new(Module::new(Arc::clone(&backend), notif));
    let mut server = tokio::spawn(sbi::serve(
        api,
        api::router(module),
        settings.token.clone(),
        stopped(serve_stop),
    ));

    let client = Client::new(settings.token.clone(), settings.register.call_limit);
    let url = format!(
        "{}{SERVICE_MODULES}",
        settings.smo_url.trim_end_matches('/')
    );
    let reg = registration(backend.relocation_type(), api_addr, notif);
    let (reg_stop_tx, reg_stop) = watch::channel(false);
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let registrar = tokio::spawn(register(
        client.clone(),
        url.clone(),
        reg,
        settings.register,
        events_tx,
        reg_stop,
    ));

    tokio::pin!(shutdown);
    let mut outcome = Ok(());
    let mut server_ended = false;
    let started = tokio::select! {
        biased;
        () = &mut shutdown => false,
        r = &mut server => {
            server_ended = true;
            outcome = Err(server_stopped(r));
            false
        }
        event = events.recv() => match event {
            Some(Registration::Refused(source)) => {
                outcome = Err(DaemonError::Registration { url: url.clone(), source });
                false
            }
            Some(Registration::Unanswered(error)) => {
                tracing::warn!(
                    module = %settings.name, smo = %url, %error,
                    patience_s = settings.register.patience.as_secs(),
                    retry_every_s = settings.register.retry_every.as_secs(),
                    "the SMO did not answer: serving anyway, registering in the background"
                );
                true
            }
            Some(Registration::Done) | None => true,
        },
    };
    if started {
        tracing::info!(module = %settings.name, callbacks = %api_addr, migrations = %notif, "ready");
        on_ready();
        tokio::select! {
            biased;
            () = &mut shutdown => tracing::info!(module = %settings.name, "shutting down"),
            r = &mut server => {
                server_ended = true;
                outcome = Err(server_stopped(r));
            }
        }
    }

    // 1. No more registrations; de-register.
    let _ = reg_stop_tx.send(true);
    if let Some(r) = registrar.await.ok().flatten() {
        match client.delete(&r.location).await {
            Ok(()) => {
                tracing::info!(module = %r.module_id, location = %r.location, "de-registered")
            }
            Err(e) => {
                tracing::warn!(module = %r.module_id, error = %sbi::error_chain(&e), "cannot de-register")
            }
        }
    }
    // 2. No more callbacks or migrations; the running ones end.
    let _ = serve_stop_tx.send(true);
    if !server_ended {
        match server.await {
            Ok(Ok(())) => {}
            other => tracing::warn!(result = ?other, "the callback server ended badly"),
        }
    }
    let _ = receiver.await;
    // 3. The services go (after the source containers still being removed), and the note that
    // the module runs.
    backend.settle().await;
    let removed = remove_services(&*backend).await;
    if let Some(n) = &note {
        let _ = std::fs::remove_dir(n);
    }
    outcome.and(removed)
}

/// The [`crate::ArrivalHook`] of a daemon: `POST {smo_url}/service-mobility/v1/relocations/{id}/arrival`
/// with the token, within [`crate::ARRIVAL_LIMIT`]; a failure is a warning (the service resumes
/// anyway, and the SMO installs the new path when the source's EXECUTE comes).
pub fn arrival_hook(settings: &Settings) -> ArrivalHook {
    let client = Client::new(settings.token.clone(), ARRIVAL_LIMIT);
    let base = format!("{}{RELOCATIONS}", settings.smo_url.trim_end_matches('/'));
    Arc::new(move |relocation_id: String, service_id: String| {
        let client = client.clone();
        let url = format!("{base}/{relocation_id}/arrival");
        Box::pin(async move {
            let began = std::time::Instant::now();
            let body = ServiceArrival {
                service_id: service_id.clone(),
            };
            match client.post_no_content(&url, &body).await {
                Ok(()) => tracing::info!(
                    relocation = %relocation_id, service = %service_id,
                    took_us = model::timeline::us(began.elapsed()),
                    "arrival reported: the SMO switched the path"
                ),
                Err(e) => tracing::warn!(
                    relocation = %relocation_id, service = %service_id, error = %sbi::error_chain(&e),
                    "cannot report the arrival to the SMO: resuming anyway"
                ),
            }
        })
    })
}

fn server_stopped(r: Result<std::io::Result<()>, tokio::task::JoinError>) -> DaemonError {
    DaemonError::Serve(match r {
        Ok(Ok(())) => "it ended by itself".into(),
        Ok(Err(e)) => e.to_string(),
        Err(e) => e.to_string(),
    })
}

/// Resolves once `stop` says so (or its sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Creates `specs` in order; on a failure removes the ones made (newest first).
async fn create_services<B: Backend>(
    backend: &B,
    specs: &[ServiceSpec],
) -> Result<(), DaemonError> {
    let mut made: Vec<String> = Vec::new();
    for spec in specs {
        match backend.create(spec.clone()).await {
            Ok(s) => {
                tracing::info!(
                    service = %s.service_id, ip = %s.ipv4_addr, mac = %s.mac_addr,
                    port = %s.ovs_port, "service started"
                );
                made.push(s.service_id);
            }
            Err(source) => {
                tracing::error!(service = %spec.service_id, error = %sbi::error_chain(&source), "cannot create service");
                for id in made.iter().rev() {
                    if let Err(e) = backend.remove(id).await {
                        tracing::warn!(service = %id, error = %sbi::error_chain(&e), "cannot remove service");
                    }
                }
                return Err(DaemonError::CreateService {
                    service_id: spec.service_id.clone(),
                    source,
                });
            }
        }
    }
    Ok(())
}

/// Removes every service the backend hosts; tries them all.
async fn remove_services<B: Backend>(backend: &B) -> Result<(), DaemonError> {
    let services = backend.services().await.map_err(|e| {
        DaemonError::Cleanup(format!(
            "cannot list the services: {}",
            sbi::error_chain(&e)
        ))
    })?;
    let mut failed = Vec::new();
    for s in services {
        match backend.remove(&s.service_id).await {
            Ok(()) => tracing::info!(service = %s.service_id, "service removed"),
            Err(e) => failed.push(format!("{}: {}", s.service_id, sbi::error_chain(&e))),
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(DaemonError::Cleanup(failed.join("; ")))
    }
}

/// What start-up learns from the registrar.
#[derive(Debug)]
enum Registration {
    Done,
    /// The SMO did not answer within the patience (the last error); retrying in the background.
    Unanswered(String),
    /// The SMO answered 4xx: the registration or the token is wrong.
    Refused(ClientError),
}

/// Whether an SMO answer means "this registration will never be accepted".
fn is_refusal(e: &ClientError) -> bool {
    matches!(e, ClientError::Status { status, .. }
        if (400..500).contains(status) && *status != 408 && *status != 429)
}

/// Registers until it succeeds, the SMO refuses, or `stop`: every `attempt_every` during the
/// start-up window, then every `retry_every`. Tells start-up how it went, once. An attempt
/// running when `stop` comes is finished (bounded by the call limit), so a registration the SMO
/// made is never forgotten.
async fn register(
    client: Client,
    url: String,
    reg: ServiceModuleRegistration,
    policy: RegisterPolicy,
    events: mpsc::UnboundedSender<Registration>,
    mut stop: watch::Receiver<bool>,
) -> Option<Registered> {
    let start = tokio::time::Instant::now();
    let mut starting = true;
    loop {
        if *stop.borrow() {
            return None;
        }
        match register_once(&client, &url, &reg).await {
            Ok(r) => {
                tracing::info!(module = %r.module_id, location = %r.location, smo = %url, "registered with the SMO");
                let _ = events.send(Registration::Done);
                return Some(r);
            }
            Err(e) if is_refusal(&e) => {
                tracing::error!(smo = %url, error = %sbi::error_chain(&e), "the SMO refused the registration");
                let _ = events.send(Registration::Refused(e));
                return None;
            }
            Err(e) => {
                tracing::debug!(smo = %url, error = %sbi::error_chain(&e), "SMO not answering yet");
                let pause = if !starting {
                    policy.retry_every
                } else if start.elapsed() >= policy.patience {
                    starting = false;
                    let _ = events.send(Registration::Unanswered(sbi::error_chain(&e)));
                    policy.retry_every
                } else {
                    policy.attempt_every
                };
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return None,
                    () = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
}

/// One registration: `POST`, then the `Location` (resolved against `url`) or, without one,
/// `url/{moduleId}`.
async fn register_once(
    client: &Client,
    url: &str,
    reg: &ServiceModuleRegistration,
) -> Result<Registered, ClientError> {
    let resp = client.send(reqwest::Method::POST, url, Some(reg)).await?;
    let location = resp
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let module: ServiceModule = resp.json().await.map_err(|source| ClientError::Body {
        url: url.to_owned(),
        source,
    })?;
    let location = location
        .and_then(|l| reqwest::Url::parse(url).ok()?.join(&l).ok())
        .map(String::from)
        .unwrap_or_else(|| format!("{}/{}", url.trim_end_matches('/'), module.module_id));
    Ok(Registered {
        module_id: module.module_id,
        location,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_json() -> serde_json::Value {
        serde_json::json!({
            "name": "svcmod-x",
            "smo_url": "http://10.100.0.41:8090",
            "token": "t0k",
            "api_addr": "10.100.0.41:9100",
            "migration_addr": "10.0.1.1:9200",
            "prefix": "tb",
            "site": {"edge": "x", "netns": "tb-edge-x", "bridge": "br-x",
                     "ovs_dir": "/run/testbed/two-site/ovs-x"},
            "work_dir": null,
            "strategy": "stop_and_copy",
            "services": [{
                "service_id": "video1", "ipv4_addr": "20.0.0.50", "mac_addr": "02:00:00:00:00:50",
                "command": ["/usr/local/bin/tbprobe", "serve", "--tcp=0.0.0.0:5000"],
                "resource_requirements": {"cpuMillis": 100}
            }]
        })
    }

    #[test]
    fn the_config_parses_and_round_trips() {
        let cfg: ModuleConfig = serde_json::from_value(config_json()).expect("config");
        assert_eq!(cfg.site.edge, "x");
        assert_eq!(cfg.strategy, Strategy::StopAndCopy);
        assert_eq!(cfg.services[0].resource_requirements.cpu_millis, 100);
        let back: ModuleConfig =
            serde_json::from_value(serde_json::to_value(&cfg).expect("json")).expect("again");
        assert_eq!(back, cfg);
        let criu = cfg.criu_config();
        assert_eq!(
            criu.work_dir,
            Path::new("/dev/shm/testbed-svcmod/tb-x"),
            "the backend's default"
        );
        assert_eq!(criu.runtime.backhaul_addr, Some(Ipv4Addr::new(10, 0, 1, 1)));
        assert_eq!(cfg.backend, ModuleBackend::Criu, "the default backend");
        assert_eq!(cfg.work_dir(), criu.work_dir);
        // Optional fields may be left out.
        let mut minimal = config_json();
        for f in ["token", "work_dir", "strategy", "services"] {
            minimal.as_object_mut().map(|o| o.remove(f));
        }
        let m: ModuleConfig = serde_json::from_value(minimal).expect("minimal");
        assert!(m.token.is_none() && m.services.is_empty());
    }

    #[test]
    fn the_backend_is_criu_or_lxc() {
        let mut j = config_json();
        j["backend"] = serde_json::json!("lxc");
        let cfg: ModuleConfig = serde_json::from_value(j.clone()).expect("lxc");
        assert_eq!(cfg.backend, ModuleBackend::Lxc);
        assert_eq!(cfg.backend.relocation_type(), RelocationType::Lxc);
        assert_eq!(ModuleBackend::Criu.relocation_type(), RelocationType::Criu);
        let lxc = cfg.lxc_config();
        assert_eq!(lxc.lxcpath(), Path::new("/dev/shm/testbed-svcmod/tb-x/lxc"));
        assert_eq!(cfg.work_dir(), lxc.work_dir);
        let back: ModuleConfig =
            serde_json::from_value(serde_json::to_value(&cfg).expect("json")).expect("again");
        assert_eq!(back, cfg);
        for bad in ["LXD", "CRIU", ""] {
            j["backend"] = serde_json::json!(bad);
            let e = serde_json::from_value::<ModuleConfig>(j.clone()).expect_err(bad);
            assert!(
                e.to_string()
                    .contains("expected one of `criu`, `lxc`, `lxd`"),
                "{bad}: {e}"
            );
        }
        j["backend"] = serde_json::json!("lxc");
        j["strategy"] = serde_json::json!("lazy-pages");
        let e = serde_json::from_value::<ModuleConfig>(j).expect_err("lxc lazy");
        assert!(
            e.to_string().contains("not supported by the lxc backend"),
            "{e}"
        );
    }

    #[test]
    fn the_lxd_backend_needs_its_daemon() {
        let mut j = config_json();
        j["backend"] = serde_json::json!("lxd");
        let e = serde_json::from_value::<ModuleConfig>(j.clone()).expect_err("no lxd table");
        assert!(e.to_string().contains("lxd: missing"), "{e}");
        j["lxd"] = serde_json::json!({
            "socket": "/run/t/lxd-x/unix.socket",
            "https_addr": "10.0.1.1:8443",
            "cert": "/run/t/lxd-x/server.crt",
        });
        let cfg: ModuleConfig = serde_json::from_value(j.clone()).expect("lxd");
        assert_eq!(cfg.backend.relocation_type(), RelocationType::Lxd);
        let lxd = cfg.lxd_config().expect("lxd config");
        assert_eq!(lxd.runtime.image, "testbed-busybox");
        assert_eq!(
            lxd.runtime.https_addr,
            "10.0.1.1:8443".parse().expect("addr")
        );
        assert_eq!(lxd.runtime.socket, Path::new("/run/t/lxd-x/unix.socket"));
        let back: ModuleConfig =
            serde_json::from_value(serde_json::to_value(&cfg).expect("json")).expect("again");
        assert_eq!(back, cfg);
        for (key, value, want) in [
            (
                "https_addr",
                serde_json::json!("0.0.0.0:8443"),
                "lxd.https_addr",
            ),
            ("socket", serde_json::json!("unix.socket"), "lxd.socket"),
            ("image_alias", serde_json::json!(" "), "lxd.image_alias"),
            ("bogus", serde_json::json!(1), "unknown field"),
        ] {
            let mut bad = j.clone();
            bad["lxd"][key] = value;
            let e = serde_json::from_value::<ModuleConfig>(bad).expect_err(key);
            assert!(e.to_string().contains(want), "{key}: {e}");
        }
        let mut lazy = j.clone();
        lazy["strategy"] = serde_json::json!("lazy-pages");
        assert!(serde_json::from_value::<ModuleConfig>(lazy).is_err());
        j["backend"] = serde_json::json!("lxc");
        let e = serde_json::from_value::<ModuleConfig>(j).expect_err("lxd table with lxc");
        assert!(e.to_string().contains("only for backend lxd"), "{e}");
    }

    #[test]
    fn bad_configs_name_the_field() {
        let cases: [(&str, serde_json::Value, &str); 9] = [
            ("bogus", serde_json::json!(1), "unknown field"),
            ("smo_url", serde_json::json!("10.0.0.1:8090"), "smo_url"),
            (
                "migration_addr",
                serde_json::json!("0.0.0.0:9200"),
                "migration_addr",
            ),
            ("api_addr", serde_json::json!("10.0.1.1:9200"), "same"),
            ("prefix", serde_json::json!("TB"), "prefix"),
            ("work_dir", serde_json::json!("images"), "work_dir"),
            ("strategy", serde_json::json!("copy"), "unknown variant"),
            ("token", serde_json::json!(""), "token"),
            ("name", serde_json::json!(" "), "name"),
        ];
        for (field, value, want) in cases {
            let mut j = config_json();
            j[field] = value;
            let e = serde_json::from_value::<ModuleConfig>(j).expect_err(field);
            assert!(e.to_string().contains(want), "{field}: {e}");
        }
        let mut twice = config_json();
        let s = twice["services"][0].clone();
        twice["services"] = serde_json::json!([s.clone(), s]);
        let e = serde_json::from_value::<ModuleConfig>(twice).expect_err("twice");
        assert!(e.to_string().contains("services[1]"), "{e}");
        let mut bad_service = config_json();
        bad_service["services"][0]["extra"] = serde_json::json!(true);
        assert!(serde_json::from_value::<ModuleConfig>(bad_service).is_err());
        let mut bad_id = config_json();
        bad_id["services"][0]["service_id"] = serde_json::json!("Video_1");
        let e = serde_json::from_value::<ModuleConfig>(bad_id).expect_err("id");
        assert!(e.to_string().contains("services[0]"), "{e}");
    }

    #[test]
    fn the_registration_points_at_the_callbacks() {
        let r = registration(
            RelocationType::Criu,
            "10.100.0.41:9100".parse().expect("addr"),
            "10.0.1.1:9200".parse().expect("addr"),
        );
        assert_eq!(
            r.get_service_notif_uri,
            "http://10.100.0.41:9100/svcmod/v1/services"
        );
        assert_eq!(
            r.served_service_notif_uri,
            "http://10.100.0.41:9100/svcmod/v1/served-service"
        );
        assert_eq!(
            r.execute_notif_uri,
            "http://10.100.0.41:9100/svcmod/v1/execute"
        );
        assert_eq!(r.notif_address.to_string(), "10.0.1.1:9200");
        assert_eq!(r.relocation_type, RelocationType::Criu);
        assert_eq!(
            callback_addr("0.0.0.0:9100".parse().expect("addr")).to_string(),
            "127.0.0.1:9100"
        );
    }

    #[test]
    fn only_definite_answers_are_refusals() {
        let status = |status| ClientError::Status {
            url: "u".into(),
            status,
            detail: String::new(),
            problem: None,
        };
        assert!(is_refusal(&status(400)));
        assert!(is_refusal(&status(401)));
        assert!(!is_refusal(&status(408)));
        assert!(!is_refusal(&status(429)));
        assert!(!is_refusal(&status(500)));
        assert!(!is_refusal(&status(503)));
    }
}

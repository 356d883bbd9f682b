//! The network functions `testbed up` starts inside the topology: their configs (derived from the
//! plan, nothing else), their launch order, readiness, and the probe servers.

use emu_5gc::iap::IapConfig;
use emu_5gc::lr::LrConfig;
use emu_5gc::nef::NefConfig;
use emu_5gc::smf::{GnbSite, SmfConfig, UpfPeer};
use emu_5gc::upf::UpfConfig;
use emu_ran::gnb::{GnbConfig, GnbPeer};
use emu_ran::ue::UeConfig;
use model::smo::PeerInfo;
use netkit::ovs::OvsInstance;
use serde::Serialize;
use smo::config::{SmoConfig, Timeouts};
use smo::routing::rules::EdgePorts;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use svcmod::container::EdgeSite;
use svcmod::{ModuleBackend, ServiceSpec, Strategy};

use crate::plan::{EdgeService, Plan, Role, UE_POOL};
use crate::scenario::{Backend, ServiceKind};

pub use svcmod::daemon::ModuleConfig;

/// Port of the SMF's SBI.
pub const SMF_PORT: u16 = 8000;
/// Port of the LR's SBI.
pub const LR_PORT: u16 = 8001;
/// Port of the NEF's SBI (TS 29.522 TrafficInfluence for the SMOs).
pub const NEF_PORT: u16 = 8002;
/// Port of each IAP's SBI (LR pushes).
pub const IAP_PORT: u16 = 8010;
/// PFCP.
pub const PFCP_PORT: u16 = 8805;
/// GTP-U.
pub const GTPU_PORT: u16 = 2152;
/// Radio (UE ↔ gNB).
pub const RADIO_PORT: u16 = model::ran::radio::PORT;
/// gNB Xn + control API.
pub const GNB_HTTP_PORT: u16 = model::ran::xn::PORT;
/// Port of each edge cloud's SMO API (on the edge's SBI address).
pub const SMO_PORT: u16 = 8090;
/// Port of each edge cloud's service module API (the SMO's callbacks; on the edge's SBI address).
pub const SVCMOD_PORT: u16 = 9100;
/// Port of each service module's migration connection (on the edge's backhaul address; the
/// module's `notifAddress`).
pub const MIGRATION_PORT: u16 = 9200;
/// The LXC service module's callback and migration ports (an edge runs one when a planned
/// service uses the `lxc` backend, beside the CRIU module).
pub const SVCMOD_LXC_PORT: u16 = 9110;
pub const MIGRATION_LXC_PORT: u16 = 9210;
/// The LXD service module's callback and migration ports (an edge runs one, and an LXD daemon,
/// when a planned service uses the `lxd` backend).
pub const SVCMOD_LXD_PORT: u16 = 9120;
pub const MIGRATION_LXD_PORT: u16 = 9220;
/// The probe servers' TCP stream and UDP echo port.
pub const PROBE_PORT: u16 = 5000;
/// The default QFI of every PDU session.
pub const QFI: u8 = 9;

/// One process to start in a node.
#[derive(Debug, Clone, Serialize)]
pub struct Launch {
    /// Short name, unique in the testbed: `lr`, `smf`, `upf-a`, `iap-a`, `gnb-a`, `ue1`, `probe-dn`.
    pub name: String,
    /// The node whose namespace it runs in.
    pub node: String,
    /// The binary.
    pub bin: &'static str,
    /// Its JSON config (network functions) or its arguments (probes).
    pub config: Option<serde_json::Value>,
    pub args: Vec<String>,
    /// Whether `up` waits for its ready file.
    pub waits_ready: bool,
}

fn addr(plan: &Plan, node: &str, ifname: &str) -> Ipv4Addr {
    plan.node(node)
        .and_then(|n| n.addr(ifname))
        .unwrap_or(Ipv4Addr::UNSPECIFIED)
}

fn json<T: Serialize>(v: &T) -> Option<serde_json::Value> {
    serde_json::to_value(v).ok()
}

/// The SUPI of UE number `n`.
pub fn supi(n: u16) -> String {
    format!("imsi-00101{n:010}")
}

/// The unix socket of UE `name`'s control API.
pub fn ue_socket(plan: &Plan, name: &str) -> PathBuf {
    plan.state_dir.join(format!("{name}.sock"))
}

/// What the launches depend on besides the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchOptions {
    /// Where the testbed's binaries are (the services' commands name them).
    pub bin_dir: PathBuf,
    /// Whether the service modules start the plan's services.
    pub services: bool,
}

impl LaunchOptions {
    /// Binaries from [`bin_dir`], with services.
    pub fn new() -> Self {
        Self {
            bin_dir: bin_dir(),
            services: true,
        }
    }
}

impl Default for LaunchOptions {
    fn default() -> Self {
        Self::new()
    }
}

/// Every process of the testbed, in launch order: LR, UPFs, IAPs, SMF, SMOs (one per edge cloud),
/// service modules (one per edge cloud, each after its SMO), gNBs, UEs, probes.
pub fn launches(plan: &Plan, token: &str, opts: &LaunchOptions) -> Vec<Launch> {
    let token = Some(token.to_owned());
    let core_sbi = addr(plan, "core", "sbi");
    let lr_url = format!("http://{core_sbi}:{LR_PORT}");
    let sites: Vec<&crate::plan::Node> =
        plan.nodes.iter().filter(|n| n.role == Role::Site).collect();
    let gnbs: Vec<&crate::plan::Node> = plan.nodes.iter().filter(|n| n.role == Role::Gnb).collect();
    let site_of = |n: &crate::plan::Node| n.site.clone().unwrap_or_default();
    let smf_url = format!("http://{core_sbi}:{SMF_PORT}");
    // Subscriptions at the SMF and the LR may only call back into the SBI segment.
    let sbi_networks: Vec<ipnet::Ipv4Net> = plan
        .segments
        .iter()
        .filter(|s| s.name == "sbi")
        .map(|s| s.subnet)
        .collect();
    let mut out = vec![nf(
        "lr",
        "core",
        "lr",
        json(&LrConfig {
            sbi_addr: SocketAddrV4::new(core_sbi, LR_PORT),
            token: token.clone(),
            callback_networks: sbi_networks.clone(),
        }),
    )];
    for (i, s) in sites.iter().enumerate() {
        let site = site_of(s);
        let i = u8::try_from(i).unwrap_or(0);
        out.push(nf(
            &format!("upf-{site}"),
            &s.name,
            "upf",
            json(&UpfConfig {
                name: format!("upf-{site}"),
                pfcp_addr: SocketAddrV4::new(addr(plan, &s.name, "sbi"), PFCP_PORT),
                n3_addr: addr(plan, &s.name, "n3"),
                n9_addr: addr(plan, &s.name, "n9"),
                gtpu_bind: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, GTPU_PORT),
                tun: "upf0".into(),
                tun_addr: Ipv4Addr::new(10, 255, 0, 1 + i),
            }),
        ));
    }
    for (i, s) in sites.iter().enumerate() {
        let site = site_of(s);
        let i = u8::try_from(i).unwrap_or(0);
        out.push(nf(
            &format!("iap-{site}"),
            &s.name,
            "iap",
            json(&IapConfig {
                name: format!("iap-{site}"),
                site: site.clone(),
                sbi_addr: SocketAddrV4::new(addr(plan, &s.name, "sbi"), IAP_PORT),
                lr_url: lr_url.clone(),
                token: token.clone(),
                tun: "iap0".into(),
                tun_addr: Ipv4Addr::new(10, 255, 1, 1 + i),
                ue_pool: UE_POOL,
                qfi: QFI,
            }),
        ));
    }
    let upfs = sites
        .iter()
        .map(|s| {
            let site = site_of(s);
            let dnai = plan
                .switches
                .iter()
                .find(|sw| {
                    plan.node(&sw.node).and_then(|n| n.site.as_deref()) == Some(site.as_str())
                })
                .map(|sw| sw.dnai.clone())
                .unwrap_or_default();
            UpfPeer {
                name: format!("upf-{site}"),
                site: site.clone(),
                dnai,
                pfcp: SocketAddrV4::new(addr(plan, &s.name, "sbi"), PFCP_PORT),
                n3: addr(plan, &s.name, "n3"),
                n9: addr(plan, &s.name, "n9"),
            }
        })
        .collect();
    out.push(nf(
        "smf",
        "core",
        "smf",
        json(&SmfConfig {
            sbi_addr: SocketAddrV4::new(core_sbi, SMF_PORT),
            pfcp_addr: SocketAddrV4::new(core_sbi, PFCP_PORT),
            token: token.clone(),
            lr_url: lr_url.clone(),
            ue_pool: UE_POOL,
            qfi: QFI,
            upfs,
            gnbs: gnbs
                .iter()
                .map(|g| GnbSite {
                    name: g.name.clone(),
                    site: site_of(g),
                })
                .collect(),
            callback_networks: sbi_networks.clone(),
            state_dir: Some(plan.state_dir.join("smf")),
            ack_timeout_ms: None,
        }),
    ));
    out.push(nf(
        "nef",
        "core",
        "nef",
        json(&nef_config(plan, &token, &smf_url, sbi_networks)),
    ));
    for (node, cfg) in smo_configs(plan, token.as_deref().unwrap_or_default(), &smf_url) {
        out.push(nf(&cfg.smo_id.clone(), &node, "smo", json(&cfg)));
    }
    for (node, cfg) in svcmod_configs(plan, token.as_deref().unwrap_or_default(), opts) {
        out.push(nf(&cfg.name.clone(), &node, "svcmod", json(&cfg)));
    }
    for g in &gnbs {
        out.push(nf(
            &g.name,
            &g.name,
            "gnb",
            json(&GnbConfig {
                name: g.name.clone(),
                site: site_of(g),
                radio_addr: SocketAddrV4::new(addr(plan, &g.name, "air"), RADIO_PORT),
                n3_addr: addr(plan, &g.name, "n3"),
                xn_addr: addr(plan, &g.name, "xn"),
                gtpu_bind: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, GTPU_PORT),
                http_addr: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, GNB_HTTP_PORT),
                smf_url: smf_url.clone(),
                token: token.clone(),
                qfi: QFI,
                peers: gnbs
                    .iter()
                    .filter(|p| p.name != g.name)
                    .map(|p| GnbPeer {
                        name: p.name.clone(),
                        xn_url: format!("http://{}:{GNB_HTTP_PORT}", addr(plan, &p.name, "xn")),
                    })
                    .collect(),
            }),
        ));
    }
    let first_gnb = gnbs
        .first()
        .map(|g| addr(plan, &g.name, "air"))
        .unwrap_or(Ipv4Addr::UNSPECIFIED);
    for (n, ue) in plan.nodes.iter().filter(|n| n.role == Role::Ue).enumerate() {
        let n = u16::try_from(n + 1).unwrap_or(u16::MAX);
        out.push(nf(
            &ue.name,
            &ue.name,
            "ue",
            json(&UeConfig {
                name: ue.name.clone(),
                supi: supi(n),
                gnb_radio: SocketAddrV4::new(first_gnb, RADIO_PORT),
                radio_bind: SocketAddrV4::new(addr(plan, &ue.name, "air"), 0),
                tun: "ue0".into(),
                mtu: 1400,
                control_socket: ue_socket(plan, &ue.name),
            }),
        ));
    }
    for n in plan
        .nodes
        .iter()
        .filter(|n| matches!(n.role, Role::Dn | Role::Edge))
    {
        out.push(Launch {
            name: format!("probe-{}", n.name),
            node: n.name.clone(),
            bin: "tbprobe",
            config: None,
            args: vec![
                "serve".into(),
                format!("--tcp=0.0.0.0:{PROBE_PORT}"),
                format!("--udp=0.0.0.0:{PROBE_PORT}"),
            ],
            waits_ready: false,
        });
    }
    out
}

/// The NEF beside the SMF in the core: the SMOs are its AFs (`afId` = the SMO's id), their
/// `notificationDestination`s are in the SBI segment.
fn nef_config(
    plan: &Plan,
    token: &Option<String>,
    smf_url: &str,
    sbi_networks: Vec<ipnet::Ipv4Net>,
) -> NefConfig {
    NefConfig {
        sbi_addr: SocketAddrV4::new(addr(plan, "core", "sbi"), NEF_PORT),
        token: token.clone(),
        smf_url: smf_url.to_owned(),
        af_ids: plan.switches.iter().map(|sw| smo_name(&sw.node)).collect(),
        callback_networks: sbi_networks,
        state_dir: Some(plan.state_dir.join("nef")),
    }
}

/// The NEF's base URL (`http://10.100.0.10:8002`): the SMOs' TrafficInfluence API root is
/// `{nef_url}/3gpp-traffic-influence/v1/{smoId}/subscriptions`.
pub fn nef_url(plan: &Plan) -> String {
    format!("http://{}:{NEF_PORT}", addr(plan, "core", "sbi"))
}

/// The SMO of edge node `edge` (`edge-x` → `smo-x`).
pub fn smo_name(edge: &str) -> String {
    format!("smo-{}", edge.strip_prefix("edge-").unwrap_or(edge))
}

/// The API root of the SMO of edge node `edge`: `http://<edge's SBI address>:8090`.
pub fn smo_api_root(plan: &Plan, edge: &str) -> String {
    format!("http://{}:{SMO_PORT}", addr(plan, edge, "sbi"))
}

/// Base URL of the callbacks of the (CRIU) service module in edge node `edge`.
pub fn svcmod_api_root(plan: &Plan, edge: &str) -> String {
    module_api_root(plan, edge, SVCMOD_PORT)
}

fn module_api_root(plan: &Plan, edge: &str, port: u16) -> String {
    format!(
        "http://{}:{port}{}",
        addr(plan, edge, "sbi"),
        svcmod::api::BASE
    )
}

/// Every service module in edge node `edge` — the CRIU one, and the LXC / LXD ones when a
/// planned service uses that backend — as (name, base URL of its callbacks).
pub fn svcmod_api_roots(plan: &Plan, edge: &str) -> Vec<(String, String)> {
    let used = |b: Backend| plan.services.iter().any(|s| s.backend == b);
    let mut out = vec![(svcmod_name(edge), svcmod_api_root(plan, edge))];
    if used(Backend::Lxc) {
        out.push((
            svcmod_lxc_name(edge),
            module_api_root(plan, edge, SVCMOD_LXC_PORT),
        ));
    }
    if used(Backend::Lxd) {
        out.push((
            svcmod_lxd_name(edge),
            module_api_root(plan, edge, SVCMOD_LXD_PORT),
        ));
    }
    out
}

/// The name of the edge's OVS port on segment `segment` (`bh`, `n6`), as the plan gives it.
fn ovs_port(plan: &Plan, edge: &str, segment: &str) -> String {
    plan.links
        .iter()
        .filter(|l| l.segment == segment)
        .flat_map(|l| [&l.a, &l.b])
        .find(|e| e.ovs && e.node == edge)
        .map(|e| e.ifname.clone())
        .unwrap_or_else(|| segment.to_owned())
}

/// One SMO per edge cloud, with the edge node it runs in: its DNAI is the edge switch's, its peers
/// every other edge's SMO, its flows go to the edge bridge's OpenFlow management socket.
pub fn smo_configs(plan: &Plan, token: &str, smf_url: &str) -> Vec<(String, SmoConfig)> {
    let peer = |sw: &crate::plan::Switch| PeerInfo {
        smo_id: smo_name(&sw.node),
        dnai: sw.dnai.as_str().into(),
        api_root: smo_api_root(plan, &sw.node),
        cost: 0,
    };
    plan.switches
        .iter()
        .map(|sw| {
            let name = smo_name(&sw.node);
            let of = OvsInstance::new(&sw.netns, &sw.dir).of_target(&sw.bridge);
            let cfg = SmoConfig {
                smo_id: name.clone(),
                dnai: sw.dnai.as_str().into(),
                api_addr: SocketAddrV4::new(addr(plan, &sw.node, "sbi"), SMO_PORT),
                token: Some(token.to_owned()),
                // At the NEF, the 3GPP way for an edge AF. With EARLY notifications the SMO
                // acknowledges them (afAckInd): the SMF holds the path switch while the service
                // moves, and no trombone is needed (make-before-break); with LATE ones (the
                // thesis's timing) the path has switched already and the trombone carries the
                // UE's traffic until the service arrived.
                subscribe_at: smo::config::SubscribeAt::Nef,
                nef: smo::config::NefSubscription {
                    url: Some(nef_url(plan)),
                    af_ack_ind: plan.notify == crate::scenario::Notify::Early,
                    ..Default::default()
                },
                smf_url: Some(smf_url.to_owned()),
                lr_url: Some(format!("http://{}:{LR_PORT}", addr(plan, "core", "sbi"))),
                notify_when: plan.notify,
                peers: plan
                    .switches
                    .iter()
                    .filter(|p| p.node != sw.node)
                    .map(peer)
                    .collect(),
                ovs_mgmt: PathBuf::from(of.strip_prefix("unix:").unwrap_or(&of)),
                ports: EdgePorts {
                    backhaul: ovs_port(plan, &sw.node, "bh"),
                    n6: ovs_port(plan, &sw.node, "n6"),
                },
                capacity: smo::config::default_capacity(),
                state_dir: plan.state_dir.join(&name),
                timeouts: Timeouts::default(),
                reconcile: Default::default(),
                // Module callbacks and peers are on the SBI segment, modules' migration
                // addresses on the backhaul.
                callback_networks: plan
                    .segments
                    .iter()
                    .filter(|seg| seg.name == "sbi" || seg.name == "bh")
                    .map(|seg| seg.subnet)
                    .collect(),
            };
            (sw.node.clone(), cfg)
        })
        .collect()
}

/// The service module of edge node `edge` (`edge-x` → `svcmod-x`).
pub fn svcmod_name(edge: &str) -> String {
    format!("svcmod-{}", Plan::edge_short(edge))
}

/// The command of a streaming service: the probe server's TCP stream of sequence-numbered
/// records and its UDP echo, both on port 5000.
pub fn stream_service_command(bins: &Path) -> Vec<String> {
    vec![
        bins.join("tbprobe").display().to_string(),
        "serve".into(),
        format!("--tcp=0.0.0.0:{PROBE_PORT}"),
        format!("--udp=0.0.0.0:{PROBE_PORT}"),
    ]
}

/// The command line of a planned service (see [`crate::plan::service_supported`] for the kinds
/// this build runs) in a testbed whose state lives in `state_dir` (a CRIU nginx-rtmp service's
/// config is there: [`crate::rtmp::write_config`]; an LXC or LXD container writes its own inside).
pub fn service_command(s: &EdgeService, bins: &Path, state_dir: &Path) -> Vec<String> {
    if s.kind == ServiceKind::NginxRtmp {
        return match s.backend {
            Backend::Lxc | Backend::Lxd => {
                crate::rtmp::lxc_service_command(Path::new(crate::rtmp::MEDIA_DIR))
            }
            Backend::Criu => {
                crate::rtmp::service_command(&crate::rtmp::config_path(state_dir, &s.service_id))
            }
        };
    }
    let mut cmd = stream_service_command(bins);
    if let (ServiceKind::Ballast, Some(mb)) = (s.kind, s.memory_mb) {
        cmd.push(format!("--ballast-mb={mb}"));
    }
    cmd
}

/// One CRIU service module per edge cloud, with the edge node it runs in: registered with that
/// edge's SMO, callbacks on the edge's SBI address, migrations on its backhaul address, containers
/// on its switch; the first edge cloud's module starts the plan's services (unless
/// `opts.services` is off).
pub fn svcmod_configs(
    plan: &Plan,
    token: &str,
    opts: &LaunchOptions,
) -> Vec<(String, ModuleConfig)> {
    let used = |b: Backend| plan.services.iter().any(|s| s.backend == b);
    let mut out = Vec::new();
    for sw in &plan.switches {
        out.push((
            sw.node.clone(),
            module_config(plan, token, opts, sw, Backend::Criu),
        ));
        for backend in [Backend::Lxc, Backend::Lxd] {
            if used(backend) {
                out.push((
                    sw.node.clone(),
                    module_config(plan, token, opts, sw, backend),
                ));
            }
        }
    }
    out
}

/// The service module of `backend` in edge switch `sw`, with the planned services it starts.
fn module_config(
    plan: &Plan,
    token: &str,
    opts: &LaunchOptions,
    sw: &crate::plan::Switch,
    backend: Backend,
) -> ModuleConfig {
    let edge = Plan::edge_short(&sw.node).to_owned();
    let services = plan
        .services
        .iter()
        .filter(|s| opts.services && s.edge == sw.node && s.backend == backend)
        .map(|s| ServiceSpec {
            service_id: s.service_id.clone(),
            ipv4_addr: s.ipv4_addr,
            mac_addr: s.mac_addr.clone(),
            command: service_command(s, &opts.bin_dir, &plan.state_dir),
            resource_requirements: Default::default(),
        })
        .collect();
    let strategy = plan
        .services
        .iter()
        .find(|s| s.backend == backend)
        .map_or(Strategy::StopAndCopy, |s| s.strategy);
    let (name, module_backend, api_port, migration_port) = match backend {
        Backend::Lxc => (
            svcmod_lxc_name(&sw.node),
            ModuleBackend::Lxc,
            SVCMOD_LXC_PORT,
            MIGRATION_LXC_PORT,
        ),
        Backend::Lxd => (
            svcmod_lxd_name(&sw.node),
            ModuleBackend::Lxd,
            SVCMOD_LXD_PORT,
            MIGRATION_LXD_PORT,
        ),
        Backend::Criu => (
            svcmod_name(&sw.node),
            ModuleBackend::Criu,
            SVCMOD_PORT,
            MIGRATION_PORT,
        ),
    };
    ModuleConfig {
        name,
        smo_url: smo_api_root(plan, &sw.node),
        token: Some(token.to_owned()),
        api_addr: SocketAddrV4::new(addr(plan, &sw.node, "sbi"), api_port),
        migration_addr: SocketAddrV4::new(addr(plan, &sw.node, &sw.bridge), migration_port),
        prefix: plan.prefix.clone(),
        site: EdgeSite {
            edge,
            netns: netkit::Netns::new(&sw.netns),
            ovs: OvsInstance::new(&sw.netns, &sw.dir),
            bridge: sw.bridge.clone(),
        },
        work_dir: None,
        backend: module_backend,
        lxd: (backend == Backend::Lxd)
            .then(|| crate::lxd::module_config(plan, sw))
            .flatten(),
        strategy,
        services,
    }
}

/// The LXC service module of edge node `edge` (`edge-x` → `svcmod-lxc-x`).
pub fn svcmod_lxc_name(edge: &str) -> String {
    format!("svcmod-lxc-{}", Plan::edge_short(edge))
}

/// The LXD service module of edge node `edge` (`edge-x` → `svcmod-lxd-x`).
pub fn svcmod_lxd_name(edge: &str) -> String {
    format!("svcmod-lxd-{}", Plan::edge_short(edge))
}

fn nf(name: &str, node: &str, bin: &'static str, config: Option<serde_json::Value>) -> Launch {
    Launch {
        name: name.to_owned(),
        node: node.to_owned(),
        bin,
        config,
        args: Vec::new(),
        waits_ready: true,
    }
}

/// Where the testbed's binaries are: `$TESTBED_BIN_DIR`, else next to the running executable
/// (`target/<profile>/`, also when the executable is a test in `target/<profile>/deps/`).
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("TESTBED_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().map(Path::to_path_buf).unwrap_or(dir)
    } else {
        dir
    }
}

/// Why a network function did not start.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("binary {0} not found (build it: cargo build --release --workspace, or set TESTBED_BIN_DIR)")]
    NoBinary(PathBuf),
    #[error("cannot write {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start {name}: {detail}")]
    Spawn { name: String, detail: String },
    #[error("{name} exited before it was ready; last log lines:\n{log}")]
    Died { name: String, log: String },
    #[error("{name} not ready after {secs} s; last log lines:\n{log}")]
    NotReady {
        name: String,
        secs: u64,
        log: String,
    },
}

/// A started process: its PID and the marker its command line carries.
#[derive(Debug, Clone)]
pub struct Spawned {
    pub pid: i32,
    pub marker: String,
    pub log: PathBuf,
}

/// Starts one launch in namespace `netns`, detached (its parent exits at once, so it is not left a
/// zombie of the caller), with stdout and stderr in `<state>/<name>.log`.
pub fn spawn(
    l: &Launch,
    netns: &str,
    state_dir: &Path,
    bins: &Path,
) -> Result<Spawned, LaunchError> {
    let bin = bins.join(l.bin);
    if !bin.is_file() {
        return Err(LaunchError::NoBinary(bin));
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| LaunchError::Io { path, source }
    };
    let log = state_dir.join(format!("{}.log", l.name));
    let mut args: Vec<String> = Vec::new();
    let marker;
    if let Some(cfg) = &l.config {
        let cfg_path = state_dir.join(format!("{}.json", l.name));
        let text = serde_json::to_string_pretty(cfg).unwrap_or_default();
        std::fs::write(&cfg_path, text).map_err(io(&cfg_path))?;
        restrict(&cfg_path);
        let ready = ready_file(state_dir, &l.name);
        let _ = std::fs::remove_file(&ready);
        args.extend([
            "--config".into(),
            cfg_path.display().to_string(),
            "--ready-file".into(),
            ready.display().to_string(),
        ]);
        marker = cfg_path.display().to_string();
    } else {
        args.extend(l.args.iter().cloned());
        marker = format!("{} {}", l.bin, l.args.join(" "));
    }
    let mut argv = vec![
        "ip".to_owned(),
        "netns".into(),
        "exec".into(),
        netns.to_owned(),
        bin.display().to_string(),
    ];
    argv.extend(args);
    let pid = spawn_detached(&argv, &log).map_err(|e| match e {
        LaunchError::Spawn { detail, .. } => LaunchError::Spawn {
            name: l.name.clone(),
            detail,
        },
        other => other,
    })?;
    Ok(Spawned { pid, marker, log })
}

/// Starts `argv` detached (its parent shell exits at once, so it is never a zombie of ours), with
/// stdin from `/dev/null`, stdout and stderr appended to `log`, and none of our other
/// descriptors; returns its PID.
pub fn spawn_detached(argv: &[String], log: &Path) -> Result<i32, LaunchError> {
    let what = argv.first().cloned().unwrap_or_default();
    let line = argv
        .iter()
        .map(|a| sh_quote(a))
        .collect::<Vec<_>>()
        .join(" ");
    let script = format!(
        "(exec {line}) </dev/null >>{} 2>&1 & echo $!",
        sh_quote(&log.display().to_string())
    );
    // The NF (and the services a module starts) must not inherit our descriptors: a locked
    // file among them makes CRIU refuse to dump a service.
    netkit::process::cloexec_inherited_fds();
    let out = std::process::Command::new("sh")
        .args(["-c", &script])
        .env(
            "RUST_LOG",
            std::env::var("TESTBED_NF_LOG").unwrap_or_else(|_| "info".into()),
        )
        .output()
        .map_err(|e| LaunchError::Spawn {
            name: what.clone(),
            detail: e.to_string(),
        })?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|_| LaunchError::Spawn {
            name: what,
            detail: "no pid".into(),
        })
}

/// The ready file of NF `name`.
pub fn ready_file(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join(format!("{name}.ready"))
}

/// Waits until NF `name` wrote its ready file, failing early if it died.
pub fn wait_ready(
    name: &str,
    s: &Spawned,
    state_dir: &Path,
    limit: Duration,
) -> Result<(), LaunchError> {
    let ready = ready_file(state_dir, name);
    let start = Instant::now();
    loop {
        if ready.exists() {
            return Ok(());
        }
        if !netkit::process::is_alive(s.pid) {
            return Err(LaunchError::Died {
                name: name.to_owned(),
                log: tail(&s.log, 15),
            });
        }
        if start.elapsed() > limit {
            return Err(LaunchError::NotReady {
                name: name.to_owned(),
                secs: limit.as_secs(),
                log: tail(&s.log, 15),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The last `n` lines of a log file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn restrict(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A fresh bearer token for a deployment (128 random bits, hex).
pub fn new_token() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::TopologySpec;
    use smo::config::NotifyWhen;

    fn opts() -> LaunchOptions {
        LaunchOptions {
            bin_dir: PathBuf::from("/opt/tb/bin"),
            services: true,
        }
    }

    #[test]
    fn two_site_launches_every_function_in_order_with_consistent_addresses() {
        let plan = Plan::new(&TopologySpec::builtin("two-site").expect("builtin"));
        let l = launches(&plan, "tok", &opts());
        let names: Vec<&str> = l.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "lr",
                "upf-a",
                "upf-b",
                "iap-a",
                "iap-b",
                "smf",
                "nef",
                "smo-x",
                "smo-y",
                "svcmod-x",
                "svcmod-y",
                "gnb-a",
                "gnb-b",
                "ue1",
                "probe-dn",
                "probe-edge-x",
                "probe-edge-y"
            ]
        );
        let cfg = |n: &str| {
            l.iter()
                .find(|l| l.name == n)
                .and_then(|l| l.config.clone())
                .expect(n)
        };
        let smf = cfg("smf");
        assert_eq!(smf["sbiAddr"], "10.100.0.10:8000");
        assert_eq!(smf["token"], "tok");
        assert_eq!(smf["upfs"][1]["name"], "upf-b");
        assert_eq!(smf["upfs"][1]["dnai"], "edge-y");
        assert_eq!(smf["upfs"][1]["pfcp"], "10.100.0.22:8805");
        assert_eq!(smf["upfs"][1]["n3"], "10.30.0.102");
        assert_eq!(smf["upfs"][1]["n9"], "10.90.0.2");
        let nef = cfg("nef");
        assert_eq!(nef["sbiAddr"], "10.100.0.10:8002");
        assert_eq!(nef["smfUrl"], "http://10.100.0.10:8000");
        assert_eq!(nef["afIds"], serde_json::json!(["smo-x", "smo-y"]));
        assert_eq!(nef["stateDir"], "/run/testbed/two-site/nef");
        assert_eq!(nef_url(&plan), "http://10.100.0.10:8002");
        assert_eq!(cfg("upf-a")["pfcpAddr"], "10.100.0.21:8805");
        assert_eq!(cfg("iap-b")["sbiAddr"], "10.100.0.22:8010");
        assert_eq!(cfg("gnb-b")["radioAddr"], "10.10.0.2:4997");
        assert_eq!(cfg("gnb-a")["peers"][0]["xnUrl"], "http://10.40.0.2:38422");
        assert_eq!(cfg("ue1")["gnbRadio"], "10.10.0.1:4997");
        assert_eq!(cfg("ue1")["supi"], "imsi-001010000000001");
        assert_eq!(new_token().len(), 32);
        // The SMF and the LR call back only into the SBI segment, where their subscribers are
        // (the SMOs at the SMF, the IAPs at the LR).
        assert_eq!(
            smf["callbackNetworks"],
            serde_json::json!(["10.100.0.0/24"])
        );
        assert_eq!(cfg("lr")["callbackNetworks"], smf["callbackNetworks"]);
        assert_eq!(nef["callbackNetworks"], smf["callbackNetworks"]);
        let sbi: ipnet::Ipv4Net = "10.100.0.0/24".parse().expect("net");
        for n in ["iap-a", "iap-b"] {
            let a: SocketAddrV4 = serde_json::from_value(cfg(n)["sbiAddr"].clone()).expect(n);
            assert!(sbi.contains(a.ip()), "{n} at {a}");
        }
        for e in ["edge-x", "edge-y"] {
            let root = smo_api_root(&plan, e);
            let host = root
                .trim_start_matches("http://")
                .split(':')
                .next()
                .and_then(|h| h.parse::<Ipv4Addr>().ok())
                .expect("smo host");
            assert!(sbi.contains(&host), "{root}");
        }
    }

    #[test]
    fn configs_parse_back_into_the_functions_config_types() {
        let plan = Plan::new(&TopologySpec::builtin("three-site").expect("builtin"));
        for l in launches(&plan, "tok", &opts()) {
            let Some(c) = l.config else { continue };
            let ok = match l.bin {
                "lr" => serde_json::from_value::<LrConfig>(c).is_ok(),
                "smf" => serde_json::from_value::<SmfConfig>(c).is_ok(),
                "nef" => serde_json::from_value::<NefConfig>(c).is_ok(),
                "upf" => serde_json::from_value::<UpfConfig>(c).is_ok(),
                "iap" => serde_json::from_value::<IapConfig>(c).is_ok(),
                "gnb" => serde_json::from_value::<GnbConfig>(c).is_ok(),
                "ue" => serde_json::from_value::<UeConfig>(c).is_ok(),
                "smo" => serde_json::from_value::<SmoConfig>(c).is_ok(),
                "svcmod" => serde_json::from_value::<ModuleConfig>(c).is_ok(),
                other => panic!("unexpected binary {other}"),
            };
            assert!(ok, "{} config does not parse back", l.name);
        }
    }

    #[test]
    fn each_edge_gets_an_smo_whose_peers_point_at_each_other() {
        let plan = Plan::new(&TopologySpec::builtin("two-site").expect("builtin"));
        let l = launches(&plan, "tok", &opts());
        let smos: Vec<&Launch> = l.iter().filter(|l| l.bin == "smo").collect();
        assert_eq!(smos.len(), 2);
        let smf = l.iter().position(|l| l.name == "smf").expect("smf");
        let first_smo = l.iter().position(|l| l.bin == "smo").expect("smo");
        assert!(smf < first_smo, "the SMOs start after the SMF");
        let cfg = |n: &str| -> SmoConfig {
            let launch = l.iter().find(|l| l.name == n).expect(n);
            assert!(launch.waits_ready);
            serde_json::from_value(launch.config.clone().expect("config")).expect("SmoConfig")
        };
        let x = cfg("smo-x");
        let y = cfg("smo-y");
        assert_eq!(smos[0].node, "edge-x");
        assert_eq!(smos[1].node, "edge-y");
        assert_eq!(x.smo_id, "smo-x");
        assert_eq!(x.dnai.as_str(), "edge-x");
        assert_eq!(y.dnai.as_str(), "edge-y");
        assert_eq!(x.api_addr.to_string(), "10.100.0.41:8090");
        assert_eq!(y.api_addr.to_string(), "10.100.0.42:8090");
        assert_eq!(x.token.as_deref(), Some("tok"));
        assert_eq!(x.smf_url.as_deref(), Some("http://10.100.0.10:8000"));
        assert_eq!(x.notify_when, NotifyWhen::Late);
        assert_eq!(x.subscribe_at, smo::config::SubscribeAt::Nef);
        assert_eq!(x.nef.url.as_deref(), Some("http://10.100.0.10:8002"));
        assert!(
            !x.nef.af_ack_ind,
            "LATE: no acknowledgement (the trombone carries the UE)"
        );
        assert!(x.nef.app_relo_ind);
        assert_eq!(
            x.peers,
            [PeerInfo {
                smo_id: "smo-y".into(),
                dnai: "edge-y".into(),
                api_root: "http://10.100.0.42:8090".into(),
                cost: 0,
            }]
        );
        assert_eq!(y.peers[0].smo_id, "smo-x");
        assert_eq!(y.peers[0].api_root, x.api_root());
        assert_eq!(x.peers[0].api_root, y.api_root());
        assert_eq!(
            x.ovs_mgmt,
            PathBuf::from("/run/testbed/two-site/ovs-edge-x/br-x.mgmt")
        );
        assert_eq!(x.ports, EdgePorts::testbed());
        assert_eq!(x.state_dir, PathBuf::from("/run/testbed/two-site/smo-x"));
        assert_eq!(x.timeouts, Timeouts::default());
        assert!(x.capacity.cpu_millis > 0 && x.capacity.memory_mb > 0);
    }

    #[test]
    fn three_sites_give_each_smo_two_peers() {
        let plan = Plan::new(&TopologySpec::builtin("three-site").expect("builtin"));
        let smos = smo_configs(&plan, "tok", "http://10.100.0.10:8000");
        assert_eq!(smos.len(), 3);
        for (node, cfg) in &smos {
            assert_eq!(cfg.smo_id, smo_name(node));
            assert_eq!(cfg.peers.len(), 2);
            assert!(cfg.peers.iter().all(|p| p.smo_id != cfg.smo_id));
            assert!(cfg
                .ovs_mgmt
                .starts_with(plan.switch(node).expect("switch").dir.as_path()));
        }
    }

    #[test]
    fn each_edge_gets_a_service_module_after_its_smo_and_edge_x_the_stream_service() {
        let plan = Plan::new(&TopologySpec::builtin("two-site").expect("builtin"));
        let l = launches(&plan, "tok", &opts());
        let pos = |n: &str| l.iter().position(|l| l.name == n).expect(n);
        assert!(pos("smo-x") < pos("svcmod-x") && pos("smo-y") < pos("svcmod-y"));
        let cfg = |n: &str| -> ModuleConfig {
            let launch = l.iter().find(|l| l.name == n).expect(n);
            assert!(launch.waits_ready);
            assert_eq!(launch.bin, "svcmod");
            assert_eq!(launch.node, format!("edge-{}", &n[7..]));
            serde_json::from_value(launch.config.clone().expect("config")).expect("ModuleConfig")
        };
        let (x, y) = (cfg("svcmod-x"), cfg("svcmod-y"));
        assert_eq!(x.name, "svcmod-x");
        assert_eq!(x.smo_url, "http://10.100.0.41:8090");
        assert_eq!(y.smo_url, "http://10.100.0.42:8090");
        assert_eq!(x.token.as_deref(), Some("tok"));
        assert_eq!(x.api_addr.to_string(), "10.100.0.41:9100");
        assert_eq!(y.api_addr.to_string(), "10.100.0.42:9100");
        assert_eq!(x.migration_addr.to_string(), "10.0.1.1:9200");
        assert_eq!(y.migration_addr.to_string(), "10.0.1.2:9200");
        assert_eq!(x.prefix, "tb");
        assert_eq!(x.strategy, Strategy::StopAndCopy);
        assert_eq!(x.work_dir, None);
        assert!(y.services.is_empty());
        assert_eq!(x.services.len(), 1);
        let s = &x.services[0];
        assert_eq!(s.service_id, "stream1");
        assert_eq!(s.ipv4_addr.to_string(), "20.0.0.100");
        assert_eq!(s.mac_addr, "02:00:00:00:01:00");
        assert_eq!(
            s.command,
            [
                "/opt/tb/bin/tbprobe",
                "serve",
                "--tcp=0.0.0.0:5000",
                "--udp=0.0.0.0:5000"
            ]
        );
        let text = serde_json::to_value(&x).expect("json");
        assert_eq!(
            text["site"],
            serde_json::json!({
                "edge": "x",
                "netns": "tb-edge-x",
                "bridge": "br-x",
                "ovs_dir": "/run/testbed/two-site/ovs-edge-x"
            })
        );
        assert_eq!(
            text["strategy"],
            serde_json::to_value(Strategy::StopAndCopy).expect("json")
        );
        let without = LaunchOptions {
            services: false,
            ..opts()
        };
        let quiet = svcmod_configs(&plan, "tok", &without);
        assert_eq!(quiet.len(), 2);
        assert!(quiet.iter().all(|(_, c)| c.services.is_empty()));
    }

    #[test]
    fn scenario_services_reach_the_modules_with_their_command_and_strategy() {
        let mut plan = Plan::new(&TopologySpec::builtin("two-site").expect("builtin"));
        let svc = |id: &str, edge: &str, kind: &str, extra: &str| {
            toml::from_str::<crate::scenario::ServiceSpec>(&format!(
                "id = \"{id}\"\nedge = \"{edge}\"\nbackend = \"criu\"\nkind = \"{kind}\"\nserves = [\"ue1\"]\nstrategy = \"lazy_pages\"\n{extra}"
            ))
            .expect("service")
        };
        plan.set_services(&[
            svc("big", "edge-y", "ballast", "memory_mb = 200"),
            svc("s2", "edge-x", "streamer", ""),
        ])
        .expect("services");
        plan.notify = NotifyWhen::Early;
        let mods = svcmod_configs(&plan, "tok", &opts());
        let (_, x) = mods.iter().find(|(n, _)| n == "edge-x").expect("x");
        let (_, y) = mods.iter().find(|(n, _)| n == "edge-y").expect("y");
        assert_eq!(x.strategy, Strategy::LazyPages);
        assert_eq!(y.services[0].service_id, "big");
        assert_eq!(y.services[0].ipv4_addr, Ipv4Addr::new(20, 0, 0, 100));
        assert_eq!(x.services[0].ipv4_addr, Ipv4Addr::new(20, 0, 0, 101));
        assert_eq!(x.services[0].mac_addr, "02:00:00:00:01:01");
        assert!(y.services[0]
            .command
            .contains(&"--ballast-mb=200".to_owned()));
        assert!(!x.services[0].command.iter().any(|a| a.contains("ballast")));
        let smos = smo_configs(&plan, "tok", "http://10.100.0.20:8080");
        assert!(smos.iter().all(|(_, c)| c.notify_when == NotifyWhen::Early));
        assert!(
            smos.iter().all(|(_, c)| c.nef.af_ack_ind),
            "EARLY: acknowledged, the path switch held while the service moves"
        );
    }

    #[test]
    fn an_nginx_rtmp_service_runs_nginx_with_its_config_under_the_state_dir() {
        let mut plan = Plan::new(&TopologySpec::builtin("two-site").expect("builtin"));
        let svc: crate::scenario::ServiceSpec = toml::from_str(
            "id = \"nginx\"\nedge = \"edge-x\"\nbackend = \"criu\"\nkind = \"nginx-rtmp\"\nserves = [\"ue1\"]",
        )
        .expect("service");
        plan.set_services(&[svc]).expect("nginx-rtmp runs on criu");
        let mods = svcmod_configs(&plan, "tok", &opts());
        let (_, x) = mods.iter().find(|(n, _)| n == "edge-x").expect("x");
        assert_eq!(x.services[0].service_id, "nginx");
        assert_eq!(
            x.services[0].command,
            [
                "/usr/sbin/nginx",
                "-e",
                "/run/testbed/two-site/rtmp-nginx/error.log",
                "-c",
                "/run/testbed/two-site/rtmp-nginx/nginx.conf"
            ]
        );
    }

    #[test]
    fn an_lxc_nginx_rtmp_service_writes_its_config_inside_its_container() {
        let mut plan = Plan::new(&TopologySpec::builtin("two-site").expect("builtin"));
        let svc: crate::scenario::ServiceSpec = toml::from_str(
            "id = \"nginx\"\nedge = \"edge-x\"\nbackend = \"lxc\"\nkind = \"nginx-rtmp\"\nserves = [\"ue1\"]",
        )
        .expect("service");
        plan.set_services(&[svc]).expect("nginx-rtmp runs on lxc");
        let mods = svcmod_configs(&plan, "tok", &opts());
        let (_, x) = mods
            .iter()
            .find(|(n, c)| n == "edge-x" && c.backend == ModuleBackend::Lxc)
            .expect("the LXC module at x");
        assert_eq!(
            x.services[0].command,
            crate::rtmp::lxc_service_command(Path::new(crate::rtmp::MEDIA_DIR))
        );
        // Nothing of it under the state dir: the container could not read it there.
        assert!(!x.services[0].command[2].contains("/run/testbed"));
    }

    #[test]
    fn an_lxc_service_gets_an_lxc_module_beside_the_criu_one_at_every_edge() {
        let mut plan = Plan::new(&TopologySpec::builtin("two-site").expect("builtin"));
        let spec: crate::scenario::ServiceSpec = toml::from_str(
            "id = \"lx1\"\nedge = \"edge-y\"\nbackend = \"lxc\"\nkind = \"streamer\"\nserves = [\"ue1\"]",
        )
        .expect("service");
        plan.set_services(&[spec]).expect("planned");
        let mods = svcmod_configs(&plan, "tok", &opts());
        let names: Vec<(&str, &str)> = mods
            .iter()
            .map(|(node, c)| (node.as_str(), c.name.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("edge-x", "svcmod-x"),
                ("edge-x", "svcmod-lxc-x"),
                ("edge-y", "svcmod-y"),
                ("edge-y", "svcmod-lxc-y")
            ]
        );
        let lxc_y = &mods[3].1;
        assert_eq!(lxc_y.backend, ModuleBackend::Lxc);
        assert_eq!(lxc_y.api_addr.port(), SVCMOD_LXC_PORT);
        assert_eq!(lxc_y.migration_addr.port(), MIGRATION_LXC_PORT);
        assert_eq!(lxc_y.services.len(), 1);
        assert!(
            mods[2].1.services.is_empty(),
            "the CRIU module at y starts nothing"
        );
        assert!(mods[1].1.services.is_empty());
    }
}

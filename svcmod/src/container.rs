//! A "container" of the CRIU backend: a service's process tree in its own network and PID
//! namespaces, wired to its edge cloud's Open vSwitch bridge.
//!
//! * network namespace `<prefix>-svc-<id>-<edge>` (unique on the host: the source and the target of a
//!   migration coexist while it runs, and every edge cloud lives on this one host);
//! * `eth0` inside, with the service's address /16, a fixed MAC and a default route via the anycast
//!   gateway 20.0.0.1 (added `onlink`, so it exists while the link has no carrier), whose MAC is a
//!   permanent neighbour entry (the same at every edge: no ARP exchange after a migration);
//! * the veth's other end, named after the service's OVS port (`s-<id>`), inside the edge cloud's
//!   namespace and attached to its bridge; transmit checksum offload is off on both ends (TCP through
//!   the userspace datapath fails otherwise);
//! * the service itself: `nsenter --net=/run/netns/NS -- unshare --pid --fork setsid CMD…`, as root,
//!   stdio on `/dev/null`. `setsid` makes the namespace's PID 1 its own session leader, so CRIU needs
//!   no `--shell-job`. There is **no** mount namespace: CRIU refuses to dump a private mount
//!   namespace that still holds the host's `nsfs` mounts under `/run/netns` ("doesn't have a proper
//!   root mount", tried on this machine), and DESIGN.md's recipe ran without one.
//!
//! A target container is made with the host end of its veth **down**: a live duplicate of the
//! service's MAC and IP would answer ARP and reset the service's connections. The carrier comes up
//! only when the migration commits (see `criu.rs`).

use netkit::cmd::{CmdError, Tool};
use netkit::ovs::OvsInstance;
use netkit::process::{is_alive, pids_in_netns};
use netkit::Netns;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// The service's interface inside its namespace.
pub const SERVICE_IFNAME: &str = "eth0";
/// Prefix length of the service range 20.0.0.0/16.
pub const SERVICE_PREFIX_LEN: u8 = 16;
/// The anycast gateway of every edge cloud.
pub const GATEWAY: Ipv4Addr = model::edge::GATEWAY_IP;
/// `ip` arguments that make the anycast gateway's MAC a permanent neighbour entry on the
/// service's `eth0`: it is the same at every edge, so a restored service never waits for an ARP
/// exchange (whose first request, lost right after the carrier comes up, is retried only after
/// a second). Both backends apply it to every service's namespace.
pub fn pin_gateway_args() -> [String; 9] {
    [
        "neigh".into(),
        "replace".into(),
        GATEWAY.to_string(),
        "lladdr".into(),
        model::edge::GATEWAY_MAC_STR.into(),
        "nud".into(),
        "permanent".into(),
        "dev".into(),
        SERVICE_IFNAME.into(),
    ]
}

/// Longest service id: the OVS port `s-<id>` must fit an interface name (15 characters).
pub const MAX_SERVICE_ID: usize = netkit::link::IFNAMSIZ_MAX - 2;

/// An error making, running or removing a container.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("bad {what} `{value}`: {reason}")]
    Invalid {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("network namespace {netns} already exists")]
    Exists { netns: String },
    #[error(transparent)]
    Cmd(#[from] CmdError),
    #[error("cannot start the service in {netns}")]
    Spawn {
        netns: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the service in {netns} did not start (its namespace has no PID 1 after {waited_ms} ms)"
    )]
    NoRootProcess { netns: String, waited_ms: u64 },
    #[error("network namespace {netns} is gone")]
    NoNetns { netns: String },
}

/// An edge cloud as a service module sees it: where its switch is.
///
/// In a config (JSON, snake_case) it is
/// `{"edge": "x", "netns": "tb-edge-x", "bridge": "br-x", "ovs_dir": "/run/testbed/NAME/ovs-x"}`:
/// the OVS instance runs inside the edge's namespace with its run directory `ovs_dir`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "EdgeSiteConfig", try_from = "EdgeSiteConfig")]
pub struct EdgeSite {
    /// The edge's short name used in namespace names, e.g. `x` (netns `tb-svc-<id>-x`).
    pub edge: String,
    /// The edge cloud's network namespace (where its OVS instance runs), e.g. `tb-edge-x`.
    pub netns: Netns,
    /// The edge's private Open vSwitch instance.
    pub ovs: OvsInstance,
    /// The edge's bridge, e.g. `br-x`.
    pub bridge: String,
}

/// The serde form of [`EdgeSite`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EdgeSiteConfig {
    /// The edge's short name, e.g. `x`.
    edge: String,
    /// The edge cloud's network namespace, e.g. `tb-edge-x`.
    netns: String,
    /// The edge's bridge, e.g. `br-x`.
    bridge: String,
    /// The run directory of the edge's private OVS instance (sockets, database).
    ovs_dir: PathBuf,
}

impl From<EdgeSite> for EdgeSiteConfig {
    fn from(site: EdgeSite) -> Self {
        Self {
            edge: site.edge,
            netns: site.netns.name().to_owned(),
            bridge: site.bridge,
            ovs_dir: site.ovs.dir().to_owned(),
        }
    }
}

impl TryFrom<EdgeSiteConfig> for EdgeSite {
    type Error = String;

    fn try_from(c: EdgeSiteConfig) -> Result<Self, String> {
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        };
        if !name_ok(&c.edge) {
            return Err(format!(
                "bad edge name `{}` (want a-z, 0-9, -, _, .)",
                c.edge
            ));
        }
        if !name_ok(&c.netns) {
            return Err(format!("bad namespace name `{}`", c.netns));
        }
        if !name_ok(&c.bridge) || c.bridge.len() > netkit::link::IFNAMSIZ_MAX {
            return Err(format!(
                "bad bridge name `{}` (an interface name, at most {} characters)",
                c.bridge,
                netkit::link::IFNAMSIZ_MAX
            ));
        }
        if !c.ovs_dir.is_absolute() {
            return Err(format!(
                "ovs_dir `{}` is not an absolute path",
                c.ovs_dir.display()
            ));
        }
        Ok(Self {
            ovs: OvsInstance::new(c.netns.clone(), c.ovs_dir),
            netns: Netns::new(c.netns),
            edge: c.edge,
            bridge: c.bridge,
        })
    }
}

/// The network identity of a service: kept across migrations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetSpec {
    pub service_id: String,
    pub ipv4_addr: Ipv4Addr,
    /// `aa:bb:cc:dd:ee:ff`.
    pub mac_addr: String,
    pub mtu: u32,
}

impl NetSpec {
    /// The network identity of `service` on a veth of `mtu`.
    pub fn of(service: &model::smo::Service, mtu: u32) -> Self {
        Self {
            service_id: service.service_id.clone(),
            ipv4_addr: service.ipv4_addr,
            mac_addr: service.mac_addr.clone(),
            mtu,
        }
    }
}

/// Checks a service id: 1–13 characters of `a-z`, `0-9`, `-` (it becomes part of interface and
/// namespace names).
pub fn validate_service_id(id: &str) -> Result<(), ContainerError> {
    let bad = |reason| ContainerError::Invalid {
        what: "service id",
        value: id.to_owned(),
        reason,
    };
    if id.is_empty() || id.len() > MAX_SERVICE_ID {
        return Err(bad("want 1 to 13 characters"));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(bad("want only a-z, 0-9 and -"));
    }
    Ok(())
}

/// Checks a MAC address `aa:bb:cc:dd:ee:ff` (unicast) and returns it in lower case.
pub fn validate_mac(mac: &str) -> Result<String, ContainerError> {
    let bad = |reason| ContainerError::Invalid {
        what: "MAC address",
        value: mac.to_owned(),
        reason,
    };
    let octets: Vec<&str> = mac.split(':').collect();
    if octets.len() != 6
        || !octets
            .iter()
            .all(|o| o.len() == 2 && o.chars().all(|c| c.is_ascii_hexdigit()))
    {
        return Err(bad("want aa:bb:cc:dd:ee:ff"));
    }
    let first = u8::from_str_radix(octets[0], 16).map_err(|_| bad("want hex octets"))?;
    if first & 1 == 1 {
        return Err(bad("multicast"));
    }
    Ok(mac.to_ascii_lowercase())
}

/// The service's network namespace at edge `edge`: `<prefix>-svc-<id>-<edge>`.
pub fn netns_name(prefix: &str, service_id: &str, edge: &str) -> String {
    format!("{prefix}-svc-{service_id}-{edge}")
}

/// The service id in a name [`netns_name`] made (`<prefix>-svc-<id>-<edge>`), if it is one.
pub fn service_id_in<'a>(name: &'a str, prefix: &str, edge: &str) -> Option<&'a str> {
    name.strip_prefix(prefix)?
        .strip_prefix("-svc-")?
        .strip_suffix(edge)?
        .strip_suffix('-')
        .filter(|id| validate_service_id(id).is_ok())
}

/// The service's OVS port (the host end of its veth), the same at every edge: `s-<id>`.
pub fn ovs_port_name(service_id: &str) -> Result<String, ContainerError> {
    validate_service_id(service_id)?;
    Ok(format!("s-{service_id}"))
}

/// Whether the host end of the service's veth carries traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carrier {
    Up,
    /// Kept down: the service's namespace is configured but silent.
    Down,
}

/// A service's namespaces and port at one edge cloud (and its process tree, once started or
/// restored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    netns: Netns,
    port: String,
    site: EdgeSite,
    root_pid: Option<i32>,
}

impl Container {
    /// Makes the service's network namespace at `site` with the service's address, MAC and default
    /// route, and attaches its veth to the edge's bridge with the carrier as asked. Fails when the
    /// namespace exists already; removes what it made when a step fails.
    pub fn prepare(
        site: &EdgeSite,
        prefix: &str,
        net: &NetSpec,
        carrier: Carrier,
    ) -> Result<Container, ContainerError> {
        let port = ovs_port_name(&net.service_id)?;
        let mac = validate_mac(&net.mac_addr)?;
        let netns = Netns::new(netns_name(prefix, &net.service_id, &site.edge));
        if netns.exists() {
            return Err(ContainerError::Exists {
                netns: netns.name().to_owned(),
            });
        }
        let container = Container {
            netns,
            port,
            site: site.clone(),
            root_pid: None,
        };
        // Only a namespace this call made is ever removed by it.
        container.netns.create()?;
        match container.configure(&mac, net, carrier) {
            Ok(()) => Ok(container),
            Err(e) => {
                if let Err(cleanup) = container.remove_network() {
                    tracing::warn!(error = %cleanup, "cannot remove a half-made container");
                }
                Err(e)
            }
        }
    }

    fn configure(&self, mac: &str, net: &NetSpec, carrier: Carrier) -> Result<(), ContainerError> {
        let ns = &self.netns;
        ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
        ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
        Tool::new("ip")
            .args([
                "link",
                "add",
                SERVICE_IFNAME,
                "netns",
                ns.name(),
                "address",
                mac,
            ])
            .arg("mtu")
            .arg(net.mtu.to_string())
            .args(["type", "veth", "peer", "name", &self.port, "netns"])
            .arg(self.site.netns.name())
            .arg("mtu")
            .arg(net.mtu.to_string())
            .run()?;
        netkit::link::tx_checksum_off(ns, SERVICE_IFNAME)?;
        netkit::link::tx_checksum_off(&self.site.netns, &self.port)?;
        ns.ip([
            "addr",
            "add",
            &format!("{}/{SERVICE_PREFIX_LEN}", net.ipv4_addr),
            "dev",
            SERVICE_IFNAME,
        ])?;
        ns.ip(["link", "set", SERVICE_IFNAME, "up"])?;
        ns.ip([
            "route",
            "replace",
            "default",
            "via",
            &GATEWAY.to_string(),
            "dev",
            SERVICE_IFNAME,
            "onlink",
        ])?;
        // The gateway's MAC is the same at every edge: a permanent entry spares the restored
        // service an ARP exchange at the worst moment (a request lost right after the carrier
        // comes up is retried only after a second, and the socket's first packets wait for it).
        ns.ip(pin_gateway_args())?;
        self.site.ovs.add_port(&self.site.bridge, &self.port)?;
        self.set_carrier(carrier)?;
        Ok(())
    }

    /// Starts the service's process tree: `nsenter --net=… -- unshare --pid --fork setsid CMD…`.
    /// Returns the host PID of the tree's root (PID 1 of its PID namespace).
    pub fn start(&mut self, command: &[String]) -> Result<i32, ContainerError> {
        let Some((program, args)) = command.split_first() else {
            return Err(ContainerError::Invalid {
                what: "command",
                value: String::new(),
                reason: "empty",
            });
        };
        let mut child = std::process::Command::new("nsenter")
            .arg(format!("--net={}", self.netns.path().display()))
            .args(["--", "unshare", "--pid", "--fork", "setsid", program])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| ContainerError::Spawn {
                netns: self.netns.name().to_owned(),
                source,
            })?;
        let parent = i32::try_from(child.id()).unwrap_or(i32::MAX);
        // `unshare` waits for the namespace's PID 1 and exits with it; reap it then.
        std::thread::spawn(move || child.wait());
        let limit = Duration::from_secs(2);
        let start = Instant::now();
        loop {
            if let Some(pid) = first_child(parent).filter(|p| self.owns(*p)) {
                self.root_pid = Some(pid);
                return Ok(pid);
            }
            if start.elapsed() > limit || !is_alive(parent) {
                return Err(ContainerError::NoRootProcess {
                    netns: self.netns.name().to_owned(),
                    waited_ms: u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A container whose namespace and port exist already (e.g. after a restore into it).
    pub fn adopt(site: &EdgeSite, prefix: &str, service_id: &str) -> Result<Self, ContainerError> {
        let netns = Netns::new(netns_name(prefix, service_id, &site.edge));
        if !netns.exists() {
            return Err(ContainerError::NoNetns {
                netns: netns.name().to_owned(),
            });
        }
        Ok(Self {
            netns,
            port: ovs_port_name(service_id)?,
            site: site.clone(),
            root_pid: None,
        })
    }

    /// The service's network namespace.
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// The host end of the service's veth (its OVS port).
    pub fn port(&self) -> &str {
        &self.port
    }

    /// The edge cloud the container lives in.
    pub fn site(&self) -> &EdgeSite {
        &self.site
    }

    /// The host PID of the process tree's root, when one runs.
    pub fn root_pid(&self) -> Option<i32> {
        self.root_pid.filter(|p| self.owns(*p))
    }

    /// Records the root of a process tree restored into this container.
    pub fn set_root_pid(&mut self, pid: Option<i32>) {
        self.root_pid = pid;
    }

    /// The inode of the service's network namespace (CRIU names the external namespace by it).
    pub fn netns_inode(&self) -> Option<u64> {
        self.netns.inode()
    }

    /// Whether `pid` is alive and lives in this container's network namespace.
    pub fn owns(&self, pid: i32) -> bool {
        let Some(inode) = self.netns_inode() else {
            return false;
        };
        is_alive(pid)
            && std::fs::metadata(format!("/proc/{pid}/ns/net")).is_ok_and(|m| m.ino() == inode)
    }

    /// Live processes in the service's network namespace.
    pub fn pids(&self) -> Vec<i32> {
        self.netns_inode().map(pids_in_netns).unwrap_or_default()
    }

    /// Brings the host end of the veth up or down (the service's carrier).
    pub fn set_carrier(&self, carrier: Carrier) -> Result<(), CmdError> {
        let state = match carrier {
            Carrier::Up => "up",
            Carrier::Down => "down",
        };
        self.site.netns.ip(["link", "set", &self.port, state])
    }

    /// The command that brings the carrier up, for CRIU's action script.
    pub fn carrier_up_command(&self) -> Vec<String> {
        [
            "ip",
            "-n",
            self.site.netns.name(),
            "link",
            "set",
            &self.port,
            "up",
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// Kills every process in the service's network namespace (SIGKILL: PID 1 of a PID namespace
    /// ignores SIGTERM without a handler) and waits until they are gone.
    pub fn kill_processes(&mut self) {
        let pids = self.pids();
        for pid in &pids {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(3) && self.pids().iter().any(|p| is_alive(*p)) {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.root_pid = None;
    }

    /// Removes the container: its processes, its OVS port and its namespace (and with it both
    /// ends of the veth). Idempotent; tries every step and returns the first error.
    pub fn destroy(&mut self) -> Result<(), ContainerError> {
        self.kill_processes();
        self.remove_network()
    }

    /// Removes the container's network side — the veth (explicitly: processes or CRIU may keep
    /// the namespace alive after its name is gone), the OVS port and the namespace's name —
    /// leaving any process in it alone. A new container of the same service can then be made at
    /// the same edge.
    pub fn remove_network(&self) -> Result<(), ContainerError> {
        let port = detach(&self.site, &self.port);
        let netns = if self.netns.exists() {
            self.netns.delete()
        } else {
            Ok(())
        };
        port?;
        netns?;
        Ok(())
    }

    /// The peers of the service's established TCP connections (`ss -tnH state established` in its
    /// namespace), without duplicates, in order.
    pub fn tcp_peers(&self) -> Result<Vec<Ipv4Addr>, ContainerError> {
        Ok(tcp_peers_in(&self.netns.path())?)
    }
}

/// The peers of the established TCP connections in the network namespace at `netns`
/// (`/run/netns/NAME`, `/proc/PID/ns/net`): `ss -tnH state established` there, parsed with
/// [`parse_ss_peers`].
pub fn tcp_peers_in(netns: &std::path::Path) -> Result<Vec<Ipv4Addr>, CmdError> {
    let text = Tool::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["--", "ss", "-tnH", "state", "established"])
        .stdout()?;
    Ok(parse_ss_peers(&text))
}

/// The service of container `service_id` as its network namespace at `netns` shows it: the
/// address and MAC of its `eth0` (what a restarted module adopts).
pub fn service_in(
    service_id: &str,
    relocation_type: model::smo::RelocationType,
    netns: &std::path::Path,
) -> Result<model::smo::Service, ContainerError> {
    let text = Tool::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["--", "ip", "-j", "addr", "show", "dev", SERVICE_IFNAME])
        .stdout()?;
    let eth0 = netkit::link::parse_ip_addr_json(&text).into_iter().next();
    let unreadable = |reason| ContainerError::Invalid {
        what: "service interface",
        value: netns.display().to_string(),
        reason,
    };
    let eth0 = eth0.ok_or(unreadable("no eth0"))?;
    let ipv4_addr = eth0
        .addrs
        .iter()
        .find_map(|a| a.split('/').next()?.parse::<Ipv4Addr>().ok())
        .ok_or(unreadable("no IPv4 address on eth0"))?;
    Ok(model::smo::Service {
        service_id: service_id.to_owned(),
        ipv4_addr,
        mac_addr: validate_mac(&eth0.mac.ok_or(unreadable("no MAC on eth0"))?)?,
        ovs_port: ovs_port_name(service_id)?,
        relocation_type,
        resource_requirements: Default::default(),
        ue_ipv4_addrs: Vec::new(),
    })
}

/// The interfaces of the edge's namespace that are up.
pub fn ports_up(site: &EdgeSite) -> Vec<String> {
    netkit::link::list_ifaces(&site.netns)
        .unwrap_or_default()
        .into_iter()
        .filter(|i| i.up)
        .map(|i| i.name)
        .collect()
}

/// Whether interface `port` exists in the edge's namespace.
pub fn port_exists(site: &EdgeSite, port: &str) -> bool {
    site.netns
        .tool("ip")
        .args(["link", "show", "dev", port])
        .run()
        .is_ok()
}

/// Attaches a container's veth host end `port` (made by LXC or LXD in the edge's namespace) to
/// the edge's bridge, turns transmit checksum offload off on it and on `eth0` in the netns of
/// `pid` (the container's init), and pins the gateway's MAC there ([`pin_gateway_args`]; CRIU
/// does not carry neighbour entries). Leaves the link state as it is.
pub fn attach(site: &EdgeSite, port: &str, pid: i32) -> Result<(), CmdError> {
    site.ovs.add_port(&site.bridge, port)?;
    netkit::link::tx_checksum_off(&site.netns, port)?;
    let netns = format!("--net=/proc/{pid}/ns/net");
    Tool::new("nsenter")
        .arg(&netns)
        .args(["--", "ethtool", "-K", SERVICE_IFNAME, "tx", "off"])
        .run()?;
    Tool::new("nsenter")
        .args([netns.as_str(), "--", "ip"])
        .args(pin_gateway_args())
        .run()
}

/// Removes `port` from the edge's bridge and the interface (if it still exists).
pub fn detach(site: &EdgeSite, port: &str) -> Result<(), CmdError> {
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

/// Whether `pid` is PID 1 of a PID namespace of its own (a service tree's root), from the
/// `NSpid` line of `/proc/PID/status` (`NSpid: 4242 1`).
pub fn is_pid_ns_init(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|st| {
        st.lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .is_some_and(|ids| {
                let ids: Vec<&str> = ids.split_whitespace().collect();
                ids.len() > 1 && ids.last() == Some(&"1")
            })
    })
}

/// The first child of `pid` (from `/proc/PID/task/PID/children`).
fn first_child(pid: i32) -> Option<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Peer IPv4 addresses from `ss -tnH state established` lines (`Recv-Q Send-Q Local Peer …`),
/// loopback left out, sorted, without duplicates.
pub fn parse_ss_peers(text: &str) -> Vec<Ipv4Addr> {
    let mut peers: Vec<Ipv4Addr> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .filter_map(|peer| {
            let (host, _port) = peer.rsplit_once(':')?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let host = host.strip_prefix("::ffff:").unwrap_or(host);
            host.parse::<Ipv4Addr>().ok()
        })
        .filter(|a| !a.is_loopback())
        .collect();
    peers.sort();
    peers.dedup();
    peers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_per_edge_and_ports_fit_an_interface_name() {
        assert_eq!(netns_name("tb", "video1", "x"), "tb-svc-video1-x");
        assert_eq!(service_id_in("tb-svc-video1-x", "tb", "x"), Some("video1"));
        assert_eq!(service_id_in("tb-svc-a-b-x", "tb", "x"), Some("a-b"));
        for other in [
            "tb-svc-video1-y",
            "tc-svc-video1-x",
            "tb-svc--x",
            "tb-svc-Bad-x",
        ] {
            assert_eq!(service_id_in(other, "tb", "x"), None, "{other}");
        }
        assert_ne!(
            netns_name("tb", "video1", "x"),
            netns_name("tb", "video1", "y")
        );
        assert_eq!(ovs_port_name("video1").ok().as_deref(), Some("s-video1"));
        let longest = "a".repeat(MAX_SERVICE_ID);
        let port = ovs_port_name(&longest).expect("13 characters fit");
        assert_eq!(port.len(), netkit::link::IFNAMSIZ_MAX);
        assert!(ovs_port_name(&"a".repeat(MAX_SERVICE_ID + 1)).is_err());
        assert!(ovs_port_name("").is_err());
        assert!(ovs_port_name("Video").is_err());
        assert!(ovs_port_name("a/b").is_err());
    }

    #[test]
    fn edge_sites_are_configured_by_names_and_the_ovs_directory() {
        let json = serde_json::json!({
            "edge": "x", "netns": "tb-edge-x", "bridge": "br-x", "ovs_dir": "/run/testbed/t/ovs-x"
        });
        let site: EdgeSite = serde_json::from_value(json.clone()).expect("site");
        assert_eq!(site.netns.name(), "tb-edge-x");
        assert_eq!(site.ovs.dir(), std::path::Path::new("/run/testbed/t/ovs-x"));
        assert_eq!(serde_json::to_value(&site).expect("json"), json);
        for (field, bad) in [
            ("edge", ""),
            ("netns", "a/b"),
            ("bridge", "a-very-long-bridge-name"),
            ("ovs_dir", "relative"),
        ] {
            let mut j = json.clone();
            j[field] = serde_json::json!(bad);
            assert!(
                serde_json::from_value::<EdgeSite>(j).is_err(),
                "{field}={bad}"
            );
        }
        let mut extra = json;
        extra["bogus"] = serde_json::json!(1);
        assert!(serde_json::from_value::<EdgeSite>(extra).is_err());
    }

    #[test]
    fn macs_are_checked_and_lowered() {
        assert_eq!(
            validate_mac("02:00:00:00:00:5A").ok().as_deref(),
            Some("02:00:00:00:00:5a")
        );
        assert!(validate_mac("01:00:5e:00:00:01").is_err(), "multicast");
        assert!(validate_mac("02:00:00:00:00").is_err());
        assert!(validate_mac("02:00:00:00:00:zz").is_err());
    }

    #[test]
    fn ss_peers_are_parsed_without_loopback_or_duplicates() {
        let text = "0      0      20.0.0.50:5000 192.168.1.2:44346\n\
                    0      0      20.0.0.50:5000 192.168.1.2:44350\n\
                    0      1448   20.0.0.50:5000 192.168.1.3:40000 \n\
                    0      0      127.0.0.1:9 127.0.0.1:40001\n\
                    0      0      [::ffff:20.0.0.50]:5000 [::ffff:192.168.1.4]:1\n\
                    garbage\n";
        assert_eq!(
            parse_ss_peers(text),
            vec![
                Ipv4Addr::new(192, 168, 1, 2),
                Ipv4Addr::new(192, 168, 1, 3),
                Ipv4Addr::new(192, 168, 1, 4)
            ]
        );
        assert!(parse_ss_peers("").is_empty());
    }
}

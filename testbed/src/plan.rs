//! Topology planning: turns a [`TopologySpec`] into every namespace, link, address, route, switch and
//! flow of the testbed. Pure: no I/O, so the whole address plan is unit-tested without privileges.
//!
//! Address plan (also in ARCHITECTURE.md):
//!
//! | segment | subnet | members |
//! |---|---|---|
//! | air (UE ↔ gNB radio, UDP) | 10.10.0.0/24 | gNB *i* .1+i, UE *j* .100+j |
//! | n3 (gNB ↔ UPF, GTP-U) | 10.30.0.0/24 | gNB *i* .1+i, site *i* .101+i |
//! | xn (gNB ↔ gNB) | 10.40.0.0/24 | gNB *i* .1+i |
//! | n9 (UPF/IAP ↔ UPF, GTP-U) | 10.90.0.0/24 | site *i* .1+i |
//! | dn (sites ↔ central DN) | 10.60.0.0/24 | site *i* .1+i, DN server .100 |
//! | sbi (control plane, HTTP/2; also N4 PFCP) | 10.100.0.0/24 | core .10, site *i* .21+i, gNB *i* .31+i, edge *i* .41+i |
//! | bh (backhaul between edge clouds) | 10.0.1.0/24 | edge *i* .1+i (on its OVS bridge) |
//! | n6 (site ↔ its edge cloud, through OVS) | 20.0.0.0/16 | gateway 20.0.0.1 (anycast MAC) at every site, edge *i* probe server 20.0.0.10(i+1); migratable services from 20.0.0.100 (`stream1` in the first edge cloud) |
//! | UEs | 192.168.1.0/24 | assigned by the SMF |

use ipnet::Ipv4Net;
use serde::Serialize;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use crate::scenario::{Backend, Notify, ServiceKind, ServiceSpec as ScenarioService, Strategy};
use crate::spec::TopologySpec;

/// Where testbeds keep their state.
pub const STATE_ROOT: &str = "/run/testbed";

/// The UE address pool.
pub const UE_POOL: Ipv4Net = net(192, 168, 1, 0, 24);
/// The service range shared by every edge cloud (IP mobility).
pub const SERVICES: Ipv4Net = net(20, 0, 0, 0, 16);
/// The default gateway of the service range, at every site (anycast).
pub const GATEWAY: Ipv4Addr = model::edge::GATEWAY_IP;
/// The gateway's MAC, the same at every site so a migrated service keeps its ARP entry.
pub const GATEWAY_MAC: &str = model::edge::GATEWAY_MAC_STR;
/// The backhaul between edge clouds.
pub const BACKHAUL: Ipv4Net = net(10, 0, 1, 0, 24);
/// The central data network's server.
pub const DN_SERVER: Ipv4Addr = Ipv4Addr::new(10, 60, 0, 100);
/// The migratable streaming service `up` starts in the first edge cloud (in its own namespace
/// `<prefix>-svc-stream1-<edge>`, on OVS port `s-stream1`, run by that edge's service module).
pub const STREAM_SERVICE_ID: &str = "stream1";
/// Its address, kept wherever it moves.
pub const STREAM_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(20, 0, 0, 100);
/// Its MAC, kept wherever it moves.
pub const STREAM_SERVICE_MAC: &str = "02:00:00:00:01:00";
/// The OpenFlow cookie of the base flows `up` installs.
pub const BASE_COOKIE: u64 = 0x1;
/// MTU of every veth.
pub const MTU: u32 = 1500;

const fn net(a: u8, b: u8, c: u8, d: u8, len: u8) -> Ipv4Net {
    match Ipv4Net::new(Ipv4Addr::new(a, b, c, d), len) {
        Ok(n) => n,
        Err(_) => panic!("bad constant prefix"),
    }
}

/// What a node is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// A UE (TUN device, radio client).
    Ue,
    /// A gNB (radio side, N3, Xn).
    Gnb,
    /// A site's user plane: UPF and IAP.
    Site,
    /// The core: SMF and Location Registry.
    Core,
    /// The central data network ("internet" server).
    Dn,
    /// An edge cloud: its Open vSwitch, SMO and containers.
    Edge,
    /// The transport fabric: one Linux bridge per shared segment.
    Fabric,
}

/// A shared L2 segment: a Linux bridge in the fabric namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Segment {
    /// Short name; also the interface name of each member's end.
    pub name: &'static str,
    /// The Linux bridge in the fabric namespace.
    pub bridge: String,
    pub subnet: Ipv4Net,
}

/// One end of a veth pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LinkEnd {
    /// Node name (not namespace).
    pub node: String,
    pub ifname: String,
    /// Attached to the node's Open vSwitch bridge.
    pub ovs: bool,
    /// Attached to this Linux bridge (fabric side of a segment).
    pub bridge: Option<String>,
}

/// A veth pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Link {
    /// The segment it belongs to (or `n6`).
    pub segment: &'static str,
    pub a: LinkEnd,
    pub b: LinkEnd,
}

/// An address on an interface of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Address {
    pub ifname: String,
    pub addr: Ipv4Net,
}

/// A route in a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Route {
    pub dst: Ipv4Net,
    pub via: Option<Ipv4Addr>,
    pub dev: Option<String>,
}

/// A node: one network namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Node {
    pub name: String,
    pub netns: String,
    pub role: Role,
    /// The site it belongs to, for gNBs, sites and edge clouds.
    pub site: Option<String>,
    pub addresses: Vec<Address>,
    /// Fixed MACs: (interface, MAC).
    pub macs: Vec<(String, String)>,
    pub routes: Vec<Route>,
    /// Whether it forwards IPv4 between its interfaces.
    pub forwarding: bool,
}

impl Node {
    /// The first address on `ifname`.
    pub fn addr(&self, ifname: &str) -> Option<Ipv4Addr> {
        self.addresses
            .iter()
            .find(|a| a.ifname == ifname)
            .map(|a| a.addr.addr())
    }
}

/// An edge cloud's private Open vSwitch instance and its bridge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Switch {
    pub node: String,
    pub netns: String,
    /// The bridge; its own (LOCAL) interface carries the edge's backhaul address.
    pub bridge: String,
    /// The instance's run/db/log directory.
    pub dir: PathBuf,
    /// Internal ports (tap interfaces in the namespace).
    pub internal_ports: Vec<String>,
    /// Base flows installed at `up`, in `ovs-ofctl` syntax.
    pub base_flows: Vec<String>,
    /// The edge cloud's DNAI.
    pub dnai: String,
}

/// A migratable service the edge cloud's service module starts at `up` (the module owns it from
/// then on: it may move to another edge cloud).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EdgeService {
    /// The edge node it starts in, e.g. `edge-x`.
    pub edge: String,
    pub service_id: String,
    pub ipv4_addr: Ipv4Addr,
    pub mac_addr: String,
    /// What runs inside.
    pub kind: ServiceKind,
    /// The service module backend that runs and moves it.
    pub backend: Backend,
    /// How its memory moves.
    pub strategy: Strategy,
    /// `ballast` only: resident memory it holds (MB).
    pub memory_mb: Option<u32>,
}

/// Whether a planned service may run on `backend` and move with `strategy`: every kind runs on
/// every backend; lazy pages (post-copy) need the criu backend (`lxc-checkpoint` and LXD have no
/// post-copy restore).
pub fn service_supported(
    kind: ServiceKind,
    backend: Backend,
    strategy: Strategy,
) -> Result<(), String> {
    match (kind, backend, strategy) {
        (_, Backend::Lxc | Backend::Lxd, Strategy::LazyPages) => Err(format!(
            "strategy lazy_pages needs the criu backend ({backend} has no post-copy restore)"
        )),
        (
            ServiceKind::Streamer | ServiceKind::Ballast | ServiceKind::NginxRtmp,
            Backend::Criu | Backend::Lxc | Backend::Lxd,
            _,
        ) => Ok(()),
    }
}

/// Everything `testbed up` makes, in the order it makes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub name: String,
    pub prefix: String,
    pub state_dir: PathBuf,
    pub nodes: Vec<Node>,
    pub segments: Vec<Segment>,
    pub links: Vec<Link>,
    pub switches: Vec<Switch>,
    /// Services started by the edge clouds' service modules.
    pub services: Vec<EdgeService>,
    /// The SMOs' `UP_PATH_CH` subscription (default LATE).
    pub notify: Notify,
}

impl Plan {
    /// Replaces the default services (`stream1` in the first edge cloud) with a scenario's, in
    /// order: addresses from 20.0.0.100 and MACs from 02:00:00:00:01:00 up. Refuses an edge the
    /// plan has not, a kind or backend this build cannot run, and services of one backend with
    /// different strategies (a module moves all its services one way).
    pub fn set_services(&mut self, services: &[ScenarioService]) -> Result<(), String> {
        let mut planned = Vec::new();
        let mut strategies: Vec<(Backend, Strategy)> = Vec::new();
        for (i, s) in services.iter().enumerate() {
            if !self.switches.iter().any(|sw| sw.node == s.edge) {
                return Err(format!(
                    "service `{}`: no edge cloud `{}` in this topology",
                    s.id, s.edge
                ));
            }
            service_supported(s.kind, s.backend, s.strategy)
                .map_err(|e| format!("service `{}`: {e}", s.id))?;
            match strategies.iter().find(|(b, _)| *b == s.backend) {
                Some((_, st)) if *st != s.strategy => {
                    return Err(format!(
                    "service `{}`: services of one backend must share a strategy (the module's)",
                    s.id
                ))
                }
                Some(_) => {}
                None => strategies.push((s.backend, s.strategy)),
            }
            let n = u8::try_from(i).map_err(|_| "more than 255 services".to_owned())?;
            let [a, b, c, d] = STREAM_SERVICE_IP.octets();
            let Some(d) = d.checked_add(n) else {
                return Err("more than 155 services".into());
            };
            planned.push(EdgeService {
                edge: s.edge.clone(),
                service_id: s.id.clone(),
                ipv4_addr: Ipv4Addr::new(a, b, c, d),
                mac_addr: format!("02:00:00:00:01:{n:02x}"),
                kind: s.kind,
                backend: s.backend,
                strategy: s.strategy,
                memory_mb: s.memory_mb,
            });
        }
        self.services = planned;
        Ok(())
    }

    /// The planned service with this id.
    pub fn service(&self, id: &str) -> Option<&EdgeService> {
        self.services.iter().find(|s| s.service_id == id)
    }

    /// Plans the testbed described by a (validated) spec.
    pub fn new(spec: &TopologySpec) -> Self {
        let state_dir = PathBuf::from(STATE_ROOT).join(&spec.name);
        let mut p = Plan {
            name: spec.name.clone(),
            prefix: spec.prefix.clone(),
            state_dir: state_dir.clone(),
            nodes: Vec::new(),
            segments: Vec::new(),
            links: Vec::new(),
            switches: Vec::new(),
            services: Vec::new(),
            notify: Notify::default(),
        };
        for (name, third) in [
            ("air", 10),
            ("n3", 30),
            ("xn", 40),
            ("n9", 90),
            ("dn", 60),
            ("sbi", 100),
            ("bh", 0),
        ] {
            let subnet = if name == "bh" {
                BACKHAUL
            } else {
                net(10, third, 0, 0, 24)
            };
            p.segments.push(Segment {
                name,
                bridge: format!("br-{name}"),
                subnet,
            });
        }
        p.add_node("fabric", Role::Fabric, None);
        p.add_node("core", Role::Core, None);
        p.join("core", "sbi", 10);
        p.add_node("dn", Role::Dn, None);
        p.join("dn", "dn", 100);
        let site_a_dn = host(p.segment("dn").subnet, 1);
        p.route("dn", UE_POOL, Some(site_a_dn), None);

        for (i, s) in spec.sites.iter().enumerate() {
            let i = u8::try_from(i).unwrap_or(u8::MAX);
            let gnb = format!("gnb-{}", s.name);
            let site = format!("site-{}", s.name);
            let edge = format!("edge-{}", s.edge);

            p.add_node(&gnb, Role::Gnb, Some(&s.name));
            p.join(&gnb, "air", 1 + i);
            p.join(&gnb, "n3", 1 + i);
            p.join(&gnb, "xn", 1 + i);
            p.join(&gnb, "sbi", 31 + i);

            p.add_node(&site, Role::Site, Some(&s.name));
            p.join(&site, "n3", 101 + i);
            p.join(&site, "n9", 1 + i);
            p.join(&site, "dn", 1 + i);
            p.join(&site, "sbi", 21 + i);
            p.node_mut(&site).forwarding = true;

            p.add_node(&edge, Role::Edge, Some(&s.name));
            p.join(&edge, "sbi", 41 + i);
            // The backhaul port is an OVS port; the edge's backhaul address sits on the bridge itself.
            let bridge = format!("br-{}", s.edge);
            p.join_ovs(&edge, "bh");
            p.address(&edge, &bridge, host_net(BACKHAUL, 1 + i));

            // N6: site ↔ edge cloud, the edge end on OVS; the site end is the anycast gateway.
            p.links.push(Link {
                segment: "n6",
                a: end(&site, "n6", false, None),
                b: end(&edge, "n6", true, None),
            });
            p.address(&site, "n6", with_len(GATEWAY, SERVICES));
            p.node_mut(&site)
                .macs
                .push(("n6".into(), GATEWAY_MAC.into()));

            // A probe server address in each edge cloud, on an internal OVS port.
            let probe = Ipv4Addr::new(20, 0, 0, 10 * (i + 1));
            p.address(&edge, "srv", with_len(probe, SERVICES));
            p.node_mut(&edge).macs.push((
                "srv".into(),
                format!("02:14:00:00:00:{:02x}", probe.octets()[3]),
            ));
            p.route(&edge, UE_POOL, Some(GATEWAY), Some("srv"));

            p.switches.push(Switch {
                netns: p.netns(&edge),
                node: edge.clone(),
                dir: state_dir.join(format!("ovs-{edge}")),
                bridge: bridge.clone(),
                internal_ports: vec!["srv".into()],
                base_flows: base_flows(),
                dnai: s.dnai.clone().unwrap_or_else(|| edge.clone()),
            });
        }
        if let Some(first) = p.switches.first() {
            p.services.push(EdgeService {
                edge: first.node.clone(),
                service_id: STREAM_SERVICE_ID.into(),
                ipv4_addr: STREAM_SERVICE_IP,
                mac_addr: STREAM_SERVICE_MAC.into(),
                kind: ServiceKind::Streamer,
                backend: Backend::Criu,
                strategy: Strategy::StopAndCopy,
                memory_mb: None,
            });
        }
        for u in 1..=spec.ues {
            let ue = format!("ue{u}");
            p.add_node(&ue, Role::Ue, None);
            // At most MAX_UES (150): host numbers 101..=250.
            p.join(&ue, "air", 100 + u8::try_from(u).unwrap_or(u8::MAX - 100));
        }
        p
    }

    /// The namespace name of node `node`.
    pub fn netns(&self, node: &str) -> String {
        format!("{}-{node}", self.prefix)
    }

    /// A node by name.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The short name of edge node `edge` (`edge-x` → `x`), as service namespaces use it.
    pub fn edge_short(edge: &str) -> &str {
        edge.strip_prefix("edge-").unwrap_or(edge)
    }

    /// The namespace of service `service_id` while it runs in edge node `edge`:
    /// `<prefix>-svc-<id>-<edge short name>` (the service module makes it).
    pub fn service_netns(&self, service_id: &str, edge: &str) -> String {
        format!(
            "{}-svc-{service_id}-{}",
            self.prefix,
            Self::edge_short(edge)
        )
    }

    /// The OVS port of service `service_id`, the same at every edge cloud: `s-<id>`.
    pub fn service_port(service_id: &str) -> String {
        format!("s-{service_id}")
    }

    /// The switch of edge node `edge`.
    pub fn switch(&self, edge: &str) -> Option<&Switch> {
        self.switches.iter().find(|s| s.node == edge)
    }

    fn segment(&self, name: &str) -> &Segment {
        self.segments
            .iter()
            .find(|s| s.name == name)
            .unwrap_or(&self.segments[0])
    }

    fn node_mut(&mut self, name: &str) -> &mut Node {
        let i = self
            .nodes
            .iter()
            .position(|n| n.name == name)
            .unwrap_or(self.nodes.len() - 1);
        &mut self.nodes[i]
    }

    fn add_node(&mut self, name: &str, role: Role, site: Option<&str>) {
        self.nodes.push(Node {
            name: name.to_owned(),
            netns: self.netns(name),
            role,
            site: site.map(str::to_owned),
            addresses: Vec::new(),
            macs: Vec::new(),
            routes: Vec::new(),
            forwarding: false,
        });
    }

    /// Connects `node` to segment `seg` with host number `host` on interface `seg`.
    fn join(&mut self, node: &str, seg: &str, host_no: u8) {
        let s = self.segment(seg).clone();
        self.links.push(Link {
            segment: s.name,
            a: end(node, s.name, false, None),
            b: end(
                "fabric",
                &format!("{}-{node}", s.name),
                false,
                Some(s.bridge),
            ),
        });
        self.address(node, s.name, host_net(s.subnet, host_no));
    }

    /// Connects `node`'s OVS bridge to segment `seg` (no address on the port).
    fn join_ovs(&mut self, node: &str, seg: &str) {
        let s = self.segment(seg).clone();
        self.links.push(Link {
            segment: s.name,
            a: end(node, s.name, true, None),
            b: end(
                "fabric",
                &format!("{}-{node}", s.name),
                false,
                Some(s.bridge),
            ),
        });
    }

    fn address(&mut self, node: &str, ifname: &str, addr: Ipv4Net) {
        self.node_mut(node).addresses.push(Address {
            ifname: ifname.to_owned(),
            addr,
        });
    }

    fn route(&mut self, node: &str, dst: Ipv4Net, via: Option<Ipv4Addr>, dev: Option<&str>) {
        self.node_mut(node).routes.push(Route {
            dst,
            via,
            dev: dev.map(str::to_owned),
        });
    }
}

/// The flows every edge bridge starts with: the backhaul carries only backhaul traffic (edge ↔ edge
/// addresses, migration images) into this edge; data-path traffic from another edge cloud is dropped
/// unless a higher-priority rule (tromboning, installed by the SMO) lets it in.
pub fn base_flows() -> Vec<String> {
    let c = BASE_COOKIE;
    vec![
        format!("cookie={c:#x},priority=100,in_port=bh,arp,arp_tpa={BACKHAUL},actions=NORMAL"),
        format!("cookie={c:#x},priority=100,in_port=bh,ip,nw_dst={BACKHAUL},actions=NORMAL"),
        format!("cookie={c:#x},priority=50,in_port=bh,actions=drop"),
        format!("cookie={c:#x},priority=0,actions=NORMAL"),
    ]
}

fn end(node: &str, ifname: &str, ovs: bool, bridge: Option<String>) -> LinkEnd {
    LinkEnd {
        node: node.to_owned(),
        ifname: ifname.to_owned(),
        ovs,
        bridge,
    }
}

fn host(subnet: Ipv4Net, n: u8) -> Ipv4Addr {
    let base = u32::from(subnet.network());
    Ipv4Addr::from(base + u32::from(n))
}

fn host_net(subnet: Ipv4Net, n: u8) -> Ipv4Net {
    with_len(host(subnet, n), subnet)
}

/// `addr` with the prefix length of `subnet`.
fn with_len(addr: Ipv4Addr, subnet: Ipv4Net) -> Ipv4Net {
    Ipv4Net::new(addr, subnet.prefix_len()).unwrap_or(subnet)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn two_site() -> Plan {
        Plan::new(&TopologySpec::builtin("two-site").expect("builtin"))
    }

    #[test]
    fn two_site_has_every_node_in_its_namespace() {
        let p = two_site();
        let names: Vec<&str> = p.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "fabric", "core", "dn", "gnb-a", "site-a", "edge-x", "gnb-b", "site-b", "edge-y",
                "ue1"
            ]
        );
        for n in &p.nodes {
            assert_eq!(n.netns, format!("tb-{}", n.name));
        }
        assert_eq!(p.state_dir, PathBuf::from("/run/testbed/two-site"));
    }

    #[test]
    fn addresses_follow_the_plan() {
        let p = two_site();
        let a = |node: &str, ifname: &str| {
            p.node(node)
                .and_then(|n| n.addr(ifname))
                .map(|a| a.to_string())
        };
        assert_eq!(a("ue1", "air").as_deref(), Some("10.10.0.101"));
        assert_eq!(a("gnb-a", "air").as_deref(), Some("10.10.0.1"));
        assert_eq!(a("gnb-b", "n3").as_deref(), Some("10.30.0.2"));
        assert_eq!(a("site-a", "n3").as_deref(), Some("10.30.0.101"));
        assert_eq!(a("site-b", "n9").as_deref(), Some("10.90.0.2"));
        assert_eq!(a("core", "sbi").as_deref(), Some("10.100.0.10"));
        assert_eq!(a("edge-y", "sbi").as_deref(), Some("10.100.0.42"));
        assert_eq!(a("edge-x", "br-x").as_deref(), Some("10.0.1.1"));
        assert_eq!(a("edge-y", "br-y").as_deref(), Some("10.0.1.2"));
        assert_eq!(a("edge-x", "srv").as_deref(), Some("20.0.0.10"));
        assert_eq!(a("edge-y", "srv").as_deref(), Some("20.0.0.20"));
        assert_eq!(
            a("dn", "dn").as_deref(),
            Some(DN_SERVER.to_string().as_str())
        );
        // The anycast gateway: same address and MAC at every site.
        for site in ["site-a", "site-b"] {
            let n = p.node(site).expect("site");
            assert_eq!(n.addr("n6"), Some(GATEWAY));
            assert!(n.macs.contains(&("n6".into(), GATEWAY_MAC.into())));
            assert!(n.forwarding);
        }
    }

    #[test]
    fn no_address_is_given_twice_except_the_anycast_gateway() {
        let p = Plan::new(&TopologySpec::builtin("three-site").expect("builtin"));
        let mut seen = BTreeSet::new();
        for n in &p.nodes {
            for a in &n.addresses {
                if a.addr.addr() != GATEWAY {
                    assert!(seen.insert(a.addr.addr()), "{} given twice", a.addr);
                }
                let seg_ok = p.segments.iter().any(|s| s.subnet.contains(&a.addr.addr()))
                    || SERVICES.contains(&a.addr.addr());
                assert!(seg_ok, "{} of {} lies in no planned range", a.addr, n.name);
            }
        }
    }

    #[test]
    fn interface_names_fit_the_kernel_limit() {
        let mut spec = TopologySpec::builtin("three-site").expect("builtin");
        spec.ues = crate::spec::MAX_UES;
        for s in &mut spec.sites {
            s.name = format!("{}abc", s.name);
            s.edge = format!("{}abc", s.edge);
        }
        spec.validate().expect("valid");
        let p = Plan::new(&spec);
        let mut per_ns = BTreeSet::new();
        for l in &p.links {
            for e in [&l.a, &l.b] {
                assert!(
                    e.ifname.len() <= netkit::link::IFNAMSIZ_MAX,
                    "{} too long",
                    e.ifname
                );
                assert!(
                    per_ns.insert((e.node.clone(), e.ifname.clone())),
                    "{}:{} twice",
                    e.node,
                    e.ifname
                );
            }
        }
        let last_ue = p.node("ue150").expect("ue150");
        assert_eq!(last_ue.addr("air"), Some(Ipv4Addr::new(10, 10, 0, 250)));
    }

    #[test]
    fn each_edge_has_its_own_switch_and_backhaul_port() {
        let p = two_site();
        assert_eq!(p.switches.len(), 2);
        let x = p.switch("edge-x").expect("x");
        assert_eq!(x.bridge, "br-x");
        assert_eq!(x.netns, "tb-edge-x");
        assert_eq!(x.dnai, "edge-x");
        assert_eq!(x.dir, PathBuf::from("/run/testbed/two-site/ovs-edge-x"));
        let ovs_ports: Vec<_> = p
            .links
            .iter()
            .flat_map(|l| [&l.a, &l.b])
            .filter(|e| e.ovs && e.node == "edge-x")
            .map(|e| e.ifname.as_str())
            .collect();
        assert_eq!(ovs_ports, ["bh", "n6"]);
        assert!(x
            .base_flows
            .iter()
            .any(|f| f.contains("in_port=bh,actions=drop")));
    }

    #[test]
    fn the_stream_service_starts_in_the_first_edge_cloud_outside_every_other_address() {
        let p = Plan::new(&TopologySpec::builtin("three-site").expect("builtin"));
        assert_eq!(
            p.services,
            [EdgeService {
                edge: "edge-x".into(),
                service_id: "stream1".into(),
                ipv4_addr: Ipv4Addr::new(20, 0, 0, 100),
                mac_addr: "02:00:00:00:01:00".into(),
                kind: ServiceKind::Streamer,
                backend: Backend::Criu,
                strategy: Strategy::StopAndCopy,
                memory_mb: None,
            }]
        );
        assert!(SERVICES.contains(&STREAM_SERVICE_IP));
        for n in &p.nodes {
            assert!(
                n.addresses
                    .iter()
                    .all(|a| a.addr.addr() != STREAM_SERVICE_IP),
                "{} holds the service address",
                n.name
            );
            assert!(n.macs.iter().all(|(_, m)| m != STREAM_SERVICE_MAC));
        }
        assert_eq!(p.service_netns("stream1", "edge-y"), "tb3-svc-stream1-y");
        assert!(p
            .service_netns("stream1", "edge-x")
            .starts_with(&format!("{}-", p.prefix)));
        assert_eq!(Plan::service_port("stream1"), "s-stream1");
    }

    fn scenario_service(
        id: &str,
        edge: &str,
        backend: &str,
        kind: &str,
        strategy: &str,
    ) -> ScenarioService {
        toml::from_str(&format!(
            "id = \"{id}\"\nedge = \"{edge}\"\nbackend = \"{backend}\"\nkind = \"{kind}\"\nstrategy = \"{strategy}\"\nserves = [\"ue1\"]"
        ))
        .expect("service")
    }

    #[test]
    fn a_scenarios_services_replace_the_default_ones_in_order() {
        let mut p = two_site();
        assert_eq!(p.services.len(), 1);
        p.set_services(&[
            scenario_service("a", "edge-y", "criu", "streamer", "stop_and_copy"),
            scenario_service("b", "edge-x", "criu", "streamer", "stop_and_copy"),
        ])
        .expect("planned");
        let ids: Vec<_> = p
            .services
            .iter()
            .map(|s| (s.service_id.as_str(), s.edge.as_str(), s.ipv4_addr))
            .collect();
        assert_eq!(
            ids,
            [
                ("a", "edge-y", Ipv4Addr::new(20, 0, 0, 100)),
                ("b", "edge-x", Ipv4Addr::new(20, 0, 0, 101))
            ]
        );
        assert_eq!(
            p.service("b").map(|s| s.mac_addr.as_str()),
            Some("02:00:00:00:01:01")
        );
    }

    #[test]
    fn services_the_plan_cannot_run_are_refused_with_the_reason() {
        let mut p = two_site();
        let e = p
            .set_services(&[scenario_service(
                "a",
                "edge-z",
                "criu",
                "streamer",
                "stop_and_copy",
            )])
            .expect_err("unknown edge");
        assert!(e.contains("edge-z"), "{e}");
        let e = p
            .set_services(&[
                scenario_service("a", "edge-x", "criu", "streamer", "stop_and_copy"),
                scenario_service("b", "edge-y", "criu", "streamer", "lazy_pages"),
            ])
            .expect_err("mixed strategies");
        assert!(e.contains("share a strategy"), "{e}");
        let e = p
            .set_services(&[scenario_service(
                "a",
                "edge-x",
                "lxd",
                "streamer",
                "lazy_pages",
            )])
            .expect_err("lxd with lazy pages");
        assert!(e.contains("lazy"), "{e}");
        assert_eq!(p.services.len(), 1, "a refusal keeps the plan's services");
    }

    #[test]
    fn nginx_rtmp_runs_on_every_backend() {
        for backend in [Backend::Criu, Backend::Lxc, Backend::Lxd] {
            assert_eq!(
                service_supported(ServiceKind::NginxRtmp, backend, Strategy::StopAndCopy),
                Ok(())
            );
        }
        let mut p = two_site();
        p.set_services(&[scenario_service(
            "nginx",
            "edge-x",
            "criu",
            "nginx-rtmp",
            "stop_and_copy",
        )])
        .expect("planned");
        assert_eq!(
            p.service("nginx").map(|s| s.kind),
            Some(ServiceKind::NginxRtmp)
        );
    }
}

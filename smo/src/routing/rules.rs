//! The flow sets of each relocation phase, on one edge cloud's switch (pure functions).
//!
//! A relocation moves a service from the *source* edge to the *target* edge. While the service
//! still runs at the source, the UE's traffic already arrives at the target site: the target's
//! switch answers ARP for the service on its behalf and trombones the traffic over the backhaul
//! (`bh`) to the source's switch, which hands it to the service's port and sends the replies
//! back the same way. On the backhaul the trombone's frames are addressed to dedicated MACs
//! ([`TROMBONE_MAC`], [`TROMBONE_UPLINK_MAC`]) that the backhaul's learning bridge always floods;
//! the receiving edge restores the real destination. Once the service runs at the target, its
//! switch replaces the trombone by a direct path; the source removes what it installed.
//!
//! Cookies name what a flow belongs to, so each phase removes exactly what an earlier one added:
//! [`relocation_cookie`] for the trombone of one relocation, [`service_cookie`] for a service's
//! direct path at its current edge.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use wire::openflow::{Action, FlowMod, FlowStats, Oxm, OFPP_IN_PORT, OFPP_NORMAL};

use super::{
    CookieDelete, FlowAction, FlowMatch, FlowRule, FlowSet, Mac, PacketOut, GATEWAY_IP,
    GATEWAY_MAC, TROMBONE_MAC, TROMBONE_UPLINK_MAC,
};

/// EtherType of IPv4.
pub const ETH_TYPE_IPV4: u16 = 0x0800;
/// EtherType of ARP.
pub const ETH_TYPE_ARP: u16 = 0x0806;
/// ARP opcode of a request.
pub const ARP_REQUEST: u16 = 1;
/// ARP opcode of a reply.
pub const ARP_REPLY: u16 = 2;

/// Priority of the trombone flows: above the base flows (100, see ARCHITECTURE.md "Edge
/// switching") so they win over `in_port=bh actions=drop`.
pub const TROMBONE_PRIORITY: u16 = 200;
/// Priority of a service's direct path at the edge it runs on.
pub const SERVICE_PRIORITY: u16 = 150;

/// The switch ports every edge cloud has, by name.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EdgePorts {
    /// The backhaul towards the other edge clouds (`bh` in the testbed).
    pub backhaul: String,
    /// The link to the site's N6 gateway (`n6` in the testbed).
    pub n6: String,
}

impl EdgePorts {
    /// The testbed's port names: `bh` and `n6`.
    pub fn testbed() -> Self {
        Self {
            backhaul: "bh".into(),
            n6: "n6".into(),
        }
    }
}

/// A service as it runs at this edge cloud.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAt {
    pub ip: Ipv4Addr,
    pub mac: Mac,
    /// The service's OVS port at this edge.
    pub port: String,
}

impl ServiceAt {
    /// Where `service` is on the switch: `None` when its MAC address does not parse.
    pub fn of(service: &model::smo::Service) -> Option<Self> {
        Some(Self {
            ip: service.ipv4_addr,
            mac: service.mac_addr.parse().ok()?,
            port: service.ovs_port.clone(),
        })
    }
}

/// What every SMO cookie starts with (`SMO`), and the mask that selects those three octets: the
/// switch's flows the SMO reads back (its own, relocations' and services').
pub const SMO_COOKIE: u64 = 0x534d_4f00_0000_0000;
pub const SMO_COOKIE_MASK: u64 = 0xffff_ff00_0000_0000;

/// Whether `cookie` is one of the SMO's (a relocation's or a service's).
pub fn is_smo_cookie(cookie: u64) -> bool {
    cookie & SMO_COOKIE_MASK == SMO_COOKIE
}

/// Whether `cookie` is a relocation's ([`relocation_cookie`]).
pub fn is_relocation_cookie(cookie: u64) -> bool {
    cookie >> 32 == 0x534d_4f52
}

/// The service address of a service cookie ([`service_cookie`]), `None` for any other cookie.
pub fn service_of_cookie(cookie: u64) -> Option<Ipv4Addr> {
    (cookie >> 32 == 0x534d_4f53).then(|| Ipv4Addr::from(cookie as u32))
}

/// The cookie of the flows of relocation number `n` (`SMOR` in the top half).
pub fn relocation_cookie(n: u32) -> u64 {
    0x534d_4f52_0000_0000 | u64::from(n)
}

/// The cookie of a service's direct-path flows (`SMOS` in the top half, the address below).
pub fn service_cookie(ip: Ipv4Addr) -> u64 {
    0x534d_4f53_0000_0000 | u64::from(u32::from(ip))
}

fn ipv4() -> FlowMatch {
    FlowMatch {
        eth_type: Some(ETH_TYPE_IPV4),
        ..FlowMatch::default()
    }
}

fn arp() -> FlowMatch {
    FlowMatch {
        eth_type: Some(ETH_TYPE_ARP),
        ..FlowMatch::default()
    }
}

fn rule(cookie: u64, priority: u16, matches: FlowMatch, actions: Vec<FlowAction>) -> FlowRule {
    FlowRule {
        cookie,
        priority,
        matches,
        actions,
    }
}

/// The source edge's half of the trombone: traffic for the service arriving over the backhaul goes
/// to the service's port (addressed to the service's MAC again, see [`TROMBONE_UPLINK_MAC`]); the
/// service's replies to the UE go back over the backhaul, addressed to [`TROMBONE_MAC`] rather than
/// the anycast gateway MAC, which the backhaul bridge may have learned on this edge's own port.
pub fn trombone_source(cookie: u64, ports: &EdgePorts, svc: &ServiceAt, ue: Ipv4Addr) -> FlowSet {
    FlowSet {
        label: "trombone-source".into(),
        delete: Vec::new(),
        add: vec![
            rule(
                cookie,
                TROMBONE_PRIORITY,
                FlowMatch {
                    in_port: Some(ports.backhaul.clone()),
                    ipv4_dst: Some(svc.ip),
                    ..ipv4()
                },
                vec![
                    FlowAction::SetEthDst(svc.mac),
                    FlowAction::Output(svc.port.clone()),
                ],
            ),
            rule(
                cookie,
                TROMBONE_PRIORITY,
                FlowMatch {
                    in_port: Some(svc.port.clone()),
                    ipv4_src: Some(svc.ip),
                    ipv4_dst: Some(ue),
                    ..ipv4()
                },
                vec![
                    FlowAction::SetEthDst(TROMBONE_MAC),
                    FlowAction::Output(ports.backhaul.clone()),
                ],
            ),
        ],
        packets: Vec::new(),
    }
}

/// The target edge's half of the trombone. The service does not run here yet, but the site's
/// router (the anycast gateway) must resolve it: the switch answers its ARP requests in the
/// service's name, turning the request around on its ingress port. Traffic for the service goes
/// over the backhaul (addressed to [`TROMBONE_UPLINK_MAC`]); the service's replies to the UE come
/// back from it (addressed to [`TROMBONE_MAC`]) and go to the site, addressed to the gateway again.
///
/// Once the flows are in, the set sends the site's router the ARP reply the responder would send
/// ([`arp_announce`]): with a LATE notification the UE's traffic reaches the site before this set
/// is installed, the router's ARP request for the service went unanswered, and its next try would
/// come only after the kernel's retransmission time (1 s). The reply completes the router's pending
/// (INCOMPLETE, or FAILED) entry at once and releases the packets queued on it; a router without
/// an entry for the service ignores it (Linux's default `arp_accept=0`).
pub fn trombone_target(
    cookie: u64,
    ports: &EdgePorts,
    svc_ip: Ipv4Addr,
    svc_mac: Mac,
    ue: Ipv4Addr,
) -> FlowSet {
    FlowSet {
        label: "trombone-target".into(),
        delete: Vec::new(),
        add: vec![
            rule(
                cookie,
                TROMBONE_PRIORITY,
                FlowMatch {
                    in_port: Some(ports.n6.clone()),
                    arp_op: Some(ARP_REQUEST),
                    arp_tpa: Some(svc_ip),
                    ..arp()
                },
                vec![
                    FlowAction::SetEthDst(GATEWAY_MAC),
                    FlowAction::SetEthSrc(svc_mac),
                    FlowAction::SetArpOp(ARP_REPLY),
                    FlowAction::SetArpSha(svc_mac),
                    FlowAction::SetArpSpa(svc_ip),
                    FlowAction::SetArpTha(GATEWAY_MAC),
                    FlowAction::SetArpTpa(GATEWAY_IP),
                    FlowAction::InPort,
                ],
            ),
            rule(
                cookie,
                TROMBONE_PRIORITY,
                FlowMatch {
                    in_port: Some(ports.n6.clone()),
                    ipv4_dst: Some(svc_ip),
                    ..ipv4()
                },
                vec![
                    FlowAction::SetEthDst(TROMBONE_UPLINK_MAC),
                    FlowAction::Output(ports.backhaul.clone()),
                ],
            ),
            rule(
                cookie,
                TROMBONE_PRIORITY,
                FlowMatch {
                    in_port: Some(ports.backhaul.clone()),
                    ipv4_src: Some(svc_ip),
                    ipv4_dst: Some(ue),
                    ..ipv4()
                },
                vec![
                    FlowAction::SetEthDst(GATEWAY_MAC),
                    FlowAction::Output(ports.n6.clone()),
                ],
            ),
        ],
        packets: vec![PacketOut {
            port: ports.n6.clone(),
            data: arp_announce(svc_ip, svc_mac),
        }],
    }
}

/// Length of an ARP frame for IPv4 over Ethernet: 14 octets of Ethernet header, 28 of ARP.
pub const ARP_FRAME_LEN: usize = 42;

/// The Ethernet frame of the ARP reply the trombone's responder sends the site's router (the
/// anycast gateway): "`svc_ip` is at `svc_mac`", from `svc_mac` to [`GATEWAY_MAC`], target
/// [`GATEWAY_IP`] / [`GATEWAY_MAC`] (RFC 826; no padding, like the replies Linux sends).
///
/// A unicast reply rather than a gratuitous broadcast: Linux (`arp_process`) takes either into an
/// existing neighbour entry with default sysctls, but a reply addressed to the router's own MAC
/// makes the entry REACHABLE (a broadcast only STALE), and it is exactly what the responder flow
/// answers, so the router sees one consistent story.
pub fn arp_announce(svc_ip: Ipv4Addr, svc_mac: Mac) -> Vec<u8> {
    let mut f = Vec::with_capacity(ARP_FRAME_LEN);
    f.extend_from_slice(&GATEWAY_MAC.0);
    f.extend_from_slice(&svc_mac.0);
    f.extend_from_slice(&ETH_TYPE_ARP.to_be_bytes());
    f.extend_from_slice(&1u16.to_be_bytes()); // hardware type: Ethernet
    f.extend_from_slice(&ETH_TYPE_IPV4.to_be_bytes()); // protocol type: IPv4
    f.push(6); // hardware address length
    f.push(4); // protocol address length
    f.extend_from_slice(&ARP_REPLY.to_be_bytes());
    f.extend_from_slice(&svc_mac.0);
    f.extend_from_slice(&svc_ip.octets());
    f.extend_from_slice(&GATEWAY_MAC.0);
    f.extend_from_slice(&GATEWAY_IP.octets());
    f
}

/// The service now runs at the target: replace the trombone by the direct path from the site to
/// the service's port, IPv4 and ARP alike.
pub fn new_path_target(relocation_cookie: u64, ports: &EdgePorts, svc: &ServiceAt) -> FlowSet {
    FlowSet {
        label: "new-path-target".into(),
        delete: vec![CookieDelete {
            cookie: relocation_cookie,
        }],
        add: direct_path_rules(ports, svc),
        packets: Vec::new(),
    }
}

/// A service's direct path at the edge it runs at, as one set that replaces whatever its cookie
/// holds there (the reconciler's repair).
pub fn direct_path(ports: &EdgePorts, svc: &ServiceAt) -> FlowSet {
    FlowSet {
        label: "direct-path".into(),
        delete: vec![CookieDelete {
            cookie: service_cookie(svc.ip),
        }],
        add: direct_path_rules(ports, svc),
        packets: Vec::new(),
    }
}

/// The direct path: from the site to the service's port, IPv4 and ARP alike.
pub fn direct_path_rules(ports: &EdgePorts, svc: &ServiceAt) -> Vec<FlowRule> {
    let cookie = service_cookie(svc.ip);
    vec![
        rule(
            cookie,
            SERVICE_PRIORITY,
            FlowMatch {
                in_port: Some(ports.n6.clone()),
                ipv4_dst: Some(svc.ip),
                ..ipv4()
            },
            vec![FlowAction::Output(svc.port.clone())],
        ),
        rule(
            cookie,
            SERVICE_PRIORITY,
            FlowMatch {
                in_port: Some(ports.n6.clone()),
                arp_tpa: Some(svc.ip),
                ..arp()
            },
            vec![FlowAction::Output(svc.port.clone())],
        ),
    ]
}

/// Removes every flow of one relocation (its trombone), on either side: a cancelled
/// relocation's, or one the reconciler finds stale.
pub fn withdraw(relocation_cookie: u64) -> FlowSet {
    FlowSet {
        label: "withdraw".into(),
        delete: vec![CookieDelete {
            cookie: relocation_cookie,
        }],
        add: Vec::new(),
        packets: Vec::new(),
    }
}

/// The service has left the source edge: remove the source's trombone and the service's old
/// direct path there.
pub fn cleanup_source(relocation_cookie: u64, svc_ip: Ipv4Addr) -> FlowSet {
    FlowSet {
        label: "cleanup-source".into(),
        delete: vec![
            CookieDelete {
                cookie: relocation_cookie,
            },
            CookieDelete {
                cookie: service_cookie(svc_ip),
            },
        ],
        add: Vec::new(),
        packets: Vec::new(),
    }
}

impl FlowRule {
    /// The rule in `ovs-ofctl add-flow` syntax (ports by name), e.g.
    /// `cookie=0x534d4f5200000001,priority=200,in_port=bh,ip,nw_dst=20.0.0.10,actions=output:srv`.
    pub fn to_ofctl(&self) -> String {
        let mut s = format!("cookie={:#x},priority={}", self.cookie, self.priority);
        let m = &self.matches;
        if let Some(p) = &m.in_port {
            let _ = write!(s, ",in_port={p}");
        }
        match m.eth_type {
            Some(ETH_TYPE_IPV4) => s.push_str(",ip"),
            Some(ETH_TYPE_ARP) => s.push_str(",arp"),
            Some(t) => {
                let _ = write!(s, ",dl_type={t:#06x}");
            }
            None => {}
        }
        if let Some(a) = m.ipv4_src {
            let _ = write!(s, ",nw_src={a}");
        }
        if let Some(a) = m.ipv4_dst {
            let _ = write!(s, ",nw_dst={a}");
        }
        if let Some(op) = m.arp_op {
            let _ = write!(s, ",arp_op={op}");
        }
        if let Some(a) = m.arp_tpa {
            let _ = write!(s, ",arp_tpa={a}");
        }
        s.push_str(",actions=");
        if self.actions.is_empty() {
            s.push_str("drop");
        }
        for (i, a) in self.actions.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            let _ = match a {
                FlowAction::Output(p) => write!(s, "output:{p}"),
                FlowAction::InPort => write!(s, "IN_PORT"),
                FlowAction::Normal => write!(s, "NORMAL"),
                FlowAction::SetEthSrc(m) => write!(s, "set_field:{m}->eth_src"),
                FlowAction::SetEthDst(m) => write!(s, "set_field:{m}->eth_dst"),
                FlowAction::SetArpOp(op) => write!(s, "set_field:{op}->arp_op"),
                FlowAction::SetArpSha(m) => write!(s, "set_field:{m}->arp_sha"),
                FlowAction::SetArpSpa(a) => write!(s, "set_field:{a}->arp_spa"),
                FlowAction::SetArpTha(m) => write!(s, "set_field:{m}->arp_tha"),
                FlowAction::SetArpTpa(a) => write!(s, "set_field:{a}->arp_tpa"),
            };
        }
        s
    }
}

impl FlowRule {
    /// The rule as an OpenFlow FLOW_MOD (add, table 0), with `port` resolving port names to
    /// numbers (`Err(name)` for the first name it does not know). Match fields are written in OXM
    /// prerequisite order.
    pub fn to_flow_mod(
        &self,
        mut port: impl FnMut(&str) -> Option<u32>,
    ) -> Result<FlowMod, String> {
        let mut resolve = |name: &str| port(name).ok_or_else(|| name.to_owned());
        let m = &self.matches;
        let mut matches = Vec::with_capacity(6);
        if let Some(p) = &m.in_port {
            matches.push(Oxm::InPort(resolve(p)?));
        }
        matches.extend(m.eth_type.map(Oxm::EthType));
        matches.extend(m.ipv4_src.map(Oxm::Ipv4Src));
        matches.extend(m.ipv4_dst.map(Oxm::Ipv4Dst));
        matches.extend(m.arp_op.map(Oxm::ArpOp));
        matches.extend(m.arp_tpa.map(Oxm::ArpTpa));
        let mut actions = Vec::with_capacity(self.actions.len());
        for a in &self.actions {
            actions.push(match a {
                FlowAction::Output(p) => Action::Output(resolve(p)?),
                FlowAction::InPort => Action::Output(OFPP_IN_PORT),
                FlowAction::Normal => Action::Output(OFPP_NORMAL),
                FlowAction::SetEthSrc(mac) => Action::SetField(Oxm::EthSrc(mac.0)),
                FlowAction::SetEthDst(mac) => Action::SetField(Oxm::EthDst(mac.0)),
                FlowAction::SetArpOp(op) => Action::SetField(Oxm::ArpOp(*op)),
                FlowAction::SetArpSha(mac) => Action::SetField(Oxm::ArpSha(mac.0)),
                FlowAction::SetArpSpa(a) => Action::SetField(Oxm::ArpSpa(*a)),
                FlowAction::SetArpTha(mac) => Action::SetField(Oxm::ArpTha(mac.0)),
                FlowAction::SetArpTpa(a) => Action::SetField(Oxm::ArpTpa(*a)),
            });
        }
        Ok(FlowMod::add(self.cookie, self.priority, matches, actions))
    }
}

impl FlowRule {
    /// A flow read back from the switch as the rule that installed it, with `port` naming port
    /// numbers (an unknown number becomes `#N`, which no rule names); `None` when it has match
    /// fields or actions the SMO never installs.
    pub fn from_flow_stats(
        stats: &FlowStats,
        mut port: impl FnMut(u32) -> Option<String>,
    ) -> Option<Self> {
        if stats.unknown > 0 || stats.table_id != 0 {
            return None;
        }
        let mut name = |no: u32| port(no).unwrap_or_else(|| format!("#{no}"));
        let mut m = FlowMatch::default();
        for oxm in &stats.matches {
            match *oxm {
                Oxm::InPort(no) => m.in_port = Some(name(no)),
                Oxm::EthType(t) => m.eth_type = Some(t),
                Oxm::Ipv4Src(a) => m.ipv4_src = Some(a),
                Oxm::Ipv4Dst(a) => m.ipv4_dst = Some(a),
                Oxm::ArpOp(op) => m.arp_op = Some(op),
                Oxm::ArpTpa(a) => m.arp_tpa = Some(a),
                _ => return None,
            }
        }
        let mut actions = Vec::with_capacity(stats.actions.len());
        for a in &stats.actions {
            actions.push(match *a {
                Action::Output(OFPP_IN_PORT) => FlowAction::InPort,
                Action::Output(OFPP_NORMAL) => FlowAction::Normal,
                Action::Output(no) => FlowAction::Output(name(no)),
                Action::SetField(Oxm::EthSrc(mac)) => FlowAction::SetEthSrc(Mac(mac)),
                Action::SetField(Oxm::EthDst(mac)) => FlowAction::SetEthDst(Mac(mac)),
                Action::SetField(Oxm::ArpOp(op)) => FlowAction::SetArpOp(op),
                Action::SetField(Oxm::ArpSha(mac)) => FlowAction::SetArpSha(Mac(mac)),
                Action::SetField(Oxm::ArpSpa(a)) => FlowAction::SetArpSpa(a),
                Action::SetField(Oxm::ArpTha(mac)) => FlowAction::SetArpTha(Mac(mac)),
                Action::SetField(Oxm::ArpTpa(a)) => FlowAction::SetArpTpa(a),
                Action::SetField(_) => return None,
            });
        }
        Some(Self {
            cookie: stats.cookie,
            priority: stats.priority,
            matches: m,
            actions,
        })
    }
}

impl CookieDelete {
    /// The deletion as an `ovs-ofctl del-flows` flow spec: `cookie=0x…/-1`.
    pub fn to_ofctl(&self) -> String {
        format!("cookie={:#x}/-1", self.cookie)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SVC: Ipv4Addr = Ipv4Addr::new(20, 0, 0, 10);
    const UE: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);
    const SVC_MAC: Mac = Mac([0x02, 0x20, 0, 0, 0, 0x0a]);

    fn svc() -> ServiceAt {
        ServiceAt {
            ip: SVC,
            mac: SVC_MAC,
            port: "srv".into(),
        }
    }

    fn ofctl(set: &FlowSet) -> Vec<String> {
        set.add.iter().map(FlowRule::to_ofctl).collect()
    }

    #[test]
    fn cookies_carry_their_tag_and_value() {
        assert_eq!(relocation_cookie(1), 0x534d_4f52_0000_0001);
        assert_eq!(relocation_cookie(u32::MAX), 0x534d_4f52_ffff_ffff);
        assert_eq!(service_cookie(SVC), 0x534d_4f53_1400_000a);
        assert_eq!(&relocation_cookie(7).to_be_bytes()[..4], b"SMOR");
        assert_eq!(&service_cookie(SVC).to_be_bytes()[..4], b"SMOS");
    }

    #[test]
    fn trombone_source_sends_backhaul_traffic_to_the_service_and_replies_back() {
        let set = trombone_source(relocation_cookie(1), &EdgePorts::testbed(), &svc(), UE);
        assert_eq!(set.label, "trombone-source");
        assert!(set.delete.is_empty());
        assert_eq!(
            ofctl(&set),
            [
                "cookie=0x534d4f5200000001,priority=200,in_port=bh,ip,nw_dst=20.0.0.10,actions=\
                 set_field:02:20:00:00:00:0a->eth_dst,output:srv",
                "cookie=0x534d4f5200000001,priority=200,in_port=srv,ip,nw_src=20.0.0.10,nw_dst=192.168.1.2,actions=\
                 set_field:02:53:4d:4f:52:00->eth_dst,output:bh",
            ]
        );
        assert!(set.packets.is_empty());
    }

    #[test]
    fn trombone_target_answers_arp_and_sends_traffic_over_the_backhaul() {
        let set = trombone_target(
            relocation_cookie(2),
            &EdgePorts::testbed(),
            SVC,
            SVC_MAC,
            UE,
        );
        assert_eq!(set.label, "trombone-target");
        assert!(set.delete.is_empty());
        assert_eq!(
            ofctl(&set),
            [
                "cookie=0x534d4f5200000002,priority=200,in_port=n6,arp,arp_op=1,arp_tpa=20.0.0.10,actions=\
                 set_field:02:14:00:00:00:01->eth_dst,set_field:02:20:00:00:00:0a->eth_src,\
                 set_field:2->arp_op,set_field:02:20:00:00:00:0a->arp_sha,set_field:20.0.0.10->arp_spa,\
                 set_field:02:14:00:00:00:01->arp_tha,set_field:20.0.0.1->arp_tpa,IN_PORT",
                "cookie=0x534d4f5200000002,priority=200,in_port=n6,ip,nw_dst=20.0.0.10,actions=\
                 set_field:02:53:4d:4f:52:01->eth_dst,output:bh",
                "cookie=0x534d4f5200000002,priority=200,in_port=bh,ip,nw_src=20.0.0.10,nw_dst=192.168.1.2,actions=\
                 set_field:02:14:00:00:00:01->eth_dst,output:n6",
            ]
        );
        assert_eq!(
            set.packets,
            [PacketOut {
                port: "n6".into(),
                data: arp_announce(SVC, SVC_MAC),
            }]
        );
    }

    #[test]
    fn the_backhaul_legs_use_the_trombone_macs_and_restore_the_real_ones() {
        let ports = EdgePorts::testbed();
        let source = trombone_source(relocation_cookie(1), &ports, &svc(), UE);
        let target = trombone_target(relocation_cookie(1), &ports, SVC, SVC_MAC, UE);
        let actions = |set: &FlowSet, i: usize| set.add[i].actions.clone();
        // Downlink: the source addresses the backhaul frame to the trombone MAC, the target puts
        // the gateway back before the site sees it.
        assert_eq!(
            actions(&source, 1),
            [
                FlowAction::SetEthDst(TROMBONE_MAC),
                FlowAction::Output("bh".into())
            ]
        );
        assert_eq!(
            actions(&target, 2),
            [
                FlowAction::SetEthDst(GATEWAY_MAC),
                FlowAction::Output("n6".into())
            ]
        );
        // Uplink: the same, with the uplink MAC and the service's own MAC.
        assert_eq!(
            actions(&target, 1),
            [
                FlowAction::SetEthDst(TROMBONE_UPLINK_MAC),
                FlowAction::Output("bh".into())
            ]
        );
        assert_eq!(
            actions(&source, 0),
            [
                FlowAction::SetEthDst(SVC_MAC),
                FlowAction::Output("srv".into())
            ]
        );
        // Unicast, locally administered, and never anybody's address.
        for m in [TROMBONE_MAC, TROMBONE_UPLINK_MAC] {
            assert_eq!(m.0[0] & 0b11, 0b10, "{m}");
            assert_ne!(m, GATEWAY_MAC);
            assert_ne!(m, SVC_MAC);
        }
        assert_ne!(TROMBONE_MAC, TROMBONE_UPLINK_MAC);
    }

    #[test]
    fn arp_announce_is_the_reply_the_responder_sends() {
        #[rustfmt::skip]
        let want: [u8; ARP_FRAME_LEN] = [
            0x02, 0x14, 0, 0, 0, 0x01,          // eth dst: the gateway
            0x02, 0x20, 0, 0, 0, 0x0a,          // eth src: the service
            0x08, 0x06,                         // EtherType ARP
            0x00, 0x01,                         // htype Ethernet
            0x08, 0x00,                         // ptype IPv4
            6, 4,                               // hlen, plen
            0x00, 0x02,                         // op: reply
            0x02, 0x20, 0, 0, 0, 0x0a,          // sha: the service
            20, 0, 0, 10,                       // spa: the service
            0x02, 0x14, 0, 0, 0, 0x01,          // tha: the gateway
            20, 0, 0, 1,                        // tpa: the gateway
        ];
        assert_eq!(arp_announce(SVC, SVC_MAC), want);
        // Field for field what the responder flow turns a request into.
        let responder = &trombone_target(
            relocation_cookie(1),
            &EdgePorts::testbed(),
            SVC,
            SVC_MAC,
            UE,
        )
        .add[0];
        for a in [
            FlowAction::SetEthDst(GATEWAY_MAC),
            FlowAction::SetEthSrc(SVC_MAC),
            FlowAction::SetArpOp(ARP_REPLY),
            FlowAction::SetArpSha(SVC_MAC),
            FlowAction::SetArpSpa(SVC),
            FlowAction::SetArpTha(GATEWAY_MAC),
            FlowAction::SetArpTpa(GATEWAY_IP),
        ] {
            assert!(responder.actions.contains(&a), "{a:?}");
        }
    }

    #[test]
    fn the_arp_reply_swaps_the_gateway_into_the_target_fields() {
        let set = trombone_target(
            relocation_cookie(2),
            &EdgePorts::testbed(),
            SVC,
            SVC_MAC,
            UE,
        );
        let arp = &set.add[0];
        assert_eq!(arp.matches.eth_type, Some(ETH_TYPE_ARP));
        assert!(arp.actions.contains(&FlowAction::SetArpTpa(GATEWAY_IP)));
        assert!(arp.actions.contains(&FlowAction::SetArpTha(GATEWAY_MAC)));
        assert_eq!(arp.actions.last(), Some(&FlowAction::InPort));
    }

    #[test]
    fn new_path_target_replaces_the_trombone_by_the_direct_path() {
        let set = new_path_target(relocation_cookie(3), &EdgePorts::testbed(), &svc());
        assert_eq!(set.label, "new-path-target");
        assert!(
            set.packets.is_empty(),
            "the service keeps its MAC: nothing to announce"
        );
        assert_eq!(
            set.delete,
            [CookieDelete {
                cookie: relocation_cookie(3)
            }]
        );
        assert_eq!(
            ofctl(&set),
            [
                "cookie=0x534d4f531400000a,priority=150,in_port=n6,ip,nw_dst=20.0.0.10,actions=output:srv",
                "cookie=0x534d4f531400000a,priority=150,in_port=n6,arp,arp_tpa=20.0.0.10,actions=output:srv",
            ]
        );
    }

    #[test]
    fn cleanup_source_only_deletes() {
        let set = cleanup_source(relocation_cookie(4), SVC);
        assert_eq!(set.label, "cleanup-source");
        assert!(set.add.is_empty());
        assert!(!set.is_empty());
        assert_eq!(
            set.delete
                .iter()
                .map(CookieDelete::to_ofctl)
                .collect::<Vec<_>>(),
            [
                "cookie=0x534d4f5200000004/-1",
                "cookie=0x534d4f531400000a/-1"
            ]
        );
    }

    #[test]
    fn the_arp_responder_becomes_a_flow_mod_with_ports_resolved() {
        let set = trombone_target(
            relocation_cookie(1),
            &EdgePorts::testbed(),
            SVC,
            SVC_MAC,
            UE,
        );
        let ports = |n: &str| match n {
            "bh" => Some(1),
            "n6" => Some(2),
            _ => None,
        };
        let fm = set.add[0].to_flow_mod(ports).expect("ports known");
        assert_eq!(
            fm.matches,
            [
                Oxm::InPort(2),
                Oxm::EthType(ETH_TYPE_ARP),
                Oxm::ArpOp(ARP_REQUEST),
                Oxm::ArpTpa(SVC)
            ]
        );
        assert_eq!(fm.actions.len(), 8);
        assert_eq!(
            fm.actions.first(),
            Some(&Action::SetField(Oxm::EthDst(GATEWAY_MAC.0)))
        );
        assert_eq!(fm.actions.last(), Some(&Action::Output(OFPP_IN_PORT)));
        // 48 fixed + match (4 + 8 + 6 + 6 + 8 = 32) + instruction 8 + 7 set-fields × 16 + output 16.
        assert_eq!(fm.encoded_len(), 48 + 32 + 8 + 7 * 16 + 16);
        assert!(fm.check_len().is_ok());
        let out = set.add[1].to_flow_mod(ports).expect("ports known");
        assert_eq!(out.actions.last(), Some(&Action::Output(1)));
        let unknown = set.add[0].to_flow_mod(|_| None);
        assert_eq!(unknown, Err("n6".to_owned()));
    }

    #[test]
    fn every_rule_reads_back_from_its_flow_stats() {
        let ports = EdgePorts::testbed();
        let number = |n: &str| match n {
            "bh" => Some(1),
            "n6" => Some(2),
            "srv" => Some(3),
            _ => None,
        };
        let name = |no: u32| match no {
            1 => Some("bh".to_owned()),
            2 => Some("n6".to_owned()),
            3 => Some("srv".to_owned()),
            _ => None,
        };
        let sets = [
            trombone_source(relocation_cookie(1), &ports, &svc(), UE),
            trombone_target(relocation_cookie(1), &ports, SVC, SVC_MAC, UE),
            new_path_target(relocation_cookie(1), &ports, &svc()),
        ];
        for rule in sets.iter().flat_map(|s| &s.add) {
            let fm = rule.to_flow_mod(number).expect("ports known");
            let stats = FlowStats {
                table_id: 0,
                priority: fm.priority,
                cookie: fm.cookie,
                matches: fm.matches.clone(),
                actions: fm.actions.clone(),
                unknown: 0,
            };
            assert_eq!(FlowRule::from_flow_stats(&stats, name).as_ref(), Some(rule));
            // A port renumbered since: the rule names a port nobody has.
            let renumbered = FlowRule::from_flow_stats(&stats, |_| None).expect("readable");
            assert_ne!(&renumbered, rule);
            assert!(
                renumbered.to_ofctl().contains('#'),
                "{}",
                renumbered.to_ofctl()
            );
            let odd = FlowStats {
                unknown: 1,
                ..stats.clone()
            };
            assert_eq!(FlowRule::from_flow_stats(&odd, name), None);
        }
    }

    #[test]
    fn cookies_tell_relocations_and_services_apart() {
        assert!(is_smo_cookie(relocation_cookie(9)) && is_relocation_cookie(relocation_cookie(9)));
        assert!(is_smo_cookie(service_cookie(SVC)) && !is_relocation_cookie(service_cookie(SVC)));
        assert_eq!(service_of_cookie(service_cookie(SVC)), Some(SVC));
        assert_eq!(service_of_cookie(relocation_cookie(9)), None);
        assert!(!is_smo_cookie(0x1), "the testbed's base flows");
    }

    #[test]
    fn ofctl_renders_wildcards_drop_and_normal() {
        let r = rule(0x1, 0, FlowMatch::default(), vec![FlowAction::Normal]);
        assert_eq!(r.to_ofctl(), "cookie=0x1,priority=0,actions=NORMAL");
        let r = rule(
            0x1,
            50,
            FlowMatch {
                in_port: Some("bh".into()),
                eth_type: Some(0x86dd),
                ..FlowMatch::default()
            },
            Vec::new(),
        );
        assert_eq!(
            r.to_ofctl(),
            "cookie=0x1,priority=50,in_port=bh,dl_type=0x86dd,actions=drop"
        );
    }
}

//! Links, addresses and routes inside namespaces.

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

use crate::cmd::{CmdError, Tool};
use crate::netns::Netns;

/// One end of a veth pair: an interface name inside a namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct End {
    pub netns: String,
    pub ifname: String,
}

/// Longest interface name Linux accepts.
pub const IFNAMSIZ_MAX: usize = 15;

/// Creates a veth pair whose ends are born directly in their namespaces (nothing is left in the root
/// namespace, even briefly), and brings both ends up.
pub fn create_veth(a: &End, b: &End, mtu: u32) -> Result<(), CmdError> {
    Tool::new("ip")
        .args(["link", "add", &a.ifname, "netns", &a.netns, "mtu"])
        .arg(mtu.to_string())
        .args(["type", "veth", "peer", "name", &b.ifname, "netns", &b.netns])
        .arg("mtu")
        .arg(mtu.to_string())
        .run()?;
    set_up(&Netns::new(&a.netns), &a.ifname)?;
    set_up(&Netns::new(&b.netns), &b.ifname)
}

/// Brings an interface up.
pub fn set_up(ns: &Netns, ifname: &str) -> Result<(), CmdError> {
    ns.ip(["link", "set", ifname, "up"])
}

/// Sets an interface's MAC address.
pub fn set_mac(ns: &Netns, ifname: &str, mac: &str) -> Result<(), CmdError> {
    ns.ip(["link", "set", ifname, "address", mac])
}

/// Adds an IPv4 address with its prefix.
pub fn add_addr(ns: &Netns, ifname: &str, addr: Ipv4Net) -> Result<(), CmdError> {
    ns.ip(["addr", "add", &addr.to_string(), "dev", ifname])
}

/// Adds a route to `dst` through gateway `via` (or directly on `dev` when `via` is `None`).
pub fn add_route(
    ns: &Netns,
    dst: Ipv4Net,
    via: Option<Ipv4Addr>,
    dev: Option<&str>,
) -> Result<(), CmdError> {
    let mut args = vec!["route".to_owned(), "replace".to_owned(), dst.to_string()];
    if let Some(via) = via {
        args.extend(["via".to_owned(), via.to_string()]);
    }
    if let Some(dev) = dev {
        args.extend(["dev".to_owned(), dev.to_owned()]);
    }
    ns.ip(args)
}

/// Creates a Linux bridge (no STP, forwarding at once) and brings it up.
pub fn create_bridge(ns: &Netns, name: &str) -> Result<(), CmdError> {
    ns.ip([
        "link",
        "add",
        name,
        "type",
        "bridge",
        "stp_state",
        "0",
        "forward_delay",
        "0",
    ])?;
    set_up(ns, name)
}

/// Attaches an interface to a Linux bridge.
pub fn attach_to_bridge(ns: &Netns, ifname: &str, bridge: &str) -> Result<(), CmdError> {
    ns.ip(["link", "set", ifname, "master", bridge])
}

/// Turns transmit checksum offload off. TCP through the OVS userspace datapath fails on veths
/// that leave checksums to the (absent) hardware.
pub fn tx_checksum_off(ns: &Netns, ifname: &str) -> Result<(), CmdError> {
    ns.tool("ethtool").args(["-K", ifname, "tx", "off"]).run()
}

/// One interface as `ip -j addr` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IfaceInfo {
    pub name: String,
    pub up: bool,
    pub mac: Option<String>,
    pub addrs: Vec<String>,
}

/// Lists the interfaces of a namespace with their state and addresses.
pub fn list_ifaces(ns: &Netns) -> Result<Vec<IfaceInfo>, CmdError> {
    let text = Tool::new("ip")
        .args(["-j", "-n", ns.name(), "addr", "show"])
        .stdout()?;
    Ok(parse_ip_addr_json(&text))
}

/// Parses `ip -j addr show` output; unknown shapes give an empty list rather than an error.
pub fn parse_ip_addr_json(text: &str) -> Vec<IfaceInfo> {
    #[derive(Deserialize)]
    struct AddrInfo {
        family: String,
        local: String,
        prefixlen: u8,
    }
    #[derive(Deserialize)]
    struct Link {
        ifname: String,
        #[serde(default)]
        flags: Vec<String>,
        address: Option<String>,
        #[serde(default)]
        addr_info: Vec<AddrInfo>,
    }
    let links: Vec<Link> = serde_json::from_str(text).unwrap_or_default();
    links
        .into_iter()
        .map(|l| IfaceInfo {
            up: l.flags.iter().any(|f| f == "UP"),
            addrs: l
                .addr_info
                .iter()
                .filter(|a| a.family == "inet" || a.family == "inet6")
                .map(|a| format!("{}/{}", a.local, a.prefixlen))
                .collect(),
            name: l.ifname,
            mac: l.address,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ip_json() {
        let text = r#"[{"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP","LOWER_UP"],"address":"00:00:00:00:00:00",
            "addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8}]},
            {"ifindex":2,"ifname":"n3","flags":["BROADCAST"],"address":"02:00:00:00:00:01","addr_info":[]}]"#;
        let ifs = parse_ip_addr_json(text);
        assert_eq!(ifs.len(), 2);
        assert!(ifs[0].up);
        assert_eq!(ifs[0].addrs, vec!["127.0.0.1/8"]);
        assert!(!ifs[1].up);
        assert_eq!(ifs[1].mac.as_deref(), Some("02:00:00:00:00:01"));
        assert!(parse_ip_addr_json("garbage").is_empty());
    }
}
